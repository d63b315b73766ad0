/*
 * moe_cuda.cu — fr_ops.moe_* of the CUDA backend: grid-stride __global__ wrappers around the
 * bodies of kernels_moe.cuh, and the launchers cuda_internal.h declares.
 *
 * Every launcher queues its work on fr_cuda_stream() and returns without synchronizing, except
 * fr_cuda_moe_permute, whose expert_offsets output lives on the host (see there). A failed
 * launch or CUDA call is recorded with fr_cuda_note_error, an unsupported shape with fr_cuda_fail,
 * for fr_cuda_status.
 */
#include "cuda/cuda_internal.h"
#include "cuda/kernels_moe.cuh"

#include <cuda_runtime.h>

#include <stdlib.h>
#include <string.h>

#define MOE_GRID_STRIDE(i, n)                                                                                      \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (size_t)gridDim.x * blockDim.x)

static cudaStream_t stream_(void) { return (cudaStream_t)fr_cuda_stream(); }

/* ------------------------------------------------------------------ kernels */

/* p by value: the caller's fr_route_params is host memory */
static __global__ void k_moe_route_forward(int *topk_idx, float *topk_w, float *scores, const float *logits,
                                           const float *bias, int N, fr_route_params p) {
    MOE_GRID_STRIDE(n, (size_t)N) fr_k_moe_route_forward_row((int)n, topk_idx, topk_w, scores, logits, bias, &p);
}

static __global__ void k_moe_route_backward(float *dlogits, const float *dtopk_w, const float *dscores_extra,
                                            const float *scores, const int *topk_idx, int N, fr_route_params p) {
    MOE_GRID_STRIDE(n, (size_t)N)
    fr_k_moe_route_backward_row((int)n, dlogits, dtopk_w, dscores_extra, scores, topk_idx, &p);
}

static __global__ void k_moe_balance_rowsum(float *iz, const float *scores, size_t BT, int E) {
    MOE_GRID_STRIDE(n, BT) fr_k_moe_balance_rowsum(n, iz, scores, E);
}

static __global__ void k_moe_balance_expert(float *f, float *P, const float *scores, const float *iz,
                                            const int *topk_idx, size_t BE, int T, int E, int K) {
    MOE_GRID_STRIDE(be, BE) fr_k_moe_balance_expert(be, f, P, scores, iz, topk_idx, T, E, K);
}

static __global__ void k_moe_balance_seq(float *loss_per_seq, const float *f, const float *P, int B, int T, int E) {
    MOE_GRID_STRIDE(b, (size_t)B) fr_k_moe_balance_seq((int)b, loss_per_seq, f, P, T, E);
}

static __global__ void k_moe_balance_grad(float *dscores, const float *scores, const float *iz, const float *f,
                                          size_t BT, int T, int E, float grad_scale) {
    MOE_GRID_STRIDE(n, BT) fr_k_moe_balance_grad(n, dscores, scores, iz, f, T, E, grad_scale);
}

static __global__ void k_moe_dispatch_forward(float *xe, const float *x, const int *perm_token, size_t total, int D) {
    MOE_GRID_STRIDE(i, total) fr_k_moe_dispatch_forward(i, xe, x, perm_token, D);
}

static __global__ void k_moe_dispatch_backward(float *dx, const float *dxe, const int *slot_pos, size_t total, int K,
                                               int D) {
    MOE_GRID_STRIDE(i, total) fr_k_moe_dispatch_backward(i, dx, dxe, slot_pos, K, D);
}

static __global__ void k_moe_combine_forward(float *out, const float *ye, const float *topk_w, const int *slot_pos,
                                             size_t total, int K, int D) {
    MOE_GRID_STRIDE(i, total) fr_k_moe_combine_forward(i, out, ye, topk_w, slot_pos, K, D);
}

static __global__ void k_moe_combine_backward_dye(float *dye, const float *dout, const float *topk_w,
                                                  const int *slot_pos, size_t total, int K, int D) {
    MOE_GRID_STRIDE(i, total) fr_k_moe_combine_backward_dye(i, dye, dout, topk_w, slot_pos, K, D);
}

static __global__ void k_moe_combine_backward_dw(float *dtopk_w, const float *dout, const float *ye,
                                                 const int *slot_pos, size_t NK, int K, int D) {
    MOE_GRID_STRIDE(nk, NK) fr_k_moe_combine_backward_dw(nk, dtopk_w, dout, ye, slot_pos, K, D);
}

