/* optim.c — AdamW, gradient norm and the router-bias balancer, on host parameter memory
 * (the CPU backend's buffers are host memory; a device backend supplies its own). */
#include "model/optim.h"
#include "cpu/ops_cpu.h"
#include "cuda/kernels_optim.cuh" /* fr_k_sumsq_span: the order of the norm's sums, shared with devices */
#include "formats/numfmt.h"

#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

/* The optimizer walks the trainable parameters in chunks of at most CHUNK elements, tensor
 * by tensor, all in one parallel region: one region per tensor cost ~400 fork / join barriers
 * a step on the demo model (bench_model counts them). The grad norm's partial sums are per
 * chunk, added in chunk order, so the result does not depend on the thread count. */
#define CHUNK 65536

typedef struct {
    const fr_tensor *t;
    size_t lo, hi;   /* elements of t */
    size_t mom;      /* index of element lo in the moment arrays */
} opt_chunk;

/* The chunk plan over the trainable elements of the ranges (malloc'd; NULL if out of memory);
 * *n chunks. Ranges are sorted, disjoint spans of the parameter arena; a tensor's elements
 * outside them are skipped. */
static opt_chunk *plan_chunks(const fr_model *m, const fr_opt_range *ranges, int n_ranges, long *n) {
    long count = 0;
    for (int pass = 0; pass < 2; pass++) {
        opt_chunk *c = pass ? malloc((size_t)(count > 0 ? count : 1) * sizeof *c) : NULL;
        if (pass && !c) return NULL;
        long k = 0;
        for (int ri = 0; ri < n_ranges; ri++) {
            const fr_opt_range *r = &ranges[ri];
            for (int i = 0; i < m->n_tensors; i++) {
                const fr_tensor *t = &m->tensors[i];
                if (!t->trainable) continue;
                const size_t a = t->offset > r->lo ? t->offset : r->lo;
                const size_t b = t->offset + t->numel < r->hi ? t->offset + t->numel : r->hi;
                for (size_t lo = a; lo < b; lo += CHUNK) {
                    if (pass)
                        c[k] = (opt_chunk){t, lo - t->offset, (lo + CHUNK < b ? lo + CHUNK : b) - t->offset,
                                           r->mom + (lo - r->lo)};
                    k++;
                }
            }
        }
        if (pass) {
            *n = k;
            return c;
        }
        count = k;
    }
    return NULL;
}

static fr_opt_range whole_arena(const fr_model *m) { return (fr_opt_range){0, m->n_params, 0}; }

/* Device backends (memory the host cannot read): each chunk of the gradients (and, for AdamW,
 * of the parameters) is copied to a host buffer, used, and the parameters copied back: the
 * same arithmetic in the same order as on the CPU, at the cost of the transfers. A kernel on
 * the device replaces this where the backend has one (planned for CUDA). */
static int on_host(const fr_model *m) { return m->ops->host_memory; }
/* the backend runs the optimizer in its own memory (moments included: fr_adamw_in_backend) */
static int in_backend(const fr_model *m) { return !on_host(m) && m->ops->adamw && m->ops->sumsq_chunks; }

int fr_adamw_in_backend(const fr_model *m) { return in_backend(m); }

/* The end of the run of chunks starting at k that are one tensor's consecutive pieces with
 * consecutive moments: one backend call covers them all (a launch per tensor, not per chunk). */
static long run_end(const opt_chunk *c, long n, long k) {
    long j = k + 1;
    while (j < n && c[j].t == c[k].t && c[j].lo == c[j - 1].hi && c[j].mom == c[j - 1].mom + (c[j - 1].hi - c[j - 1].lo))
        j++;
    return j;
}

/* The partial sums of the chunk plan computed by the backend in its memory, one call per run,
 * then brought to the host at once */
