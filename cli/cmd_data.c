/* cmd_data.c — `frugal data prepare` (text → token shards) and `frugal data info` (inspect and
 * validate a prepared dataset). */
#include "cli.h"

#include "frugal.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static void usage_data_prepare(FILE *f) {
    fprintf(f,
            "usage: frugal data prepare --tokenizer DIR --input FILE|DIR [--input ...] --output DIR\n"
            "                           [--val-fraction F] [--shard-tokens N] [--threads N] [--force]\n"
            "                           [--json] [--quiet]\n"
            "\n"
            "Tokenizes text into binary token shards (train_00000.bin, val_00000.bin, ...) plus\n"
            "meta.json and a copy of the tokenizer in DIR. Each document is followed by the\n"
            "tokenizer's end-of-text (EOS) token. Documents go to the validation split by a hash of\n"
            "their bytes, so the split and the output bytes do not depend on --threads.\n"
            "The output is built in DIR.tmp-PID and renamed at the end; on failure or Ctrl-C\n"
            "nothing is left behind.\n"
            "\n"
            "Options:\n"
            "  --tokenizer DIR     tokenizer folder (tokenizer.json [+ tokenizer_config.json])\n"
            "  --input PATH        a text file (one document), a .jsonl file (one document per line,\n"
            "                      its \"text\" field) or a folder (recursed, sorted by name, hidden\n"
            "                      entries skipped); repeat for several inputs\n"
            "  --output DIR        output folder; must not exist or be empty (see --force)\n"
            "  --val-fraction F    fraction of documents for validation, in [0, 1] (default 0.01)\n"
            "  --shard-tokens N    tokens per shard (default 100000000)\n"
            "  --threads N         encoding threads (default: all cores)\n"
            "  --force             replace DIR if it already holds a prepared dataset (only after\n"
            "                      the new one is complete)\n"
            "  --json              print the result as one JSON object\n"
            "  --quiet             no progress bar\n"
            "  -h, --help          show this help\n"
            "\n"
            "Format and split rule: docs/data.md. Default corpus: `make corpus` (King James Bible).\n");
}

static void usage_data_info(FILE *f) {
    fprintf(f,
            "usage: frugal data info DIR [--json]\n"
            "\n"
            "Prints the splits of the prepared dataset DIR (tokens, documents, shards), the shard\n"
            "header fields and meta.json, and validates it: every shard's header (magic, version,\n"
            "width), its size against the token count, the token ids against the vocabulary, and\n"
            "the token and document counts against meta.json. Exits 1 if anything is wrong.\n"
            "\n"
            "Options:\n"
            "  --json          print one JSON object\n"
            "  -h, --help      show this help\n");
}

void usage_data(FILE *f) {
    fprintf(f,
            "usage: frugal data <prepare|info> [options]\n"
            "\n"
            "  prepare    tokenize text files / JSONL / folders into token shards\n"
            "  info       show and validate a prepared dataset\n"
            "\n"
            "Run `frugal data prepare --help` or `frugal data info --help` for their options.\n");
}

/* ------------------------------------------------------------------ prepare */

typedef struct {
    cli_progress bar;
} prep_ctx;

static int prep_progress(void *user, double frac, const char *phase) {
    prep_ctx *c = user;
    (void)phase;
    cli_progress_update(&c->bar, frac);
    return cli_stop_signal() != 0; /* Ctrl-C / SIGTERM taken by cli_signals.c: cancel */
}

static int input_bytes(const char *path, double *total);

