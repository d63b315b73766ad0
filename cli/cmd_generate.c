/* cmd_generate.c — `frugal generate` (sample text from a checkpoint, streamed) and
 * `frugal chat` (interactive chat with the tokenizer's chat template). Both use the
 * inference engine of include/frugal.h (latent KV cache, MTP speculation, quantized weights). */
#define _GNU_SOURCE
#include "cli.h"

#include "frugal.h"
#include "core/internal.h"

#include <cjson/cJSON.h>

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_STOPS 16

void usage_generate(FILE *f) {
    fprintf(f,
            "usage: frugal generate --model DIR --prompt TEXT [options]\n"
            "       frugal generate --model DIR --batch IN.jsonl --out OUT.jsonl [options]\n"
            "\n"
            "Continues TEXT with the model in DIR (config.json, safetensors weights, tokenizer.json),\n"
            "streaming the new text to stdout as it is produced. Special-token strings in TEXT\n"
            "(e.g. <\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>) become their ids. A summary (KV cache bytes per\n"
            "token at start-up; tokens/s and speculative acceptance at the end) goes to stderr.\n"
            "\n"
            "Options:\n"
            "  --model DIR          model folder, or a deepseek2 .gguf file (frugal convert --to gguf)\n"
            "  --prompt TEXT        the prompt (required without --batch)\n"
            "  --batch FILE         one generation per JSONL line: {\"messages\": [...]} (rendered with the\n"
            "                       chat template; the reply is appended as an assistant message, so OUT\n"
            "                       is chat JSONL for `frugal finetune`: sequence-level distillation) or\n"
            "                       {\"prompt\": \"...\"} (gets a \"completion\"); other keys are kept\n"
            "  --out FILE           where --batch writes (written as FILE.tmp-PID, renamed when complete)\n"
            "  --ledger FILE        record the --batch job in this ledger (kind generate): a teacher's replies\n"
            "                       for distillation are part of the student's lifecycle cost\n"
            "  --parallel N         --batch lines decoded together (default 8); each sequence samples with\n"
            "                       its own stream seeded by --seed, so results do not depend on N\n"
            "  --max-tokens N       new tokens (default 128)\n"
            "  --temperature T      0 = greedy (default 0.8)\n"
            "  --top-k K            keep the K most likely ids (default 40; 0 = off)\n"
            "  --top-p P            nucleus sampling mass in (0, 1] (default 0.95; 1 = off)\n"
            "  --min-p P            drop ids below P x the top probability (default 0.05; 0 = off)\n"
            "  --repeat-penalty R   penalise the last --repeat-last-n tokens (default 1.0 = off)\n"
            "  --repeat-last-n N    window of the repeat penalty (default 64)\n"
            "  --seed S             sampler seed (default 42)\n"
            "  --stop STR           stop before STR (repeatable, up to %d)\n"
            "  --ignore-eos         keep going after the end-of-sequence token\n"
            "  --weights TYPE       weight storage: auto (as stored: BF16 / Q8_0 / Q4_1 folders of\n"
            "                       `frugal quantize` run in their format, others in f32; the\n"
            "                       default), f32, bf16, q8_0, q4_1\n"
            "  --kv TYPE            latent KV cache: f32, bf16, fp8 (default f32)\n"
            "  --ctx N              maximum sequence length (default: max_position_embeddings)\n"
            "  --speculative        draft with the MTP module, verify with the main model\n"
            "  --threads N          CPU threads (default: OpenMP's default)\n"
            "  --device D           cpu (default) | cuda: where the engine runs (on cuda: FP32 weights\n"
            "                       and an FP32 cache, whatever the folder stores)\n"
            "  --no-check           skip the load-time check that every weight is finite (NaN / Inf);\n"
            "                       the check reads all weights once, which pages in the whole\n"
            "                       checkpoint at start-up: skip it for a faster start of a big model\n"
            "  --adapter DIR        fold a LoRA adapter (a PEFT folder: frugal finetune --lora-rank, or\n"
            "                       peft's save_pretrained) into the weights at load time\n"
            "  -h, --help           show this help\n",
            MAX_STOPS);
}

