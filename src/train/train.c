/*
 * train.c — the training loop: data sampling, AdamW with warmup + cosine/WSD schedule (the
 * arguments, their checks and saved form are train_args.c),
 * gradient accumulation and clipping, DeepSeek-V3's auxiliary-loss-free router-bias
 * balancing, validation loss and bits per byte, samples, atomic checkpoints that resume
 * step for step, metrics.jsonl and the run ledger. Checkpoints are checkpoint.c; how a job of
 * many processes shares the work is dist.c (data parallel, ZeRO-1, expert parallel).
 *
 * Run folder layout:
 *   train_args.json          the arguments (resume needs nothing else)
 *   metrics.jsonl            one JSON object per step / eval / sample / checkpoint
 *   ckpt-NNNNNNNN/           Hugging Face folder + training_state.bin (the last two kept)
 *   latest                   name of the newest complete checkpoint folder
 *   .lock                    flock(2)ed by the trainer using the folder; holds its pid
 *
 * Reproducibility: the batch of step s is a pure function of (seed, s): sequence number
 * i = (s * grad_accum + micro) * B + b picks chunk perm_epoch[i mod n_chunks] of the
 * training tokens, perm_epoch a seeded shuffle per epoch. Everything else a step depends
 * on (parameters, AdamW moments, router biases, step) is in the checkpoint, bit for bit,
 * so a resumed run computes exactly the losses of an uninterrupted one.
 */
#include "core/internal.h"
#include "model/model_internal.h"
#include "cpu/ops_cpu.h"
#include "formats/numfmt.h"
#include "model/optim.h"
#include "train/train_internal.h"
#include "train/dist.h"
#include "train/run.h"
#include "train/distill.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <omp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ================================================================ data */

static int sampler_epoch(sampler *s, long epoch) {
    if (s->perm_epoch == epoch) return FR_OK;
    for (long i = 0; i < s->n_chunks; i++) s->perm[i] = i;
    fr_rng r;
    fr_rng_seed(&r, s->seed * 0x9E3779B97F4A7C15ull + (uint64_t)epoch + 1);
    for (long i = s->n_chunks - 1; i > 0; i--) {
        long j = (long)(fr_rng_next(&r) % (uint64_t)(i + 1));
        long t = s->perm[i];
        s->perm[i] = s->perm[j];
        s->perm[j] = t;
    }
    s->perm_epoch = epoch;
    return FR_OK;
}

/* The window of T + 1 tokens at pos of ds -> tokens[T] and targets[T] (the next tokens; -1,
 * which the loss ignores, where fine-tuning data's loss mask marks a token as context only:
 * the prompt, the user's turns). buf [T+1] and mask [T] are scratch. */
static int read_window(const fr_dataset *ds, uint64_t pos, int T, int *buf, unsigned char *mask, int *tokens,
                       int *targets) {
    FR_CHECK(fr_dataset_read(ds, pos, buf, (size_t)T + 1));
    memcpy(tokens, buf, (size_t)T * sizeof(int));
    memcpy(targets, buf + 1, (size_t)T * sizeof(int));
    if (fr_dataset_has_mask(ds)) {
        FR_CHECK(fr_dataset_read_mask(ds, pos + 1, mask, (size_t)T));
        for (int t = 0; t < T; t++)
            if (!mask[t]) targets[t] = -1;
    }
    return FR_OK;
}

/* Sequence number seq (0, 1, 2, ... over the whole run) -> tokens[T], targets[T]. */
/* Window `seq` of the run (its start in the split to *pos) */
static int sampler_get(sampler *s, long seq, int *tokens, int *targets, uint64_t *pos) {
    FR_CHECK(sampler_epoch(s, seq / s->n_chunks));
    long chunk = s->perm[seq % s->n_chunks];
    *pos = (uint64_t)chunk * s->T;
    return read_window(s->train, *pos, s->T, s->buf, s->mask, tokens, targets);
}

static double (*g_clock)(void);
static double g_progress_interval = FR_TRAIN_PROGRESS_INTERVAL_S;

void fr_train_set_clock(double (*now)(void)) { g_clock = now; }

void fr_train_set_progress_interval(double seconds) {
    g_progress_interval = seconds > 0 ? seconds : FR_TRAIN_PROGRESS_INTERVAL_S;
}

static double now_s(void) { return g_clock ? g_clock() : fr_now_s(); }

double fr_run_elapsed(const run *r) { return r->wall_base + now_s() - r->t_start; }

/* Events and records come from rank 0 only: every rank computes the same numbers */
static void emit(run *r, fr_train_event *ev) {
    if (r->rank == 0 && r->hooks && r->hooks->on_event) r->hooks->on_event(r->hooks->user, ev);
}

void fr_run_info(run *r, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fr_train_event ev;
    memset(&ev, 0, sizeof ev);
    ev.type = FR_EV_INFO;
    ev.step = r->step;
    ev.text = msg;
    emit(r, &ev);
}

static size_t rss_peak_bytes(void) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return 0;
    char line[256];
    size_t kb = 0;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "VmHWM:", 6) == 0) kb = strtoull(line + 6, NULL, 10);
    fclose(f);
    return kb * 1024;
}

static void ledger_fill(run *r, const char *status) {
    fr_ledger_entry *e = &r->led;
    snprintf(e->status, sizeof e->status, "%s", status);
    e->wall_s = fr_run_elapsed(r);
    e->steps = r->step;
    e->tokens = r->tokens_done;
    e->flops = r->flops_done;
    e->final_loss = r->last_loss;
    e->val_loss = r->last_val;
    snprintf(e->precision, sizeof e->precision, "%s", r->a->precision[0] ? r->a->precision : "fp32");
    fr_ledger_price(e, &r->a->prices);
}

/* metrics.jsonl: one line per record, flushed, so a crash loses at most a partial line. */
/* A metrics record: {"type": TYPE, "step": the run's step, ...} for the caller to fill */
cJSON *fr_run_metrics_object(const run *r, const char *type) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "type", type);
    cJSON_AddNumberToObject(j, "step", (double)r->step);
    return j;
}

void fr_run_metrics_line(run *r, cJSON *j) {
    if (!r->metrics) return;
    char *s = cJSON_PrintUnformatted(j);
    if (s) {
        fputs(s, r->metrics);
        fputc('\n', r->metrics);
        fflush(r->metrics);
        free(s);
    }
}

/* Keep only the metrics of steps <= step (a resumed run recomputes the later ones). */
static int metrics_truncate(const char *path, long step) {
    char *text = NULL;
    size_t len = 0;
    if (access(path, F_OK) != 0) return FR_OK;
    FR_CHECK(fr_read_file(path, &text, &len));
    char *out = malloc(len + 1);
    if (!out) {
        free(text);
        return fr_error(FR_ERR_NOMEM, "out of memory");
    }
    size_t o = 0;
    for (char *line = text; line < text + len;) {
        char *nl = memchr(line, '\n', (size_t)(text + len - line));
        if (!nl) break; /* a torn last line is dropped */
        cJSON *j = cJSON_ParseWithLength(line, (size_t)(nl - line));
        const cJSON *st = j ? cJSON_GetObjectItemCaseSensitive(j, "step") : NULL;
        if (cJSON_IsNumber(st) && st->valuedouble <= (double)step) {
            memcpy(out + o, line, (size_t)(nl - line) + 1);
            o += (size_t)(nl - line) + 1;
        }
        cJSON_Delete(j);
        line = nl + 1;
    }
    int rc = fr_write_file_atomic(path, out, o);
    free(out);
    free(text);
    return rc;
}

/* ================================================================ evaluation, samples */