static int cmd_data_prepare(int argc, char **argv) {
    const char *cmd = "data prepare";
    const char *tok_dir = NULL, *out_dir = NULL, *val_text = NULL, *shard_text = NULL, *threads_text = NULL;
    const char **inputs = calloc((size_t)argc + 1, sizeof *inputs);
    int n_inputs = 0, force = 0, json = 0, quiet = 0;
    if (!inputs) return cli_fail("out of memory");
    int rc = CLI_EXIT_OK;
    const cli_opt opts[] = {
        {"--tokenizer", &tok_dir, NULL}, {"--output", &out_dir, NULL},
        {"--val-fraction", &val_text, NULL}, {"--shard-tokens", &shard_text, NULL},
        {"--threads", &threads_text, NULL}, {"--force", NULL, &force},
        {"--json", NULL, &json}, {"--quiet", NULL, &quiet},
    };
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        int r;
        if (cli_is_help(a)) {
            usage_data_prepare(stdout);
            free(inputs);
            return CLI_EXIT_OK;
        }
        if ((r = cli_opt_match(cmd, usage_data_prepare, argc, argv, &i, opts, CLI_N_OPTS(opts))) != 0) {
            if (r < 0) goto usage;
        } else if ((r = cli_opt_value(cmd, usage_data_prepare, argc, argv, &i, "--input", &v)) != 0) {
            /* repeatable: each --input appends to the list */
            if (r < 0) goto usage;
            inputs[n_inputs++] = v;
        } else if (a[0] == '-') {
            rc = cli_usage_error(cmd, usage_data_prepare, "unknown option '%s'", a);
            goto out;
        } else {
            rc = cli_usage_error(cmd, usage_data_prepare, "unexpected argument '%s' (inputs need --input)", a);
            goto out;
        }
    }
    double val_fraction = 0.01;
    long shard_tokens = 0, threads = 0;
    if (val_text && cli_parse_double(cmd, usage_data_prepare, "--val-fraction", val_text, 0.0, 1.0, &val_fraction) != 0)
        goto usage;
    if (shard_text && cli_parse_int(cmd, usage_data_prepare, "--shard-tokens", shard_text, 1, LONG_MAX, &shard_tokens))
        goto usage;
    if (threads_text && cli_parse_int(cmd, usage_data_prepare, "--threads", threads_text, 1, 4096, &threads)) goto usage;
    if (!tok_dir) {
        rc = cli_usage_error(cmd, usage_data_prepare, "missing required option '--tokenizer DIR'");
        goto out;
    }
    if (n_inputs == 0) {
        rc = cli_usage_error(cmd, usage_data_prepare, "missing required option '--input FILE|DIR'");
        goto out;
    }
    if (!out_dir) {
        rc = cli_usage_error(cmd, usage_data_prepare, "missing required option '--output DIR'");
        goto out;
    }

    double total_bytes = 0;
    for (int i = 0; i < n_inputs; i++) input_bytes(inputs[i], &total_bytes);

    prep_ctx ctx;
    cli_progress_start(&ctx.bar, "tokenizing", total_bytes, "B");
    ctx.bar.quiet = quiet;
    fr_data_prepare_options opt = {
        .tokenizer_dir = tok_dir,
        .inputs = inputs,
        .n_inputs = n_inputs,
        .output_dir = out_dir,
        .val_fraction = val_fraction,
        .shard_tokens = (uint64_t)shard_tokens,
        .num_threads = (int)threads,
        .progress = prep_progress,
        .progress_user = &ctx,
    };
    /* Ctrl-C / SIGTERM: the progress callback cancels, the library removes its temporary
     * folder. A second one ends the process at once (cli_signals.c). */
    cli_signals_catch("frugal data prepare", "cancelling, removing the temporary files");
    fr_data_stats st;
    double t0 = cli_now();
    int lib = force ? fr_data_prepare_replace(&opt, &st) : fr_data_prepare(&opt, &st);
    double secs = cli_now() - t0;
    cli_signals_default();
    if (lib != FR_OK) {
        cli_progress_abort(&ctx.bar);
        if (cli_stop_signal()) {
            fprintf(stderr, "frugal: error: interrupted; %s was not written (temporary files removed)\n", out_dir);
            rc = cli_stop_exit_code();
        } else {
            rc = cli_fail_lib("data preparation failed");
        }
        goto out;
    }
    cli_progress_finish(&ctx.bar);
    double mbps = secs > 0 ? (double)st.bytes_in / 1e6 / secs : 0.0;
    if (json) {
        printf("{\"command\": \"data prepare\", \"output\": ");
        cli_json_string(stdout, out_dir);
        printf(", \"train_tokens\": %llu, \"val_tokens\": %llu, \"train_docs\": %llu, \"val_docs\": %llu, "
               "\"bytes_in\": %llu, \"seconds\": ",
               (unsigned long long)st.train_tokens, (unsigned long long)st.val_tokens,
               (unsigned long long)st.train_docs, (unsigned long long)st.val_docs, (unsigned long long)st.bytes_in);
        cli_json_number(stdout, secs);
        printf(", \"mb_per_s\": ");
        cli_json_number(stdout, mbps);
        printf("}\n");
    } else {
        char b1[32], b2[32];
        printf("prepared %s\n", out_dir);
        printf("  train  %llu tokens  %llu docs\n", (unsigned long long)st.train_tokens,
               (unsigned long long)st.train_docs);
        printf("  val    %llu tokens  %llu docs\n", (unsigned long long)st.val_tokens, (unsigned long long)st.val_docs);
        printf("  input  %s in %.2f s (%.2f MB/s, %s tokens/s)\n", cli_human_bytes(b1, sizeof b1, (double)st.bytes_in),
               secs, mbps,
               cli_human_count(b2, sizeof b2, secs > 0 ? (double)(st.train_tokens + st.val_tokens) / secs : 0));
    }
    if (fflush(stdout) != 0) rc = cli_fail("cannot write the result: %s", strerror(errno));
