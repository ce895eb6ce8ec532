/* tests/gpu: the `hip` backend's predicates (gfx arch parsing, FNUZ FP8 on
 * gfx94x) and its probe on the no-device path. Runs everywhere (label unit). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "hip_arch.h"

/* Whether this build compiled kernels/gpu for `arch`: CMake's MXEP_HIP_ARCHS
 * (comma-separated here, feature suffixes allowed), the test's own reading. */
static int built_here(const char *arch)
{
    char list[256];
    snprintf(list, sizeof list, "%s", MXEP_HIP_BUILT_ARCHS);
    for (char *save = NULL, *tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        tok[strcspn(tok, ":")] = '\0';
        if (!strcmp(tok, arch))
            return 1;
    }
    return 0;
}

static mx_moe_desc_t desc_of(mx_scheme_t s)
{
    mx_moe_desc_t d;
    memset(&d, 0, sizeof d);
    d.scheme = s;
    d.act = MX_ACT_SWIGLU_OAI;
    d.order = MX_GATEUP_INTERLEAVED;
    d.swiglu_limit = 7.0f;
    d.swiglu_alpha = 1.702f;
    d.hidden = d.inter = 2880;
    return d;
}

static void test_hip_arch_parse_strips_feature_suffixes(void **state)
{
    (void)state;
    mxi_hip_arch_t a;
    assert_int_equal(mxi_hip_arch_parse("gfx942:sramecc+:xnack-", &a), MX_OK);
    assert_string_equal(a.arch, "gfx942");
    assert_true(a.known && a.fp8 && a.fp8_fnuz && a.mfma_bf16);
    assert_int_equal(a.built, built_here("gfx942"));
    assert_int_equal(mxi_hip_arch_parse("gfx90a", &a), MX_OK);
    assert_true(a.known && a.mfma_bf16);
    assert_int_equal(a.built, built_here("gfx90a"));
    assert_false(a.fp8);
    assert_int_equal(mxi_hip_arch_parse("gfx940", &a), MX_OK);
    assert_true(a.fp8_fnuz);
    assert_int_equal(a.built, built_here("gfx940"));
    assert_int_equal(mxi_hip_arch_parse("gfx950", &a), MX_OK);
    assert_true(a.fp8);
    assert_false(a.fp8_fnuz);
    assert_int_equal(mxi_hip_arch_parse("gfx1100", &a), MX_OK);
    assert_false(a.known);
}

static void test_hip_arch_parse_rejects_non_gfx_names_and_keeps_output(void **state)
{
    (void)state;
    mxi_hip_arch_t a;
    memset(&a, 0x5a, sizeof a);
    assert_int_equal(mxi_hip_arch_parse("sm_90a", &a), MX_ERR_INVALID);
    assert_non_null(strstr(mx_error_detail(), "sm_90a"));
    assert_int_equal(mxi_hip_arch_parse("gfx", &a), MX_ERR_INVALID);
    assert_int_equal(mxi_hip_arch_parse("gfx9z0", &a), MX_ERR_INVALID);
    assert_int_equal(mxi_hip_arch_parse(NULL, &a), MX_ERR_INVALID);
    assert_int_equal(((unsigned char *)&a)[0], 0x5a);
}

static void test_hip_kfd_target_version_names_the_arch(void **state)
{
    (void)state;
    char s[32];
    assert_int_equal(mxi_hip_arch_from_kfd(90010, s, sizeof s), MX_OK);
    assert_string_equal(s, "gfx90a");
    assert_int_equal(mxi_hip_arch_from_kfd(90402, s, sizeof s), MX_OK);
    assert_string_equal(s, "gfx942");
    assert_int_equal(mxi_hip_arch_from_kfd(110000, s, sizeof s), MX_OK);
    assert_string_equal(s, "gfx1100");
    assert_int_equal(mxi_hip_arch_from_kfd(0, s, sizeof s), MX_ERR_INVALID);
    assert_int_equal(mxi_hip_arch_from_kfd(91700, s, sizeof s), MX_ERR_INVALID);
}

static void test_hip_fp8_schemes_are_declined_for_fnuz_and_for_gfx90a(void **state)
{
    (void)state;
    mxi_hip_arch_t a;
    char why[MX_REASON_MAX];
    mx_moe_desc_t d = desc_of(MX_SCHEME_W8A8);
    assert_int_equal(mxi_hip_arch_parse("gfx942", &a), MX_OK);
    assert_false(mxi_hip_arch_supports(&a, &d, why, sizeof why));
    assert_non_null(strstr(why, "FNUZ"));
    assert_int_equal(mxi_hip_arch_parse("gfx90a", &a), MX_OK);
    d = desc_of(MX_SCHEME_W4A8);
    assert_false(mxi_hip_arch_supports(&a, &d, why, sizeof why));
    assert_non_null(strstr(why, "no FP8"));
    d = desc_of(MX_SCHEME_W4A16);
    assert_false(mxi_hip_arch_supports(&a, &d, why, sizeof why));
    assert_non_null(strstr(why, built_here("gfx90a") ? "not linked" : "not compiled"));
    assert_int_equal(mxi_hip_arch_parse("gfx1100", &a), MX_OK);
    assert_false(mxi_hip_arch_supports(&a, &d, why, sizeof why));
    assert_non_null(strstr(why, "gfx1100"));
    /* a description no backend can run is named as such, not as this arch's shortcoming */
    assert_int_equal(mxi_hip_arch_parse("gfx942", &a), MX_OK);
    d = desc_of(MX_SCHEME_W4A16);
    d.inter = 2890;
    assert_false(mxi_hip_arch_supports(&a, &d, why, sizeof why));
    assert_non_null(strstr(why, "multiples of 32"));
    d = desc_of(MX_SCHEME_W4A16);
    d.swiglu_limit = 0.0f;
    assert_false(mxi_hip_arch_supports(&a, &d, why, sizeof why));
    assert_non_null(strstr(why, "swiglu_limit"));
}

