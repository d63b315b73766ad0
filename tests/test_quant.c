/*
 * test_quant.c — weight formats (src/cpu/qmatmul.c): conversions, block quantization error
 * bounds, fr_qmatmul of every format on every instruction set this CPU supports against a
 * double-precision reference, SIMD against generic C, fr_qmatrix_load, fr_quantize_model
 * round trips, fr_model_load_dequantized, fr_eval_dataset and bad inputs.
 *
 * The stored layouts are decoded here by an independent reader written from the layout
 * description (formats/qmatrix.c, docs/quantization.md), so the layout is checked too.
 *
 * Tolerances (u = 2^-24, the FP32 unit roundoff):
 *  - BF16: |x - x̂| <= 2^-8 |x| (round to nearest with 8 significant bits) for normal x.
 *  - Q8_0: |x - x̂| <= d/2 (x̂ = d*q is exact in FP32: 11-bit d times 8-bit q), and the
 *    scale is tight: max|x|/127 <= d <= max|x|/127 * (1 + 2^-10) + 2^-24 (float16 rounding up).
 *  - Q4_1: |x - x̂| <= d/2 + 4u (|m| + 15 d) (the second term: FP32 rounding of d*q + m and
 *    of (x - m)/d), m <= min(x), min(x) - m <= 2^-10 |min(x)| + 2^-24, and
 *    d <= (max(x) - m)/15 * (1 + 2^-10) + 2^-24.
 *  - fr_qmatmul: y = sum_c x_c (d q_c + m) is checked against the same sum in double:
 *    |y - y_ref| <= (cols + 4) u S, S = sum_c |x_c| (|d q_c| + |m|): the worst-case bound of
 *    FP32 summation of cols products in any order (each product and the final scale add a
 *    rounding each), independent of the kernel's blocking. Wrong indices, nibbles or scales
 *    give errors of the order of S itself. SIMD vs generic: <= 2 (cols + 4) u S.
 *  - fr_qmatmul with int8 activations (Q8_0 / Q4_1, the default): checked against the
 *    product defined in cpu/qmatmul.c computed here in double from the test's own activation
 *    quantizer: |y - y8| <= (2 nb + 8) u S8 (S8: Σ_b |d_b dx_b| Σ_i |q_i qx_i| + |m_b xs_b|; only
 *    FP32 accumulation differs); against the FP32-activation product: within the activation
 *    rounding Σ_b Σ_i |d_b q_i| dx_b (1/2 + 256u) (+ FP32 terms), which is the documented error
 *    model; every row bit-identical to the same row computed alone (M = 1).
 */
#define _GNU_SOURCE
#include "frugal.h"
#include "core/internal.h"
#include "cpu/ops_cpu.h"
#include "cpu/qmatmul.h"
#include "formats/gguf.h"
#include "formats/safetensors.h"
#include "testutil.h"

/* The formats with blocks of 32 (and F32 / BF16); the K formats (super-blocks of 256) are
 * tests/test_kquant.c's and, in the engine, tests/test_gguf_native.c's. */
#define BLOCK32_TYPES (FR_QT_Q4_1 + 1)

#include <dirent.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef FR_FIXTURES_DIR
#define FR_FIXTURES_DIR "tests/fixtures"
#endif

static fr_rng g_rng;
static const double U = 0x1p-24;

static float urand(float lo, float hi) { return lo + (hi - lo) * (float)fr_rng_uniform(&g_rng); }

/* Test matrices: rows of different character (uniform, normal with outliers, constant,
 * zeros, all negative, tiny values whose scales are float16 subnormals, huge values). */
static void fill_matrix(float *w, int rows, int cols) {
    for (int r = 0; r < rows; r++) {
        float *x = w + (size_t)r * cols;
        int kind = r % 7;
        for (int c = 0; c < cols; c++) {
            switch (kind) {
            case 0: x[c] = urand(-1, 1); break;
            case 1: x[c] = (float)(0.02 * fr_rng_normal(&g_rng)) * (c % 29 == 0 ? 40.f : 1.f); break;
            case 2: x[c] = c < cols / 2 ? 0.3125f : -7.0f; break;
            case 3: x[c] = c % 3 ? 0.f : urand(-1e-3f, 1e-3f); break;
            case 4: x[c] = urand(-5.f, -4.f); break;
            case 5: x[c] = urand(-3e-6f, 3e-6f); break;
            default: x[c] = urand(-3000.f, 3000.f); break;
            }
        }
    }
}

/* ------------------------------------------------------------------ independent decoder */

typedef struct {
    float d, m; /* block scale and minimum (m = 0 for Q8_0, d = 1 for BF16/F32) */
    int q;      /* quant (BF16/F32: unused) */
    float v;    /* dequantized value as the format defines it, in double-free float */
} elem;

/* Decode element c of row r from the documented layout. */
static elem decode(const fr_qmatrix *m, int r, int c) {
    elem e = {1.f, 0.f, 0, 0.f};
    const size_t rb = fr_qtype_row_bytes(m->type, m->cols);
    const uint8_t *row = (const uint8_t *)m->data + rb * (size_t)r;
    const int nb = m->cols / 32, b = c / 32, i = c % 32;
    switch (m->type) {
    case FR_QT_F32: memcpy(&e.v, row + 4 * (size_t)c, 4); break;
    case FR_QT_BF16: {
        uint16_t h;
        memcpy(&h, row + 2 * (size_t)c, 2);
        uint32_t bits = (uint32_t)h << 16;
        memcpy(&e.v, &bits, 4);
        break;
    }
    case FR_QT_Q8_0: {
        uint16_t h;
        memcpy(&h, row + 2 * (size_t)b, 2);
        e.d = fr_q_f16_to_f32(h);
        e.q = ((const int8_t *)(row + 2 * (size_t)nb))[c];
        e.v = e.d * (float)e.q;
        break;
    }
    case FR_QT_Q4_1: {
        uint16_t hd, hm;
        memcpy(&hd, row + 2 * (size_t)b, 2);
        memcpy(&hm, row + 2 * (size_t)(nb + b), 2);
        e.d = fr_q_f16_to_f32(hd);
        e.m = fr_q_f16_to_f32(hm);
        uint8_t byte = row[4 * (size_t)nb + 16 * (size_t)b + (i & 15)];
        e.q = i < 16 ? (byte & 15) : (byte >> 4);
        e.v = e.d * (float)e.q + e.m;
        break;
    }
    default: break;
    }
    return e;
}

/* Exact value and magnitude of element c as used in the matmul bound. */
static void ref_term(const fr_qmatrix *m, int r, int c, double *val, double *mag) {
    elem e = decode(m, r, c);
    if (m->type == FR_QT_Q8_0 || m->type == FR_QT_Q4_1) {
        *val = (double)e.d * e.q + (double)e.m;
        *mag = fabs((double)e.d * e.q) + fabs((double)e.m);
    } else {
        *val = e.v;
        *mag = fabs(e.v);
    }
}

