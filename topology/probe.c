/* topology/probe.c: what this process has, without MPI: host, CPU model, ISA
 * (cpuid + XGETBV), cores in the affinity mask, NUMA nodes and memory (hwloc),
 * and the GPUs each built runtime sees (dlopen, so no driver is never fatal). */
#include <dlfcn.h>
#include <hwloc.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define MX_TOPO_X86 1
#endif

#include "mxep/topology.h"

static const char *const isa_names[MX_ISA_COUNT] = {"avx2",     "fma",      "f16c",        "avx512f",
                                                    "avx512bw", "avx512vl", "avx512_bf16", "avx512_vnni",
                                                    "amx_tile", "amx_bf16", "amx_int8",    "avx_vnni"};

const char *mx_topo_isa_flag_name(unsigned bit)
{
    for (int i = 0; i < MX_ISA_COUNT; i++)
        if (bit == (1u << i))
            return isa_names[i];
    return NULL;
}

char *mx_topo_isa_string(unsigned isa, char *buf, size_t buf_len)
{
    if (!buf || buf_len == 0)
        return buf;
    buf[0] = '\0';
    size_t n = 0;
    for (int i = 0; i < MX_ISA_COUNT; i++) {
        if (!(isa & (1u << i)))
            continue;
        int w = snprintf(buf + n, buf_len - n, "%s%s", n ? "," : "", isa_names[i]);
        if (w < 0 || (size_t)w >= buf_len - n) {
            buf[buf_len - 1] = '\0';
            return buf;
        }
        n += (size_t)w;
    }
    if (n == 0)
        snprintf(buf, buf_len, "none");
    return buf;
}

static const char *const rt_names[MX_GPU_RT_COUNT] = {"cuda", "hip", "ze"};
const char *mx_topo_gpu_runtime_name(mx_gpu_runtime_t rt)
{
    return (unsigned)rt < MX_GPU_RT_COUNT ? rt_names[rt] : "?";
}

const char *mx_topo_gpu_state_name(mx_gpu_state_t s)
{
    switch (s) {
    case MX_GPU_NOT_BUILT:
        return "not built";
    case MX_GPU_OK:
        return "ok";
    case MX_GPU_NO_DRIVER:
        return "no driver";
    case MX_GPU_ERROR:
        return "error";
    }
    return "?";
}

static void copy_str(char *dst, size_t cap, const char *src)
{
    snprintf(dst, cap, "%s", src ? src : "");
}

/* ---------------------------------------------------------------- CPU */

#ifdef MX_TOPO_X86
static uint64_t xgetbv0(void)
{
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}
#endif

static unsigned probe_isa(void)
{
    unsigned isa = 0;
#ifdef MX_TOPO_X86
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return 0;
    const int osxsave = (c >> 27) & 1, fma = (c >> 12) & 1, f16c = (c >> 29) & 1;
    const uint64_t xcr0 = osxsave ? xgetbv0() : 0;
    const int os_avx = (xcr0 & 0x6) == 0x6;                /* XMM, YMM */
    const int os_avx512 = os_avx && (xcr0 & 0xe0) == 0xe0; /* opmask, ZMM_Hi256, Hi16_ZMM */
    const int os_amx = (xcr0 & 0x60000) == 0x60000;        /* XTILECFG, XTILEDATA */
    unsigned max_leaf = __get_cpuid_max(0, NULL);
    unsigned b7 = 0, c7 = 0, d7 = 0, a71 = 0;
    if (max_leaf >= 7) {
        __cpuid_count(7, 0, a, b7, c7, d7);
        unsigned sub_max = a;
        if (sub_max >= 1) {
            unsigned bb, cc, dd;
            __cpuid_count(7, 1, a71, bb, cc, dd);
        }
    }
    if (os_avx) {
        if ((b7 >> 5) & 1)
            isa |= MX_ISA_AVX2;
        if (fma)
            isa |= MX_ISA_FMA;
        if (f16c)
            isa |= MX_ISA_F16C;
        if ((a71 >> 4) & 1)
            isa |= MX_ISA_AVX_VNNI;
    }
    if (os_avx512) {
        if ((b7 >> 16) & 1)
            isa |= MX_ISA_AVX512F;
        if ((b7 >> 30) & 1)
            isa |= MX_ISA_AVX512BW;
        if ((b7 >> 31) & 1)
            isa |= MX_ISA_AVX512VL;
        if ((a71 >> 5) & 1)
            isa |= MX_ISA_AVX512BF16;
        if ((c7 >> 11) & 1)
            isa |= MX_ISA_AVX512VNNI;
    }
    if (os_amx && ((d7 >> 24) & 1)) {
#if defined(__linux__) && defined(SYS_arch_prctl)
        /* Linux hands out the AMX tile state only on request (ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA). */
        int granted = syscall(SYS_arch_prctl, 0x1023, 18) == 0;
#else
        int granted = 1;
#endif
        if (granted) {
            isa |= MX_ISA_AMX_TILE;
            if ((d7 >> 22) & 1)
                isa |= MX_ISA_AMX_BF16;
            if ((d7 >> 25) & 1)
                isa |= MX_ISA_AMX_INT8;
        }
    }
#endif
    return isa;
}

