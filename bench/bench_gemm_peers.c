/*
 * bench_gemm_peers.c — frugal's CPU SGEMM (fr_cpu_gemm) against OpenBLAS (cblas_sgemm) and
 * oneDNN (dnnl_sgemm) on the GEMM shapes that training actually runs.
 *
 *   bench_gemm_peers [--config FILE]... [--tokens N] [--threads N] [--min-ms MS] [--passes N] [--libs LIST]
 *
 * The shapes are derived from each config (default: configs/demo.json and
 * bench/configs/bench-100m.json) the way src/model/block.c and src/model/model.c call fr_linear_*:
 * for a linear layer W [out,in] over N tokens
 *   fwd  y  = x · W^T      gemm(0,1, N,out,in,  beta 0)     "NT"
 *   dX   dx = dy · W       gemm(0,0, N,in,out,  beta 0)     "NN"
 *   dW   dW += dy^T · x    gemm(1,0, out,in,N,  beta 1)     "TN"
 * for the MLA projections (q_a, q_b, kv_a, kv_b, o), the dense MLP, the shared and routed
 * experts (each routed expert sees N * top_k / n_routed_experts tokens on average), the
 * router, the MTP eh_proj and the output head. Each shape carries how many times a training
 * step runs it (layers, MTP modules, experts), which weights the totals.
 *
 * Every library runs with the same thread count (omp_set_num_threads; OpenBLAS also
 * openblas_set_num_threads; oneDNN of Debian uses the OpenMP runtime). Timing: warm-up calls
 * (>= 2 and >= 20 ms per library), then the libraries take turns call by call (so that all
 * meet the same load on a shared machine) for >= 3 rounds and --min-ms, at most 50 rounds;
 * all of this --passes times over the whole shape list (tens of seconds apart: a shared
 * machine gets quiet moments), and the best call of each library counts. Every peer result
 * is checked against frugal's (Frobenius relative error <= 1e-5), and frugal's own against
 * a double-precision reference on sampled entries.
 *
 * Built with the peers when CMake finds them (FR_HAVE_OPENBLAS / FR_HAVE_DNNL, this target
 * only); without them the peers are reported "not available".
 */
#include <math.h>
#include <stdint.h>
#include <unistd.h>

#include "bench_common.h"
#include "cpu/ops_cpu.h"

#ifdef FR_HAVE_OPENBLAS
#include <cblas.h>
#endif
#ifdef FR_HAVE_DNNL
#include <dnnl.h>
#endif

#define BENCH_THIS_FILE __FILE__
#define MAX_CONFIGS 4
#define MAX_SHAPES 256
#define TOL 1e-5

enum { LIB_FRUGAL, LIB_OPENBLAS, LIB_DNNL, NLIB };
static const char *lib_name[NLIB] = {"frugal", "openblas", "onednn"};

static int g_lib_off[NLIB]; /* --libs: libraries left out */

static int lib_available(int lib) {
    if (lib < 0 || lib >= NLIB || g_lib_off[lib]) return 0;
    switch (lib) {
    case LIB_FRUGAL: return 1;
#ifdef FR_HAVE_OPENBLAS
    case LIB_OPENBLAS: return 1;
#endif
#ifdef FR_HAVE_DNNL
    case LIB_DNNL: return 1;
#endif
    default: return 0;
    }
}

enum { OP_FWD, OP_DX, OP_DW, NOP };
static const char *op_name[NOP] = {"fwd", "dX", "dW"};
static const char *op_trans[NOP] = {"NT", "NN", "TN"};

enum { KIND_ATTN, KIND_MLP, KIND_EXPERT, KIND_ROUTER, KIND_HEAD, NKIND };
static const char *kind_name[NKIND] = {"attention proj", "dense/shared MLP", "routed experts", "router",
                                       "LM head"};

typedef struct {
    const char *config;  /* file name of the config */
    char layer[24];
    int kind, op;
    int ta, tb, M, N, K;
    float beta;
    double count;        /* calls per training step */
    double best_s[NLIB]; /* best time per call; 0 = not run */
    double err[NLIB];    /* Frobenius relative error vs frugal (frugal: vs double reference) */
    int reps[NLIB];      /* timed calls, all passes */
    int ok[NLIB];
} shape;

