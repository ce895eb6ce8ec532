/* mxworker subcommands: bench, run, info (all collective). */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "worker_internal.h"
#ifdef MXEP_WORKER_SERVE
#include "serve_mpi.h"
#endif

/* ---------------------------------------------------------------- helpers */
static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double pct(const double *sorted, size_t n, double p)
{
    if (!n)
        return 0;
    size_t i = (size_t)ceil(p / 100.0 * (double)n);
    if (i < 1)
        i = 1;
    if (i > n)
        i = n;
    return sorted[i - 1];
}

static void model_name(const wk_job_t *job, char *buf, size_t len)
{
    const mx_model_config_t *c = &job->cfg;
    snprintf(buf, len, "%s (%s, %s, H %zu, I %zu, %d experts, %s%s%d)",
             job->o->model_dir ? job->o->model_dir : job->o->preset, job->o->model_dir ? c->model_type : "built-in",
             mx_scheme_name(c->moe.scheme), c->hidden, c->inter, c->n_experts,
             job->uniform ? "uniform" : mx_router_name(job->router.kind),
             job->router.kind == MX_ROUTER_EXPERT_CHOICE && !job->uniform ? " k " : " top-", job->router.top_k);
}

static mx_status_t write_json_file(const char *path, cJSON *root)
{
    char *text = cJSON_Print(root);
    if (!text)
        return mx_error_set(MX_ERR_NOMEM, "--json %s: out of memory", path);
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
    FILE *f = fopen(tmp, "w");
    mx_status_t st = MX_OK;
    if (!f)
        st = mx_error_set(MX_ERR_IO, "--json %s: cannot create %s: %s", path, tmp, strerror(errno));
    else {
        const int err = wk_file_commit(f, fputs(text, f) >= 0 && fputc('\n', f) != EOF, tmp, path);
        if (err)
            st = mx_error_set(MX_ERR_IO, "--json %s: writing failed: %s (nothing written)", path, strerror(err));
    }
    free(text);
    return st;
}

/* ---------------------------------------------------------------- bench */
/* One way of moving the layers' bytes, timed inside the layers (per layer, mean). */
typedef struct {
    double dispatch_ms, combine_ms, layer_ms;
    wk_xchg_split_t d, c; /* dispatch_ms and combine_ms, split */
} bench_pass_t;

typedef struct {
    char host[MX_TOPO_HOST_MAX];
    char device[128];
    char backend[MX_TOPO_BACKEND_MAX];
    char isa[32]; /* the level or arch the backend runs (cpu: avx2 ...; MXEP_CPU_ISA caps it) */
    int experts;
    int pad;
    double tokens_in, assign_in;                /* per layer, mean */
    double route_ms, compute_ms, wait_ms;       /* per layer, mean (our transport's layers) */
    double disp_bytes, comb_bytes;              /* per layer, sent */
    bench_pass_t ours;                          /* in the layer: the job's transport */
    bench_pass_t a2a;                           /* in the layer: plain MPI_Alltoallv (--baseline layer), same layers */
    double a2a_disp_ms, a2a_comb_ms, memcpy_ms; /* alone: plain MPI_Alltoallv and memcpy, median */
    double memcpy_cold_ms;                      /* the memcpy after each rank wrote FLUSH_BYTES of its memory */
    double iso_disp_ms, iso_comb_ms;            /* alone: our exchange, like the baselines */
    double iso2_disp_ms, iso2_comb_ms;          /* alone: the second transport (--transport both) */
} bench_row_t;

#define FLUSH_BYTES ((size_t)64 << 20) /* written by each rank before a cold memcpy */

static double median_of(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return v[n / 2];
}

static void split_add(wk_xchg_split_t *a, const wk_xchg_split_t *b, double k)
{
    a->counts_ms += k * b->counts_ms;
    a->own_ms += k * b->own_ms;
    a->arrive_ms += k * b->arrive_ms;
    a->copy_ms += k * b->copy_ms;
    a->remote_ms += k * b->remote_ms;
    a->depart_ms += k * b->depart_ms;
    a->agree_ms += k * b->agree_ms;
}

static void pass_add(bench_pass_t *p, const wk_step_stats_t *s)
{
    p->dispatch_ms += s->dispatch_ms;
    p->combine_ms += s->combine_ms;
    p->layer_ms += s->total_ms;
    split_add(&p->d, &s->disp, 1);
    split_add(&p->c, &s->comb, 1);
}

static void pass_scale(bench_pass_t *p, double k)
{
    bench_pass_t z;
    memset(&z, 0, sizeof z);
    z.dispatch_ms = p->dispatch_ms * k;
    z.combine_ms = p->combine_ms * k;
    z.layer_ms = p->layer_ms * k;
    split_add(&z.d, &p->d, k);
    split_add(&z.c, &p->c, k);
    *p = z;
}

/* Exchanges alone on the byte counts `counts` (sent to each rank), one per
 * transport of trs[n], taking turns per repetition (so that a slow spell of
 * the machine hits them alike), each after a barrier; median ms of reps into
 * ms_p[n]. with_counts = 1 times the counts round too (as a layer's dispatch
 * does), 0 only the payload (as its combine does). */
static void time_alone(wk_job_t *job, mx_transport_h *trs, int n, const size_t *counts, int reps, const uint8_t *sbuf,
                       int with_counts, double *ms_p)
{
    size_t R = (size_t)job->size;
    size_t *sd = calloc(R, sizeof(size_t)), *rc = calloc(R, sizeof(size_t)), *rd = calloc(R, sizeof(size_t));
    double *t = calloc((size_t)reps * (size_t)n, sizeof(double));
    int ok = sd && rc && rd && t, all = 0;
    MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, job->comm);
    for (int k = 0; k < n; k++)
        ms_p[k] = 0;
    if (all) {
        size_t off = 0;
        for (size_t r = 0; r < R; r++) {
            sd[r] = off;
            off += counts[r];
        }
        const uint8_t *recv = NULL;
        mx_status_t st = MX_OK;
        for (int k = 0; k < n && !with_counts && st == MX_OK; k++)
            st = mx_transport_exchange_counts(trs[k], counts, rc);
        for (int i = 0; i < reps; i++)
            for (int q = 0; q < n; q++) {
                int k = (q + i) % n;
                MPI_Barrier(job->comm);
                double t0 = wk_now_ms();
                mx_status_t s1 = with_counts ? mx_transport_exchange_counts(trs[k], counts, rc) : MX_OK;
                mx_status_t s2 = mx_transport_exchange(trs[k], sbuf, counts, sd, rc, &recv, rd);
                t[(size_t)k * (size_t)reps + (size_t)i] = wk_now_ms() - t0;
                if (st == MX_OK)
                    st = s1 != MX_OK ? s1 : s2;
            }
        for (int k = 0; k < n && st == MX_OK; k++)
            ms_p[k] = median_of(t + (size_t)k * (size_t)reps, reps);
    }
    free(sd);
    free(rc);
    free(rd);
    free(t);
}

