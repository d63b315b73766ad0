/*
 * model_internal.h — the model's private data structures (shared by model.c and the
 * layer files; not installed).
 *
 * Memory: two planned allocations on the backend's device, one computed from the config
 * (parameters and gradients), one from the token capacity N = B*T (activations):
 *   params  — every tensor of the Hugging Face checkpoint, addressed by name
 *   grads   — same layout as params, in the same allocation right after them
 *   acts    — everything the forward keeps for the backward, plus backward scratch
 * A tensor is located by its float offset into params/grads (FR_NONE when absent).
 */
#ifndef FR_MODEL_INTERNAL_H
#define FR_MODEL_INTERNAL_H

#include "frugal.h"
#include "core/internal.h"
#include "model/ops.h"

#define FR_NONE ((size_t)-1)
#define FR_MAX_MTP 8

typedef struct {
    char name[112];
    int ndim;
    int64_t shape[4];
    size_t offset;   /* floats into params / grads */
    size_t numel;
    int no_decay;    /* norms and biases: no weight decay */
    int trainable;   /* 0 for e_score_correction_bias (updated by the balancer, not by gradients) */
    int expert;      /* routed expert this matrix belongs to, -1 for every other tensor */
    int router;      /* 1 for a MoE block's router weight (mlp.gate.weight): its own learning rate */
} fr_tensor;

/* Offsets of one decoder block's tensors (main layers and MTP blocks alike). */
typedef struct {
    int index;        /* layer index in tensor names */
    int is_moe;
    size_t input_norm, post_norm;
    size_t q_a, q_a_norm, q_b, q;          /* q_lora path or plain q_proj */
    size_t kv_a, kv_a_norm, kv_b, o;
    size_t mlp_gate, mlp_up, mlp_down;     /* dense MLP, or the shared experts of a MoE layer */
    int mlp_inter;                         /* width of that MLP (0 = none) */
    size_t router, router_bias;            /* [E,H], [E] */
    size_t exp_gate, exp_up, exp_down;     /* expert e at base + e * exp_stride */
    size_t exp_stride;                     /* floats between consecutive experts' matrices */
    /* MTP module extras */
    size_t enorm, hnorm, eh_proj, head_norm;
    size_t arena_lo;                       /* where the block's tensors start in the arena (they
                                              run up to the next block's arena_lo) */
} fr_block;

/* Activations of one block for one forward (pointers into the activation arena). */
typedef struct {
    float *x_in;                        /* [N,H] block input (residual stream) */
    float *attn_xn, *attn_rstd;         /* [N,H], [N] */
    float *q_a, *q_a_rstd, *q_a_n;      /* [N,qr], [N], [N,qr] (q_lora only) */
    float *q;                           /* [N, nh*dqk], rope part rotated */
    float *kv_a;                        /* [N, kvr+rope], rope part rotated */
    float *kv_n, *kv_rstd;              /* [N,kvr], [N] */
    float *k, *v;                       /* [N,nh,dqk], [N,nh,dv] */
    float *att, *lse;                   /* [N, nh*dv], [B,nh,T] */
    float *x_mid;                       /* [N,H] after the attention residual */
    float *ffn_xn, *ffn_rstd;           /* [N,H], [N] */
    float *g, *u, *h;                   /* [N, mlp_inter]: dense MLP or shared experts */
    float *scores;                      /* [N,E] router scores */
    int *topk_idx;                      /* [N,K] */
    float *topk_w;                      /* [N,K] */
    int *perm_token, *slot_pos;         /* [N*K] */
    int *offsets;                       /* [E+1] host */
    float *xe, *ge, *ue, *he, *ye;      /* [NK,H], [NK,Im] x3, [NK,H] */
    float *out;                         /* [N,H] block output (residual stream) */
} fr_block_acts;

/* Expert parallelism, the owner's side of one MoE block: the rows the group sent to this
 * rank's experts, kept from the forward for the backward. Segment k = s * experts_here + j
 * holds the rows source rank s sent to local expert j (rows seg[k] .. seg[k+1]). */
typedef struct {
    int rows;                           /* R, rows received */
    int *seg;                           /* [group * experts_here + 1] */
    size_t *send, *recv;                /* [group] values sent to / received from each rank */
    float *xr, *gr, *ur, *hr;           /* [R,H], [R,Im] x3 */
    size_t cap_rows;
} fr_ep_acts;

