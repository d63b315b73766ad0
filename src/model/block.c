/*
 * block.c — one DeepSeek-V3 decoder block: forward and backward.
 *
 *   x_mid = x_in  + MLA(RMSNorm(x_in))
 *   out   = x_mid + FFN(RMSNorm(x_mid))        FFN = SwiGLU MLP (dense) or DeepSeekMoE
 *
 * Every function here only calls the ops interface (m->ops), so the block runs on any
 * backend. Shapes: N = B*T tokens, H = hidden, nh = heads, dqk = nope + rope.
 */
#include "model/block.h"
#include "comm/comm.h"
#include "model/lora.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* q_a_layernorm and kv_a_layernorm use a fixed eps of 1e-6, whatever rms_norm_eps says:
 * both DeepSeek's reference code and transformers construct them with the default. */
#define FR_LATENT_NORM_EPS 1e-6f

#define P(off) (m->params + (off))
#define G(off) (m->grads + (off))

/* ---------------------------------------------------------------- linear layers */

/* y[N,out] (ldy) = x[N,in] (ldx) · W^T, W [out,in] (ldw); beta = 0 overwrite, 1 accumulate */
void fr_linear_forward(const fr_ops *o, float *y, int ldy, const float *x, int ldx,
                           const float *W, int ldw, int N, int in, int out, float beta) {
    o->gemm(0, 1, N, out, in, 1.0f, x, ldx, W, ldw, beta, y, ldy);
}

/* dx[N,in] (+)= dy[N,out] · W  (dx may be NULL);  dW[out,in] += dy^T · x */
void fr_linear_backward(const fr_ops *o, float *dx, int lddx, float beta_dx, float *dW, int lddw,
                            const float *dy, int lddy, const float *x, int ldx, const float *W, int ldw,
                            int N, int in, int out) {
    if (dx) o->gemm(0, 0, N, in, out, 1.0f, dy, lddy, W, ldw, beta_dx, dx, lddx);
    if (dW) o->gemm(1, 0, out, in, N, 1.0f, dy, lddy, x, ldx, 1.0f, dW, lddw);
}

/* FP8 (DeepSeek-V3): activations and output gradients in 1 x 128 tiles along the reduced
 * dimension, weights in 128 x 128 blocks, and for the weight gradient (reduced over tokens)
 * both operands in 128 x 1 tiles. */
#define FP8_TILE 128

/* Operand buffer k of at least n floats; NULL (and m->fp8_oom set) when it cannot grow. */
static float *fp8_buffer(fr_model *m, int k, size_t n) {
    if (m->fp8_cap[k] < n) {
        if (m->fp8_buf[k]) m->ops->free(m->fp8_buf[k]);
        m->fp8_buf[k] = m->ops->alloc(n * sizeof(float));
        m->fp8_cap[k] = m->fp8_buf[k] ? n : 0;
        if (!m->fp8_buf[k]) m->fp8_oom = 1;
    }
    return m->fp8_buf[k];
}

/* q[rows, cols] (dense) = x (ldx) rounded in tiles of tr x tc; NULL when out of memory */
static const float *fp8_operand(fr_model *m, int k, const float *x, int ldx, int rows, int cols, int tr, int tc) {
    float *q = fp8_buffer(m, k, (size_t)rows * cols);
    if (q) m->fp8_nonfinite += m->ops->fp8_quantize(q, cols, NULL, x, ldx, rows, cols, tr, tc);
    return q;
}

/* BF16: the same three GEMMs with both inputs rounded to bfloat16, FP32 accumulation. */
static void bf16_gemm(fr_model *m, int ta, int tb, int M, int N, int K, const float *A, int lda, const float *B,
                      int ldb, float beta, float *C, int ldc) {
    if (m->ops->gemm_bf16(ta, tb, M, N, K, 1.0f, A, lda, B, ldb, beta, C, ldc) != 0) m->gemm_failed = 1;
}

static void qlinear_base_forward(fr_model *m, float *y, int ldy, const float *x, int ldx, const float *W, int ldw,
                                 int N, int in, int out, float beta) {
    if (!(W = fr_lora_weights(m, 0, W, (size_t)(out - 1) * ldw + in))) return; /* (a quantized frozen base) */
    if (m->precision == FR_PREC_BF16) {
        bf16_gemm(m, 0, 1, N, out, in, x, ldx, W, ldw, beta, y, ldy);
        return;
    }
    if (m->precision != FR_PREC_FP8) {
        fr_linear_forward(m->ops, y, ldy, x, ldx, W, ldw, N, in, out, beta);
        return;
    }
    const float *qx = fp8_operand(m, 0, x, ldx, N, in, 1, FP8_TILE);
    const float *qw = fp8_operand(m, 1, W, ldw, out, in, FP8_TILE, FP8_TILE);
    if (qx && qw) m->ops->gemm(0, 1, N, out, in, 1.0f, qx, in, qw, in, beta, y, ldy);
}

