/* The strict safetensors reader: one test per malformed-file case (status and
 * message), plus well-formed files, sharded indexes and missing shards. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "ck_util.h"
#include "mxep/checkpoint.h"

static char *dir;

static int setup(void **state)
{
    (void)state;
    dir = ck_tmpdir("st");
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    ck_rmtree(dir);
    free(dir);
    return 0;
}

/* Opens `header` + data_bytes as a file; expects `want` and every needle in the message. */
static void expect_open(const char *header, size_t data_bytes, mx_status_t want, const char *n1, const char *n2)
{
    char *p = ck_path(dir, "t.safetensors");
    ck_write_raw_st(p, header, data_bytes);
    mx_st_file_h f = (mx_st_file_h)(uintptr_t)0xDEAD;
    mx_status_t st = mx_st_file_open(p, &f);
    if (st != want || (n1 && !strstr(mx_error_detail(), n1)) || (n2 && !strstr(mx_error_detail(), n2)))
        fail_msg("header %s: got %s '%s', expected %s with '%s' and '%s'", header, mx_status_str(st), mx_error_detail(),
                 mx_status_str(want), n1 ? n1 : "", n2 ? n2 : "");
    if (st == MX_OK)
        mx_st_file_close(f);
    else
        assert_ptr_equal(f, (mx_st_file_h)(uintptr_t)0xDEAD); /* output untouched on failure */
    free(p);
}

static void test_st_reads_wellformed_file_with_metadata_and_empty_tensor(void **state)
{
    (void)state;
    char *p = ck_path(dir, "ok.safetensors");
    uint16_t bf[6];
    ck_fill(bf, sizeof bf, 11);
    uint8_t u8[5] = {1, 2, 3, 4, 5};
    ck_tensor_t t[3] = {{"a.bf16", "BF16", 2, {2, 3}, bf, sizeof bf},
                        {"b.u8", "U8", 1, {5}, u8, 5},
                        {"c.empty", "F32", 2, {0, 4}, NULL, 0}};
    ck_write_st(p, t, 3);
    mx_st_file_h f;
    assert_int_equal(mx_st_file_open(p, &f), MX_OK);
    assert_int_equal(mx_st_file_count(f), 3);
    mx_st_tensor_t x;
    assert_int_equal(mx_st_file_find(f, "a.bf16", &x), MX_OK);
    assert_int_equal(x.dtype, MX_ST_BF16);
    assert_int_equal(x.ndim, 2);
    assert_int_equal(x.shape[0], 2);
    assert_int_equal(x.shape[1], 3);
    assert_int_equal(x.nbytes, 12);
    assert_memory_equal(x.data, bf, 12);
    assert_int_equal(mx_st_file_find(f, "b.u8", &x), MX_OK);
    assert_memory_equal(x.data, u8, 5);
    assert_int_equal(mx_st_file_find(f, "c.empty", &x), MX_OK);
    assert_int_equal(x.nbytes, 0);
    assert_int_equal(mx_st_file_find(f, "nope", &x), MX_ERR_FORMAT);
    assert_non_null(strstr(mx_error_detail(), "nope"));
    mx_st_file_close(f);
    free(p);
    /* metadata and a scalar (rank 0) tensor */
    expect_open("{\"__metadata__\":{\"format\":\"pt\"},\"s\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]}}",
                4, MX_OK, NULL, NULL);
}

static void test_st_rejects_file_shorter_than_length_prefix(void **state)
{
    (void)state;
    char *p = ck_path(dir, "short.safetensors");
    ck_write_bytes(p, "\x05\x00\x00", 3);
    mx_st_file_h f;
    assert_int_equal(mx_st_file_open(p, &f), MX_ERR_FORMAT);
    assert_non_null(strstr(mx_error_detail(), "short.safetensors"));
    assert_non_null(strstr(mx_error_detail(), "too short"));
    free(p);
}

static void test_st_rejects_header_length_past_end_of_file(void **state)
{
    (void)state;
    char *p = ck_path(dir, "past.safetensors");
    uint8_t b[16] = {200, 0, 0, 0, 0, 0, 0, 0, '{', '}'};
    ck_write_bytes(p, b, sizeof b);
    mx_st_file_h f;
    assert_int_equal(mx_st_file_open(p, &f), MX_ERR_FORMAT);
    assert_non_null(strstr(mx_error_detail(), "past.safetensors"));
    assert_non_null(strstr(mx_error_detail(), "runs past the end"));
    free(p);
}

