/* mxep cpu backend: the 8-lane FP32 GEMM body shared by avx2.c and avx512.c.
 * Include after defining MXI_GEMM_NAME (the function to define), MXI_MR and
 * MXI_NR (rows x tokens of the tiled micro-kernel, sized to the register file:
 * 3x4 with 16 YMM registers, 4x6 with the 32 registers AVX-512VL gives).
 *
 * Every path obeys the contract of cpu_internal.h: one 8-lane accumulator per
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

/* FP32 bits of each E8M0 byte: 2^(b-127); byte 0 is the subnormal 2^-127, 0xFF NaN. */
static const uint32_t e8m0_bits[256] = {
    0x00400000u, 0x00800000u, 0x01000000u, 0x01800000u, 0x02000000u, 0x02800000u, 0x03000000u, 0x03800000u, 0x04000000u,
    0x04800000u, 0x05000000u, 0x05800000u, 0x06000000u, 0x06800000u, 0x07000000u, 0x07800000u, 0x08000000u, 0x08800000u,
    0x09000000u, 0x09800000u, 0x0A000000u, 0x0A800000u, 0x0B000000u, 0x0B800000u, 0x0C000000u, 0x0C800000u, 0x0D000000u,
    0x0D800000u, 0x0E000000u, 0x0E800000u, 0x0F000000u, 0x0F800000u, 0x10000000u, 0x10800000u, 0x11000000u, 0x11800000u,
    0x12000000u, 0x12800000u, 0x13000000u, 0x13800000u, 0x14000000u, 0x14800000u, 0x15000000u, 0x15800000u, 0x16000000u,
    0x16800000u, 0x17000000u, 0x17800000u, 0x18000000u, 0x18800000u, 0x19000000u, 0x19800000u, 0x1A000000u, 0x1A800000u,
    0x1B000000u, 0x1B800000u, 0x1C000000u, 0x1C800000u, 0x1D000000u, 0x1D800000u, 0x1E000000u, 0x1E800000u, 0x1F000000u,
    0x1F800000u, 0x20000000u, 0x20800000u, 0x21000000u, 0x21800000u, 0x22000000u, 0x22800000u, 0x23000000u, 0x23800000u,
    0x24000000u, 0x24800000u, 0x25000000u, 0x25800000u, 0x26000000u, 0x26800000u, 0x27000000u, 0x27800000u, 0x28000000u,
    0x28800000u, 0x29000000u, 0x29800000u, 0x2A000000u, 0x2A800000u, 0x2B000000u, 0x2B800000u, 0x2C000000u, 0x2C800000u,
    0x2D000000u, 0x2D800000u, 0x2E000000u, 0x2E800000u, 0x2F000000u, 0x2F800000u, 0x30000000u, 0x30800000u, 0x31000000u,
    0x31800000u, 0x32000000u, 0x32800000u, 0x33000000u, 0x33800000u, 0x34000000u, 0x34800000u, 0x35000000u, 0x35800000u,
    0x36000000u, 0x36800000u, 0x37000000u, 0x37800000u, 0x38000000u, 0x38800000u, 0x39000000u, 0x39800000u, 0x3A000000u,
    0x3A800000u, 0x3B000000u, 0x3B800000u, 0x3C000000u, 0x3C800000u, 0x3D000000u, 0x3D800000u, 0x3E000000u, 0x3E800000u,
    0x3F000000u, 0x3F800000u, 0x40000000u, 0x40800000u, 0x41000000u, 0x41800000u, 0x42000000u, 0x42800000u, 0x43000000u,
    0x43800000u, 0x44000000u, 0x44800000u, 0x45000000u, 0x45800000u, 0x46000000u, 0x46800000u, 0x47000000u, 0x47800000u,
    0x48000000u, 0x48800000u, 0x49000000u, 0x49800000u, 0x4A000000u, 0x4A800000u, 0x4B000000u, 0x4B800000u, 0x4C000000u,
    0x4C800000u, 0x4D000000u, 0x4D800000u, 0x4E000000u, 0x4E800000u, 0x4F000000u, 0x4F800000u, 0x50000000u, 0x50800000u,
    0x51000000u, 0x51800000u, 0x52000000u, 0x52800000u, 0x53000000u, 0x53800000u, 0x54000000u, 0x54800000u, 0x55000000u,
    0x55800000u, 0x56000000u, 0x56800000u, 0x57000000u, 0x57800000u, 0x58000000u, 0x58800000u, 0x59000000u, 0x59800000u,
    0x5A000000u, 0x5A800000u, 0x5B000000u, 0x5B800000u, 0x5C000000u, 0x5C800000u, 0x5D000000u, 0x5D800000u, 0x5E000000u,
    0x5E800000u, 0x5F000000u, 0x5F800000u, 0x60000000u, 0x60800000u, 0x61000000u, 0x61800000u, 0x62000000u, 0x62800000u,
    0x63000000u, 0x63800000u, 0x64000000u, 0x64800000u, 0x65000000u, 0x65800000u, 0x66000000u, 0x66800000u, 0x67000000u,
    0x67800000u, 0x68000000u, 0x68800000u, 0x69000000u, 0x69800000u, 0x6A000000u, 0x6A800000u, 0x6B000000u, 0x6B800000u,
    0x6C000000u, 0x6C800000u, 0x6D000000u, 0x6D800000u, 0x6E000000u, 0x6E800000u, 0x6F000000u, 0x6F800000u, 0x70000000u,
    0x70800000u, 0x71000000u, 0x71800000u, 0x72000000u, 0x72800000u, 0x73000000u, 0x73800000u, 0x74000000u, 0x74800000u,
    0x75000000u, 0x75800000u, 0x76000000u, 0x76800000u, 0x77000000u, 0x77800000u, 0x78000000u, 0x78800000u, 0x79000000u,
    0x79800000u, 0x7A000000u, 0x7A800000u, 0x7B000000u, 0x7B800000u, 0x7C000000u, 0x7C800000u, 0x7D000000u, 0x7D800000u,
    0x7E000000u, 0x7E800000u, 0x7F000000u, 0x7FC00000u,
};

