/* topology/ without MPI: the probe on this machine, device binding, the ISA
 * string, and the table printers (text and JSON) on a hand-made table. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mxep/topology.h"

static void test_probe_fills_sane_values(void **state)
{
    (void)state;
    mx_topo_proc_t p;
    memset(&p, 0xEE, sizeof p);
    assert_int_equal(mx_topo_probe(&p), MX_OK);
    assert_true(p.cores >= 1);
    assert_true(p.host_cpus >= 1);
    assert_true(p.numa_nodes >= 1);
    assert_true(p.numa_local >= 1 && p.numa_local <= p.numa_nodes);
    assert_true(strlen(p.host) > 0 && strlen(p.host) < MX_TOPO_HOST_MAX);
    assert_true(strlen(p.cpu_model) > 0);
    assert_int_equal(p.rank, 0);
    assert_int_equal(p.world_size, 1);
    assert_int_equal(p.local_rank, 0);
    assert_int_equal(p.local_size, 1);
    assert_string_equal(p.backend, "");
    for (int g = 0; g < MX_GPU_RT_COUNT; g++) {
        assert_true(p.gpu[g].state >= MX_GPU_NOT_BUILT && p.gpu[g].state <= MX_GPU_ERROR);
        assert_true(p.gpu[g].count >= 0);
        if (p.gpu[g].state != MX_GPU_OK)
            assert_int_equal(p.gpu[g].count, 0);
        printf("# %s: %s, %d device(s), %s\n", mx_topo_gpu_runtime_name((mx_gpu_runtime_t)g),
               mx_topo_gpu_state_name((mx_gpu_state_t)p.gpu[g].state), p.gpu[g].count, p.gpu[g].note);
    }
#ifndef MXEP_HAVE_CUDA
    assert_int_equal(p.gpu[MX_GPU_RT_CUDA].state, MX_GPU_NOT_BUILT);
#endif
    if (p.device_runtime < 0)
        assert_int_equal(p.device_index, -1);
    else
        assert_true(p.device_index >= 0 && p.device_index < p.gpu[p.device_runtime].count);
    char isa[256];
    printf("# %s: %d cores, %d NUMA, isa %s\n", p.cpu_model, p.cores, p.numa_nodes,
           mx_topo_isa_string(p.isa, isa, sizeof isa));
    assert_int_equal(mx_topo_probe(NULL), MX_ERR_INVALID);
}

static void test_probe_isa_matches_proc_cpuinfo_flags(void **state)
{
    (void)state;
#if !defined(__x86_64__) && !defined(__i386__)
    skip();
#endif
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f)
        skip();
    static char line[65536];
    char *flags = NULL;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "flags", 5) == 0) {
            flags = strchr(line, ':');
            break;
        }
    fclose(f);
    if (!flags)
        skip();
    flags[strcspn(flags, "\n")] = ' ';
    mx_topo_proc_t p;
    assert_int_equal(mx_topo_probe(&p), MX_OK);
    for (int i = 0; i < MX_ISA_COUNT; i++) {
        const char *name = mx_topo_isa_flag_name(1u << i);
        char pat[64];
        snprintf(pat, sizeof pat, " %s ", name);
        int in_cpuinfo = strstr(flags, pat) != NULL;
        int in_probe = (p.isa >> i) & 1;
        if (in_cpuinfo != in_probe)
            fail_msg("ISA flag %s: probe says %d, /proc/cpuinfo says %d", name, in_probe, in_cpuinfo);
    }
}

static void test_isa_string_lists_flags_and_truncates(void **state)
{
    (void)state;
    char buf[64];
    assert_string_equal(mx_topo_isa_string(MX_ISA_AVX2 | MX_ISA_FMA | MX_ISA_AMX_BF16, buf, sizeof buf),
                        "avx2,fma,amx_bf16");
    assert_string_equal(mx_topo_isa_string(0, buf, sizeof buf), "none");
    char small[8];
    mx_topo_isa_string(MX_ISA_AVX2 | MX_ISA_AVX512F, small, sizeof small);
    assert_true(strlen(small) < sizeof small);
    assert_null(mx_topo_isa_flag_name(3u));
    assert_string_equal(mx_topo_isa_flag_name(MX_ISA_AVX512BF16), "avx512_bf16");
}

static mx_topo_proc_t fake(int rank, const char *host, int local_rank, int cuda, int hip)
{
    mx_topo_proc_t p;
    memset(&p, 0, sizeof p);
    p.rank = rank;
    p.world_size = 3;
    p.local_rank = local_rank;
    p.local_size = 2;
    p.pid = 1000 + rank;
    snprintf(p.host, sizeof p.host, "%s", host);
    snprintf(p.cpu_model, sizeof p.cpu_model, "Test CPU %d", rank);
    p.isa = MX_ISA_AVX2 | MX_ISA_FMA;
    p.cores = 4;
    p.host_cpus = 8;
    p.numa_nodes = 2;
    p.numa_local = 1;
    p.memory_bytes = 1ull << 34;
    p.gpu[MX_GPU_RT_CUDA].state = cuda >= 0 ? MX_GPU_OK : MX_GPU_NO_DRIVER;
    p.gpu[MX_GPU_RT_CUDA].count = cuda >= 0 ? cuda : 0;
    snprintf(p.gpu[MX_GPU_RT_CUDA].note, sizeof p.gpu[0].note, "%s", cuda > 0 ? "NVIDIA H100" : "no driver");
    p.gpu[MX_GPU_RT_HIP].state = MX_GPU_OK;
    p.gpu[MX_GPU_RT_HIP].count = hip;
    p.gpu[MX_GPU_RT_ZE].state = MX_GPU_NOT_BUILT;
    mx_topo_bind_device(&p);
    return p;
}

static void test_apply_device_exports_the_bound_cuda_ordinal_unless_the_user_chose(void **state)
{
    (void)state;
    unsetenv("MXEP_CUDA_DEVICE");
    mx_topo_proc_t p = fake(0, "a", 5, 4, 0); /* local rank 5 of a host with 4 GPUs: device 1 */
    mx_topo_apply_device(&p);
    assert_non_null(getenv("MXEP_CUDA_DEVICE"));
    assert_string_equal(getenv("MXEP_CUDA_DEVICE"), "1");
    assert_int_equal(p.device_index, 1);
    /* the user's choice wins and the report follows it */
    setenv("MXEP_CUDA_DEVICE", "3", 1);
    p = fake(0, "a", 2, 4, 0);
    mx_topo_apply_device(&p);
    assert_string_equal(getenv("MXEP_CUDA_DEVICE"), "3");
    assert_int_equal(p.device_index, 3);
    /* a value naming no device of the host stays for the backend to refuse; the binding stays */
    setenv("MXEP_CUDA_DEVICE", "9", 1);
    p = fake(0, "a", 2, 4, 0);
    mx_topo_apply_device(&p);
    assert_string_equal(getenv("MXEP_CUDA_DEVICE"), "9");
    assert_int_equal(p.device_index, 2);
    /* no CUDA binding (HIP, or CPU only): nothing exported */
    unsetenv("MXEP_CUDA_DEVICE");
    p = fake(0, "a", 3, 0, 2);
    mx_topo_apply_device(&p);
    assert_null(getenv("MXEP_CUDA_DEVICE"));
    p = fake(0, "a", 3, -1, 0);
    mx_topo_apply_device(&p);
    assert_null(getenv("MXEP_CUDA_DEVICE"));
    mx_topo_apply_device(NULL);
}