static shape g_shapes[MAX_SHAPES];
static int g_nshapes;

static double shape_flops(const shape *s) { return 2.0 * s->M * s->N * s->K; }

/* The three GEMMs of one linear layer y[n,out] = x[n,in] · W^T. */
static void add_linear(const char *config, const char *layer, int kind, int n, int in, int out, double count) {
    if (n <= 0 || in <= 0 || out <= 0 || count <= 0) return;
    for (int op = 0; op < NOP; op++) {
        if (g_nshapes >= MAX_SHAPES) return;
        shape *s = &g_shapes[g_nshapes++];
        memset(s, 0, sizeof *s);
        s->config = config;
        snprintf(s->layer, sizeof s->layer, "%s", layer);
        s->kind = kind;
        s->op = op;
        s->count = count;
        if (op == OP_FWD) {
            s->ta = 0, s->tb = 1, s->M = n, s->N = out, s->K = in, s->beta = 0.f;
        } else if (op == OP_DX) {
            s->ta = 0, s->tb = 0, s->M = n, s->N = in, s->K = out, s->beta = 0.f;
        } else {
            s->ta = 1, s->tb = 0, s->M = out, s->N = in, s->K = n, s->beta = 1.f;
        }
    }
}

/* The linear layers one training step over `tokens` tokens runs for config c (see src/model/block.c,
 * src/model/model.c): per block (main layers + MTP modules) the MLA projections, then a dense MLP or
 * router + routed experts + shared experts; the output head once per loss; eh_proj per MTP. */
static void derive_shapes(const char *name, const fr_config *c, int tokens) {
    const int H = c->hidden_size, nh = c->num_attention_heads;
    const int dqk = c->qk_nope_head_dim + c->qk_rope_head_dim;
    const int D = c->num_nextn_predict_layers > 0 ? c->num_nextn_predict_layers : 0;
    const int blocks = c->num_hidden_layers + D;
    int moe = 0;
    for (int l = 0; l < blocks; l++) moe += fr_config_layer_is_moe(c, l);
    const int dense = blocks - moe;

    if (c->q_lora_rank > 0) {
        add_linear(name, "q_a_proj", KIND_ATTN, tokens, H, c->q_lora_rank, blocks);
        add_linear(name, "q_b_proj", KIND_ATTN, tokens, c->q_lora_rank, nh * dqk, blocks);
    } else {
        add_linear(name, "q_proj", KIND_ATTN, tokens, H, nh * dqk, blocks);
    }
    add_linear(name, "kv_a_proj", KIND_ATTN, tokens, H, c->kv_lora_rank + c->qk_rope_head_dim, blocks);
    add_linear(name, "kv_b_proj", KIND_ATTN, tokens, c->kv_lora_rank, nh * (c->qk_nope_head_dim + c->v_head_dim),
               blocks);
    add_linear(name, "o_proj", KIND_ATTN, tokens, nh * c->v_head_dim, H, blocks);
    if (dense > 0) {
        add_linear(name, "mlp gate/up", KIND_MLP, tokens, H, c->intermediate_size, 2.0 * dense);
        add_linear(name, "mlp down", KIND_MLP, tokens, c->intermediate_size, H, dense);
    }
    if (moe > 0) {
        const int E = c->n_routed_experts, Im = c->moe_intermediate_size;
        const int per_expert = (int)((long)tokens * c->num_experts_per_tok / E);
        add_linear(name, "router", KIND_ROUTER, tokens, H, E, moe);
        add_linear(name, "expert gate/up", KIND_EXPERT, per_expert, H, Im, 2.0 * E * moe);
        add_linear(name, "expert down", KIND_EXPERT, per_expert, Im, H, (double)E * moe);
        if (c->n_shared_experts > 0) {
            const int Is = c->n_shared_experts * Im;
            add_linear(name, "shared gate/up", KIND_MLP, tokens, H, Is, 2.0 * moe);
            add_linear(name, "shared down", KIND_MLP, tokens, Is, H, moe);
        }
    }
    if (D > 0) add_linear(name, "mtp eh_proj (x2)", KIND_MLP, tokens, H, H, 2.0 * D);
    add_linear(name, "lm_head", KIND_HEAD, tokens, H, c->vocab_size, 1.0 + D);
}

