/*
 * ops_cpu_simd.c — the small SIMD helpers (dot products, axpy, exp-sum, SwiGLU) used by the
 * CPU backend's non-GEMM ops, one table per instruction set; cpu/isa.c says which one runs.
 *
 * Kernels for AVX2+FMA and AVX-512F are compiled with target attributes, so the file
 * builds without -march flags and the choice is made at run time.
 */
#include "cpu/ops_cpu.h"

#include <float.h>
#include <stdint.h>
#include <immintrin.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ generic helpers */

static float dot_generic(const float *a, const float *b, int n) {
    float s = 0.f;
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

static void dots_generic(float *out, const float *q, const float *K, size_t ks, int rows, int d,
                         float scale) {
    for (int j = 0; j < rows; j++) out[j] = scale * dot_generic(q, K + (size_t)j * ks, d);
}

static void axpys_generic(float *acc, const float *p, const float *V, size_t vs, int rows, int d) {
    for (int j = 0; j < rows; j++) {
        const float *v = V + (size_t)j * vs;
        float pj = p[j];
        for (int i = 0; i < d; i++) acc[i] += pj * v[i];
    }
}

/* dots_heads / axpys_heads of the generic table: a call per head */
static void dots_heads_generic(float *out, size_t os, const float *q, size_t qs, int nh, const float *K, size_t ks, int rows,
                               int d, float scale) {
    for (int h = 0; h < nh; h++) dots_generic(out + (size_t)h * os, q + (size_t)h * qs, K, ks, rows, d, scale);
}

static void axpys_heads_generic(float *acc, size_t as, const float *p, size_t ps, int nh, const float *V, size_t vs, int rows,
                                int d) {
    for (int h = 0; h < nh; h++) axpys_generic(acc + (size_t)h * as, p + (size_t)h * ps, V, vs, rows, d);
}

static void rank1s_generic(float *Y, size_t ys, const float *c, const float *x, int rows, int d) {
    for (int j = 0; j < rows; j++) {
        float *y = Y + (size_t)j * ys;
        float cj = c[j];
        for (int i = 0; i < d; i++) y[i] += cj * x[i];
    }
}

static float max_generic(const float *x, int n) {
    float m = x[0];
    for (int i = 1; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

static float expsum_generic(float *y, const float *x, int n, float m) {
    float s = 0.f;
    for (int i = 0; i < n; i++) {
        float e = expf(x[i] - m);
        if (y) y[i] = e;
        s += e;
    }
    return s;
}

static void swiglu_generic(float *h, const float *g, const float *u, int n) {
    for (int i = 0; i < n; i++) {
        const float gi = g[i];
        h[i] = gi * (1.0f / (1.0f + expf(-gi))) * u[i];
    }
}

/* SwiGLU backward: s = sigmoid(g); dg = dh u s (1 + g (1 - s)), du = dh g s */
static void swiglu_backward_generic(float *dg, float *du, const float *dh, const float *g, const float *u, int n) {
    for (int i = 0; i < n; i++) {
        const float gi = g[i], s = 1.0f / (1.0f + expf(-gi)), d = dh[i];
        dg[i] = d * u[i] * s * (1.0f + gi * (1.0f - s));
        du[i] = d * (gi * s);
    }
}

static const fr_cpu_vec vec_generic = {dots_generic,    axpys_generic,  dots_heads_generic, axpys_heads_generic,
                                       rank1s_generic,  dot_generic,    max_generic,        expsum_generic,
                                       swiglu_generic, swiglu_backward_generic};

/* ------------------------------------------------------------------ AVX2 + FMA */

#define T_AVX2 __attribute__((target("avx2,fma")))

T_AVX2 static inline float hsum256(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_shuffle_ps(lo, lo, 1));
    return _mm_cvtss_f32(lo);
}

/* exp(x) for x in float range; x < ln(FLT_MIN) gives 0, NaN propagates. Cephes-style
 * range reduction x = n ln2 + r and a degree-6 polynomial for e^r (about 1-2 ulp). */
T_AVX2 static inline __m256 exp256(__m256 x) {
    const __m256 hi = _mm256_set1_ps(88.0f), lo = _mm256_set1_ps(-87.33654475f);
    __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    x = _mm256_min_ps(hi, x);
    x = _mm256_max_ps(lo, x);
    __m256 fx = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i n = _mm256_cvtps_epi32(fx);
    __m256 pow2n = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n, _mm256_set1_epi32(127)), 23));
    return _mm256_andnot_ps(under, _mm256_mul_ps(p, pow2n));
}

