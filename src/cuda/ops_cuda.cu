/*
 * ops_cuda.cu — the CUDA backend: the fr_ops table (model/ops.h) on an NVIDIA GPU.
 *
 * Memory is device memory (cudaMalloc); every kernel and cuBLAS call goes to one stream and
 * nothing synchronizes except to_host / to_device (the host reads or frees its buffer right
 * after) and moe_permute (its offsets are a host array). GEMMs are cuBLAS: FP32 (TF32 tensor
 * cores when FRUGAL_CUDA_TF32=1) and, for gemm_bf16, operands rounded to BF16 by
 * kernels_basic.cuh's fr_k_to_bf16 (round to nearest even, as the CPU backend) and multiplied
 * by cublasGemmEx with FP32 accumulation. The other kernels are the bodies of kernels_*.cuh
 * under one-dimensional grid-stride launches. A failure is remembered (fr_cuda_note_error) and
 * reported by fr_cuda_status: the ops interface has no error returns.
 *
 * This file and its kernels build libfrugal_cuda.so, which libfrugal loads only when a model is
 * put on the GPU (cuda_loader.c): CUDA's runtime and cuBLAS cost every command ~0.1 s and
 * ~200 MB just to be mapped. Its three entry points are the fr_cuda_backend_* below.
 */
#include "cuda/cuda_internal.h"
#include "cuda/kernels_basic.cuh"
#include "cuda/kernels_optim.cuh"

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- state */

static cudaStream_t g_stream;
static cublasHandle_t g_cublas;
static char g_error[256];
static int g_failed;
static unsigned int *g_bad; /* device counter of fp8_quantize's non-finite inputs */

extern "C" void *fr_cuda_stream(void) { return (void *)g_stream; }

extern "C" int fr_cuda_blocks(size_t n) {
    const size_t b = (n + FR_CUDA_THREADS - 1) / FR_CUDA_THREADS;
    return (int)(b < 1 ? 1 : b > 65535 * 8 ? 65535 * 8 : b);
}

static void fail(const char *what, const char *why) {
    if (g_failed) return;
    g_failed = 1;
    snprintf(g_error, sizeof g_error, "%s: %s", what, why);
}

extern "C" void fr_cuda_fail(const char *what, const char *why) { fail(what, why); }

extern "C" void fr_cuda_note_error(const char *what) {
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) fail(what, cudaGetErrorString(e));
}

extern "C" __attribute__((visibility("default"))) int fr_cuda_backend_status(char *why, size_t n) {
    const cudaError_t e = cudaStreamSynchronize(g_stream);
    if (e != cudaSuccess) fail("the stream", cudaGetErrorString(e));
    const int failed = g_failed;
    if (failed && why && n) snprintf(why, n, "%s", g_error);
    g_failed = 0;
    return failed;
}

extern "C" __attribute__((visibility("default"))) size_t fr_cuda_backend_memory_used(void) {
    size_t free_b = 0, total_b = 0;
    if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return total_b - free_b;
}

static void cublas_check(cublasStatus_t s, const char *what) {
    if (s != CUBLAS_STATUS_SUCCESS) fail(what, cublasGetStatusString(s));
}

/* ---------------------------------------------------------------- launches */

/* One thread per item of [0, n), grid-stride: LAUNCH(kernel_name, n, args...) */
#define FOR_EACH(i, n) for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (size_t)gridDim.x * blockDim.x)
#define LAUNCH(what, kernel, n, ...)                                                                    \
    do {                                                                                                \
        if ((n) > 0) kernel<<<fr_cuda_blocks(n), FR_CUDA_THREADS, 0, g_stream>>>((size_t)(n), __VA_ARGS__); \
        fr_cuda_note_error(what);                                                                       \
    } while (0)

