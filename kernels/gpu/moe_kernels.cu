/* mxep GPU kernels, written once in the CUDA dialect and also built as HIP
 * (vendors/hip.h). Grouped expert GEMMs over all local experts of a batch in
 * one launch per GEMM, an activation quantizer (FP8 E4M3 values kept in BF16
 * registers) and the weighted combine. Layouts: gpu_layout.h.
 *
 * Numerics (FORMATS.md Part 1): weights decode exactly (MXFP4 and E4M3 values
 * times power-of-two E8M0 scales are exact in BF16), FP32 accumulation in a
 * fixed K order that depends on neither the batch nor the tile shape (every
 * configuration walks K in 64-wide chunks of four k16 MMA steps into one
 * accumulator), bias after the scales, activation in FP32, the hidden
 * activation and the output rounded to BF16. */
#if defined(__HIP_PLATFORM_AMD__) || defined(__HIPCC__)
#include "vendors/hip.h"
#define MXG_HIP 1
#else
#include "vendors/cuda.h"
#endif
#include <stdint.h>

#include <atomic>

#include "gpu_layout.h"

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
        int ex;
        frexpf(a, &ex); /* a = f * 2^ex, f in [0.5, 1) */
        float quantum = ldexpf(1.0f, ex - 4);
        q = rintf(a / quantum) * quantum;
    }
    q = fminf(q, 448.0f);
    return copysignf(q, v);
}

__device__ __forceinline__ uint32_t dec_fp8_pair(uint32_t two)
{
    return e4m3_to_bf16(two & 0xffu) | (e4m3_to_bf16((two >> 8) & 0xffu) << 16);
}

/* MXFP4 packed for the MMA path (gpu_layout.h): a 32-bit word holds 4 element
 * pairs; pair p has its first element in nibble p and its second in nibble p+4. */
__device__ __forceinline__ int fp4_nibble_index(int kk, int *byte)
{
    int s = kk >> 4, h = (kk >> 3) & 1, q = (kk >> 1) & 3, second = kk & 1;
    int i = ((s & 1) * 2 + h) + 4 * second;
    *byte = q * 8 + (s >> 1) * 4 + (i >> 1);
    return i & 1;
}

/* Nibbles at bits 0-3 and 16-19 -> BF16x2 of value * 2^-126 (exact bit placement). */
__device__ __forceinline__ uint32_t fp4x2_bits(uint32_t w)
{
    return ((w & 0x00070007u) << 6) | ((w & 0x00080008u) << 12);
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

/* BF16x2 multipliers turning fp4x2_bits into value * 2^(se-127): one multiply while
 * 2^(se-1) is a normal BF16 (se <= 128), two above. */
__device__ __forceinline__ void e8m0_mults(uint32_t se, uint32_t &m1, uint32_t &m2)
{
    if (se == 255u) {
        m1 = 0x7fc07fc0u;
        m2 = 0x3f803f80u;
    } else if (se <= 128u) {
        uint32_t b = (se + 126u) << 7;
        m1 = b | (b << 16);
        m2 = 0x3f803f80u;
    } else {
        m1 = 0x7e807e80u;
        uint32_t b = se << 7;
        m2 = b | (b << 16);
    }
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

/* The epilogue of one accumulator pair (columns n, n+1 of sorted row s). */
__device__ __forceinline__ void epilogue_pair(const mxg_gemm_params_t &p, int e, int s, int n, float v0, float v1)
{
    if (!p.flush) {
        float f = p.a_row_scale ? p.a_row_scale[s] : 1.0f;
        if (p.wsf) {
            const float *ws = p.wsf + (size_t)e * p.wsf_estride;
            v0 *= f * ws[n];
            v1 *= f * ws[n + 1];
        } else {
            v0 *= f;
            v1 *= f;
        }
    }
    const float *bias = p.bias + (size_t)e * p.bias_estride;
    v0 += bias[n];
    v1 += bias[n + 1];
    if (p.epi == MXG_EPI_ACT) {
        float h = act_apply(p.act, v0, v1, p.limit, p.alpha);
        p.out[(size_t)s * p.ldo + (n >> 1)] = (uint16_t)f_to_bf16(h);
    } else {
        uint16_t *o = p.out + (size_t)p.out_rows[s] * p.ldo;
        if (n + 1 < p.N && !(p.ldo & 1)) {
            *(uint32_t *)(o + n) = f_to_bf16(v0) | (f_to_bf16(v1) << 16);
        } else {
            if (n < p.N)
                o[n] = (uint16_t)f_to_bf16(v0);
            if (n + 1 < p.N)
                o[n + 1] = (uint16_t)f_to_bf16(v1);
        }
    }
}

/* The float factor of one 128-wide K slice kb for (sorted row s, packed row n). */
__device__ __forceinline__ float slice_factor(const mxg_gemm_params_t &p, int e, int s, int n, int kb)
{
    float f = 1.0f;
    if (p.wsf)
        f = p.wsf[(size_t)e * p.wsf_estride + (size_t)(p.wsf_kb > 1 ? kb : 0) * p.N_pad + n];
    if (p.a_grp_scale)
        f *= p.a_grp_scale[(size_t)s * p.a_grp_n + kb];
    else if (p.a_row_scale)
        f *= p.a_row_scale[s];
    return f;
}

#if !defined(MXG_HIP)
/* ------------------------------------------------------------ tensor-core path (sm_80+) */

__device__ __forceinline__ uint32_t smem_u32(const void *ptr)
{
    return (uint32_t)__cvta_generic_to_shared(ptr);
}

__device__ __forceinline__ void cp_async16(void *dst, const void *src, bool valid)
{
#if defined(MXG_HAVE_MMA)
    int n = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src), "r"(n));
#else
    (void)dst;
    (void)src;
    (void)valid;
#endif
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

__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void *ptr)
{
#if defined(MXG_HAVE_MMA)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(ptr)));
#else
    (void)ptr;
    r[0] = r[1] = r[2] = r[3] = 0;
#endif
}

