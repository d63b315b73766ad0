/*
 * distill.c — the teacher of a logit-distillation run: its top-k logits for the trainer's
 * windows, either computed on the fly by the inference engine from a teacher model folder or
 * read from teacher top-k shards written once by fr_distill_dump_teacher (or by
 * tools/dump_teacher_topk.py from any transformers causal LM with the same tokenizer).
 *
 * Teacher top-k shard: beside each training shard DIR/train_NNN.bin, DIR/train_NNN.topk:
 *
 *   header (64 bytes, little-endian)
 *     0  char[8]  magic "FRTOPK2\0"
 *     8  u32      k            logits kept per position
 *    12  u32      seq_len      the window length they were computed with
 *    16  u32      vocab        the teacher's vocabulary size
 *    20  f32      temperature  of the log-sum-exp below
 *    24  u64      n_tokens     tokens of the shard
 *    32  u64      start        global position of the shard's first token in the split
 *    40  u64      valid        positions [0, valid) of the shard have a record
 *    48  u8[16]   reserved (0)
 *   records, one per position p < valid: i32 idx[k], then f32 logit[k] (descending), then f32
 *   lse, the log-sum-exp of all the teacher's logits / temperature (so the mass outside the
 *   top k is known: src/model/kd.c)
 *
 * The record of global position g holds the teacher's k largest logits for the token after g,
 * computed on the window floor(g / seq_len) * seq_len .. + seq_len (the trainer's windows:
 * chunk c starts at c * seq_len), so teacher and student see the same context. Positions
 * past the last whole window (which the trainer never reads) have no record.
 */
#include "train/distill.h"
#include "core/internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define TOPK_MAGIC "FRTOPK2"

typedef struct {
    char magic[8];
    uint32_t k, seq_len, vocab;
    float temperature;
    uint64_t n_tokens, start, valid;
    uint8_t reserved[16];
} topk_header;

_Static_assert(sizeof(topk_header) == 64, "the top-k shard header is 64 bytes");

typedef struct {
    void *map;
    size_t map_size;
    topk_header h;
} topk_file;

struct fr_teacher {
    fr_engine *engine;      /* online teacher, or */
    topk_file *files;       /* one per training shard */
    int n_files;
    int k, T;
    float temperature;
};

/* DIR/train_NNN.bin -> DIR/train_NNN.topk (into out) */
static int topk_path(const char *shard, char *out, size_t n) {
    const size_t len = strlen(shard);
    if (len < 4 || strcmp(shard + len - 4, ".bin") != 0 || len + 2 >= n)
        return fr_error(FR_ERR_FORMAT, "%s: a shard name should end in .bin", shard);
    snprintf(out, n, "%.*s.topk", (int)(len - 4), shard);
    return FR_OK;
}

static size_t record_bytes(int k) { return (size_t)k * (sizeof(int32_t) + sizeof(float)) + sizeof(float); }

/* ---------------------------------------------------------------- writing */

