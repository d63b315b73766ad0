/*
 * test_infer.c — the inference engine (src/infer/infer.c, src/infer/sample.c).
 *
 *  - logits of the engine (prefill of a prompt, then token-by-token decode, latent cache,
 *    absorbed attention) equal the training forward fr_model_forward_eval at every
 *    position within 1e-4 relative (FP32), on the committed fixtures and on a random model
 *    (YaRN, MTP) saved with fr_model_save, over a longer sequence;
 *  - BF16 / FP8 caches stay close to FP32 (tolerances below);
 *  - KV bytes per token = layers x (kv_lora_rank + qk_rope) x bytes (+ 4 per layer, FP8);
 *  - rollback (truncate) and re-append reproduce the logits; prefill in chunks = at once;
 *  - batched sequences of different lengths = each alone;
 *  - greedy fr_generate equals transformers' greedy generate for 64 tokens
 *    (tests/fixtures/generate, tools/make_generate_fixture.py); 3 prompts batched = alone;
 *  - MTP speculative greedy output = plain greedy output (v3_mtp, saved random model),
 *    with drafts counted; near the context limit too;
 *  - sampler: determinism, distribution, top-k/top-p/min-p, repeat penalty; the same ids
 *    as a reference that sorts the whole vocabulary with qsort, over random logits (ties,
 *    -0, -inf), parameters and seeds;
 *  - a vocab_size padded past the tokenizer: its extra ids are never generated;
 *  - stop strings and streaming text; bad input.
 */
#define _GNU_SOURCE
#include "frugal.h"
#include "infer/infer_internal.h"
#include "testutil.h"

#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define TOL_F32 1e-4

/* per-row relative error (max |a-b| / max |b| over the row), worst over rows */
static double worst_row_err(const float *a, const float *b, int rows, int V) {
    double w = 0;
    for (int r = 0; r < rows; r++) {
        double e = fr_rel_err(a + (size_t)r * V, b + (size_t)r * V, (size_t)V);
        if (!(e <= w)) w = e;
    }
    return w;
}

static void make_tokens(int *t, int n, int V, uint64_t seed) {
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
    for (int i = 0; i < n; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        t[i] = (int)(x % (uint64_t)V);
    }
}


/* engine vs training forward on one model folder; returns worst error or -1 */
static double compare_with_training(const char *dir, int T, int P, fr_kv_type kv) {
    fr_model *m = NULL;
    fr_engine *e = NULL;
    int rc = fr_model_load(&m, dir);
    CHECK(rc == FR_OK, "load %s: %s", dir, fr_last_error());
    if (rc != FR_OK) return -1;
    fr_engine_options o;
    fr_engine_options_default(&o);
    o.kv_type = kv;
    rc = fr_engine_load(&e, dir, &o);
    CHECK(rc == FR_OK, "engine load %s: %s", dir, fr_last_error());
    if (rc != FR_OK) { fr_model_free(m); return -1; }
    const int V = fr_model_config(m)->vocab_size;
    int *tok = malloc((size_t)T * sizeof(int));
    make_tokens(tok, T, V, (uint64_t)T * 31 + P);
    float *ref = malloc((size_t)T * V * sizeof(float)), *got = malloc((size_t)T * V * sizeof(float));
    double w = -1;
    rc = fr_model_forward_eval(m, tok, NULL, 1, T, NULL);
    CHECK(rc == FR_OK, "training forward: %s", fr_last_error());
    if (rc == FR_OK) {
        memcpy(ref, fr_model_logits(m), (size_t)T * V * sizeof(float));
        rc = fr_test_engine_logits(e, tok, T, P, got);
        CHECK(rc == FR_OK, "engine forward: %s", fr_last_error());
        if (rc == FR_OK) w = worst_row_err(got, ref, T, V);
    }
    free(tok); free(ref); free(got);
    fr_engine_free(e);
    fr_model_free(m);
    return w;
}

static void test_fixtures_vs_training(void) {
    const char *names[] = {"v3_qlora", "v3_yarn_tied", "v2_lite", "v2_group", "v3_mtp"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char dir[1024];
        snprintf(dir, sizeof dir, "%s/%s", FR_FIXTURES_DIR, names[i]);
        double w = compare_with_training(dir, 60, 37, FR_KV_F32);
        CHECK(w >= 0 && w <= TOL_F32, "%s: engine vs training logits, worst row error %.3g > %.0e", names[i], w, TOL_F32);
        printf("fixture %-13s prefill 37 + decode 23: worst relative logit error %.3g (tol %.0e)\n", names[i], w, TOL_F32);
    }
}

/* A random model with YaRN, q_lora, MoE and one MTP module, saved by fr_model_save. */
static const char *RANDOM_CONFIG =
    "{\"architectures\": [\"DeepseekV3ForCausalLM\"], \"model_type\": \"deepseek_v3\", \"vocab_size\": 200,"
    " \"hidden_size\": 64, \"intermediate_size\": 96, \"moe_intermediate_size\": 32, \"num_hidden_layers\": 3,"
    " \"num_attention_heads\": 4, \"num_key_value_heads\": 4, \"q_lora_rank\": 32, \"kv_lora_rank\": 32,"
    " \"qk_nope_head_dim\": 16, \"qk_rope_head_dim\": 8, \"v_head_dim\": 16, \"n_routed_experts\": 8,"
    " \"n_shared_experts\": 1, \"num_experts_per_tok\": 2, \"n_group\": 4, \"topk_group\": 2,"
    " \"topk_method\": \"noaux_tc\", \"scoring_func\": \"sigmoid\", \"norm_topk_prob\": true,"
    " \"routed_scaling_factor\": 2.5, \"first_k_dense_replace\": 1, \"moe_layer_freq\": 1,"
    " \"num_nextn_predict_layers\": 1, \"max_position_embeddings\": 512, \"rope_theta\": 10000.0,"
    " \"rope_interleave\": true, \"rope_scaling\": {\"type\": \"yarn\", \"factor\": 4.0,"
    " \"original_max_position_embeddings\": 128, \"beta_fast\": 32, \"beta_slow\": 1, \"mscale\": 1.0,"
    " \"mscale_all_dim\": 1.0}, \"rms_norm_eps\": 1e-6, \"tie_word_embeddings\": false,"
    " \"initializer_range\": 0.08, \"bos_token_id\": 0, \"eos_token_id\": 1}";

static char g_random_dir[256], g_dense_dir[256], g_oracle_dir[256], g_wide_dir[256];

static int save_model_from(const char *json, const char *dir, uint64_t seed, int oracle) {
    fr_config cfg;
    int rc = fr_config_parse(&cfg, json, strlen(json));
    CHECK(rc == FR_OK, "config: %s", fr_last_error());
    if (rc != FR_OK) return rc;
    fr_model *m;
    rc = fr_model_create(&m, &cfg, seed);
    CHECK(rc == FR_OK, "create: %s", fr_last_error());
    if (rc != FR_OK) return rc;
    const int L = cfg.num_hidden_layers, H = cfg.hidden_size;
    char name[160];
    size_t n;
    /* router biases distinct and nonzero, as in a trained model */
    for (int l = 0; l <= L; l++) {
        snprintf(name, sizeof name, "model.layers.%d.mlp.gate.e_score_correction_bias", l);
        float *b = fr_model_param(m, name, &n);
        if (b)
            for (size_t i = 0; i < n; i++) b[i] = 0.01f * (float)((int)(i * 7 % 11) - 5);
    }
    if (oracle) {
        /* Main blocks damped (x0.1 on o_proj and every down_proj) so the next token mostly
         * follows the current one; the MTP block passes RMSNorm(Emb(t_{i+1})) straight
         * through (eh_proj = [I | 0], o_proj = 0, down_proj = 0), so its draft is the
         * main model's bigram guess: some drafts are accepted, some rejected. */
        const char *scaled[] = {"self_attn.o_proj", "mlp.down_proj", "mlp.shared_experts.down_proj"};
        for (int l = 0; l <= L; l++) {
            float f = l < L ? 0.1f : 0.0f;
            for (int k = 0; k < 3; k++) {
                snprintf(name, sizeof name, "model.layers.%d.%s.weight", l, scaled[k]);
                float *w = fr_model_param(m, name, &n);
                for (size_t i = 0; w && i < n; i++) w[i] *= f;
            }
            for (int x = 0; x < cfg.n_routed_experts; x++) {
                snprintf(name, sizeof name, "model.layers.%d.mlp.experts.%d.down_proj.weight", l, x);
                float *w = fr_model_param(m, name, &n);
                for (size_t i = 0; w && i < n; i++) w[i] *= f;
            }
        }
        snprintf(name, sizeof name, "model.layers.%d.eh_proj.weight", L);
        float *eh = fr_model_param(m, name, &n);
        CHECK(eh && n == (size_t)2 * H * H, "eh_proj present");
        for (size_t i = 0; eh && i < n; i++) eh[i] = (i / (2 * H) == i % (2 * H)) ? 1.0f : 0.0f;
    }
    rc = fr_model_save(m, dir);
    CHECK(rc == FR_OK, "save %s: %s", dir, fr_last_error());
    fr_model_free(m);
    return rc;
}


