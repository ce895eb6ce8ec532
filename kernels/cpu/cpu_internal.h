/* mxep cpu backend: internals shared by kernels/cpu/cpu.c and the per-ISA files
 * (kernels/cpu/x86/avx2.c, avx512.c, avx512vnni.c). Not a public header.
 *
 * Numerics contract (what makes a token's output independent of its batch and
 * of the ISA level: scalar, AVX2 and AVX-512 give the same bits, streaming
 * (few tokens) and tiled (many tokens) paths too). Two rules, by weight format.
 *
 * BF16 and FP8 weights (W16A16, W8A16, W8A8): FP32. Every output element
 * out[t][n] = sum_k a[t][k] * w[n][k] is one 8-lane FP32 accumulator per
 * (t, n), lane l taking k = 8c + l, chunks c in ascending order, one fused
 * multiply-add per (chunk, lane), then the fixed tree
 * ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)) (hsum8). Weights decode to the same
 * floats on every path.
 *
 * MXFP4 weights (W4A16, W4A8): block-exact integers (since 2026-12; see
 * bench/RESULTS.md). A weight is the integer W = 2 * E2M1 in [-12, 12] times
 * ws = 2^(E8M0 - 141) (the E8M0 scale, the 2^-1 of E2M1 and the 2^-14 of the
 * activations below; exact: subnormal for E8M0 < 15, NaN for 0xFF). Per token,
 * each 32-column block b of the FP32 activation row becomes integers A_k and a
 * scale as_b (mxi_cpu_qact):
 *   m = the largest |a_k| of the block (compared as bit patterns);
 *   if the block holds an Inf or NaN: A_k = 0 and as_b = NaN, so every output
 *   of that token is NaN (ref gives NaN or +-Inf there); other tokens are not
 *   affected;
 *   else e = max(floor(log2 m), -113) (m < 2^-113 gives -113; m = 0 gives
 *   e = 0, so that all-zero and padding blocks have normal scales: subnormal
 *   operands cost the FMA units a microcode assist),
 *   A_k = min(round-to-nearest-even(a_k * 2^(14 - e)), 2^15 - 1), so
 *   -2^15 <= A_k < 2^15, and as_b = 2^(e-1) * s, where s = 1 except for W4A8:
 *   there a_k are the E4M3 values of the activations and s their FP8 scale.
 * So BF16 values within 7 binades of their block max, and E4M3 values within
 * 11, are exact; smaller ones are rounded to multiples of 2^(e-14) (an element
 * 2^20 below an outlier of its block becomes 0), and a block max that rounds
 * to 2^15 is kept at 2^15 - 1. The block's dot product S_b = sum_k W_k * A_k
 * is an exact integer (|S_b| <= 32 * 12 * 2^15 < 2^24, so float(S_b) is exact
 * too), however an ISA sums it: vpmaddubsw on split bytes, vpdpbusd, vpmaddwd,
 * vpdpwssd or scalar code. Then per (token, row) one 8-lane FP32 accumulator,
 * lane j taking the blocks b = 8g + j, g ascending:
 *   acc_j = fma(float(S_b), ws_b * as_b, acc_j)
 * (the product ws_b * as_b is exact unless it leaves float's range), over
 * nbp = 8 * ceil(nb / 8) blocks (padding blocks have S_b = 0 and finite
 * scales), then hsum8 as above. The 16-lane AVX-512 kernels hold two rows'
 * accumulators in one register. The AMX level (x86/amx.c) gets the S_b of 16
 * tokens x up to 24 rows from tile products over one block each: TDPBSSD on
 * the high bytes, TDPBUSD on the low ones, S_b = 256 * C_high + C_low (exact
 * in int32), then the same float step, vectorized over rows. */
#ifndef MXEP_KERNELS_CPU_INTERNAL_H
#define MXEP_KERNELS_CPU_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "mxep/kernels.h"

/* The cpu backend (registered by kernels/registry.c). */
extern const mx_backend_ops_t mx_backend_cpu;

/* Packed weight formats. */
enum { MXI_CPU_BF16 = 0, MXI_CPU_MXFP4 = 1, MXI_CPU_FP8 = 2 };

