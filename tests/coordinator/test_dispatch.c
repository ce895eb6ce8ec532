/* Dispatch plan, wire packing and unpacking: one copy per (token, rank),
 * BF16 round trip exact, FP8 within the E4M3 step, corrupted messages refused
 * with the source rank named. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <cmocka.h>
#include <math.h>

#include "sim.h"

#define SEED 4242u
enum { T = 23, E = 9, H = 300, K = 3, R = 3 };

typedef struct {
    uint16_t *x;
    mx_routing_t routing;
    mx_placement_t pl;
    mx_dispatch_plan_t plan;
} fixture_t;

/* Rank 1's view: T tokens starting at global token 100, routed top-3 of 9
 * experts placed contiguously on 3 ranks (3 experts each). */
static void fixture_make(fixture_t *f)
{
    f->x = malloc(sizeof(uint16_t) * T * H);
    for (size_t i = 0; i < (size_t)T * H; i++)
        f->x[i] = sim_bf16((float)(sim_unit() * 8 - 4) * (i % 128 == 5 ? 100.0f : 1.0f));
    float lg[T * E];
    for (int i = 0; i < T * E; i++)
        lg[i] = (float)(sim_unit() * 2 - 1);
    mx_router_desc_t d = {MX_ROUTER_TOPK_SOFTMAX, K, 0, 0, 0, 1.0f, 1.0f};
    assert_int_equal(mx_coord_route(&d, lg, NULL, T, E, &f->routing), MX_OK);
    assert_int_equal(mx_coord_placement_contiguous(E, R, &f->pl), MX_OK);
    assert_int_equal(mx_coord_plan_build(&f->routing, &f->pl, 1, 100, &f->plan), MX_OK);
}

static void fixture_free(fixture_t *f)
{
    mx_dispatch_plan_fini(&f->plan);
    mx_placement_fini(&f->pl);
    mx_routing_fini(&f->routing);
    free(f->x);
}

static void test_plan_sends_each_token_once_per_destination_rank(void **state)
{
    (void)state;
    sim_seed(SEED);
    fixture_t f;
    fixture_make(&f);
    const mx_dispatch_plan_t *p = &f.plan;
    assert_int_equal(p->n_entries, T * K);
    size_t copies = 0;
    for (int t = 0; t < T; t++) {
        int ranks[R] = {0};
        for (int j = 0; j < K; j++)
            ranks[f.routing.topk_ids[t * K + j] / 3] = 1;
        copies += (size_t)(ranks[0] + ranks[1] + ranks[2]);
    }
    assert_int_equal(p->n_copies, copies);
    for (int r = 0; r < R; r++)
        for (size_t c = p->rank_copy_off[r]; c < p->rank_copy_off[r + 1]; c++) {
            if (c > p->rank_copy_off[r])
                assert_true(p->copy_token[c] > p->copy_token[c - 1]);
            for (size_t i = p->copy_entry_off[c]; i < p->copy_entry_off[c + 1]; i++) {
                assert_int_equal(p->entry_rank[i], r);
                assert_int_equal(p->entry_expert[i] / 3, r);
                assert_int_equal(p->entry_local_expert[i], p->entry_expert[i] % 3);
                if (i > p->copy_entry_off[c])
                    assert_true(p->entry_local_expert[i] > p->entry_local_expert[i - 1]);
                int32_t a = p->entry_assign[i];
                assert_int_equal(f.routing.tok[a], p->copy_token[c]);
                assert_int_equal(f.routing.expert[a], p->entry_expert[i]);
            }
        }
    /* per-token lists are sorted by global expert */
    for (int t = 0; t < T; t++) {
        assert_int_equal(p->token_entry_off[t + 1] - p->token_entry_off[t], K);
        for (size_t i = p->token_entry_off[t] + 1; i < p->token_entry_off[t + 1]; i++)
            assert_true(p->entry_expert[p->token_entry[i]] > p->entry_expert[p->token_entry[i - 1]]);
    }
    fixture_free(&f);
}

/* Packs rank 1's messages and unpacks them as if each destination received
 * only rank 1's message (others empty). */