static int backend_sumsq(const fr_model *m, const opt_chunk *c, long n, double *partial) {
    double *dev = m->ops->alloc((size_t)(n > 0 ? n : 1) * sizeof(double));
    if (!dev) return 0;
    for (long k = 0; k < n;) {
        const long j = run_end(c, n, k);
        const float *g = m->grads + c[k].t->offset;
        m->ops->sumsq_chunks(dev + k, g + c[k].lo, c[j - 1].hi - c[k].lo, CHUNK);
        k = j;
    }
    m->ops->to_host(partial, dev, (size_t)n * sizeof(double));
    m->ops->free(dev);
    return 1;
}

double fr_grad_sumsq(const fr_model *m, const fr_opt_range *ranges, int n_ranges) {
    long n = 0;
    opt_chunk *c = plan_chunks(m, ranges, n_ranges, &n);
    double *partial = malloc((size_t)(n > 0 ? n : 1) * sizeof(double));
    float *stage = on_host(m) || in_backend(m) ? NULL : malloc(CHUNK * sizeof(float));
    if (!c || !partial || (!on_host(m) && !in_backend(m) && !stage) || (in_backend(m) && !backend_sumsq(m, c, n, partial))) {
        free(c);
        free(partial);
        free(stage);
        return NAN;
    }
    const long n_host = in_backend(m) ? 0 : n; /* the chunks summed here (the backend did the others) */
#pragma omp parallel for schedule(static) if (on_host(m))
    for (long k = 0; k < n_host; k++) {
        const float *g = m->grads + c[k].t->offset;
        if (stage) { /* device: this chunk to the host, indexed as before */
            m->ops->to_host(stage, g + c[k].lo, (c[k].hi - c[k].lo) * sizeof(float));
            g = stage - c[k].lo;
        }
        partial[k] = fr_k_sumsq_span(g + c[k].lo, c[k].hi - c[k].lo);
    }
    free(stage);
    double total = 0;
    for (long k = 0; k < n; k++) total += partial[k];
    free(partial);
    free(c);
    return total;
}

double fr_grad_norm(const fr_model *m, double grad_scale) {
    const fr_opt_range all = whole_arena(m);
    return sqrt(fr_grad_sumsq(m, &all, 1)) * grad_scale;
}

/* AdamW's per-step constants: bias corrections folded into the step size and the epsilon, in
 * double for accuracy. The step size and the decay factor depend on the tensor's learning rate
 * (adamw_rate). */
typedef struct {
    float b1, b2, eps, gs, inv_sqrt_bc2;
    double bc1;
} adamw_consts;

static adamw_consts adamw_prepare(const fr_adamw_hparams *h) {
    const double bc1 = 1.0 - pow(h->beta1, (double)h->step), bc2 = 1.0 - pow(h->beta2, (double)h->step);
    return (adamw_consts){(float)h->beta1, (float)h->beta2, (float)h->eps, (float)h->grad_scale,
                          (float)(1.0 / sqrt(bc2)), bc1};
}

/* The learning-rate multiplier of tensor t: routers and routed experts may have their own
 * (issue 21); 0 stands for 1 */
static double lr_scale(const fr_tensor *t, const fr_adamw_extra *x) {
    const double s = t->router ? x->lr_scale_router : t->expert >= 0 ? x->lr_scale_experts : 1.0;
    return s > 0 ? s : 1.0;
}

/* Tensor t's step size lr_t / bc1 and decay factor 1 - lr_t wd (1 on no_decay tensors), with
 * lr_t = lr x its scale: a scale of 1 leaves lr, so both are bit for bit the single-rate ones */
typedef struct {
    float step_size, decay;
} adamw_rate;

static adamw_rate adamw_rate_of(const fr_tensor *t, const fr_adamw_hparams *h, const fr_adamw_extra *x,
                                 const adamw_consts *k) {
    const double lr = h->lr * lr_scale(t, x);
    return (adamw_rate){(float)(lr / k->bc1), t->no_decay ? 1.0f : (float)(1.0 - lr * h->weight_decay)};
}

/* One element: the moments mj, vj updated in FP32 from their old values, the parameter moved. */
static inline void adamw_elem(const adamw_consts *k, adamw_rate r, float *p, float g, float *mj, float *vj) {
    const float gj = g * k->gs;
    *mj = k->b1 * *mj + (1.0f - k->b1) * gj;
    *vj = k->b2 * *vj + (1.0f - k->b2) * gj * gj;
    *p = *p * r.decay - r.step_size * *mj / (sqrtf(*vj) * k->inv_sqrt_bc2 + k->eps);
}

