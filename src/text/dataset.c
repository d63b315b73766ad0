/* dataset.c — read access to the token shards of a prepared dataset (fr_dataset_*): meta.json
 * is checked, every shard is mapped read-only and validated against its header and the
 * meta.json counts before the first token is read. Writing them is data_prepare.c; the
 * layout is text/shard.h.
 */
#include "core/internal.h"
#include "text/shard.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct {
    char *path;
    void *map;
    size_t map_len;
    const unsigned char *tokens; /* after the header */
    uint64_t count;
    uint64_t start;              /* global position of its first token */
    void *mask_map;              /* the loss mask, `count` bytes (fine-tuning data), or NULL */
} ds_shard;

struct fr_dataset {
    ds_shard *shards;
    int n_shards;
    uint64_t total;
    int width;
    int vocab;
    int eot;
    int masked;                  /* every shard has a loss mask */
};

void fr_dataset_close(fr_dataset *ds) {
    if (!ds) return;
    for (int i = 0; i < ds->n_shards; i++) {
        if (ds->shards[i].map) munmap(ds->shards[i].map, ds->shards[i].map_len);
        if (ds->shards[i].mask_map) munmap(ds->shards[i].mask_map, (size_t)ds->shards[i].count);
        free(ds->shards[i].path);
    }
    free(ds->shards);
    free(ds);
}

static int json_u64(const cJSON *j, uint64_t *out) {
    if (!cJSON_IsNumber(j)) return 0;
    double d = j->valuedouble;
    if (!(d >= 0) || d > 9007199254740992.0 || d != (double)(uint64_t)d) return 0;
    *out = (uint64_t)d;
    return 1;
}

/* Map shard sh's loss mask `path`: exactly one byte (0 or 1) per token. */
static int open_mask(ds_shard *sh, const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return fr_error(FR_ERR_IO, "cannot open loss mask %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size != sh->count) {
        close(fd);
        return fr_error(FR_ERR_FORMAT, "loss mask %s must hold one byte per token of its shard (%llu)", path,
                        (unsigned long long)sh->count);
    }
    void *map = sh->count ? mmap(NULL, (size_t)sh->count, PROT_READ, MAP_PRIVATE, fd, 0) : NULL;
    close(fd);
    if (map == MAP_FAILED) return fr_error(FR_ERR_IO, "cannot map loss mask %s", path);
    const unsigned char *m = map;
    for (uint64_t i = 0; i < sh->count; i++)
        if (m[i] > 1) {
            munmap(map, (size_t)sh->count);
            return fr_error(FR_ERR_FORMAT, "loss mask %s: byte %llu is %u (must be 0 or 1)", path, (unsigned long long)i, m[i]);
        }
    sh->mask_map = map;
    return FR_OK;
}

