/* mxep cpu backend: the MXFP4 integer kernels at 8 lanes (256-bit vectors),
 * included by avx2.c. Include after defining MXI_Q4_NAME (the function to
 * define) and MXI_Q4_NR (tokens per tiled micro-kernel call).
 *
 * They follow the block-exact contract of cpu_internal.h: the integer S_b of
 * each block, then acc_j = fma(float(S_b), ws_b * as_b, acc_j) with j = b % 8.
 * A group of 8 blocks is four 32-byte q-loads whose dword j belongs to block j,
 * so every 32-bit lane below carries one block and the 8 block sums of a group
 * come out in one vector, in the accumulator's lane order.
 *
 * Streaming route (no VNNI at this level): weights become offset bytes
 * W + 12 in [0, 24] (one vpshufb per 32 nibbles); activations are split into a
 * signed high byte and an unsigned low byte (A = 256 * high + low), so
 *   S_b = 256 * sum (W+12) * high + sum low * (W+12) - 12 * sum A
 * with vpmaddubsw (the offset weights fit either operand; pairs never
 * saturate: 2 * 255 * 24 < 2^15), 16-bit sums, then vpmaddwd to 32 bits. The
 * correction 12 * sum A is precomputed per token and block (mxi_cpu_qact).
 * Tiled route: the rows are decoded once into signed int16 W (step c of a
 * q-load: W of elements 8q + 2c, 8q + 2c + 1 of block j in dword j) and
 * vpmaddwd multiplies them with the int16 A of the activation's tiled layout. */
#include <immintrin.h>

#include "../cpu_internal.h"

/* 1: the AVX-VNNI kernels (vpdpbusd / vpdpwssd on 256-bit vectors). */
#ifndef MXI_Q4_VNNI
#define MXI_Q4_VNNI 0
#endif
/* s + the pairwise int16 products of w and a, in 32 bits (the tiled kernels' step) */
#if MXI_Q4_VNNI
#define Q4_DPWSSD(s, w, a) _mm256_dpwssd_avx_epi32((s), (w), (a))
#else
#define Q4_DPWSSD(s, w, a) _mm256_add_epi32((s), _mm256_madd_epi16((w), (a)))
#endif

/* Rows per streaming call at one token. */
#ifndef MXI_Q4_R1
#define MXI_Q4_R1 2
#endif
#define Q4S_CAT(R, P) q4s_##R##_1_##P
#define Q4S_CAT2(R, P) Q4S_CAT(R, P)
#define Q4S_R1(P) Q4S_CAT2(MXI_Q4_R1, P)

/* Software prefetch of the streaming kernels: each row-group prefetches the
 * same columns MXI_Q4_PF_ROWS rows further on into L2 (the hardware
 * prefetchers alone keep too few lines in flight for this access pattern: one
 * core then streams at ~6 GB/s instead of ~10; an L1 prefetch at the same
 * distance is slower too, the L1 miss buffers being the limit), and, if
 * MXI_Q4_PF2_ROWS is not 0, MXI_Q4_PF2_ROWS rows further on into L1. */
#ifndef MXI_Q4_PF_ROWS
#define MXI_Q4_PF_ROWS 16
#endif
#ifndef MXI_Q4_PF_HINT
#define MXI_Q4_PF_HINT _MM_HINT_T1
#endif
#ifndef MXI_Q4_PF2_ROWS
#define MXI_Q4_PF2_ROWS 4
#endif

/* Keeps GCC from reassociating chains of vector integer adds into trees of
 * products held on the stack (it did, spilling all of them: 2x slower). */
#define Q4_PIN(v) __asm__("" : "+x"(v))

static inline float q4_hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1)); /* l + l+4 */
    __m128 h = _mm_movehl_ps(s, s);                                                /* s2, s3 */
    s = _mm_add_ps(s, h);                                                          /* s0+s2, s1+s3 */
    h = _mm_shuffle_ps(s, s, 1);
    return _mm_cvtss_f32(_mm_add_ss(s, h));
}

/* 2 * E2M1 + 12 of each code, in both 128-bit lanes. */
static inline __m256i q4_table(void)
{
    return _mm256_setr_epi8(12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0, 12, 13, 14, 15, 16, 18, 20, 24,
                            12, 11, 10, 9, 8, 6, 4, 0);
}