static void add_split_json(cJSON *parent, const char *name, const wk_xchg_split_t *s)
{
    cJSON *o = cJSON_AddObjectToObject(parent, name);
    cJSON_AddNumberToObject(o, "counts_ms", s->counts_ms);
    cJSON_AddNumberToObject(o, "own_ms", s->own_ms);
    cJSON_AddNumberToObject(o, "arrive_ms", s->arrive_ms);
    cJSON_AddNumberToObject(o, "copy_ms", s->copy_ms);
    cJSON_AddNumberToObject(o, "messages_ms", s->remote_ms);
    cJSON_AddNumberToObject(o, "finish_ms", s->depart_ms);
    cJSON_AddNumberToObject(o, "agree_ms", s->agree_ms);
}

static void add_pass_json(cJSON *parent, const char *name, const bench_pass_t *p)
{
    cJSON *o = cJSON_AddObjectToObject(parent, name);
    cJSON_AddNumberToObject(o, "dispatch_ms", p->dispatch_ms);
    cJSON_AddNumberToObject(o, "combine_ms", p->combine_ms);
    cJSON_AddNumberToObject(o, "layer_ms", p->layer_ms);
    add_split_json(o, "dispatch_split", &p->d);
    add_split_json(o, "combine_split", &p->c);
}

/* "moving / waiting" lines of an in-layer exchange, mean over ranks */
static void print_split(const bench_pass_t *p)
{
    const wk_xchg_split_t *d = &p->d, *c = &p->c;
    double moving = d->own_ms + d->copy_ms + d->remote_ms + c->own_ms + c->copy_ms + c->remote_ms;
    double waiting = d->arrive_ms + d->depart_ms + d->counts_ms + d->agree_ms + c->arrive_ms + c->depart_ms +
                     c->counts_ms + c->agree_ms;
    printf("      mean over ranks: pack %.3f + copies %.3f + messages %.3f + reduce %.3f ms (moving bytes), arrive "
           "%.3f + finish %.3f + counts %.3f + agree %.3f ms (waiting for peers)\n",
           d->own_ms, d->copy_ms + c->copy_ms, d->remote_ms + c->remote_ms, c->own_ms, d->arrive_ms + c->arrive_ms,
           d->depart_ms + c->depart_ms, d->counts_ms + c->counts_ms, d->agree_ms + c->agree_ms);
    printf("        dispatch: pack %.3f copies %.3f messages %.3f arrive %.3f finish %.3f counts %.3f agree %.3f ms; "
           "combine: copies %.3f messages %.3f arrive %.3f finish %.3f agree %.3f reduce %.3f ms (%.0f%% waiting)\n",
           d->own_ms, d->copy_ms, d->remote_ms, d->arrive_ms, d->depart_ms, d->counts_ms, d->agree_ms, c->copy_ms,
           c->remote_ms, c->arrive_ms, c->depart_ms, c->agree_ms, c->own_ms,
           moving + waiting > 0 ? 100 * waiting / (moving + waiting) : 0);
}

