/*
 * cuda_internal.h — what the CUDA backend's files share (not installed; C linkage so that the
 * C side of the library and the tests can name them).
 *
 * Files: ops_cuda.cu (the fr_ops table, memory, cuBLAS GEMMs, the elementwise / row kernels of
 * kernels_basic.cuh), attention_cuda.cu (kernels_attention.cuh), moe_cuda.cu (kernels_moe.cuh).
 * Every launcher runs on the backend's one stream (fr_cuda_stream) and returns without
 * synchronizing; a failed launch is remembered (fr_cuda_note_error) and reported by
 * fr_cuda_status, as the ops interface has no error returns.
 */
#ifndef FR_CUDA_INTERNAL_H
#define FR_CUDA_INTERNAL_H

#include "model/ops.h"

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Threads per block of the one-dimensional launches, and the blocks for n items (capped;
 * kernels loop with a grid stride). */
#define FR_CUDA_THREADS 256
int fr_cuda_blocks(size_t n);

/* The stream every kernel and cuBLAS call goes to (as void *: cudaStream_t) */
void *fr_cuda_stream(void);
/* Record the first failure (what: the op) from cudaGetLastError after a launch */
void fr_cuda_note_error(const char *what);
/* Record a failure that is not a CUDA error (an unsupported shape) */
void fr_cuda_fail(const char *what, const char *why);
/* 0, or non-zero with *why the first failure since the last call (then cleared) */
int fr_cuda_backend_status(char *why, size_t n);

/* attention_cuda.cu: fr_ops.attention_forward / attention_backward */
void fr_cuda_attention_forward(float *out, float *lse, const float *q, const float *k, const float *v, int B, int T,
                               int H, int dqk, int dv, float scale);
void fr_cuda_attention_backward(float *dq, float *dk, float *dval, const float *dout, const float *out,
                                const float *lse, const float *q, const float *k, const float *v, int B, int T, int H,
                                int dqk, int dv, float scale);

/* attention_cuda.cu: fr_ops.latent_attention (the inference engine's decode attention) */
void fr_cuda_latent_attention(float *ctx, const float *qf, const float *cache, const int *pos, int N, int n_heads,
                              int row, int kvr, int max_keys, float scale);

/* moe_cuda.cu: fr_ops.moe_* */
void fr_cuda_moe_route_forward(int *topk_idx, float *topk_w, float *scores, const float *logits, const float *bias,
                               int N, const fr_route_params *p);
void fr_cuda_moe_route_backward(float *dlogits, const float *dtopk_w, const float *dscores_extra,
                                const float *scores, const int *topk_idx, int N, const fr_route_params *p);
void fr_cuda_moe_balance_loss(float *loss_per_seq, float *dscores, const float *scores, const int *topk_idx, int B,
                              int T, int E, int K, float grad_scale);
void fr_cuda_moe_permute(int *perm_token, int *slot_pos, int *expert_offsets_host, const int *topk_idx, int N, int K,
                         int E);
void fr_cuda_moe_dispatch_forward(float *xe, const float *x, const int *perm_token, int NK, int D);
void fr_cuda_moe_dispatch_backward(float *dx, const float *dxe, const int *slot_pos, int N, int K, int D);
void fr_cuda_moe_combine_forward(float *out, const float *ye, const float *topk_w, const int *slot_pos, int N, int K,
                                 int D);
void fr_cuda_moe_combine_backward(float *dye, float *dtopk_w, const float *dout, const float *ye, const float *topk_w,
                                  const int *slot_pos, int N, int K, int D);

#ifdef __cplusplus
}
#endif

#endif
