/*
 * infer.c — the inference engine: weights for generation, the latent KV cache, the batched
 * forward (prefill and decode) and MTP drafting (see docs/inference.md); the decoding loop
 * over them, fr_generate, is generate.c.
 *
 * One forward appends n_i tokens to each of S sequences; the N = sum n_i rows are
 * processed together, so every linear layer is one fr_qmatmul over N rows:
 *
 *   x = Emb(tokens)
 *   per layer:  xn = RMSNorm(x)
 *     q = W_UQ RMSNorm(W_DQ xn)  (or W_Q xn);  q_pe rotated
 *     [c | k_pe] = W_DKV xn;  c = RMSNorm(c);  k_pe rotated   -> written to the cache
 *     q_lat[h] = W_UK[h]^T q_nope[h]                            (absorbed key projection)
 *     a_t = softmax_t(scale * ([q_lat | q_pe] . [c_t | k_pe_t]))  over cached t <= pos
 *     o[h] = W_UV[h] (sum_t a_t c_t)                             (absorbed value projection)
 *     x += W_O o;  x += FFN(RMSNorm(x))      (SwiGLU MLP or DeepSeekMoE)
 *   logits = W_head RMSNorm(x)
 *
 * The same absorbed path serves prefill (many rows per sequence, each attending causally
 * to the cache up to its own position) and decode (one row per sequence), so a prompt may
 * be fed in any split and a speculative step is just a 2-token append.
 */
#define _GNU_SOURCE
#include "infer/engine.h"
#include "model/model_internal.h"
#include "model/ops.h"
#include "cpu/ops_cpu.h"
#include "cpu/qmatmul.h"
#include "formats/safetensors.h"
#include "formats/kquant.h"

#include <math.h>
#include <stdint.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* heads per work item of the many-row attention (its scratch holds this many score rows per thread) */
#define ATT_HEAD_GROUP 4

/* ================================================================ loading */

void fr_engine_options_default(fr_engine_options *o) {
    memset(o, 0, sizeof *o);
    o->weight_type = -1; /* as stored */
    o->kv_type = FR_KV_F32;
    o->load_mtp = 1;
    o->adaptive_threads = 1;
}

static fr_qtype mat_type(const fr_engine *e, int cols) {
    fr_qtype t = (fr_qtype)e->opt.weight_type;
    if (fr_qtype_is_k(t) && cols % FR_QK_K != 0) t = FR_QT_Q8_0; /* as the GGUF export's fallback */
    if ((t == FR_QT_Q8_0 || t == FR_QT_Q4_1) && cols % FR_QBLOCK != 0) return FR_QT_F32;
    return t;
}

/* Under Q4_1 weights a few matrices are held in Q8_0 instead: the output head (its errors
 * go straight into the logits; on the demo model the validation perplexity through the
 * engine was +0.18 % over FP32 with a Q4_1 head, +0.013 % with Q8_0) and W_UK^T (below). */
static fr_qtype sensitive_type(const fr_engine *e, int cols) {
    const fr_qtype t = mat_type(e, cols);
    if (t == FR_QT_Q4_K || t == FR_QT_Q5_K) return FR_QT_Q6_K; /* as the *_K_M mixes */
    return t == FR_QT_Q4_1 ? FR_QT_Q8_0 : t;
}

/* Index of the first NaN or Inf in a stored tensor (F32, F16, BF16, F64, FP8), or SIZE_MAX when
 * every value is finite (integer tensors hold none). One pass over the raw bits: an all-ones
 * exponent field; chunked so the inner loop vectorises and only a chunk with a bad value is
 * scanned again for its index. memcpy loads: a mapped tensor need not be aligned. */
#define SCAN_NONFINITE(T, MASK)                                                       \
    do {                                                                              \
        const unsigned char *p = (const unsigned char *)t->data;                      \
        const size_t n = t->numel;                                                    \
        for (size_t i0 = 0; i0 < n; i0 += 4096) {                                     \
            const size_t i1 = n - i0 > 4096 ? i0 + 4096 : n;                          \
            int bad = 0;                                                              \
            for (size_t i = i0; i < i1; i++) {                                        \
                T v;                                                                  \
                memcpy(&v, p + i * sizeof(T), sizeof(T));                             \
                bad |= (v & (T)(MASK)) == (T)(MASK);                                  \
            }                                                                         \
            if (bad)                                                                  \
                for (size_t i = i0; i < i1; i++) {                                    \
                    T v;                                                              \
                    memcpy(&v, p + i * sizeof(T), sizeof(T));                         \
                    if ((v & (T)(MASK)) == (T)(MASK)) return i;                       \
                }                                                                     \
        }                                                                             \
    } while (0)

static size_t first_nonfinite(const fr_st_tensor *t) {
    switch (t->dtype) {
    case FR_DT_F32: SCAN_NONFINITE(uint32_t, 0x7f800000u); break;
    case FR_DT_F16: SCAN_NONFINITE(uint16_t, 0x7c00u); break;
    case FR_DT_BF16: SCAN_NONFINITE(uint16_t, 0x7f80u); break;
    case FR_DT_F64: SCAN_NONFINITE(uint64_t, 0x7ff0000000000000ull); break;
    case FR_DT_F8_E4M3: SCAN_NONFINITE(uint8_t, 0x7fu); break; /* e4m3fn: only NaN (S.1111.111) */
    case FR_DT_F8_E5M2: SCAN_NONFINITE(uint8_t, 0x7cu); break;
    default: break;
    }
    return SIZE_MAX;
}
#undef SCAN_NONFINITE

static int check_tensor_finite(const fr_st_tensor *t, const char *name) {
    const size_t bad = first_nonfinite(t);
    if (bad == SIZE_MAX) return FR_OK;
    if (t->ndim == 2 && t->shape[1] > 0)
        return fr_error(FR_ERR_FORMAT, "tensor %s holds a non-finite value (NaN or Inf) at index %zu (row %zu, column %zu)",
                        name, bad, bad / (size_t)t->shape[1], bad % (size_t)t->shape[1]);
    return fr_error(FR_ERR_FORMAT, "tensor %s holds a non-finite value (NaN or Inf) at index %zu", name, bad);
}

/* The load-time check of weight `name` (fr_engine_options.no_check skips it): the float tensor
 * itself, or for a matrix stored quantized by `frugal quantize` its scales and minima (the
 * integer quants cannot be non-finite). Absent tensors are left to the loaders' messages. */

int fr_engine_check_weight(const fr_engine *e, const fr_st_set *st, const char *name) {
    if (e->opt.no_check) return FR_OK;
    if (e->gg) {
        fr_gguf_view v;
        return fr_engine_gguf_view(e, name, &v);
    }
    const fr_st_tensor *t = fr_st_set_find(st, name);
    if (t) return check_tensor_finite(t, name);
    static const char *const parts[] = {"scales", "mins"};
    for (int k = 0; k < 2; k++) {
        char pn[1024];
        if (fr_qmatrix_tensor_name(pn, sizeof pn, name, parts[k]) != 0) continue;
        const fr_st_tensor *q = fr_st_set_find(st, pn);
        if (q) FR_CHECK(check_tensor_finite(q, pn));
    }
    return FR_OK;
}

static int load_mat_as(fr_engine *e, fr_qmatrix *m, const fr_st_set *st, const char *name, int rows, int cols,
                       fr_qtype want) {
    if (e->gg) {
        fr_gguf_view v;
        FR_CHECK(fr_engine_gguf_view(e, name, &v));
        if (v.rows != rows || v.cols != cols)
            return fr_error(FR_ERR_FORMAT, "tensor %s (GGUF %s) is %lld x %lld, expected %d x %d", name, v.t->name,
                            (long long)v.rows, (long long)v.cols, rows, cols);
        int rc = fr_qmatrix_from_ggml(m, v.type, v.data, rows, cols, e->as_stored ? -1 : (int)want);
        if (rc == FR_OK) rc = fr_engine_own_matrix(m, name);
        return rc == FR_OK ? FR_OK : fr_error_context(rc, "%s", name);
    }
    FR_CHECK(fr_engine_check_weight(e, st, name));
    if (e->folder_stored) { /* a quantized matrix of the folder as stored (a mix holds several formats) */
        const int stored = fr_qmatrix_stored_type(st, name);
        if (stored > FR_QT_BF16) want = (fr_qtype)stored;
    }
    const fr_st_tensor *t = e->map_weights ? fr_st_set_find(st, name) : NULL;
    if (t && t->ndim == 2 && t->shape[0] == rows && t->shape[1] == cols &&
        ((want == FR_QT_F32 && t->dtype == FR_DT_F32) || (want == FR_QT_BF16 && t->dtype == FR_DT_BF16))) {
        fr_qmatrix_wrap(m, want, (void *)t->data, rows, cols); /* not owned: lives in the mapping */
        return FR_OK;
    }
    return fr_qmatrix_load(m, st, name, rows, cols, want);
}

static int load_mat(fr_engine *e, fr_qmatrix *m, const fr_st_set *st, const char *name, int rows, int cols) {
    return load_mat_as(e, m, st, name, rows, cols, mat_type(e, cols));
}

/* pool: a matrix read at every decoded token (the router's), placed among the weights in reading
 * order on huge pages (fr_alloc_weights); else ordinary memory */
