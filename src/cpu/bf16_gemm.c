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
 *    than FP32, which is why the trainer warns when it is the path taken.
 *
 * The default is oneDNN where its kernel is AMX, or AVX512-BF16 on a CPU other than Intel's;
 * else the emulation. Intel cores issue vdpbf16ps on one port, at the FLOPs of one of their two
 * 512-bit FMA ports, so without AMX BF16 buys them no arithmetic and costs the operands'
 * packing: on the Intel Xeon (Emerald Rapids, AMX not exposed) VM, oneDNN's
 * brg:avx512_core_bf16 ran the training GEMMs at 100-160 GFLOP/s against 300 for FP32, and
 * the emulation trained 1.5x faster (bench_model, demo 3,360 -> 5,159 tok/s, bench-100m
 * 614 -> 944; FP32 6,398 and 1,148). Zen 4, whose FMAs are 256 bits wide, gets twice its FP32
 * rate from it (1.33-1.43x faster steps; docs/performance.md).
 *
 * The choice is made once (FRUGAL_BF16_GEMM=onednn|emulated overrides it for tests and
 * benchmarks) and fr_cpu_bf16_gemm_path() names it, with the kernel oneDNN reported, so a
 * benchmark figure is never from the wrong path.
 */
#include "cpu/ops_cpu.h"
#include "cpu/onednn_cache.h"
#include "formats/numfmt.h"
#include "frugal.h"

#include <cpuid.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef FR_HAVE_DNNL
#include <dnnl.h>
#endif

/* ------------------------------------------------------------------ rounding
 * Every variant computes fr_bf16_encode's bits (round to nearest even on the bit pattern, NaN
 * kept quiet, no flushing), so the paths differ only in speed. Converting is O(rows x cols)
 * against the GEMM's O(M N K), but a scalar loop still cost a third of a training GEMM here. */

#include <immintrin.h>

#define T_AVX512 __attribute__((target("avx512f,avx512bw")))
#define T_AVX2 __attribute__((target("avx2")))

/* 16 floats -> their BF16 bits in 32-bit lanes */
T_AVX512 static inline __m512i rne16(const float *src) {
    const __m512i u = _mm512_loadu_si512(src);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    const __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
    const __mmask16 nan =
        _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)), _mm512_set1_epi32(0x7f800000));
    const __m512i quiet = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
    return _mm512_mask_blend_epi32(nan, rounded, quiet);
}

T_AVX512 static void pack_row_avx512(uint16_t *d, const float *s, int n) {
    int c = 0;
    for (; c + 16 <= n; c += 16) _mm256_storeu_si256((__m256i *)(d + c), _mm512_cvtepi32_epi16(rne16(s + c)));
    for (; c < n; c++) d[c] = fr_bf16_encode(s[c]);
}

T_AVX512 static void round_row_avx512(float *d, const float *s, int n) {
    int c = 0;
    for (; c + 16 <= n; c += 16) _mm512_storeu_si512(d + c, _mm512_slli_epi32(rne16(s + c), 16));
    for (; c < n; c++) d[c] = fr_bf16_decode(fr_bf16_encode(s[c]));
}

T_AVX2 static void round_row_avx2(float *d, const float *s, int n) {
    int c = 0;
    const __m256i one = _mm256_set1_epi32(1), bias = _mm256_set1_epi32(0x7fff), abs = _mm256_set1_epi32(0x7fffffff);
    const __m256i inf = _mm256_set1_epi32(0x7f800000), qbit = _mm256_set1_epi32(0x400000);
    const __m256i hi = _mm256_set1_epi32((int)0xffff0000u);
    for (; c + 8 <= n; c += 8) {
        const __m256i u = _mm256_loadu_si256((const __m256i *)(s + c));
        const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), one);
        const __m256i rounded = _mm256_and_si256(_mm256_add_epi32(u, _mm256_add_epi32(lsb, bias)), hi);
        /* signed compare is right here: both sides are non-negative after the mask */
        const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, abs), inf);
        const __m256i quiet = _mm256_and_si256(_mm256_or_si256(u, qbit), hi);
        _mm256_storeu_si256((__m256i *)(d + c), _mm256_blendv_epi8(rounded, quiet, nan));
    }
    for (; c < n; c++) d[c] = fr_bf16_decode(fr_bf16_encode(s[c]));
}

