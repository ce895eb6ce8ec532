/* mxep coordinator/: routing, placement, dispatch plan, wire packing, combine,
 * and the single-process reference pipeline. No MPI in here: the worker moves
 * the bytes (transport/) and calls these functions on both sides.
 *
 * One MoE layer on one rank (ARCHITECTURE.md, data flow):
 *
 *   owner side (my tokens)                       worker side (my experts)
 *   ----------------------                       ------------------------
 *   mx_coord_router_logits  x -> logits [T x E]
 *   (expert choice: the worker allgathers the logits of all ranks first)
 *   mx_coord_route / mx_coord_route_expert_choice -> mx_routing_t
 *   mx_coord_plan_build     -> mx_dispatch_plan_t
 *   mx_coord_dispatch_sizes -> bytes to each rank (MPI_Alltoall of these)
 *   mx_coord_dispatch_pack  -> one message per rank  == MPI_Alltoallv ==>
 *                                                mx_coord_recv_unpack -> mx_recv_batch_t
 *                                                mx_coord_recv_run_args -> backend run()
 *                                                mx_coord_reply_sizes (rows already in place)
 *                      <== MPI_Alltoallv == the run() output buffer
 *   mx_coord_combine        -> output [T x H] BF16
 *
 * Determinism: with MX_COMBINE_EXACT every (token, expert) output row is BF16
 * as the backend produced it, and the owner sums weight * row in FP32 in
 * ascending GLOBAL expert order, then rounds once to BF16 (RNE). The reference
 * pipeline (mx_pipeline_ref_run) uses the very same summation code, so results
 * are bitwise equal whatever the rank count or placement (same backend).
 *
 * Conventions (STYLE.md): outputs end in _p and are written only on success;
 * structs that the library fills with allocated arrays are released with their
 * _fini (safe on a zeroed struct, and twice); on failure nothing needs freeing.
 * Token indices in a routing are LOCAL rows (0..n_tokens-1) unless said
 * otherwise; expert ids in a routing are GLOBAL (0..E-1). */
#ifndef MXEP_COORDINATOR_H
#define MXEP_COORDINATOR_H

#include <stddef.h>
#include <stdint.h>

#include "mxep/checkpoint.h"
#include "mxep/hostmem.h"
#include "mxep/kernels.h"
#include "mxep/moe.h"
#include "mxep/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ================================================================ routers */

/* logits[t][e] = bias[e] + sum_h W[e][h] * x[t][h], FP32, the sum taken in
 * ascending h order with one accumulator starting at 0, the bias added last
 * (batch-invariant: a token's logits do not depend on the other tokens).
 * x: BF16 [n_tokens x hidden]; router->hidden must equal `hidden`.
 * logits_p: [n_tokens x n_experts]. n_tokens may be 0. */
mx_status_t mx_coord_router_logits(const mx_router_weights_t *router, const uint16_t *x, size_t n_tokens, size_t hidden,
                                   float *logits_p);

/* The result of routing a rank's tokens. Assignments are sorted by (token
 * ascending, expert ascending). For top-k routers every token has exactly
 * top_k assignments and topk_ids/topk_weights hold them in rank order
 * (highest score first, ties to the lower expert index); for expert choice
 * top_k = 0 and topk_ids/topk_weights are NULL (a token has 0..E experts). */
typedef struct {
    size_t n_tokens;
    int n_experts;
    int top_k;
    size_t n_assign;
    int32_t *tok;        /* [n_assign] local token row */
    int32_t *expert;     /* [n_assign] global expert id */
    float *weight;       /* [n_assign] routing weight */
    int32_t *topk_ids;   /* [n_tokens x top_k] or NULL */
    float *topk_weights; /* [n_tokens x top_k] or NULL */
} mx_routing_t;

void mx_routing_fini(mx_routing_t *routing);

