/* test_cli.c — runs the real `frugal` binary and checks its behaviour:
 *  - help of every command, exit codes for unknown commands/options and bad values;
 *  - `frugal eval` input validation (missing folder, bad tokens, line numbers);
 *  - eval / info on a tiny model created and saved in a temporary folder, against the library;
 *  - `frugal eval --json` on every fixture folder against the loss transformers computed. */
#define _GNU_SOURCE
#include "frugal.h"
#include "formats/safetensors.h"
#include "cli_testutil.h"

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef FR_FIXTURES_DIR
#define FR_FIXTURES_DIR "tests/fixtures"
#endif

static void test_usage(void) {
    expect("--help", 0, "eval", "distill");
    expect("help", 0, "info", "train");
    expect("", 2, "usage", NULL);
    expect("eval --help", 0, "frugal eval", "--tokens");
    expect("eval -h", 0, "frugal eval", NULL);
    expect("help eval", 0, "frugal eval", NULL);
    expect("info --help", 0, "frugal info", "--config");
    expect("info -h", 0, "frugal info", NULL);
    expect("version --help", 0, "frugal version", NULL);
    expect("help --help", 0, "frugal help", NULL);
    expect("version", 0, FRUGAL_VERSION, NULL);
    expect("--version", 0, FRUGAL_VERSION, NULL);

    expect("frobnicate", 2, "frobnicate", "frugal help"); /* a pointer to the help, not the whole help */
    expect("--frobnicate", 2, "--frobnicate", NULL);
    expect("eval --bogus-flag", 2, "--bogus-flag", "usage");
    expect("info --bogus-flag", 2, "--bogus-flag", NULL);
    expect("eval --model", 2, "--model", "needs a value");
    expect("eval --model x --tokens", 2, "--tokens", "needs a value");
    expect("eval --model x --tokens y --threads abc", 2, "--threads", "abc");
    expect("eval --model x --tokens y --threads 0", 2, "--threads", NULL);
    expect("eval --model x --tokens y --threads=-3", 2, "--threads", NULL);
    expect("eval --tokens y", 2, "--model", NULL);
    expect("eval --model x", 2, "--tokens", NULL);
    expect("eval --model x --tokens y stray", 2, "stray", NULL);
    expect("eval --json=1 --model x --tokens y", 2, "--json", NULL);
    expect("eval --help", 0, "--engine", "--chunk");
    expect("eval --model x --tokens y --chunk 2", 2, "--engine", NULL);
    expect("eval --model x --tokens y --weights q8_0", 2, "--engine", NULL);
    expect("eval --model x --tokens y --engine --weights q5", 2, "q5", NULL);
    expect("eval --model x --tokens y --engine --chunk 0", 2, "--chunk", NULL);
    expect("eval --model x --tokens y --engine=1", 2, "--engine", NULL);
    expect("info", 2, "--model", NULL);
    expect("train --help", 0, "bf16", "--fp8-grad-tiles");
    expect("train --config c --data d --out o --steps 1 --precision fp16", 2, "fp16", "fp32, bf16 or fp8");
    expect("train --config c --data d --out o --steps 1 --fp8-grad-tiles 64x64", 2, "64x64", NULL);
    expect("info --model a --config b", 2, "only one", NULL);

    /* the fine-tuning and distillation options: bad values are usage errors naming them */
    expect("distill --help", 0, "dump-teacher", "KL");
    expect("merge --help", 0, "--adapter", "PEFT");
    expect("merge --model a --adapter b", 2, "--out", NULL);
    expect("distill dump-teacher --teacher t --data d", 2, "--seq", NULL);
    expect("distill dump-teacher --teacher t --data d --seq 16 --topk 0", 2, "--topk", NULL);
    expect("train --config c --data d --out o --steps 1 --lora-rank 0", 2, "--lora-rank", NULL);
    expect("train --config c --data d --out o --steps 1 --distill-alpha 2", 2, "--distill-alpha", NULL);
    /* the router / expert learning-rate scales: > 0, and full training only */
    expect("train --help", 0, "--lr-router-scale", "--lr-experts-scale");
    expect("train --config c --data d --out o --steps 1 --lr-router-scale 0", 2, "--lr-router-scale", "> 0");
    expect("train --config c --data d --out o --steps 1 --lr-experts-scale -2", 2, "--lr-experts-scale", NULL);
    expect("train --config c --data d --out o --steps 1 --lr-experts-scale x", 2, "--lr-experts-scale", NULL);
    expect("train --init m --data d --out o --steps 1 --lora-rank 4 --lr-experts-scale 2", 2, "--lora-rank", NULL);
}

