/* mxep cpu backend, AVX2 level on CPUs with AVX-VNNI (the VEX-coded vpdpbusd /
 * vpdpwssd on 256-bit vectors: Alder Lake and later client cores, the E-core
 * Xeons without AVX-512, Zen 5): the MXFP4 integer kernels of q4_body.h with
 * those instructions in place of vpmaddubsw / vpmaddwd and their adds. The
 * same exact block sums, so the same results bit for bit. Called only when
 * cpuid reports AVX-VNNI and the level is AVX2 (kernels/cpu/cpu.c). */
#define MXI_Q4_NAME mxi_cpu_q4_avxvnni
#define MXI_Q4_MR 3
#define MXI_Q4_NR 3
#define MXI_Q4_VNNI 1
#include "q4_body.h"
