/*
 * ops_cpu_gemm.c — FP32 SGEMM for the CPU backend.
 *
 * Classic packed GEMM (Goto / BLIS structure):
 *   for jc in N by NC:                      B block  KC x NC  (L3)
 *     for pc in K by KC:                    packed cooperatively by all threads
 *       for (ic, n-chunk) work items:       A block  MC x KC  (L2), packed per thread
 *         for jr in chunk by NR:            B micro-panel KC x NR (L1)
 *           for ir in MC by MR:             micro-kernel: MR x NR tile of C in registers
 * All four transpose combinations are absorbed by the packing routines, so the
 * micro-kernels see one layout: A panels [kc][MR], B panels [kc][NR], zero padded.
 *
 * Micro-kernels: AVX-512F 14x32, AVX2+FMA 6x16, portable C 4x16; picked at run time.
 *
 * Determinism: K is never split across threads, KC is fixed per instruction set and tile
 * boundaries are multiples of MR / NR counted from 0, so every element of C is computed
 * by the same sequence of operations whatever the number of threads.
 */
#include "core/internal.h"
#include "cpu/ops_cpu.h"
#include "model/ops.h"

#include <immintrin.h>
#include <omp.h>
#ifdef FR_HAVE_DNNL
#include <dnnl.h>
#endif
#include <stdlib.h>
#include <string.h>

typedef void (*ukr_fn)(int kc, const float *A, const float *B, float *C, size_t ldc, float alpha,
                       float beta);

typedef struct {
    int mr, nr, mc, kc, nc;
    ukr_fn ukr;
} gemm_cfg;

/* ------------------------------------------------------------------ micro-kernels
 * C[MR x NR] (row stride ldc) = alpha * sum_p A[p*MR + i] * B[p*NR + j] + beta * C;
 * beta == 0: C is not read. A and B are packed panels, B 64-byte aligned. */

#define G_MR 4
#define G_NR 16
static void ukr_generic(int kc, const float *A, const float *B, float *C, size_t ldc, float alpha,
                        float beta) {
    float acc[G_MR][G_NR];
    memset(acc, 0, sizeof acc);
    for (int p = 0; p < kc; p++) {
        const float *a = A + p * G_MR, *b = B + p * G_NR;
        for (int i = 0; i < G_MR; i++)
            for (int j = 0; j < G_NR; j++) acc[i][j] += a[i] * b[j];
    }
    for (int i = 0; i < G_MR; i++) {
        float *c = C + i * ldc;
        if (beta == 0.f)
            for (int j = 0; j < G_NR; j++) c[j] = alpha * acc[i][j];
        else
            for (int j = 0; j < G_NR; j++) c[j] = alpha * acc[i][j] + beta * c[j];
    }
}

#define T_AVX2 __attribute__((target("avx2,fma")))

