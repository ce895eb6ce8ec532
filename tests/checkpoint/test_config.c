/* config.json normalization (FORMATS.md Part 1): quant_method rules, routers,
 * activations, nested text_config, and the errors for what is missing or unknown. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "mxep/checkpoint.h"

static mx_status_t parse(const char *json, mx_model_config_t *c)
{
    memset(c, 0x5A, sizeof *c); /* poisoned: must be fully written on success */
    return mx_ckpt_config_parse(json, strlen(json), "cfg.json", c);
}

#define GPT_OSS_BASE                                                                                                   \
    "\"num_local_experts\":32,\"experts_per_token\":4,\"hidden_size\":2880,\"intermediate_size\":2880,"                \
    "\"num_hidden_layers\":24"

static void test_config_gpt_oss_mxfp4_is_claimed_with_swiglu_oai(void **state)
{
    (void)state;
    mx_model_config_t c;
    assert_int_equal(parse("{\"model_type\":\"gpt_oss\"," GPT_OSS_BASE ",\"swiglu_limit\":7.0,"
                           "\"quantization_config\":{\"quant_method\":\"mxfp4\"}}",
                           &c),
                     MX_OK);
    assert_string_equal(c.model_type, "gpt_oss");
    assert_string_equal(c.quant_method, "gpt_oss_mxfp4");
    assert_int_equal(c.moe.scheme, MX_SCHEME_W4A16);
    assert_int_equal(c.moe.act, MX_ACT_SWIGLU_OAI);
    assert_int_equal(c.moe.order, MX_GATEUP_INTERLEAVED);
    assert_true(c.moe.swiglu_limit == 7.0f);
    assert_true(c.moe.swiglu_alpha == 1.702f);
    assert_int_equal(c.router.kind, MX_ROUTER_TOPK_SOFTMAX);
    assert_int_equal(c.router.top_k, 4);
    assert_int_equal(c.n_experts, 32);
    assert_int_equal(c.n_layers, 24);
    assert_int_equal(c.hidden, 2880);
    assert_int_equal(c.inter, 2880);
    assert_int_equal(c.moe.hidden, 2880);
    assert_int_equal(c.moe.inter, 2880);
}

static void test_config_swiglu_limit_and_alpha_come_from_the_config(void **state)
{
    (void)state;
    mx_model_config_t c;
    assert_int_equal(parse("{\"model_type\":\"gpt_oss\"," GPT_OSS_BASE ",\"swiglu_limit\":5.5,\"swiglu_alpha\":1.5,"
                           "\"num_experts\":99}",
                           &c),
                     MX_OK);
    assert_true(c.moe.swiglu_limit == 5.5f);
    assert_true(c.moe.swiglu_alpha == 1.5f);
    assert_int_equal(c.n_experts, 32); /* num_local_experts wins over num_experts */
    assert_string_equal(c.quant_method, "none");
    assert_int_equal(c.moe.scheme, MX_SCHEME_W16A16);
}

static void test_config_mxfp4_without_model_type_is_never_claimed(void **state)
{
    (void)state;
    mx_model_config_t c;
    assert_int_equal(parse("{" GPT_OSS_BASE ",\"hidden_act\":\"silu\",\"quantization_config\":{\"quant_method\":"
                           "\"mxfp4\"}}",
                           &c),
                     MX_OK);
    assert_string_equal(c.model_type, "");
    assert_string_equal(c.quant_method, "mxfp4");
    assert_int_equal(c.moe.scheme, MX_SCHEME_W4A16);
    assert_int_equal(c.moe.act, MX_ACT_SILU);
    assert_int_equal(c.moe.order, MX_GATEUP_HALVES);
    assert_int_equal(c.router.kind, MX_ROUTER_SOFTMAX_TOPK);
}

static void test_config_generic_mxfp4_of_other_model_stays_generic(void **state)
{
    (void)state;
    mx_model_config_t c;
    assert_int_equal(parse("{\"model_type\":\"qwen3_moe\",\"num_experts\":128,\"num_experts_per_tok\":8,"
                           "\"hidden_size\":2048,\"moe_intermediate_size\":768,\"intermediate_size\":6144,"
                           "\"num_hidden_layers\":48,\"norm_topk_prob\":true,"
                           "\"quantization_config\":{\"quant_method\":\"mxfp4\"}}",
                           &c),
                     MX_OK);
    assert_string_equal(c.quant_method, "mxfp4");
    assert_int_equal(c.inter, 768); /* moe_intermediate_size wins */
    assert_int_equal(c.moe.act, MX_ACT_SILU);
    assert_int_equal(c.router.kind, MX_ROUTER_SOFTMAX_TOPK);
    assert_int_equal(c.router.renormalize, 1);
}

