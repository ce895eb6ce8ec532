/* The ref backend against values computed here, independently: weights decoded
 * with quant/'s row decoders, sums in double, activations in double, and the
 * BF16 / FP8 rounding points of FORMATS.md Part 1 applied by hand. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kt_util.h"
#include "mxep/quant.h"

extern const mx_backend_ops_t mx_backend_ref;
static const mx_backend_ops_t *R = &mx_backend_ref;

/* ---------------------------------------------------------------- independent model */

/* Row r of a canonical matrix in double. */
static void decode_row_d(const mx_matrix_t *m, size_t r, double *out)
{
    const size_t K = m->cols;
    float *f = malloc(K * sizeof(float));
    assert_non_null(f);
    if (m->fmt == MX_WFMT_BF16) {
        mx_quant_bf16_to_f32_n((const uint16_t *)m->data + r * K, K, f);
        for (size_t k = 0; k < K; k++)
            out[k] = f[k];
    } else if (m->fmt == MX_WFMT_MXFP4) {
        assert_int_equal(mx_quant_mxfp4_decode_row((const uint8_t *)m->data + r * K / 2,
                                                   (const uint8_t *)m->scales + r * K / 32, K, f),
                         MX_OK);
        for (size_t k = 0; k < K; k++)
            out[k] = f[k];
    } else {
        assert_int_equal(mx_quant_fp8_decode((const uint8_t *)m->data + r * K, K, 1.0f, f), MX_OK);
        const float *s = m->scales;
        size_t nbk = (K + 127) / 128;
        for (size_t k = 0; k < K; k++) {
            double sc = m->scale_kind == MX_WSCALE_TENSOR    ? s[0]
                        : m->scale_kind == MX_WSCALE_CHANNEL ? s[r]
                                                             : s[(r / 128) * nbk + k / 128];
            out[k] = (double)f[k] * sc;
        }
    }
    free(f);
}

/* FP8 E4M3 fake quantization of v[n] (float values), result in double. */
static void fp8_fake_d(const float *v, size_t n, float static_scale, size_t group, double *out)
{
    if (group == 0)
        group = n;
    for (size_t g0 = 0; g0 < n; g0 += group) {
        size_t g1 = g0 + group < n ? g0 + group : n;
        float s = static_scale;
        if (!(s > 0.0f)) {
            float amax = 0.0f;
            for (size_t k = g0; k < g1; k++)
                amax = fabsf(v[k]) > amax ? fabsf(v[k]) : amax;
            s = amax / 448.0f;
            if (s < MX_FP8_MIN_SCALE)
                s = MX_FP8_MIN_SCALE;
        }
        for (size_t k = g0; k < g1; k++)
            out[k] = (double)mx_quant_e4m3fn_to_f32(mx_quant_e4m3fn_from_f32(v[k] / s)) * (double)s;
    }
}

static double act_d(const mx_moe_desc_t *d, double g, double u)
{
    switch (d->act) {
    case MX_ACT_SILU:
        return g / (1.0 + exp(-g)) * u;
    case MX_ACT_GELU_TANH:
        return 0.5 * g * (1.0 + tanh(sqrt(2.0 / M_PI) * (g + 0.044715 * g * g * g))) * u;
    default: {
        double lim = d->swiglu_limit, a = d->swiglu_alpha;
        g = g > lim ? lim : g;
        u = u > lim ? lim : u < -lim ? -lim : u;
        return (u + 1.0) * g / (1.0 + exp(-a * g));
    }
    }
}

static double ulp_bf16(double v)
{
    int e;
    frexp(fabs(v) > 1e-30 ? v : 1e-30, &e);
    return ldexp(1.0, e - 8);
}

