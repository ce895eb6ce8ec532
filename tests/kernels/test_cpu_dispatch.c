/* cpu backend: ISA detection and dispatch. The probe reports what cpuid says,
 * MXEP_CPU_ISA caps the level (and rejects unknown or absent levels), and every
 * level this machine runs gives bitwise-identical outputs (one numerics
 * contract: cpu_internal.h), close to the ref backend. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <cpuid.h>

#include "test_cpu_common.h"

static void test_probe_reports_the_highest_level_cpuid_allows(void **state)
{
    (void)state;
    unsetenv("MXEP_CPU_ISA");
    mx_device_info_t dev;
    memset(&dev, 0xAB, sizeof dev);
    assert_int_equal(mx_backend_cpu.probe(&dev), MX_OK);
    __builtin_cpu_init();
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    int avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                 __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (__get_cpuid_max(0, NULL) >= 7)
        __cpuid_count(7, 1, a, b, c, d);
    int avxvnni = avx2 && ((a >> 4) & 1);
    const char *want = avx512 ? "avx512" : avxvnni ? "avxvnni" : avx2 ? "avx2" : "scalar";
    print_message("cpu: %s isa=%s\n", dev.name, dev.isa);
    assert_string_equal(dev.isa, want);
    assert_int_equal(dev.device_index, -1);
    assert_true(dev.cores >= 1);
    assert_int_equal((dev.flags & MXI_CPU_HAS_AVX2) != 0, avx2);
    assert_int_equal((mxi_cpu_detect() & MXI_CPU_HAS_AVXVNNI) != 0, avxvnni);
}

/* MXEP_CPU_ISA=avx2 is the plain AVX2 kernels even where the CPU has AVX-VNNI
 * (the probe's flags then drop it, and prepack follows them); avxvnni picks
 * the AVX-VNNI ones, or is an error naming what the CPU lacks. */
static void test_env_avx2_and_avxvnni_pick_their_kernels(void **state)
{
    (void)state;
    if (!cpu_level_available(MXI_CPU_LEVEL_AVX2))
        skip();
    mx_moe_desc_t d = kt_desc(MX_SCHEME_W4A16, MX_ACT_SILU, MX_GATEUP_HALVES, 64, 32);
    cpu_problem_t p;
    assert_int_equal(cpu_problem_make(&p, &d, 2, 3, 1, 0, 9), 0);
    mx_device_info_t dev;
    mx_backend_packed_t *pk = NULL;
    setenv("MXEP_CPU_ISA", "avx2", 1);
    assert_int_equal(mx_backend_cpu.probe(&dev), MX_OK);
    assert_string_equal(dev.isa, "avx2");
    assert_int_equal(dev.flags & MXI_CPU_HAS_AVXVNNI, 0);
    for (int with_dev = 0; with_dev < 2; with_dev++) {
        assert_int_equal(mx_backend_cpu.prepack(with_dev ? &dev : NULL, &d, p.ex->w, 2, &pk), MX_OK);
        assert_int_equal(mxi_cpu_packed_level(pk), MXI_CPU_LEVEL_AVX2);
        assert_ptr_equal(mxi_cpu_packed_q4(pk), mxi_cpu_q4_avx2);
        mx_backend_cpu.release(pk);
    }
    setenv("MXEP_CPU_ISA", "avxvnni", 1);
    if (cpu_has_avxvnni()) {
        assert_int_equal(mx_backend_cpu.probe(&dev), MX_OK);
        assert_string_equal(dev.isa, "avxvnni");
        for (int with_dev = 0; with_dev < 2; with_dev++) {
            assert_int_equal(mx_backend_cpu.prepack(with_dev ? &dev : NULL, &d, p.ex->w, 2, &pk), MX_OK);
            assert_int_equal(mxi_cpu_packed_level(pk), MXI_CPU_LEVEL_AVX2);
            assert_ptr_equal(mxi_cpu_packed_q4(pk), mxi_cpu_q4_avxvnni);
            mx_backend_cpu.release(pk);
        }
    } else {
        assert_int_equal(mx_backend_cpu.probe(&dev), MX_ERR_UNSUPPORTED);
        assert_non_null(strstr(mx_error_detail(), "MXEP_CPU_ISA=avxvnni: this CPU lacks AVX-VNNI"));
        pk = NULL;
        assert_int_equal(mx_backend_cpu.prepack(NULL, &d, p.ex->w, 2, &pk), MX_ERR_UNSUPPORTED);
        assert_null(pk);
    }
    unsetenv("MXEP_CPU_ISA");
    cpu_problem_free(&p);
}

