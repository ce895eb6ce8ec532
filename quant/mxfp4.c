/* quant/mxfp4.c: MXFP4 rows in the canonical (gpt-oss / HF) layout and the
 * per-token-group activation op (FORMATS.md Part 1).
 *
 * A block is 32 elements: 16 bytes, element 2j in the low nibble of byte j and
 * element 2j+1 in the high nibble, plus one E8M0 scale byte. Encoding: the
 * scale byte comes from the block's max |x| through the chosen rule; each
 * element is x / 2^(byte-127) rounded to E2M1 (nearest, ties to even,
 * saturating at +-6, sign of zero kept) on the exact value. A block holding a
 * NaN or an Inf gets the scale byte 0xFF (it decodes to NaN) and element codes
 * that are zeros carrying each input's sign. */
#include <stdio.h>
#include <string.h>

#include "mxep/quant.h"
#include "quant_internal.h"

uint8_t mxi_quant_e2m1_encode_scaled(float x, int adj);

static void encode_block(const float *x, mx_scale_rule_t rule, uint8_t *packed, uint8_t *scale)
{
    uint32_t amax_bits = 0;
    int nonfinite = 0;
    for (int i = 0; i < MX_MXFP4_BLOCK; i++) {
        uint32_t a = mxi_f32_bits(x[i]) & 0x7FFFFFFFu;
        if (a >= 0x7F800000u)
            nonfinite = 1;
        else if (a > amax_bits)
            amax_bits = a;
    }
    uint8_t byte = nonfinite ? 0xFF : mx_quant_mxfp4_scale(mxi_bits_f32(amax_bits), rule);
    for (int j = 0; j < MX_MXFP4_BLOCK / 2; j++) {
        uint8_t lo, hi;
        if (byte == 0xFF) {
            lo = (uint8_t)((mxi_f32_bits(x[2 * j]) >> 28) & 0x8u);
            hi = (uint8_t)((mxi_f32_bits(x[2 * j + 1]) >> 28) & 0x8u);
        } else {
            int adj = 127 - (int)byte;
            lo = mxi_quant_e2m1_encode_scaled(x[2 * j], adj);
            hi = mxi_quant_e2m1_encode_scaled(x[2 * j + 1], adj);
        }
        packed[j] = (uint8_t)(lo | (hi << 4));
    }
    *scale = byte;
}

static int rule_valid(mx_scale_rule_t rule)
{
    return (int)rule >= 0 && rule < MX_SCALE_RULE_COUNT;
}

mx_status_t mx_quant_mxfp4_encode_row(const float *x, size_t k, mx_scale_rule_t rule, uint8_t *packed_p,
                                      uint8_t *scales_p)
{
    if (x == NULL || packed_p == NULL || scales_p == NULL)
        return mx_error_set(MX_ERR_INVALID, "mx_quant_mxfp4_encode_row: NULL %s",
                            x == NULL          ? "x"
                            : packed_p == NULL ? "packed_p"
                                               : "scales_p");
    if (k % MX_MXFP4_BLOCK != 0)
        return mx_error_set(MX_ERR_INVALID, "mx_quant_mxfp4_encode_row: k = %zu is not a multiple of %d", k,
                            MX_MXFP4_BLOCK);
    if (!rule_valid(rule))
        return mx_error_set(MX_ERR_INVALID, "mx_quant_mxfp4_encode_row: scale rule %d: expected 0..%d", (int)rule,
                            MX_SCALE_RULE_COUNT - 1);
    for (size_t b = 0; b < k / MX_MXFP4_BLOCK; b++)
        encode_block(x + b * MX_MXFP4_BLOCK, rule, packed_p + b * (MX_MXFP4_BLOCK / 2), scales_p + b);
    return MX_OK;
}

static mx_status_t check_decode_args(const char *fn, const uint8_t *packed, const uint8_t *scales, size_t k,
                                     const void *out_p)
{
    if (packed == NULL || scales == NULL || out_p == NULL)
        return mx_error_set(MX_ERR_INVALID, "%s: NULL %s", fn,
                            packed == NULL   ? "packed"
                            : scales == NULL ? "scales"
                                             : "out_p");
    if (k % MX_MXFP4_BLOCK != 0)
        return mx_error_set(MX_ERR_INVALID, "%s: k = %zu is not a multiple of %d", fn, k, MX_MXFP4_BLOCK);
    return MX_OK;
}

/* E2M1 code times 2^(byte - 127), built from bits: exact, and unaffected by
 * flush-to-zero / denormals-are-zero modes (a process linked with
 * -ffast-math sets them), which would otherwise flush the subnormal scale
 * 2^-127 and the products below 2^-126. byte != 0xFF. */
static float e2m1_scaled(uint8_t code, uint8_t byte)
{
    uint32_t sign = (uint32_t)(code & 0x8u) << 28;
    uint32_t mag = mxi_f32_bits(mx_quant_e2m1_to_f32(code & 0x7u));
    if (mag == 0)
        return mxi_bits_f32(sign);
    int ne = (int)(mag >> 23) + (int)byte - 127;
    uint32_t frac = mag & 0x7FFFFFu;
    if (ne >= 255)
        return mxi_bits_f32(sign | 0x7F800000u); /* >= 2^128: not representable */
    if (ne >= 1)
        return mxi_bits_f32(sign | ((uint32_t)ne << 23) | frac);
    /* subnormal result: at most 2 significant bits, shifted by 1 - ne <= 2: exact */
    return mxi_bits_f32(sign | ((frac | 0x800000u) >> (1 - ne)));
}

