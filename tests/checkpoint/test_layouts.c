/* Expert layouts: hand-made gpt-oss byte vectors (values computed by hand from
 * the spec), every layout of FORMATS.md mapped to the canonical view, loading
 * only the asked experts (other experts' bytes poisoned), and layout errors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "ck_util.h"
#include "ckpt_internal.h"
#include "mxep/checkpoint.h"
#include "mxep/quant.h"

static char *root;

static int setup(void **state)
{
    (void)state;
    root = ck_tmpdir("layouts");
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    ck_rmtree(root);
    free(root);
    return 0;
}

/* A checkpoint directory root/tag with config and one model.safetensors. */
static char *make_ckpt(const char *tag, const char *config, const ck_tensor_t *t, int n)
{
    char *d = ck_path(root, tag);
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", d);
    assert_int_equal(system(cmd), 0);
    char *p = ck_path(d, "config.json");
    ck_write_text(p, config);
    free(p);
    p = ck_path(d, "model.safetensors");
    ck_write_st(p, t, n);
    free(p);
    return d;
}

static mx_ckpt_h open_ok(const char *d)
{
    mx_ckpt_h ck = NULL;
    mx_status_t st = mx_ckpt_open(d, &ck);
    if (st)
        fail_msg("open %s: %s %s", d, mx_status_str(st), mx_error_detail());
    return ck;
}

static mx_expert_set_h load_ok(mx_ckpt_h ck, int layer, const int *ids, int n)
{
    mx_expert_set_h s = NULL;
    mx_status_t st = mx_ckpt_load_experts(ck, layer, ids, n, &s);
    if (st)
        fail_msg("load layer %d: %s %s", layer, mx_status_str(st), mx_error_detail());
    assert_int_equal(mx_expert_set_count(s), n);
    for (int i = 0; i < n; i++)
        assert_int_equal(mx_expert_set_ids(s)[i], ids[i]);
    return s;
}

/* ---------------------------------------------------------------- gpt-oss by hand */
/* E = 2, H = I = 32: one MXFP4 block per row. Expert 0 is all poison (NaN scales
 * and biases); expert 1 holds hand-chosen bytes. */
enum { E2 = 2, HH = 32, II = 32 };
static uint8_t gu_blocks[E2][2 * II][16], gu_scales[E2][2 * II], dn_blocks[E2][HH][16], dn_scales[E2][HH];
static uint16_t gu_bias[E2][2 * II], dn_bias[E2][HH], r_w[E2][HH], r_b[E2];

static void build_gpt_oss_bytes(void)
{
    memset(gu_blocks, 0xEE, sizeof gu_blocks);
    memset(gu_scales, 0xFF, sizeof gu_scales); /* 0xFF = NaN scale: any use of expert 0 shows */
    memset(dn_blocks, 0xEE, sizeof dn_blocks);
    memset(dn_scales, 0xFF, sizeof dn_scales);
    for (int i = 0; i < 2 * II; i++)
        gu_bias[0][i] = 0x7FC0; /* NaN */
    for (int i = 0; i < HH; i++)
        dn_bias[0][i] = 0x7FC0;
    memset(gu_blocks[1], 0, sizeof gu_blocks[1]);
    memset(dn_blocks[1], 0, sizeof dn_blocks[1]);
    memset(gu_scales[1], 127, sizeof gu_scales[1]);
    memset(dn_scales[1], 127, sizeof dn_scales[1]);
    memset(gu_bias[1], 0, sizeof gu_bias[1]);
    memset(dn_bias[1], 0, sizeof dn_bias[1]);
    /* row 0 = gate_0: byte 0 = 0x21 -> element 0 = code 1 (+0.5), element 1 = code 2 (+1.0);
     * byte 15 = 0x9F -> element 30 = code F (-6), element 31 = code 9 (-0.5); scale 128 = x2 */
    gu_blocks[1][0][0] = 0x21;
    gu_blocks[1][0][15] = 0x9F;
    gu_scales[1][0] = 128;
    /* row 1 = up_0: byte 0 = 0x73 -> element 0 = code 3 (+1.5), element 1 = code 7 (+6); scale 125 = x0.25 */
    gu_blocks[1][1][0] = 0x73;
    gu_scales[1][1] = 125;
    /* row 2 = gate_1: byte 1 = 0x0A -> element 2 = code A (-1.0), element 3 = 0; scale 0 = 2^-127 (not zero) */
    gu_blocks[1][2][1] = 0x0A;
    gu_scales[1][2] = 0;
    /* down row 5: byte 3 = 0x4C -> element 6 = code C (-2), element 7 = code 4 (+2); scale 129 = x4 */
    dn_blocks[1][5][3] = 0x4C;
    dn_scales[1][5] = 129;
    /* BF16 biases: 0x3FC0 = 1.5, 0xC000 = -2.0, 0x3E80 = 0.25, 0xBF80 = -1.0 */
    gu_bias[1][0] = 0x3FC0;
    gu_bias[1][1] = 0xC000;
    gu_bias[1][63] = 0x3E80;
    dn_bias[1][31] = 0xBF80;
    for (int e = 0; e < E2; e++) {
        for (int h = 0; h < HH; h++)
            r_w[e][h] = (uint16_t)(0x3F80 + e); /* 1.0 and 1.0078125 */
        r_b[e] = e ? 0xBF80 : 0x3F00;           /* -1.0, 0.5 */
    }
}

static void check_gpt_oss_expert1(const mx_expert_weights_t *w)
{
    assert_int_equal(w->gate_up.fmt, MX_WFMT_MXFP4);
    assert_int_equal(w->gate_up.scale_kind, MX_WSCALE_E8M0_32);
    assert_int_equal(w->gate_up.rows, 2 * II);
    assert_int_equal(w->gate_up.cols, HH);
    assert_int_equal(w->down.rows, HH);
    assert_int_equal(w->down.cols, II);
    assert_memory_equal(w->gate_up.data, gu_blocks[1], sizeof gu_blocks[1]);
    assert_memory_equal(w->gate_up.scales, gu_scales[1], sizeof gu_scales[1]);
    assert_memory_equal(w->down.data, dn_blocks[1], sizeof dn_blocks[1]);
    assert_memory_equal(w->down.scales, dn_scales[1], sizeof dn_scales[1]);
    const uint8_t *d = w->gate_up.data, *s = w->gate_up.scales;
    float row[32];
    /* gate_0 (row 0): hand values 0.5*2, 1.0*2, ..., -6*2, -0.5*2 */
    assert_int_equal(mx_quant_mxfp4_decode_row(d + 0 * 16, s + 0, 32, row), MX_OK);
    assert_true(row[0] == 1.0f && row[1] == 2.0f && row[30] == -12.0f && row[31] == -1.0f);
    for (int k = 2; k < 30; k++)
        assert_true(row[k] == 0.0f);
    /* up_0 (row 1): 1.5*0.25, 6*0.25 */
    assert_int_equal(mx_quant_mxfp4_decode_row(d + 1 * 16, s + 1, 32, row), MX_OK);
    assert_true(row[0] == 0.375f && row[1] == 1.5f && row[2] == 0.0f);
    /* gate_1 (row 2): -1.0 * 2^-127, a subnormal, not flushed */
    assert_int_equal(mx_quant_mxfp4_decode_row(d + 2 * 16, s + 2, 32, row), MX_OK);
    assert_true(row[2] == -0x1p-127f && row[3] == 0.0f);
    const uint8_t *dd = w->down.data, *ds = w->down.scales;
    assert_int_equal(mx_quant_mxfp4_decode_row(dd + 5 * 16, ds + 5, 32, row), MX_OK);
    assert_true(row[6] == -8.0f && row[7] == 8.0f);
    assert_non_null(w->gate_up_bias);
    assert_non_null(w->down_bias);
    assert_true(w->gate_up_bias[0] == 1.5f && w->gate_up_bias[1] == -2.0f && w->gate_up_bias[63] == 0.25f);
    assert_true(w->gate_up_bias[2] == 0.0f);
    assert_true(w->down_bias[31] == -1.0f && w->down_bias[0] == 0.0f);
    assert_true(w->input_scale == 0.0f && w->down_input_scale == 0.0f);
}

