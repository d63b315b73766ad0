/*
 * kquant.h — GGML's "K-quant" weight block formats Q4_K, Q5_K and Q6_K (formats/kquant.c), as
 * GGUF files store them, for the CPU inference engine.
 *
 * A row of n values (n a multiple of FR_QK_K = 256) is n / 256 super-blocks stored one after
 * the other; each super-block carries an fp16 scale (and, for Q4_K / Q5_K, an fp16 minimum
 * scale) plus small integer scales of its sub-blocks. The byte layouts are documented beside
 * the code in kquant.c:
 *
 *   Q4_K  144 bytes / 256 values (4.5 bits):  value = d*sc_j * q - dmin*m_j,  q in 0..15,
 *         8 sub-blocks j of 32 values, sc_j and m_j 6-bit
 *   Q5_K  176 bytes / 256 values (5.5 bits):  as Q4_K with q in 0..31
 *   Q6_K  210 bytes / 256 values (6.5625 bits): value = d*sc_k * (q - 32),  q in 0..63,
 *         16 sub-blocks k of 16 values, sc_k signed 8-bit
 *
 * Products with int8 activations (fr_kq_dot_q8*) follow cpu/qmatmul.c's "int8 activations":
 * an activation row x is given as qx[n] int8 in [-127, 127] with one FP32 scale dx_b per block
 * of 32 (x_i ~ dx_b * qx_i) and the FP32 sum xs_b of the original x over each block. The
 * integer sums inside a sub-block are exact int32; scales are applied in FP32; every ISA
 * variant (portable C, AVX2, AVX-512 VNNI) gives bit-identical results (the FP32 operation
 * order is fixed, see "dot products" in kquant.c).
 */
#ifndef FR_FORMATS_KQUANT_H
#define FR_FORMATS_KQUANT_H

#include <stddef.h>
#include <stdint.h>

#define FR_QK_K 256

typedef enum { FR_KQ_Q4_K = 0, FR_KQ_Q5_K = 1, FR_KQ_Q6_K = 2 } fr_kq_type;

/* Bytes per super-block of 256 values (144, 176, 210); 0 for an unknown type. */
size_t fr_kq_block_bytes(fr_kq_type t);
/* Bytes of a stored row of n values: n / 256 super-blocks; 0 unless n > 0 and n % 256 == 0. */
size_t fr_kq_row_bytes(fr_kq_type t, int n);

/* n values (n % 256 == 0) of a stored row to FP32, bit for bit what gguf.quants.dequantize
 * (the gguf Python package, 0.19.0) gives: the same FP32 operations in the same order. */
void fr_kq_dequantize_row(fr_kq_type t, const void *src, float *dst, int n);

/* FP32 row (finite values) -> n / 256 stored super-blocks. Our own quantizer: per sub-block a
 * least-squares scale (and minimum) from a small search over candidate scales, then the
 * sub-block scales quantized relative to the super-block's fp16 d / dmin with a +-1 search
 * (algorithm in kquant.c, "quantization"). */
void fr_kq_quantize_row(fr_kq_type t, const float *src, void *dst, int n);

/* A Q4_K / Q5_K super-block as 8 sub-blocks of 32 values: q[256] its quants in value order,
 * scale[j] = d * sc_j and min[j] = dmin * m_j (value = scale[j] q - min[j]; both products
 * exact in FP32, as the dot products below form them). */
void fr_kq_unpack_q45(fr_kq_type t, const void *blk, uint8_t *q, float *scale, float *min);

/* A Q6_K super-block: q[256] its quants (0..63, not yet minus 32) in value order, sc[16] the
 * sub-block scales, *d the super-block's scale (value = d sc_k (q - 32)). */
void fr_kq_unpack_q6k(const void *blk, uint8_t *q, int8_t *sc, float *d);

/* Dot product of one stored row (n values, n % 256 == 0) with an int8 activation row:
 * qx[n], dx[n/32], xs[n/32] as above (xs is not read for Q6_K and may be NULL then).
 *   Q4_K / Q5_K:  y = sum_j (d*sc_j*dx_j) * sum_i q_i qx_i  -  (dmin*m_j) * xs_j
 *   Q6_K:         y = sum_b (d*dx_b) * sum_{k = 2b, 2b+1} sc_k * (sum_i q_i qx_i - 32 sum_i qx_i)
 * Returns 0 for an unknown type. */
float fr_kq_dot_q8(fr_kq_type t, const void *row, const int8_t *qx, const float *dx, const float *xs, int n);

/* The same for nx (1..4) activation rows at once, reading the weight row once: out[j] is the
 * dot with activation row j at qx + j*n, dx + j*(n/32), xs + j*(n/32); each equals
 * fr_kq_dot_q8's result for that row bit for bit (nx outside 1..4: nothing is written). */
void fr_kq_dot_q8_rows(fr_kq_type t, const void *row, const int8_t *qx, const float *dx, const float *xs, int n,
                       int nx, float *out);

/* The *_K_M mixes (ours, in the spirit of llama.cpp's): of n_layers, the layers whose
 * value and down projections get Q6_K: the first and last eighth and every third between. */
int fr_kmix_more_bits(int layer, int n_layers);

#endif
