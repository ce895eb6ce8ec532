/* MXFP4 rows: the four scale rules on hand-made blocks where they disagree,
 * nibble order, decode, random round trips with the format's error bound, and
 * the failure paths. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <float.h>
#include <stdlib.h>
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

#include "mxep/quant.h"
#include "quant_test_util.h"

#define B MX_MXFP4_BLOCK

/* ---------------------------------------------------------------- scale rules */

/* Expected E8M0 bytes, worked out by hand from FORMATS.md Part 2 section 2:
 * floor    = floor(log2 amax) - 2
 * round_up = exponent of fl32(amax / 6) rounded up (triton_kernels)
 * even     = floor(log2 amax) - 2, +1 when amax's mantissa >= 1.75
 * rceil    = ceil(log2(amax / 6)), clamped to [-127, 127]
 * (+127 bias). amax = m * 2^e. */
static const struct {
    const char *what;
    float amax;
    uint8_t floor_b, round_up_b, even_b, rceil_b;
} rule_cases[] = {
    {"m = 1.0     (8)", 8.0f, 128, 128, 128, 128},
    {"m = 1.25 < 1.5 (10)", 10.0f, 128, 128, 128, 128},
    {"m = 1.5     (12)", 12.0f, 128, 128, 128, 128},
    {"m = 1.5 + ulp", 0x1.800002p3f, 128, 129, 128, 129},
    {"m = 1.625 > 1.5 (13)", 13.0f, 128, 129, 128, 129},
    {"m = 1.75    (14)", 14.0f, 128, 129, 129, 129},
    {"m = 1.75 - ulp", 0x1.bffffep3f, 128, 129, 128, 129},
    {"m = 1.9375  (15.5)", 15.5f, 128, 129, 129, 129},
    {"amax = 6 * 2^0", 6.0f, 127, 127, 127, 127},
    {"amax = 1", 1.0f, 125, 125, 125, 125},
    {"amax = 0.75", 0.75f, 124, 124, 124, 124},
    {"FLT_MAX", FLT_MAX, 252, 253, 253, 253},
    {"1.5 * 2^127", 0x1.8p127f, 252, 252, 252, 252},
    {"1.625 * 2^127", 0x1.ap127f, 252, 253, 252, 253},
    {"smallest byte-1 floor: 2^-124", 0x1p-124f, 1, 1, 1, 1},
    {"2^-125 (floor clamps)", 0x1p-125f, 0, 1, 0, 0}, /* round_up: FP32 quotient is subnormal -> 2^-126 */
    {"2^-130 (FP32 subnormal)", 0x1p-130f, 0, 1, 0, 0},
    {"smallest FP32 subnormal", 0x1p-149f, 0, 0, 0, 0}, /* fl32(2^-149 / 6) = 0 */
    {"zero", 0.0f, 0, 0, 0, 0},
};

static void test_mxfp4_scale_rules_give_the_hand_worked_bytes(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof rule_cases / sizeof rule_cases[0]; i++) {
        const uint8_t want[4] = {rule_cases[i].floor_b, rule_cases[i].round_up_b, rule_cases[i].even_b,
                                 rule_cases[i].rceil_b};
        for (int r = 0; r < MX_SCALE_RULE_COUNT; r++) {
            uint8_t got = mx_quant_mxfp4_scale(rule_cases[i].amax, (mx_scale_rule_t)r);
            if (got != want[r])
                fail_msg("%s, rule %s: byte %u, want %u", rule_cases[i].what,
                         mx_quant_scale_rule_name((mx_scale_rule_t)r), got, want[r]);
        }
    }
}

/* Each rule against an independent formula, on random amax of every binade
 * (FP32 subnormals included): round_up against triton's own FP32 expression,
 * the others through frexp() in double precision. */
static int ceil_log2_d(double q) /* exact for q = amax / 6 computed in double */
{
    int e;
    double m = frexp(q, &e); /* q = m * 2^e, 0.5 <= m < 1 */
    return m == 0.5 ? e - 1 : e;
}