static const char *gpt_oss_cfg = "{\"model_type\":\"gpt_oss\",\"num_local_experts\":2,\"experts_per_token\":1,"
                                 "\"hidden_size\":32,\"intermediate_size\":32,\"num_hidden_layers\":1,"
                                 "\"quantization_config\":{\"quant_method\":\"mxfp4\"}}";

static void test_gpt_oss_fused_hand_bytes_load_interleaved_with_bf16_biases(void **state)
{
    (void)state;
    build_gpt_oss_bytes();
    ck_tensor_t t[] = {
        {"model.layers.0.mlp.router.weight", "BF16", 2, {E2, HH}, r_w, sizeof r_w},
        {"model.layers.0.mlp.router.bias", "BF16", 1, {E2}, r_b, sizeof r_b},
        {"model.layers.0.mlp.experts.gate_up_proj_blocks",
         "U8",
         4,
         {E2, 2 * II, HH / 32, 16},
         gu_blocks,
         sizeof gu_blocks},
        {"model.layers.0.mlp.experts.gate_up_proj_scales", "U8", 3, {E2, 2 * II, HH / 32}, gu_scales, sizeof gu_scales},
        {"model.layers.0.mlp.experts.gate_up_proj_bias", "BF16", 2, {E2, 2 * II}, gu_bias, sizeof gu_bias},
        {"model.layers.0.mlp.experts.down_proj_blocks", "U8", 4, {E2, HH, II / 32, 16}, dn_blocks, sizeof dn_blocks},
        {"model.layers.0.mlp.experts.down_proj_scales", "U8", 3, {E2, HH, II / 32}, dn_scales, sizeof dn_scales},
        {"model.layers.0.mlp.experts.down_proj_bias", "BF16", 2, {E2, HH}, dn_bias, sizeof dn_bias},
    };
    char *d = make_ckpt("gptoss", gpt_oss_cfg, t, 8);
    mx_ckpt_h ck = open_ok(d);
    assert_string_equal(mx_ckpt_layout_name(ck), "gpt_oss_fused");
    assert_int_equal(mx_ckpt_config(ck)->moe.order, MX_GATEUP_INTERLEAVED); /* row 2i gate_i, 2i+1 up_i */
    int one = 1;
    mx_expert_set_h s = load_ok(ck, 0, &one, 1);
    check_gpt_oss_expert1(&mx_expert_set_weights(s)[0]);
    mx_expert_set_destroy(s);
    mx_router_weights_t r;
    assert_int_equal(mx_ckpt_load_router(ck, 0, &r), MX_OK);
    assert_int_equal(r.n_experts, 2);
    assert_int_equal(r.hidden, 32);
    assert_true(r.weight[0] == 1.0f && r.weight[32] == 1.0078125f);
    assert_true(r.bias[0] == 0.5f && r.bias[1] == -1.0f);
    assert_null(r.correction_bias);
    mx_router_weights_fini(&r);
    mx_ckpt_close(ck);
    free(d);
    /* gpt-oss without its down_proj_bias: refused, named (it loaded without one: other numbers) */
    d = make_ckpt("gptoss_nobias", gpt_oss_cfg, t, 7);
    ck = open_ok(d);
    s = NULL;
    assert_int_equal(mx_ckpt_load_experts(ck, 0, &one, 1, &s), MX_ERR_FORMAT);
    assert_non_null(strstr(mx_error_detail(), "missing tensor 'model.layers.0.mlp.experts.down_proj_bias'"));
    mx_ckpt_close(ck);
    free(d);
}

static void test_openai_original_names_load_like_gpt_oss(void **state)
{
    (void)state;
    build_gpt_oss_bytes();
    ck_tensor_t t[] = {
        {"block.0.mlp.gate.weight", "BF16", 2, {E2, HH}, r_w, sizeof r_w},
        {"block.0.mlp.gate.bias", "BF16", 1, {E2}, r_b, sizeof r_b},
        {"block.0.mlp.mlp1_weight.blocks", "U8", 4, {E2, 2 * II, HH / 32, 16}, gu_blocks, sizeof gu_blocks},
        {"block.0.mlp.mlp1_weight.scales", "U8", 3, {E2, 2 * II, HH / 32}, gu_scales, sizeof gu_scales},
        {"block.0.mlp.mlp1_bias", "BF16", 2, {E2, 2 * II}, gu_bias, sizeof gu_bias},
        {"block.0.mlp.mlp2_weight.blocks", "U8", 4, {E2, HH, II / 32, 16}, dn_blocks, sizeof dn_blocks},
        {"block.0.mlp.mlp2_weight.scales", "U8", 3, {E2, HH, II / 32}, dn_scales, sizeof dn_scales},
        {"block.0.mlp.mlp2_bias", "BF16", 2, {E2, HH}, dn_bias, sizeof dn_bias},
    };
    char *d = make_ckpt("openai",
                        "{\"model_type\":\"gpt_oss\",\"num_experts\":2,\"experts_per_token\":1,"
                        "\"hidden_size\":32,\"intermediate_size\":32,\"num_hidden_layers\":1}",
                        t, 8);
    mx_ckpt_h ck = open_ok(d);
    assert_string_equal(mx_ckpt_layout_name(ck), "openai_original");
    /* blocks + scales with no quantization_config (as the original config.json): MXFP4, W4A16 */
    assert_int_equal(mx_ckpt_config(ck)->moe.scheme, MX_SCHEME_W4A16);
    assert_string_equal(mx_ckpt_config(ck)->quant_method, "gpt_oss_mxfp4");
    int one = 1;
    mx_expert_set_h s = load_ok(ck, 0, &one, 1);
    check_gpt_oss_expert1(&mx_expert_set_weights(s)[0]);
    mx_expert_set_destroy(s);
    mx_router_weights_t r;
    assert_int_equal(mx_ckpt_load_router(ck, 0, &r), MX_OK);
    assert_true(r.bias[1] == -1.0f);
    mx_router_weights_fini(&r);
    mx_ckpt_close(ck);
    free(d);
}

