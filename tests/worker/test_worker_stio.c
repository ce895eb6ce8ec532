/* mxworker run's safetensors I/O: round trip, F32 input, malformed inputs
 * rejected with the file named, output never half-written. Seed 77. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "worker_internal.h"

static char dir[256];

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/mxep_stio_XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    return system(cmd) == 0 ? 0 : -1;
}

static void write_raw(const char *path, const char *hdr, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    uint64_t len = strlen(hdr);
    uint8_t l8[8];
    for (int i = 0; i < 8; i++)
        l8[i] = (uint8_t)(len >> (8 * i));
    assert_int_equal(fwrite(l8, 1, 8, f), 8);
    assert_int_equal(fwrite(hdr, 1, len, f), len);
    if (n)
        assert_int_equal(fwrite(data, 1, n, f), n);
    fclose(f);
}

static void test_stio_output_round_trips_hidden_states(void **state)
{
    (void)state;
    enum { T = 5, H = 12, K = 3 };
    uint16_t h[T * H];
    int32_t ids[T * K];
    float w[T * K];
    srand(77);
    for (int i = 0; i < T * H; i++)
        h[i] = (uint16_t)(rand() & 0xffff);
    for (int i = 0; i < T * K; i++) {
        ids[i] = rand() % 100;
        w[i] = (float)rand() / (float)RAND_MAX;
    }
    char path[300];
    snprintf(path, sizeof path, "%s/out.safetensors", dir);
    assert_int_equal(wk_st_write_output(path, h, T, H, ids, w, K), MX_OK);
    wk_hidden_t in = {99, 99, NULL};
    assert_int_equal(wk_st_read_hidden(path, &in), MX_OK);
    assert_int_equal(in.rows, T);
    assert_int_equal(in.cols, H);
    assert_memory_equal(in.bf16, h, sizeof h);
    free(in.bf16);
    /* no temporary left behind */
    char tmp[400];
    snprintf(tmp, sizeof tmp, "%s/out.safetensors.tmp.%d", dir, (int)getpid());
    assert_int_equal(access(tmp, F_OK), -1);
}

static void test_stio_f32_input_is_rounded_to_bf16(void **state)
{
    (void)state;
    float x[2 * 3] = {1.0f, -2.5f, 3.14159f, 1e-3f, 65504.0f, -0.0f};
    char path[300], hdr[200];
    snprintf(path, sizeof path, "%s/f32.safetensors", dir);
    snprintf(hdr, sizeof hdr, "{\"hidden_states\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]}}");
    write_raw(path, hdr, x, sizeof x);
    wk_hidden_t in = {0, 0, NULL};
    assert_int_equal(wk_st_read_hidden(path, &in), MX_OK);
    for (int i = 0; i < 6; i++)
        assert_int_equal(in.bf16[i], wk_f32_bf16(x[i]));
    free(in.bf16);
}

static void expect_bad(const char *name, const char *hdr, size_t data_bytes, mx_status_t st, const char *needle)
{
    char path[300];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    uint8_t data[64] = {0};
    write_raw(path, hdr, data, data_bytes);
    wk_hidden_t in = {7, 7, (uint16_t *)0x1};
    assert_int_equal(wk_st_read_hidden(path, &in), st);
    assert_int_equal(in.rows, 7); /* untouched */
    assert_ptr_equal(in.bf16, (uint16_t *)0x1);
    if (!strstr(mx_error_detail(), needle) || !strstr(mx_error_detail(), name))
        fail_msg("detail '%s' lacks '%s' or the file name", mx_error_detail(), needle);
}

