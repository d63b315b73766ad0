/*
 * model.c — the DeepSeek-V3 model: parameters by Hugging Face name, the memory plan,
 * forward and backward of the whole network (main layers, head, MTP modules, losses).
 *
 * One step, top to bottom (N = B*T tokens):
 *   x0 = Emb(tokens)                                   [N,H]
 *   x_{l+1} = Block_l(x_l)            l < L            (block.c)
 *   logits = RMSNorm(x_L) · W_head^T                   [N,V]
 *   loss = CE(logits, targets)
 *        + lambda/D sum_k CE_k        (MTP module k on T-k positions, below)
 *        + alpha sum_{MoE layers} mean_b L_balance(b)
 *   MTP module k (k = 1..D), positions i < T-k:
 *     h_k = Block_{L+k-1}( eh_proj [ RMSNorm_e(Emb(t_{i+k})) ; RMSNorm_h(h_{k-1,i}) ] ),  h_0 = x_L
 *     logits_k = RMSNorm_head(h_k) · W_head^T, predicting targets_{i+k} = t_{i+k+1}
 * The backward walks the same path in reverse: MTP modules D..1 first (they feed
 * gradient into x_L), then the main blocks, then the embedding.
 */
#define _GNU_SOURCE
#include "model/block.h"
#include "formats/fp8.h"
#include "model/model_internal.h"
#include "model/lora.h"
#include "formats/safetensors.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define P(off) (m->params + (off))
#define G(off) (m->grads + (off))

/* ================================================================ parameters */

int fr_model_add_tensor(fr_model *m, size_t *off, int trainable, int ndim, int64_t d0, int64_t d1,
                      const char *fmt, ...) {
    if (m->n_tensors == m->cap_tensors) {
        int cap = m->cap_tensors ? 2 * m->cap_tensors : 256;
        fr_tensor *t = realloc(m->tensors, (size_t)cap * sizeof *t);
        if (!t) return fr_error(FR_ERR_NOMEM, "out of memory registering tensors");
        m->tensors = t;
        m->cap_tensors = cap;
    }
    fr_tensor *t = &m->tensors[m->n_tensors++];
    memset(t, 0, sizeof *t);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->name, sizeof t->name, fmt, ap);
    va_end(ap);
    t->ndim = ndim;
    t->shape[0] = d0;
    t->shape[1] = ndim > 1 ? d1 : 0;
    t->numel = (size_t)d0 * (ndim > 1 ? (size_t)d1 : 1);
    t->offset = m->n_params;
    t->no_decay = ndim == 1;
    t->trainable = trainable;
    t->expert = -1;
    m->n_params += (t->numel + 15) & ~(size_t)15; /* 64-byte aligned tensors */
    if (off) *off = t->offset;
    return FR_OK;
}

/* Register one decoder block's tensors under "model.layers.<index>." */
static int register_block(fr_model *m, fr_block *b, int index, int is_mtp) {
    const fr_config *c = &m->cfg;
    const int H = c->hidden_size, nh = c->num_attention_heads;
    const int dqk = c->qk_nope_head_dim + c->qk_rope_head_dim;
    const int kvr = c->kv_lora_rank, rope = c->qk_rope_head_dim, qr = c->q_lora_rank;
    const char *pre = "model.layers.";
    memset(b, 0, sizeof *b);
    b->index = index;
    b->is_moe = fr_config_layer_is_moe(c, index);
    size_t *none[] = {&b->q_a, &b->q_a_norm, &b->q_b, &b->q, &b->mlp_gate, &b->mlp_up, &b->mlp_down,
                      &b->router, &b->router_bias, &b->exp_gate, &b->exp_up, &b->exp_down,
                      &b->enorm, &b->hnorm, &b->eh_proj, &b->head_norm};
    for (size_t i = 0; i < sizeof none / sizeof none[0]; i++) *none[i] = FR_NONE;

    if (is_mtp) {
        FR_CHECK(fr_model_add_tensor(m, &b->enorm, 1, 1, H, 0, "%s%d.enorm.weight", pre, index));
        FR_CHECK(fr_model_add_tensor(m, &b->hnorm, 1, 1, H, 0, "%s%d.hnorm.weight", pre, index));
        FR_CHECK(fr_model_add_tensor(m, &b->eh_proj, 1, 2, H, 2 * H, "%s%d.eh_proj.weight", pre, index));
        FR_CHECK(fr_model_add_tensor(m, &b->head_norm, 1, 1, H, 0, "%s%d.shared_head.norm.weight", pre, index));
    }
    FR_CHECK(fr_model_add_tensor(m, &b->input_norm, 1, 1, H, 0, "%s%d.input_layernorm.weight", pre, index));
    if (qr > 0) {
        FR_CHECK(fr_model_add_tensor(m, &b->q_a, 1, 2, qr, H, "%s%d.self_attn.q_a_proj.weight", pre, index));
        FR_CHECK(fr_model_add_tensor(m, &b->q_a_norm, 1, 1, qr, 0, "%s%d.self_attn.q_a_layernorm.weight", pre, index));
        FR_CHECK(fr_model_add_tensor(m, &b->q_b, 1, 2, (int64_t)nh * dqk, qr, "%s%d.self_attn.q_b_proj.weight", pre, index));
    } else {
        FR_CHECK(fr_model_add_tensor(m, &b->q, 1, 2, (int64_t)nh * dqk, H, "%s%d.self_attn.q_proj.weight", pre, index));
    }
    FR_CHECK(fr_model_add_tensor(m, &b->kv_a, 1, 2, kvr + rope, H, "%s%d.self_attn.kv_a_proj_with_mqa.weight", pre, index));
    FR_CHECK(fr_model_add_tensor(m, &b->kv_a_norm, 1, 1, kvr, 0, "%s%d.self_attn.kv_a_layernorm.weight", pre, index));
    FR_CHECK(fr_model_add_tensor(m, &b->kv_b, 1, 2, (int64_t)nh * (c->qk_nope_head_dim + c->v_head_dim), kvr,
                        "%s%d.self_attn.kv_b_proj.weight", pre, index));
    FR_CHECK(fr_model_add_tensor(m, &b->o, 1, 2, H, (int64_t)nh * c->v_head_dim, "%s%d.self_attn.o_proj.weight", pre, index));
    FR_CHECK(fr_model_add_tensor(m, &b->post_norm, 1, 1, H, 0, "%s%d.post_attention_layernorm.weight", pre, index));

    if (b->is_moe) {
        const int E = c->n_routed_experts, Im = c->moe_intermediate_size;
        FR_CHECK(fr_model_add_tensor(m, &b->router, 1, 2, E, H, "%s%d.mlp.gate.weight", pre, index));
        m->tensors[m->n_tensors - 1].router = 1;
        if (c->has_correction_bias)
            FR_CHECK(fr_model_add_tensor(m, &b->router_bias, 0, 1, E, 0, "%s%d.mlp.gate.e_score_correction_bias", pre, index));
        /* experts of one kind are contiguous: expert e at base + e * exp_stride */
        const char *kinds[3] = {"gate_proj", "up_proj", "down_proj"};
        size_t *bases[3] = {&b->exp_gate, &b->exp_up, &b->exp_down};
        for (int k = 0; k < 3; k++) {
            for (int e = 0; e < E; e++) {
                size_t off;
                if (k < 2)
                    FR_CHECK(fr_model_add_tensor(m, &off, 1, 2, Im, H, "%s%d.mlp.experts.%d.%s.weight", pre, index, e, kinds[k]));
                else
                    FR_CHECK(fr_model_add_tensor(m, &off, 1, 2, H, Im, "%s%d.mlp.experts.%d.%s.weight", pre, index, e, kinds[k]));
                m->tensors[m->n_tensors - 1].expert = e;
                if (e == 0) *bases[k] = off;
                if (e == 1) b->exp_stride = off - *bases[k];
            }
        }
        if (c->n_shared_experts > 0) {
            int Is = c->n_shared_experts * Im;
            b->mlp_inter = Is;
            FR_CHECK(fr_model_add_tensor(m, &b->mlp_gate, 1, 2, Is, H, "%s%d.mlp.shared_experts.gate_proj.weight", pre, index));
            FR_CHECK(fr_model_add_tensor(m, &b->mlp_up, 1, 2, Is, H, "%s%d.mlp.shared_experts.up_proj.weight", pre, index));
            FR_CHECK(fr_model_add_tensor(m, &b->mlp_down, 1, 2, H, Is, "%s%d.mlp.shared_experts.down_proj.weight", pre, index));
        }
    } else {
        int I = c->intermediate_size;
        b->mlp_inter = I;
        FR_CHECK(fr_model_add_tensor(m, &b->mlp_gate, 1, 2, I, H, "%s%d.mlp.gate_proj.weight", pre, index));
        FR_CHECK(fr_model_add_tensor(m, &b->mlp_up, 1, 2, I, H, "%s%d.mlp.up_proj.weight", pre, index));
        FR_CHECK(fr_model_add_tensor(m, &b->mlp_down, 1, 2, H, I, "%s%d.mlp.down_proj.weight", pre, index));
    }
    return FR_OK;
}

