/*
 * kernels_optim.cuh — the optimizer's bodies for backends whose memory the host cannot read
 * (rules in kernel_common.cuh): AdamW over a span of parameters with FP32 or BF16 moments, and
 * the sum of squares of a span in double (the gradient norm's partial sums). The arithmetic is
 * model/optim.c's, operation for operation, so the CPU-guarded backend (which runs these
 * bodies on the host) trains bit for bit like the CPU; the CUDA backend runs them on the GPU.
 */
#ifndef FR_CUDA_KERNELS_OPTIM_CUH
#define FR_CUDA_KERNELS_OPTIM_CUH

#include "cuda/kernel_common.cuh"
#include "model/ops.h"

FR_HD float fr_k_bf16_decode(uint16_t b) {
    const uint32_t bits = (uint32_t)b << 16;
    float v;
    memcpy(&v, &bits, sizeof v);
    return v;
}

/* round to nearest even; a NaN stays a quiet NaN (formats/numfmt.c's fr_bf16_encode) */
FR_HD uint16_t fr_k_bf16_encode(float v) {
    uint32_t bits;
    memcpy(&bits, &v, sizeof bits);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((bits >> 16) | 0x40u);
    return (uint16_t)((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

/* element i: the moments updated in FP32 from their old values, the parameter moved */
FR_HD void fr_k_adamw_elem(float *p, float g, float *mj, float *vj, const fr_adamw_step_consts *k) {
    const float gj = g * k->grad_scale;
    *mj = k->b1 * *mj + (1.0f - k->b1) * gj;
    *vj = k->b2 * *vj + (1.0f - k->b2) * gj * gj;
    *p = *p * k->decay - k->step_size * *mj / (sqrtf(*vj) * k->inv_sqrt_bc2 + k->eps);
}

/* i in [0, n): p[i], g[i], moments mom[i] / var[i] as floats or (bf16) BF16 codes */
FR_HD void fr_k_adamw(size_t i, float *p, const float *g, void *mom, void *var, int bf16, const fr_adamw_step_consts *k) {
    if (bf16) {
        uint16_t *mt = (uint16_t *)mom, *vt = (uint16_t *)var;
        float mj = fr_k_bf16_decode(mt[i]), vj = fr_k_bf16_decode(vt[i]);
        fr_k_adamw_elem(&p[i], g[i], &mj, &vj, k);
        mt[i] = fr_k_bf16_encode(mj);
        vt[i] = fr_k_bf16_encode(vj);
    } else {
        fr_k_adamw_elem(&p[i], g[i], &((float *)mom)[i], &((float *)var)[i], k);
    }
}

/* The sum of squares of x[0:n] in double, in a fixed order: element j adds into lane j mod 16,
 * then the 16 lanes are added as a tree (lane i += lane i + w for w = 8, 4, 2, 1). Each square
 * of a float is exact in double, so only the additions round, and a multiply-add gives the
 * same bits as a multiply and an add. One chain of n dependent additions took 4 cycles an
 * element (the whole gradient norm: 5 % of the small MoE model's step); 16 chains keep up with
 * memory, and any SIMD width that keeps the lanes gets this result bit for bit. */
#define FR_SUMSQ_LANES 16
FR_HD double fr_k_sumsq_span(const float *x, size_t n) {
    double lane[FR_SUMSQ_LANES];
    for (int i = 0; i < FR_SUMSQ_LANES; i++) lane[i] = 0.0;
    size_t j = 0;
    for (; j + FR_SUMSQ_LANES <= n; j += FR_SUMSQ_LANES)
        for (int i = 0; i < FR_SUMSQ_LANES; i++) lane[i] += (double)x[j + i] * x[j + i];
    for (int i = 0; j < n; i++, j++) lane[i] += (double)x[j] * x[j];
    for (int w = FR_SUMSQ_LANES / 2; w > 0; w /= 2)
        for (int i = 0; i < w; i++) lane[i] += lane[i + w];
    return lane[0];
}

/* chunk c of x[0:n] in chunks of `chunk`: partial[c] = its sum of squares (fr_k_sumsq_span) */
FR_HD void fr_k_sumsq_chunk(size_t c, double *partial, const float *x, size_t n, size_t chunk) {
    const size_t lo = c * chunk, hi = lo + chunk < n ? lo + chunk : n;
    partial[c] = fr_k_sumsq_span(x + lo, hi - lo);
}

#endif
