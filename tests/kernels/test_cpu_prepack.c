/* cpu backend: the prepacked layout (every packed element decodes to the
 * canonical value, gate/up rows paired, padding zero), padding never reaching
 * outputs, and the failure paths of supports / prepack / run. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "test_cpu_common.h"

/* Canonical row r of m decoded with quant/. */
static void canon_row(const mx_matrix_t *m, size_t r, float *out)
{
    size_t K = m->cols;
    if (m->fmt == MX_WFMT_BF16) {
        for (size_t k = 0; k < K; k++)
            out[k] = mx_quant_bf16_to_f32(((const uint16_t *)m->data)[r * K + k]);
    } else if (m->fmt == MX_WFMT_MXFP4) {
        assert_int_equal(mx_quant_mxfp4_decode_row((const uint8_t *)m->data + r * K / 2,
                                                   (const uint8_t *)m->scales + r * K / 32, K, out),
                         MX_OK);
    } else {
        const float *s = m->scales;
        for (size_t k = 0; k < K; k++) {
            float sc = m->scale_kind == MX_WSCALE_TENSOR    ? s[0]
                       : m->scale_kind == MX_WSCALE_CHANNEL ? s[r]
                                                            : s[(r / 128) * ((K + 127) / 128) + k / 128];
            out[k] = mx_quant_e4m3fn_to_f32(((const uint8_t *)m->data)[r * K + k]) * sc;
        }
    }
}

static void check_layout(mx_scheme_t scheme, mx_gateup_order_t order, size_t H, size_t I, mx_wscale_t fp8_scale)
{
    mx_moe_desc_t d = kt_desc(scheme, MX_ACT_SILU, order, H, I);
    kt_experts_t *ex = NULL;
    kt_expert_opts_t opts = {.with_bias = 1, .fp8_scale = fp8_scale, .gain = 1.0f};
    assert_int_equal(kt_experts_create(&d, 2, &opts, 41, &ex), MX_OK);
    mx_backend_packed_t *pk = NULL;
    assert_int_equal(mx_backend_cpu.prepack(NULL, &d, ex->w, 2, &pk), MX_OK);
    float *want = malloc((H > I ? H : I) * sizeof(float));
    assert_non_null(want);
    for (int e = 0; e < 2; e++) {
        for (int which = 0; which < 2; which++) {
            const mxi_cpu_mat_t *m = mxi_cpu_packed_matrix(pk, e, which);
            const mx_matrix_t *src = which ? &ex->w[e].down : &ex->w[e].gate_up;
            assert_non_null(m);
            assert_int_equal(m->kp % 32, 0);
            assert_true(m->kp >= src->cols && m->kp < src->cols + 32);
            assert_int_equal(m->row_stride % (m->fmt == MXI_CPU_MXFP4 ? 32 : 64), 0);
            assert_int_equal((uintptr_t)m->data % 64, 0);
            for (size_t r = 0; r < m->rows; r++) {
                size_t sr = r;
                if (!which && order == MX_GATEUP_HALVES)
                    sr = (r & 1) ? I + r / 2 : r / 2;
                canon_row(src, sr, want);
                for (size_t b = 0; b < m->kp / 32; b++) {
                    float got[32];
                    mxi_cpu_decode_block(m, r, b, got);
                    for (size_t k = 0; k < 32; k++) {
                        size_t col = b * 32 + k;
                        float w = col < src->cols ? want[col] : 0.0f;
                        if (memcmp(&got[k], &w, sizeof w) != 0)
                            fail_msg("%s expert %d %s row %zu col %zu: packed %g, canonical %g", mx_scheme_name(scheme),
                                     e, which ? "down" : "gate_up", r, col, (double)got[k], (double)w);
                    }
                }
            }
        }
    }
    free(want);
    mx_backend_cpu.release(pk);
    kt_experts_destroy(ex);
}