int wk_cmd_bench(wk_job_t *job)
{
    const wk_opts_t *o = job->o;
    size_t H = job->cfg.hidden;
    size_t T = o->tokens_total >= 0 ? (size_t)o->tokens_total : (size_t)o->tokens * (size_t)job->size;
    size_t first, n;
    wk_split(T, job->size, job->rank, &first, &n);
    size_t rowb = (n ? n : 1) * H * sizeof(uint16_t);
    /* --baseline layer: every timed iteration runs the layers twice, over our
     * transport and over plain MPI_Alltoallv (taking turns at going first), so
     * both exchanges are timed in the same conditions: after the same compute,
     * with the same skew between ranks and the same caches */
    int base = o->baseline == WK_BASELINE_LAYER && job->size > 1 && job->tr_a2a;
    uint16_t *x0 = malloc(rowb), *xa = malloc(rowb), *xb = malloc(rowb);
    uint16_t *ya = base ? malloc(rowb) : NULL, *yb = base ? malloc(rowb) : NULL;
    int L = job->n_layers, iters = o->iters, total_iters = o->warmup + o->iters;
    double *lat = calloc((size_t)iters * (size_t)L, sizeof(double));
    double *lat_b = calloc((size_t)iters * (size_t)L, sizeof(double));
    /* dispatch + combine of every timed layer, ours and the baseline's (for medians) */
    double *xch = calloc((size_t)iters * (size_t)L, sizeof(double));
    double *xch_b = calloc((size_t)iters * (size_t)L, sizeof(double));
    mx_status_t st = (x0 && xa && xb && lat && lat_b && xch && xch_b && (!base || (ya && yb)))
                         ? MX_OK
                         : mx_error_set(MX_ERR_NOMEM, "bench: out of memory");
    if ((st = wk_agree(job->comm, st, "allocating the bench tokens")) != MX_OK)
        goto fail;
    /* rank 0 writes --json: a path it cannot write fails now, not after the whole bench */
    if ((st = wk_agree(job->comm, job->rank == 0 && o->json ? mx_output_path_check("--json", o->json) : MX_OK,
                       "checking --json")) != MX_OK)
        goto fail;
    wk_fill_tokens(o->seed, first, n, H, x0);
    bench_row_t row;
    memset(&row, 0, sizeof row);
    snprintf(row.host, sizeof row.host, "%s", job->me.host);
    /* a GPU's ordinal first (cuda:1 ...): which device of the host the rank runs on */
    if (job->choice.device.device_index >= 0)
        snprintf(row.device, sizeof row.device, "%.8s:%d %.100s", job->choice.backend->name,
                 (int)job->choice.device.device_index, job->choice.device.name);
    else
        snprintf(row.device, sizeof row.device, "%s", job->choice.device.name);
    snprintf(row.backend, sizeof row.backend, "%s", job->choice.backend->name);
    snprintf(row.isa, sizeof row.isa, "%.31s", job->choice.device.isa);
    row.experts = job->n_my;
    double start = wk_now_ms(), last_progress = start;
    int progress_shown = 0;
    unsigned long long base_diff = 0; /* output values that differ between the two passes (this rank) */
    for (int it = 0; it < total_iters; it++) {
        const uint16_t *out_ours = NULL, *out_base = NULL;
        for (int k = 0; k <= base; k++) {
            int is_base = base && (it % 2 == 0 ? k == 1 : k == 0);
            mx_transport_h tr = is_base ? job->tr_a2a : job->tr;
            uint16_t *pa = is_base ? ya : xa, *pb = is_base ? yb : xb;
            MPI_Barrier(job->comm);
            const uint16_t *cur = x0;
            for (int li = 0; li < L; li++) {
                uint16_t *out = (li % 2 == 0) ? pa : pb;
                int check = o->check && it == 0 && !is_base;
                wk_step_stats_t s;
                mx_routing_t routing;
                memset(&routing, 0, sizeof routing);
                st = wk_layer_step(job, tr, li, cur, n, first, T, out, check ? &routing : NULL, &s);
                if (st != MX_OK)
                    goto fail;
                if (check) {
                    char summary[512] = "";
                    st = wk_check_layer(job, li, cur, n, first, T, out, &routing, summary, sizeof summary);
                    mx_routing_fini(&routing);
                    if (job->rank == 0 && summary[0])
                        fprintf(stderr, "mxworker: %s\n", summary);
                    if (st != MX_OK)
                        goto fail;
                }
                if (it >= o->warmup) {
                    size_t at = (size_t)(it - o->warmup) * (size_t)L + (size_t)li;
                    if (is_base) {
                        lat_b[at] = s.total_ms;
                        xch_b[at] = s.dispatch_ms + s.combine_ms;
                        pass_add(&row.a2a, &s);
                    } else {
                        lat[at] = s.total_ms;
                        xch[at] = s.dispatch_ms + s.combine_ms;
                        pass_add(&row.ours, &s);
                        row.tokens_in += (double)s.tokens_in;
                        row.assign_in += (double)s.assign_in;
                        row.route_ms += s.route_ms; /* (packing and reducing count in the exchange) */
                        row.compute_ms += s.compute_ms;
                        row.wait_ms += s.dispatch_ms + s.sync_ms + s.combine_ms;
                        row.disp_bytes += (double)s.dispatch_bytes;
                        row.comb_bytes += (double)s.combine_bytes;
                    }
                }
                cur = out;
            }
            if (is_base)
                out_base = cur;
            else
                out_ours = cur;
        }
        /* the same bytes went through both: the outputs must be the same */
        for (size_t i = 0; base && i < n * H; i++)
            base_diff += out_ours[i] != out_base[i];
        double now = wk_now_ms();
        if (job->rank == 0 && !o->quiet && now - start > 2000 && now - last_progress > 1000) {
            fprintf(stderr, "%smxworker bench: iteration %d/%d (%d warmup), %.1f s%s", isatty(2) ? "\r" : "", it + 1,
                    total_iters, o->warmup, (now - start) / 1e3, isatty(2) ? "" : "\n");
            fflush(stderr);
            last_progress = now;
            progress_shown = 1;
        }
    }
    if (progress_shown && isatty(2))
        fputc('\n', stderr);
    double k = 1.0 / ((double)iters * (double)L);
    row.tokens_in *= k;
    row.assign_in *= k;
    row.route_ms *= k;
    row.compute_ms *= k;
    row.wait_ms *= k;
    row.disp_bytes *= k;
    row.comb_bytes *= k;
    pass_scale(&row.ours, k);
    pass_scale(&row.a2a, k);

    /* alone: the last step's byte counts, after a barrier, same run. Ours and
     * plain MPI_Alltoallv (the MPI transport in alltoallv mode) do the same
     * rounds (counts + payload for the dispatch, payload for the combine),
     * taking turns. */
    {
        size_t sb = 0, rb = 0, sbc = 0;
        for (int r = 0; r < job->size; r++) {
            sb += job->last_disp[r];
            sbc += job->last_comb[r];
        }
        size_t big = sb > sbc ? sb : sbc;
        unsigned long long mine = big, mx = 0;
        MPI_Allreduce(&mine, &mx, 1, MPI_UNSIGNED_LONG_LONG, MPI_MAX, job->comm);
        rb = (size_t)mx * (size_t)job->size; /* upper bound of what one rank can receive */
        uint8_t *s1 = malloc(big ? big : 1);
        int ok = s1 && job->tr_a2a && rb < INT_MAX;
        int all_ok = 0;
        MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, job->comm);
        if (all_ok) {
            memset(s1, 0x5a, big ? big : 1);
            int reps = iters < 3 ? 3 : iters > 20 ? 20 : iters;
            mx_transport_h trs[3] = {job->tr, job->tr_a2a, job->tr2};
            int ntr = job->tr2 ? 3 : 2;
            double md[3], mc[3];
            time_alone(job, trs, ntr, job->last_disp, reps, s1, 1, md);
            time_alone(job, trs, ntr, job->last_comb, reps, s1, 0, mc);
            row.iso_disp_ms = md[0];
            row.iso_comb_ms = mc[0];
            row.a2a_disp_ms = md[1];
            row.a2a_comb_ms = mc[1];
            if (job->tr2) {
                row.iso2_disp_ms = md[2];
                row.iso2_comb_ms = mc[2];
            }
            /* memcpy of the same bytes by every rank at once: warm (the same buffers
             * again and again), and cold (each rank first writes FLUSH_BYTES of other
             * memory, as a layer's compute goes through the caches) */
            double *t = calloc((size_t)reps, sizeof(double)), *tc = calloc((size_t)reps, sizeof(double));
            uint8_t *d2 = malloc(sb + sbc + 1), *s2 = malloc(sb + sbc + 1), *fl = malloc(FLUSH_BYTES);
            int mok = t && tc && d2 && s2 && fl, mall = 0;
            MPI_Allreduce(&mok, &mall, 1, MPI_INT, MPI_MIN, job->comm);
            if (mall) {
                memset(s2, 0x3c, sb + sbc + 1);
                memset(d2, 0, sb + sbc + 1);
                for (int i = 0; i < reps; i++) {
                    MPI_Barrier(job->comm);
                    double t0 = wk_now_ms();
                    memcpy(d2, s2, sb + sbc);
                    t[i] = wk_now_ms() - t0;
                    memset(fl, i & 0xff, FLUSH_BYTES);
                    MPI_Barrier(job->comm);
                    t0 = wk_now_ms();
                    memcpy(d2, s2, sb + sbc);
                    tc[i] = wk_now_ms() - t0;
                }
                row.memcpy_ms = median_of(t, reps);
                row.memcpy_cold_ms = median_of(tc, reps);
            }
            free(t);
            free(tc);
            free(d2);
            free(s2);
            free(fl);
        } else if (job->rank == 0) {
            fprintf(stderr, "mxworker bench: the plain MPI_Alltoallv baseline is skipped (more than INT_MAX bytes "
                            "or out of memory)\n");
        }
        free(s1);
    }

    /* gather rows and latencies to rank 0 */
    unsigned long long diff_all = 0;
    MPI_Reduce(&base_diff, &diff_all, 1, MPI_UNSIGNED_LONG_LONG, MPI_SUM, 0, job->comm);
    bench_row_t *rows = job->rank == 0 ? calloc((size_t)job->size, sizeof *rows) : NULL;
    double *lat_max = job->rank == 0 ? calloc((size_t)iters * (size_t)L, sizeof(double)) : NULL;
    double *lat_bmax = job->rank == 0 ? calloc((size_t)iters * (size_t)L, sizeof(double)) : NULL;
    double *xch_max = job->rank == 0 ? calloc((size_t)iters * (size_t)L, sizeof(double)) : NULL;
    double *xch_bmax = job->rank == 0 ? calloc((size_t)iters * (size_t)L, sizeof(double)) : NULL;
    MPI_Gather(&row, (int)sizeof row, MPI_BYTE, rows, (int)sizeof row, MPI_BYTE, 0, job->comm);
    MPI_Reduce(lat, lat_max, iters * L, MPI_DOUBLE, MPI_MAX, 0, job->comm);
    MPI_Reduce(lat_b, lat_bmax, iters * L, MPI_DOUBLE, MPI_MAX, 0, job->comm);
    MPI_Reduce(xch, xch_max, iters * L, MPI_DOUBLE, MPI_MAX, 0, job->comm);
    MPI_Reduce(xch_b, xch_bmax, iters * L, MPI_DOUBLE, MPI_MAX, 0, job->comm);
    if (job->rank == 0 && rows && lat_max && lat_bmax && xch_max && xch_bmax) {
        size_t nl = (size_t)iters * (size_t)L;
        qsort(lat_max, nl, sizeof(double), cmp_double);
        qsort(lat_bmax, nl, sizeof(double), cmp_double);
        qsort(xch_max, nl, sizeof(double), cmp_double);
        qsort(xch_bmax, nl, sizeof(double), cmp_double);
        double xch_p50 = pct(xch_max, nl, 50), xch_b_p50 = pct(xch_bmax, nl, 50);
        double mean_lat = 0;
        for (size_t i = 0; i < nl; i++)
            mean_lat += lat_max[i];
        mean_lat /= (double)nl;
        double p50 = pct(lat_max, nl, 50), p99 = pct(lat_max, nl, 99), p50_b = pct(lat_bmax, nl, 50);
        double max_assign = 0, sum_assign = 0, disp_b = 0, comb_b = 0, max_disp_ms = 0, max_comb_ms = 0;
        double max_iso_d = 0, max_iso_c = 0, max_iso2_d = 0, max_iso2_c = 0, max_bd = 0, max_bc = 0;
        double max_a2a_d = 0, max_a2a_c = 0, max_memcpy = 0, max_compute = 0, max_disp_rank_b = 0, max_comb_rank_b = 0;
        double max_memcpy_cold = 0;
        bench_pass_t mean_ours, mean_a2a;
        memset(&mean_ours, 0, sizeof mean_ours);
        memset(&mean_a2a, 0, sizeof mean_a2a);
        for (int r = 0; r < job->size; r++) {
            bench_row_t *w = &rows[r];
            max_assign = fmax(max_assign, w->assign_in);
            sum_assign += w->assign_in;
            disp_b += w->disp_bytes;
            comb_b += w->comb_bytes;
            max_disp_ms = fmax(max_disp_ms, w->ours.dispatch_ms);
            max_comb_ms = fmax(max_comb_ms, w->ours.combine_ms);
            max_bd = fmax(max_bd, w->a2a.dispatch_ms);
            max_bc = fmax(max_bc, w->a2a.combine_ms);
            max_iso_d = fmax(max_iso_d, w->iso_disp_ms);
            max_iso_c = fmax(max_iso_c, w->iso_comb_ms);
            max_iso2_d = fmax(max_iso2_d, w->iso2_disp_ms);
            max_iso2_c = fmax(max_iso2_c, w->iso2_comb_ms);
            max_a2a_d = fmax(max_a2a_d, w->a2a_disp_ms);
            max_a2a_c = fmax(max_a2a_c, w->a2a_comb_ms);
            max_memcpy = fmax(max_memcpy, w->memcpy_ms);
            max_memcpy_cold = fmax(max_memcpy_cold, w->memcpy_cold_ms);
            max_compute = fmax(max_compute, w->compute_ms);
            max_disp_rank_b = fmax(max_disp_rank_b, w->disp_bytes);
            max_comb_rank_b = fmax(max_comb_rank_b, w->comb_bytes);
            bench_pass_t a = w->ours, b = w->a2a;
            pass_scale(&a, 1.0 / job->size);
            pass_scale(&b, 1.0 / job->size);
            mean_ours.dispatch_ms += a.dispatch_ms;
            mean_ours.combine_ms += a.combine_ms;
            split_add(&mean_ours.d, &a.d, 1);
            split_add(&mean_ours.c, &a.c, 1);
            mean_a2a.dispatch_ms += b.dispatch_ms;
            mean_a2a.combine_ms += b.combine_ms;
            split_add(&mean_a2a.d, &b.d, 1);
            split_add(&mean_a2a.c, &b.c, 1);
        }
        double imb = sum_assign > 0 ? max_assign / (sum_assign / job->size) : 1.0;
        double tps = mean_lat > 0 ? (double)T / (mean_lat / 1e3) : 0;
        char mname[256];
        model_name(job, mname, sizeof mname);
        int n_hosts = 1;
        for (int r = 1; r < job->size; r++) {
            int seen = 0;
            for (int q = 0; q < r; q++)
                seen |= strcmp(rows[q].host, rows[r].host) == 0;
            n_hosts += !seen;
        }
        printf("mxworker bench: %s\n", mname);
        printf("  layers %d..%d, %zu tokens (%s), %d ranks on %d host%s, dispatch %s, combine %s, transport %s, "
               "exchange %s, %d+%d iterations\n",
               o->layer, o->layer + L - 1, T, o->tokens_total >= 0 ? "total" : "per rank x ranks", job->size, n_hosts,
               n_hosts > 1 ? "s" : "", mx_dispatch_dtype_name(o->dtype), mx_combine_mode_name(o->combine),
               mx_transport_name(job->tr), mx_transport_path(job->tr), o->warmup, iters);
        if (base)
            printf("  every iteration also runs the layers over plain MPI_Alltoallv (--baseline layer)\n");
        if (job->tr2)
            printf("  also timed alone on the same bytes: transport %s, exchange %s\n", mx_transport_name(job->tr2),
                   mx_transport_path(job->tr2));
        printf("\n%4s  %-16s %-28s %-13s %7s %9s %9s %10s %10s\n", "rank", "host", "device", "backend/isa", "experts",
               "tokens_in", "assign_in", "compute_ms", "waiting_ms");
        for (int r = 0; r < job->size; r++) {
            bench_row_t *w = &rows[r];
            char bi[64];
            snprintf(bi, sizeof bi, "%s%s%s", w->backend, w->isa[0] ? "/" : "", w->isa);
            printf("%4d  %-16.16s %-28.28s %-13.13s %7d %9.1f %9.1f %10.3f %10.3f\n", r, w->host, w->device, bi,
                   w->experts, w->tokens_in, w->assign_in, w->compute_ms, w->wait_ms);
        }
        double ours = max_disp_ms + max_comb_ms, plain = max_a2a_d + max_a2a_c, plain_in = max_bd + max_bc;
        printf("\ntotals (per layer; ms are the slowest rank's; medians: of the slowest rank's per layer)\n");
        printf("  tokens/s            %.0f  (%zu tokens / mean layer latency %.3f ms)\n", tps, T, mean_lat);
        printf("  layer latency       p50 %.3f ms, p99 %.3f ms (slowest compute %.3f ms)", p50, p99, max_compute);
        if (base)
            printf("; over plain MPI_Alltoallv p50 %.3f ms", p50_b);
        printf("\n");
        /* what the layer costs beyond its parts: routing, packing, waiting on the slowest peer */
        const double parts = max_compute + ours;
        printf("  layer vs its parts  p50 %.2fx, mean %.2fx of slowest compute + exchange (%.3f + %.3f ms)\n",
               parts > 0 ? p50 / parts : 0, parts > 0 ? mean_lat / parts : 0, max_compute, ours);
        printf("  dispatch            %.3f MB in all (max %.3f MB per rank), %.3f ms, %.2f GB/s per rank\n",
               disp_b / 1e6, max_disp_rank_b / 1e6, max_disp_ms,
               max_disp_ms > 0 ? max_disp_rank_b / 1e6 / max_disp_ms : 0);
        printf("  combine             %.3f MB in all (max %.3f MB per rank), %.3f ms, %.2f GB/s per rank\n",
               comb_b / 1e6, max_comb_rank_b / 1e6, max_comb_ms,
               max_comb_ms > 0 ? max_comb_rank_b / 1e6 / max_comb_ms : 0);
        printf("  load imbalance      %.3f (max / mean assignments per rank)\n", imb);
        double iso = max_iso_d + max_iso_c;
        printf("  same bytes, same run (in the layer: mean per layer; alone: the last layer's byte counts, after a "
               "barrier, median):\n");
        printf("    mxep exchange in the layer  dispatch %.3f ms + combine %.3f ms = %.3f ms (%s %s; median layer %.3f "
               "ms)\n",
               max_disp_ms, max_comb_ms, ours, mx_transport_name(job->tr), mx_transport_path(job->tr), xch_p50);
        print_split(&mean_ours);
        if (base) {
            printf("    plain MPI_Alltoallv in the layer  dispatch %.3f ms + combine %.3f ms = %.3f ms (median layer "
                   "%.3f ms; %.2fx ours in the layer, medians %.2fx)\n",
                   max_bd, max_bc, plain_in, xch_b_p50, ours > 0 ? plain_in / ours : 0,
                   xch_p50 > 0 ? xch_b_p50 / xch_p50 : 0);
            print_split(&mean_a2a);
            if (diff_all)
                printf("    WARNING: the layers over plain MPI_Alltoallv gave other outputs (%llu values differ in "
                       "all): the backend is not deterministic, or a transport is wrong\n",
                       diff_all);
        }
        printf("    mxep exchange alone         dispatch %.3f ms + combine %.3f ms = %.3f ms (%s)\n", max_iso_d,
               max_iso_c, iso, mx_transport_name(job->tr));
        double iso2 = max_iso2_d + max_iso2_c;
        if (job->tr2)
            printf("    mxep exchange alone         dispatch %.3f ms + combine %.3f ms = %.3f ms (%s %s; %.2fx the "
                   "%s one)\n",
                   max_iso2_d, max_iso2_c, iso2, mx_transport_name(job->tr2), mx_transport_path(job->tr2),
                   iso > 0 ? iso2 / iso : 0, mx_transport_name(job->tr));
        printf("    plain MPI_Alltoallv alone   dispatch %.3f ms + combine %.3f ms = %.3f ms (%.2fx ours alone)\n",
               max_a2a_d, max_a2a_c, plain, iso > 0 ? plain / iso : 0);
        printf("    memcpy of the bytes         %.3f ms warm, %.3f ms cold (every rank at once; cold: after writing "
               "%zu MiB; ours alone is %.2fx the warm one, in the layer %.2fx the cold one)\n",
               max_memcpy, max_memcpy_cold, FLUSH_BYTES >> 20, max_memcpy > 0 ? iso / max_memcpy : 0,
               max_memcpy_cold > 0 ? ours / max_memcpy_cold : 0);
        fflush(stdout);
        if (o->json) {
            cJSON *root = cJSON_CreateObject();
            cJSON_AddStringToObject(root, "command", "bench");
            cJSON_AddStringToObject(root, "model", o->model_dir ? o->model_dir : o->preset);
            cJSON_AddBoolToObject(root, "synthetic", !o->model_dir);
            cJSON_AddStringToObject(root, "scheme", mx_scheme_name(job->cfg.moe.scheme));
            cJSON_AddNumberToObject(root, "hidden", (double)H);
            cJSON_AddNumberToObject(root, "inter", (double)job->cfg.inter);
            cJSON_AddNumberToObject(root, "n_experts", job->cfg.n_experts);
            cJSON_AddStringToObject(root, "router", job->uniform ? "uniform" : mx_router_name(job->router.kind));
            cJSON_AddNumberToObject(root, "top_k", job->router.top_k);
            cJSON_AddNumberToObject(root, "first_layer", o->layer);
            cJSON_AddNumberToObject(root, "layers", L);
            cJSON_AddNumberToObject(root, "tokens_total", (double)T);
            cJSON_AddNumberToObject(root, "ranks", job->size);
            cJSON_AddNumberToObject(root, "hosts", n_hosts);
            cJSON_AddStringToObject(root, "dispatch_dtype", mx_dispatch_dtype_name(o->dtype));
            cJSON_AddStringToObject(root, "combine", mx_combine_mode_name(o->combine));
            cJSON_AddStringToObject(root, "transport", mx_transport_name(job->tr));
            cJSON_AddStringToObject(root, "exchange", mx_transport_path(job->tr));
            cJSON_AddStringToObject(root, "baseline", base ? "layer" : "alone");
            cJSON_AddNumberToObject(root, "warmup", o->warmup);
            cJSON_AddNumberToObject(root, "iters", iters);
            /* the seed exactly: as a double, 2^53 + 1 came out as 9.00719925474099e+15 */
            char seed_txt[32];
            snprintf(seed_txt, sizeof seed_txt, "%llu", (unsigned long long)o->seed);
            cJSON_AddRawToObject(root, "seed", seed_txt);
            cJSON *ra = cJSON_AddArrayToObject(root, "per_rank");
            for (int r = 0; r < job->size; r++) {
                bench_row_t *w = &rows[r];
                cJSON *e = cJSON_CreateObject();
                cJSON_AddNumberToObject(e, "rank", r);
                cJSON_AddStringToObject(e, "host", w->host);
                cJSON_AddStringToObject(e, "device", w->device);
                cJSON_AddStringToObject(e, "backend", w->backend);
                cJSON_AddStringToObject(e, "isa", w->isa);
                cJSON_AddNumberToObject(e, "experts", w->experts);
                cJSON_AddNumberToObject(e, "tokens_in", w->tokens_in);
                cJSON_AddNumberToObject(e, "assign_in", w->assign_in);
                cJSON_AddNumberToObject(e, "route_ms", w->route_ms);
                cJSON_AddNumberToObject(e, "compute_ms", w->compute_ms);
                cJSON_AddNumberToObject(e, "waiting_ms", w->wait_ms);
                cJSON_AddNumberToObject(e, "dispatch_ms", w->ours.dispatch_ms);
                cJSON_AddNumberToObject(e, "combine_ms", w->ours.combine_ms);
                cJSON_AddNumberToObject(e, "layer_ms", w->ours.layer_ms);
                add_split_json(e, "dispatch_split", &w->ours.d);
                add_split_json(e, "combine_split", &w->ours.c);
                if (base)
                    add_pass_json(e, "alltoallv_in_layer", &w->a2a);
                cJSON_AddNumberToObject(e, "dispatch_bytes", w->disp_bytes);
                cJSON_AddNumberToObject(e, "combine_bytes", w->comb_bytes);
                cJSON_AddNumberToObject(e, "alltoallv_dispatch_ms", w->a2a_disp_ms);
                cJSON_AddNumberToObject(e, "alltoallv_combine_ms", w->a2a_comb_ms);
                cJSON_AddNumberToObject(e, "memcpy_ms", w->memcpy_ms);
                cJSON_AddNumberToObject(e, "memcpy_cold_ms", w->memcpy_cold_ms);
                cJSON_AddNumberToObject(e, "exchange_alone_dispatch_ms", w->iso_disp_ms);
                cJSON_AddNumberToObject(e, "exchange_alone_combine_ms", w->iso_comb_ms);
                if (job->tr2) {
                    cJSON_AddNumberToObject(e, "transport2_alone_dispatch_ms", w->iso2_disp_ms);
                    cJSON_AddNumberToObject(e, "transport2_alone_combine_ms", w->iso2_comb_ms);
                }
                cJSON_AddItemToArray(ra, e);
            }
            cJSON *tot = cJSON_AddObjectToObject(root, "totals");
            cJSON_AddNumberToObject(tot, "tokens_per_s", tps);
            cJSON_AddNumberToObject(tot, "layer_ms_mean", mean_lat);
            cJSON_AddNumberToObject(tot, "layer_ms_p50", p50);
            cJSON_AddNumberToObject(tot, "layer_ms_p99", p99);
            cJSON_AddNumberToObject(tot, "compute_ms_max", max_compute);
            cJSON_AddNumberToObject(tot, "layer_p50_over_compute_plus_exchange",
                                    parts > 0 ? p50 / parts : 0);
            cJSON_AddNumberToObject(tot, "dispatch_bytes", disp_b);
            cJSON_AddNumberToObject(tot, "combine_bytes", comb_b);
            cJSON_AddNumberToObject(tot, "dispatch_ms", max_disp_ms);
            cJSON_AddNumberToObject(tot, "combine_ms", max_comb_ms);
            cJSON_AddNumberToObject(tot, "dispatch_gbps_per_rank",
                                    max_disp_ms > 0 ? max_disp_rank_b / 1e6 / max_disp_ms : 0);
            cJSON_AddNumberToObject(tot, "combine_gbps_per_rank",
                                    max_comb_ms > 0 ? max_comb_rank_b / 1e6 / max_comb_ms : 0);
            cJSON_AddNumberToObject(tot, "load_imbalance", imb);
            cJSON_AddNumberToObject(tot, "exchange_ms_p50", xch_p50);
            add_split_json(tot, "dispatch_split_mean", &mean_ours.d);
            add_split_json(tot, "combine_split_mean", &mean_ours.c);
            if (base) {
                cJSON_AddNumberToObject(tot, "alltoallv_in_layer_dispatch_ms", max_bd);
                cJSON_AddNumberToObject(tot, "alltoallv_in_layer_combine_ms", max_bc);
                cJSON_AddNumberToObject(tot, "alltoallv_layer_ms_p50", p50_b);
                cJSON_AddNumberToObject(tot, "alltoallv_in_layer_exchange_ms_p50", xch_b_p50);
                cJSON_AddNumberToObject(tot, "in_layer_speedup_vs_alltoallv_p50",
                                        xch_p50 > 0 ? xch_b_p50 / xch_p50 : 0);
                add_split_json(tot, "alltoallv_dispatch_split_mean", &mean_a2a.d);
                add_split_json(tot, "alltoallv_combine_split_mean", &mean_a2a.c);
                cJSON_AddBoolToObject(tot, "baseline_outputs_equal", diff_all == 0);
            }
            cJSON_AddNumberToObject(tot, "in_layer_speedup_vs_alltoallv", base && ours > 0 ? plain_in / ours : 0);
            cJSON_AddNumberToObject(tot, "alltoallv_dispatch_ms", max_a2a_d);
            cJSON_AddNumberToObject(tot, "alltoallv_combine_ms", max_a2a_c);
            cJSON_AddNumberToObject(tot, "memcpy_ms", max_memcpy);
            cJSON_AddNumberToObject(tot, "exchange_alone_dispatch_ms", max_iso_d);
            cJSON_AddNumberToObject(tot, "exchange_alone_combine_ms", max_iso_c);
            cJSON_AddNumberToObject(tot, "speedup_vs_alltoallv", iso > 0 ? plain / iso : 0);
            cJSON_AddNumberToObject(tot, "ratio_vs_memcpy", max_memcpy > 0 ? iso / max_memcpy : 0);
            cJSON_AddNumberToObject(tot, "memcpy_cold_ms", max_memcpy_cold);
            cJSON_AddNumberToObject(tot, "in_layer_ratio_vs_memcpy_cold",
                                    max_memcpy_cold > 0 ? ours / max_memcpy_cold : 0);
            if (job->tr2) {
                cJSON *t2 = cJSON_AddObjectToObject(root, "transport2");
                cJSON_AddStringToObject(t2, "transport", mx_transport_name(job->tr2));
                cJSON_AddStringToObject(t2, "exchange", mx_transport_path(job->tr2));
                cJSON_AddNumberToObject(t2, "exchange_alone_dispatch_ms", max_iso2_d);
                cJSON_AddNumberToObject(t2, "exchange_alone_combine_ms", max_iso2_c);
                cJSON_AddNumberToObject(t2, "speedup_vs_alltoallv", iso2 > 0 ? plain / iso2 : 0);
            }
            st = write_json_file(o->json, root); /* a failure is printed by wk_agree below */
            cJSON_Delete(root);
        }
    }
    free(rows);
    free(lat_max);
    free(lat_bmax);
    free(xch_max);
    free(xch_bmax);
    st = wk_agree(job->comm, job->rank == 0 ? st : MX_OK, "writing the bench results");
