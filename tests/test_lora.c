/*
 * test_lora.c — LoRA adapters (src/model/lora.c) against PEFT and against finite differences.
 *
 *  - Gradients: on a tiny MoE model with adapters on every target (attention, dense MLP,
 *    shared and routed experts) and random nonzero A and B, the 3 largest analytic gradients of
 *    every adapter tensor equal Richardson-extrapolated central differences within
 *    1e-2 |g| + 1e-4 (the tolerance and its reasoning are test_gradcheck.c's); the frozen
 *    base gets no weight gradient (exactly zero).
 *  - PEFT (tests/fixtures/peft, tools/make_peft_fixture.py: peft 0.17.1 on transformers'
 *    DeepseekV3): the fixture's adapter, loaded into frugal's training path (adapters
 *    unmerged) and merged into the weights, gives the logits peft gives within 1e-5 (relative
 *    to the largest logit); so does the rsLoRA adapter; the engine with --adapter within 1e-4
 *    (its absorbed MLA reorders the arithmetic, as in test_infer).
 *  - Round trip: the PEFT adapter read into frugal's adapters and saved again has the same
 *    tensor names, shapes and values bit for bit, and r / lora_alpha / use_rslora.
 *  - Bad input: an unknown target is refused listing the valid names; an adapter of another
 *    rank, or for another model, is refused naming the mismatch.
 */
#include "frugal.h"
#include "testutil.h"

#include "formats/qmatrix.h"
#include "formats/safetensors.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PEFT FR_FIXTURES_DIR "/peft"
#define PEFT_TARGETS "q_a_proj,q_b_proj,kv_a_proj_with_mqa,kv_b_proj,o_proj,mlp,shared_experts,experts"

static void test_gradients(void) {
    const char *json = fr_test_tiny_train_config(1);
    fr_config cfg;
    CHECK(fr_config_parse(&cfg, json, strlen(json)) == FR_OK, "config: %s", fr_last_error());
    fr_model *m = NULL;
    CHECK(fr_model_create(&m, &cfg, 99) == FR_OK, "create: %s", fr_last_error());
    if (!m) return;
    const int n_base = fr_model_num_tensors(m);
    CHECK(fr_model_add_lora(m, 2, 3.0, "all", 0, 5) == FR_OK, "add_lora: %s", fr_last_error());
    const int n_all = fr_model_num_tensors(m);
    CHECK(fr_model_lora_sites(m) * 2 == n_all - n_base, "two tensors per adapted matrix (%d sites, %d tensors)",
          fr_model_lora_sites(m), n_all - n_base);
    fr_rng rng;
    fr_rng_seed(&rng, 17);
    for (int ti = n_base; ti < n_all; ti++) { /* B starts at zero: give both factors values */
        size_t n;
        float *p = fr_model_param(m, fr_model_tensor_info(m, ti, NULL, NULL), &n);
        for (size_t i = 0; i < n; i++) p[i] = (float)(fr_rng_normal(&rng) * 0.3);
    }
    enum { B = 2, T = 7 };
    int tok[B * T], tg[B * T];
    for (int i = 0; i < B * T; i++) tok[i] = (i * 37 + 11) % cfg.vocab_size;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) tg[b * T + t] = t + 1 < T ? tok[b * T + t + 1] : FR_IGNORE_INDEX;
    fr_model_zero_grad(m);
    fr_loss_info li;
    CHECK(fr_model_forward(m, tok, tg, B, T, &li) == FR_OK && fr_model_backward(m) == FR_OK, "pass: %s", fr_last_error());
    /* the frozen base: no weight gradient for its linear layers and the head */
    const char *frozen[] = {"model.layers.0.self_attn.kv_b_proj.weight", "model.layers.1.mlp.experts.3.down_proj.weight",
                            "model.layers.1.mlp.shared_experts.gate_proj.weight", "lm_head.weight",
                            "model.layers.1.mlp.gate.weight"};
    for (int k = 0; k < 5; k++) {
        size_t n = 0;
        const float *g = fr_model_grad(m, frozen[k], &n);
        double mx = 0;
        for (size_t i = 0; g && i < n; i++) mx = fmax(mx, fabs(g[i]));
        CHECK(g && mx == 0, "%s is frozen: gradient max %g", frozen[k], mx);
    }
    const double h = 1e-2;
    int checked = 0, flips = 0;
    double worst = 0;
    for (int ti = n_base; ti < n_all; ti++) {
        const char *name = fr_model_tensor_info(m, ti, NULL, NULL);
        size_t n;
        float *p = fr_model_param(m, name, &n);
        const float *g = fr_model_grad(m, name, &n);
        size_t pick[3]; /* the three largest analytic gradients of this tensor */
        fr_test_top3(g, n, pick);
        for (int r = 0; r < 3 && (size_t)r < n; r++) {
            const size_t i = pick[r];
            const double an = g[i];
            int flip = 0;
            const double rich = fr_test_fd_grad(m, &p[i], tok, tg, B, T, h, &flip);
            if (flip) {
                flips++;
                continue;
            }
            const double err = fabs(rich - an);
            CHECK(err <= 1e-2 * fabs(an) + 1e-4, "%s[%zu]: analytic %.6g finite-diff %.6g", name, i, an, rich);
            if (fabs(an) > 1e-3 && err / fabs(an) > worst) worst = err / fabs(an);
            checked++;
        }
    }
    printf("LoRA gradients: %d elements of %d adapter tensors checked, worst rel err %.2e, %d routing flips skipped\n",
           checked, n_all - n_base, worst, flips);
    CHECK(checked >= 3 * (n_all - n_base) * 9 / 10, "most elements checked (%d, %d flips)", checked, flips);
    fr_model_free(m);
}

