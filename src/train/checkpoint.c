/*
 * checkpoint.c — a run's checkpoints: RUN/ckpt-NNNNNNNN Hugging Face folders with the
 * training state (AdamW moments, step, counters), written atomically by rank 0 and read back
 * by every rank for its own spans, so a checkpoint does not depend on the world that wrote it.
 */
#include "core/internal.h"
#include "formats/numfmt.h"
#include "train/run.h"
#include "train/train_internal.h"

#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define STATE_MAGIC "FRTRAIN1"
#define STATE_VERSION 1
/* state_header.reserved: how the two moment arrays are stored (0 in files from before) */
#define STATE_MOMENTS_FP32 0
#define STATE_MOMENTS_BF16 1
#define STATE_FILE "training_state.bin"

typedef struct {
    char magic[8];
    uint32_t version, reserved;
    int64_t step;
    double tokens, flops, wall_s;
    uint64_t n_params;
    char run_id[64];
} state_header;

/* FNV-1a over the header and both moment arrays: the last 8 bytes of training_state.bin. */
static uint64_t state_checksum(const state_header *h, const void *mom, const void *var, size_t pbytes) {
    uint64_t sum = fr_fnv1a64(FR_FNV1A64_OFFSET, h, sizeof *h);
    sum = fr_fnv1a64(sum, mom, pbytes);
    return fr_fnv1a64(sum, var, pbytes);
}

/* A whole model, or a LoRA run's adapter (PEFT folder), and the training state */
static int ckpt_complete(const char *dir) {
    const char *need[2][3] = {{"config.json", "model.safetensors", STATE_FILE},
                              {"adapter_config.json", "adapter_model.safetensors", STATE_FILE}};
    char path[1300];
    for (int k = 0; k < 2; k++) {
        int ok = 1;
        for (int i = 0; i < 3 && ok; i++)
            ok = (size_t)snprintf(path, sizeof path, "%s/%s", dir, need[k][i]) < sizeof path && access(path, R_OK) == 0;
        if (ok) return 1;
    }
    return 0;
}

int fr_train_latest_checkpoint(const char *run_dir, char *out, size_t n) {
    fr_clear_error();
    char path[1200], name[128] = {0};
    snprintf(path, sizeof path, "%s/latest", run_dir);
    FILE *f = fopen(path, "r");
    if (f) {
        if (fgets(name, sizeof name, f)) name[strcspn(name, "\r\n")] = 0;
        fclose(f);
        snprintf(path, sizeof path, "%s/%s", run_dir, name);
        if (name[0] && strncmp(name, "ckpt-", 5) == 0 && ckpt_complete(path)) {
            if ((size_t)snprintf(out, n, "%s", path) >= n) return fr_error(FR_ERR_ARG, "path too long");
            return FR_OK;
        }
    }
    /* `latest` missing or stale (killed between the rename and its update): the newest complete folder */
    DIR *d = opendir(run_dir);
    if (!d) return fr_error(FR_ERR_IO, "cannot open run folder %s: %s", run_dir, strerror(errno));
    struct dirent *de;
    long best = -1;
    while ((de = readdir(d))) {
        long s;
        char tail;
        if (sscanf(de->d_name, "ckpt-%ld%c", &s, &tail) != 1) continue;
        snprintf(path, sizeof path, "%s/%s", run_dir, de->d_name);
        if (s > best && ckpt_complete(path)) best = s;
    }
    closedir(d);
    if (best < 0) return fr_error(FR_ERR_STATE, "%s holds no complete checkpoint", run_dir);
    if ((size_t)snprintf(out, n, "%s/ckpt-%08ld", run_dir, best) >= n) return fr_error(FR_ERR_ARG, "path too long");
    return FR_OK;
}

