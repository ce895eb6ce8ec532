/* BF16 and FP16 codecs and the BF16 array helpers: every code point, every
 * tie between neighbouring codes, overflow to Inf, NaN, FP32 subnormals. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <float.h>
#include <stdlib.h>

#include "mxep/quant.h"
#include "quant_test_util.h"

typedef struct {
    const char *name;
    uint16_t (*enc)(float);
    float (*dec)(uint16_t);
    double (*spec)(unsigned);
    unsigned maxcode, infcode, qnan;
} h_fmt_t;

static const h_fmt_t fmts[] = {
    {"bf16", mx_quant_bf16_from_f32, mx_quant_bf16_to_f32, tq_bf16_spec, 0x7F7F, 0x7F80, 0x7FC0},
    {"f16", mx_quant_f16_from_f32, mx_quant_f16_to_f32, tq_f16_spec, 0x7BFF, 0x7C00, 0x7E00},
};

static void test_half_decodes_every_code_to_the_spec_value(void **state)
{
    (void)state;
    for (size_t i = 0; i < 2; i++)
        for (unsigned h = 0; h < 65536; h++) {
            float v = fmts[i].dec((uint16_t)h);
            if (!tq_same(fmts[i].spec(h), v))
                fail_msg("%s: 0x%04X decodes to %a, spec says %a", fmts[i].name, h, (double)v, fmts[i].spec(h));
            if (isnan(v) && !!signbit(v) != !!(h & 0x8000))
                fail_msg("%s: NaN 0x%04X lost its sign", fmts[i].name, h);
        }
    /* literal anchors (IEEE 754 binary16; bfloat16 = top half of binary32) */
    assert_true(mx_quant_f16_to_f32(0x3C00) == 1.0f);
    assert_true(mx_quant_f16_to_f32(0x7BFF) == 65504.0f);
    assert_true(mx_quant_f16_to_f32(0x0001) == 0x1p-24f);
    assert_true(mx_quant_f16_to_f32(0x0400) == 0x1p-14f);
    assert_true(mx_quant_bf16_to_f32(0x3F80) == 1.0f);
    assert_true(mx_quant_bf16_to_f32(0x0001) == 0x1p-133f);
    assert_int_equal(tq_bits(mx_quant_bf16_to_f32(0x7F7F)), 0x7F7F0000u);
}

static void test_half_encode_rounds_every_tie_to_even_both_signs(void **state)
{
    (void)state;
    for (size_t i = 0; i < 2; i++) {
        const h_fmt_t *f = &fmts[i];
        for (unsigned c = 0; c < f->maxcode; c++) {
            double lo = f->spec(c), hi = f->spec(c + 1), mid = (lo + hi) / 2;
            float m = (float)mid;
            if ((double)m != mid)
                fail_msg("%s: midpoint of 0x%04X not exact in FP32", f->name, c);
            unsigned even = (c & 1u) ? c + 1 : c;
            unsigned got[6] = {f->enc((float)lo),
                               f->enc(m),
                               f->enc(nextafterf(m, 0.0f)),
                               f->enc(nextafterf(m, INFINITY)),
                               f->enc(-m),
                               f->enc(-nextafterf(m, INFINITY))};
            unsigned want[6] = {c, even, c, c + 1, even | 0x8000u, (c + 1) | 0x8000u};
            for (int k = 0; k < 6; k++)
                if (got[k] != want[k])
                    fail_msg("%s: tie 0x%04X|0x%04X (%a) case %d: got 0x%04X, want 0x%04X", f->name, c, c + 1, mid, k,
                             got[k], want[k]);
        }
    }
}

static void test_half_encode_overflows_to_inf(void **state)
{
    (void)state;
    for (size_t i = 0; i < 2; i++) {
        const h_fmt_t *f = &fmts[i];
        double max = f->spec(f->maxcode), ulp = max - f->spec(f->maxcode - 1);
        float tie = (float)(max + ulp / 2); /* FLT_MAX < tie for bf16: becomes Inf */
        if (isfinite(tie)) {
            assert_int_equal(f->enc(nextafterf(tie, 0.0f)), f->maxcode);
            assert_int_equal(f->enc(tie), f->infcode);
        }
        assert_int_equal(f->enc(INFINITY), f->infcode);
        assert_int_equal(f->enc(-INFINITY), f->infcode | 0x8000u);
    }
    assert_int_equal(mx_quant_f16_from_f32(65519.0f), 0x7BFF);
    assert_int_equal(mx_quant_f16_from_f32(65520.0f), 0x7C00);
    assert_int_equal(mx_quant_bf16_from_f32(FLT_MAX), 0x7F80); /* above the last tie */
    assert_int_equal(mx_quant_bf16_from_f32(tq_float(0x7F7F7FFFu)), 0x7F7F);
}