static int load_floats(const fr_engine *e, const fr_st_set *st, const char *name, size_t numel, float **out, int pool) {
    *out = NULL;
    if (e->gg) {
        fr_gguf_view v;
        FR_CHECK(fr_engine_gguf_view(e, name, &v));
        if ((size_t)(v.rows * v.cols) != numel)
            return fr_error(FR_ERR_FORMAT, "tensor %s (GGUF %s) has %lld values, expected %zu", name, v.t->name,
                            (long long)(v.rows * v.cols), numel);
        float *p = pool ? fr_alloc_weights(numel * sizeof(float)) : fr_alloc(numel * sizeof(float));
        if (!p) return fr_error(FR_ERR_NOMEM, "out of memory loading %s", name);
        const int rc = fr_ggml_dequantize(v.type, v.data, p, numel);
        if (rc != FR_OK) { fr_free(p); return fr_error_context(rc, "%s", name); }
        *out = p;
        return FR_OK;
    }
    const fr_st_tensor *t = fr_st_set_find(st, name);
    if (!t) return fr_error(FR_ERR_FORMAT, "tensor %s is missing from the checkpoint", name);
    if (t->numel != numel) return fr_error(FR_ERR_FORMAT, "tensor %s has %zu values, expected %zu", name, t->numel, numel);
    FR_CHECK(fr_engine_check_weight(e, st, name));
    float *p = pool ? fr_alloc_weights(numel * sizeof(float)) : fr_alloc(numel * sizeof(float));
    if (!p) return fr_error(FR_ERR_NOMEM, "out of memory loading %s", name);
    int rc = fr_st_to_f32(t, p, numel);
    if (rc != FR_OK) { fr_free(p); return rc; }
    *out = p;
    return FR_OK;
}

static int load_vec(const fr_engine *e, const fr_st_set *st, const char *name, size_t numel, float **out) {
    return load_floats(e, st, name, numel, out, 0);
}

/* A GGUF's embedding table stays in the mapping, in its own type: a token's row is decoded when
 * it is looked up (the same values as decoding the whole table at load). Decoded at load, the
 * table took V x H x 4 bytes of memory of its own (131 MB for a 32,000 x 1,024 model, 3.7 GB for
 * DeepSeek-V3's) beside a file that holds it in a quarter or an eighth of that. */
static int gguf_embedding(fr_engine *e, const char *name, int V, int H) {
    fr_gguf_view v;
    FR_CHECK(fr_engine_gguf_view(e, name, &v));
    if (v.rows != V || v.cols != H)
        return fr_error(FR_ERR_FORMAT, "tensor %s (GGUF %s) is %lld x %lld, expected %d x %d", name, v.t->name,
                        (long long)v.rows, (long long)v.cols, V, H);
    const int block = fr_ggml_block_elems(v.type);
    if (block <= 0 || H % block) return load_vec(e, NULL, name, (size_t)V * H, &e->embed); /* rows not whole blocks */
    float *row0 = malloc((size_t)H * sizeof(float)); /* a type this build cannot decode fails here, not at a lookup */
    const int rc = row0 ? fr_ggml_dequantize(v.type, v.data, row0, (size_t)H) : fr_error(FR_ERR_NOMEM, "out of memory");
    free(row0);
    if (rc != FR_OK) return fr_error_context(rc, "%s", name);
    e->embed_rows = v.data;
    e->embed_row_bytes = (size_t)(H / block) * fr_ggml_block_bytes(v.type);
    e->embed_type = v.type;
    return FR_OK;
}

/* x[N, H] = the embedding rows of e->tok */
static void embed_tokens(fr_engine *e, float *x, int N) {
    const int H = e->cfg.hidden_size;
    if (e->embed) {
        e->ops->embedding_forward(x, e->embed, e->tok, N, H);
        return;
    }
    for (int i = 0; i < N; i++) /* (a type and row length that gguf_embedding decoded once) */
        (void)fr_ggml_dequantize(e->embed_type, e->embed_rows + (size_t)e->tok[i] * e->embed_row_bytes,
                                 x + (size_t)i * H, (size_t)H);
}

#define NAME(...) (snprintf(name, sizeof name, __VA_ARGS__), name)


/* kv_b_proj [nh*(nope+vd), kvr] of a checkpoint (or an older GGUF) split per head: rows
 * [h*(nope+vd), +nope) = W_UK[h], the next vd rows = W_UV[h]. W_UK is stored transposed for
 * the absorbed query. Read as FP32 whatever its storage (float, or Q8_0 / Q4_1 from
 * `frugal quantize`). */
static int load_joint_kv_b(fr_engine *e, eng_layer *ly, const fr_st_set *st, int index) {
    const fr_config *c = &e->cfg;
    const int nh = c->num_attention_heads, nope = c->qk_nope_head_dim, vd = c->v_head_dim, kvr = c->kv_lora_rank;
    const char *pre = "model.layers.";
    char name[160];
    fr_qmatrix kvb_m;
    const char *kvb_name = NAME("%s%d.self_attn.kv_b_proj.weight", pre, index);
    const int as_stored = e->as_stored, folder_stored = e->folder_stored;
    e->as_stored = e->folder_stored = 0; /* FP32 whatever the storage (the unsplit kv_b of an older GGUF too) */
    int rc0 = load_mat_as(e, &kvb_m, st, kvb_name, nh * (nope + vd), kvr, FR_QT_F32);
    e->as_stored = as_stored, e->folder_stored = folder_stored;
    FR_CHECK(rc0);
    const float *kvb = (const float *)kvb_m.data;
    /* W_UK^T has its blocks along qk_nope, not along kv_lora_rank as stored: requantizing a
     * 4-bit matrix across other blocks would round it twice. A folder in a GGUF scheme takes
     * the types and blocks of that GGUF's attn_k_b / attn_v_b. */
    const fr_qtype uk_type = sensitive_type(e, nope);
    char kn[64], vn[64];
    snprintf(kn, sizeof kn, "blk.%d.attn_k_b.weight", index);
    snprintf(vn, sizeof vn, "blk.%d.attn_v_b.weight", index);
    const int uk_g = e->scheme >= 0 ? fr_gguf_matrix_type(e->scheme, kn, nope, c->num_hidden_layers) : -1;
    const int uv_g = e->scheme >= 0 ? fr_gguf_matrix_type(e->scheme, vn, kvr, c->num_hidden_layers) : -1;
    ly->uk_t = calloc((size_t)nh, sizeof(fr_qmatrix));
    ly->uv = calloc((size_t)nh, sizeof(fr_qmatrix));
    float *tr = malloc((size_t)kvr * nope * sizeof(float));
    int rc = ly->uk_t && ly->uv && tr ? FR_OK : fr_error(FR_ERR_NOMEM, "out of memory");
    /* every head's W_UK^T, then every head's W_UV: each kind one run of memory (load_layer) */
    for (int h = 0; h < nh && rc == FR_OK; h++) {
        const float *wk = kvb + (size_t)h * (nope + vd) * kvr;
        for (int i = 0; i < nope; i++)
            for (int j = 0; j < kvr; j++) tr[(size_t)j * nope + i] = wk[(size_t)i * kvr + j];
        rc = uk_g >= 0 ? fr_qmatrix_from_f32_ggml(&ly->uk_t[h], uk_g, tr, kvr, nope)
                       : fr_qmatrix_from_f32(&ly->uk_t[h], uk_type, tr, kvr, nope);
    }
    for (int h = 0; h < nh && rc == FR_OK; h++) {
        const float *wv = kvb + (size_t)h * (nope + vd) * kvr + (size_t)nope * kvr;
        rc = uv_g >= 0 ? fr_qmatrix_from_f32_ggml(&ly->uv[h], uv_g, wv, vd, kvr)
                       : fr_qmatrix_from_f32(&ly->uv[h], mat_type(e, kvr), wv, vd, kvr);
    }
    free(tr);
    fr_qmatrix_free(&kvb_m);
    return rc;
}