/* ------------------------------------------------------------------ launchers */

extern "C" {

void fr_cuda_moe_route_forward(int *topk_idx, float *topk_w, float *scores, const float *logits, const float *bias,
                               int N, const fr_route_params *p) {
    if (N <= 0) return;
    int masking = p->method != FR_TOPK_GREEDY && p->n_group > 1 && p->topk_group < p->n_group;
    if (p->top_k > FR_MOE_MAX_K || p->top_k > p->n_experts || (masking && p->n_group > FR_MOE_MAX_GROUPS))
        fr_cuda_fail("moe_route_forward", "top_k above 16, above n_experts, or n_group above 64 is not supported");
    /* launched anyway: beyond the caps every row gets NaN weights rather than stale ones */
    k_moe_route_forward<<<fr_cuda_blocks((size_t)N), FR_CUDA_THREADS, 0, stream_()>>>(topk_idx, topk_w, scores,
                                                                                    logits, bias, N, *p);
    fr_cuda_note_error("moe_route_forward");
}

void fr_cuda_moe_route_backward(float *dlogits, const float *dtopk_w, const float *dscores_extra,
                                const float *scores, const int *topk_idx, int N, const fr_route_params *p) {
    if (N <= 0) return;
    k_moe_route_backward<<<fr_cuda_blocks((size_t)N), FR_CUDA_THREADS, 0, stream_()>>>(
        dlogits, dtopk_w, dscores_extra, scores, topk_idx, N, *p);
    fr_cuda_note_error("moe_route_backward");
}

/* Scratch iz [B T], f [B E], P [B E] comes from the stream-ordered allocator, so it is freed
 * in stream order too and the launcher still returns without synchronizing. */
void fr_cuda_moe_balance_loss(float *loss_per_seq, float *dscores, const float *scores, const int *topk_idx, int B,
                              int T, int E, int K, float grad_scale) {
    if (B <= 0) return;
    size_t BT = (size_t)B * T, BE = (size_t)B * E;
    cudaStream_t st = stream_();
    float *scratch = NULL;
    cudaError_t e = cudaMallocAsync((void **)&scratch, (BT + 2 * BE) * sizeof(float), st);
    if (e != cudaSuccess || !scratch) {
        fr_cuda_fail("moe_balance_loss", e != cudaSuccess ? cudaGetErrorString(e) : "no scratch memory");
        (void)cudaGetLastError();
        return;
    }
    float *iz = scratch, *f = scratch + BT, *P = f + BE;
    if (BT) {
        k_moe_balance_rowsum<<<fr_cuda_blocks(BT), FR_CUDA_THREADS, 0, st>>>(iz, scores, BT, E);
        fr_cuda_note_error("moe_balance_loss");
    }
    if (BE) {
        k_moe_balance_expert<<<fr_cuda_blocks(BE), FR_CUDA_THREADS, 0, st>>>(f, P, scores, iz, topk_idx, BE, T, E,
                                                                           K);
        fr_cuda_note_error("moe_balance_loss");
    }
    k_moe_balance_seq<<<fr_cuda_blocks((size_t)B), FR_CUDA_THREADS, 0, st>>>(loss_per_seq, f, P, B, T, E);
    fr_cuda_note_error("moe_balance_loss");
    if (dscores && BT) {
        k_moe_balance_grad<<<fr_cuda_blocks(BT), FR_CUDA_THREADS, 0, st>>>(dscores, scores, iz, f, BT, T, E,
                                                                         grad_scale);
        fr_cuda_note_error("moe_balance_loss");
    }
    cudaFreeAsync(scratch, st);
    fr_cuda_note_error("moe_balance_loss");
}

/* The permutation is computed on the host: expert_offsets must end up there anyway (the
 * grouped GEMM's shapes), and N K ints (a few hundred KB at most) are small next to the expert
 * GEMMs they feed, so the round trip costs little and the host code is the CPU backend's
 * stable counting sort exactly. This launcher synchronizes the stream twice: before reading
 * topk_idx and before freeing the host buffers the uploads read from. */
void fr_cuda_moe_permute(int *perm_token, int *slot_pos, int *expert_offsets_host, const int *topk_idx, int N, int K,
                         int E) {
    size_t NK = N > 0 && K > 0 ? (size_t)N * K : 0;
    for (int e = 0; e <= E; e++) expert_offsets_host[e] = 0;
    if (NK == 0) return;
    cudaStream_t st = stream_();
    int *h = (int *)malloc(3 * NK * sizeof(int));
    if (!h) {
        fr_cuda_fail("moe_permute", "out of host memory");
        return;
    }
    /* unwritten entries (routing indices outside [0, E)) go up as 0, never as garbage */
    memset(h, 0, 3 * NK * sizeof(int));
    int *h_idx = h, *h_perm = h + NK, *h_slot = h + 2 * NK;
    cudaMemcpyAsync(h_idx, topk_idx, NK * sizeof(int), cudaMemcpyDeviceToHost, st);
    cudaError_t e = cudaStreamSynchronize(st);
    if (e != cudaSuccess) {
        fr_cuda_fail("moe_permute", cudaGetErrorString(e));
        (void)cudaGetLastError(); /* recorded here: no later op should report it as its own */
        free(h);
        return;
    }
    if (fr_k_moe_permute_host(h_perm, h_slot, expert_offsets_host, h_idx, N, K, E))
        fr_cuda_fail("moe_permute", "an expert index outside [0, n_experts)");
    cudaMemcpyAsync(perm_token, h_perm, NK * sizeof(int), cudaMemcpyHostToDevice, st);
    cudaMemcpyAsync(slot_pos, h_slot, NK * sizeof(int), cudaMemcpyHostToDevice, st);
    e = cudaStreamSynchronize(st);
    if (e != cudaSuccess) fr_cuda_fail("moe_permute", cudaGetErrorString(e));
    fr_cuda_note_error("moe_permute");
    free(h);
}

void fr_cuda_moe_dispatch_forward(float *xe, const float *x, const int *perm_token, int NK, int D) {
    size_t total = NK > 0 && D > 0 ? (size_t)NK * D : 0;
    if (!total) return;
    k_moe_dispatch_forward<<<fr_cuda_blocks(total), FR_CUDA_THREADS, 0, stream_()>>>(xe, x, perm_token, total, D);
    fr_cuda_note_error("moe_dispatch_forward");
}

void fr_cuda_moe_dispatch_backward(float *dx, const float *dxe, const int *slot_pos, int N, int K, int D) {
    size_t total = N > 0 && D > 0 ? (size_t)N * D : 0;
    if (!total) return;
    k_moe_dispatch_backward<<<fr_cuda_blocks(total), FR_CUDA_THREADS, 0, stream_()>>>(dx, dxe, slot_pos, total, K,
                                                                                    D);
    fr_cuda_note_error("moe_dispatch_backward");
}

void fr_cuda_moe_combine_forward(float *out, const float *ye, const float *topk_w, const int *slot_pos, int N, int K,
                                 int D) {
    size_t total = N > 0 && D > 0 ? (size_t)N * D : 0;
    if (!total) return;
    k_moe_combine_forward<<<fr_cuda_blocks(total), FR_CUDA_THREADS, 0, stream_()>>>(out, ye, topk_w, slot_pos, total,
                                                                                  K, D);
    fr_cuda_note_error("moe_combine_forward");
}

void fr_cuda_moe_combine_backward(float *dye, float *dtopk_w, const float *dout, const float *ye, const float *topk_w,
                                  const int *slot_pos, int N, int K, int D) {
    size_t NK = N > 0 && K > 0 ? (size_t)N * K : 0;
    if (!NK) return;
    cudaStream_t st = stream_();
    if (D > 0) {
        size_t total = NK * D;
        k_moe_combine_backward_dye<<<fr_cuda_blocks(total), FR_CUDA_THREADS, 0, st>>>(dye, dout, topk_w, slot_pos,
                                                                                    total, K, D);
        fr_cuda_note_error("moe_combine_backward");
    }
    /* D = 0 still overwrites dtopk_w (with 0, the empty dot) */
    k_moe_combine_backward_dw<<<fr_cuda_blocks(NK), FR_CUDA_THREADS, 0, st>>>(dtopk_w, dout, ye, slot_pos, NK, K, D);
    fr_cuda_note_error("moe_combine_backward");
}

} /* extern "C" */
