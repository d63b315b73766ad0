/* cmd_finetune.c — `frugal finetune`: supervised fine-tuning (full or LoRA) on chat conversations. The
 * conversations become a fine-tuning dataset (fr_sft_prepare: token shards with a loss mask
 * on the assistant replies) beside the run, then `frugal train --init` trains on it: the same
 * loop, checkpoints, resume, metrics and ledger (kind "finetune"). */
#include "cli.h"
#include "core/internal.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

void usage_finetune(FILE *f) {
    fprintf(f,
            "usage: frugal finetune --init MODEL_DIR --data CHAT.jsonl --out RUN_DIR (--steps N | --tokens N)\n"
            "                       [--val-fraction F] [train options]\n"
            "       frugal finetune --resume RUN_DIR [train options]\n"
            "\n"
            "Fine-tunes the model in MODEL_DIR on chat conversations: all weights (full fine-tuning), or\n"
            "low-rank adapters with --lora-rank R (the base frozen; --lora-alpha, --lora-targets,\n"
            "--rslora, --lora-base f32|bf16|q8_0: see `frugal train --help`). A LoRA run's checkpoints\n"
            "are PEFT adapter folders: `frugal merge` folds one into the model, and generate, chat and\n"
            "serve take it with --adapter DIR.\n"
            "CHAT.jsonl holds one conversation per line in the common form\n"
            "  {\"messages\": [{\"role\": \"system\"|\"user\"|\"assistant\", \"content\": \"...\"}, ...]}\n"
            "rendered with MODEL_DIR's chat template; the loss counts the assistant replies (and the\n"
            "end-of-sentence token closing each) only. A line without an assistant turn is skipped and\n"
            "counted. The prepared data goes to RUN_DIR-data (token shards + loss masks, meta.json),\n"
            "then the run is `frugal train --init MODEL_DIR --data RUN_DIR-data --out RUN_DIR` with the\n"
            "other options (see `frugal train --help`: --steps, --lr, --batch, --seq, ...). The ledger\n"
            "records it as kind \"finetune\".\n"
            "\n"
            "Options:\n"
            "  --init DIR           the model to fine-tune (config.json, safetensors, tokenizer.json)\n"
            "  --data FILE          chat conversations (JSONL)\n"
            "  --out RUN_DIR        run folder to create\n"
            "  --val-fraction F     conversations kept for validation, by a hash of their line\n"
            "                       (default 0.05)\n"
            "  --resume RUN_DIR     continue a fine-tuning run\n"
            "  -h, --help           show this help\n");
}

int cmd_finetune(int argc, char **argv) {
    const char *init = NULL, *data = NULL, *out = NULL, *resume = NULL;
    double val_fraction = 0.05;
    char **rest = calloc((size_t)argc + 8, sizeof *rest);
    if (!rest) return cli_fail("out of memory");
    int nr = 1;
    rest[0] = "train";
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        if (cli_is_help(s)) {
            usage_finetune(stdout);
            free(rest);
            return CLI_EXIT_OK;
        }
        const char **slot = !strcmp(s, "--init") ? &init : !strcmp(s, "--data") ? &data : !strcmp(s, "--out") ? &out
                          : !strcmp(s, "--resume") ? &resume : NULL;
        if (slot || !strcmp(s, "--val-fraction")) {
            if (i + 1 >= argc) {
                free(rest);
                return cli_usage_error("finetune", usage_finetune, "option %s needs a value", s);
            }
            if (slot) *slot = argv[++i];
            else if (cli_parse_double("finetune", usage_finetune, s, argv[++i], 0, 0.5, &val_fraction) != 0) {
                free(rest);
                return CLI_EXIT_USAGE;
            }
            continue;
        }
        rest[nr++] = argv[i]; /* a train option, checked by `frugal train` */
    }
    int rc;
    char data_dir[4200];
    if (resume) {
        if (init || data || out) {
            free(rest);
            return cli_usage_error("finetune", usage_finetune, "--resume takes no --init, --data or --out");
        }
        memmove(rest + 3, rest + 1, (size_t)(nr - 1) * sizeof *rest);
        rest[1] = "--resume", rest[2] = (char *)resume;
        rc = cmd_train(nr + 2, rest);
        free(rest);
        return rc;
    }
    if (!init || !data || !out) {
        free(rest);
        return cli_usage_error("finetune", usage_finetune, "--init, --data and --out are required");
    }
    snprintf(data_dir, sizeof data_dir, "%s-data", out);
    struct stat sb;
    if (stat(out, &sb) == 0) {
        free(rest);
        return cli_fail("%s already exists (use --resume %s to continue it)", out, out);
    }
    if ((rc = cli_check_dir(init, "model folder")) != CLI_EXIT_OK) {
        free(rest);
        return rc;
    }
    if (stat(data_dir, &sb) == 0) {
        free(rest);
        return cli_fail("%s already exists: remove it (the fine-tuning data of an earlier run) or choose another --out",
                        data_dir);
    }
    fr_sft_prepare_options o = {init, data, data_dir, val_fraction};
    fr_sft_stats st;
    if (fr_sft_prepare(&o, &st) != FR_OK) {
        free(rest);
        return cli_fail_lib("cannot prepare the fine-tuning data");
    }
    /* the tokenizer beside the shards, as `frugal data prepare` leaves it (samples, bits/byte) */
    const char *files[] = {"tokenizer.json", "tokenizer_config.json"};
    for (int i = 0; i < 2; i++) {
        char *src = fr_path_join(init, files[i]), *dst = fr_path_join(data_dir, files[i]);
        struct stat fs;
        if (src && dst && stat(src, &fs) == 0 && fr_copy_file(src, dst) != FR_OK) {
            free(src), free(dst), free(rest);
            return cli_fail_lib("cannot copy the tokenizer into the fine-tuning data");
        }
        free(src), free(dst);
    }
    fprintf(stderr,
            "frugal finetune: %ld conversations (%ld without an assistant turn skipped): train %ld (%llu tokens, %llu "
            "targets), val %ld (%llu tokens, %llu targets) -> %s\n",
            st.conversations, st.skipped_no_assistant, st.train_conversations, (unsigned long long)st.train_tokens,
            (unsigned long long)st.train_targets, st.val_conversations, (unsigned long long)st.val_tokens,
            (unsigned long long)st.val_targets, data_dir);
    memmove(rest + 7, rest + 1, (size_t)(nr - 1) * sizeof *rest);
    rest[1] = "--init", rest[2] = (char *)init, rest[3] = "--data", rest[4] = data_dir, rest[5] = "--out",
    rest[6] = (char *)out;
    rc = cmd_train(nr + 6, rest);
    free(rest);
    return rc;
}
