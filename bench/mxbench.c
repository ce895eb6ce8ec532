/* mxbench: benchmarks of mxep parts. `mxbench kernels` times one backend's
 * run() on the expert shapes of real models, next to this machine's read
 * bandwidth and FP32 FMA peak measured in the same run. See --help. */
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <omp.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "mxep/kernels.h"
#include "mxep/moe.h"
#include "mxep/quant.h"
#include "mxep/status.h"
#include "bench_rand.h"
#include "bench_time.h"

static const char *USAGE = "usage: mxbench kernels [options]\n"
                           "\n"
                           "Times a kernel backend's run() on MoE expert shapes at several token counts and\n"
                           "prints, per case: median time of --iters runs after 2 warm-up runs, the weight\n"
                           "bytes of the experts the batch touches, GB/s (those bytes / time), GFLOP/s\n"
                           "(2 x tokens x top-k x 3 x H x I / time), and their ratios to this machine's read\n"
                           "bandwidth (the best streaming read of a buffer 8x the last-level cache, 256 MiB to\n"
                           "1 GiB, each thread reading its part as one stream or as 8 side by side)\n"
                           "and FP32 FMA peak (independent FMA chains at the backend's vector width), both\n"
                           "measured at the start of the same run with the same thread count. Before timing,\n"
                           "each case checks the outputs of its first two tokens against the ref backend\n"
                           "(relative L2, FORMATS.md tolerances; a case over tolerance fails the run). For\n"
                           "small token counts the ref backend is also timed, as a peer.\n"
                           "\n"
                           "Shapes (--model):\n"
                           "  gpt-oss-20b    E=32  H=2880 I=2880 top-4, SwiGLU-OAI, gate/up interleaved\n"
                           "  qwen3-30b-a3b  E=128 H=2048 I=768  top-8, SiLU, gate/up halves\n"
                           "\n"
                           "Options:\n"
                           "  --model NAME[,NAME]    gpt-oss-20b, qwen3-30b-a3b or all (default all)\n"
                           "  --scheme S[,S]         W4A16, W4A8, W8A16, W8A8, W16A16 or all (default W4A16)\n"
                           "  --tokens N[,N]         token counts (default 1,4,16,64,256,1024)\n"
                           "  --backend NAME         backend to time (default cpu; any registered name)\n"
                           "  --threads N            OpenMP threads (default: OMP_NUM_THREADS or all cores)\n"
                           "  --iters N              timed runs per case (default 10; fewer when a case\n"
                           "                         would take over ~3 s)\n"
                           "  --ref-peer-max N       time the ref backend as a peer up to N tokens (default 4,\n"
                           "                         0 = never)\n"
                           "  --no-check             skip the check against ref\n"
                           "  --seed N               random data seed (default 1; data is never zero)\n"
                           "  --rotate N             cycle through N batches routed with seeds seed..seed+N-1\n"
                           "                         (default 1): successive runs then touch different experts,\n"
                           "                         so a last-level cache larger than one batch's weights does\n"
                           "                         not serve them; weightMB is the mean over the N batches\n"
                           "  --paired               also read a fresh window of the bandwidth buffer (2x the\n"
                           "                         last-level cache, 64 to 256 MiB) right before each timed\n"
                           "                         run, and print the median of those reads (pGB/s) and of\n"
                           "                         each run's GB/s over the read before it (bw%p): a ratio\n"
                           "                         that a machine whose bandwidth drifts during the run (a\n"
                           "                         shared VM) does not move as much; the runs then always\n"
                           "                         find their weights out of the cache\n"
                           "  --json FILE            also write one JSON record per case to FILE\n"
                           "  -h, --help             this text\n"
                           "\n"
                           "Environment: MXEP_CPU_ISA=scalar|avx2|avxvnni|avx512|amx caps the cpu backend's ISA\n"
                           "level (avxvnni: the AVX2 level with AVX-VNNI for MXFP4 weights, its default where\n"
                           "the CPU has it; avx2 leaves it out; amx: AMX-INT8 tiles for MXFP4 weights, only on\n"
                           "request).\n"
                           "Progress goes to stderr, the table to stdout. Exit status: 0 ok, 1 a check\n"
                           "failed or a backend error, 2 bad usage (found before anything is measured,\n"
                           "a --json path that cannot be written included).\n";

/* ------------------------------------------------------------------ machine peaks */

#if defined(__x86_64__) || defined(__i386__)
/* The sum of [p, p + n) read as NS equal parts side by side, 128 bytes of each
 * in turn (NS = 1: one stream): a kernel streaming several weight rows at once
 * keeps that many streams in flight, which a core's prefetchers may serve
 * faster than one. */
__attribute__((target("avx2"))) static double read_sum_avx2(const float *p, size_t n, int ns)
{
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    const size_t part = n / (size_t)ns & ~(size_t)31;
    for (size_t i = 0; i < part; i += 32)
        for (int s = 0; s < ns; s++) {
            const float *q = p + (size_t)s * part + i;
            a0 = _mm256_add_ps(a0, _mm256_load_ps(q));
            a1 = _mm256_add_ps(a1, _mm256_load_ps(q + 8));
            a2 = _mm256_add_ps(a2, _mm256_load_ps(q + 16));
            a3 = _mm256_add_ps(a3, _mm256_load_ps(q + 24));
        }
    __m256 s = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
    float t[8];
    _mm256_storeu_ps(t, s);
    double r = 0;
    for (int k = 0; k < 8; k++)
        r += t[k];
    for (size_t i = part * (size_t)ns; i < n; i++)
        r += p[i];
    return r;
}

/* 12 independent FMA chains in named registers (an array could live in
 * memory and measure store forwarding instead of the FMA units). */
#define FMA_ACC 12
#define FMA12(OP, M, C)                                                                                                \
    do {                                                                                                               \
        a0 = OP(a0, M, C);                                                                                             \
        a1 = OP(a1, M, C);                                                                                             \
        a2 = OP(a2, M, C);                                                                                             \
        a3 = OP(a3, M, C);                                                                                             \
        a4 = OP(a4, M, C);                                                                                             \
        a5 = OP(a5, M, C);                                                                                             \
        a6 = OP(a6, M, C);                                                                                             \
        a7 = OP(a7, M, C);                                                                                             \
        a8 = OP(a8, M, C);                                                                                             \
        a9 = OP(a9, M, C);                                                                                             \
        a10 = OP(a10, M, C);                                                                                           \
        a11 = OP(a11, M, C);                                                                                           \
    } while (0)

