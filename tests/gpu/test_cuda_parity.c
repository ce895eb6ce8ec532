/* tests/gpu: the `cuda` backend against the CPU reference (gpu_ref.c, the
 * numerics of FORMATS.md Part 1): every scheme and activation, both output
 * modes, token counts 1..8192, sizes that are no multiple of the tiles, experts
 * without tokens, batch invariance, and the failure paths. Exits 77 (skipped)
 * when no CUDA device is here. Seeds are fixed and printed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cuda_internal.h"
#include "gpu_ref.h"
#include "mxep/kernels.h"

static mx_device_info_t g_dev;

static double tol_of(mx_scheme_t s)
{
    return (s == MX_SCHEME_W4A8 || s == MX_SCHEME_W8A8) ? 5e-3 : 2e-3;
}

static mx_moe_desc_t make_desc(mx_scheme_t sch, mx_act_t act, size_t H, size_t I)
{
    mx_moe_desc_t d;
    memset(&d, 0, sizeof d);
    d.scheme = sch;
    d.act = act;
    d.order = act == MX_ACT_SWIGLU_OAI ? MX_GATEUP_INTERLEAVED : MX_GATEUP_HALVES;
    d.hidden = H;
    d.inter = I;
    d.swiglu_limit = 7.0f;
    d.swiglu_alpha = 1.702f;
    d.act_group = 0;
    return d;
}

typedef struct {
    size_t T, NA;
    uint16_t *x;
    int32_t *tok, *expert;
    float *w;
} batch_t;

/* T tokens, top_k distinct experts each among [0, n_used) (experts >= n_used get none). */
static void batch_make(batch_t *b, size_t T, size_t H, int top_k, int n_used, uint64_t seed)
{
    gref_rng_t r = {seed};
    b->T = T;
    b->NA = T * (size_t)top_k;
    b->x = malloc(T * H * 2);
    b->tok = malloc(b->NA * 4 + 4);
    b->expert = malloc(b->NA * 4 + 4);
    b->w = malloc(b->NA * 4 + 4);
    assert_non_null(b->x);
    for (size_t i = 0; i < T * H; i++)
        b->x[i] = gref_f2bf(gref_uniform(&r) * 1.5f);
    for (size_t t = 0; t < T; t++) {
        for (int k = 0; k < top_k; k++) {
            int e;
            int dup;
            do {
                e = (int)(gref_next(&r) % (uint64_t)n_used);
                dup = 0;
                for (int j = 0; j < k; j++)
                    dup |= b->expert[t * top_k + j] == e;
            } while (dup);
            b->tok[t * top_k + k] = (int32_t)t;
            b->expert[t * top_k + k] = e;
            b->w[t * top_k + k] = 0.25f + 0.5f * (gref_uniform(&r) + 1.0f) / 2.0f;
        }
    }
    /* assignments in a shuffled order: the backend must not rely on token order */
    for (size_t i = b->NA; i > 1; i--) {
        size_t j = gref_next(&r) % i;
        int32_t t0 = b->tok[i - 1], e0 = b->expert[i - 1];
        float w0 = b->w[i - 1];
        b->tok[i - 1] = b->tok[j];
        b->expert[i - 1] = b->expert[j];
        b->w[i - 1] = b->w[j];
        b->tok[j] = t0;
        b->expert[j] = e0;
        b->w[j] = w0;
    }
}

static void batch_free(batch_t *b)
{
    free(b->x);
    free(b->tok);
    free(b->expert);
    free(b->w);
}

static mx_run_args_t args_of(const batch_t *b, mx_out_mode_t mode, uint16_t *ob, float *of)
{
    mx_run_args_t a;
    memset(&a, 0, sizeof a);
    a.n_tokens = b->T;
    a.x = b->x;
    a.n_assign = b->NA;
    a.tok = b->tok;
    a.expert = b->expert;
    a.weight = b->w;
    a.mode = mode;
    a.out_bf16 = ob;
    a.out_f32 = of;
    return a;
}

