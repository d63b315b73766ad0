/*
 * engine_gguf.c — the inference engine on a deepseek2 GGUF as stored (fr_engine_load of a
 * .gguf on the CPU): each Hugging Face weight the engine asks for is found in the file
 * (formats/gguf_import.c's name mapping) and used in its own format, from the mapping where
 * the engine's layout is ggml's (F32, BF16, the K formats) and rearranged without changing a
 * value where it is not (Q8_0, Q4_0, Q4_1: fr_qmatrix_from_ggml). See docs/interop.md.
 */
#define _GNU_SOURCE
#include "infer/engine.h"

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
        FR_CHECK(fr_qmatrix_from_ggml(&ly->uv[h], v.type, v.data, vd, kvr, e->as_stored ? -1 : (int)uv_type));
    }
    return FR_OK;
}

/* Give back the mapped pages of the GGUF tensors whose names start with `prefix` (all when
 * NULL) that the engine holds as copies (everything but F32, BF16 and the K formats, used in
 * place; a K tensor that fell back is rare enough to leave), so that
 * a copy and its source are not both resident: the peak stays near the file's size. Harmless
 * if a page is read again (a private read-only mapping refills it from the file). */
void fr_engine_gguf_release(const fr_engine *e, const char *prefix) {
    const size_t page = (size_t)sysconf(_SC_PAGESIZE), pl = prefix ? strlen(prefix) : 0;
    for (int i = 0; i < e->gg->n_tensors; i++) {
        const fr_gguf_tensor *t = &e->gg->tensors[i];
        const int in_place = t->type == FR_GGML_F32 || t->type == FR_GGML_BF16 || t->type == FR_GGML_Q4_K ||
                             t->type == FR_GGML_Q5_K || t->type == FR_GGML_Q6_K;
        if (in_place || (prefix && strncmp(t->name, prefix, pl) != 0)) continue;
        const uintptr_t a = ((uintptr_t)t->data + page - 1) / page * page, b = ((uintptr_t)t->data + t->nbytes) / page * page;
        if (b > a) madvise((void *)a, b - a, MADV_DONTNEED);
    }
}

/* A deepseek2 GGUF run as stored from its mapping. Tensors rearranged into the engine's
 * layouts (Q8_0, Q4_0, Q4_1, F16) are copies: their pages of the mapping are given back, so
 * the resident memory is about the file's size. */
int fr_engine_load_gguf(fr_engine **out, const char *path, const fr_engine_options *opt) {
    fr_gguf g;
    FR_CHECK(fr_gguf_open(&g, path));
    fr_config cfg;
    int rc = fr_gguf_deepseek2_config(&g, path, &cfg);
    if (rc == FR_OK) rc = fr_gguf_deepseek2_check_names(&g, &cfg, path);
    fr_engine *e = NULL;
    if (rc == FR_OK) rc = fr_engine_build(&e, &cfg, NULL, &g, opt, path, 0);
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
