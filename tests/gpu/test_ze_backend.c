/* tests/gpu: the `ze` backend's probe reports MX_ERR_NO_DEVICE cleanly without
 * an Intel GPU, and supports() declines with its reason. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "mxep/kernels.h"

extern const mx_backend_ops_t mx_backend_ze;

static void test_ze_probe_without_gpu_reports_no_device(void **state)
{
    (void)state;
    mx_device_info_t info;
    memset(&info, 0x5a, sizeof info);
    mx_status_t st = mx_backend_ze.probe(&info);
    if (st == MX_OK) {
        printf("a Level Zero GPU is here (%s)\n", info.name);
        skip();
    }
    assert_int_equal(st, MX_ERR_NO_DEVICE);
    assert_non_null(strstr(mx_error_detail(), "ze:"));
    assert_int_equal(((unsigned char *)&info)[0], 0x5a);
}

static void test_ze_supports_declines_every_layer_with_reason(void **state)
{
    (void)state;
    mx_moe_desc_t d;
    memset(&d, 0, sizeof d);
    d.hidden = d.inter = 64;
    mx_device_info_t dev;
    memset(&dev, 0, sizeof dev);
    char why[MX_REASON_MAX] = "";
    assert_false(mx_backend_ze.supports(&dev, &d, why, sizeof why));
    assert_string_equal(why, "no Level Zero kernels yet");
    mx_backend_packed_t *pk = NULL;
    assert_int_equal(mx_backend_ze.prepack(&dev, &d, NULL, 0, &pk), MX_ERR_UNSUPPORTED);
    assert_null(pk);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ze_probe_without_gpu_reports_no_device),
        cmocka_unit_test(test_ze_supports_declines_every_layer_with_reason),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
