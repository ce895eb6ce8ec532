/* coordinator/x86_avx2.c: AVX2 twins of the coordinator's hot loops, called
 * only when the CPU has AVX2 (coord_internal.h mxi_coord_use_avx2()).
 *
 * Compiled with -mavx2 -ffp-contract=off and WITHOUT -mfma: every product is
 * one IEEE multiply and every sum one IEEE add, exactly as in the scalar C
 * (ISO C mode, no contraction). Each result keeps the scalar summation order:
 *  - router logits: one accumulator per (token, expert), summed in ascending
 *    h from 0, the bias added last. Vectors run across TOKENS (8 per lane
 *    group), never across h; K-blocking stores and reloads the accumulator,
 *    which changes no bit. So a token's logits do not depend on its batch.
 *  - combine: one accumulator per output element, rows added in the given
 *    order from 0; vectors run across h (independent elements). */
#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>

#include "coord_internal.h"

/* ---------------------------------------------------------------- router logits */

/* acc[6][16] (16 tokens x 6 experts) += W[e][k0..k0+kc) x xp (panel: [kc][16]).
 * Written out by hand so that the 12 accumulators stay in registers. */
static void logit_tile6(const float *W, size_t H, size_t k0, size_t kc, const float *xp, float *acc)
{
    __m256 a00 = _mm256_loadu_ps(acc + 0), a01 = _mm256_loadu_ps(acc + 8);
    __m256 a10 = _mm256_loadu_ps(acc + 16), a11 = _mm256_loadu_ps(acc + 24);
    __m256 a20 = _mm256_loadu_ps(acc + 32), a21 = _mm256_loadu_ps(acc + 40);
    __m256 a30 = _mm256_loadu_ps(acc + 48), a31 = _mm256_loadu_ps(acc + 56);
    __m256 a40 = _mm256_loadu_ps(acc + 64), a41 = _mm256_loadu_ps(acc + 72);
    __m256 a50 = _mm256_loadu_ps(acc + 80), a51 = _mm256_loadu_ps(acc + 88);
    const float *w0 = W + k0, *w1 = w0 + H, *w2 = w1 + H, *w3 = w2 + H, *w4 = w3 + H, *w5 = w4 + H;
    for (size_t h = 0; h < kc; h++) {
        const __m256 x0 = _mm256_loadu_ps(xp + h * 16), x1 = _mm256_loadu_ps(xp + h * 16 + 8);
        __m256 w;
#define MXI_STEP(wr, r0, r1)                                                                                           \
    w = _mm256_broadcast_ss(wr + h);                                                                                   \
    r0 = _mm256_add_ps(r0, _mm256_mul_ps(w, x0));                                                                      \
    r1 = _mm256_add_ps(r1, _mm256_mul_ps(w, x1));
        MXI_STEP(w0, a00, a01)
        MXI_STEP(w1, a10, a11)
        MXI_STEP(w2, a20, a21)
        MXI_STEP(w3, a30, a31)
        MXI_STEP(w4, a40, a41)
        MXI_STEP(w5, a50, a51)
#undef MXI_STEP
    }
    _mm256_storeu_ps(acc + 0, a00), _mm256_storeu_ps(acc + 8, a01);
    _mm256_storeu_ps(acc + 16, a10), _mm256_storeu_ps(acc + 24, a11);
    _mm256_storeu_ps(acc + 32, a20), _mm256_storeu_ps(acc + 40, a21);
    _mm256_storeu_ps(acc + 48, a30), _mm256_storeu_ps(acc + 56, a31);
    _mm256_storeu_ps(acc + 64, a40), _mm256_storeu_ps(acc + 72, a41);
    _mm256_storeu_ps(acc + 80, a50), _mm256_storeu_ps(acc + 88, a51);
}

