/*
 * ggml_peer: times llama.cpp's CPU backend (ggml) on the expert part of one
 * MoE layer, built the way llama.cpp's build_moe_ffn builds it, with MXFP4
 * expert weights, so that mxbench's numbers can be compared with it on the
 * same machine in the same session.
 *
 * Graph (per layer, T tokens, top-k experts), as in src/llama-graph.cpp:
 *   x    [H, 1, T] F32, ids [k, T] I32, w [1, k, T] F32
 *   up   = mul_mat_id(up_exps,   x, ids)  (+ add_id(up_b)   for gpt-oss)
 *   gate = mul_mat_id(gate_exps, x, ids)  (+ add_id(gate_b) for gpt-oss)
 *   a    = swiglu_oai(gate, up, 1.702, 7.0)   (gpt-oss)
 *        | swiglu_split(gate, up)              (qwen3moe: silu(gate) * up)
 *   d    = mul_mat_id(down_exps, a, ids)  (+ add_id(down_b) for gpt-oss)
 *   out  = sum over the k views of mul(d, w)   -> [H, T]
 * The router (logits, softmax, top-k) is not timed: ids and w are inputs.
 *
 * By default the expert tensors live in the CPU backend's extra "CPU_REPACK"
 * buffer type when ggml offers one for them (llama.cpp's default,
 * use_extra_bufts = true); --no-repack puts them in the plain CPU buffer.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "ggml.h"

#include "../bench_rand.h"
#include "../bench_time.h"

#ifndef GGML_PEER_COMMIT
#define GGML_PEER_COMMIT "unknown"
#endif

#define QK 32          /* MXFP4 block: 32 values */
#define BLOCK_BYTES 17 /* 1 byte E8M0 + 16 bytes of nibbles */
#define MAX_TOKENS 32
#define MAX_ROTATE 64

typedef struct {
    const char *name;
    int E, H, I, k;
    int oai; /* 1: SwiGLU-OAI with biases (gpt-oss); 0: SiLU(gate)*up, no biases (qwen3moe) */
} model_t;

static const model_t MODELS[] = {
    {"gpt-oss-20b", 32, 2880, 2880, 4, 1},
    {"qwen3-30b-a3b", 128, 2048, 768, 8, 0},
};
#define N_MODELS ((int)(sizeof MODELS / sizeof MODELS[0]))

typedef struct {
    int models[N_MODELS], n_models;
    int tokens[MAX_TOKENS], n_tokens;
    int threads, iters, rotate, repack, check;
    uint64_t seed;
    const char *json;
} opts_t;

static const char USAGE[] =
    "usage: ggml_peer [options]\n"
    "\n"
    "Times ggml's CPU backend (llama.cpp's) on the expert part of one MoE layer\n"
    "with MXFP4 expert weights, built as llama.cpp's build_moe_ffn builds it:\n"
    "mul_mat_id for up and gate, their biases (gpt-oss, add_id), the activation,\n"
    "mul_mat_id for down and its bias, the routing weights and the sum over the\n"
    "top-k experts. The router is not timed: for each token, top-k distinct\n"
    "experts are drawn uniformly at random (seeded) with random positive weights\n"
    "summing to 1, and passed in as the ids / weights tensors. Weights are random\n"
    "valid MXFP4 blocks (random nibbles, scales 2^-8..2^-4); activations are F32.\n"
    "\n"
    "Per case it prints the median time of --iters runs of\n"
    "ggml_backend_graph_compute after 2 warm-up runs, the weight bytes of the\n"
    "distinct experts the batch touches (all three matrices, nibbles + scales,\n"
    "mean over the rotation), GB/s = those bytes / time, GFLOP/s =\n"
    "2 x T x top-k x 3 x H x I / time, and the relative L2 error of the first and\n"
    "last token's output (routing seed, before timing) against a scalar\n"
    "double-precision computation of the same layer from the same MXFP4 data:\n"
    "relL2 with exact F32 activations (ggml's MXFP4 matmuls quantize their\n"
    "activations to Q8_0, so about 1e-2 is expected; over 5e-2 fails the run) and\n"
    "relL2q8 with the activations entering each matmul rounded through Q8_0 as\n"
    "ggml does (expect 1e-4 or less). The scalar MXFP4 dequantizer is also\n"
    "checked bit for bit against ggml's to_float.\n"
    "\n"
    "Shapes (--model):\n"
    "  gpt-oss-20b    E=32  H=2880 I=2880 top-4, SwiGLU-OAI (alpha 1.702, limit 7),\n"
    "                 biases on gate, up and down\n"
    "  qwen3-30b-a3b  E=128 H=2048 I=768  top-8, SiLU(gate) * up, no biases\n"
    "\n"
    "Options:\n"
    "  --model NAME[,NAME]  gpt-oss-20b, qwen3-30b-a3b or all (default all)\n"
    "  --tokens N[,N]       token counts, 1..65536 (default 1,4,16,64,256,1024)\n"
    "  --threads N          CPU backend threads (default: online cores)\n"
    "  --iters N            timed runs per case, 1..1000 (default 10; once 3 runs\n"
    "                       are done a case stops after ~3 s of runs, as mxbench)\n"
    "  --rotate N           cycle through N routings drawn with seeds\n"
    "                       seed..seed+N-1, 1..64 (default 1), changing the ids and\n"
    "                       weights tensors' data between runs (untimed), so\n"
    "                       successive runs touch different experts\n"
    "  --seed N             random seed (default 1)\n"
    "  --no-repack          put the expert weights in the plain CPU buffer instead\n"
    "                       of ggml's CPU_REPACK extra buffer type (llama.cpp's\n"
    "                       --no-repack / use_extra_bufts = false)\n"
    "  --no-check           skip the scalar reference check\n"
    "  --json FILE          also write one JSON record per case to FILE\n"
    "  -h, --help           this text\n"
    "\n"
    "Exit status: 0 ok, 1 a run or allocation failed or a check was over 5e-2,\n"
    "2 bad usage.\n";