/* Expected BF16 output of expert e for token row x, and a tolerance per element. */
static void expect(const kt_experts_t *ex, int e, const uint16_t *xb, uint16_t *y_p, double *tol_p)
{
    const mx_moe_desc_t *d = &ex->desc;
    const mx_expert_weights_t *w = &ex->w[e];
    const size_t H = d->hidden, I = d->inter;
    double *x = calloc(H, sizeof(double)), *h = calloc(2 * I, sizeof(double)), *a = calloc(I, sizeof(double));
    double *row = calloc(H > I ? H : I, sizeof(double));
    float *xf = calloc(H, sizeof(float)), *af = calloc(I, sizeof(float));
    assert_true(x && h && a && row && xf && af);
    for (size_t k = 0; k < H; k++)
        xf[k] = mx_quant_bf16_to_f32(xb[k]);
    if (d->scheme == MX_SCHEME_W4A8)
        fp8_fake_d(xf, H, w->input_scale, 0, x);
    else if (d->scheme == MX_SCHEME_W8A8)
        fp8_fake_d(xf, H, 0.0f, (size_t)d->act_group, x);
    else
        for (size_t k = 0; k < H; k++)
            x[k] = xf[k];
    for (size_t r = 0; r < 2 * I; r++) {
        decode_row_d(&w->gate_up, r, row);
        double s = w->gate_up_bias ? w->gate_up_bias[r] : 0.0;
        for (size_t k = 0; k < H; k++)
            s += row[k] * x[k];
        h[r] = s;
    }
    for (size_t i = 0; i < I; i++) {
        double g = d->order == MX_GATEUP_HALVES ? h[i] : h[2 * i];
        double u = d->order == MX_GATEUP_HALVES ? h[I + i] : h[2 * i + 1];
        af[i] = mx_quant_bf16_to_f32(mx_quant_bf16_from_f32((float)act_d(d, g, u))); /* rounding point 1 */
    }
    if (d->scheme == MX_SCHEME_W4A8)
        fp8_fake_d(af, I, w->down_input_scale, 0, a);
    else if (d->scheme == MX_SCHEME_W8A8)
        fp8_fake_d(af, I, 0.0f, (size_t)d->act_group, a);
    else
        for (size_t i = 0; i < I; i++)
            a[i] = af[i];
    for (size_t r = 0; r < H; r++) {
        decode_row_d(&w->down, r, row);
        double s = w->down_bias ? w->down_bias[r] : 0.0, mag = fabs(s);
        for (size_t i = 0; i < I; i++) {
            s += row[i] * a[i];
            mag += fabs(row[i] * a[i]);
        }
        y_p[r] = mx_quant_bf16_from_f32((float)s); /* rounding point 2 */
        tol_p[r] = ulp_bf16(s) + 1e-4 * mag + 1e-6;
    }
    free(x), free(h), free(a), free(row), free(xf), free(af);
}

/* ---------------------------------------------------------------- random cases */

typedef struct {
    mx_scheme_t scheme;
    mx_act_t act;
    mx_gateup_order_t order;
    int bias, act_group;
    mx_wscale_t fp8;
    float gain;
} rcase_t;

