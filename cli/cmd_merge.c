/* cmd_merge.c — `frugal merge`: a LoRA adapter (PEFT folder) folded into a plain model folder,
 * written beside OUT and renamed into place. */
#include "cli.h"

#include "core/internal.h"
#include "frugal.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void usage_merge(FILE *f) {
    fprintf(f,
            "usage: frugal merge --model DIR --adapter DIR --out DIR\n"
            "\n"
            "Folds a LoRA adapter into the weights of a model: W += (alpha / r) B A for every adapted\n"
            "linear layer (alpha / sqrt(r) for rsLoRA). The adapter is a PEFT folder (adapter_config.json\n"
            "+ adapter_model.safetensors): a checkpoint of `frugal finetune --lora-rank`, or one saved by\n"
            "peft. OUT is a plain Hugging Face folder (config.json, model.safetensors in FP32, the\n"
            "tokenizer and generation config of DIR) that transformers, `frugal generate` and\n"
            "`frugal convert` take; it is built beside OUT and renamed into place.\n"
            "\n"
            "Options:\n"
            "  --model DIR     the base model the adapter was trained on\n"
            "  --adapter DIR   the adapter\n"
            "  --out DIR       the folder to create (must not exist)\n"
            "  -h, --help      show this help\n");
}

int cmd_merge(int argc, char **argv) {
    const char *model = NULL, *adapter = NULL, *out = NULL;
    const cli_opt opts[] = {{"--model", &model, NULL}, {"--adapter", &adapter, NULL}, {"--out", &out, NULL}};
    for (int i = 1; i < argc; i++) {
        int r;
        if (cli_is_help(argv[i])) {
            usage_merge(stdout);
            return CLI_EXIT_OK;
        }
        if ((r = cli_opt_match("merge", usage_merge, argc, argv, &i, opts, CLI_N_OPTS(opts))) != 0) {
            if (r < 0) return CLI_EXIT_USAGE;
            continue;
        }
        return cli_usage_error("merge", usage_merge, "%s '%s'", argv[i][0] == '-' ? "unknown option" : "unexpected argument",
                               argv[i]);
    }
    if (!model || !adapter || !out) return cli_usage_error("merge", usage_merge, "--model, --adapter and --out are required");
    struct stat st;
    if (stat(out, &st) == 0) return cli_fail("%s already exists: choose another --out", out);
    if (cli_check_dir(model, "model folder") != CLI_EXIT_OK || cli_check_dir(adapter, "adapter folder") != CLI_EXIT_OK)
        return CLI_EXIT_FAIL;
    fr_model *m = NULL;
    if (fr_model_load(&m, model) != FR_OK) return cli_fail_lib("cannot load the model");
    if (fr_model_merge_adapter(m, adapter) != FR_OK) {
        fr_model_free(m);
        return cli_fail_lib("cannot merge the adapter");
    }
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", out, (long)getpid());
    fr_remove_tree(tmp);
    int rc = fr_model_save(m, tmp);
    fr_model_free(m);
    const char *files[] = {"tokenizer.json", "tokenizer_config.json", "generation_config.json"};
    for (int i = 0; rc == FR_OK && i < 3; i++) {
        char src[4200], dst[4300];
        snprintf(src, sizeof src, "%s/%s", model, files[i]);
        snprintf(dst, sizeof dst, "%s/%s", tmp, files[i]);
        if (access(src, R_OK) == 0) rc = fr_copy_file(src, dst);
    }
    if (rc == FR_OK) {
        fr_fsync_dir(tmp);
        if (rename(tmp, out) != 0) rc = fr_error(FR_ERR_IO, "cannot rename %s to %s: %s", tmp, out, strerror(errno));
    }
    if (rc != FR_OK) {
        fr_remove_tree(tmp);
        return cli_fail_lib("cannot write the merged model");
    }
    printf("wrote %s: %s with the adapter %s folded in\n", out, model, adapter);
    return CLI_EXIT_OK;
}
