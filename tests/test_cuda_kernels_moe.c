/*
 * test_cuda_kernels_moe.c — the bodies of the CUDA backend's MoE kernels (src/cuda/kernels_moe.cuh),
 * compiled here as C and run on the host over their whole index space (one call per token,
 * (sequence, expert), element, ... in index order, as a grid-stride launch covers them), against
 * the CPU backend's fr_ops.moe_* on random inputs. No GPU needed: this checks the arithmetic,
 * the indexing and the routing rules; launches, races and device libm are tests/test_cuda_ops.c's.
 *
 * Exact equality for everything discrete: chosen experts (incl. tie-breaks), permutations,
 * offsets, copies. Floats: the bodies repeat the CPU's operations in the CPU's order, so they
 * agree to rounding; tolerance REL_TOL = 1e-6 of fr_rel_err (max |a-b| / max |ref|), about 8
 * float ulps, which only FMA contraction differences between two compilations could use up.
 * dtopk_w is the one float whose summation order differs (the CPU's SIMD dot): each element is
 * held to the forward-error bound of two differently ordered sums of D products,
 * |a - b| <= 2 D FLT_EPSILON sum_d |dout_d ye_d|.
 */
#include "cuda/kernels_moe.cuh"

#include "frugal.h"
#include "core/internal.h"
#include "model/ops.h"
#include "testutil.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define REL_TOL 1e-6

static const fr_ops *O;
static fr_rng g_rng;

static float urand(float lo, float hi) { return lo + (hi - lo) * (float)fr_rng_uniform(&g_rng); }
static int irand(int n) { return (int)(fr_rng_uniform(&g_rng) * n) % n; }
static float *fnan(size_t n) { /* outputs that must be overwritten start as NaN */
    float *p = malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) p[i] = NAN;
    return p;
}
static float *fdup(const float *x, size_t n) {
    float *p = malloc((n ? n : 1) * sizeof(float));
    memcpy(p, x, n * sizeof(float));
    return p;
}
static int *inew(size_t n, int v) {
    int *p = malloc((n ? n : 1) * sizeof(int));
    for (size_t i = 0; i < n; i++) p[i] = v;
    return p;
}

/* ------------------------------------------------------------------ routing */

enum { LOGITS_NORMAL, LOGITS_TIES };

typedef struct {
    const char *name;
    int N, E, K, G, TG, method, scoring, norm;
    float rsf;
    int bias;       /* 0: NULL, 1: random, 2: quantised (ties), 3: strongly negative (masked zeros win) */
    int logits;     /* LOGITS_* */
    int want_ties;  /* the case must produce rows whose K-th choice ties an unchosen expert */
} route_case;

static void fill_logits(float *l, size_t n, int mode) {
    for (size_t i = 0; i < n; i++) {
        if (mode == LOGITS_TIES) l[i] = (float)(irand(3) - 1); /* {-1, 0, 1}: many equal scores */
        else l[i] = 2.0f * (float)fr_rng_normal(&g_rng);
    }
}

static float *make_bias(int E, int mode) {
    if (!mode) return NULL;
    float *b = malloc((size_t)E * sizeof(float));
    for (int e = 0; e < E; e++) {
        if (mode == 1) b[e] = urand(-0.3f, 0.3f);
        else if (mode == 2) b[e] = 0.25f * (float)irand(3);
        else b[e] = urand(-1.5f, -1.0f); /* every choice < 0 < a masked expert's 0.0 */
    }
    return b;
}

/* Rows whose K-th choice ties an unchosen expert of a kept group (per experts a group; E: no
 * groups). A group holding a chosen expert counts as kept: in the tie cases every choice is
 * > 0, so none is a dropped group's 0.0. */