void fr_cpu_bf16_pack_row(uint16_t *d, const float *s, int n) {
    if (fr_cpu_isa() >= FR_ISA_AVX512) {
        pack_row_avx512(d, s, n);
        return;
    }
    for (int c = 0; c < n; c++) d[c] = fr_bf16_encode(s[c]);
}

void fr_cpu_bf16_round_row(float *d, const float *s, int n) {
    const int isa = fr_cpu_isa();
    if (isa >= FR_ISA_AVX512) round_row_avx512(d, s, n);
    else if (isa >= FR_ISA_AVX2) round_row_avx2(d, s, n);
    else
        for (int c = 0; c < n; c++) d[c] = fr_bf16_decode(fr_bf16_encode(s[c]));
}

/* dst[rows_p, cols_p] (dense) = bf16(src [rows, cols], row stride ld) as BF16 codes, padded
 * with zeros to rows_p >= rows, cols_p >= cols */
static void pack_bf16(uint16_t *dst, const float *src, int ld, int rows, int cols, int rows_p, int cols_p) {
#pragma omp parallel for schedule(static) if ((double)rows * cols > 65536.0)
    for (int r = 0; r < rows_p; r++) {
        uint16_t *d = dst + (size_t)r * cols_p;
        if (r < rows) {
            fr_cpu_bf16_pack_row(d, src + (size_t)r * ld, cols);
            memset(d + cols, 0, (size_t)(cols_p - cols) * sizeof *d);
        } else {
            memset(d, 0, (size_t)cols_p * sizeof *d);
        }
    }
}

/* dst[rows, cols] (dense) = bf16(src) values kept in FP32 */
static void round_bf16(float *dst, const float *src, int ld, int rows, int cols) {
#pragma omp parallel for schedule(static) if ((double)rows * cols > 65536.0)
    for (int r = 0; r < rows; r++) fr_cpu_bf16_round_row(dst + (size_t)r * cols, src + (size_t)r * ld, cols);
}

/* ------------------------------------------------------------------ scratch */

/* The operands' rounded copies; the trainer calls from one thread, the mutex keeps a second
 * caller (a library user's own thread) from sharing them. */
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static void *g_buf[3];
static size_t g_cap[3];

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
static char g_path_name[160];
static pthread_once_t g_path_once = PTHREAD_ONCE_INIT;

#ifdef FR_HAVE_DNNL
static dnnl_engine_t g_engine;
static dnnl_stream_t g_stream;

/* Primitives. oneDNN's fastest BF16 kernels (brgemm) are built for one exact shape (~0.4 ms
 * each), and every shape gets its own on first use: which kernel multiplies (and so the order
 * of its additions) then depends on the shape alone, never on what ran before, so a resumed
 * run repeats an uninterrupted one bit for bit. M and K are padded to multiples of PAD, so
 * the MoE experts' changing token counts fall into a bounded set of shapes. A primitive whose
 * dimensions are given at execution (a general kernel, once per transpose / alpha / beta
 * case) runs a shape only if oneDNN cannot build one for it. */
#define PAD 16           /* M and K are rounded up to this (fr_cpu_gemm_bf16) */
typedef struct {
    int ta, tb;
    float alpha, beta;
    dnnl_primitive_t prim;
} general_entry;

static fr_dnnl_cache g_shapes;
static general_entry g_general[32];
static int g_n_general;
static char g_impl[48]; /* oneDNN's name for the shape-specific kernel */

static void strides_2d(dnnl_dims_t strides, int transposed, dnnl_dim_t rows, dnnl_dim_t cols) {
    /* a dense [rows, cols] operand, or the transpose of a dense [cols, rows] one */
    strides[0] = transposed ? 1 : cols;
    strides[1] = transposed ? rows : 1;
}

