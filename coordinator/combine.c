/* coordinator/combine.c: the owner's combine. EXACT sums weight * BF16 row in
 * FP32 in ascending global expert order (the same code as the reference
 * pipeline); REDUCE sums the workers' FP32 partial rows in ascending rank order. */
#include <stdlib.h>
#include <string.h>

#include "coord_internal.h"
#ifdef _OPENMP
#include <omp.h>
#endif
#include "mxep/coordinator.h"

#define CHUNK 256

void mxi_coord_combine_rows_scalar(const uint16_t *const *rows, const float *weights, int n, size_t hidden,
                                   uint16_t *out)
{
    float acc[CHUNK];
    for (size_t h0 = 0; h0 < hidden; h0 += CHUNK) {
        size_t len = hidden - h0 < CHUNK ? hidden - h0 : CHUNK;
        for (size_t h = 0; h < len; h++)
            acc[h] = 0.0f;
        for (int i = 0; i < n; i++) {
            const uint16_t *r = rows[i] + h0;
            const float w = weights[i];
            for (size_t h = 0; h < len; h++)
                acc[h] += w * mxi_bf16_to_f32(r[h]);
        }
        for (size_t h = 0; h < len; h++)
            out[h0 + h] = mxi_bf16_from_f32(acc[h]);
    }
}

void mx_coord_combine_rows(const uint16_t *const *rows, const float *weights, int n, size_t hidden, uint16_t *out)
{
#if MXI_COORD_X86
    if (mxi_coord_use_avx2()) {
        mxi_coord_combine_rows_avx2(rows, weights, n, hidden, out);
        return;
    }
#endif
    mxi_coord_combine_rows_scalar(rows, weights, n, hidden, out);
}

void mx_coord_combine_sizes(const mx_dispatch_plan_t *plan, mx_combine_mode_t mode, size_t hidden, size_t *bytes_p)
{
    for (int r = 0; r < plan->n_ranks; r++) {
        if (mode == MX_COMBINE_REDUCE)
            bytes_p[r] = (plan->rank_copy_off[r + 1] - plan->rank_copy_off[r]) * hidden * sizeof(float);
        else
            bytes_p[r] = (plan->rank_entry_off[r + 1] - plan->rank_entry_off[r]) * hidden * sizeof(uint16_t);
    }
}

/* index of local token t among the copies to rank r, or -1 */
static long find_copy(const mx_dispatch_plan_t *p, int r, int32_t t)
{
    size_t lo = p->rank_copy_off[r], hi = p->rank_copy_off[r + 1];
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (p->copy_token[mid] < t)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < p->rank_copy_off[r + 1] && p->copy_token[lo] == t ? (long)lo : -1;
}

mx_status_t mx_coord_combine(const mx_dispatch_plan_t *plan, mx_combine_mode_t mode, const void *recv,
                             const size_t *displs, size_t hidden, uint16_t *out_p)
{
    if (!plan || (plan->n_tokens > 0 && !out_p) || (plan->n_entries > 0 && (!recv || !displs)))
        return mx_error_set(MX_ERR_INVALID, "combine: NULL argument");
    const uint8_t **src = malloc((size_t)(plan->n_ranks > 0 ? plan->n_ranks : 1) * sizeof *src);
    if (!src)
        return mx_error_set(MX_ERR_NOMEM, "combine: out of memory");
    for (int r = 0; r < plan->n_ranks; r++)
        src[r] = plan->rank_copy_off[r + 1] > plan->rank_copy_off[r] ? (const uint8_t *)recv + displs[r] : NULL;
    mx_status_t st = mx_coord_combine_from(plan, mode, src, hidden, out_p);
    free(src);
    return st;
}