static int evaluate(run *r, double *val_loss, double *val_bpb) {
    const int B = r->a->batch_size, T = r->a->seq_len;
    const uint64_t have = fr_dataset_num_tokens(r->data.val);
    long n_seq = (long)((have > 0 ? have - 1 : 0) / (uint64_t)T);
    long want = (long)r->a->eval_batches * B;
    if (n_seq > want) n_seq = want;
    if (n_seq <= 0) return fr_error(FR_ERR_STATE, "the validation split has fewer than %d tokens", T + 1);
    int *tokens = malloc((size_t)B * T * sizeof(int)), *targets = malloc((size_t)B * T * sizeof(int));
    int *buf = malloc(((size_t)T + 1) * sizeof(int));
    if (!tokens || !targets || !buf) {
        free(tokens); free(targets); free(buf);
        return fr_error(FR_ERR_NOMEM, "out of memory");
    }
    double sum = 0;
    long count = 0;
    int rc = FR_OK;
    for (long s0 = 0; s0 < n_seq && rc == FR_OK; s0 += B) {
        int nb = (int)(n_seq - s0 < B ? n_seq - s0 : B);
        for (int b = 0; b < nb && rc == FR_OK; b++)
            rc = read_window(r->data.val, (uint64_t)(s0 + b) * T, T, buf, r->data.mask, tokens + (size_t)b * T,
                             targets + (size_t)b * T);
        fr_loss_info li;
        if (rc == FR_OK) rc = fr_model_forward_eval(r->m, tokens, targets, nb, T, &li);
        if (rc == FR_OK) {
            sum += li.loss_main * li.n_targets;
            count += li.n_targets;
        }
    }
    /* bits per byte: the bytes those targets decode to (special tokens count as 0 bytes); not
     * with a loss mask, whose targets are only some of the tokens */
    if (rc == FR_OK && r->data.val_bytes == 0 && r->tok && !fr_dataset_has_mask(r->data.val)) {
        double bytes = 0;
        for (long s = 0; s < n_seq && rc == FR_OK; s++) {
            rc = fr_dataset_read(r->data.val, (uint64_t)s * T + 1, buf, (size_t)T);
            char *text = NULL;
            size_t len = 0;
            if (rc == FR_OK && fr_tokenizer_decode(r->tok, buf, (size_t)T, 1, &text, &len) == FR_OK) bytes += (double)len;
            free(text);
        }
        r->data.val_bytes = bytes;
    }
    free(tokens);
    free(targets);
    free(buf);
    FR_CHECK(rc);
    *val_loss = sum / (double)count;
    *val_bpb = r->data.val_bytes > 0 ? sum / log(2.0) / r->data.val_bytes : NAN;
    return FR_OK;
}

/* Top-k (40) sampling at temperature 0.8 from the prompt, recomputing the whole sequence each
 * token (the latent KV cache belongs to the inference engine). Deterministic in (seed, step). */
static int sample_text(run *r, char **out) {
    *out = NULL;
    if (!r->tok) return FR_OK;
    const int V = r->m->cfg.vocab_size, T = r->a->seq_len;
    int *ids = NULL;
    size_t n = 0;
    const char *prompt = r->a->sample_prompt[0] ? r->a->sample_prompt : "And";
    FR_CHECK(fr_tokenizer_encode(r->tok, prompt, strlen(prompt), 1, &ids, &n));
    size_t cap = n + (size_t)r->a->sample_tokens + 1;
    int *seq = malloc(cap * sizeof(int));
    float *logits = malloc((size_t)V * sizeof(float)); /* the last position's row, on the host */
    if (!seq || !logits) {
        free(ids), free(seq), free(logits);
        return fr_error(FR_ERR_NOMEM, "out of memory");
    }
    memcpy(seq, ids, n * sizeof(int));
    free(ids);
    fr_rng rng;
    fr_rng_seed(&rng, r->a->seed ^ (0xA5A5ull * (uint64_t)(r->step + 1)));
    const int eos = fr_tokenizer_special_id(r->tok, FR_TOKEN_EOS);
    int rc = FR_OK;
    for (int t = 0; t < r->a->sample_tokens && n > 0; t++) {
        size_t off = n > (size_t)T ? n - (size_t)T : 0;
        int len = (int)(n - off);
        rc = fr_model_forward_eval(r->m, seq + off, NULL, 1, len, NULL);
        if (rc != FR_OK) break;
        r->m->ops->to_host(logits, fr_model_logits(r->m) + (size_t)(len - 1) * V, (size_t)V * sizeof(float));
        int top[40] = {0};
        int k = V < 40 ? V : 40;
        for (int i = 0; i < k; i++) top[i] = -1;
        for (int v = 0; v < V; v++) { /* insertion into a sorted top-k */
            if (top[k - 1] >= 0 && logits[v] <= logits[top[k - 1]]) continue;
            int p = k - 1;
            while (p > 0 && (top[p - 1] < 0 || logits[v] > logits[top[p - 1]])) {
                top[p] = top[p - 1];
                p--;
            }
            top[p] = v;
        }
        double w[40], z = 0;
        for (int i = 0; i < k; i++) z += w[i] = exp((logits[top[i]] - logits[top[0]]) / 0.8);
        double u = fr_rng_uniform(&rng) * z;
        int pick = top[k - 1];
        for (int i = 0; i < k; i++) {
            if ((u -= w[i]) <= 0) {
                pick = top[i];
                break;
            }
        }
        if (pick == eos) break;
        seq[n++] = pick;
    }
    if (rc == FR_OK) {
        size_t len = 0;
        rc = fr_tokenizer_decode(r->tok, seq, n, 1, out, &len);
    }
    free(seq);
    free(logits);
    return rc;
}

/* ================================================================ the loop */

static int do_checkpoint(run *r) {
    char dir[1200];
    FR_CHECK(fr_run_save_checkpoint(r, dir, sizeof dir));
    fr_train_event ev;
    memset(&ev, 0, sizeof ev);
    ev.type = FR_EV_CHECKPOINT;
    ev.step = r->step;
    ev.max_steps = r->max_steps;
    ev.text = dir;
    emit(r, &ev);
    int rc = FR_OK;
    if (r->rank == 0) {
        ledger_fill(r, "running");
        rc = fr_ledger_update(r->ledger_path, &r->led);
    }
    r->t_progress = now_s();
    return fr_comm_agree(r->world, rc);
}

/* Evaluation and samples run on every rank over the same sequences (replicated), so each gets
 * rank 0's numbers; under expert parallelism their tokens go to the experts' owners as in
 * training (no rank holds every expert). */
static int do_eval(run *r) {
    if (!r->data.val) return FR_OK;
    double vl = 0, bpb = 0;
    r->m->ep_active = 1;
    const int rc = evaluate(r, &vl, &bpb);
    r->m->ep_active = 0;
    FR_CHECK(rc);
    r->last_val = vl;
    fr_train_event ev;
    memset(&ev, 0, sizeof ev);
    ev.type = FR_EV_EVAL;
    ev.step = r->step;
    ev.max_steps = r->max_steps;
    ev.tokens = r->tokens_done;
    ev.val_loss = vl;
    ev.val_bpb = bpb;
    emit(r, &ev);
    cJSON *j = fr_run_metrics_object(r, "eval");
    cJSON_AddNumberToObject(j, "tokens", r->tokens_done);
    cJSON_AddNumberToObject(j, "val_loss", vl);
    if (isfinite(bpb)) cJSON_AddNumberToObject(j, "val_bpb", bpb);
    fr_run_metrics_line(r, j);
    cJSON_Delete(j);
    return FR_OK;
}

