/* gguf_export.c — Hugging Face DeepseekV3/V2 folder -> llama.cpp `deepseek2` GGUF (gguf.h).
 *
 * The metadata keys and tensor names are those llama.cpp's loader reads for the deepseek2
 * architecture; docs/interop.md has the full table. In short:
 *   - MLA is presented as MQA with one KV head whose key is the latent (kv_lora_rank) plus
 *     the shared RoPE key, and kv_b_proj is stored split per head: attn_k_b holds the K
 *     part transposed, attn_v_b the V part;
 *   - routed experts are stacked into 3-D tensors, ne = {in, out, n_experts};
 *   - llama.cpp rotates adjacent pairs (DeepSeek's interleaved RoPE); a checkpoint with
 *     rope_interleave = false (rotate_half) gets the RoPE rows of q and kv_a permuted so
 *     that the same pairs rotate together;
 *   - MTP layers (index >= num_hidden_layers) are not exported.
 * Weights are read through the mmap'd safetensors set one tensor at a time. A folder written
 * by `frugal quantize` is read too: its Q8_0 / Q4_1 matrices ("<base>.qweight" + ".scales"
 * [+ ".mins"], no "<base>.weight") are dequantized through formats/qmatrix.h.
 */
#define _GNU_SOURCE
#include "formats/fp8.h"
#include "formats/gguf.h"
#include "formats/kquant.h"
#include "formats/qmatrix.h"
#include "core/internal.h"
#include "formats/safetensors.h"
#include "text/tokenizer_internal.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

typedef enum { SRC_COPY, SRC_ROPE_Q, SRC_ROPE_KV, SRC_K_B, SRC_V_B, SRC_EXPERTS } src_kind;

typedef struct {
    char gguf[64];
    char hf[128];          /* HF name; SRC_EXPERTS: printf format with the expert index */
    src_kind kind;
    int n_dims;
    int64_t ne[3];         /* GGUF dims */
    int64_t rows, cols;    /* HF shape of the source matrix ([n] for 1-D: rows = n, cols = 0) */
    int type;
} plan_entry;

typedef struct {
    const fr_config *c;
    fr_st_set set;
    int br, bc;
    plan_entry *p;
    int n, cap;
    int want;              /* requested weight type */
    fr_gguf_export_stats *st;
} exporter;

/* ------------------------------------------------------------------ types
 * A single ggml type gives every matrix that type. The mixes are ours, in the spirit of
 * llama.cpp's *_K_M: the base K type (Q4_K / Q5_K) everywhere except Q6_K for the output
 * head and, on the first and last eighth of the layers and every third layer between, for the
 * tensors whose errors reach the residual stream directly: attn_v_b (the values) and the
 * down projections (dense, shared and routed experts). `frugal quantize` and the engine's
 * split of a folder's kv_b_proj take their types from here too (gguf.h), so that a folder and
 * a GGUF of one model hold the same blocks. */
static int scheme_type(int scheme, const char *gguf, int n_layers) {
    if (scheme != FR_GGUF_MIX_Q4_K_M && scheme != FR_GGUF_MIX_Q5_K_M) return scheme;
    const int base = scheme == FR_GGUF_MIX_Q4_K_M ? FR_GGML_Q4_K : FR_GGML_Q5_K;
    if (!strcmp(gguf, "output.weight")) return FR_GGML_Q6_K;
    int l, n = 0;
    if (sscanf(gguf, "blk.%d.%n", &l, &n) == 1 && n > 0 &&
        (!strcmp(gguf + n, "attn_v_b.weight") || !strncmp(gguf + n, "ffn_down", 8)) && fr_kmix_more_bits(l, n_layers))
        return FR_GGML_Q6_K;
    return base;
}

int fr_gguf_matrix_type(int scheme, const char *gguf_name, int64_t ne0, int n_layers) {
    if (!fr_gguf_export_type_name(scheme) || !gguf_name || ne0 <= 0) return -1;
    if (strstr(gguf_name, "ffn_gate_inp")) return FR_GGML_F32; /* the router: llama.cpp keeps it F32 */
    int t = scheme_type(scheme, gguf_name, n_layers);
    if (fr_ggml_block_elems(t) == 256 && ne0 % 256) t = FR_GGML_Q8_0;
    if (fr_ggml_block_elems(t) == 32 && ne0 % 32) t = FR_GGML_F16;
    return t;
}

