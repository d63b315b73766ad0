/*
 * test_engine_eval.c — loss measured through the inference engine (src/infer/infer_eval.c):
 *
 *  - fr_engine_eval_dataset with FP32 weights equals fr_eval_dataset (training forward) on
 *    the committed fixtures, for chunk 1 (decode), 3 (pieces that do not divide the window)
 *    and seq_len (one prefill), on a hand-written dataset whose windows cross a shard
 *    boundary; the same number of targets; max_tokens limits the windows as there;
 *  - fr_engine_eval_sequences equals fr_model_eval_sequences on sequences of different
 *    lengths, more than one batch group of them;
 *  - BF16 weights stay close to FP32 and are not identical to it (the weight type is used);
 *  - bad arguments fail with FR_ERR_ARG (or the dataset's error) and a message;
 *  - quantizing the dequantized weights of a Q8_0 / Q4_1 folder again gives the stored rows
 *    byte for byte (the formats are idempotent, so an engine built from the dequantized
 *    model and one that reads the folder use the same blocks), and the engine loads such a
 *    folder directly with the same loss as one built from its dequantized weights, and in
 *    its stored format by default (weight_type -1).
 *
 * Tolerance: 1e-5 relative on the mean loss. The FP32 engine and the training forward
 * compute the same function and differ by summation order only (absorbed MLA attention,
 * other GEMM blocking), about 1e-6 relative on a logit (test_infer.c bounds rows at 1e-4);
 * a mean of cross-entropies of about log(vocab) inherits about 1e-6.
 */
#define _GNU_SOURCE
#include "frugal.h"
#include "formats/qmatrix.h"
#include "formats/safetensors.h"
#include "testutil.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#ifndef FR_FIXTURES_DIR
#define FR_FIXTURES_DIR "tests/fixtures"
#endif

#define TOL 1e-5

static char g_tmp[256];

static void make_tokens(int *t, int n, int V, uint64_t seed) {
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
    for (int i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        t[i] = (int)(x % (uint64_t)V);
    }
}

static void put_u32(unsigned char *p, uint32_t v) {
    for (int b = 0; b < 4; b++) p[b] = (unsigned char)(v >> (8 * b));
}

/* One 2-byte-token shard file (layout in include/frugal.h). */
static int write_shard(const char *path, const int *tok, int n, int vocab) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    unsigned char h[64];
    memset(h, 0, sizeof h);
    memcpy(h, "FRUGALTK", 8);
    put_u32(h + 8, 1);
    put_u32(h + 12, 2);
    put_u32(h + 16, (uint32_t)n);
    put_u32(h + 24, (uint32_t)vocab);
    put_u32(h + 28, 0);
    int ok = fwrite(h, 1, 64, f) == 64;
    for (int i = 0; i < n && ok; i++) {
        unsigned char t[2] = {(unsigned char)(tok[i] & 255), (unsigned char)(tok[i] >> 8)};
        ok = fwrite(t, 1, 2, f) == 2;
    }
    return fclose(f) == 0 && ok ? 0 : -1;
}

/* A prepared dataset in g_tmp/name whose "val" split is tok[0:n] in two shards (split at
 * n/3, so windows cross the boundary) and whose "train" split is tok[0:n/2]. */
static int write_dataset(char *dir, size_t dir_size, const char *name, const int *tok, int n, int vocab) {
    char p[600], meta[2048];
    snprintf(dir, dir_size, "%s/%s", g_tmp, name);
    mkdir(dir, 0755);
    const int a = n / 3, t = n / 2;
    snprintf(p, sizeof p, "%s/val_00000.bin", dir);
    if (write_shard(p, tok, a, vocab)) return -1;
    snprintf(p, sizeof p, "%s/val_00001.bin", dir);
    if (write_shard(p, tok + a, n - a, vocab)) return -1;
    snprintf(p, sizeof p, "%s/train_00000.bin", dir);
    if (write_shard(p, tok, t, vocab)) return -1;
    snprintf(meta, sizeof meta,
             "{\"format\": \"frugal-token-shards\", \"format_version\": 1, \"vocab_size\": %d, \"eot_id\": 0,"
             " \"token_width\": 2, \"splits\": {"
             "\"train\": {\"tokens\": %d, \"docs\": 1, \"shards\": [{\"file\": \"train_00000.bin\", \"tokens\": %d}]},"
             " \"val\": {\"tokens\": %d, \"docs\": 1, \"shards\": [{\"file\": \"val_00000.bin\", \"tokens\": %d},"
             " {\"file\": \"val_00001.bin\", \"tokens\": %d}]}}}\n",
             vocab, t, t, n, a, n - a);
    snprintf(p, sizeof p, "%s/meta.json", dir);
    fr_test_write_text(p, meta);
    return 0;
}