static int do_sample(run *r) {
    char *text = NULL;
    r->m->ep_active = 1;
    const int rc = sample_text(r, &text);
    r->m->ep_active = 0;
    FR_CHECK(rc);
    if (!text) return FR_OK;
    fr_train_event ev;
    memset(&ev, 0, sizeof ev);
    ev.type = FR_EV_SAMPLE;
    ev.step = r->step;
    ev.text = text;
    emit(r, &ev);
    cJSON *j = fr_run_metrics_object(r, "sample");
    cJSON_AddStringToObject(j, "text", text);
    fr_run_metrics_line(r, j);
    cJSON_Delete(j);
    free(text);
    return FR_OK;
}

/* The job's view of one step: every rank's losses averaged (each rank's are means over the same
 * number of targets, so the average is the mean over the global batch), target counts summed. */
static int average_losses(run *r, fr_loss_info *mean) {
    if (r->nranks == 1) return FR_OK;
    float v[13];
    v[0] = (float)mean->loss, v[1] = (float)mean->loss_main, v[2] = (float)mean->loss_balance;
    v[3] = (float)mean->n_targets;
    for (int k = 0; k < 8; k++) v[4 + k] = (float)mean->loss_mtp[k];
    v[12] = (float)mean->loss_kd;
    FR_CHECK(fr_comm_allreduce(r->world, v, 13));
    const double w = 1.0 / r->nranks;
    mean->loss = v[0] * w, mean->loss_main = v[1] * w, mean->loss_balance = v[2] * w, mean->loss_kd = v[12] * w;
    mean->n_targets = (long)v[3];
    for (int k = 0; k < 8; k++) mean->loss_mtp[k] = v[4 + k] * w;
    return FR_OK;
}

/* What the formulas put on the wire per step for this rank (fr_train_event.comm_model_bytes):
 * ring all-reduce 2 (G-1)/G x bytes, reduce-scatter and all-gather (G-1)/G x bytes each, and for
 * each MoE block four all-to-all exchanges (rows out and back, forward and backward) of
 * tokens x top-k x hidden x 4 x (P-1)/P under uniform routing. */
static void comm_model(const run *r, int local_B, int T, double out[4]) {
    memset(out, 0, 4 * sizeof(double));
    const fr_dist *d = &r->dist;
    for (int k = 0; k < d->n_seg; k++) {
        const fr_comm *g = d->seg[k].owned ? d->dp : d->world;
        const double G = g->size, bytes = (double)(d->seg[k].hi - d->seg[k].lo) * sizeof(float);
        if (G < 2) continue;
        if (d->zero1) {
            out[1] += (G - 1) / G * bytes;
            out[2] += (G - 1) / G * bytes;
        } else {
            out[0] += 2 * (G - 1) / G * bytes;
        }
    }
    if (d->ep) {
        const fr_config *c = &r->m->cfg;
        const double P = d->ep->size, row = (double)c->num_experts_per_tok * c->hidden_size * sizeof(float);
        const int L = c->num_hidden_layers;
        for (int l = 0; l < L + r->m->mtp_depth; l++) {
            if (!r->m->blocks[l].is_moe) continue;
            const int Tk = l < L ? T : T - (l - L + 1); /* MTP module k sees T - k positions */
            if (Tk > 0) out[3] += 4 * (double)local_B * Tk * row * (P - 1) / P;
        }
    }
    for (int k = 0; k < 4; k++) out[k] *= r->a->grad_accum;
}