static void test_env_caps_level_and_rejects_unknown_names(void **state)
{
    (void)state;
    mx_device_info_t dev, before;
    setenv("MXEP_CPU_ISA", "scalar", 1);
    assert_int_equal(mx_backend_cpu.probe(&dev), MX_OK);
    assert_string_equal(dev.isa, "scalar");
    mx_moe_desc_t d = kt_desc(MX_SCHEME_W16A16, MX_ACT_SILU, MX_GATEUP_HALVES, 64, 32);
    cpu_problem_t p;
    assert_int_equal(cpu_problem_make(&p, &d, 2, 3, 1, 0, 7), 0);
    mx_backend_packed_t *pk = NULL;
    assert_int_equal(mx_backend_cpu.prepack(NULL, &d, p.ex->w, 2, &pk), MX_OK);
    assert_int_equal(mxi_cpu_packed_level(pk), MXI_CPU_LEVEL_SCALAR);
    mx_backend_cpu.release(pk);

    setenv("MXEP_CPU_ISA", "sse9", 1);
    memset(&dev, 0x5A, sizeof dev);
    before = dev;
    assert_int_equal(mx_backend_cpu.probe(&dev), MX_ERR_INVALID);
    assert_non_null(strstr(mx_error_detail(), "MXEP_CPU_ISA"));
    assert_memory_equal(&dev, &before, sizeof dev);
    pk = (mx_backend_packed_t *)&before;
    assert_int_equal(mx_backend_cpu.prepack(NULL, &d, p.ex->w, 2, &pk), MX_ERR_INVALID);
    assert_ptr_equal(pk, (mx_backend_packed_t *)&before);
    unsetenv("MXEP_CPU_ISA");
    cpu_problem_free(&p);
}

static void test_env_naming_an_absent_level_is_an_error(void **state)
{
    (void)state;
    if (cpu_level_available(MXI_CPU_LEVEL_AVX512))
        skip(); /* every level is present here */
    setenv("MXEP_CPU_ISA", "avx512", 1);
    mx_device_info_t dev;
    assert_int_equal(mx_backend_cpu.probe(&dev), MX_ERR_UNSUPPORTED);
    assert_non_null(strstr(mx_error_detail(), "avx512"));
    unsetenv("MXEP_CPU_ISA");
}

/* AMX is taken only on request; asked for without it, an error that says so */
static void test_env_amx_picks_the_amx_level_or_is_an_error(void **state)
{
    (void)state;
    setenv("MXEP_CPU_ISA", "amx", 1);
    mx_device_info_t dev;
    if (cpu_level_available(MXI_CPU_LEVEL_AMX)) {
        assert_int_equal(mx_backend_cpu.probe(&dev), MX_OK);
        assert_string_equal(dev.isa, "amx");
    } else {
        assert_int_equal(mx_backend_cpu.probe(&dev), MX_ERR_UNSUPPORTED);
        assert_non_null(strstr(mx_error_detail(), "amx"));
    }
    unsetenv("MXEP_CPU_ISA");
    assert_int_equal(mx_backend_cpu.probe(&dev), MX_OK);
    assert_string_not_equal(dev.isa, "amx");
}

typedef struct {
    mx_scheme_t scheme;
    mx_act_t act;
    mx_gateup_order_t order;
    size_t H, I, T;
} lv_case_t;

