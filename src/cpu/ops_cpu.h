/*
 * ops_cpu.h — private interface between the CPU backend's source files (isa.c, ops_cpu.c,
 * ops_cpu_gemm.c, ops_cpu_simd.c, qmatmul.c) and its tests. Not installed, not used by the model.
 *
 * Instruction-set selection (isa.c, the only owner: the kernels read it, it calls none of
 * them): at first use the backend picks the best kernels the CPU
 * supports (AVX-512F > AVX2+FMA > generic C). The environment variable FRUGAL_CPU
 * ("generic", "avx2", "avx512") caps the choice, e.g. FRUGAL_CPU=generic forces the
 * portable kernels. Tests may switch explicitly with fr_cpu_set_isa().
 */
#ifndef FR_OPS_CPU_H
#define FR_OPS_CPU_H

#include <stddef.h>
#include <stdint.h>

enum { FR_ISA_GENERIC = 0, FR_ISA_AVX2 = 1, FR_ISA_AVX512 = 2 };

/* 1 if this CPU (and OS) can run the kernels of `isa`. */
int fr_cpu_isa_supported(int isa);
/* The instruction set the kernels use now (initialises on first call). */
int fr_cpu_isa(void);
/* Select the kernels of `isa` (clamped to the best supported); -1 = automatic choice
 * (FRUGAL_CPU, then the best supported). Not thread-safe against running ops: for tests
 * and start-up only. Returns the isa now in use. */
int fr_cpu_set_isa(int isa);
const char *fr_cpu_isa_name(int isa);

/* SIMD helpers used by the non-GEMM ops. Every function reduces in a fixed order that
 * depends only on n / d (never on threads), so results are reproducible. */
typedef struct {
    /* out[j] = scale * dot(q, K + j*ks, d) for j < rows */
    void (*dots)(float *out, const float *q, const float *K, size_t ks, int rows, int d, float scale);
    /* acc[0:d] += sum_j p[j] * V[j*vs + 0:d]  (rows accumulated in order j = 0, 1, ...) */
    void (*axpys)(float *acc, const float *p, const float *V, size_t vs, int rows, int d);
    /* dots for nh queries (rows q + h*qs) against the same K, into out + h*os: the bits of nh
     * dots calls. MLA's heads all read one cached latent per key, so a kernel may load each key
     * once for several heads (4x less traffic from L2, twice the speed on AVX-512). */
    void (*dots_heads)(float *out, size_t os, const float *q, size_t qs, int nh, const float *K, size_t ks, int rows,
                       int d, float scale);
    /* axpys for nh accumulators (acc + h*as) with weights p + h*ps over the same V: the bits of
     * nh axpys calls */
    void (*axpys_heads)(float *acc, size_t as, const float *p, size_t ps, int nh, const float *V, size_t vs, int rows,
                        int d);
    /* Y[j*ys + 0:d] += c[j] * x[0:d] for j < rows */
    void (*rank1s)(float *Y, size_t ys, const float *c, const float *x, int rows, int d);
    /* dot product of n floats */
    float (*dot)(const float *a, const float *b, int n);
    /* max of x[0:n] (n >= 1) */
    float (*max)(const float *x, int n);
    /* returns sum_i exp(x[i] - m); if y != NULL also y[i] = exp(x[i] - m) (y may alias x) */
    float (*expsum)(float *y, const float *x, int n, float m);
    /* h[i] = g[i] sigmoid(g[i]) u[i] for i < n (SwiGLU; h may alias g or u); the SIMD
     * versions use their vector exp (1-2 ulp), and the last n % width values the scalar
     * formula, so a value depends only on its position, never on threads */
    void (*swiglu)(float *h, const float *g, const float *u, int n);
    /* SwiGLU backward for i < n: s = sigmoid(g), dg = dh u s (1 + g (1 - s)), du = dh g s
     * (the same sigmoid as swiglu; position-only dependence likewise) */
    void (*swiglu_backward)(float *dg, float *du, const float *dh, const float *g, const float *u, int n);
} fr_cpu_vec;

const fr_cpu_vec *fr_cpu_vec_ops(void);

/* fr_ops.fp8_quantize of the CPU backend (fp8_recipe.c). */
long fr_cpu_fp8_quantize(float *y, int ldy, float *scales, const float *x, int ldx, int rows, int cols, int tile_rows,
                         int tile_cols);

/* y[M, N] = x[M, K] W[N, K]^T, dense: the inference engine's products by FP32 weight rows
 * (fr_qmatmul, the router). A prompt's (16-1024 rows, 2^19 multiply-adds or more) go through
 * oneDNN's matmul primitive when oneDNN is the GEMM (onednn_f32.c), the rest to fr_cpu_gemm. */
void fr_cpu_linear_f32(float *y, const float *x, const float *W, int M, int N, int K);

/* fr_ops.gemm_bf16 of the CPU backend (bf16_gemm.c); the path it runs ("onednn
 * brg:avx512_core_amx", "onednn brg:avx512_core_bf16", "emulated (...)"), and whether that
 * path is BF16 hardware (AMX or AVX512-BF16) rather than a conversion to FP32. */
int fr_cpu_gemm_bf16(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
                     const float *B, int ldb, float beta, float *C, int ldc);
const char *fr_cpu_bf16_gemm_path(void);
int fr_cpu_bf16_gemm_hardware(void);
/* One row to BF16 with the kernels of fr_cpu_isa(): codes, or their values in FP32; bit for
 * bit fr_bf16_encode (formats/numfmt.h) on every input, NaN and subnormals included. */
void fr_cpu_bf16_pack_row(uint16_t *dst, const float *src, int n);
void fr_cpu_bf16_round_row(float *dst, const float *src, int n);
/* Tests and benchmarks: run "onednn" or "emulated" from now on (NULL: the default choice).
 * Returns 0 when the path asked for is not available here (no oneDNN, or no BF16 matmul in
 * it for this CPU); the emulation is then set. */
int fr_cpu_bf16_gemm_set_path(const char *name);

/* fr_ops.gemm_grouped of the CPU backend (ops_cpu_gemm.c). */
struct fr_gemm_desc;
void fr_cpu_gemm_grouped(int transA, int transB, float alpha, float beta, const struct fr_gemm_desc *g, int n);

/* The GEMM of the backend (ops_cpu_gemm.c), same contract as fr_ops.gemm. */
void fr_cpu_gemm(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
                 const float *B, int ldb, float beta, float *C, int ldc);

/* Which SGEMM runs matrix-matrix products (M, N > 1): oneDNN's dnnl_sgemm when the library
 * was built with it (FR_HAVE_DNNL) and FRUGAL_GEMM is not "frugal", else our own kernels.
 * fr_cpu_gemm_set_onednn(1 / 0 / -1 = from the environment) switches at start-up (tests,
 * benchmarks); it is a no-op without oneDNN. */
int fr_cpu_gemm_uses_onednn(void);
void fr_cpu_gemm_set_onednn(int on);

/* The CPU backend behind device-like memory (ops_cpu_guard.c): backend memory is unreadable
 * from the host except inside its ops and copies, so host code that touches it faults. For
 * tests of the device path; the numbers are the CPU backend's. */
struct fr_ops;
const struct fr_ops *fr_ops_cpu_guarded(void);

#endif
