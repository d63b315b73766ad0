/*
 * onednn_cache.c — the shape-keyed store of oneDNN primitives (onednn_cache.h).
 */
#include "cpu/onednn_cache.h"

#ifdef FR_HAVE_DNNL
#include <stdint.h>
#include <string.h>

static void clear(fr_dnnl_cache *c) {
    for (int i = 0; i < FR_DNNL_SLOTS; i++)
        if (c->slot[i].prim) dnnl_primitive_destroy(c->slot[i].prim);
    memset(c, 0, sizeof *c);
}

fr_dnnl_entry *fr_dnnl_cache_find(fr_dnnl_cache *c, const int key[FR_DNNL_KEY]) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a over the key's ints */
    for (int i = 0; i < FR_DNNL_KEY; i++) h = (h ^ (uint32_t)key[i]) * 1099511628211ull;
    for (size_t i = (size_t)(h % FR_DNNL_SLOTS);; i = (i + 1) % FR_DNNL_SLOTS) {
        fr_dnnl_entry *e = &c->slot[i];
        if (e->used && !memcmp(e->key, key, sizeof e->key)) return e;
        if (!e->used) {
            if (c->n >= FR_DNNL_SLOTS * 3 / 4) { /* full: start over, this shape first */
                clear(c);
                e = &c->slot[h % FR_DNNL_SLOTS];
            }
            memset(e, 0, sizeof *e);
            e->used = 1;
            memcpy(e->key, key, sizeof e->key);
            c->n++;
            return e;
        }
    }
}
#else
typedef int fr_onednn_cache_unused; /* ISO C: no empty translation unit */
#endif
