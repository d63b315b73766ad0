/*
 * test_cuda_ops.c — every op of the CUDA backend against the CPU backend on random inputs,
 * on a machine with an NVIDIA GPU (CTest label gpu). Without one (or in a build without CUDA)
 * it prints "skipped: no GPU" and exits 77, which CTest reports as skipped.
 *
 * Tolerances, as fr_rel_err (max |gpu - cpu| / max |cpu|): 1e-5 for FP32 GEMMs (cuBLAS in
 * pedantic FP32, a different summation order), 1e-4 for the BF16 GEMM (both sides round the
 * operands to the same BF16 values and accumulate in FP32; a K of 300 reorders more sums) and
 * 1e-2 with TF32 (FRUGAL_CUDA_TF32=1: 10-bit mantissa products); 1e-5 for the row reductions
 * and attention, 1e-6 for elementwise ops, exact for copies, permutations, routing choices and
 * the FP8 quantizer (an exact rule on both sides). The atomics of the embedding and attention
 * backward add in another order: 1e-5.
 */
#include "core/internal.h"
#include "cuda/kernels_optim.cuh"
#include "cuda/ops_cuda.h"
#include "model/ops.h"
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const fr_ops *C, *G; /* the CPU and the CUDA backend */
static fr_rng g_rng;


/* a device copy of host data (n bytes) */
static void *up(const void *host, size_t n) {
    void *d = G->alloc(n ? n : 1);
    G->to_device(d, host, n);
    return d;
}

/* rel error of device array d against host array h (n floats) */
static double err_dev(const float *d, const float *h, size_t n) {
    float *x = malloc((n ? n : 1) * sizeof(float));
    G->to_host(x, d, n * sizeof(float));
    const double e = fr_rel_err(x, h, n);
    free(x);
    return e;
}

static int same_dev_ints(const int *d, const int *h, size_t n) {
    int *x = malloc((n ? n : 1) * sizeof(int));
    G->to_host(x, d, n * sizeof(int));
    const int same = memcmp(x, h, n * sizeof(int)) == 0;
    free(x);
    return same;
}

static void status(const char *what) {
    char why[256];
    CHECK(fr_cuda_status(why, sizeof why) == 0, "%s: %s", what, why);
}

static void test_gemm(int ta, int tb, int M, int N, int K, int bf16) {
    const int lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 1, ldc = N + 2;
    const size_t na = (size_t)(ta ? K : M) * lda, nb = (size_t)(tb ? N : K) * ldb, nc = (size_t)M * ldc;
    float *A = fr_test_frand(&g_rng, na, -1, 1), *B = fr_test_frand(&g_rng, nb, -1, 1), *Cc = fr_test_frand(&g_rng, nc, -1, 1);
    float *dA = up(A, na * 4), *dB = up(B, nb * 4), *dC = up(Cc, nc * 4);
    if (bf16) {
        C->gemm_bf16(ta, tb, M, N, K, 0.5f, A, lda, B, ldb, 1.0f, Cc, ldc);
        CHECK(G->gemm_bf16(ta, tb, M, N, K, 0.5f, dA, lda, dB, ldb, 1.0f, dC, ldc) == 0, "gemm_bf16 ran");
    } else {
        C->gemm(ta, tb, M, N, K, 0.5f, A, lda, B, ldb, 1.0f, Cc, ldc);
        G->gemm(ta, tb, M, N, K, 0.5f, dA, lda, dB, ldb, 1.0f, dC, ldc);
    }
    status("gemm");
    const char *tf32 = getenv("FRUGAL_CUDA_TF32");
    const double tol = tf32 && !strcmp(tf32, "1") ? 1e-2 : bf16 ? 1e-4 : 1e-5, e = err_dev(dC, Cc, nc);
    CHECK(e <= tol, "%s %c%c %dx%dx%d: %.3g (tol %.0e)", bf16 ? "gemm_bf16" : "gemm", ta ? 'T' : 'N', tb ? 'T' : 'N', M,
          N, K, e, tol);
    free(A), free(B), free(Cc), G->free(dA), G->free(dB), G->free(dC);
}