/* One parity case; returns the relative L2 error. */
static double parity_case(mx_moe_desc_t d, int E, size_t T, int top_k, mx_wscale_t fp8s, mx_out_mode_t mode,
                          uint64_t seed)
{
    gref_experts_t g;
    assert_int_equal(gref_experts_make(&d, E, fp8s, 1, seed, &g), 0);
    char why[MX_REASON_MAX];
    assert_true(mx_backend_cuda.supports(&g_dev, &d, why, sizeof why));
    mx_backend_packed_t *pk = NULL;
    mx_status_t st = mx_backend_cuda.prepack(&g_dev, &d, g.ex, E, &pk);
    if (st != MX_OK)
        fail_msg("prepack: %s", mx_error_detail());
    batch_t b;
    batch_make(&b, T, d.hidden, top_k, E > top_k + 1 ? E - 1 : E, seed ^ 0x5a5a);
    size_t H = d.hidden;
    double err;
    if (mode == MX_OUT_PER_ASSIGNMENT) {
        uint16_t *o = malloc(b.NA * H * 2), *r = malloc(b.NA * H * 2);
        memset(o, 0xff, b.NA * H * 2); /* poison: NaN */
        mx_run_args_t a = args_of(&b, mode, o, NULL), ar = args_of(&b, mode, r, NULL);
        st = mx_backend_cuda.run(pk, &a, NULL);
        if (st != MX_OK)
            fail_msg("run: %s", mx_error_detail());
        gref_run(&d, g.ex, &ar);
        err = gref_rel_l2_bf16(o, r, b.NA * H);
        free(o);
        free(r);
    } else {
        float *o = malloc(T * H * 4), *r = malloc(T * H * 4);
        for (size_t i = 0; i < T * H; i++)
            o[i] = r[i] = 0.01f * (float)(i % 7); /* run() adds */
        mx_run_args_t a = args_of(&b, mode, NULL, o), ar = args_of(&b, mode, NULL, r);
        st = mx_backend_cuda.run(pk, &a, NULL);
        if (st != MX_OK)
            fail_msg("run: %s", mx_error_detail());
        gref_run(&d, g.ex, &ar);
        err = gref_rel_l2_f32(o, r, T * H);
        free(o);
        free(r);
    }
    printf("  %-6s %-10s H=%zu I=%zu E=%d T=%zu k=%d fp8scale=%d mode=%d cfg=%d seed=%llu: rel L2 %.3g\n",
           mx_scheme_name(d.scheme), mx_act_name(d.act), d.hidden, d.inter, E, T, top_k, (int)fp8s, (int)mode,
           mxi_cuda_staged_cfg(pk), (unsigned long long)seed, err);
    mx_backend_cuda.release(pk);
    batch_free(&b);
    gref_experts_free(&g);
    return err;
}

static void test_cuda_every_scheme_and_activation_matches_ref(void **state)
{
    (void)state;
    uint64_t seed = 1000;
    for (int s = 0; s < MX_SCHEME_COUNT; s++) {
        int fp4 = s == MX_SCHEME_W4A16 || s == MX_SCHEME_W4A8;
        size_t H = fp4 ? 96 : 100, I = fp4 ? 160 : 70; /* no multiples of 64 */
        for (int a = 0; a < MX_ACT_COUNT; a++) {
            mx_wscale_t kinds[2] = {MX_WSCALE_BLOCK, MX_WSCALE_CHANNEL};
            int nk = (s == MX_SCHEME_W8A16 || s == MX_SCHEME_W8A8) ? 2 : 1;
            for (int k = 0; k < nk; k++)
                for (int grp = 0; grp < (s == MX_SCHEME_W8A8 ? 2 : 1); grp++) {
                    mx_moe_desc_t d = make_desc((mx_scheme_t)s, (mx_act_t)a, H, I);
                    d.act_group = grp ? 128 : 0;
                    if (grp) {
                        d.hidden = 300; /* several 128 groups, a partial last one */
                        d.inter = 200;
                    }
                    double err = parity_case(d, 5, 23, 2, kinds[k], MX_OUT_PER_ASSIGNMENT, seed++);
                    assert_true(err <= tol_of((mx_scheme_t)s));
                }
        }
    }
}

