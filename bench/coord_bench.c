/* coord_bench: the coordinator's per-layer CPU work (router logits, dispatch
 * pack BF16/FP8, unpack BF16/FP8, exact and reduce combine) timed with its
 * scalar code and with its fast paths (AVX2 + OpenMP) in the same run, and
 * the outputs of both checked bitwise equal. See --help. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <omp.h>

#include "mxep/coordinator.h"
#include "mxep/quant.h"
#include "bench_time.h"

static const char *USAGE = "usage: coord_bench [options]\n"
                           "\n"
                           "Times the coordinator's CPU work for one MoE layer on one rank, at the shape\n"
                           "DeepEP publishes by default (128 tokens per rank, H 7168, top-8 of 256 experts,\n"
                           "8 ranks, experts placed contiguously, uniform random routing). Every stage runs\n"
                           "four ways in the same process: the scalar code (mx_coord_fast_paths_set(0)) on\n"
                           "1 thread and on --threads threads, the fast paths on 1 thread and on --threads\n"
                           "threads. Each figure is the median of --iters runs after one warm-up run.\n"
                           "Before timing, the outputs of the scalar and fast code are compared byte for\n"
                           "byte; a difference fails the run (exit 1).\n"
                           "\n"
                           "Stages:\n"
                           "  logits         mx_coord_router_logits, T x H BF16 tokens, FP32 E x H router\n"
                           "  pack_bf16/fp8  mx_coord_dispatch_pack of this rank's T tokens to R ranks\n"
                           "  unpack_bf16/fp8 mx_coord_recv_unpack_into (a batch kept across runs; the\n"
                           "                 scalar code allocates a new one each time, as\n"
                           "                 mx_coord_recv_unpack does) of what rank 0 gets from R\n"
                           "                 ranks, each of them routing its own T tokens\n"
                           "  combine_exact  mx_coord_combine, one BF16 row per (token, expert)\n"
                           "  combine_reduce mx_coord_combine, one FP32 row per (token, rank)\n"
                           "\n"
                           "Options:\n"
                           "  --tokens N    tokens per rank (default 128)\n"
                           "  --hidden N    hidden size (default 7168)\n"
                           "  --experts N   experts (default 256)\n"
                           "  --topk N      experts per token (default 8)\n"
                           "  --ranks N     simulated ranks, 1..64 (default 8)\n"
                           "  --threads N   OpenMP threads for the parallel columns (default: OpenMP's\n"
                           "                default, i.e. OMP_NUM_THREADS or the cores)\n"
                           "  --iters N     timed runs per figure (default 20)\n"
                           "  --json FILE   also write the figures as JSON to FILE ('-' = stdout)\n"
                           "  --help        this text\n";

static uint64_t rng = 0x2545F4914F6CDD1Dull;
static double unit(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (double)(rng >> 11) / 9007199254740992.0;
}

static uint16_t bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static int parse_size(const char *flag, const char *v, size_t lo, size_t hi, size_t *out)
{
    char *end;
    errno = 0;
    unsigned long long x = v ? strtoull(v, &end, 10) : 0;
    if (!v || errno || *end || v[0] == '-' || x < lo || x > hi) {
        fprintf(stderr, "coord_bench: %s %s: expected an integer in %zu..%zu\n", flag, v ? v : "(missing)", lo, hi);
        return -1;
    }
    *out = (size_t)x;
    return 0;
}

/* ---------------------------------------------------------------- the layer state */

typedef struct {
    size_t T, H, K, iters;
    int E, R, nth;
    uint16_t *x;            /* [R x T x H]: every rank's tokens */
    mx_router_weights_t rw; /* E x H */
    float *logits;          /* [T x E] */
    mx_routing_t rt[64];
    mx_placement_t pl;
    mx_dispatch_plan_t plan[64];
    size_t sbytes[2][64][64], sdispl[2][64][64]; /* [dtype][src][dst] */
    uint8_t *sbuf[2][64];
    uint8_t *rbuf[2]; /* rank 0's receive buffer */
    size_t rbytes[2][64], rdispl[2][64];
    int nloc0;
    uint8_t *reply[2]; /* rank 0's combine input */
    size_t cdispl[2][64];
    uint16_t *out;        /* [T x H] */
    mx_recv_batch_t kept; /* unpack target kept across runs */
} bench_t;

