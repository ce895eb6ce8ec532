/* topology/cluster.c: local rank and device binding over MPI, the cluster
 * table (MPI_Allgather of fixed-size records), and its text / JSON printers. */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "mxep/topology.h"

static mx_status_t mpi_fail(const char *call, int rc)
{
    char msg[MPI_MAX_ERROR_STRING] = "";
    int len = 0;
    if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS)
        msg[0] = '\0';
    return mx_error_set(MX_ERR_TRANSPORT, "topology: %s failed (%s)", call, msg);
}

mx_status_t mx_topo_locate(MPI_Comm comm, mx_topo_proc_t *proc)
{
    if (!proc)
        return mx_error_set(MX_ERR_INVALID, "topology locate: NULL process record");
    int rank, size, rc;
    if ((rc = MPI_Comm_rank(comm, &rank)) != MPI_SUCCESS)
        return mpi_fail("MPI_Comm_rank", rc);
    if ((rc = MPI_Comm_size(comm, &size)) != MPI_SUCCESS)
        return mpi_fail("MPI_Comm_size", rc);
    MPI_Comm local;
    if ((rc = MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &local)) != MPI_SUCCESS)
        return mpi_fail("MPI_Comm_split_type(MPI_COMM_TYPE_SHARED)", rc);
    int lrank, lsize;
    rc = MPI_Comm_rank(local, &lrank);
    if (rc == MPI_SUCCESS)
        rc = MPI_Comm_size(local, &lsize);
    MPI_Comm_free(&local);
    if (rc != MPI_SUCCESS)
        return mpi_fail("MPI_Comm_rank/size on the shared-memory communicator", rc);
    proc->rank = rank;
    proc->world_size = size;
    proc->local_rank = lrank;
    proc->local_size = lsize;
    mx_topo_bind_device(proc);
    return MX_OK;
}

static void number_hosts(mx_topo_cluster_t *c)
{
    c->n_hosts = 0;
    for (int i = 0; i < c->n_procs; i++) {
        int node = -1;
        for (int j = 0; j < i; j++)
            if (strncmp(c->procs[j].host, c->procs[i].host, MX_TOPO_HOST_MAX) == 0) {
                node = c->procs[j].node;
                break;
            }
        if (node < 0)
            node = c->n_hosts++;
        c->procs[i].node = node;
    }
}

static void terminate_strings(mx_topo_proc_t *p)
{
    p->host[MX_TOPO_HOST_MAX - 1] = '\0';
    p->cpu_model[MX_TOPO_CPU_MAX - 1] = '\0';
    p->backend[MX_TOPO_BACKEND_MAX - 1] = '\0';
    p->backend_report[MX_TOPO_REPORT_MAX - 1] = '\0';
    for (int g = 0; g < MX_GPU_RT_COUNT; g++)
        p->gpu[g].note[sizeof p->gpu[g].note - 1] = '\0';
}

mx_status_t mx_topo_cluster_from(const mx_topo_proc_t *procs, int n_procs, mx_topo_cluster_t *cluster_p)
{
    if (!procs || n_procs < 1 || !cluster_p)
        return mx_error_set(MX_ERR_INVALID, "topology table: NULL records or %d processes (expected >= 1)", n_procs);
    mx_topo_cluster_t c;
    c.n_procs = n_procs;
    c.procs = malloc((size_t)n_procs * sizeof *c.procs);
    if (!c.procs)
        return mx_error_set(MX_ERR_NOMEM, "topology table: cannot allocate %d records", n_procs);
    memcpy(c.procs, procs, (size_t)n_procs * sizeof *c.procs);
    for (int i = 0; i < n_procs; i++)
        terminate_strings(&c.procs[i]);
    number_hosts(&c);
    *cluster_p = c;
    return MX_OK;
}

mx_status_t mx_topo_gather(MPI_Comm comm, const mx_topo_proc_t *local, mx_topo_cluster_t *cluster_p)
{
    if (!local || !cluster_p)
        return mx_error_set(MX_ERR_INVALID, "topology gather: NULL argument");
    int size, rc;
    if ((rc = MPI_Comm_size(comm, &size)) != MPI_SUCCESS)
        return mpi_fail("MPI_Comm_size", rc);
    mx_topo_cluster_t c;
    c.n_procs = size;
    c.procs = malloc((size_t)size * sizeof *c.procs);
    /* A rank that cannot allocate returns without entering the collective:
     * the caller must end the job (MPI_Abort), as for any start-up failure. */
    if (!c.procs)
        return mx_error_set(MX_ERR_NOMEM, "topology gather: cannot allocate %d records", size);
    rc = MPI_Allgather(local, (int)sizeof *local, MPI_BYTE, c.procs, (int)sizeof *local, MPI_BYTE, comm);
    if (rc != MPI_SUCCESS) {
        free(c.procs);
        return mpi_fail("MPI_Allgather of the topology records", rc);
    }
    for (int i = 0; i < size; i++)
        terminate_strings(&c.procs[i]);
    number_hosts(&c);
    *cluster_p = c;
    return MX_OK;
}