static int count_tie_rows(const int *idx, const float *scores, const float *bias, int N, int E, int K, int per) {
    int rows = 0;
    for (int n = 0; n < N; n++) {
        const float *s = scores + (size_t)n * E;
        const int *ix = idx + (size_t)n * K;
        float kth = bias ? s[ix[K - 1]] + bias[ix[K - 1]] : s[ix[K - 1]];
        int tie = 0;
        for (int e = 0; e < E && !tie; e++) {
            int chosen = 0, group_kept = 0;
            for (int j = 0; j < K; j++) {
                chosen |= ix[j] == e;
                group_kept |= ix[j] / per == e / per;
            }
            float c = bias ? s[e] + bias[e] : s[e];
            tie = !chosen && group_kept && c == kth;
        }
        rows += tie;
    }
    return rows;
}

static void test_route_case(const route_case *c) {
    int N = c->N, E = c->E, K = c->K;
    fr_route_params p = {E, K, c->G, c->TG, c->method, c->scoring, c->norm, c->rsf};
    size_t NE = (size_t)N * E, NK = (size_t)N * K;
    float *logits = malloc(NE * sizeof(float));
    fill_logits(logits, NE, c->logits);
    float *bias = make_bias(E, c->bias);

    int *ri = inew(NK, -7), *ki = inew(NK, -7);
    float *rw = fnan(NK), *kw = fnan(NK), *rs = fnan(NE), *ks = fnan(NE);
    O->moe_route_forward(ri, rw, rs, logits, bias, N, &p);
    for (int n = 0; n < N; n++) fr_k_moe_route_forward_row(n, ki, kw, ks, logits, bias, &p);

    CHECK(memcmp(ri, ki, NK * sizeof(int)) == 0, "route %s: topk_idx differs from the CPU", c->name);
    CHECK(fr_rel_err(ks, rs, NE) <= REL_TOL, "route %s: scores %.3g", c->name, fr_rel_err(ks, rs, NE));
    CHECK(fr_rel_err(kw, rw, NK) <= REL_TOL, "route %s: topk_w %.3g", c->name, fr_rel_err(kw, rw, NK));
    if (c->want_ties) {
        int grouped = c->method != FR_TOPK_GREEDY && c->G > 1 && c->TG < c->G;
        int t = count_tie_rows(ri, rs, bias, N, E, K, grouped ? E / c->G : E);
        CHECK(t > 0, "route %s: the case has no tie at the K-th choice (it tests nothing)", c->name);
    }
    /* backward, with and without the extra score gradient */
    float *g = malloc(NK * sizeof(float)), *extra = malloc(NE * sizeof(float));
    for (size_t i = 0; i < NK; i++) g[i] = urand(-1.f, 1.f);
    for (size_t i = 0; i < NE; i++) extra[i] = urand(-0.5f, 0.5f);
    for (int ex = 0; ex < 2; ex++) {
        float *rd = fnan(NE), *kd = fnan(NE);
        const float *xs = ex ? extra : NULL;
        O->moe_route_backward(rd, g, xs, rs, ri, N, &p);
        for (int n = 0; n < N; n++) fr_k_moe_route_backward_row(n, kd, g, xs, rs, ri, &p);
        double err = fr_rel_err(kd, rd, NE);
        CHECK(err <= REL_TOL, "route %s backward extra=%d: dlogits %.3g", c->name, ex, err);
        free(rd);
        free(kd);
    }
    free(g);
    free(extra);
    free(logits);
    free(bias);
    free(ri);
    free(ki);
    free(rw);
    free(kw);
    free(rs);
    free(ks);
}

/* With every kept choice negative (bias < -1 against sigmoid scores < 1), the 0.0 that fills
 * dropped groups beats them: the choices must come from dropped groups exactly as the CPU
 * picks them (lowest indices first among the equal zeros). */
