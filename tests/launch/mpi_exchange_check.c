/* mpi_exchange_check: a small MPI program for the launch tests (mxrun, the
 * network-namespace cluster). It moves a fixed global batch between ranks the
 * way a MoE layer does (dispatch with MPI_Alltoallv, transform on the receiving
 * rank, combine back with MPI_Alltoallv), then prints on rank 0 one line
 *
 *   {"ranks": R, "hosts": H, "tokens": T, "bytes_moved": B, "checksum": "0x..."}
 *
 * The checksum covers the whole result in global token order, so it is the same
 * for any rank count and placement: the launch tests compare it with one process.
 * "hosts" counts the distinct host names of the ranks (the namespace cluster sets
 * one per namespace). Exit status: 0 on success, 1 on an error (printed). */
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { HIDDEN = 256, HOSTLEN = 64 };

static uint32_t mix32(uint32_t x)
{
    x ^= x >> 16;
    x *= 0x7feb352dU;
    x ^= x >> 15;
    x *= 0x846ca68bU;
    x ^= x >> 16;
    return x;
}

/* The "expert" that token t goes to decides which rank transforms it. */
static int token_dest(size_t t, int size)
{
    return (int)(mix32((uint32_t)t * 2654435761U + 17U) % (uint32_t)size);
}

static void token_fill(size_t t, uint32_t *row)
{
    for (int h = 0; h < HIDDEN; h++)
        row[h] = mix32((uint32_t)(t * HIDDEN + (size_t)h) ^ 0x9e3779b9U);
}

static void token_transform(uint32_t *row)
{
    for (int h = 0; h < HIDDEN; h++)
        row[h] = mix32(row[h] + (uint32_t)h) ^ row[(h + 1) % HIDDEN];
}

static int fail(const char *what, int rank)
{
    fprintf(stderr, "mpi_exchange_check: rank %d: %s\n", rank, what);
    return 1;
}

