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
    /* zero-copy rounds: the staging path (transports without them, or
     * handles that do not do them natively) */
    int native;            /* ops->zero_copy(ctx) */
    int open;              /* 0, or the round begun and not ended: 1 push, 2 pull */
    uint8_t *stage;        /* the bytes to send */
    size_t stage_cap;
    size_t *sc, *sd, *rc;  /* [size] the round's counts and displacements */
    size_t *rd;            /* [size] pull: receive displacements */
    const uint8_t *precv;  /* pull: what exchange() received */
    mx_status_t begin_st;  /* what the round's begin returned */
    mx_host_hooks_t hooks; /* mx_transport_set_host_hooks (on_alloc NULL: none) */
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
    t->sc = calloc((size_t)size, sizeof(size_t));
    t->sd = calloc((size_t)size, sizeof(size_t));
    t->rc = calloc((size_t)size, sizeof(size_t));
    t->rd = calloc((size_t)size, sizeof(size_t));
    if (!t->sc || !t->sd || !t->rc || !t->rd) {
        mx_transport_destroy(t);
        return mx_error_set(MX_ERR_NOMEM, "mx_transport_create: out of memory");
    }
    t->native = ops->zero_copy && ops->push_begin && ops->push_end && ops->pull_begin && ops->pull_end &&
                ops->zero_copy(t->ctx);
    *t_p = t;
    return MX_OK;
}