int fr_gguf_hf_matrix_type(int scheme, const char *hf_name, int64_t cols, int n_layers) {
    char gg[64];
    int l, n = 0;
    if (!hf_name) return -1;
    if (!strcmp(hf_name, "model.embed_tokens.weight")) snprintf(gg, sizeof gg, "token_embd.weight");
    else if (!strcmp(hf_name, "lm_head.weight")) snprintf(gg, sizeof gg, "output.weight");
    else if (sscanf(hf_name, "model.layers.%d.%n", &l, &n) == 1 && n > 0 && strstr(hf_name + n, "kv_b_proj")) return -1;
    else if (n > 0 && !strcmp(hf_name + n, "mlp.gate.weight")) snprintf(gg, sizeof gg, "blk.%d.ffn_gate_inp.weight", l);
    else if (n > 0) { /* what tells the rule's tensors apart: a down projection or not */
        const size_t len = strlen(hf_name);
        const int down = len >= 16 && !strcmp(hf_name + len - 16, "down_proj.weight");
        snprintf(gg, sizeof gg, "blk.%d.%s.weight", l, down ? "ffn_down" : "ffn_up");
    } else return -1;
    return fr_gguf_matrix_type(scheme, gg, cols, n_layers);
}

static const struct { const char *name; int type; } EXPORT_TYPES[] = {
    {"F32", FR_GGML_F32}, {"F16", FR_GGML_F16}, {"BF16", FR_GGML_BF16}, {"Q8_0", FR_GGML_Q8_0},
    {"Q4_0", FR_GGML_Q4_0}, {"Q4_K", FR_GGML_Q4_K}, {"Q5_K", FR_GGML_Q5_K}, {"Q6_K", FR_GGML_Q6_K},
    {"Q4_K_M", FR_GGUF_MIX_Q4_K_M}, {"Q5_K_M", FR_GGUF_MIX_Q5_K_M},
};

int fr_gguf_export_type_from_name(const char *name) {
    for (size_t i = 0; name && i < sizeof EXPORT_TYPES / sizeof EXPORT_TYPES[0]; i++)
        if (!strcasecmp(name, EXPORT_TYPES[i].name)) return EXPORT_TYPES[i].type;
    return -1;
}

const char *fr_gguf_export_type_name(int type) {
    for (size_t i = 0; i < sizeof EXPORT_TYPES / sizeof EXPORT_TYPES[0]; i++)
        if (EXPORT_TYPES[i].type == type) return EXPORT_TYPES[i].name;
    return NULL;
}

static int plan_add(exporter *x, const char *gguf, const char *hf, src_kind kind, int64_t rows, int64_t cols, int64_t n_exp) {
    if (x->n == x->cap) {
        int cap = x->cap ? 2 * x->cap : 128;
        plan_entry *p = realloc(x->p, (size_t)cap * sizeof *p);
        if (!p) return fr_error(FR_ERR_NOMEM, "out of memory");
        x->p = p;
        x->cap = cap;
    }
    plan_entry *e = &x->p[x->n++];
    memset(e, 0, sizeof *e);
    snprintf(e->gguf, sizeof e->gguf, "%s", gguf);
    snprintf(e->hf, sizeof e->hf, "%s", hf);
    e->kind = kind;
    e->rows = rows;
    e->cols = cols;
    const fr_config *c = x->c;
    const int nh = c->num_attention_heads, nope = c->qk_nope_head_dim, vd = c->v_head_dim, kvr = c->kv_lora_rank;
    if (cols == 0) {
        e->n_dims = 1;
        e->ne[0] = rows;
    } else if (kind == SRC_K_B) {
        e->n_dims = 3; e->ne[0] = nope; e->ne[1] = kvr; e->ne[2] = nh;
    } else if (kind == SRC_V_B) {
        e->n_dims = 3; e->ne[0] = kvr; e->ne[1] = vd; e->ne[2] = nh;
    } else if (kind == SRC_EXPERTS) {
        e->n_dims = 3; e->ne[0] = cols; e->ne[1] = rows; e->ne[2] = n_exp;
    } else {
        e->n_dims = 2; e->ne[0] = cols; e->ne[1] = rows;
    }
    /* type: 1-D tensors and the router stay F32 (llama.cpp keeps them F32); the rest takes
     * the scheme's type (fr_gguf_matrix_type), and a block type whose block does not divide
     * ne[0] falls back: a K type to Q8_0 (blocks of 32), Q8_0 / Q4_0 to F16 */
    if (e->n_dims == 1 || strstr(gguf, "ffn_gate_inp")) {
        e->type = FR_GGML_F32;
        x->st->n_kept_f32++;
    } else {
        const int want = scheme_type(x->want, gguf, x->c->num_hidden_layers);
        e->type = fr_gguf_matrix_type(x->want, gguf, e->ne[0], x->c->num_hidden_layers);
        if (fr_ggml_block_elems(want) == 256 && e->ne[0] % 256) x->st->n_fallback_q8++;
        if (e->type == FR_GGML_F16 && want != FR_GGML_F16) x->st->n_fallback++;
    }
    return FR_OK;
}

