/* Routers on hand-made logits: ties, softmax over k, renormalization,
 * DeepSeek grouped sigmoid (-inf masking), expert choice (capacity, ties on the
 * global token index, tokens with no expert, split over ranks), router logits. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mxep/coordinator.h"

#define SEED 20261123u

static uint64_t rng_state;
static void rng_seed(uint64_t s)
{
    rng_state = s * 0x9e3779b97f4a7c15ull + 1;
    printf("# seed %llu\n", (unsigned long long)s);
}
static double rng_unit(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) / 9007199254740992.0;
}

static uint16_t bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
static float from_bf16(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static mx_router_desc_t desc_of(mx_router_kind_t kind, int k)
{
    mx_router_desc_t d;
    memset(&d, 0, sizeof d);
    d.kind = kind;
    d.top_k = k;
    d.scaling_factor = 1.0f;
    d.capacity_factor = 1.0f;
    return d;
}

static void test_topk_softmax_takes_top_logits_ties_to_lower_expert(void **state)
{
    (void)state;
    /* experts 1 and 3 tie at 2.0; 5 is the max */
    const float logits[6] = {0.5f, 2.0f, -1.0f, 2.0f, 0.0f, 3.0f};
    mx_router_desc_t d = desc_of(MX_ROUTER_TOPK_SOFTMAX, 2);
    mx_routing_t r;
    assert_int_equal(mx_coord_route(&d, logits, NULL, 1, 6, &r), MX_OK);
    assert_int_equal(r.n_assign, 2);
    assert_int_equal(r.topk_ids[0], 5);
    assert_int_equal(r.topk_ids[1], 1); /* the tie goes to the lower expert */
    double e0 = 1.0, e1 = exp(2.0 - 3.0);
    assert_float_equal(r.topk_weights[0], e0 / (e0 + e1), 1e-6);
    assert_float_equal(r.topk_weights[1], e1 / (e0 + e1), 1e-6);
    /* assignments are sorted by expert */
    assert_int_equal(r.expert[0], 1);
    assert_int_equal(r.expert[1], 5);
    assert_float_equal(r.weight[0], r.topk_weights[1], 0);
    mx_routing_fini(&r);
    mx_routing_fini(&r); /* twice is safe */
}

static void test_topk_softmax_weights_sum_to_one_on_random_logits(void **state)
{
    (void)state;
    rng_seed(SEED);
    enum { T = 37, E = 32, K = 4 };
    float *lg = malloc(sizeof(float) * T * E);
    for (int i = 0; i < T * E; i++)
        lg[i] = (float)(rng_unit() * 8 - 4);
    mx_router_desc_t d = desc_of(MX_ROUTER_TOPK_SOFTMAX, K);
    mx_routing_t r;
    assert_int_equal(mx_coord_route(&d, lg, NULL, T, E, &r), MX_OK);
    assert_int_equal(r.n_assign, T * K);
    for (int t = 0; t < T; t++) {
        double s = 0;
        for (int j = 0; j < K; j++) {
            s += r.topk_weights[t * K + j];
            if (j)
                assert_true(lg[t * E + r.topk_ids[t * K + j]] <= lg[t * E + r.topk_ids[t * K + j - 1]]);
        }
        assert_float_equal(s, 1.0, 1e-5);
        /* nothing outside the top-k beats the k-th */
        float kth = lg[t * E + r.topk_ids[t * K + K - 1]];
        int above = 0;
        for (int e = 0; e < E; e++)
            above += lg[t * E + e] > kth;
        assert_true(above <= K - 1);
    }
    mx_routing_fini(&r);
    free(lg);
}

