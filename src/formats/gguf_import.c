/* gguf_import.c — llama.cpp `deepseek2` GGUF -> frugal model and tokenizer: the inverse of
 * gguf_export.c (docs/interop.md, "GGUF import").
 *
 *   - the fr_config is rebuilt from the deepseek2.* metadata (every key the exporter writes
 *     is required; a missing one is named in the error);
 *   - attn_k_b [heads][kv_lora][nope] and attn_v_b [heads][v_dim][kv_lora] are merged back
 *     into kv_b_proj [heads * (nope + v_dim), kv_lora] (a file with the older single
 *     attn_kv_b tensor is read as is);
 *   - stacked experts ffn_*_exps {in, out, E} become E matrices [out, in];
 *   - RoPE: a GGUF always rotates adjacent pairs (the exporter permuted the RoPE rows of a
 *     rope_interleave = false checkpoint into pair order, and the file keeps no trace of the
 *     original order), so the imported model has rope_interleave = 1 and takes the rows as
 *     they are: the same function as the source checkpoint, with the RoPE rows in pair order;
 *   - output.weight byte-identical to token_embd.weight means tied embeddings;
 *   - MTP layers are not in a GGUF: num_nextn_predict_layers is 0.
 * Everything is dequantized to FP32 (F32, F16, BF16, Q8_0, Q4_0).
 */
#define _GNU_SOURCE
#include "formats/gguf.h"
#include "core/internal.h"
#include "text/tokenizer_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *path;
    fr_gguf g;
    unsigned char *used; /* per GGUF tensor */
    float *buf;          /* scratch: the largest tensor */
    size_t buf_n;
} importer;

/* ------------------------------------------------------------------ metadata */

static const fr_gguf_kv *need_kv(const importer *im, const char *key, int *rc) {
    const fr_gguf_kv *kv = fr_gguf_find_kv(&im->g, key);
    if (!kv) *rc = fr_error(FR_ERR_FORMAT, "%s: missing metadata key '%s'", im->path, key);
    return kv;
}

static int get_int(const importer *im, const char *key, int64_t lo, int64_t hi, int *out) {
    int rc = FR_OK;
    const fr_gguf_kv *kv = need_kv(im, key, &rc);
    if (!kv) return rc;
    int64_t v;
    if (fr_gguf_kv_int(kv, &v) != FR_OK) return fr_error(FR_ERR_FORMAT, "%s: metadata key '%s' is not an integer", im->path, key);
    if (v < lo || v > hi)
        return fr_error(FR_ERR_FORMAT, "%s: metadata key '%s' = %lld is out of range [%lld, %lld]", im->path, key,
                        (long long)v, (long long)lo, (long long)hi);
    *out = (int)v;
    return FR_OK;
}

static int get_float(const importer *im, const char *key, double *out) {
    int rc = FR_OK;
    const fr_gguf_kv *kv = need_kv(im, key, &rc);
    if (!kv) return rc;
    if (fr_gguf_kv_float(kv, out) != FR_OK || !isfinite(*out))
        return fr_error(FR_ERR_FORMAT, "%s: metadata key '%s' is not a finite number", im->path, key);
    return FR_OK;
}

/* String value as a NUL-terminated copy (no embedded NUL). */
static int get_str(const importer *im, const char *key, char **out) {
    *out = NULL;
    int rc = FR_OK;
    const fr_gguf_kv *kv = need_kv(im, key, &rc);
    if (!kv) return rc;
    const char *s;
    size_t n;
    if (fr_gguf_kv_str(kv, &s, &n) != FR_OK || memchr(s, 0, n))
        return fr_error(FR_ERR_FORMAT, "%s: metadata key '%s' is not a string", im->path, key);
    if (!(*out = strndup(s, n))) return fr_error(FR_ERR_NOMEM, "out of memory");
    return FR_OK;
}

#define BIG 0x40000000LL
#define DS(key) "deepseek2." key

