/* cpu backend, MXFP4 integer path (cpu_internal.h's block-exact contract):
 * the activation quantizer on crafted blocks (and its AVX2 twin against it),
 * the kernels of every level exact where the arithmetic is exact and bitwise
 * equal otherwise (streaming and tiled, E8M0 extremes), and run() on tokens
 * with all-zero blocks, 2^20 outliers and NaN/Inf values. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <math.h>

#include "test_cpu_common.h"

static float bits_f(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static uint32_t f_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* A_k of element k (natural order) of block b, from the tiled layout. */
static int16_t qact_a(const uint8_t *qa, size_t nbp, size_t b, unsigned k)
{
    return MXI_QACT_TQ(qa, nbp)[256 * (b / 8) + 16 * (k / 2) + 2 * (b % 8) + k % 2];
}

static uint8_t *qact_make(const float *x, size_t cols, size_t nbp)
{
    uint8_t *qa = aligned_alloc(64, (mxi_cpu_qact_bytes(nbp) + 63) / 64 * 64);
    assert_non_null(qa);
    mxi_cpu_qact(x, cols, nbp, 1.0f, qa);
    return qa;
}

static void test_qact_follows_the_contract_on_crafted_blocks(void **state)
{
    (void)state;
    const size_t nbp = 8, cols = 7 * 32; /* block 7 is padding */
    float x[8 * 32];
    memset(x, 0, sizeof x);
    /* block 0: all zero. block 1: max 1.5 (e = 0), values around the 2^-14 step
     * and a tie. block 2: one outlier 2^20 times the rest. block 3: a NaN.
     * block 4: -Inf. block 5: subnormals only (e clamps to -113). block 6: a max
     * that rounds up to 2^15. */
    x[32 + 0] = 1.5f;
    x[32 + 1] = -0x1p-13f;   /* -2 steps */
    x[32 + 2] = 0x1.8p-13f;  /* 3 steps */
    x[32 + 3] = 0x1.0p-13f;  /* 2 steps */
    x[32 + 4] = -0x1.8p-12f; /* -6 steps */
    x[32 + 5] = 0x1p-15f;    /* half a step: ties to even -> 0 */
    x[64 + 0] = 0x1p20f;
    x[64 + 1] = 1.0f;   /* 2^-20 of the max: rounds to 0 (grid 2^(20-13) = 128) */
    x[64 + 2] = 192.0f; /* 1.5 grid steps: ties to even -> 2 steps */
    x[64 + 3] = -320.0f;
    x[64 + 4] = 96.0f;
    x[96 + 5] = NAN;
    x[96 + 6] = 1.0f;
    x[128 + 9] = -INFINITY;
    x[160 + 0] = bits_f(0x00000003u); /* subnormal */
    x[160 + 1] = -bits_f(0x00000001u);
    x[192 + 0] = bits_f(0x3FFFFFFFu); /* 1.99999988 */
    x[192 + 1] = -bits_f(0x407FFFFFu);
    x[192 + 2] = bits_f(0x407FFFFFu); /* 3.99999976: e = 1 */
    uint8_t *qa = qact_make(x, cols, nbp);
    const float *as = MXI_QACT_AS(qa);
    const int32_t *corr = MXI_QACT_CORR(qa, nbp);
    /* block 0 and padding: A = 0, as = 2^-1 */
    for (unsigned k = 0; k < 32; k++) {
        assert_int_equal(qact_a(qa, nbp, 0, k), 0);
        assert_int_equal(qact_a(qa, nbp, 7, k), 0);
    }
    assert_true(as[0] == 0.5f && as[7] == 0.5f && corr[0] == 0 && corr[7] == 0);
    /* block 1: e = 0, steps of 2^-14 */
    assert_true(as[1] == 0.5f);
    assert_int_equal(qact_a(qa, nbp, 1, 0), 24576);
    assert_int_equal(qact_a(qa, nbp, 1, 1), -2);
    assert_int_equal(qact_a(qa, nbp, 1, 2), 3);
    assert_int_equal(qact_a(qa, nbp, 1, 3), 2);
    assert_int_equal(qact_a(qa, nbp, 1, 4), -6);
    assert_int_equal(qact_a(qa, nbp, 1, 5), 0);
    assert_int_equal(corr[1], 12 * (24576 - 2 + 3 + 2 - 6));
    /* block 2: the outlier keeps 15 bits, the rest is rounded to multiples of 2^6 */
    assert_true(as[2] == 0x1p19f);
    assert_int_equal(qact_a(qa, nbp, 2, 0), 16384);
    assert_int_equal(qact_a(qa, nbp, 2, 1), 0);  /* 1 / 64: rounds to 0 */
    assert_int_equal(qact_a(qa, nbp, 2, 2), 3);  /* 192 = 3 steps */
    assert_int_equal(qact_a(qa, nbp, 2, 3), -5); /* -320 = -5 steps */
    assert_int_equal(qact_a(qa, nbp, 2, 4), 2);  /* 96 = 1.5 steps: ties to even */
    /* blocks 3, 4: non-finite -> A = 0, as = NaN */
    assert_true(isnan(as[3]) && isnan(as[4]));
    for (unsigned k = 0; k < 32; k++)
        assert_int_equal(qact_a(qa, nbp, 3, k), 0);
    assert_int_equal(corr[3], 0);
    /* block 5: subnormals only: e = -113, A = rne(x * 2^127) */
    assert_true(as[5] == 0x1p-114f);
    assert_int_equal(qact_a(qa, nbp, 5, 0), 0); /* 3 * 2^-149 * 2^127 = 3 * 2^-22 */
    /* block 6 (e = 1): 3.99999976 rounds to 2^15, kept at 2^15 - 1; its
     * negative rounds to -2^15, which int16 holds */
    assert_true(as[6] == 1.0f);
    assert_int_equal(qact_a(qa, nbp, 6, 0), 16384); /* 1.99999988 * 2^13 = 16383.999 */
    assert_int_equal(qact_a(qa, nbp, 6, 1), -32768);
    assert_int_equal(qact_a(qa, nbp, 6, 2), 32767); /* 3.99999976 * 2^13 = 32767.998 */
    /* the byte planes hold the same integers: A = 256 * high + low */
    const int8_t *pl = MXI_QACT_PLANES(qa, nbp);
    for (size_t b = 0; b < nbp; b++)
        for (unsigned k = 0; k < 32; k++) {
            unsigned q = k / 8, c = (k % 8) / 2, y = k % 2;
            const int8_t *o = pl + 512 * (b / 8) + 128 * q + 4 * (b % 8) + c;
            int hi = o[32 * y], lo = (uint8_t)o[64 + 32 * y];
            assert_int_equal(256 * hi + lo, qact_a(qa, nbp, b, k));
            /* and the AMX rows: 32 high bytes, then 32 low ones, element order */
            const int8_t *am = MXI_QACT_AMX(qa, nbp) + 64 * b;
            assert_int_equal(256 * am[k] + (uint8_t)am[32 + k], qact_a(qa, nbp, b, k));
        }
    free(qa);
}