/* 6 x 16: 12 accumulators + 2 B vectors + 1 broadcast = 15 of 16 ymm registers. */
T_AVX2 static void ukr_avx2_6x16(int kc, const float *A, const float *B, float *C, size_t ldc,
                                 float alpha, float beta) {
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
    __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    for (int p = 0; p < kc; p++) {
        __m256 b0 = _mm256_load_ps(B), b1 = _mm256_load_ps(B + 8);
        __m256 a;
        a = _mm256_broadcast_ss(A + 0);
        c00 = _mm256_fmadd_ps(a, b0, c00);
        c01 = _mm256_fmadd_ps(a, b1, c01);
        a = _mm256_broadcast_ss(A + 1);
        c10 = _mm256_fmadd_ps(a, b0, c10);
        c11 = _mm256_fmadd_ps(a, b1, c11);
        a = _mm256_broadcast_ss(A + 2);
        c20 = _mm256_fmadd_ps(a, b0, c20);
        c21 = _mm256_fmadd_ps(a, b1, c21);
        a = _mm256_broadcast_ss(A + 3);
        c30 = _mm256_fmadd_ps(a, b0, c30);
        c31 = _mm256_fmadd_ps(a, b1, c31);
        a = _mm256_broadcast_ss(A + 4);
        c40 = _mm256_fmadd_ps(a, b0, c40);
        c41 = _mm256_fmadd_ps(a, b1, c41);
        a = _mm256_broadcast_ss(A + 5);
        c50 = _mm256_fmadd_ps(a, b0, c50);
        c51 = _mm256_fmadd_ps(a, b1, c51);
        A += 6;
        B += 16;
    }
    __m256 al = _mm256_set1_ps(alpha);
#define ST2(r, x0, x1)                                                                              \
    do {                                                                                            \
        float *c = C + (size_t)(r) * ldc;                                                           \
        if (beta == 0.f) {                                                                          \
            _mm256_storeu_ps(c, _mm256_mul_ps(al, x0));                                             \
            _mm256_storeu_ps(c + 8, _mm256_mul_ps(al, x1));                                         \
        } else {                                                                                    \
            __m256 be = _mm256_set1_ps(beta);                                                       \
            _mm256_storeu_ps(c, _mm256_fmadd_ps(be, _mm256_loadu_ps(c), _mm256_mul_ps(al, x0)));    \
            _mm256_storeu_ps(c + 8, _mm256_fmadd_ps(be, _mm256_loadu_ps(c + 8), _mm256_mul_ps(al, x1))); \
        }                                                                                           \
    } while (0)
    ST2(0, c00, c01);
    ST2(1, c10, c11);
    ST2(2, c20, c21);
    ST2(3, c30, c31);
    ST2(4, c40, c41);
    ST2(5, c50, c51);
#undef ST2
}

#define T_AVX512 __attribute__((target("avx512f,avx2,fma")))

/* 14 x 32: 28 accumulators + 2 B vectors + 1 broadcast = 31 of 32 zmm registers. */
T_AVX512 static void ukr_avx512_14x32(int kc, const float *A, const float *B, float *C, size_t ldc,
                                      float alpha, float beta) {
    __m512 z = _mm512_setzero_ps();
    __m512 c0a = z, c0b = z, c1a = z, c1b = z, c2a = z, c2b = z, c3a = z, c3b = z, c4a = z, c4b = z;
    __m512 c5a = z, c5b = z, c6a = z, c6b = z, c7a = z, c7b = z, c8a = z, c8b = z, c9a = z, c9b = z;
    __m512 cAa = z, cAb = z, cBa = z, cBb = z, cCa = z, cCb = z, cDa = z, cDb = z;
    for (int p = 0; p < kc; p++) {
        __m512 b0 = _mm512_load_ps(B), b1 = _mm512_load_ps(B + 16);
        __m512 a;
#define ROW(i, x0, x1)                         \
    a = _mm512_set1_ps(A[i]);                  \
    x0 = _mm512_fmadd_ps(a, b0, x0);           \
    x1 = _mm512_fmadd_ps(a, b1, x1);
        ROW(0, c0a, c0b) ROW(1, c1a, c1b) ROW(2, c2a, c2b) ROW(3, c3a, c3b) ROW(4, c4a, c4b)
        ROW(5, c5a, c5b) ROW(6, c6a, c6b) ROW(7, c7a, c7b) ROW(8, c8a, c8b) ROW(9, c9a, c9b)
        ROW(10, cAa, cAb) ROW(11, cBa, cBb) ROW(12, cCa, cCb) ROW(13, cDa, cDb)
#undef ROW
        A += 14;
        B += 32;
    }
    __m512 al = _mm512_set1_ps(alpha), be = _mm512_set1_ps(beta);
#define ST(r, x0, x1)                                                                                \
    do {                                                                                             \
        float *c = C + (size_t)(r) * ldc;                                                            \
        if (beta == 0.f) {                                                                           \
            _mm512_storeu_ps(c, _mm512_mul_ps(al, x0));                                              \
            _mm512_storeu_ps(c + 16, _mm512_mul_ps(al, x1));                                         \
        } else {                                                                                     \
            _mm512_storeu_ps(c, _mm512_fmadd_ps(be, _mm512_loadu_ps(c), _mm512_mul_ps(al, x0)));     \
            _mm512_storeu_ps(c + 16, _mm512_fmadd_ps(be, _mm512_loadu_ps(c + 16), _mm512_mul_ps(al, x1))); \
        }                                                                                            \
    } while (0)
    ST(0, c0a, c0b); ST(1, c1a, c1b); ST(2, c2a, c2b); ST(3, c3a, c3b); ST(4, c4a, c4b);
    ST(5, c5a, c5b); ST(6, c6a, c6b); ST(7, c7a, c7b); ST(8, c8a, c8b); ST(9, c9a, c9b);
    ST(10, cAa, cAb); ST(11, cBa, cBb); ST(12, cCa, cCb); ST(13, cDa, cDb);
#undef ST
}