/* dx[N,in] (beta_dx)= dy · W, reduced over out */
static void qlinear_backward_dx(fr_model *m, float *dx, int lddx, float beta_dx, const float *dy, int lddy,
                                const float *W, int ldw, int N, int in, int out) {
    if (!(W = fr_lora_weights(m, 0, W, (size_t)(out - 1) * ldw + in))) return;
    if (m->precision == FR_PREC_BF16) {
        bf16_gemm(m, 0, 0, N, in, out, dy, lddy, W, ldw, beta_dx, dx, lddx);
    } else if (m->precision != FR_PREC_FP8) {
        m->ops->gemm(0, 0, N, in, out, 1.0f, dy, lddy, W, ldw, beta_dx, dx, lddx);
    } else { /* dy in 1 x 128 tiles (or the 128 x 128 experiment), W in 128 x 128 blocks */
        const float *qdy = fp8_operand(m, 0, dy, lddy, N, out, m->fp8_grad_tile_rows, FP8_TILE);
        const float *qw = fp8_operand(m, 1, W, ldw, out, in, FP8_TILE, FP8_TILE);
        if (qdy && qw) m->ops->gemm(0, 0, N, in, out, 1.0f, qdy, out, qw, in, beta_dx, dx, lddx);
    }
}

/* dW[out,in] += dy^T · x, reduced over the N tokens */
static void qlinear_backward_dw(fr_model *m, float *dW, int lddw, const float *dy, int lddy, const float *x, int ldx,
                                int N, int in, int out) {
    if (m->precision == FR_PREC_BF16) {
        bf16_gemm(m, 1, 0, out, in, N, dy, lddy, x, ldx, 1.0f, dW, lddw);
    } else if (m->precision != FR_PREC_FP8) {
        m->ops->gemm(1, 0, out, in, N, 1.0f, dy, lddy, x, ldx, 1.0f, dW, lddw);
    } else { /* both re-tiled 128 x 1 */
        const float *qdy = fp8_operand(m, 0, dy, lddy, N, out, FP8_TILE, 1);
        const float *qx = fp8_operand(m, 1, x, ldx, N, in, FP8_TILE, 1);
        if (qdy && qx) m->ops->gemm(1, 0, out, in, N, 1.0f, qdy, out, qx, in, 1.0f, dW, lddw);
    }
}

/* A LoRA adapter (lora.c) adds its product after the base layer's; a frozen base matrix gets
 * no weight gradient. */
void fr_qlinear_forward(fr_model *m, float *y, int ldy, const float *x, int ldx, const float *W, int ldw, int N,
                        int in, int out, float beta) {
    qlinear_base_forward(m, y, ldy, x, ldx, W, ldw, N, in, out, beta);
    const fr_lora_site *s = m->n_lora ? fr_lora_find(m, (size_t)(W - m->params)) : NULL;
    if (s) fr_lora_forward(m, s, y, ldy, x, ldx, N);
}

void fr_qlinear_backward(fr_model *m, float *dx, int lddx, float beta_dx, float *dW, int lddw, const float *dy,
                         int lddy, const float *x, int ldx, const float *W, int ldw, int N, int in, int out) {
    const size_t off = (size_t)(dW - m->grads);
    if (dx) qlinear_backward_dx(m, dx, lddx, beta_dx, dy, lddy, W, ldw, N, in, out);
    if (!fr_lora_frozen(m, off)) qlinear_backward_dw(m, dW, lddw, dy, lddy, x, ldx, N, in, out);
    const fr_lora_site *s = m->n_lora ? fr_lora_find(m, off) : NULL;
    if (s && dx) fr_lora_backward_dx(m, s, dx, lddx, dy, lddy, N);
    if (s) fr_lora_backward_dw(m, s, dy, lddy, x, ldx, N);
}

/* ---------------------------------------------------------------- MLA attention */

static void mla_forward(fr_model *m, const fr_block *b, fr_block_acts *a, int B, int T, const int *pos) {
    const fr_ops *o = m->ops;
    const fr_config *c = &m->cfg;
    const int N = B * T, H = c->hidden_size, nh = c->num_attention_heads;
    const int nope = c->qk_nope_head_dim, rope = c->qk_rope_head_dim, dqk = nope + rope;
    const int vd = c->v_head_dim, kvr = c->kv_lora_rank, qr = c->q_lora_rank;

    /* queries: q = W_UQ RMSNorm(W_DQ h)  or  q = W_Q h */
    if (qr > 0) {
        fr_qlinear_forward(m, a->q_a, qr, a->attn_xn, H, P(b->q_a), H, N, H, qr, 0.0f);
        o->rmsnorm_forward(a->q_a_n, a->q_a_rstd, a->q_a, qr, P(b->q_a_norm), N, qr, FR_LATENT_NORM_EPS);
        fr_qlinear_forward(m, a->q, nh * dqk, a->q_a_n, qr, P(b->q_b), qr, N, qr, nh * dqk, 0.0f);
    } else {
        fr_qlinear_forward(m, a->q, nh * dqk, a->attn_xn, H, P(b->q), H, N, H, nh * dqk, 0.0f);
    }
    o->rope_forward(a->q, N, nh, nh * dqk, dqk, nope, rope, pos, m->rope_cos, m->rope_sin, c->rope_interleave);

    /* latent: [c_KV | k_pe] = W_DKV h; c_KV normalised; k_pe rotated, shared by all heads */
    fr_qlinear_forward(m, a->kv_a, kvr + rope, a->attn_xn, H, P(b->kv_a), H, N, H, kvr + rope, 0.0f);
    o->rope_forward(a->kv_a, N, 1, kvr + rope, 0, kvr, rope, pos, m->rope_cos, m->rope_sin, c->rope_interleave);
    o->rmsnorm_forward(a->kv_n, a->kv_rstd, a->kv_a, kvr + rope, P(b->kv_a_norm), N, kvr, FR_LATENT_NORM_EPS);

    /* [k_nope | v] = W_UKV c_KV, expanded per head (training path: no absorption) */
    float *kv = m->scr.dkv; /* scratch: [N, nh*(nope+vd)], dead after the split */
    fr_qlinear_forward(m, kv, nh * (nope + vd), a->kv_n, kvr, P(b->kv_b), kvr, N, kvr, nh * (nope + vd), 0.0f);
    o->mla_kv_split_forward(a->k, a->v, kv, a->kv_a + kvr, kvr + rope, N, nh, nope, rope, vd);

    o->attention_forward(a->att, a->lse, a->q, a->k, a->v, B, T, nh, dqk, vd, m->attn_scale);
}

