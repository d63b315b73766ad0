/*
 * ops_cpu.c — the CPU backend of the ops interface (ops.h): OpenMP threads, FP32.
 *
 * Determinism: every op computes each output element with a fixed sequence of
 * operations that depends on the shapes and the selected instruction set only, never
 * on the number of threads or on scheduling. Work is split by output rows/columns
 * (static schedules); parameter gradients are reduced per column (embedding, RMSNorm
 * weight) or per owned slice (attention dk/dv per (b, h)), never with atomics.
 * Reductions accumulate in FP32.
 *
 * The GEMM lives in ops_cpu_gemm.c, SIMD helpers and CPU detection in ops_cpu_simd.c.
 */
#include "model/ops.h"
#include "cpu/ops_cpu.h"
#include "core/internal.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

/* Parallelise a loop only when it has at least this many elements of work. */
#define PAR_MIN_WORK 32768

/* the loop in parallel only when COND holds (FR_OMP_IF: no construct at all otherwise) */
#define PAR_FOR_IF(COND, ...) FR_OMP_IF(COND, "omp parallel for schedule(static)", __VA_ARGS__)

void fr_set_num_threads(int n) {
    if (n > 0) omp_set_num_threads(n);
}

int fr_num_threads(void) { return omp_get_max_threads(); }

/* ------------------------------------------------------------------ memory */

static void *cpu_alloc(size_t bytes) { return fr_alloc(bytes); }
static void cpu_free(void *p) { fr_free(p); }
static void cpu_memset0(void *p, size_t bytes) {
    if (bytes) memset(p, 0, bytes);
}
static void cpu_copy(void *dst, const void *src, size_t bytes) {
    if (bytes && dst != src) memmove(dst, src, bytes);
}

/* ------------------------------------------------------------------ embedding */

static void embedding_forward(float *out, const float *table, const int *tokens, int N, int D) {
    PAR_FOR_IF((long)N * D >= PAR_MIN_WORK,
        for (int n = 0; n < N; n++)
            memcpy(out + (size_t)n * D, table + (size_t)tokens[n] * D, (size_t)D * sizeof(float));
    );
}

/* Columns are split between threads; each thread walks all rows in order, so repeated
 * tokens accumulate in a fixed order without races. */
static void embedding_backward(float *dtable, const float *dout, const int *tokens, int N, int D) {
    int nth = (long)N * D >= PAR_MIN_WORK ? omp_get_max_threads() : 1;
    if (nth > D / 16) nth = D / 16 > 1 ? D / 16 : 1;
#pragma omp parallel num_threads(nth) if (nth > 1)
    {
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        int d0 = (int)((long)D * t / nt), d1 = (int)((long)D * (t + 1) / nt);
        for (int n = 0; n < N; n++) {
            float *dst = dtable + (size_t)tokens[n] * D;
            const float *src = dout + (size_t)n * D;
            for (int d = d0; d < d1; d++) dst[d] += src[d];
        }
    }
}

/* ------------------------------------------------------------------ RMSNorm */

static void rmsnorm_forward(float *y, float *rstd, const float *x, int ldx, const float *w, int N, int D,
                            float eps) {
    const fr_cpu_vec *v = fr_cpu_vec_ops();
    PAR_FOR_IF((long)N * D >= PAR_MIN_WORK,
        for (int n = 0; n < N; n++) {
            const float *xr = x + (size_t)n * ldx;
            float *yr = y + (size_t)n * D;
            float ss = v->dot(xr, xr, D);
            float r = 1.0f / sqrtf(ss / (float)D + eps);
            rstd[n] = r;
            for (int d = 0; d < D; d++) yr[d] = (xr[d] * r) * w[d];
        }
    );
}

/* y = x r w, r = (mean(x^2) + eps)^(-1/2):
 *   dx_i += r w_i dy_i - x_i r^3 / D * sum_d w_d dy_d x_d
 *   dw_i += sum_n dy_ni x_ni r_n */