static void test_packed_rows_decode_to_canonical_values_with_zero_padding(void **state)
{
    (void)state;
    check_layout(MX_SCHEME_W4A16, MX_GATEUP_INTERLEAVED, 96, 64, MX_WSCALE_BLOCK);
    check_layout(MX_SCHEME_W4A16, MX_GATEUP_HALVES, 64, 96, MX_WSCALE_BLOCK);
    check_layout(MX_SCHEME_W8A8, MX_GATEUP_HALVES, 300, 140, MX_WSCALE_BLOCK);
    check_layout(MX_SCHEME_W8A16, MX_GATEUP_HALVES, 100, 40, MX_WSCALE_CHANNEL);
    check_layout(MX_SCHEME_W8A16, MX_GATEUP_INTERLEAVED, 70, 30, MX_WSCALE_TENSOR);
    check_layout(MX_SCHEME_W16A16, MX_GATEUP_HALVES, 100, 36, MX_WSCALE_NONE);
}

/* K not a multiple of 32 everywhere; padded columns must not change results. */
static void test_padding_never_reaches_outputs(void **state)
{
    (void)state;
    const mx_backend_ops_t *ref = mx_backend_find("ref");
    if (!ref)
        skip();
    const mx_scheme_t schemes[] = {MX_SCHEME_W16A16, MX_SCHEME_W8A16, MX_SCHEME_W8A8};
    for (size_t s = 0; s < 3; s++) {
        mx_moe_desc_t d = kt_desc(schemes[s], MX_ACT_SILU, MX_GATEUP_HALVES, 100, 43);
        cpu_problem_t p;
        assert_int_equal(cpu_problem_make(&p, &d, 3, 9, 2, 0, 90 + s), 0);
        mx_backend_packed_t *pk = NULL, *rpk = NULL;
        assert_int_equal(mx_backend_cpu.prepack(NULL, &d, p.ex->w, 3, &pk), MX_OK);
        mx_device_info_t rdev;
        assert_int_equal(ref->probe(&rdev), MX_OK);
        assert_int_equal(ref->prepack(&rdev, &d, p.ex->w, 3, &rpk), MX_OK);
        size_t n = 9 * d.hidden;
        float *o = calloc(n, sizeof *o), *orf = calloc(n, sizeof *orf);
        assert_non_null(o);
        assert_non_null(orf);
        assert_int_equal(cpu_run_on(&mx_backend_cpu, pk, p.x, 9, p.rt.n_assign, p.rt.tok, p.rt.expert, p.rt.weight,
                                    MX_OUT_WEIGHTED_SUM, NULL, o, 0),
                         MX_OK);
        assert_int_equal(cpu_run_on(ref, rpk, p.x, 9, p.rt.n_assign, p.rt.tok, p.rt.expert, p.rt.weight,
                                    MX_OUT_WEIGHTED_SUM, NULL, orf, 0),
                         MX_OK);
        assert_int_equal(kt_count_nan_f32(o, n), 0);
        double err = kt_rel_l2_f32(o, orf, n);
        if (!(err <= kt_tolerance(schemes[s])))
            fail_msg("seed %zu %s H=100 I=43: rel L2 %.3e vs ref", 90 + s, mx_scheme_name(schemes[s]), err);
        free(o);
        free(orf);
        mx_backend_cpu.release(pk);
        ref->release(rpk);
        cpu_problem_free(&p);
    }
}

static void test_supports_declines_with_a_reason(void **state)
{
    (void)state;
    char why[MX_REASON_MAX];
    mx_moe_desc_t d = kt_desc(MX_SCHEME_W4A16, MX_ACT_SILU, MX_GATEUP_HALVES, 100, 64);
    why[0] = 0;
    assert_int_equal(mx_backend_cpu.supports(NULL, &d, why, sizeof why), 0);
    assert_non_null(strstr(why, "multiples of 32"));
    d = kt_desc(MX_SCHEME_W8A8, MX_ACT_SILU, MX_GATEUP_HALVES, 128, 64);
    d.act_group = 64;
    why[0] = 0;
    assert_int_equal(mx_backend_cpu.supports(NULL, &d, why, sizeof why), 0);
    assert_non_null(strstr(why, "group"));
    d = kt_desc(MX_SCHEME_W4A16, MX_ACT_SWIGLU_OAI, MX_GATEUP_INTERLEAVED, 128, 64);
    d.swiglu_limit = 0.0f;
    why[0] = 0;
    assert_int_equal(mx_backend_cpu.supports(NULL, &d, why, sizeof why), 0);
    assert_non_null(strstr(why, "swiglu"));
    d = kt_desc(MX_SCHEME_COUNT, MX_ACT_SILU, MX_GATEUP_HALVES, 128, 64);
    assert_int_equal(mx_backend_cpu.supports(NULL, &d, why, sizeof why), 0);
    d = kt_desc(MX_SCHEME_W4A16, MX_ACT_SILU, MX_GATEUP_HALVES, 0, 64);
    assert_int_equal(mx_backend_cpu.supports(NULL, &d, why, sizeof why), 0);
    d = kt_desc(MX_SCHEME_W4A8, MX_ACT_GELU_TANH, MX_GATEUP_HALVES, 2880, 704);
    assert_int_equal(mx_backend_cpu.supports(NULL, &d, why, sizeof why), 1);
}

