/* quant/scalar.c: exact scalar codecs and the MXFP4 scale rules (FORMATS.md Part 1).
 *
 * Everything here is integer bit manipulation on the IEEE-754 binary32 pattern:
 * no libm, no division, so results do not depend on the rounding mode of a
 * library routine. Encoders round to nearest, ties to even, on the exact value
 * (no double rounding).
 *
 * Choices this file makes where a format has no answer (documented in
 * include/mxep/quant.h as well):
 *  - E2M1 has no NaN: mx_quant_e2m1_from_f32(NaN) gives a zero carrying the
 *    NaN's sign bit (0x0 or 0x8). A NaN carries no magnitude, and zero is the
 *    only code that cannot pass for a real value; MXFP4 blocks that hold a NaN
 *    get the scale byte 0xFF, so they decode to NaN regardless.
 *  - +-Inf saturates to +-6 (E2M1), +-448 (E4M3FN), +-240 (E4M3FNUZ) and, when
 *    `saturate` is set, +-57344 (E5M2): the saturating quantizers treat Inf as
 *    overflow, as CUDA's __NV_SATFINITE conversion does.
 *  - E4M3FNUZ has no negative zero: negative values that round to zero give
 *    0x00 (0x80 is its only NaN).
 *  - Encoders to BF16 / FP16 give the canonical quiet NaN with the input's sign
 *    (0x7FC0 / 0xFFC0, 0x7E00 / 0xFE00); payloads are not carried.
 *  - Decoders return a quiet NaN: 0x7FC00000, or 0xFFC00000 for a NaN code with
 *    the sign bit set (E4M3FN 0xFF, E5M2 0xFD..0xFF). E8M0 0xFF and E4M3FNUZ
 *    0x80 are unsigned NaNs and give 0x7FC00000. */
#include <string.h>

#include "mxep/quant.h"
#include "quant_internal.h"

/* ---------------------------------------------------------------- generic minifloat rounding */

#define ROUND_OVERFLOW 0xFFFFFFFFu

/* Magnitude code of |x| * 2^adj in a format with `mbits` mantissa bits and
 * minimum normal exponent `emin` (unbiased), rounded to nearest even. The code
 * is (E - emin) << mbits + units, which is monotonic in the value and carries
 * naturally from subnormals to normals and from one binade to the next. The
 * caller compares it with the format's largest finite code. `abits` is the
 * binary32 pattern without its sign, finite. */
static uint32_t round_magnitude(uint32_t abits, int adj, int mbits, int emin)
{
    if (abits == 0)
        return 0;
    uint32_t ef = abits >> 23;
    uint32_t s; /* significand: value = s * 2^(e - 23) */
    int e;
    if (ef == 0) {
        e = -126;
        s = abits & 0x7FFFFFu;
    } else {
        e = (int)ef - 127;
        s = (abits & 0x7FFFFFu) | 0x800000u;
    }
    e += adj;
    if (e > emin + 40)
        return ROUND_OVERFLOW; /* far above every format handled here */
    int E = e < emin ? emin : e;
    int shift = (E - mbits) - (e - 23); /* >= 23 - mbits >= 13 */
    uint32_t units;
    if (shift >= 32) {
        units = 0; /* s * 2^-shift < 2^-8: below half a unit */
    } else {
        uint32_t q = s >> shift;
        uint32_t rem = s & ((1u << shift) - 1u);
        uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1u)))
            q++;
        units = q;
    }
    return ((uint32_t)(E - emin) << mbits) + units;
}

static int f32_is_nan(uint32_t bits)
{
    return (bits & 0x7FFFFFFFu) > 0x7F800000u;
}
static int f32_is_inf(uint32_t bits)
{
    return (bits & 0x7FFFFFFFu) == 0x7F800000u;
}

/* Build the float mbits-mantissa value of a magnitude code (finite). */
static float decode_magnitude(uint32_t mag, int mbits, int emin, uint32_t sign)
{
    uint32_t ef = mag >> mbits;
    uint32_t mf = mag & ((1u << mbits) - 1u);
    uint32_t bits;
    if (ef == 0) {
        if (mf == 0)
            return mxi_bits_f32(sign);
        /* subnormal: mf * 2^(emin - mbits); normalize into a binary32 normal */
        int msb = 31 - __builtin_clz(mf);
        int e = emin - mbits + msb;
        uint32_t frac = (mf & ~(1u << msb)) << (23 - msb);
        bits = ((uint32_t)(e + 127) << 23) | frac;
    } else {
        int e = (int)ef - 1 + emin;
        bits = ((uint32_t)(e + 127) << 23) | (mf << (23 - mbits));
    }
    return mxi_bits_f32(sign | bits);
}

