/* mxep topology/: what this process has, and the table of the whole job.
 *
 * Two halves:
 *  - the local probe (no MPI): host name, CPU model, ISA flags (cpuid + OS
 *    support), cores this process may use (affinity mask), NUMA nodes and
 *    memory (hwloc), and the GPUs visible through each runtime this build has
 *    (CUDA, HIP, Level Zero; each loaded with dlopen at probe time, so a
 *    machine without a driver reports "no driver" and never fails);
 *  - the MPI half: local rank on the host (MPI_Comm_split_type SHARED), device
 *    binding (local rank mod GPU count), and the cluster table gathered with
 *    MPI_Allgather of the fixed-size mx_topo_proc_t.
 *
 * Typical use (mxworker):
 *     mx_topo_proc_t me;
 *     mx_topo_probe(&me);                     // local, no MPI
 *     mx_topo_locate(MPI_COMM_WORLD, &me);    // rank, local rank, device binding
 *     ... oracle: mx_topo_proc_set_backend(&me, choice.backend->name, report);
 *     mx_topo_cluster_t table;
 *     mx_topo_gather(MPI_COMM_WORLD, &me, &table);   // collective
 *     mx_topo_cluster_print(&table, stdout);  / mx_topo_cluster_json(&table, &text)
 *     mx_topo_cluster_fini(&table);
 *
 * The struct is plain data (no pointers) so it travels as MPI_BYTE; every
 * string is NUL-terminated and truncated to its field. */
#ifndef MXEP_TOPOLOGY_H
#define MXEP_TOPOLOGY_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <mpi.h>

#include "mxep/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ISA flag bits (mx_topo_proc_t.isa). A bit is set only when the CPU has it AND
 * the OS saves the registers (XGETBV for AVX/AVX-512 state, and for AMX the
 * tile state; on Linux the AMX permission is requested with arch_prctl). */
#define MX_ISA_AVX2 (1u << 0)
#define MX_ISA_FMA (1u << 1)
#define MX_ISA_F16C (1u << 2)
#define MX_ISA_AVX512F (1u << 3)
#define MX_ISA_AVX512BW (1u << 4)
#define MX_ISA_AVX512VL (1u << 5)
#define MX_ISA_AVX512BF16 (1u << 6)
#define MX_ISA_AVX512VNNI (1u << 7)
#define MX_ISA_AMX_TILE (1u << 8)
#define MX_ISA_AMX_BF16 (1u << 9)
#define MX_ISA_AMX_INT8 (1u << 10)
#define MX_ISA_AVX_VNNI (1u << 11) /* VEX-coded VNNI on 256-bit vectors (with AVX2) */
#define MX_ISA_COUNT 12

/* Name of one flag bit as /proc/cpuinfo spells it ("avx2", "fma", "f16c",
 * "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "avx512_vnni", "amx_tile",
 * "amx_bf16", "amx_int8", "avx_vnni"); NULL for a bit that is not a flag. */
const char *mx_topo_isa_flag_name(unsigned bit);
/* "avx2,fma,avx512f" (or "none"), truncated to buf_len. Returns buf. */
char *mx_topo_isa_string(unsigned isa, char *buf, size_t buf_len);

/* GPU runtimes, in the order the device binding tries them. */
typedef enum { MX_GPU_RT_CUDA = 0, MX_GPU_RT_HIP = 1, MX_GPU_RT_ZE = 2, MX_GPU_RT_COUNT } mx_gpu_runtime_t;
const char *mx_topo_gpu_runtime_name(mx_gpu_runtime_t rt); /* "cuda", "hip", "ze" */

/* What probing one runtime gave. */
typedef enum {
    MX_GPU_NOT_BUILT = 0, /* this build has no support for the runtime (MXEP_HAVE_* off) */
    MX_GPU_OK = 1,        /* the driver answered; count is valid (may be 0) */
    MX_GPU_NO_DRIVER = 2, /* the library could not be loaded (no driver): count 0 */
    MX_GPU_ERROR = 3      /* the library loaded but init/count failed: count 0, note says why */
} mx_gpu_state_t;
const char *mx_topo_gpu_state_name(mx_gpu_state_t state); /* "not built", "ok", "no driver", "error" */

typedef struct {
    int32_t state; /* mx_gpu_state_t */
    int32_t count; /* devices visible to this process (after *_VISIBLE_DEVICES) */
    char note[96]; /* "libcuda.so.1: cannot open shared object file", "cuInit: 100", first device name, ... */
} mx_topo_gpu_t;

#define MX_TOPO_HOST_MAX 64
#define MX_TOPO_CPU_MAX 96
#define MX_TOPO_BACKEND_MAX 32
#define MX_TOPO_REPORT_MAX 512