void usage_chat(FILE *f) {
    fprintf(f,
            "usage: frugal chat --model DIR [options]\n"
            "\n"
            "Interactive chat. Each line you type is a user message; the reply streams back.\n"
            "The conversation is rendered with the DeepSeek-V3 chat template of the model's\n"
            "tokenizer_config.json (the format frugal's tokenizer writes), or, without one, with\n"
            "  <\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>{system}<\xef\xbd\x9cUser\xef\xbd\x9c>{msg}<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>{reply}<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>\n"
            "Commands: /help lists the commands, /reset forgets the history, /quit (or end of\n"
            "input, Ctrl-D) leaves. Another line starting with / is not sent (an unknown command);\n"
            "start a message with // to send it beginning with a single /.\n"
            "\n"
            "Options:\n"
            "  --model DIR          model folder (with tokenizer.json), or a deepseek2 .gguf file\n"
            "  --system TEXT        system prompt\n"
            "  --max-tokens N       longest reply (default 256)\n"
            "  --temperature, --top-k, --top-p, --min-p, --repeat-penalty, --repeat-last-n, --seed,\n"
            "  --weights, --kv, --ctx, --speculative, --threads, --device, --no-check, --adapter\n"
            "                       as for `frugal generate`\n"
            "  -h, --help           show this help\n");
}

/* ------------------------------------------------------------------ shared options */

typedef struct {
    const char *model, *prompt, *system, *device, *adapter;
    const char *batch, *out; /* generate --batch IN.jsonl --out OUT.jsonl */
    const char *ledger;      /* generate --batch: record the job in this ledger */
    long parallel;
    const char *stops[MAX_STOPS];
    int n_stops;
    fr_sample_params sample;
    long max_tokens, ctx, threads;
    int weights, speculative, ignore_eos, no_check;
    fr_kv_type kv;
} gen_args;

static int parse_float(const char *cmd, void (*usage)(FILE *), const char *opt, const char *text, double lo,
                       double hi, float *out) {
    double v;
    if (cli_parse_double(cmd, usage, opt, text, lo, hi, &v) != 0) return -1;
    *out = (float)v;
    return 0;
}

