/* transport/: exchange correctness over MPI (run with mpiexec -n 1..8).
 * Every rank runs every test; collectives are never skipped by one rank (a
 * local check result is agreed with MPI_Allreduce before cmocka asserts), so a
 * failure shows as a failure, never as a hang. Seed printed on failure. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <mpi.h>

#include "mxep/transport.h"

#define SEED 20261123u

static int g_rank, g_size;

static uint64_t mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* bytes src sends to dst in round `round` (identical on both sides) */
static size_t pair_bytes(int src, int dst, int round, size_t max)
{
    uint64_t h = mix(SEED ^ ((uint64_t)src << 40) ^ ((uint64_t)dst << 20) ^ (uint64_t)round);
    if (h % 5 == 0)
        return 0; /* zero-size pairs are part of the job */
    return (size_t)(h >> 8) % (max + 1);
}

static uint8_t byte_of(int src, int dst, int round, size_t i)
{
    return (uint8_t)(mix(((uint64_t)src * 131 + (uint64_t)dst) * 1000003u + (uint64_t)round * 7919u + i) & 0xff);
}

/* The n bytes at p received from rank src in `round` (kind: "", "push " or
 * "pull "): 1 when each is byte_of's, else 0 after naming the first wrong one. */
static int piece_ok(const uint8_t *p, size_t n, int src, int round, const char *kind)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != byte_of(src, g_rank, round, i)) {
            fprintf(stderr, "rank %d %sround %d: byte %zu from rank %d wrong (seed %u)\n", g_rank, kind, round, i, src,
                    SEED);
            return 0;
        }
    return 1;
}

static int all_ok(int ok)
{
    int all = 0;
    MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    return all;
}

/* One round: counts, payload, check every received byte. Returns 1 if all correct here. */
static int run_round(mx_transport_h t, int round, size_t max)
{
    int n = g_size;
    size_t *sc = calloc((size_t)n, sizeof *sc), *sd = calloc((size_t)n, sizeof *sd);
    size_t *rc = calloc((size_t)n, sizeof *rc), *rd = calloc((size_t)n, sizeof *rd);
    size_t total = 0;
    /* send displacements deliberately not in rank order (reverse), with gaps */
    for (int d = n - 1; d >= 0; d--) {
        sc[d] = pair_bytes(g_rank, d, round, max);
        sd[d] = total;
        total += sc[d] + 3;
    }
    uint8_t *send = malloc(total + 1);
    memset(send, 0xA5, total + 1);
    for (int d = 0; d < n; d++)
        for (size_t i = 0; i < sc[d]; i++)
            send[sd[d] + i] = byte_of(g_rank, d, round, i);
    for (int s = 0; s < n; s++)
        rc[s] = (size_t)-1; /* poisoned: must be overwritten */
    int ok = 1;
    if (mx_transport_exchange_counts(t, sc, rc) != MX_OK)
        ok = 0;
    for (int s = 0; s < n && ok; s++)
        if (rc[s] != pair_bytes(s, g_rank, round, max)) {
            fprintf(stderr, "rank %d round %d: count from %d is %zu, expected %zu (seed %u)\n", g_rank, round, s, rc[s],
                    pair_bytes(s, g_rank, round, max), SEED);
            ok = 0;
        }
    if (!ok) { /* keep the collective sequence identical: exchange with the true counts anyway */
        for (int s = 0; s < n; s++)
            rc[s] = pair_bytes(s, g_rank, round, max);
    }
    const uint8_t *recv = NULL;
    if (mx_transport_exchange(t, send, sc, sd, rc, &recv, rd) != MX_OK) {
        fprintf(stderr, "rank %d: exchange failed: %s\n", g_rank, mx_error_detail());
        ok = 0;
    }
    size_t expect_displ = 0;
    for (int s = 0; s < n && recv; s++) {
        if (rd[s] != expect_displ) {
            fprintf(stderr, "rank %d: displ of %d is %zu, expected %zu\n", g_rank, s, rd[s], expect_displ);
            ok = 0;
            break;
        }
        expect_displ += rc[s];
        if (!piece_ok(recv + rd[s], rc[s], s, round, ""))
            ok = 0;
    }
    free(send);
    free(sc);
    free(sd);
    free(rc);
    free(rd);
    return ok;
}