static void test_config_qwen_without_norm_topk_prob_does_not_renormalize(void **state)
{
    (void)state;
    mx_model_config_t c;
    assert_int_equal(parse("{\"model_type\":\"qwen2_moe\",\"num_experts\":60,\"num_experts_per_tok\":4,"
                           "\"hidden_size\":2048,\"moe_intermediate_size\":1408,\"num_hidden_layers\":24}",
                           &c),
                     MX_OK);
    assert_int_equal(c.router.renormalize, 0);
}

static void test_config_deepseek_fp8_block_and_grouped_sigmoid_router(void **state)
{
    (void)state;
    mx_model_config_t c;
    assert_int_equal(parse("{\"model_type\":\"deepseek_v3\",\"n_routed_experts\":256,\"num_experts_per_tok\":8,"
                           "\"hidden_size\":7168,\"moe_intermediate_size\":2048,\"intermediate_size\":18432,"
                           "\"num_hidden_layers\":61,\"n_group\":8,\"topk_group\":4,\"routed_scaling_factor\":2.5,"
                           "\"scoring_func\":\"sigmoid\",\"norm_topk_prob\":true,"
                           "\"quantization_config\":{\"quant_method\":\"fp8\",\"fmt\":\"e4m3\","
                           "\"activation_scheme\":\"dynamic\",\"weight_block_size\":[128,128]}}",
                           &c),
                     MX_OK);
    assert_string_equal(c.quant_method, "fp8_block");
    assert_int_equal(c.moe.scheme, MX_SCHEME_W8A8);
    assert_int_equal(c.moe.act_group, 128);
    assert_int_equal(c.moe.act, MX_ACT_SILU);
    assert_int_equal(c.moe.order, MX_GATEUP_HALVES);
    assert_int_equal(c.router.kind, MX_ROUTER_SIGMOID_GROUPED);
    assert_int_equal(c.router.n_group, 8);
    assert_int_equal(c.router.topk_group, 4);
    assert_true(c.router.scaling_factor == 2.5f);
    assert_int_equal(c.router.renormalize, 1);
    assert_int_equal(c.n_experts, 256);
    assert_int_equal(c.inter, 2048);
}

static void test_config_fp8_block_other_than_128_is_unsupported(void **state)
{
    (void)state;
    mx_model_config_t c;
    assert_int_equal(parse("{\"model_type\":\"deepseek_v3\",\"n_routed_experts\":8,\"num_experts_per_tok\":2,"
                           "\"hidden_size\":256,\"moe_intermediate_size\":256,\"num_hidden_layers\":1,"
                           "\"quantization_config\":{\"quant_method\":\"fp8\",\"weight_block_size\":[64,64]}}",
                           &c),
                     MX_ERR_UNSUPPORTED);
    assert_non_null(strstr(mx_error_detail(), "[64, 64]"));
}

static void test_config_grouped_router_that_cannot_fill_top_k_is_rejected(void **state)
{
    (void)state;
    mx_model_config_t c;
    assert_int_equal(parse("{\"model_type\":\"deepseek_v3\",\"n_routed_experts\":16,\"num_experts_per_tok\":8,"
                           "\"hidden_size\":256,\"moe_intermediate_size\":256,\"num_hidden_layers\":1,"
                           "\"scoring_func\":\"sigmoid\",\"n_group\":8,\"topk_group\":2}",
                           &c),
                     MX_ERR_FORMAT);
    assert_non_null(strstr(mx_error_detail(), "topk_group"));
}

