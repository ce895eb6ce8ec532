/* mxep transport/: the MPI implementation.
 *
 * Same host: one MPI-3 shared window over the node communicator. Rank j's
 * region = [header | data]. The header holds what j needs this round (total
 * bytes) and, per local peer i, where i's bytes go in j's data area (the
 * prefix-sum displacement of i's world rank). One round:
 *   1. write own header; win_sync + node barrier + win_sync
 *   2. if any local rank needs more room than the regions have, every local
 *      rank sees it in the headers, and all reallocate the window (collective
 *      on the node communicator), then write the headers again (back to 1)
 *   3. post MPI_Ialltoallv for the pairs on other hosts (if any), receiving into
 *      the own data area; copy own bytes once into each local peer's data area
 *   4. wait for the Ialltoallv; win_sync + node barrier + win_sync
 * Nobody writes into a region before its owner has entered the round (barrier
 * of step 1), so the previous round's bytes stay valid until the next call.
 *
 * Zero-copy rounds use the same window, whose regions are [header | receive
 * area | reply area]:
 *  - push: steps 1-2, then the caller writes each local peer's bytes straight
 *    into that peer's receive area (cross-host bytes into a private staging
 *    buffer); push_end: the MPI_Alltoallv of the cross-host pairs, then step 4;
 *  - pull: steps 1-2 publish where, in this rank's reply area, each local peer's
 *    bytes will be; the caller writes its replies there; pull_end: node barrier
 *    (every reply written), the MPI_Alltoallv of the cross-host pairs (from the
 *    reply area into the receive area), and each local peer's bytes are read
 *    in place from its reply area. The next round's first barrier, which
 *    every reader must reach, keeps them valid until then.
 * Header words: [0] receive bytes needed, [1] reply bytes needed, [2 + j]
 * where local peer j's pushed bytes go in the receive area, and for pull
 * round k, with P = 2 + L + 2L (k & 1): [P + j] and [P + L + j] where local
 * peer j's pulled bytes lie in the reply area and how many there are (L: ranks
 * on the host). Two sets, alternating: a rank may publish pull k + 1 while a
 * slower peer still reads pull k's words (pull k + 1's barrier keeps it from
 * getting further ahead).
 *
 * alltoallv mode: MPI_Alltoallv into a private buffer. */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__x86_64__) || defined(_M_X64)
#include <emmintrin.h>
#define HAVE_STREAM_COPY 1
#endif

#include "mxep/log.h"
#include "mxep/transport.h"

#define ALIGN 64u
#define COPY_SPLIT_MIN ((uint64_t)256 << 10) /* below this many local bytes, one thread copies */
#define STREAM_MIN ((size_t)64 << 10)        /* streaming stores only for pieces this large */

_Static_assert(sizeof(size_t) == sizeof(uint64_t), "counts travel as MPI_UINT64_T");

typedef struct {
    MPI_Comm comm; /* dup of the user's */
    int rank, size;
    mx_exchange_mode_t mode; /* effective: ALLTOALLV or SHM (AUTO resolved) */
    int any_remote;          /* some peer is on another host */
    int all_single;          /* every rank is alone on its host */
    /* alltoallv bookkeeping */
    int *scounts, *sdispls, *rcounts, *rdispls; /* [size] */
    uint8_t *priv;                              /* alltoallv mode receive buffer */
    size_t priv_cap;
    /* shared memory */
    MPI_Comm node;
    int local_rank, local_size;
    int *local_of_world; /* [size] local index, -1 when on another host */
    int *world_of_local; /* [local_size] */
    MPI_Win win;
    int win_open;
    size_t hdr_bytes; /* header size, multiple of ALIGN */
    size_t cap;       /* receive-area bytes per region */
    size_t ocap;      /* reply-area bytes per region (after the receive area) */
    /* zero-copy rounds */
    size_t *zsc, *zsd, *zrc, *zrd; /* [size] counts and displacements of the open round */
    uint8_t *stage;                /* cross-host bytes of a push */
    mx_status_t push_err;          /* a push_begin's local failure, reported by its push_end */
    unsigned pulls;                /* pull rounds begun (the same on every rank: collective) */
    size_t stage_cap;
    uint8_t **base;   /* [local_size] region start of each local rank */
    char path[32];
    mx_transport_stats_t ph; /* phases since the last reset (arrive/copy/remote/depart, bytes) */
    int threads;             /* threads that copy within the host */
    int stream;              /* non-temporal stores for pieces >= STREAM_MIN (MXEP_SHM_COPY) */
    mx_host_hooks_t hooks;   /* told about this rank's window region (on_alloc NULL: none) */
} mpi_ctx_t;

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

static mx_status_t mpi_fail(int rc, const char *call)
{
    char msg[MPI_MAX_ERROR_STRING] = "";
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    return mx_error_set(MX_ERR_TRANSPORT, "transport mpi: %s failed: %s", call, msg);
}

