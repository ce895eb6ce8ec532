/* Combine: EXACT is bitwise independent of the rank count, the token split,
 * the placement (replicas included) and the assignment order; REDUCE equals
 * EXACT on one rank and is invariant to the token split for a fixed placement. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>

#include "sim.h"

#define SEED 77001u
enum { T = 61, E = 12, H = 200, K = 3 };

static uint16_t *make_x(void)
{
    uint16_t *x = malloc(sizeof(uint16_t) * T * H);
    for (size_t i = 0; i < (size_t)T * H; i++)
        x[i] = sim_bf16((float)(sim_unit() * 4 - 2));
    return x;
}
static float *make_logits(void)
{
    float *l = malloc(sizeof(float) * T * E);
    for (size_t i = 0; i < (size_t)T * E; i++)
        l[i] = (float)(sim_unit() * 6 - 3);
    return l;
}

/* Independent reference: per token, experts ascending, FP32 sum from 0. */
static void reference(const mx_routing_t *r, const uint16_t *x, uint16_t *out)
{
    uint16_t row[H];
    for (size_t t = 0; t < r->n_tokens; t++) {
        float acc[H] = {0};
        for (int e = 0; e < E; e++)
            for (size_t a = 0; a < r->n_assign; a++)
                if ((size_t)r->tok[a] == t && r->expert[a] == e) {
                    sim_expert(x + t * H, e, H, row);
                    for (int h = 0; h < H; h++)
                        acc[h] += r->weight[a] * sim_f32(row[h]);
                }
        for (int h = 0; h < H; h++)
            out[t * H + h] = sim_bf16(acc[h]);
    }
}

static void shuffle_routing(mx_routing_t *r)
{
    for (size_t i = r->n_assign; i > 1; i--) {
        size_t j = (size_t)(sim_unit() * (double)i);
        int32_t tt = r->tok[i - 1], ee = r->expert[i - 1];
        float ww = r->weight[i - 1];
        r->tok[i - 1] = r->tok[j];
        r->expert[i - 1] = r->expert[j];
        r->weight[i - 1] = r->weight[j];
        r->tok[j] = tt;
        r->expert[j] = ee;
        r->weight[j] = ww;
    }
}

static void random_placement(int R, mx_placement_t *p)
{
    char json[4096];
    size_t n = (size_t)snprintf(json, sizeof json, "{\"experts\": [");
    for (int e = 0; e < E; e++) {
        int nrep = 1 + (int)(sim_unit() * 3);
        int used[64] = {0};
        n += (size_t)snprintf(json + n, sizeof json - n, "%s[", e ? "," : "");
        for (int i = 0, w = 0; i < nrep; i++) {
            int r = (int)(sim_unit() * R);
            if (used[r])
                continue;
            used[r] = 1;
            n += (size_t)snprintf(json + n, sizeof json - n, "%s%d", w++ ? "," : "", r);
        }
        n += (size_t)snprintf(json + n, sizeof json - n, "]");
    }
    snprintf(json + n, sizeof json - n, "]}");
    assert_int_equal(mx_coord_placement_parse(json, "random", E, R, p), MX_OK);
}

static void run_exact_invariance(const mx_router_desc_t *d)
{
    uint16_t *x = make_x();
    float *logits = make_logits();
    size_t whole[2] = {0, T};
    mx_routing_t all;
    assert_int_equal(sim_route(1, whole, d, logits, E, &all), 0);
    uint16_t *want = malloc(sizeof(uint16_t) * T * H), *got = malloc(sizeof(uint16_t) * T * H);
    reference(&all, x, want);
    const int ranks[5] = {1, 2, 3, 4, 8};
    for (int ri = 0; ri < 5; ri++) {
        int R = ranks[ri];
        for (int variant = 0; variant < 3; variant++) {
            mx_placement_t pl;
            if (variant == 0)
                assert_int_equal(mx_coord_placement_contiguous(E, R, &pl), MX_OK);
            else if (variant == 1)
                assert_int_equal(mx_coord_placement_replicated(E, R, &pl), MX_OK);
            else
                random_placement(R, &pl);
            size_t cuts[9];
            sim_cuts(R, T, cuts);
            mx_routing_t rt[8];
            assert_int_equal(sim_route(R, cuts, d, logits, E, rt), 0);
            for (int r = 0; r < R; r++)
                shuffle_routing(&rt[r]);
            for (size_t i = 0; i < (size_t)T * H; i++)
                got[i] = 0xFFFF; /* poison */
            assert_int_equal(sim_layer(R, cuts, rt, &pl, x, H, MX_DISPATCH_BF16, MX_COMBINE_EXACT, NULL, got), 0);
            if (memcmp(got, want, sizeof(uint16_t) * T * H) != 0)
                fail_msg("router %s, %d ranks, placement variant %d: EXACT output differs from the reference",
                         mx_router_name(d->kind), R, variant);
            for (int r = 0; r < R; r++)
                mx_routing_fini(&rt[r]);
            mx_placement_fini(&pl);
        }
    }
    mx_routing_fini(&all);
    free(x);
    free(logits);
    free(want);
    free(got);
}