int main(int argc, char **argv)
{
    size_t tokens = 1024;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--tokens") == 0 && i + 1 < argc) {
            char *end = NULL;
            unsigned long v = strtoul(argv[++i], &end, 10);
            if (!end || *end || v == 0 || v > 1000000) {
                fprintf(stderr, "mpi_exchange_check: --tokens '%s': expected 1..1000000\n", argv[i]);
                return 2;
            }
            tokens = v;
        } else {
            fprintf(stderr, "usage: mpi_exchange_check [--tokens T]   (unknown argument '%s')\n", argv[i]);
            return 2;
        }
    }
    MPI_Init(&argc, &argv);
    int rank = 0, size = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);

    /* My tokens: a contiguous slice of the global batch. */
    size_t q = tokens / (size_t)size, r = tokens % (size_t)size;
    size_t t0 = (size_t)rank * q + ((size_t)rank < r ? (size_t)rank : r);
    size_t n = q + ((size_t)rank < r ? 1 : 0);
    const size_t row_bytes = HIDDEN * sizeof(uint32_t);

    int *scount = calloc((size_t)size, sizeof(int)), *rcount = calloc((size_t)size, sizeof(int));
    int *sdispl = calloc((size_t)size, sizeof(int)), *rdispl = calloc((size_t)size, sizeof(int));
    uint32_t *send = malloc(n * row_bytes + 1), *back = malloc(n * row_bytes + 1);
    size_t *order = malloc(n * sizeof(size_t) + 1);
    int rc = 0;
    if (!scount || !rcount || !sdispl || !rdispl || !send || !back || !order) {
        rc = fail("out of memory", rank);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    /* Pack by destination rank (stable: ascending token within a rank). */
    for (size_t i = 0; i < n; i++)
        scount[token_dest(t0 + i, size)] += HIDDEN;
    for (int p = 1; p < size; p++)
        sdispl[p] = sdispl[p - 1] + scount[p - 1];
    int *fill = calloc((size_t)size, sizeof(int));
    if (!fill)
        MPI_Abort(MPI_COMM_WORLD, 1);
    for (size_t i = 0; i < n; i++) {
        int d = token_dest(t0 + i, size);
        size_t slot = (size_t)(sdispl[d] + fill[d]) / HIDDEN;
        token_fill(t0 + i, send + slot * HIDDEN);
        order[slot] = i;
        fill[d] += HIDDEN;
    }
    free(fill);
    MPI_Alltoall(scount, 1, MPI_INT, rcount, 1, MPI_INT, MPI_COMM_WORLD);
    long total = 0;
    for (int p = 0; p < size; p++) {
        rdispl[p] = (int)total;
        total += rcount[p];
    }
    uint32_t *recv = malloc((size_t)total * sizeof(uint32_t) + 1);
    if (!recv)
        MPI_Abort(MPI_COMM_WORLD, 1);
    /* dispatch, transform, combine */
    MPI_Alltoallv(send, scount, sdispl, MPI_UINT32_T, recv, rcount, rdispl, MPI_UINT32_T, MPI_COMM_WORLD);
    for (long i = 0; i < total / HIDDEN; i++)
        token_transform(recv + (size_t)i * HIDDEN);
    MPI_Alltoallv(recv, rcount, rdispl, MPI_UINT32_T, send, scount, sdispl, MPI_UINT32_T, MPI_COMM_WORLD);
    for (size_t s = 0; s < n; s++)
        memcpy(back + order[s] * HIDDEN, send + s * HIDDEN, row_bytes);

    /* Check my rows against a local computation, then hash in global order. */
    uint32_t want[HIDDEN];
    for (size_t i = 0; i < n && rc == 0; i++) {
        token_fill(t0 + i, want);
        token_transform(want);
        if (memcmp(want, back + i * HIDDEN, row_bytes) != 0)
            rc = fail("a token came back different from its local computation", rank);
    }
    int any_bad = 0;
    MPI_Allreduce(&rc, &any_bad, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);

    long moved = 0, my_moved = 0;
    for (int p = 0; p < size; p++)
        if (p != rank)
            my_moved += (long)scount[p] * 2 * (long)sizeof(uint32_t);
    MPI_Reduce(&my_moved, &moved, 1, MPI_LONG, MPI_SUM, 0, MPI_COMM_WORLD);

    int *counts = NULL, *displs = NULL;
    uint32_t *all = NULL;
    char *hosts = NULL;
    char me[HOSTLEN] = {0};
    gethostname(me, sizeof me - 1);
    if (rank == 0) {
        counts = malloc((size_t)size * sizeof(int));
        displs = malloc((size_t)size * sizeof(int));
        all = malloc(tokens * row_bytes);
        hosts = calloc((size_t)size, HOSTLEN);
        if (!counts || !displs || !all || !hosts)
            MPI_Abort(MPI_COMM_WORLD, 1);
        for (int p = 0; p < size; p++) {
            counts[p] = (int)((q + ((size_t)p < r ? 1 : 0)) * HIDDEN);
            displs[p] = p == 0 ? 0 : displs[p - 1] + counts[p - 1];
        }
    }
    MPI_Gatherv(back, (int)(n * HIDDEN), MPI_UINT32_T, all, counts, displs, MPI_UINT32_T, 0, MPI_COMM_WORLD);
    MPI_Gather(me, HOSTLEN, MPI_CHAR, hosts, HOSTLEN, MPI_CHAR, 0, MPI_COMM_WORLD);
    if (rank == 0 && !any_bad) {
        uint64_t h = 1469598103934665603ULL; /* FNV-1a over the bytes */
        const unsigned char *b = (const unsigned char *)all;
        for (size_t i = 0; i < tokens * row_bytes; i++) {
            h ^= b[i];
            h *= 1099511628211ULL;
        }
        int distinct = 0;
        for (int p = 0; p < size; p++) {
            int seen = 0;
            for (int o = 0; o < p && !seen; o++)
                seen = strncmp(hosts + (size_t)p * HOSTLEN, hosts + (size_t)o * HOSTLEN, HOSTLEN) == 0;
            distinct += !seen;
        }
        printf("{\"ranks\": %d, \"hosts\": %d, \"tokens\": %zu, \"bytes_moved\": %ld, \"checksum\": \"0x%016llx\"}\n",
               size, distinct, tokens, moved, (unsigned long long)h);
        fflush(stdout);
    }
    free(counts);
    free(displs);
    free(all);
    free(hosts);
    free(recv);
    free(scount);
    free(rcount);
    free(sdispl);
    free(rdispl);
    free(send);
    free(back);
    free(order);
    MPI_Finalize();
    return any_bad ? 1 : 0;
}