static void test_config_compressed_tensors_fp8_dynamic_is_per_channel_w8a8(void **state)
{
    (void)state;
    mx_model_config_t c;
    assert_int_equal(
        parse("{\"model_type\":\"mixtral\",\"num_local_experts\":8,\"num_experts_per_tok\":2,\"hidden_size\":4096,"
              "\"intermediate_size\":14336,\"num_hidden_layers\":32,\"quantization_config\":{\"quant_method\":"
              "\"compressed-tensors\",\"config_groups\":{\"group_0\":{\"weights\":{\"num_bits\":8,\"type\":\"float\","
              "\"strategy\":\"channel\",\"dynamic\":false},\"input_activations\":{\"num_bits\":8,\"type\":\"float\","
              "\"strategy\":\"token\",\"dynamic\":true}}}}}",
              &c),
        MX_OK);
    assert_string_equal(c.quant_method, "fp8_channel");
    assert_int_equal(c.moe.scheme, MX_SCHEME_W8A8);
    assert_int_equal(c.moe.act_group, 0);
    assert_int_equal(c.moe.act, MX_ACT_SILU);
    assert_int_equal(c.router.kind, MX_ROUTER_SOFTMAX_TOPK);
    assert_int_equal(c.router.renormalize, 1);
}

static void test_config_compressed_tensors_fp8_block_and_weight_only(void **state)
{
    (void)state;
    mx_model_config_t c;
    assert_int_equal(
        parse("{\"model_type\":\"qwen3_moe\",\"num_experts\":8,\"num_experts_per_tok\":2,\"hidden_size\":256,"
              "\"moe_intermediate_size\":256,\"num_hidden_layers\":1,\"quantization_config\":{\"quant_method\":"
              "\"compressed-tensors\",\"config_groups\":{\"g\":{\"weights\":{\"num_bits\":8,\"type\":\"float\","
              "\"strategy\":\"block\",\"block_structure\":[128,128]},\"input_activations\":{\"num_bits\":8,"
              "\"type\":\"float\",\"strategy\":\"group\",\"group_size\":128,\"dynamic\":true}}}}}",
              &c),
        MX_OK);
    assert_string_equal(c.quant_method, "fp8_block");
    assert_int_equal(c.moe.act_group, 128);
    assert_int_equal(
        parse("{\"model_type\":\"qwen3_moe\",\"num_experts\":8,\"num_experts_per_tok\":2,\"hidden_size\":256,"
              "\"moe_intermediate_size\":256,\"num_hidden_layers\":1,\"quantization_config\":{\"quant_method\":"
              "\"compressed-tensors\",\"config_groups\":{\"g\":{\"weights\":{\"num_bits\":8,\"type\":\"float\","
              "\"strategy\":\"tensor\"}}}}}",
              &c),
        MX_OK);
    assert_string_equal(c.quant_method, "fp8_tensor");
    assert_int_equal(c.moe.scheme, MX_SCHEME_W8A16);
}

static void test_config_quark_w_mxfp4_a_fp8_is_w4a8(void **state)
{
    (void)state;
    mx_model_config_t c;
    assert_int_equal(parse("{\"model_type\":\"gpt_oss\"," GPT_OSS_BASE ",\"quantization_config\":{\"quant_method\":"
                           "\"quark\",\"global_quant_config\":{\"weight\":{\"dtype\":\"fp4\",\"qscheme\":"
                           "\"per_group\",\"group_size\":32},\"input_tensors\":{\"dtype\":\"fp8_e4m3\",\"qscheme\":"
                           "\"per_tensor\",\"is_dynamic\":false}}}}",
                           &c),
                     MX_OK);
    assert_string_equal(c.quant_method, "w_mxfp4_a_fp8");
    assert_int_equal(c.moe.scheme, MX_SCHEME_W4A8);
    assert_int_equal(c.moe.act, MX_ACT_SWIGLU_OAI);
    /* weight-only Quark MXFP4 stays generic MXFP4 */
    assert_int_equal(
        parse("{\"model_type\":\"gpt_oss\"," GPT_OSS_BASE ",\"quantization_config\":{\"quant_method\":"
              "\"quark\",\"global_quant_config\":{\"weight\":{\"dtype\":\"fp4\"},\"input_tensors\":null}}}",
              &c),
        MX_OK);
    assert_string_equal(c.quant_method, "mxfp4");
    assert_int_equal(c.moe.scheme, MX_SCHEME_W4A16);
}

