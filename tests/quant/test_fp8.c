/* FP8 E4M3FN, E4M3FNUZ and E5M2 scalar codecs: every code point, every tie
 * (both neighbours, both signs, subnormals, overflow), NaN and Inf. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <float.h>

#include "mxep/quant.h"
#include "quant_test_util.h"

typedef struct {
    const char *name;
    uint8_t (*enc)(float);
    float (*dec)(uint8_t);
    double (*spec)(unsigned);
    unsigned maxcode;  /* largest finite positive code */
    int saturates;     /* overflow -> maxcode; else -> Inf code maxcode + 1 */
    int neg_zero_is_0; /* FNUZ: no negative zero */
} fp8_fmt_t;

static uint8_t e5m2_sat(float x)
{
    return mx_quant_e5m2_from_f32(x, 1);
}
static uint8_t e5m2_ieee(float x)
{
    return mx_quant_e5m2_from_f32(x, 0);
}

static const fp8_fmt_t fmts[] = {
    {"e4m3fn", mx_quant_e4m3fn_from_f32, mx_quant_e4m3fn_to_f32, tq_e4m3fn_spec, 0x7E, 1, 0},
    {"e4m3fnuz", mx_quant_e4m3fnuz_from_f32, mx_quant_e4m3fnuz_to_f32, tq_e4m3fnuz_spec, 0x7F, 1, 1},
    {"e5m2 saturate=1", e5m2_sat, mx_quant_e5m2_to_f32, tq_e5m2_spec, 0x7B, 1, 0},
    {"e5m2 saturate=0", e5m2_ieee, mx_quant_e5m2_to_f32, tq_e5m2_spec, 0x7B, 0, 0},
};
#define NFMTS (sizeof fmts / sizeof fmts[0])

static uint8_t negate(const fp8_fmt_t *f, uint8_t code)
{
    if (f->neg_zero_is_0 && code == 0)
        return 0;
    return (uint8_t)(code | 0x80);
}

static void test_fp8_decodes_every_code_to_the_spec_value(void **state)
{
    (void)state;
    for (size_t i = 0; i < NFMTS; i++)
        for (unsigned b = 0; b < 256; b++) {
            float v = fmts[i].dec((uint8_t)b);
            if (!tq_same(fmts[i].spec(b), v))
                fail_msg("%s: code 0x%02X decodes to %a, spec says %a", fmts[i].name, b, (double)v, fmts[i].spec(b));
        }
}

static void test_fp8_decode_anchors_match_the_spec_tables(void **state)
{
    (void)state;
    /* literal values from the OCP OFP8 and AMD FNUZ tables */
    assert_true(mx_quant_e4m3fn_to_f32(0x7E) == 448.0f);
    assert_true(mx_quant_e4m3fn_to_f32(0xFE) == -448.0f);
    assert_true(mx_quant_e4m3fn_to_f32(0x38) == 1.0f);
    assert_true(mx_quant_e4m3fn_to_f32(0x08) == 0x1p-6f);
    assert_true(mx_quant_e4m3fn_to_f32(0x01) == 0x1p-9f);
    assert_true(mx_quant_e4m3fn_to_f32(0x07) == 0x1.cp-7f);
    assert_int_equal(tq_bits(mx_quant_e4m3fn_to_f32(0x80)), 0x80000000u);
    assert_int_equal(tq_bits(mx_quant_e4m3fn_to_f32(0x7F)), 0x7FC00000u);
    assert_int_equal(tq_bits(mx_quant_e4m3fn_to_f32(0xFF)), 0xFFC00000u);

    assert_true(mx_quant_e4m3fnuz_to_f32(0x7F) == 240.0f);
    assert_true(mx_quant_e4m3fnuz_to_f32(0xFF) == -240.0f);
    assert_true(mx_quant_e4m3fnuz_to_f32(0x40) == 1.0f);
    assert_true(mx_quant_e4m3fnuz_to_f32(0x08) == 0x1p-7f);
    assert_true(mx_quant_e4m3fnuz_to_f32(0x01) == 0x1p-10f);
    assert_true(isnan(mx_quant_e4m3fnuz_to_f32(0x80)));

    assert_true(mx_quant_e5m2_to_f32(0x7B) == 57344.0f);
    assert_true(mx_quant_e5m2_to_f32(0x3C) == 1.0f);
    assert_true(mx_quant_e5m2_to_f32(0x04) == 0x1p-14f);
    assert_true(mx_quant_e5m2_to_f32(0x01) == 0x1p-16f);
    assert_true(mx_quant_e5m2_to_f32(0x7C) == INFINITY);
    assert_true(mx_quant_e5m2_to_f32(0xFC) == -INFINITY);
    assert_int_equal(tq_bits(mx_quant_e5m2_to_f32(0x7D)), 0x7FC00000u);
    assert_int_equal(tq_bits(mx_quant_e5m2_to_f32(0xFE)), 0xFFC00000u);
}

static void test_fp8_encodes_every_finite_value_to_its_code(void **state)
{
    (void)state;
    for (size_t i = 0; i < NFMTS; i++)
        for (unsigned c = 0; c <= fmts[i].maxcode; c++) {
            float v = (float)fmts[i].spec(c);
            if (fmts[i].enc(v) != c)
                fail_msg("%s: %a encodes to 0x%02X, want 0x%02X", fmts[i].name, (double)v, fmts[i].enc(v), c);
            uint8_t n = negate(&fmts[i], (uint8_t)c);
            if (fmts[i].enc(-v) != n)
                fail_msg("%s: %a encodes to 0x%02X, want 0x%02X", fmts[i].name, (double)-v, fmts[i].enc(-v), n);
        }
}

