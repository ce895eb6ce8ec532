/* coordinator/route.c: router logits and the five routers (FORMATS.md Part 1,
 * Part 2 section 7). Everything here is per-token and batch-invariant except
 * expert choice, which is global by definition. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "coord_internal.h"
#include "mxep/coordinator.h"
#ifdef _OPENMP
#include <omp.h>
#endif

#define LOGIT_CHUNK 64
#define LOGIT_TOK 8

/* ---------------------------------------------------------------- logits */

/* Gemma 4 router input (FORMATS.md Part 2 section 6). Sources: vLLM
 * vllm/model_executor/models/gemma4.py (commit 001cabc1) Gemma4Router.forward:
 * RMSNorm(H, eps=config.rms_norm_eps, has_weight=False), x * root_size
 * (H^-0.5), x * scale, then GateLinear (BF16 weights and activations, FP32
 * output); HF transformers models/gemma4 Gemma4TextRouter.forward: the same
 * with `hidden_states * self.scale * self.scalar_root_size` (scale first) and
 * the norm in FP32 as x * pow(mean(x^2) + eps, -0.5). `scale` in the
 * checkpoint does NOT include H^-0.5 (both multiply by it separately and
 * initialize scale to ones). The references round to BF16 after each step;
 * here the chain is FP32 and rounds once, so the projection sees BF16 inputs
 * as in vLLM and reuses the plain logits code (and its AVX2 twin) unchanged:
 *   ss = sum_h x_h^2 (double, ascending h); r = (float)(1 / sqrt(ss / H + eps))
 *   (0 when ss / H + eps is 0: an all-zero token with eps 0 stays zero, not NaN);
 *   y_h = bf16_rne(((x_h * r) * scale_h) * (float)H^-0.5), FP32 products in that order.
 * Per token, so batch-invariant. */
static void gemma4_router_input(const uint16_t *x, size_t n_tokens, size_t hidden, const float *scale, float eps,
                                uint16_t *y)
{
    const float rs = (float)(1.0 / sqrt((double)hidden));
    const long long T = (long long)n_tokens;
#pragma omp parallel for schedule(static) if (n_tokens * hidden > 65536)
    for (long long t = 0; t < T; t++) {
        const uint16_t *xt = x + (size_t)t * hidden;
        uint16_t *yt = y + (size_t)t * hidden;
        double ss = 0.0;
        for (size_t h = 0; h < hidden; h++) {
            const double v = (double)mxi_bf16_to_f32(xt[h]);
            ss += v * v;
        }
        const double d = ss / (double)hidden + (double)eps;
        const float r = d > 0.0 ? (float)(1.0 / sqrt(d)) : 0.0f;
        for (size_t h = 0; h < hidden; h++) {
            float v = mxi_bf16_to_f32(xt[h]) * r;
            v = v * scale[h];
            v = v * rs;
            yt[h] = mxi_bf16_from_f32(v);
        }
    }
}