/* Packs rows x cols MXFP4 weights from codes and scale bytes through prepack
 * (one expert; gate_up takes the matrix, down is a dummy). */
typedef struct {
    mx_backend_packed_t *pk;
    uint8_t *codes, *scales;
    mx_expert_weights_t w;
    uint8_t *dcodes, *dscales;
} q4_mat_t;

static void q4_mat_make(q4_mat_t *o, size_t rows, size_t cols, int level, const uint8_t *code_of_k,
                        const uint8_t *scale_of_b)
{
    memset(o, 0, sizeof *o);
    size_t I = rows / 2;
    o->codes = calloc(rows * cols / 2, 1);
    o->scales = calloc(rows * cols / 32, 1);
    o->dcodes = calloc(cols * I / 2, 1);
    o->dscales = calloc(cols * I / 32, 1);
    assert_non_null(o->codes);
    assert_non_null(o->scales);
    assert_non_null(o->dcodes);
    assert_non_null(o->dscales);
    for (size_t r = 0; r < rows; r++)
        for (size_t k = 0; k < cols; k++) {
            uint8_t c = code_of_k[r * cols + k] & 0xF;
            o->codes[(r * cols + k) / 2] |= (uint8_t)((k & 1) ? c << 4 : c);
        }
    memcpy(o->scales, scale_of_b, rows * cols / 32);
    memset(o->dscales, 127, cols * I / 32);
    o->w.gate_up = (mx_matrix_t){.rows = rows,
                                 .cols = cols,
                                 .fmt = MX_WFMT_MXFP4,
                                 .scale_kind = MX_WSCALE_E8M0_32,
                                 .data = o->codes,
                                 .scales = o->scales};
    o->w.down = (mx_matrix_t){.rows = cols,
                              .cols = I,
                              .fmt = MX_WFMT_MXFP4,
                              .scale_kind = MX_WSCALE_E8M0_32,
                              .data = o->dcodes,
                              .scales = o->dscales};
    mx_moe_desc_t d = kt_desc(MX_SCHEME_W4A16, MX_ACT_SILU, MX_GATEUP_INTERLEAVED, cols, I);
    mx_device_info_t dev = cpu_dev_at(level);
    assert_int_equal(mx_backend_cpu.prepack(&dev, &d, &o->w, 1, &o->pk), MX_OK);
}