/* ---------------------------------------------------------------- E2M1 */

static const float e2m1_values[16] = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
                                      -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

float mx_quant_e2m1_to_f32(uint8_t code)
{
    return e2m1_values[code & 0x0F];
}

/* E2M1 code of x * 2^adj (adj: minus the block's unbiased scale exponent). */
static uint8_t e2m1_encode_scaled(float x, int adj)
{
    uint32_t bits = mxi_f32_bits(x);
    uint8_t sign = (uint8_t)((bits >> 28) & 0x8u);
    uint32_t abits = bits & 0x7FFFFFFFu;
    if (f32_is_nan(bits))
        return sign;
    if (f32_is_inf(bits))
        return (uint8_t)(sign | 0x7u);
    uint32_t mag = round_magnitude(abits, adj, 1, 0);
    if (mag > 0x7u)
        mag = 0x7u;
    return (uint8_t)(sign | mag);
}

uint8_t mx_quant_e2m1_from_f32(float x)
{
    return e2m1_encode_scaled(x, 0);
}

/* ---------------------------------------------------------------- E8M0 */

float mx_quant_e8m0_to_f32(uint8_t b)
{
    if (b == 0xFF)
        return mxi_bits_f32(MXI_F32_QNAN);
    if (b == 0)
        return mxi_bits_f32(0x00400000u); /* 2^-127, an FP32 subnormal: never flushed */
    return mxi_bits_f32((uint32_t)b << 23);
}

/* ---------------------------------------------------------------- FP8 E4M3FN */

float mx_quant_e4m3fn_to_f32(uint8_t b)
{
    uint32_t sign = (uint32_t)(b & 0x80u) << 24;
    uint32_t mag = b & 0x7Fu;
    if (mag == 0x7F)
        return mxi_bits_f32(sign | MXI_F32_QNAN);
    return decode_magnitude(mag, 3, -6, sign);
}

uint8_t mx_quant_e4m3fn_from_f32(float x)
{
    uint32_t bits = mxi_f32_bits(x);
    uint8_t sign = (uint8_t)((bits >> 24) & 0x80u);
    if (f32_is_nan(bits))
        return (uint8_t)(sign | 0x7Fu);
    if (f32_is_inf(bits))
        return (uint8_t)(sign | 0x7Eu);
    uint32_t mag = round_magnitude(bits & 0x7FFFFFFFu, 0, 3, -6);
    if (mag > 0x7Eu)
        mag = 0x7Eu;
    return (uint8_t)(sign | mag);
}

/* ---------------------------------------------------------------- FP8 E4M3FNUZ */

float mx_quant_e4m3fnuz_to_f32(uint8_t b)
{
    if (b == 0x80)
        return mxi_bits_f32(MXI_F32_QNAN);
    return decode_magnitude(b & 0x7Fu, 3, -7, (uint32_t)(b & 0x80u) << 24);
}

uint8_t mx_quant_e4m3fnuz_from_f32(float x)
{
    uint32_t bits = mxi_f32_bits(x);
    uint8_t sign = (uint8_t)((bits >> 24) & 0x80u);
    if (f32_is_nan(bits))
        return 0x80u;
    if (f32_is_inf(bits))
        return (uint8_t)(sign | 0x7Fu);
    uint32_t mag = round_magnitude(bits & 0x7FFFFFFFu, 0, 3, -7);
    if (mag > 0x7Fu)
        mag = 0x7Fu;
    if (mag == 0)
        return 0x00u; /* no negative zero: 0x80 is NaN */
    return (uint8_t)(sign | mag);
}

/* ---------------------------------------------------------------- FP8 E5M2 */

float mx_quant_e5m2_to_f32(uint8_t b)
{
    uint32_t sign = (uint32_t)(b & 0x80u) << 24;
    uint32_t mag = b & 0x7Fu;
    if (mag == 0x7C)
        return mxi_bits_f32(sign | 0x7F800000u);
    if (mag > 0x7C)
        return mxi_bits_f32(sign | MXI_F32_QNAN);
    return decode_magnitude(mag, 2, -14, sign);
}