static int make_random_models(void) {
    snprintf(g_random_dir, sizeof g_random_dir, "/tmp/frugal_test_infer_%d", (int)getpid());
    snprintf(g_dense_dir, sizeof g_dense_dir, "/tmp/frugal_test_infer_dense_%d", (int)getpid());
    snprintf(g_oracle_dir, sizeof g_oracle_dir, "/tmp/frugal_test_infer_oracle_%d", (int)getpid());
    /* the dense variant: no routed experts, so a lossy cache cannot flip a routing choice */
    char dense[4096];
    snprintf(dense, sizeof dense, "%s", RANDOM_CONFIG);
    char *p = strstr(dense, "\"n_routed_experts\": 8");
    if (p) memcpy(p, "\"n_routed_experts\": 0", strlen("\"n_routed_experts\": 0"));
    /* the wide variant: 40 routed experts (a decoded row's experts shared out among threads
     * by bytes, decode_row.c, with more units than threads) */
    snprintf(g_wide_dir, sizeof g_wide_dir, "/tmp/frugal_test_infer_wide_%d", (int)getpid());
    char wide[4096];
    const char *at = strstr(RANDOM_CONFIG, "\"n_routed_experts\": 8");
    snprintf(wide, sizeof wide, "%.*s\"n_routed_experts\": 40%s", at ? (int)(at - RANDOM_CONFIG) : 0, RANDOM_CONFIG,
             at ? at + strlen("\"n_routed_experts\": 8") : "");
    int rc = save_model_from(RANDOM_CONFIG, g_random_dir, 77, 0);
    if (rc == FR_OK) rc = save_model_from(dense, g_dense_dir, 78, 0);
    if (rc == FR_OK) rc = save_model_from(RANDOM_CONFIG, g_oracle_dir, 79, 1);
    if (rc == FR_OK) rc = save_model_from(wide, g_wide_dir, 80, 0);
    return rc;
}

static void test_random_model_vs_training(void) {
    double w = compare_with_training(g_random_dir, 300, 200, FR_KV_F32);
    CHECK(w >= 0 && w <= TOL_F32, "random model: worst row error %.3g > %.0e", w, TOL_F32);
    printf("random model (YaRN, MTP) prefill 200 + decode 100: worst relative logit error %.3g (tol %.0e)\n", w, TOL_F32);

    /* reduced-precision caches: BF16 (8-bit mantissa) and FP8 E4M3 (3-bit mantissa) */
    double wd = compare_with_training(g_dense_dir, 120, 80, FR_KV_F32);
    CHECK(wd >= 0 && wd <= TOL_F32, "dense random model: worst row error %.3g > %.0e", wd, TOL_F32);
    double wb = compare_with_training(g_dense_dir, 120, 80, FR_KV_BF16);
    double w8 = compare_with_training(g_dense_dir, 120, 80, FR_KV_FP8);
    CHECK(wb >= 0 && wb <= 2e-2, "BF16 cache: worst row error %.3g > 2e-2", wb);
    CHECK(w8 >= 0 && w8 <= 1e-1, "FP8 cache: worst row error %.3g > 1e-1", w8);
    printf("dense random model, 120 tokens: FP32 cache %.3g, BF16 cache worst error %.3g (tol 2e-2), FP8 cache %.3g (tol 1e-1)\n", wd, wb, w8);
}

/* an engine built from a model in memory = the engine loaded from its saved folder */
static void test_from_model(void) {
    fr_model *m;
    fr_engine *a, *b;
    int rc = fr_model_load(&m, g_random_dir);
    CHECK(rc == FR_OK, "load: %s", fr_last_error());
    if (rc != FR_OK) return;
    rc = fr_engine_from_model(&a, m, NULL);
    CHECK(rc == FR_OK, "from model: %s", fr_last_error());
    fr_model_free(m);
    if (rc != FR_OK) return;
    rc = fr_engine_load(&b, g_random_dir, NULL);
    CHECK(rc == FR_OK, "load: %s", fr_last_error());
    if (rc != FR_OK) { fr_engine_free(a); return; }
    const int V = fr_engine_config(a)->vocab_size, T = 24;
    int tok[24];
    make_tokens(tok, T, V, 3);
    float *la = malloc((size_t)T * V * sizeof(float)), *lb = malloc((size_t)T * V * sizeof(float));
    int ra = fr_test_engine_logits(a, tok, T, 10, la), rb = fr_test_engine_logits(b, tok, T, 10, lb);
    CHECK(ra == FR_OK && rb == FR_OK && memcmp(la, lb, (size_t)T * V * sizeof(float)) == 0,
          "engine from a model in memory differs from the engine loaded from its folder");
    CHECK(fr_engine_mtp_depth(a) == 1 && fr_engine_active_weight_bytes(a) == fr_engine_active_weight_bytes(b), "same engine");
    free(la);
    free(lb);
    fr_engine_free(a);
    fr_engine_free(b);
}

/* quantized weights (src/cpu/qmatmul.c) through the engine: logits near the FP32 engine on the
 * dense random model (no routing to flip). The bounds follow the formats' rounding: BF16
 * ~0.3 % per weight, Q8_0 ~0.5 % plus its 8-bit activations, Q4_1 ~8 % rms per weight; a
 * random 3-layer model amplifies weight noise about 4x in the logits (measured: 0.011,
 * 0.029, 0.46), so Q4_1 only gets a sanity bound here. */
static void test_weight_types(void) {
    const char *names[4] = {"f32", "bf16", "q8_0", "q4_1"};
    const double tol[4] = {0, 3e-2, 6e-2, 1.0};
    const int T = 40, P = 25;
    float *ref = NULL;
    size_t bytes[4] = {0};
    for (int wt = 0; wt < 4; wt++) {
        fr_engine_options o;
        fr_engine_options_default(&o);
        o.weight_type = wt;
        fr_engine *e;
        int rc = fr_engine_load(&e, g_dense_dir, &o);
        CHECK(rc == FR_OK, "load with %s weights: %s", names[wt], fr_last_error());
        if (rc != FR_OK) continue;
        const int V = fr_engine_config(e)->vocab_size;
        int tok[40];
        make_tokens(tok, T, V, 11);
        float *l = malloc((size_t)T * V * sizeof(float));
        rc = fr_test_engine_logits(e, tok, T, P, l);
        CHECK(rc == FR_OK, "%s forward: %s", names[wt], fr_last_error());
        bytes[wt] = fr_engine_active_weight_bytes(e);
        if (wt == 0) ref = l;
        else {
            double w = ref ? worst_row_err(l, ref, T, V) : 1e9;
            CHECK(w <= tol[wt], "%s weights: worst row error vs f32 %.3g > %.0e", names[wt], w, tol[wt]);
            printf("%s weights: worst relative logit error vs f32 %.3g (tol %.0e), %zu bytes read per token (f32: %zu)\n",
                   names[wt], w, tol[wt], bytes[wt], bytes[0]);
            CHECK(bytes[wt] < bytes[0], "%s reads fewer bytes than f32", names[wt]);
            free(l);
        }
        fr_engine_free(e);
    }
    free(ref);
}

/* The decode results do not depend on the thread count, so the thread governor (governor.c),
 * which moves decode steps between all threads and one, changes speed only: logits of
 * prefill + decode on 1 and on 2 threads, every weight format (dense model) and the MoE
 * model, bit for bit. */
static void test_thread_count_independence(void) {
    const char *names[4] = {"f32", "bf16", "q8_0", "q4_1"};
    const int T = 40, P = 25, threads_before = omp_get_max_threads();
    for (int k = 0; k < 5; k++) {
        const char *dir = k < 4 ? g_dense_dir : g_random_dir;
        const int wt = k < 4 ? k : 0;
        float *l[2] = {NULL, NULL};
        int V = 0, ok = 1;
        for (int t = 0; t < 2; t++) {
            fr_engine_options o;
            fr_engine_options_default(&o);
            o.weight_type = wt;
            o.threads = t + 1;
            o.adaptive_threads = 0;
            fr_engine *e;
            int rc = fr_engine_load(&e, dir, &o);
            CHECK(rc == FR_OK, "load: %s", fr_last_error());
            if (rc != FR_OK) { ok = 0; continue; }
            V = fr_engine_config(e)->vocab_size;
            int tok[40];
            make_tokens(tok, T, V, 23);
            l[t] = malloc((size_t)T * V * sizeof(float));
            rc = fr_test_engine_logits(e, tok, T, P, l[t]);
            CHECK(rc == FR_OK, "forward: %s", fr_last_error());
            ok &= rc == FR_OK;
            fr_engine_free(e);
        }
        if (ok) CHECK(memcmp(l[0], l[1], (size_t)T * V * sizeof(float)) == 0,
                      "%s %s: logits on 1 and 2 threads differ", k < 4 ? "dense" : "moe", names[wt]);
        free(l[0]);
        free(l[1]);
    }
    fr_set_num_threads(threads_before); /* the engines set this thread's count */
}

/* Forwards of a few rows (a small batch of sequences, a speculative pair) take decode_row.c's
 * path too; its logits must be the many-row path's bit for bit, on 1 and 2 threads: three
 * sequences one token each, then a 2-token append to one of them, FP32 and BF16 caches, both
 * random MoE models. */
