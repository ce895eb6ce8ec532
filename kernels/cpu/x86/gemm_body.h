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
 * columns 8j..8j+7 (MXFP4 weights take the integer path of q4_body.h). */
static inline void dec4(int fmt, const uint8_t *row, size_t scale_off, size_t b, __m256 w[4])
{
    if (fmt == MXI_CPU_FP8) {
        const uint8_t *q = row + b * 32;
        float sf;
        memcpy(&sf, row + scale_off + (b / 4) * sizeof(float), sizeof sf);
        __m256 s = _mm256_set1_ps(sf), p120 = _mm256_set1_ps(0x1p120f);
        __m256i mask = _mm256_set1_epi32((int)0x87F00000u);
        for (int j = 0; j < 4; j++) {
            __m256i v = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(q + 8 * j)));
            v = _mm256_and_si256(_mm256_slli_epi32(v, 20), mask);
            w[j] = _mm256_mul_ps(_mm256_mul_ps(_mm256_castsi256_ps(v), p120), s);
        }
    } else {
        const uint16_t *h = (const uint16_t *)row + b * 32;
        for (int j = 0; j < 4; j++)
            w[j] = _mm256_castsi256_ps(
                _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(h + 8 * j))), 16));
    }
}

/* Software prefetch distance of the streaming path, in rows: each row prefetches
 * the same offset MXI_PF_ROWS rows further on (the rows of the next row group), so
 * the next group's lines are in flight while this one is decoded. Prefetching
 * past the end of the matrix is harmless (prefetches never fault). */
#ifndef MXI_PF_ROWS
#define MXI_PF_ROWS 8
#endif

