/* mxworker command line: defaults, presets, validation messages (no MPI). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "worker_internal.h"

static int parse(wk_opts_t *o, char *msg, size_t len, int argc, const char **argv)
{
    return wk_opts_parse(argc, (char **)argv, o, msg, len, 0);
}

static void test_opts_default_is_bench_on_gpt_oss_20b(void **state)
{
    (void)state;
    wk_opts_t o;
    char msg[256] = "";
    const char *argv[] = {"mxworker"};
    assert_int_equal(parse(&o, msg, sizeof msg, 1, argv), 0);
    assert_int_equal(o.cmd, WK_CMD_BENCH);
    assert_string_equal(o.preset, "gpt-oss-20b");
    assert_null(o.model_dir);
    assert_int_equal(o.tokens, 64);
    assert_int_equal(o.combine, MX_COMBINE_EXACT);
    assert_int_equal(o.dtype, MX_DISPATCH_BF16);
    assert_int_equal(o.router, WK_ROUTER_MODEL);
    assert_string_equal(o.placement, "contiguous");
}

static void test_opts_deepep_preset_sets_fp8_uniform_128_tokens(void **state)
{
    (void)state;
    wk_opts_t o;
    char msg[256] = "";
    const char *argv[] = {"mxworker", "bench", "--preset", "deepep-ll"};
    assert_int_equal(parse(&o, msg, sizeof msg, 4, argv), 0);
    assert_int_equal(o.dtype, MX_DISPATCH_FP8);
    assert_int_equal(o.router, WK_ROUTER_UNIFORM);
    assert_int_equal(o.tokens, 128);
    /* explicit flags win over the preset's defaults */
    const char *argv2[] = {"mxworker", "--preset=deepep-ll", "--dispatch-dtype", "bf16", "--tokens", "7"};
    assert_int_equal(parse(&o, msg, sizeof msg, 6, argv2), 0);
    assert_int_equal(o.dtype, MX_DISPATCH_BF16);
    assert_int_equal(o.tokens, 7);
}

static void test_opts_run_parses_input_output_and_layer(void **state)
{
    (void)state;
    wk_opts_t o;
    char msg[256] = "";
    const char *argv[] = {"mxworker", "run",           "--model",       "/m",      "--layer",   "3",
                          "--input",  "x.st",          "--output=y.st", "--check", "--combine", "reduce",
                          "--router", "expert_choice", "--seed",        "0x10"};
    assert_int_equal(parse(&o, msg, sizeof msg, 16, argv), 0);
    assert_int_equal(o.cmd, WK_CMD_RUN);
    assert_string_equal(o.model_dir, "/m");
    assert_int_equal(o.layer, 3);
    assert_string_equal(o.input, "x.st");
    assert_string_equal(o.output, "y.st");
    assert_int_equal(o.check, 1);
    assert_int_equal(o.combine, MX_COMBINE_REDUCE);
    assert_int_equal(o.router, MX_ROUTER_EXPERT_CHOICE);
    assert_int_equal(o.seed, 16);
    /* a leading zero is decimal, not octal */
    const char *argv2[] = {"mxworker", "bench", "--seed", "010"};
    assert_int_equal(parse(&o, msg, sizeof msg, 4, argv2), 0);
    assert_int_equal(o.seed, 10);
}

static void expect_error(int argc, const char **argv, const char *needle)
{
    wk_opts_t o;
    char msg[256] = "";
    assert_int_equal(parse(&o, msg, sizeof msg, argc, argv), 2);
    if (!strstr(msg, needle))
        fail_msg("message '%s' lacks '%s'", msg, needle);
}

