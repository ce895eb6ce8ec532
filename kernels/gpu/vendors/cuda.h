/* mxep GPU kernels: the CUDA side of the thin vendor layer. Kernel sources use
 * the CUDA dialect; vendors/hip.h maps the same names onto HIP. */
#ifndef MXEP_VENDOR_CUDA_H
#define MXEP_VENDOR_CUDA_H
#include <cuda_runtime.h>
#define MXG_VENDOR "cuda"
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define MXG_HAVE_MMA 1 /* mma.sync bf16, ldmatrix, cp.async */
#endif
#endif