static void run_random_case(const rcase_t *c, size_t H, size_t I, size_t T, int E, uint64_t seed)
{
    mx_moe_desc_t d = kt_desc(c->scheme, c->act, c->order, H, I);
    d.act_group = c->act_group;
    kt_expert_opts_t o = {.with_bias = c->bias, .fp8_scale = c->fp8, .gain = c->gain};
    kt_experts_t *ex = NULL;
    assert_int_equal(kt_experts_create(&d, E, &o, seed, &ex), MX_OK);
    kt_rng_t rng;
    kt_rng_seed(&rng, seed + 1);
    uint16_t *x = malloc(T * H * 2);
    kt_tokens_fill(&rng, x, T * H, 1.0f);
    kt_routing_t rt;
    assert_int_equal(kt_routing_create(T, E, 2, 1, seed + 2, &rt), MX_OK);

    mx_device_info_t dev;
    assert_int_equal(R->probe(&dev), MX_OK);
    char why[MX_REASON_MAX] = "";
    assert_true(R->supports(&dev, &d, why, sizeof(why)));
    mx_backend_packed_t *pk = NULL;
    assert_int_equal(R->prepack(&dev, &d, ex->w, E, &pk), MX_OK);

    uint16_t *out = malloc(rt.n_assign * H * 2);
    float *sum = calloc(T * H, sizeof(float));
    kt_poison_bf16(out, rt.n_assign * H);
    mx_run_args_t args = {.n_tokens = T,
                          .x = x,
                          .n_assign = rt.n_assign,
                          .tok = rt.tok,
                          .expert = rt.expert,
                          .weight = rt.weight,
                          .mode = MX_OUT_PER_ASSIGNMENT,
                          .out_bf16 = out};
    assert_int_equal(kt_backend_run(R, pk, &args), MX_OK);
    args.mode = MX_OUT_WEIGHTED_SUM;
    args.out_bf16 = NULL;
    args.out_f32 = sum;
    assert_int_equal(kt_backend_run(R, pk, &args), MX_OK);

    uint16_t *y = malloc(H * 2);
    double *tol = malloc(H * sizeof(double));
    float *sum_exp = calloc(T * H, sizeof(float)); /* formed exactly as ref must form it */
    size_t bad = 0;
    /* expected weighted sums: ascending expert order per token */
    for (int e = 0; e < E; e++) {
        for (size_t a = 0; a < rt.n_assign; a++) {
            if (rt.expert[a] != e)
                continue;
            expect(ex, e, x + (size_t)rt.tok[a] * H, y, tol);
            for (size_t r = 0; r < H; r++) {
                double got = mx_quant_bf16_to_f32(out[a * H + r]), want = mx_quant_bf16_to_f32(y[r]);
                if (!(fabs(got - want) <= tol[r])) {
                    if (bad < 5)
                        printf("  %s %s %s seed %llu: assignment %zu (token %d, expert %d) row %zu: got %.6g "
                               "want %.6g (tol %.3g)\n",
                               mx_scheme_name(c->scheme), mx_act_name(c->act),
                               c->order == MX_GATEUP_HALVES ? "halves" : "interleaved", (unsigned long long)seed, a,
                               (int)rt.tok[a], e, r, got, want, tol[r]);
                    bad++;
                }
                /* WEIGHTED_SUM must use exactly the per-assignment BF16 value */
                sum_exp[(size_t)rt.tok[a] * H + r] += rt.weight[a] * mx_quant_bf16_to_f32(out[a * H + r]);
            }
        }
    }
    for (size_t i = 0; i < T * H; i++)
        if (memcmp(&sum[i], &sum_exp[i], sizeof(float)) != 0) { /* bitwise */
            if (bad < 5)
                printf("  weighted sum element %zu: got %.9g want %.9g\n", i, (double)sum[i], (double)sum_exp[i]);
            bad++;
        }
    if (bad)
        printf("test_ref: %zu mismatches for scheme %s act %s order %d bias %d act_group %d fp8 %d H %zu I %zu T "
               "%zu seed %llu\n",
               bad, mx_scheme_name(c->scheme), mx_act_name(c->act), (int)c->order, c->bias, c->act_group, (int)c->fp8,
               H, I, T, (unsigned long long)seed);
    assert_int_equal(bad, 0);
    assert_int_equal(kt_count_nan_bf16(out, rt.n_assign * H), 0);

    R->release(pk);
    free(out), free(sum), free(y), free(tol), free(sum_exp), free(x);
    kt_routing_destroy(&rt);
    kt_experts_destroy(ex);
}

static void test_ref_matches_independent_math_for_every_scheme_activation_and_order(void **state)
{
    (void)state;
    uint64_t seed = 1000;
    for (int s = 0; s < MX_SCHEME_COUNT; s++)
        for (int a = 0; a < MX_ACT_COUNT; a++)
            for (int o = 0; o < 2; o++) {
                rcase_t c = {.scheme = (mx_scheme_t)s,
                             .act = (mx_act_t)a,
                             .order = (mx_gateup_order_t)o,
                             .bias = (int)(seed & 1),
                             .act_group = 0,
                             .fp8 = MX_WSCALE_BLOCK,
                             .gain = 1.0f};
                run_random_case(&c, 64, 96, 5, 4, seed++);
            }
}

static void test_ref_swiglu_clamps_gate_above_and_up_both_ways(void **state)
{
    (void)state;
    /* gain 6: pre-activations far beyond +-7, so both clamps act */
    rcase_t c = {
        .scheme = MX_SCHEME_W16A16, .act = MX_ACT_SWIGLU_OAI, .order = MX_GATEUP_INTERLEAVED, .bias = 1, .gain = 6.0f};
    run_random_case(&c, 64, 64, 4, 3, 77);
    c.scheme = MX_SCHEME_W4A16;
    run_random_case(&c, 64, 64, 4, 3, 78);
}

