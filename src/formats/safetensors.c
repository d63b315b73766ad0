/* safetensors.c — mmap-based reader, dtype conversion, sharded sets and an atomic writer
 * for the safetensors format (see safetensors.h).
 *
 * Reading never trusts the file: the header length, every dtype, shape and data_offsets
 * entry is checked against the size of the mapping before a tensor is handed out.
 *
 * Writing produces files the reference implementation (the Python/Rust `safetensors`
 * package) accepts: the header is padded with spaces so the data region starts at a
 * multiple of 8, and the data region is contiguous with no gaps (the reference reader
 * rejects holes between tensors). To keep every tensor naturally aligned without gaps,
 * the data of wider dtypes is laid out first (stable order by element size, largest
 * first; within one element size the caller's order is kept). Every tensor's data offset
 * is therefore a multiple of its element size; files written from F32/I32-only entries
 * keep exactly the order given.
 */
#define _GNU_SOURCE
#include "formats/safetensors.h"
#include "core/internal.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c assumes a little-endian host"
#endif

#define FR_ST_MAX_HEADER ((uint64_t)100 * 1000 * 1000) /* 100 MB, as the reference reader */

/* ------------------------------------------------------------------ dtypes */

static const struct {
    const char *name;
    size_t size;
} dtype_info[FR_DT_COUNT] = {
    [FR_DT_F32] = {"F32", 4},         [FR_DT_F16] = {"F16", 2},
    [FR_DT_BF16] = {"BF16", 2},       [FR_DT_F64] = {"F64", 8},
    [FR_DT_I64] = {"I64", 8},         [FR_DT_I32] = {"I32", 4},
    [FR_DT_I16] = {"I16", 2},         [FR_DT_I8] = {"I8", 1},
    [FR_DT_U8] = {"U8", 1},           [FR_DT_BOOL] = {"BOOL", 1},
    [FR_DT_F8_E4M3] = {"F8_E4M3", 1}, [FR_DT_F8_E5M2] = {"F8_E5M2", 1},
};

size_t fr_dtype_size(fr_dtype dt) {
    if ((int)dt < 0 || dt >= FR_DT_COUNT) return 0;
    return dtype_info[dt].size;
}

const char *fr_dtype_name(fr_dtype dt) {
    if ((int)dt < 0 || dt >= FR_DT_COUNT) return "?";
    return dtype_info[dt].name;
}