/* Offset weights of the low and high nibbles of a q-load. */
static inline void q4_dec(__m256i x, __m256i tab, __m256i *wl, __m256i *wh)
{
    const __m256i m = _mm256_set1_epi8(0x0F);
    *wl = _mm256_shuffle_epi8(tab, _mm256_and_si256(x, m));
    *wh = _mm256_shuffle_epi8(tab, _mm256_and_si256(_mm256_srli_epi16(x, 4), m));
}

/* ws of 8 E8M0 bytes. PLAIN: every byte is in [15, 254] (the matrix's
 * ws_plain), so ws = bits (b - 14) << 23; otherwise bytes 0..14 give the
 * subnormal 1 << (b + 8) and 0xFF gives NaN, as mxi_cpu_q4_ws. */
static inline __m256 q4_ws8(const uint8_t *sb, int plain)
{
    __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)sb));
    __m256i w = _mm256_slli_epi32(_mm256_sub_epi32(v, _mm256_set1_epi32(14)), 23);
    if (!plain) {
        __m256i sub = _mm256_sllv_epi32(_mm256_set1_epi32(1), _mm256_add_epi32(v, _mm256_set1_epi32(8)));
        w = _mm256_blendv_epi8(sub, w, _mm256_cmpgt_epi32(v, _mm256_set1_epi32(14)));
        w = _mm256_blendv_epi8(w, _mm256_set1_epi32(0x7FC00000), _mm256_cmpeq_epi32(v, _mm256_set1_epi32(255)));
    }
    return _mm256_castsi256_ps(w);
}

/* One q-load's 16-bit partial sums against a token's planes p (hl, hh, ll,
 * lh): offset weights (unsigned) times high bytes (signed), low bytes
 * (unsigned) times offset weights (read as signed: they are <= 24). */
static inline void q4_qdot(__m256i wl, __m256i wh, const int8_t *p, __m256i *hq, __m256i *lq)
{
    *hq = _mm256_add_epi16(_mm256_maddubs_epi16(wl, _mm256_load_si256((const __m256i *)p)),
                           _mm256_maddubs_epi16(wh, _mm256_load_si256((const __m256i *)(p + 32))));
    *lq = _mm256_add_epi16(_mm256_maddubs_epi16(_mm256_load_si256((const __m256i *)(p + 64)), wl),
                           _mm256_maddubs_epi16(_mm256_load_si256((const __m256i *)(p + 96)), wh));
}

/* Accumulates q-load q into (h, s): the high sums over two q-loads in 16 bits
 * (|sum| <= 8 * 24 * 128 < 2^15), then into s with weight 256; the low sums
 * (<= 4 * 255 * 24 < 2^15) into s at once. */
static inline void q4_acc(unsigned q, __m256i hq, __m256i lq, __m256i *h, __m256i *s)
{
    __m256i l32 = _mm256_madd_epi16(lq, _mm256_set1_epi16(1));
    *s = q ? _mm256_add_epi32(*s, l32) : l32;
    Q4_PIN(*s);
    if (!(q & 1)) {
        *h = hq;
    } else {
        *s = _mm256_add_epi32(*s, _mm256_madd_epi16(_mm256_add_epi16(*h, hq), _mm256_set1_epi16(256)));
        Q4_PIN(*s);
    }
}

/* One q-load of a token (planes p: hl, hh, ll, lh) into the group's sums
 * (h, s). AVX-VNNI: vpdpbusd sums the same products straight into 32 bits,
 * each q-load into fresh sums first (two vpdpbusd deep) that one add takes
 * into h and s, so that no chain of vpdpbusd latencies runs through the
 * group; S = 256 h + s - corr. Otherwise q4_qdot and q4_acc (S = s - corr). */
static inline void q4_step(unsigned q, __m256i wl, __m256i wh, const int8_t *p, __m256i *h, __m256i *s)
{
#if MXI_Q4_VNNI
    const __m256i z = _mm256_setzero_si256();
    __m256i th = _mm256_dpbusd_avx_epi32(z, wl, _mm256_load_si256((const __m256i *)p));
    __m256i tl = _mm256_dpbusd_avx_epi32(z, _mm256_load_si256((const __m256i *)(p + 64)), wl);
    th = _mm256_dpbusd_avx_epi32(th, wh, _mm256_load_si256((const __m256i *)(p + 32)));
    tl = _mm256_dpbusd_avx_epi32(tl, _mm256_load_si256((const __m256i *)(p + 96)), wh);
    *h = q ? _mm256_add_epi32(*h, th) : th;
    *s = q ? _mm256_add_epi32(*s, tl) : tl;
    Q4_PIN(*h);
    Q4_PIN(*s);
#else
    __m256i hq, lq;
    q4_qdot(wl, wh, p, &hq, &lq);
    q4_acc(q, hq, lq, h, s);
#endif
}

