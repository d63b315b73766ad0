/* config.c — Hugging Face DeepseekV3 / DeepseekV2 config.json: parse, validate, save.
 *
 * Defaults follow transformers' DeepseekV3Config / DeepseekV2Config (transformers 4.57)
 * for keys that are absent, with these frugal-specific rules:
 *   - q_lora_rank: null → 0 (plain q_proj); absent → 1536 (both model types).
 *   - n_routed_experts: null or 0 → dense model; absent → 256 (V3) / 64 (V2).
 *     With routed experts, moe_intermediate_size and num_experts_per_tok are required.
 *   - n_group / topk_group: V2 defaults to null, which means "one group" here (1 / 1).
 *   - scoring_func (not a transformers key): V3 "sigmoid", V2 "softmax".
 *   - topk_method: V3 "noaux_tc", V2 "greedy"; has_correction_bias = (noaux_tc).
 *   - moe_layer_freq 1, num_nextn_predict_layers 0 when absent.
 *   - rope_interleave: read for V3 (default true); V2 always rotates adjacent pairs → 1.
 *   - bos/eos/pad_token_id: -1 when absent or null (an array takes its first element).
 *   - rope_scaling yarn: original_max_position_embeddings absent/null/0 → max_position_embeddings,
 *     beta_fast absent/null/0 → 32, beta_slow absent/null/0 → 1 (transformers uses `or`),
 *     mscale / mscale_all_dim absent or null → 0.0. 0.0 means "absent" and is exactly what
 *     transformers does with a missing key: the cos/sin attention factor is
 *     get_mscale(f, mscale)/get_mscale(f, mscale_all_dim) only when both are non-zero, else
 *     get_mscale(f); the softmax scale is multiplied by get_mscale(f, mscale_all_dim)^2 only
 *     when mscale_all_dim is non-zero.
 * For a key given twice, Python's json keeps the last value and cJSON the first, so a
 * duplicated key is rejected rather than silently read differently.
 */
#define _GNU_SOURCE
#include "core/internal.h"

#include <cjson/cJSON.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const cJSON *obj;
    const char *label;  /* file name for messages */
    const char *prefix; /* "" or "rope_scaling." */
} jctx;

/* Distinguishes absent, null and present. */
static const cJSON *jget(const jctx *c, const char *key) {
    return cJSON_GetObjectItemCaseSensitive(c->obj, key);
}

static int bad_type(const jctx *c, const char *key, const char *want) {
    return fr_error(FR_ERR_CONFIG, "%s: key '%s%s' must be %s", c->label, c->prefix, key, want);
}

static int missing(const jctx *c, const char *key) {
    return fr_error(FR_ERR_CONFIG, "%s: missing key '%s%s'", c->label, c->prefix, key);
}

static int json_to_int(const cJSON *j, long long lo, long long hi, int *out) {
    if (!cJSON_IsNumber(j)) return 0;
    double d = j->valuedouble;
    if (!isfinite(d) || d != floor(d) || d < (double)lo || d > (double)hi) return 0;
    *out = (int)d;
    return 1;
}

enum { OPT = 0, REQ = 1 };

/* Integer >= 0. absent → def_absent (or error if required); null → def_null (or error). */
static int get_count(const jctx *c, const char *key, int *out, int req, int def_absent,
                     int def_null) {
    const cJSON *j = jget(c, key);
    *out = def_absent;
    if (!j) {
        if (req) return missing(c, key);
        *out = def_absent;
        return FR_OK;
    }
    if (cJSON_IsNull(j)) {
        if (req) return fr_error(FR_ERR_CONFIG, "%s: key '%s%s' is null", c->label, c->prefix, key);
        *out = def_null;
        return FR_OK;
    }
    if (!json_to_int(j, 0, INT_MAX, out)) return bad_type(c, key, "a non-negative integer");
    return FR_OK;
}

/* Token id: non-negative integer; absent/null → -1; a list takes its first element. */
static int get_token_id(const jctx *c, const char *key, int *out) {
    const cJSON *j = jget(c, key);
    *out = -1;
    if (!j || cJSON_IsNull(j)) return FR_OK;
    if (cJSON_IsArray(j)) {
        j = cJSON_GetArrayItem(j, 0);
        if (!j) return FR_OK;
    }
    if (!json_to_int(j, 0, INT_MAX, out)) return bad_type(c, key, "a non-negative integer or null");
    return FR_OK;
}

