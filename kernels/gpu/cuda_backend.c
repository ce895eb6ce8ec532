/* mxep `cuda` backend: the host side (probe, predicates, prepack, device
 * memory, streams and copies). The kernels are in moe_kernels.cu.
 *
 * run() = stage (validate, group the assignments by expert on the host with
 * gpu_plan.c, one upload of tokens and metadata) + layer (activation
 * quantization where the scheme needs it, GEMM1 + activation for all local
 * experts in one launch, GEMM2 + bias in one launch, the weighted combine) +
 * fetch (copy the outputs out, then wait).
 *
 * Ordering rules (issue 7: wrong numbers with 8 ranks on one GPU came from
 * breaking them):
 * - Every device operation of a packed object goes to its own stream, created
 *   non-blocking: nothing uses the legacy default stream, which does NOT order
 *   against a non-blocking stream (a cudaMemset or cudaMemcpy there may run
 *   after, or during, later work on the stream).
 * - run() is fully synchronous: when it returns, on success or on any error,
 *   every copy into the caller's buffers is complete, no copy still reads the
 *   caller's buffers, and no kernel still uses the scratch. prepack() likewise
 *   returns after its uploads have landed.
 * - Device scratch grows to the largest batch seen and is kept. Growing waits
 *   for the stream before freeing the old buffer and zeroes the new one on the
 *   stream (the padded columns of the activation buffers must read as zeros).
 * - run() on one packed object from several threads is serialized by a mutex;
 *   separate packed objects (own stream, own scratch) run concurrently.
 * - Every runtime call is checked; an allocation failure is MX_ERR_NOMEM naming
 *   the GPU, the bytes, what they were for and the memory free on the GPU
 *   (several ranks sharing one GPU each hold a context and scratch).
 * - On sm_90 the layer's kernels are programmatic dependent launches (the first
 *   one too when it is the quantizer / token copy): each waits
 *   (griddepcontrol.wait) before it touches anything an earlier kernel of the
 *   stream writes; before that it reads only the weights and the batch's plan,
 *   which the stage's copies (never a kernel) wrote. Behind a copy, a dependent
 *   launch waits as any launch does. */
#include <cuda_runtime_api.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_internal.h"
#include "gpu_layout.h"
#include "gpu_plan.h"
#include "mxep/kernels.h"
#include "mxep/log.h"
#include "mxep/status.h"

typedef struct {
    uint8_t *w, *sc;
    float *wsf, *bias;
    size_t w_es, sc_es, wsf_es, bias_es;
    int wsf_kb, flush_w;
    int sc_big; /* MXFP4: some E8M0 scale is above 2^1 or NaN (mxg_gemm_params_t.sc_big) */
    int N, N_pad, K, K_pad;
} gmat_t;

typedef struct {
    void *ptr;
    size_t cap;
} dbuf_t;

struct mx_backend_packed {
    mx_moe_desc_t desc;
    int n_experts, device, wfmt;
    gmat_t m1, m2;
    float *in_scale, *down_in_scale; /* host [E], W4A8 */
    cudaStream_t stream;
    int stream_shared;    /* the stream is another packed object's (mxi_cuda_share_stream): not destroyed here */
    pthread_mutex_t lock; /* run() of one packed object, one thread at a time */
    int force_cfg;
    int cc;  /* compute capability, 10 * major + minor */
    int mma; /* MXG_MMA_WGMMA on sm_90 (unless MXEP_CUDA_MMA=sync or E4M3 tokens), else MXG_MMA_SYNC */
    int pdl; /* programmatic dependent launches between the layer's kernels (sm_90; MXEP_CUDA_PDL=0 turns them off) */
    int tokcopy;     /* MXEP_CUDA_TOKCOPY=1: small batches of unquantized schemes always copy the token rows into the
                      * decode kernel's column order first (same bits) */
    int max_cnt;     /* staged batch: rows of the busiest expert */
    size_t l2pf_max; /* a decode-kernel GEMM whose weights take at most this many bytes prefetches them into L2
                      * while the kernel before it runs: half the L2 with dependent launches, else 0
                      * (MXEP_CUDA_L2PF=0 turns it off) */
    /* staged batch */
    int cfg, n_mtiles, staged;
    size_t n_tokens, n_assign;
    mx_out_mode_t mode;
    /* device scratch */
    dbuf_t x, meta, xq, grp1, grp2, rs1, rs2, hid, hq, y, out; /* hq: GEMM2's E4M3 input (MXG_W_FP8X) */
    /* GEMM2's K segments in the tensor-core tiles (M, L): each CTA's first-segment sums
     * (mxg_gemm_params_t.stash) */
    dbuf_t stash;
    int feats; /* mxi_gpu_arch_feats() of the device at prepack: what its loaded code has */
    /* host scratch */
    void *hmeta;
    size_t hmeta_cap;
    /* device views into meta */
    int32_t *d_a_tok, *d_out_rows, *d_tile_e, *d_tile_m0, *d_off, *d_cnt, *d_tok_off, *d_tok_list;
    float *d_w, *d_rs1, *d_rs2;
};

static mx_status_t status_of(cudaError_t err)
{
    if (err == cudaErrorMemoryAllocation)
        return MX_ERR_NOMEM;
    if (err == cudaErrorNoDevice || err == cudaErrorDevicesUnavailable || err == cudaErrorInsufficientDriver)
        return MX_ERR_NO_DEVICE;
    return MX_ERR_INTERNAL;
}

static mx_status_t cuda_fail(int dev, cudaError_t err, const char *what)
{
    (void)cudaGetLastError(); /* clear it unless it is sticky */
    return mx_error_set(status_of(err), "cuda: GPU %d: %s failed: %s (%s)", dev, what, cudaGetErrorString(err),
                        cudaGetErrorName(err));
}

#define CK(dev, call, what)                                                                                            \
    do {                                                                                                               \
        cudaError_t err_ = (call);                                                                                     \
        if (err_ != cudaSuccess)                                                                                       \
            return cuda_fail((dev), err_, what);                                                                       \
    } while (0)

/* cudaMalloc, and on failure MX_ERR_NOMEM naming the GPU, the size, what for, and what is free. */
static mx_status_t dev_alloc(int dev, void **ptr_p, size_t bytes, const char *what)
{
    void *ptr = NULL;
    cudaError_t err = cudaMalloc(&ptr, bytes ? bytes : 1);
    if (err == cudaSuccess) {
        *ptr_p = ptr;
        return MX_OK;
    }
    (void)cudaGetLastError();
    size_t free_b = 0, total_b = 0;
    if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) {
        (void)cudaGetLastError();
        return mx_error_set(status_of(err), "cuda: GPU %d: cudaMalloc of %zu bytes for %s failed: %s", dev, bytes, what,
                            cudaGetErrorString(err));
    }
    return mx_error_set(status_of(err),
                        "cuda: GPU %d: cudaMalloc of %zu bytes for %s failed: %s (%zu MiB free of %zu MiB; "
                        "other processes or ranks on this GPU hold the rest)",
                        dev, bytes, what, cudaGetErrorString(err), free_b >> 20, total_b >> 20);
}

