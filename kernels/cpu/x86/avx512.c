/* mxep cpu backend, AVX-512 level (F/BW/VL/DQ). BF16 and FP8 weights: the
 * 8-lane FP32 kernels of the AVX2 level (bitwise equal results) compiled for
 * AVX-512VL; the tiled path (many tokens) 16 lanes wide, two rows per zmm
 * register, 4 row pairs x 4 tokens per call (gemm_body.h, MXI_GEMM_ZMM).
 * MXFP4 weights: 16-lane integer kernels, two rows per register
 * (q4_zmm_body.h); avx512vnni.c has the same with VNNI instructions. */
#define MXI_GEMM_NAME mxi_cpu_gemm_avx512
#define MXI_MR 4
#define MXI_NR 4
#define MXI_GEMM_ZMM 1
#include "gemm_body.h"

#define MXI_Q4Z_NAME mxi_cpu_q4_avx512
#define MXI_Q4Z_VNNI 0
#include "q4_zmm_body.h"
