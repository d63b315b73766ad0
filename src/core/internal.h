/* internal.h — helpers shared by the library's source files (not installed). */
#ifndef FR_INTERNAL_H
#define FR_INTERNAL_H

#include "frugal.h"
#include <stddef.h>

/* Record an error message for fr_last_error() and return `code`.
 * Usage: return fr_error(FR_ERR_IO, "cannot open %s: %s", path, strerror(errno)); */
int fr_error(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Put a context in front of the current message ("<context>: <message>") and return `code`.
 * Usage: if (rc != FR_OK) return fr_error_context(rc, "tensor %s", name); */
int fr_error_context(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Clear the message (start of a public call that may succeed). */
void fr_clear_error(void);

/* Read a whole file into a NUL-terminated malloc'd buffer (len excludes the NUL). */
int fr_read_file(const char *path, char **out, size_t *len);
/* Write a file atomically: write `path`.tmp.PID, fsync, rename over `path`, fsync dir. */
int fr_write_file_atomic(const char *path, const void *data, size_t len);
/* The same for a file made of n_parts buffers written in order. */
int fr_write_file_atomic_v(const char *path, const void *const *parts, const size_t *lens, int n_parts);
/* "dir/name" in a new malloc'd string (no doubled '/' when dir ends in one); NULL when out
 * of memory. */
char *fr_path_join(const char *dir, const char *name);
/* JSONL and other line-based input: the next line of text[0:len] from *pos (without its
 * '\n'; a last line without one counts). Returns 1 with *line / *line_len set, *pos moved
 * past it and *blank telling whether it holds only spaces, tabs and '\r'; 0 at the end. */
int fr_next_line(const char *text, size_t len, size_t *pos, const char **line, size_t *line_len, int *blank);
/* Seconds of the monotonic clock (for durations). */
double fr_now_s(void);
/* Copy the file src to dst with fr_write_file_atomic (small files: read whole). */
int fr_copy_file(const char *src, const char *dst);
/* fsync a directory (after renames inside it); best effort. */
int fr_fsync_dir(const char *dir);

/* 64-bit FNV-1a of n bytes, continuing from h (start with FR_FNV1A64_OFFSET). */
#define FR_FNV1A64_OFFSET 0xcbf29ce484222325ull
uint64_t fr_fnv1a64(uint64_t h, const void *data, size_t n);
/* Remove a file or a whole folder tree without following symlinks; best effort (only for
 * folders this code created or an output the caller asked to replace). */
void fr_remove_tree(const char *path);

/* Remove what killed processes left beside `path`: every "<path><sep><PID>" (a file or a
 * folder tree; sep e.g. ".tmp-" or ".tmp.") whose PID names no live process (kill(PID, 0)
 * fails with ESRCH). This process's own and live processes' temporaries are kept. Best effort. */
void fr_remove_stale_tmp(const char *path, const char *sep);

/* 64-byte aligned, zeroed allocation for host buffers; free with fr_free. From 4 MiB up, on
 * transparent huge pages where the kernel gives them (util.c). */
#define FR_HUGE_PAGE ((size_t)2 << 20)
void *fr_alloc(size_t bytes);
void fr_free(void *p);
/* Like fr_alloc, for weight matrices read once per decoded token: small ones (an expert's, a
 * head's) are packed into shared chunks on huge pages (core/weight_pool.c); fr_free releases
 * them. */
void *fr_alloc_weights(size_t bytes);
int fr_weight_pool_release(void *p); /* 1 when p was the pool's (and is released now) */

/* The OpenMP construct PRAGMA (a string, e.g. "omp parallel for schedule(static)") over the
 * statement when COND holds, else the statement alone with no construct at all. A region whose
 * if() clause is false still starts a team of one and ends it with a futex wake (libgomp wakes
 * its barrier unconditionally): about a microsecond each, and a decoded token used to run some
 * 600 of them (850 futex calls per token on the 680M model, 20 % of its time). */
#define FR_OMP_IF(COND, PRAGMA, ...)                                                               \
    do {                                                                                           \
        if (COND) {                                                                                \
            _Pragma(PRAGMA) __VA_ARGS__                                                            \
        } else {                                                                                   \
            __VA_ARGS__                                                                            \
        }                                                                                          \
    } while (0)

/* A parallel region whose body takes its share from fr_t (this thread) and fr_T (the team's
 * size): PRAGMA over it when COND holds and a region can fork here; else the body alone as
 * thread 0 of 1, with no construct. Inside another region at the deepest level OpenMP allows
 * (by default: inside any region) a construct would only start and end a team of one, about
 * 0.5 us each, and a decoded row's products run inside decode_row.c's per-head and per-expert
 * regions, some 11 a layer on each thread. (The files that use it include omp.h.) */
#define FR_OMP_REGION_IF(COND, PRAGMA, ...)                                                        \
    do {                                                                                           \
        if ((COND) && !(omp_in_parallel() && omp_get_active_level() >= omp_get_max_active_levels())) { \
            _Pragma(PRAGMA) {                                                                      \
                const int fr_t = omp_get_thread_num(), fr_T = omp_get_num_threads();               \
                (void)fr_t, (void)fr_T;                                                            \
                __VA_ARGS__                                                                        \
            }                                                                                      \
        } else {                                                                                   \
            const int fr_t = 0, fr_T = 1;                                                          \
            (void)fr_t, (void)fr_T;                                                                \
            __VA_ARGS__                                                                            \
        }                                                                                          \
    } while (0)

#define FR_CHECK(expr) do { int fr_rc_ = (expr); if (fr_rc_ != FR_OK) return fr_rc_; } while (0)

/* Deterministic RNG (splitmix64 seeding a xoshiro256** stream). */
typedef struct { uint64_t s[4]; } fr_rng;
void fr_rng_seed(fr_rng *r, uint64_t seed);
uint64_t fr_rng_next(fr_rng *r);
double fr_rng_uniform(fr_rng *r);   /* [0, 1) */
double fr_rng_normal(fr_rng *r);    /* N(0, 1), Box-Muller */

/* Evaluation windows (fr_eval_dataset, fr_engine_eval_dataset): open split of data_dir; window
 * w reads tokens [w*seq_len, (w+1)*seq_len] and predicts its last seq_len, so *n_windows =
 * (min(tokens, max_tokens if > 0) - 1) / seq_len. Fails, leaving nothing open, when the
 * dataset's vocabulary is larger than vocab_size or no window fits. */
int fr_eval_windows_open(fr_dataset **ds, const char *data_dir, const char *split, int seq_len, long max_tokens,
                         int vocab_size, long *n_windows);

#endif
