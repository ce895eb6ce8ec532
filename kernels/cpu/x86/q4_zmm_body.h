/* mxep cpu backend: the MXFP4 integer kernels at 16 lanes (512-bit vectors),
 * included by avx512.c (MXI_Q4Z_VNNI 0), avx512vnni.c (MXI_Q4Z_VNNI 1) and
 * avx512vbmi.c (MXI_Q4Z_VNNI 1, MXI_Q4Z_VBMI 1). Include after defining
 * MXI_Q4Z_NAME and MXI_Q4Z_VNNI (MXI_Q4Z_VBMI: 0 if not defined).
 *
 * A zmm register holds two rows: lanes 0..7 are row r's 8-lane accumulator of
 * cpu_internal.h's contract, lanes 8..15 row r+1's; every lane does exactly
 * what the 8-lane kernels do (the same exact block sums S_b, the same FMA per
 * block), so the results are bitwise those of the scalar and AVX2 levels.
 *
 * Streaming (few tokens): the q-loads of two rows fill one register; the
 * activation planes are broadcast to both halves. With AVX512-VNNI, vpdpbusd
 * sums offset weights x high bytes and low bytes x offset weights straight
 * into 32 bits; without, vpmaddubsw + 16-bit sums as in q4_body.h.
 * Tiled (many tokens): rows decoded once into signed int16, row pairs
 * interleaved (64 bytes per step), times the token's int16 step broadcast to
 * both halves: vpdpwssd (VNNI) or vpmaddwd + vpaddd. */
#include <immintrin.h>

#include "../cpu_internal.h"

#ifndef MXI_Q4Z_VBMI
#define MXI_Q4Z_VBMI 0
#endif

#ifndef MXI_Q4_PF_ROWS /* see q4_body.h */
#define MXI_Q4_PF_ROWS 16
#endif
#ifndef MXI_Q4_PF2_ROWS
#define MXI_Q4_PF2_ROWS 4
#endif

/* Keeps GCC from reassociating chains of integer adds (see q4_body.h). */
#define Q4Z_PIN(v) __asm__("" : "+v"(v))

static inline float q4z_hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1)); /* l + l+4 */
    __m128 h = _mm_movehl_ps(s, s);                                                /* s2, s3 */
    s = _mm_add_ps(s, h);                                                          /* s0+s2, s1+s3 */
    h = _mm_shuffle_ps(s, s, 1);
    return _mm_cvtss_f32(_mm_add_ss(s, h));
}

static inline __m512i q4z_table(void) /* 2 * E2M1 + 12 */
{
    return _mm512_broadcast_i32x4(_mm_setr_epi8(12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0));
}

static inline __m512i q4z_table_signed(void) /* 2 * E2M1 */
{
    return _mm512_broadcast_i32x4(_mm_setr_epi8(0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12));
}

/* 32 bytes at a in the low half, 32 bytes at b in the high half. */
static inline __m512i q4z_load2(const uint8_t *a, const uint8_t *b)
{
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)a)),
                              _mm256_loadu_si256((const __m256i *)b), 1);
}

static inline __m512i q4z_bcast(const void *p)
{
    return _mm512_broadcast_i64x4(_mm256_load_si256((const __m256i *)p));
}

/* The offset weights of both nibbles of 64 code bytes. VBMI: vpermb reads 6
 * index bits and the table repeats every 16 bytes, so neither nibble needs
 * masking (the high one after a 16-bit shift: bits 4-5 come from the next
 * byte, bits 6-7 are ignored); 3 port-0/5 operations instead of 5. */
static inline void q4z_dec(__m512i x, __m512i tab, __m512i *wl, __m512i *wh)
{
#if MXI_Q4Z_VBMI
    *wl = _mm512_permutexvar_epi8(x, tab);
    *wh = _mm512_permutexvar_epi8(_mm512_srli_epi16(x, 4), tab);
#else
    const __m512i m = _mm512_set1_epi8(0x0F);
    *wl = _mm512_shuffle_epi8(tab, _mm512_and_si512(x, m));
    *wh = _mm512_shuffle_epi8(tab, _mm512_and_si512(_mm512_srli_epi16(x, 4), m));
#endif
}

