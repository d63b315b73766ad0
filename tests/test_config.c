/* test_config.c — config.json parsing (DeepSeek-V3, DeepSeek-V2-Lite), bad inputs, save/parse. */
#define _GNU_SOURCE
#include "frugal.h"
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Modeled on deepseek-ai/DeepSeek-V3 config.json. */
static const char *V3_JSON =
    "{\n"
    "  \"architectures\": [\"DeepseekV3ForCausalLM\"],\n"
    "  \"attention_bias\": false,\n"
    "  \"attention_dropout\": 0.0,\n"
    "  \"bos_token_id\": 0,\n"
    "  \"eos_token_id\": 1,\n"
    "  \"ep_size\": 1,\n"
    "  \"first_k_dense_replace\": 3,\n"
    "  \"hidden_act\": \"silu\",\n"
    "  \"hidden_size\": 7168,\n"
    "  \"initializer_range\": 0.02,\n"
    "  \"intermediate_size\": 18432,\n"
    "  \"kv_lora_rank\": 512,\n"
    "  \"max_position_embeddings\": 163840,\n"
    "  \"model_type\": \"deepseek_v3\",\n"
    "  \"moe_intermediate_size\": 2048,\n"
    "  \"moe_layer_freq\": 1,\n"
    "  \"n_group\": 8,\n"
    "  \"n_routed_experts\": 256,\n"
    "  \"n_shared_experts\": 1,\n"
    "  \"norm_topk_prob\": true,\n"
    "  \"num_attention_heads\": 128,\n"
    "  \"num_experts_per_tok\": 8,\n"
    "  \"num_hidden_layers\": 61,\n"
    "  \"num_key_value_heads\": 128,\n"
    "  \"num_nextn_predict_layers\": 1,\n"
    "  \"q_lora_rank\": 1536,\n"
    "  \"qk_nope_head_dim\": 128,\n"
    "  \"qk_rope_head_dim\": 64,\n"
    "  \"quantization_config\": {\"activation_scheme\": \"dynamic\", \"fmt\": \"e4m3\",\n"
    "                          \"quant_method\": \"fp8\", \"weight_block_size\": [128, 128]},\n"
    "  \"rms_norm_eps\": 1e-06,\n"
    "  \"rope_scaling\": {\n"
    "    \"beta_fast\": 32,\n"
    "    \"beta_slow\": 1,\n"
    "    \"factor\": 40,\n"
    "    \"mscale\": 1.0,\n"
    "    \"mscale_all_dim\": 1.0,\n"
    "    \"original_max_position_embeddings\": 4096,\n"
    "    \"type\": \"yarn\"\n"
    "  },\n"
    "  \"rope_theta\": 10000,\n"
    "  \"routed_scaling_factor\": 2.5,\n"
    "  \"scoring_func\": \"sigmoid\",\n"
    "  \"tie_word_embeddings\": false,\n"
    "  \"topk_group\": 4,\n"
    "  \"topk_method\": \"noaux_tc\",\n"
    "  \"torch_dtype\": \"bfloat16\",\n"
    "  \"transformers_version\": \"4.33.1\",\n"
    "  \"use_cache\": true,\n"
    "  \"v_head_dim\": 128,\n"
    "  \"vocab_size\": 129280\n"
    "}\n";

/* Modeled on deepseek-ai/DeepSeek-V2-Lite config.json (no scoring_func key on purpose:
 * the V2 default must be softmax). */