static int dtype_from_name(const char *s, fr_dtype *out) {
    for (int i = 0; i < FR_DT_COUNT; i++) {
        if (strcmp(s, dtype_info[i].name) == 0) {
            *out = (fr_dtype)i;
            return 1;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------ reading */

static int cmp_tensor_name(const void *a, const void *b) {
    return strcmp(((const fr_st_tensor *)a)->name, ((const fr_st_tensor *)b)->name);
}

static void free_tensors(fr_st_tensor *t, int n) {
    if (!t) return;
    for (int i = 0; i < n; i++) free(t[i].name);
    free(t);
}

/* A JSON number that is a non-negative integer below 2^53 (exact in a double). */
static int json_uint(const cJSON *j, uint64_t *out) {
    if (!cJSON_IsNumber(j)) return 0;
    double d = j->valuedouble;
    if (!(d >= 0.0) || d > 9007199254740992.0 || d != floor(d)) return 0;
    *out = (uint64_t)d;
    return 1;
}

static int parse_tensor(fr_st_tensor *t, const cJSON *item, const char *path, size_t data_size,
                        const unsigned char *data) {
    const char *name = item->string;
    if (!cJSON_IsObject(item))
        return fr_error(FR_ERR_FORMAT, "%s: tensor '%s': entry is not a JSON object", path, name);

    const cJSON *jd = cJSON_GetObjectItemCaseSensitive(item, "dtype");
    if (!jd) return fr_error(FR_ERR_FORMAT, "%s: tensor '%s': missing dtype", path, name);
    if (!cJSON_IsString(jd))
        return fr_error(FR_ERR_FORMAT, "%s: tensor '%s': dtype is not a string", path, name);
    if (!dtype_from_name(jd->valuestring, &t->dtype))
        return fr_error(FR_ERR_FORMAT, "%s: tensor '%s': unsupported dtype '%s'", path, name,
                        jd->valuestring);

    const cJSON *js = cJSON_GetObjectItemCaseSensitive(item, "shape");
    if (!js) return fr_error(FR_ERR_FORMAT, "%s: tensor '%s': missing shape", path, name);
    if (!cJSON_IsArray(js))
        return fr_error(FR_ERR_FORMAT, "%s: tensor '%s': shape is not an array", path, name);
    int nd = cJSON_GetArraySize(js);
    if (nd > FR_ST_MAX_DIMS)
        return fr_error(FR_ERR_FORMAT, "%s: tensor '%s': shape has %d dims (at most %d supported)",
                        path, name, nd, FR_ST_MAX_DIMS);
    t->ndim = nd;
    size_t numel = 1;
    int k = 0;
    const cJSON *dim;
    cJSON_ArrayForEach(dim, js) {
        uint64_t v;
        if (!json_uint(dim, &v))
            return fr_error(FR_ERR_FORMAT,
                            "%s: tensor '%s': shape[%d] is not a non-negative integer", path, name, k);
        t->shape[k] = (int64_t)v;
        if (v > SIZE_MAX || __builtin_mul_overflow(numel, (size_t)v, &numel))
            return fr_error(FR_ERR_FORMAT, "%s: tensor '%s': shape element count overflows", path,
                            name);
        k++;
    }
    t->numel = numel;
    if (__builtin_mul_overflow(numel, dtype_info[t->dtype].size, &t->nbytes))
        return fr_error(FR_ERR_FORMAT, "%s: tensor '%s': byte size overflows", path, name);

    const cJSON *jo = cJSON_GetObjectItemCaseSensitive(item, "data_offsets");
    if (!jo) return fr_error(FR_ERR_FORMAT, "%s: tensor '%s': missing data_offsets", path, name);
    if (!cJSON_IsArray(jo) || cJSON_GetArraySize(jo) != 2)
        return fr_error(FR_ERR_FORMAT, "%s: tensor '%s': data_offsets is not an array [begin, end]",
                        path, name);
    uint64_t begin, end;
    if (!json_uint(cJSON_GetArrayItem(jo, 0), &begin) || !json_uint(cJSON_GetArrayItem(jo, 1), &end))
        return fr_error(FR_ERR_FORMAT,
                        "%s: tensor '%s': data_offsets are not non-negative integers", path, name);
    if (begin > end)
        return fr_error(FR_ERR_FORMAT, "%s: tensor '%s': data_offsets begin %llu > end %llu", path,
                        name, (unsigned long long)begin, (unsigned long long)end);
    if (end > data_size)
        return fr_error(FR_ERR_FORMAT,
                        "%s: tensor '%s': data_offsets end %llu beyond the data region (%zu bytes)",
                        path, name, (unsigned long long)end, data_size);
    if (end - begin != t->nbytes)
        return fr_error(FR_ERR_FORMAT,
                        "%s: tensor '%s': data_offsets span %llu bytes but shape x %s needs %zu",
                        path, name, (unsigned long long)(end - begin), dtype_info[t->dtype].name,
                        t->nbytes);
    t->data = data + begin;
    return FR_OK;
}

static int parse_header(fr_st_file *f, const char *path, const unsigned char *map, size_t size) {
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | map[i];
    if (n > size - 8)
        return fr_error(FR_ERR_FORMAT, "%s: header length %llu exceeds the file size (%zu bytes)",
                        path, (unsigned long long)n, size);
    if (n > FR_ST_MAX_HEADER)
        return fr_error(FR_ERR_FORMAT, "%s: header length %llu exceeds the 100 MB limit", path,
                        (unsigned long long)n);
    if (n < 2) return fr_error(FR_ERR_FORMAT, "%s: header too short (%llu bytes)", path,
                               (unsigned long long)n);

    char *text = malloc((size_t)n + 1);
    if (!text) return fr_error(FR_ERR_NOMEM, "%s: out of memory for the header", path);
    memcpy(text, map + 8, (size_t)n);
    text[n] = 0;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, (size_t)n, &end, 0);
    if (!root) {
        long pos = end ? (long)(end - text) : 0;
        free(text);
        return fr_error(FR_ERR_FORMAT, "%s: header is not valid JSON (near byte %ld of the header)",
                        path, pos);
    }
    /* only whitespace may follow the JSON object (writers pad with spaces) */
    for (const char *p = end; p && p < text + n; p++) {
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            long pos = (long)(p - text);
            cJSON_Delete(root);
            free(text);
            return fr_error(FR_ERR_FORMAT, "%s: trailing garbage after the JSON header (byte %ld)",
                            path, pos);
        }
    }
    free(text);

    int rc = FR_OK;
    fr_st_tensor *tensors = NULL;
    int count = 0;
    if (!cJSON_IsObject(root)) {
        rc = fr_error(FR_ERR_FORMAT, "%s: header is not a JSON object", path);
        goto done;
    }
    int total = 0;
    const cJSON *item;
    cJSON_ArrayForEach(item, root) {
        if (item->string && strcmp(item->string, "__metadata__") == 0) {
            if (!cJSON_IsObject(item)) {
                rc = fr_error(FR_ERR_FORMAT, "%s: __metadata__ is not a JSON object", path);
                goto done;
            }
            const cJSON *m;
            cJSON_ArrayForEach(m, item) {
                if (!cJSON_IsString(m)) {
                    rc = fr_error(FR_ERR_FORMAT, "%s: __metadata__ value '%s' is not a string",
                                  path, m->string ? m->string : "?");
                    goto done;
                }
            }
            continue;
        }
        total++;
    }
    tensors = calloc(total > 0 ? (size_t)total : 1, sizeof *tensors);
    if (!tensors) {
        rc = fr_error(FR_ERR_NOMEM, "%s: out of memory for %d tensors", path, total);
        goto done;
    }
    size_t data_size = size - 8 - (size_t)n;
    const unsigned char *data = map + 8 + n;
    cJSON_ArrayForEach(item, root) {
        if (!item->string) continue;
        if (strcmp(item->string, "__metadata__") == 0) continue;
        fr_st_tensor *t = &tensors[count];
        t->name = strdup(item->string);
        if (!t->name) {
            rc = fr_error(FR_ERR_NOMEM, "%s: out of memory", path);
            goto done;
        }
        count++;
        rc = parse_tensor(t, item, path, data_size, data);
        if (rc != FR_OK) goto done;
    }
    if (count > 1) qsort(tensors, (size_t)count, sizeof *tensors, cmp_tensor_name);
    for (int i = 1; i < count; i++) {
        if (strcmp(tensors[i - 1].name, tensors[i].name) == 0) {
            rc = fr_error(FR_ERR_FORMAT, "%s: tensor '%s' appears more than once in the header",
                          path, tensors[i].name);
            goto done;
        }
    }
    f->n_tensors = count;
    f->tensors = tensors;
    tensors = NULL;
done:
    free_tensors(tensors, count);
    cJSON_Delete(root);
    return rc;
}

int fr_st_open(fr_st_file *f, const char *path) {
    fr_clear_error();
    if (!f || !path) return fr_error(FR_ERR_ARG, "fr_st_open: NULL argument");
    memset(f, 0, sizeof *f);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return fr_error(FR_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int rc = fr_error(FR_ERR_IO, "cannot stat %s: %s", path, strerror(errno));
        close(fd);
        return rc;
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return fr_error(FR_ERR_IO, "%s is not a regular file", path);
    }
    if (st.st_size < 8 || (uint64_t)st.st_size > SIZE_MAX) {
        close(fd);
        return fr_error(FR_ERR_FORMAT, "%s: file too small for a safetensors header (%lld bytes)",
                        path, (long long)st.st_size);
    }
    size_t size = (size_t)st.st_size;
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    int map_errno = errno;
    close(fd);
    if (map == MAP_FAILED)
        return fr_error(FR_ERR_IO, "cannot map %s: %s", path, strerror(map_errno));
    int rc = parse_header(f, path, map, size);
    if (rc == FR_OK) {
        f->path = strdup(path);
        if (!f->path) rc = fr_error(FR_ERR_NOMEM, "out of memory");
    }
    if (rc != FR_OK) {
        free_tensors(f->tensors, f->n_tensors);
        munmap(map, size);
        memset(f, 0, sizeof *f);
        return rc;
    }
    f->map = map;
    f->map_size = size;
    return FR_OK;
}

void fr_st_close(fr_st_file *f) {
    if (!f) return;
    free_tensors(f->tensors, f->n_tensors);
    if (f->map) munmap(f->map, f->map_size);
    free(f->path);
    memset(f, 0, sizeof *f);
}

const fr_st_tensor *fr_st_find(const fr_st_file *f, const char *name) {
    if (!f || !name || f->n_tensors == 0) return NULL;
    fr_st_tensor key;
    memset(&key, 0, sizeof key);
    key.name = (char *)name;
    return bsearch(&key, f->tensors, (size_t)f->n_tensors, sizeof *f->tensors, cmp_tensor_name);
}

/* ------------------------------------------------------------------ conversion */

static float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: man * 2^-24, normalise */
            int e = -1;
            do {
                man <<= 1;
                e++;
            } while (!(man & 0x400u));
            man &= 0x3ffu;
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | (man << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13) | (man ? 0x400000u : 0); /* inf / quiet nan */
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static float bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* OCP FP8 E4M3 ("fn": no infinities, S.1111.111 is NaN), bias 7. */
static float e4m3_to_f32(uint8_t v) {
    int sign = v >> 7, exp = (v >> 3) & 0xf, man = v & 7;
    float r;
    if (exp == 15 && man == 7) return NAN;
    if (exp == 0) r = ldexpf((float)man, -9);
    else r = ldexpf((float)(8 + man), exp - 10);
    return sign ? -r : r;
}

/* OCP FP8 E5M2 (IEEE-like), bias 15. */
static float e5m2_to_f32(uint8_t v) { return f16_to_f32((uint16_t)((uint16_t)v << 8)); }

int fr_st_to_f32(const fr_st_tensor *t, float *dst, size_t n) {
    if (!t || (!dst && n)) return fr_error(FR_ERR_ARG, "fr_st_to_f32: NULL argument");
    if (n != t->numel)
        return fr_error(FR_ERR_ARG, "fr_st_to_f32: tensor '%s' has %zu elements, buffer %zu",
                        t->name, t->numel, n);
    const unsigned char *p = t->data;
    switch (t->dtype) {
    case FR_DT_F32:
        if (n) memcpy(dst, p, n * 4);
        break;
    case FR_DT_F16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            dst[i] = f16_to_f32(h);
        }
        break;
    case FR_DT_BF16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            dst[i] = bf16_to_f32(h);
        }
        break;
    case FR_DT_F64:
        for (size_t i = 0; i < n; i++) {
            double d;
            memcpy(&d, p + 8 * i, 8);
            dst[i] = (float)d;
        }
        break;
    case FR_DT_I64:
        for (size_t i = 0; i < n; i++) {
            int64_t v;
            memcpy(&v, p + 8 * i, 8);
            dst[i] = (float)v;
        }
        break;
    case FR_DT_I32:
        for (size_t i = 0; i < n; i++) {
            int32_t v;
            memcpy(&v, p + 4 * i, 4);
            dst[i] = (float)v;
        }
        break;
    case FR_DT_I16:
        for (size_t i = 0; i < n; i++) {
            int16_t v;
            memcpy(&v, p + 2 * i, 2);
            dst[i] = (float)v;
        }
        break;
    case FR_DT_I8:
        for (size_t i = 0; i < n; i++) dst[i] = (float)(int8_t)p[i];
        break;
    case FR_DT_U8:
        for (size_t i = 0; i < n; i++) dst[i] = (float)p[i];
        break;
    case FR_DT_BOOL:
        for (size_t i = 0; i < n; i++) dst[i] = p[i] ? 1.0f : 0.0f;
        break;
    case FR_DT_F8_E4M3:
        for (size_t i = 0; i < n; i++) dst[i] = e4m3_to_f32(p[i]);
        break;
    case FR_DT_F8_E5M2:
        for (size_t i = 0; i < n; i++) dst[i] = e5m2_to_f32(p[i]);
        break;
    default:
        return fr_error(FR_ERR_FORMAT, "tensor '%s': cannot convert dtype %d to float", t->name,
                        (int)t->dtype);
    }
    return FR_OK;
}

