/* quant/x86_avx2.c: AVX2 twins of the MXFP4 and FP8 decoders. Compiled with
 * -mavx2 -mfma -mf16c -ffp-contract=off; called only after mx_quant_have_avx2().
 * Results are bit-identical to the scalar code (tests/quant/test_fast_paths.c):
 * MXFP4 values are built from bits as in the scalar code; FP8 uses the same
 * single IEEE multiply per element and the same NaN rule. */
#include <immintrin.h>

#include "mxep/quant.h"
#include "quant_internal.h"

/* E2M1 codes (0..15) times 2^(byte - 127), built from bits as in quant/mxfp4.c
 * e2m1_scaled(): exact and independent of FTZ/DAZ. mags holds the FP32 bit
 * patterns of |E2M1| indexed by code & 7 (vpermd uses the low 3 bits). */
static inline __m256 e2m1_scaled_8(__m256i codes, __m256i mags, __m256i bias)
{
    __m256i mag = _mm256_permutevar8x32_epi32(mags, codes);
    __m256i sign = _mm256_and_si256(_mm256_slli_epi32(codes, 28), _mm256_set1_epi32((int)0x80000000u));
    __m256i frac = _mm256_and_si256(mag, _mm256_set1_epi32(0x7FFFFF));
    __m256i ne = _mm256_add_epi32(_mm256_srli_epi32(mag, 23), bias); /* byte - 127 + exponent field */
    __m256i normal = _mm256_or_si256(_mm256_slli_epi32(ne, 23), frac);
    __m256i shift = _mm256_sub_epi32(_mm256_set1_epi32(1), ne);
    __m256i sub = _mm256_srlv_epi32(_mm256_or_si256(frac, _mm256_set1_epi32(0x800000)), shift);
    __m256i is_sub = _mm256_cmpgt_epi32(_mm256_set1_epi32(1), ne);
    __m256i is_inf = _mm256_cmpgt_epi32(ne, _mm256_set1_epi32(254));
    __m256i is_zero = _mm256_cmpeq_epi32(mag, _mm256_setzero_si256());
    __m256i v = _mm256_blendv_epi8(normal, sub, is_sub);
    v = _mm256_blendv_epi8(v, _mm256_set1_epi32(0x7F800000), is_inf);
    v = _mm256_andnot_si256(is_zero, v);
    return _mm256_castsi256_ps(_mm256_or_si256(v, sign));
}

/* One 32-element block into out[0..31]. */
static inline void decode_block(const uint8_t *p, uint8_t byte, __m256i mags, float *out)
{
    if (byte == 0xFF) {
        __m256 nan = _mm256_castsi256_ps(_mm256_set1_epi32((int)MXI_F32_QNAN));
        _mm256_storeu_ps(out, nan);
        _mm256_storeu_ps(out + 8, nan);
        _mm256_storeu_ps(out + 16, nan);
        _mm256_storeu_ps(out + 24, nan);
        return;
    }
    __m128i bytes = _mm_loadu_si128((const __m128i *)p);
    __m128i lo = _mm_and_si128(bytes, _mm_set1_epi8(0x0F));
    __m128i hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), _mm_set1_epi8(0x0F));
    __m128i e0 = _mm_unpacklo_epi8(lo, hi); /* elements 0..15 in order */
    __m128i e1 = _mm_unpackhi_epi8(lo, hi); /* elements 16..31 */
    __m256i bias = _mm256_set1_epi32((int)byte - 127);
    _mm256_storeu_ps(out, e2m1_scaled_8(_mm256_cvtepu8_epi32(e0), mags, bias));
    _mm256_storeu_ps(out + 8, e2m1_scaled_8(_mm256_cvtepu8_epi32(_mm_srli_si128(e0, 8)), mags, bias));
    _mm256_storeu_ps(out + 16, e2m1_scaled_8(_mm256_cvtepu8_epi32(e1), mags, bias));
    _mm256_storeu_ps(out + 24, e2m1_scaled_8(_mm256_cvtepu8_epi32(_mm_srli_si128(e1, 8)), mags, bias));
}