/* d_xn (overwritten) = gradient of the attention branch w.r.t. its normalised input */
static void mla_backward(fr_model *m, const fr_block *b, fr_block_acts *a, int B, int T, const int *pos,
                         const float *d_out /* [N,H] */) {
    const fr_ops *o = m->ops;
    const fr_config *c = &m->cfg;
    fr_scratch *s = &m->scr;
    const int N = B * T, H = c->hidden_size, nh = c->num_attention_heads;
    const int nope = c->qk_nope_head_dim, rope = c->qk_rope_head_dim, dqk = nope + rope;
    const int vd = c->v_head_dim, kvr = c->kv_lora_rank, qr = c->q_lora_rank;

    /* o_proj */
    fr_qlinear_backward(m, s->d_att, nh * vd, 0.0f, G(b->o), nh * vd, d_out, H, a->att, nh * vd, P(b->o), nh * vd,
                    N, nh * vd, H);
    o->attention_backward(s->dq, s->dk, s->dv, s->d_att, a->att, a->lse, a->q, a->k, a->v, B, T, nh, dqk, vd,
                          m->attn_scale);

    o->memset0(s->d_xn, (size_t)N * H * sizeof(float));
    /* query path */
    o->rope_backward(s->dq, N, nh, nh * dqk, dqk, nope, rope, pos, m->rope_cos, m->rope_sin, c->rope_interleave);
    if (qr > 0) {
        fr_qlinear_backward(m, s->d_q_a_n, qr, 0.0f, G(b->q_b), qr, s->dq, nh * dqk, a->q_a_n, qr, P(b->q_b), qr,
                        N, qr, nh * dqk);
        o->memset0(s->d_q_a, (size_t)N * qr * sizeof(float));
        o->rmsnorm_backward(s->d_q_a, qr, G(b->q_a_norm), s->d_q_a_n, a->q_a, qr, P(b->q_a_norm), a->q_a_rstd,
                            N, qr);
        fr_qlinear_backward(m, s->d_xn, H, 1.0f, G(b->q_a), H, s->d_q_a, qr, a->attn_xn, H, P(b->q_a), H, N, H, qr);
    } else {
        fr_qlinear_backward(m, s->d_xn, H, 1.0f, G(b->q), H, s->dq, nh * dqk, a->attn_xn, H, P(b->q), H, N, H,
                        nh * dqk);
    }

    /* latent path */
    o->memset0(s->d_kv_a, (size_t)N * (kvr + rope) * sizeof(float));
    o->mla_kv_split_backward(s->dkv, s->d_kv_a + kvr, kvr + rope, s->dk, s->dv, N, nh, nope, rope, vd);
    o->rope_backward(s->d_kv_a, N, 1, kvr + rope, 0, kvr, rope, pos, m->rope_cos, m->rope_sin, c->rope_interleave);
    fr_qlinear_backward(m, s->d_kv_n, kvr, 0.0f, G(b->kv_b), kvr, s->dkv, nh * (nope + vd), a->kv_n, kvr, P(b->kv_b),
                    kvr, N, kvr, nh * (nope + vd));
    o->rmsnorm_backward(s->d_kv_a, kvr + rope, G(b->kv_a_norm), s->d_kv_n, a->kv_a, kvr + rope, P(b->kv_a_norm),
                        a->kv_rstd, N, kvr);
    fr_qlinear_backward(m, s->d_xn, H, 1.0f, G(b->kv_a), H, s->d_kv_a, kvr + rope, a->attn_xn, H, P(b->kv_a), H,
                    N, H, kvr + rope);
}

/* ---------------------------------------------------------------- SwiGLU MLP */

/* out[N,H] (beta: 0 overwrite / 1 accumulate) = W_down (silu(W_gate x) * W_up x) */
static void mlp_forward(fr_model *m, float *out, float beta, const float *x, const float *Wg, const float *Wu,
                        const float *Wd, float *g, float *u, float *h, int N, int H, int I) {
    const fr_ops *o = m->ops;
    fr_qlinear_forward(m, g, I, x, H, Wg, H, N, H, I, 0.0f);
    fr_qlinear_forward(m, u, I, x, H, Wu, H, N, H, I, 0.0f);
    o->swiglu_forward(h, g, u, (size_t)N * I);
    fr_qlinear_forward(m, out, H, h, I, Wd, I, N, I, H, beta);
}