typedef enum {
    S_LOGITS,
    S_PACK_BF16,
    S_PACK_FP8,
    S_UNPACK_BF16,
    S_UNPACK_FP8,
    S_COMB_EXACT,
    S_COMB_REDUCE,
    S_N
} stage_t;
static const char *stage_names[S_N] = {"logits",     "pack_bf16",     "pack_fp8",      "unpack_bf16",
                                       "unpack_fp8", "combine_exact", "combine_reduce"};

static int fail(const char *what)
{
    fprintf(stderr, "coord_bench: %s: %s (%s)\n", what, mx_status_str(mx_error_last()), mx_error_detail());
    return -1;
}

/* Runs one stage once; its output bytes into res and res_n when res != NULL. */
static int run_stage(bench_t *b, stage_t s, uint8_t **res, size_t *res_n)
{
    mx_recv_batch_t batch;
    switch (s) {
    case S_LOGITS:
        if (mx_coord_router_logits(&b->rw, b->x, b->T, b->H, b->logits) != MX_OK)
            return fail("router logits");
        if (res) {
            *res_n = b->T * (size_t)b->E * sizeof(float);
            *res = malloc(*res_n);
            memcpy(*res, b->logits, *res_n);
        }
        return 0;
    case S_PACK_BF16:
    case S_PACK_FP8: {
        int d = s == S_PACK_FP8;
        size_t tot = b->sdispl[d][0][b->R - 1] + b->sbytes[d][0][b->R - 1];
        if (mx_coord_dispatch_pack(&b->plan[0], b->x, b->H, (mx_dispatch_dtype_t)d, b->sbuf[d][0], b->sdispl[d][0]) !=
            MX_OK)
            return fail("dispatch pack");
        if (res) {
            *res_n = tot;
            *res = malloc(tot ? tot : 1);
            memcpy(*res, b->sbuf[d][0], tot);
        }
        return 0;
    }
    case S_UNPACK_BF16:
    case S_UNPACK_FP8: {
        int d = s == S_UNPACK_FP8;
        if (mx_coord_recv_unpack_into(b->rbuf[d], b->rbytes[d], b->rdispl[d], b->R, b->H, b->nloc0, &b->kept) != MX_OK)
            return fail("recv unpack");
        batch = b->kept;
        if (res) {
            *res_n = batch.n_tokens * b->H * 2 + batch.n_assign * 12;
            *res = malloc(*res_n ? *res_n : 1);
            uint8_t *p = *res;
            memcpy(p, batch.x, batch.n_tokens * b->H * 2);
            p += batch.n_tokens * b->H * 2;
            memcpy(p, batch.tok, batch.n_assign * 4);
            memcpy(p + batch.n_assign * 4, batch.expert, batch.n_assign * 4);
            memcpy(p + batch.n_assign * 8, batch.weight, batch.n_assign * 4);
        }
        return 0;
    }
    case S_COMB_EXACT:
    case S_COMB_REDUCE: {
        int m = s == S_COMB_REDUCE;
        if (mx_coord_combine(&b->plan[0], (mx_combine_mode_t)m, b->reply[m], b->cdispl[m], b->H, b->out) != MX_OK)
            return fail("combine");
        if (res) {
            *res_n = b->T * b->H * 2;
            *res = malloc(*res_n);
            memcpy(*res, b->out, *res_n);
        }
        return 0;
    }
    default:
        return -1;
    }
}

