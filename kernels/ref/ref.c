/* mxep kernels: the `ref` backend. Scalar and obviously right; every other
 * backend is checked against it (FORMATS.md Part 1, "MoE math").
 *
 * Per (token, expert), in this order:
 *   x      = bf16 token row, decoded to FP32; for A8 schemes quantized to E4M3
 *            and dequantized (W4A8: static input_scale; W8A8: dynamic per token
 *            or per 128 group, as desc->act_group says);
 *   h[r]   = sum over k ascending of w_gate_up[r][k] * x[k] (FP32), + bias[r];
 *   a[i]   = act(gate_i, up_i) in FP32, rounded to BF16;
 *            for A8 schemes a is quantized to E4M3 and dequantized (W4A8:
 *            down_input_scale, or per-token dynamic when it is 0; W8A8: as x);
 *   y[r]   = sum over i ascending of w_down[r][i] * a[i] (FP32), + down_bias[r],
 *            rounded to BF16;
 *   out    = PER_ASSIGNMENT: y;  WEIGHTED_SUM: out_f32[t] += weight * y, experts
 *            ascending (ties: assignment order).
 * Every token is computed alone (no sums across tokens), so its result never
 * depends on its batch-mates. Weights are decoded row by row from a private
 * copy of the canonical layout (decoding whole experts to FP32 would take
 * gigabytes for gpt-oss); a row is decoded once per chunk of up to REF_CHUNK
 * assignments of one expert. This file is built with -ffp-contract=off. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mxep/kernels.h"
#include "mxep/quant.h"

#define REF_CHUNK 64
#define REF_FP8_BLOCK 128
#define REF_ACT_GROUP 128

typedef struct {
    mx_matrix_t m; /* views into the two buffers below */
    void *data;
    void *scales;
} ref_matrix_t;

typedef struct {
    ref_matrix_t gate_up, down;
    float *gate_up_bias, *down_bias;
    float input_scale, down_input_scale;
} ref_expert_t;

typedef struct {
    mx_moe_desc_t desc;
    int n_experts;
    ref_expert_t *experts;
} ref_packed_t;

/* ------------------------------------------------------------------ checks */

static size_t cdiv(size_t a, size_t b)
{
    return (a + b - 1) / b;
}

static size_t data_bytes(const mx_matrix_t *m)
{
    switch (m->fmt) {
    case MX_WFMT_BF16:
        return m->rows * m->cols * 2;
    case MX_WFMT_MXFP4:
        return m->rows * m->cols / 2;
    case MX_WFMT_FP8:
        return m->rows * m->cols;
    }
    return 0;
}

static size_t scale_bytes(const mx_matrix_t *m)
{
    switch (m->scale_kind) {
    case MX_WSCALE_NONE:
        return 0;
    case MX_WSCALE_E8M0_32:
        return m->rows * (m->cols / MX_MXFP4_BLOCK);
    case MX_WSCALE_BLOCK:
        return cdiv(m->rows, REF_FP8_BLOCK) * cdiv(m->cols, REF_FP8_BLOCK) * sizeof(float);
    case MX_WSCALE_CHANNEL:
        return m->rows * sizeof(float);
    case MX_WSCALE_TENSOR:
        return sizeof(float);
    }
    return 0;
}

