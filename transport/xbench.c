/* mx_transport_bench: the exchange alone, on the byte counts of a MoE layer
 * with uniform routing (no weights, no kernels), beside a plain MPI_Alltoallv
 * of the same bytes and every rank memcpy'ing its bytes at once.
 *
 *   mpirun -n 8 mx_transport_bench [--tokens 128] [--hidden 7168] [--experts 256]
 *                                  [--topk 8] [--iters 50] [--exchange auto|alltoallv|shm]
 *                                  [--threads 1] [--flush MB]
 *
 * Both exchanges do what a layer does: the dispatch exchanges the counts, then
 * the payload; the combine only the payload (its sizes are known). The plain
 * MPI_Alltoallv is the MPI transport in alltoallv mode (MPI_Alltoall of the
 * counts, MPI_Alltoallv into a private buffer). --threads N: threads that copy
 * within a host (the mxworker default is the rank's share of its host).
 * --flush MB: before every repetition each rank writes MB MiB of its own
 * memory, so the exchanges start with cold caches, as they do after a layer's
 * compute (default 0: warm, the same buffers again and again).
 *
 * Defaults are DeepEP's low-latency shape: per rank 128 tokens, FP8 dispatch
 * (7168 bytes + one float scale per 128, once per (token, destination rank)),
 * BF16 combine (one row of 2 x 7168 bytes per (token, expert)). Wire sizes
 * follow coordinator.h (32-byte header, 4 + 8 bytes of bookkeeping per entry). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mpi.h>

#include "mxep/transport.h"

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

static uint64_t mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static int cmpd(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* median over reps of the slowest rank */
static double slowest_median(double *t, int reps, MPI_Comm comm)
{
    double *m = malloc((size_t)reps * sizeof *m);
    MPI_Allreduce(t, m, reps, MPI_DOUBLE, MPI_MAX, comm);
    qsort(m, (size_t)reps, sizeof *m, cmpd);
    double r = m[reps / 2];
    free(m);
    return r;
}

