/* The vectorized FP8 E4M3FN dynamic quantizers (mx_quant_fp8_*_fast and the
 * BF16-input variants) give the same bytes and scales as the scalar
 * mx_quant_fp8_group_dynamic: random data of every magnitude, every E4M3
 * rounding tie and its neighbours (normal and subnormal), NaN, Inf, zeros of
 * both signs, all-zero groups, short last groups, every BF16 bit pattern.
 * Without AVX2 the fast functions run the scalar code: the program then
 * exits 77 (skipped) after checking that dispatch. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>

#include "mxep/quant.h"
#include "quant_test_util.h"

#define POISON_Q 0xA5
#define POISON_S 0x7FA5A5A5u

typedef struct {
    uint8_t *q;
    float *s;
} outs_t;

static outs_t outs_new(size_t n, size_t ns)
{
    outs_t o = {malloc(n ? n : 1), malloc((ns ? ns : 1) * sizeof(float))};
    assert_non_null(o.q);
    assert_non_null(o.s);
    memset(o.q, POISON_Q, n ? n : 1);
    for (size_t i = 0; i < (ns ? ns : 1); i++)
        o.s[i] = tq_float(POISON_S);
    return o;
}

static void outs_free(outs_t *o)
{
    free(o->q);
    free(o->s);
}

/* scalar vs fast on FP32 input; returns after asserting equality */
static void check_f32(const float *x, size_t rows, size_t cols, size_t group, const char *what)
{
    size_t ng = (cols + group - 1) / group;
    outs_t a = outs_new(rows * cols, rows * ng), b = outs_new(rows * cols, rows * ng);
    assert_int_equal(mx_quant_fp8_group_dynamic(x, rows, cols, group, a.q, a.s), MX_OK);
    assert_int_equal(mx_quant_fp8_group_dynamic_fast(x, rows, cols, group, b.q, b.s), MX_OK);
    for (size_t i = 0; i < rows * cols; i++)
        if (a.q[i] != b.q[i])
            fail_msg("%s: rows %zu cols %zu group %zu: element %zu (x = %a, bits 0x%08x): scalar 0x%02x, fast 0x%02x",
                     what, rows, cols, group, i, (double)x[i], tq_bits(x[i]), a.q[i], b.q[i]);
    for (size_t i = 0; i < rows * ng; i++)
        if (tq_bits(a.s[i]) != tq_bits(b.s[i]))
            fail_msg("%s: group %zu scale: scalar %a, fast %a", what, i, (double)a.s[i], (double)b.s[i]);
    if (group == cols && cols > 0) { /* the token twin too */
        outs_t c = outs_new(rows * cols, rows);
        assert_int_equal(mx_quant_fp8_token_dynamic_fast(x, rows, cols, c.q, c.s), MX_OK);
        assert_memory_equal(a.q, c.q, rows * cols);
        assert_memory_equal(a.s, c.s, rows * sizeof(float));
        outs_free(&c);
    }
    outs_free(&a);
    outs_free(&b);
}

static const size_t groups[] = {1, 3, 7, 8, 9, 16, 31, 128, 130};

static void test_fp8_group_fast_equals_scalar_on_random_rows(void **state)
{
    (void)state;
    const uint64_t seed = 20261123u;
    TQ_SEED_PRINT(seed);
    tq_rng_t rng = {seed};
    enum { ROWS = 5, COLS = 1000, N = 7168 }; /* N >= ROWS * COLS: one DeepSeek-sized row too */
    float *x = malloc(sizeof(float) * N);
    assert_non_null(x);
    for (int rep = 0; rep < 6; rep++) {
        /* wide spreads put many quotients into the E4M3 subnormals (and
         * below); narrow ones exercise the normal rounding */
        int lo = rep < 3 ? -30 : -3, hi = rep % 3 == 0 ? 3 : (rep % 3 == 1 ? 20 : -100);
        if (hi < lo)
            hi = lo + 1;
        for (size_t i = 0; i < N; i++)
            x[i] = tq_spread(&rng, lo, hi);
        for (size_t gi = 0; gi < sizeof groups / sizeof *groups; gi++)
            for (size_t cols = 1; cols <= COLS; cols = cols * 3 + 1)
                check_f32(x, ROWS, cols, groups[gi], "random");
        check_f32(x, ROWS, COLS, COLS, "random token");
        check_f32(x, 1, N, 128, "random 7168");
    }
    free(x);
}

