/* Batch invariance: for every registered backend (ref included), a token's
 * output is bitwise the same alone, inside a batch of 17 and inside a batch of
 * 257, in both output modes (ARCHITECTURE.md, Determinism). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kt_util.h"
#include "mxep/log.h"

#define SEED_BASE 0xBA7C4ull
#define BIG_T 257

/* Runs the assignments of tokens [t0, t0 + nt) of `rt` as their own batch
 * (token rows renumbered from 0, assignment order kept); outputs in the
 * caller's arrays: out_bf16 rows in that order, out_f32 [nt x H] from zero. */
static mx_status_t run_subset(const mx_backend_ops_t *b, const mx_backend_packed_t *pk, const uint16_t *x,
                              const kt_routing_t *rt, size_t H, size_t t0, size_t nt, mx_out_mode_t mode,
                              uint16_t *out_bf16, float *out_f32, int32_t *map_p, size_t *n_p)
{
    int32_t *tok = malloc(rt->n_assign * sizeof(int32_t)), *ex = malloc(rt->n_assign * sizeof(int32_t));
    float *w = malloc(rt->n_assign * sizeof(float));
    size_t n = 0;
    for (size_t a = 0; a < rt->n_assign; a++) {
        if ((size_t)rt->tok[a] < t0 || (size_t)rt->tok[a] >= t0 + nt)
            continue;
        tok[n] = rt->tok[a] - (int32_t)t0;
        ex[n] = rt->expert[a];
        w[n] = rt->weight[a];
        map_p[n] = (int32_t)a;
        n++;
    }
    if (mode == MX_OUT_PER_ASSIGNMENT)
        kt_poison_bf16(out_bf16, n * H);
    else
        memset(out_f32, 0, nt * H * sizeof(float));
    mx_run_args_t args = {.n_tokens = nt,
                          .x = x + t0 * H,
                          .n_assign = n,
                          .tok = tok,
                          .expert = ex,
                          .weight = w,
                          .mode = mode,
                          .out_bf16 = out_bf16,
                          .out_f32 = out_f32};
    mx_status_t st = kt_backend_run(b, pk, &args);
    *n_p = n;
    free(tok), free(ex), free(w);
    return st;
}

