/*
 * sample.c — the deterministic token sampler (see fr_sample_params in frugal.h).
 *
 * Order of the sampling steps: repeat penalty -> (greedy: argmax) -> temperature -> top-k
 * -> softmax -> min-p -> top-p -> one uniform draw over the kept ids, sorted by
 * probability (descending, ties by id), so the result depends only on the logits, the
 * history and the RNG stream, never on threads.
 */
#include "infer/infer_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- sampler */

void fr_sample_params_default(fr_sample_params *p) {
    memset(p, 0, sizeof *p);
    p->temperature = 0.8f;
    p->top_k = 40;
    p->top_p = 0.95f;
    p->min_p = 0.05f;
    p->repeat_penalty = 1.0f;
    p->repeat_last_n = 64;
    p->seed = 42;
}

int fr_argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* Top-k up to 1/32 of the vocabulary selects through a heap; other sampling sorts all ids
 * (greedy sorts nothing). The heap's cost grows with k, the sort's does not: on V = 129280
 * the two cost the same near k = V/26. */
static int uses_full_sort(const fr_sample_params *p, int V) {
    return p->temperature > 0.0f && !(p->top_k > 0 && (int64_t)p->top_k * 32 <= V);
}

int fr_sampler_create(fr_sampler **out, const fr_sample_params *p, int vocab_size) {
    fr_clear_error();
    if (!out || !p || vocab_size <= 0) return fr_error(FR_ERR_ARG, "fr_sampler_create: invalid arguments");
    *out = NULL;
    if (!(p->temperature >= 0) || !isfinite(p->temperature))
        return fr_error(FR_ERR_ARG, "temperature must be >= 0 (got %g)", p->temperature);
    if (!(p->top_p > 0 && p->top_p <= 1)) return fr_error(FR_ERR_ARG, "top_p must be in (0, 1] (got %g)", p->top_p);
    if (!(p->min_p >= 0 && p->min_p <= 1)) return fr_error(FR_ERR_ARG, "min_p must be in [0, 1] (got %g)", p->min_p);
    if (!(p->repeat_penalty > 0) || !isfinite(p->repeat_penalty))
        return fr_error(FR_ERR_ARG, "repeat_penalty must be > 0 (got %g)", p->repeat_penalty);
    if (p->top_k < 0) return fr_error(FR_ERR_ARG, "top_k must be >= 0 (got %d)", p->top_k);
    if (p->repeat_last_n < 0) return fr_error(FR_ERR_ARG, "repeat_last_n must be >= 0 (got %d)", p->repeat_last_n);
    fr_sampler *s = calloc(1, sizeof *s);
    if (!s) return fr_error(FR_ERR_NOMEM, "out of memory");
    s->p = *p;
    s->V = vocab_size;
    s->work = malloc((size_t)vocab_size * sizeof(float));
    s->idx = malloc((size_t)vocab_size * sizeof(int));
    s->val = malloc((size_t)vocab_size * sizeof(float));
    s->seen = calloc((size_t)vocab_size, sizeof(uint32_t));
    const int full = uses_full_sort(p, vocab_size);
    if (full) s->radix = malloc((size_t)2 * vocab_size * sizeof(uint64_t));
    if (!s->work || !s->idx || !s->val || !s->seen || (full && !s->radix)) {
        fr_sampler_free(s);
        return fr_error(FR_ERR_NOMEM, "out of memory for a sampler over %d ids", vocab_size);
    }
    fr_rng_seed(&s->rng, p->seed);
    *out = s;
    return FR_OK;
}

void fr_sampler_free(fr_sampler *s) {
    if (!s) return;
    free(s->work);
    free(s->idx);
    free(s->val);
    free(s->seen);
    free(s->radix);
    free(s);
}

/* qsort comparator context: the probabilities being sorted (per thread). */
static _Thread_local const float *t_sort_p;

/* ids by t_sort_p[] descending, ties by id */
static int by_prob_desc(const void *a, const void *b) {
    int i = *(const int *)a, j = *(const int *)b;
    float pi = t_sort_p[i], pj = t_sort_p[j];
    if (pi > pj) return -1;
    if (pi < pj) return 1;
    return (i > j) - (i < j);
}

/* a ranks below b: lower value, or equal value and higher id (by_prob_desc's order) */
static inline int ranks_below(const float *w, int a, int b) {
    return w[a] < w[b] || (w[a] == w[b] && a > b);
}

/* restore the heap property of h[0..k) (root = lowest ranked) below position c */
static void sift_down(const float *w, int *h, int k, int c) {
    for (;;) {
        int l = 2 * c + 1, m = c;
        if (l < k && ranks_below(w, h[l], h[m])) m = l;
        if (l + 1 < k && ranks_below(w, h[l + 1], h[m])) m = l + 1;
        if (m == c) return;
        int t = h[c]; h[c] = h[m]; h[m] = t;
        c = m;
    }
}

/* The top k ids of w (descending, ties by id) into idx[0..k), 0 < k <= V: a heap of the
 * k best seen so far with the lowest ranked at the root costs one comparison per id once
 * it is full, and only the k winners get sorted. */
