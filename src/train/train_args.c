/*
 * train_args.c — the arguments of a training run: defaults, the checks that refuse an
 * impossible run before anything is written, their saved form (RUN_DIR/train_args.json,
 * all a resume needs) and the learning-rate schedule they define.
 */
#include "core/internal.h"
#include "train/train_internal.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ================================================================ arguments */

void fr_train_args_default(fr_train_args *a) {
    memset(a, 0, sizeof *a);
    a->batch_size = 8;
    a->seq_len = 256;
    a->grad_accum = 1;
    a->lr = 3e-3;
    a->lr_router_scale = 1.0;
    a->lr_experts_scale = 1.0;
    a->min_lr_frac = 0.1;
    a->warmup_steps = 50;
    a->schedule = FR_LR_COSINE;
    a->decay_frac = 0.2;
    a->beta1 = 0.9;
    a->beta2 = 0.95;
    a->eps = 1e-8;
    a->weight_decay = 0.1;
    a->grad_clip = 1.0;
    a->bias_update_speed = 1e-3;
    a->balance_alpha = 1e-4;
    a->mtp_lambda = 0.3;
    a->seed = 1;
    a->eval_interval = 100;
    a->eval_batches = 8;
    a->ckpt_interval = 200;
    a->sample_interval = 200;
    a->sample_tokens = 48;
    a->prices = fr_prices_default(0);
    a->distill_temperature = 2.0;
    a->distill_alpha = 0.5;
}

static const char *SCHEDULES[] = {"cosine", "wsd", "constant"};

int fr_train_args_check(const fr_train_args *a) {
    if (a->batch_size < 1 || a->seq_len < 2 || a->grad_accum < 1)
        return fr_error(FR_ERR_ARG, "batch size, sequence length (>= 2) and accumulation must be positive");
    if (a->max_steps <= 0 && a->max_tokens <= 0) return fr_error(FR_ERR_ARG, "give a number of steps or tokens");
    if (!(a->lr > 0) || a->min_lr_frac < 0 || a->min_lr_frac > 1) return fr_error(FR_ERR_ARG, "learning rate must be > 0 and the floor fraction in [0, 1]");
    if (!(a->lr_router_scale > 0) || !(a->lr_experts_scale > 0) || !isfinite(a->lr_router_scale) ||
        !isfinite(a->lr_experts_scale))
        return fr_error(FR_ERR_ARG, "the router and expert learning-rate scales must be finite and > 0 (got %g and %g)",
                        a->lr_router_scale, a->lr_experts_scale);
    /* the adapters of a LoRA run have one learning rate: its routers and experts are frozen */
    if (a->lora_rank > 0 && (a->lr_router_scale != 1 || a->lr_experts_scale != 1))
        return fr_error(FR_ERR_ARG, "the router and expert learning-rate scales apply to full training, not to LoRA "
                                    "adapters (the routers and experts are frozen there)");
    if (a->beta1 < 0 || a->beta1 >= 1 || a->beta2 < 0 || a->beta2 >= 1 || !(a->eps > 0))
        return fr_error(FR_ERR_ARG, "AdamW betas must lie in [0, 1) and eps be > 0");
    if (a->weight_decay < 0 || a->grad_clip < 0 || a->bias_update_speed < 0 || a->balance_alpha < 0 || a->mtp_lambda < 0)
        return fr_error(FR_ERR_ARG, "weight decay, clipping, gamma, alpha and lambda must be >= 0");
    if (a->warmup_steps < 0 || a->decay_frac < 0 || a->decay_frac > 1) return fr_error(FR_ERR_ARG, "warmup must be >= 0 and the WSD decay fraction in [0, 1]");
    if ((int)a->schedule < 0 || (int)a->schedule > 2) return fr_error(FR_ERR_ARG, "unknown learning-rate schedule");
    if (a->precision[0] && strcmp(a->precision, "fp32") != 0 && strcmp(a->precision, "bf16") != 0 &&
        strcmp(a->precision, "fp8") != 0)
        return fr_error(FR_ERR_ARG, "unknown precision '%s' (fp32, bf16 or fp8)", a->precision);
    if (a->moments[0] && strcmp(a->moments, "fp32") != 0 && strcmp(a->moments, "bf16") != 0)
        return fr_error(FR_ERR_ARG, "unknown AdamW moment format '%s' (fp32 or bf16)", a->moments);
    if (a->fp8_grad_tile_rows != 0 && a->fp8_grad_tile_rows != 1 && a->fp8_grad_tile_rows != 128)
        return fr_error(FR_ERR_ARG, "FP8 output-gradient tiles are 1x128 or 128x128 (got %d rows)", a->fp8_grad_tile_rows);
    if (a->lora_rank < 0 || a->lora_alpha < 0) return fr_error(FR_ERR_ARG, "LoRA rank and alpha must be >= 0");
    if (a->lora_base[0] && strcmp(a->lora_base, "f32") != 0 && strcmp(a->lora_base, "bf16") != 0 &&
        strcmp(a->lora_base, "q8_0") != 0)
        return fr_error(FR_ERR_ARG, "the frozen base can be kept as f32, bf16 or q8_0, not '%s'", a->lora_base);
    if (a->lora_base[0] && strcmp(a->lora_base, "f32") != 0 && a->lora_rank <= 0)
        return fr_error(FR_ERR_ARG, "--lora-base %s needs LoRA (--lora-rank): only a frozen base can be stored quantized",
                        a->lora_base);
    if (a->lora_rank > 0 && !a->init_model[0])
        return fr_error(FR_ERR_ARG, "LoRA fine-tunes an existing model: give the model folder to start from (--init)");
    if (a->distill_topk < 0 || (a->distill_topk > 0 && (!(a->distill_temperature > 0) || a->distill_alpha < 0 ||
                                                         a->distill_alpha > 1)))
        return fr_error(FR_ERR_ARG, "distillation needs top-k >= 1, a temperature > 0 and an alpha in [0, 1]");
    if (!a->run_dir[0] || !a->data_dir[0]) return fr_error(FR_ERR_ARG, "a run folder and a data folder are needed");
    if (!a->model_config[0] && !a->init_model[0]) return fr_error(FR_ERR_ARG, "give a model config or a model folder to start from");
    return FR_OK;
}