static size_t round_up(size_t x, size_t a)
{
    return (x + a - 1) / a * a;
}

/* Grows a private buffer to hold `need` bytes (a quarter more, ALIGN-rounded,
 * so that slowly growing rounds do not reallocate each time). Returns 0, or -1
 * with *tried set to the size that could not be allocated (the buffer is kept). */
static int grow_buf(uint8_t **buf, size_t *cap, size_t need, size_t *tried)
{
    if (need <= *cap)
        return 0;
    size_t n = round_up(need + need / 4, ALIGN);
    uint8_t *p = realloc(*buf, n);
    *tried = n;
    if (!p)
        return -1;
    *buf = p;
    *cap = n;
    return 0;
}

static void win_close(mpi_ctx_t *c)
{
    if (c->win_open) {
        if (c->hooks.on_free)
            c->hooks.on_free(c->hooks.ctx, c->base[c->local_rank]);
        MPI_Win_unlock_all(c->win);
        MPI_Win_free(&c->win);
        c->win_open = 0;
    }
}

static mx_status_t win_open(mpi_ctx_t *c, size_t cap, size_t ocap)
{
    MPI_Info info;
    MPI_Info_create(&info);
    MPI_Info_set(info, "alloc_shared_noncontig", "true");
    uint8_t *mine = NULL;
    size_t bytes = c->hdr_bytes + cap + ocap;
    if (cap > (size_t)LLONG_MAX / 4 || ocap > (size_t)LLONG_MAX / 4) {
        MPI_Info_free(&info);
        return mx_error_set(MX_ERR_NOMEM, "transport mpi: shared window of %zu bytes is too large", bytes);
    }
    int rc = MPI_Win_allocate_shared((MPI_Aint)bytes, 1, info, c->node, &mine, &c->win);
    MPI_Info_free(&info);
    if (rc != MPI_SUCCESS)
        return mpi_fail(rc, "MPI_Win_allocate_shared");
    for (int j = 0; j < c->local_size; j++) {
        MPI_Aint sz = 0;
        int du = 0;
        void *p = NULL;
        rc = MPI_Win_shared_query(c->win, j, &sz, &du, &p);
        if (rc != MPI_SUCCESS) {
            MPI_Win_free(&c->win);
            return mpi_fail(rc, "MPI_Win_shared_query");
        }
        c->base[j] = p;
    }
    MPI_Win_lock_all(MPI_MODE_NOCHECK, c->win);
    c->win_open = 1;
    c->cap = cap;
    c->ocap = ocap;
    /* the owner touches its whole region first, so its pages sit on its NUMA node */
    memset(mine, 0, bytes);
    if (c->hooks.on_alloc)
        c->hooks.on_alloc(c->hooks.ctx, c->base[c->local_rank], bytes);
    return MX_OK;
}

static void mpi_set_host_hooks(void *ctx, const mx_host_hooks_t *hooks)
{
    mpi_ctx_t *c = ctx;
    c->hooks = *hooks;
    if (c->win_open)
        hooks->on_alloc(hooks->ctx, c->base[c->local_rank], c->hdr_bytes + c->cap + c->ocap); /* as win_open */
}

static void mpi_destroy(void *ctx)
{
    mpi_ctx_t *c = ctx;
    if (!c)
        return;
    win_close(c);
    if (c->node != MPI_COMM_NULL)
        MPI_Comm_free(&c->node);
    if (c->comm != MPI_COMM_NULL)
        MPI_Comm_free(&c->comm);
    free(c->scounts);
    free(c->sdispls);
    free(c->rcounts);
    free(c->rdispls);
    free(c->priv);
    free(c->local_of_world);
    free(c->world_of_local);
    free(c->base);
    free(c->zsc);
    free(c->zsd);
    free(c->zrc);
    free(c->zrd);
    free(c->stage);
    free(c);
}

