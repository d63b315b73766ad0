/*
 * qmatmul.c — fr_qmatmul: activations times a weight matrix stored in any format of
 * formats/qmatrix.c (the block layouts are documented there), the CPU kernels of each format.
 *
 * Kernels (fr_qmatmul).
 *   Q8_0 / Q4_1 (default): activations quantized to int8 per block of 32 once per call, exact
 *           integer block dot products (AVX-512 VNNI vpdpbusd on 512-bit vectors in
 *           qmatmul_zmm.c / AVX2 vpmaddubsw / C), for
 *           every M: tiles of W rows that fit the L2 cache, each tile dotted with groups of
 *           up to 4 activation rows ("int8 activations" below has the arithmetic and bounds).
 *   BF16, and Q8_0 / Q4_1 with FP32 activations (fr_qmatmul_set_int8_act(0)): weights are
 *           dequantized in registers and multiplied with FMAs, so the result equals x · Ŵᵀ
 *           (Ŵ the dequantized weights) up to FP32 summation error.
 *     M < 4   matrix-vector per row of x: OpenMP over rows of W, the weights streamed once
 *             per x row.
 *     M >= 4  tiles of W rows are dequantized to FP32 (OpenMP over rows), then multiplied
 *             with the CPU backend's packed SGEMM (fr_cpu_gemm, itself multi-threaded).
 * Variants: AVX-512F, AVX2+FMA+F16C, portable C; chosen at each call from fr_cpu_isa() (so
 * FRUGAL_CPU=scalar|generic|avx2|avx512 and fr_cpu_set_isa cap it).
 * F32 matrices use fr_cpu_gemm directly.
 *
 */
#include "cpu/qmatmul.h"
#include "cpu/qmatmul_internal.h"

#include "core/internal.h"
#include "cpu/ops_cpu.h"
#include "formats/kquant.h"

#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ row dot products
 * dot(row, x) for one stored row. `xs` holds the per-block sums of x (Q4_1 only; the
 * portable Q4_1 kernel also accepts NULL and sums x itself). */

typedef float (*rowdot_fn)(const uint8_t *row, const float *x, const float *xs, int cols);

static float dot_bf16_c(const uint8_t *row, const float *x, const float *xs, int cols) {
    const uint16_t *w = (const uint16_t *)row;
    float s = 0.f;
    for (int c = 0; c < cols; c++) s += x[c] * fr_bf16_decode(w[c]);
    return s;
}

static float dot_q8_0_c(const uint8_t *row, const float *x, const float *xs, int cols) {
    const int nb = cols / FR_QBLOCK;
    const uint16_t *d = (const uint16_t *)row;
    const int8_t *q = (const int8_t *)(row + 2 * (size_t)nb);
    float s = 0.f;
    for (int b = 0; b < nb; b++) {
        float sb = 0.f;
        for (int i = 0; i < FR_QBLOCK; i++) sb += (float)q[b * FR_QBLOCK + i] * x[b * FR_QBLOCK + i];
        s += fr_q_f16_to_f32(d[b]) * sb;
    }
    return s;
}

/* Q4_1: sum_b d_b * sum_i q_i x_i + m_b * sum_i x_i */
static float dot_q4_1_c(const uint8_t *row, const float *x, const float *xs, int cols) {
    const int nb = cols / FR_QBLOCK;
    const uint16_t *d = (const uint16_t *)row, *mn = d + nb;
    const uint8_t *q = row + 4 * (size_t)nb;
    float s = 0.f;
    for (int b = 0; b < nb; b++) {
        const float *xb = x + b * FR_QBLOCK;
        float sb = 0.f;
        float sx = 0.f;
        for (int k = 0; k < 16; k++) {
            uint8_t v = q[b * 16 + k];
            sb += (float)(v & 15) * xb[k] + (float)(v >> 4) * xb[k + 16];
        }
        if (!xs)
            for (int i = 0; i < FR_QBLOCK; i++) sx += xb[i];
        s += fr_q_f16_to_f32(d[b]) * sb + fr_q_f16_to_f32(mn[b]) * (xs ? xs[b] : sx);
    }
    return s;
}

/* ---- AVX2 + FMA + F16C */

#define T_AVX2 __attribute__((target("avx2,fma,f16c")))

T_AVX2 static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

T_AVX2 static inline float hsum128(__m128 s) {
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

T_AVX2 static inline __m256 bf16x8(const uint16_t *p) {
    __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}

T_AVX2 static float dot_bf16_avx2(const uint8_t *row, const float *x, const float *xs, int cols) {
    const uint16_t *w = (const uint16_t *)row;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int c = 0;
    for (; c + 32 <= cols; c += 32) {
        a0 = _mm256_fmadd_ps(bf16x8(w + c), _mm256_loadu_ps(x + c), a0);
        a1 = _mm256_fmadd_ps(bf16x8(w + c + 8), _mm256_loadu_ps(x + c + 8), a1);
        a2 = _mm256_fmadd_ps(bf16x8(w + c + 16), _mm256_loadu_ps(x + c + 16), a2);
        a3 = _mm256_fmadd_ps(bf16x8(w + c + 24), _mm256_loadu_ps(x + c + 24), a3);
    }
    for (; c + 8 <= cols; c += 8) a0 = _mm256_fmadd_ps(bf16x8(w + c), _mm256_loadu_ps(x + c), a0);
    float s = hsum256(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; c < cols; c++) s += x[c] * fr_bf16_decode(w[c]);
    return s;
}

T_AVX2 static inline __m256 i8x8(const int8_t *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

T_AVX2 static float dot_q8_0_avx2(const uint8_t *row, const float *x, const float *xs, int cols) {
    const int nb = cols / FR_QBLOCK;
    const uint16_t *d = (const uint16_t *)row;
    const int8_t *q = (const int8_t *)(row + 2 * (size_t)nb);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0;
    float dsc[8];
    for (int b0 = 0; b0 < nb; b0 += 8) {
        const int n = nb - b0 < 8 ? nb - b0 : 8;
        if (n == 8) _mm256_storeu_ps(dsc, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(d + b0))));
        else
            for (int j = 0; j < n; j++) dsc[j] = fr_q_f16_to_f32(d[b0 + j]);
        for (int j = 0; j < n; j++) {
            const int b = b0 + j;
            const int8_t *qb = q + b * FR_QBLOCK;
            const float *xb = x + b * FR_QBLOCK;
            __m256 s0 = _mm256_mul_ps(i8x8(qb), _mm256_loadu_ps(xb));
            __m256 s1 = _mm256_mul_ps(i8x8(qb + 8), _mm256_loadu_ps(xb + 8));
            s0 = _mm256_fmadd_ps(i8x8(qb + 16), _mm256_loadu_ps(xb + 16), s0);
            s1 = _mm256_fmadd_ps(i8x8(qb + 24), _mm256_loadu_ps(xb + 24), s1);
            __m256 ds = _mm256_set1_ps(dsc[j]);
            acc0 = _mm256_fmadd_ps(ds, s0, acc0);
            acc1 = _mm256_fmadd_ps(ds, s1, acc1);
        }
    }
    return hsum256(_mm256_add_ps(acc0, acc1));
}

