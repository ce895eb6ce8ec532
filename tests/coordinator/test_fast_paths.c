/* The coordinator's fast paths (AVX2 + OpenMP) give bitwise the results of its
 * scalar code (mx_coord_fast_paths_set(0)): router logits for every token
 * count around the tile sizes (and each token alone: batch invariance), the
 * exact and reduce combines on rows holding NaN/Inf/subnormals, the dispatch
 * packing (BF16 and FP8) byte for byte, the unpacking (incl. FP8 scales made
 * non-finite on the wire), and a whole simulated layer over 1..5 ranks.
 * The program exits 77 (skipped) when the CPU has no AVX2 (then the fast
 * paths are the scalar code plus OpenMP and only that is compared). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>

#include "mxep/quant.h"
#include "sim.h"
#ifdef _OPENMP
#include <omp.h>
#endif

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* a random value of magnitude about 2^lo .. 2^hi, never zero */
static float spread(int lo, int hi)
{
    float v = (float)(sim_unit() * 2 - 1);
    if (v == 0.0f)
        v = 0.25f;
    return ldexpf(v, lo + (int)(sim_unit() * (hi - lo + 1)));
}

/* ---------------------------------------------------------------- router logits */

static void logits_both(const mx_router_weights_t *rw, const uint16_t *x, size_t T, size_t H, float *fast, float *slow)
{
    size_t n = T * (size_t)rw->n_experts;
    for (size_t i = 0; i < n; i++) {
        fast[i] = bits_f32(0x7FA5A5A5u);
        slow[i] = bits_f32(0x7F5A5A5Au);
    }
    assert_int_equal(mx_coord_fast_paths_set(1), 1);
#ifdef _OPENMP
    /* the expert chunks follow the thread count: vary it */
    static int turn;
    static const int nths[] = {1, 2, 3, 7};
    int saved = omp_get_max_threads();
    omp_set_num_threads(nths[turn++ % 4]);
#endif
    assert_int_equal(mx_coord_router_logits(rw, x, T, H, fast), MX_OK);
#ifdef _OPENMP
    omp_set_num_threads(saved);
#endif
    assert_int_equal(mx_coord_fast_paths_set(0), 1);
    assert_int_equal(mx_coord_router_logits(rw, x, T, H, slow), MX_OK);
    mx_coord_fast_paths_set(1);
}