static void test_softmax_topk_renormalizes_only_when_asked(void **state)
{
    (void)state;
    const float logits[4] = {1.0f, 0.0f, 2.0f, -1.0f};
    double z = exp(1.0) + exp(0.0) + exp(2.0) + exp(-1.0);
    double p2 = exp(2.0) / z, p0 = exp(1.0) / z;
    mx_router_desc_t d = desc_of(MX_ROUTER_SOFTMAX_TOPK, 2);
    mx_routing_t r;
    d.renormalize = 0;
    assert_int_equal(mx_coord_route(&d, logits, NULL, 1, 4, &r), MX_OK);
    assert_int_equal(r.topk_ids[0], 2);
    assert_int_equal(r.topk_ids[1], 0);
    assert_float_equal(r.topk_weights[0], p2, 1e-6);
    assert_float_equal(r.topk_weights[1], p0, 1e-6);
    mx_routing_fini(&r);
    d.renormalize = 1;
    assert_int_equal(mx_coord_route(&d, logits, NULL, 1, 4, &r), MX_OK);
    assert_float_equal(r.topk_weights[0], p2 / (p2 + p0), 1e-6);
    assert_float_equal(r.topk_weights[1], p0 / (p2 + p0), 1e-6);
    mx_routing_fini(&r);
}

static double sigm(double x)
{
    return 1.0 / (1.0 + exp(-x));
}

static void test_sigmoid_grouped_masks_dropped_groups_with_minus_inf(void **state)
{
    (void)state;
    /* 2 groups of 4, keep 1 group, top-3. Group 0 gets s' = s + 4 for experts
     * 0,1 and s - 2 (< 0) for experts 2,3: its score (top-2 sum) wins. The 3rd
     * pick must still come from group 0 (s' < 0) and not from the masked group
     * 1, which masking with 0 instead of -inf would pick. */
    const float logits[8] = {0.1f, 0.2f, 0.3f, -0.3f, 1.0f, 1.0f, 1.0f, 1.0f};
    const float bias[8] = {4, 4, -2, -2, 0, 0, 0, 0};
    mx_router_desc_t d = desc_of(MX_ROUTER_SIGMOID_GROUPED, 3);
    d.n_group = 2;
    d.topk_group = 1;
    d.scaling_factor = 2.5f;
    mx_routing_t r;
    assert_int_equal(mx_coord_route(&d, logits, bias, 1, 8, &r), MX_OK);
    assert_int_equal(r.topk_ids[0], 1);
    assert_int_equal(r.topk_ids[1], 0);
    assert_int_equal(r.topk_ids[2], 2); /* s' = sigmoid(0.3) - 2 < 0, still beats the masked group */
    /* weights from s (no bias), normalized, times the scaling factor */
    double s0 = sigm(0.1), s1 = sigm(0.2), s2 = sigm(0.3), sum = s0 + s1 + s2;
    assert_float_equal(r.topk_weights[0], s1 / sum * 2.5, 1e-5);
    assert_float_equal(r.topk_weights[1], s0 / sum * 2.5, 1e-5);
    assert_float_equal(r.topk_weights[2], s2 / sum * 2.5, 1e-5);
    mx_routing_fini(&r);
}

static void test_sigmoid_grouped_keeps_groups_by_top2_sum(void **state)
{
    (void)state;
    /* 4 groups of 2, keep 2. Group scores (top-2 sums of sigmoid): group 3 has
     * the single largest expert but group 1 and 2 have larger pair sums. */
    const float logits[8] = {-3, -3, 1.5f, 1.5f, 1.4f, 1.4f, 5.0f, -6.0f};
    mx_router_desc_t d = desc_of(MX_ROUTER_SIGMOID_GROUPED, 2);
    d.n_group = 4;
    d.topk_group = 2;
    mx_routing_t r;
    assert_int_equal(mx_coord_route(&d, logits, NULL, 1, 8, &r), MX_OK);
    /* group 3 (experts 6,7): 0.993+0.0025 = 0.996 < group 1: 2*0.818 and group 2: 2*0.802 */
    assert_int_equal(r.topk_ids[0], 2);
    assert_int_equal(r.topk_ids[1], 3);
    mx_routing_fini(&r);
    /* without grouping expert 6 wins */
    d.n_group = 1;
    assert_int_equal(mx_coord_route(&d, logits, NULL, 1, 8, &r), MX_OK);
    assert_int_equal(r.topk_ids[0], 6);
    mx_routing_fini(&r);
}