fail:
    free(x0);
    free(xa);
    free(xb);
    free(ya);
    free(yb);
    free(lat);
    free(lat_b);
    free(xch);
    free(xch_b);
    return st == MX_OK ? 0 : 1;
}

/* ---------------------------------------------------------------- run */
int wk_cmd_run(wk_job_t *job)
{
    const wk_opts_t *o = job->o;
    size_t H = job->cfg.hidden;
    wk_hidden_t in;
    memset(&in, 0, sizeof in);
    mx_status_t st = MX_OK;
    if (job->rank == 0) {
        st = mx_output_path_check("--output", o->output); /* before any work, as the input's check */
        if (st == MX_OK)
            st = wk_st_read_hidden(o->input, &in);
        if (st == MX_OK && in.cols != H)
            st = mx_error_set(MX_ERR_FORMAT,
                              "--input %s: hidden_states has %zu columns but the model's hidden size "
                              "is %zu",
                              o->input, in.cols, H);
    }
    if ((st = wk_agree(job->comm, st, "reading the input")) != MX_OK)
        return 1;
    unsigned long long T64 = in.rows;
    MPI_Bcast(&T64, 1, MPI_UNSIGNED_LONG_LONG, 0, job->comm);
    size_t T = (size_t)T64, first, n;
    wk_split(T, job->size, job->rank, &first, &n);
    uint16_t *x = malloc((n ? n : 1) * H * 2), *out = malloc((n ? n : 1) * H * 2);
    int *cnt = malloc((size_t)job->size * sizeof(int)), *dsp = malloc((size_t)job->size * sizeof(int));
    st = (x && out && cnt && dsp) ? MX_OK : mx_error_set(MX_ERR_NOMEM, "run: out of memory");
    if (st == MX_OK && T * H * 2 > INT_MAX)
        st = mx_error_set(MX_ERR_UNSUPPORTED,
                          "--input %s: %zu tokens of %zu BF16 values are more than one "
                          "MPI_Scatterv carries (2 GiB)",
                          o->input, T, H);
    mx_routing_t routing;
    memset(&routing, 0, sizeof routing);
    uint16_t *all_out = NULL;
    int32_t *all_ids = NULL;
    float *all_w = NULL;
    int32_t *my_ids = NULL;
    float *my_w = NULL;
    if ((st = wk_agree(job->comm, st, "allocating")) != MX_OK)
        goto done;
    for (int r = 0; r < job->size; r++) {
        size_t f, c;
        wk_split(T, job->size, r, &f, &c);
        cnt[r] = (int)(c * H * 2);
        dsp[r] = (int)(f * H * 2);
    }
    MPI_Scatterv(in.bf16, cnt, dsp, MPI_BYTE, x, (int)(n * H * 2), MPI_BYTE, 0, job->comm);
    st = wk_layer_step(job, NULL, 0, x, n, first, T, out, &routing, NULL);
    if (st != MX_OK)
        goto done;
    /* k columns: top-k, or (expert choice) the most experts any token got */
    int k = routing.top_k;
    if (k == 0) {
        int mine = 0;
        for (size_t a = 0, c = 0; a < routing.n_assign; a++) {
            c = (a > 0 && routing.tok[a] == routing.tok[a - 1]) ? c + 1 : 1;
            if ((int)c > mine)
                mine = (int)c;
        }
        MPI_Allreduce(&mine, &k, 1, MPI_INT, MPI_MAX, job->comm);
    }
    size_t kk = (size_t)k;
    my_ids = malloc((n ? n : 1) * (kk ? kk : 1) * sizeof(int32_t));
    my_w = malloc((n ? n : 1) * (kk ? kk : 1) * sizeof(float));
    st = (my_ids && my_w) ? MX_OK : mx_error_set(MX_ERR_NOMEM, "run: out of memory");
    if (st == MX_OK) {
        if (routing.topk_ids) {
            memcpy(my_ids, routing.topk_ids, n * kk * sizeof(int32_t));
            memcpy(my_w, routing.topk_weights, n * kk * sizeof(float));
        } else {
            for (size_t i = 0; i < n * kk; i++) {
                my_ids[i] = -1;
                my_w[i] = 0;
            }
            for (size_t a = 0, c = 0; a < routing.n_assign; a++) {
                c = (a > 0 && routing.tok[a] == routing.tok[a - 1]) ? c + 1 : 0;
                my_ids[(size_t)routing.tok[a] * kk + c] = routing.expert[a];
                my_w[(size_t)routing.tok[a] * kk + c] = routing.weight[a];
            }
        }
    }
    if (job->rank == 0) {
        all_out = malloc((T ? T : 1) * H * 2);
        all_ids = malloc((T ? T : 1) * (kk ? kk : 1) * 4);
        all_w = malloc((T ? T : 1) * (kk ? kk : 1) * 4);
        if (!all_out || !all_ids || !all_w)
            st = mx_error_set(MX_ERR_NOMEM, "run: out of memory for the output");
    }
    if ((st = wk_agree(job->comm, st, "collecting the output")) != MX_OK)
        goto done;
    MPI_Gatherv(out, (int)(n * H * 2), MPI_BYTE, all_out, cnt, dsp, MPI_BYTE, 0, job->comm);
    for (int r = 0; r < job->size; r++) {
        size_t f, c;
        wk_split(T, job->size, r, &f, &c);
        cnt[r] = (int)(c * kk * 4);
        dsp[r] = (int)(f * kk * 4);
    }
    MPI_Gatherv(my_ids, (int)(n * kk * 4), MPI_BYTE, all_ids, cnt, dsp, MPI_BYTE, 0, job->comm);
    MPI_Gatherv(my_w, (int)(n * kk * 4), MPI_BYTE, all_w, cnt, dsp, MPI_BYTE, 0, job->comm);
    if (o->check) {
        char summary[512] = "";
        st = wk_check_layer(job, 0, x, n, first, T, out, &routing, summary, sizeof summary);
        if (job->rank == 0 && summary[0])
            fprintf(stderr, "mxworker: %s\n", summary);
        if (st != MX_OK)
            goto done;
    }
    if (job->rank == 0)
        st = wk_st_write_output(o->output, all_out, T, H, all_ids, all_w, kk);
    if ((st = wk_agree(job->comm, st, "writing the output")) != MX_OK)
        goto done;
    if (job->rank == 0)
        printf("mxworker run: layer %d, %zu tokens over %d ranks -> %s\n", o->layer, T, job->size, o->output);
done:
    mx_routing_fini(&routing);
    free(in.bf16);
    free(x);
    free(out);
    free(cnt);
    free(dsp);
    free(all_out);
    free(all_ids);
    free(all_w);
    free(my_ids);
    free(my_w);
    return st == MX_OK ? 0 : 1;
}