static void q4_mat_free(q4_mat_t *o)
{
    mx_backend_cpu.release(o->pk);
    free(o->codes);
    free(o->scales);
    free(o->dcodes);
    free(o->dscales);
}

static void test_qact_avx2_matches_the_scalar_quantizer_bit_for_bit(void **state)
{
    (void)state;
    if (!cpu_level_available(MXI_CPU_LEVEL_AVX2))
        skip();
#if defined(__x86_64__) || defined(__i386__)
    /* rows of 12 blocks + 4 padding ones, cols 384 or a short last block; per
     * block a random binade (2^-140..2^100), then one of: all zero, subnormals
     * only, a NaN, an Inf, a max that rounds up to 2^15, a 2^20 outlier */
    const size_t nbp = 16, maxcols = 12 * 32, bytes = mxi_cpu_qact_bytes(nbp);
    uint8_t *a = aligned_alloc(64, bytes), *b = aligned_alloc(64, bytes);
    float x[12 * 32];
    assert_non_null(a);
    assert_non_null(b);
    kt_rng_t r;
    const uint64_t seed = 79;
    kt_rng_seed(&r, seed);
    for (int row = 0; row < 400; row++) {
        for (size_t blk = 0; blk < 12; blk++) {
            int ex = kt_rng_below(&r, 241) - 140, kind = kt_rng_below(&r, 12);
            for (size_t k = 0; k < 32; k++)
                x[32 * blk + k] = ldexpf(kt_rng_uniform(&r, -1.0f, 1.0f), ex - kt_rng_below(&r, 24));
            size_t k = (size_t)kt_rng_below(&r, 32);
            if (kind == 0)
                memset(x + 32 * blk, 0, 32 * sizeof *x);
            else if (kind == 1)
                for (size_t i = 0; i < 32; i++)
                    x[32 * blk + i] = bits_f((uint32_t)kt_rng_below(&r, 1 << 20) | (i % 2 ? 0x80000000u : 0));
            else if (kind == 2)
                x[32 * blk + k] = NAN;
            else if (kind == 3)
                x[32 * blk + k] = k % 2 ? INFINITY : -INFINITY;
            else if (kind == 4)
                x[32 * blk + k] = ldexpf(k % 2 ? 1.99999994f : -1.99999994f, ex);
            else if (kind == 5)
                x[32 * blk + k] = ldexpf(1.0f, ex + 20 < 127 ? ex + 20 : 127);
        }
        size_t cols = row % 3 ? maxcols : maxcols - 1 - (size_t)kt_rng_below(&r, 31);
        float sc = row % 4 ? 1.0f : ldexpf(kt_rng_uniform(&r, 1.0f, 2.0f), kt_rng_below(&r, 21) - 10);
        memset(a, 0x5A, bytes);
        memset(b, 0xA5, bytes);
        mxi_cpu_qact(x, cols, nbp, sc, a);
        mxi_cpu_qact_avx2(x, cols, nbp, sc, b);
        if (memcmp(a, b, bytes) != 0)
            fail_msg("seed %llu row %d (cols %zu): AVX2 quantizer differs from the scalar one",
                     (unsigned long long)seed, row, cols);
    }
    free(a);
    free(b);
#endif
}