static int read_config(importer *im, fr_config *c) {
    memset(c, 0, sizeof *c);
    char *arch = NULL;
    FR_CHECK(get_str(im, "general.architecture", &arch));
    int is_ds2 = strcmp(arch, "deepseek2") == 0;
    if (!is_ds2) {
        int rc = fr_error(FR_ERR_UNSUPPORTED, "%s: general.architecture is '%s'; only deepseek2 files can be imported",
                          im->path, arch);
        free(arch);
        return rc;
    }
    free(arch);
    int heads_kv, key_len, val_len, key_mla, val_mla, leading, gating, wnorm;
    double d;
    FR_CHECK(get_int(im, DS("vocab_size"), 1, BIG, &c->vocab_size));
    FR_CHECK(get_int(im, DS("context_length"), 1, BIG, &c->max_position_embeddings));
    FR_CHECK(get_int(im, DS("embedding_length"), 1, BIG, &c->hidden_size));
    FR_CHECK(get_int(im, DS("block_count"), 1, 100000, &c->num_hidden_layers));
    FR_CHECK(get_int(im, DS("feed_forward_length"), 0, BIG, &c->intermediate_size));
    FR_CHECK(get_int(im, DS("attention.head_count"), 1, 100000, &c->num_attention_heads));
    FR_CHECK(get_int(im, DS("attention.head_count_kv"), 0, 100000, &heads_kv));
    FR_CHECK(get_float(im, DS("attention.layer_norm_rms_epsilon"), &d));
    c->rms_norm_eps = (float)d;
    FR_CHECK(get_int(im, DS("attention.q_lora_rank"), 0, BIG, &c->q_lora_rank));
    FR_CHECK(get_int(im, DS("attention.kv_lora_rank"), 1, BIG, &c->kv_lora_rank));
    FR_CHECK(get_int(im, DS("attention.key_length"), 1, BIG, &key_len));
    FR_CHECK(get_int(im, DS("attention.value_length"), 1, BIG, &val_len));
    FR_CHECK(get_int(im, DS("attention.key_length_mla"), 1, BIG, &key_mla));
    FR_CHECK(get_int(im, DS("attention.value_length_mla"), 1, BIG, &val_mla));
    FR_CHECK(get_int(im, DS("rope.dimension_count"), 0, BIG, &c->qk_rope_head_dim));
    FR_CHECK(get_float(im, DS("rope.freq_base"), &c->rope_theta));
    c->qk_nope_head_dim = key_mla - c->qk_rope_head_dim;
    c->v_head_dim = val_mla;
    if (heads_kv != 1 || key_len != c->kv_lora_rank + c->qk_rope_head_dim || val_len != c->kv_lora_rank ||
        c->qk_nope_head_dim <= 0)
        return fr_error(FR_ERR_UNSUPPORTED,
                        "%s: the attention is not MLA in llama.cpp's MQA form (head_count_kv %d, key_length %d, "
                        "value_length %d, key_length_mla %d, kv_lora_rank %d, rope dims %d)",
                        im->path, heads_kv, key_len, val_len, key_mla, c->kv_lora_rank, c->qk_rope_head_dim);

    c->rope_type = FR_ROPE_DEFAULT;
    c->rope_factor = 1.0;
    c->rope_original_max_position_embeddings = c->max_position_embeddings;
    c->rope_beta_fast = 32.0;
    c->rope_beta_slow = 1.0;
    double log_mul;
    FR_CHECK(get_float(im, DS("rope.scaling.yarn_log_multiplier"), &log_mul));
    const fr_gguf_kv *st = fr_gguf_find_kv(&im->g, DS("rope.scaling.type"));
    if (st) {
        char *type = NULL;
        FR_CHECK(get_str(im, DS("rope.scaling.type"), &type));
        int yarn = strcmp(type, "yarn") == 0, none = strcmp(type, "none") == 0;
        if (!yarn && !none) {
            int rc = fr_error(FR_ERR_UNSUPPORTED, "%s: rope.scaling.type '%s' is not supported (yarn or none)", im->path, type);
            free(type);
            return rc;
        }
        free(type);
        if (yarn) {
            c->rope_type = FR_ROPE_YARN;
            FR_CHECK(get_float(im, DS("rope.scaling.factor"), &c->rope_factor));
            FR_CHECK(get_int(im, DS("rope.scaling.original_context_length"), 1, BIG, &c->rope_original_max_position_embeddings));
            /* the exporter writes 0.1 * mscale_all_dim as an F32: undo, to 6 decimals */
            c->rope_mscale_all_dim = round(log_mul * 10.0 * 1e6) / 1e6;
            /* DeepSeek's checkpoints have mscale == mscale_all_dim; the file keeps only one */
            c->rope_mscale = c->rope_mscale_all_dim;
        }
    }

    FR_CHECK(get_int(im, DS("leading_dense_block_count"), 0, c->num_hidden_layers, &leading));
    FR_CHECK(get_int(im, DS("expert_count"), 0, 1 << 20, &c->n_routed_experts));
    FR_CHECK(get_int(im, DS("expert_used_count"), 0, 1 << 20, &c->num_experts_per_tok));
    FR_CHECK(get_int(im, DS("expert_shared_count"), 0, 1 << 20, &c->n_shared_experts));
    FR_CHECK(get_int(im, DS("expert_feed_forward_length"), 0, BIG, &c->moe_intermediate_size));
    FR_CHECK(get_float(im, DS("expert_weights_scale"), &d));
    c->routed_scaling_factor = (float)d;
    FR_CHECK(get_int(im, DS("expert_weights_norm"), 0, 1, &wnorm));
    c->norm_topk_prob = wnorm;
    FR_CHECK(get_int(im, DS("expert_gating_func"), 1, 2, &gating));
    c->scoring_func = gating == 2 ? FR_SCORING_SIGMOID : FR_SCORING_SOFTMAX;
    c->first_k_dense_replace = c->n_routed_experts > 0 ? leading : 0;
    c->moe_layer_freq = 1;
    c->n_group = c->topk_group = 1;
    if (fr_gguf_find_kv(&im->g, DS("expert_group_count"))) {
        FR_CHECK(get_int(im, DS("expert_group_count"), 1, 1 << 20, &c->n_group));
        FR_CHECK(get_int(im, DS("expert_group_used_count"), 1, 1 << 20, &c->topk_group));
    }
    /* the routing bias (exp_probs_b) exists exactly for DeepSeek-V3's noaux_tc routing */
    c->has_correction_bias = c->n_routed_experts > 0 && fr_gguf_find_tensor(&im->g, "blk.0.exp_probs_b.bias") != NULL;
    if (!c->has_correction_bias && c->n_routed_experts > 0) {
        for (int l = leading; l < c->num_hidden_layers && !c->has_correction_bias; l++) {
            char nm[64];
            snprintf(nm, sizeof nm, "blk.%d.exp_probs_b.bias", l);
            c->has_correction_bias = fr_gguf_find_tensor(&im->g, nm) != NULL;
        }
    }
    if (c->has_correction_bias) c->topk_method = FR_TOPK_NOAUX_TC;
    else c->topk_method = c->n_group > 1 ? FR_TOPK_GROUP_LIMITED_GREEDY : FR_TOPK_GREEDY;
    snprintf(c->model_type, sizeof c->model_type, "%s",
             c->has_correction_bias || c->scoring_func == FR_SCORING_SIGMOID ? "deepseek_v3" : "deepseek_v2");
    c->num_nextn_predict_layers = 0;
    c->rope_interleave = 1;
    c->initializer_range = 0.02f;
    c->bos_token_id = c->eos_token_id = c->pad_token_id = -1;
    static const char *const sp[3] = {"tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                                      "tokenizer.ggml.padding_token_id"};
    int *dst[3] = {&c->bos_token_id, &c->eos_token_id, &c->pad_token_id};
    for (int k = 0; k < 3; k++)
        if (fr_gguf_find_kv(&im->g, sp[k])) FR_CHECK(get_int(im, sp[k], 0, c->vocab_size - 1, dst[k]));
    /* tied embeddings: output.weight is a byte copy of token_embd.weight */
    const fr_gguf_tensor *te = fr_gguf_find_tensor(&im->g, "token_embd.weight");
    const fr_gguf_tensor *to = fr_gguf_find_tensor(&im->g, "output.weight");
    c->tie_word_embeddings = te && to && te->type == to->type && te->nbytes == to->nbytes &&
                             te->n_dims == to->n_dims && te->ne[0] == to->ne[0] && te->ne[1] == to->ne[1] &&
                             memcmp(te->data, to->data, te->nbytes) == 0;
    int rc = fr_config_validate(c);
    if (rc != FR_OK) {
        return fr_error_context(rc, "%s: the deepseek2 metadata gives an invalid configuration", im->path);
    }
    return FR_OK;
}

/* ------------------------------------------------------------------ tensors */

/* Find GGUF tensor `name` with dims ne[0..nd) (fastest first), decode it into im->buf. */
static int load_tensor(importer *im, const char *name, int nd, const int64_t *ne, const float **data) {
    const fr_gguf_tensor *t = fr_gguf_find_tensor(&im->g, name);
    if (!t) return fr_error(FR_ERR_FORMAT, "%s: missing tensor %s", im->path, name);
    int ok = t->n_dims == nd;
    for (int d = 0; ok && d < nd; d++) ok = t->ne[d] == ne[d];
    if (!ok) {
        char got[96] = "", want[96] = "";
        for (int d = 0; d < t->n_dims; d++)
            snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", d ? ", " : "", (long long)t->ne[d]);
        for (int d = 0; d < nd; d++)
            snprintf(want + strlen(want), sizeof want - strlen(want), "%s%lld", d ? ", " : "", (long long)ne[d]);
        return fr_error(FR_ERR_FORMAT, "%s: tensor %s has ne {%s}, expected {%s}", im->path, name, got, want);
    }
    if (t->numel > im->buf_n) {
        float *b = realloc(im->buf, t->numel * sizeof *b);
        if (!b) return fr_error(FR_ERR_NOMEM, "out of memory (%zu floats for %s)", t->numel, name);
        im->buf = b;
        im->buf_n = t->numel;
    }
    int rc = fr_gguf_tensor_to_f32(t, im->buf, t->numel);
    if (rc != FR_OK) {
        return fr_error_context(rc, "%s: tensor %s", im->path, name);
    }
    im->used[t - im->g.tensors] = 1;
    *data = im->buf;
    return FR_OK;
}

static float *param(fr_model *m, const char *name, size_t want) {
    size_t n = 0;
    float *p = fr_model_param(m, name, &n);
    return p && n == want ? p : NULL;
}

/* GGUF tensor {cols, rows} (or {rows} when cols == 0) -> HF parameter [rows, cols]. */
static int copy_tensor(importer *im, fr_model *m, const char *gg, const char *hf, int64_t rows, int64_t cols) {
    int64_t ne[2] = {cols ? cols : rows, rows};
    size_t n = (size_t)rows * (size_t)(cols ? cols : 1);
    float *p = param(m, hf, n);
    if (!p) return fr_error(FR_ERR_STATE, "model parameter %s missing or of the wrong size", hf);
    const float *src;
    FR_CHECK(load_tensor(im, gg, cols ? 2 : 1, ne, &src));
    memcpy(p, src, n * sizeof *p);
    return FR_OK;
}

static int load_kv_b(importer *im, fr_model *m, const fr_config *c, int l) {
    const int64_t nh = c->num_attention_heads, nope = c->qk_nope_head_dim, vd = c->v_head_dim, kvr = c->kv_lora_rank;
    char g[64], h[128];
    snprintf(h, sizeof h, "model.layers.%d.self_attn.kv_b_proj.weight", l);
    snprintf(g, sizeof g, "blk.%d.attn_kv_b.weight", l);
    char gk[64];
    snprintf(gk, sizeof gk, "blk.%d.attn_k_b.weight", l);
    if (!fr_gguf_find_tensor(&im->g, gk) && fr_gguf_find_tensor(&im->g, g)) /* older files: kv_b_proj unsplit */
        return copy_tensor(im, m, g, h, nh * (nope + vd), kvr);
    float *p = param(m, h, (size_t)(nh * (nope + vd) * kvr));
    if (!p) return fr_error(FR_ERR_STATE, "model parameter %s missing or of the wrong size", h);
    const float *src;
    int64_t nek[3] = {nope, kvr, nh}, nev[3] = {kvr, vd, nh};
    FR_CHECK(load_tensor(im, gk, 3, nek, &src)); /* [h][r][j] = K part row j, column r */
    for (int64_t hd = 0; hd < nh; hd++) {
        float *hb = p + (size_t)(hd * (nope + vd) * kvr);
        const float *s = src + (size_t)(hd * kvr * nope);
        for (int64_t r = 0; r < kvr; r++)
            for (int64_t j = 0; j < nope; j++) hb[j * kvr + r] = s[r * nope + j];
    }
    snprintf(g, sizeof g, "blk.%d.attn_v_b.weight", l);
    FR_CHECK(load_tensor(im, g, 3, nev, &src)); /* [h][i][r] = V part row i */
    for (int64_t hd = 0; hd < nh; hd++)
        memcpy(p + (size_t)((hd * (nope + vd) + nope) * kvr), src + (size_t)(hd * vd * kvr), (size_t)(vd * kvr) * sizeof *p);
    return FR_OK;
}

static int load_experts(importer *im, fr_model *m, const char *gg, int l, const char *proj, int64_t rows, int64_t cols,
                        int64_t E) {
    int64_t ne[3] = {cols, rows, E};
    const float *src;
    FR_CHECK(load_tensor(im, gg, 3, ne, &src));
    size_t per = (size_t)(rows * cols);
    for (int64_t k = 0; k < E; k++) {
        char h[128];
        snprintf(h, sizeof h, "model.layers.%d.mlp.experts.%d.%s.weight", l, (int)k, proj);
        float *p = param(m, h, per);
        if (!p) return fr_error(FR_ERR_STATE, "model parameter %s missing or of the wrong size", h);
        memcpy(p, src + (size_t)k * per, per * sizeof *p);
    }
    return FR_OK;
}

static int load_weights(importer *im, fr_model *m, const fr_config *c) {
    const int64_t H = c->hidden_size, V = c->vocab_size, nh = c->num_attention_heads;
    const int64_t dqk = c->qk_nope_head_dim + c->qk_rope_head_dim, kvr = c->kv_lora_rank, rope = c->qk_rope_head_dim;
    char g[64], h[128];
    FR_CHECK(copy_tensor(im, m, "token_embd.weight", "model.embed_tokens.weight", V, H));
    for (int l = 0; l < c->num_hidden_layers; l++) {
#define HF(fmt) (snprintf(h, sizeof h, "model.layers.%d." fmt, l), h)
#define GG(fmt) (snprintf(g, sizeof g, "blk.%d." fmt, l), g)
        FR_CHECK(copy_tensor(im, m, GG("attn_norm.weight"), HF("input_layernorm.weight"), H, 0));
        if (c->q_lora_rank > 0) {
            const int64_t qr = c->q_lora_rank;
            FR_CHECK(copy_tensor(im, m, GG("attn_q_a.weight"), HF("self_attn.q_a_proj.weight"), qr, H));
            FR_CHECK(copy_tensor(im, m, GG("attn_q_a_norm.weight"), HF("self_attn.q_a_layernorm.weight"), qr, 0));
            FR_CHECK(copy_tensor(im, m, GG("attn_q_b.weight"), HF("self_attn.q_b_proj.weight"), nh * dqk, qr));
        } else {
            FR_CHECK(copy_tensor(im, m, GG("attn_q.weight"), HF("self_attn.q_proj.weight"), nh * dqk, H));
        }
        FR_CHECK(copy_tensor(im, m, GG("attn_kv_a_mqa.weight"), HF("self_attn.kv_a_proj_with_mqa.weight"), kvr + rope, H));
        FR_CHECK(copy_tensor(im, m, GG("attn_kv_a_norm.weight"), HF("self_attn.kv_a_layernorm.weight"), kvr, 0));
        FR_CHECK(load_kv_b(im, m, c, l));
        FR_CHECK(copy_tensor(im, m, GG("attn_output.weight"), HF("self_attn.o_proj.weight"), H, nh * c->v_head_dim));
        FR_CHECK(copy_tensor(im, m, GG("ffn_norm.weight"), HF("post_attention_layernorm.weight"), H, 0));
        if (fr_config_layer_is_moe(c, l)) {
            const int64_t E = c->n_routed_experts, Im = c->moe_intermediate_size;
            const int64_t Is = (int64_t)c->n_shared_experts * Im;
            FR_CHECK(copy_tensor(im, m, GG("ffn_gate_inp.weight"), HF("mlp.gate.weight"), E, H));
            if (c->has_correction_bias)
                FR_CHECK(copy_tensor(im, m, GG("exp_probs_b.bias"), HF("mlp.gate.e_score_correction_bias"), E, 0));
            FR_CHECK(load_experts(im, m, GG("ffn_gate_exps.weight"), l, "gate_proj", Im, H, E));
            FR_CHECK(load_experts(im, m, GG("ffn_up_exps.weight"), l, "up_proj", Im, H, E));
            FR_CHECK(load_experts(im, m, GG("ffn_down_exps.weight"), l, "down_proj", H, Im, E));
            if (Is > 0) {
                FR_CHECK(copy_tensor(im, m, GG("ffn_gate_shexp.weight"), HF("mlp.shared_experts.gate_proj.weight"), Is, H));
                FR_CHECK(copy_tensor(im, m, GG("ffn_up_shexp.weight"), HF("mlp.shared_experts.up_proj.weight"), Is, H));
                FR_CHECK(copy_tensor(im, m, GG("ffn_down_shexp.weight"), HF("mlp.shared_experts.down_proj.weight"), H, Is));
            }
        } else {
            const int64_t I = c->intermediate_size;
            FR_CHECK(copy_tensor(im, m, GG("ffn_gate.weight"), HF("mlp.gate_proj.weight"), I, H));
            FR_CHECK(copy_tensor(im, m, GG("ffn_up.weight"), HF("mlp.up_proj.weight"), I, H));
            FR_CHECK(copy_tensor(im, m, GG("ffn_down.weight"), HF("mlp.down_proj.weight"), H, I));
        }
#undef HF
#undef GG
    }
    FR_CHECK(copy_tensor(im, m, "output_norm.weight", "model.norm.weight", H, 0));
    if (c->tie_word_embeddings) {
        const fr_gguf_tensor *t = fr_gguf_find_tensor(&im->g, "output.weight");
        if (t) im->used[t - im->g.tensors] = 1; /* the byte copy of token_embd.weight */
    } else {
        FR_CHECK(copy_tensor(im, m, "output.weight", "lm_head.weight", V, H));
    }
    /* every tensor of the file must have found its place */
    for (int i = 0; i < im->g.n_tensors; i++)
        if (!im->used[i])
            return fr_error(FR_ERR_FORMAT, "%s: tensor %s is not part of the deepseek2 layout for this configuration",
                            im->path, im->g.tensors[i].name);
    return FR_OK;
}

int fr_model_load_gguf(fr_model **out, const char *path) {
    fr_clear_error();
    if (!out || !path) return fr_error(FR_ERR_ARG, "fr_model_load_gguf: NULL argument");
    *out = NULL;
    importer im = {.path = path};
    int rc = fr_gguf_open(&im.g, path);
    if (rc != FR_OK) return rc;
    fr_config cfg;
    fr_model *m = NULL;
    im.used = calloc((size_t)im.g.n_tensors + 1, 1);
    if (!im.used) { rc = fr_error(FR_ERR_NOMEM, "out of memory"); goto done; }
    if ((rc = read_config(&im, &cfg)) != FR_OK) goto done;
    if ((rc = fr_model_create(&m, &cfg, 0)) != FR_OK) goto done;
    if ((rc = load_weights(&im, m, &cfg)) != FR_OK) goto done;
    *out = m;
    m = NULL;
done:
    fr_model_free(m);
    free(im.used);
    free(im.buf);
    fr_gguf_close(&im.g);
    return rc;
}

/* ------------------------------------------------------------------ in place */

int fr_gguf_deepseek2_config(const fr_gguf *g, const char *path, fr_config *out) {
    importer im = {.path = path, .g = *g};
    return read_config(&im, out);
}

/* Per-layer names: Hugging Face suffix -> GGUF suffix (the table load_weights follows) */
static const struct { const char *hf, *gg; } LAYER_NAMES[] = {
    {"input_layernorm.weight", "attn_norm.weight"},
    {"self_attn.q_a_proj.weight", "attn_q_a.weight"},
    {"self_attn.q_a_layernorm.weight", "attn_q_a_norm.weight"},
    {"self_attn.q_b_proj.weight", "attn_q_b.weight"},
    {"self_attn.q_proj.weight", "attn_q.weight"},
    {"self_attn.kv_a_proj_with_mqa.weight", "attn_kv_a_mqa.weight"},
    {"self_attn.kv_a_layernorm.weight", "attn_kv_a_norm.weight"},
    {"self_attn.kv_b_proj.weight", "attn_kv_b.weight"},
    {"self_attn.o_proj.weight", "attn_output.weight"},
    {"post_attention_layernorm.weight", "ffn_norm.weight"},
    {"mlp.gate.weight", "ffn_gate_inp.weight"},
    {"mlp.gate.e_score_correction_bias", "exp_probs_b.bias"},
    {"mlp.shared_experts.gate_proj.weight", "ffn_gate_shexp.weight"},
    {"mlp.shared_experts.up_proj.weight", "ffn_up_shexp.weight"},
    {"mlp.shared_experts.down_proj.weight", "ffn_down_shexp.weight"},
    {"mlp.gate_proj.weight", "ffn_gate.weight"},
    {"mlp.up_proj.weight", "ffn_up.weight"},
    {"mlp.down_proj.weight", "ffn_down.weight"},
};

static size_t ggml_row_bytes(int type, int64_t cols) {
    const int be = fr_ggml_block_elems(type);
    return be > 0 ? (size_t)(cols / be) * fr_ggml_block_bytes(type) : 0;
}

static int view_whole(const fr_gguf *g, const char *name, fr_gguf_view *out) {
    const fr_gguf_tensor *t = fr_gguf_find_tensor(g, name);
    if (!t) return fr_error(FR_ERR_FORMAT, "missing tensor %s", name);
    *out = (fr_gguf_view){t, t->type, t->data, t->n_dims >= 2 ? t->ne[1] : 1, t->ne[0]};
    for (int d = 2; d < t->n_dims; d++) out->rows *= t->ne[d];
    return FR_OK;
}

int fr_gguf_view_slice(const fr_gguf *g, const char *name, int64_t k, fr_gguf_view *out) {
    const fr_gguf_tensor *t = fr_gguf_find_tensor(g, name);
    if (!t) return fr_error(FR_ERR_FORMAT, "missing tensor %s", name);
    if (t->n_dims != 3 || k < 0 || k >= t->ne[2])
        return fr_error(FR_ERR_FORMAT, "tensor %s has no matrix %lld (%d dimensions)", name, (long long)k, t->n_dims);
    const size_t per = ggml_row_bytes(t->type, t->ne[0]) * (size_t)t->ne[1];
    if (!per) return fr_error(FR_ERR_UNSUPPORTED, "tensor %s: ggml type %d", name, t->type);
    *out = (fr_gguf_view){t, t->type, (const unsigned char *)t->data + per * (size_t)k, t->ne[1], t->ne[0]};
    return FR_OK;
}

int fr_gguf_view_hf(const fr_gguf *g, const char *hf, fr_gguf_view *out) {
    char name[160];
    if (!strcmp(hf, "model.embed_tokens.weight")) return view_whole(g, "token_embd.weight", out);
    if (!strcmp(hf, "model.norm.weight")) return view_whole(g, "output_norm.weight", out);
    if (!strcmp(hf, "lm_head.weight")) return view_whole(g, "output.weight", out);
    int layer, expert, n = 0;
    char proj[16];
    if (sscanf(hf, "model.layers.%d.mlp.experts.%d.%15[a-z]_proj.weight%n", &layer, &expert, proj, &n) == 3 &&
        hf[n] == 0) {
        snprintf(name, sizeof name, "blk.%d.ffn_%s_exps.weight", layer, proj);
        return fr_gguf_view_slice(g, name, expert, out);
    }
    n = 0;
    if (sscanf(hf, "model.layers.%d.%n", &layer, &n) == 1 && n > 0)
        for (size_t i = 0; i < sizeof LAYER_NAMES / sizeof LAYER_NAMES[0]; i++)
            if (!strcmp(hf + n, LAYER_NAMES[i].hf)) {
                snprintf(name, sizeof name, "blk.%d.%s", layer, LAYER_NAMES[i].gg);
                return view_whole(g, name, out);
            }
    return fr_error(FR_ERR_FORMAT, "no GGUF tensor holds %s", hf);
}

/* Whether `name` is a tensor of the deepseek2 layout of configuration c (load_weights' list) */
static int expected_name(const fr_config *c, const char *name) {
    if (!strcmp(name, "token_embd.weight") || !strcmp(name, "output_norm.weight") || !strcmp(name, "output.weight"))
        return 1;
    int l, n = 0;
    if (sscanf(name, "blk.%d.%n", &l, &n) != 1 || n == 0 || l < 0 || l >= c->num_hidden_layers) return 0;
    const char *suf = name + n;
    const int moe = fr_config_layer_is_moe(c, l);
    static const char *const common[] = {"attn_norm.weight", "attn_kv_a_mqa.weight", "attn_kv_a_norm.weight",
                                         "attn_kv_b.weight", "attn_k_b.weight", "attn_v_b.weight",
                                         "attn_output.weight", "ffn_norm.weight"};
    for (size_t i = 0; i < sizeof common / sizeof common[0]; i++)
        if (!strcmp(suf, common[i])) return 1;
    if (c->q_lora_rank > 0 ? (!strcmp(suf, "attn_q_a.weight") || !strcmp(suf, "attn_q_a_norm.weight") ||
                              !strcmp(suf, "attn_q_b.weight"))
                           : !strcmp(suf, "attn_q.weight"))
        return 1;
    if (!moe) return !strcmp(suf, "ffn_gate.weight") || !strcmp(suf, "ffn_up.weight") || !strcmp(suf, "ffn_down.weight");
    if (!strcmp(suf, "ffn_gate_inp.weight") || !strcmp(suf, "ffn_gate_exps.weight") || !strcmp(suf, "ffn_up_exps.weight") ||
        !strcmp(suf, "ffn_down_exps.weight"))
        return 1;
    if (c->has_correction_bias && !strcmp(suf, "exp_probs_b.bias")) return 1;
    return c->n_shared_experts > 0 && (!strcmp(suf, "ffn_gate_shexp.weight") || !strcmp(suf, "ffn_up_shexp.weight") ||
                                       !strcmp(suf, "ffn_down_shexp.weight"));
}

int fr_gguf_deepseek2_check_names(const fr_gguf *g, const fr_config *c, const char *path) {
    for (int i = 0; i < g->n_tensors; i++)
        if (!expected_name(c, g->tensors[i].name))
            return fr_error(FR_ERR_FORMAT, "%s: tensor %s is not part of the deepseek2 layout for this configuration", path,
                            g->tensors[i].name);
    return FR_OK;
}

/* The first k < n whose field of `width` bytes (2 or 4, little-endian) at p + k * stride + off
 * has every bit of `exp_mask` set (a NaN or Inf: an all-ones exponent), or SIZE_MAX */
static size_t first_all_ones(const unsigned char *p, size_t n, size_t stride, size_t off, int width, uint32_t exp_mask) {
    for (size_t k = 0; k < n; k++) {
        uint32_t v = 0;
        memcpy(&v, p + k * stride + off, (size_t)width);
        if ((v & exp_mask) == exp_mask) return k;
    }
    return SIZE_MAX;
}

size_t fr_gguf_view_first_nonfinite(const fr_gguf_view *v) {
    const size_t n = (size_t)(v->rows * v->cols);
    const unsigned char *p = v->data;
    switch (v->type) {
    case FR_GGML_F32: return first_all_ones(p, n, 4, 0, 4, 0x7f800000u);
    case FR_GGML_F16: return first_all_ones(p, n, 2, 0, 2, 0x7c00u);
    case FR_GGML_BF16: return first_all_ones(p, n, 2, 0, 2, 0x7f80u);
    default: break;
    }
    /* block formats: a non-finite value needs a non-finite fp16 scale or minimum */
    const int be = fr_ggml_block_elems(v->type);
    const size_t bb = fr_ggml_block_bytes(v->type), nb = be > 0 ? n / (size_t)be : 0;
    size_t offs[2] = {0, SIZE_MAX};
    switch (v->type) {
    case FR_GGML_Q4_1: case FR_GGML_Q5_1: case FR_GGML_Q4_K: case FR_GGML_Q5_K: offs[1] = 2; break;
    case FR_GGML_Q6_K: case FR_GGML_Q3_K: offs[0] = bb - 2; break; /* d ends the block */
    case FR_GGML_Q2_K: offs[0] = bb - 4, offs[1] = bb - 2; break;    /* d, dmin end it */
    default: break;
    }
    size_t first = SIZE_MAX;
    for (int f = 0; f < 2; f++) {
        if (offs[f] == SIZE_MAX) continue;
        const size_t k = first_all_ones(p, nb, bb, offs[f], 2, 0x7c00u);
        if (k != SIZE_MAX && k * (size_t)be < first) first = k * (size_t)be;
    }
    return first;
}

/* ------------------------------------------------------------------ tokenizer */

/* Element i of a string array as a NUL-terminated copy. */
static int arr_str_dup(const importer *im, const fr_gguf_kv *kv, uint64_t i, char **out) {
    const char *s;
    size_t n;
    if (fr_gguf_arr_str(kv, i, &s, &n) != FR_OK || memchr(s, 0, n))
        return fr_error(FR_ERR_FORMAT, "%s: %s[%llu] is not a string without NUL bytes", im->path, kv->key,
                        (unsigned long long)i);
    if (!(*out = strndup(s, n))) return fr_error(FR_ERR_NOMEM, "out of memory");
    return FR_OK;
}

static cJSON *split_step(const char *regex) {
    cJSON *o = cJSON_CreateObject();
    cJSON *p = cJSON_AddObjectToObject(o, "pattern");
    cJSON_AddStringToObject(p, "Regex", regex);
    cJSON_AddStringToObject(o, "type", "Split");
    cJSON_AddStringToObject(o, "behavior", "Isolated");
    cJSON_AddBoolToObject(o, "invert", 0);
    return o;
}

static cJSON *bytelevel(int use_regex) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "type", "ByteLevel");
    cJSON_AddBoolToObject(o, "add_prefix_space", 0);
    cJSON_AddBoolToObject(o, "trim_offsets", 1);
    cJSON_AddBoolToObject(o, "use_regex", use_regex);
    return o;
}

