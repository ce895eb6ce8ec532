/* mxep transport/ucx: UCP tagged sends and receives (see transport_ucx.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <ucp/api/ucp.h>

#include "mxep/log.h"
#include "transport_ucx.h"

#define ALIGN 64u
#define TAG_MASK_ALL ((ucp_tag_t)-1)
enum { KIND_COUNTS = 1, KIND_DATA = 2 };

typedef struct {
    MPI_Comm comm;
    int rank, size;
    ucp_context_h context;
    ucp_worker_h worker;
    ucp_ep_h *eps; /* [size], NULL for self */
    uint32_t seq;
    uint8_t *buf;
    size_t cap;
    double timeout_s;
    char path[256];
} ucx_ctx_t;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static ucp_tag_t make_tag(uint32_t seq, int kind, int src)
{
    return ((ucp_tag_t)seq << 32) | ((ucp_tag_t)(unsigned)kind << 24) | (ucp_tag_t)((unsigned)src & 0xffffffu);
}

static mx_status_t ucx_fail(ucs_status_t s, const char *what)
{
    return mx_error_set(MX_ERR_TRANSPORT, "transport ucx: %s failed: %s", what, ucs_status_string(s));
}

/* Every rank learns whether every rank succeeded (no rank is left waiting). */
static mx_status_t agree(MPI_Comm comm, mx_status_t st, const char *what)
{
    int mine = st == MX_OK ? 0 : 1, any = 0;
    if (MPI_Allreduce(&mine, &any, 1, MPI_INT, MPI_MAX, comm) != MPI_SUCCESS)
        return mx_error_set(MX_ERR_TRANSPORT, "transport ucx: MPI_Allreduce failed while %s", what);
    if (any && st == MX_OK)
        return mx_error_set(MX_ERR_TRANSPORT, "transport ucx: another rank failed while %s", what);
    return st;
}

/* A non-blocking barrier that keeps the UCP worker progressing meanwhile. */
static void progress_barrier(ucx_ctx_t *c)
{
    MPI_Request r;
    if (MPI_Ibarrier(c->comm, &r) != MPI_SUCCESS)
        return;
    int done = 0;
    while (!done) {
        ucp_worker_progress(c->worker);
        MPI_Test(&r, &done, MPI_STATUS_IGNORE);
    }
}

/* Waits for n requests (NULL entries = completed at once). On error or
 * timeout the pending ones are cancelled and waited for, so no receive is
 * left pointing at a buffer. */
static mx_status_t wait_all(ucx_ctx_t *c, void **reqs, int n, const char *what, int cancel_now)
{
    mx_status_t st = MX_OK;
    double deadline = now_s() + c->timeout_s;
    int pending = 0;
    for (int i = 0; i < n; i++)
        pending += reqs[i] != NULL;
    int cancelled = 0;
    unsigned spins = 0;
    if (cancel_now) { /* posting failed half-way: take back what was posted */
        for (int i = 0; i < n; i++)
            if (reqs[i])
                ucp_request_cancel(c->worker, reqs[i]);
        cancelled = 1;
    }
    while (pending) {
        ucp_worker_progress(c->worker);
        for (int i = 0; i < n; i++) {
            if (!reqs[i])
                continue;
            ucs_status_t s = ucp_request_check_status(reqs[i]);
            if (s == UCS_INPROGRESS)
                continue;
            if (s != UCS_OK && st == MX_OK && !(cancelled && s == UCS_ERR_CANCELED))
                st = ucx_fail(s, what);
            ucp_request_free(reqs[i]);
            reqs[i] = NULL;
            pending--;
        }
        if (pending && !cancelled && (st != MX_OK || ((++spins & 1023u) == 0 && now_s() > deadline))) {
            if (st == MX_OK)
                st = mx_error_set(MX_ERR_TIMEOUT,
                                  "transport ucx: %s: %d transfer(s) with peers unfinished after %.0f s "
                                  "(a rank stopped answering; MXEP_UCX_TIMEOUT_S sets the limit)",
                                  what, pending, c->timeout_s);
            for (int i = 0; i < n; i++)
                if (reqs[i])
                    ucp_request_cancel(c->worker, reqs[i]);
            cancelled = 1;
        }
    }
    return st;
}

