/*
 * qmatmul_zmm.c — the int8-activation row kernels of Q8_0 and Q4_1 weights on 512-bit
 * vectors (AVX-512 VNNI), for decode, where a product streams its weights once and the kernel
 * must keep up with memory.
 *
 * Why a kernel of its own: the 256-bit kernels of qmatmul.c fold every 32-weight block to 4
 * lanes, convert it and scale it on its own, so they spend about ten vector operations per
 * block and run at 1.5x DRAM speed with their weights in cache: computing and streaming at
 * nearly equal rates cannot overlap. Here a vector holds 2 (Q8_0) or 4 (Q4_1) blocks, and
 * their int32 lanes are converted and multiplied by a vector of per-lane scales at once, the
 * lanes of each block taking its own scale from one permute of the group's 16 scale products.
 *
 * Arithmetic, identical to qmatmul.c's "int8 activations": block b's integer dot product is
 * exact, its scale product d_b · dx_b is one FP32 multiply, and only the FP32 accumulation
 * order over blocks differs (lanes of two accumulators, then one reduction per row). A row's
 * result depends on nothing but its own inputs, whatever the number of activation rows (NX)
 * beside it.
 *
 * Q8_0 (plain activation blocks): vpdpbusd multiplies unsigned by signed bytes, so the
 * weights go in as |w| and their signs move onto the activations (a masked subtraction from
 * zero where w < 0). A stored -128 stays 0x80, the unsigned 128: 128 · 127 · 4 fits an int32
 * lane with room to spare.
 * Q4_1 (activations in quad order, qmatmul.c's qx_index group 4): 64 bytes of nibbles are
 * blocks 4p..4p+3; their low nibbles meet the quad's first 64 activation bytes, the high
 * nibbles the next 64. A row's last nb % 4 blocks go as a pair (256-bit) and a single block.
 * Its minimum term m_b · xs_b is one FMA per 16 blocks.
 */
#include "cpu/qmatmul_internal.h"

#include <immintrin.h>

#define T_ZMM __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))
#define INLINE static inline __attribute__((always_inline))

int fr_qzmm_supported(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("f16c");
}

/* The scale products of blocks b0 .. b0 + n - 1 (n <= 16, lanes beyond n zero): sc[j] lane k =
 * d[b0 + k] · dx[j][b0 + k] */
T_ZMM INLINE void group_scales(const uint16_t *d, const float *const *dx, int b0, int n, const int NX, __m512 *sc) {
    if (n == 16) {
        const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(d + b0)));
        for (int j = 0; j < NX; j++) sc[j] = _mm512_mul_ps(dw, _mm512_loadu_ps(dx[j] + b0));
        return;
    }
    const __mmask16 m = (__mmask16)((1u << n) - 1);
    const __m512 dw = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, d + b0));
    for (int j = 0; j < NX; j++) sc[j] = _mm512_mul_ps(dw, _mm512_maskz_loadu_ps(m, dx[j] + b0));
}

/* No software prefetch: these kernels stream on the hardware prefetchers alone. Measured on
 * AMD Zen 4 (2 vCPUs), 512 x 1024 products streamed from memory: a prefetch into L1 4 KiB
 * ahead cost Q8_0 15-20 %; for Q4_1 a non-temporal prefetch 1-8 KiB ahead cost 15-25 % (one
 * thread 18.5 -> 23.6 GB/s without it, two 31 -> 38.8), T1 / T2 hints more, and the 680M
 * model's Q4_1 decode went 7-10 % faster without it (bench_infer, both of the VM's states).
 * (The 256-bit kernels of qmatmul.c still gain from theirs on the same machine.) */

/* acc += the int32 lanes of dot, each times its block's scale: lanes [g*L, (g+1)*L) belong to
 * block `first + g` of the group (L = 8 for Q8_0's pairs, 4 for Q4_1's quads) */
T_ZMM INLINE __m512 scale_lanes(__m512 acc, __m512i dot, __m512 sc, __m512i lane_block, int first) {
    const __m512 s = _mm512_permutexvar_ps(_mm512_add_epi32(lane_block, _mm512_set1_epi32(first)), sc);
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), s, acc);
}

