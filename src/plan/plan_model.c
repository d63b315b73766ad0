/* plan_model.c — the planner's view of a model: parameter counts and training FLOPs from a
 * config, without instantiating the model (the full DeepSeek-V3 would need 5 TB of FP32
 * parameters and gradients).
 *
 * The counts mirror src/model/model.c tensor for tensor (register_block, model_build) and its
 * FLOP count (fr_model_train_flops) term for term; tests/test_plan.c checks both against a
 * created model on small configs. Notation: H hidden, nh heads, dqk = qk_nope + qk_rope,
 * dv = v_head_dim, qr = q_lora_rank, kvr = kv_lora_rank, I dense width, Im expert width,
 * Is = n_shared x Im, E routed experts, k experts per token, V vocabulary.
 *
 * MLA block parameters: input_layernorm H; q_a_proj qr x H, q_a_layernorm qr, q_b_proj
 * nh dqk x qr (or q_proj nh dqk x H when qr = 0); kv_a_proj_with_mqa (kvr + rope) x H,
 * kv_a_layernorm kvr; kv_b_proj nh (qk_nope + dv) x kvr; o_proj H x nh dv;
 * post_attention_layernorm H. FFN: dense 3 H I; MoE router E x H (+ E correction bias),
 * experts 3 E Im H, shared experts 3 Is H. An MTP module adds enorm H, hnorm H,
 * eh_proj H x 2H, shared_head.norm H; its embedding and head are the main model's. */
#include "plan/plan.h"

#include "core/internal.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The attention branch of one MLA block: parameters, matmul weights per token, saved activations. */
static void mla_counts(const fr_config *c, double *params, double *matmul, double *act) {
    const double H = c->hidden_size, nh = c->num_attention_heads, qr = c->q_lora_rank;
    const double kvr = c->kv_lora_rank, rope = c->qk_rope_head_dim, nope = c->qk_nope_head_dim;
    const double dqk = nope + rope, dv = c->v_head_dim;
    const double q_mm = qr > 0 ? H * qr + qr * nh * dqk : H * nh * dqk;
    *matmul = q_mm + H * (kvr + rope) + kvr * nh * (nope + dv) + nh * dv * H;
    *params = *matmul + 2 * H /* the two block norms */ + (qr > 0 ? qr : 0) + kvr;
    /* Saved for backward, per token (no recomputation; flash attention keeps no score matrix):
     * the block input and its normalized copy, c_Q and its normalized copy, q, [c_KV | k_pe]
     * and the normalized c_KV, k_nope and v of every head, the attention output (o_proj's
     * input), one softmax statistic per head, and the FFN's input and its normalized copy. */
    *act = 2 * H + (qr > 0 ? 2 * qr : 0) + nh * dqk + (kvr + rope) + kvr + nh * (nope + dv) + nh * dv + nh + 2 * H;
}

/* The FFN half of a block. */
static void ffn_counts(const fr_config *c, int is_moe, fr_plan_block *b, double attn_params, double attn_mm,
                       double attn_act) {
    const double H = c->hidden_size;
    memset(b, 0, sizeof *b);
    if (is_moe) {
        const double E = c->n_routed_experts, Im = c->moe_intermediate_size, k = c->num_experts_per_tok;
        const double Is = (double)c->n_shared_experts * Im;
        b->routed_params = 3 * E * Im * H;
        b->params = attn_params + E * H + (c->has_correction_bias ? E : 0) + b->routed_params + 3 * Is * H;
        b->linear_per_token = attn_mm + 3 * H * Im * k + 3 * H * Is;
        b->matmul_per_token = b->linear_per_token + H * E; /* the router runs in FP32: not a block linear */
        /* router logits, and per routed copy its input and the gate / up / SwiGLU outputs; the same for the shared experts */
        b->act_elems_per_token = attn_act + E + k * (H + 3 * Im) + 3 * Is;
    } else {
        const double I = c->intermediate_size;
        b->params = attn_params + 3 * H * I;
        b->linear_per_token = attn_mm + 3 * H * I;
        b->matmul_per_token = b->linear_per_token;
        b->act_elems_per_token = attn_act + 3 * I;
    }
}

static void finish_totals(fr_plan_model *m, double mtp_params, double mtp_routed) {
    const double main_blocks = m->n_dense * m->dense.params + m->n_moe * m->moe.params;
    m->params_main = m->embed_params + main_blocks + m->final_norm_params + m->head_params;
    m->params_total = m->params_main + mtp_params;
    const double routed_main = m->n_moe * m->moe.routed_params;
    m->params_routed = routed_main + mtp_routed;
    m->params_active = m->params_main;
    if (m->routed_experts > 0)
        m->params_active -= routed_main - routed_main / m->routed_experts * m->experts_per_token;
    m->params_active_no_embed = m->params_active - m->embed_params;
}

