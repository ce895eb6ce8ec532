#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "mxep/moe.h"
#include "mxep/status.h"

static void test_status_str_names_every_code(void **state)
{
    (void)state;
    assert_string_equal(mx_status_str(MX_OK), "MX_OK");
    assert_string_equal(mx_status_str(MX_ERR_INVALID), "MX_ERR_INVALID");
    assert_string_equal(mx_status_str(MX_ERR_NOMEM), "MX_ERR_NOMEM");
    assert_string_equal(mx_status_str(MX_ERR_IO), "MX_ERR_IO");
    assert_string_equal(mx_status_str(MX_ERR_FORMAT), "MX_ERR_FORMAT");
    assert_string_equal(mx_status_str(MX_ERR_UNSUPPORTED), "MX_ERR_UNSUPPORTED");
    assert_string_equal(mx_status_str(MX_ERR_NO_DEVICE), "MX_ERR_NO_DEVICE");
    assert_string_equal(mx_status_str(MX_ERR_TRANSPORT), "MX_ERR_TRANSPORT");
    assert_string_equal(mx_status_str(MX_ERR_TIMEOUT), "MX_ERR_TIMEOUT");
    assert_string_equal(mx_status_str(MX_ERR_INTERNAL), "MX_ERR_INTERNAL");
    assert_string_equal(mx_status_str((mx_status_t)-77), "MX_ERR_UNKNOWN");
    assert_true(MX_OK == 0);
}

static void test_error_set_returns_status_and_keeps_detail(void **state)
{
    (void)state;
    mx_error_clear();
    assert_int_equal(mx_error_last(), MX_OK);
    assert_string_equal(mx_error_detail(), "");
    assert_int_equal(mx_error_set(MX_ERR_FORMAT, "tensor %s: expected %d bytes", "w", 16), MX_ERR_FORMAT);
    assert_string_equal(mx_error_detail(), "tensor w: expected 16 bytes");
    assert_int_equal(mx_error_last(), MX_ERR_FORMAT);
    assert_int_equal(mx_error_prefix(MX_ERR_FORMAT, "file %s: ", "a.safetensors"), MX_ERR_FORMAT);
    assert_string_equal(mx_error_detail(), "file a.safetensors: tensor w: expected 16 bytes");
    mx_error_clear();
    assert_string_equal(mx_error_detail(), "");
}

static void test_error_detail_truncates_long_messages(void **state)
{
    (void)state;
    char big[3000];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    mx_error_set(MX_ERR_INVALID, "%s", big);
    assert_int_equal(strlen(mx_error_detail()), MX_ERROR_DETAIL_MAX - 1);
}

static void test_names_parse_round_trip(void **state)
{
    (void)state;
    for (int s = 0; s < MX_SCHEME_COUNT; s++) {
        mx_scheme_t got = MX_SCHEME_COUNT;
        assert_int_equal(mx_scheme_parse(mx_scheme_name((mx_scheme_t)s), &got), MX_OK);
        assert_int_equal(got, s);
    }
    for (int a = 0; a < MX_ACT_COUNT; a++) {
        mx_act_t got = MX_ACT_COUNT;
        assert_int_equal(mx_act_parse(mx_act_name((mx_act_t)a), &got), MX_OK);
        assert_int_equal(got, a);
    }
    for (int r = 0; r < MX_ROUTER_COUNT; r++) {
        mx_router_kind_t got = MX_ROUTER_COUNT;
        assert_int_equal(mx_router_parse(mx_router_name((mx_router_kind_t)r), &got), MX_OK);
        assert_int_equal(got, r);
    }
    mx_scheme_t untouched = MX_SCHEME_W8A8;
    assert_int_equal(mx_scheme_parse("W3A7", &untouched), MX_ERR_INVALID);
    assert_int_equal(untouched, MX_SCHEME_W8A8);
    assert_non_null(strstr(mx_error_detail(), "W3A7"));
    assert_int_equal(mx_scheme_parse(NULL, &untouched), MX_ERR_INVALID);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_status_str_names_every_code),
        cmocka_unit_test(test_error_set_returns_status_and_keeps_detail),
        cmocka_unit_test(test_error_detail_truncates_long_messages),
        cmocka_unit_test(test_names_parse_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