/* Parse the options of generate (chat = 0) or chat (1). Returns -1 to exit with `*exit_code`. */
static int parse_args(const char *cmd, void (*usage)(FILE *), int chat, int argc, char **argv, gen_args *a,
                      int *exit_code) {
    memset(a, 0, sizeof *a);
    a->weights = -1; /* as stored */
    fr_sample_params_default(&a->sample);
    a->max_tokens = chat ? 256 : 128;
    a->parallel = 8;
    a->kv = FR_KV_F32;
    const char *v;
    const cli_opt opts[] = {
        {"--model", &a->model, NULL},
        {chat ? "--system" : "--prompt", chat ? &a->system : &a->prompt, NULL}, /* chat has no --prompt */
        {"--speculative", NULL, &a->speculative},
        {"--no-check", NULL, &a->no_check},
        {"--device", &a->device, NULL},
        {"--adapter", &a->adapter, NULL},
    };
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        int r;
        long n;
        if (cli_is_help(s)) {
            usage(stdout);
            *exit_code = CLI_EXIT_OK;
            return -1;
        }
#define VALUE(name) ((r = cli_opt_value(cmd, usage, argc, argv, &i, name, &v)) != 0)
#define BAD() do { *exit_code = CLI_EXIT_USAGE; return -1; } while (0)
        if ((r = cli_opt_match(cmd, usage, argc, argv, &i, opts, CLI_N_OPTS(opts))) != 0) { if (r < 0) BAD(); }
        else if (VALUE("--max-tokens")) { if (r < 0 || cli_parse_int(cmd, usage, "--max-tokens", v, 1, 1 << 24, &a->max_tokens)) BAD(); }
        else if (VALUE("--temperature")) { if (r < 0 || parse_float(cmd, usage, "--temperature", v, 0, 100, &a->sample.temperature)) BAD(); }
        else if (VALUE("--top-k")) { if (r < 0 || cli_parse_int(cmd, usage, "--top-k", v, 0, 1 << 30, &n)) BAD(); a->sample.top_k = (int)n; }
        else if (VALUE("--top-p")) {
            if (r < 0 || parse_float(cmd, usage, "--top-p", v, 0, 1, &a->sample.top_p)) BAD();
            if (a->sample.top_p <= 0) { cli_usage_error(cmd, usage, "option --top-p: must be > 0"); BAD(); }
        }
        else if (VALUE("--min-p")) { if (r < 0 || parse_float(cmd, usage, "--min-p", v, 0, 1, &a->sample.min_p)) BAD(); }
        else if (VALUE("--repeat-penalty")) {
            if (r < 0 || parse_float(cmd, usage, "--repeat-penalty", v, 0, 100, &a->sample.repeat_penalty)) BAD();
            if (a->sample.repeat_penalty <= 0) { cli_usage_error(cmd, usage, "option --repeat-penalty: must be > 0"); BAD(); }
        }
        else if (VALUE("--repeat-last-n")) { if (r < 0 || cli_parse_int(cmd, usage, "--repeat-last-n", v, 0, 1 << 30, &n)) BAD(); a->sample.repeat_last_n = (int)n; }
        else if (VALUE("--seed")) {
            if (r < 0) BAD();
            char *end;
            errno = 0;
            unsigned long long sd = strtoull(v, &end, 10);
            if (errno || end == v || *end || v[0] == '-') { cli_usage_error(cmd, usage, "option --seed: '%s' is not a non-negative integer", v); BAD(); }
            a->sample.seed = sd;
        }
        else if (!chat && VALUE("--stop")) {
            if (r < 0) BAD();
            if (!v[0]) { cli_usage_error(cmd, usage, "option --stop: empty string"); BAD(); }
            if (a->n_stops == MAX_STOPS) { cli_usage_error(cmd, usage, "at most %d --stop strings", MAX_STOPS); BAD(); }
            a->stops[a->n_stops++] = v;
        }
        else if (VALUE("--weights")) {
            if (r < 0 || cli_parse_weights(cmd, usage, v, &a->weights) != 0) BAD();
        }
        else if (VALUE("--kv")) {
            if (r < 0) BAD();
            if (strcmp(v, "f32") == 0) a->kv = FR_KV_F32;
            else if (strcmp(v, "bf16") == 0) a->kv = FR_KV_BF16;
            else if (strcmp(v, "fp8") == 0) a->kv = FR_KV_FP8;
            else { cli_usage_error(cmd, usage, "option --kv: '%s' is not one of f32, bf16, fp8", v); BAD(); }
        }
        else if (VALUE("--ctx")) { if (r < 0 || cli_parse_int(cmd, usage, "--ctx", v, 1, 1 << 24, &a->ctx)) BAD(); }
        else if (VALUE("--threads")) { if (r < 0 || cli_parse_int(cmd, usage, "--threads", v, 1, 4096, &a->threads)) BAD(); }
        else if (!chat && VALUE("--batch")) { if (r < 0) BAD(); a->batch = v; }
        else if (!chat && VALUE("--out")) { if (r < 0) BAD(); a->out = v; }
        else if (!chat && VALUE("--ledger")) { if (r < 0) BAD(); a->ledger = v; }
        else if (!chat && VALUE("--parallel")) { if (r < 0 || cli_parse_int(cmd, usage, "--parallel", v, 1, 64, &a->parallel)) BAD(); }
        else if (!chat && (r = cli_opt_flag(cmd, usage, s, "--ignore-eos")) != 0) { if (r < 0) BAD(); a->ignore_eos = 1; }
        else if (s[0] == '-') { cli_usage_error(cmd, usage, "unknown option '%s'", s); BAD(); }
        else { cli_usage_error(cmd, usage, "unexpected argument '%s'", s); BAD(); }
#undef VALUE
#undef BAD
    }
    if (!a->model) { *exit_code = cli_usage_error(cmd, usage, "missing required option '--model DIR'"); return -1; }
    if (a->device && strcmp(a->device, "cpu") != 0 && strcmp(a->device, "cuda") != 0) {
        *exit_code = cli_usage_error(cmd, usage, "--device must be cpu or cuda, got '%s'", a->device);
        return -1;
    }
    if (!chat && a->batch && (a->prompt || !a->out)) {
        *exit_code = cli_usage_error(cmd, usage, "--batch needs --out and takes no --prompt");
        return -1;
    }
    if (!chat && (a->out || a->ledger) && !a->batch) {
        *exit_code = cli_usage_error(cmd, usage, "--out and --ledger go with --batch");
        return -1;
    }
    if (!chat && !a->prompt && !a->batch) { *exit_code = cli_usage_error(cmd, usage, "missing required option '--prompt TEXT'"); return -1; }
    return 0;
}

static const char *KV_NAMES[] = {"f32", "bf16", "fp8"};