static void decode_row_scalar(const uint8_t *packed, const uint8_t *scales, size_t k, float *out)
{
    for (size_t b = 0; b < k / MX_MXFP4_BLOCK; b++) {
        uint8_t byte = scales[b];
        const uint8_t *p = packed + b * (MX_MXFP4_BLOCK / 2);
        float *o = out + b * MX_MXFP4_BLOCK;
        for (int j = 0; j < MX_MXFP4_BLOCK / 2; j++) {
            if (byte == 0xFF) {
                o[2 * j] = o[2 * j + 1] = mxi_bits_f32(MXI_F32_QNAN);
            } else {
                o[2 * j] = e2m1_scaled(p[j] & 0x0F, byte);
                o[2 * j + 1] = e2m1_scaled(p[j] >> 4, byte);
            }
        }
    }
}

mx_status_t mx_quant_mxfp4_decode_row(const uint8_t *packed, const uint8_t *scales, size_t k, float *out_p)
{
    mx_status_t st = check_decode_args("mx_quant_mxfp4_decode_row", packed, scales, k, out_p);
    if (st != MX_OK)
        return st;
    decode_row_scalar(packed, scales, k, out_p);
    return MX_OK;
}

mx_status_t mx_quant_mxfp4_decode_row_fast(const uint8_t *packed, const uint8_t *scales, size_t k, float *out_p)
{
    mx_status_t st = check_decode_args("mx_quant_mxfp4_decode_row_fast", packed, scales, k, out_p);
    if (st != MX_OK)
        return st;
#if MXI_X86
    if (mx_quant_have_avx2()) {
        mxi_quant_mxfp4_decode_row_avx2(packed, scales, k, out_p);
        return MX_OK;
    }
#endif
    decode_row_scalar(packed, scales, k, out_p);
    return MX_OK;
}

static void decode_row_bf16_scalar(const uint8_t *packed, const uint8_t *scales, size_t k, uint16_t *out)
{
    float tmp[MX_MXFP4_BLOCK];
    for (size_t b = 0; b < k / MX_MXFP4_BLOCK; b++) {
        decode_row_scalar(packed + b * (MX_MXFP4_BLOCK / 2), scales + b, MX_MXFP4_BLOCK, tmp);
        for (int i = 0; i < MX_MXFP4_BLOCK; i++)
            out[b * MX_MXFP4_BLOCK + i] = mx_quant_bf16_from_f32(tmp[i]);
    }
}

mx_status_t mx_quant_mxfp4_decode_row_bf16(const uint8_t *packed, const uint8_t *scales, size_t k, uint16_t *out_p)
{
    mx_status_t st = check_decode_args("mx_quant_mxfp4_decode_row_bf16", packed, scales, k, out_p);
    if (st != MX_OK)
        return st;
    decode_row_bf16_scalar(packed, scales, k, out_p);
    return MX_OK;
}

mx_status_t mx_quant_mxfp4_decode_row_bf16_fast(const uint8_t *packed, const uint8_t *scales, size_t k, uint16_t *out_p)
{
    mx_status_t st = check_decode_args("mx_quant_mxfp4_decode_row_bf16_fast", packed, scales, k, out_p);
    if (st != MX_OK)
        return st;
#if MXI_X86
    if (mx_quant_have_avx2()) {
        mxi_quant_mxfp4_decode_row_bf16_avx2(packed, scales, k, out_p);
        return MX_OK;
    }
#endif
    decode_row_bf16_scalar(packed, scales, k, out_p);
    return MX_OK;
}

/* ---------------------------------------------------------------- per-token-group activation op */

static void format_shape(char *buf, size_t cap, int ndim, const size_t *shape)
{
    size_t used = 0;
    used += (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && i < MX_QUANT_MAX_DIMS && used < cap; i++)
        used += (size_t)snprintf(buf + used, cap - used, "%s%zu", i ? ", " : "", shape[i]);
    if (used < cap)
        snprintf(buf + used, cap - used, "]");
}

typedef struct {
    size_t rows; /* product of the leading dims */
    size_t n;    /* last dim */
} act_geom_t;

