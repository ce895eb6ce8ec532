/* FP8 E4M3FN quantizers: per-tensor static, per-token, per-group, 128x128
 * weight blocks, per-channel; scale floor, non-finite inputs, round trips with
 * the format's error bound, failure paths. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <float.h>
#include <stdlib.h>

#include "mxep/quant.h"
#include "quant_test_util.h"

/* |x - q*s| for E4M3FN: half an ulp of x/s (2^-4 relative for normals, at
 * least half the subnormal step 2^-10) times s, plus FP32 rounding of x/s. */
static void assert_within_fp8_bound(float x, uint8_t q, float s)
{
    double v = (double)x / (double)s;
    double back = tq_e4m3fn_spec(q) * (double)s;
    double bound = (fmax(fabs(v) * 0x1p-4, 0x1p-10) + fabs(v) * 0x1p-23) * (double)s;
    if (fabs(fabs(v) > 448 ? copysign(448.0, v) * s - back : (double)x - back) > bound)
        fail_msg("x = %a, scale %a: code 0x%02X decodes to %a, bound %a", (double)x, (double)s, q, back, bound);
}

static void test_fp8_static_divides_by_the_scale_and_saturates(void **state)
{
    (void)state;
    const float x[] = {3.0f, -3.0f, 1000.0f, -1e30f, 0.0f, -0.0f, 2.0f * 0x1p-10f, tq_float(0x7FC00000u), INFINITY};
    /* by hand: x / 2 -> E4M3FN (1.5 = 0x3C, 448 = 0x7E, 2^-10 tie -> 0) */
    const uint8_t want[] = {0x3C, 0xBC, 0x7E, 0xFE, 0x00, 0x80, 0x00, 0x7F, 0x7E};
    uint8_t q[9];
    memset(q, 0xA5, sizeof q);
    assert_int_equal(mx_quant_fp8_tensor_static(x, 9, 2.0f, q), MX_OK);
    assert_memory_equal(q, want, sizeof want);
}

static void test_fp8_static_rejects_bad_scales_and_pointers(void **state)
{
    (void)state;
    const float x[4] = {1, 2, 3, 4};
    uint8_t q[4] = {0xA5, 0xA5, 0xA5, 0xA5};
    const float bad[] = {0.0f, -1.0f, INFINITY, tq_float(0x7FC00000u), -0.0f};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(mx_quant_fp8_tensor_static(x, 4, bad[i], q), MX_ERR_INVALID);
        assert_non_null(strstr(mx_error_detail(), "scale"));
    }
    assert_int_equal(mx_quant_fp8_tensor_static(NULL, 4, 1.0f, q), MX_ERR_INVALID);
    assert_int_equal(mx_quant_fp8_tensor_static(x, 4, 1.0f, NULL), MX_ERR_INVALID);
    for (int i = 0; i < 4; i++)
        assert_int_equal(q[i], 0xA5);
}

static void test_fp8_token_dynamic_scale_is_amax_over_448(void **state)
{
    (void)state;
    /* row 0: amax 896 -> scale 2; row 1: all zero -> scale floor, codes 0 with
     * sign; row 2: NaN and Inf do not poison the scale (amax of finite = 44.8) */
    float x[3][4] = {
        {896.0f, -3.0f, 1.0f, 0.0f}, {0.0f, -0.0f, 0.0f, 0.0f}, {tq_float(0x7FC00000u), -INFINITY, 44.8f, -4.48f}};
    uint8_t q[12];
    float s[3];
    memset(q, 0xA5, sizeof q);
    memset(s, 0xA5, sizeof s);
    assert_int_equal(mx_quant_fp8_token_dynamic(&x[0][0], 3, 4, q, s), MX_OK);
    assert_true(s[0] == 2.0f);
    assert_true(s[1] == MX_FP8_MIN_SCALE);
    assert_true(s[1] == 1.0f / (448.0f * 512.0f));
    assert_true(s[2] == 44.8f / 448.0f);
    const uint8_t want0[4] = {0x7E, 0xBC, 0x30, 0x00}; /* 448, -1.5, 0.5, 0 */
    assert_memory_equal(q, want0, 4);
    const uint8_t want1[4] = {0x00, 0x80, 0x00, 0x00};
    assert_memory_equal(q + 4, want1, 4);
    assert_int_equal(q[8], 0x7F);  /* NaN stays NaN */
    assert_int_equal(q[9], 0xFE);  /* -Inf saturates */
    assert_int_equal(q[10], 0x7E); /* the row max maps to 448 */
    assert_within_fp8_bound(x[2][3], q[11], s[2]);
}

