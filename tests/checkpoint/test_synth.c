/* Synthetic checkpoints: write -> read round trip for every preset (the file's
 * experts equal the in-memory generator's), sharding, determinism, magnitudes,
 * and failures that leave nothing half-written. Seeds are fixed and printed. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "ck_util.h"
#include "mxep/checkpoint.h"
#include "mxep/quant.h"

static char *root;

static int setup(void **state)
{
    (void)state;
    root = ck_tmpdir("synth");
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    ck_rmtree(root);
    free(root);
    return 0;
}

static size_t matrix_bytes(const mx_matrix_t *m, size_t *scales_p)
{
    size_t d = 0, s = 0;
    if (m->fmt == MX_WFMT_BF16)
        d = m->rows * m->cols * 2;
    else if (m->fmt == MX_WFMT_MXFP4) {
        d = m->rows * m->cols / 2;
        s = m->rows * m->cols / 32;
    } else {
        d = m->rows * m->cols;
        s = 4 * (m->scale_kind == MX_WSCALE_BLOCK     ? ((m->rows + 127) / 128) * ((m->cols + 127) / 128)
                 : m->scale_kind == MX_WSCALE_CHANNEL ? m->rows
                                                      : 1);
    }
    *scales_p = s;
    return d;
}

static void expect_same_matrix(const mx_matrix_t *a, const mx_matrix_t *b, const char *what, int expert)
{
    if (a->fmt != b->fmt || a->scale_kind != b->scale_kind || a->rows != b->rows || a->cols != b->cols)
        fail_msg("expert %d %s: format/shape differ (%d/%d %zux%zu vs %d/%d %zux%zu)", expert, what, a->fmt,
                 a->scale_kind, a->rows, a->cols, b->fmt, b->scale_kind, b->rows, b->cols);
    size_t sa, sb;
    size_t da = matrix_bytes(a, &sa), db = matrix_bytes(b, &sb);
    assert_int_equal(da, db);
    if (memcmp(a->data, b->data, da) != 0)
        fail_msg("expert %d %s: data bytes differ", expert, what);
    if (sa && memcmp(a->scales, b->scales, sa) != 0)
        fail_msg("expert %d %s: scales differ", expert, what);
}

static void expect_same_experts(mx_expert_set_h a, mx_expert_set_h b)
{
    assert_int_equal(mx_expert_set_count(a), mx_expert_set_count(b));
    for (int i = 0; i < mx_expert_set_count(a); i++) {
        const mx_expert_weights_t *x = &mx_expert_set_weights(a)[i], *y = &mx_expert_set_weights(b)[i];
        int e = mx_expert_set_ids(a)[i];
        assert_int_equal(e, mx_expert_set_ids(b)[i]);
        expect_same_matrix(&x->gate_up, &y->gate_up, "gate_up", e);
        expect_same_matrix(&x->down, &y->down, "down", e);
        assert_int_equal(x->gate_up_bias != NULL, y->gate_up_bias != NULL);
        if (x->gate_up_bias) {
            assert_memory_equal(x->gate_up_bias, y->gate_up_bias, x->gate_up.rows * 4);
            assert_memory_equal(x->down_bias, y->down_bias, x->down.rows * 4);
        }
        assert_true(x->input_scale == y->input_scale);
        assert_true(x->down_input_scale == y->down_input_scale);
    }
}

static void expect_same_config(const mx_model_config_t *a, const mx_model_config_t *b)
{
    assert_string_equal(a->model_type, b->model_type);
    assert_string_equal(a->quant_method, b->quant_method);
    assert_int_equal(a->n_layers, b->n_layers);
    assert_int_equal(a->n_experts, b->n_experts);
    assert_int_equal(a->hidden, b->hidden);
    assert_int_equal(a->inter, b->inter);
    assert_int_equal(a->moe.scheme, b->moe.scheme);
    assert_int_equal(a->moe.act, b->moe.act);
    assert_int_equal(a->moe.order, b->moe.order);
    assert_int_equal(a->router.kind, b->router.kind);
    assert_int_equal(a->router.top_k, b->router.top_k);
    assert_int_equal(a->router.n_group, b->router.n_group);
    assert_int_equal(a->router.topk_group, b->router.topk_group);
}

typedef struct {
    const char *preset, *layout, *quant;
    mx_scheme_t scheme;
    int layers, experts; /* experts 0: the whole preset */
    size_t shard_bytes;
} rt_case_t;