static void test_st_rejects_header_over_100_mb(void **state)
{
    (void)state;
    char *p = ck_path(dir, "huge.safetensors");
    uint64_t n = 100000001ull;
    uint8_t b[16] = {0};
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(n >> (8 * i));
    ck_write_bytes(p, b, sizeof b);
    mx_st_file_h f;
    assert_int_equal(mx_st_file_open(p, &f), MX_ERR_FORMAT);
    assert_non_null(strstr(mx_error_detail(), "100 MB"));
    free(p);
}

static void test_st_rejects_header_that_is_not_json(void **state)
{
    (void)state;
    expect_open("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]", 1, MX_ERR_FORMAT, "t.safetensors",
                "not well-formed JSON");
}

static void test_st_rejects_header_that_is_not_an_object(void **state)
{
    (void)state;
    expect_open("[1,2,3]", 0, MX_ERR_FORMAT, "t.safetensors", "not an object");
}

static void test_st_rejects_trailing_bytes_after_header_json(void **state)
{
    (void)state;
    expect_open("{}  xx", 0, MX_ERR_FORMAT, "t.safetensors", "trailing");
}

static void test_st_rejects_unknown_dtype(void **state)
{
    (void)state;
    expect_open("{\"w\":{\"dtype\":\"Q4_K\",\"shape\":[4],\"data_offsets\":[0,4]}}", 4, MX_ERR_FORMAT, "'w'", "Q4_K");
}

static void test_st_rejects_shape_times_dtype_not_equal_to_span(void **state)
{
    (void)state;
    expect_open("{\"w\":{\"dtype\":\"BF16\",\"shape\":[2,3],\"data_offsets\":[0,10]}}", 10, MX_ERR_FORMAT, "'w'",
                "12 bytes, but data_offsets [0, 10) span 10 bytes");
}

static void test_st_rejects_offsets_outside_data_area(void **state)
{
    (void)state;
    expect_open("{\"w\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[4,12]}}", 8, MX_ERR_FORMAT, "'w'",
                "outside the data area of 8 bytes");
}

static void test_st_rejects_overlapping_tensors(void **state)
{
    (void)state;
    expect_open("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
                "\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[2,6]}}",
                6, MX_ERR_FORMAT, "overlap", "'a'");
}

static void test_st_rejects_duplicate_tensor_names(void **state)
{
    (void)state;
    expect_open("{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},"
                "\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[2,4]}}",
                4, MX_ERR_FORMAT, "'a'", "twice");
}

static void test_st_rejects_end_before_begin(void **state)
{
    (void)state;
    expect_open("{\"a\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[4,2]}}", 4, MX_ERR_FORMAT, "'a'",
                "end before begin");
}

static void test_st_rejects_negative_or_fractional_dimension(void **state)
{
    (void)state;
    expect_open("{\"a\":{\"dtype\":\"U8\",\"shape\":[-2],\"data_offsets\":[0,2]}}", 2, MX_ERR_FORMAT, "'a'",
                "shape[0]");
    expect_open("{\"a\":{\"dtype\":\"U8\",\"shape\":[1.5],\"data_offsets\":[0,2]}}", 2, MX_ERR_FORMAT, "'a'",
                "shape[0]");
}

static void test_st_rejects_missing_data_offsets(void **state)
{
    (void)state;
    expect_open("{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"offsets\":[0,2]}}", 2, MX_ERR_FORMAT, "'a'", "data_offsets");
}

static void test_st_rejects_f4_tensor_of_odd_element_count(void **state)
{
    (void)state;
    expect_open("{\"a\":{\"dtype\":\"F4\",\"shape\":[3],\"data_offsets\":[0,2]}}", 2, MX_ERR_FORMAT, "'a'",
                "whole number of bytes");
    expect_open("{\"a\":{\"dtype\":\"F4\",\"shape\":[4],\"data_offsets\":[0,2]}}", 2, MX_OK, NULL, NULL);
}

static void test_st_rejects_shape_whose_size_overflows(void **state)
{
    (void)state;
    expect_open("{\"a\":{\"dtype\":\"F64\",\"shape\":[4294967296,4294967296,16],\"data_offsets\":[0,8]}}", 8,
                MX_ERR_FORMAT, "'a'", "too large");
}

static void test_st_rejects_metadata_with_non_string_value(void **state)
{
    (void)state;
    expect_open("{\"__metadata__\":{\"n\":3}}", 0, MX_ERR_FORMAT, "__metadata__", "string");
}