static mx_status_t mpi_create(MPI_Comm comm, const mx_transport_opts_t *opts, void **ctx_p)
{
    mpi_ctx_t *c = calloc(1, sizeof *c);
    if (!c)
        return mx_error_set(MX_ERR_NOMEM, "transport mpi: out of memory");
    c->comm = MPI_COMM_NULL;
    c->node = MPI_COMM_NULL;
    mx_status_t st = MX_OK;
    int rc = MPI_Comm_dup(comm, &c->comm);
    if (rc != MPI_SUCCESS) {
        st = mpi_fail(rc, "MPI_Comm_dup");
        goto fail;
    }
    MPI_Comm_set_errhandler(c->comm, MPI_ERRORS_RETURN);
    MPI_Comm_rank(c->comm, &c->rank);
    MPI_Comm_size(c->comm, &c->size);
    size_t n = (size_t)c->size;
    c->scounts = calloc(n, sizeof(int));
    c->sdispls = calloc(n, sizeof(int));
    c->rcounts = calloc(n, sizeof(int));
    c->rdispls = calloc(n, sizeof(int));
    c->local_of_world = calloc(n, sizeof(int));
    c->zsc = calloc(n, sizeof(size_t));
    c->zsd = calloc(n, sizeof(size_t));
    c->zrc = calloc(n, sizeof(size_t));
    c->zrd = calloc(n, sizeof(size_t));
    if (!c->scounts || !c->sdispls || !c->rcounts || !c->rdispls || !c->local_of_world || !c->zsc || !c->zsd ||
        !c->zrc || !c->zrd) {
        st = mx_error_set(MX_ERR_NOMEM, "transport mpi: out of memory");
        goto fail;
    }
    /* MXEP_TRANSPORT_HOSTS=K (tests): pretend the ranks sit on K hosts (contiguous
     * blocks), so the cross-host path runs on one machine. Checked whole ("2abc" was 2)
     * and the same on every rank (the split below is collective), agreed before use. */
    const char *fake = getenv("MXEP_TRANSPORT_HOSTS");
    int k = 0, agree[2];
    if (fake && *fake) {
        char *end = NULL;
        errno = 0;
        long v = strtol(fake, &end, 10);
        k = errno || *end || fake[0] < '0' || fake[0] > '9' || v < 1 || v > (1L << 20) ? -1 : (int)v;
    }
    const int mine[2] = {k, -k};
    MPI_Allreduce(mine, agree, 2, MPI_INT, MPI_MIN, c->comm);
    if (agree[0] < 0 || agree[0] != -agree[1]) {
        st = mx_error_set(MX_ERR_INVALID,
                          agree[0] < 0 ? "MXEP_TRANSPORT_HOSTS='%s' (on this or another rank): expected a host count "
                                         "1 .. 1048576 (a test setting: the ranks pretend to sit on that many hosts)"
                                       : "MXEP_TRANSPORT_HOSTS='%s' differs between ranks: give every rank the same",
                          fake ? fake : "");
        goto fail;
    }
    if (k > 1) {
        if (k > c->size)
            k = c->size;
        rc = MPI_Comm_split(c->comm, (int)((long)c->rank * k / c->size), c->rank, &c->node);
    } else {
        rc = MPI_Comm_split_type(c->comm, MPI_COMM_TYPE_SHARED, c->rank, MPI_INFO_NULL, &c->node);
    }
    if (rc != MPI_SUCCESS) {
        st = mpi_fail(rc, "MPI_Comm_split_type(SHARED)");
        goto fail;
    }
    MPI_Comm_set_errhandler(c->node, MPI_ERRORS_RETURN);
    MPI_Comm_rank(c->node, &c->local_rank);
    MPI_Comm_size(c->node, &c->local_size);
    c->world_of_local = calloc((size_t)c->local_size, sizeof(int));
    c->base = calloc((size_t)c->local_size, sizeof(uint8_t *));
    int *lr = calloc((size_t)c->local_size, sizeof(int));
    if (!c->world_of_local || !c->base || !lr) {
        free(lr);
        st = mx_error_set(MX_ERR_NOMEM, "transport mpi: out of memory");
        goto fail;
    }
    MPI_Group wg, ng;
    MPI_Comm_group(c->comm, &wg);
    MPI_Comm_group(c->node, &ng);
    for (int j = 0; j < c->local_size; j++)
        lr[j] = j;
    MPI_Group_translate_ranks(ng, c->local_size, lr, wg, c->world_of_local);
    MPI_Group_free(&wg);
    MPI_Group_free(&ng);
    free(lr);
    for (size_t i = 0; i < n; i++)
        c->local_of_world[i] = -1;
    for (int j = 0; j < c->local_size; j++)
        c->local_of_world[c->world_of_local[j]] = j;
    /* hosts partition the ranks: if one rank has a peer elsewhere, every rank does */
    c->any_remote = c->local_size < c->size;
    int most_local = 0;
    rc = MPI_Allreduce(&c->local_size, &most_local, 1, MPI_INT, MPI_MAX, c->comm);
    if (rc != MPI_SUCCESS) {
        st = mpi_fail(rc, "MPI_Allreduce (ranks per host)");
        goto fail;
    }
    c->all_single = most_local == 1;

    c->threads = opts->copy_threads > 1 ? opts->copy_threads : 1;
#ifndef _OPENMP
    c->threads = 1;
#endif
    /* MXEP_SHM_COPY=memcpy|stream|auto: how the copies within a host store.
     * memcpy's stores first read every destination line; inside a layer those
     * lines are cold (the receiver's region was last read a layer ago, and the
     * compute in between went through the caches), so non-temporal stores,
     * which skip that read, copy faster (measured: bench/RESULTS.md,
     * 2026-12-05). auto (default) = stream for pieces of STREAM_MIN bytes and
     * more. memcpy wins only when the same buffers are exchanged again and
     * again with nothing in between (warm caches: the "alone" benches). */
    const char *copy = getenv("MXEP_SHM_COPY");
    c->stream = 1;
    if (copy && strcmp(copy, "memcpy") == 0)
        c->stream = 0;
    else if (copy && strcmp(copy, "stream") != 0 && strcmp(copy, "auto") != 0)
        MX_LOG_W("transport", "MXEP_SHM_COPY=%s: expected memcpy, stream or auto; using auto", copy);
#ifndef HAVE_STREAM_COPY
    c->stream = 0;
#endif

    c->mode = opts->mode;
    if (c->mode == MX_EXCHANGE_SHM && c->any_remote) {
        st = mx_error_set(MX_ERR_UNSUPPORTED,
                          "transport mpi: --exchange shm needs every rank on one host, but rank %d shares its "
                          "host with only %d of %d ranks (use auto or alltoallv)",
                          c->rank, c->local_size, c->size);
        goto fail;
    }
    if (c->mode == MX_EXCHANGE_AUTO)
        c->mode = MX_EXCHANGE_SHM; /* the window also serves as receive buffer for remote pairs */
    size_t cap0 = opts->initial_bytes ? opts->initial_bytes : (size_t)1 << 20;
    if (c->mode == MX_EXCHANGE_SHM) {
        c->hdr_bytes = round_up(sizeof(uint64_t) * (2 + 5 * (size_t)c->local_size), ALIGN);
        st = win_open(c, round_up(cap0, ALIGN), round_up(cap0, ALIGN));
        if (st != MX_OK)
            goto fail;
        snprintf(c->path, sizeof c->path, "%s", c->any_remote ? "shm+alltoallv" : "shm");
    } else {
        c->priv = malloc(cap0);
        if (!c->priv) {
            st = mx_error_set(MX_ERR_NOMEM, "transport mpi: out of memory for %zu bytes", cap0);
            goto fail;
        }
        c->priv_cap = cap0;
        snprintf(c->path, sizeof c->path, "alltoallv");
    }
    MX_LOG_D("transport", "mpi transport: %d ranks, %d on this host, path %s", c->size, c->local_size, c->path);
    *ctx_p = c;
    return MX_OK;
fail:
    mpi_destroy(c);
    return st;
}

