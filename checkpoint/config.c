/* config.json -> mx_model_config_t, with the quantization-method normalization
 * of FORMATS.md Part 1. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "ckpt_internal.h"

/* Looks a key up in text_config first (multimodal models), then the root. */
typedef struct {
    const cJSON *text;
    const cJSON *root;
} cfgsrc_t;

static const cJSON *get(const cfgsrc_t *c, const char *key)
{
    const cJSON *v = c->text ? cJSON_GetObjectItemCaseSensitive(c->text, key) : NULL;
    if (v && !cJSON_IsNull(v))
        return v;
    v = cJSON_GetObjectItemCaseSensitive(c->root, key);
    return v && !cJSON_IsNull(v) ? v : NULL;
}

/* First of the keys that is present; returns its name in *which. */
static const cJSON *get_any(const cfgsrc_t *c, const char *const *keys, const char **which)
{
    for (; *keys; keys++) {
        const cJSON *v = get(c, *keys);
        if (v) {
            if (which)
                *which = *keys;
            return v;
        }
    }
    return NULL;
}

static mx_status_t get_int(const cfgsrc_t *c, const char *src, const char *const *keys, int required, long long lo,
                           long long hi, long long *v_p)
{
    const char *which = keys[0];
    const cJSON *v = get_any(c, keys, &which);
    if (!v) {
        if (!required)
            return MX_OK;
        char list[256] = "";
        for (const char *const *k = keys; *k; k++)
            snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", k == keys ? "" : " or ", *k);
        return mx_error_set(MX_ERR_FORMAT, "%s: missing \"%s\" (expected an integer)", src, list);
    }
    if (!cJSON_IsNumber(v) || floor(v->valuedouble) != v->valuedouble || v->valuedouble < (double)lo ||
        v->valuedouble > (double)hi)
        return mx_error_set(MX_ERR_FORMAT, "%s: \"%s\" must be an integer in [%lld, %lld]", src, which, lo, hi);
    *v_p = (long long)v->valuedouble;
    return MX_OK;
}

static mx_status_t get_float(const cfgsrc_t *c, const char *src, const char *key, float *v_p)
{
    const cJSON *v = get(c, key);
    if (!v)
        return MX_OK;
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
        return mx_error_set(MX_ERR_FORMAT, "%s: \"%s\" must be a finite number", src, key);
    *v_p = (float)v->valuedouble;
    return MX_OK;
}

static mx_status_t get_bool(const cfgsrc_t *c, const char *src, const char *key, int *v_p)
{
    const cJSON *v = get(c, key);
    if (!v)
        return MX_OK;
    if (!cJSON_IsBool(v))
        return mx_error_set(MX_ERR_FORMAT, "%s: \"%s\" must be true or false", src, key);
    *v_p = cJSON_IsTrue(v) ? 1 : 0;
    return MX_OK;
}