static void *post_recv(ucx_ctx_t *c, void *buf, size_t len, ucp_tag_t tag, mx_status_t *st)
{
    ucp_request_param_t p;
    memset(&p, 0, sizeof p);
    p.op_attr_mask = UCP_OP_ATTR_FIELD_DATATYPE;
    p.datatype = ucp_dt_make_contig(1);
    ucs_status_ptr_t r = ucp_tag_recv_nbx(c->worker, buf, len, tag, TAG_MASK_ALL, &p);
    if (UCS_PTR_IS_ERR(r)) {
        *st = ucx_fail(UCS_PTR_STATUS(r), "ucp_tag_recv_nbx");
        return NULL;
    }
    return r;
}

static void *post_send(ucx_ctx_t *c, int dst, const void *buf, size_t len, ucp_tag_t tag, mx_status_t *st)
{
    ucp_request_param_t p;
    memset(&p, 0, sizeof p);
    p.op_attr_mask = UCP_OP_ATTR_FIELD_DATATYPE;
    p.datatype = ucp_dt_make_contig(1);
    ucs_status_ptr_t r = ucp_tag_send_nbx(c->eps[dst], buf, len, tag, &p);
    if (UCS_PTR_IS_ERR(r)) {
        *st = mx_error_set(MX_ERR_TRANSPORT, "transport ucx: send of %zu bytes to rank %d failed: %s", len, dst,
                           ucs_status_string(UCS_PTR_STATUS(r)));
        return NULL;
    }
    return r; /* NULL: completed in place */
}

/* "sysv/memory,cma/memory,tcp/eth0": the transports/devices of the lanes UCX
 * chose for data to the peers (eager and rendezvous), from ucp_ep_print_info
 * (UCX 1.13 has no query for it). */
static void describe_path(ucx_ctx_t *c)
{
    char seen[240] = "";
    for (int p = 0; p < c->size; p++) {
        if (!c->eps[p])
            continue;
        char *text = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&text, &len);
        if (!f)
            break;
        ucp_ep_print_info(c->eps[p], f);
        fclose(f);
        /* lines like "#   lane[1]:  5:cma/memory.0 md[4]   -> md[4]/cma/sysdev[255] rma_bw#0" */
        for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
            char *lane = strstr(line, "lane[");
            /* lanes that carry data: active messages (eager tag), rma (rendezvous), tag offload */
            if (!lane || !(strstr(line, " am") || strstr(line, "rma") || strstr(line, "tag")))
                continue;
            char *colon = strchr(lane, ':');
            if (!colon)
                continue;
            char *tl = strchr(colon + 1, ':');
            if (!tl)
                continue;
            tl++;
            char name[64];
            size_t k = 0;
            while (tl[k] && tl[k] != ' ' && k + 1 < sizeof name) {
                name[k] = tl[k];
                k++;
            }
            name[k] = '\0';
            char *dot = strrchr(name, '.');
            if (dot && strchr(name, '/') && dot > strchr(name, '/'))
                *dot = '\0'; /* "memory.0" -> "memory" (path index) */
            char probe[80];
            snprintf(probe, sizeof probe, ",%s,", name);
            char wrapped[260];
            snprintf(wrapped, sizeof wrapped, ",%s,", seen);
            if (k && !strstr(wrapped, probe) && strlen(seen) + k + 2 < sizeof seen) {
                if (*seen)
                    strcat(seen, ",");
                strcat(seen, name);
            }
        }
        free(text);
    }
    snprintf(c->path, sizeof c->path, "ucx:%s", *seen ? seen : (c->size == 1 ? "self" : "unknown"));
}

static void ucx_destroy(void *ctx);

