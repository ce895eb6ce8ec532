/* mxep cpu backend, AVX-512 level: the same 8-lane FP32 kernel (so results are
 * bitwise equal to the AVX2 and scalar levels) compiled for AVX-512VL, whose 32
 * vector registers hold a 4 rows x 4 tokens tile (16 accumulators). A 16-lane
 * kernel is future work (bench/RESULTS.md). */
#define MXI_GEMM_NAME mxi_cpu_gemm_avx512
#define MXI_MR 4
#define MXI_NR 4
#include "gemm_body.h"

#define MXI_Q4_NAME mxi_cpu_q4_avx512
#define MXI_Q4_MR 3
#define MXI_Q4_NR 3
#include "q4_body.h"
