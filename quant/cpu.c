/* quant/cpu.c: may the AVX2 fast paths run here? cpuid + the OS saving YMM state. */
#include "mxep/quant.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>

static int detect_avx2(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return 0;
    const unsigned osxsave = 1u << 27, avx = 1u << 28, fma = 1u << 12, f16c = 1u << 29;
    if ((c & (osxsave | avx | fma | f16c)) != (osxsave | avx | fma | f16c))
        return 0;
    unsigned xlo, xhi;
    __asm__ volatile("xgetbv" : "=a"(xlo), "=d"(xhi) : "c"(0));
    (void)xhi;
    if ((xlo & 0x6u) != 0x6u) /* XMM and YMM state enabled by the OS */
        return 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d))
        return 0;
    return (b & (1u << 5)) != 0; /* AVX2 */
}

int mx_quant_have_avx2(void)
{
    /* benign race: every thread computes the same answer */
    static volatile int cached = -1;
    if (cached < 0)
        cached = detect_avx2();
    return cached;
}
#else
int mx_quant_have_avx2(void)
{
    return 0;
}
#endif
