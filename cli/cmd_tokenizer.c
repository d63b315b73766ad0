/* cmd_tokenizer.c — `frugal tokenizer train|encode|decode`: byte-level BPE from the command line. */
#include "cli.h"

#include "frugal.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void usage_tok_train(FILE *f) {
    fprintf(f,
            "usage: frugal tokenizer train --vocab-size N --input FILE... --output DIR\n"
            "                              [--special TOKEN ...] [--bos T] [--eos T] [--pad T]\n"
            "                              [--min-frequency N] [--threads N] [--force] [--quiet]\n"
            "\n"
            "Trains a byte-level BPE tokenizer (Hugging Face tokenizer.json compatible) on text\n"
            "files (.jsonl files: the \"text\" field of each line) and writes tokenizer.json and\n"
            "tokenizer_config.json into DIR.\n"
            "\n"
            "Options:\n"
            "  --vocab-size N       total ids: 256 byte tokens + merges + special tokens\n"
            "  --input FILE...      training files; several may follow one --input, or repeat it\n"
            "  --output DIR         output folder (created if missing)\n"
            "  --special TOKEN...   special tokens, ids 0.. in this order (default: the DeepSeek set)\n"
            "  --bos/--eos/--pad T  which special tokens play these roles (default: the library's)\n"
            "  --min-frequency N    do not merge pairs seen fewer than N times (default: no limit)\n"
            "  --threads N          threads (default: all cores)\n"
            "  --force              overwrite an existing DIR/tokenizer.json\n"
            "  --quiet              no progress bar\n"
            "  -h, --help           show this help\n");
}

static void usage_tok_encode(FILE *f) {
    fprintf(f,
            "usage: frugal tokenizer encode --tokenizer DIR [--text STR | --file F] [--json]\n"
            "                               [--no-special]\n"
            "\n"
            "Prints the token ids of the text (from --text, --file, or standard input when neither\n"
            "is given), separated by spaces on one line.\n"
            "\n"
            "Options:\n"
            "  --tokenizer DIR  tokenizer folder (or a tokenizer.json file)\n"
            "  --text STR       the text to encode\n"
            "  --file F         encode the bytes of file F\n"
            "  --json           print {\"ids\": [...], \"n_tokens\": N}\n"
            "  --no-special     encode special-token strings as plain text (default: they become\n"
            "                   their ids, as Hugging Face tokenizers do)\n"
            "  -h, --help       show this help\n");
}

static void usage_tok_decode(FILE *f) {
    fprintf(f,
            "usage: frugal tokenizer decode --tokenizer DIR --ids \"1 2 3\" [--skip-special]\n"
            "\n"
            "Prints the text of the token ids (separated by spaces, commas or newlines). The bytes\n"
            "are written exactly; a newline is added only when standard output is a terminal.\n"
            "\n"
            "Options:\n"
            "  --tokenizer DIR  tokenizer folder (or a tokenizer.json file)\n"
            "  --ids LIST       token ids, each in [0, vocab size)\n"
            "  --skip-special   drop special tokens\n"
            "  -h, --help       show this help\n");
}

void usage_tokenizer(FILE *f) {
    fprintf(f,
            "usage: frugal tokenizer <train|encode|decode> [options]\n"
            "\n"
            "  train      train a byte-level BPE tokenizer on text / JSONL files\n"
            "  encode     print the token ids of a text\n"
            "  decode     print the text of token ids\n"
            "\n"
            "Run `frugal tokenizer <subcommand> --help` for its options.\n");
}

/* ------------------------------------------------------------------ train */

static int train_progress(void *user, double frac, const char *phase) {
    cli_progress *bar = user;
    if (phase && strcmp(phase, bar->label) != 0) cli_progress_set_label(bar, phase);
    cli_progress_update(bar, frac);
    return cli_stop_signal() != 0; /* Ctrl-C / SIGTERM taken by cli_signals.c: cancel */
}

/* Collect the values after option `name` (argv[*i]): "--name=V" gives one value, "--name"
 * takes every following argument up to the next one starting with "--". Returns 1 if argv[*i]
 * is this option, 0 if not, -1 on a usage error. */
static int opt_values(const char *cmd, void (*usage)(FILE *), int argc, char **argv, int *i, const char *name,
                      const char **vals, int *n) {
    const char *a = argv[*i];
    size_t len = strlen(name);
    if (strncmp(a, name, len) != 0) return 0;
    if (a[len] == '=') {
        if (!a[len + 1]) {
            cli_usage_error(cmd, usage, "option '%s' needs a value", name);
            return -1;
        }
        vals[(*n)++] = a + len + 1;
        return 1;
    }
    if (a[len] != 0) return 0;
    int got = 0;
    while (*i + 1 < argc && strncmp(argv[*i + 1], "--", 2) != 0) {
        vals[(*n)++] = argv[++*i];
        got++;
    }
    if (got == 0) {
        cli_usage_error(cmd, usage, "option '%s' needs a value", name);
        return -1;
    }
    return 1;
}