static void test_ref_fp8_weights_with_block_channel_and_tensor_scales(void **state)
{
    (void)state;
    /* 2I = 320 rows and H = 160 cols: several 128x128 scale blocks, short last ones */
    mx_wscale_t kinds[3] = {MX_WSCALE_BLOCK, MX_WSCALE_CHANNEL, MX_WSCALE_TENSOR};
    for (int k = 0; k < 3; k++) {
        rcase_t c = {
            .scheme = MX_SCHEME_W8A16, .act = MX_ACT_SILU, .order = MX_GATEUP_HALVES, .bias = 0, .fp8 = kinds[k]};
        run_random_case(&c, 160, 160, 3, 3, 200 + (uint64_t)k);
        c.scheme = MX_SCHEME_W8A8;
        run_random_case(&c, 160, 160, 3, 3, 210 + (uint64_t)k);
    }
}

static void test_ref_w8a8_per_128_group_activation_scales(void **state)
{
    (void)state;
    rcase_t c = {.scheme = MX_SCHEME_W8A8,
                 .act = MX_ACT_GELU_TANH,
                 .order = MX_GATEUP_HALVES,
                 .bias = 1,
                 .act_group = 128,
                 .fp8 = MX_WSCALE_BLOCK};
    run_random_case(&c, 288, 160, 4, 3, 300); /* 288 = 2 full groups + a short one */
}

static void test_ref_w4a8_static_and_dynamic_down_input_scales(void **state)
{
    (void)state;
    /* kt experts: even experts have down_input_scale 0 (dynamic), odd ones static */
    rcase_t c = {.scheme = MX_SCHEME_W4A8, .act = MX_ACT_SWIGLU_OAI, .order = MX_GATEUP_INTERLEAVED, .bias = 1};
    run_random_case(&c, 96, 64, 8, 4, 400);
}

/* ---------------------------------------------------------------- hand-made rounding points */

/* W16A16 SiLU (halves), H = I = 32. x[0] = x[1] = 1. gate rows: 20 at column 0
 * (silu(20) = 20 in FP32). up row 0: 1+2^-7 at column 1, up row 1: 1. So
 * act0 = 20.15625 -> BF16 20.125, act1 = 20. down row 0 = [1, -1, 0...],
 * down bias 100: y0 = 100 + 0.125 -> BF16 100 (without the hidden rounding it
 * would be 100.15625 -> 100.0 too, so row 1 checks the hidden rounding alone:
 * down row 1 = [1, -1, 0...] with bias 0 -> 0.125, not 0.15625). */
static void test_ref_rounds_hidden_to_bf16_between_gemms_and_output_to_bf16(void **state)
{
    (void)state;
    const size_t H = 32, I = 32;
    mx_moe_desc_t d = kt_desc(MX_SCHEME_W16A16, MX_ACT_SILU, MX_GATEUP_HALVES, H, I);
    uint16_t *gu = calloc(2 * I * H, 2), *dn = calloc(H * I, 2);
    float gub[64] = {0}, db[32] = {0};
    uint16_t one = mx_quant_bf16_from_f32(1.0f), m1 = mx_quant_bf16_from_f32(-1.0f);
    gu[0 * H + 0] = mx_quant_bf16_from_f32(20.0f);
    gu[1 * H + 0] = mx_quant_bf16_from_f32(20.0f);
    gu[(I + 0) * H + 1] = mx_quant_bf16_from_f32(1.0078125f);
    gu[(I + 1) * H + 1] = one;
    dn[0 * I + 0] = one;
    dn[0 * I + 1] = m1;
    dn[1 * I + 0] = one;
    dn[1 * I + 1] = m1;
    db[0] = 100.0f;
    db[2] = 0.3f; /* row 2: no weights, bias only -> BF16(0.3) */
    mx_expert_weights_t w = {.gate_up = {MX_WFMT_BF16, MX_WSCALE_NONE, 2 * I, H, gu, NULL},
                             .down = {MX_WFMT_BF16, MX_WSCALE_NONE, H, I, dn, NULL},
                             .gate_up_bias = gub,
                             .down_bias = db};
    uint16_t x[32] = {0};
    x[0] = one;
    x[1] = one;
    mx_device_info_t dev;
    R->probe(&dev);
    mx_backend_packed_t *pk;
    assert_int_equal(R->prepack(&dev, &d, &w, 1, &pk), MX_OK);
    int32_t tok = 0, ex = 0;
    float wt = 0.5f;
    uint16_t out[32];
    float sum[32] = {0};
    kt_poison_bf16(out, 32);
    mx_run_args_t args = {.n_tokens = 1,
                          .x = x,
                          .n_assign = 1,
                          .tok = &tok,
                          .expert = &ex,
                          .weight = &wt,
                          .mode = MX_OUT_PER_ASSIGNMENT,
                          .out_bf16 = out};
    assert_int_equal(kt_backend_run(R, pk, &args), MX_OK);
    assert_float_equal(mx_quant_bf16_to_f32(out[0]), 100.0f, 0.0f);
    assert_float_equal(mx_quant_bf16_to_f32(out[1]), 0.125f, 0.0f);
    assert_int_equal(out[2], mx_quant_bf16_from_f32(0.3f));
    for (int r = 3; r < 32; r++)
        assert_float_equal(mx_quant_bf16_to_f32(out[r]), 0.0f, 0.0f);
    args.mode = MX_OUT_WEIGHTED_SUM;
    args.out_f32 = sum;
    sum[0] = 1.0f; /* accumulates into what is there */
    assert_int_equal(kt_backend_run(R, pk, &args), MX_OK);
    assert_float_equal(sum[0], 51.0f, 0.0f);   /* 1 + 0.5 * bf16(100.125) */
    assert_float_equal(sum[1], 0.0625f, 0.0f); /* 0.5 * 0.125 */
    assert_float_equal(sum[2], 0.5f * mx_quant_bf16_to_f32(mx_quant_bf16_from_f32(0.3f)), 0.0f);
    R->release(pk);
    free(gu), free(dn);
}