static void test_exact_combine_is_bitwise_invariant_for_topk(void **state)
{
    (void)state;
    sim_seed(SEED);
    mx_router_desc_t d = {MX_ROUTER_TOPK_SOFTMAX, K, 0, 0, 0, 1.0f, 1.0f};
    run_exact_invariance(&d);
}

static void test_exact_combine_is_bitwise_invariant_for_expert_choice(void **state)
{
    (void)state;
    sim_seed(SEED + 1);
    /* low capacity: many tokens get no expert at all, some get several */
    mx_router_desc_t d = {MX_ROUTER_EXPERT_CHOICE, K, 0, 0, 0, 1.0f, 0.5f};
    run_exact_invariance(&d);
}

static void test_combine_rows_sums_in_the_given_order_from_zero(void **state)
{
    (void)state;
    /* 2^24 + 1 - 2^24 in FP32: 0 left to right (2^24 + 1 rounds to 2^24), 1 in the other order */
    uint16_t big = sim_bf16(0x1p24f), one = sim_bf16(1.0f), neg = sim_bf16(-0x1p24f);
    const uint16_t r0[1] = {big}, r1[1] = {one}, r2[1] = {neg};
    const uint16_t *rows[3] = {r0, r1, r2};
    const float w[3] = {1.0f, 1.0f, 1.0f};
    uint16_t out = 0xFFFF;
    mx_coord_combine_rows(rows, w, 3, 1, &out);
    assert_int_equal(out, 0);
    const uint16_t *rows2[3] = {r0, r2, r1};
    mx_coord_combine_rows(rows2, w, 3, 1, &out);
    assert_int_equal(out, one);
    mx_coord_combine_rows(rows, w, 0, 1, &out);
    assert_int_equal(out, 0); /* no expert: zero */
}

static double rel_l2(const uint16_t *a, const uint16_t *b, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)sim_f32(a[i]) - sim_f32(b[i]);
        num += d * d;
        den += (double)sim_f32(b[i]) * sim_f32(b[i]);
    }
    return sqrt(num / (den > 0 ? den : 1));
}