/* Top-k routers (desc->kind TOPK_SOFTMAX, SOFTMAX_TOPK, SIGMOID_GROUPED) on the
 * logits of n_tokens tokens [n_tokens x n_experts].
 *  - TOPK_SOFTMAX (gpt-oss): top-k of the raw logits (ties: lower expert),
 *    weights = softmax over those k logits.
 *  - SOFTMAX_TOPK: p = softmax over all E, top-k of p (ties: lower expert),
 *    w = p_k, divided by sum(p_k) when desc->renormalize.
 *  - SIGMOID_GROUPED (DeepSeek-V3): s = sigmoid(logit), s' = s + correction_bias
 *    (NULL = 0). With n_group > 1: E % n_group == 0, group score = sum of the
 *    top-2 s' of the group (the top-1 if a group has one expert), keep the
 *    topk_group best groups (ties: lower group), the others' s' become -inf as
 *    in DeepSeek's reference (so an expert of a kept group always beats a masked
 *    one, even with s' < 0). Top-k by s' (ties: lower expert); weights =
 *    s_k / sum(s_k) * scaling_factor (s without the bias). The group score is
 *    the top-2 sum also when correction_bias is NULL (DeepSeek's reference
 *    uses the group max in that case; V3 checkpoints always carry the bias).
 * Softmax: max subtracted, expf, FP32; the softmax over all E sums in
 * ascending expert order, sums over the k chosen ones in rank order.
 * Errors (MX_ERR_INVALID naming the field): top_k < 1 or > E (or > the
 * experts of the kept groups), bad groups, EXPERT_CHOICE (use the function
 * below), NaN logits. */
mx_status_t mx_coord_route(const mx_router_desc_t *desc, const float *logits, const float *correction_bias,
                           size_t n_tokens, int n_experts, mx_routing_t *routing_p);

/* Top-k routing with the per-expert vector taken from the router weights:
 * SIGMOID_GROUPED gets router->correction_bias, GEMMA4 router->per_expert_scale,
 * the others none; n_experts = router->n_experts. Otherwise as mx_coord_route.
 *  - GEMMA4 (Gemma 4, FORMATS.md Part 2 section 6): p = softmax over all E,
 *    top-k of the logits (ties: lower expert), w = p_k / sum(p_k) x
 *    per_expert_scale[e] (NULL = ones). mx_coord_route takes per_expert_scale
 *    in its `correction_bias` argument for this kind.
 * The Gemma 4 input normalization happens in mx_coord_router_logits when
 * router->scale is not NULL: per token, RMSNorm without weight (epsilon
 * router->rms_eps), x scale[h] x H^-0.5, rounded to BF16, then the logits as
 * above (coordinator/route.c gives the exact arithmetic and its sources). */
mx_status_t mx_coord_route_router(const mx_router_desc_t *desc, const mx_router_weights_t *router, const float *logits,
                                  size_t n_tokens, mx_routing_t *routing_p);

/* Expert choice, global over the job's batch: scores = softmax over experts of
 * each token's logits; every expert takes its top-C tokens of the WHOLE batch
 * (ties: lower global token index), C = ceil(capacity_factor * T_global * k / E)
 * with k = desc->top_k (>= 1) and the capacity factor taken to 6 decimals
 * (integer arithmetic, so 1.1 * 100 gives 110, not 111), clamped to
 * [0, T_global]. Weight of (t, e) = its score (no renormalization).
 * logits_global: [t_global x n_experts] (every rank's logits in global token
 * order; the worker gathers them). Returns the assignments of the local tokens
 * [token_offset, token_offset + n_local) with LOCAL token rows.
 * Every rank computes the same global selection, so the split is consistent. */
mx_status_t mx_coord_route_expert_choice(const mx_router_desc_t *desc, const float *logits_global, size_t t_global,
                                         int n_experts, size_t token_offset, size_t n_local, mx_routing_t *routing_p);

/* Capacity C as above (for sizing and reports). */
size_t mx_coord_expert_capacity(float capacity_factor, size_t t_global, int top_k, int n_experts);

/* ================================================================ placement */

/* Which ranks hold which experts. An expert may have several replicas (ranks).
 * Local expert index of expert e on rank r = position of e among rank r's
 * experts in ascending global id (mx_coord_placement_rank_experts). */