static void test_grouped(void) {
    fr_gemm_desc hc[3], hg[3];
    const int shapes[3][3] = {{5, 7, 3}, {0, 4, 2}, {33, 17, 65}};
    void *keep[9];
    float *hostC[3];
    for (int i = 0; i < 3; i++) {
        const int M = shapes[i][0], N = shapes[i][1], K = shapes[i][2];
        float *A = fr_test_frand(&g_rng, (size_t)M * K + 1, -1, 1), *B = fr_test_frand(&g_rng, (size_t)N * K + 1, -1, 1), *Cm = fr_test_frand(&g_rng, (size_t)M * N + 1, -1, 1);
        hc[i] = (fr_gemm_desc){M, N, K, A, K, B, K, Cm, N};
        hg[i] = (fr_gemm_desc){M, N, K, up(A, ((size_t)M * K + 1) * 4), K, up(B, ((size_t)N * K + 1) * 4), K,
                               up(Cm, ((size_t)M * N + 1) * 4), N};
        keep[3 * i] = A, keep[3 * i + 1] = B, keep[3 * i + 2] = Cm;
        hostC[i] = Cm;
    }
    C->gemm_grouped(0, 1, 1.0f, 1.0f, hc, 3);
    G->gemm_grouped(0, 1, 1.0f, 1.0f, hg, 3);
    status("gemm_grouped");
    for (int i = 0; i < 3; i++) {
        const double e = err_dev(hg[i].C, hostC[i], (size_t)shapes[i][0] * shapes[i][1]);
        CHECK(e <= 1e-5, "gemm_grouped product %d: %.3g", i, e);
        G->free((void *)hg[i].A), G->free((void *)hg[i].B), G->free(hg[i].C);
    }
    for (int i = 0; i < 9; i++) free(keep[i]);
}

static void test_fp8(int rows, int cols, int tr, int tc) {
    const size_t n = (size_t)rows * cols, tiles = (size_t)((rows + tr - 1) / tr) * ((cols + tc - 1) / tc);
    float *x = fr_test_frand(&g_rng, n, -3, 3), *y = fr_test_frand(&g_rng, n, 0, 0), *s = fr_test_frand(&g_rng, tiles, 0, 0);
    float *dx = up(x, n * 4), *dy = up(y, n * 4), *ds = up(s, tiles * 4);
    const long bc = C->fp8_quantize(y, cols, s, x, cols, rows, cols, tr, tc);
    const long bg = G->fp8_quantize(dy, cols, ds, dx, cols, rows, cols, tr, tc);
    status("fp8_quantize");
    CHECK(bc == 0 && bg == 0 && err_dev(dy, y, n) == 0 && err_dev(ds, s, tiles) == 0, "fp8 %dx%d in %dx%d tiles", rows,
          cols, tr, tc);
    free(x), free(y), free(s), G->free(dx), G->free(dy), G->free(ds);
}