mx_status_t mx_coord_router_logits(const mx_router_weights_t *router, const uint16_t *x, size_t n_tokens, size_t hidden,
                                   float *logits_p)
{
    if (!router || !logits_p || (n_tokens > 0 && !x))
        return mx_error_set(MX_ERR_INVALID, "router logits: NULL argument (router, x or logits)");
    if (!router->weight || router->n_experts < 1)
        return mx_error_set(MX_ERR_INVALID, "router logits: router has no weight or %d experts (expected >= 1)",
                            router->n_experts);
    if (router->hidden != hidden)
        return mx_error_set(MX_ERR_INVALID, "router logits: router hidden size %zu but tokens have %zu columns",
                            router->hidden, hidden);
    if (router->scale) { /* Gemma 4: normalized, scaled input, then the plain projection */
        if (!isfinite(router->rms_eps) || router->rms_eps < 0.0f)
            return mx_error_set(MX_ERR_INVALID, "router logits: gemma4 rms_eps %g (expected a finite number >= 0)",
                                (double)router->rms_eps);
        if (n_tokens == 0 || hidden == 0) {
            mx_router_weights_t plain = *router;
            plain.scale = NULL;
            return mx_coord_router_logits(&plain, x, n_tokens, hidden, logits_p);
        }
        uint16_t *y = malloc(n_tokens * hidden * sizeof *y);
        if (!y)
            return mx_error_set(MX_ERR_NOMEM, "router logits: gemma4 input of %zu x %zu", n_tokens, hidden);
        gemma4_router_input(x, n_tokens, hidden, router->scale, router->rms_eps, y);
        mx_router_weights_t plain = *router;
        plain.scale = NULL;
        mx_status_t st = mx_coord_router_logits(&plain, y, n_tokens, hidden, logits_p);
        free(y);
        return st;
    }
    const size_t E = (size_t)router->n_experts;
    const float *W = router->weight;
    const float *b = router->bias;
    const long long T = (long long)n_tokens;
#if MXI_COORD_X86
    /* AVX2 tiles of 16 tokens x 6 experts over blocks of h, OpenMP over
     * (token block, expert chunk) tasks: bitwise the scalar result
     * (coordinator/x86_avx2.c). Fewer than 8 tokens: the per-token path. */
    if (n_tokens >= 8 && hidden > 0 && mxi_coord_use_avx2()) {
        int nth = 1;
#ifdef _OPENMP
        nth = omp_get_max_threads();
#endif
        /* tasks: token blocks x expert chunks, as few chunks as keep every
         * thread busy (each task packs its token block again) */
        const size_t n_tb = (n_tokens + MXI_LOGIT_TB - 1) / MXI_LOGIT_TB;
        size_t per_tb = ((size_t)nth + n_tb - 1) / n_tb;
        size_t ec = (E + per_tb - 1) / per_tb;
        ec = (ec + 5) / 6 * 6; /* whole tiles of 6 experts */
        const size_t n_ec = (E + ec - 1) / ec;
        const long long n_tasks = (long long)(n_tb * n_ec);
        if (nth > n_tasks)
            nth = (int)n_tasks;
        const size_t per = (size_t)MXI_LOGIT_TB * MXI_LOGIT_KC + (size_t)MXI_LOGIT_TB * ec;
        float *scratch = malloc((size_t)nth * per * sizeof(float));
        if (scratch) { /* else: the scalar code below, same result */
#pragma omp parallel num_threads(nth)
            {
                int tid = 0;
#ifdef _OPENMP
                tid = omp_get_thread_num();
#endif
                float *xp = scratch + (size_t)tid * per, *acc = xp + (size_t)MXI_LOGIT_TB * MXI_LOGIT_KC;
#pragma omp for schedule(static)
                for (long long task = 0; task < n_tasks; task++) {
                    const size_t tb = (size_t)task / n_ec, ecx = (size_t)task % n_ec;
                    const size_t t0 = tb * MXI_LOGIT_TB, e0 = ecx * ec;
                    const size_t nt = n_tokens - t0 < MXI_LOGIT_TB ? n_tokens - t0 : MXI_LOGIT_TB;
                    const size_t e1 = E - e0 < ec ? E : e0 + ec;
                    mxi_coord_logits_task_avx2(W, b, E, hidden, x, t0, nt, e0, e1, logits_p, xp, acc);
                }
            }
            free(scratch);
            return MX_OK;
        }
    }
#endif
    /* Batches: transpose W to [H x E] once so the inner loop runs over
     * contiguous experts (vectorizes). Each logit still gets one accumulator
     * summing in ascending h order, so the result is bitwise the same as the
     * per-token path below (no FMA contraction: ISO C mode). */
    float *WT = NULL;
    if (n_tokens >= 8 && E * hidden <= ((size_t)1 << 28))
        WT = malloc(E * hidden * sizeof(float));
    if (WT) {
        for (size_t e = 0; e < E; e++)
            for (size_t h = 0; h < hidden; h++)
                WT[h * E + e] = W[e * hidden + h];
        /* tiles of LOGIT_TOK tokens x LOGIT_CHUNK experts: one pass over W^T serves a whole tile */
        const long long n_tiles = (T + LOGIT_TOK - 1) / LOGIT_TOK;
#pragma omp parallel for schedule(static)
        for (long long tile = 0; tile < n_tiles; tile++) {
            const size_t t0 = (size_t)tile * LOGIT_TOK;
            const size_t nt = (size_t)T - t0 < LOGIT_TOK ? (size_t)T - t0 : LOGIT_TOK;
            float acc[LOGIT_TOK][LOGIT_CHUNK];
            for (size_t e0 = 0; e0 < E; e0 += LOGIT_CHUNK) {
                size_t ne = E - e0 < LOGIT_CHUNK ? E - e0 : LOGIT_CHUNK;
                for (size_t i = 0; i < nt; i++)
                    for (size_t e = 0; e < ne; e++)
                        acc[i][e] = 0.0f;
                for (size_t h = 0; h < hidden; h++) {
                    const float *wr = WT + h * E + e0;
                    for (size_t i = 0; i < nt; i++) {
                        const float v = mxi_bf16_to_f32(x[(t0 + i) * hidden + h]);
                        for (size_t e = 0; e < ne; e++)
                            acc[i][e] += wr[e] * v;
                    }
                }
                for (size_t i = 0; i < nt; i++)
                    for (size_t e = 0; e < ne; e++)
                        logits_p[(t0 + i) * E + e0 + e] = b ? acc[i][e] + b[e0 + e] : acc[i][e];
            }
        }
        free(WT);
        return MX_OK;
    }
#pragma omp parallel for schedule(static)
    for (long long t = 0; t < T; t++) {
        const uint16_t *xt = x + (size_t)t * hidden;
        float *lt = logits_p + (size_t)t * E;
        size_t e = 0;
        /* four experts at a time: four independent accumulators, each one
         * summing its own expert in ascending h order */
        for (; e + 4 <= E; e += 4) {
            const float *w0 = W + e * hidden, *w1 = w0 + hidden, *w2 = w1 + hidden, *w3 = w2 + hidden;
            float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
            for (size_t h = 0; h < hidden; h++) {
                float v = mxi_bf16_to_f32(xt[h]);
                a0 += w0[h] * v;
                a1 += w1[h] * v;
                a2 += w2[h] * v;
                a3 += w3[h] * v;
            }
            lt[e] = a0;
            lt[e + 1] = a1;
            lt[e + 2] = a2;
            lt[e + 3] = a3;
        }
        for (; e < E; e++) {
            const float *w0 = W + e * hidden;
            float a0 = 0.0f;
            for (size_t h = 0; h < hidden; h++)
                a0 += w0[h] * mxi_bf16_to_f32(xt[h]);
            lt[e] = a0;
        }
        if (b)
            for (e = 0; e < E; e++)
                lt[e] = lt[e] + b[e];
    }
    return MX_OK;
}

