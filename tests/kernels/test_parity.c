/* Parity: every registered backend other than ref, on every (scheme,
 * activation, gate/up order, output mode) its `supports` accepts, at token
 * counts 1, 3, 17, 64, 257 and sizes that are not tile multiples (96, 704, and
 * H = I = 2880 with few tokens), with idle experts, against ref by relative L2
 * (FORMATS.md: W16A16/W4A16/W8A16 <= 2e-3, W4A8/W8A8 <= 5e-3). Outputs are
 * poisoned before each run and checked to be fully written, with a canary row
 * past the end. Seeds are printed. Skips when ref is the only backend. */
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
#include "mxep/log.h"
#include "mxep/quant.h"

#define MAX_BACKENDS 8
#define SEED_BASE 0xC0FFEEull

typedef struct {
    const mx_backend_ops_t *b;
    mx_device_info_t dev;
    int checked, declined;
    double worst[MX_SCHEME_COUNT];
} target_t;

static const mx_backend_ops_t *ref;
static target_t targets[MAX_BACKENDS];
static int n_targets;
static int failures;

static int group_setup(void **state)
{
    (void)state;
    int n = 0;
    const mx_backend_ops_t *const *t = mx_backend_registry(&n);
    ref = mx_backend_find("ref");
    for (int i = 0; i < n && n_targets < MAX_BACKENDS; i++) {
        if (t[i] == ref)
            continue;
        target_t *g = &targets[n_targets];
        memset(g, 0, sizeof(*g));
        if (t[i]->probe(&g->dev) != MX_OK) {
            printf("parity: %s: no device (%s), not tested here\n", t[i]->name, mx_error_detail());
            continue;
        }
        g->b = t[i];
        printf("parity: testing %s on %s (%s)\n", t[i]->name, g->dev.name, g->dev.isa);
        n_targets++;
    }
    printf("parity: seed base 0x%llx\n", (unsigned long long)SEED_BASE);
    return 0;
}

typedef struct {
    mx_scheme_t scheme;
    mx_act_t act;
    mx_gateup_order_t order;
    size_t H, I;
    size_t T;
    int E, top_k, idle;
    int bias, act_group;
    mx_wscale_t fp8;
    int modes; /* bit 0: PER_ASSIGNMENT, bit 1: WEIGHTED_SUM */
    uint64_t seed;
} pcase_t;

static void describe(const pcase_t *c, char *buf, size_t len)
{
    snprintf(buf, len, "%s %s %s H=%zu I=%zu T=%zu E=%d top%d idle=%d bias=%d act_group=%d fp8_scale=%d seed=0x%llx",
             mx_scheme_name(c->scheme), mx_act_name(c->act), c->order == MX_GATEUP_HALVES ? "halves" : "interleaved",
             c->H, c->I, c->T, c->E, c->top_k, c->idle, c->bias, c->act_group, (int)c->fp8,
             (unsigned long long)c->seed);
}

static mx_status_t run_mode(const mx_backend_ops_t *b, const mx_backend_packed_t *pk, const pcase_t *c,
                            const uint16_t *x, const kt_routing_t *rt, mx_out_mode_t mode, const float *base,
                            uint16_t *out_bf16, float *out_f32)
{
    const size_t H = c->H;
    if (mode == MX_OUT_PER_ASSIGNMENT)
        kt_poison_bf16(out_bf16, (rt->n_assign + 1) * H); /* + canary row */
    else {
        memcpy(out_f32, base, c->T * H * sizeof(float));
        for (size_t i = 0; i < H; i++)
            out_f32[c->T * H + i] = NAN; /* canary row */
    }
    mx_run_args_t a = {.n_tokens = c->T,
                       .x = x,
                       .n_assign = rt->n_assign,
                       .tok = rt->tok,
                       .expert = rt->expert,
                       .weight = rt->weight,
                       .mode = mode,
                       .out_bf16 = mode == MX_OUT_PER_ASSIGNMENT ? out_bf16 : NULL,
                       .out_f32 = mode == MX_OUT_WEIGHTED_SUM ? out_f32 : NULL};
    return kt_backend_run(b, pk, &a);
}

/* One problem. `shared` (may be NULL) are experts made for c's description and
 * c->E; otherwise the case makes its own from c->seed. */