__device__ __forceinline__ void mma_16816(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1)
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

template <int BM, int BN, int WM, int WN, int STAGES, int WFMT, bool FLUSH> struct GemmCfg {
    static constexpr int NT = WM * WN * 32;
    static constexpr int WTM = BM / WM, WTN = BN / WN;
    static constexpr int MI = WTM / 16, NI = WTN / 8;
    static constexpr int RB = WFMT == MXG_W_FP4 ? 32 : WFMT == MXG_W_FP8 ? 64 : 128;
    static constexpr int A_BYTES = BM * 128;
    static constexpr int B_BYTES = BN * RB;
    static constexpr int S_BYTES = WFMT == MXG_W_FP4 ? ((BN * 2 + 15) / 16) * 16 : 0;
    static constexpr int STAGE = A_BYTES + B_BYTES + S_BYTES;
    static constexpr int SMEM = STAGE * STAGES;
};

template <int BM, int BN, int WM, int WN, int STAGES, int WFMT, bool FLUSH>
__global__ void __launch_bounds__(WM *WN * 32) gemm_mma(const mxg_gemm_params_t p)
{
    typedef GemmCfg<BM, BN, WM, WN, STAGES, WFMT, FLUSH> C;
    extern __shared__ __align__(128) uint8_t smem[];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp / WN, wn = warp % WN;
    const int g = lane >> 2, t4 = lane & 3;
    const int mt = blockIdx.y;
    if (mt >= p.n_mtiles)
        return;
    const int e = p.tile_e[mt], m0 = p.tile_m0[mt];
    const int cnt = p.cnt[e], off = p.off[e];
    const int n0 = blockIdx.x * BN;
    const uint8_t *wbase = p.w + (size_t)e * p.w_estride;
    const uint8_t *sbase = WFMT == MXG_W_FP4 ? p.sc + (size_t)e * p.sc_estride : nullptr;
    const int n_chunks = p.K_pad / MXG_BK;

    /* A rows this thread copies: (row r, 16-byte chunk c) for r = tid/8 + i*NT/8. */
    constexpr int A_ITERS = (BM * 8 + C::NT - 1) / C::NT;
    const uint16_t *a_src[A_ITERS];
    bool a_ok[A_ITERS];
#pragma unroll
    for (int i = 0; i < A_ITERS; i++) {
        int idx = tid + i * C::NT, r = idx >> 3;
        int m = m0 + r;
        a_ok[i] = (idx < BM * 8) && (m < cnt);
        int srow = off + (m < cnt ? m : 0);
        int arow = p.a_rows ? p.a_rows[srow] : srow;
        a_src[i] = p.a + (size_t)arow * p.lda + (idx & 7) * 8;
    }

    auto load_stage = [&](int stage, int kc) {
        uint8_t *sa = smem + stage * C::STAGE;
        uint8_t *sb = sa + C::A_BYTES;
#pragma unroll
        for (int i = 0; i < A_ITERS; i++) {
            int idx = tid + i * C::NT;
            if (idx < BM * 8) {
                int r = idx >> 3, c = idx & 7;
                cp_async16(sa + r * 128 + ((c ^ (r & 7)) << 4), a_src[i] + kc * MXG_BK, a_ok[i]);
            }
        }
        const uint8_t *gb = wbase + ((size_t)kc * p.N_pad + n0) * C::RB;
        for (int idx = tid; idx < C::B_BYTES / 16; idx += C::NT)
            cp_async16(sb + idx * 16, gb + idx * 16, true);
        if (WFMT == MXG_W_FP4) {
            const uint8_t *gs = sbase + ((size_t)kc * p.N_pad + n0) * 2;
            for (int idx = tid; idx < (BN * 2) / 16; idx += C::NT)
                cp_async16(sb + C::B_BYTES + idx * 16, gs + idx * 16, true);
        }
    };

    float acc[C::MI][C::NI][4];
    float part[FLUSH ? C::MI : 1][FLUSH ? C::NI : 1][4];
#pragma unroll
    for (int i = 0; i < C::MI; i++)
#pragma unroll
        for (int j = 0; j < C::NI; j++)
#pragma unroll
            for (int q = 0; q < 4; q++) {
                acc[i][j][q] = 0.0f;
                if (FLUSH)
                    part[FLUSH ? i : 0][FLUSH ? j : 0][q] = 0.0f;
            }

#pragma unroll
    for (int st = 0; st < STAGES - 1; st++) {
        if (st < n_chunks)
            load_stage(st, st);
        cp_async_commit();
    }

    for (int kc = 0; kc < n_chunks; kc++) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        {
            int nk = kc + STAGES - 1;
            if (nk < n_chunks)
                load_stage(nk % STAGES, nk);
            cp_async_commit();
        }
        const uint8_t *sa = smem + (kc % STAGES) * C::STAGE;
        const uint8_t *sb = sa + C::A_BYTES;
        uint2 wq[WFMT == MXG_W_FP4 ? C::NI : 1];
        uint32_t sm1[WFMT == MXG_W_FP4 ? C::NI : 1][2], sm2[WFMT == MXG_W_FP4 ? C::NI : 1][2];
        if (WFMT == MXG_W_FP4) {
#pragma unroll
            for (int j = 0; j < C::NI; j++) {
                int nl = wn * C::WTN + j * 8 + g;
                wq[j] = *(const uint2 *)(sb + nl * 32 + t4 * 8);
                e8m0_mults(sb[C::B_BYTES + nl * 2], sm1[j][0], sm2[j][0]);
                e8m0_mults(sb[C::B_BYTES + nl * 2 + 1], sm1[j][1], sm2[j][1]);
            }
        }
#pragma unroll
        for (int s = 0; s < 4; s++) {
            uint32_t af[C::MI][4];
#pragma unroll
            for (int i = 0; i < C::MI; i++) {
                int r = wm * C::WTM + i * 16 + (lane & 15);
                int c = s * 2 + (lane >> 4);
                ldmatrix_x4(af[i], sa + r * 128 + ((c ^ (r & 7)) << 4));
            }
#pragma unroll
            for (int j = 0; j < C::NI; j++) {
                int nl = wn * C::WTN + j * 8 + g;
                uint32_t b0, b1;
                if (WFMT == MXG_W_FP4) {
                    const int jj = WFMT == MXG_W_FP4 ? j : 0;
                    uint32_t w = (s < 2 ? wq[jj].x : wq[jj].y) >> ((s & 1) * 8);
                    b0 = bf16x2_mul(fp4x2_bits(w), sm1[jj][s >> 1]);
                    b1 = bf16x2_mul(fp4x2_bits(w >> 4), sm1[jj][s >> 1]);
                    if (sm2[jj][s >> 1] != 0x3f803f80u) {
                        b0 = bf16x2_mul(b0, sm2[jj][s >> 1]);
                        b1 = bf16x2_mul(b1, sm2[jj][s >> 1]);
                    }
                } else if (WFMT == MXG_W_FP8) {
                    uint32_t v = *(const uint32_t *)(sb + nl * 64 + t4 * 16 + s * 4);
                    b0 = bf16x2_mul(fp8x2_bits(v & 0xffffu), 0x7b807b80u); /* * 2^120 */
                    b1 = bf16x2_mul(fp8x2_bits(v >> 16), 0x7b807b80u);
                } else {
                    uint2 v = *(const uint2 *)(sb + nl * 128 + t4 * 32 + s * 8);
                    b0 = v.x;
                    b1 = v.y;
                }
#pragma unroll
                for (int i = 0; i < C::MI; i++) {
                    if (FLUSH)
                        mma_16816(part[FLUSH ? i : 0][FLUSH ? j : 0], af[i], b0, b1);
                    else
                        mma_16816(acc[i][j], af[i], b0, b1);
                }
            }
        }
        if (FLUSH && ((kc & 1) || kc == n_chunks - 1)) {
            int kb = kc >> 1;
#pragma unroll
            for (int i = 0; i < C::MI; i++)
#pragma unroll
                for (int hh = 0; hh < 2; hh++) {
                    int m = m0 + wm * C::WTM + i * 16 + g + hh * 8;
                    int srow = off + (m < cnt ? m : 0);
#pragma unroll
                    for (int j = 0; j < C::NI; j++) {
                        int n = n0 + wn * C::WTN + j * 8 + 2 * t4;
                        float f0 = slice_factor(p, e, srow, n, kb), f1 = slice_factor(p, e, srow, n + 1, kb);
                        float *pp = part[FLUSH ? i : 0][FLUSH ? j : 0];
                        acc[i][j][hh * 2] += pp[hh * 2] * f0;
                        acc[i][j][hh * 2 + 1] += pp[hh * 2 + 1] * f1;
                        pp[hh * 2] = 0.0f;
                        pp[hh * 2 + 1] = 0.0f;
                    }
                }
        }
    }
    cp_async_wait<0>();