static mx_status_t ucx_create(MPI_Comm comm, const mx_transport_opts_t *opts, void **ctx_p)
{
    if (!ctx_p)
        return mx_error_set(MX_ERR_INVALID, "transport ucx: ctx_p is NULL");
    mx_status_t st = MX_OK;
    ucx_ctx_t *c = calloc(1, sizeof *c);
    if (!c)
        return mx_error_set(MX_ERR_NOMEM, "transport ucx: out of memory");
    c->comm = MPI_COMM_NULL;
    if (MPI_Comm_dup(comm, &c->comm) != MPI_SUCCESS) {
        free(c);
        return mx_error_set(MX_ERR_TRANSPORT, "transport ucx: MPI_Comm_dup failed");
    }
    MPI_Comm_rank(c->comm, &c->rank);
    MPI_Comm_size(c->comm, &c->size);
    c->timeout_s = 300.0;
    const char *t = getenv("MXEP_UCX_TIMEOUT_S");
    if (t && *t) {
        char *end = NULL;
        double v = strtod(t, &end);
        if (end && !*end && v > 0)
            c->timeout_s = v;
        else
            MX_LOG_W("transport", "MXEP_UCX_TIMEOUT_S='%s': expected seconds > 0; using %.0f", t, c->timeout_s);
    }
    if (opts && opts->mode == MX_EXCHANGE_SHM)
        MX_LOG_D("transport", "ucx: exchange mode shm is the MPI transport's; UCX chooses shared memory by itself");
    c->cap = opts && opts->initial_bytes ? opts->initial_bytes : (size_t)1 << 20;
    c->eps = calloc((size_t)c->size, sizeof *c->eps);
    c->buf = aligned_alloc(ALIGN, (c->cap + ALIGN - 1) / ALIGN * ALIGN);
    if (!c->eps || !c->buf)
        st = mx_error_set(MX_ERR_NOMEM, "transport ucx: cannot allocate %zu bytes of receive buffer", c->cap);

    ucp_config_t *cfg = NULL;
    ucs_status_t s = UCS_OK;
    if (st == MX_OK && (s = ucp_config_read(NULL, NULL, &cfg)) != UCS_OK)
        st = ucx_fail(s, "ucp_config_read");
    if (st == MX_OK) {
        ucp_params_t params;
        memset(&params, 0, sizeof params);
        params.field_mask = UCP_PARAM_FIELD_FEATURES;
        params.features = UCP_FEATURE_TAG;
        s = ucp_init(&params, cfg, &c->context);
        if (s != UCS_OK) {
            c->context = NULL;
            st = ucx_fail(s, "ucp_init");
        }
    }
    if (cfg)
        ucp_config_release(cfg);
    if (st == MX_OK) {
        ucp_worker_params_t wp;
        memset(&wp, 0, sizeof wp);
        wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
        wp.thread_mode = UCS_THREAD_MODE_SINGLE;
        if ((s = ucp_worker_create(c->context, &wp, &c->worker)) != UCS_OK) {
            c->worker = NULL;
            st = ucx_fail(s, "ucp_worker_create");
        }
    }
    ucp_address_t *addr = NULL;
    size_t addr_len = 0;
    if (st == MX_OK && (s = ucp_worker_get_address(c->worker, &addr, &addr_len)) != UCS_OK)
        st = ucx_fail(s, "ucp_worker_get_address");
    if ((st = agree(c->comm, st, "creating the UCP worker")) != MX_OK)
        goto fail;

    /* Worker addresses, once, over MPI. */
    int mylen = (int)addr_len;
    int *lens = calloc((size_t)c->size, sizeof(int)), *displs = calloc((size_t)c->size, sizeof(int));
    uint8_t *all = NULL;
    if (!lens || !displs)
        st = mx_error_set(MX_ERR_NOMEM, "transport ucx: out of memory");
    if (st == MX_OK && MPI_Allgather(&mylen, 1, MPI_INT, lens, 1, MPI_INT, c->comm) != MPI_SUCCESS)
        st = mx_error_set(MX_ERR_TRANSPORT, "transport ucx: MPI_Allgather of the address lengths failed");
    if (st == MX_OK) {
        size_t total = 0;
        for (int p = 0; p < c->size; p++) {
            displs[p] = (int)total;
            total += (size_t)lens[p];
        }
        all = malloc(total ? total : 1);
        if (!all)
            st = mx_error_set(MX_ERR_NOMEM, "transport ucx: out of memory for %zu bytes of addresses", total);
    }
    if (st == MX_OK && MPI_Allgatherv(addr, mylen, MPI_BYTE, all, lens, displs, MPI_BYTE, c->comm) != MPI_SUCCESS)
        st = mx_error_set(MX_ERR_TRANSPORT, "transport ucx: MPI_Allgatherv of the worker addresses failed");
    if (addr)
        ucp_worker_release_address(c->worker, addr);
    for (int p = 0; st == MX_OK && p < c->size; p++) {
        if (p == c->rank)
            continue;
        ucp_ep_params_t ep;
        memset(&ep, 0, sizeof ep);
        ep.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS;
        ep.address = (const ucp_address_t *)(all + displs[p]);
        if ((s = ucp_ep_create(c->worker, &ep, &c->eps[p])) != UCS_OK) {
            c->eps[p] = NULL;
            st = mx_error_set(MX_ERR_TRANSPORT, "transport ucx: cannot open an endpoint to rank %d: %s", p,
                              ucs_status_string(s));
        }
    }
    free(lens);
    free(displs);
    free(all);
    if ((st = agree(c->comm, st, "connecting the UCP endpoints")) != MX_OK)
        goto fail;
    describe_path(c);
    MX_LOG_D("transport", "ucx: %d ranks, path %s", c->size, c->path);
    *ctx_p = c;
    return MX_OK;
fail:
    ucx_destroy(c);
    return st;
}

