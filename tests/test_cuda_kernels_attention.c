/*
 * test_cuda_kernels_attention.c — the CUDA backend's attention bodies (src/cuda/
 * kernels_attention.cuh), compiled here as C and run on the host over their whole index space
 * (i = 0 .. B*H*T - 1, one call after another: FR_ATOMIC_ADD is a plain +=). This checks the
 * arithmetic and the indexing without a GPU; launch shapes, races and the atomics' order are
 * for a GPU test.
 *
 * 1. Against the CPU backend (fr_ops_cpu) on random inputs, for B 1-3, T 1, 2, 17, 64, 130,
 *    H 1-4, (dqk, dv) in {24, 192} x {16, 128} (192 = MLA's nope 128 + rope 64; 128 = its v
 *    head) plus dv = FR_ATTN_MAX_DV, scale 1/sqrt(dqk).
 *    Measure: fr_rel_err = max |body - cpu| / max |cpu| over the whole tensor.
 *    Tolerances: out, lse <= 1e-5; dq, dk, dv <= 1e-4. Both sides are FP32 with different
 *    summation orders (the CPU one tiles GEMMs and exponentiates against the row max, the body
 *    keeps an online softmax); each side's error is a few ulps times sqrt(terms), ~1e-6 of the
 *    largest value, and the backward sums up to T = 130 products per dk / dv element (~1e-6
 *    too). A wrong index, a missing rescale or a wrong sign gives O(1) errors.
 *    T = 1 is the exception for dq and dk: a query that sees one key has p = 1 and
 *    ds = p (dp - D) = 0, so dq = dk = 0 in exact arithmetic. The CPU's GEMM-ordered dp and
 *    D leave rounding noise there (~3e-8), against which a relative error means nothing; the
 *    body computes dp and D_t with the same dot over the same values (out_t = v_0 exactly,
 *    as p = 1), so its dq and dk must be exactly 0 (printed as the max |value|).
 * 2. Finite differences independent of the CPU backend: tiny cases, a double-precision
 *    forward written here, L = sum(out * r) with a fixed random r, central differences with
 *    step 1e-4 on every element of q, k and v, compared with the body backward given
 *    dout = r and the body forward's out and lse.
 *    Measure: max |analytic - numeric| / max |numeric| per tensor, tolerance 1e-4. The
 *    central difference's truncation error is O(h^2 |L'''|) ~ 1e-8 and its rounding ~1e-16 / h
 *    ~ 1e-12, so the difference is the FP32 error of the body backward (~1e-6). The body
 *    forward is checked against the same double forward (out, lse <= 1e-5 as above).
 * The backward overwrites dq (NaN-filled beforehand here); dk and dval are zeroed first, as
 * fr_cuda_attention_backward does with cudaMemsetAsync (the bodies only add into them).
 */
#include "frugal.h"
#include "core/internal.h"
#include "model/ops.h"
#include "cuda/kernels_attention.cuh"
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define FWD_TOL 1e-5
#define BWD_TOL 1e-4
#define FD_STEP 1e-4

static fr_rng g_rng;
static double g_worst[5]; /* largest measured error: out, lse, dq, dk, dv (vs the CPU) */
static double g_fd_worst[3];

static double max_abs(const float *x, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++)
        if (!(fabs((double)x[i]) <= m)) m = fabs((double)x[i]); /* NaN propagates */
    return m;
}
static int all_finite(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return 0;
    return 1;
}

/* The bodies over the whole index space, as the kernels' grid-stride loops would */
static void body_forward(float *out, float *lse, const float *q, const float *k, const float *v, int B, int T, int H,
                         int dqk, int dv, float scale) {
    const size_t n = (size_t)B * H * T;
    for (size_t i = 0; i < n; i++) fr_attention_forward_body(out, lse, q, k, v, T, H, dqk, dv, scale, i);
}
static void body_backward(float *dq, float *dk, float *dval, const float *dout, const float *out, const float *lse,
                          const float *q, const float *k, const float *v, int B, int T, int H, int dqk, int dv,
                          float scale) {
    const size_t n = (size_t)B * H * T;
    /* as the launcher: dk, dval cleared (the bodies add into them); dq is left as it is */
    memset(dk, 0, (size_t)B * T * H * dqk * sizeof(float));
    memset(dval, 0, (size_t)B * T * H * dv * sizeof(float));
    for (size_t i = 0; i < n; i++)
        fr_attention_backward_body(dq, dk, dval, dout, out, lse, q, k, v, T, H, dqk, dv, scale, i);
}