static const gemm_cfg cfg_generic = {G_MR, G_NR, 128, 256, 2048, ukr_generic};
static const gemm_cfg cfg_avx2 = {6, 16, 144, 256, 4096, ukr_avx2_6x16};
static const gemm_cfg cfg_avx512 = {14, 32, 168, 256, 3072, ukr_avx512_14x32};

static const gemm_cfg *cfg_for(int isa) {
    return isa == FR_ISA_AVX512 ? &cfg_avx512 : isa == FR_ISA_AVX2 ? &cfg_avx2 : &cfg_generic;
}

/* ------------------------------------------------------------------ packing */

/* op(A)[i0 : i0+mc, p0 : p0+kc] -> panels of MR rows, each [kc][MR], zero padded. */
static void pack_A(float *dst, const float *A, int lda, int transA, int i0, int mc, int p0, int kc,
                   int mr) {
    for (int ir = 0; ir < mc; ir += mr) {
        int m = mc - ir < mr ? mc - ir : mr;
        float *d = dst + (size_t)ir * kc;
        if (!transA) {
            const float *rows[32];
            for (int i = 0; i < m; i++) rows[i] = A + (size_t)(i0 + ir + i) * lda + p0;
            if (m == mr) {
                for (int p = 0; p < kc; p++)
                    for (int i = 0; i < mr; i++) d[p * mr + i] = rows[i][p];
            } else {
                for (int p = 0; p < kc; p++) {
                    for (int i = 0; i < m; i++) d[p * mr + i] = rows[i][p];
                    for (int i = m; i < mr; i++) d[p * mr + i] = 0.f;
                }
            }
        } else {
            for (int p = 0; p < kc; p++) {
                const float *s = A + (size_t)(p0 + p) * lda + i0 + ir;
                for (int i = 0; i < m; i++) d[p * mr + i] = s[i];
                for (int i = m; i < mr; i++) d[p * mr + i] = 0.f;
            }
        }
    }
}

/* One NR-wide panel of op(B)[p0 : p0+kc, j : j+n] -> [kc][NR], zero padded. */
static void pack_B_panel(float *d, const float *B, int ldb, int transB, int p0, int kc, int j, int n,
                         int nr) {
    if (!transB) {
        for (int p = 0; p < kc; p++) {
            const float *s = B + (size_t)(p0 + p) * ldb + j;
            float *dp = d + (size_t)p * nr;
            if (n == nr)
                memcpy(dp, s, (size_t)nr * sizeof(float));
            else {
                for (int t = 0; t < n; t++) dp[t] = s[t];
                for (int t = n; t < nr; t++) dp[t] = 0.f;
            }
        }
    } else {
        for (int t = 0; t < n; t++) {
            const float *s = B + (size_t)(j + t) * ldb + p0;
            for (int p = 0; p < kc; p++) d[(size_t)p * nr + t] = s[p];
        }
        for (int t = n; t < nr; t++)
            for (int p = 0; p < kc; p++) d[(size_t)p * nr + t] = 0.f;
    }
}