T_AVX2 static float dot_q4_1_avx2(const uint8_t *row, const float *x, const float *xs, int cols) {
    const int nb = cols / FR_QBLOCK;
    const uint16_t *d = (const uint16_t *)row, *mn = d + nb;
    const uint8_t *q = row + 4 * (size_t)nb;
    const __m128i lowmask = _mm_set1_epi8(15);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0, accm = acc0;
    float dsc[8];
    int b0 = 0;
    for (; b0 < nb; b0 += 8) {
        const int n = nb - b0 < 8 ? nb - b0 : 8;
        if (n == 8) {
            _mm256_storeu_ps(dsc, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(d + b0))));
            accm = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(mn + b0))),
                                   _mm256_loadu_ps(xs + b0), accm);
        } else {
            for (int j = 0; j < n; j++) dsc[j] = fr_q_f16_to_f32(d[b0 + j]);
        }
        for (int j = 0; j < n; j++) {
            const int b = b0 + j;
            const float *xb = x + b * FR_QBLOCK;
            __m128i v = _mm_loadu_si128((const __m128i *)(q + b * 16));
            __m128i lo = _mm_and_si128(v, lowmask);
            __m128i hi = _mm_and_si128(_mm_srli_epi16(v, 4), lowmask);
            __m256 q0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo));
            __m256 q1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)));
            __m256 q2 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi));
            __m256 q3 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)));
            __m256 s0 = _mm256_mul_ps(q0, _mm256_loadu_ps(xb));
            __m256 s1 = _mm256_mul_ps(q1, _mm256_loadu_ps(xb + 8));
            s0 = _mm256_fmadd_ps(q2, _mm256_loadu_ps(xb + 16), s0);
            s1 = _mm256_fmadd_ps(q3, _mm256_loadu_ps(xb + 24), s1);
            __m256 ds = _mm256_set1_ps(dsc[j]);
            acc0 = _mm256_fmadd_ps(ds, s0, acc0);
            acc1 = _mm256_fmadd_ps(ds, s1, acc1);
        }
        if (n < 8)
            for (int j = 0; j < n; j++) dsc[j] = fr_q_f16_to_f32(mn[b0 + j]) * xs[b0 + j];
    }
    float s = hsum256(_mm256_add_ps(_mm256_add_ps(acc0, acc1), accm));
    const int tail = nb % 8;
    for (int j = 0; j < tail; j++) s += dsc[j]; /* m_b * xs_b of the last partial group */
    return s;
}

/* ---- AVX-512F (vcvtph2ps, vpmovzx/sx and FMA on 16 lanes; no VNNI: activations stay FP32) */

#define T_AVX512 __attribute__((target("avx512f,avx2,fma,f16c")))

T_AVX512 static inline __m512 bf16x16(const uint16_t *p) {
    __m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
}

T_AVX512 static float dot_bf16_avx512(const uint8_t *row, const float *x, const float *xs, int cols) {
    const uint16_t *w = (const uint16_t *)row;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int c = 0;
    for (; c + 64 <= cols; c += 64) {
        a0 = _mm512_fmadd_ps(bf16x16(w + c), _mm512_loadu_ps(x + c), a0);
        a1 = _mm512_fmadd_ps(bf16x16(w + c + 16), _mm512_loadu_ps(x + c + 16), a1);
        a2 = _mm512_fmadd_ps(bf16x16(w + c + 32), _mm512_loadu_ps(x + c + 32), a2);
        a3 = _mm512_fmadd_ps(bf16x16(w + c + 48), _mm512_loadu_ps(x + c + 48), a3);
    }
    for (; c + 16 <= cols; c += 16) a0 = _mm512_fmadd_ps(bf16x16(w + c), _mm512_loadu_ps(x + c), a0);
    float s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
    for (; c < cols; c++) s += x[c] * fr_bf16_decode(w[c]);
    return s;
}

T_AVX512 static float dot_q8_0_avx512(const uint8_t *row, const float *x, const float *xs, int cols) {
    const int nb = cols / FR_QBLOCK;
    const uint16_t *d = (const uint16_t *)row;
    const int8_t *q = (const int8_t *)(row + 2 * (size_t)nb);
    __m512 acc0 = _mm512_setzero_ps(), acc1 = acc0;
    for (int b = 0; b < nb; b++) {
        const int8_t *qb = q + b * FR_QBLOCK;
        const float *xb = x + b * FR_QBLOCK;
        __m512 q0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)qb)));
        __m512 q1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(qb + 16))));
        __m512 s0 = _mm512_mul_ps(q0, _mm512_loadu_ps(xb));
        __m512 s1 = _mm512_mul_ps(q1, _mm512_loadu_ps(xb + 16));
        __m512 ds = _mm512_set1_ps(fr_q_f16_to_f32(d[b]));
        acc0 = _mm512_fmadd_ps(ds, s0, acc0);
        acc1 = _mm512_fmadd_ps(ds, s1, acc1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

T_AVX512 static float dot_q4_1_avx512(const uint8_t *row, const float *x, const float *xs, int cols) {
    const int nb = cols / FR_QBLOCK;
    const uint16_t *d = (const uint16_t *)row, *mn = d + nb;
    const uint8_t *q = row + 4 * (size_t)nb;
    const __m128i lowmask = _mm_set1_epi8(15);
    __m512 acc0 = _mm512_setzero_ps(), acc1 = acc0;
    float sm = 0.f;
    for (int b = 0; b < nb; b++) {
        const float *xb = x + b * FR_QBLOCK;
        __m128i v = _mm_loadu_si128((const __m128i *)(q + b * 16));
        __m512 q0 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(v, lowmask)));
        __m512 q1 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(v, 4), lowmask)));
        __m512 s0 = _mm512_mul_ps(q0, _mm512_loadu_ps(xb));
        __m512 s1 = _mm512_mul_ps(q1, _mm512_loadu_ps(xb + 16));
        __m512 ds = _mm512_set1_ps(fr_q_f16_to_f32(d[b]));
        acc0 = _mm512_fmadd_ps(ds, s0, acc0);
        acc1 = _mm512_fmadd_ps(ds, s1, acc1);
        sm += fr_q_f16_to_f32(mn[b]) * xs[b];
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1)) + sm;
}

/* ------------------------------------------------------------------ int8 activations
 *
 * Decode is a matrix-vector product: each weight byte is used once, so the kernel must
 * consume weights as fast as memory delivers them. Converting every weight to float (the
 * FP32-activation kernels above) costs more than that on cores with narrow conversion
 * units, so for Q8_0 and Q4_1 the activations are quantized too, once per call, and the
 * block dot products become exact integer sums:
 *
 *   activation block b of a row (FP32 scale, computed here, never stored on disk):
 *     dx_b = max_i |x_i| / 127, qx_i = nearbyint(x_i * (1 / dx_b)) in [-127, 127]
 *     (all zero when dx_b = 0), and the FP32 sum xs_b of x_0 ... x_31 (in one fixed order,
 *     see quantize_act_row).
 *   Q8_0:  y = Σ_b (d_b · dx_b) · Σ_i qw_i qx_i
 *   Q4_1:  y = Σ_b (d_b · dx_b) · Σ_i q_i qx_i  +  m_b · xs_b
 *
 * The integer sums are exact (|Σ| <= 32 · 128 · 127 < 2^24, so also exact as floats), and
 * d_b · dx_b is one FP32 product, identical in every kernel; kernels differ only in the
 * order of the FP32 accumulation over blocks. Q4_1's minimum term uses the exact sum of x,
 * so only the d·q part sees the activation rounding: |y - x·Ŵᵀ| <= Σ_b dx_b/2 · Σ_i |d_b q_i|
 * plus FP32 summation error (tests/test_quant.c checks both bounds).
 *
 * One kernel call dots one weight row with up to QX_MAX activation rows, so the weights
 * are loaded once for a speculative 2-token step or a small decode batch; each activation
 * row has its own accumulators and the same operation order whatever the number of rows
 * beside it, so a row's result does not depend on the batch it is computed in.
 */