/* |value| of E4M3FN magnitude code m (0..0x7E), written from the format */
static double e4m3_value(int m)
{
    int e = m >> 3, f = m & 7;
    return e == 0 ? f * 0x1p-9 : (1.0 + f / 8.0) * ldexp(1.0, e - 7);
}

static void test_fp8_group_fast_equals_scalar_on_every_tie(void **state)
{
    (void)state;
    /* amax 448 in each group: the scale is exactly 1, so the quotient is the
     * value itself. Each group of 8: 448, then the midpoint of two adjacent
     * E4M3 magnitudes, its FP32 neighbours, their negatives. */
    enum { G = 8 };
    float x[0x7E * G * 2 + 3 * G];
    size_t n = 0;
    for (int m = 0; m < 0x7E; m++) {
        float mid = (float)((e4m3_value(m) + e4m3_value(m + 1)) / 2);
        float v[G] = {448.0f,
                      mid,
                      nextafterf(mid, 0.0f),
                      nextafterf(mid, 1000.0f),
                      -mid,
                      -nextafterf(mid, 0.0f),
                      -nextafterf(mid, 1000.0f),
                      (float)e4m3_value(m)};
        for (int i = 0; i < G; i++)
            x[n++] = v[i];
        /* the same ties one binade down in the quotient: scale 2 */
        float w[G] = {896.0f, 2 * mid, 2 * nextafterf(mid, 0.0f), 2 * nextafterf(mid, 1000.0f), -2 * mid, 0.0f,
                      -0.0f,  449.0f};
        for (int i = 0; i < G; i++)
            x[n++] = w[i];
    }
    /* specials: NaN, Inf in a group (amax over the finite ones), all zero,
     * FP32 subnormals, values just above the saturation */
    float sp[3 * G] = {tq_float(0x7FC00000u),
                       -INFINITY,
                       1.0f,
                       -2.5f,
                       INFINITY,
                       tq_float(0xFFC12345u),
                       464.0f,
                       0.1f,
                       0.0f,
                       -0.0f,
                       0.0f,
                       0.0f,
                       -0.0f,
                       0.0f,
                       0.0f,
                       0.0f,
                       tq_float(1u),
                       -tq_float(0x7FFFFFu),
                       tq_float(0x00800000u),
                       1e-40f,
                       -1e-45f,
                       0x1p-140f,
                       0x1p-133f,
                       tq_float(3u)};
    for (int i = 0; i < 3 * G; i++)
        x[n++] = sp[i];
    check_f32(x, 1, n, G, "ties");
    check_f32(x, n / G, G, G, "ties rows");
    check_f32(x, 1, n, 4, "ties group 4");
    check_f32(x, 1, n, 13, "ties group 13");
}

