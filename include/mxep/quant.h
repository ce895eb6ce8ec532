/* mxep quant/: exact number formats (FORMATS.md Part 1).
 *
 * Scalar codecs are exact and total: every byte decodes, every float encodes
 * (round to nearest, ties to even, saturating where FORMATS.md says so).
 * Buffers are caller-owned; outputs (_p) are written only on success. */
#ifndef MXEP_QUANT_H
#define MXEP_QUANT_H

#include <stddef.h>
#include <stdint.h>

#include "mxep/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- scalars */
/* FP4 E2M1: code in the low 4 bits. No Inf/NaN. Encoding: RNE, saturates at
 * +-6 (Inf too), keeps the sign of zero. NaN has no code: it encodes as a zero
 * with the NaN's sign (quant/scalar.c says why; MXFP4 blocks with a NaN or Inf
 * get scale byte 0xFF and decode to NaN). */
float mx_quant_e2m1_to_f32(uint8_t code);
uint8_t mx_quant_e2m1_from_f32(float x);

/* E8M0 scale byte: 2^(b-127) exactly (b = 0 -> 2^-127), 0xFF -> NaN. */
float mx_quant_e8m0_to_f32(uint8_t b);

/* FP8 E4M3FN (OCP): max 448, NaN 0x7F/0xFF, no Inf. from_f32: RNE, saturates
 * to +-448 (also +-Inf), NaN -> 0x7F (sign kept: 0xFF for negative NaN). */
float mx_quant_e4m3fn_to_f32(uint8_t b);
uint8_t mx_quant_e4m3fn_from_f32(float x);

/* FP8 E4M3FNUZ (AMD gfx94x): bias 8, max 240, 0x80 is the only NaN, no -0. */
float mx_quant_e4m3fnuz_to_f32(uint8_t b);
uint8_t mx_quant_e4m3fnuz_from_f32(float x);

/* FP8 E5M2: bias 15, max 57344, Inf/NaN as IEEE. `saturate` = 1 clamps
 * overflow to +-57344 (quantizers; +-Inf too); 0 gives +-Inf (IEEE cast, as
 * ml_dtypes). NaN -> 0x7E / 0xFE. */
float mx_quant_e5m2_to_f32(uint8_t b);
uint8_t mx_quant_e5m2_from_f32(float x, int saturate);

/* BF16 and FP16: RNE, overflow to Inf, NaN -> the canonical quiet NaN with the
 * input's sign (0x7FC0 / 0x7E00, sign bit 0x8000). Decoding is exact. */
float mx_quant_bf16_to_f32(uint16_t h);
uint16_t mx_quant_bf16_from_f32(float x);
float mx_quant_f16_to_f32(uint16_t h);
uint16_t mx_quant_f16_from_f32(float x);

/* ---------------------------------------------------------------- MXFP4 */
#define MX_MXFP4_BLOCK 32

/* Scale rules (FORMATS.md Part 2 section 2). amax = m * 2^e, 1 <= m < 2.
 * Bytes are clamped to [0, 254]; tests/quant/test_mxfp4.c has worked examples. */
typedef enum {
    MX_SCALE_FLOOR = 0,    /* OCP / torchao FLOOR / llama.cpp: 2^(e - 2); clips to 6 when m > 1.5; default */
    MX_SCALE_ROUND_UP = 1, /* triton_kernels / transformers, bit for bit: the exponent of the FP32
                            * quotient amax / 6 rounded up (= FLOOR + 1 when m > 1.5); when that
                            * quotient is an FP32 subnormal the byte is 1, as in triton */
    MX_SCALE_EVEN = 2,     /* torchao EVEN (Quark / vLLM): amax rounded at 1 mantissa bit
                            * (+2^21 ulp, truncate: m >= 1.75 goes up), then FLOOR */
    MX_SCALE_RCEIL = 3,    /* cuBLAS cvt.rp.satfinite.ue8m0: 2^ceil(log2(amax / 6)) exactly */
    MX_SCALE_RULE_COUNT
} mx_scale_rule_t;

const char *mx_quant_scale_rule_name(mx_scale_rule_t rule); /* "floor", ... */
mx_status_t mx_quant_scale_rule_parse(const char *text, mx_scale_rule_t *rule_p);

/* The E8M0 byte a rule gives for a block whose max |x| is amax (amax >= 0).
 * amax = 0 gives byte 0 under every rule; non-finite amax gives 0xFF. */
uint8_t mx_quant_mxfp4_scale(float amax, mx_scale_rule_t rule);

/* One row of k floats (k % 32 == 0) -> k/2 packed bytes (element 2j in the low
 * nibble of byte j) + k/32 E8M0 scales: the canonical (gpt-oss) layout.
 * Elements are x / 2^(byte-127) rounded to E2M1 on the exact value. A block
 * holding a NaN or +-Inf gets scale 0xFF and element codes that are zeros
 * with each input's sign (it decodes to NaN). Rule out of range or k not a
 * multiple of 32: MX_ERR_INVALID, nothing written. */
mx_status_t mx_quant_mxfp4_encode_row(const float *x, size_t k, mx_scale_rule_t rule, uint8_t *packed_p,
                                      uint8_t *scales_p);
/* Inverse; exact (a product of two powers-of-two-scaled values; 6 * 2^127
 * overflows to Inf); scale 0xFF gives 0x7FC00000. Scalar reference. */
mx_status_t mx_quant_mxfp4_decode_row(const uint8_t *packed, const uint8_t *scales, size_t k, float *out_p);
/* Same result, vectorized where the CPU allows (AVX2), scalar twin otherwise. */
mx_status_t mx_quant_mxfp4_decode_row_fast(const uint8_t *packed, const uint8_t *scales, size_t k, float *out_p);
mx_status_t mx_quant_mxfp4_decode_row_bf16(const uint8_t *packed, const uint8_t *scales, size_t k, uint16_t *out_p);
/* BF16 output, vectorized where the CPU allows; equal to decode_row_bf16. */
mx_status_t mx_quant_mxfp4_decode_row_bf16_fast(const uint8_t *packed, const uint8_t *scales, size_t k,
                                                uint16_t *out_p);

