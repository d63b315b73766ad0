/*
 * engine_gguf.c — the inference engine on a deepseek2 GGUF as stored (fr_engine_load of a
 * .gguf on the CPU): each Hugging Face weight the engine asks for is found in the file
 * (formats/gguf_import.c's name mapping) and used in its own format, from the mapping where
 * the engine's layout is ggml's (F32, BF16, the K formats) and rearranged without changing a
 * value where it is not (Q8_0, Q4_0, Q4_1: fr_qmatrix_from_ggml). See docs/interop.md.
 * Also the other side of that equality: a folder of `frugal quantize` in a GGUF scheme run as
 * stored, whose FP32 matrices (kv_b_proj, a tied embedding) take the GGUF's types and blocks.
 */
#define _GNU_SOURCE
#include "infer/engine.h"
#include "core/internal.h"

#include <cjson/cJSON.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* GGUF tensor of HF parameter `name` with its finiteness checked (unless no_check) */
int fr_engine_gguf_view(const fr_engine *e, const char *name, fr_gguf_view *v) {
    FR_CHECK(fr_gguf_view_hf(e->gg, name, v));
    if (e->opt.no_check) return FR_OK;
    const size_t bad = fr_gguf_view_first_nonfinite(v);
    if (bad != SIZE_MAX)
        return fr_error(FR_ERR_FORMAT, "tensor %s (GGUF %s) holds a non-finite value (NaN or Inf) at index %zu", name,
                        v->t->name, bad);
    return FR_OK;
}

/* The absorbed projections of a split GGUF (attn_k_b [heads][kv_lora][nope] is W_UK[h]^T
 * head by head, attn_v_b [heads][v_dim][kv_lora] is W_UV[h]): each head's matrix as stored,
 * no transposition needed. */
int fr_engine_gguf_kv_b(fr_engine *e, eng_layer *ly, int index, fr_qtype uk_type, fr_qtype uv_type) {
    const fr_config *c = &e->cfg;
    const int nh = c->num_attention_heads, nope = c->qk_nope_head_dim, vd = c->v_head_dim, kvr = c->kv_lora_rank;
    char kn[64], vn[64];
    snprintf(kn, sizeof kn, "blk.%d.attn_k_b.weight", index);
    snprintf(vn, sizeof vn, "blk.%d.attn_v_b.weight", index);
    ly->uk_t = calloc((size_t)nh, sizeof(fr_qmatrix));
    ly->uv = calloc((size_t)nh, sizeof(fr_qmatrix));
    if (!ly->uk_t || !ly->uv) return fr_error(FR_ERR_NOMEM, "out of memory");
    for (int h = 0; h < nh; h++) {
        fr_gguf_view k, v;
        FR_CHECK(fr_gguf_view_slice(e->gg, kn, h, &k));
        FR_CHECK(fr_gguf_view_slice(e->gg, vn, h, &v));
        if (k.rows != kvr || k.cols != nope || v.rows != vd || v.cols != kvr)
            return fr_error(FR_ERR_FORMAT, "%s / %s: head matrices %lld x %lld and %lld x %lld, expected %d x %d and %d x %d",
                            kn, vn, (long long)k.rows, (long long)k.cols, (long long)v.rows, (long long)v.cols, kvr, nope,
                            vd, kvr);
        if (!e->opt.no_check && (fr_gguf_view_first_nonfinite(&k) != SIZE_MAX || fr_gguf_view_first_nonfinite(&v) != SIZE_MAX))
            return fr_error(FR_ERR_FORMAT, "%s or %s holds a non-finite value (NaN or Inf) in head %d", kn, vn, h);
        FR_CHECK(fr_qmatrix_from_ggml(&ly->uk_t[h], k.type, k.data, kvr, nope, e->as_stored ? -1 : (int)uk_type));
        FR_CHECK(fr_engine_own_matrix(&ly->uk_t[h], kn));
    }
    for (int h = 0; h < nh; h++) {
        fr_gguf_view v;
        FR_CHECK(fr_gguf_view_slice(e->gg, vn, h, &v));
        FR_CHECK(fr_qmatrix_from_ggml(&ly->uv[h], v.type, v.data, vd, kvr, e->as_stored ? -1 : (int)uv_type));
        FR_CHECK(fr_engine_own_matrix(&ly->uv[h], vn));
    }
    return FR_OK;
}

/* A K-format matrix of the GGUF, used as stored, moves from the mapping to memory of its own
 * (fr_alloc_weights): the mapping sits on 4 KiB pages, where a decode stream reads slower than
 * from huge pages, and the copy is one pass over bytes the load reads anyway; the mapped pages
 * are given back after it (fr_engine_gguf_release), so the resident memory stays near the
 * file's size. F32 and BF16 matrices stay in the mapping: copying the 680M model's 2.7 GB F32
 * file made its load take 1-4 s instead of 0.65 s on this VM (first touch of fresh memory),
 * for a decode 0-10 % faster. */
int fr_engine_own_matrix(fr_qmatrix *m, const char *name) {
    if (m->owned || !m->data || m->type == FR_QT_F32 || m->type == FR_QT_BF16) return FR_OK;
    const size_t bytes = fr_qtype_row_bytes(m->type, m->cols) * (size_t)m->rows;
    void *copy = fr_alloc_weights(bytes);
    if (!copy) return fr_error(FR_ERR_NOMEM, "out of memory for %s (%zu bytes)", name, bytes);
    memcpy(copy, m->data, bytes);
    m->data = copy;
    m->owned = 1;
    return FR_OK;
}