static int n_blocks(const fr_model *m) { return m->cfg.num_hidden_layers + m->mtp_depth; }

/* ================================================================ rope tables */

static double yarn_get_mscale(double scale, double mscale) {
    if (scale <= 1.0) return 1.0;
    return 0.1 * mscale * log(scale) + 1.0;
}

/* Inverse frequencies and the cos/sin scaling, as transformers' rope init computes them. */
static void rope_inv_freq(const fr_config *c, float *inv_freq, double *attention_factor) {
    const int dim = c->qk_rope_head_dim, half = dim / 2;
    const double base = c->rope_theta;
    *attention_factor = 1.0;
    for (int i = 0; i < half; i++) {
        float pos_freq = (float)pow(base, (double)(2 * i) / dim);
        inv_freq[i] = 1.0f / pos_freq;
    }
    if (c->rope_type != FR_ROPE_YARN) return;

    const double factor = c->rope_factor;
    if (c->rope_mscale != 0.0 && c->rope_mscale_all_dim != 0.0)
        *attention_factor = yarn_get_mscale(factor, c->rope_mscale) / yarn_get_mscale(factor, c->rope_mscale_all_dim);
    else
        *attention_factor = yarn_get_mscale(factor, 1.0);
    const double orig = c->rope_original_max_position_embeddings > 0 ? c->rope_original_max_position_embeddings
                                                                     : c->max_position_embeddings;
    /* dimension index at which a frequency completes `rot` rotations over the original context */
    #define CORR_DIM(rot) ((dim * log(orig / ((rot) * 2.0 * M_PI))) / (2.0 * log(base)))
    double low = floor(CORR_DIM(c->rope_beta_fast)), high = ceil(CORR_DIM(c->rope_beta_slow));
    #undef CORR_DIM
    if (low < 0) low = 0;
    if (high > dim - 1) high = dim - 1;
    if (low == high) high += 0.001;
    for (int i = 0; i < half; i++) {
        float pos_freq = 1.0f / inv_freq[i];
        float extrap = 1.0f / pos_freq, interp = 1.0f / (float)(factor * pos_freq);
        float ramp = (float)(((float)i - low) / (high - low));
        if (ramp < 0) ramp = 0;
        if (ramp > 1) ramp = 1;
        float extrap_factor = 1.0f - ramp;
        inv_freq[i] = interp * (1.0f - extrap_factor) + extrap * extrap_factor;
    }
}

/* Host RoPE tables [max_pos, rope/2] with the attention factor folded in (shared with infer.c). */
void fr_rope_tables_fill(const fr_config *c, int max_pos, float *hc, float *hs) {
    const int half = c->qk_rope_head_dim / 2;
    float inv_freq[512];
    double att;
    rope_inv_freq(c, inv_freq, &att);
    for (int p = 0; p < max_pos; p++)
        for (int i = 0; i < half; i++) {
            float angle = (float)p * inv_freq[i]; /* float32 angle, as torch computes it */
            hc[(size_t)p * half + i] = (float)(cos((double)angle) * att);
            hs[(size_t)p * half + i] = (float)(sin((double)angle) * att);
        }
}

static int build_rope_tables(fr_model *m, int max_pos) {
    const fr_config *c = &m->cfg;
    const int half = c->qk_rope_head_dim / 2;
    size_t n = (size_t)max_pos * half;
    float *hc = malloc(n * sizeof(float)), *hs = malloc(n * sizeof(float));
    float *dc = m->ops->alloc(n * sizeof(float)), *ds = m->ops->alloc(n * sizeof(float));
    if (!hc || !hs || !dc || !ds) {
        free(hc); free(hs);
        if (dc) m->ops->free(dc);
        if (ds) m->ops->free(ds);
        return fr_error(FR_ERR_NOMEM, "out of memory for RoPE tables");
    }
    fr_rope_tables_fill(c, max_pos, hc, hs);
    m->ops->to_device(dc, hc, n * sizeof(float));
    m->ops->to_device(ds, hs, n * sizeof(float));
    free(hc);
    free(hs);
    if (m->rope_cos) m->ops->free(m->rope_cos);
    if (m->rope_sin) m->ops->free(m->rope_sin);
    m->rope_cos = dc;
    m->rope_sin = ds;
    m->rope_max_pos = max_pos;
    return FR_OK;
}

float fr_attention_scale(const fr_config *c) {
    double scale = 1.0 / sqrt((double)(c->qk_nope_head_dim + c->qk_rope_head_dim));
    /* YaRN's softmax temperature: transformers applies it for DeepseekV3 only */
    if (c->rope_type == FR_ROPE_YARN && c->rope_mscale_all_dim != 0.0 && strcmp(c->model_type, "deepseek_v3") == 0) {
        double ms = yarn_get_mscale(c->rope_factor, c->rope_mscale_all_dim);
        scale *= ms * ms;
    }
    return (float)scale;
}

/* ================================================================ construction */

/* Build the tensor table and allocate parameters and gradients (zeroed). */
static int model_build(fr_model **out, const fr_config *cfg, int mtp_depth) {
    *out = NULL;
    FR_CHECK(fr_config_validate(cfg));
    if (cfg->qk_rope_head_dim / 2 > 512) return fr_error(FR_ERR_UNSUPPORTED, "qk_rope_head_dim > 1024 is not supported");
    fr_model *m = calloc(1, sizeof *m);
    if (!m) return fr_error(FR_ERR_NOMEM, "out of memory");
    m->cfg = *cfg;
    m->ops = fr_device_ops(); /* fr_set_device's choice */
    m->mtp_depth = mtp_depth;
    m->loss_w.mtp_lambda = 0.3f;
    m->fp8_grad_tile_rows = 1;
    m->loss_w.balance_alpha = 0.0f;
    const int H = cfg->hidden_size, V = cfg->vocab_size, L = cfg->num_hidden_layers;
    int rc;

    m->blocks = calloc((size_t)(L + mtp_depth), sizeof *m->blocks);
    if (!m->blocks) { rc = fr_error(FR_ERR_NOMEM, "out of memory"); goto fail; }
    if ((rc = fr_model_add_tensor(m, &m->embed, 1, 2, V, H, "model.embed_tokens.weight")) != FR_OK) goto fail;
    for (int l = 0; l < L + mtp_depth; l++) {
        const size_t lo = m->n_params;
        if ((rc = register_block(m, &m->blocks[l], l, l >= L)) != FR_OK) goto fail;
        m->blocks[l].arena_lo = lo;
    }
    if ((rc = fr_model_add_tensor(m, &m->final_norm, 1, 1, H, 0, "model.norm.weight")) != FR_OK) goto fail;
    if (cfg->tie_word_embeddings) m->lm_head = m->embed;
    else if ((rc = fr_model_add_tensor(m, &m->lm_head, 1, 2, V, H, "lm_head.weight")) != FR_OK) goto fail;

    /* parameters and gradients: one allocation, same layout twice */
    m->params = m->ops->alloc(2 * m->n_params * sizeof(float));
    m->grads = m->params ? m->params + m->n_params : NULL;
    if (!m->params) {
        rc = fr_error(FR_ERR_NOMEM, "out of memory for %zu parameters", m->n_params);
        goto fail;
    }
    int max_pos = cfg->max_position_embeddings > 0 ? cfg->max_position_embeddings : 2048;
    if ((rc = build_rope_tables(m, max_pos)) != FR_OK) goto fail;
    m->attn_scale = fr_attention_scale(cfg);
    *out = m;
    return FR_OK;
fail:
    fr_model_free(m);
    return rc;
}

