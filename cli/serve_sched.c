/* serve_sched.c — the scheduler of `frugal serve`: one thread owns the engine and runs
 * continuous batching over --parallel slots (one fr_seq each). Every iteration it frees the
 * slots of cancelled requests, admits queued requests into free slots, and runs ONE
 * fr_engine_forward over all active slots: newcomers append a chunk of their prompt
 * (chunked prefill, at most PREFILL_BUDGET prompt tokens per iteration so running streams
 * keep flowing), running ones append their last sampled token (decode). Each slot then
 * samples with its own fr_sampler (seeded by the request's seed), and the new text is
 * released to the request's output under the stop-string / UTF-8 hold-back rules. */
#define _GNU_SOURCE
#include "cli.h"
#include "serve.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PREFILL_BUDGET 512

double srv_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void srv_req_unref_locked(srv_req *r) {
    if (!r || --r->refs > 0) return;
    free(r->hist);
    for (int i = 0; i < r->n_stops; i++) free(r->stops[i]);
    free(r->out);
    free(r->cuts);
    free(r->error);
    free(r->pend);
    fr_sampler_free(r->sampler);
    free(r);
}

static void rate_add(srv_server *s, long n) {
    long sec = (long)(srv_now());
    int k = (int)(sec % 16);
    if (s->rate_stamp[k] != sec) {
        s->rate_stamp[k] = sec;
        s->rate_sec[k] = 0;
    }
    s->rate_sec[k] += n;
}

double srv_tokens_per_s(srv_server *s) {
    long sec = (long)(srv_now()), sum = 0;
    for (long t = sec - 10; t < sec; t++) {
        int k = (int)(t % 16);
        if (s->rate_stamp[k] == t) sum += s->rate_sec[k];
    }
    return sum / 10.0;
}

int srv_submit(srv_server *s, srv_req *r) {
    pthread_mutex_lock(&s->mu);
    if (s->stopping || s->draining) {
        pthread_mutex_unlock(&s->mu);
        return -2;
    }
    if (s->q_len >= s->max_queue) {
        pthread_mutex_unlock(&s->mu);
        return -1;
    }
    r->refs++;
    r->slot = -1;
    r->state = SRV_QUEUED;
    r->t_submit = srv_now();
    r->next = NULL;
    if (s->q_tail) s->q_tail->next = r;
    else s->q_head = r;
    s->q_tail = r;
    s->q_len++;
    pthread_cond_signal(&s->sched_cv);
    pthread_mutex_unlock(&s->mu);
    return 0;
}

/* Append bytes to the released output (mu held). */
static int out_add(srv_req *r, const char *p, size_t n) {
    if (!n) return 0;
    if (r->n_cuts == r->cap_cuts) {
        int cap = r->cap_cuts ? 2 * r->cap_cuts : 64;
        size_t *c = realloc(r->cuts, (size_t)cap * sizeof *c);
        if (!c) return -1;
        r->cuts = c;
        r->cap_cuts = cap;
    }
    if (r->out_len + n + 1 > r->out_cap) {
        size_t cap = (r->out_len + n + 1) * 2;
        char *q = realloc(r->out, cap);
        if (!q) return -1;
        r->out = q;
        r->out_cap = cap;
    }
    memcpy(r->out + r->out_len, p, n);
    r->out_len += n;
    r->out[r->out_len] = 0;
    r->cuts[r->n_cuts++] = r->out_len;
    return 0;
}

/* Finish a request (mu held): release its slot and the scheduler's reference. */
static void finish(srv_server *s, srv_req *r, const char *reason, const char *error) {
    r->state = SRV_DONE;
    r->finish_reason = reason;
    if (error && !r->error) r->error = strdup(error);
    r->t_done = srv_now();
    if (r->slot >= 0) s->slots[r->slot] = NULL;
    r->slot = -1;
    if (r->error) s->failed_reqs++;
    else if (!r->cancelled) {
        s->finished_reqs++;
        s->duration_sum += r->t_done - r->t_submit;
    }
    pthread_cond_broadcast(&s->out_cv);
    srv_req_unref_locked(r);
}

/* Length of the longest suffix of text[0..n) that is a proper prefix of some stop string. */
static size_t stop_holdback(const srv_req *r, const char *text, size_t n) {
    size_t best = 0;
    for (int i = 0; i < r->n_stops; i++) {
        size_t sl = strlen(r->stops[i]);
        for (size_t k = sl - 1; k > best; k--) {
            if (k <= n && memcmp(text + n - k, r->stops[i], k) == 0) {
                best = k;
                break;
            }
        }
    }
    return best;
}