static int setup(bench_t *b)
{
    const size_t T = b->T, H = b->H;
    const int E = b->E, R = b->R;
    b->x = malloc((size_t)R * T * H * sizeof(uint16_t));
    b->rw.n_experts = E;
    b->rw.hidden = H;
    b->rw.weight = malloc((size_t)E * H * sizeof(float));
    b->rw.bias = malloc((size_t)E * sizeof(float));
    b->logits = malloc((T ? T : 1) * (size_t)E * sizeof(float));
    b->out = malloc((T ? T : 1) * H * sizeof(uint16_t));
    if (!b->x || !b->rw.weight || !b->rw.bias || !b->logits || !b->out) {
        fprintf(stderr, "coord_bench: out of memory for %d ranks x %zu tokens x %zu\n", R, T, H);
        return -1;
    }
    for (size_t i = 0; i < (size_t)R * T * H; i++)
        b->x[i] = bf16((float)(unit() * 4 - 2));
    for (size_t i = 0; i < (size_t)E * H; i++)
        b->rw.weight[i] = (float)(unit() * 0.02 - 0.01);
    for (int e = 0; e < E; e++)
        b->rw.bias[e] = (float)(unit() * 0.1);
    if (mx_coord_placement_contiguous(E, R, &b->pl) != MX_OK)
        return fail("placement");
    mx_router_desc_t d = {MX_ROUTER_TOPK_SOFTMAX, (int)b->K, 0, 0, 0, 1.0f, 1.0f};
    float *lg = malloc((T ? T : 1) * (size_t)E * sizeof(float));
    if (!lg)
        return fail("logits");
    for (int r = 0; r < R; r++) { /* uniform routing: random logits */
        for (size_t i = 0; i < T * (size_t)E; i++)
            lg[i] = (float)unit();
        if (mx_coord_route(&d, lg, NULL, T, E, &b->rt[r]) != MX_OK ||
            mx_coord_plan_build(&b->rt[r], &b->pl, r, (uint64_t)r * T, &b->plan[r]) != MX_OK) {
            free(lg);
            return fail("route / plan");
        }
    }
    free(lg);
    mx_coord_placement_rank_experts(&b->pl, 0, &b->nloc0);
    for (int dt = 0; dt < 2; dt++) {
        for (int s = 0; s < R; s++) {
            mx_coord_dispatch_sizes(&b->plan[s], (mx_dispatch_dtype_t)dt, H, b->sbytes[dt][s]);
            size_t tot = 0;
            for (int r = 0; r < R; r++) {
                b->sdispl[dt][s][r] = tot;
                tot += b->sbytes[dt][s][r];
            }
            b->sbuf[dt][s] = malloc(tot ? tot : 1);
            if (!b->sbuf[dt][s])
                return fail("send buffer");
            memset(b->sbuf[dt][s], 0, tot ? tot : 1);
            if (mx_coord_dispatch_pack(&b->plan[s], b->x + (size_t)s * T * H, H, (mx_dispatch_dtype_t)dt,
                                       b->sbuf[dt][s], b->sdispl[dt][s]) != MX_OK)
                return fail("dispatch pack");
        }
        size_t tot = 0;
        for (int s = 0; s < R; s++) {
            b->rbytes[dt][s] = b->sbytes[dt][s][0];
            b->rdispl[dt][s] = tot;
            tot += b->rbytes[dt][s];
        }
        b->rbuf[dt] = malloc(tot ? tot : 1);
        if (!b->rbuf[dt])
            return fail("receive buffer");
        for (int s = 0; s < R; s++)
            memcpy(b->rbuf[dt] + b->rdispl[dt][s], b->sbuf[dt][s] + b->sdispl[dt][s][0], b->rbytes[dt][s]);
        /* combine input of rank 0 (dt = mode here) */
        size_t cb[64];
        mx_coord_combine_sizes(&b->plan[0], (mx_combine_mode_t)dt, H, cb);
        tot = 0;
        for (int r = 0; r < R; r++) {
            b->cdispl[dt][r] = tot;
            tot += cb[r];
        }
        b->reply[dt] = malloc(tot ? tot : 4);
        if (!b->reply[dt])
            return fail("reply buffer");
        if (dt == MX_COMBINE_EXACT)
            for (size_t i = 0; i < tot / 2; i++) {
                uint16_t v = bf16((float)(unit() * 2 - 1));
                memcpy(b->reply[dt] + 2 * i, &v, 2);
            }
        else
            for (size_t i = 0; i < tot / 4; i++) {
                float v = (float)(unit() * 2 - 1);
                memcpy(b->reply[dt] + 4 * i, &v, 4);
            }
    }
    return 0;
}