/* Memory descriptors of A [M, K], B [K, N] (BF16, dense, maybe transposed) and C [M, N] (FP32,
 * row stride ldc); with runtime set, every dimension and stride is DNNL_RUNTIME_DIM_VAL. */
static int make_descs(int ta, int tb, dnnl_dim_t M, dnnl_dim_t N, dnnl_dim_t K, dnnl_dim_t ldc, int runtime,
                      dnnl_memory_desc_t *a, dnnl_memory_desc_t *b, dnnl_memory_desc_t *c) {
    if (runtime) M = N = K = ldc = DNNL_RUNTIME_DIM_VAL;
    dnnl_dims_t da = {M, K}, db = {K, N}, dc = {M, N}, sa, sb, sc = {ldc, 1};
    strides_2d(sa, ta, M, K);
    strides_2d(sb, tb, K, N);
    return dnnl_memory_desc_init_by_strides(a, 2, da, dnnl_bf16, sa) == dnnl_success &&
           dnnl_memory_desc_init_by_strides(b, 2, db, dnnl_bf16, sb) == dnnl_success &&
           dnnl_memory_desc_init_by_strides(c, 2, dc, dnnl_f32, sc) == dnnl_success;
}

static dnnl_primitive_t create_prim(int ta, int tb, int M, int N, int K, int ldc, float alpha, float beta, int runtime,
                                    char *impl, size_t impl_n) {
    dnnl_memory_desc_t a, b, c;
    dnnl_matmul_desc_t md;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t post = NULL;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_primitive_t prim = NULL;
    int ok = make_descs(ta, tb, M, N, K, ldc, runtime, &a, &b, &c) &&
             dnnl_matmul_desc_init(&md, &a, &b, NULL, &c) == dnnl_success &&
             dnnl_primitive_attr_create(&attr) == dnnl_success;
    if (ok && alpha != 1.0f) ok = dnnl_primitive_attr_set_output_scales(attr, 1, 0, &alpha) == dnnl_success;
    if (ok && beta != 0.0f)
        ok = dnnl_post_ops_create(&post) == dnnl_success && dnnl_post_ops_append_sum(post, beta) == dnnl_success &&
             dnnl_primitive_attr_set_post_ops(attr, post) == dnnl_success;
    if (ok) ok = dnnl_primitive_desc_create(&pd, &md, attr, g_engine, NULL) == dnnl_success;
    if (ok && impl) {
        const char *name = NULL;
        snprintf(impl, impl_n, "%s",
                 dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &name) == dnnl_success && name ? name : "?");
    }
    if (ok && dnnl_primitive_create(&prim, pd) != dnnl_success) prim = NULL;
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (post) dnnl_post_ops_destroy(post);
    if (attr) dnnl_primitive_attr_destroy(attr);
    return prim;
}

/* The shape's entry (new ones without a primitive yet); alpha and beta by their bits. */
static fr_dnnl_entry *shape_find(int ta, int tb, int M, int N, int K, int ldc, float alpha, float beta) {
    int key[FR_DNNL_KEY] = {ta * 2 + tb, M, N, K, ldc};
    memcpy(&key[5], &alpha, sizeof alpha);
    memcpy(&key[6], &beta, sizeof beta);
    return fr_dnnl_cache_find(&g_shapes, key);
}

static dnnl_primitive_t general_prim(int ta, int tb, float alpha, float beta) {
    for (int i = 0; i < g_n_general; i++)
        if (g_general[i].ta == ta && g_general[i].tb == tb && g_general[i].alpha == alpha && g_general[i].beta == beta)
            return g_general[i].prim;
    dnnl_primitive_t p = create_prim(ta, tb, 0, 0, 0, 0, alpha, beta, 1, NULL, 0);
    if (!p) return NULL;
    if (g_n_general == (int)(sizeof g_general / sizeof g_general[0])) { /* many alphas / betas: start over */
        for (int i = 0; i < g_n_general; i++) dnnl_primitive_destroy(g_general[i].prim);
        g_n_general = 0;
    }
    g_general[g_n_general++] = (general_entry){ta, tb, alpha, beta, p};
    return p;
}