/* Map and validate one shard against the dataset-wide header fields. */
static int open_shard(fr_dataset *ds, ds_shard *sh, const char *path, uint64_t want_count, int first) {
    sh->path = strdup(path);
    if (!sh->path) return fr_error(FR_ERR_NOMEM, "out of memory");
    int fd = open(path, O_RDONLY);
    if (fd < 0) return fr_error(FR_ERR_IO, "cannot open shard %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return fr_error(FR_ERR_IO, "shard %s is not a regular file", path);
    }
    uint64_t size = (uint64_t)st.st_size;
    if (size < FR_SHARD_HEADER_BYTES) {
        close(fd);
        return fr_error(FR_ERR_FORMAT, "shard %s is truncated: %llu bytes, smaller than the %d-byte header", path,
                        (unsigned long long)size, FR_SHARD_HEADER_BYTES);
    }
    void *map = mmap(NULL, (size_t)size, PROT_READ, MAP_PRIVATE, fd, 0);
    int map_err = errno;
    close(fd);
    if (map == MAP_FAILED) return fr_error(FR_ERR_IO, "cannot map shard %s: %s", path, strerror(map_err));
    sh->map = map;
    sh->map_len = (size_t)size;
    const unsigned char *h = map;
    if (memcmp(h, FR_SHARD_MAGIC, 8) != 0) return fr_error(FR_ERR_FORMAT, "shard %s: bad magic (not a FRUGALTK token shard)", path);
    uint32_t version = fr_shard_get_u32(h + 8), width = fr_shard_get_u32(h + 12), vocab = fr_shard_get_u32(h + 24), eot = fr_shard_get_u32(h + 28);
    uint64_t count = fr_shard_get_u64(h + 16);
    if (version != FR_SHARD_VERSION)
        return fr_error(FR_ERR_FORMAT, "shard %s: unsupported version %u (this build reads version %d)", path, version,
                        FR_SHARD_VERSION);
    if (width != 2 && width != 4) return fr_error(FR_ERR_FORMAT, "shard %s: bad token width %u (must be 2 or 4)", path, width);
    if (vocab == 0 || vocab > (uint32_t)INT_MAX) return fr_error(FR_ERR_FORMAT, "shard %s: bad vocab size %u", path, vocab);
    if (width == 2 && vocab > 65536)
        return fr_error(FR_ERR_FORMAT, "shard %s: vocab size %u does not fit token width 2", path, vocab);
    if (eot >= vocab) return fr_error(FR_ERR_FORMAT, "shard %s: end-of-text id %u >= vocab size %u", path, eot, vocab);
    for (int i = 32; i < FR_SHARD_HEADER_BYTES; i++)
        if (h[i] != 0) return fr_error(FR_ERR_FORMAT, "shard %s: reserved header bytes are not zero", path);
    if (count > (size - FR_SHARD_HEADER_BYTES) / width)
        return fr_error(FR_ERR_FORMAT,
                        "shard %s is truncated: the header says %llu tokens of %u bytes, the file has %llu bytes", path,
                        (unsigned long long)count, width, (unsigned long long)size);
    if (FR_SHARD_HEADER_BYTES + count * width != size)
        return fr_error(FR_ERR_FORMAT,
                        "shard %s has %llu bytes, but the header says %llu tokens of %u bytes (%llu bytes in all)",
                        path, (unsigned long long)size, (unsigned long long)count, width,
                        (unsigned long long)(FR_SHARD_HEADER_BYTES + count * (uint64_t)width));
    if (count != want_count)
        return fr_error(FR_ERR_FORMAT, "shard %s holds %llu tokens but meta.json lists %llu", path,
                        (unsigned long long)count, (unsigned long long)want_count);
    if (first) {
        ds->width = (int)width;
        ds->vocab = (int)vocab;
        ds->eot = (int)eot;
    } else if ((int)width != ds->width || (int)vocab != ds->vocab || (int)eot != ds->eot) {
        return fr_error(FR_ERR_FORMAT, "shard %s: header (width %u, vocab %u, eot %u) differs from the first shard's", path,
                        width, vocab, eot);
    }
    sh->tokens = h + FR_SHARD_HEADER_BYTES;
    sh->count = count;
    madvise(map, (size_t)size, MADV_WILLNEED);
    return FR_OK;
}