uint8_t mx_quant_e5m2_from_f32(float x, int saturate)
{
    uint32_t bits = mxi_f32_bits(x);
    uint8_t sign = (uint8_t)((bits >> 24) & 0x80u);
    if (f32_is_nan(bits))
        return (uint8_t)(sign | 0x7Eu);
    if (f32_is_inf(bits))
        return (uint8_t)(sign | (saturate ? 0x7Bu : 0x7Cu));
    uint32_t mag = round_magnitude(bits & 0x7FFFFFFFu, 0, 2, -14);
    if (mag > 0x7Bu)
        mag = saturate ? 0x7Bu : 0x7Cu;
    return (uint8_t)(sign | mag);
}

/* ---------------------------------------------------------------- BF16 / FP16 */

float mx_quant_bf16_to_f32(uint16_t h)
{
    return mxi_bits_f32((uint32_t)h << 16);
}

uint16_t mx_quant_bf16_from_f32(float x)
{
    uint32_t bits = mxi_f32_bits(x);
    if (f32_is_nan(bits))
        return (uint16_t)(((bits >> 16) & 0x8000u) | 0x7FC0u); /* canonical quiet NaN, sign kept */
    uint32_t sign = bits & 0x80000000u;
    uint32_t abits = bits & 0x7FFFFFFFu;
    /* RNE on the low 16 bits; a carry out of the mantissa steps the exponent,
     * and out of the largest finite value gives exactly Inf (0x7F80). */
    uint32_t lsb = (abits >> 16) & 1u;
    uint32_t r = (abits + 0x7FFFu + lsb) >> 16;
    return (uint16_t)((sign >> 16) | r);
}

float mx_quant_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t mag = h & 0x7FFFu;
    if (mag == 0x7C00u)
        return mxi_bits_f32(sign | 0x7F800000u);
    if (mag > 0x7C00u)
        return mxi_bits_f32(sign | 0x7FC00000u | ((mag & 0x03FFu) << 13));
    return decode_magnitude(mag, 10, -14, sign);
}

uint16_t mx_quant_f16_from_f32(float x)
{
    uint32_t bits = mxi_f32_bits(x);
    uint16_t sign = (uint16_t)((bits >> 16) & 0x8000u);
    if (f32_is_nan(bits))
        return (uint16_t)(sign | 0x7E00u); /* canonical quiet NaN, sign kept */
    if (f32_is_inf(bits))
        return (uint16_t)(sign | 0x7C00u);
    uint32_t mag = round_magnitude(bits & 0x7FFFFFFFu, 0, 10, -14);
    if (mag > 0x7BFFu)
        mag = 0x7C00u;
    return (uint16_t)(sign | mag);
}

void mx_quant_bf16_to_f32_n(const uint16_t *in, size_t n, float *out)
{
    for (size_t i = 0; i < n; i++)
        out[i] = mx_quant_bf16_to_f32(in[i]);
}

void mx_quant_bf16_from_f32_n(const float *in, size_t n, uint16_t *out)
{
    for (size_t i = 0; i < n; i++)
        out[i] = mx_quant_bf16_from_f32(in[i]);
}

/* ---------------------------------------------------------------- MXFP4 scale rules */

static const char *const rule_names[MX_SCALE_RULE_COUNT] = {"floor", "round_up", "even", "rceil"};

const char *mx_quant_scale_rule_name(mx_scale_rule_t rule)
{
    if ((int)rule < 0 || rule >= MX_SCALE_RULE_COUNT)
        return "invalid";
    return rule_names[rule];
}

mx_status_t mx_quant_scale_rule_parse(const char *text, mx_scale_rule_t *rule_p)
{
    if (text == NULL || rule_p == NULL)
        return mx_error_set(MX_ERR_INVALID, "mx_quant_scale_rule_parse: NULL %s", text == NULL ? "text" : "rule_p");
    for (int r = 0; r < MX_SCALE_RULE_COUNT; r++) {
        if (strcmp(text, rule_names[r]) == 0) {
            *rule_p = (mx_scale_rule_t)r;
            return MX_OK;
        }
    }
    return mx_error_set(MX_ERR_INVALID, "MXFP4 scale rule \"%s\": expected floor, round_up, even or rceil", text);
}

/* floor(log2(a)) of a finite positive binary32 pattern. */
static int floor_log2_bits(uint32_t abits)
{
    uint32_t ef = abits >> 23;
    if (ef != 0)
        return (int)ef - 127;
    return (31 - __builtin_clz(abits & 0x7FFFFFu)) - 149;
}

static uint8_t biased_clamp(int e)
{
    if (e < -127)
        e = -127;
    if (e > 127)
        e = 127;
    return (uint8_t)(e + 127);
}