__global__ void k_embedding_forward(size_t n, float *out, const float *table, const int *tokens, int D) {
    FOR_EACH(i, n) fr_k_embedding_forward(i, out, table, tokens, D);
}
__global__ void k_embedding_backward(size_t n, float *dtable, const float *dout, const int *tokens, int D) {
    FOR_EACH(i, n) fr_k_embedding_backward(i, dtable, dout, tokens, D);
}
__global__ void k_rmsnorm_forward(size_t n, float *y, float *rstd, const float *x, int ldx, const float *w, int D,
                                  float eps) {
    FOR_EACH(i, n) fr_k_rmsnorm_forward_row((int)i, y, rstd, x, ldx, w, D, eps);
}
__global__ void k_rmsnorm_backward_dx(size_t n, float *dx, int lddx, const float *dy, const float *x, int ldx,
                                      const float *w, const float *rstd, int D) {
    FOR_EACH(i, n) fr_k_rmsnorm_backward_dx_row((int)i, dx, lddx, dy, x, ldx, w, rstd, D);
}
__global__ void k_rmsnorm_backward_dw(size_t n, float *dw, const float *dy, const float *x, int ldx, const float *rstd,
                                      int N, int D) {
    FOR_EACH(i, n) fr_k_rmsnorm_backward_dw_col((int)i, dw, dy, x, ldx, rstd, N, D);
}
__global__ void k_rope(size_t n, float *x, int n_heads, int row_stride, int head_stride, int offset, int rope_dim,
                       const int *pos, const float *cos_table, const float *sin_table, int interleave, float sign) {
    FOR_EACH(i, n)
    fr_k_rope(i, x, n_heads, row_stride, head_stride, offset, rope_dim, pos, cos_table, sin_table, interleave, sign);
}
__global__ void k_mla_split_forward(size_t n, float *k, float *v, const float *kv, const float *k_pe, int ld_kpe, int H,
                                    int nope, int rope, int vd) {
    FOR_EACH(i, n) fr_k_mla_kv_split_forward(i, k, v, kv, k_pe, ld_kpe, H, nope, rope, vd);
}
__global__ void k_mla_split_backward_dkv(size_t n, float *dkv, const float *dk, const float *dv, int nope, int rope,
                                         int vd) {
    FOR_EACH(i, n) fr_k_mla_kv_split_backward_dkv(i, dkv, dk, dv, nope, rope, vd);
}
__global__ void k_mla_split_backward_dpe(size_t n, float *dk_pe, int ld_kpe, const float *dk, int H, int nope, int rope) {
    FOR_EACH(i, n) fr_k_mla_kv_split_backward_dpe(i, dk_pe, ld_kpe, dk, H, nope, rope);
}
__global__ void k_swiglu_forward(size_t n, float *h, const float *g, const float *u) {
    FOR_EACH(i, n) fr_k_swiglu_forward(i, h, g, u);
}
__global__ void k_swiglu_backward(size_t n, float *dg, float *du, const float *dh, const float *g, const float *u) {
    FOR_EACH(i, n) fr_k_swiglu_backward(i, dg, du, dh, g, u);
}
__global__ void k_add(size_t n, float *y, const float *a, const float *b) { FOR_EACH(i, n) fr_k_add(i, y, a, b); }
__global__ void k_axpy(size_t n, float *y, float alpha, const float *x) { FOR_EACH(i, n) fr_k_axpy(i, y, alpha, x); }
__global__ void k_cross_entropy(size_t n, float *losses, float *dlogits, const float *logits, const int *targets, int V,
                                float grad_scale) {
    FOR_EACH(i, n) fr_k_cross_entropy_row((int)i, losses, dlogits, logits, targets, V, grad_scale);
}
__global__ void k_to_bf16(size_t n, uint16_t *dst, const float *src, int ld, int cols) {
    FOR_EACH(i, n) fr_k_to_bf16(i, dst, src, ld, cols);
}
__global__ void k_fp8_quantize(size_t n, float *y, int ldy, float *scales, const float *x, int ldx, int rows, int cols,
                               int tile_rows, int tile_cols, unsigned int *bad) {
    FOR_EACH(t, n) fr_k_fp8_quantize_tile(t, y, ldy, scales, x, ldx, rows, cols, tile_rows, tile_cols, bad);
}

__global__ void k_adamw(size_t n, float *p, const float *g, void *mom, void *var, int bf16, fr_adamw_step_consts k) {
    FOR_EACH(i, n) fr_k_adamw(i, p, g, mom, var, bf16, &k);
}
__global__ void k_sumsq(size_t n, double *partial, const float *x, size_t len, size_t chunk) {
    FOR_EACH(c, n) fr_k_sumsq_chunk(c, partial, x, len, chunk);
}

/* ---------------------------------------------------------------- memory */

static void *cu_alloc(size_t bytes) {
    void *p = NULL;
    if (cudaMalloc(&p, bytes ? bytes : 1) != cudaSuccess) {
        cudaGetLastError(); /* an allocation failure is the caller's NULL, not a sticky error */
        return NULL;
    }
    if (cudaMemsetAsync(p, 0, bytes, g_stream) != cudaSuccess) fr_cuda_note_error("alloc");
    return p;
}