static void probe_cpu_model(char *dst, size_t cap)
{
    copy_str(dst, cap, "unknown");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (f) {
        char line[512];
        while (fgets(line, sizeof line, f)) {
            if (strncmp(line, "model name", 10) == 0) {
                char *colon = strchr(line, ':');
                if (colon) {
                    colon++;
                    while (*colon == ' ' || *colon == '\t')
                        colon++;
                    colon[strcspn(colon, "\n")] = '\0';
                    if (*colon) {
                        copy_str(dst, cap, colon);
                        fclose(f);
                        return;
                    }
                }
            }
        }
        fclose(f);
    }
#ifdef MX_TOPO_X86
    unsigned r[12];
    if (__get_cpuid_max(0x80000000u, NULL) >= 0x80000004u) {
        for (unsigned i = 0; i < 3; i++)
            __get_cpuid(0x80000002u + i, &r[4 * i], &r[4 * i + 1], &r[4 * i + 2], &r[4 * i + 3]);
        char brand[49];
        memcpy(brand, r, 48);
        brand[48] = '\0';
        char *s = brand;
        while (*s == ' ')
            s++;
        if (*s)
            copy_str(dst, cap, s);
    }
#endif
}

static void probe_hwloc(mx_topo_proc_t *p)
{
    p->numa_nodes = 1;
    p->numa_local = 1;
    hwloc_topology_t topo;
    if (hwloc_topology_init(&topo) != 0)
        return;
    if (hwloc_topology_load(topo) != 0) {
        hwloc_topology_destroy(topo);
        return;
    }
    int n = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_NUMANODE);
    if (n >= 1)
        p->numa_nodes = n;
    hwloc_obj_t root = hwloc_get_root_obj(topo);
    if (root)
        p->memory_bytes = root->total_memory;
    hwloc_bitmap_t set = hwloc_bitmap_alloc();
    if (set && n >= 1 && hwloc_get_cpubind(topo, set, HWLOC_CPUBIND_PROCESS) == 0) {
        int local = 0;
        for (int i = 0; i < n; i++) {
            hwloc_obj_t node = hwloc_get_obj_by_type(topo, HWLOC_OBJ_NUMANODE, (unsigned)i);
            if (node && node->cpuset && hwloc_bitmap_intersects(node->cpuset, set))
                local++;
        }
        if (local >= 1)
            p->numa_local = local;
    }
    if (set)
        hwloc_bitmap_free(set);
    hwloc_topology_destroy(topo);
}

/* ---------------------------------------------------------------- GPUs */

static void *open_first(const char *const *names, char *note, size_t cap)
{
    copy_str(note, cap, "cannot load the runtime library");
    for (int i = 0; names[i]; i++) {
        void *h = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
        if (h)
            return h;
        const char *err = dlerror(); /* valid only until the next dl call: copy the first one now */
        if (i == 0 && err)
            copy_str(note, cap, err);
    }
    return NULL;
}