#pragma unroll
    for (int i = 0; i < C::MI; i++)
#pragma unroll
        for (int hh = 0; hh < 2; hh++) {
            int m = m0 + wm * C::WTM + i * 16 + g + hh * 8;
            if (m >= cnt)
                continue;
#pragma unroll
            for (int j = 0; j < C::NI; j++) {
                int n = n0 + wn * C::WTN + j * 8 + 2 * t4;
                epilogue_pair(p, e, off + m, n, acc[i][j][hh * 2], acc[i][j][hh * 2 + 1]);
            }
        }
}

template <int BM, int BN, int WM, int WN, int STAGES, int WFMT, bool FLUSH>
static int launch_mma(const mxg_gemm_params_t *p, cudaStream_t st)
{
    typedef GemmCfg<BM, BN, WM, WN, STAGES, WFMT, FLUSH> C;
    /* The dynamic shared memory limit is an attribute of the function in the
     * current device's context: remember it per device (bit d of a mask that
     * any thread may update), not once per process. */
    static std::atomic<unsigned long long> attr_set{0};
    int dev = 0;
    cudaError_t err = cudaGetDevice(&dev);
    if (err != cudaSuccess)
        return (int)err;
    const unsigned long long bit = dev >= 0 && dev < 64 ? 1ull << dev : 0ull;
    if (!bit || !(attr_set.load(std::memory_order_acquire) & bit)) {
        err = cudaFuncSetAttribute(gemm_mma<BM, BN, WM, WN, STAGES, WFMT, FLUSH>,
                                   cudaFuncAttributeMaxDynamicSharedMemorySize, C::SMEM);
        if (err != cudaSuccess)
            return (int)err;
        attr_set.fetch_or(bit, std::memory_order_acq_rel);
    }
    dim3 grid(p->N_pad / BN, p->n_mtiles);
    gemm_mma<BM, BN, WM, WN, STAGES, WFMT, FLUSH><<<grid, C::NT, C::SMEM, st>>>(*p);
    return (int)cudaGetLastError();
}