/* ------------------------------------------------------------------ small helpers */

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        fprintf(stderr, "ggml_peer: out of memory (%zu bytes)\n", n);
    return p;
}

/* Parses a whole decimal number in [lo, hi]; returns 0 on success. */
static int parse_int(const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

/* ------------------------------------------------------------------ log capture */

/* Remembers what ggml's repack code says it did ("repack tensor X with mxfp4_8x8"). */
static char repack_msg[256];
static int repack_count;

static void log_cb(enum ggml_log_level level, const char *text, void *user)
{
    (void)user;
    if (strstr(text, "repack tensor")) {
        repack_count++;
        if (!repack_msg[0]) {
            snprintf(repack_msg, sizeof repack_msg, "%s", text);
            size_t n = strlen(repack_msg);
            while (n && (repack_msg[n - 1] == '\n' || repack_msg[n - 1] == '\r'))
                repack_msg[--n] = 0;
        }
        return;
    }
    if (level == GGML_LOG_LEVEL_DEBUG || level == GGML_LOG_LEVEL_INFO)
        return;
    fputs(text, stderr);
}

/* ------------------------------------------------------------------ MXFP4 reference */

/* ggml's kvalues_mxfp4: twice the E2M1 values, sign in bit 3. */
static const int8_t KV_MXFP4[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

/* ggml's GGML_E8M0_TO_FP32_HALF: 0.5 * 2^(e - 127) (the half goes with KV_MXFP4's doubling). */
static float e8m0_to_fp32_half(uint8_t x)
{
    uint32_t bits = x < 2 ? 0x00200000u << x : (uint32_t)(x - 1) << 23;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* Mirrors ggml's dequantize_row_mxfp4: element j of a block is the low nibble of
 * byte j (j < 16) or the high nibble of byte j - 16. */
static void dequant_row(const uint8_t *blocks, int n, float *y)
{
    for (int b = 0; b < n / QK; b++) {
        const uint8_t *blk = blocks + (size_t)b * BLOCK_BYTES;
        const float d = e8m0_to_fp32_half(blk[0]);
        for (int j = 0; j < QK / 2; j++) {
            y[b * QK + j] = (float)KV_MXFP4[blk[1 + j] & 0x0F] * d;
            y[b * QK + j + QK / 2] = (float)KV_MXFP4[blk[1 + j] >> 4] * d;
        }
    }
}

static void fill_mxfp4(uint8_t *p, size_t n_blocks, uint64_t *s)
{
    for (size_t b = 0; b < n_blocks; b++) {
        uint8_t *blk = p + b * BLOCK_BYTES;
        /* true scale 2^(e-127) in 2^-8..2^-4 */
        blk[0] = (uint8_t)(119 + bench_rng_next(s) % 5);
        uint64_t r0 = bench_rng_next(s), r1 = bench_rng_next(s);
        memcpy(blk + 1, &r0, 8);
        memcpy(blk + 9, &r1, 8);
    }
}

/* ------------------------------------------------------------------ one model's data */

typedef struct {
    const model_t *md;
    /* host copies (ggml's layout): [E][rows][cols/32] blocks */
    uint8_t *h_gate, *h_up, *h_down;
    float *h_gate_b, *h_up_b, *h_down_b; /* gpt-oss only */
    struct ggml_context *ctx_w, *ctx_b;
    ggml_backend_buffer_t buf_w, buf_b;
    struct ggml_tensor *gate, *up, *down, *gate_b, *up_b, *down_b;
    const char *path; /* "CPU_REPACK ..." or "CPU (plain)" */
    char path_buf[320];
} layer_t;

static void layer_free(layer_t *L)
{
    if (L->buf_w)
        ggml_backend_buffer_free(L->buf_w);
    if (L->buf_b)
        ggml_backend_buffer_free(L->buf_b);
    if (L->ctx_w)
        ggml_free(L->ctx_w);
    if (L->ctx_b)
        ggml_free(L->ctx_b);
    free(L->h_gate);
    free(L->h_up);
    free(L->h_down);
    free(L->h_gate_b);
    free(L->h_up_b);
    free(L->h_down_b);
    memset(L, 0, sizeof *L);
}

static ggml_backend_buffer_type_t find_repack_buft(void)
{
    ggml_backend_reg_t reg = ggml_backend_cpu_reg();
    ggml_backend_dev_t dev = ggml_backend_reg_dev_get(reg, 0);
    void *p = ggml_backend_reg_get_proc_address(reg, "ggml_backend_dev_get_extra_bufts");
    if (!p)
        return NULL;
    ggml_backend_dev_get_extra_bufts_t get;
    memcpy(&get, &p, sizeof get); /* object to function pointer, as POSIX dlsym users do */
    for (ggml_backend_buffer_type_t *b = get(dev); b && *b; b++)
        if (!strcmp(ggml_backend_buft_name(*b), "CPU_REPACK"))
            return *b;
    return NULL;
}

static int layer_make(const model_t *md, uint64_t seed, int want_repack, layer_t *L)
{
    memset(L, 0, sizeof *L);
    L->md = md;
    const size_t E = (size_t)md->E, H = (size_t)md->H, I = (size_t)md->I;
    const size_t mat_bytes = E * H * I / QK * BLOCK_BYTES; /* one [E] stack, gate/up/down alike */
    L->h_gate = xmalloc(mat_bytes);
    L->h_up = xmalloc(mat_bytes);
    L->h_down = xmalloc(mat_bytes);
    if (!L->h_gate || !L->h_up || !L->h_down)
        return -1;
    uint64_t s = seed * 7919 + 17;
    fill_mxfp4(L->h_gate, mat_bytes / BLOCK_BYTES, &s);
    fill_mxfp4(L->h_up, mat_bytes / BLOCK_BYTES, &s);
    fill_mxfp4(L->h_down, mat_bytes / BLOCK_BYTES, &s);
    if (md->oai) {
        L->h_gate_b = xmalloc(E * I * sizeof(float));
        L->h_up_b = xmalloc(E * I * sizeof(float));
        L->h_down_b = xmalloc(E * H * sizeof(float));
        if (!L->h_gate_b || !L->h_up_b || !L->h_down_b)
            return -1;
        for (size_t i = 0; i < E * I; i++) {
            L->h_gate_b[i] = bench_rng_uniform(&s, -0.1f, 0.1f);
            L->h_up_b[i] = bench_rng_uniform(&s, -0.1f, 0.1f);
        }
        for (size_t i = 0; i < E * H; i++)
            L->h_down_b[i] = bench_rng_uniform(&s, -0.1f, 0.1f);
    }

    struct ggml_init_params ip = {ggml_tensor_overhead() * 8, NULL, true};
    L->ctx_w = ggml_init(ip);
    struct ggml_init_params ipb = {ggml_tensor_overhead() * 4, NULL, true};
    L->ctx_b = ggml_init(ipb);
    if (!L->ctx_w || !L->ctx_b) {
        fprintf(stderr, "ggml_peer: ggml_init failed\n");
        return -1;
    }
    struct ggml_context *ctx_b = L->ctx_b;
    /* ggml's mul_mat convention: ne0 = input (reduction) dim, ne1 = output dim */
    L->gate = ggml_new_tensor_3d(L->ctx_w, GGML_TYPE_MXFP4, md->H, md->I, md->E);
    L->up = ggml_new_tensor_3d(L->ctx_w, GGML_TYPE_MXFP4, md->H, md->I, md->E);
    L->down = ggml_new_tensor_3d(L->ctx_w, GGML_TYPE_MXFP4, md->I, md->H, md->E);
    ggml_set_name(L->gate, "ffn_gate_exps");
    ggml_set_name(L->up, "ffn_up_exps");
    ggml_set_name(L->down, "ffn_down_exps");
    if (ggml_nbytes(L->gate) != mat_bytes || ggml_nbytes(L->down) != mat_bytes) {
        fprintf(stderr, "ggml_peer: unexpected MXFP4 tensor size %zu (expected %zu)\n", ggml_nbytes(L->gate),
                mat_bytes);
        return -1;
    }

    ggml_backend_buffer_type_t buft = ggml_backend_cpu_buffer_type();
    if (want_repack) {
        ggml_backend_buffer_type_t rb = find_repack_buft();
        if (rb)
            buft = rb;
        else
            fprintf(stderr, "ggml_peer: this ggml has no CPU_REPACK buffer type; using the plain CPU buffer\n");
    }
    L->buf_w = ggml_backend_alloc_ctx_tensors_from_buft(L->ctx_w, buft);
    if (!L->buf_w) {
        fprintf(stderr, "ggml_peer: cannot allocate %s buffer for the expert weights\n", ggml_backend_buft_name(buft));
        return -1;
    }
    ggml_backend_buffer_set_usage(L->buf_w, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
    int repacked = strcmp(ggml_backend_buft_name(buft), "CPU_REPACK") == 0;
    if (repacked && (!L->gate->extra || !L->up->extra || !L->down->extra)) {
        /* ggml's repack init_tensor left no layout for this tensor (e.g. ne1 % 8 != 0):
         * llama.cpp would not pick CPU_REPACK for it either. */
        fprintf(stderr, "ggml_peer: CPU_REPACK has no layout for these MXFP4 tensors; use --no-repack\n");
        return -1;
    }
    repack_msg[0] = 0;
    repack_count = 0;
    ggml_backend_tensor_set(L->gate, L->h_gate, 0, mat_bytes);
    ggml_backend_tensor_set(L->up, L->h_up, 0, mat_bytes);
    ggml_backend_tensor_set(L->down, L->h_down, 0, mat_bytes);
    if (repacked)
        snprintf(L->path_buf, sizeof L->path_buf, "CPU_REPACK (%d tensors repacked; ggml: \"%s\")", repack_count,
                 repack_msg[0] ? repack_msg : "no repack message");
    else
        snprintf(L->path_buf, sizeof L->path_buf, "CPU (plain MXFP4 blocks, no repack)");
    L->path = L->path_buf;

    if (md->oai) {
        L->gate_b = ggml_new_tensor_2d(ctx_b, GGML_TYPE_F32, md->I, md->E);
        L->up_b = ggml_new_tensor_2d(ctx_b, GGML_TYPE_F32, md->I, md->E);
        L->down_b = ggml_new_tensor_2d(ctx_b, GGML_TYPE_F32, md->H, md->E);
        L->buf_b = ggml_backend_alloc_ctx_tensors_from_buft(ctx_b, ggml_backend_cpu_buffer_type());
        if (!L->buf_b) {
            fprintf(stderr, "ggml_peer: cannot allocate the bias buffer\n");
            return -1;
        }
        ggml_backend_tensor_set(L->gate_b, L->h_gate_b, 0, ggml_nbytes(L->gate_b));
        ggml_backend_tensor_set(L->up_b, L->h_up_b, 0, ggml_nbytes(L->up_b));
        ggml_backend_tensor_set(L->down_b, L->h_down_b, 0, ggml_nbytes(L->down_b));
    }
    return 0;
}

/* ------------------------------------------------------------------ routing */

typedef struct {
    int32_t *ids; /* [T][k] */
    float *w;     /* [T][k], positive, each token's row sums to 1 */
    int active;   /* distinct experts the batch touches */
} route_t;

static void route_free(route_t *r)
{
    free(r->ids);
    free(r->w);
    memset(r, 0, sizeof *r);
}

/* T tokens' top-k distinct experts and weights, drawn as mxbench draws them
 * (bench_route_draw); not the same draws, since mxbench draws its activations
 * from the seed first. */
static int route_make(const model_t *md, int T, uint64_t seed, route_t *r)
{
    memset(r, 0, sizeof *r);
    const size_t k = (size_t)md->k, NA = (size_t)T * k;
    r->ids = xmalloc(NA * sizeof *r->ids);
    r->w = xmalloc(NA * sizeof *r->w);
    int *used = calloc((size_t)md->E, sizeof *used);
    if (!r->ids || !r->w || !used) {
        free(used);
        return -1;
    }
    uint64_t s = seed * 31 + (uint64_t)T;
    bench_route_draw(&s, (size_t)T, k, md->E, r->ids, r->w, used);
    for (int e = 0; e < md->E; e++)
        r->active += used[e];
    free(used);
    return 0;
}

/* ------------------------------------------------------------------ scalar reference */

/* Rounds v[0..n) through ggml's Q8_0 (reference quantizer and dequantizer), as
 * ggml's MXFP4 matmuls do to their activations. */
static int q8_round_trip(float *v, int n)
{
    const struct ggml_type_traits *q8 = ggml_get_type_traits(GGML_TYPE_Q8_0);
    void *blk = xmalloc(ggml_row_size(GGML_TYPE_Q8_0, n));
    if (!blk)
        return -1;
    q8->from_float_ref(v, blk, n);
    q8->to_float(blk, v, n);
    free(blk);
    return 0;
}

/* Checks dequant_row against ggml's own MXFP4 to_float on some rows: must be identical. */
static int check_dequant(const layer_t *L)
{
    const model_t *md = L->md;
    const struct ggml_type_traits *tt = ggml_get_type_traits(GGML_TYPE_MXFP4);
    const size_t row_gu = (size_t)md->H / QK * BLOCK_BYTES;
    float *a = xmalloc((size_t)md->H * sizeof *a), *b = xmalloc((size_t)md->H * sizeof *b);
    int bad = !a || !b;
    uint64_t s = 99;
    for (int r = 0; r < 16 && !bad; r++) {
        const uint8_t *row = L->h_gate + (bench_rng_next(&s) % ((size_t)md->E * (size_t)md->I)) * row_gu;
        dequant_row(row, md->H, a);
        tt->to_float(row, b, md->H);
        bad |= memcmp(a, b, (size_t)md->H * sizeof *a) != 0;
    }
    free(a);
    free(b);
    return bad ? -1 : 0;
}

/* One token's layer output in double from the host MXFP4 copies; with q8 set,
 * the activations entering each matmul are first rounded through Q8_0 as ggml
 * does. Returns 0 or -1. */
static int ref_token(const layer_t *L, const float *x_in, const int32_t *ids, const float *w, int q8, double *out)
{
    const model_t *md = L->md;
    const int H = md->H, I = md->I;
    const size_t row_gu = (size_t)H / QK * BLOCK_BYTES, row_d = (size_t)I / QK * BLOCK_BYTES;
    float *row = xmalloc((size_t)(H > I ? H : I) * sizeof *row);
    double *a = xmalloc((size_t)I * sizeof *a);
    float *x = xmalloc((size_t)H * sizeof *x), *af = xmalloc((size_t)I * sizeof *af);
    int rc = -1;
    if (!row || !a || !x || !af)
        goto done;
    memcpy(x, x_in, (size_t)H * sizeof *x);
    if (q8 && q8_round_trip(x, H))
        goto done;
    for (int h = 0; h < H; h++)
        out[h] = 0.0;
    for (int j = 0; j < md->k; j++) {
        const size_t e = (size_t)ids[j];
        for (int i = 0; i < I; i++) {
            double g = 0.0, u = 0.0;
            dequant_row(L->h_gate + (e * (size_t)I + (size_t)i) * row_gu, H, row);
            for (int h = 0; h < H; h++)
                g += (double)row[h] * (double)x[h];
            dequant_row(L->h_up + (e * (size_t)I + (size_t)i) * row_gu, H, row);
            for (int h = 0; h < H; h++)
                u += (double)row[h] * (double)x[h];
            if (md->oai) {
                g += (double)L->h_gate_b[e * (size_t)I + (size_t)i];
                u += (double)L->h_up_b[e * (size_t)I + (size_t)i];
                /* ggml_swiglu_oai: x = min(g, limit), y = clamp(u, -limit, limit),
                 * out = x * sigmoid(alpha * x) * (y + 1) */
                const double lim = 7.0, alpha = 1.702;
                double xg = g < lim ? g : lim;
                double y = u < -lim ? -lim : (u > lim ? lim : u);
                a[i] = xg / (1.0 + exp(-alpha * xg)) * (y + 1.0);
            } else {
                a[i] = g / (1.0 + exp(-g)) * u; /* silu(gate) * up */
            }
        }
        if (q8) { /* ggml hands the activation to the down matmul as F32, quantized to Q8_0 */
            for (int i = 0; i < I; i++)
                af[i] = (float)a[i];
            if (q8_round_trip(af, I))
                goto done;
            for (int i = 0; i < I; i++)
                a[i] = af[i];
        }
        for (int h = 0; h < H; h++) {
            double d = 0.0;
            dequant_row(L->h_down + (e * (size_t)H + (size_t)h) * row_d, I, row);
            for (int i = 0; i < I; i++)
                d += (double)row[i] * a[i];
            if (md->oai)
                d += (double)L->h_down_b[e * (size_t)H + (size_t)h];
            out[h] += (double)w[j] * d;
        }
    }
    rc = 0;
done:
    free(row);
    free(a);
    free(x);
    free(af);
    return rc;
}

/* ------------------------------------------------------------------ one case */

typedef struct {
    double ms, weight_bytes, gbps, gflops, rel_l2, rel_l2_q8, active;
    int runs;
} result_t;

static int run_case(const opts_t *o, ggml_backend_t be, layer_t *L, int T, result_t *res)
{
    const model_t *md = L->md;
    const int H = md->H, k = md->k, nb = o->rotate;
    int rc = -1;
    struct ggml_context *ctx_in = NULL, *ctx_g = NULL;
    ggml_backend_buffer_t buf_in = NULL;
    ggml_gallocr_t galloc = NULL;
    route_t routes[MAX_ROTATE];
    float *x = NULL, *y = NULL;
    double *ref = NULL, *t_ms = NULL;
    int n_routes = 0;
    memset(res, 0, sizeof *res);
    res->rel_l2 = res->rel_l2_q8 = -1.0;

    for (; n_routes < nb; n_routes++)
        if (route_make(md, T, o->seed + (uint64_t)n_routes, &routes[n_routes])) {
            route_free(&routes[n_routes]);
            goto done;
        }
    x = xmalloc((size_t)T * (size_t)H * sizeof *x);
    y = xmalloc((size_t)T * (size_t)H * sizeof *y);
    ref = xmalloc((size_t)H * sizeof *ref);
    t_ms = xmalloc((size_t)o->iters * sizeof *t_ms);
    if (!x || !y || !ref || !t_ms)
        goto done;
    {
        uint64_t s = o->seed * 131 + (uint64_t)T;
        /* normal-ish: sum of three uniforms, standard deviation 0.5 */
        for (size_t i = 0; i < (size_t)T * (size_t)H; i++)
            x[i] = 0.5f * (bench_rng_uniform(&s, -1.0f, 1.0f) + bench_rng_uniform(&s, -1.0f, 1.0f) + bench_rng_uniform(&s, -1.0f, 1.0f));
    }

    /* inputs: allocated up front so that the graph allocator leaves them alone */
    struct ggml_init_params ip = {ggml_tensor_overhead() * 4, NULL, true};
    ctx_in = ggml_init(ip);
    if (!ctx_in)
        goto done;
    struct ggml_tensor *tx = ggml_new_tensor_3d(ctx_in, GGML_TYPE_F32, H, 1, T);
    struct ggml_tensor *tids = ggml_new_tensor_2d(ctx_in, GGML_TYPE_I32, k, T);
    struct ggml_tensor *tw = ggml_new_tensor_3d(ctx_in, GGML_TYPE_F32, 1, k, T);
    ggml_set_input(tx);
    ggml_set_input(tids);
    ggml_set_input(tw);
    buf_in = ggml_backend_alloc_ctx_tensors_from_buft(ctx_in, ggml_backend_cpu_buffer_type());
    if (!buf_in) {
        fprintf(stderr, "ggml_peer: cannot allocate the input tensors\n");
        goto done;
    }
    ggml_backend_tensor_set(tx, x, 0, ggml_nbytes(tx));

    /* the graph, as llama.cpp's build_moe_ffn (no router, no LLAMA4 pre-weighting) */
    const size_t max_nodes = 256;
    struct ggml_init_params gp = {ggml_tensor_overhead() * max_nodes + ggml_graph_overhead_custom(max_nodes, false),
                                  NULL, true};
    ctx_g = ggml_init(gp);
    if (!ctx_g)
        goto done;
    struct ggml_cgraph *gf = ggml_new_graph_custom(ctx_g, max_nodes, false);
    struct ggml_tensor *up = ggml_mul_mat_id(ctx_g, L->up, tx, tids); /* [I, k, T] */
    if (md->oai)
        up = ggml_add_id(ctx_g, up, L->up_b, tids);
    struct ggml_tensor *gate = ggml_mul_mat_id(ctx_g, L->gate, tx, tids);
    if (md->oai)
        gate = ggml_add_id(ctx_g, gate, L->gate_b, tids);
    struct ggml_tensor *act =
        md->oai ? ggml_swiglu_oai(ctx_g, gate, up, 1.702f, 7.0f) : ggml_swiglu_split(ctx_g, gate, up);
    struct ggml_tensor *experts = ggml_mul_mat_id(ctx_g, L->down, act, tids); /* [H, k, T] */
    if (md->oai)
        experts = ggml_add_id(ctx_g, experts, L->down_b, tids);
    experts = ggml_mul(ctx_g, experts, tw);
    ggml_build_forward_expand(gf, experts);
    struct ggml_tensor *views[64];
    for (int i = 0; i < k; i++) {
        views[i] = ggml_view_2d(ctx_g, experts, H, T, experts->nb[2], (size_t)i * experts->nb[1]);
        ggml_build_forward_expand(gf, views[i]);
    }
    struct ggml_tensor *out = views[0];
    for (int i = 1; i < k; i++)
        out = ggml_add(ctx_g, out, views[i]);
    if (k == 1)
        out = ggml_cont(ctx_g, out);
    ggml_set_output(out);
    ggml_build_forward_expand(gf, out);

    galloc = ggml_gallocr_new(ggml_backend_cpu_buffer_type());
    if (!galloc || !ggml_gallocr_alloc_graph(galloc, gf)) {
        fprintf(stderr, "ggml_peer: cannot allocate the graph\n");
        goto done;
    }

    /* check: routing 0, first and last token against the scalar reference */
    if (o->check) {
        ggml_backend_tensor_set(tids, routes[0].ids, 0, ggml_nbytes(tids));
        ggml_backend_tensor_set(tw, routes[0].w, 0, ggml_nbytes(tw));
        if (ggml_backend_graph_compute(be, gf) != GGML_STATUS_SUCCESS) {
            fprintf(stderr, "ggml_peer: graph compute failed\n");
            goto done;
        }
        ggml_backend_tensor_get(out, y, 0, ggml_nbytes(out));
        for (int q8 = 0; q8 < 2; q8++) {
            double num = 0.0, den = 0.0;
            int toks[2] = {0, T - 1};
            for (int q = 0; q < (T > 1 ? 2 : 1); q++) {
                int t = toks[q];
                if (ref_token(L, x + (size_t)t * H, routes[0].ids + (size_t)t * k, routes[0].w + (size_t)t * k, q8,
                              ref))
                    goto done;
                for (int h = 0; h < H; h++) {
                    double d = (double)y[(size_t)t * H + h] - ref[h];
                    num += d * d;
                    den += ref[h] * ref[h];
                }
            }
            double e = den > 0.0 ? sqrt(num / den) : (num > 0.0 ? INFINITY : 0.0);
            if (q8)
                res->rel_l2_q8 = e;
            else
                res->rel_l2 = e;
        }
    }

    /* timing: 2 warm-up runs, then up to --iters runs, routings cycled */
    double start = 0.0;
    for (int i = 0; i < 2 + o->iters; i++) {
        const route_t *r = &routes[i % nb];
        ggml_backend_tensor_set(tids, r->ids, 0, ggml_nbytes(tids));
        ggml_backend_tensor_set(tw, r->w, 0, ggml_nbytes(tw));
        double t0 = bench_now_s();
        if (ggml_backend_graph_compute(be, gf) != GGML_STATUS_SUCCESS) {
            fprintf(stderr, "ggml_peer: graph compute failed\n");
            goto done;
        }
        double t1 = bench_now_s();
        if (i >= 2) {
            t_ms[res->runs++] = (t1 - t0) * 1e3;
            if (res->runs == 1)
                start = t0;
            if (res->runs >= 3 && t1 - start > 3.0)
                break;
        }
    }
    res->ms = bench_median(t_ms, res->runs);
    double active_sum = 0.0;
    for (int i = 0; i < nb; i++)
        active_sum += routes[i].active;
    res->active = active_sum / nb;
    const double per_expert = 3.0 * (double)md->H * (double)md->I / QK * BLOCK_BYTES;
    res->weight_bytes = per_expert * res->active;
    res->gbps = res->weight_bytes / (res->ms * 1e-3) / 1e9;
    res->gflops = 2.0 * T * k * 3.0 * (double)md->H * (double)md->I / (res->ms * 1e-3) / 1e9;
    rc = 0;

done:
    if (galloc)
        ggml_gallocr_free(galloc);
    if (ctx_g)
        ggml_free(ctx_g);
    if (buf_in)
        ggml_backend_buffer_free(buf_in);
    if (ctx_in)
        ggml_free(ctx_in);
    for (int i = 0; i < n_routes; i++)
        route_free(&routes[i]);
    free(x);
    free(y);
    free(ref);
    free(t_ms);
    return rc;
}

/* ------------------------------------------------------------------ options */

static int parse_opts(int argc, char **argv, opts_t *o)
{
    memset(o, 0, sizeof *o);
    o->threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (o->threads < 1)
        o->threads = 1;
    o->iters = 10;
    o->rotate = 1;
    o->repack = 1;
    o->check = 1;
    o->seed = 1;
    static const int def_tokens[] = {1, 4, 16, 64, 256, 1024};
    o->n_tokens = (int)(sizeof def_tokens / sizeof def_tokens[0]);
    memcpy(o->tokens, def_tokens, sizeof def_tokens);
    o->n_models = N_MODELS;
    for (int i = 0; i < N_MODELS; i++)
        o->models[i] = i;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(USAGE, stdout);
            exit(0);
        }
        if (!strcmp(a, "--no-repack")) {
            o->repack = 0;
            continue;
        }
        if (!strcmp(a, "--no-check")) {
            o->check = 0;
            continue;
        }
        static const char *const valued[] = {"--model", "--tokens", "--threads", "--iters",
                                             "--rotate", "--seed", "--json"};
        int known = 0;
        for (size_t q = 0; q < sizeof valued / sizeof valued[0]; q++)
            known |= !strcmp(a, valued[q]);
        if (!known) {
            fprintf(stderr, "ggml_peer: unknown option '%s' (see --help)\n", a);
            return -1;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "ggml_peer: %s needs a value\n", a);
            return -1;
        }
        const char *v = argv[++i];
        long x;
        if (!strcmp(a, "--model") || !strcmp(a, "--tokens")) {
            char buf[512];
            if (strlen(v) >= sizeof buf || !*v) {
                fprintf(stderr, "ggml_peer: bad %s value '%s'\n", a, v);
                return -1;
            }
            strcpy(buf, v);
            int is_model = !strcmp(a, "--model");
            if (is_model)
                o->n_models = 0;
            else
                o->n_tokens = 0;
            char *save = NULL;
            for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
                if (is_model) {
                    if (!strcmp(tok, "all")) {
                        o->n_models = N_MODELS;
                        for (int m = 0; m < N_MODELS; m++)
                            o->models[m] = m;
                        continue;
                    }
                    int m = 0;
                    while (m < N_MODELS && strcmp(tok, MODELS[m].name))
                        m++;
                    if (m == N_MODELS) {
                        fprintf(stderr, "ggml_peer: unknown model '%s' (gpt-oss-20b, qwen3-30b-a3b, all)\n", tok);
                        return -1;
                    }
                    if (o->n_models == N_MODELS) {
                        fprintf(stderr, "ggml_peer: too many models in '%s'\n", v);
                        return -1;
                    }
                    o->models[o->n_models++] = m;
                } else {
                    if (parse_int(tok, 1, 65536, &x)) {
                        fprintf(stderr, "ggml_peer: bad token count '%s' (1..65536)\n", tok);
                        return -1;
                    }
                    if (o->n_tokens == MAX_TOKENS) {
                        fprintf(stderr, "ggml_peer: at most %d token counts\n", MAX_TOKENS);
                        return -1;
                    }
                    o->tokens[o->n_tokens++] = (int)x;
                }
            }
            if ((is_model && !o->n_models) || (!is_model && !o->n_tokens)) {
                fprintf(stderr, "ggml_peer: empty %s list\n", a);
                return -1;
            }
        } else if (!strcmp(a, "--threads")) {
            if (parse_int(v, 1, 1024, &x)) {
                fprintf(stderr, "ggml_peer: --threads must be 1..1024\n");
                return -1;
            }
            o->threads = (int)x;
        } else if (!strcmp(a, "--iters")) {
            if (parse_int(v, 1, 1000, &x)) {
                fprintf(stderr, "ggml_peer: --iters must be 1..1000\n");
                return -1;
            }
            o->iters = (int)x;
        } else if (!strcmp(a, "--rotate")) {
            if (parse_int(v, 1, MAX_ROTATE, &x)) {
                fprintf(stderr, "ggml_peer: --rotate must be 1..%d\n", MAX_ROTATE);
                return -1;
            }
            o->rotate = (int)x;
        } else if (!strcmp(a, "--seed")) {
            char *end;
            errno = 0;
            unsigned long long s = strtoull(v, &end, 10);
            if (errno || end == v || *end || v[0] == '-') {
                fprintf(stderr, "ggml_peer: bad --seed '%s'\n", v);
                return -1;
            }
            o->seed = (uint64_t)s;
        } else { /* --json */
            o->json = v;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------ main */

static void print_json_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            fprintf(f, "\\%c", *s);
        else if ((unsigned char)*s < 0x20)
            fprintf(f, "\\u%04x", (unsigned char)*s);
        else
            fputc(*s, f);
    }
    fputc('"', f);
}

int main(int argc, char **argv)
{
    opts_t o;
    if (parse_opts(argc, argv, &o))
        return 2;

    FILE *jf = NULL;
    if (o.json) {
        jf = fopen(o.json, "w");
        if (!jf) {
            fprintf(stderr, "ggml_peer: cannot write %s: %s\n", o.json, strerror(errno));
            return 1;
        }
        fputs("[\n", jf);
    }

    ggml_log_set(log_cb, NULL);
    ggml_backend_t be = ggml_backend_cpu_init();
    if (!be) {
        fprintf(stderr, "ggml_peer: ggml_backend_cpu_init failed\n");
        if (jf)
            fclose(jf);
        return 1;
    }
    ggml_backend_cpu_set_n_threads(be, o.threads);

    printf("# ggml %s (commit %s), CPU backend, %d threads\n", ggml_version(), GGML_PEER_COMMIT, o.threads);
    printf("# ggml-cpu compiled for: avx %d avx2 %d fma %d f16c %d bmi2 %d avx512 %d avx512_vnni %d avx_vnni %d "
           "amx_int8 %d\n",
           ggml_cpu_has_avx(), ggml_cpu_has_avx2(), ggml_cpu_has_fma(), ggml_cpu_has_f16c(), ggml_cpu_has_bmi2(),
           ggml_cpu_has_avx512(), ggml_cpu_has_avx512_vnni(), ggml_cpu_has_avx_vnni(), ggml_cpu_has_amx_int8());
    printf("# rotate %d, iters %d, seed %llu, weights %s\n", o.rotate, o.iters, (unsigned long long)o.seed,
           o.repack ? "in CPU_REPACK when offered" : "in the plain CPU buffer (--no-repack)");
    fflush(stdout);

    int failed = 0, n_json = 0;
    for (int mi = 0; mi < o.n_models; mi++) {
        const model_t *md = &MODELS[o.models[mi]];
        fprintf(stderr, "ggml_peer: %s: making %d random MXFP4 experts...\n", md->name, md->E);
        layer_t L;
        if (layer_make(md, o.seed, o.repack, &L)) {
            layer_free(&L);
            failed = 1;
            continue;
        }
        if (o.check && check_dequant(&L)) {
            fprintf(stderr, "ggml_peer: %s: the scalar MXFP4 dequantizer disagrees with ggml's to_float\n", md->name);
            layer_free(&L);
            failed = 1;
            continue;
        }
        printf("# %s: expert weights in %s\n", md->name, L.path);
        printf("%-14s %6s %6s %9s %9s %8s %9s %5s %9s %9s\n", "model", "tokens", "active", "ms", "weightMB", "GB/s",
               "GFLOP/s", "runs", "relL2", "relL2q8");
        fflush(stdout);
        for (int ti = 0; ti < o.n_tokens; ti++) {
            int T = o.tokens[ti];
            result_t r;
            fprintf(stderr, "ggml_peer: %s T=%d...\n", md->name, T);
            if (run_case(&o, be, &L, T, &r)) {
                failed = 1;
                continue;
            }
            if (o.check && !(r.rel_l2 <= 5e-2)) {
                fprintf(stderr, "ggml_peer: CHECK FAILED %s T=%d: rel L2 %.3e vs scalar reference > 5e-2\n", md->name,
                        T, r.rel_l2);
                failed = 1;
            }
            printf("%-14s %6d %6.1f %9.3f %9.1f %8.2f %9.2f %5d %9.2e %9.2e\n", md->name, T, r.active, r.ms,
                   r.weight_bytes / 1e6, r.gbps, r.gflops, r.runs, r.rel_l2, r.rel_l2_q8);
            fflush(stdout);
            if (jf) {
                fprintf(jf,
                        "%s  {\"model\": \"%s\", \"tokens\": %d, \"ms\": %.6g, \"weight_mb\": %.6g, \"gbps\": %.6g, "
                        "\"gflops\": %.6g, \"threads\": %d, \"ggml_commit\": \"%s\", \"top_k\": %d, "
                        "\"active_experts\": %.4g, \"runs\": %d, \"rotate\": %d, \"rel_l2\": %.4g, \"rel_l2_q8\": %.4g, "
                        "\"path\": ",
                        n_json++ ? ",\n" : "", md->name, T, r.ms, r.weight_bytes / 1e6, r.gbps, r.gflops, o.threads,
                        GGML_PEER_COMMIT, md->k, r.active, r.runs, o.rotate, r.rel_l2, r.rel_l2_q8);
                print_json_string(jf, L.path);
                fputc('}', jf);
            }
        }
        layer_free(&L);
    }
    ggml_backend_free(be);
    if (jf) {
        fputs("\n]\n", jf);
        if (fclose(jf)) {
            fprintf(stderr, "ggml_peer: error writing %s\n", o.json);
            failed = 1;
        }
    }
    return failed ? 1 : 0;
}
