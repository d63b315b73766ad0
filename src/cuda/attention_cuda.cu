/*
 * attention_cuda.cu — the CUDA backend's causal softmax attention: grid-stride __global__
 * wrappers around the bodies of kernels_attention.cuh (one thread per (b, h, query t)) and
 * the launchers fr_cuda_attention_forward / fr_cuda_attention_backward of cuda_internal.h.
 *
 * Shapes (model/ops.h): q, k [B*T, H, dqk]; v [B*T, H, dv]; out, dout [B*T, H*dv];
 * lse [B, H, T]; dq, dk, dval as q, k, v. All pointers are device memory. Launchers run on
 * the backend's stream (fr_cuda_stream), do not synchronize, and report a failed launch
 * through fr_cuda_note_error (the ops interface has no error returns).
 */
#include <cuda_runtime.h>

#include "cuda/cuda_internal.h"
#include "cuda/kernels_attention.cuh"

/* n = B*H*T call indices, t fastest (kernels_attention.cuh) */
__global__ void fr_attention_forward_kernel(float *out, float *lse, const float *q, const float *k, const float *v,
                                            int T, int H, int dqk, int dv, float scale, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        fr_attention_forward_body(out, lse, q, k, v, T, H, dqk, dv, scale, i);
}

__global__ void fr_attention_backward_kernel(float *dq, float *dk, float *dval, const float *dout, const float *out,
                                             const float *lse, const float *q, const float *k, const float *v, int T,
                                             int H, int dqk, int dv, float scale, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        fr_attention_backward_body(dq, dk, dval, dout, out, lse, q, k, v, T, H, dqk, dv, scale, i);
}

extern "C" void fr_cuda_attention_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                                          int B, int T, int H, int dqk, int dv, float scale) {
    cudaStream_t st = (cudaStream_t)fr_cuda_stream();
    const size_t n = (size_t)B * H * T;
    if (dv > FR_ATTN_MAX_DV) {
        /* The body's running output is a fixed local array of FR_ATTN_MAX_DV floats: refuse
         * rather than overrun it (out and lse are left as they were) */
        fr_cuda_fail("attention_forward", "v_head_dim above 256 is not supported by this kernel");
        return;
    }
    if (n == 0) return;
    fr_attention_forward_kernel<<<fr_cuda_blocks(n), FR_CUDA_THREADS, 0, st>>>(out, lse, q, k, v, T, H, dqk, dv,
                                                                              scale, n);
    fr_cuda_note_error("attention_forward");
}

extern "C" void fr_cuda_attention_backward(float *dq, float *dk, float *dval, const float *dout, const float *out,
                                           const float *lse, const float *q, const float *k, const float *v, int B,
                                           int T, int H, int dqk, int dv, float scale) {
    cudaStream_t st = (cudaStream_t)fr_cuda_stream();
    const size_t n = (size_t)B * H * T;
    if (n == 0) return;
    /* The contract overwrites dq, dk, dval. Each thread owns its dq row (the body zeroes it),
     * but dk / dval rows are summed into by every later query of the sequence (atomics), so
     * they start from zero here, in stream order before the kernel. */
    const size_t nk = (size_t)B * T * H * dqk, nv = (size_t)B * T * H * dv;
    cudaError_t e = cudaMemsetAsync(dk, 0, nk * sizeof(float), st);
    if (e == cudaSuccess) e = cudaMemsetAsync(dval, 0, nv * sizeof(float), st);
    if (e != cudaSuccess) { /* leaves the error for cudaGetLastError: note_error records it */
        fr_cuda_note_error("attention_backward (clearing dk, dv)");
        return;
    }
    fr_attention_backward_kernel<<<fr_cuda_blocks(n), FR_CUDA_THREADS, 0, st>>>(dq, dk, dval, dout, out, lse, q, k,
                                                                               v, T, H, dqk, dv, scale, n);
    fr_cuda_note_error("attention_backward");
}

/* ---- the latent decode attention: partial results per key split, then their combination
 * (kernels_attention.cuh). The partials live in a scratch the backend keeps and grows. */
__global__ void fr_latent_partial_kernel(float *pm, float *pl, float *pacc, const float *qf, const float *cache,
                                         const int *pos, int N, int nh, int row, int kvr, int chunk, float scale,
                                         size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        fr_latent_attention_partial_body(pm, pl, pacc, qf, cache, pos, N, nh, row, kvr, chunk, scale, i);
}

__global__ void fr_latent_combine_kernel(float *ctx, const float *pm, const float *pl, const float *pacc, int N, int nh,
                                         int kvr, int n_split, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        fr_latent_attention_combine_body(ctx, pm, pl, pacc, N, nh, kvr, n_split, i);
}

/* partial results kept at most: 64 Ki items (with kv_lora_rank 512: 128 MiB of scratch) */
#define LATENT_MAX_ITEMS ((size_t)1 << 16)
static float *g_latent_scratch;
static size_t g_latent_floats;

extern "C" void fr_cuda_latent_attention(float *ctx, const float *qf, const float *cache, const int *pos, int N,
                                         int n_heads, int row, int kvr, int max_keys, float scale) {
    if (N <= 0 || n_heads <= 0 || max_keys <= 0) return;
    cudaStream_t st = (cudaStream_t)fr_cuda_stream();
    int n_split, chunk;
    fr_latent_attention_split(N, n_heads, max_keys, LATENT_MAX_ITEMS, &n_split, &chunk);
    const size_t items = (size_t)n_split * N * n_heads, need = items * ((size_t)kvr + 2);
    if (need > g_latent_floats) {
        /* cudaFree waits for the device, so no earlier launch still reads the old scratch */
        cudaFree(g_latent_scratch);
        g_latent_scratch = NULL;
        g_latent_floats = 0;
        if (cudaMalloc((void **)&g_latent_scratch, need * sizeof(float)) != cudaSuccess) {
            cudaGetLastError();
            fr_cuda_fail("latent_attention", "out of GPU memory for the attention's partial results");
            return;
        }
        g_latent_floats = need;
    }
    float *pm = g_latent_scratch, *pl = pm + items, *pacc = pl + items;
    fr_latent_partial_kernel<<<fr_cuda_blocks(items), FR_CUDA_THREADS, 0, st>>>(pm, pl, pacc, qf, cache, pos, N,
                                                                               n_heads, row, kvr, chunk, scale, items);
    fr_cuda_note_error("latent_attention (partial)");
    const size_t n = (size_t)N * n_heads * kvr;
    fr_latent_combine_kernel<<<fr_cuda_blocks(n), FR_CUDA_THREADS, 0, st>>>(ctx, pm, pl, pacc, N, n_heads, kvr,
                                                                           n_split, n);
    fr_cuda_note_error("latent_attention (combine)");
}
