/*
 * infer_eval.c — next-token loss measured through the inference engine (fr_engine_forward),
 * so that what generation computes (weight formats, their kernels, the latent KV cache,
 * prefill or decode pieces) is what gets scored. Built on the public engine and dataset API
 * only.
 *
 * The windows of fr_engine_eval_dataset are those of fr_eval_dataset (src/infer/quantize.c): window
 * w predicts tokens w*T+1 .. w*T+T from tokens w*T .. w*T+T-1, so both numbers cover the
 * same targets and differ only by what computes the logits.
 *
 * Several windows (or sequences) run at once as separate engine sequences of one batched
 * forward: an engine sequence's logits do not depend on the others in its batch, and the
 * per-call overhead of small pieces (chunk 1 is one token per sequence per call) is shared.
 * Per-target losses are summed in target order, so the result does not depend on how the
 * work was grouped.
 */
#include "frugal.h"
#include "core/internal.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Rows (tokens, all sequences together) aimed at per engine call; with chunk >= this many
 * each call holds one sequence. Bounds the logits buffer at about EVAL_ROWS x vocab floats. */
#define EVAL_ROWS 256
#define EVAL_MAX_SEQS 32

/* -log softmax(x)[target], in double with the max subtracted so no exp overflows. */
static double xent(const float *x, int V, int target) {
    float mx = x[0];
    for (int i = 1; i < V; i++)
        if (x[i] > mx) mx = x[i];
    double s = 0;
    for (int i = 0; i < V; i++) s += exp((double)x[i] - (double)mx);
    return log(s) + (double)mx - (double)x[target];
}

typedef struct {
    fr_engine *e;
    int V, chunk, cap_seqs;
    fr_seq **seqs;
    /* per call: the active sequences, their token pointers and counts */
    fr_seq **ps;
    const int **pt;
    int *pn;
    float *logits;     /* [cap_seqs * chunk, V] */
    int *row_tgt;      /* target token of each logits row */
    long *row_dst;     /* index into the group's loss array */
} eval_ctx;

static void ctx_free(eval_ctx *c) {
    if (c->seqs)
        for (int i = 0; i < c->cap_seqs; i++) fr_seq_free(c->seqs[i]);
    free(c->seqs);
    free(c->ps);
    free(c->pt);
    free(c->pn);
    fr_free(c->logits);
    free(c->row_tgt);
    free(c->row_dst);
    memset(c, 0, sizeof *c);
}

/* Sequences in a group: enough for about EVAL_ROWS rows per call, at most `n_items`. */
static int ctx_init(eval_ctx *c, fr_engine *e, int chunk, long n_items) {
    memset(c, 0, sizeof *c);
    c->e = e;
    c->V = fr_engine_config(e)->vocab_size;
    c->chunk = chunk;
    int cap = chunk >= EVAL_ROWS ? 1 : EVAL_ROWS / chunk;
    if (cap > EVAL_MAX_SEQS) cap = EVAL_MAX_SEQS;
    if (cap > n_items) cap = (int)n_items;
    if (cap < 1) cap = 1;
    c->cap_seqs = cap;
    const size_t rows = (size_t)cap * (size_t)chunk;
    c->seqs = calloc((size_t)cap, sizeof *c->seqs);
    c->ps = calloc((size_t)cap, sizeof *c->ps);
    c->pt = calloc((size_t)cap, sizeof *c->pt);
    c->pn = calloc((size_t)cap, sizeof *c->pn);
    c->logits = fr_alloc(rows * (size_t)c->V * sizeof(float));
    c->row_tgt = malloc(rows * sizeof *c->row_tgt);
    c->row_dst = malloc(rows * sizeof *c->row_dst);
    if (!c->seqs || !c->ps || !c->pt || !c->pn || !c->logits || !c->row_tgt || !c->row_dst) {
        ctx_free(c);
        return fr_error(FR_ERR_NOMEM, "out of memory for %zu rows of %d logits", rows, c->V);
    }
    for (int i = 0; i < cap; i++) {
        int rc = fr_seq_create(&c->seqs[i], e);
        if (rc != FR_OK) {
            ctx_free(c);
            return rc;
        }
    }
    return FR_OK;
}

