/* tests/gpu: the GPU backends' host-side batch plan (kernels/gpu/gpu_plan.c),
 * without a GPU: grouping by expert, offsets, m tiles for every tile
 * configuration, the per-token combine lists, the static scales, and that every
 * word of the block the device reads is written (the block is poisoned first).
 * Layouts: random sizes, skewed routings, experts without tokens, tokens
 * without assignments, empty batches. Seeds are fixed and printed. Also the
 * packed weight layout of gpu_layout.h. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "gpu_layout.h"
#include "gpu_plan.h"
#include "mxep/kernels.h"

#define POISON 0xA5u
#define POISON_WORD 0xA5A5A5A5u

static uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

typedef struct {
    size_t T, NA;
    int E;
    int32_t *tok, *expert;
    float *w;
    uint16_t x[1]; /* never read by the plan; must be non-NULL */
} layout_t;

/* kinds: 0 uniform, 1 all on one expert, 2 half the experts idle, 3 one token per expert, 4 many tokens unused */
static void layout_make(layout_t *l, size_t T, int E, int top_k, int kind, uint64_t seed)
{
    memset(l, 0, sizeof *l);
    uint64_t s = seed;
    l->T = T;
    l->E = E;
    size_t cap = T * (size_t)top_k + 1;
    l->tok = malloc(cap * sizeof(int32_t));
    l->expert = malloc(cap * sizeof(int32_t));
    l->w = malloc(cap * sizeof(float));
    assert_non_null(l->tok);
    assert_non_null(l->expert);
    assert_non_null(l->w);
    size_t a = 0;
    for (size_t t = 0; t < T; t++) {
        if (kind == 4 && rng_next(&s) % 3 != 0)
            continue; /* a token row no assignment uses */
        int k = kind == 3 ? 1 : top_k;
        for (int j = 0; j < k; j++) {
            int e;
            switch (kind) {
            case 1:
                e = E - 1;
                break;
            case 2:
                e = (int)(rng_next(&s) % (uint64_t)((E + 1) / 2)) * 2 % E;
                break;
            case 3:
                e = (int)(t % (size_t)E);
                break;
            default:
                e = (int)(rng_next(&s) % (uint64_t)E);
            }
            l->tok[a] = (int32_t)t;
            l->expert[a] = e;
            l->w[a] = (float)(rng_next(&s) % 1000) / 1000.0f + 0.001f;
            a++;
        }
    }
    l->NA = a;
    /* shuffle: the plan must not rely on any order */
    for (size_t i = a; i > 1; i--) {
        size_t j = rng_next(&s) % i;
        int32_t t0 = l->tok[i - 1], e0 = l->expert[i - 1];
        float w0 = l->w[i - 1];
        l->tok[i - 1] = l->tok[j];
        l->expert[i - 1] = l->expert[j];
        l->w[i - 1] = l->w[j];
        l->tok[j] = t0;
        l->expert[j] = e0;
        l->w[j] = w0;
    }
}

static void layout_free(layout_t *l)
{
    free(l->tok);
    free(l->expert);
    free(l->w);
}

static mx_run_args_t args_of(layout_t *l, uint16_t *out)
{
    mx_run_args_t a;
    memset(&a, 0, sizeof a);
    a.n_tokens = l->T;
    a.x = l->x;
    a.n_assign = l->NA;
    a.tok = l->tok;
    a.expert = l->expert;
    a.weight = l->w;
    a.mode = MX_OUT_PER_ASSIGNMENT;
    a.out_bf16 = out;
    return a;
}

