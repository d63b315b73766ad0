/* cmd_distill.c — `frugal distill`: train a student on a teacher's logits (logit
 * distillation, run by `frugal train` with --distill-*), and `frugal distill dump-teacher`,
 * which stores a teacher's top-k logits beside the data's shards once. */
#include "cli.h"

#include "frugal.h"

#include <stdlib.h>
#include <string.h>

void usage_distill(FILE *f) {
    fprintf(f,
            "usage: frugal distill --data DIR --out RUN_DIR (--config CONFIG.json | --init DIR) (--steps N | --tokens N)\n"
            "                      [--teacher DIR] [--topk K] [--temperature T] [--alpha A] [train options]\n"
            "       frugal distill dump-teacher --teacher DIR --data DIR --seq T [--topk K] [--temperature T]\n"
            "                      [--threads N] [--ledger FILE]\n"
            "       frugal distill --resume RUN_DIR [train options]\n"
            "\n"
            "Logit distillation (Hinton et al.): the student trains on\n"
            "  loss = A T^2 KL(teacher_T || student_T) + (1 - A) CE\n"
            "over its targets, the KL between teacher and student at temperature T over the teacher's K\n"
            "most likely tokens plus one bucket for the rest of the vocabulary (the teacher's remaining\n"
            "mass comes from its log-sum-exp, stored beside its top K). Teacher and student need the same\n"
            "tokenizer: a teacher whose vocabulary size differs is refused.\n"
            "\n"
            "The teacher is either a model folder (or GGUF) that frugal runs beside the student on every\n"
            "window (--teacher), or top-k shards stored beside the data's shards (train_NNN.topk) by\n"
            "`frugal distill dump-teacher`, or by tools/dump_teacher_topk.py from any transformers\n"
            "causal LM with the same tokenizer. Shards are made for one --seq, --topk and --temperature.\n"
            "The run is `frugal train` with these options added (see `frugal train --help`);\n"
            "validation reports the student's plain cross-entropy.\n"
            "\n"
            "Sequence-level distillation (as DeepSeek's distilled models were made) is the other route:\n"
            "`frugal generate --model TEACHER --batch prompts.jsonl --out replies.jsonl`, then\n"
            "`frugal finetune --init STUDENT --data replies.jsonl`.\n"
            "\n"
            "Options:\n"
            "  --teacher DIR        the teacher model (without it: the top-k shards beside --data)\n"
            "  --topk K             teacher logits kept per position (default 32)\n"
            "  --temperature T      softening temperature (default 2; dump-teacher: the one the run will use)\n"
            "  --alpha A            weight of the distillation term, in [0, 1] (default 0.5)\n"
            "  --seq T              (dump-teacher) the window length the run will use\n"
            "  --ledger FILE        (dump-teacher) record the dump in this ledger (kind teacher-topk), so\n"
            "                       `frugal cost` counts it in the distilled model's lifecycle cost\n"
            "  --threads N          (dump-teacher) CPU threads\n"
            "  -h, --help           show this help\n");
}

static int progress_cb(void *user, double frac) {
    cli_progress_update(user, frac);
    return cli_stop_signal() != 0;
}

