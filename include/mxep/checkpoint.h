/* mxep checkpoint/: safetensors reader (mmap, sharded index), config.json,
 * expert layout detection, loading only the experts a rank holds, and the
 * synthetic checkpoint generator (files for `mxckpt make`, in memory for the
 * built-in default model of mxworker). */
#ifndef MXEP_CHECKPOINT_H
#define MXEP_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "mxep/moe.h"
#include "mxep/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- safetensors */
typedef enum {
    MX_ST_BOOL, MX_ST_U8, MX_ST_I8, MX_ST_U16, MX_ST_I16, MX_ST_U32, MX_ST_I32, MX_ST_U64, MX_ST_I64,
    MX_ST_F16, MX_ST_BF16, MX_ST_F32, MX_ST_F64, MX_ST_C64,
    MX_ST_F8_E4M3, MX_ST_F8_E5M2, MX_ST_F8_E4M3FNUZ, MX_ST_F8_E5M2FNUZ, MX_ST_F8_E8M0,
    MX_ST_F4, MX_ST_F6_E2M3, MX_ST_F6_E3M2,
    MX_ST_DTYPE_COUNT
} mx_st_dtype_t;

#define MX_ST_MAX_DIMS 8
typedef struct {
    const char *name;     /* owned by the file handle */
    mx_st_dtype_t dtype;
    int ndim;
    int64_t shape[MX_ST_MAX_DIMS];
    size_t nbytes;
    const uint8_t *data;  /* into the mapping; valid while the handle lives */
    const char *file;     /* the shard it lives in */
} mx_st_tensor_t;

typedef struct mx_st_file *mx_st_file_h;   /* one .safetensors, mmapped */
typedef struct mx_ckpt *mx_ckpt_h;         /* a checkpoint directory (config + one or many shards) */

const char *mx_st_dtype_name(mx_st_dtype_t dtype); /* "BF16", "F8_E4M3", ... */
/* Parses a dtype string of the safetensors spec; MX_ERR_FORMAT naming it otherwise. */
mx_status_t mx_st_dtype_parse(const char *text, mx_st_dtype_t *dtype_p);
/* Size in bits of one element (F4: 4, F6_*: 6, BOOL: 8). */
int mx_st_dtype_bits(mx_st_dtype_t dtype);

/* One .safetensors file on its own: mmapped and validated strictly (header
 * length, JSON, dtypes, shape x dtype == span, offsets inside the data, no
 * overlap, no duplicate). Tensors are in file order of their offsets. */
mx_status_t mx_st_file_open(const char *path, mx_st_file_h *file_p);
void mx_st_file_close(mx_st_file_h file);
int mx_st_file_count(mx_st_file_h file);
const mx_st_tensor_t *mx_st_file_tensor(mx_st_file_h file, int index);
/* By name; MX_ERR_FORMAT naming the file and tensor if absent. */
mx_status_t mx_st_file_find(mx_st_file_h file, const char *name, mx_st_tensor_t *tensor_p);

/* ---------------------------------------------------------------- checkpoint */
/* Opens DIR: config.json (normalized into mx_model_config_t) plus
 * model.safetensors or model.safetensors.index.json. Validates strictly;
 * MX_ERR_FORMAT / MX_ERR_IO naming the file, tensor and what was expected. */
mx_status_t mx_ckpt_open(const char *dir, mx_ckpt_h *ckpt_p);
void mx_ckpt_close(mx_ckpt_h ckpt);
const mx_model_config_t *mx_ckpt_config(mx_ckpt_h ckpt);
/* Normalizes the text of a config.json (FORMATS.md Part 1: quant_method rules,
 * nested text_config, router and activation). `source` names the file in
 * messages. MX_ERR_FORMAT for malformed or missing fields, MX_ERR_UNSUPPORTED
 * for a quantization method or activation mxep does not know. */
mx_status_t mx_ckpt_config_parse(const char *json, size_t len, const char *source, mx_model_config_t *config_p);
/* The shards the checkpoint opened and how many tensors it holds. */
int mx_ckpt_file_count(mx_ckpt_h ckpt);
const char *mx_ckpt_file_path(mx_ckpt_h ckpt, int index);
int mx_ckpt_tensor_count(mx_ckpt_h ckpt);
/* Tensor number `index` (0 .. count-1): weight_map order of a sharded index, offset order of a single file. */
mx_status_t mx_ckpt_tensor_at(mx_ckpt_h ckpt, int index, mx_st_tensor_t *tensor_p);
/* A tensor by name (resolved through weight_map). MX_ERR_FORMAT if absent. */
mx_status_t mx_ckpt_tensor(mx_ckpt_h ckpt, const char *name, mx_st_tensor_t *tensor_p);
/* Which layout the experts of `layer` use ("gpt_oss_fused", "openai_original", "fused_3d_halves",
 * "per_expert_2d", "mixtral_w123", "vllm_w13"). */