/* ------------------------------------------------------------------ conversions */

static void test_conversions(void) {
    /* float16: known values and an exhaustive round trip */
    CHECK(fr_q_f16_to_f32(0x3C00) == 1.0f && fr_q_f16_to_f32(0xC000) == -2.0f, "f16 1, -2");
    CHECK(fr_q_f16_to_f32(0x7BFF) == 65504.0f && fr_q_f16_to_f32(0x0001) == 0x1p-24f && fr_q_f16_to_f32(0x0400) == 0x1p-14f,
          "f16 max / min subnormal / min normal");
    CHECK(fr_q_f16_to_f32(0x3555) == 0.333251953125f && isinf(fr_q_f16_to_f32(0x7C00)) && isnan(fr_q_f16_to_f32(0x7E00)),
          "f16 1/3, inf, nan");
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = fr_q_f16_to_f32((uint16_t)h);
        if (isnan(f)) {
            bad += !isnan(fr_q_f16_to_f32(fr_q_f32_to_f16(f)));
            continue;
        }
        bad += fr_q_f32_to_f16(f) != h;
    }
    CHECK(bad == 0, "float16 round trip: %d values differ", bad);
    /* rounding to nearest even between f16 neighbours, overflow to inf, subnormals */
    CHECK(fr_q_f32_to_f16(1.0f + 0x1p-11f) == 0x3C00 && fr_q_f32_to_f16(1.0f + 3 * 0x1p-11f) == 0x3C02, "f16 ties to even");
    CHECK(fr_q_f32_to_f16(1.0f + 0x1p-11f + 0x1p-20f) == 0x3C01, "f16 above half rounds up");
    CHECK(fr_q_f32_to_f16(65520.f) == 0x7C00 && fr_q_f32_to_f16(65519.f) == 0x7BFF, "f16 overflow threshold");
    CHECK(fr_q_f32_to_f16(0x1p-25f) == 0 && fr_q_f32_to_f16(0x1.8p-25f) == 1 && fr_q_f32_to_f16(-3 * 0x1p-25f) == 0x8002,
          "f16 subnormal rounding");
    /* bfloat16 */
    CHECK(fr_bf16_encode(1.0f) == 0x3F80 && fr_bf16_decode(0x3F80) == 1.0f, "bf16 1");
    CHECK(fr_bf16_encode(1.0f + 0x1p-8f) == 0x3F80 && fr_bf16_encode(1.0f + 3 * 0x1p-8f) == 0x3F82, "bf16 ties to even");
    CHECK(fr_bf16_encode(1.0f + 0x1p-8f + 0x1p-20f) == 0x3F81, "bf16 above half rounds up");
    CHECK(isnan(fr_bf16_decode(fr_bf16_encode(NAN))) && isinf(fr_bf16_decode(fr_bf16_encode(INFINITY))), "bf16 nan/inf");
    double worst = 0;
    for (int i = 0; i < 100000; i++) {
        float x = (float)(fr_rng_normal(&g_rng) * pow(10.0, urand(-30, 30)));
        double e = fabs((double)fr_bf16_decode(fr_bf16_encode(x)) - x) / fabs((double)x);
        if (e > worst) worst = e;
    }
    CHECK(worst <= 0x1p-8, "bf16 relative error %.3g > 2^-8", worst);

    CHECK(fr_qtype_parse("q8_0") == FR_QT_Q8_0 && fr_qtype_parse("q4_1") == FR_QT_Q4_1 && fr_qtype_parse("bf16") == FR_QT_BF16 &&
              fr_qtype_parse("f32") == FR_QT_F32 && fr_qtype_parse("q3_k") == -1 && fr_qtype_parse(NULL) == -1,
          "fr_qtype_parse");
    CHECK(fr_qtype_row_bytes(FR_QT_Q8_0, 64) == 68 && fr_qtype_row_bytes(FR_QT_Q4_1, 64) == 40 &&
              fr_qtype_row_bytes(FR_QT_BF16, 45) == 90 && fr_qtype_row_bytes(FR_QT_F32, 3) == 12,
          "row bytes");
    CHECK(fr_qtype_row_bytes(FR_QT_Q8_0, 48) == 0 && fr_qtype_row_bytes(FR_QT_Q4_1, 33) == 0 && fr_qtype_row_bytes(FR_QT_F32, 0) == 0,
          "row bytes of impossible widths are 0");
}

/* ------------------------------------------------------------------ round trip bounds */

static void test_roundtrip(fr_qtype t, int rows, int cols) {
    float *w = malloc((size_t)rows * cols * sizeof(float)), *row = malloc((size_t)cols * sizeof(float));
    fill_matrix(w, rows, cols);
    fr_qmatrix q;
    int st = fr_qmatrix_from_f32(&q, t, w, rows, cols);
    CHECK(st == FR_OK, "from_f32 %s %dx%d: %s", fr_qtype_name(t), rows, cols, fr_last_error());
    if (st != FR_OK) {
        free(w);
        free(row);
        return;
    }
    CHECK(q.owned && q.rows == rows && q.cols == cols && q.type == t, "matrix fields");
    int viol = 0, loose = 0, rowmis = 0;
    double worst = 0;
    for (int r = 0; r < rows; r++) {
        const float *x = w + (size_t)r * cols;
        fr_qmatrix_row_f32(&q, r, row);
        const int n_groups = t <= FR_QT_BF16 ? 1 : cols / 32;
        for (int b = 0; b < n_groups; b++) {
            int c0 = t <= FR_QT_BF16 ? 0 : b * 32, c1 = t <= FR_QT_BF16 ? cols : c0 + 32;
            float lo = x[c0], hi = x[c0], amax = 0;
            for (int c = c0; c < c1; c++) {
                lo = fminf(lo, x[c]);
                hi = fmaxf(hi, x[c]);
                amax = fmaxf(amax, fabsf(x[c]));
            }
            for (int c = c0; c < c1; c++) {
                elem e = decode(&q, r, c);
                rowmis += memcmp(&e.v, &row[c], 4) != 0;
                double err = fabs((double)x[c] - e.v), bound;
                if (t == FR_QT_F32) bound = 0;
                else if (t == FR_QT_BF16) bound = 0x1p-8 * fabs((double)x[c]);
                else if (t == FR_QT_Q8_0) bound = e.d / 2.0;
                else bound = e.d / 2.0 + 4 * U * (fabs((double)e.m) + 15.0 * e.d);
                if (err > bound) viol++;
                if (bound > 0 && err / bound > worst) worst = err / bound;
            }
            if (t == FR_QT_Q8_0) {
                elem e = decode(&q, r, c0);
                double ideal = amax / 127.0;
                if (!(e.d >= ideal * (1 - 1e-7) && e.d <= ideal * (1 + 0x1p-10) + 0x1p-24)) loose++;
            } else if (t == FR_QT_Q4_1) {
                elem e = decode(&q, r, c0);
                double ideal = ((double)hi - e.m) / 15.0;
                if (!(e.m <= lo && lo - e.m <= 0x1p-10 * fabs((double)lo) + 0x1p-24)) loose++;
                if (!(e.d <= ideal * (1 + 0x1p-10) + 0x1p-24)) loose++;
            }
        }
    }
    CHECK(viol == 0, "%s %dx%d: %d elements beyond the error bound (worst err/bound %.3f)", fr_qtype_name(t), rows, cols,
          viol, worst);
    CHECK(loose == 0, "%s %dx%d: %d blocks with a scale / minimum that is not tight", fr_qtype_name(t), rows, cols, loose);
    CHECK(rowmis == 0, "%s: fr_qmatrix_row_f32 differs from the documented layout in %d elements", fr_qtype_name(t), rowmis);
    fr_qmatrix_free(&q);
    CHECK(q.data == NULL, "free clears");
    free(w);
    free(row);
}