/* The kernels tested: scalar, AVX2, AVX-512, AVX-512 with VNNI, AMX, AVX-512
 * with VNNI and VBMI, AVX2 with AVX-VNNI (each where the CPU has it; the
 * packed layout is the same for all). */
#define NK 7
static const char *const kname[NK] = {"scalar", "avx2", "avx512", "avx512vnni", "amx", "avx512vbmi", "avxvnni"};

static int kernel_level(int k)
{
    return k < 3 ? k : k == 4 ? MXI_CPU_LEVEL_AMX : k == 6 ? MXI_CPU_LEVEL_AVX2 : MXI_CPU_LEVEL_AVX512;
}

static int kernel_available(int k)
{
    if (k < 3)
        return cpu_level_available(k);
    if (k == 4)
        return cpu_level_available(MXI_CPU_LEVEL_AMX);
    if (k == 6)
        return cpu_has_avxvnni();
    unsigned need = MXI_CPU_HAS_AVX512VNNI | (k == 5 ? MXI_CPU_HAS_AVX512VBMI : 0);
    return cpu_level_available(MXI_CPU_LEVEL_AVX512) && (mxi_cpu_detect() & need) == need;
}

static mxi_cpu_q4_fn kernel_fn(int k)
{
#if defined(__x86_64__) || defined(__i386__)
    if (k == 6)
        return mxi_cpu_q4_avxvnni;
    if (k == 5)
        return mxi_cpu_q4_avx512vbmi;
    if (k == 4)
        return mxi_cpu_q4_amx;
    if (k == 3)
        return mxi_cpu_q4_avx512vnni;
    if (k == 2)
        return mxi_cpu_q4_avx512;
    if (k == 1)
        return mxi_cpu_q4_avx2;
#endif
    return mxi_cpu_q4_scalar;
}

/* c[t][r] for every kernel the CPU has, through the streaming path (nt below
 * MXI_CPU_Q4_STREAM_MAX at AVX2, MXI_CPU_Q4Z_STREAM_MAX at 16 lanes) or the
 * tiled one, 24 rows per call like run() (AMX: 32) and, between
 * those, calls of 21, 19 and 17 rows (AMX: 27, 17, 9: partial items). */