/* ------------------------------------------------------------------ vs the CPU backend */

static void test_vs_cpu(const fr_ops *O, int B, int T, int H, int dqk, int dv) {
    const size_t nq = (size_t)B * T * H * dqk, nv = (size_t)B * T * H * dv, nl = (size_t)B * H * T;
    const float scale = 1.0f / sqrtf((float)dqk);
    /* q, k in [-2, 2]: scores of standard deviation ~1.3 after the scale, softmax rows far
     * from uniform, so the online max changes often and matters */
    float *q = fr_test_frand(&g_rng, nq, -2, 2), *k = fr_test_frand(&g_rng, nq, -2, 2), *v = fr_test_frand(&g_rng, nv, -1, 1), *dout = fr_test_frand(&g_rng, nv, -1, 1);
    float *out = fr_test_fnew(nv), *lse = fr_test_fnew(nl), *rout = fr_test_fnew(nv), *rlse = fr_test_fnew(nl);
    body_forward(out, lse, q, k, v, B, T, H, dqk, dv, scale);
    O->attention_forward(rout, rlse, q, k, v, B, T, H, dqk, dv, scale);
    const double eo = fr_rel_err(out, rout, nv), el = fr_rel_err(lse, rlse, nl);
    CHECK(all_finite(out, nv) && all_finite(lse, nl), "forward B=%d T=%d H=%d dqk=%d dv=%d writes every out / lse", B,
          T, H, dqk, dv);
    CHECK(eo <= FWD_TOL && el <= FWD_TOL, "forward B=%d T=%d H=%d dqk=%d dv=%d: out %.3g lse %.3g (tol %.0e)", B, T, H,
          dqk, dv, eo, el, FWD_TOL);

    /* backward of both from the CPU's out / lse, so that only the backward differs */
    float *dq = fr_test_fnew(nq), *dk = fr_test_fnew(nq), *dvv = fr_test_fnew(nv), *rdq = fr_test_fnew(nq), *rdk = fr_test_fnew(nq), *rdv = fr_test_fnew(nv);
    body_backward(dq, dk, dvv, dout, rout, rlse, q, k, v, B, T, H, dqk, dv, scale);
    O->attention_backward(rdq, rdk, rdv, dout, rout, rlse, q, k, v, B, T, H, dqk, dv, scale);
    double eq = fr_rel_err(dq, rdq, nq), ek = fr_rel_err(dk, rdk, nq);
    const double ev = fr_rel_err(dvv, rdv, nv);
    if (T == 1) { /* dq = dk = 0 exactly: the CPU's are rounding noise, no relative measure (top) */
        eq = max_abs(dq, nq);
        ek = max_abs(dk, nq);
        CHECK(eq == 0 && ek == 0, "backward B=%d T=1 H=%d dqk=%d dv=%d: dq, dk not exactly 0 (max %.3g, %.3g)", B, H,
              dqk, dv, eq, ek);
    }
    CHECK(all_finite(dq, nq) && all_finite(dk, nq) && all_finite(dvv, nv),
          "backward B=%d T=%d H=%d dqk=%d dv=%d writes every dq / dk / dv", B, T, H, dqk, dv);
    CHECK(eq <= BWD_TOL && ek <= BWD_TOL && ev <= BWD_TOL,
          "backward B=%d T=%d H=%d dqk=%d dv=%d: dq %.3g dk %.3g dv %.3g (tol %.0e)", B, T, H, dqk, dv, eq, ek, ev,
          BWD_TOL);
    printf("  B=%d T=%3d H=%d dqk=%3d dv=%3d: out %.2e lse %.2e dq %.2e dk %.2e dv %.2e\n", B, T, H, dqk, dv, eo, el,
           eq, ek, ev);
    const double e[5] = {eo, el, eq, ek, ev};
    for (int j = 0; j < 5; j++)
        if (!(e[j] <= g_worst[j])) g_worst[j] = e[j];
    free(q); free(k); free(v); free(dout); free(out); free(lse); free(rout); free(rlse);
    free(dq); free(dk); free(dvv); free(rdq); free(rdk); free(rdv);
}