static int get_real(const jctx *c, const char *key, double *out, double def) {
    const cJSON *j = jget(c, key);
    *out = def;
    if (!j || cJSON_IsNull(j)) {
        *out = def;
        return FR_OK;
    }
    if (!cJSON_IsNumber(j) || !isfinite(j->valuedouble)) return bad_type(c, key, "a number");
    *out = j->valuedouble;
    return FR_OK;
}

static int get_realf(const jctx *c, const char *key, float *out, double def) {
    double d = def;
    FR_CHECK(get_real(c, key, &d, def));
    *out = (float)d;
    return FR_OK;
}

static int get_bool(const jctx *c, const char *key, int *out, int def) {
    const cJSON *j = jget(c, key);
    *out = def;
    if (!j || cJSON_IsNull(j)) {
        *out = def;
        return FR_OK;
    }
    if (cJSON_IsBool(j)) {
        *out = cJSON_IsTrue(j) ? 1 : 0;
        return FR_OK;
    }
    int v;
    if (json_to_int(j, 0, 1, &v)) {
        *out = v;
        return FR_OK;
    }
    return bad_type(c, key, "true or false");
}

/* String; absent/null → def. */
static int get_str(const jctx *c, const char *key, const char **out, const char *def) {
    const cJSON *j = jget(c, key);
    *out = def;
    if (!j || cJSON_IsNull(j)) {
        *out = def;
        return FR_OK;
    }
    if (!cJSON_IsString(j)) return bad_type(c, key, "a string");
    *out = j->valuestring;
    return FR_OK;
}

static int check_duplicates(const jctx *c) {
    for (const cJSON *a = c->obj->child; a; a = a->next)
        for (const cJSON *b = a->next; b; b = b->next)
            if (a->string && b->string && strcmp(a->string, b->string) == 0)
                return fr_error(FR_ERR_CONFIG, "%s: key '%s%s' appears more than once", c->label,
                                c->prefix, a->string);
    return FR_OK;
}

static int parse_rope_scaling(fr_config *cfg, const jctx *top) {
    const cJSON *rs = jget(top, "rope_scaling");
    cfg->rope_type = FR_ROPE_DEFAULT;
    cfg->rope_factor = 1.0;
    cfg->rope_original_max_position_embeddings = cfg->max_position_embeddings;
    cfg->rope_beta_fast = 32.0;
    cfg->rope_beta_slow = 1.0;
    cfg->rope_mscale = 0.0;
    cfg->rope_mscale_all_dim = 0.0;
    if (!rs || cJSON_IsNull(rs)) return FR_OK;
    if (!cJSON_IsObject(rs)) return bad_type(top, "rope_scaling", "an object or null");
    jctx c = {rs, top->label, "rope_scaling."};
    FR_CHECK(check_duplicates(&c));
    const char *type = NULL;
    /* transformers copies "type" over "rope_type" when both are present */
    FR_CHECK(get_str(&c, "type", &type, NULL));
    if (!type) FR_CHECK(get_str(&c, "rope_type", &type, NULL));
    if (!type) return missing(&c, "type");
    if (strcmp(type, "default") == 0) return FR_OK;
    if (strcmp(type, "yarn") != 0)
        return fr_error(FR_ERR_UNSUPPORTED,
                        "%s: rope_scaling type '%s' is not supported (only yarn or default)",
                        top->label, type);
    cfg->rope_type = FR_ROPE_YARN;
    const cJSON *jf = jget(&c, "factor");
    if (!jf || cJSON_IsNull(jf)) return missing(&c, "factor");
    FR_CHECK(get_real(&c, "factor", &cfg->rope_factor, 1.0));
    int omax = 0;
    FR_CHECK(get_count(&c, "original_max_position_embeddings", &omax, OPT, 0, 0));
    cfg->rope_original_max_position_embeddings = omax ? omax : cfg->max_position_embeddings;
    FR_CHECK(get_real(&c, "beta_fast", &cfg->rope_beta_fast, 0.0));
    if (cfg->rope_beta_fast == 0.0) cfg->rope_beta_fast = 32.0;
    FR_CHECK(get_real(&c, "beta_slow", &cfg->rope_beta_slow, 0.0));
    if (cfg->rope_beta_slow == 0.0) cfg->rope_beta_slow = 1.0;
    FR_CHECK(get_real(&c, "mscale", &cfg->rope_mscale, 0.0));
    FR_CHECK(get_real(&c, "mscale_all_dim", &cfg->rope_mscale_all_dim, 0.0));
    if (cfg->rope_mscale == 0.0) cfg->rope_mscale = 0.0; /* -0.0 is "absent" too */
    if (cfg->rope_mscale_all_dim == 0.0) cfg->rope_mscale_all_dim = 0.0;
    const cJSON *af = jget(&c, "attention_factor");
    if (af && !cJSON_IsNull(af))
        return fr_error(FR_ERR_UNSUPPORTED, "%s: key 'rope_scaling.attention_factor' is not supported",
                        top->label);
    const cJSON *tr = jget(&c, "truncate");
    if (tr && cJSON_IsFalse(tr))
        return fr_error(FR_ERR_UNSUPPORTED, "%s: 'rope_scaling.truncate' = false is not supported",
                        top->label);
    return FR_OK;
}