/* tensor `name` of the fixture's reference.safetensors as floats (malloc'd) */
static float *reference(const char *name, size_t *n) {
    fr_st_file f;
    if (fr_st_open(&f, PEFT "/reference.safetensors") != FR_OK) return NULL;
    const fr_st_tensor *t = fr_st_find(&f, name);
    float *out = t ? malloc(t->numel * sizeof *out) : NULL;
    if (out && fr_st_to_f32(t, out, t->numel) != FR_OK) free(out), out = NULL;
    if (n && t) *n = t->numel;
    fr_st_close(&f);
    return out;
}

static void check_logits(fr_model *m, const int *ids, int B, int T, const char *ref_name, double tol, const char *what) {
    size_t n = 0;
    float *want = reference(ref_name, &n);
    fr_loss_info li;
    const int rc = fr_model_forward_eval(m, ids, NULL, B, T, &li);
    CHECK(want && rc == FR_OK, "%s: forward %s", what, fr_last_error());
    if (want && rc == FR_OK) {
        const double err = fr_rel_err(fr_model_logits(m), want, n);
        printf("%-44s logits vs peft: rel err %.2e (tolerance %.0e)\n", what, err, tol);
        CHECK(err <= tol, "%s: rel err %.3e > %.0e", what, err, tol);
    }
    free(want);
}