T_AVX2 static float dot_avx2(const float *a, const float *b, int n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
        s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
        s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
    }
    for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    float s = hsum256(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

/* Four rows at a time so each load of q feeds four FMAs. */
T_AVX2 static void dots_avx2(float *out, const float *q, const float *K, size_t ks, int rows, int d,
                             float scale) {
    int j = 0;
    int d8 = d & ~7;
    for (; j + 4 <= rows; j += 4) {
        const float *k0 = K + (size_t)j * ks, *k1 = k0 + ks, *k2 = k1 + ks, *k3 = k2 + ks;
        __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
        for (int i = 0; i < d8; i += 8) {
            __m256 qv = _mm256_loadu_ps(q + i);
            s0 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + i), s0);
            s1 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k1 + i), s1);
            s2 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k2 + i), s2);
            s3 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k3 + i), s3);
        }
        float r0 = hsum256(s0), r1 = hsum256(s1), r2 = hsum256(s2), r3 = hsum256(s3);
        for (int i = d8; i < d; i++) {
            r0 += q[i] * k0[i];
            r1 += q[i] * k1[i];
            r2 += q[i] * k2[i];
            r3 += q[i] * k3[i];
        }
        out[j] = scale * r0;
        out[j + 1] = scale * r1;
        out[j + 2] = scale * r2;
        out[j + 3] = scale * r3;
    }
    for (; j < rows; j++) {
        const float *k0 = K + (size_t)j * ks;
        __m256 s0 = _mm256_setzero_ps();
        for (int i = 0; i < d8; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_loadu_ps(k0 + i), s0);
        float r0 = hsum256(s0);
        for (int i = d8; i < d; i++) r0 += q[i] * k0[i];
        out[j] = scale * r0;
    }
}

T_AVX2 static void axpys_avx2(float *acc, const float *p, const float *V, size_t vs, int rows, int d) {
    int i = 0;
    for (; i + 64 <= d; i += 64) {
        __m256 a0 = _mm256_loadu_ps(acc + i), a1 = _mm256_loadu_ps(acc + i + 8);
        __m256 a2 = _mm256_loadu_ps(acc + i + 16), a3 = _mm256_loadu_ps(acc + i + 24);
        __m256 a4 = _mm256_loadu_ps(acc + i + 32), a5 = _mm256_loadu_ps(acc + i + 40);
        __m256 a6 = _mm256_loadu_ps(acc + i + 48), a7 = _mm256_loadu_ps(acc + i + 56);
        for (int j = 0; j < rows; j++) {
            const float *v = V + (size_t)j * vs + i;
            __m256 pj = _mm256_broadcast_ss(p + j);
            a0 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(v), a0);
            a1 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(v + 8), a1);
            a2 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(v + 16), a2);
            a3 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(v + 24), a3);
            a4 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(v + 32), a4);
            a5 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(v + 40), a5);
            a6 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(v + 48), a6);
            a7 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(v + 56), a7);
        }
        _mm256_storeu_ps(acc + i, a0);
        _mm256_storeu_ps(acc + i + 8, a1);
        _mm256_storeu_ps(acc + i + 16, a2);
        _mm256_storeu_ps(acc + i + 24, a3);
        _mm256_storeu_ps(acc + i + 32, a4);
        _mm256_storeu_ps(acc + i + 40, a5);
        _mm256_storeu_ps(acc + i + 48, a6);
        _mm256_storeu_ps(acc + i + 56, a7);
    }
    for (; i + 8 <= d; i += 8) {
        __m256 a0 = _mm256_loadu_ps(acc + i);
        for (int j = 0; j < rows; j++)
            a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(p + j), _mm256_loadu_ps(V + (size_t)j * vs + i), a0);
        _mm256_storeu_ps(acc + i, a0);
    }
    for (; i < d; i++) {
        float a = acc[i];
        for (int j = 0; j < rows; j++) a = fmaf(p[j], V[(size_t)j * vs + i], a);
        acc[i] = a;
    }
}