/* One expert: acc[16] += W[e][k0..k0+kc) x xp. */
static void logit_tile1(const float *W, size_t k0, size_t kc, const float *xp, float *acc)
{
    __m256 a0 = _mm256_loadu_ps(acc), a1 = _mm256_loadu_ps(acc + 8);
    const float *w0 = W + k0;
    for (size_t h = 0; h < kc; h++) {
        const __m256 w = _mm256_broadcast_ss(w0 + h);
        a0 = _mm256_add_ps(a0, _mm256_mul_ps(w, _mm256_loadu_ps(xp + h * 16)));
        a1 = _mm256_add_ps(a1, _mm256_mul_ps(w, _mm256_loadu_ps(xp + h * 16 + 8)));
    }
    _mm256_storeu_ps(acc, a0);
    _mm256_storeu_ps(acc + 8, a1);
}

/* Logits of tokens [t0, t0 + nt) x experts [e0, e1), nt <= MXI_LOGIT_TB.
 * xp: scratch of MXI_LOGIT_TB * MXI_LOGIT_KC floats; acc: scratch of
 * MXI_LOGIT_TB * (e1 - e0) floats. */
void mxi_coord_logits_task_avx2(const float *W, const float *bias, size_t E, size_t H, const uint16_t *x, size_t t0,
                                size_t nt, size_t e0, size_t e1, float *logits, float *xp, float *acc)
{
    const size_t np = (nt + 15) / 16, ne = e1 - e0;
    /* acc layout: [panel][expert][16] */
    for (size_t i = 0; i < np * ne * 16; i++)
        acc[i] = 0.0f;
    for (size_t k0 = 0; k0 < H; k0 += MXI_LOGIT_KC) {
        const size_t kc = H - k0 < MXI_LOGIT_KC ? H - k0 : MXI_LOGIT_KC;
        /* pack x[t0.., k0..] as [panel][kc][16] FP32 (padded tokens 0) */
        for (size_t p = 0; p < np; p++) {
            float *dst = xp + p * MXI_LOGIT_KC * 16;
            for (size_t i = 0; i < 16; i++) {
                const size_t t = p * 16 + i;
                if (t < nt) {
                    const uint16_t *src = x + (t0 + t) * H + k0;
                    for (size_t h = 0; h < kc; h++)
                        dst[h * 16 + i] = mxi_bf16_to_f32(src[h]);
                } else {
                    for (size_t h = 0; h < kc; h++)
                        dst[h * 16 + i] = 0.0f;
                }
            }
        }
        size_t e = 0;
        for (; e + 6 <= ne; e += 6)
            for (size_t p = 0; p < np; p++)
                logit_tile6(W + (e0 + e) * H, H, k0, kc, xp + p * MXI_LOGIT_KC * 16, acc + (p * ne + e) * 16);
        for (; e < ne; e++) {
            for (size_t p = 0; p < np; p++)
                logit_tile1(W + (e0 + e) * H, k0, kc, xp + p * MXI_LOGIT_KC * 16, acc + (p * ne + e) * 16);
        }
    }
    for (size_t t = 0; t < nt; t++) {
        float *lt = logits + (t0 + t) * E + e0;
        const float *a = acc + (t / 16) * ne * 16 + t % 16;
        for (size_t e = 0; e < ne; e++)
            lt[e] = bias ? a[e * 16] + bias[e0 + e] : a[e * 16];
    }
}

/* ---------------------------------------------------------------- BF16 helpers */

static inline __m256 bf16_8(const uint16_t *p)
{
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}

/* FP32 -> BF16 exactly as mxi_bf16_from_f32: RNE, NaN -> (bits >> 16) | 0x40. */
static inline __m128i bf16_from_8(__m256 v)
{
    const __m256i u = _mm256_castps_si256(v);
    const __m256i hi = _mm256_srli_epi32(u, 16);
    const __m256i is_nan =
        _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7FFFFFFF)), _mm256_set1_epi32(0x7F800000));
    __m256i r =
        _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)), _mm256_and_si256(hi, _mm256_set1_epi32(1)));
    r = _mm256_srli_epi32(r, 16);
    r = _mm256_blendv_epi8(r, _mm256_or_si256(hi, _mm256_set1_epi32(0x40)), is_nan);
    return _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
}

