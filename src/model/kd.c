/*
 * kd.c — the logit-distillation loss (Hinton et al. 2015) on the student's output head.
 *
 * Per position i with a target (y_i >= 0), with the teacher's K largest logits l_ik at
 * vocabulary indices I_ik and temperature T:
 *   p_ik   = softmax_k(l_ik / T)              the teacher's top-k renormalised: the mass the
 *                                             teacher puts outside its top k is dropped and the
 *                                             k probabilities scaled to sum to 1
 *   log q_i = log_softmax(z_i / T)            the student over the whole vocabulary
 *   KL_i   = sum_k p_ik (log p_ik - log q_i[I_ik])
 *   loss_i = alpha T^2 KL_i + (1 - alpha) CE_i
 * and the loss is the mean over targets. Since the p_ik sum to 1,
 *   d KL_i / d z_ij = (q_i[j] - p_ij) / T   (p_ij = 0 off the top k),
 * so the T^2 keeps the gradient's size independent of T (alpha T (q - p)).
 * tests/test_distill.c checks loss and gradient against PyTorch autograd
 * (tools/make_kd_fixture.py) and finite differences.
 */
#include "model/model_internal.h"

#include <math.h>
#include <stdint.h>

double fr_kd_apply(const float *logits, float *dlogits, const int *targets, int N, int V, const int32_t *topk_idx,
                   const float *topk_logit, int K, float temperature, float alpha, float grad_scale) {
    const double invT = 1.0 / temperature;
    const float g = grad_scale * alpha * temperature; /* d(alpha T^2 KL)/dz = alpha T (q - p) */
    double kl_sum = 0;
#pragma omp parallel for schedule(static) reduction(+ : kl_sum)
    for (int i = 0; i < N; i++) {
        if (targets[i] < 0) continue;
        const float *z = logits + (size_t)i * V;
        float *d = dlogits + (size_t)i * V;
        const int32_t *idx = topk_idx + (size_t)i * K;
        const float *tl = topk_logit + (size_t)i * K;
        /* student: log-sum-exp of z / T */
        float zmax = z[0];
        for (int j = 1; j < V; j++) zmax = z[j] > zmax ? z[j] : zmax;
        double s = 0;
        for (int j = 0; j < V; j++) s += exp(((double)z[j] - zmax) * invT);
        const double lse = zmax * invT + log(s);
        /* teacher: softmax of its top-k / T */
        float tmax = tl[0];
        for (int k = 1; k < K; k++) tmax = tl[k] > tmax ? tl[k] : tmax;
        double ts = 0;
        for (int k = 0; k < K; k++) ts += exp(((double)tl[k] - tmax) * invT);
        const double tlse = tmax * invT + log(ts);
        double kl = 0;
        for (int k = 0; k < K; k++) {
            const double logp = tl[k] * invT - tlse, logq = z[idx[k]] * invT - lse;
            kl += exp(logp) * (logp - logq);
        }
        kl_sum += kl;
        const float keep = 1.0f - alpha;
        for (int j = 0; j < V; j++) d[j] = keep * d[j] + g * (float)exp(z[j] * invT - lse);
        for (int k = 0; k < K; k++) d[idx[k]] -= g * (float)exp(tl[k] * invT - tlse);
    }
    return kl_sum;
}
