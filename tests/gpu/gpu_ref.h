/* tests/gpu: a private CPU reference of FORMATS.md Part 1's expert numerics and
 * a random expert builder, used by the GPU parity test and the GPU bench. (The
 * kernels-core helper's `ref` backend is the project's oracle; this copy keeps
 * the GPU tests independent of it until it lands.) */
#ifndef MXEP_TESTS_GPU_REF_H
#define MXEP_TESTS_GPU_REF_H

#include <stddef.h>
#include <stdint.h>

#include "mxep/kernels.h"

typedef struct {
    int n;
    mx_expert_weights_t *ex;
    void **blobs; /* owned buffers */
    int n_blobs;
} gref_experts_t;

typedef struct {
    uint64_t s;
} gref_rng_t;

uint64_t gref_next(gref_rng_t *r);
float gref_uniform(gref_rng_t *r); /* [-1, 1) */
uint16_t gref_f2bf(float f);
float gref_bf2f(uint16_t b);
float gref_e4m3_round(float v);

/* Random experts for `desc`: fp8_scale = MX_WSCALE_BLOCK / CHANNEL / TENSOR for FP8 schemes. Returns 0 on success. */
int gref_experts_make(const mx_moe_desc_t *desc, int n_experts, mx_wscale_t fp8_scale, int with_bias, uint64_t seed,
                      gref_experts_t *out);
void gref_experts_free(gref_experts_t *g);

/* The reference run: writes args->out_bf16 or adds into args->out_f32 (n_threads ignored). */
void gref_run(const mx_moe_desc_t *desc, const mx_expert_weights_t *ex, const mx_run_args_t *args);

/* sqrt(sum (a - b)^2 / sum b^2) */
double gref_rel_l2_bf16(const uint16_t *a, const uint16_t *b, size_t n);
double gref_rel_l2_f32(const float *a, const float *b, size_t n);
#endif