static void ucx_destroy(void *ctx)
{
    ucx_ctx_t *c = ctx;
    if (!c)
        return;
    if (c->worker) {
        /* Everybody is done sending before anybody closes (flush needs the peers). */
        progress_barrier(c);
        void **reqs = calloc((size_t)c->size, sizeof(void *));
        for (int p = 0; p < c->size; p++) {
            if (!c->eps || !c->eps[p])
                continue;
            ucp_request_param_t prm;
            memset(&prm, 0, sizeof prm);
            prm.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
            prm.flags = 0; /* flush, then close */
            ucs_status_ptr_t r = ucp_ep_close_nbx(c->eps[p], &prm);
            if (reqs && r && !UCS_PTR_IS_ERR(r))
                reqs[p] = r;
            else if (!reqs && r && !UCS_PTR_IS_ERR(r)) {
                while (ucp_request_check_status(r) == UCS_INPROGRESS)
                    ucp_worker_progress(c->worker);
                ucp_request_free(r);
            }
        }
        if (reqs) {
            c->timeout_s = c->timeout_s > 30 ? 30 : c->timeout_s;
            (void)wait_all(c, reqs, c->size, "closing the endpoints", 0);
            free(reqs);
        }
        progress_barrier(c);
        ucp_worker_destroy(c->worker);
    }
    if (c->context)
        ucp_cleanup(c->context);
    if (c->comm != MPI_COMM_NULL)
        MPI_Comm_free(&c->comm);
    free(c->eps);
    free(c->buf);
    free(c);
}

static mx_status_t ucx_exchange_counts(void *ctx, const size_t *send_counts, size_t *recv_counts_p)
{
    ucx_ctx_t *c = ctx;
    if (!c || !send_counts || !recv_counts_p)
        return mx_error_set(MX_ERR_INVALID, "transport ucx: exchange_counts: NULL argument");
    int n = c->size;
    uint64_t *out = calloc((size_t)n, sizeof(uint64_t)), *in = calloc((size_t)n, sizeof(uint64_t));
    void **reqs = calloc(2 * (size_t)n, sizeof(void *));
    mx_status_t st = MX_OK;
    if (!out || !in || !reqs) {
        free(out);
        free(in);
        free(reqs);
        return mx_error_set(MX_ERR_NOMEM, "transport ucx: out of memory");
    }
    uint32_t seq = ++c->seq;
    for (int p = 0; p < n; p++)
        out[p] = (uint64_t)send_counts[p];
    in[c->rank] = out[c->rank];
    for (int p = 0; p < n && st == MX_OK; p++)
        if (p != c->rank)
            reqs[p] = post_recv(c, &in[p], sizeof(uint64_t), make_tag(seq, KIND_COUNTS, p), &st);
    for (int p = 0; p < n && st == MX_OK; p++)
        if (p != c->rank)
            reqs[n + p] = post_send(c, p, &out[p], sizeof(uint64_t), make_tag(seq, KIND_COUNTS, c->rank), &st);
    mx_status_t w = wait_all(c, reqs, 2 * n, "exchanging the byte counts", st != MX_OK);
    if (st == MX_OK)
        st = w;
    if (st == MX_OK)
        for (int p = 0; p < n; p++)
            recv_counts_p[p] = (size_t)in[p];
    free(out);
    free(in);
    free(reqs);
    return st;
}

