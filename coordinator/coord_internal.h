/* coordinator/ internals shared between its files (mxi_ prefix). */
#ifndef MXEP_COORD_INTERNAL_H
#define MXEP_COORD_INTERNAL_H

#include <stdint.h>
#include <string.h>

static inline float mxi_bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Round to nearest even; NaN stays a quiet NaN with its sign. */
static inline uint16_t mxi_bf16_from_f32(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline uint64_t mxi_splitmix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* ---------------------------------------------------------------- fast paths
 * AVX2 twins (coordinator/x86_avx2.c, built on x86 only) and the switch that
 * tests and bench/coord_bench use to run the scalar code instead
 * (mx_coord_fast_paths_set). Every twin gives bitwise the scalar result. */
#include <stddef.h>

#if defined(__x86_64__) || defined(__i386__)
#define MXI_COORD_X86 1
#else
#define MXI_COORD_X86 0
#endif

#define MXI_LOGIT_KC 256 /* h block */
#define MXI_LOGIT_TB 64  /* tokens per task (4 panels of 16) */

int mxi_coord_fast(void);     /* fast paths on (default) */
int mxi_coord_use_avx2(void); /* fast paths on and the CPU has AVX2 */

void mxi_coord_logits_task_avx2(const float *W, const float *bias, size_t E, size_t H, const uint16_t *x, size_t t0,
                                size_t nt, size_t e0, size_t e1, float *logits, float *xp, float *acc);
void mxi_coord_combine_rows_avx2(const uint16_t *const *rows, const float *weights, int n, size_t hidden,
                                 uint16_t *out);
void mxi_coord_sum_rows_avx2(const float *const *rows, int n, size_t hidden, uint16_t *out);
void mxi_coord_bf16_from_f32_avx2(const float *in, size_t n, uint16_t *out);
void mxi_coord_combine_rows_scalar(const uint16_t *const *rows, const float *weights, int n, size_t hidden,
                                   uint16_t *out);

#endif