int fr_model_create(fr_model **out, const fr_config *cfg, uint64_t seed) {
    fr_clear_error();
    if (!out || !cfg) return fr_error(FR_ERR_ARG, "fr_model_create: NULL argument");
    if (cfg->num_nextn_predict_layers > FR_MAX_MTP)
        return fr_error(FR_ERR_CONFIG, "num_nextn_predict_layers (%d) > %d", cfg->num_nextn_predict_layers, FR_MAX_MTP);
    fr_model *m;
    FR_CHECK(model_build(&m, cfg, cfg->num_nextn_predict_layers));
    /* transformers' init: N(0, initializer_range) for matrices, ones for norms, zeros for the bias */
    /* a host backend is initialised in place (no transient second copy of the model) */
    float *host = m->ops->host_memory ? m->params : malloc(m->n_params * sizeof(float));
    if (!host) { fr_model_free(m); return fr_error(FR_ERR_NOMEM, "out of memory"); }
    memset(host, 0, m->n_params * sizeof(float));
    fr_rng rng;
    fr_rng_seed(&rng, seed);
    for (int i = 0; i < m->n_tensors; i++) {
        const fr_tensor *t = &m->tensors[i];
        float *p = host + t->offset;
        if (t->ndim == 1) {
            float v = t->trainable ? 1.0f : 0.0f;
            for (size_t j = 0; j < t->numel; j++) p[j] = v;
        } else {
            for (size_t j = 0; j < t->numel; j++) p[j] = (float)(fr_rng_normal(&rng) * cfg->initializer_range);
        }
    }
    if (host != m->params) {
        m->ops->to_device(m->params, host, m->n_params * sizeof(float));
        free(host);
    }
    *out = m;
    return FR_OK;
}

static int path_join(char *buf, size_t n, const char *dir, const char *file) {
    if ((size_t)snprintf(buf, n, "%s/%s", dir, file) >= n) return fr_error(FR_ERR_ARG, "path too long: %s/%s", dir, file);
    return FR_OK;
}

static int shapes_equal(const fr_tensor *t, const fr_st_tensor *s) {
    if (t->ndim != s->ndim) return 0;
    for (int d = 0; d < t->ndim; d++)
        if (t->shape[d] != s->shape[d]) return 0;
    return 1;
}

/* Index of the first NaN / Inf of x[0..n), or SIZE_MAX: chunked so the inner loop vectorises. */
static size_t first_nonfinite_f32(const float *x, size_t n) {
    for (size_t i0 = 0; i0 < n; i0 += 4096) {
        const size_t i1 = n - i0 > 4096 ? i0 + 4096 : n;
        int bad = 0;
        for (size_t i = i0; i < i1; i++) bad |= !isfinite(x[i]);
        if (bad)
            for (size_t i = i0; i < i1; i++)
                if (!isfinite(x[i])) return i;
    }
    return SIZE_MAX;
}

int fr_model_load(fr_model **out, const char *dir) { return fr_model_load_flags(out, dir, 0); }

int fr_model_load_flags(fr_model **out, const char *dir, int flags) {
    fr_clear_error();
    if (!out || !dir) return fr_error(FR_ERR_ARG, "fr_model_load: NULL argument");
    *out = NULL;
    char path[4096];
    FR_CHECK(path_join(path, sizeof path, dir, "config.json"));
    fr_config cfg;
    FR_CHECK(fr_config_load(&cfg, path));
    if (cfg.num_nextn_predict_layers > FR_MAX_MTP)
        return fr_error(FR_ERR_CONFIG, "num_nextn_predict_layers (%d) > %d", cfg.num_nextn_predict_layers, FR_MAX_MTP);
    /* DeepSeek's FP8 release: block size of the weight_scale_inv tensors (fp8.h) */
    int fp8_br, fp8_bc;
    {
        char *text = NULL;
        size_t len = 0;
        FR_CHECK(fr_read_file(path, &text, &len));
        int qrc = fr_fp8_block_size(text, len, &fp8_br, &fp8_bc);
        free(text);
        if (qrc != FR_OK) return qrc;
    }
    fr_st_set set;
    FR_CHECK(fr_st_set_open_dir(&set, dir));

    /* MTP modules are optional in a folder (transformers drops them when it saves):
     * keep the leading ones that are present. */
    int depth = 0;
    for (int k = 0; k < cfg.num_nextn_predict_layers; k++) {
        char name[128];
        snprintf(name, sizeof name, "model.layers.%d.eh_proj.weight", cfg.num_hidden_layers + k);
        if (!fr_st_set_find(&set, name)) break;
        depth++;
    }
    fr_model *m;
    int rc = model_build(&m, &cfg, depth);
    if (rc != FR_OK) { fr_st_set_close(&set); return rc; }

    float *stage = NULL;
    size_t stage_n = 0;
    for (int i = 0; i < m->n_tensors && rc == FR_OK; i++) {
        const fr_tensor *t = &m->tensors[i];
        const fr_st_tensor *s = fr_st_set_find(&set, t->name);
        if (!s) { rc = fr_error(FR_ERR_FORMAT, "%s: missing tensor %s", dir, t->name); break; }
        if (!shapes_equal(t, s)) {
            rc = fr_error(FR_ERR_FORMAT, "%s: tensor %s has shape [%lld%s%lld], expected [%lld%s%lld]", dir, t->name,
                          (long long)s->shape[0], s->ndim > 1 ? ", " : "", s->ndim > 1 ? (long long)s->shape[1] : 0LL,
                          (long long)t->shape[0], t->ndim > 1 ? ", " : "", t->ndim > 1 ? (long long)t->shape[1] : 0LL);
            break;
        }
        if (t->numel > stage_n) {
            free(stage);
            stage_n = t->numel;
            stage = malloc(stage_n * sizeof(float));
            if (!stage) { rc = fr_error(FR_ERR_NOMEM, "out of memory loading %s", t->name); break; }
        }
        if (s->dtype == FR_DT_F8_E4M3 || s->dtype == FR_DT_F8_E5M2) {
            char sname[160];
            snprintf(sname, sizeof sname, "%s_scale_inv", t->name);
            const fr_st_tensor *sc = fr_st_set_find(&set, sname);
            if (!sc) {
                rc = fr_error(FR_ERR_FORMAT, "%s: tensor %s is %s but %s is missing", dir, t->name,
                              fr_dtype_name(s->dtype), sname);
                break;
            }
            if ((rc = fr_fp8_dequant(s, sc, fp8_br, fp8_bc, stage, t->numel)) != FR_OK) break;
        } else if ((rc = fr_st_to_f32(s, stage, t->numel)) != FR_OK) {
            break;
        }
        if (!(flags & FR_LOAD_NO_CHECK)) {
            const size_t bad = first_nonfinite_f32(stage, t->numel);
            if (bad != SIZE_MAX) {
                rc = fr_error(FR_ERR_FORMAT, "%s: tensor %s holds a non-finite value (NaN or Inf) at index %zu", dir,
                              t->name, bad);
                break;
            }
        }
        m->ops->to_device(P(t->offset), stage, t->numel * sizeof(float));
    }
    free(stage);
    fr_st_set_close(&set);
    if (rc != FR_OK) { fr_model_free(m); return rc; }
    *out = m;
    return FR_OK;
}

