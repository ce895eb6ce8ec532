/* coordinator/pipeline.c: the single-process reference of one MoE layer.
 * It runs the distributed code path with one rank that holds every expert
 * (plan, run over all assignments, EXACT combine), so the distributed EXACT
 * path and this one share their summation code and agree bitwise. */
#include <stdlib.h>
#include <string.h>

#include "mxep/coordinator.h"

mx_status_t mx_pipeline_ref_run_routed(const mx_backend_ops_t *ops, const mx_backend_packed_t *packed,
                                       const mx_routing_t *routing, const uint16_t *x, size_t hidden, int n_threads,
                                       uint16_t *out_p)
{
    if (!ops || !ops->run || !packed || !routing || (routing->n_tokens > 0 && (!x || !out_p)))
        return mx_error_set(MX_ERR_INVALID, "reference pipeline: NULL argument (backend, weights, routing, x, out)");
    if (hidden == 0)
        return mx_error_set(MX_ERR_INVALID, "reference pipeline: hidden size 0");
    mx_placement_t pl;
    mx_status_t st = mx_coord_placement_contiguous(routing->n_experts, 1, &pl);
    if (st != MX_OK)
        return st;
    mx_dispatch_plan_t plan;
    st = mx_coord_plan_build(routing, &pl, 0, 0, &plan);
    mx_placement_fini(&pl);
    if (st != MX_OK)
        return st;
    const size_t n = plan.n_entries;
    uint16_t *rows = malloc((n ? n : 1) * hidden * sizeof(uint16_t));
    int32_t *tok = malloc((n ? n : 1) * sizeof(int32_t));
    size_t ws_bytes = ops->workspace_size ? ops->workspace_size(packed, routing->n_tokens, n) : 0;
    void *ws = ws_bytes ? malloc(ws_bytes) : NULL;
    if (!rows || !tok || (ws_bytes && !ws)) {
        st = mx_error_set(MX_ERR_NOMEM, "reference pipeline: cannot allocate %zu output rows of %zu", n, hidden);
        goto done;
    }
    for (size_t c = 0; c < plan.n_copies; c++)
        for (size_t i = plan.copy_entry_off[c]; i < plan.copy_entry_off[c + 1]; i++)
            tok[i] = plan.copy_token[c];
    if (n > 0) {
        mx_run_args_t a;
        memset(&a, 0, sizeof a);
        a.n_tokens = routing->n_tokens;
        a.x = x;
        a.n_assign = n;
        a.tok = tok;
        a.expert = plan.entry_local_expert; /* one rank holding all: local index == global id */
        a.weight = plan.entry_weight;
        a.mode = MX_OUT_PER_ASSIGNMENT;
        a.out_bf16 = rows;
        a.n_threads = n_threads;
        st = ops->run(packed, &a, ws);
        if (st != MX_OK) {
            mx_error_prefix(st, "reference pipeline: backend %s: ", ops->name ? ops->name : "?");
            goto done;
        }
    }
    size_t displs[1] = {0};
    st = mx_coord_combine(&plan, MX_COMBINE_EXACT, rows, displs, hidden, out_p);
done:
    free(rows);
    free(tok);
    free(ws);
    mx_dispatch_plan_fini(&plan);
    return st;
}

mx_status_t mx_pipeline_ref_run(const mx_pipeline_ref_t *pipe, const uint16_t *x, size_t n_tokens, uint16_t *out_p,
                                mx_routing_t *routing_p)
{
    if (!pipe || !pipe->router || !pipe->router_weights)
        return mx_error_set(MX_ERR_INVALID, "reference pipeline: NULL pipeline, router or router weights");
    const mx_router_weights_t *rw = pipe->router_weights;
    const int E = rw->n_experts;
    if (E < 1)
        return mx_error_set(MX_ERR_INVALID, "reference pipeline: router has %d experts", E);
    float *logits = malloc((n_tokens ? n_tokens : 1) * (size_t)E * sizeof(float));
    if (!logits)
        return mx_error_set(MX_ERR_NOMEM, "reference pipeline: cannot allocate logits for %zu tokens", n_tokens);
    mx_routing_t r;
    memset(&r, 0, sizeof r);
    mx_status_t st = mx_coord_router_logits(rw, x, n_tokens, pipe->hidden, logits);
    if (st == MX_OK) {
        if (pipe->router->kind == MX_ROUTER_EXPERT_CHOICE)
            st = mx_coord_route_expert_choice(pipe->router, logits, n_tokens, E, 0, n_tokens, &r);
        else
            st = mx_coord_route_router(pipe->router, rw, logits, n_tokens, &r);
    }
    free(logits);
    if (st == MX_OK)
        st = mx_pipeline_ref_run_routed(pipe->ops, pipe->packed, &r, x, pipe->hidden, pipe->n_threads, out_p);
    if (st == MX_OK && routing_p)
        *routing_p = r;
    else
        mx_routing_fini(&r);
    return st;
}
