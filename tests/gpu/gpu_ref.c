/* tests/gpu: CPU reference of the expert numerics (see gpu_ref.h). */
#include "gpu_ref.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

uint64_t gref_next(gref_rng_t *r)
{
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

float gref_uniform(gref_rng_t *r)
{
    return (float)((gref_next(r) >> 40) * (1.0 / 8388608.0) - 1.0);
}

uint16_t gref_f2bf(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return 0x7fc0;
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float gref_bf2f(uint16_t b)
{
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

float gref_e4m3_round(float v)
{
    float a = fabsf(v);
    if (isnan(a))
        return v;
    float q;
    if (a < 0.015625f) {
        q = rintf(a * 512.0f) / 512.0f;
    } else {
        int ex;
        frexpf(a, &ex);
        float quantum = ldexpf(1.0f, ex - 4);
        q = rintf(a / quantum) * quantum;
    }
    if (q > 448.0f)
        q = 448.0f;
    return copysignf(q, v);
}

static float fp4_val(unsigned nib)
{
    static const float t[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
    float v = t[nib & 7];
    return (nib & 8) ? -v : v;
}

static float e4m3_val(uint8_t b)
{
    int s = b >> 7, e = (b >> 3) & 15, m = b & 7;
    if ((b & 0x7f) == 0x7f)
        return NAN;
    float v = e ? ldexpf(1.0f + m / 8.0f, e - 7) : ldexpf((float)m, -9);
    return s ? -v : v;
}

/* Dequantized row r of m into w[cols]. */
static void deq_row(const mx_matrix_t *m, size_t r, float *w)
{
    size_t c = m->cols;
    for (size_t k = 0; k < c; k++) {
        if (m->fmt == MX_WFMT_BF16) {
            w[k] = gref_bf2f(((const uint16_t *)m->data)[r * c + k]);
        } else if (m->fmt == MX_WFMT_MXFP4) {
            uint8_t byte = ((const uint8_t *)m->data)[r * (c / 2) + k / 2];
            uint8_t e = ((const uint8_t *)m->scales)[r * (c / 32) + k / 32];
            w[k] = ldexpf(fp4_val((k & 1) ? byte >> 4 : byte & 15), (int)e - 127);
        } else {
            const float *s = m->scales;
            float sc = m->scale_kind == MX_WSCALE_BLOCK     ? s[(r / 128) * ((c + 127) / 128) + k / 128]
                       : m->scale_kind == MX_WSCALE_CHANNEL ? s[r]
                                                            : s[0];
            w[k] = e4m3_val(((const uint8_t *)m->data)[r * c + k]) * sc;
        }
    }
}

static void *blob(gref_experts_t *g, size_t bytes)
{
    void *p = calloc(1, bytes ? bytes : 1);
    if (!p)
        return NULL;
    void **nb = realloc(g->blobs, sizeof(void *) * (size_t)(g->n_blobs + 1));
    if (!nb) {
        free(p);
        return NULL;
    }
    g->blobs = nb;
    g->blobs[g->n_blobs++] = p;
    return p;
}

static int make_matrix(gref_experts_t *g, mx_matrix_t *m, mx_scheme_t sch, mx_wscale_t fp8s, size_t rows, size_t cols,
                       gref_rng_t *r)
{
    memset(m, 0, sizeof *m);
    m->rows = rows;
    m->cols = cols;
    float wscale = 1.0f / sqrtf((float)cols);
    if (sch == MX_SCHEME_W16A16) {
        uint16_t *d = blob(g, rows * cols * 2);
        if (!d)
            return -1;
        for (size_t i = 0; i < rows * cols; i++)
            d[i] = gref_f2bf(gref_uniform(r) * wscale * 1.7f);
        m->fmt = MX_WFMT_BF16;
        m->scale_kind = MX_WSCALE_NONE;
        m->data = d;
    } else if (sch == MX_SCHEME_W4A16 || sch == MX_SCHEME_W4A8) {
        uint8_t *d = blob(g, rows * cols / 2), *s = blob(g, rows * cols / 32);
        if (!d || !s)
            return -1;
        for (size_t i = 0; i < rows * cols / 2; i++)
            d[i] = (uint8_t)gref_next(r);
        int base = 127 + (int)floorf(log2f(wscale)) - 1;
        for (size_t i = 0; i < rows * cols / 32; i++)
            s[i] = (uint8_t)(base + (int)(gref_next(r) % 3) - 1);
        m->fmt = MX_WFMT_MXFP4;
        m->scale_kind = MX_WSCALE_E8M0_32;
        m->data = d;
        m->scales = s;
    } else {
        uint8_t *d = blob(g, rows * cols);
        size_t ns = fp8s == MX_WSCALE_BLOCK     ? ((rows + 127) / 128) * ((cols + 127) / 128)
                    : fp8s == MX_WSCALE_CHANNEL ? rows
                                                : 1;
        float *s = blob(g, ns * sizeof(float));
        if (!d || !s)
            return -1;
        for (size_t i = 0; i < rows * cols; i++) {
            uint8_t b = (uint8_t)gref_next(r);
            if ((b & 0x7f) >= 0x70)
                b &= 0xbf; /* keep |q| small, never NaN */
            d[i] = b;
        }
        for (size_t i = 0; i < ns; i++)
            s[i] = wscale * (0.5f + 0.25f * (gref_uniform(r) + 1.0f)) / 4.0f;
        m->fmt = MX_WFMT_FP8;
        m->scale_kind = fp8s;
        m->data = d;
        m->scales = s;
    }
    return 0;
}

int gref_experts_make(const mx_moe_desc_t *desc, int n, mx_wscale_t fp8s, int with_bias, uint64_t seed,
                      gref_experts_t *out)
{
    gref_experts_t g = {0};
    gref_rng_t r = {seed};
    g.n = n;
    g.ex = calloc((size_t)n, sizeof *g.ex);
    if (!g.ex)
        return -1;
    size_t H = desc->hidden, I = desc->inter;
    for (int j = 0; j < n; j++) {
        mx_expert_weights_t *e = &g.ex[j];
        if (make_matrix(&g, &e->gate_up, desc->scheme, fp8s, 2 * I, H, &r) ||
            make_matrix(&g, &e->down, desc->scheme, fp8s, H, I, &r))
            goto fail;
        if (with_bias) {
            float *b1 = blob(&g, 2 * I * sizeof(float)), *b2 = blob(&g, H * sizeof(float));
            if (!b1 || !b2)
                goto fail;
            for (size_t i = 0; i < 2 * I; i++)
                b1[i] = 0.2f * gref_uniform(&r);
            for (size_t i = 0; i < H; i++)
                b2[i] = 0.2f * gref_uniform(&r);
            e->gate_up_bias = b1;
            e->down_bias = b2;
        }
        e->input_scale = (1.0f + 0.5f * gref_uniform(&r)) / 448.0f;
        e->down_input_scale = (2.0f + gref_uniform(&r)) / 448.0f;
    }
    *out = g;
    return 0;
fail:
    gref_experts_free(&g);
    return -1;
}

void gref_experts_free(gref_experts_t *g)
{
    for (int i = 0; i < g->n_blobs; i++)
        free(g->blobs[i]);
    free(g->blobs);
    free(g->ex);
    memset(g, 0, sizeof *g);
}

static float act(const mx_moe_desc_t *d, float gt, float up)
{
    if (d->act == MX_ACT_SWIGLU_OAI) {
        gt = fminf(gt, d->swiglu_limit);
        up = fminf(fmaxf(up, -d->swiglu_limit), d->swiglu_limit);
        return gt / (1.0f + expf(-d->swiglu_alpha * gt)) * (up + 1.0f);
    }
    if (d->act == MX_ACT_GELU_TANH) {
        float t = tanhf(0.7978845608028654f * (gt + 0.044715f * gt * gt * gt));
        return 0.5f * gt * (1.0f + t) * up;
    }
    return gt / (1.0f + expf(-gt)) * up;
}

/* Quantizes v[n] in place per the scheme's activation rule; scale per column k into sk. */
static void quant_act(const mx_moe_desc_t *d, float *v, size_t n, float static_scale, float *sk)
{
    if (d->scheme == MX_SCHEME_W4A8) {
        for (size_t k = 0; k < n; k++) {
            v[k] = gref_e4m3_round(v[k] / static_scale);
            sk[k] = static_scale;
        }
        return;
    }
    size_t g = d->act_group ? (size_t)d->act_group : n;
    for (size_t k0 = 0; k0 < n; k0 += g) {
        float amax = 0.0f;
        for (size_t k = k0; k < k0 + g && k < n; k++)
            amax = fmaxf(amax, fabsf(v[k]));
        float s = fmaxf(amax / 448.0f, 1.0f / (448.0f * 512.0f));
        for (size_t k = k0; k < k0 + g && k < n; k++) {
            v[k] = gref_e4m3_round(v[k] / s);
            sk[k] = s;
        }
    }
}

static const mx_run_args_t *sort_args; /* qsort has no context argument in C11 */
static int cmp_assign(const void *pa, const void *pb)
{
    size_t i = *(const size_t *)pa, j = *(const size_t *)pb;
    const mx_run_args_t *a = sort_args;
    if (a->tok[i] != a->tok[j])
        return a->tok[i] < a->tok[j] ? -1 : 1;
    if (a->expert[i] != a->expert[j])
        return a->expert[i] < a->expert[j] ? -1 : 1;
    return i < j ? -1 : i > j;
}

void gref_run(const mx_moe_desc_t *d, const mx_expert_weights_t *ex, const mx_run_args_t *a)
{
    size_t H = d->hidden, I = d->inter, NA = a->n_assign;
    int quant = d->scheme == MX_SCHEME_W4A8 || d->scheme == MX_SCHEME_W8A8;
    float *xa = malloc(H * 4), *sx = malloc(H * 4), *h = malloc(I * 4), *sh = malloc(I * 4);
    float *w = malloc((H > I ? H : I) * 4);
    uint16_t *y = malloc(NA * H * 2);
    for (size_t i = 0; i < NA; i++) {
        const mx_expert_weights_t *e = &ex[a->expert[i]];
        for (size_t k = 0; k < H; k++) {
            xa[k] = gref_bf2f(a->x[(size_t)a->tok[i] * H + k]);
            sx[k] = 1.0f;
        }
        if (quant)
            quant_act(d, xa, H, e->input_scale, sx);
        for (size_t j = 0; j < I; j++) {
            float gu[2];
            for (int u = 0; u < 2; u++) {
                size_t row = d->order == MX_GATEUP_INTERLEAVED ? 2 * j + u : (u ? I + j : j);
                deq_row(&e->gate_up, row, w);
                double acc = 0.0;
                for (size_t k = 0; k < H; k++)
                    acc += (double)xa[k] * sx[k] * w[k];
                gu[u] = (float)acc + (e->gate_up_bias ? e->gate_up_bias[row] : 0.0f);
            }
            h[j] = gref_bf2f(gref_f2bf(act(d, gu[0], gu[1])));
            sh[j] = 1.0f;
        }
        if (quant)
            quant_act(d, h, I, e->down_input_scale, sh);
        for (size_t n = 0; n < H; n++) {
            deq_row(&e->down, n, w);
            double acc = 0.0;
            for (size_t k = 0; k < I; k++)
                acc += (double)h[k] * sh[k] * w[k];
            y[i * H + n] = gref_f2bf((float)acc + (e->down_bias ? e->down_bias[n] : 0.0f));
        }
    }
    if (a->mode == MX_OUT_PER_ASSIGNMENT) {
        memcpy(a->out_bf16, y, NA * H * 2);
    } else {
        /* per token: ascending expert, then assignment index */
        size_t *ord = malloc((NA ? NA : 1) * sizeof *ord);
        for (size_t i = 0; i < NA; i++)
            ord[i] = i;
        sort_args = a;
        qsort(ord, NA, sizeof *ord, cmp_assign);
        for (size_t o = 0; o < NA; o++) {
            size_t i = ord[o], t = (size_t)a->tok[i];
            for (size_t n = 0; n < H; n++)
                a->out_f32[t * H + n] += a->weight[i] * gref_bf2f(y[i * H + n]);
        }
        free(ord);
    }
    free(xa);
    free(sx);
    free(h);
    free(sh);
    free(w);
    free(y);
}

double gref_rel_l2_bf16(const uint16_t *a, const uint16_t *b, size_t n)
{
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        double x = gref_bf2f(a[i]), y = gref_bf2f(b[i]);
        num += (x - y) * (x - y);
        den += y * y;
    }
    return den > 0.0 ? sqrt(num / den) : sqrt(num);
}

double gref_rel_l2_f32(const float *a, const float *b, size_t n)
{
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        double x = a[i], y = b[i];
        num += (x - y) * (x - y);
        den += y * y;
    }
    return den > 0.0 ? sqrt(num / den) : sqrt(num);
}
