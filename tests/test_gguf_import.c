/* test_gguf_import.c — GGUF import (src/formats/gguf_import.c): tests/fixtures/hf_export is exported
 * to GGUF as F32, F16, BF16, Q8_0 and Q4_0 (fr_gguf_export), imported back, and compared with
 * the folder:
 *   - every parameter (MTP layers excepted: a GGUF has none). Per element, with b the HF
 *     value and amax the max |.| of b's 32-element quantization block (32 consecutive values
 *     of a row: ne[0] of the GGUF tensor is the HF row):
 *       F32  exact;
 *       F16  |a-b| <= max(2^-11 |b|, 2^-25)       (round to nearest, subnormal spacing 2^-24);
 *       BF16 |a-b| <= 2^-8 |b|;
 *       Q8_0 |a-b| <= amax (0.5/127 + 2^-11) (1 + 1e-5)  (half a step of d = amax/127, plus
 *            127 steps times the F16 rounding of d);
 *       Q4_0 |a-b| <= amax (1/8 + 2^-11) (1 + 1e-5)      (one step |d| = amax/8: the value
 *            opposite the extreme clamps from 8 to 7 steps, plus 8 steps times the F16 rounding);
 *     matrices whose rows are not a multiple of 32 are F16 in every quantized file, and norms,
 *     the routing bias and routers are F32 (exact);
 *   - the tokenizer: same vocabulary size, special ids, chat template and ids for a text;
 *   - engine logits over a prompt vs the folder's engine (max |a-b| / max |b|): F32 <= 1e-5,
 *     F16 <= 1e-2, BF16 <= 5e-2, Q8_0 <= 5e-2. These bounds hold only if no routing decision
 *     flips: the routed-expert counts of every main MoE layer (fr_model_expert_counts over the
 *     same tokens) are compared with the folder's, must be equal for F32, F16 and Q8_0, and
 *     a flip (BF16) is reported. Q4_0 (whose 4-bit weights on this tiny random model do flip
 *     routes, so that a max-error bound means nothing), and any type whose routing flipped,
 *     gets the sanity bound instead: cosine similarity of all the logits >= 0.9 (tensors
 *     mixed up or misplaced give about 0);
 *   - `frugal generate --temperature 0` prints the same text with the F32 GGUF as with the
 *     folder;
 *   - a rope_interleave = false copy of the folder: the import (pair order, rope_interleave 1)
 *     gives the folder's logits (F32, <= 1e-5);
 *   - hostile files: truncated, wrong architecture, missing metadata key, missing tensor,
 *     unknown extra tensor, no tokenizer: clear errors.
 */
#define _GNU_SOURCE
#include "frugal.h"
#include "formats/gguf.h"
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define FIXTURE FR_FIXTURES_DIR "/hf_export"

static char g_tmp[256];
static const char *PROMPT = "In the beginning God created the heaven and the earth.";

static void tmp_path(char *buf, size_t n, const char *name) { snprintf(buf, n, "%s/%s", g_tmp, name); }

static const int TYPES[5] = {FR_GGML_F32, FR_GGML_F16, FR_GGML_BF16, FR_GGML_Q8_0, FR_GGML_Q4_0};

/* ------------------------------------------------------------------ parameters */

static int is_router_or_1d(const char *name, int ndim) {
    return ndim == 1 || strstr(name, "mlp.gate.weight") != NULL;
}