out:
    free(inputs);
    return rc;
usage:
    free(inputs);
    return CLI_EXIT_USAGE;
}

/* Sum of the sizes of the regular files under path (for the progress rate). */
static int input_bytes_rec(const char *path, double *total, int depth) {
    struct stat st;
    if (depth > 64 || lstat(path, &st) != 0) return 0;
    if (S_ISLNK(st.st_mode)) {
        if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) return 0;
    }
    if (S_ISREG(st.st_mode)) {
        *total += (double)st.st_size;
        return 0;
    }
    if (!S_ISDIR(st.st_mode)) return 0;
    DIR *d = opendir(path);
    if (!d) return 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        size_t n = strlen(path) + strlen(e->d_name) + 2;
        char *p = malloc(n);
        if (!p) break;
        snprintf(p, n, "%s/%s", path, e->d_name);
        input_bytes_rec(p, total, depth + 1);
        free(p);
    }
    closedir(d);
    return 0;
}

static int input_bytes(const char *path, double *total) {
    struct stat st;
    if (stat(path, &st) != 0) return 0;
    if (S_ISREG(st.st_mode)) {
        *total += (double)st.st_size;
        return 0;
    }
    return input_bytes_rec(path, total, 0);
}

/* ------------------------------------------------------------------ info */

static double meta_num(const cJSON *obj, const char *key) {
    const cJSON *j = obj ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL;
    return cJSON_IsNumber(j) ? j->valuedouble : NAN;
}

typedef struct {
    const char *name;
    int present;          /* opened (meta lists tokens > 0) */
    uint64_t tokens, docs, eot_count;
    double meta_tokens, meta_docs;
    int n_shards;
    int last_is_eot;
} split_info;

/* Open a split, scan all its tokens (range check by the library, count end-of-text tokens). */
static int scan_split(const char *dir, split_info *s, fr_dataset **out) {
    fr_dataset *ds = NULL;
    if (fr_dataset_open(&ds, dir, s->name) != FR_OK) return cli_fail_lib("cannot open the dataset");
    s->present = 1;
    s->tokens = fr_dataset_num_tokens(ds);
    s->n_shards = fr_dataset_num_shards(ds);
    int eot = fr_dataset_eot_id(ds);
    size_t chunk = 1 << 20;
    int *buf = malloc(chunk * sizeof *buf);
    if (!buf) {
        fr_dataset_close(ds);
        return cli_fail("out of memory");
    }
    for (uint64_t pos = 0; pos < s->tokens;) {
        size_t k = (size_t)(s->tokens - pos < chunk ? s->tokens - pos : chunk);
        if (fr_dataset_read(ds, pos, buf, k) != FR_OK) {
            free(buf);
            fr_dataset_close(ds);
            return cli_fail_lib("cannot read the dataset");
        }
        for (size_t i = 0; i < k; i++) s->eot_count += buf[i] == eot;
        s->last_is_eot = buf[k - 1] == eot;
        pos += k;
    }
    free(buf);
    s->docs = s->eot_count;
    *out = ds;
    return CLI_EXIT_OK;
}