T_AVX2 static void rank1s_avx2(float *Y, size_t ys, const float *c, const float *x, int rows, int d) {
    for (int j = 0; j < rows; j++) {
        float *y = Y + (size_t)j * ys;
        __m256 cj = _mm256_broadcast_ss(c + j);
        int i = 0;
        for (; i + 8 <= d; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(cj, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
        for (; i < d; i++) y[i] = fmaf(c[j], x[i], y[i]);
    }
}

T_AVX2 static float max_avx2(const float *x, int n) {
    int i = 0;
    float m = x[0];
    if (n >= 8) {
        __m256 mv = _mm256_loadu_ps(x);
        for (i = 8; i + 8 <= n; i += 8) mv = _mm256_max_ps(mv, _mm256_loadu_ps(x + i));
        __m128 a = _mm_max_ps(_mm256_castps256_ps128(mv), _mm256_extractf128_ps(mv, 1));
        a = _mm_max_ps(a, _mm_movehl_ps(a, a));
        a = _mm_max_ss(a, _mm_shuffle_ps(a, a, 1));
        m = _mm_cvtss_f32(a);
    }
    for (; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

T_AVX2 static float expsum_avx2(float *y, const float *x, int n, float m) {
    __m256 mv = _mm256_set1_ps(m), s0 = _mm256_setzero_ps(), s1 = s0;
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256 e0 = exp256(_mm256_sub_ps(_mm256_loadu_ps(x + i), mv));
        __m256 e1 = exp256(_mm256_sub_ps(_mm256_loadu_ps(x + i + 8), mv));
        if (y) {
            _mm256_storeu_ps(y + i, e0);
            _mm256_storeu_ps(y + i + 8, e1);
        }
        s0 = _mm256_add_ps(s0, e0);
        s1 = _mm256_add_ps(s1, e1);
    }
    if (i < n) { /* tail: pad with -inf (exp = 0) */
        float buf[16];
        int r = n - i;
        for (int t = 0; t < 16; t++) buf[t] = t < r ? x[i + t] : -INFINITY;
        __m256 e0 = exp256(_mm256_sub_ps(_mm256_loadu_ps(buf), mv));
        __m256 e1 = exp256(_mm256_sub_ps(_mm256_loadu_ps(buf + 8), mv));
        s0 = _mm256_add_ps(s0, e0);
        s1 = _mm256_add_ps(s1, e1);
        if (y) {
            _mm256_storeu_ps(buf, e0);
            _mm256_storeu_ps(buf + 8, e1);
            for (int t = 0; t < r; t++) y[i + t] = buf[t];
        }
    }
    return hsum256(_mm256_add_ps(s0, s1));
}

T_AVX2 static void swiglu_avx2(float *h, const float *g, const float *u, int n) {
    /* sigmoid from e = exp(-|g|) <= 1, which cannot overflow: 1/(1+e) for g >= 0, e/(1+e)
     * below (exp256 clamps large arguments, so exp(-g) itself would give g = -1e30 a
     * sigmoid of 6e-39 instead of 0) */
    const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 gv = _mm256_loadu_ps(g + i);
        const __m256 e = exp256(_mm256_or_ps(gv, sign)); /* exp(-|g|) */
        const __m256 r = _mm256_div_ps(one, _mm256_add_ps(one, e));
        const __m256 s = _mm256_blendv_ps(r, _mm256_mul_ps(e, r), gv); /* sign bit of g picks e/(1+e) */
        _mm256_storeu_ps(h + i, _mm256_mul_ps(_mm256_mul_ps(gv, s), _mm256_loadu_ps(u + i)));
    }
    swiglu_generic(h + i, g + i, u + i, n - i);
}

T_AVX2 static void swiglu_backward_avx2(float *dg, float *du, const float *dh, const float *g, const float *u, int n) {
    const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f);
    int i = 0;
    for (; i + 8 <= n; i += 8) { /* the sigmoid as in swiglu_avx2 */
        const __m256 gv = _mm256_loadu_ps(g + i), d = _mm256_loadu_ps(dh + i);
        const __m256 e = exp256(_mm256_or_ps(gv, sign));
        const __m256 r = _mm256_div_ps(one, _mm256_add_ps(one, e));
        const __m256 s = _mm256_blendv_ps(r, _mm256_mul_ps(e, r), gv);
        const __m256 ds = _mm256_mul_ps(_mm256_mul_ps(d, _mm256_loadu_ps(u + i)), s);
        _mm256_storeu_ps(dg + i, _mm256_mul_ps(ds, _mm256_fmadd_ps(gv, _mm256_sub_ps(one, s), one)));
        _mm256_storeu_ps(du + i, _mm256_mul_ps(d, _mm256_mul_ps(gv, s)));
    }
    swiglu_backward_generic(dg + i, du + i, dh + i, g + i, u + i, n - i);
}

/* dots_heads / axpys_heads on 256-bit vectors: 2 heads x 4 keys (8 accumulators, 6 loads per 8
 * FMAs instead of 5 per 4) and 2 heads x 32 columns, each (head, key) and each accumulated
 * column seeing dots_avx2's / axpys_avx2's operations in their order (the key's hsum256, then
 * its scalar tail), so the bits are theirs; the last rows % 4 keys and the columns past the
 * last 64 go through dots_avx2 / axpys_avx2 themselves. */
#define INLINE_AVX2 T_AVX2 static inline __attribute__((always_inline))
INLINE_AVX2 void score_tile_avx2(float *out, size_t os, const float *q, size_t qs, const float *K, size_t ks, int j, int d,
                                 float scale, const int NH) {
    const int d8 = d & ~7;
    const float *kr = K + (size_t)j * ks;
    __m256 acc[2][4];
    for (int h = 0; h < NH; h++)
        for (int u = 0; u < 4; u++) acc[h][u] = _mm256_setzero_ps();
    for (int i = 0; i < d8; i += 8) {
        __m256 kv[4];
        for (int u = 0; u < 4; u++) {
            kv[u] = _mm256_loadu_ps(kr + (size_t)u * ks + i);
            __asm__("" : "+x"(kv[u])); /* in a register: not reloaded as an operand of every head's FMA */
        }
        for (int h = 0; h < NH; h++) {
            const __m256 qv = _mm256_loadu_ps(q + (size_t)h * qs + i);
            for (int u = 0; u < 4; u++) acc[h][u] = _mm256_fmadd_ps(qv, kv[u], acc[h][u]);
        }
    }
    for (int h = 0; h < NH; h++)
        for (int u = 0; u < 4; u++) {
            const float *qh = q + (size_t)h * qs, *ku = kr + (size_t)u * ks;
            float r = hsum256(acc[h][u]);
            for (int i = d8; i < d; i++) r += qh[i] * ku[i];
            out[(size_t)h * os + j + u] = scale * r;
        }
}

T_AVX2 static void dots_heads_avx2(float *out, size_t os, const float *q, size_t qs, int nh, const float *K, size_t ks,
                                   int rows, int d, float scale) {
    const int rows4 = rows & ~3;
    for (int h0 = 0; h0 < nh; h0 += 2)
        for (int j = 0; j < rows4; j += 4) {
            if (nh - h0 >= 2) score_tile_avx2(out + (size_t)h0 * os, os, q + (size_t)h0 * qs, qs, K, ks, j, d, scale, 2);
            else score_tile_avx2(out + (size_t)h0 * os, os, q + (size_t)h0 * qs, qs, K, ks, j, d, scale, 1);
        }
    if (rows4 < rows)
        for (int h = 0; h < nh; h++) dots_avx2(out + (size_t)h * os + rows4, q + (size_t)h * qs, K + (size_t)rows4 * ks, ks, rows - rows4, d, scale);
}

INLINE_AVX2 void value_tile_avx2(float *acc, size_t as, const float *p, size_t ps, const float *V, size_t vs, int rows, int c0,
                                 const int NH) {
    __m256 a[2][4];
    for (int h = 0; h < NH; h++)
        for (int u = 0; u < 4; u++) a[h][u] = _mm256_loadu_ps(acc + (size_t)h * as + c0 + 8 * u);
    for (int j = 0; j < rows; j++) {
        const float *v = V + (size_t)j * vs + c0;
        __m256 vv[4];
        for (int u = 0; u < 4; u++) {
            vv[u] = _mm256_loadu_ps(v + 8 * u);
            __asm__("" : "+x"(vv[u])); /* as in score_tile_avx2 */
        }
        for (int h = 0; h < NH; h++) {
            const __m256 pj = _mm256_broadcast_ss(p + (size_t)h * ps + j);
            for (int u = 0; u < 4; u++) a[h][u] = _mm256_fmadd_ps(pj, vv[u], a[h][u]);
        }
    }
    for (int h = 0; h < NH; h++)
        for (int u = 0; u < 4; u++) _mm256_storeu_ps(acc + (size_t)h * as + c0 + 8 * u, a[h][u]);
}

T_AVX2 static void axpys_heads_avx2(float *acc, size_t as, const float *p, size_t ps, int nh, const float *V, size_t vs,
                                   int rows, int d) {
    const int d64 = d & ~63;
    for (int h0 = 0; h0 < nh; h0 += 2) {
        float *ah = acc + (size_t)h0 * as;
        const float *ph = p + (size_t)h0 * ps;
        for (int c0 = 0; c0 < d64; c0 += 32) {
            if (nh - h0 >= 2) value_tile_avx2(ah, as, ph, ps, V, vs, rows, c0, 2);
            else value_tile_avx2(ah, as, ph, ps, V, vs, rows, c0, 1);
        }
    }
    if (d64 < d)
        for (int h = 0; h < nh; h++) axpys_avx2(acc + (size_t)h * as + d64, p + (size_t)h * ps, V + d64, vs, rows, d - d64);
}

static const fr_cpu_vec vec_avx2 = {dots_avx2, axpys_avx2,  dots_heads_avx2, axpys_heads_avx2, rank1s_avx2,
                                    dot_avx2,  max_avx2,    expsum_avx2,     swiglu_avx2,      swiglu_backward_avx2};

/* ------------------------------------------------------------------ AVX-512F */

#define T_AVX512 __attribute__((target("avx512f,avx2,fma")))

T_AVX512 static inline __m512 exp512(__m512 x) {
    const __m512 hi = _mm512_set1_ps(88.0f), lo = _mm512_set1_ps(-87.33654475f);
    __mmask16 under = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
    x = _mm512_min_ps(hi, x);
    x = _mm512_max_ps(lo, x);
    __m512 fx = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(fx, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(fx, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    __m512i n = _mm512_cvtps_epi32(fx);
    __m512 pow2n = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(n, _mm512_set1_epi32(127)), 23));
    return _mm512_maskz_mul_ps((__mmask16)~under, p, pow2n);
}

T_AVX512 static inline __mmask16 tailmask(int r) { return (__mmask16)((1u << r) - 1u); }

T_AVX512 static float dot_avx512(const float *a, const float *b, int n) {
    __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    int i = 0;
    for (; i + 64 <= n; i += 64) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
        s2 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 32), _mm512_loadu_ps(b + i + 32), s2);
        s3 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 48), _mm512_loadu_ps(b + i + 48), s3);
    }
    for (; i + 16 <= n; i += 16) s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
    if (i < n) {
        __mmask16 m = tailmask(n - i);
        s1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), s1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