/* Count of elements of imported tensor a outside the stated bound vs reference b [rows, cols]. */
static long count_bad(int type, const char *name, int ndim, int64_t rows, int64_t cols, const float *a, const float *b,
                      double *worst) {
    long bad = 0;
    int eff = type;
    if (is_router_or_1d(name, ndim)) eff = FR_GGML_F32;
    else if ((type == FR_GGML_Q8_0 || type == FR_GGML_Q4_0) && cols % 32) eff = FR_GGML_F16;
    if (ndim == 1) cols = rows, rows = 1;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c0 = 0; c0 < cols; c0 += 32) {
            int64_t c1 = c0 + 32 < cols ? c0 + 32 : cols;
            double amax = 0;
            for (int64_t c = c0; c < c1; c++) amax = fmax(amax, fabs(b[r * cols + c]));
            for (int64_t c = c0; c < c1; c++) {
                double x = a[r * cols + c], y = b[r * cols + c], d = fabs(x - y), bound;
                switch (eff) {
                case FR_GGML_F32: bound = 0; break;
                case FR_GGML_F16: bound = fmax(ldexp(fabs(y), -11), ldexp(1.0, -25)); break;
                case FR_GGML_BF16: bound = ldexp(fabs(y), -8); break;
                case FR_GGML_Q8_0: bound = amax * (0.5 / 127 + ldexp(1.0, -11)) * (1 + 1e-5); break;
                default: bound = amax * (1.0 / 8 + ldexp(1.0, -11)) * (1 + 1e-5); break;
                }
                if (!(d <= bound)) bad++;
                double rel = amax > 0 ? d / amax : d;
                if (rel > *worst) *worst = rel;
            }
        }
    return bad;
}

static void compare_params(int type, fr_model *imp, fr_model *ref) {
    const fr_config *rc = fr_model_config(ref);
    const fr_config *ic = fr_model_config(imp);
    CHECK(ic->num_nextn_predict_layers == 0, "imported model has no MTP layers");
    CHECK(ic->hidden_size == rc->hidden_size && ic->vocab_size == rc->vocab_size && ic->num_hidden_layers == rc->num_hidden_layers &&
              ic->num_attention_heads == rc->num_attention_heads && ic->q_lora_rank == rc->q_lora_rank &&
              ic->kv_lora_rank == rc->kv_lora_rank && ic->qk_nope_head_dim == rc->qk_nope_head_dim &&
              ic->qk_rope_head_dim == rc->qk_rope_head_dim && ic->v_head_dim == rc->v_head_dim &&
              ic->intermediate_size == rc->intermediate_size && ic->moe_intermediate_size == rc->moe_intermediate_size &&
              ic->n_routed_experts == rc->n_routed_experts && ic->n_shared_experts == rc->n_shared_experts &&
              ic->num_experts_per_tok == rc->num_experts_per_tok && ic->n_group == rc->n_group &&
              ic->topk_group == rc->topk_group && ic->topk_method == rc->topk_method && ic->scoring_func == rc->scoring_func &&
              ic->norm_topk_prob == rc->norm_topk_prob && ic->routed_scaling_factor == rc->routed_scaling_factor &&
              ic->first_k_dense_replace == rc->first_k_dense_replace && ic->max_position_embeddings == rc->max_position_embeddings &&
              ic->rope_theta == rc->rope_theta && ic->rope_type == rc->rope_type && ic->rms_norm_eps == rc->rms_norm_eps &&
              ic->tie_word_embeddings == rc->tie_word_embeddings && ic->has_correction_bias == rc->has_correction_bias &&
              ic->rope_interleave == rc->rope_interleave && ic->bos_token_id == rc->bos_token_id &&
              ic->eos_token_id == rc->eos_token_id && strcmp(ic->model_type, rc->model_type) == 0,
          "%s: config rebuilt from the metadata", fr_ggml_type_name(type));
    int n = fr_model_num_tensors(ref), n_cmp = 0;
    long bad = 0;
    double worst = 0;
    char mtp_prefix[64];
    snprintf(mtp_prefix, sizeof mtp_prefix, "model.layers.%d.", rc->num_hidden_layers);
    for (int i = 0; i < n; i++) {
        int ndim;
        int64_t shape[4];
        const char *name = fr_model_tensor_info(ref, i, &ndim, shape);
        if (strncmp(name, mtp_prefix, strlen(mtp_prefix)) == 0) continue;
        size_t nr, ni;
        const float *b = fr_model_param(ref, name, &nr);
        const float *a = fr_model_param(imp, name, &ni);
        if (!a || ni != nr) {
            CHECK(0, "%s: parameter %s missing or of the wrong size in the import", fr_ggml_type_name(type), name);
            continue;
        }
        long nb = count_bad(type, name, ndim, shape[0], ndim > 1 ? shape[1] : 0, a, b, &worst);
        if (nb) printf("  %s: %s: %ld elements outside the bound\n", fr_ggml_type_name(type), name, nb);
        bad += nb;
        n_cmp++;
    }
    CHECK(n_cmp == fr_model_num_tensors(imp), "%s: %d parameters compared, the import has %d", fr_ggml_type_name(type), n_cmp,
          fr_model_num_tensors(imp));
    CHECK(bad == 0, "%s: %ld parameter elements outside their rounding bound", fr_ggml_type_name(type), bad);
    printf("  %-4s parameters: %d tensors, worst |a-b| / block amax %.3g\n", fr_ggml_type_name(type), n_cmp, worst);
}

