/* The GPU parity test and the GPU bench check the cuda backend against
 * tests/gpu/gpu_ref.c, a CPU reference of their own. This test, which needs no
 * GPU, ties that reference to the project's truth: on the same random experts,
 * tokens and routing it must agree with the `ref` backend for every scheme,
 * activation, gate/up order and output mode, within FORMATS.md's tolerances. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpu_ref.h"
#include "kt_util.h"
#include "mxep/kernels.h"

static void check_case(mx_scheme_t scheme, mx_act_t act, mx_gateup_order_t order, mx_wscale_t fp8s, int bias,
                       uint64_t seed)
{
    const size_t H = 96, I = 64, T = 9;
    const int E = 4, K = 2;
    mx_moe_desc_t d = kt_desc(scheme, act, order, H, I);
    gref_experts_t g;
    assert_int_equal(gref_experts_make(&d, E, fp8s, bias, seed, &g), 0);
    const mx_backend_ops_t *ref = mx_backend_find("ref");
    assert_non_null(ref);
    mx_device_info_t dev;
    assert_int_equal(ref->probe(&dev), MX_OK);
    mx_backend_packed_t *packed = NULL;
    mx_status_t st = ref->prepack(&dev, &d, g.ex, E, &packed);
    if (st != MX_OK)
        fail_msg("ref prepack (%s %s seed %llu): %s", mx_scheme_name(scheme), mx_act_name(act),
                 (unsigned long long)seed, mx_error_detail());

    kt_rng_t rng;
    kt_rng_seed(&rng, seed ^ 0x5eedu);
    uint16_t *x = malloc(T * H * 2);
    kt_tokens_fill(&rng, x, T * H, 1.0f);
    kt_routing_t r;
    assert_int_equal(kt_routing_create(T, E, K, 1, seed + 7, &r), MX_OK);

    for (int mode = 0; mode < 2; mode++) {
        size_t n = mode == 0 ? r.n_assign * H : T * H;
        uint16_t *a16 = calloc(n, 2), *b16 = calloc(n, 2);
        float *a32 = calloc(n, 4), *b32 = calloc(n, 4);
        mx_run_args_t args = {.n_tokens = T, .x = x, .n_assign = r.n_assign, .tok = r.tok, .expert = r.expert,
                              .weight = r.weight, .mode = mode == 0 ? MX_OUT_PER_ASSIGNMENT : MX_OUT_WEIGHTED_SUM,
                              .out_bf16 = a16, .out_f32 = a32};
        gref_run(&d, g.ex, &args);
        args.out_bf16 = b16;
        args.out_f32 = b32;
        assert_int_equal(kt_backend_run(ref, packed, &args), MX_OK);
        double e = mode == 0 ? kt_rel_l2_bf16(a16, b16, n) : kt_rel_l2_f32(a32, b32, n);
        double tol = kt_tolerance(scheme);
        if (!(e <= tol))
            fail_msg("gpu_ref vs ref: %s %s order %d fp8 scales %d bias %d mode %d seed %llu: rel L2 %.3e > %.1e",
                     mx_scheme_name(scheme), mx_act_name(act), (int)order, (int)fp8s, bias, mode,
                     (unsigned long long)seed, e, tol);
        free(a16);
        free(b16);
        free(a32);
        free(b32);
    }
    kt_routing_destroy(&r);
    free(x);
    ref->release(packed);
    gref_experts_free(&g);
}

static void test_gpu_reference_agrees_with_ref_backend(void **state)
{
    (void)state;
    int cases = 0;
    for (uint64_t seed = 11; seed <= 13; seed++)
        for (int s = 0; s < MX_SCHEME_COUNT; s++)
            for (int a = 0; a < MX_ACT_COUNT; a++)
                for (int o = 0; o < 2; o++) {
                    int fp8 = s == MX_SCHEME_W8A16 || s == MX_SCHEME_W8A8;
                    mx_wscale_t ws = fp8 ? (mx_wscale_t)(MX_WSCALE_BLOCK + (int)((seed + (uint64_t)a) % 3))
                                         : MX_WSCALE_BLOCK;
                    check_case((mx_scheme_t)s, (mx_act_t)a, (mx_gateup_order_t)o, ws, (int)((seed + (uint64_t)o) & 1),
                               seed);
                    cases++;
                }
    printf("gpu_ref agreed with ref in %d cases\n", cases);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gpu_reference_agrees_with_ref_backend),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
