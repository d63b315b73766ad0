/*
 * ops.h — the operations interface between the model and a compute backend.
 *
 * The model (model.c, layers) is written once against this table; the CPU backend
 * (ops_cpu.c) implements it, and a CUDA backend can implement it later without touching
 * the model. All pointers to float/int arrays are *device* pointers of the backend
 * (host memory for the CPU backend) unless a parameter says "host".
 *
 * Conventions
 *  - Row-major everywhere. A linear layer's weight W is [out, in] (Hugging Face layout),
 *    so y = x W^T.
 *  - Forward ops overwrite their outputs.
 *  - Backward ops OVERWRITE input gradients unless the comment says "+=", and always
 *    ACCUMULATE (+=) into parameter gradients (so micro-batches can accumulate).
 *  - N = number of rows (tokens), D = row width.
 *  - Everything computes and accumulates in FP32 (gemm_bf16 and fp8_quantize round the
 *    inputs of the mixed-precision GEMMs, never the accumulation).
 */
#ifndef FR_OPS_H
#define FR_OPS_H

#include <stddef.h>
#include <stdint.h>

/* Parameters of DeepSeekMoE routing (mirrors the config). */
typedef struct {
    int n_experts;          /* E */
    int top_k;              /* K */
    int n_group;            /* expert groups (1 = none) */
    int topk_group;         /* groups kept */
    int method;             /* fr_topk_method */
    int scoring;            /* fr_scoring */
    int norm_topk_prob;
    float routed_scaling_factor;
} fr_route_params;

/* One product of a grouped GEMM (fr_ops.gemm_grouped). */
typedef struct fr_gemm_desc {
    int M, N, K;
    const float *A;
    int lda;
    const float *B;
    int ldb;
    float *C;
    int ldc;
} fr_gemm_desc;

/* One AdamW step's constants for a span of parameters (model/optim.c): the moments' decay
 * rates, epsilon, the factor folded into every gradient, the bias-corrected step size,
 * 1 / sqrt(1 - beta2^t), and the span's weight-decay factor (1 - lr * wd, or 1). */
typedef struct {
    float b1, b2, eps, grad_scale, step_size, inv_sqrt_bc2, decay;
} fr_adamw_step_consts;