static void test_fp8_group_bf16_equals_widened_scalar_on_every_bf16_pattern(void **state)
{
    (void)state;
    enum { N = 65536 };
    uint16_t *xb = malloc(N * sizeof *xb);
    float *xf = malloc(N * sizeof *xf);
    assert_non_null(xb);
    assert_non_null(xf);
    for (size_t i = 0; i < N; i++) {
        /* every pattern once, shuffled by a fixed odd multiplier so groups mix magnitudes */
        xb[i] = (uint16_t)(i * 40503u);
        xf[i] = tq_float((uint32_t)xb[i] << 16);
    }
    for (size_t gi = 0; gi < sizeof groups / sizeof *groups; gi++) {
        size_t g = groups[gi], ng = (N + g - 1) / g;
        outs_t a = outs_new(N, ng), b = outs_new(N, ng), c = outs_new(N, ng);
        assert_int_equal(mx_quant_fp8_group_dynamic(xf, 1, N, g, a.q, a.s), MX_OK);
        assert_int_equal(mx_quant_fp8_group_dynamic_bf16(xb, 1, N, g, b.q, b.s), MX_OK);
        assert_int_equal(mx_quant_fp8_group_dynamic_bf16_fast(xb, 1, N, g, c.q, c.s), MX_OK);
        for (size_t i = 0; i < N; i++)
            if (a.q[i] != b.q[i] || a.q[i] != c.q[i])
                fail_msg("group %zu element %zu (bf16 0x%04x): f32 0x%02x, bf16 0x%02x, bf16 fast 0x%02x", g, i, xb[i],
                         a.q[i], b.q[i], c.q[i]);
        assert_memory_equal(a.s, b.s, ng * sizeof(float));
        assert_memory_equal(a.s, c.s, ng * sizeof(float));
        outs_free(&a);
        outs_free(&b);
        outs_free(&c);
    }
    free(xb);
    free(xf);
}

static void test_fp8_group_fast_refuses_bad_arguments_and_writes_nothing(void **state)
{
    (void)state;
    float x[16] = {1.0f};
    uint16_t xb[16] = {0x3F80};
    outs_t o = outs_new(16, 2);
    assert_int_equal(mx_quant_fp8_group_dynamic_fast(NULL, 1, 16, 8, o.q, o.s), MX_ERR_INVALID);
    assert_int_equal(mx_quant_fp8_group_dynamic_fast(x, 1, 16, 0, o.q, o.s), MX_ERR_INVALID);
    assert_int_equal(mx_quant_fp8_group_dynamic_fast(x, 1, 16, 8, NULL, o.s), MX_ERR_INVALID);
    assert_int_equal(mx_quant_fp8_group_dynamic_fast(x, SIZE_MAX / 2, 16, 8, o.q, o.s), MX_ERR_INVALID);
    assert_int_equal(mx_quant_fp8_token_dynamic_fast(x, 1, 0, o.q, o.s), MX_ERR_INVALID);
    assert_int_equal(mx_quant_fp8_group_dynamic_bf16(xb, 1, 16, 0, o.q, o.s), MX_ERR_INVALID);
    assert_int_equal(mx_quant_fp8_group_dynamic_bf16_fast(NULL, 1, 16, 8, o.q, o.s), MX_ERR_INVALID);
    assert_int_equal(mx_quant_fp8_group_dynamic_bf16_fast(xb, 1, 16, 8, o.q, NULL), MX_ERR_INVALID);
    for (int i = 0; i < 16; i++)
        assert_int_equal(o.q[i], POISON_Q);
    assert_int_equal(tq_bits(o.s[0]), POISON_S);
    assert_int_equal(tq_bits(o.s[1]), POISON_S);
    /* zero rows / columns: valid, nothing written */
    assert_int_equal(mx_quant_fp8_group_dynamic_fast(x, 0, 16, 8, o.q, o.s), MX_OK);
    assert_int_equal(mx_quant_fp8_group_dynamic_bf16_fast(xb, 3, 0, 8, o.q, o.s), MX_OK);
    assert_int_equal(o.q[0], POISON_Q);
    assert_int_equal(tq_bits(o.s[0]), POISON_S);
    outs_free(&o);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fp8_group_fast_equals_scalar_on_random_rows),
        cmocka_unit_test(test_fp8_group_fast_equals_scalar_on_every_tie),
        cmocka_unit_test(test_fp8_group_bf16_equals_widened_scalar_on_every_bf16_pattern),
        cmocka_unit_test(test_fp8_group_fast_refuses_bad_arguments_and_writes_nothing),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    return failed == 0 && !mx_quant_have_avx2() ? 77 : failed;
}