static void test_route_rejects_bad_descriptors_and_leaves_output(void **state)
{
    (void)state;
    const float logits[8] = {0};
    mx_routing_t r;
    memset(&r, 0xA5, sizeof r);
    mx_routing_t poison = r;
    mx_router_desc_t d = desc_of(MX_ROUTER_TOPK_SOFTMAX, 9);
    assert_int_equal(mx_coord_route(&d, logits, NULL, 1, 8, &r), MX_ERR_INVALID);
    assert_non_null(strstr(mx_error_detail(), "top_k 9"));
    d = desc_of(MX_ROUTER_SIGMOID_GROUPED, 2);
    d.n_group = 3;
    d.topk_group = 1;
    assert_int_equal(mx_coord_route(&d, logits, NULL, 1, 8, &r), MX_ERR_INVALID);
    assert_non_null(strstr(mx_error_detail(), "n_group 3"));
    d.n_group = 4;
    d.topk_group = 1;
    d.top_k = 3; /* only 2 experts in one kept group */
    assert_int_equal(mx_coord_route(&d, logits, NULL, 1, 8, &r), MX_ERR_INVALID);
    d = desc_of(MX_ROUTER_EXPERT_CHOICE, 1);
    assert_int_equal(mx_coord_route(&d, logits, NULL, 1, 8, &r), MX_ERR_INVALID);
    assert_non_null(strstr(mx_error_detail(), "expert_choice"));
    float nan_logits[8] = {0, 0, 0, NAN, 0, 0, 0, 0};
    d = desc_of(MX_ROUTER_TOPK_SOFTMAX, 2);
    assert_int_equal(mx_coord_route(&d, nan_logits, NULL, 1, 8, &r), MX_ERR_INVALID);
    assert_non_null(strstr(mx_error_detail(), "expert 3 is NaN"));
    assert_memory_equal(&r, &poison, sizeof r);
}

static void test_route_zero_tokens_gives_empty_routing(void **state)
{
    (void)state;
    mx_router_desc_t d = desc_of(MX_ROUTER_TOPK_SOFTMAX, 2);
    mx_routing_t r;
    assert_int_equal(mx_coord_route(&d, NULL, NULL, 0, 4, &r), MX_OK);
    assert_int_equal(r.n_assign, 0);
    assert_int_equal(r.n_tokens, 0);
    mx_routing_fini(&r);
}

static void test_expert_capacity_uses_exact_decimal_arithmetic(void **state)
{
    (void)state;
    assert_int_equal(mx_coord_expert_capacity(1.1f, 1000, 1, 10), 110); /* not 111 */
    assert_int_equal(mx_coord_expert_capacity(1.0f, 10, 2, 4), 5);
    assert_int_equal(mx_coord_expert_capacity(1.0f, 10, 1, 4), 3);    /* ceil(2.5) */
    assert_int_equal(mx_coord_expert_capacity(100.0f, 10, 4, 2), 10); /* clamped to T */
    assert_int_equal(mx_coord_expert_capacity(0.0f, 10, 4, 2), 0);
    assert_int_equal(mx_coord_expert_capacity(1.0f, 0, 4, 2), 0);
}

