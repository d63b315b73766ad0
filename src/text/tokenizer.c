/* tokenizer.c — byte-level BPE tokenizer compatible with Hugging Face `tokenizers`:
 * tokenizer.json / tokenizer_config.json load and save, encode (added tokens, the PCRE2 split
 * pipeline of pretok.c, BPE merges with the same priority-queue order as tokenizers), decode.
 * See docs/tokenizer.md. */
#define _GNU_SOURCE
#include "text/tokenizer_internal.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ------------------------------------------------------------------ tokenizer */

enum { TF_PRESENT = 1, TF_SPECIAL = 2, TF_ADDED = 4, TF_VOCAB = 8 };

typedef struct {
    char *s;
    size_t len;
    int id;
    int special;
} added_token;

struct fr_tokenizer {
    uint64_t uid;
    int n_ids;
    char **tok_str;            /* token string as stored in tokenizer.json (NULL: hole) */
    unsigned char **tok_bytes; /* bytes the token decodes to */
    uint32_t *tok_bytes_len;
    unsigned char *flags;
    fr_strmap str2id;  /* vocab tokens and added tokens (added wins) */
    fr_strmap vocab;   /* model vocab only (merge lookups) */
    fr_strmap raw2id;  /* raw bytes -> model id, for ignore_merges */
    int ignore_merges;
    int byte_id[256];
    int unk_id;
    /* merges: open addressing on (a << 32 | b) */
    uint64_t *mkey;
    uint32_t *mrank;
    int32_t *mnew;
    size_t mcap;
    int n_merges;
    int32_t *merge_a, *merge_b; /* by rank, for save */
    int n_added;
    added_token *added; /* longest first */
    unsigned char added_first[256]; /* bit 1: a special token starts with this byte; bit 2: a non-special */
    fr_pretok pt;
    int bos, eos, pad;
    char *chat_template;
    cJSON *skeleton; /* tokenizer.json without vocab, merges, added_tokens */
    cJSON *config;   /* tokenizer_config.json as loaded/built, or NULL */
};

static _Atomic uint64_t g_tok_uid = 1;

#define MKEY_EMPTY UINT64_MAX

static inline uint64_t mix64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return x;
}

static inline int merge_find(const fr_tokenizer *t, int a, int b, uint32_t *rank, int32_t *nid) {
    if (!t->mcap) return 0;
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    size_t mask = t->mcap - 1;
    for (size_t i = mix64(key) & mask;; i = (i + 1) & mask) {
        if (t->mkey[i] == key) {
            *rank = t->mrank[i];
            *nid = t->mnew[i];
            return 1;
        }
        if (t->mkey[i] == MKEY_EMPTY) return 0;
    }
}

static void merge_insert(fr_tokenizer *t, int a, int b, uint32_t rank, int32_t nid) {
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    size_t mask = t->mcap - 1;
    for (size_t i = mix64(key) & mask;; i = (i + 1) & mask) {
        if (t->mkey[i] == key || t->mkey[i] == MKEY_EMPTY) { /* a repeated pair: the later rank wins, as in HF */
            t->mkey[i] = key;
            t->mrank[i] = rank;
            t->mnew[i] = nid;
            return;
        }
    }
}

void fr_tokenizer_free(fr_tokenizer *tok);

/* ---- per-thread word cache: the words of one tokenizer, direct-mapped, no locks */

#define CACHE_SLOTS (1u << 14)
#define CACHE_MAX_WORD 64

typedef struct {
    uint64_t h;
    uint32_t klen, nids;
    unsigned char *blob; /* key bytes, then nids int32 ids */
} cache_ent;

typedef struct {
    uint64_t uid;
    cache_ent *ents;
} word_cache;

static pthread_key_t g_cache_key;
static pthread_once_t g_cache_once = PTHREAD_ONCE_INIT;
static int g_cache_ok;

static void cache_destroy(void *p) {
    word_cache *c = p;
    if (!c) return;
    for (size_t i = 0; i < CACHE_SLOTS; i++) free(c->ents[i].blob);
    free(c->ents);
    free(c);
}

static void cache_key_init(void) { g_cache_ok = pthread_key_create(&g_cache_key, cache_destroy) == 0; }

static word_cache *cache_get(const fr_tokenizer *t) {
    pthread_once(&g_cache_once, cache_key_init);
    if (!g_cache_ok) return NULL;
    word_cache *c = pthread_getspecific(g_cache_key);
    if (!c) {
        c = calloc(1, sizeof *c);
        if (!c) return NULL;
        c->ents = calloc(CACHE_SLOTS, sizeof *c->ents);
        if (!c->ents) {
            free(c);
            return NULL;
        }
        if (pthread_setspecific(g_cache_key, c) != 0) {
            cache_destroy(c);
            return NULL;
        }
    }
    if (c->uid != t->uid) { /* another tokenizer used this thread's cache: start over */
        for (size_t i = 0; i < CACHE_SLOTS; i++) {
            free(c->ents[i].blob);
            c->ents[i].blob = NULL;
        }
        c->uid = t->uid;
    }
    return c;
}

/* ---- encode */

typedef struct {
    int *ids;
    size_t n, cap;
} id_vec;

static int vec_reserve(id_vec *v, size_t extra) {
    if (v->n + extra <= v->cap) return 0;
    size_t nc = v->cap ? v->cap : 64;
    while (nc < v->n + extra) nc *= 2;
    int *ni = realloc(v->ids, nc * sizeof *ni);
    if (!ni) return -1;
    v->ids = ni;
    v->cap = nc;
    return 0;
}

typedef struct {
    uint32_t rank, pos;
    int32_t nid;
} heap_ent;

static inline int heap_less(heap_ent x, heap_ent y) { return x.rank != y.rank ? x.rank < y.rank : x.pos < y.pos; }

static void heap_push(heap_ent *h, size_t *n, heap_ent e) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!heap_less(e, h[p])) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = e;
}

static heap_ent heap_pop(heap_ent *h, size_t *n) {
    heap_ent top = h[0], last = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1;
        if (l >= *n) break;
        size_t c = (l + 1 < *n && heap_less(h[l + 1], h[l])) ? l + 1 : l;
        if (!heap_less(h[c], last)) break;
        h[i] = h[c];
        i = c;
    }
    if (*n) h[i] = last;
    return top;
}

/* BPE of one piece, in the order tokenizers' Word::merge_all uses: a min-heap on
 * (rank, position); an entry is stale when the pair at its position no longer maps to the
 * same new id. */
