/* mx_serve_mpi_run on 1..N ranks: a client thread in rank 0's process sends
 * batches (BF16 and F32, token counts below and above the rank count) and
 * checks every reply against the layer computed in-process; a layer that fails
 * on the last rank only must come back as an error reply naming that rank;
 * then SIGTERM goes to EVERY rank (as mpirun forwards it), or with --signal-last
 * to the last rank alone (a `kill` of one follower), and all ranks must return
 * MX_OK. Exit 0 on success. Usage: mpiexec -n N test_serve_mpi [--signal-last] */
#include <arpa/inet.h>
#include <mpi.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "serve_mpi.h"

enum { HID = 48, LAYERS = 3, FAIL_LAYER = 2, SEED = 424242 };

static int g_rank, g_size;

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Per token: depends on the layer and the whole row (batch-invariant). */
static void ref_rows(int layer, const uint16_t *x, size_t n, uint16_t *out)
{
    for (size_t i = 0; i < n; i++) {
        float sum = 0.0f;
        for (size_t j = 0; j < HID; j++)
            sum += mx_serve_bf16_to_f32(x[i * HID + j]);
        for (size_t j = 0; j < HID; j++)
            out[i * HID + j] =
                mx_serve_f32_to_bf16(mx_serve_bf16_to_f32(x[i * HID + j]) * (float)(layer + 2) + sum * 0.125f);
    }
}

static mx_status_t layer_fn(int layer, const uint16_t *x, size_t n, size_t first, size_t t_global, size_t hidden,
                            uint16_t *out, void *arg)
{
    (void)arg;
    size_t q = t_global / (size_t)g_size, r = t_global % (size_t)g_size;
    if (first != (size_t)g_rank * q + ((size_t)g_rank < r ? (size_t)g_rank : r) || n != q + ((size_t)g_rank < r))
        return mx_error_set(MX_ERR_INTERNAL, "rank %d got rows [%zu, +%zu) of %zu: not the even split", g_rank, first,
                            n, t_global);
    if (hidden != HID)
        return mx_error_set(MX_ERR_INTERNAL, "hidden %zu, expected %d", hidden, HID);
    /* the last rank fails; the others pass its failure on, as the worker's ranks do (wk_agree),
     * and the reply must still name that rank and its rows, not rank 0's */
    if (layer == FAIL_LAYER && g_rank == g_size - 1)
        return mx_error_set(MX_ERR_NO_DEVICE, "the device of this rank is gone (test)");
    if (layer == FAIL_LAYER)
        return mx_error_relay(MX_ERR_NO_DEVICE,
                              "rank %d failed while computing: the device of this rank is gone (test)", g_size - 1);
    ref_rows(layer, x, n, out);
    return MX_OK;
}

typedef struct {
    char url[64];
    pid_t *pids;
    int signal_last; /* SIGTERM to the last rank only */
    int failures;
} client_arg_t;