static int parse_root(fr_config *cfg, const cJSON *root, const char *label) {
    memset(cfg, 0, sizeof *cfg);
    if (!cJSON_IsObject(root))
        return fr_error(FR_ERR_CONFIG, "%s: top level is not a JSON object", label);
    jctx c = {root, label, ""};
    FR_CHECK(check_duplicates(&c));

    /* architecture */
    const char *mt = NULL;
    FR_CHECK(get_str(&c, "model_type", &mt, NULL));
    if (!mt) {
        const cJSON *arch = jget(&c, "architectures");
        const cJSON *a0 = cJSON_IsArray(arch) ? cJSON_GetArrayItem(arch, 0) : NULL;
        if (cJSON_IsString(a0) && strcmp(a0->valuestring, "DeepseekV3ForCausalLM") == 0)
            mt = "deepseek_v3";
        else if (cJSON_IsString(a0) && strcmp(a0->valuestring, "DeepseekV2ForCausalLM") == 0)
            mt = "deepseek_v2";
        else
            return fr_error(FR_ERR_CONFIG,
                            "%s: missing key 'model_type' (and 'architectures' names no "
                            "DeepseekV3ForCausalLM / DeepseekV2ForCausalLM)",
                            label);
    }
    int v3;
    if (strcmp(mt, "deepseek_v3") == 0) v3 = 1;
    else if (strcmp(mt, "deepseek_v2") == 0) v3 = 0;
    else
        return fr_error(FR_ERR_CONFIG,
                        "%s: unsupported model_type '%s' (expected deepseek_v3 or deepseek_v2)",
                        label, mt);
    snprintf(cfg->model_type, sizeof cfg->model_type, "%s", mt);

    /* features this implementation does not have */
    int flag = 0;
    FR_CHECK(get_bool(&c, "attention_bias", &flag, 0));
    if (flag)
        return fr_error(FR_ERR_UNSUPPORTED, "%s: 'attention_bias' = true is not supported", label);
    FR_CHECK(get_bool(&c, "mlp_bias", &flag, 0));
    if (flag) return fr_error(FR_ERR_UNSUPPORTED, "%s: 'mlp_bias' = true is not supported", label);
    const char *act = "silu";
    FR_CHECK(get_str(&c, "hidden_act", &act, "silu"));
    if (strcmp(act, "silu") != 0)
        return fr_error(FR_ERR_UNSUPPORTED, "%s: 'hidden_act' = '%s' is not supported (only silu)",
                        label, act);

    /* required sizes */
    FR_CHECK(get_count(&c, "vocab_size", &cfg->vocab_size, REQ, 0, 0));
    FR_CHECK(get_count(&c, "hidden_size", &cfg->hidden_size, REQ, 0, 0));
    FR_CHECK(get_count(&c, "num_hidden_layers", &cfg->num_hidden_layers, REQ, 0, 0));
    FR_CHECK(get_count(&c, "num_attention_heads", &cfg->num_attention_heads, REQ, 0, 0));
    FR_CHECK(get_count(&c, "kv_lora_rank", &cfg->kv_lora_rank, REQ, 0, 0));
    FR_CHECK(get_count(&c, "qk_nope_head_dim", &cfg->qk_nope_head_dim, REQ, 0, 0));
    FR_CHECK(get_count(&c, "qk_rope_head_dim", &cfg->qk_rope_head_dim, REQ, 0, 0));
    FR_CHECK(get_count(&c, "v_head_dim", &cfg->v_head_dim, REQ, 0, 0));
    FR_CHECK(get_count(&c, "intermediate_size", &cfg->intermediate_size, REQ, 0, 0));
    FR_CHECK(get_count(&c, "q_lora_rank", &cfg->q_lora_rank, OPT, 1536, 0));

    /* MoE */
    FR_CHECK(get_count(&c, "n_routed_experts", &cfg->n_routed_experts, OPT, v3 ? 256 : 64, 0));
    int moe_req = cfg->n_routed_experts > 0 ? REQ : OPT;
    FR_CHECK(get_count(&c, "moe_intermediate_size", &cfg->moe_intermediate_size, moe_req, 0, 0));
    FR_CHECK(get_count(&c, "num_experts_per_tok", &cfg->num_experts_per_tok, moe_req, 0, 0));
    FR_CHECK(get_count(&c, "n_shared_experts", &cfg->n_shared_experts, OPT, v3 ? 1 : 2, 0));
    FR_CHECK(get_count(&c, "n_group", &cfg->n_group, OPT, v3 ? 8 : 1, 1));
    FR_CHECK(get_count(&c, "topk_group", &cfg->topk_group, OPT, v3 ? 4 : 1, 1));
    const char *s = NULL;
    FR_CHECK(get_str(&c, "topk_method", &s, v3 ? "noaux_tc" : "greedy"));
    if (strcmp(s, "noaux_tc") == 0) cfg->topk_method = FR_TOPK_NOAUX_TC;
    else if (strcmp(s, "group_limited_greedy") == 0) cfg->topk_method = FR_TOPK_GROUP_LIMITED_GREEDY;
    else if (strcmp(s, "greedy") == 0) cfg->topk_method = FR_TOPK_GREEDY;
    else
        return fr_error(FR_ERR_CONFIG,
                        "%s: key 'topk_method' = '%s' is unknown (expected noaux_tc, "
                        "group_limited_greedy or greedy)",
                        label, s);
    cfg->has_correction_bias = cfg->topk_method == FR_TOPK_NOAUX_TC;
    FR_CHECK(get_str(&c, "scoring_func", &s, v3 ? "sigmoid" : "softmax"));
    if (strcmp(s, "sigmoid") == 0) cfg->scoring_func = FR_SCORING_SIGMOID;
    else if (strcmp(s, "softmax") == 0) cfg->scoring_func = FR_SCORING_SOFTMAX;
    else
        return fr_error(FR_ERR_CONFIG,
                        "%s: key 'scoring_func' = '%s' is unknown (expected sigmoid or softmax)",
                        label, s);
    FR_CHECK(get_bool(&c, "norm_topk_prob", &cfg->norm_topk_prob, v3 ? 1 : 0));
    FR_CHECK(get_realf(&c, "routed_scaling_factor", &cfg->routed_scaling_factor, v3 ? 2.5 : 1.0));
    FR_CHECK(get_count(&c, "first_k_dense_replace", &cfg->first_k_dense_replace, OPT, v3 ? 3 : 0, 0));
    FR_CHECK(get_count(&c, "moe_layer_freq", &cfg->moe_layer_freq, OPT, 1, 1));
    FR_CHECK(get_count(&c, "num_nextn_predict_layers", &cfg->num_nextn_predict_layers, OPT, 0, 0));

    /* positions, norms, init */
    FR_CHECK(get_count(&c, "max_position_embeddings", &cfg->max_position_embeddings, OPT,
                       v3 ? 4096 : 2048, v3 ? 4096 : 2048));
    FR_CHECK(get_real(&c, "rope_theta", &cfg->rope_theta, 10000.0));
    if (v3) FR_CHECK(get_bool(&c, "rope_interleave", &cfg->rope_interleave, 1));
    else cfg->rope_interleave = 1;
    FR_CHECK(parse_rope_scaling(cfg, &c));
    FR_CHECK(get_realf(&c, "rms_norm_eps", &cfg->rms_norm_eps, 1e-6));
    FR_CHECK(get_bool(&c, "tie_word_embeddings", &cfg->tie_word_embeddings, 0));
    FR_CHECK(get_realf(&c, "initializer_range", &cfg->initializer_range, 0.02));
    FR_CHECK(get_token_id(&c, "bos_token_id", &cfg->bos_token_id));
    FR_CHECK(get_token_id(&c, "eos_token_id", &cfg->eos_token_id));
    FR_CHECK(get_token_id(&c, "pad_token_id", &cfg->pad_token_id));
    return FR_OK;
}

