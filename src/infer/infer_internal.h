/* infer_internal.h — private pieces shared by infer.c (engine), generate.c (decoding loop)
 * and sample.c (sampler), and visible to tests/test_infer.c. Not installed. */
#ifndef FR_INFER_INTERNAL_H
#define FR_INFER_INTERNAL_H

#include "frugal.h"
#include "core/internal.h"
#include "formats/numfmt.h"

#include <stdint.h>

/* The KV cache number formats (BF16, FP8 E4M3) are formats/numfmt.h. */

/* The engine's forward passes for the decoding loop (generate.c). fr_engine_forward_rows is
 * fr_engine_forward with the caller's row_start [n_seqs + 1] (first row of each sequence);
 * afterwards the engine holds the last block's output rows (the MTP input).
 * fr_engine_mtp_forward runs MTP module 1 over n_tokens[s] rows per sequence: row j of
 * sequence s combines Emb(tokens[s][j]) (the token after position mtp_len + j) with main
 * hidden row hid_rows[...] of the last fr_engine_forward_rows; the logits of each sequence's
 * last row go to logits [n_seqs, V]. */
int fr_engine_forward_rows(fr_engine *e, fr_seq *const *seqs, int n_seqs, const int *const *tokens,
                           const int *n_tokens, float *logits, int all_logits, int *row_start);
int fr_engine_mtp_forward(fr_engine *e, fr_seq *const *seqs, int n_seqs, const int *const *tokens,
                          const int *n_tokens, const int *hid_rows, float *logits, int *row_start);

/* Rows the sequence's MTP cache holds (row j pairs position j with token j + 1) */
int fr_seq_mtp_len(const fr_seq *s);

/* Thread governor of decode-sized forwards (governor.c): arm 0 runs on all threads, arm 1
 * on one; fr_gov_pick says which arm the next forward uses, fr_gov_record gives its cost
 * (seconds for rows rows). */
#define FR_GOV_WINDOW 32
typedef struct {
    int arm;                    /* the arm in use */
    double win[FR_GOV_WINDOW];  /* seconds per row of its last forwards (ring) */
    int n_win, pos;
    double last[2];             /* last known cost of each arm; < 0: not measured */
    int skip;                   /* the next forward is not counted (threads switching) */
    long every, until_try;      /* forwards between tries of the other arm; left before the next */
    int trying;                 /* a try of the other arm is running */
    int try_n;                  /* its forwards so far; the first is not counted */
    double try_s;               /* seconds and rows of its counted forwards */
    long try_rows;
} fr_gov;
void fr_gov_init(fr_gov *g);
int fr_gov_pick(fr_gov *g);
void fr_gov_record(fr_gov *g, int arm, double seconds, int rows);
/* Rows of a forward up to which the governor decides (decode steps, speculative pairs, small
 * batches); larger forwards (prefill) always run on all threads. */
#define FR_GOV_MAX_ROWS 8

/* Tests only: 0 sends a decoded row's attention through the head-by-head loop of multi-row
 * calls instead of the blocked all-heads pass (attend_row), to check they agree bit for bit.
 * Not thread-safe against a running forward. */
void fr_engine_set_blocked_attention(int on);
/* Tests only: 0 sends decode-sized forwards (up to FR_DECODE_ROWS rows) through the many-row
 * path instead of decode_row.c's (each thread its own heads and experts), to check they agree
 * bit for bit. Not thread-safe against a running forward. */
void fr_engine_set_fused_decode(int on);

struct fr_sampler {
    fr_sample_params p;
    int V;
    fr_rng rng;
    float *work;      /* [V] adjusted logits / probabilities */
    int *idx;         /* [V] candidate ids, best first */
    float *val;       /* [V] their adjusted logits, then probabilities */
    uint32_t *seen;   /* [V] stamp of the last penalty pass that touched the id */
    uint64_t *radix;  /* [2V] records of the full sort (NULL when top-k selects by heap) */
    uint32_t stamp;
};

/* Argmax with the lowest id on ties. */
int fr_argmax(const float *x, int n);

#endif
