/* peak.c — the machine's FP32 FMA ceiling, measured (not looked up), so that benchmarks and
 * the trainer report achieved GFLOP/s as a fraction of what this CPU really sustains.
 *
 * The probe runs independent multiply-add chains that stay in registers: AVX-512 (16 lanes)
 * where the CPU has avx512f, else AVX2+FMA (8 lanes), else portable C. Each chain is
 * x = x*m + c with |m| < 1, so values converge and never overflow or go subnormal. Enough
 * chains (12) are kept in flight to cover the FMA latency (4 cycles) on two FMA ports. */
#include "core/internal.h"

#include <omp.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define FR_PEAK_X86 1
#else
#define FR_PEAK_X86 0
#endif

#define FMA_CHAINS 12

#if FR_PEAK_X86
__attribute__((target("avx512f"))) static float fma_chains_avx512(long iters, float seed) {
    const __m512 m = _mm512_set1_ps(0.9999999f), c = _mm512_set1_ps(1e-7f);
    __m512 a[FMA_CHAINS];
    for (int j = 0; j < FMA_CHAINS; j++) a[j] = _mm512_set1_ps(seed + 0.01f * (float)j);
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
    for (int j = 1; j < FMA_CHAINS; j++) s = _mm512_add_ps(s, a[j]);
    return _mm512_reduce_add_ps(s);
}

__attribute__((target("avx2,fma"))) static float fma_chains_avx2(long iters, float seed) {
    const __m256 m = _mm256_set1_ps(0.9999999f), c = _mm256_set1_ps(1e-7f);
    __m256 a[FMA_CHAINS];
    for (int j = 0; j < FMA_CHAINS; j++) a[j] = _mm256_set1_ps(seed + 0.01f * (float)j);
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
    for (int j = 1; j < FMA_CHAINS; j++) s = _mm256_add_ps(s, a[j]);
    float lanes[8];
    _mm256_storeu_ps(lanes, s);
    float r = 0;
    for (int j = 0; j < 8; j++) r += lanes[j];
    return r;
}
#endif

/* Portable fallback: 4 lanes x 12 chains of multiply + add (the compiler may or may not fuse). */
static float fma_chains_generic(long iters, float seed) {
    float a[FMA_CHAINS][4];
    for (int j = 0; j < FMA_CHAINS; j++)
        for (int l = 0; l < 4; l++) a[j][l] = seed + 0.01f * (float)j + 0.001f * (float)l;
    for (long i = 0; i < iters; i++)
        for (int j = 0; j < FMA_CHAINS; j++)
            for (int l = 0; l < 4; l++) a[j][l] = a[j][l] * 0.9999999f + 1e-7f;
    float r = 0;
    for (int j = 0; j < FMA_CHAINS; j++)
        for (int l = 0; l < 4; l++) r += a[j][l];
    return r;
}

typedef float (*fma_fn)(long, float);

static fma_fn pick_fma(const char **isa, int *lanes) {
#if FR_PEAK_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) {
        *isa = "avx512f";
        *lanes = 16;
        return fma_chains_avx512;
    }
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        *isa = "avx2+fma";
        *lanes = 8;
        return fma_chains_avx2;
    }
#endif
    *isa = "generic";
    *lanes = 4;
    return fma_chains_generic;
}

/* Seconds for every thread to run `iters` iterations of the kernel (one parallel region). */
static double fma_run(fma_fn fn, long iters, int *threads) {
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
int fr_measure_fp32_peak(fr_peak *r) {
    if (!r) return fr_error(FR_ERR_ARG, "fr_measure_fp32_peak: NULL result");
    memset(r, 0, sizeof *r);
    fma_fn fn = pick_fma(&r->isa, &r->lanes);
    int nt = 1;
    long iters = 1L << 14;
    double t = fma_run(fn, iters, &nt); /* also wakes the thread pool */
    while (t < 0.25 && iters < (1L << 40)) {
        double scale = t > 1e-4 ? 0.3 / t : 8.0;
        if (scale > 8.0) scale = 8.0;
        if (scale < 1.5) scale = 1.5;
        iters = (long)((double)iters * scale);
        t = fma_run(fn, iters, &nt);
    }
    double best = t;
    for (int rep = 0; rep < 3; rep++) {
        double tr = fma_run(fn, iters, &nt);
        if (tr < best) best = tr;
    }
    double flops = 2.0 * r->lanes * FMA_CHAINS * (double)iters * nt;
    r->threads = nt;
    r->gflops = flops / best / 1e9;
    r->gflops_per_thread = r->gflops / nt;
    return FR_OK;
}