static void run_levels(size_t rows, size_t cols, const uint8_t *codes, const uint8_t *scales, const float *x, size_t nt,
                       float *c_p[NK])
{
    size_t nbp = (cols / 32 + 7) / 8 * 8, qb = (mxi_cpu_qact_bytes(nbp) + 63) / 64 * 64;
    uint8_t *qa = aligned_alloc(64, nt * qb);
    const uint8_t *ap[64];
    assert_non_null(qa);
    for (size_t t = 0; t < nt; t++) {
        mxi_cpu_qact(x + t * cols, cols, nbp, 1.0f, qa + t * qb);
        ap[t] = qa + t * qb;
    }
    size_t tb = MXI_CPU_ROW_BLOCK * nbp * 68 + 256 + (nt + 8) * MXI_CPU_ROW_BLOCK * 32,
           tamx = MXI_CPU_AMX_TILE_BYTES(nbp) + (nt + 8) * MXI_CPU_AMX_ROWS * 32;
    void *tile = aligned_alloc(64, (tb > tamx ? tb : tamx) + 64);
    float cb[64 * MXI_CPU_AMX_ROWS];
    assert_non_null(tile);
    for (int lv = 0; lv < NK; lv++) {
        c_p[lv] = NULL;
        if (!kernel_available(lv))
            continue;
        q4_mat_t m;
        q4_mat_make(&m, rows, cols, kernel_level(lv), codes, scales);
        const mxi_cpu_mat_t *pm = mxi_cpu_packed_matrix(m.pk, 0, 0);
        c_p[lv] = malloc(nt * rows * sizeof(float));
        assert_non_null(c_p[lv]);
        static const size_t chunks[2][4] = {{MXI_CPU_ROW_BLOCK, 21, 19, 17}, {MXI_CPU_AMX_ROWS, 27, 17, 9}};
        const size_t *chunk = chunks[kernel_level(lv) == MXI_CPU_LEVEL_AMX], ldc = MXI_CPU_AMX_ROWS;
        for (size_t r0 = 0, ci = 0; r0 < rows; r0 += chunk[ci++ % 4]) {
            size_t r1 = r0 + chunk[ci % 4] < rows ? r0 + chunk[ci % 4] : rows;
            for (size_t i = 0; i < sizeof cb / sizeof cb[0]; i++)
                cb[i] = NAN;
            kernel_fn(lv)(pm, r0, r1, ap, nt, cb, ldc, tile);
            for (size_t t = 0; t < nt; t++)
                for (size_t r = r0; r < r1; r++)
                    c_p[lv][t * rows + r] = cb[t * ldc + (r - r0)];
        }
        q4_mat_free(&m);
    }
    free(tile);
    free(qa);
}

static const float e2m1v[16] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6, -0.0f, -0.5f, -1, -1.5f, -2, -3, -4, -6};

static void test_kernels_are_exact_where_the_arithmetic_is_exact(void **state)
{
    (void)state;
    /* small integer activations and weights with scales 2^-1..2^1: every product,
     * block sum and running sum is a multiple of 2^-2 below 2^20, so every level
     * and path must give exactly the double-precision dot product */
    const size_t rows = 128, cols = 2880, nts[] = {1, 2, 3, 4, 5, 6, 7, 9, 12, 14, 16, 17, 18, 40};
    uint8_t *codes = malloc(rows * cols), *scales = malloc(rows * cols / 32);
    float *x = malloc(40 * cols * sizeof(float));
    assert_non_null(codes);
    assert_non_null(scales);
    assert_non_null(x);
    kt_rng_t r;
    kt_rng_seed(&r, 77);
    for (size_t i = 0; i < rows * cols; i++)
        codes[i] = (uint8_t)kt_rng_below(&r, 16);
    for (size_t i = 0; i < rows * cols / 32; i++)
        scales[i] = (uint8_t)(126 + kt_rng_below(&r, 3));
    for (size_t i = 0; i < 40 * cols; i++)
        x[i] = (float)(kt_rng_below(&r, 17) - 8);
    for (size_t n = 0; n < sizeof nts / sizeof nts[0]; n++) {
        size_t nt = nts[n];
        float *c[NK];
        run_levels(rows, cols, codes, scales, x, nt, c);
        for (size_t t = 0; t < nt; t++)
            for (size_t rr = 0; rr < rows; rr++) {
                double want = 0.0;
                for (size_t k = 0; k < cols; k++)
                    want += (double)e2m1v[codes[rr * cols + k]] * ldexp(1.0, scales[(rr * cols + k) / 32] - 127) *
                            (double)x[t * cols + k];
                for (int lv = 0; lv < NK; lv++)
                    if (c[lv] && (double)c[lv][t * rows + rr] != want)
                        fail_msg("kernel %s nt=%zu token %zu row %zu: %.9g, exact %.9g", kname[lv], nt, t, rr,
                                 (double)c[lv][t * rows + rr], want);
            }
        for (int lv = 0; lv < NK; lv++)
            free(c[lv]);
    }
    free(codes);
    free(scales);
    free(x);
}

