/*
 * test_ops.c — the CPU backend (ops_cpu*.c) against naive double-precision references,
 * hand-checked routing cases and central finite differences.
 *
 * Every test runs once per instruction set the machine supports (generic C, AVX2+FMA,
 * AVX-512F), then the SIMD paths are compared with the generic one and the determinism
 * checks run.
 *
 * Finite differences: L = sum(r * y) with a fixed random r, evaluated in double from the
 * FP32 outputs, central differences with step h on (a random subset of up to 50 of) the
 * input elements. Tolerance: max |numeric - analytic| <= 2e-3 * max |analytic|.
 * Justification: the truncation error of a central difference is O(h^2 f''') ~ 1e-4 *
 * |grad| for h = 1e-2 on these smooth O(1) functions; the FP32 rounding of the outputs
 * (~6e-8 |y| each, summed over <= a few hundred outputs) divided by 2h adds <= ~1e-5.
 * A wrong formula (missing term, wrong sign, wrong index) gives O(1) relative errors.
 */
#include "frugal.h"
#include "core/internal.h"
#include "model/ops.h"
#include "cpu/ops_cpu.h"
#include "testutil.h"

#include <float.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const fr_ops *O;
static fr_rng g_rng;
static const char *g_isa = "generic";

#define FD_TOL 2e-3

static float urand(float lo, float hi) { return lo + (hi - lo) * (float)fr_rng_uniform(&g_rng); }
static void fill(float *x, size_t n, float lo, float hi) {
    for (size_t i = 0; i < n; i++) x[i] = urand(lo, hi);
}
static float *fnew(size_t n) { /* NaN-filled: outputs that must be overwritten */
    float *p = malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) p[i] = NAN;
    return p;
}
static float *frand(size_t n, float lo, float hi) {
    float *p = fnew(n);
    fill(p, n, lo, hi);
    return p;
}
static double dot_rd(const float *r, const float *y, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)r[i] * y[i];
    return s;
}
static int all_finite(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return 0;
    return 1;
}

/* ------------------------------------------------------------------ finite differences */

typedef double (*loss_fn)(void *ctx);

static void check_fd(const char *what, loss_fn L, void *ctx, float *x, size_t n, const float *grad, double h) {
    double gmax = 0;
    for (size_t i = 0; i < n; i++) gmax = fmax(gmax, fabs(grad[i]));
    size_t m = n <= 50 ? n : 50;
    double err = 0;
    size_t worst = 0;
    for (size_t t = 0; t < m; t++) {
        size_t i = n <= 50 ? t : (size_t)(fr_rng_uniform(&g_rng) * n);
        float save = x[i];
        float xp = (float)(save + h), xm = (float)(save - h);
        x[i] = xp;
        double lp = L(ctx);
        x[i] = xm;
        double lm = L(ctx);
        x[i] = save;
        double num = (lp - lm) / ((double)xp - (double)xm);
        double e = fabs(num - grad[i]);
        if (!(e <= err)) {
            err = e;
            worst = i;
        }
    }
    CHECK(err <= FD_TOL * fmax(gmax, 1e-6) && gmax > 0, "[%s] grad %s: max err %.3g (at %zu: analytic %.6g) vs max |g| %.3g",
          g_isa, what, err, worst, grad[worst], gmax);
}

/* ------------------------------------------------------------------ GEMM */

static void gemm_ref(int ta, int tb, int M, int N, int K, double alpha, const float *A, int lda, const float *B,
                     int ldb, double beta, const float *C0, int ldc, float *out /* M x N contiguous */) {
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double s = 0;
            for (int p = 0; p < K; p++)
                s += (double)(ta ? A[(size_t)p * lda + i] : A[(size_t)i * lda + p]) *
                     (double)(tb ? B[(size_t)j * ldb + p] : B[(size_t)p * ldb + j]);
            double c = alpha * s;
            if (beta != 0) c += beta * C0[(size_t)i * ldc + j];
            out[(size_t)i * N + j] = (float)c;
        }
}

static const int gemm_shapes[][3] = {{1, 1, 1},    {7, 13, 5},  {67, 131, 259}, {1, 37, 300},
                                     {45, 1, 70},  {300, 40, 20}, {130, 75, 600}, {9, 4200, 3}};

static void test_gemm(void) {
    const float ab[][2] = {{1.f, 0.f}, {0.7f, 1.f}, {-1.3f, 0.5f}};
    for (size_t s = 0; s < sizeof gemm_shapes / sizeof gemm_shapes[0]; s++) {
        int M = gemm_shapes[s][0], N = gemm_shapes[s][1], K = gemm_shapes[s][2];
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++)
                for (int c = 0; c < 3; c++) {
                    float alpha = ab[c][0], beta = ab[c][1];
                    int lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 5, ldc = N + 2;
                    size_t asz = (size_t)(ta ? K : M) * lda, bsz = (size_t)(tb ? N : K) * ldb, csz = (size_t)M * ldc;
                    float *A = frand(asz, -1, 1), *B = frand(bsz, -1, 1), *C = frand(csz, -1, 1);
                    float *C0 = malloc(csz * sizeof(float)), *ref = fnew((size_t)M * N), *got = fnew((size_t)M * N);
                    if (beta == 0.f)
                        for (int i = 0; i < M; i++)
                            for (int j = 0; j < N; j++) C[(size_t)i * ldc + j] = NAN; /* must not be read */
                    memcpy(C0, C, csz * sizeof(float));
                    gemm_ref(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C0, ldc, ref);
                    O->gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
                    int pad_ok = 1;
                    for (int i = 0; i < M; i++) {
                        memcpy(got + (size_t)i * N, C + (size_t)i * ldc, (size_t)N * sizeof(float));
                        for (int j = N; j < ldc; j++)
                            pad_ok &= memcmp(&C[(size_t)i * ldc + j], &C0[(size_t)i * ldc + j], sizeof(float)) == 0;
                    }
                    double err = fr_rel_err(got, ref, (size_t)M * N);
                    CHECK(err <= 1e-5 && pad_ok, "[%s] gemm ta=%d tb=%d %dx%dx%d alpha=%g beta=%g: rel err %.3g pad %d",
                          g_isa, ta, tb, M, N, K, alpha, beta, err, pad_ok);
                    free(A); free(B); free(C); free(C0); free(ref); free(got);
                }
    }
    /* K == 0 and alpha == 0: C = beta C */
    float C[6] = {1, 2, 3, 4, 5, 6}, A[1] = {NAN}, B[1] = {NAN};
    O->gemm(0, 0, 2, 3, 0, 1.f, A, 1, B, 3, 2.f, C, 3);
    CHECK(C[0] == 2 && C[5] == 12, "[%s] gemm K=0 scales C by beta", g_isa);
    O->gemm(0, 0, 2, 3, 0, 1.f, A, 1, B, 3, 0.f, C, 3);
    CHECK(C[0] == 0 && C[5] == 0, "[%s] gemm K=0 beta=0 zeroes C", g_isa);
}

/* ------------------------------------------------------------------ embedding */

typedef struct {
    float *table, *out, *r;
    int *tok;
    int N, D;
} emb_ctx;

static double emb_loss(void *c) {
    emb_ctx *e = c;
    O->embedding_forward(e->out, e->table, e->tok, e->N, e->D);
    return dot_rd(e->r, e->out, (size_t)e->N * e->D);
}

