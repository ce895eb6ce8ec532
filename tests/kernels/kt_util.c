/* Shared helpers for kernel tests and benches (see kt_util.h). */
#include "kt_util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mxep/quant.h"

void kt_rng_seed(kt_rng_t *r, uint64_t seed)
{
    r->s = seed * 0x9E3779B97F4A7C15ull + 0x2545F4914F6CDD1Dull;
}

uint64_t kt_rng_next(kt_rng_t *r)
{ /* splitmix64 */
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

float kt_rng_uniform(kt_rng_t *r, float lo, float hi)
{
    for (;;) {
        float u = (float)(kt_rng_next(r) >> 40) * (1.0f / 16777216.0f); /* 24 bits: exact in float */
        float v = lo + (hi - lo) * u;
        if (v != 0.0f && v < hi)
            return v;
    }
}

int kt_rng_below(kt_rng_t *r, int n)
{
    return n <= 1 ? 0 : (int)(kt_rng_next(r) % (uint64_t)n);
}

mx_moe_desc_t kt_desc(mx_scheme_t scheme, mx_act_t act, mx_gateup_order_t order, size_t hidden, size_t inter)
{
    mx_moe_desc_t d;
    memset(&d, 0, sizeof(d));
    d.scheme = scheme;
    d.act = act;
    d.order = order;
    d.hidden = hidden;
    d.inter = inter;
    d.swiglu_limit = 7.0f;
    d.swiglu_alpha = 1.702f;
    d.act_group = 0;
    return d;
}

static void *own(kt_experts_t *ex, size_t bytes)
{
    if (ex->n_bufs == ex->cap_bufs) {
        int cap = ex->cap_bufs ? 2 * ex->cap_bufs : 16;
        void **nb = realloc(ex->bufs, (size_t)cap * sizeof(void *));
        if (!nb)
            return NULL;
        ex->bufs = nb;
        ex->cap_bufs = cap;
    }
    void *p = calloc(1, bytes ? bytes : 1);
    if (p)
        ex->bufs[ex->n_bufs++] = p;
    return p;
}

/* rows x cols random floats -> canonical matrix of the scheme's format. */
static mx_status_t make_matrix(kt_experts_t *ex, kt_rng_t *r, mx_scheme_t scheme, mx_wscale_t fp8_scale, size_t rows,
                               size_t cols, float amp, mx_matrix_t *m)
{
    float *f = malloc(rows * cols * sizeof(float));
    if (!f)
        return mx_error_set(MX_ERR_NOMEM, "kt: out of memory");
    for (size_t i = 0; i < rows * cols; i++)
        f[i] = kt_rng_uniform(r, -amp, amp);
    memset(m, 0, sizeof(*m));
    m->rows = rows;
    m->cols = cols;
    mx_status_t st = MX_OK;
    switch (scheme) {
    case MX_SCHEME_W16A16: {
        uint16_t *d = own(ex, rows * cols * 2);
        if (!d) {
            st = mx_error_set(MX_ERR_NOMEM, "kt: out of memory");
            break;
        }
        mx_quant_bf16_from_f32_n(f, rows * cols, d);
        m->fmt = MX_WFMT_BF16;
        m->scale_kind = MX_WSCALE_NONE;
        m->data = d;
        break;
    }
    case MX_SCHEME_W4A16:
    case MX_SCHEME_W4A8: {
        uint8_t *d = own(ex, rows * cols / 2), *s = own(ex, rows * cols / 32);
        if (!d || !s) {
            st = mx_error_set(MX_ERR_NOMEM, "kt: out of memory");
            break;
        }
        for (size_t i = 0; i < rows && st == MX_OK; i++)
            st = mx_quant_mxfp4_encode_row(f + i * cols, cols, MX_SCALE_FLOOR, d + i * cols / 2, s + i * cols / 32);
        m->fmt = MX_WFMT_MXFP4;
        m->scale_kind = MX_WSCALE_E8M0_32;
        m->data = d;
        m->scales = s;
        break;
    }
    default: {
        mx_wscale_t kind =
            fp8_scale == MX_WSCALE_CHANNEL || fp8_scale == MX_WSCALE_TENSOR ? fp8_scale : MX_WSCALE_BLOCK;
        size_t ns = kind == MX_WSCALE_BLOCK     ? ((rows + 127) / 128) * ((cols + 127) / 128)
                    : kind == MX_WSCALE_CHANNEL ? rows
                                                : 1;
        uint8_t *d = own(ex, rows * cols);
        float *s = own(ex, ns * sizeof(float));
        if (!d || !s) {
            st = mx_error_set(MX_ERR_NOMEM, "kt: out of memory");
            break;
        }
        if (kind == MX_WSCALE_BLOCK) {
            st = mx_quant_fp8_weight_block(f, rows, cols, 128, d, s);
        } else if (kind == MX_WSCALE_CHANNEL) {
            st = mx_quant_fp8_weight_channel(f, rows, cols, d, s);
        } else {
            float amax = 0.0f;
            for (size_t i = 0; i < rows * cols; i++)
                amax = fabsf(f[i]) > amax ? fabsf(f[i]) : amax;
            s[0] = amax / MX_FP8_E4M3_MAX;
            st = mx_quant_fp8_tensor_static(f, rows * cols, s[0], d);
        }
        m->fmt = MX_WFMT_FP8;
        m->scale_kind = kind;
        m->data = d;
        m->scales = s;
        break;
    }
    }
    free(f);
    return st;
}

void kt_experts_destroy(kt_experts_t *ex)
{
    if (!ex)
        return;
    for (int i = 0; i < ex->n_bufs; i++)
        free(ex->bufs[i]);
    free(ex->bufs);
    free(ex->w);
    free(ex);
}

mx_status_t kt_experts_create(const mx_moe_desc_t *desc, int n_experts, const kt_expert_opts_t *opts, uint64_t seed,
                              kt_experts_t **experts_p)
{
    kt_expert_opts_t o = {0};
    if (opts)
        o = *opts;
    float gain = o.gain > 0.0f ? o.gain : 1.0f;
    kt_experts_t *ex = calloc(1, sizeof(*ex));
    if (!ex)
        return mx_error_set(MX_ERR_NOMEM, "kt: out of memory");
    ex->desc = *desc;
    ex->n_experts = n_experts;
    ex->w = calloc(n_experts > 0 ? (size_t)n_experts : 1, sizeof(mx_expert_weights_t));
    if (!ex->w) {
        kt_experts_destroy(ex);
        return mx_error_set(MX_ERR_NOMEM, "kt: out of memory");
    }
    kt_rng_t r;
    kt_rng_seed(&r, seed);
    const size_t H = desc->hidden, I = desc->inter;
    mx_status_t st = MX_OK;
    for (int e = 0; e < n_experts && st == MX_OK; e++) {
        mx_expert_weights_t *w = &ex->w[e];
        st = make_matrix(ex, &r, desc->scheme, o.fp8_scale, 2 * I, H, gain * 3.0f / sqrtf((float)H), &w->gate_up);
        if (st == MX_OK)
            st = make_matrix(ex, &r, desc->scheme, o.fp8_scale, H, I, gain * 3.0f / sqrtf((float)I), &w->down);
        if (st == MX_OK && o.with_bias) {
            float *gb = own(ex, 2 * I * sizeof(float)), *db = own(ex, H * sizeof(float));
            if (!gb || !db) {
                st = mx_error_set(MX_ERR_NOMEM, "kt: out of memory");
                break;
            }
            for (size_t i = 0; i < 2 * I; i++)
                gb[i] = kt_rng_uniform(&r, -0.5f, 0.5f);
            for (size_t i = 0; i < H; i++)
                db[i] = kt_rng_uniform(&r, -0.5f, 0.5f);
            w->gate_up_bias = gb;
            w->down_bias = db;
        }
        if (desc->scheme == MX_SCHEME_W4A8) {
            w->input_scale = kt_rng_uniform(&r, 0.9f, 1.2f) / MX_FP8_E4M3_MAX;
            w->down_input_scale = (e & 1) ? kt_rng_uniform(&r, 3.0f, 5.0f) / MX_FP8_E4M3_MAX : 0.0f;
        }
    }
    if (st != MX_OK) {
        kt_experts_destroy(ex);
        return st;
    }
    *experts_p = ex;
    return MX_OK;
}

void kt_tokens_fill(kt_rng_t *r, uint16_t *x, size_t n, float amp)
{
    for (size_t i = 0; i < n; i++) {
        uint16_t b;
        do
            b = mx_quant_bf16_from_f32(kt_rng_uniform(r, -amp, amp));
        while ((b & 0x7FFF) == 0);
        x[i] = b;
    }
}

void kt_routing_destroy(kt_routing_t *routing)
{
    if (!routing)
        return;
    free(routing->tok);
    free(routing->expert);
    free(routing->weight);
    memset(routing, 0, sizeof(*routing));
}

mx_status_t kt_routing_create(size_t n_tokens, int n_experts, int top_k, int n_idle, uint64_t seed,
                              kt_routing_t *routing_p)
{
    int usable = n_experts - n_idle;
    if (top_k < 1 || usable < top_k)
        return mx_error_set(MX_ERR_INVALID, "kt routing: top_k %d with %d usable experts", top_k, usable);
    kt_routing_t r = {0};
    r.n_tokens = n_tokens;
    r.n_assign = n_tokens * (size_t)top_k;
    size_t na = r.n_assign ? r.n_assign : 1;
    r.tok = malloc(na * sizeof(int32_t));
    r.expert = malloc(na * sizeof(int32_t));
    r.weight = malloc(na * sizeof(float));
    int *pick = malloc((size_t)usable * sizeof(int));
    if (!r.tok || !r.expert || !r.weight || !pick) {
        free(pick);
        kt_routing_destroy(&r);
        return mx_error_set(MX_ERR_NOMEM, "kt: out of memory");
    }
    kt_rng_t g;
    kt_rng_seed(&g, seed ^ 0x5EEDull);
    for (size_t t = 0; t < n_tokens; t++) {
        for (int i = 0; i < usable; i++)
            pick[i] = i;
        float sum = 0.0f;
        for (int k = 0; k < top_k; k++) { /* partial Fisher-Yates */
            int j = k + kt_rng_below(&g, usable - k);
            int tmp = pick[k];
            pick[k] = pick[j];
            pick[j] = tmp;
            size_t a = t * (size_t)top_k + (size_t)k;
            r.tok[a] = (int32_t)t;
            r.expert[a] = pick[k];
            r.weight[a] = kt_rng_uniform(&g, 0.05f, 1.0f);
            sum += r.weight[a];
        }
        for (int k = 0; k < top_k; k++)
            r.weight[t * (size_t)top_k + (size_t)k] /= sum;
    }
    for (size_t a = r.n_assign; a > 1; a--) { /* shuffle assignments */
        size_t j = (size_t)(kt_rng_next(&g) % a);
        int32_t t0 = r.tok[a - 1], e0 = r.expert[a - 1];
        float w0 = r.weight[a - 1];
        r.tok[a - 1] = r.tok[j];
        r.expert[a - 1] = r.expert[j];
        r.weight[a - 1] = r.weight[j];
        r.tok[j] = t0;
        r.expert[j] = e0;
        r.weight[j] = w0;
    }
    free(pick);
    *routing_p = r;
    return MX_OK;
}

mx_status_t kt_backend_run(const mx_backend_ops_t *b, const mx_backend_packed_t *packed, const mx_run_args_t *args)
{
    size_t ws = b->workspace_size(packed, args->n_tokens, args->n_assign);
    void *w = malloc(ws ? ws : 1);
    if (!w)
        return mx_error_set(MX_ERR_NOMEM, "kt: cannot allocate a %zu-byte workspace for %s", ws, b->name);
    mx_status_t st = b->run(packed, args, w);
    free(w);
    return st;
}

void kt_poison_bf16(uint16_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        p[i] = KT_POISON_BF16;
}

size_t kt_count_nan_bf16(const uint16_t *p, size_t n)
{
    size_t c = 0;
    for (size_t i = 0; i < n; i++)
        c += (p[i] & 0x7F80) == 0x7F80 && (p[i] & 0x007F) != 0;
    return c;
}

size_t kt_count_nan_f32(const float *p, size_t n)
{
    size_t c = 0;
    for (size_t i = 0; i < n; i++)
        c += isnan(p[i]) != 0;
    return c;
}

double kt_rel_l2_bf16(const uint16_t *a, const uint16_t *ref, size_t n)
{
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        double x = mx_quant_bf16_to_f32(a[i]), y = mx_quant_bf16_to_f32(ref[i]);
        num += (x - y) * (x - y);
        den += y * y;
    }
    return den > 0.0 ? sqrt(num / den) : sqrt(num);
}

double kt_rel_l2_f32(const float *a, const float *ref, size_t n)
{
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        double x = a[i], y = ref[i];
        num += (x - y) * (x - y);
        den += y * y;
    }
    return den > 0.0 ? sqrt(num / den) : sqrt(num);
}

double kt_tolerance(mx_scheme_t scheme)
{
    return scheme == MX_SCHEME_W4A8 || scheme == MX_SCHEME_W8A8 ? 5e-3 : 2e-3;
}