static int make_dirs(const char *path) {
    size_t n = strlen(path);
    char *p = malloc(n + 1);
    if (!p) return -1;
    memcpy(p, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (p[i] != '/' && p[i] != 0) continue;
        char c = p[i];
        p[i] = 0;
        if (mkdir(p, 0755) != 0 && errno != EEXIST) {
            free(p);
            return -1;
        }
        p[i] = c;
    }
    free(p);
    return 0;
}

static int cmd_tok_train(int argc, char **argv) {
    const char *cmd = "tokenizer train";
    const char **files = calloc((size_t)argc + 1, sizeof *files);
    const char **specials = calloc((size_t)argc + 1, sizeof *specials);
    const char *vocab_text = NULL, *out_dir = NULL, *minf_text = NULL, *threads_text = NULL;
    const char *bos = NULL, *eos = NULL, *pad = NULL;
    int n_files = 0, n_special = 0, force = 0, quiet = 0, rc = CLI_EXIT_USAGE;
    if (!files || !specials) {
        free(files);
        free(specials);
        return cli_fail("out of memory");
    }
    const cli_opt opts[] = {
        {"--vocab-size", &vocab_text, NULL}, {"--output", &out_dir, NULL},
        {"--min-frequency", &minf_text, NULL}, {"--threads", &threads_text, NULL},
        {"--bos", &bos, NULL}, {"--eos", &eos, NULL}, {"--pad", &pad, NULL},
        {"--force", NULL, &force}, {"--quiet", NULL, &quiet},
    };
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int r;
        if (cli_is_help(a)) {
            usage_tok_train(stdout);
            rc = CLI_EXIT_OK;
            goto out;
        }
        if ((r = opt_values(cmd, usage_tok_train, argc, argv, &i, "--input", files, &n_files)) != 0) {
            if (r < 0) goto out;
        } else if ((r = opt_values(cmd, usage_tok_train, argc, argv, &i, "--special", specials, &n_special)) != 0) {
            if (r < 0) goto out;
        } else if ((r = cli_opt_match(cmd, usage_tok_train, argc, argv, &i, opts, CLI_N_OPTS(opts))) != 0) {
            if (r < 0) goto out;
        } else if (a[0] == '-') {
            cli_usage_error(cmd, usage_tok_train, "unknown option '%s'", a);
            goto out;
        } else {
            cli_usage_error(cmd, usage_tok_train, "unexpected argument '%s'", a);
            goto out;
        }
    }
    long vocab = 0, minf = 0, threads = 0;
    if (!vocab_text) {
        cli_usage_error(cmd, usage_tok_train, "missing required option '--vocab-size N'");
        goto out;
    }
    if (cli_parse_int(cmd, usage_tok_train, "--vocab-size", vocab_text, 257, INT_MAX, &vocab)) goto out;
    if (minf_text && cli_parse_int(cmd, usage_tok_train, "--min-frequency", minf_text, 0, INT_MAX, &minf)) goto out;
    if (threads_text && cli_parse_int(cmd, usage_tok_train, "--threads", threads_text, 1, 4096, &threads)) goto out;
    if (n_files == 0) {
        cli_usage_error(cmd, usage_tok_train, "missing required option '--input FILE...'");
        goto out;
    }
    if (!out_dir) {
        cli_usage_error(cmd, usage_tok_train, "missing required option '--output DIR'");
        goto out;
    }
    rc = CLI_EXIT_OK;
    for (int i = 0; i < n_files; i++) {
        struct stat st;
        if (stat(files[i], &st) != 0) {
            rc = cli_fail("cannot read input %s: %s", files[i], strerror(errno));
            goto out;
        }
        if (!S_ISREG(st.st_mode)) {
            rc = cli_fail("input %s is not a regular file", files[i]);
            goto out;
        }
    }
    {
        size_t n = strlen(out_dir) + 32;
        char *tj = malloc(n);
        if (!tj) {
            rc = cli_fail("out of memory");
            goto out;
        }
        snprintf(tj, n, "%s/tokenizer.json", out_dir);
        struct stat st;
        int exists = stat(tj, &st) == 0;
        free(tj);
        if (exists && !force) {
            rc = cli_fail("%s/tokenizer.json already exists (use --force to overwrite it)", out_dir);
            goto out;
        }
    }

    fr_bpe_train_options opt;
    memset(&opt, 0, sizeof opt);
    opt.vocab_size = (int)vocab;
    opt.min_frequency = (int)minf;
    opt.special_tokens = n_special ? specials : NULL;
    opt.n_special = n_special;
    opt.bos_token = bos;
    opt.eos_token = eos;
    opt.pad_token = pad;
    opt.num_threads = (int)threads;
    cli_progress bar;
    cli_progress_start(&bar, "training", 0, NULL);
    bar.quiet = quiet;
    opt.progress = train_progress;
    opt.progress_user = &bar;

    /* Ctrl-C / SIGTERM: the progress callback cancels; a second one ends the process at once */
    cli_signals_catch("frugal tokenizer train", "cancelling");
    fr_tokenizer *tok = NULL;
    double t0 = cli_now();
    int st = fr_tokenizer_train(&tok, files, n_files, &opt);
    double secs = cli_now() - t0;
    cli_signals_default();
    if (st != FR_OK) {
        cli_progress_abort(&bar);
        if (cli_stop_signal()) {
            fprintf(stderr, "frugal: error: interrupted; nothing was written\n");
            rc = cli_stop_exit_code();
        } else {
            rc = cli_fail_lib("tokenizer training failed");
        }
        goto out;
    }
    cli_progress_finish(&bar);
    if (make_dirs(out_dir) != 0) {
        rc = cli_fail("cannot create folder %s: %s", out_dir, strerror(errno));
    } else if (fr_tokenizer_save(tok, out_dir) != FR_OK) {
        rc = cli_fail_lib("cannot save the tokenizer");
    } else {
        int eos_id = fr_tokenizer_special_id(tok, FR_TOKEN_EOS);
        printf("trained tokenizer %s: vocab size %d, eos id %d, %.2f s\n", out_dir, fr_tokenizer_vocab_size(tok),
               eos_id, secs);
        if (fflush(stdout) != 0) rc = cli_fail("cannot write the result: %s", strerror(errno));
    }
    fr_tokenizer_free(tok);