static void roundtrip(const rt_case_t *c)
{
    const uint64_t seed = 20261123;
    print_message("round trip %s: seed %llu, %d layers, %d experts\n", c->preset, (unsigned long long)seed, c->layers,
                  c->experts);
    char *d = ck_path(root, c->preset);
    mx_status_t st = mx_synth_write_ex(c->preset, c->layers, c->experts, seed, d, c->shard_bytes, NULL, NULL);
    if (st)
        fail_msg("write %s: %s %s", c->preset, mx_status_str(st), mx_error_detail());
    mx_ckpt_h ck;
    if ((st = mx_ckpt_open(d, &ck)))
        fail_msg("open %s: %s %s", d, mx_status_str(st), mx_error_detail());
    const mx_model_config_t *cfg = mx_ckpt_config(ck);
    mx_model_config_t want;
    assert_int_equal(mx_synth_config_ex(c->preset, c->layers, c->experts, &want), MX_OK);
    expect_same_config(cfg, &want);
    assert_string_equal(mx_ckpt_layout_name(ck), c->layout);
    assert_string_equal(cfg->quant_method, c->quant);
    assert_int_equal(cfg->moe.scheme, c->scheme);
    int E = cfg->n_experts;
    int all[16], n;
    if (E <= 16) {
        for (n = 0; n < E; n++)
            all[n] = E - 1 - n; /* any order */
    } else {
        all[0] = 1;
        all[1] = E - 1;
        n = 2;
    }
    for (int L = 0; L < c->layers; L++) {
        mx_expert_set_h got, exp;
        if ((st = mx_ckpt_load_experts(ck, L, all, n, &got)))
            fail_msg("load %s layer %d: %s %s", c->preset, L, mx_status_str(st), mx_error_detail());
        assert_int_equal(mx_synth_experts(cfg, seed, L, all, n, &exp), MX_OK);
        expect_same_experts(got, exp);
        mx_expert_set_destroy(got);
        mx_expert_set_destroy(exp);
        mx_router_weights_t ra, rb;
        assert_int_equal(mx_ckpt_load_router(ck, L, &ra), MX_OK);
        assert_int_equal(mx_synth_router(cfg, seed, L, &rb), MX_OK);
        assert_memory_equal(ra.weight, rb.weight, (size_t)E * cfg->hidden * 4);
        assert_int_equal(ra.bias != NULL, rb.bias != NULL);
        if (ra.bias)
            assert_memory_equal(ra.bias, rb.bias, (size_t)E * 4);
        assert_int_equal(ra.correction_bias != NULL, rb.correction_bias != NULL);
        if (ra.correction_bias)
            assert_memory_equal(ra.correction_bias, rb.correction_bias, (size_t)E * 4);
        /* Gemma 4: router.scale and router.per_expert_scale, written and generated alike */
        assert_int_equal(ra.scale != NULL, cfg->router.kind == MX_ROUTER_GEMMA4);
        assert_int_equal(rb.scale != NULL, cfg->router.kind == MX_ROUTER_GEMMA4);
        assert_int_equal(ra.per_expert_scale != NULL, rb.per_expert_scale != NULL);
        assert_int_equal(ra.per_expert_scale != NULL, ra.scale != NULL);
        assert_true(ra.rms_eps == rb.rms_eps);
        if (ra.scale) {
            assert_memory_equal(ra.scale, rb.scale, cfg->hidden * 4);
            assert_memory_equal(ra.per_expert_scale, rb.per_expert_scale, (size_t)E * 4);
            assert_true(ra.rms_eps == 1e-6f);
            /* sane values: positive, finite, around 1, not all equal */
            int differ = 0;
            for (size_t h = 0; h < cfg->hidden; h++) {
                assert_true(ra.scale[h] > 0.0625f && ra.scale[h] < 16.0f);
                differ += ra.scale[h] != ra.scale[0];
            }
            for (int e = 0; e < E; e++)
                assert_true(ra.per_expert_scale[e] > 0.25f && ra.per_expert_scale[e] < 4.0f);
            assert_true(differ > 0);
        }
        mx_router_weights_fini(&ra);
        mx_router_weights_fini(&rb);
    }
    mx_ckpt_close(ck);
    ck_rmtree(d);
    free(d);
}

