/* mxep serve over an MPI job (serve_mpi.h). */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mxep/log.h"
#include "serve_mpi.h"

enum { CMD_RUN = 1, CMD_STOP = 2, CMD_FAIL = 3 };
/* A follower that got SIGTERM/SIGINT tells rank 0 with one message of this tag
 * on the job's control communicator (a duplicate of comm, so that nothing the
 * layer sends on comm can take it); rank 0's loop then drains and stops all. */
enum { TAG_STOP_ASK = 1 };

typedef struct {
    MPI_Comm comm, ctl; /* ctl: the stop requests (TAG_STOP_ASK) */
    int rank, size;
    int stop_asks; /* rank 0: stop requests received */
    int stop_sent; /* a follower: it sent its one stop request */
    MPI_Request stop_req;
    size_t hidden;
    mx_serve_layer_fn layer;
    void *arg;
    int *counts, *displs; /* [size], in elements (uint16) */
    uint16_t *x_local, *out_local;
    size_t local_cap; /* rows */
} job_t;

/* One request on every rank. On rank 0, x/out are the whole batch. */
static mx_status_t run_one(job_t *j, int layer, size_t t, const uint16_t *x, uint16_t *out)
{
    size_t q = t / (size_t)j->size, r = t % (size_t)j->size;
    for (int p = 0; p < j->size; p++) {
        size_t rows = q + ((size_t)p < r ? 1 : 0);
        size_t start = (size_t)p * q + ((size_t)p < r ? (size_t)p : r);
        j->counts[p] = (int)(rows * j->hidden);
        j->displs[p] = (int)(start * j->hidden);
    }
    size_t mine = q + ((size_t)j->rank < r ? 1 : 0);
    mx_status_t st = MX_OK;
    if (mine > j->local_cap) {
        uint16_t *nx = realloc(j->x_local, mine * j->hidden * 2);
        if (nx)
            j->x_local = nx;
        uint16_t *no = nx ? realloc(j->out_local, mine * j->hidden * 2) : NULL;
        if (no)
            j->out_local = no;
        if (nx && no)
            j->local_cap = mine;
        else
            st = mx_error_set(MX_ERR_NOMEM, "serve: rank %d cannot hold %zu rows of hidden %zu", j->rank, mine,
                              j->hidden);
    }
    /* Everybody must take part in the collectives even after a local failure. */
    int ok_alloc = st == MX_OK, all_ok = 0;
    MPI_Allreduce(&ok_alloc, &all_ok, 1, MPI_INT, MPI_MIN, j->comm);
    if (all_ok) {
        MPI_Scatterv(x, j->counts, j->displs, MPI_UINT16_T, j->x_local, j->counts[j->rank], MPI_UINT16_T, 0, j->comm);
        for (size_t i = 0; i < mine * j->hidden; i++)
            j->out_local[i] = 0x7fc1; /* poison */
        mx_error_clear();
        size_t first = (size_t)j->rank * q + ((size_t)j->rank < r ? (size_t)j->rank : r);
        st = j->layer(layer, j->x_local, mine, first, t, j->hidden, j->out_local, j->arg);
        /* the detail counts this rank's rows from 0: say where they are (not when it only passes
         * on another rank's failure: that rank says where its rows are) */
        if (st != MX_OK && mine > 0 && !mx_error_relayed())
            st = mx_error_prefix(st, "request rows %zu..%zu (token i here is row %zu + i): ", first, first + mine - 1,
                                 first);
        MPI_Gatherv(j->out_local, j->counts[j->rank], MPI_UINT16_T, out, j->counts, j->displs, MPI_UINT16_T, 0,
                    j->comm);
    } else if (st == MX_OK) {
        st = mx_error_set(MX_ERR_NOMEM, "serve: another rank is out of memory");
    }
    /* The most negative status wins; its lowest rank that failed itself (not one that
     * only passes the failure on) tells the detail. */
    const int relayed = st != MX_OK && mx_error_relayed();
    struct {
        int status;
        int rank;
    } me = {(int)st, relayed ? j->rank + j->size : j->rank}, worst;
    MPI_Allreduce(&me, &worst, 1, MPI_2INT, MPI_MINLOC, j->comm);
    if (worst.status == MX_OK)
        return MX_OK;
    if (worst.rank >= j->size)
        worst.rank -= j->size;
    char detail[MX_ERROR_DETAIL_MAX];
    snprintf(detail, sizeof detail, "%s", mx_error_detail());
    MPI_Bcast(detail, sizeof detail, MPI_CHAR, worst.rank, j->comm);
    detail[sizeof detail - 1] = '\0';
    return mx_error_set((mx_status_t)worst.status, "rank %d: %s", worst.rank, detail);
}

