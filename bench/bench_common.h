/* bench_common.h — helpers shared by the benchmarks: timing, argument parsing, and the
 * machine-ceiling probes (FP32 FMA peak with all OpenMP threads, memory bandwidth).
 *
 * The FMA probe runs independent multiply-add chains that stay in registers: AVX-512
 * (16 lanes) where the CPU has avx512f, else AVX2+FMA (8 lanes), else portable C. Each
 * chain is x = x*m + c with |m| < 1, so values converge and never overflow or go subnormal.
 * Enough chains (12) are kept in flight to cover the FMA latency (4 cycles) on two FMA
 * ports. The bandwidth probe streams arrays much larger than the last-level cache. */
#ifndef FR_BENCH_COMMON_H
#define FR_BENCH_COMMON_H

#include <errno.h>
#include <limits.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define BENCH_X86 1
#else
#define BENCH_X86 0
#endif

#define BENCH_FMA_CHAINS 12

static inline double bench_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Parse a positive integer option value; exits with status 2 and a message on failure. */
static inline long bench_parse_long(const char *prog, const char *opt, const char *text, long lo, long hi) {
    char *end = NULL;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno != 0 || end == text || *end != 0 || v < lo || v > hi) {
        fprintf(stderr, "%s: option '%s' expects an integer in [%ld, %ld], got '%s'\n", prog, opt, lo, hi, text);
        exit(2);
    }
    return v;
}

/* Value of option argv[*i] (advancing *i); exits with status 2 if it is missing. */
static inline const char *bench_opt_value(const char *prog, int argc, char **argv, int *i) {
    if (*i + 1 >= argc) {
        fprintf(stderr, "%s: option '%s' needs a value\n", prog, argv[*i]);
        exit(2);
    }
    *i += 1;
    return argv[*i];
}

/* ------------------------------------------------------------------ FMA peak */

#if BENCH_X86
__attribute__((target("avx512f"))) static inline float bench_fma_chains_avx512(long iters, float seed) {
    const __m512 m = _mm512_set1_ps(0.9999999f), c = _mm512_set1_ps(1e-7f);
    __m512 a[BENCH_FMA_CHAINS];
    for (int j = 0; j < BENCH_FMA_CHAINS; j++) a[j] = _mm512_set1_ps(seed + 0.01f * (float)j);
    for (long i = 0; i < iters; i++) {
        a[0] = _mm512_fmadd_ps(a[0], m, c);
        a[1] = _mm512_fmadd_ps(a[1], m, c);
        a[2] = _mm512_fmadd_ps(a[2], m, c);
        a[3] = _mm512_fmadd_ps(a[3], m, c);
        a[4] = _mm512_fmadd_ps(a[4], m, c);
        a[5] = _mm512_fmadd_ps(a[5], m, c);
        a[6] = _mm512_fmadd_ps(a[6], m, c);
        a[7] = _mm512_fmadd_ps(a[7], m, c);
        a[8] = _mm512_fmadd_ps(a[8], m, c);
        a[9] = _mm512_fmadd_ps(a[9], m, c);
        a[10] = _mm512_fmadd_ps(a[10], m, c);
        a[11] = _mm512_fmadd_ps(a[11], m, c);
    }
    __m512 s = a[0];
    for (int j = 1; j < BENCH_FMA_CHAINS; j++) s = _mm512_add_ps(s, a[j]);
    return _mm512_reduce_add_ps(s);
}

__attribute__((target("avx2,fma"))) static inline float bench_fma_chains_avx2(long iters, float seed) {
    const __m256 m = _mm256_set1_ps(0.9999999f), c = _mm256_set1_ps(1e-7f);
    __m256 a[BENCH_FMA_CHAINS];
    for (int j = 0; j < BENCH_FMA_CHAINS; j++) a[j] = _mm256_set1_ps(seed + 0.01f * (float)j);
    for (long i = 0; i < iters; i++) {
        a[0] = _mm256_fmadd_ps(a[0], m, c);
        a[1] = _mm256_fmadd_ps(a[1], m, c);
        a[2] = _mm256_fmadd_ps(a[2], m, c);
        a[3] = _mm256_fmadd_ps(a[3], m, c);
        a[4] = _mm256_fmadd_ps(a[4], m, c);
        a[5] = _mm256_fmadd_ps(a[5], m, c);
        a[6] = _mm256_fmadd_ps(a[6], m, c);
        a[7] = _mm256_fmadd_ps(a[7], m, c);
        a[8] = _mm256_fmadd_ps(a[8], m, c);
        a[9] = _mm256_fmadd_ps(a[9], m, c);
        a[10] = _mm256_fmadd_ps(a[10], m, c);
        a[11] = _mm256_fmadd_ps(a[11], m, c);
    }
    __m256 s = a[0];
    for (int j = 1; j < BENCH_FMA_CHAINS; j++) s = _mm256_add_ps(s, a[j]);
    float lanes[8];
    _mm256_storeu_ps(lanes, s);
    float r = 0;
    for (int j = 0; j < 8; j++) r += lanes[j];
    return r;
}
#endif

/* Portable fallback: 4 lanes x 12 chains of multiply + add (the compiler may or may not fuse). */
static inline float bench_fma_chains_generic(long iters, float seed) {
    float a[BENCH_FMA_CHAINS][4];
    for (int j = 0; j < BENCH_FMA_CHAINS; j++)
        for (int l = 0; l < 4; l++) a[j][l] = seed + 0.01f * (float)j + 0.001f * (float)l;
    for (long i = 0; i < iters; i++)
        for (int j = 0; j < BENCH_FMA_CHAINS; j++)
            for (int l = 0; l < 4; l++) a[j][l] = a[j][l] * 0.9999999f + 1e-7f;
    float r = 0;
    for (int j = 0; j < BENCH_FMA_CHAINS; j++)
        for (int l = 0; l < 4; l++) r += a[j][l];
    return r;
}