static void test_expert_choice_takes_top_tokens_ties_to_lower_token(void **state)
{
    (void)state;
    /* 4 tokens, 2 experts, k = 1, cf = 1 -> C = 2 tokens per expert.
     * Token 0 and 2 have identical logits: the tie goes to token 0. */
    const float lg[8] = {
        1.0f, 0.0f, /* t0 */
        1.0f, 3.0f, /* t1: strongly expert 1 */
        1.0f, 0.0f, /* t2: same as t0 */
        5.0f, 5.0f, /* t3: 0.5 / 0.5 */
    };
    mx_router_desc_t d = desc_of(MX_ROUTER_EXPERT_CHOICE, 1);
    mx_routing_t r;
    assert_int_equal(mx_coord_route_expert_choice(&d, lg, 4, 2, 0, 4, &r), MX_OK);
    /* expert 0 scores: t0 .731, t1 .119, t2 .731, t3 .5 -> t0, t2 (tie, lower first)
     * expert 1 scores: t0 .269, t1 .881, t2 .269, t3 .5 -> t1, t3 */
    assert_null(r.topk_ids);
    assert_int_equal(r.n_assign, 4);
    int32_t want_tok[4] = {0, 1, 2, 3}, want_exp[4] = {0, 1, 0, 1};
    for (int i = 0; i < 4; i++) {
        assert_int_equal(r.tok[i], want_tok[i]);
        assert_int_equal(r.expert[i], want_exp[i]);
    }
    assert_float_equal(r.weight[0], 1.0 / (1.0 + exp(-1.0)), 1e-6);
    mx_routing_fini(&r);

    /* capacity 1: expert 0 picks t0 (tie with t2, lower index); t2 gets no expert */
    d.capacity_factor = 0.5f;
    assert_int_equal(mx_coord_route_expert_choice(&d, lg, 4, 2, 0, 4, &r), MX_OK);
    assert_int_equal(r.n_assign, 2);
    assert_int_equal(r.tok[0], 0);
    assert_int_equal(r.expert[0], 0);
    assert_int_equal(r.tok[1], 1);
    assert_int_equal(r.expert[1], 1);
    mx_routing_fini(&r);
}

static void test_expert_choice_split_over_ranks_equals_whole_batch(void **state)
{
    (void)state;
    rng_seed(SEED + 1);
    enum { T = 50, E = 8 };
    float *lg = malloc(sizeof(float) * T * E);
    for (int i = 0; i < T * E; i++)
        lg[i] = (float)(rng_unit() * 4 - 2);
    lg[3 * E + 1] = lg[7 * E + 1]; /* a tie across what become different ranks */
    mx_router_desc_t d = desc_of(MX_ROUTER_EXPERT_CHOICE, 2);
    d.capacity_factor = 1.25f;
    mx_routing_t whole;
    assert_int_equal(mx_coord_route_expert_choice(&d, lg, T, E, 0, T, &whole), MX_OK);
    /* every expert holds exactly C tokens */
    size_t C = mx_coord_expert_capacity(1.25f, T, 2, E);
    for (int e = 0; e < E; e++) {
        size_t n = 0;
        for (size_t a = 0; a < whole.n_assign; a++)
            n += whole.expert[a] == e;
        assert_int_equal(n, C);
    }
    /* each expert holds its top-C tokens: no unchosen token scores above a chosen one */
    for (int e = 0; e < E; e++) {
        double min_chosen = 2.0;
        int chosen[T] = {0};
        for (size_t a = 0; a < whole.n_assign; a++)
            if (whole.expert[a] == e) {
                chosen[whole.tok[a]] = 1;
                min_chosen = fmin(min_chosen, whole.weight[a]);
            }
        for (int t = 0; t < T; t++) {
            double m = -1e30, z = 0;
            for (int j = 0; j < E; j++)
                m = fmax(m, lg[t * E + j]);
            for (int j = 0; j < E; j++)
                z += exp(lg[t * E + j] - m);
            double sc = exp(lg[t * E + e] - m) / z;
            if (!chosen[t] && sc > min_chosen + 1e-6)
                fail_msg("expert %d skipped token %d (score %g) but took one scoring %g", e, t, sc, min_chosen);
        }
    }
    const size_t cuts[4] = {0, 5, 31, T};
    size_t a = 0;
    for (int rk = 0; rk < 3; rk++) {
        mx_routing_t part;
        assert_int_equal(mx_coord_route_expert_choice(&d, lg, T, E, cuts[rk], cuts[rk + 1] - cuts[rk], &part), MX_OK);
        for (size_t i = 0; i < part.n_assign; i++, a++) {
            assert_int_equal((size_t)part.tok[i] + cuts[rk], (size_t)whole.tok[a]);
            assert_int_equal(part.expert[i], whole.expert[a]);
            assert_memory_equal(&part.weight[i], &whole.weight[a], sizeof(float));
        }
        mx_routing_fini(&part);
    }
    assert_int_equal(a, whole.n_assign);
    mx_routing_fini(&whole);
    free(lg);
}

