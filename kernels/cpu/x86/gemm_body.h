/* mxep cpu backend: the 8-lane FP32 GEMM body shared by avx2.c and avx512.c.
 * Include after defining MXI_GEMM_NAME (the function to define), MXI_MR and
 * MXI_NR (rows x tokens of the tiled micro-kernel, sized to the register file:
 * 3x4 with 16 YMM registers, 4x6 with the 32 registers AVX-512VL gives).
 *
 * BF16 and FP8 weights only (MXFP4: q4_body.h). Every path obeys the FP32
 * contract of cpu_internal.h: one 8-lane accumulator per
 * (token, row), one FMA per 8-column chunk in ascending order, the fixed
 * horizontal sum of hsum8. Streaming (few tokens) and tiled (many tokens)
 * therefore give bitwise-identical results. */
#include <immintrin.h>
#include <string.h>

#ifndef MXI_GEMM_ZMM /* 1: the tiled path 16 lanes wide (avx512.c; MXI_DEF_MICROZ) */
#define MXI_GEMM_ZMM 0
#endif

#include "../cpu_internal.h"

static inline float hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1)); /* l + l+4 */
    __m128 h = _mm_movehl_ps(s, s);                                                /* s2, s3 */
    s = _mm_add_ps(s, h);                                                          /* s0+s2, s1+s3 */
    h = _mm_shuffle_ps(s, s, 1);
    return _mm_cvtss_f32(_mm_add_ss(s, h));
}

/* Decodes block b (32 columns) of a packed BF16 or FP8 row into w[0..3] =
 * columns 8j..8j+7 (MXFP4 weights take the integer path of q4_body.h). FP8:
 * slow points at the row's flags (cpu_internal.h): a fast block multiplies the
 * 2^-120 bit image by the folded scale s * 2^120 (one multiply), a slow one
 * goes through FP16 bits and vcvtph2ps (no subnormal float ever enters a
 * multiply); both give fl(e4m3 * s). */
static inline void dec4(int fmt, const uint8_t *row, size_t scale_off, const uint8_t *slow, size_t b, __m256 w[4])
{
    if (fmt == MXI_CPU_FP8) {
        const uint8_t *q = row + b * 32;
        float sf;
        memcpy(&sf, row + scale_off + (b / 4) * sizeof(float), sizeof sf);
        __m256 s = _mm256_set1_ps(sf);
        if (__builtin_expect(!slow[b / 4], 1)) {
            __m256i mask = _mm256_set1_epi32((int)0x87F00000u);
            for (int j = 0; j < 4; j++) {
                __m256i v = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(q + 8 * j)));
                v = _mm256_and_si256(_mm256_slli_epi32(v, 20), mask);
                w[j] = _mm256_mul_ps(_mm256_castsi256_ps(v), s);
            }
        } else {
            /* sign-extended byte << 7 puts s.eeee.mmm at FP16 bits 14..7 and
             * the sign again at bit 15; clearing bit 14 leaves e4m3 * 2^-8 */
            __m128i hm = _mm_set1_epi16((short)0xBFFF);
            __m256 p8 = _mm256_set1_ps(256.0f);
            for (int j = 0; j < 4; j++) {
                __m128i h = _mm_cvtepi8_epi16(_mm_loadl_epi64((const __m128i *)(q + 8 * j)));
                h = _mm_and_si128(_mm_slli_epi16(h, 7), hm);
                w[j] = _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtph_ps(h), p8), s);
            }
        }
    } else {
        (void)slow;
        const uint16_t *h = (const uint16_t *)row + b * 32;
        for (int j = 0; j < 4; j++)
            w[j] = _mm256_castsi256_ps(
                _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(h + 8 * j))), 16));
    }
}

/* acc += the 32 activations at ap times one decoded block w, in the fixed
 * order every kernel here uses (8 lanes at a time, ascending). */
static inline __m256 fma_block32(const float *ap, const __m256 w[4], __m256 acc)
{
    acc = _mm256_fmadd_ps(_mm256_loadu_ps(ap), w[0], acc);
    acc = _mm256_fmadd_ps(_mm256_loadu_ps(ap + 8), w[1], acc);
    acc = _mm256_fmadd_ps(_mm256_loadu_ps(ap + 16), w[2], acc);
    return _mm256_fmadd_ps(_mm256_loadu_ps(ap + 24), w[3], acc);
}

