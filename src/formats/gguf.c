/* gguf.c — GGUF reader (bounds-checked), streaming writer and ggml block formats (gguf.h).
 *
 * Block formats, as ggml documents them (32 elements per block, consecutive along ne[0]):
 *   Q8_0: { f16 d; int8 q[32]; }            x[i] = q[i] * d,          d = max|x| / 127,
 *                                            q = round-half-away(x / d)
 *   Q4_0: { f16 d; u8 q[16]; }               x[i] = ((q[i] & 15) - 8) * d,
 *                                            x[i + 16] = ((q[i] >> 4) - 8) * d,
 *         d = m / -8 where m is the element of largest magnitude (first one on ties),
 *         nibble = min(15, trunc(x / d + 8.5))
 */
#define _GNU_SOURCE
#include "formats/gguf.h"
#include "formats/kquant.h"
#include "core/internal.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "gguf.c assumes a little-endian host"
#endif

#define GGUF_MAGIC 0x46554747u /* "GGUF" */
#define GGUF_MAX_KEY 65535u
#define GGML_MAX_NAME 64        /* ggml's tensor name buffer, NUL included */

/* ------------------------------------------------------------------ types */

static const struct {
    const char *name;
    int blck;
    size_t bytes;
} type_info[] = {
    [FR_GGML_F32] = {"F32", 1, 4},       [FR_GGML_F16] = {"F16", 1, 2},
    [FR_GGML_Q4_0] = {"Q4_0", 32, 18},   [FR_GGML_Q4_1] = {"Q4_1", 32, 20},
    [FR_GGML_Q5_0] = {"Q5_0", 32, 22},   [FR_GGML_Q5_1] = {"Q5_1", 32, 24},
    [FR_GGML_Q8_0] = {"Q8_0", 32, 34},   [FR_GGML_Q8_1] = {"Q8_1", 32, 36},
    [FR_GGML_Q2_K] = {"Q2_K", 256, 84},  [FR_GGML_Q3_K] = {"Q3_K", 256, 110},
    [FR_GGML_Q4_K] = {"Q4_K", 256, 144}, [FR_GGML_Q5_K] = {"Q5_K", 256, 176},
    [FR_GGML_Q6_K] = {"Q6_K", 256, 210}, [FR_GGML_Q8_K] = {"Q8_K", 256, 292},
    [FR_GGML_I8] = {"I8", 1, 1},         [FR_GGML_I16] = {"I16", 1, 2},
    [FR_GGML_I32] = {"I32", 1, 4},       [FR_GGML_I64] = {"I64", 1, 8},
    [FR_GGML_F64] = {"F64", 1, 8},       [FR_GGML_BF16] = {"BF16", 1, 2},
};
#define N_TYPES ((int)(sizeof type_info / sizeof type_info[0]))

const char *fr_ggml_type_name(int type) {
    return type >= 0 && type < N_TYPES ? type_info[type].name : NULL;
}
int fr_ggml_block_elems(int type) { return fr_ggml_type_name(type) ? type_info[type].blck : 0; }
size_t fr_ggml_block_bytes(int type) { return fr_ggml_type_name(type) ? type_info[type].bytes : 0; }
int fr_ggml_type_from_name(const char *name) {
    for (int t = 0; name && t < N_TYPES; t++)
        if (type_info[t].name && strcasecmp(type_info[t].name, name) == 0) return t;
    return -1;
}

/* ------------------------------------------------------------------ scalar formats */

float fr_gguf_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ffu;
    float r;
    if (exp == 0) r = ldexpf((float)man, -24);
    else if (exp == 31) r = man ? NAN : INFINITY;
    else r = ldexpf((float)(man | 0x400u), (int)exp - 25);
    uint32_t bits;
    memcpy(&bits, &r, 4);
    bits |= sign;
    memcpy(&r, &bits, 4);
    return r;
}

uint16_t fr_gguf_f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return sign | 0x7e00u;          /* NaN */
    if (ax >= 0x477ff000u) return sign | 0x7c00u;         /* >= 65520 rounds to inf */
    if (ax < 0x38800000u) {                                /* below 2^-14: subnormal half */
        float a;
        memcpy(&a, &ax, 4);
        return sign | (uint16_t)nearbyintf(a * 16777216.0f); /* units of 2^-24, ties to even */
    }
    uint32_t h = ((((ax >> 23) - 127 + 15) << 10) | ((ax & 0x7fffffu) >> 13));
    uint32_t rem = ax & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1))) h++;
    return sign | (uint16_t)h;
}

uint16_t fr_gguf_f32_to_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u);
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}

static float bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* ------------------------------------------------------------------ blocks */

static void quant_q8_0(const float *x, unsigned char *out) {
    float amax = 0.0f;
    for (int i = 0; i < 32; i++) amax = fmaxf(amax, fabsf(x[i]));
    float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    uint16_t dh = fr_gguf_f32_to_f16(d);
    memcpy(out, &dh, 2);
    for (int i = 0; i < 32; i++) out[2 + i] = (unsigned char)(int8_t)roundf(x[i] * id);
}

static void quant_q4_0(const float *x, unsigned char *out) {
    float amax = 0.0f, m = 0.0f;
    for (int i = 0; i < 32; i++)
        if (fabsf(x[i]) > amax) { amax = fabsf(x[i]); m = x[i]; }
    float d = m / -8.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    uint16_t dh = fr_gguf_f32_to_f16(d);
    memcpy(out, &dh, 2);
    for (int j = 0; j < 16; j++) {
        float a = x[j] * id + 8.5f, b = x[16 + j] * id + 8.5f;
        int qa = (int)a, qb = (int)b; /* a, b >= 0.5 here: truncation */
        if (qa > 15) qa = 15;
        if (qb > 15) qb = 15;
        if (qa < 0) qa = 0;
        if (qb < 0) qb = 0;
        out[2 + j] = (unsigned char)(qa | (qb << 4));
    }
}

