/* The oracle and the registry: fake backend tables (declining, deviceless,
 * forced, excluded) and the real registry of this build. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mxep/kernels.h"
#include "mxep/log.h"

/* ---------------------------------------------------------------- fakes */
static int probes[8]; /* probe calls per fake, by index below */

static mx_status_t probe_ok(mx_device_info_t *info_p, int id, const char *isa)
{
    probes[id]++;
    memset(info_p, 0, sizeof(*info_p));
    snprintf(info_p->name, sizeof(info_p->name), "fake device %d", id);
    snprintf(info_p->isa, sizeof(info_p->isa), "%s", isa);
    info_p->device_index = -1;
    return MX_OK;
}
static mx_status_t probe_ref(mx_device_info_t *i)
{
    return probe_ok(i, 0, "scalar");
}
static mx_status_t probe_cpu(mx_device_info_t *i)
{
    return probe_ok(i, 1, "avx2");
}
static mx_status_t probe_cuda(mx_device_info_t *i)
{
    (void)i;
    probes[2]++;
    return mx_error_set(MX_ERR_NO_DEVICE, "no CUDA device visible");
}
static mx_status_t probe_hip(mx_device_info_t *i)
{
    return probe_ok(i, 3, "gfx90a");
}
static mx_status_t probe_ze(mx_device_info_t *i)
{
    return probe_ok(i, 4, "xe");
}

static int supports_all(const mx_device_info_t *d, const mx_moe_desc_t *desc, char *r, size_t n)
{
    (void)d, (void)desc, (void)r, (void)n;
    return 1;
}
static int supports_cpu(const mx_device_info_t *d, const mx_moe_desc_t *desc, char *r, size_t n)
{
    (void)d;
    if (desc->scheme == MX_SCHEME_W8A8) {
        snprintf(r, n, "no W8A8 kernel");
        return 0;
    }
    return 1;
}
static int supports_hip(const mx_device_info_t *d, const mx_moe_desc_t *desc, char *r, size_t n)
{
    (void)d;
    if (desc->hidden % 64) {
        snprintf(r, n, "H=%zu is not a multiple of 64", desc->hidden);
        return 0;
    }
    return 1;
}
static int supports_silent_no(const mx_device_info_t *d, const mx_moe_desc_t *desc, char *r, size_t n)
{
    (void)d, (void)desc, (void)r, (void)n;
    return 0;
}

static const mx_backend_ops_t fake_ref = {.name = "ref", .priority = 0, .probe = probe_ref, .supports = supports_all};
static const mx_backend_ops_t fake_cpu = {.name = "cpu", .priority = 10, .probe = probe_cpu, .supports = supports_cpu};
static const mx_backend_ops_t fake_cuda = {
    .name = "cuda", .priority = 20, .probe = probe_cuda, .supports = supports_all};
static const mx_backend_ops_t fake_hip = {.name = "hip", .priority = 20, .probe = probe_hip, .supports = supports_hip};
static const mx_backend_ops_t fake_ze = {.name = "ze", .priority = 20, .probe = probe_ze, .supports = supports_all};
static const mx_backend_ops_t fake_mute = {
    .name = "cpu", .priority = 10, .probe = probe_cpu, .supports = supports_silent_no};

static const mx_backend_ops_t *const table4[] = {&fake_ref, &fake_cpu, &fake_cuda, &fake_hip};

static mx_moe_desc_t desc_of(mx_scheme_t s, size_t H)
{
    mx_moe_desc_t d;
    memset(&d, 0, sizeof(d));
    d.scheme = s;
    d.act = MX_ACT_SWIGLU_OAI;
    d.order = MX_GATEUP_INTERLEAVED;
    d.hidden = H;
    d.inter = 96;
    d.swiglu_limit = 7.0f;
    d.swiglu_alpha = 1.702f;
    return d;
}

static int setup(void **state)
{
    (void)state;
    unsetenv("MXEP_BACKEND");
    memset(probes, 0, sizeof(probes));
    mx_error_clear();
    return 0;
}

