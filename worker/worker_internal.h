/* mxep worker/: internals of mxworker shared between its files (wk_ prefix,
 * file-local beyond this header). The executable is a thin main() over these. */
#ifndef MXEP_WORKER_INTERNAL_H
#define MXEP_WORKER_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <mpi.h>

#include "mxep/checkpoint.h"
#include "mxep/coordinator.h"
#include "mxep/kernels.h"
#include "mxep/moe.h"
#include "mxep/status.h"
#include "mxep/topology.h"
#include "mxep/transport.h"

typedef enum { WK_CMD_BENCH = 0, WK_CMD_RUN = 1, WK_CMD_INFO = 2, WK_CMD_SERVE = 3 } wk_cmd_t;

/* --transport: which mx_transport moves the layer's bytes. BOTH (bench and info
 * only): the layers run over MPI, and the UCX transport is created beside it so
 * the bench times both on the same bytes. */
typedef enum { WK_TRANSPORT_MPI = 0, WK_TRANSPORT_UCX = 1, WK_TRANSPORT_BOTH = 2 } wk_transport_t;

/* What this mxworker was built with (MXEP_WORKER_UCX / MXEP_WORKER_SERVE come
 * from worker/CMakeLists.txt when MXEP_HAVE_UCX / MXEP_HAVE_NANOMSG). */
#ifdef MXEP_WORKER_UCX
#define WK_HAVE_UCX 1
#else
#define WK_HAVE_UCX 0
#endif
#ifdef MXEP_WORKER_SERVE
#define WK_HAVE_SERVE 1
#else
#define WK_HAVE_SERVE 0
#endif

/* bench --baseline: how plain MPI_Alltoallv is timed beside our exchange. */
typedef enum {
    WK_BASELINE_ALONE = 0, /* alone on the last layer's byte counts, after a barrier */
    WK_BASELINE_LAYER = 1  /* also inside the layers: every iteration runs them over both */
} wk_baseline_t;

/* Router selection: a model router kind, or the bench-only uniform routing. */
#define WK_ROUTER_MODEL (-1)   /* the model's own router */
#define WK_ROUTER_UNIFORM (-2) /* bench only: top-k experts drawn uniformly per token, weights 1/k */

typedef struct {
    wk_cmd_t cmd;
    const char *model_dir; /* NULL = built-in synthetic model */
    const char *preset;    /* synthetic preset (default gpt-oss-20b) */
    int preset_set;        /* --preset given (it does not combine with --model) */
    int layers;            /* layers to run (bench), from layer `layer` */
    int layer;             /* first layer */
    long tokens;           /* per rank (-1 = unset) */
    long tokens_total;     /* whole job (-1 = unset) */
    int iters, warmup;
    const char *backend;   /* NULL = oracle */
    const char *placement; /* file, "contiguous", "replicated" */
    int router;            /* WK_ROUTER_* or mx_router_kind_t */
    mx_dispatch_dtype_t dtype;
    mx_combine_mode_t combine;
    mx_exchange_mode_t exchange;
    const char *json;
    int check;
    uint64_t seed;
    int threads;                /* 0 = cores / ranks on the host */
    int experts;                /* synthetic models: fewer experts than the preset (0 = preset's) */
    const char *input, *output; /* run */
    int quiet;
    int timeout; /* seconds; 0 = none. Past it the job is aborted (last resort against a hang) */
    wk_transport_t transport;
    const char *listen;     /* serve: nanomsg address rank 0 binds */
    long max_tokens;        /* serve: tokens per request (0 = the front door's default, 4096) */
    wk_baseline_t baseline; /* bench */
} wk_opts_t;

/* Parses argv into *o (defaults first). Returns 0 ok, 1 help printed (exit 0),
 * 2 error (message in msg). Local; no MPI. */
int wk_opts_parse(int argc, char **argv, wk_opts_t *o, char *msg, size_t msg_len, int print_help);

/* ---------------------------------------------------------------- the job */
typedef struct {
    int layer;
    mx_router_weights_t rw;
    mx_backend_packed_t *packed; /* this rank's experts (NULL when it holds none) */
} wk_layer_t;

/* Where one exchange of a layer step spent its time (see mx_transport_stats_t):
 * the rank's own pass over the bytes (dispatch: packing the tokens, straight
 * into the receivers' regions on the zero-copy path; combine: reducing the
 * replies, read in place there), counts (dispatch only), waiting for the local
 * peers to arrive, the transport's copying, cross-host (or, in alltoallv mode,
 * every) messages, waiting for the local peers to finish, and the error
 * agreement (MPI_Allreduce) after it. */
typedef struct {
    double own_ms, counts_ms, arrive_ms, copy_ms, remote_ms, depart_ms, agree_ms;
} wk_xchg_split_t;

typedef struct {
    double route_ms, dispatch_ms, compute_ms, sync_ms, combine_ms, total_ms;
    wk_xchg_split_t disp, comb;           /* dispatch_ms and combine_ms, split */
    size_t dispatch_bytes, combine_bytes; /* sent by this rank */
    size_t tokens_in, assign_in;          /* received by this rank (worker side) */
} wk_step_stats_t;

