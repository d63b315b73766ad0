/* cmd_eval.c — `frugal eval`: mean next-token loss and perplexity on token sequences, with
 * the training forward or (--engine) the inference engine in a chosen weight format. */
#include "cli.h"

#include "frugal.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

void usage_eval(FILE *f) {
    fprintf(f,
            "usage: frugal eval --model DIR (--tokens FILE | --data DIR [--split S] [--seq T])\n"
            "                   [--engine [--weights TYPE] [--chunk N]] [--threads N] [--device cpu|cuda]\n"
            "                   [--no-check] [--json]\n"
            "\n"
            "Loads the Hugging Face model folder DIR (config.json + model.safetensors) and prints\n"
            "the mean next-token cross-entropy over the sequences in FILE:\n"
            "  loss <mean> ppl <exp(mean)> tokens <number of predicted tokens>\n"
            "By default the training forward computes it in FP32. With --engine the inference\n"
            "engine does (as `frugal generate`: weight format, its kernels and the KV cache), each\n"
            "sequence fed N tokens per call; it also reads folders written by `frugal quantize`.\n"
            "\n"
            "Options:\n"
            "  --model DIR     model folder (DeepSeek-V3 / V2 config.json and safetensors weights)\n"
            "  --tokens FILE   one sequence per line: whitespace-separated token ids, each in\n"
            "                  [0, vocab_size); at least 2 tokens per line; blank lines are skipped\n"
            "  --data DIR      or a prepared dataset: its split S (default val) in the trainer's windows\n"
            "                  of T predicted tokens (default 256): window w reads tokens w*T .. w*T+T\n"
            "  --engine        evaluate through the inference engine\n"
            "  --weights TYPE  engine weight storage: auto (as stored; the default), f32, bf16, q8_0, q4_1\n"
            "  --chunk N       engine: tokens per sequence per call (default 8; 1 = token-by-token\n"
            "                  decode, longer than the sequence = one prefill)\n"
            "  --threads N     CPU threads (default: OpenMP's default, i.e. OMP_NUM_THREADS or all cores)\n"
            "  --device D      cpu (default) | cuda: where the model (or with --engine the inference\n"
            "                  engine: FP32 weights on cuda) runs\n"
            "  --no-check      skip the load-time check that every weight is finite (NaN / Inf); the\n"
            "                  check reads all weights once (pages in the whole checkpoint at start-up)\n"
            "  --json          print one JSON object instead of the text line\n"
            "  -h, --help      show this help\n");
}

/* Token sequences read from a file, kept with their line numbers for error messages. */
typedef struct {
    int *ids;          /* all tokens, sequences back to back */
    size_t n_ids, cap_ids;
    size_t *start;     /* start[s]: first token of sequence s in ids */
    int *len;          /* len[s] */
    long *line;        /* line[s]: 1-based line number in the file */
    int n_seqs, cap_seqs;
} token_seqs;

static void seqs_free(token_seqs *t) {
    free(t->ids);
    free(t->start);
    free(t->len);
    free(t->line);
    memset(t, 0, sizeof *t);
}

static int push_id(token_seqs *t, int id) {
    if (t->n_ids == t->cap_ids) {
        size_t cap = t->cap_ids ? 2 * t->cap_ids : 4096;
        int *p = realloc(t->ids, cap * sizeof *p);
        if (!p) return -1;
        t->ids = p;
        t->cap_ids = cap;
    }
    t->ids[t->n_ids++] = id;
    return 0;
}

static int push_seq(token_seqs *t, size_t start, int len, long line) {
    if (t->n_seqs == INT_MAX) return -1;
    if (t->n_seqs == t->cap_seqs) {
        int cap = t->cap_seqs ? (t->cap_seqs > INT_MAX / 2 ? INT_MAX : 2 * t->cap_seqs) : 64;
        size_t *s = realloc(t->start, (size_t)cap * sizeof *s);
        if (!s) return -1;
        t->start = s;
        int *l = realloc(t->len, (size_t)cap * sizeof *l);
        if (!l) return -1;
        t->len = l;
        long *ln = realloc(t->line, (size_t)cap * sizeof *ln);
        if (!ln) return -1;
        t->line = ln;
        t->cap_seqs = cap;
    }
    t->start[t->n_seqs] = start;
    t->len[t->n_seqs] = len;
    t->line[t->n_seqs] = line;
    t->n_seqs++;
    return 0;
}

