/* mxep GPU kernels, written once in the CUDA dialect and also built as HIP
 * (vendors/hip.h). Grouped expert GEMMs over all local experts of a batch in
 * one launch per GEMM, an activation quantizer (FP8 E4M3 values kept in BF16,
 * or as E4M3 bytes for the FP8 tensor cores) and the weighted combine. Layouts:
 * gpu_layout.h.
 *
 * The GEMMs compute out^T = W . x^T: weight rows are the M side of the
 * tensor-core MMA, decoded from the packed format straight into A-fragment
 * registers; tokens are the N side, BF16 rows in shared memory (128-byte rows,
 * 16-byte pieces XOR-swizzled by row, the layout wgmma's 128B swizzle reads).
 * On sm_90a the MMA is wgmma m64nNk16 (A from registers, B from shared
 * memory); elsewhere (sm_80+) the same fragments go through mma.sync m16n8k16.
 * W8A8 on sm_90 (MXG_W_FP8X) keeps E4M3 token rows (64-byte rows, 64-byte
 * swizzle) and runs mma.sync m16n8k32 .e4m3 in every tile configuration: wgmma
 * .e4m3 summed differently and less exactly on the H100 (bench/RESULTS.md).
 * A CTA streams its weight rows through a multi-stage cp.async pipeline; on
 * sm_90 consecutive kernels of a layer are programmatic dependent launches:
 * a GEMM prefetches its first weight chunks before waiting for the kernel
 * that produces its input.
 *
 * Numerics (FORMATS.md Part 1): weights decode exactly (MXFP4 and E4M3 values
 * times power-of-two E8M0 scales are exact in BF16), FP32 accumulation in a
 * fixed K order that depends on neither the batch nor the tile shape: every
 * configuration walks K in k16 MMA steps (k32 for E4M3 tokens) in ascending
 * order into one accumulator per (weight row, token), with the same MMA
 * instruction family on one device (tests/gpu checks every tile configuration
 * bitwise); per 128-wide K slice flushes (block FP8 scales, per-group
 * activations) multiply the slice's partial sum by (weight factor * token
 * factor), and with E4M3 tokens every slice's sum is added to the FP32
 * accumulator on its own (factor 1 without block scales); then the scales
 * of the whole row, the bias, the activation in FP32, and BF16 rounding. */
#if defined(__HIP_PLATFORM_AMD__) || defined(__HIPCC__)
#include "vendors/hip.h"
#define MXG_HIP 1
#else
#include "vendors/cuda.h"
#endif
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <atomic>

#include "gpu_layout.h"

#if !defined(MXG_HIP) && defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 900)
#define MXG_HAVE_GRIDDEP 1 /* griddepcontrol (programmatic dependent launch) */
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define MXG_HAVE_WGMMA 1
#endif
#endif
#if !defined(MXG_HIP) && defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 890)
#define MXG_HAVE_FP8MMA 1 /* mma.sync m16n8k32 .e4m3 */
#endif

/* ------------------------------------------------------------ scalar helpers */

__device__ __forceinline__ float bf16_to_f(uint32_t b)
{
    return __uint_as_float(b << 16);
}

__device__ __forceinline__ uint32_t f_to_bf16(float f)
{
    uint32_t u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return 0x7fc0u; /* NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return u >> 16;
}

/* E2M1 nibble -> float (exact). */
__device__ __forceinline__ float fp4_to_f(uint32_t nib)
{
    uint32_t mag = nib & 7u;
    uint32_t bits = mag < 2u ? (mag ? 0x3f00u : 0u) : ((((mag >> 1) + 126u) << 7) | ((mag & 1u) << 6));
    bits |= (nib & 8u) << 12;
    return bf16_to_f(bits);
}

/* E8M0 byte -> float: 2^(b-127) exactly (byte 0 is the subnormal 2^-127), 0xFF NaN. */
__device__ __forceinline__ float e8m0_to_f(uint32_t b)
{
    if (b == 0xffu)
        return __uint_as_float(0x7fc00000u);
    return b ? __uint_as_float(b << 23) : __uint_as_float(0x00400000u);
}

/* E4M3FN byte -> BF16 bits (exact; NaN codes -> NaN). */
__device__ __forceinline__ uint32_t e4m3_to_bf16(uint32_t b)
{
    uint32_t s = (b & 0x80u) << 8, e = (b >> 3) & 15u, m = b & 7u;
    if ((b & 0x7fu) == 0x7fu)
        return 0x7fc0u;
    if (e == 0)
        return s | (__float_as_uint((float)m * 0.001953125f) >> 16);
    return s | ((e + 120u) << 7) | (m << 4);
}

/* Round to the nearest E4M3FN value (ties to even), saturating at +-448. */
__device__ __forceinline__ float f_to_e4m3(float v)
{
    float a = fabsf(v);
    if (!(a == a))
        return v;
    float q;
    if (a < 0.015625f) {
        q = rintf(a * 512.0f) * 0.001953125f;
    } else {
        /* a = f * 2^ex, f in [0.5, 1), ex = E - 126 (E: a's biased exponent, 121..255):
         * the step is 2^(ex - 4); dividing and multiplying by powers of two is exact
         * (both factors are normal floats, also for a = inf) */
        const uint32_t E = __float_as_uint(a) >> 23;
        q = rintf(a * __uint_as_float((257u - E) << 23)) * __uint_as_float((E - 3u) << 23);
    }
    q = fminf(q, 448.0f);
    return copysignf(q, v);
}

/* The E4M3FN byte of q, a value f_to_e4m3 returned (exact; NaN -> 0x7f). */
__device__ __forceinline__ uint32_t e4m3_byte(float q)
{
    const uint32_t u = __float_as_uint(q), sg = (u >> 24) & 0x80u;
    const float a = fabsf(q);
    if (!(a == a))
        return sg | 0x7fu;
    if (a < 0.015625f) /* zero and the subnormals m * 2^-9 */
        return sg | (uint32_t)(a * 512.0f);
    return sg | ((((u >> 23) & 0xffu) - 120u) << 3) | ((u >> 20) & 7u);
}

/* Two E4M3FN bytes -> BF16x2 of value * 2^-120. */
__device__ __forceinline__ uint32_t fp8x2_bits(uint32_t x)
{
    return ((x & 0x7fu) << 4) | ((x & 0x80u) << 8) | ((x & 0x7f00u) << 12) | ((x & 0x8000u) << 16);
}

__device__ __forceinline__ uint32_t bf16x2_mul(uint32_t a, uint32_t b)
{
#if defined(MXG_HAVE_MMA)
    uint32_t d;
    asm("fma.rn.bf16x2 %0, %1, %2, %3;\n" : "=r"(d) : "r"(a), "r"(b), "r"(0x80008000u));
    return d;
#else
    uint32_t lo = __float_as_uint(bf16_to_f(a & 0xffffu) * bf16_to_f(b & 0xffffu)) >> 16;
    uint32_t hi = __float_as_uint(bf16_to_f(a >> 16) * bf16_to_f(b >> 16)) >> 16;
    return lo | (hi << 16);
#endif
}

__device__ __forceinline__ float act_apply(int act, float g, float u, float limit, float alpha)
{
    if (act == 1) { /* SwiGLU-OAI */
        g = fminf(g, limit);
        u = fminf(fmaxf(u, -limit), limit);
        return g / (1.0f + expf(-alpha * g)) * (u + 1.0f);
    }
    if (act == 2) { /* GELU-tanh */
        float t = tanhf(0.7978845608028654f * (g + 0.044715f * g * g * g));
        return 0.5f * g * (1.0f + t) * u;
    }
    return g / (1.0f + expf(-g)) * u; /* SiLU */
}


/* ------------------------------------------------------------ launch dependencies */

/* Lets the next kernel of the stream start its CTAs (they wait in griddep_wait
 * before reading what this one writes). */
__device__ __forceinline__ void griddep_launch()
{
#if defined(MXG_HAVE_GRIDDEP)
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}
/* Asks for `bytes` (a multiple of 16) at `ptr` (16-byte aligned) to be brought
 * into L2 and kept there before other lines (evict_last), without waiting. (At
 * the ordinary priority it was slower: bench/RESULTS.md, session 16.) */
__device__ __forceinline__ void prefetch_l2(const void *ptr, uint32_t bytes)
{
#if defined(MXG_HAVE_GRIDDEP)
    uint64_t pol;
    asm volatile("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;\n" : "=l"(pol));
    asm volatile("cp.async.bulk.prefetch.L2.global.L2::cache_hint [%0], %1, %2;\n" ::"l"(ptr), "r"(bytes), "l"(pol)
                 : "memory");
#else
    (void)ptr;
    (void)bytes;
#endif
}
/* Weight loads of the decode kernel, marked first to leave L2 (and not kept in
 * L1), so that a layer's streamed weights do not push the kernels' code, token
 * rows and activations out of L2 (H100, W4A16 at T = 1..64: 12-18% less time
 * per layer; bench/RESULTS.md, session 16); plain __ldg where that policy is
 * not built (pre-sm_90 PTX, HIP). */
__device__ __forceinline__ uint4 ldw(const uint4 *ptr, uint64_t pol)
{
#if defined(MXG_HAVE_GRIDDEP)
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.L2::cache_hint.v4.u32 {%0, %1, %2, %3}, [%4], %5;\n"
        : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
        : "l"(ptr), "l"(pol));
    return v;
#else
    (void)pol;
    return __ldg(ptr);
#endif
}
__device__ __forceinline__ uint32_t ldw(const uint32_t *ptr, uint64_t pol)
{
#if defined(MXG_HAVE_GRIDDEP)
    uint32_t v;
    asm volatile("ld.global.nc.L1::no_allocate.L2::cache_hint.u32 %0, [%1], %2;\n" : "=r"(v) : "l"(ptr), "l"(pol));
    return v;
#else
    (void)pol;
    return __ldg(ptr);
#endif
}
__device__ __forceinline__ uint64_t policy_evict_first()
{
    uint64_t pol = 0;
#if defined(MXG_HAVE_GRIDDEP)
    asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(pol));
#endif
    return pol;
}
/* Waits until the previous kernel of the stream has completed and its writes
 * are visible (a no-op when this kernel was not launched as a dependent). */
__device__ __forceinline__ void griddep_wait()
{
#if defined(MXG_HAVE_GRIDDEP)
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

/* ------------------------------------------------------------ timeline (mxgpu_bench --trace) */

/* While the trace is on (mxi_gpu_trace), the CTAs of the layer's kernels note in
 * mxg_tr[slot] when they started, when their input was ready (past
 * griddepcontrol.wait) and when they ended: the first and the last of each, in
 * %globaltimer nanoseconds. Off, each note costs one load of mxg_tr_on. Slots:
 * MXG_TR_* (gpu_layout.h). */
__device__ int mxg_tr_on;
__device__ unsigned long long mxg_tr[MXG_TR_SLOTS][6];
__device__ unsigned mxg_tr_sm[MXG_TR_SLOTS][MXG_TR_MAXSM]; /* CTAs started per SM */
enum { TR_START = 0, TR_READY = 1, TR_END = 2 };

__device__ __forceinline__ void tr_note(int slot, int what)
{
#if !defined(MXG_HIP)
    if (!*(volatile int *)&mxg_tr_on)
        return;
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(t));
    atomicMin(&mxg_tr[slot][2 * what], t);
    atomicMax(&mxg_tr[slot][2 * what + 1], t);
    if (what == TR_START) {
        unsigned sm;
        asm volatile("mov.u32 %0, %%smid;\n" : "=r"(sm));
        if (sm < MXG_TR_MAXSM)
            atomicAdd(&mxg_tr_sm[slot][sm], 1u);
    }
#else
    (void)slot;
    (void)what;
#endif
}

/* Row factor (FP8 weight scale) of packed row n for K slice kb, and token
 * factor (activation scale) of sorted row s; a flushed slice is scaled by
 * their product (computed in this order everywhere). */
__device__ __forceinline__ float row_factor(const mxg_gemm_params_t &p, int e, int n, int kb)
{
    return p.wsf ? p.wsf[(size_t)e * p.wsf_estride + (size_t)(p.wsf_kb > 1 ? kb : 0) * p.N_pad + n] : 1.0f;
}
__device__ __forceinline__ float tok_factor(const mxg_gemm_params_t &p, int s, int kb)
{
    if (p.a_grp_scale)
        return p.a_grp_scale[(size_t)s * p.a_grp_n + kb];
    return p.a_row_scale ? p.a_row_scale[s] : 1.0f;
}
/* Whole-row scaling (no flush), bias: the value of (packed row n, sorted row s). */
__device__ __forceinline__ float finish_value(const mxg_gemm_params_t &p, int e, int s, int n, float v)
{
    if (!p.flush) {
        float f = p.a_row_scale ? p.a_row_scale[s] : 1.0f;
        if (p.wsf)
            v *= f * p.wsf[(size_t)e * p.wsf_estride + n];
        else
            v *= f;
    }
    return v + p.bias[(size_t)e * p.bias_estride + n];
}

/* The MXEP_CUDA_* settings and the values each takes (the default last):
 * those read here (env_setting; every one gives the same bits, tests/gpu: the
 * variants test), then the cuda backend's (cuda_backend.c reads them).
 * mxi_gpu_check_settings refuses any other value of any of them. */