static uint8_t clamp_byte(int e)
{
    return (uint8_t)((e < -127 ? -127 : e > 127 ? 127 : e) + 127);
}

static void test_mxfp4_scale_rules_match_independent_formulas(void **state)
{
    (void)state;
    const uint64_t seed = 0x5CA1Eull;
    TQ_SEED_PRINT(seed);
    tq_rng_t r = {seed};
    for (int i = 0; i < 400000; i++) {
        uint32_t bits = (uint32_t)tq_next(&r) & 0x7FFFFFFFu;
        if (i % 4 == 1)
            bits &= 0x027FFFFFu; /* crowd the tiny binades */
        if (i % 4 == 2)
            bits = (uint32_t)(tq_next(&r) % 64u); /* the smallest subnormals */
        if (bits >= 0x7F800000u || bits == 0)
            continue;
        float amax = tq_float(bits);
        int e;
        double m = frexp((double)amax, &e); /* amax = m * 2^e: floor(log2 amax) = e - 1 */
        uint8_t want_floor = clamp_byte(e - 1 - 2);
        uint8_t want_even = clamp_byte((m >= 0.875 ? e : e - 1) - 2);
        uint8_t want_rceil = clamp_byte(ceil_log2_d((double)amax / 6.0));
        volatile float six = 6.0f;
        uint8_t want_up = (uint8_t)(((tq_bits(amax / six) + 0x7FFFFFu) & 0x7F800000u) >> 23);
        uint8_t got[4];
        for (int k = 0; k < 4; k++)
            got[k] = mx_quant_mxfp4_scale(amax, (mx_scale_rule_t)k);
        if (got[0] != want_floor || got[1] != want_up || got[2] != want_even || got[3] != want_rceil)
            fail_msg("amax %a (0x%08X): floor %u/%u round_up %u/%u even %u/%u rceil %u/%u", (double)amax, bits, got[0],
                     want_floor, got[1], want_up, got[2], want_even, got[3], want_rceil);
    }
}

static void test_mxfp4_scale_of_nonfinite_amax_is_ff(void **state)
{
    (void)state;
    for (int r = 0; r < MX_SCALE_RULE_COUNT; r++) {
        assert_int_equal(mx_quant_mxfp4_scale(INFINITY, (mx_scale_rule_t)r), 0xFF);
        assert_int_equal(mx_quant_mxfp4_scale(tq_float(0x7FC00000u), (mx_scale_rule_t)r), 0xFF);
    }
}

/* One block whose max |x| is amax (at position 5, negative), the rest small. */
static void make_block(float amax, float *x)
{
    for (int i = 0; i < B; i++)
        x[i] = (float)((i % 7) - 3) * 0.125f * (amax / 8.0f);
    x[5] = -amax;
}

/* Where the rules disagree, the elements differ too: amax 14 under floor has
 * scale 2 and 14/2 = 7 clips to 6 (code 7); under round_up/even/rceil the
 * scale is 4 and 14/4 = 3.5 is a tie that rounds to 4 (code 6). */