/* Software prefetch of the streaming paths, in rows: each row prefetches the
 * same offset some rows further on, so later row groups' lines are in flight
 * while this one is decoded. FP8: MXI_PF_ROWS rows on into L2 and
 * MXI_PF2_ROWS rows on into L1 (0: none; the scheme of q4_body.h). BF16:
 * MXI_BF_PF_ROWS rows on into L1 (the FP8 scheme measured no better there).
 * Prefetching past the end of the matrix is harmless (prefetches never
 * fault). */
#ifndef MXI_BF_PF_ROWS
#define MXI_BF_PF_ROWS 8
#endif
#ifndef MXI_PF_ROWS
#define MXI_PF_ROWS 16
#endif
#ifndef MXI_PF2_ROWS
#define MXI_PF2_ROWS 4
#endif

/* Streaming: R rows x NT tokens, weights decoded in registers and used at once. */
#define MXI_DEF_STREAM(F, FMT, R, NT)                                                                                  \
    static __attribute__((unused)) void stream_##F##_##R##_##NT(const mxi_cpu_mat_t *m, size_t r,                      \
                                                                const float *const *a, float *c, size_t ldc)           \
    {                                                                                                                  \
        __m256 acc[R][NT];                                                                                             \
        _Pragma("GCC unroll 8") for (int i = 0; i < R; i++) _Pragma("GCC unroll 8") for (int t = 0; t < NT; t++)       \
            acc[i][t] = _mm256_setzero_ps();                                                                           \
        const uint8_t *rows[R], *slow[R];                                                                              \
        for (int i = 0; i < R; i++) {                                                                                  \
            rows[i] = m->data + (r + (size_t)i) * m->row_stride;                                                       \
            slow[i] = (FMT) == MXI_CPU_FP8 ? m->scales + (r + (size_t)i) * m->scale_stride : NULL;                     \
        }                                                                                                              \
        size_t nb = m->kp / 32, bpb = (FMT) == MXI_CPU_MXFP4 ? 16 : (FMT) == MXI_CPU_FP8 ? 32 : 64;                    \
        const size_t pf = MXI_BF_PF_ROWS * m->row_stride;                                                              \
        for (size_t b = 0; b < nb; b++) {                                                                              \
            _Pragma("GCC unroll 8") for (int i = 0; i < R; i++)                                                        \
            {                                                                                                          \
                __m256 w[4];                                                                                           \
                if (((b * bpb) & 63) == 0)                                                                             \
                    _mm_prefetch((const char *)rows[i] + b * bpb + pf, _MM_HINT_T0);                                   \
                dec4((FMT), rows[i], m->scale_off, slow[i], b, w);                                                     \
                _Pragma("GCC unroll 8") for (int t = 0; t < NT; t++)                                                   \
                    acc[i][t] = fma_block32(a[t] + b * 32, w, acc[i][t]);                                              \
            }                                                                                                          \
        }                                                                                                              \
        for (int i = 0; i < R; i++)                                                                                    \
            for (int t = 0; t < NT; t++)                                                                               \
                c[(size_t)t * ldc + (size_t)i] = hsum8(acc[i][t]);                                                     \
    }

/* One set per packed format, so the decoder's format test folds away. */
#define MXI_DEF_STREAMS(F, FMT)                                                                                        \
    MXI_DEF_STREAM(F, FMT, 4, 1)                                                                                       \
    MXI_DEF_STREAM(F, FMT, 4, 2)                                                                                       \
    MXI_DEF_STREAM(F, FMT, 2, 3)                                                                                       \
    MXI_DEF_STREAM(F, FMT, 2, 4)                                                                                       \
    MXI_DEF_STREAM(F, FMT, 1, 1)
MXI_DEF_STREAMS(bf, MXI_CPU_BF16)

