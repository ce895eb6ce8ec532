/* FP4 E2M1: every code point, every tie, saturation, signed zero, NaN. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <float.h>

#include "mxep/quant.h"
#include "quant_test_util.h"

static void test_e2m1_decodes_every_code_to_the_spec_table(void **state)
{
    (void)state;
    for (unsigned c = 0; c < 16; c++) {
        float v = mx_quant_e2m1_to_f32((uint8_t)c);
        if (!tq_same(tq_e2m1_spec[c], v))
            fail_msg("code 0x%X decodes to %a, spec says %a", c, (double)v, tq_e2m1_spec[c]);
    }
    /* only the low nibble counts */
    assert_true(tq_same(6.0, mx_quant_e2m1_to_f32(0xF7)));
}

static void test_e2m1_encodes_every_value_to_its_code(void **state)
{
    (void)state;
    for (unsigned c = 0; c < 16; c++)
        assert_int_equal(mx_quant_e2m1_from_f32((float)tq_e2m1_spec[c]), c);
}

/* Ties between neighbours go to the code with mantissa bit 0 (the even code). */
static const struct {
    float x;
    uint8_t code;
} e2m1_ties[] = {
    {0.25f, 0x0}, /* 0 | 0.5 -> 0 */
    {0.75f, 0x2}, /* 0.5 | 1.0 -> 1.0 */
    {1.25f, 0x2}, /* 1.0 | 1.5 -> 1.0 */
    {1.75f, 0x4}, /* 1.5 | 2.0 -> 2.0 */
    {2.5f, 0x4},  /* 2.0 | 3.0 -> 2.0 */
    {3.5f, 0x6},  /* 3.0 | 4.0 -> 4.0 */
    {5.0f, 0x6},  /* 4.0 | 6.0 -> 4.0 */
};

static void test_e2m1_encode_rounds_ties_to_even_both_signs(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof e2m1_ties / sizeof e2m1_ties[0]; i++) {
        float x = e2m1_ties[i].x;
        uint8_t want = e2m1_ties[i].code;
        if (mx_quant_e2m1_from_f32(x) != want)
            fail_msg("tie %g: got 0x%X, want 0x%X", (double)x, mx_quant_e2m1_from_f32(x), want);
        if (mx_quant_e2m1_from_f32(-x) != (uint8_t)(want | 0x8))
            fail_msg("tie %g: got 0x%X, want 0x%X", (double)-x, mx_quant_e2m1_from_f32(-x), want | 0x8);
    }
}

static void test_e2m1_encode_just_off_a_tie_goes_to_the_nearer_neighbour(void **state)
{
    (void)state;
    static const float lo_val[] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f};
    static const uint8_t lo_code[] = {0x0, 0x1, 0x2, 0x3, 0x4, 0x5, 0x6};
    for (size_t i = 0; i < 7; i++) {
        float tie = e2m1_ties[i].x;
        float above = nextafterf(tie, INFINITY), below = nextafterf(tie, 0.0f);
        assert_true(tie > lo_val[i]);
        assert_int_equal(mx_quant_e2m1_from_f32(below), lo_code[i]);
        assert_int_equal(mx_quant_e2m1_from_f32(above), lo_code[i] + 1);
        assert_int_equal(mx_quant_e2m1_from_f32(-below), lo_code[i] | 0x8);
        assert_int_equal(mx_quant_e2m1_from_f32(-above), (lo_code[i] + 1) | 0x8);
    }
}

static void test_e2m1_encode_saturates_at_six(void **state)
{
    (void)state;
    const float big[] = {6.0f, nextafterf(6.0f, INFINITY), 7.0f, 8.0f, 1e6f, FLT_MAX, INFINITY};
    for (size_t i = 0; i < sizeof big / sizeof big[0]; i++) {
        assert_int_equal(mx_quant_e2m1_from_f32(big[i]), 0x7);
        assert_int_equal(mx_quant_e2m1_from_f32(-big[i]), 0xF);
    }
}

static void test_e2m1_encode_keeps_the_sign_of_zero(void **state)
{
    (void)state;
    assert_int_equal(mx_quant_e2m1_from_f32(0.0f), 0x0);
    assert_int_equal(mx_quant_e2m1_from_f32(-0.0f), 0x8);
    /* values that round to zero keep their sign */
    assert_int_equal(mx_quant_e2m1_from_f32(0.1f), 0x0);
    assert_int_equal(mx_quant_e2m1_from_f32(-0.1f), 0x8);
    assert_int_equal(mx_quant_e2m1_from_f32(-0.25f), 0x8);
    /* FP32 subnormals and the smallest normal round to zero */
    assert_int_equal(mx_quant_e2m1_from_f32(tq_float(0x00000001u)), 0x0);
    assert_int_equal(mx_quant_e2m1_from_f32(tq_float(0x807FFFFFu)), 0x8);
    assert_int_equal(mx_quant_e2m1_from_f32(FLT_MIN), 0x0);
}

static void test_e2m1_encode_subnormal_half(void **state)
{
    (void)state;
    /* 0.5 is E2M1's only positive subnormal: (0.25, 0.75) -> 0.5 */
    assert_int_equal(mx_quant_e2m1_from_f32(nextafterf(0.25f, 1.0f)), 0x1);
    assert_int_equal(mx_quant_e2m1_from_f32(0.5f), 0x1);
    assert_int_equal(mx_quant_e2m1_from_f32(nextafterf(0.75f, 0.0f)), 0x1);
    assert_int_equal(mx_quant_e2m1_from_f32(-0.5f), 0x9);
}

static void test_e2m1_encode_nan_gives_a_zero_with_its_sign(void **state)
{
    (void)state;
    assert_int_equal(mx_quant_e2m1_from_f32(tq_float(0x7FC00000u)), 0x0);
    assert_int_equal(mx_quant_e2m1_from_f32(tq_float(0xFFC00000u)), 0x8);
    assert_int_equal(mx_quant_e2m1_from_f32(tq_float(0x7F800001u)), 0x0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_e2m1_decodes_every_code_to_the_spec_table),
        cmocka_unit_test(test_e2m1_encodes_every_value_to_its_code),
        cmocka_unit_test(test_e2m1_encode_rounds_ties_to_even_both_signs),
        cmocka_unit_test(test_e2m1_encode_just_off_a_tie_goes_to_the_nearer_neighbour),
        cmocka_unit_test(test_e2m1_encode_saturates_at_six),
        cmocka_unit_test(test_e2m1_encode_keeps_the_sign_of_zero),
        cmocka_unit_test(test_e2m1_encode_subnormal_half),
        cmocka_unit_test(test_e2m1_encode_nan_gives_a_zero_with_its_sign),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
