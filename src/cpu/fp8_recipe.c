/*
 * fp8_recipe.c — the CPU backend's FP8 quantizer for training (fr_ops.fp8_quantize, contract
 * in model/ops.h): E4M3 values with one FP32 scale per tile, DeepSeek-V3's fine-grained
 * scaling. The values are kept decoded (e4m3 * scale, exactly representable in FP32), so the
 * backend's FP32 GEMM over them computes what an FP8 GEMM with FP32 accumulation computes:
 * this is the CPU emulation that a GPU run with real FP8 tensor cores is checked against.
 */
#include "cpu/ops_cpu.h"
#include "formats/numfmt.h"

#include <immintrin.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>

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

/* ------------------------------------------------------------------ AVX-512
 * The same numbers, 16 columns at a time. E4M3 rounding without a table: for |v| >= 2^-6 the
 * spacing of E4M3 values around v is 2^(E-3) (E = v's binary exponent), below it 2^-9; so
 * q = roundeven(|v| / spacing) * spacing, with the division exact (a power of two) and 448 the
 * largest value (saturation). That is fr_fp8_e4m3_encode + decode for every finite v; the
 * test checks it bit for bit against the same reference as the scalar code.
 *
 * Per block of tile_rows rows: the columns' amax over the block's rows (vectors run along the
 * columns, so the 128 x 1 weight-gradient tiles cost no strided walk), then each tile's scale
 * from its columns, then every row quantized with its columns' scales. */
#define T_AVX512 __attribute__((target("avx512f,avx512dq")))

T_AVX512 static inline __m512 e4m3_round16(__m512 v) {
    const __m512 a = _mm512_abs_ps(v);
    const __m512i exp_bits = _mm512_and_si512(_mm512_castps_si512(a), _mm512_set1_epi32(0x7f800000));
    const __m512i spacing_bits =
        _mm512_max_epi32(_mm512_sub_epi32(exp_bits, _mm512_set1_epi32(3 << 23)), _mm512_set1_epi32(0x3b000000));
    const __m512 spacing = _mm512_castsi512_ps(spacing_bits); /* 0x3b000000 = 2^-9 */
    __m512 q = _mm512_mul_ps(_mm512_roundscale_ps(_mm512_div_ps(a, spacing), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC),
                             spacing);
    q = _mm512_min_ps(q, _mm512_set1_ps(FP8_MAX));
    const __m512i sign = _mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32((int)0x80000000u));
    return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(q), sign));
}

T_AVX512 static long quantize_block_avx512(float *y, int ldy, float *scales, const float *x, int ldx, int r0, int r1,
                                           int cols, int tile_cols, float *colmax, float *colscale) {
    long bad = 0;
    const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    const __m512 inf = _mm512_set1_ps(INFINITY);
    int c = 0;
    for (; c + 16 <= cols; c += 16) {
        __m512 m = _mm512_setzero_ps();
        for (int r = r0; r < r1; r++) {
            const __m512 a = _mm512_and_ps(_mm512_loadu_ps(x + (size_t)r * ldx + c), absmask);
            /* NaN and Inf: counted, and left out of the amax as the scalar code does */
            const __mmask16 finite = _mm512_cmp_ps_mask(a, inf, _CMP_LT_OQ);
            bad += 16 - __builtin_popcount(finite);
            m = _mm512_mask_max_ps(m, finite, m, a);
        }
        _mm512_storeu_ps(colmax + c, m);
    }
    for (; c < cols; c++) {
        float m = 0.0f;
        for (int r = r0; r < r1; r++) {
            const float v = x[(size_t)r * ldx + c];
            if (!isfinite(v)) bad++;
            else if (fabsf(v) > m) m = fabsf(v);
        }
        colmax[c] = m;
    }
    const int tc = (cols + tile_cols - 1) / tile_cols;
    for (int j = 0; j < tc; j++) {
        const int c0 = j * tile_cols, c1 = c0 + tile_cols < cols ? c0 + tile_cols : cols;
        float amax = 0.0f;
        for (int k = c0; k < c1; k++) amax = colmax[k] > amax ? colmax[k] : amax;
        const float sc = fmaxf(amax, FP8_MIN_AMAX) / FP8_MAX;
        if (scales) scales[j] = sc;
        for (int k = c0; k < c1; k++) colscale[k] = sc;
    }
    for (int r = r0; r < r1; r++) {
        const float *xr = x + (size_t)r * ldx;
        float *yr = y + (size_t)r * ldy;
        for (c = 0; c + 16 <= cols; c += 16) {
            const __m512 sc = _mm512_loadu_ps(colscale + c);
            _mm512_storeu_ps(yr + c, _mm512_mul_ps(e4m3_round16(_mm512_div_ps(_mm512_loadu_ps(xr + c), sc)), sc));
        }
        for (; c < cols; c++) yr[c] = fr_fp8_e4m3_decode(fr_fp8_e4m3_encode(xr[c] / colscale[c])) * colscale[c];
    }
    return bad;
}

static long quantize_avx512(float *y, int ldy, float *scales, const float *x, int ldx, int rows, int cols, int tile_rows,
                            int tile_cols) {
    const int tr = (rows + tile_rows - 1) / tile_rows, tc = (cols + tile_cols - 1) / tile_cols;
    long bad = 0;
    int oom = 0;
#pragma omp parallel reduction(+ : bad, oom) if ((double)rows * cols > 65536.0)
    {
        float *colmax = malloc(2 * (size_t)cols * sizeof(float));
        if (!colmax) oom = 1;
#pragma omp for schedule(static)
        for (int i = 0; i < tr; i++) {
            if (!colmax) continue;
            const int r0 = i * tile_rows, r1 = r0 + tile_rows < rows ? r0 + tile_rows : rows;
            bad += quantize_block_avx512(y, ldy, scales ? scales + (size_t)i * tc : NULL, x, ldx, r0, r1, cols, tile_cols,
                                         colmax, colmax + cols);
        }
        free(colmax);
    }
    return oom ? -1 : bad;
}

/* ------------------------------------------------------------------ entry */

long fr_cpu_fp8_quantize(float *y, int ldy, float *scales, const float *x, int ldx, int rows, int cols, int tile_rows,
                         int tile_cols) {
    if (rows <= 0 || cols <= 0 || tile_rows <= 0 || tile_cols <= 0) return 0;
    if (fr_cpu_isa() >= FR_ISA_AVX512) {
        const long bad = quantize_avx512(y, ldy, scales, x, ldx, rows, cols, tile_rows, tile_cols);
        if (bad >= 0) return bad; /* else out of memory for the column scratch: the scalar path needs none */
    }
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
