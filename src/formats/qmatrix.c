/*
 * qmatrix.c — storage formats of inference weight matrices: the block formats, conversion
 * from FP32 and back, and loading a matrix from a checkpoint (see formats/qmatrix.h and
 * docs/quantization.md). The products live in cpu/qmatmul.c, quantizing a whole checkpoint
 * in infer/quantize.c.
 *
 * In-memory layout: every row of a matrix is stored on its own, rows back to back,
 * fr_qtype_row_bytes(type, cols) bytes each. Inside a row (nb = cols / 32 blocks):
 *
 *   F32   cols x float32.
 *   BF16  cols x uint16: the upper 16 bits of the float32, rounded to nearest even (NaN
 *         stays a quiet NaN). Dequantized exactly by shifting back: x̂ = bits << 16.
 *   Q8_0  [nb x float16 scale d_b][cols x int8 q]. Block b holds values 32b .. 32b+31:
 *         x̂ = d_b * q, q in [-127, 127]. d_b = max|x| / 127 rounded UP to float16 (so
 *         no |x| / d_b exceeds 127 and no clamping error appears); q = round(x / d_b).
 *         Error: |x - x̂| <= d_b / 2. 34 bytes per 32 values (8.5 bits per weight).
 *   Q4_1  [nb x float16 scale d_b][nb x float16 minimum m_b][cols/2 bytes of nibbles].
 *         x̂ = d_b * q + m_b, q in [0, 15]. m_b = min(x) rounded DOWN to float16, d_b =
 *         (max(x) - m_b) / 15 rounded UP to float16; q = round((x - m_b) / d_b).
 *         Error: |x - x̂| <= d_b / 2 (plus float rounding of d*q + m). Packing: the 16
 *         bytes of block b are bytes 16b .. 16b+15 of the nibble area; byte k holds value
 *         32b+k in its low nibble and value 32b+k+16 in its high nibble, so one 16-byte
 *         load gives values 0..15 (b & 15) and 16..31 (b >> 4) of a block in order.
 *         20 bytes per 32 values (5 bits per weight).
 *
 * Scales and minima of a row sit together before its quants so a SIMD kernel converts 8 or
 * 16 of them with one instruction (vcvtph2ps); the quants of a block are contiguous, 32
 * (Q8_0) or 16 (Q4_1) bytes, so one vector load feeds a block.
 *
 * On-disk (safetensors, names derived from the float tensor's name "<base>.weight"):
 *   BF16  "<base>.weight"  BF16 [rows, cols]      (standard safetensors bf16)
 *   Q8_0  "<base>.qweight" I8   [rows, cols]      quants
 *         "<base>.scales"  F16  [rows, cols/32]   d_b
 *   Q4_1  "<base>.qweight" U8   [rows, cols/2]    nibbles packed as above
 *         "<base>.scales"  F16  [rows, cols/32]   d_b
 *         "<base>.mins"    F16  [rows, cols/32]   m_b
 * A quantized folder therefore has no "<base>.weight" for these matrices, so the FP32
 * loader (fr_model_load) refuses it with "missing tensor" instead of reading quants as
 * weights; fr_model_load_dequantized reads it.
 */
#include "formats/qmatrix.h"

#include "core/internal.h"
#include "formats/gguf.h"
#include "formats/kquant.h"
#include "formats/numfmt.h"
#include "formats/safetensors.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *QT_NAMES[FR_QT_COUNT] = {"f32", "bf16", "q8_0", "q4_1", "q4_k", "q5_k", "q6_k"};

int fr_qtype_is_k(fr_qtype t) { return t == FR_QT_Q4_K || t == FR_QT_Q5_K || t == FR_QT_Q6_K; }

/* the kquant.h type of a K format */
static fr_kq_type kq(fr_qtype t) { return t == FR_QT_Q4_K ? FR_KQ_Q4_K : t == FR_QT_Q5_K ? FR_KQ_Q5_K : FR_KQ_Q6_K; }