/* ------------------------------------------------------------------ finite differences */

typedef struct {
    double *q, *k, *v; /* the point, in double (copies of the FP32 inputs, perturbed) */
    const float *r;    /* L = sum(out * r) */
    int B, T, H, dqk, dv;
    double scale;
} fd_ctx;

/* Causal attention in double, straight from the definition (two passes: max, then sums).
 * Writes out [B*T, H*dv] and lse [B, H, T] when non-NULL; returns sum(out * r). */
static double ref_forward(const fd_ctx *c, double *out, double *lse) {
    const int B = c->B, T = c->T, H = c->H, dqk = c->dqk, dv = c->dv;
    double *s = malloc((size_t)T * sizeof(double)), L = 0;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int t = 0; t < T; t++) {
                const double *qt = c->q + ((size_t)(b * T + t) * H + h) * dqk;
                double m = -INFINITY, Z = 0;
                for (int j = 0; j <= t; j++) {
                    const double *kj = c->k + ((size_t)(b * T + j) * H + h) * dqk;
                    double d = 0;
                    for (int x = 0; x < dqk; x++) d += qt[x] * kj[x];
                    s[j] = d * c->scale;
                    m = fmax(m, s[j]);
                }
                for (int j = 0; j <= t; j++) Z += exp(s[j] - m);
                for (int x = 0; x < dv; x++) {
                    double o = 0;
                    for (int j = 0; j <= t; j++) o += exp(s[j] - m) / Z * c->v[((size_t)(b * T + j) * H + h) * dv + x];
                    const size_t oi = (size_t)(b * T + t) * H * dv + (size_t)h * dv + x;
                    if (out) out[oi] = o;
                    L += o * c->r[oi];
                }
                if (lse) lse[((size_t)b * H + h) * T + t] = m + log(Z);
            }
    free(s);
    return L;
}

static double rel_err_d(const float *a, const double *ref, size_t n) {
    double md = 0, mr = 0;
    for (size_t i = 0; i < n; i++) {
        const double d = fabs((double)a[i] - ref[i]);
        if (!(d <= md)) md = d; /* NaN propagates */
        if (fabs(ref[i]) > mr) mr = fabs(ref[i]);
    }
    return md / (mr > 1e-30 ? mr : 1e-30);
}

/* max |grad - central difference| / max |central difference| over every element of x (the
 * central difference is the reference, as in fr_rel_err; both exactly 0 gives 0) */
static double fd_err(fd_ctx *c, double *x, size_t n, const float *grad) {
    double md = 0, mn = 0;
    for (size_t i = 0; i < n; i++) {
        const double save = x[i];
        x[i] = save + FD_STEP;
        const double lp = ref_forward(c, NULL, NULL);
        x[i] = save - FD_STEP;
        const double lm = ref_forward(c, NULL, NULL);
        x[i] = save;
        const double num = (lp - lm) / (2 * FD_STEP), d = fabs(num - (double)grad[i]);
        if (!(d <= md)) md = d; /* NaN propagates */
        if (fabs(num) > mn) mn = fabs(num);
    }
    return md / (mn > 1e-30 ? mn : 1e-30);
}

static double *to_double(const float *x, size_t n) {
    double *d = malloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) d[i] = x[i];
    return d;
}

