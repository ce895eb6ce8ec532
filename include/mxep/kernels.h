/* mxep: expert backends (kernels/). Each backend is a constant mx_backend_ops_t
 * in one registry table; the oracle (mx_oracle_select) asks each to probe its
 * device, checks `supports`, and picks the highest priority. Kernels never see
 * MPI; they get the tokens a worker received and its local experts. */
#ifndef MXEP_KERNELS_H
#define MXEP_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "mxep/moe.h"
#include "mxep/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MX_REASON_MAX 256

/* What a probe found. */
typedef struct {
    char name[128];     /* "AMD EPYC 7B13 (avx2,fma)", "NVIDIA H100 80GB HBM3 (sm_90)" */
    char isa[64];       /* CPU: "avx512_bf16", "avx2", "scalar"; GPU: "sm_90a", "gfx90a" */
    int device_index;   /* GPU ordinal, -1 for CPU */
    int cores;          /* CPU threads this process may use, or SM / CU count */
    size_t memory;      /* bytes (device memory for a GPU, 0 if unknown) */
    unsigned flags;     /* backend-specific capability bits */
} mx_device_info_t;

/* How routing weights are used by run(). */
typedef enum {
    MX_OUT_PER_ASSIGNMENT = 0, /* out_bf16[a][H]: one BF16 row per assignment, weight NOT applied */
    MX_OUT_WEIGHTED_SUM = 1    /* out_f32[t][H] += weight * (BF16-rounded expert output), experts
                                  in ascending local-expert order; the caller zeroes out_f32 */
} mx_out_mode_t;

/* One batch for run(). Assignments are (token row, local expert, weight); they
 * may come in any order and an expert may have none. x is [n_tokens x H] BF16.
 * Tokens and assignments are only read. */
typedef struct {
    size_t n_tokens;
    const uint16_t *x;      /* [n_tokens x H] bf16 */
    size_t n_assign;
    const int32_t *tok;     /* [n_assign] token row in x */
    const int32_t *expert;  /* [n_assign] local expert index in [0, n_experts) */
    const float *weight;    /* [n_assign] routing weight (used by WEIGHTED_SUM) */
    mx_out_mode_t mode;
    uint16_t *out_bf16;     /* PER_ASSIGNMENT: [n_assign x H] */
    float *out_f32;         /* WEIGHTED_SUM: [n_tokens x H] */
    int n_threads;          /* 0 = backend default */
} mx_run_args_t;

typedef struct mx_backend_packed mx_backend_packed_t; /* backend-owned prepacked weights */

typedef struct mx_backend_ops {
    const char *name;  /* "ref", "cpu", "cuda", "hip", "ze" */
    int priority;      /* higher wins among those that support the problem; ref is 0 */

    /* Is my device here? MX_OK and *info_p filled, or MX_ERR_NO_DEVICE with a detail. */
    mx_status_t (*probe)(mx_device_info_t *info_p);

    /* Can I run this layer on this device? 1 = yes; 0 = no, with `reason` filled. */
    int (*supports)(const mx_device_info_t *dev, const mx_moe_desc_t *desc, char *reason, size_t reason_len);

    /* Canonical layout -> backend layout, once. The experts' views may be
     * released after prepack returns (the backend copies what it needs). */
    mx_status_t (*prepack)(const mx_device_info_t *dev, const mx_moe_desc_t *desc,
                           const mx_expert_weights_t *experts, int n_experts, mx_backend_packed_t **packed_p);
    void (*release)(mx_backend_packed_t *packed);

    /* Scratch bytes run() needs for up to max_tokens tokens and max_assign assignments
     * (caller-allocated, passed to run). May depend on the thread count at prepack time. */
    size_t (*workspace_size)(const mx_backend_packed_t *packed, size_t max_tokens, size_t max_assign);

    /* Runs the experts. Writes only the outputs of `args` (see mx_out_mode_t).
     * Returns only when every output is written (synchronous on every path). */
    mx_status_t (*run)(const mx_backend_packed_t *packed, const mx_run_args_t *args, void *workspace);

    /* Optional (NULL = nothing to reserve): allocate, once, whatever private
     * scratch run() will need for batches of up to max_tokens tokens and
     * max_assign assignments in either output mode (device memory for a GPU
     * backend), so that run() allocates nothing and running out of memory shows
     * at load time. A larger batch later still works (the scratch grows). */
    mx_status_t (*reserve)(mx_backend_packed_t *packed, size_t max_tokens, size_t max_assign);

    /* Optional (NULL = nothing to do): page-lock `bytes` of the caller's host
     * memory at `ptr` for the device `dev` names (cudaHostRegister), so that
     * run() copies tokens from and outputs into it by DMA; host_unregister
     * undoes it before that memory is freed. A failed register only leaves the
     * memory pageable (slower copies); the worker goes on without it. */
    mx_status_t (*host_register)(const mx_device_info_t *dev, void *ptr, size_t bytes);
    void (*host_unregister)(void *ptr);
} mx_backend_ops_t;

/* The registry: every backend compiled into this build, ref first. */
const mx_backend_ops_t *const *mx_backend_registry(int *count_p);
const mx_backend_ops_t *mx_backend_find(const char *name);

/* The oracle. `forced` (or, when NULL, $MXEP_BACKEND) names one backend; an
 * unusable forced choice is an error naming why. Otherwise the highest-priority
 * backend that probes and supports wins, `ref` always being there. `report`
 * gets one line per candidate ("cpu: chosen (avx2)", "cuda: no device") and
 * may be NULL. */
typedef struct {
    const mx_backend_ops_t *backend;
    mx_device_info_t device;
    char reason[MX_REASON_MAX];
} mx_oracle_choice_t;

mx_status_t mx_oracle_select_from(const mx_backend_ops_t *const *table, int count, const mx_moe_desc_t *desc,
                                  const char *forced, char *report, size_t report_len,
                                  mx_oracle_choice_t *choice_p);
mx_status_t mx_oracle_select(const mx_moe_desc_t *desc, const char *forced, char *report, size_t report_len,
                             mx_oracle_choice_t *choice_p);

#ifdef __cplusplus
}
#endif
#endif
