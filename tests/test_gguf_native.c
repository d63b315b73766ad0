/*
 * test_gguf_native.c — a GGUF run as stored (src/infer/infer.c engine_load_gguf,
 * formats/qmatrix.c fr_qmatrix_from_ggml): no import through FP32.
 *
 *  - the rearrangement of ggml blocks into the engine's row layouts changes no value: every
 *    value of a Q8_0, Q4_0 and Q4_1 matrix of random blocks (scales from subnormal to large,
 *    Q8_0 quants including -128) dequantized by the engine (fr_qmatrix_row_f32) equals
 *    fr_ggml_dequantize's (==: a zero may change sign) (which tools/check_gguf.py ties to the gguf
 *    package: its quantizer's bytes and its dequantizer); F32 and BF16 are used in place
 *    (the matrix points into the tensor's bytes);
 *  - the engine of tests/fixtures/hf_export exported to Q8_0 runs its matrices as Q8_0
 *    (fr_engine_weight_type) and its logits equal, bit for bit, those of an engine built
 *    from the same GGUF imported to FP32 and quantized to Q8_0 again, whose every block
 *    comes back unchanged (a block whose largest |q| is 127 re-quantizes to itself; the
 *    test counts the blocks where that does not hold and requires none); the Q4_0 export
 *    runs as Q4_1 (m = -8 d) and, with FP32 activations (fr_qmatmul_set_int8_act(0): the
 *    weights dequantized in registers), its logits match the FP32 import's within 1e-4
 *    (summation order only);
 *  - a forced --weights (f32) converts through FP32 and equals the import's engine exactly;
 *  - `frugal quantize` and `frugal convert --to gguf` of one model in each common type give,
 *    each run as stored, the same logits bit for bit (test_folder_equals_gguf);
 *  - a folder of `frugal quantize` (every --type) of a model with an MTP module gives an engine
 *    with that module, its matrices in their stored format, and speculative greedy decoding
 *    equal to plain greedy (test_folder_mtp, which states its logit checks).
 */
#define _GNU_SOURCE
#include "frugal.h"
#include "core/internal.h"
#include "formats/gguf.h"
#include "formats/qmatrix.h"
#include "cpu/qmatmul.h"
#include "infer/engine.h" /* the engine's matrices, checked below */
#include "infer/infer_internal.h"
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FIXTURE FR_FIXTURES_DIR "/hf_export"

static uint64_t g_rng = 88172645463325252ull;
static uint32_t rnd(void) {
    g_rng ^= g_rng << 13, g_rng ^= g_rng >> 7, g_rng ^= g_rng << 17;
    return (uint32_t)(g_rng >> 16);
}

/* a random finite fp16 scale: exponent field 0 (subnormal) .. 24 (~ 512), random sign */
static uint16_t rnd_scale(void) {
    const uint16_t e = (uint16_t)(rnd() % 25), m = (uint16_t)(rnd() & 0x3ff);
    return (uint16_t)((rnd() & 1 ? 0x8000u : 0) | (uint16_t)(e << 10) | m);
}

static void test_relayout(int type, int rows, int cols) {
    const size_t bb = fr_ggml_block_bytes(type), nb = (size_t)rows * cols / 32;
    unsigned char *src = malloc(nb * bb);
    for (size_t i = 0; i < nb * bb; i++) src[i] = (unsigned char)rnd();
    for (size_t b = 0; b < nb; b++) { /* scales (and Q4_1 minima) finite */
        uint16_t d = rnd_scale();
        memcpy(src + b * bb, &d, 2);
        if (type == FR_GGML_Q4_1) {
            uint16_t m = rnd_scale();
            memcpy(src + b * bb + 2, &m, 2);
        }
    }
    if (type == FR_GGML_Q8_0) src[2] = 0x80; /* a -128 quant */
    float *want = malloc((size_t)rows * cols * sizeof(float)), *got = malloc((size_t)cols * sizeof(float));
    CHECK(fr_ggml_dequantize(type, src, want, (size_t)rows * cols) == FR_OK, "dequantize %s", fr_ggml_type_name(type));
    fr_qmatrix m;
    const int rc = fr_qmatrix_from_ggml(&m, type, src, rows, cols, -1);
    CHECK(rc == FR_OK, "%s: %s", fr_ggml_type_name(type), fr_last_error());
    if (rc == FR_OK) {
        const fr_qtype expect = type == FR_GGML_Q8_0 ? FR_QT_Q8_0 : FR_QT_Q4_1;
        CHECK(m.type == expect && m.owned, "%s becomes %s", fr_ggml_type_name(type), fr_qtype_name(m.type));
        /* equal values; a zero's sign may differ (Q4_0's (8 - 8) d is -0 for a negative d, the
         * Q4_1 form d 8 + (-8 d) is +0), which no product can tell apart */
        long bad = 0;
        for (int r = 0; r < rows; r++) {
            fr_qmatrix_row_f32(&m, r, got);
            for (int c = 0; c < cols; c++) bad += !(got[c] == want[(size_t)r * cols + c]);
        }
        CHECK(bad == 0, "%s: %ld of %d values differ from ggml's dequantization", fr_ggml_type_name(type), bad, rows * cols);
        printf("%s %d x %d random blocks -> %s: %ld of %d values differ from ggml's dequantization\n",
               fr_ggml_type_name(type), rows, cols, fr_qtype_name(m.type), bad, rows * cols);
        fr_qmatrix_free(&m);
    }
    free(src), free(want), free(got);
}

