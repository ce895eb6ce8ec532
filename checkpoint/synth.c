/* Synthetic checkpoints: presets, a counter-based generator whose bytes are a
 * function of (preset family, seed, layer, expert, tensor, position) only, the
 * in-memory expert sets of the built-in model, and the streaming writer.
 *
 * Quantized weights are generated as codes directly: a code table maps random
 * bits to the E2M1 / E4M3 code of a quantile of a normal distribution (built
 * once with quant/'s encoders), and the block / channel scales are set so the
 * decoded weights are ~ N(0, 1/sqrt(K)). */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ckpt_internal.h"
#include "mxep/quant.h"

typedef enum { FAM_FUSED_MXFP4, FAM_2D_FP8 } family_layout_t;

struct mxi_preset {
    const char *name;
    const char *family; /* weights are shared by presets of one family */
    const char *model_type;
    family_layout_t layout;
    mx_wscale_t sk; /* FP8 scale kind */
    int E, top_k, layers;
    size_t H, I;
    const char *quant_method; /* the normalized one the config must give */
    int biases, input_scales, correction_bias;
    const char *prefix; /* printf format with the layer */
    const char *router_w, *router_b;
    mx_router_kind_t router;
    int n_group, topk_group;
};

static const mxi_preset_t presets[] = {
    {"gpt-oss-20b",
     "gpt-oss",
     "gpt_oss",
     FAM_FUSED_MXFP4,
     MX_WSCALE_E8M0_32,
     32,
     4,
     24,
     2880,
     2880,
     "gpt_oss_mxfp4",
     1,
     0,
     0,
     "model.layers.%d.mlp.",
     "router.weight",
     "router.bias",
     MX_ROUTER_TOPK_SOFTMAX,
     0,
     0},
    {"gpt-oss-120b",
     "gpt-oss",
     "gpt_oss",
     FAM_FUSED_MXFP4,
     MX_WSCALE_E8M0_32,
     128,
     4,
     36,
     2880,
     2880,
     "gpt_oss_mxfp4",
     1,
     0,
     0,
     "model.layers.%d.mlp.",
     "router.weight",
     "router.bias",
     MX_ROUTER_TOPK_SOFTMAX,
     0,
     0},
    {"qwen3-moe-fp8",
     "qwen3",
     "qwen3_moe",
     FAM_2D_FP8,
     MX_WSCALE_CHANNEL,
     128,
     8,
     48,
     2048,
     768,
     "fp8_channel",
     0,
     0,
     0,
     "model.layers.%d.mlp.",
     "gate.weight",
     NULL,
     MX_ROUTER_SOFTMAX_TOPK,
     0,
     0},
    {"deepseek-fp8",
     "deepseek",
     "deepseek_v3",
     FAM_2D_FP8,
     MX_WSCALE_BLOCK,
     256,
     8,
     61,
     7168,
     2048,
     "fp8_block",
     0,
     0,
     1,
     "model.layers.%d.mlp.",
     "gate.weight",
     NULL,
     MX_ROUTER_SIGMOID_GROUPED,
     8,
     4},
    {"gemma4-fp8",
     "gemma4",
     "gemma4",
     FAM_2D_FP8,
     MX_WSCALE_CHANNEL,
     128,
     8,
     30,
     2816,
     704,
     "fp8_channel",
     0,
     0,
     0,
     "model.language_model.layers.%d.",
     "router.proj.weight",
     NULL,
     MX_ROUTER_GEMMA4,
     0,
     0},
    {"w4a8",
     "w4a8",
     "gpt_oss",
     FAM_FUSED_MXFP4,
     MX_WSCALE_E8M0_32,
     32,
     4,
     24,
     2880,
     2880,
     "w_mxfp4_a_fp8",
     1,
     1,
     0,
     "model.layers.%d.mlp.",
     "router.weight",
     "router.bias",
     MX_ROUTER_TOPK_SOFTMAX,
     0,
     0},
    {"tiny",
     "tiny",
     "gpt_oss",
     FAM_FUSED_MXFP4,
     MX_WSCALE_E8M0_32,
     8,
     2,
     2,
     64,
     96,
     "gpt_oss_mxfp4",
     1,
     0,
     0,
     "model.layers.%d.mlp.",
     "router.weight",
     "router.bias",
     MX_ROUTER_TOPK_SOFTMAX,
     0,
     0},
};
#define N_PRESETS ((int)(sizeof presets / sizeof presets[0]))

static const char *const preset_names[N_PRESETS] = {"gpt-oss-20b", "gpt-oss-120b", "qwen3-moe-fp8", "deepseek-fp8",
                                                    "gemma4-fp8",  "w4a8",         "tiny"};

const char *const *mx_synth_presets(int *count_p)
{
    if (count_p)
        *count_p = N_PRESETS;
    return preset_names;
}

static mx_status_t find_preset(const char *name, const mxi_preset_t **p_p)
{
    for (int i = 0; name && i < N_PRESETS; i++)
        if (strcmp(presets[i].name, name) == 0) {
            *p_p = &presets[i];
            return MX_OK;
        }
    return mx_error_set(MX_ERR_INVALID,
                        "preset '%s' is not known (expected gpt-oss-20b, gpt-oss-120b, qwen3-moe-fp8, deepseek-fp8, "
                        "gemma4-fp8, w4a8 or tiny)",
                        name ? name : "(null)");
}

/* The preset a config came from (same model type, quantization and sizes). */
static mx_status_t preset_of_config(const mx_model_config_t *c, const mxi_preset_t **p_p)
{
    for (int i = 0; i < N_PRESETS; i++) {
        const mxi_preset_t *p = &presets[i];
        if (strcmp(p->model_type, c->model_type) == 0 && strcmp(p->quant_method, c->quant_method) == 0 &&
            p->H == c->hidden && p->I == c->inter && c->n_experts <= p->E) {
            *p_p = p;
            return MX_OK;
        }
    }
    return mx_error_set(MX_ERR_INVALID,
                        "config (model_type '%s', %s, H %zu, I %zu, %d experts) does not match a synthetic preset",
                        c->model_type, c->quant_method, c->hidden, c->inter, c->n_experts);
}

/* ---------------------------------------------------------------- counter-based RNG */
static inline uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static inline uint64_t rnd(uint64_t key, uint64_t ctr)
{
    return mix64(key + (ctr + 1) * 0x9E3779B97F4A7C15ull);
}

enum {
    T_GU = 1, /* fused gate_up (gpt-oss) or gate (2-D) */
    T_UP = 2,
    T_DOWN = 3,
    T_GU_BIAS = 4,
    T_DN_BIAS = 5,
    T_GU_IN = 6,
    T_DN_IN = 7,
    T_ROUTER_W = 8,
    T_ROUTER_B = 9,
    T_ROUTER_CB = 10,
    T_ROUTER_SCALE = 11,
    T_ROUTER_PES = 12,
    T_SCALES = 0x100
};