int fr_model_save(const fr_model *m, const char *dir) {
    fr_clear_error();
    if (!m || !dir) return fr_error(FR_ERR_ARG, "fr_model_save: NULL argument");
    if (m->n_frozen_q)
        return fr_error(FR_ERR_STATE, "the model's frozen base is stored quantized (its FP32 weights were released): save "
                                      "the adapters (fr_model_lora_save) and merge them into the original base");
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return fr_error(FR_ERR_IO, "cannot create %s: %s", dir, strerror(errno));
    char path[4096];
    fr_config cfg = m->cfg;
    cfg.num_nextn_predict_layers = m->mtp_depth;
    FR_CHECK(path_join(path, sizeof path, dir, "config.json"));
    FR_CHECK(fr_config_save(&cfg, path));

    /* a host backend's parameters are written in place: no second copy of the model */
    float *host = m->ops->host_memory ? m->params : malloc(m->n_params * sizeof(float));
    /* the base model only: LoRA adapters go to their own folder (fr_model_lora_save) */
    const int n_model = m->n_lora ? m->n_base_tensors : m->n_tensors;
    int n_entries = n_model + 2 * m->mtp_depth;
    fr_st_entry *e = calloc((size_t)n_entries, sizeof *e);
    char (*names)[128] = calloc((size_t)(2 * m->mtp_depth + 1), sizeof *names);
    if (!host || !e || !names) {
        if (host != m->params) free(host);
        free(e); free(names);
        return fr_error(FR_ERR_NOMEM, "out of memory saving %s", dir);
    }
    if (host != m->params) m->ops->to_host(host, m->params, m->n_params * sizeof(float));
    int n = 0;
    for (int i = 0; i < n_model; i++, n++) {
        const fr_tensor *t = &m->tensors[i];
        e[n].name = t->name;
        e[n].dtype = FR_DT_F32;
        e[n].ndim = t->ndim;
        e[n].shape[0] = t->shape[0];
        e[n].shape[1] = t->shape[1];
        e[n].data = host + t->offset;
    }
    /* DeepSeek ships each MTP layer with its own copy of the embedding and output head */
    const int H = m->cfg.hidden_size, V = m->cfg.vocab_size;
    for (int k = 0; k < m->mtp_depth; k++) {
        int layer = m->cfg.num_hidden_layers + k;
        for (int j = 0; j < 2; j++, n++) {
            snprintf(names[2 * k + j], 128, j == 0 ? "model.layers.%d.embed_tokens.weight"
                                                   : "model.layers.%d.shared_head.head.weight", layer);
            e[n].name = names[2 * k + j];
            e[n].dtype = FR_DT_F32;
            e[n].ndim = 2;
            e[n].shape[0] = V;
            e[n].shape[1] = H;
            e[n].data = host + (j == 0 ? m->embed : m->lm_head);
        }
    }
    const char *mk[] = {"format"}, *mv[] = {"pt"};
    int rc = path_join(path, sizeof path, dir, "model.safetensors");
    if (rc == FR_OK) rc = fr_st_write(path, e, n, mk, mv, 1);
    if (host != m->params) free(host);
    free(e);
    free(names);
    return rc;
}

static void free_acts(fr_model *m) {
    if (m->acts) m->ops->free(m->acts);
    m->acts = NULL;
    m->act_cap_tokens = 0;
}

void fr_model_free(fr_model *m) {
    if (!m) return;
    free_acts(m);
    if (m->bacts) {
        free(m->bacts[0].offsets); /* one host block for all blocks' offsets */
        free(m->bacts);
    }
    if (m->params) m->ops->free(m->params); /* grads live in the same allocation */
    if (m->rope_cos) m->ops->free(m->rope_cos);
    if (m->rope_sin) m->ops->free(m->rope_sin);
    for (int k = 0; k < 2; k++)
        if (m->fp8_buf[k]) m->ops->free(m->fp8_buf[k]);
    fr_model_ep_free(m);
    free(m->host_targets);
    free(m->lora);
    if (m->lora_buf) m->ops->free(m->lora_buf);
    fr_lora_free_base(m);
    free(m->tensors);
    free(m->blocks);
    free(m);
}

/* ================================================================ memory plan */

typedef struct {
    float *base;   /* NULL while counting */
    size_t used;   /* floats */
} planner;

static float *take(planner *p, size_t n) {
    float *r = p->base ? p->base + p->used : NULL;
    p->used += (n + 15) & ~(size_t)15;
    return r;
}
#define TAKE_I(p, n) ((int *)take((p), (n)))

static void plan_block(const fr_model *m, planner *p, const fr_block *b, fr_block_acts *a, size_t N) {
    const fr_config *c = &m->cfg;
    const size_t H = c->hidden_size, nh = c->num_attention_heads;
    const size_t dqk = c->qk_nope_head_dim + c->qk_rope_head_dim, vd = c->v_head_dim;
    const size_t kvr = c->kv_lora_rank, rope = c->qk_rope_head_dim, qr = c->q_lora_rank;
    int *offsets = a->offsets; /* host, kept across plans */
    memset(a, 0, sizeof *a);
    a->offsets = offsets;
    a->attn_xn = take(p, N * H);
    a->attn_rstd = take(p, N);
    if (qr > 0) {
        a->q_a = take(p, N * qr);
        a->q_a_rstd = take(p, N);
        a->q_a_n = take(p, N * qr);
    }
    a->q = take(p, N * nh * dqk);
    a->kv_a = take(p, N * (kvr + rope));
    a->kv_n = take(p, N * kvr);
    a->kv_rstd = take(p, N);
    a->k = take(p, N * nh * dqk);
    a->v = take(p, N * nh * vd);
    a->att = take(p, N * nh * vd);
    a->lse = take(p, N * nh);
    a->x_mid = take(p, N * H);
    a->ffn_xn = take(p, N * H);
    a->ffn_rstd = take(p, N);
    if (b->mlp_inter > 0) {
        a->g = take(p, N * b->mlp_inter);
        a->u = take(p, N * b->mlp_inter);
        a->h = take(p, N * b->mlp_inter);
    }
    if (b->is_moe) {
        const size_t E = c->n_routed_experts, K = c->num_experts_per_tok, Im = c->moe_intermediate_size;
        a->scores = take(p, N * E);
        a->topk_idx = TAKE_I(p, N * K);
        a->topk_w = take(p, N * K);
        a->perm_token = TAKE_I(p, N * K);
        a->slot_pos = TAKE_I(p, N * K);
        a->xe = take(p, N * K * H);
        a->ge = take(p, N * K * Im);
        a->ue = take(p, N * K * Im);
        a->he = take(p, N * K * Im);
        a->ye = take(p, N * K * H);
    }
    a->out = take(p, N * H);
}