static void test_fast_router_logits_equal_scalar_for_every_tiling(void **state)
{
    (void)state;
    sim_seed(611);
    static const int Es[] = {1, 5, 6, 13, 49, 97};
    static const size_t Hs[] = {1, 17, 300, 700};
    static const size_t Ts[] = {0, 1, 7, 8, 9, 15, 16, 17, 33, 63, 64, 65, 130};
    enum { TMAX = 130 };
    for (size_t ei = 0; ei < sizeof Es / sizeof *Es; ei++)
        for (size_t hi = 0; hi < sizeof Hs / sizeof *Hs; hi++) {
            const int E = Es[ei];
            const size_t H = Hs[hi];
            float *W = malloc((size_t)E * H * sizeof(float)), *bias = malloc((size_t)E * sizeof(float));
            uint16_t *x = malloc(TMAX * H * sizeof(uint16_t));
            float *fast = malloc(TMAX * (size_t)E * sizeof(float)), *slow = malloc(TMAX * (size_t)E * sizeof(float));
            float *one = malloc((size_t)E * sizeof(float));
            float *gscale = malloc(H * sizeof(float)); /* Gemma 4 router.scale */
            for (size_t i = 0; i < (size_t)E * H; i++)
                W[i] = spread(-12, 2);
            for (size_t h = 0; h < H; h++)
                gscale[h] = spread(-2, 2);
            for (int e = 0; e < E; e++)
                bias[e] = spread(-4, 1);
            for (size_t i = 0; i < TMAX * H; i++) /* wide magnitudes: many rounding differences if the order moved */
                x[i] = sim_bf16(spread(-20, 8));
            for (int wb = 0; wb < 3; wb++) { /* no bias, bias, Gemma 4 input normalization (scale, eps) */
                mx_router_weights_t rw = {.n_experts = E, .hidden = H, .weight = W, .bias = wb == 1 ? bias : NULL};
                if (wb == 2) {
                    rw.scale = gscale;
                    rw.rms_eps = 1e-6f;
                }
                for (size_t ti = 0; ti < sizeof Ts / sizeof *Ts; ti++) {
                    size_t T = Ts[ti];
                    logits_both(&rw, x, T, H, fast, slow);
                    for (size_t i = 0; i < T * (size_t)E; i++)
                        if (f32_bits(fast[i]) != f32_bits(slow[i]))
                            fail_msg("E %d H %zu T %zu bias %d: logit %zu: fast %a, scalar %a", E, H, T, wb, i,
                                     (double)fast[i], (double)slow[i]);
                }
                /* batch invariance: each token of the big batch alone, and a batch at an offset */
                logits_both(&rw, x, TMAX, H, fast, slow);
                for (size_t t = 0; t < TMAX; t += 13) {
                    assert_int_equal(mx_coord_router_logits(&rw, x + t * H, 1, H, one), MX_OK);
                    assert_memory_equal(one, fast + t * (size_t)E, (size_t)E * sizeof(float));
                }
                assert_int_equal(mx_coord_router_logits(&rw, x + 37 * H, 70, H, slow), MX_OK);
                assert_memory_equal(slow, fast + 37 * (size_t)E, 70 * (size_t)E * sizeof(float));
            }
            free(W);
            free(bias);
            free(x);
            free(fast);
            free(slow);
            free(one);
            free(gscale);
        }
}

/* ---------------------------------------------------------------- combine rows */

/* Where two NaNs meet in one addition, which payload comes out is up to the
 * compiler's operand order (C and IEEE 754 leave it open; gcc commutes the
 * scalar and the vector adds as it likes), so a NaN output only has to be a
 * NaN in both paths. Every other output is compared bit for bit. */
static int bf16_nan(uint16_t v)
{
    return (v & 0x7FFF) > 0x7F80;
}

static void test_fast_combine_rows_equal_scalar_with_specials(void **state)
{
    (void)state;
    sim_seed(612);
    enum { NMAX = 9, HMAX = 7168 + 13 };
    uint16_t *data = malloc((size_t)NMAX * HMAX * sizeof(uint16_t));
    uint16_t *fast = malloc(HMAX * sizeof(uint16_t)), *slow = malloc(HMAX * sizeof(uint16_t));
    const uint16_t *rows[NMAX];
    float w[NMAX];
    for (size_t i = 0; i < (size_t)NMAX * HMAX; i++) {
        double u = sim_unit();
        /* mostly ordinary values, some subnormal, Inf, NaN with payloads, huge (overflow to Inf when summed) */
        uint16_t v = sim_bf16(spread(-30, 30));
        if (u < 0.002)
            v = (uint16_t)(0x7F81 + (uint16_t)(sim_unit() * 126) + (sim_unit() < 0.5 ? 0x8000 : 0));
        else if (u < 0.004)
            v = sim_unit() < 0.5 ? 0x7F80 : 0xFF80;
        else if (u < 0.01)
            v = (uint16_t)(1 + (uint16_t)(sim_unit() * 126));
        else if (u < 0.02)
            v = 0x7F7F;
        data[i] = v;
    }
    static const size_t Hs[] = {1, 7, 8, 9, 31, 32, 33, 100, 7168, HMAX};
    for (size_t hi = 0; hi < sizeof Hs / sizeof *Hs; hi++)
        for (int n = 0; n <= NMAX; n++) {
            size_t H = Hs[hi];
            for (int i = 0; i < n; i++) {
                rows[i] = data + (size_t)i * HMAX + (H + 13 <= HMAX ? (size_t)(sim_unit() * 13) : 0);
                w[i] = (float)sim_unit();
            }
            if (n > 2)
                w[2] = 0.0f; /* 0 * Inf = NaN */
            memset(fast, 0x11, H * sizeof(uint16_t));
            memset(slow, 0x22, H * sizeof(uint16_t));
            mx_coord_fast_paths_set(0);
            mx_coord_combine_rows(rows, w, n, H, slow);
            mx_coord_fast_paths_set(1);
            mx_coord_combine_rows(rows, w, n, H, fast);
            for (size_t h = 0; h < H; h++)
                if (fast[h] != slow[h] && !(bf16_nan(fast[h]) && bf16_nan(slow[h])))
                    fail_msg("H %zu n %d: element %zu: fast 0x%04x, scalar 0x%04x", H, n, h, fast[h], slow[h]);
        }
    free(data);
    free(fast);
    free(slow);
}

