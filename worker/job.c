/* mxworker: the job (model, placement, oracle, experts, transport), error
 * agreement, one distributed MoE layer, and the check against the reference. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <omp.h>

#include "mxep/log.h"
#include "worker_internal.h"
#ifdef MXEP_WORKER_UCX
#include "transport_ucx.h"
#endif

double wk_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

static uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static uint64_t fnv1a(uint64_t h, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

/* ---------------------------------------------------------------- agreement */
typedef struct {
    int status;
    int n_failed;
    char detail[MX_ERROR_DETAIL_MAX];
} agree_msg_t;

mx_status_t wk_agree(MPI_Comm comm, mx_status_t st, const char *phase)
{
    int rank = 0;
    MPI_Comm_rank(comm, &rank);
    int mine[2] = {st != MX_OK ? rank : INT_MAX, st != MX_OK}, first[2] = {0, 0};
    int in[1] = {mine[0]};
    MPI_Allreduce(in, &first[0], 1, MPI_INT, MPI_MIN, comm);
    if (first[0] == INT_MAX)
        return MX_OK;
    MPI_Allreduce(&mine[1], &first[1], 1, MPI_INT, MPI_SUM, comm);
    agree_msg_t m;
    memset(&m, 0, sizeof m);
    if (rank == first[0]) {
        m.status = (int)st;
        snprintf(m.detail, sizeof m.detail, "%s", mx_error_detail()[0] ? mx_error_detail() : mx_status_str(st));
    }
    MPI_Bcast(&m, (int)sizeof m, MPI_BYTE, first[0], comm);
    /* a failure is printed once: the phases above a failed one agree on it again on the way out */
    static int reported;
    if (rank == 0 && !reported) {
        reported = 1;
        fprintf(stderr, "mxworker: rank %d failed while %s: %s [%s]", first[0], phase, m.detail,
                mx_status_str((mx_status_t)m.status));
        int size = 1;
        MPI_Comm_size(comm, &size);
        if (first[1] > 1)
            fprintf(stderr, first[1] == size ? " (all %d ranks failed)" : " (%d ranks failed)", first[1]);
        fputc('\n', stderr);
        fflush(stderr);
    }
    if (st == MX_OK)
        return mx_error_relay((mx_status_t)m.status, "rank %d failed while %s: %s", first[0], phase, m.detail);
    return st;
}

/* ---------------------------------------------------------------- tokens */
void wk_split(size_t n_total, int size, int rank, size_t *first_p, size_t *count_p)
{
    size_t q = n_total / (size_t)size, r = n_total % (size_t)size, k = (size_t)rank;
    *first_p = k * q + (k < r ? k : r);
    *count_p = q + (k < r ? 1 : 0);
}

void wk_fill_tokens(uint64_t seed, size_t first, size_t count, size_t hidden, uint16_t *x)
{
    for (size_t t = 0; t < count; t++) {
        uint64_t g = first + t;
        for (size_t h = 0; h < hidden; h++) {
            uint64_t v = mix64(seed * 0x2545f4914f6cdd1dull ^ (g << 24) ^ h);
            /* sum of two uniforms in [-1, 1): a soft bell, never all zeros */
            float a = (float)(v >> 40) / (float)(1 << 24) * 2.0f - 1.0f;
            float b = (float)(v & 0xffffff) / (float)(1 << 24) * 2.0f - 1.0f;
            x[t * hidden + h] = wk_f32_bf16(a + b);
        }
    }
}

/* bench-only uniform routing: k distinct experts per token, drawn from (seed, global token) */
static mx_status_t route_uniform(uint64_t seed, int n_experts, int k, size_t n, size_t first, mx_routing_t *r_p)
{
    if (k < 1 || k > n_experts)
        return mx_error_set(MX_ERR_INVALID, "uniform routing: top_k %d with %d experts", k, n_experts);
    mx_routing_t r;
    memset(&r, 0, sizeof r);
    r.n_tokens = n;
    r.n_experts = n_experts;
    r.top_k = k;
    r.n_assign = n * (size_t)k;
    size_t na = r.n_assign ? r.n_assign : 1;
    r.tok = malloc(na * sizeof *r.tok);
    r.expert = malloc(na * sizeof *r.expert);
    r.weight = malloc(na * sizeof *r.weight);
    r.topk_ids = malloc(na * sizeof *r.topk_ids);
    r.topk_weights = malloc(na * sizeof *r.topk_weights);
    if (!r.tok || !r.expert || !r.weight || !r.topk_ids || !r.topk_weights) {
        mx_routing_fini(&r);
        return mx_error_set(MX_ERR_NOMEM, "uniform routing: out of memory");
    }
    for (size_t t = 0; t < n; t++) {
        int32_t *ids = r.topk_ids + t * (size_t)k;
        uint64_t s = mix64(seed ^ 0x756e69666f726dull ^ ((first + t) * 0x9e3779b97f4a7c15ull));
        for (int j = 0; j < k;) {
            s = mix64(s);
            int e = (int)(s % (uint64_t)n_experts), dup = 0;
            for (int i = 0; i < j; i++)
                dup |= ids[i] == e;
            if (!dup)
                ids[j++] = e;
        }
        int32_t sorted[k];
        memcpy(sorted, ids, sizeof sorted);
        for (int a = 1; a < k; a++)
            for (int b = a; b > 0 && sorted[b - 1] > sorted[b]; b--) {
                int32_t tmp = sorted[b];
                sorted[b] = sorted[b - 1];
                sorted[b - 1] = tmp;
            }
        for (int j = 0; j < k; j++) {
            size_t a = t * (size_t)k + (size_t)j;
            r.topk_weights[a] = 1.0f / (float)k;
            r.tok[a] = (int32_t)t;
            r.expert[a] = sorted[j];
            r.weight[a] = 1.0f / (float)k;
        }
    }
    *r_p = r;
    return MX_OK;
}