/* Decodes block b (32 columns) of a packed row into w[0..3] = columns 8j..8j+7. */
static inline void dec4(int fmt, const uint8_t *row, size_t scale_off, size_t b, __m256 w[4])
{
    if (fmt == MXI_CPU_MXFP4) {
        /* byte 3 and byte 2 of the FP32 value of each E2M1 code (bytes 1, 0 are zero) */
        const __m256i t3 = _mm256_setr_epi8(0x00, 0x3F, 0x3F, 0x3F, 0x40, 0x40, 0x40, 0x40, (char)0x80, (char)0xBF,
                                            (char)0xBF, (char)0xBF, (char)0xC0, (char)0xC0, (char)0xC0, (char)0xC0,
                                            0x00, 0x3F, 0x3F, 0x3F, 0x40, 0x40, 0x40, 0x40, (char)0x80, (char)0xBF,
                                            (char)0xBF, (char)0xBF, (char)0xC0, (char)0xC0, (char)0xC0, (char)0xC0);
        const __m256i t2 = _mm256_setr_epi8(0x00, 0x00, (char)0x80, (char)0xC0, 0x00, 0x40, (char)0x80, (char)0xC0,
                                            0x00, 0x00, (char)0x80, (char)0xC0, 0x00, 0x40, (char)0x80, (char)0xC0,
                                            0x00, 0x00, (char)0x80, (char)0xC0, 0x00, 0x40, (char)0x80, (char)0xC0,
                                            0x00, 0x00, (char)0x80, (char)0xC0, 0x00, 0x40, (char)0x80, (char)0xC0);
        __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(row + b * 16)));
        v = _mm256_and_si256(_mm256_srlv_epi32(v, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4)), _mm256_set1_epi8(0x0F));
        __m256i b3 = _mm256_shuffle_epi8(t3, v), b2 = _mm256_shuffle_epi8(t2, v);
        __m256i lo = _mm256_unpacklo_epi8(b2, b3), hi = _mm256_unpackhi_epi8(b2, b3);
        __m256i z = _mm256_setzero_si256();
        __m256 s = _mm256_castsi256_ps(_mm256_set1_epi32((int)e8m0_bits[row[scale_off + b]]));
        w[0] = _mm256_mul_ps(_mm256_castsi256_ps(_mm256_unpacklo_epi16(z, lo)), s);
        w[1] = _mm256_mul_ps(_mm256_castsi256_ps(_mm256_unpackhi_epi16(z, lo)), s);
        w[2] = _mm256_mul_ps(_mm256_castsi256_ps(_mm256_unpacklo_epi16(z, hi)), s);
        w[3] = _mm256_mul_ps(_mm256_castsi256_ps(_mm256_unpackhi_epi16(z, hi)), s);
    } else if (fmt == MXI_CPU_FP8) {
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

/* One set per packed format, so the decoder's format test folds away. One token
 * of MXFP4 runs 8 rows at a time (8 independent FMA chains); the others 4. */
#define MXI_DEF_STREAMS(F, FMT)                                                                                        \
    MXI_DEF_STREAM(F, FMT, 4, 1)                                                                                       \
    MXI_DEF_STREAM(F, FMT, 8, 1)                                                                                       \
    MXI_DEF_STREAM(F, FMT, 4, 2)                                                                                       \
    MXI_DEF_STREAM(F, FMT, 2, 3)                                                                                       \
    MXI_DEF_STREAM(F, FMT, 2, 4)                                                                                       \
    MXI_DEF_STREAM(F, FMT, 1, 1)
MXI_DEF_STREAMS(q4, MXI_CPU_MXFP4)
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
                {stream_q4_8_1, stream_q4_4_2, stream_q4_2_3, stream_q4_2_4},
                {stream_f8_4_1, stream_f8_4_2, stream_f8_2_3, stream_f8_2_4},
            };
            static const stream_fn one[3] = {stream_bf_1_1, stream_q4_1_1, stream_f8_1_1};
            stream_fn f = fns[m->fmt][tn - 1];
            size_t R = tn == 1 ? (m->fmt == MXI_CPU_MXFP4 ? 8 : 4) : tn == 2 ? 4 : 2, r = 0;
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