static int parse_text(fr_config *cfg, const char *json_text, size_t len, const char *label) {
    if (!cfg || (!json_text && len)) return fr_error(FR_ERR_ARG, "fr_config_parse: NULL argument");
    char *text = malloc(len + 1);
    if (!text) return fr_error(FR_ERR_NOMEM, "out of memory parsing %s", label);
    if (len) memcpy(text, json_text, len);
    text[len] = 0;
    const char *end = NULL;
    cJSON *root = len ? cJSON_ParseWithLengthOpts(text, len, &end, 0) : NULL;
    int rc = FR_OK;
    if (root) { /* only whitespace may follow */
        for (const char *p = end; p && p < text + len; p++) {
            if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
                cJSON_Delete(root);
                root = NULL;
                end = p;
                break;
            }
        }
    }
    if (!root) {
        size_t pos = end && end >= text ? (size_t)(end - text) : 0;
        if (pos > len) pos = len;
        int line = 1, col = 1;
        for (size_t i = 0; i < pos; i++) {
            if (text[i] == '\n') line++, col = 1;
            else col++;
        }
        rc = fr_error(FR_ERR_FORMAT, "%s: malformed JSON near byte %zu (line %d, column %d)", label,
                      pos, line, col);
    } else {
        rc = parse_root(cfg, root, label);
        if (rc == FR_OK) rc = fr_config_validate(cfg);
    }
    cJSON_Delete(root);
    free(text);
    return rc;
}

