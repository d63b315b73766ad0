/*
 * bench_infer.c — inference throughput of the engine (src/infer/infer.c) next to its memory bound.
 *
 * Creates a DeepSeek-V3-style model from a config (default bench/configs/bench-infer.json,
 * ~150M parameters, ~600 MB in FP32) with random weights, builds the inference engine from
 * it for each weight type the build supports, and times
 *   - prompt processing: one prompt of --prompt tokens, batch 1 (tokens/s);
 *   - decode: --gen tokens, one per step, at batch 1 and batch 4 (tokens/s, all sequences,
 *     from the median step time);
 * (all threads at every step: the engine's thread governor is off except in --hog's test)
 * next to the bound "measured memory read bandwidth / weight bytes read per decoded token"
 * (the best read bandwidth probed so far in the run: three probes at the start, one more
 * before each format's decode; printed in the row), and the paired bound: each batch-1 step
 * of a second pass against a read probe run right after it (the median of the ratios)
 * (dense parts, shared + top-k routed experts, output head, in their storage format): the
 * fastest a batch-1 decode can go when it must stream its active weights from memory —
 * and the time of a 2-token append (the speculative verify step) relative to a 1-token one.
 * Prints a Markdown table, then one JSON line per format ({"bench": "infer", ...}).
 *
 * --hog N (N >= 1) adds a contention test: batch-1 decode timed alone and next to N busy
 * processes (forked here, each spinning on one core; killed when the test ends, and by an
 * alarm after 300 s and by their parent's death whatever happens), alternately, twice each,
 * with the engine's thread governor (fr_engine_options.adaptive_threads, the default) and
 * with all threads always (adaptive_threads = 0, the engine before the governor).
 * It reports tok/s from the total time of the steps (a few preempted steps count, unlike in
 * the median) and from the median, the slowdown (alone / with hog), and the proportional
 * expectation cores / (cores - N): with N of C cores taken, decode should be no more than
 * that much slower. One more JSON line per format ({"bench": "infer_hog", ...}).
 */
#define _GNU_SOURCE
#include "bench_common.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "frugal.h"

#include <math.h>
#include <stdint.h>

#define BENCH_THIS_FILE __FILE__

static void usage(FILE *f) {
    fprintf(f,
            "usage: bench_infer [--config FILE] [--prompt N] [--gen N] [--threads N] [--weights LIST] [--hog N]\n"
            "\n"
            "  --config FILE  model config.json (default: bench/configs/bench-infer.json)\n"
            "  --prompt N     prompt tokens for the prompt-processing measurement (default 64)\n"
            "  --gen N        decode steps timed at each batch size (default 48)\n"
            "  --threads N    threads (default: OMP_NUM_THREADS or all cores)\n"
            "  --weights LIST weight formats to time, comma-separated (default: f32,bf16,q8_0,q4_1)\n"
            "  --hog N        also time batch-1 decode next to N busy processes (one core each) and\n"
            "                 report the slowdown next to cores / (cores - N) (default 0: off)\n");
}

static void default_config(char *buf, size_t n) {
    const char *self = BENCH_THIS_FILE;
    const char *slash = strrchr(self, '/');
    if (self[0] == '/' && slash) {
        snprintf(buf, n, "%.*s/configs/bench-infer.json", (int)(slash - self), self);
        FILE *f = fopen(buf, "r");
        if (f) {
            fclose(f);
            return;
        }
    }
    snprintf(buf, n, "bench/configs/bench-infer.json");
}

static void tokens(int *t, int n, int V, uint64_t seed) {
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + 7;
    for (int i = 0; i < n; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        t[i] = (int)(x % (uint64_t)V);
    }
}

static int die(const char *what) {
    fprintf(stderr, "bench_infer: %s: %s\n", what, fr_last_error());
    return 1;
}

/* 1 if the comma-separated list holds name */
static int bench_list_has(const char *list, const char *name) {
    const size_t n = strlen(name);
    for (const char *p = list; *p;) {
        const char *end = strchr(p, ',');
        const size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len == n && !strncmp(p, name, n)) return 1;
        if (!end) break;
        p = end + 1;
    }
    return 0;
}

/* ------------------------------------------------------------------ --hog */

#define HOG_MAX 64

/* Starts n busy processes; returns how many started. Each spins until killed, its parent
 * dies, or 300 s pass. */