/* r[j] = sum of the 16 lanes of a[j], j < 16: three shuffle-and-add levels instead of 16
 * separate horizontal sums (which cost more than the FMAs of a 48-wide dot). A fixed order. */
T_AVX512 static inline __m512 hsum16x16(const __m512 *a) {
    __m512 b[8], c[4];
    for (int k = 0; k < 8; k++) /* per 128-bit lane: [x0+x2, y0+y2, x1+x3, y1+y3] */
        b[k] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * k], a[2 * k + 1]), _mm512_unpackhi_ps(a[2 * k], a[2 * k + 1]));
    for (int k = 0; k < 4; k++) /* per lane: the lane's sums of a[4k .. 4k+3] */
        c[k] = _mm512_add_ps(_mm512_shuffle_ps(b[2 * k], b[2 * k + 1], 0x44), _mm512_shuffle_ps(b[2 * k], b[2 * k + 1], 0xEE));
    const __m512 d0 = _mm512_add_ps(_mm512_shuffle_f32x4(c[0], c[1], 0x44), _mm512_shuffle_f32x4(c[0], c[1], 0xEE));
    const __m512 d1 = _mm512_add_ps(_mm512_shuffle_f32x4(c[2], c[3], 0x44), _mm512_shuffle_f32x4(c[2], c[3], 0xEE));
    return _mm512_add_ps(_mm512_shuffle_f32x4(d0, d1, 0x88), _mm512_shuffle_f32x4(d0, d1, 0xDD));
}