static int is_sep(int c) { return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f' || c == '\n'; }

/* Parse FILE. Syntax errors name the line; ids are range-checked later against the model. */
static int read_token_file(const char *path, token_seqs *t) {
    FILE *f = fopen(path, "r");
    if (!f) return cli_fail("cannot open tokens file %s: %s", path, strerror(errno));
    char *buf = NULL;
    size_t cap = 0;
    ssize_t got;
    long lineno = 0;
    int rc = CLI_EXIT_OK;
    while ((got = getline(&buf, &cap, f)) >= 0) {
        lineno++;
        if (memchr(buf, 0, (size_t)got)) {
            rc = cli_fail("%s: line %ld: contains a NUL byte (not a text file of token ids)", path, lineno);
            break;
        }
        size_t start = t->n_ids;
        int count = 0;
        const char *p = buf;
        while (*p) {
            while (*p && is_sep((unsigned char)*p)) p++;
            if (!*p) break;
            const char *w = p;
            while (*p && !is_sep((unsigned char)*p)) p++;
            int wlen = (int)(p - w);
            long v = 0;
            int ok = 1;
            for (const char *q = w; q < p; q++) {
                if (!isdigit((unsigned char)*q)) {
                    ok = 0;
                    break;
                }
                v = v * 10 + (*q - '0');
                if (v > INT_MAX) {
                    rc = cli_fail("%s: line %ld: token id '%.*s' is too large", path, lineno, wlen > 40 ? 40 : wlen,
                                  w);
                    goto done;
                }
            }
            if (!ok) {
                rc = cli_fail("%s: line %ld: '%.*s' is not a token id (expected a non-negative integer)", path,
                              lineno, wlen > 40 ? 40 : wlen, w);
                goto done;
            }
            if (push_id(t, (int)v) != 0) {
                rc = cli_fail("out of memory reading %s", path);
                goto done;
            }
            count++;
        }
        if (count == 0) continue; /* blank line */
        if (count < 2) {
            rc = cli_fail("%s: line %ld: a sequence needs at least 2 tokens (one input and one target), found %d",
                          path, lineno, count);
            goto done;
        }
        if (push_seq(t, start, count, lineno) != 0) {
            rc = cli_fail("out of memory reading %s", path);
            goto done;
        }
    }
    if (ferror(f)) rc = cli_fail("error reading %s: %s", path, strerror(errno));
    else if (t->n_seqs == 0) rc = cli_fail("%s: no token sequences (the file is empty or all its lines are blank)", path);
done:
    free(buf);
    fclose(f);
    return rc;
}

/* --data: a split of a prepared dataset in the trainer's windows (fr_eval_dataset, or through
 * the engine fr_engine_eval_dataset) */
static int eval_split(const char *model_dir, const char *data_dir, const char *split, int seq, int engine, int weights,
                      int chunk, int no_check, long threads, const char *device, int json) {
    if (cli_check_dir(model_dir, "model folder") != CLI_EXIT_OK || cli_check_dir(data_dir, "data folder") != CLI_EXIT_OK)
        return CLI_EXIT_FAIL;
    if (threads > 0) fr_set_num_threads((int)threads);
    if (device && fr_set_device(device) != FR_OK) return cli_fail_lib("cannot evaluate on this device");
    fr_model *m = NULL;
    fr_engine *e = NULL;
    double mean = 0;
    long n = 0;
    const double t0 = cli_now();
    int st;
    if (engine) {
        fr_engine_options o;
        fr_engine_options_default(&o);
        o.weight_type = weights;
        o.max_seq_len = seq;
        o.load_mtp = 0;
        o.no_check = no_check;
        st = fr_engine_load(&e, model_dir, &o);
        if (st == FR_OK) st = fr_engine_eval_dataset(e, data_dir, split, seq, chunk, 0, &mean, &n);
    } else {
        st = fr_model_load_flags(&m, model_dir, no_check ? FR_LOAD_NO_CHECK : 0);
        if (st == FR_OK) st = fr_eval_dataset(m, data_dir, split, seq, 8, 0, &mean, &n);
    }
    fr_model_free(m);
    fr_engine_free(e);
    if (st != FR_OK) return cli_fail_lib("evaluation failed");
    if (json) {
        printf("{\"command\": \"eval\", \"model\": ");
        cli_json_string(stdout, model_dir);
        printf(", \"data\": ");
        cli_json_string(stdout, data_dir);
        printf(", \"split\": ");
        cli_json_string(stdout, split);
        printf(", \"seq\": %d, \"tokens\": %ld, \"loss\": ", seq, n);
        cli_json_number(stdout, mean);
        printf(", \"ppl\": ");
        cli_json_number(stdout, exp(mean));
        printf(", \"seconds\": ");
        cli_json_number(stdout, cli_now() - t0);
        printf(", \"engine\": %s}\n", engine ? "true" : "false");
    } else {
        printf("loss %.6f ppl %.4f tokens %ld\n", mean, exp(mean), n);
    }
    return CLI_EXIT_OK;
}

int cmd_eval(int argc, char **argv) {
    const char *model_dir = NULL, *tokens_path = NULL, *threads_text = NULL, *weights_text = NULL, *chunk_text = NULL,
               *device = NULL, *data_dir = NULL, *split = "val", *seq_text = "256";
    int json = 0, engine = 0, no_check = 0;
    const cli_opt opts[] = {
        {"--model", &model_dir, NULL}, {"--tokens", &tokens_path, NULL}, {"--threads", &threads_text, NULL},
        {"--weights", &weights_text, NULL}, {"--chunk", &chunk_text, NULL}, {"--device", &device, NULL},
        {"--engine", NULL, &engine}, {"--json", NULL, &json}, {"--no-check", NULL, &no_check},
        {"--data", &data_dir, NULL}, {"--split", &split, NULL}, {"--seq", &seq_text, NULL},
    };
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int r;
        if (cli_is_help(a)) {
            usage_eval(stdout);
            return CLI_EXIT_OK;
        }
        if ((r = cli_opt_match("eval", usage_eval, argc, argv, &i, opts, CLI_N_OPTS(opts))) != 0) {
            if (r < 0) return CLI_EXIT_USAGE;
        } else if (a[0] == '-') {
            return cli_usage_error("eval", usage_eval, "unknown option '%s'", a);
        } else {
            return cli_usage_error("eval", usage_eval, "unexpected argument '%s'", a);
        }
    }
    long threads = 0;
    if (threads_text && cli_parse_int("eval", usage_eval, "--threads", threads_text, 1, 4096, &threads) != 0)
        return CLI_EXIT_USAGE;
    long chunk = 8;
    if (chunk_text && cli_parse_int("eval", usage_eval, "--chunk", chunk_text, 1, 1 << 20, &chunk) != 0)
        return CLI_EXIT_USAGE;
    int weights = -1; /* as stored */
    if (weights_text && cli_parse_weights("eval", usage_eval, weights_text, &weights) != 0) return CLI_EXIT_USAGE;
    if ((weights_text || chunk_text) && !engine)
        return cli_usage_error("eval", usage_eval, "--weights / --chunk need --engine");
    if (device && strcmp(device, "cpu") != 0 && strcmp(device, "cuda") != 0)
        return cli_usage_error("eval", usage_eval, "--device must be cpu or cuda, got '%s'", device);
    if (!model_dir) return cli_usage_error("eval", usage_eval, "missing required option '--model DIR'");
    if (!tokens_path == !data_dir) return cli_usage_error("eval", usage_eval, "give one of --tokens FILE and --data DIR");
    long seq = 256;
    if (cli_parse_int("eval", usage_eval, "--seq", seq_text, 2, 1 << 20, &seq) != 0) return CLI_EXIT_USAGE;
    if (data_dir) return eval_split(model_dir, data_dir, split, (int)seq, engine, weights, (int)chunk, no_check, threads, device, json);

    token_seqs seqs = {0};
    fr_model *m = NULL;
    fr_engine *e = NULL;
    const int **ptrs = NULL;
    int rc = read_token_file(tokens_path, &seqs);
    if (rc != CLI_EXIT_OK) goto out;
    rc = cli_check_dir(model_dir, "model folder");
    if (rc != CLI_EXIT_OK) goto out;

    if (threads > 0) fr_set_num_threads((int)threads);
    if (device && fr_set_device(device) != FR_OK) {
        rc = cli_fail_lib("cannot evaluate on this device");
        goto out;
    }
    double t0 = cli_now();
    if (engine) {
        int longest = 0;
        for (int s = 0; s < seqs.n_seqs; s++)
            if (seqs.len[s] > longest) longest = seqs.len[s];
        fr_engine_options o;
        fr_engine_options_default(&o);
        o.weight_type = weights;
        o.max_seq_len = longest - 1; /* the context the longest sequence needs, whatever the config says */
        o.load_mtp = 0;              /* only the main head is scored */
        o.no_check = no_check;
        if (fr_engine_load(&e, model_dir, &o) != FR_OK) {
            rc = cli_fail_lib("cannot load the model into the inference engine");
            goto out;
        }
    } else if (fr_model_load_flags(&m, model_dir, no_check ? FR_LOAD_NO_CHECK : 0) != FR_OK) {
        rc = cli_fail_lib("cannot load the model");
        goto out;
    }
    double t_load = cli_now() - t0;
    const fr_config *cfg = engine ? fr_engine_config(e) : fr_model_config(m);
    for (int s = 0; s < seqs.n_seqs; s++) {
        const int *ids = seqs.ids + seqs.start[s];
        for (int j = 0; j < seqs.len[s]; j++) {
            if (ids[j] >= cfg->vocab_size) {
                rc = cli_fail("%s: line %ld: token id %d is out of range (the model's vocab_size is %d)",
                              tokens_path, seqs.line[s], ids[j], cfg->vocab_size);
                goto out;
            }
        }
    }
    ptrs = malloc((size_t)seqs.n_seqs * sizeof *ptrs);
    if (!ptrs) {
        rc = cli_fail("out of memory");
        goto out;
    }
    for (int s = 0; s < seqs.n_seqs; s++) ptrs[s] = seqs.ids + seqs.start[s];

    double mean = 0;
    long n_pred = 0;
    t0 = cli_now();
    int st = engine ? fr_engine_eval_sequences(e, seqs.n_seqs, ptrs, seqs.len, (int)chunk, &mean, &n_pred)
                    : fr_model_eval_sequences(m, seqs.n_seqs, ptrs, seqs.len, &mean, &n_pred);
    if (st != FR_OK) {
        rc = cli_fail_lib("evaluation failed");
        goto out;
    }
    double t_eval = cli_now() - t0;
    if (!isfinite(mean)) {
        rc = cli_fail("evaluation produced a non-finite loss (%g)", mean);
        goto out;
    }
    double ppl = exp(mean);
    if (json) {
        printf("{\"command\": \"eval\", \"model\": ");
        cli_json_string(stdout, model_dir);
        printf(", \"tokens_file\": ");
        cli_json_string(stdout, tokens_path);
        printf(", \"sequences\": %d, \"tokens\": %ld, \"loss\": ", seqs.n_seqs, n_pred);
        cli_json_number(stdout, mean);
        printf(", \"ppl\": ");
        cli_json_number(stdout, ppl);
        printf(", \"threads\": %ld, \"load_seconds\": ", threads);
        cli_json_number(stdout, t_load);
        printf(", \"eval_seconds\": ");
        cli_json_number(stdout, t_eval);
        printf(", \"engine\": %s", engine ? "true" : "false");
        if (engine) printf(", \"weights\": \"%s\", \"chunk\": %ld", cli_weights_name(fr_engine_weight_type(e)), chunk);
        printf("}\n");
    } else {
        printf("loss %.6f ppl %.4f tokens %ld\n", mean, ppl, n_pred);
    }
    if (fflush(stdout) != 0) rc = cli_fail("cannot write the result: %s", strerror(errno));

out:
    free(ptrs);
    if (m) fr_model_free(m);
    fr_engine_free(e);
    seqs_free(&seqs);
    return rc;
}
