/*
 * qgemm_vnni.c — a prompt's Q8_0, Q4_1 and K-format (Q4_K, Q5_K, Q6_K) products as matrix
 * products on AVX-512 VNNI: the "int8 prefill" (qmatmul.c).
 *
 * Why: the row kernels (qmatmul_zmm.c) dot one weight row with at most 4 activation rows, and
 * for every pair of 32-value blocks spend a permute, a conversion and an FMA beside the one
 * vpdpbusd that does the block's 64 multiply-adds: about 12 multiply-adds a cycle on a core
 * that can do 64 or more. Here 16 weight rows go side by side, one int32 lane each, so the
 * 8 vpdpbusd of a block (4 bytes of each row per instruction, the activation's 4 bytes
 * broadcast from memory) give each row's whole block sum, and the float work is one
 * conversion and one FMA per block for 16 outputs.
 *
 * Layout: vpdpbusd multiplies unsigned by signed bytes, so the 16 rows' quants are repacked,
 * block by block, as unsigned bytes in groups of 4 per row ([k4][row][4 bytes], 64 bytes per
 * k4): Q4_1's nibbles (0..15) and the K formats' quants (0..31, a block being a sub-block of
 * 32) as they are, Q8_0's quants as w + 128, whose block sum starts
 * from -128 times the activation block's integer sum:
 *   sum_i (w_i + 128) x_i - 128 sum_i x_i = sum_i w_i x_i, exact in int32 (|.| < 2^21).
 * The repacking (a 4-byte transpose of 16 rows) is paid once per 16 rows for all the
 * activation rows. The activations' 4-byte words of block b are found through a table
 * (xoff), which covers Q4_1's quad order as well as the plain one; the minimum term (Q4_1's
 * m_b, Q4_K / Q5_K's -dmin m_j) is one more FMA per block, times the exact block sum of x, as
 * in the row kernels. Q6_K's block is two sub-blocks of 16 with int8 scales: two sums, each
 * started at -32 times its half's activation sum, times its scale in int32, as the row
 * kernels form the same integer.
 *
 * Arithmetic: y[j][r] = sum over blocks b, in order, of float(isum_b) * (d_r,b * dx_j,b), one
 * FP32 FMA per block: the same integers as the row kernels, the FP32 additions in another
 * order (the row kernels add 8 lanes per block and reduce at the end), so a result differs
 * from theirs in the last bits and depends on nothing but its own row and column.
 */
#include "cpu/qmatmul_internal.h"
#include "formats/kquant.h"

#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

#define T_ZMM __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))
#define GROUP 16 /* weight rows side by side: one per int32 lane */
#define MR 8     /* activation rows whose accumulators stay in registers */

/* the 32 unpacked quants q32 of block b, row l, into pk */
static inline void put_block(uint32_t *pk, size_t b, int l, const uint8_t *q32) {
    for (int k = 0; k < 8; k++) memcpy(&pk[(b * 8 + k) * GROUP + l], q32 + 4 * k, 4);
}

/* rows [r, r + n) (n <= 16; missing rows zero) into pk [nb][8][16][4] (unsigned bytes, see
 * the top), their blocks' scales into dw [nb][16] and the minimum terms into mw [nb][16]
 * (Q4_1's m_b; the K formats' -dmin m_j: their values are d sc_j q - dmin m_j) */