int fr_config_parse(fr_config *cfg, const char *json_text, size_t len) {
    fr_clear_error();
    return parse_text(cfg, json_text, len, "config.json");
}

int fr_config_load(fr_config *cfg, const char *path) {
    fr_clear_error();
    if (!cfg || !path) return fr_error(FR_ERR_ARG, "fr_config_load: NULL argument");
    char *text = NULL;
    size_t len = 0;
    FR_CHECK(fr_read_file(path, &text, &len));
    int rc = parse_text(cfg, text, len, path);
    free(text);
    return rc;
}

/* ------------------------------------------------------------------ validate */

#define NEED(cond, ...) do { if (!(cond)) return fr_error(FR_ERR_CONFIG, "config: " __VA_ARGS__); } while (0)
#define NEED_POS(field) NEED(cfg->field > 0, #field " must be > 0 (got %d)", cfg->field)

int fr_config_validate(const fr_config *cfg) {
    if (!cfg) return fr_error(FR_ERR_ARG, "fr_config_validate: NULL config");
    NEED(strcmp(cfg->model_type, "deepseek_v3") == 0 || strcmp(cfg->model_type, "deepseek_v2") == 0,
         "model_type must be deepseek_v3 or deepseek_v2");
    NEED_POS(vocab_size);
    NEED_POS(hidden_size);
    NEED_POS(intermediate_size);
    NEED_POS(num_hidden_layers);
    NEED_POS(num_attention_heads);
    NEED(cfg->q_lora_rank >= 0, "q_lora_rank must be >= 0 (got %d)", cfg->q_lora_rank);
    NEED_POS(kv_lora_rank);
    NEED_POS(qk_nope_head_dim);
    NEED_POS(qk_rope_head_dim);
    NEED(cfg->qk_rope_head_dim % 2 == 0, "qk_rope_head_dim must be even (got %d)",
         cfg->qk_rope_head_dim);
    NEED_POS(v_head_dim);
    NEED_POS(max_position_embeddings);
    NEED(cfg->n_routed_experts >= 0, "n_routed_experts must be >= 0 (got %d)", cfg->n_routed_experts);
    NEED(cfg->n_shared_experts >= 0, "n_shared_experts must be >= 0 (got %d)", cfg->n_shared_experts);
    NEED(cfg->first_k_dense_replace >= 0 && cfg->first_k_dense_replace <= cfg->num_hidden_layers,
         "first_k_dense_replace (%d) must be between 0 and num_hidden_layers (%d)",
         cfg->first_k_dense_replace, cfg->num_hidden_layers);
    NEED_POS(moe_layer_freq);
    NEED(cfg->num_nextn_predict_layers >= 0 && cfg->num_nextn_predict_layers <= 8,
         "num_nextn_predict_layers must be between 0 and 8 (got %d)", cfg->num_nextn_predict_layers);
    NEED(cfg->topk_method >= FR_TOPK_NOAUX_TC && cfg->topk_method <= FR_TOPK_GREEDY,
         "topk_method is invalid (%d)", (int)cfg->topk_method);
    NEED(cfg->scoring_func == FR_SCORING_SIGMOID || cfg->scoring_func == FR_SCORING_SOFTMAX,
         "scoring_func is invalid (%d)", (int)cfg->scoring_func);
    NEED(cfg->has_correction_bias == (cfg->topk_method == FR_TOPK_NOAUX_TC),
         "has_correction_bias (%d) must be 1 exactly when topk_method is noaux_tc",
         cfg->has_correction_bias);
    NEED(cfg->rope_interleave == 0 || cfg->rope_interleave == 1,
         "rope_interleave must be 0 or 1 (got %d)", cfg->rope_interleave);
    NEED(cfg->rope_interleave == 1 || strcmp(cfg->model_type, "deepseek_v2") != 0,
         "rope_interleave must be 1 for deepseek_v2 (V2 always rotates adjacent pairs)");
    NEED(cfg->norm_topk_prob == 0 || cfg->norm_topk_prob == 1, "norm_topk_prob must be 0 or 1");
    NEED(cfg->tie_word_embeddings == 0 || cfg->tie_word_embeddings == 1,
         "tie_word_embeddings must be 0 or 1");
    int E = cfg->n_routed_experts;
    if (E > 0) {
        int k = cfg->num_experts_per_tok;
        NEED_POS(moe_intermediate_size);
        NEED_POS(num_experts_per_tok);
        NEED(k <= E, "num_experts_per_tok (%d) > n_routed_experts (%d)", k, E);
        NEED_POS(n_group);
        NEED(E % cfg->n_group == 0, "n_routed_experts (%d) is not divisible by n_group (%d)", E,
             cfg->n_group);
        NEED_POS(topk_group);
        NEED(cfg->topk_group <= cfg->n_group, "topk_group (%d) > n_group (%d)", cfg->topk_group,
             cfg->n_group);
        int per_group = E / cfg->n_group;
        if (cfg->topk_method == FR_TOPK_NOAUX_TC)
            NEED(per_group >= 2,
                 "topk_method noaux_tc needs >= 2 experts per group (n_routed_experts %d / n_group %d)",
                 E, cfg->n_group);
        if (cfg->topk_method != FR_TOPK_GREEDY)
            NEED((long)cfg->topk_group * per_group >= k,
                 "topk_group (%d) groups of %d experts cannot hold num_experts_per_tok (%d)",
                 cfg->topk_group, per_group, k);
    }
    NEED(isfinite(cfg->routed_scaling_factor) && cfg->routed_scaling_factor > 0,
         "routed_scaling_factor must be > 0 (got %g)", (double)cfg->routed_scaling_factor);
    NEED(isfinite(cfg->rms_norm_eps) && cfg->rms_norm_eps > 0, "rms_norm_eps must be > 0 (got %g)",
         (double)cfg->rms_norm_eps);
    NEED(isfinite(cfg->rope_theta) && cfg->rope_theta > 0, "rope_theta must be > 0 (got %g)",
         cfg->rope_theta);
    NEED(isfinite(cfg->initializer_range) && cfg->initializer_range >= 0,
         "initializer_range must be >= 0 (got %g)", (double)cfg->initializer_range);
    NEED(cfg->rope_type == FR_ROPE_DEFAULT || cfg->rope_type == FR_ROPE_YARN,
         "rope_scaling type is invalid (%d)", (int)cfg->rope_type);
    if (cfg->rope_type == FR_ROPE_YARN) {
        NEED(isfinite(cfg->rope_factor) && cfg->rope_factor >= 1.0,
             "rope_scaling.factor must be >= 1 (got %g)", cfg->rope_factor);
        NEED(cfg->rope_original_max_position_embeddings > 0,
             "rope_scaling.original_max_position_embeddings must be > 0 (got %d)",
             cfg->rope_original_max_position_embeddings);
        NEED(isfinite(cfg->rope_beta_fast) && cfg->rope_beta_fast > 0,
             "rope_scaling.beta_fast must be > 0 (got %g)", cfg->rope_beta_fast);
        NEED(isfinite(cfg->rope_beta_slow) && cfg->rope_beta_slow > 0,
             "rope_scaling.beta_slow must be > 0 (got %g)", cfg->rope_beta_slow);
        NEED(isfinite(cfg->rope_mscale) && cfg->rope_mscale >= 0,
             "rope_scaling.mscale must be >= 0 (got %g)", cfg->rope_mscale);
        NEED(isfinite(cfg->rope_mscale_all_dim) && cfg->rope_mscale_all_dim >= 0,
             "rope_scaling.mscale_all_dim must be >= 0 (got %g)", cfg->rope_mscale_all_dim);
    }
    NEED(cfg->bos_token_id >= -1, "bos_token_id must be >= -1 (got %d)", cfg->bos_token_id);
    NEED(cfg->eos_token_id >= -1, "eos_token_id must be >= -1 (got %d)", cfg->eos_token_id);
    NEED(cfg->pad_token_id >= -1, "pad_token_id must be >= -1 (got %d)", cfg->pad_token_id);
    return FR_OK;
}