/* The group's exact block sums S_b (lane j = block 8g + j). */
static inline __m256i q4_sum(__m256i h, __m256i s, const int32_t *corr)
{
#if MXI_Q4_VNNI
    s = _mm256_add_epi32(s, _mm256_slli_epi32(h, 8));
#else
    (void)h;
#endif
    return _mm256_sub_epi32(s, _mm256_loadu_si256((const __m256i *)corr));
}

/* Streaming (few tokens): R rows x NT tokens, weights decoded in registers.
 * PLAIN: the matrix's ws_plain. */
#define MXI_Q4_STREAM(R, NT, PLAIN) MXI_Q4_STREAM_(R, NT, PLAIN)
#define MXI_Q4_STREAM_(R, NT, PLAIN)                                                                                   \
    static void q4s_##R##_##NT##_##PLAIN(const mxi_cpu_mat_t *m, size_t r, const uint8_t *const *qa, float *c,         \
                                         size_t ldc)                                                                   \
    {                                                                                                                  \
        const size_t ng = m->ng, nbp = 8 * ng, stride = m->row_stride, sst = m->scale_stride;                          \
        const size_t pf = MXI_Q4_PF_ROWS * stride, pf2 = MXI_Q4_PF2_ROWS * stride,                                     \
                     qs_last = m->tail == 8 ? 32 : 4 * (size_t)m->tail;                                                \
        const __m256i tab = q4_table();                                                                                \
        __m256 acc[R][NT];                                                                                             \
        const uint8_t *rows[R];                                                                                        \
        const int8_t *pl[NT];                                                                                          \
        const float *as[NT];                                                                                           \
        const int32_t *cr[NT];                                                                                         \
        for (int i = 0; i < R; i++) {                                                                                  \
            rows[i] = m->data + (r + (size_t)i) * stride;                                                              \
            for (int t = 0; t < NT; t++)                                                                               \
                acc[i][t] = _mm256_setzero_ps();                                                                       \
        }                                                                                                              \
        for (int t = 0; t < NT; t++) {                                                                                 \
            pl[t] = MXI_QACT_PLANES(qa[t], nbp);                                                                       \
            as[t] = MXI_QACT_AS(qa[t]);                                                                                \
            cr[t] = MXI_QACT_CORR(qa[t], nbp);                                                                         \
        }                                                                                                              \
        for (size_t g = 0; g < ng; g++) {                                                                              \
            const size_t qs = g + 1 < ng ? 32 : qs_last;                                                               \
            _Pragma("GCC unroll 8") for (int i = 0; i < R; i++)                                                        \
            {                                                                                                          \
                const uint8_t *nib = rows[i] + 128 * g;                                                                \
                _mm_prefetch((const char *)nib + pf, MXI_Q4_PF_HINT);                                                  \
                _mm_prefetch((const char *)nib + pf + 64, MXI_Q4_PF_HINT);                                             \
                if (MXI_Q4_PF2_ROWS) {                                                                                 \
                    _mm_prefetch((const char *)nib + pf2, _MM_HINT_T0);                                                \
                    _mm_prefetch((const char *)nib + pf2 + 64, _MM_HINT_T0);                                           \
                }                                                                                                      \
                __m256i h[NT], s[NT];                                                                                  \
                _Pragma("GCC unroll 4") for (unsigned q = 0; q < 4; q++)                                               \
                {                                                                                                      \
                    __m256i wl, wh;                                                                                    \
                    q4_dec(_mm256_loadu_si256((const __m256i *)(nib + q * qs)), tab, &wl, &wh);                        \
                    _Pragma("GCC unroll 4") for (int t = 0; t < NT; t++)                                               \
                        q4_step(q, wl, wh, pl[t] + 512 * g + 128 * q, &h[t], &s[t]);                                   \
                }                                                                                                      \
                __m256 ws = q4_ws8(m->scales + (r + (size_t)i) * sst + 8 * g, PLAIN);                                  \
                _Pragma("GCC unroll 4") for (int t = 0; t < NT; t++)                                                   \
                {                                                                                                      \
                    __m256i sb = q4_sum(h[t], s[t], cr[t] + 8 * g);                                                    \
                    __m256 sc = _mm256_mul_ps(ws, _mm256_loadu_ps(as[t] + 8 * g));                                     \
                    acc[i][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sb), sc, acc[i][t]);                                \
                }                                                                                                      \
            }                                                                                                          \
        }                                                                                                              \
        for (int i = 0; i < R; i++)                                                                                    \
            for (int t = 0; t < NT; t++)                                                                               \
                c[(size_t)t * ldc + (size_t)i] = q4_hsum8(acc[i][t]);                                                  \
    }