/* ws of a group's 8 blocks of two rows (E8M0 bytes at s0 and s1), as q4_ws8. */
static inline __m512 q4z_ws16(const uint8_t *s0, const uint8_t *s1, int plain)
{
    __m128i b = _mm_unpacklo_epi64(_mm_loadl_epi64((const __m128i *)s0), _mm_loadl_epi64((const __m128i *)s1));
    __m512i v = _mm512_cvtepu8_epi32(b);
    __m512i w = _mm512_slli_epi32(_mm512_sub_epi32(v, _mm512_set1_epi32(14)), 23);
    if (!plain) {
        __m512i sub = _mm512_sllv_epi32(_mm512_set1_epi32(1), _mm512_add_epi32(v, _mm512_set1_epi32(8)));
        w = _mm512_mask_blend_epi32(_mm512_cmpgt_epi32_mask(v, _mm512_set1_epi32(14)), sub, w);
        w = _mm512_mask_mov_epi32(w, _mm512_cmpeq_epi32_mask(v, _mm512_set1_epi32(255)), _mm512_set1_epi32(0x7FC00000));
    }
    return _mm512_castsi512_ps(w);
}

/* One q-load of a token (planes p: hl, hh, ll, lh) into the group's sums.
 * VNNI: h and l are 32-bit sums (S = 256 h + l - corr). Otherwise h holds the
 * 16-bit high sums of two q-loads and l the 32-bit sum of everything else,
 * high parts included (S = l - corr), as in q4_body.h. */
static inline void q4z_qdot(unsigned q, __m512i wl, __m512i wh, const int8_t *p, __m512i *h, __m512i *l)
{
#if MXI_Q4Z_VNNI
    if (q == 0) {
        *h = _mm512_setzero_si512();
        *l = _mm512_setzero_si512();
    }
    *h = _mm512_dpbusd_epi32(*h, wl, q4z_bcast(p));
    *h = _mm512_dpbusd_epi32(*h, wh, q4z_bcast(p + 32));
    *l = _mm512_dpbusd_epi32(*l, q4z_bcast(p + 64), wl);
    *l = _mm512_dpbusd_epi32(*l, q4z_bcast(p + 96), wh);
    Q4Z_PIN(*h);
    Q4Z_PIN(*l);
#else
    __m512i hq = _mm512_add_epi16(_mm512_maddubs_epi16(wl, q4z_bcast(p)), _mm512_maddubs_epi16(wh, q4z_bcast(p + 32)));
    __m512i lq =
        _mm512_add_epi16(_mm512_maddubs_epi16(q4z_bcast(p + 64), wl), _mm512_maddubs_epi16(q4z_bcast(p + 96), wh));
    __m512i l32 = _mm512_madd_epi16(lq, _mm512_set1_epi16(1));
    *l = q ? _mm512_add_epi32(*l, l32) : l32;
    Q4Z_PIN(*l);
    if (!(q & 1)) {
        *h = hq;
    } else {
        *l = _mm512_add_epi32(*l, _mm512_madd_epi16(_mm512_add_epi16(*h, hq), _mm512_set1_epi16(256)));
        Q4Z_PIN(*l);
    }
#endif
}

static inline __m512i q4z_sum(__m512i h, __m512i l, const int32_t *corr)
{
#if MXI_Q4Z_VNNI
    l = _mm512_add_epi32(l, _mm512_slli_epi32(h, 8));
#else
    (void)h;
#endif
    return _mm512_sub_epi32(l, q4z_bcast(corr));
}

