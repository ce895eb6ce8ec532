/* mxep cpu backend, AVX2 + FMA level: 16 YMM registers. FP32 kernels (BF16 and
 * FP8 weights) with a 3 rows x 4 tokens tile; MXFP4 integer kernels with 3
 * tokens per tiled micro-kernel call. */
#define MXI_GEMM_NAME mxi_cpu_gemm_avx2
#define MXI_MR 3
#define MXI_NR 4
#include "gemm_body.h"

#define MXI_Q4_NAME mxi_cpu_q4_avx2
#define MXI_Q4_MR 3
#define MXI_Q4_NR 3
#include "q4_body.h"