int fr_st_to_i32(const fr_st_tensor *t, int32_t *dst, size_t n) {
    if (!t || (!dst && n)) return fr_error(FR_ERR_ARG, "fr_st_to_i32: NULL argument");
    if (n != t->numel)
        return fr_error(FR_ERR_ARG, "fr_st_to_i32: tensor '%s' has %zu elements, buffer %zu",
                        t->name, t->numel, n);
    const unsigned char *p = t->data;
    switch (t->dtype) {
    case FR_DT_I64:
        for (size_t i = 0; i < n; i++) {
            int64_t v;
            memcpy(&v, p + 8 * i, 8);
            if (v < INT32_MIN || v > INT32_MAX)
                return fr_error(FR_ERR_FORMAT,
                                "tensor '%s': element %zu (%lld) does not fit in int32", t->name, i,
                                (long long)v);
            dst[i] = (int32_t)v;
        }
        break;
    case FR_DT_I32:
        if (n) memcpy(dst, p, n * 4);
        break;
    case FR_DT_I16:
        for (size_t i = 0; i < n; i++) {
            int16_t v;
            memcpy(&v, p + 2 * i, 2);
            dst[i] = v;
        }
        break;
    case FR_DT_I8:
        for (size_t i = 0; i < n; i++) dst[i] = (int8_t)p[i];
        break;
    case FR_DT_U8:
        for (size_t i = 0; i < n; i++) dst[i] = p[i];
        break;
    case FR_DT_BOOL:
        for (size_t i = 0; i < n; i++) dst[i] = p[i] ? 1 : 0;
        break;
    default:
        return fr_error(FR_ERR_FORMAT, "tensor '%s' has dtype %s, expected an integer type",
                        t->name, fr_dtype_name(t->dtype));
    }
    return FR_OK;
}