static double rel(double a, double b) { return fabs(a - b) / fabs(b); }

/* Engine (FP32) vs training forward on one fixture over dataset `data`. */
static void check_fixture(const char *name, const char *data) {
    char dir[700];
    snprintf(dir, sizeof dir, "%s/%s", FR_FIXTURES_DIR, name);
    fr_model *m = NULL;
    fr_engine *e = NULL;
    int rc = fr_model_load(&m, dir);
    CHECK(rc == FR_OK, "load %s: %s", name, fr_last_error());
    if (rc == FR_OK) rc = fr_engine_load(&e, dir, NULL);
    CHECK(rc == FR_OK, "engine load %s: %s", name, fr_last_error());
    if (rc != FR_OK) {
        fr_model_free(m);
        return;
    }
    /* 24: windows of the whole dataset; 37 with max_tokens: fewer windows, odd length */
    static const struct { int T; long max_tokens; } runs[] = {{24, 0}, {37, 37 * 3 + 5}};
    for (size_t r = 0; r < sizeof runs / sizeof runs[0]; r++) {
        const int T = runs[r].T;
        double ref = NAN;
        long n_ref = 0;
        rc = fr_eval_dataset(m, data, "val", T, 3, runs[r].max_tokens, &ref, &n_ref);
        CHECK(rc == FR_OK && isfinite(ref), "%s: fr_eval_dataset T=%d: %s", name, T, fr_last_error());
        const int chunks[] = {1, 3, T};
        double worst = 0;
        for (int k = 0; k < 3 && rc == FR_OK; k++) {
            double got = NAN;
            long n_got = -1;
            int st = fr_engine_eval_dataset(e, data, "val", T, chunks[k], runs[r].max_tokens, &got, &n_got);
            CHECK(st == FR_OK, "%s: engine eval T=%d chunk %d: %s", name, T, chunks[k], fr_last_error());
            CHECK(n_got == n_ref, "%s: T=%d chunk %d: %ld targets, training eval %ld", name, T, chunks[k], n_got, n_ref);
            CHECK(st == FR_OK && rel(got, ref) <= TOL, "%s: T=%d chunk %d: engine loss %.9f vs training %.9f (rel %.3g > %g)",
                  name, T, chunks[k], got, ref, rel(got, ref), TOL);
            if (st == FR_OK && !(rel(got, ref) <= worst)) worst = rel(got, ref);
        }
        printf("%-13s T=%d (%ld targets): training loss %.7f, engine chunks 1/3/%d worst rel diff %.3g (tol %g)\n", name, T,
               n_ref, ref, T, worst, TOL);
    }
    fr_engine_free(e);
    fr_model_free(m);
}