/* Backward scratch shared by all blocks (sized for the largest). */
typedef struct {
    float *d_xn;                        /* [N,H] gradient w.r.t. a norm output */
    float *d_att, *dq, *dk, *dv, *dkv;  /* attention */
    float *d_kv_a, *d_kv_n, *d_q_a, *d_q_a_n;
    float *dg, *du, *dh;                /* [N, max mlp width] */
    float *dtopk_w, *dscores, *dlogits_r;
    float *dye, *dge, *due, *dhe, *dxe;
    float *d_en, *d_hn;                 /* MTP: [N,H] */
} fr_scratch;

/* One MTP module's activations: sequence length T - k. */
typedef struct {
    int T;                              /* T_k = T - k */
    int n_targets;
    float *emb, *en, *e_rstd;           /* [Nk,H] */
    float *h_in, *hn, *h_rstd;          /* [Nk,H] gathered previous stream */
    float *head_xn, *head_rstd;         /* [Nk,H], [Nk] */
    float *logits;                      /* [Nk,V]; holds dlogits after a training forward */
    float *losses;                      /* [Nk] */
    int *tokens, *targets, *pos;        /* [Nk] device */
    float *d_res;                       /* [Nk,H] residual gradient of this module's stream */
    fr_block_acts blk;
} fr_mtp_acts;

struct fr_model {
    fr_config cfg;
    const fr_ops *ops;
    int mtp_depth;                      /* MTP modules present (may be < config's when absent in a file) */
    fr_loss_weights loss_w;

    /* parameters */
    int n_tensors, cap_tensors;
    fr_tensor *tensors;
    size_t n_params;                    /* floats */
    float *params, *grads;
    size_t embed, final_norm, lm_head;  /* lm_head == embed when tied */
    fr_block *blocks;                   /* num_hidden_layers + mtp_depth */

    /* rope tables [max_pos, rope/2] on device */
    float *rope_cos, *rope_sin;
    int rope_max_pos;
    float attn_scale;

    /* activation arena for capacity N */
    size_t act_cap_tokens;
    float *acts;
    int B, T;                           /* shape of the last forward */
    int have_targets;                   /* last forward can be backpropagated */
    int *tokens, *targets, *pos;        /* [N] device */
    float *res0;                        /* [N,H] embedding output */
    fr_block_acts *bacts;               /* per main block */
    float *final_xn, *final_rstd;       /* [N,H], [N] */
    float *logits, *dlogits, *losses;   /* [N,V], [N,V], [N] */
    float *d_res;                       /* [N,H] */
    float *bal_loss;                    /* [B] */
    fr_mtp_acts mtp[FR_MAX_MTP];
    fr_scratch scr;
    int n_targets;
    int *host_targets;                  /* [N] host copy for counting */

    /* Mixed-precision linear layers (fr_model_set_precision; block.c fr_qlinear_*) */
    int precision;                      /* FR_PREC_*: how the block linears multiply */
    int fp8_grad_tile_rows;             /* output-gradient tiles of the input-gradient GEMM:
                                           1 (1 x 128, the recipe) or 128 (128 x 128 blocks,
                                           which DeepSeek-V3 reports diverging) */
    int gemm_failed;                    /* a BF16 GEMM could not run (out of memory) */
    float *fp8_buf[2];                  /* quantized GEMM operands, grown on demand */
    size_t fp8_cap[2];                  /* floats */
    long fp8_nonfinite;                 /* NaN / Inf seen entering an FP8 GEMM since the last check */
    int fp8_oom;                        /* a buffer could not grow */

    /* Expert parallelism (fr_model_set_expert_parallel): the routed experts of every MoE block
     * are split over the ranks of ep_comm, rank r owning experts r * E / size ..; while
     * ep_active, a training forward sends each token's rows to its experts' owner and back
     * (all-to-all-v), and the backward mirrors it. Parameters stay whole on every rank. */
    struct fr_comm *ep_comm;            /* NULL: every expert is local */
    int ep_active;
    int ep_failed;                      /* an exchange or a buffer failed in this pass */
    char ep_error[256];                 /* what failed */