const char *fr_qtype_name(fr_qtype t) { return (unsigned)t < FR_QT_COUNT ? QT_NAMES[t] : "?"; }

int fr_qtype_parse(const char *name) {
    for (int t = 0; t < FR_QT_COUNT; t++)
        if (name && strcmp(name, QT_NAMES[t]) == 0) return t;
    return -1;
}

const char *fr_weight_type_name(int weight_type) {
    return weight_type >= 0 && weight_type < FR_QT_COUNT ? QT_NAMES[weight_type] : NULL;
}

int fr_weight_type_parse(const char *name) { return fr_qtype_parse(name); }

size_t fr_qtype_row_bytes(fr_qtype t, int cols) {
    if (cols <= 0) return 0;
    switch (t) {
    case FR_QT_F32: return (size_t)cols * 4;
    case FR_QT_BF16: return (size_t)cols * 2;
    case FR_QT_Q8_0: return cols % FR_QBLOCK ? 0 : (size_t)cols + (size_t)(cols / FR_QBLOCK) * 2;
    case FR_QT_Q4_1: return cols % FR_QBLOCK ? 0 : (size_t)cols / 2 + (size_t)(cols / FR_QBLOCK) * 4;
    case FR_QT_Q4_K: case FR_QT_Q5_K: case FR_QT_Q6_K: return fr_kq_row_bytes(kq(t), cols);
    default: return 0;
    }
}

void fr_qmatrix_wrap(fr_qmatrix *out, fr_qtype t, void *data, int rows, int cols) {
    out->type = t;
    out->rows = rows;
    out->cols = cols;
    out->data = data;
    out->owned = 0;
}

void fr_qmatrix_free(fr_qmatrix *m) {
    if (m && m->owned) fr_free(m->data);
    if (m) memset(m, 0, sizeof *m);
}

/* ------------------------------------------------------------------ scalar conversions */

float fr_q_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu, x;
    if (e == 0) {
        float f = (float)m * 0x1p-24f; /* zero or subnormal: exact */
        return sign ? -f : f;
    }
    if (e == 31) x = sign | 0x7f800000u | (m << 13);
    else x = sign | ((e + 112u) << 23) | (m << 13);
    float f;
    memcpy(&f, &x, 4);
    return f;
}

uint16_t fr_q_f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return (uint16_t)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0u));
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);  /* >= 65520: rounds to inf */
    if (ax < 0x38800000u) {                                     /* below 2^-14: subnormal */
        float a;
        memcpy(&a, &ax, 4);
        return (uint16_t)(sign | (uint16_t)lrintf(a * 0x1p24f)); /* exact scaling, RNE */
    }
    uint32_t r = ax - 0x38000000u + 0xfffu + ((ax >> 13) & 1u);
    return (uint16_t)(sign | (r >> 13));
}

/* Smallest float16 >= v (v >= 0, finite, <= 65504). */
static uint16_t f16_up(float v) {
    uint16_t h = fr_q_f32_to_f16(v);
    if (fr_q_f16_to_f32(h) < v) h++;
    return h;
}

/* Largest float16 <= v (finite, >= -65504). */
static uint16_t f16_down(float v) {
    uint16_t h = fr_q_f32_to_f16(v);
    if (fr_q_f16_to_f32(h) > v) {
        if (h == 0) h = 0x8001u;            /* +0 -> smallest negative subnormal */
        else if (h & 0x8000u) h++;          /* negative: larger magnitude */
        else h--;                           /* positive: smaller magnitude */
    }
    return h;
}

#define F16_MAX 65504.0f

/* ------------------------------------------------------------------ quantization of rows */