static char logbuf[16384];
static FILE *logf_;
static void log_begin(mx_log_level_t lvl)
{
    logf_ = tmpfile();
    assert_non_null(logf_);
    mx_log_set_level(lvl);
    mx_log_set_sink(logf_);
}
static const char *log_end(void)
{
    mx_log_set_sink(NULL);
    mx_log_set_level(MX_LOG_INFO);
    rewind(logf_);
    size_t n = fread(logbuf, 1, sizeof(logbuf) - 1, logf_);
    logbuf[n] = '\0';
    fclose(logf_);
    return logbuf;
}

static mx_oracle_choice_t poisoned_choice(void)
{
    mx_oracle_choice_t c;
    memset(&c, 0xA5, sizeof(c));
    return c;
}

/* cmocka mocks: a backend whose probe result and answer to supports() each
 * test queues with will_return, and whose arguments are checked with
 * expect_*: cmocka fails the test if the oracle calls one more often than
 * queued, or leaves a queued result unused (so each is called exactly once). */
static mx_status_t probe_mocked(mx_device_info_t *info_p)
{
    mx_status_t st = (mx_status_t)mock();
    if (st != MX_OK)
        return mx_error_set(st, "%s", mock_ptr_type(const char *));
    memset(info_p, 0, sizeof(*info_p));
    snprintf(info_p->name, sizeof(info_p->name), "mocked device");
    snprintf(info_p->isa, sizeof(info_p->isa), "%s", mock_ptr_type(const char *));
    info_p->device_index = 3;
    return MX_OK;
}
static int supports_mocked(const mx_device_info_t *d, const mx_moe_desc_t *desc, char *r, size_t n)
{
    check_expected(d->device_index); /* the device its own probe reported */
    check_expected(desc->hidden);    /* the layer asked about */
    int ok = (int)mock();
    if (!ok)
        snprintf(r, n, "%s", mock_ptr_type(const char *));
    return ok;
}
static const mx_backend_ops_t mock_gpu = {
    .name = "cuda", .priority = 30, .probe = probe_mocked, .supports = supports_mocked};

/* ---------------------------------------------------------------- tests */

static void test_oracle_with_cmocka_mocks_asks_each_backend_once_and_reports_why(void **state)
{
    (void)state;
    const mx_backend_ops_t *const t[] = {&fake_ref, &fake_cpu, &mock_gpu};
    mx_moe_desc_t d = desc_of(MX_SCHEME_W4A16, 256);
    char report[1024];
    mx_oracle_choice_t c;
    /* 1. no device: supports() is never asked (no expect_ queued: a call fails) */
    will_return(probe_mocked, MX_ERR_NO_DEVICE);
    will_return(probe_mocked, "driver too old");
    assert_int_equal(mx_oracle_select_from(t, 3, &d, NULL, report, sizeof(report), &c), MX_OK);
    assert_ptr_equal(c.backend, &fake_cpu);
    assert_non_null(strstr(report, "cuda: no device (driver too old)"));
    /* 2. a device that declines: the next backend by priority, the reason reported */
    will_return(probe_mocked, MX_OK);
    will_return(probe_mocked, "sm_90a");
    expect_value(supports_mocked, d->device_index, 3);
    expect_value(supports_mocked, desc->hidden, 256);
    will_return(supports_mocked, 0);
    will_return(supports_mocked, "H=256 unsupported by the mock");
    assert_int_equal(mx_oracle_select_from(t, 3, &d, NULL, report, sizeof(report), &c), MX_OK);
    assert_ptr_equal(c.backend, &fake_cpu);
    assert_non_null(strstr(report, "cuda: declined (H=256 unsupported by the mock)"));
    /* 3. a device that takes the layer wins on priority, with its probe's device */
    will_return(probe_mocked, MX_OK);
    will_return(probe_mocked, "sm_90a");
    expect_value(supports_mocked, d->device_index, 3);
    expect_value(supports_mocked, desc->hidden, 256);
    will_return(supports_mocked, 1);
    assert_int_equal(mx_oracle_select_from(t, 3, &d, NULL, report, sizeof(report), &c), MX_OK);
    assert_ptr_equal(c.backend, &mock_gpu);
    assert_string_equal(c.device.isa, "sm_90a");
    assert_int_equal(c.device.device_index, 3);
    assert_non_null(strstr(report, "cuda: chosen"));
    /* 4. forced, and declining: an error naming why, nothing else chosen */
    will_return(probe_mocked, MX_OK);
    will_return(probe_mocked, "sm_90a");
    expect_value(supports_mocked, d->device_index, 3);
    expect_value(supports_mocked, desc->hidden, 256);
    will_return(supports_mocked, 0);
    will_return(supports_mocked, "mock says no");
    assert_int_not_equal(mx_oracle_select_from(t, 3, &d, "cuda", report, sizeof(report), &c), MX_OK);
    assert_non_null(strstr(mx_error_detail(), "mock says no"));
}

