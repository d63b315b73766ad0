/*
 * test_interop.c — interoperability: DeepSeek FP8 folders, HF export checked against
 * transformers, the GGUF writer/reader and exporter, and load errors that name the culprit.
 *
 * Tolerances (FP32 everywhere):
 *   frugal vs transformers on the same weights     relative 1e-5  (max|a-b| / max|ref|)
 *   FP8 weights vs their BF16 source               E4M3 rounding, per weight: E4M3 keeps 3
 *       mantissa bits, so |w8 - w| <= 2^-4 |w| (half an ulp), or <= 2^-10 * scale below
 *       2^-6 * scale (subnormals); every weight is checked against exactly that bound.
 *   FP8 folder logits vs BF16 folder logits        relative num_hidden_layers * 2^-4: to
 *       first order the relative errors of the layers' rounded weights add up, one 2^-4 per
 *       decoder layer. The exact part of the proof is the 1e-5 check of the FP8 folder
 *       against transformers run on the same dequantized weights, and frugal's FP8-vs-BF16
 *       difference must equal transformers' FP8-vs-BF16 difference to 1e-4.
 *
 * `test_interop --write-hf-export DIR` writes the hf_export fixture's folder (used by
 * tools/make_interop_fixtures.py, which adds transformers' logits).
 */
#define _GNU_SOURCE
#include "formats/fp8.h"
#include "frugal.h"
#include "formats/gguf.h"
#include "core/internal.h"
#include "formats/safetensors.h"
#include "testutil.h"
#include "text/tokenizer_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define TOL_REF 1e-5
#define TOL_FP8_PER_LAYER 0.0625
#define EXPORT_SEED 20240917u

static char g_tmp[256];

static void tmp_path(char *buf, size_t n, const char *name) { snprintf(buf, n, "%s/%s", g_tmp, name); }

static float *read_f32(const fr_st_file *f, const char *name, size_t *n) {
    const fr_st_tensor *t = fr_st_find(f, name);
    if (!t) return NULL;
    float *buf = malloc((t->numel + 1) * sizeof(float));
    if (fr_st_to_f32(t, buf, t->numel) != FR_OK) { free(buf); return NULL; }
    if (n) *n = t->numel;
    return buf;
}

static int *read_ids(const fr_st_file *f, int *T) {
    const fr_st_tensor *t = fr_st_find(f, "input_ids");
    if (!t) return NULL;
    int32_t *ids = malloc(t->numel * sizeof *ids);
    if (fr_st_to_i32(t, ids, t->numel) != FR_OK) { free(ids); return NULL; }
    *T = (int)t->numel;
    return (int *)ids;
}

static const float *run_logits(fr_model *m, const int *ids, int T) {
    fr_loss_info li;
    if (fr_model_forward_eval(m, ids, NULL, 1, T, &li) != FR_OK) return NULL;
    return fr_model_logits(m);
}

/* ================================================================ FP8 */

static void test_fp8_codec(void) {
    int bad = 0;
    for (int c = 0; c < 256; c++) {
        float v = fr_fp8_e4m3_decode((uint8_t)c);
        uint8_t back = fr_fp8_e4m3_encode(v);
        if ((c & 0x7f) == 0x7f) { if (!isnan(v) || (back & 0x7f) != 0x7f) bad++; }
        else if (back != c) bad++;
    }
    CHECK(bad == 0, "E4M3 decode/encode round trip: %d codes differ", bad);
    /* ties go to even, saturation, subnormals */
    CHECK(fr_fp8_e4m3_encode(1.0625f) == 0x38, "1 + 1/16 ties to 1.0");
    CHECK(fr_fp8_e4m3_encode(1.1875f) == 0x3a, "1 + 3/16 ties to 1.25");
    CHECK(fr_fp8_e4m3_encode(1000.0f) == 0x7e && fr_fp8_e4m3_encode(-1000.0f) == 0xfe, "saturates to +-448");
    CHECK(fr_fp8_e4m3_encode(0x1p-10f) == 0x00 && fr_fp8_e4m3_encode(0x1.8p-10f) == 0x01, "subnormal rounding");
    CHECK(fr_fp8_e4m3_decode(0x01) == 0x1p-9f && fr_fp8_e4m3_decode(0x7e) == 448.0f, "decode extremes");

    int br, bc;
    const char *ok = "{\"quantization_config\": {\"quant_method\": \"fp8\", \"fmt\": \"e4m3\", \"weight_block_size\": [64, 32]}}";
    CHECK(fr_fp8_block_size(ok, strlen(ok), &br, &bc) == FR_OK && br == 64 && bc == 32, "block size parsed");
    const char *none = "{\"model_type\": \"deepseek_v3\"}";
    CHECK(fr_fp8_block_size(none, strlen(none), &br, &bc) == FR_OK && br == 128 && bc == 128, "default block");
    const char *gptq = "{\"quantization_config\": {\"quant_method\": \"gptq\"}}";
    CHECK(fr_fp8_block_size(gptq, strlen(gptq), &br, &bc) == FR_ERR_UNSUPPORTED && strstr(fr_last_error(), "gptq"),
          "other quant_method refused: %s", fr_last_error());
    const char *badbs = "{\"quantization_config\": {\"quant_method\": \"fp8\", \"weight_block_size\": [0, 128]}}";
    CHECK(fr_fp8_block_size(badbs, strlen(badbs), &br, &bc) == FR_ERR_CONFIG, "bad block size refused");
}