/* dx[N,H] += d(out)/dx · dout; parameter gradients accumulate */
static void mlp_backward(fr_model *m, float *dx, const float *dout, const float *x, const float *Wg,
                         const float *Wu, const float *Wd, float *dWg, float *dWu, float *dWd, const float *g,
                         const float *u, const float *h, float *dg, float *du, float *dh, int N, int H, int I) {
    const fr_ops *o = m->ops;
    fr_qlinear_backward(m, dh, I, 0.0f, dWd, I, dout, H, h, I, Wd, I, N, I, H);
    o->swiglu_backward(dg, du, dh, g, u, (size_t)N * I);
    fr_qlinear_backward(m, dx, H, 1.0f, dWg, H, dg, I, x, H, Wg, H, N, H, I);
    fr_qlinear_backward(m, dx, H, 1.0f, dWu, H, du, I, x, H, Wu, H, N, H, I);
}

/* ---------------------------------------------------------------- DeepSeekMoE */

fr_route_params fr_route_params_of(const fr_config *c) {
    fr_route_params p = {
        .n_experts = c->n_routed_experts,
        .top_k = c->num_experts_per_tok,
        .n_group = c->n_group,
        .topk_group = c->topk_group,
        .method = (int)c->topk_method,
        .scoring = (int)c->scoring_func,
        .norm_topk_prob = c->norm_topk_prob,
        .routed_scaling_factor = c->routed_scaling_factor,
    };
    return p;
}

/* The routed experts' GEMMs of one kind. For expert e over its cnt_e tokens (rows off_e ..
 * off_e + cnt_e of the token-sorted buffers):
 *   kind FWD:  Y_e[cnt, out] = X_e W_e^T           (beta 0)
 *   kind DX:   dX_e[cnt, in] (beta)= dY_e W_e
 *   kind DW:   dW_e[out, in] += dY_e^T X_e
 * Up to two weight sets (W1 / W2 with their own X / Y) go in the same call. In FP32 they are
 * one grouped call (fr_ops.gemm_grouped: one parallel region); bf16 and fp8, whose GEMM paths
 * keep one scratch per call, and FP32 without memory for the group's list, run them one
 * expert at a time through fr_qlinear's halves: the same products either way. */
enum { EXPERTS_FWD, EXPERTS_DX, EXPERTS_DW };

typedef struct {
    float *y;        /* FWD: output rows; DX: dX rows; DW: dW of expert 0 */
    const float *x;  /* FWD: input rows; DX: dY rows; DW: dY rows */
    const float *x2; /* DW: the X rows */
    const float *w;  /* FWD / DX: W of expert 0 */
    int ldy, ldx, ldx2;
} expert_operands;

/* Which expert's rows lie where: segment k (rows offsets[k] .. offsets[k+1]) goes to expert
 * first + k % per_group. Locally the segments are the experts themselves; an expert-parallel
 * owner's are (source rank, local expert) pairs. */
typedef struct {
    const int *offsets;
    int n_seg, first, per_group;
} expert_rows;

static expert_rows local_rows(const fr_block_acts *a, int E) { return (expert_rows){a->offsets, E, 0, E}; }

/* The adapters of the experts a call covered, after the base products (which may overwrite) */
static void experts_lora(fr_model *m, const expert_rows *rows, size_t expert_numel, int kind, const expert_operands *ops,
                         int n_ops) {
    for (int k = 0; k < n_ops; k++) {
        const expert_operands *p = &ops[k];
        const float *base0 = kind == EXPERTS_DW ? p->y - (m->grads - m->params) : p->w;
        for (int sgi = 0; sgi < rows->n_seg; sgi++) {
            const int off = rows->offsets[sgi], cnt = rows->offsets[sgi + 1] - off;
            const int e = rows->first + sgi % rows->per_group;
            const fr_lora_site *s = cnt > 0 ? fr_lora_find(m, (size_t)(base0 + e * expert_numel - m->params)) : NULL;
            if (!s) continue;
            const float *x = p->x + (size_t)off * p->ldx;
            if (kind == EXPERTS_FWD) fr_lora_forward(m, s, p->y + (size_t)off * p->ldy, p->ldy, x, p->ldx, cnt);
            else if (kind == EXPERTS_DX) fr_lora_backward_dx(m, s, p->y + (size_t)off * p->ldy, p->ldy, x, p->ldx, cnt);
            else fr_lora_backward_dw(m, s, x, p->ldx, p->x2 + (size_t)off * p->ldx2, p->ldx2, cnt);
        }
    }
}