/* ---------------------------------------------------------------- pack / unpack / combine */

typedef struct {
    int R;
    size_t T, H;
    int E, K;
    size_t cuts[9];
    uint16_t *x;
    mx_routing_t rt[8];
    mx_placement_t pl;
    mx_dispatch_plan_t plan[8];
} scene_t;

static void scene_make(scene_t *s, int R, size_t T, size_t H, int E, int K)
{
    memset(s, 0, sizeof *s);
    s->R = R, s->T = T, s->H = H, s->E = E, s->K = K;
    s->x = malloc((T ? T : 1) * H * sizeof(uint16_t));
    for (size_t i = 0; i < T * H; i++)
        s->x[i] = sim_bf16(spread(-40, 10)); /* groups with big and tiny values: FP8 subnormals */
    for (size_t t = 0; t < T; t += 5)        /* a few zero groups and specials */
        memset(s->x + t * H, 0, (H < 128 ? H : 128) * sizeof(uint16_t));
    if (T > 3 && H > 3) {
        s->x[3 * H + 1] = 0x7FC1;
        s->x[3 * H + 2] = 0xFF80;
    }
    float *lg = malloc((T ? T : 1) * (size_t)E * sizeof(float));
    for (size_t i = 0; i < T * (size_t)E; i++)
        lg[i] = (float)sim_unit();
    sim_cuts(R, T, s->cuts);
    mx_router_desc_t d = {MX_ROUTER_TOPK_SOFTMAX, K, 0, 0, 0, 1.0f, 1.0f};
    assert_int_equal(sim_route(R, s->cuts, &d, lg, E, s->rt), 0);
    free(lg);
    assert_int_equal(mx_coord_placement_contiguous(E, R, &s->pl), MX_OK);
    for (int r = 0; r < R; r++)
        assert_int_equal(mx_coord_plan_build(&s->rt[r], &s->pl, r, s->cuts[r], &s->plan[r]), MX_OK);
}

static void scene_free(scene_t *s)
{
    for (int r = 0; r < s->R; r++) {
        mx_dispatch_plan_fini(&s->plan[r]);
        mx_routing_fini(&s->rt[r]);
    }
    mx_placement_fini(&s->pl);
    free(s->x);
}

/* packs rank r's messages (fast or scalar) into a poisoned buffer; returns it, sizes in bytes/displs */
static uint8_t *pack(const scene_t *s, int r, mx_dispatch_dtype_t dt, int fast, size_t *bytes, size_t *displs,
                     size_t *tot_p)
{
    mx_coord_dispatch_sizes(&s->plan[r], dt, s->H, bytes);
    size_t tot = 0;
    for (int d = 0; d < s->R; d++) {
        displs[d] = tot;
        tot += bytes[d];
    }
    uint8_t *buf = malloc(tot ? tot : 1);
    memset(buf, 0xCD, tot ? tot : 1);
    mx_coord_fast_paths_set(fast);
    assert_int_equal(mx_coord_dispatch_pack(&s->plan[r], s->x + s->cuts[r] * s->H, s->H, dt, buf, displs), MX_OK);
    mx_coord_fast_paths_set(1);
    *tot_p = tot;
    return buf;
}