/* ------------------------------------------------------------------ logits */

static float *engine_logits(const char *model, const int *ids, int T, int *V) {
    fr_engine *e = NULL;
    if (fr_engine_load(&e, model, NULL) != FR_OK) {
        printf("  engine load %s: %s\n", model, fr_last_error());
        return NULL;
    }
    *V = fr_engine_config(e)->vocab_size;
    fr_seq *s = NULL;
    float *lg = malloc((size_t)T * (size_t)*V * sizeof *lg);
    int ok = lg && fr_seq_create(&s, e) == FR_OK;
    fr_seq *seqs[1] = {s};
    const int *toks[1] = {ids};
    int nt[1] = {T};
    ok = ok && fr_engine_forward(e, seqs, 1, toks, nt, lg, 1) == FR_OK;
    if (!ok) printf("  engine forward %s: %s\n", model, fr_last_error());
    fr_seq_free(s);
    fr_engine_free(e);
    if (!ok) {
        free(lg);
        return NULL;
    }
    return lg;
}

/* cos(a, b) over n values, in double */
static double cosine(const float *a, const float *b, size_t n) {
    double ab = 0, aa = 0, bb = 0;
    for (size_t i = 0; i < n; i++) {
        ab += (double)a[i] * b[i];
        aa += (double)a[i] * a[i];
        bb += (double)b[i] * b[i];
    }
    return aa > 0 && bb > 0 ? ab / sqrt(aa * bb) : 0;
}

/* Routed-expert counts of every MoE block after a forward over ids (n_blocks * E longs). */
static long *expert_counts(fr_model *m, const int *ids, int T, int *n) {
    fr_loss_info li;
    if (fr_model_forward_eval(m, ids, NULL, 1, T, &li) != FR_OK) return NULL;
    const fr_config *c = fr_model_config(m);
    int nb = fr_model_num_moe_blocks(m);
    long *cnt = calloc((size_t)nb * (size_t)c->n_routed_experts + 1, sizeof *cnt);
    int *li_idx = calloc((size_t)nb + 1, sizeof *li_idx);
    if (!cnt || !li_idx || fr_model_expert_counts(m, cnt, li_idx) != FR_OK) {
        free(cnt);
        free(li_idx);
        return NULL;
    }
    /* main layers only (the reference has an MTP block the import lacks) */
    int k = 0;
    for (int i = 0; i < nb; i++)
        if (li_idx[i] < c->num_hidden_layers) k++;
    *n = k * c->n_routed_experts;
    free(li_idx);
    return cnt;
}