static void test_cuda_weighted_sum_matches_ref(void **state)
{
    (void)state;
    uint64_t seed = 2000;
    for (int s = 0; s < MX_SCHEME_COUNT; s++) {
        mx_moe_desc_t d = make_desc((mx_scheme_t)s, MX_ACT_SWIGLU_OAI, 128, 96);
        double err = parity_case(d, 6, 40, 3, MX_WSCALE_BLOCK, MX_OUT_WEIGHTED_SUM, seed++);
        assert_true(err <= tol_of((mx_scheme_t)s));
    }
}

static void test_cuda_token_counts_1_to_8192_match_ref(void **state)
{
    (void)state;
    const size_t Ts[] = {1, 2, 3, 8, 15, 16, 17, 33, 63, 64, 65, 129, 500, 2048, 8192};
    uint64_t seed = 3000;
    for (size_t i = 0; i < sizeof Ts / sizeof Ts[0]; i++) {
        mx_moe_desc_t d = make_desc(MX_SCHEME_W4A16, MX_ACT_SWIGLU_OAI, 128, 64);
        int k = Ts[i] >= 2048 ? 1 : 4;
        double err = parity_case(d, 8, Ts[i], k, MX_WSCALE_NONE, MX_OUT_PER_ASSIGNMENT, seed++);
        assert_true(err <= 2e-3);
    }
    mx_moe_desc_t d = make_desc(MX_SCHEME_W8A8, MX_ACT_SILU, 128, 64);
    assert_true(parity_case(d, 8, 1000, 2, MX_WSCALE_BLOCK, MX_OUT_WEIGHTED_SUM, seed++) <= 5e-3);
}

/* The rows of a token must be the same bits whatever else is in the batch and whatever tile shape runs. */
static void test_cuda_output_is_batch_invariant(void **state)
{
    (void)state;
    const uint64_t seed = 4000;
    for (int s = 0; s < MX_SCHEME_COUNT; s++) {
        mx_moe_desc_t d = make_desc((mx_scheme_t)s, MX_ACT_SWIGLU_OAI, 128, 128);
        if (s == MX_SCHEME_W8A8)
            d.act_group = 128;
        gref_experts_t g;
        assert_int_equal(gref_experts_make(&d, 4, MX_WSCALE_BLOCK, 1, seed + s, &g), 0);
        mx_backend_packed_t *pk = NULL;
        assert_int_equal(mx_backend_cuda.prepack(&g_dev, &d, g.ex, 4, &pk), MX_OK);
        batch_t b;
        batch_make(&b, 300, d.hidden, 2, 4, seed + 100 + s);
        size_t H = d.hidden;
        uint16_t *full = malloc(b.NA * H * 2), *part = malloc(b.NA * H * 2);
        mx_run_args_t a = args_of(&b, MX_OUT_PER_ASSIGNMENT, full, NULL);
        assert_int_equal(mx_backend_cuda.run(pk, &a, NULL), MX_OK);
        /* every tile configuration on the whole batch */
        for (int cfg = 0; cfg < 3; cfg++) {
            mxi_cuda_force_cfg(pk, cfg);
            memset(part, 0xff, b.NA * H * 2);
            a.out_bf16 = part;
            assert_int_equal(mx_backend_cuda.run(pk, &a, NULL), MX_OK);
            assert_memory_equal(full, part, b.NA * H * 2);
        }
        mxi_cuda_force_cfg(pk, -1);
        /* prefixes of the assignment list: smaller batches, other batch-mates */
        const size_t prefix[] = {1, 3, 37};
        for (size_t p = 0; p < 3; p++) {
            a.n_assign = prefix[p];
            a.out_bf16 = part;
            memset(part, 0xff, prefix[p] * H * 2);
            assert_int_equal(mx_backend_cuda.run(pk, &a, NULL), MX_OK);
            assert_memory_equal(full, part, prefix[p] * H * 2);
        }
        printf("  %s: bitwise equal across S/M/L tiles and batches of 1, 3, 37 (seed %llu)\n", mx_scheme_name(d.scheme),
               (unsigned long long)(seed + s));
        free(full);
        free(part);
        batch_free(&b);
        mx_backend_cuda.release(pk);
        gref_experts_free(&g);
    }
}