/* Read HF tensor `name` of shape [rows, cols] (cols 0: 1-D) as floats. */
static int read_hf(exporter *x, const char *name, int64_t rows, int64_t cols, float *dst) {
    const fr_st_tensor *s = fr_st_set_find(&x->set, name);
    if (!s && cols > 0) {
        /* stored quantized by `frugal quantize`: dequantize (fr_qmatrix_load checks the parts) */
        const int qt = fr_qmatrix_stored_type(&x->set, name);
        if (qt == FR_QT_Q8_0 || qt == FR_QT_Q4_1 || fr_qtype_is_k((fr_qtype)qt)) {
            if (rows > INT32_MAX || cols > INT32_MAX) return fr_error(FR_ERR_FORMAT, "tensor %s is too large", name);
            fr_qmatrix q;
            FR_CHECK(fr_qmatrix_load(&q, &x->set, name, (int)rows, (int)cols, FR_QT_F32));
            memcpy(dst, q.data, (size_t)rows * (size_t)cols * sizeof *dst);
            fr_qmatrix_free(&q);
            return FR_OK;
        }
    }
    if (!s) return fr_error(FR_ERR_FORMAT, "missing tensor %s", name);
    int nd = cols ? 2 : 1;
    if (s->ndim != nd || s->shape[0] != rows || (nd == 2 && s->shape[1] != cols))
        return fr_error(FR_ERR_FORMAT, "tensor %s has shape [%lld%s%lld], expected [%lld%s%lld]", name, (long long)s->shape[0],
                        s->ndim > 1 ? ", " : "", s->ndim > 1 ? (long long)s->shape[1] : 0LL, (long long)rows,
                        nd > 1 ? ", " : "", nd > 1 ? (long long)cols : 0LL);
    size_t n = (size_t)rows * (size_t)(cols ? cols : 1);
    if (s->dtype == FR_DT_F8_E4M3 || s->dtype == FR_DT_F8_E5M2) {
        char sname[160];
        snprintf(sname, sizeof sname, "%s_scale_inv", name);
        const fr_st_tensor *sc = fr_st_set_find(&x->set, sname);
        if (!sc) return fr_error(FR_ERR_FORMAT, "tensor %s is %s but %s is missing", name, fr_dtype_name(s->dtype), sname);
        return fr_fp8_dequant(s, sc, x->br, x->bc, dst, n);
    }
    return fr_st_to_f32(s, dst, n);
}

/* new row 2i <- old row i, new row 2i+1 <- old row i + d/2, for the d rope rows at `base` */
static void rope_rows_to_pairs(float *w, int64_t base, int d, int64_t cols, float *tmp) {
    memcpy(tmp, w + base * cols, (size_t)d * (size_t)cols * sizeof *tmp);
    for (int i = 0; i < d / 2; i++) {
        memcpy(w + (base + 2 * i) * cols, tmp + (size_t)i * (size_t)cols, (size_t)cols * sizeof *w);
        memcpy(w + (base + 2 * i + 1) * cols, tmp + (size_t)(i + d / 2) * (size_t)cols, (size_t)cols * sizeof *w);
    }
}

/* Produce the GGUF data of plan entry e (numel floats) into dst. */
static int produce(exporter *x, const plan_entry *e, float *dst, float *tmp) {
    const fr_config *c = x->c;
    const int nh = c->num_attention_heads, nope = c->qk_nope_head_dim, rope = c->qk_rope_head_dim;
    const int vd = c->v_head_dim, kvr = c->kv_lora_rank;
    switch (e->kind) {
    case SRC_COPY:
        return read_hf(x, e->hf, e->rows, e->cols, dst);
    case SRC_ROPE_Q:
    case SRC_ROPE_KV:
        FR_CHECK(read_hf(x, e->hf, e->rows, e->cols, dst));
        if (!c->rope_interleave) {
            if (e->kind == SRC_ROPE_KV) rope_rows_to_pairs(dst, kvr, rope, e->cols, tmp);
            else
                for (int h = 0; h < nh; h++) rope_rows_to_pairs(dst, (int64_t)h * (nope + rope) + nope, rope, e->cols, tmp);
        }
        return FR_OK;
    case SRC_K_B:
    case SRC_V_B: {
        /* kv_b_proj [nh * (nope + vd), kvr]: per head, nope rows of K then vd rows of V */
        FR_CHECK(read_hf(x, e->hf, e->rows, e->cols, tmp));
        size_t o = 0;
        for (int h = 0; h < nh; h++) {
            const float *hb = tmp + (size_t)h * (size_t)(nope + vd) * (size_t)kvr;
            if (e->kind == SRC_K_B) { /* [kvr][nope]: transposed K part */
                for (int r = 0; r < kvr; r++)
                    for (int j = 0; j < nope; j++) dst[o++] = hb[(size_t)j * (size_t)kvr + (size_t)r];
            } else { /* [vd][kvr] */
                memcpy(dst + o, hb + (size_t)nope * (size_t)kvr, (size_t)vd * (size_t)kvr * sizeof *dst);
                o += (size_t)vd * (size_t)kvr;
            }
        }
        return FR_OK;
    }
    case SRC_EXPERTS: {
        size_t per = (size_t)e->rows * (size_t)e->cols;
        for (int64_t k = 0; k < e->ne[2]; k++) {
            char name[160];
            snprintf(name, sizeof name, e->hf, (int)k);
            FR_CHECK(read_hf(x, name, e->rows, e->cols, dst + (size_t)k * per));
        }
        return FR_OK;
    }
    }
    return fr_error(FR_ERR_ARG, "bad plan entry");
}