/* tokenizer.ggml.pre -> the tokenizers pre_tokenizer frugal writes for it */
static int pre_tokenizer(const importer *im, const char *pre, cJSON **out) {
    *out = NULL;
    const char *pats[3];
    int n = 0;
    if (strcmp(pre, "deepseek-v3") == 0) {
        pats[0] = FR_PAT_DSV3_DIGITS;
        pats[1] = FR_PAT_DSV3_CJK;
        pats[2] = FR_PAT_DSV3_MAIN;
        n = 3;
    } else if (strcmp(pre, "llama-bpe") == 0) {
        pats[0] = FR_PAT_CL100K;
        n = 1;
    } else if (strcmp(pre, "gpt-2") != 0) {
        return fr_error(FR_ERR_UNSUPPORTED, "%s: tokenizer.ggml.pre '%s' is not supported (deepseek-v3, llama-bpe, gpt-2)",
                        im->path, pre);
    }
    cJSON *seq = cJSON_CreateObject();
    cJSON_AddStringToObject(seq, "type", "Sequence");
    cJSON *arr = cJSON_AddArrayToObject(seq, "pretokenizers");
    for (int i = 0; i < n; i++) cJSON_AddItemToArray(arr, split_step(pats[i]));
    cJSON_AddItemToArray(arr, bytelevel(n == 0));
    *out = seq;
    return FR_OK;
}

