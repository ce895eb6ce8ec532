/* Helpers for the quant/ tests: a seeded generator, the values of each format
 * written from its specification (independent of quant/), poisoning.
 *
 * The value functions below restate the format definitions of FORMATS.md
 * Part 2 (OCP MX v1.0, OCP OFP8 rev 1.0, IEEE 754, AMD FNUZ) in double
 * precision. They do not call quant/. */
#ifndef MXEP_QUANT_TEST_UTIL_H
#define MXEP_QUANT_TEST_UTIL_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

static inline uint32_t tq_bits(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    return u;
}

static inline float tq_float(uint32_t u)
{
    float x;
    memcpy(&x, &u, 4);
    return x;
}

/* splitmix64: fixed seeds, printed by each test that uses them. */
typedef struct {
    uint64_t s;
} tq_rng_t;

static inline uint64_t tq_next(tq_rng_t *r)
{
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* uniform in [-1, 1), never exactly 0 */
static inline float tq_uniform(tq_rng_t *r)
{
    for (;;) {
        float v = (float)((double)(tq_next(r) >> 11) * 0x1.0p-53 * 2.0 - 1.0);
        if (v != 0.0f)
            return v;
    }
}

/* a random nonzero value with magnitude about 2^lo .. 2^hi */
static inline float tq_spread(tq_rng_t *r, int lo, int hi)
{
    int e = lo + (int)(tq_next(r) % (uint64_t)(hi - lo + 1));
    return ldexpf(tq_uniform(r), e);
}

#define TQ_SEED_PRINT(seed) print_message("[ seed     ] %s: seed %llu\n", __func__, (unsigned long long)(seed))

/* ---------------------------------------------------------------- spec values */

/* FP4 E2M1 (FORMATS.md Part 2 section 1, OCP MX v1.0 table): code -> value. */
static const double tq_e2m1_spec[16] = {+0.0, +0.5, +1.0, +1.5, +2.0, +3.0, +4.0, +6.0,
                                        -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0};

/* A sign / exponent / mantissa minifloat without special codes:
 * exponent field 0: (m / 2^mbits) * 2^(1 - bias); else (1 + m / 2^mbits) * 2^(e - bias). */
static inline double tq_minifloat(unsigned code, int ebits, int mbits, int bias)
{
    unsigned m = code & ((1u << mbits) - 1u);
    unsigned e = (code >> mbits) & ((1u << ebits) - 1u);
    int neg = (code >> (ebits + mbits)) & 1u;
    double v = e == 0 ? ldexp((double)m, 1 - bias - mbits) : ldexp((double)((1u << mbits) + m), (int)e - bias - mbits);
    return neg ? -v : v;
}

/* OCP OFP8 E4M3FN: bias 7, S.1111.111 is NaN, no Inf. Returns NAN for NaN codes. */
static inline double tq_e4m3fn_spec(unsigned b)
{
    if ((b & 0x7F) == 0x7F)
        return NAN;
    return tq_minifloat(b, 4, 3, 7);
}

/* AMD E4M3FNUZ: bias 8, 0x80 is the only NaN, no negative zero, no Inf. */
static inline double tq_e4m3fnuz_spec(unsigned b)
{
    if (b == 0x80)
        return NAN;
    return tq_minifloat(b, 4, 3, 8);
}

/* OCP OFP8 E5M2: bias 15, IEEE-like: S.11111.00 Inf, S.11111.{01,10,11} NaN. */
static inline double tq_e5m2_spec(unsigned b)
{
    if ((b & 0x7C) == 0x7C)
        return (b & 0x03) ? NAN : ((b & 0x80) ? -INFINITY : INFINITY);
    return tq_minifloat(b, 5, 2, 15);
}

/* E8M0: 2^(b - 127), 0xFF NaN. */
static inline double tq_e8m0_spec(unsigned b)
{
    return b == 0xFF ? NAN : ldexp(1.0, (int)b - 127);
}

/* IEEE binary16 and bfloat16 (an FP32 with the low 16 mantissa bits dropped). */
static inline double tq_f16_spec(unsigned h)
{
    if ((h & 0x7C00) == 0x7C00)
        return (h & 0x3FF) ? NAN : ((h & 0x8000) ? -INFINITY : INFINITY);
    return tq_minifloat(h, 5, 10, 15);
}

static inline double tq_bf16_spec(unsigned h)
{
    if ((h & 0x7F80) == 0x7F80)
        return (h & 0x7F) ? NAN : ((h & 0x8000) ? -INFINITY : INFINITY);
    return tq_minifloat(h, 8, 7, 127);
}

/* value equality that also tells -0 from +0 and treats NaN == NaN */
static inline int tq_same(double want, float got)
{
    if (isnan(want))
        return isnan(got);
    return (double)got == want && !!signbit(want) == !!signbit(got);
}

#endif
