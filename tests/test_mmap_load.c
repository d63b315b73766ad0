/*
 * test_mmap_load.c — opening a checkpoint for inference maps it instead of reading it.
 *
 * A model with ~190 MB of FP32 matrices is saved, then opened with fr_engine_load (FP32
 * weights). The engine must use the matrices in place from the safetensors mapping, so the
 * resident memory grows by far less than the file (bound: 25 % of the matrix bytes; the
 * embedding, norms and router are copied, and are small here). Decoding a token then reads
 * what it uses, and its logits equal the same engine built from the model in memory
 * (fr_engine_from_model, which copies everything) exactly.
 *
 * The bound holds for an open without the load-time finiteness check (no_check = 1,
 * `--no-check`): the check reads every weight once, so it pages the mapping in (documented
 * in docs/inference.md). The engine opened with the check gives the same logits.
 */
#include "frugal.h"
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *CONFIG =
    "{\"architectures\": [\"DeepseekV3ForCausalLM\"], \"model_type\": \"deepseek_v3\",\n"
    " \"vocab_size\": 512, \"hidden_size\": 512, \"intermediate_size\": 2048, \"moe_intermediate_size\": 512,\n"
    " \"num_hidden_layers\": 4, \"num_attention_heads\": 8, \"num_key_value_heads\": 8,\n"
    " \"q_lora_rank\": 256, \"kv_lora_rank\": 128, \"qk_nope_head_dim\": 32, \"qk_rope_head_dim\": 16, \"v_head_dim\": 32,\n"
    " \"n_routed_experts\": 16, \"n_shared_experts\": 1, \"num_experts_per_tok\": 2, \"n_group\": 1, \"topk_group\": 1,\n"
    " \"topk_method\": \"noaux_tc\", \"scoring_func\": \"sigmoid\", \"norm_topk_prob\": true, \"routed_scaling_factor\": 2.5,\n"
    " \"first_k_dense_replace\": 1, \"moe_layer_freq\": 1, \"num_nextn_predict_layers\": 0,\n"
    " \"max_position_embeddings\": 256, \"rope_theta\": 10000.0, \"rope_scaling\": null, \"rms_norm_eps\": 1e-06,\n"
    " \"tie_word_embeddings\": false, \"initializer_range\": 0.02, \"hidden_act\": \"silu\",\n"
    " \"bos_token_id\": 0, \"eos_token_id\": 1}\n";

static long rss_kb(void) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    char line[256];
    long kb = -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "VmRSS:", 6) == 0) kb = atol(line + 6);
    fclose(f);
    return kb;
}

int main(void) {
    char dir[256], path[300];
    snprintf(dir, sizeof dir, "/tmp/frugal_test_mmap_%ld", (long)getpid());
    mkdir(dir, 0755);
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    if (!f) return 1;
    fputs(CONFIG, f);
    fclose(f);
    fr_config cfg;
    fr_model *m = NULL;
    int rc = fr_config_load(&cfg, path);
    if (rc == FR_OK) rc = fr_model_create(&m, &cfg, 5);
    if (rc == FR_OK) rc = fr_model_save(m, dir);
    CHECK(rc == FR_OK, "model: %s", fr_last_error());
    if (rc != FR_OK) return fr_test_finish("test_mmap_load");

    fr_engine_options o;
    fr_engine_options_default(&o);
    o.max_seq_len = 64;
    fr_engine *ref = NULL;
    rc = fr_engine_from_model(&ref, m, &o);
    CHECK(rc == FR_OK, "engine from the model: %s", fr_last_error());
    double matrix_bytes = 4.0 * (double)(fr_model_num_params(m) - 2 * (size_t)cfg.vocab_size * cfg.hidden_size);
    fr_model_free(m);
    if (rc != FR_OK) return fr_test_finish("test_mmap_load");

    /* open it mapped, without the finiteness check (which would read every page) */
    long before = rss_kb();
    fr_engine *e = NULL;
    fr_engine_options lazy = o;
    lazy.no_check = 1;
    rc = fr_engine_load(&e, dir, &lazy);
    long after = rss_kb();
    CHECK(rc == FR_OK, "engine load: %s", fr_last_error());
    double grown = (after - before) * 1024.0;
    printf("matrices %.1f MB in the file; resident memory grew by %.1f MB when the engine opened it\n",
           matrix_bytes / 1e6, grown / 1e6);
    CHECK(grown < 0.25 * matrix_bytes, "opening read %.1f MB of %.1f MB of matrices (bound 25 %%)", grown / 1e6,
          matrix_bytes / 1e6);

    if (rc == FR_OK) {
        fr_seq *s1 = NULL, *s2 = NULL;
        const int V = cfg.vocab_size;
        int prompt[12] = {3, 17, 99, 250, 4, 8, 15, 16, 23, 42, 108, 7};
        const int *toks[1] = {prompt};
        int n[1] = {12};
        float *l1 = malloc((size_t)V * sizeof(float)), *l2 = malloc((size_t)V * sizeof(float));
        rc = fr_seq_create(&s1, e);
        if (rc == FR_OK) rc = fr_seq_create(&s2, ref);
        if (rc == FR_OK) rc = fr_engine_forward(e, &s1, 1, toks, n, l1, 0);
        if (rc == FR_OK) rc = fr_engine_forward(ref, &s2, 1, toks, n, l2, 0);
        CHECK(rc == FR_OK, "forward: %s", fr_last_error());
        if (rc == FR_OK) CHECK(memcmp(l1, l2, (size_t)V * sizeof(float)) == 0, "mapped weights give the same logits bit for bit");
        /* the default open (finiteness check on) gives the same logits */
        fr_engine *checked = NULL;
        fr_seq *s3 = NULL;
        float *l3 = malloc((size_t)V * sizeof(float));
        rc = fr_engine_load(&checked, dir, &o);
        if (rc == FR_OK) rc = fr_seq_create(&s3, checked);
        if (rc == FR_OK) rc = fr_engine_forward(checked, &s3, 1, toks, n, l3, 0);
        CHECK(rc == FR_OK, "checked open: %s", fr_last_error());
        if (rc == FR_OK) CHECK(memcmp(l1, l3, (size_t)V * sizeof(float)) == 0, "checked open gives the same logits");
        fr_seq_free(s3);
        fr_engine_free(checked);
        free(l3);
        fr_seq_free(s1);
        fr_seq_free(s2);
        free(l1);
        free(l2);
    }
    fr_engine_free(e);
    fr_engine_free(ref);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) printf("could not remove %s\n", dir);
    return fr_test_finish("test_mmap_load");
}