/* ---------------------------------------------------------------- model */
static mx_status_t model_config(const wk_opts_t *o, mx_ckpt_h *ckpt_p, mx_model_config_t *cfg)
{
    mx_status_t st;
    if (o->model_dir) {
        mx_ckpt_h ck = NULL;
        st = mx_ckpt_open(o->model_dir, &ck);
        if (st != MX_OK)
            return mx_error_prefix(st, "--model %s: ", o->model_dir);
        *cfg = *mx_ckpt_config(ck);
        *ckpt_p = ck;
        return MX_OK;
    }
    int n_layers = o->layer + o->layers;
    if (n_layers > 4096) /* the built-in models' limit (checkpoint/synth.c), in the user's words */
        return mx_error_set(MX_ERR_INVALID,
                            "--layer %d with --layers %d reaches layer %d: the built-in models have layers 0 .. 4095 "
                            "(a checkpoint, --model, may have more)",
                            o->layer, o->layers, n_layers - 1);
    if (strcmp(o->preset, "deepep-ll") == 0) {
        /* checkpoint/ may list it; otherwise the DeepSeek-V3 FP8 shape with DeepEP's sizes */
        int n = 0, have = 0;
        const char *const *names = mx_synth_presets(&n);
        for (int i = 0; i < n; i++)
            have |= strcmp(names[i], "deepep-ll") == 0;
        if (have)
            return mx_synth_config_ex("deepep-ll", n_layers, o->experts, cfg);
        st = mx_synth_config_ex("deepseek-fp8", n_layers, o->experts, cfg);
        if (st != MX_OK)
            return mx_error_prefix(st, "--preset deepep-ll (built on deepseek-fp8): ");
        if (o->experts && cfg->hidden == 7168 && cfg->router.top_k != 8)
            return mx_error_set(MX_ERR_INVALID,
                                "--preset deepep-ll --experts %d: so few experts leave the router top-%d, and DeepEP's "
                                "low-latency shape routes top-8: give more experts",
                                o->experts, cfg->router.top_k);
        if (cfg->hidden != 7168 || (!o->experts && cfg->n_experts != 256) || cfg->router.top_k != 8)
            return mx_error_set(MX_ERR_UNSUPPORTED,
                                "--preset deepep-ll: the deepseek-fp8 preset has H %zu, %d experts, top-%d; "
                                "expected H 7168, 256 experts, top-8",
                                cfg->hidden, cfg->n_experts, cfg->router.top_k);
        return MX_OK;
    }
    st = mx_synth_config_ex(o->preset, n_layers, o->experts, cfg);
    if (st != MX_OK) {
        int n = 0;
        const char *const *names = mx_synth_presets(&n);
        char list[512] = "";
        size_t len = 0;
        for (int i = 0; i < n && len < sizeof list; i++)
            len += (size_t)snprintf(list + len, sizeof list - len, "%s%s", i ? ", " : "", names[i]);
        return mx_error_prefix(st, "--preset %s (built-in models: %s, deepep-ll): ", o->preset, list);
    }
    return MX_OK;
}

static mx_status_t apply_router(const wk_opts_t *o, wk_job_t *job)
{
    job->router = job->cfg.router;
    if (o->router == WK_ROUTER_UNIFORM) {
        job->uniform = 1;
        return MX_OK;
    }
    if (o->router == WK_ROUTER_MODEL)
        return MX_OK;
    mx_router_desc_t *r = &job->router;
    r->kind = (mx_router_kind_t)o->router;
    if (r->kind == MX_ROUTER_EXPERT_CHOICE && r->capacity_factor <= 0)
        r->capacity_factor = 1.0f;
    if (r->kind == MX_ROUTER_SIGMOID_GROUPED) {
        if (r->n_group < 1)
            r->n_group = 1;
        if (r->topk_group < 1)
            r->topk_group = r->n_group;
        if (r->scaling_factor == 0)
            r->scaling_factor = 1.0f;
    }
    if (r->top_k < 1)
        r->top_k = 1;
    return MX_OK;
}

static mx_status_t make_placement(const wk_opts_t *o, wk_job_t *job)
{
    int E = job->cfg.n_experts, R = job->size;
    if (strcmp(o->placement, "contiguous") == 0)
        return mx_coord_placement_contiguous(E, R, &job->place);
    if (strcmp(o->placement, "replicated") == 0)
        return mx_coord_placement_replicated(E, R, &job->place);
    return mx_coord_placement_load(o->placement, E, R, &job->place);
}

/* The canonical text every rank must agree on: model shape, flags, sizes (not paths or backend). */
static void job_text(const wk_job_t *job, char *buf, size_t len)
{
    const wk_opts_t *o = job->o;
    const mx_model_config_t *c = &job->cfg;
    uint64_t ph = 0xcbf29ce484222325ull;
    char *pj = NULL;
    if (mx_coord_placement_json(&job->place, &pj) == MX_OK && pj) {
        ph = fnv1a(ph, pj, strlen(pj));
        free(pj);
    }
    snprintf(buf, len,
             "cmd=%d model=%s/%s type=%s quant=%s layers=%d E=%d H=%zu I=%zu scheme=%s act=%s router=%s k=%d "
             "layer=%d nlayers=%d tokens=%ld total=%ld iters=%d warmup=%d dtype=%s combine=%s exchange=%s "
             "check=%d seed=%llu experts=%d placement=%016llx ranks=%d transport=%s max_tokens=%ld baseline=%d",
             (int)o->cmd, o->model_dir ? "dir" : "synth", o->model_dir ? "" : o->preset, c->model_type, c->quant_method,
             c->n_layers, c->n_experts, c->hidden, c->inter, mx_scheme_name(c->moe.scheme), mx_act_name(c->moe.act),
             job->uniform ? "uniform" : mx_router_name(job->router.kind), job->router.top_k, o->layer, o->layers,
             o->tokens, o->tokens_total, o->iters, o->warmup, mx_dispatch_dtype_name(o->dtype),
             mx_combine_mode_name(o->combine), mx_exchange_mode_name(o->exchange), o->check,
             (unsigned long long)o->seed, o->experts, (unsigned long long)ph, job->size,
             wk_transport_name(o->transport), o->max_tokens, (int)o->baseline);
}