static void batch_equal(const mx_recv_batch_t *a, const mx_recv_batch_t *b)
{
    assert_int_equal(a->n_tokens, b->n_tokens);
    assert_int_equal(a->n_assign, b->n_assign);
    for (size_t i = 0; i < a->n_tokens * a->hidden; i++)
        if (a->x[i] != b->x[i])
            fail_msg("unpacked x[%zu]: fast 0x%04x, scalar 0x%04x", i, a->x[i], b->x[i]);
    assert_memory_equal(a->tok, b->tok, a->n_assign * sizeof(int32_t));
    assert_memory_equal(a->expert, b->expert, a->n_assign * sizeof(int32_t));
    assert_memory_equal(a->weight, b->weight, a->n_assign * sizeof(float));
    assert_memory_equal(a->src_token_off, b->src_token_off, ((size_t)a->n_ranks + 1) * sizeof(size_t));
    assert_memory_equal(a->src_assign_off, b->src_assign_off, ((size_t)a->n_ranks + 1) * sizeof(size_t));
}

/* host-memory hooks on the kept batch's token rows (mxep/hostmem.h): the one
 * live buffer they were told about, and how often they were called */
static void *g_x_live;
static size_t g_x_live_n;
static int g_x_allocs, g_x_frees, g_x_errors;
static void x_alloc(void *ctx, void *p, size_t n)
{
    (void)ctx;
    g_x_errors += g_x_live != NULL || p == NULL; /* the old one must have been freed first */
    g_x_live = p;
    g_x_live_n = n;
    g_x_allocs++;
}
static void x_free(void *ctx, void *p)
{
    (void)ctx;
    g_x_errors += p != g_x_live;
    g_x_live = NULL;
    g_x_frees++;
}
static const mx_host_hooks_t x_hooks = {.on_alloc = x_alloc, .on_free = x_free, .ctx = NULL};

static mx_recv_batch_t kept = {.x_hooks = &x_hooks}; /* reused by every scene (mx_coord_recv_unpack_into) */