static void test_gpt_oss_fused_rejects_wrong_shape_and_missing_tensor(void **state)
{
    (void)state;
    build_gpt_oss_bytes();
    ck_tensor_t t[] = {
        {"model.layers.0.mlp.experts.gate_up_proj_blocks",
         "U8",
         4,
         {E2, II, 2 * HH / 32, 16},
         gu_blocks,
         sizeof gu_blocks},
        {"model.layers.0.mlp.experts.gate_up_proj_scales", "U8", 3, {E2, 2 * II, HH / 32}, gu_scales, sizeof gu_scales},
    };
    char *d = make_ckpt("gptoss-bad", gpt_oss_cfg, t, 2);
    mx_ckpt_h ck = open_ok(d);
    int one = 1;
    mx_expert_set_h s = (mx_expert_set_h)(uintptr_t)0xABC;
    assert_int_equal(mx_ckpt_load_experts(ck, 0, &one, 1, &s), MX_ERR_FORMAT);
    assert_non_null(strstr(mx_error_detail(), "gate_up_proj_blocks"));
    assert_non_null(strstr(mx_error_detail(), "expected [2, 64, 1, 16]"));
    assert_ptr_equal(s, (mx_expert_set_h)(uintptr_t)0xABC);
    mx_ckpt_close(ck);
    free(d);
    ck_tensor_t t2[] = {
        {"model.layers.0.mlp.experts.gate_up_proj_blocks",
         "U8",
         4,
         {E2, 2 * II, HH / 32, 16},
         gu_blocks,
         sizeof gu_blocks},
        {"model.layers.0.mlp.experts.gate_up_proj_scales", "U8", 3, {E2, 2 * II, HH / 32}, gu_scales, sizeof gu_scales},
        {"model.layers.0.mlp.experts.gate_up_proj_bias", "BF16", 2, {E2, 2 * II}, gu_bias, sizeof gu_bias},
    };
    d = make_ckpt("gptoss-missing", gpt_oss_cfg, t2, 3);
    ck = open_ok(d);
    assert_int_equal(mx_ckpt_load_experts(ck, 0, &one, 1, &s), MX_ERR_FORMAT);
    assert_non_null(strstr(mx_error_detail(), "missing tensor 'model.layers.0.mlp.experts.down_proj_blocks'"));
    /* argument errors */
    int bad[2] = {1, 1};
    assert_int_equal(mx_ckpt_load_experts(ck, 0, bad, 2, &s), MX_ERR_INVALID);
    assert_non_null(strstr(mx_error_detail(), "twice"));
    bad[0] = 2;
    assert_int_equal(mx_ckpt_load_experts(ck, 0, bad, 1, &s), MX_ERR_INVALID);
    assert_non_null(strstr(mx_error_detail(), "out of range"));
    assert_int_equal(mx_ckpt_load_experts(ck, 1, &one, 1, &s), MX_ERR_INVALID);
    assert_non_null(strstr(mx_error_detail(), "layer 1"));
    mx_router_weights_t r;
    assert_int_equal(mx_ckpt_load_router(ck, 0, &r), MX_ERR_FORMAT);
    assert_non_null(strstr(mx_error_detail(), "router"));
    mx_ckpt_close(ck);
    free(d);
}

/* ---------------------------------------------------------------- other layouts */
static void test_fused_3d_halves_bf16_slices_each_expert(void **state)
{
    (void)state;
    enum { E = 3, H = 16, I = 8 };
    static uint16_t gu[E][2 * I][H], dn[E][H][I];
    ck_fill(gu, sizeof gu, 31);
    ck_fill(dn, sizeof dn, 32);
    ck_tensor_t t[] = {
        {"model.layers.0.mlp.experts.gate_up_proj", "BF16", 3, {E, 2 * I, H}, gu, sizeof gu},
        {"model.layers.0.mlp.experts.down_proj", "BF16", 3, {E, H, I}, dn, sizeof dn},
    };
    char *d = make_ckpt("halves",
                        "{\"model_type\":\"qwen3_moe\",\"num_experts\":3,\"num_experts_per_tok\":2,"
                        "\"hidden_size\":16,\"moe_intermediate_size\":8,\"num_hidden_layers\":1}",
                        t, 2);
    mx_ckpt_h ck = open_ok(d);
    assert_string_equal(mx_ckpt_layout_name(ck), "fused_3d_halves");
    assert_int_equal(mx_ckpt_config(ck)->moe.order, MX_GATEUP_HALVES);
    int ids[2] = {2, 0};
    mx_expert_set_h s = load_ok(ck, 0, ids, 2);
    for (int i = 0; i < 2; i++) {
        const mx_expert_weights_t *w = &mx_expert_set_weights(s)[i];
        assert_int_equal(w->gate_up.fmt, MX_WFMT_BF16);
        assert_int_equal(w->gate_up.scale_kind, MX_WSCALE_NONE);
        assert_null(w->gate_up.scales);
        assert_int_equal(w->gate_up.rows, 2 * I);
        assert_memory_equal(w->gate_up.data, gu[ids[i]], sizeof gu[0]);
        assert_memory_equal(w->down.data, dn[ids[i]], sizeof dn[0]);
        assert_null(w->gate_up_bias);
    }
    mx_expert_set_destroy(s);
    mx_ckpt_close(ck);
    free(d);
}

static void test_per_expert_2d_deepseek_block_fp8_fuses_gate_then_up(void **state)
{
    (void)state;
    enum { E = 2, H = 256, I = 256 };
    static uint8_t g[E][I][H], u[E][I][H], dn[E][H][I];
    static float gs[E][2][2], us[E][2][2], ds[E][2][2];
    static uint16_t rw[E][H];
    static float cb[E] = {0.25f, -0.5f};
    ck_fill(g, sizeof g, 1);
    ck_fill(u, sizeof u, 2);
    ck_fill(dn, sizeof dn, 3);
    ck_fill(rw, sizeof rw, 4);
    for (int e = 0; e < E; e++)
        for (int k = 0; k < 4; k++) {
            gs[e][k / 2][k % 2] = 1.0f + (float)(e * 10 + k);
            us[e][k / 2][k % 2] = 100.0f + (float)(e * 10 + k);
            ds[e][k / 2][k % 2] = 1000.0f + (float)(e * 10 + k);
        }
    ck_tensor_t t[32];
    char names[32][96];
    int n = 0;
#define ADD(nm, dt, nd, s0, s1, ptr, sz)                                                                               \
    do {                                                                                                               \
        snprintf(names[n], sizeof names[n], "%s", nm);                                                                 \
        t[n] = (ck_tensor_t){names[n], dt, nd, {s0, s1}, ptr, sz};                                                     \
        n++;                                                                                                           \
    } while (0)
    ADD("model.layers.0.mlp.gate.weight", "BF16", 2, E, H, rw, sizeof rw);
    ADD("model.layers.0.mlp.gate.e_score_correction_bias", "F32", 1, E, 0, cb, sizeof cb);
    for (int e = 0; e < E; e++) {
        char b[96];
        snprintf(b, sizeof b, "model.layers.0.mlp.experts.%d.gate_proj.weight", e);
        ADD(b, "F8_E4M3", 2, I, H, g[e], sizeof g[e]);
        snprintf(b, sizeof b, "model.layers.0.mlp.experts.%d.gate_proj.weight_scale_inv", e);
        ADD(b, "F32", 2, 2, 2, gs[e], sizeof gs[e]);
        snprintf(b, sizeof b, "model.layers.0.mlp.experts.%d.up_proj.weight", e);
        ADD(b, "F8_E4M3", 2, I, H, u[e], sizeof u[e]);
        snprintf(b, sizeof b, "model.layers.0.mlp.experts.%d.up_proj.weight_scale_inv", e);
        ADD(b, "F32", 2, 2, 2, us[e], sizeof us[e]);
        snprintf(b, sizeof b, "model.layers.0.mlp.experts.%d.down_proj.weight", e);
        ADD(b, "F8_E4M3", 2, H, I, dn[e], sizeof dn[e]);
        snprintf(b, sizeof b, "model.layers.0.mlp.experts.%d.down_proj.weight_scale_inv", e);
        ADD(b, "F32", 2, 2, 2, ds[e], sizeof ds[e]);
    }
    char *d = make_ckpt("deepseek",
                        "{\"model_type\":\"deepseek_v3\",\"n_routed_experts\":2,\"num_experts_per_tok\":1,"
                        "\"hidden_size\":256,\"moe_intermediate_size\":256,\"num_hidden_layers\":1,"
                        "\"scoring_func\":\"sigmoid\",\"n_group\":1,\"topk_group\":1,\"routed_scaling_factor\":2.5,"
                        "\"quantization_config\":{\"quant_method\":\"fp8\",\"weight_block_size\":[128,128]}}",
                        t, n);
    mx_ckpt_h ck = open_ok(d);
    assert_string_equal(mx_ckpt_layout_name(ck), "per_expert_2d");
    int one = 1;
    mx_expert_set_h s = load_ok(ck, 0, &one, 1);
    const mx_expert_weights_t *w = &mx_expert_set_weights(s)[0];
    assert_int_equal(w->gate_up.fmt, MX_WFMT_FP8);
    assert_int_equal(w->gate_up.scale_kind, MX_WSCALE_BLOCK);
    assert_int_equal(w->gate_up.rows, 2 * I);
    assert_memory_equal(w->gate_up.data, g[1], sizeof g[1]);                                /* gate rows first */
    assert_memory_equal((const uint8_t *)w->gate_up.data + sizeof g[1], u[1], sizeof u[1]); /* then up */
    assert_memory_equal(w->gate_up.scales, gs[1], sizeof gs[1]);
    assert_memory_equal((const float *)w->gate_up.scales + 4, us[1], sizeof us[1]);
    assert_memory_equal(w->down.data, dn[1], sizeof dn[1]);
    assert_memory_equal(w->down.scales, ds[1], sizeof ds[1]);
    mx_expert_set_destroy(s);
    mx_router_weights_t r;
    assert_int_equal(mx_ckpt_load_router(ck, 0, &r), MX_OK);
    assert_non_null(r.correction_bias);
    assert_true(r.correction_bias[0] == 0.25f && r.correction_bias[1] == -0.5f);
    assert_null(r.bias);
    mx_router_weights_fini(&r);
    mx_ckpt_close(ck);
    free(d);
}