static void experts_gemm(fr_model *m, const expert_rows *rows, size_t expert_numel, int kind, int in, int out,
                         float beta, const expert_operands *ops, int n_ops) {
    fr_gemm_desc *g = m->precision == FR_PREC_FP32 ? malloc((size_t)rows->n_seg * n_ops * sizeof *g) : NULL;
    /* one grouped call reads every expert's W of each operand at once: a quantized frozen base
     * dequantizes all of them, operand k into scratch slot k (qlinear does its own otherwise) */
    const float *wq[2] = {NULL, NULL};
    for (int k = 0; g && k < n_ops && kind != EXPERTS_DW; k++)
        if (!(wq[k] = fr_lora_weights(m, k, ops[k].w, (size_t)m->cfg.n_routed_experts * expert_numel))) {
            free(g);
            return;
        }
    int n = 0;
    for (int k = 0; k < n_ops; k++) {
        const expert_operands *p = &ops[k];
        for (int sgi = 0; sgi < rows->n_seg; sgi++) {
            const int off = rows->offsets[sgi], cnt = rows->offsets[sgi + 1] - off;
            if (cnt == 0) continue;
            const int e = rows->first + sgi % rows->per_group;
            const float *x = p->x + (size_t)off * p->ldx, *w = (g ? wq[k] : p->w) + e * expert_numel;
            if (kind == EXPERTS_FWD) {
                float *y = p->y + (size_t)off * p->ldy;
                if (g) g[n++] = (fr_gemm_desc){cnt, out, in, x, p->ldx, w, in, y, p->ldy};
                else fr_qlinear_forward(m, y, p->ldy, x, p->ldx, w, in, cnt, in, out, beta);
            } else if (kind == EXPERTS_DX) {
                float *dx = p->y + (size_t)off * p->ldy;
                if (g) g[n++] = (fr_gemm_desc){cnt, in, out, x, p->ldx, w, in, dx, p->ldy};
                else qlinear_backward_dx(m, dx, p->ldy, beta, x, p->ldx, w, in, cnt, in, out);
            } else {
                const float *x2 = p->x2 + (size_t)off * p->ldx2;
                float *dW = p->y + e * expert_numel;
                if (fr_lora_frozen(m, (size_t)(dW - m->grads))) continue;
                if (g) g[n++] = (fr_gemm_desc){out, in, cnt, x, p->ldx, x2, p->ldx2, dW, in};
                else qlinear_backward_dw(m, dW, in, x, p->ldx, x2, p->ldx2, cnt, in, out);
            }
        }
    }
    if (g && n > 0) m->ops->gemm_grouped(kind == EXPERTS_DW, kind == EXPERTS_FWD, 1.0f, beta, g, n);
    free(g);
    if (m->n_lora) experts_lora(m, rows, expert_numel, kind, ops, n_ops);
}

/* ---------------------------------------------------------------- expert parallelism
 *
 * The group's ranks each route their own tokens; the routing slots, sorted by expert, are
 * already grouped by owner (rank d owns experts d * Eh .. (d + 1) * Eh - 1, Eh = E / group),
 * so slot rows go to their owner in one all-to-all-v after the per-expert counts are swapped.
 * The owner runs its experts over everything it received, keeps those rows for the backward,
 * and sends the outputs back in the reverse exchange; the backward sends output gradients to
 * the owner and input gradients back the same way. A failure marks m->ep_failed (the forward
 * or backward then returns it) and leaves the pass's numbers meaningless. */

static void ep_fail(fr_model *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void ep_fail(fr_model *m, const char *fmt, ...) {
    if (m->ep_failed) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m->ep_error, sizeof m->ep_error, fmt, ap);
    va_end(ap);
    m->ep_failed = 1;
}

/* *buf holds at least n floats (grown with the backend's allocator); 0 when out of memory */
static int ep_grow(fr_model *m, float **buf, size_t *cap, size_t n) {
    if (*cap >= n && *buf) return 1;
    if (*buf) m->ops->free(*buf);
    *buf = m->ops->alloc((n > 0 ? n : 1) * sizeof(float));
    *cap = *buf ? n : 0;
    if (!*buf) ep_fail(m, "out of memory for %zu floats of expert-parallel rows", n);
    return *buf != NULL;
}

void fr_model_ep_free(fr_model *m) {
    if (m->ep_acts) {
        const int nb = m->cfg.num_hidden_layers + m->mtp_depth;
        for (int l = 0; l < nb; l++) {
            fr_ep_acts *x = &m->ep_acts[l];
            float *bufs[4] = {x->xr, x->gr, x->ur, x->hr};
            for (int k = 0; k < 4; k++)
                if (bufs[k]) m->ops->free(bufs[k]);
            free(x->seg);
        }
        free(m->ep_acts);
        m->ep_acts = NULL;
    }
    for (int k = 0; k < 3; k++) {
        if (m->ep_scr[k]) m->ops->free(m->ep_scr[k]);
        m->ep_scr[k] = NULL;
        m->ep_scr_cap[k] = 0;
    }
}

int fr_model_set_expert_parallel(fr_model *m, struct fr_comm *group) {
    fr_model_ep_free(m);
    m->ep_comm = NULL;
    m->ep_active = 0;
    if (!group || group->size == 1) return FR_OK;
    const int E = m->cfg.n_routed_experts, P = group->size;
    if (E == 0 || E % P != 0)
        return fr_error(FR_ERR_CONFIG, "expert parallelism over %d ranks needs n_routed_experts (%d) to be a multiple of %d",
                        P, E, P);
    const int nb = m->cfg.num_hidden_layers + m->mtp_depth;
    m->ep_acts = calloc((size_t)nb, sizeof *m->ep_acts);
    if (!m->ep_acts) return fr_error(FR_ERR_NOMEM, "out of memory");
    for (int l = 0; l < nb; l++) {
        fr_ep_acts *x = &m->ep_acts[l];
        /* seg [E + 1] (group x experts_here = E segments) and send / recv [P] in one block */
        x->seg = malloc((size_t)(E + 1) * sizeof(int) + 2 * (size_t)P * sizeof(size_t) + sizeof(size_t));
        if (!x->seg) {
            fr_model_ep_free(m);
            return fr_error(FR_ERR_NOMEM, "out of memory");
        }
        size_t *counts = (size_t *)(((uintptr_t)(x->seg + E + 1) + sizeof(size_t) - 1) & ~(uintptr_t)(sizeof(size_t) - 1));
        x->send = counts;
        x->recv = counts + P;
    }
    m->ep_comm = group;
    return FR_OK;
}

static int ep_on(const fr_model *m) { return m->ep_comm && m->ep_active; }

