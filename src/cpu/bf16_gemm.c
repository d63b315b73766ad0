/*
 * bf16_gemm.c — the CPU backend's BF16 matrix product for mixed-precision training
 * (fr_ops.gemm_bf16, contract in model/ops.h): both operands rounded to bfloat16 (round to
 * nearest even), products accumulated in FP32.
 *
 * Two paths, one result up to the order of the FP32 additions:
 *  - "onednn": the operands are packed to BF16 and oneDNN's matmul primitive multiplies
 *    them. oneDNN picks its kernel from the CPU: AMX tiles on Sapphire Rapids and later,
 *    AVX512-BF16 dot products (vdpbf16ps) on Cooper Lake and Zen 4, an up-converting
 *    AVX-512 GEMM on older AVX-512 parts. It has no BF16 matmul below AVX-512.
 *  - "emulated": the operands are rounded to BF16 values held in FP32 and the backend's
 *    FP32 GEMM multiplies them. A product of two BF16 values (8-bit significands) is exact
 *    in FP32 (24 bits), so this computes what the hardware computes; it is never faster
 *    than FP32, which is why the trainer warns when it is the only path.
 *
 * The choice is made once (FRUGAL_BF16_GEMM=onednn|emulated overrides it for tests and
 * benchmarks) and fr_cpu_bf16_gemm_path() names it, with the kernel oneDNN reported, so a
 * benchmark figure is never from the wrong path.
 */
#include "cpu/ops_cpu.h"
#include "formats/numfmt.h"
#include "frugal.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef FR_HAVE_DNNL
#include <dnnl.h>
#endif

/* ------------------------------------------------------------------ rounding */

/* dst[rows, cols] (dense) = bf16(src) (row stride ld), as BF16 codes */
static void pack_bf16(uint16_t *dst, const float *src, int ld, int rows, int cols) {
#pragma omp parallel for schedule(static) if ((double)rows * cols > 65536.0)
    for (int r = 0; r < rows; r++) {
        const float *s = src + (size_t)r * ld;
        uint16_t *d = dst + (size_t)r * cols;
        for (int c = 0; c < cols; c++) d[c] = fr_bf16_encode(s[c]);
    }
}

/* dst[rows, cols] (dense) = bf16(src) values kept in FP32 */
static void round_bf16(float *dst, const float *src, int ld, int rows, int cols) {
#pragma omp parallel for schedule(static) if ((double)rows * cols > 65536.0)
    for (int r = 0; r < rows; r++) {
        const float *s = src + (size_t)r * ld;
        float *d = dst + (size_t)r * cols;
        for (int c = 0; c < cols; c++) d[c] = fr_bf16_decode(fr_bf16_encode(s[c]));
    }
}

/* ------------------------------------------------------------------ scratch */

/* The operands' rounded copies; the trainer calls from one thread, the mutex keeps a second
 * caller (a library user's own thread) from sharing them. */
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static void *g_buf[2];
static size_t g_cap[2];

static void *scratch(int k, size_t bytes) {
    if (g_cap[k] < bytes) {
        free(g_buf[k]);
        g_buf[k] = NULL;
        g_cap[k] = 0;
        if (posix_memalign(&g_buf[k], 64, bytes) != 0) {
            g_buf[k] = NULL;
            return NULL;
        }
        g_cap[k] = bytes;
    }
    return g_buf[k];
}

/* ------------------------------------------------------------------ path choice */

enum { PATH_UNSET = -1, PATH_EMULATED = 0, PATH_ONEDNN = 1 };
static int g_path = PATH_UNSET;
static char g_path_name[96];
static pthread_once_t g_path_once = PTHREAD_ONCE_INIT;

#ifdef FR_HAVE_DNNL
static dnnl_engine_t g_engine;
static dnnl_stream_t g_stream;

/* One cached primitive per shape: a training step repeats the same few dozen shapes (the
 * MoE experts' row counts vary, hence a cache rather than one slot per layer). */
typedef struct {
    int ta, tb, M, N, K, ldc;
    float alpha, beta;
    dnnl_primitive_t prim;
    dnnl_memory_desc_t a, b, c;
    char impl[48]; /* oneDNN's name for the kernel it chose */
} prim_entry;

#define PRIM_CACHE 256
static prim_entry g_prims[PRIM_CACHE];
static int g_n_prims, g_next_evict;

static void strides_2d(dnnl_dims_t strides, int transposed, int rows, int cols) {
    /* a dense [rows, cols] operand, or the transpose of a dense [cols, rows] one */
    strides[0] = transposed ? 1 : cols;
    strides[1] = transposed ? rows : 1;
}