static int bpe_piece(const fr_tokenizer *t, const unsigned char *s, size_t n, id_vec *out) {
    if (t->ignore_merges) {
        fr_strmap_slot *sl = fr_strmap_get(&t->raw2id, s, n, fr_hash_bytes(s, n));
        if (sl) {
            if (vec_reserve(out, 1)) return FR_ERR_NOMEM;
            out->ids[out->n++] = (int)sl->val;
            return FR_OK;
        }
    }
    enum { STACK_N = 128 };
    int32_t st_id[STACK_N], st_prev[STACK_N], st_next[STACK_N];
    uint8_t st_alive[STACK_N];
    heap_ent st_heap[STACK_N * 2];
    int32_t *id = st_id, *prev = st_prev, *next = st_next;
    uint8_t *alive = st_alive;
    heap_ent *heap = st_heap;
    void *blk = NULL;
    size_t heap_cap = STACK_N * 2;
    if (n > STACK_N) {
        heap_cap = 2 * n + 16;
        blk = malloc(n * (3 * sizeof(int32_t) + 1) + heap_cap * sizeof(heap_ent));
        if (!blk) return FR_ERR_NOMEM;
        heap = blk;
        id = (int32_t *)(heap + heap_cap);
        prev = id + n;
        next = prev + n;
        alive = (uint8_t *)(next + n);
    }
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        int b = t->byte_id[s[i]];
        if (b < 0) b = t->unk_id;
        if (b < 0) continue; /* no token for this byte and no unk token: dropped, as in tokenizers */
        id[m] = b;
        m++;
    }
    for (size_t i = 0; i < m; i++) {
        prev[i] = (int32_t)i - 1;
        next[i] = i + 1 < m ? (int32_t)i + 1 : -1;
        alive[i] = 1;
    }
    size_t hn = 0;
    uint32_t rank;
    int32_t nid;
    for (size_t i = 0; i + 1 < m; i++)
        if (merge_find(t, id[i], id[i + 1], &rank, &nid)) heap_push(heap, &hn, (heap_ent){rank, (uint32_t)i, nid});
    while (hn > 0) {
        heap_ent top = heap_pop(heap, &hn);
        uint32_t p = top.pos;
        if (!alive[p] || next[p] < 0) continue;
        int32_t q = next[p];
        if (!merge_find(t, id[p], id[q], &rank, &nid) || nid != top.nid) continue;
        id[p] = top.nid;
        alive[q] = 0;
        next[p] = next[q];
        if (next[q] >= 0) prev[next[q]] = (int32_t)p;
        /* every merge pops one entry and pushes at most two, so the heap holds < 2m entries */
        if (prev[p] >= 0 && merge_find(t, id[prev[p]], id[p], &rank, &nid))
            heap_push(heap, &hn, (heap_ent){rank, (uint32_t)prev[p], nid});
        if (next[p] >= 0 && merge_find(t, id[p], id[next[p]], &rank, &nid))
            heap_push(heap, &hn, (heap_ent){rank, p, nid});
    }
    if (vec_reserve(out, m)) {
        free(blk);
        return FR_ERR_NOMEM;
    }
    for (int32_t i = m ? 0 : -1; i >= 0; i = next[i]) out->ids[out->n++] = id[i];
    free(blk);
    return FR_OK;
}

typedef struct {
    const fr_tokenizer *t;
    id_vec *out;
    word_cache *cache;
} enc_ctx;

static int enc_piece(void *user, const unsigned char *s, size_t n) {
    enc_ctx *c = user;
    cache_ent *e = NULL;
    uint64_t h = 0;
    if (c->cache && n <= CACHE_MAX_WORD) {
        h = fr_hash_bytes(s, n);
        e = &c->cache->ents[h & (CACHE_SLOTS - 1)];
        if (e->blob && e->h == h && e->klen == n && memcmp(e->blob, s, n) == 0) {
            if (vec_reserve(c->out, e->nids)) return FR_ERR_NOMEM;
            memcpy(c->out->ids + c->out->n, e->blob + n, e->nids * sizeof(int));
            c->out->n += e->nids;
            return 0;
        }
    }
    size_t start = c->out->n;
    int rc = bpe_piece(c->t, s, n, c->out);
    if (rc) return fr_error(rc, "out of memory while encoding");
    if (e) {
        size_t nids = c->out->n - start;
        unsigned char *blob = realloc(e->blob, n + nids * sizeof(int));
        if (blob) {
            memcpy(blob, s, n);
            memcpy(blob + n, c->out->ids + start, nids * sizeof(int));
            e->blob = blob;
            e->h = h;
            e->klen = (uint32_t)n;
            e->nids = (uint32_t)nids;
        }
    }
    return 0;
}

int fr_tokenizer_encode(const fr_tokenizer *tok, const char *text, size_t len, int parse_special, int **ids,
                        size_t *n_ids) {
    if (!ids || !n_ids) return fr_error(FR_ERR_ARG, "fr_tokenizer_encode: NULL output pointer");
    *ids = NULL;
    *n_ids = 0;
    if (!tok) return fr_error(FR_ERR_ARG, "fr_tokenizer_encode: NULL tokenizer");
    if (!text && len) return fr_error(FR_ERR_ARG, "fr_tokenizer_encode: NULL text");
    id_vec v = {0};
    if (vec_reserve(&v, len / 3 + 16)) return fr_error(FR_ERR_NOMEM, "out of memory while encoding");
    fr_pretok_scratch sc;
    int rc = fr_pretok_scratch_init(&sc, &tok->pt);
    if (rc) {
        free(v.ids);
        return rc;
    }
    enc_ctx ctx = {tok, &v, cache_get(tok)};
    const unsigned char *s = (const unsigned char *)text;
    unsigned char mask = (unsigned char)(parse_special ? 3 : 2);
    size_t seg = 0;
    if (tok->n_added) {
        for (size_t i = 0; i < len;) {
            if (!(tok->added_first[s[i]] & mask)) {
                i++;
                continue;
            }
            const added_token *hit = NULL;
            for (int k = 0; k < tok->n_added; k++) { /* longest first: the first hit is the longest */
                const added_token *a = &tok->added[k];
                if ((a->special ? !parse_special : 0) || a->len > len - i) continue;
                if (memcmp(a->s, s + i, a->len) == 0) {
                    hit = a;
                    break;
                }
            }
            if (!hit) {
                i++;
                continue;
            }
            if (i > seg && (rc = fr_pretok_run(&tok->pt, &sc, s + seg, i - seg, enc_piece, &ctx))) goto fail;
            if (vec_reserve(&v, 1)) {
                rc = fr_error(FR_ERR_NOMEM, "out of memory while encoding");
                goto fail;
            }
            v.ids[v.n++] = hit->id;
            i += hit->len;
            seg = i;
        }
    }
    if (len > seg && (rc = fr_pretok_run(&tok->pt, &sc, s + seg, len - seg, enc_piece, &ctx))) goto fail;
    fr_pretok_scratch_free(&sc);
    *ids = v.ids;
    *n_ids = v.n;
    return FR_OK;
fail:
    fr_pretok_scratch_free(&sc);
    free(v.ids);
    return rc;
}