static void test_embedding(void) {
    int V = 10, D = 12, N = 15;
    int tok[15] = {3, 1, 3, 9, 0, 3, 5, 5, 2, 8, 1, 0, 7, 3, 6};
    emb_ctx e = {frand((size_t)V * D, -1, 1), fnew((size_t)N * D), frand((size_t)N * D, -1, 1), tok, N, D};
    emb_loss(&e);
    CHECK(memcmp(e.out + 5 * D, e.table + 3 * D, D * sizeof(float)) == 0, "[%s] embedding forward", g_isa);
    float *dt = frand((size_t)V * D, -1, 1), *dt0 = malloc((size_t)V * D * sizeof(float));
    memcpy(dt0, dt, (size_t)V * D * sizeof(float));
    O->embedding_backward(dt, e.r, tok, N, D);
    for (int i = 0; i < V * D; i++) dt[i] -= dt0[i]; /* "+=": the increment is the gradient */
    check_fd("embedding dtable", emb_loss, &e, e.table, (size_t)V * D, dt, 1e-2);
    free(e.table); free(e.out); free(e.r); free(dt); free(dt0);
}

/* ------------------------------------------------------------------ RMSNorm */

typedef struct {
    float *x, *w, *y, *rstd, *r;
    int N, D, ldx;
    float eps;
} rms_ctx;

static double rms_loss(void *c) {
    rms_ctx *e = c;
    O->rmsnorm_forward(e->y, e->rstd, e->x, e->ldx, e->w, e->N, e->D, e->eps);
    return dot_rd(e->r, e->y, (size_t)e->N * e->D);
}

static void test_rmsnorm(void) {
    int N = 6, D = 300, ldx = D + 5, lddx = D + 3;
    rms_ctx e = {frand((size_t)N * ldx, -2, 2), frand(D, 0.5f, 1.5f), fnew((size_t)N * D), fnew(N),
                 frand((size_t)N * D, -1, 1), N, D, ldx, 1e-5f};
    rms_loss(&e);
    float *ref = fnew((size_t)N * D), *rref = fnew(N);
    for (int n = 0; n < N; n++) {
        double ss = 0;
        for (int d = 0; d < D; d++) ss += (double)e.x[n * ldx + d] * e.x[n * ldx + d];
        double r = 1.0 / sqrt(ss / D + e.eps);
        rref[n] = (float)r;
        for (int d = 0; d < D; d++) ref[n * D + d] = (float)(e.x[n * ldx + d] * r * e.w[d]);
    }
    CHECK(fr_rel_err(e.y, ref, (size_t)N * D) <= 1e-5 && fr_rel_err(e.rstd, rref, N) <= 1e-5,
          "[%s] rmsnorm forward: %.3g", g_isa, fr_rel_err(e.y, ref, (size_t)N * D));
    float *dx = frand((size_t)N * lddx, -1, 1), *dx0 = malloc((size_t)N * lddx * sizeof(float));
    float *dw = frand(D, -1, 1), *dw0 = malloc(D * sizeof(float));
    memcpy(dx0, dx, (size_t)N * lddx * sizeof(float));
    memcpy(dw0, dw, D * sizeof(float));
    O->rmsnorm_backward(dx, lddx, dw, e.r, e.x, ldx, e.w, e.rstd, N, D);
    /* gradients are accumulated (+=): subtract the initial values; the gaps of the
     * strided rows must be untouched */
    float *gx = calloc((size_t)N * ldx, sizeof(float));
    int gaps_ok = 1;
    for (int n = 0; n < N; n++) {
        for (int d = 0; d < D; d++) gx[n * ldx + d] = dx[n * lddx + d] - dx0[n * lddx + d];
        for (int d = D; d < lddx; d++) gaps_ok &= dx[n * lddx + d] == dx0[n * lddx + d];
    }
    CHECK(gaps_ok, "[%s] rmsnorm backward writes outside rows", g_isa);
    for (int d = 0; d < D; d++) dw[d] -= dw0[d];
    check_fd("rmsnorm dx", rms_loss, &e, e.x, (size_t)N * ldx, gx, 1e-2);
    check_fd("rmsnorm dw", rms_loss, &e, e.w, D, dw, 1e-2);
    free(e.x); free(e.w); free(e.y); free(e.rstd); free(e.r); free(ref); free(rref);
    free(dx); free(dx0); free(dw); free(dw0); free(gx);
}

/* ------------------------------------------------------------------ RoPE */

typedef struct {
    float *x, *x0, *r, *cs, *sn;
    int *pos;
    int N, H, rs, hs, off, rd, il;
} rope_ctx;

static double rope_loss(void *c) {
    rope_ctx *e = c;
    size_t n = (size_t)e->N * e->rs;
    float *y = malloc(n * sizeof(float));
    memcpy(y, e->x, n * sizeof(float));
    O->rope_forward(y, e->N, e->H, e->rs, e->hs, e->off, e->rd, e->pos, e->cs, e->sn, e->il);
    double l = dot_rd(e->r, y, n);
    free(y);
    return l;
}

static void test_rope(void) {
    int N = 4, H = 3, hs = 10, rs = 3 * 10 + 2, off = 2, rd = 6, half = 3, maxpos = 8;
    int pos[4] = {0, 3, 7, 2};
    float *cs = fnew((size_t)maxpos * half), *sn = fnew((size_t)maxpos * half);
    for (int p = 0; p < maxpos; p++)
        for (int i = 0; i < half; i++) {
            double ang = p * pow(10000.0, -2.0 * i / rd);
            cs[p * half + i] = (float)cos(ang);
            sn[p * half + i] = (float)sin(ang);
        }
    for (int il = 0; il < 2; il++) {
        rope_ctx e = {frand((size_t)N * rs, -1, 1), NULL, frand((size_t)N * rs, -1, 1), cs, sn, pos, N, H, rs, hs, off, rd, il};
        float *y = malloc((size_t)N * rs * sizeof(float));
        memcpy(y, e.x, (size_t)N * rs * sizeof(float));
        O->rope_forward(y, N, H, rs, hs, off, rd, pos, cs, sn, il);
        /* reference: pair i as a complex number rotated by e^{i angle} */
        float *ref = malloc((size_t)N * rs * sizeof(float));
        memcpy(ref, e.x, (size_t)N * rs * sizeof(float));
        for (int n = 0; n < N; n++)
            for (int h = 0; h < H; h++)
                for (int i = 0; i < half; i++) {
                    float *b = ref + n * rs + h * hs + off;
                    int i0 = il ? 2 * i : i, i1 = il ? 2 * i + 1 : i + half;
                    double ang = pos[n] * pow(10000.0, -2.0 * i / rd);
                    double re = b[i0], im = b[i1];
                    double zr = re * cos(ang) - im * sin(ang), zi = re * sin(ang) + im * cos(ang);
                    b[i0] = (float)zr;
                    b[i1] = (float)zi;
                }
        CHECK(fr_rel_err(y, ref, (size_t)N * rs) <= 1e-6, "[%s] rope forward interleave=%d: %.3g", g_isa, il,
              fr_rel_err(y, ref, (size_t)N * rs));
        float *g = malloc((size_t)N * rs * sizeof(float));
        memcpy(g, e.r, (size_t)N * rs * sizeof(float));
        O->rope_backward(g, N, H, rs, hs, off, rd, pos, cs, sn, il);
        check_fd(il ? "rope interleave" : "rope halves", rope_loss, &e, e.x, (size_t)N * rs, g, 1e-2);
        free(e.x); free(e.r); free(y); free(ref); free(g);
    }
    free(cs); free(sn);
}

/* ------------------------------------------------------------------ attention */