static int load_layer(fr_engine *e, eng_layer *ly, const fr_st_set *st, int index, int is_mtp) {
    const fr_config *c = &e->cfg;
    const int H = c->hidden_size, nh = c->num_attention_heads, nope = c->qk_nope_head_dim;
    const int rope = c->qk_rope_head_dim, dqk = nope + rope, vd = c->v_head_dim;
    const int kvr = c->kv_lora_rank, qr = c->q_lora_rank;
    char name[160];
    const char *pre = "model.layers.";
    ly->index = index;
    ly->is_moe = fr_config_layer_is_moe(c, index);
    if (is_mtp) {
        FR_CHECK(load_vec(e, st, NAME("%s%d.enorm.weight", pre, index), H, &ly->enorm));
        FR_CHECK(load_vec(e, st, NAME("%s%d.hnorm.weight", pre, index), H, &ly->hnorm));
        FR_CHECK(load_vec(e, st, NAME("%s%d.shared_head.norm.weight", pre, index), H, &ly->head_norm));
        FR_CHECK(load_mat(e, &ly->eh_proj, st, NAME("%s%d.eh_proj.weight", pre, index), H, 2 * H));
    }
    FR_CHECK(load_vec(e, st, NAME("%s%d.input_layernorm.weight", pre, index), H, &ly->input_norm));
    FR_CHECK(load_vec(e, st, NAME("%s%d.post_attention_layernorm.weight", pre, index), H, &ly->post_norm));
    /* Matrices are loaded (and so laid out in the weight pool, fr_alloc_weights) in the order a
     * decoded token reads them, so that one product's stream runs on into the next: the
     * prefetchers need not start afresh at each of a layer's small matrices. */
    if (qr > 0) {
        FR_CHECK(load_mat(e, &ly->q_a, st, NAME("%s%d.self_attn.q_a_proj.weight", pre, index), qr, H));
        FR_CHECK(load_vec(e, st, NAME("%s%d.self_attn.q_a_layernorm.weight", pre, index), qr, &ly->q_a_norm));
    } else {
        FR_CHECK(load_mat(e, &ly->q, st, NAME("%s%d.self_attn.q_proj.weight", pre, index), nh * dqk, H));
    }
    FR_CHECK(load_mat(e, &ly->kv_a, st, NAME("%s%d.self_attn.kv_a_proj_with_mqa.weight", pre, index), kvr + rope, H));
    FR_CHECK(load_vec(e, st, NAME("%s%d.self_attn.kv_a_layernorm.weight", pre, index), kvr, &ly->kv_a_norm));
    if (qr > 0) FR_CHECK(load_mat(e, &ly->q_b, st, NAME("%s%d.self_attn.q_b_proj.weight", pre, index), nh * dqk, qr));
    char gk[64];
    snprintf(gk, sizeof gk, "blk.%d.attn_k_b.weight", index);
    if (e->gg && fr_gguf_find_tensor(e->gg, gk)) FR_CHECK(fr_engine_gguf_kv_b(e, ly, index, sensitive_type(e, c->qk_nope_head_dim), mat_type(e, c->kv_lora_rank)));
    else FR_CHECK(load_joint_kv_b(e, ly, st, index));
    FR_CHECK(load_mat(e, &ly->o, st, NAME("%s%d.self_attn.o_proj.weight", pre, index), H, nh * vd));

    if (ly->is_moe) {
        const int E = c->n_routed_experts, Im = c->moe_intermediate_size;
        FR_CHECK(load_floats(e, st, NAME("%s%d.mlp.gate.weight", pre, index), (size_t)E * H, &ly->router, 1));
        if (c->has_correction_bias)
            FR_CHECK(load_vec(e, st, NAME("%s%d.mlp.gate.e_score_correction_bias", pre, index), E, &ly->router_bias));
        ly->exp_gate = calloc((size_t)E, sizeof(fr_qmatrix));
        ly->exp_up = calloc((size_t)E, sizeof(fr_qmatrix));
        ly->exp_down = calloc((size_t)E, sizeof(fr_qmatrix));
        if (!ly->exp_gate || !ly->exp_up || !ly->exp_down) return fr_error(FR_ERR_NOMEM, "out of memory");
        for (int x = 0; x < E; x++) {
            FR_CHECK(load_mat(e, &ly->exp_gate[x], st, NAME("%s%d.mlp.experts.%d.gate_proj.weight", pre, index, x), Im, H));
            FR_CHECK(load_mat(e, &ly->exp_up[x], st, NAME("%s%d.mlp.experts.%d.up_proj.weight", pre, index, x), Im, H));
            FR_CHECK(load_mat(e, &ly->exp_down[x], st, NAME("%s%d.mlp.experts.%d.down_proj.weight", pre, index, x), H, Im));
        }
        if (c->n_shared_experts > 0) {
            int Is = c->n_shared_experts * Im;
            ly->mlp_inter = Is;
            FR_CHECK(load_mat(e, &ly->mlp_gate, st, NAME("%s%d.mlp.shared_experts.gate_proj.weight", pre, index), Is, H));
            FR_CHECK(load_mat(e, &ly->mlp_up, st, NAME("%s%d.mlp.shared_experts.up_proj.weight", pre, index), Is, H));
            FR_CHECK(load_mat(e, &ly->mlp_down, st, NAME("%s%d.mlp.shared_experts.down_proj.weight", pre, index), H, Is));
        }
    } else {
        int I = c->intermediate_size;
        ly->mlp_inter = I;
        FR_CHECK(load_mat(e, &ly->mlp_gate, st, NAME("%s%d.mlp.gate_proj.weight", pre, index), I, H));
        FR_CHECK(load_mat(e, &ly->mlp_up, st, NAME("%s%d.mlp.up_proj.weight", pre, index), I, H));
        FR_CHECK(load_mat(e, &ly->mlp_down, st, NAME("%s%d.mlp.down_proj.weight", pre, index), H, I));
    }
    return FR_OK;
}

static void free_layer(const fr_config *c, eng_layer *ly) {
    fr_free(ly->input_norm); fr_free(ly->post_norm); fr_free(ly->q_a_norm); fr_free(ly->kv_a_norm);
    fr_free(ly->router); fr_free(ly->router_bias);
    fr_free(ly->enorm); fr_free(ly->hnorm); fr_free(ly->head_norm);
    fr_qmatrix_free(&ly->q_a); fr_qmatrix_free(&ly->q_b); fr_qmatrix_free(&ly->q);
    fr_qmatrix_free(&ly->kv_a); fr_qmatrix_free(&ly->o); fr_qmatrix_free(&ly->eh_proj);
    fr_qmatrix_free(&ly->mlp_gate); fr_qmatrix_free(&ly->mlp_up); fr_qmatrix_free(&ly->mlp_down);
    for (int h = 0; h < c->num_attention_heads; h++) {
        if (ly->uk_t) fr_qmatrix_free(&ly->uk_t[h]);
        if (ly->uv) fr_qmatrix_free(&ly->uv[h]);
    }
    free(ly->uk_t);
    free(ly->uv);
    for (int x = 0; x < c->n_routed_experts; x++) {
        if (ly->exp_gate) fr_qmatrix_free(&ly->exp_gate[x]);
        if (ly->exp_up) fr_qmatrix_free(&ly->exp_up[x]);
        if (ly->exp_down) fr_qmatrix_free(&ly->exp_down[x]);
    }
    free(ly->exp_gate); free(ly->exp_up); free(ly->exp_down);
}

static void free_workspace(fr_engine *e) {
    float **f[] = {&e->x, &e->xn, &e->rstd, &e->tmp, &e->qa, &e->qan, &e->q, &e->kva, &e->kvn, &e->qn, &e->qlat,
                   &e->qf, &e->ctx, &e->atth, &e->att, &e->g, &e->u, &e->h, &e->rl, &e->scores, &e->topw, &e->xe,
                   &e->ge, &e->ue, &e->he, &e->ye, &e->ffn, &e->cat, &e->hid, &e->lrow};
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) { fr_free(*f[i]); *f[i] = NULL; }
    int **n[] = {&e->topi, &e->perm, &e->slot, &e->offsets, &e->pos, &e->seq_of, &e->tok};
    for (size_t i = 0; i < sizeof n / sizeof n[0]; i++) { fr_free(*n[i]); *n[i] = NULL; }
    fr_free(e->jobs);
    e->jobs = NULL;
    e->cap = 0;
}

/* Size the workspace for N rows. */
static int reserve(fr_engine *e, int N) {
    if (N <= e->cap) return FR_OK;
    free_workspace(e);
    const fr_config *c = &e->cfg;
    const size_t n = (size_t)N, H = c->hidden_size, nh = c->num_attention_heads;
    const size_t nope = c->qk_nope_head_dim, rope = c->qk_rope_head_dim, dqk = nope + rope;
    const size_t vd = c->v_head_dim, kvr = c->kv_lora_rank, qr = c->q_lora_rank > 0 ? c->q_lora_rank : 1;
    const size_t E = c->n_routed_experts > 0 ? c->n_routed_experts : 1, K = c->num_experts_per_tok > 0 ? c->num_experts_per_tok : 1;
    const size_t Im = c->moe_intermediate_size > 0 ? c->moe_intermediate_size : 1;
    size_t inter = c->intermediate_size;
    if ((size_t)c->n_shared_experts * Im > inter) inter = (size_t)c->n_shared_experts * Im;
    const size_t row = e->row, V = c->vocab_size;
    struct { float **p; size_t n; } f[] = {
        {&e->x, n * H}, {&e->xn, n * H}, {&e->rstd, n}, {&e->tmp, n * H}, {&e->qa, n * qr}, {&e->qan, n * qr},
        {&e->q, n * nh * dqk}, {&e->kva, n * row}, {&e->kvn, n * kvr}, {&e->qn, n * nh * nope},
        {&e->qlat, n * nh * kvr}, {&e->qf, n * nh * row}, {&e->ctx, n * nh * kvr}, {&e->atth, n * nh * vd},
        {&e->att, n * nh * vd}, {&e->g, n * inter}, {&e->u, n * inter}, {&e->h, n * inter}, {&e->rl, n * E},
        {&e->scores, n * E}, {&e->topw, n * K}, {&e->xe, n * K * H}, {&e->ge, n * K * Im}, {&e->ue, n * K * Im},
        {&e->he, n * K * Im}, {&e->ye, n * K * H}, {&e->ffn, n * H}, {&e->cat, n * 2 * H}, {&e->hid, n * H},
        {&e->lrow, V}};
    /* on a device the float workspace is the backend's (engine_device.c); the host keeps the
     * rows' tokens, positions and sequences, and the experts' offsets */
    for (size_t i = 0; i < sizeof f / sizeof f[0] && !e->dev; i++)
        if (!(*f[i].p = fr_alloc(f[i].n * sizeof(float)))) goto oom;
    struct { int **p; size_t n; } g[] = {{&e->topi, n * K}, {&e->perm, n * K}, {&e->slot, n * K},
                                         {&e->offsets, E + 1}, {&e->pos, n}, {&e->seq_of, n}, {&e->tok, n}};
    for (size_t i = 0; i < sizeof g / sizeof g[0]; i++)
        if (!(*g[i].p = fr_alloc(g[i].n * sizeof(int)))) goto oom;
    if (!(e->jobs = fr_alloc((2 * E + 2 > nh ? 2 * E + 2 : nh) * sizeof(fr_qmatmul_job)))) goto oom;
    if (e->dev && fr_dev_engine_reserve(e, N) != FR_OK) {
        free_workspace(e);
        return fr_error_context(FR_ERR_NOMEM, "the inference workspace (%d rows) on %s", N, e->ops->name);
    }
    e->cap = N;
    return FR_OK;
oom:
    free_workspace(e);
    return fr_error(FR_ERR_NOMEM, "out of memory for the inference workspace (%d rows)", N);
}