static const char *V2_JSON =
    "{\n"
    "  \"architectures\": [\"DeepseekV2ForCausalLM\"],\n"
    "  \"attention_bias\": false,\n"
    "  \"attention_dropout\": 0.0,\n"
    "  \"aux_loss_alpha\": 0.001,\n"
    "  \"bos_token_id\": 100000,\n"
    "  \"eos_token_id\": 100001,\n"
    "  \"first_k_dense_replace\": 1,\n"
    "  \"hidden_act\": \"silu\",\n"
    "  \"hidden_size\": 2048,\n"
    "  \"initializer_range\": 0.02,\n"
    "  \"intermediate_size\": 10944,\n"
    "  \"kv_lora_rank\": 512,\n"
    "  \"max_position_embeddings\": 163840,\n"
    "  \"model_type\": \"deepseek_v2\",\n"
    "  \"moe_intermediate_size\": 1408,\n"
    "  \"moe_layer_freq\": 1,\n"
    "  \"n_group\": 1,\n"
    "  \"n_routed_experts\": 64,\n"
    "  \"n_shared_experts\": 2,\n"
    "  \"norm_topk_prob\": false,\n"
    "  \"num_attention_heads\": 16,\n"
    "  \"num_experts_per_tok\": 6,\n"
    "  \"num_hidden_layers\": 27,\n"
    "  \"num_key_value_heads\": 16,\n"
    "  \"pretraining_tp\": 1,\n"
    "  \"q_lora_rank\": null,\n"
    "  \"qk_nope_head_dim\": 128,\n"
    "  \"qk_rope_head_dim\": 64,\n"
    "  \"rms_norm_eps\": 1e-06,\n"
    "  \"rope_scaling\": {\n"
    "    \"beta_fast\": 32, \"beta_slow\": 1, \"factor\": 40, \"mscale\": 0.707,\n"
    "    \"mscale_all_dim\": 0.707, \"original_max_position_embeddings\": 4096, \"type\": \"yarn\"\n"
    "  },\n"
    "  \"rope_theta\": 10000,\n"
    "  \"routed_scaling_factor\": 1.0,\n"
    "  \"seq_aux\": true,\n"
    "  \"tie_word_embeddings\": false,\n"
    "  \"topk_group\": 1,\n"
    "  \"topk_method\": \"greedy\",\n"
    "  \"torch_dtype\": \"bfloat16\",\n"
    "  \"use_cache\": true,\n"
    "  \"v_head_dim\": 128,\n"
    "  \"vocab_size\": 102400\n"
    "}\n";

/* A small V3 config with most keys left to defaults. */
static const char *TINY_JSON =
    "{\"model_type\": \"deepseek_v3\", \"vocab_size\": 256, \"hidden_size\": 64,"
    " \"num_hidden_layers\": 4, \"num_attention_heads\": 4, \"kv_lora_rank\": 32,"
    " \"q_lora_rank\": null, \"qk_nope_head_dim\": 16, \"qk_rope_head_dim\": 8, \"v_head_dim\": 16,"
    " \"intermediate_size\": 128, \"moe_intermediate_size\": 32, \"n_routed_experts\": 16,"
    " \"num_experts_per_tok\": 4, \"n_group\": 4, \"topk_group\": 2, \"first_k_dense_replace\": 1}";

static int parse(fr_config *c, const char *s) { return fr_config_parse(c, s, strlen(s)); }

/* Replace the first occurrence of `from` in `base` by `to` (from must occur). */
static char *subst(const char *base, const char *from, const char *to) {
    const char *p = strstr(base, from);
    if (!p) {
        printf("test bug: '%s' not found\n", from);
        exit(2);
    }
    size_t n = strlen(base) - strlen(from) + strlen(to) + 1;
    char *out = malloc(n);
    snprintf(out, n, "%.*s%s%s", (int)(p - base), base, to, p + strlen(from));
    return out;
}

static void expect_err(const char *what, const char *json, int code, const char *needle) {
    fr_config c;
    int rc = parse(&c, json);
    CHECK(rc == code, "%s: expected %d, got %d (%s)", what, code, rc, fr_last_error());
    CHECK(strstr(fr_last_error(), needle) != NULL, "%s: message should contain '%s': %s", what,
          needle, fr_last_error());
}

static void expect_subst_err(const char *what, const char *base, const char *from, const char *to,
                             int code, const char *needle) {
    char *j = subst(base, from, to);
    expect_err(what, j, code, needle);
    free(j);
}