static int quant_row_q8_0(uint8_t *dst, const float *x, int cols) {
    const int nb = cols / FR_QBLOCK;
    uint16_t *d = (uint16_t *)dst;
    int8_t *q = (int8_t *)(dst + 2 * (size_t)nb);
    for (int b = 0; b < nb; b++) {
        const float *xb = x + b * FR_QBLOCK;
        float amax = 0.f;
        for (int i = 0; i < FR_QBLOCK; i++) {
            if (!isfinite(xb[i])) return -1;
            amax = fmaxf(amax, fabsf(xb[i]));
        }
        float dd = amax / 127.0f;
        if (dd > F16_MAX) return -2;
        uint16_t h = f16_up(dd);
        d[b] = h;
        float ds = fr_q_f16_to_f32(h);
        for (int i = 0; i < FR_QBLOCK; i++) {
            long v = ds > 0.f ? lrintf(xb[i] / ds) : 0;
            q[b * FR_QBLOCK + i] = (int8_t)(v > 127 ? 127 : v < -127 ? -127 : v);
        }
    }
    return 0;
}

static int quant_row_q4_1(uint8_t *dst, const float *x, int cols) {
    const int nb = cols / FR_QBLOCK;
    uint16_t *d = (uint16_t *)dst, *mn = d + nb;
    uint8_t *q = dst + 4 * (size_t)nb;
    for (int b = 0; b < nb; b++) {
        const float *xb = x + b * FR_QBLOCK;
        float lo = xb[0], hi = xb[0];
        for (int i = 0; i < FR_QBLOCK; i++) {
            if (!isfinite(xb[i])) return -1;
            lo = fminf(lo, xb[i]);
            hi = fmaxf(hi, xb[i]);
        }
        if (lo < -F16_MAX) return -2;
        uint16_t hm = f16_down(lo);
        float m = fr_q_f16_to_f32(hm);
        float dd = (hi - m) / 15.0f;
        if (!(dd <= F16_MAX)) return -2;
        uint16_t hd = f16_up(dd);
        float ds = fr_q_f16_to_f32(hd);
        d[b] = hd;
        mn[b] = hm;
        uint8_t v[FR_QBLOCK];
        for (int i = 0; i < FR_QBLOCK; i++) {
            long t = ds > 0.f ? lrintf((xb[i] - m) / ds) : 0;
            v[i] = (uint8_t)(t > 15 ? 15 : t < 0 ? 0 : t);
        }
        for (int k = 0; k < 16; k++) q[b * 16 + k] = (uint8_t)(v[k] | (v[k + 16] << 4));
    }
    return 0;
}

int fr_qmatrix_from_f32(fr_qmatrix *out, fr_qtype t, const float *src, int rows, int cols) {
    memset(out, 0, sizeof *out);
    size_t rb = fr_qtype_row_bytes(t, cols);
    if (rows <= 0 || rb == 0) {
        if ((t == FR_QT_Q8_0 || t == FR_QT_Q4_1 || fr_qtype_is_k(t)) && cols > 0)
            return fr_error(FR_ERR_ARG, "cannot store a %d x %d matrix as %s: the number of columns must be a multiple of %d",
                            rows, cols, fr_qtype_name(t), fr_qtype_is_k(t) ? FR_QK_K : FR_QBLOCK);
        return fr_error(FR_ERR_ARG, "cannot store a %d x %d matrix as %s", rows, cols, fr_qtype_name(t));
    }
    uint8_t *data = fr_alloc_weights(rb * (size_t)rows);
    if (!data) return fr_error(FR_ERR_NOMEM, "out of memory for a %d x %d %s matrix", rows, cols, fr_qtype_name(t));
    int bad_row = -1, bad_kind = 0;
    for (int r = 0; r < rows && bad_row < 0; r++) {
        const float *x = src + (size_t)r * cols;
        uint8_t *dst = data + rb * (size_t)r;
        int k = 0;
        switch (t) {
        case FR_QT_F32: memcpy(dst, x, rb); break;
        case FR_QT_BF16:
            for (int c = 0; c < cols; c++) ((uint16_t *)dst)[c] = fr_bf16_encode(x[c]);
            break;
        case FR_QT_Q8_0: k = quant_row_q8_0(dst, x, cols); break;
        case FR_QT_Q4_1: k = quant_row_q4_1(dst, x, cols); break;
        case FR_QT_Q4_K: case FR_QT_Q5_K: case FR_QT_Q6_K:
            for (int c = 0; c < cols && !k; c++) k = isfinite(x[c]) ? 0 : -1; /* the quantizer needs finite input */
            if (!k) fr_kq_quantize_row(kq(t), x, dst, cols);
            break;
        default: k = -3; break;
        }
        if (k) {
            bad_row = r;
            bad_kind = k;
        }
    }
    if (bad_row >= 0) {
        fr_free(data);
        if (bad_kind == -1) return fr_error(FR_ERR_ARG, "row %d holds a non-finite value: cannot quantize to %s", bad_row, fr_qtype_name(t));
        if (bad_kind == -2) return fr_error(FR_ERR_ARG, "row %d holds values beyond the float16 range of %s scales", bad_row, fr_qtype_name(t));
        return fr_error(FR_ERR_ARG, "unknown weight format %d", (int)t);
    }
    fr_qmatrix_wrap(out, t, data, rows, cols);
    out->owned = 1;
    return FR_OK;
}

