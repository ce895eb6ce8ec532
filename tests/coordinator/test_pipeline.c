/* The reference pipeline with the real `ref` backend: close to an independent
 * double-precision computation, and bitwise equal to the distributed path
 * (plan, pack, unpack, per-rank run, EXACT combine) for 1..8 simulated ranks
 * and several placements, for a top-k router and for expert choice. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>

#include "mxep/kernels.h"
#include "sim.h"

#define SEED 9090u
enum { T = 29, E = 8, H = 64, I = 32, K = 2 };

typedef struct {
    const mx_backend_ops_t *ops;
    mx_device_info_t dev;
    mx_moe_desc_t desc;
    uint16_t *wgu, *wd; /* [E][2I x H], [E][H x I] */
    mx_expert_weights_t ew[E];
    float *rw, rb[E];
    mx_router_weights_t router;
    uint16_t *x;
} model_t;

static void model_make(model_t *m)
{
    memset(m, 0, sizeof *m);
    m->ops = mx_backend_find("ref");
    assert_non_null(m->ops);
    assert_int_equal(m->ops->probe(&m->dev), MX_OK);
    m->desc.scheme = MX_SCHEME_W16A16;
    m->desc.act = MX_ACT_SILU;
    m->desc.order = MX_GATEUP_HALVES;
    m->desc.hidden = H;
    m->desc.inter = I;
    char why[MX_REASON_MAX];
    assert_true(m->ops->supports(&m->dev, &m->desc, why, sizeof why));
    m->wgu = malloc(sizeof(uint16_t) * E * 2 * I * H);
    m->wd = malloc(sizeof(uint16_t) * E * H * I);
    for (size_t i = 0; i < (size_t)E * 2 * I * H; i++)
        m->wgu[i] = sim_bf16((float)(sim_unit() - 0.5) * 0.4f);
    for (size_t i = 0; i < (size_t)E * H * I; i++)
        m->wd[i] = sim_bf16((float)(sim_unit() - 0.5) * 0.4f);
    for (int e = 0; e < E; e++) {
        mx_expert_weights_t *w = &m->ew[e];
        w->gate_up = (mx_matrix_t){MX_WFMT_BF16, MX_WSCALE_NONE, 2 * I, H, m->wgu + (size_t)e * 2 * I * H, NULL};
        w->down = (mx_matrix_t){MX_WFMT_BF16, MX_WSCALE_NONE, H, I, m->wd + (size_t)e * H * I, NULL};
    }
    m->rw = malloc(sizeof(float) * E * H);
    for (int i = 0; i < E * H; i++)
        m->rw[i] = (float)(sim_unit() - 0.5);
    for (int e = 0; e < E; e++)
        m->rb[e] = (float)(sim_unit() - 0.5) * 0.1f;
    m->router = (mx_router_weights_t){.n_experts = E, .hidden = H, .weight = m->rw, .bias = m->rb};
    m->x = malloc(sizeof(uint16_t) * T * H);
    for (size_t i = 0; i < (size_t)T * H; i++)
        m->x[i] = sim_bf16((float)(sim_unit() * 2 - 1));
}

static void model_free(model_t *m)
{
    free(m->wgu);
    free(m->wd);
    free(m->rw);
    free(m->x);
}

static mx_backend_packed_t *pack_experts(model_t *m, const int *ids, int n)
{
    mx_expert_weights_t sub[E];
    for (int i = 0; i < n; i++)
        sub[i] = m->ew[ids[i]];
    mx_backend_packed_t *p = NULL;
    if (n == 0)
        return NULL;
    mx_status_t st = m->ops->prepack(&m->dev, &m->desc, sub, n, &p);
    if (st != MX_OK)
        fail_msg("prepack: %s", mx_error_detail());
    return p;
}

/* expert e on token x, in double, with the hidden activation rounded to BF16 as ref does */
static void expert_double(const model_t *m, int e, const uint16_t *x, double *y)
{
    double act[I];
    const uint16_t *gu = m->wgu + (size_t)e * 2 * I * H, *dn = m->wd + (size_t)e * H * I;
    for (int i = 0; i < I; i++) {
        double g = 0, u = 0;
        for (int h = 0; h < H; h++) {
            g += (double)sim_f32(gu[(size_t)i * H + h]) * sim_f32(x[h]);
            u += (double)sim_f32(gu[(size_t)(I + i) * H + h]) * sim_f32(x[h]);
        }
        act[i] = sim_f32(sim_bf16((float)(g / (1 + exp(-g)) * u)));
    }
    for (int h = 0; h < H; h++) {
        double s = 0;
        for (int i = 0; i < I; i++)
            s += (double)sim_f32(dn[(size_t)h * I + i]) * act[i];
        y[h] = s;
    }
}

