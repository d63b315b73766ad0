/* bench_model.c — training-step throughput of a small DeepSeek-V3-style model on the CPU.
 *
 * Creates the model of bench/configs/bench-20m.json (or --config) with fr_model_create, then
 * times forward (with targets: main loss, MTP loss, balance loss) + backward on random tokens.
 * Reports tokens/s, achieved GFLOP/s (FLOPs counted by fr_model_train_flops) and the fraction
 * of this machine's FP32 FMA peak, measured in the same process by the bench_peak probe.
 *
 * Also, for the step's time budget: which GEMM path ran (oneDNN / frugal SGEMM for fp32; the
 * BF16 path oneDNN chose, AMX / AVX512-BF16 / fallback, for bf16), the share of the step spent
 * in the GEMMs (the ops table's gemm entries timed, over extra steps after the timed ones, so
 * the headline figures carry no timing overhead), and the OpenMP parallel regions per step
 * when run under bench/omp_count (LD_PRELOAD=build/libomp_count.so).
 *
 * --against FILE: a second model (issue 21: MoE against dense at equal active FLOPs) trained
 * in the same process, its steps alternating with the first's, so that both meet the same
 * state of a shared machine; the ratio of the two medians and the median of the ratios of
 * neighbouring steps are printed. Run one after the other, the two figures drifted by 5-10 %
 * between processes on the 2-vCPU development machine, more than the difference measured.
 *
 *   bench_model [--config FILE] [--batch B] [--seq T] [--steps N] [--warmup N] [--threads N]
 *               [--precision fp32|bf16|fp8] [--no-mtp] [--against FILE]
 */
#include "bench_common.h"

#include "frugal.h"
#include "core/internal.h"
#include "cpu/ops_cpu.h"
#include "cuda/ops_cuda.h"
#include "model/optim.h"

#include <dlfcn.h>
#include <math.h>

/* __FILE__ is the absolute source path under CMake, so the default config is found from any
 * working directory; a relative fallback covers other builds run from the repository root. */
#define BENCH_THIS_FILE __FILE__

static void usage(FILE *f) {
    fprintf(f,
            "usage: bench_model [--config FILE] [--batch B] [--seq T] [--steps N] [--warmup N] [--threads N] [--no-adamw]\n"
            "\n"
            "Times training steps (forward with loss + backward + AdamW) of a DeepSeek-V3-style\n"
            "model created from FILE (default bench/configs/bench-20m.json) on random tokens.\n"
            "\n"
            "  --config FILE  model config.json (default: bench/configs/bench-20m.json)\n"
            "  --batch B      sequences per step (default 4)\n"
            "  --seq T        tokens per sequence (default 256)\n"
            "  --steps N      timed steps (default 10)\n"
            "  --warmup N     untimed steps first (default 2)\n"
            "  --threads N    threads (default: OMP_NUM_THREADS or all cores)\n"
            "  --no-adamw     time forward + backward only (default: the whole step, AdamW included)\n"
            "  --precision P  fp32 | bf16 | fp8 for the block linears (default fp32)\n"
            "  --no-mtp       drop the config's MTP modules (num_nextn_predict_layers = 0)\n"
            "  --device D     cpu (default) | cuda: the backend the model runs on\n"
            "  --peak-tflops X  the device's dense peak for the MFU on cuda (e.g. 989 for an H100 / H200's\n"
            "                 BF16 tensor cores); the CPU's FP32 FMA peak is measured instead\n"
            "  --against FILE  also a second model from FILE, its steps alternating with the first's\n"
            "                 (same batch, tokens and options): the ratio of the step times\n"
            "  --gemm-shapes  also print the 20 GEMM shapes that took the most time (a grouped call\n"
            "                 of n products: M = -n, N and K of its first product)\n"
            "\n"
            "OpenMP regions per step: LD_PRELOAD=build/libomp_count.so bench_model ...\n");
}

/* bench/configs/bench-20m.json next to this source file, else relative to the cwd. */
static void default_config(char *buf, size_t n) {
    const char *rel = "bench/configs/bench-20m.json";
    const char *self = BENCH_THIS_FILE;
    const char *slash = strrchr(self, '/');
    if (self[0] == '/' && slash) {
        snprintf(buf, n, "%.*s/configs/bench-20m.json", (int)(slash - self), self);
        FILE *f = fopen(buf, "r");
        if (f) {
            fclose(f);
            return;
        }
    }
    snprintf(buf, n, "%s", rel);
}