void mx_transport_destroy(mx_transport_h t)
{
    if (!t)
        return;
    if (t->ctx)
        t->ops->destroy(t->ctx);
    if (t->stage && t->hooks.on_free)
        t->hooks.on_free(t->hooks.ctx, t->stage);
    free(t->stage);
    free(t->sc);
    free(t->sd);
    free(t->rc);
    free(t->rd);
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

/* ---------------------------------------------------------------- zero-copy rounds */

static mx_status_t stage_grow(mx_transport_h t, size_t bytes)
{
    if (bytes <= t->stage_cap)
        return MX_OK;
    size_t cap = bytes + bytes / 4 + 64;
    uint8_t *p = malloc(cap); /* the old bytes are not needed: a round fills the buffer anew */
    if (!p)
        return mx_error_set(MX_ERR_NOMEM, "transport: out of memory for %zu staging bytes", cap);
    if (t->stage && t->hooks.on_free)
        t->hooks.on_free(t->hooks.ctx, t->stage);
    free(t->stage);
    t->stage = p;
    t->stage_cap = cap;
    if (t->hooks.on_alloc)
        t->hooks.on_alloc(t->hooks.ctx, p, cap);
    return MX_OK;
}

void mx_transport_set_host_hooks(mx_transport_h t, const mx_host_hooks_t *hooks)
{
    if (!t || !hooks || !hooks->on_alloc || !hooks->on_free || t->hooks.on_alloc)
        return;
    t->hooks = *hooks;
    if (t->stage)
        hooks->on_alloc(hooks->ctx, t->stage, t->stage_cap);
    if (t->ops->set_host_hooks)
        t->ops->set_host_hooks(t->ctx, hooks);
}

int mx_transport_zero_copy(const mx_transport_h t)
{
    return t ? t->native : 0;
}

/* A round's begin: a failure (bad arguments, no staging memory) still opens
 * the round, with nothing to send, so that the end's collectives match the
 * peers'. A native end knows by itself when it has nothing collective left
 * (its window gone). */
static void round_open(mx_transport_h t, int kind, mx_status_t st)
{
    t->open = kind;
    t->begin_st = st;
}

mx_status_t mx_transport_push_begin(mx_transport_h t, const size_t *send_counts, const size_t *recv_counts,
                                    uint8_t **dst_p)
{
    if (!t || !send_counts || !recv_counts || !dst_p)
        return mx_error_set(MX_ERR_INVALID, "mx_transport_push_begin: NULL argument");
    if (t->open)
        return mx_error_set(MX_ERR_INVALID, "mx_transport_push_begin: the previous %s round was not ended",
                            t->open == 1 ? "push" : "pull");
    double t0 = now_ms();
    mx_status_t st = MX_OK;
    if (t->native) {
        st = t->ops->push_begin(t->ctx, send_counts, recv_counts, dst_p);
    } else {
        size_t total = 0;
        for (int r = 0; r < t->size; r++) {
            t->sd[r] = total;
            total += send_counts[r];
        }
        st = stage_grow(t, total ? total : 1);
        for (int r = 0; r < t->size; r++) {
            t->sc[r] = st == MX_OK ? send_counts[r] : 0;
            t->rc[r] = recv_counts[r];
            dst_p[r] = st == MX_OK && send_counts[r] ? t->stage + t->sd[r] : NULL;
        }
    }
    t->st.total_ms += now_ms() - t0;
    round_open(t, 1, st);
    return st;
}

mx_status_t mx_transport_push_end(mx_transport_h t, const uint8_t **recv_p, size_t *recv_displs_p)
{
    if (!t || !recv_p || !recv_displs_p)
        return mx_error_set(MX_ERR_INVALID, "mx_transport_push_end: NULL argument");
    if (t->open != 1)
        return mx_error_set(MX_ERR_INVALID, "mx_transport_push_end: no push round is open");
    t->open = 0;
    double t0 = now_ms();
    mx_status_t st;
    if (t->native)
        st = t->ops->push_end(t->ctx, recv_p, recv_displs_p);
    else
        st = t->ops->exchange(t->ctx, t->stage ? t->stage : (const uint8_t *)"", t->sc, t->sd, t->rc, recv_p,
                              recv_displs_p);
    t->st.exchanges++;
    t->st.total_ms += now_ms() - t0;
    return t->begin_st != MX_OK ? t->begin_st : st;
}

mx_status_t mx_transport_pull_begin(mx_transport_h t, size_t bytes, const size_t *send_counts,
                                    const size_t *send_displs, const size_t *recv_counts, uint8_t **buf_p)
{
    if (!t || !send_counts || !send_displs || !recv_counts || !buf_p)
        return mx_error_set(MX_ERR_INVALID, "mx_transport_pull_begin: NULL argument");
    if (t->open)
        return mx_error_set(MX_ERR_INVALID, "mx_transport_pull_begin: the previous %s round was not ended",
                            t->open == 1 ? "push" : "pull");
    mx_status_t st = MX_OK;
    for (int r = 0; r < t->size && st == MX_OK; r++)
        if (send_counts[r] && (send_displs[r] > bytes || send_counts[r] > bytes - send_displs[r]))
            st = mx_error_set(MX_ERR_INVALID,
                              "mx_transport_pull_begin: the %zu bytes for rank %d at %zu lie outside the %zu-byte "
                              "buffer",
                              send_counts[r], r, send_displs[r], bytes);
    double t0 = now_ms();
    if (t->native) {
        /* bad pieces: the round still runs, this rank offering nothing */
        const size_t *sc = send_counts;
        if (st != MX_OK) {
            memset(t->sc, 0, (size_t)t->size * sizeof(size_t));
            sc = t->sc;
        }
        mx_status_t s2 = t->ops->pull_begin(t->ctx, bytes, sc, send_displs, recv_counts, buf_p);
        if (st == MX_OK)
            st = s2;
    } else {
        if (st == MX_OK)
            st = stage_grow(t, bytes ? bytes : 1);
        *buf_p = st == MX_OK ? t->stage : NULL;
        for (int r = 0; r < t->size; r++) {
            t->sc[r] = st == MX_OK ? send_counts[r] : 0;
            t->sd[r] = st == MX_OK ? send_displs[r] : 0;
            t->rc[r] = recv_counts[r];
        }
    }
    t->st.total_ms += now_ms() - t0;
    round_open(t, 2, st);
    return st;
}

mx_status_t mx_transport_pull_end(mx_transport_h t, const uint8_t **src_p)
{
    if (!t || !src_p)
        return mx_error_set(MX_ERR_INVALID, "mx_transport_pull_end: NULL argument");
    if (t->open != 2)
        return mx_error_set(MX_ERR_INVALID, "mx_transport_pull_end: no pull round is open");
    t->open = 0;
    double t0 = now_ms();
    mx_status_t st;
    if (t->native) {
        st = t->ops->pull_end(t->ctx, src_p);
    } else {
        st = t->ops->exchange(t->ctx, t->stage ? t->stage : (const uint8_t *)"", t->sc, t->sd, t->rc, &t->precv,
                              t->rd);
        for (int r = 0; r < t->size; r++)
            src_p[r] = st == MX_OK && t->rc[r] ? t->precv + t->rd[r] : NULL;
    }
    t->st.exchanges++;
    t->st.total_ms += now_ms() - t0;
    return t->begin_st != MX_OK ? t->begin_st : st;
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