static void test_route_masked_zeros(void) {
    int N = 16, E = 32, K = 6, G = 8, TG = 2, per = E / G;
    fr_route_params p = {E, K, G, TG, FR_TOPK_NOAUX_TC, FR_SCORING_SIGMOID, 1, 2.5f};
    float *logits = malloc((size_t)N * E * sizeof(float));
    fill_logits(logits, (size_t)N * E, LOGITS_NORMAL);
    float *bias = make_bias(E, 3);
    int *ri = inew((size_t)N * K, -7), *ki = inew((size_t)N * K, -7);
    float *rw = fnan((size_t)N * K), *kw = fnan((size_t)N * K), *rs = fnan((size_t)N * E), *ks = fnan((size_t)N * E);
    O->moe_route_forward(ri, rw, rs, logits, bias, N, &p);
    for (int n = 0; n < N; n++) fr_k_moe_route_forward_row(n, ki, kw, ks, logits, bias, &p);
    CHECK(memcmp(ri, ki, (size_t)N * K * sizeof(int)) == 0, "route masked zeros: topk_idx differs from the CPU");
    CHECK(fr_rel_err(kw, rw, (size_t)N * K) <= REL_TOL, "route masked zeros: topk_w");
    /* independently of the CPU: keep the TG groups of the largest top-2 sums (random normal
     * logits: no ties); the K choices are then the K lowest-index experts outside them */
    int expect_ok = 1;
    for (int n = 0; n < N; n++) {
        const float *sr = rs + (size_t)n * E;
        float gsum[8];
        for (int g = 0; g < G; g++) {
            float a = -INFINITY, b2 = -INFINITY;
            for (int j = 0; j < per; j++) {
                float c = sr[g * per + j] + bias[g * per + j];
                if (c > a) {
                    b2 = a;
                    a = c;
                } else if (c > b2) {
                    b2 = c;
                }
            }
            gsum[g] = a + b2;
        }
        int keep[8] = {0};
        for (int t = 0; t < TG; t++) {
            int best = -1;
            for (int g = 0; g < G; g++)
                if (!keep[g] && (best < 0 || gsum[g] > gsum[best])) best = g;
            keep[best] = 1;
        }
        int j = 0;
        for (int e = 0; e < E && j < K; e++)
            if (!keep[e / per]) expect_ok &= ki[n * K + j++] == e;
    }
    CHECK(expect_ok, "route masked zeros: not the lowest-index experts of the dropped groups");
    free(logits);
    free(bias);
    free(ri);
    free(ki);
    free(rw);
    free(kw);
    free(rs);
    free(ks);
}