template <int WFMT, bool FLUSH> static int launch_cfg(const mxg_gemm_params_t *p, int cfg, cudaStream_t st)
{
    if (cfg == MXG_CFG_S)
        return launch_mma<16, 64, 1, 4, 10, WFMT, FLUSH>(p, st);
    if (cfg == MXG_CFG_M)
        return launch_mma<64, 64, 2, 2, 6, WFMT, FLUSH>(p, st);
    /* warp tiles of 64x64 halve the decode and A-fragment work per MMA; the
     * flushing variant needs a second accumulator set and keeps 64x32 */
    if constexpr (FLUSH)
        return launch_mma<128, 128, 2, 4, 3, WFMT, FLUSH>(p, st);
    else
        return launch_mma<128, 128, 2, 2, 4, WFMT, FLUSH>(p, st);
}

#else
/* ------------------------------------------------------------ portable SIMT path (HIP) */

/* One thread per (sorted row, column pair); the same K order (64-wide chunks,
 * four 16-wide steps) and the same per-slice flush as the MMA path. */
__global__ void gemm_simt(const mxg_gemm_params_t p, int bm)
{
    const int mt = blockIdx.y;
    if (mt >= p.n_mtiles)
        return;
    const int e = p.tile_e[mt], m0 = p.tile_m0[mt];
    const int cnt = p.cnt[e], off = p.off[e];
    const int pair = blockIdx.x * blockDim.x + threadIdx.x;
    const int n = pair * 2;
    if (n >= p.N_pad)
        return;
    const uint8_t *wbase = p.w + (size_t)e * p.w_estride;
    const size_t rb = 64 * (p.wfmt == MXG_W_FP4 ? 4 : p.wfmt == MXG_W_FP8 ? 8 : 16) / 8;
    for (int m = m0; m < m0 + bm && m < cnt; m++) {
        int s = off + m;
        const uint16_t *arow = p.a + (size_t)(p.a_rows ? p.a_rows[s] : s) * p.lda;
        float acc[2] = {0.0f, 0.0f}, part[2] = {0.0f, 0.0f};
        for (int kc = 0; kc < p.K_pad / MXG_BK; kc++) {
            for (int col = 0; col < 2; col++) {
                const uint8_t *wr = wbase + ((size_t)kc * p.N_pad + n + col) * rb;
                float sum = 0.0f;
                for (int k = 0; k < MXG_BK; k += 2) {
                    int ss = k / 16, h = (k % 16) / 8, q = (k % 8) / 2;
                    int slot = q * 8 + ss * 2 + h;
                    float w0, w1;
                    if (p.wfmt == MXG_W_FP4) {
                        float sc =
                            e8m0_to_f(p.sc[(size_t)e * p.sc_estride + ((size_t)kc * p.N_pad + n + col) * 2 + (k >> 5)]);
                        int b0, b1;
                        int hi0 = fp4_nibble_index(k, &b0), hi1 = fp4_nibble_index(k + 1, &b1);
                        w0 = fp4_to_f((wr[b0] >> (4 * hi0)) & 15u) * sc;
                        w1 = fp4_to_f((wr[b1] >> (4 * hi1)) & 15u) * sc;
                    } else if (p.wfmt == MXG_W_FP8) {
                        uint32_t v = dec_fp8_pair(wr[slot * 2] | ((uint32_t)wr[slot * 2 + 1] << 8));
                        w0 = bf16_to_f(v & 0xffffu);
                        w1 = bf16_to_f(v >> 16);
                    } else {
                        const uint16_t *wv = (const uint16_t *)(wr + slot * 4);
                        w0 = bf16_to_f(wv[0]);
                        w1 = bf16_to_f(wv[1]);
                    }
                    sum += bf16_to_f(arow[kc * MXG_BK + k]) * w0 + bf16_to_f(arow[kc * MXG_BK + k + 1]) * w1;
                }
                if (p.flush)
                    part[col] += sum;
                else
                    acc[col] += sum;
            }
            if (p.flush && ((kc & 1) || kc == p.K_pad / MXG_BK - 1)) {
                for (int col = 0; col < 2; col++) {
                    acc[col] += part[col] * slice_factor(p, e, s, n + col, kc >> 1);
                    part[col] = 0.0f;
                }
            }
        }
        epilogue_pair(p, e, s, n, acc[0], acc[1]);
    }
}
#endif