/* ------------------------------------------------------------------ matmul */

static int g_isas[3], g_n_isas;

/* Reference of the int8-activation product (cpu/qmatmul.c, "int8 activations"), written from its
 * definition: per block dx = max|x| / 127, qx = nearbyint(x * (1/dx)), xs = Σ x in FP32;
 * y = Σ_b fl(d_b dx_b) Σ_i q_i qx_i + m_b xs_b, the integer sums exact. Also returns S8 =
 * Σ_b |d_b dx_b| Σ_i |q_i qx_i| + |m_b xs_b| (SIMD kernels scale partial integer sums, lane by
 * lane, so the FP32 accumulation bound needs the magnitudes of the products) and A (the
 * bound of the activation rounding against the FP32-activation product: Σ_b Σ_i |d_b q_i|
 * dx_b (1/2 + 256u), plus |m_b| 32u Σ_i |x_i| for the FP32 block sum). */
static double int8_ref(const fr_qmatrix *q, int r, const float *x, double *S8, double *A) {
    const int nb = q->cols / 32;
    double y = 0, s8 = 0, a = 0;
    for (int b = 0; b < nb; b++) {
        const float *xb = x + 32 * b;
        float amax = 0.f, xs = 0.f;
        double xabs = 0;
        for (int i = 0; i < 32; i++) {
            amax = fmaxf(amax, fabsf(xb[i]));
            xabs += fabs((double)xb[i]);
        }
        /* the block sum in the kernels' documented order (qmatmul.c, quantize_act_row), so
         * that y below is what they compute up to their FP32 accumulation over blocks */
        float lane[8];
        for (int l = 0; l < 8; l++) lane[l] = ((xb[l] + xb[l + 8]) + xb[l + 16]) + xb[l + 24];
        xs = ((lane[0] + lane[4]) + (lane[2] + lane[6])) + ((lane[1] + lane[5]) + (lane[3] + lane[7]));
        const float dx = amax / 127.f, inv = dx > 0.f ? 1.f / dx : 0.f;
        long isum = 0, iabs = 0;
        double qabs = 0;
        elem e0 = decode(q, r, 32 * b);
        for (int i = 0; i < 32; i++) {
            elem e = decode(q, r, 32 * b + i);
            const long p = (long)e.q * (long)nearbyintf(xb[i] * inv);
            isum += p;
            iabs += labs(p);
            qabs += fabs((double)e.d * e.q);
        }
        const float scale = e0.d * dx;
        y += (double)scale * (double)isum + (double)e0.m * xs;
        s8 += fabs((double)scale) * (double)iabs + fabs((double)e0.m * xs);
        a += qabs * dx * (0.5 + 256 * U) + fabs((double)e0.m) * 32 * U * xabs;
    }
    *S8 = s8;
    *A = a;
    return y;
}

/* One shape, one activation mode (int8: 1 for the int8-activation path of Q8_0 / Q4_1). */
static void test_matmul_shape_act(fr_qtype t, int rows, int cols, int M, int int8) {
    float *w = malloc((size_t)rows * cols * sizeof(float));
    float *x = malloc((size_t)M * cols * sizeof(float));
    fill_matrix(w, rows, cols);
    for (size_t i = 0; i < (size_t)M * cols; i++) x[i] = urand(-2, 2);
    /* activation rows of other character: one with an outlier, one with a zero block */
    if (M > 1) x[cols + cols / 2] = 150.f;
    if (M > 2 && cols >= 32) memset(x + 2 * (size_t)cols, 0, 32 * sizeof(float));
    fr_qmatrix q;
    if (fr_qmatrix_from_f32(&q, t, w, rows, cols) != FR_OK) {
        CHECK(0, "from_f32 %s %dx%d: %s", fr_qtype_name(t), rows, cols, fr_last_error());
        free(w);
        free(x);
        return;
    }
    const char *mode = int8 ? "int8 act" : "f32 act";
    fr_qmatmul_set_int8_act(int8);
    CHECK(fr_qmatmul_uses_int8(&q) == (int8 && (t == FR_QT_Q8_0 || t == FR_QT_Q4_1)), "uses_int8 %s %s", fr_qtype_name(t), mode);
    /* bnd: the bound of the kernel's FP32 arithmetic around ref; abnd: int8 vs f32 reference */
    double *ref = malloc((size_t)M * rows * sizeof(double)), *bnd = malloc((size_t)M * rows * sizeof(double));
    double *ref32 = malloc((size_t)M * rows * sizeof(double)), *abnd = malloc((size_t)M * rows * sizeof(double));
    for (int i = 0; i < M; i++)
        for (int r = 0; r < rows; r++) {
            const float *xi = x + (size_t)i * cols;
            double s = 0, S = 0, v, mag;
            for (int c = 0; c < cols; c++) {
                ref_term(&q, r, c, &v, &mag);
                s += (double)xi[c] * v;
                S += fabs((double)xi[c]) * mag;
            }
            const size_t k = (size_t)i * rows + r;
            ref32[k] = ref[k] = s;
            bnd[k] = (cols + 4) * U * S + 1e-37;
            abnd[k] = 0;
            if (int8) {
                double S8, A;
                ref[k] = int8_ref(&q, r, xi, &S8, &A);
                const double b8 = (2.0 * (cols / 32) + 8) * U * S8 + 1e-37;
                abnd[k] = A + b8 + bnd[k];
                bnd[k] = b8;
            }
        }
    float *y0 = NULL;
    for (int k = 0; k < g_n_isas; k++) {
        fr_cpu_set_isa(g_isas[k]);
        const char *isa = fr_cpu_isa_name(g_isas[k]);
        float *y = malloc((size_t)M * rows * sizeof(float));
        for (size_t i = 0; i < (size_t)M * rows; i++) y[i] = NAN;
        fr_qmatmul(y, x, &q, M);
        int viol = 0, aviol = 0;
        double worst = 0;
        for (size_t i = 0; i < (size_t)M * rows; i++) {
            double e = fabs((double)y[i] - ref[i]);
            if (!(e <= bnd[i])) viol++;
            if (e / bnd[i] > worst) worst = e / bnd[i];
            if (int8 && !(fabs((double)y[i] - ref32[i]) <= abnd[i])) aviol++;
        }
        CHECK(viol == 0, "qmatmul %s %s [%s] rows %d cols %d M %d: %d outputs beyond the FP32 bound (worst %.3g x bound)",
              fr_qtype_name(t), mode, isa, rows, cols, M, viol, worst);
        CHECK(aviol == 0, "qmatmul %s %s [%s] rows %d cols %d M %d: %d outputs beyond the activation-rounding bound",
              fr_qtype_name(t), mode, isa, rows, cols, M, aviol);
        if (int8 && M > 1) {
            /* a row's result does not depend on the rows computed beside it */
            float *y1 = malloc((size_t)rows * sizeof(float));
            int diff = 0;
            for (int i = 0; i < M; i++) {
                fr_qmatmul(y1, x + (size_t)i * cols, &q, 1);
                diff += memcmp(y1, y + (size_t)i * rows, (size_t)rows * sizeof(float)) != 0;
            }
            CHECK(diff == 0, "qmatmul %s int8 [%s] rows %d cols %d: %d of %d rows differ from M = 1", fr_qtype_name(t), isa,
                  rows, cols, diff, M);
            free(y1);
        }
        if (k == 0) y0 = y;
        else {
            int dis = 0;
            for (size_t i = 0; i < (size_t)M * rows; i++)
                if (!(fabs((double)y[i] - y0[i]) <= 2 * bnd[i])) dis++;
            CHECK(dis == 0, "qmatmul %s %s %s vs generic rows %d cols %d M %d: %d outputs disagree", fr_qtype_name(t), mode,
                  isa, rows, cols, M, dis);
            free(y);
        }
    }
    fr_cpu_set_isa(-1);
    fr_qmatmul_set_int8_act(-1);
    free(y0);
    free(ref);
    free(bnd);
    free(ref32);
    free(abnd);
    fr_qmatrix_free(&q);
    free(w);
    free(x);
}