/* The primitive for this shape, created (and its kernel's name kept) on first use. */
static prim_entry *get_prim(int ta, int tb, int M, int N, int K, int ldc, float alpha, float beta) {
    for (int i = 0; i < g_n_prims; i++) {
        prim_entry *e = &g_prims[i];
        if (e->ta == ta && e->tb == tb && e->M == M && e->N == N && e->K == K && e->ldc == ldc && e->alpha == alpha &&
            e->beta == beta)
            return e;
    }
    prim_entry e = {.ta = ta, .tb = tb, .M = M, .N = N, .K = K, .ldc = ldc, .alpha = alpha, .beta = beta};
    dnnl_dims_t da = {M, K}, db = {K, N}, dc = {M, N}, sa, sb, sc = {ldc, 1};
    strides_2d(sa, ta, M, K);
    strides_2d(sb, tb, K, N);
    dnnl_matmul_desc_t md;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t post = NULL;
    dnnl_primitive_desc_t pd = NULL;
    int ok = dnnl_memory_desc_init_by_strides(&e.a, 2, da, dnnl_bf16, sa) == dnnl_success &&
             dnnl_memory_desc_init_by_strides(&e.b, 2, db, dnnl_bf16, sb) == dnnl_success &&
             dnnl_memory_desc_init_by_strides(&e.c, 2, dc, dnnl_f32, sc) == dnnl_success &&
             dnnl_matmul_desc_init(&md, &e.a, &e.b, NULL, &e.c) == dnnl_success &&
             dnnl_primitive_attr_create(&attr) == dnnl_success;
    if (ok && alpha != 1.0f) ok = dnnl_primitive_attr_set_output_scales(attr, 1, 0, &alpha) == dnnl_success;
    if (ok && beta != 0.0f)
        ok = dnnl_post_ops_create(&post) == dnnl_success && dnnl_post_ops_append_sum(post, beta) == dnnl_success &&
             dnnl_primitive_attr_set_post_ops(attr, post) == dnnl_success;
    if (ok) ok = dnnl_primitive_desc_create(&pd, &md, attr, g_engine, NULL) == dnnl_success;
    if (ok) {
        const char *s = NULL;
        snprintf(e.impl, sizeof e.impl, "%s",
                 dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &s) == dnnl_success && s ? s : "?");
    }
    if (ok) ok = dnnl_primitive_create(&e.prim, pd) == dnnl_success;
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (post) dnnl_post_ops_destroy(post);
    if (attr) dnnl_primitive_attr_destroy(attr);
    if (!ok) return NULL;
    int slot = g_n_prims < PRIM_CACHE ? g_n_prims++ : g_next_evict++ % PRIM_CACHE;
    if (g_prims[slot].prim) dnnl_primitive_destroy(g_prims[slot].prim);
    g_prims[slot] = e;
    return &g_prims[slot];
}

static int onednn_gemm(int ta, int tb, int M, int N, int K, float alpha, const uint16_t *A, const uint16_t *B, float beta,
                       float *C, int ldc) {
    prim_entry *e = get_prim(ta, tb, M, N, K, ldc, alpha, beta);
    if (!e) return -1;
    dnnl_memory_t ma = NULL, mb = NULL, mc = NULL;
    int ok = dnnl_memory_create(&ma, &e->a, g_engine, (void *)A) == dnnl_success &&
             dnnl_memory_create(&mb, &e->b, g_engine, (void *)B) == dnnl_success &&
             dnnl_memory_create(&mc, &e->c, g_engine, C) == dnnl_success;
    if (ok) {
        dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, ma}, {DNNL_ARG_WEIGHTS, mb}, {DNNL_ARG_DST, mc}};
        ok = dnnl_primitive_execute(e->prim, g_stream, 3, args) == dnnl_success &&
             dnnl_stream_wait(g_stream) == dnnl_success;
    }
    if (ma) dnnl_memory_destroy(ma);
    if (mb) dnnl_memory_destroy(mb);
    if (mc) dnnl_memory_destroy(mc);
    return ok ? 0 : -1;
}

/* oneDNN serves BF16 here if it builds a primitive for a training-sized shape; its kernel's
 * name ("brg:avx512_core_amx", "brg:avx512_core_bf16", "gemm:jit", ...) goes in impl. */
static int onednn_available(char *impl, size_t impl_n) {
    if (!g_engine && dnnl_engine_create(&g_engine, dnnl_cpu, 0) != dnnl_success) return 0;
    if (!g_stream && dnnl_stream_create(&g_stream, g_engine, dnnl_stream_default_flags) != dnnl_success) return 0;
    const prim_entry *e = get_prim(0, 1, 256, 256, 256, 256, 1.0f, 0.0f);
    if (e) snprintf(impl, impl_n, "%s", e->impl);
    return e != NULL;
}
#endif