/* The rows the owners' experts see: segment (s, j) for this rank's Eh experts */
static expert_rows ep_rows(const fr_model *m, const fr_ep_acts *x) {
    const fr_comm *c = m->ep_comm;
    const int Eh = m->cfg.n_routed_experts / c->size;
    return (expert_rows){x->seg, c->size * Eh, c->rank * Eh, Eh};
}

/* Forward: a->xe (slot rows sorted by expert) to the owners, their expert MLPs, a->ye back. */
static void ep_forward(fr_model *m, const fr_block *b, fr_block_acts *a, fr_ep_acts *x) {
    fr_comm *c = m->ep_comm;
    const fr_config *cf = &m->cfg;
    const int E = cf->n_routed_experts, P = c->size, Eh = E / P, H = cf->hidden_size, Im = cf->moe_intermediate_size;
    float *cnt = malloc(2 * (size_t)E * sizeof(float));
    size_t *per = malloc((size_t)P * sizeof(size_t));
    if (!cnt || !per) {
        free(cnt), free(per);
        ep_fail(m, "out of memory");
        return;
    }
    /* 1. per-expert row counts to each owner (exact in FP32 below 2^24 rows) */
    for (int e = 0; e < E; e++) cnt[e] = (float)(a->offsets[e + 1] - a->offsets[e]);
    for (int d = 0; d < P; d++) per[d] = (size_t)Eh;
    if (fr_comm_alltoallv(c, cnt + E, per, cnt, per) != FR_OK) {
        ep_fail(m, "%s", fr_last_error());
        free(cnt), free(per);
        return;
    }
    x->seg[0] = 0;
    for (int k = 0; k < E; k++) x->seg[k + 1] = x->seg[k] + (int)cnt[E + k];
    x->rows = x->seg[E];
    for (int d = 0; d < P; d++) {
        x->send[d] = (size_t)(a->offsets[(d + 1) * Eh] - a->offsets[d * Eh]) * H;
        x->recv[d] = (size_t)(x->seg[(d + 1) * Eh] - x->seg[d * Eh]) * H;
    }
    free(cnt), free(per);
    const size_t R = (size_t)x->rows;
    if (x->cap_rows < R || !x->xr) {
        size_t caps[4] = {0, 0, 0, 0};
        float **bufs[4] = {&x->xr, &x->gr, &x->ur, &x->hr};
        for (int k = 0; k < 4; k++) {
            if (*bufs[k]) m->ops->free(*bufs[k]);
            *bufs[k] = NULL;
            if (!ep_grow(m, bufs[k], &caps[k], (R + 1) * (k == 0 ? H : Im))) return;
        }
        x->cap_rows = R + 1;
    }
    if (!ep_grow(m, &m->ep_scr[0], &m->ep_scr_cap[0], (R + 1) * H)) return;
    /* 2. the rows to their owners */
    if (fr_comm_alltoallv(c, x->xr, x->recv, a->xe, x->send) != FR_OK) {
        ep_fail(m, "%s", fr_last_error());
        return;
    }
    /* 3. this rank's experts over everything received */
    const expert_rows rows = ep_rows(m, x);
    const expert_operands gate_up[2] = {{x->gr, x->xr, NULL, P(b->exp_gate), Im, H, 0},
                                        {x->ur, x->xr, NULL, P(b->exp_up), Im, H, 0}};
    experts_gemm(m, &rows, b->exp_stride, EXPERTS_FWD, H, Im, 0.0f, gate_up, 2);
    m->ops->swiglu_forward(x->hr, x->gr, x->ur, R * Im);
    float *yr = m->ep_scr[0];
    const expert_operands down = {yr, x->hr, NULL, P(b->exp_down), H, Im, 0};
    experts_gemm(m, &rows, b->exp_stride, EXPERTS_FWD, Im, H, 0.0f, &down, 1);
    /* 4. the outputs back, into the sender's slot order */
    if (fr_comm_alltoallv(c, a->ye, x->send, yr, x->recv) != FR_OK) ep_fail(m, "%s", fr_last_error());
}

