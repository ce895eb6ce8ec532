#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mxep/log.h"

static char *capture(void (*emit)(void))
{
    static char buf[4096];
    FILE *f = tmpfile();
    assert_non_null(f);
    mx_log_set_sink(f);
    emit();
    mx_log_set_sink(NULL);
    rewind(f);
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static void emit_all_levels(void)
{
    MX_LOG_E("worker", "e %d", 1);
    MX_LOG_W("worker", "w %d", 2);
    MX_LOG_I("worker", "i %d", 3);
    MX_LOG_D("worker", "d %d", 4);
}

static void test_log_prefix_has_rank_host_module(void **state)
{
    (void)state;
    mx_log_set_level(MX_LOG_INFO);
    mx_log_set_rank(3);
    mx_log_set_host("nodeA");
    char *out = capture(emit_all_levels);
    assert_non_null(strstr(out, "[mxep r3 nodeA worker] error: e 1\n"));
    assert_non_null(strstr(out, "[mxep r3 nodeA worker] warning: w 2\n"));
    assert_non_null(strstr(out, "[mxep r3 nodeA worker] i 3\n"));
    assert_null(strstr(out, "d 4"));
}

static void test_log_level_filters(void **state)
{
    (void)state;
    mx_log_set_rank(-1);
    mx_log_set_host("h");
    mx_log_set_level(MX_LOG_ERROR);
    char *out = capture(emit_all_levels);
    assert_non_null(strstr(out, "[mxep h worker] error: e 1"));
    assert_null(strstr(out, "w 2"));
    mx_log_set_level(MX_LOG_DEBUG);
    out = capture(emit_all_levels);
    assert_non_null(strstr(out, "d 4"));
}

static void test_log_level_parse(void **state)
{
    (void)state;
    mx_log_level_t l = MX_LOG_INFO;
    assert_int_equal(mx_log_level_parse("debug", &l), 0);
    assert_int_equal(l, MX_LOG_DEBUG);
    assert_int_equal(mx_log_level_parse("WARN", &l), 0);
    assert_int_equal(l, MX_LOG_WARN);
    assert_int_equal(mx_log_level_parse("error", &l), 0);
    assert_int_equal(l, MX_LOG_ERROR);
    assert_int_equal(mx_log_level_parse("verbose", &l), -1);
    assert_int_equal(l, MX_LOG_ERROR);
    assert_int_equal(mx_log_level_parse(NULL, &l), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_log_prefix_has_rank_host_module),
        cmocka_unit_test(test_log_level_filters),
        cmocka_unit_test(test_log_level_parse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