/* ------------------------------------------------------------ probe / supports */

static mx_status_t cuda_probe(mx_device_info_t *info_p)
{
    int n = 0;
    cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess || n <= 0) {
        (void)cudaGetLastError();
        return mx_error_set(MX_ERR_NO_DEVICE, "cuda: no usable CUDA device (%s)",
                            err != cudaSuccess ? cudaGetErrorString(err) : "cudaGetDeviceCount found 0 devices");
    }
    int dev = 0;
    const char *env = getenv("MXEP_CUDA_DEVICE");
    if (env && *env) {
        char *end = NULL;
        long v = strtol(env, &end, 10);
        if (*end || v < 0 || v >= n)
            return mx_error_set(MX_ERR_INVALID, "cuda: MXEP_CUDA_DEVICE=%s: expected an ordinal in [0, %d)", env, n);
        dev = (int)v;
    }
    struct cudaDeviceProp prop;
    err = cudaGetDeviceProperties(&prop, dev);
    if (err != cudaSuccess)
        return mx_error_set(MX_ERR_NO_DEVICE, "cuda: device %d: %s", dev, cudaGetErrorString(err));
    mx_device_info_t info;
    memset(&info, 0, sizeof info);
    snprintf(info.name, sizeof info.name, "%.100s (sm_%d%d)", prop.name, prop.major, prop.minor);
    snprintf(info.isa, sizeof info.isa, "sm_%d%d%s", prop.major, prop.minor, prop.major == 9 ? "a" : "");
    info.device_index = dev;
    info.cores = prop.multiProcessorCount;
    info.memory = prop.totalGlobalMem;
    info.flags = (unsigned)(prop.major * 10 + prop.minor);
    *info_p = info;
    return MX_OK;
}

/* Whether environment variable `name` is set to exactly `value`. */
static int env_is(const char *name, const char *value)
{
    const char *e = getenv(name);
    return e && !strcmp(e, value);
}

mx_status_t mxi_cuda_check_settings(void)
{
    char msg[256];
    if (mxi_gpu_check_settings(msg, sizeof msg) != 0)
        return mx_error_set(MX_ERR_INVALID, "cuda: %s", msg);
    return MX_OK;
}

/* W8A8 runs on the FP8 tensor cores (E4M3 token rows, MXG_W_FP8X) on sm_90, the
 * only FP8 target this build compiles MMA code for, unless MXEP_CUDA_FP8MMA=0 asks
 * for the BF16 tensor cores (E4M3 decoded exactly to BF16) as everywhere else. */
static int scheme_wfmt(mx_scheme_t s, int cc)
{
    if (s == MX_SCHEME_W8A8 && cc == 90 && !env_is("MXEP_CUDA_FP8MMA", "0"))
        return MXG_W_FP8X;
    return s == MX_SCHEME_W16A16 ? MXG_W_BF16 : (s == MX_SCHEME_W4A16 || s == MX_SCHEME_W4A8) ? MXG_W_FP4 : MXG_W_FP8;
}

static int cuda_supports(const mx_device_info_t *dev, const mx_moe_desc_t *desc, char *reason, size_t reason_len)
{
#define NO(...)                                                                                                        \
    do {                                                                                                               \
        if (reason && reason_len)                                                                                      \
            snprintf(reason, reason_len, __VA_ARGS__);                                                                 \
        return 0;                                                                                                      \
    } while (0)
    if (!dev)
        NO("no device");
    if (dev->flags < 80)
        NO("compute capability %u.%u < 8.0 (needs BF16 mma.sync)", dev->flags / 10, dev->flags % 10);
    /* the description's own sense; H and I up to 2^20 on this backend */
    if (!mx_moe_desc_check(desc, (size_t)1 << 20, reason, reason_len))
        return 0;
    if (reason && reason_len)
        snprintf(reason, reason_len, "%s %s on %s%s", mx_scheme_name(desc->scheme), mx_act_name(desc->act), dev->isa,
                 scheme_wfmt(desc->scheme, (int)dev->flags) == MXG_W_FP8X ? " (E4M3 x E4M3 tensor cores)" : "");
    return 1;
#undef NO
}

/* ------------------------------------------------------------ prepack */

static mx_status_t check_matrix(const mx_matrix_t *m, int wfmt, size_t rows, size_t cols, int j, const char *name)
{
    static const mx_wfmt_t want[4] = {MX_WFMT_BF16, MX_WFMT_MXFP4, MX_WFMT_FP8, MX_WFMT_FP8};
    if (m->fmt != want[wfmt] || !m->data)
        return mx_error_set(MX_ERR_INVALID, "cuda prepack: expert %d %s is %s (data %s), expected %s", j, name,
                            mx_wfmt_name(m->fmt), m->data ? "set" : "NULL", mx_wfmt_name(want[wfmt]));
    if (m->rows != rows || m->cols != cols)
        return mx_error_set(MX_ERR_INVALID, "cuda prepack: expert %d %s: shape %zux%zu, expected %zux%zu", j, name,
                            m->rows, m->cols, rows, cols);
    if (wfmt == MXG_W_FP4 && (!m->scales || cols % 32))
        return mx_error_set(MX_ERR_INVALID, "cuda prepack: expert %d %s: MXFP4 needs E8M0 scales and cols %% 32 == 0",
                            j, name);
    if (mxg_wfmt_fp8(wfmt) && (!m->scales || (m->scale_kind != MX_WSCALE_BLOCK && m->scale_kind != MX_WSCALE_CHANNEL &&
                                              m->scale_kind != MX_WSCALE_TENSOR)))
        return mx_error_set(MX_ERR_INVALID,
                            "cuda prepack: expert %d %s: FP8 needs float scales (block 128x128, channel or tensor)", j,
                            name);
    return MX_OK;
}

/* Packs one matrix of one expert into host buffers laid out as gpu_layout.h says.
 * rowmap(n) gives the canonical row of packed row n or -1 for padding. */
