/*
 * quantize.c — `frugal quantize`: a checkpoint folder rewritten with its linear layers in
 * BF16 / Q8_0 / Q4_0 / Q4_1 / a K format or mix (on-disk names in formats/qmatrix.c; every type
 * but Q4_1 as the GGUF export of that type stores them), the dequantized FP32 model of such a
 * folder, and the validation loss of a model over a token-shard split.
 */
#include "formats/qmatrix.h"
#include "formats/kquant.h"
#include "formats/gguf.h"

#include "core/internal.h"
#include "formats/safetensors.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ------------------------------------------------------------------ quantizing a checkpoint */

/* Linear layers that are quantized: 2-D tensors named "*_proj.weight" (q_a_proj, q_b_proj,
 * q_proj, kv_b_proj, o_proj, gate_proj, up_proj, down_proj, eh_proj) and
 * kv_a_proj_with_mqa. Everything else (embeddings, lm_head, MTP shared heads, the router
 * mlp.gate, norms, e_score_correction_bias) is written as FP32, but for the embedding and the
 * head in a GGUF scheme (below). */
static int ends_with(const char *s, const char *suffix) {
    const size_t n = strlen(s), k = strlen(suffix);
    return n > k && strcmp(s + n - k, suffix) == 0;
}

static int is_quantized_linear(const fr_st_tensor *t) {
    return t->ndim == 2 && (ends_with(t->name, "_proj.weight") || ends_with(t->name, ".kv_a_proj_with_mqa.weight"));
}

static int is_float_dtype(fr_dtype d) {
    return d == FR_DT_F32 || d == FR_DT_F16 || d == FR_DT_BF16 || d == FR_DT_F64;
}

typedef struct {
    fr_st_entry *e;
    int n, cap;
    void **bufs; /* owned buffers and names */
    int nbufs, capbufs;
} qwriter;

static void *qw_keep(qwriter *w, void *p) {
    if (!p) return NULL;
    if (w->nbufs == w->capbufs) {
        int cap = w->capbufs ? 2 * w->capbufs : 256;
        void **b = realloc(w->bufs, (size_t)cap * sizeof *b);
        if (!b) {
            free(p);
            return NULL;
        }
        w->bufs = b;
        w->capbufs = cap;
    }
    w->bufs[w->nbufs++] = p;
    return p;
}

static int qw_add(qwriter *w, const char *name, fr_dtype dt, int ndim, const int64_t *shape, const void *data) {
    if (w->n == w->cap) {
        int cap = w->cap ? 2 * w->cap : 256;
        fr_st_entry *e = realloc(w->e, (size_t)cap * sizeof *e);
        if (!e) return fr_error(FR_ERR_NOMEM, "out of memory");
        w->e = e;
        w->cap = cap;
    }
    char *nm = qw_keep(w, strdup(name));
    if (!nm) return fr_error(FR_ERR_NOMEM, "out of memory");
    fr_st_entry *e = &w->e[w->n++];
    memset(e, 0, sizeof *e);
    e->name = nm;
    e->dtype = dt;
    e->ndim = ndim;
    for (int d = 0; d < ndim; d++) e->shape[d] = shape[d];
    e->data = data;
    return FR_OK;
}

static void qw_free(qwriter *w) {
    for (int i = 0; i < w->nbufs; i++) {
        if (w->bufs[i]) free(w->bufs[i]);
    }
    free(w->bufs);
    free(w->e);
    memset(w, 0, sizeof *w);
}

/* Quantize one matrix into writer entries: to `type` with our quantizers (qmatrix.c), or, when
 * ggml_type >= 0, with ggml's encoder for that type, the bytes a GGUF export of the model holds
 * (a Q4_0 matrix is stored in the Q4_1 layout, m = -8 d, as the engine runs it). */