static int build_plan(exporter *x) {
    const fr_config *c = x->c;
    const int64_t H = c->hidden_size, V = c->vocab_size, nh = c->num_attention_heads;
    const int64_t dqk = c->qk_nope_head_dim + c->qk_rope_head_dim, kvr = c->kv_lora_rank, rope = c->qk_rope_head_dim;
    char g[64], h[128];
    FR_CHECK(plan_add(x, "token_embd.weight", "model.embed_tokens.weight", SRC_COPY, V, H, 0));
    for (int l = 0; l < c->num_hidden_layers; l++) {
#define HF(fmt) (snprintf(h, sizeof h, "model.layers.%d." fmt, l), h)
#define GG(fmt) (snprintf(g, sizeof g, "blk.%d." fmt, l), g)
        FR_CHECK(plan_add(x, GG("attn_norm.weight"), HF("input_layernorm.weight"), SRC_COPY, H, 0, 0));
        if (c->q_lora_rank > 0) {
            const int64_t qr = c->q_lora_rank;
            FR_CHECK(plan_add(x, GG("attn_q_a.weight"), HF("self_attn.q_a_proj.weight"), SRC_COPY, qr, H, 0));
            FR_CHECK(plan_add(x, GG("attn_q_a_norm.weight"), HF("self_attn.q_a_layernorm.weight"), SRC_COPY, qr, 0, 0));
            FR_CHECK(plan_add(x, GG("attn_q_b.weight"), HF("self_attn.q_b_proj.weight"), SRC_ROPE_Q, nh * dqk, qr, 0));
        } else {
            FR_CHECK(plan_add(x, GG("attn_q.weight"), HF("self_attn.q_proj.weight"), SRC_ROPE_Q, nh * dqk, H, 0));
        }
        FR_CHECK(plan_add(x, GG("attn_kv_a_mqa.weight"), HF("self_attn.kv_a_proj_with_mqa.weight"), SRC_ROPE_KV, kvr + rope, H, 0));
        FR_CHECK(plan_add(x, GG("attn_kv_a_norm.weight"), HF("self_attn.kv_a_layernorm.weight"), SRC_COPY, kvr, 0, 0));
        const int64_t kvb_rows = nh * (c->qk_nope_head_dim + c->v_head_dim);
        FR_CHECK(plan_add(x, GG("attn_k_b.weight"), HF("self_attn.kv_b_proj.weight"), SRC_K_B, kvb_rows, kvr, 0));
        FR_CHECK(plan_add(x, GG("attn_v_b.weight"), HF("self_attn.kv_b_proj.weight"), SRC_V_B, kvb_rows, kvr, 0));
        FR_CHECK(plan_add(x, GG("attn_output.weight"), HF("self_attn.o_proj.weight"), SRC_COPY, H, nh * c->v_head_dim, 0));
        FR_CHECK(plan_add(x, GG("ffn_norm.weight"), HF("post_attention_layernorm.weight"), SRC_COPY, H, 0, 0));
        if (fr_config_layer_is_moe(c, l)) {
            const int64_t E = c->n_routed_experts, Im = c->moe_intermediate_size, Is = (int64_t)c->n_shared_experts * Im;
            FR_CHECK(plan_add(x, GG("ffn_gate_inp.weight"), HF("mlp.gate.weight"), SRC_COPY, E, H, 0));
            if (c->has_correction_bias)
                FR_CHECK(plan_add(x, GG("exp_probs_b.bias"), HF("mlp.gate.e_score_correction_bias"), SRC_COPY, E, 0, 0));
            snprintf(h, sizeof h, "model.layers.%d.mlp.experts.%%d.gate_proj.weight", l);
            FR_CHECK(plan_add(x, GG("ffn_gate_exps.weight"), h, SRC_EXPERTS, Im, H, E));
            snprintf(h, sizeof h, "model.layers.%d.mlp.experts.%%d.up_proj.weight", l);
            FR_CHECK(plan_add(x, GG("ffn_up_exps.weight"), h, SRC_EXPERTS, Im, H, E));
            snprintf(h, sizeof h, "model.layers.%d.mlp.experts.%%d.down_proj.weight", l);
            FR_CHECK(plan_add(x, GG("ffn_down_exps.weight"), h, SRC_EXPERTS, H, Im, E));
            if (Is > 0) {
                FR_CHECK(plan_add(x, GG("ffn_gate_shexp.weight"), HF("mlp.shared_experts.gate_proj.weight"), SRC_COPY, Is, H, 0));
                FR_CHECK(plan_add(x, GG("ffn_up_shexp.weight"), HF("mlp.shared_experts.up_proj.weight"), SRC_COPY, Is, H, 0));
                FR_CHECK(plan_add(x, GG("ffn_down_shexp.weight"), HF("mlp.shared_experts.down_proj.weight"), SRC_COPY, H, Is, 0));
            }
        } else {
            const int64_t I = c->intermediate_size;
            FR_CHECK(plan_add(x, GG("ffn_gate.weight"), HF("mlp.gate_proj.weight"), SRC_COPY, I, H, 0));
            FR_CHECK(plan_add(x, GG("ffn_up.weight"), HF("mlp.up_proj.weight"), SRC_COPY, I, H, 0));
            FR_CHECK(plan_add(x, GG("ffn_down.weight"), HF("mlp.down_proj.weight"), SRC_COPY, H, I, 0));
        }
#undef HF
#undef GG
    }
    FR_CHECK(plan_add(x, "output_norm.weight", "model.norm.weight", SRC_COPY, H, 0, 0));
    /* llama.cpp's deepseek2 needs output.weight; a tied model gets a copy of the embedding */
    FR_CHECK(plan_add(x, "output.weight", c->tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight",
                      SRC_COPY, V, H, 0));
    return FR_OK;
}

