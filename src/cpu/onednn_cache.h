/*
 * onednn_cache.h — oneDNN primitives kept per shape (bf16_gemm.c, onednn_f32.c). oneDNN's
 * fastest kernels are built for one exact shape (~0.4 ms each); a cache keeps each shape's
 * primitive, so which kernel runs, and the order of its additions, depends on the shape alone.
 * Open addressing over a fixed table, emptied (primitives freed) when three quarters full. The
 * caller serialises access.
 */
#ifndef FR_ONEDNN_CACHE_H
#define FR_ONEDNN_CACHE_H

#ifdef FR_HAVE_DNNL
#include <dnnl.h>

#define FR_DNNL_KEY 8       /* ints of a shape's key (unused ones 0) */
#define FR_DNNL_SLOTS 1024

typedef struct {
    int used, failed; /* failed: oneDNN could not build one (the caller takes another path) */
    int key[FR_DNNL_KEY];
    dnnl_primitive_t prim;
} fr_dnnl_entry;

typedef struct {
    fr_dnnl_entry slot[FR_DNNL_SLOTS];
    int n;
} fr_dnnl_cache;

/* The entry of `key`: the cached one, or a new one (used, prim NULL, failed 0) to build. */
fr_dnnl_entry *fr_dnnl_cache_find(fr_dnnl_cache *c, const int key[FR_DNNL_KEY]);
#endif

#endif