/* ---------------------------------------------------------------- FP8 (E4M3FN) quantizers
 * All round to nearest even and saturate at +-448. Scales multiply: x ~= q * s.
 * Dynamic scales are amax/448 with a floor of 1/(448*512). */
#define MX_FP8_E4M3_MAX 448.0f
#define MX_FP8_MIN_SCALE (1.0f / (448.0f * 512.0f))

/* Per-tensor static: q = e4m3(x / scale). */
mx_status_t mx_quant_fp8_tensor_static(const float *x, size_t n, float scale, uint8_t *q_p);
/* Per-token (row) dynamic: scales_p[rows]. */
mx_status_t mx_quant_fp8_token_dynamic(const float *x, size_t rows, size_t cols, uint8_t *q_p, float *scales_p);
/* Per-group dynamic along each row (group = 128 usually; cols % group may be
 * non-zero, the last group is short): scales_p[rows x ceil(cols/group)]. */
mx_status_t mx_quant_fp8_group_dynamic(const float *x, size_t rows, size_t cols, size_t group, uint8_t *q_p,
                                       float *scales_p);
/* The same bytes and scales as the two above, vectorized where the CPU allows
 * (AVX2), the scalar code otherwise (tests/quant/test_fp8_fast_quant.c). */
mx_status_t mx_quant_fp8_token_dynamic_fast(const float *x, size_t rows, size_t cols, uint8_t *q_p, float *scales_p);
mx_status_t mx_quant_fp8_group_dynamic_fast(const float *x, size_t rows, size_t cols, size_t group, uint8_t *q_p,
                                            float *scales_p);
/* Per-group dynamic from BF16 input: exactly mx_quant_fp8_group_dynamic of the
 * values widened to FP32 (scalar, and the fast twin). */
mx_status_t mx_quant_fp8_group_dynamic_bf16(const uint16_t *x, size_t rows, size_t cols, size_t group, uint8_t *q_p,
                                            float *scales_p);
mx_status_t mx_quant_fp8_group_dynamic_bf16_fast(const uint16_t *x, size_t rows, size_t cols, size_t group,
                                                 uint8_t *q_p, float *scales_p);
/* Weights, block x block (128) scales as DeepSeek stores them (`weight_scale_inv`,
 * multiplied): scales_p[ceil(n/block) x ceil(k/block)]. */
mx_status_t mx_quant_fp8_weight_block(const float *w, size_t n, size_t k, size_t block, uint8_t *q_p, float *scales_p);
/* Weights, one scale per output row: scales_p[n]. */
mx_status_t mx_quant_fp8_weight_channel(const float *w, size_t n, size_t k, uint8_t *q_p, float *scales_p);

/* FP8 E4M3FN decode of n bytes to float times one scale (a NaN code gives its
 * own NaN whatever the scale), scalar and fast twins, bit-identical. */
mx_status_t mx_quant_fp8_decode(const uint8_t *q, size_t n, float scale, float *out_p);
mx_status_t mx_quant_fp8_decode_fast(const uint8_t *q, size_t n, float scale, float *out_p);
/* The same, rounded to BF16 (round to nearest even on the FP32 product). */
mx_status_t mx_quant_fp8_decode_bf16(const uint8_t *q, size_t n, float scale, uint16_t *out_p);
mx_status_t mx_quant_fp8_decode_bf16_fast(const uint8_t *q, size_t n, float scale, uint16_t *out_p);

/* BF16 <-> float arrays. */
void mx_quant_bf16_to_f32_n(const uint16_t *in, size_t n, float *out);
void mx_quant_bf16_from_f32_n(const float *in, size_t n, uint16_t *out);

/* ---------------------------------------------------------------- per-token-group MXFP4 (activations)
 * Input: ndim >= 1 tensor of BF16 or F32 values, shape[ndim-1] % 32 == 0,
 * rows contiguous (strides in elements; NULL = fully contiguous; only the last
 * dimension must have stride 1 and every row must be dense). Output: packed
 * bytes [..., N/2] and E8M0 scales [..., N/32], both dense, rows in row-major
 * order of the leading dimensions. Blocks are encoded as in
 * mx_quant_mxfp4_encode_row (BF16 widened exactly first). Zero-sized
 * dimensions are valid (nothing to do); pointers must still be non-NULL.
 * The shape query validates exactly like the op (one shared function):
 * ndim outside 1..MX_QUANT_MAX_DIMS, last dim not a multiple of 32, last
 * stride != 1, or sizes overflowing size_t give MX_ERR_INVALID with the shape
 * in the detail message, and nothing is written. */
typedef enum { MX_ACT_IN_F32 = 0, MX_ACT_IN_BF16 = 1 } mx_act_in_dtype_t;
#define MX_QUANT_MAX_DIMS 8

mx_status_t mx_quant_mxfp4_act_shape(int ndim, const size_t *shape, const size_t *strides, size_t *packed_bytes_p,
                                     size_t *n_scales_p);
mx_status_t mx_quant_mxfp4_act_quantize(const void *x, mx_act_in_dtype_t dtype, int ndim, const size_t *shape,
                                        const size_t *strides, mx_scale_rule_t rule, uint8_t *packed_p,
                                        uint8_t *scales_p);

/* Does this CPU run the AVX2 fast paths? (cpuid + OS support) */
int mx_quant_have_avx2(void);

#ifdef __cplusplus
}
#endif
#endif