static void test_formats(void) {
    fr_model *ref = NULL;
    fr_tokenizer *rtok = NULL;
    CHECK(fr_model_load(&ref, FIXTURE) == FR_OK, "load fixture: %s", fr_last_error());
    CHECK(fr_tokenizer_load(&rtok, FIXTURE) == FR_OK, "load fixture tokenizer: %s", fr_last_error());
    if (!ref || !rtok) goto out;
    int *ids = NULL;
    size_t T = 0;
    CHECK(fr_tokenizer_encode(rtok, PROMPT, strlen(PROMPT), 1, &ids, &T) == FR_OK && T > 4, "encode prompt");
    int V = 0;
    float *ref_lg = engine_logits(FIXTURE, ids, (int)T, &V);
    CHECK(ref_lg != NULL, "folder engine logits");
    int n_rc = 0;
    long *ref_cnt = expert_counts(ref, ids, (int)T, &n_rc);
    CHECK(ref_cnt != NULL && n_rc > 0, "reference expert counts");
    /* text with special tokens, CJK, digits, newlines */
    const char *text = "<\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>In the beginning 1234567, "
                       "\xe4\xb8\xad\xe6\x96\x87 \xe3\x81\x8b\xe3\x81\xaa!\n\n  God said: \"Let there be light\".";
    const double lg_bound[5] = {1e-5, 1e-2, 5e-2, 5e-2, 0}; /* Q4_0: cosine only */
    for (int k = 0; k < 5 && ref_lg && ref_cnt; k++) {
        const int type = TYPES[k];
        const char *tn = fr_ggml_type_name(type);
        char path[512], name[32];
        snprintf(name, sizeof name, "m_%s.gguf", tn);
        tmp_path(path, sizeof path, name);
        fr_gguf_export_stats st;
        if (fr_gguf_export(FIXTURE, path, type, &st) != FR_OK) {
            CHECK(0, "export %s: %s", tn, fr_last_error());
            continue;
        }
        fr_model *imp = NULL;
        CHECK(fr_model_load_gguf(&imp, path) == FR_OK, "import %s: %s", tn, fr_last_error());
        if (!imp) continue;
        compare_params(type, imp, ref);

        /* tokenizer */
        fr_tokenizer *tok = NULL;
        CHECK(fr_tokenizer_load_gguf(&tok, path) == FR_OK, "%s: tokenizer: %s", tn, fr_last_error());
        if (tok) {
            CHECK(fr_tokenizer_vocab_size(tok) == fr_tokenizer_vocab_size(rtok), "%s: vocab size %d vs %d", tn,
                  fr_tokenizer_vocab_size(tok), fr_tokenizer_vocab_size(rtok));
            for (int s = 0; s < 3; s++)
                CHECK(fr_tokenizer_special_id(tok, (fr_special_token)s) == fr_tokenizer_special_id(rtok, (fr_special_token)s),
                      "%s: special id %d", tn, s);
            const char *t1 = fr_tokenizer_chat_template(tok), *t2 = fr_tokenizer_chat_template(rtok);
            CHECK(t1 && t2 && strcmp(t1, t2) == 0, "%s: chat template", tn);
            for (int ps = 0; ps < 2; ps++) {
                int *a = NULL, *b = NULL;
                size_t na = 0, nb = 0;
                int ok = fr_tokenizer_encode(tok, text, strlen(text), ps, &a, &na) == FR_OK &&
                         fr_tokenizer_encode(rtok, text, strlen(text), ps, &b, &nb) == FR_OK;
                CHECK(ok && na == nb && na > 0 && memcmp(a, b, na * sizeof *a) == 0, "%s: encode (parse_special %d): %zu vs %zu ids",
                      tn, ps, na, nb);
                char *dec = NULL;
                size_t dl = 0;
                CHECK(ok && fr_tokenizer_decode(tok, a, na, 0, &dec, &dl) == FR_OK && dl == strlen(text) && memcmp(dec, text, dl) == 0,
                      "%s: decode round trip", tn);
                free(dec);
                free(a);
                free(b);
            }
            fr_tokenizer_free(tok);
        }

        /* routing and logits */
        int n_ic = 0;
        long *cnt = expert_counts(imp, ids, (int)T, &n_ic);
        int same_routing = cnt && n_ic == n_rc && memcmp(cnt, ref_cnt, (size_t)n_rc * sizeof *cnt) == 0;
        int W = 0;
        float *lg = engine_logits(path, ids, (int)T, &W);
        CHECK(lg && W == V, "%s: GGUF engine logits", tn);
        if (lg && W == V) {
            double err = fr_rel_err(lg, ref_lg, (size_t)T * (size_t)V), cos = cosine(lg, ref_lg, (size_t)T * (size_t)V);
            printf("  %-4s logits: max |a-b| / max |b| = %.3g (bound %s), cosine %.6f%s\n", tn, err,
                   type == FR_GGML_Q4_0 ? "none; cosine >= 0.9" : k == 0 ? "1e-5" : k == 1 ? "1e-2" : "5e-2", cos,
                   same_routing ? "" : "; routing differs from the folder");
            if (type != FR_GGML_Q4_0 && same_routing)
                CHECK(err <= lg_bound[k], "%s: logits error %.3g > %.0e", tn, err, lg_bound[k]);
            else
                CHECK(cos >= 0.9, "%s: logits cosine %.4f below the sanity bound 0.9", tn, cos);
            if (type == FR_GGML_F32 || type == FR_GGML_F16 || type == FR_GGML_Q8_0)
                CHECK(same_routing, "%s: the routed-expert counts equal the folder's", tn);
        }
        free(lg);
        free(cnt);
        fr_model_free(imp);
    }
    free(ref_cnt);
    free(ref_lg);
    free(ids);
out:
    fr_tokenizer_free(rtok);
    fr_model_free(ref);
}