/* ---------------------------------------------------------------- helpers */

void mx_routing_fini(mx_routing_t *r)
{
    if (!r)
        return;
    free(r->tok);
    free(r->expert);
    free(r->weight);
    free(r->topk_ids);
    free(r->topk_weights);
    memset(r, 0, sizeof *r);
}

static mx_status_t routing_alloc(mx_routing_t *r, size_t n_tokens, int n_experts, int top_k, size_t n_assign)
{
    memset(r, 0, sizeof *r);
    r->n_tokens = n_tokens;
    r->n_experts = n_experts;
    r->top_k = top_k;
    r->n_assign = n_assign;
    size_t na = n_assign ? n_assign : 1;
    r->tok = malloc(na * sizeof *r->tok);
    r->expert = malloc(na * sizeof *r->expert);
    r->weight = malloc(na * sizeof *r->weight);
    int ok = r->tok && r->expert && r->weight;
    if (top_k > 0) {
        size_t nk = n_tokens * (size_t)top_k;
        r->topk_ids = malloc((nk ? nk : 1) * sizeof *r->topk_ids);
        r->topk_weights = malloc((nk ? nk : 1) * sizeof *r->topk_weights);
        ok = ok && r->topk_ids && r->topk_weights;
    }
    if (!ok) {
        mx_routing_fini(r);
        return mx_error_set(MX_ERR_NOMEM, "routing: cannot allocate %zu assignments", n_assign);
    }
    return MX_OK;
}

static mx_status_t check_logits(const float *logits, size_t n_tokens, int n_experts, size_t token_base)
{
    for (size_t t = 0; t < n_tokens; t++)
        for (int e = 0; e < n_experts; e++)
            if (!isfinite(logits[t * (size_t)n_experts + (size_t)e]))
                return mx_error_set(MX_ERR_INVALID, "router: logit of token %zu, expert %d is %s (expected finite)",
                                    t + token_base, e,
                                    isnan(logits[t * (size_t)n_experts + (size_t)e]) ? "NaN" : "infinite");
    return MX_OK;
}

/* k largest of v[0..n) (highest first; ties to the lower index); `used` is
 * scratch of n bytes. */
