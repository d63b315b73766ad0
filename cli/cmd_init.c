/* cmd_init.c — `frugal init`: a randomly initialised model folder from a config, without
 * training (benchmark models, a start for `frugal train --init`), written atomically. */
#include "cli.h"

#include "core/internal.h"
#include "frugal.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void usage_init(FILE *f) {
    fprintf(f,
            "usage: frugal init --config FILE --out DIR [--seed N] [--tokenizer DIR]\n"
            "\n"
            "Writes a Hugging Face model folder (config.json + model.safetensors, FP32) holding a model\n"
            "initialised as transformers does (normal(0, initializer_range) matrices, unit norms, zero\n"
            "router bias), the same weights `frugal train` starts from with the same seed. The folder is\n"
            "built beside DIR and renamed into place, so DIR never holds half a model.\n"
            "\n"
            "Options:\n"
            "  --config FILE   the model's config.json (DeepSeek-V3 / V2)\n"
            "  --out DIR       the folder to create (must not exist)\n"
            "  --seed N        initialisation seed (default 1)\n"
            "  --tokenizer DIR copy tokenizer.json and tokenizer_config.json from DIR into the folder\n"
            "  -h, --help      show this help\n");
}

int cmd_init(int argc, char **argv) {
    const char *config = NULL, *out = NULL, *seed_text = NULL, *tok_dir = NULL;
    const cli_opt opts[] = {{"--config", &config, NULL}, {"--out", &out, NULL}, {"--seed", &seed_text, NULL},
                            {"--tokenizer", &tok_dir, NULL}};
    for (int i = 1; i < argc; i++) {
        int r;
        if (cli_is_help(argv[i])) {
            usage_init(stdout);
            return CLI_EXIT_OK;
        }
        if ((r = cli_opt_match("init", usage_init, argc, argv, &i, opts, CLI_N_OPTS(opts))) != 0) {
            if (r < 0) return CLI_EXIT_USAGE;
            continue;
        }
        return cli_usage_error("init", usage_init, "%s '%s'", argv[i][0] == '-' ? "unknown option" : "unexpected argument",
                               argv[i]);
    }
    if (!config) return cli_usage_error("init", usage_init, "missing required option '--config FILE'");
    if (!out) return cli_usage_error("init", usage_init, "missing required option '--out DIR'");
    long seed = 1;
    if (seed_text && cli_parse_int("init", usage_init, "--seed", seed_text, 0, LONG_MAX, &seed) != 0) return CLI_EXIT_USAGE;
    struct stat st;
    if (stat(out, &st) == 0) {
        fprintf(stderr, "frugal init: %s already exists: choose another --out\n", out);
        return CLI_EXIT_FAIL;
    }
    if (tok_dir && cli_check_dir(tok_dir, "tokenizer folder") != CLI_EXIT_OK) return CLI_EXIT_FAIL;

    fr_config cfg;
    if (fr_config_load(&cfg, config) != FR_OK) return cli_fail_lib("cannot read the config");
    fr_model *m = NULL;
    if (fr_model_create(&m, &cfg, (uint64_t)seed) != FR_OK) return cli_fail_lib("cannot create the model");
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", out, (long)getpid());
    fr_remove_tree(tmp);
    int rc = fr_model_save(m, tmp);
    const char *tok_files[] = {"tokenizer.json", "tokenizer_config.json"};
    for (int i = 0; rc == FR_OK && tok_dir && i < 2; i++) {
        char src[4200], dst[4300];
        snprintf(src, sizeof src, "%s/%s", tok_dir, tok_files[i]);
        snprintf(dst, sizeof dst, "%s/%s", tmp, tok_files[i]);
        if (access(src, R_OK) == 0) rc = fr_copy_file(src, dst);
        else if (i == 0) rc = fr_error(FR_ERR_IO, "%s has no tokenizer.json", tok_dir);
    }
    if (rc == FR_OK) {
        fr_fsync_dir(tmp);
        if (rename(tmp, out) != 0) rc = fr_error(FR_ERR_IO, "cannot rename %s to %s: %s", tmp, out, strerror(errno));
    }
    const size_t n = fr_model_num_params(m);
    fr_model_free(m);
    if (rc != FR_OK) {
        fr_remove_tree(tmp);
        return cli_fail_lib("cannot write the model folder");
    }
    printf("wrote %s: %zu parameters (%.2fM), seed %ld\n", out, n, n / 1e6, seed);
    return CLI_EXIT_OK;
}