static int dataset_open(fr_dataset *ds, const char *dir, const char *split) {
    char *meta_path = fr_path_join(dir, "meta.json");
    if (!meta_path) return fr_error(FR_ERR_NOMEM, "out of memory");
    char *text = NULL;
    size_t len = 0;
    int rc = fr_read_file(meta_path, &text, &len);
    if (rc != FR_OK) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", fr_last_error());
        rc = fr_error(rc, "%s is not a prepared dataset (%s)", dir, msg);
        free(meta_path);
        return rc;
    }
    cJSON *j = cJSON_ParseWithLength(text, len);
    free(text);
    const cJSON *fmt = j ? cJSON_GetObjectItemCaseSensitive(j, "format") : NULL;
    const cJSON *ver = j ? cJSON_GetObjectItemCaseSensitive(j, "format_version") : NULL;
    const cJSON *splits = j ? cJSON_GetObjectItemCaseSensitive(j, "splits") : NULL;
    const cJSON *sp = cJSON_IsObject(splits) ? cJSON_GetObjectItemCaseSensitive(splits, split) : NULL;
    const cJSON *shards = sp ? cJSON_GetObjectItemCaseSensitive(sp, "shards") : NULL;
    const cJSON *tokens = sp ? cJSON_GetObjectItemCaseSensitive(sp, "tokens") : NULL;
    const cJSON *vocab = j ? cJSON_GetObjectItemCaseSensitive(j, "vocab_size") : NULL;
    const cJSON *eot = j ? cJSON_GetObjectItemCaseSensitive(j, "eot_id") : NULL;
    uint64_t want_total = 0, mv = 0, me = 0;
    if (!j) {
        rc = fr_error(FR_ERR_FORMAT, "%s: not valid JSON", meta_path);
    } else if (!cJSON_IsString(fmt) || strcmp(fmt->valuestring, "frugal-token-shards") != 0) {
        rc = fr_error(FR_ERR_FORMAT, "%s: \"format\" is not \"frugal-token-shards\"", meta_path);
    } else if (!cJSON_IsNumber(ver) || ver->valuedouble != FR_SHARD_VERSION) {
        rc = fr_error(FR_ERR_FORMAT, "%s: unsupported format_version (this build reads %d)", meta_path, FR_SHARD_VERSION);
    } else if (!sp || !cJSON_IsArray(shards) || !json_u64(tokens, &want_total) || !json_u64(vocab, &mv) ||
               !json_u64(eot, &me)) {
        rc = fr_error(FR_ERR_FORMAT, "%s: missing or malformed entry for split '%s' (or vocab_size / eot_id)",
                      meta_path, split);
    } else if (cJSON_GetArraySize(shards) == 0) {
        rc = fr_error(FR_ERR_FORMAT, "%s: split '%s' is empty (no shards)", dir, split);
    }
    if (rc == FR_OK) {
        int n = cJSON_GetArraySize(shards);
        ds->shards = calloc((size_t)n, sizeof *ds->shards);
        if (!ds->shards) rc = fr_error(FR_ERR_NOMEM, "out of memory");
        uint64_t pos = 0;
        for (int i = 0; rc == FR_OK && i < n; i++) {
            const cJSON *e = cJSON_GetArrayItem(shards, i);
            const cJSON *file = cJSON_GetObjectItemCaseSensitive(e, "file");
            uint64_t cnt = 0;
            if (!cJSON_IsString(file) || !json_u64(cJSON_GetObjectItemCaseSensitive(e, "tokens"), &cnt) ||
                strchr(file->valuestring, '/') || file->valuestring[0] == '.') {
                rc = fr_error(FR_ERR_FORMAT, "%s: shard entry %d of split '%s' is malformed", meta_path, i, split);
                break;
            }
            char *p = fr_path_join(dir, file->valuestring);
            if (!p) {
                rc = fr_error(FR_ERR_NOMEM, "out of memory");
                break;
            }
            ds->n_shards = i + 1;
            rc = open_shard(ds, &ds->shards[i], p, cnt, i == 0);
            free(p);
            /* a loss mask on every shard or on none */
            const cJSON *mask = cJSON_GetObjectItemCaseSensitive(e, "mask");
            if (rc == FR_OK && i == 0) ds->masked = mask != NULL;
            else if (rc == FR_OK && (mask != NULL) != ds->masked)
                rc = fr_error(FR_ERR_FORMAT, "%s: some shards of split '%s' have a loss mask and some do not", meta_path, split);
            if (rc == FR_OK && mask) {
                if (!cJSON_IsString(mask) || strchr(mask->valuestring, '/') || mask->valuestring[0] == '.') {
                    rc = fr_error(FR_ERR_FORMAT, "%s: shard entry %d of split '%s' has a malformed mask", meta_path, i, split);
                    break;
                }
                char *mp = fr_path_join(dir, mask->valuestring);
                rc = mp ? open_mask(&ds->shards[i], mp) : fr_error(FR_ERR_NOMEM, "out of memory");
                free(mp);
            }
            ds->shards[i].start = pos;
            pos += cnt;
        }
        if (rc == FR_OK && pos != want_total)
            rc = fr_error(FR_ERR_FORMAT, "%s: split '%s' lists %llu tokens but its shards hold %llu", meta_path, split,
                          (unsigned long long)want_total, (unsigned long long)pos);
        if (rc == FR_OK && ((uint64_t)ds->vocab != mv || (uint64_t)ds->eot != me))
            rc = fr_error(FR_ERR_FORMAT, "%s: vocab_size/eot_id (%llu/%llu) differ from the shard headers (%d/%d)",
                          meta_path, (unsigned long long)mv, (unsigned long long)me, ds->vocab, ds->eot);
        ds->total = pos;
    }
    cJSON_Delete(j);
    free(meta_path);
    return rc;
}