static int fail(const char *what) {
    fprintf(stderr, "bench_model: %s: %s\n", what, fr_last_error());
    return 1;
}

/* The ops table with its GEMM entries timed (the GEMM share of a step). */
static fr_ops g_timed;
static const fr_ops *g_real;
static double g_gemm_s;
static long g_gemm_calls;

/* --gemm-shapes: time per GEMM kind (transposes, and which of M, N, K is the token count) */
typedef struct {
    int ta, tb, M, N, K;
    long calls;
    double s, flops;
} shape_time;
static shape_time g_shape[512];
static int g_n_shape, g_by_shape;

static void shape_add(int ta, int tb, int M, int N, int K, double dt) {
    if (!g_by_shape) return;
    for (int i = 0; i < g_n_shape; i++) {
        shape_time *e = &g_shape[i];
        if (e->ta == ta && e->tb == tb && e->M == M && e->N == N && e->K == K) {
            e->calls++, e->s += dt, e->flops += 2.0 * M * N * K;
            return;
        }
    }
    if (g_n_shape < 512) g_shape[g_n_shape++] = (shape_time){ta, tb, M, N, K, 1, dt, 2.0 * M * N * K};
}

static int by_time(const void *a, const void *b) {
    const double x = ((const shape_time *)a)->s, y = ((const shape_time *)b)->s;
    return x < y ? 1 : x > y ? -1 : 0;
}

static void timed_gemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                       int ldb, float beta, float *C, int ldc) {
    const double t0 = bench_now();
    g_real->gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    const double dt = bench_now() - t0;
    g_gemm_s += dt;
    g_gemm_calls++;
    shape_add(ta, tb, M, N, K, dt);
}