/* The command broadcast from rank 0 to the followers. Non-blocking on every rank
 * (a blocking and a non-blocking broadcast may not be matched), and the followers
 * poll it with a 1 ms sleep, so an idle server does not keep a core per rank busy
 * spinning inside MPI. */
static void cmd_bcast(job_t *j, long long cmd[3], int is_root)
{
    MPI_Request req;
    MPI_Ibcast(cmd, 3, MPI_LONG_LONG, 0, j->comm, &req);
    if (is_root) {
        MPI_Wait(&req, MPI_STATUS_IGNORE);
        return;
    }
    for (;;) {
        int done = 0;
        MPI_Test(&req, &done, MPI_STATUS_IGNORE);
        if (done)
            return;
        /* a signal here (mpirun forwards it to every rank; a `kill` reaches one):
         * the follower asks rank 0 to stop the job, once, and goes on following */
        if (!j->stop_sent && mx_serve_signal_received()) {
            MPI_Isend(&j->rank, 1, MPI_INT, 0, TAG_STOP_ASK, j->ctl, &j->stop_req);
            j->stop_sent = 1;
        }
        struct timespec nap = {0, 1000000};
        nanosleep(&nap, NULL);
    }
}

/* rank 0's stop poll (mx_serve_config_t.stop_poll): has a follower asked? */
static int leader_stop_poll(void *arg)
{
    job_t *j = arg;
    int flag = 0;
    MPI_Status ms;
    MPI_Iprobe(MPI_ANY_SOURCE, TAG_STOP_ASK, j->ctl, &flag, &ms);
    if (!flag)
        return 0;
    int who = -1;
    MPI_Recv(&who, 1, MPI_INT, ms.MPI_SOURCE, TAG_STOP_ASK, j->ctl, MPI_STATUS_IGNORE);
    j->stop_asks++;
    MX_LOG_I("serve", "rank %d got SIGTERM or SIGINT: stopping every rank", ms.MPI_SOURCE);
    return 1;
}

/* rank 0's compute callback: tell the followers, then run. */
static mx_status_t leader_compute(int layer, size_t t, size_t h, const uint16_t *x, uint16_t *out, void *arg)
{
    job_t *j = arg;
    (void)h;
    long long cmd[3] = {CMD_RUN, layer, (long long)t};
    cmd_bcast(j, cmd, 1);
    return run_one(j, layer, t, x, out);
}

