/* data_prepare.c — text → binary token shards (fr_data_prepare); reading them is dataset.c.
 *
 * Preparation streams the inputs: documents are read in batches of about BATCH_BYTES of
 * text, each batch is encoded in parallel (OpenMP; fr_tokenizer_encode is thread-safe) and
 * the token ids are appended in document order to the shards of the document's split.
 * Everything is written into OUTPUT.tmp-PID and renamed to OUTPUT at the very end, so an
 * interrupted or failed run leaves no folder that looks complete; the OUTPUT.tmp-PID left by
 * a killed run (its PID no longer alive) is removed by the next run that writes OUTPUT.
 *
 * Split rule (documented in docs/data.md and recorded in meta.json): a document goes to
 * "val" iff  (mix64(fnv1a64(document bytes)) >> 11) * 2^-53 < val_fraction, where fnv1a64
 * is 64-bit FNV-1a (offset 0xcbf29ce484222325, prime 0x100000001b3) and mix64 is the
 * splitmix64/murmur3 finaliser. It depends only on the document's bytes, so it is the same
 * for any thread count, batch size or input order, and identical documents share a split.
 *
 * Shard layout (little-endian): see include/frugal.h and docs/data.md.
 */
#define _GNU_SOURCE
#include "core/internal.h"
#include "text/shard.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <omp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define DEFAULT_SHARD_TOKENS 100000000ull
#define BATCH_BYTES ((size_t)8 << 20)
#define BATCH_MAX_DOCS 65536
#define DIR_MAX_DEPTH 64

static const char SPLIT_RULE[] =
    "val iff (mix64(fnv1a64(doc_bytes)) >> 11) * 2^-53 < val_fraction; fnv1a64: offset "
    "0xcbf29ce484222325, prime 0x100000001b3; mix64: x ^= x >> 33; x *= 0xff51afd7ed558ccd; "
    "x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53; x ^= x >> 33";

/* ------------------------------------------------------------------ small helpers */

static uint64_t mix64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

static int doc_is_val(const char *text, size_t len, double val_fraction) {
    double u = (double)(mix64(fr_fnv1a64(FR_FNV1A64_OFFSET, text, len)) >> 11) * 0x1.0p-53;
    return u < val_fraction;
}

/* Growable byte buffer (for meta.json). */
typedef struct {
    char *p;
    size_t len, cap;
    int oom;
} sbuf;

static void sb_putn(sbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        while (cap < b->len + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}
static void sb_puts(sbuf *b, const char *s) { sb_putn(b, s, strlen(s)); }
static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...) {
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n < sizeof tmp) {
        sb_putn(b, tmp, (size_t)n);
        return;
    }
    char *big = malloc((size_t)n + 1);
    if (!big) {
        b->oom = 1;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    sb_putn(b, big, (size_t)n);
    free(big);
}
/* JSON string literal; bytes >= 0x80 pass through (UTF-8), control characters escaped. */
static void sb_json_string(sbuf *b, const char *s) {
    sb_putn(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char esc[8];
        switch (*p) {
        case '"': sb_puts(b, "\\\""); break;
        case '\\': sb_puts(b, "\\\\"); break;
        case '\n': sb_puts(b, "\\n"); break;
        case '\r': sb_puts(b, "\\r"); break;
        case '\t': sb_puts(b, "\\t"); break;
        default:
            if (*p < 0x20) {
                snprintf(esc, sizeof esc, "\\u%04x", *p);
                sb_puts(b, esc);
            } else {
                sb_putn(b, (const char *)p, 1);
            }
        }
    }
    sb_putn(b, "\"", 1);
}


static int fsync_path(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

/* mkdir -p for the parent folders of `path` (not `path` itself). */
static int make_parents(const char *path) {
    char *copy = strdup(path);
    if (!copy) return fr_error(FR_ERR_NOMEM, "out of memory");
    for (char *p = copy + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(copy, 0755) != 0 && errno != EEXIST) {
            int rc = fr_error(FR_ERR_IO, "cannot create folder %s: %s", copy, strerror(errno));
            free(copy);
            return rc;
        }
        *p = '/';
    }
    free(copy);
    return FR_OK;
}

/* 1 if dir exists and has entries other than . and .., 0 if empty, -1 on error (errno). */
static int dir_nonempty(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    struct dirent *e;
    int any = 0;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        any = 1;
        break;
    }
    closedir(d);
    return any;
}

/* ------------------------------------------------------------------ input files */

typedef struct {
    char *path;
    uint64_t size;
    int jsonl;
} input_file;

typedef struct {
    input_file *v;
    int n, cap;
    uint64_t total_bytes;
} file_list;

static void files_free(file_list *l) {
    for (int i = 0; i < l->n; i++) free(l->v[i].path);
    free(l->v);
    memset(l, 0, sizeof *l);
}

static int has_suffix_ci(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcasecmp(s + n - m, suffix) == 0;
}

