/* Per-token-group MXFP4 activation op and its shape query: N-D shapes, BF16
 * and F32 input, strided rows, the same validation in both, failure paths. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>

#include "mxep/quant.h"
#include "quant_test_util.h"

static void test_act_shape_sizes_n_d_outputs(void **state)
{
    (void)state;
    static const struct {
        int ndim;
        size_t shape[4];
        size_t packed, scales;
    } t[] = {
        {1, {64}, 32, 2},   {2, {4, 64}, 128, 8}, {3, {2, 3, 96}, 288, 18}, {4, {2, 1, 5, 32}, 160, 10},
        {2, {0, 64}, 0, 0}, {2, {7, 0}, 0, 0},
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        size_t pb = 12345, ns = 12345;
        assert_int_equal(mx_quant_mxfp4_act_shape(t[i].ndim, t[i].shape, NULL, &pb, &ns), MX_OK);
        assert_int_equal(pb, t[i].packed);
        assert_int_equal(ns, t[i].scales);
    }
    /* strides that keep rows dense are fine */
    const size_t shape[3] = {2, 3, 64}, strides[3] = {1000, 300, 1};
    size_t pb = 0, ns = 0;
    assert_int_equal(mx_quant_mxfp4_act_shape(3, shape, strides, &pb, &ns), MX_OK);
    assert_int_equal(pb, 2 * 3 * 32);
    assert_int_equal(ns, 2 * 3 * 2);
}

/* Each case is rejected by the query and by the op, with the same status and
 * the shape named in the message. */
static void test_act_query_and_op_reject_the_same_shapes(void **state)
{
    (void)state;
    static const struct {
        int ndim;
        size_t shape[MX_QUANT_MAX_DIMS + 1];
        int strided;
        size_t strides[4];
        const char *needle;
    } bad[] = {
        {2, {4, 100}, 0, {0}, "[4, 100]"},
        {3, {2, 3, 33}, 0, {0}, "[2, 3, 33]"},
        {1, {16}, 0, {0}, "[16]"},
        {0, {64}, 0, {0}, "ndim = 0"},
        {-1, {64}, 0, {0}, "ndim = -1"},
        {MX_QUANT_MAX_DIMS + 1, {1, 1, 1, 1, 1, 1, 1, 1, 32}, 0, {0}, "ndim = 9"},
        {2, {4, 64}, 1, {64, 2}, "[4, 64]"},            /* last stride 2: rows not contiguous */
        {3, {2, 4, 64}, 1, {256, 64, 0}, "[2, 4, 64]"}, /* last stride 0 */
        {2, {SIZE_MAX / 64, 64}, 0, {0}, "overflows"},
        {2, {4, 64}, 1, {SIZE_MAX / 2, 1}, "overflows"},
    };
    float x[64 * 4] = {0};
    for (size_t i = 0; i < 64 * 4; i++)
        x[i] = 0.01f * (float)(i + 1);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        size_t pb = 777, ns = 777;
        const size_t *st = bad[i].strided ? bad[i].strides : NULL;
        mx_status_t a = mx_quant_mxfp4_act_shape(bad[i].ndim, bad[i].shape, st, &pb, &ns);
        char msg_a[MX_ERROR_DETAIL_MAX];
        snprintf(msg_a, sizeof msg_a, "%s", mx_error_detail());
        uint8_t packed[16], scales[2];
        memset(packed, 0xA5, sizeof packed);
        memset(scales, 0xA5, sizeof scales);
        mx_status_t b = mx_quant_mxfp4_act_quantize(x, MX_ACT_IN_F32, bad[i].ndim, bad[i].shape, st, MX_SCALE_FLOOR,
                                                    packed, scales);
        if (a != MX_ERR_INVALID || b != MX_ERR_INVALID)
            fail_msg("case %zu: query %s, op %s, want MX_ERR_INVALID for both", i, mx_status_str(a), mx_status_str(b));
        if (strstr(msg_a, bad[i].needle) == NULL || strstr(mx_error_detail(), bad[i].needle) == NULL)
            fail_msg("case %zu: messages \"%s\" / \"%s\" do not name \"%s\"", i, msg_a, mx_error_detail(),
                     bad[i].needle);
        /* same validation: the messages differ only in the function name */
        const char *ra = strchr(msg_a, ':'), *rb = strchr(mx_error_detail(), ':');
        assert_non_null(ra);
        assert_non_null(rb);
        assert_string_equal(ra, rb);
        assert_int_equal(pb, 777);
        assert_int_equal(ns, 777);
        for (size_t k = 0; k < sizeof packed; k++)
            assert_int_equal(packed[k], 0xA5);
        assert_int_equal(scales[0], 0xA5);
        assert_int_equal(scales[1], 0xA5);
    }
}

