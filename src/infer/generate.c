/*
 * generate.c — fr_generate: prefill every prompt in one batched forward, then decode the
 * sequences together, each step sampling a token per sequence (sample.c), checking stop
 * strings and end of text, and with MTP speculation appending the drafted token too (kept
 * when the main model agrees, so greedy output is the same as without). The forward passes
 * are the engine's (infer.c).
 */
#define _GNU_SOURCE
#include "infer/infer_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ================================================================ generation */

void fr_generate_options_default(fr_generate_options *o) {
    memset(o, 0, sizeof *o);
    fr_sample_params_default(&o->sample);
    o->max_tokens = 128;
}

typedef struct {
    int *hist;            /* prompt + generated */
    int n_hist, n_prompt;
    int n_keep;           /* prompt tokens the cache already held (reuse_prefix) */
    int last, draft, active;
    fr_stop_reason reason;
    fr_sampler *smp;
    char *text;           /* generated text (for stop strings) */
    size_t text_len, text_cap, emitted;
} gen_state;

/* length of the longest suffix of s[0:n] that is a proper prefix of a stop string */
static size_t held_suffix(const char *s, size_t n, const char *const *stop, int n_stop) {
    size_t best = 0;
    for (int k = 0; k < n_stop; k++) {
        size_t L = strlen(stop[k]);
        for (size_t m = L > 1 ? L - 1 : 0; m > best; m--)
            if (m <= n && memcmp(s + n - m, stop[k], m) == 0) { best = m; break; }
    }
    return best;
}

/* Record a new token of sequence i; `room`: the cache can take one more token. Returns
 * nonzero when the sequence stops (reason set). */
static int emit(gen_state *g, int i, int token, int room, int eos, const fr_tokenizer *tok,
                const fr_generate_options *opt, int *rc) {
    g->hist[g->n_hist++] = token;
    const int n_gen = g->n_hist - g->n_prompt;
    int stop = 0;
    size_t cut = (size_t)-1;
    char *piece = NULL;
    size_t plen = 0;
    if (!opt->ignore_eos && token == eos) {
        stop = 1;
        g->reason = FR_STOP_EOS;
    } else if (tok && (opt->on_token || opt->n_stop > 0)) {
        if (fr_tokenizer_decode(tok, &token, 1, 0, &piece, &plen) != FR_OK) { *rc = FR_ERR_ARG; return 1; }
        if (g->text_len + plen + 1 > g->text_cap) {
            size_t cap = (g->text_len + plen + 1) * 2;
            char *p = realloc(g->text, cap);
            if (!p) { free(piece); *rc = fr_error(FR_ERR_NOMEM, "out of memory"); return 1; }
            g->text = p;
            g->text_cap = cap;
        }
        size_t old = g->text_len;
        memcpy(g->text + g->text_len, piece, plen);
        g->text_len += plen;
        g->text[g->text_len] = 0;
        free(piece);
        for (int k = 0; k < opt->n_stop; k++) {
            size_t L = strlen(opt->stop[k]);
            if (L == 0) continue;
            size_t from = old + 1 > L ? old + 1 - L : 0;
            char *hit = memmem(g->text + from, g->text_len - from, opt->stop[k], L);
            if (hit && (size_t)(hit - g->text) < cut) cut = (size_t)(hit - g->text);
        }
        if (cut != (size_t)-1) { stop = 1; g->reason = FR_STOP_STRING; }
    }
    if (!stop && n_gen >= opt->max_tokens) { stop = 1; g->reason = FR_STOP_MAX_TOKENS; }
    if (!stop && !room) { stop = 1; g->reason = FR_STOP_CONTEXT; }
    if (opt->on_token) {
        size_t upto = g->text_len;
        if (cut != (size_t)-1) upto = cut;
        else if (!stop) upto = g->text_len - held_suffix(g->text, g->text_len, opt->stop, opt->n_stop);
        const char *p = g->text ? g->text + g->emitted : "";
        size_t n = upto > g->emitted ? upto - g->emitted : 0;
        if (n) g->emitted = upto;
        if (opt->on_token(opt->user, i, token, p, n) && !stop) { stop = 1; g->reason = FR_STOP_CALLBACK; }
    }
    if (stop) g->active = 0;
    return stop;
}

