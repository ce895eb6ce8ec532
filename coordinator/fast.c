/* coordinator/fast.c: the process-wide fast-path switch and the CPU check
 * behind the AVX2 twins (coordinator/x86_avx2.c). */
#include "coord_internal.h"
#include "mxep/coordinator.h"
#ifdef MXEP_COORD_HAVE_QUANT
#include "mxep/quant.h"
#endif

static volatile int fast_on = 1;

int mx_coord_fast_paths_set(int on)
{
    int old = fast_on;
    fast_on = on != 0;
    return old;
}

int mxi_coord_fast(void)
{
    return fast_on;
}

int mxi_coord_use_avx2(void)
{
#if MXI_COORD_X86
    if (!fast_on)
        return 0;
#ifdef MXEP_COORD_HAVE_QUANT
    return mx_quant_have_avx2(); /* cpuid + the OS saving YMM state */
#else
    static volatile int cached = -1; /* benign race: every thread computes the same answer */
    if (cached < 0) {
        __builtin_cpu_init();
        cached = __builtin_cpu_supports("avx2") ? 1 : 0;
    }
    return cached;
#endif
#else
    return 0;
#endif
}