/* ------------------------------------------------------------ activation quantizer */

__global__ void quant_rows(const mxg_quant_params_t p)
{
    const int r = blockIdx.x;
    if (r >= p.n_rows)
        return;
    const uint16_t *in = p.in + (size_t)(p.src_rows ? p.src_rows[r] : r) * p.ld_in;
    uint16_t *out = p.out + (size_t)r * p.ld_out;
    __shared__ float red[32];
    if (p.mode == MXG_Q_STATIC || p.mode == MXG_Q_TOKEN) {
        float s;
        if (p.mode == MXG_Q_STATIC) {
            s = p.row_scale[r];
        } else {
            float amax = 0.0f;
            for (int k = threadIdx.x; k < p.K; k += blockDim.x)
                amax = fmaxf(amax, fabsf(bf16_to_f(in[k])));
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
        for (int k = threadIdx.x; k < p.K; k += blockDim.x)
            out[k] = (uint16_t)f_to_bf16(f_to_e4m3(bf16_to_f(in[k]) / s));
    } else {
        /* one warp per 128 group, groups strided over warps */
        const int warps = blockDim.x >> 5, w = threadIdx.x >> 5, l = threadIdx.x & 31;
        for (int gi = w; gi < p.n_grp; gi += warps) {
            float amax = 0.0f;
            for (int k = gi * 128 + l; k < gi * 128 + 128 && k < p.K; k += 32)
                amax = fmaxf(amax, fabsf(bf16_to_f(in[k])));
            for (int o = 16; o > 0; o >>= 1)
                amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
            float s = fmaxf(amax / 448.0f, 1.0f / (448.0f * 512.0f));
            if (l == 0)
                p.grp[(size_t)r * p.n_grp + gi] = s;
            for (int k = gi * 128 + l; k < gi * 128 + 128 && k < p.K; k += 32)
                out[k] = (uint16_t)f_to_bf16(f_to_e4m3(bf16_to_f(in[k]) / s));
        }
    }
}

/* ------------------------------------------------------------ combine */

__global__ void combine_rows(const mxg_combine_params_t p)
{
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
}

/* ------------------------------------------------------------ launchers */

extern "C" int mxi_gpu_cfg_bm(int cfg)
{
    return mxg_cfg_bm(cfg);
}

static int gemm_launch_part(const mxg_gemm_params_t *p, int cfg, cudaStream_t st)
{
#if !defined(MXG_HIP)
    if (p->wfmt == MXG_W_FP4)
        return launch_cfg<MXG_W_FP4, false>(p, cfg, st);
    if (p->wfmt == MXG_W_BF16)
        return launch_cfg<MXG_W_BF16, false>(p, cfg, st);
    if (p->flush)
        return launch_cfg<MXG_W_FP8, true>(p, cfg, st);
    return launch_cfg<MXG_W_FP8, false>(p, cfg, st);
#else
    int bm = mxi_gpu_cfg_bm(cfg);
    dim3 grid((p->N_pad / 2 + 127) / 128, p->n_mtiles);
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
        int rc = gemm_launch_part(&q, cfg, st);
        if (rc != 0)
            return rc;
    }
    return 0;
}