static void dequant_row(const fr_qmatrix *m, const uint8_t *row, float *dst) {
    const int cols = m->cols, nb = cols / FR_QBLOCK;
    switch (m->type) {
    case FR_QT_Q4_K: case FR_QT_Q5_K: case FR_QT_Q6_K: fr_kq_dequantize_row(kq(m->type), row, dst, cols); break;
    case FR_QT_F32: memcpy(dst, row, (size_t)cols * sizeof(float)); break;
    case FR_QT_BF16:
        for (int c = 0; c < cols; c++) dst[c] = fr_bf16_decode(((const uint16_t *)row)[c]);
        break;
    case FR_QT_Q8_0: {
        const uint16_t *d = (const uint16_t *)row;
        const int8_t *q = (const int8_t *)(row + 2 * (size_t)nb);
        for (int b = 0; b < nb; b++) {
            float ds = fr_q_f16_to_f32(d[b]);
            for (int i = 0; i < FR_QBLOCK; i++) dst[b * FR_QBLOCK + i] = ds * (float)q[b * FR_QBLOCK + i];
        }
        break;
    }
    case FR_QT_Q4_1: {
        const uint16_t *d = (const uint16_t *)row, *mn = d + nb;
        const uint8_t *q = row + 4 * (size_t)nb;
        for (int b = 0; b < nb; b++) {
            float ds = fr_q_f16_to_f32(d[b]), mm = fr_q_f16_to_f32(mn[b]);
            for (int k = 0; k < 16; k++) {
                uint8_t v = q[b * 16 + k];
                dst[b * FR_QBLOCK + k] = ds * (float)(v & 15) + mm;
                dst[b * FR_QBLOCK + k + 16] = ds * (float)(v >> 4) + mm;
            }
        }
        break;
    }
    default: memset(dst, 0, (size_t)cols * sizeof(float)); break;
    }
}

void fr_qmatrix_row_f32(const fr_qmatrix *m, int r, float *dst) {
    const size_t rb = fr_qtype_row_bytes(m->type, m->cols);
    dequant_row(m, (const uint8_t *)m->data + rb * (size_t)r, dst);
}

/* ------------------------------------------------------------------ loading */

int fr_qmatrix_tensor_name(char *buf, size_t n, const char *name, const char *suffix) {
    size_t len = strlen(name);
    if (len > 7 && strcmp(name + len - 7, ".weight") == 0) len -= 7;
    int k = snprintf(buf, n, "%.*s.%s", (int)len, name, suffix);
    return k > 0 && (size_t)k < n ? 0 : -1;
}

int fr_qmatrix_stored_type(const fr_st_set *st, const char *name) {
    char qn[1024];
    for (int k = FR_QT_Q4_K; k <= FR_QT_Q6_K; k++) /* "<base>.q4_k": ggml's blocks, row by row */
        if (fr_qmatrix_tensor_name(qn, sizeof qn, name, QT_NAMES[k]) == 0 && fr_st_set_find(st, qn)) return k;
    if (fr_qmatrix_tensor_name(qn, sizeof qn, name, "qweight") == 0) {
        const fr_st_tensor *q = fr_st_set_find(st, qn);
        if (q) return q->dtype == FR_DT_U8 ? FR_QT_Q4_1 : FR_QT_Q8_0;
    }
    const fr_st_tensor *t = fr_st_set_find(st, name);
    if (!t) return -1;
    return t->dtype == FR_DT_BF16 ? FR_QT_BF16 : FR_QT_F32;
}