typedef struct {
    int n_experts;
    int n_ranks;
    int *replica_off;  /* [n_experts + 1]: ranks of expert e = replica_rank[replica_off[e] .. replica_off[e+1]) */
    int *replica_rank; /* ascending per expert */
    int *rank_off;     /* [n_ranks + 1]: experts of rank r = rank_expert[rank_off[r] .. rank_off[r+1]) */
    int *rank_expert;  /* ascending per rank */
} mx_placement_t;

/* Contiguous: E experts over R ranks as even as possible, the first E % R ranks
 * get one more (rank r holds [r*q + min(r, E%R), ...)). R > E is refused with
 * MX_ERR_INVALID ("8 ranks but only 4 experts: ... use a placement file with
 * replicas, or mx_coord_placement_replicated"). */
mx_status_t mx_coord_placement_contiguous(int n_experts, int n_ranks, mx_placement_t *placement_p);

/* Replicated round robin, for R >= E: rank r holds expert r % E, so every
 * expert has floor(R/E) or ceil(R/E) replicas. For R < E it equals contiguous. */
mx_status_t mx_coord_placement_replicated(int n_experts, int n_ranks, mx_placement_t *placement_p);

/* From JSON text (cJSON). Accepted forms:
 *   {"experts": [[0,1], [2], 3, ...]}             index = expert id; a rank or a list of ranks
 *   {"experts": {"0": [0,1], "1": 2, ...}}         keys = expert ids
 * Optional "n_experts" / "n_ranks" members must match the arguments.
 * Validation (MX_ERR_FORMAT, the detail names the expert / rank / key and
 * what was expected): every expert 0..E-1 placed exactly once with >= 1 rank,
 * ranks integers in [0, R), no rank twice for one expert, no unknown expert
 * ids, no other top-level members. Ranks that hold no expert are allowed
 * (they only own tokens). `source` names the text in messages (file name). */
mx_status_t mx_coord_placement_parse(const char *json_text, const char *source, int n_experts, int n_ranks,
                                     mx_placement_t *placement_p);
/* Reads `path` and parses it (MX_ERR_IO naming the file if unreadable). */
mx_status_t mx_coord_placement_load(const char *path, int n_experts, int n_ranks, mx_placement_t *placement_p);

void mx_placement_fini(mx_placement_t *placement);

/* Experts held by `rank` (ascending); *count_p gets their number. */
const int *mx_coord_placement_rank_experts(const mx_placement_t *placement, int rank, int *count_p);
/* Local index of `expert` on `rank`, or -1 when the rank does not hold it. */
int mx_coord_placement_local_index(const mx_placement_t *placement, int expert, int rank);
/* The replica that serves (global token, expert) for a token owned by
 * `token_rank`: the replica on token_rank if there is one, otherwise
 * replica[splitmix64(global_token) % n_replicas]. Deterministic. */
int mx_coord_placement_pick(const mx_placement_t *placement, int expert, int token_rank, uint64_t global_token);

/* JSON text of a placement in the array form above (malloc'd; free()). */
mx_status_t mx_coord_placement_json(const mx_placement_t *placement, char **json_p);

/* ================================================================ dispatch */

typedef enum {
    MX_DISPATCH_BF16 = 0, /* rows travel as BF16 (exact) */
    MX_DISPATCH_FP8 = 1   /* E4M3FN + one FP32 scale per 128 columns (amax/448, floor 1/(448*512)),
                             decoded to BF16 on the receiving side (quant.h) */
} mx_dispatch_dtype_t;
const char *mx_dispatch_dtype_name(mx_dispatch_dtype_t dtype); /* "bf16", "fp8" */
mx_status_t mx_dispatch_dtype_parse(const char *text, mx_dispatch_dtype_t *dtype_p);

typedef enum {
    MX_COMBINE_EXACT = 0, /* one BF16 row per (token, expert) comes back; owner sums in global expert order */
    MX_COMBINE_REDUCE = 1 /* one FP32 row per (token, rank): the worker's WEIGHTED_SUM; owner sums in rank order.
                             Invariant only for a fixed placement. */
} mx_combine_mode_t;
const char *mx_combine_mode_name(mx_combine_mode_t mode); /* "exact", "reduce" */
mx_status_t mx_combine_mode_parse(const char *text, mx_combine_mode_t *mode_p);