enum { SET_L = 0, SET_LF = 1, SET_DEC = 2, SET_QTHREADS = 3, SET_COUNT = 9 };
struct GpuSetting {
    const char *name;
    const char *vals[3];
    int n;
};
static const GpuSetting g_settings[SET_COUNT] = {{"MXEP_CUDA_L", {"1x256", "2x128"}, 2},
                                                 {"MXEP_CUDA_LF", {"1x128", "2x64"}, 2},
                                                 {"MXEP_CUDA_DEC", {"a45", "a48s", "c48s"}, 3},
                                                 {"MXEP_CUDA_QTHREADS", {"256", "auto"}, 2},
                                                 {"MXEP_CUDA_MMA", {"sync", "auto"}, 2},
                                                 {"MXEP_CUDA_PDL", {"0", "1"}, 2},
                                                 {"MXEP_CUDA_TOKCOPY", {"1", "0"}, 2},
                                                 {"MXEP_CUDA_L2PF", {"0", "1"}, 2},
                                                 {"MXEP_CUDA_FP8MMA", {"0", "1"}, 2}};
/* The index in its vals of setting `which`'s value, or its default (the last)
 * when it is unset, empty or another value; read once (*cache, -1 before). */
static int env_setting(int *cache, int which)
{
    if (*cache < 0) {
        const GpuSetting &g = g_settings[which];
        const char *e = getenv(g.name);
        int v = g.n - 1;
        for (int i = 0; e && i < g.n; i++)
            if (!strcmp(e, g.vals[i]))
                v = i;
        *cache = v;
    }
    return *cache;
}

extern "C" int mxi_gpu_check_settings(char *msg, size_t cap)
{
    for (int k = 0; k < SET_COUNT; k++) {
        const GpuSetting &g = g_settings[k];
        const char *e = getenv(g.name);
        if (!e || !*e)
            continue;
        int ok = 0;
        for (int i = 0; i < g.n; i++)
            ok |= !strcmp(e, g.vals[i]);
        if (!ok) {
            if (msg && cap) {
                /* "NAME='value': expected a, b or c (default c)" */
                size_t len = (size_t)snprintf(msg, cap, "%s='%s': expected ", g.name, e);
                for (int i = 0; i < g.n && len < cap; i++)
                    len += (size_t)snprintf(msg + len, cap - len, "%s%s", i == 0 ? "" : i == g.n - 1 ? " or " : ", ",
                                            g.vals[i]);
                if (len < cap)
                    snprintf(msg + len, cap - len, " (default %s)", g.vals[g.n - 1]);
            }
            return -1;
        }
    }
    return 0;
}

/* Plain launch, or a programmatic dependent one when `pdl` (sm_90), with smem
 * bytes of dynamic shared memory. */
template <typename P>
static int launch_simple(void (*kern)(const P), dim3 grid, dim3 block, cudaStream_t st, const P &prm, int pdl,
                         size_t smem = 0)
{
#if !defined(MXG_HIP)
    cudaLaunchConfig_t lc = {};
    lc.gridDim = grid;
    lc.blockDim = block;
    lc.dynamicSmemBytes = smem;
    lc.stream = st;
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = 1;
    lc.attrs = at;
    lc.numAttrs = pdl ? 1 : 0;
    return (int)cudaLaunchKernelEx(&lc, kern, prm);
#else
    (void)pdl;
    kern<<<grid, block, smem, st>>>(prm);
    return (int)cudaGetLastError();
#endif
}

#if !defined(MXG_HIP)
/* ------------------------------------------------------------ tensor-core path (sm_80+, wgmma on sm_90a) */

__device__ __forceinline__ uint32_t smem_u32(const void *ptr)
{
    return (uint32_t)__cvta_generic_to_shared(ptr);
}

__device__ __forceinline__ void cp_async16(uint32_t dst, const void *src, bool valid)
{
#if defined(MXG_HAVE_MMA)
    int n = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n));
#else
    (void)dst;
    (void)src;
    (void)valid;
#endif
}
/* PIECES contiguous 16-byte pieces to shared memory by a CTA of NT threads:
 * thread tid copies pieces tid + i NT (a count fixed at compile time); dst and
 * src are its first piece's places (the start + 16 tid) */
template <int PIECES, int NT> __device__ __forceinline__ void copy_pieces(uint32_t dst, const uint8_t *src, int tid)
{
#pragma unroll
    for (int i = 0; i < (PIECES + NT - 1) / NT; i++)
        if (PIECES % NT == 0 || tid + i * NT < PIECES)
            cp_async16(dst + i * NT * 16, src + i * NT * 16, true);
}
__device__ __forceinline__ void cp_async_commit()
{
#if defined(MXG_HAVE_MMA)
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}
template <int N> __device__ __forceinline__ void cp_async_wait()
{
#if defined(MXG_HAVE_MMA)
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], uint32_t addr)
{
#if defined(MXG_HAVE_MMA)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
#else
    (void)addr;
    r[0] = r[1] = r[2] = r[3] = 0;
#endif
}

__device__ __forceinline__ void mma_16816(float *c, const uint32_t a[4], uint32_t b0, uint32_t b1)
{
#if defined(MXG_HAVE_MMA)
    /* not volatile: a pure register operation the compiler may interleave with the decode */
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
    (void)c;
    (void)a;
    (void)b0;
    (void)b1;
#endif
}

/* FP8 (E4M3FN) m16n8k32: A fragment a[r] = 4 bytes of rows (g, g + 8, g, g + 8),
 * columns 4 t .. 4 t + 3 (+ 16 for r = 2, 3); b0 / b1 = columns 4 t .. (+ 16) of token g. */
__device__ __forceinline__ void mma_16832_e4m3(float *c, const uint32_t a[4], uint32_t b0, uint32_t b1)
{
#if defined(MXG_HAVE_FP8MMA)
    asm("mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
    (void)c;
    (void)a;
    (void)b0;
    (void)b1;
#endif
}

/* Orders shared-memory writes of this thread's generic proxy (cp.async data,
 * after its wait) before reads of the async proxy (wgmma operands). */
__device__ __forceinline__ void fence_proxy_async()
{
#if defined(MXG_HAVE_WGMMA)
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wgmma_fence()
{
#if defined(MXG_HAVE_WGMMA)
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wgmma_commit()
{
#if defined(MXG_HAVE_WGMMA)
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int N> __device__ __forceinline__ void wgmma_wait()
{
#if defined(MXG_HAVE_WGMMA)
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}
/* Keeps the compiler from moving accesses of accumulator registers across the
 * asynchronous MMAs that own them. */
template <int N> __device__ __forceinline__ void reg_fence(float (&d)[N])
{
#pragma unroll
    for (int i = 0; i < N; i++)
        asm volatile("" : "+f"(d[i])::"memory");
}

/* Shared-memory matrix descriptor of a K-major BF16 operand in 128-byte
 * swizzled rows (8-row atoms of 1024 bytes, consecutive along N), starting at
 * byte `addr` (the atom base plus 32 bytes per k16 step). */
__device__ __forceinline__ uint64_t sw128_desc(uint32_t addr)
{
    return (uint64_t)((addr & 0x3ffffu) >> 4) | ((uint64_t)1 << 16) | ((uint64_t)(1024 >> 4) << 32) |
           ((uint64_t)1 << 62);
}

template <int N> struct Wgmma;
template <> struct Wgmma<16> {
    static __device__ __forceinline__ void mma(float (&d)[8], const uint32_t (&a)[4], uint64_t desc)
    {
#if defined(MXG_HAVE_WGMMA)
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %13, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7}, {%8, %9, %10, %11}, %12, p, 1, 1, 0;\n}\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "n"(1));
#else
        (void)d;
        (void)a;
        (void)desc;
#endif
    }
};

template <> struct Wgmma<64> {
    static __device__ __forceinline__ void mma(float (&d)[32], const uint32_t (&a)[4], uint64_t desc)
    {
#if defined(MXG_HAVE_WGMMA)
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, 0;\n}\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "n"(1));
#else
        (void)d;
        (void)a;
        (void)desc;
#endif
    }
};

template <> struct Wgmma<128> {
    static __device__ __forceinline__ void mma(float (&d)[64], const uint32_t (&a)[4], uint64_t desc)
    {
#if defined(MXG_HAVE_WGMMA)
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, 0;\n}\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "n"(1));
#else
        (void)d;
        (void)a;
        (void)desc;
#endif
    }
};

template <> struct Wgmma<256> {
    static __device__ __forceinline__ void mma(float (&d)[128], const uint32_t (&a)[4], uint64_t desc)
    {
#if defined(MXG_HAVE_WGMMA)
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %133, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, {%128, %129, %130, %131}, %132, p, 1, 1, 0;\n}\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "n"(1));
#else
        (void)d;
        (void)a;
        (void)desc;
#endif
    }
};

enum { ENG_SYNC = MXG_MMA_SYNC, ENG_WG = MXG_MMA_WGMMA };

/* Tile configuration: NWG warpgroups (consumers of MT m64 weight tiles each:
 * BMW = 64 NWG MT weight rows) by BNT tokens. Shared memory: STAGES stages of
 * tokens [BNT][AROW], weights [BMW/16 groups][32 lanes][TB] and MXFP4 scales
 * [BMW/16][32], each kind in its own array (token tiles 1024-aligned); the
 * epilogue reuses it as [BNT][EPI_PITCH] BF16. */
template <int NWG, int MT, int BNT, int WFMT, int MAXST> struct TcCfg {
    static constexpr int NT = NWG * 128;
    static constexpr int BMW = NWG * MT * 64;
    static constexpr int NGRP = BMW / 16;
    static constexpr int TB = MXG_THREAD_BYTES(WFMT);
    /* bytes of one token row per chunk: 64 BF16, or 64 E4M3 (MXG_W_FP8X) */
    static constexpr int AROW = WFMT == MXG_W_FP8X ? 64 : 128;
    static constexpr int A_BYTES = BNT * AROW;
    /* byte of row r's 16-byte piece c in a stage's token tile: 128-byte rows in
     * wgmma's 128-byte swizzle, or 64-byte rows (E4M3) in the 64-byte one */
    static __device__ __forceinline__ uint32_t a_off(int r, int c)
    {
        return AROW == 64 ? (uint32_t)(r * 64 + ((c ^ ((r >> 1) & 3)) << 4))
                          : (uint32_t)(r * 128 + ((c ^ (r & 7)) << 4));
    }
    static constexpr int W_BYTES = NGRP * 32 * TB;
    static constexpr int S_BYTES = WFMT == MXG_W_FP4 ? NGRP * 32 : 0;
    static constexpr int STAGE = A_BYTES + W_BYTES + S_BYTES;
    static constexpr int FIT = (200 * 1024) / STAGE;
    static constexpr int STAGES = FIT > MAXST ? MAXST : FIT < 3 ? 3 : FIT;
    static constexpr int PIPE = STAGE * STAGES;
    static constexpr int EPI_PITCH = BMW * 2 + 16;
    static constexpr int EPI_BYTES = BNT * EPI_PITCH;
    static constexpr int SMEM = (PIPE > EPI_BYTES ? PIPE : EPI_BYTES) + 1024;
    static_assert(BNT % 16 == 0, "token tiles are multiples of 16");
    static_assert(STAGE % 16 == 0, "stages hold whole 16-byte pieces");
};

/* Scale multipliers of a lane's MXFP4 scale word (rows g, g + 8 of the group;
 * the chunk's two 32-blocks): m1[h][b], m2[h][b]; *big_p when any needs the
 * second multiply (scales above 2^1). */
struct Fp4Mults {
    uint32_t m1[2][2], m2[2][2];
    bool big;
};
__device__ __forceinline__ void fp4_mults(uint32_t scw, Fp4Mults &m)
{
    /* BF16x2 multipliers turning fp4_pair's value * 2^-126 into value * 2^(se-127):
     * m1 * m2 = 2^(se-1), m1 carrying the exponent up to 2^127 and m2 the rest
     * (1.0 while se <= 128, so one multiply suffices); 0xFF is NaN. No branches. */
    uint32_t big = 0;
#pragma unroll
    for (int h = 0; h < 2; h++)
#pragma unroll
        for (int b = 0; b < 2; b++) {
            const uint32_t se = (scw >> (8 * (h + 2 * b))) & 0xffu;
            const uint32_t lo = (se < 128u ? se : 128u) + 126u, hi = (se > 128u ? se : 128u) - 1u;
            const uint32_t m1 = lo << 7 | lo << 23, m2 = hi << 7 | hi << 23;
            m.m1[h][b] = se == 255u ? 0x7fc07fc0u : m1;
            m.m2[h][b] = se == 255u ? 0x3f803f80u : m2;
            big |= se - 129u < 126u; /* 129..254 */
        }
    m.big = big != 0;
}
/* The same multipliers when every scale of the matrix is at most 2^1 and none
 * is NaN (mxg_gemm_params_t.sc_big == 0): m1 = (se + 126) in both BF16
 * exponent fields, one byte permute and one multiply-add each. */
