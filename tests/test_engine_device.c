/*
 * test_engine_device.c — the inference engine on a device backend (src/infer/engine_device.c)
 * against the CPU engine (src/infer/infer.c), which test_infer checks against the training
 * forward and transformers.
 *
 * Usage: test_engine_device [cpu-guarded|cuda]. "cpu-guarded" (the default, every machine) is
 * the CPU's kernels behind memory the host cannot touch outside an op: it checks that the
 * device engine never reads backend memory directly and that its sequence of ops computes
 * the model. "cuda" (CTest label gpu) runs the same checks on the GPU and exits 77 ("skipped:
 * no GPU") where there is none.
 *
 *  - logits of a prefill (37 tokens) then 23 decode steps on the five transformers fixtures
 *    (q_lora / none, YaRN, tied embeddings, V2 softmax routing, group limits, MTP): worst
 *    per-row relative error vs the CPU engine <= 1e-4 (FP32 both; the products are summed
 *    in another order: the backend's GEMMs and strided per-head projections against the CPU
 *    engine's matrix-vector kernels and transposed per-head copies);
 *  - three sequences of different lengths in one forward, then decoded together, = each on
 *    the CPU engine (same tolerance): row bookkeeping of a batch;
 *  - greedy generation (3 prompts batched, up to 64 tokens or the context limit) identical to the CPU engine's, and
 *    MTP speculative greedy on the device identical to it too (drafts and rollback);
 *  - a model loaded onto the device (fr_set_device, fr_model_load) gives an engine too;
 *  - block formats and BF16 / FP8 caches are refused with a message (CPU-only kernels).
 */
#include "frugal.h"
#include "testutil.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOL 1e-4

static const char *g_device = "cpu-guarded";

static void make_tokens(int *t, int n, int V, uint64_t seed) {
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
    for (int i = 0; i < n; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        t[i] = (int)(x % (uint64_t)V);
    }
}

static double worst_row_err(const float *a, const float *b, int rows, int V) {
    double w = 0;
    for (int r = 0; r < rows; r++) {
        const double e = fr_rel_err(a + (size_t)r * V, b + (size_t)r * V, (size_t)V);
        if (!(e <= w)) w = e;
    }
    return w;
}

/* the CPU engine (dev = 0) or the device engine (dev = 1) of folder dir */
static fr_engine *load(const char *dir, int dev, const fr_engine_options *o) {
    fr_engine *e = NULL;
    fr_set_device(dev ? g_device : "cpu");
    const int rc = fr_engine_load(&e, dir, o);
    fr_set_device("cpu");
    CHECK(rc == FR_OK, "%s engine of %s: %s", dev ? g_device : "cpu", dir, fr_last_error());
    return rc == FR_OK ? e : NULL;
}


static void test_fixture(const char *name) {
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/%s", FR_FIXTURES_DIR, name);
    fr_engine *c = load(dir, 0, NULL), *d = load(dir, 1, NULL);
    if (c && d) {
        const int V = fr_engine_config(c)->vocab_size, T = 60, P = 37;
        int tok[60];
        make_tokens(tok, T, V, 17);
        float *lc = malloc((size_t)T * V * sizeof(float)), *ld = malloc((size_t)T * V * sizeof(float));
        const int rc = fr_test_engine_logits(c, tok, T, P, lc), rd = fr_test_engine_logits(d, tok, T, P, ld);
        CHECK(rc == FR_OK && rd == FR_OK, "%s: forward (%s)", name, fr_last_error());
        const double w = rc == FR_OK && rd == FR_OK ? worst_row_err(ld, lc, T, V) : 1;
        CHECK(w <= TOL, "%s: %s engine vs CPU engine, worst row error %.3g > %.0e", name, g_device, w, TOL);
        printf("%-13s prefill %d + decode %d on %s: worst relative logit error vs the CPU engine %.3g (tol %.0e)\n",
               name, P, T - P, g_device, w, TOL);
        free(lc);
        free(ld);
    }
    fr_engine_free(c);
    fr_engine_free(d);
}