/* The sum of a vector's lanes by halves (256, 128, 64, then 32 bits), the order of GCC's
 * _mm512_reduce_add_ps, written out so that reduce4 below matches it on every compiler. */
T_ZMM INLINE float reduce1(__m512 v) {
    const __m256 t = _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    const __m128 u = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
    const __m128 w = _mm_add_ps(u, _mm_permute_ps(u, 0x4e));
    return _mm_cvtss_f32(_mm_add_ps(w, _mm_permute_ps(w, 0xb1)));
}

/* The lane sums of four vectors, reduce1's additions on all four at once: lane 4r holds v_r's */
T_ZMM INLINE __m512 reduce4(__m512 v0, __m512 v1, __m512 v2, __m512 v3) {
    const __m512 s01 = _mm512_add_ps(_mm512_shuffle_f32x4(v0, v1, 0x44), _mm512_shuffle_f32x4(v0, v1, 0xee));
    const __m512 s23 = _mm512_add_ps(_mm512_shuffle_f32x4(v2, v3, 0x44), _mm512_shuffle_f32x4(v2, v3, 0xee));
    const __m512 u = _mm512_add_ps(_mm512_shuffle_f32x4(s01, s23, 0x88), _mm512_shuffle_f32x4(s01, s23, 0xdd));
    const __m512 w = _mm512_add_ps(u, _mm512_permute_ps(u, 0x4e));
    return _mm512_add_ps(w, _mm512_permute_ps(w, 0xb1));
}

/* out[r] = the lane sum of v_r, r < 4 */
T_ZMM INLINE void store_sums4(float *out, __m512 v0, __m512 v1, __m512 v2, __m512 v3) {
    float sums[16];
    _mm512_storeu_ps(sums, reduce4(v0, v1, v2, v3));
    for (int r = 0; r < 4; r++) out[r] = sums[4 * r];
}

/* ------------------------------------------------------------------ Q8_0 */

/* blocks b, b + 1 of a row (64 bytes; `lone`: block b alone, the row's last, 32 bytes), group-relative index k */
T_ZMM INLINE void q8_0_pair(const int8_t *q, const int8_t *const *qx, int b, int k, const int NX, const __m512 *sc,
                            __m512 *acc, const int lone) {
    const size_t off = (size_t)b * FR_QBLOCK;
    const __m512i lane_block = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    const __mmask64 bytes = lone ? (__mmask64)0xffffffffu : ~(__mmask64)0;
    const __m512i w = lone ? _mm512_maskz_loadu_epi8(bytes, q + off) : _mm512_loadu_si512(q + off);
    const __m512i aw = _mm512_abs_epi8(w);
    const __mmask64 neg = _mm512_movepi8_mask(w);
    for (int j = 0; j < NX; j++) {
        const __m512i x = lone ? _mm512_maskz_loadu_epi8(bytes, qx[j] + off) : _mm512_loadu_si512(qx[j] + off);
        const __m512i sx = _mm512_mask_sub_epi8(x, neg, _mm512_setzero_si512(), x);
        acc[j] = scale_lanes(acc[j], _mm512_dpbusd_epi32(_mm512_setzero_si512(), aw, sx), sc[j], lane_block, k);
    }
}

/* blocks b0 .. b0 + n - 1 (n <= 16). `full`: n is a compile-time constant and the pairs are
 * unrolled, alternating between the two accumulators; else (a row's last blocks) they all go
 * to the first: an accumulator index known only at run time would put every accumulator of
 * the row on the stack. */
T_ZMM INLINE void q8_0_group(const uint16_t *d, const int8_t *q, const int8_t *const *qx, const float *const *dx, int b0,
                             const int n, const int full, const int NX, __m512 (*acc)[QX_MAX]) {
    __m512 sc[QX_MAX];
    group_scales(d, dx, b0, n, NX, sc);
    _Pragma("GCC unroll 8") for (int k = 0; k + 1 < n; k += 2)
        q8_0_pair(q, qx, b0 + k, k, NX, sc, acc[full ? (k >> 1) & 1 : 0], 0);
    if (n & 1) q8_0_pair(q, qx, b0 + n - 1, n - 1, NX, sc, acc[0], 1);
}