/* gfx940 is FNUZ like gfx942 (and is the FNUZ target this build compiles for):
 * every scheme with FP8 weights or activations is declined there; a known
 * target outside MXEP_HIP_ARCHS is declined as not compiled; a probe that could
 * not name the arch ("unknown") is declined through supports() with the
 * setting that fixes it. */
static void test_hip_gfx940_fnuz_unbuilt_targets_and_unknown_arch_are_declined(void **state)
{
    (void)state;
    mxi_hip_arch_t a;
    char why[MX_REASON_MAX];
    const mx_scheme_t fp8[] = {MX_SCHEME_W8A8, MX_SCHEME_W8A16, MX_SCHEME_W4A8};
    assert_int_equal(mxi_hip_arch_parse("gfx940", &a), MX_OK);
    for (size_t i = 0; i < sizeof fp8 / sizeof fp8[0]; i++) {
        mx_moe_desc_t d = desc_of(fp8[i]);
        why[0] = '\0';
        assert_false(mxi_hip_arch_supports(&a, &d, why, sizeof why));
        if (!strstr(why, "FNUZ") || !strstr(why, mx_scheme_name(fp8[i])))
            fail_msg("gfx940 %s: '%s' does not name FNUZ and the scheme", mx_scheme_name(fp8[i]), why);
    }
    /* the built list is CMake's MXEP_HIP_ARCHS (default gfx90a, gfx940): every
     * known target outside it is declined as not compiled, the ones in it for
     * not being linked */
    mx_moe_desc_t d = desc_of(MX_SCHEME_W4A16);
    const char *known[] = {"gfx90a", "gfx940", "gfx941", "gfx942", "gfx950"};
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
        assert_int_equal(mxi_hip_arch_parse(known[i], &a), MX_OK);
        assert_true(a.known);
        assert_int_equal(a.built, built_here(known[i]));
        why[0] = '\0';
        assert_false(mxi_hip_arch_supports(&a, &d, why, sizeof why));
        const char *want = a.built ? "not linked" : "not compiled for this target";
        if (!strstr(why, want) || !strstr(why, known[i]))
            fail_msg("%s W4A16 (built %d): '%s', expected '%s'", known[i], a.built, why, want);
    }
    /* gfx950's FP8 is OCP E4M3FN: never declined for FNUZ */
    d = desc_of(MX_SCHEME_W8A8);
    assert_int_equal(mxi_hip_arch_parse("gfx950", &a), MX_OK);
    assert_false(mxi_hip_arch_supports(&a, &d, why, sizeof why));
    assert_null(strstr(why, "FNUZ"));
    mx_device_info_t dev;
    memset(&dev, 0, sizeof dev);
    snprintf(dev.isa, sizeof dev.isa, "unknown");
    why[0] = '\0';
    assert_false(mx_backend_hip.supports(&dev, &d, why, sizeof why));
    assert_non_null(strstr(why, "unknown AMD arch 'unknown'"));
    assert_non_null(strstr(why, "MXEP_HIP_ARCH"));
    why[0] = '\0';
    assert_false(mx_backend_hip.supports(NULL, &d, why, sizeof why));
    assert_non_null(strstr(why, "unknown AMD arch"));
    /* a named arch goes through the same predicate */
    snprintf(dev.isa, sizeof dev.isa, "gfx940:sramecc+:xnack-");
    assert_false(mx_backend_hip.supports(&dev, &d, why, sizeof why));
    assert_non_null(strstr(why, "FNUZ"));
}

static void test_hip_probe_without_amd_gpu_reports_no_device(void **state)
{
    (void)state;
    mx_device_info_t info;
    memset(&info, 0x5a, sizeof info);
    mx_status_t st = mx_backend_hip.probe(&info);
    if (st == MX_OK) {
        printf("an AMD GPU is here (%s, %s): the no-device path cannot be checked\n", info.name, info.isa);
        skip();
    }
    assert_int_equal(st, MX_ERR_NO_DEVICE);
    assert_non_null(strstr(mx_error_detail(), "hip"));
    assert_int_equal(((unsigned char *)&info)[0], 0x5a);
    mx_backend_packed_t *pk = NULL;
    mx_moe_desc_t d = desc_of(MX_SCHEME_W4A16);
    mx_device_info_t fake;
    memset(&fake, 0, sizeof fake);
    snprintf(fake.isa, sizeof fake.isa, "gfx90a");
    assert_int_equal(mx_backend_hip.prepack(&fake, &d, NULL, 0, &pk), MX_ERR_UNSUPPORTED);
    assert_null(pk);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hip_arch_parse_strips_feature_suffixes),
        cmocka_unit_test(test_hip_arch_parse_rejects_non_gfx_names_and_keeps_output),
        cmocka_unit_test(test_hip_kfd_target_version_names_the_arch),
        cmocka_unit_test(test_hip_fp8_schemes_are_declined_for_fnuz_and_for_gfx90a),
        cmocka_unit_test(test_hip_gfx940_fnuz_unbuilt_targets_and_unknown_arch_are_declined),
        cmocka_unit_test(test_hip_probe_without_amd_gpu_reports_no_device),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
