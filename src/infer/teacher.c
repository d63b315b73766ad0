/*
 * teacher.c — a teacher's top-k next-token logits at every position of token windows, through
 * the inference engine (any weight format it runs): what logit distillation trains a student
 * on (src/model/kd.c), online (fr_train with a teacher folder) or stored as shards
 * (fr_distill_dump_teacher, src/train/distill.c).
 *
 * Each window runs from an empty cache as its own engine sequence, so its logits depend on its
 * own tokens only (as the student's do in training); several windows share one batched
 * forward. The k largest logits of each row are kept in descending order, ties to the lower
 * token id, so the result does not depend on the grouping; with them the row's log-sum-exp
 * at the distillation temperature, which gives the mass outside the top k (src/model/kd.c).
 */
#include "frugal.h"
#include "core/internal.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* rows of logits per engine call (bounds the buffer at about this many x vocab floats) */
#define TOPK_ROWS 2048

/* The k largest of x[0..V) by insertion into a sorted list (k is small beside V) */
static void row_topk(const float *x, int V, int k, int32_t *idx, float *val) {
    int n = 0;
    for (int j = 0; j < V; j++) {
        const float v = x[j];
        if (n == k && !(v > val[k - 1])) continue; /* (equal: the lower id, already in, stays) */
        int at = n < k ? n++ : k - 1;
        while (at > 0 && v > val[at - 1]) {
            val[at] = val[at - 1];
            idx[at] = idx[at - 1];
            at--;
        }
        val[at] = v;
        idx[at] = j;
    }
}

/* log sum_j exp(x_j / temperature), in double */
static float row_lse(const float *x, int V, double inv_t) {
    float mx = x[0];
    for (int j = 1; j < V; j++) mx = x[j] > mx ? x[j] : mx;
    double s = 0;
    for (int j = 0; j < V; j++) s += exp((x[j] - (double)mx) * inv_t);
    return (float)(mx * inv_t + log(s));
}

int fr_engine_topk(fr_engine *e, int n_windows, const int *tokens, int T, int k, float temperature, int32_t *topk_idx,
                   float *topk_logit, float *lse) {
    fr_clear_error();
    if (!e || !tokens || !topk_idx || !topk_logit || !lse || n_windows < 0 || T < 1 || !(temperature > 0))
        return fr_error(FR_ERR_ARG, "fr_engine_topk: invalid arguments");
    const int V = fr_engine_config(e)->vocab_size;
    if (k < 1 || k > V) return fr_error(FR_ERR_ARG, "top-k %d is outside [1, %d] (the teacher's vocabulary)", k, V);
    if (T > fr_engine_max_seq_len(e))
        return fr_error(FR_ERR_ARG, "windows of %d tokens exceed the teacher's context of %d", T, fr_engine_max_seq_len(e));
    int G = TOPK_ROWS / T;
    if (G < 1) G = 1;
    if (G > n_windows) G = n_windows > 0 ? n_windows : 1;
    fr_seq **seqs = calloc((size_t)G, sizeof *seqs);
    const int **ptr = calloc((size_t)G, sizeof *ptr);
    int *len = calloc((size_t)G, sizeof *len);
    float *logits = fr_alloc((size_t)G * T * V * sizeof(float));
    int rc = seqs && ptr && len && logits ? FR_OK : fr_error(FR_ERR_NOMEM, "out of memory for %d x %d logits", G * T, V);
    for (int i = 0; i < G && rc == FR_OK; i++) rc = fr_seq_create(&seqs[i], e);
    for (int w0 = 0; w0 < n_windows && rc == FR_OK; w0 += G) {
        const int B = n_windows - w0 < G ? n_windows - w0 : G;
        for (int b = 0; b < B && rc == FR_OK; b++) {
            rc = fr_seq_truncate(seqs[b], 0);
            ptr[b] = tokens + (size_t)(w0 + b) * T;
            len[b] = T;
        }
        if (rc == FR_OK) rc = fr_engine_forward(e, seqs, B, ptr, len, logits, 1);
        if (rc != FR_OK) break;
        const size_t row0 = (size_t)w0 * T;
#pragma omp parallel for schedule(static)
        for (int r = 0; r < B * T; r++) {
            row_topk(logits + (size_t)r * V, V, k, topk_idx + (row0 + r) * k, topk_logit + (row0 + r) * k);
            lse[row0 + r] = row_lse(logits + (size_t)r * V, V, 1.0 / temperature);
        }
    }
    for (int i = 0; seqs && i < G; i++) fr_seq_free(seqs[i]);
    free(seqs);
    free(ptr);
    free(len);
    fr_free(logits);
    return rc;
}