static void test_config_nested_text_config_of_gemma4_is_normalized(void **state)
{
    (void)state;
    mx_model_config_t c;
    assert_int_equal(parse("{\"model_type\":\"gemma4\",\"text_config\":{\"model_type\":\"gemma4_text\","
                           "\"num_experts\":128,\"top_k_experts\":8,\"hidden_size\":2816,"
                           "\"moe_intermediate_size\":704,\"num_hidden_layers\":30,\"hidden_activation\":"
                           "\"gelu_pytorch_tanh\"},\"quantization_config\":{\"quant_method\":\"compressed-tensors\","
                           "\"config_groups\":{\"group_0\":{\"weights\":{\"num_bits\":8,\"type\":\"float\","
                           "\"strategy\":\"channel\"},\"input_activations\":{\"num_bits\":8,\"type\":\"float\","
                           "\"strategy\":\"token\",\"dynamic\":true}}}}}",
                           &c),
                     MX_OK);
    assert_string_equal(c.model_type, "gemma4");
    assert_int_equal(c.n_experts, 128);
    assert_int_equal(c.router.top_k, 8);
    assert_int_equal(c.hidden, 2816);
    assert_int_equal(c.inter, 704);
    assert_int_equal(c.n_layers, 30);
    assert_int_equal(c.moe.act, MX_ACT_GELU_TANH);
    assert_int_equal(c.moe.order, MX_GATEUP_HALVES);
    assert_int_equal(c.router.kind, MX_ROUTER_GEMMA4);
    assert_int_equal(c.router.renormalize, 1);
    assert_true(c.rms_norm_eps == 1e-6f); /* absent: the Gemma4TextConfig default */
    assert_string_equal(c.quant_method, "fp8_channel");
}

#define GEMMA4_TEXT                                                                                                    \
    "\"num_experts\":4,\"top_k_experts\":2,\"hidden_size\":64,\"moe_intermediate_size\":32,"                           \
    "\"num_hidden_layers\":2,\"hidden_activation\":\"gelu_pytorch_tanh\""

static void test_config_gemma4_router_takes_rms_norm_eps_from_text_config(void **state)
{
    (void)state;
    mx_model_config_t c;
    assert_int_equal(parse("{\"model_type\":\"gemma4\",\"text_config\":{\"model_type\":\"gemma4_text\"," GEMMA4_TEXT
                           ",\"rms_norm_eps\":0.001}}",
                           &c),
                     MX_OK);
    assert_int_equal(c.router.kind, MX_ROUTER_GEMMA4);
    assert_true(c.rms_norm_eps == 0.001f);
    assert_string_equal(mx_router_name(c.router.kind), "gemma4");
    /* a text-only gemma4_text config maps the same way */
    assert_int_equal(parse("{\"model_type\":\"gemma4_text\"," GEMMA4_TEXT "}", &c), MX_OK);
    assert_int_equal(c.router.kind, MX_ROUTER_GEMMA4);
    assert_true(c.rms_norm_eps == 1e-6f);
    /* other models keep their routers; their rms_norm_eps is read but unused */
    assert_int_equal(parse("{\"model_type\":\"gpt_oss\"," GPT_OSS_BASE ",\"rms_norm_eps\":1e-5}", &c), MX_OK);
    assert_int_equal(c.router.kind, MX_ROUTER_TOPK_SOFTMAX);
    assert_true(c.rms_norm_eps == 1e-5f);
}

static void test_config_gemma4_bad_epsilon_or_scoring_is_refused(void **state)
{
    (void)state;
    mx_model_config_t c, before;
    memset(&before, 0x5A, sizeof before);
    assert_int_equal(parse("{\"model_type\":\"gemma4_text\"," GEMMA4_TEXT ",\"rms_norm_eps\":-1}", &c), MX_ERR_FORMAT);
    assert_non_null(strstr(mx_error_detail(), "rms_norm_eps"));
    assert_memory_equal(&c, &before, sizeof c);
    assert_int_equal(parse("{\"model_type\":\"gemma4_text\"," GEMMA4_TEXT ",\"rms_norm_eps\":\"small\"}", &c),
                     MX_ERR_FORMAT);
    assert_non_null(strstr(mx_error_detail(), "rms_norm_eps"));
    assert_int_equal(parse("{\"model_type\":\"gemma4_text\"," GEMMA4_TEXT ",\"scoring_func\":\"sigmoid\"}", &c),
                     MX_ERR_UNSUPPORTED);
    assert_non_null(strstr(mx_error_detail(), "scoring_func 'sigmoid'"));
}