__device__ __forceinline__ void fp4_mults_small(uint32_t scw, Fp4Mults &m)
{
#pragma unroll
    for (int h = 0; h < 2; h++)
#pragma unroll
        for (int b = 0; b < 2; b++) {
            const uint32_t j = (uint32_t)(h + 2 * b);
            const uint32_t x = __byte_perm(scw, 0u, 0x4040u | j | (j << 8)); /* se | se << 16 */
            m.m1[h][b] = x * 128u + 0x3f003f00u;
            m.m2[h][b] = 0x3f803f80u;
        }
    m.big = false;
}
template <bool BIG> __device__ __forceinline__ void fp4_mults_t(uint32_t scw, Fp4Mults &m)
{
    if (BIG)
        fp4_mults(scw, m);
    else
        fp4_mults_small(scw, m);
}

/* The A fragment registers of k16 step s for one 16-row group, from the lane's
 * packed piece `src` (bytes of the chunk) and, for MXFP4, its multipliers
 * (BIG: the matrix has scales that need the second multiply). */
template <int WFMT, bool BIG = true>
__device__ __forceinline__ void decode_step(const uint32_t *src, int s, const Fp4Mults &m, uint32_t (&a)[4])
{
    if (WFMT == MXG_W_FP4) {
        const uint32_t w = src[s];
        const int b = s >> 1;
        a[0] = bf16x2_mul(mxg_fp4_pair(w, 0), m.m1[0][b]);
        a[1] = bf16x2_mul(mxg_fp4_pair(w, 1), m.m1[1][b]);
        a[2] = bf16x2_mul(mxg_fp4_pair(w, 2), m.m1[0][b]);
        a[3] = bf16x2_mul(mxg_fp4_pair(w, 3), m.m1[1][b]);
        if (BIG && m.big) {
            a[0] = bf16x2_mul(a[0], m.m2[0][b]);
            a[1] = bf16x2_mul(a[1], m.m2[1][b]);
            a[2] = bf16x2_mul(a[2], m.m2[0][b]);
            a[3] = bf16x2_mul(a[3], m.m2[1][b]);
        }
    } else if (WFMT == MXG_W_FP8X) { /* k32 step s: the bytes are the fragment */
        a[0] = src[4 * s];
        a[1] = src[4 * s + 1];
        a[2] = src[4 * s + 2];
        a[3] = src[4 * s + 3];
    } else if (WFMT == MXG_W_FP8) {
        const uint32_t lo = src[2 * s], hi = src[2 * s + 1];
        a[0] = bf16x2_mul(fp8x2_bits(lo & 0xffffu), 0x7b807b80u); /* * 2^120 */
        a[1] = bf16x2_mul(fp8x2_bits(lo >> 16), 0x7b807b80u);
        a[2] = bf16x2_mul(fp8x2_bits(hi & 0xffffu), 0x7b807b80u);
        a[3] = bf16x2_mul(fp8x2_bits(hi >> 16), 0x7b807b80u);
    } else {
        a[0] = src[4 * s];
        a[1] = src[4 * s + 1];
        a[2] = src[4 * s + 2];
        a[3] = src[4 * s + 3];
    }
}

/* ------------------------------------------------------------ decode kernel (small batches) */

/* Weights and token rows are read through the non-coherent path (__ldg; the
 * weights with an evict-first L2 policy, ldw): they do not change while the
 * kernel runs (token rows are the staged batch or the previous kernel's
 * finished output). */

/* Batches of at most 16 tokens per expert are bound by reading the weights.
 * Each warp streams one 16-row group of one expert through K on its own (no
 * shared memory, no barriers): its lanes load their fragment pieces straight
 * into a ring of registers D chunks ahead, decode them and run mma.sync
 * m16n8k16 against token fragments read from the (cached) token rows, one
 * chunk ahead, two 16-byte loads per n8 tile and chunk (the rows are in
 * mxg_tok_pos order). Per chunk and lane that is about 90 instructions for
 * MXFP4: 4 loads, 9 logic ops per step word, a BF16 multiply per register
 * (two when the matrix has scales above 2^1), 4 or 8 MMAs. Same K order and
 * same MMA results as the tensor-core kernels (tests/gpu compares every
 * configuration bitwise). */
template <bool B> struct BoolC {
    static constexpr bool value = B;
};

/* D: chunks in flight per lane (the register ring); MINB: CTAs per SM the
 * register budget is cut for. BIG: the matrix has MXFP4 scales above 2^1.
 * NAT: the token rows are BF16 in their natural column order (GEMM1 reading
 * the staged token rows through a_rows, with no copy kernel before it): each
 * lane gathers its fragment words one by one (8 loads of 4 bytes per chunk and
 * n8 tile instead of 2 of 16), the same values as from mxg_tok_pos order. */
/* TAX: the token fragments are loaded TAX chunks further ahead (NAT: by
 * default at the chunk's start, else one chunk ahead; -1 with TSM: at the
 * chunk's start, from shared memory); a ring of 1 + that many buffers, so D
 * must be a multiple of its size. */
/* TSM: the CTA copies its tile's token rows (min(cnt - m0, 16) rows of K_pad
 * BF16 values, mxg_tok_pos order) into dynamic shared memory once its input is
 * ready, and the lanes read their fragments from there (the launch gives
 * p.tile_rows rows of room). */
/* WPC: row groups per CTA, 4 but in the c48s variant's capped kernel (2);
 * MINB counts CTAs of WPC x KS warps. */
/* K segments (p.kseg, mxg_kseg): KS = 1, a warp sums both segments, the first
 * kept aside once its last chunk is in (the point starts a group of D chunks);
 * KS = 2 (the capped kernel, shared rows only), a row group is two warps, one
 * per segment, and the first adds the second's sums, passed through shared
 * memory after the token rows (the launch gives the room). Either way each
 * value is first segment + second segment: the same bits. */
template <int WFMT, bool FLUSH, bool BIG, int D, int MINB, bool NAT = false, int TAX = 0, bool TSM = false,
          int WPC = 4, int KS = 1>