static void test_synth_tiny_roundtrip_sharded_all_experts(void **state)
{
    (void)state;
    rt_case_t c = {"tiny", "gpt_oss_fused", "gpt_oss_mxfp4", MX_SCHEME_W4A16, 2, 0, 40000};
    roundtrip(&c);
}

static void test_synth_tiny_single_file_has_no_index(void **state)
{
    (void)state;
    char *d = ck_path(root, "tiny-single");
    assert_int_equal(mx_synth_write("tiny", 2, 1, d, 0, NULL, NULL), MX_OK);
    char *p = ck_path(d, "model.safetensors.index.json");
    struct stat sb;
    assert_int_not_equal(stat(p, &sb), 0);
    free(p);
    p = ck_path(d, "model.safetensors");
    assert_int_equal(stat(p, &sb), 0);
    free(p);
    ck_rmtree(d);
    free(d);
    d = ck_path(root, "tiny-sharded");
    assert_int_equal(mx_synth_write("tiny", 2, 1, d, 40000, NULL, NULL), MX_OK);
    p = ck_path(d, "model.safetensors.index.json");
    assert_int_equal(stat(p, &sb), 0);
    free(p);
    mx_ckpt_h ck;
    assert_int_equal(mx_ckpt_open(d, &ck), MX_OK);
    assert_true(mx_ckpt_file_count(ck) > 1);
    mx_ckpt_close(ck);
    ck_rmtree(d);
    free(d);
}

static void test_synth_gpt_oss_20b_roundtrip(void **state)
{
    (void)state;
    rt_case_t c = {"gpt-oss-20b", "gpt_oss_fused", "gpt_oss_mxfp4", MX_SCHEME_W4A16, 1, 2, 0};
    roundtrip(&c);
}

static void test_synth_gpt_oss_120b_roundtrip(void **state)
{
    (void)state;
    rt_case_t c = {"gpt-oss-120b", "gpt_oss_fused", "gpt_oss_mxfp4", MX_SCHEME_W4A16, 1, 2, 0};
    roundtrip(&c);
}

static void test_synth_qwen3_moe_fp8_roundtrip(void **state)
{
    (void)state;
    rt_case_t c = {"qwen3-moe-fp8", "per_expert_2d", "fp8_channel", MX_SCHEME_W8A8, 2, 3, 0};
    roundtrip(&c);
}

static void test_synth_deepseek_fp8_roundtrip(void **state)
{
    (void)state;
    rt_case_t c = {"deepseek-fp8", "per_expert_2d", "fp8_block", MX_SCHEME_W8A8, 1, 2, 0};
    roundtrip(&c);
}

static void test_synth_gemma4_fp8_roundtrip(void **state)
{
    (void)state;
    rt_case_t c = {"gemma4-fp8", "per_expert_2d", "fp8_channel", MX_SCHEME_W8A8, 1, 3, 0};
    roundtrip(&c);
}

static void test_synth_w4a8_roundtrip_has_input_scales(void **state)
{
    (void)state;
    rt_case_t c = {"w4a8", "gpt_oss_fused", "w_mxfp4_a_fp8", MX_SCHEME_W4A8, 1, 2, 0};
    roundtrip(&c);
    mx_model_config_t cfg;
    assert_int_equal(mx_synth_config("w4a8", 1, &cfg), MX_OK);
    int ids[1] = {5};
    mx_expert_set_h s;
    assert_int_equal(mx_synth_experts(&cfg, 3, 0, ids, 1, &s), MX_OK);
    const mx_expert_weights_t *w = mx_expert_set_weights(s);
    assert_true(w->input_scale > 4.0f / 448 && w->input_scale < 6.0f / 448);
    assert_true(w->down_input_scale > 3.0f / 448 && w->down_input_scale < 5.0f / 448);
    mx_expert_set_destroy(s);
}