int fr_plan_model_from_config(fr_plan_model *out, const fr_config *cfg, const char *name) {
    if (!out || !cfg) return fr_error(FR_ERR_ARG, "fr_plan_model_from_config: NULL argument");
    FR_CHECK(fr_config_validate(cfg));
    if (cfg->num_nextn_predict_layers > 1 && cfg->moe_layer_freq > 1)
        return fr_error(FR_ERR_UNSUPPORTED, "the planner counts MTP modules of one kind; moe_layer_freq %d with %d modules",
                        cfg->moe_layer_freq, cfg->num_nextn_predict_layers);
    fr_plan_model *m = out;
    memset(m, 0, sizeof *m);
    snprintf(m->name, sizeof m->name, "%s", name ? name : "config");
    snprintf(m->arch, sizeof m->arch, "%s", cfg->model_type);
    const double H = cfg->hidden_size, V = cfg->vocab_size;
    m->hidden = cfg->hidden_size;
    m->layers = cfg->num_hidden_layers;
    m->vocab = cfg->vocab_size;
    m->heads = cfg->num_attention_heads;
    m->routed_experts = cfg->n_routed_experts;
    m->experts_per_token = cfg->n_routed_experts > 0 ? cfg->num_experts_per_tok : 0;
    m->n_group = cfg->n_routed_experts > 0 ? cfg->n_group : 1;
    m->topk_group = cfg->n_routed_experts > 0 ? cfg->topk_group : 1;
    m->attn_dims = (double)cfg->num_attention_heads * (cfg->qk_nope_head_dim + cfg->qk_rope_head_dim + cfg->v_head_dim);
    for (int l = 0; l < cfg->num_hidden_layers; l++) {
        if (fr_config_layer_is_moe(cfg, l)) m->n_moe++;
        else m->n_dense++;
    }
    double ap, amm, aact;
    mla_counts(cfg, &ap, &amm, &aact);
    ffn_counts(cfg, 0, &m->dense, ap, amm, aact);
    ffn_counts(cfg, cfg->n_routed_experts > 0, &m->moe, ap, amm, aact);
    m->mtp_depth = cfg->num_nextn_predict_layers;
    m->mtp_is_moe = fr_config_layer_is_moe(cfg, cfg->num_hidden_layers);
    m->mtp = m->mtp_is_moe ? m->moe : m->dense;
    m->mtp.params += 2 * H + 2 * H * H + H; /* enorm, hnorm, eh_proj, shared_head.norm */
    m->mtp.matmul_per_token += 2 * H * H;    /* eh_proj: [emb ; h] (2H) -> H */
    m->mtp.linear_per_token += 2 * H * H;
    m->mtp.act_elems_per_token += 4 * H;     /* both normalized halves and their inputs */
    m->embed_params = V * H;
    m->head_params = cfg->tie_word_embeddings ? 0 : V * H;
    m->final_norm_params = H;
    finish_totals(m, m->mtp_depth * m->mtp.params, m->mtp_depth * m->mtp.routed_params);
    return FR_OK;
}

/* ------------------------------------------------------------------ Llama-style dense configs */

static int llama_int(const cJSON *root, const char *name, const char *key, int def, int *out) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!j || cJSON_IsNull(j)) {
        if (def < 0) return fr_error(FR_ERR_CONFIG, "%s: missing key '%s'", name, key);
        *out = def;
        return FR_OK;
    }
    if (!cJSON_IsNumber(j) || j->valuedouble != floor(j->valuedouble) || j->valuedouble < 1 || j->valuedouble > 1e9)
        return fr_error(FR_ERR_CONFIG, "%s: key '%s' must be a positive integer", name, key);
    *out = (int)j->valuedouble;
    return FR_OK;
}

/* A Llama-style decoder (grouped-query attention, SwiGLU MLP, no biases): per layer
 * q_proj nh hd x H, k_proj and v_proj nkv hd x H, o_proj H x nh hd, gate/up/down 3 H I, two norms. */