static void test_mxfp4_rules_disagree_on_elements_above_one_point_five(void **state)
{
    (void)state;
    float x[B];
    uint8_t packed[B / 2], scale;
    make_block(14.0f, x);
    static const struct {
        mx_scale_rule_t rule;
        uint8_t scale, code5;
        float back5;
    } want[] = {
        {MX_SCALE_FLOOR, 128, 0xF, -12.0f},
        {MX_SCALE_ROUND_UP, 129, 0xE, -16.0f},
        {MX_SCALE_EVEN, 129, 0xE, -16.0f},
        {MX_SCALE_RCEIL, 129, 0xE, -16.0f},
    };
    for (size_t i = 0; i < 4; i++) {
        memset(packed, 0xA5, sizeof packed);
        scale = 0xA5;
        assert_int_equal(mx_quant_mxfp4_encode_row(x, B, want[i].rule, packed, &scale), MX_OK);
        assert_int_equal(scale, want[i].scale);
        assert_int_equal(packed[2] >> 4, want[i].code5); /* element 5: high nibble of byte 2 */
        float y[B];
        assert_int_equal(mx_quant_mxfp4_decode_row(packed, &scale, B, y), MX_OK);
        assert_true(y[5] == want[i].back5);
    }
    /* amax 13 (m = 1.625): floor clips 6.5 -> 6; round_up gives 13/4 = 3.25 -> 3 */
    make_block(13.0f, x);
    assert_int_equal(mx_quant_mxfp4_encode_row(x, B, MX_SCALE_FLOOR, packed, &scale), MX_OK);
    assert_int_equal(scale, 128);
    assert_int_equal(packed[2] >> 4, 0xF);
    assert_int_equal(mx_quant_mxfp4_encode_row(x, B, MX_SCALE_EVEN, packed, &scale), MX_OK);
    assert_int_equal(scale, 128);
    assert_int_equal(packed[2] >> 4, 0xF);
    assert_int_equal(mx_quant_mxfp4_encode_row(x, B, MX_SCALE_ROUND_UP, packed, &scale), MX_OK);
    assert_int_equal(scale, 129);
    assert_int_equal(packed[2] >> 4, 0xD);
    /* amax 12 (m = 1.5): every rule gives scale 2 and the exact code for 6 */
    make_block(12.0f, x);
    for (int r = 0; r < MX_SCALE_RULE_COUNT; r++) {
        assert_int_equal(mx_quant_mxfp4_encode_row(x, B, (mx_scale_rule_t)r, packed, &scale), MX_OK);
        assert_int_equal(scale, 128);
        assert_int_equal(packed[2] >> 4, 0xF);
    }
    /* amax 10 (m = 1.25): scale 2, 10/2 = 5 is a tie 4|6 -> 4 (code 6) */
    make_block(10.0f, x);
    for (int r = 0; r < MX_SCALE_RULE_COUNT; r++) {
        assert_int_equal(mx_quant_mxfp4_encode_row(x, B, (mx_scale_rule_t)r, packed, &scale), MX_OK);
        assert_int_equal(scale, 128);
        assert_int_equal(packed[2] >> 4, 0xE);
    }
}

static void test_mxfp4_all_zero_block_gives_byte_zero_and_signed_zeros(void **state)
{
    (void)state;
    float x[B];
    for (int i = 0; i < B; i++)
        x[i] = (i % 3 == 0) ? -0.0f : 0.0f;
    for (int r = 0; r < MX_SCALE_RULE_COUNT; r++) {
        uint8_t packed[B / 2], scale = 0xA5;
        memset(packed, 0xA5, sizeof packed);
        assert_int_equal(mx_quant_mxfp4_encode_row(x, B, (mx_scale_rule_t)r, packed, &scale), MX_OK);
        assert_int_equal(scale, 0x00);
        for (int j = 0; j < B / 2; j++) {
            uint8_t lo = (2 * j) % 3 == 0 ? 0x8 : 0x0, hi = (2 * j + 1) % 3 == 0 ? 0x8 : 0x0;
            assert_int_equal(packed[j], lo | (hi << 4));
        }
        float y[B];
        assert_int_equal(mx_quant_mxfp4_decode_row(packed, &scale, B, y), MX_OK);
        for (int i = 0; i < B; i++) {
            assert_true(y[i] == 0.0f);
            assert_int_equal(!!signbit(y[i]), i % 3 == 0);
        }
    }
}