static void test_fd(int B, int T, int H, int dqk, int dv, float qk_range, float scale) {
    const size_t nq = (size_t)B * T * H * dqk, nv = (size_t)B * T * H * dv, nl = (size_t)B * H * T;
    float *q = fr_test_frand(&g_rng, nq, -qk_range, qk_range), *k = fr_test_frand(&g_rng, nq, -qk_range, qk_range), *v = fr_test_frand(&g_rng, nv, -1, 1);
    float *r = fr_test_frand(&g_rng, nv, -1, 1);
    fd_ctx c = {to_double(q, nq), to_double(k, nq), to_double(v, nv), r, B, T, H, dqk, dv, (double)scale};
    double *rout = malloc(nv * sizeof(double)), *rlse = malloc(nl * sizeof(double));
    ref_forward(&c, rout, rlse);

    float *out = fr_test_fnew(nv), *lse = fr_test_fnew(nl);
    body_forward(out, lse, q, k, v, B, T, H, dqk, dv, scale);
    const double eo = rel_err_d(out, rout, nv), el = rel_err_d(lse, rlse, nl);
    CHECK(eo <= FWD_TOL && el <= FWD_TOL, "fd case B=%d T=%d H=%d dqk=%d dv=%d: forward vs double out %.3g lse %.3g",
          B, T, H, dqk, dv, eo, el);

    float *dq = fr_test_fnew(nq), *dk = fr_test_fnew(nq), *dvv = fr_test_fnew(nv);
    body_backward(dq, dk, dvv, r, out, lse, q, k, v, B, T, H, dqk, dv, scale); /* dL/dout = r */
    const double e[3] = {fd_err(&c, c.q, nq, dq), fd_err(&c, c.k, nq, dk), fd_err(&c, c.v, nv, dvv)};
    CHECK(e[0] <= BWD_TOL && e[1] <= BWD_TOL && e[2] <= BWD_TOL,
          "fd case B=%d T=%d H=%d dqk=%d dv=%d scale %.3g: dq %.3g dk %.3g dv %.3g (tol %.0e)", B, T, H, dqk, dv,
          (double)scale, e[0], e[1], e[2], BWD_TOL);
    printf("  fd B=%d T=%d H=%d dqk=%d dv=%d scale %.3g: out %.2e lse %.2e dq %.2e dk %.2e dv %.2e\n", B, T, H, dqk,
           dv, (double)scale, eo, el, e[0], e[1], e[2]);
    for (int j = 0; j < 3; j++)
        if (!(e[j] <= g_fd_worst[j])) g_fd_worst[j] = e[j];
    free(q); free(k); free(v); free(r); free(c.q); free(c.k); free(c.v); free(rout); free(rlse);
    free(out); free(lse); free(dq); free(dk); free(dvv);
}

/* ------------------------------------------------------------------ latent decode attention */

static double g_latent_worst;

/* The two bodies over their index spaces (split as fr_cuda_latent_attention would with a
 * scratch of max_items partials) against the CPU backend's latent_attention. N rows at
 * positions first_pos .. first_pos + N - 1 (a prefill chunk, or one decoded row for N = 1). */
static void test_latent(const fr_ops *O, int N, int nh, int kvr, int rope, int first_pos, size_t max_items) {
    const int row = kvr + rope, keys = first_pos + N;
    const float scale = 1.0f / sqrtf((float)(128 + rope));
    float *qf = fr_test_frand(&g_rng, (size_t)N * nh * row, -2, 2), *cache = fr_test_frand(&g_rng, (size_t)keys * row, -1, 1);
    float *ctx = fr_test_fnew((size_t)N * nh * kvr), *ref = fr_test_fnew((size_t)N * nh * kvr);
    int *pos = malloc((size_t)N * sizeof(int));
    for (int n = 0; n < N; n++) pos[n] = first_pos + n;
    int n_split, chunk;
    fr_latent_attention_split(N, nh, keys, max_items, &n_split, &chunk);
    const size_t items = (size_t)n_split * N * nh;
    float *pm = fr_test_fnew(items), *pl = fr_test_fnew(items), *pacc = fr_test_fnew(items * kvr);
    for (size_t i = 0; i < items; i++)
        fr_latent_attention_partial_body(pm, pl, pacc, qf, cache, pos, N, nh, row, kvr, chunk, scale, i);
    for (size_t i = 0; i < (size_t)N * nh * kvr; i++)
        fr_latent_attention_combine_body(ctx, pm, pl, pacc, N, nh, kvr, n_split, i);
    O->latent_attention(ref, qf, cache, pos, N, nh, row, kvr, keys, scale);
    const size_t n = (size_t)N * nh * kvr;
    const double e = fr_rel_err(ctx, ref, n);
    CHECK(all_finite(ctx, n) && n_split * chunk >= keys && e <= FWD_TOL,
          "latent N=%d heads=%d kvr=%d rope=%d keys=%d (%d splits of %d): %.3g (tol %.0e)", N, nh, kvr, rope, keys,
          n_split, chunk, e, FWD_TOL);
    if (!(e <= g_latent_worst)) g_latent_worst = e;
    free(qf); free(cache); free(ctx); free(ref); free(pos); free(pm); free(pl); free(pacc);
}

