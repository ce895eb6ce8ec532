/* quant/ internals shared between the scalar sources and the per-ISA files. */
#ifndef MXEP_QUANT_INTERNAL_H
#define MXEP_QUANT_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

static inline uint32_t mxi_f32_bits(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static inline float mxi_bits_f32(uint32_t u)
{
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* The canonical quiet NaN every decoder returns for an unsigned NaN code. */
#define MXI_F32_QNAN 0x7FC00000u

#if defined(__x86_64__) || defined(__i386__)
#define MXI_X86 1
#else
#define MXI_X86 0
#endif

/* AVX2 kernels (quant/x86_avx2.c, built on x86 only); call only when
 * mx_quant_have_avx2(). */
void mxi_quant_mxfp4_decode_row_avx2(const uint8_t *packed, const uint8_t *scales, size_t k, float *out);
void mxi_quant_mxfp4_decode_row_bf16_avx2(const uint8_t *packed, const uint8_t *scales, size_t k, uint16_t *out);
void mxi_quant_fp8_decode_avx2(const uint8_t *q, size_t n, float scale, float *out);
void mxi_quant_fp8_decode_bf16_avx2(const uint8_t *q, size_t n, float scale, uint16_t *out);

#endif