static void roundtrip(mx_dispatch_dtype_t dtype)
{
    fixture_t f;
    fixture_make(&f);
    size_t bytes[R], displs[R], tot = 0;
    mx_coord_dispatch_sizes(&f.plan, dtype, H, bytes);
    for (int r = 0; r < R; r++) {
        displs[r] = tot;
        tot += bytes[r];
        assert_int_equal(bytes[r] % 16, 0);
    }
    uint8_t *send = malloc(tot);
    memset(send, 0xAB, tot);
    assert_int_equal(mx_coord_dispatch_pack(&f.plan, f.x, H, dtype, send, displs), MX_OK);
    /* the same bytes, each message at a place of its own (what a push round gives) */
    uint8_t *sep[R];
    int with_msg = -1;
    for (int r = 0; r < R; r++) {
        sep[r] = bytes[r] ? malloc(bytes[r]) : NULL;
        if (sep[r])
            memset(sep[r], 0x5C, bytes[r]);
        with_msg = bytes[r] ? r : with_msg;
    }
    assert_int_equal(mx_coord_dispatch_pack_to(&f.plan, f.x, H, dtype, sep), MX_OK);
    for (int r = 0; r < R; r++)
        if (bytes[r])
            assert_memory_equal(sep[r], send + displs[r], bytes[r]);
    assert_true(with_msg >= 0);
    uint8_t *keep = sep[with_msg];
    sep[with_msg] = NULL; /* a message with no place is refused, naming its rank */
    assert_int_equal(mx_coord_dispatch_pack_to(&f.plan, f.x, H, dtype, sep), MX_ERR_INVALID);
    char want[32];
    snprintf(want, sizeof want, "rank %d", with_msg);
    assert_non_null(strstr(mx_error_detail(), want));
    sep[with_msg] = keep;
    for (int r = 0; r < R; r++)
        free(sep[r]);
    double max_rel = 0;
    for (int d = 0; d < R; d++) {
        size_t rb[R] = {0, 0, 0}, rd[R] = {0, 0, 0};
        rb[1] = bytes[d];
        mx_recv_batch_t b;
        assert_int_equal(mx_coord_recv_unpack(send + displs[d], rb, rd, R, H, 3, &b), MX_OK);
        size_t c0 = f.plan.rank_copy_off[d], nt = f.plan.rank_copy_off[d + 1] - c0;
        size_t e0 = f.plan.rank_entry_off[d];
        assert_int_equal(b.n_tokens, nt);
        assert_int_equal(b.src_token_off[1], 0);
        assert_int_equal(b.src_token_off[2], nt);
        assert_int_equal(b.n_assign, f.plan.rank_entry_off[d + 1] - e0);
        for (size_t a = 0; a < b.n_assign; a++) {
            assert_int_equal(b.expert[a], f.plan.entry_local_expert[e0 + a]);
            assert_memory_equal(&b.weight[a], &f.plan.entry_weight[e0 + a], sizeof(float));
            assert_int_equal(f.plan.copy_token[c0 + (size_t)b.tok[a]], f.routing.tok[f.plan.entry_assign[e0 + a]]);
        }
        for (size_t c = 0; c < nt; c++) {
            const uint16_t *src = f.x + (size_t)f.plan.copy_token[c0 + c] * H;
            if (dtype == MX_DISPATCH_BF16) {
                assert_memory_equal(b.x + c * H, src, H * sizeof(uint16_t));
            } else {
                for (size_t g = 0; g < H; g += 128) {
                    float amax = 0;
                    for (size_t h = g; h < H && h < g + 128; h++)
                        amax = fmaxf(amax, fabsf(sim_f32(src[h])));
                    for (size_t h = g; h < H && h < g + 128; h++) {
                        double want = sim_f32(src[h]), got = sim_f32(b.x[c * H + h]);
                        /* E4M3: relative step 2^-3 (half: 2^-4) for normals, plus BF16 rounding,
                         * absolute floor at the subnormal step of the group scale */
                        double tol = fabs(want) * (0x1p-4 + 0x1p-8) + amax / 448.0 * 0x1p-9 * 1.01;
                        if (fabs(got - want) > tol)
                            fail_msg("fp8 round trip token %zu col %zu: %g -> %g (tol %g)", c, h, want, got, tol);
                        if (want != 0)
                            max_rel = fmax(max_rel, fabs(got - want) / fabs(want));
                    }
                }
            }
        }
        mx_recv_batch_fini(&b);
    }
    if (dtype == MX_DISPATCH_FP8) {
        printf("# fp8 max relative error %.4g\n", max_rel);
        assert_true(max_rel > 0);
    }
    free(send);
    fixture_free(&f);
}

static void test_bf16_roundtrip_is_exact(void **state)
{
    (void)state;
    sim_seed(SEED + 1);
    roundtrip(MX_DISPATCH_BF16);
}