#define GEMMA_CFG_2x32x48                                                                                              \
    "{\"model_type\":\"gemma4\",\"text_config\":{\"num_experts\":2,\"top_k_experts\":1,\"hidden_size\":32,"            \
    "\"moe_intermediate_size\":48,\"num_hidden_layers\":1}}"

static void test_per_expert_2d_gemma_channel_bf16_scales_become_float(void **state)
{
    (void)state;
    enum { E = 2, H = 32, I = 48 };
    static uint8_t g[E][I][H], u[E][I][H], dn[E][H][I];
    static uint16_t gs[E][I], us[E][I], ds[E][H], rw[E][H], rsc[H];
    static float pes[E] = {1.25f, 0.75f};
    for (int h = 0; h < H; h++)
        rsc[h] = (uint16_t)(0x3F80 + 3 * h); /* BF16 1.0, 1.0234375, ... */
    ck_fill(g, sizeof g, 5);
    ck_fill(u, sizeof u, 6);
    ck_fill(dn, sizeof dn, 7);
    ck_fill(rw, sizeof rw, 8);
    for (int e = 0; e < E; e++) {
        for (int i = 0; i < I; i++) {
            gs[e][i] = (uint16_t)(0x3C00 + i); /* BF16 values near 2^-7 */
            us[e][i] = (uint16_t)(0x3D00 + i);
        }
        for (int i = 0; i < H; i++)
            ds[e][i] = (uint16_t)(0x3E00 + i);
    }
    ck_tensor_t t[16];
    char names[16][96];
    int n = 0;
    ADD("model.language_model.layers.0.router.proj.weight", "BF16", 2, E, H, rw, sizeof rw);
    ADD("model.language_model.layers.0.router.scale", "BF16", 1, H, 0, rsc, sizeof rsc);
    ADD("model.language_model.layers.0.router.per_expert_scale", "F32", 1, E, 0, pes, sizeof pes);
    for (int e = 0; e < E; e++) {
        char b[96];
        snprintf(b, sizeof b, "model.language_model.layers.0.experts.%d.gate_proj.weight", e);
        ADD(b, "F8_E4M3", 2, I, H, g[e], sizeof g[e]);
        snprintf(b, sizeof b, "model.language_model.layers.0.experts.%d.gate_proj.weight_scale", e);
        ADD(b, "BF16", 2, I, 1, gs[e], sizeof gs[e]);
        snprintf(b, sizeof b, "model.language_model.layers.0.experts.%d.up_proj.weight", e);
        ADD(b, "F8_E4M3", 2, I, H, u[e], sizeof u[e]);
        snprintf(b, sizeof b, "model.language_model.layers.0.experts.%d.up_proj.weight_scale", e);
        ADD(b, "BF16", 2, I, 1, us[e], sizeof us[e]);
        snprintf(b, sizeof b, "model.language_model.layers.0.experts.%d.down_proj.weight", e);
        ADD(b, "F8_E4M3", 2, H, I, dn[e], sizeof dn[e]);
        snprintf(b, sizeof b, "model.language_model.layers.0.experts.%d.down_proj.weight_scale", e);
        ADD(b, "BF16", 2, H, 1, ds[e], sizeof ds[e]);
    }
    char *d = make_ckpt("gemma",
                        "{\"model_type\":\"gemma4\",\"text_config\":{\"num_experts\":2,\"top_k_experts\":1,"
                        "\"hidden_size\":32,\"moe_intermediate_size\":48,\"num_hidden_layers\":1,"
                        "\"rms_norm_eps\":1e-5}}",
                        t, n);
    mx_ckpt_h ck = open_ok(d);
    assert_string_equal(mx_ckpt_layout_name(ck), "per_expert_2d");
    assert_int_equal(mx_ckpt_config(ck)->router.kind, MX_ROUTER_GEMMA4);
    assert_int_equal(mx_ckpt_config(ck)->moe.act, MX_ACT_GELU_TANH);
    int ids[2] = {1, 0};
    mx_expert_set_h s = load_ok(ck, 0, ids, 2);
    for (int k = 0; k < 2; k++) {
        int e = ids[k];
        const mx_expert_weights_t *w = &mx_expert_set_weights(s)[k];
        assert_int_equal(w->gate_up.scale_kind, MX_WSCALE_CHANNEL);
        const float *sc = w->gate_up.scales;
        for (int i = 0; i < I; i++) {
            uint32_t a = (uint32_t)gs[e][i] << 16, b = (uint32_t)us[e][i] << 16;
            float fa, fb;
            memcpy(&fa, &a, 4);
            memcpy(&fb, &b, 4);
            assert_true(sc[i] == fa);
            assert_true(sc[I + i] == fb);
        }
        assert_memory_equal(w->gate_up.data, g[e], sizeof g[e]);
        assert_memory_equal((const uint8_t *)w->gate_up.data + sizeof g[e], u[e], sizeof u[e]);
        assert_memory_equal(w->down.data, dn[e], sizeof dn[e]);
    }
    mx_expert_set_destroy(s);
    mx_router_weights_t r;
    assert_int_equal(mx_ckpt_load_router(ck, 0, &r), MX_OK);
    /* Gemma 4 router: scale [H] from BF16, per_expert_scale [E] from F32, the config's epsilon */
    assert_non_null(r.scale);
    assert_non_null(r.per_expert_scale);
    for (int h = 0; h < H; h++) {
        uint32_t a = (uint32_t)rsc[h] << 16;
        float f;
        memcpy(&f, &a, 4);
        assert_true(r.scale[h] == f);
    }
    assert_true(r.per_expert_scale[0] == 1.25f && r.per_expert_scale[1] == 0.75f);
    assert_true(r.rms_eps == 1e-5f);
    assert_null(r.bias);
    assert_null(r.correction_bias);
    mx_router_weights_fini(&r);
    assert_null(r.scale); /* fini zeroes, and twice is safe */
    mx_router_weights_fini(&r);
    mx_ckpt_close(ck);
    free(d);

    /* older exports name it moe.per_expert_scale */
    snprintf(names[2], sizeof names[2], "%s", "model.language_model.layers.0.moe.per_expert_scale");
    d = make_ckpt("gemma-old-pes", GEMMA_CFG_2x32x48, t, n);
    ck = open_ok(d);
    assert_int_equal(mx_ckpt_load_router(ck, 0, &r), MX_OK);
    assert_true(r.per_expert_scale[1] == 0.75f);
    assert_true(r.rms_eps == 1e-6f); /* gemma4 default */
    mx_router_weights_fini(&r);
    mx_ckpt_close(ck);
    free(d);

    /* without router.scale (or without per_expert_scale) a gemma4 router is refused by name */
    for (int miss = 1; miss <= 2; miss++) {
        ck_tensor_t t2[16];
        int n2 = 0;
        for (int i = 0; i < n; i++)
            if (i != miss)
                t2[n2++] = t[i];
        char tag[32];
        snprintf(tag, sizeof tag, "gemma-miss-%d", miss);
        d = make_ckpt(tag, GEMMA_CFG_2x32x48, t2, n2);
        ck = open_ok(d);
        memset(&r, 0x5A, sizeof r);
        mx_router_weights_t before = r;
        assert_int_equal(mx_ckpt_load_router(ck, 0, &r), MX_ERR_FORMAT);
        assert_non_null(strstr(mx_error_detail(), miss == 1 ? "needs router.scale" : "needs router.per_expert_scale"));
        assert_non_null(strstr(mx_error_detail(), "layer 0"));
        assert_memory_equal(&r, &before, sizeof r);
        mx_ckpt_close(ck);
        free(d);
    }

    /* a router.scale of the wrong length is a shape error naming it */
    t[1].shape[0] = H / 2;
    t[1].nbytes = sizeof rsc / 2;
    d = make_ckpt("gemma-short-scale", GEMMA_CFG_2x32x48, t, n);
    ck = open_ok(d);
    assert_int_equal(mx_ckpt_load_router(ck, 0, &r), MX_ERR_FORMAT);
    assert_non_null(strstr(mx_error_detail(), "router.scale"));
    mx_ckpt_close(ck);
    free(d);
}

