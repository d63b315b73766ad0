/*
 * bench_decode_device.c — the inference engine on a device backend (src/infer/engine_device.c),
 * for scripts/gpu-check.sh: decode speed of the bench-infer model and the latent decode
 * attention's bandwidth, next to the device's own copy bandwidth measured in the same run.
 *
 *   bench_decode_device [--device cuda|cpu-guarded] [--config FILE] [--prompt N] [--gen N]
 *                       [--batch LIST] [--context N] [--heads N]
 *
 * 1. Copy bandwidth: the backend's device-to-device copy of a 1 GiB buffer (512 MiB on
 *    cpu-guarded), best of 5: bytes read + bytes written per second.
 * 2. Decode: a random model of --config (default bench/configs/bench-infer.json) on the
 *    device; for each batch size in --batch (default 1,32) the sequences are prefilled with
 *    --prompt tokens each, then --gen single-token steps are timed (the logits come back to
 *    the host every step, which synchronises). tokens/s from the median step.
 * 3. Latent attention alone: one decoded row per sequence attending to a cache of --context
 *    tokens with DeepSeek-V3's widths (kv_lora_rank 512 + rope 64, --heads 128 heads), timed
 *    over 20 calls; it must read the cache (context x 576 x 4 bytes) once per call, so its
 *    rate is cache bytes / time, and the figure is that rate over the copy's read rate
 *    (the target: >= 70 %).
 * Prints a table and one JSON line per measurement ({"bench": "decode_device", ...}).
 * On cpu-guarded every op also changes page protections: the figures are then only a check
 * that the benchmark runs.
 */
#include "bench_common.h"
#include "model/model_internal.h"

#include <math.h>
#include <stdint.h>

static void usage(FILE *f) {
    fprintf(f, "usage: bench_decode_device [--device cuda|cpu-guarded] [--config FILE] [--prompt N] [--gen N]\n"
               "                           [--batch LIST] [--context N] [--heads N]\n"
               "  --device D     backend (default cuda)\n"
               "  --config FILE  model config.json (default bench/configs/bench-infer.json)\n"
               "  --prompt N     prompt tokens per sequence before decoding (default 128)\n"
               "  --gen N        decode steps timed per batch size (default 32)\n"
               "  --batch LIST   batch sizes, comma-separated (default 1,32)\n"
               "  --context N    cached tokens for the attention-only measurement (default 4096)\n"
               "  --heads N      heads for the attention-only measurement (default 128)\n");
}

static int die(const char *what) {
    fprintf(stderr, "bench_decode_device: %s: %s\n", what, fr_last_error());
    return 1;
}

/* wait for the backend's queue: a 4-byte copy back to the host synchronises the stream */
static void sync_dev(const fr_ops *o, const void *p) {
    float x;
    o->to_host(&x, p, sizeof x);
}