static uint64_t key_of(const mxi_preset_t *p, uint64_t seed, int layer, int expert, int tensor)
{
    uint64_t k = mix64(mxi_fnv1a(p->family) ^ mix64(seed + 0x1234567ull));
    k = mix64(k ^ ((uint64_t)(uint32_t)layer * 0xD6E8FEB86659FD93ull));
    k = mix64(k ^ ((uint64_t)(uint32_t)(expert + 1) * 0xA0761D6478BD642Full));
    return mix64(k ^ ((uint64_t)(uint32_t)tensor * 0xE7037ED1A0B428DBull));
}

static double uniform01(uint64_t r)
{
    return ((double)(r >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

/* Acklam's inverse normal CDF (relative error < 1.2e-9). */
static double inv_norm(double p)
{
    static const double a[] = {-3.969683028665376e+01, 2.209460984245205e+02,  -2.759285104469687e+02,
                               1.383577518672690e+02,  -3.066479806614716e+01, 2.506628277459239e+00};
    static const double b[] = {-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02,
                               6.680131188771972e+01, -1.328068155288572e+01};
    static const double c[] = {-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00,
                               -2.549671010115819e+00, 4.374664141464968e+00,  2.938163982698783e+00};
    static const double d[] = {7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00,
                               3.754408661907416e+00};
    double q, r;
    if (p < 0.02425) {
        q = sqrt(-2 * log(p));
        return (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
               ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
    }
    if (p > 1 - 0.02425) {
        q = sqrt(-2 * log(1 - p));
        return -(((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
               ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
    }
    q = p - 0.5;
    r = q * q;
    return (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q /
           (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1);
}

static double normal(uint64_t r)
{
    return inv_norm(uniform01(r));
}

#define E2M1_SIGMA 1.5   /* codes are E2M1 of N(0, 1.5): |x| = 6 at 4 sigma */
#define E4M3_SIGMA 112.0 /* codes are E4M3 of N(0, 112): 448 at 4 sigma */
static uint8_t e2m1_tab[256];
static double e2m1_rms; /* rms of the decoded code table */
static uint8_t e4m3_tab[65536];
static pthread_once_t tabs_once = PTHREAD_ONCE_INIT;

static void build_tabs(void)
{
    double ss = 0.0;
    for (int u = 0; u < 256; u++) {
        e2m1_tab[u] = mx_quant_e2m1_from_f32((float)(E2M1_SIGMA * inv_norm((u + 0.5) / 256.0))) & 0x0F;
        double v = mx_quant_e2m1_to_f32(e2m1_tab[u]);
        ss += v * v;
    }
    e2m1_rms = sqrt(ss / 256.0);
    for (int u = 0; u < 65536; u++)
        e4m3_tab[u] = mx_quant_e4m3fn_from_f32((float)(E4M3_SIGMA * inv_norm((u + 0.5) / 65536.0)));
}

/* ---------------------------------------------------------------- matrix generators */
/* MXFP4 [rows x cols]: packed bytes (rows x cols/2). */
static void gen_mxfp4_data(uint64_t key, size_t rows, size_t cols, uint8_t *dst)
{
    size_t nb = cols / 32;
#pragma omp parallel for schedule(static) if (rows * cols > (1u << 20))
    for (size_t r = 0; r < rows; r++) {
        for (size_t b = 0; b < nb; b++) {
            uint8_t *o = dst + r * (cols / 2) + b * 16;
            uint64_t ctr = ((uint64_t)r * nb + b) * 4;
            for (int t = 0; t < 4; t++) {
                uint64_t x = rnd(key, ctr + (uint64_t)t);
                for (int k = 0; k < 4; k++) {
                    uint8_t lo = e2m1_tab[(x >> (16 * k)) & 0xFF], hi = e2m1_tab[(x >> (16 * k + 8)) & 0xFF];
                    o[t * 4 + k] = (uint8_t)(lo | (hi << 4));
                }
            }
        }
    }
}

/* E8M0 scales (rows x cols/32) so that values are ~ N(0, 1/sqrt(cols)): each
 * block takes 2^f or 2^(f+1) (2^f <= target < 2^(f+1)) with the probability
 * that makes the mean square match. */

static void gen_mxfp4_scales(uint64_t key, size_t rows, size_t cols, uint8_t *dst)
{
    size_t nb = cols / 32;
    double t = 1.0 / sqrt((double)cols) / e2m1_rms;
    int f = (int)floor(log2(t));
    double a = exp2(f);
    double p_up = (t * t / (a * a) - 1.0) / 3.0;
    for (size_t i = 0; i < rows * nb; i++)
        dst[i] = (uint8_t)(127 + f + (uniform01(rnd(key, i)) < p_up ? 1 : 0));
}

static void gen_fp8_data(uint64_t key, size_t rows, size_t cols, uint8_t *dst)
{
    size_t nq = (cols + 3) / 4;
#pragma omp parallel for schedule(static) if (rows * cols > (1u << 20))
    for (size_t r = 0; r < rows; r++) {
        for (size_t q = 0; q < nq; q++) {
            uint64_t x = rnd(key, (uint64_t)r * nq + q);
            for (size_t k = 0; k < 4 && q * 4 + k < cols; k++)
                dst[r * cols + q * 4 + k] = e4m3_tab[(x >> (16 * k)) & 0xFFFF];
        }
    }
}

static size_t fp8_n_scales(mx_wscale_t sk, size_t rows, size_t cols)
{
    return sk == MX_WSCALE_BLOCK ? ((rows + 127) / 128) * ((cols + 127) / 128) : rows;
}

static void gen_fp8_scales(uint64_t key, mx_wscale_t sk, size_t rows, size_t cols, float *dst)
{
    double base = 1.0 / sqrt((double)cols) / E4M3_SIGMA;
    size_t n = fp8_n_scales(sk, rows, cols);
    for (size_t i = 0; i < n; i++)
        dst[i] = (float)(base * exp2((uniform01(rnd(key, i)) - 0.5) * 0.5));
}

static void gen_normal_bf16(uint64_t key, size_t n, double sigma, uint16_t *dst)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = mx_quant_bf16_from_f32((float)(sigma * normal(rnd(key, i))));
}

static void gen_lognormal_bf16(uint64_t key, size_t n, double sigma_log2, uint16_t *dst)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = mx_quant_bf16_from_f32((float)exp2(sigma_log2 * normal(rnd(key, i))));
}

static void gen_normal_f32(uint64_t key, size_t n, double sigma, float *dst)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = (float)(sigma * normal(rnd(key, i)));
}

static float gen_input_scale(uint64_t key, double amax)
{
    return (float)(amax / 448.0 * exp2((uniform01(rnd(key, 0)) - 0.5) * 0.5));
}

#define BIAS_SIGMA 0.02
#define CB_SIGMA 0.05

/* ---------------------------------------------------------------- parts of one expert in the files */
typedef enum {
    P_GU_DATA, /* fused family: gate_up [2I x H] MXFP4; 2-D family: gate [I x H] FP8 */
    P_GU_SCALES,
    P_GU_BIAS,
    P_UP_DATA, /* 2-D only */
    P_UP_SCALES,
    P_DN_DATA,
    P_DN_SCALES,
    P_DN_BIAS,
    P_GU_IN,
    P_DN_IN,
    P_ROUTER_W, /* whole layer */
    P_ROUTER_B,
    P_ROUTER_CB,
    P_ROUTER_SCALE, /* gemma4 router.scale [H] BF16 */
    P_ROUTER_PES    /* gemma4 router.per_expert_scale [E] BF16 */
} part_t;

/* Bytes of one expert's part (router parts: the whole tensor). */
static size_t part_bytes(const mxi_preset_t *p, int E, part_t part)
{
    size_t H = p->H, I = p->I;
    int fused = p->layout == FAM_FUSED_MXFP4;
    size_t gr = fused ? 2 * I : I;
    switch (part) {
    case P_GU_DATA:
        return fused ? gr * H / 2 : gr * H;
    case P_GU_SCALES:
        return fused ? gr * (H / 32) : fp8_n_scales(p->sk, gr, H) * 4;
    case P_UP_DATA:
        return I * H;
    case P_UP_SCALES:
        return fp8_n_scales(p->sk, I, H) * 4;
    case P_DN_DATA:
        return fused ? H * I / 2 : H * I;
    case P_DN_SCALES:
        return fused ? H * (I / 32) : fp8_n_scales(p->sk, H, I) * 4;
    case P_GU_BIAS:
        return 2 * I * 2;
    case P_DN_BIAS:
        return H * 2;
    case P_GU_IN:
    case P_DN_IN:
        return 4;
    case P_ROUTER_W:
        return (size_t)E * H * 2;
    case P_ROUTER_B:
        return (size_t)E * 2;
    case P_ROUTER_CB:
        return (size_t)E * 4;
    case P_ROUTER_SCALE:
        return H * 2;
    case P_ROUTER_PES:
        return (size_t)E * 2;
    }
    return 0;
}

static void gen_part(const mxi_preset_t *p, uint64_t seed, int layer, int j, int E, part_t part, uint8_t *dst)
{
    size_t H = p->H, I = p->I;
    int fused = p->layout == FAM_FUSED_MXFP4;
    size_t gr = fused ? 2 * I : I;
    switch (part) {
    case P_GU_DATA:
        if (fused)
            gen_mxfp4_data(key_of(p, seed, layer, j, T_GU), gr, H, dst);
        else
            gen_fp8_data(key_of(p, seed, layer, j, T_GU), gr, H, dst);
        break;
    case P_GU_SCALES:
        if (fused)
            gen_mxfp4_scales(key_of(p, seed, layer, j, T_GU | T_SCALES), gr, H, dst);
        else
            gen_fp8_scales(key_of(p, seed, layer, j, T_GU | T_SCALES), p->sk, gr, H, (float *)dst);
        break;
    case P_UP_DATA:
        gen_fp8_data(key_of(p, seed, layer, j, T_UP), I, H, dst);
        break;
    case P_UP_SCALES:
        gen_fp8_scales(key_of(p, seed, layer, j, T_UP | T_SCALES), p->sk, I, H, (float *)dst);
        break;
    case P_DN_DATA:
        if (fused)
            gen_mxfp4_data(key_of(p, seed, layer, j, T_DOWN), H, I, dst);
        else
            gen_fp8_data(key_of(p, seed, layer, j, T_DOWN), H, I, dst);
        break;
    case P_DN_SCALES:
        if (fused)
            gen_mxfp4_scales(key_of(p, seed, layer, j, T_DOWN | T_SCALES), H, I, dst);
        else
            gen_fp8_scales(key_of(p, seed, layer, j, T_DOWN | T_SCALES), p->sk, H, I, (float *)dst);
        break;
    case P_GU_BIAS:
        gen_normal_bf16(key_of(p, seed, layer, j, T_GU_BIAS), 2 * I, BIAS_SIGMA, (uint16_t *)dst);
        break;
    case P_DN_BIAS:
        gen_normal_bf16(key_of(p, seed, layer, j, T_DN_BIAS), H, BIAS_SIGMA, (uint16_t *)dst);
        break;
    case P_GU_IN: {
        float v = gen_input_scale(key_of(p, seed, layer, j, T_GU_IN), 4.5);
        memcpy(dst, &v, 4);
        break;
    }
    case P_DN_IN: {
        float v = gen_input_scale(key_of(p, seed, layer, j, T_DN_IN), 4.0);
        memcpy(dst, &v, 4);
        break;
    }
    case P_ROUTER_W:
        gen_normal_bf16(key_of(p, seed, layer, -1, T_ROUTER_W), (size_t)E * H, 1.0 / sqrt((double)H), (uint16_t *)dst);
        break;
    case P_ROUTER_B:
        gen_normal_bf16(key_of(p, seed, layer, -1, T_ROUTER_B), (size_t)E, BIAS_SIGMA, (uint16_t *)dst);
        break;
    case P_ROUTER_CB:
        gen_normal_f32(key_of(p, seed, layer, -1, T_ROUTER_CB), (size_t)E, CB_SIGMA, (float *)dst);
        break;
    case P_ROUTER_SCALE: /* positive, around 1 (HF initializes ones): 2^N(0, 0.5^2) */
        gen_lognormal_bf16(key_of(p, seed, layer, -1, T_ROUTER_SCALE), H, 0.5, (uint16_t *)dst);
        break;
    case P_ROUTER_PES: /* positive, around 1: 2^N(0, 0.25^2) */
        gen_lognormal_bf16(key_of(p, seed, layer, -1, T_ROUTER_PES), (size_t)E, 0.25, (uint16_t *)dst);
        break;
    }
}

/* ---------------------------------------------------------------- configs */
static void shrink_router(const mxi_preset_t *p, int E, int *top_k, int *n_group, int *topk_group)
{
    *top_k = p->top_k < E ? p->top_k : E;
    *n_group = p->n_group;
    *topk_group = p->topk_group;
    if (p->router == MX_ROUTER_SIGMOID_GROUPED) {
        while (*n_group > 1 && E % *n_group)
            (*n_group)--;
        if (*n_group > E)
            *n_group = E;
        if (*topk_group > *n_group)
            *topk_group = *n_group;
        int avail = E / *n_group * *topk_group;
        if (*top_k > avail)
            *top_k = avail;
    }
}

static cJSON *config_json(const mxi_preset_t *p, int n_layers, int E)
{
    int top_k, n_group, topk_group;
    shrink_router(p, E, &top_k, &n_group, &topk_group);
    cJSON *root = cJSON_CreateObject();
    cJSON *t = root;
    if (strcmp(p->family, "gemma4") == 0) {
        cJSON_AddItemToObject(root, "architectures",
                              cJSON_CreateStringArray((const char *[]){"Gemma4ForConditionalGeneration"}, 1));
        cJSON_AddStringToObject(root, "model_type", "gemma4");
        t = cJSON_AddObjectToObject(root, "text_config");
        cJSON_AddStringToObject(t, "model_type", "gemma4_text");
        cJSON_AddNumberToObject(t, "num_experts", E);
        cJSON_AddNumberToObject(t, "top_k_experts", top_k);
        cJSON_AddNumberToObject(t, "moe_intermediate_size", (double)p->I);
        cJSON_AddStringToObject(t, "hidden_activation", "gelu_pytorch_tanh");
        cJSON_AddNumberToObject(t, "rms_norm_eps", 1e-6);
        cJSON_AddBoolToObject(t, "enable_moe_block", 1);
    } else if (p->layout == FAM_FUSED_MXFP4) {
        cJSON_AddItemToObject(root, "architectures", cJSON_CreateStringArray((const char *[]){"GptOssForCausalLM"}, 1));
        cJSON_AddStringToObject(root, "model_type", "gpt_oss");
        cJSON_AddNumberToObject(root, "num_local_experts", E);
        cJSON_AddNumberToObject(root, "num_experts_per_tok", top_k);
        cJSON_AddNumberToObject(root, "experts_per_token", top_k);
        cJSON_AddNumberToObject(root, "intermediate_size", (double)p->I);
        cJSON_AddNumberToObject(root, "swiglu_limit", 7.0);
        cJSON_AddNumberToObject(root, "head_dim", 64);
        cJSON_AddNumberToObject(root, "num_attention_heads", 64);
        cJSON_AddNumberToObject(root, "num_key_value_heads", 8);
        cJSON_AddNumberToObject(root, "sliding_window", 128);
        cJSON_AddNumberToObject(root, "vocab_size", 201088);
        cJSON_AddNumberToObject(root, "rms_norm_eps", 1e-5);
    } else if (strcmp(p->family, "qwen3") == 0) {
        cJSON_AddItemToObject(root, "architectures",
                              cJSON_CreateStringArray((const char *[]){"Qwen3MoeForCausalLM"}, 1));
        cJSON_AddStringToObject(root, "model_type", "qwen3_moe");
        cJSON_AddNumberToObject(root, "num_experts", E);
        cJSON_AddNumberToObject(root, "num_experts_per_tok", top_k);
        cJSON_AddNumberToObject(root, "moe_intermediate_size", (double)p->I);
        cJSON_AddNumberToObject(root, "intermediate_size", 6144);
        cJSON_AddBoolToObject(root, "norm_topk_prob", 1);
        cJSON_AddStringToObject(root, "hidden_act", "silu");
    } else { /* deepseek */
        cJSON_AddItemToObject(root, "architectures",
                              cJSON_CreateStringArray((const char *[]){"DeepseekV3ForCausalLM"}, 1));
        cJSON_AddStringToObject(root, "model_type", "deepseek_v3");
        cJSON_AddNumberToObject(root, "n_routed_experts", E);
        cJSON_AddNumberToObject(root, "n_shared_experts", 0);
        cJSON_AddNumberToObject(root, "first_k_dense_replace", 0);
        cJSON_AddNumberToObject(root, "num_experts_per_tok", top_k);
        cJSON_AddNumberToObject(root, "moe_intermediate_size", (double)p->I);
        cJSON_AddNumberToObject(root, "intermediate_size", 18432);
        cJSON_AddNumberToObject(root, "n_group", n_group);
        cJSON_AddNumberToObject(root, "topk_group", topk_group);
        cJSON_AddNumberToObject(root, "routed_scaling_factor", 2.5);
        cJSON_AddStringToObject(root, "scoring_func", "sigmoid");
        cJSON_AddStringToObject(root, "topk_method", "noaux_tc");
        cJSON_AddBoolToObject(root, "norm_topk_prob", 1);
        cJSON_AddStringToObject(root, "hidden_act", "silu");
    }
    cJSON_AddNumberToObject(t, "hidden_size", (double)p->H);
    cJSON_AddNumberToObject(t, "num_hidden_layers", n_layers);
    cJSON *q = cJSON_AddObjectToObject(root, "quantization_config");
    if (strcmp(p->quant_method, "gpt_oss_mxfp4") == 0) {
        cJSON_AddStringToObject(q, "quant_method", "mxfp4");
        const char *skip[] = {"model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"};
        cJSON_AddItemToObject(q, "modules_to_not_convert", cJSON_CreateStringArray(skip, 4));
    } else if (strcmp(p->quant_method, "w_mxfp4_a_fp8") == 0) {
        cJSON_AddStringToObject(q, "quant_method", "quark");
        cJSON *g = cJSON_AddObjectToObject(q, "global_quant_config");
        cJSON *w = cJSON_AddObjectToObject(g, "weight");
        cJSON_AddStringToObject(w, "dtype", "fp4");
        cJSON_AddStringToObject(w, "qscheme", "per_group");
        cJSON_AddNumberToObject(w, "group_size", 32);
        cJSON_AddStringToObject(w, "scale_format", "e8m0");
        cJSON_AddStringToObject(w, "scale_calculation_mode", "even");
        cJSON *in = cJSON_AddObjectToObject(g, "input_tensors");
        cJSON_AddStringToObject(in, "dtype", "fp8_e4m3");
        cJSON_AddStringToObject(in, "qscheme", "per_tensor");
        cJSON_AddBoolToObject(in, "is_dynamic", 0);
        cJSON_AddItemToObject(q, "exclude",
                              cJSON_CreateStringArray((const char *[]){"lm_head", "*self_attn*", "*router*"}, 3));
    } else if (strcmp(p->quant_method, "fp8_block") == 0) {
        cJSON_AddStringToObject(q, "quant_method", "fp8");
        cJSON_AddStringToObject(q, "fmt", "e4m3");
        cJSON_AddStringToObject(q, "activation_scheme", "dynamic");
        cJSON_AddItemToObject(q, "weight_block_size", cJSON_CreateIntArray((const int[]){128, 128}, 2));
    } else { /* compressed-tensors FP8_DYNAMIC: channel weights, dynamic per-token inputs */
        cJSON_AddStringToObject(q, "quant_method", "compressed-tensors");
        cJSON_AddStringToObject(q, "format", "float-quantized");
        cJSON *g = cJSON_AddObjectToObject(cJSON_AddObjectToObject(q, "config_groups"), "group_0");
        cJSON_AddItemToObject(g, "targets", cJSON_CreateStringArray((const char *[]){"Linear"}, 1));
        cJSON *w = cJSON_AddObjectToObject(g, "weights");
        cJSON_AddNumberToObject(w, "num_bits", 8);
        cJSON_AddStringToObject(w, "type", "float");
        cJSON_AddStringToObject(w, "strategy", "channel");
        cJSON_AddBoolToObject(w, "dynamic", 0);
        cJSON_AddBoolToObject(w, "symmetric", 1);
        cJSON *a = cJSON_AddObjectToObject(g, "input_activations");
        cJSON_AddNumberToObject(a, "num_bits", 8);
        cJSON_AddStringToObject(a, "type", "float");
        cJSON_AddStringToObject(a, "strategy", "token");
        cJSON_AddBoolToObject(a, "dynamic", 1);
        cJSON_AddBoolToObject(a, "symmetric", 1);
        cJSON_AddItemToObject(q, "ignore", cJSON_CreateStringArray((const char *[]){"lm_head", "re:.*gate$"}, 2));
    }
    return root;
}

static mx_status_t check_args(const char *preset, int n_layers, int n_experts, const mxi_preset_t **p_p, int *E_p)
{
    mx_status_t st = find_preset(preset, p_p);
    if (st)
        return st;
    if (n_layers < 1 || n_layers > 4096)
        return mx_error_set(MX_ERR_INVALID, "layers %d: expected 1 .. 4096", n_layers);
    if (n_experts < 0 || n_experts > (*p_p)->E)
        return mx_error_set(MX_ERR_INVALID, "experts %d: preset %s has %d (expected 1 .. %d, or 0 for all)", n_experts,
                            preset, (*p_p)->E, (*p_p)->E);
    *E_p = n_experts ? n_experts : (*p_p)->E;
    return MX_OK;
}

static mx_status_t config_text(const mxi_preset_t *p, int n_layers, int E, char **text_p)
{
    cJSON *j = config_json(p, n_layers, E);
    char *s = j ? cJSON_Print(j) : NULL;
    cJSON_Delete(j);
    if (!s)
        return mx_error_set(MX_ERR_NOMEM, "config of preset %s", p->name);
    *text_p = s;
    return MX_OK;
}

mx_status_t mx_synth_config_ex(const char *preset, int n_layers, int n_experts, mx_model_config_t *config_p)
{
    const mxi_preset_t *p;
    int E;
    mx_status_t st = check_args(preset, n_layers, n_experts, &p, &E);
    if (st)
        return st;
    if (!config_p)
        return mx_error_set(MX_ERR_INVALID, "mx_synth_config: NULL output");
    char *text = NULL;
    if ((st = config_text(p, n_layers, E, &text)))
        return st;
    /* the same normalization a reader of the written file gets */
    st = mx_ckpt_config_parse(text, strlen(text), preset, config_p);
    free(text);
    return st;
}

mx_status_t mx_synth_config(const char *preset, int n_layers, mx_model_config_t *config_p)
{
    return mx_synth_config_ex(preset, n_layers, 0, config_p);
}

/* ---------------------------------------------------------------- in memory */
static mx_status_t check_config_layer(const mx_model_config_t *c, int layer, const mxi_preset_t **p_p)
{
    if (!c)
        return mx_error_set(MX_ERR_INVALID, "synthetic model: NULL config");
    mx_status_t st = preset_of_config(c, p_p);
    if (st)
        return st;
    if (layer < 0 || layer >= c->n_layers)
        return mx_error_set(MX_ERR_INVALID, "layer %d out of range (the model has %d layers)", layer, c->n_layers);
    pthread_once(&tabs_once, build_tabs);
    return MX_OK;
}

mx_status_t mx_synth_router(const mx_model_config_t *c, uint64_t seed, int layer, mx_router_weights_t *router_p)
{
    const mxi_preset_t *p;
    mx_status_t st = check_config_layer(c, layer, &p);
    if (st)
        return st;
    if (!router_p)
        return mx_error_set(MX_ERR_INVALID, "mx_synth_router: NULL output");
    int E = c->n_experts;
    size_t H = p->H;
    mx_router_weights_t r = {.n_experts = E, .hidden = H, .rms_eps = c->rms_norm_eps};
    const int gemma = p->router == MX_ROUTER_GEMMA4;
    uint16_t *tmp = malloc((size_t)E * H * 2);
    r.weight = malloc((size_t)E * H * sizeof(float));
    if (p->router_b)
        r.bias = malloc((size_t)E * sizeof(float));
    if (p->correction_bias)
        r.correction_bias = malloc((size_t)E * sizeof(float));
    if (gemma) {
        r.scale = malloc(H * sizeof(float));
        r.per_expert_scale = malloc((size_t)E * sizeof(float));
    }
    if (!tmp || !r.weight || (p->router_b && !r.bias) || (p->correction_bias && !r.correction_bias) ||
        (gemma && (!r.scale || !r.per_expert_scale))) {
        free(tmp);
        mx_router_weights_fini(&r);
        return mx_error_set(MX_ERR_NOMEM, "router of %d x %zu", E, H);
    }
    gen_part(p, seed, layer, -1, E, P_ROUTER_W, (uint8_t *)tmp);
    mx_quant_bf16_to_f32_n(tmp, (size_t)E * H, r.weight);
    if (r.bias) {
        gen_part(p, seed, layer, -1, E, P_ROUTER_B, (uint8_t *)tmp);
        mx_quant_bf16_to_f32_n(tmp, (size_t)E, r.bias);
    }
    if (r.correction_bias)
        gen_part(p, seed, layer, -1, E, P_ROUTER_CB, (uint8_t *)r.correction_bias);
    if (gemma) {
        gen_part(p, seed, layer, -1, E, P_ROUTER_SCALE, (uint8_t *)tmp);
        mx_quant_bf16_to_f32_n(tmp, H, r.scale);
        gen_part(p, seed, layer, -1, E, P_ROUTER_PES, (uint8_t *)tmp);
        mx_quant_bf16_to_f32_n(tmp, (size_t)E, r.per_expert_scale);
    }
    free(tmp);
    *router_p = r;
    return MX_OK;
}

mx_status_t mx_synth_experts(const mx_model_config_t *c, uint64_t seed, int layer, const int *ids, int n_ids,
                             mx_expert_set_h *set_p)
{
    const mxi_preset_t *p;
    mx_status_t st = check_config_layer(c, layer, &p);
    if (st)
        return st;
    if (!set_p || n_ids < 0 || (n_ids && !ids))
        return mx_error_set(MX_ERR_INVALID, "mx_synth_experts: bad arguments");
    for (int i = 0; i < n_ids; i++) {
        if (ids[i] < 0 || ids[i] >= c->n_experts)
            return mx_error_set(MX_ERR_INVALID, "expert id %d out of range (the model has %d experts)", ids[i],
                                c->n_experts);
        for (int k = 0; k < i; k++)
            if (ids[k] == ids[i])
                return mx_error_set(MX_ERR_INVALID, "expert id %d listed twice", ids[i]);
    }
    mx_expert_set_h set;
    if ((st = mxi_expert_set_create(ids, n_ids, &set)))
        return st;
    size_t H = p->H, I = p->I;
    int E = c->n_experts;
    uint16_t *tmp = malloc((2 * I > H ? 2 * I : H) * 2);
    if (!tmp) {
        mx_expert_set_destroy(set);
        return mx_error_set(MX_ERR_NOMEM, "bias buffer");
    }
    for (int i = 0; i < n_ids && !st; i++) {
        int j = ids[i];
        mx_expert_weights_t *w = &set->w[i];
        if (p->layout == FAM_FUSED_MXFP4) {
            w->gate_up = (mx_matrix_t){MX_WFMT_MXFP4, MX_WSCALE_E8M0_32, 2 * I, H, NULL, NULL};
            w->down = (mx_matrix_t){MX_WFMT_MXFP4, MX_WSCALE_E8M0_32, H, I, NULL, NULL};
        } else {
            w->gate_up = (mx_matrix_t){MX_WFMT_FP8, p->sk, 2 * I, H, NULL, NULL};
            w->down = (mx_matrix_t){MX_WFMT_FP8, p->sk, H, I, NULL, NULL};
        }
        if ((st = mxi_expert_alloc(set, i, p->biases, p->biases)))
            break;
        uint8_t *gd = (uint8_t *)w->gate_up.data, *gs = (uint8_t *)w->gate_up.scales;
        gen_part(p, seed, layer, j, E, P_GU_DATA, gd);
        gen_part(p, seed, layer, j, E, P_GU_SCALES, gs);
        if (p->layout == FAM_2D_FP8) {
            gen_part(p, seed, layer, j, E, P_UP_DATA, gd + part_bytes(p, E, P_GU_DATA));
            gen_part(p, seed, layer, j, E, P_UP_SCALES, gs + part_bytes(p, E, P_GU_SCALES));
        }
        gen_part(p, seed, layer, j, E, P_DN_DATA, (uint8_t *)w->down.data);
        gen_part(p, seed, layer, j, E, P_DN_SCALES, (uint8_t *)w->down.scales);
        if (p->biases) {
            gen_part(p, seed, layer, j, E, P_GU_BIAS, (uint8_t *)tmp);
            mx_quant_bf16_to_f32_n(tmp, 2 * I, (float *)w->gate_up_bias);
            gen_part(p, seed, layer, j, E, P_DN_BIAS, (uint8_t *)tmp);
            mx_quant_bf16_to_f32_n(tmp, H, (float *)w->down_bias);
        }
        if (p->input_scales) {
            gen_part(p, seed, layer, j, E, P_GU_IN, (uint8_t *)&w->input_scale);
            gen_part(p, seed, layer, j, E, P_DN_IN, (uint8_t *)&w->down_input_scale);
        }
    }
    free(tmp);
    if (st) {
        mx_expert_set_destroy(set);
        return st;
    }
    *set_p = set;
    return MX_OK;
}

/* ---------------------------------------------------------------- the file plan */
typedef struct {
    char name[128];
    mx_st_dtype_t dtype;
    int ndim;
    int64_t shape[4];
    size_t nbytes;
    int layer;
    int expert; /* -1: fused over all experts (or a router tensor) */
    part_t part;
    int shard;
    size_t offset; /* within its shard's data */
} wt_t;

typedef struct {
    wt_t *t;
    int n, cap;
} plan_t;

static mx_status_t plan_add(plan_t *pl, const char *prefix, const char *suffix, mx_st_dtype_t dt, int nd,
                            const int64_t *shape, int layer, int expert, part_t part, size_t nbytes)
{
    if (pl->n == pl->cap) {
        int nc = pl->cap ? pl->cap * 2 : 64;
        wt_t *nt = realloc(pl->t, (size_t)nc * sizeof *nt);
        if (!nt)
            return mx_error_set(MX_ERR_NOMEM, "plan of %d tensors", nc);
        pl->t = nt;
        pl->cap = nc;
    }
    wt_t *t = &pl->t[pl->n++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s%s", prefix, suffix);
    t->dtype = dt;
    t->ndim = nd;
    memcpy(t->shape, shape, (size_t)nd * sizeof *shape);
    t->layer = layer;
    t->expert = expert;
    t->part = part;
    t->nbytes = nbytes;
    return MX_OK;
}

static mx_status_t make_plan(const mxi_preset_t *p, int n_layers, int E, plan_t *pl)
{
    int64_t H = (int64_t)p->H, I = (int64_t)p->I;
    mx_status_t st = MX_OK;
    char P[128];
    for (int L = 0; L < n_layers && !st; L++) {
        snprintf(P, sizeof P, p->prefix, L);
        int64_t rw[2] = {E, H}, rb[1] = {E};
        st = plan_add(pl, P, p->router_w, MX_ST_BF16, 2, rw, L, -1, P_ROUTER_W, part_bytes(p, E, P_ROUTER_W));
        if (!st && p->router_b)
            st = plan_add(pl, P, p->router_b, MX_ST_BF16, 1, rb, L, -1, P_ROUTER_B, part_bytes(p, E, P_ROUTER_B));
        if (!st && p->correction_bias)
            st = plan_add(pl, P, "gate.e_score_correction_bias", MX_ST_F32, 1, rb, L, -1, P_ROUTER_CB,
                          part_bytes(p, E, P_ROUTER_CB));
        if (!st && p->router == MX_ROUTER_GEMMA4) {
            int64_t rh[1] = {H};
            st = plan_add(pl, P, "router.scale", MX_ST_BF16, 1, rh, L, -1, P_ROUTER_SCALE,
                          part_bytes(p, E, P_ROUTER_SCALE));
            if (!st)
                st = plan_add(pl, P, "router.per_expert_scale", MX_ST_BF16, 1, rb, L, -1, P_ROUTER_PES,
                              part_bytes(p, E, P_ROUTER_PES));
        }
        if (st)
            break;
        if (p->layout == FAM_FUSED_MXFP4) {
            int64_t gb[4] = {E, 2 * I, H / 32, 16}, gs[3] = {E, 2 * I, H / 32}, gbi[2] = {E, 2 * I};
            int64_t db[4] = {E, H, I / 32, 16}, ds[3] = {E, H, I / 32}, dbi[2] = {E, H}, in[1] = {E};
            size_t e = (size_t)E;
            if ((st = plan_add(pl, P, "experts.gate_up_proj_blocks", MX_ST_U8, 4, gb, L, -1, P_GU_DATA,
                               e * part_bytes(p, E, P_GU_DATA))) ||
                (st = plan_add(pl, P, "experts.gate_up_proj_scales", MX_ST_U8, 3, gs, L, -1, P_GU_SCALES,
                               e * part_bytes(p, E, P_GU_SCALES))) ||
                (st = plan_add(pl, P, "experts.gate_up_proj_bias", MX_ST_BF16, 2, gbi, L, -1, P_GU_BIAS,
                               e * part_bytes(p, E, P_GU_BIAS))) ||
                (st = plan_add(pl, P, "experts.down_proj_blocks", MX_ST_U8, 4, db, L, -1, P_DN_DATA,
                               e * part_bytes(p, E, P_DN_DATA))) ||
                (st = plan_add(pl, P, "experts.down_proj_scales", MX_ST_U8, 3, ds, L, -1, P_DN_SCALES,
                               e * part_bytes(p, E, P_DN_SCALES))) ||
                (st = plan_add(pl, P, "experts.down_proj_bias", MX_ST_BF16, 2, dbi, L, -1, P_DN_BIAS,
                               e * part_bytes(p, E, P_DN_BIAS))))
                break;
            if (p->input_scales &&
                ((st = plan_add(pl, P, "experts.gate_up_proj_input_scale", MX_ST_F32, 1, in, L, -1, P_GU_IN, e * 4)) ||
                 (st = plan_add(pl, P, "experts.down_proj_input_scale", MX_ST_F32, 1, in, L, -1, P_DN_IN, e * 4))))
                break;
        } else {
            const char *sname = p->sk == MX_WSCALE_BLOCK ? "weight_scale_inv" : "weight_scale";
            for (int j = 0; j < E && !st; j++) {
                static const char *const proj[3] = {"gate_proj", "up_proj", "down_proj"};
                static const part_t dp[3] = {P_GU_DATA, P_UP_DATA, P_DN_DATA},
                                    sp[3] = {P_GU_SCALES, P_UP_SCALES, P_DN_SCALES};
                for (int k = 0; k < 3 && !st; k++) {
                    int64_t rows = k < 2 ? I : H, cols = k < 2 ? H : I;
                    int64_t w[2] = {rows, cols};
                    int64_t s[2];
                    if (p->sk == MX_WSCALE_BLOCK) {
                        s[0] = (rows + 127) / 128;
                        s[1] = (cols + 127) / 128;
                    } else {
                        s[0] = rows;
                        s[1] = 1;
                    }
                    char sfx[96];
                    snprintf(sfx, sizeof sfx, "experts.%d.%s.weight", j, proj[k]);
                    if ((st = plan_add(pl, P, sfx, MX_ST_F8_E4M3, 2, w, L, j, dp[k], part_bytes(p, E, dp[k]))))
                        break;
                    snprintf(sfx, sizeof sfx, "experts.%d.%s.%s", j, proj[k], sname);
                    st = plan_add(pl, P, sfx, MX_ST_F32, 2, s, L, j, sp[k], part_bytes(p, E, sp[k]));
                }
            }
        }
    }
    return st;
}

/* Shards by size; offsets within each shard. Returns the shard count. */
static int assign_shards(plan_t *pl, size_t shard_bytes)
{
    int shard = 0;
    size_t used = 0;
    for (int i = 0; i < pl->n; i++) {
        if (used && used + pl->t[i].nbytes > shard_bytes) {
            shard++;
            used = 0;
        }
        pl->t[i].shard = shard;
        pl->t[i].offset = used;
        used += pl->t[i].nbytes;
    }
    return shard + 1;
}

/* The 8-byte length + JSON header (padded with spaces to a multiple of 8) of one shard. */
static mx_status_t shard_header(const plan_t *pl, int shard, uint8_t **hdr_p, size_t *len_p)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *meta = cJSON_AddObjectToObject(root, "__metadata__");
    cJSON_AddStringToObject(meta, "format", "pt");
    cJSON_AddStringToObject(meta, "producer", "mxep mxckpt");
    for (int i = 0; i < pl->n; i++) {
        const wt_t *t = &pl->t[i];
        if (t->shard != shard)
            continue;
        cJSON *e = cJSON_AddObjectToObject(root, t->name);
        cJSON_AddStringToObject(e, "dtype", mx_st_dtype_name(t->dtype));
        cJSON *sh = cJSON_AddArrayToObject(e, "shape");
        for (int d = 0; d < t->ndim; d++)
            cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)t->shape[d]));
        cJSON *off = cJSON_AddArrayToObject(e, "data_offsets");
        cJSON_AddItemToArray(off, cJSON_CreateNumber((double)t->offset));
        cJSON_AddItemToArray(off, cJSON_CreateNumber((double)(t->offset + t->nbytes)));
    }
    char *js = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!js)
        return mx_error_set(MX_ERR_NOMEM, "safetensors header");
    size_t n = strlen(js);
    size_t padded = (n + 7) & ~(size_t)7;
    uint8_t *h = malloc(8 + padded);
    if (!h) {
        free(js);
        return mx_error_set(MX_ERR_NOMEM, "safetensors header");
    }
    for (int i = 0; i < 8; i++)
        h[i] = (uint8_t)(((uint64_t)padded >> (8 * i)) & 0xFF);
    memcpy(h + 8, js, n);
    memset(h + 8 + n, ' ', padded - n);
    free(js);
    *hdr_p = h;
    *len_p = 8 + padded;
    return MX_OK;
}

static void shard_name(int shard, int n_shards, char *buf, size_t cap)
{
    if (n_shards == 1)
        snprintf(buf, cap, "model.safetensors");
    else
        snprintf(buf, cap, "model-%05d-of-%05d.safetensors", shard + 1, n_shards);
}

static mx_status_t index_text(const plan_t *pl, int n_shards, char **text_p)
{
    cJSON *root = cJSON_CreateObject();
    size_t total = 0;
    for (int i = 0; i < pl->n; i++)
        total += pl->t[i].nbytes;
    cJSON_AddNumberToObject(cJSON_AddObjectToObject(root, "metadata"), "total_size", (double)total);
    cJSON *wm = cJSON_AddObjectToObject(root, "weight_map");
    char sn[64];
    for (int i = 0; i < pl->n; i++) {
        shard_name(pl->t[i].shard, n_shards, sn, sizeof sn);
        cJSON_AddStringToObject(wm, pl->t[i].name, sn);
    }
    char *s = cJSON_Print(root);
    cJSON_Delete(root);
    if (!s)
        return mx_error_set(MX_ERR_NOMEM, "index");
    *text_p = s;
    return MX_OK;
}

/* ---------------------------------------------------------------- writing */
static mx_status_t write_all(FILE *f, const void *buf, size_t n, const char *path)
{
    if (n && fwrite(buf, 1, n, f) != n)
        return mx_error_set(MX_ERR_IO, "%s: write of %zu bytes failed: %s", path, n, strerror(errno));
    return MX_OK;
}

static mx_status_t write_text_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return mx_error_set(MX_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
    mx_status_t st = write_all(f, text, strlen(text), path);
    if (fclose(f) != 0 && !st)
        st = mx_error_set(MX_ERR_IO, "%s: close failed: %s", path, strerror(errno));
    return st;
}

static void remove_tree(const char *dir)
{
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                continue;
            char p[4096];
            snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
            unlink(p);
        }
        closedir(d);
    }
    rmdir(dir);
}