static int check_tensor(const fr_st_tensor *t, const char *tname, fr_dtype dt, int64_t d0, int64_t d1) {
    if (!t) return fr_error(FR_ERR_FORMAT, "tensor %s is missing from the checkpoint", tname);
    if (t->dtype != dt || t->ndim != 2 || t->shape[0] != d0 || t->shape[1] != d1)
        return fr_error(FR_ERR_FORMAT, "tensor %s: expected %s [%lld, %lld], found %s with %d dims [%lld, %lld]", tname,
                        fr_dtype_name(dt), (long long)d0, (long long)d1, fr_dtype_name(t->dtype), t->ndim,
                        (long long)t->shape[0], t->ndim > 1 ? (long long)t->shape[1] : 0LL);
    return FR_OK;
}

/* Assemble a matrix of type t from "<base>.qweight/.scales/.mins" (Q8_0, Q4_1) or
 * "<base>.q4_k" (the K formats: U8 [rows, row bytes], ggml's blocks as they are). */
static int load_quantized(fr_qmatrix *out, const fr_st_set *st, const char *name, int rows, int cols, fr_qtype t) {
    char qn[1024], sn[1024], mn[1024];
    if (fr_qtype_is_k(t)) {
        const size_t rb = fr_qtype_row_bytes(t, cols);
        if (fr_qmatrix_tensor_name(qn, sizeof qn, name, QT_NAMES[t])) return fr_error(FR_ERR_ARG, "tensor name too long: %s", name);
        if (!rb) return fr_error(FR_ERR_FORMAT, "tensor %s: %d columns is not a multiple of 256, as %s needs", name, cols,
                                 fr_qtype_name(t));
        const fr_st_tensor *q = fr_st_set_find(st, qn);
        FR_CHECK(check_tensor(q, qn, FR_DT_U8, rows, (int64_t)rb));
        uint8_t *data = fr_alloc_weights(rb * (size_t)rows);
        if (!data) return fr_error(FR_ERR_NOMEM, "out of memory loading %s", name);
        memcpy(data, q->data, rb * (size_t)rows);
        fr_qmatrix_wrap(out, t, data, rows, cols);
        out->owned = 1;
        return FR_OK;
    }
    if (fr_qmatrix_tensor_name(qn, sizeof qn, name, "qweight") || fr_qmatrix_tensor_name(sn, sizeof sn, name, "scales") ||
        fr_qmatrix_tensor_name(mn, sizeof mn, name, "mins"))
        return fr_error(FR_ERR_ARG, "tensor name too long: %s", name);
    if (cols % FR_QBLOCK)
        return fr_error(FR_ERR_FORMAT, "tensor %s: %d columns is not a multiple of %d, as %s needs", name, cols, FR_QBLOCK,
                        fr_qtype_name(t));
    const int nb = cols / FR_QBLOCK;
    const fr_st_tensor *q = fr_st_set_find(st, qn), *sc = fr_st_set_find(st, sn), *mi = NULL;
    if (t == FR_QT_Q8_0) FR_CHECK(check_tensor(q, qn, FR_DT_I8, rows, cols));
    else FR_CHECK(check_tensor(q, qn, FR_DT_U8, rows, cols / 2));
    FR_CHECK(check_tensor(sc, sn, FR_DT_F16, rows, nb));
    if (t == FR_QT_Q4_1) {
        mi = fr_st_set_find(st, mn);
        FR_CHECK(check_tensor(mi, mn, FR_DT_F16, rows, nb));
    }
    const size_t rb = fr_qtype_row_bytes(t, cols), qb = t == FR_QT_Q8_0 ? (size_t)cols : (size_t)cols / 2;
    uint8_t *data = fr_alloc_weights(rb * (size_t)rows);
    if (!data) return fr_error(FR_ERR_NOMEM, "out of memory loading %s", name);
    for (int r = 0; r < rows; r++) {
        uint8_t *row = data + rb * (size_t)r;
        memcpy(row, (const uint8_t *)sc->data + (size_t)r * nb * 2, (size_t)nb * 2);
        size_t off = (size_t)nb * 2;
        if (mi) {
            memcpy(row + off, (const uint8_t *)mi->data + (size_t)r * nb * 2, (size_t)nb * 2);
            off += (size_t)nb * 2;
        }
        memcpy(row + off, (const uint8_t *)q->data + (size_t)r * qb, qb);
    }
    fr_qmatrix_wrap(out, t, data, rows, cols);
    out->owned = 1;
    return FR_OK;
}