static mx_status_t mpi_exchange_counts(void *ctx, const size_t *send_counts, size_t *recv_counts_p)
{
    mpi_ctx_t *c = ctx;
    int rc = MPI_Alltoall(send_counts, 1, MPI_UINT64_T, recv_counts_p, 1, MPI_UINT64_T, c->comm);
    if (rc != MPI_SUCCESS)
        return mpi_fail(rc, "MPI_Alltoall (counts)");
    return MX_OK;
}

static const char *mpi_path(const void *ctx)
{
    return ((const mpi_ctx_t *)ctx)->path;
}

/* int counts for the alltoallv pairs; local pairs get 0 when `skip_local`. */
static int fill_int_counts(mpi_ctx_t *c, const size_t *sc, const size_t *sd, const size_t *rc, const size_t *rd,
                           int skip_local)
{
    int ok = 1;
    for (int r = 0; r < c->size; r++) {
        int local = skip_local && c->local_of_world[r] >= 0;
        uint64_t s = local ? 0 : sc[r], x = local ? 0 : rc[r];
        uint64_t s_end = sd[r] + s, r_end = rd[r] + x;
        if (s > INT_MAX || x > INT_MAX || (s && s_end > INT_MAX) || (x && r_end > INT_MAX))
            ok = 0;
        c->scounts[r] = (int)s;
        c->sdispls[r] = s ? (int)sd[r] : 0;
        c->rcounts[r] = (int)x;
        c->rdispls[r] = x ? (int)rd[r] : 0;
    }
    return ok;
}

#ifdef HAVE_STREAM_COPY
/* memcpy with non-temporal stores: the bytes go to memory without first
 * reading the destination lines (which memcpy's stores do), for copies too
 * large to stay in the caches anyway. The caller fences (sfence). */
static void copy_stream(uint8_t *dst, const uint8_t *src, size_t n)
{
    size_t head = (16 - ((uintptr_t)dst & 15)) & 15;
    if (head > n)
        head = n;
    memcpy(dst, src, head);
    dst += head;
    src += head;
    n -= head;
    for (; n >= 64; n -= 64, dst += 64, src += 64) {
        __m128i a = _mm_loadu_si128((const __m128i *)src), b = _mm_loadu_si128((const __m128i *)(src + 16));
        __m128i x = _mm_loadu_si128((const __m128i *)(src + 32)), y = _mm_loadu_si128((const __m128i *)(src + 48));
        _mm_stream_si128((__m128i *)dst, a);
        _mm_stream_si128((__m128i *)(dst + 16), b);
        _mm_stream_si128((__m128i *)(dst + 32), x);
        _mm_stream_si128((__m128i *)(dst + 48), y);
    }
    memcpy(dst, src, n);
}
#endif