static void test_expert_choice_rejects_bad_range_and_capacity(void **state)
{
    (void)state;
    const float lg[4] = {0, 1, 2, 3};
    mx_router_desc_t d = desc_of(MX_ROUTER_EXPERT_CHOICE, 1);
    mx_routing_t r;
    memset(&r, 0x5A, sizeof r);
    mx_routing_t poison = r;
    assert_int_equal(mx_coord_route_expert_choice(&d, lg, 2, 2, 1, 2, &r), MX_ERR_INVALID);
    assert_non_null(strstr(mx_error_detail(), "outside the global batch"));
    d.capacity_factor = -1.0f;
    assert_int_equal(mx_coord_route_expert_choice(&d, lg, 2, 2, 0, 2, &r), MX_ERR_INVALID);
    assert_non_null(strstr(mx_error_detail(), "capacity_factor"));
    d = desc_of(MX_ROUTER_TOPK_SOFTMAX, 1);
    assert_int_equal(mx_coord_route_expert_choice(&d, lg, 2, 2, 0, 2, &r), MX_ERR_INVALID);
    assert_memory_equal(&r, &poison, sizeof r);
}

static void test_router_logits_match_double_and_are_batch_invariant(void **state)
{
    (void)state;
    rng_seed(SEED + 2);
    enum { T = 9, E = 7, H = 70 };
    float *w = malloc(sizeof(float) * E * H), b[E];
    uint16_t *x = malloc(sizeof(uint16_t) * T * H);
    for (int i = 0; i < E * H; i++)
        w[i] = (float)(rng_unit() - 0.5);
    for (int e = 0; e < E; e++)
        b[e] = (float)(rng_unit() - 0.5);
    for (int i = 0; i < T * H; i++)
        x[i] = bf16((float)(rng_unit() * 2 - 1));
    mx_router_weights_t rw = {.n_experts = E, .hidden = H, .weight = w, .bias = b};
    float all[T * E], one[E];
    for (int i = 0; i < T * E; i++)
        all[i] = NAN; /* poison */
    assert_int_equal(mx_coord_router_logits(&rw, x, T, H, all), MX_OK);
    for (int t = 0; t < T; t++) {
        for (int e = 0; e < E; e++) {
            double ref = b[e];
            for (int h = 0; h < H; h++)
                ref += (double)w[e * H + h] * from_bf16(x[t * H + h]);
            assert_float_equal(all[t * E + e], ref, 1e-4);
        }
        assert_int_equal(mx_coord_router_logits(&rw, x + t * H, 1, H, one), MX_OK);
        assert_memory_equal(one, all + t * E, sizeof one);
    }
    assert_int_equal(mx_coord_router_logits(&rw, x, T, H + 1, all), MX_ERR_INVALID);
    assert_non_null(strstr(mx_error_detail(), "hidden size 70"));
    free(w);
    free(x);
}

/* ---------------------------------------------------------------- Gemma 4 */

/* Hand-computed (FORMATS.md Part 2 section 6): token x = (2, 2, 2, 2), eps
 * 1e-6, scale = (1, 2, 4, 8), H^-0.5 = 0.5: RMS 2, so the router input is
 * x / 2 * scale * 0.5 = (0.5, 1, 2, 4) (the eps moves it by 1.25e-7 relative,
 * under half a BF16 ulp). Rows of W pick (0.5, 1, 4 * 0.5, (0.5 + 1 + 2) / 4):
 * logits (0.5, 1, 2, 0.875). Top-2: experts 2 then 1. Softmax over all four
 * then renormalized over the two = e^2 / (e^2 + e^1) and e^1 / (e^2 + e^1),
 * times per_expert_scale (1.5, 0.5, 2, 1). */