/* Builds the plan of l for force_cfg and checks every array against a direct computation. */
static void check_plan(layout_t *l, int force_cfg, uint64_t seed)
{
    uint16_t out[1];
    mx_run_args_t a = args_of(l, out);
    assert_int_equal(mxi_gpu_plan_check(&a, l->E, "plan test"), MX_OK);
    mxg_plan_dims_t d;
    assert_int_equal(mxi_gpu_plan_dims(l->T, l->NA, l->E, &d), MX_OK);
    assert_true(d.dev_bytes % 4 == 0);
    assert_true(d.host_bytes >= d.dev_bytes + (size_t)l->E * 4);
    uint8_t *blk = malloc(d.host_bytes);
    assert_non_null(blk);
    memset(blk, (int)POISON, d.host_bytes);
    float in_scale[64], down_scale[64];
    for (int e = 0; e < l->E; e++) {
        in_scale[e] = 0.5f + (float)e;
        down_scale[e] = 0.25f + (float)e;
    }
    mxg_plan_info_t info;
    mxi_gpu_plan_build(&a, &d, in_scale, down_scale, force_cfg, blk, &info);
    mxg_plan_views_t v;
    mxi_gpu_plan_views(blk, &d, &v);
    const size_t NA = l->NA, T = l->T;
    const int E = l->E;

    /* every word the device reads was written */
    for (size_t i = 0; i < d.dev_bytes / 4; i++) {
        uint32_t wd;
        memcpy(&wd, blk + 4 * i, 4);
        if (wd == POISON_WORD)
            fail_msg("seed %llu cfg %d: word %zu of %zu of the uploaded plan was never written",
                     (unsigned long long)seed, force_cfg, i, d.dev_bytes / 4);
    }
    /* the views tile the block without overlap, in the documented order */
    assert_ptr_equal((uint8_t *)v.rs2 + 4 * NA, blk + d.dev_bytes);

    /* counts and offsets */
    int max_cnt = 0;
    for (int e = 0, o = 0; e < E; e++) {
        int c = 0;
        for (size_t i = 0; i < NA; i++)
            c += l->expert[i] == e;
        assert_int_equal(v.cnt[e], c);
        assert_int_equal(v.off[e], o);
        o += c;
        if (c > max_cnt)
            max_cnt = c;
    }
    assert_int_equal(info.max_cnt, max_cnt);
    assert_int_equal(info.cfg, mxi_gpu_plan_pick_cfg(max_cnt, force_cfg));
    if (force_cfg >= 0)
        assert_int_equal(info.cfg, force_cfg);

    /* sorted rows: a stable permutation grouped by expert */
    char *seen = calloc(NA + 1, 1);
    assert_non_null(seen);
    for (size_t s = 0; s < NA; s++) {
        int32_t i = v.out_rows[s];
        assert_true(i >= 0 && (size_t)i < NA);
        assert_false(seen[i]);
        seen[i] = 1;
        assert_int_equal(v.a_tok[s], l->tok[i]);
        int e = l->expert[i];
        assert_true((int)s >= v.off[e] && (int)s < v.off[e] + v.cnt[e]);
        if (s > 0 && l->expert[v.out_rows[s - 1]] == e)
            assert_true(v.out_rows[s - 1] < i); /* stable */
        assert_true(v.rs1[s] == in_scale[e]);
        assert_true(v.rs2[s] == down_scale[e]);
    }

    /* m tiles: in expert order, BM apart, covering each sorted row once */
    const int bm = mxg_cfg_bm(info.cfg);
    assert_true(info.n_mtiles >= 0 && (size_t)info.n_mtiles <= d.max_tiles);
    memset(seen, 0, NA + 1);
    for (int t = 0; t < info.n_mtiles; t++) {
        int e = v.tile_e[t], m0 = v.tile_m0[t];
        assert_true(e >= 0 && e < E);
        assert_true(m0 >= 0 && m0 < v.cnt[e] && m0 % bm == 0);
        if (t > 0)
            assert_true(v.tile_e[t - 1] < e || (v.tile_e[t - 1] == e && v.tile_m0[t - 1] + bm == m0));
        for (int m = m0; m < m0 + bm && m < v.cnt[e]; m++) {
            assert_false(seen[v.off[e] + m]);
            seen[v.off[e] + m] = 1;
        }
    }
    for (size_t s = 0; s < NA; s++)
        assert_true(seen[s]);
    for (size_t t = (size_t)info.n_mtiles; t < d.max_tiles; t++) {
        assert_int_equal(v.tile_e[t], 0);
        assert_int_equal(v.tile_m0[t], 0);
    }

    /* per token: its assignments in ascending (expert, assignment) order */
    assert_int_equal(v.tok_off[0], 0);
    assert_int_equal(v.tok_off[T], (int)NA);
    for (size_t t = 0; t < T; t++) {
        int n = 0;
        for (size_t i = 0; i < NA; i++)
            n += (size_t)l->tok[i] == t;
        assert_int_equal(v.tok_off[t + 1] - v.tok_off[t], n);
        for (int j = v.tok_off[t]; j < v.tok_off[t + 1]; j++) {
            int32_t i = v.tok_list[j];
            assert_true(i >= 0 && (size_t)i < NA);
            assert_int_equal(l->tok[i], (int32_t)t);
            if (j > v.tok_off[t]) {
                int32_t p = v.tok_list[j - 1];
                assert_true(l->expert[p] < l->expert[i] || (l->expert[p] == l->expert[i] && p < i));
            }
        }
    }
    for (size_t i = 0; i < NA; i++)
        assert_true(v.w[i] == l->w[i]);
    free(seen);
    free(blk);
}

