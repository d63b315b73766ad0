/* bpe_train.c — byte-level BPE training.
 *
 * 1. Word counting (OpenMP): every document is split on the special tokens, then by the
 *    DeepSeek-V3 pre-tokenizer; each thread counts its pieces in its own map, the maps are
 *    summed at the end.
 * 2. Merging: each unique word is an array of symbol ids with its count. Pair counts live
 *    in a hash map (pair -> index) with, per pair, the list of words containing it, and a
 *    max-heap of (count, pair) with lazy deletion: an entry whose count is out of date is
 *    pushed back with the current count when it reaches the top. A merge rewrites only the
 *    words listed for its pair and applies the local pair count changes.
 *    Ties: the higher count wins; equal counts go to the smaller (left id, right id) pair.
 * 3. The result is built as a tokenizer.json document and loaded through the same path as
 *    a file, so a trained tokenizer and a loaded one behave identically. */
#define _GNU_SOURCE
#include "text/tokenizer_internal.h"

#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const char *const k_default_specials[5] = {
    "<\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>",
    "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>",
    "<\xef\xbd\x9c\xe2\x96\x81pad\xe2\x96\x81\xef\xbd\x9c>",
    "<\xef\xbd\x9cUser\xef\xbd\x9c>",
    "<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>",
};

/* ------------------------------------------------------------------ word counting */

typedef struct {
    const char *const *spec;
    size_t *spec_len;
    int n_spec;
} spec_set;

typedef struct {
    fr_strmap map;
    fr_pretok_scratch sc;
    int nomem;
} count_ctx;

static int count_piece(void *user, const unsigned char *p, size_t n) {
    count_ctx *c = user;
    fr_strmap_slot *s = fr_strmap_put(&c->map, p, n, fr_hash_bytes(p, n), 0, NULL);
    if (!s) {
        c->nomem = 1;
        return FR_ERR_NOMEM;
    }
    s->val++;
    return 0;
}

/* Count the words of one document, with the special tokens cut out. */
static int count_doc(const fr_pretok *pt, const spec_set *sp, count_ctx *c, const unsigned char *s, size_t n) {
    size_t seg = 0;
    for (size_t i = 0; i < n; i++) {
        for (int k = 0; k < sp->n_spec; k++) {
            size_t l = sp->spec_len[k];
            if (l <= n - i && s[i] == (unsigned char)sp->spec[k][0] && memcmp(s + i, sp->spec[k], l) == 0) {
                int rc = fr_pretok_run(pt, &c->sc, s + seg, i - seg, count_piece, c);
                if (rc) return rc;
                i += l - 1;
                seg = i + 1;
                break;
            }
        }
    }
    return fr_pretok_run(pt, &c->sc, s + seg, n - seg, count_piece, c);
}

typedef struct {
    size_t off, len;
    long line; /* 1-based line for JSONL, 0 for text blocks */
} span;