static int timed_gemm_bf16(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                           int ldb, float beta, float *C, int ldc) {
    const double t0 = bench_now();
    int rc = g_real->gemm_bf16(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    const double dt = bench_now() - t0;
    g_gemm_s += dt;
    g_gemm_calls++;
    shape_add(ta, tb, M, N, K, dt);
    return rc;
}

static void timed_gemm_grouped(int ta, int tb, float alpha, float beta, const fr_gemm_desc *g, int n) {
    const double t0 = bench_now();
    g_real->gemm_grouped(ta, tb, alpha, beta, g, n);
    const double dt = bench_now() - t0;
    g_gemm_s += dt;
    g_gemm_calls++;
    double flops = 0;
    for (int i = 0; i < n; i++) flops += 2.0 * g[i].M * g[i].N * g[i].K;
    if (g_by_shape && n > 0) { /* one row per (transposes, group size) */
        shape_add(ta, tb, -n, g[0].N, g[0].K, dt);
        for (int i = 0; i < g_n_shape; i++)
            if (g_shape[i].M == -n && g_shape[i].ta == ta && g_shape[i].tb == tb && g_shape[i].N == g[0].N &&
                g_shape[i].K == g[0].K)
                g_shape[i].flops += flops - 2.0 * -n * g[0].N * g[0].K;
    }
}

/* OpenMP parallel regions entered so far, when bench/omp_count.c is preloaded; -1 if not. */
static long omp_regions(void) {
    long (*count)(void) = (long (*)(void))dlsym(RTLD_DEFAULT, "fr_bench_omp_regions");
    return count ? count() : -1;
}

/* What the trainer does after backward (one process, clipping on): the global gradient norm,
 * then AdamW, which on host memory also zeroes the gradients for the next step in its pass
 * (*grads_zero: the step's own zeroing is then skipped, as the trainer skips it). */
static void optimizer_step(fr_model *m, float *mom, float *var, long step, int *grads_zero) {
    fr_adamw_hparams h = {1e-4, 0.9, 0.95, 1e-8, 0.1, step, 1.0};
    fr_grad_norm(m, 1.0);
    const fr_opt_range all = {0, m->n_params, 0};
    const fr_adamw_extra x = {1.0, 1.0, m->ops->host_memory, NULL};
    fr_adamw_step_ranges(m, mom, var, 0, &all, 1, &h, &x);
    *grads_zero = m->ops->host_memory;
}

static void zero_grads(fr_model *m, int *grads_zero) {
    if (!*grads_zero) fr_model_zero_grad(m);
    *grads_zero = 0;
}

/* A model being timed (the first, and the --against one): its parameters, AdamW moments and
 * optimizer step count */
typedef struct {
    fr_model *m;
    float *mom, *var;
    int mom_dev; /* the moments in the backend's memory (device kernels), else fr_alloc'd */
    long opt_step;
    int grads_zero;
} bench_run;

/* The model of the config at path (on the current device), checked against the sequence
 * length; what: how the messages name it. Returns 0, or the exit code after a message. */
static int run_create(bench_run *r, const char *prog, const char *what, const char *path, const char *precision,
                      int no_mtp, long T) {
    fr_config cfg;
    if (fr_config_load(&cfg, path) != FR_OK) {
        fprintf(stderr, "%s: cannot load the config %s: %s\n", prog, path, fr_last_error());
        return 1;
    }
    if (T > cfg.max_position_embeddings) {
        fprintf(stderr, "%s: --seq %ld exceeds max_position_embeddings %d of %s\n", prog, T, cfg.max_position_embeddings, path);
        return 2;
    }
    if (no_mtp) cfg.num_nextn_predict_layers = 0;
    if (fr_model_create(&r->m, &cfg, 1234) != FR_OK) {
        fprintf(stderr, "%s: cannot create the %s: %s\n", prog, what, fr_last_error());
        return 1;
    }
    if (fr_model_set_precision(r->m, precision) != FR_OK) return fail("--precision");
    fr_loss_weights w = {cfg.num_nextn_predict_layers > 0 ? 0.3f : 0.0f, 1e-4f};
    fr_model_set_loss_weights(r->m, w);
    return 0;
}

/* The moments live where the optimizer runs (device memory when the backend has the kernels),
 * on the host in fr_alloc's zeroed huge-page buffers as the trainer's: from calloc's 4 KiB
 * pages AdamW read them a third slower, and the MoE model (1.72x the parameters) lost more. */
static int run_moments(bench_run *r, int adamw) {
    if (!adamw) return 0;
    const size_t bytes = r->m->n_params * sizeof(float);
    r->mom_dev = fr_adamw_in_backend(r->m);
    r->mom = r->mom_dev ? r->m->ops->alloc(bytes) : fr_alloc(bytes);
    r->var = r->mom_dev ? r->m->ops->alloc(bytes) : fr_alloc(bytes);
    return r->mom && r->var ? 0 : fail("out of memory for the AdamW moments");
}

static void run_free(bench_run *r) {
    if (r->mom_dev) {
        if (r->mom) r->m->ops->free(r->mom);
        if (r->var) r->m->ops->free(r->var);
    } else {
        fr_free(r->mom);
        fr_free(r->var);
    }
    fr_model_free(r->m);
}

/* One training step as the trainer takes it; *fwd_s (optional): the seconds until the forward
 * was done. Returns 0, or 1 after a message. */
static int run_step(bench_run *r, const int *tokens, const int *targets, long B, long T, int adamw, fr_loss_info *li,
                    double *fwd_s) {
    const double t0 = bench_now();
    zero_grads(r->m, &r->grads_zero);
    if (fr_model_forward(r->m, tokens, targets, (int)B, (int)T, li) != FR_OK) return fail("forward failed");
    if (fwd_s) *fwd_s = bench_now() - t0;
    if (fr_model_backward(r->m) != FR_OK) return fail("backward failed");
    if (adamw) optimizer_step(r->m, r->mom, r->var, ++r->opt_step, &r->grads_zero);
    return 0;
}

int main(int argc, char **argv) {
    const char *prog = "bench_model";
    char cfg_buf[4096];
    const char *cfg_path = NULL;
    long B = 4, T = 256, steps = 10, warmup = 2, threads = 0;
    int adamw = 1, no_mtp = 0;
    const char *precision = "fp32", *device = "cpu", *against = NULL;
    double peak_tflops = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--config")) {
            cfg_path = bench_opt_value(prog, argc, argv, &i);
        } else if (!strcmp(a, "--batch")) {
            B = bench_parse_long(prog, a, bench_opt_value(prog, argc, argv, &i), 1, 1 << 16);
        } else if (!strcmp(a, "--seq")) {
            T = bench_parse_long(prog, a, bench_opt_value(prog, argc, argv, &i), 2, 1 << 20);
        } else if (!strcmp(a, "--steps")) {
            steps = bench_parse_long(prog, a, bench_opt_value(prog, argc, argv, &i), 1, 1 << 20);
        } else if (!strcmp(a, "--warmup")) {
            warmup = bench_parse_long(prog, a, bench_opt_value(prog, argc, argv, &i), 0, 1 << 20);
        } else if (!strcmp(a, "--no-adamw")) {
            adamw = 0;
        } else if (!strcmp(a, "--against")) {
            against = bench_opt_value(prog, argc, argv, &i);
        } else if (!strcmp(a, "--gemm-shapes")) {
            g_by_shape = 1;
        } else if (!strcmp(a, "--no-mtp")) {
            no_mtp = 1;
        } else if (!strcmp(a, "--precision")) {
            precision = bench_opt_value(prog, argc, argv, &i);
        } else if (!strcmp(a, "--device")) {
            device = bench_opt_value(prog, argc, argv, &i);
        } else if (!strcmp(a, "--peak-tflops")) {
            peak_tflops = (double)bench_parse_long(prog, a, bench_opt_value(prog, argc, argv, &i), 1, 100000);
        } else if (!strcmp(a, "--threads")) {
            threads = bench_parse_long(prog, a, bench_opt_value(prog, argc, argv, &i), 1, 4096);
        } else {
            fprintf(stderr, "%s: unknown option '%s'\n\n", prog, a);
            usage(stderr);
            return 2;
        }
    }
    if (!cfg_path) {
        default_config(cfg_buf, sizeof cfg_buf);
        cfg_path = cfg_buf;
    }
    if (threads > 0) {
        omp_set_num_threads((int)threads);
        fr_set_num_threads((int)threads);
    }
    if (B * T > INT_MAX / 2) {
        fprintf(stderr, "%s: batch x seq too large\n", prog);
        return 2;
    }

    if (fr_set_device(device) != FR_OK) return fail("--device");
    const int on_device = strcmp(device, "cpu") != 0;
    bench_run run = {0}, peer = {0};
    int rc = run_create(&run, prog, "model", cfg_path, precision, no_mtp, T);
    if (rc) return rc;
    fr_model *m = run.m;
    const fr_config cfg = m->cfg;
    char gemm_path[160];
    if (!strcmp(precision, "bf16"))
        snprintf(gemm_path, sizeof gemm_path, "bf16 %s%s", fr_bf16_gemm_path(),
                 fr_bf16_hardware() ? "" : " [no BF16 hardware: fallback]");
    else
        snprintf(gemm_path, sizeof gemm_path, "%s%s", !strcmp(precision, "fp8") ? "fp8 emulated on " : "",
                 fr_cpu_gemm_uses_onednn() ? "onednn sgemm" : "frugal sgemm");

    size_t n_params = fr_model_num_params(m), n_active = fr_model_num_active_params(m);
    int n = (int)(B * T);
    int *tokens = malloc((size_t)n * sizeof *tokens), *targets = malloc((size_t)n * sizeof *targets);
    if (!tokens || !targets) {
        fprintf(stderr, "%s: out of memory\n", prog);
        return 1;
    }
    uint64_t rng = 0x9E3779B97F4A7C15ull;
    for (long b = 0; b < B; b++) {
        int prev = (int)(bench_xorshift(&rng) % (uint64_t)cfg.vocab_size);
        for (long t = 0; t < T; t++) {
            int next = (int)(bench_xorshift(&rng) % (uint64_t)cfg.vocab_size);
            tokens[b * T + t] = prev;
            targets[b * T + t] = next;
            prev = next;
        }
    }

    /* The machine's ceiling, measured with the same threads before and after the model runs;
     * the higher of the two counts (a busy neighbour can only make a probe slower). */
    bench_peak_result peak = {0};
    if (on_device) { /* the device's dense peak, given: a probe of the GPU is not this program's job */
        peak.gflops = peak_tflops * 1e3;
        peak.threads = 1;
        peak.isa = device;
    } else {
        peak = bench_fma_peak();
    }
    if (on_device)
        snprintf(gemm_path, sizeof gemm_path, "%s", !strcmp(precision, "bf16") ? "cublas bf16" : "cublas fp32");

    if (run_moments(&run, adamw)) return 1;
    fr_loss_info li;
    if (against) {
        if (on_device) {
            fprintf(stderr, "%s: --against runs on the CPU only\n", prog);
            return 2;
        }
        if ((rc = run_create(&peer, prog, "--against model", against, precision, no_mtp, T)) || (rc = run_moments(&peer, adamw)))
            return rc;
        if (peer.m->cfg.vocab_size < cfg.vocab_size) {
            fprintf(stderr, "%s: the --against model's vocabulary (%d) is smaller than the first's (%d)\n", prog,
                    peer.m->cfg.vocab_size, cfg.vocab_size);
            return 2;
        }
        for (long s = 0; s < warmup; s++)
            if (run_step(&peer, tokens, targets, B, T, adamw, &li, NULL)) return 1;
    }
    double loss_total = NAN, loss_main = NAN;
    for (long s = 0; s < warmup; s++)
        if (run_step(&run, tokens, targets, B, T, adamw, &li, NULL)) return 1;
    double *dts = malloc((size_t)steps * sizeof *dts);
    double *dts_peer = malloc((size_t)steps * sizeof *dts), *pair_ratio = malloc((size_t)steps * sizeof *dts);
    if (!dts || !dts_peer || !pair_ratio) {
        fprintf(stderr, "%s: out of memory\n", prog);
        return 1;
    }
    double total = 0, fwd_total = 0;
    size_t dev_mem_peak = 0; /* device memory in use, sampled at the end of every step */
    for (long s = 0; s < steps; s++) {
        const double t0 = bench_now();
        double fwd_s;
        if (run_step(&run, tokens, targets, B, T, adamw, &li, &fwd_s)) return 1;
        float probe; /* a device backend runs asynchronously: the step ends when its work has */
        m->ops->to_host(&probe, m->params, sizeof probe);
        double dt = bench_now() - t0;
        if (on_device && fr_cuda_memory_used() > dev_mem_peak) dev_mem_peak = fr_cuda_memory_used();
        fwd_total += fwd_s;
        total += dt;
        dts[s] = dt;
        loss_total = li.loss;
        loss_main = li.loss_main;
        if (peer.m) {
            fr_loss_info peer_li;
            const double tp = bench_now();
            if (run_step(&peer, tokens, targets, B, T, adamw, &peer_li, NULL)) return 1;
            dts_peer[s] = bench_now() - tp;
            pair_ratio[s] = dt / dts_peer[s];
        }
    }
    /* the GEMM share and the OpenMP regions, over as many steps again, timed separately (on the
     * host's clock: meaningless for an asynchronous device, so not there) */
    g_real = m->ops;
    const long prof_steps = on_device ? 0 : steps;
    g_timed = *m->ops;
    g_timed.gemm = timed_gemm;
    g_timed.gemm_bf16 = timed_gemm_bf16;
    g_timed.gemm_grouped = timed_gemm_grouped;
    m->ops = &g_timed;
    const long regions0 = omp_regions();
    const double tp0 = bench_now();
    for (long s = 0; s < prof_steps; s++)
        if (run_step(&run, tokens, targets, B, T, adamw, &li, NULL)) return 1;
    const double prof_s = bench_now() - tp0;
    const long regions = regions0 >= 0 ? (omp_regions() - regions0) / steps : -1;
    m->ops = g_real;
    const double gemm_share = prof_s > 0 ? g_gemm_s / prof_s : 0;
    if (!on_device) {
        bench_peak_result peak2 = bench_fma_peak();
        if (peak2.gflops > peak.gflops) peak = peak2;
    }
    double median = bench_median(dts, steps); /* the headline; sorts dts */
    double best = dts[0], mean = total / (double)steps;
    free(dts);
    const double peer_median = peer.m ? bench_median(dts_peer, steps) : 0, pair_median = peer.m ? bench_median(pair_ratio, steps) : 0;
    free(dts_peer);
    free(pair_ratio);
    double flops = fr_model_train_flops(m, (int)B, (int)T);
    double tok_s = (double)n / median;
    double gflops = flops / median / 1e9;
    double frac = peak.gflops > 0 ? gflops / peak.gflops : 0;
    /* the peak is FP32's: BF16 hardware may pass it, FP32 and the FP8 emulation may not */
    if (frac > 1.0 && strcmp(precision, "bf16") != 0)
        fprintf(stderr, "%s: warning: above 100%% of the measured peak: the peak probe was slowed down "
                        "(shared machine, busy cores); rerun on an idle machine\n", prog);
    const char *name = strrchr(cfg_path, '/');
    name = name ? name + 1 : cfg_path;

    printf("bench_model: %s, %.2fM params (%.2fM active/token), B=%ld T=%ld, %d threads, %ld steps: "
           "%.0f tokens/s, step %.1f ms median (mean %.1f, best %.1f; forward %.1f mean), %.2f GFLOP/s = %.1f%% "
           "of the %.1f GFLOP/s FP32 FMA peak (%s); loss %.4f (main %.4f)\n",
           name, n_params / 1e6, n_active / 1e6, B, T, peak.threads, steps, tok_s, 1e3 * median, 1e3 * mean,
           1e3 * best, 1e3 * fwd_total / (double)steps, gflops, 100.0 * frac, peak.gflops, peak.isa, loss_total,
           loss_main);
    printf("  precision %s, GEMM path: %s; GEMMs %.1f%% of the step (%ld calls/step), the rest %.1f%%; ", precision,
           gemm_path, 100.0 * gemm_share, g_gemm_calls / steps, 100.0 * (1.0 - gemm_share));
    if (regions >= 0) printf("%ld OpenMP parallel regions per step\n", regions);
    else printf("OpenMP regions: not counted (run with LD_PRELOAD=build/libomp_count.so)\n");
    if (g_by_shape) {
        qsort(g_shape, (size_t)g_n_shape, sizeof g_shape[0], by_time);
        printf("  %-6s %6s %6s %6s %8s %10s %8s\n", "op", "M", "N", "K", "calls", "ms/step", "GFLOP/s");
        double rest_s = 0, rest_f = 0;
        long rest_calls = 0;
        for (int i = 20; i < g_n_shape; i++) rest_s += g_shape[i].s, rest_f += g_shape[i].flops, rest_calls += g_shape[i].calls;
        for (int i = 0; i < g_n_shape && i < 20; i++) {
            const shape_time *e = &g_shape[i];
            printf("  %c%c     %6d %6d %6d %8ld %10.2f %8.1f\n", e->ta ? 'T' : 'N', e->tb ? 'T' : 'N', e->M, e->N, e->K,
                   e->calls / steps, 1e3 * e->s / steps, e->flops / e->s / 1e9);
        }
        if (g_n_shape > 20)
            printf("  %d other shapes (MoE experts: rows vary by step) %6ld %10.2f %8.1f\n", g_n_shape - 20,
                   rest_calls / steps, 1e3 * rest_s / steps, rest_s > 0 ? rest_f / rest_s / 1e9 : 0.0);
    }
    printf("{\"bench\": \"model\", \"config\": \"%s\", \"params\": %zu, \"active_params\": %zu, \"batch\": %ld, "
           "\"seq\": %ld, \"adamw\": %d, \"threads\": %d, \"steps\": %ld, \"step_ms_median\": %.3f, \"step_ms_mean\": %.3f, "
           "\"step_ms_best\": %.3f, \"forward_ms_mean\": %.3f, \"tokens_per_s\": %.1f, \"train_flops_per_step\": %.6g, "
           "\"gflops\": %.3f, \"peak_gflops\": %.2f, \"peak_isa\": \"%s\", \"fraction_of_peak\": %.5f, "
           "\"loss\": %.6f, \"loss_main\": %.6f, \"precision\": \"%s\", \"gemm_path\": \"%s\", \"gemm_share\": %.4f, "
           "\"omp_regions_per_step\": %ld}\n",
           name, n_params, n_active, B, T, adamw, peak.threads, steps, 1e3 * median, 1e3 * mean, 1e3 * best,
           1e3 * fwd_total / (double)steps, tok_s, flops, gflops, peak.gflops, peak.isa, frac,
           isfinite(loss_total) ? loss_total : -1.0, isfinite(loss_main) ? loss_main : -1.0, precision, gemm_path,
           gemm_share, regions);

    if (peer.m) {
        const char *pname = strrchr(against, '/');
        pname = pname ? pname + 1 : against;
        printf("against %s (%.2fM params, %.2fM active/token), steps alternating: step %.1f ms median; %s / %s: "
               "%.4fx (ratio of the medians), %.4fx (median of the neighbouring steps' ratios)\n",
               pname, fr_model_num_params(peer.m) / 1e6, fr_model_num_active_params(peer.m) / 1e6, 1e3 * peer_median,
               name, pname, median / peer_median, pair_median);
        printf("{\"bench\": \"model_pair\", \"config\": \"%s\", \"against\": \"%s\", \"steps\": %ld, \"threads\": %d, "
               "\"step_ms_median\": %.3f, \"against_step_ms_median\": %.3f, \"ratio_of_medians\": %.5f, "
               "\"median_pair_ratio\": %.5f}\n",
               name, pname, steps, peak.threads, 1e3 * median, 1e3 * peer_median, median / peer_median, pair_median);
        run_free(&peer);
    }
    if (on_device) printf("{\"bench\": \"model_device\", \"device\": \"%s\", \"memory_peak_bytes\": %zu, "
                          "\"peak_tflops\": %.1f, \"mfu\": %.5f}\n", device, dev_mem_peak, peak_tflops, frac);
    free(tokens);
    free(targets);
    run_free(&run);
    return 0;
}