static void test_fp8_fixture(void) {
    char bf16_dir[1024], fp8_dir[1024], ref_path[1024];
    snprintf(bf16_dir, sizeof bf16_dir, "%s/fp8/bf16", FR_FIXTURES_DIR);
    snprintf(fp8_dir, sizeof fp8_dir, "%s/fp8/fp8", FR_FIXTURES_DIR);
    snprintf(ref_path, sizeof ref_path, "%s/fp8/reference.safetensors", FR_FIXTURES_DIR);

    /* every dequantized weight within E4M3 rounding of its BF16 source */
    fr_st_set s8, s16;
    int rc8 = fr_st_set_open_dir(&s8, fp8_dir), rc16 = fr_st_set_open_dir(&s16, bf16_dir);
    CHECK(rc8 == FR_OK && rc16 == FR_OK, "open fp8/bf16 folders: %s", fr_last_error());
    if (rc8 != FR_OK || rc16 != FR_OK) return;
    CHECK(s8.n_files == 2, "FP8 fixture is sharded (%d files)", s8.n_files);
    int n_fp8 = 0, n_blocks_partial = 0;
    double worst = 0;
    for (int f = 0; f < s8.n_files; f++) {
        for (int i = 0; i < s8.files[f].n_tensors; i++) {
            const fr_st_tensor *w = &s8.files[f].tensors[i];
            if (w->dtype != FR_DT_F8_E4M3) continue;
            char sname[200];
            snprintf(sname, sizeof sname, "%s_scale_inv", w->name);
            const fr_st_tensor *sc = fr_st_set_find(&s8, sname), *src = fr_st_set_find(&s16, w->name);
            CHECK(sc && src, "%s: scale and source present", w->name);
            if (!sc || !src) continue;
            n_fp8++;
            if (w->shape[0] % 128 || w->shape[1] % 128) n_blocks_partial++;
            float *d = malloc(w->numel * sizeof *d), *r = malloc(w->numel * sizeof *r), *s = malloc(sc->numel * sizeof *s);
            CHECK(fr_fp8_dequant(w, sc, 128, 128, d, w->numel) == FR_OK, "dequant %s: %s", w->name, fr_last_error());
            fr_st_to_f32(src, r, src->numel);
            fr_st_to_f32(sc, s, sc->numel);
            int64_t cols = w->shape[1];
            int over = 0;
            for (size_t k = 0; k < w->numel; k++) {
                float scale = s[(k / (size_t)cols) / 128 * (size_t)sc->shape[1] + (k % (size_t)cols) / 128];
                double bound = fmax(0x1p-4 * fabs(r[k]), 0x1p-10 * scale) * (1 + 1e-6);
                double e = fabs((double)d[k] - r[k]);
                if (e > bound) over++;
                if (fabs(r[k]) > 0x1p-6 * scale && e / fabs(r[k]) > worst) worst = e / fabs(r[k]);
            }
            CHECK(over == 0, "%s: %d weights off by more than E4M3 rounding", w->name, over);
            free(d); free(r); free(s);
        }
    }
    CHECK(n_fp8 >= 10 && n_blocks_partial > 0, "FP8 tensors checked: %d (%d with partial blocks)", n_fp8, n_blocks_partial);
    printf("fp8: %d FP8 tensors, worst relative weight error %.4f (bound 2^-4)\n", n_fp8, worst);
    fr_st_set_close(&s8);
    fr_st_set_close(&s16);

    fr_model *m8 = NULL, *m16 = NULL;
    int rc = fr_model_load(&m8, fp8_dir);
    CHECK(rc == FR_OK, "load FP8 folder: %s", fr_last_error());
    rc |= fr_model_load(&m16, bf16_dir);
    CHECK(rc == FR_OK, "load BF16 folder: %s", fr_last_error());
    fr_st_file ref;
    if (rc != FR_OK || fr_st_open(&ref, ref_path) != FR_OK) {
        CHECK(0, "reference: %s", fr_last_error());
        fr_model_free(m8); fr_model_free(m16);
        return;
    }
    int T = 0;
    int *ids = read_ids(&ref, &T);
    size_t n = 0;
    float *l8_ref = read_f32(&ref, "logits_fp8", &n), *l16_ref = read_f32(&ref, "logits_bf16", NULL);
    const int V = fr_model_config(m8)->vocab_size;
    CHECK(ids && l8_ref && l16_ref && n == (size_t)T * (size_t)V, "reference tensors");
    if (ids && l8_ref && l16_ref && n == (size_t)T * (size_t)V) {
        const float *l8p = run_logits(m8, ids, T);
        float *l8 = l8p ? malloc(n * sizeof *l8) : NULL;
        if (l8) memcpy(l8, l8p, n * sizeof *l8);
        const float *l16 = run_logits(m16, ids, T);
        CHECK(l8 && l16, "forward: %s", fr_last_error());
        if (l8 && l16) {
            double e8 = fr_rel_err(l8, l8_ref, n), e16 = fr_rel_err(l16, l16_ref, n), e = fr_rel_err(l8, l16, n);
            double eref = fr_rel_err(l8_ref, l16_ref, n);
            CHECK(e8 <= TOL_REF, "FP8 folder vs transformers on the dequantized weights: %.3e", e8);
            CHECK(e16 <= TOL_REF, "BF16 folder vs transformers: %.3e", e16);
            double tol = TOL_FP8_PER_LAYER * fr_model_config(m8)->num_hidden_layers;
            CHECK(e <= tol, "FP8 vs BF16 logits: %.3e > %.4f", e, tol);
            CHECK(fabs(e - eref) <= 1e-4, "FP8-vs-BF16 difference %.6f equals transformers' %.6f", e, eref);
            printf("fp8: logits vs transformers %.2e (FP8) %.2e (BF16); FP8 vs BF16 %.3e (transformers %.3e), tolerance %.4f\n",
                   e8, e16, e, eref, tol);
        }
        free(l8);
    }
    free(ids); free(l8_ref); free(l16_ref);
    fr_st_close(&ref);
    fr_model_free(m8);
    fr_model_free(m16);
}