/* Sequences of different lengths, more than one group of the batched evaluation. */
static void check_sequences(void) {
    char dir[700];
    snprintf(dir, sizeof dir, "%s/v3_qlora", FR_FIXTURES_DIR);
    fr_model *m = NULL;
    fr_engine *e = NULL;
    if (fr_model_load(&m, dir) != FR_OK || fr_engine_load(&e, dir, NULL) != FR_OK) {
        CHECK(0, "load v3_qlora: %s", fr_last_error());
        fr_model_free(m);
        return;
    }
    enum { NS = 41 };
    int lens[NS], *seqs[NS];
    for (int s = 0; s < NS; s++) {
        lens[s] = 2 + (s * 7) % 50;
        seqs[s] = malloc((size_t)lens[s] * sizeof(int));
        make_tokens(seqs[s], lens[s], 128, (uint64_t)s + 100);
    }
    double ref = NAN;
    long n_ref = 0;
    int rc = fr_model_eval_sequences(m, NS, (const int *const *)seqs, lens, &ref, &n_ref);
    CHECK(rc == FR_OK, "fr_model_eval_sequences: %s", fr_last_error());
    const int chunks[] = {1, 5, 64};
    for (int k = 0; k < 3 && rc == FR_OK; k++) {
        double got = NAN;
        long n_got = 0;
        int st = fr_engine_eval_sequences(e, NS, (const int *const *)seqs, lens, chunks[k], &got, &n_got);
        CHECK(st == FR_OK && n_got == n_ref && rel(got, ref) <= TOL,
              "sequences chunk %d: engine %.9f (%ld) vs training %.9f (%ld): %s", chunks[k], got, n_got, ref, n_ref,
              fr_last_error());
    }
    /* bad input */
    double x = 0;
    int bad_len[2] = {5, 1};
    CHECK(fr_engine_eval_sequences(e, 2, (const int *const *)seqs, bad_len, 1, &x, NULL) == FR_ERR_ARG &&
              strstr(fr_last_error(), "sequence 2"),
          "1-token sequence refused: %s", fr_last_error());
    int long_len[1] = {66};
    int *long_seq = calloc(66, sizeof(int));
    CHECK(fr_engine_eval_sequences(e, 1, (const int *const *)&long_seq, long_len, 1, &x, NULL) == FR_ERR_ARG &&
              strstr(fr_last_error(), "max_seq_len"),
          "sequence longer than the context refused: %s", fr_last_error());
    long_seq[40] = 128;
    long_len[0] = 41; /* the out-of-vocabulary token is the last target only */
    CHECK(fr_engine_eval_sequences(e, 1, (const int *const *)&long_seq, long_len, 4, &x, NULL) == FR_ERR_ARG &&
              strstr(fr_last_error(), "vocabulary"),
          "out-of-vocabulary target refused: %s", fr_last_error());
    CHECK(fr_engine_eval_sequences(e, 1, (const int *const *)seqs, lens, 0, &x, NULL) == FR_ERR_ARG, "chunk 0 refused");
    CHECK(fr_engine_eval_sequences(e, 0, (const int *const *)seqs, lens, 1, &x, NULL) == FR_ERR_ARG, "no sequences refused");
    free(long_seq);
    for (int s = 0; s < NS; s++) free(seqs[s]);
    fr_engine_free(e);
    fr_model_free(m);
}