/* rows of a product from which the BF16 prefill path takes it (see "BF16 prefill") */
#define PREFILL_BF16_MIN 16
/* rows of a product from which the int8 prefill takes it (see "int8 prefill") */
#define PREFILL_INT8_MIN 16
static int fr_qmatmul_prefill_int8(void);

/* Where value i of activation block b sits in a quantized row. Plain order (group 1), except
 * for Q4_1, whose kernels meet a load of nibbles with activations in two plain loads:
 * - group 2 (the 256-bit kernels): blocks 2p and 2p+1 interleaved by halves,
 *   [2p: 0..15][2p+1: 0..15][2p: 16..31][2p+1: 16..31], so that one 32-byte load of a pair's
 *   nibbles, masked (low halves of both blocks) and shifted (high halves), meets them;
 * - group 4 (the 512-bit kernel): the same over four blocks, [4p..4p+3: 0..15] then
 *   [4p..4p+3: 16..31], for a 64-byte load; the last nb % 4 blocks go as a pair, then a
 *   single block.
 * A last block without a partner stays in plain order. */
static inline size_t qx_index(int b, int i, int nb, int group) {
    int g0 = b & ~(group - 1), size = group;
    if (group > 1 && g0 + size > nb) { /* the tail after the last full group */
        size = group == 4 ? 2 : 1;
        g0 = b & ~(size - 1);
        if (g0 + size > nb) size = 1;
    }
    if (size <= 1) return (size_t)b * FR_QBLOCK + i;
    return (size_t)g0 * FR_QBLOCK + (i >= 16 ? 16 * (size_t)size : 0) + (size_t)(b - g0) * 16 + (i & 15);
}

/* One activation row into blocks (s = NULL: no block sums, as for Q8_0; else sums, and for Q4_1
 * its group order). Rounding uses the 1.5 · 2^23 trick: for |v| < 2^22,
 * (v + 1.5·2^23) - 1.5·2^23 is v rounded to the nearest integer, ties to even, exactly
 * nearbyint's result in the default rounding mode (and cvtps2dq's, which the AVX2 version
 * uses), without a libm call per value on CPUs that lack SSE4.1 rounding instructions.
 * The block sum has one fixed order, that of an 8-lane vector sum: lane l adds
 * x_l, x_{l+8}, x_{l+16}, x_{l+24} in turn, then the lanes are combined as
 * ((s_0+s_4) + (s_2+s_6)) + ((s_1+s_5) + (s_3+s_7)), so both versions give the same bits. */
static float block_sum_fixed(const float *xb) {
    float l[8], t[4];
    for (int i = 0; i < 8; i++) l[i] = ((xb[i] + xb[i + 8]) + xb[i + 16]) + xb[i + 24];
    for (int i = 0; i < 4; i++) t[i] = l[i] + l[i + 4];
    return (t[0] + t[2]) + (t[1] + t[3]);
}

static void quantize_act_row_c(const float *x, int cols, int8_t *q, float *d, float *s, int group) {
    const float magic = 0x1.8p23f;
    const int nb = cols / FR_QBLOCK;
    for (int b = 0; b < nb; b++) {
        const float *xb = x + b * FR_QBLOCK;
        float amax = 0.f;
        for (int i = 0; i < FR_QBLOCK; i++) {
            float v = fabsf(xb[i]);
            amax = v > amax ? v : amax;
        }
        const float dx = amax / 127.f, inv = dx > 0.f ? 1.f / dx : 0.f;
        int8_t *lo = q + qx_index(b, 0, nb, group), *hi = q + qx_index(b, 16, nb, group); /* values 0..15, 16..31 */
        for (int i = 0; i < 16; i++) {
            lo[i] = (int8_t)(int)((xb[i] * inv + magic) - magic);
            hi[i] = (int8_t)(int)((xb[i + 16] * inv + magic) - magic);
        }
        d[b] = dx;
        if (s) s[b] = block_sum_fixed(xb);
    }
}

T_AVX2 static void quantize_act_row_avx2(const float *x, int cols, int8_t *q, float *d, float *s, int group) {
    const int nb = cols / FR_QBLOCK;
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int b = 0; b < nb; b++) {
        const float *xb = x + b * FR_QBLOCK;
        const __m256 v0 = _mm256_loadu_ps(xb), v1 = _mm256_loadu_ps(xb + 8);
        const __m256 v2 = _mm256_loadu_ps(xb + 16), v3 = _mm256_loadu_ps(xb + 24);
        __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_and_ps(v0, absmask), _mm256_and_ps(v1, absmask)),
                                 _mm256_max_ps(_mm256_and_ps(v2, absmask), _mm256_and_ps(v3, absmask)));
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        const float amax = _mm_cvtss_f32(m4);
        const float dx = amax / 127.f, inv = dx > 0.f ? 1.f / dx : 0.f;
        const __m256 vi = _mm256_set1_ps(inv);
        const __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(v0, vi)), i1 = _mm256_cvtps_epi32(_mm256_mul_ps(v1, vi));
        const __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(v2, vi)), i3 = _mm256_cvtps_epi32(_mm256_mul_ps(v3, vi));
        const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
        const __m256i qb = _mm256_permutevar8x32_epi32(p, order); /* values 0..31 in order */
        _mm_storeu_si128((__m128i *)(q + qx_index(b, 0, nb, group)), _mm256_castsi256_si128(qb));
        _mm_storeu_si128((__m128i *)(q + qx_index(b, 16, nb, group)), _mm256_extracti128_si256(qb, 1));
        d[b] = dx;
        if (s) s[b] = hsum256(_mm256_add_ps(_mm256_add_ps(_mm256_add_ps(v0, v1), v2), v3));
    }
}

static void quantize_act_row(const float *x, int cols, int8_t *q, float *d, float *s, int group, int isa) {
    if (isa >= FR_ISA_AVX2) quantize_act_row_avx2(x, cols, q, d, s, group);
    else quantize_act_row_c(x, cols, q, d, s, group);
}

static void row8_q8_0_c(const uint8_t *row, const qact *a, int j0, int nx, float *out, const uint8_t *pf_end) {
    (void)pf_end;
    const int nb = a->nb;
    const uint16_t *d = (const uint16_t *)row;
    const int8_t *q = (const int8_t *)(row + 2 * (size_t)nb);
    for (int j = 0; j < nx; j++) {
        const int8_t *qx = a->q + (size_t)(j0 + j) * a->cols;
        const float *dx = a->d + (size_t)(j0 + j) * nb;
        float s = 0.f;
        for (int b = 0; b < nb; b++) {
            int32_t isum = 0;
            for (int i = 0; i < FR_QBLOCK; i++) isum += (int32_t)q[b * FR_QBLOCK + i] * qx[b * FR_QBLOCK + i];
            s += fr_q_f16_to_f32(d[b]) * dx[b] * (float)isum;
        }
        out[j] = s;
    }
}