static int onednn_gemm(dnnl_primitive_t prim, int ta, int tb, int M, int N, int K, float alpha, const uint16_t *A,
                       const uint16_t *B, float beta, float *C, int ldc) {
    if (!prim) prim = general_prim(ta, tb, alpha, beta);
    dnnl_memory_desc_t a, b, c;
    if (!prim || !make_descs(ta, tb, M, N, K, ldc, 0, &a, &b, &c)) return -1;
    dnnl_memory_t ma = NULL, mb = NULL, mc = NULL;
    int ok = dnnl_memory_create(&ma, &a, g_engine, (void *)A) == dnnl_success &&
             dnnl_memory_create(&mb, &b, g_engine, (void *)B) == dnnl_success &&
             dnnl_memory_create(&mc, &c, g_engine, C) == dnnl_success;
    if (ok) {
        dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, ma}, {DNNL_ARG_WEIGHTS, mb}, {DNNL_ARG_DST, mc}};
        ok = dnnl_primitive_execute(prim, g_stream, 3, args) == dnnl_success &&
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
    if (!g_impl[0]) {
        dnnl_primitive_t p = create_prim(0, 1, 256, 256, 256, 256, 1.0f, 0.0f, 0, g_impl, sizeof g_impl);
        if (!p) return 0;
        dnnl_primitive_destroy(p);
        /* and the general kernel must exist too */
        if (!general_prim(0, 1, 1.0f, 0.0f)) {
            g_impl[0] = 0;
            return 0;
        }
    }
    snprintf(impl, impl_n, "%s", g_impl);
    return 1;
}
#endif

/* cpuid's vendor string is "GenuineIntel" */
static int cpu_is_intel(void) {
    unsigned a, b, c, d;
    return __get_cpuid(0, &a, &b, &c, &d) && b == 0x756e6547u && d == 0x49656e69u && c == 0x6c65746eu;
}

/* Sets the path: want PATH_ONEDNN, PATH_EMULATED, or PATH_UNSET for the default (oneDNN
 * when its BF16 kernel is faster than FP32: see the top). Returns whether the path asked for is the one set. */
