/* cpu backend: a token's output is bitwise identical whatever its batch-mates
 * (alone, in small batches that take the streaming path, in a batch of 257 that
 * takes the tiled path), for every scheme, in both output modes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "test_cpu_common.h"

#define BATCH 257

typedef struct {
    mx_scheme_t scheme;
    mx_act_t act;
    mx_gateup_order_t order;
    size_t H, I;
    int act_group;
} inv_case_t;

/* Runs the sub-batch made of tokens `sel[0..n)` of the problem (their
 * assignments, in the problem's order) and checks each against the full run. */
static void check_subset(const cpu_problem_t *p, const mx_backend_packed_t *pk, const uint16_t *full_y,
                         const float *full_o, const size_t *sel, size_t n)
{
    const size_t H = p->desc.hidden;
    uint16_t *x = malloc(n * H * sizeof *x);
    int32_t *tok = malloc(p->rt.n_assign * sizeof *tok), *ex = malloc(p->rt.n_assign * sizeof *ex);
    float *w = malloc(p->rt.n_assign * sizeof *w);
    size_t *src = malloc(p->rt.n_assign * sizeof *src);
    assert_non_null(x);
    assert_non_null(tok);
    assert_non_null(ex);
    assert_non_null(w);
    assert_non_null(src);
    size_t na = 0;
    for (size_t j = 0; j < n; j++) {
        memcpy(x + j * H, p->x + sel[j] * H, H * sizeof *x);
        for (size_t a = 0; a < p->rt.n_assign; a++)
            if ((size_t)p->rt.tok[a] == sel[j]) {
                tok[na] = (int32_t)j;
                ex[na] = p->rt.expert[a];
                w[na] = p->rt.weight[a];
                src[na++] = a;
            }
    }
    uint16_t *y = malloc(na * H * sizeof *y);
    float *o = calloc(n * H, sizeof *o);
    assert_non_null(y);
    assert_non_null(o);
    kt_poison_bf16(y, na * H);
    assert_int_equal(cpu_run_on(&mx_backend_cpu, pk, x, n, na, tok, ex, w, MX_OUT_PER_ASSIGNMENT, y, NULL, 0), MX_OK);
    assert_int_equal(cpu_run_on(&mx_backend_cpu, pk, x, n, na, tok, ex, w, MX_OUT_WEIGHTED_SUM, NULL, o, 0), MX_OK);
    for (size_t a = 0; a < na; a++)
        if (memcmp(y + a * H, full_y + src[a] * H, H * sizeof *y) != 0)
            fail_msg("seed %llu: %s token %zu expert %d differs alone (batch of %zu) vs in a batch of %d",
                     (unsigned long long)p->seed, mx_scheme_name(p->desc.scheme), sel[tok[a]], ex[a], n, BATCH);
    for (size_t j = 0; j < n; j++)
        if (memcmp(o + j * H, full_o + sel[j] * H, H * sizeof *o) != 0)
            fail_msg("seed %llu: %s weighted sum of token %zu differs in a batch of %zu vs %d",
                     (unsigned long long)p->seed, mx_scheme_name(p->desc.scheme), sel[j], n, BATCH);
    free(x);
    free(tok);
    free(ex);
    free(w);
    free(src);
    free(y);
    free(o);
}

static void run_case(const inv_case_t *c, uint64_t seed, int threads)
{
    mx_moe_desc_t d = kt_desc(c->scheme, c->act, c->order, c->H, c->I);
    d.act_group = c->act_group;
    cpu_problem_t p;
    assert_int_equal(cpu_problem_make(&p, &d, 6, BATCH, 2, 1, seed), 0);
    mx_device_info_t dev;
    assert_int_equal(mx_backend_cpu.probe(&dev), MX_OK);
    mx_backend_packed_t *pk = NULL;
    assert_int_equal(mx_backend_cpu.prepack(&dev, &d, p.ex->w, 6, &pk), MX_OK);
    const size_t H = d.hidden, NA = p.rt.n_assign;
    uint16_t *y = malloc(NA * H * sizeof *y);
    float *o = calloc(BATCH * H, sizeof *o);
    assert_non_null(y);
    assert_non_null(o);
    kt_poison_bf16(y, NA * H);
    assert_int_equal(cpu_run_on(&mx_backend_cpu, pk, p.x, BATCH, NA, p.rt.tok, p.rt.expert, p.rt.weight,
                                MX_OUT_PER_ASSIGNMENT, y, NULL, threads),
                     MX_OK);
    assert_int_equal(kt_count_nan_bf16(y, NA * H), 0);
    assert_int_equal(cpu_run_on(&mx_backend_cpu, pk, p.x, BATCH, NA, p.rt.tok, p.rt.expert, p.rt.weight,
                                MX_OUT_WEIGHTED_SUM, NULL, o, threads),
                     MX_OK);
    /* alone (streaming), small batches around the streaming/tiled switch, and a
     * batch of 17 that mixes both across experts */
    static const size_t sizes[] = {1, 2, 3, 4, 5, 6, 7, 17};
    kt_rng_t r;
    kt_rng_seed(&r, seed + 99);
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        size_t sel[17];
        for (size_t j = 0; j < sizes[s]; j++) {
            int dup;
            do {
                sel[j] = (size_t)kt_rng_below(&r, BATCH);
                dup = 0;
                for (size_t q = 0; q < j; q++)
                    dup |= sel[q] == sel[j];
            } while (dup);
        }
        check_subset(&p, pk, y, o, sel, sizes[s]);
    }
    mx_backend_cpu.release(pk);
    free(y);
    free(o);
    cpu_problem_free(&p);
}

static void test_w4a16_swiglu_token_alone_equals_token_in_batch(void **state)
{
    (void)state;
    inv_case_t c = {MX_SCHEME_W4A16, MX_ACT_SWIGLU_OAI, MX_GATEUP_INTERLEAVED, 2880, 96, 0};
    run_case(&c, 501, 0);
    inv_case_t c2 = {MX_SCHEME_W4A16, MX_ACT_SILU, MX_GATEUP_HALVES, 96, 704, 0};
    run_case(&c2, 502, 1);
}

static void test_w8a8_token_alone_equals_token_in_batch(void **state)
{
    (void)state;
    inv_case_t c = {MX_SCHEME_W8A8, MX_ACT_SILU, MX_GATEUP_HALVES, 160, 96, 0};
    run_case(&c, 511, 0);
    inv_case_t c2 = {MX_SCHEME_W8A8, MX_ACT_GELU_TANH, MX_GATEUP_HALVES, 256, 200, 128};
    run_case(&c2, 512, 0);
}

static void test_other_schemes_token_alone_equals_token_in_batch(void **state)
{
    (void)state;
    inv_case_t cs[] = {{MX_SCHEME_W16A16, MX_ACT_SILU, MX_GATEUP_HALVES, 100, 72, 0},
                       {MX_SCHEME_W8A16, MX_ACT_SWIGLU_OAI, MX_GATEUP_INTERLEAVED, 136, 96, 0},
                       {MX_SCHEME_W4A8, MX_ACT_SWIGLU_OAI, MX_GATEUP_INTERLEAVED, 96, 64, 0}};
    for (size_t i = 0; i < sizeof cs / sizeof cs[0]; i++)
        run_case(&cs[i], 520 + i, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_w4a16_swiglu_token_alone_equals_token_in_batch),
        cmocka_unit_test(test_w8a8_token_alone_equals_token_in_batch),
        cmocka_unit_test(test_other_schemes_token_alone_equals_token_in_batch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
