/*
 * sft_prepare.c — chat conversations (JSONL) -> a fine-tuning dataset (fr_sft_prepare): the
 * token shards of data_prepare.c's format (text/shard.h) with a loss mask beside each shard.
 *
 * Input: one conversation per line, {"messages": [{"role": "system" | "user" | "assistant",
 * "content": "..."}, ...]} (other keys are ignored). Each is rendered with the model's chat
 * template and encoded with fr_chat_encode_masked: the loss counts the assistant replies and
 * their end-of-sentence tokens only. A conversation without an assistant turn teaches nothing
 * and is skipped (counted); a line that is not such an object fails with its line number.
 * Conversations are packed back to back (each ends with the eos of its last reply): the
 * trainer cuts windows of seq_len + 1 tokens across them, as for pretraining text.
 *
 * Output folder (written as OUT.tmp-PID, renamed at the end; an existing OUT is refused):
 *   train_000.bin / val_000.bin    token shards (header: text/shard.h)
 *   train_000.mask / val_000.mask  one byte per token: 1 = a loss target, 0 = context
 *   meta.json                      data_prepare.c's, with "mask" in each shard entry and
 *                                  "loss_mask": "assistant" at the top
 * A conversation goes to "val" when a hash of its line (FNV-1a, 64 bits) falls in the first
 * val_fraction of the range: the same split for the same file, whatever else changes.
 */
#define _GNU_SOURCE
#include "core/internal.h"
#include "text/shard.h"
#include "text/tokenizer_internal.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct {
    fr_tokmask tm;
    uint64_t targets, docs;
} split_buf;

static int split_add(split_buf *s, const int *ids, const unsigned char *mask, size_t n) {
    FR_CHECK(fr_tokmask_append(&s->tm, ids, mask, 0, n));
    for (size_t i = 0; i < n; i++) s->targets += mask[i];
    s->docs++;
    return FR_OK;
}

/* dir/name.bin (header + tokens) and dir/name.mask */
static int write_split(const char *dir, const char *name, const split_buf *s, int width, int vocab, int eot) {
    char path[4200];
    snprintf(path, sizeof path, "%s/%s.bin", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) return fr_error(FR_ERR_IO, "cannot create %s: %s", path, strerror(errno));
    unsigned char h[FR_SHARD_HEADER_BYTES];
    fr_shard_make_header(h, width, s->tm.n, (uint32_t)vocab, (uint32_t)eot);
    int ok = fwrite(h, 1, sizeof h, f) == sizeof h;
    for (size_t i = 0; ok && i < s->tm.n; i++) {
        unsigned char t[4];
        fr_shard_put_u32(t, (uint32_t)s->tm.ids[i]);
        ok = fwrite(t, 1, (size_t)width, f) == (size_t)width;
    }
    if (fclose(f) != 0) ok = 0;
    if (!ok) return fr_error(FR_ERR_IO, "cannot write %s (disk full?)", path);
    snprintf(path, sizeof path, "%s/%s.mask", dir, name);
    f = fopen(path, "wb");
    if (!f) return fr_error(FR_ERR_IO, "cannot create %s: %s", path, strerror(errno));
    ok = s->tm.n == 0 || fwrite(s->tm.mask, 1, s->tm.n, f) == s->tm.n;
    if (fclose(f) != 0) ok = 0;
    return ok ? FR_OK : fr_error(FR_ERR_IO, "cannot write %s (disk full?)", path);
}

static void add_split(cJSON *splits, const char *name, const split_buf *s) {
    cJSON *o = cJSON_AddObjectToObject(splits, name);
    cJSON_AddNumberToObject(o, "tokens", (double)s->tm.n);
    cJSON_AddNumberToObject(o, "targets", (double)s->targets);
    cJSON_AddNumberToObject(o, "conversations", (double)s->docs);
    cJSON *arr = cJSON_AddArrayToObject(o, "shards");
    cJSON *e = cJSON_CreateObject();
    char file[32], mask[32];
    snprintf(file, sizeof file, "%s_000.bin", name);
    snprintf(mask, sizeof mask, "%s_000.mask", name);
    cJSON_AddStringToObject(e, "file", file);
    cJSON_AddStringToObject(e, "mask", mask);
    cJSON_AddNumberToObject(e, "tokens", (double)s->tm.n);
    cJSON_AddItemToArray(arr, e);
}