static void test_rows(void) {
    const int N = 37, D = 200, V = 1000;
    float *x = fr_test_frand(&g_rng, (size_t)N * D, -2, 2), *w = fr_test_frand(&g_rng, D, 0.5f, 1.5f), *y = fr_test_frand(&g_rng, (size_t)N * D, 0, 0), *r = fr_test_frand(&g_rng, N, 0, 0);
    float *dx = up(x, (size_t)N * D * 4), *dw = up(w, D * 4), *dy = up(y, (size_t)N * D * 4), *dr = up(r, N * 4);
    C->rmsnorm_forward(y, r, x, D, w, N, D, 1e-6f);
    G->rmsnorm_forward(dy, dr, dx, D, dw, N, D, 1e-6f);
    status("rmsnorm_forward");
    CHECK(err_dev(dy, y, (size_t)N * D) <= 1e-5 && err_dev(dr, r, N) <= 1e-5, "rmsnorm forward");
    float *g = fr_test_frand(&g_rng, (size_t)N * D, -1, 1), *gx = fr_test_frand(&g_rng, (size_t)N * D, -1, 1), *gw = fr_test_frand(&g_rng, D, -1, 1);
    float *dg = up(g, (size_t)N * D * 4), *dgx = up(gx, (size_t)N * D * 4), *dgw = up(gw, D * 4);
    C->rmsnorm_backward(gx, D, gw, g, x, D, w, r, N, D);
    G->rmsnorm_backward(dgx, D, dgw, dg, dx, D, dw, dr, N, D);
    status("rmsnorm_backward");
    CHECK(err_dev(dgx, gx, (size_t)N * D) <= 1e-5 && err_dev(dgw, gw, D) <= 1e-5, "rmsnorm backward");
    /* cross-entropy */
    float *lg = fr_test_frand(&g_rng, (size_t)N * V, -8, 8), *loss = fr_test_frand(&g_rng, N, 0, 0), *dl = fr_test_frand(&g_rng, (size_t)N * V, 0, 0);
    int *t = malloc(N * sizeof(int));
    for (int n = 0; n < N; n++) t[n] = n == 3 ? -100 : (int)(fr_rng_next(&g_rng) % V);
    float *dlg = up(lg, (size_t)N * V * 4), *dloss = up(loss, N * 4), *ddl = up(dl, (size_t)N * V * 4);
    int *dt = up(t, N * sizeof(int));
    C->cross_entropy(loss, dl, lg, t, N, V, 0.5f);
    G->cross_entropy(dloss, ddl, dlg, dt, N, V, 0.5f);
    status("cross_entropy");
    CHECK(err_dev(dloss, loss, N) <= 1e-5 && err_dev(ddl, dl, (size_t)N * V) <= 1e-5, "cross-entropy");
    free(x), free(w), free(y), free(r), free(g), free(gx), free(gw), free(lg), free(loss), free(dl), free(t);
    void *dev[] = {dx, dw, dy, dr, dg, dgx, dgw, dlg, dloss, ddl, dt};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) G->free(dev[i]);
}

static void test_attention(int B, int T, int H, int dqk, int dv) {
    const size_t nq = (size_t)B * T * H * dqk, nv = (size_t)B * T * H * dv, nl = (size_t)B * H * T;
    const float scale = 1.0f / sqrtf((float)dqk);
    float *q = fr_test_frand(&g_rng, nq, -1, 1), *k = fr_test_frand(&g_rng, nq, -1, 1), *v = fr_test_frand(&g_rng, nv, -1, 1), *o = fr_test_frand(&g_rng, nv, 0, 0), *l = fr_test_frand(&g_rng, nl, 0, 0);
    float *dq_ = up(q, nq * 4), *dk_ = up(k, nq * 4), *dv_ = up(v, nv * 4), *do_ = up(o, nv * 4), *dl_ = up(l, nl * 4);
    C->attention_forward(o, l, q, k, v, B, T, H, dqk, dv, scale);
    G->attention_forward(do_, dl_, dq_, dk_, dv_, B, T, H, dqk, dv, scale);
    status("attention_forward");
    CHECK(err_dev(do_, o, nv) <= 1e-5 && err_dev(dl_, l, nl) <= 1e-5, "attention forward B%d T%d H%d %d/%d", B, T, H,
          dqk, dv);
    float *g = fr_test_frand(&g_rng, nv, -1, 1), *gq = fr_test_frand(&g_rng, nq, 0, 0), *gk = fr_test_frand(&g_rng, nq, 0, 0), *gv = fr_test_frand(&g_rng, nv, 0, 0);
    float *dg = up(g, nv * 4), *dgq = up(gq, nq * 4), *dgk = up(gk, nq * 4), *dgv = up(gv, nv * 4);
    C->attention_backward(gq, gk, gv, g, o, l, q, k, v, B, T, H, dqk, dv, scale);
    G->attention_backward(dgq, dgk, dgv, dg, do_, dl_, dq_, dk_, dv_, B, T, H, dqk, dv, scale);
    status("attention_backward");
    CHECK(err_dev(dgq, gq, nq) <= 1e-5 && err_dev(dgk, gk, nq) <= 1e-5 && err_dev(dgv, gv, nv) <= 1e-5,
          "attention backward B%d T%d H%d", B, T, H);
    free(q), free(k), free(v), free(o), free(l), free(g), free(gq), free(gk), free(gv);
    void *dev[] = {dq_, dk_, dv_, do_, dl_, dg, dgq, dgk, dgv};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) G->free(dev[i]);
}