static void test_v3(void) {
    fr_config c;
    int rc = parse(&c, V3_JSON);
    CHECK(rc == FR_OK, "V3 parse: %d %s", rc, fr_last_error());
    if (rc != FR_OK) return;
    CHECK(strcmp(c.model_type, "deepseek_v3") == 0, "model_type");
    CHECK(c.vocab_size == 129280 && c.hidden_size == 7168 && c.intermediate_size == 18432, "sizes");
    CHECK(c.moe_intermediate_size == 2048 && c.num_hidden_layers == 61 && c.num_attention_heads == 128,
          "sizes 2");
    CHECK(c.q_lora_rank == 1536 && c.kv_lora_rank == 512 && c.qk_nope_head_dim == 128 &&
              c.qk_rope_head_dim == 64 && c.v_head_dim == 128,
          "MLA dims");
    CHECK(c.n_routed_experts == 256 && c.n_shared_experts == 1 && c.num_experts_per_tok == 8 &&
              c.n_group == 8 && c.topk_group == 4,
          "MoE");
    CHECK(c.topk_method == FR_TOPK_NOAUX_TC && c.scoring_func == FR_SCORING_SIGMOID &&
              c.has_correction_bias == 1 && c.norm_topk_prob == 1,
          "routing");
    CHECK(c.routed_scaling_factor == 2.5f, "routed_scaling_factor %g", (double)c.routed_scaling_factor);
    CHECK(c.first_k_dense_replace == 3 && c.moe_layer_freq == 1 && c.num_nextn_predict_layers == 1,
          "layers");
    CHECK(c.max_position_embeddings == 163840 && c.rope_theta == 10000.0 && c.rope_interleave == 1,
          "rope basics");
    CHECK(c.rope_type == FR_ROPE_YARN && c.rope_factor == 40.0 &&
              c.rope_original_max_position_embeddings == 4096 && c.rope_beta_fast == 32.0 &&
              c.rope_beta_slow == 1.0 && c.rope_mscale == 1.0 && c.rope_mscale_all_dim == 1.0,
          "yarn");
    CHECK(c.rms_norm_eps == 1e-6f && c.initializer_range == 0.02f && c.tie_word_embeddings == 0,
          "norm/init");
    CHECK(c.bos_token_id == 0 && c.eos_token_id == 1 && c.pad_token_id == -1, "token ids");
    CHECK(!fr_config_layer_is_moe(&c, 0) && !fr_config_layer_is_moe(&c, 2) &&
              fr_config_layer_is_moe(&c, 3) && fr_config_layer_is_moe(&c, 60) &&
              fr_config_layer_is_moe(&c, 61),
          "layer_is_moe (MTP layer 61 is MoE)");

    /* architectures instead of model_type */
    char *j = subst(V3_JSON, "\"model_type\": \"deepseek_v3\",", "");
    rc = parse(&c, j);
    CHECK(rc == FR_OK && strcmp(c.model_type, "deepseek_v3") == 0, "architectures fallback: %s",
          fr_last_error());
    free(j);
}