T_ZMM INLINE void q8_0_row(const uint8_t *row, const qact *a, int j0, const int NX, float *out, const uint8_t *pf_end) {
    (void)pf_end; /* QROWS_LOOP's row signature; these kernels do not prefetch */
    const int nb = a->nb;
    const uint16_t *d = (const uint16_t *)row;
    const int8_t *q = (const int8_t *)(row + 2 * (size_t)nb);
    const int8_t *qx[QX_MAX];
    const float *dx[QX_MAX];
    __m512 acc[2][QX_MAX];
    for (int j = 0; j < NX; j++) {
        qx[j] = a->q + (size_t)(j0 + j) * a->cols;
        dx[j] = a->d + (size_t)(j0 + j) * nb;
        acc[0][j] = acc[1][j] = _mm512_setzero_ps();
    }
    int b0 = 0;
    for (; b0 + 16 <= nb; b0 += 16) q8_0_group(d, q, qx, dx, b0, 16, 1, NX, acc);
    if (b0 + 8 <= nb) { /* 256-wide rows (an expert's down projection, W_UV) take this path whole */
        q8_0_group(d, q, qx, dx, b0, 8, 1, NX, acc);
        b0 += 8;
    }
    if (b0 < nb) q8_0_group(d, q, qx, dx, b0, nb - b0, 0, NX, acc);
    for (int j = 0; j < NX; j++) out[j] = reduce1(_mm512_add_ps(acc[0][j], acc[1][j]));
}

/* Four short weight rows against one activation row (decode). A row costs a fixed amount
 * beside its pairs (clearing, a horizontal sum, its group scales), and rows of 256 or 64
 * weights (an expert's down projection, W_UV, W_UK) are only 4 or 1 pairs, so that cost was as
 * large as the row's work. Four of them side by side share the activation loads and one
 * reduce4. Each row's accumulators see the operations of q8_0_row in the same order, and
 * reduce4 adds as reduce1 does, so a row's result has the same bits in a four or alone.
 * (Long rows stay one at a time: four 1 KiB rows side by side are four streams that jump by
 * four rows, which the prefetchers follow badly; four short rows are one run of memory.) */
#define Q8_0_ROWS4_MAX_NB 8
T_ZMM INLINE void q8_0_pair4(const int8_t *const *q, const int8_t *qx, int b, int k, const __m512 *sc, __m512 *acc,
                             const int lone) {
    const size_t off = (size_t)b * FR_QBLOCK;
    const __m512i lane_block = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    const __mmask64 bytes = lone ? (__mmask64)0xffffffffu : ~(__mmask64)0;
    const __m512i x = lone ? _mm512_maskz_loadu_epi8(bytes, qx + off) : _mm512_loadu_si512(qx + off);
    for (int r = 0; r < 4; r++) {
        const __m512i w = lone ? _mm512_maskz_loadu_epi8(bytes, q[r] + off) : _mm512_loadu_si512(q[r] + off);
        const __m512i sx = _mm512_mask_sub_epi8(x, _mm512_movepi8_mask(w), _mm512_setzero_si512(), x);
        acc[r] = scale_lanes(acc[r], _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_abs_epi8(w), sx), sc[r], lane_block, k);
    }
}

T_ZMM INLINE void q8_0_rows4(const uint8_t *row, size_t rb, const qact *a, int j0, float *out) {
    const int nb = a->nb;
    const int8_t *q[4];
    const int8_t *qx = a->q + (size_t)j0 * a->cols;
    const float *dx = a->d + (size_t)j0 * nb;
    __m512 acc[2][4], sc[4];
    for (int r = 0; r < 4; r++) {
        q[r] = (const int8_t *)(row + rb * r + 2 * (size_t)nb);
        acc[0][r] = acc[1][r] = _mm512_setzero_ps();
    }
    /* as q8_0_row: a group of 8 (full, alternating accumulators), or the row's last n < 8 */
    const int full = nb == 8;
    for (int r = 0; r < 4; r++) group_scales((const uint16_t *)(row + rb * r), &dx, 0, nb, 1, &sc[r]);
    if (full) {
        _Pragma("GCC unroll 4") for (int k = 0; k < 8; k += 2) q8_0_pair4(q, qx, k, k, sc, acc[(k >> 1) & 1], 0);
    } else {
        for (int k = 0; k + 1 < nb; k += 2) q8_0_pair4(q, qx, k, k, sc, acc[0], 0);
        if (nb & 1) q8_0_pair4(q, qx, nb - 1, nb - 1, sc, acc[0], 1);
    }
    store_sums4(out, _mm512_add_ps(acc[0][0], acc[1][0]), _mm512_add_ps(acc[0][1], acc[1][1]),
                _mm512_add_ps(acc[0][2], acc[1][2]), _mm512_add_ps(acc[0][3], acc[1][3]));
}