T_AVX512 static void dots_avx512(float *out, const float *q, const float *K, size_t ks, int rows, int d,
                                 float scale) {
    int j = 0;
    int d16 = d & ~15;
    __mmask16 m = tailmask(d - d16);
    for (; j + 16 <= rows; j += 16) { /* 16 keys at a time, their sums in one vector */
        __m512 acc[16];
        for (int u = 0; u < 16; u++) acc[u] = _mm512_setzero_ps();
        for (int i = 0; i < d16; i += 16) {
            const __m512 qv = _mm512_loadu_ps(q + i);
            for (int u = 0; u < 16; u++)
                acc[u] = _mm512_fmadd_ps(qv, _mm512_loadu_ps(K + (size_t)(j + u) * ks + i), acc[u]);
        }
        if (m) {
            const __m512 qv = _mm512_maskz_loadu_ps(m, q + d16);
            for (int u = 0; u < 16; u++)
                acc[u] = _mm512_fmadd_ps(qv, _mm512_maskz_loadu_ps(m, K + (size_t)(j + u) * ks + d16), acc[u]);
        }
        _mm512_storeu_ps(out + j, _mm512_mul_ps(_mm512_set1_ps(scale), hsum16x16(acc)));
    }
    for (; j + 4 <= rows; j += 4) {
        const float *k0 = K + (size_t)j * ks, *k1 = k0 + ks, *k2 = k1 + ks, *k3 = k2 + ks;
        __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
        for (int i = 0; i < d16; i += 16) {
            __m512 qv = _mm512_loadu_ps(q + i);
            s0 = _mm512_fmadd_ps(qv, _mm512_loadu_ps(k0 + i), s0);
            s1 = _mm512_fmadd_ps(qv, _mm512_loadu_ps(k1 + i), s1);
            s2 = _mm512_fmadd_ps(qv, _mm512_loadu_ps(k2 + i), s2);
            s3 = _mm512_fmadd_ps(qv, _mm512_loadu_ps(k3 + i), s3);
        }
        if (m) {
            __m512 qv = _mm512_maskz_loadu_ps(m, q + d16);
            s0 = _mm512_fmadd_ps(qv, _mm512_maskz_loadu_ps(m, k0 + d16), s0);
            s1 = _mm512_fmadd_ps(qv, _mm512_maskz_loadu_ps(m, k1 + d16), s1);
            s2 = _mm512_fmadd_ps(qv, _mm512_maskz_loadu_ps(m, k2 + d16), s2);
            s3 = _mm512_fmadd_ps(qv, _mm512_maskz_loadu_ps(m, k3 + d16), s3);
        }
        out[j] = scale * _mm512_reduce_add_ps(s0);
        out[j + 1] = scale * _mm512_reduce_add_ps(s1);
        out[j + 2] = scale * _mm512_reduce_add_ps(s2);
        out[j + 3] = scale * _mm512_reduce_add_ps(s3);
    }
    for (; j < rows; j++) {
        const float *k0 = K + (size_t)j * ks;
        __m512 s0 = _mm512_setzero_ps();
        for (int i = 0; i < d16; i += 16) s0 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i), _mm512_loadu_ps(k0 + i), s0);
        if (m) s0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q + d16), _mm512_maskz_loadu_ps(m, k0 + d16), s0);
        out[j] = scale * _mm512_reduce_add_ps(s0);
    }
}

