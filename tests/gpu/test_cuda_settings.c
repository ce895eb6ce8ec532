/* tests/gpu: the cuda backend's MXEP_CUDA_* settings check (mxi_cuda_check_settings,
 * which prepack calls first): every value each setting takes passes, unset and
 * empty pass, anything else (a misspelt or a retired value) is MX_ERR_INVALID
 * naming the variable, the value and what it takes. Needs no device (label unit). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cuda_internal.h"
#include "gpu_layout.h"
#include "mxep/status.h"

static const struct {
    const char *name;
    const char *ok[4];
    const char *bad[3];
} g_cases[] = {
    {"MXEP_CUDA_DEC", {"c48s", "a48s", "a45", NULL}, {"6x5", "c48v", "C48S"}},
    {"MXEP_CUDA_L", {"2x128", "1x256", NULL}, {"2x64", "1", NULL}},
    {"MXEP_CUDA_LF", {"2x64", "1x128", NULL}, {"2x128", "0", NULL}},
    {"MXEP_CUDA_QTHREADS", {"256", "auto", NULL}, {"1024", "512", NULL}},
    {"MXEP_CUDA_MMA", {"sync", "auto", NULL}, {"wgmma", "1", NULL}},
    {"MXEP_CUDA_PDL", {"0", "1", NULL}, {"off", "2", NULL}},
    {"MXEP_CUDA_TOKCOPY", {"0", "1", NULL}, {"yes", NULL}},
    {"MXEP_CUDA_L2PF", {"0", "1", NULL}, {"full", NULL}},
    {"MXEP_CUDA_FP8MMA", {"0", "1", NULL}, {"true", NULL}},
};
#define N_CASES (sizeof g_cases / sizeof g_cases[0])

static int setup(void **state)
{
    (void)state;
    for (size_t i = 0; i < N_CASES; i++)
        unsetenv(g_cases[i].name);
    unsetenv("MXEP_CUDA_PF2");
    return 0;
}

static void test_cuda_settings_unset_empty_and_known_values_pass(void **state)
{
    (void)state;
    assert_int_equal(mxi_cuda_check_settings(), MX_OK);
    for (size_t i = 0; i < N_CASES; i++) {
        setenv(g_cases[i].name, "", 1);
        assert_int_equal(mxi_cuda_check_settings(), MX_OK);
        for (int k = 0; k < 4 && g_cases[i].ok[k]; k++) {
            setenv(g_cases[i].name, g_cases[i].ok[k], 1);
            if (mxi_cuda_check_settings() != MX_OK)
                fail_msg("%s=%s refused: %s", g_cases[i].name, g_cases[i].ok[k], mx_error_detail());
        }
        unsetenv(g_cases[i].name);
    }
    /* a retired setting is no longer read at all */
    setenv("MXEP_CUDA_PF2", "1", 1);
    assert_int_equal(mxi_cuda_check_settings(), MX_OK);
}

static void test_cuda_settings_other_values_are_refused_by_name(void **state)
{
    (void)state;
    for (size_t i = 0; i < N_CASES; i++) {
        for (int k = 0; k < 3 && g_cases[i].bad[k]; k++) {
            setenv(g_cases[i].name, g_cases[i].bad[k], 1);
            assert_int_equal(mxi_cuda_check_settings(), MX_ERR_INVALID);
            const char *d = mx_error_detail();
            char want[64];
            snprintf(want, sizeof want, "%s='%s'", g_cases[i].name, g_cases[i].bad[k]);
            if (!strstr(d, want) || !strstr(d, g_cases[i].ok[0]) || !strstr(d, g_cases[i].ok[1]) ||
                !strstr(d, "expected") || !strstr(d, "default"))
                fail_msg("%s=%s: message '%s'", g_cases[i].name, g_cases[i].bad[k], d);
        }
        unsetenv(g_cases[i].name);
    }
    /* the kernels' own check names its variable too, with all three values of MXEP_CUDA_DEC */
    setenv("MXEP_CUDA_DEC", "n45t", 1);
    char msg[256];
    assert_int_equal(mxi_gpu_check_settings(msg, sizeof msg), -1);
    assert_non_null(strstr(msg, "MXEP_CUDA_DEC='n45t'"));
    assert_non_null(strstr(msg, "a45, a48s or c48s (default c48s)"));
    assert_int_equal(mxi_gpu_check_settings(NULL, 0), -1);
    unsetenv("MXEP_CUDA_DEC");
    assert_int_equal(mxi_gpu_check_settings(msg, sizeof msg), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_cuda_settings_unset_empty_and_known_values_pass, setup),
        cmocka_unit_test_setup(test_cuda_settings_other_values_are_refused_by_name, setup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