static void row8_q4_1_c(const uint8_t *row, const qact *a, int j0, int nx, float *out, const uint8_t *pf_end) {
    (void)pf_end;
    const int nb = a->nb;
    const uint16_t *d = (const uint16_t *)row, *mn = d + nb;
    const uint8_t *q = row + 4 * (size_t)nb;
    for (int j = 0; j < nx; j++) {
        const int8_t *qx = a->q + (size_t)(j0 + j) * a->cols;
        const float *dx = a->d + (size_t)(j0 + j) * nb, *xs = a->s + (size_t)(j0 + j) * nb;
        float s = 0.f;
        for (int b = 0; b < nb; b++) {
            /* where this block's activations 0..15 and 16..31 sit (qx_index, hoisted out of
             * the value loop: the pair layout puts each half in 16 consecutive bytes) */
            const int8_t *lo = qx + qx_index(b, 0, nb, 2), *hi = qx + qx_index(b, 16, nb, 2);
            int32_t isum = 0;
            for (int k = 0; k < 16; k++) {
                const uint8_t v = q[b * 16 + k];
                isum += (int32_t)(v & 15) * lo[k] + (int32_t)(v >> 4) * hi[k];
            }
            s += fr_q_f16_to_f32(d[b]) * dx[b] * (float)isum + fr_q_f16_to_f32(mn[b]) * xs[b];
        }
        out[j] = s;
    }
}

static void dot8_q8_0_c(const qrows *t, const qact *a, int j0, int nx) { QROWS_LOOP(row8_q8_0_c, nx) }
static void dot8_q4_1_c(const qrows *t, const qact *a, int j0, int nx) { QROWS_LOOP(row8_q4_1_c, nx) }

/* The AVX2 kernels (vpmaddubsw + vpmaddwd; the body once took vpdpbusd on 256-bit vectors
 * too, before qmatmul_zmm.c's 512-bit kernels replaced it): DOT32(u, s) returns 8 int32
 * lanes whose total is Σ u_i s_i over 32 unsigned × signed bytes. Q8_0's signed weights use |w| as the unsigned operand and move
 * the sign onto the activation (vpsignb); a stored -128 becomes the unsigned 128, and the
 * int16 pair sums stay below 2 · 128 · 127 < 2^15, so vpmaddubsw never saturates.
 * Blocks go in groups of 8: the scale products d_b · dx_b of a group are one vector
 * multiply (a short last group is padded with zero scales), read back per block with a
 * broadcast load; a Q8_0 block's 8 int32 lanes are folded to 4 before the conversion and
 * the FMA (128-bit: one operation each on Zen 1 instead of two, 7.2 -> 6.6 cycles per
 * block in L1). Full groups are unrolled with constant indices so that the
 * accumulators live in registers (a runtime index puts them on the stack, and the
 * store-reload per block cost a third of the kernel's time on Zen 1). NX is a
 * compile-time constant in each instance. */
