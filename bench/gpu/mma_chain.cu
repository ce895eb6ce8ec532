/* bench/gpu/mma_chain.cu: how many cycles one tensor-core MMA adds to a chain
 * of MMAs that accumulate into the same registers, the bound of the decode
 * kernel at T = 1 (each warp's K loop is one such chain of K / 16 MMAs: the
 * results must not depend on the batch, so the sum's order is fixed).
 *
 * Per case, one CTA per SM of W warps; each warp runs C independent chains of
 * N MMAs, round robin, and notes clock64() around them. Printed: cycles per
 * MMA of one chain (latency when C = 1) and MMAs per cycle per SM.
 *   mma.sync m16n8k16 bf16 -> f32 (the decode kernel's MMA)
 *   wgmma m64n16k16 bf16 -> f32, A from registers, B from shared memory, each
 *   MMA waited for before the next (sm_90a only; the large-batch kernel's)
 *   the decode kernel's chunk (MXFP4, one n8 token tile) with every operand in
 *   shared memory, so that nothing waits on L2 or HBM: per 64-wide chunk and
 *   lane a 16-byte weight piece and a scale word read one chunk ahead, two
 *   16-byte token pieces, the decode of 4 k16 steps (gpu_layout.h's
 *   mxg_fp4_pair and one BF16x2 multiply per register, as gemm_dec with
 *   scales up to 2^1) and 4 chained MMAs; "ahead": the same, each chunk's A
 *   fragments decoded during the chunk before (16 more registers). Against the
 *   MMA chain alone (4 per chunk), it says how many cycles a chunk's own
 *   instruction stream costs a warp at 1-4 warps per scheduler, the cost that
 *   GEMM2 pays at T = 1 (about 330-370 cycles per chunk in the layer).
 *   Measured on an H100 (bench/RESULTS.md, session 23): 169 / 254 / 425 cycles
 *   per chunk at 4 / 8 / 16 warps per SM, issue-bound from 8 warps on; decoding
 *   ahead gained nothing.
 * Build and run (on the GPU machine; not part of the CMake build):
 *   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -Ikernels/gpu -o mma_chain bench/gpu/mma_chain.cu &&
 *   ./mma_chain */
#include <cstdint>
#include <cstdio>
#include <cuda_runtime.h>

#include "gpu_layout.h"

