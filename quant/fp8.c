/* quant/fp8.c: FP8 E4M3FN quantizers and decoders (FORMATS.md Part 1 and Part 2 section 3).
 *
 * q = e4m3fn(x / s): the FP32 quotient, then round to nearest even, saturating
 * at +-448. Scales multiply on the way back (x ~= q * s), as DeepSeek stores
 * `weight_scale_inv`. Dynamic scales are max(amax / 448, 1/(448*512)), so an
 * all-zero group gives scale 1/(448*512) and zero codes, never NaN.
 *
 * Non-finite inputs: amax is taken over the finite values only, so one NaN or
 * Inf does not poison its group's scale; a NaN element encodes as NaN (0x7F or
 * 0xFF), an Inf element saturates to +-448. Decoding: a NaN code decodes to
 * its own NaN whatever the scale. */
#include <math.h>

#include "mxep/quant.h"
#include "quant_internal.h"

static float finite_abs_or_zero(float v)
{
    uint32_t a = mxi_f32_bits(v) & 0x7FFFFFFFu;
    return a >= 0x7F800000u ? 0.0f : mxi_bits_f32(a);
}

static float dynamic_scale(float amax)
{
    float s = amax / MX_FP8_E4M3_MAX;
    return s < MX_FP8_MIN_SCALE ? MX_FP8_MIN_SCALE : s;
}

static int mul_overflows(size_t a, size_t b)
{
    return b != 0 && a > SIZE_MAX / 4 / b;
}

mx_status_t mx_quant_fp8_tensor_static(const float *x, size_t n, float scale, uint8_t *q_p)
{
    if (x == NULL || q_p == NULL)
        return mx_error_set(MX_ERR_INVALID, "mx_quant_fp8_tensor_static: NULL %s", x == NULL ? "x" : "q_p");
    if (!(scale > 0.0f) || !isfinite(scale))
        return mx_error_set(MX_ERR_INVALID, "mx_quant_fp8_tensor_static: scale %g: expected a finite value > 0",
                            (double)scale);
    for (size_t i = 0; i < n; i++)
        q_p[i] = mx_quant_e4m3fn_from_f32(x[i] / scale);
    return MX_OK;
}

static float load1(const float *xf, const uint16_t *xb, size_t i)
{
    return xb ? mxi_bits_f32((uint32_t)xb[i] << 16) : xf[i];
}

/* rows x cols, per row groups of `group` columns (the last may be short).
 * Input: xf (FP32) or, when xf is NULL, xb (BF16 widened exactly). */
static void group_quant2(const float *xf, const uint16_t *xb, size_t rows, size_t cols, size_t group, uint8_t *q,
                         float *scales)
{
    size_t ng = (cols + group - 1) / group;
    for (size_t r = 0; r < rows; r++) {
        for (size_t g = 0; g < ng; g++) {
            size_t c0 = g * group, c1 = c0 + group < cols ? c0 + group : cols;
            float amax = 0.0f;
            for (size_t c = c0; c < c1; c++) {
                float a = finite_abs_or_zero(load1(xf, xb, r * cols + c));
                if (a > amax)
                    amax = a;
            }
            float s = dynamic_scale(amax);
            for (size_t c = c0; c < c1; c++)
                q[r * cols + c] = mx_quant_e4m3fn_from_f32(load1(xf, xb, r * cols + c) / s);
            scales[r * ng + g] = s;
        }
    }
}

static void group_quant(const float *x, size_t rows, size_t cols, size_t group, uint8_t *q, float *scales)
{
    group_quant2(x, NULL, rows, cols, group, q, scales);
}

#if MXI_X86
/* quant/x86_avx2.c: the same bytes and scales as group_quant2(). */
void mxi_quant_fp8_group_avx2(const float *xf, const uint16_t *xb, size_t rows, size_t cols, size_t group, uint8_t *q,
                              float *scales);
#endif

static void group_quant_fast(const float *xf, const uint16_t *xb, size_t rows, size_t cols, size_t group, uint8_t *q,
                             float *scales)
{
#if MXI_X86
    if (mx_quant_have_avx2()) {
        mxi_quant_fp8_group_avx2(xf, xb, rows, cols, group, q, scales);
        return;
    }
#endif
    group_quant2(xf, xb, rows, cols, group, q, scales);
}

static mx_status_t check_2d(const char *fn, const float *x, size_t rows, size_t cols, const uint8_t *q_p,
                            const float *scales_p)
{
    if (x == NULL || q_p == NULL || scales_p == NULL)
        return mx_error_set(MX_ERR_INVALID, "%s: NULL %s", fn, x == NULL ? "x" : q_p == NULL ? "q_p" : "scales_p");
    if (mul_overflows(rows, cols))
        return mx_error_set(MX_ERR_INVALID, "%s: shape [%zu, %zu]: element count overflows size_t", fn, rows, cols);
    return MX_OK;
}