static void attn_ref(float *out, float *lse, const float *q, const float *k, const float *v, int B, int T, int H,
                     int dqk, int dv, float scale) {
    double *s = malloc((size_t)T * sizeof(double));
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int t = 0; t < T; t++) {
                const float *qt = q + ((size_t)(b * T + t) * H + h) * dqk;
                double m = -INFINITY;
                for (int j = 0; j <= t; j++) {
                    const float *kj = k + ((size_t)(b * T + j) * H + h) * dqk;
                    double d = 0;
                    for (int i = 0; i < dqk; i++) d += (double)qt[i] * kj[i];
                    s[j] = d * scale;
                    m = fmax(m, s[j]);
                }
                double Z = 0;
                for (int j = 0; j <= t; j++) Z += exp(s[j] - m);
                for (int i = 0; i < dv; i++) {
                    double o = 0;
                    for (int j = 0; j <= t; j++) o += exp(s[j] - m) / Z * v[((size_t)(b * T + j) * H + h) * dv + i];
                    out[(size_t)(b * T + t) * H * dv + h * dv + i] = (float)o;
                }
                lse[((size_t)b * H + h) * T + t] = (float)(m + log(Z));
            }
    free(s);
}

typedef struct {
    float *q, *k, *v, *out, *lse, *r;
    int B, T, H, dqk, dv;
    float scale;
} attn_ctx;

static double attn_loss(void *c) {
    attn_ctx *e = c;
    O->attention_forward(e->out, e->lse, e->q, e->k, e->v, e->B, e->T, e->H, e->dqk, e->dv, e->scale);
    return dot_rd(e->r, e->out, (size_t)e->B * e->T * e->H * e->dv);
}

static void test_attention_cfg(int B, int T, int H, int dqk, int dv) {
    size_t nq = (size_t)B * T * H * dqk, nv = (size_t)B * T * H * dv;
    attn_ctx e = {frand(nq, -1, 1), frand(nq, -1, 1), frand(nv, -1, 1), fnew(nv), fnew((size_t)B * H * T),
                  frand(nv, -1, 1), B, T, H, dqk, dv, 1.5f / sqrtf((float)dqk)};
    attn_loss(&e);
    float *ro = fnew(nv), *rl = fnew((size_t)B * H * T);
    attn_ref(ro, rl, e.q, e.k, e.v, B, T, H, dqk, dv, e.scale);
    CHECK(fr_rel_err(e.out, ro, nv) <= 1e-5 && fr_rel_err(e.lse, rl, (size_t)B * H * T) <= 1e-5,
          "[%s] attention forward T=%d dqk=%d dv=%d: out %.3g lse %.3g", g_isa, T, dqk, dv, fr_rel_err(e.out, ro, nv),
          fr_rel_err(e.lse, rl, (size_t)B * H * T));
    float *dq = fnew(nq), *dk = fnew(nq), *dvv = fnew(nv); /* NaN: must be overwritten */
    O->attention_backward(dq, dk, dvv, e.r, e.out, e.lse, e.q, e.k, e.v, B, T, H, dqk, dv, e.scale);
    CHECK(all_finite(dq, nq) && all_finite(dk, nq) && all_finite(dvv, nv), "[%s] attention backward overwrites", g_isa);
    check_fd("attention dq", attn_loss, &e, e.q, nq, dq, 1e-2);
    check_fd("attention dk", attn_loss, &e, e.k, nq, dk, 1e-2);
    check_fd("attention dv", attn_loss, &e, e.v, nv, dvv, 1e-2);
    free(e.q); free(e.k); free(e.v); free(e.out); free(e.lse); free(e.r); free(ro); free(rl);
    free(dq); free(dk); free(dvv);
}

static void test_attention(void) {
    test_attention_cfg(2, 7, 2, 6, 4);
    test_attention_cfg(1, 19, 3, 40, 72); /* exercises the vector bodies and tails */
    test_attention_cfg(2, 70, 2, 48, 32); /* several 16-key blocks of dots, no tail (d = 48) */
}

/* ------------------------------------------------------------------ MLA k/v split */

typedef struct {
    float *kv, *kpe, *k, *v, *rk, *rv;
    int N, H, nope, rope, vd, ld;
} mla_ctx;

static double mla_loss(void *c) {
    mla_ctx *e = c;
    O->mla_kv_split_forward(e->k, e->v, e->kv, e->kpe, e->ld, e->N, e->H, e->nope, e->rope, e->vd);
    return dot_rd(e->rk, e->k, (size_t)e->N * e->H * (e->nope + e->rope)) + dot_rd(e->rv, e->v, (size_t)e->N * e->H * e->vd);
}

static void test_mla_split(void) {
    int N = 3, H = 2, nope = 4, rope = 3, vd = 5, ld = rope + 2;
    size_t nkv = (size_t)N * H * (nope + vd), nk = (size_t)N * H * (nope + rope), nv = (size_t)N * H * vd;
    mla_ctx e = {frand(nkv, -1, 1), frand((size_t)N * ld, -1, 1), fnew(nk), fnew(nv), frand(nk, -1, 1), frand(nv, -1, 1),
                 N, H, nope, rope, vd, ld};
    mla_loss(&e);
    CHECK(e.k[(1 * H + 1) * (nope + rope) + 2] == e.kv[(1 * H + 1) * (nope + vd) + 2] &&
              e.k[(2 * H + 1) * (nope + rope) + nope + 1] == e.kpe[2 * ld + 1] &&
              e.v[(2 * H + 0) * vd + 3] == e.kv[(2 * H + 0) * (nope + vd) + nope + 3],
          "[%s] mla_kv_split forward", g_isa);
    float *dkv = fnew(nkv), *dpe = fnew((size_t)N * ld);
    O->mla_kv_split_backward(dkv, dpe, ld, e.rk, e.rv, N, H, nope, rope, vd);
    for (int n = 0; n < N; n++)
        for (int j = rope; j < ld; j++) dpe[n * ld + j] = 0; /* row padding: not part of the tensor */
    check_fd("mla_kv_split dkv", mla_loss, &e, e.kv, nkv, dkv, 1e-2);
    check_fd("mla_kv_split dk_pe", mla_loss, &e, e.kpe, (size_t)N * ld, dpe, 1e-2);
    free(e.kv); free(e.kpe); free(e.k); free(e.v); free(e.rk); free(e.rv); free(dkv); free(dpe);
}

/* ------------------------------------------------------------------ SwiGLU, elementwise */

typedef struct {
    float *g, *u, *h, *r;
    size_t n;
} swi_ctx;

static double swi_loss(void *c) {
    swi_ctx *e = c;
    O->swiglu_forward(e->h, e->g, e->u, e->n);
    return dot_rd(e->r, e->h, e->n);
}