/* ------------------------------------------------------------------ CLI */

static char *run_capture(const char *cmd) {
    FILE *p = popen(cmd, "r");
    if (!p) return NULL;
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    size_t r;
    while (buf && (r = fread(buf + n, 1, cap - n - 1, p)) > 0) {
        n += r;
        if (n + 1 == cap) {
            char *nb = realloc(buf, cap *= 2);
            if (!nb) { free(buf); buf = NULL; }
            else buf = nb;
        }
    }
    int st = pclose(p);
    if (!buf) return NULL;
    buf[n] = 0;
    if (st != 0) {
        free(buf);
        return NULL;
    }
    return buf;
}

static void test_cli(void) {
    char path[512], cmd[2048];
    tmp_path(path, sizeof path, "m_F32.gguf");
    const char *fmt = "'%s' generate --model '%s' --prompt 'In the beginning God' --temperature 0 --max-tokens 16 2>/dev/null";
    snprintf(cmd, sizeof cmd, fmt, FR_FRUGAL_BIN, FIXTURE);
    char *a = run_capture(cmd);
    snprintf(cmd, sizeof cmd, fmt, FR_FRUGAL_BIN, path);
    char *b = run_capture(cmd);
    CHECK(a && b && strlen(a) > strlen("In the beginning God"), "frugal generate ran on both");
    CHECK(a && b && strcmp(a, b) == 0, "frugal generate: the F32 GGUF prints the folder's text");
    free(a);
    free(b);
    /* a broken file: nonzero exit and a message */
    char bad[512];
    tmp_path(bad, sizeof bad, "trunc_cli.gguf");
    FILE *f = fopen(bad, "wb");
    if (f) {
        fwrite("GGUF\3\0\0\0", 1, 8, f);
        fclose(f);
    }
    snprintf(cmd, sizeof cmd, "'%s' generate --model '%s' --prompt x 2>&1", FR_FRUGAL_BIN, bad);
    char *c = run_capture(cmd);
    CHECK(c == NULL, "frugal generate fails on a truncated GGUF");
    free(c);
}

/* ------------------------------------------------------------------ rope_interleave = false */