int fr_tokenizer_decode(const fr_tokenizer *tok, const int *ids, size_t n_ids, int skip_special, char **text,
                        size_t *len) {
    if (!text) return fr_error(FR_ERR_ARG, "fr_tokenizer_decode: NULL output pointer");
    *text = NULL;
    if (len) *len = 0;
    if (!tok || (!ids && n_ids)) return fr_error(FR_ERR_ARG, "fr_tokenizer_decode: NULL argument");
    size_t total = 0;
    for (size_t i = 0; i < n_ids; i++) {
        int id = ids[i];
        if (id < 0 || id >= tok->n_ids || !(tok->flags[id] & TF_PRESENT))
            return fr_error(FR_ERR_ARG, "fr_tokenizer_decode: id %d at position %zu is not in the vocabulary", id, i);
        if (skip_special && (tok->flags[id] & TF_SPECIAL)) continue;
        total += tok->tok_bytes_len[id];
    }
    char *out = malloc(total + 1);
    if (!out) return fr_error(FR_ERR_NOMEM, "out of memory decoding %zu ids", n_ids);
    size_t o = 0;
    for (size_t i = 0; i < n_ids; i++) {
        int id = ids[i];
        if (skip_special && (tok->flags[id] & TF_SPECIAL)) continue;
        memcpy(out + o, tok->tok_bytes[id], tok->tok_bytes_len[id]);
        o += tok->tok_bytes_len[id];
    }
    out[o] = 0;
    *text = out;
    if (len) *len = o;
    return FR_OK;
}

int fr_tokenizer_vocab_size(const fr_tokenizer *tok) { return tok ? tok->n_ids : 0; }

const char *fr_tokenizer_id_to_token(const fr_tokenizer *tok, int id) {
    if (!tok || id < 0 || id >= tok->n_ids) return NULL;
    return tok->tok_str[id];
}

int fr_tokenizer_token_to_id(const fr_tokenizer *tok, const char *token) {
    if (!tok || !token) return -1;
    size_t n = strlen(token);
    fr_strmap_slot *s = fr_strmap_get(&tok->str2id, token, n, fr_hash_bytes(token, n));
    return s ? (int)s->val : -1;
}

int fr_tokenizer_special_id(const fr_tokenizer *tok, fr_special_token which) {
    if (!tok) return -1;
    switch (which) {
    case FR_TOKEN_BOS: return tok->bos;
    case FR_TOKEN_EOS: return tok->eos;
    case FR_TOKEN_PAD: return tok->pad;
    }
    return -1;
}

int fr_tokenizer_is_special(const fr_tokenizer *tok, int id) {
    return tok && id >= 0 && id < tok->n_ids && (tok->flags[id] & TF_SPECIAL) ? 1 : 0;
}

const char *fr_tokenizer_chat_template(const fr_tokenizer *tok) {
    return tok && tok->chat_template ? tok->chat_template : "";
}

void fr_tokenizer_free(fr_tokenizer *tok) {
    if (!tok) return;
    /* drop this thread's cache if it belongs to this tokenizer (other threads' caches are
     * recognised as stale by the uid and freed when their threads exit) */
    if (g_cache_ok) {
        word_cache *c = pthread_getspecific(g_cache_key);
        if (c && c->uid == tok->uid) {
            cache_destroy(c);
            pthread_setspecific(g_cache_key, NULL);
        }
    }
    for (int i = 0; i < tok->n_ids; i++) {
        free(tok->tok_str ? tok->tok_str[i] : NULL);
        free(tok->tok_bytes ? tok->tok_bytes[i] : NULL);
    }
    free(tok->tok_str);
    free(tok->tok_bytes);
    free(tok->tok_bytes_len);
    free(tok->flags);
    fr_strmap_free(&tok->str2id);
    fr_strmap_free(&tok->vocab);
    fr_strmap_free(&tok->raw2id);
    free(tok->mkey);
    free(tok->mrank);
    free(tok->mnew);
    free(tok->merge_a);
    free(tok->merge_b);
    for (int i = 0; i < tok->n_added; i++) free(tok->added[i].s);
    free(tok->added);
    fr_pretok_free(&tok->pt);
    free(tok->chat_template);
    cJSON_Delete(tok->skeleton);
    cJSON_Delete(tok->config);
    free(tok);
}

/* ------------------------------------------------------------------ loading */

static const cJSON *obj_get(const cJSON *o, const char *key) {
    return cJSON_IsObject(o) ? cJSON_GetObjectItemCaseSensitive(o, key) : NULL;
}

static int is_null_or_absent(const cJSON *v) { return !v || cJSON_IsNull(v); }

static int json_bool(const cJSON *o, const char *key, int dflt) {
    const cJSON *v = obj_get(o, key);
    if (cJSON_IsBool(v)) return cJSON_IsTrue(v);
    return dflt;
}

static int json_int(const cJSON *v, long lo, long hi, long *out) {
    if (!cJSON_IsNumber(v)) return 0;
    double d = v->valuedouble;
    if (!(d >= (double)lo && d <= (double)hi) || d != (double)(long)d) return 0;
    *out = (long)d;
    return 1;
}