__attribute__((target("avx2,fma"))) static float fma_chain_avx2(long iters, float seed)
{
    __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f * seed);
    __m256 a0 = _mm256_set1_ps(seed), a1 = _mm256_set1_ps(seed + 1), a2 = _mm256_set1_ps(seed + 2),
           a3 = _mm256_set1_ps(seed + 3), a4 = _mm256_set1_ps(seed + 4), a5 = _mm256_set1_ps(seed + 5),
           a6 = _mm256_set1_ps(seed + 6), a7 = _mm256_set1_ps(seed + 7), a8 = _mm256_set1_ps(seed + 8),
           a9 = _mm256_set1_ps(seed + 9), a10 = _mm256_set1_ps(seed + 10), a11 = _mm256_set1_ps(seed + 11);
    for (long i = 0; i < iters; i++) {
        FMA12(_mm256_fmadd_ps, m, c);
        __asm__ volatile("" : "+x"(a0), "+x"(a1), "+x"(a2), "+x"(a3), "+x"(a4), "+x"(a5));
    }
    __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                             _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
    s = _mm256_add_ps(s, _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11)));
    float t[8];
    _mm256_storeu_ps(t, s);
    return t[0] + t[7];
}

__attribute__((target("avx512f"))) static float fma_chain_avx512(long iters, float seed)
{
    __m512 m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f * seed);
    __m512 a0 = _mm512_set1_ps(seed), a1 = _mm512_set1_ps(seed + 1), a2 = _mm512_set1_ps(seed + 2),
           a3 = _mm512_set1_ps(seed + 3), a4 = _mm512_set1_ps(seed + 4), a5 = _mm512_set1_ps(seed + 5),
           a6 = _mm512_set1_ps(seed + 6), a7 = _mm512_set1_ps(seed + 7), a8 = _mm512_set1_ps(seed + 8),
           a9 = _mm512_set1_ps(seed + 9), a10 = _mm512_set1_ps(seed + 10), a11 = _mm512_set1_ps(seed + 11);
    for (long i = 0; i < iters; i++) {
        FMA12(_mm512_fmadd_ps, m, c);
        __asm__ volatile("" : "+v"(a0), "+v"(a1), "+v"(a2), "+v"(a3), "+v"(a4), "+v"(a5));
    }
    __m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
                             _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7)));
    s = _mm512_add_ps(s, _mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11)));
    return _mm512_reduce_add_ps(s);
}
#endif

static double read_sum_scalar(const float *p, size_t n)
{
    double a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        a0 += p[i];
        a1 += p[i + 1];
        a2 += p[i + 2];
        a3 += p[i + 3];
    }
    for (; i < n; i++)
        a0 += p[i];
    return a0 + a1 + a2 + a3;
}

static float fma_chain_scalar(long iters, float seed)
{
    float acc[FMA_ACC];
    for (int k = 0; k < FMA_ACC; k++)
        acc[k] = seed + (float)k;
    for (long i = 0; i < iters; i++)
        for (int k = 0; k < FMA_ACC; k++)
            acc[k] = fmaf(acc[k], 0.999999f, 1e-7f);
    float s = 0;
    for (int k = 0; k < FMA_ACC; k++)
        s += acc[k];
    return s;
}

static volatile double g_sink;

/* The read-bandwidth buffer: 8x the last-level cache, 256 MiB to 1 GiB, first
 * touched by the threads that read it. Kept for --paired's reads of one window
 * of it before each timed run. */
enum { RB_STREAMS = 8 };
typedef struct {
    float *buf;
    size_t n;    /* floats */
    size_t win;  /* floats per --paired window: 2x the last-level cache, 64 to 256 MiB */
    size_t next; /* the next window to read */
    int threads;
    int streams; /* the pattern that read fastest at the start: 1 or RB_STREAMS */
    int avx2;    /* the reads take AVX2 loads (cpuid, asked once) */
} rbuf_t;

/* GB/s of one streaming read of [buf + lo, + n) by the buffer's threads, each its
 * part as `ns` streams side by side (ns = 1: one stream) */
static double read_pass(const rbuf_t *r, size_t lo, size_t n, int ns)
{
    double t0 = bench_now_s(), sum = 0.0;
#pragma omp parallel num_threads(r->threads) reduction(+ : sum)
    {
        int nt = omp_get_num_threads(), id = omp_get_thread_num();
        size_t chunk = (n / (size_t)nt) & ~(size_t)31, o = lo + (size_t)id * chunk;
        size_t len = id == nt - 1 ? n - (size_t)id * chunk : chunk;
#if defined(__x86_64__) || defined(__i386__)
        sum += r->avx2 ? read_sum_avx2(r->buf + o, len, ns) : read_sum_scalar(r->buf + o, len);
#else
        sum += read_sum_scalar(r->buf + o, len);
#endif
    }
    double dt = bench_now_s() - t0;
    g_sink = sum;
    return (double)(n * sizeof(float)) / dt / 1e9;
}

/* GB/s of a streaming read with `threads` threads: the best of 6 passes, which
 * alternate between one stream per thread and RB_STREAMS streams side by side
 * (best1 / bestn: each pattern's best). A single stream per core read less than
 * the cpu backend's own kernels on a 2.1 GHz Xeon (ratios up to 1.18 against it,
 * bench/RESULTS.md session 35), so it alone was no limit. 0 when out of memory. */
