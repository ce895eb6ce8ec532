/* cpu backend, FP8 weights (W8A8, W8A16): the fast and slow 128-column blocks
 * of cpu_internal.h (fast: no subnormal E4M3 code and |s| < 2^7, decoded from
 * the 2^-120 bit image with the folded scale; slow: through FP16 bits) decode
 * to the canonical values, and with both kinds in the same rows every ISA
 * level, every streaming width (1..4 tokens per expert: the rows-interleaved
 * fast loop, the per-row fallback, odd row tails) and the tiled path give the
 * scalar level's bits, a token alone gives its bits in a batch, and the
 * outputs stay within FORMATS.md's tolerance of ref. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "test_cpu_common.h"

/* Makes some blocks of every FP8 matrix slow: a subnormal E4M3 code in
 * 1 of 3 (row, 128-column) blocks, and (block scales only) a scale of 2^7 or
 * more in one block row of each matrix, its codes shrunk so the weights stay
 * O(1/sqrt(K)). Codes are never NaN. */
static void make_slow_blocks(kt_experts_t *ex, uint64_t seed)
{
    kt_rng_t r;
    kt_rng_seed(&r, seed);
    for (int e = 0; e < ex->n_experts; e++) {
        mx_matrix_t *ms[2] = {&ex->w[e].gate_up, &ex->w[e].down};
        for (int w = 0; w < 2; w++) {
            mx_matrix_t *m = ms[w];
            uint8_t *q = (uint8_t *)(uintptr_t)m->data;
            size_t K = m->cols, nkb = (K + 127) / 128;
            for (size_t row = 0; row < m->rows; row++)
                for (size_t kb = 0; kb < nkb; kb++)
                    if (kt_rng_below(&r, 3) == 0) {
                        size_t len = K - 128 * kb < 128 ? K - 128 * kb : 128;
                        size_t k = 128 * kb + (size_t)kt_rng_below(&r, (int)len);
                        q[row * K + k] = (uint8_t)((kt_rng_below(&r, 2) << 7) | (1 + kt_rng_below(&r, 7)));
                    }
            if (m->scale_kind == MX_WSCALE_BLOCK) {
                /* block row 0, column block 0: scale x 2^20 (>= 2^7, slow without a
                 * subnormal code), codes sparse and small so weights stay O(1) */
                float *s = (float *)(uintptr_t)m->scales;
                s[0] *= 0x1p20f;
                size_t rr = m->rows < 128 ? m->rows : 128, kk = K < 128 ? K : 128;
                for (size_t row = 0; row < rr; row++)
                    for (size_t k = 0; k < kk; k++)
                        q[row * K + k] = k % 8 ? 0 : (uint8_t)((kt_rng_below(&r, 2) << 7) | 0x08 | kt_rng_below(&r, 8));
            }
        }
    }
}

static void count_flags(const mx_backend_packed_t *pk, int n_experts, size_t *fast_p, size_t *slow_p)
{
    size_t fast = 0, slow = 0;
    for (int e = 0; e < n_experts; e++)
        for (int w = 0; w < 2; w++) {
            const mxi_cpu_mat_t *m = mxi_cpu_packed_matrix(pk, e, w);
            assert_non_null(m);
            assert_int_equal(m->scale_stride, (m->kp + 127) / 128);
            for (size_t i = 0; i < m->rows * m->scale_stride; i++) {
                assert_true(m->scales[i] <= 1);
                if (m->scales[i])
                    slow++;
                else
                    fast++;
            }
        }
    *fast_p = fast;
    *slow_p = slow;
}