int fr_ggml_quantize(int type, const float *src, void *dst, size_t n) {
    unsigned char *o = dst;
    switch (type) {
    case FR_GGML_F32:
        if (n) memcpy(o, src, n * 4);
        return FR_OK;
    case FR_GGML_F16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h = fr_gguf_f32_to_f16(src[i]);
            memcpy(o + 2 * i, &h, 2);
        }
        return FR_OK;
    case FR_GGML_BF16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h = fr_gguf_f32_to_bf16(src[i]);
            memcpy(o + 2 * i, &h, 2);
        }
        return FR_OK;
    case FR_GGML_Q8_0:
    case FR_GGML_Q4_0:
        if (n % 32) return fr_error(FR_ERR_ARG, "%s needs a multiple of 32 elements, got %zu", fr_ggml_type_name(type), n);
        for (size_t b = 0; b < n / 32; b++) {
            if (type == FR_GGML_Q8_0) quant_q8_0(src + 32 * b, o + 34 * b);
            else quant_q4_0(src + 32 * b, o + 18 * b);
        }
        return FR_OK;
    case FR_GGML_Q4_K: case FR_GGML_Q5_K: case FR_GGML_Q6_K: { /* formats/kquant.c's quantizer */
        const fr_kq_type k = type == FR_GGML_Q4_K ? FR_KQ_Q4_K : type == FR_GGML_Q5_K ? FR_KQ_Q5_K : FR_KQ_Q6_K;
        if (n % FR_QK_K) return fr_error(FR_ERR_ARG, "%s needs a multiple of 256 elements, got %zu", fr_ggml_type_name(type), n);
        for (size_t i = 0; i < n; i++)
            if (!isfinite(src[i])) return fr_error(FR_ERR_ARG, "a non-finite value cannot be encoded as %s", fr_ggml_type_name(type));
        /* every super-block on its own (the scale searches cost ~0.1 us a value: a 680M-parameter
         * Q4_K_M export took 49 s on one core), so the threads share them and the bytes are the
         * same on any number of threads */
        const long nsb = (long)(n / FR_QK_K);
        const size_t bb = fr_kq_block_bytes(k);
#pragma omp parallel for schedule(dynamic, 64) if (nsb >= 256)
        for (long b = 0; b < nsb; b++) fr_kq_quantize_row(k, src + (size_t)b * FR_QK_K, o + (size_t)b * bb, FR_QK_K);
        return FR_OK;
    }
    default:
        return fr_error(FR_ERR_UNSUPPORTED, "encoding ggml type %s (%d) is not supported",
                        fr_ggml_type_name(type) ? fr_ggml_type_name(type) : "?", type);
    }
}

int fr_ggml_dequantize(int type, const void *src, float *dst, size_t n) {
    const unsigned char *p = src;
    switch (type) {
    case FR_GGML_F32:
        if (n) memcpy(dst, p, n * 4);
        return FR_OK;
    case FR_GGML_F16:
    case FR_GGML_BF16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            dst[i] = type == FR_GGML_F16 ? fr_gguf_f16_to_f32(h) : bf16_to_f32(h);
        }
        return FR_OK;
    case FR_GGML_Q8_0:
    case FR_GGML_Q4_0:
        if (n % 32) return fr_error(FR_ERR_ARG, "%s needs a multiple of 32 elements, got %zu", fr_ggml_type_name(type), n);
        for (size_t b = 0; b < n / 32; b++) {
            const unsigned char *blk = p + b * (type == FR_GGML_Q8_0 ? 34 : 18);
            uint16_t dh;
            memcpy(&dh, blk, 2);
            float d = fr_gguf_f16_to_f32(dh);
            float *x = dst + 32 * b;
            if (type == FR_GGML_Q8_0) {
                for (int i = 0; i < 32; i++) x[i] = (float)(int8_t)blk[2 + i] * d;
            } else {
                for (int j = 0; j < 16; j++) {
                    x[j] = (float)((blk[2 + j] & 15) - 8) * d;
                    x[j + 16] = (float)((blk[2 + j] >> 4) - 8) * d;
                }
            }
        }
        return FR_OK;
    case FR_GGML_Q4_K: case FR_GGML_Q5_K: case FR_GGML_Q6_K: { /* formats/kquant.c */
        const fr_kq_type k = type == FR_GGML_Q4_K ? FR_KQ_Q4_K : type == FR_GGML_Q5_K ? FR_KQ_Q5_K : FR_KQ_Q6_K;
        if (n % FR_QK_K) return fr_error(FR_ERR_ARG, "%s needs a multiple of 256 elements, got %zu", fr_ggml_type_name(type), n);
        const size_t bb = fr_kq_block_bytes(k);
        for (size_t b = 0; b < n / FR_QK_K; b++) fr_kq_dequantize_row(k, p + b * bb, dst + b * FR_QK_K, FR_QK_K);
        return FR_OK;
    }
    case FR_GGML_Q4_1: /* [d][m][16 bytes]: x = d q + m, nibbles as Q4_0's */
        if (n % 32) return fr_error(FR_ERR_ARG, "Q4_1 needs a multiple of 32 elements, got %zu", n);
        for (size_t b = 0; b < n / 32; b++) {
            const unsigned char *blk = p + b * 20;
            uint16_t dh, mh;
            memcpy(&dh, blk, 2);
            memcpy(&mh, blk + 2, 2);
            const float d = fr_gguf_f16_to_f32(dh), m = fr_gguf_f16_to_f32(mh);
            float *x = dst + 32 * b;
            for (int j = 0; j < 16; j++) {
                x[j] = d * (float)(blk[4 + j] & 15) + m;
                x[j + 16] = d * (float)(blk[4 + j] >> 4) + m;
            }
        }
        return FR_OK;
    default:
        return fr_error(FR_ERR_UNSUPPORTED, "decoding ggml type %s (%d) is not supported",
                        fr_ggml_type_name(type) ? fr_ggml_type_name(type) : "?", type);
    }
}