/* the inference engine's decode attention over one sequence's latent cache (N rows at
 * positions first .. first + N - 1; a long cache splits the keys), and the strided copy */
static void test_latent(int N, int nh, int kvr, int rope, int first) {
    const int row = kvr + rope, keys = first + N;
    const float scale = 0.1f;
    const size_t nq = (size_t)N * nh * row, nc = (size_t)keys * row, no = (size_t)N * nh * kvr;
    float *qf = fr_test_frand(&g_rng, nq, -2, 2), *cache = fr_test_frand(&g_rng, nc, -1, 1), *ctx = fr_test_frand(&g_rng, no, 0, 0);
    int *pos = malloc((size_t)N * sizeof(int));
    for (int n = 0; n < N; n++) pos[n] = first + n;
    float *dq = up(qf, nq * 4), *dc = up(cache, nc * 4), *dctx = up(ctx, no * 4);
    int *dpos = up(pos, (size_t)N * sizeof(int));
    C->latent_attention(ctx, qf, cache, pos, N, nh, row, kvr, keys, scale);
    G->latent_attention(dctx, dq, dc, dpos, N, nh, row, kvr, keys, scale);
    status("latent_attention");
    CHECK(err_dev(dctx, ctx, no) <= 1e-5, "latent attention N%d heads %d kvr %d keys %d", N, nh, kvr, keys);
    /* copy2d: the rope columns of every row */
    float *dst = fr_test_frand(&g_rng, nq, 0, 0), *ddst = up(dst, nq * 4);
    C->copy2d(dst, row, cache + kvr, row, keys < N * nh ? keys : N * nh, rope);
    G->copy2d(ddst, row, dc + kvr, row, keys < N * nh ? keys : N * nh, rope);
    status("copy2d");
    CHECK(err_dev(ddst, dst, nq) == 0, "copy2d");
    free(qf), free(cache), free(ctx), free(pos), free(dst);
    void *dev[] = {dq, dc, dctx, dpos, ddst};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) G->free(dev[i]);
}