/* WEIGHTED_SUM adds experts in ascending local-expert order whatever the
 * assignment order: 1e8 + (-1e8) + 1 in that order gives 1, any other order 0. */
static void test_ref_weighted_sum_adds_experts_in_ascending_order(void **state)
{
    (void)state;
    const size_t H = 32, I = 32;
    mx_moe_desc_t d = kt_desc(MX_SCHEME_W16A16, MX_ACT_SILU, MX_GATEUP_HALVES, H, I);
    uint16_t *zero_gu = calloc(2 * I * H, 2), *zero_dn = calloc(H * I, 2);
    float db[3][32] = {{0}};
    db[0][0] = 1e8f; /* bf16(1e8) = 99614720 */
    db[1][0] = -1e8f;
    db[2][0] = 1.0f;
    mx_expert_weights_t w[3];
    for (int e = 0; e < 3; e++)
        w[e] = (mx_expert_weights_t){.gate_up = {MX_WFMT_BF16, MX_WSCALE_NONE, 2 * I, H, zero_gu, NULL},
                                     .down = {MX_WFMT_BF16, MX_WSCALE_NONE, H, I, zero_dn, NULL},
                                     .down_bias = db[e]};
    mx_device_info_t dev;
    R->probe(&dev);
    mx_backend_packed_t *pk;
    assert_int_equal(R->prepack(&dev, &d, w, 3, &pk), MX_OK);
    uint16_t x[32];
    kt_rng_t r;
    kt_rng_seed(&r, 5);
    kt_tokens_fill(&r, x, 32, 1.0f);
    int32_t tok[3] = {0, 0, 0}, ex[3] = {2, 0, 1};
    float wt[3] = {1.0f, 1.0f, 1.0f}, sum[32] = {0};
    mx_run_args_t args = {.n_tokens = 1,
                          .x = x,
                          .n_assign = 3,
                          .tok = tok,
                          .expert = ex,
                          .weight = wt,
                          .mode = MX_OUT_WEIGHTED_SUM,
                          .out_f32 = sum};
    assert_int_equal(kt_backend_run(R, pk, &args), MX_OK);
    assert_float_equal(sum[0], 1.0f, 0.0f);
    R->release(pk);
    free(zero_gu), free(zero_dn);
}

/* ---------------------------------------------------------------- failure paths */

