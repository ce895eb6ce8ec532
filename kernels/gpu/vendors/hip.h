/* mxep GPU kernels: HIP mapping of the CUDA names the kernel sources use.
 * No MFMA path yet: on AMD the GEMMs take the portable SIMT kernel. */
#ifndef MXEP_VENDOR_HIP_H
#define MXEP_VENDOR_HIP_H
#include <hip/hip_runtime.h>
#define MXG_VENDOR "hip"
#define cudaStream_t hipStream_t
#define cudaError_t hipError_t
#define cudaSuccess hipSuccess
#define cudaErrorInvalidValue hipErrorInvalidValue
#define cudaGetLastError hipGetLastError
#define cudaFuncSetAttribute hipFuncSetAttribute
#define cudaFuncAttributeMaxDynamicSharedMemorySize hipFuncAttributeMaxDynamicSharedMemorySize
/* HIP 5.2 has no *_sync shuffles; the kernels reduce within 32 lanes only. */
#define __shfl_xor_sync(mask, v, o) __shfl_xor((v), (o))
#endif