static void test_rope_halves(void) {
    char dir[512], p[600];
    tmp_path(dir, sizeof dir, "halves");
    CHECK(mkdir(dir, 0755) == 0, "mkdir");
    fr_config c;
    CHECK(fr_config_load(&c, FIXTURE "/config.json") == FR_OK, "config");
    c.rope_interleave = 0;
    snprintf(p, sizeof p, "%s/config.json", dir);
    CHECK(fr_config_save(&c, p) == FR_OK, "save config: %s", fr_last_error());
    const char *files[3] = {"model.safetensors", "tokenizer.json", "tokenizer_config.json"};
    for (int i = 0; i < 3; i++) {
        char src[600];
        snprintf(src, sizeof src, "%s/%s", FIXTURE, files[i]);
        snprintf(p, sizeof p, "%s/%s", dir, files[i]);
        CHECK(symlink(src, p) == 0, "symlink %s", files[i]);
    }
    char path[512];
    tmp_path(path, sizeof path, "halves.gguf");
    CHECK(fr_gguf_export(dir, path, FR_GGML_F32, NULL) == FR_OK, "export halves: %s", fr_last_error());
    fr_tokenizer *tok = NULL;
    CHECK(fr_tokenizer_load(&tok, dir) == FR_OK, "tokenizer");
    if (!tok) return;
    int *ids = NULL;
    size_t T = 0;
    CHECK(fr_tokenizer_encode(tok, PROMPT, strlen(PROMPT), 1, &ids, &T) == FR_OK, "encode");
    int V = 0, W = 0;
    float *a = engine_logits(dir, ids, (int)T, &V), *b = engine_logits(path, ids, (int)T, &W);
    CHECK(a && b && V == W, "logits of both");
    if (a && b && V == W) {
        double err = fr_rel_err(b, a, (size_t)T * (size_t)V);
        printf("  rope_interleave=false folder vs its F32 GGUF: logits error %.3g (bound 1e-5)\n", err);
        CHECK(err <= 1e-5, "rope halves: logits error %.3g", err);
    }
    fr_model *m = NULL;
    CHECK(fr_model_load_gguf(&m, path) == FR_OK && fr_model_config(m)->rope_interleave == 1, "import is in pair order");
    fr_model_free(m);
    free(a);
    free(b);
    free(ids);
    fr_tokenizer_free(tok);
}

/* ------------------------------------------------------------------ hostile files */

static int copy_prefix(const char *src, const char *dst, long n) {
    FILE *f = fopen(src, "rb"), *g = fopen(dst, "wb");
    int ok = f && g;
    char buf[4096];
    while (ok && n > 0) {
        size_t want = n < (long)sizeof buf ? (size_t)n : sizeof buf;
        size_t r = fread(buf, 1, want, f);
        if (r == 0) break;
        ok = fwrite(buf, 1, r, g) == r;
        n -= (long)r;
    }
    if (f) fclose(f);
    if (g && fclose(g) != 0) ok = 0;
    return ok;
}

/* Copy GGUF src to dst: metadata (arch replaced when arch != NULL; key `drop_key` left out),
 * tensors except `drop_tensor`, plus an extra 1-D tensor `extra` when non-NULL. */