out:
    free(files);
    free(specials);
    return rc;
}

/* ------------------------------------------------------------------ encode / decode */

static char *read_stream(FILE *f, size_t *len) {
    size_t cap = 65536, n = 0;
    char *buf = malloc(cap);
    if (!buf) return NULL;
    for (;;) {
        if (cap - n < 4096) {
            char *b = realloc(buf, cap * 2);
            if (!b) {
                free(buf);
                return NULL;
            }
            buf = b;
            cap *= 2;
        }
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0) break;
    }
    if (ferror(f)) {
        free(buf);
        return NULL;
    }
    buf[n] = 0;
    *len = n;
    return buf;
}

static int cmd_tok_encode(int argc, char **argv) {
    const char *cmd = "tokenizer encode";
    const char *tok_path = NULL, *text = NULL, *file = NULL;
    int json = 0, no_special = 0;
    const cli_opt opts[] = {
        {"--tokenizer", &tok_path, NULL}, {"--file", &file, NULL},
        {"--json", NULL, &json}, {"--no-special", NULL, &no_special},
    };
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int r;
        if (cli_is_help(a)) {
            usage_tok_encode(stdout);
            return CLI_EXIT_OK;
        }
        if ((r = cli_opt_match(cmd, usage_tok_encode, argc, argv, &i, opts, CLI_N_OPTS(opts))) != 0) {
            if (r < 0) return CLI_EXIT_USAGE;
        } else if (strncmp(a, "--text", 6) == 0 && (a[6] == 0 || a[6] == '=')) {
            /* the text may itself start with "--": take the next argument as is */
            if (a[6] == '=') text = a + 7;
            else if (i + 1 < argc) text = argv[++i];
            else return cli_usage_error(cmd, usage_tok_encode, "option '--text' needs a value");
        } else if (a[0] == '-') {
            return cli_usage_error(cmd, usage_tok_encode, "unknown option '%s'", a);
        } else {
            return cli_usage_error(cmd, usage_tok_encode, "unexpected argument '%s' (use --text or --file)", a);
        }
    }
    if (!tok_path) return cli_usage_error(cmd, usage_tok_encode, "missing required option '--tokenizer DIR'");
    if (text && file) return cli_usage_error(cmd, usage_tok_encode, "give either --text or --file, not both");

    char *owned = NULL;
    size_t len = 0;
    if (text) {
        len = strlen(text);
    } else {
        FILE *f = file ? fopen(file, "rb") : stdin;
        if (!f) return cli_fail("cannot open %s: %s", file, strerror(errno));
        owned = read_stream(f, &len);
        if (file) fclose(f);
        if (!owned) return cli_fail("cannot read %s", file ? file : "standard input");
        text = owned;
    }
    fr_tokenizer *tok = NULL;
    int rc = CLI_EXIT_OK;
    int *ids = NULL;
    size_t n = 0;
    if (fr_tokenizer_load(&tok, tok_path) != FR_OK) {
        rc = cli_fail_lib("cannot load the tokenizer");
    } else if (fr_tokenizer_encode(tok, text, len, !no_special, &ids, &n) != FR_OK) {
        rc = cli_fail_lib("cannot encode the text");
    } else {
        if (json) printf("{\"ids\": [");
        for (size_t i = 0; i < n; i++) printf("%s%d", i ? (json ? ", " : " ") : "", ids[i]);
        if (json) printf("], \"n_tokens\": %zu}\n", n);
        else printf("\n");
        if (fflush(stdout) != 0) rc = cli_fail("cannot write the result: %s", strerror(errno));
    }
    free(ids);
    if (tok) fr_tokenizer_free(tok);
    free(owned);
    return rc;
}