/* Elements lo..hi of one tensor (p, g and the moments mom / var indexed alike; moments float,
 * or BF16 codes when bf16). zero: each g[j] set to 0 once used. Always inlined and called with
 * constant flags, so each combination is its own loop without tests inside. */
static inline __attribute__((always_inline)) void adamw_span(const adamw_consts *k, adamw_rate r, float *p, float *g,
                                                             void *mom, void *var, size_t lo, size_t hi,
                                                             const int bf16, const int zero) {
    for (size_t j = lo; j < hi; j++) {
        const float gj = g[j];
        if (bf16) {
            uint16_t *mt = mom, *vt = var;
            float mj = fr_bf16_decode(mt[j]), vj = fr_bf16_decode(vt[j]);
            adamw_elem(k, r, &p[j], gj, &mj, &vj);
            mt[j] = fr_bf16_encode(mj);
            vt[j] = fr_bf16_encode(vj);
        } else {
            adamw_elem(k, r, &p[j], gj, &((float *)mom)[j], &((float *)var)[j]);
        }
        if (zero) g[j] = 0.0f;
    }
}

/* The FP32-moment update of elements lo.. on 16 lanes (AVX-512F); returns where the scalar loop
 * takes over (the last hi - lo mod 16). The same operations as adamw_elem, in the same order,
 * each correctly rounded (square root and division included), and no multiply-add contracted
 * into an FMA: the results are adamw_elem's bit for bit (test_train compares every element of
 * a step with the formula). The scalar loop ran at about 1.6 ns per weight, computing; this one
 * keeps up with memory. */
#define T_AVX512_EXACT __attribute__((target("avx512f"), optimize("fp-contract=off")))
T_AVX512_EXACT static size_t adamw_f32_avx512(const adamw_consts *k, adamw_rate r, float *p, float *g, float *mom,
                                              float *var, size_t lo, size_t hi, int zero) {
    const __m512 gs = _mm512_set1_ps(k->gs), b1 = _mm512_set1_ps(k->b1), b2 = _mm512_set1_ps(k->b2);
    const __m512 c1 = _mm512_set1_ps(1.0f - k->b1), c2 = _mm512_set1_ps(1.0f - k->b2), eps = _mm512_set1_ps(k->eps);
    const __m512 ibc = _mm512_set1_ps(k->inv_sqrt_bc2), decay = _mm512_set1_ps(r.decay), step = _mm512_set1_ps(r.step_size);
    size_t j = lo;
    for (; j + 16 <= hi; j += 16) {
        const __m512 gj = _mm512_mul_ps(_mm512_loadu_ps(g + j), gs);
        const __m512 mj = _mm512_add_ps(_mm512_mul_ps(b1, _mm512_loadu_ps(mom + j)), _mm512_mul_ps(c1, gj));
        const __m512 vj = _mm512_add_ps(_mm512_mul_ps(b2, _mm512_loadu_ps(var + j)), _mm512_mul_ps(_mm512_mul_ps(c2, gj), gj));
        _mm512_storeu_ps(mom + j, mj);
        _mm512_storeu_ps(var + j, vj);
        const __m512 den = _mm512_add_ps(_mm512_mul_ps(_mm512_sqrt_ps(vj), ibc), eps);
        const __m512 upd = _mm512_div_ps(_mm512_mul_ps(step, mj), den);
        _mm512_storeu_ps(p + j, _mm512_sub_ps(_mm512_mul_ps(_mm512_loadu_ps(p + j), decay), upd));
        if (zero) _mm512_storeu_ps(g + j, _mm512_setzero_ps());
    }
    return j;
}

/* The update of elements lo..hi; when sum, first their sum of squares (fr_grad_sumsq's chunk
 * sum, bit for bit), returned (else 0) */