/* ================================================================ HF export */

static int make_export_model(fr_model **m, fr_tokenizer **tok) {
    char path[1024];
    snprintf(path, sizeof path, "%s/tokenizer/frugal_trained", FR_FIXTURES_DIR);
    FR_CHECK(fr_tokenizer_load(tok, path));
    fr_config cfg;
    snprintf(path, sizeof path, "%s/v3_mtp/config.json", FR_FIXTURES_DIR);
    FR_CHECK(fr_config_load(&cfg, path));
    cfg.vocab_size = fr_tokenizer_vocab_size(*tok);
    cfg.num_nextn_predict_layers = 1;
    cfg.rope_interleave = 1;
    cfg.bos_token_id = fr_tokenizer_special_id(*tok, FR_TOKEN_BOS);
    cfg.eos_token_id = fr_tokenizer_special_id(*tok, FR_TOKEN_EOS);
    return fr_model_create(m, &cfg, EXPORT_SEED);
}

static int write_hf_export(const char *dir) {
    fr_model *m = NULL;
    fr_tokenizer *tok = NULL;
    int rc = make_export_model(&m, &tok);
    if (rc == FR_OK) rc = fr_model_save(m, dir);
    if (rc == FR_OK) rc = fr_tokenizer_save(tok, dir);
    if (rc != FR_OK) fprintf(stderr, "write-hf-export: %s\n", fr_last_error());
    fr_model_free(m);
    fr_tokenizer_free(tok);
    return rc == FR_OK ? 0 : 1;
}

static int files_equal(const char *a, const char *b) {
    char *x = NULL, *y = NULL;
    size_t nx = 0, ny = 0;
    int eq = fr_read_file(a, &x, &nx) == FR_OK && fr_read_file(b, &y, &ny) == FR_OK && nx == ny && memcmp(x, y, nx) == 0;
    free(x);
    free(y);
    return eq;
}

static void test_hf_export(void) {
    char dir[1024], path[1200], mine[1200];
    snprintf(dir, sizeof dir, "%s/hf_export", FR_FIXTURES_DIR);
    /* frugal still writes exactly the committed folder */
    char out[512];
    tmp_path(out, sizeof out, "hf_export");
    CHECK(write_hf_export(out) == 0, "re-create the export");
    const char *files[] = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"};
    for (int i = 0; i < 4; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        snprintf(mine, sizeof mine, "%s/%s", out, files[i]);
        CHECK(files_equal(path, mine), "%s is byte-identical to the committed fixture", files[i]);
    }
    /* transformers' tokenization and logits */
    fr_st_file ref;
    snprintf(path, sizeof path, "%s/reference.safetensors", dir);
    if (fr_st_open(&ref, path) != FR_OK) { CHECK(0, "reference: %s", fr_last_error()); return; }
    int T = 0;
    int *ids = read_ids(&ref, &T);
    size_t n = 0;
    float *lref = read_f32(&ref, "logits", &n);
    char *text = NULL;
    size_t tlen = 0;
    snprintf(path, sizeof path, "%s/text.txt", dir);
    fr_tokenizer *tok = NULL;
    fr_model *m = NULL;
    CHECK(ids && lref && fr_read_file(path, &text, &tlen) == FR_OK, "fixture files");
    CHECK(fr_tokenizer_load(&tok, dir) == FR_OK, "tokenizer: %s", fr_last_error());
    CHECK(fr_model_load(&m, dir) == FR_OK, "model: %s", fr_last_error());
    if (ids && lref && text && tok && m) {
        int *mine_ids = NULL;
        size_t n_ids = 0;
        CHECK(fr_tokenizer_encode(tok, text, tlen, 0, &mine_ids, &n_ids) == FR_OK, "encode");
        CHECK(n_ids == (size_t)T && mine_ids && memcmp(mine_ids, ids, (size_t)T * sizeof *ids) == 0,
              "encoding equals AutoTokenizer's (%zu vs %d ids)", n_ids, T);
        free(mine_ids);
        const fr_config *c = fr_model_config(m);
        CHECK(n == (size_t)T * (size_t)c->vocab_size, "logits shape");
        const float *l = run_logits(m, ids, T);
        if (l && n == (size_t)T * (size_t)c->vocab_size) {
            double e = fr_rel_err(l, lref, n);
            CHECK(e <= TOL_REF, "frugal-saved folder: logits vs transformers %.3e", e);
            printf("hf_export: %d tokens, logits vs transformers %.2e (tolerance %.0e)\n", T, e, TOL_REF);
        }
        /* MTP saved the DeepSeek way: layer L holds eh_proj, enorm, hnorm, shared_head and copies
         * of the embedding and head */
        fr_st_set set;
        if (fr_st_set_open_dir(&set, dir) == FR_OK) {
            const char *mtp[] = {"eh_proj.weight", "enorm.weight", "hnorm.weight", "shared_head.norm.weight",
                                 "shared_head.head.weight", "embed_tokens.weight", "self_attn.kv_b_proj.weight"};
            for (int i = 0; i < 7; i++) {
                char nm[128];
                snprintf(nm, sizeof nm, "model.layers.%d.%s", c->num_hidden_layers, mtp[i]);
                CHECK(fr_st_set_find(&set, nm) != NULL, "MTP tensor %s saved", nm);
            }
            fr_st_set_close(&set);
        }
    }
    free(text);
    free(ids);
    free(lref);
    fr_st_close(&ref);
    fr_model_free(m);
    fr_tokenizer_free(tok);
}

/* ================================================================ errors name the culprit */

/* Copy the tensors of folder `src` into dst/model.safetensors, dropping `drop` and
 * truncating `shrink` to its first row / half its length; config.json copied. */