static int starts(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* String field `key` of object o (`in`: where o is, for the message), NULL
 * when absent or null; any other type sets *st (the first error wins) and
 * gives NULL, so that a field of the wrong type is refused, not taken as absent. */
static const char *str_of(const cJSON *o, const char *key, const char *src, const char *in, mx_status_t *st)
{
    const cJSON *v = o ? cJSON_GetObjectItemCaseSensitive(o, key) : NULL;
    if (!v || cJSON_IsNull(v))
        return NULL;
    if (cJSON_IsString(v))
        return v->valuestring;
    if (*st == MX_OK)
        *st = mx_error_set(MX_ERR_FORMAT, "%s: \"%s\"%s%s must be a string", src, key, in ? " in " : "", in ? in : "");
    return NULL;
}

/* Integer field `key` of object o: dflt when absent or null; a value that is not
 * a whole number in [lo, hi] sets *st (the first error wins) and gives dflt. */
static int int_of(const cJSON *o, const char *key, int dflt, int lo, int hi, const char *src, const char *in,
                  mx_status_t *st)
{
    const cJSON *v = o ? cJSON_GetObjectItemCaseSensitive(o, key) : NULL;
    if (!v || cJSON_IsNull(v))
        return dflt;
    if (cJSON_IsNumber(v) && floor(v->valuedouble) == v->valuedouble && v->valuedouble >= lo && v->valuedouble <= hi)
        return (int)v->valuedouble;
    if (*st == MX_OK)
        *st = mx_error_set(MX_ERR_FORMAT, "%s: \"%s\"%s%s must be an integer in [%d, %d]", src, key, in ? " in " : "",
                           in ? in : "", lo, hi);
    return dflt;
}

static void set_quant(mx_model_config_t *m, const char *method, mx_scheme_t scheme, int act_group)
{
    snprintf(m->quant_method, sizeof m->quant_method, "%s", method);
    m->moe.scheme = scheme;
    m->moe.act_group = act_group;
}

void mxi_config_set_mxfp4(mx_model_config_t *m)
{
    /* gpt-oss's own MXFP4 only when the model says it is gpt-oss; a config with no model type is never claimed */
    set_quant(m, strcmp(m->model_type, "gpt_oss") == 0 ? "gpt_oss_mxfp4" : "mxfp4", MX_SCHEME_W4A16, 0);
}

/* compressed-tensors: the first config group names the weight and input formats. */
static mx_status_t norm_compressed_tensors(const cJSON *q, const char *src, mx_model_config_t *m)
{
    const cJSON *groups = cJSON_GetObjectItemCaseSensitive(q, "config_groups");
    const cJSON *g = cJSON_IsObject(groups) ? groups->child : NULL;
    if (!cJSON_IsObject(g))
        return mx_error_set(MX_ERR_FORMAT, "%s: compressed-tensors quantization_config without config_groups", src);
    const cJSON *w = cJSON_GetObjectItemCaseSensitive(g, "weights");
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(g, "input_activations");
    if (!cJSON_IsObject(w))
        return mx_error_set(MX_ERR_FORMAT, "%s: compressed-tensors group '%s' has no \"weights\" object", src,
                            g->string ? g->string : "?");
    mx_status_t st = MX_OK;
    const char *type = str_of(w, "type", src, "weights", &st);
    const char *strat = str_of(w, "strategy", src, "weights", &st);
    int nb = int_of(w, "num_bits", 0, 1, 64, src, "weights", &st);
    int act = cJSON_IsObject(a);
    int act_group = 0;
    int act_static = 0;
    if (act) {
        const char *as = str_of(a, "strategy", src, "input_activations", &st);
        const cJSON *dyn = cJSON_GetObjectItemCaseSensitive(a, "dynamic");
        act_static = cJSON_IsFalse(dyn);
        if (as && strcmp(as, "group") == 0)
            act_group = int_of(a, "group_size", 128, 1, 1 << 20, src, "input_activations", &st);
    }
    if (st)
        return st;
    if (nb == 8 && type && strcmp(type, "float") == 0 && strat) {
        mx_scheme_t s = act ? MX_SCHEME_W8A8 : MX_SCHEME_W8A16;
        if (strcmp(strat, "channel") == 0)
            set_quant(m, "fp8_channel", s, act_group);
        else if (strcmp(strat, "block") == 0)
            set_quant(m, "fp8_block", s, act_group ? act_group : 128);
        else if (strcmp(strat, "tensor") == 0)
            set_quant(m, "fp8_tensor", s, act_group);
        else
            return mx_error_set(MX_ERR_UNSUPPORTED,
                                "%s: compressed-tensors FP8 weight strategy '%s' (expected channel, block or tensor)",
                                src, strat);
        (void)act_static;
        return MX_OK;
    }
    if (nb == 4 && type && strcmp(type, "float") == 0) {
        if (int_of(w, "group_size", 0, 0, 1 << 20, src, "weights", &st) != 32 || st)
            return st ? st
                      : mx_error_set(MX_ERR_UNSUPPORTED,
                                     "%s: compressed-tensors 4-bit float weights need group_size 32 (MXFP4)", src);
        if (act && act_static)
            set_quant(m, "w_mxfp4_a_fp8", MX_SCHEME_W4A8, 0);
        else
            set_quant(m, "mxfp4", MX_SCHEME_W4A16, 0);
        return MX_OK;
    }
    return mx_error_set(MX_ERR_UNSUPPORTED,
                        "%s: compressed-tensors weights of %d bits, type '%s', strategy '%s' are not supported "
                        "(expected FP8 channel/block/tensor or MXFP4)",
                        src, nb, type ? type : "?", strat ? strat : "?");
}

/* Quark: global_quant_config.weight / input_tensors. */
static mx_status_t norm_quark(const cJSON *q, const char *src, mx_model_config_t *m)
{
    const cJSON *g = cJSON_GetObjectItemCaseSensitive(q, "global_quant_config");
    if (!cJSON_IsObject(g))
        return mx_error_set(MX_ERR_FORMAT, "%s: quark quantization_config without global_quant_config", src);
    const cJSON *w = cJSON_GetObjectItemCaseSensitive(g, "weight");
    if (cJSON_IsArray(w))
        w = cJSON_GetArrayItem(w, 0);
    const cJSON *in = cJSON_GetObjectItemCaseSensitive(g, "input_tensors");
    if (cJSON_IsArray(in))
        in = cJSON_GetArrayItem(in, 0);
    mx_status_t st = MX_OK;
    const char *wd = str_of(w, "dtype", src, "global_quant_config.weight", &st);
    const char *id = cJSON_IsObject(in) ? str_of(in, "dtype", src, "global_quant_config.input_tensors", &st) : NULL;
    if (st)
        return st;
    if (!wd)
        return mx_error_set(MX_ERR_FORMAT, "%s: quark global_quant_config.weight.dtype missing", src);
    if (strcmp(wd, "fp4") == 0 || strcmp(wd, "mxfp4") == 0) {
        if (!id)
            set_quant(m, "mxfp4", MX_SCHEME_W4A16, 0);
        else if (strcmp(id, "fp8_e4m3") == 0)
            set_quant(m, "w_mxfp4_a_fp8", MX_SCHEME_W4A8, 0);
        else
            return mx_error_set(MX_ERR_UNSUPPORTED,
                                "%s: quark MXFP4 weights with '%s' inputs (expected none or fp8_e4m3)", src, id);
        return MX_OK;
    }
    if (strcmp(wd, "fp8_e4m3") == 0) {
        const char *qs = str_of(w, "qscheme", src, "global_quant_config.weight", &st);
        if (st)
            return st;
        mx_scheme_t s = id ? MX_SCHEME_W8A8 : MX_SCHEME_W8A16;
        if (qs && strcmp(qs, "per_channel") == 0)
            set_quant(m, "fp8_channel", s, 0);
        else
            set_quant(m, "fp8_tensor", s, 0);
        return MX_OK;
    }
    return mx_error_set(MX_ERR_UNSUPPORTED, "%s: quark weight dtype '%s' (expected fp4 or fp8_e4m3)", src, wd);
}

static mx_status_t norm_quant(const cfgsrc_t *c, const char *src, mx_model_config_t *m)
{
    const cJSON *q = get(c, "quantization_config");
    if (!q) {
        set_quant(m, "none", MX_SCHEME_W16A16, 0);
        return MX_OK;
    }
    if (!cJSON_IsObject(q))
        return mx_error_set(MX_ERR_FORMAT, "%s: \"quantization_config\" must be an object", src);
    mx_status_t st = MX_OK;
    const char *qm = str_of(q, "quant_method", src, "quantization_config", &st);
    if (st)
        return st;
    if (!qm)
        return mx_error_set(MX_ERR_FORMAT, "%s: quantization_config has no string \"quant_method\"", src);
    if (strcasecmp(qm, "mxfp4") == 0) {
        mxi_config_set_mxfp4(m);
        return MX_OK;
    }
    if (strcasecmp(qm, "fp8") == 0) {
        const cJSON *bs = cJSON_GetObjectItemCaseSensitive(q, "weight_block_size");
        const char *fmt = str_of(q, "fmt", src, "quantization_config", &st);
        const char *as = str_of(q, "activation_scheme", src, "quantization_config", &st);
        if (st)
            return st;
        if (fmt && strcmp(fmt, "e4m3") != 0)
            return mx_error_set(MX_ERR_UNSUPPORTED, "%s: fp8 fmt '%s' (expected e4m3)", src, fmt);
        int dyn = !as || strcmp(as, "dynamic") == 0;
        if (as && !dyn && strcmp(as, "static") != 0)
            return mx_error_set(MX_ERR_FORMAT, "%s: activation_scheme '%s' (expected dynamic or static)", src, as);
        if (bs) {
            const cJSON *r = cJSON_GetArrayItem(bs, 0), *k = cJSON_GetArrayItem(bs, 1);
            if (!cJSON_IsArray(bs) || cJSON_GetArraySize(bs) != 2 || !cJSON_IsNumber(r) || !cJSON_IsNumber(k) ||
                floor(r->valuedouble) != r->valuedouble || floor(k->valuedouble) != k->valuedouble ||
                fabs(r->valuedouble) > 1e9 || fabs(k->valuedouble) > 1e9)
                return mx_error_set(MX_ERR_FORMAT, "%s: weight_block_size must be [rows, cols] (two integers)", src);
            int b0 = (int)r->valuedouble, b1 = (int)k->valuedouble;
            if (b0 != 128 || b1 != 128)
                return mx_error_set(MX_ERR_UNSUPPORTED, "%s: weight_block_size [%d, %d] (mxep supports [128, 128])",
                                    src, b0, b1);
            set_quant(m, "fp8_block", MX_SCHEME_W8A8, 128);
        } else {
            set_quant(m, "fp8_tensor", MX_SCHEME_W8A8, 0);
        }
        return MX_OK;
    }
    if (strcasecmp(qm, "compressed-tensors") == 0)
        return norm_compressed_tensors(q, src, m);
    if (strcasecmp(qm, "quark") == 0)
        return norm_quark(q, src, m);
    if (strcasecmp(qm, "w_mxfp4_a_fp8") == 0 || strcasecmp(qm, "mxfp4_fp8") == 0) {
        set_quant(m, "w_mxfp4_a_fp8", MX_SCHEME_W4A8, 0);
        return MX_OK;
    }
    return mx_error_set(MX_ERR_UNSUPPORTED,
                        "%s: quantization_config.quant_method '%s' is not known (expected mxfp4, fp8, "
                        "compressed-tensors, quark or w_mxfp4_a_fp8)",
                        src, qm);
}

static const char *const k_experts[] = {"num_local_experts", "num_experts", "n_routed_experts", NULL};
static const char *const k_topk[] = {"num_experts_per_tok", "experts_per_token", "top_k_experts", "moe_topk", NULL};
static const char *const k_hidden[] = {"hidden_size", NULL};
static const char *const k_inter_moe[] = {"moe_intermediate_size", "expert_intermediate_size", NULL};
static const char *const k_inter[] = {"intermediate_size", NULL};
static const char *const k_layers[] = {"num_hidden_layers", "num_layers", NULL};
static const char *const k_ngroup[] = {"n_group", NULL};
static const char *const k_topkgroup[] = {"topk_group", NULL};

mx_status_t mx_ckpt_config_parse(const char *json, size_t len, const char *source, mx_model_config_t *config_p)
{
    const char *src = source ? source : "config.json";
    if (!json || !config_p)
        return mx_error_set(MX_ERR_INVALID, "mx_ckpt_config_parse: NULL argument");
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
    if (!root)
        return mx_error_set(MX_ERR_FORMAT, "%s: not well-formed JSON (near byte %lld)", src,
                            end ? (long long)(end - json) : -1LL);
    mx_status_t st = MX_OK;
    mx_model_config_t m;
    memset(&m, 0, sizeof m);
    cfgsrc_t c = {NULL, root};
    if (!cJSON_IsObject(root)) {
        st = mx_error_set(MX_ERR_FORMAT, "%s: expected a JSON object", src);
        goto out;
    }
    const cJSON *tc = cJSON_GetObjectItemCaseSensitive(root, "text_config");
    if (tc && !cJSON_IsNull(tc)) {
        if (!cJSON_IsObject(tc)) {
            st = mx_error_set(MX_ERR_FORMAT, "%s: \"text_config\" must be an object", src);
            goto out;
        }
        c.text = tc;
    }
    const char *mt = str_of(root, "model_type", src, NULL, &st);
    if (!mt && c.text)
        mt = str_of(c.text, "model_type", src, "text_config", &st);
    if (st)
        goto out;
    if (mt && strlen(mt) >= sizeof m.model_type) {
        st = mx_error_set(MX_ERR_FORMAT, "%s: model_type '%.40s...' is too long", src, mt);
        goto out;
    }
    snprintf(m.model_type, sizeof m.model_type, "%s", mt ? mt : "");

    long long v = 0;
    if ((st = get_int(&c, src, k_experts, 1, 1, 1 << 20, &v)))
        goto out;
    m.n_experts = (int)v;
    if ((st = get_int(&c, src, k_topk, 1, 1, 1 << 20, &v)))
        goto out;
    m.router.top_k = (int)v;
    if (m.router.top_k > m.n_experts) {
        st = mx_error_set(MX_ERR_FORMAT, "%s: top-k %d is larger than the expert count %d", src, m.router.top_k,
                          m.n_experts);
        goto out;
    }
    if ((st = get_int(&c, src, k_hidden, 1, 1, 1 << 24, &v)))
        goto out;
    m.hidden = (size_t)v;
    v = 0;
    if ((st = get_int(&c, src, k_inter_moe, 0, 1, 1 << 24, &v)))
        goto out;
    if (!v && (st = get_int(&c, src, k_inter, 1, 1, 1 << 24, &v)))
        goto out;
    m.inter = (size_t)v;
    if ((st = get_int(&c, src, k_layers, 1, 1, 1 << 16, &v)))
        goto out;
    m.n_layers = (int)v;

    /* activation */
    m.moe.hidden = m.hidden;
    m.moe.inter = m.inter;
    m.moe.swiglu_limit = 0.0f;
    m.moe.swiglu_alpha = 0.0f;
    if (strcmp(m.model_type, "gpt_oss") == 0) {
        m.moe.act = MX_ACT_SWIGLU_OAI;
        m.moe.order = MX_GATEUP_INTERLEAVED;
        m.moe.swiglu_limit = 7.0f;
        m.moe.swiglu_alpha = 1.702f;
        if ((st = get_float(&c, src, "swiglu_limit", &m.moe.swiglu_limit)) ||
            (st = get_float(&c, src, "swiglu_alpha", &m.moe.swiglu_alpha)))
            goto out;
    } else if (starts(m.model_type, "gemma")) {
        m.moe.act = MX_ACT_GELU_TANH;
        m.moe.order = MX_GATEUP_HALVES;
    } else if (starts(m.model_type, "qwen") || starts(m.model_type, "mixtral") || starts(m.model_type, "deepseek")) {
        m.moe.act = MX_ACT_SILU;
        m.moe.order = MX_GATEUP_HALVES;
    } else {
        const char *ha_key = get(&c, "hidden_act") ? "hidden_act" : "hidden_activation";
        const cJSON *ha = get(&c, ha_key);
        if (ha && !cJSON_IsString(ha)) {
            st = mx_error_set(MX_ERR_FORMAT, "%s: \"%s\" must be a string", src, ha_key);
            goto out;
        }
        const char *a = ha ? ha->valuestring : NULL;
        m.moe.order = MX_GATEUP_HALVES;
        if (a && (strcmp(a, "silu") == 0 || strcmp(a, "swish") == 0))
            m.moe.act = MX_ACT_SILU;
        else if (a &&
                 (strcmp(a, "gelu_pytorch_tanh") == 0 || strcmp(a, "gelu_tanh") == 0 || strcmp(a, "gelu_new") == 0))
            m.moe.act = MX_ACT_GELU_TANH;
        else {
            st = mx_error_set(MX_ERR_UNSUPPORTED,
                              "%s: model_type '%s' with hidden_act '%s': cannot tell the expert activation (expected "
                              "silu or gelu_pytorch_tanh, or a known model_type)",
                              src, m.model_type, a ? a : "(none)");
            goto out;
        }
    }

    /* router */
    m.router.scaling_factor = 1.0f;
    m.router.capacity_factor = 0.0f;
    const cJSON *sf = get(&c, "scoring_func");
    if (sf && !cJSON_IsString(sf)) {
        st = mx_error_set(MX_ERR_FORMAT, "%s: \"scoring_func\" must be a string (softmax or sigmoid)", src);
        goto out;
    }
    const char *scoring = sf ? sf->valuestring : NULL;
    /* rms_norm_eps: read for every model (0 when absent); the Gemma 4 router
     * normalizes its input with it (HF Gemma4TextConfig default 1e-6). */
    m.rms_norm_eps = starts(m.model_type, "gemma4") ? 1e-6f : 0.0f;
    if ((st = get_float(&c, src, "rms_norm_eps", &m.rms_norm_eps)))
        goto out;
    if (m.rms_norm_eps < 0.0f) {
        st = mx_error_set(MX_ERR_FORMAT, "%s: \"rms_norm_eps\" is %g (expected >= 0)", src, (double)m.rms_norm_eps);
        goto out;
    }
    if (strcmp(m.model_type, "gpt_oss") == 0) {
        m.router.kind = MX_ROUTER_TOPK_SOFTMAX;
        m.router.renormalize = 1;
    } else if (starts(m.model_type, "gemma4")) {
        /* Gemma 4 (FORMATS.md Part 2 section 6; HF Gemma4TextRouter, vLLM
         * gemma4.py Gemma4Router/Gemma4MoE): normalized scaled input, softmax
         * over all E, top-k, always renormalized, x per_expert_scale. */
        if (scoring && strcmp(scoring, "softmax") != 0) {
            st = mx_error_set(MX_ERR_UNSUPPORTED, "%s: gemma4 with scoring_func '%s' (expected softmax or none)", src,
                              scoring);
            goto out;
        }
        m.router.kind = MX_ROUTER_GEMMA4;
        m.router.renormalize = 1;
    } else if (scoring && strcmp(scoring, "sigmoid") == 0) {
        m.router.kind = MX_ROUTER_SIGMOID_GROUPED;
        m.router.renormalize = 1;
        m.router.n_group = 1;
        m.router.topk_group = 1;
        if ((st = get_bool(&c, src, "norm_topk_prob", &m.router.renormalize)))
            goto out;
        v = 1;
        if ((st = get_int(&c, src, k_ngroup, 0, 1, m.n_experts, &v)))
            goto out;
        m.router.n_group = (int)v;
        v = m.router.n_group;
        if ((st = get_int(&c, src, k_topkgroup, 0, 1, m.router.n_group, &v)))
            goto out;
        m.router.topk_group = (int)v;
        if (m.n_experts % m.router.n_group) {
            st = mx_error_set(MX_ERR_FORMAT, "%s: n_group %d does not divide the expert count %d", src,
                              m.router.n_group, m.n_experts);
            goto out;
        }
        if (m.n_experts / m.router.n_group * m.router.topk_group < m.router.top_k) {
            st = mx_error_set(MX_ERR_FORMAT, "%s: topk_group %d of %d groups hold fewer than top-k %d experts", src,
                              m.router.topk_group, m.router.n_group, m.router.top_k);
            goto out;
        }
        if ((st = get_float(&c, src, "routed_scaling_factor", &m.router.scaling_factor)))
            goto out;
    } else if (scoring && strcmp(scoring, "softmax") != 0) {
        st = mx_error_set(MX_ERR_UNSUPPORTED, "%s: scoring_func '%s' (expected softmax or sigmoid)", src, scoring);
        goto out;
    } else {
        m.router.kind = MX_ROUTER_SOFTMAX_TOPK;
        /* Mixtral and Gemma renormalize; Qwen says so in norm_topk_prob */
        m.router.renormalize = starts(m.model_type, "qwen") ? 0 : 1;
        if ((st = get_bool(&c, src, "norm_topk_prob", &m.router.renormalize)))
            goto out;
    }

    if ((st = norm_quant(&c, src, &m)))
        goto out;
    *config_p = m;
out:
    cJSON_Delete(root);
    return st;
}
