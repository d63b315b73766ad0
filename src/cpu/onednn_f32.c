/*
 * onednn_f32.c — the inference engine's FP32-weight products of 16..1024 rows (a prompt's)
 * through oneDNN's matmul primitive, where its SGEMM (dnnl_sgemm, the backend's path for every
 * other matrix product: ops_cpu_gemm.c) is slow.
 *
 * Why: on AMD Zen 4, whose AVX-512 runs on 256-bit units, oneDNN 2.6's AVX-512 SGEMM multiplies
 * a short prompt's activations by a weight matrix (C = A B^T, A of 16-256 rows, K >= 512) at 22-146
 * GFLOP/s of a 234 peak on 2 threads, a third of what its AVX2 code or our own GEMM reach on the
 * same products; its matmul primitive (brgemm, "brg:avx512_core") reaches 130-226. At training
 * sizes (2048 rows) the two are level (within 5 %, either way), and below 16 rows the SGEMM is
 * the faster (6 x 256 x 1024: 164 against 86). Measured with throwaway harnesses and
 * bench_gemm_peers, docs/performance.md ("FP32 prompt processing and oneDNN on Zen 4").
 *
 * Training keeps the SGEMM: routing its products here cost 11 % of a training step (demo and
 * bench-100m configs, 2 threads), the experts' row counts changing at every step and so the
 * shapes to build.
 *
 * A primitive is built for one exact shape (~0.4 ms) and kept (the rows go in power-of-two
 * chunks, below, so the shapes are few): which kernel runs, and so the order of its additions,
 * depends on the shape alone, never on what ran before. Its results were the same bits on 1
 * and 2 threads; test_quant (test_f32_prompt_products) checks that, run-to-run bits and the
 * FP32 error bound through this path.
 */
#include "cpu/ops_cpu.h"
#include "cpu/onednn_cache.h"

#define MIN_ROWS 16   /* fewer: the SGEMM is the faster (6 x 256 x 1024: 164 against 86 GFLOP/s) */
#define MAX_ROWS 1024 /* more: the two are level */
#define MIN_MACS (1 << 19) /* a small model's products gain nothing from a primitive's ~0.4 ms build */

#ifdef FR_HAVE_DNNL
#include <dnnl.h>
#include <pthread.h>

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static dnnl_engine_t g_engine;
static dnnl_stream_t g_stream;
static fr_dnnl_cache g_shapes;

/* A [M, K] (row stride lda), B [N, K] (row stride ldb) read as its transpose, C [M, N] (ldc) */
static int make_descs(int M, int N, int K, int lda, int ldb, int ldc, dnnl_memory_desc_t *a, dnnl_memory_desc_t *b,
                      dnnl_memory_desc_t *c) {
    dnnl_dims_t da = {M, K}, db = {K, N}, dc = {M, N}, sa = {lda, 1}, sb = {1, ldb}, sc = {ldc, 1};
    return dnnl_memory_desc_init_by_strides(a, 2, da, dnnl_f32, sa) == dnnl_success &&
           dnnl_memory_desc_init_by_strides(b, 2, db, dnnl_f32, sb) == dnnl_success &&
           dnnl_memory_desc_init_by_strides(c, 2, dc, dnnl_f32, sc) == dnnl_success;
}

static dnnl_primitive_t build(int M, int N, int K, int lda, int ldb, int ldc) {
    dnnl_memory_desc_t a, b, c;
    dnnl_matmul_desc_t md;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_primitive_t prim = NULL;
    if (make_descs(M, N, K, lda, ldb, ldc, &a, &b, &c) && dnnl_matmul_desc_init(&md, &a, &b, NULL, &c) == dnnl_success &&
        dnnl_primitive_desc_create(&pd, &md, NULL, g_engine, NULL) == dnnl_success &&
        dnnl_primitive_create(&prim, pd) != dnnl_success)
        prim = NULL;
    if (pd) dnnl_primitive_desc_destroy(pd);
    return prim;
}