int main(int argc, char **argv)
{
    int provided = 0; /* copies may run on several threads; only this one calls MPI */
    MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    long tokens = 128, hidden = 7168, experts = 256, topk = 8, iters = 50, threads = 1, flush_mb = 0;
    mx_exchange_mode_t mode = MX_EXCHANGE_AUTO;
    for (int i = 1; i + 1 < argc; i += 2) {
        long v = atol(argv[i + 1]);
        if (!strcmp(argv[i], "--tokens"))
            tokens = v;
        else if (!strcmp(argv[i], "--hidden"))
            hidden = v;
        else if (!strcmp(argv[i], "--experts"))
            experts = v;
        else if (!strcmp(argv[i], "--topk"))
            topk = v;
        else if (!strcmp(argv[i], "--iters"))
            iters = v;
        else if (!strcmp(argv[i], "--threads"))
            threads = v;
        else if (!strcmp(argv[i], "--flush"))
            flush_mb = v;
        else if (!strcmp(argv[i], "--exchange")) {
            if (mx_exchange_mode_parse(argv[i + 1], &mode) != MX_OK) {
                if (!rank)
                    fprintf(stderr, "%s\n", mx_error_detail());
                MPI_Finalize();
                return 2;
            }
        } else {
            if (!rank)
                fprintf(stderr, "unknown option %s\n", argv[i]);
            MPI_Finalize();
            return 2;
        }
    }
    if (tokens < 0 || hidden < 1 || experts < size || size > 4096 || topk < 1 || topk > experts || topk > 64 ||
        iters < 1 || threads < 1 || threads > 256 || flush_mb < 0 || flush_mb > 65536) {
        if (!rank)
            fprintf(stderr, "bad sizes (need experts >= ranks, 1 <= topk <= experts)\n");
        MPI_Finalize();
        return 2;
    }
    size_t R = (size_t)size, per_rank = (size_t)(experts / size);
    size_t *dsc = calloc(R, sizeof(size_t)), *csc = calloc(R, sizeof(size_t)), *sd = calloc(R, sizeof(size_t));
    size_t *rc = calloc(R, sizeof(size_t)), *rd = calloc(R, sizeof(size_t));
    size_t *copies = calloc(R, sizeof(size_t)), *entries = calloc(R, sizeof(size_t));
    size_t row = ((size_t)hidden + (((size_t)hidden + 127) / 128) * 4 + 15) / 16 * 16; /* FP8 row */
    for (long t = 0; t < tokens; t++) {
        int hit[4096] = {0};
        int chosen[64];
        uint64_t s = mix(((uint64_t)rank << 32) ^ (uint64_t)t);
        for (int j = 0; j < topk && j < 64;) {
            s = mix(s);
            int e = (int)(s % (uint64_t)experts), dup = 0;
            for (int q = 0; q < j; q++)
                dup |= chosen[q] == e;
            if (dup)
                continue; /* draw again: k distinct experts */
            chosen[j++] = e;
            size_t d = (size_t)e / per_rank < R ? (size_t)e / per_rank : R - 1;
            entries[d]++;
            if (!hit[d]++)
                copies[d]++;
        }
    }
    size_t dtot = 0, ctot = 0;
    for (size_t d = 0; d < R; d++) {
        if (copies[d])
            dsc[d] = 32 + copies[d] * 4 + entries[d] * 8;
        dsc[d] = (dsc[d] + 15) / 16 * 16 + copies[d] * row;
        csc[d] = entries[d] * 2 * (size_t)hidden;
        dtot += dsc[d];
        ctot += csc[d];
    }
    size_t big = dtot > ctot ? dtot : ctot;
    uint8_t *send = malloc(big + 1);
    for (size_t i = 0; i < big; i++)
        send[i] = (uint8_t)mix(i);
    mx_transport_h tr = NULL, plain = NULL;
    mx_transport_opts_t o = {.mode = mode, .copy_threads = (int)threads};
    mx_transport_opts_t po = {.mode = MX_EXCHANGE_ALLTOALLV};
    if (mx_transport_create(mx_transport_mpi_ops(), MPI_COMM_WORLD, &o, &tr) != MX_OK ||
        mx_transport_create(mx_transport_mpi_ops(), MPI_COMM_WORLD, &po, &plain) != MX_OK) {
        fprintf(stderr, "rank %d: %s\n", rank, mx_error_detail());
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    size_t flush_bytes = (size_t)flush_mb << 20;
    uint8_t *flush = flush_bytes ? malloc(flush_bytes) : NULL;
    if (flush_bytes && !flush) {
        fprintf(stderr, "rank %d: cannot allocate --flush %ld MiB\n", rank, flush_mb);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    int reps = (int)iters, warm = 5;
    double *td = calloc((size_t)reps, sizeof(double)), *tc = calloc((size_t)reps, sizeof(double));
    double *ad = calloc((size_t)reps, sizeof(double)), *ac = calloc((size_t)reps, sizeof(double));
    double *mc = calloc((size_t)reps, sizeof(double));
    const uint8_t *recv = NULL;
    /* ours, then plain MPI_Alltoallv: the dispatch with its counts round, the
     * combine without; each repetition timed from a barrier */
    mx_transport_stats_t xs[2];
    for (int phase = 0; phase < 2; phase++) {
        size_t *sc = phase ? csc : dsc;
        size_t off = 0;
        for (size_t d = 0; d < R; d++) {
            sd[d] = off;
            off += sc[d];
        }
        mx_transport_exchange_counts(tr, sc, rc);
        mx_transport_exchange_counts(plain, sc, rc);
        /* ours and plain take turns, one repetition each (the first alternating),
         * so that a slow spell of the machine hits both alike */
        for (int i = -warm; i < reps; i++) {
            if (i == 0)
                mx_transport_stats(tr, NULL, 1); /* the split of the timed repetitions only */
            for (int k = 0; k < 2; k++) {
                int which = (i & 1) ? 1 - k : k;
                mx_transport_h t = which ? plain : tr;
                double *tt = which ? (phase ? ac : ad) : (phase ? tc : td);
                if (flush)
                    memset(flush, i & 0xff, flush_bytes);
                MPI_Barrier(MPI_COMM_WORLD);
                double t0 = now_ms();
                mx_status_t st = phase ? MX_OK : mx_transport_exchange_counts(t, sc, rc);
                if (st == MX_OK)
                    st = mx_transport_exchange(t, send, sc, sd, rc, &recv, rd);
                double dt = now_ms() - t0;
                if (st != MX_OK) {
                    fprintf(stderr, "rank %d: %s\n", rank, mx_error_detail());
                    MPI_Abort(MPI_COMM_WORLD, 1);
                }
                if (i >= 0)
                    tt[i] = dt;
            }
        }
        mx_transport_stats(tr, &xs[phase], 1);
    }
    /* where our exchange's time went: mean per repetition over the ranks */
    double split[2][5], split_sum[2][5];
    for (int ph = 0; ph < 2; ph++) {
        double k = 1.0 / (double)reps;
        split[ph][0] = xs[ph].arrive_ms * k;
        split[ph][1] = xs[ph].copy_ms * k;
        split[ph][2] = xs[ph].remote_ms * k;
        split[ph][3] = xs[ph].depart_ms * k;
        split[ph][4] = xs[ph].counts_ms * k;
    }
    MPI_Reduce(split, split_sum, 10, MPI_DOUBLE, MPI_SUM, 0, MPI_COMM_WORLD);
    /* memcpy of the same bytes (dispatch + combine), every rank at once */
    uint8_t *dst = malloc(dtot + ctot + 1), *src = malloc(dtot + ctot + 1);
    memset(src, 1, dtot + ctot + 1);
    memset(dst, 0, dtot + ctot + 1);
    for (int i = -warm; i < reps; i++) {
        if (flush)
            memset(flush, i & 0xff, flush_bytes);
        MPI_Barrier(MPI_COMM_WORLD);
        double t0 = now_ms();
        memcpy(dst, src, dtot + ctot);
        double dt = now_ms() - t0;
        if (i >= 0)
            mc[i] = dt;
    }
    double od = slowest_median(td, reps, MPI_COMM_WORLD), oc = slowest_median(tc, reps, MPI_COMM_WORLD);
    double pd = slowest_median(ad, reps, MPI_COMM_WORLD), pc = slowest_median(ac, reps, MPI_COMM_WORLD);
    double mm = slowest_median(mc, reps, MPI_COMM_WORLD);
    unsigned long long mine[2] = {dtot, ctot}, mx[2];
    MPI_Reduce(mine, mx, 2, MPI_UNSIGNED_LONG_LONG, MPI_MAX, 0, MPI_COMM_WORLD);
    if (!rank) {
        printf("mx_transport_bench: %d ranks, %ld tokens/rank, H %ld, %ld experts top-%ld, path %s, %ld iters "
               "(median of the slowest rank), %ld copy thread%s, %s caches%s\n",
               size, tokens, hidden, experts, topk, mx_transport_path(tr), iters, threads, threads > 1 ? "s" : "",
               flush ? "cold" : "warm", getenv("MXEP_SHM_COPY") ? ", MXEP_SHM_COPY set" : "");
        printf("  bytes per rank (max): dispatch %.2f MB (fp8), combine %.2f MB (bf16)\n", mx[0] / 1e6, mx[1] / 1e6);
        printf("  mxep           dispatch %7.3f ms  combine %7.3f ms  total %7.3f ms  (%.2f GB/s per rank)\n", od, oc,
               od + oc, (mx[0] + mx[1]) / 1e6 / (od + oc));
        printf("  MPI_Alltoallv  dispatch %7.3f ms  combine %7.3f ms  total %7.3f ms  (%.2f GB/s per rank)\n", pd, pc,
               pd + pc, (mx[0] + mx[1]) / 1e6 / (pd + pc));
        printf("  memcpy         %7.3f ms (same bytes, every rank at once)\n", mm);
        for (int ph = 0; ph < 2; ph++)
            printf("  mxep %-9s split, mean over ranks: arrive %.3f copies %.3f messages %.3f finish %.3f counts %.3f "
                   "ms\n",
                   ph ? "combine" : "dispatch", split_sum[ph][0] / size, split_sum[ph][1] / size,
                   split_sum[ph][2] / size, split_sum[ph][3] / size, split_sum[ph][4] / size);
        printf("  speedup vs MPI_Alltoallv %.2fx; mxep / memcpy %.2fx\n", (pd + pc) / (od + oc), (od + oc) / mm);
    }
    mx_transport_destroy(tr);
    mx_transport_destroy(plain);
    free(flush);
    free(send);
    free(dst);
    free(src);
    free(td);
    free(tc);
    free(ad);
    free(ac);
    free(mc);
    free(dsc);
    free(csc);
    free(sd);
    free(rc);
    free(rd);
    free(copies);
    free(entries);
    MPI_Finalize();
    return 0;
}