/* ------------------------------------------------------------------ Q4_1 */

/* blocks b .. b + 3 (64 bytes of nibbles, activations in quad order), group-relative index k */
T_ZMM INLINE void q4_1_quad(const uint8_t *q, const int8_t *const *qx, int b, int k, const int NX, const __m512 *sc,
                            __m512 *acc) {
    const __m512i lane_block = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    const __m512i low = _mm512_set1_epi8(15);
    const __m512i v = _mm512_loadu_si512(q + (size_t)b * 16);
    const __m512i lo = _mm512_and_si512(v, low), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
    const size_t off = (size_t)b * FR_QBLOCK;
    for (int j = 0; j < NX; j++) {
        const __m512i xl = _mm512_loadu_si512(qx[j] + off), xh = _mm512_loadu_si512(qx[j] + off + 64);
        const __m512i dot = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, xl), hi, xh);
        acc[j] = scale_lanes(acc[j], dot, sc[j], lane_block, k);
    }
}

/* the last nb % 4 blocks of a row: a pair in pair order (lanes 0-3, 4-7), then a lone block
 * in plain order (lanes 0-7); 256-bit products, widened */
T_ZMM INLINE void q4_1_tail(const uint8_t *q, const int8_t *const *qx, int b, int k, int n, const int NX,
                            const __m512 *sc, __m512 *acc) {
    const __m256i low = _mm256_set1_epi8(15);
    if (n >= 2) {
        const __m512i lane_block = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
        const __m256i v = _mm256_loadu_si256((const __m256i *)(q + (size_t)b * 16));
        const __m256i lo = _mm256_and_si256(v, low), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
        const size_t off = (size_t)b * FR_QBLOCK;
        for (int j = 0; j < NX; j++) {
            const __m256i xl = _mm256_loadu_si256((const __m256i *)(qx[j] + off));
            const __m256i xh = _mm256_loadu_si256((const __m256i *)(qx[j] + off + 32));
            const __m256i dot = _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(_mm256_setzero_si256(), lo, xl), hi, xh);
            acc[j] = scale_lanes(acc[j], _mm512_zextsi256_si512(dot), sc[j], lane_block, k);
        }
        b += 2, k += 2, n -= 2;
    }
    if (n == 1) {
        const __m128i v = _mm_loadu_si128((const __m128i *)(q + (size_t)b * 16));
        const __m256i w = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(v, 4), v), low);
        const size_t off = (size_t)b * FR_QBLOCK;
        for (int j = 0; j < NX; j++) {
            const __m256i dot = _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, _mm256_loadu_si256((const __m256i *)(qx[j] + off)));
            acc[j] = scale_lanes(acc[j], _mm512_zextsi256_si512(dot), sc[j], _mm512_setzero_si512(), k);
        }
    }
}

T_ZMM INLINE void q4_1_group(const uint16_t *d, const uint16_t *mn, const uint8_t *q, const int8_t *const *qx,
                             const float *const *dx, const float *const *xs, int b0, const int n, const int full,
                             const int NX, __m512 (*acc)[QX_MAX], __m512 *accm) {
    __m512 sc[QX_MAX], mw;
    group_scales(d, dx, b0, n, NX, sc);
    if (n == 16) {
        mw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(mn + b0)));
        for (int j = 0; j < NX; j++) accm[j] = _mm512_fmadd_ps(mw, _mm512_loadu_ps(xs[j] + b0), accm[j]);
    } else {
        const __mmask16 m = (__mmask16)((1u << n) - 1);
        mw = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, mn + b0));
        for (int j = 0; j < NX; j++) accm[j] = _mm512_fmadd_ps(mw, _mm512_maskz_loadu_ps(m, xs[j] + b0), accm[j]);
    }
    _Pragma("GCC unroll 4") for (int k = 0; k + 3 < n; k += 4)
        q4_1_quad(q, qx, b0 + k, k, NX, sc, acc[full ? (k >> 2) & 1 : 0]); /* as in q8_0_group */
    if (n & 3) q4_1_tail(q, qx, b0 + (n & ~3), n & ~3, n & 3, NX, sc, acc[0]);
}