static void pack_matrix(const mx_matrix_t *m, int wfmt, gmat_t *g, const int *rowmap, uint8_t *w, uint8_t *sc,
                        float *wsf, const float *bias_src, float *bias)
{
    const size_t cols = m->cols;
    memset(w, 0, g->w_es);
    if (wfmt == MXG_W_FP4)
        memset(sc, 127, g->sc_es); /* padding blocks: scale 1 (their codes are zero) */
    for (int n = 0; n < g->N_pad; n++) {
        const int src = rowmap[n];
        if (src >= 0) {
            for (size_t k = 0; k < cols; k++) {
                int sh = 0;
                const size_t o = mxg_w_offset(wfmt, g->N_pad, n, (int)k, &sh);
                if (wfmt == MXG_W_FP4) {
                    uint8_t byte = ((const uint8_t *)m->data)[(size_t)src * (cols / 2) + k / 2];
                    uint8_t nib = (k & 1) ? (byte >> 4) : (byte & 15);
                    for (int j = 0; j < 4; j++)
                        if ((nib >> j) & 1) {
                            const int bit = mxg_fp4_bit(sh, j); /* little-endian step word */
                            w[o + (size_t)(bit >> 3)] |= (uint8_t)(1u << (bit & 7));
                        }
                } else if (mxg_wfmt_fp8(wfmt)) {
                    w[o] = ((const uint8_t *)m->data)[(size_t)src * cols + k];
                } else {
                    memcpy(w + o, (const uint16_t *)m->data + (size_t)src * cols + k, 2);
                }
            }
            if (wfmt == MXG_W_FP4)
                for (size_t blk = 0; blk < cols / 32; blk++) {
                    const uint8_t e8 = ((const uint8_t *)m->scales)[(size_t)src * (cols / 32) + blk];
                    sc[mxg_sc_offset(g->N_pad, n, (int)blk)] = e8;
                    g->sc_big |= e8 > 128;
                }
        }
        if (mxg_wfmt_fp8(wfmt)) {
            const float *s = (const float *)m->scales;
            for (int kb = 0; kb < g->wsf_kb; kb++) {
                float v = 0.0f;
                if (src >= 0) {
                    if (m->scale_kind == MX_WSCALE_BLOCK)
                        v = s[(size_t)(src / 128) * ((cols + 127) / 128) + kb];
                    else if (m->scale_kind == MX_WSCALE_CHANNEL)
                        v = s[src];
                    else
                        v = s[0];
                }
                wsf[(size_t)kb * g->N_pad + n] = v;
            }
        }
        bias[n] = (src >= 0 && bias_src) ? bias_src[src] : 0.0f;
    }
}

static void gmat_free(gmat_t *g)
{
    cudaFree(g->w);
    cudaFree(g->sc);
    cudaFree(g->wsf);
    cudaFree(g->bias);
    memset(g, 0, sizeof *g);
}

static void dbuf_free(dbuf_t *b)
{
    if (b->ptr)
        cudaFree(b->ptr);
    b->ptr = NULL;
    b->cap = 0;
}

static void cuda_release(mx_backend_packed_t *p)
{
    if (!p)
        return;
    if (p->device >= 0)
        (void)cudaSetDevice(p->device);
    /* nothing may still run on the memory freed below */
    if (p->stream)
        (void)cudaStreamSynchronize(p->stream);
    gmat_free(&p->m1);
    gmat_free(&p->m2);
    dbuf_t *bufs[] = {&p->x,   &p->meta, &p->xq, &p->grp1, &p->grp2, &p->rs1,
                      &p->rs2, &p->hid,  &p->hq, &p->y,    &p->out,  &p->stash};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        dbuf_free(bufs[i]);
    if (p->stream && !p->stream_shared)
        (void)cudaStreamDestroy(p->stream);
    (void)cudaGetLastError(); /* release reports nothing; leave no error behind for the next call */
    pthread_mutex_destroy(&p->lock);
    free(p->hmeta);
    free(p->in_scale);
    free(p->down_in_scale);
    free(p);
}

static mx_status_t gmat_alloc(gmat_t *g, int dev, int wfmt, int E, size_t N, size_t K, int block_scales,
                              const char *name)
{
    g->N = (int)N;
    g->K = (int)K;
    g->N_pad = (int)mxg_round_up(N, MXG_NPAD);
    g->K_pad = (int)mxg_round_up(K, MXG_BK);
    g->w_es = (size_t)g->K_pad / MXG_BK * (size_t)(g->N_pad / 16) * 32 * mxg_thread_bytes(wfmt);
    g->sc_es = wfmt == MXG_W_FP4 ? (size_t)g->K_pad / MXG_BK * (size_t)(g->N_pad / 16) * 32 : 0;
    g->wsf_kb = block_scales ? (g->K_pad + 127) / 128 : 1;
    g->flush_w = block_scales;
    g->sc_big = 0;
    g->wsf_es = mxg_wfmt_fp8(wfmt) ? (size_t)g->wsf_kb * g->N_pad : 0;
    g->bias_es = (size_t)g->N_pad;
    char what[96];
    snprintf(what, sizeof what, "%s packed weights of %d experts", name, E);
    mx_status_t st = dev_alloc(dev, (void **)&g->w, g->w_es * E, what);
    if (st == MX_OK && g->sc_es) {
        snprintf(what, sizeof what, "%s MXFP4 scales of %d experts", name, E);
        st = dev_alloc(dev, (void **)&g->sc, g->sc_es * E, what);
    }
    if (st == MX_OK && g->wsf_es) {
        snprintf(what, sizeof what, "%s FP8 scales of %d experts", name, E);
        st = dev_alloc(dev, (void **)&g->wsf, g->wsf_es * E * sizeof(float), what);
    }
    if (st == MX_OK) {
        snprintf(what, sizeof what, "%s biases of %d experts", name, E);
        st = dev_alloc(dev, (void **)&g->bias, g->bias_es * E * sizeof(float), what);
    }
    return st;
}

/* Uploads one expert's packed matrix on the packed object's stream and waits:
 * the host staging buffers are reused for the next expert. */
static mx_status_t upload_expert(const mx_backend_packed_t *p, gmat_t *g, int j, const uint8_t *w, const uint8_t *sc,
                                 const float *wsf, const float *bias)
{
    const int dev = p->device;
    cudaStream_t s = p->stream;
    CK(dev, cudaMemcpyAsync(g->w + g->w_es * j, w, g->w_es, cudaMemcpyHostToDevice, s), "cudaMemcpyAsync (weights)");
    if (g->sc_es)
        CK(dev, cudaMemcpyAsync(g->sc + g->sc_es * j, sc, g->sc_es, cudaMemcpyHostToDevice, s),
           "cudaMemcpyAsync (scales)");
    if (g->wsf_es)
        CK(dev, cudaMemcpyAsync(g->wsf + g->wsf_es * j, wsf, g->wsf_es * sizeof(float), cudaMemcpyHostToDevice, s),
           "cudaMemcpyAsync (scales)");
    CK(dev, cudaMemcpyAsync(g->bias + g->bias_es * j, bias, g->bias_es * sizeof(float), cudaMemcpyHostToDevice, s),
       "cudaMemcpyAsync (biases)");
    CK(dev, cudaStreamSynchronize(s), "cudaStreamSynchronize (weight upload)");
    return MX_OK;
}