static double measure_read_bw(rbuf_t *r, int threads, double *best1, double *bestn)
{
    memset(r, 0, sizeof *r);
    long llc = sysconf(_SC_LEVEL3_CACHE_SIZE);
    size_t bytes = llc > 0 ? (size_t)llc * 8 : 0;
    if (bytes < ((size_t)256 << 20))
        bytes = (size_t)256 << 20;
    if (bytes > ((size_t)1 << 30))
        bytes = (size_t)1 << 30;
    size_t win = llc > 0 ? (size_t)llc * 2 : 0;
    if (win < ((size_t)64 << 20))
        win = (size_t)64 << 20;
    if (win > ((size_t)256 << 20)) /* (a VM may report its host's whole L3) */
        win = (size_t)256 << 20;
    if (win > bytes / 4)
        win = bytes / 4;
    r->n = bytes / sizeof(float);
    r->win = win / sizeof(float);
    r->threads = threads;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    r->avx2 = __builtin_cpu_supports("avx2");
#endif
    r->buf = aligned_alloc(64, r->n * sizeof(float));
    if (!r->buf)
        return 0.0;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (size_t i = 0; i < r->n; i++)
        r->buf[i] = (float)(i & 1023) * 0.001f + 1.0f; /* first touch by its reader */
    *best1 = *bestn = 0.0;
    for (int pass = 0; pass < 6; pass++) {
        const int ns = pass & 1 ? RB_STREAMS : 1;
        double gbps = read_pass(r, 0, r->n, ns), *pb = ns > 1 ? bestn : best1;
        if (gbps > *pb)
            *pb = gbps;
    }
    r->streams = *best1 > *bestn ? 1 : RB_STREAMS;
    return *best1 > *bestn ? *best1 : *bestn;
}

/* --paired: GB/s of a read of the buffer's next window (the windows take turns,
 * so none is in the last-level cache when it is read), in the start's pattern */
static double read_window(rbuf_t *r)
{
    const size_t nw = r->n / r->win;
    const size_t w = r->next++ % (nw ? nw : 1);
    return read_pass(r, w * r->win, r->win, r->streams);
}

/* GFLOP/s of independent FMA chains; width 16 (AVX-512), 8 (AVX2) or 1. */
static double measure_fma_peak(int threads, int width)
{
    long iters = 20000000L / (width > 1 ? 1 : 4);
    double best = 0.0;
    for (int pass = 0; pass < 3; pass++) {
        double t0 = bench_now_s(), sink = 0.0;
#pragma omp parallel num_threads(threads) reduction(+ : sink)
        {
            float seed = (float)(omp_get_thread_num() + 1);
#if defined(__x86_64__) || defined(__i386__)
            if (width == 16)
                sink += fma_chain_avx512(iters, seed);
            else if (width == 8)
                sink += fma_chain_avx2(iters, seed);
            else
                sink += fma_chain_scalar(iters, seed);
#else
            sink += fma_chain_scalar(iters, seed);
#endif
        }
        double dt = bench_now_s() - t0;
        g_sink = sink;
        double gf = 2.0 * (double)iters * FMA_ACC * width * threads / dt / 1e9;
        if (gf > best)
            best = gf;
    }
    return best;
}

/* ------------------------------------------------------------------ problems */

typedef struct {
    const char *name;
    int n_experts, top_k;
    size_t H, I;
    mx_act_t act;
    mx_gateup_order_t order;
} model_t;

static const model_t MODELS[] = {
    {"gpt-oss-20b", 32, 4, 2880, 2880, MX_ACT_SWIGLU_OAI, MX_GATEUP_INTERLEAVED},
    {"qwen3-30b-a3b", 128, 8, 2048, 768, MX_ACT_SILU, MX_GATEUP_HALVES},
};
#define N_MODELS ((int)(sizeof MODELS / sizeof MODELS[0]))

typedef struct {
    mx_expert_weights_t *w;
    void **bufs;
    int n_bufs;
} experts_t;

static void *ex_alloc(experts_t *ex, size_t n)
{
    void *p = malloc(n ? n : 1);
    if (p)
        ex->bufs[ex->n_bufs++] = p;
    return p;
}

static void experts_free(experts_t *ex)
{
    for (int i = 0; i < ex->n_bufs; i++)
        free(ex->bufs[i]);
    free(ex->bufs);
    free(ex->w);
    memset(ex, 0, sizeof *ex);
}

/* Random canonical matrix. Values are random codes (never a zero matrix),
 * scaled so that outputs are O(1) for tokens uniform in +-1. */
static int make_matrix(experts_t *ex, uint64_t *s, mx_scheme_t scheme, size_t rows, size_t cols, mx_matrix_t *m)
{
    memset(m, 0, sizeof *m);
    m->rows = rows;
    m->cols = cols;
    float target = 1.7f / sqrtf((float)cols); /* weight rms */
    if (scheme == MX_SCHEME_W4A16 || scheme == MX_SCHEME_W4A8) {
        m->fmt = MX_WFMT_MXFP4;
        m->scale_kind = MX_WSCALE_E8M0_32;
        uint8_t *q = ex_alloc(ex, rows * cols / 2), *sc = ex_alloc(ex, rows * cols / 32);
        if (!q || !sc)
            return -1;
        for (size_t i = 0; i < rows * cols / 2; i += 8) {
            uint64_t r = bench_rng_next(s);
            memcpy(q + i, &r, rows * cols / 2 - i < 8 ? rows * cols / 2 - i : 8);
        }
        int e = 127 + (int)floorf(log2f(target / 3.2f));
        for (size_t i = 0; i < rows * cols / 32; i++)
            sc[i] = (uint8_t)(e + (int)(bench_rng_next(s) % 3) - 1);
        m->data = q;
        m->scales = sc;
    } else if (scheme == MX_SCHEME_W16A16) {
        m->fmt = MX_WFMT_BF16;
        m->scale_kind = MX_WSCALE_NONE;
        uint16_t *d = ex_alloc(ex, rows * cols * 2);
        if (!d)
            return -1;
        for (size_t i = 0; i < rows * cols; i++)
            d[i] = mx_quant_bf16_from_f32(bench_rng_uniform(s, -1.7f, 1.7f) * target);
        m->data = d;
    } else {
        m->fmt = MX_WFMT_FP8;
        m->scale_kind = MX_WSCALE_BLOCK;
        size_t nsc = ((rows + 127) / 128) * ((cols + 127) / 128);
        uint8_t *q = ex_alloc(ex, rows * cols);
        float *sc = ex_alloc(ex, nsc * sizeof(float));
        if (!q || !sc)
            return -1;
        for (size_t i = 0; i < rows * cols; i++) {
            uint8_t b = (uint8_t)(bench_rng_next(s) & 0xFF);
            uint8_t mag = (uint8_t)(0x28 + (b & 0x7F) % 0x30); /* |v| in [2^-2, 2^4): no NaN codes */
            q[i] = (uint8_t)((b & 0x80) | mag);
        }
        for (size_t i = 0; i < nsc; i++)
            sc[i] = target / 3.0f * bench_rng_uniform(s, 0.8f, 1.25f);
        m->data = q;
        m->scales = sc;
    }
    return 0;
}