static mx_status_t check_matrix(const mx_moe_desc_t *d, const mx_matrix_t *m, size_t rows, size_t cols, int e,
                                const char *what)
{
    mx_wfmt_t want = mx_scheme_wfmt(d->scheme);
    if (m->fmt != want)
        return mx_error_set(MX_ERR_INVALID, "ref prepack: expert %d %s is %s, expected %s for scheme %s", e, what,
                            mx_wfmt_name(m->fmt), mx_wfmt_name(want), mx_scheme_name(d->scheme));
    if (m->rows != rows || m->cols != cols)
        return mx_error_set(MX_ERR_INVALID, "ref prepack: expert %d %s is [%zu x %zu], expected [%zu x %zu]", e, what,
                            m->rows, m->cols, rows, cols);
    if (!m->data)
        return mx_error_set(MX_ERR_INVALID, "ref prepack: expert %d %s has no data", e, what);
    int kind_ok;
    switch (m->fmt) {
    case MX_WFMT_BF16:
        kind_ok = m->scale_kind == MX_WSCALE_NONE;
        break;
    case MX_WFMT_MXFP4:
        kind_ok = m->scale_kind == MX_WSCALE_E8M0_32 && cols % MX_MXFP4_BLOCK == 0;
        break;
    default:
        kind_ok =
            m->scale_kind == MX_WSCALE_BLOCK || m->scale_kind == MX_WSCALE_CHANNEL || m->scale_kind == MX_WSCALE_TENSOR;
        break;
    }
    if (!kind_ok)
        return mx_error_set(MX_ERR_INVALID,
                            "ref prepack: expert %d %s: scale kind %d does not fit %s [%zu x %zu] (expected NONE for "
                            "BF16, E8M0_32 with cols %% 32 == 0 for MXFP4, BLOCK/CHANNEL/TENSOR for FP8)",
                            e, what, (int)m->scale_kind, mx_wfmt_name(m->fmt), rows, cols);
    if (m->scale_kind != MX_WSCALE_NONE && !m->scales)
        return mx_error_set(MX_ERR_INVALID, "ref prepack: expert %d %s has no scales", e, what);
    return MX_OK;
}

static mx_status_t ref_probe(mx_device_info_t *info_p)
{
    if (!info_p)
        return mx_error_set(MX_ERR_INVALID, "ref probe: info_p is NULL");
    mx_device_info_t info;
    memset(&info, 0, sizeof(info));
    snprintf(info.name, sizeof(info.name), "scalar reference (any CPU, one thread)");
    snprintf(info.isa, sizeof(info.isa), "scalar");
    info.device_index = -1;
    info.cores = 1;
    *info_p = info;
    return MX_OK;
}

/* The description's own sense is all ref needs: it runs every scheme and size
 * the format allows (mx_moe_desc_check, H and I up to 2^24). */
static int ref_supports(const mx_device_info_t *dev, const mx_moe_desc_t *d, char *reason, size_t reason_len)
{
    (void)dev;
    return mx_moe_desc_check(d, (size_t)1 << 24, reason, reason_len);
}

/* ------------------------------------------------------------------ prepack */

static void matrix_free(ref_matrix_t *m)
{
    free(m->data);
    free(m->scales);
}

static void ref_release(mx_backend_packed_t *packed)
{
    ref_packed_t *p = (ref_packed_t *)packed;
    if (!p)
        return;
    for (int e = 0; e < p->n_experts; e++) {
        matrix_free(&p->experts[e].gate_up);
        matrix_free(&p->experts[e].down);
        free(p->experts[e].gate_up_bias);
        free(p->experts[e].down_bias);
    }
    free(p->experts);
    free(p);
}

static mx_status_t matrix_copy(const mx_matrix_t *src, ref_matrix_t *dst)
{
    size_t nd = data_bytes(src), ns = scale_bytes(src);
    dst->m = *src;
    dst->data = malloc(nd);
    dst->scales = ns ? malloc(ns) : NULL;
    if (!dst->data || (ns && !dst->scales))
        return mx_error_set(MX_ERR_NOMEM, "ref prepack: cannot allocate %zu bytes of weights", nd + ns);
    memcpy(dst->data, src->data, nd);
    if (ns)
        memcpy(dst->scales, src->scales, ns);
    dst->m.data = dst->data;
    dst->m.scales = dst->scales;
    return MX_OK;
}

static float *floats_copy(const float *src, size_t n)
{
    float *d = malloc(n * sizeof(float));
    if (d)
        memcpy(d, src, n * sizeof(float));
    return d;
}