/* 3 sequences of 5, 19 and 11 tokens in one forward (all logits), then 6 steps decoding all three */
static int batch_logits(fr_engine *e, int V, float *out) {
    int tok[3][25], len[3] = {5, 19, 11};
    for (int s = 0; s < 3; s++) make_tokens(tok[s], 25, V, 40 + s);
    fr_seq *s3[3] = {0};
    int rc = FR_OK;
    for (int s = 0; s < 3 && rc == FR_OK; s++) rc = fr_seq_create(&s3[s], e);
    const int *tp[3] = {tok[0], tok[1], tok[2]};
    if (rc == FR_OK) rc = fr_engine_forward(e, s3, 3, tp, len, out, 1);
    float *o = out + (size_t)(5 + 19 + 11) * V;
    for (int step = 0; step < 6 && rc == FR_OK; step++, o += (size_t)3 * V) {
        const int *one[3];
        int n1[3] = {1, 1, 1};
        for (int s = 0; s < 3; s++) one[s] = tok[s] + len[s] + step;
        rc = fr_engine_forward(e, s3, 3, one, n1, o, 0);
    }
    for (int s = 0; s < 3; s++) fr_seq_free(s3[s]);
    return rc;
}

static void test_batch(const char *name) {
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/%s", FR_FIXTURES_DIR, name);
    fr_engine *c = load(dir, 0, NULL), *d = load(dir, 1, NULL);
    if (c && d) {
        const int V = fr_engine_config(c)->vocab_size, rows = 5 + 19 + 11 + 18;
        float *lc = malloc((size_t)rows * V * sizeof(float)), *ld = malloc((size_t)rows * V * sizeof(float));
        const int rc = batch_logits(c, V, lc), rd = batch_logits(d, V, ld);
        CHECK(rc == FR_OK && rd == FR_OK, "%s batch: %s", name, fr_last_error());
        const double w = rc == FR_OK && rd == FR_OK ? worst_row_err(ld, lc, rows, V) : 1;
        CHECK(w <= TOL, "%s batch: worst row error %.3g > %.0e", name, w, TOL);
        printf("%-13s 3 sequences (5, 19, 11 tokens) in one forward + 6 batched decode steps: worst error %.3g\n", name, w);
        free(lc);
        free(ld);
    }
    fr_engine_free(c);
    fr_engine_free(d);
}

static int greedy(fr_engine *e, int speculative, int **out, int *out_len, fr_generate_stats *st) {
    const int V = fr_engine_config(e)->vocab_size;
    int prompts[3][16], lens[3] = {16, 7, 11};
    for (int i = 0; i < 3; i++) make_tokens(prompts[i], 16, V, 90 + i);
    const int *pp[3] = {prompts[0], prompts[1], prompts[2]};
    fr_seq *s[3] = {0};
    int rc = FR_OK;
    for (int i = 0; i < 3 && rc == FR_OK; i++) rc = fr_seq_create(&s[i], e);
    fr_generate_options o;
    fr_generate_options_default(&o);
    o.sample.temperature = 0;
    o.max_tokens = 64;
    o.ignore_eos = 1;
    o.speculative = speculative;
    if (rc == FR_OK) rc = fr_generate(e, NULL, s, 3, pp, lens, &o, out, out_len, st);
    for (int i = 0; i < 3; i++) fr_seq_free(s[i]);
    return rc;
}