static void rmsnorm_backward(float *dx, int lddx, float *dw, const float *dy, const float *x, int ldx,
                             const float *w, const float *rstd, int N, int D) {
    int par = (long)N * D >= PAR_MIN_WORK;
#pragma omp parallel if (par)
    {
        float tmp[256];
#pragma omp for schedule(static)
        for (int n = 0; n < N; n++) {
            const float *xr = x + (size_t)n * ldx, *dyr = dy + (size_t)n * D;
            float *dxr = dx + (size_t)n * lddx;
            float r = rstd[n];
            /* sum_d w_d dy_d x_d, in 8 interleaved partial sums (fixed order) */
            float part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            int d = 0;
            for (; d + 8 <= D; d += 8)
                for (int u = 0; u < 8; u++) part[u] += w[d + u] * dyr[d + u] * xr[d + u];
            float dot = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
            for (; d < D; d++) dot += w[d] * dyr[d] * xr[d];
            float c = dot * r * r * r / (float)D;
            for (d = 0; d < D; d++) dxr[d] += r * w[d] * dyr[d] - xr[d] * c;
        }
        /* dw: chunks of 256 columns, all rows in order */
        int nchunks = (D + 255) / 256;
#pragma omp for schedule(static)
        for (int ch = 0; ch < nchunks; ch++) {
            int d0 = ch * 256, m = D - d0 < 256 ? D - d0 : 256;
            memset(tmp, 0, sizeof tmp);
            for (int n = 0; n < N; n++) {
                const float *xr = x + (size_t)n * ldx + d0, *dyr = dy + (size_t)n * D + d0;
                float r = rstd[n];
                for (int d = 0; d < m; d++) tmp[d] += dyr[d] * xr[d] * r;
            }
            for (int d = 0; d < m; d++) dw[d0 + d] += tmp[d];
        }
    }
}

/* ------------------------------------------------------------------ RoPE */

/* sign = +1: forward rotation; -1: transposed rotation (backward). */
static void rope_apply(float *x, int N, int n_heads, int row_stride, int head_stride, int offset,
                       int rope_dim, const int *pos, const float *cos_table, const float *sin_table,
                       int interleave, float sign) {
    int half = rope_dim / 2;
    PAR_FOR_IF((long)N * n_heads * rope_dim >= PAR_MIN_WORK,
        for (int n = 0; n < N; n++) {
            const float *c = cos_table + (size_t)pos[n] * half, *s = sin_table + (size_t)pos[n] * half;
            for (int h = 0; h < n_heads; h++) {
                float *b = x + (size_t)n * row_stride + (size_t)h * head_stride + offset;
                if (interleave) {
                    for (int i = 0; i < half; i++) {
                        float x0 = b[2 * i], x1 = b[2 * i + 1], si = sign * s[i];
                        b[2 * i] = x0 * c[i] - x1 * si;
                        b[2 * i + 1] = x0 * si + x1 * c[i];
                    }
                } else {
                    for (int i = 0; i < half; i++) {
                        float x0 = b[i], x1 = b[i + half], si = sign * s[i];
                        b[i] = x0 * c[i] - x1 * si;
                        b[i + half] = x0 * si + x1 * c[i];
                    }
                }
            }
        }
    );
}

static void rope_forward(float *x, int N, int n_heads, int row_stride, int head_stride, int offset,
                         int rope_dim, const int *pos, const float *cos_table, const float *sin_table,
                         int interleave) {
    rope_apply(x, N, n_heads, row_stride, head_stride, offset, rope_dim, pos, cos_table, sin_table,
               interleave, 1.f);
}

static void rope_backward(float *dx, int N, int n_heads, int row_stride, int head_stride, int offset,
                          int rope_dim, const int *pos, const float *cos_table, const float *sin_table,
                          int interleave) {
    rope_apply(dx, N, n_heads, row_stride, head_stride, offset, rope_dim, pos, cos_table, sin_table,
               interleave, -1.f);
}

/* ------------------------------------------------------------------ attention
 * Causal attention in tiles of ATT_TILE query rows: a tile's scores against the keys it may
 * see (S = scale Q K^T, then P = softmax) and its output (P V) are matrix products on the
 * backend's GEMM, run single-threaded inside the parallel loop, and the backward likewise
 * (dP = dO V^T, dQ = dS K, dK += dS^T Q, dV += P^T dO). Row-at-a-time dot products spent more
 * in horizontal sums than in multiplies. Memory: one ATT_TILE x T score buffer (two in the
 * backward) per thread, never T x T. */
#define ATT_TILE 64

