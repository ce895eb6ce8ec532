/* mxep: the shared vocabulary of one MoE layer — schemes, activations, routers,
 * the model description read from a checkpoint, and the canonical (checkpoint)
 * layout of one expert's weights. Every module may include this header; it has
 * no code behind it except the name helpers in core/moe.c. */
#ifndef MXEP_MOE_H
#define MXEP_MOE_H

#include <stddef.h>
#include <stdint.h>

#include "mxep/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Weight x activation scheme (ARCHITECTURE.md, Schemes). */
typedef enum {
    MX_SCHEME_W16A16 = 0, /* BF16 weights, BF16 activations */
    MX_SCHEME_W4A16 = 1,  /* MXFP4 weights, BF16 activations */
    MX_SCHEME_W4A8 = 2,   /* MXFP4 weights, FP8 E4M3 activations, static per-tensor scale */
    MX_SCHEME_W8A16 = 3,  /* FP8 E4M3 weights (block 128x128 or per-channel), BF16 activations */
    MX_SCHEME_W8A8 = 4,   /* FP8 E4M3 weights, FP8 activations, dynamic per-token or per-128 scales */
    MX_SCHEME_COUNT
} mx_scheme_t;

/* Expert activation. SILU and GELU_TANH use gate/up halves by default;
 * SWIGLU_OAI is the gpt-oss activation (clamps, alpha, +1 on up). The row order
 * of the fused gate/up matrix is given separately (mx_gateup_order_t). */
typedef enum { MX_ACT_SILU = 0, MX_ACT_SWIGLU_OAI = 1, MX_ACT_GELU_TANH = 2, MX_ACT_COUNT } mx_act_t;

/* Rows of the fused [2I x H] gate/up matrix: HALVES = gate rows [0,I), up rows
 * [I,2I); INTERLEAVED = row 2i gate_i, row 2i+1 up_i (gpt-oss). */
typedef enum { MX_GATEUP_HALVES = 0, MX_GATEUP_INTERLEAVED = 1 } mx_gateup_order_t;

/* Storage format of one weight matrix in the canonical layout. */
typedef enum {
    MX_WFMT_BF16 = 0,  /* uint16 [rows x cols] */
    MX_WFMT_MXFP4 = 1, /* uint8 [rows x cols/2] packed E2M1 (element 2j low nibble) + E8M0 [rows x cols/32] */
    MX_WFMT_FP8 = 2    /* uint8 E4M3FN [rows x cols] + float scales (see mx_wscale_t) */
} mx_wfmt_t;

/* How FP8 weight scales are laid out. Scales always MULTIPLY: w = q * s. */
typedef enum {
    MX_WSCALE_NONE = 0,    /* BF16 weights */
    MX_WSCALE_E8M0_32 = 1, /* MXFP4: one E8M0 byte per 32 along cols */
    MX_WSCALE_BLOCK = 2,   /* FP8: float [ceil(rows/128) x ceil(cols/128)] */
    MX_WSCALE_CHANNEL = 3, /* FP8: float [rows] */
    MX_WSCALE_TENSOR = 4   /* FP8: float [1] */
} mx_wscale_t;

/* One weight matrix [rows = out, cols = in (K)], a view: it never owns. */
typedef struct {
    mx_wfmt_t fmt;
    mx_wscale_t scale_kind;
    size_t rows, cols;
    const void *data;   /* see mx_wfmt_t */
    const void *scales; /* uint8 E8M0 for MXFP4; float for FP8; NULL for BF16 */
} mx_matrix_t;

/* One expert in canonical layout (views). gate_up is [2I x H] in the order of
 * the layer's mx_gateup_order_t; down is [H x I]. Biases are FP32 copies (NULL
 * when the model has none). input_scale / down_input_scale are the static
 * per-tensor FP8 activation scales of W4A8 (0 when absent). */
typedef struct {
    mx_matrix_t gate_up;
    mx_matrix_t down;
    const float *gate_up_bias; /* [2I] or NULL */
    const float *down_bias;    /* [H] or NULL */
    float input_scale;
    float down_input_scale;
} mx_expert_weights_t;