/* Streaming: P row pairs x NT tokens. PLAIN: the matrix's ws_plain. */
#define MXI_Q4Z_STREAM(P, NT, PLAIN) MXI_Q4Z_STREAM_(P, NT, PLAIN)
#define MXI_Q4Z_STREAM_(P, NT, PLAIN)                                                                                  \
    static void q4zs_##P##_##NT##_##PLAIN(const mxi_cpu_mat_t *m, size_t r, const uint8_t *const *qa, float *c,        \
                                          size_t ldc)                                                                  \
    {                                                                                                                  \
        const size_t ng = m->ng, nbp = 8 * ng, stride = m->row_stride, sst = m->scale_stride;                          \
        const size_t pf = MXI_Q4_PF_ROWS * stride, pf2 = MXI_Q4_PF2_ROWS * stride;                                     \
        const size_t qs_last = m->tail == 8 ? 32 : 4 * (size_t)m->tail;                                                \
        const __m512i tab = q4z_table();                                                                               \
        __m512 acc[P][NT];                                                                                             \
        const uint8_t *rows[2 * P];                                                                                    \
        const int8_t *pl[NT];                                                                                          \
        const float *as[NT];                                                                                           \
        const int32_t *cr[NT];                                                                                         \
        for (int i = 0; i < 2 * P; i++)                                                                                \
            rows[i] = m->data + (r + (size_t)i) * stride;                                                              \
        for (int i = 0; i < P; i++)                                                                                    \
            for (int t = 0; t < NT; t++)                                                                               \
                acc[i][t] = _mm512_setzero_ps();                                                                       \
        for (int t = 0; t < NT; t++) {                                                                                 \
            pl[t] = MXI_QACT_PLANES(qa[t], nbp);                                                                       \
            as[t] = MXI_QACT_AS(qa[t]);                                                                                \
            cr[t] = MXI_QACT_CORR(qa[t], nbp);                                                                         \
        }                                                                                                              \
        for (size_t g = 0; g < ng; g++) {                                                                              \
            const size_t qs = g + 1 < ng ? 32 : qs_last;                                                               \
            _Pragma("GCC unroll 4") for (int i = 0; i < P; i++)                                                        \
            {                                                                                                          \
                const uint8_t *n0 = rows[2 * i] + 128 * g, *n1 = rows[2 * i + 1] + 128 * g;                            \
                _mm_prefetch((const char *)n0 + pf, _MM_HINT_T1);                                                      \
                _mm_prefetch((const char *)n0 + pf + 64, _MM_HINT_T1);                                                 \
                _mm_prefetch((const char *)n1 + pf, _MM_HINT_T1);                                                      \
                _mm_prefetch((const char *)n1 + pf + 64, _MM_HINT_T1);                                                 \
                if (MXI_Q4_PF2_ROWS) {                                                                                 \
                    _mm_prefetch((const char *)n0 + pf2, _MM_HINT_T0);                                                 \
                    _mm_prefetch((const char *)n0 + pf2 + 64, _MM_HINT_T0);                                            \
                    _mm_prefetch((const char *)n1 + pf2, _MM_HINT_T0);                                                 \
                    _mm_prefetch((const char *)n1 + pf2 + 64, _MM_HINT_T0);                                            \
                }                                                                                                      \
                __m512i h[NT], l[NT];                                                                                  \
                _Pragma("GCC unroll 4") for (unsigned q = 0; q < 4; q++)                                               \
                {                                                                                                      \
                    __m512i wl, wh;                                                                                    \
                    q4z_dec(q4z_load2(n0 + q * qs, n1 + q * qs), tab, &wl, &wh);                                       \
                    _Pragma("GCC unroll 4") for (int t = 0; t < NT; t++)                                               \
                        q4z_qdot(q, wl, wh, pl[t] + 512 * g + 128 * q, &h[t], &l[t]);                                  \
                }                                                                                                      \
                __m512 ws = q4z_ws16(m->scales + (r + 2 * (size_t)i) * sst + 8 * g,                                    \
                                     m->scales + (r + 2 * (size_t)i + 1) * sst + 8 * g, PLAIN);                        \
                _Pragma("GCC unroll 4") for (int t = 0; t < NT; t++)                                                   \
                {                                                                                                      \
                    __m512i sb = q4z_sum(h[t], l[t], cr[t] + 8 * g);                                                   \
                    __m512 sc = _mm512_mul_ps(ws, _mm512_broadcast_f32x8(_mm256_loadu_ps(as[t] + 8 * g)));             \
                    acc[i][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sb), sc, acc[i][t]);                                \
                }                                                                                                      \
            }                                                                                                          \
        }                                                                                                              \
        for (int i = 0; i < P; i++)                                                                                    \
            for (int t = 0; t < NT; t++) {                                                                             \
                c[(size_t)t * ldc + 2 * (size_t)i] = q4z_hsum8(_mm512_castps512_ps256(acc[i][t]));                     \
                c[(size_t)t * ldc + 2 * (size_t)i + 1] = q4z_hsum8(_mm512_extractf32x8_ps(acc[i][t], 1));              \
            }                                                                                                          \
    }
#define MXI_Q4Z_STREAMS(PLAIN)                                                                                         \
    MXI_Q4Z_STREAM(1, 1, PLAIN)                                                                                        \
    MXI_Q4Z_STREAM(1, 2, PLAIN)                                                                                        \
    MXI_Q4Z_STREAM(1, 3, PLAIN)                                                                                        \
    MXI_Q4Z_STREAM(1, 4, PLAIN)                                                                                        \
    MXI_Q4Z_STREAM(1, 5, PLAIN)
MXI_Q4Z_STREAMS(0)
MXI_Q4Z_STREAMS(1)