static void test_per_expert_2d_per_tensor_scales_expand_to_channel_with_input_scale(void **state)
{
    (void)state;
    enum { E = 1, H = 32, I = 16 };
    static uint8_t g[I][H], u[I][H], dn[H][I];
    float gsc = 0.5f, usc = 0.25f, dsc = 2.0f, gin = 0.01f, uin = 0.03f, din = 0.02f;
    ck_fill(g, sizeof g, 9);
    ck_fill(u, sizeof u, 10);
    ck_fill(dn, sizeof dn, 11);
    ck_tensor_t t[] = {
        {"model.layers.0.mlp.experts.0.gate_proj.weight", "F8_E4M3", 2, {I, H}, g, sizeof g},
        {"model.layers.0.mlp.experts.0.gate_proj.weight_scale", "F32", 0, {0}, &gsc, 4},
        {"model.layers.0.mlp.experts.0.gate_proj.input_scale", "F32", 0, {0}, &gin, 4},
        {"model.layers.0.mlp.experts.0.up_proj.weight", "F8_E4M3", 2, {I, H}, u, sizeof u},
        {"model.layers.0.mlp.experts.0.up_proj.weight_scale", "F32", 1, {1}, &usc, 4},
        {"model.layers.0.mlp.experts.0.up_proj.input_scale", "F32", 0, {0}, &uin, 4},
        {"model.layers.0.mlp.experts.0.down_proj.weight", "F8_E4M3", 2, {H, I}, dn, sizeof dn},
        {"model.layers.0.mlp.experts.0.down_proj.weight_scale", "F32", 0, {0}, &dsc, 4},
        {"model.layers.0.mlp.experts.0.down_proj.input_scale", "F32", 0, {0}, &din, 4},
    };
    char *d = make_ckpt("pertensor",
                        "{\"model_type\":\"qwen3_moe\",\"num_experts\":1,\"num_experts_per_tok\":1,"
                        "\"hidden_size\":32,\"moe_intermediate_size\":16,\"num_hidden_layers\":1}",
                        t, 9);
    mx_ckpt_h ck = open_ok(d);
    int zero = 0;
    mx_expert_set_h s = load_ok(ck, 0, &zero, 1);
    const mx_expert_weights_t *w = &mx_expert_set_weights(s)[0];
    assert_int_equal(w->gate_up.scale_kind, MX_WSCALE_CHANNEL);
    const float *sc = w->gate_up.scales;
    for (int i = 0; i < I; i++) {
        assert_true(sc[i] == gsc);
        assert_true(sc[I + i] == usc);
    }
    assert_int_equal(w->down.scale_kind, MX_WSCALE_TENSOR);
    assert_true(*(const float *)w->down.scales == dsc);
    assert_true(w->input_scale == uin); /* max of gate and up, as vLLM does */
    assert_true(w->down_input_scale == din);
    mx_expert_set_destroy(s);
    mx_ckpt_close(ck);
    free(d);
}

static void test_mixtral_w1_w3_w2_map_to_gate_up_down(void **state)
{
    (void)state;
    enum { E = 2, H = 16, I = 8 };
    static uint16_t w1[E][I][H], w3[E][I][H], w2[E][H][I], rw[E][H];
    ck_fill(w1, sizeof w1, 12);
    ck_fill(w3, sizeof w3, 13);
    ck_fill(w2, sizeof w2, 14);
    ck_fill(rw, sizeof rw, 15);
    ck_tensor_t t[8];
    char names[8][96];
    int n = 0;
    ADD("model.layers.0.block_sparse_moe.gate.weight", "BF16", 2, E, H, rw, sizeof rw);
    for (int e = 0; e < E; e++) {
        char b[96];
        snprintf(b, sizeof b, "model.layers.0.block_sparse_moe.experts.%d.w2.weight", e);
        ADD(b, "BF16", 2, H, I, w2[e], sizeof w2[e]);
        snprintf(b, sizeof b, "model.layers.0.block_sparse_moe.experts.%d.w1.weight", e);
        ADD(b, "BF16", 2, I, H, w1[e], sizeof w1[e]);
        snprintf(b, sizeof b, "model.layers.0.block_sparse_moe.experts.%d.w3.weight", e);
        ADD(b, "BF16", 2, I, H, w3[e], sizeof w3[e]);
    }
    char *d = make_ckpt("mixtral",
                        "{\"model_type\":\"mixtral\",\"num_local_experts\":2,\"num_experts_per_tok\":2,"
                        "\"hidden_size\":16,\"intermediate_size\":8,\"num_hidden_layers\":1}",
                        t, n);
    mx_ckpt_h ck = open_ok(d);
    assert_string_equal(mx_ckpt_layout_name(ck), "mixtral_w123");
    int one = 1;
    mx_expert_set_h s = load_ok(ck, 0, &one, 1);
    const mx_expert_weights_t *w = &mx_expert_set_weights(s)[0];
    assert_memory_equal(w->gate_up.data, w1[1], sizeof w1[1]);
    assert_memory_equal((const uint8_t *)w->gate_up.data + sizeof w1[1], w3[1], sizeof w3[1]);
    assert_memory_equal(w->down.data, w2[1], sizeof w2[1]);
    mx_expert_set_destroy(s);
    mx_router_weights_t r;
    assert_int_equal(mx_ckpt_load_router(ck, 0, &r), MX_OK);
    uint32_t bits = (uint32_t)rw[1][3] << 16;
    float f;
    memcpy(&f, &bits, 4);
    assert_memory_equal(&r.weight[H + 3], &f, 4);
    mx_router_weights_fini(&r);
    mx_ckpt_close(ck);
    free(d);
}