static void run_case(const pcase_t *c, const kt_experts_t *shared)
{
    char what[320];
    describe(c, what, sizeof(what));
    mx_moe_desc_t d = kt_desc(c->scheme, c->act, c->order, c->H, c->I);
    d.act_group = c->act_group;

    int want[MAX_BACKENDS] = {0}, any = 0;
    for (int i = 0; i < n_targets; i++) {
        char why[MX_REASON_MAX] = "";
        want[i] = targets[i].b->supports(&targets[i].dev, &d, why, sizeof(why));
        if (!want[i])
            targets[i].declined++;
        any |= want[i];
    }
    if (!any)
        return;

    kt_experts_t *own = NULL;
    if (!shared) {
        kt_expert_opts_t o = {.with_bias = c->bias, .fp8_scale = c->fp8};
        assert_int_equal(kt_experts_create(&d, c->E, &o, c->seed, &own), MX_OK);
    }
    const kt_experts_t *ex = shared ? shared : own;
    kt_rng_t rng;
    kt_rng_seed(&rng, c->seed + 1);
    const size_t H = c->H, T = c->T;
    uint16_t *x = malloc(T * H * 2);
    kt_tokens_fill(&rng, x, T * H, 1.0f);
    float *base = malloc(T * H * sizeof(float));
    for (size_t i = 0; i < T * H; i++)
        base[i] = kt_rng_uniform(&rng, -0.25f, 0.25f);
    kt_routing_t rt;
    assert_int_equal(kt_routing_create(T, c->E, c->top_k, c->idle, c->seed + 2, &rt), MX_OK);

    mx_device_info_t rdev;
    assert_int_equal(ref->probe(&rdev), MX_OK);
    mx_backend_packed_t *rpk = NULL;
    assert_int_equal(ref->prepack(&rdev, &d, ex->w, c->E, &rpk), MX_OK);
    size_t nb = (rt.n_assign + 1) * H;
    uint16_t *ref_bf16 = malloc(nb * 2), *got_bf16 = malloc(nb * 2);
    float *ref_f32 = malloc((T + 1) * H * sizeof(float)), *got_f32 = malloc((T + 1) * H * sizeof(float));
    float *ref_delta = malloc(T * H * sizeof(float)), *got_delta = malloc(T * H * sizeof(float));
    assert_true(x && base && ref_bf16 && got_bf16 && ref_f32 && got_f32 && ref_delta && got_delta);
    /* ref runs once, per assignment; its weighted sum is formed here the way
     * ref's WEIGHTED_SUM forms it (test_ref checks that they agree) */
    assert_int_equal(run_mode(ref, rpk, c, x, &rt, MX_OUT_PER_ASSIGNMENT, base, ref_bf16, ref_f32), MX_OK);
    assert_int_equal(kt_count_nan_bf16(ref_bf16, rt.n_assign * H), 0);
    memset(ref_delta, 0, T * H * sizeof(float));
    for (int e = 0; e < c->E; e++)
        for (size_t a = 0; a < rt.n_assign; a++) {
            if (rt.expert[a] != e)
                continue;
            float *dst = ref_delta + (size_t)rt.tok[a] * H;
            for (size_t k = 0; k < H; k++)
                dst[k] += rt.weight[a] * mx_quant_bf16_to_f32(ref_bf16[a * H + k]);
        }
    ref->release(rpk);

    double tol = kt_tolerance(c->scheme);
    for (int i = 0; i < n_targets; i++) {
        if (!want[i])
            continue;
        target_t *g = &targets[i];
        mx_backend_packed_t *pk = NULL;
        mx_status_t st = g->b->prepack(&g->dev, &d, ex->w, c->E, &pk);
        if (st != MX_OK) {
            printf("FAIL parity %s: prepack of %s: %s: %s\n", g->b->name, what, mx_status_str(st), mx_error_detail());
            failures++;
            continue;
        }
        for (int m = 0; m < 2; m++) {
            if (!(c->modes & (1 << m)))
                continue;
            mx_out_mode_t mode = m == 0 ? MX_OUT_PER_ASSIGNMENT : MX_OUT_WEIGHTED_SUM;
            const char *mname = m == 0 ? "per_assignment" : "weighted_sum";
            st = run_mode(g->b, pk, c, x, &rt, mode, base, got_bf16, got_f32);
            if (st != MX_OK) {
                printf("FAIL parity %s %s: run of %s: %s: %s\n", g->b->name, mname, what, mx_status_str(st),
                       mx_error_detail());
                failures++;
                continue;
            }
            double err;
            size_t unwritten;
            int canary_ok = 1;
            if (mode == MX_OUT_PER_ASSIGNMENT) {
                unwritten = kt_count_nan_bf16(got_bf16, rt.n_assign * H);
                for (size_t k = 0; k < H; k++)
                    canary_ok &= got_bf16[rt.n_assign * H + k] == KT_POISON_BF16;
                err = kt_rel_l2_bf16(got_bf16, ref_bf16, rt.n_assign * H);
            } else {
                unwritten = kt_count_nan_f32(got_f32, T * H);
                for (size_t k = 0; k < H; k++)
                    canary_ok &= isnan(got_f32[T * H + k]) != 0;
                for (size_t k = 0; k < T * H; k++)
                    got_delta[k] = got_f32[k] - base[k];
                err = kt_rel_l2_f32(got_delta, ref_delta, T * H);
            }
            g->checked++;
            if (err > g->worst[c->scheme])
                g->worst[c->scheme] = err;
            if (unwritten || !canary_ok || !(err <= tol)) {
                printf("FAIL parity %s %s: %s: rel_l2 %.3g (tol %.1g), %zu elements not written, canary %s\n",
                       g->b->name, mname, what, err, tol, unwritten, canary_ok ? "intact" : "overwritten");
                failures++;
            }
        }
        g->b->release(pk);
    }
    free(x), free(base), free(ref_bf16), free(got_bf16), free(ref_f32), free(got_f32), free(ref_delta), free(got_delta);
    kt_routing_destroy(&rt);
    kt_experts_destroy(own);
}