static void check_bf16_and_errors(const char *data, const char *big_vocab_data) {
    char dir[700];
    snprintf(dir, sizeof dir, "%s/v2_lite", FR_FIXTURES_DIR);
    fr_engine *e = NULL, *eb = NULL;
    fr_engine_options o;
    fr_engine_options_default(&o);
    o.weight_type = 1; /* bf16 */
    if (fr_engine_load(&e, dir, NULL) != FR_OK || fr_engine_load(&eb, dir, &o) != FR_OK) {
        CHECK(0, "engine load v2_lite: %s", fr_last_error());
        fr_engine_free(e);
        return;
    }
    double lf = NAN, lb = NAN, x = 0;
    long n = 0;
    CHECK(fr_engine_eval_dataset(e, data, "val", 32, 8, 0, &lf, &n) == FR_OK, "f32: %s", fr_last_error());
    CHECK(fr_engine_eval_dataset(eb, data, "val", 32, 8, 0, &lb, NULL) == FR_OK, "bf16: %s", fr_last_error());
    /* BF16 weights: 2^-9 relative error per weight; the loss moves, but by well under 1 % */
    CHECK(lb != lf && rel(lb, lf) < 1e-2, "bf16 loss %.7f vs f32 %.7f", lb, lf);
    printf("v2_lite T=32 chunk 8: f32 loss %.7f, bf16 weights %.7f (%+.3g relative)\n", lf, lb, (lb - lf) / lf);
    /* the train split and chunk larger than the window */
    double lt = NAN;
    long nt = 0;
    CHECK(fr_engine_eval_dataset(e, data, "train", 16, 100, 0, &lt, &nt) == FR_OK && isfinite(lt) && nt > 0,
          "train split, chunk > seq_len: %s", fr_last_error());

    int st;
    st = fr_engine_eval_dataset(NULL, data, "val", 32, 1, 0, &x, NULL);
    CHECK(st == FR_ERR_ARG && strstr(fr_last_error(), "NULL"), "NULL engine: %s", fr_last_error());
    st = fr_engine_eval_dataset(e, data, "val", 32, 1, 0, NULL, NULL);
    CHECK(st == FR_ERR_ARG, "NULL result pointer");
    st = fr_engine_eval_dataset(e, data, "val", 1, 1, 0, &x, NULL);
    CHECK(st == FR_ERR_ARG && strstr(fr_last_error(), "seq_len"), "seq_len 1: %s", fr_last_error());
    st = fr_engine_eval_dataset(e, data, "val", 32, 0, 0, &x, NULL);
    CHECK(st == FR_ERR_ARG && strstr(fr_last_error(), "chunk"), "chunk 0: %s", fr_last_error());
    /* the fixture's context is max_position_embeddings = 64 tokens: 64 fits, 65 does not */
    st = fr_engine_eval_dataset(e, data, "val", 64, 64, 0, &x, &n);
    CHECK(st == FR_OK && n == 64 * ((300 - 1) / 64), "seq_len = context: %s", fr_last_error());
    st = fr_engine_eval_dataset(e, data, "val", 65, 1, 0, &x, NULL);
    CHECK(st == FR_ERR_ARG && strstr(fr_last_error(), "65") && strstr(fr_last_error(), "64"), "seq_len > context: %s",
          fr_last_error());
    st = fr_engine_eval_dataset(e, data, "val", 32, 1, 32, &x, NULL);
    CHECK(st == FR_ERR_ARG && strstr(fr_last_error(), "fewer than 33"), "too few tokens: %s", fr_last_error());
    st = fr_engine_eval_dataset(e, big_vocab_data, "val", 32, 1, 0, &x, NULL);
    CHECK(st == FR_ERR_ARG && strstr(fr_last_error(), "vocab size 200") && strstr(fr_last_error(), "128"),
          "dataset vocab > model vocab: %s", fr_last_error());
    st = fr_engine_eval_dataset(e, data, "test", 32, 1, 0, &x, NULL);
    CHECK(st == FR_ERR_ARG && strstr(fr_last_error(), "test"), "unknown split: %s", fr_last_error());
    char none[300];
    snprintf(none, sizeof none, "%s/no-such-data", g_tmp);
    st = fr_engine_eval_dataset(e, none, "val", 32, 1, 0, &x, NULL);
    CHECK(st != FR_OK && strstr(fr_last_error(), "no-such-data"), "missing dataset: %s", fr_last_error());
    fr_engine_free(e);
    fr_engine_free(eb);
}