T_AVX512 static void axpys_avx512(float *acc, const float *p, const float *V, size_t vs, int rows, int d) {
    int i = 0;
    for (; i + 128 <= d; i += 128) {
        __m512 a[8];
        for (int u = 0; u < 8; u++) a[u] = _mm512_loadu_ps(acc + i + 16 * u);
        for (int j = 0; j < rows; j++) {
            const float *v = V + (size_t)j * vs + i;
            __m512 pj = _mm512_set1_ps(p[j]);
            for (int u = 0; u < 8; u++) a[u] = _mm512_fmadd_ps(pj, _mm512_loadu_ps(v + 16 * u), a[u]);
        }
        for (int u = 0; u < 8; u++) _mm512_storeu_ps(acc + i + 16 * u, a[u]);
    }
    for (; i < d; i += 16) {
        __mmask16 m = d - i >= 16 ? (__mmask16)0xFFFF : tailmask(d - i);
        __m512 a0 = _mm512_maskz_loadu_ps(m, acc + i);
        for (int j = 0; j < rows; j++)
            a0 = _mm512_fmadd_ps(_mm512_set1_ps(p[j]), _mm512_maskz_loadu_ps(m, V + (size_t)j * vs + i), a0);
        _mm512_mask_storeu_ps(acc + i, m, a0);
    }
}

T_AVX512 static void rank1s_avx512(float *Y, size_t ys, const float *c, const float *x, int rows, int d) {
    for (int j = 0; j < rows; j++) {
        float *y = Y + (size_t)j * ys;
        __m512 cj = _mm512_set1_ps(c[j]);
        for (int i = 0; i < d; i += 16) {
            __mmask16 m = d - i >= 16 ? (__mmask16)0xFFFF : tailmask(d - i);
            _mm512_mask_storeu_ps(y + i, m, _mm512_fmadd_ps(cj, _mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i)));
        }
    }
}

T_AVX512 static float max_avx512(const float *x, int n) {
    __m512 mv = _mm512_set1_ps(-INFINITY);
    int i = 0;
    for (; i + 16 <= n; i += 16) mv = _mm512_max_ps(mv, _mm512_loadu_ps(x + i));
    if (i < n) mv = _mm512_mask_max_ps(mv, tailmask(n - i), mv, _mm512_maskz_loadu_ps(tailmask(n - i), x + i));
    float m = _mm512_reduce_max_ps(mv);
    if (m == -INFINITY || m != m) { /* all -inf, or NaNs the vector max may have skipped */
        m = x[0];
        for (int t = 1; t < n; t++) m = x[t] > m ? x[t] : m;
    }
    return m;
}