static int hog_start(pid_t *pids, int n) {
    fflush(NULL);
    int k = 0;
    for (; k < n; k++) {
        pid_t p = fork();
        if (p < 0) break;
        if (p == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            alarm(300);
            volatile unsigned long x = 0;
            for (;;) x++;
        }
        pids[k] = p;
    }
    struct timespec ts = {0, 50 * 1000 * 1000}; /* let them reach their cores */
    nanosleep(&ts, NULL);
    return k;
}

static void hog_stop(const pid_t *pids, int n) {
    for (int k = 0; k < n; k++) kill(pids[k], SIGKILL);
    for (int k = 0; k < n; k++) waitpid(pids[k], NULL, 0);
}

/* G greedy batch-1 decode steps on s after a 16-token prompt, each step's seconds in step_s;
 * with a probe, a read of its next slice after each step, its GB/s in probe_gbs. Returns 0, or
 * 1 on an engine error. */
static int decode_steps(fr_engine *e, fr_seq *s, const int *prompt, long G, int V, float *logits, double *step_s,
                        bench_read_probe *probe, double *probe_gbs) {
    const int *pp = prompt;
    int pl = 16, one = 1, tok = 0;
    fr_seq_truncate(s, 0);
    if (fr_engine_forward(e, &s, 1, &pp, &pl, logits, 0) != FR_OK) return 1;
    const int *tp = &tok;
    for (long g = 0; g < G; g++) {
        int best = 0;
        for (int v = 1; v < V; v++)
            if (logits[v] > logits[best]) best = v;
        tok = best;
        const double t = bench_now();
        if (fr_engine_forward(e, &s, 1, &tp, &one, logits, 0) != FR_OK) return 1;
        step_s[g] = bench_now() - t;
        if (probe) probe_gbs[g] = bench_read_probe_gbs(probe);
    }
    return 0;
}

/* decode_steps for the --hog test: *total_tps from the summed step times, *median_tps from the
 * median step */
static int hog_decode(fr_engine *e, fr_seq *s, const int *prompt, long G, int V, float *logits, double *step_s,
                      double *total_tps, double *median_tps) {
    if (decode_steps(e, s, prompt, G, V, logits, step_s, NULL, NULL)) return 1;
    double sum = 0;
    for (long g = 0; g < G; g++) sum += step_s[g];
    *total_tps = G / sum;
    *median_tps = 1.0 / bench_median(step_s, G);
    return 0;
}