#define MXI_Q4_STREAMS(PLAIN)                                                                                          \
    MXI_Q4_STREAM(MXI_Q4_R1, 1, PLAIN)                                                                                 \
    MXI_Q4_STREAM(1, 1, PLAIN)                                                                                         \
    MXI_Q4_STREAM(1, 2, PLAIN)                                                                                         \
    MXI_Q4_STREAM(1, 3, PLAIN)                                                                                         \
    MXI_Q4_STREAM(1, 4, PLAIN)
MXI_Q4_STREAMS(0)
MXI_Q4_STREAMS(1)

typedef void (*q4_stream_fn)(const mxi_cpu_mat_t *, size_t, const uint8_t *const *, float *, size_t);

/* 2 * E2M1 of each code (signed), in both 128-bit lanes. */
static inline __m256i q4_table_signed(void)
{
    return _mm256_setr_epi8(0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12, 0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2,
                            -3, -4, -6, -8, -12);
}

/* Tiled path: a q-load to its 4 steps of the int16 tile (step c: dword j =
 * (W of element 8q + 2c, W of element 8q + 2c + 1) of block j). */
static inline void q4_tdec(__m256i x, __m256i tabs, __m256i *o)
{
    const __m256i m = _mm256_set1_epi8(0x0F);
    __m256i wl = _mm256_shuffle_epi8(tabs, _mm256_and_si256(x, m));
    __m256i wh = _mm256_shuffle_epi8(tabs, _mm256_and_si256(_mm256_srli_epi16(x, 4), m));
    o[0] = _mm256_blend_epi16(_mm256_srai_epi32(_mm256_slli_epi32(wl, 24), 24),
                              _mm256_srai_epi32(_mm256_slli_epi32(wh, 24), 8), 0xAA);
    o[1] = _mm256_blend_epi16(_mm256_srai_epi32(_mm256_slli_epi32(wl, 16), 24),
                              _mm256_srai_epi32(_mm256_slli_epi32(wh, 16), 8), 0xAA);
    o[2] = _mm256_blend_epi16(_mm256_srai_epi32(_mm256_slli_epi32(wl, 8), 24),
                              _mm256_srai_epi32(_mm256_slli_epi32(wh, 8), 8), 0xAA);
    o[3] = _mm256_blend_epi16(_mm256_srai_epi32(wl, 24), _mm256_srai_epi32(wh, 8), 0xAA);
}

/* Tiled micro-kernel: MR decoded rows x NR tokens, one group; int32
 * block sums in registers (vpmaddwd per step, lane j = block j), then the
 * group's FMA into the FP32 accumulators of (token u, row i) kept in
 * part[u * pstride + i * 8] between groups (storing and reloading is exact). */