static int write_generation_config(const fr_config *c, const char *path) {
    cJSON *j = cJSON_CreateObject();
    if (c->bos_token_id >= 0) cJSON_AddNumberToObject(j, "bos_token_id", c->bos_token_id);
    if (c->eos_token_id >= 0) cJSON_AddNumberToObject(j, "eos_token_id", c->eos_token_id);
    cJSON_AddBoolToObject(j, "do_sample", 1);
    cJSON_AddNumberToObject(j, "temperature", 0.8);
    cJSON_AddNumberToObject(j, "top_p", 0.95);
    int rc = fr_train_write_json(path, j);
    cJSON_Delete(j);
    return rc;
}

/* Write RUN/ckpt-NNNNNNNN atomically: build .ckpt-NNNNNNNN.tmp, fsync, rename, then update
 * `latest`; keep the previous checkpoint, remove older ones. */
/* Remove checkpoint folder ckpt-<step>: renamed to .ckpt-<step>.del first (one atomic step),
 * then deleted, so a kill during the deletion never leaves a half-emptied folder under a
 * checkpoint's name; a leftover .del is removed by the next trainer (remove_leftovers). */
static void remove_checkpoint(const char *rd, long step) {
    char path[1200], del[1200];
    snprintf(path, sizeof path, "%s/ckpt-%08ld", rd, step);
    snprintf(del, sizeof del, "%s/.ckpt-%08ld.del", rd, step);
    fr_remove_tree(del);
    if (rename(path, del) == 0) fr_remove_tree(del);
}

/* Temporary (.ckpt-N.tmp) and half-deleted (.ckpt-N.del) folders of a killed trainer, and
 * the temporaries of its atomic file writes (latest, train_args.json and metrics.jsonl as
 * NAME.tmp.PID). Only
 * called with the run folder's lock held, so no live trainer owns them. */
void fr_run_remove_leftovers(const char *rd) {
    static const char *const written[] = {"latest", "train_args.json", "metrics.jsonl"};
    for (int i = 0; i < 3; i++) {
        char *path = fr_path_join(rd, written[i]);
        if (path) fr_remove_stale_tmp(path, ".tmp.");
        free(path);
    }
    DIR *d = opendir(rd);
    if (!d) return;
    struct dirent *de;
    long steps[64];
    int del[64], n = 0;
    while ((de = readdir(d)) && n < 64) {
        long s;
        char kind[8] = {0};
        if (sscanf(de->d_name, ".ckpt-%ld.%7s", &s, kind) == 2 && (!strcmp(kind, "tmp") || !strcmp(kind, "del"))) {
            steps[n] = s;
            del[n++] = kind[0] == 'd';
        }
    }
    closedir(d);
    for (int i = 0; i < n; i++) {
        char path[1200];
        snprintf(path, sizeof path, "%s/.ckpt-%08ld.%s", rd, steps[i], del[i] ? "del" : "tmp");
        fr_remove_tree(path);
    }
}

/* Rank 0 writes the checkpoint with the moments mom / var of the trainable span [train_lo,
 * n_params) of the arena: all of it, or a LoRA run's adapters (whose checkpoint is the
 * adapter folder: the frozen base stays where --init points). */