static void test_every_level_gives_identical_bits_close_to_ref(void **state)
{
    (void)state;
    unsetenv("MXEP_CPU_ISA");
    const lv_case_t cs[] = {
        {MX_SCHEME_W4A16, MX_ACT_SWIGLU_OAI, MX_GATEUP_INTERLEAVED, 704, 96, 1},
        {MX_SCHEME_W4A16, MX_ACT_SILU, MX_GATEUP_HALVES, 96, 704, 64},
        {MX_SCHEME_W8A8, MX_ACT_SILU, MX_GATEUP_HALVES, 200, 96, 17},
        {MX_SCHEME_W8A16, MX_ACT_GELU_TANH, MX_GATEUP_HALVES, 130, 70, 9},
        {MX_SCHEME_W16A16, MX_ACT_SWIGLU_OAI, MX_GATEUP_INTERLEAVED, 96, 40, 3},
        {MX_SCHEME_W4A8, MX_ACT_SWIGLU_OAI, MX_GATEUP_INTERLEAVED, 96, 96, 33},
        /* the FP32 tiled path at every token tail (AVX-512: two rows per register),
         * an odd row count (H = 97: GEMM2's last row block has one row) */
        {MX_SCHEME_W8A16, MX_ACT_SILU, MX_GATEUP_HALVES, 97, 70, 41},
        {MX_SCHEME_W16A16, MX_ACT_SWIGLU_OAI, MX_GATEUP_INTERLEAVED, 96, 45, 30},
        {MX_SCHEME_W8A8, MX_ACT_GELU_TANH, MX_GATEUP_HALVES, 64, 300, 57},
    };
    const mx_backend_ops_t *ref = mx_backend_find("ref");
    for (size_t i = 0; i < sizeof cs / sizeof cs[0]; i++) {
        const lv_case_t *c = &cs[i];
        uint64_t seed = 700 + i;
        mx_moe_desc_t d = kt_desc(c->scheme, c->act, c->order, c->H, c->I);
        cpu_problem_t p;
        assert_int_equal(cpu_problem_make(&p, &d, 5, c->T, 2, 1, seed), 0);
        size_t n = p.rt.n_assign * c->H;
        /* the four levels, then the AVX2 level without its AVX-VNNI kernels (slot 4) */
        uint16_t *y[5] = {NULL, NULL, NULL, NULL, NULL};
        for (int k = 0; k <= 4; k++) {
            int lv = k < 4 ? k : MXI_CPU_LEVEL_AVX2;
            if (!cpu_level_available(lv) || (k == 4 && !cpu_has_avxvnni()))
                continue;
            mx_device_info_t dev = cpu_dev_at(lv);
            if (k == 4)
                dev.flags &= ~MXI_CPU_HAS_AVXVNNI;
            mx_backend_packed_t *pk = NULL;
            assert_int_equal(mx_backend_cpu.prepack(&dev, &d, p.ex->w, 5, &pk), MX_OK);
            assert_int_equal(mxi_cpu_packed_level(pk), lv);
            if (lv == MXI_CPU_LEVEL_AVX2 && (c->scheme == MX_SCHEME_W4A16 || c->scheme == MX_SCHEME_W4A8))
                assert_ptr_equal(mxi_cpu_packed_q4(pk),
                                 k == 4 || !cpu_has_avxvnni() ? mxi_cpu_q4_avx2 : mxi_cpu_q4_avxvnni);
            y[k] = malloc(n * sizeof(uint16_t));
            assert_non_null(y[k]);
            kt_poison_bf16(y[k], n);
            assert_int_equal(cpu_run_on(&mx_backend_cpu, pk, p.x, c->T, p.rt.n_assign, p.rt.tok, p.rt.expert,
                                        p.rt.weight, MX_OUT_PER_ASSIGNMENT, y[k], NULL, 0),
                             MX_OK);
            assert_int_equal(kt_count_nan_bf16(y[k], n), 0);
            if (k > 0 && memcmp(y[k], y[0], n * sizeof(uint16_t)) != 0)
                fail_msg("seed %llu %s: level %s differs from scalar", (unsigned long long)seed,
                         mx_scheme_name(c->scheme),
                         k == 4                                          ? "avx2 (AVX-VNNI left out)"
                         : lv == MXI_CPU_LEVEL_AVX2 && cpu_has_avxvnni() ? "avxvnni"
                                                                         : mxi_cpu_level_name(lv));
            mx_backend_cpu.release(pk);
        }
        if (ref) {
            mx_device_info_t rdev;
            assert_int_equal(ref->probe(&rdev), MX_OK);
            mx_backend_packed_t *rpk = NULL;
            assert_int_equal(ref->prepack(&rdev, &d, p.ex->w, 5, &rpk), MX_OK);
            uint16_t *yr = malloc(n * sizeof *yr);
            assert_non_null(yr);
            kt_poison_bf16(yr, n);
            assert_int_equal(cpu_run_on(ref, rpk, p.x, c->T, p.rt.n_assign, p.rt.tok, p.rt.expert, p.rt.weight,
                                        MX_OUT_PER_ASSIGNMENT, yr, NULL, 0),
                             MX_OK);
            double err = kt_rel_l2_bf16(y[0], yr, n);
            print_message("%s %s H=%zu I=%zu T=%zu: rel L2 vs ref %.2e (tol %.0e)\n", mx_scheme_name(c->scheme),
                          mx_act_name(c->act), c->H, c->I, c->T, err, kt_tolerance(c->scheme));
            if (!(err <= kt_tolerance(c->scheme)))
                fail_msg("seed %llu %s: rel L2 %.3e vs ref above %.0e", (unsigned long long)seed,
                         mx_scheme_name(c->scheme), err, kt_tolerance(c->scheme));
            ref->release(rpk);
            free(yr);
        }
        for (int k = 0; k < 5; k++)
            free(y[k]);
        cpu_problem_free(&p);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_probe_reports_the_highest_level_cpuid_allows),
        cmocka_unit_test(test_env_caps_level_and_rejects_unknown_names),
        cmocka_unit_test(test_env_naming_an_absent_level_is_an_error),
        cmocka_unit_test(test_env_avx2_and_avxvnni_pick_their_kernels),
        cmocka_unit_test(test_env_amx_picks_the_amx_level_or_is_an_error),
        cmocka_unit_test(test_every_level_gives_identical_bits_close_to_ref),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