/* train_args.json: one table, walked in both directions (save and --resume). The schedule is
 * written by name and the seed as a string (JSON numbers lose 64-bit integers). */
typedef enum { ARG_STR, ARG_INT, ARG_LONG, ARG_DOUBLE } arg_kind;
typedef struct {
    const char *key;
    arg_kind kind;
    size_t offset, size; /* size: buffer size of ARG_STR fields */
} arg_field;

#define A_STR(f) {#f, ARG_STR, offsetof(fr_train_args, f), sizeof(((fr_train_args *)0)->f)}
#define A_NUM(f, k) {#f, k, offsetof(fr_train_args, f), 0}
static const arg_field ARG_FIELDS[] = {
    A_STR(model_config), A_STR(init_model), A_STR(data_dir), A_STR(run_dir),
    A_NUM(batch_size, ARG_INT), A_NUM(seq_len, ARG_INT), A_NUM(grad_accum, ARG_INT),
    A_NUM(max_steps, ARG_LONG), A_NUM(max_tokens, ARG_DOUBLE),
    A_NUM(lr, ARG_DOUBLE), A_NUM(min_lr_frac, ARG_DOUBLE), A_NUM(warmup_steps, ARG_INT),
    A_NUM(decay_frac, ARG_DOUBLE), A_NUM(beta1, ARG_DOUBLE), A_NUM(beta2, ARG_DOUBLE),
    A_NUM(eps, ARG_DOUBLE), A_NUM(weight_decay, ARG_DOUBLE), A_NUM(grad_clip, ARG_DOUBLE),
    A_NUM(bias_update_speed, ARG_DOUBLE), A_NUM(balance_alpha, ARG_DOUBLE), A_NUM(mtp_lambda, ARG_DOUBLE),
    A_NUM(threads, ARG_INT), A_NUM(eval_interval, ARG_INT), A_NUM(eval_batches, ARG_INT),
    A_NUM(ckpt_interval, ARG_INT), A_NUM(sample_interval, ARG_INT), A_NUM(sample_tokens, ARG_INT),
    A_STR(sample_prompt), A_STR(ledger_path),
    {"usd_per_device_hour", ARG_DOUBLE, offsetof(fr_train_args, prices.usd_per_device_hour), 0},
    {"watts_per_device", ARG_DOUBLE, offsetof(fr_train_args, prices.watts_per_device), 0},
    {"usd_per_kwh", ARG_DOUBLE, offsetof(fr_train_args, prices.usd_per_kwh), 0},
    A_NUM(peak_gflops, ARG_DOUBLE),
};
/* fields that runs saved before them lack (read when present) */
static const arg_field OPT_FIELDS[] = {
    A_NUM(lora_rank, ARG_INT), A_NUM(lora_alpha, ARG_DOUBLE), A_NUM(lora_rslora, ARG_INT), A_STR(lora_targets),
    A_STR(lora_base),
    A_STR(teacher), A_NUM(distill_topk, ARG_INT), A_NUM(distill_temperature, ARG_DOUBLE),
    A_NUM(distill_alpha, ARG_DOUBLE), A_NUM(lr_router_scale, ARG_DOUBLE), A_NUM(lr_experts_scale, ARG_DOUBLE),
};
#define N_OPT_FIELDS ((int)(sizeof OPT_FIELDS / sizeof OPT_FIELDS[0]))
#undef A_STR
#undef A_NUM
#define N_ARG_FIELDS ((int)(sizeof ARG_FIELDS / sizeof ARG_FIELDS[0]))

