/* mxep transport/: the generic handle over a mx_transport_ops_t. */
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "mxep/transport.h"

struct mx_transport {
    const mx_transport_ops_t *ops;
    void *ctx;
    int rank, size;
    mx_transport_stats_t st; /* calls and totals; the phases live in the implementation */
};

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

const char *mx_exchange_mode_name(mx_exchange_mode_t mode)
{
    switch (mode) {
    case MX_EXCHANGE_AUTO:
        return "auto";
    case MX_EXCHANGE_ALLTOALLV:
        return "alltoallv";
    case MX_EXCHANGE_SHM:
        return "shm";
    }
    return "unknown";
}

mx_status_t mx_exchange_mode_parse(const char *text, mx_exchange_mode_t *mode_p)
{
    if (!text || !mode_p)
        return mx_error_set(MX_ERR_INVALID, "exchange mode: NULL argument");
    static const mx_exchange_mode_t all[] = {MX_EXCHANGE_AUTO, MX_EXCHANGE_ALLTOALLV, MX_EXCHANGE_SHM};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        if (strcasecmp(text, mx_exchange_mode_name(all[i])) == 0) {
            *mode_p = all[i];
            return MX_OK;
        }
    }
    return mx_error_set(MX_ERR_INVALID, "exchange mode '%s': expected auto, alltoallv or shm", text);
}

const mx_transport_ops_t *mx_transport_find(const char *name)
{
    if (!name)
        return NULL;
    if (strcmp(name, "mpi") == 0)
        return mx_transport_mpi_ops();
    return NULL;
}

mx_status_t mx_transport_create(const mx_transport_ops_t *ops, MPI_Comm comm, const mx_transport_opts_t *opts,
                                mx_transport_h *t_p)
{
    if (!ops || !t_p || comm == MPI_COMM_NULL)
        return mx_error_set(MX_ERR_INVALID, "mx_transport_create: NULL ops, output or communicator");
    int rank = 0, size = 0;
    if (MPI_Comm_rank(comm, &rank) != MPI_SUCCESS || MPI_Comm_size(comm, &size) != MPI_SUCCESS)
        return mx_error_set(MX_ERR_TRANSPORT, "mx_transport_create: MPI_Comm_rank/size failed");
    struct mx_transport *t = calloc(1, sizeof *t);
    if (!t)
        return mx_error_set(MX_ERR_NOMEM, "mx_transport_create: out of memory");
    mx_transport_opts_t def = {.mode = MX_EXCHANGE_AUTO};
    mx_status_t st = ops->create(comm, opts ? opts : &def, &t->ctx);
    if (st != MX_OK) {
        free(t);
        return st;
    }
    t->ops = ops;
    t->rank = rank;
    t->size = size;
    *t_p = t;
    return MX_OK;
}

void mx_transport_destroy(mx_transport_h t)
{
    if (!t)
        return;
    t->ops->destroy(t->ctx);
    free(t);
}

mx_status_t mx_transport_exchange_counts(mx_transport_h t, const size_t *send_counts, size_t *recv_counts_p)
{
    if (!t || !send_counts || !recv_counts_p)
        return mx_error_set(MX_ERR_INVALID, "mx_transport_exchange_counts: NULL argument");
    double t0 = now_ms();
    mx_status_t st = t->ops->exchange_counts(t->ctx, send_counts, recv_counts_p);
    t->st.counts++;
    t->st.counts_ms += now_ms() - t0;
    return st;
}

mx_status_t mx_transport_exchange(mx_transport_h t, const void *send, const size_t *send_counts,
                                  const size_t *send_displs, const size_t *recv_counts, const uint8_t **recv_p,
                                  size_t *recv_displs_p)
{
    if (!t || !send_counts || !send_displs || !recv_counts || !recv_p || !recv_displs_p)
        return mx_error_set(MX_ERR_INVALID, "mx_transport_exchange: NULL argument");
    double t0 = now_ms();
    mx_status_t st = t->ops->exchange(t->ctx, send, send_counts, send_displs, recv_counts, recv_p, recv_displs_p);
    t->st.exchanges++;
    t->st.total_ms += now_ms() - t0;
    return st;
}

void mx_transport_stats(mx_transport_h t, mx_transport_stats_t *stats_p, int reset)
{
    if (!t)
        return;
    if (stats_p) {
        *stats_p = t->st;
        stats_p->arrive_ms = stats_p->copy_ms = stats_p->remote_ms = stats_p->depart_ms = 0;
        stats_p->local_bytes = stats_p->remote_bytes = 0;
    }
    if (t->ops->phases)
        t->ops->phases(t->ctx, stats_p, reset);
    if (reset)
        memset(&t->st, 0, sizeof t->st);
}

int mx_transport_rank(const mx_transport_h t)
{
    return t ? t->rank : -1;
}
int mx_transport_size(const mx_transport_h t)
{
    return t ? t->size : 0;
}
const char *mx_transport_name(const mx_transport_h t)
{
    return t ? t->ops->name : "";
}
const char *mx_transport_path(const mx_transport_h t)
{
    return t ? t->ops->path(t->ctx) : "";
}