static void test_prepack_rejects_bad_experts_and_leaves_output_alone(void **state)
{
    (void)state;
    mx_moe_desc_t d = kt_desc(MX_SCHEME_W4A8, MX_ACT_SILU, MX_GATEUP_HALVES, 64, 32);
    kt_experts_t *ex = NULL;
    kt_expert_opts_t opts = {.with_bias = 0, .fp8_scale = MX_WSCALE_BLOCK, .gain = 1.0f};
    assert_int_equal(kt_experts_create(&d, 2, &opts, 5, &ex), MX_OK);
    mx_backend_packed_t *sentinel = (mx_backend_packed_t *)&d, *pk = sentinel;
    mx_expert_weights_t w[2] = {ex->w[0], ex->w[1]};

    w[1].down.rows = 63;
    assert_int_equal(mx_backend_cpu.prepack(NULL, &d, w, 2, &pk), MX_ERR_INVALID);
    assert_non_null(strstr(mx_error_detail(), "expert 1 down"));
    assert_ptr_equal(pk, sentinel);
    w[1] = ex->w[1];

    w[0].gate_up.fmt = MX_WFMT_FP8;
    assert_int_equal(mx_backend_cpu.prepack(NULL, &d, w, 2, &pk), MX_ERR_INVALID);
    assert_non_null(strstr(mx_error_detail(), "expert 0 gate_up"));
    w[0] = ex->w[0];

    w[0].down.scales = NULL;
    assert_int_equal(mx_backend_cpu.prepack(NULL, &d, w, 2, &pk), MX_ERR_INVALID);
    w[0] = ex->w[0];

    w[1].input_scale = 0.0f;
    assert_int_equal(mx_backend_cpu.prepack(NULL, &d, w, 2, &pk), MX_ERR_INVALID);
    assert_non_null(strstr(mx_error_detail(), "input_scale"));
    w[1] = ex->w[1];
    w[1].down_input_scale = -1.0f;
    assert_int_equal(mx_backend_cpu.prepack(NULL, &d, w, 2, &pk), MX_ERR_INVALID);
    w[1] = ex->w[1];

    mx_moe_desc_t bad = d;
    bad.hidden = 48;
    assert_int_equal(mx_backend_cpu.prepack(NULL, &bad, w, 2, &pk), MX_ERR_UNSUPPORTED);
    assert_int_equal(mx_backend_cpu.prepack(NULL, &d, NULL, 2, &pk), MX_ERR_INVALID);
    mx_device_info_t dev = cpu_dev_at(MXI_CPU_LEVEL_SCALAR);
    dev.flags |= 7u << MXI_CPU_LEVEL_SHIFT;
    assert_int_equal(mx_backend_cpu.prepack(&dev, &d, w, 2, &pk), MX_ERR_INVALID);
    assert_ptr_equal(pk, sentinel);

    /* and the good ones pack */
    assert_int_equal(mx_backend_cpu.prepack(NULL, &d, w, 2, &pk), MX_OK);
    assert_true(mxi_cpu_packed_expert_bytes(pk, 0) > 0);
    assert_int_equal(mxi_cpu_packed_expert_bytes(pk, 2), 0);
    mx_backend_cpu.release(pk);
    mx_backend_cpu.release(NULL);
    kt_experts_destroy(ex);
}