/* A tiny DeepSeek-V3 config (MLA with q compression, grouped sigmoid routing, 1 dense + 1 MoE). */
static const char *TINY_CONFIG =
    "{\n"
    "  \"architectures\": [\"DeepseekV3ForCausalLM\"], \"model_type\": \"deepseek_v3\",\n"
    "  \"vocab_size\": 64, \"hidden_size\": 32, \"intermediate_size\": 64, \"moe_intermediate_size\": 16,\n"
    "  \"num_hidden_layers\": 2, \"num_attention_heads\": 2, \"num_key_value_heads\": 2,\n"
    "  \"q_lora_rank\": 24, \"kv_lora_rank\": 16, \"qk_nope_head_dim\": 8, \"qk_rope_head_dim\": 8,\n"
    "  \"v_head_dim\": 8, \"n_routed_experts\": 4, \"n_shared_experts\": 1, \"num_experts_per_tok\": 2,\n"
    "  \"n_group\": 2, \"topk_group\": 1, \"topk_method\": \"noaux_tc\", \"scoring_func\": \"sigmoid\",\n"
    "  \"norm_topk_prob\": true, \"routed_scaling_factor\": 2.5, \"first_k_dense_replace\": 1,\n"
    "  \"moe_layer_freq\": 1, \"num_nextn_predict_layers\": 0, \"max_position_embeddings\": 128,\n"
    "  \"rope_theta\": 10000.0, \"rope_scaling\": null, \"rope_interleave\": true, \"rms_norm_eps\": 1e-6,\n"
    "  \"tie_word_embeddings\": false, \"initializer_range\": 0.02, \"hidden_act\": \"silu\",\n"
    "  \"attention_bias\": false, \"attention_dropout\": 0.0, \"bos_token_id\": 0, \"eos_token_id\": 1,\n"
    "  \"pad_token_id\": null\n"
    "}\n";