static void test_gemma4_router_hand_computed_case(void **state)
{
    (void)state;
    enum { E = 4, H = 4 };
    float w[E * H] = {1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0.5f, 0.25f, 0.25f, 0.25f, 0};
    float scale[H] = {1, 2, 4, 8}, pes[E] = {1.5f, 0.5f, 2.0f, 1.0f};
    uint16_t x[H];
    for (int h = 0; h < H; h++)
        x[h] = bf16(2.0f);
    mx_router_weights_t rw = {
        .n_experts = E, .hidden = H, .weight = w, .scale = scale, .per_expert_scale = pes, .rms_eps = 1e-6f};
    float lg[E] = {NAN, NAN, NAN, NAN};
    assert_int_equal(mx_coord_router_logits(&rw, x, 1, H, lg), MX_OK);
    const float want[E] = {0.5f, 1.0f, 2.0f, 0.875f};
    for (int e = 0; e < E; e++)
        assert_true(lg[e] == want[e]);

    mx_router_desc_t d = desc_of(MX_ROUTER_GEMMA4, 2);
    mx_routing_t r;
    assert_int_equal(mx_coord_route_router(&d, &rw, lg, 1, &r), MX_OK);
    const double e1 = exp(1.0), e2 = exp(2.0);
    assert_int_equal(r.topk_ids[0], 2);
    assert_int_equal(r.topk_ids[1], 1);
    assert_float_equal(r.topk_weights[0], e2 / (e2 + e1) * 2.0, 1e-6);
    assert_float_equal(r.topk_weights[1], e1 / (e2 + e1) * 0.5, 1e-6);
    /* assignments in expert order */
    assert_int_equal(r.expert[0], 1);
    assert_int_equal(r.expert[1], 2);
    assert_float_equal(r.weight[0], e1 / (e2 + e1) * 0.5, 1e-6);
    mx_routing_fini(&r);

    /* the same through mx_coord_route (per_expert_scale in the vector argument), and NULL = ones */
    assert_int_equal(mx_coord_route(&d, lg, pes, 1, E, &r), MX_OK);
    assert_float_equal(r.topk_weights[0], e2 / (e2 + e1) * 2.0, 1e-6);
    mx_routing_fini(&r);
    assert_int_equal(mx_coord_route(&d, lg, NULL, 1, E, &r), MX_OK);
    assert_float_equal(r.topk_weights[0], e2 / (e2 + e1), 1e-6);
    assert_float_equal(r.topk_weights[0] + r.topk_weights[1], 1.0, 1e-6);
    mx_routing_fini(&r);

    /* without router.scale the input is not normalized: the plain projection (2, 2, 1, 1.5) */
    rw.scale = NULL;
    assert_int_equal(mx_coord_router_logits(&rw, x, 1, H, lg), MX_OK);
    assert_true(lg[0] == 2.0f && lg[1] == 2.0f && lg[2] == 1.0f && lg[3] == 1.5f);
}

/* eps counts: x = (1, 1, 1, 1), scale ones, eps 1: 1 / sqrt(1 + 1) * 0.5 =
 * 0.35355339 -> BF16 0.353515625 (181 / 512); a row of ones gives 4 x that =
 * 1.4140625. With eps 1e-6 the input rounds to 0.5 and the logit is 2. */