static void test_reduce_matches_exact_on_one_rank_and_is_split_invariant(void **state)
{
    (void)state;
    sim_seed(SEED + 2);
    uint16_t *x = make_x();
    float *logits = make_logits();
    mx_router_desc_t d = {MX_ROUTER_TOPK_SOFTMAX, K, 0, 0, 0, 1.0f, 1.0f};
    uint16_t *exact = malloc(sizeof(uint16_t) * T * H), *red = malloc(sizeof(uint16_t) * T * H),
             *red2 = malloc(sizeof(uint16_t) * T * H);
    size_t whole[2] = {0, T};
    mx_routing_t r1;
    mx_placement_t p1;
    assert_int_equal(sim_route(1, whole, &d, logits, E, &r1), 0);
    assert_int_equal(mx_coord_placement_contiguous(E, 1, &p1), MX_OK);
    assert_int_equal(sim_layer(1, whole, &r1, &p1, x, H, MX_DISPATCH_BF16, MX_COMBINE_EXACT, NULL, exact), 0);
    assert_int_equal(sim_layer(1, whole, &r1, &p1, x, H, MX_DISPATCH_BF16, MX_COMBINE_REDUCE, NULL, red), 0);
    assert_memory_equal(exact, red, sizeof(uint16_t) * T * H);
    mx_routing_fini(&r1);
    mx_placement_fini(&p1);

    /* 3 ranks, a fixed round-robin placement (expert e on rank e % 3, so a
     * rank's partial sum groups experts out of global order), two token splits */
    mx_placement_t p3;
    assert_int_equal(mx_coord_placement_parse("{\"experts\": [0,1,2,0,1,2,0,1,2,0,1,2]}", "rr", E, 3, &p3), MX_OK);
    size_t cuts_a[4] = {0, 20, 40, T}, cuts_b[4] = {0, 3, 59, T};
    mx_routing_t ra[3], rb[3];
    assert_int_equal(sim_route(3, cuts_a, &d, logits, E, ra), 0);
    assert_int_equal(sim_route(3, cuts_b, &d, logits, E, rb), 0);
    assert_int_equal(sim_layer(3, cuts_a, ra, &p3, x, H, MX_DISPATCH_BF16, MX_COMBINE_REDUCE, NULL, red), 0);
    assert_int_equal(sim_layer(3, cuts_b, rb, &p3, x, H, MX_DISPATCH_BF16, MX_COMBINE_REDUCE, NULL, red2), 0);
    assert_memory_equal(red, red2, sizeof(uint16_t) * T * H);
    double err = rel_l2(red, exact, (size_t)T * H);
    printf("# reduce vs exact on 3 ranks: rel L2 %.3g\n", err);
    assert_true(err < 1e-2);
    for (int r = 0; r < 3; r++) {
        mx_routing_fini(&ra[r]);
        mx_routing_fini(&rb[r]);
    }
    mx_placement_fini(&p3);
    free(x);
    free(logits);
    free(exact);
    free(red);
    free(red2);
}

static void test_fp8_dispatch_stays_within_tolerance(void **state)
{
    (void)state;
    sim_seed(SEED + 3);
    uint16_t *x = make_x();
    float *logits = make_logits();
    mx_router_desc_t d = {MX_ROUTER_TOPK_SOFTMAX, K, 0, 0, 0, 1.0f, 1.0f};
    uint16_t *exact = malloc(sizeof(uint16_t) * T * H), *fp8 = malloc(sizeof(uint16_t) * T * H);
    size_t cuts[5] = {0, 10, 30, 31, T};
    mx_routing_t r[4];
    mx_placement_t p;
    assert_int_equal(sim_route(4, cuts, &d, logits, E, r), 0);
    assert_int_equal(mx_coord_placement_contiguous(E, 4, &p), MX_OK);
    assert_int_equal(sim_layer(4, cuts, r, &p, x, H, MX_DISPATCH_BF16, MX_COMBINE_EXACT, NULL, exact), 0);
    assert_int_equal(sim_layer(4, cuts, r, &p, x, H, MX_DISPATCH_FP8, MX_COMBINE_EXACT, NULL, fp8), 0);
    double err = rel_l2(fp8, exact, (size_t)T * H);
    printf("# fp8 dispatch vs bf16: rel L2 %.3g\n", err);
    assert_true(err > 0.0); /* FP8 really was used */
    assert_true(err < 5e-2);
    for (int i = 0; i < 4; i++)
        mx_routing_fini(&r[i]);
    mx_placement_fini(&p);
    free(x);
    free(logits);
    free(exact);
    free(fp8);
}

static void test_combine_rejects_misaligned_replies(void **state)
{
    (void)state;
    sim_seed(SEED + 4);
    float logits[E];
    for (int e = 0; e < E; e++)
        logits[e] = (float)e;
    mx_router_desc_t d = {MX_ROUTER_TOPK_SOFTMAX, 1, 0, 0, 0, 1.0f, 1.0f};
    mx_routing_t r;
    mx_placement_t p;
    mx_dispatch_plan_t plan;
    assert_int_equal(mx_coord_route(&d, logits, NULL, 1, E, &r), MX_OK);
    assert_int_equal(mx_coord_placement_contiguous(E, 1, &p), MX_OK);
    assert_int_equal(mx_coord_plan_build(&r, &p, 0, 0, &plan), MX_OK);
    float buf[H + 1];
    size_t displs[1] = {1};
    uint16_t out[H];
    assert_int_equal(mx_coord_combine(&plan, MX_COMBINE_REDUCE, buf, displs, H, out), MX_ERR_INVALID);
    assert_non_null(strstr(mx_error_detail(), "rank 0"));
    mx_dispatch_plan_fini(&plan);
    mx_placement_fini(&p);
    mx_routing_fini(&r);
}

