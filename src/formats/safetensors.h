/*
 * safetensors.h — reading and writing the safetensors format.
 *
 * Format: 8-byte little-endian header length N, N bytes of JSON
 *   {"name": {"dtype": "F32", "shape": [d0, d1], "data_offsets": [begin, end]}, ...,
 *    "__metadata__": {"k": "v"}}
 * then the data region; offsets are relative to the start of the data region.
 * Reading maps the file (mmap) and checks every offset, shape and dtype against the file
 * size before anything is used, so a hostile file yields FR_ERR_FORMAT, never a crash.
 */
#ifndef FR_SAFETENSORS_H
#define FR_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    FR_DT_F32 = 0, FR_DT_F16, FR_DT_BF16, FR_DT_F64,
    FR_DT_I64, FR_DT_I32, FR_DT_I16, FR_DT_I8, FR_DT_U8, FR_DT_BOOL,
    FR_DT_F8_E4M3, FR_DT_F8_E5M2,
    FR_DT_COUNT
} fr_dtype;

size_t fr_dtype_size(fr_dtype dt);
const char *fr_dtype_name(fr_dtype dt);  /* "F32", "BF16", "F8_E4M3", ... */

#define FR_ST_MAX_DIMS 8

typedef struct {
    char *name;
    fr_dtype dtype;
    int ndim;
    int64_t shape[FR_ST_MAX_DIMS];
    size_t numel;
    size_t nbytes;
    const void *data;     /* points into the mapping */
} fr_st_tensor;

typedef struct {
    char *path;
    void *map;
    size_t map_size;
    int n_tensors;
    fr_st_tensor *tensors;   /* sorted by name */
} fr_st_file;

/* Map and parse; on failure nothing is left open. */
int fr_st_open(fr_st_file *f, const char *path);
void fr_st_close(fr_st_file *f);
const fr_st_tensor *fr_st_find(const fr_st_file *f, const char *name);

/* Convert a tensor of any float type (F32, F16, BF16, F64) or integer type to float.
 * n must equal t->numel. */
int fr_st_to_f32(const fr_st_tensor *t, float *dst, size_t n);
/* Convert an integer tensor (I64, I32, I16, I8, U8) to int32 (range-checked). */
int fr_st_to_i32(const fr_st_tensor *t, int32_t *dst, size_t n);

/* A set of files forming one checkpoint: model.safetensors, or the shards listed by
 * model.safetensors.index.json ("weight_map"). Lookup by tensor name across shards. */
typedef struct {
    int n_files;
    fr_st_file *files;
} fr_st_set;

int fr_st_set_open_dir(fr_st_set *s, const char *dir);
void fr_st_set_close(fr_st_set *s);
const fr_st_tensor *fr_st_set_find(const fr_st_set *s, const char *name);

/* Writing. The header lists tensors in the order given; the data region is packed without
 * gaps (the Python package rejects gaps), widest dtypes first so every tensor is aligned
 * to its element size (an all-F32 file keeps the given order). Optional metadata pairs
 * (meta_keys/meta_values, n_meta, may be 0). Atomic: temp file, fsync, rename. */
typedef struct {
    const char *name;
    fr_dtype dtype;
    int ndim;
    int64_t shape[FR_ST_MAX_DIMS];
    const void *data;
} fr_st_entry;

int fr_st_write(const char *path, const fr_st_entry *entries, int n,
                const char *const *meta_keys, const char *const *meta_values, int n_meta);

#endif
