/* mxep cpu backend, AVX-512 level on CPUs with AVX512-VNNI and AVX512-VBMI
 * (Ice Lake and later, Zen 4): the VNNI kernels of q4_zmm_body.h with the
 * weights of the streaming kernels decoded by vpermb. Called only when cpuid
 * reports both (kernels/cpu/cpu.c). */
#define MXI_Q4Z_NAME mxi_cpu_q4_avx512vbmi
#define MXI_Q4Z_VNNI 1
#define MXI_Q4Z_VBMI 1
#include "q4_zmm_body.h"