void mx_topo_cluster_fini(mx_topo_cluster_t *c)
{
    if (!c)
        return;
    free(c->procs);
    c->procs = NULL;
    c->n_procs = 0;
    c->n_hosts = 0;
}

static void gpu_cell(const mx_topo_proc_t *p, char *buf, size_t cap)
{
    size_t n = 0;
    buf[0] = '\0';
    for (int g = 0; g < MX_GPU_RT_COUNT; g++) {
        const mx_topo_gpu_t *x = &p->gpu[g];
        char v[16];
        if (x->state == MX_GPU_OK)
            snprintf(v, sizeof v, "%d", x->count);
        else if (x->state == MX_GPU_NOT_BUILT)
            snprintf(v, sizeof v, "-");
        else if (x->state == MX_GPU_NO_DRIVER)
            snprintf(v, sizeof v, "nodrv");
        else
            snprintf(v, sizeof v, "err");
        int w = snprintf(buf + n, cap - n, "%s%s", g ? "/" : "", v);
        if (w < 0 || (size_t)w >= cap - n)
            return;
        n += (size_t)w;
    }
}

mx_status_t mx_topo_cluster_print(const mx_topo_cluster_t *c, FILE *out)
{
    if (!c || !out || (c->n_procs > 0 && !c->procs))
        return mx_error_set(MX_ERR_INVALID, "topology print: NULL argument");
    int ok = fprintf(out, "cluster: %d process%s on %d host%s\n", c->n_procs, c->n_procs == 1 ? "" : "es", c->n_hosts,
                     c->n_hosts == 1 ? "" : "s") >= 0;
    ok = ok && fprintf(out, "%4s  %-20s %4s %5s %5s %4s  %-40s %-13s %-8s %s\n", "rank", "host", "node", "local",
                       "cores", "numa", "isa", "gpu cu/hip/ze", "device", "backend") >= 0;
    int any_report = 0;
    for (int i = 0; ok && i < c->n_procs; i++) {
        const mx_topo_proc_t *p = &c->procs[i];
        char isa[160], gpus[48], dev[24], local[16], numa[16];
        mx_topo_isa_string(p->isa, isa, sizeof isa);
        gpu_cell(p, gpus, sizeof gpus);
        if (p->device_runtime >= 0)
            snprintf(dev, sizeof dev, "%s:%d", mx_topo_gpu_runtime_name((mx_gpu_runtime_t)p->device_runtime),
                     p->device_index);
        else
            snprintf(dev, sizeof dev, "cpu");
        snprintf(local, sizeof local, "%d/%d", p->local_rank, p->local_size);
        snprintf(numa, sizeof numa, "%d/%d", p->numa_local, p->numa_nodes);
        ok = fprintf(out, "%4d  %-20.64s %4d %5s %5d %4s  %-40s %-13s %-8s %s\n", p->rank, p->host, p->node, local,
                     p->cores, numa, isa, gpus, dev, p->backend[0] ? p->backend : "-") >= 0;
        if (p->backend_report[0])
            any_report = 1;
    }
    if (ok && c->n_procs > 0)
        ok = fprintf(out, "cpu (rank 0): %s\n", c->procs[0].cpu_model) >= 0;
    for (int i = 0; ok && any_report && i < c->n_procs; i++) {
        const mx_topo_proc_t *p = &c->procs[i];
        if (!p->backend_report[0])
            continue;
        ok = fprintf(out, "rank %d oracle:\n", p->rank) >= 0;
        const char *s = p->backend_report;
        while (ok && *s) {
            size_t len = strcspn(s, "\n");
            if (len)
                ok = fprintf(out, "  %.*s\n", (int)len, s) >= 0;
            s += len;
            if (*s == '\n')
                s++;
        }
    }
    if (ok)
        ok = fflush(out) == 0;
    return ok ? MX_OK : mx_error_set(MX_ERR_IO, "topology print: write failed");
}