#define CK(x)                                                                                                          \
    do {                                                                                                               \
        cudaError_t e_ = (x);                                                                                          \
        if (e_ != cudaSuccess) {                                                                                       \
            fprintf(stderr, "mma_chain: %s: %s\n", #x, cudaGetErrorString(e_));                                        \
            return 1;                                                                                                  \
        }                                                                                                              \
    } while (0)

template <int C> __global__ void sync_chain(int n, float *sink, long long *cyc)
{
    const uint32_t seed = threadIdx.x * 2654435761u;
    uint32_t a[4] = {0x3f803f80u ^ (seed & 0x00070007u), 0x3f003f00u, 0x3e803e80u, 0x3f403f40u};
    const uint32_t b0 = 0x3c003c00u ^ (seed & 0x00030003u), b1 = 0x3b803b80u;
    float d[C][4];
#pragma unroll
    for (int c = 0; c < C; c++)
#pragma unroll
        for (int q = 0; q < 4; q++)
            d[c][q] = (float)(c + q);
    __syncwarp();
    const long long t0 = clock64();
    for (int i = 0; i < n; i++) {
#pragma unroll
        for (int c = 0; c < C; c++)
            asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                         "{%0,%1,%2,%3};\n"
                         : "+f"(d[c][0]), "+f"(d[c][1]), "+f"(d[c][2]), "+f"(d[c][3])
                         : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
    const long long t1 = clock64();
    float s = 0.0f;
#pragma unroll
    for (int c = 0; c < C; c++)
        s += d[c][0] + d[c][1] + d[c][2] + d[c][3];
    sink[blockIdx.x * blockDim.x + threadIdx.x] = s;
    if ((threadIdx.x & 31) == 0)
        cyc[blockIdx.x * 32 + (threadIdx.x >> 5)] = t1 - t0;
}

__global__ void wgmma_chain(int n, float *sink, long long *cyc)
{
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    __shared__ __align__(1024) uint16_t bs[16 * 64];
    for (int i = threadIdx.x; i < 16 * 64; i += blockDim.x)
        bs[i] = (uint16_t)(0x3c00u + (i & 7));
    __syncthreads();
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    __syncthreads();
    const uint32_t addr = (uint32_t)__cvta_generic_to_shared(bs);
    /* K-major, no swizzle: core matrices of 8 rows x 16 bytes */
    const uint64_t desc = (uint64_t)((addr & 0x3ffff) >> 4) | ((uint64_t)(128 >> 4) << 16) | ((uint64_t)(256 >> 4) << 32);
    uint32_t a[4] = {0x3f803f80u, 0x3f003f00u, 0x3e803e80u, 0x3f403f40u ^ (threadIdx.x & 7)};
    float d[8];
#pragma unroll
    for (int q = 0; q < 8; q++)
        d[q] = (float)q;
    const long long t0 = clock64();
    for (int i = 0; i < n; i++) {
        asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %13, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7}, "
                     "{%8, %9, %10, %11}, %12, p, 1, 1, 0;\n}\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "n"(1));
        asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
        asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
    }
    const long long t1 = clock64();
    float s = 0.0f;
#pragma unroll
    for (int q = 0; q < 8; q++)
        s += d[q];
    sink[blockIdx.x * blockDim.x + threadIdx.x] = s;
    if ((threadIdx.x & 31) == 0)
        cyc[blockIdx.x * 32 + (threadIdx.x >> 5)] = t1 - t0;
#else
    (void)n;
    (void)sink;
    (void)cyc;
#endif
}

__device__ __forceinline__ void mma16816(float *c, const uint32_t a[4], uint32_t b0, uint32_t b1)
{
    /* volatile: kept between the clock64() reads, like sync_chain's */
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ uint32_t bf16x2_mul(uint32_t a, uint32_t b)
{
    uint32_t d;
    asm("fma.rn.bf16x2 %0, %1, %2, %3;\n" : "=r"(d) : "r"(a), "r"(b), "r"(0x80008000u));
    return d;
}
/* the A fragments of a chunk's 4 steps from a lane's piece w[4] and scale word */
__device__ __forceinline__ void decode_chunk(const uint4 &w, uint32_t scw, uint32_t (&a)[4][4])
{
    uint32_t m1[2][2];
#pragma unroll
    for (int h = 0; h < 2; h++)
#pragma unroll
        for (int b = 0; b < 2; b++) {
            const uint32_t j = (uint32_t)(h + 2 * b);
            m1[h][b] = __byte_perm(scw, 0u, 0x4040u | j | (j << 8)) * 128u + 0x3f003f00u;
        }
    const uint32_t ws[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
    for (int st = 0; st < 4; st++) {
        const int b = st >> 1;
        a[st][0] = bf16x2_mul(mxg_fp4_pair(ws[st], 0), m1[0][b]);
        a[st][1] = bf16x2_mul(mxg_fp4_pair(ws[st], 1), m1[1][b]);
        a[st][2] = bf16x2_mul(mxg_fp4_pair(ws[st], 2), m1[0][b]);
        a[st][3] = bf16x2_mul(mxg_fp4_pair(ws[st], 3), m1[1][b]);
    }
}

/* MODE 0: the 4 MMAs of a chunk alone (fixed fragments); 1: the decode
 * kernel's chunk, operands from shared memory one chunk ahead; 2: the A
 * fragments decoded one chunk ahead, from weights and scales read two chunks
 * ahead (as the DA decode kernels did, removed in session 23). n chunks per
 * warp. */
template <int MODE> __global__ void dec_chain(int n, float *sink, long long *cyc)
{
    constexpr int NC = 64; /* chunks in shared memory, reused round robin */
    __shared__ uint4 wsm[NC][32];
    __shared__ uint32_t ssm[NC][32];
    __shared__ uint4 tsm[NC][8];
    for (int i = threadIdx.x; i < NC * 32; i += blockDim.x) {
        const uint32_t h = (uint32_t)i * 2654435761u;
        wsm[i / 32][i % 32] = make_uint4(h, h ^ 0x5a5a5a5au, h * 3u, h + 0x01234567u);
        ssm[i / 32][i % 32] = 0x7d7e7f80u - (h & 0x01010101u); /* E8M0 bytes 0x7c..0x80: 2^-3 .. 2^1 */
    }
    for (int i = threadIdx.x; i < NC * 8; i += blockDim.x)
        tsm[i / 8][i % 8] = make_uint4(0x3f803f80u ^ i, 0x3f003f00u, 0x3e803e80u, 0x3f403f40u);
    __syncthreads();
    const int lane = threadIdx.x & 31, t4 = lane & 3;
    float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    uint4 wn = wsm[0][lane], t0n = tsm[0][2 * t4], t1n = tsm[0][2 * t4 + 1];
    uint32_t sn = ssm[0][lane];
    uint32_t an[4][4];
    if (MODE == 2) { /* chunk 0 decoded; wn / sn: chunk 1's */
        decode_chunk(wn, sn, an);
        wn = wsm[1][lane];
        sn = ssm[1][lane];
    }
    const long long c0 = clock64();
    for (int k = 0; k < n; k++) {
        const int kn = (k + 1) & (NC - 1), kw = MODE == 2 ? (k + 2) & (NC - 1) : kn;
        const uint4 w = wn, x0 = t0n, x1 = t1n;
        const uint32_t sc = sn;
        wn = wsm[kw][lane]; /* the next chunk's operands (MODE 2: weights and scales two ahead) */
        sn = ssm[kw][lane];
        t0n = tsm[kn][2 * t4];
        t1n = tsm[kn][2 * t4 + 1];
        const uint32_t bb[4][2] = {{x0.x, x0.y}, {x0.z, x0.w}, {x1.x, x1.y}, {x1.z, x1.w}};
        uint32_t a[4][4];
        if (MODE == 0) {
#pragma unroll
            for (int st = 0; st < 4; st++)
#pragma unroll
                for (int q = 0; q < 4; q++)
                    a[st][q] = 0x3f803f80u ^ (uint32_t)(st + q);
        } else if (MODE == 1) {
            decode_chunk(w, sc, a);
        } else {
#pragma unroll
            for (int st = 0; st < 4; st++)
#pragma unroll
                for (int q = 0; q < 4; q++)
                    a[st][q] = an[st][q];
            decode_chunk(w, sc, an); /* chunk k + 1, read during chunk k - 1 */
        }
#pragma unroll
        for (int st = 0; st < 4; st++)
            mma16816(d, a[st], bb[st][0], bb[st][1]);
    }
    const long long c1 = clock64();
    sink[blockIdx.x * blockDim.x + threadIdx.x] = d[0] + d[1] + d[2] + d[3];
    if (lane == 0)
        cyc[blockIdx.x * 32 + (threadIdx.x >> 5)] = c1 - c0;
}

template <typename K> static int run(const char *name, K kern, int warps, int chains, int n, int sms, float *sink,
                                     long long *cyc, long long *hc)
{
    kern<<<sms, 32 * warps>>>(n, sink, cyc);
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    kern<<<sms, 32 * warps>>>(n, sink, cyc);
    CK(cudaDeviceSynchronize());
    CK(cudaMemcpy(hc, cyc, sizeof(long long) * 32 * sms, cudaMemcpyDeviceToHost));
    double sum = 0.0;
    int cnt = 0;
    for (int b = 0; b < sms; b++)
        for (int w = 0; w < warps; w++) {
            sum += (double)hc[b * 32 + w];
            cnt++;
        }
    const double per = sum / cnt / n; /* cycles per round of C MMAs (per chunk: dec_chain) */
    if (chains == 0)
        printf("%-34s warps/SM %2d: %6.1f cycles per chunk of a warp (4 chained MMAs)\n", name, warps, per);
    else
        printf("%-34s warps/SM %2d chains/warp %d: %6.1f cycles per MMA of a chain, %5.3f MMAs per cycle per SM\n",
               name, warps, chains, per, (double)warps * chains / per);
    return 0;
}

int main(void)
{
    cudaDeviceProp pr;
    CK(cudaGetDeviceProperties(&pr, 0));
    const int sms = pr.multiProcessorCount, n = 4096;
    printf("device: %s (sm_%d%d, %d SMs)\n", pr.name, pr.major, pr.minor, sms);
    float *sink;
    long long *cyc, hc[32 * 1024];
    if (sms > 1024)
        return 1;
    CK(cudaMalloc(&sink, sizeof(float) * 1024 * sms));
    CK(cudaMalloc(&cyc, sizeof(long long) * 32 * sms));
    int rc = 0;
    for (int w : {1, 4, 8, 16}) {
        rc |= run("mma.sync m16n8k16 bf16", sync_chain<1>, w, 1, n, sms, sink, cyc, hc);
        rc |= run("mma.sync m16n8k16 bf16", sync_chain<2>, w, 2, n, sms, sink, cyc, hc);
        rc |= run("mma.sync m16n8k16 bf16", sync_chain<4>, w, 4, n, sms, sink, cyc, hc);
    }
    if (pr.major == 9)
        for (int w : {4, 8, 16})
            rc |= run("wgmma m64n16k16 bf16 (waited)", wgmma_chain, w, 1, n, sms, sink, cyc, hc);
    for (int w : {4, 8, 16}) {
        rc |= run("chunk: 4 MMAs alone", dec_chain<0>, w, 0, n, sms, sink, cyc, hc);
        rc |= run("chunk: decode + MMAs", dec_chain<1>, w, 0, n, sms, sink, cyc, hc);
        rc |= run("chunk: decoded a chunk ahead", dec_chain<2>, w, 0, n, sms, sink, cyc, hc);
    }
    return rc;
}