/* ---------------------------------------------------------------- info */
int wk_cmd_info(MPI_Comm comm, const wk_opts_t *o)
{
    wk_job_t job;
    mx_status_t st = wk_job_open(comm, o, 0, &job);
    if (st != MX_OK)
        return 1;
    mx_topo_cluster_t table;
    memset(&table, 0, sizeof table);
    st = mx_topo_gather(comm, &job.me, &table);
    if ((st = wk_agree(comm, st, "gathering the cluster table")) != MX_OK) {
        wk_job_close(&job);
        return 1;
    }
    if (job.rank == 0) {
        char mname[256];
        model_name(&job, mname, sizeof mname);
        printf("mxworker info: %d ranks on %d host%s; layer %d of %s\n", table.n_procs, table.n_hosts,
               table.n_hosts > 1 ? "s" : "", o->layer, mname);
        printf("placement %s:", o->placement);
        for (int r = 0; r < job.size; r++) {
            int c = 0;
            const int *e = mx_coord_placement_rank_experts(&job.place, r, &c);
            printf(" r%d:%d experts", r, c);
            /* the expert ids as runs ({0..2,5,9..11}): a rank of a placement file may hold any set */
            for (int i = 0, runs = 0; i < c; runs++) {
                int j = i;
                while (j + 1 < c && e[j + 1] == e[j] + 1)
                    j++;
                if (runs == 8) {
                    printf(",...");
                    break;
                }
                printf(i ? ",%d" : " {%d", e[i]);
                if (j > i)
                    printf("..%d", e[j]);
                i = j + 1;
            }
            if (c)
                printf("}");
        }
        printf("\ntransport %s: exchange %s", mx_transport_name(job.tr), mx_transport_path(job.tr));
        if (job.tr2)
            printf("; transport %s: exchange %s", mx_transport_name(job.tr2), mx_transport_path(job.tr2));
        printf("\n\n");
        st = mx_topo_cluster_print(&table, stdout);
        fflush(stdout);
        if (st == MX_OK && o->json) {
            char *text = NULL;
            st = mx_topo_cluster_json(&table, &text);
            if (st == MX_OK) {
                cJSON *root = cJSON_Parse(text);
                if (root) {
                    cJSON_AddStringToObject(root, "transport", mx_transport_name(job.tr));
                    cJSON_AddStringToObject(root, "exchange", mx_transport_path(job.tr));
                    if (job.tr2) {
                        cJSON_AddStringToObject(root, "transport2", mx_transport_name(job.tr2));
                        cJSON_AddStringToObject(root, "exchange2", mx_transport_path(job.tr2));
                    }
                    st = write_json_file(o->json, root);
                    cJSON_Delete(root);
                } else
                    st = mx_error_set(MX_ERR_INTERNAL, "cluster JSON does not parse");
            }
            free(text);
        }
    }
    st = wk_agree(comm, st, "printing the cluster table");
    mx_topo_cluster_fini(&table);
    wk_job_close(&job);
    return st == MX_OK ? 0 : 1;
}

