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
#include <sys/mman.h>
#include <time.h>

#include "frugal.h"


static inline double bench_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* qsort order for doubles, ascending */
static inline int bench_cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The median of v[0..n) (n >= 1), the mean of the middle two for even n; sorts v, so v[0]
 * is then the best (smallest) time. Medians are the benchmarks' headline figures: robust
 * to a noisy neighbour on a shared machine. */
/* A xorshift64 stream: random token ids for benchmarks (not for anything statistical). */
static inline uint64_t bench_xorshift(uint64_t *s) {
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static inline double bench_median(double *v, long n) {
    qsort(v, (size_t)n, sizeof *v, bench_cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
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

/* The probe lives in the library (src/cpu/peak.c) so the trainer can report MFU against it. */
typedef fr_peak bench_peak_result;
static inline bench_peak_result bench_fma_peak(void) {
    fr_peak r;
    memset(&r, 0, sizeof r);
    fr_measure_fp32_peak(&r);
    return r;
}

/* ------------------------------------------------------------------ memory bandwidth */

typedef struct {
    double read_gbs;    /* sum over one array (best of plain and software-prefetched loops) */
    double triad_gbs;   /* a = b + s*c, counted as 3 arrays moved (STREAM convention) */
    size_t array_bytes;
    int threads;
} bench_bw_result;

/* Returns 0 on success, -1 if the arrays cannot be allocated. */
/* Seconds for all OpenMP threads to read a[0:n] once, each a contiguous share (prefetch: with
 * a software prefetch 4 KiB ahead as well) */
static inline double bench_read_span(const float *a, long n, int prefetch, int *threads) {
    static volatile float sink;
    int nt = 1;
    const double t0 = omp_get_wtime();
#pragma omp parallel
    {
        int tid = omp_get_thread_num(), T = omp_get_num_threads();
        long lo = (long)((double)n * tid / T), hi = (long)((double)n * (tid + 1) / T);
        lo -= lo % 32;
        hi = tid == T - 1 ? n : hi - hi % 32;
        float acc[32] = {0};
        if (prefetch)
            for (long i = lo; i < hi; i += 32) {
                __builtin_prefetch(a + i + 1024);
                __builtin_prefetch(a + i + 1040);
                for (int j = 0; j < 32; j++) acc[j] += a[i + j];
            }
        else
            for (long i = lo; i < hi; i += 32)
                for (int j = 0; j < 32; j++) acc[j] += a[i + j];
        float s = 0;
        for (int j = 0; j < 32; j++) s += acc[j];
#pragma omp atomic
        sink += s;
#pragma omp single nowait
        nt = T;
    }
    const double t = omp_get_wtime() - t0;
    if (threads) *threads = nt;
    return t;
}

/* n floats on transparent huge pages, as the library's weights (fr_alloc, fr_alloc_weights):
 * from 4 KiB pages this VM's reads came out a third lower, and a bound measured there would
 * flatter every kernel that reads huge pages. Touched by all threads (static schedule). */
static inline float *bench_huge_floats(size_t n, float value) {
    const size_t huge = (size_t)2 << 20;
    float *a = NULL;
    if (posix_memalign((void **)&a, huge, n * sizeof(float)) != 0) return NULL;
    madvise(a, n * sizeof(float), MADV_HUGEPAGE);
    const long ln = (long)n;
#pragma omp parallel for schedule(static)
    for (long i = 0; i < ln; i++) a[i] = value;
    return a;
}

/* Nanoseconds for a cache line to go from OpenMP thread 0 to thread 1 and back (the median of
 * 7 runs of 20,000 hand-offs; 0 with one thread). Every barrier and every activation one thread
 * writes and another reads pays it: on the 2-vCPU Zen 4 VM it is 50-110 ns when both vCPUs sit
 * on one CCD (which then share one link to memory: 38-50 GB/s of reads) and 320-500 ns when
 * they sit on two (60-87 GB/s), and the hypervisor moves them between the two states. */
static inline double bench_thread_round_trip_ns(void) {
    if (omp_get_max_threads() < 2) return 0;
    static volatile int flag; /* volatile plus the barriers' flushes: a plain shared-memory ping-pong */
    double runs[7];
    for (int run = 0; run < 7; run++) {
        const int n = 20000;
        double t0 = 0, t1 = 0;
        flag = 0;
#pragma omp parallel num_threads(2)
        {
            const int me = omp_get_thread_num();
#pragma omp barrier
            if (me == 0) t0 = omp_get_wtime();
            for (int i = 0; i < n; i++) {
                const int want = 2 * i + me;
                while (__atomic_load_n(&flag, __ATOMIC_ACQUIRE) != want) {
                }
                __atomic_store_n(&flag, want + 1, __ATOMIC_RELEASE);
            }
            if (me == 0) t1 = omp_get_wtime();
        }
        runs[run] = (t1 - t0) / n * 1e9;
    }
    return bench_median(runs, 7);
}

/* A read probe to run between timed steps, so that each step has a bandwidth measured under
 * the same conditions (on a shared VM the read bandwidth moved between about 38 and 73 GB/s
 * from minute to minute, more than the effects measured). One array on huge pages, read a slice
 * at a time, slices in turn, so that a probe never finds its slice in the last-level cache. */
typedef struct {
    float *a;
    long n, slice, next;
} bench_read_probe;

static inline int bench_read_probe_init(bench_read_probe *p, size_t array_bytes, size_t slice_bytes) {
    p->n = (long)(array_bytes / sizeof(float));
    p->slice = (long)(slice_bytes / sizeof(float));
    p->slice -= p->slice % 64;
    p->n -= p->n % p->slice;
    p->next = 0;
    p->a = bench_huge_floats((size_t)p->n, 1.0f);
    return p->a ? 0 : -1;
}

/* GB/s of one read of the next slice */
static inline double bench_read_probe_gbs(bench_read_probe *p) {
    const double t = bench_read_span(p->a + p->next, p->slice, 0, NULL);
    p->next = (p->next + p->slice) % p->n;
    return (double)p->slice * sizeof(float) / t / 1e9;
}

static inline void bench_read_probe_free(bench_read_probe *p) {
    free(p->a);
    p->a = NULL;
}

static inline int bench_memory_bandwidth(size_t array_bytes, bench_bw_result *out) {
    size_t n = array_bytes / sizeof(float);
    n -= n % 64;
    float *a = bench_huge_floats(n, 1.0f), *b = bench_huge_floats(n, 2.0f), *c = bench_huge_floats(n, 0.5f);
    if (!a || !b || !c) {
        free(a);
        free(b);
        free(c);
        return -1;
    }
    long ln = (long)n;
    double best_read = 1e30, best_triad = 1e30;
    int nt = 1;
    for (int rep = 0; rep < 6; rep++) {
        /* odd repetitions prefetch 4 KiB ahead in software (as the decode kernels do);
         * the best of both counts, so the bound is what a reader can actually get */
        double t = bench_read_span(a, ln, rep & 1, &nt);
        if (t < best_read) best_read = t;

        const float scalar = 0.999f;
        const double t0 = omp_get_wtime();
#pragma omp parallel for schedule(static)
        for (long i = 0; i < ln; i++) a[i] = b[i] + scalar * c[i];
        t = omp_get_wtime() - t0;
        if (t < best_triad) best_triad = t;
    }
    static volatile float keep; /* the triad's stores are used */
    keep += a[n / 2];
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