/* FP8 streaming: the same sums as MXI_DEF_STREAM, walked per 128-column scale
 * block. When the block is fast in all R rows (the common case), its 16
 * chunks are decoded and accumulated with the rows interleaved chunk by chunk,
 * so the R x NT accumulator chains overlap (one row's 16 dependent FMAs in a
 * row left the cores waiting on FMA latency); the test and the scale
 * broadcasts happen once per 128 weights. Otherwise (a slow block somewhere,
 * or a short last block) each row goes through dec4. */
#define MXI_DEF_STREAM_F8(R, NT)                                                                                       \
    static void stream_f8_##R##_##NT(const mxi_cpu_mat_t *m, size_t r, const float *const *a, float *c, size_t ldc)    \
    {                                                                                                                  \
        __m256 acc[R][NT];                                                                                             \
        _Pragma("GCC unroll 8") for (int i = 0; i < R; i++) _Pragma("GCC unroll 8") for (int t = 0; t < NT; t++)       \
            acc[i][t] = _mm256_setzero_ps();                                                                           \
        const uint8_t *rows[R], *slow[R];                                                                              \
        for (int i = 0; i < R; i++) {                                                                                  \
            rows[i] = m->data + (r + (size_t)i) * m->row_stride;                                                       \
            slow[i] = m->scales + (r + (size_t)i) * m->scale_stride;                                                   \
        }                                                                                                              \
        const size_t nb = m->kp / 32, nkb = (nb + 3) / 4;                                                              \
        const size_t pf = MXI_PF_ROWS * m->row_stride, pf2 = MXI_PF2_ROWS * m->row_stride;                             \
        const __m256i mask = _mm256_set1_epi32((int)0x87F00000u);                                                      \
        for (size_t kb = 0; kb < nkb; kb++) {                                                                          \
            int fast = 4 * kb + 4 <= nb;                                                                               \
            _Pragma("GCC unroll 8") for (int i = 0; i < R; i++)                                                        \
            {                                                                                                          \
                const char *q = (const char *)rows[i] + 128 * kb;                                                      \
                _mm_prefetch(q + pf, _MM_HINT_T1);                                                                     \
                _mm_prefetch(q + pf + 64, _MM_HINT_T1);                                                                \
                if (MXI_PF2_ROWS) {                                                                                    \
                    _mm_prefetch(q + pf2, _MM_HINT_T0);                                                                \
                    _mm_prefetch(q + pf2 + 64, _MM_HINT_T0);                                                           \
                }                                                                                                      \
                if (kb + 1 == nkb) { /* the same rows' scales (row end) and flags */                                   \
                    const char *sc = (const char *)rows[i] + m->scale_off;                                             \
                    const char *fl = (const char *)slow[i];                                                            \
                    _mm_prefetch(sc + pf, _MM_HINT_T1);                                                                \
                    _mm_prefetch(sc + pf + 4 * nkb - 1, _MM_HINT_T1);                                                  \
                    _mm_prefetch(fl + MXI_PF_ROWS * m->scale_stride, _MM_HINT_T1);                                     \
                    if (MXI_PF2_ROWS) {                                                                                \
                        _mm_prefetch(sc + pf2, _MM_HINT_T0);                                                           \
                        _mm_prefetch(sc + pf2 + 4 * nkb - 1, _MM_HINT_T0);                                             \
                        _mm_prefetch(fl + MXI_PF2_ROWS * m->scale_stride, _MM_HINT_T0);                                \
                    }                                                                                                  \
                }                                                                                                      \
                fast &= !slow[i][kb];                                                                                  \
            }                                                                                                          \
            if (__builtin_expect(fast, 1)) {                                                                           \
                const float *sp[R];                                                                                    \
                for (int i = 0; i < R; i++)                                                                            \
                    sp[i] = (const float *)(rows[i] + m->scale_off) + kb;                                              \
                _Pragma("GCC unroll 16") for (int j = 0; j < 16; j++)                                                  \
                {                                                                                                      \
                    __m256 av[NT];                                                                                     \
                    _Pragma("GCC unroll 8") for (int t = 0; t < NT; t++) av[t] =                                       \
                        _mm256_loadu_ps(a[t] + 128 * kb + 8 * j);                                                      \
                    _Pragma("GCC unroll 8") for (int i = 0; i < R; i++)                                                \
                    {                                                                                                  \
                        __m256i v =                                                                                    \
                            _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(rows[i] + 128 * kb + 8 * j)));      \
                        v = _mm256_and_si256(_mm256_slli_epi32(v, 20), mask);                                          \
                        const __m256 w = _mm256_mul_ps(_mm256_castsi256_ps(v), _mm256_broadcast_ss(sp[i]));            \
                        _Pragma("GCC unroll 8") for (int t = 0; t < NT; t++) acc[i][t] =                               \
                            _mm256_fmadd_ps(av[t], w, acc[i][t]);                                                      \
                    }                                                                                                  \
                }                                                                                                      \
            } else {                                                                                                   \
                _Pragma("GCC unroll 8") for (int i = 0; i < R; i++) for (size_t b = 4 * kb; b < 4 * kb + 4 && b < nb;  \
                                                                         b++)                                          \
                {                                                                                                      \
                    __m256 w[4];                                                                                       \
                    dec4(MXI_CPU_FP8, rows[i], m->scale_off, slow[i], b, w);                                           \
                    _Pragma("GCC unroll 8") for (int t = 0; t < NT; t++)                                               \
                        acc[i][t] = fma_block32(a[t] + b * 32, w, acc[i][t]);                                          \
                }                                                                                                      \
            }                                                                                                          \
        }                                                                                                              \
        for (int i = 0; i < R; i++)                                                                                    \
            for (int t = 0; t < NT; t++)                                                                               \
                c[(size_t)t * ldc + (size_t)i] = hsum8(acc[i][t]);                                                     \
    }