static int experts_make(const model_t *md, mx_scheme_t scheme, uint64_t seed, experts_t *ex)
{
    memset(ex, 0, sizeof *ex);
    int E = md->n_experts;
    ex->w = calloc((size_t)E, sizeof *ex->w);
    ex->bufs = calloc((size_t)E * 8, sizeof *ex->bufs);
    if (!ex->w || !ex->bufs)
        return -1;
    uint64_t s = seed * 0x100000001B3ull + 17;
    for (int e = 0; e < E; e++) {
        mx_expert_weights_t *w = &ex->w[e];
        if (make_matrix(ex, &s, scheme, 2 * md->I, md->H, &w->gate_up) ||
            make_matrix(ex, &s, scheme, md->H, md->I, &w->down))
            return -1;
        float *b1 = ex_alloc(ex, 2 * md->I * sizeof(float)), *b2 = ex_alloc(ex, md->H * sizeof(float));
        if (!b1 || !b2)
            return -1;
        for (size_t i = 0; i < 2 * md->I; i++)
            b1[i] = bench_rng_uniform(&s, -0.1f, 0.1f);
        for (size_t i = 0; i < md->H; i++)
            b2[i] = bench_rng_uniform(&s, -0.1f, 0.1f);
        w->gate_up_bias = b1;
        w->down_bias = b2;
        w->input_scale = 1.0f / 448.0f;
        w->down_input_scale = (e & 1) ? 4.0f / 448.0f : 0.0f;
    }
    return 0;
}

typedef struct {
    size_t n_tokens, n_assign;
    uint16_t *x;
    int32_t *tok, *expert;
    float *weight;
    int active; /* distinct experts used */
} batch_t;

static void batch_free(batch_t *b)
{
    free(b->x);
    free(b->tok);
    free(b->expert);
    free(b->weight);
    memset(b, 0, sizeof *b);
}

static int batch_make(const model_t *md, size_t T, uint64_t seed, batch_t *b)
{
    memset(b, 0, sizeof *b);
    size_t k = (size_t)md->top_k, NA = T * k;
    b->n_tokens = T;
    b->n_assign = NA;
    b->x = malloc(T * md->H * sizeof *b->x);
    b->tok = malloc(NA * sizeof *b->tok);
    b->expert = malloc(NA * sizeof *b->expert);
    b->weight = malloc(NA * sizeof *b->weight);
    int *used = calloc((size_t)md->n_experts, sizeof *used);
    if (!b->x || !b->tok || !b->expert || !b->weight || !used) {
        free(used);
        return -1;
    }
    uint64_t s = seed * 31 + T;
    for (size_t i = 0; i < T * md->H; i++)
        b->x[i] = mx_quant_bf16_from_f32(bench_rng_uniform(&s, -1.0f, 1.0f));
    bench_route_draw(&s, T, k, md->n_experts, b->expert, b->weight, used);
    for (size_t i = 0; i < NA; i++)
        b->tok[i] = (int32_t)(i / k);
    for (int e = 0; e < md->n_experts; e++)
        b->active += used[e];
    free(used);
    return 0;
}

/* ------------------------------------------------------------------ one backend */

typedef struct {
    const mx_backend_ops_t *ops;
    mx_device_info_t dev;
    mx_backend_packed_t *packed;
} be_t;

static int be_open(const mx_backend_ops_t *ops, const mx_moe_desc_t *d, const experts_t *ex, int E, be_t *b)
{
    memset(b, 0, sizeof *b);
    b->ops = ops;
    char why[MX_REASON_MAX] = "";
    mx_status_t st = ops->probe(&b->dev);
    if (st != MX_OK) {
        fprintf(stderr, "mxbench: backend %s: %s: %s\n", ops->name, mx_status_str(st), mx_error_detail());
        return -1;
    }
    if (!ops->supports(&b->dev, d, why, sizeof why)) {
        fprintf(stderr, "mxbench: backend %s does not run %s %s H=%zu I=%zu: %s\n", ops->name,
                mx_scheme_name(d->scheme), mx_act_name(d->act), d->hidden, d->inter, why);
        return -1;
    }
    st = ops->prepack(&b->dev, d, ex->w, E, &b->packed);
    if (st != MX_OK) {
        fprintf(stderr, "mxbench: backend %s prepack: %s: %s\n", ops->name, mx_status_str(st), mx_error_detail());
        return -1;
    }
    return 0;
}

static void be_close(be_t *b)
{
    if (b->packed)
        b->ops->release(b->packed);
    b->packed = NULL;
}

static mx_status_t be_run(const be_t *b, const batch_t *bt, size_t n_tokens, size_t n_assign, uint16_t *out, void *ws,
                          int threads)
{
    mx_run_args_t a;
    memset(&a, 0, sizeof a);
    a.n_tokens = n_tokens;
    a.x = bt->x;
    a.n_assign = n_assign;
    a.tok = bt->tok;
    a.expert = bt->expert;
    a.weight = bt->weight;
    a.mode = MX_OUT_PER_ASSIGNMENT;
    a.out_bf16 = out;
    a.n_threads = threads;
    return b->ops->run(b->packed, &a, ws);
}