static const size_t token_counts[5] = {1, 3, 17, 64, 257};

static int need_targets(void)
{
    if (n_targets == 0) {
        printf("parity: ref is the only backend here; nothing to compare\n");
        return 0;
    }
    return 1;
}

static mx_wscale_t fp8_kind(unsigned i)
{
    static const mx_wscale_t k[3] = {MX_WSCALE_BLOCK, MX_WSCALE_CHANNEL, MX_WSCALE_TENSOR};
    return k[i % 3];
}

/* Every scheme x activation x order x mode, H = I = 96, every token count,
 * three seeds. Across the seeds each combination runs with and without biases
 * and with each FP8 scale kind; W8A8's per-128 activation groups run at H 288,
 * I 160 (more than one group, the last one partial: at 96 there is one group,
 * the same as per token). */
static void test_parity_every_combination_at_small_sizes(void **state)
{
    (void)state;
    if (!need_targets())
        skip();
    int before = failures;
    for (unsigned rep = 0; rep < 3; rep++) {
        unsigned combo = 0;
        for (int s = 0; s < MX_SCHEME_COUNT; s++)
            for (int a = 0; a < MX_ACT_COUNT; a++)
                for (int o = 0; o < 2; o++, combo++) {
                    /* one set of experts per combination and seed, fresh tokens and routing per token count */
                    const int grouped = s == MX_SCHEME_W8A8 && ((combo + rep) & 2);
                    const uint64_t seed = SEED_BASE + 0x4000u * (rep + 1) + combo * 16u;
                    pcase_t c = {.scheme = (mx_scheme_t)s,
                                 .act = (mx_act_t)a,
                                 .order = (mx_gateup_order_t)o,
                                 .H = grouped ? 288 : 96,
                                 .I = grouped ? 160 : 96,
                                 .E = 8,
                                 .top_k = 2,
                                 .idle = 2,
                                 .bias = (int)((combo + rep) & 1),
                                 .act_group = grouped ? 128 : 0,
                                 .fp8 = fp8_kind(combo + rep),
                                 .modes = 3,
                                 .seed = seed};
                    mx_moe_desc_t d = kt_desc(c.scheme, c.act, c.order, c.H, c.I);
                    d.act_group = c.act_group;
                    kt_expert_opts_t eo = {.with_bias = c.bias, .fp8_scale = c.fp8};
                    kt_experts_t *ex = NULL;
                    assert_int_equal(kt_experts_create(&d, c.E, &eo, c.seed, &ex), MX_OK);
                    for (int ti = 0; ti < 5; ti++) {
                        c.T = token_counts[ti];
                        c.seed = seed + (unsigned)ti + 1;
                        run_case(&c, ex);
                    }
                    kt_experts_destroy(ex);
                }
    }
    assert_int_equal(failures, before);
}

/* H or I of 704 (not a multiple of 128 or 24), and H = I = 160 (rows that
 * leave a partial row block of the cpu backend's 24: 160 and 2 x 160; FP8
 * scale blocks of 128 cut short), every scheme, T up to 64. */
