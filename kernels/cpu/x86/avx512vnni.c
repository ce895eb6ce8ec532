/* mxep cpu backend, AVX-512 level on CPUs with AVX512-VNNI: the 16-lane MXFP4
 * integer kernels of q4_zmm_body.h with vpdpbusd / vpdpwssd. Called only when
 * cpuid reports AVX512-VNNI (kernels/cpu/cpu.c). */
#define MXI_Q4Z_NAME mxi_cpu_q4_avx512vnni
#define MXI_Q4Z_VNNI 1
#include "q4_zmm_body.h"