static int cmd_tok_decode(int argc, char **argv) {
    const char *cmd = "tokenizer decode";
    const char *tok_path = NULL, *ids_text = NULL;
    int skip_special = 0;
    const cli_opt opts[] = {
        {"--tokenizer", &tok_path, NULL}, {"--ids", &ids_text, NULL}, {"--skip-special", NULL, &skip_special},
    };
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int r;
        if (cli_is_help(a)) {
            usage_tok_decode(stdout);
            return CLI_EXIT_OK;
        }
        if ((r = cli_opt_match(cmd, usage_tok_decode, argc, argv, &i, opts, CLI_N_OPTS(opts))) != 0) {
            if (r < 0) return CLI_EXIT_USAGE;
        } else if (a[0] == '-') {
            return cli_usage_error(cmd, usage_tok_decode, "unknown option '%s'", a);
        } else {
            return cli_usage_error(cmd, usage_tok_decode, "unexpected argument '%s'", a);
        }
    }
    if (!tok_path) return cli_usage_error(cmd, usage_tok_decode, "missing required option '--tokenizer DIR'");
    if (!ids_text) return cli_usage_error(cmd, usage_tok_decode, "missing required option '--ids LIST'");

    size_t cap = strlen(ids_text) / 2 + 1, n = 0;
    int *ids = malloc(cap * sizeof *ids);
    if (!ids) return cli_fail("out of memory");
    for (const char *p = ids_text; *p;) {
        if (*p == ' ' || *p == ',' || *p == '\t' || *p == '\n' || *p == '\r') {
            p++;
            continue;
        }
        const char *w = p;
        long v = 0;
        int ok = 1;
        while (*p && *p != ' ' && *p != ',' && *p != '\t' && *p != '\n' && *p != '\r') {
            if (*p < '0' || *p > '9' || v > INT_MAX / 10) ok = 0;
            else v = v * 10 + (*p - '0');
            p++;
        }
        if (!ok || v > INT_MAX) {
            free(ids);
            return cli_usage_error(cmd, usage_tok_decode, "'%.*s' is not a token id (expected a non-negative integer)",
                                   (int)(p - w > 40 ? 40 : p - w), w);
        }
        ids[n++] = (int)v;
    }
    fr_tokenizer *tok = NULL;
    int rc = CLI_EXIT_OK;
    char *text = NULL;
    size_t len = 0;
    if (fr_tokenizer_load(&tok, tok_path) != FR_OK) {
        rc = cli_fail_lib("cannot load the tokenizer");
        goto out;
    }
    int vocab = fr_tokenizer_vocab_size(tok);
    for (size_t i = 0; i < n; i++) {
        if (ids[i] >= vocab) {
            rc = cli_fail("token id %d is out of range (the tokenizer's vocab size is %d)", ids[i], vocab);
            goto out;
        }
    }
    if (fr_tokenizer_decode(tok, ids, n, skip_special, &text, &len) != FR_OK) {
        rc = cli_fail_lib("cannot decode the ids");
        goto out;
    }
    fwrite(text, 1, len, stdout);
    if (isatty(fileno(stdout))) fputc('\n', stdout);
    if (fflush(stdout) != 0) rc = cli_fail("cannot write the result: %s", strerror(errno));
out:
    free(text);
    free(ids);
    if (tok) fr_tokenizer_free(tok);
    return rc;
}

int cmd_tokenizer(int argc, char **argv) {
    if (argc < 2) {
        usage_tokenizer(stderr);
        return CLI_EXIT_USAGE;
    }
    const char *sub = argv[1];
    if (cli_is_help(sub)) {
        usage_tokenizer(stdout);
        return CLI_EXIT_OK;
    }
    if (strcmp(sub, "train") == 0) return cmd_tok_train(argc - 1, argv + 1);
    if (strcmp(sub, "encode") == 0) return cmd_tok_encode(argc - 1, argv + 1);
    if (strcmp(sub, "decode") == 0) return cmd_tok_decode(argc - 1, argv + 1);
    return cli_usage_error("tokenizer", usage_tokenizer, "unknown subcommand '%s'", sub);
}