/* Bytes at the end of text[0..n) that form an incomplete UTF-8 sequence. */
static size_t utf8_incomplete_tail(const char *text, size_t n) {
    for (size_t back = 1; back <= 3 && back <= n; back++) {
        unsigned char c = (unsigned char)text[n - back];
        if ((c & 0xC0) == 0x80) continue;            /* continuation byte: look further back */
        size_t need = (c >= 0xF0) ? 4 : (c >= 0xE0) ? 3 : (c >= 0xC0) ? 2 : 1;
        return need > back ? back : 0;
    }
    return 0;
}

/* After a new token (mu NOT held): decode the completion and decide how much text to release
 * and whether a stop string ended it. Returns the new text (malloc'd) in *txt / *tl;
 * *stopped = 1 when a stop string was found. */
static int advance_text(srv_server *s, srv_req *r, int final, char **txt, size_t *tl, int *stopped) {
    *txt = NULL;
    *tl = 0;
    *stopped = 0;
    char *text = NULL;
    size_t n = 0;
    /* special tokens are kept as text, as `frugal generate` prints them (EOS never gets here) */
    if (fr_tokenizer_decode(s->tok, r->hist + r->n_prompt, (size_t)r->n_gen, 0, &text, &n) != FR_OK) return -1;
    size_t end = n;
    /* a stop string anywhere after what was already released ends the completion */
    size_t from = r->text_done;
    size_t best = (size_t)-1;
    for (int i = 0; i < r->n_stops; i++) {
        size_t sl = strlen(r->stops[i]);
        size_t start = from >= sl ? from - sl + 1 : 0;
        const char *p = n > start ? memmem(text + start, n - start, r->stops[i], sl) : NULL;
        if (p && (size_t)(p - text) < best) best = (size_t)(p - text);
    }
    if (best != (size_t)-1) {
        end = best < from ? from : best;
        *stopped = 1;
    } else if (!final) {
        end = n - utf8_incomplete_tail(text, n);
        size_t hb = stop_holdback(r, text, end);
        end -= hb;
    }
    if (end > from && !(*txt = cli_utf8_sanitize(text + from, end - from, tl))) {
        free(text);
        return -1;
    }
    r->text_done = end > from ? end : from;
    free(text);
    return 0;
}

/* Refresh the slot gauges of /metrics (mu held, scheduler thread: it owns the sequences). */
static void update_gauges(srv_server *s) {
    long t = 0, a = 0;
    for (int i = 0; i < s->parallel; i++)
        if (s->slots[i]) {
            a++;
            t += fr_seq_len(s->seqs[i]);
        }
    s->kv_tokens = t;
    s->active = a;
}

