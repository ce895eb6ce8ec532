/* mxep kernels: the table of every backend compiled into this build.
 *
 * ref comes first (always there, priority 0), then cpu, then the GPU backends
 * that this build was configured with. The cpu backend lives in kernels/cpu/;
 * kernels/CMakeLists.txt defines MXEP_HAVE_CPU_BACKEND on this file when that
 * folder has sources (a weak reference would not pull the object out of the
 * static library, so it is a build-time switch, not a link-time one). */
#include <string.h>
#include <strings.h>

#include "mxep/kernels.h"

extern const mx_backend_ops_t mx_backend_ref;
#ifdef MXEP_HAVE_CPU_BACKEND
extern const mx_backend_ops_t mx_backend_cpu;
#endif
#ifdef MXEP_HAVE_CUDA
extern const mx_backend_ops_t mx_backend_cuda;
#endif
#ifdef MXEP_HAVE_HIP
extern const mx_backend_ops_t mx_backend_hip;
#endif
#ifdef MXEP_HAVE_ZE
extern const mx_backend_ops_t mx_backend_ze;
#endif

static const mx_backend_ops_t *const registry[] = {
    &mx_backend_ref,
#ifdef MXEP_HAVE_CPU_BACKEND
    &mx_backend_cpu,
#endif
#ifdef MXEP_HAVE_CUDA
    &mx_backend_cuda,
#endif
#ifdef MXEP_HAVE_HIP
    &mx_backend_hip,
#endif
#ifdef MXEP_HAVE_ZE
    &mx_backend_ze,
#endif
};

const mx_backend_ops_t *const *mx_backend_registry(int *count_p)
{
    if (count_p)
        *count_p = (int)(sizeof(registry) / sizeof(registry[0]));
    return registry;
}

const mx_backend_ops_t *mx_backend_find(const char *name)
{
    if (!name)
        return NULL;
    for (size_t i = 0; i < sizeof(registry) / sizeof(registry[0]); i++)
        if (strcasecmp(registry[i]->name, name) == 0)
            return registry[i];
    return NULL;
}