typedef void (*q4z_stream_fn)(const mxi_cpu_mat_t *, size_t, const uint8_t *const *, float *, size_t);

/* Tiled: a q-load of two rows to its 4 int16 steps (as q4_tdec, per half). */
static inline void q4z_tdec(__m512i x, __m512i tabs, __m512i *o)
{
    const __m512i m = _mm512_set1_epi8(0x0F);
    const __mmask32 odd = 0xAAAAAAAAu;
    __m512i wl = _mm512_shuffle_epi8(tabs, _mm512_and_si512(x, m));
    __m512i wh = _mm512_shuffle_epi8(tabs, _mm512_and_si512(_mm512_srli_epi16(x, 4), m));
    o[0] = _mm512_mask_blend_epi16(odd, _mm512_srai_epi32(_mm512_slli_epi32(wl, 24), 24),
                                   _mm512_srai_epi32(_mm512_slli_epi32(wh, 24), 8));
    o[1] = _mm512_mask_blend_epi16(odd, _mm512_srai_epi32(_mm512_slli_epi32(wl, 16), 24),
                                   _mm512_srai_epi32(_mm512_slli_epi32(wh, 16), 8));
    o[2] = _mm512_mask_blend_epi16(odd, _mm512_srai_epi32(_mm512_slli_epi32(wl, 8), 24),
                                   _mm512_srai_epi32(_mm512_slli_epi32(wh, 8), 8));
    o[3] = _mm512_mask_blend_epi16(odd, _mm512_srai_epi32(wl, 24), _mm512_srai_epi32(wh, 8));
}

#define Q4Z_NR 4 /* tokens per micro-kernel call */

/* MP row pairs x Q4Z_NR tokens, one group; the FP32 accumulators of (token u,
 * rows 2i, 2i+1) are the 16 floats at part[u * pstride + 16 i] (adjacent rows). */
#define MXI_Q4Z_TMICRO(MP, NR) MXI_Q4Z_TMICRO_(MP, NR)
#define MXI_Q4Z_TMICRO_(MP, NR)                                                                                        \
    static void q4z_tmicro_##MP##_##NR(const uint8_t *tw, size_t pstride_t, size_t wsoff, size_t g,                    \
                                       const uint8_t *const *ap, size_t nbp, float *part, size_t pstride)              \
    {                                                                                                                  \
        const int16_t *a[NR];                                                                                          \
        for (int u = 0; u < NR; u++)                                                                                   \
            a[u] = MXI_QACT_TQ(ap[u], nbp) + 256 * g;                                                                  \
        __m512i s[MP][NR];                                                                                             \
        _Pragma("GCC unroll 8") for (int i = 0; i < MP; i++) _Pragma("GCC unroll 8") for (int u = 0; u < NR; u++)      \
            s[i][u] = _mm512_setzero_si512();                                                                          \
        _Pragma("GCC unroll 16") for (int st = 0; st < 16; st++)                                                       \
        {                                                                                                              \
            __m512i wv[MP];                                                                                            \
            _Pragma("GCC unroll 8") for (int i = 0; i < MP; i++) wv[i] =                                               \
                _mm512_load_si512((const void *)(tw + (size_t)i * pstride_t + 1024 * g + 64 * st));                    \
            _Pragma("GCC unroll 8") for (int u = 0; u < NR; u++)                                                       \
            {                                                                                                          \
                __m512i av = q4z_bcast(a[u] + 16 * st);                                                                \
                _Pragma("GCC unroll 8") for (int i = 0; i < MP; i++)                                                   \
                {                                                                                                      \
                    s[i][u] = Q4Z_DPWSSD(s[i][u], wv[i], av);                                                          \
                    Q4Z_PIN(s[i][u]);                                                                                  \
                }                                                                                                      \
            }                                                                                                          \
        }                                                                                                              \
        _Pragma("GCC unroll 8") for (int i = 0; i < MP; i++)                                                           \
        {                                                                                                              \
            __m512 ws = _mm512_load_ps((const float *)(tw + (size_t)i * pstride_t + wsoff) + 16 * g);                  \
            _Pragma("GCC unroll 8") for (int u = 0; u < NR; u++)                                                       \
            {                                                                                                          \
                __m512 sc = _mm512_mul_ps(ws, _mm512_broadcast_f32x8(_mm256_loadu_ps(MXI_QACT_AS(ap[u]) + 8 * g)));    \
                float *pp = part + (size_t)u * pstride + (size_t)i * 16;                                               \
                _mm512_store_ps(pp, _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[i][u]), sc, _mm512_load_ps(pp)));             \
            }                                                                                                          \
        }                                                                                                              \
    }