/* The one validation shared by the shape query and the op. */
static mx_status_t act_validate(const char *fn, int ndim, const size_t *shape, const size_t *strides, act_geom_t *g)
{
    if (shape == NULL)
        return mx_error_set(MX_ERR_INVALID, "%s: NULL shape", fn);
    if (ndim < 1 || ndim > MX_QUANT_MAX_DIMS)
        return mx_error_set(MX_ERR_INVALID, "%s: ndim = %d: expected 1..%d", fn, ndim, MX_QUANT_MAX_DIMS);
    char sh[256];
    format_shape(sh, sizeof sh, ndim, shape);
    size_t n = shape[ndim - 1];
    if (n % MX_MXFP4_BLOCK != 0)
        return mx_error_set(MX_ERR_INVALID, "%s: shape %s: last dimension %zu is not a multiple of %d", fn, sh, n,
                            MX_MXFP4_BLOCK);
    size_t rows = 1;
    for (int i = 0; i < ndim - 1; i++) {
        if (shape[i] != 0 && rows > SIZE_MAX / shape[i])
            return mx_error_set(MX_ERR_INVALID, "%s: shape %s: element count overflows size_t", fn, sh);
        rows *= shape[i];
    }
    if (n != 0 && rows > SIZE_MAX / 4 / n)
        return mx_error_set(MX_ERR_INVALID, "%s: shape %s: element count overflows size_t", fn, sh);
    if (strides != NULL) {
        if (strides[ndim - 1] != 1)
            return mx_error_set(MX_ERR_INVALID,
                                "%s: shape %s: last-dimension stride is %zu: rows must be contiguous (stride 1)", fn,
                                sh, strides[ndim - 1]);
        /* the farthest element read must be addressable */
        size_t span = n, empty = (n == 0 || rows == 0);
        for (int i = 0; i < ndim - 1 && !empty; i++) {
            size_t ext = shape[i] - 1;
            if (ext != 0 && strides[i] > (SIZE_MAX / 4 - span) / ext)
                return mx_error_set(MX_ERR_INVALID, "%s: shape %s: stride %zu of dimension %d overflows size_t", fn, sh,
                                    strides[i], i);
            span += ext * strides[i];
        }
    }
    g->rows = rows;
    g->n = n;
    return MX_OK;
}

mx_status_t mx_quant_mxfp4_act_shape(int ndim, const size_t *shape, const size_t *strides, size_t *packed_bytes_p,
                                     size_t *n_scales_p)
{
    act_geom_t g;
    mx_status_t st = act_validate("mx_quant_mxfp4_act_shape", ndim, shape, strides, &g);
    if (st != MX_OK)
        return st;
    if (packed_bytes_p == NULL || n_scales_p == NULL)
        return mx_error_set(MX_ERR_INVALID, "mx_quant_mxfp4_act_shape: NULL %s",
                            packed_bytes_p == NULL ? "packed_bytes_p" : "n_scales_p");
    *packed_bytes_p = g.rows * (g.n / 2);
    *n_scales_p = g.rows * (g.n / MX_MXFP4_BLOCK);
    return MX_OK;
}

mx_status_t mx_quant_mxfp4_act_quantize(const void *x, mx_act_in_dtype_t dtype, int ndim, const size_t *shape,
                                        const size_t *strides, mx_scale_rule_t rule, uint8_t *packed_p,
                                        uint8_t *scales_p)
{
    static const char fn[] = "mx_quant_mxfp4_act_quantize";
    act_geom_t g;
    mx_status_t st = act_validate(fn, ndim, shape, strides, &g);
    if (st != MX_OK)
        return st;
    if (x == NULL || packed_p == NULL || scales_p == NULL)
        return mx_error_set(MX_ERR_INVALID, "%s: NULL %s", fn,
                            x == NULL          ? "x"
                            : packed_p == NULL ? "packed_p"
                                               : "scales_p");
    if (dtype != MX_ACT_IN_F32 && dtype != MX_ACT_IN_BF16)
        return mx_error_set(MX_ERR_INVALID, "%s: input dtype %d: expected MX_ACT_IN_F32 or MX_ACT_IN_BF16", fn,
                            (int)dtype);
    if (!rule_valid(rule))
        return mx_error_set(MX_ERR_INVALID, "%s: scale rule %d: expected 0..%d", fn, (int)rule,
                            MX_SCALE_RULE_COUNT - 1);
    size_t nb = g.n / MX_MXFP4_BLOCK;
    size_t idx[MX_QUANT_MAX_DIMS] = {0};
    float blk[MX_MXFP4_BLOCK];
    for (size_t r = 0; r < g.rows; r++) {
        /* element offset of row r (row-major order over the leading dims) */
        size_t off = 0;
        if (strides == NULL) {
            off = r * g.n;
        } else {
            for (int i = 0; i < ndim - 1; i++)
                off += idx[i] * strides[i];
            for (int i = ndim - 2; i >= 0; i--) { /* advance the multi-index */
                if (++idx[i] < shape[i])
                    break;
                idx[i] = 0;
            }
        }
        for (size_t b = 0; b < nb; b++) {
            const float *src;
            if (dtype == MX_ACT_IN_F32) {
                src = (const float *)x + off + b * MX_MXFP4_BLOCK;
            } else {
                const uint16_t *h = (const uint16_t *)x + off + b * MX_MXFP4_BLOCK;
                for (int i = 0; i < MX_MXFP4_BLOCK; i++)
                    blk[i] = mx_quant_bf16_to_f32(h[i]);
                src = blk;
            }
            size_t ob = r * nb + b;
            encode_block(src, rule, packed_p + ob * (MX_MXFP4_BLOCK / 2), scales_p + ob);
        }
    }
    return MX_OK;
}