static void test_act_null_arguments_fail_and_touch_nothing(void **state)
{
    (void)state;
    const size_t shape[2] = {1, 32};
    float x[32];
    for (int i = 0; i < 32; i++)
        x[i] = (float)i - 3.5f;
    uint8_t packed[16], scales[1] = {0xA5};
    memset(packed, 0xA5, sizeof packed);
    size_t pb = 5, ns = 5;
    assert_int_equal(mx_quant_mxfp4_act_shape(2, NULL, NULL, &pb, &ns), MX_ERR_INVALID);
    assert_int_equal(mx_quant_mxfp4_act_shape(2, shape, NULL, NULL, &ns), MX_ERR_INVALID);
    assert_int_equal(mx_quant_mxfp4_act_shape(2, shape, NULL, &pb, NULL), MX_ERR_INVALID);
    assert_int_equal(pb, 5);
    assert_int_equal(ns, 5);
    assert_int_equal(mx_quant_mxfp4_act_quantize(NULL, MX_ACT_IN_F32, 2, shape, NULL, MX_SCALE_FLOOR, packed, scales),
                     MX_ERR_INVALID);
    assert_int_equal(mx_quant_mxfp4_act_quantize(x, MX_ACT_IN_F32, 2, shape, NULL, MX_SCALE_FLOOR, NULL, scales),
                     MX_ERR_INVALID);
    assert_int_equal(mx_quant_mxfp4_act_quantize(x, MX_ACT_IN_F32, 2, shape, NULL, MX_SCALE_FLOOR, packed, NULL),
                     MX_ERR_INVALID);
    assert_int_equal(
        mx_quant_mxfp4_act_quantize(x, (mx_act_in_dtype_t)7, 2, shape, NULL, MX_SCALE_FLOOR, packed, scales),
        MX_ERR_INVALID);
    assert_non_null(strstr(mx_error_detail(), "dtype 7"));
    assert_int_equal(mx_quant_mxfp4_act_quantize(x, MX_ACT_IN_F32, 2, shape, NULL, MX_SCALE_RULE_COUNT, packed, scales),
                     MX_ERR_INVALID);
    for (size_t k = 0; k < sizeof packed; k++)
        assert_int_equal(packed[k], 0xA5);
    assert_int_equal(scales[0], 0xA5);
}