static void test_fp8_roundtrip_is_within_one_e4m3_step(void **state)
{
    (void)state;
    sim_seed(SEED + 2);
    roundtrip(MX_DISPATCH_FP8);
}

static void test_wire_layout_matches_the_header_description(void **state)
{
    (void)state;
    assert_int_equal(sizeof(mx_wire_header_t), 32);
    assert_int_equal(sizeof(mx_wire_entry_t), 8);
    assert_int_equal(mx_coord_wire_row_bytes(MX_DISPATCH_BF16, 7168), 14336);
    assert_int_equal(mx_coord_wire_row_bytes(MX_DISPATCH_FP8, 7168), 56 * 4 + 7168);
    assert_int_equal(mx_coord_wire_row_bytes(MX_DISPATCH_FP8, 2880), 96 + 2880);
    assert_int_equal(mx_coord_wire_row_bytes(MX_DISPATCH_BF16, 3), 16);
    mx_dispatch_dtype_t dt;
    mx_combine_mode_t cm;
    assert_int_equal(mx_dispatch_dtype_parse("FP8", &dt), MX_OK);
    assert_int_equal(dt, MX_DISPATCH_FP8);
    assert_int_equal(mx_combine_mode_parse("reduce", &cm), MX_OK);
    assert_int_equal(cm, MX_COMBINE_REDUCE);
    assert_int_equal(mx_dispatch_dtype_parse("fp4", &dt), MX_ERR_INVALID);
    assert_non_null(strstr(mx_error_detail(), "'fp4'"));
    assert_int_equal(mx_combine_mode_parse("sum", &cm), MX_ERR_INVALID);
    assert_string_equal(mx_dispatch_dtype_name(MX_DISPATCH_BF16), "bf16");
    assert_string_equal(mx_combine_mode_name(MX_COMBINE_EXACT), "exact");
}

static void expect_corrupt(uint8_t *msg, size_t len, int n_local, const char *needle)
{
    size_t rb[R] = {0, len, 0}, rd[R] = {0, 0, 0};
    mx_recv_batch_t b;
    memset(&b, 0x11, sizeof b);
    mx_recv_batch_t poison = b;
    mx_status_t st = mx_coord_recv_unpack(msg, rb, rd, R, H, n_local, &b);
    if (st != MX_ERR_FORMAT || !strstr(mx_error_detail(), needle))
        fail_msg("got %s '%s', wanted MX_ERR_FORMAT with '%s'", mx_status_str(st), mx_error_detail(), needle);
    assert_non_null(strstr(mx_error_detail(), "rank 1"));
    assert_memory_equal(&b, &poison, sizeof b);
}

static void test_unpack_refuses_corrupt_messages_naming_the_source(void **state)
{
    (void)state;
    sim_seed(SEED + 3);
    fixture_t f;
    fixture_make(&f);
    size_t bytes[R], displs[R], tot = 0;
    mx_coord_dispatch_sizes(&f.plan, MX_DISPATCH_BF16, H, bytes);
    for (int r = 0; r < R; r++) {
        displs[r] = tot;
        tot += bytes[r];
    }
    uint8_t *send = malloc(tot), *m = malloc(tot);
    assert_int_equal(mx_coord_dispatch_pack(&f.plan, f.x, H, MX_DISPATCH_BF16, send, displs), MX_OK);
    const size_t len = bytes[0];
    assert_true(len > 0);
    mx_wire_header_t h;
    memcpy(m, send, len);
    m[0] ^= 1;
    expect_corrupt(m, len, 3, "magic");
    memcpy(m, send, len);
    expect_corrupt(m, len - 16, 3, "bytes");
    expect_corrupt(m, 8, 3, "shorter than");
    memcpy(&h, send, sizeof h);
    h.src_rank = 2;
    memcpy(m, &h, sizeof h);
    expect_corrupt(m, len, 3, "header says sender 2");
    memcpy(m, send, len);
    memcpy(&h, send, sizeof h);
    int32_t bad_expert = 7; /* first entry names an expert this rank does not hold */
    memcpy(m + sizeof h + (size_t)h.n_tokens * sizeof(uint32_t), &bad_expert, sizeof bad_expert);
    expect_corrupt(m, len, 3, "local expert 7");
    memcpy(&h, send, sizeof h);
    h.hidden = H + 1;
    memcpy(m, &h, sizeof h);
    expect_corrupt(m, len, 3, "hidden 301");
    memcpy(m, send, len);
    uint32_t zero = 0;
    memcpy(m + sizeof h, &zero, sizeof zero); /* first token copy claims no expert */
    expect_corrupt(m, len, 3, "token copy 0 has 0 experts");
    free(send);
    free(m);
    fixture_free(&f);
}