/* Load engine and tokenizer; prints the start-up line. */
static int open_model(const gen_args *a, fr_engine **e, fr_tokenizer **tok) {
    *e = NULL;
    *tok = NULL;
    size_t ml = strlen(a->model);
    struct stat sb;
    const int gguf = ml >= 5 && strcasecmp(a->model + ml - 5, ".gguf") == 0 && stat(a->model, &sb) == 0 && S_ISREG(sb.st_mode);
    if (!gguf && cli_check_dir(a->model, "model folder") != CLI_EXIT_OK) return CLI_EXIT_FAIL;
    fr_engine_options o;
    fr_engine_options_default(&o);
    o.weight_type = a->weights;
    o.kv_type = a->kv;
    o.max_seq_len = (int)a->ctx;
    o.threads = (int)a->threads;
    o.load_mtp = a->speculative;
    o.no_check = a->no_check;
    o.adapter = a->adapter;
    if (a->device && fr_set_device(a->device) != FR_OK) return cli_fail_lib("cannot run on this device");
    double t0 = cli_now();
    if (fr_engine_load(e, a->model, &o) != FR_OK) return cli_fail_lib("cannot load the model");
    if ((gguf ? fr_tokenizer_load_gguf(tok, a->model) : fr_tokenizer_load(tok, a->model)) != FR_OK) {
        fr_engine_free(*e);
        *e = NULL;
        return cli_fail_lib("cannot load the tokenizer");
    }
    if (a->speculative && fr_engine_mtp_depth(*e) < 1) {
        fr_engine_free(*e);
        fr_tokenizer_free(*tok);
        *e = NULL;
        *tok = NULL;
        return cli_fail("--speculative: %s has no MTP module (num_nextn_predict_layers is 0 or its weights are absent)",
                        a->model);
    }
    char b1[32], b2[32];
    fprintf(stderr, "frugal: %s loaded in %.2f s; weights %s (%s read per token), KV cache %s: %zu bytes per token (%s for %d tokens)%s\n",
            a->model, cli_now() - t0, cli_weights_name(fr_engine_weight_type(*e)), cli_human_bytes(b1, sizeof b1, (double)fr_engine_active_weight_bytes(*e)),
            KV_NAMES[a->kv], fr_engine_kv_bytes_per_token(*e),
            cli_human_bytes(b2, sizeof b2, (double)fr_engine_kv_bytes_per_token(*e) * fr_engine_max_seq_len(*e)),
            fr_engine_max_seq_len(*e), a->speculative ? ", MTP speculation on" : "");
    return CLI_EXIT_OK;
}

static int stream_token(void *user, int seq, int token, const char *text, size_t len) {
    (void)seq;
    (void)token;
    (void)user;
    if (len) {
        fwrite(text, 1, len, stdout);
        fflush(stdout);
    }
    return 0;
}

static void print_stats(const fr_generate_stats *st, int speculative) {
    double dec_tps = st->decode_s > 0 ? (st->generated_tokens - 1) / st->decode_s : 0;
    const long computed = st->prompt_tokens - st->reused_tokens;
    fprintf(stderr, "frugal: prompt %ld tokens", st->prompt_tokens);
    if (st->reused_tokens) fprintf(stderr, " (%ld from the cache)", st->reused_tokens);
    fprintf(stderr, " in %.3f s (%.1f tokens/s); generated %ld tokens, %.1f tokens/s", st->prefill_s,
            st->prefill_s > 0 ? computed / st->prefill_s : 0, st->generated_tokens, dec_tps);
    if (speculative)
        fprintf(stderr, "; MTP drafts accepted %ld/%ld (%.1f %%), %ld main-model steps",
                st->accepted, st->drafted, st->drafted ? 100.0 * st->accepted / st->drafted : 0.0, st->main_steps);
    fprintf(stderr, "\n");
}

/* ------------------------------------------------------------------ --batch */

typedef struct {
    cJSON *root;    /* the input line */
    int chat;       /* {"messages": ...}: the reply becomes an assistant message */
    char *prompt;   /* text to encode */
} batch_item;