static void cu_free(void *p) {
    if (p) cudaFree(p);
}

static void cu_memset0(void *p, size_t bytes) {
    if (bytes && cudaMemsetAsync(p, 0, bytes, g_stream) != cudaSuccess) fr_cuda_note_error("memset0");
}

static void cu_copy(void *dst, const void *src, size_t bytes) {
    if (bytes && dst != src && cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, g_stream) != cudaSuccess)
        fr_cuda_note_error("copy");
}

static void cu_copy2d(float *dst, int ldd, const float *src, int lds, int rows, int cols) {
    if (rows <= 0 || cols <= 0) return;
    if (cudaMemcpy2DAsync(dst, (size_t)ldd * sizeof(float), src, (size_t)lds * sizeof(float), (size_t)cols * sizeof(float),
                          (size_t)rows, cudaMemcpyDeviceToDevice, g_stream) != cudaSuccess)
        fr_cuda_note_error("copy2d");
}

static void cu_to_host(void *host, const void *src, size_t bytes) {
    if (!bytes) return;
    if (cudaMemcpyAsync(host, src, bytes, cudaMemcpyDeviceToHost, g_stream) != cudaSuccess ||
        cudaStreamSynchronize(g_stream) != cudaSuccess)
        fr_cuda_note_error("to_host");
}

static void cu_to_device(void *dst, const void *host, size_t bytes) {
    if (!bytes) return;
    if (cudaMemcpyAsync(dst, host, bytes, cudaMemcpyHostToDevice, g_stream) != cudaSuccess ||
        cudaStreamSynchronize(g_stream) != cudaSuccess)
        fr_cuda_note_error("to_device");
}

/* ---------------------------------------------------------------- GEMM
 * Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: cuBLAS gets B first. */

static void cu_gemm(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                    int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    cublas_check(cublasSgemm(g_cublas, transB ? CUBLAS_OP_T : CUBLAS_OP_N, transA ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K,
                             &alpha, B, ldb, A, lda, &beta, C, ldc),
                 "gemm");
}

static void cu_gemm_grouped(int transA, int transB, float alpha, float beta, const fr_gemm_desc *g, int n) {
    for (int i = 0; i < n; i++)
        cu_gemm(transA, transB, g[i].M, g[i].N, g[i].K, alpha, g[i].A, g[i].lda, g[i].B, g[i].ldb, beta, g[i].C,
                g[i].ldc);
}

/* BF16 operand scratch, grown on demand (two operands) */
static uint16_t *g_bf16[2];
static size_t g_bf16_cap[2];

static uint16_t *bf16_operand(int k, const float *src, int ld, int rows, int cols) {
    const size_t n = (size_t)rows * cols;
    if (g_bf16_cap[k] < n) {
        if (g_bf16[k]) cudaFree(g_bf16[k]);
        g_bf16[k] = NULL;
        g_bf16_cap[k] = 0;
        if (cudaMalloc((void **)&g_bf16[k], n * sizeof(uint16_t)) != cudaSuccess) {
            cudaGetLastError();
            return NULL;
        }
        g_bf16_cap[k] = n;
    }
    LAUNCH("gemm_bf16", k_to_bf16, n, g_bf16[k], src, ld, cols);
    return g_bf16[k];
}