static void test_in_place(void) {
    float w[64];
    for (int i = 0; i < 64; i++) w[i] = (float)i - 20.5f;
    fr_qmatrix m;
    CHECK(fr_qmatrix_from_ggml(&m, FR_GGML_F32, w, 2, 32, -1) == FR_OK && m.data == (void *)w && !m.owned,
          "F32 is used in place");
    fr_qmatrix_free(&m);
    uint16_t b[64];
    CHECK(fr_ggml_quantize(FR_GGML_BF16, w, b, 64) == FR_OK && fr_qmatrix_from_ggml(&m, FR_GGML_BF16, b, 2, 32, -1) == FR_OK &&
              m.data == (void *)b && m.type == FR_QT_BF16,
          "BF16 is used in place");
    fr_qmatrix_free(&m);
    CHECK(fr_qmatrix_from_ggml(&m, 12345, w, 2, 32, -1) == FR_ERR_UNSUPPORTED, "an unknown type is refused");
}

/* last-row logits of a prompt through an engine */
static int logits_of(fr_engine *e, const int *ids, int T, float *out) {
    fr_seq *s = NULL;
    int rc = fr_seq_create(&s, e);
    if (rc == FR_OK) rc = fr_engine_forward(e, &s, 1, &ids, &T, out, 1);
    fr_seq_free(s);
    return rc;
}


static void test_engine(int type, const char *dir) {
    char path[512];
    snprintf(path, sizeof path, "%s/m-%s.gguf", dir, fr_ggml_type_name(type));
    CHECK(fr_gguf_export(FIXTURE, path, type, NULL) == FR_OK, "export %s: %s", fr_ggml_type_name(type), fr_last_error());
    fr_engine *native = NULL, *ref = NULL, *forced = NULL;
    fr_model *imp = NULL;
    CHECK(fr_engine_load(&native, path, NULL) == FR_OK, "native %s: %s", fr_ggml_type_name(type), fr_last_error());
    CHECK(fr_model_load_gguf(&imp, path) == FR_OK, "import: %s", fr_last_error());
    fr_engine_options o;
    fr_engine_options_default(&o);
    o.weight_type = type == FR_GGML_Q8_0 ? FR_QT_Q8_0 : FR_QT_F32;
    CHECK(imp && fr_engine_from_model(&ref, imp, &o) == FR_OK, "reference engine: %s", fr_last_error());
    fr_engine_options_default(&o);
    o.weight_type = FR_QT_F32;
    CHECK(fr_engine_load(&forced, path, &o) == FR_OK, "forced f32: %s", fr_last_error());
    if (native && ref && forced) {
        const int want = type == FR_GGML_Q8_0 ? FR_QT_Q8_0 : FR_QT_Q4_1;
        CHECK(fr_engine_weight_type(native) == want, "%s runs as %s", fr_ggml_type_name(type),
              fr_weight_type_name(fr_engine_weight_type(native)));
        /* the embedding table is read in the file's type, in place (the logits below check its rows) */
        const fr_gguf_tensor *emb = fr_gguf_find_tensor(&native->gguf, "token_embd.weight");
        CHECK(!native->embed && native->embed_rows && emb && native->embed_type == (int)emb->type,
              "%s: the embedding is read in place, not decoded into memory of its own", fr_ggml_type_name(type));
        const int V = fr_engine_config(native)->vocab_size, T = 12;
        int ids[12];
        for (int i = 0; i < T; i++) ids[i] = (int)(rnd() % (uint32_t)V);
        float *a = malloc((size_t)T * V * sizeof(float)), *b = malloc((size_t)T * V * sizeof(float));
        float *f = malloc((size_t)T * V * sizeof(float));
        CHECK(logits_of(native, ids, T, a) == FR_OK && logits_of(ref, ids, T, b) == FR_OK &&
                  logits_of(forced, ids, T, f) == FR_OK,
              "forward: %s", fr_last_error());
        const double err = fr_rel_err(a, b, (size_t)T * V);
        if (type == FR_GGML_Q8_0) {
            CHECK(memcmp(a, b, (size_t)T * V * sizeof(float)) == 0,
                  "Q8_0 run as stored differs from the re-quantized import (relative %.3g)", err);
            printf("Q8_0 GGUF as stored: logits equal bit for bit to the imported model quantized to Q8_0 again\n");
        } else {
            /* the same weights: with FP32 activations the products are x W^T up to summation order */
            fr_qmatmul_set_int8_act(0);
            float *c = malloc((size_t)T * V * sizeof(float));
            CHECK(logits_of(native, ids, T, c) == FR_OK, "forward: %s", fr_last_error());
            fr_qmatmul_set_int8_act(1);
            const double e32 = fr_rel_err(c, b, (size_t)T * V);
            CHECK(e32 <= 1e-4, "Q4_0 run as Q4_1 with FP32 activations: relative logit error %.3g vs the FP32 import "
                  "(tol 1e-4)", e32);
            printf("Q4_0 GGUF as stored (Q4_1 layout): relative logit error vs the FP32 import %.3g with FP32 "
                   "activations (tol 1e-4), %.3g with int8 activations (the default: their rounding, on this tiny random model)\n",
                   e32, err);
            free(c);
        }
        /* forced f32: the import's FP32 engine (o.weight_type f32 for Q4_0's reference) */
        if (type != FR_GGML_Q8_0)
            CHECK(memcmp(f, b, (size_t)T * V * sizeof(float)) == 0, "--weights f32 on a GGUF differs from the import");
        free(a), free(b), free(f);
    }
    fr_engine_free(native);
    fr_engine_free(ref);
    fr_engine_free(forced);
    fr_model_free(imp);
    unlink(path);
}