static int llama_model(fr_plan_model *m, const cJSON *root, const char *name) {
    int H = 0, I = 0, L = 0, nh = 0, nkv = 0, hd = 0, V = 0;
    FR_CHECK(llama_int(root, name, "hidden_size", -1, &H));
    FR_CHECK(llama_int(root, name, "intermediate_size", -1, &I));
    FR_CHECK(llama_int(root, name, "num_hidden_layers", -1, &L));
    FR_CHECK(llama_int(root, name, "num_attention_heads", -1, &nh));
    FR_CHECK(llama_int(root, name, "num_key_value_heads", nh, &nkv));
    FR_CHECK(llama_int(root, name, "head_dim", H / nh > 0 ? H / nh : 1, &hd));
    FR_CHECK(llama_int(root, name, "vocab_size", -1, &V));
    if (nh % nkv != 0)
        return fr_error(FR_ERR_CONFIG, "%s: num_attention_heads (%d) is not a multiple of num_key_value_heads (%d)", name,
                        nh, nkv);
    const cJSON *tie = cJSON_GetObjectItemCaseSensitive(root, "tie_word_embeddings");
    if (tie && !cJSON_IsBool(tie) && !cJSON_IsNull(tie))
        return fr_error(FR_ERR_CONFIG, "%s: key 'tie_word_embeddings' must be true or false", name);
    memset(m, 0, sizeof *m);
    snprintf(m->name, sizeof m->name, "%s", name);
    snprintf(m->arch, sizeof m->arch, "llama");
    m->hidden = H;
    m->layers = L;
    m->vocab = V;
    m->heads = nh;
    m->n_dense = L;
    m->n_group = m->topk_group = 1;
    m->attn_dims = (double)nh * (hd + hd);
    const double dH = H, attn_mm = dH * nh * hd + 2 * dH * nkv * hd + (double)nh * hd * dH;
    fr_plan_block *b = &m->dense;
    b->linear_per_token = attn_mm + 3 * dH * I;
    b->matmul_per_token = b->linear_per_token;
    b->params = b->matmul_per_token + 2 * dH;
    /* block input and normalized copy, q, k, v, attention output, softmax statistic per head,
     * FFN input and normalized copy, gate, up, SwiGLU output */
    b->act_elems_per_token = 2 * dH + (double)nh * hd + 2.0 * nkv * hd + (double)nh * hd + nh + 2 * dH + 3.0 * I;
    m->moe = m->dense;
    m->embed_params = (double)V * H;
    m->head_params = cJSON_IsTrue(tie) ? 0 : (double)V * H;
    m->final_norm_params = H;
    finish_totals(m, 0, 0);
    return FR_OK;
}

int fr_plan_model_parse(fr_plan_model *out, const char *json_text, size_t len, const char *name) {
    if (!out || !json_text) return fr_error(FR_ERR_ARG, "fr_plan_model_parse: NULL argument");
    const char *label = name ? name : "config";
    cJSON *root = cJSON_ParseWithLength(json_text, len);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return fr_error(FR_ERR_FORMAT, "%s: not a JSON object", label);
    }
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    int rc;
    if (cJSON_IsString(mt) && strcmp(mt->valuestring, "llama") == 0) {
        rc = llama_model(out, root, label);
        cJSON_Delete(root);
        return rc;
    }
    cJSON_Delete(root);
    fr_config cfg;
    rc = fr_config_parse(&cfg, json_text, len);
    if (rc != FR_OK) return fr_error_context(rc, "%s", label);
    return fr_plan_model_from_config(out, &cfg, label);
}

int fr_plan_model_load(fr_plan_model *out, const char *path) {
    if (!out || !path) return fr_error(FR_ERR_ARG, "fr_plan_model_load: NULL argument");
    char *text = NULL;
    size_t len = 0;
    FR_CHECK(fr_read_file(path, &text, &len));
    int rc = fr_plan_model_parse(out, text, len, path);
    free(text);
    return rc;
}

/* ------------------------------------------------------------------ presets */

/* deepseek-ai/DeepSeek-V3 config.json (the keys the model reads), as configs/deepseek-v3-671b.json. */
static const char PRESET_DSV3[] =
    "{\"model_type\":\"deepseek_v3\",\"vocab_size\":129280,\"hidden_size\":7168,\"intermediate_size\":18432,"
    "\"moe_intermediate_size\":2048,\"num_hidden_layers\":61,\"num_attention_heads\":128,\"q_lora_rank\":1536,"
    "\"kv_lora_rank\":512,\"qk_nope_head_dim\":128,\"qk_rope_head_dim\":64,\"v_head_dim\":128,"
    "\"n_routed_experts\":256,\"n_shared_experts\":1,\"num_experts_per_tok\":8,\"n_group\":8,\"topk_group\":4,"
    "\"topk_method\":\"noaux_tc\",\"scoring_func\":\"sigmoid\",\"norm_topk_prob\":true,\"routed_scaling_factor\":2.5,"
    "\"first_k_dense_replace\":3,\"moe_layer_freq\":1,\"num_nextn_predict_layers\":1,"
    "\"max_position_embeddings\":163840,\"rope_theta\":10000,\"rope_scaling\":{\"type\":\"yarn\",\"factor\":40,"
    "\"original_max_position_embeddings\":4096,\"beta_fast\":32,\"beta_slow\":1,\"mscale\":1.0,"
    "\"mscale_all_dim\":1.0},\"rms_norm_eps\":1e-06,\"tie_word_embeddings\":false,\"bos_token_id\":0,"
    "\"eos_token_id\":1}";

