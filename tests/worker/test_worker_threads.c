/* tests/worker: how the ranks of one host split its CPUs when some run on a device
 * (wk_host_threads; the collective around it needs a GPU rank, so it is checked on the
 * GPU machine: bench/RESULTS.md, session 32). Label unit. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "worker_internal.h"

static void test_host_threads_even_share_without_both_kinds(void **state)
{
    (void)state;
    /* only CPU ranks, only device ranks, one rank: the share of before */
    assert_int_equal(wk_host_threads(16, 0, 3, 0), 5);
    assert_int_equal(wk_host_threads(16, 3, 0, 1), 5);
    assert_int_equal(wk_host_threads(16, 0, 1, 0), 16);
    /* more ranks than CPUs: at least one thread each */
    assert_int_equal(wk_host_threads(2, 0, 8, 0), 1);
    assert_int_equal(wk_host_threads(2, 8, 0, 1), 1);
}

static void test_host_threads_device_ranks_leave_cpus_to_cpu_ranks(void **state)
{
    (void)state;
    /* the H100 machine's heterogeneous job: 1 GPU rank and 2 CPU ranks on 16 CPUs */
    assert_int_equal(wk_host_threads(16, 1, 2, 1), WK_DEVICE_RANK_THREADS);
    assert_int_equal(wk_host_threads(16, 1, 2, 0), (16 - WK_DEVICE_RANK_THREADS) / 2);
    /* 8 GPUs and 8 CPU ranks on 128 CPUs */
    assert_int_equal(wk_host_threads(128, 8, 8, 1), WK_DEVICE_RANK_THREADS);
    assert_int_equal(wk_host_threads(128, 8, 8, 0), (128 - 8 * WK_DEVICE_RANK_THREADS) / 8);
    /* never more threads than CPUs on the host in all */
    for (int cpus = 1; cpus <= 64; cpus++)
        for (int d = 1; d <= 8; d++)
            for (int c = 1; c <= 8; c++) {
                const int td = wk_host_threads(cpus, d, c, 1), tc = wk_host_threads(cpus, d, c, 0);
                const int share = cpus / (d + c) > 0 ? cpus / (d + c) : 1;
                assert_true(td >= 1 && tc >= 1);
                assert_true(td <= WK_DEVICE_RANK_THREADS && td <= share);
                /* the CPU ranks never get less than the even share */
                assert_true(tc >= share);
                if (cpus >= d + c)
                    assert_true(d * td + c * tc <= cpus);
            }
    /* a host too small for 2 threads per device rank: the device rank keeps its share */
    assert_int_equal(wk_host_threads(3, 1, 2, 1), 1);
    assert_int_equal(wk_host_threads(3, 1, 2, 0), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_host_threads_even_share_without_both_kinds),
        cmocka_unit_test(test_host_threads_device_ranks_leave_cpus_to_cpu_ranks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