/* ISA levels (mx_device_info_t.flags of the cpu backend carries MXI_CPU_ISA_* bits
 * for what the CPU has; the level used is the highest allowed). */
enum { MXI_CPU_LEVEL_SCALAR = 0, MXI_CPU_LEVEL_AVX2 = 1, MXI_CPU_LEVEL_AVX512 = 2, MXI_CPU_LEVEL_AMX = 3 };
#define MXI_CPU_HAS_AVX2 0x1u   /* AVX2 + FMA + F16C with OS YMM support */
#define MXI_CPU_HAS_AVX512 0x2u /* AVX-512 F/BW/VL/DQ with OS ZMM support */
#define MXI_CPU_HAS_AVX512BF16 0x4u
#define MXI_CPU_HAS_AVX512VNNI 0x8u
/* AMX-TILE + AMX-INT8 with the OS's tile state in XCR0; on Linux the process
 * must still ask for it (mxi_cpu_amx_enable) before the first tile instruction */
#define MXI_CPU_HAS_AMX 0x10u
#define MXI_CPU_HAS_AVX512VBMI 0x20u /* vpermb (with AVX-512 F/BW/VL/DQ) */
#define MXI_CPU_HAS_AVXVNNI 0x40u    /* AVX-VNNI: VEX vpdpbusd / vpdpwssd (with AVX2) */
#define MXI_CPU_LEVEL_SHIFT 8        /* flags bits 8..10: 1 + the level this probe chose (0: none) */

/* Rows of a matrix that one work item handles (multiple of 2, 3 and 4). */
#define MXI_CPU_ROW_BLOCK 24
/* Rows of a work item for MXFP4 weights at the AMX level (two tiles of 16),
 * and the scratch its kernel needs before the partial sums (which take
 * 32 * (nt + 8) * MXI_CPU_AMX_ROWS bytes, like the others' with their rows):
 * decoded B tiles (1024 nbp), ws (128 nbp), two sets of C tiles (8 KB). */
#define MXI_CPU_AMX_ROWS 32
#define MXI_CPU_AMX_TILE_BYTES(nbp) (1152 * (size_t)(nbp) + 8192)
/* Token counts below this stream each weight block from memory once per row
 * group; at or above it rows are decoded into a float tile reused by all tokens. */
#define MXI_CPU_STREAM_MAX 5
/* The same for the AVX2 MXFP4 integer kernel (the 16-lane ones: below). Its
 * streaming kernels take tokens in groups of 4, each group reading the rows
 * again (from cache after the first), and the crossover lies higher than the
 * FP32 kernels'. With 9 instead of 5 the qwen3 shape went from 0.53 to 0.61 of
 * the FMA peak at T = 64 and from 0.585 to 0.64 at T = 128 at AVX2
 * (bench/RESULTS.md, session 15). Both routes give the same bits (the
 * block-exact contract). */
#define MXI_CPU_Q4_STREAM_MAX 9
/* The same for the 16-lane kernels (AVX-512, with or without VNNI; also the
 * AMX level's below MXI_CPU_AMX_MIN). Session 15 gave them 9 too (the qwen3
 * shape from 0.38 to 0.50 of the FMA peak at T = 64 with VNNI). On a 2-core
 * Xeon VM (AVX-512 VNNI + AMX) their 4-token streaming passes beat their int16
 * tiles up to 16 tokens: the qwen3 shape went from 0.45-0.48 to 0.54-0.58 of
 * the 16-lane FMA peak at T = 128 and gpt-oss-20b from 0.46 to 0.51-0.54 at
 * T = 64, with T = 256 level (bench/RESULTS.md, session 18, three rounds).
 * Since session 19 the passes take up to 5 tokens, in passes of equal size. */
#define MXI_CPU_Q4Z_STREAM_MAX 17