/* Line `lineno` of --batch as an item, or an error naming it */
static int batch_parse(const fr_tokenizer *tok, const char *line, size_t len, long lineno, batch_item *it) {
    memset(it, 0, sizeof *it);
    it->root = cJSON_ParseWithLength(line, len);
    const cJSON *msgs = it->root ? cJSON_GetObjectItemCaseSensitive(it->root, "messages") : NULL;
    const cJSON *p = it->root ? cJSON_GetObjectItemCaseSensitive(it->root, "prompt") : NULL;
    if (cJSON_IsString(p)) {
        it->prompt = strdup(p->valuestring);
        return it->prompt ? CLI_EXIT_OK : cli_fail("out of memory");
    }
    if (!cJSON_IsArray(msgs))
        return cli_fail("--batch line %ld: expected an object with \"messages\" (an array) or \"prompt\" (a string)", lineno);
    const int n = cJSON_GetArraySize(msgs);
    fr_chat_message *m = calloc((size_t)(n > 0 ? n : 1), sizeof *m);
    if (!m) return cli_fail("out of memory");
    for (int i = 0; i < n; i++) {
        const cJSON *x = cJSON_GetArrayItem(msgs, i);
        const cJSON *r = cJSON_GetObjectItemCaseSensitive(x, "role"), *c = cJSON_GetObjectItemCaseSensitive(x, "content");
        if (!cJSON_IsString(r) || !cJSON_IsString(c)) {
            free(m);
            return cli_fail("--batch line %ld: message %d needs string \"role\" and \"content\"", lineno, i);
        }
        m[i] = (fr_chat_message){r->valuestring, c->valuestring};
    }
    const int rc = fr_chat_render(tok, m, n, 1, &it->prompt, NULL);
    free(m);
    it->chat = 1;
    if (rc != FR_OK) return cli_fail("--batch line %ld: %s", lineno, fr_last_error());
    return CLI_EXIT_OK;
}

/* The output line of an item: the input with its reply added */
static char *batch_result(batch_item *it, const char *reply) {
    if (it->chat) {
        cJSON *m = cJSON_CreateObject();
        cJSON_AddStringToObject(m, "role", "assistant");
        cJSON_AddStringToObject(m, "content", reply);
        cJSON_AddItemToArray(cJSON_GetObjectItemCaseSensitive(it->root, "messages"), m);
    } else {
        cJSON_DeleteItemFromObjectCaseSensitive(it->root, "completion");
        cJSON_AddStringToObject(it->root, "completion", reply);
    }
    return cJSON_PrintUnformatted(it->root);
}