/* Backward: s->dye to the owners; their expert gradients; s->dxe back. */
static void ep_backward(fr_model *m, const fr_block *b, fr_ep_acts *x) {
    fr_comm *c = m->ep_comm;
    fr_scratch *s = &m->scr;
    const fr_config *cf = &m->cfg;
    const int H = cf->hidden_size, Im = cf->moe_intermediate_size;
    const size_t R = (size_t)x->rows;
    if (!ep_grow(m, &m->ep_scr[0], &m->ep_scr_cap[0], (R + 1) * H) ||
        !ep_grow(m, &m->ep_scr[1], &m->ep_scr_cap[1], (R + 1) * H) ||
        !ep_grow(m, &m->ep_scr[2], &m->ep_scr_cap[2], 3 * (R + 1) * Im))
        return;
    float *dyr = m->ep_scr[0], *dxr = m->ep_scr[1];
    float *dhr = m->ep_scr[2], *dgr = dhr + (R + 1) * Im, *dur = dgr + (R + 1) * Im;
    if (fr_comm_alltoallv(c, dyr, x->recv, s->dye, x->send) != FR_OK) {
        ep_fail(m, "%s", fr_last_error());
        return;
    }
    const expert_rows rows = ep_rows(m, x);
    const expert_operands d_down_x = {dhr, dyr, NULL, P(b->exp_down), Im, H, 0};
    const expert_operands d_down_w = {G(b->exp_down), dyr, x->hr, NULL, 0, H, Im};
    experts_gemm(m, &rows, b->exp_stride, EXPERTS_DX, Im, H, 0.0f, &d_down_x, 1);
    experts_gemm(m, &rows, b->exp_stride, EXPERTS_DW, Im, H, 1.0f, &d_down_w, 1);
    m->ops->swiglu_backward(dgr, dur, dhr, x->gr, x->ur, R * Im);
    const expert_operands d_gate_x = {dxr, dgr, NULL, P(b->exp_gate), H, Im, 0};
    const expert_operands d_up_x = {dxr, dur, NULL, P(b->exp_up), H, Im, 0};
    const expert_operands d_gate_up_w[2] = {{G(b->exp_gate), dgr, x->xr, NULL, 0, Im, H},
                                            {G(b->exp_up), dur, x->xr, NULL, 0, Im, H}};
    experts_gemm(m, &rows, b->exp_stride, EXPERTS_DX, H, Im, 0.0f, &d_gate_x, 1);
    experts_gemm(m, &rows, b->exp_stride, EXPERTS_DX, H, Im, 1.0f, &d_up_x, 1);
    experts_gemm(m, &rows, b->exp_stride, EXPERTS_DW, H, Im, 1.0f, d_gate_up_w, 2);
    if (fr_comm_alltoallv(c, s->dxe, x->send, dxr, x->recv) != FR_OK) ep_fail(m, "%s", fr_last_error());
}

static void moe_forward(fr_model *m, const fr_block *b, fr_block_acts *a, int N, float *out) {
    const fr_ops *o = m->ops;
    const fr_config *c = &m->cfg;
    const int H = c->hidden_size, E = c->n_routed_experts, K = c->num_experts_per_tok;
    const int Im = c->moe_intermediate_size;
    const size_t expert_numel = b->exp_stride;
    fr_route_params rp = fr_route_params_of(c);

    /* router in FP32: logits -> scores -> top-k experts and their gate weights */
    float *router_logits = m->scr.dlogits_r;
    fr_linear_forward(o, router_logits, E, a->ffn_xn, H, P(b->router), H, N, H, E, 0.0f);
    o->moe_route_forward(a->topk_idx, a->topk_w, a->scores, router_logits,
                         b->router_bias != FR_NONE ? P(b->router_bias) : NULL, N, &rp);

    /* dropless: sort routing slots by expert, one GEMM per expert over its tokens */
    o->moe_permute(a->perm_token, a->slot_pos, a->offsets, a->topk_idx, N, K, E);
    o->moe_dispatch_forward(a->xe, a->ffn_xn, a->perm_token, N * K, H);
    if (ep_on(m)) {
        ep_forward(m, b, a, &m->ep_acts[b - m->blocks]);
    } else {
        const expert_rows rows = local_rows(a, E);
        const expert_operands gate_up[2] = {{a->ge, a->xe, NULL, P(b->exp_gate), Im, H, 0},
                                            {a->ue, a->xe, NULL, P(b->exp_up), Im, H, 0}};
        experts_gemm(m, &rows, expert_numel, EXPERTS_FWD, H, Im, 0.0f, gate_up, 2);
        o->swiglu_forward(a->he, a->ge, a->ue, (size_t)N * K * Im);
        const expert_operands down = {a->ye, a->he, NULL, P(b->exp_down), H, Im, 0};
        experts_gemm(m, &rows, expert_numel, EXPERTS_FWD, Im, H, 0.0f, &down, 1);
    }
    o->memset0(out, (size_t)N * H * sizeof(float));
    o->moe_combine_forward(out, a->ye, a->topk_w, a->slot_pos, N, K, H);

    /* shared experts see every token */
    if (b->mlp_inter > 0)
        mlp_forward(m, out, 1.0f, a->ffn_xn, P(b->mlp_gate), P(b->mlp_up), P(b->mlp_down), a->g, a->u, a->h, N, H,
                    b->mlp_inter);
}

/* d_xn (+=) from dout [N,H]; bal_scale > 0 adds the balance-loss gradient
 * (grad of bal_scale * sum_b L_b) to the router. */