/* ------------------------------------------------------------------ reader */

typedef struct {
    const unsigned char *p;
    size_t pos, size;
} cursor;

static int need(cursor *c, size_t n, const char *what) {
    if (n > c->size - c->pos)
        return fr_error(FR_ERR_FORMAT, "GGUF: truncated at byte %zu reading %s (%zu bytes needed, %zu left)", c->pos,
                        what, n, c->size - c->pos);
    return FR_OK;
}

static int rd_u32(cursor *c, uint32_t *v, const char *what) {
    FR_CHECK(need(c, 4, what));
    memcpy(v, c->p + c->pos, 4);
    c->pos += 4;
    return FR_OK;
}

static int rd_u64(cursor *c, uint64_t *v, const char *what) {
    FR_CHECK(need(c, 8, what));
    memcpy(v, c->p + c->pos, 8);
    c->pos += 8;
    return FR_OK;
}

static int rd_str(cursor *c, const char **s, size_t *len, const char *what) {
    uint64_t n;
    FR_CHECK(rd_u64(c, &n, what));
    if (n > c->size - c->pos)
        return fr_error(FR_ERR_FORMAT, "GGUF: %s at byte %zu has length %llu, past the end of the file", what,
                        c->pos - 8, (unsigned long long)n);
    *s = (const char *)c->p + c->pos;
    *len = (size_t)n;
    c->pos += (size_t)n;
    return FR_OK;
}

static size_t scalar_size(uint32_t t) {
    switch (t) {
    case FR_GGUF_U8: case FR_GGUF_I8: case FR_GGUF_BOOL: return 1;
    case FR_GGUF_U16: case FR_GGUF_I16: return 2;
    case FR_GGUF_U32: case FR_GGUF_I32: case FR_GGUF_F32: return 4;
    case FR_GGUF_U64: case FR_GGUF_I64: case FR_GGUF_F64: return 8;
    default: return 0;
    }
}

static char *dup_checked(const char *s, size_t len, const char *what, size_t max) {
    if (len > max || memchr(s, 0, len)) {
        fr_error(FR_ERR_FORMAT, "GGUF: %s is longer than %zu bytes or contains a NUL byte", what, max);
        return NULL;
    }
    char *d = malloc(len + 1);
    if (!d) {
        fr_error(FR_ERR_NOMEM, "out of memory");
        return NULL;
    }
    memcpy(d, s, len);
    d[len] = 0;
    return d;
}

static int parse_value(cursor *c, fr_gguf_kv *kv) {
    uint32_t t;
    FR_CHECK(rd_u32(c, &t, "a value type"));
    kv->type = (fr_gguf_vtype)t;
    size_t start = c->pos;
    if (t == FR_GGUF_STRING) {
        const char *s;
        size_t len;
        FR_CHECK(rd_str(c, &s, &len, "a string value"));
    } else if (t == FR_GGUF_ARRAY) {
        uint32_t at;
        uint64_t n;
        FR_CHECK(rd_u32(c, &at, "an array type"));
        FR_CHECK(rd_u64(c, &n, "an array length"));
        kv->arr_type = (fr_gguf_vtype)at;
        kv->arr_n = n;
        start = c->pos;
        if (at == FR_GGUF_STRING) {
            if (n > (c->size - c->pos) / 8)
                return fr_error(FR_ERR_FORMAT, "GGUF: key '%s': array of %llu strings does not fit in the file", kv->key,
                                (unsigned long long)n);
            /* each string's offset, so that fr_gguf_arr_str finds element i at once (a
             * tokenizer's 100k+ tokens were a quadratic walk) */
            kv->str_off = malloc((size_t)(n ? n : 1) * sizeof *kv->str_off);
            if (!kv->str_off) return fr_error(FR_ERR_NOMEM, "out of memory for the GGUF key '%s'", kv->key);
            for (uint64_t i = 0; i < n; i++) {
                const char *s;
                size_t len;
                kv->str_off[i] = c->pos - start;
                FR_CHECK(rd_str(c, &s, &len, "an array string"));
            }
        } else {
            size_t es = scalar_size(at);
            if (!es)
                return fr_error(FR_ERR_FORMAT, "GGUF: key '%s': array element type %u is not supported", kv->key, at);
            if (n > (c->size - c->pos) / es)
                return fr_error(FR_ERR_FORMAT, "GGUF: key '%s': array of %llu elements does not fit in the file", kv->key,
                                (unsigned long long)n);
            c->pos += (size_t)n * es;
        }
    } else {
        size_t es = scalar_size(t);
        if (!es) return fr_error(FR_ERR_FORMAT, "GGUF: key '%s' has unknown value type %u", kv->key, t);
        FR_CHECK(need(c, es, kv->key));
        c->pos += es;
    }
    kv->val = c->p + start;
    kv->val_len = c->pos - start;
    return FR_OK;
}