static int has_suffix(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

static int report(const fr_bpe_train_options *opt, double frac, const char *phase) {
    if (opt->progress && opt->progress(opt->progress_user, frac, phase))
        return fr_error(FR_ERR_STATE, "tokenizer training cancelled by the progress callback (%s)", phase);
    return FR_OK;
}

static int count_files(const char *const *files, int n_files, const fr_pretok *pt, const spec_set *sp, int nt,
                       count_ctx *ctx, const fr_bpe_train_options *opt) {
    double total = 0, done = 0;
    for (int f = 0; f < n_files; f++) {
        struct stat st;
        if (!files[f] || stat(files[f], &st) != 0)
            return fr_error(FR_ERR_IO, "cannot open training file %s", files[f] ? files[f] : "(null)");
        total += (double)st.st_size;
    }
    for (int f = 0; f < n_files; f++) {
        char *buf = NULL;
        size_t len = 0;
        FR_CHECK(fr_read_file(files[f], &buf, &len));
        int jsonl = has_suffix(files[f], ".jsonl");
        size_t n_spans = 0, cap = 1024;
        span *spans = malloc(cap * sizeof *spans);
        if (!spans) {
            free(buf);
            return fr_error(FR_ERR_NOMEM, "out of memory");
        }
        long line = 0;
        for (size_t pos = 0; pos < len;) {
            size_t end;
            if (jsonl) {
                const char *nl = memchr(buf + pos, '\n', len - pos);
                end = nl ? (size_t)(nl - buf) + 1 : len;
                line++;
            } else { /* blocks of about 1 MiB ending after a newline */
                end = pos + (1u << 20) < len ? pos + (1u << 20) : len;
                const char *nl = end < len ? memchr(buf + end, '\n', len - end) : NULL;
                end = end < len ? (nl ? (size_t)(nl - buf) + 1 : len) : len;
            }
            if (n_spans == cap) {
                cap *= 2;
                span *ns = realloc(spans, cap * sizeof *ns);
                if (!ns) {
                    free(spans);
                    free(buf);
                    return fr_error(FR_ERR_NOMEM, "out of memory");
                }
                spans = ns;
            }
            spans[n_spans++] = (span){pos, end - pos, jsonl ? line : 0};
            pos = end;
        }
        int rc = FR_OK;
        long err_line = -1;
        char err_msg[512] = "";
        const size_t batch = 4096;
        for (size_t b0 = 0; b0 < n_spans && rc == FR_OK && err_line < 0; b0 += batch) {
            long b1 = (long)(b0 + batch < n_spans ? b0 + batch : n_spans);
#pragma omp parallel for num_threads(nt) schedule(dynamic, 8)
            for (long i = (long)b0; i < b1; i++) {
                count_ctx *c = &ctx[omp_get_thread_num()];
                const span *s = &spans[i];
                const char *p = buf + s->off;
                char msg[512] = "";
                int fail = 0;
                if (jsonl) {
                    size_t k = 0;
                    while (k < s->len && (p[k] == ' ' || p[k] == '\t' || p[k] == '\r' || p[k] == '\n')) k++;
                    if (k == s->len) continue; /* blank line */
                    cJSON *j = cJSON_ParseWithLength(p, s->len);
                    const cJSON *text = j ? cJSON_GetObjectItemCaseSensitive(j, "text") : NULL;
                    if (!j) {
                        snprintf(msg, sizeof msg, "%s:%ld: malformed JSON", files[f], s->line);
                        fail = 1;
                    } else if (!cJSON_IsString(text)) {
                        snprintf(msg, sizeof msg, "%s:%ld: no \"text\" string", files[f], s->line);
                        fail = 1;
                    } else if (count_doc(pt, sp, c, (const unsigned char *)text->valuestring, strlen(text->valuestring))) {
                        snprintf(msg, sizeof msg, "%s:%ld: %s", files[f], s->line,
                                 c->nomem ? "out of memory counting words" : fr_last_error());
                        fail = 2;
                    }
                    cJSON_Delete(j);
                } else if (count_doc(pt, sp, c, (const unsigned char *)p, s->len)) {
                    snprintf(msg, sizeof msg, "%s: %s", files[f], c->nomem ? "out of memory counting words" : fr_last_error());
                    fail = 2;
                }
                if (fail) {
#pragma omp critical(fr_bpe_err)
                    if (err_line < 0 || s->line < err_line) {
                        err_line = s->line;
                        snprintf(err_msg, sizeof err_msg, "%s", msg);
                        rc = fail == 1 ? FR_ERR_FORMAT : FR_ERR_NOMEM;
                    }
                }
            }
            if (err_line < 0) {
                done += (double)(spans[b1 - 1].off + spans[b1 - 1].len - (b0 ? spans[b0 - 1].off + spans[b0 - 1].len : 0));
                rc = report(opt, total > 0 ? 0.5 * done / total : 0.5, "count words");
            }
        }
        free(spans);
        free(buf);
        if (err_line >= 0) return fr_error(rc, "%s", err_msg);
        if (rc != FR_OK) return rc;
    }
    return FR_OK;
}

/* ------------------------------------------------------------------ merging */

typedef struct {
    /* words */
    size_t n_words;
    int32_t *sym;
    size_t *woff;
    int32_t *wlen;
    int64_t *wcnt;
    uint32_t *wstamp;
    /* tokens (internal ids: 0..255 bytes, then merges) */
    unsigned char *tbytes;
    size_t tb_len, tb_cap;
    size_t *toff;
    uint32_t *tlen;
    int n_tok, tok_cap;
    fr_strmap tokmap;
    /* pairs */
    uint64_t *pkey;
    int32_t *pidx;
    size_t pcap, n_pairs_used;
    int32_t *pa, *pb;
    int64_t *pc;
    int32_t **occ;
    int32_t *occ_n, *occ_cap;
    uint32_t *ptouch;
    size_t n_pairs, pairs_cap;
    int32_t *touched;
    size_t n_touched, touched_cap;
    /* heap */
    struct hent {
        int64_t count;
        int32_t p;
    } *heap;
    size_t hn, hcap;
    uint32_t stamp;
    int nomem;
} trainer;

static inline uint64_t pmix(uint64_t x) {
    x ^= x >> 31;
    x *= 0x7fb5d329728ea185ull;
    x ^= x >> 27;
    return x;
}

static int pair_grow_table(trainer *T) {
    size_t ncap = T->pcap ? T->pcap * 2 : 1u << 16;
    uint64_t *nk = malloc(ncap * sizeof *nk);
    int32_t *ni = malloc(ncap * sizeof *ni);
    if (!nk || !ni) {
        free(nk);
        free(ni);
        return -1;
    }
    for (size_t i = 0; i < ncap; i++) nk[i] = UINT64_MAX;
    for (size_t i = 0; i < T->pcap; i++) {
        if (T->pkey[i] == UINT64_MAX) continue;
        size_t j = pmix(T->pkey[i]) & (ncap - 1);
        while (nk[j] != UINT64_MAX) j = (j + 1) & (ncap - 1);
        nk[j] = T->pkey[i];
        ni[j] = T->pidx[i];
    }
    free(T->pkey);
    free(T->pidx);
    T->pkey = nk;
    T->pidx = ni;
    T->pcap = ncap;
    return 0;
}

static int grow_arrays(trainer *T) {
    size_t nc = T->pairs_cap ? T->pairs_cap * 2 : 1u << 15;
#define GROW(f)                                                \
    do {                                                       \
        void *np_ = realloc(T->f, nc * sizeof *T->f);          \
        if (!np_) return -1;                                   \
        T->f = np_;                                            \
    } while (0)
    GROW(pa);
    GROW(pb);
    GROW(pc);
    GROW(occ);
    GROW(occ_n);
    GROW(occ_cap);
    GROW(ptouch);
#undef GROW
    T->pairs_cap = nc;
    return 0;
}

/* Index of pair (a, b), created with count 0 when absent; -1 when out of memory. */
static int32_t pair_get(trainer *T, int32_t a, int32_t b, int create) {
    if (create && (T->n_pairs_used + 1) * 2 > T->pcap && pair_grow_table(T)) return -1;
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    size_t mask = T->pcap - 1;
    size_t i = pmix(key) & mask;
    while (T->pkey[i] != UINT64_MAX) {
        if (T->pkey[i] == key) return T->pidx[i];
        i = (i + 1) & mask;
    }
    if (!create) return -1;
    if (T->n_pairs == T->pairs_cap && grow_arrays(T)) return -1;
    int32_t p = (int32_t)T->n_pairs++;
    T->pkey[i] = key;
    T->pidx[i] = p;
    T->n_pairs_used++;
    T->pa[p] = a;
    T->pb[p] = b;
    T->pc[p] = 0;
    T->occ[p] = NULL;
    T->occ_n[p] = T->occ_cap[p] = 0;
    T->ptouch[p] = 0;
    return p;
}

static int occ_add(trainer *T, int32_t p, int32_t w) {
    if (T->occ_n[p] && T->occ[p][T->occ_n[p] - 1] == w) return 0;
    if (T->occ_n[p] == T->occ_cap[p]) {
        int32_t nc = T->occ_cap[p] ? T->occ_cap[p] * 2 : 4;
        int32_t *no = realloc(T->occ[p], (size_t)nc * sizeof *no);
        if (!no) return -1;
        T->occ[p] = no;
        T->occ_cap[p] = nc;
    }
    T->occ[p][T->occ_n[p]++] = w;
    return 0;
}

/* Add delta to pair (a, b) for word w (delta > 0 records w in the pair's word list). */
static void pair_add(trainer *T, int32_t a, int32_t b, int64_t delta, int32_t w) {
    int32_t p = pair_get(T, a, b, delta > 0);
    if (p < 0) {
        if (delta > 0) T->nomem = 1;
        return;
    }
    T->pc[p] += delta;
    if (delta > 0) {
        if (occ_add(T, p, w)) T->nomem = 1;
        if (T->ptouch[p] != T->stamp) {
            T->ptouch[p] = T->stamp;
            if (T->n_touched == T->touched_cap) {
                size_t nc = T->touched_cap ? T->touched_cap * 2 : 1024;
                int32_t *nt = realloc(T->touched, nc * sizeof *nt);
                if (!nt) {
                    T->nomem = 1;
                    return;
                }
                T->touched = nt;
                T->touched_cap = nc;
            }
            T->touched[T->n_touched++] = p;
        }
    }
}

/* Heap order: higher count first, then the smaller (left, right) pair. */
static inline int hent_before(const trainer *T, struct hent x, struct hent y) {
    if (x.count != y.count) return x.count > y.count;
    if (T->pa[x.p] != T->pa[y.p]) return T->pa[x.p] < T->pa[y.p];
    return T->pb[x.p] < T->pb[y.p];
}

static int heap_push(trainer *T, int64_t count, int32_t p) {
    if (T->hn == T->hcap) {
        size_t nc = T->hcap ? T->hcap * 2 : 1u << 16;
        struct hent *nh = realloc(T->heap, nc * sizeof *nh);
        if (!nh) return -1;
        T->heap = nh;
        T->hcap = nc;
    }
    struct hent e = {count, p};
    size_t i = T->hn++;
    while (i > 0) {
        size_t par = (i - 1) / 2;
        if (!hent_before(T, e, T->heap[par])) break;
        T->heap[i] = T->heap[par];
        i = par;
    }
    T->heap[i] = e;
    return 0;
}

static struct hent heap_pop(trainer *T) {
    struct hent top = T->heap[0], last = T->heap[--T->hn];
    size_t i = 0, n = T->hn;
    for (;;) {
        size_t l = 2 * i + 1;
        if (l >= n) break;
        size_t c = (l + 1 < n && hent_before(T, T->heap[l + 1], T->heap[l])) ? l + 1 : l;
        if (!hent_before(T, T->heap[c], last)) break;
        T->heap[i] = T->heap[c];
        i = c;
    }
    if (n) T->heap[i] = last;
    return top;
}

/* Add a token (raw bytes) unless present; returns its internal id, -1 when out of memory. */
static int tok_add(trainer *T, const unsigned char *b, size_t n) {
    uint64_t h = fr_hash_bytes(b, n);
    fr_strmap_slot *s = fr_strmap_get(&T->tokmap, b, n, h);
    if (s) return (int)s->val;
    if (T->n_tok == T->tok_cap) {
        int nc = T->tok_cap ? T->tok_cap * 2 : 1024;
        size_t *no = realloc(T->toff, (size_t)nc * sizeof *no);
        if (!no) return -1;
        T->toff = no;
        uint32_t *nl = realloc(T->tlen, (size_t)nc * sizeof *nl);
        if (!nl) return -1;
        T->tlen = nl;
        T->tok_cap = nc;
    }
    if (T->tb_len + n > T->tb_cap) {
        size_t nc = T->tb_cap ? T->tb_cap * 2 : 1u << 16;
        while (nc < T->tb_len + n) nc *= 2;
        unsigned char *nb = realloc(T->tbytes, nc);
        if (!nb) return -1;
        T->tbytes = nb;
        T->tb_cap = nc;
    }
    memcpy(T->tbytes + T->tb_len, b, n);
    T->toff[T->n_tok] = T->tb_len;
    T->tlen[T->n_tok] = (uint32_t)n;
    T->tb_len += n;
    if (!fr_strmap_put(&T->tokmap, b, n, h, T->n_tok, NULL)) return -1;
    return T->n_tok++;
}

static void trainer_free(trainer *T) {
    free(T->sym);
    free(T->woff);
    free(T->wlen);
    free(T->wcnt);
    free(T->wstamp);
    free(T->tbytes);
    free(T->toff);
    free(T->tlen);
    fr_strmap_free(&T->tokmap);
    free(T->pkey);
    free(T->pidx);
    for (size_t i = 0; i < T->n_pairs; i++) free(T->occ[i]);
    free(T->pa);
    free(T->pb);
    free(T->pc);
    free(T->occ);
    free(T->occ_n);
    free(T->occ_cap);
    free(T->ptouch);
    free(T->touched);
    free(T->heap);
}

/* Apply merge (a, b) -> c to word w in place, with the local pair count changes. */
static void merge_word(trainer *T, int32_t w, int32_t a, int32_t b, int32_t c) {
    int32_t *s = T->sym + T->woff[w];
    int32_t L = T->wlen[w], j = 0;
    int64_t cnt = T->wcnt[w];
    for (int32_t i = 0; i < L;) {
        if (i + 1 < L && s[i] == a && s[i + 1] == b) {
            if (j > 0) {
                pair_add(T, s[j - 1], a, -cnt, w);
                pair_add(T, s[j - 1], c, cnt, w);
            }
            if (i + 2 < L) {
                pair_add(T, b, s[i + 2], -cnt, w);
                pair_add(T, c, s[i + 2], cnt, w);
            }
            pair_add(T, a, b, -cnt, w);
            s[j++] = c;
            i += 2;
        } else {
            s[j++] = s[i++];
        }
    }
    T->wlen[w] = j;
}

typedef struct {
    int32_t a, b;
} merge_rec;

static int run_merges(trainer *T, int target_tokens, int min_freq, merge_rec **out_merges, int *out_n,
                      const fr_bpe_train_options *opt) {
    /* initial pair counts */
    for (size_t w = 0; w < T->n_words; w++) {
        const int32_t *s = T->sym + T->woff[w];
        for (int32_t i = 0; i + 1 < T->wlen[w]; i++) {
            int32_t p = pair_get(T, s[i], s[i + 1], 1);
            if (p < 0 || occ_add(T, p, (int32_t)w)) return fr_error(FR_ERR_NOMEM, "out of memory counting pairs");
            T->pc[p] += T->wcnt[w];
        }
    }
    for (size_t p = 0; p < T->n_pairs; p++)
        if (T->pc[p] > 0 && heap_push(T, T->pc[p], (int32_t)p)) return fr_error(FR_ERR_NOMEM, "out of memory");
    int cap = target_tokens > T->n_tok ? target_tokens - T->n_tok + 16 : 16, n = 0;
    merge_rec *merges = malloc((size_t)cap * sizeof *merges);
    if (!merges) return fr_error(FR_ERR_NOMEM, "out of memory");
    unsigned char *joined = NULL;
    size_t joined_cap = 0;
    int rc = FR_OK;
    const int start_tokens = T->n_tok;
    while (T->n_tok < target_tokens && T->hn > 0) {
        struct hent top = heap_pop(T);
        int32_t p = top.p;
        if (T->pc[p] != top.count) { /* stale: requeue with the current count */
            if (T->pc[p] > 0 && heap_push(T, T->pc[p], p)) {
                rc = fr_error(FR_ERR_NOMEM, "out of memory");
                break;
            }
            continue;
        }
        if (min_freq > 1 && T->pc[p] < min_freq) break;
        int32_t a = T->pa[p], b = T->pb[p];
        size_t la = T->tlen[a], lb = T->tlen[b];
        if (la + lb > joined_cap) {
            joined_cap = 2 * (la + lb);
            unsigned char *nj = realloc(joined, joined_cap);
            if (!nj) {
                rc = fr_error(FR_ERR_NOMEM, "out of memory");
                break;
            }
            joined = nj;
        }
        memcpy(joined, T->tbytes + T->toff[a], la);
        memcpy(joined + la, T->tbytes + T->toff[b], lb);
        int c = tok_add(T, joined, la + lb);
        if (c < 0) {
            rc = fr_error(FR_ERR_NOMEM, "out of memory");
            break;
        }
        if (n == cap) {
            cap *= 2;
            merge_rec *nm = realloc(merges, (size_t)cap * sizeof *nm);
            if (!nm) {
                rc = fr_error(FR_ERR_NOMEM, "out of memory");
                break;
            }
            merges = nm;
        }
        merges[n++] = (merge_rec){a, b};
        T->stamp++;
        T->n_touched = 0;
        int32_t *list = T->occ[p], nl = T->occ_n[p];
        T->occ[p] = NULL;
        T->occ_n[p] = T->occ_cap[p] = 0;
        for (int32_t k = 0; k < nl; k++) {
            int32_t w = list[k];
            if (T->wstamp[w] == T->stamp) continue;
            T->wstamp[w] = T->stamp;
            merge_word(T, w, a, b, c);
        }
        free(list);
        for (size_t k = 0; k < T->n_touched; k++) {
            int32_t q = T->touched[k];
            if (T->pc[q] > 0 && heap_push(T, T->pc[q], q)) T->nomem = 1;
        }
        if (T->nomem) {
            rc = fr_error(FR_ERR_NOMEM, "out of memory while merging");
            break;
        }
        if ((n & 255) == 0) {
            double frac = 0.5 + 0.5 * (double)(T->n_tok - start_tokens) / (double)(target_tokens - start_tokens);
            if ((rc = report(opt, frac, "merge")) != FR_OK) break;
        }
    }
    free(joined);
    if (rc != FR_OK) {
        free(merges);
        return rc;
    }
    *out_merges = merges;
    *out_n = n;
    return report(opt, 1.0, "merge");
}

/* ------------------------------------------------------------------ output */

static cJSON *bytelevel_string(const unsigned char *b, size_t n) {
    char stackbuf[512];
    char *s = 2 * n + 1 <= sizeof stackbuf ? stackbuf : malloc(2 * n + 1);
    if (!s) return NULL;
    fr_bytelevel_encode(b, n, s);
    cJSON *j = cJSON_CreateString(s);
    if (s != stackbuf) free(s);
    return j;
}

static cJSON *split_step(const char *pattern) {
    cJSON *o = cJSON_CreateObject(), *pat = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "type", "Split");
    cJSON_AddStringToObject(pat, "Regex", pattern);
    cJSON_AddItemToObject(o, "pattern", pat);
    cJSON_AddStringToObject(o, "behavior", "Isolated");
    cJSON_AddBoolToObject(o, "invert", 0);
    return o;
}