static void test_oracle_picks_highest_priority_usable_backend(void **state)
{
    (void)state;
    mx_moe_desc_t d = desc_of(MX_SCHEME_W4A16, 128);
    char report[1024];
    mx_oracle_choice_t c = poisoned_choice();
    assert_int_equal(mx_oracle_select_from(table4, 4, &d, NULL, report, sizeof(report), &c), MX_OK);
    assert_ptr_equal(c.backend, &fake_hip);
    assert_string_equal(c.device.isa, "gfx90a");
    assert_non_null(strstr(c.reason, "highest priority"));
    assert_non_null(strstr(report, "ref: usable"));
    assert_non_null(strstr(report, "cpu: usable"));
    assert_non_null(strstr(report, "cuda: no device (no CUDA device visible)"));
    assert_non_null(strstr(report, "hip: chosen"));
    /* one line per candidate */
    int lines = 0;
    for (const char *p = report; *p; p++)
        lines += *p == '\n';
    assert_int_equal(lines, 4);
}

static void test_oracle_ties_go_to_the_earlier_table_entry(void **state)
{
    (void)state;
    const mx_backend_ops_t *const t[] = {&fake_ref, &fake_ze, &fake_hip};
    mx_moe_desc_t d = desc_of(MX_SCHEME_W4A16, 128);
    mx_oracle_choice_t c;
    assert_int_equal(mx_oracle_select_from(t, 3, &d, NULL, NULL, 0, &c), MX_OK);
    assert_ptr_equal(c.backend, &fake_ze);
}

static void test_oracle_falls_back_to_ref_and_warns_with_each_reason(void **state)
{
    (void)state;
    mx_moe_desc_t d = desc_of(MX_SCHEME_W8A8, 96); /* cpu: no W8A8, hip: H % 64 */
    char report[1024];
    mx_oracle_choice_t c;
    log_begin(MX_LOG_WARN);
    mx_status_t st = mx_oracle_select_from(table4, 4, &d, NULL, report, sizeof(report), &c);
    const char *log = log_end();
    assert_int_equal(st, MX_OK);
    assert_ptr_equal(c.backend, &fake_ref);
    assert_non_null(strstr(log, "warning: "));
    assert_non_null(strstr(log, "cpu: declined (no W8A8 kernel)"));
    assert_non_null(strstr(log, "cuda: no device (no CUDA device visible)"));
    assert_non_null(strstr(log, "hip: declined (H=96 is not a multiple of 64)"));
    assert_non_null(strstr(report, "ref: chosen"));
}

static void test_oracle_logs_every_candidate_at_debug_level(void **state)
{
    (void)state;
    mx_moe_desc_t d = desc_of(MX_SCHEME_W4A16, 128);
    mx_oracle_choice_t c;
    log_begin(MX_LOG_DEBUG);
    assert_int_equal(mx_oracle_select_from(table4, 4, &d, NULL, NULL, 0, &c), MX_OK);
    const char *log = log_end();
    assert_non_null(strstr(log, "ref: usable"));
    assert_non_null(strstr(log, "cpu: usable"));
    assert_non_null(strstr(log, "cuda: no device"));
    assert_non_null(strstr(log, "hip: usable"));
    assert_non_null(strstr(log, "chose hip"));
    assert_null(strstr(log, "warning"));
}

static void test_oracle_does_not_warn_when_ref_is_forced(void **state)
{
    (void)state;
    mx_moe_desc_t d = desc_of(MX_SCHEME_W8A8, 96);
    mx_oracle_choice_t c;
    log_begin(MX_LOG_WARN);
    assert_int_equal(mx_oracle_select_from(table4, 4, &d, "ref", NULL, 0, &c), MX_OK);
    const char *log = log_end();
    assert_ptr_equal(c.backend, &fake_ref);
    assert_string_equal(log, "");
}

