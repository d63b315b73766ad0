/* block.h — one decoder block (MLA + dense MLP or DeepSeekMoE), forward and backward. */
#ifndef FR_BLOCK_H
#define FR_BLOCK_H

#include "model/model_internal.h"

/* Forward over a->x_in [B*T, H] into a->out, saving what the backward needs in `a`.
 * pos: [B*T] RoPE positions (device). */
void fr_block_forward(fr_model *m, const fr_block *b, fr_block_acts *a, int B, int T, const int *pos);

/* Backward: d_res [B*T, H] holds d(out) on entry and d(x_in) on return. Parameter
 * gradients accumulate into m->grads. bal_scale > 0 adds the gradient of
 * bal_scale * sum_b L_balance(b) (MoE blocks only). */
void fr_block_backward(fr_model *m, const fr_block *b, fr_block_acts *a, int B, int T, const int *pos,
                       float *d_res, float bal_scale);

/* y[N,out] (row stride ldy) = x[N,in] (ldx) · W^T with W [out,in] (ldw);
 * beta 0 overwrites y, 1 accumulates. */
void fr_linear_forward(const fr_ops *o, float *y, int ldy, const float *x, int ldx,
                       const float *W, int ldw, int N, int in, int out, float beta);
/* dx[N,in] = beta_dx*dx + dy · W (skipped when dx is NULL);  dW[out,in] += dy^T · x */
void fr_linear_backward(const fr_ops *o, float *dx, int lddx, float beta_dx, float *dW, int lddw,
                        const float *dy, int lddy, const float *x, int ldx, const float *W, int ldw,
                        int N, int in, int out);

/* The same for the linear layers the FP8 recipe covers (MLA projections, dense MLP, experts):
 * FP32 as above, or, after fr_model_set_precision(m, "fp8"), every GEMM input rounded to
 * E4M3 in its recipe tiles (m->ops->fp8_quantize) before the FP32 GEMM. */
void fr_qlinear_forward(fr_model *m, float *y, int ldy, const float *x, int ldx, const float *W, int ldw, int N,
                        int in, int out, float beta);
void fr_qlinear_backward(fr_model *m, float *dx, int lddx, float beta_dx, float *dW, int lddw, const float *dy,
                         int lddy, const float *x, int ldx, const float *W, int ldw, int N, int in, int out);

#endif