static void test_vllm_w13_fp8_per_tensor_with_input_scales(void **state)
{
    (void)state;
    enum { E = 2, H = 32, I = 16 };
    static uint8_t w13[E][2 * I][H], w2[E][H][I];
    static float s13[E] = {0.5f, 0.75f}, s2[E] = {1.5f, 2.5f}, in13[E] = {0.1f, 0.2f}, in2[E] = {0.3f, 0.4f};
    static float b13[E][2 * I], b2[E][H];
    ck_fill(w13, sizeof w13, 16);
    ck_fill(w2, sizeof w2, 17);
    for (int e = 0; e < E; e++) {
        for (int i = 0; i < 2 * I; i++)
            b13[e][i] = (float)(e * 100 + i);
        for (int i = 0; i < H; i++)
            b2[e][i] = -(float)(e * 100 + i);
    }
    ck_tensor_t t[] = {
        {"model.layers.0.mlp.experts.w13_weight", "F8_E4M3", 3, {E, 2 * I, H}, w13, sizeof w13},
        {"model.layers.0.mlp.experts.w13_weight_scale", "F32", 1, {E}, s13, sizeof s13},
        {"model.layers.0.mlp.experts.w13_input_scale", "F32", 1, {E}, in13, sizeof in13},
        {"model.layers.0.mlp.experts.w13_bias", "F32", 2, {E, 2 * I}, b13, sizeof b13},
        {"model.layers.0.mlp.experts.w2_weight", "F8_E4M3", 3, {E, H, I}, w2, sizeof w2},
        {"model.layers.0.mlp.experts.w2_weight_scale", "F32", 1, {E}, s2, sizeof s2},
        {"model.layers.0.mlp.experts.w2_input_scale", "F32", 1, {E}, in2, sizeof in2},
        {"model.layers.0.mlp.experts.w2_bias", "F32", 2, {E, H}, b2, sizeof b2},
    };
    char *d = make_ckpt("vllm",
                        "{\"model_type\":\"qwen3_moe\",\"num_experts\":2,\"num_experts_per_tok\":1,"
                        "\"hidden_size\":32,\"moe_intermediate_size\":16,\"num_hidden_layers\":1,"
                        "\"quantization_config\":{\"quant_method\":\"fp8\",\"activation_scheme\":\"static\"}}",
                        t, 8);
    mx_ckpt_h ck = open_ok(d);
    assert_string_equal(mx_ckpt_layout_name(ck), "vllm_w13");
    int one = 1;
    mx_expert_set_h s = load_ok(ck, 0, &one, 1);
    const mx_expert_weights_t *w = &mx_expert_set_weights(s)[0];
    assert_int_equal(w->gate_up.fmt, MX_WFMT_FP8);
    assert_int_equal(w->gate_up.scale_kind, MX_WSCALE_TENSOR);
    assert_true(*(const float *)w->gate_up.scales == 0.75f);
    assert_true(*(const float *)w->down.scales == 2.5f);
    assert_memory_equal(w->gate_up.data, w13[1], sizeof w13[1]);
    assert_memory_equal(w->down.data, w2[1], sizeof w2[1]);
    assert_true(w->input_scale == 0.2f && w->down_input_scale == 0.4f);
    assert_memory_equal(w->gate_up_bias, b13[1], sizeof b13[1]);
    assert_memory_equal(w->down_bias, b2[1], sizeof b2[1]);
    mx_expert_set_destroy(s);
    mx_ckpt_close(ck);
    free(d);
}

static void test_checkpoint_without_experts_says_so(void **state)
{
    (void)state;
    uint8_t x[4] = {0};
    ck_tensor_t t[] = {{"model.embed_tokens.weight", "U8", 1, {4}, x, 4}};
    char *d = make_ckpt("noexp", gpt_oss_cfg, t, 1);
    mx_ckpt_h ck = open_ok(d);
    assert_string_equal(mx_ckpt_layout_name(ck), "none");
    int zero = 0;
    mx_expert_set_h s;
    assert_int_equal(mx_ckpt_load_experts(ck, 0, &zero, 1, &s), MX_ERR_FORMAT);
    assert_non_null(strstr(mx_error_detail(), "no expert tensors"));
    mx_ckpt_close(ck);
    free(d);
}

/* ---------------------------------------------------------------- values and shapes of scales and biases */
/* Per-expert 2-D FP8 (Qwen names), E = 2, H = 32, I = 16, per-channel scales [rows, 1],
 * static input scales and biases; `bad` damages one thing of expert 1 (0: none). A
 * NaN, infinite or negative scale, a non-finite bias, a transposed scale tensor:
 * each loaded as it was (the values only showed as NaN or sign-flipped outputs, the
 * shape check counted elements only); now refused, naming the tensor. */
enum { QE = 2, QH = 32, QI = 16 };
static mx_status_t load_damaged_fp8(int bad, const char *tag)
{
    static uint8_t g[QE][QI][QH], u[QE][QI][QH], dn[QE][QH][QI];
    static float gs[QE][QI], us[QE][QI], ds[QE][QH], in[QE], db[QE][QH];
    ck_fill(g, sizeof g, 31);
    ck_fill(u, sizeof u, 32);
    ck_fill(dn, sizeof dn, 33);
    for (int e = 0; e < QE; e++) {
        for (int r = 0; r < QI; r++)
            gs[e][r] = us[e][r] = 0.01f * (float)(r + 1);
        for (int r = 0; r < QH; r++) {
            ds[e][r] = 0.02f * (float)(r + 1);
            db[e][r] = (float)r;
        }
        in[e] = 0.5f;
    }
    if (bad == 1)
        ds[1][5] = NAN;
    if (bad == 2)
        ds[1][7] = -0.25f;
    if (bad == 3)
        ds[1][0] = INFINITY;
    if (bad == 4)
        in[1] = -1.0f;
    if (bad == 5)
        db[1][3] = INFINITY;
    static uint16_t dn16[QH][QI]; /* 7: expert 1's down_proj in BF16, not the config's FP8 */
    ck_fill(dn16, sizeof dn16, 34);

    ck_tensor_t t[QE * 9];
    char names[QE * 9][96];
    int n = 0;
    for (int e = 0; e < QE; e++) {
        static const char *const what[9] = {"gate_proj.weight",      "gate_proj.weight_scale", "up_proj.weight",
                                            "up_proj.weight_scale",  "down_proj.weight",       "down_proj.weight_scale",
                                            "gate_proj.input_scale", "up_proj.input_scale",    "down_proj.bias"};
        const void *data[9] = {g[e], gs[e], u[e], us[e], dn[e], ds[e], &in[e], &in[e], db[e]};
        const size_t bytes[9] = {sizeof g[e], sizeof gs[e], sizeof u[e], sizeof us[e], sizeof dn[e], sizeof ds[e], 4,
                                 4,           sizeof db[e]};
        for (int k = 0; k < 9; k++) {
            snprintf(names[n], sizeof names[n], "model.layers.0.mlp.experts.%d.%s", e, what[k]);
            ck_tensor_t x = {names[n], k % 2 == 0 && k < 6 ? "F8_E4M3" : "F32", 2, {0, 0}, data[k], bytes[k]};
            if (k == 0 || k == 2) {
                x.shape[0] = QI;
                x.shape[1] = QH;
            } else if (k == 4) {
                x.shape[0] = QH;
                x.shape[1] = QI;
                if (bad == 7 && e == 1) {
                    x.dtype = "BF16";
                    x.data = dn16;
                    x.nbytes = sizeof dn16;
                }
            } else if (k == 1 || k == 3) {
                x.shape[0] = QI;
                x.shape[1] = 1;
            } else if (k == 5) {
                x.shape[0] = bad == 6 && e == 1 ? 1 : QH; /* 6: expert 1's transposed, [1, rows] */
                x.shape[1] = bad == 6 && e == 1 ? QH : 1;
            } else if (k == 8) {
                x.ndim = 1;
                x.shape[0] = QH;
            } else {
                x.ndim = 0;
            }
            t[n++] = x;
        }
    }
    char *d = make_ckpt(tag,
                        "{\"model_type\":\"qwen3_moe\",\"num_experts\":2,\"num_experts_per_tok\":1,"
                        "\"hidden_size\":32,\"moe_intermediate_size\":16,\"num_hidden_layers\":1,"
                        "\"quantization_config\":{\"quant_method\":\"fp8\",\"activation_scheme\":\"static\"}}",
                        t, n);
    mx_ckpt_h ck = open_ok(d);
    int zero = 0, one = 1;
    mx_expert_set_h s = load_ok(ck, 0, &zero, 1); /* expert 0 is whole in every case */
    mx_expert_set_destroy(s);
    s = NULL;
    mx_status_t st = mx_ckpt_load_experts(ck, 0, &one, 1, &s);
    if (st == MX_OK) {
        const mx_expert_weights_t *w = &mx_expert_set_weights(s)[0];
        assert_int_equal(w->down.scale_kind, MX_WSCALE_CHANNEL);
        assert_true(((const float *)w->down.scales)[3] == 0.08f && w->input_scale == 0.5f);
        mx_expert_set_destroy(s);
    } else {
        assert_null(s);
    }
    mx_ckpt_close(ck);
    free(d);
    return st;
}