/* Walk a pre_tokenizer node into pt; *seen_bl set once a ByteLevel step is met. */
static int parse_pretok(const cJSON *node, fr_pretok *pt, int *seen_bl, const char *origin, const char *path) {
    const cJSON *type = obj_get(node, "type");
    if (!cJSON_IsString(type))
        return fr_error(FR_ERR_FORMAT, "%s: %s has no \"type\" string", origin, path);
    const char *ty = type->valuestring;
    if (*seen_bl)
        return fr_error(FR_ERR_FORMAT, "%s: %s (type %s) after the ByteLevel step is not supported", origin, path, ty);
    if (strcmp(ty, "Sequence") == 0) {
        const cJSON *list = obj_get(node, "pretokenizers");
        if (!cJSON_IsArray(list))
            return fr_error(FR_ERR_FORMAT, "%s: %s.pretokenizers is not an array", origin, path);
        int i = 0;
        const cJSON *it;
        cJSON_ArrayForEach(it, list) {
            char sub[256];
            snprintf(sub, sizeof sub, "%s.pretokenizers[%d]", path, i++);
            FR_CHECK(parse_pretok(it, pt, seen_bl, origin, sub));
        }
        return FR_OK;
    }
    if (strcmp(ty, "Split") == 0) {
        const cJSON *pat = obj_get(node, "pattern"), *beh = obj_get(node, "behavior");
        if (!cJSON_IsString(beh) || strcmp(beh->valuestring, "Isolated") != 0)
            return fr_error(FR_ERR_FORMAT, "%s: %s.behavior \"%s\" is not supported (only \"Isolated\")", origin, path,
                            cJSON_IsString(beh) ? beh->valuestring : "?");
        if (json_bool(node, "invert", 0))
            return fr_error(FR_ERR_FORMAT, "%s: %s.invert = true is not supported", origin, path);
        const cJSON *re = obj_get(pat, "Regex"), *lit = obj_get(pat, "String");
        char what[300];
        snprintf(what, sizeof what, "%s: %s.pattern", origin, path);
        if (cJSON_IsString(re)) return fr_pretok_add(pt, re->valuestring, strlen(re->valuestring), 0, what);
        if (cJSON_IsString(lit)) return fr_pretok_add(pt, lit->valuestring, strlen(lit->valuestring), 1, what);
        return fr_error(FR_ERR_FORMAT, "%s: %s.pattern has neither a \"Regex\" nor a \"String\"", origin, path);
    }
    if (strcmp(ty, "ByteLevel") == 0) {
        *seen_bl = 1;
        /* tokenizers' defaults when the keys are missing: add_prefix_space and use_regex true */
        pt->prefix_space = json_bool(node, "add_prefix_space", 1);
        pt->prefix_step = pt->n_steps;
        if (json_bool(node, "use_regex", 1)) {
            char what[300];
            snprintf(what, sizeof what, "%s: %s (GPT-2 regex)", origin, path);
            return fr_pretok_add(pt, FR_PAT_GPT2, strlen(FR_PAT_GPT2), 0, what);
        }
        return FR_OK;
    }
    return fr_error(FR_ERR_FORMAT, "%s: %s.type \"%s\" is not supported (Sequence, Split, ByteLevel are)", origin,
                    path, ty);
}

static int check_pipeline(const cJSON *root, const char *origin) {
    const cJSON *norm = obj_get(root, "normalizer");
    if (!is_null_or_absent(norm)) {
        const cJSON *ty = obj_get(norm, "type"), *list = obj_get(norm, "normalizers");
        if (!(cJSON_IsString(ty) && strcmp(ty->valuestring, "Sequence") == 0 && cJSON_IsArray(list) &&
              cJSON_GetArraySize(list) == 0))
            return fr_error(FR_ERR_FORMAT, "%s: normalizer (type %s) is not supported (only null or an empty Sequence)",
                            origin, cJSON_IsString(ty) ? ty->valuestring : "?");
    }
    const cJSON *dec = obj_get(root, "decoder"), *dty = obj_get(dec, "type");
    if (!cJSON_IsString(dty) || strcmp(dty->valuestring, "ByteLevel") != 0)
        return fr_error(FR_ERR_FORMAT, "%s: decoder (type %s) is not supported (only ByteLevel)", origin,
                        cJSON_IsString(dty) ? dty->valuestring : "null");
    const cJSON *post = obj_get(root, "post_processor");
    if (!is_null_or_absent(post)) {
        const cJSON *pty = obj_get(post, "type");
        const char *p = cJSON_IsString(pty) ? pty->valuestring : "?";
        if (strcmp(p, "ByteLevel") != 0 && strcmp(p, "TemplateProcessing") != 0 && strcmp(p, "Sequence") != 0)
            return fr_error(FR_ERR_FORMAT, "%s: post_processor type \"%s\" is not supported", origin, p);
    }
    if (!is_null_or_absent(obj_get(root, "truncation")))
        return fr_error(FR_ERR_FORMAT, "%s: truncation is set; only null is supported", origin);
    if (!is_null_or_absent(obj_get(root, "padding")))
        return fr_error(FR_ERR_FORMAT, "%s: padding is set; only null is supported", origin);
    return FR_OK;
}

static int set_token(fr_tokenizer *t, int id, const char *s, unsigned flag, int raw_bytes, const char *origin) {
    if (t->tok_str[id]) {
        if (strcmp(t->tok_str[id], s) != 0)
            return fr_error(FR_ERR_FORMAT, "%s: id %d is given to both '%s' and '%s'", origin, id, t->tok_str[id], s);
        t->flags[id] |= (unsigned char)flag;
        if (raw_bytes) { /* an added token that is also in the vocab decodes to its content */
            size_t n = strlen(s);
            unsigned char *b = realloc(t->tok_bytes[id], n + 1);
            if (!b) return fr_error(FR_ERR_NOMEM, "out of memory");
            memcpy(b, s, n);
            t->tok_bytes[id] = b;
            t->tok_bytes_len[id] = (uint32_t)n;
        }
        return FR_OK;
    }
    size_t n = strlen(s);
    t->tok_str[id] = strdup(s);
    t->tok_bytes[id] = malloc(n + 1);
    if (!t->tok_str[id] || !t->tok_bytes[id]) return fr_error(FR_ERR_NOMEM, "out of memory");
    size_t bl = 0;
    if (raw_bytes || fr_bytelevel_decode(s, n, t->tok_bytes[id], &bl) != 0) {
        memcpy(t->tok_bytes[id], s, n);
        bl = n;
    }
    t->tok_bytes_len[id] = (uint32_t)bl;
    t->flags[id] |= (unsigned char)(flag | TF_PRESENT);
    return FR_OK;
}

static int cmp_added(const void *a, const void *b) {
    const added_token *x = a, *y = b;
    if (x->len != y->len) return x->len > y->len ? -1 : 1;
    return x->id - y->id;
}

/* Resolve a bos/eos/pad entry of tokenizer_config.json (a string or {"content": ...}). */
static int config_token(const fr_tokenizer *t, const cJSON *cfg, const char *key, int *out, const char *origin) {
    *out = -1;
    const cJSON *v = obj_get(cfg, key);
    if (is_null_or_absent(v)) return FR_OK;
    const char *s = NULL;
    if (cJSON_IsString(v)) s = v->valuestring;
    else if (cJSON_IsString(obj_get(v, "content"))) s = obj_get(v, "content")->valuestring;
    if (!s) return fr_error(FR_ERR_FORMAT, "%s: tokenizer_config.json key \"%s\" is neither a string nor {\"content\": ...}", origin, key);
    *out = fr_tokenizer_token_to_id(t, s);
    if (*out < 0) return fr_error(FR_ERR_FORMAT, "%s: tokenizer_config.json %s '%s' is not a token", origin, key, s);
    return FR_OK;
}