typedef struct fr_ops {
    const char *name;
    int host_memory;   /* 1: device pointers are host pointers (no copies needed to read them) */

    /* ---- memory */
    void *(*alloc)(size_t bytes);                 /* zero-filled, 64-byte aligned; NULL on failure */
    void (*free)(void *p);
    void (*memset0)(void *p, size_t bytes);
    void (*copy)(void *dst, const void *src, size_t bytes);        /* device -> device */
    void (*to_host)(void *host, const void *src, size_t bytes);    /* device -> host */
    void (*to_device)(void *dst, const void *host, size_t bytes);  /* host -> device */

    /* ---- matrix multiply
     * C[M,N] = alpha * op(A)[M,K] · op(B)[K,N] + beta * C.
     * op(A) = A (A stored [M,K], lda >= K) or A^T if transA (A stored [K,M], lda >= M).
     * op(B) = B (B stored [K,N], ldb >= N) or B^T if transB (B stored [N,K], ldb >= K).
     * beta == 0 means C is not read (may hold garbage/NaN).
     * Linear layer: forward   gemm(0,1, N,out,in, 1, x,in, W,in, 0, y,out)
     *               d input   gemm(0,0, N,in,out, 1, dy,out, W,in, 0, dx,in)
     *               d weight  gemm(1,0, out,in,N, 1, dy,out, x,in, 1, dW,in) */
    void (*gemm)(int transA, int transB, int M, int N, int K, float alpha,
                 const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc);

    /* ---- grouped matrix multiply: n independent products C_i = alpha op(A_i) op(B_i) + beta C_i
     * with the transposes, alpha and beta of gemm's contract and each its own shape (M, N or K
     * may be 0: then C_i = beta C_i, or nothing if M or N is 0). The C_i must not overlap. A
     * backend may run them concurrently (CPU: one parallel region, a product per thread at a
     * time): the MoE experts' GEMMs of one kind in one call instead of one call per expert. */
    void (*gemm_grouped)(int transA, int transB, float alpha, float beta, const struct fr_gemm_desc *g, int n);

    /* ---- BF16 matrix multiply for mixed-precision training: the contract of gemm, with
     * op(A) and op(B) rounded to bfloat16 (round to nearest even) and the products
     * accumulated in FP32 (AMX / AVX512-BF16 through oneDNN where the CPU has them, an exact
     * emulation elsewhere: cpu/bf16_gemm.c). Returns 0, or non-zero when it could not run
     * (out of memory): C is then unspecified and the caller must fail. */
    int (*gemm_bf16)(int transA, int transB, int M, int N, int K, float alpha,
                     const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc);

    /* ---- FP8 (E4M3) quantize-dequantize in scaled tiles, the quantizer of DeepSeek-V3's FP8
     * training recipe (shared/design.md section 3): x [rows, cols] (row stride ldx) is cut
     * into tiles of tile_rows x tile_cols (the last ones in each direction may be partial;
     * activations 1 x 128, weights 128 x 128, activations for the weight gradient 128 x 1).
     * Each tile gets the scale s = max(amax, 1e-4) / 448 and every value becomes
     * e4m3(x / s) * s (round to nearest even, formats/numfmt.h), written to y (row stride
     * ldy; y == x with ldy == ldx is allowed). scales [ceil(rows / tile_rows), ceil(cols /
     * tile_cols)] receives s when not NULL. A GEMM over quantized operands then reproduces the
     * recipe's products with FP32 accumulation. Returns the number of non-finite inputs (a
     * NaN or Inf makes the tile's scale meaningless: the caller must fail). */
    long (*fp8_quantize)(float *y, int ldy, float *scales, const float *x, int ldx, int rows, int cols,
                         int tile_rows, int tile_cols);

    /* ---- embedding: out[N,D] = table[tokens[n]];  backward: dtable[tokens[n]] += dout[n] */
    void (*embedding_forward)(float *out, const float *table, const int *tokens, int N, int D);
    void (*embedding_backward)(float *dtable, const float *dout, const int *tokens, int N, int D);

    /* ---- RMSNorm over rows of x (row stride ldx >= D):
     * y[N,D] = x / sqrt(mean(x^2) + eps) * w;  rstd[N] saved for backward.
     * backward: dx[n, 0:D] (row stride lddx) += ...;  dw[D] += ... */
    void (*rmsnorm_forward)(float *y, float *rstd, const float *x, int ldx, const float *w,
                            int N, int D, float eps);
    void (*rmsnorm_backward)(float *dx, int lddx, float *dw, const float *dy, const float *x, int ldx,
                             const float *w, const float *rstd, int N, int D);

    /* ---- rotary embedding, in place, on rope_dim values starting at column `offset` of
     * each of n_heads head-slices of each row: element (n, h, offset + j) lives at
     * x[n*row_stride + h*head_stride + offset + j].
     * Position of row n = pos[n] (host-visible int array on CPU; device array otherwise).
     * cos/sin tables are [max_pos, rope_dim/2] (attention scaling folded in).
     * interleave=1: rotates pairs (2i, 2i+1) by angle i; 0: pairs (i, i + rope_dim/2).
     * backward applies the transposed rotation (in place on the gradient). */
    void (*rope_forward)(float *x, int N, int n_heads, int row_stride, int head_stride, int offset,
                         int rope_dim, const int *pos, const float *cos_table,
                         const float *sin_table, int interleave);
    void (*rope_backward)(float *dx, int N, int n_heads, int row_stride, int head_stride, int offset,
                          int rope_dim, const int *pos, const float *cos_table,
                          const float *sin_table, int interleave);

    /* ---- causal softmax attention over B sequences of T tokens, H heads.
     * q, k: [B*T, H, dqk] contiguous; v: [B*T, H, dv]; out: [B*T, H*dv];
     * lse: [B, H, T] log-sum-exp of the scaled scores (saved for backward).
     * scores = q·k * scale, key t' <= query t.
     * backward: overwrites dq, dk, dval (shapes of q, k, v). */
    void (*attention_forward)(float *out, float *lse, const float *q, const float *k, const float *v,
                              int B, int T, int H, int dqk, int dv, float scale);
    void (*attention_backward)(float *dq, float *dk, float *dval, const float *dout, const float *out,
                               const float *lse, const float *q, const float *k, const float *v,
                               int B, int T, int H, int dqk, int dv, float scale);

    /* ---- MLA: split kv_b output and broadcast the shared rope key.
     * kv: [N, H, nope + vd] (kv_b_proj output); k_pe: rows of stride ld_kpe, rope values
     * (already rotated). Produces k: [N, H, nope + rope] = [k_nope | k_pe] and v: [N, H, vd].
     * backward: dkv (overwrite) and dk_pe (overwrite, rows of stride ld_kpe, sum over heads). */
    void (*mla_kv_split_forward)(float *k, float *v, const float *kv, const float *k_pe, int ld_kpe,
                                 int N, int H, int nope, int rope, int vd);
    void (*mla_kv_split_backward)(float *dkv, float *dk_pe, int ld_kpe, const float *dk, const float *dv,
                                  int N, int H, int nope, int rope, int vd);

    /* ---- MLA's absorbed decode attention (the inference engine, src/infer/engine_device.c):
     * N query rows of one sequence attend to its latent cache, rows [c_t | k_pe_t] of `row`
     * floats (row = kv_lora_rank + qk_rope_head_dim). For row n and head h, over keys
     * t = 0 .. pos[n]:
     *   p_t = softmax_t(scale * qf[n,h,:] . cache[t,:]),   ctx[n,h,:] = sum_t p_t cache[t, 0:kvr]
     * qf [N, n_heads, row] (the absorbed query [W_UK[h]^T q_nope | q_pe]); ctx [N, n_heads, kvr];
     * pos [N] (device); max_keys (host) >= every pos[n] + 1 (the longest row's key count). */
    void (*latent_attention)(float *ctx, const float *qf, const float *cache, const int *pos, int N, int n_heads,
                             int row, int kvr, int max_keys, float scale);

    /* ---- strided copy in backend memory: dst[r*ldd + c] = src[r*lds + c], r < rows, c < cols */
    void (*copy2d)(float *dst, int ldd, const float *src, int lds, int rows, int cols);

    /* ---- SwiGLU: h = silu(g) * u elementwise over n values. */
    void (*swiglu_forward)(float *h, const float *g, const float *u, size_t n);
    void (*swiglu_backward)(float *dg, float *du, const float *dh, const float *g, const float *u, size_t n);

    /* ---- elementwise */
    void (*add)(float *y, const float *a, const float *b, size_t n);   /* y = a + b (y may alias) */
    void (*axpy)(float *y, float alpha, const float *x, size_t n);     /* y += alpha * x */

    /* ---- cross-entropy over rows of logits [N, V].
     * losses[n] = logsumexp(logits[n]) - logits[n, targets[n]], 0 for ignored rows
     * (targets[n] < 0). If dlogits is non-NULL it receives (softmax - onehot) * grad_scale
     * for non-ignored rows and 0 for ignored ones; dlogits may alias logits. */
    void (*cross_entropy)(float *losses, float *dlogits, const float *logits, const int *targets,
                          int N, int V, float grad_scale);

    /* ---- DeepSeekMoE router (FP32).
     * logits [N, E] (x · gate^T) -> scores [N, E] (sigmoid or softmax), chosen experts
     * topk_idx [N, K] and gate weights topk_w [N, K]. Selection uses scores + bias (bias
     * may be NULL), group-limited as p->method says; masked groups are filled with 0.0
     * as transformers does. Weights use the unbiased scores, normalised over the K chosen
     * (+1e-20) if norm_topk_prob, times routed_scaling_factor. */
    void (*moe_route_forward)(int *topk_idx, float *topk_w, float *scores, const float *logits,
                              const float *bias, int N, const fr_route_params *p);
    /* dlogits [N,E] (overwrite) from dtopk_w [N,K] plus optional extra gradient on the
     * scores dscores_extra [N,E] (e.g. from the balance loss; may be NULL). */
    void (*moe_route_backward)(float *dlogits, const float *dtopk_w, const float *dscores_extra,
                               const float *scores, const int *topk_idx, int N, const fr_route_params *p);

    /* ---- sequence-wise balance loss (DeepSeek-V3 eq. 17-20) for B sequences of T tokens:
     * per sequence, f_i = E/(K T) * #{t : i in topk(t)}, P_i = 1/T sum_t s_it / sum_j s_jt,
     * L_seq = sum_i f_i P_i; loss_per_seq[B] (device) gets L_seq.
     * If dscores is non-NULL it receives (+=) d(grad_scale * sum_b L_b)/d scores. */
    void (*moe_balance_loss)(float *loss_per_seq, float *dscores, const float *scores,
                             const int *topk_idx, int B, int T, int E, int K, float grad_scale);

    /* ---- dropless expert dispatch. Routing slots (n, k) are sorted by expert.
     * perm_token[NK]: token of sorted slot i; slot_pos[N*K]: sorted position of slot (n,k);
     * expert_offsets[E+1] (HOST array): sorted slots of expert e are [off[e], off[e+1]).
     * Built from topk_idx (device) by moe_permute, stable by (expert, token, k). */
    void (*moe_permute)(int *perm_token, int *slot_pos, int *expert_offsets_host,
                        const int *topk_idx, int N, int K, int E);
    /* xe[i] = x[perm_token[i]] for i < N*K;  backward: dx[n] += sum_k dxe[slot_pos[n*K+k]] */
    void (*moe_dispatch_forward)(float *xe, const float *x, const int *perm_token, int NK, int D);
    void (*moe_dispatch_backward)(float *dx, const float *dxe, const int *slot_pos, int N, int K, int D);
    /* out[n] += sum_k topk_w[n,k] * ye[slot_pos[n*K+k]]
     * backward: dye[slot_pos[n,k]] = topk_w[n,k] * dout[n] (overwrite),
     *           dtopk_w[n,k] = dout[n] · ye[slot_pos[n,k]] (overwrite) */
    void (*moe_combine_forward)(float *out, const float *ye, const float *topk_w, const int *slot_pos,
                                int N, int K, int D);
    void (*moe_combine_backward)(float *dye, float *dtopk_w, const float *dout, const float *ye,
                                 const float *topk_w, const int *slot_pos, int N, int K, int D);

    /* ---- the optimizer in the backend's memory. NULL on the CPU backend, whose memory the
     * host reads directly (model/optim.c loops over it); a device backend that lacks them gets
     * host round trips instead. adamw: p[0:n] moved by AdamW with gradients g and moments
     * mom / var (floats, or BF16 codes when moments_bf16), all in backend memory, with
     * model/optim.c's arithmetic. sumsq_chunks: partial[c] (backend memory) = the sum of x^2
     * over chunk c of x[0:n] (chunks of `chunk`), in double and in order. */
    void (*adamw)(float *p, const float *g, void *mom, void *var, int moments_bf16, size_t n,
                  fr_adamw_step_consts k);
    void (*sumsq_chunks)(double *partial, const float *x, size_t n, size_t chunk);
} fr_ops;

/* The CPU backend (OpenMP threads, SIMD chosen at run time). */
const fr_ops *fr_ops_cpu(void);

#endif /* FR_OPS_H */
