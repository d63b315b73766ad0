/*
 * test_cli_init.c — `frugal init`: the folder it writes holds exactly the weights
 * fr_model_create makes from the same config and seed (bit for bit, every tensor), loads as a
 * model, carries the tokenizer when asked; another seed gives other weights; an existing --out,
 * a missing or broken config and unknown flags fail with a message and leave nothing behind.
 */
#include "model/model_internal.h"
#include "testutil.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char g_root[128];

static int same_weights(const fr_model *a, const fr_model *b) {
    return a->n_params == b->n_params && !memcmp(a->params, b->params, a->n_params * sizeof(float));
}

int main(void) {
    snprintf(g_root, sizeof g_root, "/tmp/frugal_test_cli_init_%d", (int)getpid());
    fr_test_rm_rf(g_root);
    mkdir(g_root, 0755);
    char cfg[300], out[300], out2[300], args[1200], tok[300];
    snprintf(cfg, sizeof cfg, "%s/tiny.json", g_root);
    snprintf(out, sizeof out, "%s/model", g_root);
    snprintf(out2, sizeof out2, "%s/model2", g_root);
    snprintf(tok, sizeof tok, "%s/tok", g_root);
    fr_test_write_text(cfg, fr_test_tiny_train_config(1));
    mkdir(tok, 0755);
    char tj[400];
    snprintf(tj, sizeof tj, "%s/tokenizer.json", tok);
    fr_test_write_text(tj, "{\"version\": \"1.0\"}\n");

    snprintf(args, sizeof args, "init --config %s --out %s --seed 3 --tokenizer %s", cfg, out, tok);
    fr_test_expect_frugal(FR_FRUGAL_BIN, args, 0, "wrote", "seed 3");
    fr_config c;
    fr_model *want = NULL, *got = NULL, *other = NULL;
    CHECK(fr_config_load(&c, cfg) == FR_OK && fr_model_create(&want, &c, 3) == FR_OK, "reference: %s", fr_last_error());
    CHECK(fr_model_load(&got, out) == FR_OK, "the folder loads: %s", fr_last_error());
    if (want && got) CHECK(same_weights(want, got), "the folder holds fr_model_create's weights for seed 3 bit for bit");
    char copied[400];
    snprintf(copied, sizeof copied, "%s/tokenizer.json", out);
    CHECK(fr_test_file_exists(copied), "the tokenizer was copied");

    snprintf(args, sizeof args, "init --config %s --out %s --seed 4", cfg, out2);
    fr_test_expect_frugal(FR_FRUGAL_BIN, args, 0, "wrote", NULL);
    CHECK(fr_model_load(&other, out2) == FR_OK && got && !same_weights(got, other), "another seed, other weights");

    /* failures: a message, a non-zero status, nothing written */
    snprintf(args, sizeof args, "init --config %s --out %s", cfg, out);
    fr_test_expect_frugal(FR_FRUGAL_BIN, args, 1, "already exists", NULL);
    snprintf(args, sizeof args, "init --out %s/x", g_root);
    fr_test_expect_frugal(FR_FRUGAL_BIN, args, 2, "--config", NULL);
    snprintf(args, sizeof args, "init --config %s/missing.json --out %s/y", g_root, g_root);
    fr_test_expect_frugal(FR_FRUGAL_BIN, args, 1, "missing.json", NULL);
    fr_test_write_text(cfg, "{\"hidden_size\": 0}");
    snprintf(args, sizeof args, "init --config %s --out %s/z", cfg, g_root);
    fr_test_expect_frugal(FR_FRUGAL_BIN, args, 1, "missing key", NULL);
    snprintf(args, sizeof args, "init --config %s --out %s/w --bogus", cfg, g_root);
    fr_test_expect_frugal(FR_FRUGAL_BIN, args, 2, "--bogus", NULL);
    char p[400];
    const char *never[] = {"x", "y", "z", "w"};
    for (int i = 0; i < 4; i++) {
        snprintf(p, sizeof p, "%s/%s", g_root, never[i]);
        CHECK(!fr_test_file_exists(p), "%s was not created", p);
    }
    CHECK(fr_test_no_tmp_leftovers(g_root), "no temporary folder left");
    fr_model_free(want), fr_model_free(got), fr_model_free(other);
    fr_test_rm_rf(g_root);
    return fr_test_finish("test_cli_init");
}