static int cmd_data_info(int argc, char **argv) {
    const char *cmd = "data info";
    const char *dir = NULL;
    int json = 0;
    const cli_opt opts[] = {{"--json", NULL, &json}};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int r;
        if (cli_is_help(a)) {
            usage_data_info(stdout);
            return CLI_EXIT_OK;
        }
        if ((r = cli_opt_match(cmd, usage_data_info, argc, argv, &i, opts, CLI_N_OPTS(opts))) != 0) {
            if (r < 0) return CLI_EXIT_USAGE;
        } else if (a[0] == '-') {
            return cli_usage_error(cmd, usage_data_info, "unknown option '%s'", a);
        } else if (dir) {
            return cli_usage_error(cmd, usage_data_info, "unexpected argument '%s' (one folder only)", a);
        } else {
            dir = a;
        }
    }
    if (!dir) return cli_usage_error(cmd, usage_data_info, "missing the dataset folder DIR");
    int rc = cli_check_dir(dir, "dataset folder");
    if (rc != CLI_EXIT_OK) return rc;

    size_t plen = strlen(dir) + 16;
    char *meta_path = malloc(plen);
    if (!meta_path) return cli_fail("out of memory");
    snprintf(meta_path, plen, "%s/meta.json", dir);
    FILE *mf = fopen(meta_path, "rb");
    if (!mf) {
        rc = cli_fail("%s is not a prepared dataset: cannot open %s: %s", dir, meta_path, strerror(errno));
        free(meta_path);
        return rc;
    }
    char *text = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (cap - len < 4096) {
            cap = cap ? 2 * cap : 65536;
            char *t = realloc(text, cap);
            if (!t) break;
            text = t;
        }
        size_t got = fread(text + len, 1, cap - len - 1, mf);
        if (got == 0) break;
        len += got;
    }
    fclose(mf);
    cJSON *meta = text ? cJSON_ParseWithLength(text, len) : NULL;
    free(text);
    if (!meta) {
        rc = cli_fail("%s: not valid JSON", meta_path);
        free(meta_path);
        return rc;
    }
    const cJSON *splits = cJSON_GetObjectItemCaseSensitive(meta, "splits");
    split_info sp[2] = {{.name = "train"}, {.name = "val"}};
    fr_dataset *ds[2] = {NULL, NULL};
    const char *problem = NULL;
    char problem_buf[512];
    for (int s = 0; s < 2 && rc == CLI_EXIT_OK; s++) {
        const cJSON *o = cJSON_IsObject(splits) ? cJSON_GetObjectItemCaseSensitive(splits, sp[s].name) : NULL;
        sp[s].meta_tokens = meta_num(o, "tokens");
        sp[s].meta_docs = meta_num(o, "docs");
        if (!o || !isfinite(sp[s].meta_tokens) || !isfinite(sp[s].meta_docs)) {
            rc = cli_fail("%s: no valid entry for split '%s'", meta_path, sp[s].name);
            break;
        }
        if (sp[s].meta_tokens == 0) continue; /* empty split: no shards */
        rc = scan_split(dir, &sp[s], &ds[s]);
        if (rc != CLI_EXIT_OK) break;
        if ((double)sp[s].docs != sp[s].meta_docs) {
            snprintf(problem_buf, sizeof problem_buf,
                     "split '%s': %llu end-of-text tokens (documents) but meta.json lists %.0f docs", sp[s].name,
                     (unsigned long long)sp[s].docs, sp[s].meta_docs);
            problem = problem_buf;
        } else if (!sp[s].last_is_eot) {
            snprintf(problem_buf, sizeof problem_buf, "split '%s' does not end with the end-of-text token",
                     sp[s].name);
            problem = problem_buf;
        }
    }
    if (rc == CLI_EXIT_OK && !problem && sp[0].meta_tokens == 0 && sp[1].meta_tokens == 0) problem = "both splits are empty";

    if (rc == CLI_EXIT_OK) {
        const fr_dataset *any = ds[0] ? ds[0] : ds[1];
        double vocab = meta_num(meta, "vocab_size"), eot = meta_num(meta, "eot_id");
        double width = meta_num(meta, "token_width");
        const cJSON *eot_tok = cJSON_GetObjectItemCaseSensitive(meta, "eot_token");
        const cJSON *inputs = cJSON_GetObjectItemCaseSensitive(meta, "inputs");
        if (any && !problem && ((double)fr_dataset_token_width(any) != width))
            problem = "meta.json token_width differs from the shard headers";
        if (json) {
            printf("{\"command\": \"data info\", \"dir\": ");
            cli_json_string(stdout, dir);
            printf(", \"format_version\": ");
            cli_json_number(stdout, meta_num(meta, "format_version"));
            printf(", \"vocab_size\": ");
            cli_json_number(stdout, vocab);
            printf(", \"eot_id\": ");
            cli_json_number(stdout, eot);
            printf(", \"token_width\": ");
            cli_json_number(stdout, width);
            printf(", \"val_fraction\": ");
            cli_json_number(stdout, meta_num(meta, "val_fraction"));
            printf(", \"bytes_in\": ");
            cli_json_number(stdout, meta_num(meta, "bytes_in"));
            for (int s = 0; s < 2; s++) {
                printf(", \"%s\": {\"tokens\": %llu, \"docs\": %llu, \"shards\": [", sp[s].name,
                       (unsigned long long)sp[s].tokens, (unsigned long long)sp[s].docs);
                for (int i = 0; ds[s] && i < sp[s].n_shards; i++) {
                    const char *path = NULL;
                    uint64_t n = 0;
                    fr_dataset_shard_info(ds[s], i, &path, &n);
                    printf("%s{\"path\": ", i ? ", " : "");
                    cli_json_string(stdout, path);
                    printf(", \"tokens\": %llu}", (unsigned long long)n);
                }
                printf("]}");
            }
            printf(", \"valid\": %s", problem ? "false" : "true");
            if (problem) {
                printf(", \"problem\": ");
                cli_json_string(stdout, problem);
            }
            printf("}\n");
        } else {
            char b1[32];
            printf("dataset %s\n", dir);
            printf("  format       frugal-token-shards v%.0f, token width %.0f bytes\n",
                   meta_num(meta, "format_version"), width);
            printf("  vocab size   %.0f\n", vocab);
            printf("  end of text  id %.0f", eot);
            if (cJSON_IsString(eot_tok)) {
                printf(" ");
                cli_json_string(stdout, eot_tok->valuestring);
            }
            printf("\n  val fraction %g   shard tokens %.0f\n", meta_num(meta, "val_fraction"),
                   meta_num(meta, "shard_tokens"));
            printf("  inputs      ");
            for (int i = 0; cJSON_IsArray(inputs) && i < cJSON_GetArraySize(inputs); i++) {
                const cJSON *e = cJSON_GetArrayItem(inputs, i);
                if (cJSON_IsString(e)) printf(" %s", e->valuestring);
            }
            double nf = meta_num(meta, "input_files");
            printf("  (%.0f file%s, %s)\n", nf, nf == 1 ? "" : "s",
                   cli_human_bytes(b1, sizeof b1, meta_num(meta, "bytes_in")));
            for (int s = 0; s < 2; s++) {
                printf("  %-5s  %llu tokens  %llu docs  %d shard%s\n", sp[s].name, (unsigned long long)sp[s].tokens,
                       (unsigned long long)sp[s].docs, sp[s].n_shards, sp[s].n_shards == 1 ? "" : "s");
                for (int i = 0; ds[s] && i < sp[s].n_shards; i++) {
                    const char *path = NULL;
                    uint64_t n = 0;
                    fr_dataset_shard_info(ds[s], i, &path, &n);
                    const char *base = strrchr(path, '/');
                    printf("           %s  %llu tokens  (header: FRUGALTK v1, width %d, vocab %d, eot %d)\n",
                           base ? base + 1 : path, (unsigned long long)n, fr_dataset_token_width(ds[s]),
                           fr_dataset_vocab_size(ds[s]), fr_dataset_eot_id(ds[s]));
                }
            }
            if (problem) printf("  validation   FAILED: %s\n", problem);
            else printf("  validation   ok (headers, file sizes, token ids < vocab, counts match meta.json)\n");
        }
        if (problem) rc = cli_fail("%s: %s", dir, problem);
    }
    for (int s = 0; s < 2; s++) fr_dataset_close(ds[s]);
    cJSON_Delete(meta);
    free(meta_path);
    return rc;
}

int cmd_data(int argc, char **argv) {
    if (argc < 2) {
        usage_data(stderr);
        return CLI_EXIT_USAGE;
    }
    const char *sub = argv[1];
    if (cli_is_help(sub)) {
        usage_data(stdout);
        return CLI_EXIT_OK;
    }
    if (strcmp(sub, "prepare") == 0) return cmd_data_prepare(argc - 1, argv + 1);
    if (strcmp(sub, "info") == 0) return cmd_data_info(argc - 1, argv + 1);
    return cli_usage_error("data", usage_data, "unknown subcommand '%s'", sub);
}