/* -inf logits for ids that must never be drawn: no sampler setting can then pick them */
static void mask_ids(float *row, const int *ids, int n) {
    for (int i = 0; i < n; i++) row[ids[i]] = -INFINITY;
}

int fr_generate(fr_engine *e, const fr_tokenizer *tok, fr_seq *const *seqs, int n_seqs, const int *const *prompts,
                const int *prompt_lens, const fr_generate_options *opt, int **out_tokens, int *out_lens,
                fr_generate_stats *stats) {
    fr_clear_error();
    if (!e || !seqs || n_seqs <= 0 || !prompts || !prompt_lens || !opt || !out_tokens || !out_lens)
        return fr_error(FR_ERR_ARG, "fr_generate: invalid arguments");
    const fr_config *cfg = fr_engine_config(e);
    const int max_len = fr_engine_max_seq_len(e);
    if (opt->max_tokens < 1) return fr_error(FR_ERR_ARG, "max_tokens must be >= 1 (got %d)", opt->max_tokens);
    if (opt->n_stop > 0 && (!tok || !opt->stop)) return fr_error(FR_ERR_ARG, "stop strings need a tokenizer");
    if (opt->speculative && fr_engine_mtp_depth(e) < 1)
        return fr_error(FR_ERR_UNSUPPORTED, "speculative decoding needs an MTP module (num_nextn_predict_layers >= 1 "
                                            "with its weights in the checkpoint)");
    for (int s = 0; s < n_seqs; s++) {
        if (prompt_lens[s] < 1) return fr_error(FR_ERR_ARG, "prompt %d is empty", s);
        if (prompt_lens[s] > max_len)
            return fr_error(FR_ERR_ARG, "prompt %d has %d tokens; the maximum sequence length is %d", s, prompt_lens[s], max_len);
        out_tokens[s] = NULL;
        out_lens[s] = 0;
    }
    const int V = cfg->vocab_size, spec = opt->speculative;
    int eos = cfg->eos_token_id >= 0 ? cfg->eos_token_id : (tok ? fr_tokenizer_special_id(tok, FR_TOKEN_EOS) : -1);
    fr_generate_stats st;
    memset(&st, 0, sizeof st);

    int *masked = NULL, n_masked = 0;
    int rc = tok ? fr_tokenizer_undecodable_ids(tok, V, opt->ignore_eos ? -1 : eos, &masked, &n_masked) : FR_OK;
    if (rc != FR_OK) return rc;
    gen_state *g = calloc((size_t)n_seqs, sizeof *g);
    float *logits = malloc((size_t)2 * n_seqs * V * sizeof(float));
    float *mlog = malloc((size_t)n_seqs * V * sizeof(float));
    int *row_start = malloc((size_t)(n_seqs + 1) * sizeof(int));
    int *cnt = malloc((size_t)n_seqs * sizeof(int)), *hrows = malloc((size_t)2 * n_seqs * sizeof(int));
    int *step_tok = malloc((size_t)2 * n_seqs * sizeof(int)), *mtok = malloc((size_t)2 * n_seqs * sizeof(int));
    const int **tp = malloc((size_t)n_seqs * sizeof(int *));
    fr_seq **act = malloc((size_t)n_seqs * sizeof(fr_seq *));
    int *act_i = malloc((size_t)n_seqs * sizeof(int));
    if (!g || !logits || !mlog || !row_start || !cnt || !hrows || !step_tok || !mtok || !tp || !act || !act_i) {
        rc = fr_error(FR_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (int s = 0; s < n_seqs && rc == FR_OK; s++) {
        g[s].hist = malloc((size_t)(prompt_lens[s] + opt->max_tokens + 2) * sizeof(int));
        if (!g[s].hist) { rc = fr_error(FR_ERR_NOMEM, "out of memory"); break; }
        memcpy(g[s].hist, prompts[s], (size_t)prompt_lens[s] * sizeof(int));
        g[s].n_hist = g[s].n_prompt = prompt_lens[s];
        g[s].active = 1;
        rc = fr_sampler_create(&g[s].smp, &opt->sample, V);
        /* the cache keeps what it holds of the prompt's start, never its last token: the
         * logits come from computing that one */
        int keep = 0;
        if (opt->reuse_prefix) {
            keep = fr_seq_common_prefix(seqs[s], prompts[s], prompt_lens[s]);
            if (keep > prompt_lens[s] - 1) keep = prompt_lens[s] - 1;
            /* with speculation the MTP cache must hold rows 0 .. keep-1 too, each still pairing
             * its position with the same next token (row j with token j+1: j <= common - 2),
             * because its rows from `keep` on are computed from this prefill's hidden rows */
            if (spec) {
                const int mtp_ok = fr_seq_mtp_len(seqs[s]);
                if (keep > mtp_ok) keep = mtp_ok;
                const int common = fr_seq_common_prefix(seqs[s], prompts[s], prompt_lens[s]);
                if (keep > common - 1) keep = common > 0 ? common - 1 : 0;
            }
        }
        if (rc == FR_OK) rc = fr_seq_truncate(seqs[s], keep);
        g[s].n_keep = keep;
        st.reused_tokens += keep;
    }
    if (rc != FR_OK) goto done;

    /* prefill: all prompts (what the caches do not hold of them) in one batched forward */
    double t0 = fr_now_s();
    for (int s = 0; s < n_seqs; s++) tp[s] = prompts[s] + g[s].n_keep, cnt[s] = prompt_lens[s] - g[s].n_keep;
    rc = fr_engine_forward_rows(e, seqs, n_seqs, tp, cnt, logits, 0, row_start);
    if (rc != FR_OK) goto done;
    for (int s = 0; s < n_seqs; s++) st.prompt_tokens += prompt_lens[s];
    int any = 0;
    for (int s = 0; s < n_seqs; s++) {
        mask_ids(logits + (size_t)s * V, masked, n_masked);
        int y = fr_sampler_sample(g[s].smp, logits + (size_t)s * V, g[s].hist, g[s].n_hist);
        g[s].last = y;
        emit(&g[s], s, y, fr_seq_len(seqs[s]) + 1 <= max_len, eos, tok, opt, &rc);
        if (rc != FR_OK) goto done;
        any |= g[s].active;
    }
    if (spec && any) {
        /* MTP over the prompt: row j pairs h_j with token j+1 (the sampled token last) */
        int *mt = malloc((size_t)(row_start[n_seqs] + n_seqs) * sizeof(int));
        int *hr = malloc((size_t)row_start[n_seqs] * sizeof(int));
        if (!mt || !hr) { free(mt); free(hr); rc = fr_error(FR_ERR_NOMEM, "out of memory"); goto done; }
        int na = 0, k = 0;
        for (int s = 0; s < n_seqs; s++) {
            if (!g[s].active) continue;
            act[na] = seqs[s];
            act_i[na] = s;
            tp[na] = mt + k;
            cnt[na] = prompt_lens[s] - g[s].n_keep; /* the MTP cache holds the rest (reuse_prefix) */
            for (int j = g[s].n_keep; j < prompt_lens[s]; j++, k++) {
                mt[k] = j + 1 < prompt_lens[s] ? prompts[s][j + 1] : g[s].last;
                hr[k] = row_start[s] + j - g[s].n_keep;
            }
            na++;
        }
        rc = fr_engine_mtp_forward(e, act, na, tp, cnt, hr, mlog, row_start);
        free(mt);
        free(hr);
        if (rc != FR_OK) goto done;
        for (int a = 0; a < na; a++) {
            mask_ids(mlog + (size_t)a * V, masked, n_masked);
            g[act_i[a]].draft = fr_argmax(mlog + (size_t)a * V, V);
        }
    }
    double t1 = fr_now_s();
    st.prefill_s = t1 - t0;

    /* decode: one batched step per iteration over the active sequences */
    for (;;) {
        int na = 0, k = 0;
        for (int s = 0; s < n_seqs; s++) {
            if (!g[s].active) continue;
            act[na] = seqs[s];
            act_i[na] = s;
            tp[na] = step_tok + k;
            step_tok[k++] = g[s].last;
            cnt[na] = 1;
            if (spec && fr_seq_len(seqs[s]) + 2 <= max_len) { step_tok[k++] = g[s].draft; cnt[na] = 2; }
            na++;
        }
        if (na == 0) break;
        rc = fr_engine_forward_rows(e, act, na, tp, cnt, logits, 1, row_start);
        if (rc != FR_OK) goto done;
        st.main_steps++;
        int nm = 0, km = 0;
        for (int a = 0; a < na; a++) {
            const int s = act_i[a], r = row_start[a];
            gen_state *gs = &g[s];
            mask_ids(logits + (size_t)r * V, masked, n_masked);
            const int y1 = fr_sampler_sample(gs->smp, logits + (size_t)r * V, gs->hist, gs->n_hist);
            if (cnt[a] == 1) {
                gs->last = y1;
                emit(gs, s, y1, fr_seq_len(seqs[s]) + 1 <= max_len, eos, tok, opt, &rc);
                if (rc != FR_OK) goto done;
                /* (speculative with no room left for a draft: plain steps until the end) */
                continue;
            }
            st.drafted++;
            const int accepted = y1 == gs->draft;
            if (!accepted) {
                fr_seq_truncate(seqs[s], fr_seq_len(seqs[s]) - 1);
                gs->last = y1;
                emit(gs, s, y1, fr_seq_len(seqs[s]) + 1 <= max_len, eos, tok, opt, &rc);
                if (rc != FR_OK) goto done;
                if (gs->active) {
                    act[nm] = seqs[s]; act_i[nm] = s; cnt[nm] = 1;
                    hrows[km] = r; mtok[km] = y1; km++; nm++;
                }
                continue;
            }
            st.accepted++;
            emit(gs, s, y1, 1, eos, tok, opt, &rc);
            if (rc != FR_OK) goto done;
            if (!gs->active) continue;
            mask_ids(logits + (size_t)(r + 1) * V, masked, n_masked);
            const int y2 = fr_sampler_sample(gs->smp, logits + (size_t)(r + 1) * V, gs->hist, gs->n_hist);
            gs->last = y2;
            emit(gs, s, y2, fr_seq_len(seqs[s]) + 1 <= max_len, eos, tok, opt, &rc);
            if (rc != FR_OK) goto done;
            if (gs->active) {
                act[nm] = seqs[s]; act_i[nm] = s; cnt[nm] = 2;
                hrows[km] = r; mtok[km] = y1; km++;
                hrows[km] = r + 1; mtok[km] = y2; km++;
                nm++;
            }
        }
        if (spec && nm > 0) {
            /* extend the MTP cache with the accepted positions and draft the next token */
            int off = 0;
            for (int a = 0; a < nm; a++) { tp[a] = mtok + off; off += cnt[a]; }
            rc = fr_engine_mtp_forward(e, act, nm, tp, cnt, hrows, mlog, row_start);
            if (rc != FR_OK) goto done;
            for (int a = 0; a < nm; a++) {
                mask_ids(mlog + (size_t)a * V, masked, n_masked);
                g[act_i[a]].draft = fr_argmax(mlog + (size_t)a * V, V);
            }
        }
    }
    st.decode_s = fr_now_s() - t1;

done:
    if (g) {
        for (int s = 0; s < n_seqs; s++) {
            if (rc == FR_OK) {
                int n = g[s].n_hist - g[s].n_prompt;
                out_tokens[s] = malloc((size_t)(n > 0 ? n : 1) * sizeof(int));
                if (!out_tokens[s]) rc = fr_error(FR_ERR_NOMEM, "out of memory");
                else {
                    memcpy(out_tokens[s], g[s].hist + g[s].n_prompt, (size_t)n * sizeof(int));
                    out_lens[s] = n;
                    st.generated_tokens += n;
                }
                if (s < 64) st.stop_reason[s] = g[s].reason;
            }
            free(g[s].hist);
            free(g[s].text);
            fr_sampler_free(g[s].smp);
        }
        if (rc != FR_OK)
            for (int s = 0; s < n_seqs; s++) { free(out_tokens[s]); out_tokens[s] = NULL; out_lens[s] = 0; }
    }
    free(g);
    free(masked);
    free(logits);
    free(mlog);
    free(row_start);
    free(cnt);
    free(hrows);
    free(step_tok);
    free(mtok);
    free(tp);
    free(act);
    free(act_i);
    if (stats) *stats = st;
    return rc;
}