static void test_config_unknown_quant_method_is_an_error_naming_it(void **state)
{
    (void)state;
    mx_model_config_t c, before;
    memset(&before, 0x5A, sizeof before);
    assert_int_equal(parse("{\"model_type\":\"gpt_oss\"," GPT_OSS_BASE ",\"quantization_config\":{\"quant_method\":"
                           "\"gptq\"}}",
                           &c),
                     MX_ERR_UNSUPPORTED);
    assert_non_null(strstr(mx_error_detail(), "'gptq'"));
    assert_non_null(strstr(mx_error_detail(), "cfg.json"));
    assert_memory_equal(&c, &before, sizeof c); /* untouched on failure */
}

static void test_config_missing_or_bad_fields_are_format_errors(void **state)
{
    (void)state;
    mx_model_config_t c;
    assert_int_equal(parse("{\"model_type\":\"gpt_oss\",\"experts_per_token\":4,\"hidden_size\":2880,"
                           "\"intermediate_size\":2880,\"num_hidden_layers\":24}",
                           &c),
                     MX_ERR_FORMAT);
    assert_non_null(strstr(mx_error_detail(), "num_local_experts"));
    assert_int_equal(parse("{\"model_type\":\"gpt_oss\",\"num_local_experts\":4,\"experts_per_token\":8,"
                           "\"hidden_size\":2880,\"intermediate_size\":2880,\"num_hidden_layers\":24}",
                           &c),
                     MX_ERR_FORMAT);
    assert_non_null(strstr(mx_error_detail(), "top-k 8"));
    assert_int_equal(parse("{\"model_type\":\"gpt_oss\",\"num_local_experts\":32,\"experts_per_token\":4,"
                           "\"hidden_size\":\"big\",\"intermediate_size\":2880,\"num_hidden_layers\":24}",
                           &c),
                     MX_ERR_FORMAT);
    assert_non_null(strstr(mx_error_detail(), "hidden_size"));
    assert_int_equal(parse("{\"model_type\":\"gpt_oss\",\"num_local_experts\":32,\"experts_per_token\":4,"
                           "\"hidden_size\":-1,\"intermediate_size\":2880,\"num_hidden_layers\":24}",
                           &c),
                     MX_ERR_FORMAT);
    assert_non_null(strstr(mx_error_detail(), "hidden_size"));
    assert_int_equal(parse("{\"model_type\":", &c), MX_ERR_FORMAT);
    assert_non_null(strstr(mx_error_detail(), "JSON"));
    assert_int_equal(parse("[]", &c), MX_ERR_FORMAT);
}

/* A field present with the wrong type is refused, naming it: before, a string field
 * that was not a string (or a fraction where an integer belongs) was read as absent
 * or truncated, and e.g. "scoring_func": 1 silently gave DeepSeek a softmax router. */