__global__ void __launch_bounds__(32 * WPC * KS, MINB) gemm_dec(const mxg_gemm_params_t p)
{
    static_assert(KS == 1 || (KS == 2 && TSM), "segments in parallel only in the shared-rows kernel");
    static_assert(24 % D == 0, "a K segment starts a group of D chunks (mxg_kseg: multiples of 24)");
    constexpr bool X = WFMT == MXG_W_FP8X; /* E4M3 tokens, FP8 MMAs */
    static_assert(!(NAT && X), "E4M3 token rows are always written by the quantizer, in mxg_tok_pos8 order");
    static_assert(!TSM || (!NAT && !X), "shared token rows: BF16 rows in mxg_tok_pos order");
    constexpr bool PART = FLUSH || X;      /* partial sums flushed per 128-wide K slice */
    constexpr int TB = MXG_THREAD_BYTES(WFMT);
    constexpr int W4 = TB / 16; /* uint4 per lane per chunk */
    constexpr int NS = X ? 2 : 4; /* MMA k steps per chunk (k32 / k16) */
    constexpr int XH = X ? 1 : 2; /* 16-byte token pieces per lane, chunk and n8 tile */
    const int lane = threadIdx.x & 31, warp = (threadIdx.x >> 5) % WPC, seg = (threadIdx.x >> 5) / WPC;
    const int g = lane >> 2, t4 = lane & 3;
    const int tslot = p.epi == MXG_EPI_ACT ? MXG_TR_G1 : MXG_TR_G2;
    if (threadIdx.x == 0)
        tr_note(tslot, TR_START);
    griddep_launch();
    const int mt = blockIdx.y;
    {
        const int rg = blockIdx.x * WPC + warp;
        /* idle: a warp past the last row group (TSM: it still helps copy the rows) */
        const bool idle = rg * 16 >= p.N;
        if (mt >= p.n_mtiles || (!TSM && idle))
            return;
        const int e = p.tile_e[mt], m0 = p.tile_m0[mt];
        const int cnt = p.cnt[e], off = p.off[e];
        /* the start of sorted row srow of A */
        auto a_row = [&](int srow) {
            return (const uint8_t *)p.a + (size_t)(p.a_rows ? p.a_rows[srow] : srow) * p.lda * (X ? 1 : 2);
        };
        /* TSM: every warp of the CTA, idle ones too, copies the tile's rows (uint4
         * by uint4, rows tsm_u4 + 1 apart so that the 8 rows of a fragment load
         * fall in different banks) once the input is ready (below) */
        extern __shared__ uint4 tsm_rows[];
        const int tsm_u4 = p.K_pad / 8;
        auto tsm_fill = [&]() {
            const int nr = cnt - m0 < 16 ? cnt - m0 : 16;
            if (nr > p.tile_rows)
                __trap(); /* the launch gave room for fewer rows: a bug in the caller */
            for (int i = threadIdx.x; i < nr * tsm_u4; i += blockDim.x) {
                const int r = i / tsm_u4, c = i - r * tsm_u4;
                tsm_rows[r * (tsm_u4 + 1) + c] = __ldg((const uint4 *)a_row(off + m0 + r) + c);
            }
            __syncthreads();
        };
        /* this warp's chunks: [kb0, kb0 + KC) (KS = 2: its segment; the loops below
         * count from kb0); KS = 1: ksl, where the second segment starts (0: none) */
        const int KCA = p.K_pad / MXG_BK, NG = p.N_pad >> 4;
        const int kb0 = KS == 1 || seg == 0 ? 0 : p.kseg;
        const int KC = KS == 1 ? KCA : seg == 0 ? p.kseg : KCA - p.kseg;
        const int ksl = KS == 1 && !NAT ? p.kseg : 0; /* (NAT: GEMM1's gather, one segment) */
        const size_t wstep = (size_t)NG * 32 * TB / 16; /* in uint4 */
        const size_t sstep = (size_t)NG * 8;            /* in uint32 */
        const uint4 *wsrc = (const uint4 *)(p.w + (size_t)e * p.w_estride + ((size_t)rg * 32 + lane) * TB) +
                            (size_t)kb0 * wstep;
        const uint32_t *ssrc = WFMT == MXG_W_FP4
                                   ? (const uint32_t *)(p.sc + (size_t)e * p.sc_estride + (size_t)rg * 32 + g * 4) +
                                         (size_t)kb0 * sstep
                                   : nullptr;

        const uint64_t wpol = policy_evict_first();
        uint4 wr[D][W4];
        uint32_t sr[D];
#pragma unroll
        for (int u = 0; u < D; u++) {
            if (u < KC && !(TSM && idle)) {
#pragma unroll
                for (int q = 0; q < W4; q++)
                    wr[u][q] = ldw(wsrc + (size_t)u * wstep + q, wpol);
                sr[u] = WFMT == MXG_W_FP4 ? ldw(ssrc + (size_t)u * sstep, wpol) : 0u;
            }
        }
        /* p.l2pf: the warp's chunks past the ring go to L2 now, while the kernel that
         * produces this one's input still runs (the lanes take every 32nd chunk) */
        if (p.l2pf && !(TSM && idle)) {
            const uint8_t *wb = p.w + (size_t)e * p.w_estride + (size_t)rg * 32 * TB;
            const uint8_t *sb = WFMT == MXG_W_FP4 ? p.sc + (size_t)e * p.sc_estride + (size_t)rg * 32 : nullptr;
            for (int kc = kb0 + D + lane; kc < kb0 + KC; kc += 32) {
                prefetch_l2(wb + (size_t)kc * NG * 32 * TB, 32 * TB);
                if (WFMT == MXG_W_FP4)
                    prefetch_l2(sb + (size_t)kc * NG * 32, 32);
            }
        }
        griddep_wait();
        if (threadIdx.x == 0)
            tr_note(tslot, TR_READY);
        if (TSM) {
            /* a barrier reached by each of the CTA's threads (the only one but with KS = 2,
             * whose idle warps stay for the segment sums' barrier) */
            tsm_fill();
            if (idle && KS == 1)
                return;
        }

        /* the lane's token rows: 8 j + g of the tile, j = 0, 1, in mxg_tok_pos
         * order (its 16 columns of a chunk are 32 contiguous bytes; E4M3 rows in
         * mxg_tok_pos8 order, 16 bytes). Rows past the
         * expert's tokens read its last token instead: the MMA's columns are
         * independent and those columns are never stored. */
        /* (NAT: the lane's word t4 of the row; its words of a chunk are 8 s + 4 kh + t4) */
        const uint4 *xr[2];
#pragma unroll
        for (int j = 0; j < 2; j++) {
            const int m = m0 + 8 * j + g;
            const int srow = off + (m < cnt ? m : cnt - 1);
            xr[j] = TSM ? tsm_rows + (size_t)(srow - off - m0) * (tsm_u4 + 1) + XH * t4 + (size_t)kb0 * XH * 4
                        : (const uint4 *)(a_row(srow) + (NAT ? 4 : XH * 16) * t4);
        }

        float acc[2][4];
#pragma unroll
        for (int j = 0; j < 2; j++)
#pragma unroll
            for (int q = 0; q < 4; q++)
                acc[j][q] = 0.0f;
        /* KS = 1: at chunk ksl the first segment is summed (its last 128-wide slice
         * flushed); its sums wait in shared memory, the lane's 8 values 32 words
         * apart (in registers they cost the K loops spills: up to 112 bytes, and in
         * the shared-rows kernels' two-tile loop 4 loads and stores per ring round) */
        __shared__ float first_s[KS == 1 && !NAT ? WPC * 8 * 32 : 1];
        auto first = [&](int j, int q) -> float & { return first_s[(warp * 8 + 4 * j + q) * 32 + lane]; };
        auto seg_end = [&](int kc) {
            if (KS == 1 && !NAT && kc == ksl && kc > 0) {
#pragma unroll
                for (int j = 0; j < 2; j++)
#pragma unroll
                    for (int q = 0; q < 4; q++) {
                        first(j, q) = acc[j][q];
                        acc[j][q] = 0.0f;
                    }
            }
        };

        /* The K loop, compiled once for one n8 token tile and once for two (the
         * second tile has tokens: warp-uniform), so that neither pays for the other. */
        auto kloop = [&](auto two_c) {
            constexpr bool TWO = decltype(two_c)::value;
            constexpr int NJ = TWO ? 2 : 1;
            float part[PART ? 2 : 1][4];
#pragma unroll
            for (int j = 0; j < (PART ? 2 : 1); j++)
#pragma unroll
                for (int q = 0; q < 4; q++)
                    part[j][q] = 0.0f;
            /* one chunk: token fragments, decode, MMAs, the ring slot's refill
             * with chunk kc + D while there is one */
            const uint4 *wnext = wsrc + (size_t)D * wstep;
            const uint32_t *snext = WFMT == MXG_W_FP4 ? ssrc + (size_t)D * sstep : nullptr;
            /* token fragments: TA chunks ahead (NAT: this chunk's, when it starts;
             * their eight loads per tile would hold as many registers across the
             * chunk, and the rows are in L1), in a ring of TA + 1 buffers. xp: the
             * next chunk to load (8 uint4 per 64 columns of a row, 4 for E4M3: the
             * chunk stride) */
            constexpr int TA = (NAT ? 0 : 1) + TAX, NB = TA + 1;
            static_assert(TA >= 0 && (TA > 0 || NAT || TSM), "global token fragments are loaded ahead");
            static_assert(D % NB == 0, "the token fragment ring must divide the weight ring");
            const uint4 *xp[2] = {xr[0], xr[1]};
            uint4 bq[NB][2][2]; /* [chunk % NB][n8 tile][half] */
            /* tile j's token fragments of the chunk at xp[j]: half h holds steps 2h, 2h + 1 */
            auto ldtok = [&](int j, uint4 (&dst)[2][2]) {
                const uint4 *x = xp[j];
                if (NAT) {
                    const uint32_t *w = (const uint32_t *)x;
#pragma unroll
                    for (int h = 0; h < 2; h++)
                        asm volatile("ld.global.nc.b32 %0, [%4];\n\tld.global.nc.b32 %1, [%4+16];\n\t"
                                     "ld.global.nc.b32 %2, [%4+32];\n\tld.global.nc.b32 %3, [%4+48];\n"
                                     : "=r"(dst[j][h].x), "=r"(dst[j][h].y), "=r"(dst[j][h].z), "=r"(dst[j][h].w)
                                     : "l"(w + 16 * h));
                } else {
#pragma unroll
                    for (int h = 0; h < XH; h++)
                        dst[j][h] = TSM ? x[h] : __ldg(x + h);
                }
            };
#pragma unroll
            for (int u = 0; u < TA; u++)
                if (u < KC) {
#pragma unroll
                    for (int j = 0; j < NJ; j++) {
                        ldtok(j, bq[u]);
                        xp[j] += XH * 4;
                    }
                }
            /* one chunk: its token fragments, decode, MMAs, and its ring slot's refill */
            auto chunk = [&](int kc, uint4 (&slot)[W4], uint32_t &sslot, uint4 (&bc)[2][2], uint4 (&bn)[2][2]) {
                /* the token fragments of chunk kc + TA (bn; bc when TA is 0) */
                if (kc + TA < KC) {
#pragma unroll
                    for (int j = 0; j < NJ; j++) {
                        ldtok(j, bn);
                        xp[j] += XH * 4;
                    }
                }
                uint32_t bb[4][2][2]; /* [step][n8 tile][b0, b1] */
#pragma unroll
                for (int j = 0; j < NJ; j++)
#pragma unroll
                    for (int h = 0; h < XH; h++) {
                        bb[2 * h][j][0] = bc[j][h].x;
                        bb[2 * h][j][1] = bc[j][h].y;
                        bb[2 * h + 1][j][0] = bc[j][h].z;
                        bb[2 * h + 1][j][1] = bc[j][h].w;
                    }
                Fp4Mults mm;
                if (WFMT == MXG_W_FP4)
                    fp4_mults_t<BIG>(sslot, mm);
                uint32_t src[TB / 4];
#pragma unroll
                for (int q = 0; q < W4; q++) {
                    src[4 * q] = slot[q].x;
                    src[4 * q + 1] = slot[q].y;
                    src[4 * q + 2] = slot[q].z;
                    src[4 * q + 3] = slot[q].w;
                }
                /* refill the slot (its registers are copied out above) */
                if (kc + D < KC) {
#pragma unroll
                    for (int q = 0; q < W4; q++)
                        slot[q] = ldw(wnext + q, wpol);
                    if (WFMT == MXG_W_FP4)
                        sslot = ldw(snext, wpol);
                }
                if (WFMT == MXG_W_FP4)
                    snext += sstep;
                wnext += wstep;
#pragma unroll
                for (int s = 0; s < NS; s++) {
                    uint32_t a[4];
                    decode_step<WFMT, BIG>(src, s, mm, a);
#pragma unroll
                    for (int j = 0; j < NJ; j++) {
                        float *d = PART ? part[PART ? j : 0] : acc[j];
                        if (X)
                            mma_16832_e4m3(d, a, bb[s][j][0], bb[s][j][1]);
                        else
                            mma_16816(d, a, bb[s][j][0], bb[s][j][1]);
                    }
                }
                /* the FP8 MMAs' sums go to FP32 every 128 of K (the tensor cores keep
                 * fewer bits for them), scaled by the slice's factors when FLUSH */
                if (PART && ((kc & 1) || kc == KC - 1)) {
                    const int kb = (kb0 + kc) >> 1, n = rg * 16 + g; /* kb0 is even */
                    const float rf0 = FLUSH ? row_factor(p, e, n, kb) : 1.0f,
                                rf1 = FLUSH ? row_factor(p, e, n + 8, kb) : 1.0f;
#pragma unroll
                    for (int j = 0; j < NJ; j++)
#pragma unroll
                        for (int el = 0; el < 2; el++) {
                            const int m = m0 + 8 * j + 2 * t4 + el;
                            const float tf = FLUSH ? tok_factor(p, off + (m < cnt ? m : 0), kb) : 1.0f;
                            float *pp = part[PART ? j : 0];
                            acc[j][el] += pp[el] * (rf0 * tf);
                            acc[j][2 + el] += pp[2 + el] * (rf1 * tf);
                            pp[el] = 0.0f;
                            pp[2 + el] = 0.0f;
                        }
                }
            };
            int kc = 0;
            for (; kc + D <= KC; kc += D) {
                seg_end(kc);
#pragma unroll
                for (int u = 0; u < D; u++)
                    chunk(kc + u, wr[u], sr[u], bq[u % NB], bq[(u + TA) % NB]);
            }
            seg_end(kc);
#pragma unroll
            for (int u = 0; u < D; u++)
                if (kc + u < KC)
                    chunk(kc + u, wr[u], sr[u], bq[u % NB], bq[(u + TA) % NB]);
        };
        if (KS == 1 || !idle) { /* (KS = 2: an idle row group's warps only meet the others at the barrier below) */
            if (cnt - m0 > 8)
                kloop(BoolC<true>());
            else
                kloop(BoolC<false>());
        }
        if (KS == 1 && !NAT && ksl > 0) {
#pragma unroll
            for (int j = 0; j < 2; j++)
#pragma unroll
                for (int q = 0; q < 4; q++)
                    acc[j][q] = first(j, q) + acc[j][q];
        }
        if constexpr (KS == 2) {
            /* the second segment's sums, to the first's warp through shared memory */
            float *sums = (float *)(tsm_rows + (size_t)p.tile_rows * (tsm_u4 + 1));
            if (seg == 1 && !idle)
#pragma unroll
                for (int j = 0; j < 2; j++)
#pragma unroll
                    for (int q = 0; q < 4; q++)
                        sums[(warp * 32 + lane) * 8 + 4 * j + q] = acc[j][q];
            __syncthreads();
            if (seg == 1 || idle)
                return;
#pragma unroll
            for (int j = 0; j < 2; j++)
#pragma unroll
                for (int q = 0; q < 4; q++)
                    acc[j][q] = acc[j][q] + sums[(warp * 32 + lane) * 8 + 4 * j + q];
        }

        /* epilogue: straight to global (a handful of values per lane) */
        const bool act = p.epi == MXG_EPI_ACT;
        const int n = rg * 16 + g;
#pragma unroll
        for (int j = 0; j < 2; j++)
#pragma unroll
            for (int el = 0; el < 2; el++) {
                const int m = m0 + 8 * j + 2 * t4 + el;
                if (m >= cnt)
                    continue;
                const int s = off + m;
                const float v0 = finish_value(p, e, s, n, acc[j][el]);
                const float v1 = finish_value(p, e, s, n + 8, acc[j][2 + el]);
                if (act) {
                    /* GEMM2's input, for the decode kernel again: mxg_tok_pos order */
                    const int i = rg * 8 + g;
                    if (i < p.ldo)
                        p.out[(size_t)s * p.ldo + mxg_tok_pos(i)] =
                            (uint16_t)f_to_bf16(act_apply(p.act, v0, v1, p.limit, p.alpha));
                } else {
                    uint16_t *o = p.out + (size_t)p.out_rows[s] * p.ldo;
                    if (n < p.N)
                        o[n] = (uint16_t)f_to_bf16(v0);
                    if (n + 8 < p.N)
                        o[n + 8] = (uint16_t)f_to_bf16(v1);
                }
            }
        /* the activation columns past the last row group, up to ldo, are zeros
         * (GEMM2's padded K); the warp of the last row group writes them */
        if (act && rg == (p.N >> 4) - 1) {
            const int i0 = p.N >> 1, npad = p.ldo - i0, ntok = cnt - m0 < 16 ? cnt - m0 : 16;
            for (int idx = lane; idx < ntok * npad; idx += 32) {
                const int m = idx / npad, i = i0 + idx % npad;
                p.out[(size_t)(off + m0 + m) * p.ldo + mxg_tok_pos(i)] = 0;
            }
        }
        if (lane == 0)
            tr_note(tslot, TR_END);
    }
}