static void copy_piece(const mpi_ctx_t *c, uint8_t *dst, const uint8_t *src, size_t n)
{
#ifdef HAVE_STREAM_COPY
    if (c->stream && n >= STREAM_MIN) {
        copy_stream(dst, src, n);
        return;
    }
#endif
    (void)c;
    memcpy(dst, src, n);
}

/* Step 3's copies: this rank's bytes for every local peer (itself included),
 * straight into the receiver's region, in ring order from the next local rank.
 * With several copying threads, the bytes of all the peers are cut into one
 * contiguous share per thread. Thread 0 (the one that calls MPI) lets the
 * cross-host messages progress between its pieces: Open MPI moves them only
 * inside MPI calls. Returns the bytes copied. */
static uint64_t copy_local(mpi_ctx_t *c, const uint8_t *sbuf, const size_t *send_counts, const size_t *send_displs,
                           MPI_Request *req, mx_status_t *st)
{
    uint64_t total = 0;
    for (int j = 0; j < c->local_size; j++)
        total += send_counts[c->world_of_local[j]];
    int nt = total >= COPY_SPLIT_MIN ? c->threads : 1;
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        int t = 0;
#ifdef _OPENMP
        t = omp_get_thread_num();
        nt = omp_get_num_threads();
#endif
        uint64_t lo = total * (uint64_t)t / (uint64_t)nt, hi = total * (uint64_t)(t + 1) / (uint64_t)nt, pos = 0;
        for (int k = 0; k < c->local_size && pos < hi; k++) {
            int j = (c->local_rank + 1 + k) % c->local_size;
            int d = c->world_of_local[j];
            uint64_t n = send_counts[d], a = lo > pos ? lo : pos, b = hi < pos + n ? hi : pos + n;
            if (a < b) {
                uint64_t off = ((volatile uint64_t *)c->base[j])[2 + c->local_rank] + (a - pos);
                copy_piece(c, c->base[j] + c->hdr_bytes + off, sbuf + send_displs[d] + (a - pos), (size_t)(b - a));
                if (t == 0 && *req != MPI_REQUEST_NULL) {
                    int done = 0;
                    int rc = MPI_Test(req, &done, MPI_STATUS_IGNORE);
                    if (rc != MPI_SUCCESS && *st == MX_OK)
                        *st = mpi_fail(rc, "MPI_Test (Ialltoallv)");
                }
            }
            pos += n;
        }
#ifdef HAVE_STREAM_COPY
        if (c->stream)
            _mm_sfence();
#endif
    }
    return total;
}

/* MPI_Alltoallv into dst: every pair, or (cross_only) only the pairs on two
 * hosts, the local ones carrying nothing. A local failure (st_in) still takes
 * part in the collective, sending nothing (and, for every pair, receiving
 * nothing), so the other ranks are never left waiting. */
static mx_status_t alltoallv_into(mpi_ctx_t *c, const uint8_t *sbuf, const size_t *send_counts,
                                  const size_t *send_displs, const size_t *recv_counts, const size_t *recv_displs,
                                  uint8_t *dst, mx_status_t st_in, int cross_only)
{
    mx_status_t st = st_in;
    if (!fill_int_counts(c, send_counts, send_displs, recv_counts, recv_displs, cross_only) && st == MX_OK)
        st = mx_error_set(MX_ERR_UNSUPPORTED,
                          "transport mpi: rank %d: a %scount or displacement exceeds INT_MAX bytes, which "
                          "MPI_Alltoallv cannot carry",
                          c->rank, cross_only ? "cross-host " : "");
    if (st != MX_OK)
        for (int r = 0; r < c->size; r++) {
            c->scounts[r] = c->sdispls[r] = 0;
            if (!cross_only)
                c->rcounts[r] = c->rdispls[r] = 0;
        }
    double t0 = now_ms();
    int rc = MPI_Alltoallv(sbuf, c->scounts, c->sdispls, MPI_BYTE, dst, c->rcounts, c->rdispls, MPI_BYTE, c->comm);
    c->ph.remote_ms += now_ms() - t0;
    for (int r = 0; r < c->size; r++)
        c->ph.remote_bytes += r == c->rank ? 0 : (uint64_t)c->scounts[r];
    if (rc != MPI_SUCCESS && st == MX_OK)
        st = mpi_fail(rc, cross_only ? "MPI_Alltoallv (cross-host pairs)" : "MPI_Alltoallv");
    return st;
}

static void win_fence(mpi_ctx_t *c)
{
    MPI_Win_sync(c->win);
    MPI_Barrier(c->node);
    MPI_Win_sync(c->win);
}