/* ------------------------------------------------------------------ sets */

typedef struct {
    const char *name;
    int file;
} name_ref;

static int cmp_name_ref(const void *a, const void *b) {
    int c = strcmp(((const name_ref *)a)->name, ((const name_ref *)b)->name);
    if (c) return c;
    return ((const name_ref *)a)->file - ((const name_ref *)b)->file;
}

static int open_index(fr_st_set *s, const char *dir, const char *index_path) {
    char *text = NULL;
    size_t len = 0;
    FR_CHECK(fr_read_file(index_path, &text, &len));
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!root) {
        long pos = end ? (long)(end - text) : 0;
        free(text);
        return fr_error(FR_ERR_FORMAT, "%s: not valid JSON (near byte %ld)", index_path, pos);
    }
    free(text);

    int rc = FR_OK;
    const char **shards = NULL; /* distinct shard names, borrowed from the JSON tree */
    int n_shards = 0;
    int *entry_shard = NULL;
    name_ref *all = NULL;
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(root) || !cJSON_IsObject(wm)) {
        rc = fr_error(FR_ERR_FORMAT, "%s: missing \"weight_map\" object", index_path);
        goto done;
    }
    int n_entries = cJSON_GetArraySize(wm);
    shards = calloc((size_t)n_entries + 1, sizeof *shards);
    entry_shard = calloc((size_t)n_entries + 1, sizeof *entry_shard);
    if (!shards || !entry_shard) {
        rc = fr_error(FR_ERR_NOMEM, "out of memory reading %s", index_path);
        goto done;
    }
    int k = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, wm) {
        const char *tname = e->string ? e->string : "?";
        if (!cJSON_IsString(e)) {
            rc = fr_error(FR_ERR_FORMAT, "%s: weight_map entry for tensor '%s' is not a string",
                          index_path, tname);
            goto done;
        }
        const char *shard = e->valuestring;
        if (shard[0] == 0 || strchr(shard, '/') || strstr(shard, "..") || strchr(shard, '\\')) {
            rc = fr_error(FR_ERR_FORMAT, "%s: tensor '%s': invalid shard file name '%s'",
                          index_path, tname, shard);
            goto done;
        }
        int found = -1;
        if (k > 0 && strcmp(shards[entry_shard[k - 1]], shard) == 0) found = entry_shard[k - 1];
        for (int i = 0; found < 0 && i < n_shards; i++) {
            if (strcmp(shards[i], shard) == 0) {
                found = i;
                break;
            }
        }
        if (found < 0) {
            found = n_shards;
            shards[n_shards++] = shard;
        }
        entry_shard[k++] = found;
    }
    if (n_shards == 0) {
        rc = fr_error(FR_ERR_FORMAT, "%s: weight_map is empty", index_path);
        goto done;
    }
    s->files = calloc((size_t)n_shards, sizeof *s->files);
    if (!s->files) {
        rc = fr_error(FR_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (int i = 0; i < n_shards; i++) {
        char *p = fr_path_join(dir, shards[i]);
        if (!p) {
            rc = fr_error(FR_ERR_NOMEM, "out of memory");
            goto done;
        }
        rc = fr_st_open(&s->files[i], p);
        free(p);
        if (rc != FR_OK) goto done;
        s->n_files++;
    }
    k = 0;
    cJSON_ArrayForEach(e, wm) {
        const fr_st_file *f = &s->files[entry_shard[k++]];
        if (!fr_st_find(f, e->string)) {
            rc = fr_error(FR_ERR_FORMAT, "%s: tensor '%s' is listed for shard %s but missing there",
                          index_path, e->string, f->path);
            goto done;
        }
    }
    /* a tensor stored in two shards would make lookups ambiguous */
    size_t total = 0;
    for (int i = 0; i < s->n_files; i++) total += (size_t)s->files[i].n_tensors;
    all = calloc(total + 1, sizeof *all);
    if (!all) {
        rc = fr_error(FR_ERR_NOMEM, "out of memory");
        goto done;
    }
    size_t m = 0;
    for (int i = 0; i < s->n_files; i++)
        for (int t = 0; t < s->files[i].n_tensors; t++)
            all[m++] = (name_ref){s->files[i].tensors[t].name, i};
    qsort(all, total, sizeof *all, cmp_name_ref);
    for (size_t i = 1; i < total; i++) {
        if (strcmp(all[i - 1].name, all[i].name) == 0) {
            rc = fr_error(FR_ERR_FORMAT, "%s: tensor '%s' is stored in both %s and %s", index_path,
                          all[i].name, s->files[all[i - 1].file].path, s->files[all[i].file].path);
            goto done;
        }
    }
done:
    free(all);
    free(shards);
    free(entry_shard);
    cJSON_Delete(root);
    return rc;
}

int fr_st_set_open_dir(fr_st_set *s, const char *dir) {
    fr_clear_error();
    if (!s || !dir) return fr_error(FR_ERR_ARG, "fr_st_set_open_dir: NULL argument");
    memset(s, 0, sizeof *s);
    char *index_path = fr_path_join(dir, "model.safetensors.index.json");
    if (!index_path) return fr_error(FR_ERR_NOMEM, "out of memory");
    struct stat st;
    int rc;
    if (stat(index_path, &st) == 0) {
        rc = open_index(s, dir, index_path);
        free(index_path);
        if (rc != FR_OK) fr_st_set_close(s);
        return rc;
    }
    free(index_path);
    char *single = fr_path_join(dir, "model.safetensors");
    if (!single) return fr_error(FR_ERR_NOMEM, "out of memory");
    if (stat(single, &st) != 0) {
        free(single);
        return fr_error(FR_ERR_IO,
                        "%s: neither model.safetensors nor model.safetensors.index.json exists", dir);
    }
    s->files = calloc(1, sizeof *s->files);
    if (!s->files) {
        free(single);
        return fr_error(FR_ERR_NOMEM, "out of memory");
    }
    rc = fr_st_open(&s->files[0], single);
    free(single);
    if (rc != FR_OK) {
        fr_st_set_close(s);
        return rc;
    }
    s->n_files = 1;
    return FR_OK;
}

void fr_st_set_close(fr_st_set *s) {
    if (!s) return;
    for (int i = 0; i < s->n_files; i++) fr_st_close(&s->files[i]);
    free(s->files);
    memset(s, 0, sizeof *s);
}

const fr_st_tensor *fr_st_set_find(const fr_st_set *s, const char *name) {
    if (!s) return NULL;
    for (int i = 0; i < s->n_files; i++) {
        const fr_st_tensor *t = fr_st_find(&s->files[i], name);
        if (t) return t;
    }
    return NULL;
}

/* ------------------------------------------------------------------ writing */

typedef struct {
    char *buf;
    size_t len, cap;
    int oom;
} strbuf;

static void sb_put(strbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *nb = realloc(b->buf, cap);
        if (!nb) {
            b->oom = 1;
            return;
        }
        b->buf = nb;
        b->cap = cap;
    }
    memcpy(b->buf + b->len, s, n);
    b->len += n;
    b->buf[b->len] = 0;
}