static int cmp_str_ptr(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Report the first name that occurs twice in names[n] (sorted copy). */
static int check_unique(char **names, int n, const char *what) {
    if (n < 2) return FR_OK;
    char **s = malloc((size_t)n * sizeof *s);
    if (!s) return fr_error(FR_ERR_NOMEM, "out of memory");
    memcpy(s, names, (size_t)n * sizeof *s);
    qsort(s, (size_t)n, sizeof *s, cmp_str_ptr);
    int rc = FR_OK;
    for (int i = 1; i < n && rc == FR_OK; i++)
        if (strcmp(s[i - 1], s[i]) == 0) rc = fr_error(FR_ERR_FORMAT, "GGUF: duplicate %s '%s'", what, s[i]);
    free(s);
    return rc;
}

void fr_gguf_close(fr_gguf *g) {
    if (!g) return;
    for (int i = 0; i < g->n_kv; i++) free(g->kv[i].key), free(g->kv[i].str_off);
    for (int i = 0; i < g->n_tensors; i++) free(g->tensors[i].name);
    free(g->kv);
    free(g->tensors);
    if (g->map) munmap(g->map, g->map_size);
    memset(g, 0, sizeof *g);
}

static int parse(fr_gguf *g, const unsigned char *buf, size_t size) {
    cursor c = {buf, 0, size};
    uint32_t magic, version;
    uint64_t n_tensors, n_kv;
    FR_CHECK(rd_u32(&c, &magic, "the magic"));
    if (magic != GGUF_MAGIC) return fr_error(FR_ERR_FORMAT, "GGUF: bad magic (not a GGUF file)");
    FR_CHECK(rd_u32(&c, &version, "the version"));
    if (version != 2 && version != 3)
        return fr_error(FR_ERR_FORMAT, "GGUF: version %u is not supported (2 or 3)", version);
    g->version = version;
    FR_CHECK(rd_u64(&c, &n_tensors, "the tensor count"));
    FR_CHECK(rd_u64(&c, &n_kv, "the metadata count"));
    /* each entry takes at least 13 (metadata) / 24 (tensor) bytes: bound the allocations */
    if (n_kv > (size - c.pos) / 13 || n_kv > 1000000)
        return fr_error(FR_ERR_FORMAT, "GGUF: %llu metadata entries cannot fit in %zu bytes", (unsigned long long)n_kv, size);
    if (n_tensors > (size - c.pos) / 24 || n_tensors > 10000000)
        return fr_error(FR_ERR_FORMAT, "GGUF: %llu tensors cannot fit in %zu bytes", (unsigned long long)n_tensors, size);
    g->kv = calloc((size_t)n_kv + 1, sizeof *g->kv);
    g->tensors = calloc((size_t)n_tensors + 1, sizeof *g->tensors);
    if (!g->kv || !g->tensors) return fr_error(FR_ERR_NOMEM, "out of memory");

    g->alignment = FR_GGUF_DEFAULT_ALIGNMENT;
    for (uint64_t i = 0; i < n_kv; i++) {
        fr_gguf_kv *kv = &g->kv[g->n_kv];
        const char *k;
        size_t klen;
        FR_CHECK(rd_str(&c, &k, &klen, "a metadata key"));
        if (!(kv->key = dup_checked(k, klen, "a metadata key", GGUF_MAX_KEY))) return FR_ERR_FORMAT;
        g->n_kv++;
        FR_CHECK(parse_value(&c, kv));
        if (strcmp(kv->key, "general.alignment") == 0) {
            uint32_t a;
            if (kv->type != FR_GGUF_U32) return fr_error(FR_ERR_FORMAT, "GGUF: general.alignment is not a u32");
            memcpy(&a, kv->val, 4);
            if (a == 0 || (a & (a - 1)) || a > (1u << 20))
                return fr_error(FR_ERR_FORMAT, "GGUF: general.alignment %u is not a power of two <= 2^20", a);
            g->alignment = a;
        }
    }
    char **names = malloc(((size_t)g->n_kv + (size_t)n_tensors + 1) * sizeof *names);
    if (!names) return fr_error(FR_ERR_NOMEM, "out of memory");
    for (int i = 0; i < g->n_kv; i++) names[i] = g->kv[i].key;
    int rc = check_unique(names, g->n_kv, "metadata key");
    free(names);
    if (rc != FR_OK) return rc;

    for (uint64_t i = 0; i < n_tensors; i++) {
        fr_gguf_tensor *t = &g->tensors[g->n_tensors];
        const char *nm;
        size_t nlen;
        uint32_t nd, type;
        FR_CHECK(rd_str(&c, &nm, &nlen, "a tensor name"));
        if (!(t->name = dup_checked(nm, nlen, "a tensor name", GGML_MAX_NAME - 1))) return FR_ERR_FORMAT;
        g->n_tensors++;
        FR_CHECK(rd_u32(&c, &nd, "a tensor's dimension count"));
        if (nd < 1 || nd > FR_GGUF_MAX_DIMS)
            return fr_error(FR_ERR_FORMAT, "GGUF: tensor '%s' has %u dimensions (1..%d)", t->name, nd, FR_GGUF_MAX_DIMS);
        t->n_dims = (int)nd;
        uint64_t numel = 1;
        for (int d = 0; d < FR_GGUF_MAX_DIMS; d++) {
            uint64_t ne = 1;
            if (d < (int)nd) FR_CHECK(rd_u64(&c, &ne, "a tensor dimension"));
            if (ne > (uint64_t)INT64_MAX || __builtin_mul_overflow(numel, ne, &numel) || numel > ((uint64_t)1 << 50))
                return fr_error(FR_ERR_FORMAT, "GGUF: tensor '%s' has an impossible shape", t->name);
            t->ne[d] = (int64_t)ne;
        }
        FR_CHECK(rd_u32(&c, &type, "a tensor type"));
        t->type = (int)type;
        if (!fr_ggml_type_name((int)type))
            return fr_error(FR_ERR_UNSUPPORTED, "GGUF: tensor '%s' has ggml type %u, unknown to this reader", t->name, type);
        int blk = type_info[type].blck;
        if (t->ne[0] % blk)
            return fr_error(FR_ERR_FORMAT, "GGUF: tensor '%s': ne[0] = %lld is not a multiple of the %s block (%d)", t->name,
                            (long long)t->ne[0], type_info[type].name, blk);
        t->numel = (size_t)numel;
        t->nbytes = (size_t)(numel / (uint64_t)blk) * type_info[type].bytes;
        FR_CHECK(rd_u64(&c, &t->offset, "a tensor offset"));
        if (t->offset % g->alignment)
            return fr_error(FR_ERR_FORMAT, "GGUF: tensor '%s': offset %llu is not a multiple of the alignment %zu", t->name,
                            (unsigned long long)t->offset, g->alignment);
    }
    names = malloc(((size_t)g->n_tensors + 1) * sizeof *names);
    if (!names) return fr_error(FR_ERR_NOMEM, "out of memory");
    for (int i = 0; i < g->n_tensors; i++) names[i] = g->tensors[i].name;
    rc = check_unique(names, g->n_tensors, "tensor name");
    free(names);
    if (rc != FR_OK) return rc;

    size_t data = c.pos + (g->alignment - c.pos % g->alignment) % g->alignment;
    if (g->n_tensors > 0 && data > size) return fr_error(FR_ERR_FORMAT, "GGUF: the data region starts past the end of the file");
    g->data_offset = data;
    for (int i = 0; i < g->n_tensors; i++) {
        fr_gguf_tensor *t = &g->tensors[i];
        size_t avail = size - data;
        if (t->offset > avail || t->nbytes > avail - t->offset)
            return fr_error(FR_ERR_FORMAT, "GGUF: tensor '%s' (%zu bytes at offset %llu) extends past the end of the file",
                            t->name, t->nbytes, (unsigned long long)t->offset);
        t->data = buf + data + t->offset;
    }
    return FR_OK;
}

int fr_gguf_parse(fr_gguf *g, const void *buf, size_t size) {
    fr_clear_error();
    if (!g || (!buf && size)) return fr_error(FR_ERR_ARG, "fr_gguf_parse: NULL argument");
    memset(g, 0, sizeof *g);
    int rc = parse(g, buf, size);
    if (rc != FR_OK) fr_gguf_close(g);
    return rc;
}

int fr_gguf_open(fr_gguf *g, const char *path) {
    fr_clear_error();
    if (!g || !path) return fr_error(FR_ERR_ARG, "fr_gguf_open: NULL argument");
    memset(g, 0, sizeof *g);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return fr_error(FR_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return fr_error(FR_ERR_IO, "%s: not a regular file", path);
    }
    size_t size = (size_t)st.st_size;
    void *map = size ? mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0) : NULL;
    close(fd);
    if (size && map == MAP_FAILED) return fr_error(FR_ERR_IO, "cannot map %s: %s", path, strerror(errno));
    int rc = parse(g, map, size);
    g->map = map;
    g->map_size = size;
    if (rc != FR_OK) {
        fr_gguf_close(g);
        return fr_error_context(rc, "%s", path);
    }
    return FR_OK;
}