static void topk_select(const float *v, int n, int k, unsigned char *used, int32_t *ids)
{
    memset(used, 0, (size_t)n);
    for (int j = 0; j < k; j++) {
        int best = -1;
        for (int i = 0; i < n; i++) {
            if (used[i])
                continue;
            if (best < 0 || v[i] > v[best])
                best = i;
        }
        used[best] = 1;
        ids[j] = best;
    }
}

/* softmax of v[0..n) into p (max subtracted, sum in ascending order) */
static void softmax(const float *v, int n, float *p)
{
    float m = v[0];
    for (int i = 1; i < n; i++)
        if (v[i] > m)
            m = v[i];
    float s = 0.0f;
    for (int i = 0; i < n; i++) {
        p[i] = expf(v[i] - m);
        s += p[i];
    }
    for (int i = 0; i < n; i++)
        p[i] = p[i] / s;
}

static mx_status_t check_desc_topk(const mx_router_desc_t *d, int n_experts)
{
    if (d->top_k < 1 || d->top_k > n_experts)
        return mx_error_set(MX_ERR_INVALID, "router %s: top_k %d (expected 1..%d experts)", mx_router_name(d->kind),
                            d->top_k, n_experts);
    if (d->kind == MX_ROUTER_SIGMOID_GROUPED) {
        if (d->n_group > 1) {
            if (n_experts % d->n_group != 0)
                return mx_error_set(MX_ERR_INVALID,
                                    "router sigmoid_grouped: %d experts do not split into n_group %d equal groups",
                                    n_experts, d->n_group);
            if (d->topk_group < 1 || d->topk_group > d->n_group)
                return mx_error_set(MX_ERR_INVALID, "router sigmoid_grouped: topk_group %d (expected 1..n_group %d)",
                                    d->topk_group, d->n_group);
            int kept = d->topk_group * (n_experts / d->n_group);
            if (d->top_k > kept)
                return mx_error_set(MX_ERR_INVALID,
                                    "router sigmoid_grouped: top_k %d exceeds the %d experts of the %d kept groups",
                                    d->top_k, kept, d->topk_group);
        }
        if (!isfinite(d->scaling_factor))
            return mx_error_set(MX_ERR_INVALID, "router sigmoid_grouped: scaling_factor is not finite");
    }
    return MX_OK;
}

static void sort_small(int32_t *ids, float *w, int k) /* by id ascending, w follows */
{
    for (int i = 1; i < k; i++) {
        int32_t id = ids[i];
        float wv = w[i];
        int j = i - 1;
        while (j >= 0 && ids[j] > id) {
            ids[j + 1] = ids[j];
            w[j + 1] = w[j];
            j--;
        }
        ids[j + 1] = id;
        w[j + 1] = wv;
    }
}

/* ---------------------------------------------------------------- top-k routers */