static void test_fp8_group_dynamic_handles_a_short_last_group(void **state)
{
    (void)state;
    const uint64_t seed = 0xF8F8F8ull;
    TQ_SEED_PRINT(seed);
    tq_rng_t r = {seed};
    enum { ROWS = 5, COLS = 300, G = 128, NG = 3 };
    float *x = malloc(ROWS * COLS * sizeof *x);
    uint8_t *q = malloc(ROWS * COLS);
    float s[ROWS * NG + 1];
    assert_non_null(x);
    assert_non_null(q);
    for (size_t i = 0; i < ROWS * COLS; i++)
        x[i] = tq_spread(&r, -12, 12);
    memset(q, 0xA5, ROWS * COLS);
    for (size_t i = 0; i < ROWS * NG + 1; i++)
        s[i] = -1.0f;
    assert_int_equal(mx_quant_fp8_group_dynamic(x, ROWS, COLS, G, q, s), MX_OK);
    assert_true(s[ROWS * NG] == -1.0f); /* nothing written past ceil(300/128) = 3 per row */
    for (size_t row = 0; row < ROWS; row++)
        for (size_t g = 0; g < NG; g++) {
            size_t c0 = g * G, c1 = c0 + G < COLS ? c0 + G : COLS;
            float amax = 0;
            for (size_t c = c0; c < c1; c++)
                amax = fmaxf(amax, fabsf(x[row * COLS + c]));
            assert_true(s[row * NG + g] == amax / 448.0f);
            for (size_t c = c0; c < c1; c++)
                assert_within_fp8_bound(x[row * COLS + c], q[row * COLS + c], s[row * NG + g]);
        }
    free(x);
    free(q);
}

static void test_fp8_weight_block_scales_multiply_per_block(void **state)
{
    (void)state;
    const uint64_t seed = 0xDEE95EEull;
    TQ_SEED_PRINT(seed);
    tq_rng_t r = {seed};
    enum { N = 200, K = 300, BL = 128, NBR = 2, NBC = 3 };
    float *w = malloc(N * K * sizeof *w);
    uint8_t *q = malloc(N * K);
    float s[NBR * NBC + 1];
    assert_non_null(w);
    assert_non_null(q);
    for (size_t i = 0; i < N * K; i++)
        w[i] = tq_spread(&r, -8, 4);
    /* one block entirely zero: its scale is the floor, never NaN */
    for (size_t i = 128; i < 200; i++)
        for (size_t j = 256; j < 300; j++)
            w[i * K + j] = 0.0f;
    s[NBR * NBC] = -1.0f;
    assert_int_equal(mx_quant_fp8_weight_block(w, N, K, BL, q, s), MX_OK);
    assert_true(s[NBR * NBC] == -1.0f);
    for (size_t br = 0; br < NBR; br++)
        for (size_t bc = 0; bc < NBC; bc++) {
            float amax = 0;
            for (size_t i = br * BL; i < N && i < (br + 1) * BL; i++)
                for (size_t j = bc * BL; j < K && j < (bc + 1) * BL; j++)
                    amax = fmaxf(amax, fabsf(w[i * K + j]));
            float want = amax / 448.0f < MX_FP8_MIN_SCALE ? MX_FP8_MIN_SCALE : amax / 448.0f;
            assert_true(s[br * NBC + bc] == want);
            for (size_t i = br * BL; i < N && i < (br + 1) * BL; i++)
                for (size_t j = bc * BL; j < K && j < (bc + 1) * BL; j++)
                    assert_within_fp8_bound(w[i * K + j], q[i * K + j], s[br * NBC + bc]);
        }
    assert_true(s[1 * NBC + 2] == MX_FP8_MIN_SCALE);
    free(w);
    free(q);
}