static void test_swiglu_elementwise(void) {
    size_t n = 37;
    swi_ctx e = {frand(n, -4, 4), frand(n, -2, 2), fnew(n), frand(n, -1, 1), n};
    swi_loss(&e);
    double err = 0;
    for (size_t i = 0; i < n; i++) {
        double g = e.g[i];
        err = fmax(err, fabs(e.h[i] - g / (1 + exp(-g)) * e.u[i]));
    }
    CHECK(err < 1e-5, "[%s] swiglu forward %.3g", g_isa, err);
    {
        /* a long vector (vector body + tail, one chunk) over a wide range and the extremes:
         * within 8 float ulps of the double reference (the SIMD exp is 1-2 ulp), never NaN
         * for finite input; absolute 1e-30 where the result underflows */
        enum { NW = 1003 };
        float gw[NW], uw[NW], hw[NW];
        for (int i = 0; i < NW; i++) {
            gw[i] = -30.f + 60.f * (float)i / (NW - 1);
            uw[i] = (float)(0.5 + 0.001 * i);
        }
        gw[0] = -100.f, gw[1] = 100.f, gw[2] = -1e30f, gw[3] = 1e30f, gw[4] = 0.f, gw[5] = -0.f;
        O->swiglu_forward(hw, gw, uw, NW);
        int bad = 0;
        for (int i = 0; i < NW; i++) {
            const double g = gw[i], ref = g / (1.0 + exp(-g)) * uw[i];
            if (!(fabs(hw[i] - ref) <= 8 * FLT_EPSILON * fabs(ref) + 1e-30)) bad++;
        }
        CHECK(bad == 0, "[%s] swiglu forward, wide range: %d of %d values off", g_isa, bad, NW);
        /* the backward over the same values, against double: within 16 ulps of the terms'
         * magnitudes (1 + g (1 - s) cancels near g = -1.28, so not of the result) */
        float dhw[NW], dgw[NW], duw[NW];
        for (int i = 0; i < NW; i++) dhw[i] = (float)(1.0 - 0.0015 * i);
        O->swiglu_backward(dgw, duw, dhw, gw, uw, NW);
        bad = 0;
        for (int i = 0; i < NW; i++) {
            const double g = gw[i], sg = 1.0 / (1.0 + exp(-g)), d = dhw[i], u = uw[i];
            const double rdg = d * u * sg * (1.0 + g * (1.0 - sg)), rdu = d * g * sg;
            const double mag = fabs(d * u * sg) * (1.0 + fabs(g) * (1.0 - sg));
            if (!(fabs(dgw[i] - rdg) <= 16 * FLT_EPSILON * mag + 1e-30) ||
                !(fabs(duw[i] - rdu) <= 8 * FLT_EPSILON * fabs(rdu) + 1e-30))
                bad++;
        }
        CHECK(bad == 0, "[%s] swiglu backward, wide range: %d of %d values off", g_isa, bad, NW);
    }
    float *dg = fnew(n), *du = fnew(n);
    O->swiglu_backward(dg, du, e.r, e.g, e.u, n);
    check_fd("swiglu dg", swi_loss, &e, e.g, n, dg, 1e-2);
    check_fd("swiglu du", swi_loss, &e, e.u, n, du, 1e-2);
    free(e.g); free(e.u); free(e.h); free(e.r); free(dg); free(du);

    float a[5] = {1, 2, 3, 4, 5}, b[5] = {0.5f, -1, 2, 0, 1}, y[5];
    O->add(y, a, b, 5);
    CHECK(y[0] == 1.5f && y[1] == 1 && y[4] == 6, "[%s] add", g_isa);
    O->add(a, a, b, 5); /* y may alias */
    CHECK(a[2] == 5 && a[3] == 4, "[%s] add aliased", g_isa);
    O->axpy(y, 2.f, b, 5);
    CHECK(y[0] == 2.5f && y[1] == -1 && y[4] == 8, "[%s] axpy", g_isa);
}

/* ------------------------------------------------------------------ cross-entropy */

typedef struct {
    float *logits, *loss;
    int *tg;
    int N, V;
    float gs;
} ce_ctx;

static double ce_loss(void *c) {
    ce_ctx *e = c;
    O->cross_entropy(e->loss, NULL, e->logits, e->tg, e->N, e->V, e->gs);
    double s = 0;
    for (int n = 0; n < e->N; n++) s += e->loss[n];
    return s * e->gs;
}

static void test_cross_entropy(void) {
    const int Vs[2] = {11, 70};
    for (int vi = 0; vi < 2; vi++) {
        int N = 6, V = Vs[vi];
        int tg[6] = {3, FR_IGNORE_INDEX, 0, V - 1, -1, 5};
        ce_ctx e = {frand((size_t)N * V, -3, 3), fnew(N), tg, N, V, 0.37f};
        e.logits[2 * V + 1] = 40.f; /* a large logit: the max-subtraction must hold */
        float *dl = fnew((size_t)N * V);
        O->cross_entropy(e.loss, dl, e.logits, tg, N, V, e.gs);
        double err = 0;
        for (int n = 0; n < N; n++) {
            double ref = 0;
            if (tg[n] >= 0) {
                double m = -INFINITY, z = 0;
                for (int i = 0; i < V; i++) m = fmax(m, e.logits[n * V + i]);
                for (int i = 0; i < V; i++) z += exp(e.logits[n * V + i] - m);
                ref = m + log(z) - e.logits[n * V + tg[n]];
            }
            err = fmax(err, fabs(e.loss[n] - ref) / fmax(1.0, fabs(ref)));
        }
        CHECK(err < 1e-5 && e.loss[1] == 0.f && e.loss[4] == 0.f, "[%s] cross_entropy loss V=%d: %.3g", g_isa, V, err);
        int zero_ok = 1;
        for (int i = 0; i < V; i++) zero_ok &= dl[1 * V + i] == 0.f && dl[4 * V + i] == 0.f;
        CHECK(zero_ok, "[%s] cross_entropy: ignored rows get zero gradient", g_isa);
        /* dlogits aliasing logits gives the same result */
        float *al = malloc((size_t)N * V * sizeof(float)), *l2 = fnew(N);
        memcpy(al, e.logits, (size_t)N * V * sizeof(float));
        O->cross_entropy(l2, al, al, tg, N, V, e.gs);
        CHECK(memcmp(al, dl, (size_t)N * V * sizeof(float)) == 0 && memcmp(l2, e.loss, N * sizeof(float)) == 0,
              "[%s] cross_entropy in place", g_isa);
        check_fd("cross_entropy", ce_loss, &e, e.logits, (size_t)N * V, dl, 1e-2);
        free(e.logits); free(e.loss); free(dl); free(al); free(l2);
    }
}

/* ------------------------------------------------------------------ MoE routing */

static fr_route_params rp(int E, int K, int G, int TG, int method, int scoring, int norm, float rsf) {
    fr_route_params p = {E, K, G, TG, method, scoring, norm, rsf};
    return p;
}

static float logit_of(double s) { return (float)log(s / (1 - s)); }

/* One hand-checked row: expected indices (in order) and expected weights. */
static void route_case(const char *what, const float *logits, const float *bias, const fr_route_params *p,
                       const int *want_idx, const double *want_w) {
    int K = p->top_k, E = p->n_experts;
    int idx[16];
    float w[16], *s = fnew(E);
    O->moe_route_forward(idx, w, s, logits, bias, 1, p);
    int ok = 1;
    double werr = 0;
    for (int k = 0; k < K; k++) {
        ok &= idx[k] == want_idx[k];
        werr = fmax(werr, fabs(w[k] - want_w[k]));
    }
    CHECK(ok && werr < 1e-5, "[%s] route %s: got idx %d %d %d w %.6f %.6f, werr %.3g", g_isa, what, idx[0], idx[1],
          K > 2 ? idx[2] : -1, w[0], w[1], werr);
    free(s);
}