static void teardown(bench_t *b)
{
    for (int r = 0; r < b->R; r++) {
        mx_dispatch_plan_fini(&b->plan[r]);
        mx_routing_fini(&b->rt[r]);
        free(b->sbuf[0][r]);
        free(b->sbuf[1][r]);
    }
    for (int i = 0; i < 2; i++) {
        free(b->rbuf[i]);
        free(b->reply[i]);
    }
    mx_placement_fini(&b->pl);
    mx_recv_batch_fini(&b->kept);
    free(b->x);
    free(b->rw.weight);
    free(b->rw.bias);
    free(b->logits);
    free(b->out);
}

/* median ms of `iters` runs (after a warm-up) with the given mode and threads */
static int time_stage(bench_t *b, stage_t s, int fast, int nth, double *ms)
{
    mx_coord_fast_paths_set(fast);
    omp_set_num_threads(nth);
    double *t = malloc(b->iters * sizeof *t);
    if (!t || run_stage(b, s, NULL, NULL) != 0) {
        free(t);
        return -1;
    }
    for (size_t i = 0; i < b->iters; i++) {
        double t0 = bench_now_s();
        if (run_stage(b, s, NULL, NULL) != 0) {
            free(t);
            return -1;
        }
        t[i] = (bench_now_s() - t0) * 1e3;
    }
    qsort(t, b->iters, sizeof *t, bench_cmp_double);
    *ms = t[b->iters / 2];
    free(t);
    mx_coord_fast_paths_set(1);
    return 0;
}

