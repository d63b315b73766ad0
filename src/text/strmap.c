/* strmap.c — the byte-string hash map of the tokenizer and the BPE trainer (open addressing,
 * caller-supplied hashes, keys copied into arenas owned by the map). */
#include "text/tokenizer_internal.h"

#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ string map */

int fr_strmap_init(fr_strmap *m, size_t expected) {
    memset(m, 0, sizeof *m);
    size_t cap = 64;
    while (cap < expected * 2) cap <<= 1;
    m->slots = calloc(cap, sizeof *m->slots);
    if (!m->slots) return FR_ERR_NOMEM;
    m->cap = cap;
    return FR_OK;
}

void fr_strmap_free(fr_strmap *m) {
    if (!m) return;
    for (size_t i = 0; i < m->n_blocks; i++) free(m->blocks[i]);
    free(m->blocks);
    free(m->slots);
    memset(m, 0, sizeof *m);
}

fr_strmap_slot *fr_strmap_get(const fr_strmap *m, const void *key, size_t len, uint64_t hash) {
    size_t mask = m->cap - 1;
    for (size_t i = hash & mask;; i = (i + 1) & mask) {
        fr_strmap_slot *s = &m->slots[i];
        if (!s->key) return NULL;
        if (s->hash == hash && s->len == len && memcmp(s->key, key, len) == 0) return s;
    }
}

static unsigned char *strmap_copy_key(fr_strmap *m, const void *key, size_t len) {
    size_t need = len ? len : 1;
    if (need > m->left) {
        size_t bs = need > (1u << 16) ? need : (1u << 16);
        if (m->n_blocks == m->cap_blocks) {
            size_t nc = m->cap_blocks ? 2 * m->cap_blocks : 16;
            char **nb = realloc(m->blocks, nc * sizeof *nb);
            if (!nb) return NULL;
            m->blocks = nb;
            m->cap_blocks = nc;
        }
        char *b = malloc(bs);
        if (!b) return NULL;
        m->blocks[m->n_blocks++] = b;
        m->cur = b;
        m->left = bs;
    }
    unsigned char *dst = (unsigned char *)m->cur;
    memcpy(dst, key, len);
    m->cur += need;
    m->left -= need;
    return dst;
}

static int strmap_grow(fr_strmap *m) {
    size_t ncap = m->cap * 2;
    fr_strmap_slot *ns = calloc(ncap, sizeof *ns);
    if (!ns) return FR_ERR_NOMEM;
    for (size_t i = 0; i < m->cap; i++) {
        if (!m->slots[i].key) continue;
        size_t j = m->slots[i].hash & (ncap - 1);
        while (ns[j].key) j = (j + 1) & (ncap - 1);
        ns[j] = m->slots[i];
    }
    free(m->slots);
    m->slots = ns;
    m->cap = ncap;
    return FR_OK;
}

fr_strmap_slot *fr_strmap_put(fr_strmap *m, const void *key, size_t len, uint64_t hash, int64_t init,
                              int *inserted) {
    if (inserted) *inserted = 0;
    if ((m->count + 1) * 4 > m->cap * 3 && strmap_grow(m) != FR_OK) return NULL;
    size_t mask = m->cap - 1;
    for (size_t i = hash & mask;; i = (i + 1) & mask) {
        fr_strmap_slot *s = &m->slots[i];
        if (!s->key) {
            unsigned char *k = strmap_copy_key(m, key, len);
            if (!k) return NULL;
            s->key = k;
            s->hash = hash;
            s->len = (uint32_t)len;
            s->val = init;
            m->count++;
            if (inserted) *inserted = 1;
            return s;
        }
        if (s->hash == hash && s->len == len && memcmp(s->key, key, len) == 0) return s;
    }
}