template <int NWG, int MT, int BNT, int WFMT, bool FLUSH, int ENG, int MAXST, bool BIG, int MINB = 1>
__global__ void __launch_bounds__(NWG * 128, MINB) gemm_tc(const mxg_gemm_params_t p)
{
    typedef TcCfg<NWG, MT, BNT, WFMT, MAXST> C;
    constexpr int NJ = BNT / 8, NACC = BNT / 2;
    constexpr int PRE = C::STAGES - 2; /* chunks in flight */
    constexpr bool X = WFMT == MXG_W_FP8X; /* E4M3 tokens, FP8 MMAs (k32 steps) */
    constexpr bool PART = FLUSH || X;      /* partial sums flushed per 128-wide K slice */
    constexpr int NS = X ? 2 : 4;          /* MMA k steps per chunk */
    constexpr int PR = C::AROW / 16;       /* 16-byte pieces of a token row per chunk */
    /* E4M3 tokens take mma.sync on every device: on the H100, wgmma .e4m3 (tried,
     * bench/RESULTS.md session 14) summed differently from mma.sync .e4m3, so the
     * tile configurations disagreed, and less exactly (4.5e-3..8.8e-3 from ref
     * where mma.sync gave 0) */
    static_assert(!(X && ENG == ENG_WG), "FP8 tokens run mma.sync");
#if !defined(MXG_HAVE_WGMMA)
    if (ENG == ENG_WG) { /* never launched: the host picks wgmma only on sm_90a */
        __trap();
    }
#endif
    extern __shared__ uint8_t smem_raw[];
    const uint32_t raw_s = smem_u32(smem_raw);
    uint8_t *smem = smem_raw + ((1024u - (raw_s & 1023u)) & 1023u);
    const uint32_t sbase = smem_u32(smem);
    const uint32_t sA = sbase, sW = sbase + C::STAGES * C::A_BYTES, sS = sW + C::STAGES * C::W_BYTES;
    uint8_t *const pW = smem + C::STAGES * C::A_BYTES, *const pS = pW + C::STAGES * C::W_BYTES;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wg = warp >> 2, wi = warp & 3;
    const int g = lane >> 2, t4 = lane & 3;
    const int mt = blockIdx.y;
    const int tslot = p.epi == MXG_EPI_ACT ? MXG_TR_G1 : MXG_TR_G2;
    if (tid == 0)
        tr_note(tslot, TR_START);
    griddep_launch();
    if (mt >= p.n_mtiles)
        return;
    const int e = p.tile_e[mt], m0 = p.tile_m0[mt] + (int)blockIdx.z * BNT; /* z: token sub-tile of the plan's tile */
    const int cnt = p.cnt[e], off = p.off[e];
    if (m0 >= cnt)
        return;
    const int n0 = blockIdx.x * C::BMW;
    const int KC = p.K_pad / MXG_BK, NG = p.N_pad >> 4;
    const uint8_t *wsrc = p.w + (size_t)e * p.w_estride + (size_t)(n0 >> 4) * 32 * C::TB;
    const size_t wstep = (size_t)NG * 32 * C::TB;
    const uint8_t *ssrc = WFMT == MXG_W_FP4 ? p.sc + (size_t)e * p.sc_estride + (size_t)(n0 >> 4) * 32 : nullptr;
    const size_t sstep = (size_t)NG * 32;

    /* the token pieces (row r, 16-byte piece c) this thread copies: rows of 128
     * bytes in the 128-byte swizzle, or (E4M3) of 64 bytes in the 64-byte one */
    constexpr int A_PIECES = BNT * PR;
    constexpr int A_IT = (A_PIECES + C::NT - 1) / C::NT;
    const uint8_t *a_src[A_IT];
    uint32_t a_dst[A_IT];
    bool a_ok[A_IT];
#pragma unroll
    for (int i = 0; i < A_IT; i++) {
        const int idx = tid + i * C::NT, r = idx / PR, c = idx % PR, m = m0 + r;
        a_ok[i] = (A_PIECES % C::NT == 0 || idx < A_PIECES) && m < cnt;
        const int srow = off + (m < cnt ? m : 0);
        const int arow = p.a_rows ? p.a_rows[srow] : srow;
        a_src[i] = (const uint8_t *)p.a + (size_t)arow * p.lda * (X ? 1 : 2) + c * 16;
        a_dst[i] = C::a_off(r, c);
    }
    /* the weight (and scale) pieces: a fixed count per thread (copy_pieces), so
     * that the copies are straight-line code (a loop from tid took ~30
     * instructions and three branches per chunk for one copy) */
    auto load_w = [&](int stage, int kc) {
        copy_pieces<C::W_BYTES / 16, C::NT>(sW + stage * C::W_BYTES + tid * 16, wsrc + (size_t)kc * wstep + tid * 16,
                                            tid);
        if (WFMT == MXG_W_FP4)
            copy_pieces<C::S_BYTES / 16, C::NT>(sS + stage * C::S_BYTES + tid * 16,
                                                ssrc + (size_t)kc * sstep + tid * 16, tid);
    };
    auto load_a = [&](int stage, int kc) {
        const uint32_t dst = sA + stage * C::A_BYTES;
#pragma unroll
        for (int i = 0; i < A_IT; i++)
            if (A_PIECES % C::NT == 0 || tid + i * C::NT < A_PIECES)
                cp_async16(dst + a_dst[i], a_src[i] + (size_t)kc * C::AROW, a_ok[i]);
    };

    /* weights do not depend on the previous kernel: prefetch them first */
#pragma unroll
    for (int st = 0; st < PRE; st++)
        if (st < KC)
            load_w(st, st);
    griddep_wait();
    if (tid == 0)
        tr_note(tslot, TR_READY);
#pragma unroll
    for (int st = 0; st < PRE; st++) {
        if (st < KC)
            load_a(st, st);
        cp_async_commit();
    }
    /* K segments (p.kseg > 0, mxg_kseg): the first segment's sums wait in this
     * CTA's slot of the stash (the tile's FP32 sums), the second's start from zero */
    constexpr int SLOT_F4 = C::NT * MT * NACC / 4; /* float4 per CTA */
    auto stash_slot = []() { return blockIdx.x + gridDim.x * (blockIdx.y + (size_t)gridDim.y * blockIdx.z); };
    const int KSEG = p.kseg;
    float acc[MT][NACC];
    float part[PART ? MT : 1][PART ? NACC : 1];
#pragma unroll
    for (int t = 0; t < MT; t++)
#pragma unroll
        for (int i = 0; i < NACC; i++) {
            acc[t][i] = 0.0f;
            if (PART)
                part[PART ? t : 0][PART ? i : 0] = 0.0f;
        }
    /* A fragment sets, one per k16 step of the chunk when MT == 1 (then three
     * steps' wgmmas stay in flight), else two */
    constexpr int NBUF = MT == 1 ? 4 : 2;
    uint32_t af[NBUF][MT][4];
    /* this lane's 16-row groups (one per m64 tile) */
    int grp[MT];
#pragma unroll
    for (int t = 0; t < MT; t++)
        grp[t] = (wg * MT + t) * 4 + wi;

    /* The K loop runs to the segment's end (one pass when KSEG is 0). The stash
     * sits between two passes, not in the loop: a branch to it inside the loop
     * made nvcc recompute addresses there (wgmma 2x128 tile: 188 instructions
     * per chunk against 157; 10-12% slower layers at T >= 256 on an H100,
     * bench/RESULTS.md session 33), and kc >= 0 keeps its stage arithmetic
     * unsigned as before. */
    int kc = 0, kend = KSEG > 0 ? KSEG : KC;
    for (;;) {
        for (; kc < kend; kc++) {
            __builtin_assume(kc >= 0);
            cp_async_wait<PRE - 1>();
            if (ENG == ENG_WG)
                fence_proxy_async();
            __syncthreads();
            /* wgmma: the lane's weight words of the chunk (MXFP4 16 bytes, FP8 32) and
             * its scale word into registers at once, ahead of the copies and the MMAs
             * (read step by step, each load waited behind the previous step's wgmma
             * fence, the asm's memory clobber: one shared-memory latency per step;
             * mma.sync keeps the step-by-step reads, its 2x128 tile would spill).
             * hs / hw are stg / wst below, computed here apart: declaring those
             * before the copies changes the mma.sync kernels' register allocation
             * (W8A8's 2x64 tile spilled 8 instructions instead of 5) */
            constexpr bool HOIST = ENG == ENG_WG && C::TB <= 32;
            uint32_t wv[MT][HOIST ? C::TB / 4 : 1], scw[MT];
            if constexpr (HOIST) {
                const int hs = kc % C::STAGES;
                const uint8_t *hw = pW + hs * C::W_BYTES;
#pragma unroll
                for (int t = 0; t < MT; t++) {
                    scw[t] = WFMT == MXG_W_FP4 ? *(const uint32_t *)(pS + hs * C::S_BYTES + grp[t] * 32 + g * 4) : 0u;
#pragma unroll
                    for (int q = 0; q < C::TB / 16; q++) {
                        const uint4 v = *(const uint4 *)(hw + (grp[t] * 32 + lane) * C::TB + 16 * q);
                        wv[t][4 * q] = v.x;
                        wv[t][4 * q + 1] = v.y;
                        wv[t][4 * q + 2] = v.z;
                        wv[t][4 * q + 3] = v.w;
                    }
                }
            }
            {
                const int nk = kc + PRE; /* into the stage of chunk kc - 2, whose MMAs are complete */
                if (nk < KC) {
                    load_w(nk % C::STAGES, nk);
                    load_a(nk % C::STAGES, nk);
                }
                cp_async_commit();
            }
            const int stg = kc % C::STAGES;
            const uint32_t a_st = sA + stg * C::A_BYTES;
            const uint8_t *wst = pW + stg * C::W_BYTES;
            Fp4Mults mm[MT];
#pragma unroll
            for (int t = 0; t < MT; t++)
                if (WFMT == MXG_W_FP4)
                    fp4_mults_t<BIG>(HOIST ? scw[t] : *(const uint32_t *)(pS + stg * C::S_BYTES + grp[t] * 32 + g * 4),
                                     mm[t]);
#pragma unroll
            for (int s = 0; s < NS; s++) {
                const int ab = NBUF == 4 ? s : (s & 1);
#pragma unroll
                for (int t = 0; t < MT; t++)
                    decode_step<WFMT, BIG>(HOIST ? wv[t] : (const uint32_t *)(wst + (grp[t] * 32 + lane) * C::TB), s,
                                           mm[t], af[ab][t]);
                if (ENG == ENG_WG) {
                    wgmma_fence();
                    const uint64_t desc = sw128_desc(a_st + 32 * s);
#pragma unroll
                    for (int t = 0; t < MT; t++) {
                        if constexpr (FLUSH)
                            Wgmma<BNT>::mma(part[t], af[ab][t], desc);
                        else
                            Wgmma<BNT>::mma(acc[t], af[ab][t], desc);
                    }
                    wgmma_commit();
                    wgmma_wait<NBUF - 1>();
                } else {
#pragma unroll
                    for (int jj = 0; jj < NJ; jj += 2) {
                        uint32_t b[4];
                        const int row = 8 * (jj + (lane >> 4)) + (lane & 7), c = 2 * s + ((lane >> 3) & 1);
                        ldmatrix_x4(b, a_st + C::a_off(row, c));
#pragma unroll
                        for (int t = 0; t < MT; t++) {
                            float *d = PART ? part[PART ? t : 0] : acc[t];
                            if (X) {
                                mma_16832_e4m3(d + jj * 4, af[ab][t], b[0], b[1]);
                                mma_16832_e4m3(d + (jj + 1) * 4, af[ab][t], b[2], b[3]);
                            } else {
                                mma_16816(d + jj * 4, af[ab][t], b[0], b[1]);
                                mma_16816(d + (jj + 1) * 4, af[ab][t], b[2], b[3]);
                            }
                        }
                    }
                }
            }
            /* per 128-wide K slice: the partial sums to FP32, scaled by the slice's
             * factors when FLUSH (the FP8 MMAs' own sums keep fewer bits) */
            if (PART && ((kc & 1) || kc == KC - 1)) {
                if (ENG == ENG_WG) {
                    wgmma_wait<0>();
#pragma unroll
                    for (int t = 0; t < MT; t++)
                        reg_fence(part[PART ? t : 0]);
                }
                const int kb = kc >> 1;
#pragma unroll
                for (int t = 0; t < MT; t++) {
                    const int n = n0 + grp[t] * 16 + g;
                    const float rf0 = FLUSH ? row_factor(p, e, n, kb) : 1.0f,
                                rf1 = FLUSH ? row_factor(p, e, n + 8, kb) : 1.0f;
#pragma unroll
                    for (int j = 0; j < NJ; j++)
#pragma unroll
                        for (int el = 0; el < 2; el++) {
                            const int m = m0 + 8 * j + 2 * t4 + el;
                            const float tf = FLUSH ? tok_factor(p, off + (m < cnt ? m : 0), kb) : 1.0f;
                            float *pp = part[PART ? t : 0];
                            acc[t][j * 4 + el] += pp[j * 4 + el] * (rf0 * tf);
                            acc[t][j * 4 + 2 + el] += pp[j * 4 + 2 + el] * (rf1 * tf);
                            pp[j * 4 + el] = 0.0f;
                            pp[j * 4 + 2 + el] = 0.0f;
                        }
                }
            }
        }
        if (kend == KC)
            break;
        /* the first segment's sums to the stash (PART: flushed at its last slice) */
        if (ENG == ENG_WG) {
            wgmma_wait<0>();
#pragma unroll
            for (int t = 0; t < MT; t++)
                reg_fence(acc[t]);
        }
        float4 *dst = (float4 *)p.stash + stash_slot() * SLOT_F4 + tid;
#pragma unroll
        for (int t = 0; t < MT; t++)
#pragma unroll
            for (int i = 0; i < NACC; i += 4) {
                __stcg(dst + (size_t)(t * NACC + i) / 4 * C::NT,
                       make_float4(acc[t][i], acc[t][i + 1], acc[t][i + 2], acc[t][i + 3]));
                acc[t][i] = acc[t][i + 1] = acc[t][i + 2] = acc[t][i + 3] = 0.0f;
            }
        kend = KC;
    }
    if (ENG == ENG_WG) {
        wgmma_wait<0>();
#pragma unroll
        for (int t = 0; t < MT; t++)
            reg_fence(acc[t]);
    }
    if (KSEG > 0) { /* first segment + second segment */
        const float4 *src = (const float4 *)p.stash + stash_slot() * SLOT_F4 + tid;
#pragma unroll
        for (int t = 0; t < MT; t++)
#pragma unroll
            for (int i = 0; i < NACC; i += 4) {
                const float4 f = __ldcg(src + (size_t)(t * NACC + i) / 4 * C::NT);
                acc[t][i] = f.x + acc[t][i];
                acc[t][i + 1] = f.y + acc[t][i + 1];
                acc[t][i + 2] = f.z + acc[t][i + 2];
                acc[t][i + 3] = f.w + acc[t][i + 3];
            }
    }
    cp_async_wait<0>();
    __syncthreads(); /* every warp is done with the stages: the epilogue reuses them */

    /* epilogue: finish each value, stage the tile as [token][column] BF16, write rows out */
    const bool act = p.epi == MXG_EPI_ACT;
#pragma unroll
    for (int t = 0; t < MT; t++) {
        const int nl = grp[t] * 16 + g, n = n0 + nl;
#pragma unroll
        for (int j = 0; j < NJ; j++)
#pragma unroll
            for (int el = 0; el < 2; el++) {
                const int col = 8 * j + 2 * t4 + el, m = m0 + col;
                const int s = off + (m < cnt ? m : 0);
                const float v0 = finish_value(p, e, s, n, acc[t][j * 4 + el]);
                const float v1 = finish_value(p, e, s, n + 8, acc[t][j * 4 + 2 + el]);
                uint16_t *row = (uint16_t *)(smem + col * C::EPI_PITCH);
                if (act) {
                    row[grp[t] * 8 + g] = (uint16_t)f_to_bf16(act_apply(p.act, v0, v1, p.limit, p.alpha));
                } else {
                    row[nl] = (uint16_t)f_to_bf16(v0);
                    row[nl + 8] = (uint16_t)f_to_bf16(v1);
                }
            }
    }
    __syncthreads();
    const int ntok = cnt - m0 < BNT ? cnt - m0 : BNT;
    const int ncols = act ? C::BMW / 2 : C::BMW;
    const int c0 = act ? n0 / 2 : n0;
    const int limit = act ? p.ldo : p.N;
    if (!(p.ldo & 7)) {
        const int per = ncols / 8;
        for (int idx = tid; idx < ntok * per; idx += C::NT) {
            const int r = idx / per, c8 = idx - r * per, col = c0 + c8 * 8;
            if (col >= limit)
                continue;
            const int s = off + m0 + r;
            uint16_t *dst = p.out + (size_t)(act ? s : p.out_rows[s]) * p.ldo + col;
            const uint16_t *srcp = (const uint16_t *)(smem + r * C::EPI_PITCH) + c8 * 8;
            if (col + 8 <= limit) {
                *(uint4 *)dst = *(const uint4 *)srcp;
            } else {
                for (int u = 0; col + u < limit; u++)
                    dst[u] = srcp[u];
            }
        }
    } else {
        for (int idx = tid; idx < ntok * ncols; idx += C::NT) {
            const int r = idx / ncols, cc = idx - r * ncols, col = c0 + cc;
            if (col >= limit)
                continue;
            const int s = off + m0 + r;
            p.out[(size_t)(act ? s : p.out_rows[s]) * p.ldo + col] = ((const uint16_t *)(smem + r * C::EPI_PITCH))[cc];
        }
    }
    if (tid == 0)
        tr_note(tslot, TR_END);
}