static void test_v2_lite(void) {
    fr_config c;
    int rc = parse(&c, V2_JSON);
    CHECK(rc == FR_OK, "V2-Lite parse: %d %s", rc, fr_last_error());
    if (rc != FR_OK) return;
    CHECK(strcmp(c.model_type, "deepseek_v2") == 0, "model_type");
    CHECK(c.num_hidden_layers == 27 && c.hidden_size == 2048 && c.num_attention_heads == 16, "sizes");
    CHECK(c.q_lora_rank == 0, "q_lora_rank null -> 0 (%d)", c.q_lora_rank);
    CHECK(c.n_routed_experts == 64 && c.num_experts_per_tok == 6 && c.n_shared_experts == 2 &&
              c.moe_intermediate_size == 1408 && c.intermediate_size == 10944,
          "MoE sizes");
    CHECK(c.scoring_func == FR_SCORING_SOFTMAX, "V2 default scoring softmax");
    CHECK(c.topk_method == FR_TOPK_GREEDY && c.has_correction_bias == 0, "greedy, no bias");
    CHECK(c.norm_topk_prob == 0 && c.routed_scaling_factor == 1.0f, "V2 routing weights");
    CHECK(c.first_k_dense_replace == 1 && !fr_config_layer_is_moe(&c, 0) &&
              fr_config_layer_is_moe(&c, 1) && fr_config_layer_is_moe(&c, 26),
          "dense layer 0");
    CHECK(c.rope_interleave == 1, "V2 rotates adjacent pairs");
    CHECK(c.rope_type == FR_ROPE_YARN && fabs(c.rope_mscale - 0.707) < 1e-12 &&
              fabs(c.rope_mscale_all_dim - 0.707) < 1e-12,
          "V2 yarn mscale");
    CHECK(c.bos_token_id == 100000 && c.eos_token_id == 100001 && c.pad_token_id == -1, "ids");
    CHECK(c.num_nextn_predict_layers == 0, "no MTP");

    /* V2 defaults when keys are absent */
    char *j = subst(V2_JSON, "\"topk_method\": \"greedy\",", "");
    char *j2 = subst(j, "\"n_group\": 1,", "");
    char *j3 = subst(j2, "\"topk_group\": 1,", "");
    rc = parse(&c, j3);
    CHECK(rc == FR_OK && c.topk_method == FR_TOPK_GREEDY && c.n_group == 1 && c.topk_group == 1,
          "V2 defaults: %s", fr_last_error());
    free(j);
    free(j2);
    free(j3);
    /* V2 group_limited_greedy (DeepSeek-V2 proper) */
    j = subst(V2_JSON, "\"topk_method\": \"greedy\"", "\"topk_method\": \"group_limited_greedy\"");
    j2 = subst(j, "\"n_group\": 1", "\"n_group\": 8");
    j3 = subst(j2, "\"topk_group\": 1", "\"topk_group\": 3");
    rc = parse(&c, j3);
    CHECK(rc == FR_OK && c.topk_method == FR_TOPK_GROUP_LIMITED_GREEDY && !c.has_correction_bias,
          "group_limited_greedy: %s", fr_last_error());
    free(j);
    free(j2);
    free(j3);
}