/* What a backend must compute for one layer (shared by every local expert). */
typedef struct {
    mx_scheme_t scheme;
    mx_act_t act;
    mx_gateup_order_t order;
    size_t hidden;      /* H */
    size_t inter;       /* I */
    float swiglu_limit; /* gpt-oss: 7.0 */
    float swiglu_alpha; /* gpt-oss: 1.702 */
    int act_group;      /* W8A8 activation scale granularity: 0 = per token, 128 = per 128 group */
} mx_moe_desc_t;

/* Routers (FORMATS.md Part 1, Part 2 section 7). */
typedef enum {
    MX_ROUTER_TOPK_SOFTMAX = 0,    /* gpt-oss: top-k of logits, softmax over the k */
    MX_ROUTER_SOFTMAX_TOPK = 1,    /* softmax over E, top-k, renormalize if `renormalize` */
    MX_ROUTER_SIGMOID_GROUPED = 2, /* DeepSeek-V3: sigmoid + correction bias + grouped top-k */
    MX_ROUTER_EXPERT_CHOICE = 3,   /* each expert takes its top-C tokens of the whole batch */
    MX_ROUTER_GEMMA4 = 4,          /* Gemma 4: RMSNorm'd, scaled input; softmax over E, top-k, renormalize,
                                      x per_expert_scale (FORMATS.md Part 2 section 6) */
    MX_ROUTER_COUNT
} mx_router_kind_t;

typedef struct {
    mx_router_kind_t kind;
    int top_k;
    int renormalize;         /* SOFTMAX_TOPK: norm_topk_prob */
    int n_group, topk_group; /* SIGMOID_GROUPED */
    float scaling_factor;    /* SIGMOID_GROUPED: routed_scaling_factor (1 if none) */
    float capacity_factor;   /* EXPERT_CHOICE */
} mx_router_desc_t;

/* Everything about the MoE layers of a model that config.json tells. */
#define MX_NAME_MAX 64
typedef struct {
    char model_type[MX_NAME_MAX];   /* "gpt_oss", "qwen3_moe", "deepseek_v3", "gemma4", ... */
    char quant_method[MX_NAME_MAX]; /* normalized: "gpt_oss_mxfp4", "mxfp4", "fp8_block", "fp8_channel",
                                       "w_mxfp4_a_fp8", "none" */
    int n_layers;
    int n_experts;
    size_t hidden; /* H */
    size_t inter;  /* I (moe_intermediate_size where present) */
    mx_moe_desc_t moe;
    mx_router_desc_t router;
    float rms_norm_eps; /* config rms_norm_eps (0 when absent; gemma4: 1e-6 when absent): the
                           epsilon of the Gemma 4 router's input RMSNorm */
} mx_model_config_t;

const char *mx_scheme_name(mx_scheme_t scheme); /* "W4A16", ... */
/* The weight format a scheme's experts are stored in (W16A16: BF16, W4A*: MXFP4, W8A*: FP8). */
mx_wfmt_t mx_scheme_wfmt(mx_scheme_t scheme);
const char *mx_wfmt_name(mx_wfmt_t fmt); /* "BF16", "MXFP4", "FP8" */
const char *mx_act_name(mx_act_t act);          /* "silu", "swiglu_oai", "gelu_tanh" */
const char *mx_router_name(
    mx_router_kind_t kind); /* "topk_softmax", "softmax_topk", "sigmoid_grouped", "expert_choice", "gemma4" */
/* Parse the names above (case-insensitive); MX_ERR_INVALID naming the text otherwise. */
mx_status_t mx_scheme_parse(const char *text, mx_scheme_t *scheme_p);
mx_status_t mx_act_parse(const char *text, mx_act_t *act_p);
mx_status_t mx_router_parse(const char *text, mx_router_kind_t *kind_p);

/* What every backend's supports() checks first, the description's own sense:
 * a known scheme, activation and gate/up order; 1 <= H, I <= max_dim; H and I
 * multiples of 32 for the MXFP4 schemes (W4A16, W4A8); W8A8's act_group 0 (per
 * token) or 128; swiglu_oai's limit and alpha above 0. 1 when all hold; else 0
 * and, when reason_len > 0, the first that fails with the value found. */
int mx_moe_desc_check(const mx_moe_desc_t *desc, size_t max_dim, char *reason, size_t reason_len);

#ifdef __cplusplus
}
#endif
#endif