/* ---------------------------------------------------------------- serve */
#ifdef MXEP_WORKER_SERVE
/* Collective (mx_serve_layer_fn): every rank gets its contiguous slice of the
 * request, split as wk_split splits it, and runs the layer across the ranks. */
static mx_status_t serve_layer(int layer, const uint16_t *x, size_t n, size_t first, size_t t_global, size_t H,
                               uint16_t *out, void *arg)
{
    wk_job_t *job = arg;
    int li = layer - job->o->layer;
    /* the same on every rank (the layer and H come from rank 0): no collective is skipped on one rank only */
    if (li < 0 || li >= job->n_layers)
        return mx_error_set(MX_ERR_INVALID, "layer %d is not served (mxworker serve --layer %d --layers %d)", layer,
                            job->o->layer, job->n_layers);
    if (H != job->cfg.hidden)
        return mx_error_set(MX_ERR_INVALID, "hidden %zu, the model's is %zu", H, job->cfg.hidden);
    return wk_layer_step(job, NULL, li, x, n, first, t_global, out, NULL, NULL);
}

int wk_cmd_serve(wk_job_t *job)
{
    const wk_opts_t *o = job->o;
    /* on every rank: mpirun forwards SIGTERM to all of them, and the followers
     * must wait for rank 0's stop instead of dying */
    mx_status_t st = mx_serve_signals_install();
    if ((st = wk_agree(job->comm, st, "installing the SIGTERM handler")) != MX_OK)
        return 1;
    mx_serve_config_t cfg = {.url = o->listen,
                             .hidden = job->cfg.hidden,
                             .first_layer = o->layer,
                             .n_layers = job->n_layers,
                             .max_tokens = (size_t)o->max_tokens};
    if (job->rank == 0) {
        char mname[256];
        model_name(job, mname, sizeof mname);
        printf("mxworker serve: %s\n  layers %d..%d, %d ranks, dispatch %s, combine %s, transport %s, exchange %s, "
               "at most %ld tokens per request\n  address %s (rank 0 binds it; SIGTERM or SIGINT drains and stops "
               "every rank)\n",
               mname, o->layer, o->layer + job->n_layers - 1, job->size, mx_dispatch_dtype_name(o->dtype),
               mx_combine_mode_name(o->combine), mx_transport_name(job->tr), mx_transport_path(job->tr),
               o->max_tokens ? o->max_tokens : 4096L, o->listen);
        fflush(stdout);
    }
    mx_serve_stats_t stats;
    memset(&stats, 0, sizeof stats);
    st = mx_serve_mpi_run(job->comm, job->rank == 0 ? &cfg : NULL, serve_layer, job, &stats);
    if (job->rank == 0) {
        if (st == MX_OK)
            printf("mxworker serve: stopped after %llu requests (%llu ok, %llu error replies, %llu replies the "
                   "socket refused)\n",
                   (unsigned long long)stats.requests, (unsigned long long)stats.ok, (unsigned long long)stats.errors,
                   (unsigned long long)stats.dropped);
        else
            fprintf(stderr, "mxworker: serve --listen %s failed: %s [%s]\n", o->listen, mx_error_detail(),
                    mx_status_str(st));
        fflush(stdout);
        fflush(stderr);
    }
    return st == MX_OK ? 0 : 1;
}
#else
int wk_cmd_serve(wk_job_t *job)
{
    if (job->rank == 0)
        fprintf(stderr, "mxworker serve: this mxworker was built without nanomsg (the front door)\n");
    return 2;
}
#endif
