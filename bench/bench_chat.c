/*
 * bench_chat.c — time to first token of a conversation's second turn, with the prompt cache
 * (fr_generate_options.reuse_prefix: the turn computes only its new tokens) and without it
 * (the whole conversation computed again, what `frugal chat` did before).
 *
 * The model of bench/configs/bench-infer.json (or --config) with random weights, in the
 * engine's Q8_0 (or --weights); turn 1 is a --turn1-token prompt (default 1,000) answered with
 * --reply tokens (default 32); turn 2 is that conversation plus a --message-token message
 * (default 50). Prints the median of --repeat runs (default 3) of each, their ratio, and a
 * JSON line.
 *
 *   bench_chat [--config FILE] [--weights f32|bf16|q8_0|q4_1] [--turn1 N] [--reply N]
 *              [--message N] [--repeat N] [--threads N]
 */
#include "bench_common.h"

#include "frugal.h"

#include <omp.h>

static int generate(fr_engine *e, fr_seq *s, const int *prompt, int n, int max_tokens, int reuse, int *out,
                    fr_generate_stats *st) {
    fr_generate_options o;
    fr_generate_options_default(&o);
    o.sample.temperature = 0;
    o.max_tokens = max_tokens;
    o.ignore_eos = 1;
    o.reuse_prefix = reuse;
    int *toks = NULL, len = 0;
    const int rc = fr_generate(e, NULL, &s, 1, &prompt, &n, &o, &toks, &len, st);
    if (rc == FR_OK && out) memcpy(out, toks, (size_t)len * sizeof(int));
    free(toks);
    return rc == FR_OK ? len : -1;
}

int main(int argc, char **argv) {
    const char *prog = "bench_chat", *cfg_path = NULL, *weights = "q8_0";
    long turn1 = 1000, reply = 32, message = 50, repeat = 3, threads = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            printf("usage: bench_chat [--config FILE] [--weights f32|bf16|q8_0|q4_1] [--turn1 N] [--reply N] [--message N] "
                   "[--repeat N] [--threads N]\n");
            return 0;
        } else if (!strcmp(a, "--config")) cfg_path = bench_opt_value(prog, argc, argv, &i);
        else if (!strcmp(a, "--weights")) weights = bench_opt_value(prog, argc, argv, &i);
        else if (!strcmp(a, "--turn1")) turn1 = bench_parse_long(prog, a, bench_opt_value(prog, argc, argv, &i), 2, 1 << 20);
        else if (!strcmp(a, "--reply")) reply = bench_parse_long(prog, a, bench_opt_value(prog, argc, argv, &i), 1, 1 << 20);
        else if (!strcmp(a, "--message")) message = bench_parse_long(prog, a, bench_opt_value(prog, argc, argv, &i), 1, 1 << 20);
        else if (!strcmp(a, "--repeat")) repeat = bench_parse_long(prog, a, bench_opt_value(prog, argc, argv, &i), 1, 100);
        else if (!strcmp(a, "--threads")) threads = bench_parse_long(prog, a, bench_opt_value(prog, argc, argv, &i), 1, 4096);
        else {
            fprintf(stderr, "%s: unknown option '%s'\n", prog, a);
            return 2;
        }
    }
    char def[4096];
    if (!cfg_path) {
        const char *self = __FILE__, *slash = strrchr(self, '/');
        snprintf(def, sizeof def, "%.*s/configs/bench-infer.json", slash ? (int)(slash - self) : 0, self);
        cfg_path = slash ? def : "bench/configs/bench-infer.json";
    }
    if (threads > 0) fr_set_num_threads((int)threads);
    int wt = -1;
    for (int t = 0; t < 4; t++)
        if (!strcmp(weights, fr_weight_type_name(t))) wt = t;
    if (wt < 0) {
        fprintf(stderr, "%s: unknown --weights '%s'\n", prog, weights);
        return 2;
    }
    fr_config cfg;
    fr_model *m = NULL;
    fr_engine *e = NULL;
    if (fr_config_load(&cfg, cfg_path) != FR_OK || fr_model_create(&m, &cfg, 7) != FR_OK) {
        fprintf(stderr, "%s: %s\n", prog, fr_last_error());
        return 1;
    }
    fr_engine_options o;
    fr_engine_options_default(&o);
    o.weight_type = wt;
    o.load_mtp = 0;
    o.max_seq_len = (int)(turn1 + 2 * reply + message + 8);
    if (fr_engine_from_model(&e, m, &o) != FR_OK) {
        fprintf(stderr, "%s: %s\n", prog, fr_last_error());
        return 1;
    }
    fr_model_free(m);
    const int V = cfg.vocab_size, n2 = (int)(turn1 + reply + message);
    int *conv = malloc((size_t)(n2 + 1) * sizeof(int));
    uint64_t rng = 0x9E3779B97F4A7C15ull;
    for (int i = 0; i < n2; i++) conv[i] = (int)(bench_xorshift(&rng) % (uint64_t)V);
    double *with = malloc((size_t)repeat * sizeof(double)), *without = malloc((size_t)repeat * sizeof(double));
    long reused = 0;
    for (long r = 0; r < repeat; r++) {
        fr_seq *s = NULL, *fresh = NULL;
        fr_seq_create(&s, e);
        fr_seq_create(&fresh, e);
        fr_generate_stats st;
        /* turn 1: the reply becomes part of the conversation */
        if (generate(e, s, conv, (int)turn1, (int)reply, 1, conv + turn1, &st) != reply) {
            fprintf(stderr, "%s: turn 1 failed: %s\n", prog, fr_last_error());
            return 1;
        }
        /* turn 2's first token: prefill (of what is not cached) + one sampled token */
        double t0 = bench_now();
        generate(e, s, conv, n2, 1, 1, NULL, &st);
        with[r] = bench_now() - t0;
        reused = st.reused_tokens;
        t0 = bench_now();
        generate(e, fresh, conv, n2, 1, 0, NULL, &st);
        without[r] = bench_now() - t0;
        fr_seq_free(s);
        fr_seq_free(fresh);
    }
    const double tw = bench_median(with, repeat), tn = bench_median(without, repeat);
    printf("bench_chat: %s, %s weights, %d threads: turn 2 = %ld + %ld + %ld tokens; time to first token %.1f ms with "
           "the prompt cache (%ld tokens reused, %ld computed) vs %.1f ms computing the whole conversation: %.1fx\n",
           cfg_path, weights, omp_get_max_threads(), turn1, reply, message, 1e3 * tw, reused, n2 - reused, 1e3 * tn,
           tn / tw);
    printf("{\"bench\": \"chat_ttft\", \"weights\": \"%s\", \"threads\": %d, \"turn1\": %ld, \"reply\": %ld, \"message\": %ld, "
           "\"reused_tokens\": %ld, \"ttft_ms_cached\": %.3f, \"ttft_ms_full\": %.3f, \"speedup\": %.3f}\n",
           weights, omp_get_max_threads(), turn1, reply, message, reused, 1e3 * tw, 1e3 * tn, tn / tw);
    free(with), free(without), free(conv);
    fr_engine_free(e);
    return 0;
}