/* Expert j's bytes do not depend on how many experts the file holds. */
static void test_synth_expert_bytes_do_not_depend_on_expert_count(void **state)
{
    (void)state;
    mx_model_config_t full, small;
    assert_int_equal(mx_synth_config("gpt-oss-120b", 2, &full), MX_OK);
    assert_int_equal(mx_synth_config_ex("gpt-oss-20b", 2, 4, &small), MX_OK);
    assert_int_equal(full.n_experts, 128);
    assert_int_equal(small.n_experts, 4);
    int ids[1] = {3};
    mx_expert_set_h a, b;
    assert_int_equal(mx_synth_experts(&full, 9, 1, ids, 1, &a), MX_OK);
    assert_int_equal(mx_synth_experts(&small, 9, 1, ids, 1, &b), MX_OK);
    expect_same_experts(a, b);
    mx_expert_set_destroy(a);
    mx_expert_set_destroy(b);
}

static void test_synth_seed_and_layer_change_the_weights(void **state)
{
    (void)state;
    mx_model_config_t c;
    assert_int_equal(mx_synth_config("tiny", 2, &c), MX_OK);
    int ids[1] = {0};
    mx_expert_set_h a, b, l1;
    assert_int_equal(mx_synth_experts(&c, 1, 0, ids, 1, &a), MX_OK);
    assert_int_equal(mx_synth_experts(&c, 2, 0, ids, 1, &b), MX_OK);
    assert_int_equal(mx_synth_experts(&c, 1, 1, ids, 1, &l1), MX_OK);
    size_t n = 2 * 96 * 64 / 2;
    assert_memory_not_equal(mx_expert_set_weights(a)->gate_up.data, mx_expert_set_weights(b)->gate_up.data, n);
    assert_memory_not_equal(mx_expert_set_weights(a)->gate_up.data, mx_expert_set_weights(l1)->gate_up.data, n);
    mx_expert_set_destroy(a);
    mx_expert_set_destroy(b);
    mx_expert_set_destroy(l1);
}

static double rms(const float *x, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += (double)x[i] * x[i];
    return sqrt(s / (double)n);
}

/* Decoded weights are ~ N(0, 1/sqrt(K)): a layer's outputs are O(1) for unit inputs. */
static void test_synth_weight_magnitudes_are_one_over_sqrt_k(void **state)
{
    (void)state;
    const char *names[3] = {"gpt-oss-20b", "qwen3-moe-fp8", "deepseek-fp8"};
    for (int p = 0; p < 3; p++) {
        mx_model_config_t c;
        assert_int_equal(mx_synth_config(names[p], 1, &c), MX_OK);
        int ids[1] = {7};
        mx_expert_set_h s;
        assert_int_equal(mx_synth_experts(&c, 77, 0, ids, 1, &s), MX_OK);
        const mx_matrix_t *m = &mx_expert_set_weights(s)->gate_up;
        size_t rows = 64, K = m->cols;
        float *v = malloc(rows * K * sizeof *v);
        for (size_t r = 0; r < rows; r++) {
            if (m->fmt == MX_WFMT_MXFP4)
                assert_int_equal(mx_quant_mxfp4_decode_row((const uint8_t *)m->data + r * K / 2,
                                                           (const uint8_t *)m->scales + r * K / 32, K, v + r * K),
                                 MX_OK);
            else {
                const float *sc = m->scales;
                for (size_t k = 0; k < K; k++) {
                    float s8 = m->scale_kind == MX_WSCALE_CHANNEL ? sc[r] : sc[(r / 128) * ((K + 127) / 128) + k / 128];
                    v[r * K + k] = mx_quant_e4m3fn_to_f32(((const uint8_t *)m->data)[r * K + k]) * s8;
                }
            }
        }
        double got = rms(v, rows * K), want = 1.0 / sqrt((double)K);
        print_message("%s: rms %.5f, 1/sqrt(K) %.5f\n", names[p], got, want);
        assert_true(got > 0.8 * want && got < 1.25 * want);
        free(v);
        mx_expert_set_destroy(s);
    }
}