static mx_status_t consistency_check(wk_job_t *job)
{
    char text[1024];
    job_text(job, text, sizeof text);
    uint64_t h = fnv1a(0xcbf29ce484222325ull, text, strlen(text)), lo = 0, hi = 0;
    MPI_Allreduce(&h, &lo, 1, MPI_UINT64_T, MPI_MIN, job->comm);
    MPI_Allreduce(&h, &hi, 1, MPI_UINT64_T, MPI_MAX, job->comm);
    if (lo == hi)
        return MX_OK;
    char *all = NULL;
    if (job->rank == 0)
        all = malloc((size_t)job->size * sizeof text);
    MPI_Gather(text, (int)sizeof text, MPI_CHAR, all, (int)sizeof text, MPI_CHAR, 0, job->comm);
    if (job->rank == 0) {
        fprintf(stderr, "mxworker: the ranks disagree on the job (model, flags or sizes); every rank must run the "
                        "same command on the same model.\n");
        int shown = 0;
        for (int r = 1; r < job->size && all; r++) {
            const char *t = all + (size_t)r * sizeof text;
            if (strcmp(t, text) != 0 && shown < 4) {
                /* name the first field that differs */
                const char *a = text, *b = t;
                while (*a && *a == *b)
                    a++, b++;
                while (a > text && a[-1] != ' ')
                    a--, b--;
                char fa[80], fb[80];
                sscanf(a, "%79s", fa);
                sscanf(b, "%79s", fb);
                fprintf(stderr, "mxworker:   rank 0 has %s but rank %d has %s\n", fa, r, fb);
                shown++;
            }
        }
        fflush(stderr);
    }
    free(all);
    return mx_error_set(MX_ERR_INVALID, "the ranks disagree on the job (model, flags or sizes)");
}

/* The most tokens one layer of this job can bring to a rank: bench knows its
 * batch, serve its per-request limit; run learns T from its input (0: unknown). */
static size_t job_max_tokens(const wk_job_t *job)
{
    const wk_opts_t *o = job->o;
    if (o->cmd == WK_CMD_BENCH)
        return o->tokens_total >= 0 ? (size_t)o->tokens_total
                                    : (size_t)(o->tokens > 0 ? o->tokens : 0) * (size_t)job->size;
    if (o->cmd == WK_CMD_SERVE)
        return o->max_tokens > 0 ? (size_t)o->max_tokens : 4096;
    return 0;
}

/* Lets a backend with private scratch (a GPU's device memory) allocate it once,
 * at load time, for the largest batch this job can send to a rank holding n_ids
 * experts: every token, each with at most min(k, n_ids) of them (expert choice:
 * each local expert takes its capacity C). Out of memory then shows at start-up. */
static mx_status_t reserve_scratch(wk_job_t *job, mx_backend_packed_t *packed, int n_ids)
{
    const mx_backend_ops_t *ops = job->choice.backend;
    size_t tg = job_max_tokens(job);
    if (!ops->reserve || tg == 0 || n_ids <= 0)
        return MX_OK;
    const mx_router_desc_t *r = &job->router;
    size_t k = r->top_k > 0 ? (size_t)r->top_k : 1, na;
    if (!job->uniform && r->kind == MX_ROUTER_EXPERT_CHOICE) {
        double c = ceil((double)r->capacity_factor * (double)tg * (double)k / (double)job->cfg.n_experts);
        size_t cap = c < 1 ? 1 : (size_t)c;
        na = (cap < tg ? cap : tg) * (size_t)n_ids;
    } else {
        na = tg * (k < (size_t)n_ids ? k : (size_t)n_ids);
    }
    return ops->reserve(packed, tg, na);
}

static mx_status_t load_layer(wk_job_t *job, int layer, wk_layer_t *L, const int *ids, int n_ids,
                              mx_backend_packed_t **packed_p)
{
    mx_status_t st = MX_OK;
    if (!job->uniform && L) {
        st = job->ckpt ? mx_ckpt_load_router(job->ckpt, layer, &L->rw)
                       : mx_synth_router(&job->cfg, job->o->seed, layer, &L->rw);
        if (st != MX_OK)
            return mx_error_prefix(st, "router of layer %d: ", layer);
    }
    if (n_ids == 0)
        return MX_OK;
    mx_expert_set_h set = NULL;
    st = job->ckpt ? mx_ckpt_load_experts(job->ckpt, layer, ids, n_ids, &set)
                   : mx_synth_experts(&job->cfg, job->o->seed, layer, ids, n_ids, &set);
    if (st != MX_OK)
        return mx_error_prefix(st, "experts of layer %d: ", layer);
    const mx_backend_ops_t *ops = job->choice.backend;
    st = ops->prepack(&job->choice.device, &job->cfg.moe, mx_expert_set_weights(set), n_ids, packed_p);
    mx_expert_set_destroy(set);
    if (st != MX_OK)
        return mx_error_prefix(st, "prepacking layer %d for backend %s: ", layer, ops->name);
    st = reserve_scratch(job, *packed_p, n_ids);
    if (st != MX_OK) {
        ops->release(*packed_p);
        *packed_p = NULL;
        return mx_error_prefix(st, "reserving %s scratch for layer %d: ", ops->name, layer);
    }
    return MX_OK;
}

int wk_host_threads(int host_cpus, int n_dev, int n_cpu, int on_device)
{
    const int n = n_dev + n_cpu;
    int share = n > 0 ? host_cpus / n : host_cpus;
    if (share < 1)
        share = 1;
    if (n_dev <= 0 || n_cpu <= 0)
        return share;
    const int dev = share < WK_DEVICE_RANK_THREADS ? share : WK_DEVICE_RANK_THREADS;
    if (on_device)
        return dev;
    const int cpu = (host_cpus - n_dev * dev) / n_cpu;
    return cpu > share ? cpu : share;
}

/* Collective over job->comm. Where every rank of a host shares its CPUs (shared: this rank
 * was given no thread count and is not bound to a subset of them) and the host holds ranks on
 * devices beside ranks on its CPUs, the threads are split again by wk_host_threads: a GPU
 * rank's host work (staging, router, combine) takes 0.5 ms of a 30 ms heterogeneous layer
 * with 1 or 2 threads, while the CPU ranks are the slowest of the layer (bench/RESULTS.md,
 * session 32). Ranks of other hosts, or where any rank of the host has its own count, keep
 * theirs. */