static void test_route(void) {
    static const route_case cases[] = {
        /* name, N, E, K, G, TG, method, scoring, norm, rsf, bias, logits, want_ties */
        {"v3 noaux_tc groups+bias", 64, 256, 8, 8, 4, FR_TOPK_NOAUX_TC, FR_SCORING_SIGMOID, 1, 2.5f, 1,
         LOGITS_NORMAL, 0},
        {"noaux_tc groups no bias", 48, 64, 6, 8, 3, FR_TOPK_NOAUX_TC, FR_SCORING_SIGMOID, 1, 1.0f, 0,
         LOGITS_NORMAL, 0},
        {"noaux_tc groups+bias no norm", 48, 64, 6, 8, 3, FR_TOPK_NOAUX_TC, FR_SCORING_SIGMOID, 0, 1.5f, 1,
         LOGITS_NORMAL, 0},
        {"noaux_tc one group", 32, 16, 4, 1, 1, FR_TOPK_NOAUX_TC, FR_SCORING_SIGMOID, 1, 2.5f, 1, LOGITS_NORMAL, 0},
        {"noaux_tc topk_group = n_group", 32, 32, 4, 4, 4, FR_TOPK_NOAUX_TC, FR_SCORING_SIGMOID, 1, 1.0f, 1,
         LOGITS_NORMAL, 0},
        {"v2 group_limited_greedy softmax", 48, 160, 6, 8, 3, FR_TOPK_GROUP_LIMITED_GREEDY, FR_SCORING_SOFTMAX, 0,
         16.0f, 0, LOGITS_NORMAL, 0},
        {"softmax greedy norm", 40, 64, 6, 1, 1, FR_TOPK_GREEDY, FR_SCORING_SOFTMAX, 1, 1.0f, 0, LOGITS_NORMAL, 0},
        {"softmax greedy no norm", 40, 64, 6, 1, 1, FR_TOPK_GREEDY, FR_SCORING_SOFTMAX, 0, 1.0f, 0, LOGITS_NORMAL, 0},
        {"greedy ignores n_group", 32, 32, 4, 4, 1, FR_TOPK_GREEDY, FR_SCORING_SIGMOID, 1, 1.0f, 1, LOGITS_NORMAL, 0},
        {"caps: K=16 n_group=64", 16, 256, 16, 64, 8, FR_TOPK_NOAUX_TC, FR_SCORING_SIGMOID, 1, 2.5f, 1, LOGITS_NORMAL,
         0},
        {"E not divisible by n_group", 24, 10, 3, 4, 2, FR_TOPK_NOAUX_TC, FR_SCORING_SIGMOID, 1, 1.0f, 1,
         LOGITS_NORMAL, 0},
        /* ties: logits in {-1, 0, 1} (and bias in {0, .25, .5}) make equal scores, equal group
         * scores and equal K-th choices everywhere; the lower index must win as on the CPU */
        {"ties sigmoid greedy", 64, 16, 5, 1, 1, FR_TOPK_GREEDY, FR_SCORING_SIGMOID, 0, 1.0f, 0, LOGITS_TIES, 1},
        {"ties softmax greedy", 64, 16, 5, 1, 1, FR_TOPK_GREEDY, FR_SCORING_SOFTMAX, 1, 1.0f, 0, LOGITS_TIES, 1},
        {"ties noaux_tc groups+bias", 64, 32, 5, 8, 3, FR_TOPK_NOAUX_TC, FR_SCORING_SIGMOID, 1, 2.5f, 2, LOGITS_TIES,
         1},
        {"ties group_limited_greedy", 64, 32, 5, 8, 2, FR_TOPK_GROUP_LIMITED_GREEDY, FR_SCORING_SOFTMAX, 0, 1.0f, 0,
         LOGITS_TIES, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) test_route_case(&cases[i]);
    test_route_masked_zeros();

    /* beyond the caps: no overrun, expert 0 and NaN weights (loud, not silently wrong) */
    {
        int N = 3, E = 32, K = FR_MOE_MAX_K + 1;
        fr_route_params p = {E, K, 1, 1, FR_TOPK_GREEDY, FR_SCORING_SIGMOID, 1, 1.0f};
        float *logits = malloc((size_t)N * E * sizeof(float));
        fill_logits(logits, (size_t)N * E, LOGITS_NORMAL);
        int *ki = inew((size_t)N * K + 1, -7);
        float *kw = fnan((size_t)N * K + 1), *ks = fnan((size_t)N * E);
        kw[(size_t)N * K] = 42.f;
        for (int n = 0; n < N; n++) fr_k_moe_route_forward_row(n, ki, kw, ks, logits, NULL, &p);
        int ok = ki[(size_t)N * K] == -7 && kw[(size_t)N * K] == 42.f;
        for (size_t i = 0; i < (size_t)N * K; i++) ok &= ki[i] == 0 && isnan(kw[i]);
        CHECK(ok, "route K > FR_MOE_MAX_K: expert 0, NaN weights, nothing past the rows");
        free(logits);
        free(ki);
        free(kw);
        free(ks);
    }
}

/* ------------------------------------------------------------------ balance loss */

static void test_balance(int B, int T, int E, int K, int with_grad) {
    fr_route_params p = {E, K, 1, 1, FR_TOPK_GREEDY, FR_SCORING_SIGMOID, 1, 1.0f};
    size_t BT = (size_t)B * T, BE = (size_t)B * E;
    float *logits = malloc(BT * E * sizeof(float));
    fill_logits(logits, BT * E, LOGITS_NORMAL);
    int *idx = inew(BT * K, 0);
    float *w = fnan(BT * K), *s = fnan(BT * E);
    O->moe_route_forward(idx, w, s, logits, NULL, (int)BT, &p);

    float *rl = fnan((size_t)B), *kl = fnan((size_t)B);
    float *rd = NULL, *kd = NULL;
    if (with_grad) { /* += onto what is there */
        rd = malloc(BT * E * sizeof(float));
        for (size_t i = 0; i < BT * E; i++) rd[i] = urand(-1.f, 1.f);
        kd = fdup(rd, BT * E);
    }
    float grad_scale = 0.37f;
    O->moe_balance_loss(rl, rd, s, idx, B, T, E, K, grad_scale);

    /* the launcher's four launches, each over its whole index space */
    float *iz = fnan(BT), *f = fnan(BE), *P = fnan(BE);
    for (size_t n = 0; n < BT; n++) fr_k_moe_balance_rowsum(n, iz, s, E);
    for (size_t be = 0; be < BE; be++) fr_k_moe_balance_expert(be, f, P, s, iz, idx, T, E, K);
    for (int b = 0; b < B; b++) fr_k_moe_balance_seq(b, kl, f, P, T, E);
    if (with_grad)
        for (size_t n = 0; n < BT; n++) fr_k_moe_balance_grad(n, kd, s, iz, f, T, E, grad_scale);

    CHECK(fr_rel_err(kl, rl, (size_t)B) <= REL_TOL, "balance B=%d T=%d E=%d K=%d: loss %.3g", B, T, E, K,
          fr_rel_err(kl, rl, (size_t)B));
    if (with_grad)
        CHECK(fr_rel_err(kd, rd, BT * E) <= REL_TOL, "balance B=%d T=%d E=%d K=%d: dscores %.3g", B, T, E, K,
              fr_rel_err(kd, rd, BT * E));
    free(logits);
    free(idx);
    free(w);
    free(s);
    free(rl);
    free(kl);
    free(rd);
    free(kd);
    free(iz);
    free(f);
    free(P);
}

/* ------------------------------------------------------------------ permute, dispatch, combine */

static void test_permute_dispatch_combine(const char *what, const int *idx, int N, int K, int E, int D) {
    size_t NK = (size_t)N * K;
    int *rp = inew(NK, -7), *rs = inew(NK, -7), *ro = inew((size_t)E + 1, -7);
    int *kp = inew(NK, -7), *ks = inew(NK, -7), *ko = inew((size_t)E + 1, -7);
    O->moe_permute(rp, rs, ro, idx, N, K, E);
    CHECK(fr_k_moe_permute_host(kp, ks, ko, idx, N, K, E) == 0, "permute %s: an index reported out of range", what);
    CHECK(memcmp(rp, kp, NK * sizeof(int)) == 0, "permute %s: perm_token", what);
    CHECK(memcmp(rs, ks, NK * sizeof(int)) == 0, "permute %s: slot_pos", what);
    CHECK(memcmp(ro, ko, ((size_t)E + 1) * sizeof(int)) == 0, "permute %s: expert_offsets", what);
    /* independent of the CPU: sorted by (expert, token, k) and consistent */
    int sorted = ko[0] == 0 && ko[E] == (int)NK;
    for (size_t i = 0; i < NK; i++) {
        int pos = ks[i], e = idx[i];
        sorted &= pos >= ko[e] && pos < ko[e + 1] && kp[pos] == (int)(i / K);
    }
    for (int e = 0; e < E; e++)
        for (int pos = ko[e] + 1; pos < ko[e + 1]; pos++) sorted &= kp[pos - 1] <= kp[pos];
    CHECK(sorted, "permute %s: not the stable sort by (expert, token, k)", what);

    /* dispatch forward: a copy, exact */
    float *x = malloc((size_t)N * D * sizeof(float));
    for (size_t i = 0; i < (size_t)N * D; i++) x[i] = urand(-1.f, 1.f);
    float *rxe = fnan(NK * D), *kxe = fnan(NK * D);
    O->moe_dispatch_forward(rxe, x, rp, (int)NK, D);
    for (size_t i = 0; i < NK * D; i++) fr_k_moe_dispatch_forward(i, kxe, x, kp, D);
    CHECK(memcmp(rxe, kxe, NK * D * sizeof(float)) == 0, "dispatch forward %s", what);

    /* dispatch backward: dx += */
    float *dxe = malloc(NK * D * sizeof(float));
    for (size_t i = 0; i < NK * D; i++) dxe[i] = urand(-1.f, 1.f);
    float *rdx = malloc((size_t)N * D * sizeof(float));
    for (size_t i = 0; i < (size_t)N * D; i++) rdx[i] = urand(-1.f, 1.f);
    float *kdx = fdup(rdx, (size_t)N * D);
    O->moe_dispatch_backward(rdx, dxe, rs, N, K, D);
    for (size_t i = 0; i < (size_t)N * D; i++) fr_k_moe_dispatch_backward(i, kdx, dxe, ks, K, D);
    CHECK(fr_rel_err(kdx, rdx, (size_t)N * D) <= REL_TOL, "dispatch backward %s: %.3g", what,
          fr_rel_err(kdx, rdx, (size_t)N * D));

    /* combine forward: out += */
    float *w = malloc(NK * sizeof(float));
    for (size_t i = 0; i < NK; i++) w[i] = urand(0.f, 2.f);
    float *ye = dxe; /* any [NK, D] */
    float *rout = malloc((size_t)N * D * sizeof(float));
    for (size_t i = 0; i < (size_t)N * D; i++) rout[i] = urand(-1.f, 1.f);
    float *kout = fdup(rout, (size_t)N * D);
    O->moe_combine_forward(rout, ye, w, rs, N, K, D);
    for (size_t i = 0; i < (size_t)N * D; i++) fr_k_moe_combine_forward(i, kout, ye, w, ks, K, D);
    CHECK(fr_rel_err(kout, rout, (size_t)N * D) <= REL_TOL, "combine forward %s: %.3g", what,
          fr_rel_err(kout, rout, (size_t)N * D));

    /* combine backward: dye and dtopk_w overwritten (NaN-filled first) */
    float *dout = malloc((size_t)N * D * sizeof(float));
    for (size_t i = 0; i < (size_t)N * D; i++) dout[i] = urand(-1.f, 1.f);
    float *rdye = fnan(NK * D), *kdye = fnan(NK * D), *rdw = fnan(NK), *kdw = fnan(NK);
    O->moe_combine_backward(rdye, rdw, dout, ye, w, rs, N, K, D);
    for (size_t i = 0; i < NK * D; i++) fr_k_moe_combine_backward_dye(i, kdye, dout, w, ks, K, D);
    for (size_t nk = 0; nk < NK; nk++) fr_k_moe_combine_backward_dw(nk, kdw, dout, ye, ks, K, D);
    CHECK(fr_rel_err(kdye, rdye, NK * D) <= REL_TOL, "combine backward %s: dye %.3g", what,
          fr_rel_err(kdye, rdye, NK * D));
    int dw_ok = 1;
    for (size_t nk = 0; nk < NK; nk++) {
        const float *g = dout + (nk / K) * D, *y = ye + (size_t)rs[nk] * D;
        double mag = 0;
        for (int d = 0; d < D; d++) mag += fabs((double)g[d] * y[d]);
        double bound = 2.0 * D * FLT_EPSILON * mag + 1e-30;
        if (!(fabs((double)kdw[nk] - rdw[nk]) <= bound)) {
            if (dw_ok) printf("  dtopk_w[%zu]: %.9g vs CPU %.9g (bound %.3g)\n", nk, kdw[nk], rdw[nk], bound);
            dw_ok = 0;
        }
    }
    CHECK(dw_ok, "combine backward %s: dtopk_w", what);

    free(rp);
    free(rs);
    free(ro);
    free(kp);
    free(ks);
    free(ko);
    free(x);
    free(rxe);
    free(kxe);
    free(dxe);
    free(rdx);
    free(kdx);
    free(w);
    free(rout);
    free(kout);
    free(dout);
    free(rdye);
    free(kdye);
    free(rdw);
    free(kdw);
}

static void test_dispatch(void) {
    /* indices from routing (K distinct per token) */
    {
        int N = 40, E = 64, K = 6, D = 72;
        fr_route_params p = {E, K, 8, 3, FR_TOPK_NOAUX_TC, FR_SCORING_SIGMOID, 1, 2.5f};
        float *logits = malloc((size_t)N * E * sizeof(float));
        fill_logits(logits, (size_t)N * E, LOGITS_NORMAL);
        int *idx = inew((size_t)N * K, 0);
        float *w = fnan((size_t)N * K), *s = fnan((size_t)N * E);
        O->moe_route_forward(idx, w, s, logits, NULL, N, &p);
        test_permute_dispatch_combine("routed", idx, N, K, E, D);
        free(logits);
        free(idx);
        free(w);
        free(s);
    }
    /* few experts, repeats within a token: stability across k of one token and across tokens */
    {
        int N = 57, E = 3, K = 4, D = 33;
        int *idx = inew((size_t)N * K, 0);
        for (int i = 0; i < N * K; i++) idx[i] = irand(E);
        test_permute_dispatch_combine("repeats", idx, N, K, E, D);
        free(idx);
    }
    /* many experts left empty, first and last among them */
    {
        int N = 9, E = 40, K = 2, D = 128;
        int *idx = inew((size_t)N * K, 0);
        for (int i = 0; i < N * K; i++) idx[i] = 5 + irand(20);
        test_permute_dispatch_combine("empty experts", idx, N, K, E, D);
        free(idx);
    }
    /* indices outside [0, E) are counted and skipped, never written through */
    {
        int idx[6] = {1, -1, 0, 3, 1, 2}; /* E = 3: -1 and 3 are out of range */
        int perm[7], pos[7], off[5];
        for (int i = 0; i < 7; i++) perm[i] = pos[i] = -7;
        for (int i = 0; i < 5; i++) off[i] = -7;
        long bad = fr_k_moe_permute_host(perm, pos, off, idx, 3, 2, 3);
        int ok = bad == 2 && off[0] == 0 && off[1] == 1 && off[2] == 3 && off[3] == 4 && off[4] == -7;
        ok &= perm[0] == 1 && perm[1] == 0 && perm[2] == 2 && perm[3] == 2 && perm[4] == -7 && perm[6] == -7;
        ok &= pos[0] == 1 && pos[1] == -7 && pos[2] == 0 && pos[3] == -7 && pos[4] == 2 && pos[5] == 3;
        CHECK(ok, "permute: out-of-range indices counted (%ld) and skipped", bad);
    }
    /* one token, one column */
    {
        int idx[3] = {2, 0, 1};
        test_permute_dispatch_combine("N=1 D=1", idx, 1, 3, 4, 1);
    }
}

int main(void) {
    O = fr_ops_cpu();
    CHECK(O && O->moe_route_forward && O->moe_combine_backward, "fr_ops_cpu table");
    fr_rng_seed(&g_rng, 20240611);
    test_route();
    test_balance(1, 1, 8, 2, 1);
    test_balance(3, 50, 64, 6, 1);
    test_balance(2, 37, 256, 8, 0);
    test_balance(4, 16, 16, 4, 1);
    test_dispatch();
    return fr_test_finish("cuda_kernels_moe");
}