/* Build tokenizer.json / tokenizer_config.json documents from the tokenizer.ggml.* keys. */
static int build_tokenizer_json(importer *im, cJSON **root_out, cJSON **cfg_out) {
    *root_out = *cfg_out = NULL;
    int rc = FR_OK;
    char *model = NULL, *pre = NULL, *tmpl = NULL, *s = NULL;
    cJSON *root = NULL, *cfg = NULL;
    if (!fr_gguf_find_kv(&im->g, "tokenizer.ggml.model"))
        return fr_error(FR_ERR_FORMAT, "%s: the file holds no tokenizer (missing metadata key 'tokenizer.ggml.model')", im->path);
    FR_CHECK(get_str(im, "tokenizer.ggml.model", &model));
    if (strcmp(model, "gpt2") != 0) {
        rc = fr_error(FR_ERR_UNSUPPORTED, "%s: tokenizer.ggml.model '%s' is not supported (only gpt2 byte-level BPE)", im->path, model);
        goto done;
    }
    if ((rc = get_str(im, "tokenizer.ggml.pre", &pre)) != FR_OK) goto done;
    const fr_gguf_kv *toks = need_kv(im, "tokenizer.ggml.tokens", &rc);
    const fr_gguf_kv *types = toks ? need_kv(im, "tokenizer.ggml.token_type", &rc) : NULL;
    const fr_gguf_kv *merges = types ? need_kv(im, "tokenizer.ggml.merges", &rc) : NULL;
    if (!merges) goto done;
    if (toks->type != FR_GGUF_ARRAY || toks->arr_type != FR_GGUF_STRING || merges->type != FR_GGUF_ARRAY ||
        merges->arr_type != FR_GGUF_STRING || types->type != FR_GGUF_ARRAY || types->arr_n != toks->arr_n) {
        rc = fr_error(FR_ERR_FORMAT, "%s: tokenizer.ggml.tokens / token_type / merges are not arrays of matching length", im->path);
        goto done;
    }
    if (toks->arr_n > (1u << 26)) { rc = fr_error(FR_ERR_FORMAT, "%s: %llu tokens is implausible", im->path, (unsigned long long)toks->arr_n); goto done; }
    root = cJSON_CreateObject();
    cfg = cJSON_CreateObject();
    if (!root || !cfg) { rc = fr_error(FR_ERR_NOMEM, "out of memory"); goto done; }
    cJSON_AddStringToObject(root, "version", "1.0");
    cJSON_AddNullToObject(root, "truncation");
    cJSON_AddNullToObject(root, "padding");
    cJSON *added = cJSON_AddArrayToObject(root, "added_tokens");
    cJSON_AddNullToObject(root, "normalizer");
    cJSON *pt = NULL;
    if ((rc = pre_tokenizer(im, pre, &pt)) != FR_OK) goto done;
    cJSON_AddItemToObject(root, "pre_tokenizer", pt);
    cJSON_AddNullToObject(root, "post_processor");
    cJSON *dec = bytelevel(1);
    cJSON_ReplaceItemInObjectCaseSensitive(dec, "add_prefix_space", cJSON_CreateTrue());
    cJSON_AddItemToObject(root, "decoder", dec);
    cJSON *mo = cJSON_AddObjectToObject(root, "model");
    cJSON_AddStringToObject(mo, "type", "BPE");
    cJSON_AddNullToObject(mo, "dropout");
    cJSON_AddNullToObject(mo, "unk_token");
    cJSON_AddNullToObject(mo, "continuing_subword_prefix");
    cJSON_AddNullToObject(mo, "end_of_word_suffix");
    cJSON_AddBoolToObject(mo, "fuse_unk", 0);
    cJSON_AddBoolToObject(mo, "byte_fallback", 0);
    cJSON_AddBoolToObject(mo, "ignore_merges", 0);
    cJSON *vocab = cJSON_AddObjectToObject(mo, "vocab");
    cJSON *mg = cJSON_AddArrayToObject(mo, "merges");
    if (!added || !mo || !vocab || !mg) { rc = fr_error(FR_ERR_NOMEM, "out of memory"); goto done; }
    for (uint64_t i = 0; i < toks->arr_n; i++) {
        int64_t ty;
        if (fr_gguf_arr_int(types, i, &ty) != FR_OK) { rc = fr_error(FR_ERR_FORMAT, "%s: tokenizer.ggml.token_type[%llu] is not an integer", im->path, (unsigned long long)i); goto done; }
        if (ty == 5) continue; /* UNUSED: an id without a token */
        if ((rc = arr_str_dup(im, toks, i, &s)) != FR_OK) goto done;
        if (ty == 1 || ty == 6) { /* NORMAL, BYTE */
            cJSON_AddNumberToObject(vocab, s, (double)i);
        } else if (ty == 3 || ty == 4) { /* CONTROL (special), USER_DEFINED (added) */
            cJSON *o = cJSON_CreateObject();
            cJSON_AddNumberToObject(o, "id", (double)i);
            cJSON_AddStringToObject(o, "content", s);
            cJSON_AddBoolToObject(o, "single_word", 0);
            cJSON_AddBoolToObject(o, "lstrip", 0);
            cJSON_AddBoolToObject(o, "rstrip", 0);
            cJSON_AddBoolToObject(o, "normalized", 0);
            cJSON_AddBoolToObject(o, "special", ty == 3);
            cJSON_AddItemToArray(added, o);
        } else {
            rc = fr_error(FR_ERR_UNSUPPORTED, "%s: tokenizer.ggml.token_type[%llu] = %lld is not supported (1 normal, 3 control, "
                          "4 user-defined, 5 unused, 6 byte)", im->path, (unsigned long long)i, (long long)ty);
            goto done;
        }
        free(s);
        s = NULL;
    }
    for (uint64_t r = 0; r < merges->arr_n; r++) {
        if ((rc = arr_str_dup(im, merges, r, &s)) != FR_OK) goto done;
        cJSON_AddItemToArray(mg, cJSON_CreateString(s));
        free(s);
        s = NULL;
    }
    /* tokenizer_config.json: special tokens, add_bos/eos, chat template */
    static const char *const sp_keys[3] = {"tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                                           "tokenizer.ggml.padding_token_id"};
    static const char *const cfg_keys[3] = {"bos_token", "eos_token", "pad_token"};
    for (int k = 0; k < 3; k++) {
        if (!fr_gguf_find_kv(&im->g, sp_keys[k])) continue;
        int id;
        if ((rc = get_int(im, sp_keys[k], 0, (int64_t)toks->arr_n - 1, &id)) != FR_OK) goto done;
        if ((rc = arr_str_dup(im, toks, (uint64_t)id, &s)) != FR_OK) goto done;
        cJSON_AddStringToObject(cfg, cfg_keys[k], s);
        free(s);
        s = NULL;
    }
    static const char *const add_keys[2] = {"tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token"};
    for (int k = 0; k < 2; k++) {
        int v = 0;
        if (fr_gguf_find_kv(&im->g, add_keys[k]) && (rc = get_int(im, add_keys[k], 0, 1, &v)) != FR_OK) goto done;
        cJSON_AddBoolToObject(cfg, k ? "add_eos_token" : "add_bos_token", v);
    }
    if (fr_gguf_find_kv(&im->g, "tokenizer.chat_template")) {
        if ((rc = get_str(im, "tokenizer.chat_template", &tmpl)) != FR_OK) goto done;
        cJSON_AddStringToObject(cfg, "chat_template", tmpl);
    }
    *root_out = root;
    *cfg_out = cfg;
    root = cfg = NULL;
done:
    cJSON_Delete(root);
    cJSON_Delete(cfg);
    free(model);
    free(pre);
    free(tmpl);
    free(s);
    return rc;
}

int fr_tokenizer_load_gguf(fr_tokenizer **out, const char *path) {
    fr_clear_error();
    if (!out || !path) return fr_error(FR_ERR_ARG, "fr_tokenizer_load_gguf: NULL argument");
    *out = NULL;
    importer im = {.path = path};
    FR_CHECK(fr_gguf_open(&im.g, path));
    cJSON *root = NULL, *cfg = NULL;
    int rc = build_tokenizer_json(&im, &root, &cfg);
    if (rc == FR_OK) rc = fr_tokenizer_from_json(out, root, cfg, path);
    cJSON_Delete(root);
    cJSON_Delete(cfg);
    fr_gguf_close(&im.g);
    return rc;
}