/* Sets a function attribute once per device: it belongs to the function in
 * the current device's context, so remember it per device (bit d of `done`,
 * which any thread may update), not once per process. */
template <typename K>
static cudaError_t func_attr_once(std::atomic<unsigned long long> &done, K kern, cudaFuncAttribute attr, int value)
{
    int dev = 0;
    cudaError_t err = cudaGetDevice(&dev);
    if (err != cudaSuccess)
        return err;
    const unsigned long long bit = dev >= 0 && dev < 64 ? 1ull << dev : 0ull;
    if (!bit || !(done.load(std::memory_order_acquire) & bit)) {
        err = cudaFuncSetAttribute(kern, attr, value);
        if (err != cudaSuccess)
            return err;
        done.fetch_or(bit, std::memory_order_acq_rel);
    }
    return cudaSuccess;
}

template <int NWG, int MT, int BNT, int WFMT, bool FLUSH, int ENG, int MAXST, int MINB = 1>
static int launch_tc(const mxg_gemm_params_t *p, cudaStream_t st, int zsub)
{
    typedef TcCfg<NWG, MT, BNT, WFMT, MAXST> C;
    auto kern = WFMT == MXG_W_FP4 && !p->sc_big ? gemm_tc<NWG, MT, BNT, WFMT, FLUSH, ENG, MAXST, false, MINB>
                                                : gemm_tc<NWG, MT, BNT, WFMT, FLUSH, ENG, MAXST, true, MINB>;
    /* the dynamic shared memory limit, per device (func_attr_once) */
    static std::atomic<unsigned long long> attr_set[2];
    cudaError_t err = func_attr_once(attr_set[WFMT == MXG_W_FP4 && !p->sc_big], kern,
                                     cudaFuncAttributeMaxDynamicSharedMemorySize, C::SMEM);
    if (err != cudaSuccess)
        return (int)err;
    cudaLaunchConfig_t lc = {};
    lc.gridDim = dim3((unsigned)((p->N + C::BMW - 1) / C::BMW), (unsigned)p->n_mtiles, (unsigned)zsub);
    if (p->kseg > 0 && (size_t)lc.gridDim.x * lc.gridDim.y * lc.gridDim.z * C::BMW * BNT > p->stash_floats)
        return (int)cudaErrorInvalidValue; /* a stash slot per CTA */
    lc.blockDim = dim3(C::NT);
    lc.dynamicSmemBytes = C::SMEM;
    lc.stream = st;
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = 1;
    lc.attrs = at;
    lc.numAttrs = p->pdl ? 1 : 0;
    return (int)cudaLaunchKernelEx(&lc, kern, *p);
}

/* Large-batch tile (MXEP_CUDA_L): 1 (default, "2x128"): two CTAs per SM of 128 weight
 * rows x 128 tokens (one per token half of the plan's 256-token m tile), each with its
 * own 5 stages and 128 registers per thread, so that one CTA's waits and epilogue overlap
 * the other's MMAs; 0 ("1x256", the earlier tile): one CTA per SM of 128 x 256. Same K
 * order and MMAs: the same bits. On an H200 the default took T = 8192 from 33% to 51%
 * of cuBLAS's BF16 rate (tensor pipe 35% -> 50% busy; bench/RESULTS.md); with the
 * straight-line copies and one weight load per chunk (session 27) 54-58% on an H200. */
static int l_variant()
{
    static int v = -1;
    return env_setting(&v, SET_L);
}

/* Large-batch tile of the kernels that keep partial sums per 128-wide K slice (E4M3
 * tokens, FP8 block scales, per-group activations), MXEP_CUDA_LF: 1 (default, "2x64"): two CTAs per SM of
 * 128 weight rows x 64 tokens, 4 stages each, at most 128 registers, so that one CTA's
 * flushes overlap the other's MMAs; 0 ("1x128"): one CTA per SM of 128 x 128 with 8
 * stages (the accumulators and partial sums of 128 tokens need more registers than two
 * CTAs have). Same bits. On the H100 2x64 took W8A8 at T = 2048 / 8192 from 5.47 / 17.73
 * ms to 4.21 / 14.75 (bench/RESULTS.md). The flushing kernels with BF16 tokens (block
 * scales or per-group activations on the BF16 tensor cores) take it too: 1.03x to 1.23x
 * on an H200 (session 15, LAYER_STEPS=w8a8 in bench/layer_device.sh). */
static int lf_variant()
{
    static int v = -1;
    return env_setting(&v, SET_LF);
}

template <int WFMT, bool FLUSH, int ENG> static int launch_cfg(const mxg_gemm_params_t *p, int cfg, cudaStream_t st)
{
    if (cfg == MXG_CFG_M) /* (FP8 block scales on wgmma: bounded to two CTAs per SM, 128 registers, as
                           * before the K segments: their code took it to 138) */
        return launch_tc<2, 1, 64, WFMT, FLUSH, ENG, 6, FLUSH && WFMT == MXG_W_FP8 && ENG == ENG_WG ? 2 : 1>(p, st, 1);
    /* large batches: 128 weight rows x 128 tokens, two CTAs per m tile of 256 (the
     * flushing kernels keep a second accumulator set: see lf_variant) */
    if constexpr (FLUSH || WFMT == MXG_W_FP8X) {
        if (lf_variant() == 1)
            return launch_tc<2, 1, 64, WFMT, FLUSH, ENG, 4, 2>(p, st, 4);
        return launch_tc<2, 1, 128, WFMT, FLUSH, ENG, 8>(p, st, 2);
    } else if (l_variant() == 1) /* two CTAs per SM of 128 rows x 128 tokens, 5 stages each */
        return launch_tc<2, 1, 128, WFMT, FLUSH, ENG, 5, 2>(p, st, 2);
    else
        return launch_tc<2, 1, 256, WFMT, FLUSH, ENG, 8>(p, st, 1);
}

/* Decode kernels for MXFP4 without big scales, picked by MXEP_CUDA_DEC:
 * a45 (session 22): every kernel a ring of 4 weight chunks at 5 CTAs of 4
 * warps per SM (96 registers, no spill), token fragments one chunk ahead (the
 * gathering GEMM1: its token words). a48s (session 23): a45, but the kernels
 * whose tile's token rows fit 24 KB take them into shared memory once (TSM)
 * and read each chunk's fragments from there, with 8 weight chunks in flight
 * at 4 CTAs per SM. c48s (session 24, the default): a48s, but where all of such
 * a GEMM's CTAs fit at 3 per SM (T = 1: GEMM2's 360 on 132 SMs) it runs in
 * CTAs of 2 warps capped at 3 per SM by their shared memory, so that they sit
 * beside GEMM1's from the start. Against a45 on an H100, points of the HBM
 * copy: T = 1 cold +2.0 to +2.4, T = 8 cold +0.2 to +3.1, T = 64 cold -0.6 to
 * -1.0 (bench/RESULTS.md). Bitwise the same results. Where GEMM2's K is cut in
 * two segments (mxg_kseg, every tile configuration), the capped kernel's row
 * groups are two warps each, one per segment (session 33). The other variants that
 * sessions 12-31 measured (rings of 6-12 at 3-5 CTAs per SM, plain weight
 * loads, tokens two chunks ahead, the operands swapped, GEMM2 overlapping
 * GEMM1 (c48v), GEMM1 asking for GEMM2's weights into L2 (MXEP_CUDA_PF2)) all
 * lost and were removed in session 32; bench/RESULTS.md keeps their figures. */
enum { DEC_A45 = 0, DEC_A48S = 1, DEC_C48S = 2 };
static int dec_variant()
{
    static int v = -1;
    return env_setting(&v, SET_DEC);
}

/* value(dev) for the current device, once per device: cached in cache[dev]
 * as value + 1 (0: not yet; a negative value is not cached, and returned as
 * -1; a race computes it twice, the same). -1 when the device is unknown. */
template <typename F> static long long per_device(std::atomic<long long> (&cache)[64], F value)
{
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) {
        (void)cudaGetLastError();
        return -1;
    }
    long long c = cache[dev].load(std::memory_order_relaxed);
    if (c == 0) {
        const long long v = value(dev);
        if (v < 0)
            return -1;
        c = v + 1;
        cache[dev].store(c, std::memory_order_relaxed);
    }
    return c - 1;
}

/* The dynamic shared memory that caps a launch of kern (threads per CTA) at
 * max_ctas of its CTAs per SM: the smallest multiple of 1 KB up to 48 KB at
 * which the occupancy calculator says so, asked for after the kernel's
 * carveout is set; 0 when none does (the calculator may count the whole of an
 * SM's shared memory rather than the carveout preference: then no size up to
 * 48 KB caps an H100 at 3). Once per device: cache is the kernel's own.
 * mxgpu_bench --trace's "max" column (most CTAs started on one SM) reads at
 * most max_ctas where it held. */
static size_t cap_ctas(std::atomic<long long> (&cache)[64], void (*kern)(const mxg_gemm_params_t), int threads,
                       int max_ctas)
{
    const long long b = per_device(cache, [&](int) {
        for (size_t b = 1024; b <= 48 * 1024; b += 1024) {
            int n = 0;
            if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kern, threads, b) != cudaSuccess) {
                (void)cudaGetLastError();
                return -1ll; /* not cached: asked again at the next launch */
            }
            if (n <= max_ctas)
                return (long long)b;
        }
        return 0ll;
    });
    return b > 0 ? (size_t)b : 0;
}

/* The current device's SMs (0 when unknown), once per device. */
static int sm_count()
{
    static std::atomic<long long> cache[64];
    const long long n = per_device(cache, [](int dev) {
        int v = 0;
        if (cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) {
            (void)cudaGetLastError();
            return -1ll;
        }
        return (long long)v;
    });
    return n > 0 ? (int)n : 0;
}

/* The decode kernel's shared token rows (gemm_dec's TSM): a tile's bytes, and
 * whether a launch may take them (at most 24 KB). */
static size_t tsm_bytes(const mxg_gemm_params_t *p)
{
    return (size_t)p->tile_rows * ((size_t)p->K_pad * 2 + 16);
}
static bool tsm_fits(const mxg_gemm_params_t *p)
{
    return p->tile_rows > 0 && tsm_bytes(p) <= 24576;
}
/* c48s's capped kernel (CTAs of 2 warps, at most 3 per SM): its grid.x, and
 * whether all of its CTAs fit at once (T = 1: 360 CTAs on 132 SMs). */
static unsigned capped_gx(const mxg_gemm_params_t *p)
{
    return (unsigned)((p->N + 31) / 32);
}
static bool capped_fits(const mxg_gemm_params_t *p)
{
    return (long long)capped_gx(p) * p->n_mtiles <= 3LL * sm_count();
}

/* Small batches (MXG_CFG_S): the decode kernel, 4 warps of 16 rows per CTA
 * (c48s's capped kernel: 2).
 * NAT: the token rows are in their natural column order (mxg_gemm_params_t.a_nat). */