int main(int argc, char **argv) {
    const char *prog = "bench_infer";
    char cfg_path[1024];
    default_config(cfg_path, sizeof cfg_path);
    long P = 64, G = 48, threads = 0, hog = 0;
    const char *only = NULL; /* --weights: comma-separated subset of f32,bf16,q8_0,q4_1 */
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        else if (!strcmp(a, "--config")) snprintf(cfg_path, sizeof cfg_path, "%s", bench_opt_value(prog, argc, argv, &i));
        else if (!strcmp(a, "--prompt")) P = bench_parse_long(prog, a, bench_opt_value(prog, argc, argv, &i), 1, 1 << 16);
        else if (!strcmp(a, "--gen")) G = bench_parse_long(prog, a, bench_opt_value(prog, argc, argv, &i), 1, 1 << 16);
        else if (!strcmp(a, "--threads")) threads = bench_parse_long(prog, a, bench_opt_value(prog, argc, argv, &i), 1, 4096);
        else if (!strcmp(a, "--weights")) only = bench_opt_value(prog, argc, argv, &i);
        else if (!strcmp(a, "--hog")) hog = bench_parse_long(prog, a, bench_opt_value(prog, argc, argv, &i), 0, HOG_MAX);
        else { fprintf(stderr, "%s: unknown option '%s'\n\n", prog, a); usage(stderr); return 2; }
    }
    if (threads > 0) fr_set_num_threads((int)threads);
    fr_config cfg;
    if (fr_config_load(&cfg, cfg_path) != FR_OK) return die(cfg_path);
    if (P + 3 * G + 32 > cfg.max_position_embeddings) {
        fprintf(stderr, "%s: --prompt + --gen exceed max_position_embeddings\n", prog);
        return 2;
    }
    double t0 = bench_now();
    fr_model *m;
    if (fr_model_create(&m, &cfg, 1) != FR_OK) return die("create");
    double t_create = bench_now() - t0;
    size_t n_params = fr_model_num_params(m);

    /* The bound uses the best read bandwidth probed so far in the run (three probes here, one
     * more before each format's decode): on a shared machine a single probe can come out 20-40 %
     * low, and a low probe would flatter the fraction. */
    bench_bw_result bw;
    double peak_gbs = 0;
    for (int k = 0; k < 3; k++) {
        if (bench_memory_bandwidth((size_t)256 << 20, &bw) != 0) return die("bandwidth probe");
        if (bw.read_gbs > peak_gbs) peak_gbs = bw.read_gbs;
    }

    const int V = cfg.vocab_size;
    /* the decode phase reads 16-token prompts at offsets 0, 4, 8, 12: at least 28 tokens */
    const long n_prompt = P > 28 ? P : 28;
    int *prompt = malloc((size_t)n_prompt * sizeof(int)), *step = malloc(4 * sizeof(int));
    float *logits = malloc((size_t)4 * V * sizeof(float));
    double *step_s = malloc((size_t)G * sizeof(double)), *probe_gbs = malloc((size_t)G * sizeof(double));
    bench_read_probe probe;
    if (!prompt || !step || !logits || !step_s || !probe_gbs) return die("out of memory");
    if (bench_read_probe_init(&probe, (size_t)256 << 20, (size_t)64 << 20) != 0) return die("out of memory for the read probe");
    tokens(prompt, (int)n_prompt, V, 1);

    printf("bench_infer: %s, %.1fM params (%.0f MB in FP32, created in %.1f s), %d threads, "
           "memory read bandwidth %.1f GB/s (best of 3 probes)\n",
           cfg_path, n_params / 1e6, n_params * 4 / 1e6, t_create, omp_get_max_threads(), peak_gbs);
    printf("| weights | MB read / decoded token | prompt tok/s (B=1, %ld tokens) | decode tok/s B=1 | decode tok/s B=4 (total) | "
           "read GB/s (best probe) | bound tok/s (bandwidth / bytes) | B=1 / bound | paired probe GB/s (median) | "
           "B=1 / paired bound (median) | thread round trip ns | 2-token step / 1-token step |\n", P);
    printf("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    char json[8192]; /* one JSON line per format, printed after the table */
    char hog_rows[4096]; /* the --hog table, printed after the main one */
    int rows_hog = 0;
    hog_rows[0] = 0;
    const int cores = omp_get_num_procs();
    int rows_json = 0;
    json[0] = 0;
    for (int wt = 0; wt < 4; wt++) {
        if (only && !bench_list_has(only, fr_weight_type_name(wt))) continue;
        fr_engine_options o;
        fr_engine_options_default(&o);
        /* all threads at every step: the governor (on by default in the product) moves decode
         * to one thread when it measures that cheaper, which a shared VM's noise can make it do
         * for a whole pass; --hog measures it on its own */
        o.adaptive_threads = 0;
        o.weight_type = wt;
        o.max_seq_len = (int)(P + 3 * G + 32);
        fr_engine *e;
        if (fr_engine_from_model(&e, m, &o) != FR_OK) {
            printf("| %s | not available in this build: %s | | | | | | | | | | |\n", fr_weight_type_name(wt), fr_last_error());
            continue;
        }
        const double bytes = (double)fr_engine_active_weight_bytes(e);
        fr_seq *s[4];
        for (int i = 0; i < 4; i++) fr_seq_create(&s[i], e);
        /* prompt processing, batch 1 (one untimed warm-up pass first) */
        const int *pp = prompt;
        int pl = (int)P;
        fr_engine_forward(e, s, 1, &pp, &pl, logits, 0);
        fr_seq_truncate(s[0], 0);
        double t = bench_now();
        if (fr_engine_forward(e, s, 1, &pp, &pl, logits, 0) != FR_OK) return die("prefill");
        double pp_tps = P / (bench_now() - t);
        /* probed again just before this format's decode (the machine's state drifts) */
        bench_bw_result bw_now;
        if (bench_memory_bandwidth((size_t)256 << 20, &bw_now) != 0) return die("bandwidth probe");
        if (bw_now.read_gbs > peak_gbs) peak_gbs = bw_now.read_gbs;
        /* decode, batch 1 and batch 4: prompts of 16 tokens, then G single-token steps */
        /* Each step is timed alone and the rates come from the median step: a neighbour's burst
         * on a shared host lands in a few steps and does not move the median (totals over 48
         * steps varied by 30 % from run to run on the 2-vCPU VM). */
        double dec[2], med1 = 0, step2_ratio = 0;
        for (int bi = 0; bi < 2; bi++) {
            int B = bi == 0 ? 1 : 4;
            const int *ps[4];
            int pls[4], ones[4] = {1, 1, 1, 1};
            for (int i = 0; i < B; i++) {
                fr_seq_truncate(s[i], 0);
                ps[i] = prompt + 4 * i;
                pls[i] = 16;
            }
            if (fr_engine_forward(e, s, B, ps, pls, logits, 0) != FR_OK) return die("prompt");
            const int *sp[4] = {step, step + 1, step + 2, step + 3};
            for (long g = 0; g < G; g++) {
                for (int i = 0; i < B; i++) {
                    /* greedy continuation, so the routing follows real decoding */
                    int best = 0;
                    for (int v = 1; v < V; v++)
                        if (logits[(size_t)i * V + v] > logits[(size_t)i * V + best]) best = v;
                    step[i] = best;
                }
                t = bench_now();
                if (fr_engine_forward(e, s, B, sp, ones, logits, 0) != FR_OK) return die("decode");
                step_s[g] = bench_now() - t;
            }
            const double med = bench_median(step_s, G);
            if (bi == 0) med1 = med;
            dec[bi] = B / med;
        }
        /* The paired bound: batch-1 decode steps again, each followed by a read probe of 64 MiB
         * (bench_read_probe), and the median over steps of (bytes / step time) / (that probe's
         * GB/s): the bandwidth the step could have had, measured within a millisecond of it. The
         * probes flush the last-level cache, so a model that fits in it decodes slower here
         * than in the B=1 column. */
        double paired_frac = 0, paired_gbs = 0, rt_ns = bench_thread_round_trip_ns();
        if (decode_steps(e, s[0], prompt, G, V, logits, step_s, &probe, probe_gbs)) return die("decode");
        for (long g = 0; g < G; g++) step_s[g] = bytes / step_s[g] / 1e9 / probe_gbs[g]; /* now fractions */
        paired_frac = bench_median(step_s, G);
        paired_gbs = bench_median(probe_gbs, G);
        /* the speculative verify step: 2 tokens appended to one sequence per step */
        {
            int two = 2, pair[2] = {3, 5};
            const int *tp2 = pair;
            for (long g = 0; g < G; g++) {
                t = bench_now();
                if (fr_engine_forward(e, s, 1, &tp2, &two, logits, 0) != FR_OK) return die("2-token step");
                step_s[g] = bench_now() - t;
            }
            step2_ratio = bench_median(step_s, G) / med1;
        }
        double bound = peak_gbs * 1e9 / bytes;
        rt_ns = (rt_ns + bench_thread_round_trip_ns()) / 2; /* before and after the paired pass */
        printf("| %s | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.0f %% | %.1f | %.0f %% | %.0f | %.2f |\n", fr_weight_type_name(wt),
               bytes / 1e6, pp_tps, dec[0], dec[1], peak_gbs, bound, 100.0 * dec[0] / bound, paired_gbs, 100.0 * paired_frac,
               rt_ns, step2_ratio);
        rows_json += snprintf(json + rows_json, sizeof json - (size_t)rows_json,
                              "{\"bench\": \"infer\", \"weights\": \"%s\", \"threads\": %d, \"mb_per_token\": %.2f, "
                              "\"prompt_tokens\": %ld, \"prompt_tps\": %.2f, \"decode_steps\": %ld, \"decode_tps_b1\": %.2f, "
                              "\"decode_tps_b4\": %.2f, \"read_gbs\": %.3f, \"bound_tps\": %.2f, \"fraction_of_bound\": %.4f, "
                              "\"paired_read_gbs\": %.3f, \"paired_fraction_of_bound\": %.4f, \"thread_round_trip_ns\": %.0f, "
                              "\"step2_over_step1\": %.3f}\n",
                              fr_weight_type_name(wt), omp_get_max_threads(), bytes / 1e6, P, pp_tps, G, dec[0], dec[1], peak_gbs, bound,
                              dec[0] / bound, paired_gbs, paired_frac, rt_ns, step2_ratio);
        if (rows_json >= (int)sizeof json) rows_json = (int)sizeof json - 1;
        for (int fixed = 0; hog > 0 && fixed < 2; fixed++) {
            /* alone, with hog, alone, with hog: the better of the two of each counts (a
             * neighbour's burst lands in one), the same rule for both conditions */
            fr_engine *he = e;
            fr_seq *hs = s[0];
            if (!fixed) {
                o.adaptive_threads = 1;
                if (fr_engine_from_model(&he, m, &o) != FR_OK || fr_seq_create(&hs, he) != FR_OK)
                    return die("engine with the thread governor");
                o.adaptive_threads = 0;
            }
            double tot[2] = {0, 0}, med[2] = {0, 0};
            pid_t pids[HOG_MAX];
            int started = (int)hog;
            for (int rep = 0; rep < 4; rep++) {
                const int with = rep & 1;
                if (with && (started = hog_start(pids, (int)hog)) < (int)hog) {
                    hog_stop(pids, started);
                    fprintf(stderr, "%s: could not start %ld busy processes\n", prog, hog);
                    return 1;
                }
                double tt, mt;
                const int bad = hog_decode(he, hs, prompt, G, V, logits, step_s, &tt, &mt);
                if (with) hog_stop(pids, started);
                if (bad) return die("decode (hog)");
                if (tt > tot[with]) tot[with] = tt;
                if (mt > med[with]) med[with] = mt;
            }
            if (!fixed) {
                fr_seq_free(hs);
                fr_engine_free(he);
            }
            const double expect = hog < cores ? (double)cores / (double)(cores - hog) : 0;
            char expect_s[32];
            if (expect > 0) snprintf(expect_s, sizeof expect_s, "%.2f", expect);
            else snprintf(expect_s, sizeof expect_s, "n/a (all cores)");
            rows_hog += snprintf(hog_rows + rows_hog, sizeof hog_rows - (size_t)rows_hog,
                                 "| %s | %s | %d of %d | %.1f | %.1f | %.2f | %.1f | %.1f | %.2f | %s |\n", fr_weight_type_name(wt),
                                 fixed ? "all, always" : "governor",
                                 (int)hog, cores, tot[0], tot[1], tot[0] / tot[1], med[0], med[1], med[0] / med[1], expect_s);
            if (rows_hog >= (int)sizeof hog_rows) rows_hog = (int)sizeof hog_rows - 1;
            rows_json += snprintf(json + rows_json, sizeof json - (size_t)rows_json,
                                  "{\"bench\": \"infer_hog\", \"weights\": \"%s\", \"governor\": %s, \"threads\": %d, \"cores\": %d, \"hog\": %ld, "
                                  "\"decode_steps\": %ld, \"alone_tps\": %.2f, \"hog_tps\": %.2f, \"slowdown\": %.3f, "
                                  "\"alone_tps_median\": %.2f, \"hog_tps_median\": %.2f, \"slowdown_median\": %.3f, "
                                  "\"proportional\": %.3f}\n",
                                  fr_weight_type_name(wt), fixed ? "false" : "true", omp_get_max_threads(), cores, hog, G, tot[0], tot[1], tot[0] / tot[1],
                                  med[0], med[1], med[0] / med[1], expect);
            if (rows_json >= (int)sizeof json) rows_json = (int)sizeof json - 1;
        }
        fflush(stdout);
        for (int i = 0; i < 4; i++) fr_seq_free(s[i]);
        fr_engine_free(e);
    }
    if (hog > 0)
        printf("\nDecode B=1 next to %ld busy process%s (%ld steps; better of 2 runs each; slowdown = alone / with hog; "
               "proportional = cores / (cores - busy)):\n\n"
               "| weights | threads | busy cores | alone tok/s (total) | with hog tok/s (total) | slowdown (total) | alone tok/s (median) | "
               "with hog tok/s (median) | slowdown (median) | proportional |\n|---|---|---|---|---|---|---|---|---|---|\n%s",
               hog, hog > 1 ? "es" : "", G, hog_rows);
    printf("\n%s", json);
    free(prompt);
    free(step_s);
    free(probe_gbs);
    bench_read_probe_free(&probe);
    free(step);
    free(logits);
    fr_model_free(m);
    return 0;
}
