/* Test helper: R ranks simulated in one process. Each rank routes its slice
 * of the global batch, plans, packs; an in-memory "alltoallv" moves the
 * messages; each destination unpacks, runs a deterministic fake expert (or a
 * real backend through run_fn), replies; owners combine. No MPI. */
#ifndef MXEP_TEST_COORD_SIM_H
#define MXEP_TEST_COORD_SIM_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mxep/coordinator.h"

static uint64_t sim_rng;
static inline void sim_seed(uint64_t s)
{
    sim_rng = s * 0x9e3779b97f4a7c15ull + 7;
    printf("# seed %llu\n", (unsigned long long)s);
}
static inline double sim_unit(void)
{
    sim_rng ^= sim_rng << 13;
    sim_rng ^= sim_rng >> 7;
    sim_rng ^= sim_rng << 17;
    return (double)(sim_rng >> 11) / 9007199254740992.0;
}
static inline uint16_t sim_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
static inline float sim_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* The fake expert: depends only on the token's values and the global expert. */
static inline void sim_expert(const uint16_t *x, int e, size_t H, uint16_t *out)
{
    for (size_t h = 0; h < H; h++)
        out[h] = sim_bf16(sim_f32(x[h]) * (0.5f + 0.1f * (float)e) + 0.01f * (float)(e - (int)(h % 7)));
}

/* Runs the experts of `rank` on a received batch: real backend when ops != NULL. */
typedef struct {
    const mx_backend_ops_t *ops;
    mx_backend_packed_t **packed; /* per rank, NULL entries for ranks with no expert */
} sim_backend_t;

static inline int sim_run(const sim_backend_t *be, const mx_placement_t *pl, int rank, const mx_recv_batch_t *b,
                          mx_combine_mode_t mode, uint16_t *out_bf16, float *out_f32)
{
    const size_t H = b->hidden;
    int nloc;
    const int *glob = mx_coord_placement_rank_experts(pl, rank, &nloc);
    if (mode == MX_COMBINE_REDUCE)
        memset(out_f32, 0, b->n_tokens * H * sizeof(float));
    if (b->n_assign == 0)
        return 0;
    if (be && be->ops) {
        mx_run_args_t args;
        mx_coord_recv_run_args(b, mode, out_bf16, out_f32, 1, &args);
        size_t ws_n = be->ops->workspace_size ? be->ops->workspace_size(be->packed[rank], b->n_tokens, b->n_assign) : 0;
        void *ws = ws_n ? malloc(ws_n) : NULL;
        mx_status_t st = be->ops->run(be->packed[rank], &args, ws);
        free(ws);
        return st == MX_OK ? 0 : -1;
    }
    uint16_t *row = malloc(H * sizeof(uint16_t));
    for (size_t a = 0; a < b->n_assign; a++) {
        int e = glob[b->expert[a]];
        const uint16_t *x = b->x + (size_t)b->tok[a] * H;
        if (mode == MX_COMBINE_EXACT) {
            sim_expert(x, e, H, out_bf16 + a * H);
        } else { /* WEIGHTED_SUM: assignments of a token come in ascending local expert order */
            sim_expert(x, e, H, row);
            for (size_t h = 0; h < H; h++)
                out_f32[(size_t)b->tok[a] * H + h] += b->weight[a] * sim_f32(row[h]);
        }
    }
    free(row);
    return 0;
}

/* One layer over R ranks. cuts[R+1]: token ranges. routings[r]: rank r's
 * routing (local rows). Writes out [T_global x H]. Returns 0 or -1 (status in
 * the error detail). */