#define QDOT8_KERNELS(SUFFIX, TARGET, DOT32, DOT64)                                                               \
    /* sc[j][k] = d[b0 + k] · dx[j][b0 + k] for k < n, 0 beyond (NX rows); for Q4_1 (mn != NULL) also        \
     * accm[j] += m[b0 + k] · xs[j][b0 + k] */                                                              \
    TARGET static inline __attribute__((always_inline)) void scales8_##SUFFIX(                           \
        const uint16_t *d, const uint16_t *mn, const float *const *dx, const float *const *xs, int b0, int n, \
        const int NX, float (*sc)[8], __m256 *accm) {                                                       \
        __m256 dw, mw = _mm256_setzero_ps();                                                               \
        if (n == 8) {                                                                                      \
            dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(d + b0)));                              \
            if (mn) mw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(mn + b0)));                     \
            for (int j = 0; j < NX; j++) {                                                                 \
                _mm256_store_ps(sc[j], _mm256_mul_ps(dw, _mm256_loadu_ps(dx[j] + b0)));                    \
                if (mn) accm[j] = _mm256_fmadd_ps(mw, _mm256_loadu_ps(xs[j] + b0), accm[j]);               \
            }                                                                                              \
            return;                                                                                        \
        }                                                                                                  \
        uint16_t dp[8], mp[8];                                                                             \
        for (int k = 0; k < 8; k++) {                                                                      \
            dp[k] = k < n ? d[b0 + k] : 0;                                                                 \
            mp[k] = mn && k < n ? mn[b0 + k] : 0;                                                          \
        }                                                                                                  \
        const __m256i lanes = _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)); \
        dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)dp));                                        \
        if (mn) mw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)mp));                                \
        for (int j = 0; j < NX; j++) {                                                                     \
            _mm256_store_ps(sc[j], _mm256_mul_ps(dw, _mm256_maskload_ps(dx[j] + b0, lanes)));              \
            if (mn) accm[j] = _mm256_fmadd_ps(mw, _mm256_maskload_ps(xs[j] + b0, lanes), accm[j]);         \
        }                                                                                                  \
    }                                                                                                      \
    /* block b0 + k of a Q8_0 row into acc[j][A] */                                                         \
    TARGET static inline __attribute__((always_inline)) void q8_0_block_##SUFFIX(                        \
        const int8_t *q, const int8_t *const *qx, int b, const int NX, float (*sc)[8], int k, __m128 (*acc)[2], const int A, const uint8_t *pf_end) { \
        const size_t off = (size_t)b * FR_QBLOCK;                                                          \
        if ((const uint8_t *)(q + off) + QPF_BYTES < pf_end)                                               \
            _mm_prefetch((const char *)(q + off) + QPF_BYTES, _MM_HINT_T0);                               \
        const __m256i w = _mm256_loadu_si256((const __m256i *)(q + off));                                  \
        const __m256i aw = _mm256_sign_epi8(w, w);                                                         \
        for (int j = 0; j < NX; j++) {                                                                     \
            const __m256i sx = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)(qx[j] + off)), w);   \
            const __m256i p = DOT32(aw, sx);                                                               \
            const __m128i p4 = _mm_add_epi32(_mm256_castsi256_si128(p), _mm256_extracti128_si256(p, 1));   \
            acc[j][A] = _mm_fmadd_ps(_mm_cvtepi32_ps(p4), _mm_broadcast_ss(&sc[j][k]), acc[j][A]);         \
        }                                                                                                  \
    }                                                                                                      \
    TARGET static inline __attribute__((always_inline)) void q8_0_##SUFFIX##_n(                          \
        const uint8_t *row, const qact *a, int j0, const int NX, float *out, const uint8_t *pf_end) {                          \
        const int nb = a->nb;                                                                              \
        const uint16_t *d = (const uint16_t *)row;                                                         \
        const int8_t *q = (const int8_t *)(row + 2 * (size_t)nb);                                          \
        const int8_t *qx[QX_MAX];                                                                          \
        const float *dx[QX_MAX];                                                                           \
        __m128 acc[QX_MAX][2];                                                                             \
        float sc[QX_MAX][8] __attribute__((aligned(32)));                                                  \
        for (int j = 0; j < NX; j++) {                                                                     \
            qx[j] = a->q + (size_t)(j0 + j) * a->cols;                                                     \
            dx[j] = a->d + (size_t)(j0 + j) * nb;                                                          \
            acc[j][0] = acc[j][1] = _mm_setzero_ps();                                                      \
        }                                                                                                  \
        int b0 = 0;                                                                                        \
        for (; b0 + 8 <= nb; b0 += 8) {                                                                    \
            scales8_##SUFFIX(d, NULL, dx, NULL, b0, 8, NX, sc, NULL);                                      \
            _Pragma("GCC unroll 8") for (int k = 0; k < 8; k++)                                            \
                q8_0_block_##SUFFIX(q, qx, b0 + k, NX, sc, k, acc, k & 1, pf_end);                               \
        }                                                                                                  \
        /* the last blocks (all of a short row: a 64-wide head has 2): scalar scale products */         \
        for (int b = b0; b < nb; b++) {                                                                    \
            const float dw = _cvtsh_ss(d[b]);                                                              \
            for (int j = 0; j < NX; j++) sc[j][0] = dw * dx[j][b];                                         \
            q8_0_block_##SUFFIX(q, qx, b, NX, sc, 0, acc, 0, pf_end);                                      \
        }                                                                                                  \
        for (int j = 0; j < NX; j++) out[j] = hsum128(_mm_add_ps(acc[j][0], acc[j][1]));                   \
    }                                                                                                      \
    /* blocks b and b + 1 of a Q4_1 row (32 bytes of nibbles, activations interleaved) into acc[j][A] */     \
    TARGET static inline __attribute__((always_inline)) void q4_1_pair_##SUFFIX(                         \
        const uint8_t *q, const int8_t *const *qx, int b, const int NX, float (*sc)[8], int k, __m256 (*acc)[2], const int A, const uint8_t *pf_end) { \
        const __m256i lowmask = _mm256_set1_epi8(15);                                                      \
        if (q + (size_t)b * 16 + QPF_BYTES < pf_end)                                                        \
            _mm_prefetch((const char *)(q + (size_t)b * 16) + QPF_BYTES, _MM_HINT_T0);                    \
        const __m256i v = _mm256_loadu_si256((const __m256i *)(q + (size_t)b * 16));                       \
        const __m256i lo = _mm256_and_si256(v, lowmask);                                                   \
        const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), lowmask);                             \
        const size_t off = (size_t)b * FR_QBLOCK;                                                          \
        for (int j = 0; j < NX; j++) {                                                                     \
            const __m256i xl = _mm256_loadu_si256((const __m256i *)(qx[j] + off));                         \
            const __m256i xh = _mm256_loadu_si256((const __m256i *)(qx[j] + off + 32));                    \
            const __m256 s = _mm256_set_m128(_mm_broadcast_ss(&sc[j][k + 1]), _mm_broadcast_ss(&sc[j][k])); \
            acc[j][A] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(DOT64(lo, xl, hi, xh)), s, acc[j][A]);           \
        }                                                                                                  \
    }                                                                                                      \
    TARGET static inline __attribute__((always_inline)) void q4_1_##SUFFIX##_n(                          \
        const uint8_t *row, const qact *a, int j0, const int NX, float *out, const uint8_t *pf_end) {                          \
        const int nb = a->nb;                                                                              \
        const uint16_t *d = (const uint16_t *)row, *mn = d + nb;                                           \
        const uint8_t *q = row + 4 * (size_t)nb;                                                           \
        const int8_t *qx[QX_MAX];                                                                          \
        const float *dx[QX_MAX], *xs[QX_MAX];                                                              \
        __m256 acc[QX_MAX][2], accm[QX_MAX];                                                               \
        float sc[QX_MAX][8] __attribute__((aligned(32)));                                                  \
        for (int j = 0; j < NX; j++) {                                                                     \
            qx[j] = a->q + (size_t)(j0 + j) * a->cols;                                                     \
            dx[j] = a->d + (size_t)(j0 + j) * nb;                                                          \
            xs[j] = a->s + (size_t)(j0 + j) * nb;                                                          \
            acc[j][0] = acc[j][1] = accm[j] = _mm256_setzero_ps();                                         \
        }                                                                                                  \
        int b0 = 0;                                                                                        \
        for (; b0 + 8 <= nb; b0 += 8) {                                                                    \
            scales8_##SUFFIX(d, mn, dx, xs, b0, 8, NX, sc, accm);                                          \
            _Pragma("GCC unroll 4") for (int k = 0; k < 8; k += 2)                                         \
                q4_1_pair_##SUFFIX(q, qx, b0 + k, NX, sc, k, acc, (k >> 1) & 1, pf_end);                         \
        }                                                                                                  \
        if (b0 < nb) {                                                                                     \
            const int n = nb - b0;                                                                         \
            scales8_##SUFFIX(d, mn, dx, xs, b0, n, NX, sc, accm);                                          \
            int k = 0;                                                                                     \
            for (; k + 1 < n; k += 2) q4_1_pair_##SUFFIX(q, qx, b0 + k, NX, sc, k, acc, 0, pf_end);              \
            if (k < n) { /* the last block of an odd count: natural layout */                             \
                const __m128i v = _mm_loadu_si128((const __m128i *)(q + (size_t)(b0 + k) * 16));           \
                const __m256i w = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(v, 4), v), _mm256_set1_epi8(15)); \
                const size_t off = (size_t)(b0 + k) * FR_QBLOCK;                                           \
                for (int j = 0; j < NX; j++) {                                                             \
                    const __m256i x = _mm256_loadu_si256((const __m256i *)(qx[j] + off));                  \
                    acc[j][1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(DOT32(w, x)), _mm256_broadcast_ss(&sc[j][k]), acc[j][1]); \
                }                                                                                          \
            }                                                                                              \
        }                                                                                                  \
        for (int j = 0; j < NX; j++) out[j] = hsum256(_mm256_add_ps(_mm256_add_ps(acc[j][0], acc[j][1]), accm[j])); \
    }                                                                                                      \
    TARGET static void dot8_q8_0_##SUFFIX(const qrows *t, const qact *a, int j0, int nx) {                 \
        QROWS_BY_NX(q8_0_##SUFFIX##_n)                                                                     \
    }                                                                                                      \
    TARGET static void dot8_q4_1_##SUFFIX(const qrows *t, const qact *a, int j0, int nx) {                 \
        QROWS_BY_NX(q4_1_##SUFFIX##_n)                                                                     \
    }

T_AVX2 static inline __m256i dot32_avx2(__m256i u, __m256i s) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}
/* Two Q4_1 products summed before widening: their int16 pair sums are at most
 * 2 · 2 · 15 · 127 = 7620 in magnitude, so the addition cannot overflow. */
T_AVX2 static inline __m256i dot64_avx2(__m256i u0, __m256i s0, __m256i u1, __m256i s1) {
    return _mm256_madd_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(u0, s0), _mm256_maddubs_epi16(u1, s1)),
                             _mm256_set1_epi16(1));
}
QDOT8_KERNELS(avx2, T_AVX2, dot32_avx2, dot64_avx2)


/* ------------------------------------------------------------------ dispatch */

static int quant_isa(void) {
    int isa = fr_cpu_isa();
    __builtin_cpu_init();
    if (isa >= FR_ISA_AVX2 && !__builtin_cpu_supports("f16c")) isa = FR_ISA_GENERIC;
    return isa;
}

int fr_qmatmul_isa(void) { return quant_isa(); }

/* K formats with FP32 activations: each super-block dequantized (formats/kquant.c), then dotted */
#define KQ_DOT_F32(KT)                                                                                        \
    static float dot_f32_##KT(const uint8_t *row, const float *x, const float *xs, int cols) {              \
        (void)xs;                                                                                             \
        const size_t bb = fr_kq_block_bytes(KT);                                                              \
        float w[FR_QK_K], s = 0.f;                                                                            \
        for (int b = 0; b < cols / FR_QK_K; b++) {                                                            \
            fr_kq_dequantize_row(KT, row + bb * (size_t)b, w, FR_QK_K);                                       \
            for (int i = 0; i < FR_QK_K; i++) s += w[i] * x[b * FR_QK_K + i];                                 \
        }                                                                                                     \
        return s;                                                                                             \
    }
KQ_DOT_F32(FR_KQ_Q4_K)
KQ_DOT_F32(FR_KQ_Q5_K)
KQ_DOT_F32(FR_KQ_Q6_K)