static void test_peft(void) {
    size_t n = 0;
    float *idf = reference("input_ids", &n);
    CHECK(idf && n == 24, "fixture input_ids");
    if (!idf) return;
    int ids[24];
    for (int i = 0; i < 24; i++) ids[i] = (int)idf[i];
    free(idf);
    enum { B = 2, T = 12 };

    fr_model *m = NULL;
    CHECK(fr_model_load(&m, PEFT "/base") == FR_OK, "base: %s", fr_last_error());
    if (!m) return;
    check_logits(m, ids, B, T, "logits_base", 1e-5, "base model");
    /* the training path: adapters as tensors, unmerged */
    CHECK(fr_model_add_lora(m, 4, 8.0, PEFT_TARGETS, 0, 1) == FR_OK, "add_lora: %s", fr_last_error());
    CHECK(fr_model_lora_sites(m) == 72, "72 adapted matrices, as peft wraps (%d)", fr_model_lora_sites(m));
    CHECK(fr_model_lora_load(m, PEFT "/adapter") == FR_OK, "lora_load: %s", fr_last_error());
    check_logits(m, ids, B, T, "logits_lora", 1e-5, "adapter, unmerged (training path)");

    /* saved again: PEFT's file, tensor for tensor */
    char dir[] = "/tmp/frugal_lora_XXXXXX";
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    char out[128];
    snprintf(out, sizeof out, "%s/adapter", dir);
    CHECK(fr_model_lora_save(m, out, "base") == FR_OK, "lora_save: %s", fr_last_error());
    fr_st_file a, b;
    char path[256];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", out);
    const int ok = fr_st_open(&a, path) == FR_OK && fr_st_open(&b, PEFT "/adapter/adapter_model.safetensors") == FR_OK;
    CHECK(ok, "open both adapter files");
    if (ok) {
        CHECK(a.n_tensors == b.n_tensors, "tensor count %d vs peft's %d", a.n_tensors, b.n_tensors);
        int same = 0;
        for (int i = 0; i < b.n_tensors; i++) {
            const fr_st_tensor *x = fr_st_find(&a, b.tensors[i].name), *y = &b.tensors[i];
            same += x && x->dtype == y->dtype && x->ndim == 2 && x->shape[0] == y->shape[0] && x->shape[1] == y->shape[1] &&
                    x->nbytes == y->nbytes && !memcmp(x->data, y->data, y->nbytes);
        }
        CHECK(same == b.n_tensors, "%d of %d tensors equal peft's in name, shape and bytes", same, b.n_tensors);
        fr_st_close(&a), fr_st_close(&b);
    }
    snprintf(path, sizeof path, "%s/adapter_config.json", out);
    char *text = fr_test_read_file(path, NULL);
    cJSON *j = text ? cJSON_Parse(text) : NULL;
    CHECK(j && cJSON_GetObjectItem(j, "r")->valueint == 4 && cJSON_GetObjectItem(j, "lora_alpha")->valuedouble == 8.0 &&
              cJSON_IsFalse(cJSON_GetObjectItem(j, "use_rslora")) &&
              !strcmp(cJSON_GetObjectItem(j, "peft_type")->valuestring, "LORA"),
          "adapter_config.json: r 4, lora_alpha 8, LORA");
    cJSON_Delete(j);
    free(text);

    /* an adapter of another rank does not load into these adapters */
    CHECK(fr_model_lora_load(m, PEFT "/adapter_rslora") != FR_OK && strstr(fr_last_error(), "r 2"),
          "rank mismatch refused: %s", fr_last_error());
    fr_model_free(m);

    /* merged into the weights */
    const char *merged[2][3] = {{"/adapter", "logits_lora", "adapter merged"},
                                {"/adapter_rslora", "logits_rslora", "rsLoRA adapter merged (alpha / sqrt r)"}};
    for (int k = 0; k < 2; k++) {
        m = NULL;
        snprintf(path, sizeof path, "%s%s", PEFT, merged[k][0]);
        CHECK(fr_model_load(&m, PEFT "/base") == FR_OK && fr_model_merge_adapter(m, path) == FR_OK, "merge %s: %s",
              merged[k][0], fr_last_error());
        if (m) check_logits(m, ids, B, T, merged[k][1], 1e-5, merged[k][2]);
        fr_model_free(m);
    }

    /* the engine with the adapter (generate / chat / serve --adapter) */
    fr_engine_options o;
    fr_engine_options_default(&o);
    o.adapter = PEFT "/adapter";
    fr_engine *e = NULL;
    CHECK(fr_engine_load(&e, PEFT "/base", &o) == FR_OK, "engine with adapter: %s", fr_last_error());
    float *want = reference("logits_lora", &n), *got = malloc(T * 128 * sizeof *got);
    if (e && want && got) {
        double worst = 0;
        for (int b = 0; b < B; b++) {
            CHECK(fr_test_engine_logits(e, ids + b * T, T, 5, got) == FR_OK, "engine logits: %s", fr_last_error());
            const double err = fr_rel_err(got, want + (size_t)b * T * 128, (size_t)T * 128);
            worst = err > worst ? err : worst;
        }
        printf("%-44s logits vs peft: rel err %.2e (tolerance 1e-04)\n", "engine --adapter (absorbed MLA)", worst);
        CHECK(worst <= 1e-4, "engine --adapter: rel err %.3e", worst);
    }
    free(want), free(got);
    fr_engine_free(e);
    fr_test_rm_rf(dir);
}

/* FRUGAL_PEFT_OUT=DIR: an adapter frugal writes (random A and B, rank 3, rsLoRA off, targets
 * "all") and its logits, for peft to check: tools/make_peft_fixture.py --check-adapter
 * DIR/adapter --check-logits DIR/logits.safetensors (docs/finetune.md). */