/* ------------------------------------------------------------------ running one GEMM */

typedef struct {
    const float *A, *B;
    float *C;
    int lda, ldb, ldc;
} operands;

static int run_gemm(int lib, const shape *s, const operands *o) {
    switch (lib) {
    case LIB_FRUGAL:
        fr_cpu_gemm(s->ta, s->tb, s->M, s->N, s->K, 1.0f, o->A, o->lda, o->B, o->ldb, s->beta, o->C, o->ldc);
        return 0;
#ifdef FR_HAVE_OPENBLAS
    case LIB_OPENBLAS:
        cblas_sgemm(CblasRowMajor, s->ta ? CblasTrans : CblasNoTrans, s->tb ? CblasTrans : CblasNoTrans, s->M, s->N,
                    s->K, 1.0f, o->A, o->lda, o->B, o->ldb, s->beta, o->C, o->ldc);
        return 0;
#endif
#ifdef FR_HAVE_DNNL
    case LIB_DNNL:
        return dnnl_sgemm(s->ta ? 'T' : 'N', s->tb ? 'T' : 'N', s->M, s->N, s->K, 1.0f, o->A, o->lda, o->B, o->ldb,
                          s->beta, o->C, o->ldc) == dnnl_success
                   ? 0
                   : -1;
#endif
    default: return -1;
    }
}

/* Warm-up: >= 2 calls and >= 20 ms; -1 on a library error. */
static int warm_up(int lib, const shape *s, const operands *o) {
    double t0 = bench_now();
    for (int w = 0; w < 2 || bench_now() - t0 < 0.02; w++)
        if (run_gemm(lib, s, o) != 0) return -1;
    return 0;
}
static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static float rnd(void) { /* uniform in [-1, 1) */
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (float)((double)(g_rng >> 40) / (double)(1ull << 23) - 1.0);
}

static float *alloc_floats(size_t n) {
    size_t bytes = (n * sizeof(float) + 63) / 64 * 64;
    float *p = aligned_alloc(64, bytes ? bytes : 64);
    if (!p) {
        fprintf(stderr, "bench_gemm_peers: out of memory (%zu bytes)\n", bytes);
        exit(1);
    }
    return p;
}