static void attention_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                              int B, int T, int H, int dqk, int dv, float scale) {
    const fr_cpu_vec *vo = fr_cpu_vec_ops();
    const int n_tiles = (T + ATT_TILE - 1) / ATT_TILE;
    const long items = (long)B * H * n_tiles;
    const int par = (long)B * H * T * (long)T * (dqk + dv) / 2 >= PAR_MIN_WORK && items > 1;
    const size_t qs = (size_t)H * dqk, vs = (size_t)H * dv;
#pragma omp parallel if (par)
    {
        float *s = malloc((size_t)ATT_TILE * T * sizeof(float));
        /* dynamic: later tiles see more keys; each tile's numbers do not depend on the thread */
#pragma omp for schedule(dynamic, 1)
        for (long it = 0; it < items; it++) {
            if (!s) continue;
            const long bh = it / n_tiles;
            const int h = (int)(bh % H), b = (int)(bh / H);
            const int t0 = (int)(it % n_tiles) * ATT_TILE, t1 = t0 + ATT_TILE < T ? t0 + ATT_TILE : T;
            const int tq = t1 - t0, n = t1; /* the tile's rows see keys 0 .. t1 - 1 at most */
            const float *q0 = q + ((size_t)b * T + t0) * qs + (size_t)h * dqk;
            const float *k0 = k + (size_t)b * T * qs + (size_t)h * dqk;
            const float *v0 = v + (size_t)b * T * vs + (size_t)h * dv;
            float *o0 = out + ((size_t)b * T + t0) * vs + (size_t)h * dv;
            fr_cpu_gemm(0, 1, tq, n, dqk, scale, q0, (int)qs, k0, (int)qs, 0.0f, s, n);
            for (int i = 0; i < tq; i++) {
                float *row = s + (size_t)i * n;
                const int len = t0 + i + 1;
                const float m = vo->max(row, len);
                const float sum = vo->expsum(row, row, len, m);
                const float inv = 1.0f / sum;
                for (int j = 0; j < len; j++) row[j] *= inv;
                memset(row + len, 0, (size_t)(n - len) * sizeof(float)); /* the future: masked */
                lse[bh * T + t0 + i] = m + logf(sum);
            }
            fr_cpu_gemm(0, 0, tq, dv, n, 1.0f, s, n, v0, (int)vs, 0.0f, o0, (int)vs);
        }
        free(s);
    }
}

/* P = exp(S - lse), dP = dout v^T, dS = P (dP - D), D_t = dout_t . out_t,
 * dq = scale dS k, dk = scale dS^T q, dv = P^T dout. Threads own (b, h) pairs, so the
 * dk / dv slices of a head are written by one thread in a fixed order. */
static void attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *out,
                               const float *lse, const float *q, const float *k, const float *v, int B,
                               int T, int H, int dqk, int dvd, float scale) {
    const fr_cpu_vec *vo = fr_cpu_vec_ops();
    int BH = B * H;
    int par = (long)BH * T * (long)T * (dqk + dvd) >= PAR_MIN_WORK && BH > 1;
    size_t qs = (size_t)H * dqk, vs = (size_t)H * dvd;
#pragma omp parallel if (par)
    {
        float *p = malloc((size_t)2 * ATT_TILE * T * sizeof(float));
        float *dp = p ? p + (size_t)ATT_TILE * T : NULL;
#pragma omp for schedule(static)
        for (int bh = 0; bh < BH; bh++) {
            int h = bh % H, b = bh / H;
            if (!p) continue;
            size_t row0 = (size_t)b * T;
            const float *k0 = k + row0 * qs + (size_t)h * dqk, *v0 = v + row0 * vs + (size_t)h * dvd;
            float *dk0 = dk + row0 * qs + (size_t)h * dqk, *dv0 = dv + row0 * vs + (size_t)h * dvd;
            for (int t = 0; t < T; t++) {
                memset(dk0 + t * qs, 0, (size_t)dqk * sizeof(float));
                memset(dv0 + t * vs, 0, (size_t)dvd * sizeof(float));
            }
            for (int t0 = 0; t0 < T; t0 += ATT_TILE) {
                const int t1 = t0 + ATT_TILE < T ? t0 + ATT_TILE : T, tq = t1 - t0, n = t1;
                const float *q0 = q + (row0 + t0) * qs + (size_t)h * dqk;
                const float *do0 = dout + (row0 + t0) * vs + (size_t)h * dvd;
                float *dq0 = dq + (row0 + t0) * qs + (size_t)h * dqk;
                fr_cpu_gemm(0, 1, tq, n, dqk, scale, q0, (int)qs, k0, (int)qs, 0.0f, p, n);   /* S */
                fr_cpu_gemm(0, 1, tq, n, dvd, 1.0f, do0, (int)vs, v0, (int)vs, 0.0f, dp, n);  /* dP */
                for (int i = 0; i < tq; i++) {
                    const int t = t0 + i, len = t + 1;
                    float *pr = p + (size_t)i * n, *dpr = dp + (size_t)i * n;
                    vo->expsum(pr, pr, len, lse[(size_t)bh * T + t]); /* P */
                    const float Dt = vo->dot(dout + (row0 + t) * vs + (size_t)h * dvd,
                                             out + (row0 + t) * vs + (size_t)h * dvd, dvd);
                    for (int j = 0; j < len; j++) dpr[j] = scale * (pr[j] * (dpr[j] - Dt)); /* scale * dS */
                    memset(pr + len, 0, (size_t)(n - len) * sizeof(float));
                    memset(dpr + len, 0, (size_t)(n - len) * sizeof(float));
                }
                fr_cpu_gemm(0, 0, tq, dqk, n, 1.0f, dp, n, k0, (int)qs, 0.0f, dq0, (int)qs);  /* dQ */
                fr_cpu_gemm(1, 0, n, dqk, tq, 1.0f, dp, n, q0, (int)qs, 1.0f, dk0, (int)qs);  /* dK += */
                fr_cpu_gemm(1, 0, n, dvd, tq, 1.0f, p, n, do0, (int)vs, 1.0f, dv0, (int)vs);  /* dV += */
            }
        }
        free(p);
    }
}