static cJSON *proc_json(const mx_topo_proc_t *p)
{
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return NULL;
    int ok = cJSON_AddNumberToObject(o, "rank", p->rank) && cJSON_AddStringToObject(o, "host", p->host) &&
             cJSON_AddNumberToObject(o, "node", p->node) && cJSON_AddNumberToObject(o, "local_rank", p->local_rank) &&
             cJSON_AddNumberToObject(o, "local_size", p->local_size) && cJSON_AddNumberToObject(o, "pid", p->pid) &&
             cJSON_AddStringToObject(o, "cpu_model", p->cpu_model);
    cJSON *isa = ok ? cJSON_AddArrayToObject(o, "isa") : NULL;
    ok = isa != NULL;
    for (int i = 0; ok && i < MX_ISA_COUNT; i++)
        if (p->isa & (1u << i)) {
            cJSON *s = cJSON_CreateString(mx_topo_isa_flag_name(1u << i));
            ok = s != NULL;
            if (ok)
                cJSON_AddItemToArray(isa, s);
        }
    ok = ok && cJSON_AddNumberToObject(o, "cores", p->cores) && cJSON_AddNumberToObject(o, "host_cpus", p->host_cpus) &&
         cJSON_AddNumberToObject(o, "numa_nodes", p->numa_nodes) &&
         cJSON_AddNumberToObject(o, "numa_local", p->numa_local) &&
         cJSON_AddNumberToObject(o, "memory_bytes", (double)p->memory_bytes);
    cJSON *gpus = ok ? cJSON_AddObjectToObject(o, "gpus") : NULL;
    ok = gpus != NULL;
    for (int g = 0; ok && g < MX_GPU_RT_COUNT; g++) {
        cJSON *x = cJSON_AddObjectToObject(gpus, mx_topo_gpu_runtime_name((mx_gpu_runtime_t)g));
        ok = x && cJSON_AddStringToObject(x, "state", mx_topo_gpu_state_name((mx_gpu_state_t)p->gpu[g].state)) &&
             cJSON_AddNumberToObject(x, "count", p->gpu[g].count) && cJSON_AddStringToObject(x, "note", p->gpu[g].note);
    }
    cJSON *dev = ok ? cJSON_AddObjectToObject(o, "device") : NULL;
    ok = dev != NULL;
    if (ok) {
        if (p->device_runtime >= 0)
            ok = cJSON_AddStringToObject(dev, "runtime",
                                         mx_topo_gpu_runtime_name((mx_gpu_runtime_t)p->device_runtime)) != NULL;
        else
            ok = cJSON_AddNullToObject(dev, "runtime") != NULL;
        ok = ok && cJSON_AddNumberToObject(dev, "index", p->device_index);
    }
    ok = ok && cJSON_AddStringToObject(o, "backend", p->backend);
    cJSON *rep = ok ? cJSON_AddArrayToObject(o, "backend_report") : NULL;
    ok = rep != NULL;
    const char *s = p->backend_report;
    while (ok && *s) {
        size_t len = strcspn(s, "\n");
        if (len) {
            char line[MX_TOPO_REPORT_MAX];
            memcpy(line, s, len);
            line[len] = '\0';
            cJSON *l = cJSON_CreateString(line);
            ok = l != NULL;
            if (ok)
                cJSON_AddItemToArray(rep, l);
        }
        s += len;
        if (*s == '\n')
            s++;
    }
    if (!ok) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

mx_status_t mx_topo_cluster_json(const mx_topo_cluster_t *c, char **json_p)
{
    if (!c || !json_p || (c->n_procs > 0 && !c->procs))
        return mx_error_set(MX_ERR_INVALID, "topology json: NULL argument");
    cJSON *root = cJSON_CreateObject();
    int ok = root && cJSON_AddNumberToObject(root, "n_procs", c->n_procs) &&
             cJSON_AddNumberToObject(root, "n_hosts", c->n_hosts);
    cJSON *arr = ok ? cJSON_AddArrayToObject(root, "procs") : NULL;
    ok = arr != NULL;
    for (int i = 0; ok && i < c->n_procs; i++) {
        cJSON *p = proc_json(&c->procs[i]);
        ok = p != NULL;
        if (ok)
            cJSON_AddItemToArray(arr, p);
    }
    char *text = ok ? cJSON_Print(root) : NULL;
    cJSON_Delete(root);
    if (!text)
        return mx_error_set(MX_ERR_NOMEM, "topology json: out of memory");
    *json_p = text;
    return MX_OK;
}