static int generate_batch(const gen_args *a, fr_engine *e, fr_tokenizer *tok) {
    char *text = NULL;
    size_t len = 0;
    if (fr_read_file(a->batch, &text, &len) != FR_OK) return cli_fail_lib("cannot read --batch");
    batch_item *items = NULL;
    long n = 0, cap = 0, lineno = 0;
    int rc = CLI_EXIT_OK;
    size_t pos = 0, ll;
    const char *line;
    int blank;
    while (rc == CLI_EXIT_OK && fr_next_line(text, len, &pos, &line, &ll, &blank)) {
        lineno++;
        if (blank) continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 64;
            batch_item *ni = realloc(items, (size_t)cap * sizeof *ni);
            if (!ni) { rc = cli_fail("out of memory"); break; }
            items = ni;
        }
        rc = batch_parse(tok, line, ll, lineno, &items[n]);
        n++;
    }
    free(text);
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp-%d", a->out, (int)getpid());
    FILE *f = rc == CLI_EXIT_OK ? fopen(tmp, "w") : NULL;
    if (rc == CLI_EXIT_OK && !f) rc = cli_fail("cannot create %s: %s", tmp, strerror(errno));
    const int P = (int)a->parallel;
    fr_seq **seqs = calloc((size_t)P, sizeof *seqs);
    if (rc == CLI_EXIT_OK && !seqs) rc = cli_fail("out of memory");
    for (int i = 0; rc == CLI_EXIT_OK && i < P; i++)
        if (fr_seq_create(&seqs[i], e) != FR_OK) rc = cli_fail_lib("out of memory");
    fr_generate_options o;
    fr_generate_options_default(&o);
    o.sample = a->sample;
    o.max_tokens = (int)a->max_tokens;
    o.stop = a->stops;
    o.n_stop = a->n_stops;
    o.ignore_eos = a->ignore_eos;
    o.speculative = a->speculative;
    long done = 0, generated = 0;
    const double t0 = cli_now();
    cli_ledger_job job; /* a teacher writing distillation data: part of the student's lifecycle cost */
    cli_ledger_job_begin(&job, rc == CLI_EXIT_OK ? a->ledger : NULL, "generate", a->out, a->model, fr_num_threads());
    cli_progress pb; /* lines done; a line per 10 % when stderr is not a terminal */
    cli_progress_start(&pb, "generate --batch", (double)n, "lines");
    for (long g0 = 0; rc == CLI_EXIT_OK && g0 < n; g0 += P) {
        const int m = (int)(n - g0 < P ? n - g0 : P);
        int *ids[64] = {0}, lens[64], *outs[64] = {0}, out_lens[64];
        for (int i = 0; rc == CLI_EXIT_OK && i < m; i++) {
            size_t nt = 0;
            if (fr_tokenizer_encode(tok, items[g0 + i].prompt, strlen(items[g0 + i].prompt), 1, &ids[i], &nt) != FR_OK)
                rc = cli_fail_lib("cannot encode a --batch prompt");
            else if (nt == 0 || nt >= (size_t)fr_engine_max_seq_len(e))
                rc = cli_fail("--batch item %ld: its prompt has %zu tokens; it needs 1 .. %d (see --ctx)", g0 + i + 1, nt,
                              fr_engine_max_seq_len(e) - 1);
            lens[i] = (int)nt;
        }
        fr_generate_stats st;
        if (rc == CLI_EXIT_OK &&
            fr_generate(e, tok, seqs, m, (const int *const *)ids, lens, &o, outs, out_lens, &st) != FR_OK)
            rc = cli_fail_lib("generation failed");
        for (int i = 0; rc == CLI_EXIT_OK && i < m; i++) {
            char *reply = NULL;
            size_t rl = 0;
            if (fr_tokenizer_decode(tok, outs[i], (size_t)out_lens[i], 1, &reply, &rl) != FR_OK) {
                rc = cli_fail_lib("cannot decode a reply");
                break;
            }
            for (int k = 0; k < a->n_stops; k++) { /* the text is cut before a stop string */
                char *hit = strstr(reply, a->stops[k]);
                if (hit) *hit = 0;
            }
            size_t cl;
            char *clean = cli_utf8_sanitize(reply, strlen(reply), &cl); /* every line valid JSON */
            char *js = clean ? batch_result(&items[g0 + i], clean) : NULL;
            free(clean);
            if (!js || fprintf(f, "%s\n", js) < 0) rc = cli_fail("cannot write %s (disk full?)", tmp);
            free(js);
            free(reply);
            generated += out_lens[i];
        }
        for (int i = 0; i < m; i++) free(ids[i]), free(outs[i]);
        done += m;
        if (rc == CLI_EXIT_OK) cli_progress_update(&pb, (double)done / (double)n);
    }
    cli_ledger_job_end(&job, rc == CLI_EXIT_OK ? "finished" : cli_stop_signal() ? "interrupted" : "failed", (double)generated);
    if (rc == CLI_EXIT_OK) {
        cli_progress_finish(&pb);
        fprintf(stderr, "frugal generate --batch: %ld lines, %ld tokens in %.1f s (%.1f tokens/s)\n", n, generated,
                cli_now() - t0, generated / (cli_now() - t0 + 1e-9));
    } else {
        cli_progress_abort(&pb);
    }
    if (f && fclose(f) != 0 && rc == CLI_EXIT_OK) rc = cli_fail("cannot write %s (disk full?)", tmp);
    if (rc == CLI_EXIT_OK && rename(tmp, a->out) != 0) rc = cli_fail("cannot rename %s to %s: %s", tmp, a->out, strerror(errno));
    if (rc != CLI_EXIT_OK) unlink(tmp);
    for (int i = 0; seqs && i < P; i++) fr_seq_free(seqs[i]);
    free(seqs);
    for (long i = 0; i < n; i++) cJSON_Delete(items[i].root), free(items[i].prompt);
    free(items);
    return rc;
}