static void select_top_k(const float *w, int V, int k, int *idx) {
    for (int i = 0; i < k; i++) idx[i] = i;
    for (int r = k / 2 - 1; r >= 0; r--) sift_down(w, idx, k, r);
    for (int i = k; i < V; i++) {
        /* ids arrive in increasing order, so an equal value ranks below every id held */
        if (!(w[i] > w[idx[0]])) continue;
        idx[0] = i;
        sift_down(w, idx, k, 0);
    }
    t_sort_p = w;
    qsort(idx, (size_t)k, sizeof(int), by_prob_desc);
}

/* All ids by w descending, ties by id, into idx, with their values into val: an LSD
 * radix sort (stable; three digits of 11, 11 and 10 bits) of (order key << 32 | id)
 * records, in O(V). The softmax denominator is summed in this order and double rounding
 * makes that sum depend on it, so the whole order is needed to draw what the comparison
 * sort drew. */
#define RADIX_BITS 11
static void sort_all_desc(const float *w, int V, uint64_t *a, uint64_t *b, int *idx, float *val) {
    enum { NB = 1 << RADIX_BITS, ND = (32 + RADIX_BITS - 1) / RADIX_BITS };
    uint32_t hist[ND][NB];
    memset(hist, 0, sizeof hist);
    for (int i = 0; i < V; i++) {
        float x = w[i] + 0.0f; /* -0 becomes +0: the comparison sort holds them equal */
        uint32_t u;
        memcpy(&u, &x, 4);
        u = (u & 0x80000000u) ? u : ~(u | 0x80000000u); /* decreasing as x increases */
        a[i] = (uint64_t)u << 32 | (uint32_t)i;
        for (int d = 0; d < ND; d++) hist[d][(u >> (RADIX_BITS * d)) & (NB - 1)]++;
    }
    for (int d = 0; d < ND; d++) {
        const int shift = 32 + RADIX_BITS * d;
        if (hist[d][(a[0] >> shift) & (NB - 1)] == (uint32_t)V) continue; /* one digit for all */
        uint32_t pos = 0;
        for (int v = 0; v < NB; v++) { uint32_t c = hist[d][v]; hist[d][v] = pos; pos += c; }
        for (int i = 0; i < V; i++) b[hist[d][(a[i] >> shift) & (NB - 1)]++] = a[i];
        uint64_t *t = a; a = b; b = t;
    }
    for (int i = 0; i < V; i++) {
        uint32_t u = (uint32_t)(a[i] >> 32);
        u = (u & 0x80000000u) ? u : ~u & 0x7fffffffu;
        memcpy(&val[i], &u, 4);
        idx[i] = (int)(uint32_t)a[i];
    }
}

int fr_sampler_sample(fr_sampler *s, const float *logits, const int *history, int n_history) {
    const int V = s->V;
    const fr_sample_params *p = &s->p;
    float *w = s->work;
    memcpy(w, logits, (size_t)V * sizeof(float));

    if (p->repeat_penalty != 1.0f && p->repeat_last_n > 0 && history && n_history > 0) {
        if (++s->stamp == 0) { memset(s->seen, 0, (size_t)V * sizeof(uint32_t)); s->stamp = 1; }
        int from = n_history > p->repeat_last_n ? n_history - p->repeat_last_n : 0;
        for (int i = from; i < n_history; i++) {
            int t = history[i];
            if (t < 0 || t >= V || s->seen[t] == s->stamp) continue;
            s->seen[t] = s->stamp;
            w[t] = w[t] > 0 ? w[t] / p->repeat_penalty : w[t] * p->repeat_penalty;
        }
    }
    if (p->temperature <= 0.0f) return fr_argmax(w, V);

    /* candidates: all ids, or the top_k largest (ties by id), in that order, with their
     * values in val */
    for (int i = 0; i < V; i++) w[i] /= p->temperature;
    float *val = s->val;
    int n = V;
    if (uses_full_sort(p, V)) {
        sort_all_desc(w, V, s->radix, s->radix + V, s->idx, val);
        if (p->top_k > 0 && p->top_k < n) n = p->top_k;
    } else {
        n = p->top_k;
        select_top_k(w, V, n, s->idx);
        for (int i = 0; i < n; i++) val[i] = w[s->idx[i]];
    }

    /* softmax over the candidates (sorted, so val[0] is the max) */
    float mx = val[0];
    double sum = 0;
    for (int i = 0; i < n; i++) {
        val[i] = expf(val[i] - mx);
        sum += val[i];
    }
    for (int i = 0; i < n; i++) val[i] = (float)(val[i] / sum);

    if (p->min_p > 0.0f) {
        float thr = p->min_p * val[0];
        int k = 1;
        while (k < n && val[k] >= thr) k++;
        n = k;
    }
    if (p->top_p < 1.0f) {
        double cum = 0;
        int k = 0;
        while (k < n) {
            cum += val[k];
            k++;
            if (cum >= p->top_p) break;
        }
        n = k;
    }
    double total = 0;
    for (int i = 0; i < n; i++) total += val[i];
    double u = fr_rng_uniform(&s->rng) * total, acc = 0;
    for (int i = 0; i < n; i++) {
        acc += val[i];
        if (u < acc) return s->idx[i];
    }
    return s->idx[n - 1];
}
