/* optim.c — AdamW, gradient norm and the router-bias balancer, on host parameter memory
 * (the CPU backend's buffers are host memory; a device backend supplies its own). */
#include "model/optim.h"
#include "formats/numfmt.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>

#define NORM_CHUNK 65536

double fr_grad_norm(const fr_model *m, double grad_scale) {
    double total = 0;
    for (int i = 0; i < m->n_tensors; i++) {
        const fr_tensor *t = &m->tensors[i];
        if (!t->trainable) continue;
        const float *g = m->grads + t->offset;
        const long n_chunks = (long)((t->numel + NORM_CHUNK - 1) / NORM_CHUNK);
        double *partial = malloc((size_t)n_chunks * sizeof(double));
        if (!partial) return NAN;
#pragma omp parallel for schedule(static)
        for (long c = 0; c < n_chunks; c++) {
            size_t lo = (size_t)c * NORM_CHUNK, hi = lo + NORM_CHUNK < t->numel ? lo + NORM_CHUNK : t->numel;
            double s = 0;
            for (size_t j = lo; j < hi; j++) s += (double)g[j] * g[j];
            partial[c] = s;
        }
        for (long c = 0; c < n_chunks; c++) total += partial[c];
        free(partial);
    }
    return sqrt(total) * grad_scale;
}

void fr_adamw_step(fr_model *m, float *mom, float *var, const fr_adamw_hparams *h) {
    const float b1 = (float)h->beta1, b2 = (float)h->beta2, eps = (float)h->eps;
    const float gs = (float)h->grad_scale;
    /* bias corrections folded into the step size and the epsilon, in double for accuracy */
    const double bc1 = 1.0 - pow(h->beta1, (double)h->step), bc2 = 1.0 - pow(h->beta2, (double)h->step);
    const float step_size = (float)(h->lr / bc1), inv_sqrt_bc2 = (float)(1.0 / sqrt(bc2));
    for (int i = 0; i < m->n_tensors; i++) {
        const fr_tensor *t = &m->tensors[i];
        if (!t->trainable) continue;
        float *p = m->params + t->offset, *mt = mom + t->offset, *vt = var + t->offset;
        const float *g = m->grads + t->offset;
        const float decay = t->no_decay ? 1.0f : (float)(1.0 - h->lr * h->weight_decay);
        const long n = (long)t->numel;
#pragma omp parallel for schedule(static) if (n > 32768)
        for (long j = 0; j < n; j++) {
            float gj = g[j] * gs;
            float mj = b1 * mt[j] + (1.0f - b1) * gj;
            float vj = b2 * vt[j] + (1.0f - b2) * gj * gj;
            mt[j] = mj;
            vt[j] = vj;
            p[j] = p[j] * decay - step_size * mj / (sqrtf(vj) * inv_sqrt_bc2 + eps);
        }
    }
}

void fr_adamw_step_bf16(fr_model *m, uint16_t *mom, uint16_t *var, const fr_adamw_hparams *h) {
    const float b1 = (float)h->beta1, b2 = (float)h->beta2, eps = (float)h->eps;
    const float gs = (float)h->grad_scale;
    const double bc1 = 1.0 - pow(h->beta1, (double)h->step), bc2 = 1.0 - pow(h->beta2, (double)h->step);
    const float step_size = (float)(h->lr / bc1), inv_sqrt_bc2 = (float)(1.0 / sqrt(bc2));
    for (int i = 0; i < m->n_tensors; i++) {
        const fr_tensor *t = &m->tensors[i];
        if (!t->trainable) continue;
        float *p = m->params + t->offset;
        uint16_t *mt = mom + t->offset, *vt = var + t->offset;
        const float *g = m->grads + t->offset;
        const float decay = t->no_decay ? 1.0f : (float)(1.0 - h->lr * h->weight_decay);
        const long n = (long)t->numel;
#pragma omp parallel for schedule(static) if (n > 32768)
        for (long j = 0; j < n; j++) {
            float gj = g[j] * gs;
            float mj = b1 * fr_bf16_decode(mt[j]) + (1.0f - b1) * gj;
            float vj = b2 * fr_bf16_decode(vt[j]) + (1.0f - b2) * gj * gj;
            mt[j] = fr_bf16_encode(mj);
            vt[j] = fr_bf16_encode(vj);
            p[j] = p[j] * decay - step_size * mj / (sqrtf(vj) * inv_sqrt_bc2 + eps);
        }
    }
}

void fr_router_bias_update(fr_model *m, const long *counts, double gamma) {
    const int E = m->cfg.n_routed_experts, L = m->cfg.num_hidden_layers;
    int i = 0;
    for (int l = 0; l < L + m->mtp_depth; l++) {
        const fr_block *b = &m->blocks[l];
        if (!b->is_moe) continue;
        const long *c = counts + (size_t)i * E;
        i++;
        if (b->router_bias == FR_NONE) continue;
        long total = 0;
        for (int e = 0; e < E; e++) total += c[e];
        if (total == 0) continue;
        const double mean = (double)total / E;
        float *bias = m->params + b->router_bias;
        for (int e = 0; e < E; e++) {
            double err = mean - (double)c[e];
            bias[e] += (float)(err > 0 ? gamma : err < 0 ? -gamma : 0.0);
        }
    }
}