static int load_config(fr_tokenizer *t, const cJSON *cfg, const char *origin) {
    t->bos = t->eos = t->pad = -1;
    if (!cfg) return FR_OK;
    if (!cJSON_IsObject(cfg)) return fr_error(FR_ERR_FORMAT, "%s: tokenizer_config.json is not a JSON object", origin);
    FR_CHECK(config_token(t, cfg, "bos_token", &t->bos, origin));
    FR_CHECK(config_token(t, cfg, "eos_token", &t->eos, origin));
    FR_CHECK(config_token(t, cfg, "pad_token", &t->pad, origin));
    const cJSON *ct = obj_get(cfg, "chat_template");
    const char *tmpl = NULL;
    if (cJSON_IsString(ct)) {
        tmpl = ct->valuestring;
    } else if (cJSON_IsArray(ct)) { /* [{"name": ..., "template": ...}]: "default", else the first */
        const cJSON *it;
        cJSON_ArrayForEach(it, ct) {
            const cJSON *name = obj_get(it, "name"), *tt = obj_get(it, "template");
            if (!cJSON_IsString(tt)) continue;
            if (!tmpl || (cJSON_IsString(name) && strcmp(name->valuestring, "default") == 0)) tmpl = tt->valuestring;
        }
    }
    if (tmpl && !(t->chat_template = strdup(tmpl))) return fr_error(FR_ERR_NOMEM, "out of memory");
    t->config = cJSON_Duplicate(cfg, 1);
    if (!t->config) return fr_error(FR_ERR_NOMEM, "out of memory");
    return FR_OK;
}