static void write_for_peft(const char *out) {
    fr_model *m = NULL;
    CHECK(fr_model_load(&m, PEFT "/base") == FR_OK && fr_model_add_lora(m, 3, 5.0, "all", 0, 3) == FR_OK, "model: %s",
          fr_last_error());
    if (!m) return;
    fr_rng rng;
    fr_rng_seed(&rng, 23);
    for (int ti = 0; ti < fr_model_num_tensors(m); ti++) {
        const char *name = fr_model_tensor_info(m, ti, NULL, NULL);
        if (strncmp(name, "base_model.", 11) != 0) continue;
        size_t n;
        float *p = fr_model_param(m, name, &n);
        for (size_t i = 0; i < n; i++) p[i] = (float)(fr_rng_normal(&rng) * 0.1);
    }
    enum { B = 2, T = 12 };
    int ids[B * T];
    for (int i = 0; i < B * T; i++) ids[i] = (i * 29 + 5) % 128;
    char path[512];
    snprintf(path, sizeof path, "%s/adapter", out);
    CHECK(fr_model_lora_save(m, path, PEFT "/base") == FR_OK, "save: %s", fr_last_error());
    CHECK(fr_model_forward_eval(m, ids, NULL, B, T, NULL) == FR_OK, "forward: %s", fr_last_error());
    const fr_st_entry e[2] = {{"input_ids", FR_DT_I32, 2, {B, T}, ids},
                              {"logits", FR_DT_F32, 3, {B, T, 128}, fr_model_logits(m)}};
    snprintf(path, sizeof path, "%s/logits.safetensors", out);
    CHECK(fr_st_write(path, e, 2, NULL, NULL, 0) == FR_OK, "write logits: %s", fr_last_error());
    printf("wrote %s/adapter and %s for peft's check\n", out, path);
    fr_model_free(m);
}

/* RSS of this process in bytes (/proc/self/statm) */
static double rss_bytes(void) {
    long pages = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f && fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
    if (f) fclose(f);
    return (double)resident * (double)sysconf(_SC_PAGESIZE);
}

/* A quantized frozen base computes what the FP32 model with the dequantized base weights
 * computes, bit for bit (loss and every adapter gradient), in BF16 and Q8_0; resident memory
 * drops by about the FP32 bytes of the quantized matrices minus their copies. */
static void test_quantized_base(void) {
    const char *types[2] = {"q8_0", "bf16"};
    for (int ty = 0; ty < 2; ty++) {
        fr_model *m[2] = {NULL, NULL};
        for (int k = 0; k < 2; k++) {
            CHECK(fr_model_load(&m[k], PEFT "/base") == FR_OK, "base: %s", fr_last_error());
            if (!m[k]) return;
        }
        /* m[1]: the FP32 model whose block linears are the dequantized values */
        const fr_qtype qt = (fr_qtype)fr_qtype_parse(types[ty]);
        for (int ti = 0; ti < fr_model_num_tensors(m[1]); ti++) {
            int ndim;
            int64_t shape[4];
            const char *name = fr_model_tensor_info(m[1], ti, &ndim, shape);
            int layer, at = 0;
            if (ndim != 2 || sscanf(name, "model.layers.%d.%n", &layer, &at) != 1 || !at || !strcmp(name + at, "mlp.gate.weight") ||
                (qt == FR_QT_Q8_0 && shape[1] % 32))
                continue;
            float *w = fr_model_param(m[1], name, NULL);
            fr_qmatrix q;
            CHECK(fr_qmatrix_from_f32(&q, qt, w, (int)shape[0], (int)shape[1]) == FR_OK, "quantize %s", name);
            for (int r = 0; r < shape[0]; r++) fr_qmatrix_row_f32(&q, r, w + (size_t)r * shape[1]);
            fr_qmatrix_free(&q);
        }
        double loss[2];
        for (int k = 0; k < 2; k++) {
            CHECK(fr_model_add_lora(m[k], 2, 4.0, "all", 0, 9) == FR_OK, "add_lora: %s", fr_last_error());
            fr_rng rng;
            fr_rng_seed(&rng, 31);
            for (int ti = 0; ti < fr_model_num_tensors(m[k]); ti++) {
                const char *name = fr_model_tensor_info(m[k], ti, NULL, NULL);
                size_t n;
                float *p = strncmp(name, "base_model.", 11) ? NULL : fr_model_param(m[k], name, &n);
                for (size_t i = 0; p && i < n; i++) p[i] = (float)(fr_rng_normal(&rng) * 0.2);
            }
        }
        CHECK(fr_model_lora_quantize_base(m[0], types[ty]) == FR_OK, "quantize base: %s", fr_last_error());
        enum { B = 2, T = 12 };
        int tok[B * T], tg[B * T];
        for (int i = 0; i < B * T; i++) tok[i] = (i * 41 + 7) % 128, tg[i] = i % T == T - 1 ? -1 : (i * 17 + 3) % 128;
        for (int k = 0; k < 2; k++) {
            fr_loss_info li;
            fr_model_zero_grad(m[k]);
            CHECK(fr_model_forward(m[k], tok, tg, B, T, &li) == FR_OK && fr_model_backward(m[k]) == FR_OK, "pass: %s",
                  fr_last_error());
            loss[k] = li.loss;
        }
        int same = 0, n_ad = 0;
        for (int ti = 0; ti < fr_model_num_tensors(m[0]); ti++) {
            const char *name = fr_model_tensor_info(m[0], ti, NULL, NULL);
            if (strncmp(name, "base_model.", 11) != 0) continue;
            size_t n0, n1;
            const float *g0 = fr_model_grad(m[0], name, &n0), *g1 = fr_model_grad(m[1], name, &n1);
            same += n0 == n1 && !memcmp(g0, g1, n0 * sizeof *g0);
            n_ad++;
        }
        size_t fp32 = 0;
        const size_t qb = fr_model_lora_base_bytes(m[0], &fp32);
        printf("frozen base as %s (%.0f of %.0f KiB): loss %.9f vs the dequantized FP32 model %.9f; %d/%d adapter "
               "gradients bit-identical\n", types[ty], qb / 1024.0, fp32 / 1024.0, loss[0], loss[1], same, n_ad);
        CHECK(loss[0] == loss[1] && same == n_ad && qb > 0 && qb < fp32, "%s base: the same arithmetic", types[ty]);
        CHECK(fr_model_save(m[0], "/tmp/frugal_never_written") == FR_ERR_STATE, "saving a model whose base is gone refused");
        fr_model_free(m[0]), fr_model_free(m[1]);
    }
    /* memory: a 28.8M-parameter model (configs/distill-teacher.json) */
    fr_config cfg;
    fr_model *big = NULL;
    CHECK(fr_config_load(&cfg, FR_FIXTURES_DIR "/../../configs/distill-teacher.json") == FR_OK &&
              fr_model_create(&big, &cfg, 1) == FR_OK && fr_model_add_lora(big, 4, 8, "all", 0, 1) == FR_OK,
          "big model: %s", fr_last_error());
    if (big) {
        const double before = rss_bytes();
        CHECK(fr_model_lora_quantize_base(big, "q8_0") == FR_OK, "quantize: %s", fr_last_error());
        const double after = rss_bytes();
        size_t fp32 = 0;
        const size_t q = fr_model_lora_base_bytes(big, &fp32);
        const double expect = (double)fp32 - (double)q;
        printf("Q8_0 frozen base of a %.1fM-parameter model: resident %.1f -> %.1f MiB (-%.1f MiB; FP32 weights %.1f MiB, "
               "their copies %.1f MiB)\n", fr_model_num_params(big) / 1e6, before / 1048576, after / 1048576,
               (before - after) / 1048576, fp32 / 1048576.0, q / 1048576.0);
        CHECK(before - after >= 0.9 * expect, "resident memory drops by about the FP32 weights less their copies");
        fr_model_free(big);
    }
}