static rowdot_fn pick_dot(fr_qtype t, int isa) {
    if (t == FR_QT_Q4_K) return dot_f32_FR_KQ_Q4_K;
    if (t == FR_QT_Q5_K) return dot_f32_FR_KQ_Q5_K;
    if (t == FR_QT_Q6_K) return dot_f32_FR_KQ_Q6_K;
    static const rowdot_fn table[3][3] = {
        {dot_bf16_c, dot_q8_0_c, dot_q4_1_c},
        {dot_bf16_avx2, dot_q8_0_avx2, dot_q4_1_avx2},
        {dot_bf16_avx512, dot_q8_0_avx512, dot_q4_1_avx512},
    };
    if (t < FR_QT_BF16 || t > FR_QT_Q4_1) return NULL;
    if (isa < 0 || isa > FR_ISA_AVX512) isa = FR_ISA_GENERIC;
    return table[isa][t - FR_QT_BF16];
}

/* y[0:rows] = W x for one x row (xs: block sums of x for Q4_1, else unused). */
static void matvec(float *y, const float *x, const float *xs, const fr_qmatrix *w, rowdot_fn dot) {
    const size_t rb = fr_qtype_row_bytes(w->type, w->cols);
    const uint8_t *base = (const uint8_t *)w->data;
    const int rows = w->rows, cols = w->cols;
    const int par = (double)rows * cols > 65536.0 && omp_get_max_threads() > 1;
    FR_OMP_IF(par, "omp parallel for schedule(static)",
        for (int r = 0; r < rows; r++) y[r] = dot(base + rb * (size_t)r, x, xs, cols);
    );
}

static void block_sums(float *xs, const float *x, int cols) {
    for (int b = 0; b < cols / FR_QBLOCK; b++) {
        float s = 0.f;
        for (int i = 0; i < FR_QBLOCK; i++) s += x[b * FR_QBLOCK + i];
        xs[b] = s;
    }
}

static void qmatmul_rows(float *y, const float *x, const fr_qmatrix *w, int M, rowdot_fn dot) {
    float xs_stack[1024];
    const int nb = w->cols / FR_QBLOCK;
    float *xs = NULL;
    if (w->type == FR_QT_Q4_1) {
        xs = nb <= 1024 ? xs_stack : malloc((size_t)nb * sizeof(float));
        if (!xs) dot = dot_q4_1_c; /* out of memory: the portable kernel sums x itself */
    }
    for (int i = 0; i < M; i++) {
        const float *xi = x + (size_t)i * w->cols;
        if (xs) block_sums(xs, xi, w->cols);
        matvec(y + (size_t)i * w->rows, xi, xs, w, dot);
    }
    if (xs && xs != xs_stack) free(xs);
}

/* -1: not yet decided (FRUGAL_QACT is read on first use), 0: FP32 activations, 1: int8 */
static int g_int8_act = -1;

void fr_qmatmul_set_int8_act(int on) {
    if (on < 0) {
        const char *env = getenv("FRUGAL_QACT");
        on = !(env && (!strcmp(env, "f32") || !strcmp(env, "fp32")));
    }
    g_int8_act = on ? 1 : 0;
}

int fr_qmatmul_int8_act(void) {
    if (g_int8_act < 0) fr_qmatmul_set_int8_act(-1);
    return g_int8_act;
}

int fr_qmatmul_uses_int8(const fr_qmatrix *w) {
    return (w->type == FR_QT_Q8_0 || w->type == FR_QT_Q4_1 || fr_qtype_is_k(w->type)) && fr_qmatmul_int8_act();
}

/* How a weight format wants its int8 activations: 0 plain blocks (Q8_0, Q6_K), 1 plain with
 * block sums (Q4_K, Q5_K: their minima), 2 / 3 Q4_1's pair / quad order with block sums (the
 * 256-bit / 512-bit kernels). Products whose formats want the same layout can share one
 * quantized copy of an input. */
static int use_zmm(int isa) { return isa >= FR_ISA_AVX512 && fr_qzmm_supported(); }
static int act_layout(fr_qtype t, int isa) {
    return t == FR_QT_Q4_1 ? (use_zmm(isa) ? 3 : 2) : t == FR_QT_Q4_K || t == FR_QT_Q5_K ? 1 : 0;
}

/* The K formats (formats/kquant.c kernels, which pick their own ISA): one weight row against
 * nx activation rows per call, as the other row kernels */
#define KQ_ROW1(KT)                                                                                         \
    static void kq_row_##KT(const uint8_t *row, const qact *a, int j0, int nx, float *out, const uint8_t *pf_end) { \
        (void)pf_end;                                                                                         \
        fr_kq_dot_q8_rows(KT, row, a->q + (size_t)j0 * a->cols, a->d + (size_t)j0 * a->nb,                     \
                          a->s ? a->s + (size_t)j0 * a->nb : NULL, a->cols, nx, out);                          \
    }                                                                                                         \
    static void dot8_##KT(const qrows *t, const qact *a, int j0, int nx) { QROWS_LOOP(kq_row_##KT, nx) }
KQ_ROW1(FR_KQ_Q4_K)
KQ_ROW1(FR_KQ_Q5_K)
KQ_ROW1(FR_KQ_Q6_K)

static qdot8_fn pick_dot8(fr_qtype t, int isa) {
    if (t == FR_QT_Q4_K) return dot8_FR_KQ_Q4_K;
    if (t == FR_QT_Q5_K) return dot8_FR_KQ_Q5_K;
    if (t == FR_QT_Q6_K) return dot8_FR_KQ_Q6_K;
    if (use_zmm(isa)) return t == FR_QT_Q8_0 ? fr_qzmm_dot8_q8_0 : fr_qzmm_dot8_q4_1;
    if (isa >= FR_ISA_AVX2) return t == FR_QT_Q8_0 ? dot8_q8_0_avx2 : dot8_q4_1_avx2;
    return t == FR_QT_Q8_0 ? dot8_q8_0_c : dot8_q4_1_c;
}

/* Int8-activation product for every M (see "int8 activations" above). A product is prepared
 * (activations quantized, tiles sized), then run_jobs runs it, alone (fr_qmatmul) or with the
 * other products of a batch in one parallel region (fr_qmatmul_batch). */
typedef struct {
    float *y;
    const fr_qmatrix *w;
    int M, tile, n_tiles;
    size_t rb;
    qdot8_fn dot;
    qact a;
    int owns;     /* a's buffer was allocated for this product (else it is another's) */
    int32_t *gemm; /* the int8 prefill (qgemm_vnni.c): [nb * 8] where each block's 4-byte words sit in an
                    * activation row, then the activation blocks' integer sums, [M * nb] for Q8_0 and
                    * [M * nb * 2] (halves) for Q6_K; NULL: the row kernels */
} qjob;

static void qjob_release(qjob *j) {
    free(j->gemm);
    j->gemm = NULL;
    if (j->owns) free(j->a.q);
    j->a.q = NULL;
    j->a.d = j->a.s = NULL;
    j->owns = 0;
}

/* Returns 0 when the activation buffers cannot be allocated (the caller falls back).
 * tiles_per_thread: the fewest tiles per thread wanted for balance. share: a prepared product
 * whose activations are the same rows in the same layout (the query and latent projections
 * of one input, an expert's gate and up), reused instead of quantized again; or NULL. */