/* Rows per call for 1 and 2 tokens (3 and 4: 2 rows). */
#ifndef MXI_F8_R1
#define MXI_F8_R1 4
#endif
#ifndef MXI_F8_R2
#define MXI_F8_R2 4
#endif
#define MXI_F8_CAT(R, NT) stream_f8_##R##_##NT
#define MXI_F8_FN(R, NT) MXI_F8_CAT(R, NT)
#define MXI_DEF_STREAM_F8_(R, NT) MXI_DEF_STREAM_F8(R, NT)
MXI_DEF_STREAM_F8_(MXI_F8_R1, 1)
#if MXI_F8_R1 != 1
MXI_DEF_STREAM_F8(1, 1)
#endif
MXI_DEF_STREAM_F8_(MXI_F8_R2, 2)
MXI_DEF_STREAM_F8(2, 3)
MXI_DEF_STREAM_F8(2, 4)

typedef void (*stream_fn)(const mxi_cpu_mat_t *, size_t, const float *const *, float *, size_t);

/* Tiled: MR rows x NR tokens from a decoded FP32 slab (row i of the slab at
 * w + i * ldw holds columns [k0, k1) of its row), columns [k0, k1).
 * The accumulators live in part[(t * nr + i) * 8] between column blocks
 * (storing and reloading a vector is exact, so the FMA sequence per (token,
 * row) is the same as in one pass). */
#define MXI_DEF_MICRO(NAME, NRV)                                                                                       \
    static void NAME(const float *w, size_t ldw, size_t k0, size_t k1, const float *const *a, float *part, size_t nr)  \
    {                                                                                                                  \
        __m256 acc[MXI_MR][NRV];                                                                                       \
        _Pragma("GCC unroll 8") for (int i = 0; i < MXI_MR; i++) _Pragma("GCC unroll 8") for (int t = 0; t < NRV; t++) \
            acc[i][t] = _mm256_load_ps(part + ((size_t)t * nr + (size_t)i) * 8);                                       \
        const float *ap[NRV];                                                                                          \
        for (int t = 0; t < NRV; t++)                                                                                  \
            ap[t] = a[t] + k0;                                                                                         \
        size_t n = k1 - k0;                                                                                            \
        for (size_t k = 0; k < n; k += 8) {                                                                            \
            __m256 wv[MXI_MR];                                                                                         \
            _Pragma("GCC unroll 8") for (int i = 0; i < MXI_MR; i++) wv[i] = _mm256_load_ps(w + (size_t)i * ldw + k);  \
            _Pragma("GCC unroll 8") for (int t = 0; t < NRV; t++)                                                      \
            {                                                                                                          \
                __m256 av = _mm256_loadu_ps(ap[t] + k);                                                                \
                _Pragma("GCC unroll 8") for (int i = 0; i < MXI_MR; i++) acc[i][t] =                                   \
                    _mm256_fmadd_ps(av, wv[i], acc[i][t]);                                                             \
            }                                                                                                          \
        }                                                                                                              \
        _Pragma("GCC unroll 8") for (int i = 0; i < MXI_MR; i++) _Pragma("GCC unroll 8") for (int t = 0; t < NRV; t++) \
            _mm256_store_ps(part + ((size_t)t * nr + (size_t)i) * 8, acc[i][t]);                                       \
    }