static void test_st_open_missing_file_is_io_error(void **state)
{
    (void)state;
    char *p = ck_path(dir, "absent.safetensors");
    mx_st_file_h f;
    assert_int_equal(mx_st_file_open(p, &f), MX_ERR_IO);
    assert_non_null(strstr(mx_error_detail(), "absent.safetensors"));
    free(p);
}

/* ---------------------------------------------------------------- sharded index */
static const char *cfg_tiny = "{\"model_type\":\"qwen3_moe\",\"num_experts\":2,\"num_experts_per_tok\":1,"
                              "\"hidden_size\":32,\"moe_intermediate_size\":32,\"num_hidden_layers\":1}";

static char *sharded_dir(const char *tag, const char *index)
{
    char *d = ck_path(dir, tag);
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", d);
    assert_int_equal(system(cmd), 0);
    char *p = ck_path(d, "config.json");
    ck_write_text(p, cfg_tiny);
    free(p);
    uint8_t a[4] = {1, 2, 3, 4}, b[2] = {9, 8};
    ck_tensor_t ta = {"x.a", "U8", 1, {4}, a, 4}, tb = {"x.b", "U8", 1, {2}, b, 2};
    p = ck_path(d, "model-00001-of-00002.safetensors");
    ck_write_st(p, &ta, 1);
    free(p);
    p = ck_path(d, "model-00002-of-00002.safetensors");
    ck_write_st(p, &tb, 1);
    free(p);
    p = ck_path(d, "model.safetensors.index.json");
    ck_write_text(p, index);
    free(p);
    return d;
}

static void test_index_resolves_tensors_through_weight_map(void **state)
{
    (void)state;
    /* shard names deliberately lie about their contents' order: resolve through weight_map */
    char *d = sharded_dir("idx-ok", "{\"metadata\":{\"total_size\":6},\"weight_map\":{"
                                    "\"x.b\":\"model-00002-of-00002.safetensors\","
                                    "\"x.a\":\"model-00001-of-00002.safetensors\"}}");
    mx_ckpt_h ck;
    assert_int_equal(mx_ckpt_open(d, &ck), MX_OK);
    assert_int_equal(mx_ckpt_file_count(ck), 2);
    assert_int_equal(mx_ckpt_tensor_count(ck), 2);
    mx_st_tensor_t t;
    assert_int_equal(mx_ckpt_tensor(ck, "x.b", &t), MX_OK);
    assert_int_equal(t.nbytes, 2);
    assert_int_equal(t.data[0], 9);
    assert_non_null(strstr(t.file, "model-00002-of-00002"));
    assert_int_equal(mx_ckpt_tensor(ck, "x.a", &t), MX_OK);
    assert_int_equal(t.data[3], 4);
    assert_int_equal(mx_ckpt_tensor(ck, "x.c", &t), MX_ERR_FORMAT);
    assert_non_null(strstr(mx_error_detail(), "x.c"));
    assert_string_equal(mx_ckpt_layout_name(ck), "none");
    mx_ckpt_close(ck);
    free(d);
}

static void test_index_rejects_missing_shard(void **state)
{
    (void)state;
    char *d = sharded_dir("idx-missing", "{\"weight_map\":{\"x.a\":\"model-00001-of-00002.safetensors\","
                                         "\"x.c\":\"model-00003-of-00002.safetensors\"}}");
    mx_ckpt_h ck = (mx_ckpt_h)(uintptr_t)0xBEEF;
    assert_int_equal(mx_ckpt_open(d, &ck), MX_ERR_FORMAT);
    assert_non_null(strstr(mx_error_detail(), "model-00003-of-00002.safetensors"));
    assert_non_null(strstr(mx_error_detail(), "missing"));
    assert_ptr_equal(ck, (mx_ckpt_h)(uintptr_t)0xBEEF);
    free(d);
}

static void test_index_rejects_tensor_absent_from_its_shard(void **state)
{
    (void)state;
    char *d = sharded_dir("idx-absent", "{\"weight_map\":{\"x.a\":\"model-00002-of-00002.safetensors\"}}");
    mx_ckpt_h ck;
    assert_int_equal(mx_ckpt_open(d, &ck), MX_ERR_FORMAT);
    assert_non_null(strstr(mx_error_detail(), "'x.a'"));
    assert_non_null(strstr(mx_error_detail(), "no such tensor"));
    free(d);
}