/* Sets the path: want PATH_ONEDNN, PATH_EMULATED, or PATH_UNSET for the default (oneDNN
 * when it runs BF16 on hardware). Returns whether the path asked for is the one set. */
static int set_path(int want) {
    g_path = PATH_EMULATED;
    snprintf(g_path_name, sizeof g_path_name, "emulated (BF16-rounded operands, FP32 GEMM)");
#ifdef FR_HAVE_DNNL
    if (want != PATH_EMULATED) {
        char impl[64] = "?";
        if (onednn_available(impl, sizeof impl)) {
            /* below AVX512-BF16 oneDNN converts to FP32 inside its own GEMM ("gemm:jit"): no
             * faster than ours, so unless asked for it the emulation runs there */
            const int hardware = strstr(impl, "amx") || strstr(impl, "bf16");
            if (hardware || want == PATH_ONEDNN) {
                g_path = PATH_ONEDNN;
                snprintf(g_path_name, sizeof g_path_name, "onednn %s", impl);
            }
        }
    }
#endif
    return want == PATH_UNSET || want == g_path;
}

static void choose_path(void) {
    const char *env = getenv("FRUGAL_BF16_GEMM");
    set_path(env && !strcmp(env, "emulated") ? PATH_EMULATED : env && !strcmp(env, "onednn") ? PATH_ONEDNN : PATH_UNSET);
}

int fr_cpu_bf16_gemm_set_path(const char *name) {
    pthread_mutex_lock(&g_lock);
    pthread_once(&g_path_once, choose_path);
    const int ok = set_path(!name ? PATH_UNSET : !strcmp(name, "onednn") ? PATH_ONEDNN : PATH_EMULATED);
    pthread_mutex_unlock(&g_lock);
    return ok;
}

const char *fr_cpu_bf16_gemm_path(void) {
    pthread_mutex_lock(&g_lock);
    pthread_once(&g_path_once, choose_path);
    pthread_mutex_unlock(&g_lock);
    return g_path_name;
}

int fr_cpu_bf16_gemm_hardware(void) {
    const char *p = fr_cpu_bf16_gemm_path();
    return !strncmp(p, "onednn", 6) && (strstr(p, "amx") || strstr(p, "bf16"));
}

/* ------------------------------------------------------------------ the product */

int fr_cpu_gemm_bf16(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
                     float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return 0;
    if (K <= 0 || alpha == 0.0f) { /* nothing to round: the FP32 GEMM scales C */
        fr_cpu_gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return 0;
    }
    fr_cpu_bf16_gemm_path();
    /* the stored shapes of A and B: [M, K] or [K, M]; [K, N] or [N, K] */
    const int a_rows = ta ? K : M, a_cols = ta ? M : K, b_rows = tb ? N : K, b_cols = tb ? K : N;
    const size_t a_n = (size_t)a_rows * a_cols, b_n = (size_t)b_rows * b_cols;
    int rc = 0;
    pthread_mutex_lock(&g_lock);
#ifdef FR_HAVE_DNNL
    if (g_path == PATH_ONEDNN) {
        uint16_t *a16 = scratch(0, a_n * sizeof(uint16_t)), *b16 = scratch(1, b_n * sizeof(uint16_t));
        if (a16 && b16) {
            pack_bf16(a16, A, lda, a_rows, a_cols);
            pack_bf16(b16, B, ldb, b_rows, b_cols);
            rc = onednn_gemm(ta, tb, M, N, K, alpha, a16, b16, beta, C, ldc);
        } else {
            rc = -1;
        }
        pthread_mutex_unlock(&g_lock);
        return rc;
    }
#endif
    float *a32 = scratch(0, a_n * sizeof(float)), *b32 = scratch(1, b_n * sizeof(float));
    if (a32 && b32) {
        round_bf16(a32, A, lda, a_rows, a_cols);
        round_bf16(b32, B, ldb, b_rows, b_cols);
        fr_cpu_gemm(ta, tb, M, N, K, alpha, a32, a_cols, b32, b_cols, beta, C, ldc);
    } else {
        rc = -1;
    }
    pthread_mutex_unlock(&g_lock);
    return rc;
}

/* public (frugal.h) */
const char *fr_bf16_gemm_path(void) { return fr_cpu_bf16_gemm_path(); }
int fr_bf16_hardware(void) { return fr_cpu_bf16_gemm_hardware(); }