static void plan_all(fr_model *m, planner *p, size_t N) {
    const fr_config *c = &m->cfg;
    const size_t H = c->hidden_size, V = c->vocab_size, nh = c->num_attention_heads;
    const size_t dqk = c->qk_nope_head_dim + c->qk_rope_head_dim, vd = c->v_head_dim;
    const size_t kvr = c->kv_lora_rank, rope = c->qk_rope_head_dim, qr = c->q_lora_rank;
    const size_t E = c->n_routed_experts, K = c->num_experts_per_tok, Im = c->moe_intermediate_size;
    const int L = c->num_hidden_layers;

    m->tokens = TAKE_I(p, N);
    m->targets = TAKE_I(p, N);
    m->pos = TAKE_I(p, N);
    m->res0 = take(p, N * H);
    for (int l = 0; l < L; l++) {
        plan_block(m, p, &m->blocks[l], &m->bacts[l], N);
        m->bacts[l].x_in = l == 0 ? m->res0 : m->bacts[l - 1].out;
    }
    m->final_xn = take(p, N * H);
    m->final_rstd = take(p, N);
    m->logits = take(p, N * V);
    m->dlogits = take(p, N * V);
    m->losses = take(p, N);
    m->d_res = take(p, N * H);
    m->bal_loss = take(p, N);
    for (int k = 0; k < m->mtp_depth; k++) {
        fr_mtp_acts *t = &m->mtp[k];
        t->emb = take(p, N * H);
        t->en = take(p, N * H);
        t->e_rstd = take(p, N);
        t->h_in = take(p, N * H);
        t->hn = take(p, N * H);
        t->h_rstd = take(p, N);
        t->head_xn = take(p, N * H);
        t->head_rstd = take(p, N);
        t->logits = take(p, N * V);
        t->losses = take(p, N);
        t->tokens = TAKE_I(p, N);
        t->targets = TAKE_I(p, N);
        t->pos = TAKE_I(p, N);
        t->d_res = take(p, N * H);
        t->blk.offsets = m->bacts[L + k].offsets;
        plan_block(m, p, &m->blocks[L + k], &t->blk, N);
        t->blk.x_in = take(p, N * H);
    }
    /* backward scratch, sized for the widest block */
    size_t mlp_max = 0;
    for (int l = 0; l < n_blocks(m); l++)
        if ((size_t)m->blocks[l].mlp_inter > mlp_max) mlp_max = m->blocks[l].mlp_inter;
    fr_scratch *s = &m->scr;
    s->d_xn = take(p, N * H);
    s->d_att = take(p, N * nh * vd);
    s->dq = take(p, N * nh * dqk);
    s->dk = take(p, N * nh * dqk);
    s->dv = take(p, N * nh * vd);
    s->dkv = take(p, N * nh * (c->qk_nope_head_dim + vd));
    s->d_kv_a = take(p, N * (kvr + rope));
    s->d_kv_n = take(p, N * kvr);
    s->d_q_a = qr ? take(p, N * qr) : NULL;
    s->d_q_a_n = qr ? take(p, N * qr) : NULL;
    s->dg = take(p, N * mlp_max);
    s->du = take(p, N * mlp_max);
    s->dh = take(p, N * mlp_max);
    if (E > 0) {
        s->dtopk_w = take(p, N * K);
        s->dscores = take(p, N * E);
        s->dlogits_r = take(p, N * E);
        s->dye = take(p, N * K * H);
        s->dge = take(p, N * K * Im);
        s->due = take(p, N * K * Im);
        s->dhe = take(p, N * K * Im);
        s->dxe = take(p, N * K * H);
    }
    s->d_en = take(p, N * H);
    s->d_hn = take(p, N * H);
}

/* Make sure the activation arena holds N tokens (re-planned only when it grows). */
static int ensure_capacity(fr_model *m, size_t N, int T) {
    if (!m->bacts) {
        int nb = n_blocks(m), E = m->cfg.n_routed_experts;
        m->bacts = calloc((size_t)nb, sizeof *m->bacts);
        int *offsets = calloc((size_t)nb * (E + 1) + 1, sizeof(int));
        if (!m->bacts || !offsets) { free(offsets); return fr_error(FR_ERR_NOMEM, "out of memory"); }
        for (int l = 0; l < nb; l++) m->bacts[l].offsets = offsets + (size_t)l * (E + 1);
    }
    if (T > m->rope_max_pos) FR_CHECK(build_rope_tables(m, T));
    if (N <= m->act_cap_tokens) return FR_OK;
    free_acts(m);
    planner p = {NULL, 0};
    plan_all(m, &p, N);
    size_t floats = p.used;
    m->acts = m->ops->alloc(floats * sizeof(float));
    if (!m->acts) return fr_error(FR_ERR_NOMEM, "out of memory for activations (%zu MB)", floats * 4 >> 20);
    p.base = m->acts;
    p.used = 0;
    plan_all(m, &p, N);
    free(m->host_targets);
    m->host_targets = malloc(N * sizeof(int));
    if (!m->host_targets) { free_acts(m); return fr_error(FR_ERR_NOMEM, "out of memory"); }
    m->act_cap_tokens = N;
    return FR_OK;
}

size_t fr_model_activation_bytes(const fr_model *m, int B, int T) {
    /* plan on a shallow copy so the live pointers stay untouched */
    fr_model tmp = *m;
    int nb = n_blocks(m);
    tmp.bacts = calloc((size_t)nb, sizeof *tmp.bacts);
    if (!tmp.bacts) return 0;
    planner p = {NULL, 0};
    plan_all(&tmp, &p, (size_t)B * T);
    free(tmp.bacts);
    return p.used * sizeof(float);
}

/* ================================================================ forward */

/* Sum of a device float array of n values, in double on the host. */
static double device_sum(const fr_model *m, const float *x, int n) {
    float buf[1024];
    double s = 0;
    for (int i = 0; i < n; i += 1024) {
        int c = n - i < 1024 ? n - i : 1024;
        m->ops->to_host(buf, x + i, (size_t)c * sizeof(float));
        for (int j = 0; j < c; j++) s += buf[j];
    }
    return s;
}

/* alpha * mean over sequences of the balance loss of one MoE block */
static double balance_loss(fr_model *m, fr_block_acts *a, int B, int T) {
    const fr_config *c = &m->cfg;
    m->ops->moe_balance_loss(m->bal_loss, NULL, a->scores, a->topk_idx, B, T, c->n_routed_experts,
                             c->num_experts_per_tok, 0.0f);
    return m->loss_w.balance_alpha * device_sum(m, m->bal_loss, B) / B;
}

/* The head: RMSNorm -> logits -> cross-entropy (gradient scaled by grad_scale). */
static double head_forward(fr_model *m, float *xn, float *rstd, const float *h, size_t norm_w, float *logits,
                           float *dlogits, float *losses, const int *targets, int N, float grad_scale) {
    const fr_config *c = &m->cfg;
    const int H = c->hidden_size, V = c->vocab_size;
    m->ops->rmsnorm_forward(xn, rstd, h, H, P(norm_w), N, H, c->rms_norm_eps);
    /* "bf16" multiplies the head in BF16 too (as autocast does every Linear); "fp8" keeps it in
     * FP32, as the recipe keeps it in higher precision */
    if (m->precision == FR_PREC_BF16) fr_qlinear_forward(m, logits, V, xn, H, P(m->lm_head), H, N, H, V, 0.0f);
    else fr_linear_forward(m->ops, logits, V, xn, H, P(m->lm_head), H, N, H, V, 0.0f);
    if (!targets) return 0.0;
    m->ops->cross_entropy(losses, dlogits, logits, targets, N, V, grad_scale);
    return device_sum(m, losses, N);
}

static int count_targets(const int *t, int n) {
    int c = 0;
    for (int i = 0; i < n; i++) c += t[i] >= 0;
    return c;
}