static int quantize_tensor(qwriter *w, const fr_st_tensor *t, fr_qtype type, int ggml_type) {
    const int rows = (int)t->shape[0], cols = (int)t->shape[1];
    if (t->shape[0] > INT32_MAX / 2 || t->shape[1] > INT32_MAX / 2 || rows <= 0 || cols <= 0)
        return fr_error(FR_ERR_FORMAT, "tensor %s: unsupported shape", t->name);
    if (ggml_type < 0 && fr_qtype_is_k(type) && cols % FR_QK_K) type = FR_QT_Q8_0;
    if (ggml_type < 0 && type != FR_QT_BF16 && cols % FR_QBLOCK)
        return fr_error(FR_ERR_ARG, "tensor %s has %d columns, not a multiple of %d: cannot quantize it to %s", t->name,
                        cols, FR_QBLOCK, fr_qtype_name(type));
    float *tmp = malloc((size_t)rows * cols * sizeof(float));
    if (!tmp) return fr_error(FR_ERR_NOMEM, "out of memory quantizing %s", t->name);
    int rc = fr_st_to_f32(t, tmp, t->numel);
    fr_qmatrix q;
    memset(&q, 0, sizeof q);
    if (rc == FR_OK) {
        rc = ggml_type >= 0 ? fr_qmatrix_from_f32_ggml(&q, ggml_type, tmp, rows, cols) : fr_qmatrix_from_f32(&q, type, tmp, rows, cols);
        if (rc != FR_OK) rc = fr_error_context(rc, "tensor %s", t->name);
    }
    free(tmp);
    if (rc != FR_OK) return rc;
    type = q.type;
    const size_t rb = fr_qtype_row_bytes(type, cols);
    const int nb = cols / FR_QBLOCK;
    const uint8_t *src = q.data;
    if (type == FR_QT_BF16 || fr_qtype_is_k(type)) { /* rows as they are: BF16, or "<base>.q4_k" U8 [rows, rb] */
        uint8_t *b = qw_keep(w, malloc(rb * rows));
        char nm[1024];
        if (!b) rc = fr_error(FR_ERR_NOMEM, "out of memory quantizing %s", t->name);
        else if (fr_qtype_is_k(type) && fr_qmatrix_tensor_name(nm, sizeof nm, t->name, fr_qtype_name(type)))
            rc = fr_error(FR_ERR_ARG, "tensor name too long: %s", t->name);
        else {
            memcpy(b, src, rb * rows);
            int64_t sh[2] = {rows, type == FR_QT_BF16 ? cols : (int64_t)rb};
            rc = qw_add(w, type == FR_QT_BF16 ? t->name : nm, type == FR_QT_BF16 ? FR_DT_BF16 : FR_DT_U8, 2, sh, b);
        }
        fr_qmatrix_free(&q);
        return rc;
    }
    const size_t qb = type == FR_QT_Q8_0 ? (size_t)cols : (size_t)cols / 2;
    uint8_t *qw = qw_keep(w, malloc(qb * rows));
    uint16_t *sc = qw_keep(w, malloc((size_t)nb * 2 * rows));
    uint16_t *mi = type == FR_QT_Q4_1 ? qw_keep(w, malloc((size_t)nb * 2 * rows)) : NULL;
    if (!qw || !sc || (type == FR_QT_Q4_1 && !mi)) {
        fr_qmatrix_free(&q);
        return fr_error(FR_ERR_NOMEM, "out of memory quantizing %s", t->name);
    }
    for (int r = 0; r < rows; r++) {
        const uint8_t *row = src + rb * (size_t)r;
        memcpy(sc + (size_t)r * nb, row, (size_t)nb * 2);
        size_t off = (size_t)nb * 2;
        if (mi) {
            memcpy(mi + (size_t)r * nb, row + off, (size_t)nb * 2);
            off += (size_t)nb * 2;
        }
        memcpy(qw + qb * r, row + off, qb);
    }
    fr_qmatrix_free(&q);
    char nm[1024];
    int64_t shq[2] = {rows, (int64_t)qb}, shs[2] = {rows, nb};
    if (fr_qmatrix_tensor_name(nm, sizeof nm, t->name, "qweight")) return fr_error(FR_ERR_ARG, "tensor name too long: %s", t->name);
    FR_CHECK(qw_add(w, nm, type == FR_QT_Q8_0 ? FR_DT_I8 : FR_DT_U8, 2, shq, qw));
    fr_qmatrix_tensor_name(nm, sizeof nm, t->name, "scales");
    FR_CHECK(qw_add(w, nm, FR_DT_F16, 2, shs, sc));
    if (mi) {
        fr_qmatrix_tensor_name(nm, sizeof nm, t->name, "mins");
        FR_CHECK(qw_add(w, nm, FR_DT_F16, 2, shs, mi));
    }
    return FR_OK;
}