static void test_fp8_weight_channel_one_scale_per_row(void **state)
{
    (void)state;
    const uint64_t seed = 0xC4A77E1ull;
    TQ_SEED_PRINT(seed);
    tq_rng_t r = {seed};
    enum { N = 17, K = 96 };
    float w[N * K], s[N];
    uint8_t q[N * K];
    for (size_t i = 0; i < N * K; i++)
        w[i] = tq_spread(&r, -20, 20);
    assert_int_equal(mx_quant_fp8_weight_channel(w, N, K, q, s), MX_OK);
    for (size_t i = 0; i < N; i++) {
        float amax = 0;
        for (size_t j = 0; j < K; j++)
            amax = fmaxf(amax, fabsf(w[i * K + j]));
        assert_true(s[i] == amax / 448.0f);
        for (size_t j = 0; j < K; j++)
            assert_within_fp8_bound(w[i * K + j], q[i * K + j], s[i]);
    }
    /* per-channel equals per-token on the same matrix */
    float s2[N];
    uint8_t q2[N * K];
    assert_int_equal(mx_quant_fp8_token_dynamic(w, N, K, q2, s2), MX_OK);
    assert_memory_equal(q, q2, sizeof q);
    assert_memory_equal(s, s2, sizeof s);
}

static void test_fp8_decode_multiplies_by_the_scale(void **state)
{
    (void)state;
    float out[256];
    uint8_t q[256];
    for (int i = 0; i < 256; i++)
        q[i] = (uint8_t)i;
    assert_int_equal(mx_quant_fp8_decode(q, 256, 0.5f, out), MX_OK);
    for (int i = 0; i < 256; i++)
        assert_true(tq_same(tq_e4m3fn_spec((unsigned)i) * 0.5, out[i]));
}

static void test_fp8_decode_bf16_rounds_the_scaled_value(void **state)
{
    (void)state;
    uint8_t q[256];
    float f[256];
    uint16_t h[256];
    for (int i = 0; i < 256; i++)
        q[i] = (uint8_t)i;
    const float scale = 0x1.0101p-3f; /* products need rounding to 8 significant bits */
    assert_int_equal(mx_quant_fp8_decode(q, 256, scale, f), MX_OK);
    memset(h, 0xA5, sizeof h);
    assert_int_equal(mx_quant_fp8_decode_bf16(q, 256, scale, h), MX_OK);
    int rounded = 0;
    for (int i = 0; i < 256; i++) {
        assert_int_equal(h[i], mx_quant_bf16_from_f32(f[i]));
        rounded += (uint32_t)h[i] << 16 != tq_bits(f[i]);
    }
    assert_true(rounded > 100);
}