T_ZMM INLINE void q4_1_row(const uint8_t *row, const qact *a, int j0, const int NX, float *out, const uint8_t *pf_end) {
    (void)pf_end; /* QROWS_LOOP's row signature; these kernels do not prefetch */
    const int nb = a->nb;
    const uint16_t *d = (const uint16_t *)row, *mn = d + nb;
    const uint8_t *q = row + 4 * (size_t)nb;
    const int8_t *qx[QX_MAX];
    const float *dx[QX_MAX], *xs[QX_MAX];
    __m512 acc[2][QX_MAX], accm[QX_MAX];
    for (int j = 0; j < NX; j++) {
        qx[j] = a->q + (size_t)(j0 + j) * a->cols;
        dx[j] = a->d + (size_t)(j0 + j) * nb;
        xs[j] = a->s + (size_t)(j0 + j) * nb;
        acc[0][j] = acc[1][j] = accm[j] = _mm512_setzero_ps();
    }
    int b0 = 0;
    for (; b0 + 16 <= nb; b0 += 16) q4_1_group(d, mn, q, qx, dx, xs, b0, 16, 1, NX, acc, accm);
    if (b0 + 8 <= nb) {
        q4_1_group(d, mn, q, qx, dx, xs, b0, 8, 1, NX, acc, accm);
        b0 += 8;
    }
    if (b0 < nb) q4_1_group(d, mn, q, qx, dx, xs, b0, nb - b0, 0, NX, acc, accm);
    for (int j = 0; j < NX; j++) out[j] = reduce1(_mm512_add_ps(_mm512_add_ps(acc[0][j], acc[1][j]), accm[j]));
}

T_ZMM void fr_qzmm_dot8_q8_0(const qrows *t, const qact *a, int j0, int nx) {
    if (nx > 1 || a->nb > Q8_0_ROWS4_MAX_NB) {
        QROWS_BY_NX(q8_0_row)
        return;
    }
    float *y = t->y + (size_t)j0 * t->ystride;
    int r = t->r0;
    for (; r + 4 <= t->r1; r += 4) q8_0_rows4(t->base + t->rb * (size_t)r, t->rb, a, j0, &y[r]);
    for (; r < t->r1; r++) q8_0_row(t->base + t->rb * (size_t)r, a, j0, 1, &y[r], t->pf_end);
}

/* Four rows of 8 blocks (256 weights: an expert's down projection, W_UV) against one activation
 * row, side by side, as q8_0_rows4: the activation loads shared, one reduce4; each row's
 * accumulators see q4_1_row's operations in its order (its group of 8: the masked scales and
 * minimum term, quads 0 and 4 into the two accumulators), so its result has the same bits. */