#ifdef MXEP_HAVE_CUDA
static void probe_cuda(mx_topo_gpu_t *g)
{
    static const char *const libs[] = {"libcuda.so.1", "libcuda.so", NULL};
    void *h = open_first(libs, g->note, sizeof g->note);
    if (!h) {
        g->state = MX_GPU_NO_DRIVER;
        return;
    }
    int (*cu_init)(unsigned) = (int (*)(unsigned))dlsym(h, "cuInit");
    int (*cu_count)(int *) = (int (*)(int *))dlsym(h, "cuDeviceGetCount");
    int (*cu_get)(int *, int) = (int (*)(int *, int))dlsym(h, "cuDeviceGet");
    int (*cu_name)(char *, int, int) = (int (*)(char *, int, int))dlsym(h, "cuDeviceGetName");
    if (!cu_init || !cu_count) {
        g->state = MX_GPU_ERROR;
        copy_str(g->note, sizeof g->note, "libcuda lacks cuInit/cuDeviceGetCount");
        return;
    }
    int rc = cu_init(0);
    if (rc == 100) { /* CUDA_ERROR_NO_DEVICE */
        g->state = MX_GPU_OK;
        copy_str(g->note, sizeof g->note, "no device");
        return;
    }
    if (rc != 0) {
        g->state = MX_GPU_ERROR;
        snprintf(g->note, sizeof g->note, "cuInit failed (CUresult %d)", rc);
        return;
    }
    int n = 0;
    if ((rc = cu_count(&n)) != 0) {
        g->state = MX_GPU_ERROR;
        snprintf(g->note, sizeof g->note, "cuDeviceGetCount failed (CUresult %d)", rc);
        return;
    }
    g->state = MX_GPU_OK;
    g->count = n;
    int dev;
    if (n > 0 && cu_get && cu_name && cu_get(&dev, 0) == 0) {
        char name[96];
        if (cu_name(name, (int)sizeof name, dev) == 0) {
            name[sizeof name - 1] = '\0';
            copy_str(g->note, sizeof g->note, name);
        }
    }
}
#endif

#ifdef MXEP_HAVE_HIP
static void probe_hip(mx_topo_gpu_t *g)
{
    static const char *const libs[] = {"libamdhip64.so", "libamdhip64.so.6", "libamdhip64.so.5", NULL};
    void *h = open_first(libs, g->note, sizeof g->note);
    if (!h) {
        g->state = MX_GPU_NO_DRIVER;
        return;
    }
    int (*hip_count)(int *) = (int (*)(int *))dlsym(h, "hipGetDeviceCount");
    if (!hip_count) {
        g->state = MX_GPU_ERROR;
        copy_str(g->note, sizeof g->note, "libamdhip64 lacks hipGetDeviceCount");
        return;
    }
    int n = 0, rc = hip_count(&n);
    if (rc == 100) { /* hipErrorNoDevice */
        g->state = MX_GPU_OK;
        copy_str(g->note, sizeof g->note, "no device");
        return;
    }
    if (rc != 0) {
        g->state = MX_GPU_ERROR;
        snprintf(g->note, sizeof g->note, "hipGetDeviceCount failed (hipError %d)", rc);
        return;
    }
    g->state = MX_GPU_OK;
    g->count = n;
}
#endif

#ifdef MXEP_HAVE_ZE
static void probe_ze(mx_topo_gpu_t *g)
{
    static const char *const libs[] = {"libze_loader.so.1", "libze_loader.so", NULL};
    void *h = open_first(libs, g->note, sizeof g->note);
    if (!h) {
        g->state = MX_GPU_NO_DRIVER;
        return;
    }
    typedef unsigned (*ze_init_fn)(unsigned);
    typedef unsigned (*ze_driver_get_fn)(uint32_t *, void **);
    typedef unsigned (*ze_device_get_fn)(void *, uint32_t *, void **);
    ze_init_fn ze_init = (ze_init_fn)dlsym(h, "zeInit");
    ze_driver_get_fn ze_driver_get = (ze_driver_get_fn)dlsym(h, "zeDriverGet");
    ze_device_get_fn ze_device_get = (ze_device_get_fn)dlsym(h, "zeDeviceGet");
    if (!ze_init || !ze_driver_get || !ze_device_get) {
        g->state = MX_GPU_ERROR;
        copy_str(g->note, sizeof g->note, "libze_loader lacks zeInit/zeDriverGet/zeDeviceGet");
        return;
    }
    unsigned rc = ze_init(1u); /* ZE_INIT_FLAG_GPU_ONLY */
    if (rc != 0) {
        g->state = MX_GPU_NO_DRIVER;
        snprintf(g->note, sizeof g->note, "zeInit: no GPU driver (ze_result 0x%x)", rc);
        return;
    }
    uint32_t nd = 0;
    if ((rc = ze_driver_get(&nd, NULL)) != 0) {
        g->state = MX_GPU_ERROR;
        snprintf(g->note, sizeof g->note, "zeDriverGet failed (ze_result 0x%x)", rc);
        return;
    }
    void *drivers[16];
    if (nd > 16)
        nd = 16;
    int total = 0;
    if (nd > 0 && ze_driver_get(&nd, drivers) == 0)
        for (uint32_t i = 0; i < nd; i++) {
            uint32_t n = 0;
            if (ze_device_get(drivers[i], &n, NULL) == 0)
                total += (int)n;
        }
    g->state = MX_GPU_OK;
    g->count = total;
}
#endif