/* Wire layout of the message to one destination rank (little endian, all
 * offsets from the start of the message; a rank that gets no token gets a
 * message of 0 bytes, no header):
 *
 *   mx_wire_header_t                                   32 bytes
 *   uint32_t n_experts_of_token[n_tokens]              entries per token copy
 *   mx_wire_entry_t entries[n_entries]                 grouped by token, local expert ascending
 *   zero padding to a multiple of 16
 *   rows[n_tokens], each row_bytes (multiple of 16):
 *     BF16: uint16 x[hidden], zero padding
 *     FP8:  float scale[ceil(hidden/128)], uint8 q[hidden], zero padding
 *
 * The reply (combine) carries no header: EXACT sends n_entries BF16 rows of
 * hidden (2*hidden bytes each) in entry order; REDUCE sends n_tokens FP32 rows
 * (4*hidden bytes each) in token order. Both sides know the counts. */
#define MX_WIRE_MAGIC 0x3144584du /* "MXD1" */
typedef struct {
    uint32_t magic;
    uint32_t dtype; /* mx_dispatch_dtype_t */
    uint32_t hidden;
    uint32_t n_tokens;
    uint32_t n_entries;
    uint32_t row_bytes;
    uint32_t src_rank; /* sender */
    uint32_t reserved; /* 0 */
} mx_wire_header_t;
typedef struct {
    int32_t local_expert; /* on the destination rank */
    float weight;
} mx_wire_entry_t;

/* Bytes of one payload row. */
size_t mx_coord_wire_row_bytes(mx_dispatch_dtype_t dtype, size_t hidden);

/* One copy of a token per destination rank. Copies are ordered by destination
 * rank, then local token ascending; entries of a copy by local expert ascending
 * (= global expert ascending). */
typedef struct {
    int n_ranks;
    int my_rank;
    size_t n_tokens; /* local tokens of the routing */
    size_t n_copies;
    size_t n_entries;            /* == routing n_assign */
    size_t *rank_copy_off;       /* [n_ranks + 1] copies to rank r: [rank_copy_off[r], rank_copy_off[r+1]) */
    size_t *rank_entry_off;      /* [n_ranks + 1] entries to rank r (same order) */
    int32_t *copy_token;         /* [n_copies] local token row */
    size_t *copy_entry_off;      /* [n_copies + 1] */
    int32_t *copy_first;         /* [n_copies] the first copy of the same token (== c for the first) */
    int32_t *entry_assign;       /* [n_entries] index into the routing's assignments */
    int32_t *entry_local_expert; /* [n_entries] */
    int32_t *entry_expert;       /* [n_entries] global expert */
    float *entry_weight;         /* [n_entries] */
    int32_t *entry_rank;         /* [n_entries] destination rank */
    /* for combine: per local token, its entries sorted by global expert */
    size_t *token_entry_off; /* [n_tokens + 1] */
    int32_t *token_entry;    /* [n_entries] plan entry indices */
    void *work;              /* internal: the builder's scratch, kept for mx_coord_plan_build_into */
} mx_dispatch_plan_t;

/* Builds the plan of this rank's routing. global_token_offset = global index of
 * local token 0 (used for the replica choice). n_ranks comes from the
 * placement. MX_ERR_INVALID if my_rank is out of range, the routing's expert
 * count differs from the placement's, or an assignment names a bad expert or
 * token. */
mx_status_t mx_coord_plan_build(const mx_routing_t *routing, const mx_placement_t *placement, int my_rank,
                                uint64_t global_token_offset, mx_dispatch_plan_t *plan_p);
/* The same plan, into one the caller keeps from layer to layer: its arrays are
 * reused while they are big enough (grown otherwise), so a steady run
 * allocates nothing here. plan_io: a zeroed plan or one filled by either
 * function; release it with mx_dispatch_plan_fini. On failure its contents are
 * unchanged. */