static cJSON *bytelevel_node(int add_prefix_space, int trim_offsets, int use_regex) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "type", "ByteLevel");
    cJSON_AddBoolToObject(o, "add_prefix_space", add_prefix_space);
    cJSON_AddBoolToObject(o, "trim_offsets", trim_offsets);
    cJSON_AddBoolToObject(o, "use_regex", use_regex);
    return o;
}

static int build_json(const trainer *T, const merge_rec *merges, int n_merges, const char *const *spec, int n_spec,
                      cJSON **out_root) {
    cJSON *root = cJSON_CreateObject();
    if (!root) return fr_error(FR_ERR_NOMEM, "out of memory");
    cJSON_AddStringToObject(root, "version", "1.0");
    cJSON_AddNullToObject(root, "truncation");
    cJSON_AddNullToObject(root, "padding");
    cJSON *added = cJSON_AddArrayToObject(root, "added_tokens");
    for (int i = 0; i < n_spec; i++) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "id", i);
        cJSON_AddStringToObject(o, "content", spec[i]);
        cJSON_AddBoolToObject(o, "single_word", 0);
        cJSON_AddBoolToObject(o, "lstrip", 0);
        cJSON_AddBoolToObject(o, "rstrip", 0);
        cJSON_AddBoolToObject(o, "normalized", 0);
        cJSON_AddBoolToObject(o, "special", 1);
        cJSON_AddItemToArray(added, o);
    }
    cJSON_AddNullToObject(root, "normalizer");
    cJSON *pre = cJSON_CreateObject();
    cJSON_AddStringToObject(pre, "type", "Sequence");
    cJSON *steps = cJSON_AddArrayToObject(pre, "pretokenizers");
    cJSON_AddItemToArray(steps, split_step(FR_PAT_DSV3_DIGITS));
    cJSON_AddItemToArray(steps, split_step(FR_PAT_DSV3_CJK));
    cJSON_AddItemToArray(steps, split_step(FR_PAT_DSV3_MAIN));
    cJSON_AddItemToArray(steps, bytelevel_node(0, 1, 0));
    cJSON_AddItemToObject(root, "pre_tokenizer", pre);
    cJSON_AddNullToObject(root, "post_processor");
    cJSON_AddItemToObject(root, "decoder", bytelevel_node(1, 1, 1));
    cJSON *model = cJSON_AddObjectToObject(root, "model");
    cJSON_AddStringToObject(model, "type", "BPE");
    cJSON_AddNullToObject(model, "dropout");
    cJSON_AddNullToObject(model, "unk_token");
    cJSON_AddNullToObject(model, "continuing_subword_prefix");
    cJSON_AddNullToObject(model, "end_of_word_suffix");
    cJSON_AddBoolToObject(model, "fuse_unk", 0);
    cJSON_AddBoolToObject(model, "byte_fallback", 0);
    cJSON_AddBoolToObject(model, "ignore_merges", 0);
    cJSON *vocab = cJSON_AddObjectToObject(model, "vocab");
    cJSON *mlist = cJSON_AddArrayToObject(model, "merges");
    if (!added || !steps || !vocab || !mlist) {
        cJSON_Delete(root);
        return fr_error(FR_ERR_NOMEM, "out of memory");
    }
    for (int i = 0; i < n_spec; i++) cJSON_AddNumberToObject(vocab, spec[i], i);
    cJSON **strs = malloc((size_t)T->n_tok * sizeof *strs);
    if (!strs) {
        cJSON_Delete(root);
        return fr_error(FR_ERR_NOMEM, "out of memory");
    }
    int ok = 1;
    for (int i = 0; i < T->n_tok; i++) {
        strs[i] = bytelevel_string(T->tbytes + T->toff[i], T->tlen[i]);
        if (!strs[i]) ok = 0;
        else cJSON_AddNumberToObject(vocab, strs[i]->valuestring, n_spec + i);
    }
    for (int m = 0; m < n_merges && ok; m++) {
        cJSON *pair = cJSON_CreateArray();
        cJSON_AddItemToArray(pair, cJSON_CreateString(strs[merges[m].a]->valuestring));
        cJSON_AddItemToArray(pair, cJSON_CreateString(strs[merges[m].b]->valuestring));
        cJSON_AddItemToArray(mlist, pair);
    }
    for (int i = 0; i < T->n_tok; i++) cJSON_Delete(strs[i]);
    free(strs);
    if (!ok) {
        cJSON_Delete(root);
        return fr_error(FR_ERR_NOMEM, "out of memory");
    }
    /* a special token spelled like a byte-level token (e.g. "!") would take its slot */
    if (cJSON_GetArraySize(vocab) != n_spec + T->n_tok) {
        cJSON_Delete(root);
        return fr_error(FR_ERR_ARG, "fr_tokenizer_train: a special token is spelled like a vocabulary token");
    }
    *out_root = root;
    return FR_OK;
}