mx_status_t mx_coord_route(const mx_router_desc_t *desc, const float *logits, const float *correction_bias,
                           size_t n_tokens, int n_experts, mx_routing_t *routing_p)
{
    if (!desc || !routing_p || (n_tokens > 0 && !logits))
        return mx_error_set(MX_ERR_INVALID, "route: NULL argument (desc, logits or routing)");
    if (n_experts < 1)
        return mx_error_set(MX_ERR_INVALID, "route: %d experts (expected >= 1)", n_experts);
    if (desc->kind == MX_ROUTER_EXPERT_CHOICE)
        return mx_error_set(
            MX_ERR_INVALID,
            "route: expert_choice is global; use mx_coord_route_expert_choice with every rank's logits");
    if ((unsigned)desc->kind >= MX_ROUTER_COUNT)
        return mx_error_set(MX_ERR_INVALID, "route: unknown router kind %d", (int)desc->kind);
    mx_status_t st = check_desc_topk(desc, n_experts);
    if (st != MX_OK)
        return st;
    if ((st = check_logits(logits, n_tokens, n_experts, 0)) != MX_OK)
        return st;
    /* the per-expert vector: SIGMOID_GROUPED correction bias, GEMMA4 per_expert_scale (NULL: 0 / ones) */
    if (correction_bias)
        for (int e = 0; e < n_experts; e++)
            if (!isfinite(correction_bias[e]))
                return mx_error_set(MX_ERR_INVALID, "route: %s of expert %d is not finite",
                                    desc->kind == MX_ROUTER_GEMMA4 ? "per_expert_scale" : "correction bias", e);

    const int E = n_experts, k = desc->top_k;
    mx_routing_t r;
    if ((st = routing_alloc(&r, n_tokens, E, k, n_tokens * (size_t)k)) != MX_OK)
        return st;
    float *buf = malloc(3 * (size_t)E * sizeof(float));
    unsigned char *used = malloc((size_t)E);
    if (!buf || !used) {
        free(buf);
        free(used);
        mx_routing_fini(&r);
        return mx_error_set(MX_ERR_NOMEM, "route: cannot allocate scratch for %d experts", E);
    }
    float *p = buf, *sb = buf + E, *gs = buf + 2 * E;
    int32_t ids[1024];
    int32_t *idp = k <= 1024 ? ids : NULL;
    int32_t *idheap = NULL;
    if (!idp) {
        idheap = malloc((size_t)k * sizeof *idheap);
        if (!idheap) {
            free(buf);
            free(used);
            mx_routing_fini(&r);
            return mx_error_set(MX_ERR_NOMEM, "route: cannot allocate top-k scratch");
        }
        idp = idheap;
    }

    for (size_t t = 0; t < n_tokens; t++) {
        const float *lg = logits + t * (size_t)E;
        int32_t *tid = r.topk_ids + t * (size_t)k;
        float *tw = r.topk_weights + t * (size_t)k;
        switch (desc->kind) {
        case MX_ROUTER_TOPK_SOFTMAX: {
            topk_select(lg, E, k, used, idp);
            float m = lg[idp[0]], s = 0.0f;
            for (int j = 0; j < k; j++) {
                tw[j] = expf(lg[idp[j]] - m);
                s += tw[j];
            }
            for (int j = 0; j < k; j++) {
                tw[j] = tw[j] / s;
                tid[j] = idp[j];
            }
            break;
        }
        case MX_ROUTER_SOFTMAX_TOPK: {
            softmax(lg, E, p);
            topk_select(p, E, k, used, idp);
            float s = 0.0f;
            for (int j = 0; j < k; j++) {
                tid[j] = idp[j];
                tw[j] = p[idp[j]];
                s += tw[j];
            }
            if (desc->renormalize)
                for (int j = 0; j < k; j++)
                    tw[j] = tw[j] / s;
            break;
        }
        case MX_ROUTER_SIGMOID_GROUPED: {
            for (int e = 0; e < E; e++) {
                p[e] = 1.0f / (1.0f + expf(-lg[e]));                          /* s */
                sb[e] = p[e] + (correction_bias ? correction_bias[e] : 0.0f); /* s' */
            }
            if (desc->n_group > 1) {
                const int G = desc->n_group, gsz = E / G;
                for (int g = 0; g < G; g++) {
                    const float *v = sb + g * gsz;
                    int32_t top2[2];
                    int n2 = gsz >= 2 ? 2 : 1;
                    topk_select(v, gsz, n2, used, top2);
                    gs[g] = n2 == 2 ? v[top2[0]] + v[top2[1]] : v[top2[0]];
                }
                int32_t keep[1024];
                int32_t *kp = G <= 1024 ? keep : NULL;
                if (!kp) { /* absurd group counts: refuse rather than allocate on every token */
                    free(buf);
                    free(used);
                    free(idheap);
                    mx_routing_fini(&r);
                    return mx_error_set(MX_ERR_INVALID, "router sigmoid_grouped: n_group %d (expected <= 1024)", G);
                }
                topk_select(gs, G, desc->topk_group, used, kp);
                memset(used, 0, (size_t)G);
                for (int j = 0; j < desc->topk_group; j++)
                    used[kp[j]] = 1;
                /* DeepSeek's reference: masked_fill(~mask, float("-inf")) */
                for (int g = 0; g < G; g++)
                    if (!used[g])
                        for (int e = g * gsz; e < (g + 1) * gsz; e++)
                            sb[e] = -INFINITY;
            }
            topk_select(sb, E, k, used, idp);
            float s = 0.0f;
            for (int j = 0; j < k; j++) {
                tid[j] = idp[j];
                tw[j] = p[idp[j]];
                s += tw[j];
            }
            for (int j = 0; j < k; j++)
                tw[j] = tw[j] / s * desc->scaling_factor;
            break;
        }
        case MX_ROUTER_GEMMA4: {
            /* Gemma 4 (vLLM gemma4.py gemma4_routing_function_torch; HF
             * Gemma4TextRouter): p = softmax over all E, top-k, w = p_k / sum p_k
             * (always renormalized), then x per_expert_scale[e] (here in the
             * `correction_bias` argument; NULL = ones). Top-k of the logits as
             * vLLM's torch.topk(gating_output) (the order of p, without ties
             * that expf rounding could add); ties to the lower expert. */
            softmax(lg, E, p);
            topk_select(lg, E, k, used, idp);
            float s = 0.0f;
            for (int j = 0; j < k; j++) {
                tid[j] = idp[j];
                tw[j] = p[idp[j]];
                s += tw[j];
            }
            for (int j = 0; j < k; j++) {
                tw[j] = tw[j] / s;
                if (correction_bias)
                    tw[j] = tw[j] * correction_bias[idp[j]];
            }
            break;
        }
        default:
            break;
        }
        /* assignments of this token, expert ascending */
        size_t a0 = t * (size_t)k;
        for (int j = 0; j < k; j++) {
            r.tok[a0 + (size_t)j] = (int32_t)t;
            r.expert[a0 + (size_t)j] = tid[j];
            r.weight[a0 + (size_t)j] = tw[j];
        }
        sort_small(r.expert + a0, r.weight + a0, k);
    }
    free(buf);
    free(used);
    free(idheap);
    *routing_p = r;
    return MX_OK;
}