static int dump_teacher(int argc, char **argv) {
    const char *teacher = NULL, *data = NULL, *seq_text = NULL, *topk_text = "32", *temp_text = "2", *ledger = NULL,
               *threads_text = NULL;
    const cli_opt opts[] = {{"--teacher", &teacher, NULL},      {"--data", &data, NULL},
                            {"--seq", &seq_text, NULL},         {"--topk", &topk_text, NULL},
                            {"--temperature", &temp_text, NULL}, {"--ledger", &ledger, NULL},
                            {"--threads", &threads_text, NULL}};
    for (int i = 1; i < argc; i++) {
        int r;
        if (cli_is_help(argv[i])) {
            usage_distill(stdout);
            return CLI_EXIT_OK;
        }
        if ((r = cli_opt_match("distill", usage_distill, argc, argv, &i, opts, CLI_N_OPTS(opts))) != 0) {
            if (r < 0) return CLI_EXIT_USAGE;
            continue;
        }
        return cli_usage_error("distill", usage_distill, "%s '%s'", argv[i][0] == '-' ? "unknown option" : "unexpected argument",
                               argv[i]);
    }
    if (!teacher || !data || !seq_text)
        return cli_usage_error("distill", usage_distill, "dump-teacher needs --teacher, --data and --seq");
    long seq, topk, threads = 0;
    double temperature;
    if (threads_text && cli_parse_int("distill", usage_distill, "--threads", threads_text, 1, 4096, &threads) != 0)
        return CLI_EXIT_USAGE;
    if (cli_parse_int("distill", usage_distill, "--seq", seq_text, 2, 1 << 20, &seq) != 0 ||
        cli_parse_int("distill", usage_distill, "--topk", topk_text, 1, 1 << 20, &topk) != 0 ||
        cli_parse_double("distill", usage_distill, "--temperature", temp_text, 1e-3, 1e3, &temperature) != 0)
        return CLI_EXIT_USAGE;
    if (cli_check_dir(data, "data folder") != CLI_EXIT_OK) return CLI_EXIT_FAIL;
    if (threads > 0) fr_set_num_threads((int)threads);
    cli_progress pb;
    cli_progress_start(&pb, "teacher top-k", 0, NULL);
    const double t0 = cli_now();
    cli_ledger_job job; /* the teacher's forward over the data is part of what distillation costs */
    cli_ledger_job_begin(&job, ledger, "teacher-topk", data, teacher, fr_num_threads());
    if (fr_distill_dump_teacher(teacher, data, (int)seq, (int)topk, (float)temperature, progress_cb, &pb) != FR_OK) {
        cli_progress_abort(&pb);
        cli_ledger_job_end(&job, cli_stop_signal() ? "interrupted" : "failed", 0);
        return cli_fail_lib("cannot write the teacher's top-k shards");
    }
    cli_progress_finish(&pb);
    fr_dataset *ds = NULL;
    const double tokens = fr_dataset_open(&ds, data, "train") == FR_OK ? (double)fr_dataset_num_tokens(ds) : 0;
    fr_dataset_close(ds);
    cli_ledger_job_end(&job, "finished", tokens);
    printf("wrote the top-%ld logits of %s (and their log-sum-exp at T = %g) for windows of %ld tokens beside the shards "
           "of %s (%.1f s)\n", topk, teacher, temperature, seq, data, cli_now() - t0);
    return CLI_EXIT_OK;
}

int cmd_distill(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "dump-teacher")) return dump_teacher(argc - 1, argv + 1);
    /* the distillation options become `frugal train` options; everything else passes through */
    char **rest = calloc((size_t)argc + 4, sizeof *rest);
    if (!rest) return cli_fail("out of memory");
    int nr = 0, have_topk = 0, resume = 0;
    rest[nr++] = "train";
    static const char *const map[][2] = {{"--topk", "--distill-topk"},
                                         {"--temperature", "--distill-temperature"},
                                         {"--alpha", "--distill-alpha"}};
    for (int i = 1; i < argc; i++) {
        if (cli_is_help(argv[i])) {
            usage_distill(stdout);
            free(rest);
            return CLI_EXIT_OK;
        }
        const char *s = argv[i];
        for (int k = 0; k < 3; k++)
            if (!strcmp(s, map[k][0])) s = map[k][1], have_topk |= k == 0;
        resume |= !strcmp(s, "--resume");
        rest[nr++] = (char *)s;
    }
    if (!have_topk && !resume) { /* the default top-k */
        rest[nr++] = "--distill-topk";
        rest[nr++] = "32";
    }
    const int rc = cmd_train(nr, rest);
    free(rest);
    return rc;
}
