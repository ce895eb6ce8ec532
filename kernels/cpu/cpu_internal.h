/* mxep cpu backend: internals shared by kernels/cpu/cpu.c and the per-ISA files
 * (kernels/cpu/x86/avx2.c, avx512.c). Not a public header.
 *
 * Numerics contract (what makes a token's output independent of its batch):
 * every output element out[t][n] = sum_k a[t][k] * w[n][k] is computed as one
 * 8-lane FP32 accumulator per (t, n), lane l taking k = 8c + l, chunks c in
 * ascending order, one fused multiply-add per (chunk, lane), then the fixed
 * tree ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)). Weights are decoded to exactly
 * the same floats whatever path (streaming or tiled) runs, so the scalar, AVX2
 * and AVX-512 kernels all give bitwise-identical results for any T. */
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
enum { MXI_CPU_LEVEL_SCALAR = 0, MXI_CPU_LEVEL_AVX2 = 1, MXI_CPU_LEVEL_AVX512 = 2 };
#define MXI_CPU_HAS_AVX2 0x1u   /* AVX2 + FMA + F16C with OS YMM support */
#define MXI_CPU_HAS_AVX512 0x2u /* AVX-512 F/BW/VL/DQ with OS ZMM support */
#define MXI_CPU_HAS_AVX512BF16 0x4u
#define MXI_CPU_HAS_AVX512VNNI 0x8u
#define MXI_CPU_HAS_AMX 0x10u /* AMX-TILE + AMX-BF16 + AMX-INT8 (not used yet) */
#define MXI_CPU_LEVEL_SHIFT 8 /* flags bits 8..10: 1 + the level this probe chose (0: none) */

/* Rows of a matrix that one work item handles (multiple of 2, 3 and 4). */
#define MXI_CPU_ROW_BLOCK 24
/* Token counts below this stream each weight block from memory once per row
 * group; at or above it rows are decoded into a float tile reused by all tokens. */
#define MXI_CPU_STREAM_MAX 5

/* One prepacked matrix [rows x cols], cols padded to kp (multiple of 32).
 * Row r lives at data + r * row_stride:
 *   BF16:  kp uint16 values.
 *   MXFP4: kp/32 blocks of 16 code bytes (nibble order of mxi_cpu_mxfp4_pos),
 *          then kp/32 E8M0 scale bytes (scales next to their row).
 *   FP8:   kp E4M3FN bytes, then at scale_off ceil(kp/128) float scales (one per
 *          128 columns; per-channel and per-tensor scales are replicated). */
typedef struct {
    int fmt;
    size_t rows, cols, kp;
    size_t row_stride; /* bytes, multiple of 64 */
    size_t scale_off;  /* MXFP4 / FP8: byte offset of the scales within a row */
    uint8_t *data;     /* 64-byte aligned, owned by the packed weights */
} mxi_cpu_mat_t;

/* Position p (0..31) of a nibble inside a packed 32-element MXFP4 block: byte
 * p & 15, low nibble for p < 16, high nibble otherwise. Element k of the block
 * sits at position mxi_cpu_mxfp4_pos[k] (chosen so that the AVX2 decoder's
 * unpack sequence yields elements in natural order). */
extern const uint8_t mxi_cpu_mxfp4_pos[32];

/* Decodes block b (32 columns) of row r to floats, exactly (scalar twin of
 * the vector decoders). */
void mxi_cpu_decode_block(const mxi_cpu_mat_t *m, size_t r, size_t b, float w_p[32]);

/* c[t * ldc + (r - r0)] = dot(a[t][0..kp), row r) for r in [r0, r1), t < nt.
 * a[t] points at kp floats (zero beyond cols). tile: (r1 - r0) * (kp + 8 * (nt + 8))
 * floats of scratch, 64-byte aligned. r1 - r0 <= MXI_CPU_ROW_BLOCK. */
typedef void (*mxi_cpu_gemm_fn)(const mxi_cpu_mat_t *m, size_t r0, size_t r1, const float *const *a, size_t nt,
                                float *c, size_t ldc, float *tile);

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
const char *mxi_cpu_level_name(int level);
/* The CPU's capability bits (MXI_CPU_HAS_*), from cpuid and xgetbv. */
unsigned mxi_cpu_detect(void);
/* Bytes of packed weight data of one expert (both matrices, scales included). */
size_t mxi_cpu_packed_expert_bytes(const mx_backend_packed_t *packed, int expert);
/* The packed matrices of one expert (tests: layout and padding). */
const mxi_cpu_mat_t *mxi_cpu_packed_matrix(const mx_backend_packed_t *packed, int expert,
                                           int which /* 0 gate_up, 1 down */);

#endif