/* ------------------------------------------------------------------ entry point */

int fr_tokenizer_train(fr_tokenizer **out, const char *const *files, int n_files, const fr_bpe_train_options *opt) {
    fr_clear_error();
    if (!out) return fr_error(FR_ERR_ARG, "fr_tokenizer_train: NULL output pointer");
    *out = NULL;
    if (!opt) return fr_error(FR_ERR_ARG, "fr_tokenizer_train: NULL options");
    if (!files || n_files <= 0) return fr_error(FR_ERR_ARG, "fr_tokenizer_train: no training files");
    const char *const *spec = opt->special_tokens ? opt->special_tokens : k_default_specials;
    int n_spec = opt->special_tokens ? opt->n_special : 5;
    if (n_spec < 0 || n_spec > 100000) return fr_error(FR_ERR_ARG, "fr_tokenizer_train: n_special %d is invalid", n_spec);
    if (opt->vocab_size < n_spec + 256)
        return fr_error(FR_ERR_ARG, "fr_tokenizer_train: vocab_size %d is below %d (specials + 256 byte tokens)",
                        opt->vocab_size, n_spec + 256);
    for (int i = 0; i < n_spec; i++) {
        if (!spec[i] || !spec[i][0]) return fr_error(FR_ERR_ARG, "fr_tokenizer_train: special token %d is empty", i);
        for (int k = 0; k < i; k++)
            if (strcmp(spec[i], spec[k]) == 0)
                return fr_error(FR_ERR_ARG, "fr_tokenizer_train: special token '%s' is listed twice", spec[i]);
    }
    /* bos/eos/pad: given ones must be specials; NULL picks DeepSeek's name when it is among them */
    const char *given[3] = {opt->bos_token, opt->eos_token, opt->pad_token};
    const char *names[3] = {"bos_token", "eos_token", "pad_token"};
    const char *chosen[3] = {NULL, NULL, NULL};
    for (int r = 0; r < 3; r++) {
        const char *want = given[r] ? given[r] : k_default_specials[r];
        for (int i = 0; i < n_spec; i++)
            if (strcmp(spec[i], want) == 0) chosen[r] = spec[i];
        if (given[r] && !chosen[r])
            return fr_error(FR_ERR_ARG, "fr_tokenizer_train: %s '%s' is not among the special tokens", names[r], given[r]);
    }
    int nt = opt->num_threads > 0 ? opt->num_threads : omp_get_max_threads();
    if (nt < 1) nt = 1;

    fr_pretok pt;
    FR_CHECK(fr_pretok_init_dsv3(&pt));
    size_t *spec_len = malloc(((size_t)n_spec + 1) * sizeof *spec_len);
    count_ctx *ctx = calloc((size_t)nt, sizeof *ctx);
    trainer T;
    memset(&T, 0, sizeof T);
    merge_rec *merges = NULL;
    int n_merges = 0, rc = FR_OK;
    cJSON *root = NULL, *cfg = NULL;
    if (!spec_len || !ctx) {
        rc = fr_error(FR_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (int i = 0; i < n_spec; i++) spec_len[i] = strlen(spec[i]);
    spec_set sp = {spec, spec_len, n_spec};
    for (int i = 0; i < nt; i++) {
        if (fr_strmap_init(&ctx[i].map, 1u << 14) || fr_pretok_scratch_init(&ctx[i].sc, &pt)) {
            rc = fr_error(FR_ERR_NOMEM, "out of memory");
            goto done;
        }
    }
    if ((rc = report(opt, 0.0, "count words")) != FR_OK) goto done;
    if ((rc = count_files(files, n_files, &pt, &sp, nt, ctx, opt)) != FR_OK) goto done;

    /* sum the per-thread counts */
    for (int i = 1; i < nt; i++) {
        for (size_t k = 0; k < ctx[i].map.cap; k++) {
            fr_strmap_slot *s = &ctx[i].map.slots[k];
            if (!s->key) continue;
            fr_strmap_slot *d = fr_strmap_put(&ctx[0].map, s->key, s->len, s->hash, 0, NULL);
            if (!d) {
                rc = fr_error(FR_ERR_NOMEM, "out of memory");
                goto done;
            }
            d->val += s->val;
        }
        fr_strmap_free(&ctx[i].map);
    }
    /* The word order (hash-slot order, which depends on how the threads' maps were summed)
     * does not affect the merges: they depend only on counts and the id tie-break. */
    fr_strmap *wm = &ctx[0].map;
    size_t n_words = wm->count, n_sym = 0;
    for (size_t k = 0; k < wm->cap; k++)
        if (wm->slots[k].key) n_sym += wm->slots[k].len;
    T.n_words = n_words;
    T.sym = malloc((n_sym + 1) * sizeof *T.sym);
    T.woff = malloc((n_words + 1) * sizeof *T.woff);
    T.wlen = malloc((n_words + 1) * sizeof *T.wlen);
    T.wcnt = malloc((n_words + 1) * sizeof *T.wcnt);
    T.wstamp = calloc(n_words + 1, sizeof *T.wstamp);
    if (!T.sym || !T.woff || !T.wlen || !T.wcnt || !T.wstamp || fr_strmap_init(&T.tokmap, 1024) ||
        pair_grow_table(&T) || grow_arrays(&T)) {
        rc = fr_error(FR_ERR_NOMEM, "out of memory");
        goto done;
    }
    size_t w = 0, off = 0;
    for (size_t k = 0; k < wm->cap; k++) {
        const fr_strmap_slot *s = &wm->slots[k];
        if (!s->key) continue;
        T.woff[w] = off;
        T.wlen[w] = (int32_t)s->len;
        T.wcnt[w] = s->val;
        for (uint32_t i = 0; i < s->len; i++) T.sym[off + i] = s->key[i];
        off += s->len;
        w++;
    }
    for (int b = 0; b < 256; b++) {
        unsigned char byte = (unsigned char)b;
        if (tok_add(&T, &byte, 1) != b) {
            rc = fr_error(FR_ERR_NOMEM, "out of memory");
            goto done;
        }
    }
    if ((rc = run_merges(&T, opt->vocab_size - n_spec, opt->min_frequency, &merges, &n_merges, opt)) != FR_OK) goto done;
    if ((rc = build_json(&T, merges, n_merges, spec, n_spec, &root)) != FR_OK) goto done;

    cfg = cJSON_CreateObject();
    if (!cfg) {
        rc = fr_error(FR_ERR_NOMEM, "out of memory");
        goto done;
    }
    cJSON_AddBoolToObject(cfg, "add_bos_token", 0);
    cJSON_AddBoolToObject(cfg, "add_eos_token", 0);
    for (int r = 0; r < 3; r++) {
        if (chosen[r]) cJSON_AddStringToObject(cfg, names[r], chosen[r]);
        else cJSON_AddNullToObject(cfg, names[r]);
    }
    cJSON_AddBoolToObject(cfg, "clean_up_tokenization_spaces", 0);
    cJSON_AddNumberToObject(cfg, "model_max_length", 131072);
    cJSON_AddStringToObject(cfg, "tokenizer_class", "PreTrainedTokenizerFast");
    cJSON_AddStringToObject(cfg, "chat_template", fr_default_chat_template);
    rc = fr_tokenizer_from_json(out, root, cfg, "trained tokenizer");

done:
    cJSON_Delete(root);
    cJSON_Delete(cfg);
    free(merges);
    trainer_free(&T);
    if (ctx)
        for (int i = 0; i < nt; i++) {
            fr_strmap_free(&ctx[i].map);
            fr_pretok_scratch_free(&ctx[i].sc);
        }
    free(ctx);
    free(spec_len);
    fr_pretok_free(&pt);
    return rc;
}