static void *client_main(void *p)
{
    client_arg_t *a = p;
    uint64_t rng = SEED;
    mx_client_h c = NULL;
    if (mx_client_create(a->url, 20000, &c) != MX_OK) {
        fprintf(stderr, "client: %s\n", mx_error_detail());
        a->failures++;
    }
    size_t sizes[] = {1, (size_t)g_size, (size_t)g_size + 1, 17, 64, 3};
    for (size_t k = 0; c && k < sizeof sizes / sizeof sizes[0]; k++) {
        size_t t = sizes[k], n = t * HID;
        int layer = (int)(k % 2);
        mx_serve_wire_dtype_t dt = (k & 1) ? MX_SERVE_WIRE_F32 : MX_SERVE_WIRE_BF16;
        uint16_t *xb = malloc(n * 2), *want = malloc(n * 2);
        float *xf = malloc(n * 4);
        for (size_t i = 0; i < n; i++) {
            xf[i] = (float)((int64_t)(rng_next(&rng) % 20001) - 10000) / 2500.0f;
            xb[i] = mx_serve_f32_to_bf16(xf[i]);
        }
        ref_rows(layer, xb, t, want);
        mx_client_reply_t rep = {0};
        mx_status_t st =
            mx_client_request(c, layer, dt, t, HID, dt == MX_SERVE_WIRE_BF16 ? (void *)xb : (void *)xf, &rep);
        if (st != MX_OK || rep.status != MX_OK || rep.n_tokens != t || memcmp(rep.out, want, n * 2) != 0) {
            fprintf(stderr, "FAIL request %zu (T=%zu, seed %d): %s %s\n", k, t, SEED,
                    st != MX_OK ? mx_error_detail() : mx_status_str(rep.status), rep.message);
            a->failures++;
        }
        mx_client_reply_fini(&rep);
        free(xb);
        free(xf);
        free(want);
    }
    if (c) { /* the last rank fails this layer: error reply naming it, and the job goes on */
        uint16_t x[5 * HID];
        for (int i = 0; i < 5 * HID; i++)
            x[i] = 0x3f80;
        mx_client_reply_t rep = {0};
        char want[32], rows[64];
        snprintf(want, sizeof want, "rank %d:", g_size - 1);
        /* and where that rank's rows sit in the request (the even split, the first 5 % size one more) */
        const int p = g_size - 1, q = 5 / g_size, rm = 5 % g_size;
        const int start = p * q + (p < rm ? p : rm), cnt = q + (p < rm);
        snprintf(rows, sizeof rows, "request rows %d..%d ", start, start + cnt - 1);
        mx_status_t st = mx_client_request(c, FAIL_LAYER, MX_SERVE_WIRE_BF16, 5, HID, x, &rep);
        if (st != MX_OK || rep.status != MX_ERR_NO_DEVICE || !strstr(rep.message, want) ||
            !strstr(rep.message, "device of this rank is gone") || (cnt > 0 && !strstr(rep.message, rows))) {
            fprintf(stderr, "FAIL failing layer: %s / %s '%s' (want MX_ERR_NO_DEVICE naming '%s')\n", mx_status_str(st),
                    mx_status_str(rep.status), rep.message, want);
            a->failures++;
        }
        mx_client_reply_fini(&rep);
        st = mx_client_request(c, 0, MX_SERVE_WIRE_BF16, 5, HID, x, &rep);
        if (st != MX_OK || rep.status != MX_OK) {
            fprintf(stderr, "FAIL request after the failing layer: %s\n", rep.message);
            a->failures++;
        }
        mx_client_reply_fini(&rep);
        mx_client_destroy(c);
    }
    for (int r = a->signal_last ? g_size - 1 : 0; r < g_size; r++) /* as mpirun does on SIGTERM, or one rank */
        kill(a->pids[r], SIGTERM);
    return NULL;
}

int main(int argc, char **argv)
{
    int provided = 0;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g_size);
    if (mx_serve_signals_install() != MX_OK)
        MPI_Abort(MPI_COMM_WORLD, 1);
    pid_t me = getpid();
    pid_t *pids = calloc((size_t)g_size, sizeof(pid_t));
    MPI_Gather(&me, (int)sizeof me, MPI_BYTE, pids, (int)sizeof me, MPI_BYTE, 0, MPI_COMM_WORLD);
    client_arg_t ca = {.pids = pids, .signal_last = argc > 1 && !strcmp(argv[1], "--signal-last")};
    mx_serve_config_t cfg = {.hidden = HID, .n_layers = LAYERS, .max_tokens = 256, .poll_ms = 20};
    pthread_t th;
    if (g_rank == 0) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t l = sizeof sa;
        bind(fd, (struct sockaddr *)&sa, sizeof sa);
        getsockname(fd, (struct sockaddr *)&sa, &l);
        close(fd);
        snprintf(ca.url, sizeof ca.url, "tcp://127.0.0.1:%d", ntohs(sa.sin_port));
        cfg.url = ca.url;
        printf("test_serve_mpi: %d ranks, %s, seed %d\n", g_size, ca.url, SEED);
        pthread_create(&th, NULL, client_main, &ca);
    }
    mx_serve_stats_t stats = {0};
    mx_status_t st = mx_serve_mpi_run(MPI_COMM_WORLD, g_rank == 0 ? &cfg : NULL, layer_fn, NULL, &stats);
    int bad = st != MX_OK;
    if (bad)
        fprintf(stderr, "rank %d: mx_serve_mpi_run: %s: %s\n", g_rank, mx_status_str(st), mx_error_detail());
    if (g_rank == 0) {
        pthread_join(th, NULL);
        bad |= ca.failures != 0;
        if (stats.ok != 7 || stats.errors != 1) {
            fprintf(stderr, "FAIL stats: %llu ok, %llu errors (want 7, 1)\n", (unsigned long long)stats.ok,
                    (unsigned long long)stats.errors);
            bad = 1;
        }
    }
    int any = 0;
    MPI_Allreduce(&bad, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (g_rank == 0)
        printf("test_serve_mpi: %s\n", any ? "FAILED"
                                       : ca.signal_last
                                           ? "every reply correct, SIGTERM to the last rank stopped every rank"
                                           : "every reply correct, SIGTERM stopped every rank");
    free(pids);
    MPI_Finalize();
    return any ? 1 : 0;
}