static void test_route_cases(void) {
    /* V3 noaux_tc, 4 groups of 2, keep 2 groups, top-2. Scores (sigmoid):
     * g0 [0.9 0.1] sum 1.0 | g1 [0.6 0.55] 1.15 | g2 [0.58 0.56] 1.14 | g3 [0.2 0.3] 0.5
     * kept groups g1, g2 -> experts 2 (0.6), 4 (0.58); expert 0 (0.9) is masked out. */
    const double sc[8] = {0.9, 0.1, 0.6, 0.55, 0.58, 0.56, 0.2, 0.3};
    float lg[8];
    for (int e = 0; e < 8; e++) lg[e] = logit_of(sc[e]);
    fr_route_params p = rp(8, 2, 4, 2, FR_TOPK_NOAUX_TC, FR_SCORING_SIGMOID, 1, 2.5f);
    {
        int wi[2] = {2, 4};
        double ww[2] = {2.5 * 0.6 / 1.18, 2.5 * 0.58 / 1.18};
        route_case("noaux_tc group mask", lg, NULL, &p, wi, ww);
    }
    { /* without groups (n_group 1) the same scores pick experts 0 and 2 */
        fr_route_params p1 = rp(8, 2, 1, 1, FR_TOPK_NOAUX_TC, FR_SCORING_SIGMOID, 1, 2.5f);
        int wi[2] = {0, 2};
        double ww[2] = {2.5 * 0.9 / 1.5, 2.5 * 0.6 / 1.5};
        route_case("noaux_tc one group", lg, NULL, &p1, wi, ww);
    }
    { /* bias shifts the selection (and the group sums) but not the weights: +0.5 on
       * experts 6 and 7 makes g3's choices [0.7 0.8], sum 1.5 -> groups g3, g1 ->
       * experts 7 (0.8), 6 (0.7), weighted by their unbiased scores 0.3, 0.2 */
        float bias[8] = {0, 0, 0, 0, 0, 0, 0.5f, 0.5f};
        int wi[2] = {7, 6};
        double ww[2] = {2.5 * 0.3 / 0.5, 2.5 * 0.2 / 0.5};
        route_case("noaux_tc bias", lg, bias, &p, wi, ww);
    }
    { /* masked experts get choice 0.0, not -inf (transformers): with bias -1 every kept
       * choice is negative, so the two masked experts of dropped group g0 win.
       * E=4, groups g0 {0,1}, g1 {2,3}; keep 1 group; scores 0.2 0.3 0.6 0.7 -> g1 kept,
       * choices: g0 masked 0.0 0.0, g1 -0.4 -0.3 -> top-2 = experts 0, 1 (tie -> lower first) */
        const double s4[4] = {0.2, 0.3, 0.6, 0.7};
        float l4[4], b4[4] = {-1, -1, -1, -1};
        for (int e = 0; e < 4; e++) l4[e] = logit_of(s4[e]);
        fr_route_params p4 = rp(4, 2, 2, 1, FR_TOPK_NOAUX_TC, FR_SCORING_SIGMOID, 0, 1.0f);
        int wi[2] = {0, 1};
        double ww[2] = {0.2, 0.3};
        route_case("noaux_tc zero fill", l4, b4, &p4, wi, ww);
    }
    { /* V2 group-limited greedy, softmax: probabilities
       * g0 [0.30 0.02] | g1 [0.14 0.13] | g2 [0.25 0.01] | g3 [0.08 0.07]  (sum 1)
       * group max: 0.30 0.14 0.25 0.08; keep 1 group -> experts 0, 1 (greedy would take 0, 4) */
        const double pr[8] = {0.30, 0.02, 0.14, 0.13, 0.25, 0.01, 0.08, 0.07};
        float l8[8];
        for (int e = 0; e < 8; e++) l8[e] = (float)log(pr[e]) + 0.7f; /* softmax is shift invariant */
        fr_route_params pg = rp(8, 2, 4, 1, FR_TOPK_GROUP_LIMITED_GREEDY, FR_SCORING_SOFTMAX, 0, 16.0f);
        int wi[2] = {0, 1};
        double ww[2] = {16 * 0.30, 16 * 0.02};
        route_case("group_limited_greedy keep 1", l8, NULL, &pg, wi, ww);
        /* keep 2 groups: max picks g0 and g2 (a top-2 sum would pick g0 and g1) */
        pg.topk_group = 2;
        int wi2[2] = {0, 4};
        double ww2[2] = {16 * 0.30, 16 * 0.25};
        route_case("group_limited_greedy keep 2", l8, NULL, &pg, wi2, ww2);
        fr_route_params pn = rp(8, 3, 1, 1, FR_TOPK_GREEDY, FR_SCORING_SOFTMAX, 1, 1.0f);
        int wi3[3] = {0, 4, 2};
        double ww3[3] = {0.30 / 0.69, 0.25 / 0.69, 0.14 / 0.69};
        route_case("softmax greedy", l8, NULL, &pn, wi3, ww3);
    }
    { /* greedy sigmoid, ties -> lower index first, order = descending score */
        float lt[6] = {0.5f, 2.0f, 0.5f, 2.0f, -1.0f, 1.0f};
        fr_route_params pt = rp(6, 3, 1, 1, FR_TOPK_GREEDY, FR_SCORING_SIGMOID, 0, 1.0f);
        double s2 = 1 / (1 + exp(-2.0)), s1 = 1 / (1 + exp(-1.0));
        int wi[3] = {1, 3, 5};
        double ww[3] = {s2, s2, s1};
        route_case("greedy ties", lt, NULL, &pt, wi, ww);
    }
}

typedef struct {
    float *logits, *bias, *scores, *w, *r, *r2;
    int *idx, *idx0;
    int N, flipped;
    fr_route_params p;
} route_ctx;

static double route_loss(void *c) {
    route_ctx *e = c;
    int E = e->p.n_experts, K = e->p.top_k;
    O->moe_route_forward(e->idx, e->w, e->scores, e->logits, e->bias, e->N, &e->p);
    if (memcmp(e->idx, e->idx0, (size_t)e->N * K * sizeof(int)) != 0) e->flipped = 1;
    return dot_rd(e->r, e->w, (size_t)e->N * K) + dot_rd(e->r2, e->scores, (size_t)e->N * E);
}

/* Random rows whose selection does not change under +-h perturbations of any logit. */
static void route_fill_stable(route_ctx *e, double h) {
    int E = e->p.n_experts, K = e->p.top_k;
    int idx[64], idx2[64];
    float w[64], s[64];
    for (int n = 0; n < e->N; n++) {
        float *l = e->logits + (size_t)n * E;
        for (int tries = 0; tries < 200; tries++) {
            for (int i = 0; i < E; i++) l[i] = 2.0f * (float)fr_rng_normal(&g_rng);
            O->moe_route_forward(idx, w, s, l, e->bias, 1, &e->p);
            int stable = 1;
            for (int i = 0; i < E && stable; i++)
                for (int sg = -1; sg <= 1 && stable; sg += 2) {
                    float save = l[i];
                    l[i] = (float)(save + 5 * sg * h);
                    O->moe_route_forward(idx2, w, s, l, e->bias, 1, &e->p);
                    l[i] = save;
                    stable = memcmp(idx, idx2, (size_t)K * sizeof(int)) == 0;
                }
            if (stable) break;
        }
    }
}