/* act_group 128 (W8A8): H 288 and I 160, so that a row has more than one group */
static int check_backend_scheme(const mx_backend_ops_t *b, const mx_device_info_t *dev, mx_scheme_t scheme,
                                mx_act_t act, mx_gateup_order_t order, int act_group, uint64_t seed)
{
    const size_t H = act_group ? 288 : 96, I = act_group ? 160 : 64, T = BIG_T;
    const int E = 8;
    mx_moe_desc_t d = kt_desc(scheme, act, order, H, I);
    d.act_group = act_group;
    char why[MX_REASON_MAX] = "";
    if (!b->supports(dev, &d, why, sizeof(why))) {
        printf("  %s declines %s: %s\n", b->name, mx_scheme_name(scheme), why);
        return 0;
    }
    kt_expert_opts_t o = {.with_bias = 1, .fp8_scale = (mx_wscale_t)(MX_WSCALE_BLOCK + (int)(seed % 3))};
    kt_experts_t *ex;
    assert_int_equal(kt_experts_create(&d, E, &o, seed, &ex), MX_OK);
    kt_rng_t r;
    kt_rng_seed(&r, seed + 1);
    uint16_t *x = malloc(T * H * 2);
    kt_tokens_fill(&r, x, T * H, 1.0f);
    kt_routing_t rt;
    assert_int_equal(kt_routing_create(T, E, 2, 1, seed + 2, &rt), MX_OK);
    mx_backend_packed_t *pk;
    assert_int_equal(b->prepack(dev, &d, ex->w, E, &pk), MX_OK);

    uint16_t *big_bf16 = malloc(rt.n_assign * H * 2), *small_bf16 = malloc(rt.n_assign * H * 2);
    float *big_f32 = malloc(T * H * sizeof(float)), *small_f32 = malloc(T * H * sizeof(float));
    int32_t *map_big = malloc(rt.n_assign * sizeof(int32_t)), *map = malloc(rt.n_assign * sizeof(int32_t));
    size_t n_big, n;
    assert_int_equal(run_subset(b, pk, x, &rt, H, 0, T, MX_OUT_PER_ASSIGNMENT, big_bf16, NULL, map_big, &n_big), MX_OK);
    assert_int_equal(run_subset(b, pk, x, &rt, H, 0, T, MX_OUT_WEIGHTED_SUM, NULL, big_f32, map_big, &n_big), MX_OK);
    assert_int_equal(kt_count_nan_bf16(big_bf16, n_big * H), 0);

    int bad = 0;
    /* alone: first, middle and last tokens; in a batch of 17 starting at 100 */
    const size_t starts[5] = {0, 1, 128, 256, 100}, sizes[5] = {1, 1, 1, 1, 17};
    for (int c = 0; c < 5; c++) {
        size_t t0 = starts[c], nt = sizes[c];
        assert_int_equal(run_subset(b, pk, x, &rt, H, t0, nt, MX_OUT_PER_ASSIGNMENT, small_bf16, NULL, map, &n), MX_OK);
        for (size_t j = 0; j < n; j++)
            if (memcmp(small_bf16 + j * H, big_bf16 + (size_t)map[j] * H, H * 2) != 0) {
                printf("FAIL %s %s %s: per-assignment output of token %d (expert %d) differs alone/in a batch of %zu "
                       "vs in a batch of %zu (seed 0x%llx)\n",
                       b->name, mx_scheme_name(scheme), mx_act_name(act), (int)rt.tok[map[j]], (int)rt.expert[map[j]],
                       nt, T, (unsigned long long)seed);
                bad++;
            }
        assert_int_equal(run_subset(b, pk, x, &rt, H, t0, nt, MX_OUT_WEIGHTED_SUM, NULL, small_f32, map, &n), MX_OK);
        if (memcmp(small_f32, big_f32 + t0 * H, nt * H * sizeof(float)) != 0) {
            printf("FAIL %s %s %s: weighted sum of tokens %zu..%zu differs alone/in a batch of %zu vs in a batch of "
                   "%zu (seed 0x%llx)\n",
                   b->name, mx_scheme_name(scheme), mx_act_name(act), t0, t0 + nt - 1, nt, T, (unsigned long long)seed);
            bad++;
        }
    }
    b->release(pk);
    free(x), free(big_bf16), free(small_bf16), free(big_f32), free(small_f32), free(map_big), free(map);
    kt_routing_destroy(&rt);
    kt_experts_destroy(ex);
    return bad;
}

static void test_every_backend_gives_a_token_the_same_bits_alone_and_in_a_batch_of_257(void **state)
{
    (void)state;
    int n = 0, bad = 0, tested = 0;
    const mx_backend_ops_t *const *t = mx_backend_registry(&n);
    for (int i = 0; i < n; i++) {
        mx_device_info_t dev;
        if (t[i]->probe(&dev) != MX_OK) {
            printf("batch invariance: %s: no device (%s), not tested here\n", t[i]->name, mx_error_detail());
            continue;
        }
        printf("batch invariance: %s on %s (%s), seed base 0x%llx\n", t[i]->name, dev.name, dev.isa,
               (unsigned long long)SEED_BASE);
        tested++;
        for (int s = 0; s < MX_SCHEME_COUNT; s++)
            bad += check_backend_scheme(t[i], &dev, (mx_scheme_t)s, (mx_act_t)(s % MX_ACT_COUNT),
                                        (mx_gateup_order_t)(s & 1), 0, SEED_BASE + (uint64_t)(i * 16 + s));
        bad += check_backend_scheme(t[i], &dev, MX_SCHEME_W8A8, MX_ACT_SWIGLU_OAI, MX_GATEUP_INTERLEAVED, 128,
                                    SEED_BASE + (uint64_t)(i * 16 + MX_SCHEME_COUNT));
    }
    assert_true(tested >= 1); /* ref always probes */
    assert_int_equal(bad, 0);
}

int main(void)
{
    mx_log_set_level(MX_LOG_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_backend_gives_a_token_the_same_bits_alone_and_in_a_batch_of_257),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
