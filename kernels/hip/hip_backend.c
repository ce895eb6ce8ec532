/* mxep `hip` backend: probe and predicates for AMD GPUs.
 *
 * The runtime (libamdhip64) is opened with dlopen, so a build with hipcc runs
 * on machines without ROCm and reports MX_ERR_NO_DEVICE there. The kernels of
 * kernels/gpu compile as HIP for gfx90a and gfx940 (target mxep_hip_kernels)
 * but are not linked into this library: they have never run on an AMD GPU, so
 * supports() declines every layer with that reason rather than pretend. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hip_arch.h"
#include "mxep/status.h"

/* The targets kernels/gpu is compiled for in this build: CMake's
 * MXEP_HIP_ARCHS, comma-separated (kernels/hip/CMakeLists.txt). */
#ifndef MXEP_HIP_BUILT_ARCHS
#define MXEP_HIP_BUILT_ARCHS "gfx90a,gfx940"
#endif

static int arch_built(const char *arch)
{
    size_t n = strlen(arch);
    for (const char *p = MXEP_HIP_BUILT_ARCHS; *p;) {
        size_t m = strcspn(p, ","), name = strcspn(p, ":,"); /* "gfx90a:xnack-" builds for gfx90a */
        if (name == n && !strncmp(p, arch, n))
            return 1;
        p += m + (p[m] == ',');
    }
    return 0;
}