/* MXEP_TRANSPORT_HOSTS=K: the ranks pretend to sit on K hosts (cross-host path on one machine) */
static int fake_hosts(void)
{
    const char *e = getenv("MXEP_TRANSPORT_HOSTS");
    return e && atoi(e) > 1 && g_size > 1;
}

static void exchange_rounds_t(mx_exchange_mode_t mode, size_t initial, size_t max, int rounds, int threads)
{
    mx_transport_opts_t o = {.mode = mode, .initial_bytes = initial, .copy_threads = threads};
    mx_transport_h t = NULL;
    mx_status_t st = mx_transport_create(mx_transport_mpi_ops(), MPI_COMM_WORLD, &o, &t);
    if (mode == MX_EXCHANGE_SHM && fake_hosts()) {
        /* shared memory only is refused when some peer is on another host */
        assert_int_equal(all_ok(st == MX_ERR_UNSUPPORTED), 1);
        assert_non_null(strstr(mx_error_detail(), "one host"));
        assert_null(t);
        return;
    }
    assert_int_equal(all_ok(st == MX_OK), 1);
    assert_int_equal(mx_transport_size(t), g_size);
    assert_int_equal(mx_transport_rank(t), g_rank);
    assert_string_equal(mx_transport_name(t), "mpi");
    int ok = 1;
    for (int r = 0; r < rounds; r++)
        ok &= run_round(t, r, max);
    mx_transport_destroy(t);
    assert_int_equal(all_ok(ok), 1);
}

static void exchange_rounds(mx_exchange_mode_t mode, size_t initial, size_t max, int rounds)
{
    exchange_rounds_t(mode, initial, max, rounds, 1);
}

static void test_exchange_auto_delivers_random_sizes_with_zeros(void **state)
{
    (void)state;
    exchange_rounds(MX_EXCHANGE_AUTO, 0, 5000, 6);
}

static void test_exchange_alltoallv_delivers_random_sizes_with_zeros(void **state)
{
    (void)state;
    exchange_rounds(MX_EXCHANGE_ALLTOALLV, 0, 5000, 6);
}

static void test_exchange_shm_grows_window_past_initial_capacity(void **state)
{
    (void)state;
    /* 256-byte initial regions, pairs up to 200 KB: the window must grow, several times */
    exchange_rounds(MX_EXCHANGE_SHM, 256, 200000, 5);
}

static void test_exchange_alltoallv_grows_private_buffer(void **state)
{
    (void)state;
    exchange_rounds(MX_EXCHANGE_ALLTOALLV, 64, 200000, 3);
}

/* the copies within a host split over 3 threads (pieces that cut peers' bytes
 * anywhere), with non-temporal stores (the default for large pieces) and with
 * plain memcpy (MXEP_SHM_COPY=memcpy): the same bytes arrive */
static void test_exchange_split_and_streaming_copies_deliver_the_same_bytes(void **state)
{
    (void)state;
    exchange_rounds_t(MX_EXCHANGE_AUTO, 0, 300001, 3, 3);
    exchange_rounds_t(MX_EXCHANGE_AUTO, 0, 300001, 3, 2);
    setenv("MXEP_SHM_COPY", "memcpy", 1);
    exchange_rounds_t(MX_EXCHANGE_AUTO, 0, 300001, 3, 1);
    exchange_rounds_t(MX_EXCHANGE_AUTO, 0, 300001, 3, 2);
    unsetenv("MXEP_SHM_COPY");
}

/* A push round (dispatch-like): the bytes are written where push_begin says,
 * then push_end delivers them as exchange() does. Returns 1 if all correct here. */