/* Steps 1 and 2 of a round: this rank's header (receive and reply bytes it
 * needs; where each local peer's pushed bytes go, when push_displs; where its
 * pulled bytes lie and how many, when pull_displs), a node barrier, and the
 * window grown together while some local rank needs more than it has. */
static size_t pull_words(const mpi_ctx_t *c, unsigned round)
{
    return 2 + (size_t)c->local_size * (1 + 2 * (round & 1u));
}

static mx_status_t shm_publish(mpi_ctx_t *c, uint64_t recv_need, uint64_t reply_need, const size_t *push_displs,
                               const size_t *pull_displs, const size_t *pull_counts)
{
    const int L = c->local_size;
    const size_t P = pull_words(c, c->pulls);
    for (;;) {
        volatile uint64_t *hdr = (volatile uint64_t *)c->base[c->local_rank];
        hdr[0] = recv_need;
        hdr[1] = reply_need;
        for (int j = 0; j < L; j++) {
            int w = c->world_of_local[j];
            if (push_displs)
                hdr[2 + j] = push_displs[w];
            if (pull_displs) {
                hdr[P + j] = pull_displs[w];
                hdr[P + L + j] = pull_counts[w];
            }
        }
        win_fence(c);
        uint64_t need = 0, oneed = 0;
        for (int j = 0; j < L; j++) {
            volatile const uint64_t *h = (volatile const uint64_t *)c->base[j];
            need = h[0] > need ? h[0] : need;
            oneed = h[1] > oneed ? h[1] : oneed;
        }
        if (need <= c->cap && oneed <= c->ocap)
            return MX_OK;
        /* every local rank saw the same headers and grows together */
        size_t cap = need > c->cap ? round_up((size_t)need + (size_t)need / 4, ALIGN) : c->cap;
        size_t ocap = oneed > c->ocap ? round_up((size_t)oneed + (size_t)oneed / 4, ALIGN) : c->ocap;
        MX_LOG_D("transport", "growing the shared window from %zu + %zu to %zu + %zu bytes per rank", c->cap,
                 c->ocap, cap, ocap);
        win_close(c);
        mx_status_t st = win_open(c, cap, ocap);
        if (st != MX_OK)
            return st;
    }
}

static mx_status_t mpi_exchange(void *ctx, const void *send, const size_t *send_counts, const size_t *send_displs,
                                const size_t *recv_counts, const uint8_t **recv_p, size_t *recv_displs_p)
{
    mpi_ctx_t *c = ctx;
    const uint8_t *sbuf = send;
    size_t total = 0;
    for (int r = 0; r < c->size; r++) {
        recv_displs_p[r] = total;
        total += recv_counts[r];
    }
    int rc;
    if (c->mode == MX_EXCHANGE_ALLTOALLV) {
        mx_status_t st = MX_OK;
        size_t cap;
        if (grow_buf(&c->priv, &c->priv_cap, total, &cap) != 0)
            st = mx_error_set(MX_ERR_NOMEM, "transport mpi: out of memory for %zu receive bytes", cap);
        st = alltoallv_into(c, sbuf, send_counts, send_displs, recv_counts, recv_displs_p, c->priv, st, 0);
        if (st != MX_OK)
            return st;
        *recv_p = c->priv;
        return MX_OK;
    }
    if (c->all_single) {
        /* every rank alone on its host: nothing to copy beside the messages,
         * so the blocking MPI_Alltoallv (which carries the bytes to self too)
         * straight into the own region, without the window's barriers */
        mx_status_t st = MX_OK;
        if (total > c->cap) {
            win_close(c); /* collective over the node communicator: this rank alone */
            st = win_open(c, round_up((size_t)total + total / 4, ALIGN), c->ocap);
            if (st != MX_OK)
                return st; /* (no window: this transport cannot go on; the caller agrees on the failure) */
        }
        uint8_t *mine = c->base[0] + c->hdr_bytes;
        st = alltoallv_into(c, sbuf, send_counts, send_displs, recv_counts, recv_displs_p, mine, st, 0);
        c->ph.local_bytes += send_counts[c->rank];
        if (st != MX_OK)
            return st;
        *recv_p = mine;
        return MX_OK;
    }

    /* shared memory: steps 1 and 2 */
    double t0 = now_ms();
    mx_status_t st0 = shm_publish(c, total, 0, recv_displs_p, NULL, NULL);
    if (st0 != MX_OK)
        return st0;
    uint8_t *mine = c->base[c->local_rank] + c->hdr_bytes;
    MPI_Request req = MPI_REQUEST_NULL;
    mx_status_t st = MX_OK;
    double t1 = now_ms();
    c->ph.arrive_ms += t1 - t0;
    if (c->any_remote) {
        /* every rank of the job posts it (hosts partition the ranks), so it always matches */
        int fits = fill_int_counts(c, send_counts, send_displs, recv_counts, recv_displs_p, 1);
        if (!fits) {
            st = mx_error_set(MX_ERR_UNSUPPORTED,
                              "transport mpi: rank %d: a cross-host count or displacement exceeds INT_MAX bytes",
                              c->rank);
            for (int r = 0; r < c->size; r++)
                c->scounts[r] = c->rcounts[r] = c->sdispls[r] = c->rdispls[r] = 0;
        }
        rc = MPI_Ialltoallv(sbuf, c->scounts, c->sdispls, MPI_BYTE, mine, c->rcounts, c->rdispls, MPI_BYTE, c->comm,
                            &req);
        if (rc != MPI_SUCCESS && st == MX_OK)
            st = mpi_fail(rc, "MPI_Ialltoallv");
        for (int r = 0; r < c->size; r++)
            c->ph.remote_bytes += (uint64_t)c->scounts[r];
    }
    /* step 3 */
    double t1b = now_ms();
    c->ph.local_bytes += copy_local(c, sbuf, send_counts, send_displs, &req, &st);
    double t2 = now_ms();
    if (req != MPI_REQUEST_NULL) {
        rc = MPI_Wait(&req, MPI_STATUS_IGNORE);
        if (rc != MPI_SUCCESS && st == MX_OK)
            st = mpi_fail(rc, "MPI_Wait (Ialltoallv)");
    }
    double t3 = now_ms();
    /* step 4 */
    win_fence(c);
    double t4 = now_ms();
    c->ph.copy_ms += t2 - t1b;                 /* progressing the messages between pieces counts as copying */
    c->ph.remote_ms += (t1b - t1) + (t3 - t2); /* posting the messages and waiting for them */
    c->ph.depart_ms += t4 - t3;
    if (st != MX_OK)
        return st;
    *recv_p = mine;
    return MX_OK;
}