static int rewrite_gguf(const char *src, const char *dst, const char *arch, const char *drop_key, const char *drop_tensor,
                        const char *extra) {
    fr_gguf g;
    if (fr_gguf_open(&g, src) != FR_OK) return -1;
    fr_gguf_writer *w = NULL;
    int rc = fr_gguf_writer_new(&w);
    for (int i = 0; rc == FR_OK && i < g.n_kv; i++) {
        const fr_gguf_kv *kv = &g.kv[i];
        if (drop_key && strcmp(kv->key, drop_key) == 0) continue;
        if (strcmp(kv->key, "general.alignment") == 0) continue; /* the writer adds its own */
        int64_t iv;
        double fv;
        const char *s;
        size_t n;
        if (arch && strcmp(kv->key, "general.architecture") == 0) { rc = fr_gguf_set_str(w, kv->key, arch); continue; }
        switch (kv->type) {
        case FR_GGUF_U32: fr_gguf_kv_int(kv, &iv); rc = fr_gguf_set_u32(w, kv->key, (uint32_t)iv); break;
        case FR_GGUF_I32: fr_gguf_kv_int(kv, &iv); rc = fr_gguf_set_i32(w, kv->key, (int32_t)iv); break;
        case FR_GGUF_U64: fr_gguf_kv_int(kv, &iv); rc = fr_gguf_set_u64(w, kv->key, (uint64_t)iv); break;
        case FR_GGUF_BOOL: fr_gguf_kv_int(kv, &iv); rc = fr_gguf_set_bool(w, kv->key, (int)iv); break;
        case FR_GGUF_F32: fr_gguf_kv_float(kv, &fv); rc = fr_gguf_set_f32(w, kv->key, (float)fv); break;
        case FR_GGUF_STRING: {
            fr_gguf_kv_str(kv, &s, &n);
            char *t = strndup(s, n);
            rc = fr_gguf_set_str(w, kv->key, t);
            free(t);
            break;
        }
        case FR_GGUF_ARRAY:
            if (kv->arr_type == FR_GGUF_STRING) {
                char **v = calloc(kv->arr_n + 1, sizeof *v);
                for (uint64_t j = 0; j < kv->arr_n; j++) {
                    fr_gguf_arr_str(kv, j, &s, &n);
                    v[j] = strndup(s, n);
                }
                rc = fr_gguf_set_arr_str(w, kv->key, (const char *const *)v, kv->arr_n);
                for (uint64_t j = 0; j < kv->arr_n; j++) free(v[j]);
                free(v);
            } else {
                int32_t *v = calloc(kv->arr_n + 1, sizeof *v);
                for (uint64_t j = 0; j < kv->arr_n; j++) {
                    fr_gguf_arr_int(kv, j, &iv);
                    v[j] = (int32_t)iv;
                }
                rc = fr_gguf_set_arr_i32(w, kv->key, v, kv->arr_n);
                free(v);
            }
            break;
        default: rc = -1;
        }
    }
    size_t max_n = 32;
    for (int i = 0; rc == FR_OK && i < g.n_tensors; i++) {
        const fr_gguf_tensor *t = &g.tensors[i];
        if (drop_tensor && strcmp(t->name, drop_tensor) == 0) continue;
        if (t->numel > max_n) max_n = t->numel;
        rc = fr_gguf_add_tensor(w, t->name, t->n_dims, t->ne, t->type);
    }
    int64_t ne1[1] = {32};
    if (rc == FR_OK && extra) rc = fr_gguf_add_tensor(w, extra, 1, ne1, FR_GGML_F32);
    float *buf = calloc(max_n, sizeof *buf);
    if (rc == FR_OK) rc = fr_gguf_writer_begin(w, dst);
    for (int i = 0; rc == FR_OK && i < g.n_tensors; i++) {
        const fr_gguf_tensor *t = &g.tensors[i];
        if (drop_tensor && strcmp(t->name, drop_tensor) == 0) continue;
        rc = fr_gguf_tensor_to_f32(t, buf, t->numel);
        if (rc == FR_OK) rc = fr_gguf_write_tensor_data(w, buf, t->numel);
    }
    if (rc == FR_OK && extra) {
        memset(buf, 0, 32 * sizeof *buf);
        rc = fr_gguf_write_tensor_data(w, buf, 32);
    }
    if (rc == FR_OK) rc = fr_gguf_writer_finish(w);
    fr_gguf_writer_free(w);
    free(buf);
    fr_gguf_close(&g);
    return rc;
}

static void expect_model_error(const char *path, const char *needle, const char *what) {
    fr_model *m = NULL;
    int rc = fr_model_load_gguf(&m, path);
    CHECK(rc != FR_OK && m == NULL, "%s: load should fail", what);
    CHECK(rc != FR_OK && strstr(fr_last_error(), needle), "%s: message '%s' lacks '%s'", what, fr_last_error(), needle);
    fr_engine *e = NULL;
    CHECK(fr_engine_load(&e, path, NULL) != FR_OK && e == NULL, "%s: engine load should fail", what);
    fr_model_free(m);
    fr_engine_free(e);
}