/* ceil(log2(a / 6)) exactly, for a finite positive binary32 pattern.
 * a = s * 2^(e-23) with s an integer; a/6 <= 2^n  <=>  s * 2^(e-23) <= 6 * 2^n. */
static int ceil_log2_div6(uint32_t abits)
{
    int fl = floor_log2_bits(abits); /* 2^fl <= a < 2^(fl+1) */
    /* a/6 lies in [2^(fl-3), 2^(fl-2)) scaled: candidate n = fl - 2 or fl - 1 or fl - 3.
     * Smallest n with a <= 6 * 2^n = 1.5 * 2^(n+2). */
    /* compare a with 1.5 * 2^fl: m = a / 2^fl in [1, 2) */
    uint32_t ef = abits >> 23;
    uint32_t frac; /* mantissa of a / 2^fl as a 23-bit fraction */
    if (ef != 0) {
        frac = abits & 0x7FFFFFu;
    } else {
        uint32_t m = abits & 0x7FFFFFu;
        int msb = 31 - __builtin_clz(m);
        frac = (m & ~(1u << msb)) << (23 - msb);
    }
    /* m <= 1.5  <=>  frac <= 0x400000: then a <= 6 * 2^(fl-2), and a > 6 * 2^(fl-3)
     * because a >= 2^fl > 0.75 * 2^fl. Else n = fl - 1. */
    return frac <= 0x400000u ? fl - 2 : fl - 1;
}

uint8_t mx_quant_mxfp4_scale(float amax, mx_scale_rule_t rule)
{
    uint32_t bits = mxi_f32_bits(amax) & 0x7FFFFFFFu;
    if (bits >= 0x7F800000u)
        return 0xFF; /* NaN or Inf */
    if (bits == 0)
        return 0x00; /* zero block: every rule gives 2^-127, elements are zeros */
    switch (rule) {
    case MX_SCALE_FLOOR:
        /* OCP / torchao FLOOR / llama.cpp: floor(log2 amax) - emax(E2M1 = 2). */
        return biased_clamp(floor_log2_bits(bits) - 2);
    case MX_SCALE_EVEN: {
        /* torchao EVEN: round amax to 1 mantissa bit (add half of the dropped
         * part, truncate), then FLOOR. Done on the exponent so the carry past
         * FLT_MAX stays exact (2^128) instead of becoming Inf. */
        int fl = floor_log2_bits(bits);
        uint32_t ef = bits >> 23;
        uint32_t frac;
        if (ef != 0) {
            frac = bits & 0x7FFFFFu;
        } else {
            uint32_t m = bits & 0x7FFFFFu;
            int msb = 31 - __builtin_clz(m);
            frac = (m & ~(1u << msb)) << (23 - msb);
        }
        if (frac + (1u << 21) >= (1u << 23))
            fl += 1; /* mantissa >= 1.75 rounds up to the next power of two */
        return biased_clamp(fl - 2);
    }
    case MX_SCALE_ROUND_UP:
        /* triton_kernels downcast_to_mxfp ROUND_UP, bit for bit: the exponent
         * of the FP32 quotient q = fl32(amax / 6) rounded up,
         * (bits(q) + 0x7FFFFF) & 0x7F800000. Computed without FP arithmetic
         * (so FTZ/DAZ modes cannot change it):
         *  - q normal (amax >= 1.5 * 2^-124, bits 0x01C00000): fl32 rounding
         *    never lands on a power of two unless amax / 6 is one (amax has 24
         *    significant bits), so the byte is ceil(log2(amax / 6)) exactly;
         *  - q subnormal and nonzero (amax > 3 * 2^-149): the rounded-up
         *    exponent field is 1;
         *  - amax <= 3 * 2^-149: q rounds to 0 (3 * 2^-149 / 6 is a tie to
         *    even, 0), byte 0.
         * tests/quant/test_mxfp4.c checks this against the FP32 formula. */
        if (bits >= 0x01C00000u)
            return biased_clamp(ceil_log2_div6(bits));
        return bits > 3u ? 1 : 0;
    case MX_SCALE_RCEIL:
        /* cuBLAS / cvt.rp.satfinite.ue8m0: 2^ceil(log2(amax / 6)) on the exact
         * quotient, saturated to [2^-127, 2^127]. */
        return biased_clamp(ceil_log2_div6(bits));
    default:
        return 0xFF;
    }
}

/* Exposed to quant/mxfp4.c. */
uint8_t mxi_quant_e2m1_encode_scaled(float x, int adj);
uint8_t mxi_quant_e2m1_encode_scaled(float x, int adj)
{
    return e2m1_encode_scaled(x, adj);
}