static int train_steps(run *r, fr_train_result *res) {
    const fr_train_args *a = r->a;
    const int B = a->batch_size, T = a->seq_len, N = B * T;
    const int local_B = B / r->nranks; /* this rank's slice of each batch */
    const int E = r->m->cfg.n_routed_experts;
    const int n_moe = fr_model_num_moe_blocks(r->m);
    /* a LoRA run skips the frozen base's weight-gradient GEMMs: about a third of the 6 N P */
    const double step_flops = fr_model_train_flops(r->m, B, T) * a->grad_accum * (r->m->n_lora ? 2.0 / 3.0 : 1.0);
    int *tokens = malloc((size_t)N * sizeof(int)), *targets = malloc((size_t)N * sizeof(int));
    const size_t n_counts = (size_t)n_moe * (size_t)E; /* 0 for a dense model */
    float *fcounts = calloc(n_counts + 1, sizeof(float));
    double comm_model_bytes[4];
    comm_model(r, local_B, T, comm_model_bytes);
    long *counts = calloc(n_counts + 1, sizeof(long));
    long *micro_counts = calloc(n_counts + 1, sizeof(long));
    int *layer_idx = calloc((size_t)n_moe + 1, sizeof(int));
    int rc = FR_OK;
    if (!tokens || !targets || !counts || !micro_counts || !layer_idx || !fcounts) rc = fr_error(FR_ERR_NOMEM, "out of memory");
    rc = fr_comm_agree(r->world, rc);

    while (rc == FR_OK && r->step < r->max_steps) {
        float stop = r->hooks && r->hooks->should_stop && r->hooks->should_stop(r->hooks->user);
        if (r->nranks > 1 && (rc = fr_comm_allreduce(r->world, &stop, 1)) != FR_OK) break; /* any rank's Ctrl-C */
        if (stop > 0) {
            res->interrupted = 1;
            break;
        }
        const double t0 = now_s();
        fr_comm_stats comm0 = *r->world->stats;
        if (!r->grads_zero) fr_dist_zero_grads(&r->dist, r->m); /* (never the other ranks' experts) */
        r->grads_zero = 0;
        memset(counts, 0, n_counts * sizeof(long));
        fr_loss_info mean;
        memset(&mean, 0, sizeof mean);
        for (int micro = 0; micro < a->grad_accum && rc == FR_OK; micro++) {
            for (int b = 0; b < local_B && rc == FR_OK; b++) {
                long seq = ((long)r->step * a->grad_accum + micro) * B + (long)r->rank * local_B + b;
                uint64_t pos;
                rc = sampler_get(&r->data, seq, tokens + (size_t)b * T, targets + (size_t)b * T, &pos);
                if (r->kd_pos) r->kd_pos[b] = pos;
            }
            if (rc == FR_OK && r->teacher) { /* the teacher's top-k for these windows */
                rc = fr_teacher_topk(r->teacher, local_B, tokens, r->kd_pos, r->kd_idx, r->kd_logit, r->kd_lse);
                if (rc == FR_OK)
                    rc = fr_model_set_distill(r->m, r->kd_idx, r->kd_logit, r->kd_lse, a->distill_topk,
                                              (float)a->distill_temperature, (float)a->distill_alpha);
            }
            rc = fr_comm_agree(r->world, rc); /* a rank that could not read its slice stops the job */
            fr_loss_info li;
            r->m->ep_active = 1; /* the training forward and backward route tokens to the experts' owners */
            if (rc == FR_OK) rc = fr_model_forward(r->m, tokens, targets, local_B, T, &li);
            if (rc == FR_OK && n_moe > 0) { /* before backward, which retires the forward */
                rc = fr_model_expert_counts(r->m, micro_counts, layer_idx);
                for (size_t i = 0; i < n_counts; i++) counts[i] += micro_counts[i];
            }
            /* the last micro-batch's backward starts reducing each span of final gradients */
            const int overlap = r->nranks > 1 && r->dist.overlap && micro == a->grad_accum - 1;
            if (overlap) fr_dist_attach(&r->dist, r->m, 1);
            if (rc == FR_OK) rc = fr_model_backward(r->m);
            if (overlap) fr_dist_attach(&r->dist, r->m, 0);
            r->m->ep_active = 0;
            if (rc != FR_OK) break;
            const double w = 1.0 / a->grad_accum;
            mean.loss += w * li.loss;
            mean.loss_main += w * li.loss_main;
            for (int k = 0; k < 8; k++) mean.loss_mtp[k] += w * li.loss_mtp[k];
            mean.loss_balance += w * li.loss_balance;
            mean.loss_kd += w * li.loss_kd;
            mean.n_targets += li.n_targets;
        }
        if (rc != FR_OK) break;
        /* the job's gradients, losses and expert loads (sums of small counts: exact in FP32) */
        rc = r->dist.overlap ? fr_dist_finish_grads(&r->dist, r->m) : fr_dist_reduce_grads(&r->dist, r->m);
        if (rc == FR_OK) rc = average_losses(r, &mean);
        if (rc == FR_OK && n_counts > 0 && r->nranks > 1) {
            for (size_t i = 0; i < n_counts; i++) fcounts[i] = (float)counts[i];
            rc = fr_comm_allreduce(r->world, fcounts, n_counts);
            for (size_t i = 0; i < n_counts; i++) counts[i] = (long)fcounts[i];
        }
        if (rc != FR_OK) break;
        if (!isfinite(mean.loss)) {
            rc = fr_error(FR_ERR_STATE, "loss is %f at step %ld: training diverged (lower the learning rate)", mean.loss, r->step + 1);
            break;
        }
        /* every rank's gradient is of its own mean loss: the job's is their average */
        const double scale = 1.0 / a->grad_accum / r->nranks;
        /* On host memory AdamW's pass also zeroes the gradients for the next step and, when the
         * norm is only reported (no clipping, one process), sums their squares: two passes over
         * the gradients instead of three, or one (docs/training.md, "One step"). Same numbers */
        const int fused = r->m->ops->host_memory, norm_in_step = fused && !(a->grad_clip > 0) && r->nranks == 1;
        double sumsq = 0;
        if (!norm_in_step && (rc = fr_dist_grad_sumsq(&r->dist, r->m, &sumsq)) != FR_OK) break;
        double gnorm = sqrt(sumsq) * scale;
        double clip = 1.0;
        if (a->grad_clip > 0 && gnorm > a->grad_clip) clip = a->grad_clip / gnorm;
        const double lr = fr_train_lr(a, r->step, r->max_steps);
        const fr_adamw_hparams hp = {lr, a->beta1, a->beta2, a->eps, a->weight_decay, r->step + 1, scale * clip};
        const fr_adamw_extra hx = {a->lr_router_scale, a->lr_experts_scale, fused, norm_in_step ? &sumsq : NULL};
        rc = fr_adamw_step_ranges(r->m, r->mom, r->var, r->moments_bf16, r->dist.ranges, r->dist.n_ranges, &hp, &hx);
        if (rc == FR_OK && norm_in_step) gnorm = sqrt(sumsq) * scale;
        if (rc == FR_OK && fused) {
            fr_dist_zero_grads_rest(&r->dist, r->m);
            r->grads_zero = 1;
        }
        if (rc == FR_OK) rc = fr_dist_gather_params(&r->dist, r->m); /* ZeRO-1: the updated shards to all */
        if (rc != FR_OK) break;
        if (n_moe > 0 && a->bias_update_speed > 0 && (rc = fr_router_bias_update(r->m, counts, a->bias_update_speed)) != FR_OK)
            break;
        /* a GPU op that failed (an unsupported shape, out of memory in a kernel's scratch) stops
         * the run here, before the step is counted or saved */
        if ((rc = fr_device_status(r->m->ops, "the training step")) != FR_OK) break;
        r->step++;
        r->tokens_done += (double)N * a->grad_accum;
        r->flops_done += step_flops;
        r->last_loss = mean.loss;
        const double dt = now_s() - t0;

        fr_train_event ev;
        memset(&ev, 0, sizeof ev);
        ev.type = FR_EV_STEP;
        ev.step = r->step;
        ev.max_steps = r->max_steps;
        ev.tokens = r->tokens_done;
        ev.loss = mean;
        ev.lr = lr;
        ev.grad_norm = gnorm;
        ev.tokens_per_s = dt > 0 ? (double)N * a->grad_accum / dt : 0;
        ev.gflops = dt > 0 ? step_flops / dt / 1e9 : 0;
        ev.mfu = a->peak_gflops > 0 ? ev.gflops / (a->peak_gflops * r->nranks) : 0; /* each rank's peak */
        ev.elapsed_s = fr_run_elapsed(r);
        const double seg_steps = r->step - r->seg_first_step; /* steps done in this segment */
        ev.eta_s = (now_s() - r->t_loop) / (seg_steps > 0 ? seg_steps : 1) * (double)(r->max_steps - r->step);
        {
            fr_ledger_entry tmp = r->led;
            tmp.wall_s = ev.elapsed_s;
            fr_ledger_price(&tmp, &a->prices);
            ev.cost_usd = tmp.cost_usd;
        }
        ev.n_moe = n_moe < 64 ? n_moe : 64;
        ev.rss_peak_bytes = rss_peak_bytes();
        ev.mem_plan_bytes = r->mem_plan;
        ev.world_size = r->nranks;
        {
            const fr_comm_stats *cs = r->world->stats;
            double secs = 0;
            for (int k = 0; k < FR_COMM_KINDS; k++) secs += cs->seconds[k] - comm0.seconds[k];
            for (int k = 0; k < 4; k++) {
                ev.comm_bytes[k] = cs->bytes[k] - comm0.bytes[k];
                ev.comm_model_bytes[k] = comm_model_bytes[k];
            }
            ev.comm_share = dt > 0 ? secs / dt : 0;
        }

        cJSON *j = fr_run_metrics_object(r, "step");
        cJSON_AddNumberToObject(j, "tokens", r->tokens_done);
        cJSON_AddStringToObject(j, "precision", r->a->precision[0] ? r->a->precision : "fp32");
        cJSON_AddNumberToObject(j, "loss", mean.loss);
        cJSON_AddNumberToObject(j, "loss_main", mean.loss_main);
        if (r->m->mtp_depth > 0) { /* one per MTP module; "loss" = loss_main + lambda x their mean + balance */
            cJSON *mtp = cJSON_AddArrayToObject(j, "loss_mtp");
            for (int k = 0; k < r->m->mtp_depth && k < 8; k++) cJSON_AddItemToArray(mtp, cJSON_CreateNumber(mean.loss_mtp[k]));
        }
        cJSON_AddNumberToObject(j, "loss_balance", mean.loss_balance);
        if (r->teacher) cJSON_AddNumberToObject(j, "loss_kd", mean.loss_kd); /* mean KL(teacher_T || student_T) */
        cJSON_AddNumberToObject(j, "lr", lr);
        cJSON_AddNumberToObject(j, "grad_norm", gnorm);
        cJSON_AddNumberToObject(j, "tokens_per_s", ev.tokens_per_s);
        cJSON_AddNumberToObject(j, "gflops", ev.gflops);
        cJSON_AddNumberToObject(j, "mfu", ev.mfu);
        cJSON_AddNumberToObject(j, "elapsed_s", ev.elapsed_s);
        cJSON_AddNumberToObject(j, "cost_usd", ev.cost_usd);
        cJSON_AddNumberToObject(j, "rss_peak_bytes", (double)ev.rss_peak_bytes);
        cJSON_AddNumberToObject(j, "mem_plan_bytes", (double)ev.mem_plan_bytes);
        if (r->nranks > 1) { /* this rank's (rank 0's) communication this step */
            static const char *const kinds[4] = {"allreduce", "reduce_scatter", "allgather", "alltoall"};
            cJSON *cj = cJSON_AddObjectToObject(j, "comm");
            cJSON_AddNumberToObject(cj, "world", r->nranks);
            cJSON_AddNumberToObject(cj, "ep", r->dist.ep_size);
            cJSON_AddBoolToObject(cj, "zero1", r->dist.zero1);
            for (int k = 0; k < 4; k++) {
                cJSON *kj = cJSON_AddObjectToObject(cj, kinds[k]);
                cJSON_AddNumberToObject(kj, "bytes", ev.comm_bytes[k]);
                cJSON_AddNumberToObject(kj, "model_bytes", ev.comm_model_bytes[k]);
            }
            cJSON_AddNumberToObject(cj, "time_share", ev.comm_share);
        }
        if (n_moe > 0) {
            cJSON *mv = cJSON_AddArrayToObject(j, "maxvio");
            cJSON *load = cJSON_AddArrayToObject(j, "expert_load");
            cJSON *layers = cJSON_AddArrayToObject(j, "moe_layers");
            for (int i = 0; i < n_moe; i++) {
                const long *c = counts + (size_t)i * E;
                long total = 0, mx = 0;
                for (int e = 0; e < E; e++) {
                    total += c[e];
                    if (c[e] > mx) mx = c[e];
                }
                double meanload = (double)total / E;
                double vio = meanload > 0 ? (mx - meanload) / meanload : 0;
                if (i < 64) ev.maxvio[i] = vio;
                cJSON_AddItemToArray(mv, cJSON_CreateNumber(vio));
                cJSON_AddItemToArray(layers, cJSON_CreateNumber(layer_idx[i]));
                cJSON *row = cJSON_CreateArray();
                for (int e = 0; e < E; e++) cJSON_AddItemToArray(row, cJSON_CreateNumber(total > 0 ? (double)c[e] / total : 0));
                cJSON_AddItemToArray(load, row);
            }
        }
        fr_run_metrics_line(r, j);
        cJSON_Delete(j);
        emit(r, &ev);

        /* each phase ends with every rank knowing whether all got through it */
        const int last = r->step == r->max_steps;
        /* --eval-interval 0: only at the end, as the help says (it used to mean never) */
        if ((a->eval_interval > 0 && r->step % a->eval_interval == 0) || last) rc = fr_comm_agree(r->world, do_eval(r));
        if (rc == FR_OK && a->sample_interval > 0 && (r->step % a->sample_interval == 0 || last))
            rc = fr_comm_agree(r->world, do_sample(r));
        if (rc == FR_OK && !last && a->ckpt_interval > 0 && r->step % a->ckpt_interval == 0) rc = do_checkpoint(r);
        else if (rc == FR_OK && !last && r->rank == 0 && now_s() - r->t_progress >= g_progress_interval) {
            /* between checkpoints too: a crash then loses at most one interval of the record */
            ledger_fill(r, "running");
            rc = fr_ledger_update(r->ledger_path, &r->led);
            r->t_progress = now_s();
        }
        rc = fr_comm_agree(r->world, rc); /* (one process: rc itself) */
    }
    free(fcounts);
    free(tokens);
    free(targets);
    free(counts);
    free(micro_counts);
    free(layer_idx);
    return rc;
}