static void test_fp8_quantizers_reject_bad_shapes_and_leave_outputs_untouched(void **state)
{
    (void)state;
    float x[64], s[8];
    uint8_t q[64];
    for (int i = 0; i < 64; i++)
        x[i] = (float)(i + 1) * 0.25f;
    memset(q, 0xA5, sizeof q);
    for (int i = 0; i < 8; i++)
        s[i] = -7.0f;
    assert_int_equal(mx_quant_fp8_token_dynamic(NULL, 2, 32, q, s), MX_ERR_INVALID);
    assert_int_equal(mx_quant_fp8_token_dynamic(x, 2, 32, NULL, s), MX_ERR_INVALID);
    assert_int_equal(mx_quant_fp8_token_dynamic(x, 2, 32, q, NULL), MX_ERR_INVALID);
    assert_int_equal(mx_quant_fp8_token_dynamic(x, 2, 0, q, s), MX_ERR_INVALID);
    assert_int_equal(mx_quant_fp8_token_dynamic(x, SIZE_MAX / 2, 4, q, s), MX_ERR_INVALID);
    assert_non_null(strstr(mx_error_detail(), "overflows"));
    assert_int_equal(mx_quant_fp8_group_dynamic(x, 2, 32, 0, q, s), MX_ERR_INVALID);
    assert_non_null(strstr(mx_error_detail(), "group size 0"));
    assert_int_equal(mx_quant_fp8_group_dynamic(NULL, 2, 32, 16, q, s), MX_ERR_INVALID);
    assert_int_equal(mx_quant_fp8_weight_block(x, 8, 8, 0, q, s), MX_ERR_INVALID);
    assert_int_equal(mx_quant_fp8_weight_block(x, 8, 8, 4, q, NULL), MX_ERR_INVALID);
    assert_int_equal(mx_quant_fp8_weight_channel(x, 2, 0, q, s), MX_ERR_INVALID);
    assert_int_equal(mx_quant_fp8_weight_channel(x, 2, 32, NULL, s), MX_ERR_INVALID);
    float out[64];
    for (int i = 0; i < 64; i++)
        out[i] = -7.0f;
    assert_int_equal(mx_quant_fp8_decode(NULL, 4, 1.0f, out), MX_ERR_INVALID);
    assert_int_equal(mx_quant_fp8_decode(q, 4, 1.0f, NULL), MX_ERR_INVALID);
    assert_int_equal(mx_quant_fp8_decode_fast(NULL, 4, 1.0f, out), MX_ERR_INVALID);
    assert_int_equal(mx_quant_fp8_decode_fast(q, 4, 1.0f, NULL), MX_ERR_INVALID);
    uint16_t h[4] = {0xA5A5, 0xA5A5, 0xA5A5, 0xA5A5};
    assert_int_equal(mx_quant_fp8_decode_bf16(NULL, 4, 1.0f, h), MX_ERR_INVALID);
    assert_int_equal(mx_quant_fp8_decode_bf16(q, 4, 1.0f, NULL), MX_ERR_INVALID);
    assert_int_equal(mx_quant_fp8_decode_bf16_fast(NULL, 4, 1.0f, h), MX_ERR_INVALID);
    assert_int_equal(mx_quant_fp8_decode_bf16_fast(q, 4, 1.0f, NULL), MX_ERR_INVALID);
    for (int i = 0; i < 4; i++)
        assert_int_equal(h[i], 0xA5A5);
    for (int i = 0; i < 64; i++) {
        assert_int_equal(q[i], 0xA5);
        assert_true(out[i] == -7.0f);
    }
    for (int i = 0; i < 8; i++)
        assert_true(s[i] == -7.0f);
    /* zero rows are a valid empty problem */
    assert_int_equal(mx_quant_fp8_group_dynamic(x, 0, 32, 16, q, s), MX_OK);
    assert_int_equal(q[0], 0xA5);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fp8_static_divides_by_the_scale_and_saturates),
        cmocka_unit_test(test_fp8_static_rejects_bad_scales_and_pointers),
        cmocka_unit_test(test_fp8_token_dynamic_scale_is_amax_over_448),
        cmocka_unit_test(test_fp8_group_dynamic_handles_a_short_last_group),
        cmocka_unit_test(test_fp8_weight_block_scales_multiply_per_block),
        cmocka_unit_test(test_fp8_weight_channel_one_scale_per_row),
        cmocka_unit_test(test_fp8_decode_multiplies_by_the_scale),
        cmocka_unit_test(test_fp8_decode_bf16_rounds_the_scaled_value),
        cmocka_unit_test(test_fp8_quantizers_reject_bad_shapes_and_leave_outputs_untouched),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