static void test_matmul_shape(fr_qtype t, int rows, int cols, int M) {
    test_matmul_shape_act(t, rows, cols, M, 0);
    if (t == FR_QT_Q8_0 || t == FR_QT_Q4_1) test_matmul_shape_act(t, rows, cols, M, 1);
}

static void test_matmul(void) {
    static const int ROWS[] = {1, 7, 33, 100};
    static const int COLS[] = {32, 96, 288, 1056};
    static const int MS[] = {1, 3, 4, 17};
    for (int t = FR_QT_F32; t < BLOCK32_TYPES; t++)
        for (int a = 0; a < 4; a++)
            for (int b = 0; b < 4; b++)
                for (int c = 0; c < 4; c++) test_matmul_shape((fr_qtype)t, ROWS[a], COLS[b], MS[c]);
    /* widths that are not a multiple of 32 (F32, BF16 only) */
    static const int ODD[] = {1, 17, 45, 67};
    for (int t = FR_QT_F32; t <= FR_QT_BF16; t++)
        for (int b = 0; b < 4; b++) {
            test_matmul_shape((fr_qtype)t, 9, ODD[b], 1);
            test_matmul_shape((fr_qtype)t, 9, ODD[b], 5);
        }
    /* several dequantization tiles (8 MiB of FP32 per tile: 256 rows of 8192) */
    test_matmul_shape(FR_QT_Q4_1, 300, 8192, 4);
    test_matmul_shape(FR_QT_Q8_0, 300, 8192, 1);
    /* int8 path: several activation groups of 4 and L2 tiles of W rows, odd block counts */
    test_matmul_shape(FR_QT_Q8_0, 517, 1056, 11);
    test_matmul_shape(FR_QT_Q4_1, 517, 1056, 6);
    /* Q4_1 with one activation row takes a thread's rows from up to three streams
     * (qmatmul_zmm.c): long rows and groups of four short ones, with three and two streams and
     * remainders; the M > 1 check above compares each row with the M = 1 product bit for bit */
    test_matmul_shape(FR_QT_Q4_1, 1030, 256, 3);
    test_matmul_shape(FR_QT_Q4_1, 301, 1056, 2);
    test_matmul_shape(FR_QT_Q4_1, 240, 1056, 2);
    test_matmul_shape(FR_QT_Q4_1, 1300, 256, 2);
    /* block counts that take every path of the 512-bit kernels (groups of 16 and 8, Q4_1's
     * quads, its trailing pair and lone block): 2, 8, 14 = 8 + 4 + 2, 27 = 16 + 8 + 2 + 1, 64 */
    static const int ZMM_COLS[] = {64, 256, 448, 864, 2048};
    for (int b = 0; b < 5; b++)
        for (int c = 0; c < 3; c++) {
            test_matmul_shape(FR_QT_Q8_0, 37, ZMM_COLS[b], (int[]){1, 2, 5}[c]);
            test_matmul_shape(FR_QT_Q4_1, 37, ZMM_COLS[b], (int[]){1, 2, 5}[c]);
        }
}

/* fr_qmatmul_batch: every job's result is bit-identical to fr_qmatmul alone, whether the jobs
 * run together (all int8) or one after another (a BF16 job among them). */
static void test_matmul_batch(void) {
    enum { NJ = 5 };
    const int rows[NJ] = {96, 7, 300, 33, 64}, cols[NJ] = {64, 288, 96, 1056, 32}, Ms[NJ] = {1, 2, 5, 1, 3};
    for (int mixed = 0; mixed <= 1; mixed++) {
        fr_qmatrix q[NJ];
        float *x[NJ], *y[NJ], *y1[NJ];
        fr_qmatmul_job jobs[NJ];
        for (int i = 0; i < NJ; i++) {
            float *w = malloc((size_t)rows[i] * cols[i] * sizeof(float));
            fill_matrix(w, rows[i], cols[i]);
            const fr_qtype t = mixed && i == 2 ? FR_QT_BF16 : (i & 1 ? FR_QT_Q4_1 : FR_QT_Q8_0);
            CHECK(fr_qmatrix_from_f32(&q[i], t, w, rows[i], cols[i]) == FR_OK, "batch matrix %d", i);
            free(w);
            x[i] = malloc((size_t)Ms[i] * cols[i] * sizeof(float));
            y[i] = malloc((size_t)Ms[i] * rows[i] * sizeof(float));
            y1[i] = malloc((size_t)Ms[i] * rows[i] * sizeof(float));
            for (int k = 0; k < Ms[i] * cols[i]; k++) x[i][k] = urand(-1, 1);
            fr_qmatmul(y1[i], x[i], &q[i], Ms[i]);
            jobs[i] = (fr_qmatmul_job){y[i], x[i], &q[i], Ms[i]};
        }
        fr_qmatmul_batch(jobs, NJ);
        for (int i = 0; i < NJ; i++) {
            CHECK(!memcmp(y[i], y1[i], (size_t)Ms[i] * rows[i] * sizeof(float)), "batch job %d (%s%s) differs from fr_qmatmul", i,
                  fr_qtype_name(q[i].type), mixed ? ", mixed batch" : "");
            fr_qmatrix_free(&q[i]);
            free(x[i]);
            free(y[i]);
            free(y1[i]);
        }
    }
}