static mx_status_t host_share_threads(wk_job_t *job, int shared)
{
    MPI_Comm host;
    int rc = MPI_Comm_split_type(job->comm, MPI_COMM_TYPE_SHARED, job->rank, MPI_INFO_NULL, &host);
    if (rc != MPI_SUCCESS)
        return mx_error_set(MX_ERR_TRANSPORT, "MPI_Comm_split_type(MPI_COMM_TYPE_SHARED) failed (%d)", rc);
    const int on_device = job->choice.device.device_index >= 0;
    int mine[3] = {on_device, !on_device, shared}, sum[3] = {0, 0, 0}, n = 0;
    rc = MPI_Allreduce(mine, sum, 3, MPI_INT, MPI_SUM, host);
    if (rc == MPI_SUCCESS)
        rc = MPI_Comm_size(host, &n);
    MPI_Comm_free(&host);
    if (rc != MPI_SUCCESS)
        return mx_error_set(MX_ERR_TRANSPORT, "MPI_Allreduce over the host's ranks failed (%d)", rc);
    if (sum[2] != n || sum[0] == 0 || sum[1] == 0)
        return MX_OK;
    const int t = wk_host_threads(job->me.host_cpus, sum[0], sum[1], on_device);
    MX_LOG_D("worker", "%d threads (was %d): %d device and %d CPU ranks share the host's %d CPUs", t,
             job->n_threads, sum[0], sum[1], job->me.host_cpus);
    job->n_threads = t;
    omp_set_num_threads(t);
    if (!on_device)
        job->choice.device.cores = t;
    return MX_OK;
}

/* pin_hooks: the backend page-locks each buffer the batch or a transport
 * allocates (a failure leaves it pageable: slower copies, the same results) */
static void pin_on_alloc(void *ctx, void *ptr, size_t bytes)
{
    wk_job_t *job = ctx;
    const mx_backend_ops_t *ops = job->choice.backend;
    if (job->n_pinned >= (int)(sizeof job->pinned / sizeof job->pinned[0])) {
        MX_LOG_D("worker", "rank %d: %zu bytes at %p stay pageable (%d buffers page-locked already)", job->rank, bytes,
                 ptr, job->n_pinned);
        return;
    }
    if (ops->host_register(&job->choice.device, ptr, bytes) != MX_OK) {
        MX_LOG_D("worker", "rank %d: %zu bytes stay pageable: %s", job->rank, bytes, mx_error_detail());
        return;
    }
    job->pinned[job->n_pinned++] = ptr;
}

static void pin_on_free(void *ctx, void *ptr)
{
    wk_job_t *job = ctx;
    for (int i = 0; i < job->n_pinned; i++)
        if (job->pinned[i] == ptr) {
            job->choice.backend->host_unregister(ptr);
            job->pinned[i] = job->pinned[--job->n_pinned];
            return;
        }
}

/* Where the backend page-locks host memory (a GPU backend), the batch's token
 * rows and the transports' buffers its outputs go to are page-locked as they
 * are allocated (issue 7: dispatch buffers in pinned host memory). */
static void pin_buffers(wk_job_t *job)
{
    const mx_backend_ops_t *ops = job->choice.backend;
    if (!ops || !ops->host_register || !ops->host_unregister)
        return;
    job->pin_hooks = (mx_host_hooks_t){.on_alloc = pin_on_alloc, .on_free = pin_on_free, .ctx = job};
    job->batch.x_hooks = &job->pin_hooks;
    mx_transport_set_host_hooks(job->tr, &job->pin_hooks);
    mx_transport_set_host_hooks(job->tr2, &job->pin_hooks);
}

