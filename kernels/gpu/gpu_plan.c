/* mxep GPU backends: the host-side plan of one batch (gpu_plan.h). */
#include "gpu_plan.h"

#include <string.h>

#include "gpu_layout.h"

mx_status_t mxi_gpu_plan_check(const mx_run_args_t *a, int E, const char *who)
{
    if (!who)
        who = "gpu run";
    if (!a)
        return mx_error_set(MX_ERR_INVALID, "%s: NULL arguments", who);
    const size_t T = a->n_tokens, NA = a->n_assign;
    if (a->mode != MX_OUT_PER_ASSIGNMENT && a->mode != MX_OUT_WEIGHTED_SUM)
        return mx_error_set(MX_ERR_INVALID, "%s: unknown output mode %d", who, (int)a->mode);
    if (NA > 0 && (!a->tok || !a->expert || !a->x))
        return mx_error_set(MX_ERR_INVALID, "%s: x, tok and expert must be set when n_assign > 0", who);
    if (a->mode == MX_OUT_PER_ASSIGNMENT && NA > 0 && !a->out_bf16)
        return mx_error_set(MX_ERR_INVALID, "%s: PER_ASSIGNMENT needs out_bf16", who);
    if (a->mode == MX_OUT_WEIGHTED_SUM && NA > 0 && (!a->out_f32 || !a->weight))
        return mx_error_set(MX_ERR_INVALID, "%s: WEIGHTED_SUM needs out_f32 and weight", who);
    if (NA > (size_t)INT32_MAX / 4 || T > (size_t)INT32_MAX / 4)
        return mx_error_set(MX_ERR_INVALID, "%s: %zu assignments / %zu tokens: more than %d", who, NA, T,
                            INT32_MAX / 4);
    for (size_t i = 0; i < NA; i++) {
        if (a->tok[i] < 0 || (size_t)a->tok[i] >= T)
            return mx_error_set(MX_ERR_INVALID, "%s: assignment %zu: token %d outside [0, %zu)", who, i, a->tok[i], T);
        if (a->expert[i] < 0 || a->expert[i] >= E)
            return mx_error_set(MX_ERR_INVALID, "%s: assignment %zu: expert %d outside [0, %d)", who, i, a->expert[i],
                                E);
    }
    return MX_OK;
}

mx_status_t mxi_gpu_plan_dims(size_t T, size_t NA, int E, mxg_plan_dims_t *dims_p)
{
    if (E < 0 || NA > (size_t)INT32_MAX / 4 || T > (size_t)INT32_MAX / 4)
        return mx_error_set(MX_ERR_INVALID, "gpu plan: %zu tokens, %zu assignments, %d experts: out of range", T, NA,
                            E);
    mxg_plan_dims_t d;
    memset(&d, 0, sizeof d);
    d.n_tokens = T;
    d.n_assign = NA;
    d.n_experts = E;
    /* sum over experts of ceil(cnt / BM) <= NA / BM + E, and BM >= 16 */
    d.max_tiles = NA / 16 + (size_t)E + 1;
    size_t n_int = 2 * NA + 2 * d.max_tiles + 2 * (size_t)E + (T + 1) + NA;
    size_t n_flt = 3 * NA;
    d.dev_bytes = (n_int + n_flt) * 4;
    d.host_bytes = d.dev_bytes + (size_t)E * 4 + 4;
    *dims_p = d;
    return MX_OK;
}

void mxi_gpu_plan_views(void *base, const mxg_plan_dims_t *d, mxg_plan_views_t *v_p)
{
    const size_t NA = d->n_assign, T = d->n_tokens, E = (size_t)d->n_experts, MT = d->max_tiles;
    /* integer arithmetic on the address: `base` may be a device pointer */
    uintptr_t b = (uintptr_t)base;
    mxg_plan_views_t v;
    v.a_tok = (int32_t *)b;
    v.out_rows = (int32_t *)(b + 4 * NA);
    v.tile_e = (int32_t *)(b + 4 * (2 * NA));
    v.tile_m0 = (int32_t *)(b + 4 * (2 * NA + MT));
    v.off = (int32_t *)(b + 4 * (2 * NA + 2 * MT));
    v.cnt = (int32_t *)(b + 4 * (2 * NA + 2 * MT + E));
    v.tok_off = (int32_t *)(b + 4 * (2 * NA + 2 * MT + 2 * E));
    v.tok_list = (int32_t *)(b + 4 * (2 * NA + 2 * MT + 2 * E + T + 1));
    v.w = (float *)(b + 4 * (3 * NA + 2 * MT + 2 * E + T + 1));
    v.rs1 = (float *)(b + 4 * (4 * NA + 2 * MT + 2 * E + T + 1));
    v.rs2 = (float *)(b + 4 * (5 * NA + 2 * MT + 2 * E + T + 1));
    *v_p = v;
}