static inline __m256i e2m1_mags(void)
{
    return _mm256_castps_si256(_mm256_setr_ps(0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f));
}

void mxi_quant_mxfp4_decode_row_avx2(const uint8_t *packed, const uint8_t *scales, size_t k, float *out)
{
    __m256i mags = e2m1_mags();
    for (size_t b = 0; b < k / MX_MXFP4_BLOCK; b++)
        decode_block(packed + b * (MX_MXFP4_BLOCK / 2), scales[b], mags, out + b * MX_MXFP4_BLOCK);
}

/* FP32 -> BF16, round to nearest even; NaN kept quiet (as mx_quant_bf16_from_f32). */
static inline __m128i f32_to_bf16_8(__m256 v)
{
    __m256i x = _mm256_castps_si256(v);
    __m256i abs = _mm256_and_si256(x, _mm256_set1_epi32(0x7FFFFFFF));
    __m256i isnan = _mm256_cmpgt_epi32(abs, _mm256_set1_epi32(0x7F800000));
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(x, _mm256_set1_epi32(0x7FFF)), lsb), 16);
    __m256i q = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(0x8000)),
                                _mm256_set1_epi32(0x7FC0));
    r = _mm256_blendv_epi8(r, q, isnan);
    /* pack 8 x u32 (each < 2^16) to 8 x u16 */
    __m128i lo = _mm256_castsi256_si128(r), hi = _mm256_extracti128_si256(r, 1);
    return _mm_packus_epi32(lo, hi);
}

void mxi_quant_mxfp4_decode_row_bf16_avx2(const uint8_t *packed, const uint8_t *scales, size_t k, uint16_t *out)
{
    __m256i mags = e2m1_mags();
    float tmp[MX_MXFP4_BLOCK];
    for (size_t b = 0; b < k / MX_MXFP4_BLOCK; b++) {
        decode_block(packed + b * (MX_MXFP4_BLOCK / 2), scales[b], mags, tmp);
        for (int i = 0; i < MX_MXFP4_BLOCK; i += 8)
            _mm_storeu_si128((__m128i *)(out + b * MX_MXFP4_BLOCK + i), f32_to_bf16_8(_mm256_loadu_ps(tmp + i)));
    }
}

/* E4M3FN byte -> float, 8 at a time, by integer construction (no reliance on
 * FP32 subnormal arithmetic: every E4M3FN value is an FP32 normal). */
static inline __m256 e4m3fn_8(__m256i b)
{
    __m256i sign = _mm256_slli_epi32(_mm256_and_si256(b, _mm256_set1_epi32(0x80)), 24);
    __m256i mag = _mm256_and_si256(b, _mm256_set1_epi32(0x7F));
    /* normal: exponent field e (1..15) -> e - 7 + 127; mantissa m -> m << 20 */
    __m256i normal = _mm256_add_epi32(_mm256_slli_epi32(mag, 20), _mm256_set1_epi32(120 << 23));
    /* subnormal (mag < 8): mag * 2^-9, exact in FP32 */
    __m256i sub = _mm256_castps_si256(_mm256_mul_ps(_mm256_cvtepi32_ps(mag), _mm256_set1_ps(1.0f / 512.0f)));
    __m256i is_sub = _mm256_cmpgt_epi32(_mm256_set1_epi32(8), mag);
    __m256i is_nan = _mm256_cmpeq_epi32(mag, _mm256_set1_epi32(0x7F));
    __m256i v = _mm256_blendv_epi8(normal, sub, is_sub);
    v = _mm256_blendv_epi8(v, _mm256_set1_epi32((int)MXI_F32_QNAN), is_nan);
    return _mm256_castsi256_ps(_mm256_or_si256(v, sign));
}

/* 8 bytes -> value * scale; a NaN code keeps its own NaN (see quant/fp8.c). */
static inline __m256 fp8_scaled_8(const uint8_t *q, __m256 s)
{
    __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)q));
    __m256 v = e4m3fn_8(b);
    __m256i is_nan = _mm256_cmpeq_epi32(_mm256_and_si256(b, _mm256_set1_epi32(0x7F)), _mm256_set1_epi32(0x7F));
    return _mm256_blendv_ps(_mm256_mul_ps(v, s), v, _mm256_castsi256_ps(is_nan));
}