int main(int argc, char **argv)
{
    bench_t b;
    memset(&b, 0, sizeof b);
    b.T = 128, b.H = 7168, b.K = 8, b.iters = 20, b.E = 256, b.R = 8, b.nth = omp_get_max_threads();
    const char *json = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        size_t n;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(USAGE, stdout);
            return 0;
        } else if (!strcmp(a, "--tokens")) {
            if (parse_size(a, v, 1, 1 << 20, &b.T))
                return 2;
            i++;
        } else if (!strcmp(a, "--hidden")) {
            if (parse_size(a, v, 1, 1 << 20, &b.H))
                return 2;
            i++;
        } else if (!strcmp(a, "--experts")) {
            if (parse_size(a, v, 1, 1 << 16, &n))
                return 2;
            b.E = (int)n;
            i++;
        } else if (!strcmp(a, "--topk")) {
            if (parse_size(a, v, 1, 1 << 16, &b.K))
                return 2;
            i++;
        } else if (!strcmp(a, "--ranks")) {
            if (parse_size(a, v, 1, 64, &n))
                return 2;
            b.R = (int)n;
            i++;
        } else if (!strcmp(a, "--threads")) {
            if (parse_size(a, v, 1, 1024, &n))
                return 2;
            b.nth = (int)n;
            i++;
        } else if (!strcmp(a, "--iters")) {
            if (parse_size(a, v, 1, 100000, &b.iters))
                return 2;
            i++;
        } else if (!strcmp(a, "--json")) {
            if (!v) {
                fprintf(stderr, "coord_bench: --json needs a file name ('-' = stdout)\n");
                return 2;
            }
            json = v;
            i++;
        } else {
            fprintf(stderr, "coord_bench: unknown option '%s' (see --help)\n", a);
            return 2;
        }
    }
    if (b.K > (size_t)b.E) {
        fprintf(stderr, "coord_bench: --topk %zu exceeds --experts %d\n", b.K, b.E);
        return 2;
    }
    if (b.R > b.E) {
        fprintf(stderr, "coord_bench: --ranks %d exceeds --experts %d (contiguous placement)\n", b.R, b.E);
        return 2;
    }
    int rc = 1;
    if (setup(&b) != 0)
        goto out;
    /* correctness first: scalar vs fast, byte for byte */
    for (int s = 0; s < S_N; s++) {
        uint8_t *r0 = NULL, *r1 = NULL;
        size_t n0 = 0, n1 = 0;
        omp_set_num_threads(b.nth);
        mx_coord_fast_paths_set(0);
        int e0 = run_stage(&b, (stage_t)s, &r0, &n0);
        mx_coord_fast_paths_set(1);
        int e1 = run_stage(&b, (stage_t)s, &r1, &n1);
        int same = e0 == 0 && e1 == 0 && n0 == n1 && (n0 == 0 || memcmp(r0, r1, n0) == 0);
        free(r0);
        free(r1);
        if (!same) {
            fprintf(stderr, "coord_bench: stage %s: the fast path's output differs from the scalar code's\n",
                    stage_names[s]);
            goto out;
        }
    }
    double ms[S_N][4];
    const int nths[4] = {1, b.nth, 1, b.nth};
    for (int s = 0; s < S_N; s++)
        for (int c = 0; c < 4; c++)
            if (time_stage(&b, (stage_t)s, c >= 2, nths[c], &ms[s][c]) != 0)
                goto out;
    printf("coord_bench: T %zu/rank, H %zu, E %d, top-%zu, %d ranks, AVX2 %s, median of %zu runs (ms)\n", b.T, b.H, b.E,
           b.K, b.R, mx_quant_have_avx2() ? "yes" : "no", b.iters);
    printf("%-15s %12s %12s %12s %12s %10s %10s\n", "stage", "scalar 1t", "scalar", "fast 1t", "fast", "x (1t)",
           "x (vs s1t)");
    printf("%-15s %12s %9d t %12s %9d t %10s %10s\n", "", "", b.nth, "", b.nth, "", "");
    for (int s = 0; s < S_N; s++)
        printf("%-15s %12.3f %12.3f %12.3f %12.3f %10.1f %10.1f\n", stage_names[s], ms[s][0], ms[s][1], ms[s][2],
               ms[s][3], ms[s][0] / ms[s][2], ms[s][0] / ms[s][3]);
    printf("outputs of the scalar and fast code: bitwise equal (all stages)\n");
    if (json) {
        FILE *f = strcmp(json, "-") ? fopen(json, "w") : stdout;
        if (!f) {
            fprintf(stderr, "coord_bench: cannot write --json %s: %s\n", json, strerror(errno));
            goto out;
        }
        fprintf(f,
                "{\"tokens\": %zu, \"hidden\": %zu, \"experts\": %d, \"topk\": %zu, \"ranks\": %d, \"threads\": %d, "
                "\"avx2\": %s, \"iters\": %zu, \"bitwise_equal\": true, \"stages\": {",
                b.T, b.H, b.E, b.K, b.R, b.nth, mx_quant_have_avx2() ? "true" : "false", b.iters);
        for (int s = 0; s < S_N; s++)
            fprintf(f,
                    "%s\"%s\": {\"scalar_1t_ms\": %.4f, \"scalar_ms\": %.4f, \"fast_1t_ms\": %.4f, \"fast_ms\": "
                    "%.4f}",
                    s ? ", " : "", stage_names[s], ms[s][0], ms[s][1], ms[s][2], ms[s][3]);
        fprintf(f, "}}\n");
        if (f != stdout && fclose(f) != 0) {
            fprintf(stderr, "coord_bench: cannot write --json %s: %s\n", json, strerror(errno));
            goto out;
        }
    }
    rc = 0;
out:
    teardown(&b);
    return rc;
}