static void mpi_phases(void *ctx, mx_transport_stats_t *s, int reset)
{
    mpi_ctx_t *c = ctx;
    if (s) {
        s->arrive_ms += c->ph.arrive_ms;
        s->copy_ms += c->ph.copy_ms;
        s->remote_ms += c->ph.remote_ms;
        s->depart_ms += c->ph.depart_ms;
        s->local_bytes += c->ph.local_bytes;
        s->remote_bytes += c->ph.remote_bytes;
    }
    if (reset)
        memset(&c->ph, 0, sizeof c->ph);
}

/* ---------------------------------------------------------------- zero-copy rounds */

static int mpi_zero_copy(const void *ctx)
{
    const mpi_ctx_t *c = ctx;
    return c->mode == MX_EXCHANGE_SHM && !c->all_single;
}

/* The cross-host pairs of a zero-copy round (every rank of the job calls it,
 * hosts partition the ranks, so it always matches). */
static mx_status_t cross_host(mpi_ctx_t *c, const uint8_t *sbuf, const size_t *sc, const size_t *sd,
                              const size_t *rc, const size_t *rd, uint8_t *dst, mx_status_t st_in)
{
    return c->any_remote ? alltoallv_into(c, sbuf, sc, sd, rc, rd, dst, st_in, 1) : st_in;
}

static mx_status_t mpi_push_begin(void *ctx, const size_t *send_counts, const size_t *recv_counts, uint8_t **dst_p)
{
    mpi_ctx_t *c = ctx;
    size_t total = 0, staged = 0;
    for (int r = 0; r < c->size; r++) {
        c->zrd[r] = total;
        total += recv_counts[r];
        c->zrc[r] = recv_counts[r];
        c->zsc[r] = send_counts[r];
        c->zsd[r] = 0;
        if (c->local_of_world[r] < 0) {
            c->zsd[r] = staged;
            staged += send_counts[r];
        }
    }
    mx_status_t st = MX_OK;
    size_t cap;
    if (grow_buf(&c->stage, &c->stage_cap, staged, &cap) != 0) {
        /* still publish and take part: the peers are at the barrier */
        st = mx_error_set(MX_ERR_NOMEM, "transport mpi: out of memory for %zu cross-host bytes", cap);
        for (int r = 0; r < c->size; r++)
            if (c->local_of_world[r] < 0)
                c->zsc[r] = 0;
    }
    double t0 = now_ms();
    mx_status_t s2 = shm_publish(c, total, 0, c->zrd, NULL, NULL);
    c->ph.arrive_ms += now_ms() - t0;
    if (s2 != MX_OK) {
        for (int r = 0; r < c->size; r++)
            dst_p[r] = NULL;
        return s2; /* the window is gone: push_end has nothing collective left */
    }
    uint64_t local = 0;
    for (int r = 0; r < c->size; r++) {
        int j = c->local_of_world[r];
        dst_p[r] = NULL;
        if (!send_counts[r] || st != MX_OK)
            continue;
        if (j >= 0) {
            uint64_t off = ((volatile uint64_t *)c->base[j])[2 + c->local_rank];
            dst_p[r] = c->base[j] + c->hdr_bytes + off;
            local += send_counts[r];
        } else {
            dst_p[r] = c->stage + c->zsd[r];
        }
    }
    c->ph.local_bytes += local;
    /* a staging failure: the round is open all the same (push_end runs the
     * collectives, this rank sending nothing) */
    c->push_err = st;
    return st;
}