static void test_oracle_forced_choice_beats_priority(void **state)
{
    (void)state;
    mx_moe_desc_t d = desc_of(MX_SCHEME_W4A16, 128);
    mx_oracle_choice_t c;
    assert_int_equal(mx_oracle_select_from(table4, 4, &d, "cpu", NULL, 0, &c), MX_OK);
    assert_ptr_equal(c.backend, &fake_cpu);
    assert_non_null(strstr(c.reason, "forced by argument=cpu"));
    assert_int_equal(probes[3], 0); /* hip not even probed */
    /* names are case-insensitive and may carry blanks */
    assert_int_equal(mx_oracle_select_from(table4, 4, &d, " CPU ", NULL, 0, &c), MX_OK);
    assert_ptr_equal(c.backend, &fake_cpu);
}

static void test_oracle_forced_backend_without_device_is_an_error_naming_why(void **state)
{
    (void)state;
    mx_moe_desc_t d = desc_of(MX_SCHEME_W4A16, 128);
    mx_oracle_choice_t c = poisoned_choice(), before = c;
    char report[512];
    assert_int_equal(mx_oracle_select_from(table4, 4, &d, "cuda", report, sizeof(report), &c), MX_ERR_NO_DEVICE);
    assert_memory_equal(&c, &before, sizeof(c));
    assert_int_equal(mx_error_last(), MX_ERR_NO_DEVICE);
    assert_non_null(strstr(mx_error_detail(), "'cuda'"));
    assert_non_null(strstr(mx_error_detail(), "no CUDA device visible"));
    assert_non_null(strstr(report, "cuda: no device"));
    assert_non_null(strstr(report, "cpu: excluded (not selected by argument=cuda)"));
}

static void test_oracle_forced_backend_that_declines_is_unsupported(void **state)
{
    (void)state;
    mx_moe_desc_t d = desc_of(MX_SCHEME_W8A8, 128);
    mx_oracle_choice_t c = poisoned_choice(), before = c;
    assert_int_equal(mx_oracle_select_from(table4, 4, &d, "cpu", NULL, 0, &c), MX_ERR_UNSUPPORTED);
    assert_memory_equal(&c, &before, sizeof(c));
    assert_non_null(strstr(mx_error_detail(), "'cpu'"));
    assert_non_null(strstr(mx_error_detail(), "no W8A8 kernel"));
    assert_non_null(strstr(mx_error_detail(), "W8A8"));
}

static void test_oracle_decline_without_reason_still_says_so(void **state)
{
    (void)state;
    const mx_backend_ops_t *const t[] = {&fake_ref, &fake_mute};
    mx_moe_desc_t d = desc_of(MX_SCHEME_W4A16, 128);
    mx_oracle_choice_t c;
    assert_int_equal(mx_oracle_select_from(t, 2, &d, "cpu", NULL, 0, &c), MX_ERR_UNSUPPORTED);
    assert_non_null(strstr(mx_error_detail(), "declined without a reason"));
}

static void test_oracle_reads_MXEP_BACKEND_and_the_argument_wins(void **state)
{
    (void)state;
    mx_moe_desc_t d = desc_of(MX_SCHEME_W4A16, 128);
    mx_oracle_choice_t c;
    setenv("MXEP_BACKEND", "cpu", 1);
    assert_int_equal(mx_oracle_select_from(table4, 4, &d, NULL, NULL, 0, &c), MX_OK);
    assert_ptr_equal(c.backend, &fake_cpu);
    assert_non_null(strstr(c.reason, "MXEP_BACKEND=cpu"));
    assert_int_equal(mx_oracle_select_from(table4, 4, &d, "ref", NULL, 0, &c), MX_OK);
    assert_ptr_equal(c.backend, &fake_ref);
    setenv("MXEP_BACKEND", "cuda", 1);
    assert_int_equal(mx_oracle_select_from(table4, 4, &d, NULL, NULL, 0, &c), MX_ERR_NO_DEVICE);
    assert_non_null(strstr(mx_error_detail(), "MXEP_BACKEND"));
    setenv("MXEP_BACKEND", "", 1); /* empty = no selection */
    assert_int_equal(mx_oracle_select_from(table4, 4, &d, NULL, NULL, 0, &c), MX_OK);
    assert_ptr_equal(c.backend, &fake_hip);
    unsetenv("MXEP_BACKEND");
}