int fr_qmatrix_load(fr_qmatrix *out, const fr_st_set *st, const char *name, int rows, int cols, fr_qtype want) {
    memset(out, 0, sizeof *out);
    if ((unsigned)want >= FR_QT_COUNT) return fr_error(FR_ERR_ARG, "tensor %s: unknown weight format %d", name, (int)want);
    if (rows <= 0 || cols <= 0) return fr_error(FR_ERR_ARG, "tensor %s: bad shape [%d, %d]", name, rows, cols);
    int stored = fr_qmatrix_stored_type(st, name);
    if (stored < 0) return fr_error(FR_ERR_FORMAT, "tensor %s is missing from the checkpoint", name);
    if (stored == FR_QT_Q8_0 || stored == FR_QT_Q4_1 || fr_qtype_is_k((fr_qtype)stored)) {
        fr_qmatrix q;
        FR_CHECK(load_quantized(&q, st, name, rows, cols, (fr_qtype)stored));
        if (want == (fr_qtype)stored) {
            *out = q;
            return FR_OK;
        }
        /* another format wanted: dequantize, then convert */
        float *tmp = fr_alloc((size_t)rows * cols * sizeof(float));
        if (!tmp) {
            fr_qmatrix_free(&q);
            return fr_error(FR_ERR_NOMEM, "out of memory loading %s", name);
        }
        for (int r = 0; r < rows; r++) fr_qmatrix_row_f32(&q, r, tmp + (size_t)r * cols);
        fr_qmatrix_free(&q);
        if (want == FR_QT_F32) {
            fr_qmatrix_wrap(out, FR_QT_F32, tmp, rows, cols);
            out->owned = 1;
            return FR_OK;
        }
        int rc = fr_qmatrix_from_f32(out, want, tmp, rows, cols);
        fr_free(tmp);
        return rc == FR_OK ? rc : fr_error_context(rc, "tensor %s", name);
    }
    const fr_st_tensor *t = fr_st_set_find(st, name);
    if (t->ndim != 2 || t->shape[0] != rows || t->shape[1] != cols)
        return fr_error(FR_ERR_FORMAT, "tensor %s: expected shape [%d, %d]", name, rows, cols);
    if (t->dtype == FR_DT_BF16 && want == FR_QT_BF16) { /* as stored, bit for bit */
        void *data = fr_alloc_weights((size_t)rows * cols * 2);
        if (!data) return fr_error(FR_ERR_NOMEM, "out of memory loading %s", name);
        memcpy(data, t->data, (size_t)rows * cols * 2);
        fr_qmatrix_wrap(out, FR_QT_BF16, data, rows, cols);
        out->owned = 1;
        return FR_OK;
    }
    float *tmp = fr_alloc((size_t)rows * cols * sizeof(float));
    if (!tmp) return fr_error(FR_ERR_NOMEM, "out of memory loading %s", name);
    int rc = fr_st_to_f32(t, tmp, t->numel);
    if (rc == FR_OK && want == FR_QT_F32) {
        fr_qmatrix_wrap(out, FR_QT_F32, tmp, rows, cols);
        out->owned = 1;
        return FR_OK;
    }
    if (rc == FR_OK) {
        rc = fr_qmatrix_from_f32(out, want, tmp, rows, cols);
        if (rc != FR_OK) rc = fr_error_context(rc, "tensor %s", name);
    }
    fr_free(tmp);
    return rc;
}