#if MXI_Q4Z_VNNI
#define Q4Z_DPWSSD(s, w, a) _mm512_dpwssd_epi32((s), (w), (a))
#else
#define Q4Z_DPWSSD(s, w, a) _mm512_add_epi32((s), _mm512_madd_epi16((w), (a)))
#endif
MXI_Q4Z_TMICRO(4, 4)
MXI_Q4Z_TMICRO(1, 4)
MXI_Q4Z_TMICRO(4, 2)
MXI_Q4Z_TMICRO(1, 2)
MXI_Q4Z_TMICRO(4, 1)
MXI_Q4Z_TMICRO(1, 1)

/* One token tile of one group over all np row pairs: f4 on 4 pairs at a time,
 * f1 on the rest (a micro-kernel pair of one width). Always inlined, so that
 * f4 and f1 are direct calls. */
typedef void (*q4z_tmicro_fn)(const uint8_t *, size_t, size_t, size_t, const uint8_t *const *, size_t, float *,
                              size_t);
static inline __attribute__((always_inline)) void q4z_trows(q4z_tmicro_fn f4, q4z_tmicro_fn f1, const uint8_t *tw,
                                                            size_t pstride_t, size_t wsoff, size_t g,
                                                            const uint8_t *const *ap, size_t nbp, float *part,
                                                            size_t np, size_t nr2)
{
    size_t i = 0;
    for (; i + 4 <= np; i += 4)
        f4(tw + i * pstride_t, pstride_t, wsoff, g, ap, nbp, part + 2 * i * 8, nr2 * 8);
    for (; i < np; i++)
        f1(tw + i * pstride_t, pstride_t, wsoff, g, ap, nbp, part + 2 * i * 8, nr2 * 8);
}

/* The last 1 or 2 tokens of a call, all row pairs, one group: they ran at full
 * width on a repeated token before, 6-12% slower at 17, 21, 25 tokens and 3-6%
 * at 18, 22, 26 (with 3 left the full width stays: the 3-token kernel was no
 * faster). Not inlined into the caller (see q4_body.h's q4_ttail). */
static __attribute__((noinline)) void q4z_ttail(const uint8_t *tw, size_t pstride_t, size_t wsoff, size_t g,
                                                const uint8_t *const *ap, size_t tn, size_t nbp, float *part, size_t np,
                                                size_t nr2)
{
    if (tn == 2)
        q4z_trows(q4z_tmicro_4_2, q4z_tmicro_1_2, tw, pstride_t, wsoff, g, ap, nbp, part, np, nr2);
    else
        q4z_trows(q4z_tmicro_4_1, q4z_tmicro_1_1, tw, pstride_t, wsoff, g, ap, nbp, part, np, nr2);
}