    /* Called by fr_model_backward as spans [lo, hi) of the gradient arena become final: the
     * MTP blocks with the norm and head, then each main block, then the embedding (every
     * element once per backward), so a data-parallel trainer can start reducing them while
     * the backward goes on. NULL: not called. */
    void (*grads_ready)(void *user, size_t lo, size_t hi);
    void *grads_ready_user;
    fr_ep_acts *ep_acts;                /* [num blocks] */
    float *ep_scr[3];                   /* owner's backward scratch: [R,H] x2, [R,Im] ... */
    size_t ep_scr_cap[3];               /* floats */

    /* LoRA (lora.c, fr_model_add_lora): the adapters are the tensors from index n_base_tensors
     * on, at arena offsets from train_lo on; every base tensor is frozen (no gradient, no
     * optimizer state). n_lora sites, sorted by their base matrix's offset. */
    int n_lora, lora_rank, lora_rslora;
    double lora_alpha;
    float lora_scale;                   /* alpha / rank, or alpha / sqrt(rank) (rsLoRA) */
    char lora_targets[256];             /* as given to fr_model_add_lora */
    struct fr_lora_site *lora;
    int n_base_tensors;
    size_t train_lo;                    /* 0 without adapters */
    float *lora_buf;                    /* scratch [rows, 2 rank] */
    size_t lora_cap;                    /* floats */
    /* QLoRA-style frozen base (fr_model_lora_quantize_base): the block linears of the base
     * stored as BF16 / Q8_0, their FP32 pages released; the products read a dequantized copy
     * of the span they need (fr_lora_weights), into one of two scratch slots */
    struct fr_frozen_q *frozen_q;       /* sorted by offset */
    int n_frozen_q, frozen_type;
    float *deq_buf[2];
    size_t deq_cap[2];                  /* floats */

    /* Logit distillation (fr_model_set_distill, kd.c): host arrays [N, kd_k] or NULL */
    const int32_t *kd_idx;
    const float *kd_logit, *kd_lse;
    int kd_k;
    float kd_temperature, kd_alpha;
};

enum { FR_PREC_FP32 = 0, FR_PREC_BF16 = 1, FR_PREC_FP8 = 2 };

/* Split the routed experts of every MoE block over the ranks of group (NULL: all local again).
 * FR_ERR_CONFIG when n_routed_experts is not a multiple of the group's size. The exchange runs
 * only while m->ep_active is set (the trainer's training steps); the buffers it grows are
 * freed by fr_model_ep_free (and fr_model_free). */
int fr_model_set_expert_parallel(fr_model *m, struct fr_comm *group);
void fr_model_ep_free(fr_model *m);

/* Register a tensor (model.c): a new entry at the end of the arena, *off its offset */
int fr_model_add_tensor(fr_model *m, size_t *off, int trainable, int ndim, int64_t d0, int64_t d1, const char *fmt, ...)
    __attribute__((format(printf, 7, 8)));

/* kd.c: over the rows with targets, add the distillation gradient to the cross-entropy's
 * dlogits (host memory): dlogits = (1 - alpha) dlogits + grad_scale alpha T^2 dKL/dz, KL over
 * the teacher's top k plus the tail bucket (teacher_lse: its log-sum-exp at T over the
 * vocabulary). Returns the sum over those rows of the KL; NaN when out of memory. Top-k ids
 * must be distinct and inside [0, V). */
double fr_kd_apply(const float *logits, float *dlogits, const int *targets, int N, int V, const int32_t *topk_idx,
                   const float *topk_logit, const float *teacher_lse, int K, float temperature, float alpha,
                   float grad_scale);

/* The tensor registered under `name`, or NULL (model.c) */
const fr_tensor *fr_model_find_tensor(const fr_model *m, const char *name);

/* The backend fr_set_device chose for new models (device.c) */
const fr_ops *fr_device_ops(void);
/* The routing parameters of c's MoE layers (block.c; the inference engines use them too) */
fr_route_params fr_route_params_of(const fr_config *c);
/* FR_OK, or FR_ERR_STATE naming the first op of backend o that failed since the last call
 * (the ops interface has no error returns: the CUDA backend remembers its failures) */
int fr_device_status(const fr_ops *o, const char *what);

/* Shared with the inference engine (infer.c): RoPE tables [max_pos, qk_rope_head_dim/2]
 * (host memory, YaRN attention factor folded in) and the softmax scale (YaRN mscale^2). */
void fr_rope_tables_fill(const fr_config *c, int max_pos, float *cos_table, float *sin_table);
float fr_attention_scale(const fr_config *c);

#endif