int fr_config_layer_is_moe(const fr_config *cfg, int layer) {
    if (!cfg || cfg->n_routed_experts <= 0 || layer < 0) return 0;
    if (layer < cfg->first_k_dense_replace) return 0;
    int freq = cfg->moe_layer_freq > 0 ? cfg->moe_layer_freq : 1;
    return layer % freq == 0;
}

/* ------------------------------------------------------------------ save */

/* Shortest decimal that reads back to v (as a float when is_float), always with a '.' or an
 * exponent so Python reads a float, as Python's json.dumps writes them. */
static cJSON *real_item(double v, int is_float) {
    char buf[64];
    if (v == floor(v) && fabs(v) < 1e15) {
        snprintf(buf, sizeof buf, "%.1f", v);
        return cJSON_CreateRaw(buf);
    }
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, sizeof buf, "%.*g", p, v);
        double back = strtod(buf, NULL);
        if (is_float ? (float)back == (float)v : back == v) break;
    }
    if (!strpbrk(buf, ".eEni")) strcat(buf, ".0");
    return cJSON_CreateRaw(buf);
}

static int add(cJSON *obj, const char *key, cJSON *item, int *oom) {
    if (!item || !cJSON_AddItemToObject(obj, key, item)) {
        if (item) cJSON_Delete(item);
        *oom = 1;
        return 0;
    }
    return 1;
}