static void test_run_rejects_bad_batches_and_writes_nothing(void **state)
{
    (void)state;
    mx_moe_desc_t d = kt_desc(MX_SCHEME_W4A16, MX_ACT_SWIGLU_OAI, MX_GATEUP_INTERLEAVED, 64, 32);
    cpu_problem_t p;
    assert_int_equal(cpu_problem_make(&p, &d, 3, 4, 2, 0, 13), 0);
    mx_backend_packed_t *pk = NULL;
    assert_int_equal(mx_backend_cpu.prepack(NULL, &d, p.ex->w, 3, &pk), MX_OK);
    size_t na = p.rt.n_assign, n = na * d.hidden;
    uint16_t *y = malloc(n * sizeof *y);
    assert_non_null(y);
    size_t wsz = mx_backend_cpu.workspace_size(pk, 4, na);
    void *ws = malloc(wsz);
    assert_non_null(ws);
    int32_t tok[16], ex[16];
    memcpy(tok, p.rt.tok, na * sizeof *tok);
    memcpy(ex, p.rt.expert, na * sizeof *ex);
    mx_run_args_t a = {.n_tokens = 4,
                       .x = p.x,
                       .n_assign = na,
                       .tok = tok,
                       .expert = ex,
                       .weight = p.rt.weight,
                       .mode = MX_OUT_PER_ASSIGNMENT,
                       .out_bf16 = y};
    struct {
        const char *what;
        int field;
        int32_t value;
    } bad[] = {{"token 4", 0, 4}, {"token -1", 0, -1}, {"expert 3", 1, 3}, {"expert -2", 1, -2}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        kt_poison_bf16(y, n);
        int32_t *f = bad[i].field ? ex : tok;
        int32_t keep = f[na - 1];
        f[na - 1] = bad[i].value;
        assert_int_equal(mx_backend_cpu.run(pk, &a, ws), MX_ERR_INVALID);
        assert_non_null(strstr(mx_error_detail(), bad[i].field ? "expert" : "token"));
        assert_int_equal(kt_count_nan_bf16(y, n), n);
        f[na - 1] = keep;
    }
    kt_poison_bf16(y, n);
    assert_int_equal(mx_backend_cpu.run(pk, &a, NULL), MX_ERR_INVALID);
    a.mode = (mx_out_mode_t)7;
    assert_int_equal(mx_backend_cpu.run(pk, &a, ws), MX_ERR_INVALID);
    a.mode = MX_OUT_WEIGHTED_SUM; /* no out_f32 */
    assert_int_equal(mx_backend_cpu.run(pk, &a, ws), MX_ERR_INVALID);
    a.mode = MX_OUT_PER_ASSIGNMENT;
    a.x = NULL;
    assert_int_equal(mx_backend_cpu.run(pk, &a, ws), MX_ERR_INVALID);
    assert_int_equal(kt_count_nan_bf16(y, n), n);
    a.x = p.x;
    assert_int_equal(mx_backend_cpu.run(NULL, &a, ws), MX_ERR_INVALID);
    /* no assignments: nothing to do, nothing written */
    a.n_assign = 0;
    assert_int_equal(mx_backend_cpu.run(pk, &a, NULL), MX_OK);
    assert_int_equal(kt_count_nan_bf16(y, n), n);
    /* and the good batch runs, writing every row */
    a.n_assign = na;
    assert_int_equal(mx_backend_cpu.run(pk, &a, ws), MX_OK);
    assert_int_equal(kt_count_nan_bf16(y, n), 0);
    free(ws);
    free(y);
    mx_backend_cpu.release(pk);
    cpu_problem_free(&p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_packed_rows_decode_to_canonical_values_with_zero_padding),
        cmocka_unit_test(test_padding_never_reaches_outputs),
        cmocka_unit_test(test_supports_declines_with_a_reason),
        cmocka_unit_test(test_prepack_rejects_bad_experts_and_leaves_output_alone),
        cmocka_unit_test(test_run_rejects_bad_batches_and_writes_nothing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