static void test_fast_and_slow_blocks_decode_to_canonical_values(void **state)
{
    (void)state;
    mx_moe_desc_t d = kt_desc(MX_SCHEME_W8A8, MX_ACT_SILU, MX_GATEUP_HALVES, 300, 140);
    kt_experts_t *ex = NULL;
    kt_expert_opts_t opts = {.with_bias = 1, .fp8_scale = MX_WSCALE_BLOCK, .gain = 1.0f};
    assert_int_equal(kt_experts_create(&d, 2, &opts, 811, &ex), MX_OK);
    make_slow_blocks(ex, 812);
    mx_backend_packed_t *pk = NULL;
    assert_int_equal(mx_backend_cpu.prepack(NULL, &d, ex->w, 2, &pk), MX_OK);
    size_t fast, slow;
    count_flags(pk, 2, &fast, &slow);
    print_message("fast blocks %zu, slow blocks %zu\n", fast, slow);
    assert_true(fast > 0 && slow > 0);
    for (int e = 0; e < 2; e++)
        for (int w = 0; w < 2; w++) {
            const mxi_cpu_mat_t *m = mxi_cpu_packed_matrix(pk, e, w);
            const mx_matrix_t *src = w ? &ex->w[e].down : &ex->w[e].gate_up;
            const float *s = src->scales;
            size_t K = src->cols;
            for (size_t r = 0; r < m->rows; r++) {
                size_t sr = w ? r : ((r & 1) ? d.inter + r / 2 : r / 2);
                for (size_t b = 0; b < m->kp / 32; b++) {
                    float got[32];
                    mxi_cpu_decode_block(m, r, b, got);
                    for (size_t k = 0; k < 32; k++) {
                        size_t col = b * 32 + k;
                        float want = 0.0f;
                        if (col < K)
                            want = mx_quant_e4m3fn_to_f32(((const uint8_t *)src->data)[sr * K + col]) *
                                   s[(sr / 128) * ((K + 127) / 128) + col / 128];
                        if (memcmp(&got[k], &want, sizeof want) != 0)
                            fail_msg("expert %d %s row %zu col %zu: packed %a, canonical %a", e, w ? "down" : "gate_up",
                                     r, col, (double)got[k], (double)want);
                    }
                }
            }
        }
    mx_backend_cpu.release(pk);
    kt_experts_destroy(ex);
}

typedef struct {
    mx_scheme_t scheme;
    mx_wscale_t wscale;
    int act_group;
    size_t H, I;
} fp8_case_t;

/* Runs the problem at `level`, PER_ASSIGNMENT, into a fresh poisoned buffer. */
static uint16_t *run_level(const cpu_problem_t *p, const kt_experts_t *ex, int level, size_t T, size_t na,
                           const uint16_t *x, const int32_t *tok, const int32_t *expert, const float *weight)
{
    mx_device_info_t dev = cpu_dev_at(level);
    mx_backend_packed_t *pk = NULL;
    assert_int_equal(mx_backend_cpu.prepack(&dev, &p->desc, ex->w, ex->n_experts, &pk), MX_OK);
    assert_int_equal(mxi_cpu_packed_level(pk), level);
    size_t n = na * p->desc.hidden;
    uint16_t *y = malloc((n ? n : 1) * sizeof *y);
    assert_non_null(y);
    kt_poison_bf16(y, n);
    assert_int_equal(cpu_run_on(&mx_backend_cpu, pk, x, T, na, tok, expert, weight, MX_OUT_PER_ASSIGNMENT, y, NULL, 0),
                     MX_OK);
    assert_int_equal(kt_count_nan_bf16(y, n), 0);
    mx_backend_cpu.release(pk);
    return y;
}