/* Streaming: R rows x NT tokens, weights decoded in registers and used at once. */
#define MXI_DEF_STREAM(F, FMT, R, NT)                                                                                  \
    static __attribute__((unused)) void stream_##F##_##R##_##NT(const mxi_cpu_mat_t *m, size_t r,                      \
                                                                const float *const *a, float *c, size_t ldc)           \
    {                                                                                                                  \
        __m256 acc[R][NT];                                                                                             \
        _Pragma("GCC unroll 8") for (int i = 0; i < R; i++) _Pragma("GCC unroll 8") for (int t = 0; t < NT; t++)       \
            acc[i][t] = _mm256_setzero_ps();                                                                           \
        const uint8_t *rows[R];                                                                                        \
        for (int i = 0; i < R; i++)                                                                                    \
            rows[i] = m->data + (r + (size_t)i) * m->row_stride;                                                       \
        size_t nb = m->kp / 32, bpb = (FMT) == MXI_CPU_MXFP4 ? 16 : (FMT) == MXI_CPU_FP8 ? 32 : 64;                    \
        const size_t pf = MXI_PF_ROWS * m->row_stride;                                                                 \
        for (size_t b = 0; b < nb; b++) {                                                                              \
            _Pragma("GCC unroll 8") for (int i = 0; i < R; i++)                                                        \
            {                                                                                                          \
                __m256 w[4];                                                                                           \
                if (((b * bpb) & 63) == 0)                                                                             \
                    _mm_prefetch((const char *)rows[i] + b * bpb + pf, _MM_HINT_T0);                                   \
                dec4((FMT), rows[i], m->scale_off, b, w);                                                              \
                _Pragma("GCC unroll 8") for (int t = 0; t < NT; t++)                                                   \
                {                                                                                                      \
                    const float *ap = a[t] + b * 32;                                                                   \
                    acc[i][t] = _mm256_fmadd_ps(_mm256_loadu_ps(ap), w[0], acc[i][t]);                                 \
                    acc[i][t] = _mm256_fmadd_ps(_mm256_loadu_ps(ap + 8), w[1], acc[i][t]);                             \
                    acc[i][t] = _mm256_fmadd_ps(_mm256_loadu_ps(ap + 16), w[2], acc[i][t]);                            \
                    acc[i][t] = _mm256_fmadd_ps(_mm256_loadu_ps(ap + 24), w[3], acc[i][t]);                            \
                }                                                                                                      \
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
MXI_DEF_STREAMS(f8, MXI_CPU_FP8)
MXI_DEF_STREAMS(bf, MXI_CPU_BF16)

typedef void (*stream_fn)(const mxi_cpu_mat_t *, size_t, const float *const *, float *, size_t);

/* Tiled: MR rows x NR tokens from the decoded FP32 tile, columns [k0, k1).
 * The accumulators live in part[(t * nr + i) * 8] between column blocks
 * (storing and reloading a vector is exact, so the FMA sequence per (token,
 * row) is the same as in one pass). */
static void micro_full(const float *w, size_t kp, size_t k0, size_t k1, const float *const *a, float *part, size_t nr)
{
    __m256 acc[MXI_MR][MXI_NR];
    _Pragma("GCC unroll 8") for (int i = 0; i < MXI_MR; i++) _Pragma("GCC unroll 8") for (int t = 0; t < MXI_NR; t++)
        acc[i][t] = _mm256_load_ps(part + ((size_t)t * nr + (size_t)i) * 8);
    const float *ap[MXI_NR];
    for (int t = 0; t < MXI_NR; t++)
        ap[t] = a[t];
    for (size_t k = k0; k < k1; k += 8) {
        __m256 wv[MXI_MR];
        _Pragma("GCC unroll 8") for (int i = 0; i < MXI_MR; i++) wv[i] = _mm256_load_ps(w + (size_t)i * kp + k);
        _Pragma("GCC unroll 8") for (int t = 0; t < MXI_NR; t++)
        {
            __m256 av = _mm256_loadu_ps(ap[t] + k);
            _Pragma("GCC unroll 8") for (int i = 0; i < MXI_MR; i++) acc[i][t] = _mm256_fmadd_ps(av, wv[i], acc[i][t]);
        }
    }
    _Pragma("GCC unroll 8") for (int i = 0; i < MXI_MR; i++) _Pragma("GCC unroll 8") for (int t = 0; t < MXI_NR; t++)
        _mm256_store_ps(part + ((size_t)t * nr + (size_t)i) * 8, acc[i][t]);
}

static void micro_one(const float *w, size_t k0, size_t k1, const float *a, float *part)
{
    __m256 acc = _mm256_load_ps(part);
    for (size_t k = k0; k < k1; k += 8)
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + k), _mm256_load_ps(w + k), acc);
    _mm256_store_ps(part, acc);
}

/* Columns per block of the tiled path: a block of MXI_CPU_ROW_BLOCK decoded
 * rows (24 KiB) and the tokens' columns stay in L1 while they are reused. */
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
                {stream_f8_4_1, stream_f8_4_2, stream_f8_2_3, stream_f8_2_4},
            };
            static const stream_fn one[3] = {stream_bf_1_1, NULL, stream_f8_1_1};
            stream_fn f = fns[m->fmt][tn - 1];
            size_t R = tn <= 2 ? 4 : 2, r = 0;
            for (; r + R <= nr; r += R)
                f(m, r0 + r, a + t0, c + t0 * ldc + r, ldc);
            for (; r < nr; r++)
                for (size_t t = 0; t < tn; t++)
                    one[m->fmt](m, r0 + r, a + t0 + t, c + (t0 + t) * ldc + r, ldc);
        }
        return;
    }
    for (size_t i = 0; i < nr; i++) {
        const uint8_t *row = m->data + (r0 + i) * m->row_stride;
        float *w = tile + i * kp;
        for (size_t b = 0; b < kp / 32; b++) {
            __m256 v[4];
            dec4(m->fmt, row, m->scale_off, b, v);
            for (int j = 0; j < 4; j++)
                _mm256_store_ps(w + b * 32 + 8 * (size_t)j, v[j]);
        }
    }
    float *part = tile + nr * kp; /* [nt rounded up to MXI_NR][nr][8] */
    memset(part, 0, (nt + MXI_NR - 1) / MXI_NR * MXI_NR * nr * 8 * sizeof(float));
    for (size_t k0 = 0; k0 < kp; k0 += MXI_KC) {
        size_t k1 = k0 + MXI_KC < kp ? k0 + MXI_KC : kp;
        for (size_t t = 0; t < nt; t += MXI_NR) {
            /* a short last group repeats its last token (results discarded: the
             * partials of those rows lie past nt), so every group runs full width */
            const float *ap[MXI_NR];
            for (size_t u = 0; u < MXI_NR; u++)
                ap[u] = a[t + u < nt ? t + u : nt - 1];
            size_t i = 0;
            for (; i + MXI_MR <= nr; i += MXI_MR)
                micro_full(tile + i * kp, kp, k0, k1, ap, part + (t * nr + i) * 8, nr);
            for (; i < nr; i++)
                for (size_t u = 0; u < MXI_NR && t + u < nt; u++)
                    micro_one(tile + i * kp, k0, k1, ap[u], part + ((t + u) * nr + i) * 8);
        }
    }
    for (size_t t = 0; t < nt; t++)
        for (size_t i = 0; i < nr; i++)
            c[t * ldc + i] = hsum8(_mm256_load_ps(part + (t * nr + i) * 8));
}