/* meta-llama/Llama-3.1-405B config.json (the keys the planner reads), as configs/llama-3.1-405b.json. */
static const char PRESET_LLAMA405[] =
    "{\"model_type\":\"llama\",\"vocab_size\":128256,\"hidden_size\":16384,\"intermediate_size\":53248,"
    "\"num_hidden_layers\":126,\"num_attention_heads\":128,\"num_key_value_heads\":8,\"head_dim\":128,"
    "\"tie_word_embeddings\":false}";

static const struct {
    const char *name, *json;
} PRESETS[] = {{"deepseek-v3-671b", PRESET_DSV3}, {"llama-3.1-405b", PRESET_LLAMA405}};

const char *fr_plan_preset_names(void) { return "deepseek-v3-671b, llama-3.1-405b"; }

int fr_plan_model_preset(fr_plan_model *out, const char *name) {
    if (!out || !name) return fr_error(FR_ERR_ARG, "fr_plan_model_preset: NULL argument");
    for (size_t i = 0; i < sizeof PRESETS / sizeof PRESETS[0]; i++)
        if (strcmp(PRESETS[i].name, name) == 0) return fr_plan_model_parse(out, PRESETS[i].json, strlen(PRESETS[i].json), name);
    return fr_error(FR_ERR_ARG, "no built-in model '%s' (built in: %s)", name, fr_plan_preset_names());
}

/* ------------------------------------------------------------------ FLOPs */

/* Forward FLOPs of causal attention over one sequence of n tokens: each query attends to
 * itself and every earlier key, n (n + 1) / 2 pairs; each pair costs a dot product over
 * qk_nope + qk_rope and a weighted sum over v_head_dim in every head, 2 FLOPs per
 * multiply-add: 2 x pairs x nh x (dqk + dv). */
static double attention_fwd(const fr_plan_model *m, double n) { return 2.0 * (n * (n + 1) / 2.0) * m->attn_dims; }

/* Training FLOPs of one sequence of T tokens, = fr_model_train_flops(model, 1, T):
 *   forward = sum over main layers (2 T matmul_per_token(layer) + attention(T))
 *           + 2 T H V                                         (output head)
 *           + sum_{k=1..D, k<T} [2 (T-k) (matmul_per_token(MTP) + H V) + attention(T-k)]
 *   training = 3 x forward (the backward computes the input and weight gradients, 2x).
 * matmul_per_token counts each weight a token multiplies once: MLA projections
 * (q_a, q_b, kv_a, kv_b, o), the dense MLP or the router + k routed + the shared experts,
 * and eh_proj for MTP. For DeepSeek-V3 at T = 4096 the attention term is
 * 3 x 61 x (T+1) x 128 x (192 + 128) ~ 30.7 GFLOPs per token beside 6 x 37.6B. */
static double flops_seq_parts(const fr_plan_model *m, int T, double *linear, double *attention) {
    const double dT = T, H = m->hidden, V = m->vocab;
    double fwd = 0, lin = 0, att = 0;
    fwd += 2 * dT * (m->n_dense * m->dense.matmul_per_token + m->n_moe * m->moe.matmul_per_token);
    lin += 2 * dT * (m->n_dense * m->dense.linear_per_token + m->n_moe * m->moe.linear_per_token);
    att += (double)m->layers * attention_fwd(m, dT);
    fwd += 2 * dT * H * V;
    for (int k = 1; k <= m->mtp_depth && k < T; k++) {
        const double nk = dT - k;
        fwd += 2 * nk * (m->mtp.matmul_per_token + H * V);
        lin += 2 * nk * m->mtp.linear_per_token;
        att += attention_fwd(m, nk);
    }
    fwd += att;
    if (linear) *linear = 3 * lin;
    if (attention) *attention = 3 * att;
    return 3 * fwd;
}

double fr_plan_train_flops_seq(const fr_plan_model *m, int seq_len, double *linear) {
    if (!m || seq_len < 1) return 0;
    return flops_seq_parts(m, seq_len, linear, NULL);
}

double fr_plan_attention_flops_seq(const fr_plan_model *m, int seq_len) {
    double att = 0;
    if (m && seq_len >= 1) flops_seq_parts(m, seq_len, NULL, &att);
    return att;
}