/* Run B <= cap_seqs token strings (tok[b][0 .. len[b]-1], len[b] >= 2) from empty caches,
 * `chunk` tokens per sequence per call, and store the loss of predicting tok[b][t+1] at
 * loss[off_b + t], off_b = sum over b' < b of (len[b'] - 1). */
static int eval_group(eval_ctx *c, int B, const int *const *tok, const int *len, double *loss) {
    long off[EVAL_MAX_SEQS];
    long acc = 0;
    for (int b = 0; b < B; b++) {
        int rc = fr_seq_truncate(c->seqs[b], 0);
        if (rc != FR_OK) return rc;
        off[b] = acc;
        acc += len[b] - 1;
    }
    for (int fed = 0;; fed += c->chunk) {
        int n_act = 0, rows = 0;
        for (int b = 0; b < B; b++) {
            const int inputs = len[b] - 1;
            if (fed >= inputs) continue;
            const int n = inputs - fed < c->chunk ? inputs - fed : c->chunk;
            c->ps[n_act] = c->seqs[b];
            c->pt[n_act] = tok[b] + fed;
            c->pn[n_act] = n;
            n_act++;
            for (int j = 0; j < n; j++) {
                const int t = tok[b][fed + j + 1];
                /* inputs are checked by the engine; the final target never becomes one */
                if (t < 0 || t >= c->V)
                    return fr_error(FR_ERR_ARG, "token %d at position %d is outside the vocabulary [0, %d)", t,
                                    fed + j + 1, c->V);
                c->row_tgt[rows] = t;
                c->row_dst[rows] = off[b] + fed + j;
                rows++;
            }
        }
        if (n_act == 0) break;
        int rc = fr_engine_forward(c->e, c->ps, n_act, c->pt, c->pn, c->logits, 1);
        if (rc != FR_OK) return rc;
        const int V = c->V;
        const float *lg = c->logits;
        const int *tg = c->row_tgt;
        const long *dst = c->row_dst;
#pragma omp parallel for schedule(static) if (rows > 1)
        for (int r = 0; r < rows; r++) loss[dst[r]] = xent(lg + (size_t)r * V, V, tg[r]);
    }
    return FR_OK;
}

int fr_engine_eval_dataset(fr_engine *e, const char *data_dir, const char *split, int seq_len, int chunk,
                           long max_tokens, double *mean_loss, long *n_targets) {
    fr_clear_error();
    if (!e || !data_dir || !split || !mean_loss) return fr_error(FR_ERR_ARG, "fr_engine_eval_dataset: NULL argument");
    if (seq_len < 2 || chunk < 1)
        return fr_error(FR_ERR_ARG, "fr_engine_eval_dataset: seq_len must be >= 2 and chunk >= 1 (got %d and %d)",
                        seq_len, chunk);
    if (seq_len > fr_engine_max_seq_len(e))
        return fr_error(FR_ERR_ARG, "seq_len %d exceeds the engine's context of %d tokens (fr_engine_options.max_seq_len)",
                        seq_len, fr_engine_max_seq_len(e));
    if (chunk > seq_len) chunk = seq_len;
    fr_dataset *ds = NULL;
    long n_win = 0;
    FR_CHECK(fr_eval_windows_open(&ds, data_dir, split, seq_len, max_tokens, fr_engine_config(e)->vocab_size, &n_win));
    eval_ctx c;
    memset(&c, 0, sizeof c);
    int rc = ctx_init(&c, e, chunk, n_win);
    const int G = c.cap_seqs;
    int *buf = NULL, *len = NULL;
    const int **ptr = NULL;
    double *loss = NULL;
    if (rc == FR_OK) {
        buf = malloc((size_t)G * (size_t)(seq_len + 1) * sizeof *buf);
        len = malloc((size_t)G * sizeof *len);
        ptr = malloc((size_t)G * sizeof *ptr);
        loss = malloc((size_t)G * (size_t)seq_len * sizeof *loss);
        if (!buf || !len || !ptr || !loss) rc = fr_error(FR_ERR_NOMEM, "out of memory");
    }
    double sum = 0;
    long count = 0;
    for (long w0 = 0; rc == FR_OK && w0 < n_win; w0 += G) {
        const int B = (int)(n_win - w0 < G ? n_win - w0 : G);
        for (int b = 0; b < B && rc == FR_OK; b++) {
            int *dst = buf + (size_t)b * (seq_len + 1);
            rc = fr_dataset_read(ds, (uint64_t)(w0 + b) * (uint64_t)seq_len, dst, (size_t)seq_len + 1);
            ptr[b] = dst;
            len[b] = seq_len + 1;
        }
        if (rc == FR_OK) rc = eval_group(&c, B, ptr, len, loss);
        if (rc != FR_OK) {
            rc = fr_error_context(rc, "windows %ld..%ld of the %s split of %s", w0 + 1, w0 + B, split, data_dir);
            break;
        }
        for (long i = 0; i < (long)B * seq_len; i++) sum += loss[i];
        count += (long)B * seq_len;
    }
    free(buf);
    free(len);
    free(ptr);
    free(loss);
    ctx_free(&c);
    fr_dataset_close(ds);
    if (rc != FR_OK) return rc;
    *mean_loss = sum / (double)count;
    if (n_targets) *n_targets = count;
    return FR_OK;
}

