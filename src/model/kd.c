/*
 * kd.c — the logit-distillation loss (Hinton et al. 2015) on the student's output head.
 *
 * The teacher is known by its K largest logits l_ik (vocabulary ids I_ik) and its
 * log-sum-exp at temperature T over the whole vocabulary, lse_i. Per position i with a
 * target (y_i >= 0):
 *   p_ik = exp(l_ik / T - lse_i)              the teacher's top-k probabilities at T
 *   p_ir = 1 - sum_k p_ik                     the teacher's remaining mass: the tail bucket
 *   q_i  = softmax(z_i / T)                   the student over the vocabulary
 *   q_ir = sum of q_i off the top k
 *   KL_i = sum_k p_ik log(p_ik / q_ik) + p_ir log(p_ir / q_ir)
 *   loss_i = alpha T^2 KL_i + (1 - alpha) CE_i,   the mean over targets.
 * KL_i is the KL divergence between the two distributions coarsened to K + 1 outcomes (the
 * top k and "anything else"). The tail bucket matters: renormalising the top k instead
 * (p_ir = 0) tells the student that every token outside them has probability 0, and on the
 * KJV 19 % of the next tokens fall outside the teacher's top 32. With K = V, p_ir = 0 and KL_i
 * is the full KL. The gradient:
 *   d KL_i / d z_ij = (q_ij - p_ij) / T             for j in the top k
 *                   = q_ij (1 - p_ir / q_ir) / T     otherwise,
 * so alpha T^2 KL contributes alpha T (...) whatever T. tests/test_distill.c checks loss and
 * gradient against PyTorch autograd (tools/make_kd_fixture.py) and finite differences.
 */
#include "model/model_internal.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static int cmp_i32(const void *a, const void *b) {
    const int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

double fr_kd_apply(const float *logits, float *dlogits, const int *targets, int N, int V, const int32_t *topk_idx,
                   const float *topk_logit, const float *teacher_lse, int K, float temperature, float alpha,
                   float grad_scale) {
    const double invT = 1.0 / temperature;
    const double g = (double)grad_scale * alpha * temperature; /* d(alpha T^2 KL)/dz = alpha T (...) */
    const float keep = 1.0f - alpha;
    double kl_sum = 0;
    int failed = 0;
#pragma omp parallel reduction(+ : kl_sum, failed)
    {
        /* per thread: the row's e_j = exp(z_j / T - m), and its top k sorted (for "off the top k") */
        double *e = malloc((size_t)V * sizeof *e);
        int32_t *sorted = malloc((size_t)K * sizeof *sorted);
        failed += !e || !sorted;
#pragma omp for schedule(static)
        for (int i = 0; i < N; i++) {
            if (targets[i] < 0 || !e || !sorted) continue;
            const float *z = logits + (size_t)i * V;
            float *d = dlogits + (size_t)i * V;
            const int32_t *idx = topk_idx + (size_t)i * K;
            const float *tl = topk_logit + (size_t)i * K;
            /* student at T: e_j, s = sum e_j */
            float zmax = z[0];
            for (int j = 1; j < V; j++) zmax = z[j] > zmax ? z[j] : zmax;
            const double m = zmax * invT;
            double s = 0;
            for (int j = 0; j < V; j++) s += e[j] = exp(z[j] * invT - m);
            /* the teacher's top k and tail; the student's mass on the same k */
            double p_sum = 0, e_top = 0, kl = 0;
            for (int k = 0; k < K; k++) {
                const double logp = tl[k] * invT - teacher_lse[i], ek = e[idx[k]];
                p_sum += exp(logp);
                e_top += ek;
                kl += exp(logp) * (logp - log(ek / s));
            }
            /* K = V, or a top k holding all the teacher's mass up to the rounding of a stored
             * float lse (|lse| x 6e-8): no tail (tools/make_kd_fixture.py uses the same rule) */
            double p_r = 1.0 - p_sum;
            if (K >= V || p_r < 1e-6) p_r = 0;
            double q_r = (s - e_top) / s;
            if (q_r < 1e-30) q_r = 1e-30;
            if (p_r > 0) kl += p_r * (log(p_r) - log(q_r));
            kl_sum += kl;
            /* off the top k: g q_j (1 - p_r / q_r); on it: g (q_j - p_j) */
            memcpy(sorted, idx, (size_t)K * sizeof *sorted);
            qsort(sorted, (size_t)K, sizeof *sorted, cmp_i32);
            const double off = g * (1.0 - p_r / q_r) / s;
            for (int j = 0, next = 0; j < V; j++) {
                if (next < K && sorted[next] == j) { /* (distinct ids: one match at most) */
                    next++;
                    continue;
                }
                d[j] = keep * d[j] + (float)(off * e[j]);
            }
            for (int k = 0; k < K; k++) {
                const double qk = e[idx[k]] / s, pk = exp(tl[k] * invT - teacher_lse[i]);
                d[idx[k]] = keep * d[idx[k]] + (float)(g * (qk - pk));
            }
        }
        free(e);
        free(sorted);
    }
    return failed ? NAN : kl_sum;
}