/* ------------------------------------------------------------------ K formats
 * A random model whose matrices are K-sized (hidden, q_lora, kv_lora, heads x v_head,
 * intermediate sizes multiples of 256; qk_nope 64, so attn_k_b falls back to Q8_0) exported
 * to Q4_K_M, Q5_K and Q6_K: run as stored (a 6-token prefill, then 4 decode steps), with
 * FP32 activations the logits equal the FP32
 * import's within 1e-4 (the same weights, summation order only); with the default int8
 * activations within 1e-1 (measured 2-6e-2 on this random model: Q4_K / Q5_K's d sc q terms
 * are up to twice |w|, the minimum taking the rest exactly, which doubles the activation
 * rounding's effect; each product's bound is checked in test_kquant). */
static const char *KCFG =
    "{\"architectures\": [\"DeepseekV3ForCausalLM\"], \"model_type\": \"deepseek_v3\", \"vocab_size\": 1000,"
    " \"hidden_size\": 256, \"intermediate_size\": 512, \"moe_intermediate_size\": 256, \"num_hidden_layers\": 3,"
    " \"num_attention_heads\": 4, \"num_key_value_heads\": 4, \"q_lora_rank\": 256, \"kv_lora_rank\": 256,"
    " \"qk_nope_head_dim\": 64, \"qk_rope_head_dim\": 32, \"v_head_dim\": 64, \"n_routed_experts\": 0,"
    " \"n_shared_experts\": 0, \"num_experts_per_tok\": 0, \"first_k_dense_replace\": 3,"
    " \"num_nextn_predict_layers\": 0, \"max_position_embeddings\": 256, \"rope_theta\": 10000.0,"
    " \"rope_interleave\": true, \"rms_norm_eps\": 1e-6, \"tie_word_embeddings\": false,"
    " \"initializer_range\": 0.05, \"bos_token_id\": 0, \"eos_token_id\": 1}";