static void test_config_fields_of_the_wrong_type_are_refused_naming_them(void **state)
{
    (void)state;
    static const struct {
        const char *json, *names;
    } cases[] = {
        {"{\"model_type\":\"deepseek_v3\"," GPT_OSS_BASE ",\"scoring_func\":1}", "\"scoring_func\" must be a string"},
        {"{\"model_type\":\"deepseek_v3\"," GPT_OSS_BASE ",\"scoring_func\":[\"sigmoid\"]}",
         "\"scoring_func\" must be a string"},
        {"{\"model_type\":5," GPT_OSS_BASE "}", "\"model_type\" must be a string"},
        {"{\"text_config\":{\"model_type\":true}," GPT_OSS_BASE "}", "\"model_type\" in text_config must be a string"},
        {"{\"model_type\":\"foo\"," GPT_OSS_BASE ",\"hidden_act\":7}", "\"hidden_act\" must be a string"},
        {"{\"model_type\":\"qwen3_moe\"," GPT_OSS_BASE ",\"quantization_config\":{\"quant_method\":\"fp8\","
         "\"fmt\":5}}",
         "\"fmt\" in quantization_config must be a string"},
        {"{\"model_type\":\"qwen3_moe\"," GPT_OSS_BASE ",\"quantization_config\":{\"quant_method\":\"fp8\","
         "\"activation_scheme\":[\"static\"]}}",
         "\"activation_scheme\" in quantization_config must be a string"},
        {"{\"model_type\":\"qwen3_moe\"," GPT_OSS_BASE ",\"quantization_config\":{\"quant_method\":\"fp8\","
         "\"weight_block_size\":[128.9,128]}}",
         "weight_block_size must be [rows, cols] (two integers)"},
        {"{\"model_type\":\"qwen3_moe\"," GPT_OSS_BASE ",\"quantization_config\":{\"quant_method\":7}}",
         "\"quant_method\" in quantization_config must be a string"},
        {"{\"model_type\":\"qwen3_moe\"," GPT_OSS_BASE ",\"quantization_config\":{\"quant_method\":"
         "\"compressed-tensors\",\"config_groups\":{\"g\":{\"weights\":{\"num_bits\":8.5,\"type\":\"float\","
         "\"strategy\":\"channel\"}}}}}",
         "\"num_bits\" in weights must be an integer"},
        {"{\"model_type\":\"qwen3_moe\"," GPT_OSS_BASE ",\"quantization_config\":{\"quant_method\":"
         "\"compressed-tensors\",\"config_groups\":{\"g\":{\"weights\":{\"num_bits\":8,\"type\":\"float\","
         "\"strategy\":3}}}}}",
         "\"strategy\" in weights must be a string"},
        {"{\"model_type\":\"qwen3_moe\"," GPT_OSS_BASE ",\"quantization_config\":{\"quant_method\":\"quark\","
         "\"global_quant_config\":{\"weight\":{\"dtype\":4}}}}",
         "\"dtype\" in global_quant_config.weight must be a string"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        mx_model_config_t c;
        mx_status_t st = parse(cases[i].json, &c);
        if (st != MX_ERR_FORMAT || !strstr(mx_error_detail(), cases[i].names) || !strstr(mx_error_detail(), "cfg.json"))
            fail_msg("case %zu: %s: got %s '%s', expected a format error with '%s'", i, cases[i].json,
                     mx_status_str(st), mx_error_detail(), cases[i].names);
    }
    /* null stays "absent", as before */
    mx_model_config_t c;
    assert_int_equal(parse("{\"model_type\":\"qwen3_moe\"," GPT_OSS_BASE ",\"scoring_func\":null}", &c), MX_OK);
    assert_int_equal(c.router.kind, MX_ROUTER_SOFTMAX_TOPK);
}

static void test_config_unknown_activation_is_unsupported(void **state)
{
    (void)state;
    mx_model_config_t c;
    assert_int_equal(parse("{\"model_type\":\"foo\"," GPT_OSS_BASE ",\"hidden_act\":\"relu2\"}", &c),
                     MX_ERR_UNSUPPORTED);
    assert_non_null(strstr(mx_error_detail(), "relu2"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_gpt_oss_mxfp4_is_claimed_with_swiglu_oai),
        cmocka_unit_test(test_config_swiglu_limit_and_alpha_come_from_the_config),
        cmocka_unit_test(test_config_mxfp4_without_model_type_is_never_claimed),
        cmocka_unit_test(test_config_generic_mxfp4_of_other_model_stays_generic),
        cmocka_unit_test(test_config_qwen_without_norm_topk_prob_does_not_renormalize),
        cmocka_unit_test(test_config_deepseek_fp8_block_and_grouped_sigmoid_router),
        cmocka_unit_test(test_config_fp8_block_other_than_128_is_unsupported),
        cmocka_unit_test(test_config_grouped_router_that_cannot_fill_top_k_is_rejected),
        cmocka_unit_test(test_config_compressed_tensors_fp8_dynamic_is_per_channel_w8a8),
        cmocka_unit_test(test_config_compressed_tensors_fp8_block_and_weight_only),
        cmocka_unit_test(test_config_quark_w_mxfp4_a_fp8_is_w4a8),
        cmocka_unit_test(test_config_nested_text_config_of_gemma4_is_normalized),
        cmocka_unit_test(test_config_gemma4_router_takes_rms_norm_eps_from_text_config),
        cmocka_unit_test(test_config_gemma4_bad_epsilon_or_scoring_is_refused),
        cmocka_unit_test(test_config_unknown_quant_method_is_an_error_naming_it),
        cmocka_unit_test(test_config_missing_or_bad_fields_are_format_errors),
        cmocka_unit_test(test_config_fields_of_the_wrong_type_are_refused_naming_them),
        cmocka_unit_test(test_config_unknown_activation_is_unsupported),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