static int set_path(int want) {
    g_path = PATH_EMULATED;
    snprintf(g_path_name, sizeof g_path_name, "emulated (BF16-rounded operands, FP32 GEMM)");
#ifdef FR_HAVE_DNNL
    if (want != PATH_EMULATED) {
        char impl[64] = "?";
        if (onednn_available(impl, sizeof impl)) {
            /* below AVX512-BF16 oneDNN converts to FP32 inside its own GEMM ("gemm:jit"): no
             * faster than ours, so unless asked for it the emulation runs there */
            const int amx = strstr(impl, "amx") != NULL, intel_bf16 = !amx && strstr(impl, "bf16") && cpu_is_intel();
            const int hardware = amx || (strstr(impl, "bf16") && !intel_bf16);
            if (hardware || want == PATH_ONEDNN) {
                g_path = PATH_ONEDNN;
                snprintf(g_path_name, sizeof g_path_name, "onednn %s", impl);
            } else if (intel_bf16) {
                snprintf(g_path_name, sizeof g_path_name,
                         "emulated (BF16-rounded operands, FP32 GEMM: faster than onednn %s on Intel without AMX)", impl);
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

/* The emulation: operands rounded to BF16 values in FP32, the backend's FP32 GEMM. */
static int emulated_gemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                         int ldb, float beta, float *C, int ldc) {
    const int a_rows = ta ? K : M, a_cols = ta ? M : K, b_rows = tb ? N : K, b_cols = tb ? K : N;
    float *a32 = scratch(0, (size_t)a_rows * a_cols * sizeof(float));
    float *b32 = scratch(1, (size_t)b_rows * b_cols * sizeof(float));
    if (!a32 || !b32) return -1;
    round_bf16(a32, A, lda, a_rows, a_cols);
    round_bf16(b32, B, ldb, b_rows, b_cols);
    fr_cpu_gemm(ta, tb, M, N, K, alpha, a32, a_cols, b32, b_cols, beta, C, ldc);
    return 0;
}

#ifdef FR_HAVE_DNNL
/* oneDNN on BF16 copies with M and K rounded up to PAD (zero rows / columns in the copies,
 * which are made anyway): the MoE experts' token counts then fall into few shapes. A padded M
 * computes into a scratch C. prim: the shape's own primitive, or NULL for the general one. */
static int padded_onednn_gemm(dnnl_primitive_t prim, int ta, int tb, int M, int N, int K, float alpha, const float *A,
                              int lda, const float *B, int ldb, float beta, float *C, int ldc) {
    const int a_rows = ta ? K : M, a_cols = ta ? M : K, b_rows = tb ? N : K, b_cols = tb ? K : N;
    const int Mp = (M + PAD - 1) / PAD * PAD, Kp = (K + PAD - 1) / PAD * PAD;
    const int ap_rows = ta ? Kp : Mp, ap_cols = ta ? Mp : Kp, bp_rows = tb ? N : Kp, bp_cols = tb ? Kp : N;
    uint16_t *a16 = scratch(0, (size_t)ap_rows * ap_cols * sizeof(uint16_t));
    uint16_t *b16 = scratch(1, (size_t)bp_rows * bp_cols * sizeof(uint16_t));
    float *cs = Mp == M ? C : scratch(2, (size_t)Mp * N * sizeof(float));
    if (!a16 || !b16 || !cs) return -1;
    pack_bf16(a16, A, lda, a_rows, a_cols, ap_rows, ap_cols);
    pack_bf16(b16, B, ldb, b_rows, b_cols, bp_rows, bp_cols);
    if (cs != C && beta != 0.0f)
        for (int r = 0; r < M; r++) memcpy(cs + (size_t)r * N, C + (size_t)r * ldc, (size_t)N * sizeof(float));
    int rc = onednn_gemm(prim, ta, tb, Mp, N, Kp, alpha, a16, b16, beta, cs, cs == C ? ldc : N);
    if (cs != C && rc == 0)
        for (int r = 0; r < M; r++) memcpy(C + (size_t)r * ldc, cs + (size_t)r * N, (size_t)N * sizeof(float));
    return rc;
}

/* The shape's own kernel, built on its first call; the general one if that cannot be built. */
static int dispatch(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
                    float beta, float *C, int ldc) {
    const int Mp = (M + PAD - 1) / PAD * PAD, Kp = (K + PAD - 1) / PAD * PAD;
    const int ldc_run = Mp == M ? ldc : N; /* the C oneDNN writes: C itself, or the scratch */
    fr_dnnl_entry *e = shape_find(ta, tb, Mp, N, Kp, ldc_run, alpha, beta);
    if (!e->prim && !e->failed) {
        e->prim = create_prim(ta, tb, Mp, N, Kp, ldc_run, alpha, beta, 0, NULL, 0);
        e->failed = !e->prim;
    }
    return padded_onednn_gemm(e->prim, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
#endif

int fr_cpu_gemm_bf16(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
                     float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return 0;
    if (K <= 0 || alpha == 0.0f) { /* nothing to round: the FP32 GEMM scales C */
        fr_cpu_gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return 0;
    }
    pthread_mutex_lock(&g_lock); /* one lock per product: the path is chosen under it too */
    pthread_once(&g_path_once, choose_path);
    int rc;
#ifdef FR_HAVE_DNNL
    if (g_path == PATH_ONEDNN) rc = dispatch(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    else
#endif
        rc = emulated_gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    pthread_mutex_unlock(&g_lock);
    return rc;
}

/* public (frugal.h) */
const char *fr_bf16_gemm_path(void) { return fr_cpu_bf16_gemm_path(); }
int fr_bf16_hardware(void) { return fr_cpu_bf16_gemm_hardware(); }