static int rewrite_folder(const char *src, const char *dst, const char *drop, const char *shrink) {
    fr_st_set s;
    FR_CHECK(fr_st_set_open_dir(&s, src));
    mkdir(dst, 0755);
    int n = 0;
    for (int f = 0; f < s.n_files; f++) n += s.files[f].n_tensors;
    fr_st_entry *e = calloc((size_t)n, sizeof *e);
    int k = 0;
    for (int f = 0; f < s.n_files; f++) {
        for (int i = 0; i < s.files[f].n_tensors; i++) {
            const fr_st_tensor *t = &s.files[f].tensors[i];
            if (drop && strcmp(t->name, drop) == 0) continue;
            e[k].name = t->name;
            e[k].dtype = t->dtype;
            e[k].ndim = t->ndim;
            memcpy(e[k].shape, t->shape, sizeof e[k].shape);
            e[k].data = t->data;
            if (shrink && strcmp(t->name, shrink) == 0) e[k].shape[0] = t->shape[0] > 1 ? t->shape[0] / 2 : 1;
            k++;
        }
    }
    char p[1200], q[1200];
    snprintf(p, sizeof p, "%s/model.safetensors", dst);
    int rc = fr_st_write(p, e, k, NULL, NULL, 0);
    free(e);
    fr_st_set_close(&s);
    if (rc != FR_OK) return rc;
    char *cfg = NULL;
    size_t len = 0;
    snprintf(p, sizeof p, "%s/config.json", src);
    snprintf(q, sizeof q, "%s/config.json", dst);
    FR_CHECK(fr_read_file(p, &cfg, &len));
    rc = fr_write_file_atomic(q, cfg, len);
    free(cfg);
    return rc;
}

static void expect_load_error(const char *dir, const char *needle, const char *what) {
    fr_model *m = NULL;
    int rc = fr_model_load(&m, dir);
    CHECK(rc != FR_OK && strstr(fr_last_error(), needle) != NULL, "%s: rc %d, message '%s' should name %s", what, rc,
          fr_last_error(), needle);
    fr_model_free(m);
}

static void test_errors(void) {
    char fp8_dir[1024], d[512];
    snprintf(fp8_dir, sizeof fp8_dir, "%s/fp8/fp8", FR_FIXTURES_DIR);
    const char *t_missing = "model.layers.1.self_attn.kv_a_layernorm.weight";
    const char *t_shape = "model.layers.0.mlp.up_proj.weight";
    const char *t_scale = "model.layers.1.mlp.experts.2.down_proj.weight_scale_inv";

    tmp_path(d, sizeof d, "err_missing");
    CHECK(rewrite_folder(fp8_dir, d, t_missing, NULL) == FR_OK, "write %s: %s", d, fr_last_error());
    expect_load_error(d, t_missing, "missing tensor");
    tmp_path(d, sizeof d, "err_shape");
    CHECK(rewrite_folder(fp8_dir, d, NULL, t_shape) == FR_OK, "write %s", d);
    expect_load_error(d, t_shape, "mis-shaped tensor");
    tmp_path(d, sizeof d, "err_scale");
    CHECK(rewrite_folder(fp8_dir, d, t_scale, NULL) == FR_OK, "write %s", d);
    expect_load_error(d, t_scale, "missing weight_scale_inv");
    tmp_path(d, sizeof d, "err_scale_shape");
    CHECK(rewrite_folder(fp8_dir, d, NULL, "model.layers.0.mlp.up_proj.weight_scale_inv") == FR_OK, "write %s", d);
    expect_load_error(d, "model.layers.0.mlp.up_proj.weight_scale_inv", "mis-shaped weight_scale_inv");

    /* sharded: the index names a shard that is not there */
    tmp_path(d, sizeof d, "err_shard");
    mkdir(d, 0755);
    const char *copy[] = {"config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors"};
    for (int i = 0; i < 3; i++) {
        char p[1200], q[1200], *buf = NULL;
        size_t len = 0;
        snprintf(p, sizeof p, "%s/%s", fp8_dir, copy[i]);
        snprintf(q, sizeof q, "%s/%s", d, copy[i]);
        CHECK(fr_read_file(p, &buf, &len) == FR_OK && fr_write_file_atomic(q, buf, len) == FR_OK, "copy %s", copy[i]);
        free(buf);
    }
    expect_load_error(d, "model-00002-of-00002.safetensors", "missing shard");

    /* GGUF export names a missing tensor too (tokenizer needed: copy it in) */
    char hf_dir[1024];
    snprintf(hf_dir, sizeof hf_dir, "%s/hf_export", FR_FIXTURES_DIR);
    tmp_path(d, sizeof d, "err_gguf");
    CHECK(rewrite_folder(hf_dir, d, t_missing, NULL) == FR_OK, "write %s", d);
    char tdir[1024];
    snprintf(tdir, sizeof tdir, "%s/tokenizer/frugal_trained", FR_FIXTURES_DIR);
    fr_tokenizer *tok = NULL;
    if (fr_tokenizer_load(&tok, tdir) == FR_OK) {
        fr_tokenizer_save(tok, d);
        fr_tokenizer_free(tok);
        char out[600];
        tmp_path(out, sizeof out, "err.gguf");
        int rc = fr_gguf_export(d, out, FR_GGML_F32, NULL);
        CHECK(rc != FR_OK && strstr(fr_last_error(), t_missing), "GGUF export names the missing tensor: %s", fr_last_error());
        CHECK(access(out, F_OK) != 0, "no partial GGUF left behind");
    }
}

/* ================================================================ GGUF */