mx_status_t mx_quant_fp8_token_dynamic(const float *x, size_t rows, size_t cols, uint8_t *q_p, float *scales_p)
{
    mx_status_t st = check_2d("mx_quant_fp8_token_dynamic", x, rows, cols, q_p, scales_p);
    if (st != MX_OK)
        return st;
    if (cols == 0)
        return mx_error_set(MX_ERR_INVALID, "mx_quant_fp8_token_dynamic: shape [%zu, 0]: expected cols > 0", rows);
    group_quant(x, rows, cols, cols, q_p, scales_p);
    return MX_OK;
}

mx_status_t mx_quant_fp8_group_dynamic(const float *x, size_t rows, size_t cols, size_t group, uint8_t *q_p,
                                       float *scales_p)
{
    mx_status_t st = check_2d("mx_quant_fp8_group_dynamic", x, rows, cols, q_p, scales_p);
    if (st != MX_OK)
        return st;
    if (group == 0)
        return mx_error_set(MX_ERR_INVALID, "mx_quant_fp8_group_dynamic: group size 0: expected > 0 (usually 128)");
    group_quant(x, rows, cols, group, q_p, scales_p);
    return MX_OK;
}

mx_status_t mx_quant_fp8_token_dynamic_fast(const float *x, size_t rows, size_t cols, uint8_t *q_p, float *scales_p)
{
    mx_status_t st = check_2d("mx_quant_fp8_token_dynamic_fast", x, rows, cols, q_p, scales_p);
    if (st != MX_OK)
        return st;
    if (cols == 0)
        return mx_error_set(MX_ERR_INVALID, "mx_quant_fp8_token_dynamic_fast: shape [%zu, 0]: expected cols > 0", rows);
    group_quant_fast(x, NULL, rows, cols, cols, q_p, scales_p);
    return MX_OK;
}

mx_status_t mx_quant_fp8_group_dynamic_fast(const float *x, size_t rows, size_t cols, size_t group, uint8_t *q_p,
                                            float *scales_p)
{
    mx_status_t st = check_2d("mx_quant_fp8_group_dynamic_fast", x, rows, cols, q_p, scales_p);
    if (st != MX_OK)
        return st;
    if (group == 0)
        return mx_error_set(MX_ERR_INVALID,
                            "mx_quant_fp8_group_dynamic_fast: group size 0: expected > 0 (usually 128)");
    group_quant_fast(x, NULL, rows, cols, group, q_p, scales_p);
    return MX_OK;
}

static mx_status_t check_bf16(const char *fn, const uint16_t *x, size_t rows, size_t cols, size_t group,
                              const uint8_t *q_p, const float *scales_p)
{
    if (x == NULL || q_p == NULL || scales_p == NULL)
        return mx_error_set(MX_ERR_INVALID, "%s: NULL %s", fn, x == NULL ? "x" : q_p == NULL ? "q_p" : "scales_p");
    if (mul_overflows(rows, cols))
        return mx_error_set(MX_ERR_INVALID, "%s: shape [%zu, %zu]: element count overflows size_t", fn, rows, cols);
    if (group == 0)
        return mx_error_set(MX_ERR_INVALID, "%s: group size 0: expected > 0 (usually 128)", fn);
    return MX_OK;
}

mx_status_t mx_quant_fp8_group_dynamic_bf16(const uint16_t *x, size_t rows, size_t cols, size_t group, uint8_t *q_p,
                                            float *scales_p)
{
    mx_status_t st = check_bf16("mx_quant_fp8_group_dynamic_bf16", x, rows, cols, group, q_p, scales_p);
    if (st != MX_OK)
        return st;
    group_quant2(NULL, x, rows, cols, group, q_p, scales_p);
    return MX_OK;
}

mx_status_t mx_quant_fp8_group_dynamic_bf16_fast(const uint16_t *x, size_t rows, size_t cols, size_t group,
                                                 uint8_t *q_p, float *scales_p)
{
    mx_status_t st = check_bf16("mx_quant_fp8_group_dynamic_bf16_fast", x, rows, cols, group, q_p, scales_p);
    if (st != MX_OK)
        return st;
    group_quant_fast(NULL, x, rows, cols, group, q_p, scales_p);
    return MX_OK;
}