static mx_status_t prepack_body(mx_backend_packed_t *p, const mx_expert_weights_t *experts)
{
    const mx_moe_desc_t *d = &p->desc;
    const int E = p->n_experts, wf = p->wfmt;
    const size_t H = d->hidden, I = d->inter;
    int blk1 = 0, blk2 = 0;
    for (int j = 0; j < E; j++) {
        mx_status_t st = check_matrix(&experts[j].gate_up, wf, 2 * I, H, j, "gate_up");
        if (st == MX_OK)
            st = check_matrix(&experts[j].down, wf, H, I, j, "down");
        if (st != MX_OK)
            return st;
        if (mxg_wfmt_fp8(wf)) {
            int b1 = experts[j].gate_up.scale_kind == MX_WSCALE_BLOCK,
                b2 = experts[j].down.scale_kind == MX_WSCALE_BLOCK;
            if (j > 0 && (b1 != blk1 || b2 != blk2))
                return mx_error_set(MX_ERR_INVALID, "cuda prepack: expert %d: FP8 scale kind differs from expert 0", j);
            blk1 = b1;
            blk2 = b2;
        }
        if (d->scheme == MX_SCHEME_W4A8 && !(experts[j].input_scale > 0.0f && experts[j].down_input_scale > 0.0f))
            return mx_error_set(
                MX_ERR_INVALID,
                "cuda prepack: expert %d: W4A8 needs input_scale > 0 and down_input_scale > 0 (got %g, %g)", j,
                (double)experts[j].input_scale, (double)experts[j].down_input_scale);
    }
    /* GEMM1 rows: 16-row groups of 8 gate and 8 up rows (gpu_layout.h), so 2 * I rounded to 16 */
    mx_status_t st = gmat_alloc(&p->m1, p->device, wf, E, 2 * mxg_round_up(I, 8), H, blk1, "gate_up");
    if (st == MX_OK)
        st = gmat_alloc(&p->m2, p->device, wf, E, H, I, blk2, "down");
    if (st != MX_OK)
        return st;
    /* the padded I columns give act(0, 0) = 0 */
    int *map1 = malloc(sizeof(int) * (size_t)p->m1.N_pad), *map2 = malloc(sizeof(int) * (size_t)p->m2.N_pad);
    size_t hw = p->m1.w_es > p->m2.w_es ? p->m1.w_es : p->m2.w_es;
    size_t hs = p->m1.sc_es > p->m2.sc_es ? p->m1.sc_es : p->m2.sc_es;
    size_t hf = p->m1.wsf_es > p->m2.wsf_es ? p->m1.wsf_es : p->m2.wsf_es;
    uint8_t *hbw = malloc(hw), *hbs = malloc(hs ? hs : 1);
    size_t hb = (size_t)(p->m1.N_pad > p->m2.N_pad ? p->m1.N_pad : p->m2.N_pad);
    float *hbf = malloc(sizeof(float) * (hf ? hf : 1)), *hbb = malloc(sizeof(float) * hb);
    p->in_scale = calloc((size_t)E, sizeof(float));
    p->down_in_scale = calloc((size_t)E, sizeof(float));
    if (!map1 || !map2 || !hbw || !hbs || !hbf || !hbb || !p->in_scale || !p->down_in_scale) {
        st = mx_error_set(MX_ERR_NOMEM, "cuda prepack: host staging of %zu bytes", hw);
        goto out;
    }
    for (int n = 0; n < p->m1.N_pad; n++) {
        int u = 0;
        size_t i = (size_t)mxg_gateup_index(n, &u);
        map1[n] = i >= I ? -1 : d->order == MX_GATEUP_INTERLEAVED ? (int)(2 * i + (size_t)u) : (int)(u ? I + i : i);
    }
    for (int n = 0; n < p->m2.N_pad; n++)
        map2[n] = (size_t)n < H ? n : -1;
    for (int j = 0; j < E && st == MX_OK; j++) {
        pack_matrix(&experts[j].gate_up, wf, &p->m1, map1, hbw, hbs, hbf, experts[j].gate_up_bias, hbb);
        st = upload_expert(p, &p->m1, j, hbw, hbs, hbf, hbb);
        if (st != MX_OK)
            break;
        pack_matrix(&experts[j].down, wf, &p->m2, map2, hbw, hbs, hbf, experts[j].down_bias, hbb);
        st = upload_expert(p, &p->m2, j, hbw, hbs, hbf, hbb);
        p->in_scale[j] = experts[j].input_scale;
        p->down_in_scale[j] = experts[j].down_input_scale;
    }
out:
    free(map1);
    free(map2);
    free(hbw);
    free(hbs);
    free(hbf);
    free(hbb);
    return st;
}

static mx_status_t cuda_prepack(const mx_device_info_t *dev, const mx_moe_desc_t *desc,
                                const mx_expert_weights_t *experts, int n_experts, mx_backend_packed_t **packed_p)
{
    if (!dev || !desc || !packed_p || n_experts < 0 || (n_experts > 0 && !experts))
        return mx_error_set(MX_ERR_INVALID, "cuda prepack: NULL argument or negative expert count");
    char why[MX_REASON_MAX];
    if (!cuda_supports(dev, desc, why, sizeof why))
        return mx_error_set(MX_ERR_UNSUPPORTED, "cuda prepack: layer not supported: %s", why);
    mx_status_t cst = mxi_cuda_check_settings();
    if (cst != MX_OK)
        return cst;
    mx_backend_packed_t *p = calloc(1, sizeof *p);
    if (!p)
        return mx_error_set(MX_ERR_NOMEM, "cuda prepack: %zu bytes", sizeof *p);
    if (pthread_mutex_init(&p->lock, NULL) != 0) {
        free(p);
        return mx_error_set(MX_ERR_INTERNAL, "cuda prepack: pthread_mutex_init failed");
    }
    p->desc = *desc;
    p->n_experts = n_experts;
    p->device = dev->device_index;
    p->force_cfg = -1;
    p->cc = (int)dev->flags;
    p->wfmt = scheme_wfmt(desc->scheme, p->cc);
    p->mma = p->cc == 90 ? MXG_MMA_WGMMA : MXG_MMA_SYNC;
    if (env_is("MXEP_CUDA_MMA", "sync"))
        p->mma = MXG_MMA_SYNC;
    if (p->wfmt == MXG_W_FP8X) /* E4M3 tokens: mma.sync .e4m3 in every tile (moe_kernels.cu, gemm_tc) */
        p->mma = MXG_MMA_SYNC;
    p->pdl = p->cc >= 90; /* and the kernels carry griddepcontrol: below, once the device is set */
    if (env_is("MXEP_CUDA_PDL", "0"))
        p->pdl = 0;
    p->tokcopy = env_is("MXEP_CUDA_TOKCOPY", "1");
    mx_status_t st = MX_OK;
    cudaError_t err = cudaSetDevice(dev->device_index);
    if (err != cudaSuccess)
        st = cuda_fail(p->device, err, "cudaSetDevice (creating the context; out of device memory?)");
    if (st == MX_OK && p->pdl && !mxi_gpu_has_griddep())
        p->pdl = 0; /* a newer GPU running the compute_80 PTX: no griddepcontrol.wait in the kernels */
    /* wgmma and the FP8 MMAs only where the loaded code has them (a build without
     * 90a code traps in wgmma; without sm_89+ code the FP8 MMA is compiled out) */
    int ferr = 0, feats = p->feats = st == MX_OK ? mxi_gpu_arch_feats(&ferr) : 0;
    if (st == MX_OK && feats < 0 && ferr == (int)cudaErrorNoKernelImageForDevice)
        st = mx_error_set(MX_ERR_UNSUPPORTED,
                          "cuda prepack: device %d (compute capability %d.%d): no kernel of this build runs on it "
                          "(built for CMAKE_CUDA_ARCHITECTURES; the default is 90a-real;80-virtual)",
                          dev->device_index, p->cc / 10, p->cc % 10);
    else if (st == MX_OK && feats < 0)
        st = cuda_fail(dev->device_index, (cudaError_t)ferr, "probing the loaded kernels (4 bytes, one launch)");
    if (st == MX_OK && !(feats & MXG_FEAT_WGMMA))
        p->mma = MXG_MMA_SYNC;
    if (st == MX_OK && !(feats & MXG_FEAT_FP8MMA) && p->wfmt == MXG_W_FP8X)
        p->wfmt = MXG_W_FP8; /* E4M3 decoded exactly to BF16, as on every other device */
    int l2 = 0;
    if (st == MX_OK && p->pdl && !env_is("MXEP_CUDA_L2PF", "0") &&
        cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, dev->device_index) == cudaSuccess && l2 > 0)
        p->l2pf_max = (size_t)l2 / 2;
    (void)cudaGetLastError();
    if (st == MX_OK) {
        err = cudaStreamCreateWithFlags(&p->stream, cudaStreamNonBlocking);
        if (err != cudaSuccess) {
            p->stream = NULL;
            st = cuda_fail(p->device, err, "cudaStreamCreateWithFlags");
        }
    }
    if (st == MX_OK && n_experts > 0)
        st = prepack_body(p, experts);
    if (st != MX_OK) {
        cuda_release(p);
        return st;
    }
    *packed_p = p;
    return MX_OK;
}