static int files_add(file_list *l, const char *path, const struct stat *st) {
    if (st->st_size == 0) return fr_error(FR_ERR_FORMAT, "input file %s is empty (0 bytes)", path);
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 64;
        input_file *v = realloc(l->v, (size_t)cap * sizeof *v);
        if (!v) return fr_error(FR_ERR_NOMEM, "out of memory listing inputs");
        l->v = v;
        l->cap = cap;
    }
    input_file *f = &l->v[l->n];
    f->path = strdup(path);
    if (!f->path) return fr_error(FR_ERR_NOMEM, "out of memory listing inputs");
    f->size = (uint64_t)st->st_size;
    f->jsonl = has_suffix_ci(path, ".jsonl");
    l->n++;
    l->total_bytes += f->size;
    return FR_OK;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Recurse into dir: entries sorted by byte-wise name; hidden entries (leading '.'),
 * symlinks to folders and non-regular files are skipped. */
static int walk_dir(file_list *l, const char *dir, int depth) {
    if (depth > DIR_MAX_DEPTH) return fr_error(FR_ERR_ARG, "input folder %s is nested too deeply", dir);
    DIR *d = opendir(dir);
    if (!d) return fr_error(FR_ERR_IO, "cannot read input folder %s: %s", dir, strerror(errno));
    char **names = NULL;
    int n = 0, cap = 0, rc = FR_OK;
    struct dirent *e;
    errno = 0;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 64;
            char **nn = realloc(names, (size_t)cap * sizeof *nn);
            if (!nn) {
                rc = fr_error(FR_ERR_NOMEM, "out of memory listing %s", dir);
                goto out;
            }
            names = nn;
        }
        names[n] = strdup(e->d_name);
        if (!names[n]) {
            rc = fr_error(FR_ERR_NOMEM, "out of memory listing %s", dir);
            goto out;
        }
        n++;
    }
    if (errno != 0) {
        rc = fr_error(FR_ERR_IO, "cannot read input folder %s: %s", dir, strerror(errno));
        goto out;
    }
    if (n > 1) qsort(names, (size_t)n, sizeof *names, cmp_str);
    for (int i = 0; i < n && rc == FR_OK; i++) {
        char *p = fr_path_join(dir, names[i]);
        if (!p) {
            rc = fr_error(FR_ERR_NOMEM, "out of memory");
            break;
        }
        struct stat lst, st;
        if (lstat(p, &lst) != 0) {
            rc = fr_error(FR_ERR_IO, "cannot read input %s: %s", p, strerror(errno));
        } else if (S_ISDIR(lst.st_mode)) {
            rc = walk_dir(l, p, depth + 1);
        } else if (S_ISREG(lst.st_mode)) {
            rc = files_add(l, p, &lst);
        } else if (S_ISLNK(lst.st_mode)) {
            if (stat(p, &st) != 0) rc = fr_error(FR_ERR_IO, "cannot read input %s: %s", p, strerror(errno));
            else if (S_ISREG(st.st_mode)) rc = files_add(l, p, &st);
            /* symlinked folders are not followed (no cycles) */
        }
        free(p);
    }
out:
    closedir(d);
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
    return rc;
}

static int collect_inputs(file_list *l, const char *const *inputs, int n_inputs) {
    for (int i = 0; i < n_inputs; i++) {
        const char *in = inputs[i];
        if (!in || !in[0]) return fr_error(FR_ERR_ARG, "input %d is an empty path", i + 1);
        struct stat st;
        if (stat(in, &st) != 0) return fr_error(FR_ERR_IO, "cannot read input %s: %s", in, strerror(errno));
        if (S_ISDIR(st.st_mode)) {
            int before = l->n;
            FR_CHECK(walk_dir(l, in, 0));
            if (l->n == before)
                return fr_error(FR_ERR_FORMAT, "input folder %s contains no files (hidden files are skipped)", in);
        } else if (S_ISREG(st.st_mode)) {
            FR_CHECK(files_add(l, in, &st));
        } else {
            return fr_error(FR_ERR_IO, "input %s is not a regular file or a folder", in);
        }
    }
    return FR_OK;
}

/* ------------------------------------------------------------------ document reader */

typedef struct {
    const file_list *files;
    int fi;              /* current file */
    FILE *f;             /* open JSONL file */
    long line;           /* current JSONL line (1-based) */
    char *buf;
    size_t cap;
    uint64_t bytes_done; /* input bytes consumed so far */
    int file_docs;       /* documents found in the current file */
} doc_reader;

typedef struct {
    char *text;
    size_t len;
    int file;   /* index in the file list */
    long line;  /* JSONL line, 0 for a whole-file document */
    int *ids;
    size_t n_ids;
    int val;
    int rc;
    char *err;
} doc;

static void reader_close(doc_reader *r) {
    if (r->f) fclose(r->f);
    r->f = NULL;
    free(r->buf);
    r->buf = NULL;
    r->cap = 0;
}

static int is_blank(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n') return 0;
    return 1;
}