static int push_round(mx_transport_h t, int round, size_t max)
{
    int n = g_size, ok = 1;
    size_t *sc = calloc((size_t)n, sizeof *sc), *rc = calloc((size_t)n, sizeof *rc);
    size_t *rd = calloc((size_t)n, sizeof *rd);
    uint8_t **dst = calloc((size_t)n, sizeof *dst);
    for (int d = 0; d < n; d++)
        sc[d] = pair_bytes(g_rank, d, round, max);
    if (mx_transport_exchange_counts(t, sc, rc) != MX_OK)
        ok = 0;
    mx_status_t st = mx_transport_push_begin(t, sc, rc, dst);
    if (st != MX_OK) {
        fprintf(stderr, "rank %d: push_begin failed: %s\n", g_rank, mx_error_detail());
        ok = 0;
    }
    for (int d = 0; d < n && st == MX_OK; d++) {
        if ((sc[d] == 0) != (dst[d] == NULL)) {
            fprintf(stderr, "rank %d round %d: push place for %d is %p for %zu bytes\n", g_rank, round, d,
                    (void *)dst[d], sc[d]);
            ok = 0;
            continue;
        }
        for (size_t i = 0; i < sc[d]; i++)
            dst[d][i] = byte_of(g_rank, d, round, i);
    }
    const uint8_t *recv = NULL;
    if (mx_transport_push_end(t, &recv, rd) != MX_OK) {
        fprintf(stderr, "rank %d: push_end failed: %s\n", g_rank, mx_error_detail());
        ok = 0;
    }
    size_t expect = 0;
    for (int s = 0; s < n && ok; s++) {
        ok &= rd[s] == expect;
        expect += rc[s];
        ok = ok && piece_ok(recv + rd[s], rc[s], s, round, "push ");
    }
    free(sc);
    free(rc);
    free(rd);
    free(dst);
    return ok;
}

/* Host-memory hooks (mx_transport_set_host_hooks): the live buffers they were
 * told about; every on_free names a live one, no buffer is announced twice. */
#define MAX_LIVE 16
static struct {
    void *p;
    size_t n;
} g_live[MAX_LIVE];
static int g_n_live, g_hook_errors, g_allocs, g_hooks_on;

static void hook_alloc(void *ctx, void *p, size_t n)
{
    (void)ctx;
    g_allocs++;
    for (int i = 0; i < g_n_live; i++)
        if (g_live[i].p == p)
            g_hook_errors++;
    if (!p || !n || g_n_live == MAX_LIVE) {
        g_hook_errors++;
        return;
    }
    g_live[g_n_live].p = p;
    g_live[g_n_live++].n = n;
}

static void hook_free(void *ctx, void *p)
{
    (void)ctx;
    for (int i = 0; i < g_n_live; i++)
        if (g_live[i].p == p) {
            g_live[i] = g_live[--g_n_live];
            return;
        }
    g_hook_errors++;
}

/* 1 when [p, p + n) lies in a buffer the hooks were told about */
static int in_live(const void *p, size_t n)
{
    for (int i = 0; i < g_n_live; i++)
        if ((const uint8_t *)p >= (const uint8_t *)g_live[i].p &&
            (const uint8_t *)p + n <= (const uint8_t *)g_live[i].p + g_live[i].n)
            return 1;
    return 0;
}

/* A pull round (combine-like): every piece written into the one buffer
 * pull_begin gives (pieces in reverse rank order, with gaps), then each rank
 * reads its pieces where pull_end says. */
