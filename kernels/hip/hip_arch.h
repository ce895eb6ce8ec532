/* mxep `hip` backend: what an AMD gfx target can do (internal; tested in tests/gpu). */
#ifndef MXEP_HIP_ARCH_H
#define MXEP_HIP_ARCH_H

#include "mxep/kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    char arch[32]; /* "gfx90a", feature suffixes (":sramecc+:xnack-") removed */
    int known;     /* one of the targets below */
    int mfma_bf16; /* BF16 matrix cores (CDNA2+) */
    int fp8;       /* FP8 matrix instructions */
    int fp8_fnuz;  /* 1: E4M3FNUZ / E5M2FNUZ (gfx94x), 0: OCP E4M3FN (gfx950) */
    int built;     /* kernels/gpu is compiled for this target in this build (MXEP_HIP_ARCHS) */
} mxi_hip_arch_t;

/* Parses a gcnArchName ("gfx942:sramecc+:xnack-"). MX_ERR_INVALID for text that is no gfx name. */
mx_status_t mxi_hip_arch_parse(const char *gcn_arch_name, mxi_hip_arch_t *arch_p);

/* KFD's gfx_target_version (90010, 90402) -> "gfx90a", "gfx942". MX_ERR_INVALID for 0 or garbage. */
mx_status_t mxi_hip_arch_from_kfd(unsigned version, char *arch, size_t arch_len);

/* The backend's predicate on a parsed arch: 1 = could run, 0 = no with `reason`. */
int mxi_hip_arch_supports(const mxi_hip_arch_t *arch, const mx_moe_desc_t *desc, char *reason, size_t reason_len);

extern const mx_backend_ops_t mx_backend_hip;

#ifdef __cplusplus
}
#endif
#endif