mx_status_t mx_quant_fp8_weight_block(const float *w, size_t n, size_t k, size_t block, uint8_t *q_p, float *scales_p)
{
    mx_status_t st = check_2d("mx_quant_fp8_weight_block", w, n, k, q_p, scales_p);
    if (st != MX_OK)
        return st;
    if (block == 0)
        return mx_error_set(MX_ERR_INVALID, "mx_quant_fp8_weight_block: block size 0: expected > 0 (usually 128)");
    size_t nbr = (n + block - 1) / block, nbc = (k + block - 1) / block;
    for (size_t br = 0; br < nbr; br++) {
        size_t r0 = br * block, r1 = r0 + block < n ? r0 + block : n;
        for (size_t bc = 0; bc < nbc; bc++) {
            size_t c0 = bc * block, c1 = c0 + block < k ? c0 + block : k;
            float amax = 0.0f;
            for (size_t r = r0; r < r1; r++)
                for (size_t c = c0; c < c1; c++) {
                    float a = finite_abs_or_zero(w[r * k + c]);
                    if (a > amax)
                        amax = a;
                }
            float s = dynamic_scale(amax);
            for (size_t r = r0; r < r1; r++)
                for (size_t c = c0; c < c1; c++)
                    q_p[r * k + c] = mx_quant_e4m3fn_from_f32(w[r * k + c] / s);
            scales_p[br * nbc + bc] = s;
        }
    }
    return MX_OK;
}

mx_status_t mx_quant_fp8_weight_channel(const float *w, size_t n, size_t k, uint8_t *q_p, float *scales_p)
{
    mx_status_t st = check_2d("mx_quant_fp8_weight_channel", w, n, k, q_p, scales_p);
    if (st != MX_OK)
        return st;
    if (k == 0)
        return mx_error_set(MX_ERR_INVALID, "mx_quant_fp8_weight_channel: shape [%zu, 0]: expected k > 0", n);
    group_quant(w, n, k, k, q_p, scales_p);
    return MX_OK;
}

/* out = value(q) * scale; a NaN code gives its own NaN (sign kept) whatever
 * the scale, so the result does not depend on which operand the hardware
 * propagates when both are NaN. */
static void fp8_decode_scalar(const uint8_t *q, size_t n, float scale, float *out)
{
    for (size_t i = 0; i < n; i++) {
        float v = mx_quant_e4m3fn_to_f32(q[i]);
        out[i] = (q[i] & 0x7F) == 0x7F ? v : v * scale;
    }
}

mx_status_t mx_quant_fp8_decode(const uint8_t *q, size_t n, float scale, float *out_p)
{
    if (q == NULL || out_p == NULL)
        return mx_error_set(MX_ERR_INVALID, "mx_quant_fp8_decode: NULL %s", q == NULL ? "q" : "out_p");
    fp8_decode_scalar(q, n, scale, out_p);
    return MX_OK;
}

static void fp8_decode_bf16_scalar(const uint8_t *q, size_t n, float scale, uint16_t *out)
{
    for (size_t i = 0; i < n; i++) {
        float v;
        fp8_decode_scalar(q + i, 1, scale, &v);
        out[i] = mx_quant_bf16_from_f32(v);
    }
}

mx_status_t mx_quant_fp8_decode_bf16(const uint8_t *q, size_t n, float scale, uint16_t *out_p)
{
    if (q == NULL || out_p == NULL)
        return mx_error_set(MX_ERR_INVALID, "mx_quant_fp8_decode_bf16: NULL %s", q == NULL ? "q" : "out_p");
    fp8_decode_bf16_scalar(q, n, scale, out_p);
    return MX_OK;
}

mx_status_t mx_quant_fp8_decode_bf16_fast(const uint8_t *q, size_t n, float scale, uint16_t *out_p)
{
    if (q == NULL || out_p == NULL)
        return mx_error_set(MX_ERR_INVALID, "mx_quant_fp8_decode_bf16_fast: NULL %s", q == NULL ? "q" : "out_p");
#if MXI_X86
    if (mx_quant_have_avx2()) {
        mxi_quant_fp8_decode_bf16_avx2(q, n, scale, out_p);
        return MX_OK;
    }
#endif
    fp8_decode_bf16_scalar(q, n, scale, out_p);
    return MX_OK;
}

mx_status_t mx_quant_fp8_decode_fast(const uint8_t *q, size_t n, float scale, float *out_p)
{
    if (q == NULL || out_p == NULL)
        return mx_error_set(MX_ERR_INVALID, "mx_quant_fp8_decode_fast: NULL %s", q == NULL ? "q" : "out_p");
#if MXI_X86
    if (mx_quant_have_avx2()) {
        mxi_quant_fp8_decode_avx2(q, n, scale, out_p);
        return MX_OK;
    }
#endif
    fp8_decode_scalar(q, n, scale, out_p);
    return MX_OK;
}