static mx_status_t ref_prepack(const mx_device_info_t *dev, const mx_moe_desc_t *desc,
                               const mx_expert_weights_t *experts, int n_experts, mx_backend_packed_t **packed_p)
{
    char why[MX_REASON_MAX];
    if (!desc || !packed_p || (n_experts > 0 && !experts) || n_experts < 0)
        return mx_error_set(MX_ERR_INVALID, "ref prepack: NULL argument or n_experts %d < 0", n_experts);
    if (!ref_supports(dev, desc, why, sizeof(why)))
        return mx_error_set(MX_ERR_UNSUPPORTED, "ref prepack: %s", why);
    const size_t H = desc->hidden, I = desc->inter;
    for (int e = 0; e < n_experts; e++) {
        mx_status_t st = check_matrix(desc, &experts[e].gate_up, 2 * I, H, e, "gate_up");
        if (st == MX_OK)
            st = check_matrix(desc, &experts[e].down, H, I, e, "down");
        if (st != MX_OK)
            return st;
        if (desc->scheme == MX_SCHEME_W4A8 && !(isfinite(experts[e].input_scale) && experts[e].input_scale > 0.0f))
            return mx_error_set(MX_ERR_INVALID, "ref prepack: expert %d: W4A8 needs a static input_scale > 0, got %g",
                                e, (double)experts[e].input_scale);
        if (desc->scheme == MX_SCHEME_W4A8 &&
            !(isfinite(experts[e].down_input_scale) && experts[e].down_input_scale >= 0.0f))
            return mx_error_set(MX_ERR_INVALID,
                                "ref prepack: expert %d: W4A8 down_input_scale %g: expected >= 0 (0 = dynamic)", e,
                                (double)experts[e].down_input_scale);
    }
    ref_packed_t *p = calloc(1, sizeof(*p));
    if (!p)
        return mx_error_set(MX_ERR_NOMEM, "ref prepack: out of memory");
    p->desc = *desc;
    p->experts = calloc(n_experts > 0 ? (size_t)n_experts : 1, sizeof(ref_expert_t));
    if (!p->experts) {
        free(p);
        return mx_error_set(MX_ERR_NOMEM, "ref prepack: out of memory");
    }
    for (int e = 0; e < n_experts; e++) {
        ref_expert_t *x = &p->experts[e];
        p->n_experts = e + 1; /* so release frees what is there */
        mx_status_t st = matrix_copy(&experts[e].gate_up, &x->gate_up);
        if (st == MX_OK)
            st = matrix_copy(&experts[e].down, &x->down);
        if (st == MX_OK && experts[e].gate_up_bias && !(x->gate_up_bias = floats_copy(experts[e].gate_up_bias, 2 * I)))
            st = mx_error_set(MX_ERR_NOMEM, "ref prepack: out of memory");
        if (st == MX_OK && experts[e].down_bias && !(x->down_bias = floats_copy(experts[e].down_bias, H)))
            st = mx_error_set(MX_ERR_NOMEM, "ref prepack: out of memory");
        if (st != MX_OK) {
            ref_release((mx_backend_packed_t *)p);
            return st;
        }
        x->input_scale = experts[e].input_scale;
        x->down_input_scale = experts[e].down_input_scale;
    }
    p->n_experts = n_experts;
    *packed_p = (mx_backend_packed_t *)p;
    return MX_OK;
}

/* ------------------------------------------------------------------ run */

typedef struct {
    size_t chunk;
    float *x;     /* [chunk x H] GEMM-1 inputs (decoded, A8: dequantized) */
    float *h;     /* [chunk x 2I] gate/up outputs */
    float *a;     /* [chunk x I] activations (BF16 values, A8: dequantized) */
    float *row;   /* [max(H, I)] one decoded weight row */
    uint8_t *q;   /* [max(H, I)] FP8 codes of one activation row */
    float *qs;    /* [ceil(max(H, I) / 128)] their scales */
    int32_t *idx; /* [chunk] assignment indices */
} ref_ws_t;

static size_t align64(size_t n)
{
    return (n + 63) & ~(size_t)63;
}