static void *sched_main(void *arg) {
    srv_server *s = arg;
    const int P = s->parallel;
    /* OpenMP's thread count is per thread: the engine's `threads` option only set it in the
     * thread that loaded the model, so set it again here, where the forwards run */
    if (s->threads > 0) fr_set_num_threads(s->threads);
    fr_seq **bseq = calloc((size_t)P, sizeof *bseq);
    const int **btok = calloc((size_t)P, sizeof *btok);
    int *bn = calloc((size_t)P, sizeof *bn), *bslot = calloc((size_t)P, sizeof *bslot);
    srv_req **breq = calloc((size_t)P, sizeof *breq);
    if (!bseq || !btok || !bn || !bslot || !breq) {
        pthread_mutex_lock(&s->mu);
        s->stopping = 1;
        pthread_cond_broadcast(&s->out_cv);
        pthread_mutex_unlock(&s->mu);
        goto out;
    }
    pthread_mutex_lock(&s->mu);
    while (!s->stopping) {
        /* 1. free the slots of cancelled requests */
        for (int i = 0; i < P; i++) {
            srv_req *r = s->slots[i];
            if (r && r->cancelled) {
                s->disconnects++;
                finish(s, r, "cancelled", NULL);
            }
        }
        /* 2. admit queued requests into free slots: each to the free slot whose cache holds
         * the longest start of its prompt (a conversation's earlier turns), which it keeps */
        for (;;) {
            int i = -1, best = -1;
            for (int j = 0; j < P && s->q_head; j++) {
                if (s->slots[j]) continue;
                const int k = fr_seq_common_prefix(s->seqs[j], s->q_head->hist, s->q_head->n_prompt);
                if (k > best) best = k, i = j;
            }
            if (i < 0) break;
            srv_req *r = s->q_head;
            s->q_head = r->next;
            if (!s->q_head) s->q_tail = NULL;
            s->q_len--;
            r->next = NULL;
            if (r->cancelled) {
                s->disconnects++;
                r->slot = -1;
                finish(s, r, "cancelled", NULL);
                continue;
            }
            if (fr_sampler_create(&r->sampler, &r->sp, s->vocab) != FR_OK) {
                r->slot = -1;
                finish(s, r, NULL, fr_last_error());
                continue;
            }
            /* the last prompt token is always fed again: its logits start the reply */
            const int keep = best < r->n_prompt ? best : r->n_prompt - 1;
            fr_seq_truncate(s->seqs[i], keep);
            s->prefix_reused += keep;
            r->slot = i;
            r->fed = keep;
            r->state = SRV_RUNNING;
            s->slots[i] = r;
        }
        /* 3. one batch: prompt chunks for newcomers, one token for running slots */
        int nb = 0, budget = PREFILL_BUDGET;
        for (int i = 0; i < P; i++) {
            srv_req *r = s->slots[i];
            if (!r) continue;
            if (r->fed < r->n_prompt) {
                if (budget <= 0) continue;
                int k = r->n_prompt - r->fed;
                if (k > budget) k = budget;
                budget -= k;
                btok[nb] = r->hist + r->fed;
                bn[nb] = k;
            } else {
                btok[nb] = r->hist + r->n_prompt + r->n_gen - 1;
                bn[nb] = 1;
            }
            bseq[nb] = s->seqs[i];
            bslot[nb] = i;
            breq[nb] = r;
            r->refs++; /* keep it alive while the lock is dropped */
            nb++;
        }
        update_gauges(s);
        if (nb == 0) {
            pthread_cond_wait(&s->sched_cv, &s->mu);
            continue;
        }
        pthread_mutex_unlock(&s->mu);

        double tf0 = srv_now();
        int rc = fr_engine_forward(s->engine, bseq, nb, btok, bn, s->logits, 0);
        double tf1 = srv_now();
        char errbuf[256] = "";
        if (rc != FR_OK) snprintf(errbuf, sizeof errbuf, "inference failed: %s", fr_last_error());
        int ntok = 0, decode_rows = 0;
        /* sample and decode text outside the lock: only this thread touches hist/sampler */
        char *txt[P > 0 ? P : 1];
        size_t tl[P > 0 ? P : 1];
        int stopped[P > 0 ? P : 1], eos[P > 0 ? P : 1], sampled[P > 0 ? P : 1], bad[P > 0 ? P : 1];
        /* rows are independent (own request, sampler, history): sample them in parallel */
#pragma omp parallel for schedule(dynamic, 1) reduction(+ : ntok, decode_rows) if (nb > 1)
        for (int b = 0; b < nb; b++) {
            srv_req *r = breq[b];
            txt[b] = NULL;
            tl[b] = 0;
            stopped[b] = eos[b] = sampled[b] = bad[b] = 0;
            if (rc != FR_OK) continue;
            int was_prefill = r->fed < r->n_prompt;
            if (was_prefill) r->fed += bn[b];
            else decode_rows++;
            if (r->fed < r->n_prompt) continue;   /* prompt not complete yet */
            float *lg = s->logits + (size_t)b * s->vocab;
            /* as in fr_generate: ids the tokenizer cannot decode (a padded vocab_size, gaps in
             * its ids) are never sampled, except an EOS id that ends the completion, which
             * is never decoded; with ignore_eos it would be, so it is masked then */
            const int keep_eos = !r->ignore_eos && s->eos_id >= 0 && s->eos_id < s->vocab;
            const float eos_logit = keep_eos ? lg[s->eos_id] : 0.0f;
            for (int k = 0; k < s->n_undecodable; k++) lg[s->undecodable[k]] = -INFINITY;
            if (keep_eos) lg[s->eos_id] = eos_logit;
            int t = fr_sampler_sample(r->sampler, lg, r->hist, r->n_prompt + r->n_gen);
            sampled[b] = 1;
            ntok++;
            if (!r->ignore_eos && t == s->eos_id) {
                eos[b] = 1;
                if (advance_text(s, r, 1, &txt[b], &tl[b], &stopped[b]) != 0) bad[b] = 1;
                continue;
            }
            r->hist[r->n_prompt + r->n_gen++] = t;
            int final = r->n_gen >= r->max_tokens || fr_seq_len(bseq[b]) >= fr_engine_max_seq_len(s->engine);
            if (advance_text(s, r, final, &txt[b], &tl[b], &stopped[b]) != 0) bad[b] = 1;
        }

        double tf2 = srv_now();
        pthread_mutex_lock(&s->mu);
        s->forward_s += tf1 - tf0;
        s->sample_s += tf2 - tf1;
        s->forwards++;
        if (decode_rows) {
            s->decode_steps++;
            s->batch_rows += (unsigned long)decode_rows;
        }
        s->gen_tokens += (unsigned long)ntok;
        rate_add(s, ntok);
        for (int b = 0; b < nb; b++) {
            srv_req *r = breq[b];
            if (r->state == SRV_DONE) { /* cannot happen: only this thread finishes */
                free(txt[b]);
                srv_req_unref_locked(r);
                continue;
            }
            if (rc != FR_OK || bad[b]) {
                free(txt[b]);
                finish(s, r, NULL, rc != FR_OK ? errbuf : "cannot decode the completion");
                srv_req_unref_locked(r);
                continue;
            }
            if (sampled[b] && r->n_gen + eos[b] == 1 && r->t_first == 0) {
                r->t_first = srv_now();
                s->ttft_sum += r->t_first - r->t_submit;
                s->ttft_count++;
            }
            if (txt[b]) {
                if (out_add(r, txt[b], tl[b]) != 0) {
                    free(txt[b]);
                    finish(s, r, NULL, "out of memory");
                    srv_req_unref_locked(r);
                    continue;
                }
                free(txt[b]);
                pthread_cond_broadcast(&s->out_cv);
            }
            if (sampled[b]) {
                if (eos[b] || stopped[b]) finish(s, r, "stop", NULL);
                else if (r->n_gen >= r->max_tokens || fr_seq_len(bseq[b]) >= fr_engine_max_seq_len(s->engine))
                    finish(s, r, "length", NULL);
            }
            srv_req_unref_locked(r);
        }
        update_gauges(s);
    }
    pthread_mutex_unlock(&s->mu);
out:
    free(bseq);
    free(btok);
    free(bn);
    free(bslot);
    free(breq);
    return NULL;
}

