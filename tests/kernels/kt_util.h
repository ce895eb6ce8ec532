/* Shared helpers for kernel tests and benches: a seeded RNG, random experts in
 * the canonical layout (made with quant/'s encoders from random non-zero
 * floats), random tokens and routings, output poisoning and error measures.
 * Library target: mxep_kt_util (tests/kernels/CMakeLists.txt). */
#ifndef MXEP_KT_UTIL_H
#define MXEP_KT_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "mxep/kernels.h"
#include "mxep/moe.h"

typedef struct {
    uint64_t s;
} kt_rng_t;

void kt_rng_seed(kt_rng_t *r, uint64_t seed);
uint64_t kt_rng_next(kt_rng_t *r);
/* Uniform in [lo, hi), never exactly 0. */
float kt_rng_uniform(kt_rng_t *r, float lo, float hi);
/* Uniform integer in [0, n). */
int kt_rng_below(kt_rng_t *r, int n);

/* A layer description with gpt-oss SwiGLU constants (limit 7, alpha 1.702)
 * and per-token W8A8 activation scales. */
mx_moe_desc_t kt_desc(mx_scheme_t scheme, mx_act_t act, mx_gateup_order_t order, size_t hidden, size_t inter);

typedef struct {
    int with_bias;         /* gate_up and down FP32 biases */
    mx_wscale_t fp8_scale; /* FP8 weight scales: MX_WSCALE_BLOCK (also when 0), CHANNEL or TENSOR */
    float gain;            /* weight amplitude multiplier (0 = 1): > 1 drives SwiGLU into its clamps */
} kt_expert_opts_t;

/* n_experts random experts for `desc`. Weights are uniform in +-gain*3/sqrt(K)
 * before quantizing, so outputs are O(1) for tokens from kt_tokens_fill. W4A8:
 * input_scale ~ 1/448; down_input_scale 0 (dynamic) on even experts, a static
 * ~4/448 on odd ones. */
typedef struct {
    mx_moe_desc_t desc;
    int n_experts;
    mx_expert_weights_t *w; /* [n_experts], views into storage owned by this object */
    void **bufs;
    int n_bufs, cap_bufs;
} kt_experts_t;

mx_status_t kt_experts_create(const mx_moe_desc_t *desc, int n_experts, const kt_expert_opts_t *opts, uint64_t seed,
                              kt_experts_t **experts_p);
void kt_experts_destroy(kt_experts_t *ex);

/* n BF16 values uniform in +-amp, never 0. */
void kt_tokens_fill(kt_rng_t *r, uint16_t *x, size_t n, float amp);

/* Random top-k routing of n_tokens over experts [0, n_experts), never using the
 * last n_idle experts (they get no tokens); each token's k experts are distinct,
 * weights positive summing to 1, and the assignment order is shuffled. */
typedef struct {
    size_t n_tokens, n_assign;
    int32_t *tok, *expert;
    float *weight;
} kt_routing_t;

mx_status_t kt_routing_create(size_t n_tokens, int n_experts, int top_k, int n_idle, uint64_t seed,
                              kt_routing_t *routing_p);
void kt_routing_destroy(kt_routing_t *routing);

/* Runs one batch: sizes and allocates the workspace, runs, frees it. */
mx_status_t kt_backend_run(const mx_backend_ops_t *b, const mx_backend_packed_t *packed, const mx_run_args_t *args);

/* A NaN bit pattern used to poison BF16 outputs; kt_count_poison counts what is left. */
#define KT_POISON_BF16 ((uint16_t)0x7FA5)
void kt_poison_bf16(uint16_t *p, size_t n);
size_t kt_count_nan_bf16(const uint16_t *p, size_t n);
size_t kt_count_nan_f32(const float *p, size_t n);

/* ||a - ref|| / ||ref|| (ref all zero: ||a||). */
double kt_rel_l2_bf16(const uint16_t *a, const uint16_t *ref, size_t n);
double kt_rel_l2_f32(const float *a, const float *ref, size_t n);

/* Relative L2 tolerance of FORMATS.md for a scheme against ref. */
double kt_tolerance(mx_scheme_t scheme);

#endif