/* A probe that fails for another reason than "no device" (a setting this machine cannot honour,
 * e.g. MXEP_CPU_ISA=avx2x or a level the CPU lacks) stops the oracle with that error: it fell back
 * to ref (45x slower) with only a warning. A backend the selection excludes is not probed at all. */
static mx_status_t probe_bad_setting(mx_device_info_t *i)
{
    (void)i;
    probes[5]++;
    return mx_error_set(MX_ERR_INVALID, "MXEP_CPU_ISA='avx2x': expected scalar, avx2, avx512 or amx");
}
static mx_status_t probe_absent_level(mx_device_info_t *i)
{
    (void)i;
    probes[6]++;
    return mx_error_set(MX_ERR_UNSUPPORTED, "MXEP_CPU_ISA=amx: this CPU only runs up to avx512");
}

static void test_oracle_probe_refusing_a_setting_is_an_error_not_a_fall_back(void **state)
{
    (void)state;
    mx_moe_desc_t d = desc_of(MX_SCHEME_W4A16, 128);
    const mx_backend_ops_t bad = {.name = "cpu", .priority = 10, .probe = probe_bad_setting, .supports = supports_all};
    const mx_backend_ops_t absent = {
        .name = "cpu", .priority = 10, .probe = probe_absent_level, .supports = supports_all};
    const mx_backend_ops_t *const t1[] = {&fake_ref, &bad, &fake_cuda};
    const mx_backend_ops_t *const t2[] = {&fake_ref, &absent};
    mx_oracle_choice_t c = poisoned_choice(), before = c;
    char report[1024];
    assert_int_equal(mx_oracle_select_from(t1, 3, &d, NULL, report, sizeof(report), &c), MX_ERR_INVALID);
    assert_non_null(strstr(mx_error_detail(), "backend cpu: MXEP_CPU_ISA='avx2x': expected scalar"));
    assert_memory_equal(&c, &before, sizeof(c)); /* untouched */
    assert_int_equal(mx_oracle_select_from(t2, 2, &d, NULL, NULL, 0, &c), MX_ERR_UNSUPPORTED);
    assert_non_null(strstr(mx_error_detail(), "backend cpu: MXEP_CPU_ISA=amx: this CPU only runs up to avx512"));
    /* "no device" still falls through (cuda above), and an excluded backend is not probed */
    memset(probes, 0, sizeof(probes));
    assert_int_equal(mx_oracle_select_from(t1, 3, &d, "ref", NULL, 0, &c), MX_OK);
    assert_ptr_equal(c.backend, &fake_ref);
    assert_int_equal(probes[5], 0);
}

static void test_oracle_caret_list_excludes_backends_without_probing_them(void **state)
{
    (void)state;
    mx_moe_desc_t d = desc_of(MX_SCHEME_W4A16, 128);
    char report[1024];
    mx_oracle_choice_t c;
    assert_int_equal(mx_oracle_select_from(table4, 4, &d, "^cuda,hip", report, sizeof(report), &c), MX_OK);
    assert_ptr_equal(c.backend, &fake_cpu);
    assert_int_equal(probes[2], 0);
    assert_int_equal(probes[3], 0);
    assert_non_null(strstr(report, "hip: excluded (excluded by argument=^cuda,hip)"));
    setenv("MXEP_BACKEND", "^hip", 1);
    assert_int_equal(mx_oracle_select_from(table4, 4, &d, NULL, NULL, 0, &c), MX_OK);
    assert_ptr_equal(c.backend, &fake_cpu);
    unsetenv("MXEP_BACKEND");
}

static void test_oracle_excluding_every_usable_backend_is_an_error(void **state)
{
    (void)state;
    mx_moe_desc_t d = desc_of(MX_SCHEME_W4A16, 128);
    mx_oracle_choice_t c = poisoned_choice(), before = c;
    assert_int_equal(mx_oracle_select_from(table4, 4, &d, "^ref,cpu,hip", NULL, 0, &c), MX_ERR_NO_DEVICE);
    assert_memory_equal(&c, &before, sizeof(c));
    assert_non_null(strstr(mx_error_detail(), "^ref,cpu,hip"));
    assert_non_null(strstr(mx_error_detail(), "cuda: no device"));
    assert_int_equal(mx_oracle_select_from(table4, 4, &d, "^ref,cpu,hip,cuda", NULL, 0, &c), MX_ERR_UNSUPPORTED);
}