int main(void) {
    const fr_ops *O = fr_ops_cpu();
    CHECK(O && O->attention_forward && O->attention_backward, "fr_ops_cpu table");
    if (!O) return fr_test_finish("test_cuda_kernels_attention");
    CHECK(FR_ATTN_MAX_DV >= 128, "FR_ATTN_MAX_DV %d holds DeepSeek-V3's v head (128)", FR_ATTN_MAX_DV);
    fr_rng_seed(&g_rng, 20240611);

    printf("bodies vs the CPU backend (max |err| / max |cpu|):\n");
    static const int Ts[] = {1, 2, 17, 64, 130};
    static const int dims[][2] = {{24, 16}, {192, 128}, {24, 128}, {192, 16}};
    int n = 0;
    for (size_t a = 0; a < sizeof Ts / sizeof Ts[0]; a++)
        for (size_t d = 0; d < sizeof dims / sizeof dims[0]; d++, n++)
            test_vs_cpu(O, 1 + n % 3, Ts[a], 1 + n % 4, dims[d][0], dims[d][1]);
    test_vs_cpu(O, 2, 17, 3, 24, FR_ATTN_MAX_DV); /* the cap itself: the whole local array */

    printf("bodies vs double-precision central differences (max |err| / max |numeric|):\n");
    test_fd(2, 5, 2, 6, 4, 1.0f, 1.0f / sqrtf(6.0f));
    test_fd(1, 9, 3, 5, 3, 2.0f, 1.0f); /* peaky softmax rows: scores spread over ~+-10 */
    test_fd(1, 1, 1, 3, 2, 1.0f, 0.5f); /* one key: p = 1, dq = dk = 0 exactly */

    printf("latent decode attention, bodies vs the CPU backend:\n");
    test_latent(O, 1, 16, 64, 32, 0, (size_t)1 << 16);      /* the first token: one key */
    test_latent(O, 1, 16, 64, 32, 299, (size_t)1 << 16);    /* decode: 5 splits, the last partial */
    test_latent(O, 2, 3, 512, 64, 1000, (size_t)1 << 16);   /* DeepSeek-V3's widths, 2 decoded rows */
    test_latent(O, 37, 4, 32, 16, 90, 37 * 4);             /* prefill, one split */
    test_latent(O, 37, 4, 32, 16, 90, 37 * 4 * 2);         /* two splits: later rows' keys cross them */
    test_latent(O, 5, 2, 16, 8, 0, (size_t)1 << 16);        /* rows 0..4: splits past a row's keys are empty */
    printf("latent worst %.2e\n", g_latent_worst);

    printf("worst vs cpu: out %.2e lse %.2e dq %.2e dk %.2e dv %.2e; worst fd: dq %.2e dk %.2e dv %.2e\n", g_worst[0],
           g_worst[1], g_worst[2], g_worst[3], g_worst[4], g_fd_worst[0], g_fd_worst[1], g_fd_worst[2]);
    return fr_test_finish("test_cuda_kernels_attention");
}