/* The shape's primitive, built on first use; NULL when oneDNN cannot build one. */
static dnnl_primitive_t shape_prim(int M, int N, int K, int lda, int ldb, int ldc) {
    const int key[FR_DNNL_KEY] = {M, N, K, lda, ldb, ldc};
    fr_dnnl_entry *e = fr_dnnl_cache_find(&g_shapes, key);
    if (!e->prim && !e->failed) {
        e->prim = build(M, N, K, lda, ldb, ldc);
        e->failed = !e->prim;
    }
    return e->prim;
}

/* rows [0, M) of the product through the shape's primitive; -1 if oneDNN could not */
static int run_shape(int M, int N, int K, const float *A, int lda, const float *B, int ldb, float *C, int ldc) {
    const dnnl_primitive_t prim = shape_prim(M, N, K, lda, ldb, ldc);
    dnnl_memory_desc_t a, b, c;
    dnnl_memory_t ma = NULL, mb = NULL, mc = NULL;
    int ok = prim && make_descs(M, N, K, lda, ldb, ldc, &a, &b, &c) &&
             dnnl_memory_create(&ma, &a, g_engine, (void *)A) == dnnl_success &&
             dnnl_memory_create(&mb, &b, g_engine, (void *)B) == dnnl_success &&
             dnnl_memory_create(&mc, &c, g_engine, C) == dnnl_success;
    if (ok) {
        dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, ma}, {DNNL_ARG_WEIGHTS, mb}, {DNNL_ARG_DST, mc}};
        ok = dnnl_primitive_execute(prim, g_stream, 3, args) == dnnl_success && dnnl_stream_wait(g_stream) == dnnl_success;
    }
    if (ma) dnnl_memory_destroy(ma);
    if (mb) dnnl_memory_destroy(mb);
    if (mc) dnnl_memory_destroy(mc);
    return ok ? 0 : -1;
}

/* The rows go in chunks of a power of two from MIN_ROWS to MAX_ROWS rows, largest first, and
 * the last M % 16 through the SGEMM (fast below 16 rows): so a model needs at most 7 primitives
 * per weight shape, whatever its prompts' lengths. One primitive per row count took 0.3-0.4 MB
 * each, and oneDNN keeps up to 1,024 of them: 415 MB after prompts of every length from 16 to
 * 400 rows. Returns -1 if oneDNN could not (nothing is then left to trust in y). */
static int prompt_product(float *y, const float *x, const float *W, int M, int N, int K) {
    pthread_mutex_lock(&g_lock);
    int ok = (g_engine || dnnl_engine_create(&g_engine, dnnl_cpu, 0) == dnnl_success) &&
             (g_stream || dnnl_stream_create(&g_stream, g_engine, dnnl_stream_default_flags) == dnnl_success);
    int r = 0;
    while (ok && M - r >= MIN_ROWS) {
        int chunk = MAX_ROWS;
        while (chunk > M - r) chunk /= 2;
        const float *xr = x + (size_t)r * K;
        float *yr = y + (size_t)r * N;
        if (run_shape(chunk, N, K, xr, K, W, K, yr, N) != 0)
            ok = dnnl_sgemm('N', 'T', chunk, N, K, 1.0f, xr, K, W, K, 0.0f, yr, N) == dnnl_success;
        r += chunk;
    }
    if (ok && r < M)
        ok = dnnl_sgemm('N', 'T', M - r, N, K, 1.0f, x + (size_t)r * K, K, W, K, 0.0f, y + (size_t)r * N, N) == dnnl_success;
    pthread_mutex_unlock(&g_lock);
    return ok ? 0 : -1;
}
#endif

void fr_cpu_linear_f32(float *y, const float *x, const float *W, int M, int N, int K) {
#ifdef FR_HAVE_DNNL
    if (M >= MIN_ROWS && M <= MAX_ROWS && (double)M * N * K >= MIN_MACS && fr_cpu_gemm_uses_onednn() &&
        prompt_product(y, x, W, M, N, K) == 0)
        return;
#endif
    fr_cpu_gemm(0, 1, M, N, K, 1.0f, x, K, W, K, 0.0f, y, N);
}
