/*
 * test_fp8_recipe.c — the FP8 training quantizer (fr_ops.fp8_quantize, src/cpu/fp8_recipe.c)
 * against an independent reference.
 *
 * The reference lists the 127 finite non-negative E4M3 values from their definition
 * (ldexp: subnormals m 2^-9, normals (1 + m/8) 2^(e-7), e4m3fn: 448 the largest) and rounds
 * by searching that list in double: nearest value, ties to the even code, saturation at 448.
 * The scale per tile is recomputed here from the tile's own amax (s = max(amax, 1e-4) / 448,
 * the division x / s in FP32 as the recipe defines it). Checked:
 *   - every E4M3 code's value and every rounding tie between neighbours (both directions);
 *   - 1 x 128 (activation), 128 x 128 (weight) and 128 x 1 (weight-gradient activation)
 *     tiles over a 200 x 300 matrix with partial tiles and a dynamic range of 2^-20 .. 2^10
 *     per tile: values and scales equal to the reference bit for bit;
 *   - a tile's amax (when above the 1e-4 floor) comes back within a float rounding (448 s),
 *     zero tiles stay zero;
 *   - NaN and Inf inputs are counted (the caller fails);
 *   - a GEMM over quantized operands (the CPU's FP8 GEMM emulation) equals the double
 *     product of the dequantized operands within 2e-6 relative (FP32 accumulation, K = 512).
 */
#include "frugal.h"
#include "cpu/ops_cpu.h"
#include "model/ops.h"
#include "testutil.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static double g_vals[128]; /* finite non-negative E4M3 values by code 0..126 */

static void make_values(void) {
    for (int c = 0; c < 127; c++) {
        const int e = c >> 3, m = c & 7;
        g_vals[c] = e == 0 ? ldexp(m, -9) : ldexp(8 + m, e - 10);
    }
}

/* Nearest E4M3 value of v (ties to the even code), saturating at 448; NaN stays NaN. */
static double ref_round(double v) {
    if (isnan(v)) return v;
    const double a = fabs(v);
    int best = 0;
    for (int c = 1; c < 127; c++) {
        const double d = fabs(g_vals[c] - a), db = fabs(g_vals[best] - a);
        if (d < db || (d == db && (c & 1) == 0)) best = c;
    }
    if (a >= 448.0) best = 126;
    return v < 0 ? -g_vals[best] : g_vals[best];
}

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static double urand(void) {
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (double)(g_rng >> 11) * 0x1p-53;
}

static void test_codes_and_ties(const fr_ops *o) {
    /* one tile of 1 x 256 whose amax is exactly 448: s = 1, so values are E4M3 values */
    float x[512], y[512];
    int bad = 0, n = 0;
    for (int c = 0; c < 127; c++) x[n++] = (float)g_vals[c], x[n++] = -(float)g_vals[c];
    for (int c = 0; c + 1 < 127; c++) {
        if (n + 2 > 510) break;
        const double mid = 0.5 * (g_vals[c] + g_vals[c + 1]);
        x[n++] = (float)mid;                       /* a tie (exact in float) */
        x[n++] = (float)nextafter(mid, 0.0);       /* just below */
    }
    x[n++] = 448.0f;
    float s;
    const long nonfinite = o->fp8_quantize(y, n, &s, x, n, 1, n, 1, n);
    CHECK(nonfinite == 0 && s == 1.0f, "codes: scale %g, %ld non-finite", s, nonfinite);
    for (int i = 0; i < n; i++)
        if ((double)y[i] != ref_round((double)x[i])) {
            if (bad < 5) printf("code/tie %g -> %g, reference %g\n", x[i], y[i], ref_round(x[i]));
            bad++;
        }
    CHECK(bad == 0, "E4M3 values and rounding ties: %d of %d differ from the reference", bad, n);
    /* saturation: x / s above 448 cannot happen inside a tile, but 448 must come back as 448 */
    CHECK(y[n - 1] == 448.0f, "448 stays 448");
}

