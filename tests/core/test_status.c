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
    /* a refused name's error lists every accepted one */
    mx_router_kind_t rk = MX_ROUTER_TOPK_SOFTMAX;
    assert_int_equal(mx_router_parse("top2", &rk), MX_ERR_INVALID);
    for (int r = 0; r < MX_ROUTER_COUNT; r++)
        if (!strstr(mx_error_detail(), mx_router_name((mx_router_kind_t)r)))
            fail_msg("'%s' does not name router %s", mx_error_detail(), mx_router_name((mx_router_kind_t)r));
    mx_act_t ak = MX_ACT_SILU;
    assert_int_equal(mx_act_parse("relu", &ak), MX_ERR_INVALID);
    for (int a = 0; a < MX_ACT_COUNT; a++)
        if (!strstr(mx_error_detail(), mx_act_name((mx_act_t)a)))
            fail_msg("'%s' does not name activation %s", mx_error_detail(), mx_act_name((mx_act_t)a));
}

/* mx_moe_desc_check: every rule, each failure named with the value found, and
 * nothing written past reason_len */
static void test_moe_desc_check_names_what_fails(void **state)
{
    (void)state;
    const mx_moe_desc_t good = {.scheme = MX_SCHEME_W4A16,
                                .act = MX_ACT_SWIGLU_OAI,
                                .order = MX_GATEUP_INTERLEAVED,
                                .hidden = 2880,
                                .inter = 2880,
                                .swiglu_limit = 7.0f,
                                .swiglu_alpha = 1.702f};
    char why[256];
    assert_int_equal(mx_moe_desc_check(&good, 4096, why, sizeof why), 1);
    assert_int_equal(mx_moe_desc_check(&good, 4096, NULL, 0), 1);
    struct {
        mx_moe_desc_t d;
        size_t max_dim;
        const char *want;
    } bad[] = {
        {good, 2048, "H=2880 I=2880: expected 1..2048 each"},
        {good, 4096, NULL}, /* scheme 9 */
        {good, 4096, NULL}, /* activation 7 */
        {good, 4096, NULL}, /* order 3 */
        {good, 4096, "H=0 I=2880"},
        {good, 4096, "W4A8 needs H and I multiples of 32 (MXFP4 blocks), got H=2880 I=2890"},
        {good, 4096, "W8A8 activation groups of 64 (act_group 64): expected 0 (per token) or 128"},
        {good, 4096, "swiglu_oai needs swiglu_limit > 0 and swiglu_alpha > 0 (got 0, 1.702)"},
        {good, 4096, "swiglu_alpha > 0 (got 7, -1)"},
    };
    bad[1].d.scheme = (mx_scheme_t)9, bad[1].want = "unknown scheme 9";
    bad[2].d.act = (mx_act_t)7, bad[2].want = "unknown activation 7";
    bad[3].d.order = (mx_gateup_order_t)3, bad[3].want = "unknown gate/up order 3";
    bad[4].d.hidden = 0;
    bad[5].d.scheme = MX_SCHEME_W4A8, bad[5].d.inter = 2890;
    bad[6].d.scheme = MX_SCHEME_W8A8, bad[6].d.act_group = 64;
    bad[7].d.swiglu_limit = 0.0f;
    bad[8].d.swiglu_alpha = -1.0f;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        memset(why, 'x', sizeof why);
        assert_int_equal(mx_moe_desc_check(&bad[i].d, bad[i].max_dim, why, sizeof why), 0);
        if (!strstr(why, bad[i].want))
            fail_msg("case %zu: reason '%s' lacks '%s'", i, why, bad[i].want);
        assert_int_equal(mx_moe_desc_check(&bad[i].d, bad[i].max_dim, NULL, 0), 0);
    }
    /* the same rules hold elsewhere: W8A8 per 128, BF16 weights any size, other activations no SwiGLU params */
    mx_moe_desc_t d = good;
    d.scheme = MX_SCHEME_W8A8, d.act_group = 128;
    assert_int_equal(mx_moe_desc_check(&d, 4096, why, sizeof why), 1);
    d = good;
    d.scheme = MX_SCHEME_W16A16, d.hidden = 33, d.inter = 7;
    assert_int_equal(mx_moe_desc_check(&d, 4096, why, sizeof why), 1);
    d = good;
    d.act = MX_ACT_SILU, d.swiglu_limit = 0.0f, d.swiglu_alpha = 0.0f;
    assert_int_equal(mx_moe_desc_check(&d, 4096, why, sizeof why), 1);
    assert_int_equal(mx_moe_desc_check(NULL, 4096, why, sizeof why), 0);
    assert_non_null(strstr(why, "no layer description"));
    /* a short buffer holds a cut, terminated reason */
    char tiny[8];
    memset(tiny, 'x', sizeof tiny);
    assert_int_equal(mx_moe_desc_check(&bad[7].d, 4096, tiny, sizeof tiny), 0);
    assert_string_equal(tiny, "swiglu_");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_status_str_names_every_code),
        cmocka_unit_test(test_error_set_returns_status_and_keeps_detail),
        cmocka_unit_test(test_error_detail_truncates_long_messages),
        cmocka_unit_test(test_names_parse_round_trip),
        cmocka_unit_test(test_moe_desc_check_names_what_fails),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
