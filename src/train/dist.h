/*
 * dist.h — how a training job spreads over the ranks of its world (issue 17): data parallel
 * (every rank its own slice of each global batch), ZeRO-1 (AdamW moments sharded over the
 * ranks that hold the same parameters) and expert parallel (the routed experts of each MoE
 * block split over groups of `ep` consecutive ranks).
 *
 * Ranks: world rank r is expert-parallel rank r % ep of group r / ep; the ranks with the same
 * expert-parallel rank (r % ep) hold the same experts and form its data-parallel group.
 *
 * The parameter arena splits into segments of consecutive tensors of one kind: shared (every
 * non-expert tensor: replicated on all ranks, gradients summed over the world), owned (experts
 * of this rank: gradients summed over its data-parallel group) and foreign (experts of other
 * ranks: never touched here). Each shared or owned segment is cut into one part per member of
 * its group; with ZeRO-1 a rank keeps the moments of its parts only, without ZeRO-1 of whole
 * segments. The moments live in one compact array, part after part (fr_opt_range.mom).
 */
#ifndef FR_TRAIN_DIST_H
#define FR_TRAIN_DIST_H

#include "comm/comm.h"
#include "model/optim.h"

typedef struct {
    size_t lo, hi;     /* the segment [lo, hi) of the arena */
    int owned;         /* 0 shared (world group), 1 this rank's experts (data-parallel group) */
    size_t part_lo, part_hi; /* this rank's part (ZeRO-1 cut, whether or not ZeRO-1 is on) */
} fr_dist_segment;

typedef struct {
    fr_comm *world, *ep, *dp;  /* ep / dp NULL when ep == 1 */
    int ep_size, zero1;
    int n_seg;
    fr_dist_segment *seg;      /* shared and owned segments, arena order */
    int n_ranges;
    fr_opt_range *ranges;      /* the spans whose moments this rank keeps */
    int n_foreign;
    fr_opt_range *foreign;     /* expert parallel: the other ranks' experts (.mom unused) */
    size_t foreign_floats;
    size_t n_moments;          /* elements per moment array here */
    size_t *counts;            /* [world size] one collective's part sizes (scratch) */
    size_t bucket;             /* floats per collective call (FRUGAL_DIST_BUCKET, default 4 Mi) */
    int overlap;               /* reductions start during the backward (FRUGAL_DIST_OVERLAP=0: after) */
    struct fr_dist_pending *pend; /* started reductions not yet completed */
    int n_pend, cap_pend;
    size_t in_flight;          /* floats of started reductions not yet completed */
    int start_rc;              /* the first failure of a start made from the model's hook */
    struct fr_model *attached; /* the model whose backward starts them */
} fr_dist;

/* The layout of world over m for expert-parallel size ep and ZeRO-1 on or off. FR_ERR_ARG for
 * an impossible layout (ep not dividing the world, experts not dividing by ep). */
int fr_dist_setup(fr_dist *d, fr_comm *world, const fr_model *m, int ep, int zero1);
void fr_dist_free(fr_dist *d);

/* After the backward: every rank's gradients summed (into its parts with ZeRO-1, everywhere
 * else without) */
int fr_dist_reduce_grads(fr_dist *d, fr_model *m);
/* The same in two halves: start the non-blocking reductions of the final gradients in
 * [lo, hi) (called as the backward finishes each span: fr_dist_attach), then complete
 * everything started. Every rank starts the same spans in the same order. */
int fr_dist_start_grads(fr_dist *d, fr_model *m, size_t lo, size_t hi);
int fr_dist_finish_grads(fr_dist *d, fr_model *m);
/* While on, m's backward starts the reductions span by span (m->grads_ready); off restores it */
void fr_dist_attach(fr_dist *d, fr_model *m, int on);
/* Sum of squares of the whole job's summed gradients (each element counted once) */
int fr_dist_grad_sumsq(fr_dist *d, const fr_model *m, double *sumsq);
/* After AdamW with ZeRO-1: every rank's parts of the parameters gathered everywhere */
int fr_dist_gather_params(fr_dist *d, fr_model *m);
/* Expert parallel: a rank holds only its own experts. The parameter and gradient arenas keep
 * their layout, but the other ranks' experts are handed back to the kernel (after creating or
 * loading the model, and on rank 0 after each checkpoint) and never touched: the training and
 * evaluation forwards send tokens to the owners, the gradients are zeroed segment by segment.
 * fr_dist_gather_experts brings every expert to world rank 0 for a checkpoint. */
void fr_dist_release_foreign(fr_dist *d, fr_model *m);
void fr_dist_zero_grads(fr_dist *d, fr_model *m);
/* After an AdamW step that zeroed the gradients of d->ranges (fr_adamw_hparams.zero_grads): the
 * rest of what fr_dist_zero_grads zeroes (with ZeRO-1 the other ranks' parts, in a LoRA run the
 * frozen base), so that the gradients are all zero again, as fr_dist_zero_grads leaves them */
void fr_dist_zero_grads_rest(fr_dist *d, fr_model *m);
int fr_dist_gather_experts(fr_dist *d, fr_model *m);

/* DeepSeek-V3's node-limited routing over this job's expert-parallel groups: each token's
 * experts on at most max_ranks ranks, by making the routing's groups the ranks' expert sets
 * (n_group = ep, topk_group = max_ranks; group-limited routing picks groups by their experts'
 * scores). It changes the model: m's config (saved with every checkpoint) says so. *changed
 * = 0 when the config already routes that way. FR_ERR_ARG without expert parallelism or for
 * an impossible limit; FR_ERR_CONFIG when the routing is not group-limited (greedy). */
int fr_dist_node_limit(const fr_dist *d, fr_model *m, int max_ranks, int *changed);

/* The moment spans rank `rank` writes into a checkpoint (each arena element by exactly one
 * rank): its parts with ZeRO-1, else its whole segments when it is its group's first member.
 * *ranges malloc'd, .mom = the offset in that rank's packed send buffer. */
int fr_dist_writer_ranges(const fr_dist *d, const fr_model *m, int rank, fr_opt_range **ranges, int *n);
/* Rank 0's full moment array (n_params elements of elem_bytes) from every rank's compact one;
 * full is only written on rank 0 (others may pass NULL). */
int fr_dist_gather_moments(fr_dist *d, const fr_model *m, const void *compact, size_t elem_bytes, void *full);

#endif
