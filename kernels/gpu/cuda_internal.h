/* mxep cuda backend: internals shared with the GPU bench and tests (not a
 * public interface). run() = stage + layer + fetch under the packed object's
 * lock, and waits for its stream before returning, on errors too. The bench
 * times `layer` alone with CUDA events on the backend's stream; these three
 * take no lock and stage/layer leave work in flight on the stream (a later
 * stage or run waits for it before it grows or reuses the scratch). */
#ifndef MXEP_CUDA_INTERNAL_H
#define MXEP_CUDA_INTERNAL_H

#include "mxep/kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

extern const mx_backend_ops_t mx_backend_cuda;

/* Validates args, groups assignments by expert on the host (gpu_plan.c) and
 * enqueues the uploads of the batch (no wait unless the scratch grows; on an
 * error it waits for the stream before returning). */
mx_status_t mxi_cuda_stage(const mx_backend_packed_t *packed, const mx_run_args_t *args);
/* Launches the layer's kernels for the staged batch on the backend's stream (no sync). */
mx_status_t mxi_cuda_layer(const mx_backend_packed_t *packed);
/* Copies the outputs of the staged batch into args and waits for the stream. */
mx_status_t mxi_cuda_fetch(const mx_backend_packed_t *packed, const mx_run_args_t *args);
/* The backend's MXEP_CUDA_* settings (README) and the kernels', one table in
 * moe_kernels.cu (mxi_gpu_check_settings): MX_OK when each is unset, empty or one of the values it takes, else
 * MX_ERR_INVALID naming the variable, its value and the values it takes, so
 * that a misspelt or retired value is an error rather than a quiet default.
 * prepack calls it; it needs no device. */
mx_status_t mxi_cuda_check_settings(void);
/* The backend's stream (a cudaStream_t). */
void *mxi_cuda_stream(const mx_backend_packed_t *packed);
/* Makes `packed` enqueue its work on `owner`'s stream from now on (waiting for
 * its own first), so that layers of several packed objects run back to back in
 * one stream, as a model's do (the bench's layers with weights not in L2).
 * Release `packed` before `owner`, whose stream it is. */
mx_status_t mxi_cuda_share_stream(mx_backend_packed_t *packed, const mx_backend_packed_t *owner);
/* Tile configuration of the staged batch: 0 = S (16 tokens per tile, the decode kernel), 1 = M (64), 2 = L (256). */
int mxi_cuda_staged_cfg(const mx_backend_packed_t *packed);
/* Forces a tile configuration for later stages (-1 = by batch); for tests of batch invariance. */
void mxi_cuda_force_cfg(mx_backend_packed_t *packed, int cfg);
/* The tensor-core instruction of the GEMMs (0 = mma.sync, 1 = wgmma), and a way
 * for tests to pick one (returns 0 when the device cannot run it). */
int mxi_cuda_mma(const mx_backend_packed_t *packed);
int mxi_cuda_force_mma(mx_backend_packed_t *packed, int mma);
/* 1 when the layer runs on the FP8 tensor cores (W8A8 on sm_90: E4M3 token rows;
 * MXEP_CUDA_FP8MMA=0 at prepack turns it off), else 0. */
int mxi_cuda_fp8_mma(const mx_backend_packed_t *packed);
/* Bytes of run scratch the packed object holds now (device buffers and the
 * host metadata): after reserve() a batch within its sizes must not change it. */
size_t mxi_cuda_scratch_bytes(const mx_backend_packed_t *packed);

#ifdef __cplusplus
}
#endif
#endif