/* 1 if dir exists and holds no entries, 0 if it holds some, -1 if it does not exist. */
static int dir_state(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return errno == ENOENT ? -1 : 0;
    struct dirent *de;
    int empty = 1;
    while ((de = readdir(d)) != NULL)
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) {
            empty = 0;
            break;
        }
    closedir(d);
    return empty;
}

static int copy_if_present(const char *in_dir, const char *out_dir, const char *file) {
    char src[4096], dst[4096];
    if ((size_t)snprintf(src, sizeof src, "%s/%s", in_dir, file) >= sizeof src ||
        (size_t)snprintf(dst, sizeof dst, "%s/%s", out_dir, file) >= sizeof dst)
        return fr_error(FR_ERR_ARG, "path too long: %s", in_dir);
    struct stat sb;
    if (stat(src, &sb) != 0) return FR_OK;
    return fr_copy_file(src, dst);
}

int fr_quantize_model(const char *in_dir, const char *out_dir, const char *type,
                      int (*progress)(void *user, double frac, const char *phase), void *user) {
    fr_clear_error();
    if (!in_dir || !out_dir || !type) return fr_error(FR_ERR_ARG, "fr_quantize_model: NULL argument");
    /* q4_1 is ours (qmatrix.c). Every other type is a scheme of the GGUF export (bf16 ... q5_k_m:
     * fr_gguf_export_type_from_name), and its matrices take the ggml type that export gives
     * them (fr_gguf_hf_matrix_type: the mixes' Q6_K layers, the fallbacks of widths that are
     * not a multiple of a block), encoded as the export encodes them, so the folder holds the
     * GGUF's blocks and the engine gives both the same logits. */
    static const char *const TYPES[] = {"bf16", "q8_0", "q4_0", "q4_1", "q4_k", "q5_k", "q6_k", "q4_k_m", "q5_k_m"};
    int known = 0;
    for (size_t k = 0; k < sizeof TYPES / sizeof TYPES[0]; k++) known |= !strcmp(type, TYPES[k]);
    if (!known)
        return fr_error(FR_ERR_ARG, "unknown quantization type '%s' (expected bf16, q8_0, q4_0, q4_1, q4_k, q5_k, q6_k, "
                        "q4_k_m or q5_k_m)", type);
    const int scheme = strcmp(type, "q4_1") ? fr_gguf_export_type_from_name(type) : -1;
    const fr_qtype qt = scheme == FR_GGML_BF16 ? FR_QT_BF16 : FR_QT_Q4_1; /* our quantizers' types */
    struct stat sb;
    if (stat(in_dir, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return fr_error(FR_ERR_IO, "model folder %s does not exist or is not a folder", in_dir);
    char path[4096], tmp_dir[3800];
    if ((size_t)snprintf(path, sizeof path, "%s/config.json", in_dir) >= sizeof path ||
        (size_t)snprintf(tmp_dir, sizeof tmp_dir, "%s.tmp-%d", out_dir, (int)getpid()) >= sizeof tmp_dir)
        return fr_error(FR_ERR_ARG, "path too long: %s", in_dir);
    char *cfg_text = NULL;
    size_t cfg_len = 0;
    FR_CHECK(fr_read_file(path, &cfg_text, &cfg_len));
    fr_config cfg;
    int rc = fr_config_parse(&cfg, cfg_text, cfg_len);
    cJSON *root = rc == FR_OK ? cJSON_ParseWithLength(cfg_text, cfg_len) : NULL;
    free(cfg_text);
    if (rc != FR_OK) return rc;
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return fr_error(FR_ERR_FORMAT, "%s: not a JSON object", path);
    }
    if (cJSON_GetObjectItemCaseSensitive(root, "quantization_config")) {
        cJSON_Delete(root);
        return fr_error(FR_ERR_ARG, "%s is already quantized (its config.json has a quantization_config)", in_dir);
    }
    int ds = dir_state(out_dir);
    if (ds == 0) {
        cJSON_Delete(root);
        return fr_error(FR_ERR_ARG, "output folder %s already exists and is not empty", out_dir);
    }

    fr_st_set set;
    memset(&set, 0, sizeof set);
    rc = fr_st_set_open_dir(&set, in_dir);
    if (rc != FR_OK) {
        cJSON_Delete(root);
        return rc;
    }
    qwriter w;
    memset(&w, 0, sizeof w);
    cJSON *qc = cJSON_CreateObject(), *skipped = cJSON_CreateArray();
    double total = 0, done = 0;
    for (int f = 0; f < set.n_files; f++)
        for (int i = 0; i < set.files[f].n_tensors; i++) total += (double)set.files[f].tensors[i].nbytes;
    int n_quant = 0;
    for (int f = 0; f < set.n_files && rc == FR_OK; f++) {
        for (int i = 0; i < set.files[f].n_tensors && rc == FR_OK; i++) {
            const fr_st_tensor *t = &set.files[f].tensors[i];
            /* A block scheme keeps kv_b_proj FP32: the engine never multiplies by it as stored
             * but splits it into W_UK^T and W_UV per head (the GGUF's attn_k_b / attn_v_b, blocks
             * along other axes) and quantizes those by the export's rule, so quantizing it here
             * would only round it twice. The embedding and the head take the GGUF's token_embd
             * and output types; a tied embedding stays FP32 unless both are one type (the engine
             * then derives each from the FP32 values, as the export does). */
            const int linear = is_float_dtype(t->dtype) && is_quantized_linear(t);
            const int head = is_float_dtype(t->dtype) && t->ndim == 2 &&
                             (!strcmp(t->name, "model.embed_tokens.weight") || !strcmp(t->name, "lm_head.weight"));
            int gt = -1; /* the GGUF's type of this matrix */
            if (scheme >= 0 && (linear || head)) {
                const int L = cfg.num_hidden_layers;
                gt = ends_with(t->name, "kv_b_proj.weight") ? (scheme == FR_GGML_BF16 ? FR_GGML_BF16 : FR_GGML_F32)
                                                           : fr_gguf_hf_matrix_type(scheme, t->name, t->shape[1], L);
                if (head && cfg.tie_word_embeddings && gt != fr_gguf_matrix_type(scheme, "output.weight", t->shape[1], L))
                    gt = FR_GGML_F32;
                if (linear && gt == FR_GGML_F16)
                    rc = fr_error(FR_ERR_ARG, "tensor %s has %lld columns, not a multiple of %d: cannot quantize it to %s",
                                  t->name, (long long)t->shape[1], FR_QBLOCK, type);
            }
            const int quant = scheme < 0 ? linear : gt >= 0 && gt != FR_GGML_F32 && gt != FR_GGML_F16;
            if (rc != FR_OK) break;
            if (quant) {
                /* BF16 by our encoder: the same bits as ggml's for finite values, and NaN kept */
                rc = quantize_tensor(&w, t, qt, gt == FR_GGML_BF16 ? -1 : gt);
                n_quant += linear;
            } else if (is_float_dtype(t->dtype)) {
                float *b = qw_keep(&w, malloc((t->numel ? t->numel : 1) * sizeof(float)));
                if (!b) rc = fr_error(FR_ERR_NOMEM, "out of memory copying %s", t->name);
                if (rc == FR_OK) rc = fr_st_to_f32(t, b, t->numel);
                if (rc == FR_OK) rc = qw_add(&w, t->name, FR_DT_F32, t->ndim, t->shape, b);
                if (rc == FR_OK && t->ndim == 2 && skipped) {
                    char mod[1024];
                    size_t len = strlen(t->name);
                    if (len > 7 && strcmp(t->name + len - 7, ".weight") == 0) len -= 7;
                    snprintf(mod, sizeof mod, "%.*s", (int)len, t->name);
                    cJSON_AddItemToArray(skipped, cJSON_CreateString(mod));
                }
            } else {
                rc = qw_add(&w, t->name, t->dtype, t->ndim, t->shape, t->data); /* integers: as stored */
            }
            done += (double)t->nbytes;
            if (rc == FR_OK && progress && progress(user, total > 0 ? 0.95 * done / total : 0.0, "quantizing"))
                rc = fr_error(FR_ERR_STATE, "quantization cancelled");
        }
    }
    if (rc == FR_OK && n_quant == 0)
        rc = fr_error(FR_ERR_FORMAT, "%s has no linear weights (\"*_proj.weight\") to quantize", in_dir);
    if (rc == FR_OK && (!qc || !skipped)) rc = fr_error(FR_ERR_NOMEM, "out of memory");
    char *json = NULL;
    if (rc == FR_OK && qt == FR_QT_BF16) {
        /* BF16 is a plain float checkpoint in HF terms: "torch_dtype": "bfloat16" and no
         * quantization_config, so every loader (fr_model_load, transformers) reads it. */
        cJSON_DeleteItemFromObjectCaseSensitive(root, "torch_dtype");
        cJSON_AddStringToObject(root, "torch_dtype", "bfloat16");
        json = cJSON_Print(root);
        if (!json) rc = fr_error(FR_ERR_NOMEM, "out of memory");
    } else if (rc == FR_OK) {
        cJSON_AddStringToObject(qc, "quant_method", "frugal");
        cJSON_AddStringToObject(qc, "format", type);
        cJSON_AddNumberToObject(qc, "block_size", FR_QBLOCK);
        cJSON_AddStringToObject(qc, "scale_dtype", "float16");
        const char *q4 = "<base>.qweight U8 [rows, cols/2], <base>.scales F16 [rows, cols/32], <base>.mins F16 [rows, cols/32]";
        cJSON_AddStringToObject(qc, "tensors", scheme == FR_GGML_Q8_0 ? "<base>.qweight I8 [rows, cols], <base>.scales F16 [rows, cols/32]"
                                             : scheme < 0 ? q4
                                             : scheme == FR_GGML_Q4_0 ? "as q4_1: <base>.qweight U8 [rows, cols/2], <base>.scales F16 "
                                                                        "[rows, cols/32], <base>.mins F16 [rows, cols/32] = -8 scales"
                                             : "<base>.<type> U8 [rows, row bytes]: ggml's super-blocks of 256 values as GGUF "
                                               "stores them; a matrix whose width is not a multiple of 256 as q8_0");
        cJSON_AddStringToObject(qc, "quantized_modules",
                                scheme < 0 ? "2-D tensors named *_proj.weight and kv_a_proj_with_mqa"
                                           : "2-D tensors named *_proj.weight but kv_b_proj, kv_a_proj_with_mqa, "
                                             "model.embed_tokens and lm_head, each in the ggml type and blocks of a GGUF "
                                             "export of this format");
        cJSON_AddItemToObject(qc, "modules_not_quantized", skipped);
        skipped = NULL;
        cJSON_AddItemToObject(root, "quantization_config", qc);
        qc = NULL;
        json = cJSON_Print(root);
        if (!json) rc = fr_error(FR_ERR_NOMEM, "out of memory");
    }
    cJSON_Delete(qc);
    cJSON_Delete(skipped);
    cJSON_Delete(root);
    int made_tmp = 0;
    if (rc == FR_OK) {
        fr_remove_tree(tmp_dir);                 /* a leftover of a killed run with our pid */
        fr_remove_stale_tmp(out_dir, ".tmp-");   /* and those of killed runs with other pids */
        if (mkdir(tmp_dir, 0755) != 0) rc = fr_error(FR_ERR_IO, "cannot create %s: %s", tmp_dir, strerror(errno));
        else made_tmp = 1;
    }
    if (rc == FR_OK) {
        snprintf(path, sizeof path, "%s/model.safetensors", tmp_dir);
        const char *mk[] = {"format", "frugal_quantization"}, *mv[] = {"pt", type};
        rc = fr_st_write(path, w.e, w.n, mk, mv, 2);
    }
    if (rc == FR_OK && progress && progress(user, 0.98, "writing"))
        rc = fr_error(FR_ERR_STATE, "quantization cancelled");
    if (rc == FR_OK) {
        snprintf(path, sizeof path, "%s/config.json", tmp_dir);
        size_t jl = strlen(json);
        json[jl] = '\n'; /* replace the NUL: the file ends with a newline */
        rc = fr_write_file_atomic(path, json, jl + 1);
        json[jl] = 0;
    }
    static const char *const AUX[] = {"tokenizer.json", "tokenizer_config.json", "generation_config.json"};
    for (int i = 0; i < 3 && rc == FR_OK; i++) rc = copy_if_present(in_dir, tmp_dir, AUX[i]);
    fr_st_set_close(&set);
    qw_free(&w);
    free(json);
    if (rc == FR_OK) {
        if (dir_state(out_dir) == 1 && rmdir(out_dir) != 0)
            rc = fr_error(FR_ERR_IO, "cannot replace the empty folder %s: %s", out_dir, strerror(errno));
        else if (rename(tmp_dir, out_dir) != 0)
            rc = fr_error(FR_ERR_IO, "cannot rename %s to %s: %s", tmp_dir, out_dir, strerror(errno));
    }
    if (rc != FR_OK) {
        if (made_tmp) fr_remove_tree(tmp_dir);
        return rc;
    }
    char parent[4096];
    snprintf(parent, sizeof parent, "%s", out_dir);
    char *slash = strrchr(parent, '/');
    if (slash && slash != parent) *slash = 0;
    else snprintf(parent, sizeof parent, "%s", slash ? "/" : ".");
    fr_fsync_dir(parent);
    if (progress) progress(user, 1.0, "done");
    return FR_OK;
}

/* ------------------------------------------------------------------ dequantized model, evaluation */

int fr_model_load_dequantized(fr_model **out, const char *dir) {
    fr_clear_error();
    if (!out || !dir) return fr_error(FR_ERR_ARG, "fr_model_load_dequantized: NULL argument");
    *out = NULL;
    char path[4096];
    if ((size_t)snprintf(path, sizeof path, "%s/config.json", dir) >= sizeof path)
        return fr_error(FR_ERR_ARG, "path too long: %s", dir);
    fr_config cfg;
    FR_CHECK(fr_config_load(&cfg, path));
    fr_st_set set;
    FR_CHECK(fr_st_set_open_dir(&set, dir));
    int depth = 0;
    for (int k = 0; k < cfg.num_nextn_predict_layers; k++) {
        char name[128];
        snprintf(name, sizeof name, "model.layers.%d.eh_proj.weight", cfg.num_hidden_layers + k);
        if (fr_qmatrix_stored_type(&set, name) < 0) break;
        depth++;
    }
    cfg.num_nextn_predict_layers = depth;
    fr_model *m = NULL;
    int rc = fr_model_create(&m, &cfg, 1);
    for (int i = 0; rc == FR_OK && i < fr_model_num_tensors(m); i++) {
        int ndim = 0;
        int64_t shape[4] = {0};
        const char *name = fr_model_tensor_info(m, i, &ndim, shape);
        size_t numel = 0;
        float *p = fr_model_param(m, name, &numel);
        int st = fr_qmatrix_stored_type(&set, name);
        if (st < 0) {
            rc = fr_error(FR_ERR_FORMAT, "%s: missing tensor %s", dir, name);
        } else if (st == FR_QT_Q8_0 || st == FR_QT_Q4_1 || fr_qtype_is_k((fr_qtype)st)) {
            fr_qmatrix q;
            if (ndim != 2) rc = fr_error(FR_ERR_FORMAT, "%s: tensor %s is stored quantized but is not a matrix", dir, name);
            else rc = fr_qmatrix_load(&q, &set, name, (int)shape[0], (int)shape[1], (fr_qtype)st);
            if (rc == FR_OK) {
                for (int r = 0; r < q.rows; r++) fr_qmatrix_row_f32(&q, r, p + (size_t)r * q.cols);
                fr_qmatrix_free(&q);
            }
        } else {
            const fr_st_tensor *t = fr_st_set_find(&set, name);
            int same = t->ndim == ndim && t->numel == numel;
            for (int d = 0; same && d < ndim; d++) same = t->shape[d] == shape[d];
            if (!same) rc = fr_error(FR_ERR_FORMAT, "%s: tensor %s has another shape than the config implies", dir, name);
            else rc = fr_st_to_f32(t, p, numel);
        }
    }
    fr_st_set_close(&set);
    if (rc != FR_OK) {
        if (m) fr_model_free(m);
        return rc;
    }
    *out = m;
    return FR_OK;
}

int fr_eval_dataset(fr_model *m, const char *data_dir, const char *split, int seq_len, int batch,
                    long max_tokens, double *mean_loss, long *n_targets) {
    fr_clear_error();
    if (!m || !data_dir || !split || !mean_loss) return fr_error(FR_ERR_ARG, "fr_eval_dataset: NULL argument");
    if (seq_len < 2 || batch < 1) return fr_error(FR_ERR_ARG, "fr_eval_dataset: seq_len must be >= 2 and batch >= 1");
    fr_dataset *ds = NULL;
    long n_win = 0;
    FR_CHECK(fr_eval_windows_open(&ds, data_dir, split, seq_len, max_tokens, fr_model_config(m)->vocab_size, &n_win));
    int rc = FR_OK;
    int *buf = malloc((size_t)(seq_len + 1) * sizeof(int));
    int *tok = malloc((size_t)batch * seq_len * sizeof(int)), *tgt = malloc((size_t)batch * seq_len * sizeof(int));
    if (rc == FR_OK && (!buf || !tok || !tgt)) rc = fr_error(FR_ERR_NOMEM, "out of memory");
    double sum = 0;
    long count = 0;
    for (long w0 = 0; rc == FR_OK && w0 < n_win; w0 += batch) {
        const int B = (int)(n_win - w0 < batch ? n_win - w0 : batch);
        for (int b = 0; b < B && rc == FR_OK; b++) {
            rc = fr_dataset_read(ds, (uint64_t)(w0 + b) * seq_len, buf, (size_t)seq_len + 1);
            for (int t = 0; rc == FR_OK && t < seq_len; t++) {
                tok[b * seq_len + t] = buf[t];
                tgt[b * seq_len + t] = buf[t + 1];
            }
        }
        fr_loss_info li;
        if (rc == FR_OK) rc = fr_model_forward_eval(m, tok, tgt, B, seq_len, &li);
        if (rc == FR_OK) {
            sum += li.loss_main * (double)li.n_targets;
            count += li.n_targets;
        }
    }
    free(buf);
    free(tok);
    free(tgt);
    fr_dataset_close(ds);
    if (rc != FR_OK) return rc;
    *mean_loss = count ? sum / (double)count : NAN;
    if (n_targets) *n_targets = count;
    return FR_OK;
}