/* ------------------------------------------------------------------ MLA k/v split */

/* MLA's absorbed decode attention (contract in ops.h), one (row, head) per item, with the
 * kernels of the engine's own attention (infer.c): scaled dots against the cached rows, the
 * softmax, the weighted sum of their latent parts. One max_keys score buffer per thread. */
static void latent_attention(float *ctx, const float *qf, const float *cache, const int *pos, int N, int n_heads,
                             int row, int kvr, int max_keys, float scale) {
    const fr_cpu_vec *vo = fr_cpu_vec_ops();
    const long items = (long)N * n_heads;
    const int par = items > 1 && (double)items * max_keys * row >= PAR_MIN_WORK;
#pragma omp parallel if (par)
    {
        float *sc = malloc((size_t)(max_keys > 0 ? max_keys : 1) * sizeof(float));
#pragma omp for schedule(dynamic, 1)
        for (long it = 0; it < items; it++) {
            if (!sc) continue;
            const int keys = pos[it / n_heads] + 1;
            float *acc = ctx + (size_t)it * kvr;
            vo->dots(sc, qf + (size_t)it * row, cache, (size_t)row, keys, row, scale);
            const float inv = 1.0f / vo->expsum(sc, sc, keys, vo->max(sc, keys));
            for (int t = 0; t < keys; t++) sc[t] *= inv;
            memset(acc, 0, (size_t)kvr * sizeof(float));
            vo->axpys(acc, sc, cache, (size_t)row, keys, kvr);
        }
        free(sc);
    }
}

static void copy2d(float *dst, int ldd, const float *src, int lds, int rows, int cols) {
    for (int r = 0; r < rows; r++) memmove(dst + (size_t)r * ldd, src + (size_t)r * lds, (size_t)cols * sizeof(float));
}

static void mla_kv_split_forward(float *k, float *v, const float *kv, const float *k_pe, int ld_kpe, int N,
                                 int H, int nope, int rope, int vd) {
    PAR_FOR_IF((long)N * H * (nope + rope + vd) >= PAR_MIN_WORK,
        for (int n = 0; n < N; n++) {
            for (int h = 0; h < H; h++) {
                const float *src = kv + ((size_t)n * H + h) * (nope + vd);
                float *kd = k + ((size_t)n * H + h) * (nope + rope);
                memcpy(kd, src, (size_t)nope * sizeof(float));
                memcpy(kd + nope, k_pe + (size_t)n * ld_kpe, (size_t)rope * sizeof(float));
                memcpy(v + ((size_t)n * H + h) * vd, src + nope, (size_t)vd * sizeof(float));
            }
        }
    );
}

static void mla_kv_split_backward(float *dkv, float *dk_pe, int ld_kpe, const float *dk, const float *dv,
                                  int N, int H, int nope, int rope, int vd) {
    PAR_FOR_IF((long)N * H * (nope + rope + vd) >= PAR_MIN_WORK,
        for (int n = 0; n < N; n++) {
            float *dpe = dk_pe + (size_t)n * ld_kpe;
            memset(dpe, 0, (size_t)rope * sizeof(float));
            for (int h = 0; h < H; h++) {
                float *dst = dkv + ((size_t)n * H + h) * (nope + vd);
                const float *dkr = dk + ((size_t)n * H + h) * (nope + rope);
                memcpy(dst, dkr, (size_t)nope * sizeof(float));
                memcpy(dst + nope, dv + ((size_t)n * H + h) * vd, (size_t)vd * sizeof(float));
                for (int j = 0; j < rope; j++) dpe[j] += dkr[nope + j];
            }
        }
    );
}

/* ------------------------------------------------------------------ SwiGLU, elementwise */

static inline float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }

/* In chunks of SWIGLU_CHUNK (a multiple of every vector width), so that which values take
 * the vector path depends on n alone, not on the number of threads. */
#define SWIGLU_CHUNK 4096
static void swiglu_forward(float *h, const float *g, const float *u, size_t n) {
    const fr_cpu_vec *v = fr_cpu_vec_ops();
    const long chunks = (long)((n + SWIGLU_CHUNK - 1) / SWIGLU_CHUNK);
    PAR_FOR_IF(n >= PAR_MIN_WORK,
        for (long c = 0; c < chunks; c++) {
            const size_t i = (size_t)c * SWIGLU_CHUNK, len = n - i < SWIGLU_CHUNK ? n - i : SWIGLU_CHUNK;
            v->swiglu(h + i, g + i, u + i, (int)len);
        }
    );
}

