/* The UCX transport against MPI_Alltoall / MPI_Alltoallv: random byte counts
 * (some zero, some rounds all zero, one round past the initial receive
 * capacity so the buffer grows), fresh random bytes every round, checked on
 * every rank. Prints the path UCX chose on rank 0. Exit 0 = every round equal.
 * Usage: mpiexec -n N test_transport_ucx [--rounds R] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mxep/transport.h"
#include "transport_ucx.h"

static uint64_t mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank = 0, size = 1, rounds = 12;
    if (argc == 3 && strcmp(argv[1], "--rounds") == 0)
        rounds = atoi(argv[2]);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    const uint64_t seed = 20261123;
    if (rank == 0)
        printf("test_transport_ucx: %d ranks, %d rounds, seed %llu\n", size, rounds, (unsigned long long)seed);
    mx_transport_opts_t opts = {.mode = MX_EXCHANGE_AUTO, .initial_bytes = 4096};
    mx_transport_h t = NULL;
    mx_status_t st = mx_transport_create(mx_transport_ucx_ops(), MPI_COMM_WORLD, &opts, &t);
    if (st != MX_OK) {
        fprintf(stderr, "rank %d: create: %s: %s\n", rank, mx_status_str(st), mx_error_detail());
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    if (rank == 0)
        printf("test_transport_ucx: path %s\n", mx_transport_path(t));
    int bad = 0;
    size_t *sc = calloc((size_t)size, sizeof(size_t)), *sd = calloc((size_t)size, sizeof(size_t));
    size_t *rc = calloc((size_t)size, sizeof(size_t)), *rd = calloc((size_t)size, sizeof(size_t));
    int *isc = calloc((size_t)size, sizeof(int)), *isd = calloc((size_t)size, sizeof(int));
    int *irc = calloc((size_t)size, sizeof(int)), *ird = calloc((size_t)size, sizeof(int));
    for (int r = 0; r < rounds && !bad; r++) {
        size_t total = 0;
        for (int p = 0; p < size; p++) {
            uint64_t h = mix(seed ^ ((uint64_t)r << 40) ^ ((uint64_t)rank << 20) ^ (uint64_t)p);
            size_t n = r == 3 ? 0 : (h % 4 == 0 ? 0 : (size_t)(h >> 8) % (r == 7 ? 200000 : 3000));
            sc[p] = n;
            sd[p] = total;
            isc[p] = (int)n;
            isd[p] = (int)total;
            total += n;
        }
        uint8_t *send = malloc(total + 1);
        for (size_t i = 0; i < total; i++)
            send[i] = (uint8_t)mix(seed + (uint64_t)r * 1000003u + (uint64_t)rank * 7919u + i);
        MPI_Alltoall(isc, 1, MPI_INT, irc, 1, MPI_INT, MPI_COMM_WORLD);
        for (size_t i = 0; i < (size_t)size; i++)
            rc[i] = 12345; /* poison */
        st = mx_transport_exchange_counts(t, sc, rc);
        size_t rtotal = 0;
        for (int p = 0; p < size && st == MX_OK; p++) {
            if (rc[p] != (size_t)irc[p]) {
                fprintf(stderr, "rank %d round %d: count from %d is %zu, MPI says %d\n", rank, r, p, rc[p], irc[p]);
                bad = 1;
            }
            ird[p] = (int)rtotal;
            rtotal += rc[p];
        }
        uint8_t *want = malloc(rtotal + 1);
        MPI_Alltoallv(send, isc, isd, MPI_BYTE, want, irc, ird, MPI_BYTE, MPI_COMM_WORLD);
        const uint8_t *got = NULL;
        if (st == MX_OK)
            st = mx_transport_exchange(t, send, sc, sd, rc, &got, rd);
        if (st != MX_OK) {
            fprintf(stderr, "rank %d round %d: %s: %s\n", rank, r, mx_status_str(st), mx_error_detail());
            bad = 1;
        } else {
            for (int p = 0; p < size; p++)
                if (rd[p] != (size_t)ird[p] || memcmp(got + rd[p], want + ird[p], rc[p]) != 0) {
                    fprintf(stderr, "rank %d round %d: bytes from rank %d differ from MPI_Alltoallv's\n", rank, r, p);
                    bad = 1;
                }
        }
        free(send);
        free(want);
        int any = 0;
        MPI_Allreduce(&bad, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
        bad = any;
    }
    mx_transport_destroy(t);
    free(sc);
    free(sd);
    free(rc);
    free(rd);
    free(isc);
    free(isd);
    free(irc);
    free(ird);
    if (rank == 0)
        printf("test_transport_ucx: %s\n", bad ? "FAILED" : "every round equal to MPI_Alltoallv");
    MPI_Finalize();
    return bad ? 1 : 0;
}
