/*
 * qmatmul_internal.h — what the int8-activation row kernels share: the quantized activations
 * (qact), a range of weight rows (qrows), the kernel signature and its row loop. The kernels
 * live in qmatmul.c (portable, AVX2, AVX-512 VNNI on 256-bit vectors) and qmatmul_zmm.c
 * (AVX-512 VNNI on 512-bit vectors); the arithmetic they all follow is in qmatmul.c
 * ("int8 activations").
 */
#ifndef FR_CPU_QMATMUL_INTERNAL_H
#define FR_CPU_QMATMUL_INTERNAL_H

#include "formats/qmatrix.h"

#include <stddef.h>
#include <stdint.h>

#define QX_MAX 4
#ifndef QPF_BYTES
#define QPF_BYTES 4096
#endif

typedef struct {
    int cols, nb;
    int8_t *q;  /* [M, cols] */
    float *d;   /* [M, nb] dx_b */
    float *s;   /* [M, nb] xs_b */
} qact;

/* Weight rows [r0, r1) of one tile (rows of rb bytes from base); results go to
 * y[(j0 + k) * ystride + r]. The kernels prefetch QPF_BYTES ahead of the weights they read,
 * but not past pf_end, the tile's end (beyond it lie another thread's rows, or nothing: with
 * tiles of a few dozen short rows, overshooting wastes a noticeable share of the bandwidth). */
typedef struct {
    const uint8_t *base, *pf_end;
    size_t rb;
    int r0, r1, ystride;
    float *y;
} qrows;

/* y[j0 + k][r] = dot(row r, activation row j0 + k) for r in [r0, r1), k < nx (1 <= nx <= QX_MAX).
 * The row loop is inside the kernel so that short rows (a 64-wide head: 2 blocks) do not
 * pay an indirect call and the pointer setup per row. */
typedef void (*qdot8_fn)(const qrows *t, const qact *a, int j0, int nx);

/* the row loop around a one-row kernel ROW1(row, a, j0, nx, out, pf_end) */
#define QROWS_LOOP(ROW1, NXC)                                                                              \
    for (int r = t->r0; r < t->r1; r++) {                                                                  \
        float out[QX_MAX];                                                                                 \
        ROW1(t->base + t->rb * (size_t)r, a, j0, NXC, out, t->pf_end);                                     \
        for (int k = 0; k < NXC; k++) t->y[(size_t)(j0 + k) * t->ystride + r] = out[k];                    \
    }

/* QROWS_LOOP with the row count NX a compile-time constant in each branch (the SIMD row
 * kernels unroll their per-row accumulators on it) */
#define QROWS_BY_NX(ROW1)                                                                                  \
    switch (nx) {                                                                                          \
    case 1: QROWS_LOOP(ROW1, 1) break;                                                                     \
    case 2: QROWS_LOOP(ROW1, 2) break;                                                                     \
    case 3: QROWS_LOOP(ROW1, 3) break;                                                                     \
    default: QROWS_LOOP(ROW1, 4) break;                                                                    \
    }

/* The 512-bit kernels (qmatmul_zmm.c). Q8_0 takes plain activation blocks; Q4_1 takes the
 * quad order (qx_index with group 4). fr_qzmm_supported: the CPU runs them (AVX-512 F, BW,
 * VL and VNNI, F16C). */
int fr_qzmm_supported(void);
void fr_qzmm_dot8_q8_0(const qrows *t, const qact *a, int j0, int nx);
void fr_qzmm_dot8_q4_1(const qrows *t, const qact *a, int j0, int nx);

/* The int8 prefill's matrix product of Q8_0, Q4_1, Q4_K, Q5_K or Q6_K weights (qgemm_vnni.c; the
 * CPU must pass fr_qzmm_supported): y[j * ystride + r] for weight rows [t->r0, t->r1) and
 * activation rows j < M; xoff[8 b + k]: where the 4-byte word k (values 4k .. 4k+3) of block b
 * sits in an activation row; sx: the activation blocks' integer sums (Q8_0), or their halves'
 * (Q6_K), from fr_qgemm_block_sums (plain order). -1 when out of memory. */
int fr_qgemm_rows(const qrows *t, const qact *a, fr_qtype type, const int32_t *sx, const int32_t *xoff, int M);
void fr_qgemm_block_sums(const qact *a, int M, int halves, int32_t *sx);

#endif