/* One prepacked matrix [rows x cols], cols padded to kp (multiple of 32).
 * Row r lives at data + r * row_stride:
 *   BF16:  kp uint16 values.
 *   MXFP4: nb = kp/32 blocks in ng = ceil(nb/8) groups of 8 blocks. Group g's
 *          codes start at byte 128 g and are four 32-byte "q-loads"
 *          q = 0..3 at 128 g + q * qs, qs = 32 (4 * tail for a last group of
 *          tail < 8 blocks, stored compactly). Dword j of q-load q holds the
 *          canonical bytes 4q..4q+3 of block 8g + j (canonical byte i: element
 *          2i in the low nibble, 2i+1 in the high one). row_stride = 16 nb
 *          rounded up to 32 (no per-row padding to 64: the reads stay those of
 *          the canonical bytes). The E8M0 bytes are apart, row r's nbp = 8 ng
 *          of them at scales + r * scale_stride (padding blocks: 127). Reading
 *          a q-load of a short last group reads past it (the next row, or the
 *          64 bytes of slack allocated after the last one); those lanes meet
 *          zero activations.
 *   FP8:   kp E4M3FN bytes, then at scale_off nkb = ceil(kp/128) float scales
 *          (one per 128 columns; per-channel and per-tensor scales are
 *          replicated), and nkb flag bytes at scales + r * scale_stride
 *          (scale_stride = nkb). Flag 0 ("fast" block: no subnormal E4M3 code
 *          in the block and |s| < 2^7): the scale is stored folded, s * 2^120
 *          (exact), and the kernels decode w = fl(X * s 2^120) with X the bit
 *          image (b << 20) & 0x87F00000 = e4m3(b) * 2^-120, a normal float
 *          here. Flag 1 ("slow" block): s as is, and the kernels decode through
 *          FP16 bits (e4m3(b) * 2^-8, exact, converted by vcvtph2ps, which
 *          takes FP16 subnormals without an assist): w = fl(fl(h * 2^8) * s).
 *          Both give fl(e4m3(b) * s), the value of the contract above; the
 *          split only keeps subnormal floats out of the multiplies (each one
 *          costs a microcode assist of ~100 cycles on Intel cores). NaN codes
 *          0x7F/0xFF read as +-480 on every path. */
typedef struct {
    int fmt;
    size_t rows, cols, kp;
    size_t row_stride;     /* bytes, multiple of 64 (MXFP4: of 32) */
    size_t scale_off;      /* FP8: byte offset of the scales within a row */
    size_t nb, ng;         /* MXFP4: blocks and groups of 8 blocks */
    const uint8_t *scales; /* MXFP4: E8M0 bytes, row r's at scales + r * scale_stride */
    size_t scale_stride;
    unsigned tail; /* MXFP4: blocks in the last group (1..8) */
    int ws_plain;  /* MXFP4: every scale byte is in [15, 254] (ws = bits (b - 14) << 23) */
    uint8_t *data; /* 64-byte aligned, owned by the packed weights */
} mxi_cpu_mat_t;

/* Byte offset of q-load q of group g within an MXFP4 row. */
static inline size_t mxi_cpu_q4_qoff(const mxi_cpu_mat_t *m, size_t g, unsigned q)
{
    size_t qs = (g + 1 < m->ng || m->tail == 8) ? 32 : 4 * (size_t)m->tail;
    return 128 * g + q * qs;
}

/* ws of an E8M0 byte: 2^(b - 141) exactly, NaN for 0xFF (see the contract). */
float mxi_cpu_q4_ws(uint8_t b);

/* Quantized activation row for MXFP4 weights (the contract's A_k and as_b),
 * for a matrix of nbp = 8 ng blocks, at mxi_cpu_qact_bytes(nbp) bytes, 64-byte
 * aligned:
 *   float   as[nbp]          as_b (padding blocks: 2^-1)
 *   int32_t corr[nbp]        12 * sum_k A_k of the block (for offset weights)
 *   int16_t tq[32 nbp]       A_k for the tiled kernels: per group 16 steps
 *                            s = 4q + c of 8 dwords j of 2 values: elements
 *                            8q + 2c and 8q + 2c + 1 of block 8g + j
 *   int8_t  planes[64 nbp]   per group 512 bytes: for q = 0..3 four 32-byte
 *                            planes hl, hh, ll, lh laid out like the q-loads
 *                            (dword j, byte c -> elements 8q + 2c (l) and
 *                            8q + 2c + 1 (h) of block 8g + j); plane xy holds the
 *                            x = high (A >> 8, signed) or low (A & 255, read
 *                            as an unsigned byte) part of A at the element of
 *                            nibble y: A = 256 * high + low.
 *   int8_t  amx[64 nbp]      per block 32 high bytes, then 32 low bytes, in
 *                            element order (rows of the AMX level's A tiles). */