static void test_defaults(void) {
    fr_config c;
    int rc = parse(&c, TINY_JSON);
    CHECK(rc == FR_OK, "tiny parse: %s", fr_last_error());
    if (rc != FR_OK) return;
    CHECK(c.q_lora_rank == 0 && c.n_shared_experts == 1 && c.topk_method == FR_TOPK_NOAUX_TC &&
              c.scoring_func == FR_SCORING_SIGMOID && c.norm_topk_prob == 1,
          "V3 routing defaults");
    CHECK(c.routed_scaling_factor == 2.5f && c.moe_layer_freq == 1 && c.num_nextn_predict_layers == 0,
          "V3 defaults 2");
    CHECK(c.max_position_embeddings == 4096 && c.rope_theta == 10000.0 && c.rope_interleave == 1 &&
              c.rope_type == FR_ROPE_DEFAULT,
          "V3 rope defaults");
    CHECK(c.rms_norm_eps == 1e-6f && c.initializer_range == 0.02f && !c.tie_word_embeddings,
          "V3 misc defaults");
    CHECK(c.bos_token_id == -1 && c.eos_token_id == -1 && c.pad_token_id == -1, "ids absent -> -1");

    /* q_lora_rank absent -> transformers default 1536 */
    char *j = subst(TINY_JSON, "\"q_lora_rank\": null,", "");
    rc = parse(&c, j);
    CHECK(rc == FR_OK && c.q_lora_rank == 1536, "q_lora_rank absent -> 1536 (%d)", c.q_lora_rank);
    free(j);

    /* yarn with only factor: defaults; absent mscale represented as 0 */
    j = subst(TINY_JSON, "\"intermediate_size\"",
              "\"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": 4.0}, \"intermediate_size\"");
    rc = parse(&c, j);
    CHECK(rc == FR_OK && c.rope_type == FR_ROPE_YARN && c.rope_factor == 4.0 &&
              c.rope_original_max_position_embeddings == 4096 && c.rope_beta_fast == 32.0 &&
              c.rope_beta_slow == 1.0 && c.rope_mscale == 0.0 && c.rope_mscale_all_dim == 0.0,
          "yarn defaults: %s", fr_last_error());
    free(j);
    j = subst(TINY_JSON, "\"intermediate_size\"",
              "\"rope_scaling\": {\"type\": \"yarn\"}, \"intermediate_size\"");
    expect_err("yarn without factor", j, FR_ERR_CONFIG, "factor");
    free(j);
    j = subst(TINY_JSON, "\"intermediate_size\"",
              "\"rope_scaling\": {\"type\": \"default\"}, \"intermediate_size\"");
    CHECK(parse(&c, j) == FR_OK && c.rope_type == FR_ROPE_DEFAULT, "rope type default");
    free(j);

    /* dense model: n_routed_experts null, MoE keys not needed */
    j = subst(TINY_JSON,
              "\"moe_intermediate_size\": 32, \"n_routed_experts\": 16, \"num_experts_per_tok\": 4,",
              "\"n_routed_experts\": null,");
    rc = parse(&c, j);
    CHECK(rc == FR_OK && c.n_routed_experts == 0 && !fr_config_layer_is_moe(&c, 2),
          "dense model: %s", fr_last_error());
    free(j);

    /* moe_layer_freq */
    j = subst(TINY_JSON, "\"first_k_dense_replace\": 1", "\"first_k_dense_replace\": 1, \"moe_layer_freq\": 2");
    rc = parse(&c, j);
    CHECK(rc == FR_OK && !fr_config_layer_is_moe(&c, 1) && fr_config_layer_is_moe(&c, 2) &&
              !fr_config_layer_is_moe(&c, 3),
          "moe_layer_freq 2");
    free(j);

    /* eos as a list, integral float accepted as an integer */
    j = subst(TINY_JSON, "\"hidden_size\": 64", "\"hidden_size\": 64.0, \"eos_token_id\": [7, 8]");
    rc = parse(&c, j);
    CHECK(rc == FR_OK && c.hidden_size == 64 && c.eos_token_id == 7, "eos list / 64.0: %s",
          fr_last_error());
    free(j);
}