#if !MXI_GEMM_ZMM
MXI_DEF_MICRO(micro_full, MXI_NR)
/* MR rows x 1..3 tokens: the last token group of a batch (nt not a multiple of
 * NR) runs only its real tokens (repeating the last one cost up to NR-1 tokens'
 * FMAs per group: ~5% at 32 tokens per expert) */
MXI_DEF_MICRO(micro_n1, 1)
MXI_DEF_MICRO(micro_n2, 2)
MXI_DEF_MICRO(micro_n3, 3)
#endif

#if MXI_GEMM_ZMM
/* The same sums 16 lanes wide (AVX-512 level): a zmm holds rows 2p and 2p + 1
 * of a row pair, each in its own 8 lanes, so every lane does exactly the FMAs
 * of its 8-lane accumulator (bitwise the same results). The slab holds pair
 * p's chunk c (8 columns) of both rows as 16 floats at w + p * ldp + 16 c;
 * the accumulators of (token t, rows 2p, 2p + 1) are the 16 adjacent floats at
 * part + (t * nr + 2p) * 8. MXI_ZMP pairs x NRV tokens per call. */
#ifndef MXI_ZMP
#define MXI_ZMP 4
#endif
#define MXI_DEF_MICROZ(NAME, MP, NRV)                                                                                  \
    static void NAME(const float *w, size_t ldp, size_t k0, size_t k1, const float *const *a, float *part, size_t nr)  \
    {                                                                                                                  \
        __m512 acc[MP][NRV];                                                                                           \
        _Pragma("GCC unroll 8") for (int i = 0; i < MP; i++) _Pragma("GCC unroll 8") for (int t = 0; t < NRV; t++)     \
            acc[i][t] = _mm512_loadu_ps(part + ((size_t)t * nr + 2 * (size_t)i) * 8);                                  \
        const float *ap[NRV];                                                                                          \
        for (int t = 0; t < NRV; t++)                                                                                  \
            ap[t] = a[t] + k0;                                                                                         \
        size_t n = k1 - k0;                                                                                            \
        for (size_t k = 0; k < n; k += 8) {                                                                            \
            __m512 wv[MP];                                                                                             \
            _Pragma("GCC unroll 8") for (int i = 0; i < MP; i++) wv[i] = _mm512_loadu_ps(w + (size_t)i * ldp + 2 * k); \
            _Pragma("GCC unroll 8") for (int t = 0; t < NRV; t++)                                                      \
            {                                                                                                          \
                __m512 av = _mm512_broadcast_f32x8(_mm256_loadu_ps(ap[t] + k));                                        \
                _Pragma("GCC unroll 8") for (int i = 0; i < MP; i++) acc[i][t] =                                       \
                    _mm512_fmadd_ps(av, wv[i], acc[i][t]);                                                             \
            }                                                                                                          \
        }                                                                                                              \
        _Pragma("GCC unroll 8") for (int i = 0; i < MP; i++) _Pragma("GCC unroll 8") for (int t = 0; t < NRV; t++)     \
            _mm512_storeu_ps(part + ((size_t)t * nr + 2 * (size_t)i) * 8, acc[i][t]);                                  \
    }