/* The messages of one JSONL line, or an error naming the line */
static int parse_line(const char *line, size_t len, long lineno, cJSON **root, fr_chat_message **msgs, int *n,
                      int *has_assistant) {
    *root = cJSON_ParseWithLength(line, len);
    const cJSON *m = *root ? cJSON_GetObjectItemCaseSensitive(*root, "messages") : NULL;
    if (!cJSON_IsArray(m)) return fr_error(FR_ERR_FORMAT, "line %ld: not a JSON object with a \"messages\" array", lineno);
    *n = cJSON_GetArraySize(m);
    *msgs = calloc((size_t)(*n > 0 ? *n : 1), sizeof **msgs);
    if (!*msgs) return fr_error(FR_ERR_NOMEM, "out of memory");
    *has_assistant = 0;
    for (int i = 0; i < *n; i++) {
        const cJSON *it = cJSON_GetArrayItem(m, i);
        const cJSON *r = cJSON_GetObjectItemCaseSensitive(it, "role"), *c = cJSON_GetObjectItemCaseSensitive(it, "content");
        if (!cJSON_IsString(r) || !cJSON_IsString(c))
            return fr_error(FR_ERR_FORMAT, "line %ld: message %d needs string \"role\" and \"content\"", lineno, i);
        (*msgs)[i] = (fr_chat_message){r->valuestring, c->valuestring};
        *has_assistant |= !strcmp(r->valuestring, "assistant");
    }
    return FR_OK;
}