static size_t cuda_workspace_size(const mx_backend_packed_t *packed, size_t max_tokens, size_t max_assign)
{
    /* Device scratch lives in the packed object: grown on the first batch that
     * needs more (stream-ordered, see the top of this file) and kept; run()
     * needs no host workspace. (A `reserve` entry in the backend vtable would
     * let the worker grow it once at load time: proposed in issue 7.) */
    (void)packed;
    (void)max_tokens;
    (void)max_assign;
    return 0;
}

/* ------------------------------------------------------------ run */

/* Grows one scratch buffer to at least `bytes`. The old buffer may still be in
 * use by work on the stream (the bench launches layers without a fetch; a run
 * that failed half-way): wait for the stream before freeing it. The new buffer
 * is zeroed ON THE STREAM, so the zeros land before any later copy or kernel
 * of this packed object writes it. */
static mx_status_t dbuf_need(mx_backend_packed_t *p, dbuf_t *b, size_t bytes, const char *what)
{
    if (bytes <= b->cap)
        return MX_OK;
    CK(p->device, cudaStreamSynchronize(p->stream), "cudaStreamSynchronize (before growing scratch)");
    if (b->ptr) {
        cudaError_t err = cudaFree(b->ptr);
        b->ptr = NULL;
        b->cap = 0;
        if (err != cudaSuccess)
            return cuda_fail(p->device, err, "cudaFree (scratch)");
    }
    size_t cap = bytes + bytes / 4 + 256;
    char why[96];
    snprintf(why, sizeof why, "run scratch (%s)", what);
    void *ptr = NULL;
    mx_status_t st = dev_alloc(p->device, &ptr, cap, why);
    if (st != MX_OK)
        return st;
    /* padded columns of the activation buffers must read as zeros */
    cudaError_t err = cudaMemsetAsync(ptr, 0, cap, p->stream);
    if (err != cudaSuccess) {
        mx_status_t fs = cuda_fail(p->device, err, "cudaMemsetAsync (zeroing scratch)");
        (void)cudaStreamSynchronize(p->stream);
        cudaFree(ptr);
        (void)cudaGetLastError();
        return fs;
    }
    b->ptr = ptr;
    b->cap = cap;
    return MX_OK;
}

/* GEMM2's K-segment stash (the tensor-core tiles): FP32 sums for every CTA's
 * tile, 128 output columns by the plan's tile rows; for reserve (any_cfg), the
 * most tiles NA assignments can take (each expert's last tile partly filled)
 * in the largest tile (L). */
static size_t stash_bytes(const mx_backend_packed_t *p, size_t NA, int any_cfg)
{
    const size_t cols = ((size_t)p->desc.hidden + 127) / 128 * 128;
    const size_t rows = any_cfg ? NA + ((size_t)p->n_experts + 1) * (size_t)mxi_gpu_cfg_bm(MXG_CFG_L)
                                : (size_t)p->n_mtiles * (size_t)mxi_gpu_cfg_bm(p->cfg);
    return cols * rows * sizeof(float);
}

/* Every device scratch buffer a batch of T tokens and NA assignments needs
 * (dev_bytes of metadata; weighted_sum adds the FP32 output) in the staged
 * tile configuration, or (any_cfg: reserve) in whichever a batch takes. */
static mx_status_t scratch_need(mx_backend_packed_t *p, size_t T, size_t NA, size_t dev_bytes, int weighted_sum,
                                int any_cfg)
{
    const size_t H = p->desc.hidden;
    const size_t K1 = (size_t)p->m1.K_pad, K2 = (size_t)p->m2.K_pad;
    mx_status_t st = dbuf_need(p, &p->x, T * K1 * 2, "tokens");
    if (st == MX_OK)
        st = dbuf_need(p, &p->meta, dev_bytes, "metadata");
    if (st == MX_OK)
        st = dbuf_need(p, &p->hid, NA * K2 * 2, "hidden activations");
    if (st == MX_OK)
        st = dbuf_need(p, &p->y, NA * H * 2, "expert outputs");
    if (st == MX_OK && weighted_sum)
        st = dbuf_need(p, &p->out, T * H * 4, "weighted sum");
    int quant = p->desc.scheme == MX_SCHEME_W4A8 || p->desc.scheme == MX_SCHEME_W8A8;
    if (st == MX_OK && (quant || any_cfg || p->cfg == MXG_CFG_S)) /* S: GEMM1 reads a permuted copy */
        st = dbuf_need(p, &p->xq, NA * K1 * 2, "quantized tokens");
    if (st == MX_OK && p->wfmt == MXG_W_FP8X)
        st = dbuf_need(p, &p->hq, NA * K2, "quantized hidden activations (E4M3)");
    if (st == MX_OK && (any_cfg || p->cfg != MXG_CFG_S) && mxg_kseg((int)(K2 / MXG_BK)) > 0)
        st = dbuf_need(p, &p->stash, stash_bytes(p, NA, any_cfg), "K segment stash");
    if (st == MX_OK && quant)
        st = dbuf_need(p, &p->rs1, NA * 4, "activation scales");
    if (st == MX_OK && quant)
        st = dbuf_need(p, &p->rs2, NA * 4, "activation scales");
    if (st == MX_OK && p->desc.scheme == MX_SCHEME_W8A8 && p->desc.act_group == 128) {
        st = dbuf_need(p, &p->grp1, NA * ((K1 + 127) / 128) * 4, "group scales");
        if (st == MX_OK)
            st = dbuf_need(p, &p->grp2, NA * ((K2 + 127) / 128) * 4, "group scales");
    }
    return st;
}

/* Waits for everything enqueued on the stream after an error, keeping the
 * error's detail (run() must not return while a copy may still touch the
 * caller's buffers or a kernel the scratch). */