static void test_every_level_and_width_matches_scalar_with_slow_blocks(void **state)
{
    (void)state;
    unsetenv("MXEP_CPU_ISA");
    const fp8_case_t cs[] = {
        {MX_SCHEME_W8A8, MX_WSCALE_BLOCK, 0, 300, 140},   /* short last blocks, odd row counts */
        {MX_SCHEME_W8A8, MX_WSCALE_BLOCK, 128, 384, 200}, /* per-128 activation groups */
        {MX_SCHEME_W8A8, MX_WSCALE_CHANNEL, 0, 256, 96},  /* per-channel scales */
        {MX_SCHEME_W8A16, MX_WSCALE_BLOCK, 0, 200, 136},  /* BF16 activations share the kernels */
    };
    /* tokens per batch: with 4 experts, top-2 and one idle expert these give
     * 1..4 tokens per expert (streaming widths) and more (tiled) */
    const size_t Ts[] = {1, 2, 3, 5, 7, 24};
    const mx_backend_ops_t *ref = mx_backend_find("ref");
    for (size_t ci = 0; ci < sizeof cs / sizeof cs[0]; ci++)
        for (size_t ti = 0; ti < sizeof Ts / sizeof Ts[0]; ti++) {
            const fp8_case_t *c = &cs[ci];
            size_t T = Ts[ti];
            uint64_t seed = 900 + 16 * ci + ti;
            mx_moe_desc_t d = kt_desc(c->scheme, MX_ACT_SILU, MX_GATEUP_HALVES, c->H, c->I);
            d.act_group = c->act_group;
            cpu_problem_t p;
            assert_int_equal(cpu_problem_make(&p, &d, 4, T, 2, 1, seed), 0);
            /* the problem's experts have block scales; remake them with this case's */
            kt_experts_destroy(p.ex);
            p.ex = NULL;
            kt_expert_opts_t opts = {.with_bias = 1, .fp8_scale = c->wscale, .gain = 1.0f};
            assert_int_equal(kt_experts_create(&d, 4, &opts, seed + 7, &p.ex), MX_OK);
            make_slow_blocks(p.ex, seed + 8);
            size_t na = p.rt.n_assign, n = na * c->H;
            uint16_t *y0 = run_level(&p, p.ex, MXI_CPU_LEVEL_SCALAR, T, na, p.x, p.rt.tok, p.rt.expert, p.rt.weight);
            for (int lv = MXI_CPU_LEVEL_AVX2; lv <= MXI_CPU_LEVEL_AMX; lv++) {
                if (!cpu_level_available(lv))
                    continue;
                uint16_t *y = run_level(&p, p.ex, lv, T, na, p.x, p.rt.tok, p.rt.expert, p.rt.weight);
                if (memcmp(y, y0, n * sizeof *y) != 0)
                    fail_msg("seed %llu %s T=%zu: level %s differs from scalar", (unsigned long long)seed,
                             mx_scheme_name(c->scheme), T, mxi_cpu_level_name(lv));
                /* each token alone gives its bits in the batch */
                for (size_t t = 0; t < T; t++) {
                    int32_t tok1[8], ex1[8];
                    float w1[8];
                    size_t src[8], n1 = 0;
                    for (size_t a = 0; a < na && n1 < 8; a++)
                        if ((size_t)p.rt.tok[a] == t) {
                            tok1[n1] = 0;
                            ex1[n1] = p.rt.expert[a];
                            w1[n1] = p.rt.weight[a];
                            src[n1++] = a;
                        }
                    if (!n1)
                        continue;
                    uint16_t *y1 = run_level(&p, p.ex, lv, 1, n1, p.x + t * c->H, tok1, ex1, w1);
                    for (size_t j = 0; j < n1; j++)
                        if (memcmp(y1 + j * c->H, y + src[j] * c->H, c->H * sizeof *y1) != 0)
                            fail_msg("seed %llu %s T=%zu level %s: token %zu alone differs from its batch",
                                     (unsigned long long)seed, mx_scheme_name(c->scheme), T, mxi_cpu_level_name(lv), t);
                    free(y1);
                }
                free(y);
            }
            if (ref && na > 0) {
                mx_device_info_t rdev;
                assert_int_equal(ref->probe(&rdev), MX_OK);
                mx_backend_packed_t *rpk = NULL;
                assert_int_equal(ref->prepack(&rdev, &d, p.ex->w, 4, &rpk), MX_OK);
                uint16_t *yr = malloc(n * sizeof *yr);
                assert_non_null(yr);
                kt_poison_bf16(yr, n);
                assert_int_equal(cpu_run_on(ref, rpk, p.x, T, na, p.rt.tok, p.rt.expert, p.rt.weight,
                                            MX_OUT_PER_ASSIGNMENT, yr, NULL, 0),
                                 MX_OK);
                double err = kt_rel_l2_bf16(y0, yr, n);
                if (!(err <= kt_tolerance(c->scheme)))
                    fail_msg("seed %llu %s T=%zu: rel L2 %.3e vs ref above %.0e", (unsigned long long)seed,
                             mx_scheme_name(c->scheme), T, err, kt_tolerance(c->scheme));
                ref->release(rpk);
                free(yr);
            }
            free(y0);
            cpu_problem_free(&p);
        }
}