static void test_mxfp4_block_with_nan_or_inf_gets_ff_and_decodes_to_nan(void **state)
{
    (void)state;
    const float bad[] = {tq_float(0x7FC00000u), INFINITY, -INFINITY};
    for (size_t k = 0; k < 3; k++)
        for (int r = 0; r < MX_SCALE_RULE_COUNT; r++) {
            float x[2 * B];
            for (int i = 0; i < 2 * B; i++)
                x[i] = 0.375f * (float)(i - 20);
            x[B + 7] = bad[k]; /* second block only */
            uint8_t packed[B], scales[2] = {0xA5, 0xA5};
            assert_int_equal(mx_quant_mxfp4_encode_row(x, 2 * B, (mx_scale_rule_t)r, packed, scales), MX_OK);
            assert_int_equal(scales[1], 0xFF);
            assert_true(scales[0] != 0xFF);
            /* element codes of the bad block are zeros with each input's sign */
            for (int j = 0; j < B / 2; j++) {
                uint8_t lo = signbit(x[B + 2 * j]) ? 0x8 : 0x0, hi = signbit(x[B + 2 * j + 1]) ? 0x8 : 0x0;
                assert_int_equal(packed[B / 2 + j], lo | (hi << 4));
            }
            float y[2 * B];
            assert_int_equal(mx_quant_mxfp4_decode_row(packed, scales, 2 * B, y), MX_OK);
            for (int i = 0; i < B; i++) {
                assert_false(isnan(y[i]));
                assert_true(isnan(y[B + i]));
            }
        }
}

/* ---------------------------------------------------------------- layout and decode */

static void test_mxfp4_packs_element_2j_in_the_low_nibble(void **state)
{
    (void)state;
    /* elements 0..31 = codes 0,1,...,15,0,1,...: with scale 2^0 (amax 6 -> floor
     * byte 127) each element is its own E2M1 value */
    float x[B];
    for (int i = 0; i < B; i++)
        x[i] = (float)tq_e2m1_spec[i % 16];
    uint8_t packed[B / 2], scale;
    assert_int_equal(mx_quant_mxfp4_encode_row(x, B, MX_SCALE_FLOOR, packed, &scale), MX_OK);
    assert_int_equal(scale, 127);
    static const uint8_t want[B / 2] = {0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE,
                                        0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE};
    assert_memory_equal(packed, want, sizeof want);
}

static void test_mxfp4_decode_is_exact_for_hand_made_bytes(void **state)
{
    (void)state;
    /* byte j = 0x71: element 2j = 0.5, element 2j+1 = 6 */
    uint8_t packed[B / 2 * 4];
    memset(packed, 0x71, sizeof packed);
    const uint8_t scales[4] = {127, 0, 254, 130};
    float y[4 * B];
    assert_int_equal(mx_quant_mxfp4_decode_row(packed, scales, 4 * B, y), MX_OK);
    assert_true(y[0] == 0.5f && y[1] == 6.0f);
    /* scale 2^-127: 0.5 * 2^-127 = 2^-128 and 6 * 2^-127, FP32 subnormals, not flushed */
    assert_int_equal(tq_bits(y[B]), 0x00200000u);
    assert_int_equal(tq_bits(y[B + 1]), 0x01400000u); /* 1.5 * 2^-125: normal */
    /* scale 2^127: 0.5 * 2^127 exact, 6 * 2^127 overflows FP32 -> Inf */
    assert_true(y[2 * B] == 0x1p126f);
    assert_true(isinf(y[2 * B + 1]) && y[2 * B + 1] > 0);
    assert_true(y[3 * B] == 4.0f && y[3 * B + 1] == 48.0f);
}

/* A process linked with -ffast-math runs with FTZ and DAZ set: decoding must
 * still give 2^-128 for 0.5 under scale byte 0 (scalar and fast paths). */
static void test_mxfp4_decode_is_exact_under_flush_to_zero(void **state)
{
    (void)state;
#if defined(__x86_64__) || defined(__i386__)
    uint8_t packed[B / 2];
    memset(packed, 0x21, sizeof packed); /* 0.5, 1.0 */
    const uint8_t scales[1] = {0};
    float a[B], b[B];
    unsigned csr = _mm_getcsr();
    _mm_setcsr(csr | 0x8040u); /* FTZ (bit 15) | DAZ (bit 6) */
    mx_status_t sa = mx_quant_mxfp4_decode_row(packed, scales, B, a);
    mx_status_t sb = mx_quant_mxfp4_decode_row_fast(packed, scales, B, b);
    volatile float tiny = 0x1p-127f, half = 0.5f;
    float flushed = tiny * half; /* shows the mode was really on */
    _mm_setcsr(csr);
    assert_int_equal(sa, MX_OK);
    assert_int_equal(sb, MX_OK);
    assert_true(flushed == 0.0f);
    assert_int_equal(tq_bits(a[0]), 0x00200000u); /* 2^-128 */
    assert_int_equal(tq_bits(a[1]), 0x00400000u); /* 2^-127 */
    assert_memory_equal(a, b, sizeof a);
#else
    skip();
#endif
}