static inline float fp8_scaled_1(uint8_t q, float scale)
{
    float v = mx_quant_e4m3fn_to_f32(q);
    return (q & 0x7F) == 0x7F ? v : v * scale;
}

void mxi_quant_fp8_decode_avx2(const uint8_t *q, size_t n, float scale, float *out)
{
    __m256 s = _mm256_set1_ps(scale);
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, fp8_scaled_8(q + i, s));
    for (; i < n; i++)
        out[i] = fp8_scaled_1(q[i], scale);
}

void mxi_quant_fp8_decode_bf16_avx2(const uint8_t *q, size_t n, float scale, uint16_t *out)
{
    __m256 s = _mm256_set1_ps(scale);
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(out + i), f32_to_bf16_8(fp8_scaled_8(q + i, s)));
    for (; i < n; i++)
        out[i] = mx_quant_bf16_from_f32(fp8_scaled_1(q[i], scale));
}

/* ---------------------------------------------------------------- FP8 E4M3FN dynamic quantizers
 * Twins of quant/fp8.c group_quant(): the same bytes and scales. amax is an
 * integer max over the finite |x| bit patterns (the order of non-negative
 * floats), the scale is the same single FP32 division as the scalar code,
 * each element the same IEEE division x / s, and the E4M3FN rounding is done
 * on the bits (round to nearest even on the exact quotient, as
 * round_magnitude() in quant/scalar.c), so nothing depends on FTZ/DAZ. */

static inline float fp8_dynamic_scale(float amax) /* == quant/fp8.c dynamic_scale() */
{
    float s = amax / MX_FP8_E4M3_MAX;
    return s < MX_FP8_MIN_SCALE ? MX_FP8_MIN_SCALE : s;
}

/* 8 floats -> 8 E4M3FN codes (in the low byte of each 32-bit lane). */
static inline __m256i e4m3fn_from_f32_8(__m256 v)
{
    const __m256i bits = _mm256_castps_si256(v);
    const __m256i abits = _mm256_and_si256(bits, _mm256_set1_epi32(0x7FFFFFFF));
    const __m256i ef = _mm256_srli_epi32(abits, 23);
    /* normal in E4M3 (binary32 exponent field >= 121, i.e. |v| >= 2^-6): RNE at
     * 3 mantissa bits by the add trick, then rebias 127 -> 7 (960 = 120 << 3) */
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(abits, 20), _mm256_set1_epi32(1));
    __m256i normal = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(abits, _mm256_set1_epi32(0x7FFFF)), lsb), 20);
    normal = _mm256_sub_epi32(normal, _mm256_set1_epi32(960));
    /* subnormal in E4M3: units of 2^-9 = significand >> (141 - ef), RNE; shift
     * clamped to 32 (anything smaller than 2^-9/2 gives 0) */
    __m256i shift = _mm256_min_epi32(_mm256_sub_epi32(_mm256_set1_epi32(141), ef), _mm256_set1_epi32(32));
    __m256i sig = _mm256_or_si256(_mm256_and_si256(abits, _mm256_set1_epi32(0x7FFFFF)), _mm256_set1_epi32(0x800000));
    __m256i q = _mm256_srlv_epi32(sig, shift);
    __m256i one = _mm256_set1_epi32(1);
    __m256i rem = _mm256_and_si256(sig, _mm256_sub_epi32(_mm256_sllv_epi32(one, shift), one));
    __m256i half = _mm256_sllv_epi32(one, _mm256_sub_epi32(shift, one));
    /* rem, half < 2^32 unsigned; half <= 2^31 and rem < 2^24 when shift is 32,
     * otherwise both < 2^31: a signed compare is exact after xor with 2^31 */
    const __m256i flip = _mm256_set1_epi32((int)0x80000000u);
    __m256i rem_gt = _mm256_cmpgt_epi32(_mm256_xor_si256(rem, flip), _mm256_xor_si256(half, flip));
    __m256i rem_eq = _mm256_cmpeq_epi32(rem, half);
    __m256i odd = _mm256_cmpeq_epi32(_mm256_and_si256(q, one), one);
    __m256i up = _mm256_or_si256(rem_gt, _mm256_and_si256(rem_eq, odd));
    __m256i sub = _mm256_sub_epi32(q, up); /* up is -1 where rounding up */
    __m256i is_normal = _mm256_cmpgt_epi32(ef, _mm256_set1_epi32(120));
    __m256i mag = _mm256_blendv_epi8(sub, normal, is_normal);
    mag = _mm256_min_epi32(mag, _mm256_set1_epi32(0x7E)); /* saturate (Inf too) */
    __m256i is_nan = _mm256_cmpgt_epi32(abits, _mm256_set1_epi32(0x7F800000));
    mag = _mm256_blendv_epi8(mag, _mm256_set1_epi32(0x7F), is_nan);
    __m256i sign = _mm256_and_si256(_mm256_srli_epi32(bits, 24), _mm256_set1_epi32(0x80));
    return _mm256_or_si256(mag, sign);
}