mx_status_t wk_job_open(MPI_Comm comm, const wk_opts_t *o, int load_experts, wk_job_t *job)
{
    memset(job, 0, sizeof *job);
    job->comm = comm;
    job->o = o;
    MPI_Comm_rank(comm, &job->rank);
    MPI_Comm_size(comm, &job->size);
    mx_status_t st = mx_topo_probe(&job->me);
    if (st == MX_OK)
        st = mx_topo_locate(comm, &job->me);
    if ((st = wk_agree(comm, st, "probing the topology")) != MX_OK)
        goto fail;
    /* this rank's GPU (local rank % GPUs of the host) for the backends the oracle probes */
    mx_topo_apply_device(&job->me);
    mx_log_set_rank(job->rank);
    mx_log_set_host(job->me.host);
    /* threads per rank: --threads, else $OMP_NUM_THREADS, else this rank's share of its cores.
     * Every OpenMP region of the process (router, combine, kernels) gets that many, so ranks
     * sharing a host do not oversubscribe it (idle OpenMP threads spin and would steal the
     * CPU from the exchange). */
    job->n_threads = o->threads;
    const char *omp_env = getenv("OMP_NUM_THREADS");
    if (!job->n_threads && omp_env && atoi(omp_env) > 0)
        job->n_threads = atoi(omp_env);
    /* an unbound rank given no count shares the host's CPUs with the other ranks there (and
     * again once the backends are chosen: host_share_threads) */
    int shared_host = 0;
    if (!job->n_threads) {
        int ls = job->me.local_size > 0 ? job->me.local_size : 1;
        int cores = job->me.cores;
        /* an unbound rank sees every CPU of the host: share them */
        if (cores >= job->me.host_cpus && job->me.host_cpus > 0) {
            cores = job->me.host_cpus / ls;
            shared_host = 1;
        }
        job->n_threads = cores;
        if (job->n_threads < 1)
            job->n_threads = 1;
    }
    omp_set_num_threads(job->n_threads);
    MX_LOG_D("worker", "%d threads per rank (cores %d, host cpus %d, ranks on the host %d)", job->n_threads,
             job->me.cores, job->me.host_cpus, job->me.local_size);
    st = model_config(o, &job->ckpt, &job->cfg);
    if ((st = wk_agree(comm, st, "opening the model")) != MX_OK)
        goto fail;
    if (o->layer + o->layers > job->cfg.n_layers)
        st = mx_error_set(MX_ERR_INVALID, "--layer %d --layers %d: the model has %d layers (0..%d)", o->layer,
                          o->layers, job->cfg.n_layers, job->cfg.n_layers - 1);
    if (st == MX_OK)
        st = apply_router(o, job);
    if ((st = wk_agree(comm, st, "checking the options against the model")) != MX_OK)
        goto fail;
    st = make_placement(o, job);
    if ((st = wk_agree(comm, st, "placing the experts")) != MX_OK)
        goto fail;
    job->my_experts = mx_coord_placement_rank_experts(&job->place, job->rank, &job->n_my);
    if ((st = consistency_check(job)) != MX_OK)
        goto fail; /* every rank saw the same min/max: already agreed, rank 0 printed */
    st = mx_oracle_select(&job->cfg.moe, o->backend, job->report, sizeof job->report, &job->choice);
    if (st == MX_OK) {
        mx_topo_proc_set_backend(&job->me, job->choice.backend->name, job->report);
        MX_LOG_D("worker", "backend %s chosen: %s", job->choice.backend->name, job->choice.reason);
    }
    if ((st = wk_agree(comm, st, "choosing a backend")) != MX_OK)
        goto fail;
    st = host_share_threads(job, shared_host);
    if ((st = wk_agree(comm, st, "sharing the host's CPUs")) != MX_OK)
        goto fail;
    /* the transport(s) of --transport; info creates them too, to print the path they chose */
    /* the copies within a host run on the calling thread: on the 16-core host of the GPU machine
     * splitting them over 2 threads per rank made the exchange 2.3x slower (bench/RESULTS.md,
     * 2026-12-05); MXEP_SHM_COPY_THREADS=N (at most the rank's threads) opts in */
    int copy_threads = 1;
    const char *ct = getenv("MXEP_SHM_COPY_THREADS");
    if (ct && *ct) { /* garbage ("2x", "0", " 2", an overflow) was taken as 1 without a word */
        char *end = NULL;
        errno = 0;
        long v = strtol(ct, &end, 10);
        if (errno || *end || ct[0] < '0' || ct[0] > '9' || v < 1 || v > 4096)
            st = mx_error_set(MX_ERR_INVALID, "MXEP_SHM_COPY_THREADS='%s': expected a thread count 1 .. 4096", ct);
        else
            copy_threads = v < job->n_threads ? (int)v : job->n_threads;
    }
    mx_transport_opts_t to = {.mode = o->exchange, .copy_threads = copy_threads};
    const mx_transport_ops_t *ops = mx_transport_mpi_ops(), *ops2 = NULL;
#ifdef MXEP_WORKER_UCX
    if (o->transport == WK_TRANSPORT_UCX)
        ops = mx_transport_ucx_ops();
    else if (o->transport == WK_TRANSPORT_BOTH)
        ops2 = mx_transport_ucx_ops();
#else
    if (o->transport != WK_TRANSPORT_MPI) /* opts.c refuses it already; never a silent fallback */
        st = mx_error_set(MX_ERR_UNSUPPORTED, "--transport %s: this mxworker was built without UCX",
                          wk_transport_name(o->transport));
#endif
    if (st == MX_OK)
        st = mx_transport_create(ops, comm, &to, &job->tr);
    if ((st = wk_agree(comm, st,
                       ops == mx_transport_mpi_ops() ? "creating the MPI transport" : "creating the UCX transport")) !=
        MX_OK)
        goto fail;
    if (ops2) {
        st = mx_transport_create(ops2, comm, &to, &job->tr2);
        if ((st = wk_agree(comm, st, "creating the UCX transport (--transport both)")) != MX_OK)
            goto fail;
    }
    pin_buffers(job);
    if (o->cmd == WK_CMD_BENCH && load_experts) {
        /* the baseline: the MPI transport in alltoallv mode (no window, a private receive buffer) */
        mx_transport_opts_t ta = {.mode = MX_EXCHANGE_ALLTOALLV};
        st = mx_transport_create(mx_transport_mpi_ops(), comm, &ta, &job->tr_a2a);
        if ((st = wk_agree(comm, st, "creating the plain MPI_Alltoallv baseline")) != MX_OK)
            goto fail;
    }
    if (!load_experts)
        return MX_OK;
    size_t n = (size_t)job->size;
    job->b1 = calloc(n, sizeof(size_t));
    job->b2 = calloc(n, sizeof(size_t));
    job->b3 = calloc(n, sizeof(size_t));
    job->b4 = calloc(n, sizeof(size_t));
    job->dst = calloc(n, sizeof(uint8_t *));
    job->src = calloc(n, sizeof(const uint8_t *));
    job->last_disp = calloc(n, sizeof(size_t));
    job->last_comb = calloc(n, sizeof(size_t));
    job->layers = calloc((size_t)o->layers, sizeof *job->layers);
    st = (job->b1 && job->b2 && job->b3 && job->b4 && job->dst && job->src && job->last_disp && job->last_comb && job->layers)
             ? MX_OK
             : mx_error_set(MX_ERR_NOMEM, "out of memory");
    if ((st = wk_agree(comm, st, "allocating")) != MX_OK)
        goto fail;
    job->n_layers = o->layers;
    for (int i = 0; i < o->layers; i++) {
        wk_layer_t *L = &job->layers[i];
        L->layer = o->layer + i;
        st = load_layer(job, L->layer, L, job->my_experts, job->n_my, &L->packed);
        char phase[96];
        snprintf(phase, sizeof phase, "loading its experts of layer %d", L->layer);
        if ((st = wk_agree(comm, st, phase)) != MX_OK)
            goto fail;
    }
    return MX_OK;
fail:
    wk_job_close(job);
    return st;
}