int main(int argc, char **argv) {
    const char *prog = "bench_decode_device", *device = "cuda", *batches = "1,32";
    char cfg_path[1024] = "bench/configs/bench-infer.json";
    long P = 128, G = 32, ctx = 4096, heads = 128;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        else if (!strcmp(a, "--device")) device = bench_opt_value(prog, argc, argv, &i);
        else if (!strcmp(a, "--config")) snprintf(cfg_path, sizeof cfg_path, "%s", bench_opt_value(prog, argc, argv, &i));
        else if (!strcmp(a, "--prompt")) P = bench_parse_long(prog, a, bench_opt_value(prog, argc, argv, &i), 1, 1 << 16);
        else if (!strcmp(a, "--gen")) G = bench_parse_long(prog, a, bench_opt_value(prog, argc, argv, &i), 1, 1 << 16);
        else if (!strcmp(a, "--batch")) batches = bench_opt_value(prog, argc, argv, &i);
        else if (!strcmp(a, "--context")) ctx = bench_parse_long(prog, a, bench_opt_value(prog, argc, argv, &i), 1, 1 << 20);
        else if (!strcmp(a, "--heads")) heads = bench_parse_long(prog, a, bench_opt_value(prog, argc, argv, &i), 1, 1024);
        else { fprintf(stderr, "%s: unknown option '%s'\n", prog, a); usage(stderr); return 2; }
    }
    if (fr_set_device(device) != FR_OK) return die("--device");
    const fr_ops *o = fr_device_ops();

    /* 1. copy bandwidth */
    const size_t copy_bytes = (strcmp(device, "cuda") == 0 ? (size_t)1 << 30 : (size_t)1 << 29);
    void *src = o->alloc(copy_bytes), *dst = o->alloc(copy_bytes);
    if (!src || !dst) return die("buffers for the copy bandwidth");
    o->copy(dst, src, copy_bytes); /* warm-up */
    sync_dev(o, dst);
    double best = 1e30;
    for (int k = 0; k < 5; k++) {
        const double t = bench_now();
        o->copy(dst, src, copy_bytes);
        sync_dev(o, dst);
        const double s = bench_now() - t;
        if (s < best) best = s;
    }
    o->free(src);
    o->free(dst);
    const double copy_gbs = 2.0 * copy_bytes / best / 1e9, read_gbs = copy_bytes / best / 1e9;
    printf("bench_decode_device on %s: copy %.1f GB/s (read + write; %.1f GB/s read), best of 5 x %zu MiB\n", device,
           copy_gbs, read_gbs, copy_bytes >> 20);
    printf("{\"bench\": \"decode_device\", \"what\": \"copy\", \"device\": \"%s\", \"copy_gbs\": %.2f, \"read_gbs\": %.2f}\n",
           device, copy_gbs, read_gbs);

    /* 2. decode of the model */
    fr_config cfg;
    if (fr_config_load(&cfg, cfg_path) != FR_OK) return die(cfg_path);
    fr_set_device("cpu"); /* created on the host, then the engine uploads it */
    fr_model *m;
    if (fr_model_create(&m, &cfg, 1) != FR_OK) return die("create");
    fr_set_device(device);
    int max_b = 1;
    for (const char *p = batches; *p;) {
        const long b = strtol(p, (char **)&p, 10);
        if (b > max_b) max_b = (int)b;
        if (*p == ',') p++;
        else if (*p) { fprintf(stderr, "%s: --batch '%s' is not a comma-separated list of sizes\n", prog, batches); return 2; }
    }
    fr_engine_options eo;
    fr_engine_options_default(&eo);
    eo.max_seq_len = (int)(P + G + 8);
    fr_engine *e;
    if (fr_engine_from_model(&e, m, &eo) != FR_OK) return die("engine");
    fr_model_free(m);
    const int V = cfg.vocab_size;
    fr_seq **s = calloc((size_t)max_b, sizeof *s);
    int *prompt = malloc((size_t)max_b * P * sizeof(int)), *step = malloc((size_t)max_b * sizeof(int));
    int *ones = malloc((size_t)max_b * sizeof(int)), *lens = malloc((size_t)max_b * sizeof(int));
    const int **ptr = malloc((size_t)max_b * sizeof *ptr);
    float *logits = malloc((size_t)max_b * V * sizeof(float));
    double *step_s = malloc((size_t)G * sizeof(double));
    if (!s || !prompt || !step || !ones || !lens || !ptr || !logits || !step_s) return die("out of memory");
    uint64_t rng = 7;
    for (long i = 0; i < max_b * P; i++) prompt[i] = (int)(bench_xorshift(&rng) % (uint64_t)V);
    for (int i = 0; i < max_b; i++)
        if (fr_seq_create(&s[i], e) != FR_OK) return die("sequence");
    printf("| batch | prefill tok/s (%ld x batch) | decode tok/s (total) | ms / step (median) |\n|---|---|---|---|\n", P);
    for (const char *p = batches; *p;) {
        const int B = (int)strtol(p, (char **)&p, 10);
        if (*p == ',') p++;
        if (B < 1) continue;
        for (int i = 0; i < B; i++) {
            fr_seq_truncate(s[i], 0);
            ptr[i] = prompt + (size_t)i * P;
            lens[i] = (int)P;
            ones[i] = 1;
        }
        double t = bench_now();
        if (fr_engine_forward(e, s, B, ptr, lens, logits, 0) != FR_OK) return die("prefill");
        const double pre = (double)B * P / (bench_now() - t);
        for (long g = 0; g < G; g++) {
            for (int i = 0; i < B; i++) {
                int arg = 0;
                for (int v = 1; v < V; v++)
                    if (logits[(size_t)i * V + v] > logits[(size_t)i * V + arg]) arg = v;
                step[i] = arg;
                ptr[i] = step + i;
            }
            t = bench_now();
            if (fr_engine_forward(e, s, B, ptr, ones, logits, 0) != FR_OK) return die("decode");
            step_s[g] = bench_now() - t;
        }
        const double med = bench_median(step_s, G);
        printf("| %d | %.0f | %.1f | %.3f |\n", B, pre, B / med, med * 1e3);
        printf("{\"bench\": \"decode_device\", \"what\": \"decode\", \"device\": \"%s\", \"config\": \"%s\", \"batch\": %d, "
               "\"prompt\": %ld, \"prefill_tps\": %.1f, \"decode_tps\": %.2f, \"ms_per_step\": %.4f}\n",
               device, cfg_path, B, P, pre, B / med, med * 1e3);
    }
    for (int i = 0; i < max_b; i++) fr_seq_free(s[i]);
    fr_engine_free(e);

    /* 3. the latent attention alone: DeepSeek-V3's widths */
    const int kvr = 512, row = 512 + 64, nh = (int)heads, T = (int)ctx;
    const size_t cache_bytes = (size_t)T * row * sizeof(float);
    float *cache = o->alloc(cache_bytes), *qf = o->alloc((size_t)nh * row * sizeof(float));
    float *out = o->alloc((size_t)nh * kvr * sizeof(float));
    int *pos = o->alloc(sizeof(int));
    if (!cache || !qf || !out || !pos) return die("attention buffers");
    const int last = T - 1;
    o->to_device(pos, &last, sizeof last);
    const float scale = 1.0f / sqrtf(192.0f);
    o->latent_attention(out, qf, cache, pos, 1, nh, row, kvr, T, scale); /* warm-up, scratch */
    sync_dev(o, out);
    const int reps = 20;
    double t = bench_now();
    for (int r = 0; r < reps; r++) o->latent_attention(out, qf, cache, pos, 1, nh, row, kvr, T, scale);
    sync_dev(o, out);
    const double per = (bench_now() - t) / reps, att_gbs = cache_bytes / per / 1e9;
    if (fr_device_status(o, "latent_attention") != FR_OK) return die("latent attention");
    printf("latent attention, 1 row x %d heads over %d cached tokens (%.1f MB): %.3f ms, %.1f GB/s = %.0f %% of the copy's "
           "read rate\n", nh, T, cache_bytes / 1e6, per * 1e3, att_gbs, 100.0 * att_gbs / read_gbs);
    printf("{\"bench\": \"decode_device\", \"what\": \"latent_attention\", \"device\": \"%s\", \"heads\": %d, \"context\": %d, "
           "\"ms\": %.4f, \"gbs\": %.2f, \"fraction_of_copy_read\": %.4f}\n",
           device, nh, T, per * 1e3, att_gbs, att_gbs / read_gbs);
    o->free(cache), o->free(qf), o->free(out), o->free(pos);
    free(s), free(prompt), free(step), free(ones), free(lens), free(ptr), free(logits), free(step_s);
    return 0;
}
