/* checkpoint/ internals shared between its sources (and the fuzz target). */
#ifndef MXEP_CKPT_INTERNAL_H
#define MXEP_CKPT_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "mxep/checkpoint.h"

#define MXI_ST_HEADER_MAX ((uint64_t)100 * 1000 * 1000) /* safetensors' limit */

/* 64-bit FNV-1a of a NUL-terminated string: the name table's hash, and the synthetic
 * models' seed of a family name (so the generated values depend on it). */
uint64_t mxi_fnv1a(const char *s);

/* quant_method mxfp4 (gpt_oss_mxfp4 for model_type gpt_oss), scheme W4A16: config.c's rule,
 * also for a blocks + scales checkpoint whose config has no quantization_config. */
void mxi_config_set_mxfp4(mx_model_config_t *m);

/* ---------------------------------------------------------------- name table (open addressing) */
typedef struct {
    size_t cap;        /* power of two */
    const char **keys; /* borrowed */
    int *vals;
} mxi_names_t;

mx_status_t mxi_names_init(mxi_names_t *t, size_t n_expected);
void mxi_names_fini(mxi_names_t *t);
/* Returns 1 when inserted, 0 when the key was already there (*old_p = its value). */
int mxi_names_put(mxi_names_t *t, const char *key, int val, int *old_p);
int mxi_names_get(const mxi_names_t *t, const char *key); /* -1 when absent */

/* ---------------------------------------------------------------- safetensors parsing (in memory)
 * Parses and validates a whole safetensors image buf[0..size). On success
 * *tensors_p (malloc'd, names in one malloc'd pool *pool_p) point into buf. */
mx_status_t mxi_st_parse(const char *file, const uint8_t *buf, size_t size, mx_st_tensor_t **tensors_p, int *n_p,
                         char **pool_p);

/* The index of a tensor in an open file (-1 when absent) and the file's path. */
int mxi_st_file_index(mx_st_file_h file, const char *name);
const char *mxi_st_file_path(mx_st_file_h file);

/* model.safetensors.index.json: the tensor names and their shard (index into shards). */
typedef struct {
    int n_tensors;
    char **names;
    int *shard;
    int n_shards;
    char **shards;
} mxi_index_t;
mx_status_t mxi_index_parse(const char *file, const char *json, size_t len, mxi_index_t *index_p);
void mxi_index_fini(mxi_index_t *index);

/* ---------------------------------------------------------------- layouts */
typedef enum {
    MXI_LAYOUT_NONE = 0,
    MXI_LAYOUT_GPT_OSS_FUSED,
    MXI_LAYOUT_OPENAI_ORIGINAL,
    MXI_LAYOUT_FUSED_3D_HALVES,
    MXI_LAYOUT_PER_EXPERT_2D,
    MXI_LAYOUT_MIXTRAL_W123,
    MXI_LAYOUT_VLLM_W13,
    MXI_LAYOUT_COUNT
} mxi_layout_t;
const char *mxi_layout_name(mxi_layout_t layout);
/* Per-expert layouts: how many experts of `layer` lack a weight tensor (first in *first_p). */
int mxi_ckpt_missing_experts(mx_ckpt_h ckpt, int layer, int *first_p);

/* ---------------------------------------------------------------- expert sets */
struct mx_expert_set {
    int count;
    int *ids;
    mx_expert_weights_t *w;
    void **bufs; /* one allocation per expert */
};
mx_status_t mxi_expert_set_create(const int *ids, int count, mx_expert_set_h *set_p);
/* Sizes in bytes of a canonical matrix's data and scales. */
void mxi_matrix_bytes(mx_wfmt_t fmt, mx_wscale_t sk, size_t rows, size_t cols, size_t *data_p, size_t *scales_p);
/* Allocates expert i's buffer for the matrices' shapes (fmt, scale_kind, rows,
 * cols of w->gate_up and w->down must be set) and points data/scales/biases into it. */
mx_status_t mxi_expert_alloc(mx_expert_set_h set, int i, int gate_up_bias, int down_bias);

/* ---------------------------------------------------------------- synthetic generator */
typedef struct mxi_preset mxi_preset_t;
/* Writes the fuzz seeds (headers, index and config of every preset) into dir. */
mx_status_t mxi_synth_fuzz_seeds(const char *dir);

/* Small exact helpers (no rounding questions: BF16 -> F32 is exact). */
static inline float mxi_bf16_to_f32(uint16_t h)
{
    union {
        uint32_t u;
        float f;
    } v;
    v.u = (uint32_t)h << 16;
    return v.f;
}

#endif