static void test_kernels_handle_e8m0_extremes_alike_on_every_level(void **state)
{
    (void)state;
    /* rows with scale bytes 0x00 (2^-127: subnormal ws), 0xFE (2^127, codes of
     * magnitude <= 1.5 so the weights stay finite) and 0xFF (NaN) next to
     * ordinary ones; K = 96: one short group (3 blocks) */
    const size_t rows = 64, cols = 96;
    uint8_t codes[64 * 96], scales[64 * 3];
    float x[21 * 96];
    kt_rng_t r;
    kt_rng_seed(&r, 78);
    for (size_t rr = 0; rr < rows; rr++)
        for (size_t b = 0; b < 3; b++) {
            uint8_t s = (uint8_t)(120 + kt_rng_below(&r, 8));
            if (rr % 4 == 1)
                s = 0x00;
            else if (rr % 4 == 2 && b == 1)
                s = 0xFE;
            else if (rr == 11 && b == 2)
                s = 0xFF;
            scales[rr * 3 + b] = s;
            for (size_t k = 0; k < 32; k++)
                codes[rr * cols + 32 * b + k] =
                    (uint8_t)(s == 0xFE ? kt_rng_below(&r, 4) | (kt_rng_below(&r, 2) << 3) : kt_rng_below(&r, 16));
        }
    for (size_t i = 0; i < 21 * cols; i++)
        x[i] = kt_rng_uniform(&r, -1.0f, 1.0f) * 0x1p-100f; /* keeps 2^127 rows finite */
    size_t nts[] = {1, 5, 8, 21};
    for (size_t n = 0; n < sizeof nts / sizeof nts[0]; n++) {
        size_t nt = nts[n];
        float *c[NK];
        run_levels(rows, cols, codes, scales, x, nt, c);
        for (int lv = 1; lv < NK; lv++)
            if (c[lv] && memcmp(c[lv], c[0], nt * rows * sizeof(float)) != 0)
                fail_msg("nt=%zu: kernel %s differs from scalar", nt, kname[lv]);
        for (size_t t = 0; t < nt; t++)
            for (size_t rr = 0; rr < rows; rr++) {
                float got = c[0][t * rows + rr];
                /* activations carry 15 bits per block: each is off by at most
                 * half a step 2^(e-14) of its block (e: exponent of the block
                 * max); then float rounding; the E8M0 0x00 rows are ~2^-227,
                 * below float's range */
                double want = 0.0, mag = 0.0, qerr = 0.0;
                for (size_t k = 0; k < cols; k++) {
                    double w = (double)e2m1v[codes[rr * cols + k]] * ldexp(1.0, scales[rr * 3 + k / 32] - 127);
                    double p = w * (double)x[t * cols + k];
                    if (scales[rr * 3 + k / 32] == 0xFF)
                        p = NAN;
                    float bm = 0.0f;
                    for (size_t j = k / 32 * 32; j < k / 32 * 32 + 32; j++)
                        bm = fabsf(x[t * cols + j]) > bm ? fabsf(x[t * cols + j]) : bm;
                    int e;
                    frexpf(bm, &e);
                    want += p;
                    mag += fabs(p);
                    qerr += fabs(w) * ldexp(1.0, e - 1 - 15);
                }
                if (isnan(want)) {
                    assert_true(isnan(got));
                    continue;
                }
                double tol = qerr + mag * 1e-6 + ldexp(1.0, -140);
                if (!(fabs((double)got - want) <= tol))
                    fail_msg("nt=%zu token %zu row %zu (scales %u %u %u): %.9g, exact %.9g", nt, t, rr, scales[rr * 3],
                             scales[rr * 3 + 1], scales[rr * 3 + 2], (double)got, want);
            }
        for (int lv = 0; lv < NK; lv++)
            free(c[lv]);
    }
}

/* Runs a W4A16 problem whose tokens have all-zero blocks, outliers, tiny
 * blocks and (when nonfinite) a NaN token and an Inf token; checks every level
 * against the scalar one bitwise, each token alone against the batch, and the
 * finite tokens against ref. Token 1 has an outlier 2^20 times the rest in
 * every block: the contract keeps 15 bits per block, so the rest of those
 * blocks rounds to 0; it is compared with ref run on exactly that (the rest
 * zeroed), and its distance to ref on the original is printed (it can exceed
 * the tolerance: where the outliers' products cancel, the dropped elements were
 * all that remained). Token 5 has realistic outliers (2^8 times the rest) and
 * is compared with ref on the original. */