static mx_status_t ucx_exchange(void *ctx, const void *send, const size_t *send_counts, const size_t *send_displs,
                                const size_t *recv_counts, const uint8_t **recv_p, size_t *recv_displs_p)
{
    ucx_ctx_t *c = ctx;
    if (!c || !send_counts || !send_displs || !recv_counts || !recv_p || !recv_displs_p)
        return mx_error_set(MX_ERR_INVALID, "transport ucx: exchange: NULL argument");
    int n = c->size;
    size_t total = 0, sent = 0;
    for (int p = 0; p < n; p++) {
        total += recv_counts[p];
        sent += send_counts[p];
    }
    if (sent && !send)
        return mx_error_set(MX_ERR_INVALID, "transport ucx: exchange: %zu bytes to send but send is NULL", sent);
    if (send_counts[c->rank] != recv_counts[c->rank])
        return mx_error_set(MX_ERR_INVALID,
                            "transport ucx: exchange: %zu bytes to myself (rank %d) but recv_counts "
                            "says %zu: recv_counts must come from exchange_counts",
                            send_counts[c->rank], c->rank, recv_counts[c->rank]);
    if (total > c->cap) {
        size_t cap = c->cap;
        while (cap < total)
            cap *= 2;
        uint8_t *nb = aligned_alloc(ALIGN, (cap + ALIGN - 1) / ALIGN * ALIGN);
        if (!nb)
            return mx_error_set(MX_ERR_NOMEM, "transport ucx: cannot grow the receive buffer to %zu bytes", cap);
        free(c->buf);
        c->buf = nb;
        c->cap = cap;
    }
    size_t *displs = malloc((size_t)n * sizeof(size_t));
    void **reqs = calloc(2 * (size_t)n, sizeof(void *));
    if (!displs || !reqs) {
        free(displs);
        free(reqs);
        return mx_error_set(MX_ERR_NOMEM, "transport ucx: out of memory");
    }
    size_t off = 0;
    for (int p = 0; p < n; p++) {
        displs[p] = off;
        off += recv_counts[p];
    }
    mx_status_t st = MX_OK;
    uint32_t seq = ++c->seq;
    const uint8_t *s8 = send;
    for (int p = 0; p < n && st == MX_OK; p++)
        if (p != c->rank && recv_counts[p])
            reqs[p] = post_recv(c, c->buf + displs[p], recv_counts[p], make_tag(seq, KIND_DATA, p), &st);
    for (int p = 0; p < n && st == MX_OK; p++)
        if (p != c->rank && send_counts[p])
            reqs[n + p] = post_send(c, p, s8 + send_displs[p], send_counts[p], make_tag(seq, KIND_DATA, c->rank), &st);
    if (st == MX_OK && recv_counts[c->rank])
        memcpy(c->buf + displs[c->rank], s8 + send_displs[c->rank], recv_counts[c->rank]);
    mx_status_t w = wait_all(c, reqs, 2 * n, "exchanging the payload", st != MX_OK);
    if (st == MX_OK)
        st = w;
    if (st == MX_OK) {
        memcpy(recv_displs_p, displs, (size_t)n * sizeof(size_t));
        *recv_p = c->buf;
    }
    free(displs);
    free(reqs);
    return st;
}

static const char *ucx_path(const void *ctx)
{
    return ctx ? ((const ucx_ctx_t *)ctx)->path : "ucx";
}

static const mx_transport_ops_t ucx_ops = {
    .name = "ucx",
    .create = ucx_create,
    .destroy = ucx_destroy,
    .exchange_counts = ucx_exchange_counts,
    .exchange = ucx_exchange,
    .path = ucx_path,
};

const mx_transport_ops_t *mx_transport_ucx_ops(void)
{
    return &ucx_ops;
}