/* Jobs that share their input (the query and latent projections of one row, an expert's gate
 * and up): fr_qmatmul_batch quantizes it once per layout (Q8_0 plain, Q4_1 pair-interleaved)
 * and every result stays bit-identical to fr_qmatmul alone, for a single pass (M <= 4) and
 * for the tiled prefill path (M = 6). */
/* FP32 weights times a prompt's rows (16 .. 1024 of them) go through
 * oneDNN's matmul primitive when the library has it (onednn_f32.c): the same bits from run to
 * run and on 1 and 2 threads, and the products of a double reference within the FP32 bound
 * (|err| <= (K + 4) u sum |x w|, as test_matmul_shape). Shapes at the edges of the row range
 * and a new shape between two calls of an old one (the primitive cache). */
static void test_f32_prompt_products(void) {
    static const int SH[][3] = {{16, 288, 1024}, {64, 1024, 256}, {17, 100, 96}, {300, 64, 1024}, {1024, 33, 64}, {16, 288, 1024}};
    const int nth = omp_get_max_threads();
    for (int s = 0; s < 6; s++) {
        const int M = SH[s][0], rows = SH[s][1], cols = SH[s][2];
        float *w = malloc((size_t)rows * cols * sizeof(float)), *x = malloc((size_t)M * cols * sizeof(float));
        for (size_t i = 0; i < (size_t)rows * cols; i++) w[i] = urand(-1, 1);
        for (size_t i = 0; i < (size_t)M * cols; i++) x[i] = urand(-2, 2);
        fr_qmatrix q;
        CHECK(fr_qmatrix_from_f32(&q, FR_QT_F32, w, rows, cols) == FR_OK, "f32 matrix %dx%d", rows, cols);
        float *y[3];
        for (int k = 0; k < 3; k++) {
            y[k] = malloc((size_t)M * rows * sizeof(float));
            for (size_t i = 0; i < (size_t)M * rows; i++) y[k][i] = NAN;
            omp_set_num_threads(k == 2 ? 1 : nth);
            fr_qmatmul(y[k], x, &q, M);
        }
        omp_set_num_threads(nth);
        int viol = 0;
        for (int i = 0; i < M; i++)
            for (int r = 0; r < rows; r++) {
                double ref = 0, mag = 0;
                for (int c = 0; c < cols; c++) {
                    ref += (double)x[(size_t)i * cols + c] * w[(size_t)r * cols + c];
                    mag += fabs((double)x[(size_t)i * cols + c] * w[(size_t)r * cols + c]);
                }
                viol += !(fabs(y[0][(size_t)i * rows + r] - ref) <= (cols + 4) * U * mag + 1e-37);
            }
        CHECK(viol == 0, "f32 prompt product M %d %dx%d: %d outputs beyond the FP32 bound", M, rows, cols, viol);
        CHECK(memcmp(y[0], y[1], (size_t)M * rows * sizeof(float)) == 0, "f32 prompt product M %d %dx%d: not reproducible", M,
              rows, cols);
        CHECK(memcmp(y[0], y[2], (size_t)M * rows * sizeof(float)) == 0, "f32 prompt product M %d %dx%d: depends on the threads",
              M, rows, cols);
        for (int k = 0; k < 3; k++) free(y[k]);
        fr_qmatrix_free(&q);
        free(w);
        free(x);
    }
}

static void test_matmul_batch_shared(void) {
    enum { NJ = 5, COLS = 96 };
    const int rows[NJ] = {40, 7, 130, 64, 3};
    for (int M = 1; M <= 6; M += 5) {
        fr_qmatrix q[NJ];
        float *x = malloc((size_t)M * COLS * sizeof(float)), *y[NJ], *y1[NJ];
        for (int k = 0; k < M * COLS; k++) x[k] = urand(-1, 1);
        fr_qmatmul_job jobs[NJ];
        for (int i = 0; i < NJ; i++) {
            float *w = malloc((size_t)rows[i] * COLS * sizeof(float));
            fill_matrix(w, rows[i], COLS);
            CHECK(fr_qmatrix_from_f32(&q[i], i & 1 ? FR_QT_Q4_1 : FR_QT_Q8_0, w, rows[i], COLS) == FR_OK, "shared matrix %d", i);
            free(w);
            y[i] = malloc((size_t)M * rows[i] * sizeof(float));
            y1[i] = malloc((size_t)M * rows[i] * sizeof(float));
            fr_qmatmul(y1[i], x, &q[i], M);
            jobs[i] = (fr_qmatmul_job){y[i], x, &q[i], M};
        }
        fr_qmatmul_batch(jobs, NJ);
        for (int i = 0; i < NJ; i++) {
            CHECK(!memcmp(y[i], y1[i], (size_t)M * rows[i] * sizeof(float)), "shared-input batch job %d (%s, M %d) differs",
                  i, fr_qtype_name(q[i].type), M);
            fr_qmatrix_free(&q[i]);
            free(y[i]);
            free(y1[i]);
        }
        free(x);
    }
}

/* ------------------------------------------------------------------ bad inputs (matrices) */

static void test_bad_matrix(void) {
    float w[2 * 48];
    for (int i = 0; i < 96; i++) w[i] = (float)i;
    fr_qmatrix q;
    int st = fr_qmatrix_from_f32(&q, FR_QT_Q8_0, w, 2, 48);
    CHECK(st == FR_ERR_ARG && strstr(fr_last_error(), "multiple of 32"), "cols 48 for q8_0: %d %s", st, fr_last_error());
    st = fr_qmatrix_from_f32(&q, FR_QT_BF16, w, 2, 48);
    CHECK(st == FR_OK, "bf16 takes any width");
    fr_qmatrix_free(&q);
    float z[32] = {0};
    z[5] = NAN;
    st = fr_qmatrix_from_f32(&q, FR_QT_Q4_1, z, 1, 32);
    CHECK(st == FR_ERR_ARG && strstr(fr_last_error(), "non-finite"), "NaN refused: %s", fr_last_error());
    z[5] = 1e10f;
    st = fr_qmatrix_from_f32(&q, FR_QT_Q8_0, z, 1, 32);
    CHECK(st == FR_ERR_ARG && strstr(fr_last_error(), "float16"), "scale beyond float16 refused: %s", fr_last_error());
    st = fr_qmatrix_from_f32(&q, (fr_qtype)7, z, 1, 32);
    CHECK(st == FR_ERR_ARG, "unknown type refused");
}