static void test_mxfp4_decode_bf16_matches_float_decode(void **state)
{
    (void)state;
    enum { K = 256 * B };
    uint8_t *packed = malloc(K / 2), *scales = malloc(K / B);
    float *y = malloc(K * sizeof *y);
    uint16_t *h = malloc(K * sizeof *h);
    assert_non_null(packed);
    assert_non_null(scales);
    assert_non_null(y);
    assert_non_null(h);
    for (size_t i = 0; i < K / 2; i++)
        packed[i] = (uint8_t)(i * 37u + 11u);
    for (size_t b = 0; b < K / B; b++)
        scales[b] = (uint8_t)b; /* every scale byte, 0xFF included */
    memset(h, 0xA5, K * sizeof *h);
    assert_int_equal(mx_quant_mxfp4_decode_row(packed, scales, K, y), MX_OK);
    assert_int_equal(mx_quant_mxfp4_decode_row_bf16(packed, scales, K, h), MX_OK);
    for (size_t i = 0; i < K; i++)
        assert_int_equal(h[i], mx_quant_bf16_from_f32(y[i]));
    free(packed);
    free(scales);
    free(y);
    free(h);
}

/* ---------------------------------------------------------------- round trips */

/* |E2M1| values, for the nearest-value check */
static const double mags[8] = {0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0};

static void test_mxfp4_random_round_trip_is_nearest_value_within_bound(void **state)
{
    (void)state;
    const uint64_t seed = 0x4D58465034ull;
    TQ_SEED_PRINT(seed);
    tq_rng_t r = {seed};
    enum { NBLK = 64, K = NBLK * B };
    float *x = malloc(K * sizeof *x), *y = malloc(K * sizeof *y);
    uint8_t *packed = malloc(K / 2), *scales = malloc(NBLK);
    assert_non_null(x);
    assert_non_null(y);
    assert_non_null(packed);
    assert_non_null(scales);
    for (int iter = 0; iter < 200; iter++) {
        for (size_t b = 0; b < NBLK; b++) {
            int e = (int)(tq_next(&r) % 200) - 100; /* block magnitude 2^-100 .. 2^99 */
            for (size_t i = 0; i < B; i++)
                x[b * B + i] = tq_spread(&r, e - 6, e);
        }
        for (int rule = 0; rule < MX_SCALE_RULE_COUNT; rule++) {
            memset(packed, 0xA5, K / 2);
            memset(scales, 0xA5, NBLK);
            assert_int_equal(mx_quant_mxfp4_encode_row(x, K, (mx_scale_rule_t)rule, packed, scales), MX_OK);
            assert_int_equal(mx_quant_mxfp4_decode_row(packed, scales, K, y), MX_OK);
            for (size_t b = 0; b < NBLK; b++) {
                double amax = 0;
                for (size_t i = 0; i < B; i++)
                    amax = fmax(amax, fabs((double)x[b * B + i]));
                double s = ldexp(1.0, (int)scales[b] - 127);
                double ratio = amax / s;
                /* the rule's defining range for amax / scale */
                double lo = rule == MX_SCALE_FLOOR ? 4.0 : rule == MX_SCALE_EVEN ? 3.5 : 3.0;
                double hi = rule == MX_SCALE_FLOOR ? 8.0 : rule == MX_SCALE_EVEN ? 7.0 : 6.0;
                if (!(ratio >= lo && (ratio < hi || (hi == 6.0 && ratio == 6.0))))
                    fail_msg("iter %d rule %s block %zu: amax/scale = %g outside [%g, %g)", iter,
                             mx_quant_scale_rule_name((mx_scale_rule_t)rule), b, ratio, lo, hi);
                for (size_t i = 0; i < B; i++) {
                    double v = fabs((double)x[b * B + i]) / s, q = fabs((double)y[b * B + i]) / s;
                    /* decoded value is the E2M1 value nearest to x / scale (saturating at 6) */
                    double best = 1e300;
                    for (int m = 0; m < 8; m++)
                        best = fmin(best, fabs(fmin(v, 6.0) - mags[m]));
                    if (fabs(fmin(v, 6.0) - q) != best || !!signbit(x[b * B + i]) != !!signbit(y[b * B + i]))
                        fail_msg("iter %d rule %s: x = %a decoded to %a (scale 2^%d)", iter,
                                 mx_quant_scale_rule_name((mx_scale_rule_t)rule), (double)x[b * B + i],
                                 (double)y[b * B + i], (int)scales[b] - 127);
                    /* error bound: half an E2M1 step below 6, clipping above */
                    double half = v < 2 ? 0.25 : v < 4 ? 0.5 : 1.0;
                    double bound = v <= 6 ? half : v - 6;
                    assert_true(fabs(v - q) <= bound);
                }
            }
        }
    }
    free(x);
    free(y);
    free(packed);
    free(scales);
}

