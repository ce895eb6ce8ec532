/* E8M0 scale bytes: every code point, 2^-127 never flushed, 0xFF NaN. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "mxep/quant.h"
#include "quant_test_util.h"

static void test_e8m0_decodes_every_byte_to_two_to_the_b_minus_127(void **state)
{
    (void)state;
    for (unsigned b = 0; b < 256; b++) {
        float v = mx_quant_e8m0_to_f32((uint8_t)b);
        if (!tq_same(tq_e8m0_spec(b), v))
            fail_msg("byte 0x%02X decodes to %a, spec says %a", b, (double)v, tq_e8m0_spec(b));
    }
}

static void test_e8m0_edge_bytes_have_the_spec_bit_patterns(void **state)
{
    (void)state;
    /* literal FP32 patterns from the spec (FORMATS.md Part 2 section 2) */
    static const struct {
        uint8_t b;
        uint32_t bits;
    } t[] = {
        {0x00, 0x00400000u}, /* 2^-127: an FP32 subnormal, never zero */
        {0x01, 0x00800000u}, /* 2^-126 */
        {0x7E, 0x3F000000u}, /* 0.5 */
        {0x7F, 0x3F800000u}, /* 1 */
        {0x80, 0x40000000u}, /* 2 */
        {0xFE, 0x7F000000u}, /* 2^127 */
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        assert_int_equal(tq_bits(mx_quant_e8m0_to_f32(t[i].b)), t[i].bits);
    assert_true(mx_quant_e8m0_to_f32(0x00) != 0.0f);
}

static void test_e8m0_ff_is_nan(void **state)
{
    (void)state;
    float v = mx_quant_e8m0_to_f32(0xFF);
    assert_true(isnan(v));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_e8m0_decodes_every_byte_to_two_to_the_b_minus_127),
        cmocka_unit_test(test_e8m0_edge_bytes_have_the_spec_bit_patterns),
        cmocka_unit_test(test_e8m0_ff_is_nan),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