/* ------------------------------------------------------------------ checkpoints */


static int write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    fputs(text, f);
    return fclose(f);
}

static int exists(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0;
}

static int is_linear_name(const char *name) {
    size_t n = strlen(name);
    return (n > 12 && strcmp(name + n - 12, "_proj.weight") == 0) || strstr(name, ".kv_a_proj_with_mqa.weight");
}

/* What fr_quantize_model stores for matrix `name` under --type ty (docs/quantization.md): q4_1
 * by our quantizer, the *_proj matrices and kv_a only; bf16 and q8_0 are GGUF export schemes:
 * the embedding and the head too, q8_0 by ggml's encoder, with kv_b_proj FP32 (the engine splits
 * it as the GGUF's attn_k_b / attn_v_b). Returns 0 for a tensor kept FP32. */
static int stored_as(fr_qtype ty, const char *name, const float *w, int rows, int cols, fr_qmatrix *out) {
    const int head = !strcmp(name, "model.embed_tokens.weight") || !strcmp(name, "lm_head.weight");
    if (!(is_linear_name(name) || (ty != FR_QT_Q4_1 && head)) || (ty == FR_QT_Q8_0 && strstr(name, "kv_b_proj"))) return 0;
    const int rc = ty == FR_QT_Q8_0 ? fr_qmatrix_from_f32_ggml(out, FR_GGML_Q8_0, w, rows, cols)
                                    : fr_qmatrix_from_f32(out, ty, w, rows, cols);
    return rc == FR_OK ? 1 : -1;
}

/* No leftover temporary folder beside out ("<out>.tmp-*"). */
static int no_tmp_left(const char *parent) {
    DIR *d = opendir(parent);
    if (!d) return 1;
    struct dirent *de;
    int n = 0;
    while ((de = readdir(d)) != NULL) n += strstr(de->d_name, ".tmp-") != NULL;
    closedir(d);
    return n == 0;
}

static int count_calls(void *user, double frac, const char *phase) {
    (void)frac;
    (void)phase;
    (*(int *)user)++;
    return 0;
}

static int cancel_now(void *user, double frac, const char *phase) {
    (void)user;
    (void)frac;
    (void)phase;
    return 1;
}