static int mtp_forward(fr_model *m, int k, const int *tokens, const int *targets, int B, int T,
                       fr_loss_info *loss) {
    const fr_config *c = &m->cfg;
    const fr_ops *o = m->ops;
    const int H = c->hidden_size, D = m->mtp_depth;
    const int Tk = T - k, Nk = B * Tk;
    fr_mtp_acts *t = &m->mtp[k - 1];
    const fr_block *b = &m->blocks[c->num_hidden_layers + k - 1];
    t->T = Tk;

    /* inputs shifted by k: token t_{i+k}, target t_{i+k+1}, position i */
    int *ht = m->host_targets;  /* [N] host scratch, refilled below for the main head */
    int *tmp = malloc((size_t)Nk * 2 * sizeof(int));
    if (!tmp) return fr_error(FR_ERR_NOMEM, "out of memory");
    for (int bb = 0; bb < B; bb++)
        for (int i = 0; i < Tk; i++) {
            tmp[bb * Tk + i] = tokens[bb * T + i + k];
            ht[bb * Tk + i] = targets[bb * T + i + k] >= 0 ? targets[bb * T + i + k] : -1;
            tmp[Nk + bb * Tk + i] = i;
        }
    o->to_device(t->tokens, tmp, (size_t)Nk * sizeof(int));
    o->to_device(t->pos, tmp + Nk, (size_t)Nk * sizeof(int));
    o->to_device(t->targets, ht, (size_t)Nk * sizeof(int));
    t->n_targets = count_targets(ht, Nk);
    free(tmp);

    /* previous depth's stream, first Tk positions of each sequence */
    const float *prev = k == 1 ? m->bacts[c->num_hidden_layers - 1].out : m->mtp[k - 2].blk.out;
    const int Tprev = k == 1 ? T : m->mtp[k - 2].T;
    for (int bb = 0; bb < B; bb++)
        o->copy(t->h_in + (size_t)bb * Tk * H, prev + (size_t)bb * Tprev * H, (size_t)Tk * H * sizeof(float));

    o->embedding_forward(t->emb, P(m->embed), t->tokens, Nk, H);
    o->rmsnorm_forward(t->en, t->e_rstd, t->emb, H, P(b->enorm), Nk, H, c->rms_norm_eps);
    o->rmsnorm_forward(t->hn, t->h_rstd, t->h_in, H, P(b->hnorm), Nk, H, c->rms_norm_eps);
    /* eh_proj over [en ; hn] as two half-width products (embedding first) */
    fr_qlinear_forward(m, t->blk.x_in, H, t->en, H, P(b->eh_proj), 2 * H, Nk, H, H, 0.0f);
    fr_qlinear_forward(m, t->blk.x_in, H, t->hn, H, P(b->eh_proj) + H, 2 * H, Nk, H, H, 1.0f);

    fr_block_forward(m, b, &t->blk, B, Tk, t->pos);
    if (b->is_moe && m->loss_w.balance_alpha > 0) loss->loss_balance += balance_loss(m, &t->blk, B, Tk);

    float scale = t->n_targets > 0 ? m->loss_w.mtp_lambda / D / t->n_targets : 0.0f;
    double sum = head_forward(m, t->head_xn, t->head_rstd, t->blk.out, b->head_norm, t->logits, t->logits,
                              t->losses, t->targets, Nk, scale);
    loss->loss_mtp[k - 1] = t->n_targets > 0 ? sum / t->n_targets : 0.0;
    return FR_OK;
}

static int forward(fr_model *m, const int *tokens, const int *targets, int B, int T, fr_loss_info *loss, int aux) {
    fr_clear_error();
    if (!m || !tokens || B <= 0 || T <= 0) return fr_error(FR_ERR_ARG, "fr_model_forward: invalid arguments");
    const fr_config *c = &m->cfg;
    const fr_ops *o = m->ops;
    const int H = c->hidden_size, V = c->vocab_size, L = c->num_hidden_layers;
    if ((size_t)B * T > (size_t)INT32_MAX / (V > H ? V : H))
        return fr_error(FR_ERR_ARG, "batch %d x %d tokens is too large", B, T);
    const int N = B * T;
    for (int i = 0; i < N; i++)
        if (tokens[i] < 0 || tokens[i] >= V)
            return fr_error(FR_ERR_ARG, "token %d at position %d is outside the vocabulary [0, %d)", tokens[i], i, V);
    if (targets)
        for (int i = 0; i < N; i++)
            if (targets[i] >= V)
                return fr_error(FR_ERR_ARG, "target %d at position %d is outside the vocabulary", targets[i], i);
    FR_CHECK(ensure_capacity(m, (size_t)N, T));
    m->B = B;
    m->T = T;
    m->have_targets = 0;

    /* positions restart at 0 in every sequence */
    int *hp = m->host_targets;
    for (int i = 0; i < N; i++) hp[i] = i % T;
    o->to_device(m->pos, hp, (size_t)N * sizeof(int));
    o->to_device(m->tokens, tokens, (size_t)N * sizeof(int));

    fr_loss_info li;
    memset(&li, 0, sizeof li);
    o->embedding_forward(m->res0, P(m->embed), m->tokens, N, H);
    const int bal = aux && targets && m->loss_w.balance_alpha > 0;
    for (int l = 0; l < L; l++) {
        fr_block_forward(m, &m->blocks[l], &m->bacts[l], B, T, m->pos);
        if (bal && m->blocks[l].is_moe) li.loss_balance += balance_loss(m, &m->bacts[l], B, T);
    }

    if (targets && aux)
        for (int k = 1; k <= m->mtp_depth && k < T; k++) FR_CHECK(mtp_forward(m, k, tokens, targets, B, T, &li));

    if (targets) {
        for (int i = 0; i < N; i++) hp[i] = targets[i] >= 0 ? targets[i] : -1;
        o->to_device(m->targets, hp, (size_t)N * sizeof(int));
        m->n_targets = count_targets(hp, N);
    }
    float scale = targets && m->n_targets > 0 ? 1.0f / m->n_targets : 0.0f;
    double sum = head_forward(m, m->final_xn, m->final_rstd, m->bacts[L - 1].out, m->final_norm, m->logits,
                              m->dlogits, m->losses, targets ? m->targets : NULL, N, scale);
    if (targets) {
        li.n_targets = m->n_targets;
        li.loss_main = m->n_targets > 0 ? sum / m->n_targets : 0.0;
        li.loss = li.loss_main + li.loss_balance;
        if (aux && m->kd_idx) { /* distillation: the main head's loss and gradient (kd.c) */
            const double kl = fr_kd_apply(m->logits, m->dlogits, hp, N, c->vocab_size, m->kd_idx, m->kd_logit, m->kd_lse,
                                          m->kd_k, m->kd_temperature, m->kd_alpha, scale);
            if (!isfinite(kl)) return fr_error(FR_ERR_NOMEM, "out of memory in the distillation loss");
            const double a = m->kd_alpha, T2 = (double)m->kd_temperature * m->kd_temperature;
            li.loss_kd = m->n_targets > 0 ? kl / m->n_targets : 0.0;
            li.loss = (1 - a) * li.loss_main + a * T2 * li.loss_kd + li.loss_balance;
        }
        const int D = m->mtp_depth;
        for (int k = 0; k < D && aux; k++) li.loss += m->loss_w.mtp_lambda / D * li.loss_mtp[k];
        m->have_targets = aux ? 1 : 0;
    }
    if (loss) *loss = li;
    return FR_OK;
}

static int gemm_status(fr_model *m, const char *pass);

int fr_model_forward(fr_model *m, const int *tokens, const int *targets, int B, int T, fr_loss_info *loss) {
    int rc = forward(m, tokens, targets, B, T, loss, 1);
    return rc == FR_OK ? gemm_status(m, "forward pass") : rc;
}

int fr_model_forward_eval(fr_model *m, const int *tokens, const int *targets, int B, int T, fr_loss_info *loss) {
    int rc = forward(m, tokens, targets, B, T, loss, 0);
    return rc == FR_OK ? gemm_status(m, "forward pass") : rc;
}

const float *fr_model_logits(const fr_model *m) { return m->logits; }

int fr_model_set_distill(fr_model *m, const int32_t *topk_idx, const float *topk_logit, const float *teacher_lse, int k,
                         float temperature, float alpha) {
    fr_clear_error();
    if (!m) return fr_error(FR_ERR_ARG, "fr_model_set_distill: NULL model");
    if (!topk_idx || !topk_logit || !teacher_lse) {
        m->kd_idx = NULL, m->kd_logit = NULL, m->kd_lse = NULL;
        return FR_OK;
    }
    if (!m->ops->host_memory)
        return fr_error(FR_ERR_UNSUPPORTED, "logit distillation runs on the CPU backend only (not on %s)", m->ops->name);
    if (k < 1 || k > m->cfg.vocab_size || !(temperature > 0) || !(alpha >= 0 && alpha <= 1))
        return fr_error(FR_ERR_ARG, "distillation: top-k %d (1..%d), temperature %g (> 0), alpha %g ([0, 1])", k,
                        m->cfg.vocab_size, temperature, alpha);
    m->kd_idx = topk_idx, m->kd_logit = topk_logit, m->kd_lse = teacher_lse, m->kd_k = k;
    m->kd_temperature = temperature, m->kd_alpha = alpha;
    return FR_OK;
}