/* The packed weight layout (gpu_layout.h): every element (n, k) of an
 * N_pad x K_pad matrix has its own place (byte and nibble) inside the
 * expert's buffer, the places fill it exactly, a lane's piece of one k16 step
 * is the fragment the MMA expects (rows g, g+8, g, g+8; columns 2t, 2t, 2t+8,
 * 2t+8 and +1), and every scale byte has exactly one (row, 32-block). */
static void test_gpu_layout_places_every_element_once_as_mma_fragments(void **state)
{
    (void)state;
    const int N_pad = 512, K_pad = 192;
    for (int wf = 0; wf < 3; wf++) {
        const size_t tb = mxg_thread_bytes(wf);
        const size_t bytes = (size_t)K_pad / 64 * (size_t)(N_pad / 16) * 32 * tb;
        const int per_byte = wf == MXG_W_FP4 ? 2 : 1, elem = wf == MXG_W_BF16 ? 2 : 1;
        unsigned char *seen = calloc(bytes * 2, 1);
        assert_non_null(seen);
        for (int n = 0; n < N_pad; n++)
            for (int k = 0; k < K_pad; k++) {
                int sh = -1;
                size_t o = mxg_w_offset(wf, N_pad, n, k, &sh);
                assert_true(o + (size_t)elem <= bytes);
                if (wf == MXG_W_FP4) {
                    /* the element's step word and its index q = r + 4 el in it */
                    assert_int_equal(o % 4, 0);
                    assert_true(sh >= 0 && sh < 8);
                    assert_int_equal(sh >> 2, k & 1);
                    size_t slot = o * 2 + (size_t)sh;
                    assert_int_equal(seen[slot], 0);
                    seen[slot] = 1;
                } else {
                    assert_int_equal(sh, 0);
                    assert_int_equal(o % (size_t)elem, 0);
                    assert_int_equal(seen[o], 0);
                    seen[o] = 1;
                }
                /* fragment: lane 4g + t holds row g (+8) and columns 2t (+8) of k16 step s */
                const size_t piece = o / tb, within = o % tb;
                const int lane = (int)(piece % 32), rg = (int)((piece / 32) % (size_t)(N_pad / 16));
                const int kc = (int)(piece / 32 / (size_t)(N_pad / 16));
                assert_int_equal(rg, n / 16);
                assert_int_equal(kc, k / 64);
                assert_int_equal(lane / 4, n % 8);
                assert_int_equal(lane % 4, (k % 8) / 2);
                const size_t step_bytes = tb / 4;
                assert_int_equal((int)(within / step_bytes), (k % 64) / 16);
                int reg;
                if (wf == MXG_W_FP4)
                    reg = sh & 3;
                else
                    reg = (int)((within % step_bytes) / (size_t)(2 * elem));
                assert_int_equal(reg, ((n / 8) % 2) + 2 * ((k % 16) / 8));
            }
        size_t filled = 0;
        for (size_t i = 0; i < bytes * (size_t)per_byte; i++)
            filled += wf == MXG_W_FP4 ? seen[i] : 0;
        if (wf == MXG_W_FP4)
            assert_int_equal(filled, bytes * 2);
        free(seen);
    }
    /* MXFP4 bits: the 32 bits of a step word belong to exactly one (element, code bit) */
    unsigned owner[32];
    for (int b = 0; b < 32; b++)
        owner[b] = 99;
    for (int q = 0; q < 8; q++)
        for (int j = 0; j < 4; j++) {
            const int bit = mxg_fp4_bit(q, j);
            assert_true(bit >= 0 && bit < 32);
            assert_int_equal(owner[bit], 99);
            owner[bit] = (unsigned)(q * 4 + j);
        }
    /* mxg_fp4_pair (the kernels' decode) turns register r's two elements into the
     * BF16 of code * 2^-126: magnitude bits at 6..8, sign at 15, upper half + 16;
     * every code of both elements, on random words for the other bits */
    uint32_t rng = 12345u;
    for (int r = 0; r < 4; r++)
        for (int c0 = 0; c0 < 16; c0++)
            for (int c1 = 0; c1 < 16; c1++) {
                rng = rng * 1664525u + 1013904223u;
                uint32_t w = rng;
                const int codes[2] = {c0, c1};
                for (int el = 0; el < 2; el++)
                    for (int j = 0; j < 4; j++) {
                        const int bit = mxg_fp4_bit(r + 4 * el, j);
                        w = (w & ~(1u << bit)) | ((uint32_t)((codes[el] >> j) & 1) << bit);
                    }
                const uint32_t got = mxg_fp4_pair(w, r);
                for (int el = 0; el < 2; el++) {
                    const uint32_t h = (got >> (16 * el)) & 0xffffu;
                    const uint32_t want = (uint32_t)((codes[el] & 7) << 6) | (uint32_t)((codes[el] & 8) << 12);
                    assert_int_equal(h, want);
                    /* and that BF16 is the E2M1 value times 2^-126 */
                    union {
                        uint32_t u;
                        float f;
                    } cv = {h << 16};
                    static const float e2m1[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
                    float v = e2m1[codes[el] & 7] * ldexpf(1.0f, -126);
                    if (codes[el] & 8)
                        v = -v;
                    assert_true(cv.f == v);
                }
            }
    /* scales: one byte per (row, block), 32 per (chunk, group) */
    const size_t sbytes = (size_t)K_pad / 64 * (size_t)(N_pad / 16) * 32;
    unsigned char *seen = calloc(sbytes, 1);
    assert_non_null(seen);
    for (int n = 0; n < N_pad; n++)
        for (int b = 0; b < K_pad / 32; b++) {
            size_t o = mxg_sc_offset(N_pad, n, b);
            assert_true(o < sbytes);
            assert_int_equal(seen[o], 0);
            seen[o] = 1;
            assert_int_equal(o % 32, (size_t)(4 * (n % 8) + (n / 8) % 2 + 2 * (b % 2)));
        }
    free(seen);
    /* gate/up groups: 8 gate rows then their 8 up rows */
    for (int n = 0; n < 64; n++) {
        int up = -1;
        int i = mxg_gateup_index(n, &up);
        assert_int_equal(up, (n / 8) % 2);
        assert_int_equal(i, (n / 16) * 8 + n % 8);
    }
}

/* FP8 weights for the FP8 tensor cores (MXG_W_FP8X) and the E4M3 token order of
 * the decode kernel (mxg_tok_pos8): every element has its own byte, a lane's 16
 * bytes of a k32 step are the m16n8k32 A fragment (register r = rows g, g+8, g, g+8
 * and columns 4t..4t+3, +16 for r = 2, 3; lower column in the lower byte), the
 * token order is a permutation of each 64-column chunk, and the 16 bytes lane
 * quad t loads per chunk hold, as word 2s + kh, exactly the columns its A
 * registers kh of step s hold (the B fragment b0 / b1 the MMA pairs them with). */
static void test_gpu_layout_fp8x_and_the_e4m3_token_order_are_k32_fragments(void **state)
{
    (void)state;
    const int N_pad = 256, K_pad = 192;
    const size_t tb = mxg_thread_bytes(MXG_W_FP8X);
    assert_int_equal(tb, mxg_thread_bytes(MXG_W_FP8));
    assert_true(mxg_wfmt_fp8(MXG_W_FP8X) && mxg_wfmt_fp8(MXG_W_FP8) && !mxg_wfmt_fp8(MXG_W_FP4));
    const size_t bytes = (size_t)K_pad / 64 * (size_t)(N_pad / 16) * 32 * tb;
    unsigned char *seen = calloc(bytes, 1);
    int *col_at = malloc(bytes * sizeof(int)); /* the column stored at each byte */
    assert_non_null(seen);
    assert_non_null(col_at);
    for (int n = 0; n < N_pad; n++)
        for (int k = 0; k < K_pad; k++) {
            int sh = -1;
            const size_t o = mxg_w_offset(MXG_W_FP8X, N_pad, n, k, &sh);
            assert_int_equal(sh, 0);
            assert_true(o < bytes);
            assert_int_equal(seen[o], 0);
            seen[o] = 1;
            col_at[o] = k;
            const size_t piece = o / tb, within = o % tb;
            const int lane = (int)(piece % 32), rg = (int)((piece / 32) % (size_t)(N_pad / 16));
            assert_int_equal(rg, n / 16);
            assert_int_equal((int)(piece / 32 / (size_t)(N_pad / 16)), k / 64);
            assert_int_equal(lane / 4, n % 8);
            assert_int_equal(lane % 4, (k % 16) / 4);
            assert_int_equal((int)(within / 16), (k % 64) / 32);                         /* k32 step */
            assert_int_equal((int)(within % 16 / 4), (n / 8) % 2 + 2 * ((k % 32) / 16)); /* register */
            assert_int_equal((int)(within % 4), k % 4);                                  /* byte */
        }
    for (size_t i = 0; i < bytes; i++)
        assert_int_equal(seen[i], 1);
    /* the token order: a permutation of every chunk */
    int inv[192];
    for (int c = 0; c < K_pad; c++)
        inv[c] = -1;
    for (int c = 0; c < K_pad; c++) {
        const int q = mxg_tok_pos8(c);
        assert_int_equal(q / 64, c / 64);
        assert_int_equal(inv[q], -1);
        inv[q] = c;
    }
    /* lane (g, t)'s A register r = hh + 2 kh of step s, byte b, and the token byte
     * 16 t + 8 s + 4 kh + b it loads in that order, hold the same column */
    for (int kc = 0; kc < K_pad / 64; kc++)
        for (int lane = 0; lane < 32; lane++)
            for (int s2 = 0; s2 < 2; s2++)
                for (int r = 0; r < 4; r++)
                    for (int b = 0; b < 4; b++) {
                        const int t = lane % 4, kh = r / 2;
                        const size_t o = ((size_t)kc * (size_t)(N_pad / 16) * 32 + (size_t)lane) * tb +
                                         (size_t)(16 * s2 + 4 * r + b);
                        assert_int_equal(col_at[o], inv[64 * kc + 16 * t + 8 * s2 + 4 * kh + b]);
                    }
    free(seen);
    free(col_at);
}

static void test_gpu_plan_groups_offsets_tiles_and_combine_lists_for_many_layouts(void **state)
{
    (void)state;
    const size_t Ts[] = {1, 2, 7, 16, 17, 63, 64, 65, 129, 300, 1000};
    const int Es[] = {1, 2, 3, 5, 8, 32, 64};
    uint64_t seed = 11000;
    int cases = 0;
    for (size_t ti = 0; ti < sizeof Ts / sizeof Ts[0]; ti++)
        for (size_t ei = 0; ei < sizeof Es / sizeof Es[0]; ei++)
            for (int kind = 0; kind < 5; kind++) {
                int top_k = Es[ei] < 4 ? Es[ei] : 4;
                layout_t l;
                layout_make(&l, Ts[ti], Es[ei], top_k, kind, seed);
                for (int cfg = -1; cfg <= MXG_CFG_L; cfg++) {
                    check_plan(&l, cfg, seed);
                    cases++;
                }
                layout_free(&l);
                seed++;
            }
    printf("  %d plans checked (seeds 11000..%llu)\n", cases, (unsigned long long)seed - 1);
}

static void test_gpu_plan_empty_batch_and_experts_without_tokens(void **state)
{
    (void)state;
    layout_t l;
    layout_make(&l, 5, 8, 1, 1, 12000); /* everything on expert 7 */
    check_plan(&l, -1, 12000);
    l.NA = 0; /* tokens, no assignments */
    check_plan(&l, -1, 12000);
    l.T = 0;
    check_plan(&l, MXG_CFG_L, 12000);
    layout_free(&l);
}

static void test_gpu_plan_picks_tiles_by_the_busiest_expert(void **state)
{
    (void)state;
    assert_int_equal(mxi_gpu_plan_pick_cfg(0, -1), MXG_CFG_S);
    assert_int_equal(mxi_gpu_plan_pick_cfg(16, -1), MXG_CFG_S);
    assert_int_equal(mxi_gpu_plan_pick_cfg(17, -1), MXG_CFG_M);
    assert_int_equal(mxi_gpu_plan_pick_cfg(128, -1), MXG_CFG_M);
    assert_int_equal(mxi_gpu_plan_pick_cfg(129, -1), MXG_CFG_L);
    assert_int_equal(mxi_gpu_plan_pick_cfg(100000, MXG_CFG_S), MXG_CFG_S);
    assert_int_equal(mxi_gpu_plan_pick_cfg(1, MXG_CFG_L), MXG_CFG_L);
    assert_int_equal(mxi_gpu_plan_pick_cfg(1, 7), MXG_CFG_S); /* out of range: by batch */
    assert_int_equal(mxg_cfg_bm(MXG_CFG_S), 16);
    assert_int_equal(mxg_cfg_bm(MXG_CFG_M), 64);
    assert_int_equal(mxg_cfg_bm(MXG_CFG_L), 256);
}

static void test_gpu_plan_check_rejects_bad_arguments_naming_them(void **state)
{
    (void)state;
    layout_t l;
    layout_make(&l, 4, 3, 2, 0, 13000);
    uint16_t out[1];
    mx_run_args_t a = args_of(&l, out);
    assert_int_equal(mxi_gpu_plan_check(&a, 3, "cuda run"), MX_OK);
    l.expert[3] = 3;
    assert_int_equal(mxi_gpu_plan_check(&a, 3, "cuda run"), MX_ERR_INVALID);
    assert_non_null(strstr(mx_error_detail(), "cuda run: assignment 3: expert 3 outside [0, 3)"));
    l.expert[3] = -1;
    assert_int_equal(mxi_gpu_plan_check(&a, 3, "cuda run"), MX_ERR_INVALID);
    l.expert[3] = 0;
    l.tok[1] = 4;
    assert_int_equal(mxi_gpu_plan_check(&a, 3, "cuda run"), MX_ERR_INVALID);
    assert_non_null(strstr(mx_error_detail(), "assignment 1: token 4 outside [0, 4)"));
    l.tok[1] = 0;
    a.mode = (mx_out_mode_t)5;
    assert_int_equal(mxi_gpu_plan_check(&a, 3, "cuda run"), MX_ERR_INVALID);
    assert_non_null(strstr(mx_error_detail(), "output mode 5"));
    a.mode = MX_OUT_PER_ASSIGNMENT;
    a.out_bf16 = NULL;
    assert_int_equal(mxi_gpu_plan_check(&a, 3, "cuda run"), MX_ERR_INVALID);
    assert_non_null(strstr(mx_error_detail(), "out_bf16"));
    a.mode = MX_OUT_WEIGHTED_SUM;
    assert_int_equal(mxi_gpu_plan_check(&a, 3, "cuda run"), MX_ERR_INVALID);
    assert_non_null(strstr(mx_error_detail(), "out_f32"));
    a = args_of(&l, out);
    a.x = NULL;
    assert_int_equal(mxi_gpu_plan_check(&a, 3, "cuda run"), MX_ERR_INVALID);
    a = args_of(&l, out);
    a.n_assign = (size_t)INT32_MAX;
    assert_int_equal(mxi_gpu_plan_check(&a, 3, "cuda run"), MX_ERR_INVALID);
    assert_non_null(strstr(mx_error_detail(), "assignments"));
    assert_int_equal(mxi_gpu_plan_check(NULL, 3, "cuda run"), MX_ERR_INVALID);
    /* nothing to check without assignments: NULL pointers are fine */
    memset(&a, 0, sizeof a);
    a.n_tokens = 3;
    assert_int_equal(mxi_gpu_plan_check(&a, 0, "cuda run"), MX_OK);
    mxg_plan_dims_t d;
    memset(&d, 0x5a, sizeof d);
    assert_int_equal(mxi_gpu_plan_dims((size_t)INT32_MAX, 1, 1, &d), MX_ERR_INVALID);
    assert_int_equal(mxi_gpu_plan_dims(1, 1, -1, &d), MX_ERR_INVALID);
    assert_int_equal(d.n_experts, 0x5a5a5a5a); /* untouched on failure */
    layout_free(&l);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gpu_layout_places_every_element_once_as_mma_fragments),
        cmocka_unit_test(test_gpu_layout_fp8x_and_the_e4m3_token_order_are_k32_fragments),
        cmocka_unit_test(test_gpu_plan_picks_tiles_by_the_busiest_expert),
        cmocka_unit_test(test_gpu_plan_check_rejects_bad_arguments_naming_them),
        cmocka_unit_test(test_gpu_plan_empty_batch_and_experts_without_tokens),
        cmocka_unit_test(test_gpu_plan_groups_offsets_tiles_and_combine_lists_for_many_layouts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