/* ------------------------------------------------------------------ from ggml blocks
 * ggml stores a row as consecutive blocks of 32 values, each its fp16 scale(s) then its
 * quants: Q8_0 [d][32 x int8] (34 bytes), Q4_0 [d][16 bytes] (18), Q4_1 [d][m][16 bytes]
 * (20), nibbles in the order Q4_1 uses here (byte k: value k low, value k + 16 high). Only
 * the places change: the scales of a row move together in front of its quants. */
static int relayout_row(int type, const uint8_t *src, uint8_t *dst, int cols) {
    const int nb = cols / FR_QBLOCK;
    if (type == FR_GGML_Q8_0) {
        for (int b = 0; b < nb; b++) {
            memcpy(dst + 2 * (size_t)b, src + 34 * (size_t)b, 2);
            memcpy(dst + 2 * (size_t)nb + 32 * (size_t)b, src + 34 * (size_t)b + 2, 32);
        }
        return FR_OK;
    }
    const size_t bb = type == FR_GGML_Q4_0 ? 18 : 20;
    uint16_t *d = (uint16_t *)dst, *m = d + nb;
    for (int b = 0; b < nb; b++) {
        const uint8_t *blk = src + bb * (size_t)b;
        memcpy(&d[b], blk, 2);
        if (type == FR_GGML_Q4_1) {
            memcpy(&m[b], blk + 2, 2);
        } else {
            /* Q4_0: m = -8 d, exact in fp16 unless it overflows */
            const float mv = -8.0f * fr_q_f16_to_f32(d[b]);
            if (!(fabsf(mv) <= 65504.0f)) return fr_error(FR_ERR_FORMAT, "Q4_0 block scale %g is too large", -mv / 8);
            m[b] = fr_q_f32_to_f16(mv);
        }
        memcpy(dst + 4 * (size_t)nb + 16 * (size_t)b, blk + bb - 16, 16);
    }
    return FR_OK;
}