int fr_distill_dump_teacher(const char *teacher_dir, const char *data_dir, int seq_len, int k, float temperature,
                            int (*progress)(void *user, double frac), void *user) {
    fr_clear_error();
    if (!teacher_dir || !data_dir) return fr_error(FR_ERR_ARG, "fr_distill_dump_teacher: NULL argument");
    if (seq_len < 2 || k < 1 || !(temperature > 0))
        return fr_error(FR_ERR_ARG, "sequence length must be >= 2, top-k >= 1 and the temperature > 0");
    fr_dataset *ds = NULL;
    FR_CHECK(fr_dataset_open(&ds, data_dir, "train"));
    const uint64_t nt = fr_dataset_num_tokens(ds);
    const long n_chunks = nt >= (uint64_t)seq_len + 1 ? (long)((nt - 1) / (uint64_t)seq_len) : 0;
    fr_engine *e = NULL;
    fr_engine_options o;
    fr_engine_options_default(&o);
    o.max_seq_len = seq_len;
    o.load_mtp = 0;
    int rc = n_chunks > 0 ? FR_OK
                          : fr_error(FR_ERR_ARG, "%s: %llu training tokens, fewer than one window of %d + 1", data_dir,
                                     (unsigned long long)nt, seq_len);
    if (rc == FR_OK) rc = fr_engine_load(&e, teacher_dir, &o);
    const int V = e ? fr_engine_config(e)->vocab_size : 0;
    if (rc == FR_OK && fr_dataset_vocab_size(ds) > V)
        rc = fr_error(FR_ERR_CONFIG, "the data's vocabulary (%d) is larger than the teacher's (%d): another tokenizer?",
                      fr_dataset_vocab_size(ds), V);
    if (rc == FR_OK && k > V) rc = fr_error(FR_ERR_ARG, "top-k %d exceeds the teacher's vocabulary of %d", k, V);
    const int n_sh = fr_dataset_num_shards(ds);
    FILE **fs = calloc((size_t)n_sh + 1, sizeof *fs);
    char (*tmp)[4200] = calloc((size_t)n_sh + 1, sizeof *tmp);
    uint64_t *start = calloc((size_t)n_sh + 1, sizeof *start), *count = calloc((size_t)n_sh + 1, sizeof *count);
    if (rc == FR_OK && (!fs || !tmp || !start || !count)) rc = fr_error(FR_ERR_NOMEM, "out of memory");
    const uint64_t covered = (uint64_t)n_chunks * (uint64_t)seq_len;
    uint64_t at = 0;
    for (int s = 0; s < n_sh && rc == FR_OK; s++) { /* the files, headers first */
        const char *sp;
        rc = fr_dataset_shard_info(ds, s, &sp, &count[s]);
        if (rc == FR_OK) rc = topk_path(sp, tmp[s], sizeof tmp[s] - 32);
        if (rc != FR_OK) break;
        start[s] = at;
        at += count[s];
        snprintf(tmp[s] + strlen(tmp[s]), 32, ".tmp-%ld", (long)getpid());
        fs[s] = fopen(tmp[s], "wb");
        if (!fs[s]) {
            rc = fr_error(FR_ERR_IO, "cannot create %s: %s", tmp[s], strerror(errno));
            break;
        }
        topk_header h;
        memset(&h, 0, sizeof h);
        memcpy(h.magic, TOPK_MAGIC, 8);
        h.k = (uint32_t)k, h.seq_len = (uint32_t)seq_len, h.vocab = (uint32_t)V, h.temperature = temperature;
        h.n_tokens = count[s], h.start = start[s];
        h.valid = covered <= start[s] ? 0 : covered - start[s] < count[s] ? covered - start[s] : count[s];
        if (fwrite(&h, sizeof h, 1, fs[s]) != 1) rc = fr_error(FR_ERR_IO, "cannot write %s: %s", tmp[s], strerror(errno));
    }
    /* windows in groups, each group's records appended to the shards they fall in */
    enum { GROUP = 16 };
    int *win = malloc((size_t)GROUP * seq_len * sizeof *win);
    int32_t *idx = malloc((size_t)GROUP * seq_len * k * sizeof *idx);
    float *val = malloc((size_t)GROUP * seq_len * k * sizeof *val), *lse = malloc((size_t)GROUP * seq_len * sizeof *lse);
    unsigned char *rec = malloc(record_bytes(k));
    if (rc == FR_OK && (!win || !idx || !val || !lse || !rec)) rc = fr_error(FR_ERR_NOMEM, "out of memory");
    int sh = 0;
    for (long c0 = 0; c0 < n_chunks && rc == FR_OK; c0 += GROUP) {
        const int G = n_chunks - c0 < GROUP ? (int)(n_chunks - c0) : GROUP;
        for (int g = 0; g < G && rc == FR_OK; g++)
            rc = fr_dataset_read(ds, (uint64_t)(c0 + g) * seq_len, win + (size_t)g * seq_len, (size_t)seq_len);
        if (rc == FR_OK) rc = fr_engine_topk(e, G, win, seq_len, k, temperature, idx, val, lse);
        for (long r = 0; r < (long)G * seq_len && rc == FR_OK; r++) {
            const uint64_t gpos = (uint64_t)c0 * seq_len + (uint64_t)r;
            while (sh < n_sh - 1 && gpos >= start[sh] + count[sh]) sh++;
            memcpy(rec, idx + (size_t)r * k, (size_t)k * sizeof *idx);
            memcpy(rec + (size_t)k * sizeof *idx, val + (size_t)r * k, (size_t)k * sizeof *val);
            memcpy(rec + (size_t)k * (sizeof *idx + sizeof *val), lse + r, sizeof *lse);
            if (fwrite(rec, record_bytes(k), 1, fs[sh]) != 1)
                rc = fr_error(FR_ERR_IO, "cannot write %s: %s", tmp[sh], strerror(errno));
        }
        if (rc == FR_OK && progress && progress(user, (double)(c0 + G) / (double)n_chunks))
            rc = fr_error(FR_ERR_STATE, "stopped: the teacher top-k shards were not written");
    }
    for (int s = 0; s < n_sh && fs; s++) { /* complete files are renamed into place; nothing else remains */
        if (!fs[s]) continue;
        int bad = fflush(fs[s]) != 0 || fsync(fileno(fs[s])) != 0;
        bad |= fclose(fs[s]) != 0;
        if (rc == FR_OK && bad) rc = fr_error(FR_ERR_IO, "cannot write %s: %s", tmp[s], strerror(errno));
    }
    for (int s = 0; s < n_sh && fs; s++) {
        if (!fs[s]) continue;
        char final[4200];
        snprintf(final, sizeof final, "%.*s", (int)(strrchr(tmp[s], '.') - tmp[s]), tmp[s]);
        if (rc == FR_OK && rename(tmp[s], final) != 0)
            rc = fr_error(FR_ERR_IO, "cannot rename %s to %s: %s", tmp[s], final, strerror(errno));
        if (rc != FR_OK) unlink(tmp[s]);
    }
    free(fs), free(tmp), free(start), free(count);
    free(win), free(idx), free(val), free(lse), free(rec);
    fr_engine_free(e);
    fr_dataset_close(ds);
    return rc;
}