static void test_decode_rows_paths(void) {
    for (int k = 0; k < 4; k++) {
        fr_engine_options o;
        fr_engine_options_default(&o);
        o.kv_type = k & 1 ? FR_KV_BF16 : FR_KV_F32;
        o.adaptive_threads = 0;
        fr_engine *e;
        int rc = fr_engine_load(&e, k < 2 ? g_random_dir : g_wide_dir, &o);
        CHECK(rc == FR_OK, "load: %s", fr_last_error());
        if (rc != FR_OK) return;
        const int V = fr_engine_config(e)->vocab_size;
        int tok[84];
        make_tokens(tok, 84, V, 5 + k);
        float *l[3];
        const size_t per = (size_t)5 * V; /* 3 rows (last of each sequence) + a pair's 2 rows */
        for (int p = 0; p < 3; p++) l[p] = malloc(per * sizeof(float));
        const int threads_before = omp_get_max_threads();
        for (int pass = 0; pass < 3; pass++) { /* decode_row.c on 2 and 1 threads, the many-row path */
            fr_engine_set_fused_decode(pass < 2);
            fr_set_num_threads(pass == 1 ? 1 : 2);
            fr_seq *s[3];
            for (int q = 0; q < 3; q++) fr_seq_create(&s[q], e);
            const int *tp[3] = {tok, tok + 20, tok + 40};
            int n[3] = {9, 17, 33 + k}, ones[3] = {1, 1, 1}, two = 2;
            rc = fr_engine_forward(e, s, 3, tp, n, NULL, 0);
            const int *step[3] = {tok + 80, tok + 81, tok + 82};
            if (rc == FR_OK) rc = fr_engine_forward(e, s, 3, step, ones, l[pass], 0);
            const int *pair = tok + 76;
            if (rc == FR_OK) rc = fr_engine_forward(e, &s[1], 1, &pair, &two, l[pass] + (size_t)3 * V, 1);
            CHECK(rc == FR_OK, "forward: %s", fr_last_error());
            for (int q = 0; q < 3; q++) fr_seq_free(s[q]);
        }
        fr_engine_set_fused_decode(1);
        fr_set_num_threads(threads_before);
        CHECK(!memcmp(l[0], l[2], per * sizeof(float)), "model %d kv %d: decode_row.c (2 threads) differs from the many-row path", k / 2, k & 1);
        CHECK(!memcmp(l[1], l[2], per * sizeof(float)), "model %d kv %d: decode_row.c (1 thread) differs from the many-row path", k / 2, k & 1);
        for (int p = 0; p < 3; p++) free(l[p]);
        fr_engine_free(e);
    }
}

static void test_kv_bytes(void) {
    const fr_kv_type types[3] = {FR_KV_F32, FR_KV_BF16, FR_KV_FP8};
    const size_t per[3] = {4, 2, 1};
    for (int i = 0; i < 3; i++) {
        fr_engine_options o;
        fr_engine_options_default(&o);
        o.kv_type = types[i];
        fr_engine *e;
        int rc = fr_engine_load(&e, g_random_dir, &o);
        CHECK(rc == FR_OK, "load: %s", fr_last_error());
        if (rc != FR_OK) continue;
        const fr_config *c = fr_engine_config(e);
        size_t want = (size_t)c->num_hidden_layers * ((size_t)(c->kv_lora_rank + c->qk_rope_head_dim) * per[i] + (i == 2 ? 4 : 0));
        CHECK(fr_engine_kv_bytes_per_token(e) == want, "kv bytes/token type %d: %zu, want %zu", i,
              fr_engine_kv_bytes_per_token(e), want);
        CHECK(want == (size_t)3 * (40 * per[i] + (i == 2 ? 4 : 0)), "formula check");
        CHECK(fr_engine_mtp_depth(e) == 1, "MTP module loaded");
        CHECK(fr_engine_mtp_kv_bytes_per_token(e) == want / 3, "MTP cache bytes = one layer");
        fr_engine_free(e);
    }
}

/* rollback: truncate, re-append the same tokens -> same logits; chunked prefill = at once */
/* A decoded row runs through decode_row.c (each thread its own heads, from q_b to W_UV, and its
 * own experts) and its attention as one blocked pass over the cache for all heads; both must give
 * bit-identical logits to the many-row path and its head-by-head loop, for each cache type, at
 * contexts that cross several 32-key blocks and end mid-block, on 1 and 2 threads. */
static void test_blocked_attention(void) {
    const fr_kv_type types[4] = {FR_KV_F32, FR_KV_BF16, FR_KV_FP8, FR_KV_F32};
    for (int k = 0; k < 4; k++) { /* the last: the model with 40 experts */
        fr_engine_options o;
        fr_engine_options_default(&o);
        o.kv_type = types[k];
        o.adaptive_threads = 0; /* the passes' thread counts as set (no governor) */
        fr_engine *e;
        int rc = fr_engine_load(&e, k < 3 ? g_random_dir : g_wide_dir, &o);
        CHECK(rc == FR_OK, "load: %s", fr_last_error());
        if (rc != FR_OK) return;
        const int V = fr_engine_config(e)->vocab_size, P = 70, G = 6;
        int tok[76];
        make_tokens(tok, P + G, V, 11);
        /* passes: decode_row.c on 2 and on 1 thread, the many-row path with the blocked attention,
         * and with the head-by-head loop (the reference) */
        float *l[4];
        for (int pass = 0; pass < 4; pass++) l[pass] = malloc((size_t)G * V * sizeof(float));
        fr_seq *s;
        fr_seq_create(&s, e);
        const int threads_before = omp_get_max_threads();
        for (int pass = 0; pass < 4; pass++) {
            fr_engine_set_fused_decode(pass < 2);
            fr_engine_set_blocked_attention(pass < 3);
            fr_set_num_threads(pass == 1 ? 1 : 2);
            fr_seq_truncate(s, 0);
            const int *tp = tok;
            int n = P, one = 1;
            rc = fr_engine_forward(e, &s, 1, &tp, &n, l[pass], 0);
            for (int g = 0; g < G && rc == FR_OK; g++) {
                tp = tok + P + g;
                rc = fr_engine_forward(e, &s, 1, &tp, &one, l[pass] + (size_t)g * V, 0);
            }
            CHECK(rc == FR_OK, "decode: %s", fr_last_error());
        }
        fr_engine_set_fused_decode(1);
        fr_engine_set_blocked_attention(1);
        fr_set_num_threads(threads_before);
        static const char *what[3] = {"decode_row.c (2 threads)", "decode_row.c (1 thread)", "blocked all-heads attention"};
        for (int pass = 0; pass < 3; pass++)
            CHECK(!memcmp(l[pass], l[3], (size_t)G * V * sizeof(float)), "%s, kv %d: %s differs from head by head",
                  k < 3 ? "8 experts" : "40 experts", (int)types[k], what[pass]);
        fr_seq_free(s);
        fr_engine_free(e);
        for (int pass = 0; pass < 4; pass++) free(l[pass]);
    }
}

static void test_truncate_and_chunks(void) {
    fr_engine *e;
    int rc = fr_engine_load(&e, g_random_dir, NULL);
    CHECK(rc == FR_OK, "load: %s", fr_last_error());
    if (rc != FR_OK) return;
    const int V = fr_engine_config(e)->vocab_size, T = 50;
    int tok[50];
    make_tokens(tok, T, V, 5);
    float *a = malloc((size_t)T * V * sizeof(float)), *b = malloc((size_t)T * V * sizeof(float));
    fr_seq *s;
    fr_seq_create(&s, e);
    const int *tp = tok;
    int n = T;
    rc = fr_engine_forward(e, &s, 1, &tp, &n, a, 1);
    CHECK(rc == FR_OK, "forward: %s", fr_last_error());
    /* same sequence in three chunks 20 + 17 + 13, after a reset */
    fr_seq_truncate(s, 0);
    int chunks[3] = {20, 17, 13}, at = 0;
    for (int c = 0; c < 3 && rc == FR_OK; c++) {
        tp = tok + at;
        rc = fr_engine_forward(e, &s, 1, &tp, &chunks[c], b + (size_t)at * V, 1);
        at += chunks[c];
    }
    double w = worst_row_err(b, a, T, V);
    CHECK(rc == FR_OK && w <= TOL_F32, "chunked prefill vs whole: %.3g", w);
    /* roll back 9 tokens and append different ones, then the original ones again */
    fr_seq_truncate(s, 41);
    int other[9];
    make_tokens(other, 9, V, 99);
    tp = other;
    n = 9;
    rc = fr_engine_forward(e, &s, 1, &tp, &n, NULL, 0);
    fr_seq_truncate(s, 41);
    tp = tok + 41;
    rc = rc == FR_OK ? fr_engine_forward(e, &s, 1, &tp, &n, b + (size_t)41 * V, 1) : rc;
    double w2 = worst_row_err(b + (size_t)41 * V, a + (size_t)41 * V, 9, V);
    CHECK(rc == FR_OK && w2 <= TOL_F32, "after rollback: %.3g", w2);
    CHECK(fr_seq_len(s) == T, "length after rollback and re-append: %d", fr_seq_len(s));
    CHECK(fr_seq_truncate(s, T + 1) != FR_OK, "truncate beyond the length is refused");
    printf("chunked prefill vs whole %.3g, rollback + re-append %.3g (tol %.0e)\n", w, w2, TOL_F32);
    fr_seq_free(s);
    free(a);
    free(b);
    fr_engine_free(e);
}

/* 3 sequences of different lengths in one forward (prefill), then batched decode steps,
 * against each sequence alone */