static void test_bad(void) {
    /* Each row: BASE with FROM replaced by TO must fail with CODE and a message holding NEEDLE
     * (see expect_subst_err). One table so a new bad config is one line. */
    const struct {
        const char *what, *base, *from, *to;
        int code;
        const char *needle;
    } cases[] = {
        {"unknown model_type", V3_JSON, "\"deepseek_v3\"",
         "\"llama\"", FR_ERR_CONFIG, "unsupported model_type 'llama'"},
        {"missing hidden_size", V3_JSON, "\"hidden_size\": 7168,", "", FR_ERR_CONFIG, "missing key 'hidden_size'"},
        {"missing vocab_size", V3_JSON, "\"vocab_size\": 129280",
         "\"x\": 1", FR_ERR_CONFIG, "missing key 'vocab_size'"},
        {"missing num_experts_per_tok", V3_JSON, "\"num_experts_per_tok\": 8,",
         "", FR_ERR_CONFIG, "num_experts_per_tok"},
        {"null hidden_size", V3_JSON, "\"hidden_size\": 7168", "\"hidden_size\": null", FR_ERR_CONFIG, "hidden_size"},
        {"zero heads", V3_JSON, "\"num_attention_heads\": 128",
         "\"num_attention_heads\": 0", FR_ERR_CONFIG, "num_attention_heads"},
        {"negative size", V3_JSON, "\"hidden_size\": 7168", "\"hidden_size\": -7168", FR_ERR_CONFIG, "hidden_size"},
        {"top-k > experts", TINY_JSON, "\"num_experts_per_tok\": 4",
         "\"num_experts_per_tok\": 17", FR_ERR_CONFIG, "num_experts_per_tok (17) > n_routed_experts (16)"},
        {"topk_group > n_group", V3_JSON, "\"topk_group\": 4", "\"topk_group\": 9", FR_ERR_CONFIG, "topk_group"},
        {"experts not divisible by n_group", V3_JSON, "\"n_group\": 8", "\"n_group\": 7", FR_ERR_CONFIG, "n_group"},
        {"groups too small for top-k", TINY_JSON, "\"n_group\": 4, \"topk_group\": 2",
         "\"n_group\": 8, \"topk_group\": 1", FR_ERR_CONFIG, "topk_group"},
        {"noaux_tc one expert per group", TINY_JSON, "\"n_group\": 4", "\"n_group\": 16", FR_ERR_CONFIG, "n_group"},
        {"odd qk_rope_head_dim", V3_JSON, "\"qk_rope_head_dim\": 64",
         "\"qk_rope_head_dim\": 63", FR_ERR_CONFIG, "qk_rope_head_dim"},
        {"string where int expected", V3_JSON, "\"hidden_size\": 7168",
         "\"hidden_size\": \"7168\"", FR_ERR_CONFIG, "hidden_size"},
        {"fractional int", V3_JSON, "\"num_hidden_layers\": 61",
         "\"num_hidden_layers\": 61.5", FR_ERR_CONFIG, "num_hidden_layers"},
        {"huge int", V3_JSON, "\"vocab_size\": 129280", "\"vocab_size\": 4294967296", FR_ERR_CONFIG, "vocab_size"},
        {"string where float expected", V3_JSON, "\"rms_norm_eps\": 1e-06",
         "\"rms_norm_eps\": \"1e-6\"", FR_ERR_CONFIG, "rms_norm_eps"},
        {"zero eps", V3_JSON, "\"rms_norm_eps\": 1e-06", "\"rms_norm_eps\": 0", FR_ERR_CONFIG, "rms_norm_eps"},
        {"negative rope_theta", V3_JSON, "\"rope_theta\": 10000", "\"rope_theta\": -1", FR_ERR_CONFIG, "rope_theta"},
        {"bool as string", V3_JSON, "\"norm_topk_prob\": true",
         "\"norm_topk_prob\": \"yes\"", FR_ERR_CONFIG, "norm_topk_prob"},
        {"unknown scoring_func", V3_JSON, "\"sigmoid\"", "\"relu\"", FR_ERR_CONFIG, "scoring_func"},
        {"unknown topk_method", V3_JSON, "\"noaux_tc\"", "\"random\"", FR_ERR_CONFIG, "topk_method"},
        {"first_k_dense_replace > layers", V3_JSON, "\"first_k_dense_replace\": 3",
         "\"first_k_dense_replace\": 62", FR_ERR_CONFIG, "first_k_dense_replace"},
        {"too many MTP layers", V3_JSON, "\"num_nextn_predict_layers\": 1",
         "\"num_nextn_predict_layers\": 9", FR_ERR_CONFIG, "num_nextn_predict_layers"},
        {"rope dynamic", V3_JSON, "\"type\": \"yarn\"", "\"type\": \"dynamic\"", FR_ERR_UNSUPPORTED, "dynamic"},
        {"rope factor string", V3_JSON, "\"factor\": 40", "\"factor\": \"40\"", FR_ERR_CONFIG, "rope_scaling.factor"},
        {"attention_factor", V3_JSON, "\"factor\": 40",
         "\"factor\": 40, \"attention_factor\": 1.2", FR_ERR_UNSUPPORTED, "attention_factor"},
        {"attention_bias", V3_JSON, "\"attention_bias\": false",
         "\"attention_bias\": true", FR_ERR_UNSUPPORTED, "attention_bias"},
        {"hidden_act", V3_JSON, "\"hidden_act\": \"silu\"",
         "\"hidden_act\": \"gelu\"", FR_ERR_UNSUPPORTED, "hidden_act"},
        {"duplicate key", V3_JSON, "\"hidden_size\": 7168",
         "\"hidden_size\": 7168, \"hidden_size\": 1024", FR_ERR_CONFIG, "hidden_size"},
        {"malformed JSON", V3_JSON, "\"hidden_size\": 7168,", "\"hidden_size\": 7168,,", FR_ERR_FORMAT, "line 10"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        expect_subst_err(cases[i].what, cases[i].base, cases[i].from, cases[i].to, cases[i].code, cases[i].needle);
    expect_err("no model_type, no architectures", "{\"hidden_size\": 8}", FR_ERR_CONFIG, "model_type");
    expect_err("truncated JSON", "{\"model_type\": \"deepseek_v3\", ", FR_ERR_FORMAT, "malformed JSON");
    expect_err("trailing garbage", "{} x", FR_ERR_FORMAT, "byte 3");
    expect_err("empty text", "", FR_ERR_FORMAT, "malformed JSON");
    expect_err("array top level", "[1]", FR_ERR_CONFIG, "JSON object");

    /* rope_scaling of the wrong type */
    char *j = subst(TINY_JSON, "\"intermediate_size\"", "\"rope_scaling\": 3, \"intermediate_size\"");
    expect_err("rope_scaling number", j, FR_ERR_CONFIG, "rope_scaling");
    free(j);

    /* fr_config_validate on a hand-made struct */
    fr_config c;
    CHECK(parse(&c, TINY_JSON) == FR_OK, "tiny");
    c.qk_rope_head_dim = 7;
    CHECK(fr_config_validate(&c) == FR_ERR_CONFIG && strstr(fr_last_error(), "qk_rope_head_dim"),
          "validate odd rope: %s", fr_last_error());
    CHECK(parse(&c, TINY_JSON) == FR_OK, "tiny");
    c.num_nextn_predict_layers = -1;
    CHECK(fr_config_validate(&c) == FR_ERR_CONFIG && strstr(fr_last_error(), "num_nextn_predict_layers"),
          "validate MTP: %s", fr_last_error());
    CHECK(parse(&c, TINY_JSON) == FR_OK, "tiny");
    c.moe_layer_freq = 0;
    CHECK(fr_config_validate(&c) == FR_ERR_CONFIG && strstr(fr_last_error(), "moe_layer_freq"),
          "validate freq: %s", fr_last_error());
    CHECK(parse(&c, TINY_JSON) == FR_OK, "tiny");
    c.has_correction_bias = 0;
    CHECK(fr_config_validate(&c) == FR_ERR_CONFIG && strstr(fr_last_error(), "has_correction_bias"),
          "validate bias flag: %s", fr_last_error());
    CHECK(parse(&c, V2_JSON) == FR_OK, "V2");
    c.rope_interleave = 0;
    CHECK(fr_config_validate(&c) == FR_ERR_CONFIG && strstr(fr_last_error(), "rope_interleave"),
          "validate V2 interleave: %s", fr_last_error());
    char *j2 = subst(V2_JSON, "\"use_cache\"", "\"rope_interleave\": false, \"use_cache\"");
    CHECK(parse(&c, j2) == FR_OK && c.rope_interleave == 1, "V2 ignores rope_interleave key");
    free(j2);
}

static int config_equal(const fr_config *a, const fr_config *b) {
#define EQ(f) if (a->f != b->f) { printf("  field " #f " differs\n"); return 0; }
    if (strcmp(a->model_type, b->model_type) != 0) return 0;
    EQ(vocab_size) EQ(hidden_size) EQ(intermediate_size) EQ(moe_intermediate_size)
    EQ(num_hidden_layers) EQ(num_attention_heads) EQ(q_lora_rank) EQ(kv_lora_rank)
    EQ(qk_nope_head_dim) EQ(qk_rope_head_dim) EQ(v_head_dim) EQ(n_routed_experts)
    EQ(n_shared_experts) EQ(num_experts_per_tok) EQ(n_group) EQ(topk_group) EQ(topk_method)
    EQ(scoring_func) EQ(norm_topk_prob) EQ(routed_scaling_factor) EQ(first_k_dense_replace)
    EQ(moe_layer_freq) EQ(num_nextn_predict_layers) EQ(max_position_embeddings) EQ(rope_theta)
    EQ(rope_interleave) EQ(rope_type) EQ(rope_factor) EQ(rope_original_max_position_embeddings)
    EQ(rope_beta_fast) EQ(rope_beta_slow) EQ(rope_mscale) EQ(rope_mscale_all_dim)
    EQ(rms_norm_eps) EQ(tie_word_embeddings) EQ(initializer_range) EQ(has_correction_bias)
    EQ(bos_token_id) EQ(eos_token_id) EQ(pad_token_id)
#undef EQ
    return 1;
}

static void round_trip(const char *what, const fr_config *in, const char *path) {
    int rc = fr_config_save(in, path);
    CHECK(rc == FR_OK, "%s save: %s", what, fr_last_error());
    fr_config out;
    rc = fr_config_load(&out, path);
    CHECK(rc == FR_OK, "%s load: %s", what, fr_last_error());
    CHECK(rc == FR_OK && config_equal(in, &out), "%s: save/load round trip", what);
}

static void test_save(void) {
    char dir[] = "/tmp/fr_cfg_XXXXXX";
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        exit(2);
    }
    char path[256];
    snprintf(path, sizeof path, "%s/config.json", dir);
    fr_config c;
    const char *srcs[3] = {V3_JSON, V2_JSON, TINY_JSON};
    const char *names[3] = {"V3", "V2-Lite", "tiny"};
    for (int i = 0; i < 3; i++) {
        CHECK(parse(&c, srcs[i]) == FR_OK, "%s", names[i]);
        round_trip(names[i], &c, path);
    }
    /* odd values survive */
    CHECK(parse(&c, TINY_JSON) == FR_OK, "tiny");
    c.rms_norm_eps = 1.2345678e-5f;
    c.routed_scaling_factor = 0.1f;
    c.initializer_range = 0.006f;
    c.rope_theta = 1234567.891;
    c.tie_word_embeddings = 1;
    c.pad_token_id = 5;
    c.rope_type = FR_ROPE_YARN;
    c.rope_factor = 2.5;
    c.rope_original_max_position_embeddings = 1024;
    c.rope_beta_fast = 16;
    c.rope_beta_slow = 2;
    c.rope_mscale = 0.0;
    c.rope_mscale_all_dim = 0.707;
    c.rope_interleave = 0;
    round_trip("odd values", &c, path);

    /* the text is as transformers expects */
    CHECK(parse(&c, V2_JSON) == FR_OK, "V2");
    CHECK(fr_config_save(&c, path) == FR_OK, "save V2");
    char *text = NULL;
    FILE *f = fopen(path, "rb");
    if (f) {
        text = calloc(1, 1 << 16);
        size_t got = fread(text, 1, (1 << 16) - 1, f);
        (void)got;
        fclose(f);
    }
    CHECK(text && strstr(text, "\"q_lora_rank\":\tnull"), "q_lora_rank null");
    CHECK(text && strstr(text, "\"pad_token_id\":\tnull"), "pad null");
    CHECK(text && strstr(text, "\"DeepseekV2ForCausalLM\""), "architectures");
    CHECK(text && strstr(text, "\"rope_theta\":\t10000.0"), "float formatting");
    CHECK(text && strstr(text, "\"rms_norm_eps\":\t1e-06"), "eps formatting");
    CHECK(text && !strstr(text, "rope_interleave"), "V2 has no rope_interleave");
    free(text);

    /* invalid configs are not written */
    c.num_attention_heads = 0;
    CHECK(fr_config_save(&c, path) == FR_ERR_CONFIG, "save validates");
    CHECK(fr_config_load(&c, "/nonexistent/config.json") == FR_ERR_IO, "load missing file");
    unlink(path);
    rmdir(dir);
}

int main(void) {
    test_v3();
    test_v2_lite();
    test_defaults();
    test_bad();
    test_save();
    return fr_test_finish("test_config");
}