static void check_pipeline(const mx_router_desc_t *d)
{
    model_t m;
    model_make(&m);
    int all[E];
    for (int e = 0; e < E; e++)
        all[e] = e;
    mx_backend_packed_t *packed_all = pack_experts(&m, all, E);
    mx_pipeline_ref_t pipe = {m.ops, packed_all, d, &m.router, H, 1};
    uint16_t *out = malloc(sizeof(uint16_t) * T * H), *got = malloc(sizeof(uint16_t) * T * H);
    for (size_t i = 0; i < (size_t)T * H; i++)
        out[i] = 0xFFFF;
    mx_routing_t routing;
    if (mx_pipeline_ref_run(&pipe, m.x, T, out, &routing) != MX_OK)
        fail_msg("pipeline: %s", mx_error_detail());

    /* 1. against double precision */
    double num = 0, den = 0, y[H];
    for (int t = 0; t < T; t++) {
        double ref[H] = {0};
        for (size_t a = 0; a < routing.n_assign; a++)
            if (routing.tok[a] == t) {
                expert_double(&m, routing.expert[a], m.x + (size_t)t * H, y);
                for (int h = 0; h < H; h++)
                    ref[h] += routing.weight[a] * y[h];
            }
        for (int h = 0; h < H; h++) {
            double dd = sim_f32(out[(size_t)t * H + h]) - ref[h];
            num += dd * dd;
            den += ref[h] * ref[h];
        }
    }
    double err = sqrt(num / (den > 0 ? den : 1));
    printf("# %s: pipeline vs double rel L2 %.3g\n", mx_router_name(d->kind), err);
    assert_true(den > 0);
    assert_true(err < 1e-2);

    /* 2. the distributed path, bitwise */
    float *logits = malloc(sizeof(float) * T * E);
    assert_int_equal(mx_coord_router_logits(&m.router, m.x, T, H, logits), MX_OK);
    const int ranks[4] = {1, 2, 3, 8};
    for (int ri = 0; ri < 4; ri++) {
        int R = ranks[ri];
        for (int variant = 0; variant < 2; variant++) {
            mx_placement_t pl;
            if (variant == 0) {
                assert_int_equal(mx_coord_placement_contiguous(E, R, &pl), MX_OK);
            } else { /* replicas: expert e on ranks e % R and (e + 1) % R */
                char json[512];
                size_t n = (size_t)snprintf(json, sizeof json, "{\"experts\": [");
                for (int e = 0; e < E; e++) {
                    if (R == 1)
                        n += (size_t)snprintf(json + n, sizeof json - n, "%s0", e ? "," : "");
                    else
                        n += (size_t)snprintf(json + n, sizeof json - n, "%s[%d,%d]", e ? "," : "", e % R, (e + 1) % R);
                }
                snprintf(json + n, sizeof json - n, "]}");
                assert_int_equal(mx_coord_placement_parse(json, "test", E, R, &pl), MX_OK);
            }
            mx_backend_packed_t *packed[8] = {0};
            for (int r = 0; r < R; r++) {
                int n;
                const int *ids = mx_coord_placement_rank_experts(&pl, r, &n);
                packed[r] = pack_experts(&m, ids, n);
            }
            sim_backend_t be = {m.ops, packed};
            size_t cuts[9];
            sim_cuts(R, T, cuts);
            mx_routing_t rt[8];
            assert_int_equal(sim_route(R, cuts, d, logits, E, rt), 0);
            for (size_t i = 0; i < (size_t)T * H; i++)
                got[i] = 0xFFFF;
            assert_int_equal(sim_layer(R, cuts, rt, &pl, m.x, H, MX_DISPATCH_BF16, MX_COMBINE_EXACT, &be, got), 0);
            if (memcmp(got, out, sizeof(uint16_t) * T * H) != 0)
                fail_msg("%s, %d ranks, placement %d: distributed EXACT differs from the pipeline",
                         mx_router_name(d->kind), R, variant);
            for (int r = 0; r < R; r++) {
                mx_routing_fini(&rt[r]);
                if (packed[r])
                    m.ops->release(packed[r]);
            }
            mx_placement_fini(&pl);
        }
    }
    free(logits);
    mx_routing_fini(&routing);
    m.ops->release(packed_all);
    free(out);
    free(got);
    model_free(&m);
}

static void test_pipeline_topk_matches_double_and_distributed_path(void **state)
{
    (void)state;
    sim_seed(SEED);
    mx_router_desc_t d = {MX_ROUTER_TOPK_SOFTMAX, K, 0, 0, 0, 1.0f, 1.0f};
    check_pipeline(&d);
}

static void test_pipeline_expert_choice_matches_double_and_distributed_path(void **state)
{
    (void)state;
    sim_seed(SEED + 1);
    mx_router_desc_t d = {MX_ROUTER_EXPERT_CHOICE, K, 0, 0, 0, 1.0f, 0.75f};
    check_pipeline(&d);
}

static void test_pipeline_sigmoid_grouped_matches_double_and_distributed_path(void **state)
{
    (void)state;
    sim_seed(SEED + 2);
    mx_router_desc_t d = {MX_ROUTER_SIGMOID_GROUPED, K, 0, 4, 2, 2.5f, 1.0f};
    check_pipeline(&d);
}

static void test_pipeline_rejects_missing_backend(void **state)
{
    (void)state;
    mx_router_desc_t d = {MX_ROUTER_TOPK_SOFTMAX, 1, 0, 0, 0, 1.0f, 1.0f};
    float w[4] = {1, 2, 3, 4};
    mx_router_weights_t rw = {.n_experts = 2, .hidden = 2, .weight = w};
    mx_pipeline_ref_t pipe = {NULL, NULL, &d, &rw, 2, 1};
    uint16_t x[2] = {0x3f80, 0x3f80}, out[2] = {0xFFFF, 0xFFFF};
    assert_int_equal(mx_pipeline_ref_run(&pipe, x, 1, out, NULL), MX_ERR_INVALID);
    assert_int_equal(out[0], 0xFFFF);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pipeline_topk_matches_double_and_distributed_path),
        cmocka_unit_test(test_pipeline_expert_choice_matches_double_and_distributed_path),
        cmocka_unit_test(test_pipeline_sigmoid_grouped_matches_double_and_distributed_path),
        cmocka_unit_test(test_pipeline_rejects_missing_backend),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