static void test_hostile(void) {
    char src[512], p[512];
    tmp_path(src, sizeof src, "m_F32.gguf");
    struct stat st;
    if (stat(src, &st) != 0) {
        CHECK(0, "F32 GGUF missing");
        return;
    }
    const long cuts[3] = {6, 2000, (long)st.st_size - 100};
    for (int i = 0; i < 3; i++) {
        char name[32];
        snprintf(name, sizeof name, "trunc%d.gguf", i);
        tmp_path(p, sizeof p, name);
        CHECK(copy_prefix(src, p, cuts[i]), "truncate");
        fr_model *m = NULL;
        int rc = fr_model_load_gguf(&m, p);
        CHECK(rc == FR_ERR_FORMAT && m == NULL && fr_last_error()[0], "truncated at %ld: rc %d '%s'", cuts[i], rc, fr_last_error());
        fr_tokenizer *t = NULL;
        CHECK(fr_tokenizer_load_gguf(&t, p) != FR_OK && t == NULL, "truncated at %ld: tokenizer fails", cuts[i]);
        fr_model_free(m);
    }
    tmp_path(p, sizeof p, "llama.gguf");
    CHECK(rewrite_gguf(src, p, "llama", NULL, NULL, NULL) == FR_OK, "write llama file");
    expect_model_error(p, "general.architecture is 'llama'", "wrong architecture");

    tmp_path(p, sizeof p, "nokey.gguf");
    CHECK(rewrite_gguf(src, p, NULL, "deepseek2.attention.kv_lora_rank", NULL, NULL) == FR_OK, "write file without a key");
    expect_model_error(p, "missing metadata key 'deepseek2.attention.kv_lora_rank'", "missing key");

    tmp_path(p, sizeof p, "notensor.gguf");
    CHECK(rewrite_gguf(src, p, NULL, NULL, "blk.1.attn_v_b.weight", NULL) == FR_OK, "write file without a tensor");
    expect_model_error(p, "missing tensor blk.1.attn_v_b.weight", "missing tensor");

    tmp_path(p, sizeof p, "extra.gguf");
    CHECK(rewrite_gguf(src, p, NULL, NULL, NULL, "blk.0.mystery.weight") == FR_OK, "write file with an extra tensor");
    expect_model_error(p, "blk.0.mystery.weight is not part of", "extra tensor");

    tmp_path(p, sizeof p, "notok.gguf");
    CHECK(rewrite_gguf(src, p, NULL, "tokenizer.ggml.model", NULL, NULL) == FR_OK, "write file without tokenizer model");
    fr_tokenizer *t = NULL;
    CHECK(fr_tokenizer_load_gguf(&t, p) != FR_OK && strstr(fr_last_error(), "tokenizer.ggml.model"), "no tokenizer: '%s'",
          fr_last_error());
    fr_tokenizer_free(t);
    /* the rewritten copy itself is a valid model (the writer round trip changes nothing) */
    tmp_path(p, sizeof p, "copy.gguf");
    CHECK(rewrite_gguf(src, p, NULL, NULL, NULL, NULL) == FR_OK, "write copy");
    fr_model *m = NULL;
    CHECK(fr_model_load_gguf(&m, p) == FR_OK, "the untouched copy loads: %s", fr_last_error());
    fr_model_free(m);
}

static void rm_rf(const char *dir) {
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
}

int main(void) {
    snprintf(g_tmp, sizeof g_tmp, "/tmp/frugal_gguf_import_XXXXXX");
    if (!mkdtemp(g_tmp)) {
        perror("mkdtemp");
        return 1;
    }
    test_formats();
    test_cli();
    test_rope_halves();
    test_hostile();
    rm_rf(g_tmp);
    return fr_test_finish("test_gguf_import");
}