void MXI_Q4Z_NAME(const mxi_cpu_mat_t *m, size_t r0, size_t r1, const uint8_t *const *qa, size_t nt, float *c,
                  size_t ldc, void *tile)
{
    size_t nr = r1 - r0, nbp = 8 * m->ng;
    if (nt == 0 || nr == 0)
        return;
    if (nt < MXI_CPU_Q4Z_STREAM_MAX) {
        /* Passes of at most 5 tokens, sizes as equal as they go (9 tokens: 5 + 4,
         * not 4 + 4 + 1): each pass decodes the rows again, and a 1- or 2-token
         * pass costs 0.4-0.6 of a 4-token one (the kernel at 5 tokens still fits
         * the 32 registers; at 6 it spills, and 8 per pass was slower:
         * bench/RESULTS.md, sessions 18 and 19) */
        static const q4z_stream_fn fns[2][5] = {{q4zs_1_1_0, q4zs_1_2_0, q4zs_1_3_0, q4zs_1_4_0, q4zs_1_5_0},
                                                {q4zs_1_1_1, q4zs_1_2_1, q4zs_1_3_1, q4zs_1_4_1, q4zs_1_5_1}};
        const int plain = m->ws_plain != 0;
        for (size_t t0 = 0, left = (nt + 4) / 5; t0 < nt; left--) {
            size_t tn = (nt - t0 + left - 1) / left;
            size_t r = 0;
            for (; r + 2 <= nr; r += 2)
                fns[plain][tn - 1](m, r0 + r, qa + t0, c + t0 * ldc + r, ldc);
            if (r < nr) { /* an odd last row: pair it with itself, keep one result */
                float tmp[2 * 5];
                mxi_cpu_mat_t one = *m;
                one.row_stride = 0;
                one.scale_stride = 0;
                one.data = m->data + (r0 + r) * m->row_stride;
                one.scales = m->scales + (r0 + r) * m->scale_stride;
                fns[plain][tn - 1](&one, 0, qa + t0, tmp, 2);
                for (size_t t = 0; t < tn; t++)
                    c[(t0 + t) * ldc + r] = tmp[2 * t];
            }
            t0 += tn;
        }
        return;
    }
    /* decode: per row pair, per group 16 steps of 64 bytes (row 2i, row 2i+1),
     * then the ws of every block (16 floats per group) */
    const size_t np = (nr + 1) / 2;
    const size_t pstride_t = 1024 * m->ng + 64 * m->ng, wsoff = 1024 * m->ng; /* bytes, multiples of 64 */
    uint8_t *tw = (uint8_t *)tile;
    const __m512i tabs = q4z_table_signed();
    const size_t pf = MXI_Q4_PF_ROWS * m->row_stride, pf2 = MXI_Q4_PF2_ROWS * m->row_stride;
    for (size_t i = 0; i < np; i++) {
        const uint8_t *row0 = m->data + (r0 + 2 * i) * m->row_stride;
        const uint8_t *row1 = 2 * i + 1 < nr ? row0 + m->row_stride : row0;
        const uint8_t *sc0 = m->scales + (r0 + 2 * i) * m->scale_stride;
        const uint8_t *sc1 = 2 * i + 1 < nr ? sc0 + m->scale_stride : sc0;
        uint8_t *o = tw + i * pstride_t;
        for (size_t g = 0; g < m->ng; g++) {
            _mm_prefetch((const char *)row0 + 128 * g + pf, _MM_HINT_T1);
            _mm_prefetch((const char *)row0 + 128 * g + pf + 64, _MM_HINT_T1);
            _mm_prefetch((const char *)row1 + 128 * g + pf, _MM_HINT_T1);
            _mm_prefetch((const char *)row1 + 128 * g + pf + 64, _MM_HINT_T1);
            _mm_prefetch((const char *)row0 + 128 * g + pf2, _MM_HINT_T0);
            _mm_prefetch((const char *)row0 + 128 * g + pf2 + 64, _MM_HINT_T0);
            _mm_prefetch((const char *)row1 + 128 * g + pf2, _MM_HINT_T0);
            _mm_prefetch((const char *)row1 + 128 * g + pf2 + 64, _MM_HINT_T0);
            for (unsigned q = 0; q < 4; q++) {
                size_t off = mxi_cpu_q4_qoff(m, g, q);
                __m512i v[4];
                q4z_tdec(q4z_load2(row0 + off, row1 + off), tabs, v);
                for (int cc = 0; cc < 4; cc++)
                    _mm512_store_si512((void *)(o + 1024 * g + 256 * q + 64 * cc), v[cc]);
            }
            _mm512_store_ps((float *)(o + wsoff) + 16 * g, q4z_ws16(sc0 + 8 * g, sc1 + 8 * g, m->ws_plain));
        }
    }
    /* partial sums [nt rounded up][2 np][8]: rows 2i and 2i+1 adjacent */
    const size_t nr2 = 2 * np;
    float *part = (float *)(tw + ((np * pstride_t + 63) & ~(size_t)63));
    size_t ntr = (nt + Q4Z_NR - 1) / Q4Z_NR * Q4Z_NR;
    for (size_t k = 0; k < ntr * nr2 * 8; k++)
        part[k] = 0.0f;
    for (size_t g = 0; g < m->ng; g++)
        for (size_t t = 0; t < nt; t += Q4Z_NR) {
            if (nt - t <= 2) {
                q4z_ttail(tw, pstride_t, wsoff, g, qa + t, nt - t, nbp, part + t * nr2 * 8, np, nr2);
                break;
            }
            const uint8_t *ap[Q4Z_NR];
            for (size_t u = 0; u < Q4Z_NR; u++)
                ap[u] = qa[t + u < nt ? t + u : nt - 1];
            q4z_trows(q4z_tmicro_4_4, q4z_tmicro_1_4, tw, pstride_t, wsoff, g, ap, nbp, part + t * nr2 * 8, np, nr2);
        }
    for (size_t t = 0; t < nt; t++)
        for (size_t i = 0; i < nr; i++)
            c[t * ldc + i] = q4z_hsum8(_mm256_load_ps(part + (t * nr2 + i) * 8));
}