static double frob_rel(const float *x, const float *ref, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)x[i] - (double)ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* frugal's C against a double-precision dot product on 256 sampled entries. */
static double sample_check(const shape *s, const operands *o, const float *C0, const float *C) {
    double num = 0, den = 0;
    uint64_t r = 12345;
    for (int t = 0; t < 256; t++) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        int i = (int)((r >> 33) % (uint64_t)s->M);
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        int j = (int)((r >> 33) % (uint64_t)s->N);
        double acc = 0;
        for (int p = 0; p < s->K; p++) {
            double a = s->ta ? o->A[(size_t)p * o->lda + i] : o->A[(size_t)i * o->lda + p];
            double b = s->tb ? o->B[(size_t)j * o->ldb + p] : o->B[(size_t)p * o->ldb + j];
            acc += a * b;
        }
        size_t ij = (size_t)i * o->ldc + j;
        double ref = acc + (double)s->beta * C0[ij];
        num += (C[ij] - ref) * (C[ij] - ref);
        den += ref * ref;
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* Shapes already measured in this run (same transposes, sizes and beta) are not re-timed. */
static const shape *find_measured(int upto, const shape *s) {
    for (int i = 0; i < upto; i++) {
        const shape *t = &g_shapes[i];
        if (t->ta == s->ta && t->tb == s->tb && t->M == s->M && t->N == s->N && t->K == s->K && t->beta == s->beta)
            return t;
    }
    return NULL;
}

/* Checks and times shape s; over several passes keeps the best time and the largest error. */
static int measure(shape *s, double min_s, int first) {
    size_t a_n = (size_t)s->M * s->K, b_n = (size_t)s->K * s->N, c_n = (size_t)s->M * s->N;
    operands o;
    o.lda = s->ta ? s->M : s->K;
    o.ldb = s->tb ? s->K : s->N;
    o.ldc = s->N;
    float *A = alloc_floats(a_n), *B = alloc_floats(b_n), *C = alloc_floats(c_n);
    float *C0 = alloc_floats(c_n), *Cref = alloc_floats(c_n);
    for (size_t i = 0; i < a_n; i++) A[i] = rnd();
    for (size_t i = 0; i < b_n; i++) B[i] = rnd();
    for (size_t i = 0; i < c_n; i++) C0[i] = rnd();
    o.A = A;
    o.B = B;
    int failed = 0;
    for (int lib = 0; lib < NLIB; lib++) {
        if (!lib_available(lib)) continue;
        /* correctness first, from the same C0 */
        memcpy(C, C0, c_n * sizeof(float));
        o.C = C;
        if (run_gemm(lib, s, &o) != 0) {
            fprintf(stderr, "bench_gemm_peers: %s failed on %dx%dx%d\n", lib_name[lib], s->M, s->N, s->K);
            failed = 1;
            continue;
        }
        double err;
        if (lib == LIB_FRUGAL) {
            memcpy(Cref, C, c_n * sizeof(float));
            err = sample_check(s, &o, C0, C);
        } else {
            err = frob_rel(C, Cref, c_n);
        }
        if (first || err > s->err[lib]) s->err[lib] = err;
        s->ok[lib] = s->err[lib] <= TOL;
        if (!s->ok[lib]) failed = 1;
    }
    /* Timing, the libraries taking turns call by call so that all of them meet the same load
     * on a shared machine; best call per library (beta = 1 keeps accumulating into C: harmless). */
    int live[NLIB] = {0};
    double best[NLIB];
    for (int lib = 0; lib < NLIB; lib++) {
        best[lib] = 1e30;
        if (!lib_available(lib)) continue;
        live[lib] = warm_up(lib, s, &o) == 0;
        if (!live[lib]) failed = 1;
    }
    double t0 = bench_now();
    int rounds = 0;
    while (rounds < 3 || (bench_now() - t0 < min_s && rounds < 50)) {
        for (int lib = 0; lib < NLIB; lib++) {
            if (!live[lib]) continue;
            double a = bench_now();
            run_gemm(lib, s, &o);
            double t = bench_now() - a;
            if (t < best[lib]) best[lib] = t;
        }
        rounds++;
    }
    for (int lib = 0; lib < NLIB; lib++) {
        if (!live[lib]) continue; /* best_s stays 0 when a library never ran */
        if (s->best_s[lib] <= 0 || best[lib] < s->best_s[lib]) s->best_s[lib] = best[lib];
        s->reps[lib] += rounds;
    }
    free(A);
    free(B);
    free(C);
    free(C0);
    free(Cref);
    return failed;
}

/* ------------------------------------------------------------------ main */

static void usage(FILE *f) {
    fprintf(f,
            "usage: bench_gemm_peers [--config FILE]... [--tokens N] [--threads N] [--min-ms MS] [--passes N] [--libs LIST]\n"
            "\n"
            "Times frugal's CPU SGEMM, OpenBLAS cblas_sgemm and oneDNN dnnl_sgemm on the GEMMs of\n"
            "one training step (forward, dX, dW of every linear layer) of each config, checks every\n"
            "result against frugal's, and prints GFLOP/s, fraction of the FP32 FMA peak and\n"
            "FLOP-weighted totals (weights: calls per step).\n"
            "\n"
            "  --config FILE  model config.json, repeatable (default: configs/demo.json and\n"
            "                 bench/configs/bench-100m.json)\n"
            "  --tokens N     tokens per step B*T (default 2048)\n"
            "  --threads N    threads for every library (default 2)\n"
            "  --min-ms MS    time a shape for MS ms, the libraries taking turns (>= 3, <= 50 calls each;\n"
            "                 default 150)\n"
            "  --passes N     passes over all shapes, best time of all passes counts (default 2)\n"
            "  --libs LIST    peers to run besides frugal, e.g. openblas,onednn (default: all built)\n");
}

/* path relative to the repository root, resolved next to this source file when possible */
static void repo_path(char *buf, size_t n, const char *rel) {
    const char *self = BENCH_THIS_FILE;
    const char *slash = strrchr(self, '/');
    if (self[0] == '/' && slash) {
        /* self = <root>/bench/bench_gemm_peers.c */
        int len = (int)(slash - self);
        const char *bench_slash = NULL;
        for (int i = len - 1; i >= 0; i--)
            if (self[i] == '/') {
                bench_slash = self + i;
                break;
            }
        if (bench_slash) {
            snprintf(buf, n, "%.*s/%s", (int)(bench_slash - self), self, rel);
            FILE *f = fopen(buf, "r");
            if (f) {
                fclose(f);
                return;
            }
        }
    }
    snprintf(buf, n, "%s", rel);
}

static const char *base_name(const char *path) {
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

typedef struct {
    double flops, t[NLIB], t_best; /* count-weighted FLOPs and seconds per step */
} totals;

static void tot_add(totals *t, const shape *s) {
    double w = s->count;
    t->flops += w * shape_flops(s);
    double best = 1e30;
    for (int lib = 0; lib < NLIB; lib++) {
        t->t[lib] += w * s->best_s[lib];
        if (s->best_s[lib] > 0 && s->best_s[lib] < best) best = s->best_s[lib];
    }
    t->t_best += w * best;
}

static void tot_print(const char *label, const totals *t, double peak) {
    if (t->flops <= 0) return;
    printf("  %-34s", label);
    double ref = t->t[LIB_FRUGAL];
    for (int lib = 0; lib < NLIB; lib++) {
        if (!lib_available(lib)) {
            printf(" %22s", "n/a");
            continue;
        }
        double g = t->flops / t->t[lib] / 1e9;
        printf("   %7.1f (%4.1f%%) x%4.2f", g, 100.0 * g / peak, ref / t->t[lib]);
    }
    printf("   %7.1f\n", t->flops / t->t_best / 1e9);
}

int main(int argc, char **argv) {
    fr_cpu_gemm_set_onednn(0); /* the "frugal" column is our own kernels, oneDNN has its own */
    const char *prog = "bench_gemm_peers";
    char cfg_paths[MAX_CONFIGS][1024];
    int ncfg = 0;
    long tokens = 2048, threads = 2, min_ms = 150, passes = 2;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--config")) {
            const char *v = bench_opt_value(prog, argc, argv, &i);
            if (ncfg >= MAX_CONFIGS) {
                fprintf(stderr, "%s: at most %d configs\n", prog, MAX_CONFIGS);
                return 2;
            }
            snprintf(cfg_paths[ncfg++], sizeof cfg_paths[0], "%s", v);
        } else if (!strcmp(a, "--tokens")) {
            tokens = bench_parse_long(prog, a, bench_opt_value(prog, argc, argv, &i), 1, 1 << 20);
        } else if (!strcmp(a, "--threads")) {
            threads = bench_parse_long(prog, a, bench_opt_value(prog, argc, argv, &i), 1, 1024);
        } else if (!strcmp(a, "--passes")) {
            passes = bench_parse_long(prog, a, bench_opt_value(prog, argc, argv, &i), 1, 100);
        } else if (!strcmp(a, "--libs")) {
            const char *v = bench_opt_value(prog, argc, argv, &i);
            for (int lib = 1; lib < NLIB; lib++) g_lib_off[lib] = strstr(v, lib_name[lib]) == NULL;
        } else if (!strcmp(a, "--min-ms")) {
            min_ms = bench_parse_long(prog, a, bench_opt_value(prog, argc, argv, &i), 0, 100000);
        } else {
            fprintf(stderr, "%s: unknown option '%s'\n", prog, a);
            usage(stderr);
            return 2;
        }
    }
    if (ncfg == 0) {
        repo_path(cfg_paths[0], sizeof cfg_paths[0], "configs/demo.json");
        repo_path(cfg_paths[1], sizeof cfg_paths[1], "bench/configs/bench-100m.json");
        ncfg = 2;
    }

#ifdef FR_HAVE_OPENBLAS
    /* OpenBLAS's idle pthread workers spin for 2^28 TSC cycles (~0.1 s) after every call,
     * taking a core from whatever runs next on a 2-core machine, while libgomp (frugal,
     * oneDNN) spins for well under a millisecond. OPENBLAS_THREAD_TIMEOUT=20 (2^20 cycles)
     * makes the two comparable; OpenBLAS reads it when it loads, hence the re-exec. */
    if (lib_available(LIB_OPENBLAS) && !getenv("OPENBLAS_THREAD_TIMEOUT")) {
        setenv("OPENBLAS_THREAD_TIMEOUT", "20", 1);
        execv("/proc/self/exe", argv);
        fprintf(stderr, "%s: re-exec with OPENBLAS_THREAD_TIMEOUT=20 failed; OpenBLAS workers spin longer\n", prog);
    }
#endif
    omp_set_num_threads((int)threads);
    fr_set_num_threads((int)threads);
#ifdef FR_HAVE_OPENBLAS
    openblas_set_num_threads((int)threads);
#endif

    for (int k = 0; k < ncfg; k++) {
        fr_config cfg;
        if (fr_config_load(&cfg, cfg_paths[k]) != FR_OK) {
            fprintf(stderr, "%s: cannot load config '%s'\n", prog, cfg_paths[k]);
            return 1;
        }
        derive_shapes(base_name(cfg_paths[k]), &cfg, (int)tokens);
    }

    bench_peak_result peak = bench_fma_peak();
    printf("gemm peers: %d threads, %ld tokens per step, frugal isa %s, FP32 FMA peak probe %.1f GFLOP/s (%s)\n",
           (int)threads, tokens, fr_cpu_isa_name(fr_cpu_isa()), peak.gflops, peak.isa);
    for (int lib = 1; lib < NLIB; lib++) {
        if (!lib_available(lib)) {
            printf("  %s: not available (not found at build time, or left out by --libs)\n", lib_name[lib]);
            continue;
        }
#ifdef FR_HAVE_OPENBLAS
        if (lib == LIB_OPENBLAS)
            printf("  openblas: %s, %d threads, OPENBLAS_THREAD_TIMEOUT=%s\n", openblas_get_config(),
                   openblas_get_num_threads(), getenv("OPENBLAS_THREAD_TIMEOUT") ? getenv("OPENBLAS_THREAD_TIMEOUT") : "unset");
#endif
#ifdef FR_HAVE_DNNL
        if (lib == LIB_DNNL) {
            const dnnl_version_t *v = dnnl_version();
            printf("  onednn: %d.%d.%d (cpu runtime %s)\n", v->major, v->minor, v->patch,
                   v->cpu_runtime == DNNL_RUNTIME_OMP ? "OpenMP" : "other");
        }
#endif
    }

    int failed = 0;
    double min_s = (double)min_ms / 1000.0;
    double t_start = bench_now();
    for (int pass = 0; pass < passes; pass++)
        for (int i = 0; i < g_nshapes; i++)
            if (!find_measured(i, &g_shapes[i])) failed |= measure(&g_shapes[i], min_s, pass == 0);
    double elapsed = bench_now() - t_start;
    /* the probe again after the work: the ceiling is the better of the two */
    bench_peak_result peak2 = bench_fma_peak();
    if (peak2.gflops > peak.gflops) peak = peak2;
    printf("FP32 FMA peak (best of a probe before and after): %.1f GFLOP/s\n\n", peak.gflops);
    printf("%-16s %-17s %-3s %-2s %5s %5s %5s %5s |", "config", "layer", "op", "tr", "M", "N", "K", "calls");
    for (int lib = 0; lib < NLIB; lib++) printf(" %17s", lib_name[lib]);
    printf(" | max rel err\n");
    for (int i = 0; i < g_nshapes; i++) {
        shape *s = &g_shapes[i];
        const shape *prev = find_measured(i, s);
        if (prev) {
            memcpy(s->best_s, prev->best_s, sizeof s->best_s);
            memcpy(s->err, prev->err, sizeof s->err);
            memcpy(s->reps, prev->reps, sizeof s->reps);
            memcpy(s->ok, prev->ok, sizeof s->ok);
        }
        printf("%-16s %-17s %-3s %-2s %5d %5d %5d %5.0f |", s->config, s->layer, op_name[s->op], op_trans[s->op],
               s->M, s->N, s->K, s->count);
        double maxerr = 0;
        for (int lib = 0; lib < NLIB; lib++) {
            if (!lib_available(lib) || s->best_s[lib] <= 0) {
                printf(" %17s", "n/a");
                continue;
            }
            double g = shape_flops(s) / s->best_s[lib] / 1e9;
            printf(" %6.1f (%4.1f%%)%s", g, 100.0 * g / peak.gflops, s->ok[lib] ? "  " : " !");
            if (s->err[lib] > maxerr) maxerr = s->err[lib];
        }
        printf(" | %.1e\n", maxerr);
    }

    /* one JSON line per shape */
    printf("\n");
    for (int i = 0; i < g_nshapes; i++) {
        const shape *s = &g_shapes[i];
        printf("{\"bench\": \"gemm_peers\", \"config\": \"%s\", \"layer\": \"%s\", \"op\": \"%s\", \"trans\": \"%s\", "
               "\"M\": %d, \"N\": %d, \"K\": %d, \"calls_per_step\": %.0f, \"threads\": %d",
               s->config, s->layer, op_name[s->op], op_trans[s->op], s->M, s->N, s->K, s->count, (int)threads);
        for (int lib = 0; lib < NLIB; lib++) {
            if (!lib_available(lib) || s->best_s[lib] <= 0) {
                printf(", \"%s_gflops\": null", lib_name[lib]);
                continue;
            }
            printf(", \"%s_gflops\": %.2f, \"%s_rel_err\": %.2e", lib_name[lib], shape_flops(s) / s->best_s[lib] / 1e9,
                   lib_name[lib], s->err[lib]);
        }
        printf("}\n");
    }

    /* FLOP-weighted totals: count-weighted FLOPs / count-weighted time, i.e. GEMM GFLOP/s of a step */
    printf("\nFLOP-weighted totals (weights: calls per training step); GFLOP/s (%% of %.1f peak) xspeed-up vs frugal; "
           "last column: best library per shape\n",
           peak.gflops);
    printf("  %-34s", "");
    for (int lib = 0; lib < NLIB; lib++) printf(" %22s", lib_name[lib]);
    printf("   %7s\n", "best-of");
    totals all;
    memset(&all, 0, sizeof all);
    for (int k = 0; k < ncfg; k++) {
        const char *name = base_name(cfg_paths[k]);
        totals t;
        memset(&t, 0, sizeof t);
        totals by_op[NOP], by_kind[NKIND];
        memset(by_op, 0, sizeof by_op);
        memset(by_kind, 0, sizeof by_kind);
        for (int i = 0; i < g_nshapes; i++) {
            const shape *s = &g_shapes[i];
            if (strcmp(s->config, name) != 0) continue;
            tot_add(&t, s);
            tot_add(&all, s);
            tot_add(&by_op[s->op], s);
            tot_add(&by_kind[s->kind], s);
        }
        char label[96];
        snprintf(label, sizeof label, "%.60s: all", name);
        tot_print(label, &t, peak.gflops);
        for (int op = 0; op < NOP; op++) {
            snprintf(label, sizeof label, "  %s (%s)", op_name[op], op_trans[op]);
            tot_print(label, &by_op[op], peak.gflops);
        }
        for (int kd = 0; kd < NKIND; kd++) {
            snprintf(label, sizeof label, "  %s", kind_name[kd]);
            tot_print(label, &by_kind[kd], peak.gflops);
        }
        printf("  %-34s", "  GEMM seconds per step");
        for (int lib = 0; lib < NLIB; lib++)
            if (lib_available(lib)) printf(" %22.3f", t.t[lib]);
            else printf(" %22s", "n/a");
        printf("   %7.3f\n", t.t_best);
    }
    if (ncfg > 1) tot_print("all configs", &all, peak.gflops);

    printf("{\"bench\": \"gemm_peers_total\", \"threads\": %d, \"tokens\": %ld, \"peak_gflops\": %.2f, \"peak_isa\": "
           "\"%s\"",
           (int)threads, tokens, peak.gflops, peak.isa);
    for (int lib = 0; lib < NLIB; lib++) {
        if (!lib_available(lib)) {
            printf(", \"%s_gflops\": null", lib_name[lib]);
            continue;
        }
        printf(", \"%s_gflops\": %.2f", lib_name[lib], all.flops / all.t[lib] / 1e9);
    }
    printf(", \"best_of_gflops\": %.2f, \"passes\": %ld, \"min_ms\": %ld, \"measure_s\": %.1f}\n", all.flops / all.t_best / 1e9,
           passes, min_ms, elapsed);
    if (failed) fprintf(stderr, "%s: some results failed the check (rel err > %.0e) or a library failed\n", prog, TOL);
    return failed ? 1 : 0;
}