static void test_cuda_zero_token_experts_and_empty_batches(void **state)
{
    (void)state;
    mx_moe_desc_t d = make_desc(MX_SCHEME_W4A16, MX_ACT_SILU, 64, 64);
    gref_experts_t g;
    assert_int_equal(gref_experts_make(&d, 8, MX_WSCALE_NONE, 0, 5000, &g), 0);
    mx_backend_packed_t *pk = NULL;
    assert_int_equal(mx_backend_cuda.prepack(&g_dev, &d, g.ex, 8, &pk), MX_OK);
    batch_t b;
    batch_make(&b, 10, 64, 1, 1, 5001); /* expert 0 only */
    for (size_t i = 0; i < b.NA; i++)
        b.expert[i] = 5;
    uint16_t *o = malloc(b.NA * 64 * 2), *r = malloc(b.NA * 64 * 2);
    mx_run_args_t a = args_of(&b, MX_OUT_PER_ASSIGNMENT, o, NULL), ar = args_of(&b, MX_OUT_PER_ASSIGNMENT, r, NULL);
    assert_int_equal(mx_backend_cuda.run(pk, &a, NULL), MX_OK);
    gref_run(&d, g.ex, &ar);
    assert_true(gref_rel_l2_bf16(o, r, b.NA * 64) <= 2e-3);
    /* no assignments: nothing is written */
    memset(o, 0x5a, 64 * 2);
    a.n_assign = 0;
    assert_int_equal(mx_backend_cuda.run(pk, &a, NULL), MX_OK);
    for (size_t i = 0; i < 64 * 2; i++)
        assert_int_equal(((uint8_t *)o)[i], 0x5a);
    free(o);
    free(r);
    batch_free(&b);
    mx_backend_cuda.release(pk);
    gref_experts_free(&g);
}

static void test_cuda_bad_assignment_is_rejected_and_outputs_untouched(void **state)
{
    (void)state;
    mx_moe_desc_t d = make_desc(MX_SCHEME_W16A16, MX_ACT_GELU_TANH, 64, 64);
    gref_experts_t g;
    assert_int_equal(gref_experts_make(&d, 3, MX_WSCALE_NONE, 0, 6000, &g), 0);
    mx_backend_packed_t *pk = NULL;
    assert_int_equal(mx_backend_cuda.prepack(&g_dev, &d, g.ex, 3, &pk), MX_OK);
    batch_t b;
    batch_make(&b, 4, 64, 2, 3, 6001);
    uint16_t *o = malloc(b.NA * 64 * 2);
    memset(o, 0x5a, b.NA * 64 * 2);
    mx_run_args_t a = args_of(&b, MX_OUT_PER_ASSIGNMENT, o, NULL);
    b.expert[3] = 3; /* only 3 experts */
    assert_int_equal(mx_backend_cuda.run(pk, &a, NULL), MX_ERR_INVALID);
    assert_non_null(strstr(mx_error_detail(), "assignment 3"));
    b.expert[3] = 0;
    b.tok[1] = 4; /* only 4 tokens */
    assert_int_equal(mx_backend_cuda.run(pk, &a, NULL), MX_ERR_INVALID);
    assert_non_null(strstr(mx_error_detail(), "token 4"));
    for (size_t i = 0; i < b.NA * 64 * 2; i++)
        assert_int_equal(((uint8_t *)o)[i], 0x5a);
    free(o);
    batch_free(&b);
    mx_backend_cuda.release(pk);
    gref_experts_free(&g);
}