/* ------------------------------------------------------------------ driver */

static void scale_C(int M, int N, float beta, float *C, int ldc) {
    for (int i = 0; i < M; i++) {
        float *c = C + (size_t)i * ldc;
        if (beta == 0.f)
            memset(c, 0, (size_t)N * sizeof(float));
        else if (beta != 1.f)
            for (int j = 0; j < N; j++) c[j] *= beta;
    }
}

static int gcd(int a, int b) {
    while (b) {
        int t = a % b;
        a = b;
        b = t;
    }
    return a;
}

static int threads_for(double flops) {
    if (omp_in_parallel()) return 1; /* called from an op's own parallel loop (attention tiles) */
    int nth = omp_get_max_threads();
    if (flops < 4e6) return 1;
    if (nth > 1 && flops / nth < 1e6) nth = (int)(flops / 1e6) > 1 ? (int)(flops / 1e6) : 1;
    return nth;
}

/* y[0:n] = alpha * acc[0:n] + beta * y  (beta == 0: y not read), y with stride incy */
static void store_vec(float *y, size_t incy, const float *acc, int n, float alpha, float beta) {
    for (int j = 0; j < n; j++) {
        float *c = y + (size_t)j * incy;
        *c = beta == 0.f ? alpha * acc[j] : alpha * acc[j] + beta * *c;
    }
}

/* Matrix-vector products (M == 1 or N == 1): no packing, memory-bound.
 * y[j] (stride incy), j < n:  y = alpha * Mat x + beta * y, where Mat is either
 * rows (row j at Mat + j*ld, length len: "dot" form) or columns (element (j,p) at
 * Mat[p*ld + j]: "axpy" form). x is contiguous, len long. Threads own chunks of y. */
static void gemv(int dot_form, int n, int len, float alpha, const float *Mat, int ld, const float *x,
                 float beta, float *y, size_t incy) {
    const fr_cpu_vec *v = fr_cpu_vec_ops();
    int nth = threads_for(2.0 * n * len);
    if (nth > n / 16) nth = n / 16 > 1 ? n / 16 : 1;
    FR_OMP_REGION_IF(nth > 1, "omp parallel num_threads(nth) if (nth > 1)",
        {
            const int t = fr_t, nt = fr_T;
            int j0 = (int)((long)n * t / nt), j1 = (int)((long)n * (t + 1) / nt);
            float acc[256];
            for (int j = j0; j < j1; j += 256) {
                int m = j1 - j < 256 ? j1 - j : 256;
                if (dot_form) {
                    v->dots(acc, x, Mat + (size_t)j * ld, (size_t)ld, m, len, 1.f);
                } else {
                    memset(acc, 0, sizeof(float) * (size_t)m);
                    v->axpys(acc, x, Mat + j, (size_t)ld, len, m);
                }
                store_vec(y + (size_t)j * incy, incy, acc, m, alpha, beta);
            }
        }
    );
}

/* -1: not yet decided (FRUGAL_GEMM read on first use) */
static int g_onednn = -1;

void fr_cpu_gemm_set_onednn(int on) {
#ifdef FR_HAVE_DNNL
    if (on < 0) {
        const char *env = getenv("FRUGAL_GEMM");
        on = !(env && !strcmp(env, "frugal"));
    }
    g_onednn = on ? 1 : 0;
#else
    (void)on;
    g_onednn = 0;
#endif
}

int fr_cpu_gemm_uses_onednn(void) {
    if (g_onednn < 0) fr_cpu_gemm_set_onednn(-1);
    return g_onednn;
}

void fr_cpu_gemm(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
                 const float *B, int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0 || alpha == 0.f) {
        scale_C(M, N, beta, C, ldc);
        return;
    }
#ifdef FR_HAVE_DNNL
    if (M > 1 && N > 1 && fr_cpu_gemm_uses_onednn()) {
        /* row-major, same argument meaning; a non-success status (bad arguments only) falls
         * through to our kernels */
        if (dnnl_sgemm(transA ? 'T' : 'N', transB ? 'T' : 'N', M, N, K, alpha, A, lda, B, ldb, beta, C, ldc) ==
            dnnl_success)
            return;
    }
