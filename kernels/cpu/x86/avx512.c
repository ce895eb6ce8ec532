/* mxep cpu backend, AVX-512 level (F/BW/VL/DQ). BF16 and FP8 weights: the same
 * 8-lane FP32 kernel as the AVX2 level (bitwise equal results) compiled for
 * AVX-512VL, whose 32 vector registers hold a 4 rows x 4 tokens tile.
 * MXFP4 weights: 16-lane integer kernels, two rows per register
 * (q4_zmm_body.h); avx512vnni.c has the same with VNNI instructions. */
#define MXI_GEMM_NAME mxi_cpu_gemm_avx512
#define MXI_MR 4
#define MXI_NR 4
#include "gemm_body.h"

#define MXI_Q4Z_NAME mxi_cpu_q4_avx512
#define MXI_Q4Z_VNNI 0
#include "q4_zmm_body.h"