static inline size_t mxi_cpu_qact_bytes(size_t nbp)
{
    return nbp * (4 + 4 + 64 + 64 + 64);
}
#define MXI_QACT_AS(p) ((const float *)(p))
#define MXI_QACT_CORR(p, nbp) ((const int32_t *)((const uint8_t *)(p) + 4 * (nbp)))
#define MXI_QACT_TQ(p, nbp) ((const int16_t *)((const uint8_t *)(p) + 8 * (nbp)))
#define MXI_QACT_PLANES(p, nbp) ((const int8_t *)((const uint8_t *)(p) + 72 * (nbp)))
#define MXI_QACT_AMX(p, nbp) ((const int8_t *)((const uint8_t *)(p) + 136 * (nbp)))
/* The same parts, writable: what the quantizers fill. */
typedef struct {
    float *as;
    int32_t *corr;
    int16_t *tq;
    int8_t *pl;
    int8_t *amx;
} mxi_cpu_qact_out_t;
static inline mxi_cpu_qact_out_t mxi_cpu_qact_out(uint8_t *dst, size_t nbp)
{
    mxi_cpu_qact_out_t o = {(float *)(void *)dst, (int32_t *)(void *)(dst + 4 * nbp), (int16_t *)(void *)(dst + 8 * nbp),
                            (int8_t *)(dst + 72 * nbp), (int8_t *)(dst + 136 * nbp)};
    return o;
}

/* Quantizes x[0..cols) (cols <= 32 nbp; beyond it zero) into dst, with every
 * as_b multiplied by s (exactly, but for under- or overflow): 1 for BF16
 * activations; for W4A8, x holds the E4M3 values (exact in A, being 4-bit
 * significands within 11 binades of the block max) and s their FP8 scale. */
void mxi_cpu_qact(const float *x, size_t cols, size_t nbp, float s, uint8_t *dst);
#if defined(__x86_64__) || defined(__i386__)
/* The same with AVX2 (x86/avx2.c; any level from AVX2 up), bit for bit. */
void mxi_cpu_qact_avx2(const float *x, size_t cols, size_t nbp, float s, uint8_t *dst);
#endif
/* mxi_cpu_qact's signature: the quantizer run() uses at its level. */
typedef void (*mxi_cpu_qact_fn)(const float *x, size_t cols, size_t nbp, float s, uint8_t *dst);

/* Decodes block b (32 columns) of row r to floats, exactly (scalar twin of
 * the vector decoders). */
void mxi_cpu_decode_block(const mxi_cpu_mat_t *m, size_t r, size_t b, float w_p[32]);

/* c[t * ldc + (r - r0)] = dot(a[t][0..kp), row r) for r in [r0, r1), t < nt.
 * a[t] points at kp floats (zero beyond cols). tile: (r1 - r0) * (kp + 8 * (nt + 8))
 * floats of scratch, 64-byte aligned. r1 - r0 <= MXI_CPU_ROW_BLOCK. */
typedef void (*mxi_cpu_gemm_fn)(const mxi_cpu_mat_t *m, size_t r0, size_t r1, const float *const *a, size_t nt,
                                float *c, size_t ldc, float *tile);

/* MXFP4 weights: the same with quantized activation rows (mxi_cpu_qact):
 * qa[t] points at token t's row. tile: MXI_CPU_ROW_BLOCK * nbp * 68 + 256 bytes of
 * scratch plus 32 * (nt + 8) * MXI_CPU_ROW_BLOCK bytes of partial sums,
 * 64-byte aligned. */
typedef void (*mxi_cpu_q4_fn)(const mxi_cpu_mat_t *m, size_t r0, size_t r1, const uint8_t *const *qa, size_t nt,
                              float *c, size_t ldc, void *tile);

void mxi_cpu_q4_scalar(const mxi_cpu_mat_t *m, size_t r0, size_t r1, const uint8_t *const *qa, size_t nt, float *c,
                       size_t ldc, void *tile);