static void test_batched_forward(void) {
    fr_engine *e;
    int rc = fr_engine_load(&e, g_random_dir, NULL);
    CHECK(rc == FR_OK, "load: %s", fr_last_error());
    if (rc != FR_OK) return;
    const int V = fr_engine_config(e)->vocab_size;
    const int plen[3] = {7, 31, 18}, steps = 6;
    int tok[3][40];
    for (int i = 0; i < 3; i++) make_tokens(tok[i], 40, V, 100 + i);
    fr_seq *s[3];
    for (int i = 0; i < 3; i++) fr_seq_create(&s[i], e);
    float *bat = malloc((size_t)3 * (steps + 1) * V * sizeof(float));
    float *one = malloc((size_t)(steps + 1) * V * sizeof(float));
    const int *tp[3] = {tok[0], tok[1], tok[2]};
    rc = fr_engine_forward(e, s, 3, tp, plen, bat, 0); /* [3, V]: last rows */
    for (int st = 0; st < steps && rc == FR_OK; st++) {
        int ones[3] = {1, 1, 1};
        const int *tq[3] = {tok[0] + plen[0] + st, tok[1] + plen[1] + st, tok[2] + plen[2] + st};
        rc = fr_engine_forward(e, s, 3, tq, ones, bat + (size_t)3 * (st + 1) * V, 0);
    }
    CHECK(rc == FR_OK, "batched: %s", fr_last_error());
    double worst = 0;
    for (int i = 0; i < 3 && rc == FR_OK; i++) {
        fr_seq *a;
        fr_seq_create(&a, e);
        const int *t0 = tok[i];
        rc = fr_engine_forward(e, &a, 1, &t0, &plen[i], one, 0);
        for (int st = 0; st < steps && rc == FR_OK; st++) {
            const int *t1 = tok[i] + plen[i] + st;
            int n1 = 1;
            rc = fr_engine_forward(e, &a, 1, &t1, &n1, one + (size_t)(st + 1) * V, 0);
        }
        for (int st = 0; st <= steps; st++) {
            double w = fr_rel_err(bat + ((size_t)3 * st + i) * V, one + (size_t)st * V, (size_t)V);
            if (!(w <= worst)) worst = w;
        }
        fr_seq_free(a);
    }
    CHECK(rc == FR_OK && worst <= TOL_F32, "batched vs alone: %.3g", worst);
    printf("3 sequences (7, 31, 18 tokens) batched, 6 decode steps: worst error vs alone %.3g (tol %.0e)\n", worst, TOL_F32);
    /* bad input leaves the sequences unchanged */
    int bad[2] = {3, V};
    const int *tb = bad;
    int nb = 2;
    int len0 = fr_seq_len(s[0]);
    CHECK(fr_engine_forward(e, s, 1, &tb, &nb, NULL, 0) == FR_ERR_ARG, "out-of-vocabulary token refused");
    CHECK(fr_seq_len(s[0]) == len0, "sequence unchanged after a refused call");
    CHECK(strstr(fr_last_error(), "vocabulary") != NULL, "message names the vocabulary: %s", fr_last_error());
    fr_seq *dup[2] = {s[0], s[0]};
    const int *td[2] = {tok[0], tok[0]};
    int nd[2] = {1, 1};
    CHECK(fr_engine_forward(e, dup, 2, td, nd, NULL, 0) == FR_ERR_ARG, "a sequence passed twice is refused");
    for (int i = 0; i < 3; i++) fr_seq_free(s[i]);
    free(bat);
    free(one);
    fr_engine_free(e);
}

/* ------------------------------------------------------------------ generation */

static int read_json_ints(const char *text, const char *key, int *out, int cap) {
    const char *p = strstr(text, key);
    if (!p) return -1;
    p = strchr(p, '[');
    if (!p) return -1;
    int n = 0;
    p++;
    while (*p && *p != ']' && n < cap) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p) { p++; continue; }
        out[n++] = (int)v;
        p = end;
    }
    return n;
}

static int greedy(fr_engine *e, fr_seq **s, int n_seqs, const int *const *prompts, const int *lens, int max_tokens,
                  int speculative, int **out, int *out_lens, fr_generate_stats *st) {
    fr_generate_options o;
    fr_generate_options_default(&o);
    o.sample.temperature = 0;
    o.max_tokens = max_tokens;
    o.ignore_eos = 1;
    o.speculative = speculative;
    return fr_generate(e, NULL, s, n_seqs, prompts, lens, &o, out, out_lens, st);
}

static void test_generate_vs_transformers(void) {
    char dir[1024], path[1200];
    snprintf(dir, sizeof dir, "%s/generate", FR_FIXTURES_DIR);
    snprintf(path, sizeof path, "%s/expected.json", dir);
    FILE *f = fopen(path, "rb");
    CHECK(f != NULL, "open %s", path);
    if (!f) return;
    char buf[8192];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = 0;
    fclose(f);
    int prompt[64], want[64];
    int np = read_json_ints(buf, "\"prompt\"", prompt, 64), nw = read_json_ints(buf, "\"generated\"", want, 64);
    CHECK(np == 16 && nw == 64, "expected.json: %d prompt ids, %d generated", np, nw);
    fr_engine *e;
    int rc = fr_engine_load(&e, dir, NULL);
    CHECK(rc == FR_OK, "load %s: %s", dir, fr_last_error());
    if (rc != FR_OK || np != 16 || nw != 64) return;
    fr_seq *s[3];
    for (int i = 0; i < 3; i++) fr_seq_create(&s[i], e);
    int *out[3], ol[3];
    const int *pp = prompt;
    fr_generate_stats st;
    rc = greedy(e, s, 1, &pp, &np, 64, 0, out, ol, &st);
    CHECK(rc == FR_OK, "generate: %s", fr_last_error());
    if (rc == FR_OK) {
        int same = ol[0] == 64;
        int first_diff = -1;
        for (int i = 0; i < 64 && i < ol[0]; i++)
            if (out[0][i] != want[i]) { same = 0; if (first_diff < 0) first_diff = i; }
        CHECK(same, "greedy generation differs from transformers at token %d", first_diff);
        CHECK(st.stop_reason[0] == FR_STOP_MAX_TOKENS, "stop reason %d", st.stop_reason[0]);
        printf("greedy generation vs transformers: %d/64 tokens identical\n", same ? 64 : first_diff);
        free(out[0]);
    }
    /* BF16 / Q8_0 weights keep the greedy choices (margins >= 2 logits in this model) */
    for (int wt = 1; wt <= 2 && rc == FR_OK; wt++) {
        fr_engine_options qo;
        fr_engine_options_default(&qo);
        qo.weight_type = wt;
        fr_engine *qe;
        int qrc = fr_engine_load(&qe, dir, &qo);
        CHECK(qrc == FR_OK, "load weight type %d: %s", wt, fr_last_error());
        if (qrc != FR_OK) continue;
        fr_seq *qs;
        fr_seq_create(&qs, qe);
        int *qout, qlen;
        qrc = greedy(qe, &qs, 1, &pp, &np, 64, 0, &qout, &qlen, NULL);
        int same = 0;
        while (qrc == FR_OK && same < qlen && qout[same] == want[same]) same++;
        CHECK(qrc == FR_OK && same == 64, "weight type %d: greedy tokens differ from transformers at %d", wt, same);
        printf("greedy generation with %s weights: %d/64 tokens identical to transformers (FP32)\n", wt == 1 ? "bf16" : "q8_0", same);
        if (qrc == FR_OK) free(qout);
        fr_seq_free(qs);
        fr_engine_free(qe);
    }
    /* three prompts of different lengths batched = each alone */
    int p1[16], p2[16], p3[16];
    memcpy(p1, prompt, sizeof p1);
    memcpy(p2, prompt + 5, 11 * sizeof(int));
    memcpy(p3, prompt + 9, 7 * sizeof(int));
    const int *ps[3] = {p1, p2, p3};
    int lens[3] = {16, 11, 7};
    int *alone[3], al[3];
    rc = greedy(e, s, 3, ps, lens, 40, 0, out, ol, NULL);
    CHECK(rc == FR_OK, "batched generate: %s", fr_last_error());
    for (int i = 0; i < 3 && rc == FR_OK; i++) {
        rc = greedy(e, &s[i], 1, &ps[i], &lens[i], 40, 0, &alone[i], &al[i], NULL);
        CHECK(rc == FR_OK && al[i] == ol[i] && memcmp(alone[i], out[i], (size_t)al[i] * sizeof(int)) == 0,
              "prompt %d: batched generation differs from alone", i);
        free(alone[i]);
    }
    if (rc == FR_OK) {
        for (int i = 0; i < 3; i++) free(out[i]);
        printf("3 prompts (16, 11, 7 tokens) batched: 40 greedy tokens each, identical to alone\n");
    }
    /* prompt longer than the context */
    int big[200];
    for (int i = 0; i < 200; i++) big[i] = 3 + i % 100;
    const int *bp = big;
    int bl = 200;
    rc = greedy(e, s, 1, &bp, &bl, 4, 0, out, ol, NULL);
    CHECK(rc == FR_ERR_ARG && strstr(fr_last_error(), "maximum sequence length"), "long prompt: %d %s", rc, fr_last_error());
    rc = greedy(e, s, 1, &pp, &np, 4, 1, out, ol, NULL);
    CHECK(rc == FR_ERR_UNSUPPORTED, "speculative without MTP refused: %s", fr_last_error());
    for (int i = 0; i < 3; i++) fr_seq_free(s[i]);
    fr_engine_free(e);
}