static void test_checkpoint(const char *tmp) {
    char src[512], path[1200];
    snprintf(src, sizeof src, "%s/fp32", tmp);
    mkdir(src, 0755);
    fr_config cfg;
    fr_model *m = NULL;
    const char *qcfg = fr_test_q32_config(1024);
    CHECK(fr_config_parse(&cfg, qcfg, strlen(qcfg)) == FR_OK, "config: %s", fr_last_error());
    CHECK(fr_model_create(&m, &cfg, 7) == FR_OK, "create: %s", fr_last_error());
    if (!m) return;
    CHECK(fr_model_save(m, src) == FR_OK, "save: %s", fr_last_error());
    snprintf(path, sizeof path, "%s/tokenizer.json", src);
    write_text(path, "{\"fake\": true}\n");
    snprintf(path, sizeof path, "%s/generation_config.json", src);
    write_text(path, "{\"max_new_tokens\": 5}\n");

    fr_st_set orig;
    CHECK(fr_st_set_open_dir(&orig, src) == FR_OK, "open source");

    /* loading a float checkpoint as each format equals quantizing its FP32 values */
    {
        const char *nm = "model.layers.0.mlp.down_proj.weight";
        const fr_st_tensor *t = fr_st_set_find(&orig, nm);
        for (int ty = 0; ty < BLOCK32_TYPES && t; ty++) {
            fr_qmatrix a, b;
            int r1 = fr_qmatrix_load(&a, &orig, nm, (int)t->shape[0], (int)t->shape[1], (fr_qtype)ty);
            int r2 = fr_qmatrix_from_f32(&b, (fr_qtype)ty, (const float *)t->data, (int)t->shape[0], (int)t->shape[1]);
            CHECK(r1 == FR_OK && r2 == FR_OK && a.type == (fr_qtype)ty &&
                      memcmp(a.data, b.data, fr_qtype_row_bytes((fr_qtype)ty, a.cols) * a.rows) == 0,
                  "load float as %s equals from_f32", fr_qtype_name((fr_qtype)ty));
            fr_qmatrix_free(&a);
            fr_qmatrix_free(&b);
        }
        fr_qmatrix a;
        int st = fr_qmatrix_load(&a, &orig, nm, 3, (int)t->shape[1], FR_QT_Q8_0);
        CHECK(st == FR_ERR_FORMAT && strstr(fr_last_error(), nm), "wrong shape names the tensor: %s", fr_last_error());
        st = fr_qmatrix_load(&a, &orig, "model.layers.0.nope.weight", 3, 32, FR_QT_Q8_0);
        CHECK(st == FR_ERR_FORMAT && strstr(fr_last_error(), "nope") && strstr(fr_last_error(), "missing"),
              "missing tensor: %s", fr_last_error());
    }

    double loss_fp32 = 0;
    {
        int tokens[2 * 24], targets[2 * 24];
        for (int i = 0; i < 48; i++) tokens[i] = (i * 37 + 11) % 1024, targets[i] = (i * 53 + 5) % 1024;
        fr_loss_info li;
        CHECK(fr_model_forward_eval(m, tokens, targets, 2, 24, &li) == FR_OK, "fp32 forward");
        loss_fp32 = li.loss_main;
    }

    for (int ty = FR_QT_BF16; ty < BLOCK32_TYPES; ty++) {
        char out[600];
        snprintf(out, sizeof out, "%s/out-%s", tmp, fr_qtype_name((fr_qtype)ty));
        int calls = 0;
        int st = fr_quantize_model(src, out, fr_qtype_name((fr_qtype)ty), count_calls, &calls);
        CHECK(st == FR_OK, "quantize %s: %s", fr_qtype_name((fr_qtype)ty), fr_last_error());
        if (st != FR_OK) continue;
        CHECK(calls > 0 && no_tmp_left(tmp), "progress called, no temporary folder left");
        snprintf(path, sizeof path, "%s/tokenizer.json", out);
        CHECK(exists(path), "tokenizer.json copied");
        snprintf(path, sizeof path, "%s/generation_config.json", out);
        CHECK(exists(path), "generation_config.json copied");
        snprintf(path, sizeof path, "%s/config.json", out);
        char *text = NULL;
        size_t len = 0;
        CHECK(fr_read_file(path, &text, &len) == FR_OK, "read config");
        char want[64];
        snprintf(want, sizeof want, "\"format\":\t\"%s\"", fr_qtype_name((fr_qtype)ty));
        if (ty == FR_QT_BF16)
            CHECK(text && !strstr(text, "quantization_config") && strstr(text, "\"torch_dtype\":\t\"bfloat16\""),
                  "bf16 config: %s", text ? text : "(null)");
        else
            CHECK(text && strstr(text, "\"quantization_config\"") && strstr(text, "\"quant_method\":\t\"frugal\"") &&
                      strstr(text, want) && strstr(text, "\"block_size\":\t32") && strstr(text, "modules_not_quantized") &&
                      strstr(text, "model.embed_tokens") && strstr(text, "lm_head") && strstr(text, "model.layers.1.mlp.gate\""),
                  "quantization_config: %s", text ? text : "(null)");
        fr_config c2;
        CHECK(text && fr_config_parse(&c2, text, len) == FR_OK && c2.hidden_size == 64, "config still parses");
        free(text);

        fr_st_set qs;
        st = fr_st_set_open_dir(&qs, out);
        CHECK(st == FR_OK, "open quantized: %s", fr_last_error());
        if (st != FR_OK) continue;
        int n_lin = 0, n_ok = 0, n_other = 0, n_other_ok = 0;
        for (int i = 0; i < orig.files[0].n_tensors; i++) {
            const fr_st_tensor *t = &orig.files[0].tensors[i];
            fr_qmatrix a, b, f;
            const int as = t->ndim == 2 ? stored_as((fr_qtype)ty, t->name, (const float *)t->data, (int)t->shape[0],
                                                    (int)t->shape[1], &b) : 0;
            if (as) {
                n_lin++;
                int rows = (int)t->shape[0], cols = (int)t->shape[1];
                int ok = as == 1 && fr_qmatrix_stored_type(&qs, t->name) == ty;
                ok &= fr_qmatrix_load(&a, &qs, t->name, rows, cols, (fr_qtype)ty) == FR_OK;
                ok &= a.type == (fr_qtype)ty && memcmp(a.data, b.data, fr_qtype_row_bytes((fr_qtype)ty, cols) * rows) == 0;
                /* wanting FP32 from the quantized file gives the dequantized values */
                ok &= fr_qmatrix_load(&f, &qs, t->name, rows, cols, FR_QT_F32) == FR_OK;
                float *row = malloc((size_t)cols * sizeof(float));
                for (int r = 0; ok && r < rows; r++) {
                    fr_qmatrix_row_f32(&b, r, row);
                    ok &= memcmp(row, (const float *)f.data + (size_t)r * cols, (size_t)cols * 4) == 0;
                }
                free(row);
                /* no float tensor under the original name for block formats */
                if (ty != FR_QT_BF16) ok &= fr_st_set_find(&qs, t->name) == NULL;
                n_ok += ok;
                fr_qmatrix_free(&a);
                fr_qmatrix_free(&b);
                fr_qmatrix_free(&f);
            } else {
                n_other++;
                const fr_st_tensor *u = fr_st_set_find(&qs, t->name);
                n_other_ok += u && u->dtype == FR_DT_F32 && u->nbytes == t->nbytes && memcmp(u->data, t->data, t->nbytes) == 0;
            }
        }
        CHECK(n_lin > 10 && n_ok == n_lin, "%s: %d of %d linear weights load as stored", fr_qtype_name((fr_qtype)ty), n_ok,
              n_lin);
        CHECK(n_other > 5 && n_other_ok == n_other, "%s: %d of %d other tensors kept FP32 bit for bit",
              fr_qtype_name((fr_qtype)ty), n_other_ok, n_other);
        /* a wrong expected shape of a quantized tensor names the tensor */
        fr_qmatrix a;
        if (ty != FR_QT_BF16) {
            st = fr_qmatrix_load(&a, &qs, "model.layers.0.mlp.up_proj.weight", 95, 64, (fr_qtype)ty);
            CHECK(st == FR_ERR_FORMAT && strstr(fr_last_error(), "model.layers.0.mlp.up_proj"), "wrong rows: %s",
                  fr_last_error());
        }
        fr_st_set_close(&qs);

        /* the FP32 loader refuses block formats (no "<base>.weight"); bf16 folders load */
        fr_model *m2 = NULL;
        st = fr_model_load(&m2, out);
        if (ty == FR_QT_BF16) CHECK(st == FR_OK, "fr_model_load(bf16): %s", fr_last_error());
        else CHECK(st != FR_OK, "fr_model_load refuses %s", fr_qtype_name((fr_qtype)ty));
        if (m2) fr_model_free(m2);
        m2 = NULL;
        st = fr_model_load_dequantized(&m2, out);
        CHECK(st == FR_OK, "load dequantized %s: %s", fr_qtype_name((fr_qtype)ty), fr_last_error());
        if (st == FR_OK) {
            /* dequantized parameters equal fr_qmatrix_row_f32 of the stored matrices (kv_b_proj,
             * the embedding: FP32 ones equal the source) */
            static const char *const names[2] = {"model.layers.1.self_attn.kv_b_proj.weight", "model.embed_tokens.weight"};
            for (int k = 0; k < 2; k++) {
                size_t n = 0;
                const float *p = fr_model_param(m2, names[k], &n), *p0 = fr_model_param(m, names[k], NULL);
                const int cols = k ? 64 : 32, rows = (int)(n / (size_t)cols);
                fr_qmatrix b;
                const int as = p ? stored_as((fr_qtype)ty, names[k], p0, rows, cols, &b) : -1;
                int ok = as == 0 ? memcmp(p, p0, n * 4) == 0 : as == 1;
                float row[64];
                for (int r = 0; as == 1 && ok && r < rows; r++) {
                    fr_qmatrix_row_f32(&b, r, row);
                    ok &= memcmp(row, p + (size_t)r * cols, (size_t)cols * 4) == 0;
                }
                if (as == 1) fr_qmatrix_free(&b);
                CHECK(ok, "dequantized %s: %s", fr_qtype_name((fr_qtype)ty), names[k]);
            }
            CHECK(fr_model_config(m2)->num_nextn_predict_layers == 1, "MTP module found through its quantized eh_proj");
            int tokens[2 * 24], targets[2 * 24];
            for (int i = 0; i < 48; i++) tokens[i] = (i * 37 + 11) % 1024, targets[i] = (i * 53 + 5) % 1024;
            fr_loss_info li;
            CHECK(fr_model_forward_eval(m2, tokens, targets, 2, 24, &li) == FR_OK, "forward");
            /* an untrained model: the loss stays near ln(1024) whatever the format; the
             * formats change it by little (the bound is loose: this only catches garbage) */
            CHECK(fabs(li.loss_main - loss_fp32) < 0.05, "%s loss %.5f vs fp32 %.5f", fr_qtype_name((fr_qtype)ty),
                  li.loss_main, loss_fp32);
            fr_model_free(m2);
        }
        /* the output folder exists now: a second run is refused, the folder untouched */
        st = fr_quantize_model(src, out, fr_qtype_name((fr_qtype)ty), NULL, NULL);
        CHECK(st == FR_ERR_ARG && strstr(fr_last_error(), "not empty"), "existing output refused: %s", fr_last_error());
        /* quantizing a quantized folder is refused */
        char out2[700];
        snprintf(out2, sizeof out2, "%s/re-%s", tmp, fr_qtype_name((fr_qtype)ty));
        st = fr_quantize_model(out, out2, "q8_0", NULL, NULL);
        if (ty == FR_QT_BF16) {
            CHECK(st == FR_OK, "a bf16 folder is a float checkpoint: quantizes to q8_0: %s", fr_last_error());
        } else {
            CHECK(st == FR_ERR_ARG && strstr(fr_last_error(), "already quantized"), "requantize refused: %s", fr_last_error());
            CHECK(!exists(out2), "no output on failure");
        }
    }
    fr_st_set_close(&orig);

    /* bad inputs */
    char out[600];
    snprintf(out, sizeof out, "%s/bad", tmp);
    int st = fr_quantize_model(src, out, "q3_k", NULL, NULL);
    CHECK(st == FR_ERR_ARG && strstr(fr_last_error(), "q3_k"), "unknown type: %s", fr_last_error());
    st = fr_quantize_model(src, out, "f32", NULL, NULL);
    CHECK(st == FR_ERR_ARG, "f32 is not a quantization type");
    snprintf(path, sizeof path, "%s/no-such-model", tmp);
    st = fr_quantize_model(path, out, "q8_0", NULL, NULL);
    CHECK(st == FR_ERR_IO && strstr(fr_last_error(), "no-such-model"), "missing model: %s", fr_last_error());
    st = fr_quantize_model(FR_FIXTURES_DIR "/v3_mtp", out, "q8_0", NULL, NULL);
    CHECK(st == FR_ERR_ARG && strstr(fr_last_error(), "_proj.weight") && strstr(fr_last_error(), "multiple of 32"),
          "width not a multiple of 32 names the tensor: %s", fr_last_error());
    CHECK(!exists(out) && no_tmp_left(tmp), "nothing written on failure");
    st = fr_quantize_model(src, out, "q4_1", cancel_now, NULL);
    CHECK(st == FR_ERR_STATE && !exists(out) && no_tmp_left(tmp), "cancel leaves nothing");
    /* bf16 takes any width: the fixture converts */
    st = fr_quantize_model(FR_FIXTURES_DIR "/v3_mtp", out, "bf16", NULL, NULL);
    CHECK(st == FR_OK, "bf16 of the fixture: %s", fr_last_error());

    /* fr_eval_dataset on a prepared dataset equals the loss of each window computed alone */
    {
        char data[600], tok_dir[600];
        snprintf(data, sizeof data, "%s/data", tmp);
        snprintf(tok_dir, sizeof tok_dir, "%s/tokenizer/frugal_trained", FR_FIXTURES_DIR);
        const char *inputs[] = {FR_FIXTURES_DIR "/tokenizer/corpus.jsonl"};
        fr_data_prepare_options o;
        memset(&o, 0, sizeof o);
        o.tokenizer_dir = tok_dir;
        o.inputs = inputs;
        o.n_inputs = 1;
        o.output_dir = data;
        o.val_fraction = 0.2;
        o.num_threads = 2;
        st = fr_data_prepare(&o, NULL);
        CHECK(st == FR_OK, "prepare: %s", fr_last_error());
        double mean = 0;
        long nt = 0;
        if (st == FR_OK) st = fr_eval_dataset(m, data, "val", 32, 3, 32 * 7 + 1, &mean, &nt);
        CHECK(st == FR_OK && nt == 32 * 7, "eval dataset: %s (%ld targets)", fr_last_error(), nt);
        if (st == FR_OK) {
            fr_dataset *ds = NULL;
            fr_dataset_open(&ds, data, "val");
            double sum = 0;
            int buf[33], tk[32], tg[32];
            for (int wdx = 0; wdx < 7; wdx++) {
                fr_dataset_read(ds, (uint64_t)wdx * 32, buf, 33);
                for (int i = 0; i < 32; i++) tk[i] = buf[i], tg[i] = buf[i + 1];
                fr_loss_info li;
                fr_model_forward_eval(m, tk, tg, 1, 32, &li);
                sum += li.loss_main;
            }
            fr_dataset_close(ds);
            CHECK(fabs(sum / 7 - mean) <= 1e-5 * fabs(mean), "eval dataset mean %.7f vs per window %.7f", mean, sum / 7);
        }
        st = fr_eval_dataset(m, data, "val", 32, 3, 20, &mean, &nt);
        CHECK(st == FR_ERR_ARG && strstr(fr_last_error(), "fewer than"), "too few tokens: %s", fr_last_error());
    }
    fr_model_free(m);
}