/* One token with experts 0, 1, 2 whose rows are 2^24, 1, -2^24: the FP32 sum is
 * 0 in one order and 1 in others, so the result shows which order was used. */
static void order_case(const char *placement_json, mx_combine_mode_t mode, uint16_t *out)
{
    mx_placement_t pl;
    assert_int_equal(mx_coord_placement_parse(placement_json, "order", 3, 3, &pl), MX_OK);
    int32_t tok[3] = {0, 0, 0}, ex[3] = {2, 0, 1};
    float w[3] = {1.0f, 1.0f, 1.0f};
    mx_routing_t r = {1, 3, 0, 3, tok, ex, w, NULL, NULL};
    mx_dispatch_plan_t plan;
    assert_int_equal(mx_coord_plan_build(&r, &pl, 0, 0, &plan), MX_OK);
    const float val[3] = {0x1p24f, 1.0f, -0x1p24f}; /* by global expert */
    float f32[3];
    uint16_t b16[3];
    size_t displs[3];
    for (int k = 0; k < 3; k++) { /* rank k's reply: the expert it holds */
        int n;
        const int *e = mx_coord_placement_rank_experts(&pl, k, &n);
        assert_int_equal(n, 1);
        f32[k] = val[e[0]];
        b16[k] = sim_bf16(val[e[0]]);
        displs[k] = (size_t)k * (mode == MX_COMBINE_EXACT ? sizeof(uint16_t) : sizeof(float));
    }
    assert_int_equal(
        mx_coord_combine(&plan, mode, mode == MX_COMBINE_EXACT ? (void *)b16 : (void *)f32, displs, 1, out), MX_OK);
    /* the same sum from each rank's reply where it lies (what a pull round gives) */
    const uint8_t *src[3];
    for (int k = 0; k < 3; k++)
        src[k] = (const uint8_t *)(mode == MX_COMBINE_EXACT ? (const void *)&b16[k] : (const void *)&f32[k]);
    uint16_t out2 = 0xFFFF;
    assert_int_equal(mx_coord_combine_from(&plan, mode, src, 1, &out2), MX_OK);
    assert_int_equal(out2, *out);
    src[1] = NULL; /* a reply that is missing is refused, naming its rank */
    assert_int_equal(mx_coord_combine_from(&plan, mode, src, 1, &out2), MX_ERR_INVALID);
    assert_non_null(strstr(mx_error_detail(), "rank 1"));
    mx_dispatch_plan_fini(&plan);
    mx_placement_fini(&pl);
}

static void test_exact_sums_in_global_expert_order_and_reduce_in_rank_order(void **state)
{
    (void)state;
    uint16_t out;
    /* expert 0 on rank 2, 1 on rank 0, 2 on rank 1 */
    const char *shuffled = "{\"experts\": [2, 0, 1]}";
    order_case(shuffled, MX_COMBINE_EXACT, &out);
    assert_int_equal(out, 0); /* (2^24 + 1) - 2^24 in FP32 = 0: global expert order */
    order_case(shuffled, MX_COMBINE_REDUCE, &out);
    assert_int_equal(out, sim_bf16(1.0f)); /* ranks 0,1,2 hold 1, -2^24, 2^24: (1 - 2^24) + 2^24 = 1 */
    order_case("{\"experts\": [0, 1, 2]}", MX_COMBINE_REDUCE, &out);
    assert_int_equal(out, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exact_combine_is_bitwise_invariant_for_topk),
        cmocka_unit_test(test_exact_combine_is_bitwise_invariant_for_expert_choice),
        cmocka_unit_test(test_combine_rows_sums_in_the_given_order_from_zero),
        cmocka_unit_test(test_reduce_matches_exact_on_one_rank_and_is_split_invariant),
        cmocka_unit_test(test_fp8_dispatch_stays_within_tolerance),
        cmocka_unit_test(test_combine_rejects_misaligned_replies),
        cmocka_unit_test(test_exact_sums_in_global_expert_order_and_reduce_in_rank_order),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
