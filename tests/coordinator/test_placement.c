/* Placement: contiguous split, replicas, JSON parsing (good and bad files),
 * local expert indices and the replica choice. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mxep/coordinator.h"

static void test_contiguous_splits_as_evenly_as_possible(void **state)
{
    (void)state;
    mx_placement_t p;
    assert_int_equal(mx_coord_placement_contiguous(10, 3, &p), MX_OK);
    int n;
    const int *ex = mx_coord_placement_rank_experts(&p, 0, &n);
    assert_int_equal(n, 4);
    assert_int_equal(ex[0], 0);
    assert_int_equal(ex[3], 3);
    ex = mx_coord_placement_rank_experts(&p, 1, &n);
    assert_int_equal(n, 3);
    assert_int_equal(ex[0], 4);
    ex = mx_coord_placement_rank_experts(&p, 2, &n);
    assert_int_equal(n, 3);
    assert_int_equal(ex[2], 9);
    for (int e = 0; e < 10; e++) {
        int r = e < 4 ? 0 : (e < 7 ? 1 : 2);
        assert_int_equal(mx_coord_placement_pick(&p, e, 0, 12345), r);
    }
    assert_int_equal(mx_coord_placement_local_index(&p, 5, 1), 1);
    assert_int_equal(mx_coord_placement_local_index(&p, 5, 0), -1);
    assert_int_equal(mx_coord_placement_local_index(&p, 10, 0), -1);
    mx_placement_fini(&p);
    mx_placement_fini(&p);
}

static void test_contiguous_refuses_more_ranks_than_experts(void **state)
{
    (void)state;
    mx_placement_t p;
    memset(&p, 0x77, sizeof p);
    mx_placement_t poison = p;
    assert_int_equal(mx_coord_placement_contiguous(4, 8, &p), MX_ERR_INVALID);
    assert_non_null(strstr(mx_error_detail(), "8 ranks but only 4 experts"));
    assert_memory_equal(&p, &poison, sizeof p);
    assert_int_equal(mx_coord_placement_contiguous(0, 1, &p), MX_ERR_INVALID);
}

static void test_replicated_gives_every_rank_an_expert(void **state)
{
    (void)state;
    mx_placement_t p;
    assert_int_equal(mx_coord_placement_replicated(3, 8, &p), MX_OK);
    for (int r = 0; r < 8; r++) {
        int n;
        const int *ex = mx_coord_placement_rank_experts(&p, r, &n);
        assert_int_equal(n, 1);
        assert_int_equal(ex[0], r % 3);
    }
    /* expert 0 on ranks 0, 3, 6: a token of rank 3 stays there */
    assert_int_equal(mx_coord_placement_pick(&p, 0, 3, 99), 3);
    /* a token of rank 1 goes to a replica chosen by its global index, deterministically */
    int first = mx_coord_placement_pick(&p, 0, 1, 7);
    assert_true(first == 0 || first == 3 || first == 6);
    assert_int_equal(mx_coord_placement_pick(&p, 0, 1, 7), first);
    int seen[8] = {0};
    for (uint64_t t = 0; t < 300; t++)
        seen[mx_coord_placement_pick(&p, 0, 1, t)]++;
    assert_true(seen[0] > 50 && seen[3] > 50 && seen[6] > 50); /* spread over the replicas */
    mx_placement_fini(&p);
}

static void test_parse_accepts_list_and_object_forms_with_replicas(void **state)
{
    (void)state;
    mx_placement_t a, b;
    assert_int_equal(mx_coord_placement_parse("{\"experts\": [[0, 2], 1, [2], [0]], \"n_ranks\": 3}", "t", 4, 3, &a),
                     MX_OK);
    assert_int_equal(
        mx_coord_placement_parse("{\"n_experts\":4,\"experts\": {\"3\": 0, \"0\": [2, 0], \"2\": 2, \"1\": [1]}}", "t",
                                 4, 3, &b),
        MX_OK);
    for (int e = 0; e < 4; e++) {
        assert_int_equal(a.replica_off[e + 1] - a.replica_off[e], b.replica_off[e + 1] - b.replica_off[e]);
        for (int i = a.replica_off[e]; i < a.replica_off[e + 1]; i++)
            assert_int_equal(a.replica_rank[i], b.replica_rank[i]);
    }
    int n;
    const int *ex = mx_coord_placement_rank_experts(&a, 2, &n);
    assert_int_equal(n, 2);
    assert_int_equal(ex[0], 0);
    assert_int_equal(ex[1], 2);
    assert_int_equal(mx_coord_placement_local_index(&a, 2, 2), 1);
    assert_int_equal(mx_coord_placement_pick(&a, 0, 2, 5), 2);
    char *json;
    assert_int_equal(mx_coord_placement_json(&a, &json), MX_OK);
    mx_placement_t c;
    assert_int_equal(mx_coord_placement_parse(json, "round trip", 4, 3, &c), MX_OK);
    assert_memory_equal(c.replica_rank, a.replica_rank, sizeof(int) * (size_t)a.replica_off[4]);
    free(json);
    mx_placement_fini(&a);
    mx_placement_fini(&b);
    mx_placement_fini(&c);
}