static void test_index_rejects_malformed_json_and_missing_weight_map(void **state)
{
    (void)state;
    char *d = sharded_dir("idx-bad", "{\"weight_map\":{\"x.a\":");
    mx_ckpt_h ck;
    assert_int_equal(mx_ckpt_open(d, &ck), MX_ERR_FORMAT);
    assert_non_null(strstr(mx_error_detail(), "model.safetensors.index.json"));
    assert_non_null(strstr(mx_error_detail(), "JSON"));
    free(d);
    d = sharded_dir("idx-nomap", "{\"metadata\":{}}");
    assert_int_equal(mx_ckpt_open(d, &ck), MX_ERR_FORMAT);
    assert_non_null(strstr(mx_error_detail(), "weight_map"));
    free(d);
}

static void test_index_rejects_shard_path_outside_directory(void **state)
{
    (void)state;
    char *d = sharded_dir("idx-path", "{\"weight_map\":{\"x.a\":\"../model-00001-of-00002.safetensors\"}}");
    mx_ckpt_h ck;
    assert_int_equal(mx_ckpt_open(d, &ck), MX_ERR_FORMAT);
    assert_non_null(strstr(mx_error_detail(), "same directory"));
    free(d);
}

static void test_index_rejects_duplicate_tensor(void **state)
{
    (void)state;
    char *d = sharded_dir("idx-dup", "{\"weight_map\":{\"x.a\":\"model-00001-of-00002.safetensors\","
                                     "\"x.a\":\"model-00001-of-00002.safetensors\"}}");
    mx_ckpt_h ck;
    assert_int_equal(mx_ckpt_open(d, &ck), MX_ERR_FORMAT);
    assert_non_null(strstr(mx_error_detail(), "twice"));
    free(d);
}

static void test_ckpt_open_reports_missing_config_and_weights(void **state)
{
    (void)state;
    char *d = ck_path(dir, "empty");
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", d);
    assert_int_equal(system(cmd), 0);
    mx_ckpt_h ck;
    assert_int_equal(mx_ckpt_open(d, &ck), MX_ERR_IO);
    assert_non_null(strstr(mx_error_detail(), "config.json"));
    char *p = ck_path(d, "config.json");
    ck_write_text(p, cfg_tiny);
    free(p);
    assert_int_equal(mx_ckpt_open(d, &ck), MX_ERR_IO);
    assert_non_null(strstr(mx_error_detail(), "model.safetensors"));
    free(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_st_reads_wellformed_file_with_metadata_and_empty_tensor),
        cmocka_unit_test(test_st_rejects_file_shorter_than_length_prefix),
        cmocka_unit_test(test_st_rejects_header_length_past_end_of_file),
        cmocka_unit_test(test_st_rejects_header_over_100_mb),
        cmocka_unit_test(test_st_rejects_header_that_is_not_json),
        cmocka_unit_test(test_st_rejects_header_that_is_not_an_object),
        cmocka_unit_test(test_st_rejects_trailing_bytes_after_header_json),
        cmocka_unit_test(test_st_rejects_unknown_dtype),
        cmocka_unit_test(test_st_rejects_shape_times_dtype_not_equal_to_span),
        cmocka_unit_test(test_st_rejects_offsets_outside_data_area),
        cmocka_unit_test(test_st_rejects_overlapping_tensors),
        cmocka_unit_test(test_st_rejects_duplicate_tensor_names),
        cmocka_unit_test(test_st_rejects_end_before_begin),
        cmocka_unit_test(test_st_rejects_negative_or_fractional_dimension),
        cmocka_unit_test(test_st_rejects_missing_data_offsets),
        cmocka_unit_test(test_st_rejects_f4_tensor_of_odd_element_count),
        cmocka_unit_test(test_st_rejects_shape_whose_size_overflows),
        cmocka_unit_test(test_st_rejects_metadata_with_non_string_value),
        cmocka_unit_test(test_st_open_missing_file_is_io_error),
        cmocka_unit_test(test_index_resolves_tensors_through_weight_map),
        cmocka_unit_test(test_index_rejects_missing_shard),
        cmocka_unit_test(test_index_rejects_tensor_absent_from_its_shard),
        cmocka_unit_test(test_index_rejects_malformed_json_and_missing_weight_map),
        cmocka_unit_test(test_index_rejects_shard_path_outside_directory),
        cmocka_unit_test(test_index_rejects_duplicate_tensor),
        cmocka_unit_test(test_ckpt_open_reports_missing_config_and_weights),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