static int write_checkpoint(run *r, const void *mom, const void *var, char *out_dir, size_t out_n) {
    const char *rd = r->a->run_dir;
    char tmp[1200], final[1200], path[1300];
    snprintf(tmp, sizeof tmp, "%s/.ckpt-%08ld.tmp", rd, r->step);
    snprintf(final, sizeof final, "%s/ckpt-%08ld", rd, r->step);
    fr_remove_tree(tmp);
    if (r->m->n_lora) FR_CHECK(fr_model_lora_save(r->m, tmp, r->a->init_model));
    else FR_CHECK(fr_model_save(r->m, tmp));
    const char *tok_files[] = {"tokenizer.json", "tokenizer_config.json"};
    for (int i = 0; i < 2; i++) {
        char src[1200];
        snprintf(src, sizeof src, "%s/%s", r->a->data_dir, tok_files[i]);
        if (access(src, R_OK) != 0) continue;
        snprintf(path, sizeof path, "%s/%s", tmp, tok_files[i]);
        FR_CHECK(fr_copy_file(src, path));
    }
    snprintf(path, sizeof path, "%s/generation_config.json", tmp);
    FR_CHECK(write_generation_config(fr_model_config(r->m), path));

    state_header h;
    memset(&h, 0, sizeof h);
    memcpy(h.magic, STATE_MAGIC, 8);
    h.version = STATE_VERSION;
    h.step = r->step;
    h.tokens = r->tokens_done;
    h.flops = r->flops_done;
    h.wall_s = fr_run_elapsed(r);
    h.n_params = r->m->n_params - r->m->train_lo;
    memcpy(h.run_id, r->led.run_id, sizeof h.run_id);
    h.reserved = r->moments_bf16 ? STATE_MOMENTS_BF16 : STATE_MOMENTS_FP32;
    const size_t pbytes = h.n_params * (r->moments_bf16 ? sizeof(uint16_t) : sizeof(float));
    uint64_t sum = state_checksum(&h, mom, var, pbytes);
    const void *parts[] = {&h, mom, var, &sum};
    const size_t lens[] = {sizeof h, pbytes, pbytes, sizeof sum};
    snprintf(path, sizeof path, "%s/%s", tmp, STATE_FILE);
    FR_CHECK(fr_write_file_atomic_v(path, parts, lens, 4));
    fr_fsync_dir(tmp);

    remove_checkpoint(rd, r->step); /* a checkpoint of the same step from a crashed earlier segment */
    if (rename(tmp, final) != 0) return fr_error(FR_ERR_IO, "cannot rename %s to %s: %s", tmp, final, strerror(errno));
    fr_fsync_dir(rd);
    char name[64];
    int nl = snprintf(name, sizeof name, "ckpt-%08ld\n", r->step);
    snprintf(path, sizeof path, "%s/latest", rd);
    FR_CHECK(fr_write_file_atomic(path, name, (size_t)nl));

    /* keep this one and the one before it */
    DIR *d = opendir(rd);
    if (d) {
        long steps[4096];
        int n = 0;
        struct dirent *de;
        while ((de = readdir(d)) && n < 4096) {
            long s;
            char tail;
            if (sscanf(de->d_name, "ckpt-%ld%c", &s, &tail) == 1 && s != r->step) steps[n++] = s;
        }
        closedir(d);
        long keep = -1;
        for (int i = 0; i < n; i++)
            if (steps[i] < r->step && steps[i] > keep) keep = steps[i];
        for (int i = 0; i < n; i++)
            if (steps[i] != keep) remove_checkpoint(rd, steps[i]);
    }
    cJSON *j = fr_run_metrics_object(r, "checkpoint");
    cJSON_AddStringToObject(j, "dir", final);
    fr_run_metrics_line(r, j);
    cJSON_Delete(j);
    if (out_dir) snprintf(out_dir, out_n, "%s", final);
    return FR_OK;
}

/* Every rank saves through here: the experts' weights and the moments are brought to rank 0
 * (one process: nothing to bring), which writes, then hands the other ranks' experts back;
 * all ranks learn whether it worked. */
