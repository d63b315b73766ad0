/*
 * quant.c — storage formats of inference weight matrices and fr_qmatmul (see quant.h).
 *
 * FR_QT_F32: rows of `cols` floats; fr_qmatmul is the CPU backend's GEMM.
 * Other formats are added beside this one, each with its block layout documented here.
 */
#include "quant.h"

#include "internal.h"
#include "ops_cpu.h"
#include "safetensors.h"

#include <stdlib.h>
#include <string.h>

static const char *QT_NAMES[FR_QT_COUNT] = {"f32", "bf16", "q8_0", "q4_1"};

const char *fr_qtype_name(fr_qtype t) { return (unsigned)t < FR_QT_COUNT ? QT_NAMES[t] : "?"; }

int fr_qtype_parse(const char *name) {
    for (int t = 0; t < FR_QT_COUNT; t++)
        if (name && strcmp(name, QT_NAMES[t]) == 0) return t;
    return -1;
}

size_t fr_qtype_row_bytes(fr_qtype t, int cols) {
    if (cols <= 0) return 0;
    switch (t) {
    case FR_QT_F32: return (size_t)cols * 4;
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

int fr_qmatrix_from_f32(fr_qmatrix *out, fr_qtype t, const float *src, int rows, int cols) {
    memset(out, 0, sizeof *out);
    size_t rb = fr_qtype_row_bytes(t, cols);
    if (rows <= 0 || rb == 0)
        return fr_error(FR_ERR_ARG, "cannot store a %d x %d matrix as %s", rows, cols, fr_qtype_name(t));
    void *data = fr_alloc(rb * (size_t)rows);
    if (!data) return fr_error(FR_ERR_NOMEM, "out of memory for a %d x %d %s matrix", rows, cols, fr_qtype_name(t));
    switch (t) {
    case FR_QT_F32:
        memcpy(data, src, rb * (size_t)rows);
        break;
    default:
        fr_free(data);
        return fr_error(FR_ERR_UNSUPPORTED, "weight format %s is not implemented", fr_qtype_name(t));
    }
    fr_qmatrix_wrap(out, t, data, rows, cols);
    out->owned = 1;
    return FR_OK;
}

void fr_qmatrix_row_f32(const fr_qmatrix *m, int r, float *dst) {
    const size_t rb = fr_qtype_row_bytes(m->type, m->cols);
    const char *row = (const char *)m->data + rb * (size_t)r;
    switch (m->type) {
    case FR_QT_F32: memcpy(dst, row, (size_t)m->cols * sizeof(float)); break;
    default: memset(dst, 0, (size_t)m->cols * sizeof(float)); break;
    }
}

void fr_qmatmul(float *y, const float *x, const fr_qmatrix *w, int M) {
    switch (w->type) {
    case FR_QT_F32:
        fr_cpu_gemm(0, 1, M, w->rows, w->cols, 1.0f, x, w->cols, (const float *)w->data, w->cols, 0.0f, y, w->rows);
        break;
    default:
        break;
    }
}

int fr_qmatrix_load(fr_qmatrix *out, const fr_st_set *st, const char *name, int rows, int cols, fr_qtype want) {
    memset(out, 0, sizeof *out);
    const fr_st_tensor *t = fr_st_set_find(st, name);
    if (!t) return fr_error(FR_ERR_FORMAT, "tensor %s is missing from the checkpoint", name);
    if (t->ndim != 2 || t->shape[0] != rows || t->shape[1] != cols)
        return fr_error(FR_ERR_FORMAT, "tensor %s: expected shape [%d, %d]", name, rows, cols);
    float *tmp = fr_alloc((size_t)rows * cols * sizeof(float));
    if (!tmp) return fr_error(FR_ERR_NOMEM, "out of memory loading %s", name);
    int rc = fr_st_to_f32(t, tmp, t->numel);
    if (rc == FR_OK && want == FR_QT_F32) {
        fr_qmatrix_wrap(out, FR_QT_F32, tmp, rows, cols);
        out->owned = 1;
        return FR_OK;
    }
    if (rc == FR_OK) rc = fr_qmatrix_from_f32(out, want, tmp, rows, cols);
    fr_free(tmp);
    return rc;
}