T_AVX512 static float expsum_avx512(float *y, const float *x, int n, float m) {
    __m512 mv = _mm512_set1_ps(m), s0 = _mm512_setzero_ps(), s1 = s0;
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        __m512 e0 = exp512(_mm512_sub_ps(_mm512_loadu_ps(x + i), mv));
        __m512 e1 = exp512(_mm512_sub_ps(_mm512_loadu_ps(x + i + 16), mv));
        if (y) {
            _mm512_storeu_ps(y + i, e0);
            _mm512_storeu_ps(y + i + 16, e1);
        }
        s0 = _mm512_add_ps(s0, e0);
        s1 = _mm512_add_ps(s1, e1);
    }
    for (; i < n; i += 16) {
        __mmask16 k = n - i >= 16 ? (__mmask16)0xFFFF : tailmask(n - i);
        __m512 e0 = _mm512_maskz_mov_ps(k, exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + i), mv)));
        if (y) _mm512_mask_storeu_ps(y + i, k, e0);
        s0 = _mm512_add_ps(s0, e0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

T_AVX512 static void swiglu_avx512(float *h, const float *g, const float *u, int n) {
    /* as swiglu_avx2: the sigmoid from exp(-|g|) */
    const __m512 one = _mm512_set1_ps(1.0f);
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 gv = _mm512_loadu_ps(g + i);
        const __m512 e = exp512(_mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(gv), _mm512_set1_epi32(INT32_MIN))));
        const __m512 r = _mm512_div_ps(one, _mm512_add_ps(one, e));
        const __mmask16 neg = _mm512_cmplt_epi32_mask(_mm512_castps_si512(gv), _mm512_setzero_si512());
        const __m512 s = _mm512_mask_mul_ps(r, neg, e, r);
        _mm512_storeu_ps(h + i, _mm512_mul_ps(_mm512_mul_ps(gv, s), _mm512_loadu_ps(u + i)));
    }
    swiglu_generic(h + i, g + i, u + i, n - i);
}

T_AVX512 static void swiglu_backward_avx512(float *dg, float *du, const float *dh, const float *g, const float *u,
                                            int n) {
    const __m512 one = _mm512_set1_ps(1.0f);
    int i = 0;
    for (; i + 16 <= n; i += 16) { /* the sigmoid as in swiglu_avx512 */
        const __m512 gv = _mm512_loadu_ps(g + i), d = _mm512_loadu_ps(dh + i);
        const __m512 e = exp512(_mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(gv), _mm512_set1_epi32(INT32_MIN))));
        const __m512 r = _mm512_div_ps(one, _mm512_add_ps(one, e));
        const __mmask16 neg = _mm512_cmplt_epi32_mask(_mm512_castps_si512(gv), _mm512_setzero_si512());
        const __m512 s = _mm512_mask_mul_ps(r, neg, e, r);
        const __m512 ds = _mm512_mul_ps(_mm512_mul_ps(d, _mm512_loadu_ps(u + i)), s);
        _mm512_storeu_ps(dg + i, _mm512_mul_ps(ds, _mm512_fmadd_ps(gv, _mm512_sub_ps(one, s), one)));
        _mm512_storeu_ps(du + i, _mm512_mul_ps(d, _mm512_mul_ps(gv, s)));
    }
    swiglu_backward_generic(dg + i, du + i, dh + i, g + i, u + i, n - i);
}

/* dots_heads: keys in 16s, as dots_avx512 takes them, but a tile of (up to) 4 heads x 4 keys at
 * a time, so each key vector loaded serves 4 heads and each query vector 4 keys (8 loads per
 * 16 FMAs instead of 17). A (head, key) accumulator sees dots_avx512's FMAs in its order; the
 * 16 accumulators of one head's 16 keys are summed by the same hsum16x16, so the bits are
 * dots_avx512's. The last rows % 16 keys go through dots_avx512 itself. */
#define INLINE_AVX512 T_AVX512 static inline __attribute__((always_inline))
/* one 16-float chunk i of the tile: masked by m (the row's last, partial chunk) or whole */
INLINE_AVX512 void score_chunk(__m512 (*acc)[4], const float *q, size_t qs, const float *kr, size_t ks, int i, __mmask16 m,
                               const int NH) {
    __m512 kv[4];
    for (int u = 0; u < 4; u++) kv[u] = _mm512_maskz_loadu_ps(m, kr + (size_t)u * ks + i);
    for (int h = 0; h < NH; h++) {
        const __m512 qv = _mm512_maskz_loadu_ps(m, q + (size_t)h * qs + i);
        for (int u = 0; u < 4; u++) acc[h][u] = _mm512_fmadd_ps(qv, kv[u], acc[h][u]);
    }
}

INLINE_AVX512 void score_tile(__m512 *sums, const float *q, size_t qs, const float *K, size_t ks, int k0, int d16,
                              __mmask16 m, const int NH) {
    __m512 acc[4][4];
    for (int h = 0; h < NH; h++)
        for (int u = 0; u < 4; u++) acc[h][u] = _mm512_setzero_ps();
    const float *kr = K + (size_t)k0 * ks;
    for (int i = 0; i < d16; i += 16) score_chunk(acc, q, qs, kr, ks, i, (__mmask16)0xFFFF, NH);
    if (m) score_chunk(acc, q, qs, kr, ks, d16, m, NH);
    for (int h = 0; h < NH; h++)
        for (int u = 0; u < 4; u++) sums[h * 16 + k0 + u] = acc[h][u];
}