static void test_bind_device_uses_local_rank_modulo_gpu_count(void **state)
{
    (void)state;
    mx_topo_proc_t p = fake(0, "a", 5, 4, 0);
    assert_int_equal(p.device_runtime, MX_GPU_RT_CUDA);
    assert_int_equal(p.device_index, 1);
    p = fake(0, "a", 3, 0, 2); /* no CUDA device: HIP is next */
    assert_int_equal(p.device_runtime, MX_GPU_RT_HIP);
    assert_int_equal(p.device_index, 1);
    p = fake(0, "a", 3, -1, 0);
    assert_int_equal(p.device_runtime, -1);
    assert_int_equal(p.device_index, -1);
}

static void make_table(mx_topo_cluster_t *c)
{
    mx_topo_proc_t procs[3] = {fake(0, "node-a", 0, 2, 0), fake(1, "node-b", 0, -1, 0), fake(2, "node-a", 1, 2, 0)};
    mx_topo_proc_set_backend(&procs[0], "cuda", "cuda: chosen (sm_90)\ncpu: lower priority\nref: lower priority");
    mx_topo_proc_set_backend(&procs[1], "cpu", "cuda: no device\ncpu: chosen (avx2)");
    mx_topo_proc_set_backend(&procs[2], "cuda", NULL);
    assert_int_equal(mx_topo_cluster_from(procs, 3, c), MX_OK);
}

static void test_table_numbers_hosts_and_prints_text(void **state)
{
    (void)state;
    mx_topo_cluster_t c;
    make_table(&c);
    assert_int_equal(c.n_hosts, 2);
    assert_int_equal(c.procs[0].node, 0);
    assert_int_equal(c.procs[1].node, 1);
    assert_int_equal(c.procs[2].node, 0);
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    assert_non_null(f);
    assert_int_equal(mx_topo_cluster_print(&c, f), MX_OK);
    fclose(f);
    printf("%s", text);
    assert_non_null(strstr(text, "cluster: 3 processes on 2 hosts"));
    assert_non_null(strstr(text, "node-b"));
    assert_non_null(strstr(text, "cuda:1")); /* rank 2: local rank 1 of 2 GPUs */
    assert_non_null(strstr(text, "2/0/-"));  /* cuda 2, hip 0, ze not built */
    assert_non_null(strstr(text, "nodrv/0/-"));
    assert_non_null(strstr(text, "avx2,fma"));
    assert_non_null(strstr(text, "rank 1 oracle:\n  cuda: no device\n  cpu: chosen (avx2)\n"));
    assert_null(strstr(text, "rank 2 oracle"));
    free(text);
    FILE *full = fopen("/dev/full", "w");
    if (full) {
        assert_int_equal(mx_topo_cluster_print(&c, full), MX_ERR_IO);
        fclose(full);
    }
    mx_topo_cluster_fini(&c);
    mx_topo_cluster_fini(&c);
}