/* ------------------------------------------------------------------ metadata */

static int file_type_of(int t) {
    switch (t) {
    case FR_GGML_F32: return 0;
    case FR_GGML_F16: return 1;
    case FR_GGML_Q4_0: return 2;
    case FR_GGML_Q8_0: return 7;
    case FR_GGML_Q4_K: return 14;  /* llama.cpp's file types: MOSTLY_Q4_K_S */
    case FR_GGUF_MIX_Q4_K_M: return 15;
    case FR_GGML_Q5_K: return 16;  /* MOSTLY_Q5_K_S */
    case FR_GGUF_MIX_Q5_K_M: return 17;
    case FR_GGML_Q6_K: return 18;
    case FR_GGML_BF16: return 32;
    default: return -1;
    }
}

#define K(w, fn, key, v) FR_CHECK(fn(w, "deepseek2." key, v))

static int write_hparams(fr_gguf_writer *w, const fr_config *c, const char *name, int type) {
    FR_CHECK(fr_gguf_set_str(w, "general.architecture", "deepseek2"));
    FR_CHECK(fr_gguf_set_str(w, "general.name", name));
    FR_CHECK(fr_gguf_set_u32(w, "general.file_type", (uint32_t)file_type_of(type)));
    FR_CHECK(fr_gguf_set_u32(w, "general.quantization_version", 2));
    FR_CHECK(fr_gguf_set_u32(w, "general.alignment", FR_GGUF_DEFAULT_ALIGNMENT));
    const int rope = c->qk_rope_head_dim;
    K(w, fr_gguf_set_u32, "vocab_size", (uint32_t)c->vocab_size);
    K(w, fr_gguf_set_u32, "context_length", (uint32_t)(c->max_position_embeddings > 0 ? c->max_position_embeddings : 2048));
    K(w, fr_gguf_set_u32, "embedding_length", (uint32_t)c->hidden_size);
    K(w, fr_gguf_set_u32, "block_count", (uint32_t)c->num_hidden_layers);
    K(w, fr_gguf_set_u32, "feed_forward_length", (uint32_t)c->intermediate_size);
    K(w, fr_gguf_set_u32, "attention.head_count", (uint32_t)c->num_attention_heads);
    K(w, fr_gguf_set_u32, "attention.head_count_kv", 1);
    K(w, fr_gguf_set_f32, "attention.layer_norm_rms_epsilon", c->rms_norm_eps);
    K(w, fr_gguf_set_u32, "attention.q_lora_rank", (uint32_t)c->q_lora_rank);
    K(w, fr_gguf_set_u32, "attention.kv_lora_rank", (uint32_t)c->kv_lora_rank);
    K(w, fr_gguf_set_u32, "attention.key_length", (uint32_t)(c->kv_lora_rank + rope));
    K(w, fr_gguf_set_u32, "attention.value_length", (uint32_t)c->kv_lora_rank);
    K(w, fr_gguf_set_u32, "attention.key_length_mla", (uint32_t)(c->qk_nope_head_dim + rope));
    K(w, fr_gguf_set_u32, "attention.value_length_mla", (uint32_t)c->v_head_dim);
    K(w, fr_gguf_set_u32, "rope.dimension_count", (uint32_t)rope);
    K(w, fr_gguf_set_f32, "rope.freq_base", (float)c->rope_theta);
    if (c->rope_type == FR_ROPE_YARN) {
        K(w, fr_gguf_set_str, "rope.scaling.type", "yarn");
        K(w, fr_gguf_set_f32, "rope.scaling.factor", (float)c->rope_factor);
        K(w, fr_gguf_set_u32, "rope.scaling.original_context_length", (uint32_t)c->rope_original_max_position_embeddings);
        K(w, fr_gguf_set_f32, "rope.scaling.yarn_log_multiplier", (float)(0.1 * c->rope_mscale_all_dim));
    } else {
        K(w, fr_gguf_set_f32, "rope.scaling.yarn_log_multiplier", 0.0f);
    }
    K(w, fr_gguf_set_u32, "leading_dense_block_count",
      (uint32_t)(c->n_routed_experts > 0 ? c->first_k_dense_replace : c->num_hidden_layers));
    K(w, fr_gguf_set_u32, "expert_count", (uint32_t)c->n_routed_experts);
    K(w, fr_gguf_set_u32, "expert_used_count", (uint32_t)c->num_experts_per_tok);
    K(w, fr_gguf_set_u32, "expert_shared_count", (uint32_t)c->n_shared_experts);
    K(w, fr_gguf_set_u32, "expert_feed_forward_length", (uint32_t)c->moe_intermediate_size);
    K(w, fr_gguf_set_f32, "expert_weights_scale", c->routed_scaling_factor);
    K(w, fr_gguf_set_bool, "expert_weights_norm", c->norm_topk_prob);
    K(w, fr_gguf_set_u32, "expert_gating_func", c->scoring_func == FR_SCORING_SIGMOID ? 2u : 1u);
    if (c->topk_method != FR_TOPK_GREEDY && c->n_group > 1) {
        K(w, fr_gguf_set_u32, "expert_group_count", (uint32_t)c->n_group);
        K(w, fr_gguf_set_u32, "expert_group_used_count", (uint32_t)c->topk_group);
    }
    return FR_OK;
}