static double adamw_span_flags(const adamw_consts *k, adamw_rate r, float *p, float *g, void *mom, void *var, size_t lo,
                               size_t hi, int bf16, int zero, int sum) {
    const double s = sum ? fr_k_sumsq_span(g + lo, hi - lo) : 0.0;
    /* FP32 moments on AVX-512: 16 elements at a time, the scalar loop from where it stops */
    const size_t j = !bf16 && fr_cpu_isa() >= FR_ISA_AVX512 ? adamw_f32_avx512(k, r, p, g, mom, var, lo, hi, zero) : lo;
    if (bf16) {
        if (zero) adamw_span(k, r, p, g, mom, var, j, hi, 1, 1);
        else adamw_span(k, r, p, g, mom, var, j, hi, 1, 0);
    } else if (zero) {
        adamw_span(k, r, p, g, mom, var, j, hi, 0, 1);
    } else {
        adamw_span(k, r, p, g, mom, var, j, hi, 0, 0);
    }
    return s;
}

/* zero_grads: the gradients of the ranges outside the trainable tensors' elements (the chunk
 * plan's gaps: non-trainable tensors, the padding that aligns each tensor), so that with the
 * fused zeroing the whole of every range is zero, as a memset of it would leave it. The
 * backward writes none of these today; zeroing them keeps that an assumption nobody relies on. */
static void zero_gaps(fr_model *m, const fr_opt_range *ranges, int n_ranges) {
    for (int ri = 0; ri < n_ranges; ri++) {
        size_t at = ranges[ri].lo; /* everything before it in the range is done */
        for (int i = 0; i < m->n_tensors; i++) {
            const fr_tensor *t = &m->tensors[i];
            if (!t->trainable) continue;
            const size_t a = t->offset > ranges[ri].lo ? t->offset : ranges[ri].lo;
            const size_t b = t->offset + t->numel < ranges[ri].hi ? t->offset + t->numel : ranges[ri].hi;
            if (a >= b) continue;
            if (a > at) memset(m->grads + at, 0, (a - at) * sizeof(float));
            if (b > at) at = b;
        }
        if (ranges[ri].hi > at) memset(m->grads + at, 0, (ranges[ri].hi - at) * sizeof(float));
    }
}

/* AdamW over the chunk plan: by the backend in its memory (a call per run of chunks), else in
 * one parallel region on host memory (a device without the op: each chunk through a host
 * copy). Moments are float, or BF16 codes when bf16. */