static void test_parse_allows_ranks_without_experts(void **state)
{
    (void)state;
    mx_placement_t p;
    assert_int_equal(mx_coord_placement_parse("{\"experts\": [0, 0]}", "t", 2, 4, &p), MX_OK);
    int n;
    mx_coord_placement_rank_experts(&p, 3, &n);
    assert_int_equal(n, 0);
    mx_placement_fini(&p);
}

static void expect_bad(const char *json, int E, int R, const char *needle)
{
    mx_placement_t p;
    memset(&p, 0x33, sizeof p);
    mx_placement_t poison = p;
    mx_status_t st = mx_coord_placement_parse(json, "bad.json", E, R, &p);
    if (st != MX_ERR_FORMAT || !strstr(mx_error_detail(), needle))
        fail_msg("json %s: got %s '%s', wanted MX_ERR_FORMAT with '%s'", json, mx_status_str(st), mx_error_detail(),
                 needle);
    assert_non_null(strstr(mx_error_detail(), "bad.json"));
    assert_memory_equal(&p, &poison, sizeof p);
}

static void test_parse_rejects_bad_files_naming_the_expert(void **state)
{
    (void)state;
    expect_bad("{\"experts\": [[0], [1]", 2, 2, "not valid JSON");
    expect_bad("[0, 1]", 2, 2, "expected a JSON object");
    expect_bad("{\"expert\": [0, 1]}", 2, 2, "unknown member \"expert\"");
    expect_bad("{}", 2, 2, "missing member \"experts\"");
    expect_bad("{\"experts\": [0]}", 2, 2, "lists 1 experts but the model has 2");
    expect_bad("{\"experts\": {\"0\": 0}}", 2, 2, "expert 1 is not placed");
    expect_bad("{\"experts\": [0, [1, 2]]}", 2, 2, "expert 1: rank 2 out of range");
    expect_bad("{\"experts\": [0, -1]}", 2, 2, "expert 1: rank -1 out of range");
    expect_bad("{\"experts\": [0, 0.5]}", 2, 2, "expert 1: rank 0.5");
    expect_bad("{\"experts\": [[0, 1, 0], 1]}", 2, 2, "expert 0: rank 0 listed twice");
    expect_bad("{\"experts\": [[], 1]}", 2, 2, "expert 0: empty list");
    expect_bad("{\"experts\": [\"0\", 1]}", 2, 2, "expert 0: expected a rank");
    expect_bad("{\"experts\": {\"0\": 0, \"1\": 1, \"0\": 1}}", 2, 2, "expert 0 listed twice");
    expect_bad("{\"experts\": {\"0\": 0, \"7\": 1}}", 2, 2, "expert key \"7\"");
    expect_bad("{\"experts\": {\"0\": 0, \"x\": 1}}", 2, 2, "expert key \"x\"");
    expect_bad("{\"experts\": [0, 1], \"n_ranks\": 4}", 2, 2, "\"n_ranks\" is 4 but the job has 2");
    expect_bad("{\"experts\": 3}", 2, 2, "must be a list or an object");
}

static void test_load_reads_a_file_and_names_a_missing_one(void **state)
{
    (void)state;
    char path[] = "/tmp/mxep_placement_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *text = "{\"experts\": [[1], [0, 1], [0]]}\n";
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    mx_placement_t p;
    assert_int_equal(mx_coord_placement_load(path, 3, 2, &p), MX_OK);
    assert_int_equal(mx_coord_placement_pick(&p, 1, 0, 3), 0);
    assert_int_equal(mx_coord_placement_pick(&p, 0, 0, 3), 1);
    mx_placement_fini(&p);
    assert_int_equal(mx_coord_placement_load(path, 4, 2, &p), MX_ERR_FORMAT);
    assert_non_null(strstr(mx_error_detail(), path));
    unlink(path);
    assert_int_equal(mx_coord_placement_load(path, 3, 2, &p), MX_ERR_IO);
    assert_non_null(strstr(mx_error_detail(), path));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_contiguous_splits_as_evenly_as_possible),
        cmocka_unit_test(test_contiguous_refuses_more_ranks_than_experts),
        cmocka_unit_test(test_replicated_gives_every_rank_an_expert),
        cmocka_unit_test(test_parse_accepts_list_and_object_forms_with_replicas),
        cmocka_unit_test(test_parse_allows_ranks_without_experts),
        cmocka_unit_test(test_parse_rejects_bad_files_naming_the_expert),
        cmocka_unit_test(test_load_reads_a_file_and_names_a_missing_one),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