/* ---------------------------------------------------------------- combine */

/* out[h] = bf16(sum_i w[i] * bf16 rows[i][h]), i in order, from 0. */
void mxi_coord_combine_rows_avx2(const uint16_t *const *rows, const float *weights, int n, size_t hidden, uint16_t *out)
{
    size_t h0 = 0;
    for (; h0 + 32 <= hidden; h0 += 32) {
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int i = 0; i < n; i++) {
            const uint16_t *r = rows[i] + h0;
            const __m256 w = _mm256_set1_ps(weights[i]);
            a0 = _mm256_add_ps(_mm256_mul_ps(w, bf16_8(r)), a0);
            a1 = _mm256_add_ps(_mm256_mul_ps(w, bf16_8(r + 8)), a1);
            a2 = _mm256_add_ps(_mm256_mul_ps(w, bf16_8(r + 16)), a2);
            a3 = _mm256_add_ps(_mm256_mul_ps(w, bf16_8(r + 24)), a3);
        }
        _mm_storeu_si128((__m128i *)(out + h0), bf16_from_8(a0));
        _mm_storeu_si128((__m128i *)(out + h0 + 8), bf16_from_8(a1));
        _mm_storeu_si128((__m128i *)(out + h0 + 16), bf16_from_8(a2));
        _mm_storeu_si128((__m128i *)(out + h0 + 24), bf16_from_8(a3));
    }
    for (; h0 + 8 <= hidden; h0 += 8) {
        __m256 a0 = _mm256_setzero_ps();
        for (int i = 0; i < n; i++)
            a0 = _mm256_add_ps(_mm256_mul_ps(_mm256_set1_ps(weights[i]), bf16_8(rows[i] + h0)), a0);
        _mm_storeu_si128((__m128i *)(out + h0), bf16_from_8(a0));
    }
    for (; h0 < hidden; h0++) {
        float a = 0.0f;
        for (int i = 0; i < n; i++)
            a += weights[i] * mxi_bf16_to_f32(rows[i][h0]);
        out[h0] = mxi_bf16_from_f32(a);
    }
}

/* out[h] = bf16(sum_i rows[i][h]), i in order, from 0 (REDUCE combine). */
void mxi_coord_sum_rows_avx2(const float *const *rows, int n, size_t hidden, uint16_t *out)
{
    size_t h0 = 0;
    for (; h0 + 32 <= hidden; h0 += 32) {
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int i = 0; i < n; i++) {
            const float *r = rows[i] + h0;
            a0 = _mm256_add_ps(a0, _mm256_loadu_ps(r));
            a1 = _mm256_add_ps(a1, _mm256_loadu_ps(r + 8));
            a2 = _mm256_add_ps(a2, _mm256_loadu_ps(r + 16));
            a3 = _mm256_add_ps(a3, _mm256_loadu_ps(r + 24));
        }
        _mm_storeu_si128((__m128i *)(out + h0), bf16_from_8(a0));
        _mm_storeu_si128((__m128i *)(out + h0 + 8), bf16_from_8(a1));
        _mm_storeu_si128((__m128i *)(out + h0 + 16), bf16_from_8(a2));
        _mm_storeu_si128((__m128i *)(out + h0 + 24), bf16_from_8(a3));
    }
    for (; h0 < hidden; h0++) {
        float a = 0.0f;
        for (int i = 0; i < n; i++)
            a += rows[i][h0];
        out[h0] = mxi_bf16_from_f32(a);
    }
}

/* out[i] = mxi_bf16_from_f32(in[i]) */
void mxi_coord_bf16_from_f32_avx2(const float *in, size_t n, uint16_t *out)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(out + i), bf16_from_8(_mm256_loadu_ps(in + i)));
    for (; i < n; i++)
        out[i] = mxi_bf16_from_f32(in[i]);
}
