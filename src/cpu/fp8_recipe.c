/*
 * fp8_recipe.c — the CPU backend's FP8 quantizer for training (fr_ops.fp8_quantize, contract
 * in model/ops.h): E4M3 values with one FP32 scale per tile, DeepSeek-V3's fine-grained
 * scaling. The values are kept decoded (e4m3 * scale, exactly representable in FP32), so the
 * backend's FP32 GEMM over them computes what an FP8 GEMM with FP32 accumulation computes:
 * this is the CPU emulation that a GPU run with real FP8 tensor cores is checked against.
 */
#include "cpu/ops_cpu.h"
#include "formats/numfmt.h"

#include <math.h>
#include <stddef.h>

#define FP8_MAX 448.0f
#define FP8_MIN_AMAX 1e-4f /* a tile of zeros (or nearly) gets this amax: no division by 0 */

/* One tile: rows [r0, r1) x cols [c0, c1). Returns its non-finite count; writes its scale. */
static long quantize_tile(float *y, int ldy, const float *x, int ldx, int r0, int r1, int c0, int c1, float *scale) {
    float amax = 0.0f;
    long bad = 0;
    for (int r = r0; r < r1; r++)
        for (int c = c0; c < c1; c++) {
            const float v = x[(size_t)r * ldx + c];
            if (!isfinite(v)) bad++;
            else if (fabsf(v) > amax) amax = fabsf(v);
        }
    const float s = fmaxf(amax, FP8_MIN_AMAX) / FP8_MAX;
    *scale = s;
    for (int r = r0; r < r1; r++)
        for (int c = c0; c < c1; c++) {
            const float v = x[(size_t)r * ldx + c];
            y[(size_t)r * ldy + c] = fr_fp8_e4m3_decode(fr_fp8_e4m3_encode(v / s)) * s;
        }
    return bad;
}

long fr_cpu_fp8_quantize(float *y, int ldy, float *scales, const float *x, int ldx, int rows, int cols, int tile_rows,
                         int tile_cols) {
    if (rows <= 0 || cols <= 0 || tile_rows <= 0 || tile_cols <= 0) return 0;
    const int tr = (rows + tile_rows - 1) / tile_rows, tc = (cols + tile_cols - 1) / tile_cols;
    const long tiles = (long)tr * tc;
    long bad = 0;
#pragma omp parallel for schedule(static) reduction(+ : bad) if ((double)rows * cols > 65536.0)
    for (long t = 0; t < tiles; t++) {
        const int i = (int)(t / tc), j = (int)(t % tc);
        const int r0 = i * tile_rows, c0 = j * tile_cols;
        const int r1 = r0 + tile_rows < rows ? r0 + tile_rows : rows, c1 = c0 + tile_cols < cols ? c0 + tile_cols : cols;
        float s;
        bad += quantize_tile(y, ldy, x, ldx, r0, r1, c0, c1, &s);
        if (scales) scales[t] = s;
    }
    return bad;
}