static void probe_gpus(mx_topo_proc_t *p)
{
    for (int i = 0; i < MX_GPU_RT_COUNT; i++) {
        p->gpu[i].state = MX_GPU_NOT_BUILT;
        p->gpu[i].count = 0;
        copy_str(p->gpu[i].note, sizeof p->gpu[i].note, "not built");
    }
#ifdef MXEP_HAVE_CUDA
    p->gpu[MX_GPU_RT_CUDA].note[0] = '\0';
    probe_cuda(&p->gpu[MX_GPU_RT_CUDA]);
#endif
#ifdef MXEP_HAVE_HIP
    p->gpu[MX_GPU_RT_HIP].note[0] = '\0';
    probe_hip(&p->gpu[MX_GPU_RT_HIP]);
#endif
#ifdef MXEP_HAVE_ZE
    p->gpu[MX_GPU_RT_ZE].note[0] = '\0';
    probe_ze(&p->gpu[MX_GPU_RT_ZE]);
#endif
    (void)open_first;
}

/* ---------------------------------------------------------------- public */

void mx_topo_bind_device(mx_topo_proc_t *p)
{
    if (!p)
        return;
    p->device_runtime = -1;
    p->device_index = -1;
    for (int i = 0; i < MX_GPU_RT_COUNT; i++)
        if (p->gpu[i].state == MX_GPU_OK && p->gpu[i].count > 0) {
            p->device_runtime = i;
            p->device_index = (p->local_rank < 0 ? 0 : p->local_rank) % p->gpu[i].count;
            return;
        }
}

void mx_topo_apply_device(mx_topo_proc_t *p)
{
    if (!p || p->device_runtime != MX_GPU_RT_CUDA || p->device_index < 0)
        return;
    const char *env = getenv("MXEP_CUDA_DEVICE");
    if (env && *env) {
        char *end = NULL;
        long v = strtol(env, &end, 10);
        if (*end == '\0' && v >= 0 && v < p->gpu[MX_GPU_RT_CUDA].count)
            p->device_index = (int32_t)v;
        return;
    }
    char buf[16];
    snprintf(buf, sizeof buf, "%d", (int)p->device_index);
    setenv("MXEP_CUDA_DEVICE", buf, 1);
}

void mx_topo_proc_set_backend(mx_topo_proc_t *p, const char *backend, const char *report)
{
    if (!p)
        return;
    copy_str(p->backend, sizeof p->backend, backend);
    copy_str(p->backend_report, sizeof p->backend_report, report);
}

mx_status_t mx_topo_probe(mx_topo_proc_t *proc_p)
{
    if (!proc_p)
        return mx_error_set(MX_ERR_INVALID, "topology probe: NULL output");
    mx_topo_proc_t p;
    memset(&p, 0, sizeof p);
    p.rank = 0;
    p.world_size = 1;
    p.local_rank = 0;
    p.local_size = 1;
    p.pid = (int32_t)getpid();
    if (gethostname(p.host, sizeof p.host) != 0 || !p.host[0])
        copy_str(p.host, sizeof p.host, "unknown");
    p.host[sizeof p.host - 1] = '\0';
    probe_cpu_model(p.cpu_model, sizeof p.cpu_model);
    p.isa = probe_isa();
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    p.host_cpus = online >= 1 ? (int32_t)online : 1;
    p.cores = 0;
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) == 0)
        p.cores = CPU_COUNT(&set);
    if (p.cores < 1)
        p.cores = p.host_cpus;
    probe_hwloc(&p);
    probe_gpus(&p);
    mx_topo_bind_device(&p);
    *proc_p = p;
    return MX_OK;
}