/* h = g s(g) u:  dg = dh u s (1 + g (1 - s)),  du = dh g s  (dg/du may alias g/u) */
static void swiglu_backward(float *dg, float *du, const float *dh, const float *g, const float *u, size_t n) {
    const fr_cpu_vec *vo = fr_cpu_vec_ops();
    const long chunks = (long)((n + SWIGLU_CHUNK - 1) / SWIGLU_CHUNK);
    PAR_FOR_IF(n >= PAR_MIN_WORK,
        for (long c = 0; c < chunks; c++) {
            const size_t i = (size_t)c * SWIGLU_CHUNK, len = n - i < SWIGLU_CHUNK ? n - i : SWIGLU_CHUNK;
            vo->swiglu_backward(dg + i, du + i, dh + i, g + i, u + i, (int)len);
        }
    );
}

static void add(float *y, const float *a, const float *b, size_t n) {
    PAR_FOR_IF(n >= 4 * PAR_MIN_WORK,
        for (size_t i = 0; i < n; i++) y[i] = a[i] + b[i];
    );
}

static void axpy(float *y, float alpha, const float *x, size_t n) {
    PAR_FOR_IF(n >= 4 * PAR_MIN_WORK,
        for (size_t i = 0; i < n; i++) y[i] += alpha * x[i];
    );
}

/* ------------------------------------------------------------------ cross-entropy
 * Rows whose target is negative (ignored) or >= V (invalid) get loss 0 and zero grad. */
static void cross_entropy(float *losses, float *dlogits, const float *logits, const int *targets, int N,
                          int V, float grad_scale) {
    const fr_cpu_vec *vo = fr_cpu_vec_ops();
    PAR_FOR_IF((long)N * V >= PAR_MIN_WORK && N > 1,
        for (int n = 0; n < N; n++) {
            const float *x = logits + (size_t)n * V;
            float *dx = dlogits ? dlogits + (size_t)n * V : NULL;
            int tg = targets[n];
            if (tg < 0 || tg >= V) {
                losses[n] = 0.f;
                if (dx) memset(dx, 0, (size_t)V * sizeof(float));
                continue;
            }
            float xt = x[tg];
            float m = vo->max(x, V);
            float sum = vo->expsum(dx, x, V, m); /* dx (may alias x) receives exp(x - m) */
            losses[n] = (m + logf(sum)) - xt;
            if (dx) {
                float c = grad_scale / sum;
                for (int i = 0; i < V; i++) dx[i] *= c;
                dx[tg] -= grad_scale;
            }
        }
    );
}

/* ------------------------------------------------------------------ MoE routing */

/* Indices of the k largest values of x[0:n] (k <= n), in descending order of value.
 * Ties go to the lower index: an index never displaces an earlier one of equal value
 * (torch.topk leaves tie order unspecified; this is frugal's documented rule). */
static void topk_desc(const float *x, int n, int k, int *idx) {
    int cnt = 0;
    for (int i = 0; i < n; i++) {
        float xi = x[i];
        int pos = cnt;
        /* find insertion point: after every kept element with value >= xi */
        while (pos > 0 && xi > x[idx[pos - 1]]) pos--;
        if (pos >= k) continue;
        int last = cnt < k ? cnt : k - 1;
        for (int j = last; j > pos; j--) idx[j] = idx[j - 1];
        idx[pos] = i;
        if (cnt < k) cnt++;
    }
}