/* ================================================================ backward */

/* Gradient of the head w.r.t. its input h, ADDED into d_h; lm_head and norm grads accumulate. */
static void head_backward(fr_model *m, float *d_h, const float *dlogits, const float *xn, const float *h,
                          const float *rstd, size_t norm_w, int N) {
    const fr_config *c = &m->cfg;
    const int H = c->hidden_size, V = c->vocab_size;
    if (m->precision == FR_PREC_BF16)
        fr_qlinear_backward(m, m->scr.d_xn, H, 0.0f, G(m->lm_head), H, dlogits, V, xn, H, P(m->lm_head), H, N, H, V);
    else
        fr_linear_backward(m->ops, m->scr.d_xn, H, 0.0f, fr_lora_frozen(m, m->lm_head) ? NULL : G(m->lm_head), H, dlogits,
                           V, xn, H, P(m->lm_head), H, N, H, V);
    m->ops->rmsnorm_backward(d_h, H, G(norm_w), m->scr.d_xn, h, H, P(norm_w), rstd, N, H);
}

static void mtp_backward(fr_model *m, int k, int B, float bal_scale) {
    const fr_config *c = &m->cfg;
    const fr_ops *o = m->ops;
    fr_scratch *s = &m->scr;
    const int H = c->hidden_size;
    fr_mtp_acts *t = &m->mtp[k - 1];
    const fr_block *b = &m->blocks[c->num_hidden_layers + k - 1];
    const int Tk = t->T, Nk = B * Tk;

    /* t->d_res already holds what module k+1 sent back */
    head_backward(m, t->d_res, t->logits, t->head_xn, t->blk.out, t->head_rstd, b->head_norm, Nk);
    fr_block_backward(m, b, &t->blk, B, Tk, t->pos, t->d_res, bal_scale);

    /* eh_proj: t->d_res is now d(x_in) */
    fr_qlinear_backward(m, s->d_en, H, 0.0f, G(b->eh_proj), 2 * H, t->d_res, H, t->en, H, P(b->eh_proj), 2 * H,
                       Nk, H, H);
    fr_qlinear_backward(m, s->d_hn, H, 0.0f, G(b->eh_proj) + H, 2 * H, t->d_res, H, t->hn, H, P(b->eh_proj) + H,
                       2 * H, Nk, H, H);
    /* embedding branch (the main embedding table is shared) */
    o->memset0(s->d_xn, (size_t)Nk * H * sizeof(float));
    o->rmsnorm_backward(s->d_xn, H, G(b->enorm), s->d_en, t->emb, H, P(b->enorm), t->e_rstd, Nk, H);
    o->embedding_backward(G(m->embed), s->d_xn, t->tokens, Nk, H);
    /* previous stream: d(h_prev)[b, i] += d(h_in)[b, i] for i < Tk */
    o->memset0(s->d_xn, (size_t)Nk * H * sizeof(float));
    o->rmsnorm_backward(s->d_xn, H, G(b->hnorm), s->d_hn, t->h_in, H, P(b->hnorm), t->h_rstd, Nk, H);
    float *prev_d = k == 1 ? m->d_res : m->mtp[k - 2].d_res;
    const int Tprev = k == 1 ? m->T : m->mtp[k - 2].T;
    for (int bb = 0; bb < B; bb++)
        o->axpy(prev_d + (size_t)bb * Tprev * H, 1.0f, s->d_xn + (size_t)bb * Tk * H, (size_t)Tk * H);
}

/* grads_ready for the base span [lo, hi): a LoRA model's adapters, at the end of the arena,
 * are announced once the whole backward is done */
static void grads_ready(fr_model *m, size_t lo, size_t hi) {
    if (!m->grads_ready) return;
    if (m->n_lora && hi > m->train_lo) hi = m->train_lo;
    if (hi > lo) m->grads_ready(m->grads_ready_user, lo, hi);
}

int fr_model_backward(fr_model *m) {
    fr_clear_error();
    if (!m) return fr_error(FR_ERR_ARG, "fr_model_backward: NULL model");
    if (!m->have_targets) return fr_error(FR_ERR_STATE, "fr_model_backward needs a forward with targets first");
    const fr_config *c = &m->cfg;
    const fr_ops *o = m->ops;
    const int B = m->B, T = m->T, N = B * T, H = c->hidden_size, L = c->num_hidden_layers;
    const float bal_scale = m->loss_w.balance_alpha > 0 ? m->loss_w.balance_alpha / B : 0.0f;

    o->memset0(m->d_res, (size_t)N * H * sizeof(float));
    head_backward(m, m->d_res, m->dlogits, m->final_xn, m->bacts[L - 1].out, m->final_rstd, m->final_norm, N);

    int D = 0;
    for (int k = 1; k <= m->mtp_depth && k < T; k++) D = k;
    for (int k = 1; k <= D; k++) o->memset0(m->mtp[k - 1].d_res, (size_t)B * (T - k) * H * sizeof(float));
    for (int k = D; k >= 1; k--) mtp_backward(m, k, B, bal_scale);
    /* the MTP blocks, the final norm and an untied head are final now; each main block after its
     * backward; the embedding (and a tied head) at the end */
    grads_ready(m, L < n_blocks(m) ? m->blocks[L].arena_lo : m->final_norm, m->n_params);
    for (int l = L - 1; l >= 0; l--) {
        fr_block_backward(m, &m->blocks[l], &m->bacts[l], B, T, m->pos, m->d_res, bal_scale);
        grads_ready(m, m->blocks[l].arena_lo, l + 1 < n_blocks(m) ? m->blocks[l + 1].arena_lo : m->final_norm);
    }
    o->embedding_backward(G(m->embed), m->d_res, m->tokens, N, H);
    grads_ready(m, 0, m->blocks[0].arena_lo);
    if (m->n_lora && m->grads_ready) /* every block's adapters: final only now */
        m->grads_ready(m->grads_ready_user, m->train_lo, m->n_params);
    m->have_targets = 0;
    return gemm_status(m, "backward pass");
}

void fr_model_zero_grad(fr_model *m) { m->ops->memset0(m->grads, m->n_params * sizeof(float)); }

/* ================================================================ evaluation */

int fr_model_eval_sequences(fr_model *m, int n_seqs, const int *const *seqs, const int *lens, double *mean_loss,
                            long *n_predicted) {
    fr_clear_error();
    if (!m || n_seqs <= 0 || !seqs || !lens || !mean_loss) return fr_error(FR_ERR_ARG, "fr_model_eval_sequences: invalid arguments");
    double total = 0;
    long count = 0;
    for (int s = 0; s < n_seqs; s++) {
        int T = lens[s];
        if (T < 2) return fr_error(FR_ERR_ARG, "sequence %d has %d tokens; at least 2 are needed", s + 1, T);
        int *targets = malloc((size_t)T * sizeof(int));
        if (!targets) return fr_error(FR_ERR_NOMEM, "out of memory");
        for (int t = 0; t < T - 1; t++) targets[t] = seqs[s][t + 1];
        targets[T - 1] = FR_IGNORE_INDEX;
        fr_loss_info li;
        int rc = forward(m, seqs[s], targets, 1, T, &li, 0);
        free(targets);
        if (rc != FR_OK) return fr_error(rc, "sequence %d: %s", s + 1, fr_last_error());
        total += li.loss_main * li.n_targets;
        count += li.n_targets;
    }
    *mean_loss = total / count;
    if (n_predicted) *n_predicted = count;
    return FR_OK;
}