void fr_engine_free(fr_engine *e) {
    if (!e) return;
    if (e->layers)
        for (int l = 0; l < e->L + e->mtp; l++) free_layer(&e->cfg, &e->layers[l]);
    free(e->layers);
    fr_free(e->embed);
    fr_free(e->final_norm);
    fr_qmatrix_free(&e->lm_head);
    free(e->rope_cos);
    free(e->rope_sin);
    free_workspace(e);
    fr_free(e->att_scratch);
    fr_free(e->att_heads);
    fr_free(e->deq);
    fr_free(e->kblock);
    fr_dev_engine_free(e);
    if (e->mapped) fr_st_set_close(&e->st);
    if (e->gg == &e->gguf) fr_gguf_close(&e->gguf);
    free(e);
}

static size_t kv_value_bytes(fr_kv_type t) { return t == FR_KV_F32 ? 4 : t == FR_KV_BF16 ? 2 : 1; }

int fr_engine_build(fr_engine **out, const fr_config *cfg_in, const fr_st_set *st, const fr_gguf *gg,
                    const fr_engine_options *opt, const char *what, int map, int scheme) {
    *out = NULL;
    fr_engine_options o;
    if (opt) o = *opt;
    else fr_engine_options_default(&o);
    /* fr_set_device's backend: a device engine (engine_device.c) holds FP32 weights and an
     * FP32 cache; the block formats and the BF16 / FP8 caches are the CPU kernels' */
    const fr_ops *dops = fr_device_ops();
    if (!dops->host_memory) {
        if (o.weight_type != -1 && o.weight_type != FR_QT_F32)
            return fr_error(FR_ERR_UNSUPPORTED, "on %s the engine holds FP32 weights (--weights %s runs on the CPU)",
                            dops->name, fr_weight_type_name(o.weight_type) ? fr_weight_type_name(o.weight_type) : "?");
        if (o.kv_type != FR_KV_F32)
            return fr_error(FR_ERR_UNSUPPORTED, "on %s the KV cache is FP32 (BF16 and FP8 caches run on the CPU)",
                            dops->name);
        o.weight_type = FR_QT_F32;
    }
    const int as_stored = gg && o.weight_type == -1, folder_stored = !gg && st && o.weight_type == -1;
    if (as_stored) {
        /* a GGUF as stored: each matrix in its own format; reported is the format of the first
         * layer's output projection */
        const fr_gguf_tensor *t = fr_gguf_find_tensor(gg, "blk.0.attn_output.weight");
        const int gt = t ? t->type : FR_GGML_F32;
        o.weight_type = gt == FR_GGML_Q8_0 ? FR_QT_Q8_0 : gt == FR_GGML_Q4_0 || gt == FR_GGML_Q4_1 ? FR_QT_Q4_1
                      : gt == FR_GGML_Q4_K ? FR_QT_Q4_K : gt == FR_GGML_Q5_K ? FR_QT_Q5_K : gt == FR_GGML_Q6_K ? FR_QT_Q6_K
                      : gt == FR_GGML_BF16 ? FR_QT_BF16 : FR_QT_F32;
    }
    if (o.weight_type == -1) {
        /* as stored: the format of the first layer's output projection (a folder written by
         * `frugal quantize` holds one format for all its linear layers) */
        const int t = fr_qmatrix_stored_type(st, "model.layers.0.self_attn.o_proj.weight");
        o.weight_type = t == FR_QT_BF16 || t == FR_QT_Q8_0 || t == FR_QT_Q4_1 || fr_qtype_is_k((fr_qtype)t) ? t : FR_QT_F32;
    }
    if (o.weight_type < 0 || o.weight_type >= FR_QT_COUNT)
        return fr_error(FR_ERR_ARG, "unknown weight type %d", o.weight_type);
    if (o.kv_type != FR_KV_F32 && o.kv_type != FR_KV_BF16 && o.kv_type != FR_KV_FP8)
        return fr_error(FR_ERR_ARG, "unknown KV-cache type %d", (int)o.kv_type);
    if (o.max_seq_len < 0) return fr_error(FR_ERR_ARG, "max_seq_len must be >= 0 (got %d)", o.max_seq_len);
    if (o.threads > 0) fr_set_num_threads(o.threads);
    const fr_config cfg = *cfg_in;
    FR_CHECK(fr_config_validate(&cfg));
    if (cfg.qk_rope_head_dim / 2 > 512) return fr_error(FR_ERR_UNSUPPORTED, "qk_rope_head_dim > 1024 is not supported");

    fr_engine *e = calloc(1, sizeof *e);
    if (!e) return fr_error(FR_ERR_NOMEM, "out of memory");
    e->map_weights = map;
    e->gg = gg;
    e->as_stored = as_stored;
    e->folder_stored = folder_stored;
    e->scheme = folder_stored ? scheme : -1;
    e->cfg = cfg;
    e->opt = o;
    e->ops = dops->host_memory ? fr_ops_cpu() : dops;
    e->L = cfg.num_hidden_layers;
    e->row = cfg.kv_lora_rank + cfg.qk_rope_head_dim;
    e->row_bytes = (size_t)e->row * kv_value_bytes(o.kv_type) + (o.kv_type == FR_KV_FP8 ? 4 : 0);
    e->max_len = o.max_seq_len > 0 ? o.max_seq_len : (cfg.max_position_embeddings > 0 ? cfg.max_position_embeddings : 2048);
    e->scale = fr_attention_scale(&cfg);

    int rc = FR_OK;
    char name[160];
    /* MTP module 1, found by its eh_proj in any storage (a folder of `frugal quantize` holds
     * "<base>.qweight" / "<base>.q4_k" ... instead of "<base>.weight") */
    if (o.load_mtp && cfg.num_nextn_predict_layers >= 1 && st &&
        fr_qmatrix_stored_type(st, NAME("model.layers.%d.eh_proj.weight", cfg.num_hidden_layers)) >= 0)
        e->mtp = 1;
    const int H = cfg.hidden_size, V = cfg.vocab_size;
    if (dops->host_memory) {
        e->layers = calloc((size_t)(e->L + e->mtp), sizeof *e->layers);
        if (!e->layers) rc = fr_error(FR_ERR_NOMEM, "out of memory");
    }
    for (int l = 0; e->layers && l < e->L + e->mtp && rc == FR_OK; l++) {
        rc = load_layer(e, &e->layers[l], st, l, l >= e->L);
        if (gg) fr_engine_gguf_release(e, NAME("blk.%d.", l));
    }
    /* a folder's embedding stored quantized (as its GGUF's token_embd), or held to its scheme */
    const char *emb = "model.embed_tokens.weight", *head = cfg.tie_word_embeddings ? emb : "lm_head.weight";
    const int emb_plain = gg || (e->scheme < 0 && fr_qmatrix_stored_type(st, emb) <= FR_QT_BF16);
    if (rc == FR_OK && e->layers)
        rc = gg ? gguf_embedding(e, emb, V, H)
                : emb_plain ? load_vec(e, st, emb, (size_t)V * H, &e->embed) : fr_engine_folder_embed(e, st, V, H, &e->embed);
    if (rc == FR_OK && e->layers) rc = load_vec(e, st, "model.norm.weight", H, &e->final_norm);
    if (rc == FR_OK && e->layers)
        rc = e->scheme >= 0 && fr_qmatrix_stored_type(st, head) <= FR_QT_BF16
                 ? fr_engine_folder_mat(e, &e->lm_head, st, head, V, H,
                                        fr_gguf_matrix_type(e->scheme, "output.weight", H, cfg.num_hidden_layers))
                 : load_mat_as(e, &e->lm_head, st, head, V, H, sensitive_type(e, H));
    if (rc == FR_OK) {
        size_t half = (size_t)cfg.qk_rope_head_dim / 2;
        e->rope_cos = malloc((size_t)e->max_len * half * sizeof(float) + 1);
        e->rope_sin = malloc((size_t)e->max_len * half * sizeof(float) + 1);
        e->att_threads = omp_get_max_threads();
        e->threads = o.threads;
        e->governed = o.adaptive_threads;
        fr_gov_init(&e->gov);
        e->att_scratch = fr_alloc((size_t)e->att_threads * ATT_HEAD_GROUP * e->max_len * sizeof(float));
        e->att_heads = fr_alloc((size_t)cfg.num_attention_heads * e->max_len * sizeof(float));
        if (o.kv_type != FR_KV_F32) {
            e->deq = fr_alloc((size_t)e->max_len * e->row * sizeof(float));
            e->kblock = fr_alloc((size_t)e->att_threads * FR_ATT_BLOCK_KEYS * e->row * sizeof(float));
        }
        if (!e->rope_cos || !e->rope_sin || !e->att_scratch || !e->att_heads ||
            (o.kv_type != FR_KV_F32 && (!e->deq || !e->kblock)))
            rc = fr_error(FR_ERR_NOMEM, "out of memory for a %d-token context", e->max_len);
        else
            fr_rope_tables_fill(&cfg, e->max_len, e->rope_cos, e->rope_sin);
    }
    if (rc == FR_OK && !dops->host_memory) rc = fr_dev_engine_build(e, st);
    if (rc != FR_OK) {
        fr_engine_free(e);
        return fr_error_context(rc, "%s", what);
    }
    if (map && st) {
        e->st = *st;
        e->mapped = 1;
    }
    e->map_weights = 0;
    *out = e;
    return FR_OK;
}