static void test_generate(const char *name, int speculative) {
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/%s", FR_FIXTURES_DIR, name);
    fr_engine *c = load(dir, 0, NULL), *d = load(dir, 1, NULL);
    if (c && d) {
        int *a[3], al[3], *b[3], bl[3];
        fr_generate_stats sa, sb;
        const int rc = greedy(c, 0, a, al, &sa), rd = greedy(d, speculative, b, bl, &sb);
        CHECK(rc == FR_OK && rd == FR_OK, "%s generate: %s", name, fr_last_error());
        if (rc == FR_OK && rd == FR_OK) {
            for (int i = 0; i < 3; i++) {
                CHECK(al[i] == bl[i] && memcmp(a[i], b[i], (size_t)al[i] * sizeof(int)) == 0,
                      "%s: greedy text on %s%s differs from the CPU engine's (prompt %d)", name, g_device,
                      speculative ? " (speculative)" : "", i);
                free(a[i]);
                free(b[i]);
            }
            if (speculative) CHECK(sb.drafted > 0, "%s: no drafts on %s", name, g_device);
            printf("%-13s greedy, 3 prompts x %d tokens on %s%s = the CPU engine's\n", name, al[0], g_device,
                   speculative ? " with MTP speculation" : "");
        }
    }
    fr_engine_free(c);
    fr_engine_free(d);
}

static void test_model_on_device(void) {
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/v3_qlora", FR_FIXTURES_DIR);
    fr_set_device(g_device);
    fr_model *m = NULL;
    fr_engine *d = NULL;
    int rc = fr_model_load(&m, dir);
    if (rc == FR_OK) rc = fr_engine_from_model(&d, m, NULL);
    fr_set_device("cpu");
    CHECK(rc == FR_OK, "engine from a model on %s: %s", g_device, fr_last_error());
    fr_model_free(m);
    fr_engine *c = load(dir, 0, NULL);
    if (c && d) {
        const int V = fr_engine_config(c)->vocab_size, T = 20;
        int tok[20];
        make_tokens(tok, T, V, 5);
        float *lc = malloc((size_t)T * V * sizeof(float)), *ld = malloc((size_t)T * V * sizeof(float));
        const int r1 = fr_test_engine_logits(c, tok, T, 8, lc), r2 = fr_test_engine_logits(d, tok, T, 8, ld);
        const double w = r1 == FR_OK && r2 == FR_OK ? worst_row_err(ld, lc, T, V) : 1;
        CHECK(w <= TOL, "engine from a model on %s: worst row error %.3g", g_device, w);
        printf("engine built from a model in %s memory: worst error %.3g\n", g_device, w);
        free(lc);
        free(ld);
    }
    fr_engine_free(c);
    fr_engine_free(d);
}

static void test_refusals(void) {
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/v3_qlora", FR_FIXTURES_DIR);
    fr_engine_options o;
    fr_engine_options_default(&o);
    o.weight_type = fr_weight_type_parse("q8_0");
    fr_engine *e = NULL;
    fr_set_device(g_device);
    int rc = fr_engine_load(&e, dir, &o);
    CHECK(rc == FR_ERR_UNSUPPORTED && strstr(fr_last_error(), "FP32 weights") && strstr(fr_last_error(), "q8_0"),
          "q8_0 weights on %s: rc %d, '%s'", g_device, rc, fr_last_error());
    fr_engine_free(e);
    e = NULL;
    fr_engine_options_default(&o);
    o.kv_type = FR_KV_FP8;
    rc = fr_engine_load(&e, dir, &o);
    CHECK(rc == FR_ERR_UNSUPPORTED && strstr(fr_last_error(), "KV cache"), "FP8 cache on %s: rc %d, '%s'", g_device, rc,
          fr_last_error());
    fr_engine_free(e);
    fr_set_device("cpu");
}

int main(int argc, char **argv) {
    if (argc > 1) g_device = argv[1];
    if (fr_set_device(g_device) != FR_OK) {
        printf("skipped: no GPU (%s)\n", fr_last_error());
        return 77;
    }
    fr_set_device("cpu");
    const char *fixtures[] = {"v3_qlora", "v3_yarn_tied", "v2_lite", "v2_group", "v3_mtp"};
    for (size_t i = 0; i < sizeof fixtures / sizeof fixtures[0]; i++) test_fixture(fixtures[i]);
    test_batch("v2_group");
    test_batch("v3_mtp");
    test_generate("v3_qlora", 0);
    test_generate("v2_group", 0);
    test_generate("v3_mtp", 1);
    test_model_on_device();
    test_refusals();
    return fr_test_finish("test_engine_device");
}