mx_status_t mx_coord_plan_build_into(const mx_routing_t *routing, const mx_placement_t *placement, int my_rank,
                                     uint64_t global_token_offset, mx_dispatch_plan_t *plan_io);
void mx_dispatch_plan_fini(mx_dispatch_plan_t *plan);

/* Bytes of the message to each rank: bytes_p[n_ranks]. Displacements are the
 * caller's (prefix sums are fine). */
void mx_coord_dispatch_sizes(const mx_dispatch_plan_t *plan, mx_dispatch_dtype_t dtype, size_t hidden, size_t *bytes_p);

/* Packs every non-empty message: rank r's at (uint8_t *)send + displs[r], with
 * the size mx_coord_dispatch_sizes gave. x: BF16 [n_tokens x hidden]. */
mx_status_t mx_coord_dispatch_pack(const mx_dispatch_plan_t *plan, const uint16_t *x, size_t hidden,
                                   mx_dispatch_dtype_t dtype, void *send, const size_t *displs);
/* The same bytes, rank r's message at dst[r] (dst[n_ranks]; NULL allowed where
 * the message is empty): for writing each message where its receiver reads it
 * (mx_transport_push_begin). */
mx_status_t mx_coord_dispatch_pack_to(const mx_dispatch_plan_t *plan, const uint16_t *x, size_t hidden,
                                      mx_dispatch_dtype_t dtype, uint8_t *const *dst);

/* ================================================================ worker side */

/* Everything this rank received, decoded: tokens concatenated by source rank
 * (ascending), assignments likewise, each source's entries in message order. */
typedef struct {
    int n_ranks;
    size_t hidden;
    size_t n_tokens;
    size_t n_assign;
    uint16_t *x;            /* [n_tokens x hidden] BF16 (FP8 decoded: q * scale rounded to BF16) */
    int32_t *tok;           /* [n_assign] row in x */
    int32_t *expert;        /* [n_assign] local expert */
    float *weight;          /* [n_assign] */
    size_t *src_token_off;  /* [n_ranks + 1] rows of x from source s */
    size_t *src_assign_off; /* [n_ranks + 1] assignments from source s */
    /* Optional, set by the caller before the first unpack and kept: told when x
     * is allocated and before it is freed (mxep/hostmem.h) */
    const mx_host_hooks_t *x_hooks;
} mx_recv_batch_t;

/* Parses and decodes the messages received from every rank (source s's at
 * recv + displs[s], bytes[s] long; 0 = nothing). Checks magic, dtype, hidden,
 * sizes, counts and that every local expert is < n_local_experts:
 * MX_ERR_FORMAT naming the source rank and the field otherwise. */
mx_status_t mx_coord_recv_unpack(const void *recv, const size_t *bytes, const size_t *displs, int n_ranks,
                                 size_t hidden, int n_local_experts, mx_recv_batch_t *batch_p);
void mx_recv_batch_fini(mx_recv_batch_t *batch);
/* Same result as mx_coord_recv_unpack, into a batch the caller keeps from
 * layer to layer: its arrays are reused while they are big enough (grown
 * otherwise), so a steady run allocates nothing here. batch_io: a zeroed
 * batch, or one filled by either function; release it with
 * mx_recv_batch_fini. On failure it is left as it was. */
mx_status_t mx_coord_recv_unpack_into(const void *recv, const size_t *bytes, const size_t *displs, int n_ranks,
                                      size_t hidden, int n_local_experts, mx_recv_batch_t *batch_io);

/* Fills the backend's arguments for the received batch. EXACT -> mode
 * PER_ASSIGNMENT with out_bf16 [n_assign x hidden]; REDUCE -> WEIGHTED_SUM with
 * out_f32 [n_tokens x hidden] (which the caller zeroes before run()). The
 * output buffer IS the reply: the rows for source s are contiguous. */
void mx_coord_recv_run_args(const mx_recv_batch_t *batch, mx_combine_mode_t mode, uint16_t *out_bf16, float *out_f32,
                            int n_threads, mx_run_args_t *args_p);

/* Bytes and displacements (into the run() output buffer) of the reply to each
 * source rank: bytes_p[n_ranks], displs_p[n_ranks]. */