int fr_run_save_checkpoint(run *r, char *out_dir, size_t out_n) {
    int rc = fr_dist_gather_experts(&r->dist, r->m);
    const void *mom = r->mom, *var = r->var;
    void *full[2] = {NULL, NULL};
    if (rc == FR_OK && r->nranks > 1) {
        const size_t esize = r->moments_bf16 ? sizeof(uint16_t) : sizeof(float);
        if (r->rank == 0) {
            full[0] = calloc(r->m->n_params + 1, esize);
            full[1] = calloc(r->m->n_params + 1, esize);
            if (!full[0] || !full[1]) rc = fr_error(FR_ERR_NOMEM, "out of memory gathering the AdamW moments to rank 0");
        }
        rc = fr_comm_agree(r->world, rc);
        if (rc == FR_OK) rc = fr_dist_gather_moments(&r->dist, r->m, r->mom, esize, full[0]);
        if (rc == FR_OK) rc = fr_dist_gather_moments(&r->dist, r->m, r->var, esize, full[1]);
        if (full[0] && full[1]) /* (indexed by arena offset: the state holds the trainable span) */
            mom = (unsigned char *)full[0] + r->m->train_lo * esize, var = (unsigned char *)full[1] + r->m->train_lo * esize;
    } else if (rc == FR_OK && r->moments_in_backend) { /* one process on a device: the moments to the host */
        const size_t bytes = r->dist.n_moments * (r->moments_bf16 ? sizeof(uint16_t) : sizeof(float));
        full[0] = malloc(bytes + 1);
        full[1] = malloc(bytes + 1);
        if (!full[0] || !full[1]) rc = fr_error(FR_ERR_NOMEM, "out of memory copying the AdamW moments to the host");
        if (rc == FR_OK) r->m->ops->to_host(full[0], r->mom, bytes), r->m->ops->to_host(full[1], r->var, bytes);
        mom = full[0], var = full[1];
    }
    if (rc == FR_OK && r->rank == 0) rc = write_checkpoint(r, mom, var, out_dir, out_n);
    if (r->rank == 0) fr_dist_release_foreign(&r->dist, r->m);
    else if (rc == FR_OK && out_dir) snprintf(out_dir, out_n, "%s/ckpt-%08ld", r->a->run_dir, r->step);
    free(full[0]);
    free(full[1]);
    return fr_comm_agree(r->world, rc);
}

/* One moment array of n elements, stored in the file as BF16 codes (file_bf16) or floats, read
 * in chunks into this rank's compact array dst (the run's format) through its spans, converted
 * when the formats differ; the checksum is taken over the bytes as stored. 0 on a short read. */
static int read_moments(FILE *f, int file_bf16, void *dst, int run_bf16, const fr_opt_range *ranges, int n_ranges,
                        size_t lo0, size_t n, uint64_t *sum) {
    enum { CHUNK = 1 << 16 };
    const size_t fsize = file_bf16 ? sizeof(uint16_t) : sizeof(float);
    unsigned char *raw = malloc(CHUNK * sizeof(float));
    if (!raw) return 0;
    int ri = 0;
    for (size_t i = lo0; i < lo0 + n; i += CHUNK) { /* i: arena offset of the chunk's first element */
        const size_t k = lo0 + n - i < CHUNK ? lo0 + n - i : CHUNK;
        if (fread(raw, fsize, k, f) != k) {
            free(raw);
            return 0;
        }
        *sum = fr_fnv1a64(*sum, raw, k * fsize);
        while (ri < n_ranges && ranges[ri].hi <= i) ri++;
        for (int q = ri; q < n_ranges && ranges[q].lo < i + k; q++) {
            const size_t lo = ranges[q].lo > i ? ranges[q].lo : i, hi = ranges[q].hi < i + k ? ranges[q].hi : i + k;
            const size_t at = ranges[q].mom + (lo - ranges[q].lo);
            if (file_bf16 == run_bf16)
                memcpy((unsigned char *)dst + at * fsize, raw + (lo - i) * fsize, (hi - lo) * fsize);
            else if (run_bf16) /* file FP32 -> run BF16 */
                for (size_t j = lo; j < hi; j++)
                    ((uint16_t *)dst)[at + j - lo] = fr_bf16_encode(((const float *)raw)[j - i]);
            else /* file BF16 -> run FP32 */
                fr_bf16_decode_row((float *)dst + at, (const uint16_t *)raw + (lo - i), (int)(hi - lo));
        }
    }
    free(raw);
    return 1;
}

/* Every rank reads the whole state (for the checksum) and keeps its own spans' moments,
 * converted on the way in when the file stores the other format (a resume that switched the
 * moment format, e.g. with the precision): a checkpoint does not depend on the world that
 * wrote it or reads it. */