static inline int sim_layer(int R, const size_t *cuts, const mx_routing_t *routings, const mx_placement_t *pl,
                            const uint16_t *x, size_t H, mx_dispatch_dtype_t dtype, mx_combine_mode_t mode,
                            const sim_backend_t *be, uint16_t *out)
{
    int rc = -1;
    mx_dispatch_plan_t *plans = calloc((size_t)R, sizeof *plans);
    size_t *sbytes = calloc((size_t)R * (size_t)R, sizeof(size_t)); /* [src][dst] */
    size_t *sdispl = calloc((size_t)R * (size_t)R, sizeof(size_t));
    uint8_t **sbuf = calloc((size_t)R, sizeof *sbuf);
    mx_recv_batch_t *batches = calloc((size_t)R, sizeof *batches);
    uint16_t **obf = calloc((size_t)R, sizeof *obf);
    float **of32 = calloc((size_t)R, sizeof *of32);
    size_t *rbytes = calloc((size_t)R * (size_t)R, sizeof(size_t)); /* reply [worker][owner] */
    size_t *rdispl = calloc((size_t)R * (size_t)R, sizeof(size_t));
    for (int s = 0; s < R; s++) {
        if (mx_coord_plan_build(&routings[s], pl, s, cuts[s], &plans[s]) != MX_OK)
            goto done;
        mx_coord_dispatch_sizes(&plans[s], dtype, H, sbytes + (size_t)s * R);
        size_t tot = 0;
        for (int d = 0; d < R; d++) {
            sdispl[(size_t)s * R + d] = tot;
            tot += sbytes[(size_t)s * R + d];
        }
        sbuf[s] = malloc(tot ? tot : 1);
        memset(sbuf[s], 0xCD, tot ? tot : 1); /* poison: pack must write every byte it sends */
        if (mx_coord_dispatch_pack(&plans[s], x + cuts[s] * H, H, dtype, sbuf[s], sdispl + (size_t)s * R) != MX_OK)
            goto done;
    }
    for (int d = 0; d < R; d++) {
        size_t tot = 0, bytes[64], displs[64];
        for (int s = 0; s < R; s++) {
            bytes[s] = sbytes[(size_t)s * R + d];
            displs[s] = tot;
            tot += bytes[s];
        }
        uint8_t *rbuf = malloc(tot ? tot : 1);
        for (int s = 0; s < R; s++)
            memcpy(rbuf + displs[s], sbuf[s] + sdispl[(size_t)s * R + d], bytes[s]);
        int nloc;
        mx_coord_placement_rank_experts(pl, d, &nloc);
        mx_status_t st = mx_coord_recv_unpack(rbuf, bytes, displs, R, H, nloc, &batches[d]);
        free(rbuf);
        if (st != MX_OK)
            goto done;
        obf[d] = malloc((batches[d].n_assign ? batches[d].n_assign : 1) * H * sizeof(uint16_t));
        of32[d] = malloc((batches[d].n_tokens ? batches[d].n_tokens : 1) * H * sizeof(float));
        memset(obf[d], 0xEE, (batches[d].n_assign ? batches[d].n_assign : 1) * H * sizeof(uint16_t));
        if (sim_run(be, pl, d, &batches[d], mode, obf[d], of32[d]) != 0)
            goto done;
        mx_coord_reply_sizes(&batches[d], mode, rbytes + (size_t)d * R, rdispl + (size_t)d * R);
    }
    for (int s = 0; s < R; s++) {
        size_t want[64], tot = 0, displs[64];
        mx_coord_combine_sizes(&plans[s], mode, H, want);
        for (int d = 0; d < R; d++) {
            if (want[d] != rbytes[(size_t)d * R + s]) {
                fprintf(stderr, "reply %d->%d: %zu bytes, owner expects %zu\n", d, s, rbytes[(size_t)d * R + s],
                        want[d]);
                goto done;
            }
            displs[d] = tot;
            tot += want[d];
        }
        uint8_t *buf = malloc(tot ? tot : 1);
        for (int d = 0; d < R; d++) {
            const uint8_t *src = mode == MX_COMBINE_EXACT ? (const uint8_t *)obf[d] : (const uint8_t *)of32[d];
            memcpy(buf + displs[d], src + rdispl[(size_t)d * R + s], want[d]);
        }
        mx_status_t st = mx_coord_combine(&plans[s], mode, buf, displs, H, out + cuts[s] * H);
        free(buf);
        if (st != MX_OK)
            goto done;
    }
    rc = 0;
done:
    if (rc)
        fprintf(stderr, "sim_layer: %s\n", mx_error_detail());
    for (int r = 0; r < R; r++) {
        mx_dispatch_plan_fini(&plans[r]);
        mx_recv_batch_fini(&batches[r]);
        free(sbuf[r]);
        free(obf[r]);
        free(of32[r]);
    }
    free(plans);
    free(sbytes);
    free(sdispl);
    free(sbuf);
    free(batches);
    free(obf);
    free(of32);
    free(rbytes);
    free(rdispl);
    return rc;
}

/* Routes every rank's slice with a top-k router (per token, so any split
 * equals the whole batch) or expert choice (global logits). */
static inline int sim_route(int R, const size_t *cuts, const mx_router_desc_t *d, const float *logits, int E,
                            mx_routing_t *routings)
{
    for (int r = 0; r < R; r++) {
        mx_status_t st;
        if (d->kind == MX_ROUTER_EXPERT_CHOICE)
            st = mx_coord_route_expert_choice(d, logits, cuts[R], E, cuts[r], cuts[r + 1] - cuts[r], &routings[r]);
        else
            st = mx_coord_route(d, logits + cuts[r] * (size_t)E, NULL, cuts[r + 1] - cuts[r], E, &routings[r]);
        if (st != MX_OK) {
            fprintf(stderr, "sim_route: %s\n", mx_error_detail());
            return -1;
        }
    }
    return 0;
}

/* Even-ish random cuts of T tokens over R ranks (some ranks may get 0). */
static inline void sim_cuts(int R, size_t T, size_t *cuts)
{
    cuts[0] = 0;
    cuts[R] = T;
    for (int r = 1; r < R; r++) {
        size_t c = (size_t)(sim_unit() * (double)(T + 1));
        cuts[r] = c;
    }
    for (int i = 1; i < R; i++) /* sort */
        for (int j = i; j > 0 && cuts[j] < cuts[j - 1]; j--) {
            size_t t = cuts[j];
            cuts[j] = cuts[j - 1];
            cuts[j - 1] = t;
        }
}

#endif