static int pull_round(mx_transport_h t, int round, size_t max)
{
    int n = g_size, ok = 1;
    size_t *sc = calloc((size_t)n, sizeof *sc), *sd = calloc((size_t)n, sizeof *sd);
    size_t *rc = calloc((size_t)n, sizeof *rc);
    const uint8_t **src = calloc((size_t)n, sizeof *src);
    size_t bytes = 0;
    for (int d = n - 1; d >= 0; d--) {
        sc[d] = pair_bytes(g_rank, d, round, max);
        sd[d] = bytes;
        bytes += sc[d] + 5;
    }
    for (int s = 0; s < n; s++)
        rc[s] = pair_bytes(s, g_rank, round, max);
    uint8_t *buf = NULL;
    mx_status_t st = mx_transport_pull_begin(t, bytes, sc, sd, rc, &buf);
    if (st != MX_OK) {
        fprintf(stderr, "rank %d: pull_begin failed: %s\n", g_rank, mx_error_detail());
        ok = 0;
    }
    if (st == MX_OK && g_hooks_on && bytes && !in_live(buf, bytes)) {
        fprintf(stderr, "rank %d pull round %d: the %zu-byte buffer was never announced to the host hooks\n", g_rank,
                round, bytes);
        ok = 0;
    }
    for (int d = 0; d < n && st == MX_OK; d++)
        for (size_t i = 0; i < sc[d]; i++)
            buf[sd[d] + i] = byte_of(g_rank, d, round, i);
    if (mx_transport_pull_end(t, src) != MX_OK) {
        fprintf(stderr, "rank %d: pull_end failed: %s\n", g_rank, mx_error_detail());
        ok = 0;
    }
    for (int s = 0; s < n && ok; s++) {
        if ((rc[s] == 0) != (src[s] == NULL)) {
            fprintf(stderr, "rank %d pull round %d: piece of %d is %p for %zu bytes\n", g_rank, round, s,
                    (const void *)src[s], rc[s]);
            ok = 0;
            break;
        }
        ok = ok && piece_ok(src[s], rc[s], s, round, "pull ");
    }
    free(sc);
    free(sd);
    free(rc);
    free(src);
    return ok;
}

/* An MPI transport handle in `mode` on every rank, or NULL where the mode
 * cannot be had (the shared-memory mode across pretend hosts: refused on
 * every rank, as it must be). */
static mx_transport_h open_or_refused(mx_exchange_mode_t mode, size_t initial)
{
    mx_transport_opts_t o = {.mode = mode, .initial_bytes = initial};
    mx_transport_h t = NULL;
    mx_status_t st = mx_transport_create(mx_transport_mpi_ops(), MPI_COMM_WORLD, &o, &t);
    if (mode == MX_EXCHANGE_SHM && fake_hosts()) {
        assert_int_equal(all_ok(st == MX_ERR_UNSUPPORTED), 1);
        return NULL;
    }
    assert_int_equal(all_ok(st == MX_OK), 1);
    return t;
}

/* push, pull and plain rounds in turn on one handle, the window growing
 * from tiny regions: the same bytes arrive on every path */
static void zero_copy_rounds(mx_exchange_mode_t mode, size_t initial, size_t max)
{
    mx_transport_h t = open_or_refused(mode, initial);
    if (!t)
        return;
    /* native wherever the window serves more than one rank */
    int native = mode != MX_EXCHANGE_ALLTOALLV && g_size > 1 &&
                 !(fake_hosts() && atoi(getenv("MXEP_TRANSPORT_HOSTS")) >= g_size);
    int ok = mx_transport_zero_copy(t) == native;
    if (!ok)
        fprintf(stderr, "rank %d: zero_copy %d, expected %d\n", g_rank, mx_transport_zero_copy(t), native);
    for (int r = 0; r < 4; r++) {
        ok &= push_round(t, 200 + r, max);
        ok &= pull_round(t, 300 + r, max);
        if (r == 1)
            ok &= run_round(t, 400 + r, max); /* a plain exchange between them */
    }
    ok &= pull_round(t, 500, max); /* two pulls in a row */
    ok &= pull_round(t, 501, max * 2);
    ok &= push_round(t, 502, max * 2);
    mx_transport_destroy(t);
    assert_int_equal(all_ok(ok), 1);
}