static void test_parity_sizes_that_are_not_tile_multiples(void **state)
{
    (void)state;
    if (!need_targets())
        skip();
    int before = failures;
    unsigned k = 0;
    static const size_t shapes[3][2] = {{704, 96}, {96, 704}, {160, 160}};
    for (int shape = 0; shape < 3; shape++)
        for (int s = 0; s < MX_SCHEME_COUNT; s++, k++) {
            pcase_t c = {.scheme = (mx_scheme_t)s,
                         .act = (mx_act_t)(k % MX_ACT_COUNT),
                         .order = (mx_gateup_order_t)((k / 3) & 1),
                         .H = shapes[shape][0],
                         .I = shapes[shape][1],
                         .E = 4,
                         .top_k = 2,
                         .idle = 1,
                         .bias = (int)(k & 1),
                         .act_group = (s == MX_SCHEME_W8A8 && shape) ? 128 : 0, /* 704 and 160: 6 and 2 groups */
                         .fp8 = fp8_kind(k),
                         .modes = 3,
                         .seed = SEED_BASE + 0x1000 + 16 * k};
            mx_moe_desc_t d = kt_desc(c.scheme, c.act, c.order, c.H, c.I);
            d.act_group = c.act_group;
            kt_expert_opts_t eo = {.with_bias = c.bias, .fp8_scale = c.fp8};
            kt_experts_t *ex = NULL;
            assert_int_equal(kt_experts_create(&d, c.E, &eo, c.seed, &ex), MX_OK);
            for (int ti = 0; ti < 4; ti++) { /* 1, 3, 17, 64 */
                c.T = token_counts[ti];
                c.seed = SEED_BASE + 0x1000 + 16 * k + (unsigned)ti + 1;
                run_case(&c, ex);
            }
            kt_experts_destroy(ex);
        }
    assert_int_equal(failures, before);
}

/* gpt-oss-20b sizes, few tokens: H = I = 2880 with the gpt-oss scheme and
 * activation, and with W8A8 (per-128 activation groups, block scales) and
 * W4A8 in the SiLU gate/up-halves layout, an expert without tokens in each. */
static void test_parity_gpt_oss_sizes_with_few_tokens(void **state)
{
    (void)state;
    if (!need_targets())
        skip();
    int before = failures;
    const pcase_t cs[] = {
        {.scheme = MX_SCHEME_W4A16,
         .act = MX_ACT_SWIGLU_OAI,
         .order = MX_GATEUP_INTERLEAVED,
         .H = 2880,
         .I = 2880,
         .T = 3,
         .E = 2,
         .top_k = 1,
         .idle = 0,
         .bias = 1,
         .modes = 3,
         .seed = SEED_BASE + 0x2000},
        {.scheme = MX_SCHEME_W8A8,
         .act = MX_ACT_SILU,
         .order = MX_GATEUP_HALVES,
         .H = 2880,
         .I = 2880,
         .T = 2,
         .E = 3,
         .top_k = 2,
         .idle = 1,
         .act_group = 128,
         .fp8 = MX_WSCALE_BLOCK,
         .modes = 3,
         .seed = SEED_BASE + 0x2100},
        {.scheme = MX_SCHEME_W4A8,
         .act = MX_ACT_SILU,
         .order = MX_GATEUP_HALVES,
         .H = 2880,
         .I = 2880,
         .T = 1,
         .E = 3,
         .top_k = 2,
         .idle = 1,
         .bias = 1,
         .modes = 3,
         .seed = SEED_BASE + 0x2200},
    };
    for (size_t i = 0; i < sizeof cs / sizeof cs[0]; i++) {
        pcase_t c = cs[i];
        run_case(&c, NULL);
    }
    assert_int_equal(failures, before);
}

static int group_teardown(void **state)
{
    (void)state;
    for (int i = 0; i < n_targets; i++) {
        target_t *g = &targets[i];
        printf("parity: %s: %d comparisons, %d cases declined; worst rel_l2:", g->b->name, g->checked, g->declined);
        for (int s = 0; s < MX_SCHEME_COUNT; s++)
            printf(" %s %.2g", mx_scheme_name((mx_scheme_t)s), g->worst[s]);
        printf("\n");
    }
    return 0;
}

int main(void)
{
    mx_log_set_level(MX_LOG_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parity_every_combination_at_small_sizes),
        cmocka_unit_test(test_parity_sizes_that_are_not_tile_multiples),
        cmocka_unit_test(test_parity_gpt_oss_sizes_with_few_tokens),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