static void test_moe(void) {
    const int N = 64, E = 16, K = 4, D = 24;
    const fr_route_params p = {E, K, 4, 2, 0 /* noaux_tc */, 0 /* sigmoid */, 1, 2.5f};
    float *lg = fr_test_frand(&g_rng, (size_t)N * E, -3, 3), *bias = fr_test_frand(&g_rng, E, -0.1f, 0.1f);
    int *idx = malloc((size_t)N * K * sizeof(int));
    float *w = fr_test_frand(&g_rng, (size_t)N * K, 0, 0), *sc = fr_test_frand(&g_rng, (size_t)N * E, 0, 0);
    float *dlg = up(lg, (size_t)N * E * 4), *dbias = up(bias, E * 4), *dw = up(w, (size_t)N * K * 4),
          *dsc = up(sc, (size_t)N * E * 4);
    int *didx = up(idx, (size_t)N * K * sizeof(int));
    C->moe_route_forward(idx, w, sc, lg, bias, N, &p);
    G->moe_route_forward(didx, dw, dsc, dlg, dbias, N, &p);
    status("moe_route_forward");
    CHECK(same_dev_ints(didx, idx, (size_t)N * K) && err_dev(dw, w, (size_t)N * K) <= 1e-6 &&
              err_dev(dsc, sc, (size_t)N * E) <= 1e-6,
          "moe route forward");
    float *gw = fr_test_frand(&g_rng, (size_t)N * K, -1, 1), *gl = fr_test_frand(&g_rng, (size_t)N * E, 0, 0);
    float *dgw = up(gw, (size_t)N * K * 4), *dgl = up(gl, (size_t)N * E * 4);
    C->moe_route_backward(gl, gw, NULL, sc, idx, N, &p);
    G->moe_route_backward(dgl, dgw, NULL, dsc, didx, N, &p);
    status("moe_route_backward");
    CHECK(err_dev(dgl, gl, (size_t)N * E) <= 1e-6, "moe route backward");
    int *perm = malloc((size_t)N * K * sizeof(int)), *pos = malloc((size_t)N * K * sizeof(int));
    int off_c[17], off_g[17];
    int *dperm = up(perm, (size_t)N * K * 4), *dpos = up(pos, (size_t)N * K * 4);
    C->moe_permute(perm, pos, off_c, idx, N, K, E);
    G->moe_permute(dperm, dpos, off_g, didx, N, K, E);
    status("moe_permute");
    CHECK(same_dev_ints(dperm, perm, (size_t)N * K) && same_dev_ints(dpos, pos, (size_t)N * K) &&
              !memcmp(off_c, off_g, sizeof off_c),
          "moe permute");
    float *x = fr_test_frand(&g_rng, (size_t)N * D, -1, 1), *xe = fr_test_frand(&g_rng, (size_t)N * K * D, 0, 0);
    float *dx = up(x, (size_t)N * D * 4), *dxe = up(xe, (size_t)N * K * D * 4);
    C->moe_dispatch_forward(xe, x, perm, N * K, D);
    G->moe_dispatch_forward(dxe, dx, dperm, N * K, D);
    status("moe_dispatch_forward");
    CHECK(err_dev(dxe, xe, (size_t)N * K * D) == 0, "moe dispatch forward");
    float *out = fr_test_frand(&g_rng, (size_t)N * D, -1, 1), *dout = up(out, (size_t)N * D * 4);
    C->moe_combine_forward(out, xe, w, pos, N, K, D);
    G->moe_combine_forward(dout, dxe, dw, dpos, N, K, D);
    status("moe_combine_forward");
    CHECK(err_dev(dout, out, (size_t)N * D) <= 1e-6, "moe combine forward");
    float *dye = fr_test_frand(&g_rng, (size_t)N * K * D, 0, 0), *dtw = fr_test_frand(&g_rng, (size_t)N * K, 0, 0);
    float *ddye = up(dye, (size_t)N * K * D * 4), *ddtw = up(dtw, (size_t)N * K * 4);
    C->moe_combine_backward(dye, dtw, x, xe, w, pos, N, K, D);
    G->moe_combine_backward(ddye, ddtw, dx, dxe, dw, dpos, N, K, D);
    status("moe_combine_backward");
    CHECK(err_dev(ddye, dye, (size_t)N * K * D) <= 1e-6 && err_dev(ddtw, dtw, (size_t)N * K) <= 1e-6,
          "moe combine backward");
    C->moe_dispatch_backward(out, dye, pos, N, K, D);
    G->moe_dispatch_backward(dout, ddye, dpos, N, K, D);
    status("moe_dispatch_backward");
    CHECK(err_dev(dout, out, (size_t)N * D) <= 1e-6, "moe dispatch backward");
    float *bl = fr_test_frand(&g_rng, 4, 0, 0), *dbl = up(bl, 16), *ds = fr_test_frand(&g_rng, (size_t)N * E, 0, 0), *dds = up(ds, (size_t)N * E * 4);
    C->moe_balance_loss(bl, ds, sc, idx, 4, N / 4, E, K, 0.1f);
    G->moe_balance_loss(dbl, dds, dsc, didx, 4, N / 4, E, K, 0.1f);
    status("moe_balance_loss");
    CHECK(err_dev(dbl, bl, 4) <= 1e-5 && err_dev(dds, ds, (size_t)N * E) <= 1e-5, "moe balance loss");
    free(lg), free(bias), free(idx), free(w), free(sc), free(gw), free(gl), free(perm), free(pos), free(x), free(xe);
    free(out), free(dye), free(dtw), free(bl), free(ds);
    void *dev[] = {dlg, dbias, dw, dsc, didx, dgw, dgl, dperm, dpos, dx, dxe, dout, ddye, ddtw, dbl, dds};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) G->free(dev[i]);
}