static mx_status_t settle(const mx_backend_packed_t *p, mx_status_t st)
{
    if (p && p->stream) {
        (void)cudaStreamSynchronize(p->stream);
        (void)cudaGetLastError();
    }
    return st;
}

static mx_status_t stage_body(mx_backend_packed_t *p, const mx_run_args_t *a)
{
    const int E = p->n_experts, dev = p->device;
    const size_t H = p->desc.hidden, T = a->n_tokens, NA = a->n_assign;
    mxg_plan_dims_t dims;
    mx_status_t st = mxi_gpu_plan_dims(T, NA, E, &dims);
    if (st != MX_OK)
        return st;
    CK(dev, cudaSetDevice(dev), "cudaSetDevice");

    /* host metadata: ints then floats, one upload (gpu_plan.c) */
    if (dims.host_bytes > p->hmeta_cap) {
        void *nb = realloc(p->hmeta, dims.host_bytes);
        if (!nb)
            return mx_error_set(MX_ERR_NOMEM, "cuda run: %zu bytes of host metadata", dims.host_bytes);
        p->hmeta = nb;
        p->hmeta_cap = dims.host_bytes;
    }
    mxg_plan_info_t info;
    mxi_gpu_plan_build(a, &dims, p->in_scale, p->down_in_scale, p->force_cfg, p->hmeta, &info);
    p->cfg = info.cfg;
    p->n_mtiles = info.n_mtiles;
    p->max_cnt = info.max_cnt;

    /* device buffers (grown in stream order) */
    const size_t K1 = (size_t)p->m1.K_pad;
    st = scratch_need(p, T, NA, dims.dev_bytes, a->mode == MX_OUT_WEIGHTED_SUM, 0);
    if (st != MX_OK)
        return st;
    mxg_plan_views_t dv;
    mxi_gpu_plan_views(p->meta.ptr, &dims, &dv);
    p->d_a_tok = dv.a_tok;
    p->d_out_rows = dv.out_rows;
    p->d_tile_e = dv.tile_e;
    p->d_tile_m0 = dv.tile_m0;
    p->d_off = dv.off;
    p->d_cnt = dv.cnt;
    p->d_tok_off = dv.tok_off;
    p->d_tok_list = dv.tok_list;
    p->d_w = dv.w;
    p->d_rs1 = dv.rs1;
    p->d_rs2 = dv.rs2;
    /* Uploads on the stream. From pageable memory cudaMemcpyAsync returns once
     * the bytes are staged; from pinned memory the DMA may still read the
     * source after it returns: run() waits for the stream before returning. */
    CK(dev, cudaMemcpyAsync(p->meta.ptr, p->hmeta, dims.dev_bytes, cudaMemcpyHostToDevice, p->stream),
       "cudaMemcpyAsync (metadata)");
    CK(dev, cudaMemcpy2DAsync(p->x.ptr, K1 * 2, a->x, H * 2, H * 2, T, cudaMemcpyHostToDevice, p->stream),
       "cudaMemcpy2DAsync (tokens)");
    if (a->mode == MX_OUT_WEIGHTED_SUM)
        CK(dev, cudaMemcpyAsync(p->out.ptr, a->out_f32, T * H * 4, cudaMemcpyHostToDevice, p->stream),
           "cudaMemcpyAsync (weighted sum in)");
    return MX_OK;
}

mx_status_t mxi_cuda_stage(const mx_backend_packed_t *cpacked, const mx_run_args_t *a)
{
    mx_backend_packed_t *p = (mx_backend_packed_t *)cpacked; /* scratch is the backend's own */
    if (!p || !a)
        return mx_error_set(MX_ERR_INVALID, "cuda run: NULL packed weights or arguments");
    p->staged = 0; /* a failed stage leaves nothing for layer() or fetch() to run on */
    mx_status_t st = mxi_gpu_plan_check(a, p->n_experts, "cuda run");
    if (st != MX_OK)
        return st;
    p->n_tokens = a->n_tokens;
    p->n_assign = a->n_assign;
    p->mode = a->mode;
    if (a->n_assign == 0) {
        p->staged = 1;
        return MX_OK;
    }
    st = stage_body(p, a);
    if (st != MX_OK)
        return settle(p, st);
    p->staged = 1;
    return MX_OK;
}

static void gemm_common(const mx_backend_packed_t *p, const gmat_t *g, mxg_gemm_params_t *q)
{
    memset(q, 0, sizeof *q);
    q->wfmt = p->wfmt;
    q->mma = p->mma;
    q->w = g->w;
    q->w_estride = g->w_es;
    q->sc = g->sc;
    q->sc_estride = g->sc_es;
    q->wsf = g->wsf;
    q->wsf_estride = g->wsf_es;
    q->wsf_kb = g->wsf_kb;
    q->bias = g->bias;
    q->bias_estride = g->bias_es;
    q->N = g->N;
    q->N_pad = g->N_pad;
    q->K_pad = g->K_pad;
    q->tile_e = p->d_tile_e;
    q->tile_m0 = p->d_tile_m0;
    q->off = p->d_off;
    q->cnt = p->d_cnt;
    q->n_mtiles = p->n_mtiles;
    const int bm = mxi_gpu_cfg_bm(p->cfg);
    q->tile_rows = p->max_cnt < bm ? p->max_cnt : bm;
    q->flush = g->flush_w;
    q->sc_big = g->sc_big;
    /* the decode kernel reads each m tile's expert matrix once */
    q->l2pf = p->cfg == MXG_CFG_S && (size_t)p->n_mtiles * (g->w_es + g->sc_es) <= p->l2pf_max;
}

#define KL(call, what)                                                                                                 \
    do {                                                                                                               \
        int rc_ = (call);                                                                                              \
        if (rc_ != 0)                                                                                                  \
            return cuda_fail(p->device, (cudaError_t)rc_, what);                                                       \
    } while (0)

