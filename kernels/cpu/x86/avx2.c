/* mxep cpu backend, AVX2 + FMA level: 16 YMM registers, 3 rows x 4 tokens tile. */
#define MXI_GEMM_NAME mxi_cpu_gemm_avx2
#define MXI_MR 3
#define MXI_NR 4
#include "gemm_body.h"