static void test_push_and_pull_rounds_deliver_the_same_bytes_on_every_path(void **state)
{
    (void)state;
    zero_copy_rounds(MX_EXCHANGE_AUTO, 0, 5000);
    zero_copy_rounds(MX_EXCHANGE_ALLTOALLV, 0, 5000);
    zero_copy_rounds(MX_EXCHANGE_SHM, 256, 100000); /* grows, several times */
    zero_copy_rounds(MX_EXCHANGE_ALLTOALLV, 64, 100000);
}

/* The host hooks hear of every buffer a pull hands out, on every path and as
 * the buffers grow (installed before the first round, or after some), and of
 * each buffer's end: none is left when the handle is gone. */
static void hook_rounds(mx_exchange_mode_t mode, size_t initial, size_t max, int late)
{
    mx_transport_h t = open_or_refused(mode, initial);
    if (!t)
        return;
    const mx_host_hooks_t h = {.on_alloc = hook_alloc, .on_free = hook_free, .ctx = NULL};
    g_n_live = g_hook_errors = g_allocs = 0;
    int ok = 1;
    if (late)
        ok &= pull_round(t, 600, max / 4);
    mx_transport_set_host_hooks(t, &h);
    mx_transport_set_host_hooks(t, &h); /* once per handle: the second is ignored */
    g_hooks_on = 1;
    for (int r = 0; r < 3; r++) {
        ok &= pull_round(t, 610 + r, max << r); /* grows */
        ok &= push_round(t, 620 + r, max << r);
    }
    g_hooks_on = 0;
    mx_transport_destroy(t);
    if (g_n_live || g_hook_errors || !g_allocs) {
        fprintf(stderr, "rank %d mode %d: %d buffers announced, %d still live after destroy, %d hook errors\n", g_rank,
                (int)mode, g_allocs, g_n_live, g_hook_errors);
        ok = 0;
    }
    assert_int_equal(all_ok(ok), 1);
}

static void test_host_hooks_hear_of_every_pull_buffer_and_its_end(void **state)
{
    (void)state;
    for (int late = 0; late < 2; late++) {
        hook_rounds(MX_EXCHANGE_AUTO, 0, 5000, late);
        hook_rounds(MX_EXCHANGE_ALLTOALLV, 64, 5000, late);
        hook_rounds(MX_EXCHANGE_SHM, 256, 20000, late);
    }
}

/* rounds out of order are refused locally, before anything collective */
static void test_push_and_pull_rounds_must_pair(void **state)
{
    (void)state;
    mx_transport_h t = NULL;
    assert_int_equal(all_ok(mx_transport_create(mx_transport_mpi_ops(), MPI_COMM_WORLD, NULL, &t) == MX_OK), 1);
    const uint8_t *recv = NULL;
    const uint8_t **src = calloc((size_t)g_size, sizeof *src);
    size_t *z = calloc((size_t)g_size, sizeof *z);
    uint8_t **dst = calloc((size_t)g_size, sizeof *dst);
    int ok = mx_transport_push_end(t, &recv, z) == MX_ERR_INVALID;
    ok &= strstr(mx_error_detail(), "no push round") != NULL;
    ok &= mx_transport_pull_end(t, src) == MX_ERR_INVALID;
    ok &= mx_transport_push_begin(t, z, z, NULL) == MX_ERR_INVALID;
    ok &= mx_transport_push_begin(t, z, z, dst) == MX_OK;
    ok &= mx_transport_pull_begin(t, 0, z, z, z, &dst[0]) == MX_ERR_INVALID; /* the push is open */
    ok &= strstr(mx_error_detail(), "not ended") != NULL;
    ok &= mx_transport_pull_end(t, src) == MX_ERR_INVALID;
    ok &= mx_transport_push_end(t, &recv, z) == MX_OK;
    mx_transport_destroy(t);
    free(src);
    free(z);
    free(dst);
    assert_int_equal(all_ok(ok), 1);
}