static int cu_gemm_bf16(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
                        const float *B, int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return 0;
    /* dense copies keep op()'s storage: A is [M,K] or (transA) [K,M], B [K,N] or [N,K] */
    const int a_rows = transA ? K : M, a_cols = transA ? M : K, b_rows = transB ? N : K, b_cols = transB ? K : N;
    const uint16_t *a = bf16_operand(0, A, lda, a_rows, a_cols), *b = bf16_operand(1, B, ldb, b_rows, b_cols);
    if (!a || !b) return 1;
    cublas_check(cublasGemmEx(g_cublas, transB ? CUBLAS_OP_T : CUBLAS_OP_N, transA ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K,
                              &alpha, b, CUDA_R_16BF, b_cols, a, CUDA_R_16BF, a_cols, &beta, C, CUDA_R_32F, ldc,
                              CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                 "gemm_bf16");
    return 0;
}

static long cu_fp8_quantize(float *y, int ldy, float *scales, const float *x, int ldx, int rows, int cols,
                            int tile_rows, int tile_cols) {
    if (rows <= 0 || cols <= 0 || tile_rows <= 0 || tile_cols <= 0) return 0;
    const size_t tiles = (size_t)((rows + tile_rows - 1) / tile_rows) * (size_t)((cols + tile_cols - 1) / tile_cols);
    cudaMemsetAsync(g_bad, 0, sizeof *g_bad, g_stream);
    LAUNCH("fp8_quantize", k_fp8_quantize, tiles, y, ldy, scales, x, ldx, rows, cols, tile_rows, tile_cols, g_bad);
    unsigned int bad = 0;
    cu_to_host(&bad, g_bad, sizeof bad); /* the caller must know now: a NaN voids the step */
    return (long)bad;
}

/* ---------------------------------------------------------------- the other ops */

static void cu_embedding_forward(float *out, const float *table, const int *tokens, int N, int D) {
    LAUNCH("embedding_forward", k_embedding_forward, (size_t)N * D, out, table, tokens, D);
}
static void cu_embedding_backward(float *dtable, const float *dout, const int *tokens, int N, int D) {
    LAUNCH("embedding_backward", k_embedding_backward, (size_t)N * D, dtable, dout, tokens, D);
}
static void cu_rmsnorm_forward(float *y, float *rstd, const float *x, int ldx, const float *w, int N, int D, float eps) {
    LAUNCH("rmsnorm_forward", k_rmsnorm_forward, (size_t)N, y, rstd, x, ldx, w, D, eps);
}
static void cu_rmsnorm_backward(float *dx, int lddx, float *dw, const float *dy, const float *x, int ldx, const float *w,
                                const float *rstd, int N, int D) {
    LAUNCH("rmsnorm_backward", k_rmsnorm_backward_dx, (size_t)N, dx, lddx, dy, x, ldx, w, rstd, D);
    LAUNCH("rmsnorm_backward", k_rmsnorm_backward_dw, (size_t)D, dw, dy, x, ldx, rstd, N, D);
}
static void cu_rope(float *x, int N, int n_heads, int row_stride, int head_stride, int offset, int rope_dim,
                    const int *pos, const float *cos_table, const float *sin_table, int interleave, float sign) {
    LAUNCH("rope", k_rope, (size_t)N * n_heads * (rope_dim / 2), x, n_heads, row_stride, head_stride, offset, rope_dim,
           pos, cos_table, sin_table, interleave, sign);
}
static void cu_rope_forward(float *x, int N, int n_heads, int row_stride, int head_stride, int offset, int rope_dim,
                            const int *pos, const float *cos_table, const float *sin_table, int interleave) {
    cu_rope(x, N, n_heads, row_stride, head_stride, offset, rope_dim, pos, cos_table, sin_table, interleave, 1.0f);
}
static void cu_rope_backward(float *dx, int N, int n_heads, int row_stride, int head_stride, int offset, int rope_dim,
                             const int *pos, const float *cos_table, const float *sin_table, int interleave) {
    cu_rope(dx, N, n_heads, row_stride, head_stride, offset, rope_dim, pos, cos_table, sin_table, interleave, -1.0f);
}
static void cu_mla_split_forward(float *k, float *v, const float *kv, const float *k_pe, int ld_kpe, int N, int H,
                                 int nope, int rope, int vd) {
    LAUNCH("mla_kv_split_forward", k_mla_split_forward, (size_t)N * H, k, v, kv, k_pe, ld_kpe, H, nope, rope, vd);
}
static void cu_mla_split_backward(float *dkv, float *dk_pe, int ld_kpe, const float *dk, const float *dv, int N, int H,
                                  int nope, int rope, int vd) {
    LAUNCH("mla_kv_split_backward", k_mla_split_backward_dkv, (size_t)N * H, dkv, dk, dv, nope, rope, vd);
    LAUNCH("mla_kv_split_backward", k_mla_split_backward_dpe, (size_t)N * rope, dk_pe, ld_kpe, dk, H, nope, rope);
}
static void cu_swiglu_forward(float *h, const float *g, const float *u, size_t n) {
    LAUNCH("swiglu_forward", k_swiglu_forward, n, h, g, u);
}
static void cu_swiglu_backward(float *dg, float *du, const float *dh, const float *g, const float *u, size_t n) {
    LAUNCH("swiglu_backward", k_swiglu_backward, n, dg, du, dh, g, u);
}
static void cu_add(float *y, const float *a, const float *b, size_t n) { LAUNCH("add", k_add, n, y, a, b); }
static void cu_axpy(float *y, float alpha, const float *x, size_t n) { LAUNCH("axpy", k_axpy, n, y, alpha, x); }
static void cu_cross_entropy(float *losses, float *dlogits, const float *logits, const int *targets, int N, int V,
                             float grad_scale) {
    LAUNCH("cross_entropy", k_cross_entropy, (size_t)N, losses, dlogits, logits, targets, V, grad_scale);
}

static void cu_adamw(float *p, const float *g, void *mom, void *var, int bf16, size_t n, fr_adamw_step_consts k) {
    LAUNCH("adamw", k_adamw, n, p, g, mom, var, bf16, k);
}

static void cu_sumsq_chunks(double *partial, const float *x, size_t n, size_t chunk) {
    const size_t chunks = chunk ? (n + chunk - 1) / chunk : 0;
    LAUNCH("sumsq_chunks", k_sumsq, chunks, partial, x, n, chunk);
}

static fr_ops g_ops;

/* ---------------------------------------------------------------- entry */

extern "C" __attribute__((visibility("default"))) const fr_ops *fr_cuda_backend_ops(char *why, size_t n) {
    if (g_ops.name) return &g_ops;
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0) {
        if (why && n) snprintf(why, n, "no CUDA device (%s)", e != cudaSuccess ? cudaGetErrorString(e) : "none found");
        cudaGetLastError();
        return NULL;
    }
    if (cudaStreamCreateWithFlags(&g_stream, cudaStreamNonBlocking) != cudaSuccess ||
        cudaMalloc((void **)&g_bad, sizeof *g_bad) != cudaSuccess) {
        if (why && n) snprintf(why, n, "CUDA setup failed: %s", cudaGetErrorString(cudaGetLastError()));
        return NULL;
    }
    if (cublasCreate(&g_cublas) != CUBLAS_STATUS_SUCCESS || cublasSetStream(g_cublas, g_stream) != CUBLAS_STATUS_SUCCESS) {
        if (why && n) snprintf(why, n, "cuBLAS could not start");
        return NULL;
    }
    const char *tf32 = getenv("FRUGAL_CUDA_TF32");
    cublasSetMathMode(g_cublas, tf32 && !strcmp(tf32, "1") ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_PEDANTIC_MATH);
    fr_ops o;
    memset(&o, 0, sizeof o);
    o.name = "cuda";
    o.host_memory = 0;
    o.alloc = cu_alloc;
    o.free = cu_free;
    o.memset0 = cu_memset0;
    o.copy = cu_copy;
    o.to_host = cu_to_host;
    o.to_device = cu_to_device;
    o.gemm = cu_gemm;
    o.gemm_grouped = cu_gemm_grouped;
    o.gemm_bf16 = cu_gemm_bf16;
    o.fp8_quantize = cu_fp8_quantize;
    o.embedding_forward = cu_embedding_forward;
    o.embedding_backward = cu_embedding_backward;
    o.rmsnorm_forward = cu_rmsnorm_forward;
    o.rmsnorm_backward = cu_rmsnorm_backward;
    o.rope_forward = cu_rope_forward;
    o.rope_backward = cu_rope_backward;
    o.attention_forward = fr_cuda_attention_forward;
    o.attention_backward = fr_cuda_attention_backward;
    o.mla_kv_split_forward = cu_mla_split_forward;
    o.mla_kv_split_backward = cu_mla_split_backward;
    o.latent_attention = fr_cuda_latent_attention;
    o.copy2d = cu_copy2d;
    o.swiglu_forward = cu_swiglu_forward;
    o.swiglu_backward = cu_swiglu_backward;
    o.add = cu_add;
    o.axpy = cu_axpy;
    o.cross_entropy = cu_cross_entropy;
    o.moe_route_forward = fr_cuda_moe_route_forward;
    o.moe_route_backward = fr_cuda_moe_route_backward;
    o.moe_balance_loss = fr_cuda_moe_balance_loss;
    o.moe_permute = fr_cuda_moe_permute;
    o.moe_dispatch_forward = fr_cuda_moe_dispatch_forward;
    o.moe_dispatch_backward = fr_cuda_moe_dispatch_backward;
    o.moe_combine_forward = fr_cuda_moe_combine_forward;
    o.moe_combine_backward = fr_cuda_moe_combine_backward;
    o.adamw = cu_adamw;
    o.sumsq_chunks = cu_sumsq_chunks;
    g_ops = o;
    return &g_ops;
}