int fr_eval_windows_open(fr_dataset **ds, const char *data_dir, const char *split, int seq_len, long max_tokens,
                         int vocab_size, long *n_windows) {
    *ds = NULL;
    *n_windows = 0;
    fr_dataset *d = NULL;
    FR_CHECK(fr_dataset_open(&d, data_dir, split));
    uint64_t ntok = fr_dataset_num_tokens(d);
    if (max_tokens > 0 && (uint64_t)max_tokens < ntok) ntok = (uint64_t)max_tokens;
    const long n_win = ntok > 1 ? (long)((ntok - 1) / (uint64_t)seq_len) : 0;
    int rc = FR_OK;
    if (fr_dataset_vocab_size(d) > vocab_size)
        rc = fr_error(FR_ERR_ARG, "dataset %s has vocab size %d, larger than the model's %d", data_dir,
                      fr_dataset_vocab_size(d), vocab_size);
    else if (n_win == 0)
        rc = fr_error(FR_ERR_ARG, "the %s split of %s has fewer than %d tokens", split, data_dir, seq_len + 1);
    if (rc != FR_OK) {
        fr_dataset_close(d);
        return rc;
    }
    *ds = d;
    *n_windows = n_win;
    return FR_OK;
}

int fr_dataset_open(fr_dataset **out, const char *dir, const char *split) {
    fr_clear_error();
    if (!out) return fr_error(FR_ERR_ARG, "fr_dataset_open: out is NULL");
    *out = NULL;
    if (!dir || !split) return fr_error(FR_ERR_ARG, "fr_dataset_open: dir and split are required");
    if (strcmp(split, "train") != 0 && strcmp(split, "val") != 0)
        return fr_error(FR_ERR_ARG, "unknown split '%s' (expected \"train\" or \"val\")", split);
    fr_dataset *ds = calloc(1, sizeof *ds);
    if (!ds) return fr_error(FR_ERR_NOMEM, "out of memory");
    int rc = dataset_open(ds, dir, split);
    if (rc != FR_OK) {
        fr_dataset_close(ds);
        return rc;
    }
    *out = ds;
    return FR_OK;
}

uint64_t fr_dataset_num_tokens(const fr_dataset *ds) { return ds ? ds->total : 0; }
int fr_dataset_vocab_size(const fr_dataset *ds) { return ds ? ds->vocab : 0; }
int fr_dataset_eot_id(const fr_dataset *ds) { return ds ? ds->eot : -1; }
int fr_dataset_token_width(const fr_dataset *ds) { return ds ? ds->width : 0; }
int fr_dataset_num_shards(const fr_dataset *ds) { return ds ? ds->n_shards : 0; }
int fr_dataset_has_mask(const fr_dataset *ds) { return ds ? ds->masked : 0; }

