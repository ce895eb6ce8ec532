/* mxep GPU backends: the host-side plan of one batch (plain C, no GPU runtime,
 * so that it is unit-tested without a device: tests/gpu/test_gpu_plan.c).
 *
 * The plan groups the assignments by local expert (a stable counting sort),
 * cuts each expert's rows into m tiles of the tile configuration's BM rows and
 * lists, per token, its assignments in ascending (expert, assignment) order for
 * the weighted combine. It lives in one block of 32-bit words that is uploaded
 * in one copy; the same views are taken on the host block and on the device
 * copy. Every word of the uploaded part is written by mxi_gpu_plan_build
 * (unused tile slots are zero), so the device never reads a byte no one wrote. */
#ifndef MXEP_GPU_PLAN_H
#define MXEP_GPU_PLAN_H

#include <stddef.h>
#include <stdint.h>

#include "mxep/kernels.h"
#include "mxep/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Sizes of one plan. Layout (32-bit words): a_tok[NA] out_rows[NA]
 * tile_e[max_tiles] tile_m0[max_tiles] off[E] cnt[E] tok_off[T + 1]
 * tok_list[NA] | w[NA] rs1[NA] rs2[NA] (floats) | host only: cursor[E]. */
typedef struct {
    size_t n_tokens, n_assign, max_tiles;
    int n_experts;
    size_t dev_bytes;  /* the uploaded part */
    size_t host_bytes; /* dev_bytes + the host-only cursor */
} mxg_plan_dims_t;

typedef struct {
    int32_t *a_tok;    /* sorted row -> token row of x */
    int32_t *out_rows; /* sorted row -> assignment index */
    int32_t *tile_e, *tile_m0;
    int32_t *off, *cnt; /* per expert: first sorted row, number of rows */
    int32_t *tok_off;   /* [T + 1]: token t's entries are tok_list[tok_off[t] .. tok_off[t + 1]) */
    int32_t *tok_list;  /* assignment indices */
    float *w;           /* per assignment: routing weight (0 when args->weight is NULL) */
    float *rs1, *rs2;   /* per sorted row: the expert's static input scales (W4A8), 1 when none */
} mxg_plan_views_t;

typedef struct {
    int cfg;      /* MXG_CFG_* */
    int n_mtiles; /* tiles used (<= max_tiles) */
    int max_cnt;  /* rows of the busiest expert */
} mxg_plan_info_t;

/* Validates a run's arguments against n_experts local experts: output mode,
 * pointers, sizes, every token and expert index. `who` prefixes the detail
 * ("cuda run"). MX_OK or MX_ERR_INVALID naming the assignment at fault. */
mx_status_t mxi_gpu_plan_check(const mx_run_args_t *args, int n_experts, const char *who);

/* Sizes for n_tokens, n_assign, n_experts; MX_ERR_INVALID when they overflow
 * the 32-bit indices the kernels use. */
mx_status_t mxi_gpu_plan_dims(size_t n_tokens, size_t n_assign, int n_experts, mxg_plan_dims_t *dims_p);

/* Views of a plan block at `base` (host or device address; pointer arithmetic only). */
void mxi_gpu_plan_views(void *base, const mxg_plan_dims_t *dims, mxg_plan_views_t *views_p);

/* The tile configuration for the busiest expert's row count (force_cfg >= 0 wins). */
int mxi_gpu_plan_pick_cfg(int max_cnt, int force_cfg);

/* Builds the plan of checked args into the host block `host` (dims->host_bytes).
 * in_scale / down_in_scale: per expert, or NULL for 1. */
void mxi_gpu_plan_build(const mx_run_args_t *args, const mxg_plan_dims_t *dims, const float *in_scale,
                        const float *down_in_scale, int force_cfg, void *host, mxg_plan_info_t *info_p);

#ifdef __cplusplus
}
#endif
#endif