MXI_DEF_MICROZ(microz_full, MXI_ZMP, MXI_NR)
MXI_DEF_MICROZ(microz_n1, MXI_ZMP, 1)
MXI_DEF_MICROZ(microz_n2, MXI_ZMP, 2)
MXI_DEF_MICROZ(microz_n3, MXI_ZMP, 3)
MXI_DEF_MICROZ(microz_1_full, 1, MXI_NR)
MXI_DEF_MICROZ(microz_1_n1, 1, 1)
MXI_DEF_MICROZ(microz_1_n2, 1, 2)
MXI_DEF_MICROZ(microz_1_n3, 1, 3)
#endif

static void micro_one(const float *w, size_t k0, size_t k1, const float *a, float *part)
{
    __m256 acc = _mm256_load_ps(part);
    for (size_t k = k0; k < k1; k += 8)
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + k), _mm256_load_ps(w + (k - k0)), acc);
    _mm256_store_ps(part, acc);
}

/* Columns per slab of the tiled path: MXI_CPU_ROW_BLOCK rows of a slab are
 * decoded (24 KiB) just before use, so they and the tokens' columns stay in
 * L1 while every token reuses them (decoding whole rows first wrote a tile of
 * up to 24 x kp floats that went out to L2 and came back). */
#define MXI_KC 256