/* Route one row. choice: E floats, gscore: n_group floats, gidx: n_group ints (scratch). */
static void route_row(int *topk_idx, float *topk_w, float *scores, const float *logits, const float *bias,
                      const fr_route_params *p, float *choice, float *gscore, int *gidx) {
    int E = p->n_experts, K = p->top_k;
    if (p->scoring == FR_SCORING_SOFTMAX) {
        float m = logits[0];
        for (int e = 1; e < E; e++) m = logits[e] > m ? logits[e] : m;
        float sum = 0.f;
        for (int e = 0; e < E; e++) {
            scores[e] = expf(logits[e] - m);
            sum += scores[e];
        }
        for (int e = 0; e < E; e++) scores[e] = scores[e] / sum;
    } else {
        for (int e = 0; e < E; e++) scores[e] = sigmoidf_(logits[e]);
    }
    for (int e = 0; e < E; e++) choice[e] = bias ? scores[e] + bias[e] : scores[e];
    int G = p->n_group;
    if (p->method != FR_TOPK_GREEDY && G > 1 && p->topk_group < G) {
        int per = E / G;
        for (int g = 0; g < G; g++) {
            const float *c = choice + g * per;
            if (p->method == FR_TOPK_NOAUX_TC) { /* sum of the two largest (ties: either) */
                float a = c[0], b2 = per > 1 ? c[1] : 0.f;
                if (b2 > a) { float t = a; a = b2; b2 = t; }
                for (int j = 2; j < per; j++) {
                    if (c[j] > a) { b2 = a; a = c[j]; }
                    else if (c[j] > b2) b2 = c[j];
                }
                gscore[g] = per > 1 ? a + b2 : a;
            } else { /* group-limited greedy: max of the group */
                float a = c[0];
                for (int j = 1; j < per; j++) a = c[j] > a ? c[j] : a;
                gscore[g] = a;
            }
        }
        topk_desc(gscore, G, p->topk_group, gidx);
        /* mask: experts of dropped groups get choice 0.0 (as transformers does) */
        for (int g = 0; g < G; g++) {
            int kept = 0;
            for (int j = 0; j < p->topk_group; j++) kept |= gidx[j] == g;
            if (!kept)
                for (int j = 0; j < per; j++) choice[g * per + j] = 0.0f;
        }
    }
    topk_desc(choice, E, K, topk_idx);
    float denom = 0.f;
    for (int j = 0; j < K; j++) {
        topk_w[j] = scores[topk_idx[j]];
        denom += topk_w[j];
    }
    denom += 1e-20f;
    for (int j = 0; j < K; j++) {
        float w = p->norm_topk_prob ? topk_w[j] / denom : topk_w[j];
        topk_w[j] = w * p->routed_scaling_factor;
    }
}

static void moe_route_forward(int *topk_idx, float *topk_w, float *scores, const float *logits,
                              const float *bias, int N, const fr_route_params *p) {
    int E = p->n_experts, K = p->top_k, G = p->n_group > 0 ? p->n_group : 1;
    const size_t work_bytes = ((size_t)E + G) * sizeof(float) + (size_t)G * sizeof(int);
    if ((long)N * E < PAR_MIN_WORK / 4) { /* decode: one row, no parallel construct (FR_OMP_IF) */
        float *work = malloc(work_bytes);
        for (int n = 0; work && n < N; n++)
            route_row(topk_idx + (size_t)n * K, topk_w + (size_t)n * K, scores + (size_t)n * E,
                      logits + (size_t)n * E, bias, p, work, work + E, (int *)(work + E + G));
        free(work);
        return;
    }
#pragma omp parallel
    {
        float *work = malloc(work_bytes);
#pragma omp for schedule(static)
        for (int n = 0; n < N; n++) {
            if (!work) continue;
            route_row(topk_idx + (size_t)n * K, topk_w + (size_t)n * K, scores + (size_t)n * E,
                      logits + (size_t)n * E, bias, p, work, work + E, (int *)(work + E + G));
        }
        free(work);
    }
}

/* w_k = r s_k / S (S = sum_j s_j + 1e-20) or w_k = r s_k:
 *   ds_k = r (g_k - sum_j g_j s_j / S) / S   or   ds_k = r g_k,
 * then through sigmoid (s (1 - s)) or softmax (s_e (ds_e - sum_j ds_j s_j)). */
static void moe_route_backward(float *dlogits, const float *dtopk_w, const float *dscores_extra,
                               const float *scores, const int *topk_idx, int N, const fr_route_params *p) {
    int E = p->n_experts, K = p->top_k;
    float rsf = p->routed_scaling_factor;
    PAR_FOR_IF((long)N * E >= PAR_MIN_WORK / 4,
        for (int n = 0; n < N; n++) {
            const float *s = scores + (size_t)n * E;
            const int *idx = topk_idx + (size_t)n * K;
            const float *g = dtopk_w + (size_t)n * K;
            float *dl = dlogits + (size_t)n * E;
            /* dl holds dscores until the final activation step */
            if (dscores_extra) memcpy(dl, dscores_extra + (size_t)n * E, (size_t)E * sizeof(float));
            else memset(dl, 0, (size_t)E * sizeof(float));
            if (p->norm_topk_prob) {
                float S = 0.f, gs = 0.f;
                for (int j = 0; j < K; j++) S += s[idx[j]];
                S += 1e-20f;
                for (int j = 0; j < K; j++) gs += g[j] * s[idx[j]];
                for (int j = 0; j < K; j++) dl[idx[j]] += rsf * (g[j] - gs / S) / S;
            } else {
                for (int j = 0; j < K; j++) dl[idx[j]] += rsf * g[j];
            }
            if (p->scoring == FR_SCORING_SOFTMAX) {
                float dot = 0.f;
                for (int e = 0; e < E; e++) dot += dl[e] * s[e];
                for (int e = 0; e < E; e++) dl[e] = s[e] * (dl[e] - dot);
            } else {
                for (int e = 0; e < E; e++) dl[e] = dl[e] * s[e] * (1.0f - s[e]);
            }
        }
    );
}