static int ensure_dir(const char *dir) {
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) return fr_error(FR_ERR_IO, "cannot create %s: %s", dir, strerror(errno));
    return FR_OK;
}

static int dir_has_run(const char *dir) {
    char path[1200];
    snprintf(path, sizeof path, "%s/train_args.json", dir);
    return access(path, F_OK) == 0;
}

static int dir_has_checkpoint(const char *dir) {
    char ck[1200];
    int ok = fr_train_latest_checkpoint(dir, ck, sizeof ck) == FR_OK;
    fr_clear_error();
    return ok;
}

/* The run folder's lock: flock(2) on RUN_DIR/.lock for the whole of fr_train, so two
 * trainers never share a folder. The kernel drops it when the process ends, however it ends
 * (kill -9 leaves no stale lock); the pid written into the file names the holder. */
static int lock_run_dir(const char *dir, int *fd_out) {
    *fd_out = -1;
    char path[1200];
    if ((size_t)snprintf(path, sizeof path, "%s/.lock", dir) >= sizeof path)
        return fr_error(FR_ERR_ARG, "run folder path too long: %s", dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return fr_error(FR_ERR_IO, "cannot open the run folder's lock %s: %s", path, strerror(errno));
    while (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        if (errno == EINTR) continue;
        if (errno == EWOULDBLOCK) {
            char buf[32] = {0};
            ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
            long pid = n > 0 ? strtol(buf, NULL, 10) : 0;
            close(fd);
            if (pid > 0)
                return fr_error(FR_ERR_STATE, "%s is in use by another trainer (pid %ld): stop it or wait for it to finish",
                                dir, pid);
            return fr_error(FR_ERR_STATE, "%s is in use by another trainer (its pid is not yet in %s)", dir, path);
        }
        if (errno == ENOLCK || errno == EOPNOTSUPP) break; /* a filesystem without locks: go on unlocked */
        int e = errno;
        close(fd);
        return fr_error(FR_ERR_IO, "cannot lock %s: %s", path, strerror(e));
    }
    char buf[32];
    const int n = snprintf(buf, sizeof buf, "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) != 0 || pwrite(fd, buf, (size_t)n, 0) != n) {
        int e = errno;
        close(fd);
        return fr_error(FR_ERR_IO, "cannot write %s: %s", path, strerror(e));
    }
    *fd_out = fd;
    return FR_OK;
}

static int train_locked(const fr_train_args *args_in, int resume, const fr_train_hooks *hooks, fr_train_result *res,
                        fr_comm *world);

struct fr_comm *fr_world_comm(void); /* comm/world.c */

int fr_train(const fr_train_args *args_in, int resume, const fr_train_hooks *hooks, fr_train_result *res) {
    fr_comm *world = fr_world_comm(), *self = NULL;
    if (!world) FR_CHECK(fr_comm_self(&self));
    const int rc = fr_train_in(args_in, resume, hooks, res, world ? world : self);
    fr_comm_free(self);
    return rc;
}

/* Rank 0 alone owns the run folder (its lock, its leftovers); every rank checks the arguments
 * and learns whether rank 0 got the lock. */
int fr_train_in(const fr_train_args *args_in, int resume, const fr_train_hooks *hooks, fr_train_result *res,
                fr_comm *world) {
    fr_clear_error();
    if (!args_in || !res || !world) return fr_error(FR_ERR_ARG, "fr_train: NULL argument");
    memset(res, 0, sizeof *res);
    int rc = FR_OK;
    if (resume) {
        struct stat st;
        if (!args_in->run_dir[0] || stat(args_in->run_dir, &st) != 0 || !S_ISDIR(st.st_mode))
            rc = fr_error(FR_ERR_IO, "cannot resume: %s is not a run folder (no train_args.json)", args_in->run_dir);
    } else {
        rc = fr_train_args_check(args_in);
        if (rc == FR_OK) rc = ensure_dir(args_in->run_dir);
    }
    int fd = -1;
    if (rc == FR_OK && world->rank == 0) {
        rc = lock_run_dir(args_in->run_dir, &fd);
        if (rc == FR_OK) fr_run_remove_leftovers(args_in->run_dir);
    }
    rc = fr_comm_agree(world, rc);
    if (rc == FR_OK) rc = train_locked(args_in, resume, hooks, res, world);
    if (fd >= 0) close(fd);
    return rc;
}

/* LoRA: adapters on the loaded base (and, resuming, the checkpoint's adapter weights) */
static int setup_lora(run *r, fr_train_args *a, const char *ckpt) {
    if (a->expert_parallel > 1) return fr_error(FR_ERR_UNSUPPORTED, "LoRA runs do not split the experts (--ep): drop --ep");
    if (a->lora_alpha <= 0) a->lora_alpha = 2.0 * a->lora_rank;
    const size_t base = fr_model_num_params(r->m);
    FR_CHECK(fr_model_add_lora(r->m, a->lora_rank, a->lora_alpha, a->lora_targets[0] ? a->lora_targets : "all",
                               a->lora_rslora, a->seed));
    if (ckpt) FR_CHECK(fr_model_lora_load(r->m, ckpt));
    if (a->lora_base[0] && strcmp(a->lora_base, "f32") != 0) {
        FR_CHECK(fr_model_lora_quantize_base(r->m, a->lora_base));
        size_t fp32 = 0;
        const size_t q = fr_model_lora_base_bytes(r->m, &fp32);
        fr_run_info(r, "LoRA: the frozen base's block linears kept as %s: %.1f MiB instead of %.1f MiB in FP32", a->lora_base,
                    q / 1048576.0, fp32 / 1048576.0);
    }
    const size_t adapters = fr_model_num_params(r->m) - base;
    fr_run_info(r, "LoRA: rank %d, alpha %g%s on %d matrices (%s): %zu trainable parameters, %.3f %% of the %zu "
                   "frozen ones",
                a->lora_rank, a->lora_alpha, a->lora_rslora ? " (rsLoRA)" : "", fr_model_lora_sites(r->m),
                a->lora_targets[0] ? a->lora_targets : "all", adapters, 100.0 * (double)adapters / (double)base, base);
    if (a->bias_update_speed > 0) {
        fr_run_info(r, "LoRA: the router-bias balancer is off (it would change the frozen base)");
        a->bias_update_speed = 0;
    }
    return FR_OK;
}

/* Logit distillation: the teacher (a model folder, or top-k shards beside the data) */
static int setup_teacher(run *r, const fr_train_args *a) {
    const int local_B = a->batch_size / r->nranks, K = a->distill_topk;
    FR_CHECK(fr_teacher_open(&r->teacher, a->teacher, K, a->seq_len, (float)a->distill_temperature, r->data.train,
                             r->m->cfg.vocab_size));
    r->kd_idx = malloc((size_t)local_B * a->seq_len * K * sizeof *r->kd_idx);
    r->kd_logit = malloc((size_t)local_B * a->seq_len * K * sizeof *r->kd_logit);
    r->kd_lse = malloc((size_t)local_B * a->seq_len * sizeof *r->kd_lse);
    r->kd_pos = malloc((size_t)local_B * sizeof *r->kd_pos);
    if (!r->kd_idx || !r->kd_logit || !r->kd_lse || !r->kd_pos) return fr_error(FR_ERR_NOMEM, "out of memory for the teacher's top-k");
    fr_run_info(r, "distillation: loss = %g x T^2 KL + %g x CE at T = %g, the teacher's top-%d and the rest %s", a->distill_alpha,
                1 - a->distill_alpha, a->distill_temperature, K,
                a->teacher[0] ? a->teacher : "from the top-k shards beside the data");
    return FR_OK;
}

static int train_locked(const fr_train_args *args_in, int resume, const fr_train_hooks *hooks, fr_train_result *res,
                        fr_comm *world) {
    const double t_start = now_s(); /* the segment's wall time includes loading */
    char resumed_precision[8] = {0}; /* the saved precision, when --resume switches it */
    char saved_moments[8] = {0};     /* the moment format train_args.json holds ("fp32" if none), to see a switch */
    fr_train_args args = *args_in;
    char path[1200];
    if (resume) {
        snprintf(path, sizeof path, "%s/train_args.json", args_in->run_dir);
        char *text = NULL;
        size_t len = 0;
        if (fr_read_file(path, &text, &len) != FR_OK)
            return fr_error(FR_ERR_IO, "cannot resume: %s is not a run folder (no train_args.json)", args_in->run_dir);
        int rc = fr_train_args_from_json(&args, text, len, path);
        free(text);
        FR_CHECK(rc);
        snprintf(saved_moments, sizeof saved_moments, "%s", args.moments[0] ? args.moments : "fp32");
        snprintf(args.run_dir, sizeof args.run_dir, "%s", args_in->run_dir);
        if (args_in->max_steps > 0) {
            args.max_steps = args_in->max_steps;
            args.max_tokens = 0;
        } else if (args_in->max_tokens > 0) {
            args.max_tokens = args_in->max_tokens;
            args.max_steps = 0;
        }
        if (args_in->peak_gflops > 0) args.peak_gflops = args_in->peak_gflops;
        args.expert_parallel = args_in->expert_parallel; /* the launch's layout, not the saved one */
        args.zero1 = args_in->zero1;
        args.node_limit = args_in->node_limit;
        if (args_in->precision[0] && strcmp(args_in->precision, args.precision[0] ? args.precision : "fp32") != 0) {
            snprintf(resumed_precision, sizeof resumed_precision, "%s", args.precision[0] ? args.precision : "fp32");
            snprintf(args.precision, sizeof args.precision, "%s", args_in->precision);
            args.moments[0] = 0; /* the new precision's default, unless given below */
        }
        if (args_in->moments[0]) snprintf(args.moments, sizeof args.moments, "%s", args_in->moments);
        const int saved_tiles = args.fp8_grad_tile_rows ? args.fp8_grad_tile_rows : 1;
        if (args_in->fp8_grad_tile_rows && args_in->fp8_grad_tile_rows != saved_tiles)
            return fr_error(FR_ERR_ARG, "cannot resume with other FP8 output-gradient tiles (the run has %s)",
                            saved_tiles == 128 ? "128x128" : "1x128");
    }
    FR_CHECK(fr_train_args_check(&args));
    /* a run that died before its first checkpoint left nothing to resume: start it over */
    const int dead_end = dir_has_run(args.run_dir) && !dir_has_checkpoint(args.run_dir);
    if (!resume && dir_has_run(args.run_dir) && !dead_end)
        return fr_error(FR_ERR_STATE, "%s already holds a run: resume it (--resume) or choose another folder", args.run_dir);

    run r;
    memset(&r, 0, sizeof r);
    r.world = world;
    r.rank = world->rank;
    r.nranks = world->size;
    r.a = &args;
    r.hooks = hooks;
    r.t_start = t_start;
    r.last_loss = NAN;
    r.last_val = NAN;
    r.data.perm_epoch = -1;
    r.data.T = args.seq_len;
    r.data.seed = args.seed;
    if (args.threads > 0) fr_set_num_threads(args.threads);
    int threads = args.threads > 0 ? args.threads : omp_get_max_threads();

    int rc = FR_OK;
    if (args.batch_size % r.nranks != 0)
        rc = fr_error(FR_ERR_ARG, "--batch %d (the global batch) must split evenly over the %d ranks of this job",
                      args.batch_size, r.nranks);
    if (rc == FR_OK) rc = fr_dataset_open(&r.data.train, args.data_dir, "train");
    int no_val = 0;
    if (rc == FR_OK && fr_dataset_open(&r.data.val, args.data_dir, "val") != FR_OK) {
        r.data.val = NULL; /* a corpus too small for a validation split still trains */
        no_val = 1;
        fr_clear_error();
    }
    if (rc == FR_OK) {
        uint64_t nt = fr_dataset_num_tokens(r.data.train);
        if (nt < (uint64_t)args.seq_len + 1) rc = fr_error(FR_ERR_ARG, "%s: the training split has %llu tokens, fewer than one sequence of %d",
                                                           args.data_dir, (unsigned long long)nt, args.seq_len + 1);
        r.data.n_chunks = (long)((nt - 1) / (uint64_t)args.seq_len);
        r.data.perm = malloc((size_t)(r.data.n_chunks > 0 ? r.data.n_chunks : 1) * sizeof(long));
        r.data.buf = malloc(((size_t)args.seq_len + 1) * sizeof(int));
        r.data.mask = malloc((size_t)args.seq_len + 1);
        if (!r.data.perm || !r.data.buf || !r.data.mask) rc = fr_error(FR_ERR_NOMEM, "out of memory");
    }
    if (rc == FR_OK && fr_tokenizer_load(&r.tok, args.data_dir) != FR_OK) {
        r.tok = NULL; /* samples and bits per byte need it; the loss does not */
        fr_clear_error();
    }

    /* the model: from the latest checkpoint, a given folder, or a fresh init from the config */
    char ckpt[1200] = {0};
    const int from_ckpt = resume && !dead_end;
    if (dead_end)
        fr_run_info(&r, "%s holds a run that never reached a checkpoint: starting over from step 0 with %s arguments "
                 "(the ledger keeps the earlier attempt)", args.run_dir, resume ? "its saved" : "the given");
    const int lora = args.lora_rank > 0;
    if (rc == FR_OK && from_ckpt) {
        rc = fr_train_latest_checkpoint(args.run_dir, ckpt, sizeof ckpt);
        if (rc == FR_OK) rc = fr_model_load(&r.m, lora ? args.init_model : ckpt); /* (a LoRA checkpoint: the adapter) */
    } else if (rc == FR_OK && args.init_model[0]) {
        rc = fr_model_load(&r.m, args.init_model);
    } else if (rc == FR_OK) {
        fr_config cfg;
        rc = fr_config_load(&cfg, args.model_config);
        if (rc == FR_OK) rc = fr_model_create(&r.m, &cfg, args.seed);
    }
    if (rc == FR_OK && r.data.train && fr_dataset_vocab_size(r.data.train) > r.m->cfg.vocab_size)
        rc = fr_error(FR_ERR_CONFIG, "the data's vocabulary (%d) is larger than the model's vocab_size (%d)",
                      fr_dataset_vocab_size(r.data.train), r.m->cfg.vocab_size);
    if (rc == FR_OK && args.seq_len > r.m->cfg.max_position_embeddings)
        fr_run_info(&r, "warning: the sequence length %d is above the model's max_position_embeddings %d: positions past %d "
                 "are beyond what the model is configured for", args.seq_len, r.m->cfg.max_position_embeddings,
             r.m->cfg.max_position_embeddings);
    if (rc == FR_OK && lora) rc = setup_lora(&r, &args, from_ckpt ? ckpt : NULL);
    if (rc == FR_OK && args.distill_topk > 0) rc = setup_teacher(&r, &args);
    if (rc == FR_OK) rc = fr_model_set_precision(r.m, args.precision[0] ? args.precision : "fp32");
    if (rc == FR_OK) rc = fr_model_set_fp8_grad_tiles(r.m, args.fp8_grad_tile_rows == 128 ? 128 : 1);
    if (rc == FR_OK && !strcmp(fr_model_precision(r.m), "bf16")) {
        fr_run_info(&r, "bf16 GEMMs: %s", fr_bf16_gemm_path());
        if (!fr_bf16_hardware())
            fr_run_info(&r, "warning: no BF16 hardware that frugal can use here (AMX; or AVX512-BF16, which on Intel is "
                     "no faster than FP32): --precision bf16 runs an exact emulation, no faster than fp32");
    }
    if (rc == FR_OK && !strcmp(fr_model_precision(r.m), "fp8") && args.fp8_grad_tile_rows == 128)
        fr_run_info(&r, "fp8 experiment: output gradients in 128x128 blocks for the input-gradient GEMM (the recipe: 1x128)");
    if (rc == FR_OK && resumed_precision[0])
        fr_run_info(&r, "precision: %s from here on (the run so far: %s); recorded in train_args.json and the ledger",
             args.precision, resumed_precision);
    if (rc == FR_OK) {
        fr_loss_weights w = {(float)args.mtp_lambda, (float)args.balance_alpha};
        fr_model_set_loss_weights(r.m, w);
        r.moments_bf16 = !strcmp(fr_train_moments(&args), "bf16");
        rc = fr_dist_setup(&r.dist, world, r.m, args.expert_parallel, args.zero1);
    }
    if (rc == FR_OK && args.node_limit > 0) {
        int changed = 0;
        rc = fr_dist_node_limit(&r.dist, r.m, args.node_limit, &changed);
        if (rc == FR_OK && changed)
            fr_run_info(&r, "node-limited routing: each token's experts on at most %d of the %d ranks of its expert group "
                            "(the model's routing now has n_group %d, topk_group %d; saved with every checkpoint)",
                        args.node_limit, r.dist.ep_size, r.m->cfg.n_group, r.m->cfg.topk_group);
    }
    if (rc == FR_OK) rc = fr_model_set_expert_parallel(r.m, r.dist.ep);
    if (rc == FR_OK) fr_dist_release_foreign(&r.dist, r.m); /* this rank keeps its own experts only */
    if (rc == FR_OK) {
        if (args.lr_router_scale != 1 || args.lr_experts_scale != 1) { /* (a dense model has neither) */
            int routers = 0, experts = 0;
            for (int i = 0; i < r.m->n_tensors; i++) routers += r.m->tensors[i].router, experts += r.m->tensors[i].expert >= 0;
            fr_run_info(&r, "learning rate x %g for the routers' weights (%d tensors), x %g for the routed experts' (%d tensors)",
                        args.lr_router_scale, routers, args.lr_experts_scale, experts);
        }
        if (r.moments_bf16) fr_run_info(&r, "AdamW moments stored in bf16 (half the optimizer memory: %.1f MiB saved)",
                                 r.dist.n_moments * 4.0 / 1048576.0);
        if (r.nranks > 1)
            fr_run_info(&r, "%d ranks: %d data-parallel x %d expert-parallel%s, %d of the %d sequences of each micro-batch per "
                     "rank; rank 0 keeps the AdamW moments of %.1f %% of the parameters",
                 r.nranks, r.nranks / r.dist.ep_size, r.dist.ep_size, r.dist.zero1 ? " with ZeRO-1" : "",
                 args.batch_size / r.nranks, args.batch_size, 100.0 * (double)r.dist.n_moments / (double)r.m->n_params);
        /* the moments live where the optimizer runs: the device when its backend has the kernels */
        const size_t mbytes = (r.dist.n_moments + 1) * (r.moments_bf16 ? sizeof(uint16_t) : sizeof(float));
        r.moments_in_backend = fr_adamw_in_backend(r.m);
        r.mom = r.moments_in_backend ? r.m->ops->alloc(mbytes) : fr_alloc(mbytes);
        r.var = r.moments_in_backend ? r.m->ops->alloc(mbytes) : fr_alloc(mbytes);
        if (!r.mom || !r.var) rc = fr_error(FR_ERR_NOMEM, "out of memory for the AdamW moments");
    }
    if (rc == FR_OK && from_ckpt) rc = fr_run_load_state(&r, ckpt);
    const long tokens_per_step = (long)args.batch_size * args.seq_len * args.grad_accum;
    r.max_steps = args.max_steps > 0 ? args.max_steps : (long)ceil(args.max_tokens / (double)tokens_per_step);
    if (rc == FR_OK && resume && r.step >= r.max_steps)
        rc = fr_error(FR_ERR_STATE, "%s is already at step %ld of %ld: nothing to resume (raise --steps)", args.run_dir, r.step, r.max_steps);

    /* run folder, saved arguments, metrics, ledger: rank 0 writes them, once every rank has
     * loaded what it needs */
    rc = fr_comm_agree(world, rc);
    const int writer = r.rank == 0;
    if (rc == FR_OK && writer) rc = ensure_dir(args.run_dir);
    if (rc == FR_OK && writer && !resume) { /* (over a dead end's arguments too) */
        cJSON *j = fr_train_args_to_json(&args);
        snprintf(path, sizeof path, "%s/train_args.json", args.run_dir);
        rc = fr_train_write_json(path, j);
        cJSON_Delete(j);
    }
    const int moments_switch = saved_moments[0] && strcmp(saved_moments, fr_train_moments(&args)) != 0;
    if (rc == FR_OK && writer && resume && (resumed_precision[0] || moments_switch)) { /* the switch is the run's from now on */
        snprintf(path, sizeof path, "%s/train_args.json", args.run_dir);
        char *text = NULL;
        size_t len = 0;
        rc = fr_read_file(path, &text, &len);
        cJSON *j = rc == FR_OK ? cJSON_ParseWithLength(text, len) : NULL;
        free(text);
        if (rc == FR_OK && !j) rc = fr_error(FR_ERR_FORMAT, "%s is not valid JSON", path);
        if (rc == FR_OK) {
            cJSON_DeleteItemFromObjectCaseSensitive(j, "precision");
            cJSON_AddStringToObject(j, "precision", args.precision[0] ? args.precision : "fp32");
            cJSON_DeleteItemFromObjectCaseSensitive(j, "moments");
            cJSON_AddStringToObject(j, "moments", fr_train_moments(&args));
            rc = fr_train_write_json(path, j);
        }
        cJSON_Delete(j);
    }
    snprintf(path, sizeof path, "%s/metrics.jsonl", args.run_dir);
    if (rc == FR_OK && writer && (resume || dead_end)) rc = metrics_truncate(path, r.step);
    if (rc == FR_OK && writer) {
        r.metrics = fopen(path, "a");
        if (!r.metrics) rc = fr_error(FR_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    }
    if (args.ledger_path[0]) snprintf(r.ledger_path, sizeof r.ledger_path, "%s", args.ledger_path);
    else snprintf(r.ledger_path, sizeof r.ledger_path, "%s/../ledger.jsonl", args.run_dir);
    if (rc == FR_OK) {
        fr_ledger_entry *e = &r.led;
        /* a run on fine-tuning data (a loss mask: fr_sft_prepare) is a fine-tune in the ledger */
        snprintf(e->kind, sizeof e->kind, "%s",
                 args.distill_topk > 0 ? "distill" : fr_dataset_has_mask(r.data.train) || lora ? "finetune" : "train");
        snprintf(e->run_dir, sizeof e->run_dir, "%s", args.run_dir);
        snprintf(e->config, sizeof e->config, "%s", args.init_model[0] ? args.init_model : args.model_config);
        /* one record for the job: ranks x threads on the CPU, ranks x 1 on a GPU */
        snprintf(e->device, sizeof e->device, "%s", r.m && !r.m->ops->host_memory ? r.m->ops->name : "cpu");
        e->n_devices = (r.m && !r.m->ops->host_memory ? 1 : threads) * r.nranks;
        e->final_loss = NAN;
        e->val_loss = NAN;
        if (from_ckpt && r.led.run_id[0]) {
            /* same run: continue from what the ledger last saw (it includes work after the
             * checkpoint that a crash threw away: that time was spent too) */
            fr_ledger_entry *all = NULL;
            int n = 0;
            if (writer && fr_ledger_read(r.ledger_path, &all, &n, NULL) == FR_OK) {
                for (int i = 0; i < n; i++)
                    if (strcmp(all[i].run_id, r.led.run_id) == 0) {
                        e->start_unix = all[i].start_unix;
                        if (all[i].wall_s > r.wall_base) r.wall_base = all[i].wall_s;
                        if (all[i].flops > r.flops_done) {
                            /* keep the executed work, not just the checkpointed work */
                            r.flops_done = all[i].flops;
                            r.tokens_done = all[i].tokens;
                        }
                    }
            }
            free(all);
            fr_clear_error();
            e->start_unix = e->start_unix > 0 ? e->start_unix : (double)time(NULL);
            ledger_fill(&r, "running");
            if (writer) rc = fr_ledger_update(r.ledger_path, e);
            fr_run_info(&r, "resumed %s from %s at step %ld", r.led.run_id, ckpt, r.step);
        } else {
            e->start_unix = (double)time(NULL);
            snprintf(e->precision, sizeof e->precision, "%s", args.precision[0] ? args.precision : "fp32");
            if (writer) rc = fr_ledger_begin(r.ledger_path, e);
            else snprintf(e->run_id, sizeof e->run_id, "rank-%d", r.rank); /* marks the entry as begun */
        }
    }
    rc = fr_comm_agree(world, rc);
    r.t_progress = now_s();
    if (rc == FR_OK && no_val) fr_run_info(&r, "%s has no validation split: no validation loss will be reported", args.data_dir);
    /* parameters, gradients and the two AdamW moments; the activations of one micro-batch;
     * and, when oneDNN runs the GEMMs, the copy it packs of a whole operand for the largest
     * products (the output head's B·T x vocab logits gradient; measured +34 MiB on the demo) */
    const int local_B = args.batch_size / r.nranks; /* per rank: its slice of the batch, its moments */
    const size_t gemm_pack = fr_cpu_gemm_uses_onednn() && r.m
                                 ? (size_t)local_B * args.seq_len * fr_model_config(r.m)->vocab_size * sizeof(float)
                                 : 0;
    /* parameters and gradients in FP32, the moments in FP32 or BF16; not planned: the
     * mixed-precision GEMMs' operand copies and oneDNN's BF16 kernels (measured: +25-32 % over
     * this plan in bf16 runs, docs/training.md) */
    const size_t moment_bytes = r.moments_bf16 ? sizeof(uint16_t) : sizeof(float);
    r.mem_plan = r.m ? 2 * (r.m->n_params - r.dist.foreign_floats) * sizeof(float) + 2 * r.dist.n_moments * moment_bytes +
                           fr_model_activation_bytes(r.m, local_B, args.seq_len) + gemm_pack
                     : 0;
    if (rc == FR_OK) {
        snprintf(res->run_id, sizeof res->run_id, "%s", r.led.run_id);
        r.seg_first_step = r.step; /* for the ETA */
        r.t_loop = now_s();
        rc = train_steps(&r, res);
        res->steps_done = r.step;
    }
    /* save what was reached: at the end, on Ctrl-C, never after a failure (the last good
     * checkpoint stays the newest) */
    if (rc == FR_OK && r.step > 0) {
        rc = fr_run_save_checkpoint(&r, res->checkpoint, sizeof res->checkpoint);
    }
    if (r.led.run_id[0] && r.rank == 0) {
        char saved[1024];
        snprintf(saved, sizeof saved, "%s", fr_last_error());
        ledger_fill(&r, rc != FR_OK ? "failed" : res->interrupted ? "interrupted" : "finished");
        int lrc = fr_ledger_update(r.ledger_path, &r.led);
        if (rc == FR_OK) rc = lrc;
        else fr_error(rc, "%s", saved);
    }
    res->final_loss = r.last_loss;
    res->val_loss = r.last_val;
    if (r.metrics) fclose(r.metrics);
    if (r.moments_in_backend) {
        if (r.mom) r.m->ops->free(r.mom);
        if (r.var) r.m->ops->free(r.var);
    } else {
        fr_free(r.mom);
        fr_free(r.var);
    }
    fr_dist_free(&r.dist);
    fr_model_free(r.m);
    fr_teacher_free(r.teacher);
    free(r.kd_idx), free(r.kd_logit), free(r.kd_lse), free(r.kd_pos);
    if (r.tok) fr_tokenizer_free(r.tok);
    if (r.data.train) fr_dataset_close(r.data.train);
    if (r.data.val) fr_dataset_close(r.data.val);
    free(r.data.perm);
    free(r.data.buf);
    free(r.data.mask);
    return rc;
}