static void test_ref_supports_declines_what_it_cannot_run_with_a_reason(void **state)
{
    (void)state;
    mx_device_info_t dev;
    assert_int_equal(R->probe(&dev), MX_OK);
    assert_string_equal(dev.isa, "scalar");
    assert_int_equal(dev.device_index, -1);
    char why[MX_REASON_MAX];
    mx_moe_desc_t d = kt_desc(MX_SCHEME_W4A16, MX_ACT_SILU, MX_GATEUP_HALVES, 80, 64);
    assert_false(R->supports(&dev, &d, why, sizeof(why)));
    assert_non_null(strstr(why, "multiples of 32"));
    d = kt_desc(MX_SCHEME_W16A16, MX_ACT_SILU, MX_GATEUP_HALVES, 80, 65); /* BF16: any size */
    assert_true(R->supports(&dev, &d, why, sizeof(why)));
    d = kt_desc(MX_SCHEME_W8A8, MX_ACT_SILU, MX_GATEUP_HALVES, 128, 128);
    d.act_group = 64;
    assert_false(R->supports(&dev, &d, why, sizeof(why)));
    assert_non_null(strstr(why, "act_group 64"));
    d = kt_desc(MX_SCHEME_W4A16, MX_ACT_SWIGLU_OAI, MX_GATEUP_INTERLEAVED, 64, 64);
    d.swiglu_limit = 0.0f;
    assert_false(R->supports(&dev, &d, why, sizeof(why)));
    assert_non_null(strstr(why, "swiglu_limit"));
    d = kt_desc((mx_scheme_t)9, MX_ACT_SILU, MX_GATEUP_HALVES, 64, 64);
    assert_false(R->supports(&dev, &d, why, sizeof(why)));
    d = kt_desc(MX_SCHEME_W4A16, (mx_act_t)7, MX_GATEUP_HALVES, 64, 64);
    assert_false(R->supports(&dev, &d, why, sizeof(why)));
    d = kt_desc(MX_SCHEME_W4A16, MX_ACT_SILU, (mx_gateup_order_t)3, 64, 64);
    assert_false(R->supports(&dev, &d, why, sizeof(why)));
    d = kt_desc(MX_SCHEME_W4A16, MX_ACT_SILU, MX_GATEUP_HALVES, 0, 64);
    assert_false(R->supports(&dev, &d, why, sizeof(why)));
}

static void test_ref_prepack_rejects_weights_that_do_not_match_the_layer(void **state)
{
    (void)state;
    mx_moe_desc_t d = kt_desc(MX_SCHEME_W4A16, MX_ACT_SILU, MX_GATEUP_HALVES, 64, 64);
    kt_experts_t *ex;
    assert_int_equal(kt_experts_create(&d, 2, NULL, 9, &ex), MX_OK);
    mx_device_info_t dev;
    R->probe(&dev);
    mx_backend_packed_t *pk = (mx_backend_packed_t *)(uintptr_t)0x1234, *before = pk;
    mx_expert_weights_t w[2] = {ex->w[0], ex->w[1]};

    w[1].down.rows = 63;
    assert_int_equal(R->prepack(&dev, &d, w, 2, &pk), MX_ERR_INVALID);
    assert_non_null(strstr(mx_error_detail(), "expert 1 down"));
    assert_ptr_equal(pk, before);
    w[1] = ex->w[1];
    w[0].gate_up.fmt = MX_WFMT_FP8;
    assert_int_equal(R->prepack(&dev, &d, w, 2, &pk), MX_ERR_INVALID);
    assert_non_null(strstr(mx_error_detail(), "expected MXFP4"));
    w[0] = ex->w[0];
    w[0].gate_up.scales = NULL;
    assert_int_equal(R->prepack(&dev, &d, w, 2, &pk), MX_ERR_INVALID);
    assert_non_null(strstr(mx_error_detail(), "no scales"));
    w[0] = ex->w[0];
    mx_moe_desc_t d8 = d;
    d8.scheme = MX_SCHEME_W4A8; /* same MXFP4 weights, but no input_scale */
    assert_int_equal(R->prepack(&dev, &d8, w, 2, &pk), MX_ERR_INVALID);
    assert_non_null(strstr(mx_error_detail(), "input_scale"));
    mx_moe_desc_t bad = d;
    bad.hidden = 80;
    assert_int_equal(R->prepack(&dev, &bad, w, 2, &pk), MX_ERR_UNSUPPORTED);
    assert_ptr_equal(pk, before);
    /* a good prepack copies: the views may go away */
    assert_int_equal(R->prepack(&dev, &d, w, 2, &pk), MX_OK);
    assert_ptr_not_equal(pk, before);
    R->release(pk);
    R->release(NULL);
    kt_experts_destroy(ex);
}