static void moe_backward(fr_model *m, const fr_block *b, fr_block_acts *a, int B, int T, const float *dout,
                         float bal_scale) {
    const fr_ops *o = m->ops;
    const fr_config *c = &m->cfg;
    fr_scratch *s = &m->scr;
    const int N = B * T, H = c->hidden_size, E = c->n_routed_experts, K = c->num_experts_per_tok;
    const int Im = c->moe_intermediate_size;
    const size_t expert_numel = b->exp_stride;
    fr_route_params rp = fr_route_params_of(c);

    if (b->mlp_inter > 0)
        mlp_backward(m, s->d_xn, dout, a->ffn_xn, P(b->mlp_gate), P(b->mlp_up), P(b->mlp_down), G(b->mlp_gate),
                     G(b->mlp_up), G(b->mlp_down), a->g, a->u, a->h, s->dg, s->du, s->dh, N, H, b->mlp_inter);

    o->moe_combine_backward(s->dye, s->dtopk_w, dout, a->ye, a->topk_w, a->slot_pos, N, K, H);
    if (ep_on(m)) {
        ep_backward(m, b, &m->ep_acts[b - m->blocks]);
    } else {
        /* the gate's and up's input gradients add into the same dX: two calls, one after the other */
        const expert_rows rows = local_rows(a, E);
        const expert_operands d_down_x = {s->dhe, s->dye, NULL, P(b->exp_down), Im, H, 0};
        const expert_operands d_down_w = {G(b->exp_down), s->dye, a->he, NULL, 0, H, Im};
        experts_gemm(m, &rows, expert_numel, EXPERTS_DX, Im, H, 0.0f, &d_down_x, 1);
        experts_gemm(m, &rows, expert_numel, EXPERTS_DW, Im, H, 1.0f, &d_down_w, 1);
        o->swiglu_backward(s->dge, s->due, s->dhe, a->ge, a->ue, (size_t)N * K * Im);
        const expert_operands d_gate_x = {s->dxe, s->dge, NULL, P(b->exp_gate), H, Im, 0};
        const expert_operands d_up_x = {s->dxe, s->due, NULL, P(b->exp_up), H, Im, 0};
        const expert_operands d_gate_up_w[2] = {{G(b->exp_gate), s->dge, a->xe, NULL, 0, Im, H},
                                                {G(b->exp_up), s->due, a->xe, NULL, 0, Im, H}};
        experts_gemm(m, &rows, expert_numel, EXPERTS_DX, H, Im, 0.0f, &d_gate_x, 1);
        experts_gemm(m, &rows, expert_numel, EXPERTS_DX, H, Im, 1.0f, &d_up_x, 1);
        experts_gemm(m, &rows, expert_numel, EXPERTS_DW, H, Im, 1.0f, d_gate_up_w, 2);
    }
    o->moe_dispatch_backward(s->d_xn, s->dxe, a->slot_pos, N, K, H);

    /* router: gate weights (and optionally the balance loss) -> router logits -> x */
    const float *extra = NULL;
    if (bal_scale > 0.0f) {
        o->memset0(s->dscores, (size_t)N * E * sizeof(float));
        o->moe_balance_loss(m->bal_loss, s->dscores, a->scores, a->topk_idx, B, T, E, K, bal_scale);
        extra = s->dscores;
    }
    o->moe_route_backward(s->dlogits_r, s->dtopk_w, extra, a->scores, a->topk_idx, N, &rp);
    fr_linear_backward(o, s->d_xn, H, 1.0f, fr_lora_frozen(m, b->router) ? NULL : G(b->router), H, s->dlogits_r, E,
                       a->ffn_xn, H, P(b->router), H, N, H, E);
}

/* ---------------------------------------------------------------- the block */

void fr_block_forward(fr_model *m, const fr_block *b, fr_block_acts *a, int B, int T, const int *pos) {
    const fr_ops *o = m->ops;
    const fr_config *c = &m->cfg;
    const int N = B * T, H = c->hidden_size;

    o->rmsnorm_forward(a->attn_xn, a->attn_rstd, a->x_in, H, P(b->input_norm), N, H, c->rms_norm_eps);
    mla_forward(m, b, a, B, T, pos);
    /* x_mid = x_in + o_proj(att) */
    o->copy(a->x_mid, a->x_in, (size_t)N * H * sizeof(float));
    fr_qlinear_forward(m, a->x_mid, H, a->att, c->num_attention_heads * c->v_head_dim, P(b->o),
                   c->num_attention_heads * c->v_head_dim, N, c->num_attention_heads * c->v_head_dim, H, 1.0f);

    o->rmsnorm_forward(a->ffn_xn, a->ffn_rstd, a->x_mid, H, P(b->post_norm), N, H, c->rms_norm_eps);
    if (b->is_moe) {
        moe_forward(m, b, a, N, a->out);
        o->add(a->out, a->out, a->x_mid, (size_t)N * H);
    } else {
        o->copy(a->out, a->x_mid, (size_t)N * H * sizeof(float));
        mlp_forward(m, a->out, 1.0f, a->ffn_xn, P(b->mlp_gate), P(b->mlp_up), P(b->mlp_down), a->g, a->u, a->h, N,
                    H, b->mlp_inter);
    }
}

void fr_block_backward(fr_model *m, const fr_block *b, fr_block_acts *a, int B, int T, const int *pos,
                       float *d_res, float bal_scale) {
    const fr_ops *o = m->ops;
    const fr_config *c = &m->cfg;
    fr_scratch *s = &m->scr;
    const int N = B * T, H = c->hidden_size;

    /* FFN branch: d_res holds d(out); afterwards d(x_mid) */
    o->memset0(s->d_xn, (size_t)N * H * sizeof(float));
    if (b->is_moe)
        moe_backward(m, b, a, B, T, d_res, bal_scale);
    else
        mlp_backward(m, s->d_xn, d_res, a->ffn_xn, P(b->mlp_gate), P(b->mlp_up), P(b->mlp_down), G(b->mlp_gate),
                     G(b->mlp_up), G(b->mlp_down), a->g, a->u, a->h, s->dg, s->du, s->dh, N, H, b->mlp_inter);
    o->rmsnorm_backward(d_res, H, G(b->post_norm), s->d_xn, a->x_mid, H, P(b->post_norm), a->ffn_rstd, N, H);

    /* attention branch: afterwards d_res holds d(x_in) */
    mla_backward(m, b, a, B, T, pos, d_res);
    o->rmsnorm_backward(d_res, H, G(b->input_norm), s->d_xn, a->x_in, H, P(b->input_norm), a->attn_rstd, N, H);
}