/* A model with a LoRA adapter folded in: through the FP32 model (a GGUF is imported) */
static int load_with_adapter(fr_engine **out, const char *dir, const fr_engine_options *opt) {
    const size_t dl = strlen(dir);
    fr_model *m = NULL;
    int rc = dl >= 5 && strcasecmp(dir + dl - 5, ".gguf") == 0 ? fr_model_load_gguf(&m, dir)
                                                               : fr_model_load_flags(&m, dir, opt->no_check ? FR_LOAD_NO_CHECK : 0);
    if (rc == FR_OK) rc = fr_model_merge_adapter(m, opt->adapter);
    if (rc != FR_OK) rc = fr_error_context(rc, "adapter %s on %s", opt->adapter, dir);
    fr_engine_options o = *opt;
    o.adapter = NULL;
    if (rc == FR_OK) rc = fr_engine_from_model(out, m, &o);
    fr_model_free(m);
    return rc;
}

int fr_engine_load(fr_engine **out, const char *dir, const fr_engine_options *opt) {
    fr_clear_error();
    if (!out || !dir) return fr_error(FR_ERR_ARG, "fr_engine_load: NULL argument");
    *out = NULL;
    if (opt && opt->adapter) return load_with_adapter(out, dir, opt);
    {   /* a regular file named *.gguf: import it (src/formats/gguf_import.c) */
        size_t dl = strlen(dir);
        struct stat sb;
        if (dl >= 5 && strcasecmp(dir + dl - 5, ".gguf") == 0 && stat(dir, &sb) == 0 && S_ISREG(sb.st_mode)) {
            if (fr_device_ops()->host_memory) return fr_engine_load_gguf(out, dir, opt);
            fr_model *gm = NULL; /* a device engine takes FP32 weights: through the imported model */
            int grc = fr_model_load_gguf(&gm, dir);
            if (grc == FR_OK) grc = fr_engine_from_model(out, gm, opt);
            fr_model_free(gm);
            return grc;
        }
    }
    char path[4096];
    if ((size_t)snprintf(path, sizeof path, "%s/config.json", dir) >= sizeof path)
        return fr_error(FR_ERR_ARG, "path too long: %s", dir);
    fr_config cfg;
    int rc = fr_config_load(&cfg, path);
    if (rc != FR_OK) {
        return fr_error_context(rc, "%s", dir);
    }
    fr_st_set st;
    rc = fr_st_set_open_dir(&st, dir);
    if (rc != FR_OK) {
        return fr_error_context(rc, "%s", dir);
    }
    rc = fr_engine_build(out, &cfg, &st, NULL, opt, dir, 1, fr_engine_folder_scheme(dir));
    if (rc != FR_OK) fr_st_set_close(&st); /* on success the engine owns the mapping */
    return rc;
}

static int cmp_st_name(const void *a, const void *b) {
    return strcmp(((const fr_st_tensor *)a)->name, ((const fr_st_tensor *)b)->name);
}

int fr_engine_from_model(fr_engine **out, fr_model *m, const fr_engine_options *opt) {
    fr_clear_error();
    if (!out || !m) return fr_error(FR_ERR_ARG, "fr_engine_from_model: NULL argument");
    *out = NULL;
    /* an in-memory safetensors view of the model's FP32 parameters (sorted by name) */
    const int n = fr_model_num_tensors(m);
    fr_st_file f;
    memset(&f, 0, sizeof f);
    f.tensors = calloc((size_t)n, sizeof *f.tensors);
    if (!f.tensors) return fr_error(FR_ERR_NOMEM, "out of memory");
    for (int i = 0; i < n; i++) {
        int ndim;
        int64_t shape[4];
        const char *nm = fr_model_tensor_info(m, i, &ndim, shape);
        fr_st_tensor *t = &f.tensors[i];
        t->name = (char *)nm;
        t->dtype = FR_DT_F32;
        t->ndim = ndim;
        for (int d = 0; d < ndim; d++) t->shape[d] = shape[d];
        t->data = fr_model_param(m, nm, &t->numel);
        t->nbytes = t->numel * sizeof(float);
    }
    f.n_tensors = n;
    /* a model in device memory: the view reads host copies of its parameters */
    const fr_ops *mo = m->ops;
    int rc = FR_OK;
    for (int i = 0; i < n && !mo->host_memory; i++) {
        void *h = rc == FR_OK ? fr_alloc(f.tensors[i].nbytes) : NULL; /* after a failure: NULL, nothing to free */
        if (h) mo->to_host(h, f.tensors[i].data, f.tensors[i].nbytes);
        else if (rc == FR_OK) rc = fr_error(FR_ERR_NOMEM, "out of memory copying %s from %s", f.tensors[i].name, mo->name);
        f.tensors[i].data = h;
    }
    qsort(f.tensors, (size_t)n, sizeof *f.tensors, cmp_st_name);
    fr_st_set st = {1, &f};
    if (rc == FR_OK) rc = fr_engine_build(out, fr_model_config(m), &st, NULL, opt, "model", 0, -1);
    for (int i = 0; i < n && !mo->host_memory; i++) fr_free((void *)f.tensors[i].data);
    free(f.tensors);
    return rc;
}

const fr_config *fr_engine_config(const fr_engine *e) { return &e->cfg; }
int fr_engine_max_seq_len(const fr_engine *e) { return e->max_len; }
int fr_engine_weight_type(const fr_engine *e) { return e->opt.weight_type; }
int fr_engine_mtp_depth(const fr_engine *e) { return e->mtp; }
size_t fr_engine_kv_bytes_per_token(const fr_engine *e) { return (size_t)e->L * e->row_bytes; }
size_t fr_engine_mtp_kv_bytes_per_token(const fr_engine *e) { return (size_t)e->mtp * e->row_bytes; }

static size_t qbytes(const fr_qmatrix *m) {
    return m->data ? (size_t)m->rows * fr_qtype_row_bytes(m->type, m->cols) : 0;
}

size_t fr_engine_active_weight_bytes(const fr_engine *e) {
    if (e->dev) return fr_dev_engine_active_weight_bytes(e);
    const fr_config *c = &e->cfg;
    const size_t H = c->hidden_size;
    size_t b = H * 4 /* embedding row */ + H * 4 + qbytes(&e->lm_head);
    for (int l = 0; l < e->L; l++) {
        const eng_layer *ly = &e->layers[l];
        b += 2 * H * 4 + qbytes(&ly->q_a) + qbytes(&ly->q_b) + qbytes(&ly->q) + qbytes(&ly->kv_a) + qbytes(&ly->o);
        for (int h = 0; h < c->num_attention_heads; h++) b += qbytes(&ly->uk_t[h]) + qbytes(&ly->uv[h]);
        b += qbytes(&ly->mlp_gate) + qbytes(&ly->mlp_up) + qbytes(&ly->mlp_down);
        if (ly->is_moe)
            b += (size_t)c->n_routed_experts * H * 4 +
                 (size_t)c->num_experts_per_tok * (qbytes(&ly->exp_gate[0]) + qbytes(&ly->exp_up[0]) + qbytes(&ly->exp_down[0]));
    }
    return b;
}

/* ================================================================ sequences */

int fr_seq_create(fr_seq **out, fr_engine *e) {
    fr_clear_error();
    if (!out || !e) return fr_error(FR_ERR_ARG, "fr_seq_create: NULL argument");
    fr_seq *s = calloc(1, sizeof *s);
    if (!s) return fr_error(FR_ERR_NOMEM, "out of memory");
    s->e = e;
    s->kv = calloc((size_t)(e->L + e->mtp), sizeof *s->kv);
    if (!s->kv) { free(s); return fr_error(FR_ERR_NOMEM, "out of memory"); }
    *out = s;
    return FR_OK;
}

void fr_seq_free(fr_seq *s) {
    if (!s) return;
    for (int l = 0; l < s->e->L + s->e->mtp; l++) {
        if (s->e->dev) s->e->ops->free(s->kv[l]);
        else free(s->kv[l]);
    }
    free(s->kv);
    free(s->ids);
    free(s);
}

int fr_seq_len(const fr_seq *s) { return s->len; }
int fr_seq_mtp_len(const fr_seq *s) { return s->mtp_len; }

int fr_seq_common_prefix(const fr_seq *s, const int *tokens, int n) {
    if (!s || !tokens || n <= 0) return 0;
    int k = 0;
    while (k < n && k < s->len && s->ids[k] == tokens[k]) k++;
    return k;
}

int fr_seq_truncate(fr_seq *s, int len) {
    if (!s || len < 0 || len > s->len) return fr_error(FR_ERR_ARG, "fr_seq_truncate: length %d outside [0, %d]", len, s ? s->len : 0);
    s->len = len;
    if (s->mtp_len > len) s->mtp_len = len;
    return FR_OK;
}