static void test_ref_run_rejects_bad_assignments_and_writes_nothing(void **state)
{
    (void)state;
    mx_moe_desc_t d = kt_desc(MX_SCHEME_W16A16, MX_ACT_GELU_TANH, MX_GATEUP_HALVES, 32, 32);
    kt_experts_t *ex;
    assert_int_equal(kt_experts_create(&d, 2, NULL, 11, &ex), MX_OK);
    mx_device_info_t dev;
    R->probe(&dev);
    mx_backend_packed_t *pk;
    assert_int_equal(R->prepack(&dev, &d, ex->w, 2, &pk), MX_OK);
    uint16_t x[2 * 32], out[3 * 32];
    kt_rng_t r;
    kt_rng_seed(&r, 3);
    kt_tokens_fill(&r, x, 64, 1.0f);
    int32_t tok[3] = {0, 1, 0}, e[3] = {0, 1, 1};
    float wt[3] = {0.5f, 0.5f, 0.5f};
    mx_run_args_t args = {.n_tokens = 2,
                          .x = x,
                          .n_assign = 3,
                          .tok = tok,
                          .expert = e,
                          .weight = wt,
                          .mode = MX_OUT_PER_ASSIGNMENT,
                          .out_bf16 = out};
    kt_poison_bf16(out, 96);
    tok[2] = 2; /* out of range */
    assert_int_equal(kt_backend_run(R, pk, &args), MX_ERR_INVALID);
    assert_non_null(strstr(mx_error_detail(), "assignment 2 has token 2"));
    assert_int_equal(kt_count_nan_bf16(out, 96), 96);
    tok[2] = 0;
    e[1] = 2;
    assert_int_equal(kt_backend_run(R, pk, &args), MX_ERR_INVALID);
    assert_non_null(strstr(mx_error_detail(), "local expert 2"));
    e[1] = -1;
    assert_int_equal(kt_backend_run(R, pk, &args), MX_ERR_INVALID);
    assert_int_equal(kt_count_nan_bf16(out, 96), 96);
    e[1] = 1;
    args.out_bf16 = NULL;
    assert_int_equal(kt_backend_run(R, pk, &args), MX_ERR_INVALID);
    args.mode = MX_OUT_WEIGHTED_SUM;
    assert_int_equal(kt_backend_run(R, pk, &args), MX_ERR_INVALID);
    assert_non_null(strstr(mx_error_detail(), "out_f32"));
    args.mode = (mx_out_mode_t)5;
    assert_int_equal(kt_backend_run(R, pk, &args), MX_ERR_INVALID);
    assert_int_equal(R->run(pk, NULL, NULL), MX_ERR_INVALID);
    /* no assignments: nothing to do, nothing written */
    args.mode = MX_OUT_PER_ASSIGNMENT;
    args.out_bf16 = out;
    args.n_assign = 0;
    assert_int_equal(kt_backend_run(R, pk, &args), MX_OK);
    assert_int_equal(kt_count_nan_bf16(out, 96), 96);
    /* and then a good run writes every element */
    args.n_assign = 3;
    assert_int_equal(kt_backend_run(R, pk, &args), MX_OK);
    assert_int_equal(kt_count_nan_bf16(out, 96), 0);
    R->release(pk);
    kt_experts_destroy(ex);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ref_matches_independent_math_for_every_scheme_activation_and_order),
        cmocka_unit_test(test_ref_swiglu_clamps_gate_above_and_up_both_ways),
        cmocka_unit_test(test_ref_fp8_weights_with_block_channel_and_tensor_scales),
        cmocka_unit_test(test_ref_w8a8_per_128_group_activation_scales),
        cmocka_unit_test(test_ref_w4a8_static_and_dynamic_down_input_scales),
        cmocka_unit_test(test_ref_rounds_hidden_to_bf16_between_gemms_and_output_to_bf16),
        cmocka_unit_test(test_ref_weighted_sum_adds_experts_in_ascending_order),
        cmocka_unit_test(test_ref_supports_declines_what_it_cannot_run_with_a_reason),
        cmocka_unit_test(test_ref_prepack_rejects_weights_that_do_not_match_the_layer),
        cmocka_unit_test(test_ref_run_rejects_bad_assignments_and_writes_nothing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