static void check_special_tokens(int nonfinite)
{
    const size_t H = 2880, I = 704, T = 9;
    mx_moe_desc_t d = kt_desc(MX_SCHEME_W4A16, MX_ACT_SWIGLU_OAI, MX_GATEUP_INTERLEAVED, H, I);
    cpu_problem_t p;
    assert_int_equal(cpu_problem_make(&p, &d, 3, T, 2, 0, 91 + (uint64_t)nonfinite), 0);
    /* token 0: blocks 0..9 zero; token 1: an outlier 2^20 x in every block;
     * token 2: every other block zero and the rest tiny (2^-120);
     * tokens 3 and 4 (nonfinite): a NaN, an Inf */
    for (size_t k = 0; k < 320; k++)
        p.x[0 * H + k] = 0;
    uint16_t *xq = malloc(T * H * sizeof(uint16_t)); /* the tokens as the contract sees them */
    assert_non_null(xq);
    for (size_t b = 0; b < H / 32; b++) {
        p.x[1 * H + 32 * b + (b * 7) % 32] = mx_quant_bf16_from_f32(0x1p20f * (b % 2 ? -1.0f : 1.0f));
        p.x[5 * H + 32 * b + (b * 5) % 32] = mx_quant_bf16_from_f32(0x1p8f * (b % 3 ? -1.0f : 1.0f));
    }
    memcpy(xq, p.x, T * H * sizeof(uint16_t));
    for (size_t k = 0; k < H; k++)
        if (k % 32 != ((k / 32) * 7) % 32)
            xq[1 * H + k] = 0;
    for (size_t k = 0; k < H; k++)
        p.x[2 * H + k] = (k / 32) % 2 ? 0 : mx_quant_bf16_from_f32(0x1p-120f * (float)(1 + k % 5));
    if (nonfinite) {
        p.x[3 * H + 100] = mx_quant_bf16_from_f32(NAN);
        p.x[4 * H + 2000] = mx_quant_bf16_from_f32(-INFINITY);
    }
    const size_t NA = p.rt.n_assign;
    uint16_t *y[4] = {NULL, NULL, NULL, NULL};
    for (int lv = 0; lv < 4; lv++) {
        if (!cpu_level_available(lv))
            continue;
        mx_device_info_t dev = cpu_dev_at(lv);
        mx_backend_packed_t *pk = NULL;
        assert_int_equal(mx_backend_cpu.prepack(&dev, &d, p.ex->w, 3, &pk), MX_OK);
        y[lv] = malloc(NA * H * sizeof(uint16_t));
        assert_non_null(y[lv]);
        kt_poison_bf16(y[lv], NA * H);
        assert_int_equal(cpu_run_on(&mx_backend_cpu, pk, p.x, T, NA, p.rt.tok, p.rt.expert, p.rt.weight,
                                    MX_OUT_PER_ASSIGNMENT, y[lv], NULL, 0),
                         MX_OK);
        if (lv > 0 && memcmp(y[lv], y[0], NA * H * sizeof(uint16_t)) != 0)
            fail_msg("seed %llu: level %s differs from scalar", (unsigned long long)p.seed, mxi_cpu_level_name(lv));
        /* each token alone (streaming) gives the bits it got in the batch of 9 (tiled) */
        for (size_t t = 0; t < T; t++) {
            int32_t tok[4], ex[4];
            float w[4];
            size_t src[4], na = 0;
            for (size_t a = 0; a < NA; a++)
                if ((size_t)p.rt.tok[a] == t) {
                    tok[na] = 0;
                    ex[na] = p.rt.expert[a];
                    w[na] = p.rt.weight[a];
                    src[na++] = a;
                }
            uint16_t one[2 * 2880];
            assert_int_equal(
                cpu_run_on(&mx_backend_cpu, pk, p.x + t * H, 1, na, tok, ex, w, MX_OUT_PER_ASSIGNMENT, one, NULL, 0),
                MX_OK);
            for (size_t a = 0; a < na; a++)
                if (memcmp(one + a * H, y[lv] + src[a] * H, H * sizeof(uint16_t)) != 0)
                    fail_msg("level %s token %zu: alone differs from batch", mxi_cpu_level_name(lv), t);
        }
        mx_backend_cpu.release(pk);
    }
    /* non-finite tokens: every output of theirs is NaN; finite tokens: close to ref */
    const mx_backend_ops_t *ref = mx_backend_find("ref");
    uint16_t *yr = malloc(NA * H * sizeof(uint16_t)), *yrq = malloc(NA * H * sizeof(uint16_t));
    assert_non_null(yr);
    assert_non_null(yrq);
    if (ref) {
        mx_device_info_t rdev;
        assert_int_equal(ref->probe(&rdev), MX_OK);
        mx_backend_packed_t *rpk = NULL;
        assert_int_equal(ref->prepack(&rdev, &d, p.ex->w, 3, &rpk), MX_OK);
        kt_poison_bf16(yr, NA * H);
        assert_int_equal(
            cpu_run_on(ref, rpk, p.x, T, NA, p.rt.tok, p.rt.expert, p.rt.weight, MX_OUT_PER_ASSIGNMENT, yr, NULL, 0),
            MX_OK);
        assert_int_equal(
            cpu_run_on(ref, rpk, xq, T, NA, p.rt.tok, p.rt.expert, p.rt.weight, MX_OUT_PER_ASSIGNMENT, yrq, NULL, 0),
            MX_OK);
        ref->release(rpk);
    }
    for (size_t a = 0; a < NA; a++) {
        int32_t t = p.rt.tok[a];
        if (nonfinite && (t == 3 || t == 4)) {
            assert_int_equal(kt_count_nan_bf16(y[0] + a * H, H), H);
            continue;
        }
        assert_int_equal(kt_count_nan_bf16(y[0] + a * H, H), 0);
        if (ref) {
            double err = kt_rel_l2_bf16(y[0] + a * H, (t == 1 ? yrq : yr) + a * H, H);
            if (t == 1)
                print_message("token 1 (2^20 outliers) expert %d: rel L2 %.2e vs ref on the rounded token, %.2e vs "
                              "ref on the original\n",
                              p.rt.expert[a], err, kt_rel_l2_bf16(y[0] + a * H, yr + a * H, H));
            else
                print_message("token %d expert %d: rel L2 vs ref %.2e\n", t, p.rt.expert[a], err);
            if (!(err <= kt_tolerance(MX_SCHEME_W4A16)))
                fail_msg("seed %llu token %d expert %d: rel L2 %.3e vs ref", (unsigned long long)p.seed, t,
                         p.rt.expert[a], err);
        }
    }
    free(yr);
    free(yrq);
    free(xq);
    for (int lv = 0; lv < 4; lv++)
        free(y[lv]);
    cpu_problem_free(&p);
}

static void test_zero_blocks_outliers_and_tiny_blocks_match_everywhere(void **state)
{
    (void)state;
    check_special_tokens(0);
}

static void test_nan_or_inf_tokens_give_nan_outputs_and_leave_others_alone(void **state)
{
    (void)state;
    check_special_tokens(1);
}

int main(void)
{
    (void)f_bits;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_qact_follows_the_contract_on_crafted_blocks),
        cmocka_unit_test(test_qact_avx2_matches_the_scalar_quantizer_bit_for_bit),
        cmocka_unit_test(test_kernels_are_exact_where_the_arithmetic_is_exact),
        cmocka_unit_test(test_kernels_handle_e8m0_extremes_alike_on_every_level),
        cmocka_unit_test(test_zero_blocks_outliers_and_tiny_blocks_match_everywhere),
        cmocka_unit_test(test_nan_or_inf_tokens_give_nan_outputs_and_leave_others_alone),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