static void test_gguf_formats(void) {
    /* F16 conversion: exhaustive round trip over finite halves, and rounding */
    int bad = 0;
    for (unsigned h = 0; h < 65536; h++) {
        if ((h & 0x7c00) == 0x7c00) continue;
        if (fr_gguf_f32_to_f16(fr_gguf_f16_to_f32((uint16_t)h)) != h) bad++;
    }
    CHECK(bad == 0, "F16 round trip: %d values differ", bad);
    CHECK(fr_gguf_f32_to_f16(1.0f + 0x1p-11f) == 0x3c00 && fr_gguf_f32_to_f16(1.0f + 0x1.8p-11f) == 0x3c01, "F16 ties to even");
    CHECK(fr_gguf_f32_to_f16(65520.0f) == 0x7c00 && fr_gguf_f32_to_f16(65519.0f) == 0x7bff, "F16 overflow");
    CHECK(fr_gguf_f32_to_bf16(1.0f + 0x1p-8f) == 0x3f80 && fr_gguf_f32_to_bf16(1.0f + 0x1.8p-7f) == 0x3f82, "BF16 ties to even");
}

static void test_gguf_roundtrip(void) {
    char path[512];
    tmp_path(path, sizeof path, "rt.gguf");
    enum { NT = 5 };
    const int types[NT] = {FR_GGML_F32, FR_GGML_F16, FR_GGML_BF16, FR_GGML_Q8_0, FR_GGML_Q4_0};
    const int64_t ne[NT][3] = {{7, 3, 1}, {5, 1, 1}, {4, 2, 3}, {64, 3, 1}, {32, 2, 2}};
    const int nd[NT] = {2, 1, 3, 2, 3};
    float *src[NT];
    fr_rng rng;
    fr_rng_seed(&rng, 7);
    fr_gguf_writer *w = NULL;
    CHECK(fr_gguf_writer_new(&w) == FR_OK, "writer");
    const char *strs[3] = {"a", "", "\xc3\xa9t\xc3\xa9 \"q\""};
    const int32_t ints[4] = {-1, 0, 7, 2147483647};
    int rc = fr_gguf_set_str(w, "general.architecture", "deepseek2");
    rc |= fr_gguf_set_u32(w, "k.u32", 4000000000u);
    rc |= fr_gguf_set_i32(w, "k.i32", -5);
    rc |= fr_gguf_set_u64(w, "k.u64", 1ull << 40);
    rc |= fr_gguf_set_f32(w, "k.f32", 0.1f);
    rc |= fr_gguf_set_bool(w, "k.bool", 1);
    rc |= fr_gguf_set_arr_str(w, "k.strs", strs, 3);
    rc |= fr_gguf_set_arr_i32(w, "k.ints", ints, 4);
    CHECK(rc == FR_OK, "set metadata: %s", fr_last_error());
    CHECK(fr_gguf_set_u32(w, "k.u32", 1) == FR_ERR_ARG, "duplicate key refused");
    int64_t bad_ne[2] = {20, 2};
    CHECK(fr_gguf_add_tensor(w, "bad", 2, bad_ne, FR_GGML_Q8_0) == FR_ERR_ARG, "ne[0] not a multiple of 32 refused for Q8_0");
    for (int i = 0; i < NT; i++) {
        char nm[32];
        snprintf(nm, sizeof nm, "t%d.%s", i, fr_ggml_type_name(types[i]));
        CHECK(fr_gguf_add_tensor(w, nm, nd[i], ne[i], types[i]) == FR_OK, "add %s: %s", nm, fr_last_error());
    }
    CHECK(fr_gguf_writer_begin(w, path) == FR_OK, "begin: %s", fr_last_error());
    for (int i = 0; i < NT; i++) {
        size_t n = (size_t)(ne[i][0] * ne[i][1] * ne[i][2]);
        src[i] = malloc(n * sizeof(float));
        for (size_t k = 0; k < n; k++) src[i][k] = (float)(fr_rng_normal(&rng) * (i == 4 ? 3.0 : 0.5));
        if (i == 3) for (size_t k = 32; k < 64; k++) src[i][k] = 0.0f; /* an all-zero block */
        CHECK(fr_gguf_write_tensor_data(w, src[i], n) == FR_OK, "data %d: %s", i, fr_last_error());
    }
    CHECK(fr_gguf_writer_finish(w) == FR_OK, "finish: %s", fr_last_error());
    fr_gguf_writer_free(w);

    fr_gguf g;
    rc = fr_gguf_open(&g, path);
    CHECK(rc == FR_OK, "open: %s", fr_last_error());
    if (rc != FR_OK) return;
    CHECK(g.version == 3 && g.n_kv == 8 && g.n_tensors == NT, "counts %d %d", g.n_kv, g.n_tensors);
    const char *s;
    size_t len;
    int64_t iv;
    double dv;
    CHECK(fr_gguf_kv_str(fr_gguf_find_kv(&g, "general.architecture"), &s, &len) == FR_OK && len == 9 && !memcmp(s, "deepseek2", 9), "arch");
    CHECK(fr_gguf_kv_int(fr_gguf_find_kv(&g, "k.u32"), &iv) == FR_OK && iv == 4000000000LL, "u32");
    CHECK(fr_gguf_kv_int(fr_gguf_find_kv(&g, "k.i32"), &iv) == FR_OK && iv == -5, "i32");
    CHECK(fr_gguf_kv_int(fr_gguf_find_kv(&g, "k.u64"), &iv) == FR_OK && iv == (1ll << 40), "u64");
    CHECK(fr_gguf_kv_float(fr_gguf_find_kv(&g, "k.f32"), &dv) == FR_OK && (float)dv == 0.1f, "f32");
    CHECK(fr_gguf_kv_int(fr_gguf_find_kv(&g, "k.bool"), &iv) == FR_OK && iv == 1, "bool");
    const fr_gguf_kv *a = fr_gguf_find_kv(&g, "k.strs");
    CHECK(a && a->arr_n == 3, "string array");
    for (int i = 0; a && i < 3; i++)
        CHECK(fr_gguf_arr_str(a, (uint64_t)i, &s, &len) == FR_OK && len == strlen(strs[i]) && !memcmp(s, strs[i], len), "str %d", i);
    a = fr_gguf_find_kv(&g, "k.ints");
    for (int i = 0; a && i < 4; i++) CHECK(fr_gguf_arr_int(a, (uint64_t)i, &iv) == FR_OK && iv == ints[i], "int %d", i);
    for (int i = 0; i < NT; i++) {
        const fr_gguf_tensor *t = &g.tensors[i];
        size_t n = (size_t)(ne[i][0] * ne[i][1] * ne[i][2]);
        CHECK(t->type == types[i] && t->n_dims == nd[i] && t->numel == n && t->offset % 32 == 0, "tensor %d info", i);
        for (int dd = 0; dd < nd[i]; dd++) CHECK(t->ne[dd] == ne[i][dd], "tensor %d dim %d", i, dd);
        float *back = malloc(n * sizeof *back);
        CHECK(fr_gguf_tensor_to_f32(t, back, n) == FR_OK, "decode %d", i);
        double worst = 0;
        int over = 0;
        for (size_t k = 0; k < n; k++) {
            double e = fabs((double)back[k] - src[i][k]);
            double bound;
            float amax = 0;
            for (size_t j = k / 32 * 32; j < k / 32 * 32 + 32 && j < n; j++) amax = fmaxf(amax, fabsf(src[i][j]));
            switch (types[i]) {
            case FR_GGML_F32: bound = 0; break;
            case FR_GGML_F16: bound = fabs(src[i][k]) * 0x1p-11 + 0x1p-25; break;
            case FR_GGML_BF16: bound = fabs(src[i][k]) * 0x1p-8; break;
            case FR_GGML_Q8_0: bound = amax / 127.0 * 0.5 * 1.01 + amax * 0x1p-11; break;
            default: bound = amax / 8.0 * 1.01; break; /* Q4_0: the clipped +8 step costs a full d */
            }
            if (e > bound) over++;
            if (e > worst) worst = e;
        }
        CHECK(over == 0, "tensor %s: %d values outside the %s bound (worst %.3g)", t->name, over, fr_ggml_type_name(types[i]), worst);
        free(back);
        free(src[i]);
    }
    /* hostile variants of the file: every truncation and random corruption is refused or parsed
     * without reading outside the buffer (ASan checks the latter) */
    char *raw = NULL;
    size_t rawlen = 0;
    fr_read_file(path, &raw, &rawlen);
    fr_gguf_close(&g);
    int n_ok = 0;
    for (size_t cut = 0; raw && cut < rawlen; cut += (cut < 600 ? 1 : 97)) {
        unsigned char *b = malloc(cut + 1);
        memcpy(b, raw, cut);
        fr_gguf h;
        if (fr_gguf_parse(&h, b, cut) == FR_OK) { n_ok++; fr_gguf_close(&h); }
        free(b);
    }
    CHECK(n_ok == 0, "%d truncated copies parsed", n_ok);
    for (int it = 0; raw && it < 3000; it++) {
        unsigned char *b = malloc(rawlen);
        memcpy(b, raw, rawlen);
        int flips = 1 + (int)(fr_rng_next(&rng) % 4);
        for (int f = 0; f < flips; f++) {
            size_t pos = (size_t)(fr_rng_next(&rng) % (rawlen < 700 ? rawlen : 700));
            b[pos] = (unsigned char)fr_rng_next(&rng);
        }
        fr_gguf h;
        if (fr_gguf_parse(&h, b, rawlen) == FR_OK) {
            for (int i = 0; i < h.n_tensors; i++) {
                float *tmp = malloc((h.tensors[i].numel + 1) * sizeof *tmp);
                if (tmp) fr_gguf_tensor_to_f32(&h.tensors[i], tmp, h.tensors[i].numel);
                free(tmp);
            }
            fr_gguf_close(&h);
        }
        free(b);
    }
    free(raw);
}