static void test_table_json_round_trips_through_cjson(void **state)
{
    (void)state;
    mx_topo_cluster_t c;
    make_table(&c);
    char *json = NULL;
    assert_int_equal(mx_topo_cluster_json(&c, &json), MX_OK);
    cJSON *root = cJSON_Parse(json);
    assert_non_null(root);
    assert_int_equal(cJSON_GetObjectItem(root, "n_procs")->valueint, 3);
    assert_int_equal(cJSON_GetObjectItem(root, "n_hosts")->valueint, 2);
    cJSON *procs = cJSON_GetObjectItem(root, "procs");
    assert_int_equal(cJSON_GetArraySize(procs), 3);
    cJSON *p1 = cJSON_GetArrayItem(procs, 1), *p2 = cJSON_GetArrayItem(procs, 2);
    assert_string_equal(cJSON_GetObjectItem(p1, "host")->valuestring, "node-b");
    assert_int_equal(cJSON_GetObjectItem(p1, "node")->valueint, 1);
    cJSON *isa = cJSON_GetObjectItem(p1, "isa");
    assert_int_equal(cJSON_GetArraySize(isa), 2);
    assert_string_equal(cJSON_GetArrayItem(isa, 0)->valuestring, "avx2");
    cJSON *cuda = cJSON_GetObjectItem(cJSON_GetObjectItem(p1, "gpus"), "cuda");
    assert_string_equal(cJSON_GetObjectItem(cuda, "state")->valuestring, "no driver");
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(cJSON_GetObjectItem(p1, "device"), "runtime")));
    assert_int_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(p1, "device"), "index")->valueint, -1);
    assert_string_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(p2, "device"), "runtime")->valuestring, "cuda");
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(p1, "backend_report")), 2);
    assert_string_equal(cJSON_GetObjectItem(p1, "backend")->valuestring, "cpu");
    assert_string_equal(
        cJSON_GetObjectItem(cJSON_GetObjectItem(cJSON_GetObjectItem(p1, "gpus"), "ze"), "state")->valuestring,
        "not built");
    assert_true(cJSON_GetObjectItem(p1, "memory_bytes")->valuedouble == 17179869184.0);
    cJSON_Delete(root);
    free(json);
    mx_topo_cluster_fini(&c);
}

static void test_table_rejects_bad_arguments(void **state)
{
    (void)state;
    mx_topo_cluster_t c = {7, 7, NULL};
    mx_topo_proc_t p;
    memset(&p, 0, sizeof p);
    assert_int_equal(mx_topo_cluster_from(&p, 0, &c), MX_ERR_INVALID);
    assert_int_equal(c.n_procs, 7); /* untouched */
    char *json = (char *)"untouched";
    assert_int_equal(mx_topo_cluster_json(NULL, &json), MX_ERR_INVALID);
    assert_string_equal(json, "untouched");
    assert_int_equal(mx_topo_cluster_print(NULL, stdout), MX_ERR_INVALID);
}

static void test_strings_from_the_wire_are_terminated(void **state)
{
    (void)state;
    mx_topo_proc_t p;
    memset(&p, 'x', sizeof p); /* a record with no NUL anywhere, as a broken peer might send */
    p.isa = 0;
    for (int g = 0; g < MX_GPU_RT_COUNT; g++)
        p.gpu[g].state = MX_GPU_NOT_BUILT;
    p.device_runtime = -1;
    mx_topo_cluster_t c;
    assert_int_equal(mx_topo_cluster_from(&p, 1, &c), MX_OK);
    assert_int_equal(strlen(c.procs[0].host), MX_TOPO_HOST_MAX - 1);
    char *json = NULL;
    assert_int_equal(mx_topo_cluster_json(&c, &json), MX_OK);
    free(json);
    mx_topo_cluster_fini(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_probe_fills_sane_values),
        cmocka_unit_test(test_probe_isa_matches_proc_cpuinfo_flags),
        cmocka_unit_test(test_isa_string_lists_flags_and_truncates),
        cmocka_unit_test(test_bind_device_uses_local_rank_modulo_gpu_count),
        cmocka_unit_test(test_table_numbers_hosts_and_prints_text),
        cmocka_unit_test(test_table_json_round_trips_through_cjson),
        cmocka_unit_test(test_table_rejects_bad_arguments),
        cmocka_unit_test(test_strings_from_the_wire_are_terminated),
        cmocka_unit_test(test_apply_device_exports_the_bound_cuda_ordinal_unless_the_user_chose),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