static void test_half_encode_nan_is_canonical_with_sign(void **state)
{
    (void)state;
    const uint32_t nans[] = {0x7FC00000u, 0x7F800001u, 0x7FFFFFFFu, 0x7FA00000u};
    for (size_t i = 0; i < sizeof nans / sizeof nans[0]; i++)
        for (size_t k = 0; k < 2; k++) {
            assert_int_equal(fmts[k].enc(tq_float(nans[i])), fmts[k].qnan);
            assert_int_equal(fmts[k].enc(tq_float(nans[i] | 0x80000000u)), fmts[k].qnan | 0x8000u);
        }
}

static void test_half_encode_fp32_subnormals(void **state)
{
    (void)state;
    /* bf16 keeps FP32's exponent range: subnormals round on their low 16 bits */
    assert_int_equal(mx_quant_bf16_from_f32(tq_float(0x00008000u)), 0x0000); /* tie -> even 0 */
    assert_int_equal(mx_quant_bf16_from_f32(tq_float(0x00018000u)), 0x0002); /* tie -> even 2 */
    assert_int_equal(mx_quant_bf16_from_f32(tq_float(0x00008001u)), 0x0001);
    assert_int_equal(mx_quant_bf16_from_f32(tq_float(0x807FFFFFu)), 0x8080); /* carries into the normal range */
    assert_int_equal(mx_quant_f16_from_f32(tq_float(0x00000001u)), 0x0000);
    assert_int_equal(mx_quant_f16_from_f32(tq_float(0x80000001u)), 0x8000);
    assert_int_equal(mx_quant_f16_from_f32(0x1p-25f), 0x0000);   /* tie 0 | 2^-24 */
    assert_int_equal(mx_quant_f16_from_f32(0x1.8p-24f), 0x0002); /* tie 1 | 2 */
}

static void test_bf16_arrays_match_the_scalar_codec(void **state)
{
    (void)state;
    const uint64_t seed = 0xB16B00B5ull;
    TQ_SEED_PRINT(seed);
    tq_rng_t r = {seed};
    enum { N = 4099 };
    float *x = malloc(N * sizeof *x), *back = malloc(N * sizeof *back);
    uint16_t *h = malloc(N * sizeof *h);
    assert_non_null(x);
    assert_non_null(back);
    assert_non_null(h);
    for (size_t i = 0; i < N; i++)
        x[i] = tq_float((uint32_t)tq_next(&r));
    memset(h, 0xA5, N * sizeof *h);
    mx_quant_bf16_from_f32_n(x, N, h);
    for (size_t i = 0; i < N; i++)
        assert_int_equal(h[i], mx_quant_bf16_from_f32(x[i]));
    memset(back, 0xA5, N * sizeof *back);
    mx_quant_bf16_to_f32_n(h, N, back);
    for (size_t i = 0; i < N; i++) {
        assert_int_equal(tq_bits(back[i]), (uint32_t)h[i] << 16);
        /* round trip error: at most half a BF16 ulp (2^-8 relative) for normals */
        if (isfinite(x[i]) && fabsf(x[i]) >= FLT_MIN && isfinite(back[i]))
            assert_true(fabs((double)back[i] - (double)x[i]) <= fabs((double)x[i]) * 0x1p-8);
    }
    /* n = 0 writes nothing */
    h[0] = 0x1234;
    mx_quant_bf16_from_f32_n(x, 0, h);
    assert_int_equal(h[0], 0x1234);
    free(x);
    free(back);
    free(h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_half_decodes_every_code_to_the_spec_value),
        cmocka_unit_test(test_half_encode_rounds_every_tie_to_even_both_signs),
        cmocka_unit_test(test_half_encode_overflows_to_inf),
        cmocka_unit_test(test_half_encode_nan_is_canonical_with_sign),
        cmocka_unit_test(test_half_encode_fp32_subnormals),
        cmocka_unit_test(test_bf16_arrays_match_the_scalar_codec),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