static double rel_l2(const uint16_t *a, const uint16_t *r, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double x = mx_quant_bf16_to_f32(a[i]), y = mx_quant_bf16_to_f32(r[i]);
        num += (x - y) * (x - y);
        den += y * y;
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* --paired: each timed run right after a read of the bandwidth buffer's next
 * window; the medians of those reads' GB/s and of each run's weight GB/s over the
 * read just before it (per_expert: canonical weight bytes per active expert). */
typedef struct {
    rbuf_t *rb;
    size_t per_expert;
    double bw, ratio; /* out */
} paired_t;

/* Times `iters` runs after 2 warm-ups, run i taking batch bt[i % nb]; returns
 * the median in ms (< 0 on error). pr (may be NULL): paired reads, as above. */
static double time_runs(const be_t *b, const batch_t *bt, int nb, uint16_t *out, void *ws, int threads, int iters,
                        paired_t *pr)
{
    double t[256], pbw[256], rat[256];
    if (iters > 256)
        iters = 256;
    for (int i = 0; i < 2; i++) {
        if (pr)
            (void)read_window(pr->rb);
        if (be_run(b, &bt[i % nb], bt[i % nb].n_tokens, bt[i % nb].n_assign, out, ws, threads) != MX_OK)
            return -1.0;
    }
    double start = bench_now_s();
    int n = 0;
    for (; n < iters; n++) {
        const batch_t *bn = &bt[(n + 2) % nb];
        if (pr)
            pbw[n] = read_window(pr->rb);
        double t0 = bench_now_s();
        if (be_run(b, bn, bn->n_tokens, bn->n_assign, out, ws, threads) != MX_OK)
            return -1.0;
        t[n] = (bench_now_s() - t0) * 1e3;
        if (pr)
            rat[n] = (double)pr->per_expert * bn->active / (t[n] * 1e-3) / 1e9 / pbw[n];
        if (n >= 2 && bench_now_s() - start > 3.0) {
            n++;
            break;
        }
    }
    if (pr) {
        pr->bw = bench_median(pbw, n);
        pr->ratio = bench_median(rat, n);
    }
    return bench_median(t, n);
}

/* ------------------------------------------------------------------ options */

typedef struct {
    int models[N_MODELS], n_models;
    mx_scheme_t schemes[MX_SCHEME_COUNT];
    int n_schemes;
    size_t tokens[32];
    int n_tokens;
    const char *backend;
    int threads, iters, ref_peer_max, check, rotate, paired;
    uint64_t seed;
    const char *json;
} opts_t;

static int parse_list(const char *arg, const char *flag, int (*one)(const char *, opts_t *), opts_t *o)
{
    char buf[256];
    if (strlen(arg) >= sizeof buf) {
        fprintf(stderr, "mxbench: %s: list too long\n", flag);
        return -1;
    }
    strcpy(buf, arg);
    if (strspn(buf, ",") == strlen(buf))
        return 0; /* no item at all: "an empty list" below */
    /* items between commas, none empty ("1,,2" and "1," were read as "1,2" and "1") */
    for (char *p = buf;;) {
        char *c = strchr(p, ',');
        if (c)
            *c = 0;
        if (!*p) {
            fprintf(stderr, "mxbench: %s '%s': an empty item in the list\n", flag, arg);
            return -1;
        }
        if (one(p, o))
            return -1;
        if (!c)
            return 0;
        p = c + 1;
    }
}

static int one_model(const char *s, opts_t *o)
{
    if (!strcmp(s, "all")) {
        o->n_models = 0;
        for (int i = 0; i < N_MODELS; i++)
            o->models[o->n_models++] = i;
        return 0;
    }
    for (int i = 0; i < N_MODELS; i++)
        if (!strcmp(s, MODELS[i].name)) {
            if (o->n_models < N_MODELS)
                o->models[o->n_models++] = i;
            return 0;
        }
    fprintf(stderr, "mxbench: --model '%s': expected gpt-oss-20b, qwen3-30b-a3b or all\n", s);
    return -1;
}

static int one_scheme(const char *s, opts_t *o)
{
    if (!strcmp(s, "all")) {
        o->n_schemes = 0;
        for (int i = 0; i < MX_SCHEME_COUNT; i++)
            o->schemes[o->n_schemes++] = (mx_scheme_t)i;
        return 0;
    }
    mx_scheme_t sc;
    if (mx_scheme_parse(s, &sc) != MX_OK) {
        fprintf(stderr, "mxbench: --scheme '%s': expected W4A16, W4A8, W8A16, W8A8, W16A16 or all\n", s);
        return -1;
    }
    if (o->n_schemes < MX_SCHEME_COUNT)
        o->schemes[o->n_schemes++] = sc;
    return 0;
}

static int parse_int(const char *s, const char *flag, long min, long max, long *v)
{
    char *end;
    errno = 0;
    long x = strtol(s, &end, 10);
    if (errno || end == s || *end || x < min || x > max) {
        fprintf(stderr, "mxbench: %s '%s': expected an integer %ld..%ld\n", flag, s, min, max);
        return -1;
    }
    *v = x;
    return 0;
}

static int one_tokens(const char *s, opts_t *o)
{
    long v;
    if (parse_int(s, "--tokens", 1, 1L << 20, &v))
        return -1;
    if (o->n_tokens >= 32) {
        fprintf(stderr, "mxbench: --tokens: at most 32 counts\n");
        return -1;
    }
    o->tokens[o->n_tokens++] = (size_t)v;
    return 0;
}

static int parse_opts(int argc, char **argv, opts_t *o)
{
    memset(o, 0, sizeof *o);
    o->backend = "cpu";
    o->iters = 10;
    o->rotate = 1;
    o->ref_peer_max = 4;
    o->check = 1;
    o->seed = 1;
    int set_models = 0, set_schemes = 0, set_tokens = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        long x;
#define NEED_VALUE                                                                                                     \
    if (!v) {                                                                                                          \
        fprintf(stderr, "mxbench: %s needs a value\n", a);                                                             \
        return -1;                                                                                                     \
    }                                                                                                                  \
    i++;
        if (!strcmp(a, "-h") || !strcmp(a, "--help"))
            return 1;
        if (!strcmp(a, "--model")) {
            NEED_VALUE
            if (!set_models)
                o->n_models = 0;
            set_models = 1;
            if (parse_list(v, a, one_model, o))
                return -1;
        } else if (!strcmp(a, "--scheme")) {
            NEED_VALUE
            if (!set_schemes)
                o->n_schemes = 0;
            set_schemes = 1;
            if (parse_list(v, a, one_scheme, o))
                return -1;
        } else if (!strcmp(a, "--tokens")) {
            NEED_VALUE
            if (!set_tokens)
                o->n_tokens = 0;
            set_tokens = 1;
            if (parse_list(v, a, one_tokens, o))
                return -1;
        } else if (!strcmp(a, "--backend")) {
            NEED_VALUE
            o->backend = v;
        } else if (!strcmp(a, "--threads")) {
            NEED_VALUE
            if (parse_int(v, a, 1, 4096, &x))
                return -1;
            o->threads = (int)x;
        } else if (!strcmp(a, "--iters")) {
            NEED_VALUE
            if (parse_int(v, a, 1, 256, &x))
                return -1;
            o->iters = (int)x;
        } else if (!strcmp(a, "--ref-peer-max")) {
            NEED_VALUE
            if (parse_int(v, a, 0, 1L << 20, &x))
                return -1;
            o->ref_peer_max = (int)x;
        } else if (!strcmp(a, "--rotate")) {
            NEED_VALUE
            if (parse_int(v, a, 1, 64, &x))
                return -1;
            o->rotate = (int)x;
        } else if (!strcmp(a, "--seed")) {
            NEED_VALUE
            if (parse_int(v, a, 0, 1L << 30, &x))
                return -1;
            o->seed = (uint64_t)x;
        } else if (!strcmp(a, "--json")) {
            NEED_VALUE
            o->json = v;
        } else if (!strcmp(a, "--no-check")) {
            o->check = 0;
        } else if (!strcmp(a, "--paired")) {
            o->paired = 1;
        } else {
            fprintf(stderr, "mxbench kernels: unknown option '%s' (see --help)\n", a);
            return -1;
        }
#undef NEED_VALUE
    }
    if ((set_models && !o->n_models) || (set_schemes && !o->n_schemes) || (set_tokens && !o->n_tokens)) {
        fprintf(stderr, "mxbench: --%s: an empty list\n",
                set_models && !o->n_models     ? "model"
                : set_schemes && !o->n_schemes ? "scheme"
                                               : "tokens");
        return -1;
    }
    if (!set_models)
        for (int i = 0; i < N_MODELS; i++)
            o->models[o->n_models++] = i;
    if (!set_schemes)
        o->schemes[o->n_schemes++] = MX_SCHEME_W4A16;
    if (!set_tokens) {
        static const size_t def[] = {1, 4, 16, 64, 256, 1024};
        for (size_t i = 0; i < 6; i++)
            o->tokens[o->n_tokens++] = def[i];
    }
    return 0;
}