static void test_k_formats(const char *dir) {
    char mdir[512], path[512];
    snprintf(mdir, sizeof mdir, "%s/kmodel", dir);
    fr_config cfg;
    fr_model *m = NULL;
    int rc = fr_config_parse(&cfg, KCFG, strlen(KCFG));
    if (rc == FR_OK) rc = fr_model_create(&m, &cfg, 9);
    if (rc == FR_OK) rc = fr_model_save(m, mdir);
    fr_model_free(m);
    char a[600], b[600];
    const char *tok[] = {"tokenizer.json", "tokenizer_config.json"};
    for (int i = 0; i < 2 && rc == FR_OK; i++) {
        snprintf(a, sizeof a, "%s/%s", FIXTURE, tok[i]);
        snprintf(b, sizeof b, "%s/%s", mdir, tok[i]);
        rc = fr_copy_file(a, b);
    }
    CHECK(rc == FR_OK, "K model: %s", fr_last_error());
    if (rc != FR_OK) return;
    const int types[3] = {FR_GGUF_MIX_Q4_K_M, FR_GGML_Q5_K, FR_GGML_Q6_K};
    const int expect[3] = {FR_QT_Q4_K, FR_QT_Q5_K, FR_QT_Q6_K};
    for (int k = 0; k < 3; k++) {
        snprintf(path, sizeof path, "%s/k-%s.gguf", dir, fr_gguf_export_type_name(types[k]));
        fr_gguf_export_stats st;
        CHECK(fr_gguf_export(mdir, path, types[k], &st) == FR_OK, "export %s: %s", fr_gguf_export_type_name(types[k]),
              fr_last_error());
        fr_engine *native = NULL, *ref = NULL;
        fr_model *imp = NULL;
        fr_engine_options o;
        fr_engine_options_default(&o);
        o.weight_type = FR_QT_F32;
        CHECK(fr_engine_load(&native, path, NULL) == FR_OK, "native: %s", fr_last_error());
        CHECK(fr_model_load_gguf(&imp, path) == FR_OK && fr_engine_from_model(&ref, imp, &o) == FR_OK, "import: %s",
              fr_last_error());
        if (native && ref) {
            CHECK(fr_engine_weight_type(native) == expect[k], "%s runs as %s", fr_gguf_export_type_name(types[k]),
                  fr_weight_type_name(fr_engine_weight_type(native)));
            const int V = 1000, T = 10;
            int ids[10];
            for (int i = 0; i < T; i++) ids[i] = (int)(rnd() % (uint32_t)V);
            float *x = malloc((size_t)T * V * sizeof(float)), *y = malloc((size_t)T * V * sizeof(float));
            float *z = malloc((size_t)T * V * sizeof(float));
            fr_qmatmul_set_int8_act(0);
            int r1 = fr_test_engine_logits(native, ids, T, 6, x);
            fr_qmatmul_set_int8_act(1);
            int r2 = fr_test_engine_logits(native, ids, T, 6, z), r3 = fr_test_engine_logits(ref, ids, T, 6, y);
            CHECK(r1 == FR_OK && r2 == FR_OK && r3 == FR_OK, "forward: %s", fr_last_error());
            const double e32 = fr_rel_err(x, y, (size_t)T * V), e8 = fr_rel_err(z, y, (size_t)T * V);
            CHECK(e32 <= 1e-4 && e8 <= 1e-1, "%s as stored: relative logit error vs the FP32 import %.3g (FP32 activations, "
                  "tol 1e-4), %.3g (int8, tol 1e-1)", fr_gguf_export_type_name(types[k]), e32, e8);
            printf("%-6s GGUF (%d tensors fell back to Q8_0) as stored: logits vs the FP32 import %.2e with FP32 activations "
                   "(tol 1e-4), %.2e with int8 (tol 1e-1)\n", fr_gguf_export_type_name(types[k]), st.n_fallback_q8, e32, e8);
            free(x), free(y), free(z);
        }
        fr_engine_free(native);
        fr_engine_free(ref);
        fr_model_free(imp);
        unlink(path);
    }
    /* `frugal quantize --type q6_k`: a folder of ggml's blocks ("<base>.q6_k"), used as stored by
     * the engine. Its q_a_proj blocks are our quantizer's output for the FP32 source (the
     * dequantized model holds exactly their values); the embedding and the head are stored in
     * Q6_K too (the GGUF's token_embd and output), kv_b_proj stays FP32 (the engine splits it
     * as the GGUF's attn_k_b / attn_v_b: test_folder_equals_gguf checks the logits). */
    char qdir[600];
    snprintf(qdir, sizeof qdir, "%s/kmodel-q6k", dir);
    CHECK(fr_quantize_model(mdir, qdir, "q6_k", NULL, NULL) == FR_OK, "quantize q6_k: %s", fr_last_error());
    fr_model *src = NULL, *deq = NULL;
    fr_engine *qe = NULL;
    CHECK(fr_model_load(&src, mdir) == FR_OK && fr_model_load_dequantized(&deq, qdir) == FR_OK, "models: %s",
          fr_last_error());
    if (src && deq) {
        size_t n = 0;
        const char *nm = "model.layers.1.self_attn.q_a_proj.weight";
        const float *w = fr_model_param(src, nm, &n), *wd = fr_model_param(deq, nm, NULL);
        fr_qmatrix q;
        int same = fr_qmatrix_from_f32(&q, FR_QT_Q6_K, w, 256, 256) == FR_OK;
        float *row = malloc(256 * sizeof(float));
        for (int r = 0; same && r < 256; r++) {
            fr_qmatrix_row_f32(&q, r, row);
            same = memcmp(row, wd + (size_t)r * 256, 256 * sizeof(float)) == 0;
        }
        CHECK(same, "q6_k folder: the dequantized %s differs from our quantizer's blocks", nm);
        fr_qmatrix_free(&q);
        free(row);
    }
    fr_st_set qs;
    if (fr_st_set_open_dir(&qs, qdir) == FR_OK) {
        CHECK(fr_qmatrix_stored_type(&qs, "model.embed_tokens.weight") == FR_QT_Q6_K &&
                  fr_qmatrix_stored_type(&qs, "lm_head.weight") == FR_QT_Q6_K &&
                  fr_qmatrix_stored_type(&qs, "model.layers.0.self_attn.kv_a_proj_with_mqa.weight") == FR_QT_Q6_K &&
                  fr_qmatrix_stored_type(&qs, "model.layers.0.self_attn.kv_b_proj.weight") == FR_QT_F32,
              "q6_k folder: embedding, head and kv_a in q6_k, kv_b_proj FP32");
        fr_st_set_close(&qs);
    } else CHECK(0, "open %s: %s", qdir, fr_last_error());
    CHECK(fr_engine_load(&qe, qdir, NULL) == FR_OK && fr_engine_weight_type(qe) == FR_QT_Q6_K, "the q6_k folder runs as %s: %s",
          qe ? fr_weight_type_name(fr_engine_weight_type(qe)) : "-", fr_last_error());
    printf("q6_k folder (frugal quantize): blocks = our quantizer's, embedding / head / kv_a in q6_k, kv_b_proj FP32, "
           "runs as q6_k\n");
    fr_engine_free(qe);
    fr_model_free(src), fr_model_free(deq);
    /* --type q4_k_m: Q6_K down projections on the layers fr_kmix_more_bits names (of 3: 0 and
     * 2), Q4_K elsewhere, and the engine keeps each matrix's own format */
    char mdir2[700];
    snprintf(mdir2, sizeof mdir2, "%s/kmodel-q4km", dir);
    fr_engine *me = NULL;
    CHECK(fr_quantize_model(mdir, mdir2, "q4_k_m", NULL, NULL) == FR_OK && fr_engine_load(&me, mdir2, NULL) == FR_OK,
          "q4_k_m folder: %s", fr_last_error());
    if (me) {
        const int want[3] = {FR_QT_Q6_K, FR_QT_Q4_K, FR_QT_Q6_K};
        int ok = fr_engine_weight_type(me) == FR_QT_Q4_K;
        for (int l = 0; l < 3; l++) ok &= me->layers[l].mlp_down.type == (fr_qtype)want[l] && me->layers[l].o.type == FR_QT_Q4_K;
        CHECK(ok, "q4_k_m folder: down projections %s %s %s, o_proj %s", fr_qtype_name(me->layers[0].mlp_down.type),
              fr_qtype_name(me->layers[1].mlp_down.type), fr_qtype_name(me->layers[2].mlp_down.type),
              fr_qtype_name(me->layers[0].o.type));
        printf("q4_k_m folder: down projections q6_k / q4_k / q6_k by layer, the rest q4_k, each run as stored\n");
    }
    fr_engine_free(me);
    char cmd[2100];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' '%s' '%s'", mdir, qdir, mdir2);
    if (system(cmd) != 0) printf("could not remove %s\n", mdir);
}