/* Make room for `need` cached rows in every layer cache. */
static int seq_grow(fr_seq *s, int need) {
    if (need <= s->cap) return FR_OK;
    fr_engine *e = s->e;
    int cap = s->cap ? s->cap : 64;
    while (cap < need) cap *= 2;
    if (cap > e->max_len) cap = e->max_len;
    for (int l = 0; l < e->L + e->mtp; l++) {
        unsigned char *p;
        if (e->dev) { /* backend memory: a new cache, the rows so far copied over */
            p = e->ops->alloc((size_t)cap * e->row_bytes);
            if (!p) return fr_error(FR_ERR_NOMEM, "out of %s memory for a %d-token KV cache", e->ops->name, cap);
            if (s->kv[l]) e->ops->copy(p, s->kv[l], (size_t)s->cap * e->row_bytes);
            e->ops->free(s->kv[l]);
        } else {
            p = realloc(s->kv[l], (size_t)cap * e->row_bytes);
            if (!p) return fr_error(FR_ERR_NOMEM, "out of memory for a %d-token KV cache", cap);
        }
        s->kv[l] = p;
    }
    int *ids = realloc(s->ids, (size_t)cap * sizeof(int));
    if (!ids) return fr_error(FR_ERR_NOMEM, "out of memory for a %d-token KV cache", cap);
    s->ids = ids;
    s->cap = cap;
    return FR_OK;
}

static void cache_store(const fr_engine *e, unsigned char *dst, const float *v) {
    const int n = e->row;
    switch (e->opt.kv_type) {
    case FR_KV_F32: memcpy(dst, v, (size_t)n * sizeof(float)); break;
    case FR_KV_BF16:
        for (int i = 0; i < n; i++) {
            uint16_t b = fr_bf16_encode(v[i]);
            memcpy(dst + 2 * i, &b, 2);
        }
        break;
    case FR_KV_FP8: {
        float amax = 0;
        for (int i = 0; i < n; i++) amax = fmaxf(amax, fabsf(v[i]));
        float sc = amax > 0 ? amax / 448.0f : 1.0f;
        memcpy(dst, &sc, 4);
        for (int i = 0; i < n; i++) dst[4 + i] = fr_fp8_e4m3_encode(v[i] / sc);
        break;
    }
    }
}

/* One cached row back to FP32 (the row decoders of sample.c, written to vectorise: every
 * cached row of a sequence is decoded at every decode step and layer). The BF16 row is 2-byte
 * aligned in the cache (rows of 2 * row bytes); FP8 rows start with their FP32 scale. */
void fr_engine_cache_load(const fr_engine *e, float *dst, const unsigned char *src) {
    if (e->opt.kv_type == FR_KV_BF16) {
        fr_bf16_decode_row(dst, (const uint16_t *)src, e->row);
    } else {
        float sc;
        memcpy(&sc, src, 4);
        fr_fp8_e4m3_decode_row(dst, src + 4, e->row, sc);
    }
}

/* ================================================================ forward */

/* FP32 weights times a few activation rows (decode, a small batch, a speculative step): the
 * products' rows, taken together in chunks of F32_CHUNK, are shared out to the threads in
 * one parallel region, each chunk's weights read once and dotted with the M inputs. The backend
 * GEMM would pack whole matrices on every call, and one call per product left the small ones
 * (an expert's 256 x 1024 rows) to a single thread. A chunk starts at a multiple of F32_CHUNK
 * rows of its matrix and goes through the same dot kernel whatever the thread, the batch or
 * M, so a row's result does not depend on them. */
#define SMALL_M 8
#define F32_CHUNK 32
/* weights x rows from which the threads share the chunks: 512 KiB of FP32 weights take one
 * core ~30 us to stream, against a few for the region's fork and join. (At 2e6 the 680M
 * model's q_a + kv_a (2.75 MB) and o (4 MB) ran on one thread at every layer while the other
 * spun: FP32 decode 38.0-39.8 -> 40.6-45.8 tok/s on the Intel VM, three alternations.) */
#define F32_PARALLEL_MIN (1 << 17)
static void f32_products(const fr_qmatmul_job *jobs, int n) {
    const fr_cpu_vec *v = fr_cpu_vec_ops();
    double work = 0; /* weights read, the measure of a chunk's cost */
    for (int i = 0; i < n; i++) work += (double)jobs[i].w->rows * jobs[i].w->cols;
    FR_OMP_REGION_IF(work * jobs[0].M >= F32_PARALLEL_MIN, "omp parallel if (work * jobs[0].M >= F32_PARALLEL_MIN)",
        {
            const int t = fr_t, T = fr_T;
            /* a chunk is thread t's when its middle falls in t's share of the weights: shares of
             * equal bytes (the products' widths differ), every chunk exactly once */
            double start = 0;
            for (int i = 0; i < n; i++) {
                const fr_qmatrix *w = jobs[i].w;
                for (int r0 = 0; r0 < w->rows; r0 += F32_CHUNK) {
                    const int nr = w->rows - r0 < F32_CHUNK ? w->rows - r0 : F32_CHUNK;
                    const double cost = (double)nr * w->cols;
                    const int owner = (int)((start + cost / 2) * T / work);
                    start += cost;
                    if (owner != t && !(t == T - 1 && owner >= T)) continue;
                    /* one row after another, each dotted with the M inputs while it is in L1:
                     * a single forward stream per thread. (Sixteen rows at a time, as the
                     * attention's key kernel does, made sixteen streams a row apart, 4 KiB
                     * for a 1024-wide matrix: a page each, which the prefetchers and the TLB
                     * followed badly, 23 GB/s against llama.cpp's 31 on the 680M model.) */
                    for (int r = r0; r < r0 + nr; r++) {
                        const float *W = (const float *)w->data + (size_t)r * w->cols;
                        for (int m = 0; m < jobs[i].M; m++)
                            jobs[i].y[(size_t)m * w->rows + r] = v->dot(jobs[i].x + (size_t)m * w->cols, W, w->cols);
                    }
                }
            }
        }
    );
}

/* y[M, rows] = x[M, cols] W^T */
void fr_engine_linear(float *y, const float *x, const fr_qmatrix *w, int M) {
    if (w->type != FR_QT_F32 && !fr_qmatmul_uses_int8(w) && M > 3 && M <= SMALL_M) {
        /* FP32 activations: fr_qmatmul dequantizes whole tiles for M >= 4, which costs more
         * than M matrix-vector products at decode sizes; keep its row path (M <= 3). (The
         * int8-activation path reads each weight once for every M.) */
        for (int m = 0; m < M; m += 3)
            fr_qmatmul(y + (size_t)m * w->rows, x + (size_t)m * w->cols, w, M - m < 3 ? M - m : 3);
        return;
    }
    if (w->type == FR_QT_F32 && M <= SMALL_M) {
        const fr_qmatmul_job job = {y, x, w, M};
        f32_products(&job, 1);
        return;
    }
    fr_qmatmul(y, x, w, M);
}

static void add_rows(float *y, const float *a, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] += a[i];
}

/* Independent products: with int8 activations, or FP32 weights at decode sizes, all in one
 * parallel region (fewer fork/join rounds per decoded token, which dominate small-batch decode
 * on few cores); otherwise one fr_engine_linear() after another. Results are the same either way. */
void fr_engine_linear_batch(const fr_qmatmul_job *jobs, int n) {
    int all = n > 1, all_f32 = n > 1;
    for (int i = 0; i < n; i++) {
        all &= fr_qmatmul_uses_int8(jobs[i].w);
        all_f32 &= jobs[i].w->type == FR_QT_F32 && jobs[i].M <= SMALL_M;
    }
    if (all) fr_qmatmul_batch(jobs, n);
    else if (all_f32) f32_products(jobs, n);
    else
        for (int i = 0; i < n; i++) fr_engine_linear(jobs[i].y, jobs[i].x, jobs[i].w, jobs[i].M);
}

/* out[N,H] = SwiGLU MLP(x) */
static void mlp(fr_engine *e, float *out, const float *x, const fr_qmatrix *Wg, const fr_qmatrix *Wu,
                const fr_qmatrix *Wd, int N, int I) {
    const fr_qmatmul_job jobs[2] = {{e->g, x, Wg, N}, {e->u, x, Wu, N}};
    fr_engine_linear_batch(jobs, 2);
    e->ops->swiglu_forward(e->h, e->g, e->u, (size_t)N * I);
    fr_engine_linear(out, e->h, Wd, N);
}