static void test_opts_errors_name_the_flag_and_what_was_expected(void **state)
{
    (void)state;
    const char *a1[] = {"mxworker", "--tokens", "-3"};
    expect_error(3, a1, "--tokens '-3': expected an integer");
    const char *a2[] = {"mxworker", "--tokens", "12abc"};
    expect_error(3, a2, "--tokens '12abc'");
    const char *a3[] = {"mxworker", "--frobnicate"};
    expect_error(2, a3, "unknown option '--frobnicate'");
    const char *a4[] = {"mxworker", "sreve"};
    expect_error(2, a4, "unknown subcommand 'sreve': expected bench, run, info or serve");
    const char *a5[] = {"mxworker", "--iters"};
    expect_error(2, a5, "--iters needs a value");
    const char *a6[] = {"mxworker", "--combine", "sum"};
    expect_error(3, a6, "expected exact or reduce");
    const char *a7[] = {"mxworker", "--dispatch-dtype", "fp4"};
    expect_error(3, a7, "expected bf16 or fp8");
    const char *a8[] = {"mxworker", "--router", "hash"};
    expect_error(3, a8, "--router 'hash'");
    const char *a9[] = {"mxworker", "--exchange", "nccl"};
    expect_error(3, a9, "--exchange 'nccl'");
    const char *a10[] = {"mxworker", "--tokens", "4", "--tokens-total", "9"};
    expect_error(5, a10, "exclude each other");
    const char *a11[] = {"mxworker", "run", "--input", "x"};
    expect_error(4, a11, "needs --input FILE and --output FILE");
    const char *a12[] = {"mxworker", "run", "--input", "x", "--output", "y", "--iters", "3"};
    expect_error(8, a12, "--iters is an option of mxworker bench");
    const char *a13[] = {"mxworker", "bench", "--input", "x"};
    expect_error(4, a13, "--input is an option of mxworker run");
    const char *a14[] = {"mxworker", "info", "--check"};
    expect_error(3, a14, "--check is not an option of mxworker info");
    const char *a15[] = {"mxworker", "--model", "/m", "--experts", "4"};
    expect_error(5, a15, "--experts applies to the built-in model");
    const char *a16[] = {"mxworker", "--check=yes"};
    expect_error(2, a16, "--check takes no value");
    const char *a17[] = {"mxworker", "run", "--router", "uniform", "--input", "x", "--output", "y"};
    expect_error(8, a17, "uniform is an option of mxworker bench");
    const char *a18[] = {"mxworker", "--seed", "-1"};
    expect_error(3, a18, "--seed '-1'");
    /* a value-taking flag does not swallow the next option as its value */
    const char *a19[] = {"mxworker", "bench", "--json", "--quiet"};
    expect_error(4, a19, "--json needs a value, got the option '--quiet'");
    const char *a21[] = {"mxworker", "info", "--quiet"};
    expect_error(3, a21, "--quiet is an option of mxworker bench, not of mxworker info");
    const char *a20[] = {"mxworker", "run", "--model", "--input", "x", "--output", "y"};
    expect_error(7, a20, "--model needs a value, got the option '--input'");
    /* --preset with --model: refused (the preset was silently ignored, unlike --experts with --model) */
    const char *a22[] = {"mxworker", "bench", "--model", "/m", "--preset", "gpt-oss-120b"};
    expect_error(6, a22, "--preset gpt-oss-120b names a built-in model; it does not combine with --model /m");
    const char *a23[] = {"mxworker", "bench", "--preset", "deepep-ll", "--model", "/m"};
    expect_error(6, a23, "--preset deepep-ll names a built-in model; it does not combine with --model /m");
    /* a leading blank before the minus reached strtoull, which wrapped " -5" to 2^64 - 5 */
    const char *a24[] = {"mxworker", "--seed", " -5"};
    expect_error(3, a24, "--seed ' -5': expected a non-negative integer");
    const char *a25[] = {"mxworker", "--seed", "+5"};
    expect_error(3, a25, "--seed '+5'");
    /* serve takes --layers too: the message says so */
    const char *a26[] = {"mxworker", "info", "--layers", "2"};
    expect_error(4, a26, "--layers is an option of mxworker bench and serve, not of mxworker info");
    /* ignored before: the exchange path under UCX, an empty backend (the default oracle) */
    const char *a27[] = {"mxworker", "--transport", "ucx", "--exchange", "alltoallv"};
    expect_error(5, a27, "--exchange picks the MPI transport's path; --transport ucx does not use it");
    const char *a28[] = {"mxworker", "--backend", ""};
    expect_error(3, a28, "--backend '': expected a backend name or list");
    const char *a29[] = {"mxworker", "--backend", " "};
    expect_error(3, a29, "--backend ' ': expected a backend name or list");
}

