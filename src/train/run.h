/*
 * run.h — one training run's state, shared by the loop (train.c) and its checkpoints
 * (checkpoint.c); not part of the public API.
 */
#ifndef FR_TRAIN_RUN_H
#define FR_TRAIN_RUN_H

#include "frugal.h"
#include "model/model_internal.h"
#include "train/dist.h"

#include <cjson/cJSON.h>
#include <stdio.h>

/* The training data: sequence number -> tokens (train.c) */

typedef struct {
    fr_dataset *train, *val;
    long n_chunks;       /* training chunks of T+1 tokens (stride T) */
    int T;
    uint64_t seed;
    long perm_epoch;     /* epoch whose permutation is in perm */
    long *perm;
    int *buf;            /* [T+1] */
    unsigned char *mask; /* [T] loss-mask bytes (fine-tuning data) */
    double val_bytes;    /* bytes of text behind the evaluation tokens (for bits per byte) */
} sampler;

/* One run (one segment of it in this process) */
typedef struct {
    const fr_train_args *a;
    const fr_train_hooks *hooks;
    fr_model *m;
    fr_tokenizer *tok;          /* NULL if the data folder's tokenizer does not load */
    sampler data;
    void *mom, *var;            /* AdamW moments of this rank's spans (dist.ranges): float, or
                                   uint16_t BF16 codes (moments_bf16) */
    int moments_bf16;
    int moments_in_backend;     /* allocated by the model's backend (fr_adamw_in_backend) */
    int grads_zero;             /* the last step's optimizer left the gradients all zero: the next
                                   step needs no zeroing pass */
    fr_comm *world;             /* the job's ranks (a world of one in a single process) */
    fr_dist dist;               /* how the job spreads over them */
    int rank, nranks;
    long step, max_steps;
    long seg_first_step;        /* step at which this process started (ETA from its own pace) */
    double tokens_done, flops_done;
    double wall_base;           /* seconds of earlier segments of this run */
    double t_start;             /* this segment (from the start of fr_train: loading counts) */
    double t_loop;              /* this segment's first step (for the ETA) */
    double t_progress;          /* last "progress" ledger record */
    fr_ledger_entry led;
    char ledger_path[600];
    FILE *metrics;
    double last_loss, last_val;
    size_t mem_plan;
    /* logit distillation (distill.c): the teacher and one micro-batch's top-k */
    struct fr_teacher *teacher;
    int32_t *kd_idx;            /* [local_B * T, k] */
    float *kd_logit;
    float *kd_lse;              /* [local_B * T] */
    uint64_t *kd_pos;           /* [local_B] window starts */
} run;

/* train.c */
double fr_run_elapsed(const run *r);                /* seconds of the run, earlier segments included */
void fr_run_info(run *r, const char *fmt, ...) __attribute__((format(printf, 2, 3))); /* an FR_EV_INFO event */
cJSON *fr_run_metrics_object(const run *r, const char *type);
void fr_run_metrics_line(run *r, cJSON *j);         /* one metrics.jsonl record (rank 0) */

/* checkpoint.c: RUN/ckpt-NNNNNNNN folders and their training_state.bin */
/* Every rank calls it: experts synced, moments brought to rank 0, which writes atomically;
 * all ranks learn whether it worked. out_dir (optional) receives the folder. */
int fr_run_save_checkpoint(run *r, char *out_dir, size_t out_n);
/* Every rank: the moments of its own spans (and step, tokens, flops, wall time, run id). */
int fr_run_load_state(run *r, const char *dir);
/* Temporaries and half-deleted folders a killed trainer left (the run folder's lock held). */
void fr_run_remove_leftovers(const char *run_dir);

#endif