int fr_sft_prepare(const fr_sft_prepare_options *o, fr_sft_stats *stats) {
    fr_clear_error();
    if (!o || !o->tokenizer_dir || !o->input || !o->output_dir)
        return fr_error(FR_ERR_ARG, "fr_sft_prepare: tokenizer_dir, input and output_dir are required");
    if (!(o->val_fraction >= 0 && o->val_fraction < 1))
        return fr_error(FR_ERR_ARG, "val_fraction must be in [0, 1), got %g", o->val_fraction);
    fr_sft_stats st;
    memset(&st, 0, sizeof st);
    struct stat sb;
    if (stat(o->output_dir, &sb) == 0) return fr_error(FR_ERR_ARG, "%s already exists: choose a new folder", o->output_dir);
    fr_tokenizer *tok = NULL;
    FR_CHECK(fr_tokenizer_load(&tok, o->tokenizer_dir));
    char *text = NULL;
    size_t len = 0;
    int rc = fr_read_file(o->input, &text, &len);
    split_buf sp[2]; /* train, val */
    memset(sp, 0, sizeof sp);
    const uint64_t cut = (uint64_t)(o->val_fraction * 18446744073709551615.0);
    long lineno = 0;
    size_t pos = 0, ll;
    const char *line;
    int blank;
    while (rc == FR_OK && fr_next_line(text, len, &pos, &line, &ll, &blank)) {
        lineno++;
        if (blank) continue;
        cJSON *root = NULL;
        fr_chat_message *msgs = NULL;
        int n = 0, has_assistant = 0;
        rc = parse_line(line, ll, lineno, &root, &msgs, &n, &has_assistant);
        if (rc == FR_OK && !has_assistant) {
            st.skipped_no_assistant++;
        } else if (rc == FR_OK) {
            int *ids = NULL;
            unsigned char *mask = NULL;
            size_t nt = 0;
            rc = fr_chat_encode_masked(tok, msgs, n, &ids, &mask, &nt);
            if (rc != FR_OK) rc = fr_error_context(rc, "%s: line %ld", o->input, lineno);
            const uint64_t h = fr_fnv1a64(FR_FNV1A64_OFFSET, line, ll);
            if (rc == FR_OK) rc = split_add(&sp[h < cut], ids, mask, nt);
            st.conversations += rc == FR_OK;
            free(ids);
            free(mask);
        }
        if (rc != FR_OK && !strstr(fr_last_error(), o->input)) rc = fr_error_context(rc, "%s", o->input);
        cJSON_Delete(root);
        free(msgs);
    }
    free(text);
    if (rc == FR_OK && sp[0].targets == 0)
        rc = fr_error(FR_ERR_ARG, "%s: no conversation with an assistant reply in the training split (%ld lines, %ld "
                      "without an assistant turn)", o->input, lineno, st.skipped_no_assistant);
    const int vocab = fr_tokenizer_vocab_size(tok), eot = fr_tokenizer_special_id(tok, FR_TOKEN_EOS);
    const int width = vocab <= 65536 ? 2 : 4;
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp-%d", o->output_dir, (int)getpid());
    if (rc == FR_OK && mkdir(tmp, 0755) != 0) rc = fr_error(FR_ERR_IO, "cannot create %s: %s", tmp, strerror(errno));
    if (rc == FR_OK) rc = write_split(tmp, "train_000", &sp[0], width, vocab, eot < 0 ? 0 : eot);
    if (rc == FR_OK && sp[1].tm.n) rc = write_split(tmp, "val_000", &sp[1], width, vocab, eot < 0 ? 0 : eot);
    if (rc == FR_OK) {
        cJSON *m = cJSON_CreateObject();
        cJSON_AddStringToObject(m, "format", "frugal-token-shards");
        cJSON_AddNumberToObject(m, "format_version", FR_SHARD_VERSION);
        cJSON_AddNumberToObject(m, "vocab_size", vocab);
        cJSON_AddNumberToObject(m, "eot_id", eot < 0 ? 0 : eot);
        cJSON_AddNumberToObject(m, "token_width", width);
        cJSON_AddStringToObject(m, "loss_mask", "assistant");
        cJSON_AddStringToObject(m, "source", o->input);
        cJSON_AddNumberToObject(m, "skipped_without_assistant", (double)st.skipped_no_assistant);
        cJSON *splits = cJSON_AddObjectToObject(m, "splits");
        add_split(splits, "train", &sp[0]);
        if (sp[1].tm.n) add_split(splits, "val", &sp[1]);
        char *js = cJSON_Print(m);
        cJSON_Delete(m);
        char path[4300];
        snprintf(path, sizeof path, "%s/meta.json", tmp);
        rc = js ? fr_write_file_atomic(path, js, strlen(js)) : fr_error(FR_ERR_NOMEM, "out of memory");
        free(js);
    }
    if (rc == FR_OK && rename(tmp, o->output_dir) != 0)
        rc = fr_error(FR_ERR_IO, "cannot rename %s to %s: %s", tmp, o->output_dir, strerror(errno));
    if (rc != FR_OK) { /* leave nothing half-written */
        char cmd[9000];
        snprintf(cmd, sizeof cmd, "%s/train_000.bin", tmp), unlink(cmd);
        snprintf(cmd, sizeof cmd, "%s/train_000.mask", tmp), unlink(cmd);
        snprintf(cmd, sizeof cmd, "%s/val_000.bin", tmp), unlink(cmd);
        snprintf(cmd, sizeof cmd, "%s/val_000.mask", tmp), unlink(cmd);
        snprintf(cmd, sizeof cmd, "%s/meta.json", tmp), unlink(cmd);
        rmdir(tmp);
    }
    st.train_tokens = sp[0].tm.n, st.val_tokens = sp[1].tm.n;
    st.train_targets = sp[0].targets, st.val_targets = sp[1].targets;
    st.train_conversations = (long)sp[0].docs, st.val_conversations = (long)sp[1].docs;
    if (stats) *stats = st;
    for (int i = 0; i < 2; i++) fr_tokmask_free(&sp[i].tm);
    fr_tokenizer_free(tok);
    return rc;
}