mx_status_t mxi_cuda_layer(const mx_backend_packed_t *p)
{
    if (!p || !p->staged)
        return mx_error_set(MX_ERR_INVALID, "cuda run: no staged batch");
    if (p->n_assign == 0)
        return MX_OK;
    const size_t NA = p->n_assign;
    const int K1 = p->m1.K_pad, K2 = p->m2.K_pad;
    const mx_scheme_t sch = p->desc.scheme;
    const int grp = sch == MX_SCHEME_W8A8 && p->desc.act_group == 128;
    const int x8 = p->wfmt == MXG_W_FP8X; /* token rows as E4M3 bytes for the FP8 tensor cores */
    mxg_gemm_params_t g1, g2;
    gemm_common(p, &p->m1, &g1);
    gemm_common(p, &p->m2, &g2);

    /* GEMM1 input. The decode kernel (S) reads token rows with their columns in
     * mxg_tok_pos order: the quantizer writes them so, or, for the schemes that
     * do not quantize, a copy kernel does. When no expert has more than 8 rows
     * (one n8 token tile), the decode kernel gathers the words of the staged
     * rows itself instead (a_nat): no copy kernel and no launch before GEMM1,
     * the same bits (MXEP_CUDA_TOKCOPY=1 copies always; with two tiles the
     * gather's loads cost more than the copy: bench/RESULTS.md, session 16).
     * GEMM1's decode epilogue writes GEMM2's input in mxg_tok_pos order. Pad
     * columns are written as zeros either way (the buffers serve batches of both
     * orders); the staged rows' pad columns are zeros from their allocation. */
    const int perm = p->cfg == MXG_CFG_S;
    const int quant1 = sch == MX_SCHEME_W4A8 || sch == MX_SCHEME_W8A8;
    const int nat = perm && !quant1 && !p->tokcopy && p->max_cnt <= 8;
    if (quant1 || (perm && !nat)) {
        mxg_quant_params_t q = {0};
        q.mode = !quant1 ? MXG_Q_COPY : sch == MX_SCHEME_W4A8 ? MXG_Q_STATIC : grp ? MXG_Q_GROUP128 : MXG_Q_TOKEN;
        q.in = p->x.ptr;
        q.ld_in = K1;
        q.src_rows = p->d_a_tok;
        if (x8)
            q.out8 = (uint8_t *)p->xq.ptr;
        else
            q.out = p->xq.ptr;
        q.ld_out = K1;
        q.K = (int)p->desc.hidden;
        q.perm_out = perm;
        q.pad_out = K1;
        q.n_rows = (int)NA;
        /* the layer's first kernel, a dependent launch too: behind another layer's
         * kernels its few blocks start while those end (T = 8, 10 layers back to
         * back: 84.5% -> 86.5% of HBM). GEMM1 first (the gather) is not: its CTAs
         * would hold SM room the kernel before needs (T = 1: 49% -> 47.5%;
         * bench/RESULTS.md, session 17). It waits before reading the token rows. */
        q.pdl = p->pdl;
        if (quant1) {
            q.row_scale = sch == MX_SCHEME_W4A8 ? p->d_rs1 : p->rs1.ptr;
            q.grp = p->grp1.ptr;
            q.n_grp = (K1 + 127) / 128;
        }
        KL(mxi_gpu_quant_launch(&q, p->stream),
           quant1 ? "activation quantization (GEMM1)" : "token copy (GEMM1, decode order)");
        g1.pdl = p->pdl; /* GEMM1 follows the quantizer / copy */
        g1.a = p->xq.ptr;
        g1.a_rows = NULL;
        if (quant1) {
            g1.a_row_scale = grp ? NULL : q.row_scale;
            g1.a_grp_scale = grp ? p->grp1.ptr : NULL;
            g1.a_grp_n = q.n_grp;
            if (grp)
                g1.flush = 1;
        }
    } else {
        g1.a = p->x.ptr;
        g1.a_rows = p->d_a_tok;
        g1.a_nat = nat;
    }
    g1.lda = K1;
    g1.epi = MXG_EPI_ACT;
    g1.act = (int)p->desc.act;
    g1.limit = p->desc.swiglu_limit;
    g1.alpha = p->desc.swiglu_alpha;
    g1.out = p->hid.ptr;
    g1.ldo = K2;
    KL(mxi_gpu_gemm_launch(&g1, p->cfg, p->stream), "GEMM1 (gate_up + activation) launch");

    /* GEMM2 input: the BF16 hidden activation, quantized in place where the scheme
     * says (into hq as E4M3 bytes for the FP8 tensor cores) */
    g2.a = x8 ? p->hq.ptr : p->hid.ptr;
    g2.lda = K2;
    if (sch == MX_SCHEME_W4A8 || sch == MX_SCHEME_W8A8) {
        mxg_quant_params_t q = {0};
        q.mode = sch == MX_SCHEME_W4A8 ? MXG_Q_STATIC : grp ? MXG_Q_GROUP128 : MXG_Q_TOKEN;
        q.in = p->hid.ptr;
        q.ld_in = K2;
        if (x8) {
            q.out8 = (uint8_t *)p->hq.ptr;
            q.pad_out = K2;
        } else {
            q.out = p->hid.ptr;
        }
        q.ld_out = K2;
        q.K = (int)p->desc.inter;
        q.perm_in = q.perm_out = perm; /* in place, in the order GEMM1 wrote */
        q.row_scale = sch == MX_SCHEME_W4A8 ? p->d_rs2 : p->rs2.ptr;
        q.grp = p->grp2.ptr;
        q.n_grp = (K2 + 127) / 128;
        q.n_rows = (int)NA;
        q.pdl = p->pdl;
        KL(mxi_gpu_quant_launch(&q, p->stream), "activation quantization (GEMM2)");
        g2.a_row_scale = grp ? NULL : q.row_scale;
        g2.a_grp_scale = grp ? p->grp2.ptr : NULL;
        g2.a_grp_n = q.n_grp;
        if (grp)
            g2.flush = 1;
    }
    g2.pdl = p->pdl;
    /* GEMM2 sums its K in two segments (mxg_kseg), the same in every tile configuration:
     * at one token per expert the decode kernel runs them in parallel */
    g2.kseg = mxg_kseg(K2 / MXG_BK);
    if (g2.kseg > 0 && p->cfg != MXG_CFG_S) {
        g2.stash = p->stash.ptr;
        g2.stash_floats = p->stash.cap / sizeof(float);
    }
    g2.epi = MXG_EPI_OUT;
    g2.out = p->y.ptr;
    g2.ldo = (int)p->desc.hidden;
    g2.out_rows = p->d_out_rows;
    KL(mxi_gpu_gemm_launch(&g2, p->cfg, p->stream), "GEMM2 (down + bias) launch");

    if (p->mode == MX_OUT_WEIGHTED_SUM) {
        mxg_combine_params_t c = {0};
        c.y = p->y.ptr;
        c.H = (int)p->desc.hidden;
        c.tok_off = p->d_tok_off;
        c.tok_list = p->d_tok_list;
        c.w = p->d_w;
        c.out = p->out.ptr;
        c.n_tokens = (int)p->n_tokens;
        c.pdl = p->pdl;
        KL(mxi_gpu_combine_launch(&c, p->stream), "weighted combine launch");
    }
    return MX_OK;
}

mx_status_t mxi_cuda_fetch(const mx_backend_packed_t *p, const mx_run_args_t *a)
{
    if (!p || !a || !p->staged)
        return mx_error_set(MX_ERR_INVALID, "cuda run: no staged batch");
    if (p->n_assign == 0)
        return MX_OK;
    const size_t H = p->desc.hidden;
    cudaError_t err;
    const char *what;
    if (p->mode == MX_OUT_PER_ASSIGNMENT) {
        what = "cudaMemcpyAsync (outputs)";
        err = cudaMemcpyAsync(a->out_bf16, p->y.ptr, p->n_assign * H * 2, cudaMemcpyDeviceToHost, p->stream);
    } else {
        what = "cudaMemcpyAsync (weighted sum out)";
        err = cudaMemcpyAsync(a->out_f32, p->out.ptr, p->n_tokens * H * 4, cudaMemcpyDeviceToHost, p->stream);
    }
    /* the only wait of a run; also where errors of the kernels show */
    cudaError_t serr = cudaStreamSynchronize(p->stream);
    if (err != cudaSuccess)
        return cuda_fail(p->device, err, what);
    if (serr != cudaSuccess)
        return cuda_fail(p->device, serr, "cudaStreamSynchronize (the layer's kernels and copies)");
    return MX_OK;
}