/* ---------------------------------------------------------------- the run's teacher */

static int open_files(fr_teacher *t, const fr_dataset *train, int student_vocab) {
    t->n_files = fr_dataset_num_shards(train);
    t->files = calloc((size_t)t->n_files + 1, sizeof *t->files);
    if (!t->files) return fr_error(FR_ERR_NOMEM, "out of memory");
    uint64_t at = 0;
    for (int s = 0; s < t->n_files; s++) {
        const char *sp;
        uint64_t count;
        char path[4200];
        FR_CHECK(fr_dataset_shard_info(train, s, &sp, &count));
        FR_CHECK(topk_path(sp, path, sizeof path));
        topk_file *f = &t->files[s];
        FILE *fp = fopen(path, "rb");
        if (!fp)
            return fr_error(FR_ERR_IO, "cannot open %s (%s): write the teacher's top-k shards first (frugal distill "
                                       "dump-teacher) or give a teacher model (--teacher)", path, strerror(errno));
        struct stat sb;
        const int ok = fstat(fileno(fp), &sb) == 0 && fread(&f->h, sizeof f->h, 1, fp) == 1;
        if (ok && (size_t)sb.st_size >= sizeof f->h)
            f->map = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fileno(fp), 0);
        fclose(fp);
        if (!ok || memcmp(f->h.magic, TOPK_MAGIC, 8) != 0)
            return fr_error(FR_ERR_FORMAT, "%s is not a teacher top-k shard (bad magic or truncated header)", path);
        if (f->map == MAP_FAILED) {
            f->map = NULL;
            return fr_error(FR_ERR_IO, "cannot map %s: %s", path, strerror(errno));
        }
        f->map_size = (size_t)sb.st_size;
        const topk_header *h = &f->h;
        if ((int)h->vocab != student_vocab)
            return fr_error(FR_ERR_CONFIG, "%s: the teacher's vocabulary (%u) differs from the student's (%d): logit "
                                           "distillation needs the same tokenizer", path, h->vocab, student_vocab);
        if ((int)h->k != t->k)
            return fr_error(FR_ERR_CONFIG, "%s holds the teacher's top-%u; the run asks for top-%d", path, h->k, t->k);
        if (h->temperature != t->temperature)
            return fr_error(FR_ERR_CONFIG, "%s holds the teacher's log-sum-exp at temperature %g; this run's is %g "
                                           "(dump the teacher again with --temperature %g)", path, h->temperature,
                            t->temperature, t->temperature);
        if ((int)h->seq_len != t->T)
            return fr_error(FR_ERR_CONFIG, "%s was made for windows of %u tokens; this run's --seq is %d", path,
                            h->seq_len, t->T);
        if (h->n_tokens != count || h->start != at || h->valid > count ||
            f->map_size != sizeof *h + h->valid * record_bytes(t->k))
            return fr_error(FR_ERR_FORMAT, "%s does not match its shard (%llu tokens at %llu) or is truncated", path,
                            (unsigned long long)count, (unsigned long long)at);
        at += count;
    }
    return FR_OK;
}