/* A plain-text input must be UTF-8 text: a file with a NUL byte, or with more than
 * MAX_BAD_UTF8_PERCENT % of its bytes outside valid UTF-8 sequences, is refused (a binary
 * file or another encoding, e.g. UTF-16, would otherwise become one document of garbage).
 * A few stray bytes (a Latin-1 character in an otherwise UTF-8 file) are tolerated. */
#define MAX_BAD_UTF8_PERCENT 1

static int check_text(const char *path, const char *text, size_t len) {
    const unsigned char *s = (const unsigned char *)text;
    size_t bad = 0, first_bad = len;
    for (size_t i = 0; i < len;) {
        if (s[i] < 0x80) { /* ASCII run */
            if (s[i] == 0)
                return fr_error(FR_ERR_FORMAT,
                                "input file %s is not text: it holds a NUL byte at byte offset %zu (a binary file, "
                                "or UTF-16?); plain-text inputs must be UTF-8",
                                path, i);
            i++;
            continue;
        }
        size_t k = fr_utf8_seq_len(s + i, len - i);
        if (k == 0) {
            if (bad++ == 0) first_bad = i;
            k = 1;
        }
        i += k;
    }
    if (bad * 100 > (size_t)MAX_BAD_UTF8_PERCENT * len)
        return fr_error(FR_ERR_FORMAT,
                        "input file %s is not UTF-8 text: %zu of its %zu bytes (%.1f %%) are outside valid UTF-8 "
                        "sequences, the first at byte offset %zu (at most %d %% is tolerated; a binary file, or "
                        "another encoding?)",
                        path, bad, len, 100.0 * (double)bad / (double)len, first_bad, MAX_BAD_UTF8_PERCENT);
    return FR_OK;
}

/* Next non-empty document into *d (text malloc'd). *have = 0 at the end of the inputs. */
static int reader_next(doc_reader *r, doc *d, int *have) {
    *have = 0;
    while (r->fi < r->files->n) {
        const input_file *in = &r->files->v[r->fi];
        if (!in->jsonl) {
            char *text = NULL;
            size_t len = 0;
            FR_CHECK(fr_read_file(in->path, &text, &len));
            r->bytes_done += len;
            r->fi++;
            if (len == 0) {
                free(text);
                return fr_error(FR_ERR_FORMAT, "input file %s is empty (0 bytes)", in->path);
            }
            int trc = check_text(in->path, text, len);
            if (trc != FR_OK) {
                free(text);
                return trc;
            }
            memset(d, 0, sizeof *d);
            d->text = text;
            d->len = len;
            d->file = r->fi - 1;
            *have = 1;
            return FR_OK;
        }
        if (!r->f) {
            r->f = fopen(in->path, "rb");
            if (!r->f) return fr_error(FR_ERR_IO, "cannot open %s: %s", in->path, strerror(errno));
            r->line = 0;
            r->file_docs = 0;
        }
        ssize_t got;
        errno = 0;
        while ((got = getline(&r->buf, &r->cap, r->f)) >= 0) {
            r->line++;
            r->bytes_done += (uint64_t)got;
            if (is_blank(r->buf, (size_t)got)) continue;
            cJSON *j = cJSON_ParseWithLength(r->buf, (size_t)got);
            if (!j) return fr_error(FR_ERR_FORMAT, "%s: line %ld: not valid JSON", in->path, r->line);
            const cJSON *t = cJSON_IsObject(j) ? cJSON_GetObjectItemCaseSensitive(j, "text") : NULL;
            if (!cJSON_IsString(t) || !t->valuestring) {
                cJSON_Delete(j);
                return fr_error(FR_ERR_FORMAT, "%s: line %ld: no string \"text\" field", in->path, r->line);
            }
            size_t len = strlen(t->valuestring);
            r->file_docs++;
            if (len == 0) { /* an empty document has no tokens: skipped */
                cJSON_Delete(j);
                continue;
            }
            memset(d, 0, sizeof *d);
            d->text = malloc(len + 1);
            if (!d->text) {
                cJSON_Delete(j);
                return fr_error(FR_ERR_NOMEM, "out of memory reading %s", in->path);
            }
            memcpy(d->text, t->valuestring, len + 1);
            cJSON_Delete(j);
            d->len = len;
            d->file = r->fi;
            d->line = r->line;
            *have = 1;
            return FR_OK;
        }
        if (ferror(r->f))
            return fr_error(FR_ERR_IO, "error reading %s: %s", in->path, strerror(errno ? errno : EIO));
        fclose(r->f);
        r->f = NULL;
        if (r->file_docs == 0)
            return fr_error(FR_ERR_FORMAT, "%s: no documents (only blank lines)", in->path);
        r->fi++;
    }
    return FR_OK;
}

/* ------------------------------------------------------------------ shard writer */

typedef struct {
    char *file; /* base name */
    uint64_t tokens;
} shard_rec;