int fr_qmatrix_from_ggml(fr_qmatrix *out, int ggml_type, const void *data, int rows, int cols, int want) {
    memset(out, 0, sizeof *out);
    const char *tn = fr_ggml_type_name(ggml_type) ? fr_ggml_type_name(ggml_type) : "?";
    if (rows <= 0 || cols <= 0) return fr_error(FR_ERR_ARG, "fr_qmatrix_from_ggml: %d x %d matrix", rows, cols);
    const int keep = want < 0;
    if ((keep && ggml_type == FR_GGML_F32) || (want == FR_QT_F32 && ggml_type == FR_GGML_F32)) {
        fr_qmatrix_wrap(out, FR_QT_F32, (void *)data, rows, cols);
        return FR_OK;
    }
    if ((keep && ggml_type == FR_GGML_BF16) || (want == FR_QT_BF16 && ggml_type == FR_GGML_BF16)) {
        fr_qmatrix_wrap(out, FR_QT_BF16, (void *)data, rows, cols);
        return FR_OK;
    }
    /* the K formats: the engine's layout is ggml's, used in place */
    const fr_qtype kt = ggml_type == FR_GGML_Q4_K ? FR_QT_Q4_K : ggml_type == FR_GGML_Q5_K ? FR_QT_Q5_K
                      : ggml_type == FR_GGML_Q6_K ? FR_QT_Q6_K : FR_QT_COUNT;
    if (kt != FR_QT_COUNT && cols % FR_QK_K == 0 && (keep || want == (int)kt)) {
        fr_qmatrix_wrap(out, kt, (void *)data, rows, cols);
        return FR_OK;
    }
    const int blocks = ggml_type == FR_GGML_Q8_0 || ggml_type == FR_GGML_Q4_0 || ggml_type == FR_GGML_Q4_1;
    const fr_qtype to = ggml_type == FR_GGML_Q8_0 ? FR_QT_Q8_0 : FR_QT_Q4_1;
    if (blocks && cols % FR_QBLOCK == 0 && (keep || want == (int)to)) {
        const size_t in_row = (size_t)cols / FR_QBLOCK * fr_ggml_block_bytes(ggml_type), rb = fr_qtype_row_bytes(to, cols);
        uint8_t *p = fr_alloc_weights((size_t)rows * rb);
        if (!p) return fr_error(FR_ERR_NOMEM, "out of memory for a %d x %d %s matrix", rows, cols, tn);
        for (int r = 0; r < rows; r++) {
            const int rc = relayout_row(ggml_type, (const uint8_t *)data + in_row * (size_t)r, p + rb * (size_t)r, cols);
            if (rc != FR_OK) { fr_free(p); return rc; }
        }
        out->type = to;
        out->rows = rows;
        out->cols = cols;
        out->data = p;
        out->owned = 1;
        return FR_OK;
    }
    /* through FP32 */
    const int be = fr_ggml_block_elems(ggml_type);
    if (be <= 0 || cols % be != 0) return fr_error(FR_ERR_UNSUPPORTED, "ggml type %s for a %d-column matrix", tn, cols);
    float *f = fr_alloc((size_t)rows * cols * sizeof(float));
    if (!f) return fr_error(FR_ERR_NOMEM, "out of memory for a %d x %d matrix", rows, cols);
    int rc = fr_ggml_dequantize(ggml_type, data, f, (size_t)rows * cols);
    if (rc == FR_OK) rc = fr_qmatrix_from_f32(out, keep ? FR_QT_F32 : (fr_qtype)want, f, rows, cols);
    fr_free(f);
    return rc;
}

/* ------------------------------------------------------------------ with ggml's encoders */

int fr_qmatrix_from_f32_ggml(fr_qmatrix *out, int ggml_type, const float *src, int rows, int cols) {
    memset(out, 0, sizeof *out);
    const char *tn = fr_ggml_type_name(ggml_type) ? fr_ggml_type_name(ggml_type) : "?";
    const int be = fr_ggml_block_elems(ggml_type);
    if (rows <= 0 || cols <= 0 || be <= 0 || cols % be)
        return fr_error(FR_ERR_ARG, "cannot store a %d x %d matrix as %s%s", rows, cols, tn,
                        be > 1 ? ": the number of columns must be a multiple of its block" : "");
    /* what fr_ggml_quantize does not check: finite input, and scales that fit float16 (Q8_0
     * max|x| / 127; Q4_0 its largest |x| / 8, and -8 d for the Q4_1 form it runs in) */
    const float lim = ggml_type == FR_GGML_Q8_0 ? 65504.0f * 127.0f : ggml_type == FR_GGML_Q4_0 ? 65504.0f : INFINITY;
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) {
            const float v = src[(size_t)r * cols + c];
            if (!isfinite(v)) return fr_error(FR_ERR_ARG, "row %d holds a non-finite value: cannot quantize to %s", r, tn);
            if (fabsf(v) > lim) return fr_error(FR_ERR_ARG, "row %d holds values beyond the float16 range of %s scales", r, tn);
        }
    const size_t bytes = (size_t)rows * (size_t)(cols / be) * fr_ggml_block_bytes(ggml_type);
    uint8_t *enc = fr_alloc_weights(bytes ? bytes : 1);
    if (!enc) return fr_error(FR_ERR_NOMEM, "out of memory for a %d x %d %s matrix", rows, cols, tn);
    int rc = fr_ggml_quantize(ggml_type, src, enc, (size_t)rows * cols);
    if (rc == FR_OK) rc = fr_qmatrix_from_ggml(out, ggml_type, enc, rows, cols, -1);
    if (rc == FR_OK && !out->owned) out->owned = 1; /* used in place (F32, BF16, K): the matrix keeps the encoding */
    else fr_free(enc);
    return rc;
}