int srv_sched_start(srv_server *s) {
    s->slots = calloc((size_t)s->parallel, sizeof *s->slots);
    s->seqs = calloc((size_t)s->parallel, sizeof *s->seqs);
    s->logits = malloc((size_t)s->parallel * (size_t)s->vocab * sizeof(float));
    if (!s->slots || !s->seqs || !s->logits) return -1;
    for (int i = 0; i < s->parallel; i++)
        if (fr_seq_create(&s->seqs[i], s->engine) != FR_OK) return -1;
    if (pthread_create(&s->sched_thread, NULL, sched_main, s) != 0) return -1;
    s->sched_started = 1;
    return 0;
}

void srv_sched_reject_queued_locked(srv_server *s) {
    while (s->q_head) {
        srv_req *r = s->q_head;
        s->q_head = r->next;
        r->next = NULL;
        r->slot = -1;
        r->rejected = 1;
        finish(s, r, NULL, "server shutting down");
    }
    s->q_tail = NULL;
    s->q_len = 0;
}

void srv_sched_stop(srv_server *s) {
    pthread_mutex_lock(&s->mu);
    s->stopping = 1;
    pthread_cond_broadcast(&s->sched_cv);
    pthread_cond_broadcast(&s->out_cv);
    pthread_mutex_unlock(&s->mu);
    if (s->sched_started) pthread_join(s->sched_thread, NULL);
    s->sched_started = 0;
    pthread_mutex_lock(&s->mu);
    for (int i = 0; s->slots && i < s->parallel; i++)
        if (s->slots[i]) finish(s, s->slots[i], NULL, "server shutting down");
    while (s->q_head) {
        srv_req *r = s->q_head;
        s->q_head = r->next;
        r->slot = -1;
        finish(s, r, NULL, "server shutting down");
    }
    s->q_tail = NULL;
    s->q_len = 0;
    pthread_mutex_unlock(&s->mu);
    for (int i = 0; s->seqs && i < s->parallel; i++) fr_seq_free(s->seqs[i]);
    free(s->seqs);
    free(s->slots);
    free(s->logits);
    s->seqs = NULL;
    s->slots = NULL;
    s->logits = NULL;
}