static void add_field(cJSON *j, const arg_field *f, const fr_train_args *a) {
    const char *p = (const char *)a + f->offset;
    switch (f->kind) {
    case ARG_STR: cJSON_AddStringToObject(j, f->key, p); break;
    case ARG_INT: cJSON_AddNumberToObject(j, f->key, *(const int *)p); break;
    case ARG_LONG: cJSON_AddNumberToObject(j, f->key, (double)*(const long *)p); break;
    case ARG_DOUBLE: cJSON_AddNumberToObject(j, f->key, *(const double *)p); break;
    }
}

cJSON *fr_train_args_to_json(const fr_train_args *a) {
    cJSON *j = cJSON_CreateObject();
    for (int i = 0; i < N_ARG_FIELDS; i++) add_field(j, &ARG_FIELDS[i], a);
    cJSON_AddStringToObject(j, "schedule", SCHEDULES[a->schedule]);
    cJSON_AddStringToObject(j, "precision", a->precision[0] ? a->precision : "fp32");
    cJSON_AddStringToObject(j, "fp8_grad_tiles", a->fp8_grad_tile_rows == 128 ? "128x128" : "1x128");
    cJSON_AddStringToObject(j, "moments", fr_train_moments(a));
    for (int i = 0; i < N_OPT_FIELDS; i++) add_field(j, &OPT_FIELDS[i], a);
    char seed[32];
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)a->seed);
    cJSON_AddStringToObject(j, "seed", seed);
    return j;
}

static int json_num(const cJSON *j, const char *key, double *out, const char *path) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
    if (!cJSON_IsNumber(v)) return fr_error(FR_ERR_FORMAT, "%s: \"%s\" is missing or not a number", path, key);
    *out = v->valuedouble;
    return FR_OK;
}

static int json_str(const cJSON *j, const char *key, char *out, size_t n, const char *path) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
    if (!cJSON_IsString(v)) return fr_error(FR_ERR_FORMAT, "%s: \"%s\" is missing or not a string", path, key);
    if (strlen(v->valuestring) >= n) return fr_error(FR_ERR_FORMAT, "%s: \"%s\" is too long", path, key);
    strcpy(out, v->valuestring);
    return FR_OK;
}

const char *fr_train_moments(const fr_train_args *a) {
    if (a->moments[0]) return a->moments;
    return !strcmp(a->precision, "fp8") ? "bf16" : "fp32";
}