int fr_run_load_state(run *r, const char *dir) {
    char path[1300];
    snprintf(path, sizeof path, "%s/%s", dir, STATE_FILE);
    FILE *f = fopen(path, "rb");
    if (!f) return fr_error(FR_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    const size_t lo0 = r->m->train_lo, n = r->m->n_params - lo0;
    const size_t run_bytes = r->dist.n_moments * (r->moments_bf16 ? sizeof(uint16_t) : sizeof(float));
    state_header h;
    uint64_t want = 0, sum = 0;
    int rc = FR_OK, file_bf16 = 0;
    /* moments in backend memory are read into host copies first */
    void *mom = r->mom, *var = r->var;
    if (r->moments_in_backend) {
        mom = malloc(run_bytes + 1);
        var = malloc(run_bytes + 1);
        if (!mom || !var) {
            free(mom), free(var);
            fclose(f);
            return fr_error(FR_ERR_NOMEM, "out of memory reading the AdamW moments");
        }
    }
    long len = fseek(f, 0, SEEK_END) == 0 ? ftell(f) : -1;
    rewind(f);
    if (len < 0 || (size_t)len < sizeof h || fread(&h, sizeof h, 1, f) != 1) {
        rc = fr_error(FR_ERR_FORMAT, "%s: %ld bytes, too short for a training state (truncated)", path, len);
    } else if (memcmp(h.magic, STATE_MAGIC, 8) != 0 || h.version != STATE_VERSION ||
               (h.reserved != STATE_MOMENTS_FP32 && h.reserved != STATE_MOMENTS_BF16)) {
        rc = fr_error(FR_ERR_FORMAT, "%s: not a frugal training state (bad magic, version or moment format)", path);
    } else {
        file_bf16 = h.reserved == STATE_MOMENTS_BF16;
        const size_t file_bytes = n * (file_bf16 ? sizeof(uint16_t) : sizeof(float));
        const size_t want_len = sizeof h + 2 * file_bytes + sizeof(uint64_t);
        if ((size_t)len != want_len) {
            rc = fr_error(FR_ERR_FORMAT, "%s: %ld bytes, expected %zu for %zu parameters (truncated or from another model)",
                          path, len, want_len, n);
        } else {
            const fr_opt_range *ranges = r->dist.ranges;
            const int nr = r->dist.n_ranges;
            sum = fr_fnv1a64(FR_FNV1A64_OFFSET, &h, sizeof h);
            if (!read_moments(f, file_bf16, mom, r->moments_bf16, ranges, nr, lo0, n, &sum) ||
                !read_moments(f, file_bf16, var, r->moments_bf16, ranges, nr, lo0, n, &sum))
                rc = fr_error(FR_ERR_IO, "cannot read %s", path);
        }
        if (rc == FR_OK && fread(&want, sizeof want, 1, f) != 1) rc = fr_error(FR_ERR_IO, "cannot read %s", path);
        if (rc == FR_OK && sum != want) rc = fr_error(FR_ERR_FORMAT, "%s: checksum mismatch (corrupted)", path);
    }
    fclose(f);
    if (r->moments_in_backend) {
        if (rc == FR_OK) r->m->ops->to_device(r->mom, mom, run_bytes), r->m->ops->to_device(r->var, var, run_bytes);
        free(mom), free(var);
    }
    if (rc != FR_OK) {
        if (r->moments_in_backend) {
            r->m->ops->memset0(r->mom, run_bytes);
            r->m->ops->memset0(r->var, run_bytes);
        } else {
            memset(r->mom, 0, run_bytes);
            memset(r->var, 0, run_bytes);
        }
        return rc;
    }
    if (file_bf16 != r->moments_bf16)
        fr_run_info(r, "AdamW moments: the checkpoint's %s converted to %s", file_bf16 ? "bf16" : "fp32",
             r->moments_bf16 ? "bf16" : "fp32");
    r->step = h.step;
    r->tokens_done = h.tokens;
    r->flops_done = h.flops;
    r->wall_base = h.wall_s;
    memcpy(r->led.run_id, h.run_id, sizeof r->led.run_id);
    r->led.run_id[sizeof r->led.run_id - 1] = 0;
    return FR_OK;
}