template <int WFMT, bool FLUSH, bool NAT> static int launch_dec_o(const mxg_gemm_params_t *p, cudaStream_t st)
{
    cudaLaunchConfig_t lc = {};
    lc.gridDim = dim3((unsigned)((p->N + 63) / 64), (unsigned)p->n_mtiles);
    lc.blockDim = dim3(128);
    lc.stream = st;
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = 1;
    lc.attrs = at;
    lc.numAttrs = p->pdl ? 1 : 0;
    /* chunks in flight (FP8 tokens: 6, the registers of 8 spill) */
    constexpr int D = WFMT == MXG_W_FP4 ? 12 : WFMT == MXG_W_FP8 ? 8 : WFMT == MXG_W_FP8X ? 6 : 4;
    void (*kern)(const mxg_gemm_params_t) = gemm_dec<WFMT, FLUSH, true, D, 3, NAT>;
    if constexpr (WFMT == MXG_W_FP4) {
        if (FLUSH) {
            if (!p->sc_big)
                kern = gemm_dec<WFMT, FLUSH, false, D, 3, NAT>;
        } else if (!p->sc_big) {
            const int v = dec_variant();
            /* a48s / c48s: this GEMM takes its tile's token rows into shared memory */
            const size_t tsm = tsm_bytes(p);
            const bool shared_rows = v != DEC_A45 && !NAT && tsm_fits(p);
            /* c48s: the capped 2-warp CTAs only where they all fit at 3 per SM and
             * a cap was found; else a48s's kernel. (c5s, the same with a ring of
             * 5 chunks in 93 registers so that every CTA fits beside GEMM1's from
             * the start, did start them all at 1.4 us on an H100 but was 1.5
             * points of the HBM copy slower at T = 1: bench/RESULTS.md session 25) */
            /* With K segments (p->kseg) its row groups are two warps each, one per
             * segment (CTAs of 4 warps, 120 registers: 4 fit an SM by registers, so
             * the shared memory alone caps them at 3 where a cap is found): at T = 1
             * GEMM2 then ends 2.7-3.0 us sooner on an H100 (bench/RESULTS.md, session 32). */
            const int ks2 = p->kseg > 0;
            bool capped = shared_rows && v == DEC_C48S && capped_fits(p);
            size_t cap = 0;
            const size_t sums = ks2 ? (size_t)2 * 32 * 8 * sizeof(float) : 0; /* KS = 2: second segment's sums */
            void (*ck)(const mxg_gemm_params_t) = ks2 ? gemm_dec<WFMT, FLUSH, false, 8, 4, false, -1, true, 2, 2>
                                                      : gemm_dec<WFMT, FLUSH, false, 8, 8, false, -1, true, 2>;
            if (capped) {
                static std::atomic<unsigned long long> carved_c[2];
                static std::atomic<long long> cap_cache[2][64];
                const cudaError_t err =
                    func_attr_once(carved_c[ks2], ck, cudaFuncAttributePreferredSharedMemoryCarveout, 50);
                if (err != cudaSuccess)
                    return (int)err;
                cap = cap_ctas(cap_cache[ks2], ck, 64 << ks2, 3);
                if (ks2 && cap < tsm + sums)
                    cap = tsm + sums; /* no cap found, or too small: the registers cap it at 4 */
                capped = cap >= tsm + sums;
            }
            kern = NAT           ? gemm_dec<WFMT, FLUSH, false, 4, 5, NAT, NAT ? 1 : 0>
                   /* past here only rows in mxg_tok_pos order (NAT is false): the
                    * kernels name it, so that no unreachable gathering kernel is built */
                   : capped      ? ck
                   : shared_rows ? gemm_dec<WFMT, FLUSH, false, 8, 4, false, -1, true>
                                 : gemm_dec<WFMT, FLUSH, false, 4, 5, false>;
            if (v != DEC_A45) {
                /* every kernel of a48s and c48s asks for the same carveout, so that
                 * an SM running GEMM1's CTAs has the room for GEMM2's beside them (an
                 * SM changes it only when idle: bench/RESULTS.md, session 20), per
                 * kernel (carved[0]: the ones without shared rows, [1]: a48s's
                 * shared-rows kernel; the capped one is set above) and device */
                static std::atomic<unsigned long long> carved[2];
                if (!capped) {
                    const cudaError_t err = func_attr_once(carved[shared_rows ? 1 : 0], kern,
                                                           cudaFuncAttributePreferredSharedMemoryCarveout, 50);
                    if (err != cudaSuccess)
                        return (int)err;
                }
                if (shared_rows)
                    lc.dynamicSmemBytes = tsm;
                if (capped) {
                    lc.gridDim.x = capped_gx(p);
                    lc.blockDim.x = 64 << ks2;
                    lc.dynamicSmemBytes = cap;
                }
            }
        }
    }
    return (int)cudaLaunchKernelEx(&lc, kern, *p);
}
template <int WFMT, bool FLUSH> static int launch_dec(const mxg_gemm_params_t *p, cudaStream_t st)
{
    if constexpr (WFMT != MXG_W_FP8X) {
        if (p->a_nat)
            return launch_dec_o<WFMT, FLUSH, true>(p, st);
    }
    return launch_dec_o<WFMT, FLUSH, false>(p, st);
}

template <int WFMT, bool FLUSH> static int launch_eng(const mxg_gemm_params_t *p, int cfg, cudaStream_t st)
{
    if (cfg == MXG_CFG_S) /* mma.sync on every device: bitwise the same as wgmma on sm_90 (tests/gpu) */
        return launch_dec<WFMT, FLUSH>(p, st);
    if constexpr (WFMT == MXG_W_FP8X) { /* mma.sync .e4m3 only (gemm_tc) */
        return launch_cfg<WFMT, FLUSH, ENG_SYNC>(p, cfg, st);
    } else {
        if (p->mma == MXG_MMA_WGMMA)
            return launch_cfg<WFMT, FLUSH, ENG_WG>(p, cfg, st);
        return launch_cfg<WFMT, FLUSH, ENG_SYNC>(p, cfg, st);
    }
}

#else
/* ------------------------------------------------------------ portable SIMT path (HIP) */

/* The weight (n, k) of expert e, decoded from the packed layout. */
__device__ float w_elem(const mxg_gemm_params_t &p, int e, int n, int k)
{
    int sh = 0;
    const size_t o = mxg_w_offset(p.wfmt, p.N_pad, n, k, &sh);
    const uint8_t *w = p.w + (size_t)e * p.w_estride;
    if (p.wfmt == MXG_W_FP4) {
        const uint32_t word = (uint32_t)w[o] | (uint32_t)w[o + 1] << 8 | (uint32_t)w[o + 2] << 16 | (uint32_t)w[o + 3] << 24;
        uint32_t nib = 0;
        for (int j = 0; j < 4; j++)
            nib |= ((word >> mxg_fp4_bit(sh, j)) & 1u) << j;
        return fp4_to_f(nib) * e8m0_to_f(p.sc[(size_t)e * p.sc_estride + mxg_sc_offset(p.N_pad, n, k >> 5)]);
    }
    if (mxg_wfmt_fp8(p.wfmt))
        return bf16_to_f(e4m3_to_bf16(w[o]));
    return bf16_to_f(*(const uint16_t *)(w + o));
}

/* One thread per (output unit, token): an activation index (GEMM1: its gate
 * and up rows) or an output row; the same per-slice flush as the MMA path. */
__global__ void gemm_simt(const mxg_gemm_params_t p, int bm)
{
    const int mt = blockIdx.y;
    if (mt >= p.n_mtiles)
        return;
    const int e = p.tile_e[mt], m0 = p.tile_m0[mt];
    const int cnt = p.cnt[e], off = p.off[e];
    const int u = blockIdx.x * blockDim.x + threadIdx.x;
    const bool act = p.epi == MXG_EPI_ACT;
    int rows[2];
    if (act) {
        rows[0] = (u >> 3) * 16 + (u & 7);
        rows[1] = rows[0] + 8;
        if (u >= p.ldo || rows[1] >= p.N_pad)
            return;
    } else {
        rows[0] = rows[1] = u;
        if (u >= p.N)
            return;
    }
    for (int m = m0; m < m0 + bm && m < cnt; m++) {
        const int s = off + m;
        const uint16_t *arow = p.a + (size_t)(p.a_rows ? p.a_rows[s] : s) * p.lda;
        float v[2];
        for (int r = 0; r < (act ? 2 : 1); r++) {
            float acc = 0.0f, part = 0.0f, first = 0.0f;
            for (int k = 0; k < p.K_pad; k++) {
                if (p.kseg > 0 && k == p.kseg * MXG_BK) { /* K segments, as the MMA kernels sum them */
                    first = acc;
                    acc = 0.0f;
                }
                const float x = bf16_to_f(arow[k]) * w_elem(p, e, rows[r], k);
                if (p.flush)
                    part += x;
                else
                    acc += x;
                if (p.flush && ((k & 127) == 127 || k == p.K_pad - 1)) {
                    acc += part * (row_factor(p, e, rows[r], k >> 7) * tok_factor(p, s, k >> 7));
                    part = 0.0f;
                }
            }
            v[r] = finish_value(p, e, s, rows[r], p.kseg > 0 ? first + acc : acc);
        }
        if (act)
            p.out[(size_t)s * p.ldo + u] = (uint16_t)f_to_bf16(act_apply(p.act, v[0], v[1], p.limit, p.alpha));
        else
            p.out[(size_t)p.out_rows[s] * p.ldo + u] = (uint16_t)f_to_bf16(v[0]);
    }
}
#endif

/* ------------------------------------------------------------ activation quantizer */

__global__ void quant_rows(const mxg_quant_params_t p)
{
    const int tslot = p.src_rows ? MXG_TR_Q1 : MXG_TR_Q2; /* GEMM1's input is gathered from the token rows */
    if (threadIdx.x == 0)
        tr_note(tslot, TR_START);
    griddep_launch();
    griddep_wait();
    if (threadIdx.x == 0)
        tr_note(tslot, TR_READY);
    const int r = blockIdx.x;
    if (r >= p.n_rows)
        return;
    const uint16_t *in = p.in + (size_t)(p.src_rows ? p.src_rows[r] : r) * p.ld_in;
    uint16_t *out = p.out8 ? nullptr : p.out + (size_t)r * p.ld_out;
    uint8_t *out8 = p.out8 ? p.out8 + (size_t)r * p.ld_out : nullptr;
    /* logical column k of the input / output row */
    auto at_in = [&](int k) { return in[p.perm_in ? mxg_tok_pos(k) : k]; };
    auto put = [&](int k, uint16_t v) { out[p.perm_out ? mxg_tok_pos(k) : k] = v; };
    /* an E4M3 value q: as BF16, or as its byte (out8) */
    auto putq = [&](int k, float q) {
        if (out8)
            out8[p.perm_out ? mxg_tok_pos8(k) : k] = (uint8_t)e4m3_byte(q);
        else
            put(k, (uint16_t)f_to_bf16(q));
    };
    __shared__ float red[32];
    if (p.mode == MXG_Q_COPY) {
        for (int k = threadIdx.x; k < p.K; k += blockDim.x)
            put(k, at_in(k));
    } else if (p.mode == MXG_Q_STATIC || p.mode == MXG_Q_TOKEN) {
        float s;
        if (p.mode == MXG_Q_STATIC) {
            s = p.row_scale[r];
        } else {
            float amax = 0.0f;
            for (int k = threadIdx.x; k < p.K; k += blockDim.x)
                amax = fmaxf(amax, fabsf(bf16_to_f(at_in(k))));
            for (int o = 16; o > 0; o >>= 1)
                amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
            if ((threadIdx.x & 31) == 0)
                red[threadIdx.x >> 5] = amax;
            __syncthreads();
            if (threadIdx.x == 0) {
                float m = 0.0f;
                for (int w = 0; w < (int)(blockDim.x >> 5); w++)
                    m = fmaxf(m, red[w]);
                red[0] = fmaxf(m / 448.0f, 1.0f / (448.0f * 512.0f));
                p.row_scale[r] = red[0];
            }
            __syncthreads();
            s = red[0];
        }
        /* in place (in == out) each thread reads and writes its own columns */
        for (int k = threadIdx.x; k < p.K; k += blockDim.x)
            putq(k, f_to_e4m3(bf16_to_f(at_in(k)) / s));
    } else {
        /* one warp per 128 group, groups strided over warps */
        const int warps = blockDim.x >> 5, w = threadIdx.x >> 5, l = threadIdx.x & 31;
        for (int gi = w; gi < p.n_grp; gi += warps) {
            float amax = 0.0f;
            for (int k = gi * 128 + l; k < gi * 128 + 128 && k < p.K; k += 32)
                amax = fmaxf(amax, fabsf(bf16_to_f(at_in(k))));
            for (int o = 16; o > 0; o >>= 1)
                amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
            float s = fmaxf(amax / 448.0f, 1.0f / (448.0f * 512.0f));
            if (l == 0)
                p.grp[(size_t)r * p.n_grp + gi] = s;
            for (int k = gi * 128 + l; k < gi * 128 + 128 && k < p.K; k += 32)
                putq(k, f_to_e4m3(bf16_to_f(at_in(k)) / s));
        }
    }
    for (int k = p.K + (int)threadIdx.x; k < p.pad_out; k += blockDim.x)
        putq(k, 0.0f);
    if (threadIdx.x == 0)
        tr_note(tslot, TR_END);
}

/* ------------------------------------------------------------ combine */