/* Lays out the workspace for `chunk` assignments; returns its size. */
static size_t ws_layout(const mx_moe_desc_t *d, size_t chunk, char *base, ref_ws_t *w)
{
    size_t H = d->hidden, I = d->inter, M = H > I ? H : I, off = 0;
    size_t sz[7] = {chunk * H * sizeof(float),
                    chunk * 2 * I * sizeof(float),
                    chunk * I * sizeof(float),
                    M * sizeof(float),
                    M,
                    (cdiv(M, REF_ACT_GROUP) + 1) * sizeof(float),
                    chunk * sizeof(int32_t)};
    void *ptr[7];
    for (int i = 0; i < 7; i++) {
        ptr[i] = base ? base + off : NULL;
        off += align64(sz[i]);
    }
    if (w) {
        w->chunk = chunk;
        w->x = ptr[0];
        w->h = ptr[1];
        w->a = ptr[2];
        w->row = ptr[3];
        w->q = ptr[4];
        w->qs = ptr[5];
        w->idx = ptr[6];
    }
    return off + 64; /* room to align the base */
}

static size_t ref_workspace_size(const mx_backend_packed_t *packed, size_t max_tokens, size_t max_assign)
{
    (void)max_tokens;
    const ref_packed_t *p = (const ref_packed_t *)packed;
    if (!p)
        return 0;
    size_t chunk = max_assign < REF_CHUNK ? max_assign : REF_CHUNK;
    if (chunk == 0)
        chunk = 1;
    return ws_layout(&p->desc, chunk, NULL, NULL);
}

/* Row r of a canonical matrix, decoded to FP32 (w = code * scale). */
static void decode_row(const mx_matrix_t *m, size_t r, float *out)
{
    const size_t K = m->cols;
    switch (m->fmt) {
    case MX_WFMT_BF16: {
        const uint16_t *d = (const uint16_t *)m->data + r * K;
        for (size_t k = 0; k < K; k++)
            out[k] = mx_quant_bf16_to_f32(d[k]);
        break;
    }
    case MX_WFMT_MXFP4: {
        const uint8_t *d = (const uint8_t *)m->data + r * (K / 2);
        const uint8_t *s = (const uint8_t *)m->scales + r * (K / MX_MXFP4_BLOCK);
        for (size_t k = 0; k < K; k++) {
            uint8_t b = d[k / 2];
            uint8_t code = (k & 1) ? (uint8_t)(b >> 4) : (uint8_t)(b & 0x0F);
            out[k] = mx_quant_e2m1_to_f32(code) * mx_quant_e8m0_to_f32(s[k / MX_MXFP4_BLOCK]);
        }
        break;
    }
    case MX_WFMT_FP8: {
        const uint8_t *d = (const uint8_t *)m->data + r * K;
        const float *s = (const float *)m->scales;
        for (size_t k = 0; k < K; k++) {
            float scale = m->scale_kind == MX_WSCALE_TENSOR ? s[0]
                          : m->scale_kind == MX_WSCALE_CHANNEL
                              ? s[r]
                              : s[(r / REF_FP8_BLOCK) * cdiv(K, REF_FP8_BLOCK) + k / REF_FP8_BLOCK];
            out[k] = mx_quant_e4m3fn_to_f32(d[k]) * scale;
        }
        break;
    }
    }
}

/* In place: v[n] -> E4M3 codes with scale(s) -> back to FP32 (code * scale).
 * static_scale > 0: one static scale; else dynamic per `group` (0 = whole row). */
static void fake_quant(float *v, size_t n, float static_scale, size_t group, const ref_ws_t *w)
{
    if (static_scale > 0.0f) {
        mx_quant_fp8_tensor_static(v, n, static_scale, w->q);
        for (size_t k = 0; k < n; k++)
            v[k] = mx_quant_e4m3fn_to_f32(w->q[k]) * static_scale;
        return;
    }
    if (group == 0 || group >= n) {
        mx_quant_fp8_token_dynamic(v, 1, n, w->q, w->qs);
        group = n;
    } else {
        mx_quant_fp8_group_dynamic(v, 1, n, group, w->q, w->qs);
    }
    for (size_t k = 0; k < n; k++)
        v[k] = mx_quant_e4m3fn_to_f32(w->q[k]) * w->qs[k / group];
}