/* ---------------------------------------------------------------- names and failure paths */

static void test_mxfp4_rule_names_parse_back(void **state)
{
    (void)state;
    static const char *names[] = {"floor", "round_up", "even", "rceil"};
    for (int r = 0; r < MX_SCALE_RULE_COUNT; r++) {
        assert_string_equal(mx_quant_scale_rule_name((mx_scale_rule_t)r), names[r]);
        mx_scale_rule_t got = (mx_scale_rule_t)99;
        assert_int_equal(mx_quant_scale_rule_parse(names[r], &got), MX_OK);
        assert_int_equal(got, r);
    }
    assert_string_equal(mx_quant_scale_rule_name(MX_SCALE_RULE_COUNT), "invalid");
    mx_scale_rule_t keep = (mx_scale_rule_t)77;
    assert_int_equal(mx_quant_scale_rule_parse("ceil", &keep), MX_ERR_INVALID);
    assert_int_equal(keep, 77);
    assert_non_null(strstr(mx_error_detail(), "\"ceil\""));
    assert_non_null(strstr(mx_error_detail(), "round_up"));
    assert_int_equal(mx_quant_scale_rule_parse("FLOOR", &keep), MX_ERR_INVALID);
    assert_int_equal(mx_quant_scale_rule_parse(NULL, &keep), MX_ERR_INVALID);
    assert_int_equal(mx_quant_scale_rule_parse("floor", NULL), MX_ERR_INVALID);
    assert_int_equal(keep, 77);
}