/* Collect the regexes of a tokenizers pre_tokenizer (Sequence of Split / ByteLevel). */
static void collect_patterns(const cJSON *pt, const char **pats, int *n) {
    if (!cJSON_IsObject(pt) || *n >= 8) return;
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(pt, "type");
    if (!cJSON_IsString(type)) return;
    if (strcmp(type->valuestring, "Sequence") == 0) {
        const cJSON *it;
        cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(pt, "pretokenizers")) collect_patterns(it, pats, n);
    } else if (strcmp(type->valuestring, "Split") == 0) {
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(pt, "pattern");
        const cJSON *r = cJSON_GetObjectItemCaseSensitive(p, "Regex");
        if (!cJSON_IsString(r)) r = cJSON_GetObjectItemCaseSensitive(p, "String");
        pats[(*n)++] = cJSON_IsString(r) ? r->valuestring : "";
    } else if (strcmp(type->valuestring, "ByteLevel") == 0) {
        const cJSON *u = cJSON_GetObjectItemCaseSensitive(pt, "use_regex");
        if (!u || cJSON_IsTrue(u)) pats[(*n)++] = FR_PAT_GPT2;
    } else {
        pats[(*n)++] = type->valuestring;
    }
}

/* llama.cpp's name for the pre-tokenizer (tokenizer.ggml.pre). */
static int pre_name(const fr_tokenizer *tok, const char **out) {
    const cJSON *sk = fr_tokenizer_skeleton(tok);
    const char *pats[8];
    int n = 0;
    collect_patterns(sk ? cJSON_GetObjectItemCaseSensitive(sk, "pre_tokenizer") : NULL, pats, &n);
    if (n == 3 && !strcmp(pats[0], FR_PAT_DSV3_DIGITS) && !strcmp(pats[1], FR_PAT_DSV3_CJK) && !strcmp(pats[2], FR_PAT_DSV3_MAIN))
        *out = "deepseek-v3";
    else if (n == 1 && !strcmp(pats[0], FR_PAT_CL100K))
        *out = "llama-bpe";
    else if (n == 1 && !strcmp(pats[0], FR_PAT_GPT2))
        *out = "gpt-2";
    else
        return fr_error(FR_ERR_UNSUPPORTED,
                        "the tokenizer's pre-tokenizer (%d regex steps) is none of those llama.cpp knows by name "
                        "(DeepSeek-V3, llama-3/cl100k, GPT-2)", n);
    return FR_OK;
}