typedef struct {
    const char *dir, *split;
    int width;
    uint32_t vocab, eot;
    uint64_t shard_tokens;
    int fd;              /* current shard, -1 if none open */
    char *path;          /* its full path */
    uint64_t in_shard;   /* tokens in the current shard */
    uint64_t tokens, docs;
    shard_rec *shards;
    int n_shards, cap_shards;
    unsigned char *buf;  /* pending bytes of the current shard */
    size_t buf_len;
} shard_writer;

#define WBUF_BYTES ((size_t)1 << 20)

static int write_all(int fd, const void *data, size_t len, const char *path) {
    const char *p = data;
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0) {
            if (errno == EINTR) continue;
            return fr_error(FR_ERR_IO, "cannot write %s: %s", path, strerror(errno));
        }
        p += w;
        len -= (size_t)w;
    }
    return FR_OK;
}


static int writer_flush(shard_writer *w) {
    if (w->buf_len == 0) return FR_OK;
    int rc = write_all(w->fd, w->buf, w->buf_len, w->path);
    w->buf_len = 0;
    return rc;
}

static int writer_open_shard(shard_writer *w) {
    char name[64];
    snprintf(name, sizeof name, "%s_%05d.bin", w->split, w->n_shards);
    if (w->n_shards == w->cap_shards) {
        int cap = w->cap_shards ? 2 * w->cap_shards : 16;
        shard_rec *s = realloc(w->shards, (size_t)cap * sizeof *s);
        if (!s) return fr_error(FR_ERR_NOMEM, "out of memory");
        w->shards = s;
        w->cap_shards = cap;
    }
    free(w->path);
    w->path = fr_path_join(w->dir, name);
    char *base = strdup(name);
    if (!w->path || !base) {
        free(base);
        return fr_error(FR_ERR_NOMEM, "out of memory");
    }
    w->fd = open(w->path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (w->fd < 0) {
        free(base);
        return fr_error(FR_ERR_IO, "cannot create %s: %s", w->path, strerror(errno));
    }
    w->shards[w->n_shards].file = base;
    w->shards[w->n_shards].tokens = 0;
    w->n_shards++;
    w->in_shard = 0;
    unsigned char h[FR_SHARD_HEADER_BYTES];
    fr_shard_make_header(h, w->width, 0, w->vocab, w->eot); /* count patched on close */
    return write_all(w->fd, h, sizeof h, w->path);
}

static int writer_close_shard(shard_writer *w) {
    if (w->fd < 0) return FR_OK;
    int rc = writer_flush(w);
    if (rc == FR_OK) {
        unsigned char h[FR_SHARD_HEADER_BYTES];
        fr_shard_make_header(h, w->width, w->in_shard, w->vocab, w->eot);
        if (pwrite(w->fd, h, sizeof h, 0) != (ssize_t)sizeof h)
            rc = fr_error(FR_ERR_IO, "cannot write the header of %s: %s", w->path, strerror(errno));
    }
    if (rc == FR_OK && fsync(w->fd) != 0)
        rc = fr_error(FR_ERR_IO, "cannot flush %s: %s", w->path, strerror(errno));
    if (close(w->fd) != 0 && rc == FR_OK)
        rc = fr_error(FR_ERR_IO, "cannot close %s: %s", w->path, strerror(errno));
    w->fd = -1;
    w->shards[w->n_shards - 1].tokens = w->in_shard;
    return rc;
}

/* Append n ids; a new shard starts whenever the current one holds shard_tokens. */
static int writer_put(shard_writer *w, const int *ids, size_t n) {
    size_t i = 0;
    while (i < n) {
        if (w->fd < 0) FR_CHECK(writer_open_shard(w));
        uint64_t room = w->shard_tokens - w->in_shard;
        size_t k = n - i;
        if ((uint64_t)k > room) k = (size_t)room;
        for (size_t j = 0; j < k; j++) {
            if (w->buf_len + 4 > WBUF_BYTES) FR_CHECK(writer_flush(w));
            uint32_t v = (uint32_t)ids[i + j];
            unsigned char *p = w->buf + w->buf_len;
            p[0] = (unsigned char)v;
            p[1] = (unsigned char)(v >> 8);
            if (w->width == 4) {
                p[2] = (unsigned char)(v >> 16);
                p[3] = (unsigned char)(v >> 24);
            }
            w->buf_len += (size_t)w->width;
        }
        i += k;
        w->in_shard += k;
        w->tokens += k;
        if (w->in_shard == w->shard_tokens) FR_CHECK(writer_close_shard(w));
    }
    return FR_OK;
}

static void writer_free(shard_writer *w) {
    if (w->fd >= 0) close(w->fd);
    w->fd = -1;
    for (int i = 0; i < w->n_shards; i++) free(w->shards[i].file);
    free(w->shards);
    free(w->path);
    free(w->buf);
    memset(w, 0, sizeof *w);
    w->fd = -1;
}

/* ------------------------------------------------------------------ meta.json */

static void meta_split(sbuf *b, const shard_writer *w, int last) {
    sb_printf(b, "    \"%s\": {\n      \"tokens\": %llu,\n      \"docs\": %llu,\n      \"shards\": [", w->split,
              (unsigned long long)w->tokens, (unsigned long long)w->docs);
    for (int i = 0; i < w->n_shards; i++)
        sb_printf(b, "%s\n        {\"file\": \"%s\", \"tokens\": %llu}", i ? "," : "", w->shards[i].file,
                  (unsigned long long)w->shards[i].tokens);
    sb_printf(b, "%s]\n    }%s\n", w->n_shards ? "\n      " : "", last ? "" : ",");
}

static int write_meta(const char *dir, const fr_data_prepare_options *opt, const fr_tokenizer *tok,
                      const file_list *files, const shard_writer *train, const shard_writer *val,
                      uint64_t shard_tokens) {
    sbuf b = {0};
    sb_puts(&b, "{\n  \"format\": \"frugal-token-shards\",\n");
    sb_printf(&b, "  \"format_version\": %d,\n", FR_SHARD_VERSION);
    sb_printf(&b, "  \"vocab_size\": %u,\n  \"eot_id\": %u,\n  \"eot_token\": ", train->vocab, train->eot);
    const char *eot_tok = fr_tokenizer_id_to_token(tok, (int)train->eot);
    if (eot_tok) sb_json_string(&b, eot_tok);
    else sb_puts(&b, "null");
    sb_printf(&b, ",\n  \"token_width\": %d,\n  \"shard_tokens\": %llu,\n", train->width,
              (unsigned long long)shard_tokens);
    sb_printf(&b, "  \"val_fraction\": %.17g,\n  \"split_rule\": ", opt->val_fraction);
    sb_json_string(&b, SPLIT_RULE);
    sb_puts(&b, ",\n  \"separator\": \"each document is followed by eot_id\",\n");
    sb_puts(&b, "  \"tokenizer\": \"tokenizer.json\",\n  \"inputs\": [");
    for (int i = 0; i < opt->n_inputs; i++) {
        if (i) sb_puts(&b, ", ");
        sb_json_string(&b, opt->inputs[i]);
    }
    sb_printf(&b, "],\n  \"input_files\": %d,\n  \"bytes_in\": %llu,\n  \"splits\": {\n", files->n,
              (unsigned long long)files->total_bytes);
    meta_split(&b, train, 0);
    meta_split(&b, val, 1);
    sb_puts(&b, "  }\n}\n");
    if (b.oom) {
        free(b.p);
        return fr_error(FR_ERR_NOMEM, "out of memory writing meta.json");
    }
    char *path = fr_path_join(dir, "meta.json");
    int rc = path ? fr_write_file_atomic(path, b.p, b.len) : fr_error(FR_ERR_NOMEM, "out of memory");
    free(path);
    free(b.p);
    return rc;
}

/* Copy tokenizer.json (+ tokenizer_config.json when present) into dir. */
static int copy_tokenizer(const char *tokenizer_path, const char *dir) {
    struct stat st;
    char *src_json = NULL, *src_cfg = NULL, *dst = NULL;
    int rc = FR_OK;
    if (stat(tokenizer_path, &st) == 0 && S_ISDIR(st.st_mode)) {
        src_json = fr_path_join(tokenizer_path, "tokenizer.json");
        src_cfg = fr_path_join(tokenizer_path, "tokenizer_config.json");
    } else {
        char *copy = strdup(tokenizer_path);
        src_json = strdup(tokenizer_path);
        if (copy) src_cfg = fr_path_join(dirname(copy), "tokenizer_config.json");
        free(copy);
    }
    if (!src_json || !src_cfg) {
        rc = fr_error(FR_ERR_NOMEM, "out of memory");
        goto out;
    }
    dst = fr_path_join(dir, "tokenizer.json");
    if (!dst) {
        rc = fr_error(FR_ERR_NOMEM, "out of memory");
        goto out;
    }
    if ((rc = fr_copy_file(src_json, dst)) != FR_OK) goto out;
    free(dst);
    dst = NULL;
    if (stat(src_cfg, &st) == 0 && S_ISREG(st.st_mode)) {
        dst = fr_path_join(dir, "tokenizer_config.json");
        rc = dst ? fr_copy_file(src_cfg, dst) : fr_error(FR_ERR_NOMEM, "out of memory");
    }
out:
    free(src_json);
    free(src_cfg);
    free(dst);
    return rc;
}

/* ------------------------------------------------------------------ prepare */

static void batch_clear(doc *b, int n) {
    for (int i = 0; i < n; i++) {
        free(b[i].text);
        free(b[i].ids);
        free(b[i].err);
        memset(&b[i], 0, sizeof b[i]);
    }
}

static int report(const fr_data_prepare_options *opt, double frac, const char *phase) {
    if (!opt->progress) return FR_OK;
    if (frac < 0) frac = 0;
    if (frac > 1) frac = 1;
    if (opt->progress(opt->progress_user, frac, phase) != 0)
        return fr_error(FR_ERR_STATE, "data preparation cancelled");
    return FR_OK;
}

/* Is `inner` (an absolute, resolved path) equal to or below `outer` (resolved)? */
static int path_within(const char *inner, const char *outer) {
    size_t n = strlen(outer);
    if (n > 1 && outer[n - 1] == '/') n--;
    return strncmp(inner, outer, n) == 0 && (inner[n] == 0 || inner[n] == '/' || n == 1);
}

/* Encode every document of the batch in parallel; token ids land in b[i].ids. */
static int encode_batch(const fr_tokenizer *tok, doc *b, int n, int nthreads, double val_fraction,
                        const file_list *files) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads)
    for (int i = 0; i < n; i++) {
        b[i].val = doc_is_val(b[i].text, b[i].len, val_fraction);
        b[i].rc = fr_tokenizer_encode(tok, b[i].text, b[i].len, 0, &b[i].ids, &b[i].n_ids);
        if (b[i].rc != FR_OK) {
            b[i].err = strdup(fr_last_error());
            b[i].ids = NULL;
            b[i].n_ids = 0;
        }
    }
    for (int i = 0; i < n; i++) {
        if (b[i].rc == FR_OK) continue;
        const char *path = files->v[b[i].file].path;
        const char *msg = b[i].err ? b[i].err : "";
        if (b[i].line > 0)
            return fr_error(b[i].rc, "%s: line %ld: cannot encode the document: %s", path, b[i].line, msg);
        return fr_error(b[i].rc, "%s: cannot encode the document: %s", path, msg);
    }
    return FR_OK;
}