static void test_mxfp4_bad_arguments_leave_outputs_untouched(void **state)
{
    (void)state;
    float x[2 * B], y[2 * B];
    for (int i = 0; i < 2 * B; i++)
        x[i] = 0.1f * (float)(i + 1);
    uint8_t packed[B], scales[2];
    const uint8_t zero_packed[B] = {0};
    memset(packed, 0xA5, sizeof packed);
    memset(scales, 0xA5, sizeof scales);
    uint8_t pk0[B], sc0[2];
    memcpy(pk0, packed, sizeof pk0);
    memcpy(sc0, scales, sizeof sc0);

    assert_int_equal(mx_quant_mxfp4_encode_row(NULL, B, MX_SCALE_FLOOR, packed, scales), MX_ERR_INVALID);
    assert_int_equal(mx_quant_mxfp4_encode_row(x, B, MX_SCALE_FLOOR, NULL, scales), MX_ERR_INVALID);
    assert_int_equal(mx_quant_mxfp4_encode_row(x, B, MX_SCALE_FLOOR, packed, NULL), MX_ERR_INVALID);
    assert_int_equal(mx_quant_mxfp4_encode_row(x, 48, MX_SCALE_FLOOR, packed, scales), MX_ERR_INVALID);
    assert_non_null(strstr(mx_error_detail(), "k = 48"));
    assert_int_equal(mx_quant_mxfp4_encode_row(x, B, MX_SCALE_RULE_COUNT, packed, scales), MX_ERR_INVALID);
    assert_int_equal(mx_quant_mxfp4_encode_row(x, B, (mx_scale_rule_t)-1, packed, scales), MX_ERR_INVALID);
    assert_memory_equal(packed, pk0, sizeof pk0);
    assert_memory_equal(scales, sc0, sizeof sc0);

    for (int i = 0; i < 2 * B; i++)
        y[i] = tq_float(0x7FA5A5A5u);
    float y0[2 * B];
    memcpy(y0, y, sizeof y0);
    uint16_t h[2 * B], h0[2 * B];
    memset(h, 0xA5, sizeof h);
    memcpy(h0, h, sizeof h0);
    mx_status_t (*dec[])(const uint8_t *, const uint8_t *, size_t, float *) = {mx_quant_mxfp4_decode_row,
                                                                               mx_quant_mxfp4_decode_row_fast};
    mx_status_t (*dech[])(const uint8_t *, const uint8_t *, size_t, uint16_t *) = {mx_quant_mxfp4_decode_row_bf16,
                                                                                   mx_quant_mxfp4_decode_row_bf16_fast};
    for (int f = 0; f < 2; f++) {
        assert_int_equal(dec[f](NULL, scales, B, y), MX_ERR_INVALID);
        assert_int_equal(dec[f](zero_packed, NULL, B, y), MX_ERR_INVALID);
        assert_int_equal(dec[f](zero_packed, scales, B, NULL), MX_ERR_INVALID);
        assert_int_equal(dec[f](zero_packed, scales, 31, y), MX_ERR_INVALID);
        assert_int_equal(dech[f](NULL, scales, B, h), MX_ERR_INVALID);
        assert_int_equal(dech[f](zero_packed, scales, 33, h), MX_ERR_INVALID);
        assert_int_equal(dech[f](zero_packed, scales, B, NULL), MX_ERR_INVALID);
    }
    assert_memory_equal(y, y0, sizeof y0);
    assert_memory_equal(h, h0, sizeof h0);
    /* k = 0 is a valid empty row */
    assert_int_equal(mx_quant_mxfp4_encode_row(x, 0, MX_SCALE_FLOOR, packed, scales), MX_OK);
    assert_memory_equal(packed, pk0, sizeof pk0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mxfp4_scale_rules_give_the_hand_worked_bytes),
        cmocka_unit_test(test_mxfp4_scale_rules_match_independent_formulas),
        cmocka_unit_test(test_mxfp4_scale_of_nonfinite_amax_is_ff),
        cmocka_unit_test(test_mxfp4_rules_disagree_on_elements_above_one_point_five),
        cmocka_unit_test(test_mxfp4_all_zero_block_gives_byte_zero_and_signed_zeros),
        cmocka_unit_test(test_mxfp4_block_with_nan_or_inf_gets_ff_and_decodes_to_nan),
        cmocka_unit_test(test_mxfp4_packs_element_2j_in_the_low_nibble),
        cmocka_unit_test(test_mxfp4_decode_is_exact_for_hand_made_bytes),
        cmocka_unit_test(test_mxfp4_decode_is_exact_under_flush_to_zero),
        cmocka_unit_test(test_mxfp4_decode_bf16_matches_float_decode),
        cmocka_unit_test(test_mxfp4_random_round_trip_is_nearest_value_within_bound),
        cmocka_unit_test(test_mxfp4_rule_names_parse_back),
        cmocka_unit_test(test_mxfp4_bad_arguments_leave_outputs_untouched),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