const fr_gguf_kv *fr_gguf_find_kv(const fr_gguf *g, const char *key) {
    for (int i = 0; g && key && i < g->n_kv; i++)
        if (strcmp(g->kv[i].key, key) == 0) return &g->kv[i];
    return NULL;
}

const fr_gguf_tensor *fr_gguf_find_tensor(const fr_gguf *g, const char *name) {
    for (int i = 0; g && name && i < g->n_tensors; i++)
        if (strcmp(g->tensors[i].name, name) == 0) return &g->tensors[i];
    return NULL;
}

static int scalar_int(fr_gguf_vtype t, const unsigned char *p, int64_t *out) {
    switch (t) {
    case FR_GGUF_U8: case FR_GGUF_BOOL: *out = p[0]; return FR_OK;
    case FR_GGUF_I8: *out = (int8_t)p[0]; return FR_OK;
    case FR_GGUF_U16: { uint16_t v; memcpy(&v, p, 2); *out = v; return FR_OK; }
    case FR_GGUF_I16: { int16_t v; memcpy(&v, p, 2); *out = v; return FR_OK; }
    case FR_GGUF_U32: { uint32_t v; memcpy(&v, p, 4); *out = v; return FR_OK; }
    case FR_GGUF_I32: { int32_t v; memcpy(&v, p, 4); *out = v; return FR_OK; }
    case FR_GGUF_U64: {
        uint64_t v;
        memcpy(&v, p, 8);
        if (v > (uint64_t)INT64_MAX) return fr_error(FR_ERR_FORMAT, "GGUF: u64 value %llu does not fit in int64", (unsigned long long)v);
        *out = (int64_t)v;
        return FR_OK;
    }
    case FR_GGUF_I64: memcpy(out, p, 8); return FR_OK;
    default: return fr_error(FR_ERR_FORMAT, "GGUF: value of type %d is not an integer", (int)t);
    }
}

int fr_gguf_kv_int(const fr_gguf_kv *kv, int64_t *out) {
    if (!kv || !out) return fr_error(FR_ERR_ARG, "fr_gguf_kv_int: NULL argument");
    int rc = scalar_int(kv->type, kv->val, out);
    if (rc != FR_OK) return fr_error(rc, "GGUF: key '%s' is not an integer", kv->key);
    return FR_OK;
}