static void test_elementwise(void) {
    const size_t n = 100003;
    float *g = fr_test_frand(&g_rng, n, -6, 6), *u = fr_test_frand(&g_rng, n, -2, 2), *h = fr_test_frand(&g_rng, n, 0, 0);
    float *dg = up(g, n * 4), *du = up(u, n * 4), *dh = up(h, n * 4);
    C->swiglu_forward(h, g, u, n);
    G->swiglu_forward(dh, dg, du, n);
    status("swiglu_forward");
    CHECK(err_dev(dh, h, n) <= 1e-6, "swiglu forward");
    C->axpy(h, 0.5f, g, n);
    G->axpy(dh, 0.5f, dg, n);
    C->add(h, h, u, n);
    G->add(dh, dh, du, n);
    status("axpy, add");
    CHECK(err_dev(dh, h, n) <= 1e-6, "axpy and add");
    free(g), free(u), free(h), G->free(dg), G->free(du), G->free(dh);
}

/* the optimizer in device memory against its bodies run on the host (which test_device_guard
 * holds to the CPU's optim.c bit for bit): 1e-6 (the GPU may fuse multiply-adds) */
static void test_optim(int bf16) {
    const size_t n = 70001, es = bf16 ? 2 : 4;
    float *p = fr_test_frand(&g_rng, n, -1, 1), *g = fr_test_frand(&g_rng, n, -1, 1), *m = fr_test_frand(&g_rng, n, -0.1f, 0.1f), *v = fr_test_frand(&g_rng, n, 0, 0.01f);
    unsigned char *hm = malloc(n * es), *hv = malloc(n * es);
    for (size_t i = 0; i < n; i++) {
        if (bf16) ((uint16_t *)hm)[i] = fr_k_bf16_encode(m[i]), ((uint16_t *)hv)[i] = fr_k_bf16_encode(v[i]);
        else ((float *)hm)[i] = m[i], ((float *)hv)[i] = v[i];
    }
    float *dp = up(p, n * 4), *dg = up(g, n * 4);
    void *dm = up(hm, n * es), *dv = up(hv, n * es);
    const fr_adamw_step_consts k = {0.9f, 0.95f, 1e-8f, 0.5f, 1e-3f, 1.3f, 0.999f};
    for (size_t i = 0; i < n; i++) fr_k_adamw(i, p, g, hm, hv, bf16, &k);
    G->adamw(dp, dg, dm, dv, bf16, n, k);
    status("adamw");
    CHECK(err_dev(dp, p, n) <= 1e-6, "adamw (%s moments): %.3g", bf16 ? "bf16" : "fp32", err_dev(dp, p, n));
    double part_h[2], part_d[2], *dpart = G->alloc(2 * sizeof(double));
    for (size_t c = 0; c < 2; c++) fr_k_sumsq_chunk(c, part_h, g, n, 65536);
    G->sumsq_chunks(dpart, dg, n, 65536);
    G->to_host(part_d, dpart, sizeof part_d);
    G->free(dpart);
    status("sumsq_chunks");
    CHECK(fabs(part_d[0] - part_h[0]) <= 1e-12 * part_h[0] && fabs(part_d[1] - part_h[1]) <= 1e-12 * part_h[1],
          "sumsq chunks %.17g / %.17g", part_d[0], part_h[0]);
    free(p), free(g), free(m), free(v), free(hm), free(hv), G->free(dp), G->free(dg), G->free(dm), G->free(dv);
}

int main(void) {
    char why[256] = {0};
    G = fr_ops_cuda(why, sizeof why);
    if (!G) {
        printf("test_cuda_ops: skipped: no GPU (%s)\n", why);
        return 77;
    }
    C = fr_ops_cpu();
    fr_rng_seed(&g_rng, 7);
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            test_gemm(ta, tb, 67, 45, 300, 0);
            test_gemm(ta, tb, 67, 45, 300, 1);
        }
    test_grouped();
    test_fp8(130, 300, 1, 128);
    test_fp8(300, 130, 128, 128);
    test_fp8(300, 130, 128, 1);
    test_rows();
    test_attention(2, 17, 3, 24, 16);
    test_attention(1, 130, 2, 192, 128);
    test_latent(1, 16, 512, 64, 3000); /* DeepSeek-V3's widths, one decoded row, 47 key splits */
    test_latent(64, 4, 64, 32, 100);   /* a prefill chunk */
    test_moe();
    test_elementwise();
    test_optim(0);
    test_optim(1);
    return fr_test_finish("test_cuda_ops");
}