typedef struct {
    double gflops;            /* all threads */
    double gflops_per_thread;
    int threads;
    const char *isa;          /* "avx512f", "avx2+fma" or "generic" */
    int lanes;
} bench_peak_result;

typedef float (*bench_fma_fn)(long, float);

static inline bench_fma_fn bench_pick_fma(const char **isa, int *lanes) {
#if BENCH_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) {
        *isa = "avx512f";
        *lanes = 16;
        return bench_fma_chains_avx512;
    }
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        *isa = "avx2+fma";
        *lanes = 8;
        return bench_fma_chains_avx2;
    }
#endif
    *isa = "generic";
    *lanes = 4;
    return bench_fma_chains_generic;
}

/* Seconds for every thread to run `iters` iterations of the kernel (one parallel region). */
static inline double bench_fma_run(bench_fma_fn fn, long iters, int *threads) {
    static volatile float sink;
    int nt = 1;
    double t0 = omp_get_wtime();
#pragma omp parallel
    {
        float r = fn(iters, 0.5f + 0.001f * (float)omp_get_thread_num());
#pragma omp atomic
        sink += r;
#pragma omp single
        nt = omp_get_num_threads();
    }
    double t = omp_get_wtime() - t0;
    *threads = nt;
    return t;
}

/* FP32 FMA peak with all OpenMP threads: calibrate to ~0.25 s per run, best of 3 runs. */
static inline bench_peak_result bench_fma_peak(void) {
    bench_peak_result r = {0};
    bench_fma_fn fn = bench_pick_fma(&r.isa, &r.lanes);
    int nt = 1;
    long iters = 1L << 14;
    double t = bench_fma_run(fn, iters, &nt); /* also wakes the thread pool */
    while (t < 0.25 && iters < (1L << 40)) {
        double scale = t > 1e-4 ? 0.3 / t : 8.0;
        if (scale > 8.0) scale = 8.0;
        if (scale < 1.5) scale = 1.5;
        iters = (long)((double)iters * scale);
        t = bench_fma_run(fn, iters, &nt);
    }
    double best = t;
    for (int rep = 0; rep < 3; rep++) {
        double tr = bench_fma_run(fn, iters, &nt);
        if (tr < best) best = tr;
    }
    double flops = 2.0 * r.lanes * BENCH_FMA_CHAINS * (double)iters * nt;
    r.threads = nt;
    r.gflops = flops / best / 1e9;
    r.gflops_per_thread = r.gflops / nt;
    return r;
}

/* ------------------------------------------------------------------ memory bandwidth */

typedef struct {
    double read_gbs;    /* sum over one array */
    double triad_gbs;   /* a = b + s*c, counted as 3 arrays moved (STREAM convention) */
    size_t array_bytes;
    int threads;
} bench_bw_result;

/* Returns 0 on success, -1 if the arrays cannot be allocated. */
static inline int bench_memory_bandwidth(size_t array_bytes, bench_bw_result *out) {
    size_t n = array_bytes / sizeof(float);
    n -= n % 64;
    float *a = NULL, *b = NULL, *c = NULL;
    if (posix_memalign((void **)&a, 64, n * sizeof(float)) != 0) a = NULL;
    if (posix_memalign((void **)&b, 64, n * sizeof(float)) != 0) b = NULL;
    if (posix_memalign((void **)&c, 64, n * sizeof(float)) != 0) c = NULL;
    if (!a || !b || !c) {
        free(a);
        free(b);
        free(c);
        return -1;
    }
    long ln = (long)n;
    /* First touch with the same static schedule as the kernels (NUMA placement). */
#pragma omp parallel for schedule(static)
    for (long i = 0; i < ln; i++) {
        a[i] = 1.0f;
        b[i] = 2.0f;
        c[i] = 0.5f;
    }
    static volatile float sink;
    double best_read = 1e30, best_triad = 1e30;
    int nt = 1;
    for (int rep = 0; rep < 5; rep++) {
        double t0 = omp_get_wtime();
#pragma omp parallel
        {
            int tid = omp_get_thread_num(), T = omp_get_num_threads();
            long lo = (long)((double)ln * tid / T), hi = (long)((double)ln * (tid + 1) / T);
            lo -= lo % 32;
            hi = tid == T - 1 ? ln : hi - hi % 32;
            float acc[32] = {0};
            for (long i = lo; i < hi; i += 32)
                for (int j = 0; j < 32; j++) acc[j] += a[i + j];
            float s = 0;
            for (int j = 0; j < 32; j++) s += acc[j];
#pragma omp atomic
            sink += s;
#pragma omp single nowait
            nt = T;
        }
        double t = omp_get_wtime() - t0;
        if (t < best_read) best_read = t;

        const float scalar = 0.999f;
        t0 = omp_get_wtime();
#pragma omp parallel for schedule(static)
        for (long i = 0; i < ln; i++) a[i] = b[i] + scalar * c[i];
        t = omp_get_wtime() - t0;
        if (t < best_triad) best_triad = t;
    }
    sink += a[n / 2];
    double bytes = (double)n * sizeof(float);
    out->read_gbs = bytes / best_read / 1e9;
    out->triad_gbs = 3.0 * bytes / best_triad / 1e9;
    out->array_bytes = n * sizeof(float);
    out->threads = nt;
    free(a);
    free(b);
    free(c);
    return 0;
}

#endif /* FR_BENCH_COMMON_H */