/* ------------------------------------------------------------------ folder = GGUF
 * `frugal quantize --type T` and `frugal convert --to gguf --type T` of one FP32 model hold the
 * same blocks (the export's per-tensor rule, fr_gguf_matrix_type, and ggml's encoders), so the
 * engine gives the folder and the GGUF, each run as stored, the same logits bit for bit: a
 * 6-token prefill, then 4 decode steps. The model has MoE layers, K-sized matrices and some
 * that are not (qk_nope 64: attn_k_b takes Q8_0 under a K type; expert and shared widths 128:
 * their down projections too), so the mixes' Q6_K layers and the fallbacks are both crossed.
 * A tied variant (the head quantized from the FP32 embedding, as the GGUF's output is) runs
 * for two types. "f32" is the control: the FP32 folder itself against the F32 GGUF. */
static const char *MCFG =
    "{\"architectures\": [\"DeepseekV3ForCausalLM\"], \"model_type\": \"deepseek_v3\", \"vocab_size\": 1000,"
    " \"hidden_size\": 256, \"intermediate_size\": 512, \"moe_intermediate_size\": 128, \"num_hidden_layers\": 3,"
    " \"num_attention_heads\": 4, \"num_key_value_heads\": 4, \"q_lora_rank\": 256, \"kv_lora_rank\": 256,"
    " \"qk_nope_head_dim\": 64, \"qk_rope_head_dim\": 32, \"v_head_dim\": 64, \"n_routed_experts\": 4,"
    " \"n_shared_experts\": 1, \"num_experts_per_tok\": 2, \"first_k_dense_replace\": 1, \"moe_layer_freq\": 1,"
    " \"n_group\": 1, \"topk_group\": 1, \"norm_topk_prob\": true, \"routed_scaling_factor\": 2.5,"
    " \"num_nextn_predict_layers\": %d, \"max_position_embeddings\": 256, \"rope_theta\": 10000.0,"
    " \"rope_interleave\": true, \"rms_norm_eps\": 1e-6, \"tie_word_embeddings\": %s,"
    " \"initializer_range\": 0.05, \"bos_token_id\": 0, \"eos_token_id\": 1}";

/* nextn 1: with MTP module 1 (layer 3, a MoE block), made to draft well as test_infer's
 * oracle model: main blocks damped (x0.01 on o_proj and the down projections) so the next
 * token mostly follows the current one; eh_proj = [I | 0.1 W_h] so the MTP block starts from
 * RMSNorm(Emb(t_{i+1})) plus a little of the main hidden row; its o_proj and down projections
 * x0.1 (not zeroed: each of its matrices still counts in its logits). */
static void make_drafting(fr_model *m, const fr_config *c) {
    const int L = c->num_hidden_layers, H = c->hidden_size;
    char name[160];
    size_t n;
    for (int l = 0; l <= L; l++) {
        const char *scaled[] = {"self_attn.o_proj", "mlp.down_proj", "mlp.shared_experts.down_proj"};
        for (int k = 0; k < 3 + c->n_routed_experts; k++) {
            if (k < 3) snprintf(name, sizeof name, "model.layers.%d.%s.weight", l, scaled[k]);
            else snprintf(name, sizeof name, "model.layers.%d.mlp.experts.%d.down_proj.weight", l, k - 3);
            float *w = fr_model_param(m, name, &n);
            for (size_t i = 0; w && i < n; i++) w[i] *= l < L ? 0.01f : 0.1f;
        }
    }
    snprintf(name, sizeof name, "model.layers.%d.eh_proj.weight", L);
    float *eh = fr_model_param(m, name, &n);
    for (size_t i = 0; eh && i < n; i++) eh[i] = i % (2 * H) >= (size_t)H ? 0.1f * eh[i] : i / (2 * H) == i % (2 * H) ? 1.0f : 0.0f;
}

static int make_model(const char *mdir, int tied, uint64_t seed, int nextn) {
    char text[2048];
    snprintf(text, sizeof text, MCFG, nextn, tied ? "true" : "false");
    fr_config cfg;
    fr_model *m = NULL;
    int rc = fr_config_parse(&cfg, text, strlen(text));
    if (rc == FR_OK) rc = fr_model_create(&m, &cfg, seed);
    if (rc == FR_OK && nextn) make_drafting(m, &cfg);
    if (rc == FR_OK) rc = fr_model_save(m, mdir);
    fr_model_free(m);
    const char *tok[] = {"tokenizer.json", "tokenizer_config.json"};
    for (int i = 0; i < 2 && rc == FR_OK; i++) {
        char a[700], b[700];
        snprintf(a, sizeof a, "%s/%s", FIXTURE, tok[i]);
        snprintf(b, sizeof b, "%s/%s", mdir, tok[i]);
        rc = fr_copy_file(a, b);
    }
    return rc;
}