static void test_tiny_model(const char *tmp) {
    char dir[300], cfg_path[320], tok[320], args[2048];
    snprintf(dir, sizeof dir, "%s/tiny", tmp);
    snprintf(cfg_path, sizeof cfg_path, "%s/tiny-config.json", tmp);
    snprintf(tok, sizeof tok, "%s/tokens.txt", tmp);
    fr_test_write_text(cfg_path, TINY_CONFIG);
    CHECK(mkdir(dir, 0755) == 0, "mkdir %s", dir);

    fr_config cfg;
    fr_model *m = NULL;
    int st = fr_config_load(&cfg, cfg_path);
    CHECK(st == FR_OK, "fr_config_load(tiny): %s", fr_last_error());
    if (st != FR_OK) return;
    st = fr_model_create(&m, &cfg, 1);
    CHECK(st == FR_OK, "fr_model_create(tiny): %s", fr_last_error());
    if (st != FR_OK) return;
    st = fr_model_save(m, dir);
    CHECK(st == FR_OK, "fr_model_save(%s): %s", dir, fr_last_error());
    size_t n_params = fr_model_num_params(m), n_active = fr_model_num_active_params(m);
    fr_model_free(m);
    m = NULL;
    if (st != FR_OK) return;

    /* Token-file validation: each error names its line. */
    fr_test_write_text(tok, "1 2 3\n4 x5 6\n");
    snprintf(args, sizeof args, "eval --model '%s' --tokens '%s'", dir, tok);
    expect(args, -1, "line 2", "x5");
    fr_test_write_text(tok, "1 2 3 4\n\n5 64 6\n");
    expect(args, -1, "line 3", "64");
    fr_test_write_text(tok, "1 -2\n");
    expect(args, -1, "line 1", "-2");
    fr_test_write_text(tok, "1 2\n\n7\n");
    expect(args, -1, "line 3", "at least 2");
    fr_test_write_text(tok, "1 2\n99999999999999999999 3\n");
    expect(args, -1, "line 2", NULL);
    fr_test_write_text(tok, "");
    expect(args, -1, "no token sequences", NULL);
    fr_test_write_text(tok, "  \n\t\n");
    expect(args, -1, "no token sequences", NULL);
    snprintf(args, sizeof args, "eval --model '%s' --tokens '%s/does-not-exist.txt'", dir, tmp);
    expect(args, -1, "does-not-exist.txt", "error");

    /* A valid file: the CLI's loss equals the library's on the same sequences. */
    static const int s0[] = {3, 17, 42, 5, 9, 63, 0, 12};
    static const int s1[] = {8, 8, 1};
    static const int s2[] = {60, 2, 33, 14, 27};
    const int *seqs[] = {s0, s1, s2};
    const int lens[] = {8, 3, 5};
    fr_test_write_text(tok, "3 17 42 5 9 63 0 12\n\n  8 8\t1  \r\n60 2 33 14 27");
    double ref = NAN;
    long ref_n = 0;
    st = fr_model_load(&m, dir);
    CHECK(st == FR_OK, "fr_model_load(%s): %s", dir, fr_last_error());
    if (st == FR_OK) {
        st = fr_model_eval_sequences(m, 3, seqs, lens, &ref, &ref_n);
        CHECK(st == FR_OK, "fr_model_eval_sequences: %s", fr_last_error());
        fr_model_free(m);
    }
    snprintf(args, sizeof args, "eval --model '%s' --tokens '%s' --json --threads 2", dir, tok);
    char *out = NULL;
    int rc = run_frugal(args, &out);
    CHECK(rc == 0, "frugal %s: exit %d:\n%s", args, rc, out);
    double loss = json_number(out, "loss"), ntok = json_number(out, "tokens");
    CHECK(fabs(loss - ref) <= 1e-5 * fabs(ref), "tiny model: CLI loss %.9g vs library %.9g", loss, ref);
    CHECK(ntok == (double)ref_n && ref_n == 7 + 2 + 4, "tiny model: tokens %g vs library %ld (want 13)", ntok, ref_n);
    CHECK(fabs(json_number(out, "ppl") - exp(ref)) <= 1e-5 * exp(ref), "tiny model: ppl wrong: %s", out);
    free(out);
    snprintf(args, sizeof args, "eval --model '%s' --tokens '%s'", dir, tok);
    expect(args, 0, "loss ", "tokens 13");

    /* info: exact parameter counts from the library, for --model and --config. */
    char count[64];
    snprintf(count, sizeof count, "%zu total", n_params);
    snprintf(args, sizeof args, "info --model '%s'", dir);
    expect(args, 0, count, "kv_lora_rank 16");
    snprintf(args, sizeof args, "info --config '%s'", cfg_path);
    expect(args, 0, count, "24 values per token per layer");
    snprintf(args, sizeof args, "info --config '%s' --json", cfg_path);
    rc = run_frugal(args, &out);
    CHECK(rc == 0, "frugal %s: exit %d:\n%s", args, rc, out);
    CHECK(json_number(out, "params_total") == (double)n_params, "info --json params_total: %s", out);
    CHECK(json_number(out, "params_active") == (double)n_active, "info --json params_active: %s", out);
    CHECK(json_number(out, "kv_latent_values_per_token_layer") == 24, "info --json latent values: %s", out);
    CHECK(json_number(out, "kv_mha_values_per_token_layer") == 2 * (16 + 8), "info --json MHA values: %s", out);
    CHECK(json_number(out, "moe_layers") == 1 && json_number(out, "dense_layers") == 1, "info --json layers: %s", out);
    free(out);
    snprintf(args, sizeof args, "info --config '%s/missing.json'", tmp);
    expect(args, -1, "missing.json", NULL);
}

