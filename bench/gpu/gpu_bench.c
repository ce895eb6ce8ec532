/* mxgpu_bench: the `cuda` backend on one MoE layer (gpt-oss-20b shapes by
 * default), with the limits measured in the same run: HBM bandwidth by a large
 * device-to-device copy and the dense BF16 tensor-core rate by cublasGemmEx.
 * Checks the output against the CPU reference before timing. */
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <errno.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_internal.h"
#include "gpu_layout.h"
#include "gpu_ref.h"
#include "mxep/kernels.h"
#include "../bench_time.h"

static const char *USAGE =
    "usage: mxgpu_bench [options]\n"
    "  Times the cuda backend on one MoE layer and measures, in the same run, the HBM\n"
    "  bandwidth (device-to-device copy) and the BF16 dense tensor-core rate (cuBLAS).\n"
    "  --tokens LIST   comma-separated token counts (default 1,8,64,512,2048,8192)\n"
    "  --experts N     local experts (default 32)     --top-k K   (default 4)\n"
    "  --hidden H      (default 2880)                 --inter I   (default 2880)\n"
    "  --scheme S      W4A16|W4A8|W8A16|W8A8|W16A16 (default W4A16)\n"
    "  --iters N       timed runs per point (default 50; median reported)\n"
    "  --seed S        (default 1)\n"
    "  --json PATH     also write the results as JSON to PATH\n"
    "  --probe         instead of the layer: read the MXFP4 weight bytes of GEMM1 and GEMM2\n"
    "                  (top-k and all experts) with the decode kernel's grid and nothing\n"
    "                  else, in the packed layout and with each row group contiguous,\n"
    "                  ring depth 6 and 12; GB/s and % of the HBM copy\n"
    "  --copies N      packed copies of the layer's weights for rot_ms (default 4; 1: no rot_ms)\n"
    "  --trace         also, per token count, the timeline of the layer's kernels in cold\n"
    "                  layers (see cold_ms below): when their first and last CTAs started,\n"
    "                  found their input ready (past griddepcontrol.wait) and ended, in us\n"
    "                  from the first start\n"
    "                  (median of 9 traced layers; %globaltimer), and where they ran:\n"
    "                  CTAs, SMs used, most CTAs on one SM (%smid)\n"
    "  --help          this text\n"
    "Columns: layer_ms, one layer's kernels between two events, the host waiting after each;\n"
    "pipe_ms, per layer of 10 enqueued back to back; rot_ms, the same with the layers taking\n"
    "the --copies copies of the weights in turn (with 4, a layer reads weights last read 4\n"
    "layers before: as in a model, none are left in L2); cold_ms, one layer with the L2 flushed\n"
    "before it (a read of twice its size; then the batch's uploads again) and its launches\n"
    "queued ahead behind a host gate, so that neither the host's launch calls nor weights\n"
    "left in L2 count. The %HBM columns: weight bytes per time against the HBM copy of the\n"
    "same run.\n"
    "Exit status: 0 ok, 1 a check against the reference failed or a CUDA error, 2 bad usage or no device.\n";

typedef struct {
    size_t T;
    double layer_ms, run_ms, pipe_ms, cold_ms, rot_ms, err, bytes, flops;
    int n_active, cfg;
} point_t;

static double now_ms(void)
{
    return 1e3 * bench_now_s();
}

#define CU(call)                                                                                                       \
    do {                                                                                                               \
        cudaError_t e_ = (call);                                                                                       \
        if (e_ != cudaSuccess) {                                                                                       \
            fprintf(stderr, "mxgpu_bench: %s: %s\n", #call, cudaGetErrorString(e_));                                   \
            exit(1);                                                                                                   \
        }                                                                                                              \
    } while (0)

static double hbm_gbps(int iters)
{
    size_t bytes = (size_t)2 << 30;
    void *a, *b;
    CU(cudaMalloc(&a, bytes));
    CU(cudaMalloc(&b, bytes));
    CU(cudaMemset(a, 1, bytes));
    cudaEvent_t e0, e1;
    CU(cudaEventCreate(&e0));
    CU(cudaEventCreate(&e1));
    double *t = malloc(sizeof(double) * (size_t)iters);
    for (int i = 0; i < 3; i++)
        CU(cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice));
    for (int i = 0; i < iters; i++) {
        CU(cudaEventRecord(e0, 0));
        CU(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, 0));
        CU(cudaEventRecord(e1, 0));
        CU(cudaEventSynchronize(e1));
        float ms;
        CU(cudaEventElapsedTime(&ms, e0, e1));
        t[i] = ms;
    }
    double ms = bench_median(t, iters);
    free(t);
    cudaFree(a);
    cudaFree(b);
    return 2.0 * (double)bytes / (ms * 1e-3) / 1e9; /* read + write */
}

