/* mxep host-memory hooks: how the owner of a buffer that a device copies to or
 * from (the tokens a worker hands its backend, the transport regions the
 * backend writes its outputs into) tells the worker when that memory comes and
 * goes, so that a GPU backend can page-lock it once (cudaHostRegister) and copy
 * by DMA instead of through the driver's staging buffers. */
#ifndef MXEP_HOSTMEM_H
#define MXEP_HOSTMEM_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mx_host_hooks {
    /* after `bytes` at `ptr` were allocated (or when the hooks are installed on memory already there) */
    void (*on_alloc)(void *ctx, void *ptr, size_t bytes);
    /* before the memory at `ptr` (an on_alloc's ptr) is freed */
    void (*on_free)(void *ctx, void *ptr);
    void *ctx;
} mx_host_hooks_t;

#ifdef __cplusplus
}
#endif
#endif