void MXI_GEMM_NAME(const mxi_cpu_mat_t *m, size_t r0, size_t r1, const float *const *a, size_t nt, float *c, size_t ldc,
                   float *tile)
{
    size_t nr = r1 - r0, kp = m->kp;
    if (nt == 0 || nr == 0)
        return;
    if (nt < MXI_CPU_STREAM_MAX) {
        for (size_t t0 = 0; t0 < nt; t0 += 4) {
            size_t tn = nt - t0 < 4 ? nt - t0 : 4;
            static const stream_fn fns[3][4] = {
                {stream_bf_4_1, stream_bf_4_2, stream_bf_2_3, stream_bf_2_4},
                {NULL, NULL, NULL, NULL}, /* MXFP4: q4_body.h */
                {MXI_F8_FN(MXI_F8_R1, 1), MXI_F8_FN(MXI_F8_R2, 2), stream_f8_2_3, stream_f8_2_4},
            };
            static const stream_fn one[3] = {stream_bf_1_1, NULL, stream_f8_1_1};
            stream_fn f = fns[m->fmt][tn - 1];
            size_t R = tn <= 2 ? 4 : 2, r = 0;
            if (m->fmt == MXI_CPU_FP8)
                R = tn == 1 ? MXI_F8_R1 : tn == 2 ? MXI_F8_R2 : 2;
            for (; r + R <= nr; r += R)
                f(m, r0 + r, a + t0, c + t0 * ldc + r, ldc);
            for (; r < nr; r++)
                for (size_t t = 0; t < tn; t++)
                    one[m->fmt](m, r0 + r, a + t0 + t, c + (t0 + t) * ldc + r, ldc);
        }
        return;
    }
    float *part = tile + nr * MXI_KC; /* [nt rounded up to MXI_NR][nr][8] */
    memset(part, 0, (nt + MXI_NR - 1) / MXI_NR * MXI_NR * nr * 8 * sizeof(float));
    for (size_t k0 = 0; k0 < kp; k0 += MXI_KC) {
        size_t k1 = k0 + MXI_KC < kp ? k0 + MXI_KC : kp;
        for (size_t i = 0; i < nr; i++) {
            const uint8_t *row = m->data + (r0 + i) * m->row_stride;
            const uint8_t *slow = m->fmt == MXI_CPU_FP8 ? m->scales + (r0 + i) * m->scale_stride : NULL;
            float *w = tile + i * MXI_KC;
            /* the next slab's bytes of this row (FP8: 4 lines, BF16: 8), fetched
             * while every token works on this one; during the last slab, the
             * first slab of the row nr rows on (the next work item, which
             * guided scheduling mostly gives to this thread) */
            const size_t bpc = m->fmt == MXI_CPU_FP8 ? 1 : 2;
            const uint8_t *nx = row;
            size_t o0 = k1 * bpc;
            if (k1 >= kp) {
                nx = r0 + nr + i < m->rows ? row + nr * m->row_stride : NULL;
                o0 = 0;
            }
            if (nx) {
                for (size_t o = o0; o < m->row_stride && o < o0 + MXI_KC * bpc; o += 64)
                    _mm_prefetch((const char *)nx + o, _MM_HINT_T0);
                if (k1 >= kp && m->fmt == MXI_CPU_FP8) { /* its scales (row end) and flags */
                    _mm_prefetch((const char *)nx + m->scale_off, _MM_HINT_T0);
                    _mm_prefetch((const char *)nx + m->row_stride - 1, _MM_HINT_T0);
                    _mm_prefetch((const char *)m->scales + (r0 + nr + i) * m->scale_stride, _MM_HINT_T0);
                }
            }
#if MXI_GEMM_ZMM
            /* rows of a pair interleaved chunk by chunk (MXI_DEF_MICROZ); an odd
             * last row stays whole, at its own place */
            size_t cstep = 8;
            if (i < nr / 2 * 2) {
                w = tile + (i / 2) * 2 * MXI_KC + 8 * (i & 1);
                cstep = 16;
            }
#else
            const size_t cstep = 8;
#endif
            for (size_t b = k0 / 32; b < k1 / 32; b++) {
                __m256 v[4];
                dec4(m->fmt, row, m->scale_off, slow, b, v);
                for (int j = 0; j < 4; j++)
                    _mm256_store_ps(w + ((b * 32 - k0) / 8 + (size_t)j) * cstep, v[j]);
            }
        }
        for (size_t t = 0; t < nt; t += MXI_NR) {
            /* a short last group of 1..3 tokens runs a narrower kernel; with
             * NR > 4 a longer one repeats its last token in the full kernel
             * (results discarded: the partials of those rows lie past nt) */
            const float *ap[MXI_NR];
            for (size_t u = 0; u < MXI_NR; u++)
                ap[u] = a[t + u < nt ? t + u : nt - 1];
            size_t i = 0, left = nt - t;
#if MXI_GEMM_ZMM
            {
                typedef void (*microz_fn)(const float *, size_t, size_t, size_t, const float *const *, float *, size_t);
                const int v = left >= MXI_NR || left > 3 ? 0 : 4 - (int)left; /* full, n3, n2, n1 */
                static const microz_fn fz[4] = {microz_full, microz_n3, microz_n2, microz_n1};
                static const microz_fn f1[4] = {microz_1_full, microz_1_n3, microz_1_n2, microz_1_n1};
                const size_t np = nr / 2;
                size_t q = 0;
                for (; q + MXI_ZMP <= np; q += MXI_ZMP)
                    fz[v](tile + q * 2 * MXI_KC, 2 * MXI_KC, k0, k1, ap, part + (t * nr + 2 * q) * 8, nr);
                for (; q < np; q++)
                    f1[v](tile + q * 2 * MXI_KC, 2 * MXI_KC, k0, k1, ap, part + (t * nr + 2 * q) * 8, nr);
                i = 2 * np;
            }
#else
            if (left >= MXI_NR || left > 3)
                for (; i + MXI_MR <= nr; i += MXI_MR)
                    micro_full(tile + i * MXI_KC, MXI_KC, k0, k1, ap, part + (t * nr + i) * 8, nr);
            else if (left == 3)
                for (; i + MXI_MR <= nr; i += MXI_MR)
                    micro_n3(tile + i * MXI_KC, MXI_KC, k0, k1, ap, part + (t * nr + i) * 8, nr);
            else if (left == 2)
                for (; i + MXI_MR <= nr; i += MXI_MR)
                    micro_n2(tile + i * MXI_KC, MXI_KC, k0, k1, ap, part + (t * nr + i) * 8, nr);
            else
                for (; i + MXI_MR <= nr; i += MXI_MR)
                    micro_n1(tile + i * MXI_KC, MXI_KC, k0, k1, ap, part + (t * nr + i) * 8, nr);
#endif
            for (; i < nr; i++)
                for (size_t u = 0; u < MXI_NR && t + u < nt; u++)
                    micro_one(tile + i * MXI_KC, k0, k1, ap[u], part + ((t + u) * nr + i) * 8);
        }
    }
    for (size_t t = 0; t < nt; t++)
        for (size_t i = 0; i < nr; i++)
            c[t * ldc + i] = hsum8(_mm256_load_ps(part + (t * nr + i) * 8));
}
