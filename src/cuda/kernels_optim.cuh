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

/* chunk c of x[0:n] in chunks of `chunk`: partial[c] = sum of squares in double, in order */
FR_HD void fr_k_sumsq_chunk(size_t c, double *partial, const float *x, size_t n, size_t chunk) {
    const size_t lo = c * chunk, hi = lo + chunk < n ? lo + chunk : n;
    double s = 0;
    for (size_t j = lo; j < hi; j++) s += (double)x[j] * x[j];
    partial[c] = s;
}

#endif