/* Per sequence b (rows b*T .. b*T+T-1): f_i = E/(K T) count_i, Z_t = sum_j s_tj,
 * P_i = 1/T sum_t s_ti / Z_t, L_b = sum_i f_i P_i,
 * dL_b/ds_tj = (f_j - sum_i f_i s_ti / Z_t) / (T Z_t). */
static void moe_balance_loss(float *loss_per_seq, float *dscores, const float *scores, const int *topk_idx,
                             int B, int T, int E, int K, float grad_scale) {
#pragma omp parallel if ((long)B * T * E >= PAR_MIN_WORK && B > 1)
    {
        float *f = malloc((size_t)2 * E * sizeof(float));
        float *P = f ? f + E : NULL;
#pragma omp for schedule(static)
        for (int b = 0; b < B; b++) {
            if (!f) continue;
            const float *s = scores + (size_t)b * T * E;
            const int *idx = topk_idx + (size_t)b * T * K;
            memset(f, 0, (size_t)2 * E * sizeof(float));
            for (int i = 0; i < T * K; i++)
                if (idx[i] >= 0 && idx[i] < E) f[idx[i]] += 1.f;
            float fs = (float)E / ((float)K * (float)T);
            for (int e = 0; e < E; e++) f[e] *= fs;
            for (int t = 0; t < T; t++) {
                const float *st = s + (size_t)t * E;
                float Z = 0.f;
                for (int e = 0; e < E; e++) Z += st[e];
                float iz = 1.0f / Z;
                for (int e = 0; e < E; e++) P[e] += st[e] * iz;
                if (dscores) {
                    float fsz = 0.f;
                    for (int e = 0; e < E; e++) fsz += f[e] * st[e];
                    fsz *= iz;
                    float c = grad_scale * iz / (float)T;
                    float *ds = dscores + ((size_t)b * T + t) * E;
                    for (int e = 0; e < E; e++) ds[e] += c * (f[e] - fsz);
                }
            }
            float L = 0.f;
            for (int e = 0; e < E; e++) L += f[e] * (P[e] / (float)T);
            loss_per_seq[b] = L;
        }
        free(f);
    }
}

/* ------------------------------------------------------------------ dropless dispatch */

static void moe_permute(int *perm_token, int *slot_pos, int *expert_offsets, const int *topk_idx, int N,
                        int K, int E) {
    for (int e = 0; e <= E; e++) expert_offsets[e] = 0;
    long NK = (long)N * K;
    for (long i = 0; i < NK; i++) expert_offsets[topk_idx[i] + 1]++;
    for (int e = 0; e < E; e++) expert_offsets[e + 1] += expert_offsets[e];
    int *cursor = malloc((size_t)E * sizeof(int));
    if (cursor) {
        memcpy(cursor, expert_offsets, (size_t)E * sizeof(int));
        for (long i = 0; i < NK; i++) {
            int pos = cursor[topk_idx[i]]++;
            perm_token[pos] = (int)(i / K);
            slot_pos[i] = pos;
        }
        free(cursor);
    } else { /* no memory for the cursors: quadratic but correct */
        for (int e = 0; e < E; e++) {
            int pos = expert_offsets[e];
            for (long i = 0; i < NK; i++)
                if (topk_idx[i] == e) {
                    perm_token[pos] = (int)(i / K);
                    slot_pos[i] = pos++;
                }
        }
    }
}

static void moe_dispatch_forward(float *xe, const float *x, const int *perm_token, int NK, int D) {
    PAR_FOR_IF((long)NK * D >= PAR_MIN_WORK,
        for (int i = 0; i < NK; i++)
            memcpy(xe + (size_t)i * D, x + (size_t)perm_token[i] * D, (size_t)D * sizeof(float));
    );
}

static void moe_dispatch_backward(float *dx, const float *dxe, const int *slot_pos, int N, int K, int D) {
    PAR_FOR_IF((long)N * K * D >= PAR_MIN_WORK,
        for (int n = 0; n < N; n++) {
            float *d = dx + (size_t)n * D;
            for (int k = 0; k < K; k++) {
                const float *src = dxe + (size_t)slot_pos[(size_t)n * K + k] * D;
                for (int i = 0; i < D; i++) d[i] += src[i];
            }
        }
    );
}