static void test_gemma4_router_uses_the_config_epsilon(void **state)
{
    (void)state;
    enum { E = 1, H = 4 };
    float w[H] = {1, 1, 1, 1}, scale[H] = {1, 1, 1, 1};
    uint16_t x[H];
    for (int h = 0; h < H; h++)
        x[h] = bf16(1.0f);
    mx_router_weights_t rw = {.n_experts = E, .hidden = H, .weight = w, .scale = scale, .rms_eps = 1.0f};
    float lg = NAN;
    assert_int_equal(mx_coord_router_logits(&rw, x, 1, H, &lg), MX_OK);
    assert_true(lg == 1.4140625f);
    rw.rms_eps = 1e-6f;
    assert_int_equal(mx_coord_router_logits(&rw, x, 1, H, &lg), MX_OK);
    assert_true(lg == 2.0f);
    /* an all-zero token with eps 0 stays zero (no 0 * inf NaN) */
    for (int h = 0; h < H; h++)
        x[h] = 0;
    rw.rms_eps = 0.0f;
    assert_int_equal(mx_coord_router_logits(&rw, x, 1, H, &lg), MX_OK);
    assert_true(lg == 0.0f);
    /* a bad epsilon is refused and the logits stay untouched */
    rw.rms_eps = NAN;
    lg = -7.0f;
    assert_int_equal(mx_coord_router_logits(&rw, x, 1, H, &lg), MX_ERR_INVALID);
    assert_non_null(strstr(mx_error_detail(), "rms_eps"));
    assert_true(lg == -7.0f);
    rw.rms_eps = -1.0f;
    assert_int_equal(mx_coord_router_logits(&rw, x, 1, H, &lg), MX_ERR_INVALID);
    assert_true(lg == -7.0f);
}

/* Random tokens: logits equal a double-precision model of the router input
 * (RMSNorm, scale, H^-0.5, one BF16 rounding) and the projection, and a token
 * alone gives the bits it gets in the batch. */
static void test_gemma4_router_logits_match_double_and_are_batch_invariant(void **state)
{
    (void)state;
    enum { T = 21, E = 9, H = 80 };
    rng_seed(SEED + 41);
    float *w = malloc(sizeof(float) * E * H), scale[H], pes[E];
    uint16_t *x = malloc(sizeof(uint16_t) * T * H);
    for (int i = 0; i < E * H; i++)
        w[i] = (float)(rng_unit() - 0.5);
    for (int h = 0; h < H; h++)
        scale[h] = (float)(0.5 + rng_unit());
    for (int e = 0; e < E; e++)
        pes[e] = (float)(0.5 + rng_unit());
    for (int i = 0; i < T * H; i++)
        x[i] = bf16((float)((rng_unit() * 2 - 1) * 30.0));
    mx_router_weights_t rw = {
        .n_experts = E, .hidden = H, .weight = w, .scale = scale, .per_expert_scale = pes, .rms_eps = 1e-6f};
    float all[T * E], one[E];
    for (int i = 0; i < T * E; i++)
        all[i] = NAN;
    assert_int_equal(mx_coord_router_logits(&rw, x, T, H, all), MX_OK);
    for (int t = 0; t < T; t++) {
        double ss = 0.0;
        for (int h = 0; h < H; h++)
            ss += (double)from_bf16(x[t * H + h]) * from_bf16(x[t * H + h]);
        const double rinv = 1.0 / sqrt(ss / H + 1e-6);
        for (int e = 0; e < E; e++) {
            double ref = 0.0;
            for (int h = 0; h < H; h++) {
                double y = from_bf16(x[t * H + h]) * rinv * scale[h] / sqrt((double)H);
                ref += (double)w[e * H + h] * from_bf16(bf16((float)y));
            }
            assert_float_equal(all[t * E + e], ref, 2e-3); /* y differs from the FP32 chain by < 1 BF16 ulp at most */
        }
        assert_int_equal(mx_coord_router_logits(&rw, x + t * H, 1, H, one), MX_OK);
        assert_memory_equal(one, all + t * E, sizeof one);
    }
    /* routing: weights sum to per_expert_scale-weighted one */
    mx_router_desc_t d = desc_of(MX_ROUTER_GEMMA4, 3);
    mx_routing_t r;
    assert_int_equal(mx_coord_route_router(&d, &rw, all, T, &r), MX_OK);
    for (int t = 0; t < T; t++) {
        double s = 0.0;
        for (int j = 0; j < 3; j++)
            s += r.topk_weights[t * 3 + j] / pes[r.topk_ids[t * 3 + j]];
        assert_float_equal(s, 1.0, 1e-5);
        for (int j = 1; j < 3; j++)
            assert_true(all[t * E + r.topk_ids[t * 3 + j - 1]] >= all[t * E + r.topk_ids[t * 3 + j]]);
    }
    mx_routing_fini(&r);
    free(w);
    free(x);
}