__global__ void combine_rows(const mxg_combine_params_t p)
{
    if (threadIdx.x == 0)
        tr_note(MXG_TR_COMB, TR_START);
    griddep_launch();
    griddep_wait();
    if (threadIdx.x == 0)
        tr_note(MXG_TR_COMB, TR_READY);
    const int h = blockIdx.x * blockDim.x + threadIdx.x;
    if (h >= p.H)
        return;
    for (int t = blockIdx.y; t < p.n_tokens; t += gridDim.y) {
        float v = p.out[(size_t)t * p.H + h];
        for (int i = p.tok_off[t]; i < p.tok_off[t + 1]; i++) {
            int a = p.tok_list[i];
            v += p.w[a] * bf16_to_f(p.y[(size_t)a * p.H + h]);
        }
        p.out[(size_t)t * p.H + h] = v;
    }
    if ((threadIdx.x & 31) == 0)
        tr_note(MXG_TR_COMB, TR_END);
}

/* ------------------------------------------------------------ launchers */

extern "C" int mxi_gpu_cfg_bm(int cfg)
{
    return mxg_cfg_bm(cfg);
}

static int gemm_launch_part(const mxg_gemm_params_t *p, int cfg, cudaStream_t st)
{
#if !defined(MXG_HIP)
    /* per-slice flushes come with FP8 block scales or per-group activations (W8A8) only */
    if (!mxg_wfmt_fp8(p->wfmt) && p->flush)
        return (int)cudaErrorInvalidValue;
    /* K segments: where mxg_kseg puts them, never in GEMM1's gather, and the
     * tensor-core tiles with their stash */
    if (p->kseg != 0 && (p->kseg != mxg_kseg(p->K_pad / MXG_BK) || p->a_nat ||
                         (cfg != MXG_CFG_S && !p->stash)))
        return (int)cudaErrorInvalidValue;
    if (p->wfmt == MXG_W_FP8X)
        return p->flush ? launch_eng<MXG_W_FP8X, true>(p, cfg, st) : launch_eng<MXG_W_FP8X, false>(p, cfg, st);
    if (p->wfmt == MXG_W_FP4)
        return launch_eng<MXG_W_FP4, false>(p, cfg, st);
    if (p->wfmt == MXG_W_BF16)
        return launch_eng<MXG_W_BF16, false>(p, cfg, st);
    if (p->flush)
        return launch_eng<MXG_W_FP8, true>(p, cfg, st);
    return launch_eng<MXG_W_FP8, false>(p, cfg, st);
#else
    if (p->wfmt == MXG_W_FP8X) /* E4M3 token rows: the host picks them on sm_90 only */
        return (int)cudaErrorInvalidValue;
    int bm = mxi_gpu_cfg_bm(cfg);
    const int units = p->epi == MXG_EPI_ACT ? p->ldo : p->N;
    dim3 grid((units + 127) / 128, p->n_mtiles);
    gemm_simt<<<grid, 128, 0, st>>>(*p, bm);
    return (int)cudaGetLastError();
#endif
}

extern "C" int mxi_gpu_gemm_launch(const mxg_gemm_params_t *p, int cfg, void *stream)
{
    cudaStream_t st = (cudaStream_t)stream;
    if (p->n_mtiles <= 0)
        return 0;
    /* gridDim.y is at most 65535: launch the m tiles in slices of that many
     * (the kernel reads its tile from tile_e / tile_m0, so a slice is a view) */
    const int max_y = 65535;
    for (int base = 0; base < p->n_mtiles; base += max_y) {
        mxg_gemm_params_t q = *p;
        q.tile_e = p->tile_e + base;
        q.tile_m0 = p->tile_m0 + base;
        q.n_mtiles = p->n_mtiles - base < max_y ? p->n_mtiles - base : max_y;
        if (base > 0)
            q.pdl = 0; /* a later slice follows a GEMM slice, not the producer of its input */
        int rc = gemm_launch_part(&q, cfg, st);
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* ------------------------------------------------------------ read probe (mxgpu_bench --probe) */

/* Reads n_experts matrices of NG 16-row groups x KC chunks of 512 bytes (the
 * MXFP4 decode kernel's weight pieces, scales left out) with the decode
 * kernel's grid, warps and register ring of D chunks, and nothing else: an XOR
 * of the words, one word written per lane. CONTIG = 0 walks the packed layout
 * (chunk-major: a warp's consecutive chunks lie NG x 512 bytes apart); CONTIG = 1
 * a layout where each row group's chunks follow each other. Its speed against
 * the layer's GEMMs tells what the decode kernel loses beyond reading. */
#if !defined(MXG_HIP)
template <int D, bool CONTIG>
__global__ void __launch_bounds__(128) read_probe(const uint4 *w, size_t expert_u4, int NG, int KC, uint32_t *out)
{
    const int lane = threadIdx.x & 31, rg = blockIdx.x * 4 + (threadIdx.x >> 5), e = blockIdx.y;
    if (rg >= NG)
        return;
    const uint4 *base = w + (size_t)e * expert_u4 + lane;
    auto at = [&](int kc) {
        return CONTIG ? base + ((size_t)rg * KC + kc) * 32 : base + ((size_t)kc * NG + rg) * 32;
    };
    uint4 r[D];
#pragma unroll
    for (int u = 0; u < D; u++)
        if (u < KC)
            r[u] = __ldg(at(u));
    uint32_t x = 0;
    for (int kc = 0; kc < KC; kc += D) {
#pragma unroll
        for (int u = 0; u < D; u++)
            if (kc + u < KC) {
                x ^= r[u].x ^ r[u].y ^ r[u].z ^ r[u].w;
                if (kc + u + D < KC)
                    r[u] = __ldg(at(kc + u + D));
            }
    }
    out[((size_t)e * NG + rg) * 32 + lane] = x;
}
#endif

extern "C" int mxi_gpu_read_probe(const void *w, size_t expert_bytes, int n_experts, int NG, int KC, int variant,
                                  uint32_t *out, void *stream)
{
#if !defined(MXG_HIP)
    const dim3 grid((unsigned)((NG + 3) / 4), (unsigned)n_experts), block(128);
    const uint4 *w4 = (const uint4 *)w;
    const size_t eu4 = expert_bytes / 16;
    cudaStream_t st = (cudaStream_t)stream;
    switch (variant) {
    case 0: read_probe<6, false><<<grid, block, 0, st>>>(w4, eu4, NG, KC, out); break;
    case 1: read_probe<12, false><<<grid, block, 0, st>>>(w4, eu4, NG, KC, out); break;
    case 2: read_probe<6, true><<<grid, block, 0, st>>>(w4, eu4, NG, KC, out); break;
    case 3: read_probe<12, true><<<grid, block, 0, st>>>(w4, eu4, NG, KC, out); break;
    default: return (int)cudaErrorInvalidValue;
    }
    return (int)cudaGetLastError();
#else
    (void)w, (void)expert_bytes, (void)n_experts, (void)NG, (void)KC, (void)variant, (void)out, (void)stream;
    return -1; /* not built for HIP */
#endif
}

/* ------------------------------------------------------------ L2 flush (mxgpu_bench) */

/* Reads n16 16-byte words with plain (cached) loads, so that they take the L2
 * with clean lines and whatever was there before goes. The XOR is stored only
 * when it equals `never`, which the caller picks unequal to the buffer's XOR:
 * the loads cannot be left out, and nothing is written. */
__global__ void __launch_bounds__(256) l2_flush_read(const uint4 *buf, size_t n16, uint32_t never, uint32_t *sink)
{
    uint32_t x = 0;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n16; i += (size_t)gridDim.x * blockDim.x) {
        const uint4 v = buf[i];
        x ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    if (x == never)
        *sink = x;
}

extern "C" int mxi_gpu_l2_flush(const void *buf, size_t bytes, uint32_t never, uint32_t *sink, void *stream)
{
    l2_flush_read<<<1024, 256, 0, (cudaStream_t)stream>>>((const uint4 *)buf, bytes / 16, never, sink);
    return (int)cudaGetLastError();
}

extern "C" int mxi_gpu_trace(int on, unsigned long long *out, unsigned *sm_out)
{
#if !defined(MXG_HIP)
    cudaError_t err;
    if (on) {
        unsigned long long init[MXG_TR_SLOTS][6];
        for (int s = 0; s < MXG_TR_SLOTS; s++)
            for (int i = 0; i < 6; i++)
                init[s][i] = i % 2 ? 0ull : ~0ull;
        err = cudaMemcpyToSymbol(mxg_tr, init, sizeof init);
        static const unsigned zero[MXG_TR_SLOTS][MXG_TR_MAXSM] = {{0}};
        if (err == cudaSuccess)
            err = cudaMemcpyToSymbol(mxg_tr_sm, zero, sizeof zero);
    } else {
        err = cudaMemcpyFromSymbol(out, mxg_tr, sizeof(unsigned long long) * MXG_TR_SLOTS * 6);
        if (err == cudaSuccess && sm_out)
            err = cudaMemcpyFromSymbol(sm_out, mxg_tr_sm, sizeof(unsigned) * MXG_TR_SLOTS * MXG_TR_MAXSM);
    }
    const int flag = on ? 1 : 0;
    if (err == cudaSuccess)
        err = cudaMemcpyToSymbol(mxg_tr_on, &flag, sizeof flag);
    return (int)err;
#else
    (void)on;
    (void)out;
    (void)sm_out;
    return -1; /* not built for HIP */
#endif
}

/* Threads per row of the quantizer / copy: a few rows (small batches) get 1024
 * each, so that each thread quantizes a few values and the SM has the warps to
 * hide their latency (with 256, 4 rows of 2880 took 10.5 us on the H100, with
 * 1024 5.4 us: bench/RESULTS.md, session 17); MXEP_CUDA_QTHREADS=256 keeps 256.
 * Every value is computed alone and the row's max is exact in any order: the
 * same bits. */
static int quant_threads(int n_rows)
{
    static int v = -1;
    return env_setting(&v, SET_QTHREADS) == 0 || n_rows > 64 ? 256 : 1024;
}

extern "C" int mxi_gpu_quant_launch(const mxg_quant_params_t *p, void *stream)
{
    if (p->n_rows <= 0)
        return 0;
    if (p->out8 && (p->mode == MXG_Q_COPY || p->out)) /* bytes are E4M3 values: quantizing modes, one output */
        return (int)cudaErrorInvalidValue;
    /* one block per row, in slices of 2^22 rows (keeps grid x threads below 2^32 for HIP) */
    const int max_rows = 1 << 22;
    for (int base = 0; base < p->n_rows; base += max_rows) {
        mxg_quant_params_t q = *p;
        q.n_rows = p->n_rows - base < max_rows ? p->n_rows - base : max_rows;
        if (p->src_rows)
            q.src_rows = p->src_rows + base;
        else
            q.in = p->in + (size_t)base * p->ld_in;
        if (p->out8)
            q.out8 = p->out8 + (size_t)base * p->ld_out;
        else
            q.out = p->out + (size_t)base * p->ld_out;
        if (p->row_scale)
            q.row_scale = p->row_scale + base;
        if (p->grp)
            q.grp = p->grp + (size_t)base * p->n_grp;
        int rc = launch_simple(quant_rows, dim3(q.n_rows), dim3(quant_threads(q.n_rows)), (cudaStream_t)stream, q,
                               base == 0 ? p->pdl : 0);
        if (rc != 0)
            return rc;
    }
    return 0;
}

#if !defined(MXG_HIP)
/* What the code the driver loaded for this device was compiled with. */
__global__ void arch_feats(int *out)
{
    int f = 0;
#if defined(MXG_HAVE_WGMMA)
    f |= MXG_FEAT_WGMMA;
#endif
#if defined(MXG_HAVE_FP8MMA)
    f |= MXG_FEAT_FP8MMA;
#endif
    *out = f;
}
#endif

extern "C" int mxi_gpu_arch_feats(int *err_p)
{
    *err_p = 0;
#if !defined(MXG_HIP)
    int *d = NULL, f = -1;
    cudaError_t err = cudaMalloc(&d, sizeof(int));
    if (err == cudaSuccess) {
        arch_feats<<<1, 1>>>(d);
        err = cudaGetLastError();
        if (err == cudaSuccess)
            err = cudaMemcpy(&f, d, sizeof f, cudaMemcpyDeviceToHost);
        (void)cudaFree(d);
    }
    (void)cudaGetLastError();
    *err_p = (int)err;
    return err == cudaSuccess ? f : -1;
#else
    return 0;
#endif
}

extern "C" int mxi_gpu_has_griddep(void)
{
#if !defined(MXG_HIP)
    cudaFuncAttributes fa;
    if (cudaFuncGetAttributes(&fa, combine_rows) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return fa.ptxVersion >= 90 && fa.binaryVersion >= 90;
#else
    return 0;
#endif
}

extern "C" int mxi_gpu_combine_launch(const mxg_combine_params_t *p, void *stream)
{
    if (p->n_tokens == 0)
        return 0;
    dim3 grid((p->H + 255) / 256, p->n_tokens < 65535 ? p->n_tokens : 65535);
    return launch_simple(combine_rows, grid, dim3(256), (cudaStream_t)stream, *p, p->pdl);
}