/* mx_synth_write's progress: reported at every 1% more of the bytes (*last: the
 * fraction reported last); MX_ERR_IO when the callback asks to stop. */
static mx_status_t report_progress(int (*progress)(double fraction, void *arg), void *arg, size_t done, size_t total,
                                   double *last, const char *out_dir)
{
    if (!progress || (double)done / (double)total - *last < 0.01)
        return MX_OK;
    *last = (double)done / (double)total;
    if (progress(*last, arg))
        return mx_error_set(MX_ERR_IO, "%s: stopped by the caller at %.0f%% (nothing written)", out_dir, 100.0 * *last);
    return MX_OK;
}

mx_status_t mx_synth_write_ex(const char *preset, int n_layers, int n_experts, uint64_t seed, const char *out_dir,
                              size_t shard_bytes, int (*progress)(double fraction, void *arg), void *arg)
{
    const mxi_preset_t *p;
    int E;
    mx_status_t st = check_args(preset, n_layers, n_experts, &p, &E);
    if (st)
        return st;
    if (!out_dir || !*out_dir)
        return mx_error_set(MX_ERR_INVALID, "output directory not given");
    if (strlen(out_dir) > 3000)
        return mx_error_set(MX_ERR_INVALID, "output directory name too long");
    struct stat sb;
    if (stat(out_dir, &sb) == 0)
        return mx_error_set(MX_ERR_INVALID,
                            "%s already exists (mxckpt writes a new directory; remove it or pick another)", out_dir);
    if (!shard_bytes)
        shard_bytes = (size_t)4 << 30;
    pthread_once(&tabs_once, build_tabs);

    plan_t pl = {0};
    char tmp[3100], path[3200], sn[64];
    char *text = NULL;
    uint8_t *buf = NULL, *hdr = NULL;
    FILE *f = NULL;
    int made_tmp = 0;
    snprintf(tmp, sizeof tmp, "%s.tmp-%ld", out_dir, (long)getpid());
    if ((st = make_plan(p, n_layers, E, &pl)))
        goto fail;
    int n_shards = assign_shards(&pl, shard_bytes);
    size_t total = 0, maxpart = 0;
    for (int i = 0; i < pl.n; i++) {
        total += pl.t[i].nbytes;
        size_t per = pl.t[i].expert < 0 && pl.t[i].part < P_ROUTER_W ? pl.t[i].nbytes / (size_t)E : pl.t[i].nbytes;
        if (per > maxpart)
            maxpart = per;
    }
    if (!(buf = malloc(maxpart ? maxpart : 1))) {
        st = mx_error_set(MX_ERR_NOMEM, "write buffer of %zu bytes", maxpart);
        goto fail;
    }
    if (mkdir(tmp, 0755) != 0) {
        st = mx_error_set(MX_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
        goto fail;
    }
    made_tmp = 1;
    size_t done = 0;
    double last = -1.0;
    for (int s = 0; s < n_shards; s++) {
        size_t hlen;
        shard_name(s, n_shards, sn, sizeof sn);
        snprintf(path, sizeof path, "%s/%s", tmp, sn);
        if ((st = shard_header(&pl, s, &hdr, &hlen)))
            goto fail;
        if (!(f = fopen(path, "wb"))) {
            st = mx_error_set(MX_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
            goto fail;
        }
        if ((st = write_all(f, hdr, hlen, path)))
            goto fail;
        free(hdr);
        hdr = NULL;
        for (int i = 0; i < pl.n; i++) {
            const wt_t *t = &pl.t[i];
            if (t->shard != s)
                continue;
            if (t->expert >= 0 || t->part >= P_ROUTER_W) {
                gen_part(p, seed, t->layer, t->expert, E, t->part, buf);
                if ((st = write_all(f, buf, t->nbytes, path)))
                    goto fail;
                done += t->nbytes;
            } else {
                size_t per = t->nbytes / (size_t)E;
                for (int j = 0; j < E; j++) {
                    gen_part(p, seed, t->layer, j, E, t->part, buf);
                    if ((st = write_all(f, buf, per, path)))
                        goto fail;
                    done += per;
                    if ((st = report_progress(progress, arg, done, total, &last, out_dir)))
                        goto fail;
                }
            }
            if ((st = report_progress(progress, arg, done, total, &last, out_dir)))
                goto fail;
        }
        int bad = fflush(f) != 0 || fsync(fileno(f)) != 0;
        if (fclose(f) != 0 || bad) {
            f = NULL;
            st = mx_error_set(MX_ERR_IO, "%s: write failed: %s", path, strerror(errno));
            goto fail;
        }
        f = NULL;
    }
    if (n_shards > 1) {
        if ((st = index_text(&pl, n_shards, &text)))
            goto fail;
        snprintf(path, sizeof path, "%s/model.safetensors.index.json", tmp);
        if ((st = write_text_file(path, text)))
            goto fail;
        free(text);
        text = NULL;
    }
    if ((st = config_text(p, n_layers, E, &text)))
        goto fail;
    snprintf(path, sizeof path, "%s/config.json", tmp);
    if ((st = write_text_file(path, text)))
        goto fail;
    if (rename(tmp, out_dir) != 0) {
        st = mx_error_set(MX_ERR_IO, "cannot rename %s to %s: %s", tmp, out_dir, strerror(errno));
        goto fail;
    }
    if (progress)
        (void)progress(1.0, arg); /* done: written and renamed, nothing left to stop */
    free(text);
    free(buf);
    free(pl.t);
    return MX_OK;
fail:
    if (f)
        fclose(f);
    if (made_tmp)
        remove_tree(tmp);
    free(hdr);
    free(text);
    free(buf);
    free(pl.t);
    return st;
}

mx_status_t mx_synth_write(const char *preset, int n_layers, uint64_t seed, const char *out_dir, size_t shard_bytes,
                           int (*progress)(double fraction, void *arg), void *arg)
{
    return mx_synth_write_ex(preset, n_layers, 0, seed, out_dir, shard_bytes, progress, arg);
}

/* ---------------------------------------------------------------- fuzz seeds */
static mx_status_t write_seed(const char *dir, const char *name, uint8_t sel, const void *data, size_t n)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f)
        return mx_error_set(MX_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
    int bad = fwrite(&sel, 1, 1, f) != 1 || (n && fwrite(data, 1, n, f) != n);
    if (fclose(f) != 0 || bad)
        return mx_error_set(MX_ERR_IO, "%s: write failed", path);
    return MX_OK;
}

mx_status_t mxi_synth_fuzz_seeds(const char *dir)
{
    mx_status_t st = MX_OK;
    pthread_once(&tabs_once, build_tabs);
    for (int i = 0; i < N_PRESETS && !st; i++) {
        const mxi_preset_t *p = &presets[i];
        int E = p->E > 8 ? 8 : p->E;
        plan_t pl = {0};
        char *text = NULL;
        uint8_t *hdr = NULL;
        size_t hlen;
        char name[128];
        if ((st = make_plan(p, 1, E, &pl)))
            break;
        int n_shards = assign_shards(&pl, (size_t)64 << 20);
        if (!(st = shard_header(&pl, 0, &hdr, &hlen))) {
            snprintf(name, sizeof name, "st-%s", p->name);
            /* tiny: the whole file; others: the header with a short data area */
            size_t data = 0;
            for (int k = 0; k < pl.n; k++)
                if (pl.t[k].shard == 0)
                    data += pl.t[k].nbytes;
            if (data > (1u << 20))
                data = 0;
            uint8_t *img = calloc(1, hlen + data + 1);
            if (!img)
                st = mx_error_set(MX_ERR_NOMEM, "seed");
            else {
                memcpy(img, hdr, hlen);
                st = write_seed(dir, name, 0, img, hlen + data);
                free(img);
            }
        }
        if (!st && !(st = index_text(&pl, n_shards > 1 ? n_shards : 2, &text))) {
            snprintf(name, sizeof name, "idx-%s", p->name);
            st = write_seed(dir, name, 1, text, strlen(text));
            free(text);
            text = NULL;
        }
        if (!st && !(st = config_text(p, 2, p->E, &text))) {
            snprintf(name, sizeof name, "cfg-%s", p->name);
            st = write_seed(dir, name, 2, text, strlen(text));
            free(text);
        }
        free(hdr);
        free(pl.t);
    }
    return st;
}