static int write_tokenizer(fr_gguf_writer *w, const fr_tokenizer *tok, int V) {
    int n_ids = fr_tokenizer_vocab_size(tok);
    if (n_ids > V)
        return fr_error(FR_ERR_FORMAT, "the tokenizer has %d ids but the model's vocab_size is %d", n_ids, V);
    const char *pre = NULL;
    FR_CHECK(pre_name(tok, &pre));
    int rc = FR_OK;
    const char **toks = calloc((size_t)V, sizeof *toks);
    char **pads = calloc((size_t)V, sizeof *pads);
    int32_t *types = calloc((size_t)V, sizeof *types);
    int n_merges = fr_tokenizer_num_merges(tok);
    char **merges = calloc((size_t)n_merges + 1, sizeof *merges);
    if (!toks || !pads || !types || !merges) { rc = fr_error(FR_ERR_NOMEM, "out of memory"); goto done; }
    for (int id = 0; id < V; id++) {
        int kind = id < n_ids ? fr_tokenizer_token_kind(tok, id) : FR_TOKEN_KIND_NONE;
        if (kind == FR_TOKEN_KIND_NONE) {
            /* ids without a token (holes, or rows past the tokenizer): llama.cpp's convention */
            if (asprintf(&pads[id], "[PAD%d]", id) < 0) { pads[id] = NULL; rc = fr_error(FR_ERR_NOMEM, "out of memory"); goto done; }
            toks[id] = pads[id];
            types[id] = 5; /* UNUSED */
        } else {
            toks[id] = fr_tokenizer_id_to_token(tok, id);
            types[id] = kind == FR_TOKEN_KIND_SPECIAL ? 3 : kind == FR_TOKEN_KIND_ADDED ? 4 : 1; /* CONTROL, USER_DEFINED, NORMAL */
        }
    }
    for (int r = 0; r < n_merges; r++) {
        int a, b;
        if ((rc = fr_tokenizer_merge(tok, r, &a, &b)) != FR_OK) goto done;
        if (asprintf(&merges[r], "%s %s", fr_tokenizer_id_to_token(tok, a), fr_tokenizer_id_to_token(tok, b)) < 0) {
            merges[r] = NULL;
            rc = fr_error(FR_ERR_NOMEM, "out of memory");
            goto done;
        }
    }
    if ((rc = fr_gguf_set_str(w, "tokenizer.ggml.model", "gpt2")) != FR_OK) goto done;
    if ((rc = fr_gguf_set_str(w, "tokenizer.ggml.pre", pre)) != FR_OK) goto done;
    if ((rc = fr_gguf_set_arr_str(w, "tokenizer.ggml.tokens", toks, (size_t)V)) != FR_OK) goto done;
    if ((rc = fr_gguf_set_arr_i32(w, "tokenizer.ggml.token_type", types, (size_t)V)) != FR_OK) goto done;
    if ((rc = fr_gguf_set_arr_str(w, "tokenizer.ggml.merges", (const char *const *)merges, (size_t)n_merges)) != FR_OK) goto done;
    static const char *const sp_keys[3] = {"tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                                           "tokenizer.ggml.padding_token_id"};
    for (int k = 0; k < 3; k++) {
        int id = fr_tokenizer_special_id(tok, (fr_special_token)k);
        if (id >= 0 && (rc = fr_gguf_set_u32(w, sp_keys[k], (uint32_t)id)) != FR_OK) goto done;
    }
    const cJSON *cfg = fr_tokenizer_config_json(tok);
    const cJSON *ab = cfg ? cJSON_GetObjectItemCaseSensitive(cfg, "add_bos_token") : NULL;
    const cJSON *ae = cfg ? cJSON_GetObjectItemCaseSensitive(cfg, "add_eos_token") : NULL;
    if ((rc = fr_gguf_set_bool(w, "tokenizer.ggml.add_bos_token", cJSON_IsTrue(ab))) != FR_OK) goto done;
    if ((rc = fr_gguf_set_bool(w, "tokenizer.ggml.add_eos_token", cJSON_IsTrue(ae))) != FR_OK) goto done;
    const char *tmpl = fr_tokenizer_chat_template(tok);
    if (tmpl && *tmpl && (rc = fr_gguf_set_str(w, "tokenizer.chat_template", tmpl)) != FR_OK) goto done;
done:
    if (pads)
        for (int i = 0; i < V; i++) free(pads[i]);
    if (merges)
        for (int i = 0; i < n_merges; i++) free(merges[i]);
    free(pads);
    free(merges);
    free(toks);
    free(types);
    return rc;
}

/* ------------------------------------------------------------------ export */

int fr_gguf_export(const char *model_dir, const char *out_path, int type, fr_gguf_export_stats *stats) {
    fr_clear_error();
    if (!model_dir || !out_path) return fr_error(FR_ERR_ARG, "fr_gguf_export: NULL argument");
    if (!fr_gguf_export_type_name(type))
        return fr_error(FR_ERR_ARG, "GGUF export: type %d is not one of F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K, Q6_K, Q4_K_M, "
                        "Q5_K_M", type);
    fr_gguf_export_stats local;
    if (!stats) stats = &local;
    memset(stats, 0, sizeof *stats);

    char path[4096];
    if ((size_t)snprintf(path, sizeof path, "%s/config.json", model_dir) >= sizeof path)
        return fr_error(FR_ERR_ARG, "path too long: %s", model_dir);
    fr_config cfg;
    FR_CHECK(fr_config_load(&cfg, path));
    if (cfg.n_routed_experts > 0 && cfg.moe_layer_freq != 1)
        return fr_error(FR_ERR_UNSUPPORTED, "GGUF export: moe_layer_freq = %d; llama.cpp's deepseek2 makes every layer after "
                                            "the leading dense ones a MoE layer (moe_layer_freq 1)", cfg.moe_layer_freq);
    exporter x = {.c = &cfg, .want = type, .st = stats};
    {
        char *text = NULL;
        size_t len = 0;
        FR_CHECK(fr_read_file(path, &text, &len));
        /* a folder of `frugal quantize` (quant_method "frugal": BF16 / Q8_0 / Q4_1 tensors,
         * read below) has no FP8 blocks; any other quantization_config goes to the FP8 parser */
        int rc = FR_OK;
        cJSON *root = cJSON_ParseWithLength(text, len);
        const cJSON *qc = root ? cJSON_GetObjectItemCaseSensitive(root, "quantization_config") : NULL;
        const cJSON *qm = cJSON_IsObject(qc) ? cJSON_GetObjectItemCaseSensitive(qc, "quant_method") : NULL;
        if (cJSON_IsString(qm) && strcmp(qm->valuestring, "frugal") == 0) x.br = x.bc = 128;
        else rc = fr_fp8_block_size(text, len, &x.br, &x.bc);
        cJSON_Delete(root);
        free(text);
        FR_CHECK(rc);
    }
    fr_tokenizer *tok = NULL;
    int rc = fr_tokenizer_load(&tok, model_dir);
    if (rc != FR_OK) {
        return fr_error_context(rc, "GGUF export needs the tokenizer");
    }
    fr_gguf_writer *w = NULL;
    float *buf = NULL, *tmp = NULL;
    if ((rc = fr_st_set_open_dir(&x.set, model_dir)) != FR_OK) goto fail;
    for (int k = 0; k < cfg.num_nextn_predict_layers; k++) {
        char name[128];
        snprintf(name, sizeof name, "model.layers.%d.eh_proj.weight", cfg.num_hidden_layers + k);
        if (fr_qmatrix_stored_type(&x.set, name) >= 0) stats->n_mtp_skipped++;
    }
    if ((rc = build_plan(&x)) != FR_OK) goto fail;
    if ((rc = fr_gguf_writer_new(&w)) != FR_OK) goto fail;
    char dirbuf[4096];
    snprintf(dirbuf, sizeof dirbuf, "%s", model_dir);
    size_t dl = strlen(dirbuf);
    while (dl > 1 && dirbuf[dl - 1] == '/') dirbuf[--dl] = 0;
    if ((rc = write_hparams(w, &cfg, basename(dirbuf), type)) != FR_OK) goto fail;
    if ((rc = write_tokenizer(w, tok, cfg.vocab_size)) != FR_OK) goto fail;
    size_t max_n = 0;
    for (int i = 0; i < x.n; i++) {
        plan_entry *e = &x.p[i];
        size_t n = (size_t)e->ne[0] * (size_t)(e->n_dims > 1 ? e->ne[1] : 1) * (size_t)(e->n_dims > 2 ? e->ne[2] : 1);
        size_t src = (size_t)e->rows * (size_t)(e->cols ? e->cols : 1);
        if (n > max_n) max_n = n;
        if (src > max_n) max_n = src;
        if ((rc = fr_gguf_add_tensor(w, e->gguf, e->n_dims, e->ne, e->type)) != FR_OK) goto fail;
    }
    buf = malloc((max_n + 1) * sizeof *buf);
    tmp = malloc((max_n + 1) * sizeof *tmp);
    if (!buf || !tmp) { rc = fr_error(FR_ERR_NOMEM, "out of memory"); goto fail; }
    fr_remove_stale_tmp(out_path, ".tmp."); /* the writer's temporaries (gguf.c) of killed exports */
    if ((rc = fr_gguf_writer_begin(w, out_path)) != FR_OK) goto fail;
    for (int i = 0; i < x.n; i++) {
        plan_entry *e = &x.p[i];
        size_t n = (size_t)e->ne[0] * (size_t)(e->n_dims > 1 ? e->ne[1] : 1) * (size_t)(e->n_dims > 2 ? e->ne[2] : 1);
        if ((rc = produce(&x, e, buf, tmp)) != FR_OK) {
            rc = fr_error_context(rc, "%s", model_dir);
            goto fail;
        }
        if ((rc = fr_gguf_write_tensor_data(w, buf, n)) != FR_OK) goto fail;
    }
    if ((rc = fr_gguf_writer_finish(w)) != FR_OK) goto fail;
    stats->n_tensors = x.n;
    {
        FILE *f = fopen(out_path, "rb");
        if (f) {
            fseek(f, 0, SEEK_END);
            long sz = ftell(f);
            stats->bytes = sz > 0 ? (uint64_t)sz : 0;
            fclose(f);
        }
    }
fail:
    fr_gguf_writer_free(w);
    free(buf);
    free(tmp);
    free(x.p);
    fr_st_set_close(&x.set);
    fr_tokenizer_free(tok);
    return rc;
}