/* ================================================================ accessors, counting */

const fr_config *fr_model_config(const fr_model *m) { return &m->cfg; }
void fr_model_set_loss_weights(fr_model *m, fr_loss_weights w) { m->loss_w = w; }

int fr_model_set_precision(fr_model *m, const char *precision) {
    fr_clear_error();
    if (!m || !precision) return fr_error(FR_ERR_ARG, "fr_model_set_precision: NULL argument");
    if (strcmp(precision, "fp32") == 0) m->precision = FR_PREC_FP32;
    else if (strcmp(precision, "bf16") == 0) m->precision = FR_PREC_BF16;
    else if (strcmp(precision, "fp8") == 0) m->precision = FR_PREC_FP8;
    else return fr_error(FR_ERR_ARG, "unknown precision '%s' (fp32, bf16 or fp8)", precision);
    return FR_OK;
}

const char *fr_model_precision(const fr_model *m) {
    if (!m) return "fp32";
    return m->precision == FR_PREC_BF16 ? "bf16" : m->precision == FR_PREC_FP8 ? "fp8" : "fp32";
}

int fr_model_set_fp8_grad_tiles(fr_model *m, int tile_rows) {
    fr_clear_error();
    if (!m || (tile_rows != 1 && tile_rows != 128))
        return fr_error(FR_ERR_ARG, "FP8 output-gradient tiles are 1 x 128 or 128 x 128 (got %d rows)", tile_rows);
    m->fp8_grad_tile_rows = tile_rows;
    return FR_OK;
}

/* After a forward or backward: the mixed-precision GEMMs ran (their buffers grew) and the FP8
 * GEMMs' inputs were finite. */
static int gemm_status(fr_model *m, const char *pass) {
    if (m->ep_failed) {
        m->ep_failed = 0;
        return fr_error(FR_ERR_IO, "expert-parallel exchange failed in the %s: %s", pass, m->ep_error);
    }
    if (m->precision == FR_PREC_FP32) return FR_OK;
    const long bad = m->fp8_nonfinite;
    const int oom = m->fp8_oom || m->gemm_failed;
    m->fp8_nonfinite = 0;
    m->fp8_oom = 0;
    m->gemm_failed = 0;
    if (oom) return fr_error(FR_ERR_NOMEM, "out of memory for the %s GEMM operands (%s)", fr_model_precision(m), pass);
    if (bad) return fr_error(FR_ERR_STATE, "%ld non-finite values entered the FP8 GEMMs of the %s", bad, pass);
    return FR_OK;
}
int fr_model_num_tensors(const fr_model *m) { return m->n_tensors; }

size_t fr_model_num_params(const fr_model *m) {
    size_t n = 0;
    for (int i = 0; i < m->n_tensors; i++) n += m->tensors[i].numel;
    return n;
}

const fr_tensor *fr_model_find_tensor(const fr_model *m, const char *name) {
    for (int i = 0; i < m->n_tensors; i++)
        if (strcmp(m->tensors[i].name, name) == 0) return &m->tensors[i];
    return NULL;
}

float *fr_model_param(fr_model *m, const char *name, size_t *numel) {
    const fr_tensor *t = fr_model_find_tensor(m, name);
    if (!t) return NULL;
    if (numel) *numel = t->numel;
    return P(t->offset);
}

float *fr_model_grad(fr_model *m, const char *name, size_t *numel) {
    const fr_tensor *t = fr_model_find_tensor(m, name);
    if (!t) return NULL;
    if (numel) *numel = t->numel;
    return G(t->offset);
}

const char *fr_model_tensor_info(const fr_model *m, int i, int *ndim, int64_t shape[4]) {
    if (i < 0 || i >= m->n_tensors) return NULL;
    const fr_tensor *t = &m->tensors[i];
    if (ndim) *ndim = t->ndim;
    if (shape) memcpy(shape, t->shape, sizeof t->shape);
    return t->name;
}

/* matmul parameters one token meets in block b (router and K routed experts for MoE) */
static double block_matmul_params(const fr_config *c, const fr_block *b) {
    const double H = c->hidden_size, nh = c->num_attention_heads;
    const double dqk = c->qk_nope_head_dim + c->qk_rope_head_dim, vd = c->v_head_dim;
    const double kvr = c->kv_lora_rank, rope = c->qk_rope_head_dim, qr = c->q_lora_rank;
    double p = qr > 0 ? H * qr + qr * nh * dqk : H * nh * dqk;
    p += H * (kvr + rope) + kvr * nh * (c->qk_nope_head_dim + vd) + nh * vd * H;
    p += 3.0 * H * b->mlp_inter;
    if (b->is_moe) p += H * c->n_routed_experts + 3.0 * H * c->moe_intermediate_size * c->num_experts_per_tok;
    return p;
}

/* forward FLOPs of causal attention over B sequences of T tokens (scores + weighted sum) */
static double attention_flops(const fr_config *c, int B, int T) {
    double pairs = (double)T * (T + 1) / 2.0;
    return 2.0 * B * pairs * c->num_attention_heads * (c->qk_nope_head_dim + c->qk_rope_head_dim + c->v_head_dim);
}

double fr_model_train_flops(const fr_model *m, int B, int T) {
    const fr_config *c = &m->cfg;
    const double H = c->hidden_size, V = c->vocab_size;
    double fwd = 0;
    for (int l = 0; l < c->num_hidden_layers; l++)
        fwd += 2.0 * B * T * block_matmul_params(c, &m->blocks[l]) + attention_flops(c, B, T);
    fwd += 2.0 * B * T * H * V;
    for (int k = 1; k <= m->mtp_depth && k < T; k++) {
        const fr_block *b = &m->blocks[c->num_hidden_layers + k - 1];
        double Nk = (double)B * (T - k);
        fwd += 2.0 * Nk * (2.0 * H * H + block_matmul_params(c, b) + H * V) + attention_flops(c, B, T - k);
    }
    return 3.0 * fwd; /* backward = 2x forward */
}

size_t fr_model_num_active_params(const fr_model *m) {
    const fr_config *c = &m->cfg;
    size_t total = 0, routed = 0;
    for (int i = 0; i < m->n_tensors; i++) {
        const fr_tensor *t = &m->tensors[i];
        int layer = -1;
        if (sscanf(t->name, "model.layers.%d.", &layer) == 1 && layer >= c->num_hidden_layers) continue; /* MTP */
        total += t->numel;
        if (strstr(t->name, ".mlp.experts.")) routed += t->numel;
    }
    if (c->n_routed_experts > 0)
        total -= routed - routed / c->n_routed_experts * c->num_experts_per_tok;
    return total;
}

/* ================================================================ expert load */

int fr_model_num_moe_blocks(const fr_model *m) {
    int n = 0;
    for (int l = 0; l < n_blocks(m); l++) n += m->blocks[l].is_moe;
    return n;
}

int fr_model_expert_counts(const fr_model *m, long *counts, int *layer_index) {
    if (!m || !counts) return fr_error(FR_ERR_ARG, "fr_model_expert_counts: NULL argument");
    if (!m->bacts) return fr_error(FR_ERR_STATE, "fr_model_expert_counts: no forward pass yet");
    const int E = m->cfg.n_routed_experts, L = m->cfg.num_hidden_layers;
    int i = 0;
    for (int l = 0; l < n_blocks(m); l++) {
        if (!m->blocks[l].is_moe) continue;
        /* MTP blocks only run in a training forward; report zeros otherwise. */
        const int ran = l < L || (m->have_targets && l - L + 1 < m->T);
        const int *off = m->bacts[l].offsets;
        for (int e = 0; e < E; e++) counts[(size_t)i * E + e] = ran ? off[e + 1] - off[e] : 0;
        if (layer_index) layer_index[i] = m->blocks[l].index;
        i++;
    }
    return FR_OK;
}