int fr_dataset_read_mask(const fr_dataset *ds, uint64_t pos, unsigned char *dst, size_t n) {
    if (!ds || (n && !dst)) return fr_error(FR_ERR_ARG, "fr_dataset_read_mask: NULL argument");
    if (pos > ds->total || (uint64_t)n > ds->total - pos)
        return fr_error(FR_ERR_ARG, "fr_dataset_read_mask: [%llu, +%zu) is outside the split's %llu tokens",
                        (unsigned long long)pos, n, (unsigned long long)ds->total);
    if (!ds->masked) {
        memset(dst, 1, n);
        return FR_OK;
    }
    for (int s = 0; s < ds->n_shards && n > 0; s++) {
        const ds_shard *sh = &ds->shards[s];
        if (pos >= sh->start + sh->count) continue;
        const uint64_t off = pos - sh->start;
        size_t k = n;
        if ((uint64_t)k > sh->count - off) k = (size_t)(sh->count - off);
        memcpy(dst, (const unsigned char *)sh->mask_map + off, k);
        dst += k, pos += k, n -= k;
    }
    return FR_OK;
}

int fr_dataset_shard_info(const fr_dataset *ds, int i, const char **path, uint64_t *n_tokens) {
    if (!ds || i < 0 || i >= ds->n_shards)
        return fr_error(FR_ERR_ARG, "shard index %d out of range [0, %d)", i, ds ? ds->n_shards : 0);
    if (path) *path = ds->shards[i].path;
    if (n_tokens) *n_tokens = ds->shards[i].count;
    return FR_OK;
}

int fr_dataset_read(const fr_dataset *ds, uint64_t pos, int *dst, size_t n) {
    if (!ds) return fr_error(FR_ERR_ARG, "fr_dataset_read: dataset is NULL");
    if (n == 0) return FR_OK;
    if (!dst) return fr_error(FR_ERR_ARG, "fr_dataset_read: dst is NULL");
    if (pos > ds->total || (uint64_t)n > ds->total - pos)
        return fr_error(FR_ERR_ARG, "fr_dataset_read: tokens [%llu, %llu + %zu) are outside the split's %llu tokens",
                        (unsigned long long)pos, (unsigned long long)pos, n, (unsigned long long)ds->total);
    /* last shard whose start <= pos */
    int lo = 0, hi = ds->n_shards - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (ds->shards[mid].start <= pos) lo = mid;
        else hi = mid - 1;
    }
    int s = lo;
    size_t done = 0;
    const uint32_t vocab = (uint32_t)ds->vocab;
    while (done < n) {
        const ds_shard *sh = &ds->shards[s];
        uint64_t off = pos + done - sh->start;
        if (off >= sh->count) { /* empty shard or end of this one */
            s++;
            continue;
        }
        size_t k = n - done;
        if ((uint64_t)k > sh->count - off) k = (size_t)(sh->count - off);
        uint32_t bad = 0;
        if (ds->width == 2) {
            const unsigned char *p = sh->tokens + off * 2;
            for (size_t i = 0; i < k; i++) {
                uint32_t v = (uint32_t)p[2 * i] | (uint32_t)p[2 * i + 1] << 8;
                bad |= v >= vocab;
                dst[done + i] = (int)v;
            }
        } else {
            const unsigned char *p = sh->tokens + off * 4;
            for (size_t i = 0; i < k; i++) {
                uint32_t v = fr_shard_get_u32(p + 4 * i);
                bad |= v >= vocab;
                dst[done + i] = (int)v;
            }
        }
        if (bad) {
            for (size_t i = 0; i < k; i++)
                if ((uint32_t)dst[done + i] >= vocab)
                    return fr_error(FR_ERR_FORMAT, "shard %s: token %llu has id %u >= vocab size %d", sh->path,
                                    (unsigned long long)(off + i), (uint32_t)dst[done + i], ds->vocab);
        }
        done += k;
        s++;
    }
    return FR_OK;
}