T_AVX512 static void dots_heads_avx512(float *out, size_t os, const float *q, size_t qs, int nh, const float *K,
                                       size_t ks, int rows, int d, float scale) {
    const int d16 = d & ~15;
    const __mmask16 m = tailmask(d - d16);
    int j = 0;
    for (; j + 16 <= rows; j += 16) {
        const float *Kj = K + (size_t)j * ks;
        for (int h0 = 0; h0 < nh; h0 += 4) {
            __m512 sums[4 * 16]; /* head h's accumulator of key k at h * 16 + k */
            const int n = nh - h0 < 4 ? nh - h0 : 4;
            const float *qh = q + (size_t)h0 * qs;
            for (int k0 = 0; k0 < 16; k0 += 4) switch (n) {
                case 4: score_tile(sums, qh, qs, Kj, ks, k0, d16, m, 4); break;
                case 3: score_tile(sums, qh, qs, Kj, ks, k0, d16, m, 3); break;
                case 2: score_tile(sums, qh, qs, Kj, ks, k0, d16, m, 2); break;
                default: score_tile(sums, qh, qs, Kj, ks, k0, d16, m, 1);
                }
            for (int h = 0; h < n; h++)
                _mm512_storeu_ps(out + (size_t)(h0 + h) * os + j, _mm512_mul_ps(_mm512_set1_ps(scale), hsum16x16(sums + h * 16)));
        }
    }
    if (j < rows)
        for (int h = 0; h < nh; h++) dots_avx512(out + (size_t)h * os + j, q + (size_t)h * qs, K + (size_t)j * ks, ks, rows - j, d, scale);
}

/* axpys_heads: (up to) 4 heads x 64 columns at a time over all rows, each V vector loaded once
 * for 4 heads (8 loads per 16 FMAs instead of 9 per 8). Each accumulator lane sees the FMAs of
 * axpys_avx512 in row order, so the bits are its. Columns past the last 64 go through
 * axpys_avx512. */
INLINE_AVX512 void value_tile(float *acc, size_t as, const float *p, size_t ps, const float *V, size_t vs, int rows, int c0,
                              const int NH) {
    __m512 a[4][4];
    for (int h = 0; h < NH; h++)
        for (int u = 0; u < 4; u++) a[h][u] = _mm512_loadu_ps(acc + (size_t)h * as + c0 + 16 * u);
    for (int j = 0; j < rows; j++) {
        const float *v = V + (size_t)j * vs + c0;
        __m512 vv[4];
        for (int u = 0; u < 4; u++) vv[u] = _mm512_loadu_ps(v + 16 * u);
        for (int h = 0; h < NH; h++) {
            const __m512 pj = _mm512_set1_ps(p[(size_t)h * ps + j]);
            for (int u = 0; u < 4; u++) a[h][u] = _mm512_fmadd_ps(pj, vv[u], a[h][u]);
        }
    }
    for (int h = 0; h < NH; h++)
        for (int u = 0; u < 4; u++) _mm512_storeu_ps(acc + (size_t)h * as + c0 + 16 * u, a[h][u]);
}

T_AVX512 static void axpys_heads_avx512(float *acc, size_t as, const float *p, size_t ps, int nh, const float *V,
                                        size_t vs, int rows, int d) {
    const int d64 = d & ~63;
    for (int h0 = 0; h0 < nh; h0 += 4) {
        float *ah = acc + (size_t)h0 * as;
        const float *ph = p + (size_t)h0 * ps;
        for (int c0 = 0; c0 < d64; c0 += 64) switch (nh - h0 < 4 ? nh - h0 : 4) {
            case 4: value_tile(ah, as, ph, ps, V, vs, rows, c0, 4); break;
            case 3: value_tile(ah, as, ph, ps, V, vs, rows, c0, 3); break;
            case 2: value_tile(ah, as, ph, ps, V, vs, rows, c0, 2); break;
            default: value_tile(ah, as, ph, ps, V, vs, rows, c0, 1);
            }
    }
    if (d64 < d)
        for (int h = 0; h < nh; h++) axpys_avx512(acc + (size_t)h * as + d64, p + (size_t)h * ps, V + d64, vs, rows, d - d64);
}

static const fr_cpu_vec vec_avx512 = {dots_avx512, axpys_avx512,  dots_heads_avx512, axpys_heads_avx512, rank1s_avx512, dot_avx512,
                                      max_avx512,  expsum_avx512, swiglu_avx512, swiglu_backward_avx512};

/* ------------------------------------------------------------------ table of the current isa */

const fr_cpu_vec *fr_cpu_vec_ops(void) {
    switch (fr_cpu_isa()) {
    case FR_ISA_AVX512: return &vec_avx512;
    case FR_ISA_AVX2: return &vec_avx2;
    default: return &vec_generic;
    }
}
