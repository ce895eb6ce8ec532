/* topology/ over MPI: local ranks, device binding and the gathered table,
 * checked on every rank (run with mpiexec -n 1, 2, 3). All collectives run
 * before any assertion, so a failing rank cannot leave the others waiting. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mxep/topology.h"

static uint64_t fnv(const void *data, size_t n)
{
    const unsigned char *p = data;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

static void test_gather_gives_every_rank_the_same_consistent_table(void **state)
{
    (void)state;
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    mx_topo_proc_t me;
    mx_status_t st_probe = mx_topo_probe(&me);
    mx_status_t st_locate = mx_topo_locate(MPI_COMM_WORLD, &me);
    char report[64];
    snprintf(report, sizeof report, "ref: chosen on rank %d", rank);
    mx_topo_proc_set_backend(&me, "ref", report);
    mx_topo_cluster_t c;
    memset(&c, 0, sizeof c);
    mx_status_t st_gather = mx_topo_gather(MPI_COMM_WORLD, &me, &c);
    /* the table must be identical everywhere: compare hashes */
    uint64_t h = st_gather == MX_OK ? fnv(c.procs, (size_t)c.n_procs * sizeof *c.procs) : 0, hmin = 0, hmax = 0;
    MPI_Allreduce(&h, &hmin, 1, MPI_UINT64_T, MPI_MIN, MPI_COMM_WORLD);
    MPI_Allreduce(&h, &hmax, 1, MPI_UINT64_T, MPI_MAX, MPI_COMM_WORLD);

    assert_int_equal(st_probe, MX_OK);
    assert_int_equal(st_locate, MX_OK);
    assert_int_equal(st_gather, MX_OK);
    assert_true(hmin == hmax);
    assert_int_equal(me.rank, rank);
    assert_int_equal(me.world_size, size);
    assert_int_equal(c.n_procs, size);
    assert_true(c.n_hosts >= 1 && c.n_hosts <= size);
    for (int i = 0; i < size; i++) {
        const mx_topo_proc_t *p = &c.procs[i];
        assert_int_equal(p->rank, i);
        assert_int_equal(p->world_size, size);
        assert_string_equal(p->backend, "ref");
        /* ranks of one host: local ranks 0..local_size-1, each once, in rank order */
        int same = 0, before = 0;
        for (int j = 0; j < size; j++)
            if (c.procs[j].node == p->node) {
                same++;
                if (j < i)
                    before++;
                if (j != i)
                    assert_true(c.procs[j].pid != p->pid || strcmp(c.procs[j].host, p->host) != 0);
            }
        assert_int_equal(p->local_size, same);
        assert_int_equal(p->local_rank, before);
        if (p->device_runtime >= 0)
            assert_int_equal(p->device_index, p->local_rank % p->gpu[p->device_runtime].count);
        else
            assert_int_equal(p->device_index, -1);
    }
    char *json = NULL;
    assert_int_equal(mx_topo_cluster_json(&c, &json), MX_OK);
    char want[64];
    snprintf(want, sizeof want, "\"n_procs\":\t%d", size);
    assert_non_null(strstr(json, want));
    if (rank == 0)
        assert_int_equal(mx_topo_cluster_print(&c, stdout), MX_OK);
    free(json);
    mx_topo_cluster_fini(&c);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gather_gives_every_rank_the_same_consistent_table),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    int any = 0;
    MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    MPI_Finalize();
    return any ? 1 : 0;
}