void wk_job_close(wk_job_t *job)
{
    for (int i = 0; job->layers && i < job->n_layers; i++) {
        if (job->layers[i].packed)
            job->choice.backend->release(job->layers[i].packed);
        mx_router_weights_fini(&job->layers[i].rw);
    }
    free(job->layers);
    job->layers = NULL;
    mx_transport_destroy(job->tr);
    job->tr = NULL;
    mx_transport_destroy(job->tr2);
    job->tr2 = NULL;
    mx_transport_destroy(job->tr_a2a);
    job->tr_a2a = NULL;
    mx_recv_batch_fini(&job->batch);
    memset(&job->batch, 0, sizeof job->batch);
    mx_dispatch_plan_fini(&job->plan);
    mx_placement_fini(&job->place);
    if (job->ckpt)
        mx_ckpt_close(job->ckpt);
    job->ckpt = NULL;
    free(job->logits);
    free(job->logits_all);
    free(job->ws);
    free(job->b1);
    free(job->b2);
    free(job->b3);
    free(job->b4);
    free(job->dst);
    free((void *)job->src);
    free(job->last_disp);
    free(job->last_comb);
    job->last_disp = job->last_comb = NULL;
    job->logits = job->logits_all = NULL;
    job->ws = NULL;
    job->b1 = job->b2 = job->b3 = job->b4 = NULL;
    job->dst = NULL;
    job->src = NULL;
}

/* ---------------------------------------------------------------- one layer */
static mx_status_t grow(void **p, size_t *cap, size_t need)
{
    if (need <= *cap)
        return MX_OK;
    size_t n = need + need / 4 + 64;
    void *q = realloc(*p, n);
    if (!q)
        return mx_error_set(MX_ERR_NOMEM, "out of memory for %zu bytes", n);
    *p = q;
    *cap = n;
    return MX_OK;
}

static mx_status_t route_local(wk_job_t *job, wk_layer_t *L, const uint16_t *x, size_t n, size_t first, size_t t_global,
                               mx_routing_t *routing)
{
    int E = job->cfg.n_experts;
    size_t H = job->cfg.hidden;
    if (job->uniform)
        return route_uniform(job->o->seed + (uint64_t)L->layer, E, job->router.top_k, n, first, routing);
    mx_status_t st = grow((void **)&job->logits, &job->logits_cap, (n ? n : 1) * (size_t)E * sizeof(float));
    if (st == MX_OK)
        st = mx_coord_router_logits(&L->rw, x, n, H, job->logits);
    if (job->router.kind != MX_ROUTER_EXPERT_CHOICE) {
        if (st == MX_OK)
            st = mx_coord_route_router(&job->router, &L->rw, job->logits, n, routing);
        return st;
    }
    /* expert choice: everyone needs every token's scores (agree first: Allgatherv is collective) */
    if ((st = wk_agree(job->comm, st, "computing router logits")) != MX_OK)
        return st;
    st = grow((void **)&job->logits_all, &job->logits_all_cap, (t_global ? t_global : 1) * (size_t)E * sizeof(float));
    int *cnt = malloc((size_t)job->size * sizeof(int)), *dsp = malloc((size_t)job->size * sizeof(int));
    int bad = !cnt || !dsp || t_global * (size_t)E > INT_MAX;
    if (st == MX_OK && bad)
        st = mx_error_set(MX_ERR_UNSUPPORTED,
                          "expert choice: %zu tokens x %d experts of scores is too many to "
                          "gather",
                          t_global, E);
    if ((st = wk_agree(job->comm, st, "preparing the expert-choice gather")) != MX_OK) {
        free(cnt);
        free(dsp);
        return st;
    }
    for (int r = 0; r < job->size; r++) {
        size_t f, c;
        wk_split(t_global, job->size, r, &f, &c);
        cnt[r] = (int)(c * (size_t)E);
        dsp[r] = (int)(f * (size_t)E);
    }
    int rc =
        MPI_Allgatherv(job->logits, (int)(n * (size_t)E), MPI_FLOAT, job->logits_all, cnt, dsp, MPI_FLOAT, job->comm);
    free(cnt);
    free(dsp);
    if (rc != MPI_SUCCESS)
        return mx_error_set(MX_ERR_TRANSPORT, "MPI_Allgatherv of the router scores failed");
    return mx_coord_route_expert_choice(&job->router, job->logits_all, t_global, E, first, n, routing);
}

/* The transport's phases since the last call, into *sp (counts and waits; agree_ms set by the caller). */
static void take_split(mx_transport_h tr, wk_xchg_split_t *sp)
{
    mx_transport_stats_t t;
    mx_transport_stats(tr, &t, 1);
    sp->counts_ms = t.counts_ms;
    sp->arrive_ms = t.arrive_ms;
    sp->copy_ms = t.copy_ms;
    sp->remote_ms = t.remote_ms;
    sp->depart_ms = t.depart_ms;
    /* a transport that does not split its time: all of it counts as moving */
    if (t.arrive_ms + t.copy_ms + t.remote_ms + t.depart_ms == 0)
        sp->remote_ms = t.total_ms;
}