static void check_scene(scene_t *s, mx_dispatch_dtype_t dt, int corrupt_scales)
{
    const int R = s->R;
    uint8_t *sb[8];
    size_t sbytes[8][8], sdispl[8][8];
    for (int r = 0; r < R; r++) {
        size_t b2[8], d2[8], tot, tot2;
        sb[r] = pack(s, r, dt, 0, sbytes[r], sdispl[r], &tot);
        uint8_t *f = pack(s, r, dt, 1, b2, d2, &tot2);
        assert_int_equal(tot, tot2);
        for (size_t i = 0; i < tot; i++)
            if (sb[r][i] != f[i])
                fail_msg("%s pack of rank %d: byte %zu: fast 0x%02x, scalar 0x%02x", mx_dispatch_dtype_name(dt), r, i,
                         f[i], sb[r][i]);
        free(f);
    }
    for (int d = 0; d < R; d++) {
        size_t bytes[8], displs[8], tot = 0;
        for (int r = 0; r < R; r++) {
            bytes[r] = sbytes[r][d];
            displs[r] = tot;
            tot += bytes[r];
        }
        uint8_t *rb = malloc(tot ? tot : 1);
        for (int r = 0; r < R; r++)
            memcpy(rb + displs[r], sb[r] + sdispl[r][d], bytes[r]);
        if (corrupt_scales && dt == MX_DISPATCH_FP8)
            for (int r = 0; r < R; r++) {
                if (!bytes[r])
                    continue;
                mx_wire_header_t h;
                memcpy(&h, rb + displs[r], sizeof h);
                size_t meta = (sizeof h + h.n_tokens * 4 + h.n_entries * 8 + 15) & ~(size_t)15;
                /* token 0: scale 0 a NaN with payload, scale 1 (if any) +Inf; last token: -0 scale */
                uint32_t nan = 0x7FE12345u, inf = 0x7F800000u, nz = 0x80000000u;
                memcpy(rb + displs[r] + meta, &nan, 4);
                if (s->H > 128)
                    memcpy(rb + displs[r] + meta + 4, &inf, 4);
                memcpy(rb + displs[r] + meta + (size_t)(h.n_tokens - 1) * h.row_bytes, &nz, 4);
            }
        int nloc;
        mx_coord_placement_rank_experts(&s->pl, d, &nloc);
        mx_recv_batch_t bf, bs;
        mx_coord_fast_paths_set(0);
        assert_int_equal(mx_coord_recv_unpack(rb, bytes, displs, R, s->H, nloc, &bs), MX_OK);
        mx_coord_fast_paths_set(1);
        assert_int_equal(mx_coord_recv_unpack(rb, bytes, displs, R, s->H, nloc, &bf), MX_OK);
        batch_equal(&bf, &bs);
        /* the reusing variant, into a batch kept across scenes of every size */
        assert_int_equal(mx_coord_recv_unpack_into(rb, bytes, displs, R, s->H, nloc, &kept), MX_OK);
        batch_equal(&kept, &bs);
        /* its token rows lie in the buffer the hooks last heard of */
        assert_ptr_equal(kept.x, g_x_live);
        assert_true(g_x_live_n >= kept.n_tokens * kept.hidden * sizeof(uint16_t));
        assert_int_equal(g_x_errors, 0);
        if (bs.n_tokens > 0) { /* a bad message leaves the kept batch as it was */
            mx_recv_batch_t before = kept;
            uint16_t x0 = kept.x[0];
            int r0 = 0;
            while (!bytes[r0])
                r0++;
            rb[displs[r0]] ^= 0xFF; /* magic */
            assert_int_equal(mx_coord_recv_unpack_into(rb, bytes, displs, R, s->H, nloc, &kept), MX_ERR_FORMAT);
            assert_memory_equal(&before, &kept, sizeof kept);
            assert_int_equal(kept.x[0], x0);
            rb[displs[r0]] ^= 0xFF;
        }
        mx_recv_batch_fini(&bf);
        mx_recv_batch_fini(&bs);
        free(rb);
    }
    for (int r = 0; r < R; r++)
        free(sb[r]);
    /* combines of random replies, both modes */
    for (int r = 0; r < R; r++)
        for (int mode = 0; mode < 2; mode++) {
            size_t bytes[8], displs[8], tot = 0;
            mx_coord_combine_sizes(&s->plan[r], (mx_combine_mode_t)mode, s->H, bytes);
            for (int d = 0; d < R; d++) {
                displs[d] = tot;
                tot += bytes[d];
            }
            uint8_t *rep = malloc(tot ? tot : 4);
            if (mode == MX_COMBINE_EXACT)
                for (size_t i = 0; i < tot / 2; i++) {
                    uint16_t v = sim_bf16(spread(-30, 20));
                    memcpy(rep + 2 * i, &v, 2);
                }
            else
                for (size_t i = 0; i < tot / 4; i++) {
                    float v = spread(-30, 20);
                    memcpy(rep + 4 * i, &v, 4);
                }
            size_t n = s->cuts[r + 1] - s->cuts[r];
            uint16_t *of = malloc((n ? n : 1) * s->H * 2), *os = malloc((n ? n : 1) * s->H * 2);
            memset(of, 0x11, (n ? n : 1) * s->H * 2);
            memset(os, 0x22, (n ? n : 1) * s->H * 2);
            mx_coord_fast_paths_set(0);
            assert_int_equal(mx_coord_combine(&s->plan[r], (mx_combine_mode_t)mode, rep, displs, s->H, os), MX_OK);
            mx_coord_fast_paths_set(1);
            assert_int_equal(mx_coord_combine(&s->plan[r], (mx_combine_mode_t)mode, rep, displs, s->H, of), MX_OK);
            for (size_t i = 0; i < n * s->H; i++)
                if (of[i] != os[i])
                    fail_msg("%s combine of rank %d: element %zu: fast 0x%04x, scalar 0x%04x",
                             mx_combine_mode_name((mx_combine_mode_t)mode), r, i, of[i], os[i]);
            free(rep);
            free(of);
            free(os);
        }
}