T_ZMM static void repack16(const uint8_t *base, size_t rb, fr_qtype type, int r, int n, int nb, uint32_t *pk,
                           float *dw, float *mw, int32_t *sca, int32_t *scb) {
    const int q8 = type == FR_QT_Q8_0;
    for (int l = 0; l < GROUP; l++) {
        if (l >= n) {
            for (int k = 0; k < nb * 8; k++) pk[(size_t)k * GROUP + l] = q8 ? 0x80808080u : 0u; /* w = 0 */
            for (int b = 0; b < nb; b++) {
                dw[(size_t)b * GROUP + l] = mw[(size_t)b * GROUP + l] = 0.f;
                sca[(size_t)b * GROUP + l] = scb[(size_t)b * GROUP + l] = 0;
            }
            continue;
        }
        const uint8_t *row = base + rb * (size_t)(r + l);
        if (type == FR_QT_Q6_K) { /* a block of 32: two sub-blocks of 16, each its int8 scale */
            const size_t bb = fr_kq_block_bytes(FR_KQ_Q6_K);
            uint8_t q[FR_QK_K];
            int8_t sc[16];
            float d;
            for (int sb = 0; sb < nb / 8; sb++) {
                fr_kq_unpack_q6k(row + bb * (size_t)sb, q, sc, &d);
                for (int j = 0; j < 8; j++) {
                    const size_t b = (size_t)sb * 8 + j;
                    dw[b * GROUP + l] = d;
                    sca[b * GROUP + l] = sc[2 * j];
                    scb[b * GROUP + l] = sc[2 * j + 1];
                    put_block(pk, b, l, q + 32 * j);
                }
            }
            continue;
        }
        if (type == FR_QT_Q4_K || type == FR_QT_Q5_K) { /* super-blocks of 8 sub-blocks of 32 */
            const fr_kq_type kt = type == FR_QT_Q4_K ? FR_KQ_Q4_K : FR_KQ_Q5_K;
            const size_t bb = fr_kq_block_bytes(kt);
            uint8_t q[FR_QK_K];
            float sc[8], mn[8];
            for (int sb = 0; sb < nb / 8; sb++) {
                fr_kq_unpack_q45(kt, row + bb * (size_t)sb, q, sc, mn);
                for (int j = 0; j < 8; j++) {
                    const size_t b = (size_t)sb * 8 + j;
                    dw[b * GROUP + l] = sc[j];
                    mw[b * GROUP + l] = -mn[j];
                    put_block(pk, b, l, q + 32 * j);
                }
            }
            continue;
        }
        const uint16_t *d = (const uint16_t *)row;
        for (int b = 0; b < nb; b++) dw[(size_t)b * GROUP + l] = _cvtsh_ss(d[b]);
        if (q8) {
            const uint8_t *q = row + 2 * (size_t)nb;
            for (int k = 0; k < nb * 8; k++) {
                uint32_t v;
                memcpy(&v, q + 4 * (size_t)k, 4);
                pk[(size_t)k * GROUP + l] = v ^ 0x80808080u;
            }
            continue;
        }
        for (int b = 0; b < nb; b++) mw[(size_t)b * GROUP + l] = _cvtsh_ss(d[nb + b]);
        const uint8_t *q = row + 4 * (size_t)nb; /* byte k of block b: value k low, value k + 16 high */
        for (int b = 0; b < nb; b++)
            for (int k = 0; k < 4; k++) {
                uint32_t v;
                memcpy(&v, q + 16 * (size_t)b + 4 * (size_t)k, 4);
                pk[((size_t)b * 8 + k) * GROUP + l] = v & 0x0f0f0f0fu;
                pk[((size_t)b * 8 + k + 4) * GROUP + l] = (v >> 4) & 0x0f0f0f0fu;
            }
    }
}

typedef struct {
    const uint32_t *pk;
    const float *dw, *mw;
    const int32_t *sca, *scb; /* Q6_K: the scales of each block's two sub-blocks */
    int nb;
} group16;

enum { KIND_MIN, KIND_Q8, KIND_Q6 }; /* a minimum term (Q4_1, Q4_K, Q5_K); Q8_0; Q6_K */

/* y[j * ys + r0 .. + 16) (lanes in keep) for activation rows [j0, j0 + NJ), NJ <= MR */
/* sx: Q8_0, the activation blocks' integer sums [M][nb]; Q6_K, their halves' [M][nb][2] */
T_ZMM static inline __attribute__((always_inline)) void tile(const group16 *g, const qact *a, const int32_t *sx,
                                                              const int32_t *xoff, int j0, const int NJ, const int KIND,
                                                              float *y, int ys, int r0, __mmask16 keep) {
    __m512 acc[MR];
    for (int j = 0; j < NJ; j++) acc[j] = _mm512_setzero_ps();
    for (int b = 0; b < g->nb; b++) {
        __m512i w[8];
        for (int k = 0; k < 8; k++) w[k] = _mm512_loadu_si512((const void *)(g->pk + ((size_t)b * 8 + k) * GROUP));
        const __m512 d = _mm512_loadu_ps(g->dw + (size_t)b * GROUP);
        const __m512 m = KIND == KIND_MIN ? _mm512_loadu_ps(g->mw + (size_t)b * GROUP) : d;
        const __m512i sa = KIND == KIND_Q6 ? _mm512_loadu_si512((const void *)(g->sca + (size_t)b * GROUP)) : _mm512_setzero_si512();
        const __m512i sb = KIND == KIND_Q6 ? _mm512_loadu_si512((const void *)(g->scb + (size_t)b * GROUP)) : _mm512_setzero_si512();
        const int32_t *off = xoff + (size_t)b * 8;
        for (int j = 0; j < NJ; j++) {
            const size_t jb = (size_t)(j0 + j) * a->nb + b;
            const int8_t *x = a->q + (size_t)(j0 + j) * a->cols;
            int32_t xw[8];
            for (int k = 0; k < 8; k++) memcpy(&xw[k], x + off[k], 4);
            __m512i s;
            if (KIND == KIND_Q6) { /* sc_a (sum q x - 32 sum x) over values 0..15, plus sc_b (...) over 16..31 */
                __m512i s1 = _mm512_set1_epi32(-32 * sx[2 * jb]), s2 = _mm512_set1_epi32(-32 * sx[2 * jb + 1]);
                for (int k = 0; k < 4; k++) s1 = _mm512_dpbusd_epi32(s1, w[k], _mm512_set1_epi32(xw[k]));
                for (int k = 4; k < 8; k++) s2 = _mm512_dpbusd_epi32(s2, w[k], _mm512_set1_epi32(xw[k]));
                s = _mm512_add_epi32(_mm512_mullo_epi32(s1, sa), _mm512_mullo_epi32(s2, sb));
            } else {
                s = KIND == KIND_Q8 ? _mm512_set1_epi32(-128 * sx[jb]) : _mm512_setzero_si512();
                for (int k = 0; k < 8; k++) s = _mm512_dpbusd_epi32(s, w[k], _mm512_set1_epi32(xw[k]));
            }
            acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(d, _mm512_set1_ps(a->d[jb])), acc[j]);
            if (KIND == KIND_MIN) acc[j] = _mm512_fmadd_ps(m, _mm512_set1_ps(a->s[jb]), acc[j]);
        }
    }
    for (int j = 0; j < NJ; j++) _mm512_mask_storeu_ps(y + (size_t)(j0 + j) * ys + r0, keep, acc[j]);
}