static int prepare_into(const fr_data_prepare_options *opt, const fr_tokenizer *tok, const file_list *files,
                        const char *tmp, fr_data_stats *stats) {
    int vocab = fr_tokenizer_vocab_size(tok);
    int eot = fr_tokenizer_special_id(tok, FR_TOKEN_EOS);
    uint64_t shard_tokens = opt->shard_tokens ? opt->shard_tokens : DEFAULT_SHARD_TOKENS;
    int width = vocab <= 65536 ? 2 : 4;
    int nthreads = opt->num_threads > 0 ? opt->num_threads : omp_get_max_threads();
    if (nthreads < 1) nthreads = 1;

    shard_writer w[2];
    const char *split_names[2] = {"train", "val"};
    for (int s = 0; s < 2; s++) {
        memset(&w[s], 0, sizeof w[s]);
        w[s].fd = -1;
        w[s].dir = tmp;
        w[s].split = split_names[s];
        w[s].width = width;
        w[s].vocab = (uint32_t)vocab;
        w[s].eot = (uint32_t)eot;
        w[s].shard_tokens = shard_tokens;
        w[s].buf = malloc(WBUF_BYTES);
    }
    doc *batch = calloc(BATCH_MAX_DOCS, sizeof *batch);
    doc_reader r = {.files = files};
    int n = 0, rc = FR_OK;
    if (!batch || !w[0].buf || !w[1].buf) {
        rc = fr_error(FR_ERR_NOMEM, "out of memory");
        goto out;
    }
    if ((rc = report(opt, 0.0, "tokenizing")) != FR_OK) goto out;
    for (;;) {
        /* read a batch */
        size_t bytes = 0;
        int have = 1;
        n = 0;
        while (n < BATCH_MAX_DOCS && bytes < BATCH_BYTES) {
            if ((rc = reader_next(&r, &batch[n], &have)) != FR_OK) goto out;
            if (!have) break;
            bytes += batch[n].len;
            n++;
        }
        if (n == 0) break;
        if ((rc = encode_batch(tok, batch, n, nthreads, opt->val_fraction, files)) != FR_OK) goto out;
        for (int i = 0; i < n; i++) {
            const doc *d = &batch[i];
            for (size_t j = 0; j < d->n_ids; j++) {
                if (d->ids[j] < 0 || d->ids[j] >= vocab) {
                    rc = fr_error(FR_ERR_STATE, "%s: the tokenizer produced id %d outside [0, %d)",
                                  files->v[d->file].path, d->ids[j], vocab);
                    goto out;
                }
            }
            shard_writer *sw = &w[d->val ? 1 : 0];
            if ((rc = writer_put(sw, d->ids, d->n_ids)) != FR_OK) goto out;
            if ((rc = writer_put(sw, &eot, 1)) != FR_OK) goto out;
            sw->docs++;
        }
        batch_clear(batch, n);
        n = 0;
        double frac = files->total_bytes ? (double)r.bytes_done / (double)files->total_bytes : 1.0;
        if ((rc = report(opt, frac * 0.999, "tokenizing")) != FR_OK) goto out;
        if (!have) break;
    }
    if (w[0].docs + w[1].docs == 0) {
        rc = fr_error(FR_ERR_FORMAT, "the inputs hold no documents (every document is empty)");
        goto out;
    }
    for (int s = 0; s < 2; s++)
        if ((rc = writer_close_shard(&w[s])) != FR_OK) goto out;
    if ((rc = write_meta(tmp, opt, tok, files, &w[0], &w[1], shard_tokens)) != FR_OK) goto out;
    if ((rc = copy_tokenizer(opt->tokenizer_dir, tmp)) != FR_OK) goto out;
    stats->train_tokens = w[0].tokens;
    stats->val_tokens = w[1].tokens;
    stats->train_docs = w[0].docs;
    stats->val_docs = w[1].docs;
    stats->bytes_in = files->total_bytes;
out:
    if (batch) batch_clear(batch, n);
    free(batch);
    reader_close(&r);
    writer_free(&w[0]);
    writer_free(&w[1]);
    return rc;
}