mx_status_t mxi_hip_arch_parse(const char *name, mxi_hip_arch_t *arch_p)
{
    if (!name || strncmp(name, "gfx", 3) != 0)
        return mx_error_set(MX_ERR_INVALID, "hip: arch name '%s': expected gfx<digits>[<letter>][:features]",
                            name ? name : "(null)");
    mxi_hip_arch_t a;
    memset(&a, 0, sizeof a);
    size_t n = strcspn(name, ":");
    if (n >= sizeof a.arch || n < 5)
        return mx_error_set(MX_ERR_INVALID, "hip: arch name '%s': expected gfx<digits>[<letter>][:features]", name);
    for (size_t i = 3; i < n; i++) {
        char c = name[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            return mx_error_set(MX_ERR_INVALID, "hip: arch name '%s': bad character '%c'", name, c);
    }
    memcpy(a.arch, name, n);
    a.arch[n] = '\0';
    if (!strcmp(a.arch, "gfx90a")) {
        a.known = a.mfma_bf16 = 1;
    } else if (!strcmp(a.arch, "gfx940") || !strcmp(a.arch, "gfx941") || !strcmp(a.arch, "gfx942")) {
        a.known = a.mfma_bf16 = a.fp8 = a.fp8_fnuz = 1;
    } else if (!strcmp(a.arch, "gfx950")) {
        a.known = a.mfma_bf16 = a.fp8 = 1;
    }
    a.built = a.known && arch_built(a.arch);
    *arch_p = a;
    return MX_OK;
}

mx_status_t mxi_hip_arch_from_kfd(unsigned v, char *arch, size_t arch_len)
{
    unsigned major = v / 10000, minor = (v / 100) % 100, step = v % 100;
    if (v == 0 || major < 6 || major > 20 || minor > 15 || step > 15 || !arch || arch_len < 8)
        return mx_error_set(MX_ERR_INVALID, "hip: gfx_target_version %u: expected MMmmss with minor, stepping < 16", v);
    snprintf(arch, arch_len, "gfx%u%x%x", major, minor, step);
    return MX_OK;
}

/* The first GPU node of the KFD topology (what rocm_agent_enumerator reads). */
static int kfd_arch(char *arch, size_t arch_len)
{
    for (int node = 0; node < 64; node++) {
        char path[128], line[256];
        snprintf(path, sizeof path, "/sys/class/kfd/kfd/topology/nodes/%d/properties", node);
        FILE *f = fopen(path, "r");
        if (!f) {
            if (node > 0)
                break;
            continue;
        }
        unsigned v = 0;
        while (fgets(line, sizeof line, f))
            if (sscanf(line, "gfx_target_version %u", &v) == 1)
                break;
        fclose(f);
        if (v && mxi_hip_arch_from_kfd(v, arch, arch_len) == MX_OK)
            return 1;
    }
    return 0;
}

int mxi_hip_arch_supports(const mxi_hip_arch_t *a, const mx_moe_desc_t *desc, char *reason, size_t reason_len)
{
#define NO(...)                                                                                                        \
    do {                                                                                                               \
        if (reason && reason_len)                                                                                      \
            snprintf(reason, reason_len, __VA_ARGS__);                                                                 \
        return 0;                                                                                                      \
    } while (0)
    if (!a || !desc)
        NO("no device or no layer description");
    if (!a->known)
        NO("%s: not a CDNA target this backend knows (gfx90a, gfx940-942, gfx950)", a->arch);
    if (!a->mfma_bf16)
        NO("%s: no BF16 matrix cores", a->arch);
    /* the description's own sense, as every backend (H and I up to 2^20, as the cuda backend) */
    if (!mx_moe_desc_check(desc, (size_t)1 << 20, reason, reason_len))
        return 0;
    int fp8_act = desc->scheme == MX_SCHEME_W4A8 || desc->scheme == MX_SCHEME_W8A8;
    int fp8_w = desc->scheme == MX_SCHEME_W8A16 || desc->scheme == MX_SCHEME_W8A8;
    if ((fp8_act || fp8_w) && !a->fp8)
        NO("%s: no FP8 (scheme %s)", a->arch, mx_scheme_name(desc->scheme));
    if ((fp8_act || fp8_w) && a->fp8_fnuz)
        NO("%s: FP8 is E4M3FNUZ here; %s checkpoints are E4M3FN and the FNUZ rescale is not written", a->arch,
           mx_scheme_name(desc->scheme));
    if (!a->built)
        NO("%s: kernels/gpu is not compiled for this target (MXEP_HIP_ARCHS)", a->arch);
    NO("%s: HIP kernels compile (mxep_hip_kernels) but are not linked: never validated on an AMD GPU", a->arch);
#undef NO
}

/* ------------------------------------------------------------ runtime through dlopen */

typedef int (*hip_count_fn)(int *);
typedef int (*hip_name_fn)(char *, int, int);
typedef int (*hip_attr_fn)(int *, int, int);
typedef int (*hip_mem_fn)(size_t *, int);
typedef const char *(*hip_str_fn)(int);

static mx_status_t hip_probe(mx_device_info_t *info_p)
{
    const char *libs[] = {"libamdhip64.so", "libamdhip64.so.6", "libamdhip64.so.5"};
    void *h = NULL;
    for (size_t i = 0; i < sizeof libs / sizeof libs[0] && !h; i++)
        h = dlopen(libs[i], RTLD_NOW | RTLD_LOCAL);
    if (!h)
        return mx_error_set(MX_ERR_NO_DEVICE, "hip: no HIP runtime (libamdhip64.so not loadable)");
    hip_count_fn count = (hip_count_fn)dlsym(h, "hipGetDeviceCount");
    hip_name_fn name = (hip_name_fn)dlsym(h, "hipDeviceGetName");
    hip_mem_fn mem = (hip_mem_fn)dlsym(h, "hipDeviceTotalMem");
    hip_attr_fn attr = (hip_attr_fn)dlsym(h, "hipDeviceGetAttribute");
    hip_str_fn errstr = (hip_str_fn)dlsym(h, "hipGetErrorString");
    int n = 0, rc = count ? count(&n) : -1;
    if (rc != 0 || n <= 0) {
        mx_status_t st = mx_error_set(MX_ERR_NO_DEVICE, "hip: no AMD GPU (hipGetDeviceCount: %s)",
                                      rc == -1 ? "symbol missing"
                                      : rc     ? (errstr ? errstr(rc) : "error")
                                               : "0 devices");
        /* libamdhip64 is not unloaded: its global destructors expect to run at exit */
        return st;
    }
    mx_device_info_t info;
    memset(&info, 0, sizeof info);
    info.device_index = 0;
    if (name)
        name(info.name, (int)sizeof info.name, 0);
    if (mem)
        mem(&info.memory, 0);
    /* The arch comes from the KFD topology (hipDeviceProp_t's layout changes between
     * ROCm versions, so this C file does not read it); MXEP_HIP_ARCH overrides. */
    (void)attr;
    const char *arch = getenv("MXEP_HIP_ARCH");
    if (arch && *arch)
        snprintf(info.isa, sizeof info.isa, "%s", arch);
    else if (!kfd_arch(info.isa, sizeof info.isa))
        snprintf(info.isa, sizeof info.isa, "unknown");
    *info_p = info;
    return MX_OK;
}

static int hip_supports(const mx_device_info_t *dev, const mx_moe_desc_t *desc, char *reason, size_t reason_len)
{
    mxi_hip_arch_t a;
    if (!dev || mxi_hip_arch_parse(dev->isa, &a) != MX_OK) {
        if (reason && reason_len)
            snprintf(reason, reason_len, "unknown AMD arch '%s' (set MXEP_HIP_ARCH=gfx90a etc.)", dev ? dev->isa : "");
        return 0;
    }
    return mxi_hip_arch_supports(&a, desc, reason, reason_len);
}

static mx_status_t hip_prepack(const mx_device_info_t *dev, const mx_moe_desc_t *desc,
                               const mx_expert_weights_t *experts, int n_experts, mx_backend_packed_t **packed_p)
{
    (void)experts;
    (void)n_experts;
    (void)packed_p;
    char why[MX_REASON_MAX] = "";
    hip_supports(dev, desc, why, sizeof why);
    return mx_error_set(MX_ERR_UNSUPPORTED, "hip prepack: %s", why);
}

static void hip_release(mx_backend_packed_t *packed)
{
    (void)packed;
}

static size_t hip_workspace_size(const mx_backend_packed_t *packed, size_t max_tokens, size_t max_assign)
{
    (void)packed;
    (void)max_tokens;
    (void)max_assign;
    return 0;
}

static mx_status_t hip_run(const mx_backend_packed_t *packed, const mx_run_args_t *args, void *workspace)
{
    (void)packed;
    (void)args;
    (void)workspace;
    return mx_error_set(MX_ERR_UNSUPPORTED, "hip run: no HIP kernels are linked in this build");
}

const mx_backend_ops_t mx_backend_hip = {
    .name = "hip",
    .priority = 90,
    .probe = hip_probe,
    .supports = hip_supports,
    .prepack = hip_prepack,
    .release = hip_release,
    .workspace_size = hip_workspace_size,
    .run = hip_run,
};