#define MXI_Q4_TMICRO(MR, NR) MXI_Q4_TMICRO_(MR, NR)
#define MXI_Q4_TMICRO_(MR, NR)                                                                                         \
    static void q4_tmicro_##MR##_##NR(const uint8_t *tw, size_t tstride, size_t wsoff, size_t g,                       \
                                      const uint8_t *const *ap, size_t nbp, float *part, size_t pstride)               \
    {                                                                                                                  \
        const int16_t *w[MR], *a[NR];                                                                                  \
        for (int i = 0; i < MR; i++)                                                                                   \
            w[i] = (const int16_t *)(tw + (size_t)i * tstride + 512 * g);                                              \
        for (int u = 0; u < NR; u++)                                                                                   \
            a[u] = MXI_QACT_TQ(ap[u], nbp) + 256 * g;                                                                  \
        __m256i s[MR][NR];                                                                                             \
        _Pragma("GCC unroll 4") for (int i = 0; i < MR; i++) _Pragma("GCC unroll 8") for (int u = 0; u < NR; u++)      \
            s[i][u] = _mm256_setzero_si256();                                                                          \
        _Pragma("GCC unroll 16") for (int st = 0; st < 16; st++)                                                       \
        {                                                                                                              \
            __m256i wv[MR];                                                                                            \
            _Pragma("GCC unroll 4") for (int i = 0; i < MR; i++) wv[i] =                                               \
                _mm256_load_si256((const __m256i *)(w[i] + 16 * st));                                                  \
            _Pragma("GCC unroll 8") for (int u = 0; u < NR; u++)                                                       \
            {                                                                                                          \
                __m256i av = _mm256_load_si256((const __m256i *)(a[u] + 16 * st));                                     \
                _Pragma("GCC unroll 4") for (int i = 0; i < MR; i++)                                                   \
                {                                                                                                      \
                    s[i][u] = Q4_DPWSSD(s[i][u], wv[i], av);                                                           \
                    Q4_PIN(s[i][u]);                                                                                   \
                }                                                                                                      \
            }                                                                                                          \
        }                                                                                                              \
        _Pragma("GCC unroll 4") for (int i = 0; i < MR; i++)                                                           \
        {                                                                                                              \
            __m256 ws = _mm256_load_ps((const float *)(tw + (size_t)i * tstride + wsoff) + 8 * g);                     \
            _Pragma("GCC unroll 8") for (int u = 0; u < NR; u++)                                                       \
            {                                                                                                          \
                __m256 sc = _mm256_mul_ps(ws, _mm256_loadu_ps(MXI_QACT_AS(ap[u]) + 8 * g));                            \
                float *pp = part + (size_t)u * pstride + (size_t)i * 8;                                                \
                _mm256_store_ps(pp, _mm256_fmadd_ps(_mm256_cvtepi32_ps(s[i][u]), sc, _mm256_load_ps(pp)));             \
            }                                                                                                          \
        }                                                                                                              \
    }
/* MR rows and one row, at MXI_Q4_NR tokens and at one: a call's last token
 * when it is left alone (it ran at full width with the token repeated before:
 * 2 of 12 token slots wasted at 10 tokens, 2 of 18 at 16; with 2 tokens left
 * the full width stays, a 2-token kernel was 3-5% slower than it) */
MXI_Q4_TMICRO(MXI_Q4_MR, MXI_Q4_NR)
MXI_Q4_TMICRO(MXI_Q4_MR, 1)
MXI_Q4_TMICRO(1, MXI_Q4_NR)
MXI_Q4_TMICRO(1, 1)
#define Q4T_CAT(MR, NR) q4_tmicro_##MR##_##NR
#define Q4T_CAT2(MR, NR) Q4T_CAT(MR, NR)

/* One token tile of one group over all nr rows: fm on MXI_Q4_MR rows at a
 * time, f1 on the rest (a micro-kernel pair of one width). Always inlined, so
 * that fm and f1 are direct calls. */
typedef void (*q4_tmicro_fn)(const uint8_t *, size_t, size_t, size_t, const uint8_t *const *, size_t, float *, size_t);
static inline __attribute__((always_inline)) void q4_trows(q4_tmicro_fn fm, q4_tmicro_fn f1, const uint8_t *tw,
                                                           size_t tstride, size_t wsoff, size_t g,
                                                           const uint8_t *const *ap, size_t nbp, float *part, size_t nr)
{
    size_t i = 0;
    for (; i + MXI_Q4_MR <= nr; i += MXI_Q4_MR)
        fm(tw + i * tstride, tstride, wsoff, g, ap, nbp, part + i * 8, nr * 8);
    for (; i < nr; i++)
        f1(tw + i * tstride, tstride, wsoff, g, ap, nbp, part + i * 8, nr * 8);
}

/* The last token of a call, all rows, one group. Not inlined into the caller:
 * with it inlined there, the full-width loop ran ~30% slower. */
static __attribute__((noinline)) void q4_ttail(const uint8_t *tw, size_t tstride, size_t wsoff, size_t g,
                                               const uint8_t *const *ap, size_t nbp, float *part, size_t nr)
{
    q4_trows(Q4T_CAT2(MXI_Q4_MR, 1), q4_tmicro_1_1, tw, tstride, wsoff, g, ap, nbp, part, nr);
}