/* Give back the mapped pages of the GGUF tensors whose names start with `prefix` (all when
 * NULL) that the engine holds as copies (all but F32 and BF16, used in place), so that a copy
 * and its source are not both resident: the peak stays near the file's size. Harmless if a
 * page is read again (a private read-only mapping refills it from the file). */
void fr_engine_gguf_release(const fr_engine *e, const char *prefix) {
    const size_t page = (size_t)sysconf(_SC_PAGESIZE), pl = prefix ? strlen(prefix) : 0;
    for (int i = 0; i < e->gg->n_tensors; i++) {
        const fr_gguf_tensor *t = &e->gg->tensors[i];
        if (t->type == FR_GGML_F32 || t->type == FR_GGML_BF16 || (prefix && strncmp(t->name, prefix, pl) != 0)) continue;
        const uintptr_t a = ((uintptr_t)t->data + page - 1) / page * page, b = ((uintptr_t)t->data + t->nbytes) / page * page;
        if (b > a) madvise((void *)a, b - a, MADV_DONTNEED);
    }
}

/* A deepseek2 GGUF run as stored: every matrix in its file format (Q8_0, Q4_0 and Q4_1 in the
 * engine's row layouts, without changing a value; F32 and BF16 in the mapping, the others in
 * memory of the engine's own, whose pages of the mapping are given back; the embedding table
 * in the mapping whatever its type, a row decoded when a token looks it up), so the resident
 * memory is about the file's size. */
int fr_engine_load_gguf(fr_engine **out, const char *path, const fr_engine_options *opt) {
    fr_gguf g;
    FR_CHECK(fr_gguf_open(&g, path));
    fr_config cfg;
    int rc = fr_gguf_deepseek2_config(&g, path, &cfg);
    if (rc == FR_OK) rc = fr_gguf_deepseek2_check_names(&g, &cfg, path);
    fr_engine *e = NULL;
    if (rc == FR_OK) rc = fr_engine_build(&e, &cfg, NULL, &g, opt, path, 0, -1);
    if (rc != FR_OK) {
        fr_gguf_close(&g);
        return rc;
    }
    e->gguf = g;
    e->gg = &e->gguf;
    fr_engine_gguf_release(e, NULL); /* the embedding, the output head and the norms */
    *out = e;
    return FR_OK;
}

/* ------------------------------------------------------------------ folders in a GGUF scheme */

int fr_engine_folder_scheme(const char *dir) {
    char path[4096], *text = NULL;
    size_t len = 0;
    if ((size_t)snprintf(path, sizeof path, "%s/config.json", dir) >= sizeof path) return -1;
    if (fr_read_file(path, &text, &len) != FR_OK) {
        fr_clear_error(); /* the caller has read it already: nothing new to report */
        return -1;
    }
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    const cJSON *qc = cJSON_GetObjectItemCaseSensitive(root, "quantization_config");
    const cJSON *qm = cJSON_GetObjectItemCaseSensitive(qc, "quant_method"), *f = cJSON_GetObjectItemCaseSensitive(qc, "format");
    const int scheme = cJSON_IsString(qm) && !strcmp(qm->valuestring, "frugal") && cJSON_IsString(f)
                           ? fr_gguf_export_type_from_name(f->valuestring) : -1;
    cJSON_Delete(root);
    return scheme;
}

int fr_engine_folder_mat(const fr_engine *e, fr_qmatrix *m, const fr_st_set *st, const char *name, int rows, int cols,
                         int ggml_type) {
    fr_qmatrix f;
    FR_CHECK(fr_engine_check_weight(e, st, name));
    FR_CHECK(fr_qmatrix_load(&f, st, name, rows, cols, FR_QT_F32));
    const int rc = fr_qmatrix_from_f32_ggml(m, ggml_type, f.data, rows, cols);
    fr_qmatrix_free(&f);
    return rc == FR_OK ? FR_OK : fr_error_context(rc, "tensor %s", name);
}

int fr_engine_folder_embed(const fr_engine *e, const fr_st_set *st, int V, int H, float **out) {
    const char *name = "model.embed_tokens.weight";
    *out = NULL;
    const int stored = fr_qmatrix_stored_type(st, name);
    const int gt = e->scheme >= 0 && stored >= 0 && stored <= FR_QT_BF16
                       ? fr_gguf_matrix_type(e->scheme, "token_embd.weight", H, e->cfg.num_hidden_layers) : FR_GGML_F32;
    fr_qmatrix f;
    FR_CHECK(fr_engine_check_weight(e, st, name));
    FR_CHECK(fr_qmatrix_load(&f, st, name, V, H, FR_QT_F32)); /* owned FP32 rows (fr_alloc) */
    int rc = FR_OK;
    if (gt != FR_GGML_F32) { /* what the GGUF's engine reads: ggml's encoding, decoded by ggml's rule */
        const size_t n = (size_t)V * H, bytes = n / (size_t)fr_ggml_block_elems(gt) * fr_ggml_block_bytes(gt);
        void *enc = malloc(bytes ? bytes : 1);
        rc = enc ? fr_ggml_quantize(gt, f.data, enc, n) : fr_error(FR_ERR_NOMEM, "out of memory loading %s", name);
        if (rc == FR_OK) rc = fr_ggml_dequantize(gt, enc, f.data, n);
        free(enc);
    }
    if (rc != FR_OK) {
        fr_qmatrix_free(&f);
        return fr_error_context(rc, "%s", name);
    }
    *out = f.data;
    return FR_OK;
}