#if defined(__x86_64__) || defined(__i386__)
void mxi_cpu_q4_avx2(const mxi_cpu_mat_t *m, size_t r0, size_t r1, const uint8_t *const *qa, size_t nt, float *c,
                     size_t ldc, void *tile);
/* The same with AVX-VNNI (x86/avxvnni.c): the AVX2 level's choice where the
 * CPU has it. Same results, bit for bit. */
void mxi_cpu_q4_avxvnni(const mxi_cpu_mat_t *m, size_t r0, size_t r1, const uint8_t *const *qa, size_t nt, float *c,
                        size_t ldc, void *tile);
void mxi_cpu_q4_avx512(const mxi_cpu_mat_t *m, size_t r0, size_t r1, const uint8_t *const *qa, size_t nt, float *c,
                       size_t ldc, void *tile);
void mxi_cpu_q4_avx512vnni(const mxi_cpu_mat_t *m, size_t r0, size_t r1, const uint8_t *const *qa, size_t nt, float *c,
                           size_t ldc, void *tile);
/* The same with VBMI too (x86/avx512vbmi.c): the AVX-512 level's choice where
 * the CPU has both. Same results, bit for bit. */
void mxi_cpu_q4_avx512vbmi(const mxi_cpu_mat_t *m, size_t r0, size_t r1, const uint8_t *const *qa, size_t nt, float *c,
                           size_t ldc, void *tile);
/* AMX level: AMX-INT8 tiles for nt >= MXI_CPU_AMX_MIN tokens whose rows qa[t]
 * are equally spaced (run() lays them out so), the AVX-512 VNNI kernel
 * otherwise. Same results, bit for bit (kernels/cpu/x86/amx.c). Rows per call:
 * r1 - r0 <= MXI_CPU_AMX_ROWS; tile: MXI_CPU_AMX_TILE_BYTES(nbp) bytes, then
 * the partial sums, 32 * (nt + 8) * MXI_CPU_AMX_ROWS bytes (or the others'
 * scratch for 24 rows, whichever is larger). */
void mxi_cpu_q4_amx(const mxi_cpu_mat_t *m, size_t r0, size_t r1, const uint8_t *const *qa, size_t nt, float *c,
                    size_t ldc, void *tile);
#endif
#define MXI_CPU_AMX_MIN 10

void mxi_cpu_gemm_scalar(const mxi_cpu_mat_t *m, size_t r0, size_t r1, const float *const *a, size_t nt, float *c,
                         size_t ldc, float *tile);
#if defined(__x86_64__) || defined(__i386__)
void mxi_cpu_gemm_avx2(const mxi_cpu_mat_t *m, size_t r0, size_t r1, const float *const *a, size_t nt, float *c,
                       size_t ldc, float *tile);
void mxi_cpu_gemm_avx512(const mxi_cpu_mat_t *m, size_t r0, size_t r1, const float *const *a, size_t nt, float *c,
                         size_t ldc, float *tile);
#endif

/* The level a packed set of weights runs at, and a way for tests and the
 * benchmark to read which one that is. */
int mxi_cpu_packed_level(const mx_backend_packed_t *packed);
/* The MXFP4 kernel prepack chose (NULL for other weights or a NULL packed). */
mxi_cpu_q4_fn mxi_cpu_packed_q4(const mx_backend_packed_t *packed);
const char *mxi_cpu_level_name(int level);
/* The CPU's capability bits (MXI_CPU_HAS_*), from cpuid and xgetbv. */
unsigned mxi_cpu_detect(void);
/* 1 if this process may run AMX tile instructions: the CPU has them and, on
 * Linux, arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA) granted the tile state
 * (asked here, idempotent). Called when the AMX level is chosen. */
int mxi_cpu_amx_enable(void);
/* Bytes of packed weight data of one expert (both matrices, scales included). */
size_t mxi_cpu_packed_expert_bytes(const mx_backend_packed_t *packed, int expert);
/* The packed matrices of one expert (tests: layout and padding). */
const mxi_cpu_mat_t *mxi_cpu_packed_matrix(const mx_backend_packed_t *packed, int expert,
                                           int which /* 0 gate_up, 1 down */);

#endif