static long check_speculative(const char *dir, int plen, int ntok, int max_seq_len, const char *label) {
    fr_engine_options o;
    fr_engine_options_default(&o);
    o.max_seq_len = max_seq_len;
    fr_engine *e;
    int rc = fr_engine_load(&e, dir, &o);
    CHECK(rc == FR_OK, "load %s: %s", dir, fr_last_error());
    if (rc != FR_OK) return 0;
    long accepted = 0;
    CHECK(fr_engine_mtp_depth(e) == 1, "%s: MTP module loaded", label);
    const int V = fr_engine_config(e)->vocab_size;
    int prompts[3][64];
    for (int i = 0; i < 3; i++) make_tokens(prompts[i], 64, V, 500 + i);
    int lens[3] = {plen, plen / 2 + 1, plen - 3};
    const int *pp[3] = {prompts[0], prompts[1], prompts[2]};
    fr_seq *s[3];
    for (int i = 0; i < 3; i++) fr_seq_create(&s[i], e);
    int *a[3], al[3], *b[3], bl[3];
    fr_generate_stats sa, sb;
    rc = greedy(e, s, 3, pp, lens, ntok, 0, a, al, &sa);
    CHECK(rc == FR_OK, "%s plain: %s", label, fr_last_error());
    int rc2 = greedy(e, s, 3, pp, lens, ntok, 1, b, bl, &sb);
    CHECK(rc2 == FR_OK, "%s speculative: %s", label, fr_last_error());
    if (rc == FR_OK && rc2 == FR_OK) {
        for (int i = 0; i < 3; i++) {
            CHECK(al[i] == bl[i] && memcmp(a[i], b[i], (size_t)al[i] * sizeof(int)) == 0,
                  "%s: speculative greedy output differs from plain greedy (sequence %d, %d vs %d tokens)", label, i,
                  bl[i], al[i]);
            CHECK(sa.stop_reason[i] == sb.stop_reason[i], "%s: stop reasons %d vs %d", label, sa.stop_reason[i],
                  sb.stop_reason[i]);
        }
        CHECK(sb.drafted > 0 && sb.accepted <= sb.drafted, "%s: drafted %ld accepted %ld", label, sb.drafted, sb.accepted);
        CHECK(sb.main_steps + sb.accepted >= sa.main_steps - 3 && sb.main_steps <= sa.main_steps,
              "%s: main steps %ld (speculative) vs %ld", label, sb.main_steps, sa.main_steps);
        printf("%s: speculative = plain greedy for 3 prompts x %d tokens (%s); drafts %ld, accepted %ld, main steps %ld vs %ld\n",
               label, al[0], sa.stop_reason[0] == FR_STOP_CONTEXT ? "until the context is full" : "max tokens",
               sb.drafted, sb.accepted, sb.main_steps, sa.main_steps);
        for (int i = 0; i < 3; i++) { free(a[i]); free(b[i]); }
        accepted = sb.accepted;
    }
    for (int i = 0; i < 3; i++) fr_seq_free(s[i]);
    fr_engine_free(e);
    return accepted;
}

static void test_speculative(void) {
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/v3_mtp", FR_FIXTURES_DIR);
    check_speculative(dir, 12, 40, 0, "v3_mtp");
    check_speculative(dir, 12, 100, 0, "v3_mtp to the context limit (64)");
    check_speculative(g_random_dir, 30, 120, 0, "random model (fr_model_save, MTP)");
    check_speculative(g_random_dir, 30, 100, 45, "random model, max_seq_len 45");
    /* drafts that are accepted exercise the 2-token verify path (the random MTP modules
     * above are always rejected) */
    long acc = check_speculative(g_oracle_dir, 20, 120, 0, "oracle-MTP model");
    CHECK(acc > 50, "oracle-MTP model: only %ld drafts accepted", acc);
    acc = check_speculative(g_oracle_dir, 20, 120, 70, "oracle-MTP model, max_seq_len 70");
    CHECK(acc > 20, "oracle-MTP model near the context limit: only %ld drafts accepted", acc);
}

/* ------------------------------------------------------------------ sampler */

static void test_sampler(void) {
    const int V = 5;
    const float logits[5] = {1.0f, 2.0f, 0.5f, 2.0f, -1.0f};
    fr_sample_params p;
    fr_sample_params_default(&p);
    p.temperature = 0;
    fr_sampler *s;
    CHECK(fr_sampler_create(&s, &p, V) == FR_OK, "create");
    CHECK(fr_sampler_sample(s, logits, NULL, 0) == 1, "greedy picks the lowest id among ties");
    fr_sampler_free(s);
    /* repeat penalty (greedy): ids 1 and 3 seen -> 2/2 = 1 each; id 0 (1.0) ties, lowest id wins */
    p.repeat_penalty = 2.0f;
    fr_sampler_create(&s, &p, V);
    int hist[3] = {1, 3, 1};
    CHECK(fr_sampler_sample(s, logits, hist, 3) == 0, "repeat penalty changes the choice");
    p.repeat_last_n = 1; /* only the last token (1) is penalised -> 3 wins */
    fr_sampler_free(s);
    fr_sampler_create(&s, &p, V);
    CHECK(fr_sampler_sample(s, logits, hist, 3) == 3, "repeat_last_n limits the window");
    fr_sampler_free(s);

    /* distribution: temperature 1, no truncation: frequencies within 0.01 of softmax */
    fr_sample_params_default(&p);
    p.temperature = 1.0f;
    p.top_k = 0;
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    p.seed = 123;
    fr_sampler_create(&s, &p, V);
    long cnt[5] = {0};
    const int n = 40000;
    for (int i = 0; i < n; i++) cnt[fr_sampler_sample(s, logits, NULL, 0)]++;
    fr_sampler_free(s);
    double z = 0, worst = 0;
    for (int i = 0; i < V; i++) z += exp(logits[i]);
    for (int i = 0; i < V; i++) worst = fmax(worst, fabs((double)cnt[i] / n - exp(logits[i]) / z));
    CHECK(worst < 0.01, "sampled frequencies differ from softmax by %.4f", worst);
    /* same seed -> same stream */
    int s1[50], s2[50];
    for (int r = 0; r < 2; r++) {
        fr_sampler_create(&s, &p, V);
        for (int i = 0; i < 50; i++) (r ? s2 : s1)[i] = fr_sampler_sample(s, logits, NULL, 0);
        fr_sampler_free(s);
    }
    CHECK(memcmp(s1, s2, sizeof s1) == 0, "same seed, same samples");
    /* top-k 2: only ids 1 and 3; min-p 0.5: only ids with p >= p_max/2 (1, 3); top-p 0.3: only id 1 */
    int seen[5];
    struct { int k; float mp, tp; int allowed_mask; } cases[3] = {{2, 0, 1, 0xA}, {0, 0.5f, 1, 0xA}, {0, 0, 0.3f, 0x2}};
    for (int c = 0; c < 3; c++) {
        p.top_k = cases[c].k;
        p.min_p = cases[c].mp;
        p.top_p = cases[c].tp;
        memset(seen, 0, sizeof seen);
        fr_sampler_create(&s, &p, V);
        for (int i = 0; i < 2000; i++) seen[fr_sampler_sample(s, logits, NULL, 0)] = 1;
        fr_sampler_free(s);
        int mask = 0;
        for (int i = 0; i < V; i++) mask |= seen[i] << i;
        CHECK(mask == cases[c].allowed_mask, "truncation case %d: sampled ids mask %#x, want %#x", c, mask,
              cases[c].allowed_mask);
    }
    p.top_p = 0;
    CHECK(fr_sampler_create(&s, &p, V) == FR_ERR_ARG, "top_p 0 refused");
    p.top_p = 1;
    p.temperature = -1;
    CHECK(fr_sampler_create(&s, &p, V) == FR_ERR_ARG, "negative temperature refused");
}

/* The sampler as first written: every step over the whole vocabulary sorted by qsort.
 * fr_sampler_sample must draw exactly the same ids from the same stream. */
static const float *g_ref_p;
static int ref_desc(const void *a, const void *b) {
    int i = *(const int *)a, j = *(const int *)b;
    if (g_ref_p[i] != g_ref_p[j]) return g_ref_p[i] > g_ref_p[j] ? -1 : 1;
    return (i > j) - (i < j);
}

static int ref_sample(const fr_sample_params *p, fr_rng *rng, const float *logits, int V, const int *hist, int nh,
                      float *w, int *idx) {
    memcpy(w, logits, (size_t)V * sizeof(float));
    if (p->repeat_penalty != 1.0f && p->repeat_last_n > 0) {
        for (int i = nh > p->repeat_last_n ? nh - p->repeat_last_n : 0; i < nh; i++) {
            int t = hist[i], dup = 0;
            for (int j = nh > p->repeat_last_n ? nh - p->repeat_last_n : 0; j < i; j++) dup |= hist[j] == t;
            if (!dup) w[t] = w[t] > 0 ? w[t] / p->repeat_penalty : w[t] * p->repeat_penalty;
        }
    }
    if (p->temperature <= 0) {
        int best = 0;
        for (int i = 1; i < V; i++)
            if (w[i] > w[best]) best = i;
        return best;
    }
    for (int i = 0; i < V; i++) { idx[i] = i; w[i] /= p->temperature; }
    g_ref_p = w;
    qsort(idx, (size_t)V, sizeof(int), ref_desc);
    int n = p->top_k > 0 && p->top_k < V ? p->top_k : V;
    float mx = w[idx[0]];
    double sum = 0;
    for (int i = 0; i < n; i++) { w[idx[i]] = expf(w[idx[i]] - mx); sum += w[idx[i]]; }
    for (int i = 0; i < n; i++) w[idx[i]] = (float)(w[idx[i]] / sum);
    if (p->min_p > 0) {
        float thr = p->min_p * w[idx[0]];
        int k = 1;
        while (k < n && w[idx[k]] >= thr) k++;
        n = k;
    }
    if (p->top_p < 1) {
        double cum = 0;
        int k = 0;
        while (k < n && cum < p->top_p) cum += w[idx[k++]];
        n = k;
    }
    double total = 0, acc = 0;
    for (int i = 0; i < n; i++) total += w[idx[i]];
    double u = fr_rng_uniform(rng) * total;
    for (int i = 0; i < n; i++) {
        acc += w[idx[i]];
        if (u < acc) return idx[i];
    }
    return idx[n - 1];
}