static void test_fast_pack_unpack_combine_equal_scalar(void **state)
{
    (void)state;
    sim_seed(613);
    static const struct {
        int R;
        size_t T, H;
        int E, K;
    } cases[] = {{1, 9, 256, 4, 2}, {3, 40, 300, 9, 3}, {4, 33, 7168, 16, 8}, {5, 17, 129, 20, 4}, {2, 0, 64, 4, 1}};
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++)
        for (int dt = 0; dt < 2; dt++)
            for (int corrupt = 0; corrupt < 2; corrupt++) {
                scene_t s;
                scene_make(&s, cases[c].R, cases[c].T, cases[c].H, cases[c].E, cases[c].K);
                check_scene(&s, (mx_dispatch_dtype_t)dt, corrupt);
                scene_free(&s);
            }
    mx_recv_batch_fini(&kept);
    /* grown more than once over the scenes, each old buffer announced gone, the last one at fini */
    assert_true(g_x_allocs >= 2);
    assert_int_equal(g_x_frees, g_x_allocs);
    assert_null(g_x_live);
    assert_int_equal(g_x_errors, 0);
}

static void test_fast_layer_equals_scalar_layer_over_1_to_5_ranks(void **state)
{
    (void)state;
    sim_seed(614);
    enum { T = 37, H = 384, E = 10 };
    uint16_t *x = malloc(T * H * sizeof(uint16_t)), *a = malloc(T * H * 2), *b = malloc(T * H * 2);
    float lg[T * E];
    for (size_t i = 0; i < T * H; i++)
        x[i] = sim_bf16(spread(-10, 4));
    for (int i = 0; i < T * E; i++)
        lg[i] = (float)sim_unit();
    mx_router_desc_t d = {MX_ROUTER_TOPK_SOFTMAX, 3, 0, 0, 0, 1.0f, 1.0f};
    for (int R = 1; R <= 5; R++)
        for (int dt = 0; dt < 2; dt++)
            for (int mode = 0; mode < 2; mode++) {
                size_t cuts[6];
                mx_routing_t rt[5];
                mx_placement_t pl;
                sim_cuts(R, T, cuts);
                assert_int_equal(sim_route(R, cuts, &d, lg, E, rt), 0);
                assert_int_equal(mx_coord_placement_contiguous(E, R, &pl), MX_OK);
                mx_coord_fast_paths_set(0);
                assert_int_equal(
                    sim_layer(R, cuts, rt, &pl, x, H, (mx_dispatch_dtype_t)dt, (mx_combine_mode_t)mode, NULL, a), 0);
                mx_coord_fast_paths_set(1);
                assert_int_equal(
                    sim_layer(R, cuts, rt, &pl, x, H, (mx_dispatch_dtype_t)dt, (mx_combine_mode_t)mode, NULL, b), 0);
                assert_memory_equal(a, b, T * H * 2);
                for (int r = 0; r < R; r++)
                    mx_routing_fini(&rt[r]);
                mx_placement_fini(&pl);
            }
    free(x);
    free(a);
    free(b);
}

static void test_fast_paths_switch_returns_previous_setting(void **state)
{
    (void)state;
    assert_int_equal(mx_coord_fast_paths_set(0), 1);
    assert_int_equal(mx_coord_fast_paths_set(5), 0);
    assert_int_equal(mx_coord_fast_paths_set(1), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fast_paths_switch_returns_previous_setting),
        cmocka_unit_test(test_fast_router_logits_equal_scalar_for_every_tiling),
        cmocka_unit_test(test_fast_combine_rows_equal_scalar_with_specials),
        cmocka_unit_test(test_fast_pack_unpack_combine_equal_scalar),
        cmocka_unit_test(test_fast_layer_equals_scalar_layer_over_1_to_5_ranks),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    return failed == 0 && !mx_quant_have_avx2() ? 77 : failed;
}