static void moe_combine_forward(float *out, const float *ye, const float *topk_w, const int *slot_pos, int N,
                                int K, int D) {
    PAR_FOR_IF((long)N * K * D >= PAR_MIN_WORK,
        for (int n = 0; n < N; n++) {
            float *o = out + (size_t)n * D;
            for (int k = 0; k < K; k++) {
                float w = topk_w[(size_t)n * K + k];
                const float *y = ye + (size_t)slot_pos[(size_t)n * K + k] * D;
                for (int i = 0; i < D; i++) o[i] += w * y[i];
            }
        }
    );
}

/* Routing slot i = (token i / K, choice i % K) lies at row slot_pos[i] of dye and ye, the
 * N * K rows sorted by expert (10.5 MB each a layer for the small comparison model: out of
 * cache since the forward). The loop runs in slot order, so that these two are read and
 * written in sequence and only dout's rows (N of them) come out of order: bench_moe_ops, 2
 * cores of the Zen 4 machine, cold caches, 1.0-1.2 -> 0.8-0.9 ms a call (18 -> 26 GB/s). Token
 * order, which the sums of combine forward and dispatch backward need (each output row is one
 * token's), meets the big buffers as K interleaved streams; software prefetching of the next
 * tokens' rows (into L1 or L2, 2 to 16 tokens ahead) did not speed those up. Each row of dye
 * and each dtopk_w is written once, by one thread, with the same arithmetic in either order. */
static inline void moe_combine_backward_slot(float *dye, float *dtopk_w, const float *dout, const float *ye,
                                             const float *topk_w, const fr_cpu_vec *vo, long i, size_t slot, int K,
                                             int D) {
    const float *g = dout + (size_t)(i / K) * D;
    float *d = dye + slot * D;
    for (int e = 0; e < D; e++) d[e] = topk_w[i] * g[e];
    dtopk_w[i] = vo->dot(g, ye + slot * D, D);
}

static void moe_combine_backward(float *dye, float *dtopk_w, const float *dout, const float *ye,
                                 const float *topk_w, const int *slot_pos, int N, int K, int D) {
    const fr_cpu_vec *vo = fr_cpu_vec_ops();
    const long NK = (long)N * K;
    int *slot_of = malloc((size_t)(NK > 0 ? NK : 1) * sizeof(int)); /* the inverse of slot_pos */
    if (!slot_of) { /* no memory for it: token order, the same results */
        for (long i = 0; i < NK; i++) moe_combine_backward_slot(dye, dtopk_w, dout, ye, topk_w, vo, i, (size_t)slot_pos[i], K, D);
        return;
    }
    for (long i = 0; i < NK; i++) slot_of[slot_pos[i]] = (int)i;
    PAR_FOR_IF(NK * D >= PAR_MIN_WORK,
        for (long slot = 0; slot < NK; slot++)
            moe_combine_backward_slot(dye, dtopk_w, dout, ye, topk_w, vo, slot_of[slot], (size_t)slot, K, D);
    );
    free(slot_of);
}

/* ------------------------------------------------------------------ the table */

static const fr_ops cpu_ops = {
    .name = "cpu",
    .host_memory = 1,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .memset0 = cpu_memset0,
    .copy = cpu_copy,
    .to_host = cpu_copy,
    .to_device = cpu_copy,
    .gemm = fr_cpu_gemm,
    .gemm_grouped = fr_cpu_gemm_grouped,
    .gemm_bf16 = fr_cpu_gemm_bf16,
    .fp8_quantize = fr_cpu_fp8_quantize,
    .embedding_forward = embedding_forward,
    .embedding_backward = embedding_backward,
    .rmsnorm_forward = rmsnorm_forward,
    .rmsnorm_backward = rmsnorm_backward,
    .rope_forward = rope_forward,
    .rope_backward = rope_backward,
    .attention_forward = attention_forward,
    .attention_backward = attention_backward,
    .mla_kv_split_forward = mla_kv_split_forward,
    .mla_kv_split_backward = mla_kv_split_backward,
    .latent_attention = latent_attention,
    .copy2d = copy2d,
    .swiglu_forward = swiglu_forward,
    .swiglu_backward = swiglu_backward,
    .add = add,
    .axpy = axpy,
    .cross_entropy = cross_entropy,
    .moe_route_forward = moe_route_forward,
    .moe_route_backward = moe_route_backward,
    .moe_balance_loss = moe_balance_loss,
    .moe_permute = moe_permute,
    .moe_dispatch_forward = moe_dispatch_forward,
    .moe_dispatch_backward = moe_dispatch_backward,
    .moe_combine_forward = moe_combine_forward,
    .moe_combine_backward = moe_combine_backward,
};

const fr_ops *fr_ops_cpu(void) {
    (void)fr_cpu_isa(); /* choose the kernels once, before any op runs */
    return &cpu_ops;
}