/* kind 0: N(0, 3); 1: -|N(0, 2)| rounded to 0.5 (many ties, the largest being -0 and +0);
 * 2: N(0, 40) (exp underflows) with some -inf (masked ids); 3: a few large logits over a
 * flat floor */
static void make_logits(float *x, int V, int kind, fr_rng *r) {
    for (int i = 0; i < V; i++) {
        double g = fr_rng_normal(r);
        if (kind == 0) x[i] = (float)(3 * g);
        else if (kind == 1) x[i] = (float)-fabs(nearbyint(4 * g) / 2);
        else if (kind == 2) x[i] = fr_rng_uniform(r) < 0.05 ? -INFINITY : (float)(40 * g);
        else x[i] = fr_rng_uniform(r) < 0.01 ? (float)(10 + g) : -2.0f;
        if (kind == 1 && x[i] == 0) x[i] = (i & 1) ? -0.0f : 0.0f;
    }
}

static void test_sampler_vs_reference(void) {
    const float temps[] = {0, 0.3f, 0.8f, 1.5f}, top_ps[] = {0.5f, 0.9f, 1}, min_ps[] = {0, 0.05f}, pens[] = {1, 1.3f};
    const int top_ks[] = {0, 5, 50, 300}, Vs[] = {1000, 4099, 129280};
    int hist[96];
    long samples = 0, differ = 0;
    fr_rng r;
    fr_rng_seed(&r, 2024);
    for (int vi = 0; vi < 3; vi++) {
        const int V = Vs[vi], big = V > 100000;
        float *x = malloc((size_t)V * sizeof(float)), *w = malloc((size_t)V * sizeof(float));
        int *idx = malloc((size_t)V * sizeof(int));
        if (!x || !w || !idx) { free(x); free(w); free(idx); CHECK(0, "out of memory"); return; }
        for (int c = 0; c < 4 * 4 * 3 * 2 * 2; c++) {
            fr_sample_params p;
            fr_sample_params_default(&p);
            p.temperature = temps[c % 4];
            p.top_k = top_ks[c / 4 % 4];
            p.top_p = top_ps[c / 16 % 3];
            p.min_p = min_ps[c / 48 % 2];
            p.repeat_penalty = pens[c / 96];
            p.seed = 1000 + (uint64_t)c;
            /* the full vocabulary: the default sampling shapes only, the qsort reference is slow */
            if (big && !(p.temperature == 0.8f && (p.top_k == 0 || p.top_k == 50) && p.top_p != 0.5f && c < 96)) continue;
            fr_sampler *s;
            if (fr_sampler_create(&s, &p, V) != FR_OK) { CHECK(0, "create: %s", fr_last_error()); continue; }
            fr_rng ref;
            fr_rng_seed(&ref, p.seed);
            for (int i = 0; i < 96; i++) hist[i] = (int)(fr_rng_next(&r) % (uint64_t)V);
            for (int k = 0; k < (big ? 2 : 4); k++) {
                make_logits(x, V, (c + k) % 4, &r);
                for (int d = 0; d < (big ? 1 : 3); d++) {
                    int nh = 20 + 30 * d;
                    int a = fr_sampler_sample(s, x, hist, nh), b = ref_sample(&p, &ref, x, V, hist, nh, w, idx);
                    samples++;
                    if (a != b && differ++ < 5)
                        printf("sampler vs reference: V %d T %g top_k %d top_p %g min_p %g penalty %g logits %d: %d vs %d\n",
                               V, p.temperature, p.top_k, p.top_p, p.min_p, p.repeat_penalty, (c + k) % 4, a, b);
                }
            }
            fr_sampler_free(s);
        }
        free(x);
        free(w);
        free(idx);
    }
    CHECK(differ == 0, "sampler differs from the full-sort reference in %ld of %ld draws", differ, samples);
    printf("sampler = full-sort reference in %ld draws (V 1000, 4099, 129280; T, top-k, top-p, min-p, penalty)\n", samples);
}

/* E4M3 from its definition (bias 7, subnormals m 2^-9, S.1111.111 NaN), independent of the
 * library's bit-moving decoder */
static float e4m3_reference(uint8_t b) {
    const int exp = (b >> 3) & 15, mant = b & 7;
    float v;
    if (exp == 15 && mant == 7) v = NAN;
    else if (exp == 0) v = (float)mant * (1.0f / 512.0f);
    else v = ldexpf(1.0f + (float)mant / 8.0f, exp - 7);
    return (b & 0x80) ? -v : v;
}

static void test_number_formats(void) {
    int bad = 0, bad_ref = 0;
    for (int b = 0; b < 256; b++) {
        const float want = e4m3_reference((uint8_t)b), got = fr_fp8_e4m3_decode((uint8_t)b);
        if (isnan(want) ? !isnan(got) : memcmp(&want, &got, 4) != 0) bad_ref++;
    }
    CHECK(bad_ref == 0, "FP8 E4M3: %d of 256 codes decode differently from the definition", bad_ref);
    for (int b = 0; b < 256; b++) {
        if ((b & 0x7f) == 0x7f) continue; /* NaN */
        float v = fr_fp8_e4m3_decode((uint8_t)b);
        uint8_t back = fr_fp8_e4m3_encode(v);
        if (back != b && !(v == 0 && (back & 0x7f) == 0)) bad++;
    }
    CHECK(bad == 0, "FP8 E4M3: %d codes do not round-trip", bad);
    CHECK(fr_fp8_e4m3_decode(0x7e) == 448.0f && fr_fp8_e4m3_encode(1e6f) == 0x7e, "E4M3 max 448, saturating");
    CHECK(fr_fp8_e4m3_decode(0x01) == 1.0f / 512, "E4M3 smallest subnormal 2^-9");
    double worst = 0;
    for (float x = 0.02f; x < 400; x *= 1.013f) {
        double r = fabs(fr_fp8_e4m3_decode(fr_fp8_e4m3_encode(x)) - x) / x;
        if (r > worst) worst = r;
    }
    CHECK(worst <= 1.0 / 16 + 1e-6, "E4M3 relative rounding error %.4f > 2^-4", worst);
    CHECK(fr_bf16_decode(fr_bf16_encode(1.0f + 1.0f / 256)) == 1.0f, "BF16 ties to even");
    CHECK(fr_bf16_decode(fr_bf16_encode(3.140625f)) == 3.140625f, "BF16 exact value");

    /* the cache's row decoders equal the per-value ones bit for bit, over every input
     * (NaN bytes: both NaN) and scales that keep subnormal results subnormal */
    static uint16_t all16[65536];
    static float row16[65536];
    for (int b = 0; b < 65536; b++) all16[b] = (uint16_t)b;
    fr_bf16_decode_row(row16, all16, 65536);
    int bad16 = 0;
    for (int b = 0; b < 65536; b++) {
        const float want = fr_bf16_decode((uint16_t)b);
        if (memcmp(&want, &row16[b], 4) != 0) bad16++;
    }
    CHECK(bad16 == 0, "fr_bf16_decode_row: %d of 65536 values differ from fr_bf16_decode", bad16);
    uint8_t all8[256];
    float row8[256];
    for (int b = 0; b < 256; b++) all8[b] = (uint8_t)b;
    const float scales[4] = {1.0f, 0.0123f, 3.5f, -2.0f};
    int bad8 = 0;
    for (int k = 0; k < 4; k++) {
        fr_fp8_e4m3_decode_row(row8, all8, 256, scales[k]);
        for (int b = 0; b < 256; b++) {
            const float want = fr_fp8_e4m3_decode((uint8_t)b) * scales[k];
            if (isnan(want) ? !isnan(row8[b]) : memcmp(&want, &row8[b], 4) != 0) bad8++;
        }
    }
    CHECK(bad8 == 0, "fr_fp8_e4m3_decode_row: %d of 1024 values differ from fr_fp8_e4m3_decode * scale", bad8);
}

/* ------------------------------------------------------------------ text: stop strings, streaming */

typedef struct {
    char text[4096];
    size_t len;
    int calls, tokens[128];
} stream_rec;

static int on_token(void *user, int seq, int token, const char *text, size_t len) {
    stream_rec *r = user;
    if (seq == 0 && r->len + len < sizeof r->text) {
        memcpy(r->text + r->len, text, len);
        r->len += len;
        r->text[r->len] = 0;
        if (r->calls < 128) r->tokens[r->calls] = token;
        r->calls++;
    }
    return 0;
}