static void check_requantize(const char *data) {
    char src[400], out[400];
    snprintf(src, sizeof src, "%s/qmodel", g_tmp);
    mkdir(src, 0755);
    fr_config cfg;
    fr_model *m = NULL;
    const char *qcfg = fr_test_q32_config(256);
    int ok = fr_config_parse(&cfg, qcfg, strlen(qcfg)) == FR_OK && fr_model_create(&m, &cfg, 11) == FR_OK &&
             fr_model_save(m, src) == FR_OK;
    CHECK(ok, "model for quantization: %s", fr_last_error());
    fr_model_free(m);
    if (!ok) return;
    for (int ty = FR_QT_Q8_0; ty <= FR_QT_Q4_1; ty++) {
        snprintf(out, sizeof out, "%s/%s", g_tmp, fr_qtype_name((fr_qtype)ty));
        fr_model *d = NULL;
        fr_st_set st;
        if (fr_quantize_model(src, out, fr_qtype_name((fr_qtype)ty), NULL, NULL) != FR_OK ||
            fr_model_load_dequantized(&d, out) != FR_OK || fr_st_set_open_dir(&st, out) != FR_OK) {
            CHECK(0, "quantize / load %s: %s", out, fr_last_error());
            fr_model_free(d);
            continue;
        }
        long rows = 0, differ = 0;
        int mats = 0;
        for (int i = 0; i < fr_model_num_tensors(d); i++) {
            int nd = 0;
            int64_t sh[4] = {0};
            const char *name = fr_model_tensor_info(d, i, &nd, sh);
            if (fr_qmatrix_stored_type(&st, name) != ty) continue;
            size_t n = 0;
            const float *w = fr_model_param(d, name, &n);
            fr_qmatrix a, b;
            if (fr_qmatrix_load(&a, &st, name, (int)sh[0], (int)sh[1], (fr_qtype)ty) != FR_OK) {
                CHECK(0, "load %s: %s", name, fr_last_error());
                continue;
            }
            if (fr_qmatrix_from_f32(&b, (fr_qtype)ty, w, (int)sh[0], (int)sh[1]) == FR_OK) {
                const size_t rb = fr_qtype_row_bytes((fr_qtype)ty, (int)sh[1]);
                for (int r = 0; r < sh[0]; r++, rows++)
                    differ += memcmp((const char *)a.data + r * rb, (const char *)b.data + r * rb, rb) != 0;
                fr_qmatrix_free(&b);
                mats++;
            }
            fr_qmatrix_free(&a);
        }
        CHECK(mats > 10 && differ == 0, "%s: %ld of %ld rows differ after re-quantizing the dequantized weights (%d matrices)",
              fr_qtype_name((fr_qtype)ty), differ, rows, mats);
        if (data) {
            fr_engine_options eo;
            fr_engine_options_default(&eo);
            eo.weight_type = ty;
            fr_engine *direct = NULL, *rebuilt = NULL;
            double l1 = NAN, l2 = NAN;
            int rc1 = fr_engine_load(&direct, out, &eo);
            CHECK(rc1 == FR_OK, "engine loads the %s folder: %s", fr_qtype_name((fr_qtype)ty), fr_last_error());
            int rc2 = fr_engine_from_model(&rebuilt, d, &eo);
            if (rc1 == FR_OK && rc2 == FR_OK && fr_engine_eval_dataset(direct, data, "val", 32, 8, 0, &l1, NULL) == FR_OK &&
                fr_engine_eval_dataset(rebuilt, data, "val", 32, 8, 0, &l2, NULL) == FR_OK)
                CHECK(l1 == l2, "%s folder: engine loss %.17g read directly vs %.17g rebuilt", fr_qtype_name((fr_qtype)ty), l1, l2);
            else
                CHECK(0, "%s engine evaluation: %s", fr_qtype_name((fr_qtype)ty), fr_last_error());
            fr_engine_free(direct);
            fr_engine_free(rebuilt);
        }
        {
            /* default options run the folder in the format it stores; a model in memory in f32 */
            fr_engine_options dflt;
            fr_engine_options_default(&dflt);
            fr_engine *as_stored = NULL, *from_model = NULL;
            CHECK(fr_engine_load(&as_stored, out, &dflt) == FR_OK && fr_engine_weight_type(as_stored) == ty,
                  "%s folder with default options: weight type %d", fr_qtype_name((fr_qtype)ty),
                  as_stored ? fr_engine_weight_type(as_stored) : -2);
            CHECK(fr_engine_from_model(&from_model, d, &dflt) == FR_OK && fr_engine_weight_type(from_model) == FR_QT_F32,
                  "model in memory with default options: f32");
            fr_engine_free(as_stored);
            fr_engine_free(from_model);
        }
        fr_st_set_close(&st);
        fr_model_free(d);
    }
}

int main(void) {
    const char *base = getenv("TMPDIR");
    snprintf(g_tmp, sizeof g_tmp, "%s/frugal-test-engine-eval-XXXXXX", base && base[0] ? base : "/tmp");
    if (!mkdtemp(g_tmp)) {
        CHECK(0, "mkdtemp failed");
        return fr_test_finish("test_engine_eval");
    }
    /* dataset vocab 100 < the fixtures' 128: allowed, as for fr_eval_dataset */
    enum { N = 300 };
    int tok[N], big[N];
    make_tokens(tok, N, 100, 7);
    make_tokens(big, N, 200, 8);
    char data[300], big_data[300];
    int ok = write_dataset(data, sizeof data, "data", tok, N, 100) == 0 &&
             write_dataset(big_data, sizeof big_data, "big", big, N, 200) == 0;
    CHECK(ok, "writing the datasets in %s", g_tmp);
    if (ok) {
        const char *names[] = {"v3_qlora", "v3_yarn_tied", "v2_lite", "v2_group", "v3_mtp"};
        for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) check_fixture(names[i], data);
        check_sequences();
        check_bf16_and_errors(data, big_data);
    }
    check_requantize(ok ? data : NULL);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmp);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_tmp);
    return fr_test_finish("test_engine_eval");
}