static double cublas_tflops(int iters)
{
    const int n = 8192;
    void *A, *B, *C;
    size_t bytes = (size_t)n * n * 2;
    CU(cudaMalloc(&A, bytes));
    CU(cudaMalloc(&B, bytes));
    CU(cudaMalloc(&C, bytes));
    CU(cudaMemset(A, 0x3c, bytes));
    CU(cudaMemset(B, 0x3c, bytes));
    cublasHandle_t h;
    if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) {
        fprintf(stderr, "mxgpu_bench: cublasCreate failed\n");
        exit(1);
    }
    float alpha = 1.0f, beta = 0.0f;
    cudaEvent_t e0, e1;
    CU(cudaEventCreate(&e0));
    CU(cudaEventCreate(&e1));
    double *t = malloc(sizeof(double) * (size_t)iters);
    for (int i = 0; i < iters + 3; i++) {
        CU(cudaEventRecord(e0, 0));
        cublasStatus_t s = cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, n, n, n, &alpha, A, CUDA_R_16BF, n, B, CUDA_R_16BF,
                                        n, &beta, C, CUDA_R_16BF, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
        CU(cudaEventRecord(e1, 0));
        CU(cudaEventSynchronize(e1));
        if (s != CUBLAS_STATUS_SUCCESS) {
            fprintf(stderr, "mxgpu_bench: cublasGemmEx failed (%d)\n", (int)s);
            exit(1);
        }
        float ms;
        CU(cudaEventElapsedTime(&ms, e0, e1));
        if (i >= 3)
            t[i - 3] = ms;
    }
    double ms = bench_median(t, iters);
    free(t);
    cublasDestroy(h);
    cudaFree(A);
    cudaFree(B);
    cudaFree(C);
    return 2.0 * n * (double)n * n / (ms * 1e-3) / 1e12;
}

static size_t matrix_bytes(const mx_matrix_t *m)
{
    if (m->fmt == MX_WFMT_MXFP4)
        return m->rows * m->cols / 2 + m->rows * m->cols / 32;
    if (m->fmt == MX_WFMT_FP8)
        return m->rows * m->cols;
    return m->rows * m->cols * 2;
}

/* --probe: the decode kernel's reads alone (mxi_gpu_read_probe) on GEMM1's and GEMM2's
 * MXFP4 shapes, for the top-k experts of one token and for all experts. */
static int read_probes(int E, int K, size_t H, size_t I, int iters, double bw)
{
    static const char *const names[4] = {"packed, ring 6", "packed, ring 12", "contiguous, ring 6",
                                         "contiguous, ring 12"};
    const struct {
        const char *gemm;
        size_t N, Kd;
    } shapes[2] = {{"GEMM1", 2 * I, H}, {"GEMM2", H, I}};
    /* one expert matrix: NG 16-row groups x KC chunks of 512 bytes */
    int NG[2], KC[2];
    size_t most = 0;
    for (int s = 0; s < 2; s++) {
        NG[s] = (int)(mxg_round_up(shapes[s].N, MXG_NPAD) / 16);
        KC[s] = (int)(mxg_round_up(shapes[s].Kd, MXG_BK) / MXG_BK);
        const size_t b = (size_t)NG[s] * (size_t)KC[s] * 512;
        most = b > most ? b : most;
    }
    void *w;
    uint32_t *out;
    CU(cudaMalloc(&w, most * (size_t)E));
    CU(cudaMemset(w, 0x5a, most * (size_t)E));
    CU(cudaMalloc((void **)&out, (most / 512 + 32) * (size_t)E * 4));
    cudaEvent_t e0, e1;
    cudaStream_t st;
    CU(cudaEventCreate(&e0));
    CU(cudaEventCreate(&e1));
    CU(cudaStreamCreate(&st));
    double *t = malloc(sizeof(double) * (size_t)iters);
    printf("probe: the decode kernel's weight reads alone (MXFP4 pieces, no scales, no math)\n");
    printf("%-6s %7s  %-20s %10s %9s %8s\n", "gemm", "experts", "layout", "ms", "GB/s", "%HBM");
    for (int s = 0; s < 2; s++)
        for (int ne = 0; ne < 2; ne++) {
            const int n_ex = ne ? E : K;
            const size_t eb = (size_t)NG[s] * (size_t)KC[s] * 512;
            const double bytes = (double)eb * n_ex;
            for (int v = 0; v < 4; v++) {
                for (int i = 0; i < iters + 3; i++) {
                    CU(cudaEventRecord(e0, st));
                    int rc = mxi_gpu_read_probe(w, eb, n_ex, NG[s], KC[s], v, out, st);
                    CU(cudaEventRecord(e1, st));
                    CU(cudaEventSynchronize(e1));
                    if (rc != 0) {
                        fprintf(stderr, "mxgpu_bench: read probe launch: %s\n", cudaGetErrorString((cudaError_t)rc));
                        return 1;
                    }
                    float ms;
                    CU(cudaEventElapsedTime(&ms, e0, e1));
                    if (i >= 3)
                        t[i - 3] = ms;
                }
                const double ms = bench_median(t, iters), gbps = bytes / (ms * 1e-3) / 1e9;
                printf("%-6s %7d  %-20s %10.4f %9.0f %7.1f%%\n", shapes[s].gemm, n_ex, names[v], ms, gbps,
                       100.0 * gbps / bw);
            }
        }
    free(t);
    cudaStreamDestroy(st);
    cudaFree(w);
    cudaFree(out);
    return 0;
}