T_ZMM INLINE void q4_1_rows4_nb8(const uint8_t *row, size_t rb, const qact *a, int j0, float *out) {
    const int nb = 8;
    const __mmask16 m = 0xff;
    const __m512i lane_block = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    const __m512i low = _mm512_set1_epi8(15);
    const int8_t *qx = a->q + (size_t)j0 * a->cols;
    const __m512 dx = _mm512_maskz_loadu_ps(m, a->d + (size_t)j0 * nb), xs = _mm512_maskz_loadu_ps(m, a->s + (size_t)j0 * nb);
    const uint8_t *q[4];
    __m512 acc[2][4], accm[4], sc[4];
    for (int r = 0; r < 4; r++) {
        const uint16_t *d = (const uint16_t *)(row + rb * r), *mn = d + nb;
        q[r] = row + rb * r + 4 * (size_t)nb;
        sc[r] = _mm512_mul_ps(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, d)), dx);
        accm[r] = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, mn)), xs, _mm512_setzero_ps());
        acc[0][r] = acc[1][r] = _mm512_setzero_ps();
    }
    for (int k = 0; k < 8; k += 4) {
        const __m512i xl = _mm512_loadu_si512(qx + (size_t)k * FR_QBLOCK), xh = _mm512_loadu_si512(qx + (size_t)k * FR_QBLOCK + 64);
        for (int r = 0; r < 4; r++) {
            const __m512i v = _mm512_loadu_si512(q[r] + (size_t)k * 16);
            const __m512i lo = _mm512_and_si512(v, low), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
            const __m512i dot = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, xl), hi, xh);
            acc[k >> 2][r] = scale_lanes(acc[k >> 2][r], dot, sc[r], lane_block, k);
        }
    }
    __m512 v[4];
    for (int r = 0; r < 4; r++) v[r] = _mm512_add_ps(_mm512_add_ps(acc[0][r], acc[1][r]), accm[r]);
    store_sums4(out, v[0], v[1], v[2], v[3]);
}

/* Decode (one activation row) reads each weight once, and one thread reading one sequential
 * stream does not get all the memory bandwidth it could: the hardware prefetchers keep only so
 * many lines in flight per stream, and a kernel that spends many instructions per byte (Q4_1)
 * leaves them further behind. Q4_1's decode therefore takes a thread's rows from up to three
 * streams at once, row (or group of four short rows) k of each in turn: the ranges [0, h),
 * [h, 2h), [2h, 3h) of its n units, then the last n - 3h in order. Each row's result is its
 * own kernel call's, so the order changes no bits. Measured on Zen 4 (2 vCPUs), 680M model,
 * per-token A/B within one `frugal generate` (identical arms differ by up to 2 %): Q4_1 decode
 * 3-8 % faster when the two vCPUs sit on two CCDs (each with its own link to memory), 1-2 %
 * on one CCD (the shared link is the limit). Q8_0 gained nothing in decode (-2 .. +5 % on two
 * CCDs) and lost 3-6 % on one CCD, so it reads one stream; in a long product alone (4096 x
 * 1024, huge pages) three streams had taken one thread from 28.0 to 34.4 GB/s (two streams
 * 31.8, four 31.9, eight 18.7). A stream shorter than STREAM_MIN_BYTES restarts the
 * prefetchers too often (16 KiB tiles cost 15 %), so short ranges take fewer streams. */
#define STREAMS 3
#define STREAM_MIN_BYTES (32 << 10)

/* the unit processed k-th (k < n) of n, in the streamed order */
static inline int streamed_unit(int k, int n, int streams) {
    const int h = n / streams;
    return k < streams * h ? (k % streams) * h + k / streams : k;
}

static inline int stream_count(int n, size_t unit_bytes) {
    int streams = STREAMS;
    while (streams > 1 && (size_t)(n / streams) * unit_bytes < STREAM_MIN_BYTES) streams--;
    return streams;
}

T_ZMM void fr_qzmm_dot8_q4_1(const qrows *t, const qact *a, int j0, int nx) {
    if (nx > 1) {
        QROWS_BY_NX(q4_1_row)
        return;
    }
    float *y = t->y + (size_t)j0 * t->ystride;
    if (a->nb != 8) { /* in streams (above) */
        const int n = t->r1 - t->r0, streams = stream_count(n, t->rb);
        for (int k = 0; k < n; k++) {
            const int r = t->r0 + streamed_unit(k, n, streams);
            q4_1_row(t->base + t->rb * (size_t)r, a, j0, 1, &y[r], t->pf_end);
        }
        return;
    }
    const int fours = (t->r1 - t->r0) / 4, streams = stream_count(fours, 4 * t->rb);
    for (int k = 0; k < fours; k++) {
        const int r = t->r0 + 4 * streamed_unit(k, fours, streams);
        q4_1_rows4_nb8(t->base + t->rb * (size_t)r, t->rb, a, j0, &y[r]);
    }
    for (int r = t->r0 + 4 * fours; r < t->r1; r++) q4_1_row(t->base + t->rb * (size_t)r, a, j0, 1, &y[r], t->pf_end);
}