mx_status_t wk_layer_step(wk_job_t *job, mx_transport_h tr, int li, const uint16_t *x, size_t n, size_t first,
                          size_t t_global, uint16_t *out, mx_routing_t *routing_p, wk_step_stats_t *stats)
{
    if (!tr)
        tr = job->tr;
    wk_layer_t *L = &job->layers[li];
    size_t H = job->cfg.hidden;
    int R = job->size;
    mx_dispatch_dtype_t dtype = job->o->dtype;
    mx_combine_mode_t cmode = job->o->combine;
    wk_step_stats_t s;
    memset(&s, 0, sizeof s);
    mx_routing_t routing;
    memset(&routing, 0, sizeof routing);
    mx_dispatch_plan_t *plan = &job->plan; /* kept across layers and iterations */
    mx_recv_batch_t *bt = &job->batch;     /* likewise */
    double t0 = wk_now_ms();

    /* owner side: route, plan */
    mx_status_t st = route_local(job, L, x, n, first, t_global, &routing);
    double t1 = wk_now_ms();
    if (st == MX_OK)
        st = mx_coord_plan_build_into(&routing, &job->place, job->rank, first, plan);
    size_t total = 0;
    if (st == MX_OK) {
        mx_coord_dispatch_sizes(plan, dtype, H, job->b1);
        for (int r = 0; r < R; r++)
            total += job->b1[r];
    }
    if ((st = wk_agree(job->comm, st, "routing its tokens")) != MX_OK)
        goto done;
    s.dispatch_bytes = total;
    memcpy(job->last_disp, job->b1, (size_t)R * sizeof(size_t));
    double t2 = wk_now_ms();

    /* dispatch: counts, then the payload, packed where the receivers read it
     * (mx_transport_push_begin: their regions on this host, a staging buffer
     * for other hosts and for the plain MPI_Alltoallv path) */
    const uint8_t *recv = NULL;
    mx_transport_stats(tr, NULL, 1);
    st = mx_transport_exchange_counts(tr, job->b1, job->b3);
    if ((st = wk_agree(job->comm, st, "exchanging dispatch counts")) != MX_OK)
        goto done;
    st = mx_transport_push_begin(tr, job->b1, job->b3, job->dst);
    double tp1 = wk_now_ms();
    if (st == MX_OK)
        st = mx_coord_dispatch_pack_to(plan, x, H, dtype, job->dst);
    double tp2 = wk_now_ms();
    mx_status_t st2 = mx_transport_push_end(tr, &recv, job->b4); /* always: the peers wait for it */
    if (st == MX_OK)
        st = st2;
    double t2b = wk_now_ms();
    if ((st = wk_agree(job->comm, st, "dispatching tokens")) != MX_OK)
        goto done;
    double t3 = wk_now_ms();
    take_split(tr, &s.disp);
    s.disp.agree_ms = t3 - t2b;
    s.disp.own_ms = tp2 - tp1; /* packing */

    /* worker side: decode, run the local experts, their outputs written where
     * the owners read them (mx_transport_pull_begin) */
    st = mx_coord_recv_unpack_into(recv, job->b3, job->b4, R, H, job->n_my, bt);
    size_t out_bytes = 0;
    if (st == MX_OK) {
        s.tokens_in = bt->n_tokens;
        s.assign_in = bt->n_assign;
        out_bytes = cmode == MX_COMBINE_EXACT ? bt->n_assign * H * 2 : bt->n_tokens * H * 4;
        mx_coord_reply_sizes(bt, cmode, job->b1, job->b2);
    } else {
        memset(job->b1, 0, (size_t)R * sizeof(size_t)); /* offer nothing; the round still runs */
        memset(job->b2, 0, (size_t)R * sizeof(size_t));
    }
    mx_coord_combine_sizes(plan, cmode, H, job->b3);
    uint8_t *obuf = NULL;
    mx_status_t stp = mx_transport_pull_begin(tr, out_bytes, job->b1, job->b2, job->b3, &obuf);
    if (st == MX_OK)
        st = stp;
    if (st == MX_OK && bt->n_assign > 0) {
        const mx_backend_ops_t *ops = job->choice.backend;
        if (!L->packed)
            st = mx_error_set(MX_ERR_INTERNAL, "rank %d received %zu assignments but holds no expert", job->rank,
                              bt->n_assign);
        size_t ws = st == MX_OK ? ops->workspace_size(L->packed, bt->n_tokens, bt->n_assign) : 0;
        if (st == MX_OK && ws)
            st = grow(&job->ws, &job->ws_cap, ws);
        if (st == MX_OK) {
            mx_run_args_t args;
            mx_coord_recv_run_args(bt, cmode, (uint16_t *)obuf, (float *)obuf, job->n_threads, &args);
            if (cmode == MX_COMBINE_REDUCE)
                memset(obuf, 0, out_bytes);
            st = ops->run(L->packed, &args, job->ws);
        }
    }
    double t4 = wk_now_ms();
    /* combine: the owners read the replies in place (sizes known on both
     * sides), then reduce them into out */
    for (int r = 0; r < R; r++)
        s.combine_bytes += job->b1[r];
    memcpy(job->last_comb, job->b1, (size_t)R * sizeof(size_t));
    mx_status_t sa = wk_agree(job->comm, st, "running its experts");
    double t4b = wk_now_ms();
    mx_transport_stats(tr, NULL, 1);           /* the dispatch's phases were taken; these are the combine's */
    st2 = mx_transport_pull_end(tr, job->src); /* always, failed or not: the peers wait for it */
    if ((st = sa) != MX_OK)
        goto done;
    double t4c = wk_now_ms();
    if ((st = wk_agree(job->comm, st2, "returning expert outputs")) != MX_OK)
        goto done;
    double t5 = wk_now_ms();
    take_split(tr, &s.comb);
    s.comb.agree_ms = t5 - t4c;
    st = mx_coord_combine_from(plan, cmode, job->src, H, out);
    double t6 = wk_now_ms();
    if ((st = wk_agree(job->comm, st, "combining expert outputs")) != MX_OK)
        goto done;
    /* dispatch_ms holds the packing (written where the receivers read it) and
     * combine_ms the reduction (read where the senders wrote): each is the
     * whole of moving its bytes, for our exchange and the baselines alike */
    s.route_ms = t1 - t0;
    s.dispatch_ms = t3 - t2;
    s.compute_ms = t4 - t3;
    s.sync_ms = t4b - t4; /* waiting for the slowest rank's experts */
    s.combine_ms = t6 - t4b;
    s.comb.own_ms = t6 - t5; /* reducing */
    s.total_ms = t6 - t0;
    if (stats)
        *stats = s;
    if (routing_p) {
        *routing_p = routing;
        memset(&routing, 0, sizeof routing);
    }
done:
    mx_routing_fini(&routing);
    return st;
}

/* ---------------------------------------------------------------- check against the reference */
static mx_status_t gather_rows(wk_job_t *job, const void *mine, size_t n, size_t row_bytes, size_t t_global, void *all)
{
    if (t_global * row_bytes > INT_MAX)
        return mx_error_set(MX_ERR_UNSUPPORTED, "--check: %zu tokens of %zu bytes are too many to gather on rank 0",
                            t_global, row_bytes);
    int *cnt = malloc((size_t)job->size * sizeof(int)), *dsp = malloc((size_t)job->size * sizeof(int));
    if (!cnt || !dsp) {
        free(cnt);
        free(dsp);
        return mx_error_set(MX_ERR_NOMEM, "out of memory");
    }
    for (int r = 0; r < job->size; r++) {
        size_t f, c;
        wk_split(t_global, job->size, r, &f, &c);
        cnt[r] = (int)(c * row_bytes);
        dsp[r] = (int)(f * row_bytes);
    }
    int rc = MPI_Gatherv(mine, (int)(n * row_bytes), MPI_BYTE, all, cnt, dsp, MPI_BYTE, 0, job->comm);
    free(cnt);
    free(dsp);
    return rc == MPI_SUCCESS ? MX_OK : mx_error_set(MX_ERR_TRANSPORT, "MPI_Gatherv failed");
}