/* Cold layers (cold_ms, --trace): the L2 is flushed before each (a read of
 * twice its size, which leaves clean lines of another buffer: a model's next
 * layer finds none of its weights there), the batch is staged again after the
 * flush (its token rows and plan are fresh uploads in a model's run too), and
 * the layer's launches are queued behind a gate, a host function that holds
 * the stream until they all are, so that neither the host's launch calls nor
 * weights left in L2 by the layer before count in the time between the events. */
typedef struct {
    void *buf;
    size_t bytes;
    uint32_t *sink;
    atomic_int open;
} cold_t;

static void CUDART_CB gate_fn(void *arg)
{
    cold_t *c = arg;
    const double t0 = now_ms();
    while (!atomic_load(&c->open) && now_ms() - t0 < 10000.0) /* never longer than 10 s */
        ;
}

static int cold_init(cold_t *c, int device)
{
    int l2 = 0;
    CU(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, device));
    c->bytes = (size_t)(l2 > 0 ? l2 : 64 << 20) * 2;
    c->bytes = (c->bytes + 15) & ~(size_t)15;
    CU(cudaMalloc(&c->buf, c->bytes));
    CU(cudaMalloc((void **)&c->sink, 4));
    CU(cudaMemset(c->buf, 0x5a, c->bytes)); /* the XOR of its words is 0 */
    CU(cudaDeviceSynchronize());
    atomic_init(&c->open, 0);
    return 0;
}

/* One cold layer of the batch a: the flush, the batch's uploads, the gate,
 * then the layer between events e0 and e1; the gate opens once all are
 * enqueued. *ms: the events' time. 0, or 1 after printing the error. */
static int cold_layer(cold_t *c, cudaStream_t st, mx_backend_packed_t *pk, const mx_run_args_t *a, cudaEvent_t e0,
                      cudaEvent_t e1, float *ms)
{
    int rc = mxi_gpu_l2_flush(c->buf, c->bytes, 1u, c->sink, st);
    if (rc != 0) {
        fprintf(stderr, "mxgpu_bench: L2 flush launch: %s\n", cudaGetErrorString((cudaError_t)rc));
        return 1;
    }
    if (mxi_cuda_stage(pk, a) != MX_OK) {
        fprintf(stderr, "mxgpu_bench: stage: %s\n", mx_error_detail());
        return 1;
    }
    atomic_store(&c->open, 0);
    CU(cudaLaunchHostFunc(st, gate_fn, c));
    CU(cudaEventRecord(e0, st));
    mx_status_t ls = mxi_cuda_layer(pk);
    CU(cudaEventRecord(e1, st));
    atomic_store(&c->open, 1);
    CU(cudaEventSynchronize(e1));
    if (ls != MX_OK) {
        fprintf(stderr, "mxgpu_bench: layer: %s\n", mx_error_detail());
        return 1;
    }
    CU(cudaEventElapsedTime(ms, e0, e1));
    return 0;
}

/* --trace: TRACE_N single layers with the kernels' notes on (mxi_gpu_trace), the
 * device idle before each; per kernel the median of each note, in us from the
 * layer's first CTA start, and the events' time of the same layers. */