static void test_stop_strings(void) {
    char dir[1024], tdir[1024];
    snprintf(dir, sizeof dir, "%s/generate", FR_FIXTURES_DIR);
    snprintf(tdir, sizeof tdir, "%s/tokenizer/frugal_trained", FR_FIXTURES_DIR);
    fr_engine *e;
    fr_tokenizer *tok;
    int rc = fr_engine_load(&e, dir, NULL);
    CHECK(rc == FR_OK, "load: %s", fr_last_error());
    int rt = fr_tokenizer_load(&tok, tdir);
    CHECK(rt == FR_OK, "tokenizer: %s", fr_last_error());
    if (rc != FR_OK || rt != FR_OK) return;
    int prompt[8] = {10, 20, 30, 40, 50, 60, 70, 80};
    const int *pp = prompt;
    int pl = 8;
    fr_seq *s;
    fr_seq_create(&s, e);
    fr_generate_options o;
    fr_generate_options_default(&o);
    o.sample.temperature = 0;
    o.max_tokens = 30;
    o.ignore_eos = 1;
    stream_rec full = {0};
    o.on_token = on_token;
    o.user = &full;
    int *out, ol;
    rc = fr_generate(e, tok, &s, 1, &pp, &pl, &o, &out, &ol, NULL);
    CHECK(rc == FR_OK && ol == 30 && full.calls == 30, "streamed generation: %s", fr_last_error());
    char *dec = NULL;
    size_t dl = 0;
    if (rc == FR_OK) fr_tokenizer_decode(tok, out, (size_t)ol, 0, &dec, &dl);
    CHECK(dec && dl == full.len && memcmp(dec, full.text, dl) == 0, "streamed text = decoded tokens");
    /* stop string: the decoded text of tokens 10..11 */
    if (rc == FR_OK && dec && ol == 30) {
        char *head = NULL, *stop = NULL;
        size_t hl = 0, sl = 0;
        fr_tokenizer_decode(tok, out, 10, 0, &head, &hl);
        fr_tokenizer_decode(tok, out + 10, 2, 0, &stop, &sl);
        const char *stops[1] = {stop};
        char *first = memmem(dec, dl, stop, sl);
        size_t cut = first ? (size_t)(first - dec) : dl;
        stream_rec part = {0};
        o.user = &part;
        o.stop = stops;
        o.n_stop = 1;
        fr_generate_stats st;
        int *out2, ol2;
        rc = fr_generate(e, tok, &s, 1, &pp, &pl, &o, &out2, &ol2, &st);
        CHECK(rc == FR_OK && st.stop_reason[0] == FR_STOP_STRING, "stop string: rc %d reason %d", rc, st.stop_reason[0]);
        CHECK(part.len == cut && memcmp(part.text, dec, cut) == 0, "text is cut before the stop string (%zu vs %zu bytes)",
              part.len, cut);
        CHECK(ol2 <= 12 && ol2 >= 1, "generation stopped at the stop string (%d tokens)", ol2);
        printf("streaming: 30 tokens, %zu bytes; stop string of %zu bytes cut the text at byte %zu after %d tokens\n",
               full.len, sl, cut, ol2);
        if (rc == FR_OK) free(out2);
        free(head);
        free(stop);
    }
    free(dec);
    if (rc == FR_OK) free(out);
    fr_seq_free(s);
    fr_tokenizer_free(tok);
    fr_engine_free(e);
}

/* A vocab_size padded past the tokenizer (1005 ids -> 1024) whose padded rows of the output
 * head are scaled up so that they win most argmaxes: with the tokenizer, fr_generate never
 * draws them (greedy, sampling with streamed text, speculative drafts), and for real ids
 * it picks what the masked logits pick. */
static void test_padded_vocab(void) {
    char tdir[1024], dir[256];
    snprintf(tdir, sizeof tdir, "%s/tokenizer/frugal_trained", FR_FIXTURES_DIR);
    snprintf(dir, sizeof dir, "/tmp/frugal_test_infer_padded_%d", (int)getpid());
    fr_tokenizer *tok;
    int rc = fr_tokenizer_load(&tok, tdir);
    CHECK(rc == FR_OK, "tokenizer: %s", fr_last_error());
    if (rc != FR_OK) return;
    const int n_tok = fr_tokenizer_vocab_size(tok), V = (n_tok + 127) / 128 * 128;
    CHECK(V > n_tok, "the padded vocabulary is larger (%d vs %d)", V, n_tok);
    char json[4096];
    const char *key = "\"vocab_size\": 200", *at = strstr(RANDOM_CONFIG, key);
    snprintf(json, sizeof json, "%.*s\"vocab_size\": %d%s", (int)(at - RANDOM_CONFIG), RANDOM_CONFIG, V,
             at + strlen(key));
    fr_model *m = NULL;
    fr_engine *e = NULL;
    rc = save_model_from(json, dir, 81, 1);
    if (rc == FR_OK) rc = fr_model_load(&m, dir);
    size_t n = 0;
    float *head = rc == FR_OK ? fr_model_param(m, "lm_head.weight", &n) : NULL;
    CHECK(rc == FR_OK && head && n % (size_t)V == 0, "padded model: %s", fr_last_error());
    if (head) {
        const size_t H = n / (size_t)V;
        for (size_t i = (size_t)n_tok * H; i < n; i++) head[i] *= 12.0f;
        rc = fr_engine_from_model(&e, m, NULL);
        CHECK(rc == FR_OK, "engine: %s", fr_last_error());
    }
    fr_model_free(m);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) printf("note: could not remove %s\n", dir);
    if (!e) { fr_tokenizer_free(tok); return; }

    int prompt[3][12];
    for (int i = 0; i < 3; i++) make_tokens(prompt[i], 12, n_tok, 900 + i);
    const int *pp[3] = {prompt[0], prompt[1], prompt[2]};
    int lens[3] = {12, 7, 10}, *out[3] = {0}, ol[3] = {0};
    const int N = 40;
    fr_seq *s[3];
    for (int i = 0; i < 3; i++) fr_seq_create(&s[i], e);
    fr_generate_options o;
    fr_generate_options_default(&o);
    o.sample.temperature = 0;
    o.max_tokens = N;
    o.ignore_eos = 1;

    /* without a tokenizer nothing is masked: the case must bite */
    int padded = 0;
    rc = fr_generate(e, NULL, s, 3, pp, lens, &o, out, ol, NULL);
    CHECK(rc == FR_OK, "generate without a tokenizer: %s", fr_last_error());
    for (int i = 0; rc == FR_OK && i < 3; i++) {
        for (int t = 0; t < ol[i]; t++) padded += out[i][t] >= n_tok;
        free(out[i]);
    }
    CHECK(padded > 0, "the scaled padded rows never win (test case too weak)");

    /* greedy with the tokenizer = argmax over the real ids, step by step */
    int *ref = malloc((size_t)(12 + N) * sizeof(int));
    float *lg = malloc((size_t)V * sizeof(float));
    int ok_ref = ref && lg;
    if (ok_ref) {
        fr_seq *r;
        ok_ref = fr_seq_create(&r, e) == FR_OK;
        memcpy(ref, prompt[0], 12 * sizeof(int));
        for (int t = 0; ok_ref && t < N; t++) {
            const int *tp = t == 0 ? ref : ref + 12 + t - 1;
            int nt = t == 0 ? 12 : 1;
            ok_ref = fr_engine_forward(e, &r, 1, &tp, &nt, lg, 0) == FR_OK;
            ref[12 + t] = fr_argmax(lg, n_tok);
        }
        if (ok_ref) fr_seq_free(r);
    }
    CHECK(ok_ref, "reference decode: %s", fr_last_error());
    int *greedy_out = NULL, greedy_len = 0;
    for (int spec = 0; spec < 2; spec++) {
        fr_generate_stats st;
        o.speculative = spec;
        rc = fr_generate(e, tok, s, 3, pp, lens, &o, out, ol, &st);
        CHECK(rc == FR_OK, "greedy with the tokenizer (speculative %d): %s", spec, fr_last_error());
        if (rc != FR_OK) continue;
        int bad = 0;
        for (int i = 0; i < 3; i++)
            for (int t = 0; t < ol[i]; t++) bad += out[i][t] < 0 || out[i][t] >= n_tok;
        CHECK(bad == 0 && ol[0] == N, "greedy (speculative %d): %d ids outside the tokenizer", spec, bad);
        if (ok_ref && ol[0] == N)
            CHECK(memcmp(out[0], ref + 12, (size_t)N * sizeof(int)) == 0,
                  "greedy (speculative %d) differs from the argmax over the tokenizer's ids", spec);
        if (spec == 0) {
            greedy_out = out[0];
            greedy_len = ol[0];
            out[0] = NULL;
        } else {
            CHECK(ol[0] == greedy_len && greedy_out && memcmp(out[0], greedy_out, (size_t)ol[0] * sizeof(int)) == 0,
                  "speculative greedy differs from plain greedy");
            CHECK(st.drafted > 0, "drafts made");
            printf("padded vocabulary (%d ids, tokenizer %d): speculative greedy = plain greedy, drafts %ld accepted %ld\n",
                   V, n_tok, st.drafted, st.accepted);
        }
        for (int i = 0; i < 3; i++) free(out[i]);
    }
    free(greedy_out);

    /* sampling over the whole vocabulary with streamed text (every token decoded) */
    stream_rec rec = {0};
    o.speculative = 0;
    o.sample.temperature = 1.5f;
    o.sample.top_k = 0;
    o.sample.top_p = 1;
    o.sample.min_p = 0;
    o.on_token = on_token;
    o.user = &rec;
    rc = fr_generate(e, tok, s, 3, pp, lens, &o, out, ol, NULL);
    CHECK(rc == FR_OK, "sampling with streamed text: %s", fr_last_error());
    if (rc == FR_OK) {
        int bad = 0;
        for (int i = 0; i < 3; i++) {
            for (int t = 0; t < ol[i]; t++) bad += out[i][t] < 0 || out[i][t] >= n_tok;
            free(out[i]);
        }
        CHECK(bad == 0 && rec.calls == N, "sampling: %d ids outside the tokenizer, %d tokens streamed", bad, rec.calls);
        printf("padded vocabulary: %d of %d greedy tokens padded without the tokenizer, none with it (greedy, "
               "speculative, sampling)\n", padded, 3 * N);
    }
    free(ref);
    free(lg);
    for (int i = 0; i < 3; i++) fr_seq_free(s[i]);
    fr_engine_free(e);
    fr_tokenizer_free(tok);
}