/* ------------------------------------------------------------------ JSON */

typedef struct {
    char *buf;
    size_t len, cap;
    int n;
} jbuf_t;

static void jprintf(jbuf_t *j, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void jprintf(jbuf_t *j, const char *fmt, ...)
{
    va_list ap;
    for (;;) {
        va_start(ap, fmt);
        int n = vsnprintf(j->buf ? j->buf + j->len : NULL, j->buf ? j->cap - j->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0)
            return;
        if (j->buf && j->len + (size_t)n < j->cap) {
            j->len += (size_t)n;
            return;
        }
        size_t cap = (j->cap + (size_t)n + 1) * 2;
        char *nb = realloc(j->buf, cap);
        if (!nb)
            return;
        j->buf = nb;
        j->cap = cap;
    }
}

static double jnum(double v)
{
    return isfinite(v) ? v : -1.0;
}

/* PATH.tmp, which --json writes before renaming it to PATH; 0 when it does not fit */
static int json_tmp(const char *path, char *tmp, size_t cap)
{
    return snprintf(tmp, cap, "%s.tmp", path) < (int)cap;
}

static int json_write(const char *path, const jbuf_t *j)
{
    char tmp[4096];
    if (!json_tmp(path, tmp, sizeof tmp)) {
        fprintf(stderr, "mxbench: --json path too long\n");
        return -1;
    }
    FILE *f = fopen(tmp, "w");
    if (!f) {
        fprintf(stderr, "mxbench: cannot write %s: %s\n", tmp, strerror(errno));
        return -1;
    }
    int ok = fprintf(f, "[\n%s\n]\n", j->buf ? j->buf : "") > 0;
    ok = (fclose(f) == 0) && ok;
    if (!ok || rename(tmp, path) != 0) {
        fprintf(stderr, "mxbench: cannot write %s: %s\n", path, strerror(errno));
        remove(tmp);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ kernels subcommand */

static double tolerance(mx_scheme_t s)
{
    return (s == MX_SCHEME_W4A8 || s == MX_SCHEME_W8A8) ? 5e-3 : 2e-3;
}

static int cmd_kernels(int argc, char **argv)
{
    opts_t o;
    int pr = parse_opts(argc, argv, &o);
    if (pr == 1) {
        fputs(USAGE, stdout);
        return 0;
    }
    if (pr < 0)
        return 2;
    if (o.json) { /* a path that cannot be written fails now, not after the run */
        char tmp[4096];
        if (mx_output_path_check("--json", o.json) != MX_OK) {
            fprintf(stderr, "mxbench: %s\n", mx_error_detail());
            return 2;
        }
        if (!json_tmp(o.json, tmp, sizeof tmp)) {
            fprintf(stderr, "mxbench: --json: path too long\n");
            return 2;
        }
    }
    const mx_backend_ops_t *ops = mx_backend_find(o.backend);
    if (!ops) {
        fprintf(stderr, "mxbench: --backend '%s': no such backend in this build (registered:", o.backend);
        int n = 0;
        const mx_backend_ops_t *const *reg = mx_backend_registry(&n);
        for (int i = 0; i < n; i++)
            fprintf(stderr, " %s", reg[i]->name);
        fprintf(stderr, ")\n");
        return 2;
    }
    const mx_backend_ops_t *ref = mx_backend_find("ref");
    if (o.threads > 0)
        omp_set_num_threads(o.threads);
    int threads = omp_get_max_threads();

    /* machine peaks, same thread count */
    mx_device_info_t dev;
    if (ops->probe(&dev) != MX_OK) {
        fprintf(stderr, "mxbench: backend %s: no device: %s\n", ops->name, mx_error_detail());
        return 1;
    }
    int width = 1;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        width = 8;
    if ((!strcmp(dev.isa, "avx512") || !strcmp(dev.isa, "amx")) && __builtin_cpu_supports("avx512f"))
        width = 16;
    if (!strcmp(dev.isa, "scalar"))
        width = 1;
#endif
    fprintf(stderr, "mxbench: measuring read bandwidth and FMA peak with %d threads...\n", threads);
    rbuf_t rbuf;
    double rb1 = 0.0, rbn = 0.0;
    double read_bw = measure_read_bw(&rbuf, threads, &rb1, &rbn);
    const size_t rb_bytes = rbuf.n * sizeof(float);
    if (read_bw <= 0.0) {
        fprintf(stderr, "mxbench: out of memory for the %zu MiB read-bandwidth buffer\n", rb_bytes >> 20);
        return 1;
    }
    double fma_peak = measure_fma_peak(threads, width);
    printf("# backend %s on %s, isa %s, %d threads\n", ops->name, dev.name, dev.isa, threads);
    printf("# measured: read bandwidth %.1f GB/s (%zu MiB buffer; 1 stream per thread %.1f, %d streams %.1f), FP32 FMA "
           "peak %.1f GFLOP/s (%d-lane FMA)\n",
           read_bw, rb_bytes >> 20, rb1, RB_STREAMS, rbn, fma_peak, width);
    if (!o.paired) { /* the buffer is read again only for --paired */
        free(rbuf.buf);
        rbuf.buf = NULL;
    }
    if (o.paired)
        printf("# paired: before each timed run a read of one %zu MiB window of that buffer, %d stream%s per thread\n",
               rbuf.win * sizeof(float) >> 20, rbuf.streams, rbuf.streams > 1 ? "s" : "");
    printf("%-14s %-7s %6s %6s %9s %9s %8s %9s %7s %7s %9s", "model", "scheme", "tokens", "active", "ms", "weightMB",
           "GB/s", "GFLOP/s", "bw%", "fma%", "relL2");
    if (o.paired)
        printf(" %8s %7s", "pGB/s", "bw%p");
    printf("\n");

    jbuf_t j = {0};
    int failed = 0;
    for (int mi = 0; mi < o.n_models; mi++) {
        const model_t *md = &MODELS[o.models[mi]];
        for (int si = 0; si < o.n_schemes; si++) {
            mx_scheme_t sc = o.schemes[si];
            mx_moe_desc_t d;
            memset(&d, 0, sizeof d);
            d.scheme = sc;
            d.act = md->act;
            d.order = md->order;
            d.hidden = md->H;
            d.inter = md->I;
            d.swiglu_limit = 7.0f;
            d.swiglu_alpha = 1.702f;
            d.act_group = 0;
            fprintf(stderr, "mxbench: %s %s: making %d random experts...\n", md->name, mx_scheme_name(sc),
                    md->n_experts);
            experts_t ex;
            if (experts_make(md, sc, o.seed, &ex)) {
                fprintf(stderr, "mxbench: out of memory making experts\n");
                experts_free(&ex);
                free(j.buf);
                free(rbuf.buf);
                return 1;
            }
            be_t b, rb;
            memset(&rb, 0, sizeof rb);
            if (be_open(ops, &d, &ex, md->n_experts, &b)) {
                experts_free(&ex);
                failed = 1;
                continue;
            }
            int have_ref =
                ref && ref != ops && (o.check || o.ref_peer_max > 0) && be_open(ref, &d, &ex, md->n_experts, &rb) == 0;
            experts_free(&ex); /* backends copied what they need */
            /* canonical weight bytes per expert (weights + scales): what a batch must read */
            size_t H = md->H, I = md->I, per_expert;
            if (sc == MX_SCHEME_W4A16 || sc == MX_SCHEME_W4A8)
                per_expert = 3 * H * I / 2 + 3 * H * I / 32;
            else if (sc == MX_SCHEME_W16A16)
                per_expert = 3 * H * I * 2;
            else
                per_expert =
                    3 * H * I +
                    (((2 * I + 127) / 128) * ((H + 127) / 128) + ((H + 127) / 128) * ((I + 127) / 128)) * sizeof(float);
            for (int ti = 0; ti < o.n_tokens; ti++) {
                size_t T = o.tokens[ti];
                batch_t bts[64], bt;
                int nb = 0, bad = 0;
                double active_sum = 0.0;
                for (; nb < o.rotate && !bad; nb++) {
                    memset(&bts[nb], 0, sizeof bts[nb]);
                    bad = batch_make(md, T, o.seed + (uint64_t)nb, &bts[nb]) != 0;
                    active_sum += bts[nb].active;
                }
                if (bad) {
                    fprintf(stderr, "mxbench: out of memory for %zu tokens\n", T);
                    failed = 1;
                    for (int k = 0; k < nb; k++)
                        batch_free(&bts[k]);
                    continue;
                }
                bt = bts[0];
                size_t wsz = ops->workspace_size(b.packed, T, bt.n_assign);
                void *ws = malloc(wsz ? wsz : 1);
                uint16_t *out = malloc(bt.n_assign * md->H * sizeof *out);
                if (!ws || !out) {
                    fprintf(stderr, "mxbench: out of memory (%zu-byte workspace)\n", wsz);
                    free(ws);
                    free(out);
                    for (int k = 0; k < nb; k++)
                        batch_free(&bts[k]);
                    failed = 1;
                    continue;
                }
                /* check the first two tokens against ref */
                double err = -1.0;
                if (o.check && have_ref) {
                    size_t nt = T < 2 ? T : 2, na = nt * (size_t)md->top_k;
                    uint16_t *ro = malloc(na * md->H * sizeof *ro);
                    void *rws = malloc(ref->workspace_size(rb.packed, nt, na) + 1);
                    for (size_t i = 0; i < bt.n_assign * md->H; i++)
                        out[i] = 0x7FA5;
                    if (ro && rws && be_run(&b, &bt, T, bt.n_assign, out, ws, threads) == MX_OK &&
                        be_run(&rb, &bt, nt, na, ro, rws, 1) == MX_OK) {
                        err = rel_l2(out, ro, na * md->H);
                        if (!(err <= tolerance(sc))) {
                            fprintf(stderr, "mxbench: CHECK FAILED %s %s T=%zu: rel L2 %.3e vs ref > %.0e\n", md->name,
                                    mx_scheme_name(sc), T, err, tolerance(sc));
                            failed = 1;
                        }
                    } else {
                        fprintf(stderr, "mxbench: check run failed: %s\n", mx_error_detail());
                        failed = 1;
                    }
                    free(ro);
                    free(rws);
                }
                fprintf(stderr, "mxbench: %s %s T=%zu: timing %s...\n", md->name, mx_scheme_name(sc), T, ops->name);
                paired_t pr = {.rb = &rbuf, .per_expert = per_expert};
                double ms = time_runs(&b, bts, nb, out, ws, threads, o.iters, o.paired ? &pr : NULL);
                if (ms < 0) {
                    fprintf(stderr, "mxbench: %s run failed: %s\n", ops->name, mx_error_detail());
                    failed = 1;
                }
                double bytes = (double)per_expert * active_sum / nb;
                double flops = 2.0 * (double)bt.n_assign * 3.0 * (double)md->H * (double)md->I;
                double gbps = bytes / (ms * 1e-3) / 1e9, gflops = flops / (ms * 1e-3) / 1e9;
                printf("%-14s %-7s %6zu %6d %9.3f %9.1f %8.2f %9.2f %7.2f %7.2f %9.2e", md->name, mx_scheme_name(sc), T,
                       (int)(active_sum / nb + 0.5), ms, bytes / 1e6, gbps, gflops, gbps / read_bw, gflops / fma_peak,
                       err);
                if (o.paired)
                    printf(" %8.2f %7.2f", pr.bw, pr.ratio);
                printf("\n");
                fflush(stdout);
                jprintf(&j,
                        "%s  {\"model\": \"%s\", \"backend\": \"%s\", \"isa\": \"%s\", \"scheme\": \"%s\", "
                        "\"tokens\": %zu, \"top_k\": %d, \"active_experts\": %d, \"threads\": %d, \"ms\": %.6g, "
                        "\"weight_bytes\": %.0f, \"gbps\": %.6g, \"gflops\": %.6g, \"read_bw_gbps\": %.6g, "
                        "\"fma_peak_gflops\": %.6g, \"read_bw_ratio\": %.4g, \"fma_peak_ratio\": %.4g, "
                        "\"rel_l2_vs_ref\": %.4g, \"peer\": false",
                        j.n++ ? ",\n" : "", md->name, ops->name, dev.isa, mx_scheme_name(sc), T, md->top_k, bt.active,
                        threads, jnum(ms), bytes, jnum(gbps), jnum(gflops), read_bw, fma_peak, jnum(gbps / read_bw),
                        jnum(gflops / fma_peak), err);
                if (o.paired)
                    jprintf(&j, ", \"read_bw_paired_gbps\": %.6g, \"read_bw_ratio_paired\": %.4g", jnum(pr.bw),
                            jnum(pr.ratio));
                jprintf(&j, "}");
                /* the ref backend as a peer, small T only */
                if (have_ref && (int)T <= o.ref_peer_max) {
                    size_t rwsz = ref->workspace_size(rb.packed, T, bt.n_assign);
                    void *rws = malloc(rwsz ? rwsz : 1);
                    if (rws) {
                        fprintf(stderr, "mxbench: %s %s T=%zu: timing ref (peer)...\n", md->name, mx_scheme_name(sc),
                                T);
                        double rms = time_runs(&rb, &bt, 1, out, rws, 1, o.iters < 3 ? o.iters : 3, NULL);
                        double rg = bytes / (rms * 1e-3) / 1e9, rf = flops / (rms * 1e-3) / 1e9;
                        printf("%-14s %-7s %6zu %6d %9.3f %9.1f %8.2f %9.2f %7.2f %7.2f %9s  (ref peer)\n", md->name,
                               mx_scheme_name(sc), T, bt.active, rms, bytes / 1e6, rg, rf, rg / read_bw, rf / fma_peak,
                               "-");
                        jprintf(&j,
                                ",\n  {\"model\": \"%s\", \"backend\": \"ref\", \"isa\": \"scalar\", \"scheme\": "
                                "\"%s\", \"tokens\": %zu, \"top_k\": %d, \"active_experts\": %d, \"threads\": 1, "
                                "\"ms\": %.6g, \"weight_bytes\": %.0f, \"gbps\": %.6g, \"gflops\": %.6g, "
                                "\"read_bw_gbps\": %.6g, \"fma_peak_gflops\": %.6g, \"read_bw_ratio\": %.4g, "
                                "\"fma_peak_ratio\": %.4g, \"peer\": true}",
                                md->name, mx_scheme_name(sc), T, md->top_k, bt.active, jnum(rms), bytes, jnum(rg),
                                jnum(rf), read_bw, fma_peak, jnum(rg / read_bw), jnum(rf / fma_peak));
                        free(rws);
                    }
                }
                free(ws);
                free(out);
                for (int k = 0; k < nb; k++)
                    batch_free(&bts[k]);
            }
            be_close(&b);
            if (have_ref)
                be_close(&rb);
        }
    }
    if (o.json && json_write(o.json, &j))
        failed = 1;
    free(j.buf);
    free(rbuf.buf);
    return failed ? 1 : 0;
}

int main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        fputs("usage: mxbench SUBCOMMAND [options]\n\nSubcommands:\n"
              "  kernels   time a kernel backend on MoE expert shapes (mxbench kernels --help)\n",
              argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "kernels"))
        return cmd_kernels(argc - 2, argv + 2);
    fprintf(stderr, "mxbench: unknown subcommand '%s' (expected: kernels)\n", argv[1]);
    return 2;
}