static void test_bad_scale_values_biases_and_scale_shapes_are_refused_naming_them(void **state)
{
    (void)state;
    assert_int_equal(load_damaged_fp8(0, "fp8ok"), MX_OK);
    static const struct {
        const char *tensor, *says;
    } want[] = {
        {"experts.1.down_proj.weight_scale' value 5 is nan", "expected a finite scale >= 0"},
        {"experts.1.down_proj.weight_scale' value 7 is -0.25", "expected a finite scale >= 0"},
        {"experts.1.down_proj.weight_scale' value 0 is inf", "expected a finite scale >= 0"},
        {"experts.1.gate_proj.input_scale' value 0 is -1", "expected a finite scale > 0"},
        {"experts.1.down_proj.bias' value 3 is inf", "expected a finite bias"},
        {"experts.1.down_proj.weight_scale' has shape [1, 32]", "expected [32] or [32, 1] (per channel)"},
        {"expert 1: tensor 'model.layers.0.mlp.experts.1.down_proj.weight' holds BF16 weights",
         "the config's scheme W8A8 (quant_method fp8_tensor) needs FP8"},
    };
    for (int bad = 1; bad <= 7; bad++) {
        char tag[16];
        snprintf(tag, sizeof tag, "fp8bad%d", bad);
        mx_status_t st = load_damaged_fp8(bad, tag);
        const char *msg = mx_error_detail();
        if (st != MX_ERR_FORMAT || !strstr(msg, want[bad - 1].tensor) || !strstr(msg, want[bad - 1].says))
            fail_msg("damage %d: got %s '%s', expected a format error with '%s' and '%s'", bad, mx_status_str(st), msg,
                     want[bad - 1].tensor, want[bad - 1].says);
    }
}

/* 2^20 expert ids with the last one repeated: refused at once (the duplicate check
 * was quadratic: minutes for the 2^19 ids a rank of a 2^20-expert model lists). */
static void test_a_million_expert_ids_are_checked_in_one_pass(void **state)
{
    (void)state;
    enum { N = 1 << 20 };
    static uint16_t w0[QI][QH]; /* one expert tensor, so that the per-expert layout is recognized */
    ck_tensor_t one[1] = {{"model.layers.0.mlp.experts.0.gate_proj.weight", "BF16", 2, {QI, QH}, w0, sizeof w0}};
    char *d = make_ckpt("many",
                        "{\"model_type\":\"qwen3_moe\",\"num_experts\":1048576,\"num_experts_per_tok\":1,"
                        "\"hidden_size\":32,\"moe_intermediate_size\":16,\"num_hidden_layers\":1}",
                        one, 1);
    mx_ckpt_h ck = open_ok(d);
    int *ids = malloc((N + 1) * sizeof *ids);
    assert_non_null(ids);
    for (int i = 0; i < N; i++)
        ids[i] = i;
    ids[N] = N - 1;
    mx_expert_set_h s = NULL;
    assert_int_equal(mx_ckpt_load_experts(ck, 0, ids, N + 1, &s), MX_ERR_INVALID);
    assert_non_null(strstr(mx_error_detail(), "expert id 1048575 listed twice"));
    ids[N] = N;
    assert_int_equal(mx_ckpt_load_experts(ck, 0, ids, N + 1, &s), MX_ERR_INVALID);
    assert_non_null(strstr(mx_error_detail(), "expert id 1048576 out of range"));
    assert_null(s);
    free(ids);
    mx_ckpt_close(ck);
    free(d);
}

/* config.json that is a FIFO (or a folder) is refused at once, not read (a FIFO blocked forever). */
static void test_config_that_is_not_a_regular_file_is_refused(void **state)
{
    (void)state;
    ck_tensor_t none[1] = {{"unrelated", "F32", 1, {1}, (const float[]){1.0f}, 4}};
    char *d = make_ckpt("fifo", "{}", none, 1);
    char *p = ck_path(d, "config.json");
    assert_int_equal(remove(p), 0);
    assert_int_equal(mkfifo(p, 0600), 0);
    mx_ckpt_h ck = NULL;
    assert_int_equal(mx_ckpt_open(d, &ck), MX_ERR_IO);
    assert_null(ck);
    assert_non_null(strstr(mx_error_detail(), "config.json: not a regular file"));
    assert_int_equal(remove(p), 0);
    assert_int_equal(mkdir(p, 0700), 0);
    assert_int_equal(mx_ckpt_open(d, &ck), MX_ERR_IO);
    assert_non_null(strstr(mx_error_detail(), "config.json: not a regular file"));
    assert_int_equal(rmdir(p), 0);
    free(p);
    free(d);
}