static void test_exchange_all_zero_counts(void **state)
{
    (void)state;
    mx_transport_h t = NULL;
    assert_int_equal(all_ok(mx_transport_create(mx_transport_mpi_ops(), MPI_COMM_WORLD, NULL, &t) == MX_OK), 1);
    size_t *z = calloc((size_t)g_size, sizeof *z), *rc = malloc((size_t)g_size * sizeof *rc);
    size_t *rd = malloc((size_t)g_size * sizeof *rd);
    for (int i = 0; i < g_size; i++)
        rc[i] = 77;
    int ok = mx_transport_exchange_counts(t, z, rc) == MX_OK;
    for (int i = 0; i < g_size; i++)
        ok &= rc[i] == 0;
    const uint8_t *recv = NULL;
    ok &= mx_transport_exchange(t, NULL, z, z, z, &recv, rd) == MX_OK;
    for (int i = 0; i < g_size; i++)
        ok &= rd[i] == 0;
    mx_transport_destroy(t);
    free(z);
    free(rc);
    free(rd);
    assert_int_equal(all_ok(ok), 1);
}

static void test_exchange_path_matches_mode(void **state)
{
    (void)state;
    mx_transport_opts_t o = {.mode = MX_EXCHANGE_ALLTOALLV};
    mx_transport_h t = NULL;
    assert_int_equal(all_ok(mx_transport_create(mx_transport_mpi_ops(), MPI_COMM_WORLD, &o, &t) == MX_OK), 1);
    assert_string_equal(mx_transport_path(t), "alltoallv");
    mx_transport_destroy(t);
    o.mode = MX_EXCHANGE_AUTO;
    assert_int_equal(all_ok(mx_transport_create(mx_transport_mpi_ops(), MPI_COMM_WORLD, &o, &t) == MX_OK), 1);
    /* mpiexec on one machine: every rank shares the host, unless pretending otherwise */
    assert_string_equal(mx_transport_path(t), fake_hosts() ? "shm+alltoallv" : "shm");
    mx_transport_destroy(t);
}

/* the stats count the calls, split the bytes by path and reset */
static void stats_rounds(mx_exchange_mode_t mode)
{
    mx_transport_opts_t o = {.mode = mode};
    mx_transport_h t = NULL;
    assert_int_equal(all_ok(mx_transport_create(mx_transport_mpi_ops(), MPI_COMM_WORLD, &o, &t) == MX_OK), 1);
    int hosts = fake_hosts() ? atoi(getenv("MXEP_TRANSPORT_HOSTS")) : 1;
    if (hosts > g_size)
        hosts = g_size;
    uint64_t local = 0, remote = 0;
    int ok = 1, rounds = 3;
    for (int r = 0; r < rounds; r++) {
        ok &= run_round(t, 100 + r, 5000);
        for (int d = 0; d < g_size; d++) {
            size_t b = pair_bytes(g_rank, d, 100 + r, 5000);
            int same_host = (long)d * hosts / g_size == (long)g_rank * hosts / g_size;
            if (mode == MX_EXCHANGE_ALLTOALLV)
                remote += d == g_rank ? 0 : b;
            else if (same_host)
                local += b;
            else
                remote += b;
        }
    }
    mx_transport_stats_t s;
    memset(&s, 0xff, sizeof s);
    mx_transport_stats(t, &s, 1);
    ok &= s.exchanges == (uint64_t)rounds && s.counts == (uint64_t)rounds;
    ok &= s.local_bytes == local && s.remote_bytes == remote;
    double parts = s.arrive_ms + s.copy_ms + s.remote_ms + s.depart_ms;
    ok &= s.arrive_ms >= 0 && s.copy_ms >= 0 && s.remote_ms >= 0 && s.depart_ms >= 0 && s.counts_ms >= 0;
    ok &= parts <= s.total_ms + 1e-3;
    if (!ok)
        fprintf(stderr,
                "rank %d: stats %llu exchanges, %llu counts, local %llu (expected %llu), remote %llu (expected "
                "%llu), phases %.4f of %.4f ms\n",
                g_rank, (unsigned long long)s.exchanges, (unsigned long long)s.counts,
                (unsigned long long)s.local_bytes, (unsigned long long)local, (unsigned long long)s.remote_bytes,
                (unsigned long long)remote, parts, s.total_ms);
    mx_transport_stats(t, &s, 0);
    ok &= s.exchanges == 0 && s.counts == 0 && s.local_bytes == 0 && s.remote_bytes == 0 && s.total_ms == 0 &&
          s.copy_ms == 0;
    mx_transport_destroy(t);
    assert_int_equal(all_ok(ok), 1);
}