static int qjob_prepare(qjob *j, float *y, const float *x, const fr_qmatrix *w, int M, int isa, int tiles_per_thread,
                        const qjob *share) {
    const int rows = w->rows, cols = w->cols, nb = cols / FR_QBLOCK, layout = act_layout(w->type, isa), sums = layout > 0;
    const int threads = omp_get_max_threads();
    j->y = y;
    j->w = w;
    j->M = M;
    if (share) {
        j->a = share->a;
        j->owns = 0;
    } else {
        /* one buffer: int8 values (padded to 32 bytes), scales, Q4_1's block sums */
        const size_t qbytes = ((size_t)M * cols + 31) & ~(size_t)31, fbytes = (size_t)M * nb * sizeof(float);
        unsigned char *buf = malloc(qbytes + fbytes * (sums ? 2 : 1));
        if (!buf) return 0;
        j->a = (qact){cols, nb, (int8_t *)buf, (float *)(buf + qbytes), sums ? (float *)(buf + qbytes + fbytes) : NULL};
        j->owns = 1;
        const int group = layout == 3 ? 4 : layout == 2 ? 2 : 1;
        /* (decode prepares ~40 products per layer, each of one row: no parallel construct) */
        FR_OMP_IF(M >= 16 && threads > 1, "omp parallel for schedule(static)",
            for (int i = 0; i < M; i++)
                quantize_act_row(x + (size_t)i * cols, cols, j->a.q + (size_t)i * cols, j->a.d + (size_t)i * nb,
                                 sums ? j->a.s + (size_t)i * nb : NULL, group, isa);
        );
    }
    j->dot = pick_dot8(w->type, isa);
    j->rb = fr_qtype_row_bytes(w->type, cols);
    j->gemm = NULL;
    const int q8 = w->type == FR_QT_Q8_0, q6 = w->type == FR_QT_Q6_K;
    const int gemm_type = q8 || q6 || w->type == FR_QT_Q4_1 || w->type == FR_QT_Q4_K || w->type == FR_QT_Q5_K;
    const size_t n_sums = q8 ? (size_t)M * nb : q6 ? (size_t)M * nb * 2 : 0;
    if (gemm_type && M >= PREFILL_INT8_MIN && use_zmm(isa) && fr_qmatmul_prefill_int8() &&
        (j->gemm = malloc(((size_t)nb * 8 + n_sums) * sizeof(int32_t))) != NULL) {
        const int group = layout == 3 ? 4 : layout == 2 ? 2 : 1;
        for (int b = 0; b < nb; b++)
            for (int k = 0; k < 8; k++) j->gemm[8 * b + k] = (int32_t)qx_index(b, 4 * k, nb, group);
        if (n_sums) fr_qgemm_block_sums(&j->a, M, q6, j->gemm + (size_t)nb * 8);
    }
    /* tiles of at most 128 KiB of weights (run_jobs uses them when several groups of
     * activation rows pass over the weights, each re-reading the tile from L2) */
    int tile = (int)(((size_t)128 << 10) / j->rb);
    if (tile > rows / (tiles_per_thread * threads)) tile = rows / (tiles_per_thread * threads);
    if (j->gemm && tile >= 16) tile -= tile % 16; /* the matrix product takes rows 16 at a time */
    j->tile = tile < 1 ? 1 : tile;
    j->n_tiles = (rows + j->tile - 1) / j->tile;
    return 1;
}

/* rows [r0, r1) of a prepared product, every group of activation rows */
static void qjob_run_rows(const qjob *j, int r0, int r1) {
    const uint8_t *base = (const uint8_t *)j->w->data;
    const qrows tr = {base, base + j->rb * (size_t)r1, j->rb, r0, r1, j->w->rows, j->y};
    if (j->gemm && fr_qgemm_rows(&tr, &j->a, j->w->type, j->gemm + (size_t)j->a.nb * 8, j->gemm, j->M) == 0) return;
    for (int j0 = 0; j0 < j->M; j0 += QX_MAX) j->dot(&tr, &j->a, j0, j->M - j0 < QX_MAX ? j->M - j0 : QX_MAX);
}

/* The first row of product i at which a cut placed `at` bytes into the concatenated weights of
 * all products falls (0 .. rows): the same function places both ends of every share, so the
 * shares cover each row exactly once. */
static int cut_row(const qjob *j, double start, double at) {
    if (at <= start) return 0;
    const double r = ceil((at - start) / (double)j->rb);
    return r >= j->w->rows ? j->w->rows : (int)r;
}

/* Runs prepared products. Each output element is computed by one kernel call with the same
 * operations whichever thread makes it, so the schedule never changes a result.
 * - One pass over the weights (every M <= QX_MAX: decode, a small batch, a speculative
 *   step): the products' weights, taken as one byte range, are cut into one contiguous
 *   share per thread. Each thread streams long runs of memory, and its prefetching stops at
 *   its share's end; cutting into tiles handed out one by one was slower (every tile start
 *   restarts the stream: 16 KiB tiles decoded 15 % slower than 128 KiB ones).
 * - Several passes (prefill): L2-sized tiles, handed out dynamically (the products differ in
 *   size, and a held-up core on a shared machine takes fewer). */
static void run_jobs(const qjob *qj, int n) {
    double total = 0, work = 0;
    int tiles = 0, one_pass = 1;
    for (int i = 0; i < n; i++) {
        total += (double)qj[i].rb * qj[i].w->rows;
        work += (double)qj[i].w->rows * qj[i].w->cols * qj[i].M;
        tiles += qj[i].n_tiles;
        one_pass &= qj[i].M <= QX_MAX;
    }
    const int threads = omp_get_max_threads(), par = threads > 1 && work > 65536.0;
    if (one_pass) {
        FR_OMP_REGION_IF(par, "omp parallel num_threads(threads) if (par)",
            {
                const int t = fr_t, T = fr_T;
                const double lo = total * t / T, hi = total * (t + 1) / T;
                double start = 0;
                for (int i = 0; i < n; i++) {
                    const double len = (double)qj[i].rb * qj[i].w->rows;
                    if (start < hi && start + len > lo) {
                        const int r0 = cut_row(&qj[i], start, lo), r1 = cut_row(&qj[i], start, hi);
                        if (r1 > r0) qjob_run_rows(&qj[i], r0, r1);
                    }
                    start += len;
                }
            }
        );
        return;
    }
    FR_OMP_IF(par && tiles > 1, "omp parallel for schedule(dynamic, 1)",
        for (int t = 0; t < tiles; t++) {
            int i = 0, tt = t;
            while (tt >= qj[i].n_tiles) tt -= qj[i++].n_tiles;
            const int r0 = tt * qj[i].tile, r1 = r0 + qj[i].tile < qj[i].w->rows ? r0 + qj[i].tile : qj[i].w->rows;
            qjob_run_rows(&qj[i], r0, r1);
        }
    );
}

static int qmatmul_int8(float *y, const float *x, const fr_qmatrix *w, int M, int isa) {
    qjob j;
    if (!qjob_prepare(&j, y, x, w, M, isa, 4, NULL)) return 0;
    run_jobs(&j, 1);
    qjob_release(&j);
    return 1;
}