static void test_bad_input(void) {
    fr_model *m = NULL;
    CHECK(fr_model_load(&m, PEFT "/base") == FR_OK, "base: %s", fr_last_error());
    if (!m) return;
    CHECK(fr_model_add_lora(m, 4, 8, "q_a_proj,qkv_proj", 0, 1) == FR_ERR_ARG && strstr(fr_last_error(), "qkv_proj") &&
              strstr(fr_last_error(), "kv_a_proj_with_mqa"),
          "unknown target named, valid names listed: %s", fr_last_error());
    CHECK(fr_model_add_lora(m, 4, 8, "q_proj", 0, 1) == FR_ERR_ARG && strstr(fr_last_error(), "match no"),
          "a target this model lacks (q_proj beside q_lora): %s", fr_last_error());
    CHECK(fr_model_add_lora(m, 0, 8, "all", 0, 1) == FR_ERR_ARG, "rank 0 refused");
    CHECK(fr_model_lora_sites(m) == 0 && fr_model_num_tensors(m) > 0, "a refused call leaves the model as it was");
    fr_model_free(m);
    /* an adapter for another model: v3_yarn_tied has q_proj where the adapter adapts q_a_proj */
    m = NULL;
    CHECK(fr_model_load(&m, FR_FIXTURES_DIR "/v3_yarn_tied") == FR_OK, "v3_yarn_tied: %s", fr_last_error());
    if (m)
        CHECK(fr_model_merge_adapter(m, PEFT "/adapter") != FR_OK && strstr(fr_last_error(), "model.layers."),
              "adapter for another model refused naming the layer: %s", fr_last_error());
    fr_model_free(m);
    CHECK(fr_model_merge_adapter(NULL, PEFT "/adapter") == FR_ERR_ARG, "NULL model");
}

int main(void) {
    fr_set_num_threads(2);
    test_gradients();
    test_peft();
    test_quantized_base();
    test_bad_input();
    if (getenv("FRUGAL_PEFT_OUT")) write_for_peft(getenv("FRUGAL_PEFT_OUT"));
    return fr_test_finish("test_lora");
}
