/* optim.h — AdamW over the model's parameter arena, global gradient norm, and the
 * auxiliary-loss-free router-bias update of DeepSeek-V3. */
#ifndef FR_OPTIM_H
#define FR_OPTIM_H

#include "model/model_internal.h"

#include <stdint.h>

/* A span [lo, hi) of the parameter arena whose AdamW moments sit at index mom.. of the moment
 * arrays (data parallel with ZeRO-1 and expert parallel update only their own spans). */
typedef struct {
    size_t lo, hi, mom;
} fr_opt_range;

/* Sum of squares of the trainable gradients inside the ranges (deterministic as below). */
double fr_grad_sumsq(const fr_model *m, const fr_opt_range *ranges, int n_ranges);

/* Global L2 norm of the trainable gradients times grad_scale. Deterministic: partial sums
 * over fixed-size chunks are added in chunk order whatever the thread count. */
double fr_grad_norm(const fr_model *m, double grad_scale);

typedef struct {
    double lr, beta1, beta2, eps, weight_decay;
    long step;            /* 1-based, for bias correction */
    double grad_scale;    /* folded into every gradient: 1/accumulation times the clip factor */
} fr_adamw_hparams;

/* What the trainer's step asks of AdamW beyond the plain update (fr_adamw_step_ranges; NULL:
 * nothing, as fr_adamw_step). */
typedef struct {
    /* The learning rate of MoE routers' weights (fr_tensor.router) and of routed experts'
     * matrices (fr_tensor.expert >= 0) is lr times these (their weight decay too, which AdamW
     * couples to lr); 0 means 1. A scale of 1 gives bit for bit the step without it. */
    double lr_scale_router, lr_scale_experts;
    /* 1: every gradient element of the ranges is set to 0 once the step has used it (the gaps
     * between the trainable tensors included): the next step's zeroing, done in this pass while
     * the gradients are in cache. Host memory only (FR_ERR_UNSUPPORTED otherwise: the caller
     * zeroes the gradients itself there). */
    int zero_grads;
    /* non-NULL: *grad_sumsq = the sum of squares of the ranges' trainable gradients, computed in
     * this pass, bit for bit what fr_grad_sumsq over the same ranges returns (the same chunks,
     * added in the same order). For when nothing in the step depends on it (no clipping); host
     * memory only (FR_ERR_UNSUPPORTED otherwise). */
    double *grad_sumsq;
} fr_adamw_extra;

/* One AdamW step (decoupled weight decay, not applied to no_decay tensors) over every
 * trainable tensor. mom/var have the layout of the parameters (n_params floats each). */
int fr_adamw_step(fr_model *m, float *mom, float *var, const fr_adamw_hparams *h);
/* The same step with both moments stored in bfloat16 (DeepSeek-V3's recipe: half the
 * optimizer memory): each moment is decoded, updated in FP32 exactly as fr_adamw_step does,
 * and stored rounded to nearest even. */
int fr_adamw_step_bf16(fr_model *m, uint16_t *mom, uint16_t *var, const fr_adamw_hparams *h);
/* The step over the trainable elements of the ranges only (sorted, disjoint); mom / var are
 * float or (moments_bf16) BF16 codes, indexed by each range's mom; x (may be NULL) as above.
 * FR_ERR_NOMEM without memory for the chunk plan. */
int fr_adamw_step_ranges(fr_model *m, void *mom, void *var, int moments_bf16, const fr_opt_range *ranges,
                         int n_ranges, const fr_adamw_hparams *h, const fr_adamw_extra *x);

/* Nonzero when m's backend runs AdamW and the gradient norm in its own memory (a device
 * backend with fr_ops.adamw): the moments given to the steps must then be backend memory
 * (m->ops->alloc); otherwise host memory. */
int fr_adamw_in_backend(const fr_model *m);

/* DeepSeek-V3 auxiliary-loss-free balancing: for each MoE block with a correction bias,
 * b_e += gamma * sign(mean load - load_e) from the step's assignment counts
 * counts[i * E + e] (block order of fr_model_expert_counts). */
int fr_router_bias_update(fr_model *m, const long *counts, double gamma);

#endif