int cmd_generate(int argc, char **argv) {
    gen_args a;
    int code;
    if (parse_args("generate", usage_generate, 0, argc, argv, &a, &code) != 0) return code;
    fr_engine *e;
    fr_tokenizer *tok;
    int rc = open_model(&a, &e, &tok);
    if (rc != CLI_EXIT_OK) return rc;
    if (a.batch) {
        rc = generate_batch(&a, e, tok);
        fr_tokenizer_free(tok);
        fr_engine_free(e);
        return rc;
    }
    int *ids = NULL, *out = NULL, out_len = 0;
    size_t n_ids = 0;
    fr_seq *s = NULL;
    if (fr_tokenizer_encode(tok, a.prompt, strlen(a.prompt), 1, &ids, &n_ids) != FR_OK) {
        rc = cli_fail_lib("cannot encode the prompt");
        goto out;
    }
    if (n_ids == 0) { rc = cli_fail("the prompt encodes to no tokens"); goto out; }
    if (n_ids > (size_t)fr_engine_max_seq_len(e)) {
        rc = cli_fail("the prompt has %zu tokens; the maximum sequence length is %d (see --ctx)", n_ids,
                      fr_engine_max_seq_len(e));
        goto out;
    }
    if (fr_seq_create(&s, e) != FR_OK) { rc = cli_fail_lib("out of memory"); goto out; }
    fr_generate_options o;
    fr_generate_options_default(&o);
    o.sample = a.sample;
    o.max_tokens = (int)a.max_tokens;
    o.stop = a.stops;
    o.n_stop = a.n_stops;
    o.ignore_eos = a.ignore_eos;
    o.speculative = a.speculative;
    o.on_token = stream_token;
    fwrite(a.prompt, 1, strlen(a.prompt), stdout);
    fflush(stdout);
    fr_generate_stats st;
    const int *pp = ids;
    int pl = (int)n_ids;
    if (fr_generate(e, tok, &s, 1, &pp, &pl, &o, &out, &out_len, &st) != FR_OK) {
        printf("\n");
        rc = cli_fail_lib("generation failed");
        goto out;
    }
    printf("\n");
    fflush(stdout);
    print_stats(&st, a.speculative);
out:
    free(ids);
    free(out);
    fr_seq_free(s);
    fr_tokenizer_free(tok);
    fr_engine_free(e);
    return rc;
}

/* ------------------------------------------------------------------ chat */

typedef struct {
    char **role, **content;
    int n, cap;
} history;

static int hist_add(history *h, const char *role, const char *text, size_t len) {
    if (h->n == h->cap) {
        int cap = h->cap ? 2 * h->cap : 16;
        char **r = realloc(h->role, (size_t)cap * sizeof *r);
        if (!r) return -1;
        h->role = r;
        char **c = realloc(h->content, (size_t)cap * sizeof *c);
        if (!c) return -1;
        h->content = c;
        h->cap = cap;
    }
    h->role[h->n] = strdup(role);
    h->content[h->n] = strndup(text, len);
    if (!h->role[h->n] || !h->content[h->n]) return -1;
    h->n++;
    return 0;
}

static void hist_clear(history *h, int keep) {
    for (int i = keep; i < h->n; i++) { free(h->role[i]); free(h->content[i]); }
    h->n = keep;
}

/* Render messages [first, n) (a leading system message is always kept) with the library's
 * DeepSeek-V3 chat renderer, ending with the assistant tag for the reply to come. */
static char *render(const fr_tokenizer *tok, const history *h, int first) {
    fr_chat_message *m = malloc((size_t)(h->n + 1) * sizeof *m);
    if (!m) return NULL;
    int k = 0, start = 0;
    if (h->n > 0 && strcmp(h->role[0], "system") == 0) {
        m[k].role = h->role[0];
        m[k++].content = h->content[0];
        start = 1;
    }
    if (first < start) first = start;
    for (int i = first; i < h->n; i++) {
        m[k].role = h->role[i];
        m[k++].content = h->content[i];
    }
    char *out = NULL;
    if (fr_chat_render(tok, m, k, 1, &out, NULL) != FR_OK) out = NULL;
    free(m);
    return out;
}