extern "C" int mxi_gpu_quant_launch(const mxg_quant_params_t *p, void *stream)
{
    if (p->n_rows <= 0)
        return 0;
    /* one block per row, in slices of 2^22 rows (keeps grid x threads below 2^32 for HIP) */
    const int max_rows = 1 << 22;
    for (int base = 0; base < p->n_rows; base += max_rows) {
        mxg_quant_params_t q = *p;
        q.n_rows = p->n_rows - base < max_rows ? p->n_rows - base : max_rows;
        if (p->src_rows)
            q.src_rows = p->src_rows + base;
        else
            q.in = p->in + (size_t)base * p->ld_in;
        q.out = p->out + (size_t)base * p->ld_out;
        if (p->row_scale)
            q.row_scale = p->row_scale + base;
        if (p->grp)
            q.grp = p->grp + (size_t)base * p->n_grp;
        quant_rows<<<q.n_rows, 256, 0, (cudaStream_t)stream>>>(q);
        int rc = (int)cudaGetLastError();
        if (rc != 0)
            return rc;
    }
    return 0;
}

extern "C" int mxi_gpu_combine_launch(const mxg_combine_params_t *p, void *stream)
{
    if (p->n_tokens == 0)
        return 0;
    dim3 grid((p->H + 255) / 256, p->n_tokens < 65535 ? p->n_tokens : 65535);
    combine_rows<<<grid, 256, 0, (cudaStream_t)stream>>>(*p);
    return (int)cudaGetLastError();
}