static int print_trace(cudaStream_t st, mx_backend_packed_t *pk, const mx_run_args_t *a, size_t T, cudaEvent_t e0,
                       cudaEvent_t e1, cold_t *cold)
{
    enum { TRACE_N = 9 };
    static const char *const names[MXG_TR_SLOTS] = {"GEMM1 input (quantize/copy)", "GEMM1", "GEMM2 input (quantize)",
                                                    "GEMM2", "combine"};
    unsigned long long n[TRACE_N][MXG_TR_SLOTS][6];
    static unsigned sm[TRACE_N][MXG_TR_SLOTS][MXG_TR_MAXSM];
    double ev[TRACE_N];
    for (int r = 0; r < TRACE_N; r++) {
        CU(cudaStreamSynchronize(st));
        float ms = 0.0f;
        int rc = mxi_gpu_trace(1, NULL, NULL);
        if (rc == 0) {
            if (cold_layer(cold, st, pk, a, e0, e1, &ms))
                return 1;
            rc = mxi_gpu_trace(0, &n[r][0][0], &sm[r][0][0]);
        }
        if (rc != 0) {
            fprintf(stderr, "mxgpu_bench: trace: %s\n", cudaGetErrorString((cudaError_t)rc));
            return 1;
        }
        ev[r] = ms * 1e3;
    }
    printf("trace T=%zu: us from the first CTA start, median of %d cold layers (events: %.1f us per layer)\n", T,
           TRACE_N, bench_median(ev, TRACE_N));
    printf("  %-28s %8s %8s %8s %8s %8s %8s %5s %5s %5s\n", "kernel", "start0", "start1", "ready0", "ready1", "end0",
           "end1", "CTAs", "SMs", "max");
    for (int s = 0; s < MXG_TR_SLOTS; s++) {
        if (n[0][s][0] == ~0ull)
            continue; /* not in this layer */
        double v[6];
        for (int i = 0; i < 6; i++) {
            double x[TRACE_N];
            for (int r = 0; r < TRACE_N; r++) {
                unsigned long long t0 = ~0ull;
                for (int q = 0; q < MXG_TR_SLOTS; q++)
                    t0 = n[r][q][0] < t0 ? n[r][q][0] : t0;
                x[r] = n[r][s][i] >= t0 && n[r][s][i] != ~0ull ? (double)(n[r][s][i] - t0) / 1e3 : -1.0;
            }
            v[i] = bench_median(x, TRACE_N);
        }
        /* where the CTAs ran, in the median layer by SMs used: CTAs, SMs with any, most on one SM */
        double used[TRACE_N], sorted[TRACE_N];
        unsigned ctas[TRACE_N] = {0}, most[TRACE_N] = {0};
        for (int r = 0; r < TRACE_N; r++) {
            used[r] = 0;
            for (int k = 0; k < MXG_TR_MAXSM; k++) {
                used[r] += sm[r][s][k] > 0;
                ctas[r] += sm[r][s][k];
                most[r] = sm[r][s][k] > most[r] ? sm[r][s][k] : most[r];
            }
            sorted[r] = used[r];
        }
        const double mu = bench_median(sorted, TRACE_N); /* TRACE_N is odd: one of the layers */
        int rm = 0;
        while (used[rm] != mu)
            rm++;
        printf("  %-28s %8.1f %8.1f %8.1f %8.1f %8.1f %8.1f %5u %5.0f %5u\n", names[s], v[0], v[1], v[2], v[3], v[4],
               v[5], ctas[rm], mu, most[rm]);
    }
    return 0;
}

/* A whole decimal integer in [lo, hi] for option `opt`, else 0 after the message. */
static int num_arg(const char *opt, const char *v, long long lo, long long hi, long long *out)
{
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || end == v || *end || x < lo || x > hi) {
        fprintf(stderr, "mxgpu_bench: %s '%s': expected an integer %lld..%lld\n", opt, v, lo, hi);
        return 0;
    }
    *out = x;
    return 1;
}