static void rm_rf(const char *path) {
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", path);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", path);
}

int main(void) {
    fr_rng_seed(&g_rng, 12345);
    for (int isa = FR_ISA_GENERIC; isa <= FR_ISA_AVX512; isa++)
        if (fr_cpu_isa_supported(isa)) g_isas[g_n_isas++] = isa;
    printf("instruction sets tested:");
    for (int k = 0; k < g_n_isas; k++) printf(" %s", fr_cpu_isa_name(g_isas[k]));
    printf(" (CPU features: %s)\n", fr_cpu_features());

    test_conversions();
    static const int RC[][2] = {{1, 32}, {7, 64}, {33, 96}, {70, 320}};
    for (int t = FR_QT_F32; t < BLOCK32_TYPES; t++)
        for (int i = 0; i < 4; i++) test_roundtrip((fr_qtype)t, RC[i][0], RC[i][1]);
    test_roundtrip(FR_QT_BF16, 14, 45);
    test_bad_matrix();
    test_matmul();
    test_matmul_batch();
    test_matmul_batch_shared();
    test_f32_prompt_products();

    char tmp[] = "/tmp/frugal-test-quant-XXXXXX";
    if (!mkdtemp(tmp)) {
        CHECK(0, "mkdtemp");
        return fr_test_finish("test_quant");
    }
    test_checkpoint(tmp);
    rm_rf(tmp);
    return fr_test_finish("test_quant");
}