int mxi_gpu_plan_pick_cfg(int max_cnt, int force_cfg)
{
    if (force_cfg >= MXG_CFG_S && force_cfg <= MXG_CFG_L)
        return force_cfg;
    if (max_cnt <= 16)
        return MXG_CFG_S;
    if (max_cnt <= 128)
        return MXG_CFG_M;
    return MXG_CFG_L;
}

void mxi_gpu_plan_build(const mx_run_args_t *a, const mxg_plan_dims_t *d, const float *in_scale,
                        const float *down_in_scale, int force_cfg, void *host, mxg_plan_info_t *info_p)
{
    const size_t NA = d->n_assign, T = d->n_tokens;
    const int E = d->n_experts;
    mxg_plan_views_t v;
    mxi_gpu_plan_views(host, d, &v);
    int32_t *fill = (int32_t *)((uint8_t *)host + d->dev_bytes); /* host-only cursor */

    memset(v.cnt, 0, sizeof(int32_t) * (size_t)E);
    for (size_t i = 0; i < NA; i++)
        v.cnt[a->expert[i]]++;
    int max_cnt = 0;
    for (int e = 0, o = 0; e < E; e++) {
        v.off[e] = o;
        o += v.cnt[e];
        if (v.cnt[e] > max_cnt)
            max_cnt = v.cnt[e];
    }
    /* stable counting sort by expert: sorted row s -> assignment out_rows[s] */
    if (E > 0)
        memcpy(fill, v.off, sizeof(int32_t) * (size_t)E);
    for (size_t i = 0; i < NA; i++) {
        int s = fill[a->expert[i]]++;
        v.out_rows[s] = (int32_t)i;
        v.a_tok[s] = a->tok[i];
    }
    const int cfg = mxi_gpu_plan_pick_cfg(max_cnt, force_cfg);
    const int bm = mxg_cfg_bm(cfg);
    size_t nt = 0;
    for (int e = 0; e < E; e++)
        for (int m0 = 0; m0 < v.cnt[e]; m0 += bm) {
            v.tile_e[nt] = e;
            v.tile_m0[nt] = m0;
            nt++;
        }
    /* the unused slots are uploaded too: give them defined contents */
    for (size_t t = nt; t < d->max_tiles; t++) {
        v.tile_e[t] = 0;
        v.tile_m0[t] = 0;
    }
    /* per token, its assignments in ascending (expert, assignment) order */
    memset(v.tok_off, 0, sizeof(int32_t) * (T + 1));
    for (size_t i = 0; i < NA; i++)
        v.tok_off[a->tok[i] + 1]++;
    for (size_t t = 0; t < T; t++)
        v.tok_off[t + 1] += v.tok_off[t];
    for (size_t t = T; t > 0; t--)
        v.tok_off[t] = v.tok_off[t - 1]; /* tok_off[t + 1] = start of t: a cursor */
    v.tok_off[0] = 0;
    for (size_t s = 0; s < NA; s++)
        v.tok_list[v.tok_off[v.a_tok[s] + 1]++] = v.out_rows[s];
    for (size_t i = 0; i < NA; i++)
        v.w[i] = a->weight ? a->weight[i] : 0.0f;
    for (int e = 0; e < E; e++)
        for (int s = v.off[e]; s < v.off[e] + v.cnt[e]; s++) {
            v.rs1[s] = in_scale ? in_scale[e] : 1.0f;
            v.rs2[s] = down_in_scale ? down_in_scale[e] : 1.0f;
        }
    mxg_plan_info_t info;
    info.cfg = cfg;
    info.n_mtiles = (int)nt;
    info.max_cnt = max_cnt;
    *info_p = info;
}