static mx_status_t mpi_push_end(void *ctx, const uint8_t **recv_p, size_t *recv_displs_p)
{
    mpi_ctx_t *c = ctx;
    if (!c->win_open)
        return mx_error_set(MX_ERR_TRANSPORT, "transport mpi: rank %d lost its shared window", c->rank);
    uint8_t *mine = c->base[c->local_rank] + c->hdr_bytes;
    mx_status_t st = cross_host(c, c->stage, c->zsc, c->zsd, c->zrc, c->zrd, mine, c->push_err);
    c->push_err = MX_OK;
    double t0 = now_ms();
    win_fence(c);
    c->ph.depart_ms += now_ms() - t0;
    memcpy(recv_displs_p, c->zrd, (size_t)c->size * sizeof(size_t));
    *recv_p = mine;
    return st;
}

static mx_status_t mpi_pull_begin(void *ctx, size_t bytes, const size_t *send_counts, const size_t *send_displs,
                                  const size_t *recv_counts, uint8_t **buf_p)
{
    mpi_ctx_t *c = ctx;
    size_t remote = 0;
    for (int r = 0; r < c->size; r++) {
        c->zsc[r] = send_counts[r];
        c->zsd[r] = send_displs[r];
        c->zrc[r] = recv_counts[r];
        c->zrd[r] = 0;
        if (c->local_of_world[r] < 0) {
            c->zrd[r] = remote;
            remote += recv_counts[r];
        }
    }
    double t0 = now_ms();
    c->pulls++;
    mx_status_t st = shm_publish(c, remote, bytes, NULL, c->zsd, c->zsc);
    c->ph.arrive_ms += now_ms() - t0;
    if (st != MX_OK) {
        *buf_p = NULL;
        return st; /* the window is gone: pull_end has nothing collective left */
    }
    *buf_p = c->base[c->local_rank] + c->hdr_bytes + c->cap;
    for (int j = 0; j < c->local_size; j++)
        c->ph.local_bytes += send_counts[c->world_of_local[j]];
    return MX_OK;
}

static mx_status_t mpi_pull_end(void *ctx, const uint8_t **src_p)
{
    mpi_ctx_t *c = ctx;
    if (!c->win_open)
        return mx_error_set(MX_ERR_TRANSPORT, "transport mpi: rank %d lost its shared window", c->rank);
    uint8_t *mine = c->base[c->local_rank] + c->hdr_bytes;
    double t0 = now_ms();
    win_fence(c); /* every reply is written */
    c->ph.depart_ms += now_ms() - t0;
    mx_status_t st = cross_host(c, mine + c->cap, c->zsc, c->zsd, c->zrc, c->zrd, mine, MX_OK);
    const int L = c->local_size;
    const size_t P = pull_words(c, c->pulls);
    for (int r = 0; r < c->size; r++) {
        int j = c->local_of_world[r];
        src_p[r] = NULL;
        if (!c->zrc[r])
            continue;
        if (j < 0) {
            src_p[r] = mine + c->zrd[r];
            continue;
        }
        volatile const uint64_t *h = (volatile const uint64_t *)c->base[j];
        uint64_t off = h[P + c->local_rank], n = h[P + L + c->local_rank];
        if (n != c->zrc[r] || off > c->ocap || n > c->ocap - off) {
            if (st == MX_OK)
                st = mx_error_set(MX_ERR_INTERNAL,
                                  "transport mpi: rank %d offers %llu bytes at %llu for rank %d, which expects %zu",
                                  r, (unsigned long long)n, (unsigned long long)off, c->rank, c->zrc[r]);
            continue;
        }
        src_p[r] = c->base[j] + c->hdr_bytes + c->cap + off;
    }
    return st;
}

static const mx_transport_ops_t mpi_ops = {
    .name = "mpi",
    .create = mpi_create,
    .destroy = mpi_destroy,
    .exchange_counts = mpi_exchange_counts,
    .exchange = mpi_exchange,
    .path = mpi_path,
    .phases = mpi_phases,
    .zero_copy = mpi_zero_copy,
    .push_begin = mpi_push_begin,
    .push_end = mpi_push_end,
    .pull_begin = mpi_pull_begin,
    .pull_end = mpi_pull_end,
    .set_host_hooks = mpi_set_host_hooks,
};

const mx_transport_ops_t *mx_transport_mpi_ops(void)
{
    return &mpi_ops;
}