const char *mx_ckpt_layout_name(mx_ckpt_h ckpt);

/* The router of one layer, in FP32 (owned by the caller via mx_router_weights_fini).
 * Gemma 4 (MX_ROUTER_GEMMA4) adds `scale` and `per_expert_scale`: when `scale`
 * is not NULL, mx_coord_router_logits first RMS-normalizes each token (no
 * weight, epsilon rms_eps), multiplies by scale[h] and H^-0.5, rounds to BF16
 * and then projects; per_expert_scale multiplies the renormalized top-k
 * weights (mx_coord_route_router). Loaded from `router.scale` and
 * `router.per_expert_scale` (older exports: `moe.per_expert_scale`). */
typedef struct {
    int n_experts;
    size_t hidden;
    float *weight;          /* [E x H] */
    float *bias;            /* [E] or NULL */
    float *correction_bias; /* [E] or NULL (DeepSeek e_score_correction_bias) */
    float *scale;            /* [H] or NULL (Gemma 4 router.scale) */
    float *per_expert_scale; /* [E] or NULL (Gemma 4 router.per_expert_scale; NULL = ones) */
    float rms_eps;           /* Gemma 4: epsilon of the input RMSNorm (config rms_norm_eps); used when scale != NULL */
} mx_router_weights_t;

/* A set of experts of one layer, in canonical layout (mx_expert_weights_t views
 * into memory the set owns). Only the listed experts' bytes are read. */
typedef struct mx_expert_set *mx_expert_set_h;
int mx_expert_set_count(mx_expert_set_h set);
const mx_expert_weights_t *mx_expert_set_weights(mx_expert_set_h set); /* [count], in the order asked */
const int *mx_expert_set_ids(mx_expert_set_h set);
void mx_expert_set_destroy(mx_expert_set_h set);

mx_status_t mx_ckpt_load_router(mx_ckpt_h ckpt, int layer, mx_router_weights_t *router_p);
mx_status_t mx_ckpt_load_experts(mx_ckpt_h ckpt, int layer, const int *expert_ids, int n_ids,
                                 mx_expert_set_h *set_p);
void mx_router_weights_fini(mx_router_weights_t *router);

/* ---------------------------------------------------------------- synthetic models
 * Presets: "gpt-oss-20b", "gpt-oss-120b", "qwen3-moe-fp8", "deepseek-fp8",
 * "gemma4-fp8", "w4a8", "tiny" (and whatever else checkpoint/ lists).
 * Weights are deterministic functions of (preset, seed, layer, expert), so a
 * rank can generate only its experts and get the same bytes as the file.
 * (gpt-oss-20b and gpt-oss-120b are one family: expert j of a layer has the
 * same bytes in both.) mx_synth_router / mx_synth_experts find the preset from
 * the config (model type, quantization, H, I); a config of no preset is
 * MX_ERR_INVALID. The layout written is the preset's real one: gpt-oss fused
 * (gpt-oss-*, w4a8 with *_input_scale, tiny) or per-expert 2-D (qwen3, deepseek
 * with weight_scale_inv, gemma4). */
mx_status_t mx_synth_config(const char *preset, int n_layers, mx_model_config_t *config_p);
const char *const *mx_synth_presets(int *count_p);
mx_status_t mx_synth_router(const mx_model_config_t *config, uint64_t seed, int layer, mx_router_weights_t *router_p);
mx_status_t mx_synth_experts(const mx_model_config_t *config, uint64_t seed, int layer, const int *expert_ids,
                             int n_ids, mx_expert_set_h *set_p);
/* Writes a real checkpoint directory (config.json + safetensors, sharded past
 * shard_bytes; 0 = default 4 GiB). Writes into a temporary name and renames,
 * so nothing half-written is left on failure. `progress` may be NULL; it is
 * called at every 1% of the bytes, and a non-zero return stops the write
 * (MX_ERR_IO, the temporary directory removed: e.g. on a signal). */
mx_status_t mx_synth_write(const char *preset, int n_layers, uint64_t seed, const char *out_dir, size_t shard_bytes,
                           int (*progress)(double fraction, void *arg), void *arg);
/* The same with fewer experts than the preset (n_experts = 0: the preset's).
 * Expert j has the same bytes whatever n_experts is (for fast tests of the big
 * presets); top_k and router groups shrink to fit when needed. */
mx_status_t mx_synth_config_ex(const char *preset, int n_layers, int n_experts, mx_model_config_t *config_p);
mx_status_t mx_synth_write_ex(const char *preset, int n_layers, int n_experts, uint64_t seed, const char *out_dir,
                              size_t shard_bytes, int (*progress)(double fraction, void *arg), void *arg);

#ifdef __cplusplus
}
#endif
#endif