typedef struct {
    MPI_Comm comm;
    int rank, size;
    const wk_opts_t *o;
    mx_model_config_t cfg;
    mx_ckpt_h ckpt;
    mx_router_desc_t router;
    int uniform;
    mx_placement_t place;
    const int *my_experts;
    int n_my;
    mx_topo_proc_t me;
    mx_oracle_choice_t choice;
    char report[MX_TOPO_REPORT_MAX];
    mx_transport_h tr;     /* the layers' transport */
    mx_transport_h tr2;    /* --transport both: UCX beside MPI (bench timings only), else NULL */
    mx_transport_h tr_a2a; /* bench: plain MPI_Alltoallv (MPI transport in alltoallv mode), the baseline */
    /* host memory the backend page-locked (its host_register: the tokens of
     * job->batch, the transports' regions its outputs go to), through pin_hooks */
    mx_host_hooks_t pin_hooks;
    void *pinned[16];
    int n_pinned;
    int n_threads;
    int n_layers;
    wk_layer_t *layers;
    /* scratch, grown on demand */
    float *logits, *logits_all;
    size_t logits_cap, logits_all_cap;
    void *ws;
    size_t ws_cap;
    size_t *b1, *b2, *b3, *b4;     /* [size] byte counts / displacements */
    uint8_t **dst;                 /* [size] where a push round's message to each rank goes */
    const uint8_t **src;           /* [size] where a pull round's reply from each rank lies */
    size_t *last_disp, *last_comb; /* [size] bytes sent to each rank by the last step (bench baselines) */
    mx_recv_batch_t batch;         /* the worker side's received batch, reused by every layer step */
    mx_dispatch_plan_t plan;       /* the owner side's dispatch plan, likewise */
} wk_job_t;

/* Collective. Agrees on a local status: returns MX_OK on every rank when all
 * succeeded; otherwise every rank returns the first failing rank's status and
 * rank 0 prints "mxworker: rank R failed while PHASE: detail". */
mx_status_t wk_agree(MPI_Comm comm, mx_status_t st, const char *phase);
/* Host threads a rank on a device (GPU) takes where the host's ranks share its CPUs. */
#define WK_DEVICE_RANK_THREADS 2
/* Threads of a rank on a host of host_cpus CPUs shared by n_dev ranks on devices and n_cpu
 * ranks on the CPUs (on_device: this rank is one of the former): the even share (at least 1)
 * unless both kinds are there; then a device rank takes WK_DEVICE_RANK_THREADS (or the share,
 * if smaller) and the CPU ranks split the rest, never below the share. */
int wk_host_threads(int host_cpus, int n_dev, int n_cpu, int on_device);

/* Collective: options + model, consistency check, placement, oracle, transport,
 * experts (load_experts = 0: no experts, for info). On failure everything is
 * released and the error already agreed. */
mx_status_t wk_job_open(MPI_Comm comm, const wk_opts_t *o, int load_experts, wk_job_t *job);
void wk_job_close(wk_job_t *job);

/* Token split: rank r owns [first, first + count) of n_total. */
void wk_split(size_t n_total, int size, int rank, size_t *first_p, size_t *count_p);

/* Deterministic bench input: BF16 [count x H] for global tokens first.. */
void wk_fill_tokens(uint64_t seed, size_t first, size_t count, size_t hidden, uint16_t *x);

/* Collective: one MoE layer for this rank's tokens x [n x H] -> out [n x H],
 * its bytes moved by tr (NULL = job->tr; every rank must pass the same kind).
 * routing_p (may be NULL) receives the routing (caller finis). */
mx_status_t wk_layer_step(wk_job_t *job, mx_transport_h tr, int li, const uint16_t *x, size_t n, size_t first,
                          size_t t_global, uint16_t *out, mx_routing_t *routing_p, wk_step_stats_t *stats);

/* Collective: gathers the global batch and outputs to rank 0, which runs the
 * single-process reference pipeline with the same backend and compares
 * (bitwise for exact + bf16 dispatch, tolerance otherwise). Agreed result;
 * *summary (rank 0) gets one line. */
mx_status_t wk_check_layer(wk_job_t *job, int li, const uint16_t *x, size_t n, size_t first, size_t t_global,
                           const uint16_t *out, const mx_routing_t *routing, char *summary, size_t summary_len);

/* ---------------------------------------------------------------- safetensors I/O (run) */
typedef struct {
    size_t rows, cols;
    uint16_t *bf16; /* [rows x cols], malloc'd */
} wk_hidden_t;
mx_status_t wk_st_read_hidden(const char *path, wk_hidden_t *h_p);
/* Writes hidden_states (BF16), topk_ids (I32) and topk_weights (F32) to path
 * through a temporary file + rename. */
mx_status_t wk_st_write_output(const char *path, const uint16_t *hidden, size_t rows, size_t cols,
                               const int32_t *topk_ids, const float *topk_weights, size_t k);
/* The end of a write through a temporary file: closes f (tmp, its writes all
 * went well when ok; call it right after them, errno still theirs) and renames
 * tmp to path. 0 when path holds the file; else tmp is removed and the result
 * is the errno of the first call that failed. */
int wk_file_commit(FILE *f, int ok, const char *tmp, const char *path);

/* ---------------------------------------------------------------- subcommands (collective) */
int wk_cmd_bench(wk_job_t *job);
int wk_cmd_run(wk_job_t *job);
int wk_cmd_info(MPI_Comm comm, const wk_opts_t *o);
/* Rank 0 serves --listen (mx_serve_mpi_run), every rank computes; returns after
 * SIGTERM/SIGINT with 0 (drained) or 1. */
int wk_cmd_serve(wk_job_t *job);

/* The --transport value as written: "mpi", "ucx" or "both". */
const char *wk_transport_name(wk_transport_t t);

/* bf16 helpers */
static inline float wk_bf16_f32(uint16_t h)
{
    union {
        uint32_t u;
        float f;
    } v = {(uint32_t)h << 16};
    return v.f;
}
static inline uint16_t wk_f32_bf16(float f)
{
    union {
        float f;
        uint32_t u;
    } v = {f};
    uint32_t u = v.u;
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
double wk_now_ms(void);

#endif
