/* Helpers shared by the cpu backend tests (tests/kernels/test_cpu_*.c):
 * one random problem (experts, tokens, routing) and a run of the cpu backend
 * at a chosen ISA level. Built on mxep_kt_util. */
#ifndef MXEP_TEST_CPU_COMMON_H
#define MXEP_TEST_CPU_COMMON_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../kernels/cpu/cpu_internal.h"
#include "kt_util.h"
#include "mxep/quant.h"

typedef struct {
    mx_moe_desc_t desc;
    kt_experts_t *ex;
    kt_routing_t rt;
    uint16_t *x;
    uint64_t seed;
} cpu_problem_t;

static inline int cpu_problem_make(cpu_problem_t *p, const mx_moe_desc_t *desc, int n_experts, size_t n_tokens,
                                   int top_k, int n_idle, uint64_t seed)
{
    memset(p, 0, sizeof *p);
    p->desc = *desc;
    p->seed = seed;
    kt_expert_opts_t opts = {.with_bias = 1, .fp8_scale = MX_WSCALE_BLOCK, .gain = 1.0f};
    if (kt_experts_create(desc, n_experts, &opts, seed, &p->ex) != MX_OK)
        return -1;
    if (kt_routing_create(n_tokens, n_experts, top_k, n_idle, seed + 1, &p->rt) != MX_OK)
        return -1;
    p->x = malloc((n_tokens ? n_tokens : 1) * desc->hidden * sizeof(uint16_t));
    if (!p->x)
        return -1;
    kt_rng_t r;
    kt_rng_seed(&r, seed + 2);
    kt_tokens_fill(&r, p->x, n_tokens * desc->hidden, 1.0f);
    return 0;
}

static inline void cpu_problem_free(cpu_problem_t *p)
{
    if (p->ex)
        kt_experts_destroy(p->ex);
    kt_routing_destroy(&p->rt);
    free(p->x);
    memset(p, 0, sizeof *p);
}

/* Device info that makes prepack use `level` (MXI_CPU_LEVEL_*). */
static inline mx_device_info_t cpu_dev_at(int level)
{
    mx_device_info_t d;
    memset(&d, 0, sizeof d);
    d.device_index = -1;
    d.flags = mxi_cpu_detect() | ((unsigned)(level + 1) << MXI_CPU_LEVEL_SHIFT);
    return d;
}

/* AVX-VNNI (cpuid leaf 7.1 EAX bit 4) with AVX2: the AVX2 level's kernels
 * with vpdpbusd / vpdpwssd (kernels/cpu/x86/avxvnni.c). */
static inline int cpu_has_avxvnni(void)
{
    return (mxi_cpu_detect() & (MXI_CPU_HAS_AVX2 | MXI_CPU_HAS_AVXVNNI)) == (MXI_CPU_HAS_AVX2 | MXI_CPU_HAS_AVXVNNI);
}

static inline int cpu_level_available(int level)
{
    unsigned f = mxi_cpu_detect();
    if (level == MXI_CPU_LEVEL_AMX) {
        const unsigned need = MXI_CPU_HAS_AVX512 | MXI_CPU_HAS_AVX512VNNI | MXI_CPU_HAS_AMX;
        return (f & need) == need && mxi_cpu_amx_enable();
    }
    if (level == MXI_CPU_LEVEL_AVX512)
        return (f & MXI_CPU_HAS_AVX512) != 0;
    if (level == MXI_CPU_LEVEL_AVX2)
        return (f & MXI_CPU_HAS_AVX2) != 0;
    return 1;
}

/* Runs `b` on the problem's experts for the given tokens/assignments. mode
 * PER_ASSIGNMENT fills out_bf16[n_assign x H]; WEIGHTED_SUM adds into out_f32
 * [n_tokens x H] (the caller zeroes it). */
static inline mx_status_t cpu_run_on(const mx_backend_ops_t *b, const mx_backend_packed_t *pk, const uint16_t *x,
                                     size_t n_tokens, size_t n_assign, const int32_t *tok, const int32_t *expert,
                                     const float *weight, mx_out_mode_t mode, uint16_t *out_bf16, float *out_f32,
                                     int threads)
{
    mx_run_args_t a;
    memset(&a, 0, sizeof a);
    a.n_tokens = n_tokens;
    a.x = x;
    a.n_assign = n_assign;
    a.tok = tok;
    a.expert = expert;
    a.weight = weight;
    a.mode = mode;
    a.out_bf16 = out_bf16;
    a.out_f32 = out_f32;
    a.n_threads = threads;
    return kt_backend_run(b, pk, &a);
}

#endif