#endif
    if (M == 1 || N == 1) {
        /* x: the vector operand (row 0 of op(A) or column 0 of op(B)), made contiguous. */
        int row = M == 1;
        const float *x;
        float *xbuf = NULL;
        int xstride = row ? (transA ? lda : 1) : (transB ? 1 : ldb);
        const float *xsrc = row ? A : B;
        if (xstride == 1) {
            x = xsrc;
        } else {
            xbuf = malloc((size_t)K * sizeof(float));
            if (!xbuf) goto blocked;
            for (int p = 0; p < K; p++) xbuf[p] = xsrc[(size_t)p * xstride];
            x = xbuf;
        }
        if (row) /* C[0, j] = op(B)[:, j] . x :  op(B) = B^T -> rows of B; else columns of B */
            gemv(transB, N, K, alpha, B, ldb, x, beta, C, 1);
        else     /* C[i, 0] = op(A)[i, :] . x :  op(A) = A -> rows of A; else columns */
            gemv(!transA, M, K, alpha, A, lda, x, beta, C, (size_t)ldc);
        free(xbuf);
        return;
    }
blocked:;
    const gemm_cfg cfg = *cfg_for(fr_cpu_isa());
    const int MR = cfg.mr, NR = cfg.nr;

    int nth = threads_for(2.0 * M * N * K);

    /* MC: balanced blocks of at most cfg.mc rows, multiples of MR. */
    int mb = (M + cfg.mc - 1) / cfg.mc;
    int mc = (M + mb - 1) / mb;
    mc = (mc + MR - 1) / MR * MR;
    mb = (M + mc - 1) / mc;
    /* Split N into chunks so that mb * nchunks is a multiple of the thread count. */
    int nchunks = nth > 1 ? nth / gcd(mb, nth) : 1;

    int nc_max = N < cfg.nc ? N : cfg.nc;
    int nc_pad = (nc_max + NR - 1) / NR * NR;
    int kc_max = K < cfg.kc ? K : cfg.kc;

    float *Bp = aligned_alloc(64, ((size_t)kc_max * nc_pad * sizeof(float) + 63) / 64 * 64);
    size_t ap_floats = ((size_t)mc * kc_max + 15) / 16 * 16;
    float *Ap = aligned_alloc(64, (size_t)nth * ap_floats * sizeof(float));
    if (!Bp || !Ap) { /* out of memory: a slow but correct fallback */
        free(Bp);
        free(Ap);
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) {
                float s = 0.f;
                for (int p = 0; p < K; p++)
                    s += (transA ? A[(size_t)p * lda + i] : A[(size_t)i * lda + p]) *
                         (transB ? B[(size_t)j * ldb + p] : B[(size_t)p * ldb + j]);
                float *c = C + (size_t)i * ldc + j;
                *c = beta == 0.f ? alpha * s : alpha * s + beta * *c;
            }
        return;
    }

