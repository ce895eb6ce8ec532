/* The AVX2 fast paths equal the scalar code on every byte value: every packed
 * MXFP4 byte under every E8M0 scale byte (float and BF16 out), every FP8 byte
 * under a set of scales (normal, subnormal, NaN, Inf, negative), every length
 * and alignment of the tail. Skipped (not passed) without AVX2. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <float.h>
#include <stdlib.h>

#include "mxep/quant.h"
#include "quant_test_util.h"

#define B MX_MXFP4_BLOCK

static int need_avx2(void)
{
    if (!mx_quant_have_avx2()) {
        print_message("[ SKIPPED  ] this CPU (or OS) has no AVX2: the fast paths run the scalar twin\n");
        return 0;
    }
    return 1;
}

/* 256 scale bytes x 16 blocks of 16 bytes = every packed byte value under every scale. */
enum { NSC = 256, BPS = 16, NBLK = NSC * BPS, K = NBLK * B };

static void fill_every_byte(uint8_t *packed, uint8_t *scales)
{
    for (size_t s = 0; s < NSC; s++)
        for (size_t b = 0; b < BPS; b++) {
            size_t blk = s * BPS + b;
            scales[blk] = (uint8_t)s;
            for (size_t j = 0; j < B / 2; j++)
                packed[blk * (B / 2) + j] = (uint8_t)(b * 16 + j); /* 0..255 across the 16 blocks */
        }
}

static void test_fast_mxfp4_decode_equals_scalar_on_every_byte_and_scale(void **state)
{
    (void)state;
    if (!need_avx2())
        skip();
    uint8_t *packed = malloc(K / 2), *scales = malloc(NBLK);
    float *a = malloc((K + 8) * sizeof *a), *b = malloc((K + 8) * sizeof *b);
    assert_non_null(packed);
    assert_non_null(scales);
    assert_non_null(a);
    assert_non_null(b);
    fill_every_byte(packed, scales);
    for (size_t i = 0; i < K + 8; i++) {
        a[i] = tq_float(0x7FA5A5A5u);
        b[i] = tq_float(0x7F5A5A5Au);
    }
    assert_int_equal(mx_quant_mxfp4_decode_row(packed, scales, K, a), MX_OK);
    assert_int_equal(mx_quant_mxfp4_decode_row_fast(packed, scales, K, b), MX_OK);
    for (size_t i = 0; i < K; i++)
        if (tq_bits(a[i]) != tq_bits(b[i]))
            fail_msg("element %zu (packed 0x%02X, scale 0x%02X): scalar %08X, fast %08X", i, packed[i / 2],
                     scales[i / B], tq_bits(a[i]), tq_bits(b[i]));
    for (size_t i = K; i < K + 8; i++) /* nothing written past k */
        assert_int_equal(tq_bits(b[i]), 0x7F5A5A5Au);
    free(packed);
    free(scales);
    free(a);
    free(b);
}

static void test_fast_mxfp4_bf16_decode_equals_scalar_on_every_byte_and_scale(void **state)
{
    (void)state;
    if (!need_avx2())
        skip();
    uint8_t *packed = malloc(K / 2), *scales = malloc(NBLK);
    uint16_t *a = malloc((K + 8) * sizeof *a), *b = malloc((K + 8) * sizeof *b);
    assert_non_null(packed);
    assert_non_null(scales);
    assert_non_null(a);
    assert_non_null(b);
    fill_every_byte(packed, scales);
    memset(a, 0xA5, (K + 8) * sizeof *a);
    memset(b, 0x5A, (K + 8) * sizeof *b);
    assert_int_equal(mx_quant_mxfp4_decode_row_bf16(packed, scales, K, a), MX_OK);
    assert_int_equal(mx_quant_mxfp4_decode_row_bf16_fast(packed, scales, K, b), MX_OK);
    for (size_t i = 0; i < K; i++)
        if (a[i] != b[i])
            fail_msg("element %zu (packed 0x%02X, scale 0x%02X): scalar %04X, fast %04X", i, packed[i / 2],
                     scales[i / B], a[i], b[i]);
    for (size_t i = K; i < K + 8; i++)
        assert_int_equal(b[i], 0x5A5A);
    free(packed);
    free(scales);
    free(a);
    free(b);
}

