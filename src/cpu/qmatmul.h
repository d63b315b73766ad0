/*
 * qmatmul.h — products with weight matrices in any storage format of formats/qmatrix.h, on
 * the CPU (cpu/qmatmul.c).
 *
 * The only compute entry point is fr_qmatmul: y[M, rows] = x[M, cols] · Wᵀ, for M = 1
 * (decode: a matrix-vector product, bound by memory bandwidth) and M > 1 (prefill). F32 and
 * BF16 weights meet FP32 activations. Q8_0 and Q4_1 weights meet activations quantized to
 * int8 per block of 32 (exact integer block sums; see "int8 activations" in qmatmul.c), unless
 * FP32 activations are selected (fr_qmatmul_set_int8_act(0), FRUGAL_QACT=f32): then the
 * weights are dequantized in registers and the result is x · Ŵᵀ up to FP32 rounding. The CPU
 * kernels are chosen at run time (AVX-512 VNNI / AVX-512F / AVX2 / scalar) and checked
 * against the scalar ones in tests.
 */
#ifndef FR_CPU_QMATMUL_H
#define FR_CPU_QMATMUL_H

#include "formats/qmatrix.h"

/* y[M, rows] = x[M, cols] · Wᵀ (overwrites y). OpenMP-parallel over rows (M small) or over
 * both M and rows (M large). */
void fr_qmatmul(float *y, const float *x, const fr_qmatrix *w, int M);

/* Several independent products in one parallel region (the experts of a MoE layer at
 * decode, projections that share an input): y_i = x_i · W_iᵀ for each job, results equal to
 * fr_qmatmul's. Run together when every job takes the int8 path, else one after another. */
typedef struct {
    float *y;
    const float *x;
    const fr_qmatrix *w;
    int M;
} fr_qmatmul_job;
void fr_qmatmul_batch(const fr_qmatmul_job *jobs, int n);

/* Int8 activations for Q8_0 / Q4_1 weights: on = 1 (the default), 0 = FP32 activations,
 * -1 = from the environment (FRUGAL_QACT=f32 selects FP32). A process-wide setting: set it at
 * start-up, not while products run. */
void fr_qmatmul_set_int8_act(int on);
int fr_qmatmul_int8_act(void);
/* Prompt processing (16 rows or more) of BF16 / Q8_0 / Q4_1 weights on the BF16 matrix units
 * through oneDNN (AMX, AVX512-BF16; emulated elsewhere): on = 1, 0 = the exact paths above,
 * -1 = from the environment (FRUGAL_PREFILL=bf16|exact), else on where oneDNN's BF16 matmul
 * runs on AMX. Process-wide, like fr_qmatmul_set_int8_act. */
void fr_qmatmul_set_prefill_bf16(int on);
int fr_qmatmul_prefill_bf16(void);
/* The int8 prefill: a prompt's Q8_0, Q4_1 and K-format products as VNNI matrix products (-1: from
 * FRUGAL_PREFILL, on unless it says exact or bf16) */
void fr_qmatmul_set_prefill_int8(int on);

/* 1 when fr_qmatmul multiplies w with int8 activations (w is Q8_0 / Q4_1 and they are on). */
int fr_qmatmul_uses_int8(const fr_qmatrix *w);

/* Instruction set fr_qmatmul's row kernels use now (FR_ISA_* of ops_cpu.h): fr_cpu_isa()
 * (FRUGAL_CPU / fr_cpu_set_isa cap it), lowered to generic when the CPU lacks F16C. */
int fr_qmatmul_isa(void);

#endif