static void test_folder_equals_gguf(const char *dir) {
    static const char *const types[] = {"f32", "bf16", "q8_0", "q4_0", "q4_k", "q5_k", "q6_k", "q4_k_m", "q5_k_m"};
    const int n_types = (int)(sizeof types / sizeof types[0]);
    for (int tied = 0; tied < 2; tied++) {
        char mdir[600];
        snprintf(mdir, sizeof mdir, "%s/fmodel-%d", dir, tied);
        const int rc = make_model(mdir, tied, 21 + (uint64_t)tied, 0);
        CHECK(rc == FR_OK, "model: %s", fr_last_error());
        if (rc != FR_OK) return;
        for (int k = 0; k < n_types; k++) {
            const char *t = types[k];
            if (tied && strcmp(t, "q8_0") && strcmp(t, "q4_k_m")) continue;
            char qdir[700], path[700];
            snprintf(qdir, sizeof qdir, "%s-%s", mdir, t);
            snprintf(path, sizeof path, "%s-%s.gguf", mdir, t);
            const int control = !strcmp(t, "f32");
            CHECK(fr_gguf_export(mdir, path, fr_gguf_export_type_from_name(t), NULL) == FR_OK, "export %s: %s", t,
                  fr_last_error());
            const int qrc = control ? FR_OK : fr_quantize_model(mdir, qdir, t, NULL, NULL);
            CHECK(qrc == FR_OK, "quantize %s: %s", t, fr_last_error());
            fr_engine *fe = NULL, *ge = NULL;
            if (qrc == FR_OK)
                CHECK(fr_engine_load(&fe, control ? mdir : qdir, NULL) == FR_OK && fr_engine_load(&ge, path, NULL) == FR_OK,
                      "%s engines: %s", t, fr_last_error());
            if (fe && ge) {
                enum { T = 10, V = 1000 };
                int ids[T];
                for (int i = 0; i < T; i++) ids[i] = (int)(rnd() % V);
                float *a = malloc((size_t)T * V * sizeof(float)), *b = malloc((size_t)T * V * sizeof(float));
                CHECK(fr_test_engine_logits(fe, ids, T, 6, a) == FR_OK && fr_test_engine_logits(ge, ids, T, 6, b) == FR_OK,
                      "%s forward: %s", t, fr_last_error());
                double worst = 0;
                for (size_t i = 0; i < (size_t)T * V; i++) worst = fmax(worst, fabs((double)a[i] - b[i]));
                const int same = memcmp(a, b, (size_t)T * V * sizeof(float)) == 0;
                CHECK(same && fr_engine_weight_type(fe) == fr_engine_weight_type(ge),
                      "%s%s: folder and GGUF logits differ (max abs %.3g; weight types %s / %s)", t, tied ? " tied" : "",
                      worst, fr_weight_type_name(fr_engine_weight_type(fe)), fr_weight_type_name(fr_engine_weight_type(ge)));
                printf("%-6s%s folder vs GGUF, each as stored (%s): logits %s, max abs difference %.3g\n", t,
                       tied ? " (tied)" : "", fr_weight_type_name(fr_engine_weight_type(fe)),
                       same ? "equal bit for bit" : "DIFFER", worst);
                free(a), free(b);
            }
            fr_engine_free(fe), fr_engine_free(ge);
            char cmd[1700];
            snprintf(cmd, sizeof cmd, "rm -rf '%s' '%s'", qdir, path);
            if (system(cmd) != 0) printf("could not remove %s\n", qdir);
        }
        char cmd[700];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", mdir);
        if (system(cmd) != 0) printf("could not remove %s\n", mdir);
    }
}

/* ------------------------------------------------------------------ MTP of a quantized folder */

/* MTP logits of an engine over ids[0..T): a P-token prefill and MTP module 1 over it (row j
 * pairs h_j with ids[j+1]), then for t = P .. T-2 one decoded token and one MTP row (h_t with
 * ids[t+1]); each MTP call's last-row logits go to out [T - P, V]. */
static int mtp_logits(fr_engine *e, const int *ids, int T, int P, float *out) {
    const int V = fr_engine_config(e)->vocab_size;
    float *scratch = malloc((size_t)V * sizeof(float));
    fr_seq *s = NULL;
    int rc = scratch ? fr_seq_create(&s, e) : FR_ERR_NOMEM;
    int rs[2], n = P, hr[64];
    for (int j = 0; j < P; j++) hr[j] = j;
    const int *tp = ids, *mp = ids + 1;
    if (rc == FR_OK) rc = fr_engine_forward_rows(e, &s, 1, &tp, &n, scratch, 0, rs);
    if (rc == FR_OK) rc = fr_engine_mtp_forward(e, &s, 1, &mp, &n, hr, out, rs);
    for (int t = P; rc == FR_OK && t < T - 1; t++) {
        int one = 1;
        tp = ids + t, mp = ids + t + 1, hr[0] = 0;
        rc = fr_engine_forward_rows(e, &s, 1, &tp, &one, scratch, 0, rs);
        if (rc == FR_OK) rc = fr_engine_mtp_forward(e, &s, 1, &mp, &one, hr, out + (size_t)(t - P + 1) * V, rs);
    }
    fr_seq_free(s);
    free(scratch);
    return rc;
}