int fr_engine_eval_sequences(fr_engine *e, int n_seqs, const int *const *seqs, const int *lens, int chunk,
                             double *mean_loss, long *n_predicted) {
    fr_clear_error();
    if (!e || n_seqs <= 0 || !seqs || !lens || !mean_loss)
        return fr_error(FR_ERR_ARG, "fr_engine_eval_sequences: invalid arguments");
    if (chunk < 1) return fr_error(FR_ERR_ARG, "fr_engine_eval_sequences: chunk must be >= 1 (got %d)", chunk);
    const int max_len = fr_engine_max_seq_len(e);
    long total_pred = 0;
    int longest = 0;
    for (int s = 0; s < n_seqs; s++) {
        if (!seqs[s] || lens[s] < 2)
            return fr_error(FR_ERR_ARG, "sequence %d has %d tokens; at least 2 are needed", s + 1, seqs[s] ? lens[s] : 0);
        if (lens[s] - 1 > max_len)
            return fr_error(FR_ERR_ARG, "sequence %d needs a context of %d tokens; the engine holds %d (fr_engine_options.max_seq_len)",
                            s + 1, lens[s] - 1, max_len);
        total_pred += lens[s] - 1;
        if (lens[s] - 1 > longest) longest = lens[s] - 1;
    }
    if (chunk > longest) chunk = longest;
    eval_ctx c;
    int rc = ctx_init(&c, e, chunk, n_seqs);
    if (rc != FR_OK) return rc;
    double *loss = NULL;
    const int G = c.cap_seqs;
    /* a group's targets: at most G sequences of at most `longest` targets each */
    loss = malloc((size_t)G * (size_t)longest * sizeof *loss);
    if (!loss) rc = fr_error(FR_ERR_NOMEM, "out of memory");
    double sum = 0;
    for (int s0 = 0; rc == FR_OK && s0 < n_seqs; s0 += G) {
        const int B = n_seqs - s0 < G ? n_seqs - s0 : G;
        rc = eval_group(&c, B, seqs + s0, lens + s0, loss);
        if (rc != FR_OK) {
            rc = fr_error_context(rc, "sequences %d..%d", s0 + 1, s0 + B);
            break;
        }
        long n = 0;
        for (int b = 0; b < B; b++) n += lens[s0 + b] - 1;
        for (long i = 0; i < n; i++) sum += loss[i];
    }
    free(loss);
    ctx_free(&c);
    if (rc != FR_OK) return rc;
    *mean_loss = sum / (double)total_pred;
    if (n_predicted) *n_predicted = total_pred;
    return FR_OK;
}