static void test_exchange_stats_count_calls_and_bytes_per_path(void **state)
{
    (void)state;
    stats_rounds(MX_EXCHANGE_AUTO);
    stats_rounds(MX_EXCHANGE_ALLTOALLV);
}

static void test_exchange_mode_parse_names_bad_text(void **state)
{
    (void)state;
    mx_exchange_mode_t m = MX_EXCHANGE_AUTO;
    assert_int_equal(mx_exchange_mode_parse("SHM", &m), MX_OK);
    assert_int_equal(m, MX_EXCHANGE_SHM);
    assert_int_equal(mx_exchange_mode_parse("alltoallv", &m), MX_OK);
    assert_int_equal(m, MX_EXCHANGE_ALLTOALLV);
    m = MX_EXCHANGE_SHM;
    assert_int_equal(mx_exchange_mode_parse("nccl", &m), MX_ERR_INVALID);
    assert_int_equal(m, MX_EXCHANGE_SHM); /* untouched */
    assert_non_null(strstr(mx_error_detail(), "nccl"));
    assert_string_equal(mx_exchange_mode_name(MX_EXCHANGE_AUTO), "auto");
}

static void test_transport_rejects_null_arguments(void **state)
{
    (void)state;
    mx_transport_h t = (mx_transport_h)0x1;
    assert_int_equal(mx_transport_create(NULL, MPI_COMM_WORLD, NULL, &t), MX_ERR_INVALID);
    assert_ptr_equal(t, (mx_transport_h)0x1);
    assert_int_equal(mx_transport_exchange_counts(NULL, NULL, NULL), MX_ERR_INVALID);
    assert_int_equal(mx_transport_exchange(NULL, NULL, NULL, NULL, NULL, NULL, NULL), MX_ERR_INVALID);
    assert_null(mx_transport_find("carrier-pigeon"));
    assert_ptr_equal(mx_transport_find("mpi"), mx_transport_mpi_ops());
    mx_transport_destroy(NULL);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g_size);
    if (g_rank == 0)
        printf("test_transport_exchange: %d ranks, seed %u\n", g_size, SEED);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exchange_auto_delivers_random_sizes_with_zeros),
        cmocka_unit_test(test_exchange_alltoallv_delivers_random_sizes_with_zeros),
        cmocka_unit_test(test_exchange_shm_grows_window_past_initial_capacity),
        cmocka_unit_test(test_exchange_alltoallv_grows_private_buffer),
        cmocka_unit_test(test_exchange_split_and_streaming_copies_deliver_the_same_bytes),
        cmocka_unit_test(test_exchange_all_zero_counts),
        cmocka_unit_test(test_push_and_pull_rounds_deliver_the_same_bytes_on_every_path),
        cmocka_unit_test(test_push_and_pull_rounds_must_pair),
        cmocka_unit_test(test_host_hooks_hear_of_every_pull_buffer_and_its_end),
        cmocka_unit_test(test_exchange_path_matches_mode),
        cmocka_unit_test(test_exchange_stats_count_calls_and_bytes_per_path),
        cmocka_unit_test(test_exchange_mode_parse_names_bad_text),
        cmocka_unit_test(test_transport_rejects_null_arguments),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    int any = 0;
    MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    MPI_Finalize();
    return any ? 1 : 0;
}