static void test_opts_serve_needs_listen_and_takes_layers_and_max_tokens(void **state)
{
    (void)state;
    wk_opts_t o;
    char msg[256] = "";
    const char *a[] = {"mxworker",         "serve",     "--listen", "tcp://127.0.0.1:5555",
                       "--layer",          "2",         "--layers", "3",
                       "--max-tokens=512", "--combine", "reduce"};
    int r = parse(&o, msg, sizeof msg, 11, a);
    if (!WK_HAVE_SERVE) {
        assert_int_equal(r, 2);
        assert_non_null(strstr(msg, "built without nanomsg"));
        return;
    }
    assert_int_equal(r, 0);
    assert_int_equal(o.cmd, WK_CMD_SERVE);
    assert_string_equal(o.listen, "tcp://127.0.0.1:5555");
    assert_int_equal(o.layer, 2);
    assert_int_equal(o.layers, 3);
    assert_int_equal(o.max_tokens, 512);
    assert_int_equal(o.combine, MX_COMBINE_REDUCE);
    assert_int_equal(o.transport, WK_TRANSPORT_MPI);
    const char *e1[] = {"mxworker", "serve", "--preset", "tiny"};
    expect_error(4, e1, "mxworker serve needs --listen URL");
    const char *e2[] = {"mxworker", "serve", "--listen", "ipc:///x", "--tokens", "4"};
    expect_error(6, e2, "--tokens is an option of mxworker bench");
    const char *e3[] = {"mxworker", "serve", "--listen", "ipc:///x", "--check"};
    expect_error(5, e3, "--check is not an option of mxworker serve");
    const char *e4[] = {"mxworker", "serve", "--listen", "ipc:///x", "--max-tokens", "70000"};
    expect_error(6, e4, "--max-tokens '70000': expected an integer in [1, 65536]");
    const char *e5[] = {"mxworker", "bench", "--listen", "ipc:///x"};
    expect_error(4, e5, "--listen is an option of mxworker serve, not of mxworker bench");
    const char *e6[] = {"mxworker", "serve", "--listen", ""};
    expect_error(4, e6, "--listen '': expected a nanomsg address");
    /* a malformed address is a bad command line (exit 2), not a failed job */
    const char *bad[] = {
        "bogus://x", "tcp://127.0.0.1:99999", "tcp://127.0.0.1", "tcp://:5555", "ipc://", "tcp://h:55a5", "5555"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *eb[] = {"mxworker", "serve", "--listen", bad[i]};
        expect_error(4, eb, "expected a nanomsg address: tcp://HOST:PORT");
    }
    const char *good[] = {"tcp://*:5555", "tcp://[::1]:1",  "ipc:///tmp/mxep.sock",
                          "inproc://x",   "ws://h:65535/p", "tcp://eth0;127.0.0.1:5555"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        const char *eg[] = {"mxworker", "serve", "--listen", good[i]};
        assert_int_equal(parse(&o, msg, sizeof msg, 4, eg), 0);
        assert_string_equal(o.listen, good[i]);
    }
    const char *e7[] = {"mxworker", "serve", "--listen", "ipc:///x", "--json", "j"};
    expect_error(6, e7, "--json is not an option of mxworker serve");
    const char *e8[] = {"mxworker", "serve", "--listen", "ipc:///x", "--preset", "deepep-ll"};
    expect_error(6, e8, "deepep-ll is a bench shape");
}

static void test_opts_transport_mpi_ucx_and_both_where_they_apply(void **state)
{
    (void)state;
    wk_opts_t o;
    char msg[256] = "";
    const char *a[] = {"mxworker", "run", "--input", "x", "--output", "y", "--transport", "mpi"};
    assert_int_equal(parse(&o, msg, sizeof msg, 8, a), 0);
    assert_int_equal(o.transport, WK_TRANSPORT_MPI);
    const char *b[] = {"mxworker", "run", "--input", "x", "--output", "y", "--transport=UCX"};
    const char *c[] = {"mxworker", "bench", "--transport", "both"};
    const char *d[] = {"mxworker", "info", "--transport", "both"};
    if (WK_HAVE_UCX) {
        assert_int_equal(parse(&o, msg, sizeof msg, 7, b), 0);
        assert_int_equal(o.transport, WK_TRANSPORT_UCX);
        assert_int_equal(parse(&o, msg, sizeof msg, 4, c), 0);
        assert_int_equal(o.transport, WK_TRANSPORT_BOTH);
        assert_int_equal(parse(&o, msg, sizeof msg, 4, d), 0);
        assert_int_equal(o.transport, WK_TRANSPORT_BOTH);
    } else {
        expect_error(7, b, "built without UCX");
        expect_error(4, c, "built without UCX");
    }
    const char *e1[] = {"mxworker", "run", "--input", "x", "--output", "y", "--transport", "both"};
    expect_error(8, e1, "--transport both is for mxworker bench and info");
    const char *e2[] = {"mxworker", "--transport", "nccl"};
    expect_error(3, e2, "--transport 'nccl': expected mpi or ucx");
    assert_string_equal(wk_transport_name(WK_TRANSPORT_UCX), "ucx");
    assert_string_equal(wk_transport_name(WK_TRANSPORT_MPI), "mpi");
}