/* `frugal eval --json` on a fixture folder agrees with transformers' eval_loss. */
static int test_fixture(const char *name, int required) {
    char dir[1024], path[1200], tok[1200], args[3000];
    snprintf(dir, sizeof dir, "%s/%s", FR_FIXTURES_DIR, name);
    snprintf(path, sizeof path, "%s/reference.safetensors", dir);
    snprintf(tok, sizeof tok, "%s/eval_tokens.txt", dir);
    if (!fr_test_file_exists(path)) return 0;
    fr_st_file f;
    int st = fr_st_open(&f, path);
    CHECK(st == FR_OK, "%s: %s", path, fr_last_error());
    if (st != FR_OK) return 0;
    const fr_st_tensor *t = fr_st_find(&f, "eval_loss");
    if (!t || !fr_test_file_exists(tok)) {
        if (required) CHECK(0, "%s: fixture lacks eval_loss or eval_tokens.txt", name);
        fr_st_close(&f);
        return 0;
    }
    float want = NAN;
    CHECK(t->numel == 1 && fr_st_to_f32(t, &want, 1) == FR_OK, "%s: eval_loss should be one number", name);
    fr_st_close(&f);

    snprintf(args, sizeof args, "eval --model '%s' --tokens '%s' --json", dir, tok);
    char *out = NULL;
    int rc = run_frugal(args, &out);
    double loss = json_number(out, "loss");
    CHECK(rc == 0, "fixture %s: frugal eval exit %d:\n%s", name, rc, out);
    double rel = fabs(loss - (double)want) / fabs((double)want);
    CHECK(rel <= 1e-5, "fixture %s: loss %.9g vs transformers %.9g (rel %.3g)", name, loss, (double)want, rel);
    printf("fixture %-14s frugal eval loss %.7f, transformers %.7f, rel err %.2e\n", name, loss, (double)want, rel);
    free(out);
    /* the inference engine (FP32 weights) computes the same loss: decode one token per call,
     * the default pieces of 8, and one prefill per sequence */
    static const char *chunks[] = {"1", "8", "1000"};
    for (int k = 0; k < 3; k++) {
        snprintf(args, sizeof args, "eval --model '%s' --tokens '%s' --json --engine --chunk %s", dir, tok, chunks[k]);
        out = NULL;
        rc = run_frugal(args, &out);
        loss = json_number(out, "loss");
        rel = fabs(loss - (double)want) / fabs((double)want);
        CHECK(rc == 0 && rel <= 1e-5 && strstr(out, "\"engine\": true") && strstr(out, "\"weights\": \"f32\""),
              "fixture %s: frugal eval --engine --chunk %s: exit %d, loss %.9g vs transformers %.9g\n%s", name, chunks[k],
              rc, loss, (double)want, out);
        free(out);
    }
    return 1;
}

static void test_fixtures(void) {
    static const char *known[] = {"v3_qlora", "v3_yarn_tied", "v2_group", "v2_lite", "v3_mtp"};
    int n_known = (int)(sizeof known / sizeof known[0]), done = 0;
    for (int i = 0; i < n_known; i++) done += test_fixture(known[i], 1);
    /* Any other fixture folder with an eval_loss is checked as well. */
    DIR *d = opendir(FR_FIXTURES_DIR);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (e->d_name[0] == '.') continue;
            int is_known = 0;
            for (int i = 0; i < n_known; i++) is_known |= strcmp(e->d_name, known[i]) == 0;
            if (!is_known) done += test_fixture(e->d_name, 0);
        }
        closedir(d);
    }
    if (done == 0) printf("note: no fixtures with eval_loss under %s (run `make fixtures`)\n", FR_FIXTURES_DIR);
}

int main(void) {
    if (!fr_test_file_exists(FR_FRUGAL_BIN)) {
        CHECK(0, "frugal binary %s not found", FR_FRUGAL_BIN);
        return fr_test_finish("test_cli");
    }
    const char *base = getenv("TMPDIR");
    char tmp[256];
    snprintf(tmp, sizeof tmp, "%s/frugal-test-cli-XXXXXX", base && base[0] ? base : "/tmp");
    if (!mkdtemp(tmp)) {
        CHECK(0, "mkdtemp %s failed", tmp);
        return fr_test_finish("test_cli");
    }

    test_usage();
    char args[1024];
    snprintf(args, sizeof args, "eval --model '%s/no-such-model' --tokens '%s/none.txt'", tmp, tmp);
    expect(args, -1, "error", "none.txt");
    char tok[300];
    snprintf(tok, sizeof tok, "%s/ok.txt", tmp);
    fr_test_write_text(tok, "1 2 3\n");
    snprintf(args, sizeof args, "eval --model '%s/no-such-model' --tokens '%s'", tmp, tok);
    expect(args, -1, "error", "no-such-model");

    test_tiny_model(tmp);
    test_fixtures();

    fr_test_rm_rf(tmp);
    return fr_test_finish("test_cli");
}