static int build(fr_tokenizer *t, const cJSON *root, const cJSON *config, const char *origin) {
    if (!cJSON_IsObject(root)) return fr_error(FR_ERR_FORMAT, "%s: the top level is not a JSON object", origin);
    const cJSON *model = obj_get(root, "model");
    if (!cJSON_IsObject(model)) return fr_error(FR_ERR_FORMAT, "%s: no \"model\" object", origin);
    const cJSON *mtype = obj_get(model, "type");
    if (cJSON_IsString(mtype) && strcmp(mtype->valuestring, "BPE") != 0)
        return fr_error(FR_ERR_FORMAT, "%s: model.type \"%s\" is not supported (only BPE)", origin, mtype->valuestring);
    if (!cJSON_IsString(mtype) && !obj_get(model, "merges"))
        return fr_error(FR_ERR_FORMAT, "%s: model.type is missing and the model has no merges (only BPE is supported)", origin);
    const cJSON *drop = obj_get(model, "dropout");
    if (!is_null_or_absent(drop) && !(cJSON_IsNumber(drop) && drop->valuedouble == 0.0))
        return fr_error(FR_ERR_FORMAT, "%s: model.dropout is set; only null is supported", origin);
    const char *nullish[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int i = 0; i < 2; i++) {
        const cJSON *v = obj_get(model, nullish[i]);
        if (!is_null_or_absent(v) && !(cJSON_IsString(v) && v->valuestring[0] == 0))
            return fr_error(FR_ERR_FORMAT, "%s: model.%s is set; only null is supported", origin, nullish[i]);
    }
    if (json_bool(model, "byte_fallback", 0))
        return fr_error(FR_ERR_FORMAT, "%s: model.byte_fallback = true is not supported", origin);
    t->ignore_merges = json_bool(model, "ignore_merges", 0);
    FR_CHECK(check_pipeline(root, origin));

    const cJSON *vocab = obj_get(model, "vocab"), *merges = obj_get(model, "merges");
    const cJSON *added = obj_get(root, "added_tokens");
    if (!cJSON_IsObject(vocab)) return fr_error(FR_ERR_FORMAT, "%s: model.vocab is not an object", origin);
    if (!cJSON_IsArray(merges)) return fr_error(FR_ERR_FORMAT, "%s: model.merges is not an array", origin);
    if (!is_null_or_absent(added) && !cJSON_IsArray(added))
        return fr_error(FR_ERR_FORMAT, "%s: added_tokens is not an array", origin);

    /* ids */
    long max_id = -1, v;
    int n_vocab = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, vocab) {
        if (!json_int(it, 0, INT_MAX - 1, &v))
            return fr_error(FR_ERR_FORMAT, "%s: model.vocab[\"%s\"] is not a valid id", origin, it->string);
        if (v > max_id) max_id = v;
        n_vocab++;
    }
    int n_added = 0;
    if (added) cJSON_ArrayForEach(it, added) {
        long id;
        const cJSON *content = obj_get(it, "content");
        if (!json_int(obj_get(it, "id"), 0, INT_MAX - 1, &id) || !cJSON_IsString(content) || !content->valuestring[0])
            return fr_error(FR_ERR_FORMAT, "%s: added_tokens[%d] needs an integer \"id\" and a non-empty \"content\"",
                            origin, n_added);
        const char *flags[] = {"lstrip", "rstrip", "single_word"};
        for (int k = 0; k < 3; k++)
            if (json_bool(it, flags[k], 0))
                return fr_error(FR_ERR_FORMAT, "%s: added_tokens[%d].%s = true is not supported", origin, n_added, flags[k]);
        if (id > max_id) max_id = id;
        n_added++;
    }
    if (max_id < 0) return fr_error(FR_ERR_FORMAT, "%s: the vocabulary is empty", origin);
    if (max_id > (1L << 26)) return fr_error(FR_ERR_FORMAT, "%s: id %ld is implausibly large", origin, max_id);
    t->n_ids = (int)max_id + 1;
    t->tok_str = calloc((size_t)t->n_ids, sizeof *t->tok_str);
    t->tok_bytes = calloc((size_t)t->n_ids, sizeof *t->tok_bytes);
    t->tok_bytes_len = calloc((size_t)t->n_ids, sizeof *t->tok_bytes_len);
    t->flags = calloc((size_t)t->n_ids, 1);
    if (!t->tok_str || !t->tok_bytes || !t->tok_bytes_len || !t->flags) return fr_error(FR_ERR_NOMEM, "out of memory");
    FR_CHECK(fr_strmap_init(&t->vocab, (size_t)n_vocab));
    FR_CHECK(fr_strmap_init(&t->str2id, (size_t)(n_vocab + n_added)));
    if (t->ignore_merges) FR_CHECK(fr_strmap_init(&t->raw2id, (size_t)n_vocab));
    cJSON_ArrayForEach(it, vocab) {
        int id = (int)it->valuedouble;
        size_t n = strlen(it->string);
        int ins;
        fr_strmap_slot *s = fr_strmap_put(&t->vocab, it->string, n, fr_hash_bytes(it->string, n), id, &ins);
        if (!s) return fr_error(FR_ERR_NOMEM, "out of memory");
        if (!ins) return fr_error(FR_ERR_FORMAT, "%s: model.vocab has '%s' twice", origin, it->string);
        if (!fr_strmap_put(&t->str2id, it->string, n, fr_hash_bytes(it->string, n), id, NULL))
            return fr_error(FR_ERR_NOMEM, "out of memory");
        FR_CHECK(set_token(t, id, it->string, TF_VOCAB, 0, origin));
        if (t->ignore_merges) {
            const unsigned char *b = t->tok_bytes[id];
            size_t bl = t->tok_bytes_len[id];
            if (!fr_strmap_put(&t->raw2id, b, bl, fr_hash_bytes(b, bl), id, NULL))
                return fr_error(FR_ERR_NOMEM, "out of memory");
        }
    }
    /* byte tokens */
    for (unsigned b = 0; b < 256; b++) {
        char s[4];
        unsigned char byte = (unsigned char)b;
        size_t n = fr_bytelevel_encode(&byte, 1, s);
        fr_strmap_slot *sl = fr_strmap_get(&t->vocab, s, n, fr_hash_bytes(s, n));
        t->byte_id[b] = sl ? (int)sl->val : -1;
    }
    t->unk_id = -1;
    const cJSON *unk = obj_get(model, "unk_token");
    if (cJSON_IsString(unk)) {
        size_t n = strlen(unk->valuestring);
        fr_strmap_slot *sl = fr_strmap_get(&t->vocab, unk->valuestring, n, fr_hash_bytes(unk->valuestring, n));
        if (!sl) return fr_error(FR_ERR_FORMAT, "%s: model.unk_token '%s' is not in the vocabulary", origin, unk->valuestring);
        t->unk_id = (int)sl->val;
    }

    /* merges */
    int n_merges = cJSON_GetArraySize(merges);
    size_t mcap = 16;
    while (mcap < (size_t)n_merges * 2) mcap <<= 1;
    t->mcap = mcap;
    t->mkey = malloc(mcap * sizeof *t->mkey);
    t->mrank = malloc(mcap * sizeof *t->mrank);
    t->mnew = malloc(mcap * sizeof *t->mnew);
    t->merge_a = malloc(((size_t)n_merges + 1) * sizeof *t->merge_a);
    t->merge_b = malloc(((size_t)n_merges + 1) * sizeof *t->merge_b);
    if (!t->mkey || !t->mrank || !t->mnew || !t->merge_a || !t->merge_b) return fr_error(FR_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < mcap; i++) t->mkey[i] = MKEY_EMPTY;
    char *joined = NULL;
    size_t joined_cap = 0;
    int rank = 0;
    cJSON_ArrayForEach(it, merges) {
        const char *a = NULL, *b = NULL;
        char *tmp = NULL;
        if (cJSON_IsString(it)) { /* "a b" (older files) */
            const char *sp = strchr(it->valuestring, ' ');
            if (!sp || strchr(sp + 1, ' ')) {
                free(joined);
                return fr_error(FR_ERR_FORMAT, "%s: model.merges[%d] \"%s\" is not two tokens separated by one space",
                                origin, rank, it->valuestring);
            }
            tmp = strdup(it->valuestring);
            if (!tmp) {
                free(joined);
                return fr_error(FR_ERR_NOMEM, "out of memory");
            }
            tmp[sp - it->valuestring] = 0;
            a = tmp;
            b = tmp + (sp - it->valuestring) + 1;
        } else if (cJSON_IsArray(it) && cJSON_GetArraySize(it) == 2 && cJSON_IsString(cJSON_GetArrayItem(it, 0)) &&
                   cJSON_IsString(cJSON_GetArrayItem(it, 1))) {
            a = cJSON_GetArrayItem(it, 0)->valuestring;
            b = cJSON_GetArrayItem(it, 1)->valuestring;
        } else {
            free(joined);
            return fr_error(FR_ERR_FORMAT, "%s: model.merges[%d] is neither \"a b\" nor [\"a\", \"b\"]", origin, rank);
        }
        size_t la = strlen(a), lb = strlen(b);
        fr_strmap_slot *sa = fr_strmap_get(&t->vocab, a, la, fr_hash_bytes(a, la));
        fr_strmap_slot *sb = fr_strmap_get(&t->vocab, b, lb, fr_hash_bytes(b, lb));
        int rc = FR_OK;
        if (!sa || !sb) {
            rc = fr_error(FR_ERR_FORMAT, "%s: model.merges[%d] references unknown token '%s'", origin, rank, !sa ? a : b);
        } else {
            if (la + lb + 1 > joined_cap) {
                joined_cap = 2 * (la + lb + 1);
                char *nj = realloc(joined, joined_cap);
                if (!nj) rc = fr_error(FR_ERR_NOMEM, "out of memory");
                else joined = nj;
            }
            if (rc == FR_OK) {
                memcpy(joined, a, la);
                memcpy(joined + la, b, lb);
                fr_strmap_slot *sn = fr_strmap_get(&t->vocab, joined, la + lb, fr_hash_bytes(joined, la + lb));
                if (!sn) {
                    joined[la + lb] = 0;
                    rc = fr_error(FR_ERR_FORMAT, "%s: model.merges[%d] makes '%s', which is not in the vocabulary", origin,
                                  rank, joined);
                } else {
                    merge_insert(t, (int)sa->val, (int)sb->val, (uint32_t)rank, (int32_t)sn->val);
                    t->merge_a[rank] = (int32_t)sa->val;
                    t->merge_b[rank] = (int32_t)sb->val;
                }
            }
        }
        free(tmp);
        if (rc != FR_OK) {
            free(joined);
            return rc;
        }
        rank++;
    }
    free(joined);
    t->n_merges = rank;

    /* added tokens */
    if (n_added) {
        t->added = calloc((size_t)n_added, sizeof *t->added);
        if (!t->added) return fr_error(FR_ERR_NOMEM, "out of memory");
        cJSON_ArrayForEach(it, added) {
            added_token *a = &t->added[t->n_added];
            const char *content = obj_get(it, "content")->valuestring;
            a->id = (int)obj_get(it, "id")->valuedouble;
            a->special = json_bool(it, "special", 0);
            a->len = strlen(content);
            a->s = strdup(content);
            if (!a->s) return fr_error(FR_ERR_NOMEM, "out of memory");
            t->n_added++;
            FR_CHECK(set_token(t, a->id, content, TF_ADDED | (a->special ? TF_SPECIAL : 0), 1, origin));
            if (!fr_strmap_put(&t->str2id, content, a->len, fr_hash_bytes(content, a->len), a->id, NULL))
                return fr_error(FR_ERR_NOMEM, "out of memory");
            fr_strmap_get(&t->str2id, content, a->len, fr_hash_bytes(content, a->len))->val = a->id;
            t->added_first[(unsigned char)content[0]] |= (unsigned char)(a->special ? 1 : 2);
        }
        qsort(t->added, (size_t)t->n_added, sizeof *t->added, cmp_added);
    }

    /* pre-tokenizer */
    const cJSON *pre = obj_get(root, "pre_tokenizer");
    if (is_null_or_absent(pre))
        return fr_error(FR_ERR_FORMAT, "%s: pre_tokenizer is null; a ByteLevel pre-tokenizer is required", origin);
    t->pt.prefix_step = -1;
    int seen_bl = 0;
    FR_CHECK(parse_pretok(pre, &t->pt, &seen_bl, origin, "pre_tokenizer"));
    if (!seen_bl) return fr_error(FR_ERR_FORMAT, "%s: pre_tokenizer has no ByteLevel step", origin);

    /* skeleton for save */
    t->skeleton = cJSON_Duplicate(root, 1);
    if (!t->skeleton) return fr_error(FR_ERR_NOMEM, "out of memory");
    /* emptied in place so that save writes the keys where they were */
    cJSON *sm = cJSON_GetObjectItemCaseSensitive(t->skeleton, "model");
    if (cJSON_GetObjectItemCaseSensitive(t->skeleton, "added_tokens"))
        cJSON_ReplaceItemInObjectCaseSensitive(t->skeleton, "added_tokens", cJSON_CreateArray());
    cJSON_ReplaceItemInObjectCaseSensitive(sm, "vocab", cJSON_CreateObject());
    cJSON_ReplaceItemInObjectCaseSensitive(sm, "merges", cJSON_CreateArray());

    return load_config(t, config, origin);
}