int fr_gguf_kv_float(const fr_gguf_kv *kv, double *out) {
    if (!kv || !out) return fr_error(FR_ERR_ARG, "fr_gguf_kv_float: NULL argument");
    if (kv->type == FR_GGUF_F32) { float f; memcpy(&f, kv->val, 4); *out = f; return FR_OK; }
    if (kv->type == FR_GGUF_F64) { memcpy(out, kv->val, 8); return FR_OK; }
    int64_t v = 0;
    if (scalar_int(kv->type, kv->val, &v) != FR_OK) return fr_error(FR_ERR_FORMAT, "GGUF: key '%s' is not a number", kv->key);
    *out = (double)v;
    return FR_OK;
}

int fr_gguf_kv_str(const fr_gguf_kv *kv, const char **s, size_t *len) {
    if (!kv || !s || !len) return fr_error(FR_ERR_ARG, "fr_gguf_kv_str: NULL argument");
    if (kv->type != FR_GGUF_STRING) return fr_error(FR_ERR_FORMAT, "GGUF: key '%s' is not a string", kv->key);
    uint64_t n;
    memcpy(&n, kv->val, 8);
    *s = (const char *)kv->val + 8;
    *len = (size_t)n;
    return FR_OK;
}

int fr_gguf_arr_str(const fr_gguf_kv *kv, uint64_t i, const char **s, size_t *len) {
    if (!kv || !s || !len) return fr_error(FR_ERR_ARG, "fr_gguf_arr_str: NULL argument");
    if (kv->type != FR_GGUF_ARRAY || kv->arr_type != FR_GGUF_STRING || i >= kv->arr_n)
        return fr_error(FR_ERR_FORMAT, "GGUF: key '%s' has no string element %llu", kv->key, (unsigned long long)i);
    const size_t pos = kv->str_off[i]; /* offsets and lengths were validated by the parser */
    uint64_t n;
    memcpy(&n, kv->val + pos, 8);
    *s = (const char *)kv->val + pos + 8;
    *len = (size_t)n;
    return FR_OK;
}

int fr_gguf_arr_int(const fr_gguf_kv *kv, uint64_t i, int64_t *out) {
    if (!kv || !out) return fr_error(FR_ERR_ARG, "fr_gguf_arr_int: NULL argument");
    size_t es = kv->type == FR_GGUF_ARRAY ? scalar_size(kv->arr_type) : 0;
    if (!es || i >= kv->arr_n) return fr_error(FR_ERR_FORMAT, "GGUF: key '%s' has no element %llu", kv->key, (unsigned long long)i);
    return scalar_int(kv->arr_type, kv->val + i * es, out);
}

int fr_gguf_tensor_to_f32(const fr_gguf_tensor *t, float *dst, size_t n) {
    if (!t || (!dst && n)) return fr_error(FR_ERR_ARG, "fr_gguf_tensor_to_f32: NULL argument");
    if (n != t->numel)
        return fr_error(FR_ERR_ARG, "GGUF tensor '%s' has %zu elements, buffer %zu", t->name, t->numel, n);
    int rc = fr_ggml_dequantize(t->type, t->data, dst, n);
    if (rc != FR_OK) return fr_error(rc, "GGUF tensor '%s': %s", t->name, fr_last_error());
    return FR_OK;
}

/* ------------------------------------------------------------------ writer */

typedef struct {
    char name[GGML_MAX_NAME];
    int n_dims, type;
    int64_t ne[FR_GGUF_MAX_DIMS];
    size_t numel, nbytes;
    uint64_t offset;
} wtensor;

struct fr_gguf_writer {
    unsigned char *kv;      /* serialized metadata */
    size_t kv_len, kv_cap;
    char **keys;
    int n_kv, cap_keys;
    wtensor *t;
    int n_t, cap_t;
    uint64_t data_size;
    FILE *f;
    char *path, *tmp;
    int next;               /* next tensor whose data is written */
    int failed;
};

int fr_gguf_writer_new(fr_gguf_writer **out) {
    if (!out) return fr_error(FR_ERR_ARG, "fr_gguf_writer_new: NULL argument");
    *out = calloc(1, sizeof **out);
    return *out ? FR_OK : fr_error(FR_ERR_NOMEM, "out of memory");
}

void fr_gguf_writer_free(fr_gguf_writer *w) {
    if (!w) return;
    if (w->f) {
        fclose(w->f);
        if (w->tmp) unlink(w->tmp);
    }
    for (int i = 0; i < w->n_kv; i++) free(w->keys[i]);
    free(w->keys);
    free(w->kv);
    free(w->t);
    free(w->path);
    free(w->tmp);
    free(w);
}

static int kv_put(fr_gguf_writer *w, const void *p, size_t n) {
    if (w->kv_len + n > w->kv_cap) {
        size_t cap = w->kv_cap ? w->kv_cap : 4096;
        while (cap < w->kv_len + n) cap *= 2;
        unsigned char *b = realloc(w->kv, cap);
        if (!b) return fr_error(FR_ERR_NOMEM, "out of memory");
        w->kv = b;
        w->kv_cap = cap;
    }
    if (n) memcpy(w->kv + w->kv_len, p, n);
    w->kv_len += n;
    return FR_OK;
}

static int kv_put_u32(fr_gguf_writer *w, uint32_t v) { return kv_put(w, &v, 4); }
static int kv_put_u64(fr_gguf_writer *w, uint64_t v) { return kv_put(w, &v, 8); }
static int kv_put_str(fr_gguf_writer *w, const char *s) {
    size_t n = strlen(s);
    FR_CHECK(kv_put_u64(w, n));
    return kv_put(w, s, n);
}