void mx_coord_reply_sizes(const mx_recv_batch_t *batch, mx_combine_mode_t mode, size_t *bytes_p, size_t *displs_p);

/* ================================================================ owner side: combine */

/* Bytes the owner receives back from each rank: bytes_p[n_ranks]
 * (EXACT: entries * 2 * hidden, REDUCE: copies * 4 * hidden). */
void mx_coord_combine_sizes(const mx_dispatch_plan_t *plan, mx_combine_mode_t mode, size_t hidden, size_t *bytes_p);

/* out_p[t] (BF16 [n_tokens x hidden]) from the replies (rank r's at
 * recv + displs[r], which must be 2-byte aligned for EXACT and 4-byte aligned
 * for REDUCE, else MX_ERR_INVALID). EXACT: sum over the token's entries in ascending global
 * expert order of weight * bf16 row, in FP32, from 0, rounded to BF16 once.
 * REDUCE: sum of the FP32 rows of the token's copies in ascending rank order.
 * A token with no expert gets zeros. */
mx_status_t mx_coord_combine(const mx_dispatch_plan_t *plan, mx_combine_mode_t mode, const void *recv,
                             const size_t *displs, size_t hidden, uint16_t *out_p);
/* The same result, rank r's reply at src[r] (src[n_ranks]; NULL allowed where
 * nothing comes back from r): for reading the replies where their senders
 * wrote them (mx_transport_pull_end). */
mx_status_t mx_coord_combine_from(const mx_dispatch_plan_t *plan, mx_combine_mode_t mode, const uint8_t *const *src,
                                  size_t hidden, uint16_t *out_p);

/* ================================================================ reference pipeline */

/* The layer in one process, no MPI: logits (mx_coord_router_logits), routing
 * (mx_coord_route, or expert choice with the batch as the global batch), the
 * backend run() with PER_ASSIGNMENT over ALL experts (packed holds every
 * expert, local index = global id), then the EXACT combine. x: BF16
 * [n_tokens x hidden]; out_p: BF16 [n_tokens x hidden]; routing_p (may be
 * NULL) receives the routing (caller finis it). The distributed EXACT path is
 * bitwise equal to this for the same backend. */
typedef struct {
    const mx_backend_ops_t *ops;
    const mx_backend_packed_t *packed; /* all n_experts experts */
    const mx_router_desc_t *router;
    const mx_router_weights_t *router_weights; /* n_experts, hidden */
    size_t hidden;
    int n_threads;
} mx_pipeline_ref_t;

mx_status_t mx_pipeline_ref_run(const mx_pipeline_ref_t *pipe, const uint16_t *x, size_t n_tokens, uint16_t *out_p,
                                mx_routing_t *routing_p);

/* Same, from a routing already made (e.g. the worker's global one): runs the
 * experts for every assignment and combines exactly. */
mx_status_t mx_pipeline_ref_run_routed(const mx_backend_ops_t *ops, const mx_backend_packed_t *packed,
                                       const mx_routing_t *routing, const uint16_t *x, size_t hidden, int n_threads,
                                       uint16_t *out_p);

/* The exact per-token sum both paths use: out[h] = bf16(sum_i w[i] * bf16 rows[i][h]),
 * i in the given order (callers pass ascending global expert). */
void mx_coord_combine_rows(const uint16_t *const *rows, const float *weights, int n, size_t hidden, uint16_t *out);

/* ================================================================ fast paths */

/* The router logits, dispatch packing (BF16 and FP8), unpacking and both
 * combines run vectorized (AVX2 where the CPU has it) and spread over OpenMP
 * threads; the results are bitwise those of the scalar code (a NaN that meets
 * another NaN in a sum may come out with either one's payload, as in any C
 * build of the scalar code). mx_coord_fast_paths_set(0)
 * makes every coordinator function run its scalar code instead (tests and
 * bench/coord_bench compare the two). Process-wide, not synchronized: set it
 * while no coordinator call is running. Returns the previous setting. */
int mx_coord_fast_paths_set(int on);

#ifdef __cplusplus
}
#endif
#endif