static void test_route_fd(void) {
    struct {
        const char *name;
        int method, scoring, G, TG, bias;
    } cases[] = {
        {"sigmoid noaux_tc groups+bias", FR_TOPK_NOAUX_TC, FR_SCORING_SIGMOID, 4, 2, 1},
        {"sigmoid greedy", FR_TOPK_GREEDY, FR_SCORING_SIGMOID, 1, 1, 0},
        {"softmax group_limited_greedy", FR_TOPK_GROUP_LIMITED_GREEDY, FR_SCORING_SOFTMAX, 4, 2, 0},
        {"softmax greedy", FR_TOPK_GREEDY, FR_SCORING_SOFTMAX, 1, 1, 0},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
        for (int norm = 0; norm < 2; norm++) {
            int N = 5, E = 16, K = 3;
            route_ctx e;
            memset(&e, 0, sizeof e);
            e.N = N;
            e.p = rp(E, K, cases[c].G, cases[c].TG, cases[c].method, cases[c].scoring, norm, 2.5f);
            e.logits = fnew((size_t)N * E);
            e.bias = cases[c].bias ? frand(E, -0.1f, 0.1f) : NULL;
            e.scores = fnew((size_t)N * E);
            e.w = fnew((size_t)N * K);
            e.r = frand((size_t)N * K, -1, 1);
            e.r2 = frand((size_t)N * E, -1, 1);
            e.idx = malloc((size_t)N * K * sizeof(int));
            e.idx0 = malloc((size_t)N * K * sizeof(int));
            double h = 1e-3;
            route_fill_stable(&e, h);
            O->moe_route_forward(e.idx0, e.w, e.scores, e.logits, e.bias, N, &e.p);
            float *dl = fnew((size_t)N * E);
            O->moe_route_backward(dl, e.r, e.r2, e.scores, e.idx0, N, &e.p);
            char name[128];
            snprintf(name, sizeof name, "moe_route %s norm=%d", cases[c].name, norm);
            check_fd(name, route_loss, &e, e.logits, (size_t)N * E, dl, h);
            CHECK(!e.flipped, "[%s] %s: selection flipped during finite differences", g_isa, name);
            /* without the extra score gradient */
            float *dl2 = fnew((size_t)N * E);
            O->moe_route_backward(dl2, e.r, NULL, e.scores, e.idx0, N, &e.p);
            memset(e.r2, 0, (size_t)N * E * sizeof(float));
            check_fd(name, route_loss, &e, e.logits, (size_t)N * E, dl2, h);
            free(e.logits); free(e.bias); free(e.scores); free(e.w); free(e.r); free(e.r2);
            free(e.idx); free(e.idx0); free(dl); free(dl2);
        }
}

/* ------------------------------------------------------------------ balance loss */

typedef struct {
    float *s, *loss;
    int *idx;
    int B, T, E, K;
    float gs;
} bal_ctx;

static double bal_loss(void *c) {
    bal_ctx *e = c;
    O->moe_balance_loss(e->loss, NULL, e->s, e->idx, e->B, e->T, e->E, e->K, e->gs);
    double l = 0;
    for (int b = 0; b < e->B; b++) l += e->loss[b];
    return l * e->gs;
}

static void test_balance(void) {
    int B = 2, T = 5, E = 6, K = 2;
    bal_ctx e = {frand((size_t)B * T * E, 0.05f, 0.95f), fnew(B), malloc((size_t)B * T * K * sizeof(int)), B, T, E, K, 0.3f};
    for (int n = 0; n < B * T; n++) {
        int a = (int)(fr_rng_uniform(&g_rng) * E), b = (a + 1 + (int)(fr_rng_uniform(&g_rng) * (E - 1))) % E;
        e.idx[n * K] = a;
        e.idx[n * K + 1] = b;
    }
    float *ds = frand((size_t)B * T * E, -1, 1), *ds0 = malloc((size_t)B * T * E * sizeof(float));
    memcpy(ds0, ds, (size_t)B * T * E * sizeof(float));
    O->moe_balance_loss(e.loss, ds, e.s, e.idx, B, T, E, K, e.gs);
    double err = 0;
    for (int b = 0; b < B; b++) {
        double f[16] = {0}, P[16] = {0}, L = 0;
        for (int t = 0; t < T; t++)
            for (int k = 0; k < K; k++) f[e.idx[(b * T + t) * K + k]] += (double)E / (K * T);
        for (int t = 0; t < T; t++) {
            double Z = 0;
            for (int j = 0; j < E; j++) Z += e.s[(b * T + t) * E + j];
            for (int j = 0; j < E; j++) P[j] += e.s[(b * T + t) * E + j] / Z / T;
        }
        for (int i = 0; i < E; i++) L += f[i] * P[i];
        err = fmax(err, fabs(L - e.loss[b]) / L);
    }
    CHECK(err < 1e-5, "[%s] balance loss forward %.3g", g_isa, err);
    for (int i = 0; i < B * T * E; i++) ds[i] -= ds0[i]; /* "+=" */
    check_fd("moe_balance_loss dscores", bal_loss, &e, e.s, (size_t)B * T * E, ds, 1e-3);
    free(e.s); free(e.loss); free(e.idx); free(ds); free(ds0);
}

/* ------------------------------------------------------------------ permute / dispatch / combine */

static void test_permute(void) {
    int N = 6, K = 2, E = 4;
    /* expert 2 gets no token */
    int idx[12] = {1, 0, 3, 1, 0, 3, 1, 3, 0, 1, 3, 0};
    int perm[12], slot[12], off[5];
    O->moe_permute(perm, slot, off, idx, N, K, E);
    /* expert 0: slots (0,1) (2,0) (4,0) (5,1); expert 1: (0,0) (1,1) (3,0) (4,1);
     * expert 3: (1,0) (2,1) (3,1) (5,0) */
    int want_off[5] = {0, 4, 8, 8, 12};
    int ok = memcmp(off, want_off, sizeof off) == 0;
    CHECK(ok, "[%s] moe_permute offsets %d %d %d %d %d", g_isa, off[0], off[1], off[2], off[3], off[4]);
    int want_perm[12] = {0, 2, 4, 5, 0, 1, 3, 4, 1, 2, 3, 5};
    CHECK(memcmp(perm, want_perm, sizeof perm) == 0, "[%s] moe_permute order (stable by token, k)", g_isa);
    int cons = 1;
    for (int i = 0; i < N * K; i++) {
        int e = idx[i], pos = slot[i];
        cons &= perm[pos] == i / K && pos >= off[e] && pos < off[e + 1];
    }
    CHECK(cons, "[%s] moe_permute slot_pos consistent", g_isa);
}

typedef struct {
    float *x, *w, *o0, *Ms, *xe, *ye, *out, *r;
    int *perm, *slot;
    int N, K, D;
} mc_ctx;

static double mc_loss(void *c) {
    mc_ctx *e = c;
    int NK = e->N * e->K;
    size_t nd = (size_t)e->N * e->D;
    O->moe_dispatch_forward(e->xe, e->x, e->perm, NK, e->D);
    for (size_t i = 0; i < (size_t)NK * e->D; i++) e->ye[i] = e->xe[i] * e->Ms[i]; /* a stand-in "expert" */
    memcpy(e->out, e->o0, nd * sizeof(float));
    O->moe_combine_forward(e->out, e->ye, e->w, e->slot, e->N, e->K, e->D);
    return dot_rd(e->r, e->out, nd);
}

static void test_dispatch_combine(void) {
    int N = 5, K = 2, E = 4, D = 7;
    int idx[10], off[5];
    for (int n = 0; n < N; n++) {
        int a = (int)(fr_rng_uniform(&g_rng) * E);
        idx[n * K] = a;
        idx[n * K + 1] = (a + 1 + (int)(fr_rng_uniform(&g_rng) * (E - 1))) % E;
    }
    size_t nd = (size_t)N * D, nkd = (size_t)N * K * D;
    mc_ctx e = {frand(nd, -1, 1), frand((size_t)N * K, 0, 1), frand(nd, -1, 1), frand(nkd, -2, 2), fnew(nkd), fnew(nkd),
                fnew(nd), frand(nd, -1, 1), malloc(N * K * sizeof(int)), malloc(N * K * sizeof(int)), N, K, D};
    O->moe_permute(e.perm, e.slot, off, idx, N, K, E);
    mc_loss(&e);
    /* forward against a direct computation */
    double err = 0;
    for (int n = 0; n < N; n++)
        for (int d = 0; d < D; d++) {
            double o = e.o0[n * D + d];
            for (int k = 0; k < K; k++) o += e.w[n * K + k] * e.x[n * D + d] * e.Ms[(size_t)e.slot[n * K + k] * D + d];
            err = fmax(err, fabs(o - e.out[n * D + d]));
        }
    CHECK(err < 1e-5, "[%s] dispatch/combine forward %.3g", g_isa, err);
    float *dye = fnew(nkd), *dw = fnew((size_t)N * K), *dx = frand(nd, -1, 1), *dx0 = malloc(nd * sizeof(float));
    memcpy(dx0, dx, nd * sizeof(float));
    O->moe_combine_backward(dye, dw, e.r, e.ye, e.w, e.slot, N, K, D);
    for (size_t i = 0; i < nkd; i++) dye[i] *= e.Ms[i]; /* through the stand-in expert: dxe */
    O->moe_dispatch_backward(dx, dye, e.slot, N, K, D);
    for (size_t i = 0; i < nd; i++) dx[i] -= dx0[i]; /* "+=" */
    check_fd("moe dispatch/combine dx", mc_loss, &e, e.x, nd, dx, 1e-2);
    check_fd("moe combine dtopk_w", mc_loss, &e, e.w, (size_t)N * K, dw, 1e-2);
    free(e.x); free(e.w); free(e.o0); free(e.Ms); free(e.xe); free(e.ye); free(e.out); free(e.r);
    free(e.perm); free(e.slot); free(dye); free(dw); free(dx); free(dx0);
}

/* ------------------------------------------------------------------ determinism, cross-ISA */

static void run_gemm(int ta, int tb, int M, int N, int K, const float *A, const float *B, float *C) {
    O->gemm(ta, tb, M, N, K, 1.f, A, ta ? M : K, B, tb ? K : N, 0.f, C, N);
}

/* gemm_grouped: products of different shapes (an empty one, K = 0, M = 1) in one call equal
 * the same products made one gemm call at a time, bit for bit (gemm's result does not depend
 * on the thread count, test_determinism), for beta 0 (C holding NaN, not read) and beta 1;
 * C's padding columns stay untouched. */
static void test_gemm_grouped(void) {
    enum { NG = 7 };
    const int shape[NG][3] = {{300, 96, 256}, {1, 96, 256}, {0, 96, 256}, {57, 96, 0}, {129, 96, 256}, {640, 96, 256},
                              {33, 96, 17}};
    for (int t = 0; t < 4; t++) {
        const int ta = t & 1, tb = t >> 1;
        for (int bi = 0; bi < 2; bi++) {
            const float beta = bi ? 1.0f : 0.0f;
            fr_gemm_desc g[NG];
            float *A[NG], *B[NG], *C[NG], *R[NG];
            for (int i = 0; i < NG; i++) {
                const int M = shape[i][0], N = shape[i][1], K = shape[i][2], ldc = N + 3;
                A[i] = frand((size_t)(M ? M : 1) * (K ? K : 1), -1, 1);
                B[i] = frand((size_t)(K ? K : 1) * N, -1, 1);
                C[i] = frand((size_t)(M ? M : 1) * ldc, -1, 1);
                R[i] = fnew((size_t)(M ? M : 1) * ldc);
                if (!bi)
                    for (int r = 0; r < M; r++)
                        for (int c = 0; c < N; c++) C[i][(size_t)r * ldc + c] = NAN;
                memcpy(R[i], C[i], (size_t)(M ? M : 1) * ldc * sizeof(float));
                g[i] = (fr_gemm_desc){M, N, K, A[i], ta ? M : K, B[i], tb ? K : N, C[i], ldc};
                O->gemm(ta, tb, M, N, K, 0.5f, A[i], ta ? M : K, B[i], tb ? K : N, beta, R[i], ldc);
            }
            O->gemm_grouped(ta, tb, 0.5f, beta, g, NG);
            int same = 1;
            for (int i = 0; i < NG; i++)
                if (shape[i][0] && memcmp(C[i], R[i], (size_t)shape[i][0] * (shape[i][1] + 3) * sizeof(float)) != 0)
                    same = 0;
            CHECK(same, "[%s] gemm_grouped ta=%d tb=%d beta=%g equals one gemm at a time, bit for bit", g_isa, ta, tb,
                  beta);
            for (int i = 0; i < NG; i++) free(A[i]), free(B[i]), free(C[i]), free(R[i]);
        }
    }
}

static void test_determinism(void) {
    int M = 200, N = 300, K = 700;
    float *A = frand((size_t)M * K, -1, 1), *B = frand((size_t)K * N, -1, 1);
    float *C1 = fnew((size_t)M * N), *C2 = fnew((size_t)M * N), *C3 = fnew((size_t)M * N);
    int nth = omp_get_max_threads();
    fr_set_num_threads(2);
    run_gemm(0, 1, M, N, K, A, B, C1);
    run_gemm(0, 1, M, N, K, A, B, C2);
    fr_set_num_threads(1);
    run_gemm(0, 1, M, N, K, A, B, C3);
    fr_set_num_threads(nth);
    CHECK(memcmp(C1, C2, (size_t)M * N * sizeof(float)) == 0, "[%s] gemm not bitwise reproducible", g_isa);
    CHECK(memcmp(C1, C3, (size_t)M * N * sizeof(float)) == 0, "[%s] gemm depends on the thread count", g_isa);
    free(A); free(B); free(C1); free(C2); free(C3);

    int Bt = 2, T = 33, H = 3, dqk = 24, dv = 16;
    size_t nq = (size_t)Bt * T * H * dqk, nv = (size_t)Bt * T * H * dv;
    float *q = frand(nq, -1, 1), *k = frand(nq, -1, 1), *v = frand(nv, -1, 1), *o = fnew(nv), *lse = fnew((size_t)Bt * H * T);
    float *dout = frand(nv, -1, 1);
    float *g1 = fnew(2 * nq + nv), *g2 = fnew(2 * nq + nv), *g3 = fnew(2 * nq + nv);
    O->attention_forward(o, lse, q, k, v, Bt, T, H, dqk, dv, 0.2f);
    fr_set_num_threads(2);
    O->attention_backward(g1, g1 + nq, g1 + 2 * nq, dout, o, lse, q, k, v, Bt, T, H, dqk, dv, 0.2f);
    O->attention_backward(g2, g2 + nq, g2 + 2 * nq, dout, o, lse, q, k, v, Bt, T, H, dqk, dv, 0.2f);
    fr_set_num_threads(1);
    O->attention_backward(g3, g3 + nq, g3 + 2 * nq, dout, o, lse, q, k, v, Bt, T, H, dqk, dv, 0.2f);
    fr_set_num_threads(nth);
    CHECK(memcmp(g1, g2, (2 * nq + nv) * sizeof(float)) == 0, "[%s] attention_backward not bitwise reproducible", g_isa);
    CHECK(memcmp(g1, g3, (2 * nq + nv) * sizeof(float)) == 0, "[%s] attention_backward depends on the thread count", g_isa);
    free(q); free(k); free(v); free(o); free(lse); free(dout); free(g1); free(g2); free(g3);
}

/* The attention helpers over several heads (fr_cpu_vec.dots_heads / axpys_heads) against one
 * dots / axpys call per head, bit for bit (the decode and many-row attention paths rely on
 * it), and against a double-precision reference within 1e-5 relative (FP32 sums of <= 320
 * products of O(1) terms: ~1e-6). Head counts around the 4-head tile, key counts around the
 * 16-key block, widths around the 16- and 64-float vectors; the gaps between the heads'
 * output rows must stay untouched. */
static void test_vec_heads(void) {
    const fr_cpu_vec *vo = fr_cpu_vec_ops();
    const int nhs[] = {1, 3, 4, 5, 8}, rowss[] = {1, 15, 16, 17, 35}, ds[] = {320, 256, 100, 37, 64};
    for (int a = 0; a < 5; a++)
        for (int b = 0; b < 5; b++)
            for (int c = 0; c < 5; c++) {
                const int nh = nhs[a], rows = rowss[b], d = ds[c];
                const size_t os = (size_t)rows + 3, qs = (size_t)d + 5, ks = (size_t)d + 7, as = (size_t)d + 2;
                float *q = frand(nh * qs, -1, 1), *K = frand(rows * ks, -1, 1);
                float *o1 = fnew(nh * os), *o2 = fnew(nh * os);
                vo->dots_heads(o1, os, q, qs, nh, K, ks, rows, d, 0.125f);
                for (int h = 0; h < nh; h++) vo->dots(o2 + h * os, q + h * qs, K, ks, rows, d, 0.125f);
                CHECK(memcmp(o1, o2, nh * os * sizeof(float)) == 0, "[%s] dots_heads nh %d rows %d d %d: not the bits of dots",
                      g_isa, nh, rows, d);
                double worst = 0;
                for (int h = 0; h < nh; h++)
                    for (int j = 0; j < rows; j++) {
                        double r = 0, m = 0;
                        for (int i = 0; i < d; i++) {
                            r += (double)q[h * qs + i] * K[j * ks + i];
                            m += fabs((double)q[h * qs + i] * K[j * ks + i]);
                        }
                        const double e = fabs(o1[h * os + j] - 0.125 * r) / (0.125 * m + 1e-30);
                        worst = e > worst ? e : worst;
                    }
                CHECK(worst <= 1e-5, "[%s] dots_heads nh %d rows %d d %d: error %.3g vs double", g_isa, nh, rows, d, worst);
                for (int h = 0; h < nh; h++)
                    for (size_t j = rows; j < os; j++)
                        CHECK(isnan(o1[h * os + j]), "[%s] dots_heads wrote past its rows", g_isa);

                float *p = frand(nh * os, 0, 1), *a1 = frand(nh * as, -1, 1), *a2 = fnew(nh * as);
                float *a0 = fnew(nh * as);
                memcpy(a2, a1, nh * as * sizeof(float));
                memcpy(a0, a1, nh * as * sizeof(float));
                for (int h = 0; h < nh; h++) a1[h * as + d] = a2[h * as + d] = a0[h * as + d] = NAN; /* a gap */
                vo->axpys_heads(a1, as, p, os, nh, K, ks, rows, d);
                for (int h = 0; h < nh; h++) vo->axpys(a2 + h * as, p + h * os, K, ks, rows, d);
                CHECK(memcmp(a1, a2, nh * as * sizeof(float)) == 0, "[%s] axpys_heads nh %d rows %d d %d: not the bits of axpys",
                      g_isa, nh, rows, d);
                worst = 0;
                for (int h = 0; h < nh; h++) {
                    CHECK(isnan(a1[h * as + d]), "[%s] axpys_heads wrote past its width", g_isa);
                    for (int i = 0; i < d; i++) {
                        double r = a0[h * as + i], m = fabs(r);
                        for (int j = 0; j < rows; j++) {
                            r += (double)p[h * os + j] * K[j * ks + i];
                            m += fabs((double)p[h * os + j] * K[j * ks + i]);
                        }
                        const double e = fabs(a1[h * as + i] - r) / (m + 1e-30);
                        worst = e > worst ? e : worst;
                    }
                }
                CHECK(worst <= 1e-5, "[%s] axpys_heads nh %d rows %d d %d: error %.3g vs double", g_isa, nh, rows, d, worst);
                free(q); free(K); free(o1); free(o2); free(p); free(a0); free(a1); free(a2);
            }
}

/* The SIMD paths against the generic one on the same inputs. */
static void test_cross_isa(void) {
    int M = 67, N = 131, K = 259;
    float *A = frand((size_t)M * K, -1, 1), *B = frand((size_t)K * N, -1, 1);
    float *Cg = fnew((size_t)M * N), *Cs = fnew((size_t)M * N);
    int Bt = 1, T = 21, H = 2, dqk = 40, dv = 24;
    size_t nq = (size_t)Bt * T * H * dqk, nv = (size_t)Bt * T * H * dv;
    float *q = frand(nq, -1, 1), *k = frand(nq, -1, 1), *v = frand(nv, -1, 1);
    float *og = fnew(nv), *os = fnew(nv), *lg = fnew((size_t)H * T), *ls = fnew((size_t)H * T);
    fr_cpu_set_isa(FR_ISA_GENERIC);
    O->gemm(1, 0, M, N, K, 1.f, A, M, B, N, 0.f, Cg, N);
    O->attention_forward(og, lg, q, k, v, Bt, T, H, dqk, dv, 0.3f);
    for (int isa = FR_ISA_AVX2; isa <= FR_ISA_AVX512; isa++) {
        if (!fr_cpu_isa_supported(isa)) continue;
        fr_cpu_set_isa(isa);
        O->gemm(1, 0, M, N, K, 1.f, A, M, B, N, 0.f, Cs, N);
        O->attention_forward(os, ls, q, k, v, Bt, T, H, dqk, dv, 0.3f);
        double e1 = fr_rel_err(Cs, Cg, (size_t)M * N), e2 = fr_rel_err(os, og, nv), e3 = fr_rel_err(ls, lg, (size_t)H * T);
        CHECK(e1 <= 1e-5 && e2 <= 1e-5 && e3 <= 1e-5, "%s vs generic: gemm %.3g attention %.3g lse %.3g",
              fr_cpu_isa_name(isa), e1, e2, e3);
    }
    fr_cpu_set_isa(-1);
    free(A); free(B); free(Cg); free(Cs); free(q); free(k); free(v); free(og); free(os); free(lg); free(ls);
}

int main(void) {
    O = fr_ops_cpu();
    CHECK(O && O->gemm && O->moe_combine_backward && strcmp(O->name, "cpu") == 0, "fr_ops_cpu table");
    const char *feat = fr_cpu_features();
    CHECK(feat && feat[0], "fr_cpu_features");
    printf("cpu features: %s; default kernels: %s\n", feat, fr_cpu_isa_name(fr_cpu_isa()));
    void *p = O->alloc(100);
    CHECK(p && ((uintptr_t)p & 63) == 0 && ((unsigned char *)p)[99] == 0, "alloc: aligned, zeroed");
    O->free(p);

    /* our kernels on every instruction set (oneDNN, when built in, is tested after them) */
    fr_cpu_gemm_set_onednn(0);
    for (int isa = FR_ISA_GENERIC; isa <= FR_ISA_AVX512; isa++) {
        if (!fr_cpu_isa_supported(isa)) {
            printf("(%s kernels not supported here: skipped)\n", fr_cpu_isa_name(isa));
            continue;
        }
        fr_cpu_set_isa(isa);
        g_isa = fr_cpu_isa_name(isa);
        fr_rng_seed(&g_rng, 1234);
        test_gemm();
        test_embedding();
        test_rmsnorm();
        test_rope();
        test_attention();
        test_vec_heads();
        test_gemm_grouped();
        test_mla_split();
        test_swiglu_elementwise();
        test_cross_entropy();
        test_route_cases();
        test_route_fd();
        test_balance();
        test_permute();
        test_dispatch_combine();
        test_determinism();
    }
    fr_cpu_set_isa(-1);
    fr_cpu_gemm_set_onednn(1);
    if (fr_cpu_gemm_uses_onednn()) {
        /* the same contract (alpha, beta, transposes, padding, K = 0, bitwise reproducible and
         * independent of the thread count) through oneDNN's dnnl_sgemm */
        g_isa = "onednn";
        fr_rng_seed(&g_rng, 1234);
        test_gemm();
        test_determinism();
    } else {
        printf("(built without oneDNN: its SGEMM path not tested)\n");
    }
    fr_cpu_gemm_set_onednn(-1);
    g_isa = fr_cpu_isa_name(fr_cpu_isa());
    test_cross_isa();
    return fr_test_finish("test_ops");
}