int main(int argc, char **argv)
{
    size_t tokens[32] = {1, 8, 64, 512, 2048, 8192};
    int n_tok = 6, E = 32, K = 4, iters = 50, copies = 4;
    size_t H = 2880, I = 2880;
    uint64_t seed = 1;
    const char *json = NULL;
    /* line by line, so that a log of stdout and stderr together keeps their order
     * (an error after the device and limits lines reads after them) */
    setvbuf(stdout, NULL, _IOLBF, 0);
    int probe = 0, trace = 0;
    mx_scheme_t scheme = MX_SCHEME_W4A16;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(USAGE, stdout);
            return 0;
        }
        if (!strcmp(a, "--probe")) {
            probe = 1;
            continue;
        }
        if (!strcmp(a, "--trace")) {
            trace = 1;
            continue;
        }
        if (!v) {
            fprintf(stderr, "mxgpu_bench: %s: unknown option or missing value\n%s", a, USAGE);
            return 2;
        }
        i++;
        long long x = 0;
        if (!strcmp(a, "--tokens")) {
            n_tok = 0;
            for (const char *s = v;;) {
                char *end;
                errno = 0;
                long t = strtol(s, &end, 10);
                if (errno || end == s || t <= 0 || t > (1L << 20) || (*end && *end != ',') || n_tok == 32) {
                    fprintf(stderr,
                            "mxgpu_bench: --tokens %s: expected at most 32 integers 1..%ld separated by commas\n", v,
                            1L << 20);
                    return 2;
                }
                tokens[n_tok++] = (size_t)t;
                if (!*end)
                    break;
                s = end + 1;
            }
        } else if (!strcmp(a, "--experts")) {
            if (!num_arg(a, v, 1, 1 << 16, &x))
                return 2;
            E = (int)x;
        } else if (!strcmp(a, "--top-k")) {
            if (!num_arg(a, v, 1, 1 << 10, &x))
                return 2;
            K = (int)x;
        } else if (!strcmp(a, "--iters")) {
            if (!num_arg(a, v, 1, 100000, &x))
                return 2;
            iters = (int)x;
        } else if (!strcmp(a, "--copies")) {
            if (!num_arg(a, v, 1, 16, &x))
                return 2;
            copies = (int)x;
        } else if (!strcmp(a, "--hidden") || !strcmp(a, "--inter")) {
            if (!num_arg(a, v, 32, 1 << 20, &x))
                return 2;
            if (!strcmp(a, "--hidden"))
                H = (size_t)x;
            else
                I = (size_t)x;
        } else if (!strcmp(a, "--seed")) {
            if (!num_arg(a, v, 0, 1LL << 62, &x))
                return 2;
            seed = (uint64_t)x;
        } else if (!strcmp(a, "--json"))
            json = v;
        else if (!strcmp(a, "--scheme")) {
            if (mx_scheme_parse(v, &scheme) != MX_OK) {
                fprintf(stderr, "mxgpu_bench: --scheme %s: %s\n", v, mx_error_detail());
                return 2;
            }
        } else {
            fprintf(stderr, "mxgpu_bench: %s: unknown option\n%s", a, USAGE);
            return 2;
        }
    }
    if (K > E) {
        fprintf(stderr, "mxgpu_bench: --top-k %d is more than --experts %d\n", K, E);
        return 2;
    }
    mx_device_info_t dev;
    if (mx_backend_cuda.probe(&dev) != MX_OK) {
        fprintf(stderr, "mxgpu_bench: %s\n", mx_error_detail());
        return 2;
    }
    printf("device: %s (%s, %d SMs, %.1f GiB)\n", dev.name, dev.isa, dev.cores, dev.memory / 1073741824.0);
    double bw = hbm_gbps(20);
    if (probe) { /* reads only: the copy is its limit, no cuBLAS run */
        printf("limits: HBM copy %.0f GB/s (read+write)\n", bw);
        return read_probes(E, K, H, I, iters, bw);
    }
    double tf = cublas_tflops(20);
    printf("limits: HBM copy %.0f GB/s (read+write), cuBLAS BF16 %dx%dx%d %.0f TFLOP/s\n", bw, 8192, 8192, 8192, tf);

    mx_moe_desc_t d;
    memset(&d, 0, sizeof d);
    d.scheme = scheme;
    d.act = MX_ACT_SWIGLU_OAI;
    d.order = MX_GATEUP_INTERLEAVED;
    d.hidden = H;
    d.inter = I;
    d.swiglu_limit = 7.0f;
    d.swiglu_alpha = 1.702f;
    char why[MX_REASON_MAX];
    if (!mx_backend_cuda.supports(&dev, &d, why, sizeof why)) {
        fprintf(stderr, "mxgpu_bench: cuda declines the layer: %s\n", why);
        return 2;
    }
    double t0 = now_ms();
    gref_experts_t g;
    if (gref_experts_make(&d, E, MX_WSCALE_BLOCK, 1, seed, &g)) {
        fprintf(stderr, "mxgpu_bench: out of host memory building %d experts\n", E);
        return 1;
    }
    size_t expert_bytes = matrix_bytes(&g.ex[0].gate_up) + matrix_bytes(&g.ex[0].down);
    mx_backend_packed_t *pk = NULL;
    if (mx_backend_cuda.prepack(&dev, &d, g.ex, E, &pk) != MX_OK) {
        fprintf(stderr, "mxgpu_bench: prepack: %s\n", mx_error_detail());
        return 1;
    }
    printf("layer: %s swiglu_oai E=%d H=%zu I=%zu top-%d, %.1f MB of weights per expert; build+prepack %.1f s; "
           "MMA %s%s (MXEP_CUDA_MMA=sync picks mma.sync), dependent launches %s\n",
           mx_scheme_name(scheme), E, H, I, K, expert_bytes / 1e6, (now_ms() - t0) / 1e3,
           mxi_cuda_mma(pk) == 1 ? "wgmma" : "mma.sync",
           mxi_cuda_fp8_mma(pk) ? " on the FP8 tensor cores (MXEP_CUDA_FP8MMA=0: BF16)" : "",
           getenv("MXEP_CUDA_PDL") && !strcmp(getenv("MXEP_CUDA_PDL"), "0") ? "off" : "on where sm_90");

    point_t pts[32];
    int bad = 0;
    cudaEvent_t e0, e1;
    CU(cudaEventCreate(&e0));
    CU(cudaEventCreate(&e1));
    cudaStream_t st = (cudaStream_t)mxi_cuda_stream(pk);
    /* rot_ms: the other copies of the layer enqueue on pk's stream */
    mx_backend_packed_t *cp[16] = {pk};
    for (int c = 1; c < copies; c++)
        if (mx_backend_cuda.prepack(&dev, &d, g.ex, E, &cp[c]) != MX_OK || mxi_cuda_share_stream(cp[c], pk) != MX_OK) {
            fprintf(stderr, "mxgpu_bench: copy %d of the weights (--copies): %s\n", c, mx_error_detail());
            return 1;
        }
    static cold_t cold;
    if (cold_init(&cold, dev.device_index))
        return 1;
    double tol = (scheme == MX_SCHEME_W4A8 || scheme == MX_SCHEME_W8A8) ? 5e-3 : 2e-3;
    for (int ti = 0; ti < n_tok; ti++) {
        size_t T = tokens[ti], NA = T * (size_t)K;
        gref_rng_t r = {seed * 7919 + T};
        uint16_t *x = malloc(T * H * 2), *out = malloc(NA * H * 2);
        int32_t *tok = malloc(NA * 4), *ex = malloc(NA * 4);
        float *w = malloc(NA * 4);
        int *used = calloc((size_t)E, sizeof(int));
        if (!x || !out || !tok || !ex || !w || !used) {
            fprintf(stderr, "mxgpu_bench: out of host memory for T=%zu\n", T);
            return 1;
        }
        for (size_t i = 0; i < T * H; i++)
            x[i] = gref_f2bf(gref_uniform(&r));
        for (size_t t = 0; t < T; t++)
            for (int k = 0; k < K; k++) {
                int e, dup;
                do {
                    e = (int)(gref_next(&r) % (uint64_t)E);
                    dup = 0;
                    for (int j = 0; j < k; j++)
                        dup |= ex[t * K + j] == e;
                } while (dup);
                tok[t * K + k] = (int32_t)t;
                ex[t * K + k] = e;
                w[t * K + k] = 1.0f / K;
                used[e] = 1;
            }
        int n_active = 0;
        for (int e = 0; e < E; e++)
            n_active += used[e];
        mx_run_args_t a;
        memset(&a, 0, sizeof a);
        a.n_tokens = T;
        a.x = x;
        a.n_assign = NA;
        a.tok = tok;
        a.expert = ex;
        a.weight = w;
        a.mode = MX_OUT_PER_ASSIGNMENT;
        a.out_bf16 = out;
        memset(out, 0xff, NA * H * 2);
        if (mx_backend_cuda.run(pk, &a, NULL) != MX_OK) {
            fprintf(stderr, "mxgpu_bench: run T=%zu: %s\n", T, mx_error_detail());
            return 1;
        }
        /* check the first assignments (and the last) against the CPU reference */
        size_t nchk = NA < 4 ? NA : 4;
        int32_t ctok[5], cex[5];
        uint16_t *ref = malloc(5 * H * 2), *got = malloc(5 * H * 2);
        for (size_t i = 0; i < nchk; i++) {
            ctok[i] = tok[i];
            cex[i] = ex[i];
            memcpy(got + i * H, out + i * H, H * 2);
        }
        if (NA > nchk) {
            ctok[nchk] = tok[NA - 1];
            cex[nchk] = ex[NA - 1];
            memcpy(got + nchk * H, out + (NA - 1) * H, H * 2);
            nchk++;
        }
        mx_run_args_t ra = a;
        ra.n_assign = nchk;
        ra.tok = ctok;
        ra.expert = cex;
        ra.out_bf16 = ref;
        gref_run(&d, g.ex, &ra);
        double err = gref_rel_l2_bf16(got, ref, nchk * H);
        free(ref);
        free(got);
        if (!(err <= tol))
            bad = 1;

        /* timing: the layer's kernels alone (CUDA events), and the whole run() with its copies */
        if (mxi_cuda_stage(pk, &a) != MX_OK) {
            fprintf(stderr, "mxgpu_bench: stage T=%zu: %s\n", T, mx_error_detail());
            return 1;
        }
        for (int i = 0; i < 5; i++)
            if (mxi_cuda_layer(pk) != MX_OK) {
                fprintf(stderr, "mxgpu_bench: layer: %s\n", mx_error_detail());
                return 1;
            }
        /* one layer between two events, the host waiting after each (tl);
         * PIPE layers enqueued back to back with no host wait between them, as
         * a model's layers are, so the GPU never idles for the launches (tp);
         * the same over the weight copies in turn, none left in L2 (tq) */
        enum { PIPE = 10 };
        double *tl = malloc(sizeof(double) * (size_t)iters), *tp = malloc(sizeof(double) * (size_t)iters);
        double *tc = malloc(sizeof(double) * (size_t)iters), *tq = malloc(sizeof(double) * (size_t)iters);
        for (int c = 1; c < copies; c++)
            if (mxi_cuda_stage(cp[c], &a) != MX_OK) {
                fprintf(stderr, "mxgpu_bench: stage copy %d T=%zu: %s\n", c, T, mx_error_detail());
                return 1;
            }
        for (int pass = 0; pass < (copies > 1 ? 3 : 2); pass++) {
            const int n_layers = pass ? PIPE : 1;
            for (int i = 0; i < iters; i++) {
                CU(cudaEventRecord(e0, st));
                for (int k = 0; k < n_layers; k++)
                    if (mxi_cuda_layer(cp[pass == 2 ? k % copies : 0]) != MX_OK) {
                        fprintf(stderr, "mxgpu_bench: layer: %s\n", mx_error_detail());
                        return 1;
                    }
                CU(cudaEventRecord(e1, st));
                CU(cudaEventSynchronize(e1));
                float ms;
                CU(cudaEventElapsedTime(&ms, e0, e1));
                (pass == 0 ? tl : pass == 1 ? tp : tq)[i] = ms / n_layers;
            }
        }
        for (int i = 0; i < iters; i++) { /* cold layers */
            float ms;
            if (cold_layer(&cold, st, pk, &a, e0, e1, &ms))
                return 1;
            tc[i] = ms;
        }
        if (trace && print_trace(st, pk, &a, T, e0, e1, &cold))
            return 1;
        int nrun = iters < 20 ? iters : 20;
        double *tr = malloc(sizeof(double) * (size_t)nrun);
        for (int i = 0; i < nrun; i++) {
            double s0 = now_ms();
            if (mx_backend_cuda.run(pk, &a, NULL) != MX_OK) {
                fprintf(stderr, "mxgpu_bench: run T=%zu: %s\n", T, mx_error_detail());
                return 1;
            }
            tr[i] = now_ms() - s0;
        }
        point_t *p = &pts[ti];
        p->T = T;
        p->layer_ms = bench_median(tl, iters);
        p->run_ms = bench_median(tr, nrun);
        p->pipe_ms = bench_median(tp, iters);
        p->cold_ms = bench_median(tc, iters);
        p->rot_ms = copies > 1 ? bench_median(tq, iters) : -1.0;
        free(tq);
        free(tp);
        free(tc);
        p->err = err;
        p->n_active = n_active;
        p->bytes = (double)n_active * (double)expert_bytes;
        p->flops = 2.0 * (double)NA * (3.0 * (double)H * (double)I);
        p->cfg = mxi_cuda_staged_cfg(pk);
        free(tl);
        free(tr);
        free(x);
        free(out);
        free(tok);
        free(ex);
        free(w);
        free(used);
    }
    /* peers measured on this H100 at gpt-oss-20b shapes (issue 7), BF16 weights, ms */
    const size_t peer_T[] = {1, 8, 64, 8192};
    const double peer_grouped[] = {1.0, 1.29, 1.31, 6.2}, peer_loop[] = {1.15, 4.0, -1.0, 6.3};
    printf("\n%6s %6s %4s %10s %10s %9s %8s %9s %8s %9s %9s %9s %8s %9s %8s %9s %8s %s\n", "T", "active", "cfg",
           "layer_ms", "run_ms", "GB/s", "%HBM", "TFLOP/s", "%cuBLAS", "x_grouped", "x_loop", "pipe_ms", "pipe%HBM",
           "cold_ms", "cold%HBM", "rot_ms", "rot%HBM", "rel_l2");
    for (int i = 0; i < n_tok; i++) {
        point_t *p = &pts[i];
        double gbs = p->bytes / (p->layer_ms * 1e-3) / 1e9, tfs = p->flops / (p->layer_ms * 1e-3) / 1e12;
        double xg = -1, xl = -1;
        for (int j = 0; j < 4; j++)
            if (peer_T[j] == p->T) {
                xg = peer_grouped[j] / p->layer_ms;
                xl = peer_loop[j] > 0 ? peer_loop[j] / p->layer_ms : -1;
            }
        double pgbs = p->bytes / (p->pipe_ms * 1e-3) / 1e9, cgbs = p->bytes / (p->cold_ms * 1e-3) / 1e9;
        double rgbs = p->rot_ms > 0 ? p->bytes / (p->rot_ms * 1e-3) / 1e9 : 0.0;
        printf("%6zu %6d %4s %10.4f %10.4f %9.0f %7.1f%% %9.1f %7.1f%% %9.2f %9.2f %9.4f %7.1f%% %9.4f %7.1f%% %9.4f "
               "%7.1f%% %.2e%s\n",
               p->T, p->n_active,
               p->cfg == 0   ? "S"
               : p->cfg == 1 ? "M"
                             : "L",
               p->layer_ms, p->run_ms, gbs, 100.0 * gbs / bw, tfs, 100.0 * tfs / tf, xg, xl, p->pipe_ms,
               100.0 * pgbs / bw, p->cold_ms, 100.0 * cgbs / bw, p->rot_ms, 100.0 * rgbs / bw, p->err,
               p->err <= tol ? "" : "  CHECK FAILED");
    }
    printf("(layer_ms: one layer's kernels between two events, the host waiting after each; run_ms: run() with\n"
           " its copies; pipe_ms: per layer, 10 layers enqueued back to back as a model's are; x_grouped / x_loop:\n"
           " speed-up of layer_ms over torch._grouped_mm / a per-expert loop with BF16 weights, the figures issue 7\n"
           " quotes (bench/gpu/torch_peer.py times them in the same call); -1 = no peer figure; cold_ms: one\n"
           " layer with the L2 flushed before it, then its batch uploaded again and its launches queued ahead, so\n"
           " that neither the host's launch calls nor weights left in L2 count; rot_ms: as pipe_ms, the layers\n"
           " taking the weight copies in turn, none left in L2; -1: --copies 1)\n");
    if (json) {
        FILE *f = fopen(json, "w");
        if (!f) {
            fprintf(stderr, "mxgpu_bench: cannot write %s\n", json);
            return 1;
        }
        fprintf(f, "{\"device\":\"%s\",\"isa\":\"%s\",\"hbm_copy_gbps\":%.1f,\"cublas_bf16_tflops\":%.1f,", dev.name,
                dev.isa, bw, tf);
        fprintf(f,
                "\"scheme\":\"%s\",\"experts\":%d,\"hidden\":%zu,\"inter\":%zu,\"top_k\":%d,\"iters\":%d,\"points\":[",
                mx_scheme_name(scheme), E, H, I, K, iters);
        for (int i = 0; i < n_tok; i++) {
            point_t *p = &pts[i];
            double gbs = p->bytes / (p->layer_ms * 1e-3) / 1e9, tfs = p->flops / (p->layer_ms * 1e-3) / 1e12;
            fprintf(f,
                    "%s{\"tokens\":%zu,\"active_experts\":%d,\"cfg\":%d,\"layer_ms\":%.5f,\"run_ms\":%.5f,"
                    "\"pipe_ms\":%.5f,\"cold_ms\":%.5f,\"weight_gbps\":%.1f,\"hbm_ratio\":%.4f,\"pipe_hbm_ratio\":%.4f,"
                    "\"cold_hbm_ratio\":%.4f,\"rot_ms\":%.5f,\"rot_hbm_ratio\":%.4f,"
                    "\"tflops\":%.2f,\"cublas_ratio\":%.4f,\"rel_l2\":%.3e}",
                    i ? "," : "", p->T, p->n_active, p->cfg, p->layer_ms, p->run_ms, p->pipe_ms, p->cold_ms, gbs,
                    gbs / bw, p->bytes / (p->pipe_ms * 1e-3) / 1e9 / bw, p->bytes / (p->cold_ms * 1e-3) / 1e9 / bw,
                    p->rot_ms, p->rot_ms > 0 ? p->bytes / (p->rot_ms * 1e-3) / 1e9 / bw : -1.0, tfs, tfs / tf, p->err);
        }
        fprintf(f, "],\"check_ok\":%s}\n", bad ? "false" : "true");
        fclose(f);
    }
    for (int c = copies - 1; c >= 1; c--) /* before pk: theirs is pk's stream */
        mx_backend_cuda.release(cp[c]);
    mx_backend_cuda.release(pk);
    gref_experts_free(&g);
    if (bad)
        fprintf(stderr, "mxgpu_bench: a check against the CPU reference failed\n");
    return bad ? 1 : 0;
}