static cJSON *int_or_null(int v, int null_value) {
    return v == null_value ? cJSON_CreateNull() : cJSON_CreateNumber(v);
}

int fr_config_save(const fr_config *cfg, const char *path) {
    fr_clear_error();
    if (!cfg || !path) return fr_error(FR_ERR_ARG, "fr_config_save: NULL argument");
    FR_CHECK(fr_config_validate(cfg));
    int v3 = strcmp(cfg->model_type, "deepseek_v3") == 0;
    static const char *topk_names[] = {"noaux_tc", "group_limited_greedy", "greedy"};
    int oom = 0;
    cJSON *o = cJSON_CreateObject();
    if (!o) return fr_error(FR_ERR_NOMEM, "out of memory");
    const char *arch = v3 ? "DeepseekV3ForCausalLM" : "DeepseekV2ForCausalLM";
    add(o, "architectures", cJSON_CreateStringArray(&arch, 1), &oom);
    add(o, "model_type", cJSON_CreateString(cfg->model_type), &oom);
    add(o, "attention_bias", cJSON_CreateFalse(), &oom);
    add(o, "attention_dropout", real_item(0.0, 0), &oom);
    add(o, "bos_token_id", int_or_null(cfg->bos_token_id, -1), &oom);
    add(o, "eos_token_id", int_or_null(cfg->eos_token_id, -1), &oom);
    add(o, "pad_token_id", int_or_null(cfg->pad_token_id, -1), &oom);
    add(o, "first_k_dense_replace", cJSON_CreateNumber(cfg->first_k_dense_replace), &oom);
    add(o, "hidden_act", cJSON_CreateString("silu"), &oom);
    add(o, "hidden_size", cJSON_CreateNumber(cfg->hidden_size), &oom);
    add(o, "initializer_range", real_item(cfg->initializer_range, 1), &oom);
    add(o, "intermediate_size", cJSON_CreateNumber(cfg->intermediate_size), &oom);
    add(o, "kv_lora_rank", cJSON_CreateNumber(cfg->kv_lora_rank), &oom);
    add(o, "max_position_embeddings", cJSON_CreateNumber(cfg->max_position_embeddings), &oom);
    add(o, "moe_intermediate_size", cJSON_CreateNumber(cfg->moe_intermediate_size), &oom);
    add(o, "moe_layer_freq", cJSON_CreateNumber(cfg->moe_layer_freq), &oom);
    add(o, "n_group", cJSON_CreateNumber(cfg->n_group), &oom);
    add(o, "n_routed_experts", cJSON_CreateNumber(cfg->n_routed_experts), &oom);
    add(o, "n_shared_experts", cJSON_CreateNumber(cfg->n_shared_experts), &oom);
    add(o, "norm_topk_prob", cJSON_CreateBool(cfg->norm_topk_prob), &oom);
    add(o, "num_attention_heads", cJSON_CreateNumber(cfg->num_attention_heads), &oom);
    add(o, "num_experts_per_tok", cJSON_CreateNumber(cfg->num_experts_per_tok), &oom);
    add(o, "num_hidden_layers", cJSON_CreateNumber(cfg->num_hidden_layers), &oom);
    add(o, "num_key_value_heads", cJSON_CreateNumber(cfg->num_attention_heads), &oom);
    add(o, "num_nextn_predict_layers", cJSON_CreateNumber(cfg->num_nextn_predict_layers), &oom);
    add(o, "q_lora_rank", int_or_null(cfg->q_lora_rank, 0), &oom);
    add(o, "qk_nope_head_dim", cJSON_CreateNumber(cfg->qk_nope_head_dim), &oom);
    add(o, "qk_rope_head_dim", cJSON_CreateNumber(cfg->qk_rope_head_dim), &oom);
    add(o, "rms_norm_eps", real_item(cfg->rms_norm_eps, 1), &oom);
    if (v3) add(o, "rope_interleave", cJSON_CreateBool(cfg->rope_interleave), &oom);
    if (cfg->rope_type == FR_ROPE_YARN) {
        cJSON *rs = cJSON_CreateObject();
        if (add(o, "rope_scaling", rs, &oom)) {
            add(rs, "beta_fast", real_item(cfg->rope_beta_fast, 0), &oom);
            add(rs, "beta_slow", real_item(cfg->rope_beta_slow, 0), &oom);
            add(rs, "factor", real_item(cfg->rope_factor, 0), &oom);
            if (cfg->rope_mscale != 0.0) add(rs, "mscale", real_item(cfg->rope_mscale, 0), &oom);
            if (cfg->rope_mscale_all_dim != 0.0)
                add(rs, "mscale_all_dim", real_item(cfg->rope_mscale_all_dim, 0), &oom);
            add(rs, "original_max_position_embeddings",
                cJSON_CreateNumber(cfg->rope_original_max_position_embeddings), &oom);
            add(rs, "type", cJSON_CreateString("yarn"), &oom);
        }
    } else {
        add(o, "rope_scaling", cJSON_CreateNull(), &oom);
    }
    add(o, "rope_theta", real_item(cfg->rope_theta, 0), &oom);
    add(o, "routed_scaling_factor", real_item(cfg->routed_scaling_factor, 1), &oom);
    add(o, "scoring_func",
        cJSON_CreateString(cfg->scoring_func == FR_SCORING_SIGMOID ? "sigmoid" : "softmax"), &oom);
    add(o, "tie_word_embeddings", cJSON_CreateBool(cfg->tie_word_embeddings), &oom);
    add(o, "topk_group", cJSON_CreateNumber(cfg->topk_group), &oom);
    add(o, "topk_method", cJSON_CreateString(topk_names[cfg->topk_method]), &oom);
    add(o, "torch_dtype", cJSON_CreateString("float32"), &oom);
    add(o, "use_cache", cJSON_CreateTrue(), &oom);
    add(o, "v_head_dim", cJSON_CreateNumber(cfg->v_head_dim), &oom);
    add(o, "vocab_size", cJSON_CreateNumber(cfg->vocab_size), &oom);

    char *text = oom ? NULL : cJSON_Print(o);
    cJSON_Delete(o);
    if (!text) return fr_error(FR_ERR_NOMEM, "out of memory writing %s", path);
    size_t len = strlen(text);
    char *out = malloc(len + 2);
    if (!out) {
        cJSON_free(text);
        return fr_error(FR_ERR_NOMEM, "out of memory writing %s", path);
    }
    memcpy(out, text, len);
    out[len] = '\n';
    cJSON_free(text);
    int rc = fr_write_file_atomic(path, out, len + 1);
    free(out);
    return rc;
}