static void test_plan_rejects_bad_routing_and_ranks(void **state)
{
    (void)state;
    mx_placement_t pl;
    assert_int_equal(mx_coord_placement_contiguous(4, 2, &pl), MX_OK);
    int32_t tok[2] = {0, 0}, ex[2] = {1, 1};
    float w[2] = {0.5f, 0.5f};
    mx_routing_t r = {1, 4, 0, 2, tok, ex, w, NULL, NULL};
    mx_dispatch_plan_t p;
    memset(&p, 0x22, sizeof p);
    mx_dispatch_plan_t poison = p;
    assert_int_equal(mx_coord_plan_build(&r, &pl, 0, 0, &p), MX_ERR_INVALID);
    assert_non_null(strstr(mx_error_detail(), "token 0 is assigned expert 1 twice"));
    ex[1] = 4;
    assert_int_equal(mx_coord_plan_build(&r, &pl, 0, 0, &p), MX_ERR_INVALID);
    assert_non_null(strstr(mx_error_detail(), "names expert 4"));
    ex[1] = 2;
    tok[1] = 1;
    assert_int_equal(mx_coord_plan_build(&r, &pl, 0, 0, &p), MX_ERR_INVALID);
    assert_non_null(strstr(mx_error_detail(), "names token 1"));
    tok[1] = 0;
    assert_int_equal(mx_coord_plan_build(&r, &pl, 2, 0, &p), MX_ERR_INVALID);
    assert_non_null(strstr(mx_error_detail(), "rank 2 out of range"));
    assert_memory_equal(&p, &poison, sizeof p);
    assert_int_equal(mx_coord_plan_build(&r, &pl, 1, 0, &p), MX_OK);
    assert_int_equal(p.n_copies, 2); /* expert 1 on rank 0, expert 2 on rank 1 */
    mx_dispatch_plan_fini(&p);
    mx_placement_fini(&pl);
}

/* every array of a plan (n_ranks from the plan; sizes from its counts) */
static void assert_plans_equal(const mx_dispatch_plan_t *a, const mx_dispatch_plan_t *b)
{
    assert_int_equal(a->n_ranks, b->n_ranks);
    assert_int_equal(a->my_rank, b->my_rank);
    assert_int_equal(a->n_tokens, b->n_tokens);
    assert_int_equal(a->n_copies, b->n_copies);
    assert_int_equal(a->n_entries, b->n_entries);
    size_t R1 = (size_t)a->n_ranks + 1, C = a->n_copies, N = a->n_entries;
    assert_memory_equal(a->rank_copy_off, b->rank_copy_off, R1 * sizeof(size_t));
    assert_memory_equal(a->rank_entry_off, b->rank_entry_off, R1 * sizeof(size_t));
    if (C) {
        assert_memory_equal(a->copy_token, b->copy_token, C * sizeof(int32_t));
        assert_memory_equal(a->copy_first, b->copy_first, C * sizeof(int32_t));
    }
    assert_memory_equal(a->copy_entry_off, b->copy_entry_off, (C + 1) * sizeof(size_t));
    if (N) {
        assert_memory_equal(a->entry_assign, b->entry_assign, N * sizeof(int32_t));
        assert_memory_equal(a->entry_local_expert, b->entry_local_expert, N * sizeof(int32_t));
        assert_memory_equal(a->entry_expert, b->entry_expert, N * sizeof(int32_t));
        assert_memory_equal(a->entry_weight, b->entry_weight, N * sizeof(float));
        assert_memory_equal(a->entry_rank, b->entry_rank, N * sizeof(int32_t));
        assert_memory_equal(a->token_entry, b->token_entry, N * sizeof(int32_t));
    }
    assert_memory_equal(a->token_entry_off, b->token_entry_off, (a->n_tokens + 1) * sizeof(size_t));
}

/* a plan kept from layer to layer: the same as a fresh one, its arrays kept
 * once big enough, untouched by a refused routing; copy_first names the first
 * copy of each token */