static void sb_puts(strbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

static void sb_printf(strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(strbuf *b, const char *fmt, ...) {
    char tmp[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0) sb_put(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* JSON string literal; s must be valid UTF-8 (checked by the caller). */
static void sb_json_string(strbuf *b, const char *s) {
    sb_put(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        switch (*p) {
        case '"': sb_put(b, "\\\"", 2); break;
        case '\\': sb_put(b, "\\\\", 2); break;
        case '\n': sb_put(b, "\\n", 2); break;
        case '\r': sb_put(b, "\\r", 2); break;
        case '\t': sb_put(b, "\\t", 2); break;
        default:
            if (*p < 0x20) sb_printf(b, "\\u%04x", *p);
            else sb_put(b, (const char *)p, 1);
        }
    }
    sb_put(b, "\"", 1);
}

static int valid_utf8(const char *str) {
    const unsigned char *s = (const unsigned char *)str;
    while (*s) {
        unsigned c = *s;
        int extra;
        unsigned min;
        if (c < 0x80) {
            s++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            extra = 1, min = 0x80, c &= 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            extra = 2, min = 0x800, c &= 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            extra = 3, min = 0x10000, c &= 0x07;
        } else {
            return 0;
        }
        s++;
        for (int i = 0; i < extra; i++, s++) {
            if ((*s & 0xc0) != 0x80) return 0;
            c = (c << 6) | (*s & 0x3f);
        }
        if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff)) return 0;
    }
    return 1;
}

static int write_all(int fd, const void *data, size_t len) {
    const char *p = data;
    while (len > 0) {
        ssize_t w = write(fd, p, len > (1u << 30) ? (1u << 30) : len);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

static int cmp_cstr_ptr(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

int fr_st_write(const char *path, const fr_st_entry *entries, int n,
                const char *const *meta_keys, const char *const *meta_values, int n_meta) {
    fr_clear_error();
    if (!path || n < 0 || (n > 0 && !entries) || n_meta < 0 ||
        (n_meta > 0 && (!meta_keys || !meta_values)))
        return fr_error(FR_ERR_ARG, "fr_st_write: invalid arguments");

    int rc = FR_OK;
    size_t *nbytes = calloc((size_t)n + 1, sizeof *nbytes);
    size_t *offset = calloc((size_t)n + 1, sizeof *offset);
    int *order = calloc((size_t)n + 1, sizeof *order);
    const char **names = calloc((size_t)n + 1, sizeof *names);
    strbuf hb = {0};
    char *tmp = NULL;
    int fd = -1;
    if (!nbytes || !offset || !order || !names) {
        rc = fr_error(FR_ERR_NOMEM, "out of memory writing %s", path);
        goto done;
    }

    for (int i = 0; i < n; i++) {
        const fr_st_entry *e = &entries[i];
        if (!e->name || !e->name[0] || strcmp(e->name, "__metadata__") == 0 || !valid_utf8(e->name)) {
            rc = fr_error(FR_ERR_ARG, "%s: entry %d has an invalid tensor name", path, i);
            goto done;
        }
        if ((int)e->dtype < 0 || e->dtype >= FR_DT_COUNT) {
            rc = fr_error(FR_ERR_ARG, "%s: tensor '%s': invalid dtype %d", path, e->name,
                          (int)e->dtype);
            goto done;
        }
        if (e->ndim < 0 || e->ndim > FR_ST_MAX_DIMS) {
            rc = fr_error(FR_ERR_ARG, "%s: tensor '%s': invalid ndim %d", path, e->name, e->ndim);
            goto done;
        }
        size_t numel = 1;
        for (int d = 0; d < e->ndim; d++) {
            if (e->shape[d] < 0 || (uint64_t)e->shape[d] > SIZE_MAX ||
                __builtin_mul_overflow(numel, (size_t)e->shape[d], &numel)) {
                rc = fr_error(FR_ERR_ARG, "%s: tensor '%s': invalid shape", path, e->name);
                goto done;
            }
        }
        if (__builtin_mul_overflow(numel, dtype_info[e->dtype].size, &nbytes[i])) {
            rc = fr_error(FR_ERR_ARG, "%s: tensor '%s': size overflows", path, e->name);
            goto done;
        }
        if (nbytes[i] > 0 && !e->data) {
            rc = fr_error(FR_ERR_ARG, "%s: tensor '%s': NULL data", path, e->name);
            goto done;
        }
        names[i] = e->name;
    }
    if (n > 1) {
        qsort(names, (size_t)n, sizeof *names, cmp_cstr_ptr);
        for (int i = 1; i < n; i++) {
            if (strcmp(names[i - 1], names[i]) == 0) {
                rc = fr_error(FR_ERR_ARG, "%s: tensor '%s' given twice", path, names[i]);
                goto done;
            }
        }
    }
    for (int i = 0; i < n_meta; i++) {
        if (!meta_keys[i] || !meta_values[i] || strcmp(meta_keys[i], "__metadata__") == 0 ||
            !valid_utf8(meta_keys[i]) || !valid_utf8(meta_values[i])) {
            rc = fr_error(FR_ERR_ARG, "%s: metadata pair %d is invalid", path, i);
            goto done;
        }
    }

    /* data layout: element size descending (stable), contiguous */
    int k = 0;
    for (size_t es = 8; es >= 1; es /= 2)
        for (int i = 0; i < n; i++)
            if (dtype_info[entries[i].dtype].size == es) order[k++] = i;
    size_t pos = 0;
    for (int j = 0; j < n; j++) {
        int i = order[j];
        offset[i] = pos;
        if (__builtin_add_overflow(pos, nbytes[i], &pos)) {
            rc = fr_error(FR_ERR_ARG, "%s: total size overflows", path);
            goto done;
        }
    }

    /* header, in the caller's order */
    sb_puts(&hb, "{");
    int first = 1;
    if (n_meta > 0) {
        sb_puts(&hb, "\"__metadata__\":{");
        for (int i = 0; i < n_meta; i++) {
            if (i) sb_puts(&hb, ",");
            sb_json_string(&hb, meta_keys[i]);
            sb_puts(&hb, ":");
            sb_json_string(&hb, meta_values[i]);
        }
        sb_puts(&hb, "}");
        first = 0;
    }
    for (int i = 0; i < n; i++) {
        const fr_st_entry *e = &entries[i];
        if (!first) sb_puts(&hb, ",");
        first = 0;
        sb_json_string(&hb, e->name);
        sb_printf(&hb, ":{\"dtype\":\"%s\",\"shape\":[", dtype_info[e->dtype].name);
        for (int d = 0; d < e->ndim; d++) sb_printf(&hb, "%s%lld", d ? "," : "", (long long)e->shape[d]);
        sb_printf(&hb, "],\"data_offsets\":[%zu,%zu]}", offset[i], offset[i] + nbytes[i]);
    }
    sb_puts(&hb, "}");
    while (!hb.oom && hb.len % 8 != 0) sb_puts(&hb, " ");
    if (hb.oom) {
        rc = fr_error(FR_ERR_NOMEM, "out of memory building the header of %s", path);
        goto done;
    }
    if ((uint64_t)hb.len > FR_ST_MAX_HEADER) {
        rc = fr_error(FR_ERR_ARG, "%s: header would exceed 100 MB", path);
        goto done;
    }

    /* temp file, fsync, rename, fsync directory */
    size_t tn = strlen(path) + 32;
    tmp = malloc(tn);
    if (!tmp) {
        rc = fr_error(FR_ERR_NOMEM, "out of memory");
        goto done;
    }
    snprintf(tmp, tn, "%s.tmp.%ld", path, (long)getpid());
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        rc = fr_error(FR_ERR_IO, "cannot create %s: %s", tmp, strerror(errno));
        goto done;
    }
    unsigned char lenbytes[8];
    uint64_t hl = hb.len;
    for (int i = 0; i < 8; i++) lenbytes[i] = (unsigned char)(hl >> (8 * i));
    if (write_all(fd, lenbytes, 8) != 0 || write_all(fd, hb.buf, hb.len) != 0) goto write_err;
    for (int j = 0; j < n; j++) {
        int i = order[j];
        if (nbytes[i] && write_all(fd, entries[i].data, nbytes[i]) != 0) goto write_err;
    }
    if (fsync(fd) != 0) goto write_err;
    if (close(fd) != 0) {
        fd = -1;
        goto write_err;
    }
    fd = -1;
    if (rename(tmp, path) != 0) {
        rc = fr_error(FR_ERR_IO, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
        unlink(tmp);
        goto done;
    }
    {
        char *copy = strdup(path);
        if (copy) {
            int dfd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            if (dfd >= 0) {
                fsync(dfd); /* best effort */
                close(dfd);
            }
            free(copy);
        }
    }
    goto done;

write_err:
    rc = fr_error(FR_ERR_IO, "cannot write %s: %s", tmp, strerror(errno));
    if (fd >= 0) close(fd);
    fd = -1;
    unlink(tmp);
done:
    free(nbytes);
    free(offset);
    free(order);
    free(names);
    free(hb.buf);
    free(tmp);
    return rc;
}