static int same_backend_everywhere(wk_job_t *job)
{
    const char *name = job->choice.backend->name;
    uint64_t h = fnv1a(0xcbf29ce484222325ull, name, strlen(name)), lo = 0, hi = 0;
    MPI_Allreduce(&h, &lo, 1, MPI_UINT64_T, MPI_MIN, job->comm);
    MPI_Allreduce(&h, &hi, 1, MPI_UINT64_T, MPI_MAX, job->comm);
    return lo == hi;
}

mx_status_t wk_check_layer(wk_job_t *job, int li, const uint16_t *x, size_t n, size_t first, size_t t_global,
                           const uint16_t *out, const mx_routing_t *routing, char *summary, size_t summary_len)
{
    (void)first;
    wk_layer_t *L = &job->layers[li];
    size_t H = job->cfg.hidden;
    int k = job->router.kind == MX_ROUTER_EXPERT_CHOICE && !job->uniform ? 0 : job->router.top_k;
    int same = same_backend_everywhere(job);
    int bitwise = same && job->o->combine == MX_COMBINE_EXACT && job->o->dtype == MX_DISPATCH_BF16;
    uint16_t *xa = NULL, *oa = NULL, *ref = NULL;
    int32_t *ids = NULL;
    mx_status_t st = MX_OK;
    if (job->rank == 0) {
        size_t tg = t_global ? t_global : 1;
        xa = malloc(tg * H * 2);
        oa = malloc(tg * H * 2);
        ref = malloc(tg * H * 2);
        ids = malloc(tg * (size_t)(k ? k : 1) * sizeof(int32_t));
        if (!xa || !oa || !ref || !ids)
            st = mx_error_set(MX_ERR_NOMEM, "--check: out of memory for %zu tokens", t_global);
    }
    if ((st = wk_agree(job->comm, st, "preparing --check")) != MX_OK)
        goto done;
    st = gather_rows(job, x, n, H * 2, t_global, xa);
    if (st == MX_OK)
        st = gather_rows(job, out, n, H * 2, t_global, oa);
    if (st == MX_OK && k)
        st = gather_rows(job, routing->topk_ids, n, (size_t)k * sizeof(int32_t), t_global, ids);
    if ((st = wk_agree(job->comm, st, "gathering outputs for --check")) != MX_OK)
        goto done;
    if (job->rank == 0) {
        /* every expert of the layer, with the same backend, in one process */
        int E = job->cfg.n_experts;
        int *all_ids = malloc((size_t)E * sizeof(int));
        mx_backend_packed_t *packed = NULL;
        mx_routing_t rr;
        memset(&rr, 0, sizeof rr);
        if (!all_ids)
            st = mx_error_set(MX_ERR_NOMEM, "out of memory");
        for (int e = 0; st == MX_OK && e < E; e++)
            all_ids[e] = e;
        if (st == MX_OK)
            st = load_layer(job, L->layer, NULL, all_ids, E, &packed);
        if (st == MX_OK) {
            if (job->uniform) {
                st = route_uniform(job->o->seed + (uint64_t)L->layer, E, job->router.top_k, t_global, 0, &rr);
                if (st == MX_OK)
                    st = mx_pipeline_ref_run_routed(job->choice.backend, packed, &rr, xa, H, job->n_threads, ref);
            } else {
                mx_pipeline_ref_t pipe = {job->choice.backend, packed, &job->router, &L->rw, H, job->n_threads};
                st = mx_pipeline_ref_run(&pipe, xa, t_global, ref, &rr);
            }
        }
        if (packed)
            job->choice.backend->release(packed);
        free(all_ids);
        if (st == MX_OK) {
            size_t diff = 0, id_diff = 0, nonfinite = 0;
            double num = 0, den = 0;
            for (size_t i = 0; i < t_global * H; i++) {
                float a = wk_bf16_f32(oa[i]), b = wk_bf16_f32(ref[i]);
                diff += oa[i] != ref[i];
                nonfinite += !isfinite(a); /* NaN equals NaN bitwise: the run is still no good */
                num += ((double)a - b) * ((double)a - b);
                den += (double)b * b;
            }
            for (size_t i = 0; k && rr.topk_ids && i < t_global * (size_t)k; i++)
                id_diff += ids[i] != rr.topk_ids[i];
            double rel = den > 0 ? sqrt(num / den) : sqrt(num);
            double tol = job->o->dtype == MX_DISPATCH_FP8 ? 0.08 : 0.01;
            int ok = id_diff == 0 && nonfinite == 0 && (bitwise ? diff == 0 : rel <= tol);
            snprintf(summary, summary_len,
                     "check layer %d: %s: %zu tokens, %zu of %zu values differ, rel L2 %.3g (%s), topk ids differ: "
                     "%zu, non-finite outputs: %zu",
                     L->layer,
                     ok          ? "ok"
                     : nonfinite ? "NON-FINITE"
                                 : "MISMATCH",
                     t_global, diff, t_global * H, rel,
                     bitwise                            ? "bitwise required"
                     : job->o->dtype == MX_DISPATCH_FP8 ? "fp8 tolerance 0.08"
                                                        : "tolerance 0.01",
                     id_diff, nonfinite);
            if (!ok)
                st = mx_error_set(MX_ERR_INTERNAL, "%s", summary);
        }
        mx_routing_fini(&rr);
    }
    st = wk_agree(job->comm, st, "checking against the single-process ref pipeline");
done:
    free(xa);
    free(oa);
    free(ref);
    free(ids);
    return st;
}