static void test_plan_build_into_reuses_and_equals_a_fresh_plan(void **state)
{
    (void)state;
    sim_seed(SEED + 1);
    fixture_t f;
    fixture_make(&f);
    mx_dispatch_plan_t kept;
    memset(&kept, 0, sizeof kept);
    assert_int_equal(mx_coord_plan_build_into(&f.routing, &f.pl, 1, 100, &kept), MX_OK);
    assert_plans_equal(&kept, &f.plan);
    for (size_t c = 0; c < kept.n_copies; c++) {
        int32_t c1 = kept.copy_first[c];
        assert_true(c1 >= 0 && (size_t)c1 <= c);
        assert_int_equal(kept.copy_token[c1], kept.copy_token[c]);
        for (int32_t q = 0; q < c1; q++)
            assert_true(kept.copy_token[q] != kept.copy_token[c]);
    }
    void *arrays = kept.entry_assign, *work = kept.work;
    /* a smaller routing (the first 10 tokens) reuses the arrays */
    mx_routing_t small = f.routing;
    small.n_tokens = 10;
    small.n_assign = 10 * K;
    assert_int_equal(mx_coord_plan_build_into(&small, &f.pl, 1, 100, &kept), MX_OK);
    assert_ptr_equal(kept.entry_assign, arrays);
    assert_ptr_equal(kept.work, work);
    mx_dispatch_plan_t fresh;
    assert_int_equal(mx_coord_plan_build(&small, &f.pl, 1, 100, &fresh), MX_OK);
    assert_plans_equal(&kept, &fresh);
    /* a refused routing leaves the kept plan as it was */
    int32_t e0 = small.expert[0];
    small.expert[0] = E;
    assert_int_equal(mx_coord_plan_build_into(&small, &f.pl, 1, 100, &kept), MX_ERR_INVALID);
    assert_plans_equal(&kept, &fresh);
    small.expert[0] = small.expert[1]; /* twice the same expert for token 0 */
    assert_int_equal(mx_coord_plan_build_into(&small, &f.pl, 1, 100, &kept), MX_ERR_INVALID);
    assert_non_null(strstr(mx_error_detail(), "assigned expert"));
    assert_plans_equal(&kept, &fresh);
    small.expert[0] = e0;
    /* back to the full routing: equal to the fixture's plan again */
    assert_int_equal(mx_coord_plan_build_into(&f.routing, &f.pl, 1, 100, &kept), MX_OK);
    assert_plans_equal(&kept, &f.plan);
    mx_dispatch_plan_fini(&fresh);
    mx_dispatch_plan_fini(&kept);
    fixture_free(&f);
}

static void test_empty_rank_sends_and_receives_nothing(void **state)
{
    (void)state;
    mx_placement_t pl;
    assert_int_equal(mx_coord_placement_contiguous(4, 2, &pl), MX_OK);
    mx_routing_t r = {0, 4, 2, 0, NULL, NULL, NULL, NULL, NULL};
    mx_dispatch_plan_t p;
    assert_int_equal(mx_coord_plan_build(&r, &pl, 1, 0, &p), MX_OK);
    size_t bytes[2] = {99, 99}, displs[2] = {0, 0};
    mx_coord_dispatch_sizes(&p, MX_DISPATCH_FP8, 64, bytes);
    assert_int_equal(bytes[0], 0);
    assert_int_equal(bytes[1], 0);
    assert_int_equal(mx_coord_dispatch_pack(&p, NULL, 64, MX_DISPATCH_FP8, NULL, displs), MX_OK);
    mx_recv_batch_t b;
    assert_int_equal(mx_coord_recv_unpack(NULL, bytes, displs, 2, 64, 2, &b), MX_OK);
    assert_int_equal(b.n_tokens, 0);
    assert_int_equal(b.n_assign, 0);
    mx_recv_batch_fini(&b);
    assert_int_equal(mx_coord_combine(&p, MX_COMBINE_EXACT, NULL, NULL, 64, NULL), MX_OK);
    mx_dispatch_plan_fini(&p);
    mx_placement_fini(&pl);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plan_sends_each_token_once_per_destination_rank),
        cmocka_unit_test(test_bf16_roundtrip_is_exact),
        cmocka_unit_test(test_fp8_roundtrip_is_within_one_e4m3_step),
        cmocka_unit_test(test_wire_layout_matches_the_header_description),
        cmocka_unit_test(test_unpack_refuses_corrupt_messages_naming_the_source),
        cmocka_unit_test(test_plan_rejects_bad_routing_and_ranks),
        cmocka_unit_test(test_plan_build_into_reuses_and_equals_a_fresh_plan),
        cmocka_unit_test(test_empty_rank_sends_and_receives_nothing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