static float act_fn(const mx_moe_desc_t *d, float g, float u)
{
    switch (d->act) {
    case MX_ACT_SILU:
        return g * (1.0f / (1.0f + expf(-g))) * u;
    case MX_ACT_GELU_TANH: {
        const float c = 0.7978845608028654f; /* sqrt(2/pi) */
        float inner = c * (g + 0.044715f * g * g * g);
        return 0.5f * g * (1.0f + tanhf(inner)) * u;
    }
    case MX_ACT_SWIGLU_OAI: {
        const float lim = d->swiglu_limit;
        g = g > lim ? lim : g; /* no lower clamp on gate; NaN stays NaN */
        u = u > lim ? lim : (u < -lim ? -lim : u);
        float glu = g * (1.0f / (1.0f + expf(-(g * d->swiglu_alpha))));
        return (u + 1.0f) * glu;
    }
    default:
        return NAN;
    }
}

static float bf16_round(float v)
{
    return mx_quant_bf16_to_f32(mx_quant_bf16_from_f32(v));
}

static void run_chunk(const ref_packed_t *p, int e, const mx_run_args_t *args, const ref_ws_t *w, size_t n)
{
    const mx_moe_desc_t *d = &p->desc;
    const ref_expert_t *ex = &p->experts[e];
    const size_t H = d->hidden, I = d->inter;
    const size_t grp = d->act_group > 0 ? (size_t)d->act_group : 0;
    float acc[REF_CHUNK];

    for (size_t j = 0; j < n; j++) {
        float *x = w->x + j * H;
        const uint16_t *src = args->x + (size_t)args->tok[w->idx[j]] * H;
        for (size_t k = 0; k < H; k++)
            x[k] = mx_quant_bf16_to_f32(src[k]);
        if (d->scheme == MX_SCHEME_W4A8)
            fake_quant(x, H, ex->input_scale, 0, w);
        else if (d->scheme == MX_SCHEME_W8A8)
            fake_quant(x, H, 0.0f, grp, w);
    }
    for (size_t r = 0; r < 2 * I; r++) {
        decode_row(&ex->gate_up.m, r, w->row);
        /* k outer, tokens inner: each token's sum still runs over k in
         * ascending order, the tokens only interleave (instruction-level
         * parallelism, no change to any token's arithmetic) */
        for (size_t j = 0; j < n; j++)
            acc[j] = 0.0f;
        for (size_t k = 0; k < H; k++) {
            const float wk = w->row[k];
            for (size_t j = 0; j < n; j++)
                acc[j] += wk * w->x[j * H + k];
        }
        for (size_t j = 0; j < n; j++)
            w->h[j * 2 * I + r] = ex->gate_up_bias ? acc[j] + ex->gate_up_bias[r] : acc[j];
    }
    for (size_t j = 0; j < n; j++) {
        const float *h = w->h + j * 2 * I;
        float *a = w->a + j * I;
        for (size_t i = 0; i < I; i++) {
            float g = d->order == MX_GATEUP_HALVES ? h[i] : h[2 * i];
            float u = d->order == MX_GATEUP_HALVES ? h[I + i] : h[2 * i + 1];
            a[i] = bf16_round(act_fn(d, g, u));
        }
        if (d->scheme == MX_SCHEME_W4A8)
            fake_quant(a, I, ex->down_input_scale, 0, w);
        else if (d->scheme == MX_SCHEME_W8A8)
            fake_quant(a, I, 0.0f, grp, w);
    }
    for (size_t r = 0; r < H; r++) {
        decode_row(&ex->down.m, r, w->row);
        for (size_t j = 0; j < n; j++)
            acc[j] = 0.0f;
        for (size_t i = 0; i < I; i++) {
            const float wi = w->row[i];
            for (size_t j = 0; j < n; j++)
                acc[j] += wi * w->a[j * I + i];
        }
        for (size_t j = 0; j < n; j++) {
            float v = ex->down_bias ? acc[j] + ex->down_bias[r] : acc[j];
            uint16_t y = mx_quant_bf16_from_f32(v);
            int32_t as = w->idx[j];
            if (args->mode == MX_OUT_PER_ASSIGNMENT) {
                args->out_bf16[(size_t)as * H + r] = y;
            } else {
                float term = args->weight[as] * mx_quant_bf16_to_f32(y);
                args->out_f32[(size_t)args->tok[as] * H + r] += term;
            }
        }
    }
}