int fr_train_args_from_json(fr_train_args *a, const char *text, size_t len, const char *path) {
    cJSON *j = cJSON_ParseWithLength(text, len);
    if (!j) return fr_error(FR_ERR_FORMAT, "%s is not valid JSON", path);
    fr_train_args_default(a);
    int rc = FR_OK;
    for (int i = 0; i < N_ARG_FIELDS + N_OPT_FIELDS && rc == FR_OK; i++) {
        const arg_field *f = i < N_ARG_FIELDS ? &ARG_FIELDS[i] : &OPT_FIELDS[i - N_ARG_FIELDS];
        if (i >= N_ARG_FIELDS && !cJSON_GetObjectItemCaseSensitive(j, f->key)) continue;
        char *p = (char *)a + f->offset;
        double d = 0;
        if (f->kind == ARG_STR) {
            rc = json_str(j, f->key, p, f->size, path);
        } else if ((rc = json_num(j, f->key, &d, path)) == FR_OK) {
            if (f->kind == ARG_INT) *(int *)p = (int)d;
            else if (f->kind == ARG_LONG) *(long *)p = (long)d;
            else *(double *)p = d;
        }
    }
    char sched[32], seed[32];
    if (rc == FR_OK && (rc = json_str(j, "schedule", sched, sizeof sched, path)) == FR_OK) {
        int found = -1;
        for (int i = 0; i < 3; i++)
            if (strcmp(sched, SCHEDULES[i]) == 0) found = i;
        if (found < 0) rc = fr_error(FR_ERR_FORMAT, "%s: unknown schedule \"%s\"", path, sched);
        else a->schedule = (fr_lr_schedule)found;
    }
    if (rc == FR_OK && (rc = json_str(j, "seed", seed, sizeof seed, path)) == FR_OK)
        a->seed = strtoull(seed, NULL, 10);
    /* runs saved before precisions existed are fp32 */
    if (rc == FR_OK && cJSON_GetObjectItemCaseSensitive(j, "precision"))
        rc = json_str(j, "precision", a->precision, sizeof a->precision, path);
    if (rc == FR_OK && cJSON_GetObjectItemCaseSensitive(j, "moments"))
        rc = json_str(j, "moments", a->moments, sizeof a->moments, path);
    char tiles[16];
    if (rc == FR_OK && cJSON_GetObjectItemCaseSensitive(j, "fp8_grad_tiles") &&
        (rc = json_str(j, "fp8_grad_tiles", tiles, sizeof tiles, path)) == FR_OK) {
        if (!strcmp(tiles, "1x128")) a->fp8_grad_tile_rows = 1;
        else if (!strcmp(tiles, "128x128")) a->fp8_grad_tile_rows = 128;
        else rc = fr_error(FR_ERR_FORMAT, "%s: unknown fp8_grad_tiles \"%s\"", path, tiles);
    }
    cJSON_Delete(j);
    return rc;
}

int fr_train_write_json(const char *path, cJSON *j) {
    char *text = cJSON_Print(j);
    if (!text) return fr_error(FR_ERR_NOMEM, "out of memory");
    size_t n = strlen(text);
    text[n] = '\n'; /* cJSON_Print leaves room for the NUL only; write it as n bytes + newline */
    int rc = fr_write_file_atomic(path, text, n);
    free(text);
    return rc;
}

/* ================================================================ learning rate */

double fr_train_lr(const fr_train_args *a, long step, long max_steps) {
    const double lo = a->lr * a->min_lr_frac;
    if (step < a->warmup_steps) return a->lr * (double)(step + 1) / a->warmup_steps;
    switch (a->schedule) {
    case FR_LR_CONSTANT:
        return a->lr;
    case FR_LR_WSD: {
        long decay_steps = (long)ceil(a->decay_frac * max_steps);
        long decay_start = max_steps - decay_steps;
        if (step < decay_start || decay_steps <= 0) return a->lr;
        double t = (double)(step - decay_start + 1) / decay_steps;
        return a->lr + (lo - a->lr) * (t > 1 ? 1 : t);
    }
    case FR_LR_COSINE:
    default: {
        long span = max_steps - a->warmup_steps;
        if (span <= 0) return a->lr;
        double t = (double)(step - a->warmup_steps) / span;
        if (t > 1) t = 1;
        return lo + 0.5 * (a->lr - lo) * (1 + cos(M_PI * t));
    }
    }
}