/* The exporter on the frugal-written folder: metadata and every tensor through our reader. */
static void test_gguf_export(void) {
    char dir[1024], out[600];
    snprintf(dir, sizeof dir, "%s/hf_export", FR_FIXTURES_DIR);
    fr_model *m = NULL;
    fr_tokenizer *tok = NULL;
    if (fr_model_load(&m, dir) != FR_OK || fr_tokenizer_load(&tok, dir) != FR_OK) {
        CHECK(0, "load hf_export: %s", fr_last_error());
        fr_model_free(m);
        return;
    }
    const fr_config *c = fr_model_config(m);
    const int types[3] = {FR_GGML_F32, FR_GGML_Q8_0, FR_GGML_BF16};
    for (int ti = 0; ti < 3; ti++) {
        tmp_path(out, sizeof out, "export.gguf");
        fr_gguf_export_stats st;
        int rc = fr_gguf_export(dir, out, types[ti], &st);
        CHECK(rc == FR_OK, "export %s: %s", fr_ggml_type_name(types[ti]), fr_last_error());
        if (rc != FR_OK) continue;
        CHECK(st.n_mtp_skipped == 1, "MTP layer not exported (%d)", st.n_mtp_skipped);
        fr_gguf g;
        if (fr_gguf_open(&g, out) != FR_OK) { CHECK(0, "open: %s", fr_last_error()); continue; }
        int64_t iv;
        const char *s;
        size_t len;
        struct { const char *k; int64_t v; } ints[] = {
            {"deepseek2.block_count", c->num_hidden_layers}, {"deepseek2.embedding_length", c->hidden_size},
            {"deepseek2.attention.head_count", c->num_attention_heads}, {"deepseek2.attention.head_count_kv", 1},
            {"deepseek2.attention.key_length", c->kv_lora_rank + c->qk_rope_head_dim},
            {"deepseek2.attention.value_length", c->kv_lora_rank},
            {"deepseek2.attention.key_length_mla", c->qk_nope_head_dim + c->qk_rope_head_dim},
            {"deepseek2.attention.value_length_mla", c->v_head_dim}, {"deepseek2.attention.q_lora_rank", c->q_lora_rank},
            {"deepseek2.attention.kv_lora_rank", c->kv_lora_rank}, {"deepseek2.expert_count", c->n_routed_experts},
            {"deepseek2.expert_used_count", c->num_experts_per_tok}, {"deepseek2.expert_shared_count", c->n_shared_experts},
            {"deepseek2.leading_dense_block_count", c->first_k_dense_replace}, {"deepseek2.expert_gating_func", 2},
            {"deepseek2.rope.dimension_count", c->qk_rope_head_dim}, {"deepseek2.expert_feed_forward_length", c->moe_intermediate_size},
            {"tokenizer.ggml.bos_token_id", fr_tokenizer_special_id(tok, FR_TOKEN_BOS)},
            {"tokenizer.ggml.eos_token_id", fr_tokenizer_special_id(tok, FR_TOKEN_EOS)},
        };
        for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++)
            CHECK(fr_gguf_kv_int(fr_gguf_find_kv(&g, ints[i].k), &iv) == FR_OK && iv == ints[i].v, "%s = %lld, expected %lld",
                  ints[i].k, (long long)iv, (long long)ints[i].v);
        CHECK(fr_gguf_kv_str(fr_gguf_find_kv(&g, "general.architecture"), &s, &len) == FR_OK && len == 9, "architecture");
        CHECK(fr_gguf_kv_str(fr_gguf_find_kv(&g, "tokenizer.ggml.pre"), &s, &len) == FR_OK && len == 11 && !memcmp(s, "deepseek-v3", 11), "pre");
        CHECK(fr_gguf_kv_str(fr_gguf_find_kv(&g, "tokenizer.chat_template"), &s, &len) == FR_OK &&
                  len == strlen(fr_tokenizer_chat_template(tok)) && !memcmp(s, fr_tokenizer_chat_template(tok), len), "chat template");
        const fr_gguf_kv *toks = fr_gguf_find_kv(&g, "tokenizer.ggml.tokens"), *merges = fr_gguf_find_kv(&g, "tokenizer.ggml.merges");
        const fr_gguf_kv *tt = fr_gguf_find_kv(&g, "tokenizer.ggml.token_type");
        CHECK(toks && toks->arr_n == (uint64_t)c->vocab_size && tt && tt->arr_n == toks->arr_n, "tokens / types");
        CHECK(merges && merges->arr_n == (uint64_t)fr_tokenizer_num_merges(tok), "merges");
        int tok_bad = 0;
        for (int id = 0; toks && tt && id < c->vocab_size; id++) {
            const char *want = fr_tokenizer_id_to_token(tok, id);
            int64_t ty = 0;
            fr_gguf_arr_int(tt, (uint64_t)id, &ty);
            if (fr_gguf_arr_str(toks, (uint64_t)id, &s, &len) != FR_OK || !want || len != strlen(want) || memcmp(s, want, len)) tok_bad++;
            if (ty != (fr_tokenizer_is_special(tok, id) ? 3 : 1)) tok_bad++;
        }
        CHECK(tok_bad == 0, "%d tokens / types differ", tok_bad);
        int r0a, r0b;
        fr_tokenizer_merge(tok, 0, &r0a, &r0b);
        char m0[256];
        snprintf(m0, sizeof m0, "%s %s", fr_tokenizer_id_to_token(tok, r0a), fr_tokenizer_id_to_token(tok, r0b));
        CHECK(merges && fr_gguf_arr_str(merges, 0, &s, &len) == FR_OK && len == strlen(m0) && !memcmp(s, m0, len), "merge 0");

        /* tensors: every one compared with the model's parameters through the mapping */
        const int L = c->num_hidden_layers, H = c->hidden_size, nh = c->num_attention_heads;
        const int nope = c->qk_nope_head_dim, vd = c->v_head_dim, kvr = c->kv_lora_rank;
        int n_checked = 0;
        for (int i = 0; i < g.n_tensors; i++) {
            const fr_gguf_tensor *t = &g.tensors[i];
            float *got = malloc(t->numel * sizeof *got), *want = malloc(t->numel * sizeof *want);
            CHECK(fr_gguf_tensor_to_f32(t, got, t->numel) == FR_OK, "decode %s", t->name);
            int l = -1;
            char rest[64] = "";
            char hf[160] = "";
            if (sscanf(t->name, "blk.%d.%63s", &l, rest) != 2) l = -1;
            static const char *const pairs[][2] = {
                {"attn_norm.weight", "input_layernorm.weight"}, {"attn_q_a.weight", "self_attn.q_a_proj.weight"},
                {"attn_q_a_norm.weight", "self_attn.q_a_layernorm.weight"}, {"attn_q_b.weight", "self_attn.q_b_proj.weight"},
                {"attn_q.weight", "self_attn.q_proj.weight"}, {"attn_kv_a_mqa.weight", "self_attn.kv_a_proj_with_mqa.weight"},
                {"attn_kv_a_norm.weight", "self_attn.kv_a_layernorm.weight"}, {"attn_output.weight", "self_attn.o_proj.weight"},
                {"ffn_norm.weight", "post_attention_layernorm.weight"}, {"ffn_gate_inp.weight", "mlp.gate.weight"},
                {"exp_probs_b.bias", "mlp.gate.e_score_correction_bias"}, {"ffn_gate.weight", "mlp.gate_proj.weight"},
                {"ffn_up.weight", "mlp.up_proj.weight"}, {"ffn_down.weight", "mlp.down_proj.weight"},
                {"ffn_gate_shexp.weight", "mlp.shared_experts.gate_proj.weight"},
                {"ffn_up_shexp.weight", "mlp.shared_experts.up_proj.weight"},
                {"ffn_down_shexp.weight", "mlp.shared_experts.down_proj.weight"}};
            int ok = 0;
            if (!strcmp(t->name, "token_embd.weight")) snprintf(hf, sizeof hf, "model.embed_tokens.weight");
            else if (!strcmp(t->name, "output_norm.weight")) snprintf(hf, sizeof hf, "model.norm.weight");
            else if (!strcmp(t->name, "output.weight")) snprintf(hf, sizeof hf, c->tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight");
            for (size_t p = 0; l >= 0 && p < sizeof pairs / sizeof pairs[0]; p++)
                if (!strcmp(rest, pairs[p][0])) snprintf(hf, sizeof hf, "model.layers.%d.%s", l, pairs[p][1]);
            if (hf[0]) {
                size_t n = 0;
                const float *p = fr_model_param(m, hf, &n);
                if (p && n == t->numel) { memcpy(want, p, n * sizeof *want); ok = 1; }
            } else if (l >= 0 && (!strcmp(rest, "attn_k_b.weight") || !strcmp(rest, "attn_v_b.weight"))) {
                snprintf(hf, sizeof hf, "model.layers.%d.self_attn.kv_b_proj.weight", l);
                const float *kvb = fr_model_param(m, hf, NULL);
                size_t o = 0;
                for (int h = 0; kvb && h < nh; h++) {
                    const float *hb = kvb + (size_t)h * (size_t)(nope + vd) * (size_t)kvr;
                    if (rest[5] == 'k') { for (int r = 0; r < kvr; r++) for (int j = 0; j < nope; j++) want[o++] = hb[j * kvr + r]; }
                    else for (int r = 0; r < vd * kvr; r++) want[o++] = hb[nope * kvr + r];
                }
                ok = kvb && o == t->numel;
            } else if (l >= 0 && strstr(rest, "_exps.weight")) {
                const char *kind = !strncmp(rest, "ffn_gate", 8) ? "gate_proj" : !strncmp(rest, "ffn_up", 6) ? "up_proj" : "down_proj";
                size_t o = 0;
                for (int e = 0; e < c->n_routed_experts; e++) {
                    size_t n = 0;
                    snprintf(hf, sizeof hf, "model.layers.%d.mlp.experts.%d.%s.weight", l, e, kind);
                    const float *p = fr_model_param(m, hf, &n);
                    if (p && o + n <= t->numel) { memcpy(want + o, p, n * sizeof *want); o += n; }
                }
                ok = o == t->numel;
            }
            CHECK(ok, "GGUF tensor %s maps to a model parameter (%s)", t->name, hf);
            CHECK(l < L, "no MTP tensor exported (%s)", t->name);
            if (ok) {
                float *ref = malloc(t->numel * sizeof *ref);
                /* expected: the parameter encoded to the tensor's type and decoded back */
                size_t bytes = t->numel / (size_t)fr_ggml_block_elems(t->type) * fr_ggml_block_bytes(t->type);
                void *enc = malloc(bytes + 1);
                fr_ggml_quantize(t->type, want, enc, t->numel);
                fr_ggml_dequantize(t->type, enc, ref, t->numel);
                CHECK(memcmp(ref, got, t->numel * sizeof *got) == 0, "%s (%s) equals its source after decoding", t->name,
                      fr_ggml_type_name(t->type));
                if (t->n_dims == 1 || strstr(t->name, "ffn_gate_inp")) CHECK(t->type == FR_GGML_F32, "%s stays F32", t->name);
                else if (t->ne[0] % 32 == 0) CHECK(t->type == types[ti], "%s has the requested type", t->name);
                else CHECK(t->type == FR_GGML_F16 && types[ti] == FR_GGML_Q8_0 ? 1 : t->type == types[ti], "%s fallback", t->name);
                free(ref);
                free(enc);
                n_checked++;
            }
            free(got);
            free(want);
        }
        int expect = 3 + L * (7 + (c->q_lora_rank > 0 ? 3 : 1));
        for (int l = 0; l < L; l++) expect += fr_config_layer_is_moe(c, l) ? 1 + (c->has_correction_bias ? 1 : 0) + 3 + (c->n_shared_experts ? 3 : 0) : 3;
        CHECK(n_checked == g.n_tensors && g.n_tensors == expect, "%d of %d tensors checked, %d expected", n_checked, g.n_tensors, expect);
        (void)H;
        fr_gguf_close(&g);
        printf("gguf export %s: %d tensors verified through our reader\n", fr_ggml_type_name(types[ti]), n_checked);
    }
    fr_model_free(m);
    fr_tokenizer_free(tok);
}

static void rm_rf(const char *dir) {
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "--write-hf-export") == 0) return write_hf_export(argv[2]);
    snprintf(g_tmp, sizeof g_tmp, "/tmp/frugal_interop_XXXXXX");
    if (!mkdtemp(g_tmp)) { perror("mkdtemp"); return 1; }
    test_fp8_codec();
    test_gguf_formats();
    test_gguf_roundtrip();
    test_fp8_fixture();
    test_hf_export();
    test_gguf_export();
    test_errors();
    rm_rf(g_tmp);
    return fr_test_finish("test_interop");
}