/* Start a metadata entry: key (unique) and value type. */
static int kv_begin(fr_gguf_writer *w, const char *key, uint32_t type) {
    if (!w || !key || !*key) return fr_error(FR_ERR_ARG, "GGUF writer: empty key");
    if (w->f) return fr_error(FR_ERR_STATE, "GGUF writer: metadata added after the header was written");
    for (int i = 0; i < w->n_kv; i++)
        if (strcmp(w->keys[i], key) == 0) return fr_error(FR_ERR_ARG, "GGUF writer: key '%s' set twice", key);
    if (w->n_kv == w->cap_keys) {
        int cap = w->cap_keys ? 2 * w->cap_keys : 64;
        char **k = realloc(w->keys, (size_t)cap * sizeof *k);
        if (!k) return fr_error(FR_ERR_NOMEM, "out of memory");
        w->keys = k;
        w->cap_keys = cap;
    }
    if (!(w->keys[w->n_kv] = strdup(key))) return fr_error(FR_ERR_NOMEM, "out of memory");
    w->n_kv++;
    FR_CHECK(kv_put_str(w, key));
    return kv_put_u32(w, type);
}

int fr_gguf_set_u32(fr_gguf_writer *w, const char *key, uint32_t v) {
    FR_CHECK(kv_begin(w, key, FR_GGUF_U32));
    return kv_put(w, &v, 4);
}
int fr_gguf_set_i32(fr_gguf_writer *w, const char *key, int32_t v) {
    FR_CHECK(kv_begin(w, key, FR_GGUF_I32));
    return kv_put(w, &v, 4);
}
int fr_gguf_set_u64(fr_gguf_writer *w, const char *key, uint64_t v) {
    FR_CHECK(kv_begin(w, key, FR_GGUF_U64));
    return kv_put(w, &v, 8);
}
int fr_gguf_set_f32(fr_gguf_writer *w, const char *key, float v) {
    FR_CHECK(kv_begin(w, key, FR_GGUF_F32));
    return kv_put(w, &v, 4);
}
int fr_gguf_set_bool(fr_gguf_writer *w, const char *key, int v) {
    FR_CHECK(kv_begin(w, key, FR_GGUF_BOOL));
    unsigned char b = v ? 1 : 0;
    return kv_put(w, &b, 1);
}
int fr_gguf_set_str(fr_gguf_writer *w, const char *key, const char *v) {
    if (!v) return fr_error(FR_ERR_ARG, "GGUF writer: NULL string for '%s'", key ? key : "?");
    FR_CHECK(kv_begin(w, key, FR_GGUF_STRING));
    return kv_put_str(w, v);
}
int fr_gguf_set_arr_str(fr_gguf_writer *w, const char *key, const char *const *v, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!v[i]) return fr_error(FR_ERR_ARG, "GGUF writer: NULL string %zu in '%s'", i, key ? key : "?");
    FR_CHECK(kv_begin(w, key, FR_GGUF_ARRAY));
    FR_CHECK(kv_put_u32(w, FR_GGUF_STRING));
    FR_CHECK(kv_put_u64(w, n));
    for (size_t i = 0; i < n; i++) FR_CHECK(kv_put_str(w, v[i]));
    return FR_OK;
}
int fr_gguf_set_arr_i32(fr_gguf_writer *w, const char *key, const int32_t *v, size_t n) {
    FR_CHECK(kv_begin(w, key, FR_GGUF_ARRAY));
    FR_CHECK(kv_put_u32(w, FR_GGUF_I32));
    FR_CHECK(kv_put_u64(w, n));
    return kv_put(w, v, n * 4);
}

static uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

int fr_gguf_add_tensor(fr_gguf_writer *w, const char *name, int n_dims, const int64_t *ne, int type) {
    if (!w || !name || !ne) return fr_error(FR_ERR_ARG, "fr_gguf_add_tensor: NULL argument");
    if (w->f) return fr_error(FR_ERR_STATE, "GGUF writer: tensor '%s' added after the header was written", name);
    if (strlen(name) >= GGML_MAX_NAME) return fr_error(FR_ERR_ARG, "GGUF writer: tensor name '%s' is too long", name);
    if (n_dims < 1 || n_dims > FR_GGUF_MAX_DIMS) return fr_error(FR_ERR_ARG, "GGUF writer: tensor '%s' has %d dims", name, n_dims);
    if (type != FR_GGML_F32 && type != FR_GGML_F16 && type != FR_GGML_BF16 && type != FR_GGML_Q8_0 && type != FR_GGML_Q4_0 &&
        type != FR_GGML_Q4_K && type != FR_GGML_Q5_K && type != FR_GGML_Q6_K)
        return fr_error(FR_ERR_UNSUPPORTED, "GGUF writer: type %d is not supported", type);
    for (int i = 0; i < w->n_t; i++)
        if (strcmp(w->t[i].name, name) == 0) return fr_error(FR_ERR_ARG, "GGUF writer: tensor '%s' added twice", name);
    if (w->n_t == w->cap_t) {
        int cap = w->cap_t ? 2 * w->cap_t : 256;
        wtensor *t = realloc(w->t, (size_t)cap * sizeof *t);
        if (!t) return fr_error(FR_ERR_NOMEM, "out of memory");
        w->t = t;
        w->cap_t = cap;
    }
    wtensor *t = &w->t[w->n_t];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->n_dims = n_dims;
    t->type = type;
    t->numel = 1;
    for (int d = 0; d < FR_GGUF_MAX_DIMS; d++) {
        t->ne[d] = d < n_dims ? ne[d] : 1;
        if (t->ne[d] < 1) return fr_error(FR_ERR_ARG, "GGUF writer: tensor '%s' has dimension %d = %lld", name, d, (long long)t->ne[d]);
        t->numel *= (size_t)t->ne[d];
    }
    int blk = type_info[type].blck;
    if (t->ne[0] % blk)
        return fr_error(FR_ERR_ARG, "GGUF writer: tensor '%s': ne[0] = %lld is not a multiple of the %s block (%d)", name,
                        (long long)t->ne[0], type_info[type].name, blk);
    t->nbytes = t->numel / (size_t)blk * type_info[type].bytes;
    t->offset = w->data_size;
    w->data_size = align_up(w->data_size + t->nbytes, FR_GGUF_DEFAULT_ALIGNMENT);
    w->n_t++;
    return FR_OK;
}