#define TILES(KIND)                                                                                            \
    for (; j + MR <= M; j += MR) tile(g, a, sx, xoff, j, MR, KIND, y, ys, r0, keep);                            \
    switch (M - j) {                                                                                           \
    case 1: tile(g, a, sx, xoff, j, 1, KIND, y, ys, r0, keep); break;                                          \
    case 2: tile(g, a, sx, xoff, j, 2, KIND, y, ys, r0, keep); break;                                          \
    case 3: tile(g, a, sx, xoff, j, 3, KIND, y, ys, r0, keep); break;                                          \
    case 4: tile(g, a, sx, xoff, j, 4, KIND, y, ys, r0, keep); break;                                          \
    case 5: tile(g, a, sx, xoff, j, 5, KIND, y, ys, r0, keep); break;                                          \
    case 6: tile(g, a, sx, xoff, j, 6, KIND, y, ys, r0, keep); break;                                          \
    case 7: tile(g, a, sx, xoff, j, 7, KIND, y, ys, r0, keep); break;                                          \
    default: break;                                                                                            \
    }

T_ZMM static void rows_group(const group16 *g, const qact *a, const int32_t *sx, const int32_t *xoff, int kind, int M,
                             float *y, int ys, int r0, int n) {
    const __mmask16 keep = (__mmask16)((1u << n) - 1);
    int j = 0;
    if (kind == KIND_Q8) {
        TILES(KIND_Q8)
    } else if (kind == KIND_Q6) {
        TILES(KIND_Q6)
    } else {
        TILES(KIND_MIN)
    }
}

int fr_qgemm_rows(const qrows *t, const qact *a, fr_qtype type, const int32_t *sx, const int32_t *xoff, int M) {
    const int kind = type == FR_QT_Q8_0 ? KIND_Q8 : type == FR_QT_Q6_K ? KIND_Q6 : KIND_MIN;
    const int nb = a->nb;
    const size_t per = (size_t)nb * GROUP; /* one value per block and row */
    uint32_t *pk = aligned_alloc(64, per * 8 * sizeof(uint32_t));
    float *dw = aligned_alloc(64, per * 4 * sizeof(float)); /* scales, minima, then Q6_K's two int32 scale rows */
    if (!pk || !dw) {
        free(pk);
        free(dw);
        return -1;
    }
    int32_t *sca = (int32_t *)(dw + 2 * per), *scb = (int32_t *)(dw + 3 * per);
    const group16 g = {pk, dw, dw + per, sca, scb, nb};
    for (int r = t->r0; r < t->r1; r += GROUP) {
        const int n = t->r1 - r < GROUP ? t->r1 - r : GROUP;
        repack16(t->base, t->rb, type, r, n, nb, pk, dw, dw + per, sca, scb);
        rows_group(&g, a, sx, xoff, kind, M, t->y, t->ystride, r, n);
    }
    free(pk);
    free(dw);
    return 0;
}

void fr_qgemm_block_sums(const qact *a, int M, int halves, int32_t *sx) {
    const int parts = halves ? 2 : 1, len = FR_QBLOCK / parts;
    for (int j = 0; j < M; j++)
        for (int b = 0; b < a->nb * parts; b++) {
            const int8_t *q = a->q + (size_t)j * a->cols + (size_t)b * len;
            int32_t s = 0;
            for (int i = 0; i < len; i++) s += q[i];
            sx[(size_t)j * a->nb * parts + b] = s;
        }
}