/* A written tiny checkpoint whose other experts' bytes are poisoned still loads expert 3 exactly. */
static void test_load_experts_reads_only_the_listed_experts(void **state)
{
    (void)state;
    char *d = ck_path(root, "poison");
    const uint64_t seed = 4242;
    assert_int_equal(mx_synth_write("tiny", 1, seed, d, 0, NULL, NULL), MX_OK);
    char *p = ck_path(d, "model.safetensors");
    /* offsets of every fused expert tensor, from our own strict reader */
    mx_st_file_h f;
    assert_int_equal(mx_st_file_open(p, &f), MX_OK);
    FILE *fp = fopen(p, "rb");
    uint8_t lb[8];
    assert_int_equal(fread(lb, 1, 8, fp), 8);
    fclose(fp);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | lb[i];
    const uint8_t *base = mx_st_file_tensor(f, 0)->data; /* the writer starts the data at offset 0 */
    struct {
        long off;
        size_t n;
    } spans[64];
    int ns = 0;
    for (int i = 0; i < mx_st_file_count(f); i++) {
        const mx_st_tensor_t *t = mx_st_file_tensor(f, i);
        if (!strstr(t->name, "experts.") || t->shape[0] != 8)
            continue;
        size_t per = t->nbytes / 8;
        for (int j = 0; j < 8; j++)
            if (j != 3) {
                spans[ns].off = (long)(8 + hlen + (size_t)(t->data - base) + per * (size_t)j);
                spans[ns].n = per;
                ns++;
            }
    }
    mx_st_file_close(f);
    assert_int_equal(ns, 6 * 7);
    fp = fopen(p, "r+b");
    for (int i = 0; i < ns; i++) {
        uint8_t *poison = malloc(spans[i].n);
        memset(poison, 0xFF, spans[i].n);
        fseek(fp, spans[i].off, SEEK_SET);
        assert_int_equal(fwrite(poison, 1, spans[i].n, fp), spans[i].n);
        free(poison);
    }
    fclose(fp);
    free(p);
    mx_ckpt_h ck = open_ok(d);
    int three = 3, two = 2;
    mx_expert_set_h got = load_ok(ck, 0, &three, 1), want, other;
    assert_int_equal(mx_synth_experts(mx_ckpt_config(ck), seed, 0, &three, 1, &want), MX_OK);
    const mx_expert_weights_t *a = mx_expert_set_weights(got), *b = mx_expert_set_weights(want);
    assert_memory_equal(a->gate_up.data, b->gate_up.data, 2 * 96 * 64 / 2);
    assert_memory_equal(a->gate_up.scales, b->gate_up.scales, 2 * 96 * 2);
    assert_memory_equal(a->down.data, b->down.data, 64 * 96 / 2);
    assert_memory_equal(a->down.scales, b->down.scales, 64 * 3);
    assert_memory_equal(a->gate_up_bias, b->gate_up_bias, 2 * 96 * 4);
    assert_memory_equal(a->down_bias, b->down_bias, 64 * 4);
    /* and the poison is really there for the others: expert 2's NaN biases (0xFFFF) are refused, named */
    other = NULL;
    assert_int_equal(mx_ckpt_load_experts(ck, 0, &two, 1, &other), MX_ERR_FORMAT);
    assert_null(other);
    assert_non_null(strstr(mx_error_detail(), "'model.layers.0.mlp.experts.gate_up_proj_bias' value 384 is"));
    assert_non_null(strstr(mx_error_detail(), "expected a finite bias"));
    mx_expert_set_destroy(got);
    mx_expert_set_destroy(want);
    mx_ckpt_close(ck);
    free(d);
}

static void test_per_expert_layout_reports_the_missing_expert_tensor(void **state)
{
    (void)state;
    enum { E = 3, H = 16, I = 8 };
    static uint16_t w1[E][I][H], w3[E][I][H], w2[E][H][I];
    ck_fill(w1, sizeof w1, 21);
    ck_fill(w3, sizeof w3, 22);
    ck_fill(w2, sizeof w2, 23);
    ck_tensor_t t[9];
    char names[9][96];
    int n = 0;
    for (int e = 0; e < E; e++) {
        char b[96];
        snprintf(b, sizeof b, "model.layers.0.block_sparse_moe.experts.%d.w1.weight", e);
        ADD(b, "BF16", 2, I, H, w1[e], sizeof w1[e]);
        if (e != 1) { /* expert 1 has no w3 */
            snprintf(b, sizeof b, "model.layers.0.block_sparse_moe.experts.%d.w3.weight", e);
            ADD(b, "BF16", 2, I, H, w3[e], sizeof w3[e]);
        }
        snprintf(b, sizeof b, "model.layers.0.block_sparse_moe.experts.%d.w2.weight", e);
        ADD(b, "BF16", 2, H, I, w2[e], sizeof w2[e]);
    }
    char *d = make_ckpt("mixtral-hole",
                        "{\"model_type\":\"mixtral\",\"num_local_experts\":3,\"num_experts_per_tok\":2,"
                        "\"hidden_size\":16,\"intermediate_size\":8,\"num_hidden_layers\":1}",
                        t, n);
    mx_ckpt_h ck = open_ok(d);
    int first = -1;
    assert_int_equal(mxi_ckpt_missing_experts(ck, 0, &first), 1);
    assert_int_equal(first, 1);
    int ids[2] = {0, 2};
    mx_expert_set_h s = load_ok(ck, 0, ids, 2);
    mx_expert_set_destroy(s);
    int one = 1;
    assert_int_equal(mx_ckpt_load_experts(ck, 0, &one, 1, &s), MX_ERR_FORMAT);
    assert_non_null(strstr(mx_error_detail(), "'model.layers.0.block_sparse_moe.experts.1.w3.weight'"));
    mx_ckpt_close(ck);
    free(d);
}

static void test_fused_3d_transposed_or_f16_is_refused_clearly(void **state)
{
    (void)state;
    enum { E = 2, H = 16, I = 4 };
    static uint16_t gu[E][H][2 * I], dn[E][H][I];
    ck_fill(gu, sizeof gu, 24);
    ck_fill(dn, sizeof dn, 25);
    ck_tensor_t t[] = {
        {"model.layers.0.mlp.experts.gate_up_proj", "BF16", 3, {E, H, 2 * I}, gu, sizeof gu},
        {"model.layers.0.mlp.experts.down_proj", "BF16", 3, {E, H, I}, dn, sizeof dn},
    };
    const char *cfg = "{\"model_type\":\"qwen3_moe\",\"num_experts\":2,\"num_experts_per_tok\":1,"
                      "\"hidden_size\":16,\"moe_intermediate_size\":4,\"num_hidden_layers\":1}";
    char *d = make_ckpt("transposed", cfg, t, 2);
    mx_ckpt_h ck = open_ok(d);
    int zero = 0;
    mx_expert_set_h s;
    assert_int_equal(mx_ckpt_load_experts(ck, 0, &zero, 1, &s), MX_ERR_UNSUPPORTED);
    assert_non_null(strstr(mx_error_detail(), "transposed"));
    mx_ckpt_close(ck);
    free(d);
    t[0].dtype = "F16";
    t[0].shape[1] = 2 * I;
    t[0].shape[2] = H;
    d = make_ckpt("fp16", cfg, t, 2);
    ck = open_ok(d);
    assert_int_equal(mx_ckpt_load_experts(ck, 0, &zero, 1, &s), MX_ERR_UNSUPPORTED);
    assert_non_null(strstr(mx_error_detail(), "F16"));
    mx_ckpt_close(ck);
    free(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gpt_oss_fused_hand_bytes_load_interleaved_with_bf16_biases),
        cmocka_unit_test(test_openai_original_names_load_like_gpt_oss),
        cmocka_unit_test(test_gpt_oss_fused_rejects_wrong_shape_and_missing_tensor),
        cmocka_unit_test(test_fused_3d_halves_bf16_slices_each_expert),
        cmocka_unit_test(test_per_expert_2d_deepseek_block_fp8_fuses_gate_then_up),
        cmocka_unit_test(test_per_expert_2d_gemma_channel_bf16_scales_become_float),
        cmocka_unit_test(test_per_expert_2d_per_tensor_scales_expand_to_channel_with_input_scale),
        cmocka_unit_test(test_mixtral_w1_w3_w2_map_to_gate_up_down),
        cmocka_unit_test(test_vllm_w13_fp8_per_tensor_with_input_scales),
        cmocka_unit_test(test_checkpoint_without_experts_says_so),
        cmocka_unit_test(test_load_experts_reads_only_the_listed_experts),
        cmocka_unit_test(test_per_expert_layout_reports_the_missing_expert_tensor),
        cmocka_unit_test(test_fused_3d_transposed_or_f16_is_refused_clearly),
        cmocka_unit_test(test_bad_scale_values_biases_and_scale_shapes_are_refused_naming_them),
        cmocka_unit_test(test_a_million_expert_ids_are_checked_in_one_pass),
        cmocka_unit_test(test_config_that_is_not_a_regular_file_is_refused),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