/* W8A8: a NaN in a token quantizes to a NaN code, which decodes to NaN (as in
 * ref): every output of that token is NaN, the other tokens' bits do not change. */
static void test_w8a8_nan_in_a_token_gives_nan_outputs_for_it_only(void **state)
{
    (void)state;
    unsetenv("MXEP_CPU_ISA");
    for (int group = 0; group <= 128; group += 128) {
        mx_moe_desc_t d = kt_desc(MX_SCHEME_W8A8, MX_ACT_SILU, MX_GATEUP_HALVES, 256, 96);
        d.act_group = group;
        const size_t T = 6, bad = 2;
        cpu_problem_t p;
        assert_int_equal(cpu_problem_make(&p, &d, 3, T, 2, 0, 950 + (uint64_t)group), 0);
        size_t na = p.rt.n_assign, n = na * d.hidden;
        uint16_t *xn = malloc(T * d.hidden * sizeof *xn);
        assert_non_null(xn);
        memcpy(xn, p.x, T * d.hidden * sizeof *xn);
        xn[bad * d.hidden + 200] = 0x7FC0; /* BF16 NaN */
        for (int lv = MXI_CPU_LEVEL_SCALAR; lv <= MXI_CPU_LEVEL_AMX; lv++) {
            if (!cpu_level_available(lv))
                continue;
            uint16_t *y0 = run_level(&p, p.ex, lv, T, na, p.x, p.rt.tok, p.rt.expert, p.rt.weight);
            mx_device_info_t dev = cpu_dev_at(lv);
            mx_backend_packed_t *pk = NULL;
            assert_int_equal(mx_backend_cpu.prepack(&dev, &d, p.ex->w, 3, &pk), MX_OK);
            uint16_t *y = malloc(n * sizeof *y);
            assert_non_null(y);
            kt_poison_bf16(y, n);
            assert_int_equal(cpu_run_on(&mx_backend_cpu, pk, xn, T, na, p.rt.tok, p.rt.expert, p.rt.weight,
                                        MX_OUT_PER_ASSIGNMENT, y, NULL, 0),
                             MX_OK);
            for (size_t a = 0; a < na; a++) {
                if ((size_t)p.rt.tok[a] == bad) {
                    if (kt_count_nan_bf16(y + a * d.hidden, d.hidden) != d.hidden)
                        fail_msg("group %d level %s: assignment %zu of the NaN token has finite outputs", group,
                                 mxi_cpu_level_name(lv), a);
                } else if (memcmp(y + a * d.hidden, y0 + a * d.hidden, d.hidden * sizeof *y) != 0) {
                    fail_msg("group %d level %s: assignment %zu changed with a NaN in another token", group,
                             mxi_cpu_level_name(lv), a);
                }
            }
            mx_backend_cpu.release(pk);
            free(y);
            free(y0);
        }
        free(xn);
        cpu_problem_free(&p);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fast_and_slow_blocks_decode_to_canonical_values),
        cmocka_unit_test(test_every_level_and_width_matches_scalar_with_slow_blocks),
        cmocka_unit_test(test_w8a8_nan_in_a_token_gives_nan_outputs_for_it_only),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