int cmd_chat(int argc, char **argv) {
    gen_args a;
    int code;
    if (parse_args("chat", usage_chat, 1, argc, argv, &a, &code) != 0) return code;
    fr_engine *e;
    fr_tokenizer *tok;
    int rc = open_model(&a, &e, &tok);
    if (rc != CLI_EXIT_OK) return rc;

    /* the template: DeepSeek-V3 style (as frugal's tokenizer writes it) or the fallback */
    if (!fr_chat_template_is_deepseek(tok))
        fprintf(stderr, "frugal chat: the chat template of %s is not DeepSeek-V3 style; using the DeepSeek-V3 format\n", a.model);

    history h = {0};
    int keep = 0;
    if (a.system) {
        if (hist_add(&h, "system", a.system, strlen(a.system)) != 0) { rc = cli_fail("out of memory"); goto out; }
        keep = 1;
    }
    fr_seq *s = NULL;
    if (fr_seq_create(&s, e) != FR_OK) { rc = cli_fail_lib("out of memory"); goto out; }
    fr_generate_options o;
    fr_generate_options_default(&o);
    o.sample = a.sample;
    o.max_tokens = (int)a.max_tokens;
    o.speculative = a.speculative;
    o.on_token = stream_token;
    /* a turn computes only what the cache does not hold of the conversation (its new message;
     * after the oldest turns were dropped, everything again) */
    o.reuse_prefix = 1;
    const int max_len = fr_engine_max_seq_len(e);
    fprintf(stderr, "frugal chat: type a message; /help lists the commands, /reset forgets the conversation, "
                    "/quit or Ctrl-D leaves.\n");
    char *line = NULL;
    size_t cap = 0;
    for (;;) {
        fprintf(stderr, "> ");
        fflush(stderr);
        ssize_t n = getline(&line, &cap, stdin);
        if (n < 0) { fprintf(stderr, "\n"); break; }
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = 0;
        if (strcmp(line, "/quit") == 0) break;
        if (strcmp(line, "/reset") == 0) {
            hist_clear(&h, keep);
            fprintf(stderr, "(conversation forgotten)\n");
            continue;
        }
        if (strcmp(line, "/help") == 0 || strcmp(line, "/?") == 0) {
            fprintf(stderr, "Commands:\n"
                            "  /help    this list\n"
                            "  /reset   forget the conversation (the system prompt stays)\n"
                            "  /quit    leave (also Ctrl-D)\n"
                            "Any other line is sent to the model; start it with // to send a message that\n"
                            "begins with / (the first / is dropped).\n");
            continue;
        }
        const char *msg = line;
        if (line[0] == '/' && line[1] == '/') { /* escaped: "//x" sends "/x" */
            msg = line + 1;
            n--;
        } else if (line[0] == '/') {
            const char *sp = strpbrk(line, " \t");
            fprintf(stderr, "frugal chat: unknown command '%.*s' (not sent); /help lists the commands, // starts "
                            "a message with /\n", sp ? (int)(sp - line) : (int)n, line);
            continue;
        }
        if (n == 0) continue;
        if (hist_add(&h, "user", msg, (size_t)n) != 0) { rc = cli_fail("out of memory"); break; }
        /* render; drop the oldest turns while the prompt leaves no room for a reply */
        int *ids = NULL;
        size_t n_ids = 0;
        int first = keep;
        for (;;) {
            char *text = render(tok, &h, first);
            if (!text) { rc = cli_fail("out of memory"); break; }
            free(ids);
            ids = NULL;
            int erc = fr_tokenizer_encode(tok, text, strlen(text), 1, &ids, &n_ids);
            free(text);
            if (erc != FR_OK) { rc = cli_fail_lib("cannot encode the conversation"); break; }
            if (n_ids + 16 <= (size_t)max_len || first >= h.n - 1) break;
            first += 2;
        }
        if (rc != CLI_EXIT_OK) { free(ids); break; }
        if (n_ids >= (size_t)max_len) {
            fprintf(stderr, "frugal chat: the message alone has %zu tokens, more than the context (%d); not sent\n",
                    n_ids, max_len);
            free(ids);
            hist_clear(&h, h.n - 1);
            continue;
        }
        int *out = NULL, out_len = 0;
        const int *pp = ids;
        int pl = (int)n_ids;
        fr_generate_stats st;
        int grc = fr_generate(e, tok, &s, 1, &pp, &pl, &o, &out, &out_len, &st);
        free(ids);
        printf("\n");
        fflush(stdout);
        if (grc != FR_OK) { rc = cli_fail_lib("generation failed"); break; }
        char *reply = NULL;
        size_t rl = 0;
        if (fr_tokenizer_decode(tok, out, (size_t)out_len, 1, &reply, &rl) != FR_OK) {
            free(out);
            rc = cli_fail_lib("cannot decode the reply");
            break;
        }
        free(out);
        int ok = hist_add(&h, "assistant", reply, rl);
        free(reply);
        if (ok != 0) { rc = cli_fail("out of memory"); break; }
        print_stats(&st, a.speculative);
    }
    free(line);
    fr_seq_free(s);
out:
    hist_clear(&h, 0);
    free(h.role);
    free(h.content);
    fr_tokenizer_free(tok);
    fr_engine_free(e);
    return rc;
}