mx_status_t mx_coord_route_router(const mx_router_desc_t *desc, const mx_router_weights_t *router, const float *logits,
                                  size_t n_tokens, mx_routing_t *routing_p)
{
    if (!desc || !router)
        return mx_error_set(MX_ERR_INVALID, "route: NULL argument (desc or router)");
    const float *vec = desc->kind == MX_ROUTER_SIGMOID_GROUPED ? router->correction_bias
                       : desc->kind == MX_ROUTER_GEMMA4        ? router->per_expert_scale
                                                               : NULL;
    return mx_coord_route(desc, logits, vec, n_tokens, router->n_experts, routing_p);
}

/* ---------------------------------------------------------------- expert choice */

size_t mx_coord_expert_capacity(float capacity_factor, size_t t_global, int top_k, int n_experts)
{
    if (!(capacity_factor > 0.0f) || !isfinite(capacity_factor) || top_k < 1 || n_experts < 1 || t_global == 0)
        return 0;
    /* capacity factor to 6 decimals, then exact integer arithmetic:
     * C = ceil(cf_micro * T * k / (10^6 * E)) */
    double cfm = round((double)capacity_factor * 1e6);
    if (cfm < 1.0)
        return 0;
    if (cfm > 1e15)
        return t_global;
    uint64_t num, den = 1000000ull * (uint64_t)n_experts;
    if (__builtin_mul_overflow((uint64_t)cfm, (uint64_t)t_global, &num) ||
        __builtin_mul_overflow(num, (uint64_t)top_k, &num))
        return t_global; /* the capacity is astronomically above T */
    uint64_t c = num / den + (num % den != 0);
    return c > t_global ? t_global : (size_t)c;
}

typedef struct {
    float s;
    uint32_t t;
} ec_item_t;

static int ec_cmp(const void *a, const void *b)
{
    const ec_item_t *x = a, *y = b;
    if (x->s > y->s)
        return -1;
    if (x->s < y->s)
        return 1;
    return x->t < y->t ? -1 : (x->t > y->t ? 1 : 0);
}

/* Moves the C first items of the total order ec_cmp (score descending, then
 * token ascending) into items[0..C), in any order: quickselect with a
 * median-of-three pivot. The order is total, so the set is unique. */
static void select_top(ec_item_t *items, size_t n, size_t C)
{
    size_t lo = 0, hi = n; /* the answer's boundary lies in [lo, hi) */
    while (C > lo && C < hi && hi - lo > 16) {
        size_t mid = lo + (hi - lo) / 2;
        ec_item_t a = items[lo], b = items[mid], c = items[hi - 1], pv;
        if (ec_cmp(&a, &b) < 0)
            pv = ec_cmp(&b, &c) < 0 ? b : (ec_cmp(&a, &c) < 0 ? c : a);
        else
            pv = ec_cmp(&a, &c) < 0 ? a : (ec_cmp(&b, &c) < 0 ? c : b);
        /* three-way partition: [lo, lt) before pv, [lt, gt) == pv (one item), [gt, hi) after */
        size_t lt = lo, i = lo, gt = hi;
        while (i < gt) {
            int k = ec_cmp(&items[i], &pv);
            if (k < 0) {
                ec_item_t t = items[lt];
                items[lt++] = items[i];
                items[i++] = t;
            } else if (k > 0) {
                ec_item_t t = items[--gt];
                items[gt] = items[i];
                items[i] = t;
            } else {
                i++;
            }
        }
        if (C <= lt)
            hi = lt;
        else if (C >= gt)
            lo = gt;
        else
            return;
    }
    if (C > lo && C < hi) /* small range: sort it */
        qsort(items + lo, hi - lo, sizeof *items, ec_cmp);
}