mx_status_t mx_serve_mpi_run(MPI_Comm comm, const mx_serve_config_t *config, mx_serve_layer_fn layer, void *arg,
                             mx_serve_stats_t *stats_p)
{
    job_t j;
    memset(&j, 0, sizeof j);
    j.comm = comm;
    j.ctl = MPI_COMM_NULL;
    j.stop_req = MPI_REQUEST_NULL;
    j.layer = layer;
    j.arg = arg;
    MPI_Comm_rank(comm, &j.rank);
    MPI_Comm_size(comm, &j.size);
    mx_status_t st = MX_OK;
    if (!layer)
        st = mx_error_set(MX_ERR_INVALID, "serve: no layer callback");
    else if (j.rank == 0 && !config)
        st = mx_error_set(MX_ERR_INVALID, "serve: rank 0 needs a config");
    mx_serve_h server = NULL;
    mx_serve_config_t cfg;
    if (st == MX_OK && j.rank == 0) {
        cfg = *config;
        cfg.compute = leader_compute;
        cfg.compute_arg = &j;
        cfg.stop_poll = j.size > 1 ? leader_stop_poll : NULL;
        cfg.stop_poll_arg = &j;
        st = mx_serve_create(&cfg, &server);
    }
    /* The followers learn H, or the leader's failure. */
    long long setup[2] = {st == MX_OK ? 0 : (long long)st, j.rank == 0 && config ? (long long)config->hidden : 0};
    char detail[MX_ERROR_DETAIL_MAX];
    snprintf(detail, sizeof detail, "%s", st == MX_OK ? "" : mx_error_detail());
    MPI_Bcast(setup, 2, MPI_LONG_LONG, 0, comm);
    int local_bad = st != MX_OK, any_bad = 0;
    MPI_Allreduce(&local_bad, &any_bad, 1, MPI_INT, MPI_MAX, comm);
    if (setup[0] != 0) {
        MPI_Bcast(detail, sizeof detail, MPI_CHAR, 0, comm);
        detail[sizeof detail - 1] = '\0';
        if (j.rank != 0)
            st = mx_error_set((mx_status_t)setup[0], "rank 0: %s", detail);
        return st;
    }
    if (any_bad) { /* some follower had a bad argument */
        if (server)
            mx_serve_destroy(server);
        if (st == MX_OK)
            st = mx_error_set(MX_ERR_INVALID, "serve: a rank was called without a layer callback");
        return st;
    }
    j.hidden = (size_t)setup[1];
    MPI_Comm_dup(comm, &j.ctl);
    j.counts = calloc((size_t)j.size, sizeof(int));
    j.displs = calloc((size_t)j.size, sizeof(int));
    int ok = j.counts && j.displs, all = 0;
    MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, comm);
    if (!all) {
        st = mx_error_set(MX_ERR_NOMEM, "serve: out of memory on some rank");
        goto done;
    }
    if (j.rank == 0) {
        st = mx_serve_run(server);
        long long cmd[3] = {st == MX_OK ? CMD_STOP : CMD_FAIL, (long long)st, 0};
        cmd_bcast(&j, cmd, 1);
        if (stats_p)
            mx_serve_stats(server, stats_p);
    } else {
        for (;;) {
            long long cmd[3];
            cmd_bcast(&j, cmd, 0);
            if (cmd[0] == CMD_STOP)
                break;
            if (cmd[0] == CMD_FAIL) {
                st = mx_error_set((mx_status_t)cmd[1], "serve: rank 0's front door failed");
                break;
            }
            (void)run_one(&j, (int)cmd[1], (size_t)cmd[2], NULL, NULL);
        }
    }
    /* every stop request sent is received before the communicator goes (more
     * than one follower may have been signalled, or one after rank 0 stopped) */
    int sent = j.stop_sent, total = 0;
    MPI_Reduce(&sent, &total, 1, MPI_INT, MPI_SUM, 0, j.ctl);
    if (j.rank == 0)
        for (int who; j.stop_asks < total; j.stop_asks++)
            MPI_Recv(&who, 1, MPI_INT, MPI_ANY_SOURCE, TAG_STOP_ASK, j.ctl, MPI_STATUS_IGNORE);
    else if (sent)
        MPI_Wait(&j.stop_req, MPI_STATUS_IGNORE);
done:
    if (j.ctl != MPI_COMM_NULL)
        MPI_Comm_free(&j.ctl);
    if (server)
        mx_serve_destroy(server);
    free(j.counts);
    free(j.displs);
    free(j.x_local);
    free(j.out_local);
    return st;
}