mx_status_t mx_coord_combine_from(const mx_dispatch_plan_t *plan, mx_combine_mode_t mode, const uint8_t *const *src,
                                  size_t hidden, uint16_t *out_p)
{
    if (!plan || (plan->n_tokens > 0 && !out_p) || (plan->n_entries > 0 && !src))
        return mx_error_set(MX_ERR_INVALID, "combine: NULL argument");
    if (mode != MX_COMBINE_EXACT && mode != MX_COMBINE_REDUCE)
        return mx_error_set(MX_ERR_INVALID, "combine: unknown mode %d", (int)mode);
    if (hidden == 0)
        return mx_error_set(MX_ERR_INVALID, "combine: hidden size 0");
    const size_t align = mode == MX_COMBINE_EXACT ? sizeof(uint16_t) : sizeof(float);
    for (int r = 0; r < plan->n_ranks; r++)
        if (plan->rank_copy_off[r + 1] > plan->rank_copy_off[r] && (!src[r] || (uintptr_t)src[r] % align != 0))
            return mx_error_set(MX_ERR_INVALID, "combine: reply of rank %d is %s", r,
                                src[r] ? (align == 2 ? "not 2-byte aligned" : "not 4-byte aligned") : "missing");
    const long long T = (long long)plan->n_tokens;
    if (mode == MX_COMBINE_EXACT) {
        size_t maxn = 0;
        for (size_t t = 0; t < plan->n_tokens; t++) {
            size_t n = plan->token_entry_off[t + 1] - plan->token_entry_off[t];
            if (n > maxn)
                maxn = n;
        }
        int nth = 1;
#ifdef _OPENMP
        nth = omp_get_max_threads();
#endif
        const uint16_t **rows = malloc((maxn ? maxn : 1) * (size_t)nth * sizeof *rows);
        float *w = malloc((maxn ? maxn : 1) * (size_t)nth * sizeof *w);
        if (!rows || !w) {
            free(rows);
            free(w);
            return mx_error_set(MX_ERR_NOMEM, "combine: cannot allocate %zu rows", maxn);
        }
        const size_t row_bytes = hidden * sizeof(uint16_t);
#pragma omp parallel for schedule(static) num_threads(nth)
        for (long long t = 0; t < T; t++) {
            int tid = 0;
#ifdef _OPENMP
            tid = omp_get_thread_num();
#endif
            const uint16_t **rw = rows + (size_t)tid * (maxn ? maxn : 1);
            float *ww = w + (size_t)tid * (maxn ? maxn : 1);
            size_t a = plan->token_entry_off[t], n = plan->token_entry_off[t + 1] - a;
            for (size_t i = 0; i < n; i++) {
                int32_t e = plan->token_entry[a + i];
                int r = plan->entry_rank[e];
                rw[i] =
                    (const uint16_t *)(src[r] + (size_t)(e - (int32_t)plan->rank_entry_off[r]) * row_bytes);
                ww[i] = plan->entry_weight[e];
            }
            mx_coord_combine_rows(rw, ww, (int)n, hidden, out_p + (size_t)t * hidden);
        }
        free(rows);
        free(w);
        return MX_OK;
    }
    const size_t row_bytes = hidden * sizeof(float);
#if MXI_COORD_X86
    /* fast: find each token's rows once, then one vector pass over h */
    const float **rrows = mxi_coord_use_avx2() ? malloc((size_t)plan->n_ranks * sizeof *rrows * 64) : NULL;
    if (rrows) {
        int nth = 1;
#ifdef _OPENMP
        nth = omp_get_max_threads();
        if (nth > 64)
            nth = 64;
#endif
#pragma omp parallel for schedule(static) num_threads(nth)
        for (long long t = 0; t < T; t++) {
            int tid = 0;
#ifdef _OPENMP
            tid = omp_get_thread_num();
#endif
            const float **rr = rrows + (size_t)tid * (size_t)plan->n_ranks;
            int n = 0;
            for (int r = 0; r < plan->n_ranks; r++) {
                long c = find_copy(plan, r, (int32_t)t);
                if (c >= 0)
                    rr[n++] =
                        (const float *)(src[r] + (size_t)(c - (long)plan->rank_copy_off[r]) * row_bytes);
            }
            mxi_coord_sum_rows_avx2(rr, n, hidden, out_p + (size_t)t * hidden);
        }
        free(rrows);
        return MX_OK;
    }
#endif
#pragma omp parallel for schedule(static)
    for (long long t = 0; t < T; t++) {
        float acc[CHUNK];
        for (size_t h0 = 0; h0 < hidden; h0 += CHUNK) {
            size_t len = hidden - h0 < CHUNK ? hidden - h0 : CHUNK;
            for (size_t h = 0; h < len; h++)
                acc[h] = 0.0f;
            for (int r = 0; r < plan->n_ranks; r++) {
                long c = find_copy(plan, r, (int32_t)t);
                if (c < 0)
                    continue;
                const float *row =
                    (const float *)(src[r] + (size_t)(c - (long)plan->rank_copy_off[r]) * row_bytes) + h0;
                for (size_t h = 0; h < len; h++)
                    acc[h] += row[h];
            }
            for (size_t h = 0; h < len; h++)
                out_p[(size_t)t * hidden + h0 + h] = mxi_bf16_from_f32(acc[h]);
        }
    }
    return MX_OK;
}