void MXI_Q4_NAME(const mxi_cpu_mat_t *m, size_t r0, size_t r1, const uint8_t *const *qa, size_t nt, float *c,
                 size_t ldc, void *tile)
{
    size_t nr = r1 - r0, nbp = 8 * m->ng;
    if (nt == 0 || nr == 0)
        return;
    if (nt < MXI_CPU_Q4_STREAM_MAX) {
        for (size_t t0 = 0; t0 < nt; t0 += 4) {
            size_t tn = nt - t0 < 4 ? nt - t0 : 4;
            static const q4_stream_fn fns[2][4] = {{Q4S_R1(0), q4s_1_2_0, q4s_1_3_0, q4s_1_4_0},
                                                   {Q4S_R1(1), q4s_1_2_1, q4s_1_3_1, q4s_1_4_1}};
            static const q4_stream_fn one[2][4] = {{q4s_1_1_0, q4s_1_2_0, q4s_1_3_0, q4s_1_4_0},
                                                   {q4s_1_1_1, q4s_1_2_1, q4s_1_3_1, q4s_1_4_1}};
            const int plain = m->ws_plain != 0;
            size_t R = tn == 1 ? MXI_Q4_R1 : 1, r = 0; /* more rows x tokens spill registers */
            for (; r + R <= nr; r += R)
                fns[plain][tn - 1](m, r0 + r, qa + t0, c + t0 * ldc + r, ldc);
            for (; r < nr; r++)
                one[plain][tn - 1](m, r0 + r, qa + t0, c + t0 * ldc + r, ldc);
        }
        return;
    }
    /* decode: per row, per group 16 int16 steps (512 bytes), then the ws of every block */
    const size_t tstride = 512 * m->ng + 4 * nbp, wsoff = 512 * m->ng; /* bytes, multiples of 32 */
    uint8_t *tw = (uint8_t *)tile;
    const __m256i tabs = q4_table_signed();
    const size_t pf = MXI_Q4_PF_ROWS * m->row_stride, pf2 = MXI_Q4_PF2_ROWS * m->row_stride;
    for (size_t i = 0; i < nr; i++) {
        const uint8_t *row = m->data + (r0 + i) * m->row_stride;
        uint8_t *o = tw + i * tstride;
        for (size_t g = 0; g < m->ng; g++) {
            _mm_prefetch((const char *)row + 128 * g + pf, MXI_Q4_PF_HINT); /* the weights are read once here */
            _mm_prefetch((const char *)row + 128 * g + pf + 64, MXI_Q4_PF_HINT);
            _mm_prefetch((const char *)row + 128 * g + pf2, _MM_HINT_T0);
            _mm_prefetch((const char *)row + 128 * g + pf2 + 64, _MM_HINT_T0);
            for (unsigned q = 0; q < 4; q++) {
                __m256i v[4];
                q4_tdec(_mm256_loadu_si256((const __m256i *)(row + mxi_cpu_q4_qoff(m, g, q))), tabs, v);
                for (int cc = 0; cc < 4; cc++)
                    _mm256_store_si256((__m256i *)(o + 512 * g + 128 * q + 32 * cc), v[cc]);
            }
            _mm256_store_ps((float *)(o + wsoff) + 8 * g,
                            q4_ws8(m->scales + (r0 + i) * m->scale_stride + 8 * g, m->ws_plain));
        }
    }
    float *part = (float *)(tw + ((nr * tstride + 63) & ~(size_t)63)); /* [nt rounded up][nr][8] */
    size_t ntr = (nt + MXI_Q4_NR - 1) / MXI_Q4_NR * MXI_Q4_NR;
    for (size_t k = 0; k < ntr * nr * 8; k++)
        part[k] = 0.0f;
    for (size_t g = 0; g < m->ng; g++)
        for (size_t t = 0; t < nt; t += MXI_Q4_NR) {
            if (nt - t == 1) {
                q4_ttail(tw, tstride, wsoff, g, qa + t, nbp, part + t * nr * 8, nr);
                break;
            }
            /* 2 tokens left: the full width on a repeated token (partials past nt) */
            const uint8_t *ap[MXI_Q4_NR];
            for (size_t u = 0; u < MXI_Q4_NR; u++)
                ap[u] = qa[t + u < nt ? t + u : nt - 1];
            q4_trows(Q4T_CAT2(MXI_Q4_MR, MXI_Q4_NR), Q4T_CAT2(1, MXI_Q4_NR), tw, tstride, wsoff, g, ap, nbp,
                     part + t * nr * 8, nr);
        }
    for (size_t t = 0; t < nt; t++)
        for (size_t i = 0; i < nr; i++)
            c[t * ldc + i] = q4_hsum8(_mm256_load_ps(part + (t * nr + i) * 8));
}