/* out[N,H] = DeepSeekMoE(x): routed experts (dropless, grouped by expert) + shared experts */
static void moe(fr_engine *e, const eng_layer *ly, float *out, const float *x, int N) {
    const fr_ops *o = e->ops;
    const fr_config *c = &e->cfg;
    const int H = c->hidden_size, E = c->n_routed_experts, K = c->num_experts_per_tok, Im = c->moe_intermediate_size;
    const fr_route_params rp = fr_route_params_of(c);
    /* on the CPU as the FP32 weights' products (a prompt's through oneDNN's matmul primitive:
     * its SGEMM took ~3 ms for this 62 x 64 x 1024 product on Zen 4, 15 % of a 62-token FP32
     * prefill) */
    if (o == fr_ops_cpu()) fr_cpu_linear_f32(e->rl, x, ly->router, N, E, H);
    else o->gemm(0, 1, N, E, H, 1.0f, x, H, ly->router, H, 0.0f, e->rl, E);
    o->moe_route_forward(e->topi, e->topw, e->scores, e->rl, ly->router_bias, N, &rp);
    o->moe_permute(e->perm, e->slot, e->offsets, e->topi, N, K, E);
    /* an expert's rows grouped, for the experts with more than one (a single row is read where
     * it is: products with the same input, every expert of a decoded token and the shared one,
     * then quantize it once); with one row no expert has two */
    if (N > 1) o->moe_dispatch_forward(e->xe, x, e->perm, N * K, H);
    const int shared = ly->mlp_inter > 0;
    if (N <= FR_DECODE_ROWS && fr_engine_fused_decode()) {
        fr_engine_moe_rows(e, ly, x, N); /* each thread its own experts, start to end */
    } else { /* the routed experts' and the shared expert's products in two rounds: gate and up, then down */
        fr_qmatmul_job *jobs = e->jobs;
        int nj = 0;
        for (int x_ = 0; x_ < E; x_++) {
            int off = e->offsets[x_], cnt = e->offsets[x_ + 1] - off;
            if (cnt == 0) continue;
            const float *xin = cnt == 1 ? x + (size_t)e->perm[off] * H : e->xe + (size_t)off * H;
            jobs[nj++] = (fr_qmatmul_job){e->ge + (size_t)off * Im, xin, &ly->exp_gate[x_], cnt};
            jobs[nj++] = (fr_qmatmul_job){e->ue + (size_t)off * Im, xin, &ly->exp_up[x_], cnt};
        }
        if (shared) {
            jobs[nj++] = (fr_qmatmul_job){e->g, x, &ly->mlp_gate, N};
            jobs[nj++] = (fr_qmatmul_job){e->u, x, &ly->mlp_up, N};
        }
        fr_engine_linear_batch(jobs, nj);
        o->swiglu_forward(e->he, e->ge, e->ue, (size_t)N * K * Im);
        if (shared) o->swiglu_forward(e->h, e->g, e->u, (size_t)N * ly->mlp_inter);
        nj = 0;
        for (int x_ = 0; x_ < E; x_++) {
            int off = e->offsets[x_], cnt = e->offsets[x_ + 1] - off;
            if (cnt == 0) continue;
            jobs[nj++] = (fr_qmatmul_job){e->ye + (size_t)off * H, e->he + (size_t)off * Im, &ly->exp_down[x_], cnt};
        }
        if (shared) jobs[nj++] = (fr_qmatmul_job){e->tmp, e->h, &ly->mlp_down, N};
        fr_engine_linear_batch(jobs, nj);
    }
    memset(out, 0, (size_t)N * H * sizeof(float));
    o->moe_combine_forward(out, e->ye, e->topw, e->slot, N, K, H);
    if (shared) add_rows(out, e->tmp, (size_t)N * H);
}

/* The cached rows 0 .. n_keys-1 of cache ci of s as FP32 rows of e->row floats: the cache
 * itself, or its rows converted into e->deq */
static const float *cache_keys(fr_engine *e, const fr_seq *s, int ci, int n_keys) {
    if (e->opt.kv_type == FR_KV_F32) return (const float *)s->kv[ci];
    const unsigned char *src = s->kv[ci];
#pragma omp parallel for schedule(static) if (n_keys >= 256)
    for (int t = 0; t < n_keys; t++) fr_engine_cache_load(e, e->deq + (size_t)t * e->row, src + (size_t)t * e->row_bytes);
    return e->deq;
}

/* The absorbed attention of N rows in any numbers per sequence (prefill, large batches), from the
 * rotated queries e->q to e->att: each row attends causally over its sequence's cache ci. */
static void attention_many_rows(fr_engine *e, const eng_layer *ly, int ci, fr_seq *const *seqs, int n_seqs,
                                const int *row_start, int N) {
    const fr_cpu_vec *vo = fr_cpu_vec_ops();
    const int nh = e->cfg.num_attention_heads, kvr = e->cfg.kv_lora_rank, row = e->row;
    const int *pos = e->pos;
    fr_engine_absorb_queries(e, ly, 0, nh, N);
    /* attention in the latent space, one sequence at a time */
    for (int s = 0; s < n_seqs; s++) {
        const int r0 = row_start[s], r1 = row_start[s + 1];
        if (r1 == r0) continue;
        const int n_keys = pos[r1 - 1] + 1;
        const float *K = cache_keys(e, seqs[s], ci, n_keys);
        if (r1 - r0 == 1 && fr_engine_blocked_attention()) { /* one decoded row: all heads share the cached rows */
            fr_engine_attend_row(e, r0, N, n_keys, K);
            continue;
        }
        /* a work item: one row's group of up to ATT_HEAD_GROUP heads (dots_heads / axpys_heads load
         * each key once for the group) */
        const int groups = (nh + ATT_HEAD_GROUP - 1) / ATT_HEAD_GROUP;
        const long work = (long)(r1 - r0) * groups;
        /* at most att_threads threads: the per-thread score rows were sized at load time */
        const int nt = omp_get_max_threads() < e->att_threads ? omp_get_max_threads() : e->att_threads;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt) if (work > 1 && (long)n_keys * (r1 - r0) * nh * row >= 32768)
        for (long w = 0; w < work; w++) {
            const int i = r0 + (int)(w / groups), h0 = (int)(w % groups) * ATT_HEAD_GROUP;
            const int n_heads = nh - h0 < ATT_HEAD_GROUP ? nh - h0 : ATT_HEAD_GROUP, n = pos[i] + 1;
            float *sc = e->att_scratch + (size_t)omp_get_thread_num() * ATT_HEAD_GROUP * e->max_len;
            float *acc = e->ctx + ((size_t)h0 * N + i) * kvr;
            vo->dots_heads(sc, e->max_len, e->qf + ((size_t)i * nh + h0) * row, (size_t)row, n_heads, K, (size_t)row, n,
                           row, e->scale);
            for (int h = 0; h < n_heads; h++) {
                fr_engine_softmax_scores(vo, sc + (size_t)h * e->max_len, n);
                memset(acc + (size_t)h * N * kvr, 0, (size_t)kvr * sizeof(float));
            }
            vo->axpys_heads(acc, (size_t)N * kvr, sc, e->max_len, n_heads, K, (size_t)row, n, kvr);
        }
    }

    fr_engine_head_values(e, ly, 0, nh, N);
}

/* One decoder block over e->x [N,H] in place. Rows belong to sequences seqs[seq_of[i]]
 * (contiguous runs) at positions e->pos[i]; their latents go to cache `ci`. */
static void layer_forward(fr_engine *e, const eng_layer *ly, int ci, fr_seq *const *seqs, int n_seqs,
                          const int *row_start, int N) {
    const fr_ops *o = e->ops;
    const fr_config *c = &e->cfg;
    const int H = c->hidden_size, nh = c->num_attention_heads, nope = c->qk_nope_head_dim;
    const int rope = c->qk_rope_head_dim, dqk = nope + rope;
    const int kvr = c->kv_lora_rank, qr = c->q_lora_rank, row = e->row;
    const int *pos = e->pos;

    o->rmsnorm_forward(e->xn, e->rstd, e->x, H, ly->input_norm, N, H, c->rms_norm_eps);
    /* the two projections of the normed input (query, latent of the new tokens) together */
    fr_qmatmul_job in_jobs[2] = {{qr > 0 ? e->qa : e->q, e->xn, qr > 0 ? &ly->q_a : &ly->q, N},
                                 {e->kva, e->xn, &ly->kv_a, N}};
    fr_engine_linear_batch(in_jobs, 2);
    /* a decode-sized forward: from q_b to W_UV, each thread its own heads (decode_row.c) */
    const int fused = N <= FR_DECODE_ROWS && qr > 0 && fr_engine_fused_decode() && fr_engine_blocked_attention();
    if (qr > 0) o->rmsnorm_forward(e->qan, e->rstd, e->qa, qr, ly->q_a_norm, N, qr, LATENT_EPS);
    if (!fused) {
        if (qr > 0) fr_engine_linear(e->q, e->qan, &ly->q_b, N);
        o->rope_forward(e->q, N, nh, nh * dqk, dqk, nope, rope, pos, e->rope_cos, e->rope_sin, c->rope_interleave);
    }

    /* latent of the new tokens -> cache */
    o->rope_forward(e->kva, N, 1, row, 0, kvr, rope, pos, e->rope_cos, e->rope_sin, c->rope_interleave);
    o->rmsnorm_forward(e->kvn, e->rstd, e->kva, row, ly->kv_a_norm, N, kvr, LATENT_EPS);
    for (int i = 0; i < N; i++) {
        float *r = e->kva + (size_t)i * row;
        memcpy(r, e->kvn + (size_t)i * kvr, (size_t)kvr * sizeof(float));
        cache_store(e, seqs[e->seq_of[i]]->kv[ci] + (size_t)pos[i] * e->row_bytes, r);
    }

    if (fused) fr_engine_attention_rows(e, ly, seqs, ci, N);
    else attention_many_rows(e, ly, ci, seqs, n_seqs, row_start, N);
    fr_engine_linear(e->tmp, e->att, &ly->o, N);
    add_rows(e->x, e->tmp, (size_t)N * H);

    o->rmsnorm_forward(e->xn, e->rstd, e->x, H, ly->post_norm, N, H, c->rms_norm_eps);
    if (ly->is_moe) moe(e, ly, e->ffn, e->xn, N);
    else mlp(e, e->ffn, e->xn, &ly->mlp_gate, &ly->mlp_up, &ly->mlp_down, N, ly->mlp_inter);
    add_rows(e->x, e->ffn, (size_t)N * H);
}