void fr_teacher_free(fr_teacher *t) {
    if (!t) return;
    fr_engine_free(t->engine);
    for (int s = 0; s < t->n_files; s++)
        if (t->files[s].map) munmap(t->files[s].map, t->files[s].map_size);
    free(t->files);
    free(t);
}

int fr_teacher_open(fr_teacher **out, const char *teacher_dir, int k, int seq_len, float temperature,
                    const fr_dataset *train, int student_vocab) {
    *out = NULL;
    fr_teacher *t = calloc(1, sizeof *t);
    if (!t) return fr_error(FR_ERR_NOMEM, "out of memory");
    t->k = k;
    t->T = seq_len;
    t->temperature = temperature;
    int rc;
    if (teacher_dir && teacher_dir[0]) {
        fr_engine_options o;
        fr_engine_options_default(&o);
        o.max_seq_len = seq_len;
        o.load_mtp = 0;
        rc = fr_engine_load(&t->engine, teacher_dir, &o);
        if (rc != FR_OK) rc = fr_error_context(rc, "teacher %s", teacher_dir);
        const int V = rc == FR_OK ? fr_engine_config(t->engine)->vocab_size : 0;
        if (rc == FR_OK && V != student_vocab)
            rc = fr_error(FR_ERR_CONFIG, "the teacher's vocabulary (%d) differs from the student's (%d): logit "
                                         "distillation needs the same tokenizer", V, student_vocab);
        if (rc == FR_OK && k > V) rc = fr_error(FR_ERR_ARG, "top-k %d exceeds the vocabulary of %d", k, V);
    } else {
        rc = open_files(t, train, student_vocab);
    }
    if (rc != FR_OK) {
        fr_teacher_free(t);
        return rc;
    }
    *out = t;
    return FR_OK;
}

int fr_teacher_topk(fr_teacher *t, int B, const int *tokens, const uint64_t *pos, int32_t *idx, float *logit,
                    float *lse) {
    const int T = t->T, k = t->k;
    if (t->engine) return fr_engine_topk(t->engine, B, tokens, T, k, t->temperature, idx, logit, lse);
    const size_t rb = record_bytes(k);
    for (int b = 0; b < B; b++)
        for (int i = 0, s = 0; i < T; i++) { /* s: the shard holding g, found once and advanced */
            const uint64_t g = pos[b] + (uint64_t)i;
            while (s < t->n_files - 1 && g >= t->files[s].h.start + t->files[s].h.n_tokens) s++;
            const topk_file *f = &t->files[s];
            if (g < f->h.start || g - f->h.start >= f->h.valid)
                return fr_error(FR_ERR_FORMAT, "the teacher top-k shards have no record for position %llu",
                                (unsigned long long)g);
            const unsigned char *rec = (const unsigned char *)f->map + sizeof f->h + (g - f->h.start) * rb;
            int32_t *di = idx + ((size_t)b * T + i) * k;
            memcpy(di, rec, (size_t)k * sizeof *di);
            memcpy(logit + ((size_t)b * T + i) * k, rec + (size_t)k * sizeof *di, (size_t)k * sizeof(float));
            memcpy(lse + (size_t)b * T + i, rec + (size_t)k * (sizeof *di + sizeof(float)), sizeof(float));
            for (int j = 0; j < k; j++)
                if (di[j] < 0 || (uint32_t)di[j] >= f->h.vocab)
                    return fr_error(FR_ERR_FORMAT, "teacher top-k shard %d: token id %d at position %llu is outside the "
                                                   "vocabulary of %u", s, di[j], (unsigned long long)g, f->h.vocab);
        }
    return FR_OK;
}