static void test_oracle_include_list_takes_the_best_named(void **state)
{
    (void)state;
    mx_moe_desc_t d = desc_of(MX_SCHEME_W4A16, 128);
    mx_oracle_choice_t c;
    assert_int_equal(mx_oracle_select_from(table4, 4, &d, "ref,cpu", NULL, 0, &c), MX_OK);
    assert_ptr_equal(c.backend, &fake_cpu);
    assert_int_equal(mx_oracle_select_from(table4, 4, &d, "cuda,ref", NULL, 0, &c), MX_OK);
    assert_ptr_equal(c.backend, &fake_ref);
}

static void test_oracle_rejects_malformed_or_unknown_selections(void **state)
{
    (void)state;
    mx_moe_desc_t d = desc_of(MX_SCHEME_W4A16, 128);
    mx_oracle_choice_t c = poisoned_choice(), before = c;
    const char *bad[] = {"foo", "^", "cpu,,hip", "cpu,^hip", "^cpu,", ",", "cpu,tpu"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(mx_oracle_select_from(table4, 4, &d, bad[i], NULL, 0, &c), MX_ERR_INVALID);
        assert_memory_equal(&c, &before, sizeof(c));
        assert_non_null(strstr(mx_error_detail(), "backend selection"));
    }
    assert_int_equal(mx_oracle_select_from(table4, 4, &d, "foo", NULL, 0, &c), MX_ERR_INVALID);
    assert_non_null(strstr(mx_error_detail(), "unknown backend 'foo'"));
    assert_non_null(strstr(mx_error_detail(), "this build has: ref, cpu, cuda, hip"));
    assert_int_equal(probes[0] + probes[1] + probes[2] + probes[3], 0);
}

static void test_oracle_forced_backend_not_compiled_in_is_unsupported(void **state)
{
    (void)state;
    mx_moe_desc_t d = desc_of(MX_SCHEME_W4A16, 128);
    mx_oracle_choice_t c;
    assert_int_equal(mx_oracle_select_from(table4, 4, &d, "ze", NULL, 0, &c), MX_ERR_UNSUPPORTED);
    assert_non_null(strstr(mx_error_detail(), "'ze'"));
    assert_non_null(strstr(mx_error_detail(), "not compiled"));
    /* excluding a backend this build lacks is fine */
    assert_int_equal(mx_oracle_select_from(table4, 4, &d, "^ze", NULL, 0, &c), MX_OK);
    assert_ptr_equal(c.backend, &fake_hip);
}

static void test_oracle_rejects_bad_arguments(void **state)
{
    (void)state;
    mx_moe_desc_t d = desc_of(MX_SCHEME_W4A16, 128);
    mx_oracle_choice_t c;
    const mx_backend_ops_t broken = {.name = "cpu", .priority = 1, .probe = NULL, .supports = supports_all};
    const mx_backend_ops_t *const t[] = {&fake_ref, &broken};
    assert_int_equal(mx_oracle_select_from(NULL, 4, &d, NULL, NULL, 0, &c), MX_ERR_INVALID);
    assert_int_equal(mx_oracle_select_from(table4, 0, &d, NULL, NULL, 0, &c), MX_ERR_INVALID);
    assert_int_equal(mx_oracle_select_from(table4, 4, NULL, NULL, NULL, 0, &c), MX_ERR_INVALID);
    assert_int_equal(mx_oracle_select_from(table4, 4, &d, NULL, NULL, 0, NULL), MX_ERR_INVALID);
    assert_int_equal(mx_oracle_select_from(t, 2, &d, NULL, NULL, 0, &c), MX_ERR_INVALID);
    assert_non_null(strstr(mx_error_detail(), "entry 1"));
}