static void test_bad_input(void) {
    fr_engine *e = NULL;
    int rc = fr_engine_load(&e, "/nonexistent/model", NULL);
    CHECK(rc != FR_OK && e == NULL, "missing folder refused");
    CHECK(strstr(fr_last_error(), "/nonexistent/model") != NULL, "message names the folder: %s", fr_last_error());
    fr_engine_options o;
    fr_engine_options_default(&o);
    o.weight_type = 17;
    CHECK(fr_engine_load(&e, g_random_dir, &o) == FR_ERR_ARG, "unknown weight type refused");
    fr_engine_options_default(&o);
    o.max_seq_len = 10;
    rc = fr_engine_load(&e, g_random_dir, &o);
    CHECK(rc == FR_OK, "load: %s", fr_last_error());
    if (rc != FR_OK) return;
    fr_seq *s;
    fr_seq_create(&s, e);
    int t[11] = {0};
    const int *tp = t;
    int n = 11;
    CHECK(fr_engine_forward(e, &s, 1, &tp, &n, NULL, 0) == FR_ERR_ARG, "more tokens than max_seq_len refused");
    CHECK(strstr(fr_last_error(), "maximum sequence length") != NULL, "message: %s", fr_last_error());
    CHECK(fr_seq_len(s) == 0, "nothing appended");
    fr_seq_free(s);
    fr_engine_free(e);
}

/* ------------------------------------------------------------------ the CLI: generate, chat */

static int run_cli(const char *args, const char *stdin_text, char *out, size_t out_n, char *err, size_t err_n) {
    char cmd[4096], so[256], se[256], si[256];
    snprintf(so, sizeof so, "/tmp/frugal_test_infer_cli_%d.out", (int)getpid());
    snprintf(se, sizeof se, "/tmp/frugal_test_infer_cli_%d.err", (int)getpid());
    snprintf(si, sizeof si, "/tmp/frugal_test_infer_cli_%d.in", (int)getpid());
    FILE *f = fopen(si, "wb");
    if (f) { if (stdin_text) fputs(stdin_text, f); fclose(f); }
    snprintf(cmd, sizeof cmd, "%s %s <%s >%s 2>%s", FR_FRUGAL_BIN, args, si, so, se);
    int st = system(cmd);
    int code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    const char *paths[2] = {so, se};
    char *bufs[2] = {out, err};
    size_t ns[2] = {out_n, err_n};
    for (int i = 0; i < 2; i++) {
        bufs[i][0] = 0;
        f = fopen(paths[i], "rb");
        if (f) { size_t n = fread(bufs[i], 1, ns[i] - 1, f); bufs[i][n] = 0; fclose(f); }
        remove(paths[i]);
    }
    remove(si);
    return code;
}

static void test_cli(void) {
    char tdir[1024], dir[256];
    snprintf(tdir, sizeof tdir, "%s/tokenizer/frugal_trained", FR_FIXTURES_DIR);
    snprintf(dir, sizeof dir, "/tmp/frugal_test_infer_cli_model_%d", (int)getpid());
    fr_tokenizer *tok;
    int rc = fr_tokenizer_load(&tok, tdir);
    CHECK(rc == FR_OK, "tokenizer: %s", fr_last_error());
    if (rc != FR_OK) return;
    /* the random config with the tokenizer's vocabulary size */
    char json[4096];
    const char *key = "\"vocab_size\": 200", *at = strstr(RANDOM_CONFIG, key);
    snprintf(json, sizeof json, "%.*s\"vocab_size\": %d%s", (int)(at - RANDOM_CONFIG), RANDOM_CONFIG,
             fr_tokenizer_vocab_size(tok), at + strlen(key));
    rc = save_model_from(json, dir, 80, 1);
    if (rc == FR_OK) rc = fr_tokenizer_save(tok, dir);
    CHECK(rc == FR_OK, "CLI model: %s", fr_last_error());
    fr_tokenizer_free(tok);
    if (rc != FR_OK) return;
    static char out[65536], err[65536], out2[65536], args[2048];

    snprintf(args, sizeof args, "generate --model %s --prompt 'In the beginning' --max-tokens 12 --temperature 0 --ignore-eos", dir);
    int code = run_cli(args, NULL, out, sizeof out, err, sizeof err);
    CHECK(code == 0 && strncmp(out, "In the beginning", 16) == 0 && strlen(out) > 17, "generate: exit %d, out '%s' err '%s'", code, out, err);
    CHECK(strstr(err, "bytes per token") != NULL, "start-up line with the KV bytes per token: %s", err);
    snprintf(args, sizeof args, "generate --model %s --prompt 'In the beginning' --max-tokens 12 --temperature 0 --ignore-eos --speculative", dir);
    code = run_cli(args, NULL, out2, sizeof out2, err, sizeof err);
    CHECK(code == 0 && strcmp(out, out2) == 0, "generate --speculative: exit %d, same text: '%s' vs '%s'", code, out2, out);
    CHECK(strstr(err, "accepted") != NULL, "acceptance reported: %s", err);
    snprintf(args, sizeof args, "generate --model %s --prompt 'In the beginning' --max-tokens 12 --kv fp8 --seed 5 --top-k 5 --top-p 0.9 --min-p 0.01 --repeat-penalty 1.1", dir);
    code = run_cli(args, NULL, out2, sizeof out2, err, sizeof err);
    CHECK(code == 0, "generate with sampling options: exit %d, %s", code, err);

    const char *bad[] = {"--temperature abc", "--temperature -1", "--top-p 0", "--top-p 1.5", "--kv fp16", "--weights q5",
                         "--max-tokens 0", "--seed -3", "--threads 0", "--bogus", "--stop ''"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(args, sizeof args, "generate --model %s --prompt hi %s", dir, bad[i]);
        code = run_cli(args, NULL, out, sizeof out, err, sizeof err);
        CHECK(code == 2 && strlen(err) > 0, "generate %s: exit %d (want 2), err '%s'", bad[i], code, err);
    }
    code = run_cli("generate --model /nonexistent/model --prompt hi", NULL, out, sizeof out, err, sizeof err);
    CHECK(code == 1 && strstr(err, "/nonexistent/model"), "missing model: exit %d, '%s'", code, err);
    snprintf(args, sizeof args, "generate --model %s", dir);
    code = run_cli(args, NULL, out, sizeof out, err, sizeof err);
    CHECK(code == 2 && strstr(err, "--prompt"), "missing --prompt: exit %d '%s'", code, err);
    snprintf(args, sizeof args, "generate --model %s --ctx 4 --prompt 'a prompt that is certainly longer than four tokens'", dir);
    code = run_cli(args, NULL, out, sizeof out, err, sizeof err);
    CHECK(code == 1 && strstr(err, "maximum sequence length"), "prompt > ctx: exit %d '%s'", code, err);
    snprintf(args, sizeof args, "generate --model %s --prompt hi --speculative", g_dense_dir);
    code = run_cli(args, NULL, out, sizeof out, err, sizeof err);
    CHECK(code == 1, "a folder without a tokenizer fails: exit %d '%s'", code, err);

    /* chat: two turns, /reset, /quit; then EOF ends it too */
    snprintf(args, sizeof args, "chat --model %s --system 'Be brief.' --max-tokens 6 --temperature 0", dir);
    code = run_cli(args, "hello\n/reset\nwho are you?\n/quit\nnot read\n", out, sizeof out, err, sizeof err);
    CHECK(code == 0 && strlen(out) > 0 && strstr(err, "forgotten"), "chat: exit %d out '%s' err '%s'", code, out, err);
    code = run_cli(args, "hello\n", out, sizeof out, err, sizeof err);
    CHECK(code == 0 && strlen(out) > 0, "chat until EOF: exit %d", code);
    snprintf(args, sizeof args, "chat --model %s --ctx 8 --max-tokens 4 --temperature 0", dir);
    code = run_cli(args, "this message is far too long for a context of eight tokens, surely\nhi\n", out, sizeof out, err, sizeof err);
    CHECK(code == 0 && strstr(err, "not sent"), "chat, message longer than the context: exit %d '%s'", code, err);
    snprintf(args, sizeof args, "chat --model %s --prompt x", dir);
    CHECK(run_cli(args, "", out, sizeof out, err, sizeof err) == 2, "chat has no --prompt");
    printf("CLI: generate (greedy = speculative text, sampling, %zu bad flag values -> exit 2, missing model / long prompt -> exit 1), chat\n",
           sizeof bad / sizeof bad[0]);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) printf("note: could not remove %s\n", dir);
}

int main(void) {
    test_number_formats();
    test_sampler();
    test_sampler_vs_reference();
    test_fixtures_vs_training();
    if (make_random_models() == FR_OK) {
        test_random_model_vs_training();
        test_kv_bytes();
        test_from_model();
        test_weight_types();
        test_thread_count_independence();
        test_truncate_and_chunks();
        test_blocked_attention();
        test_decode_rows_paths();
        test_batched_forward();
        test_speculative();
        test_bad_input();
        test_cli();
    }
    test_generate_vs_transformers();
    test_stop_strings();
    test_padded_vocab();
    const char *dirs[4] = {g_random_dir, g_dense_dir, g_oracle_dir, g_wide_dir};
    for (int i = 0; i < 4; i++) {
        char cmd[512];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dirs[i]);
        if (dirs[i][0] && system(cmd) != 0) printf("note: could not remove %s\n", dirs[i]);
    }
    return fr_test_finish("test_infer");
}