int fr_tokenizer_from_json(fr_tokenizer **out, const cJSON *root, const cJSON *config, const char *origin) {
    *out = NULL;
    fr_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return fr_error(FR_ERR_NOMEM, "out of memory");
    t->uid = atomic_fetch_add(&g_tok_uid, 1);
    t->bos = t->eos = t->pad = -1;
    int rc = build(t, root, config, origin);
    if (rc != FR_OK) {
        fr_tokenizer_free(t);
        return rc;
    }
    *out = t;
    return FR_OK;
}

static int parse_json_file(const char *path, cJSON **out) {
    *out = NULL;
    char *buf = NULL;
    size_t len = 0;
    FR_CHECK(fr_read_file(path, &buf, &len));
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(buf, len, &end, 0);
    if (!j) {
        size_t off = end && end >= buf ? (size_t)(end - buf) : 0;
        int line = 1;
        for (size_t i = 0; i < off && i < len; i++) line += buf[i] == '\n';
        free(buf);
        return fr_error(FR_ERR_FORMAT, "%s: malformed JSON near line %d (byte %zu)", path, line, off);
    }
    free(buf);
    *out = j;
    return FR_OK;
}

int fr_tokenizer_load(fr_tokenizer **out, const char *path) {
    fr_clear_error();
    if (!out) return fr_error(FR_ERR_ARG, "fr_tokenizer_load: NULL output pointer");
    *out = NULL;
    if (!path) return fr_error(FR_ERR_ARG, "fr_tokenizer_load: NULL path");
    struct stat st;
    if (stat(path, &st) != 0) return fr_error(FR_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    size_t n = strlen(path) + 32;
    char *tj = malloc(n), *cj = malloc(n);
    if (!tj || !cj) {
        free(tj);
        free(cj);
        return fr_error(FR_ERR_NOMEM, "out of memory");
    }
    if (S_ISDIR(st.st_mode)) {
        snprintf(tj, n, "%s/tokenizer.json", path);
        snprintf(cj, n, "%s/tokenizer_config.json", path);
    } else {
        snprintf(tj, n, "%s", path);
        const char *slash = strrchr(path, '/');
        if (slash) snprintf(cj, n, "%.*s/tokenizer_config.json", (int)(slash - path), path);
        else snprintf(cj, n, "tokenizer_config.json");
    }
    cJSON *root = NULL, *cfg = NULL;
    int rc = parse_json_file(tj, &root);
    if (rc == FR_OK && access(cj, F_OK) == 0) rc = parse_json_file(cj, &cfg);
    if (rc == FR_OK) rc = fr_tokenizer_from_json(out, root, cfg, tj);
    cJSON_Delete(root);
    cJSON_Delete(cfg);
    free(tj);
    free(cj);
    return rc;
}

/* ------------------------------------------------------------------ saving */

const char fr_default_chat_template[] =
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{% set ns = namespace(system='') %}"
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{% set ns.system = ns.system + message['content'] + '\\n\\n' %}{% endif %}{% endfor %}"
    "{{ bos_token }}{{ ns.system }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '<\xef\xbd\x9cUser\xef\xbd\x9c>' + message['content'] }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>' + message['content'] + eos_token }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>' }}{% endif %}";

static void set_key(cJSON *o, const char *key, cJSON *v) {
    if (!v) return;
    if (cJSON_GetObjectItemCaseSensitive(o, key)) cJSON_ReplaceItemInObjectCaseSensitive(o, key, v);
    else cJSON_AddItemToObject(o, key, v);
}

static cJSON *tokenizer_to_json(const fr_tokenizer *t) {
    cJSON *root = cJSON_Duplicate(t->skeleton, 1);
    if (!root) return NULL;
    cJSON *added = cJSON_CreateArray();
    if (!added) goto fail;
    /* added_tokens in id order */
    int *order = malloc(((size_t)t->n_added + 1) * sizeof *order);
    if (!order) {
        cJSON_Delete(added);
        goto fail;
    }
    for (int i = 0; i < t->n_added; i++) order[i] = i;
    for (int i = 1; i < t->n_added; i++) /* insertion sort by id: few added tokens */
        for (int j = i; j > 0 && t->added[order[j]].id < t->added[order[j - 1]].id; j--) {
            int x = order[j];
            order[j] = order[j - 1];
            order[j - 1] = x;
        }
    for (int i = 0; i < t->n_added; i++) {
        const added_token *a = &t->added[order[i]];
        cJSON *o = cJSON_CreateObject();
        if (!o) break;
        cJSON_AddNumberToObject(o, "id", a->id);
        cJSON_AddStringToObject(o, "content", a->s);
        cJSON_AddBoolToObject(o, "single_word", 0);
        cJSON_AddBoolToObject(o, "lstrip", 0);
        cJSON_AddBoolToObject(o, "rstrip", 0);
        cJSON_AddBoolToObject(o, "normalized", 0);
        cJSON_AddBoolToObject(o, "special", a->special);
        cJSON_AddItemToArray(added, o);
    }
    free(order);
    set_key(root, "added_tokens", added);
    cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    cJSON *vocab = cJSON_CreateObject(), *merges = cJSON_CreateArray();
    if (!model || !vocab || !merges) {
        cJSON_Delete(vocab);
        cJSON_Delete(merges);
        goto fail;
    }
    for (int id = 0; id < t->n_ids; id++)
        if (t->flags[id] & TF_VOCAB) cJSON_AddNumberToObject(vocab, t->tok_str[id], id);
    for (int r = 0; r < t->n_merges; r++) {
        cJSON *pair = cJSON_CreateArray();
        if (!pair) break;
        cJSON_AddItemToArray(pair, cJSON_CreateString(t->tok_str[t->merge_a[r]]));
        cJSON_AddItemToArray(pair, cJSON_CreateString(t->tok_str[t->merge_b[r]]));
        cJSON_AddItemToArray(merges, pair);
    }
    set_key(model, "vocab", vocab);
    set_key(model, "merges", merges);
    return root;
fail:
    cJSON_Delete(root);
    return NULL;
}

static cJSON *config_to_json(const fr_tokenizer *t) {
    cJSON *c = t->config ? cJSON_Duplicate(t->config, 1) : cJSON_CreateObject();
    if (!c) return NULL;
    int ids[3] = {t->bos, t->eos, t->pad};
    const char *keys[3] = {"bos_token", "eos_token", "pad_token"};
    for (int i = 0; i < 3; i++) {
        if (ids[i] >= 0) set_key(c, keys[i], cJSON_CreateString(t->tok_str[ids[i]]));
        else if (!cJSON_GetObjectItemCaseSensitive(c, keys[i])) set_key(c, keys[i], cJSON_CreateNull());
    }
    if (!cJSON_GetObjectItemCaseSensitive(c, "model_max_length"))
        set_key(c, "model_max_length", cJSON_CreateNumber(131072));
    if (!cJSON_GetObjectItemCaseSensitive(c, "tokenizer_class"))
        set_key(c, "tokenizer_class", cJSON_CreateString("PreTrainedTokenizerFast"));
    if (!cJSON_GetObjectItemCaseSensitive(c, "clean_up_tokenization_spaces"))
        set_key(c, "clean_up_tokenization_spaces", cJSON_CreateFalse());
    if (t->chat_template) set_key(c, "chat_template", cJSON_CreateString(t->chat_template));
    return c;
}

static int write_json(const char *dir, const char *name, cJSON *j) {
    char *text = cJSON_Print(j);
    if (!text) return fr_error(FR_ERR_NOMEM, "out of memory serializing %s", name);
    size_t n = strlen(dir) + strlen(name) + 2;
    char *path = malloc(n);
    if (!path) {
        cJSON_free(text);
        return fr_error(FR_ERR_NOMEM, "out of memory");
    }
    snprintf(path, n, "%s/%s", dir, name);
    size_t len = strlen(text);
    text[len] = '\n'; /* replaces the NUL: write len + 1 bytes */
    int rc = fr_write_file_atomic(path, text, len + 1);
    free(path);
    cJSON_free(text);
    return rc;
}

int fr_tokenizer_save(const fr_tokenizer *tok, const char *dir) {
    fr_clear_error();
    if (!tok || !dir) return fr_error(FR_ERR_ARG, "fr_tokenizer_save: NULL argument");
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return fr_error(FR_ERR_IO, "fr_tokenizer_save: %s is not a directory", dir);
    cJSON *tj = tokenizer_to_json(tok);
    if (!tj) return fr_error(FR_ERR_NOMEM, "out of memory building tokenizer.json");
    int rc = write_json(dir, "tokenizer.json", tj);
    cJSON_Delete(tj);
    if (rc != FR_OK) return rc;
    cJSON *cj = config_to_json(tok);
    if (!cj) return fr_error(FR_ERR_NOMEM, "out of memory building tokenizer_config.json");
    rc = write_json(dir, "tokenizer_config.json", cj);
    cJSON_Delete(cj);
    return rc;
}

/* ------------------------------------------------------------------ read-only accessors
 * (tokenizer_internal.h; used by the GGUF exporter) */

int fr_tokenizer_num_merges(const fr_tokenizer *tok) { return tok ? tok->n_merges : 0; }

int fr_tokenizer_merge(const fr_tokenizer *tok, int rank, int *a, int *b) {
    if (!tok || rank < 0 || rank >= tok->n_merges) return fr_error(FR_ERR_ARG, "merge rank %d out of range", rank);
    *a = tok->merge_a[rank];
    *b = tok->merge_b[rank];
    return FR_OK;
}

int fr_tokenizer_token_kind(const fr_tokenizer *tok, int id) {
    if (!tok || id < 0 || id >= tok->n_ids || !(tok->flags[id] & TF_PRESENT)) return FR_TOKEN_KIND_NONE;
    if (tok->flags[id] & TF_SPECIAL) return FR_TOKEN_KIND_SPECIAL;
    if ((tok->flags[id] & TF_ADDED) && !(tok->flags[id] & TF_VOCAB)) return FR_TOKEN_KIND_ADDED;
    return FR_TOKEN_KIND_NORMAL;
}

const cJSON *fr_tokenizer_skeleton(const fr_tokenizer *tok) { return tok ? tok->skeleton : NULL; }

const cJSON *fr_tokenizer_config_json(const fr_tokenizer *tok) { return tok ? tok->config : NULL; }

int fr_tokenizer_undecodable_ids(const fr_tokenizer *tok, int vocab_size, int keep_id, int **ids, int *n_ids) {
    *ids = NULL;
    *n_ids = 0;
    int n = 0;
    for (int id = 0; id < vocab_size; id++) n += id != keep_id && !fr_tokenizer_id_to_token(tok, id);
    if (n == 0) return FR_OK;
    if (n == vocab_size) return fr_error(FR_ERR_ARG, "the tokenizer decodes none of the model's %d ids", vocab_size);
    int *v = malloc((size_t)n * sizeof *v);
    if (!v) return fr_error(FR_ERR_NOMEM, "out of memory");
    n = 0;
    for (int id = 0; id < vocab_size; id++)
        if (id != keep_id && !fr_tokenizer_id_to_token(tok, id)) v[n++] = id;
    *ids = v;
    *n_ids = n;
    return FR_OK;
}