static int wfail(fr_gguf_writer *w, const char *what) {
    w->failed = 1;
    return fr_error(FR_ERR_IO, "cannot write %s (%s): %s", w->tmp ? w->tmp : "?", what, strerror(errno));
}

static int write_pad(fr_gguf_writer *w, uint64_t pos) {
    static const unsigned char zeros[FR_GGUF_DEFAULT_ALIGNMENT];
    size_t pad = (size_t)(align_up(pos, FR_GGUF_DEFAULT_ALIGNMENT) - pos);
    if (pad && fwrite(zeros, 1, pad, w->f) != pad) return wfail(w, "padding");
    return FR_OK;
}

int fr_gguf_writer_begin(fr_gguf_writer *w, const char *path) {
    if (!w || !path) return fr_error(FR_ERR_ARG, "fr_gguf_writer_begin: NULL argument");
    if (w->f) return fr_error(FR_ERR_STATE, "GGUF writer: begin called twice");
    size_t n = strlen(path) + 32;
    w->path = strdup(path);
    w->tmp = malloc(n);
    if (!w->path || !w->tmp) return fr_error(FR_ERR_NOMEM, "out of memory");
    snprintf(w->tmp, n, "%s.tmp.%ld", path, (long)getpid());
    w->f = fopen(w->tmp, "wb");
    if (!w->f) return fr_error(FR_ERR_IO, "cannot create %s: %s", w->tmp, strerror(errno));
    uint32_t hdr[2] = {GGUF_MAGIC, 3};
    uint64_t counts[2] = {(uint64_t)w->n_t, (uint64_t)w->n_kv};
    if (fwrite(hdr, 4, 2, w->f) != 2 || fwrite(counts, 8, 2, w->f) != 2) return wfail(w, "header");
    if (w->kv_len && fwrite(w->kv, 1, w->kv_len, w->f) != w->kv_len) return wfail(w, "metadata");
    uint64_t pos = 24 + w->kv_len;
    for (int i = 0; i < w->n_t; i++) {
        const wtensor *t = &w->t[i];
        uint64_t len = strlen(t->name), ne[FR_GGUF_MAX_DIMS];
        uint32_t nd = (uint32_t)t->n_dims, ty = (uint32_t)t->type;
        for (int d = 0; d < t->n_dims; d++) ne[d] = (uint64_t)t->ne[d];
        if (fwrite(&len, 8, 1, w->f) != 1 || fwrite(t->name, 1, len, w->f) != len || fwrite(&nd, 4, 1, w->f) != 1 ||
            fwrite(ne, 8, nd, w->f) != nd || fwrite(&ty, 4, 1, w->f) != 1 || fwrite(&t->offset, 8, 1, w->f) != 1)
            return wfail(w, "tensor descriptions");
        pos += 8 + len + 4 + 8 * nd + 4 + 8;
    }
    return write_pad(w, pos);
}

int fr_gguf_write_tensor_data(fr_gguf_writer *w, const float *src, size_t n) {
    if (!w || !src) return fr_error(FR_ERR_ARG, "fr_gguf_write_tensor_data: NULL argument");
    if (!w->f || w->failed) return fr_error(FR_ERR_STATE, "GGUF writer: not writing");
    if (w->next >= w->n_t) return fr_error(FR_ERR_STATE, "GGUF writer: more tensor data than tensors");
    const wtensor *t = &w->t[w->next];
    if (n != t->numel)
        return fr_error(FR_ERR_ARG, "GGUF writer: tensor '%s' has %zu elements, got %zu", t->name, t->numel, n);
    unsigned char *buf = malloc(t->nbytes + 1);
    if (!buf) return fr_error(FR_ERR_NOMEM, "out of memory encoding %s", t->name);
    int rc = fr_ggml_quantize(t->type, src, buf, n);
    if (rc == FR_OK && fwrite(buf, 1, t->nbytes, w->f) != t->nbytes) rc = wfail(w, t->name);
    free(buf);
    if (rc != FR_OK) return rc;
    w->next++;
    return write_pad(w, t->offset + t->nbytes);
}

int fr_gguf_writer_finish(fr_gguf_writer *w) {
    if (!w || !w->f) return fr_error(FR_ERR_STATE, "GGUF writer: not writing");
    if (w->next != w->n_t)
        return fr_error(FR_ERR_STATE, "GGUF writer: %d of %d tensors written", w->next, w->n_t);
    if (fflush(w->f) != 0 || fsync(fileno(w->f)) != 0) return wfail(w, "flush");
    int rc = fclose(w->f);
    w->f = NULL;
    if (rc != 0) {
        unlink(w->tmp);
        return fr_error(FR_ERR_IO, "cannot write %s: %s", w->tmp, strerror(errno));
    }
    if (rename(w->tmp, w->path) != 0) {
        int e = errno;
        unlink(w->tmp);
        return fr_error(FR_ERR_IO, "cannot rename %s to %s: %s", w->tmp, w->path, strerror(e));
    }
    return FR_OK;
}