static void test_synth_write_refuses_existing_dir_and_leaves_nothing_on_failure(void **state)
{
    (void)state;
    char *d = ck_path(root, "exists");
    assert_int_equal(mkdir(d, 0755), 0);
    assert_int_equal(mx_synth_write("tiny", 1, 1, d, 0, NULL, NULL), MX_ERR_INVALID);
    assert_non_null(strstr(mx_error_detail(), "already exists"));
    rmdir(d);
    free(d);
    d = ck_path(root, "no/such/parent/out");
    assert_int_equal(mx_synth_write("tiny", 1, 1, d, 0, NULL, NULL), MX_ERR_IO);
    free(d);
    assert_int_equal(mx_synth_write("gpt-oss-7b", 1, 1, "/nonexistent/x", 0, NULL, NULL), MX_ERR_INVALID);
    assert_non_null(strstr(mx_error_detail(), "gpt-oss-7b"));
    assert_non_null(strstr(mx_error_detail(), "tiny"));
    assert_int_equal(mx_synth_write("tiny", 0, 1, "/nonexistent/x", 0, NULL, NULL), MX_ERR_INVALID);
    int n = 0;
    const char *const *names = mx_synth_presets(&n);
    assert_int_equal(n, 7);
    assert_string_equal(names[6], "tiny");
    mx_model_config_t c;
    assert_int_equal(mx_synth_config("tiny", 1, &c), MX_OK);
    c.hidden = 65;
    mx_expert_set_h s;
    int zero = 0;
    assert_int_equal(mx_synth_experts(&c, 1, 0, &zero, 1, &s), MX_ERR_INVALID);
    assert_non_null(strstr(mx_error_detail(), "does not match"));
}

static int progress_count(double f, void *arg)
{
    int *calls = arg;
    assert_true(f >= 0.0 && f <= 1.0);
    (*calls)++;
    return 0;
}

/* Stops the write at its third report. */
static int progress_stop(double f, void *arg)
{
    (void)f;
    int *calls = arg;
    return ++*calls >= 3;
}

static void test_synth_write_reports_progress_up_to_one(void **state)
{
    (void)state;
    char *d = ck_path(root, "progress");
    int calls = 0;
    assert_int_equal(mx_synth_write_ex("qwen3-moe-fp8", 1, 2, 5, d, 0, progress_count, &calls), MX_OK);
    assert_true(calls >= 2);
    ck_rmtree(d);
    /* a non-zero return stops the write: an error naming it, and neither the
     * directory nor its temporary one is left */
    calls = 0;
    assert_int_equal(mx_synth_write_ex("qwen3-moe-fp8", 1, 2, 5, d, 0, progress_stop, &calls), MX_ERR_IO);
    assert_int_equal(calls, 3);
    assert_non_null(strstr(mx_error_detail(), "stopped by the caller"));
    assert_int_not_equal(access(d, F_OK), 0);
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp-%ld", d, (long)getpid());
    assert_int_not_equal(access(tmp, F_OK), 0);
    free(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_synth_tiny_roundtrip_sharded_all_experts),
        cmocka_unit_test(test_synth_tiny_single_file_has_no_index),
        cmocka_unit_test(test_synth_gpt_oss_20b_roundtrip),
        cmocka_unit_test(test_synth_gpt_oss_120b_roundtrip),
        cmocka_unit_test(test_synth_qwen3_moe_fp8_roundtrip),
        cmocka_unit_test(test_synth_deepseek_fp8_roundtrip),
        cmocka_unit_test(test_synth_gemma4_fp8_roundtrip),
        cmocka_unit_test(test_synth_w4a8_roundtrip_has_input_scales),
        cmocka_unit_test(test_synth_expert_bytes_do_not_depend_on_expert_count),
        cmocka_unit_test(test_synth_seed_and_layer_change_the_weights),
        cmocka_unit_test(test_synth_weight_magnitudes_are_one_over_sqrt_k),
        cmocka_unit_test(test_synth_write_refuses_existing_dir_and_leaves_nothing_on_failure),
        cmocka_unit_test(test_synth_write_reports_progress_up_to_one),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