static void test_tiles(const fr_ops *o, int rows, int cols, int tr, int tc, const char *name) {
    const int ld = cols + 3; /* a row stride wider than the row */
    float *x = calloc((size_t)rows * ld, sizeof *x), *y = calloc((size_t)rows * ld, sizeof *y);
    const int ntr = (rows + tr - 1) / tr, ntc = (cols + tc - 1) / tc;
    float *sc = calloc((size_t)ntr * ntc, sizeof *sc);
    /* each tile its own magnitude, 2^-20 .. 2^10, one tile all zero */
    for (int i = 0; i < ntr; i++)
        for (int j = 0; j < ntc; j++) {
            const double mag = (i == 1 && j == 0) ? 0.0 : ldexp(1.0, (int)(urand() * 31) - 20);
            for (int r = i * tr; r < rows && r < (i + 1) * tr; r++)
                for (int c = j * tc; c < cols && c < (j + 1) * tc; c++)
                    x[(size_t)r * ld + c] = (float)(mag * (2 * urand() - 1) * (urand() < 0.1 ? 1e-3 : 1.0));
        }
    const long nonfinite = o->fp8_quantize(y, ld, sc, x, ld, rows, cols, tr, tc);
    CHECK(nonfinite == 0, "%s: %ld non-finite inputs reported", name, nonfinite);
    long bad_val = 0, bad_scale = 0, bad_amax = 0;
    for (int i = 0; i < ntr; i++)
        for (int j = 0; j < ntc; j++) {
            float amax = 0;
            int ar = -1, ac = -1;
            for (int r = i * tr; r < rows && r < (i + 1) * tr; r++)
                for (int c = j * tc; c < cols && c < (j + 1) * tc; c++)
                    if (fabsf(x[(size_t)r * ld + c]) > amax) amax = fabsf(x[(size_t)r * ld + c]), ar = r, ac = c;
            const float s = fmaxf(amax, 1e-4f) / 448.0f;
            if (sc[(size_t)i * ntc + j] != s) bad_scale++;
            for (int r = i * tr; r < rows && r < (i + 1) * tr; r++)
                for (int c = j * tc; c < cols && c < (j + 1) * tc; c++) {
                    const float v = x[(size_t)r * ld + c];
                    const double want = ref_round((double)(v / s)) * (double)s;
                    if ((double)y[(size_t)r * ld + c] != (double)(float)want) bad_val++;
                }
            if (ar >= 0 && amax >= 1e-4f) { /* below the 1e-4 floor the scale is fixed: amax is rounded */
                const float back = fabsf(y[(size_t)ar * ld + ac]);
                if (fabsf(back - amax) > 2 * (nextafterf(amax, INFINITY) - amax)) bad_amax++;
            }
        }
    CHECK(bad_val == 0 && bad_scale == 0, "%s tiles over %d x %d: %ld values and %ld scales differ from the reference", name,
          rows, cols, bad_val, bad_scale);
    CHECK(bad_amax == 0, "%s: %ld tiles' amax does not come back within a float rounding", name, bad_amax);
    CHECK(y[(size_t)tr * ld] == 0.0f, "%s: a zero tile stays zero", name);
    free(x);
    free(y);
    free(sc);
}

static void test_nonfinite(const fr_ops *o) {
    float x[256], y[256];
    for (int i = 0; i < 256; i++) x[i] = (float)i / 256;
    x[3] = NAN;
    x[200] = INFINITY;
    x[201] = -INFINITY;
    CHECK(o->fp8_quantize(y, 128, NULL, x, 128, 2, 128, 1, 128) == 3, "NaN and +-Inf inputs are counted");
}

/* C = Q(A) Q(B)^T with the backend's FP32 GEMM, against the double product of the same
 * quantized operands: the emulated FP8 GEMM accumulates in FP32 and nothing else. */
static void test_emulated_gemm(const fr_ops *o) {
    const int M = 64, N = 96, K = 512;
    float *A = malloc((size_t)M * K * sizeof *A), *B = malloc((size_t)N * K * sizeof *B), *C = malloc((size_t)M * N * sizeof *C);
    for (int i = 0; i < M * K; i++) A[i] = (float)(2 * urand() - 1);
    for (int i = 0; i < N * K; i++) B[i] = (float)(0.05 * (2 * urand() - 1));
    o->fp8_quantize(A, K, NULL, A, K, M, K, 1, 128);   /* activations: 1 x 128 */
    o->fp8_quantize(B, K, NULL, B, K, N, K, 128, 128); /* weights: 128 x 128 */
    o->gemm(0, 1, M, N, K, 1.0f, A, K, B, K, 0.0f, C, N);
    double worst = 0, ref_max = 0;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double ref = 0;
            for (int k = 0; k < K; k++) ref += (double)A[(size_t)i * K + k] * B[(size_t)j * K + k];
            if (fabs(ref) > ref_max) ref_max = fabs(ref);
            if (fabs(ref - C[(size_t)i * N + j]) > worst) worst = fabs(ref - C[(size_t)i * N + j]);
        }
    printf("emulated FP8 GEMM %dx%dx%d: max |C - exact| = %.3g (%.3g of max |C|)\n", M, N, K, worst, worst / ref_max);
    CHECK(worst <= 2e-6 * ref_max, "emulated FP8 GEMM: error %.3g of max |C|, bound 2e-6", worst / ref_max);
    free(A);
    free(B);
    free(C);
}

int main(void) {
    make_values();
    const fr_ops *o = fr_ops_cpu();
    /* every kernel level this CPU has: the AVX-512 quantizer and the scalar one */
    for (int isa = FR_ISA_GENERIC; isa <= FR_ISA_AVX512; isa++) {
        if (!fr_cpu_isa_supported(isa)) continue;
        fr_cpu_set_isa(isa);
        printf("kernels: %s\n", fr_cpu_isa_name(isa));
        test_codes_and_ties(o);
        test_tiles(o, 200, 300, 1, 128, "1 x 128 (activation)");
        test_tiles(o, 200, 300, 128, 128, "128 x 128 (weight)");
        test_tiles(o, 200, 300, 128, 1, "128 x 1 (weight-gradient activation)");
        test_nonfinite(o);
        test_emulated_gemm(o);
    }
    fr_cpu_set_isa(-1);
    return fr_test_finish("test_fp8_recipe");
}