/* `frugal quantize --type T` of a model with MTP module 1, for every T: the engine of the folder
 * (as stored) has the module (the folder holds its eh_proj as "<base>.qweight" / "<base>.q4_k"
 * ..., not "<base>.weight"), holds its matrices in their stored formats, and:
 *  - bf16, q4_1: its MTP and main logits equal bit for bit those of an engine of the folder's own
 *    values dequantized to FP32 (fr_model_load_dequantized) run with --weights T: BF16 and our
 *    Q4_1 blocks come back unchanged when quantized again, kv_b_proj is split from FP32 in both.
 *    The GGUF schemes (q8_0 ... q5_k_m) hold the kv_b split, embedding and head to the GGUF's
 *    ggml blocks, which an engine of FP32 weights does not, so no exact reference exists there;
 *  - every T: the MTP logits are finite and their relative error (fr_rel_err) against the FP32
 *    folder run with the same --weights is at most 2 x the main logits' error between the same
 *    engines + 0.01 (measured 0.4-1.4 x: both are that format's rounding on this random model,
 *    the MTP logits through the embedding, eh_proj, one MoE block and the head);
 *  - greedy speculative decoding (48 tokens, most drafts accepted, some rejected) = plain greedy. */
static void test_folder_mtp(const char *dir) {
    static const char *const types[] = {"bf16", "q8_0", "q4_0", "q4_1", "q4_k", "q5_k", "q6_k", "q4_k_m", "q5_k_m"};
    char mdir[600];
    snprintf(mdir, sizeof mdir, "%s/mtpmodel", dir);
    int rc = make_model(mdir, 0, 31, 1);
    CHECK(rc == FR_OK, "MTP model: %s", fr_last_error());
    if (rc != FR_OK) return;
    enum { T = 24, P = 8, V = 1000, R = T - P, L = 3 };
    int ids[T];
    for (int i = 0; i < T; i++) ids[i] = (int)(rnd() % V);
    float *qm = malloc((size_t)R * V * sizeof(float)), *rm = malloc((size_t)R * V * sizeof(float));
    float *ql = malloc((size_t)T * V * sizeof(float)), *rl = malloc((size_t)T * V * sizeof(float));
    for (int k = 0; k < (int)(sizeof types / sizeof types[0]); k++) {
        const char *t = types[k];
        char qdir[700];
        snprintf(qdir, sizeof qdir, "%s-%s", mdir, t);
        CHECK(fr_quantize_model(mdir, qdir, t, NULL, NULL) == FR_OK, "quantize %s: %s", t, fr_last_error());
        fr_engine *qe = NULL, *we = NULL, *de = NULL;
        fr_model *dq = NULL;
        CHECK(fr_engine_load(&qe, qdir, NULL) == FR_OK, "%s folder: %s", t, fr_last_error());
        if (!qe) continue;
        CHECK(fr_engine_mtp_depth(qe) == 1, "%s folder: the engine has no MTP module (depth %d)", t, fr_engine_mtp_depth(qe));
        if (fr_engine_mtp_depth(qe) != 1) {
            fr_engine_free(qe);
            continue;
        }
        /* the MTP block's matrices in their stored format, as the main layers' */
        fr_st_set qs;
        CHECK(fr_st_set_open_dir(&qs, qdir) == FR_OK, "open %s: %s", qdir, fr_last_error());
        const eng_layer *ly = &qe->layers[L];
        const fr_qmatrix *mats[] = {&ly->eh_proj, &ly->q_a, &ly->kv_a, &ly->o, &ly->exp_gate[0], &ly->exp_down[3], &ly->mlp_down};
        static const char *const names[] = {"eh_proj", "self_attn.q_a_proj", "self_attn.kv_a_proj_with_mqa", "self_attn.o_proj",
                                            "mlp.experts.0.gate_proj", "mlp.experts.3.down_proj", "mlp.shared_experts.down_proj"};
        int n_as_stored = 0;
        for (int j = 0; j < 7; j++) {
            char nm[160];
            snprintf(nm, sizeof nm, "model.layers.%d.%s.weight", L, names[j]);
            const int st = fr_qmatrix_stored_type(&qs, nm);
            const int ok = st > FR_QT_F32 && mats[j]->type == (fr_qtype)st;
            CHECK(ok, "%s folder: MTP %s held as %s, stored as %s", t, names[j], fr_qtype_name(mats[j]->type),
                  st >= 0 ? fr_qtype_name((fr_qtype)st) : "(absent)");
            n_as_stored += ok;
        }
        fr_st_set_close(&qs);
        /* logits against the FP32 folder run with the same --weights, and (bf16, q4_1) against the
         * folder's own values dequantized to FP32 run with that --weights */
        fr_engine_options o;
        fr_engine_options_default(&o);
        o.weight_type = fr_engine_weight_type(qe);
        const int exact = !strcmp(t, "bf16") || !strcmp(t, "q4_1");
        CHECK(fr_engine_load(&we, mdir, &o) == FR_OK, "FP32 folder --weights %s: %s", fr_weight_type_name(o.weight_type),
              fr_last_error());
        if (exact)
            CHECK(fr_model_load_dequantized(&dq, qdir) == FR_OK && fr_engine_from_model(&de, dq, &o) == FR_OK,
                  "%s dequantized: %s", t, fr_last_error());
        int r1 = mtp_logits(qe, ids, T, P, qm), r2 = fr_test_engine_logits(qe, ids, T, P, ql);
        CHECK(r1 == FR_OK && r2 == FR_OK, "%s folder forward: %s", t, fr_last_error());
        int finite = 1;
        for (size_t i = 0; i < (size_t)R * V; i++) finite &= isfinite(qm[i]) != 0;
        CHECK(finite, "%s folder: non-finite MTP logits", t);
        if (de) {
            CHECK(mtp_logits(de, ids, T, P, rm) == FR_OK && fr_test_engine_logits(de, ids, T, P, rl) == FR_OK,
                  "%s dequantized forward: %s", t, fr_last_error());
            CHECK(memcmp(qm, rm, (size_t)R * V * sizeof(float)) == 0 && memcmp(ql, rl, (size_t)T * V * sizeof(float)) == 0,
                  "%s folder: MTP / main logits differ from the dequantized folder's at --weights %s (relative %.3g / %.3g)",
                  t, fr_weight_type_name(o.weight_type), fr_rel_err(qm, rm, (size_t)R * V), fr_rel_err(ql, rl, (size_t)T * V));
        }
        double em = -1, el = -1;
        if (we) {
            CHECK(mtp_logits(we, ids, T, P, rm) == FR_OK && fr_test_engine_logits(we, ids, T, P, rl) == FR_OK,
                  "FP32 folder forward: %s", fr_last_error());
            em = fr_rel_err(qm, rm, (size_t)R * V), el = fr_rel_err(ql, rl, (size_t)T * V);
            CHECK(em <= 2 * el + 0.01, "%s folder: MTP logits vs the FP32 folder at --weights %s: relative %.3g, more than "
                  "2 x the main logits' %.3g + 0.01", t, fr_weight_type_name(o.weight_type), em, el);
        }
        /* greedy speculative decoding = plain greedy decoding */
        enum { NP = 12, NT = 48 };
        const int *pp = ids;
        int np = NP, *out[2] = {NULL, NULL}, ol[2] = {0, 0};
        fr_generate_stats gs[2];
        fr_seq *s = NULL;
        rc = fr_seq_create(&s, qe);
        for (int spec = 0; spec < 2 && rc == FR_OK; spec++) {
            fr_generate_options g;
            fr_generate_options_default(&g);
            g.sample.temperature = 0;
            g.max_tokens = NT;
            g.ignore_eos = 1;
            g.speculative = spec;
            rc = fr_generate(qe, NULL, &s, 1, &pp, &np, &g, &out[spec], &ol[spec], &gs[spec]);
        }
        CHECK(rc == FR_OK, "%s folder generate: %s", t, fr_last_error());
        if (rc == FR_OK) {
            CHECK(ol[0] == NT && ol[1] == NT && memcmp(out[0], out[1], NT * sizeof(int)) == 0,
                  "%s folder: speculative greedy output differs from plain greedy", t);
            CHECK(gs[1].drafted > 0 && gs[1].accepted > 0, "%s folder: %ld drafts, %ld accepted", t, gs[1].drafted,
                  gs[1].accepted);
        }
        printf("%-6s folder: MTP module loaded (%d/7 of its matrices as stored, eh_proj %s); MTP logits %s; relative "
               "error vs the FP32 folder at --weights %s: MTP %.3g, main %.3g (tol MTP <= 2 x main + 0.01); speculative "
               "= plain greedy for %d tokens, %ld of %ld drafts accepted\n", t, n_as_stored, fr_qtype_name(ly->eh_proj.type),
               de ? "= the dequantized folder's bit for bit" : "finite", fr_weight_type_name(o.weight_type), em, el, NT,
               rc == FR_OK ? gs[1].accepted : -1L, rc == FR_OK ? gs[1].drafted : -1L);
        free(out[0]), free(out[1]);
        fr_seq_free(s);
        fr_engine_free(qe), fr_engine_free(we), fr_engine_free(de);
        fr_model_free(dq);
        char cmd[800];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", qdir);
        if (system(cmd) != 0) printf("could not remove %s\n", qdir);
    }
    free(qm), free(rm), free(ql), free(rl);
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", mdir);
    if (system(cmd) != 0) printf("could not remove %s\n", mdir);
}

int main(void) {
    test_relayout(FR_GGML_Q8_0, 5, 96);
    test_relayout(FR_GGML_Q4_0, 5, 96);
    test_relayout(FR_GGML_Q4_1, 5, 96);
    test_in_place();
    char dir[] = "/tmp/frugal_gguf_native_XXXXXX";
    CHECK(mkdtemp(dir) != NULL, "temp dir");
    test_engine(FR_GGML_Q8_0, dir);
    test_engine(FR_GGML_Q4_0, dir);
    test_k_formats(dir);
    test_folder_equals_gguf(dir);
    test_folder_mtp(dir);
    rmdir(dir);
    return fr_test_finish("test_gguf_native");
}