static void test_cuda_prepack_rejects_wrong_shapes_and_formats(void **state)
{
    (void)state;
    mx_moe_desc_t d = make_desc(MX_SCHEME_W4A16, MX_ACT_SILU, 64, 64);
    gref_experts_t g;
    assert_int_equal(gref_experts_make(&d, 2, MX_WSCALE_NONE, 0, 7000, &g), 0);
    mx_backend_packed_t *pk = (mx_backend_packed_t *)0x1;
    g.ex[1].down.rows = 32;
    assert_int_equal(mx_backend_cuda.prepack(&g_dev, &d, g.ex, 2, &pk), MX_ERR_INVALID);
    assert_non_null(strstr(mx_error_detail(), "expert 1 down"));
    assert_ptr_equal(pk, (mx_backend_packed_t *)0x1);
    g.ex[1].down.rows = 64;
    g.ex[0].gate_up.fmt = MX_WFMT_FP8;
    assert_int_equal(mx_backend_cuda.prepack(&g_dev, &d, g.ex, 2, &pk), MX_ERR_INVALID);
    assert_non_null(strstr(mx_error_detail(), "expert 0 gate_up"));
    gref_experts_free(&g);
    /* W4A8 without static activation scales */
    d.scheme = MX_SCHEME_W4A8;
    assert_int_equal(gref_experts_make(&d, 2, MX_WSCALE_NONE, 0, 7001, &g), 0);
    g.ex[1].input_scale = 0.0f;
    assert_int_equal(mx_backend_cuda.prepack(&g_dev, &d, g.ex, 2, &pk), MX_ERR_INVALID);
    assert_non_null(strstr(mx_error_detail(), "input_scale"));
    gref_experts_free(&g);
}

static void test_cuda_supports_declines_with_reasons(void **state)
{
    (void)state;
    char why[MX_REASON_MAX];
    mx_moe_desc_t d = make_desc(MX_SCHEME_W8A8, MX_ACT_SILU, 256, 256);
    d.act_group = 64;
    assert_false(mx_backend_cuda.supports(&g_dev, &d, why, sizeof why));
    assert_non_null(strstr(why, "groups of 64"));
    d = make_desc(MX_SCHEME_W4A16, MX_ACT_SILU, 80, 256);
    assert_false(mx_backend_cuda.supports(&g_dev, &d, why, sizeof why));
    assert_non_null(strstr(why, "multiples of 32"));
    mx_device_info_t old = g_dev;
    old.flags = 75;
    d = make_desc(MX_SCHEME_W16A16, MX_ACT_SILU, 64, 64);
    assert_false(mx_backend_cuda.supports(&old, &d, why, sizeof why));
    assert_non_null(strstr(why, "7.5"));
}

int main(void)
{
    mx_status_t st = mx_backend_cuda.probe(&g_dev);
    if (st != MX_OK) {
        printf("cuda: %s: %s -- skipping the GPU parity tests\n", mx_status_str(st), mx_error_detail());
        return 77;
    }
    printf("cuda device: %s, isa %s, %d SMs\n", g_dev.name, g_dev.isa, g_dev.cores);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cuda_supports_declines_with_reasons),
        cmocka_unit_test(test_cuda_prepack_rejects_wrong_shapes_and_formats),
        cmocka_unit_test(test_cuda_bad_assignment_is_rejected_and_outputs_untouched),
        cmocka_unit_test(test_cuda_zero_token_experts_and_empty_batches),
        cmocka_unit_test(test_cuda_every_scheme_and_activation_matches_ref),
        cmocka_unit_test(test_cuda_weighted_sum_matches_ref),
        cmocka_unit_test(test_cuda_output_is_batch_invariant),
        cmocka_unit_test(test_cuda_token_counts_1_to_8192_match_ref),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