#pragma omp parallel num_threads(nth) if (nth > 1)
    {
        int tid = omp_get_thread_num();
        float *myAp = Ap + (size_t)tid * ap_floats;
        float tmp[14 * 32] __attribute__((aligned(64)));
        for (int jc = 0; jc < N; jc += cfg.nc) {
            int nc = N - jc < cfg.nc ? N - jc : cfg.nc;
            int npanels = (nc + NR - 1) / NR;
            int nch = nchunks < npanels ? nchunks : npanels;
            for (int pc = 0; pc < K; pc += cfg.kc) {
                int kc = K - pc < cfg.kc ? K - pc : cfg.kc;
                float beta_eff = pc == 0 ? beta : 1.f;
#pragma omp for schedule(static)
                for (int jp = 0; jp < npanels; jp++) {
                    int n = nc - jp * NR < NR ? nc - jp * NR : NR;
                    pack_B_panel(Bp + (size_t)jp * NR * kc, B, ldb, transB, pc, kc, jc + jp * NR, n, NR);
                }
                int last_ib = -1;
                int nitems = mb * nch;
#pragma omp for schedule(static)
                for (int it = 0; it < nitems; it++) {
                    int ib = it / nch, ch = it % nch;
                    int i0 = ib * mc;
                    int m_blk = M - i0 < mc ? M - i0 : mc;
                    if (ib != last_ib) {
                        pack_A(myAp, A, lda, transA, i0, m_blk, pc, kc, MR);
                        last_ib = ib;
                    }
                    int jp0 = (int)((long)npanels * ch / nch), jp1 = (int)((long)npanels * (ch + 1) / nch);
                    for (int jp = jp0; jp < jp1; jp++) {
                        int j = jc + jp * NR;
                        int n = nc - jp * NR < NR ? nc - jp * NR : NR;
                        const float *bp = Bp + (size_t)jp * NR * kc;
                        for (int ir = 0; ir < m_blk; ir += MR) {
                            int m = m_blk - ir < MR ? m_blk - ir : MR;
                            const float *ap = myAp + (size_t)ir * kc;
                            float *c = C + (size_t)(i0 + ir) * ldc + j;
                            if (m == MR && n == NR) {
                                cfg.ukr(kc, ap, bp, c, (size_t)ldc, alpha, beta_eff);
                            } else {
                                cfg.ukr(kc, ap, bp, tmp, (size_t)NR, alpha, 0.f);
                                for (int i = 0; i < m; i++)
                                    for (int t = 0; t < n; t++) {
                                        float *ci = c + (size_t)i * ldc + t;
                                        *ci = beta_eff == 0.f ? tmp[i * NR + t] : tmp[i * NR + t] + beta_eff * *ci;
                                    }
                            }
                        }
                    }
                }
            }
        }
    }
    free(Bp);
    free(Ap);
}

/* ------------------------------------------------------------------ grouped
 * The products of a group run one per thread at a time inside a single parallel region
 * (each single-threaded: our kernels see omp_in_parallel(), oneDNN likewise), largest first
 * so the last ones to start are the short ones. A small expert GEMM split over all threads
 * pays a fork, a join and thin partitions; a group pays one region. Each product's result
 * depends only on its own shape, not on the thread that ran it. */
void fr_cpu_gemm_grouped(int transA, int transB, float alpha, float beta, const fr_gemm_desc *g, int n) {
    if (n <= 0) return;
    int *order = malloc((size_t)n * sizeof *order);
    double flops = 0;
    for (int i = 0; i < n; i++) flops += 2.0 * g[i].M * g[i].N * g[i].K;
    if (!order || n == 1 || flops < 4e6) { /* too small to share out (or no memory for the order) */
        for (int i = 0; i < n; i++)
            fr_cpu_gemm(transA, transB, g[i].M, g[i].N, g[i].K, alpha, g[i].A, g[i].lda, g[i].B, g[i].ldb, beta,
                        g[i].C, g[i].ldc);
        free(order);
        return;
    }
    for (int i = 0; i < n; i++) order[i] = i;
    for (int i = 1; i < n; i++) { /* insertion sort by work, largest first (n is the expert count) */
        const int k = order[i];
        const double wk = (double)g[k].M * g[k].N * g[k].K;
        int j = i - 1;
        while (j >= 0 && (double)g[order[j]].M * g[order[j]].N * g[order[j]].K < wk) {
            order[j + 1] = order[j];
            j--;
        }
        order[j + 1] = k;
    }
#pragma omp parallel for schedule(dynamic, 1)
    for (int i = 0; i < n; i++) {
        const fr_gemm_desc *d = &g[order[i]];
        fr_cpu_gemm(transA, transB, d->M, d->N, d->K, alpha, d->A, d->lda, d->B, d->ldb, beta, d->C, d->ldc);
    }
    free(order);
}