/* The op equals encode_row on each row, for F32 and BF16, dense and strided. */
static void test_act_quantize_equals_row_encoding_for_every_rule(void **state)
{
    (void)state;
    const uint64_t seed = 0xAC7AC7ull;
    TQ_SEED_PRINT(seed);
    tq_rng_t r = {seed};
    enum { D0 = 3, D1 = 5, N = 96, ROWS = D0 * D1, PITCH = 160 };
    const size_t shape[3] = {D0, D1, N};
    float *x = malloc(ROWS * N * sizeof *x), *xs = malloc(D0 * D1 * PITCH * sizeof *xs);
    uint16_t *xh = malloc(ROWS * N * sizeof *xh);
    float *xhf = malloc(ROWS * N * sizeof *xhf);
    assert_non_null(x);
    assert_non_null(xs);
    assert_non_null(xh);
    assert_non_null(xhf);
    for (size_t i = 0; i < ROWS * N; i++) {
        x[i] = tq_spread(&r, -10, 10);
        xh[i] = mx_quant_bf16_from_f32(x[i]);
        xhf[i] = mx_quant_bf16_to_f32(xh[i]);
    }
    /* the same tensor with padded rows: strides {D1 * PITCH, PITCH, 1} */
    for (size_t i = 0; i < D0 * D1 * PITCH; i++)
        xs[i] = tq_float(0x7FC00000u); /* padding that must not be read */
    for (size_t row = 0; row < ROWS; row++)
        memcpy(xs + row * PITCH, x + row * N, N * sizeof *x);
    const size_t strides[3] = {D1 * PITCH, PITCH, 1};

    uint8_t want_p[ROWS * N / 2], want_s[ROWS * N / 32], want_hp[ROWS * N / 2], want_hs[ROWS * N / 32];
    uint8_t got_p[ROWS * N / 2], got_s[ROWS * N / 32];
    for (int rule = 0; rule < MX_SCALE_RULE_COUNT; rule++) {
        for (size_t row = 0; row < ROWS; row++) {
            assert_int_equal(mx_quant_mxfp4_encode_row(x + row * N, N, (mx_scale_rule_t)rule, want_p + row * N / 2,
                                                       want_s + row * N / 32),
                             MX_OK);
            assert_int_equal(mx_quant_mxfp4_encode_row(xhf + row * N, N, (mx_scale_rule_t)rule, want_hp + row * N / 2,
                                                       want_hs + row * N / 32),
                             MX_OK);
        }
        memset(got_p, 0xA5, sizeof got_p);
        memset(got_s, 0xA5, sizeof got_s);
        assert_int_equal(
            mx_quant_mxfp4_act_quantize(x, MX_ACT_IN_F32, 3, shape, NULL, (mx_scale_rule_t)rule, got_p, got_s), MX_OK);
        assert_memory_equal(got_p, want_p, sizeof want_p);
        assert_memory_equal(got_s, want_s, sizeof want_s);

        memset(got_p, 0xA5, sizeof got_p);
        memset(got_s, 0xA5, sizeof got_s);
        assert_int_equal(
            mx_quant_mxfp4_act_quantize(xs, MX_ACT_IN_F32, 3, shape, strides, (mx_scale_rule_t)rule, got_p, got_s),
            MX_OK);
        assert_memory_equal(got_p, want_p, sizeof want_p);
        assert_memory_equal(got_s, want_s, sizeof want_s);

        memset(got_p, 0xA5, sizeof got_p);
        memset(got_s, 0xA5, sizeof got_s);
        assert_int_equal(
            mx_quant_mxfp4_act_quantize(xh, MX_ACT_IN_BF16, 3, shape, NULL, (mx_scale_rule_t)rule, got_p, got_s),
            MX_OK);
        assert_memory_equal(got_p, want_hp, sizeof want_hp);
        assert_memory_equal(got_s, want_hs, sizeof want_hs);
    }
    /* 1-D input is one row; the flattened 2-D view gives the same bytes */
    const size_t flat[2] = {ROWS, N}, one[1] = {N};
    uint8_t p1[N / 2], s1[N / 32];
    assert_int_equal(mx_quant_mxfp4_act_quantize(x, MX_ACT_IN_F32, 2, flat, NULL, MX_SCALE_FLOOR, got_p, got_s), MX_OK);
    assert_int_equal(mx_quant_mxfp4_act_quantize(x, MX_ACT_IN_F32, 1, one, NULL, MX_SCALE_FLOOR, p1, s1), MX_OK);
    assert_memory_equal(p1, got_p, sizeof p1);
    assert_memory_equal(s1, got_s, sizeof s1);
    free(x);
    free(xs);
    free(xh);
    free(xhf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_act_shape_sizes_n_d_outputs),
        cmocka_unit_test(test_act_query_and_op_reject_the_same_shapes),
        cmocka_unit_test(test_act_null_arguments_fail_and_touch_nothing),
        cmocka_unit_test(test_act_quantize_equals_row_encoding_for_every_rule),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