/* `force`: replace an existing output folder (that holds a meta.json) after success. */
static int data_prepare(const fr_data_prepare_options *opt, int force, fr_data_stats *stats) {
    fr_clear_error();
    fr_data_stats dummy;
    if (!stats) stats = &dummy;
    memset(stats, 0, sizeof *stats);
    if (!opt) return fr_error(FR_ERR_ARG, "fr_data_prepare: options are NULL");
    if (!opt->tokenizer_dir || !opt->tokenizer_dir[0])
        return fr_error(FR_ERR_ARG, "fr_data_prepare: no tokenizer given");
    if (!opt->output_dir || !opt->output_dir[0]) return fr_error(FR_ERR_ARG, "fr_data_prepare: no output folder given");
    if (opt->n_inputs <= 0 || !opt->inputs) return fr_error(FR_ERR_ARG, "fr_data_prepare: no inputs given");
    if (!(opt->val_fraction >= 0.0 && opt->val_fraction <= 1.0))
        return fr_error(FR_ERR_ARG, "fr_data_prepare: val_fraction %g is outside [0, 1]", opt->val_fraction);

    /* Normalise the output path: no trailing slashes (OUTPUT.tmp-PID must be a sibling). */
    size_t olen = strlen(opt->output_dir);
    char *out_dir = strdup(opt->output_dir);
    if (!out_dir) return fr_error(FR_ERR_NOMEM, "out of memory");
    while (olen > 1 && out_dir[olen - 1] == '/') out_dir[--olen] = 0;
    if (strcmp(out_dir, "/") == 0 || strcmp(out_dir, ".") == 0 || strcmp(out_dir, "..") == 0) {
        free(out_dir);
        return fr_error(FR_ERR_ARG, "output folder '%s' cannot be used (name a new folder)", opt->output_dir);
    }

    int rc = FR_OK, existed = 0;
    fr_tokenizer *tok = NULL;
    file_list files = {0};
    char *tmp = NULL, *old = NULL, *meta = NULL;
    char *real_parent = NULL;

    struct stat st;
    if (stat(out_dir, &st) == 0) {
        if (!S_ISDIR(st.st_mode)) {
            rc = fr_error(FR_ERR_ARG, "output %s exists and is not a folder", out_dir);
            goto out;
        }
        int ne = dir_nonempty(out_dir);
        if (ne < 0) {
            rc = fr_error(FR_ERR_IO, "cannot read output folder %s: %s", out_dir, strerror(errno));
            goto out;
        }
        if (ne > 0 && !force) {
            rc = fr_error(FR_ERR_ARG, "output folder %s already exists and is not empty (use --force to replace it)",
                          out_dir);
            goto out;
        }
        if (ne > 0) {
            meta = fr_path_join(out_dir, "meta.json");
            if (!meta) {
                rc = fr_error(FR_ERR_NOMEM, "out of memory");
                goto out;
            }
            if (stat(meta, &st) != 0) {
                rc = fr_error(FR_ERR_ARG,
                              "refusing to replace %s: it is not empty and not a prepared dataset (no meta.json)",
                              out_dir);
                goto out;
            }
        }
        existed = 1;
    } else if (errno != ENOENT) {
        rc = fr_error(FR_ERR_IO, "cannot access output folder %s: %s", out_dir, strerror(errno));
        goto out;
    }

    /* Validate everything cheap before creating anything. */
    if ((rc = fr_tokenizer_load(&tok, opt->tokenizer_dir)) != FR_OK) {
        rc = fr_error_context(rc, "cannot load the tokenizer %s", opt->tokenizer_dir);
        goto out;
    }
    if (fr_tokenizer_special_id(tok, FR_TOKEN_EOS) < 0) {
        rc = fr_error(FR_ERR_FORMAT,
                      "tokenizer %s has no end-of-text (EOS) token; documents need one as separator",
                      opt->tokenizer_dir);
        goto out;
    }
    if (fr_tokenizer_vocab_size(tok) <= 0) {
        rc = fr_error(FR_ERR_FORMAT, "tokenizer %s has an empty vocabulary", opt->tokenizer_dir);
        goto out;
    }
    if ((rc = collect_inputs(&files, opt->inputs, opt->n_inputs)) != FR_OK) goto out;
    /* The output (and its temporary sibling) must not be inside an input folder: resolve the
     * deepest existing ancestor of the output (components below it cannot be symlinks). */
    {
        char *anc = strdup(out_dir);
        if (!anc) {
            rc = fr_error(FR_ERR_NOMEM, "out of memory");
            goto out;
        }
        for (;;) {
            char *parent = strdup(dirname(anc));
            free(anc);
            anc = parent;
            if (!anc) break;
            if (stat(anc, &st) == 0 || strcmp(anc, ".") == 0 || strcmp(anc, "/") == 0) break;
        }
        char *real_anc = anc ? realpath(anc, NULL) : NULL;
        free(anc);
        if (!real_anc) {
            rc = fr_error(FR_ERR_IO, "cannot resolve the parent folder of %s: %s", out_dir, strerror(errno));
            goto out;
        }
        for (int i = 0; i < opt->n_inputs; i++) {
            if (stat(opt->inputs[i], &st) != 0 || !S_ISDIR(st.st_mode)) continue;
            char *ri = realpath(opt->inputs[i], NULL);
            int inside = ri && path_within(real_anc, ri);
            free(ri);
            if (inside) {
                free(real_anc);
                rc = fr_error(FR_ERR_ARG, "output folder %s is inside input folder %s", out_dir, opt->inputs[i]);
                goto out;
            }
        }
        free(real_anc);
    }
    if ((rc = make_parents(out_dir)) != FR_OK) goto out;
    {
        char *copy = strdup(out_dir);
        real_parent = copy ? realpath(dirname(copy), NULL) : NULL;
        free(copy);
        if (!real_parent) {
            rc = fr_error(FR_ERR_IO, "cannot resolve the parent folder of %s: %s", out_dir, strerror(errno));
            goto out;
        }
    }

    size_t tlen = strlen(out_dir) + 48;
    tmp = malloc(tlen);
    old = malloc(tlen);
    if (!tmp || !old) {
        rc = fr_error(FR_ERR_NOMEM, "out of memory");
        goto out;
    }
    snprintf(tmp, tlen, "%s.tmp-%ld", out_dir, (long)getpid());
    snprintf(old, tlen, "%s.old-%ld", out_dir, (long)getpid());
    fr_remove_tree(tmp); /* stale leftover of a killed run with the same pid */
    fr_remove_stale_tmp(out_dir, ".tmp-"); /* and those of killed runs with other pids */
    if (mkdir(tmp, 0755) != 0) {
        rc = fr_error(FR_ERR_IO, "cannot create folder %s: %s", tmp, strerror(errno));
        goto out;
    }

    rc = prepare_into(opt, tok, &files, tmp, stats);
    if (rc == FR_OK && fsync_path(tmp) != 0)
        rc = fr_error(FR_ERR_IO, "cannot flush folder %s: %s", tmp, strerror(errno));
    if (rc == FR_OK) rc = report(opt, 1.0, "tokenizing");
    if (rc == FR_OK) {
        if (existed && force) {
            /* Swap atomically where the filesystem allows, else move the old folder aside. */
            if (renameat2(AT_FDCWD, tmp, AT_FDCWD, out_dir, RENAME_EXCHANGE) == 0) {
                fr_remove_tree(tmp); /* now the old dataset */
            } else if (rename(tmp, out_dir) == 0) { /* out_dir was empty */
            } else if (rename(out_dir, old) == 0) {
                if (rename(tmp, out_dir) != 0) {
                    rc = fr_error(FR_ERR_IO, "cannot rename %s to %s: %s", tmp, out_dir, strerror(errno));
                    rename(old, out_dir);
                } else {
                    fr_remove_tree(old);
                }
            } else {
                rc = fr_error(FR_ERR_IO, "cannot replace %s: %s", out_dir, strerror(errno));
            }
        } else if (rename(tmp, out_dir) != 0) {
            rc = fr_error(FR_ERR_IO, "cannot rename %s to %s: %s", tmp, out_dir,
                          errno == ENOTEMPTY || errno == EEXIST ? "the output folder appeared meanwhile"
                                                                : strerror(errno));
        }
        if (rc == FR_OK) fsync_path(real_parent);
    }
    if (rc != FR_OK) {
        fr_remove_tree(tmp);
        memset(stats, 0, sizeof *stats);
    }

out:
    if (tok) fr_tokenizer_free(tok);
    files_free(&files);
    free(tmp);
    free(old);
    free(meta);
    free(real_parent);
    free(out_dir);
    return rc;
}

int fr_data_prepare(const fr_data_prepare_options *opt, fr_data_stats *stats) {
    return data_prepare(opt, 0, stats);
}

int fr_data_prepare_replace(const fr_data_prepare_options *opt, fr_data_stats *stats) {
    return data_prepare(opt, 1, stats);
}