/* Every midpoint between neighbouring codes (subnormals included) goes to the
 * even code; one FP32 step either side goes to the nearer neighbour. */
static void test_fp8_encode_rounds_every_tie_to_even_both_signs(void **state)
{
    (void)state;
    for (size_t i = 0; i < NFMTS; i++) {
        const fp8_fmt_t *f = &fmts[i];
        for (unsigned c = 0; c < f->maxcode; c++) {
            double lo = f->spec(c), hi = f->spec(c + 1), mid = (lo + hi) / 2;
            float m = (float)mid;
            assert_true((double)m == mid);
            uint8_t even = (uint8_t)((c & 1u) ? c + 1 : c);
            uint8_t got[3] = {f->enc(m), f->enc(nextafterf(m, 0.0f)), f->enc(nextafterf(m, INFINITY))};
            uint8_t want[3] = {even, (uint8_t)c, (uint8_t)(c + 1)};
            for (int s = 0; s < 2; s++) {
                for (int k = 0; k < 3; k++)
                    if (got[k] != want[k])
                        fail_msg("%s: tie between 0x%02X and 0x%02X (%a), case %d: got 0x%02X, want 0x%02X", f->name, c,
                                 c + 1, s ? -mid : mid, k, got[k], want[k]);
                got[0] = f->enc(-m);
                got[1] = f->enc(-nextafterf(m, 0.0f));
                got[2] = f->enc(-nextafterf(m, INFINITY));
                for (int k = 0; k < 3; k++)
                    want[k] = negate(f, want[k]);
            }
        }
    }
}

static void test_fp8_encode_overflow_saturates_or_goes_to_inf(void **state)
{
    (void)state;
    for (size_t i = 0; i < NFMTS; i++) {
        const fp8_fmt_t *f = &fmts[i];
        double max = f->spec(f->maxcode), ulp = max - f->spec(f->maxcode - 1);
        float tie = (float)(max + ulp / 2);
        uint8_t over = f->saturates ? (uint8_t)f->maxcode : (uint8_t)(f->maxcode + 1);
        /* the max is odd in every format here, so its upper tie rounds away */
        assert_int_equal(f->enc(nextafterf(tie, 0.0f)), f->maxcode);
        assert_int_equal(f->enc(tie), over);
        assert_int_equal(f->enc(nextafterf(tie, INFINITY)), over);
        assert_int_equal(f->enc(FLT_MAX), over);
        assert_int_equal(f->enc(INFINITY), over);
        assert_int_equal(f->enc(-INFINITY), over | 0x80);
        assert_int_equal(f->enc(-FLT_MAX), over | 0x80);
    }
    /* the numbers themselves, from the spec */
    assert_int_equal(mx_quant_e4m3fn_from_f32(464.0f), 0x7E);
    assert_int_equal(mx_quant_e4m3fn_from_f32(1e9f), 0x7E);
    assert_int_equal(mx_quant_e4m3fnuz_from_f32(248.0f), 0x7F);
    assert_int_equal(mx_quant_e5m2_from_f32(61440.0f, 0), 0x7C);
    assert_int_equal(mx_quant_e5m2_from_f32(61440.0f, 1), 0x7B);
    assert_int_equal(mx_quant_e5m2_from_f32(-61440.0f, 0), 0xFC);
}

static void test_fp8_encode_nan_and_zero(void **state)
{
    (void)state;
    const float qnan = tq_float(0x7FC00000u), nnan = tq_float(0xFFC00000u), snan = tq_float(0x7F800001u);
    assert_int_equal(mx_quant_e4m3fn_from_f32(qnan), 0x7F);
    assert_int_equal(mx_quant_e4m3fn_from_f32(nnan), 0xFF);
    assert_int_equal(mx_quant_e4m3fn_from_f32(snan), 0x7F);
    assert_int_equal(mx_quant_e4m3fnuz_from_f32(qnan), 0x80);
    assert_int_equal(mx_quant_e4m3fnuz_from_f32(nnan), 0x80);
    assert_int_equal(mx_quant_e5m2_from_f32(qnan, 0), 0x7E);
    assert_int_equal(mx_quant_e5m2_from_f32(nnan, 1), 0xFE);

    assert_int_equal(mx_quant_e4m3fn_from_f32(-0.0f), 0x80);
    assert_int_equal(mx_quant_e5m2_from_f32(-0.0f, 1), 0x80);
    assert_int_equal(mx_quant_e4m3fnuz_from_f32(-0.0f), 0x00);
    /* below half the smallest subnormal: zero with the sign (FNUZ: plain zero) */
    assert_int_equal(mx_quant_e4m3fn_from_f32(-0x1p-11f), 0x80);
    assert_int_equal(mx_quant_e4m3fnuz_from_f32(-0x1p-12f), 0x00);
    assert_int_equal(mx_quant_e5m2_from_f32(0x1p-18f, 0), 0x00);
    assert_int_equal(mx_quant_e4m3fn_from_f32(tq_float(0x00000001u)), 0x00);
    assert_int_equal(mx_quant_e4m3fn_from_f32(tq_float(0x80000001u)), 0x80);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fp8_decodes_every_code_to_the_spec_value),
        cmocka_unit_test(test_fp8_decode_anchors_match_the_spec_tables),
        cmocka_unit_test(test_fp8_encodes_every_finite_value_to_its_code),
        cmocka_unit_test(test_fp8_encode_rounds_every_tie_to_even_both_signs),
        cmocka_unit_test(test_fp8_encode_overflow_saturates_or_goes_to_inf),
        cmocka_unit_test(test_fp8_encode_nan_and_zero),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