static void test_stio_rejects_malformed_inputs_naming_the_file(void **state)
{
    (void)state;
    expect_bad("notjson.st", "{nope", 0, MX_ERR_FORMAT, "not a JSON object");
    expect_bad("noname.st", "{\"x\":{\"dtype\":\"BF16\",\"shape\":[1,2],\"data_offsets\":[0,4]}}", 4, MX_ERR_FORMAT,
               "no tensor 'hidden_states'");
    expect_bad("i8.st", "{\"hidden_states\":{\"dtype\":\"I8\",\"shape\":[1,2],\"data_offsets\":[0,2]}}", 2,
               MX_ERR_FORMAT, "expected BF16 or F32");
    expect_bad("3d.st", "{\"hidden_states\":{\"dtype\":\"BF16\",\"shape\":[1,2,2],\"data_offsets\":[0,8]}}", 8,
               MX_ERR_FORMAT, "expected 2");
    expect_bad("short.st", "{\"hidden_states\":{\"dtype\":\"BF16\",\"shape\":[4,4],\"data_offsets\":[0,32]}}", 8,
               MX_ERR_FORMAT, "needs 32 bytes");
    expect_bad("offs.st", "{\"hidden_states\":{\"dtype\":\"BF16\",\"shape\":[2,2],\"data_offsets\":[0,6]}}", 8,
               MX_ERR_FORMAT, "needs 8 bytes");
    /* data_offsets past the file's end (near 2^64, where 8 + header + offset as an
     * integer would wrap around to a small number) and fractional numbers */
    expect_bad("wrap.st",
               "{\"hidden_states\":{\"dtype\":\"BF16\",\"shape\":[2,2],"
               "\"data_offsets\":[18446744073709551608,18446744073709551616]}}",
               8, MX_ERR_FORMAT, "past the end of the file");
    expect_bad("far.st", "{\"hidden_states\":{\"dtype\":\"BF16\",\"shape\":[2,2],\"data_offsets\":[1e30,1e30]}}", 8,
               MX_ERR_FORMAT, "data_offsets");
    expect_bad("frac.st", "{\"hidden_states\":{\"dtype\":\"BF16\",\"shape\":[1.5,2],\"data_offsets\":[0,6]}}", 8,
               MX_ERR_FORMAT, "bad shape or data_offsets");
    wk_hidden_t in = {0, 0, NULL};
    /* a directory is not an input file */
    assert_int_equal(wk_st_read_hidden(dir, &in), MX_ERR_IO);
    assert_non_null(strstr(mx_error_detail(), "not a regular file"));
    assert_int_equal(wk_st_read_hidden("/nonexistent/mxep/in.st", &in), MX_ERR_IO);
    assert_non_null(strstr(mx_error_detail(), "/nonexistent/mxep/in.st"));
    char path[300];
    snprintf(path, sizeof path, "%s/tiny.st", dir);
    FILE *f = fopen(path, "wb");
    fputs("abc", f);
    fclose(f);
    assert_int_equal(wk_st_read_hidden(path, &in), MX_ERR_FORMAT);
    /* header length larger than the file */
    uint8_t big[8] = {0xff, 0xff, 0, 0, 0, 0, 0, 0};
    f = fopen(path, "wb");
    fwrite(big, 1, 8, f);
    fclose(f);
    assert_int_equal(wk_st_read_hidden(path, &in), MX_ERR_FORMAT);
    assert_null(in.bf16);
}

static void test_stio_write_into_missing_dir_fails_and_leaves_nothing(void **state)
{
    (void)state;
    uint16_t h[4] = {1, 2, 3, 4};
    int32_t ids[2] = {0, 1};
    float w[2] = {0.5f, 0.5f};
    char path[300];
    snprintf(path, sizeof path, "%s/missing/out.st", dir);
    assert_int_equal(wk_st_write_output(path, h, 2, 2, ids, w, 1), MX_ERR_IO);
    assert_non_null(strstr(mx_error_detail(), "missing/out.st"));
    assert_int_equal(access(path, F_OK), -1);
    /* an existing directory as the output: the reason is the rename's, not a stale errno */
    assert_int_equal(wk_st_write_output(dir, h, 2, 2, ids, w, 1), MX_ERR_IO);
    assert_non_null(strstr(mx_error_detail(), strerror(EISDIR)));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stio_output_round_trips_hidden_states),
        cmocka_unit_test(test_stio_f32_input_is_rounded_to_bf16),
        cmocka_unit_test(test_stio_rejects_malformed_inputs_naming_the_file),
        cmocka_unit_test(test_stio_write_into_missing_dir_fails_and_leaves_nothing),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