/* Check the call and fill e->tok / e->seq_of / row_start; positions start at base(seq). */
static int prepare_rows(fr_engine *e, fr_seq *const *seqs, int n_seqs, const int *const *tokens, const int *n_tokens,
                        int mtp, int *row_start, int *N_out) {
    if (!seqs || n_seqs <= 0 || !tokens || !n_tokens) return fr_error(FR_ERR_ARG, "fr_engine_forward: invalid arguments");
    long N = 0;
    for (int s = 0; s < n_seqs; s++) {
        if (!seqs[s] || seqs[s]->e != e) return fr_error(FR_ERR_ARG, "sequence %d does not belong to this engine", s);
        for (int t = 0; t < s; t++)
            if (seqs[t] == seqs[s]) return fr_error(FR_ERR_ARG, "sequence %d is passed twice", s);
        if (n_tokens[s] < 0 || (n_tokens[s] > 0 && !tokens[s])) return fr_error(FR_ERR_ARG, "sequence %d: invalid token count", s);
        int base = mtp ? seqs[s]->mtp_len : seqs[s]->len;
        if ((long)base + n_tokens[s] > e->max_len)
            return fr_error(FR_ERR_ARG, "sequence %d: %d + %d tokens exceed the maximum sequence length %d", s, base,
                            n_tokens[s], e->max_len);
        for (int t = 0; t < n_tokens[s]; t++)
            if (tokens[s][t] < 0 || tokens[s][t] >= e->cfg.vocab_size)
                return fr_error(FR_ERR_ARG, "token %d is outside the vocabulary [0, %d)", tokens[s][t], e->cfg.vocab_size);
        N += n_tokens[s];
    }
    if (N == 0) return fr_error(FR_ERR_ARG, "fr_engine_forward: no tokens");
    if (N > (long)1 << 24) return fr_error(FR_ERR_ARG, "fr_engine_forward: %ld tokens in one call is too many", N);
    FR_CHECK(reserve(e, (int)N));
    for (int s = 0; s < n_seqs; s++) FR_CHECK(seq_grow(seqs[s], (mtp ? seqs[s]->mtp_len : seqs[s]->len) + n_tokens[s]));
    int i = 0;
    for (int s = 0; s < n_seqs; s++) {
        row_start[s] = i;
        int base = mtp ? seqs[s]->mtp_len : seqs[s]->len;
        for (int t = 0; t < n_tokens[s]; t++, i++) {
            e->tok[i] = tokens[s][t];
            e->seq_of[i] = s;
            e->pos[i] = base + t;
        }
    }
    row_start[n_seqs] = i;
    *N_out = i;
    return FR_OK;
}

/* logits of rows (all, or the last of each sequence) from the stream x with norm `norm_w` */
static void head(fr_engine *e, const float *norm_w, int N, int n_seqs, const int *row_start, float *logits, int all) {
    const int H = e->cfg.hidden_size;
    e->ops->rmsnorm_forward(e->xn, e->rstd, e->x, H, norm_w, N, H, e->cfg.rms_norm_eps);
    if (!logits) return;
    if (all) {
        fr_engine_linear(logits, e->xn, &e->lm_head, N);
    } else {
        for (int s = 0; s < n_seqs; s++)
            memcpy(e->tmp + (size_t)s * H, e->xn + (size_t)(row_start[s + 1] - 1) * H, (size_t)H * sizeof(float));
        fr_engine_linear(logits, e->tmp, &e->lm_head, n_seqs);
    }
}

/* Decode-sized forwards run on the threads the governor picks (governor.c); the caller's
 * OpenMP thread count is restored afterwards. */
typedef struct {
    int arm, threads, rows;
    double t0;
} gov_step;

static gov_step gov_begin(fr_engine *e, int n_seqs, const int *n_tokens) {
    gov_step g = {-1, omp_get_max_threads(), 0, 0};
    for (int s = 0; s < n_seqs; s++) g.rows += n_tokens[s];
    if (g.threads < 2 || g.rows < 1 || g.rows > FR_GOV_MAX_ROWS || !e->governed) return g;
    g.arm = fr_gov_pick(&e->gov);
    if (g.arm == 1) omp_set_num_threads(1);
    g.t0 = fr_now_s();
    return g;
}

static void gov_end(fr_engine *e, const gov_step *g, int rc) {
    if (g->arm < 0) return;
    if (g->arm == 1) omp_set_num_threads(g->threads);
    if (rc == FR_OK) fr_gov_record(&e->gov, g->arm, fr_now_s() - g->t0, g->rows);
}

static int forward_rows(fr_engine *e, fr_seq *const *seqs, int n_seqs, const int *const *tokens, const int *n_tokens,
                        float *logits, int all_logits, int *row_start) {
    int N;
    FR_CHECK(prepare_rows(e, seqs, n_seqs, tokens, n_tokens, 0, row_start, &N));
    const int H = e->cfg.hidden_size;
    if (e->dev) {
        FR_CHECK(fr_dev_engine_forward(e, seqs, n_seqs, row_start, N, logits, all_logits));
    } else {
        embed_tokens(e, e->x, N);
        for (int l = 0; l < e->L; l++) layer_forward(e, &e->layers[l], l, seqs, n_seqs, row_start, N);
        memcpy(e->hid, e->x, (size_t)N * H * sizeof(float));
        head(e, e->final_norm, N, n_seqs, row_start, logits, all_logits);
    }
    for (int s = 0; s < n_seqs; s++) {
        memcpy(seqs[s]->ids + seqs[s]->len, tokens[s], (size_t)n_tokens[s] * sizeof(int));
        seqs[s]->len += n_tokens[s];
    }
    return FR_OK;
}

int fr_engine_forward_rows(fr_engine *e, fr_seq *const *seqs, int n_seqs, const int *const *tokens, const int *n_tokens,
                           float *logits, int all_logits, int *row_start) {
    const gov_step g = gov_begin(e, n_seqs, n_tokens);
    int rc = forward_rows(e, seqs, n_seqs, tokens, n_tokens, logits, all_logits, row_start);
    gov_end(e, &g, rc);
    return rc;
}

int fr_engine_forward(fr_engine *e, fr_seq *const *seqs, int n_seqs, const int *const *tokens, const int *n_tokens,
                      float *logits, int all_logits) {
    fr_clear_error();
    if (!e) return fr_error(FR_ERR_ARG, "fr_engine_forward: NULL engine");
    int *row_start = malloc((size_t)(n_seqs > 0 ? n_seqs + 1 : 1) * sizeof(int));
    if (!row_start) return fr_error(FR_ERR_NOMEM, "out of memory");
    /* OpenMP's thread count is per calling thread: a server's scheduler thread must get it too */
    if (e->threads > 0) fr_set_num_threads(e->threads);
    int rc = fr_engine_forward_rows(e, seqs, n_seqs, tokens, n_tokens, logits, all_logits, row_start);
    free(row_start);
    return rc;
}

static int mtp_forward(fr_engine *e, fr_seq *const *seqs, int n_seqs, const int *const *tokens, const int *n_tokens,
                       const int *hid_rows, float *logits, int *row_start) {
    const int H = e->cfg.hidden_size;
    const eng_layer *ly = &e->layers[e->L];
    int N;
    /* capacity: N never exceeds the main forward that filled e->hid, so reserve() keeps it */
    FR_CHECK(prepare_rows(e, seqs, n_seqs, tokens, n_tokens, 1, row_start, &N));
    if (e->dev) {
        FR_CHECK(fr_dev_engine_mtp_forward(e, seqs, n_seqs, row_start, N, hid_rows, logits));
        for (int s = 0; s < n_seqs; s++) seqs[s]->mtp_len += n_tokens[s];
        return FR_OK;
    }
    for (int i = 0; i < N; i++) memcpy(e->tmp + (size_t)i * H, e->hid + (size_t)hid_rows[i] * H, (size_t)H * sizeof(float));
    /* eh_proj input: [RMSNorm_e(Emb(t)) ; RMSNorm_h(h)] (embedding first) */
    embed_tokens(e, e->x, N);
    e->ops->rmsnorm_forward(e->xn, e->rstd, e->x, H, ly->enorm, N, H, e->cfg.rms_norm_eps);
    for (int i = 0; i < N; i++) memcpy(e->cat + (size_t)i * 2 * H, e->xn + (size_t)i * H, (size_t)H * sizeof(float));
    e->ops->rmsnorm_forward(e->xn, e->rstd, e->tmp, H, ly->hnorm, N, H, e->cfg.rms_norm_eps);
    for (int i = 0; i < N; i++) memcpy(e->cat + (size_t)i * 2 * H + H, e->xn + (size_t)i * H, (size_t)H * sizeof(float));
    fr_engine_linear(e->x, e->cat, &ly->eh_proj, N);
    layer_forward(e, ly, e->L, seqs, n_seqs, row_start, N);
    head(e, ly->head_norm, N, n_seqs, row_start, logits, 0);
    for (int s = 0; s < n_seqs; s++) seqs[s]->mtp_len += n_tokens[s];
    return FR_OK;
}

int fr_engine_mtp_forward(fr_engine *e, fr_seq *const *seqs, int n_seqs, const int *const *tokens, const int *n_tokens,
                          const int *hid_rows, float *logits, int *row_start) {
    const gov_step g = gov_begin(e, n_seqs, n_tokens);
    int rc = mtp_forward(e, seqs, n_seqs, tokens, n_tokens, hid_rows, logits, row_start);
    gov_end(e, &g, rc);
    return rc;
}