static void test_route_router_takes_the_vector_of_the_kind(void **state)
{
    (void)state;
    enum { E = 4 };
    float w[E] = {0, 0, 0, 0};
    const float lg[E] = {0.1f, 0.4f, 0.3f, 0.2f};
    float cb[E] = {0.0f, 0.0f, 0.0f, 5.0f}, pes[E] = {1.0f, 3.0f, 1.0f, 1.0f};
    mx_router_weights_t rw = {.n_experts = E, .hidden = 1, .weight = w, .correction_bias = cb, .per_expert_scale = pes};
    mx_routing_t r;
    /* SIGMOID_GROUPED: the correction bias lifts expert 3 to the top */
    mx_router_desc_t d = desc_of(MX_ROUTER_SIGMOID_GROUPED, 1);
    assert_int_equal(mx_coord_route_router(&d, &rw, lg, 1, &r), MX_OK);
    assert_int_equal(r.topk_ids[0], 3);
    mx_routing_fini(&r);
    /* GEMMA4: per_expert_scale scales the top-1 weight (1 after renormalization) */
    d = desc_of(MX_ROUTER_GEMMA4, 1);
    assert_int_equal(mx_coord_route_router(&d, &rw, lg, 1, &r), MX_OK);
    assert_int_equal(r.topk_ids[0], 1);
    assert_true(r.topk_weights[0] == 3.0f);
    mx_routing_fini(&r);
    /* SOFTMAX_TOPK ignores both */
    d = desc_of(MX_ROUTER_SOFTMAX_TOPK, 1);
    d.renormalize = 1;
    assert_int_equal(mx_coord_route_router(&d, &rw, lg, 1, &r), MX_OK);
    assert_true(r.topk_weights[0] == 1.0f);
    mx_routing_fini(&r);
    /* a non-finite per_expert_scale is refused by name, output untouched */
    pes[2] = INFINITY;
    d = desc_of(MX_ROUTER_GEMMA4, 1);
    memset(&r, 0x5a, sizeof r);
    mx_routing_t before = r;
    assert_int_equal(mx_coord_route_router(&d, &rw, lg, 1, &r), MX_ERR_INVALID);
    assert_non_null(strstr(mx_error_detail(), "per_expert_scale of expert 2"));
    assert_memory_equal(&r, &before, sizeof r);
    assert_int_equal(mx_coord_route_router(&d, NULL, lg, 1, &r), MX_ERR_INVALID);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_topk_softmax_takes_top_logits_ties_to_lower_expert),
        cmocka_unit_test(test_topk_softmax_weights_sum_to_one_on_random_logits),
        cmocka_unit_test(test_softmax_topk_renormalizes_only_when_asked),
        cmocka_unit_test(test_sigmoid_grouped_masks_dropped_groups_with_minus_inf),
        cmocka_unit_test(test_sigmoid_grouped_keeps_groups_by_top2_sum),
        cmocka_unit_test(test_route_rejects_bad_descriptors_and_leaves_output),
        cmocka_unit_test(test_route_zero_tokens_gives_empty_routing),
        cmocka_unit_test(test_expert_capacity_uses_exact_decimal_arithmetic),
        cmocka_unit_test(test_expert_choice_takes_top_tokens_ties_to_lower_token),
        cmocka_unit_test(test_expert_choice_split_over_ranks_equals_whole_batch),
        cmocka_unit_test(test_expert_choice_rejects_bad_range_and_capacity),
        cmocka_unit_test(test_router_logits_match_double_and_are_batch_invariant),
        cmocka_unit_test(test_gemma4_router_hand_computed_case),
        cmocka_unit_test(test_gemma4_router_uses_the_config_epsilon),
        cmocka_unit_test(test_gemma4_router_logits_match_double_and_are_batch_invariant),
        cmocka_unit_test(test_route_router_takes_the_vector_of_the_kind),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