static int adamw_run(fr_model *m, void *mom, void *var, int bf16, const fr_opt_range *ranges, int n_ranges,
                     const fr_adamw_hparams *h, const fr_adamw_extra *x_in) {
    static const fr_adamw_extra none = {1.0, 1.0, 0, NULL};
    const fr_adamw_extra *x = x_in ? x_in : &none;
    if ((x->zero_grads || x->grad_sumsq) && !on_host(m))
        return fr_error(FR_ERR_UNSUPPORTED, "the optimizer zeroes the gradients or sums their squares in its pass on "
                                            "host memory only (the %s backend: zero them and take the norm apart)",
                        m->ops->name);
    const adamw_consts k = adamw_prepare(h);
    long n = 0;
    opt_chunk *c = plan_chunks(m, ranges, n_ranges, &n);
    float *stage = on_host(m) || in_backend(m) ? NULL : malloc(2 * CHUNK * sizeof(float)); /* params, grads */
    double *partial = x->grad_sumsq ? malloc((size_t)(n > 0 ? n : 1) * sizeof(double)) : NULL;
    if (!c || (!on_host(m) && !in_backend(m) && !stage) || (x->grad_sumsq && !partial)) {
        free(c);
        free(stage);
        free(partial);
        return fr_error(FR_ERR_NOMEM, "out of memory for the optimizer's chunk plan");
    }
    if (in_backend(m)) { /* moments in backend memory too: a launch per run of chunks */
        const size_t esize = bf16 ? sizeof(uint16_t) : sizeof(float);
        for (long ci = 0; ci < n;) {
            const long j = run_end(c, n, ci);
            const fr_tensor *t = c[ci].t;
            const adamw_rate r = adamw_rate_of(t, h, x, &k);
            const fr_adamw_step_consts sk = {k.b1, k.b2, k.eps, k.gs, r.step_size, k.inv_sqrt_bc2, r.decay};
            m->ops->adamw(m->params + t->offset + c[ci].lo, m->grads + t->offset + c[ci].lo, (char *)mom + c[ci].mom * esize,
                          (char *)var + c[ci].mom * esize, bf16, c[j - 1].hi - c[ci].lo, sk);
            ci = j;
        }
        free(c);
        return FR_OK;
    }
    const int zero = x->zero_grads != 0, sum = x->grad_sumsq != NULL;
#pragma omp parallel for schedule(static) if (on_host(m))
    for (long ci = 0; ci < n; ci++) {
        const fr_tensor *t = c[ci].t;
        const size_t lo = c[ci].lo, hi = c[ci].hi;
        float *p = m->params + t->offset;
        float *g = m->grads + t->offset;
        float *device_p = NULL;
        if (stage) { /* device: the chunk's parameters and gradients to the host, indexed as before */
            device_p = p + lo;
            m->ops->to_host(stage, p + lo, (hi - lo) * sizeof(float));
            m->ops->to_host(stage + CHUNK, g + lo, (hi - lo) * sizeof(float));
            p = stage - lo;
            g = stage + CHUNK - lo;
        }
        /* moments of element j of t at index mbase + j */
        const ptrdiff_t mbase = (ptrdiff_t)c[ci].mom - (ptrdiff_t)lo;
        const size_t esize = bf16 ? sizeof(uint16_t) : sizeof(float);
        const double s = adamw_span_flags(&k, adamw_rate_of(t, h, x, &k), p, g, (char *)mom + mbase * (ptrdiff_t)esize,
                                          (char *)var + mbase * (ptrdiff_t)esize, lo, hi, bf16, zero, sum);
        if (sum) partial[ci] = s;
        if (device_p) m->ops->to_device(device_p, p + lo, (hi - lo) * sizeof(float));
    }
    if (zero) zero_gaps(m, ranges, n_ranges);
    if (sum) { /* in chunk order, as fr_grad_sumsq adds them */
        double total = 0;
        for (long ci = 0; ci < n; ci++) total += partial[ci];
        *x->grad_sumsq = total;
    }
    free(partial);
    free(stage);
    free(c);
    return FR_OK;
}

int fr_adamw_step(fr_model *m, float *mom, float *var, const fr_adamw_hparams *h) {
    const fr_opt_range all = whole_arena(m);
    return adamw_run(m, mom, var, 0, &all, 1, h, NULL);
}

int fr_adamw_step_bf16(fr_model *m, uint16_t *mom, uint16_t *var, const fr_adamw_hparams *h) {
    const fr_opt_range all = whole_arena(m);
    return adamw_run(m, mom, var, 1, &all, 1, h, NULL);
}

int fr_adamw_step_ranges(fr_model *m, void *mom, void *var, int moments_bf16, const fr_opt_range *ranges,
                         int n_ranges, const fr_adamw_hparams *h, const fr_adamw_extra *x) {
    return adamw_run(m, mom, var, moments_bf16, ranges, n_ranges, h, x);
}

int fr_router_bias_update(fr_model *m, const long *counts, double gamma) {
    const int E = m->cfg.n_routed_experts, L = m->cfg.num_hidden_layers;
    float *bias = malloc((size_t)(E > 0 ? E : 1) * sizeof(float)); /* a host copy: the parameters may live on a device */
    if (!bias) return fr_error(FR_ERR_NOMEM, "out of memory for the router-bias update");
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
        m->ops->to_host(bias, m->params + b->router_bias, (size_t)E * sizeof(float));
        for (int e = 0; e < E; e++) {
            double err = mean - (double)c[e];
            bias[e] += (float)(err > 0 ? gamma : err < 0 ? -gamma : 0.0);
        }
        m->ops->to_device(m->params + b->router_bias, bias, (size_t)E * sizeof(float));
    }
    free(bias);
    return FR_OK;
}