static void test_opts_baseline_layer_by_default_alone_on_request_bench_only(void **state)
{
    (void)state;
    wk_opts_t o;
    char msg[256] = "";
    const char *a[] = {"mxworker", "bench"};
    assert_int_equal(parse(&o, msg, sizeof msg, 2, a), 0);
    assert_int_equal(o.baseline, WK_BASELINE_LAYER);
    const char *b[] = {"mxworker", "--baseline=ALONE"};
    assert_int_equal(parse(&o, msg, sizeof msg, 2, b), 0);
    assert_int_equal(o.baseline, WK_BASELINE_ALONE);
    const char *e1[] = {"mxworker", "--baseline", "never"};
    expect_error(3, e1, "--baseline 'never': expected layer or alone");
    const char *e2[] = {"mxworker", "run", "--input", "x", "--output", "y", "--baseline", "alone"};
    expect_error(8, e2, "--baseline is an option of mxworker bench, not of mxworker run");
}

static void test_opts_help_returns_1_for_every_subcommand(void **state)
{
    (void)state;
    wk_opts_t o;
    char msg[256] = "";
    const char *a[] = {"mxworker", "--help"};
    assert_int_equal(parse(&o, msg, sizeof msg, 2, a), 1);
    const char *b[] = {"mxworker", "run", "-h"};
    assert_int_equal(parse(&o, msg, sizeof msg, 3, b), 1);
    const char *c[] = {"mxworker", "info", "--json", "x", "--help"};
    assert_int_equal(parse(&o, msg, sizeof msg, 5, c), 1);
    const char *d[] = {"mxworker", "help"};
    assert_int_equal(parse(&o, msg, sizeof msg, 2, d), 1);
    if (WK_HAVE_SERVE) {
        const char *e[] = {"mxworker", "serve", "--help"};
        assert_int_equal(parse(&o, msg, sizeof msg, 3, e), 1);
    }
}

static void test_split_covers_every_token_once(void **state)
{
    (void)state;
    size_t totals[] = {0, 1, 7, 37, 128};
    for (size_t i = 0; i < sizeof totals / sizeof totals[0]; i++)
        for (int R = 1; R <= 9; R++) {
            size_t next = 0;
            for (int r = 0; r < R; r++) {
                size_t f, c;
                wk_split(totals[i], R, r, &f, &c);
                assert_int_equal(f, next);
                next = f + c;
                assert_true(c == totals[i] / (size_t)R || c == totals[i] / (size_t)R + 1);
            }
            assert_int_equal(next, totals[i]);
        }
}

static void test_fill_tokens_depends_only_on_global_index(void **state)
{
    (void)state;
    uint16_t a[10 * 8], b[4 * 8];
    wk_fill_tokens(5, 0, 10, 8, a);
    wk_fill_tokens(5, 3, 4, 8, b);
    assert_memory_equal(a + 3 * 8, b, sizeof b);
    int nonzero = 0;
    for (size_t i = 0; i < 80; i++)
        nonzero += a[i] != 0;
    assert_true(nonzero > 70);
    wk_fill_tokens(6, 3, 4, 8, b);
    assert_memory_not_equal(a + 3 * 8, b, sizeof b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_opts_default_is_bench_on_gpt_oss_20b),
        cmocka_unit_test(test_opts_deepep_preset_sets_fp8_uniform_128_tokens),
        cmocka_unit_test(test_opts_run_parses_input_output_and_layer),
        cmocka_unit_test(test_opts_errors_name_the_flag_and_what_was_expected),
        cmocka_unit_test(test_opts_serve_needs_listen_and_takes_layers_and_max_tokens),
        cmocka_unit_test(test_opts_transport_mpi_ucx_and_both_where_they_apply),
        cmocka_unit_test(test_opts_baseline_layer_by_default_alone_on_request_bench_only),
        cmocka_unit_test(test_opts_help_returns_1_for_every_subcommand),
        cmocka_unit_test(test_split_covers_every_token_once),
        cmocka_unit_test(test_fill_tokens_depends_only_on_global_index),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