mx_status_t mx_coord_route_expert_choice(const mx_router_desc_t *desc, const float *logits_global, size_t t_global,
                                         int n_experts, size_t token_offset, size_t n_local, mx_routing_t *routing_p)
{
    if (!desc || !routing_p || (t_global > 0 && !logits_global))
        return mx_error_set(MX_ERR_INVALID, "expert choice: NULL argument (desc, logits or routing)");
    if (desc->kind != MX_ROUTER_EXPERT_CHOICE)
        return mx_error_set(MX_ERR_INVALID, "expert choice: router kind is %s (expected expert_choice)",
                            mx_router_name(desc->kind));
    if (n_experts < 1)
        return mx_error_set(MX_ERR_INVALID, "expert choice: %d experts (expected >= 1)", n_experts);
    if (desc->top_k < 1)
        return mx_error_set(MX_ERR_INVALID, "expert choice: top_k %d (expected >= 1; capacity = cf * T * k / E)",
                            desc->top_k);
    if (!(desc->capacity_factor > 0.0f) || !isfinite(desc->capacity_factor))
        return mx_error_set(MX_ERR_INVALID, "expert choice: capacity_factor %g (expected a finite value > 0)",
                            (double)desc->capacity_factor);
    if (token_offset > t_global || n_local > t_global - token_offset)
        return mx_error_set(MX_ERR_INVALID, "expert choice: local tokens [%zu, %zu) outside the global batch of %zu",
                            token_offset, token_offset + n_local, t_global);
    if (t_global > UINT32_MAX)
        return mx_error_set(MX_ERR_INVALID, "expert choice: global batch of %zu tokens (expected < 2^32)", t_global);
    mx_status_t st = check_logits(logits_global, t_global, n_experts, 0);
    if (st != MX_OK)
        return st;

    const size_t E = (size_t)n_experts;
    const size_t C = mx_coord_expert_capacity(desc->capacity_factor, t_global, desc->top_k, n_experts);
    float *scores = malloc((t_global ? t_global : 1) * E * sizeof(float));
    ec_item_t *items = malloc((t_global ? t_global : 1) * sizeof(ec_item_t));
    float *chosen = malloc((n_local ? n_local : 1) * E * sizeof(float)); /* weight, or -1 = not chosen */
    if (!scores || !items || !chosen) {
        free(scores);
        free(items);
        free(chosen);
        return mx_error_set(MX_ERR_NOMEM, "expert choice: cannot allocate scores for %zu tokens x %zu experts",
                            t_global, E);
    }
    for (size_t t = 0; t < t_global; t++)
        softmax(logits_global + t * E, n_experts, scores + t * E);
    for (size_t i = 0; i < n_local * E; i++)
        chosen[i] = -1.0f;
    size_t n_assign = 0;
    for (size_t e = 0; e < E && C > 0; e++) {
        for (size_t t = 0; t < t_global; t++) {
            items[t].s = scores[t * E + e];
            items[t].t = (uint32_t)t;
        }
        select_top(items, t_global, C);
        for (size_t j = 0; j < C; j++) {
            size_t t = items[j].t;
            if (t >= token_offset && t < token_offset + n_local) {
                chosen[(t - token_offset) * E + e] = items[j].s;
                n_assign++;
            }
        }
    }
    mx_routing_t r;
    st = routing_alloc(&r, n_local, n_experts, 0, n_assign);
    if (st == MX_OK) {
        size_t a = 0;
        for (size_t t = 0; t < n_local; t++)
            for (size_t e = 0; e < E; e++)
                if (chosen[t * E + e] >= 0.0f) {
                    r.tok[a] = (int32_t)t;
                    r.expert[a] = (int32_t)e;
                    r.weight[a] = chosen[t * E + e];
                    a++;
                }
        *routing_p = r;
    }
    free(scores);
    free(items);
    free(chosen);
    return st;
}