static void test_oracle_report_is_truncated_safely(void **state)
{
    (void)state;
    mx_moe_desc_t d = desc_of(MX_SCHEME_W4A16, 128);
    mx_oracle_choice_t c;
    char report[24];
    memset(report, 'Z', sizeof(report));
    assert_int_equal(mx_oracle_select_from(table4, 4, &d, NULL, report, 16, &c), MX_OK);
    assert_int_equal(strlen(report), 15);
    assert_int_equal(report[16], 'Z');
    assert_ptr_equal(c.backend, &fake_hip);
}

static void test_registry_lists_ref_first_and_finds_by_name(void **state)
{
    (void)state;
    int n = 0;
    const mx_backend_ops_t *const *t = mx_backend_registry(&n);
    assert_true(n >= 1);
    assert_string_equal(t[0]->name, "ref");
    assert_int_equal(t[0]->priority, 0);
    for (int i = 0; i < n; i++) {
        assert_non_null(t[i]->probe);
        assert_non_null(t[i]->supports);
        assert_non_null(t[i]->prepack);
        assert_non_null(t[i]->release);
        assert_non_null(t[i]->workspace_size);
        assert_non_null(t[i]->run);
        assert_ptr_equal(mx_backend_find(t[i]->name), t[i]);
        for (int j = 0; j < i; j++)
            assert_string_not_equal(t[i]->name, t[j]->name);
        printf("registered backend %d: %s (priority %d)\n", i, t[i]->name, t[i]->priority);
    }
    assert_ptr_equal(mx_backend_find("REF"), t[0]);
    assert_null(mx_backend_find("nope"));
    assert_null(mx_backend_find(NULL));
}

static void test_oracle_with_the_real_registry_always_finds_ref(void **state)
{
    (void)state;
    mx_moe_desc_t d = desc_of(MX_SCHEME_W4A16, 128);
    mx_oracle_choice_t c;
    char report[2048];
    assert_int_equal(mx_oracle_select(&d, "ref", report, sizeof(report), &c), MX_OK);
    assert_string_equal(c.backend->name, "ref");
    assert_int_equal(mx_oracle_select(&d, NULL, report, sizeof(report), &c), MX_OK);
    printf("%s", report);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_oracle_with_cmocka_mocks_asks_each_backend_once_and_reports_why, setup),
        cmocka_unit_test_setup(test_oracle_picks_highest_priority_usable_backend, setup),
        cmocka_unit_test_setup(test_oracle_ties_go_to_the_earlier_table_entry, setup),
        cmocka_unit_test_setup(test_oracle_falls_back_to_ref_and_warns_with_each_reason, setup),
        cmocka_unit_test_setup(test_oracle_logs_every_candidate_at_debug_level, setup),
        cmocka_unit_test_setup(test_oracle_does_not_warn_when_ref_is_forced, setup),
        cmocka_unit_test_setup(test_oracle_forced_choice_beats_priority, setup),
        cmocka_unit_test_setup(test_oracle_forced_backend_without_device_is_an_error_naming_why, setup),
        cmocka_unit_test_setup(test_oracle_forced_backend_that_declines_is_unsupported, setup),
        cmocka_unit_test_setup(test_oracle_decline_without_reason_still_says_so, setup),
        cmocka_unit_test_setup(test_oracle_reads_MXEP_BACKEND_and_the_argument_wins, setup),
        cmocka_unit_test_setup(test_oracle_caret_list_excludes_backends_without_probing_them, setup),
        cmocka_unit_test_setup(test_oracle_probe_refusing_a_setting_is_an_error_not_a_fall_back, setup),
        cmocka_unit_test_setup(test_oracle_excluding_every_usable_backend_is_an_error, setup),
        cmocka_unit_test_setup(test_oracle_include_list_takes_the_best_named, setup),
        cmocka_unit_test_setup(test_oracle_rejects_malformed_or_unknown_selections, setup),
        cmocka_unit_test_setup(test_oracle_forced_backend_not_compiled_in_is_unsupported, setup),
        cmocka_unit_test_setup(test_oracle_rejects_bad_arguments, setup),
        cmocka_unit_test_setup(test_oracle_report_is_truncated_safely, setup),
        cmocka_unit_test_setup(test_registry_lists_ref_first_and_finds_by_name, setup),
        cmocka_unit_test_setup(test_oracle_with_the_real_registry_always_finds_ref, setup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