/* One process. Fixed size, no pointers. */
typedef struct {
    /* filled by mx_topo_locate (mx_topo_probe sets rank 0, world 1, local 0/1) */
    int32_t rank, world_size;
    int32_t local_rank, local_size;
    int32_t node; /* index of this host among the job's hosts (mx_topo_gather; 0 before) */
    int32_t pid;
    /* filled by mx_topo_probe */
    char host[MX_TOPO_HOST_MAX];
    char cpu_model[MX_TOPO_CPU_MAX]; /* /proc/cpuinfo "model name" (or cpuid brand string) */
    uint32_t isa;                    /* MX_ISA_* bits */
    int32_t cores;                   /* CPUs in this process's affinity mask (>= 1) */
    int32_t host_cpus;               /* CPUs online on the host */
    int32_t numa_nodes;              /* hwloc NUMA nodes on the host (>= 1) */
    int32_t numa_local;              /* NUMA nodes this process's affinity mask touches (>= 1) */
    uint64_t memory_bytes;           /* host memory (hwloc), 0 if unknown */
    mx_topo_gpu_t gpu[MX_GPU_RT_COUNT];
    /* device binding (mx_topo_bind_device, called by mx_topo_locate) */
    int32_t device_runtime; /* mx_gpu_runtime_t, or -1 = CPU only */
    int32_t device_index;   /* local_rank % count of that runtime, or -1 */
    /* the oracle's choice, set by the worker (mx_topo_proc_set_backend); "" until then */
    char backend[MX_TOPO_BACKEND_MAX];
    char backend_report[MX_TOPO_REPORT_MAX]; /* one line per candidate, '\n' separated */
} mx_topo_proc_t;

/* Probes this process (no MPI). Always fills something sane: a field it cannot
 * read gets "unknown" / 1 / 0 and the function still returns MX_OK; it fails
 * only on a NULL argument (MX_ERR_INVALID). *proc_p is zeroed first. */
mx_status_t mx_topo_probe(mx_topo_proc_t *proc_p);

/* Sets device_runtime/device_index from local_rank: the first runtime in
 * mx_gpu_runtime_t order with count > 0 wins, device = local_rank % count;
 * none -> -1/-1 (CPU). Idempotent. */
void mx_topo_bind_device(mx_topo_proc_t *proc);

/* Makes the kernel backends open the device this process is bound to. For a
 * CUDA binding it exports MXEP_CUDA_DEVICE=device_index (the cuda backend's
 * probe opens that ordinal; without it every rank of a host would open device
 * 0), unless the user set MXEP_CUDA_DEVICE: then device_index takes that value
 * when it names a device of this host (any other value is left for the
 * backend's probe to refuse). Other runtimes are left alone (the HIP backend
 * runs no kernels yet). Call after mx_topo_locate, before the oracle. */
void mx_topo_apply_device(mx_topo_proc_t *proc);

/* Collective over comm: fills rank, world_size, local_rank, local_size
 * (MPI_Comm_split_type(MPI_COMM_TYPE_SHARED), key = rank) and binds the device.
 * MX_ERR_TRANSPORT naming the MPI call if one fails. */
mx_status_t mx_topo_locate(MPI_Comm comm, mx_topo_proc_t *proc);

/* Copies the oracle's choice into the struct (truncating). Either may be NULL (""). */
void mx_topo_proc_set_backend(mx_topo_proc_t *proc, const char *backend, const char *report);

/* The table of the whole job, procs[i] = rank i. */
typedef struct {
    int n_procs;
    int n_hosts;           /* distinct host names */
    mx_topo_proc_t *procs; /* [n_procs], owned; free with mx_topo_cluster_fini */
} mx_topo_cluster_t;

/* Collective: MPI_Allgather of every rank's `local` (which should have been
 * located on the same comm). Sets procs[i].node (hosts numbered in order of
 * first appearance by rank). Every rank gets the whole table. *cluster_p is
 * written only on success. */
mx_status_t mx_topo_gather(MPI_Comm comm, const mx_topo_proc_t *local, mx_topo_cluster_t *cluster_p);

/* Builds a table from procs already in memory (tests, single process): copies
 * them and numbers the hosts like mx_topo_gather. */
mx_status_t mx_topo_cluster_from(const mx_topo_proc_t *procs, int n_procs, mx_topo_cluster_t *cluster_p);

void mx_topo_cluster_fini(mx_topo_cluster_t *cluster);

/* Text table, one row per rank:
 *   rank host node local cores numa isa gpus(cuda/hip/ze) device backend
 * then, when any rank has a backend report, the report lines of each rank.
 * Returns MX_ERR_IO if writing fails. */
mx_status_t mx_topo_cluster_print(const mx_topo_cluster_t *cluster, FILE *out);

/* JSON text (malloc'd, caller frees with free()):
 * {"n_procs":N,"n_hosts":M,"procs":[{"rank":0,"host":"..","node":0,"local_rank":0,"local_size":2,
 *   "pid":..,"cpu_model":"..","isa":["avx2",..],"cores":..,"host_cpus":..,"numa_nodes":..,
 *   "numa_local":..,"memory_bytes":..,"gpus":{"cuda":{"state":"ok","count":1,"note":".."},..},
 *   "device":{"runtime":"cuda"|null,"index":0|-1},"backend":"..","backend_report":[".."]}]} */
mx_status_t mx_topo_cluster_json(const mx_topo_cluster_t *cluster, char **json_p);

#ifdef __cplusplus
}
#endif
#endif