static mx_status_t ref_run(const mx_backend_packed_t *packed, const mx_run_args_t *args, void *workspace)
{
    const ref_packed_t *p = (const ref_packed_t *)packed;
    if (!p || !args)
        return mx_error_set(MX_ERR_INVALID, "ref run: %s is NULL", !p ? "packed" : "args");
    if (args->mode != MX_OUT_PER_ASSIGNMENT && args->mode != MX_OUT_WEIGHTED_SUM)
        return mx_error_set(MX_ERR_INVALID, "ref run: output mode %d: expected PER_ASSIGNMENT or WEIGHTED_SUM",
                            (int)args->mode);
    if (args->n_assign == 0)
        return MX_OK;
    if (!args->x || !args->tok || !args->expert || !workspace)
        return mx_error_set(MX_ERR_INVALID, "ref run: %s is NULL with %zu assignments",
                            !args->x        ? "x"
                            : !args->tok    ? "tok"
                            : !args->expert ? "expert"
                                            : "workspace",
                            args->n_assign);
    if (args->mode == MX_OUT_PER_ASSIGNMENT && !args->out_bf16)
        return mx_error_set(MX_ERR_INVALID, "ref run: PER_ASSIGNMENT needs out_bf16");
    if (args->mode == MX_OUT_WEIGHTED_SUM && (!args->out_f32 || !args->weight))
        return mx_error_set(MX_ERR_INVALID, "ref run: WEIGHTED_SUM needs %s", !args->out_f32 ? "out_f32" : "weight");
    for (size_t a = 0; a < args->n_assign; a++) {
        if (args->tok[a] < 0 || (size_t)args->tok[a] >= args->n_tokens)
            return mx_error_set(MX_ERR_INVALID, "ref run: assignment %zu has token %d, expected 0..%zu", a,
                                (int)args->tok[a], args->n_tokens ? args->n_tokens - 1 : 0);
        if (args->expert[a] < 0 || args->expert[a] >= p->n_experts)
            return mx_error_set(MX_ERR_INVALID, "ref run: assignment %zu has local expert %d, expected 0..%d", a,
                                (int)args->expert[a], p->n_experts - 1);
    }

    size_t chunk = args->n_assign < REF_CHUNK ? args->n_assign : REF_CHUNK;
    char *base = (char *)(((uintptr_t)workspace + 63) & ~(uintptr_t)63);
    ref_ws_t w;
    ws_layout(&p->desc, chunk, base, &w);

    for (int e = 0; e < p->n_experts; e++) {
        size_t n = 0;
        for (size_t a = 0; a < args->n_assign; a++) {
            if (args->expert[a] != e)
                continue;
            w.idx[n++] = (int32_t)a;
            if (n == chunk) {
                run_chunk(p, e, args, &w, n);
                n = 0;
            }
        }
        if (n)
            run_chunk(p, e, args, &w, n);
    }
    return MX_OK;
}

const mx_backend_ops_t mx_backend_ref = {
    .name = "ref",
    .priority = 0,
    .probe = ref_probe,
    .supports = ref_supports,
    .prepack = ref_prepack,
    .release = ref_release,
    .workspace_size = ref_workspace_size,
    .run = ref_run,
};