void *mxi_cuda_stream(const mx_backend_packed_t *p)
{
    return p ? (void *)p->stream : NULL;
}
mx_status_t mxi_cuda_share_stream(mx_backend_packed_t *p, const mx_backend_packed_t *owner)
{
    if (!p || !owner || p == owner || p->device != owner->device || owner->stream_shared)
        return mx_error_set(MX_ERR_INVALID, "cuda: share_stream needs two packed objects of one device, the owner "
                                            "with a stream of its own");
    CK(p->device, cudaSetDevice(p->device), "cudaSetDevice");
    CK(p->device, cudaStreamSynchronize(p->stream), "cudaStreamSynchronize (before taking another stream)");
    if (!p->stream_shared)
        (void)cudaStreamDestroy(p->stream);
    p->stream = owner->stream;
    p->stream_shared = 1;
    return MX_OK;
}
int mxi_cuda_staged_cfg(const mx_backend_packed_t *p)
{
    return p ? p->cfg : -1;
}
void mxi_cuda_force_cfg(mx_backend_packed_t *p, int cfg)
{
    if (p)
        p->force_cfg = cfg < 0 || cfg > MXG_CFG_L ? -1 : cfg;
}
int mxi_cuda_mma(const mx_backend_packed_t *p)
{
    return p ? p->mma : -1;
}
int mxi_cuda_fp8_mma(const mx_backend_packed_t *p)
{
    return p && p->wfmt == MXG_W_FP8X;
}
size_t mxi_cuda_scratch_bytes(const mx_backend_packed_t *p)
{
    if (!p)
        return 0;
    const dbuf_t *b[] = {&p->x,   &p->meta, &p->xq, &p->grp1, &p->grp2, &p->rs1,
                         &p->rs2, &p->hid,  &p->hq, &p->y,    &p->out,  &p->stash};
    size_t n = p->hmeta_cap;
    for (size_t i = 0; i < sizeof b / sizeof b[0]; i++)
        n += b[i]->cap;
    return n;
}
int mxi_cuda_force_mma(mx_backend_packed_t *p, int mma)
{
    if (!p || (mma != MXG_MMA_SYNC && mma != MXG_MMA_WGMMA) ||
        (mma == MXG_MMA_WGMMA && (p->cc != 90 || !(p->feats & MXG_FEAT_WGMMA) || p->wfmt == MXG_W_FP8X)))
        return 0;
    p->mma = mma;
    return 1;
}

/* The calling thread's current device (-1 when unknown), and giving it back
 * after work on `dev`: run, reserve and host_register leave the caller's
 * device as they found it. */
static int device_save(void)
{
    int prev = -1;
    if (cudaGetDevice(&prev) != cudaSuccess) {
        (void)cudaGetLastError();
        prev = -1;
    }
    return prev;
}

static void device_restore(int prev, int dev)
{
    if (prev >= 0 && prev != dev) {
        (void)cudaSetDevice(prev);
        (void)cudaGetLastError();
    }
}

static mx_status_t cuda_run(const mx_backend_packed_t *packed, const mx_run_args_t *args, void *workspace)
{
    (void)workspace;
    if (!packed || !args)
        return mx_error_set(MX_ERR_INVALID, "cuda run: NULL packed weights or arguments");
    mx_backend_packed_t *p = (mx_backend_packed_t *)packed;
    pthread_mutex_lock(&p->lock);
    /* run on this packed object's GPU; give the caller's thread its device back */
    int prev = args->n_assign > 0 ? device_save() : -1;
    mx_status_t st = mxi_cuda_stage(packed, args);
    if (st == MX_OK)
        st = mxi_cuda_layer(packed);
    if (st == MX_OK)
        st = mxi_cuda_fetch(packed, args);
    if (st != MX_OK && p->staged)
        st = settle(p, st); /* an error after the uploads: wait before returning (stage settles its own) */
    p->staged = 0;
    device_restore(prev, p->device);
    pthread_mutex_unlock(&p->lock);
    return st;
}

/* Page-locks the caller's buffer (portable: any context may DMA from it). */
static mx_status_t cuda_host_register(const mx_device_info_t *dev, void *ptr, size_t bytes)
{
    if (!dev || !ptr || !bytes)
        return mx_error_set(MX_ERR_INVALID, "cuda host_register: NULL device or buffer, or 0 bytes");
    int prev = device_save();
    cudaError_t err = cudaSetDevice(dev->device_index);
    if (err == cudaSuccess)
        err = cudaHostRegister(ptr, bytes, cudaHostRegisterPortable);
    mx_status_t st = err == cudaSuccess ? MX_OK : cuda_fail(dev->device_index, err, "cudaHostRegister");
    device_restore(prev, dev->device_index);
    return st;
}

static void cuda_host_unregister(void *ptr)
{
    if (ptr && cudaHostUnregister(ptr) != cudaSuccess)
        (void)cudaGetLastError();
}

static mx_status_t cuda_reserve(mx_backend_packed_t *p, size_t max_tokens, size_t max_assign)
{
    if (!p)
        return mx_error_set(MX_ERR_INVALID, "cuda reserve: NULL packed weights");
    mxg_plan_dims_t dims;
    mx_status_t st = mxi_gpu_plan_dims(max_tokens, max_assign, p->n_experts, &dims);
    if (st != MX_OK)
        return st;
    pthread_mutex_lock(&p->lock);
    int prev = device_save();
    cudaError_t err = cudaSetDevice(p->device);
    if (err != cudaSuccess)
        st = cuda_fail(p->device, err, "cudaSetDevice");
    if (st == MX_OK && dims.host_bytes > p->hmeta_cap) {
        void *nb = realloc(p->hmeta, dims.host_bytes);
        if (!nb)
            st = mx_error_set(MX_ERR_NOMEM, "cuda reserve: %zu bytes of host metadata", dims.host_bytes);
        else {
            p->hmeta = nb;
            p->hmeta_cap = dims.host_bytes;
        }
    }
    if (st == MX_OK)
        st = scratch_need(p, max_tokens, max_assign, dims.dev_bytes, 1, 1);
    if (st == MX_OK) {
        err = cudaStreamSynchronize(p->stream);
        if (err != cudaSuccess)
            st = cuda_fail(p->device, err, "cudaStreamSynchronize (after reserving scratch)");
    }
    device_restore(prev, p->device);
    pthread_mutex_unlock(&p->lock);
    return st;
}

const mx_backend_ops_t mx_backend_cuda = {
    .name = "cuda",
    .priority = 100,
    .probe = cuda_probe,
    .supports = cuda_supports,
    .prepack = cuda_prepack,
    .release = cuda_release,
    .workspace_size = cuda_workspace_size,
    .run = cuda_run,
    .reserve = cuda_reserve,
    .host_register = cuda_host_register,
    .host_unregister = cuda_host_unregister,
};
