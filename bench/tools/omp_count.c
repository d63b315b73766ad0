/*
 * omp_count.c — counts the OpenMP parallel regions a program enters, for bench_model's
 * "regions per step" (every region is a fork and a join barrier: on a small model their
 * count, not only the work inside them, sets the step's floor).
 *
 * Built as build/libomp_count.so and preloaded (LD_PRELOAD); it wraps libgomp's entry points
 * for parallel regions, counts, and calls the real ones (dlsym RTLD_NEXT). bench_model reads
 * the count through fr_bench_omp_regions (dlsym RTLD_DEFAULT). GCC's libgomp only: with
 * another OpenMP runtime nothing is counted and the bench says so.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdatomic.h>

static atomic_long g_regions;

long fr_bench_omp_regions(void);
long fr_bench_omp_regions(void) { return atomic_load(&g_regions); }

#define REAL(name, type) static type real_##name; if (!real_##name) real_##name = (type)dlsym(RTLD_NEXT, #name)

typedef void (*par_fn)(void (*)(void *), void *, unsigned, unsigned);
void GOMP_parallel(void (*fn)(void *), void *data, unsigned num_threads, unsigned flags);
void GOMP_parallel(void (*fn)(void *), void *data, unsigned num_threads, unsigned flags) {
    REAL(GOMP_parallel, par_fn);
    atomic_fetch_add(&g_regions, 1);
    real_GOMP_parallel(fn, data, num_threads, flags);
}

typedef unsigned (*par_red_fn)(void (*)(void *), void *, unsigned, unsigned);
unsigned GOMP_parallel_reductions(void (*fn)(void *), void *data, unsigned num_threads, unsigned flags);
unsigned GOMP_parallel_reductions(void (*fn)(void *), void *data, unsigned num_threads, unsigned flags) {
    REAL(GOMP_parallel_reductions, par_red_fn);
    atomic_fetch_add(&g_regions, 1);
    return real_GOMP_parallel_reductions(fn, data, num_threads, flags);
}

/* parallel loops with a non-static schedule: parallel + loop in one call */
typedef void (*par_loop_fn)(void (*)(void *), void *, unsigned, long, long, long, long, unsigned);
#define LOOP(name)                                                                                          \
    void name(void (*fn)(void *), void *data, unsigned nt, long start, long end, long incr, long chunk,     \
              unsigned flags);                                                                              \
    void name(void (*fn)(void *), void *data, unsigned nt, long start, long end, long incr, long chunk,     \
              unsigned flags) {                                                                             \
        REAL(name, par_loop_fn);                                                                            \
        atomic_fetch_add(&g_regions, 1);                                                                    \
        real_##name(fn, data, nt, start, end, incr, chunk, flags);                                          \
    }
LOOP(GOMP_parallel_loop_static)
LOOP(GOMP_parallel_loop_dynamic)
LOOP(GOMP_parallel_loop_guided)
LOOP(GOMP_parallel_loop_nonmonotonic_dynamic)
LOOP(GOMP_parallel_loop_nonmonotonic_guided)

typedef void (*par_rt_fn)(void (*)(void *), void *, unsigned, long, long, long, unsigned);
#define LOOP_RT(name)                                                                                         \
    void name(void (*fn)(void *), void *data, unsigned nt, long start, long end, long incr, unsigned flags); \
    void name(void (*fn)(void *), void *data, unsigned nt, long start, long end, long incr, unsigned flags) { \
        REAL(name, par_rt_fn);                                                                                \
        atomic_fetch_add(&g_regions, 1);                                                                      \
        real_##name(fn, data, nt, start, end, incr, flags);                                                   \
    }
LOOP_RT(GOMP_parallel_loop_runtime)
LOOP_RT(GOMP_parallel_loop_nonmonotonic_runtime)
LOOP_RT(GOMP_parallel_loop_maybe_nonmonotonic_runtime)