void fr_qmatmul_batch(const fr_qmatmul_job *jobs, int n) {
    qjob stack[16], *qj = n <= 16 ? stack : malloc((size_t)n * sizeof *qj);
    int ok = qj != NULL && n > 0, prepared = 0;
    const int isa = quant_isa();
    for (int i = 0; ok && i < n; i++) {
        const qjob *share = NULL;
        for (int k = 0; k < i && !share; k++)
            if (jobs[k].x == jobs[i].x && jobs[k].M == jobs[i].M && jobs[k].w->cols == jobs[i].w->cols &&
                act_layout(jobs[k].w->type, isa) == act_layout(jobs[i].w->type, isa))
                share = &qj[k];
        ok = fr_qmatmul_uses_int8(jobs[i].w) && jobs[i].M > 0 &&
             !(jobs[i].M >= PREFILL_BF16_MIN && fr_qmatmul_prefill_bf16()) &&
             qjob_prepare(&qj[i], jobs[i].y, jobs[i].x, jobs[i].w, jobs[i].M, isa, 1, share);
        prepared += ok;
    }
    if (!ok) { /* not all int8 products (or no memory): one after another */
        for (int i = 0; qj && i < prepared; i++) qjob_release(&qj[i]);
        for (int i = 0; i < n; i++) fr_qmatmul(jobs[i].y, jobs[i].x, jobs[i].w, jobs[i].M);
        if (qj != stack) free(qj);
        return;
    }
    run_jobs(qj, n);
    for (int i = 0; i < n; i++) qjob_release(&qj[i]);
    if (qj != stack) free(qj);
}

/* ------------------------------------------------------------------ BF16 prefill
 * Prompt processing (M >= PREFILL_BF16_MIN rows) on the CPU's BF16 matrix units: tiles of W
 * are dequantized (BF16 weights: read as they are) and multiplied by oneDNN's BF16 matmul
 * (fr_cpu_gemm_bf16: AMX tiles on Sapphire Rapids, vdpbf16ps on AVX512-BF16 CPUs, an exact
 * emulation elsewhere), activations and weights rounded to BF16, FP32 accumulation. The
 * weights lose nothing a BF16 or 8-bit format holds... except Q8_0's 8-bit quants times an
 * fp16 scale, which BF16's 8-bit significand rounds (relative 2^-9); the activations are
 * rounded to BF16 (2^-9) where the int8 path rounds them per block of 32 (1/254 of the
 * block's largest). On by default where the matmul runs on AMX; FRUGAL_PREFILL=bf16 or
 * fr_qmatmul_set_prefill_bf16(1) elsewhere, FRUGAL_PREFILL=exact off. */
static int g_prefill_bf16 = -1;

void fr_qmatmul_set_prefill_bf16(int on) {
    if (on < 0) {
        const char *env = getenv("FRUGAL_PREFILL");
        if (env && !strcmp(env, "bf16")) on = 1;
        else if (env && !strcmp(env, "exact")) on = 0;
        else on = strstr(fr_cpu_bf16_gemm_path(), "amx") != NULL;
    }
    g_prefill_bf16 = on ? 1 : 0;
}

int fr_qmatmul_prefill_bf16(void) {
    if (g_prefill_bf16 < 0) fr_qmatmul_set_prefill_bf16(-1);
    return g_prefill_bf16;
}

/* ------------------------------------------------------------------ int8 prefill
 * A prompt's Q8_0, Q4_1 and K-format products (M >= PREFILL_INT8_MIN rows) as matrix products on AVX-512 VNNI
 * (qgemm_vnni.c): the same int8 activations and integer block sums as the row kernels, the FP32
 * additions in another order. A row's result then depends on whether it came in a prompt of 16
 * rows or more, and is no longer the bits that decode gives it; the error against FP32
 * activations is the row kernels' (test_prefill_bf16). On by default where the CPU runs it
 * (the BF16 prefill, on AMX, comes first); FRUGAL_PREFILL=exact keeps every product on the row
 * kernels (the tests' setting: they compare paths bit for bit), =int8 asks for it. The 680M
 * Q8_0 model on the Intel VM: a 64-token prompt 498-550 -> 798-855 tok/s, 463 tokens 448-514
 * -> 714-926 (docs/performance.md). */
static int g_prefill_int8 = -1;

void fr_qmatmul_set_prefill_int8(int on) {
    if (on < 0) {
        const char *env = getenv("FRUGAL_PREFILL");
        on = env ? !strcmp(env, "int8") : 1;
    }
    g_prefill_int8 = on ? 1 : 0;
}

static int fr_qmatmul_prefill_int8(void) {
    if (g_prefill_int8 < 0) fr_qmatmul_set_prefill_int8(-1);
    return g_prefill_int8;
}

/* y[M, rows] = x W^T through fr_cpu_gemm_bf16 in tiles of about 4 MiB of FP32 weights; returns
 * 0 when it could not run (memory) and the caller takes another path. */
static int qmatmul_bf16(float *y, const float *x, const fr_qmatrix *w, int M) {
    const int rows = w->rows, cols = w->cols;
    size_t want = ((size_t)4 << 20) / ((size_t)cols * sizeof(float));
    int tile_rows = want < 64 ? 64 : (int)(want - want % 64);
    if (tile_rows > rows) tile_rows = rows;
    float *tile = NULL;
    if (posix_memalign((void **)&tile, 64, (size_t)tile_rows * cols * sizeof(float)) != 0) return 0;
    int ok = 1;
    for (int r0 = 0; r0 < rows && ok; r0 += tile_rows) {
        const int n = rows - r0 < tile_rows ? rows - r0 : tile_rows;
#pragma omp parallel for schedule(static) if (omp_get_max_threads() > 1)
        for (int r = 0; r < n; r++) fr_qmatrix_row_f32(w, r0 + r, tile + (size_t)r * cols);
        ok = fr_cpu_gemm_bf16(0, 1, M, n, cols, 1.0f, x, cols, tile, cols, 0.0f, y + r0, rows) == 0;
    }
    free(tile);
    return ok;
}

void fr_qmatmul(float *y, const float *x, const fr_qmatrix *w, int M) {
    if (M <= 0 || w->rows <= 0 || w->cols <= 0) return;
    if (w->type == FR_QT_F32) {
        fr_cpu_linear_f32(y, x, (const float *)w->data, M, w->rows, w->cols);
        return;
    }
    if (M >= PREFILL_BF16_MIN && fr_qmatmul_prefill_bf16() && qmatmul_bf16(y, x, w, M)) return;
    const int isa = quant_isa();
    if (fr_qmatmul_uses_int8(w) && qmatmul_int8(y, x, w, M, isa)) return;
    rowdot_fn dot = pick_dot(w->type, isa);
    if (!dot) return;
    const int rows = w->rows, cols = w->cols;
    float *tile = NULL;
    int tile_rows = 0;
    if (M >= 4) {
        /* tiles of about 8 MiB of dequantized weights, a multiple of 64 rows */
        size_t want = ((size_t)8 << 20) / ((size_t)cols * sizeof(float));
        tile_rows = want < 64 ? 64 : (int)(want > (size_t)rows ? (size_t)rows : want - want % 64);
        if (tile_rows > rows) tile_rows = rows;
        if (posix_memalign((void **)&tile, 64, (size_t)tile_rows * cols * sizeof(float)) != 0) tile = NULL;
    }
    if (!tile) {
        qmatmul_rows(y, x, w, M, dot);
        return;
    }
    for (int r0 = 0; r0 < rows; r0 += tile_rows) {
        const int n = rows - r0 < tile_rows ? rows - r0 : tile_rows;
        const int par = omp_get_max_threads() > 1;
        FR_OMP_IF(par, "omp parallel for schedule(static)",
            for (int r = 0; r < n; r++)
                fr_qmatrix_row_f32(w, r0 + r, tile + (size_t)r * cols);
        );
        fr_cpu_gemm(0, 1, M, n, cols, 1.0f, x, cols, tile, cols, 0.0f, y + r0, rows);
    }
    free(tile);
}