static void test_fast_fp8_decode_equals_scalar_on_every_byte_every_tail(void **state)
{
    (void)state;
    if (!need_avx2())
        skip();
    const float scales[] = {1.0f,
                            0.5f,
                            3.7f,
                            -2.0f,
                            MX_FP8_MIN_SCALE,
                            1e-30f,
                            0x1p-127f /* subnormal */,
                            tq_float(0x00000001u),
                            0.0f,
                            -0.0f,
                            1e38f,
                            FLT_MAX,
                            INFINITY,
                            tq_float(0x7FC00000u)};
    enum { N = 256 + 64 };
    uint8_t q[N];
    for (size_t i = 0; i < N; i++)
        q[i] = (uint8_t)(i * 7u + 3u); /* all 256 byte values in the first 256 (7 is odd) */
    float a[N + 8], b[N + 8];
    for (size_t si = 0; si < sizeof scales / sizeof scales[0]; si++) {
        /* every start alignment 0..7 and every length 0..N-off, in a few strides */
        for (size_t off = 0; off < 8; off++)
            for (size_t n = 0; n + off <= N; n += (n < 40 ? 1 : 37)) {
                for (size_t i = 0; i < N + 8; i++) {
                    a[i] = tq_float(0x7FA5A5A5u);
                    b[i] = tq_float(0x7FA5A5A5u);
                }
                assert_int_equal(mx_quant_fp8_decode(q + off, n, scales[si], a), MX_OK);
                assert_int_equal(mx_quant_fp8_decode_fast(q + off, n, scales[si], b), MX_OK);
                if (memcmp(a, b, sizeof a) != 0) {
                    for (size_t i = 0; i < N + 8; i++)
                        if (tq_bits(a[i]) != tq_bits(b[i]))
                            fail_msg("scale %a, offset %zu, n %zu, element %zu (byte 0x%02X): scalar %08X, fast %08X",
                                     (double)scales[si], off, n, i, i < n ? q[off + i] : 0, tq_bits(a[i]),
                                     tq_bits(b[i]));
                }
            }
    }
}

static void test_fast_fp8_bf16_decode_equals_scalar_on_every_byte_every_tail(void **state)
{
    (void)state;
    if (!need_avx2())
        skip();
    const float scales[] = {1.0f,      0.5f,  3.7f,    -2.0f,    MX_FP8_MIN_SCALE,      1e-30f,
                            0x1p-127f, 1e38f, FLT_MAX, INFINITY, tq_float(0xFFC00000u), 0x1.0101p-3f};
    enum { N = 256 + 64 };
    uint8_t q[N];
    for (size_t i = 0; i < N; i++)
        q[i] = (uint8_t)(i * 7u + 3u);
    uint16_t a[N + 8], b[N + 8];
    for (size_t si = 0; si < sizeof scales / sizeof scales[0]; si++)
        for (size_t off = 0; off < 8; off++)
            for (size_t n = 0; n + off <= N; n += (n < 40 ? 1 : 37)) {
                memset(a, 0xA5, sizeof a);
                memset(b, 0xA5, sizeof b);
                assert_int_equal(mx_quant_fp8_decode_bf16(q + off, n, scales[si], a), MX_OK);
                assert_int_equal(mx_quant_fp8_decode_bf16_fast(q + off, n, scales[si], b), MX_OK);
                for (size_t i = 0; i < N + 8; i++)
                    if (a[i] != b[i])
                        fail_msg("scale %a, offset %zu, n %zu, element %zu: scalar %04X, fast %04X", (double)scales[si],
                                 off, n, i, a[i], b[i]);
            }
}

static void test_fast_paths_handle_short_rows(void **state)
{
    (void)state;
    /* runs on every CPU: without AVX2 this checks the scalar twin dispatch */
    uint8_t packed[B / 2] = {0x71, 0x0F, 0xF0, 0x88};
    uint8_t scale = 128;
    float a[B], b[B];
    assert_int_equal(mx_quant_mxfp4_decode_row(packed, &scale, B, a), MX_OK);
    assert_int_equal(mx_quant_mxfp4_decode_row_fast(packed, &scale, B, b), MX_OK);
    assert_memory_equal(a, b, sizeof a);
    assert_true(b[0] == 1.0f && b[1] == 12.0f && b[2] == -12.0f && b[3] == 0.0f);
    float c = 123.0f;
    assert_int_equal(mx_quant_mxfp4_decode_row_fast(packed, &scale, 0, &c), MX_OK);
    assert_true(c == 123.0f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fast_mxfp4_decode_equals_scalar_on_every_byte_and_scale),
        cmocka_unit_test(test_fast_mxfp4_bf16_decode_equals_scalar_on_every_byte_and_scale),
        cmocka_unit_test(test_fast_fp8_decode_equals_scalar_on_every_byte_every_tail),
        cmocka_unit_test(test_fast_fp8_bf16_decode_equals_scalar_on_every_byte_every_tail),
        cmocka_unit_test(test_fast_paths_handle_short_rows),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    /* CTest shows the program as skipped (SKIP_RETURN_CODE 77) when the fast
     * paths could not be compared on this machine */
    return failed == 0 && !mx_quant_have_avx2() ? 77 : failed;
}