static inline void store_codes_8(uint8_t *q, __m256i codes)
{
    __m128i w = _mm_packus_epi32(_mm256_castsi256_si128(codes), _mm256_extracti128_si256(codes, 1));
    _mm_storel_epi64((__m128i *)q, _mm_packus_epi16(w, w));
}

static inline __m256 load8(const float *xf, const uint16_t *xb, size_t i)
{
    if (xb)
        return _mm256_castsi256_ps(
            _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(xb + i))), 16));
    return _mm256_loadu_ps(xf + i);
}

static inline float load1(const float *xf, const uint16_t *xb, size_t i)
{
    return xb ? mxi_bits_f32((uint32_t)xb[i] << 16) : xf[i];
}

/* Either xf (FP32) or xb (BF16, widened exactly) is non-NULL. */
void mxi_quant_fp8_group_avx2(const float *xf, const uint16_t *xb, size_t rows, size_t cols, size_t group, uint8_t *q,
                              float *scales)
{
    const size_t ng = (cols + group - 1) / group;
    const __m256i absmask = _mm256_set1_epi32(0x7FFFFFFF), inf = _mm256_set1_epi32(0x7F800000);
    for (size_t r = 0; r < rows; r++) {
        for (size_t g = 0; g < ng; g++) {
            const size_t c0 = r * cols + g * group;
            const size_t len = (g + 1) * group < cols ? group : cols - g * group;
            __m256i vmax = _mm256_setzero_si256();
            size_t i = 0;
            for (; i + 8 <= len; i += 8) {
                __m256i a = _mm256_and_si256(_mm256_castps_si256(load8(xf, xb, c0 + i)), absmask);
                a = _mm256_and_si256(a, _mm256_cmpgt_epi32(inf, a)); /* non-finite -> 0 */
                vmax = _mm256_max_epi32(vmax, a);
            }
            __m128i m4 = _mm_max_epi32(_mm256_castsi256_si128(vmax), _mm256_extracti128_si256(vmax, 1));
            m4 = _mm_max_epi32(m4, _mm_shuffle_epi32(m4, 0x4E));
            m4 = _mm_max_epi32(m4, _mm_shuffle_epi32(m4, 0xB1));
            uint32_t amax_bits = (uint32_t)_mm_cvtsi128_si32(m4);
            for (; i < len; i++) {
                uint32_t a = mxi_f32_bits(load1(xf, xb, c0 + i)) & 0x7FFFFFFFu;
                if (a < 0x7F800000u && a > amax_bits)
                    amax_bits = a;
            }
            const float s = fp8_dynamic_scale(mxi_bits_f32(amax_bits));
            const __m256 vs = _mm256_set1_ps(s);
            i = 0;
            for (; i + 8 <= len; i += 8)
                store_codes_8(q + c0 + i, e4m3fn_from_f32_8(_mm256_div_ps(load8(xf, xb, c0 + i), vs)));
            for (; i < len; i++)
                q[c0 + i] = mx_quant_e4m3fn_from_f32(load1(xf, xb, c0 + i) / s);
            scales[r * ng + g] = s;
        }
    }
}
