/* mxep cpu backend, AVX2 + FMA level: 16 YMM registers. FP32 kernels (BF16 and
 * FP8 weights) with a 3 rows x 4 tokens tile; MXFP4 integer kernels with 3
 * tokens per tiled micro-kernel call. */
#define MXI_GEMM_NAME mxi_cpu_gemm_avx2
#define MXI_MR 3
#define MXI_NR 4
#include "gemm_body.h"

#define MXI_Q4_NAME mxi_cpu_q4_avx2
#define MXI_Q4_MR 3
#define MXI_Q4_NR 3
#include "q4_body.h"

/* mxi_cpu_qact with AVX2 (the AVX-512 and AMX levels use it too): the same
 * integers and scales, bit for bit. cvtps2dq rounds to nearest even like the
 * scalar lrintf (both in the default rounding mode), the products x * 2^(14 - e)
 * are exact (|x * 2^(14 - e)| < 2^15, never below 2^-126 unless they round to
 * 0 either way), vpminsd clamps at 2^15 - 1 like the scalar code, and no A is
 * below -2^15, so the int16 packs never saturate. The scalar one takes ~3 ns
 * per element (an lrintf call and byte stores: ~4% of a W4A16 layer at qwen3
 * T = 128 at the AVX-512 level), this one ~0.6. */
void mxi_cpu_qact_avx2(const float *x, size_t cols, size_t nbp, float s, uint8_t *dst)
{
    const mxi_cpu_qact_out_t out = mxi_cpu_qact_out(dst, nbp);
    const __m256i absm = _mm256_set1_epi32(0x7FFFFFFF);
    /* within each 8-byte run (one q-load's elements 8q..8q+7): the even
     * elements' bytes, then the odd ones' (the planes' nibble y = 0, 1) */
    const __m256i eo = _mm256_setr_epi8(0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15, 0, 2, 4, 6, 1, 3, 5, 7, 8,
                                        10, 12, 14, 9, 11, 13, 15);
    for (size_t b = 0; b < nbp; b++) {
        size_t k0 = 32 * b, n = k0 < cols ? (cols - k0 < 32 ? cols - k0 : 32) : 0;
        float xb[32];
        const float *xp = x + k0;
        if (n < 32) { /* a short last block, or padding: zeros beyond cols */
            memset(xb, 0, sizeof xb);
            if (n)
                memcpy(xb, xp, n * sizeof *xb);
            xp = xb;
        }
        __m256 v[4];
        __m256i mx = _mm256_setzero_si256();
        for (int i = 0; i < 4; i++) {
            v[i] = _mm256_loadu_ps(xp + 8 * i);
            mx = _mm256_max_epu32(mx, _mm256_and_si256(_mm256_castps_si256(v[i]), absm));
        }
        __m128i m4 = _mm_max_epu32(_mm256_castsi256_si128(mx), _mm256_extracti128_si256(mx, 1));
        m4 = _mm_max_epu32(m4, _mm_shuffle_epi32(m4, 0x4E));
        m4 = _mm_max_epu32(m4, _mm_shuffle_epi32(m4, 0xB1));
        uint32_t mb = (uint32_t)_mm_cvtsi128_si32(m4);
        __m256i q0, q1; /* A_k as int16, elements 0..15 and 16..31 */
        int32_t sum = 0;
        if (mb >= 0x7F800000u) { /* Inf or NaN in the block */
            q0 = q1 = _mm256_setzero_si256();
            uint32_t nan = 0x7FC00000u;
            memcpy(&out.as[b], &nan, sizeof nan);
        } else {
            int e = mb == 0 ? 0 : (int)(mb >> 23) - 127;
            e = e < -113 ? -113 : e;
            __m256 mul = _mm256_castsi256_ps(_mm256_set1_epi32((14 - e + 127) << 23));
            __m256i a[4];
            for (int i = 0; i < 4; i++)
                a[i] = _mm256_min_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(v[i], mul)), _mm256_set1_epi32(32767));
            __m256i t = _mm256_add_epi32(_mm256_add_epi32(a[0], a[1]), _mm256_add_epi32(a[2], a[3]));
            __m128i t4 = _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
            t4 = _mm_add_epi32(t4, _mm_shuffle_epi32(t4, 0x4E));
            t4 = _mm_add_epi32(t4, _mm_shuffle_epi32(t4, 0xB1));
            sum = _mm_cvtsi128_si32(t4);
            /* packs interleaves the 128-bit lanes; 0xD8 puts them back in order */
            q0 = _mm256_permute4x64_epi64(_mm256_packs_epi32(a[0], a[1]), 0xD8);
            q1 = _mm256_permute4x64_epi64(_mm256_packs_epi32(a[2], a[3]), 0xD8);
            uint32_t sc = (uint32_t)(e - 1 + 127) << 23; /* 2^(e-1) >= 2^-114: normal */
            float f;
            memcpy(&f, &sc, sizeof f);
            out.as[b] = f * s;
        }
        out.corr[b] = 12 * sum;
        /* high bytes (A >> 8, signed) and low bytes (A & 255) in element order */
        const __m256i lom = _mm256_set1_epi16(0xFF);
        __m256i hb =
            _mm256_permute4x64_epi64(_mm256_packs_epi16(_mm256_srai_epi16(q0, 8), _mm256_srai_epi16(q1, 8)), 0xD8);
        __m256i lb =
            _mm256_permute4x64_epi64(_mm256_packus_epi16(_mm256_and_si256(q0, lom), _mm256_and_si256(q1, lom)), 0xD8);
        _mm256_storeu_si256((__m256i *)(out.amx + 64 * b), hb);
        _mm256_storeu_si256((__m256i *)(out.amx + 64 * b + 32), lb);
        /* planes: dword (q, y) of block j = bytes of elements 8q + y + {0, 2, 4, 6} */
        uint8_t ph[32], plo[32];
        int16_t qb[32];
        _mm256_storeu_si256((__m256i *)ph, _mm256_shuffle_epi8(hb, eo));
        _mm256_storeu_si256((__m256i *)plo, _mm256_shuffle_epi8(lb, eo));
        _mm256_storeu_si256((__m256i *)qb, q0);
        _mm256_storeu_si256((__m256i *)(qb + 16), q1);
        size_t g = b / 8, j = b % 8;
        for (unsigned q = 0; q < 4; q++)
            for (unsigned y = 0; y < 2; y++) {
                int8_t *o = out.pl + 512 * g + 128 * q + 32 * y + 4 * j;
                memcpy(o, ph + 8 * q + 4 * y, 4);
                memcpy(o + 64, plo + 8 * q + 4 * y, 4);
            }
        /* tiled layout: step st = 4q + c holds elements 2 st, 2 st + 1 */
        for (unsigned st = 0; st < 16; st++)
            memcpy(out.tq + 256 * g + 16 * st + 2 * j, qb + 2 * st, 4);
    }
}
