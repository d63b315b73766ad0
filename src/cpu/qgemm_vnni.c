/*
 * qgemm_vnni.c — a prompt's Q8_0 products as a matrix product on AVX-512 VNNI: the "int8"
 * prefill (qmatmul.c, "Prefill paths").
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
 * block by block, as unsigned w + 128 in groups of 4 bytes per row ([k4][row][4 bytes], 64
 * bytes per k4), and the block sum starts from -128 times the activation block's integer sum:
 *   sum_i (w_i + 128) x_i - 128 sum_i x_i = sum_i w_i x_i, exact in int32 (|.| < 2^21).
 * The repacking (a 4-byte transpose of 16 rows) costs about a vpdpbusd per 64 bytes and is
 * paid once per 16 rows for all the activation rows.
 *
 * Arithmetic: y[j][r] = sum over blocks b, in order, of float(isum_b) * (d_r,b * dx_j,b), one
 * FP32 FMA per block: the same integers as the row kernels, the FP32 additions in another
 * order (the row kernels add 8 lanes per block and reduce at the end), so a result differs
 * from theirs in the last bits and depends on nothing but its own row and column.
 */
#include "cpu/qmatmul_internal.h"

#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

#define T_ZMM __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))
#define GROUP 16 /* weight rows side by side: one per int32 lane */
#define MR 8     /* activation rows whose accumulators stay in registers */

/* rows [r, r + n) (n <= 16; missing rows zero) of a Q8_0 matrix into pk [nb][8][16][4] (w + 128)
 * and their scales into dw [nb][16] */
T_ZMM static void repack16(const uint8_t *base, size_t rb, int r, int n, int nb, uint32_t *pk, float *dw) {
    const int words = nb * 8; /* 4-byte words of a row's quants */
    for (int l = 0; l < GROUP; l++) {
        if (l >= n) {
            for (int k = 0; k < words; k++) pk[(size_t)k * GROUP + l] = 0x80808080u; /* w = 0 */
            for (int b = 0; b < nb; b++) dw[(size_t)b * GROUP + l] = 0.f;
            continue;
        }
        const uint8_t *row = base + rb * (size_t)(r + l);
        const uint16_t *d = (const uint16_t *)row;
        const uint8_t *q = row + 2 * (size_t)nb;
        for (int k = 0; k < words; k++) {
            uint32_t v;
            memcpy(&v, q + 4 * (size_t)k, 4);
            pk[(size_t)k * GROUP + l] = v ^ 0x80808080u;
        }
        for (int b = 0; b < nb; b++) dw[(size_t)b * GROUP + l] = _cvtsh_ss(d[b]);
    }
}

/* y[j * ys + r0 .. + n) for activation rows [j0, j0 + NJ), NJ <= MR */
T_ZMM static inline __attribute__((always_inline)) void tile(const uint32_t *pk, const float *dw, int nb,
                                                              const qact *a, const int32_t *sx, int j0, const int NJ,
                                                              float *y, int ys, int r0, __mmask16 keep) {
    __m512 acc[MR];
    for (int j = 0; j < NJ; j++) acc[j] = _mm512_setzero_ps();
    for (int b = 0; b < nb; b++) {
        __m512i w[8];
        for (int k = 0; k < 8; k++) w[k] = _mm512_loadu_si512((const void *)(pk + ((size_t)b * 8 + k) * GROUP));
        const __m512 d = _mm512_loadu_ps(dw + (size_t)b * GROUP);
        for (int j = 0; j < NJ; j++) {
            const int32_t *x = (const int32_t *)(a->q + (size_t)(j0 + j) * a->cols + (size_t)b * FR_QBLOCK);
            __m512i s = _mm512_set1_epi32(-128 * sx[(size_t)(j0 + j) * a->nb + b]);
            for (int k = 0; k < 8; k++) s = _mm512_dpbusd_epi32(s, w[k], _mm512_set1_epi32(x[k]));
            const __m512 scale = _mm512_mul_ps(d, _mm512_set1_ps(a->d[(size_t)(j0 + j) * a->nb + b]));
            acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), scale, acc[j]);
        }
    }
    for (int j = 0; j < NJ; j++) _mm512_mask_storeu_ps(y + (size_t)(j0 + j) * ys + r0, keep, acc[j]);
}

T_ZMM static void rows_group(const uint32_t *pk, const float *dw, int nb, const qact *a, const int32_t *sx, int M,
                             float *y, int ys, int r0, int n) {
    const __mmask16 keep = (__mmask16)((1u << n) - 1);
    int j = 0;
    for (; j + MR <= M; j += MR) tile(pk, dw, nb, a, sx, j, MR, y, ys, r0, keep);
    switch (M - j) {
    case 1: tile(pk, dw, nb, a, sx, j, 1, y, ys, r0, keep); break;
    case 2: tile(pk, dw, nb, a, sx, j, 2, y, ys, r0, keep); break;
    case 3: tile(pk, dw, nb, a, sx, j, 3, y, ys, r0, keep); break;
    case 4: tile(pk, dw, nb, a, sx, j, 4, y, ys, r0, keep); break;
    case 5: tile(pk, dw, nb, a, sx, j, 5, y, ys, r0, keep); break;
    case 6: tile(pk, dw, nb, a, sx, j, 6, y, ys, r0, keep); break;
    case 7: tile(pk, dw, nb, a, sx, j, 7, y, ys, r0, keep); break;
    default: break;
    }
}

int fr_qgemm_q8_0_rows(const qrows *t, const qact *a, const int32_t *sx, int M) {
    const int nb = a->nb;
    uint32_t *pk = aligned_alloc(64, (size_t)nb * 8 * GROUP * sizeof(uint32_t));
    float *dw = aligned_alloc(64, (size_t)nb * GROUP * sizeof(float));
    if (!pk || !dw) {
        free(pk);
        free(dw);
        return -1;
    }
    for (int r = t->r0; r < t->r1; r += GROUP) {
        const int n = t->r1 - r < GROUP ? t->r1 - r : GROUP;
        repack16(t->base, t->rb, r, n, nb, pk, dw);
        rows_group(pk, dw, nb, a, sx, M, t->y, t->ystride, r, n);
    }
    free(pk);
    free(dw);
    return 0;
}

void fr_qgemm_block_sums(const qact *a, int M, int32_t *sx) {
    for (int j = 0; j < M; j++)
        for (int b = 0; b < a->nb; b++) {
            const int8_t *q = a->q + (size_t)j * a->cols + (size_t)b * FR_QBLOCK;
            int32_t s = 0;
            for (int i = 0; i < FR_QBLOCK; i++) s += q[i];
            sx[(size_t)j * a->nb + b] = s;
        }
}
