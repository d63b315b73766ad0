/*
 * kernels_moe.cuh — bodies of the CUDA backend's MoE kernels (fr_ops.moe_*): routing, the
 * sequence-wise balance loss, the expert permutation and dispatch / combine.
 *
 * Rules of kernel_common.cuh: plain C that is also C++, one routing row / one (sequence,
 * expert) / one element per call, no allocation, no call reads what another call of the same
 * launch writes. moe_cuda.cu wraps each body in a grid-stride __global__ kernel;
 * tests/test_cuda_kernels_moe.c runs them on the host against the CPU backend.
 *
 * Every body repeats the CPU backend's (src/cpu/ops_cpu.c) operations in the CPU's order, so
 * compiled for the host they give the CPU's results bit for bit wherever neither side can
 * contract a*b+c into an FMA (routing decisions always: selection never multiplies). On the
 * device, expf may differ from the host's libm by an ulp or two and nvcc contracts into FMAs,
 * so a near-tie in the routing scores (within an ulp) may be decided differently there; the
 * tie-break itself (lower index wins among equal values) is the same.
 *
 * Caps of the routing bodies, which keep their scratch in fixed-size local arrays (registers
 * / local memory, no allocation): K = top_k <= FR_MOE_MAX_K and n_group <= FR_MOE_MAX_GROUPS.
 * E (n_experts) is not capped: the selection keeps only the K best (value, index) pairs and
 * recomputes an expert's choice value from its score when needed. DeepSeek-V3 uses E = 256,
 * K = 8, n_group = 8 (the group cap binds only when groups are masked). A row beyond the caps
 * (or with K > E, which the config refuses) gets expert 0 with weight NaN in every slot: no
 * memory is overrun, and the loss turns NaN at once; the launcher also reports it
 * (fr_cuda_fail).
 */
#ifndef FR_CUDA_KERNELS_MOE_CUH
#define FR_CUDA_KERNELS_MOE_CUH

#include "cuda/kernel_common.cuh"
#include "frugal.h"
#include "model/ops.h"

#define FR_MOE_MAX_K 16
#define FR_MOE_MAX_GROUPS 64

/* ------------------------------------------------------------------ routing */

/* Offer value x of index i to the descending list val/idx [*cnt <= k] of the k best so far.
 * Same rule as the CPU's topk_desc: x goes after every kept value >= x, so among equal
 * values the earlier (lower) index stays ahead and is never displaced. */
FR_HD void fr_k_moe_topk_offer(float *val, int *idx, int *cnt, int k, float x, int i) {
    int pos = *cnt;
    while (pos > 0 && x > val[pos - 1]) pos--;
    if (pos >= k) return;
    int last = *cnt < k ? *cnt : k - 1;
    for (int j = last; j > pos; j--) {
        val[j] = val[j - 1];
        idx[j] = idx[j - 1];
    }
    val[pos] = x;
    idx[pos] = i;
    if (*cnt < k) (*cnt)++;
}

/* The value expert e competes with: score (+ bias), or 0.0 when its group was dropped (as
 * transformers fills masked groups). Experts past n_group * per (E not divisible by n_group)
 * are never masked, as on the CPU. kept: bit g set = group g kept; masking = 0: no group
 * limit. */
FR_HD float fr_k_moe_choice(const float *s, const float *bias, int e, int masking, int per, int G,
                            unsigned long long kept) {
    if (masking && e < G * per && !((kept >> (e / per)) & 1ull)) return 0.0f;
    return bias ? s[e] + bias[e] : s[e];
}

/* One token n of fr_ops.moe_route_forward: logits [N, E] -> scores [N, E] (the row is
 * written first, then read back as the selection's input), topk_idx / topk_w [N, K].
 * p: E, K, grouping as in fr_route_params; bias [E] or NULL. */
FR_HD void fr_k_moe_route_forward_row(int n, int *topk_idx, float *topk_w, float *scores, const float *logits,
                                      const float *bias, const fr_route_params *p) {
    int E = p->n_experts, K = p->top_k, G = p->n_group;
    const float *l = logits + (size_t)n * E;
    float *s = scores + (size_t)n * E;
    int *oi = topk_idx + (size_t)n * K;
    float *ow = topk_w + (size_t)n * K;
    if (p->scoring == FR_SCORING_SOFTMAX) {
        float m = l[0];
        for (int e = 1; e < E; e++) m = l[e] > m ? l[e] : m;
        float sum = 0.f;
        for (int e = 0; e < E; e++) {
            s[e] = expf(l[e] - m);
            sum += s[e];
        }
        for (int e = 0; e < E; e++) s[e] = s[e] / sum;
    } else {
        for (int e = 0; e < E; e++) s[e] = 1.0f / (1.0f + expf(-l[e]));
    }
    int masking = p->method != FR_TOPK_GREEDY && G > 1 && p->topk_group < G;
    if (K < 0 || K > FR_MOE_MAX_K || K > E || (masking && G > FR_MOE_MAX_GROUPS)) {
        for (int j = 0; j < K; j++) {
            oi[j] = 0;
            ow[j] = NAN;
        }
        return;
    }
    int per = masking ? E / G : 1;
    unsigned long long kept = 0;
    if (masking) {
        float gval[FR_MOE_MAX_GROUPS];
        int gidx[FR_MOE_MAX_GROUPS];
        int gcnt = 0;
        for (int g = 0; g < G; g++) {
            const float *c = s + g * per;
            const float *cb = bias ? bias + g * per : NULL;
            float gs;
            if (p->method == FR_TOPK_NOAUX_TC) { /* sum of the group's two largest */
                float a = cb ? c[0] + cb[0] : c[0];
                float b2 = per > 1 ? (cb ? c[1] + cb[1] : c[1]) : 0.f;
                if (b2 > a) {
                    float t = a;
                    a = b2;
                    b2 = t;
                }
                for (int j = 2; j < per; j++) {
                    float cj = cb ? c[j] + cb[j] : c[j];
                    if (cj > a) {
                        b2 = a;
                        a = cj;
                    } else if (cj > b2) {
                        b2 = cj;
                    }
                }
                gs = per > 1 ? a + b2 : a;
            } else { /* group-limited greedy: the group's largest */
                float a = cb ? c[0] + cb[0] : c[0];
                for (int j = 1; j < per; j++) {
                    float cj = cb ? c[j] + cb[j] : c[j];
                    a = cj > a ? cj : a;
                }
                gs = a;
            }
            fr_k_moe_topk_offer(gval, gidx, &gcnt, p->topk_group, gs, g);
        }
        for (int j = 0; j < gcnt; j++) kept |= 1ull << gidx[j];
    }
    float val[FR_MOE_MAX_K];
    int idx[FR_MOE_MAX_K];
    int cnt = 0;
    for (int e = 0; e < E; e++)
        fr_k_moe_topk_offer(val, idx, &cnt, K, fr_k_moe_choice(s, bias, e, masking, per, G, kept), e);
    /* weights from the unbiased scores; the CPU sums the denominator in selection order */
    float denom = 0.f;
    for (int j = 0; j < K; j++) denom += s[idx[j]];
    denom += 1e-20f;
    for (int j = 0; j < K; j++) {
        float w = p->norm_topk_prob ? s[idx[j]] / denom : s[idx[j]];
        oi[j] = idx[j];
        ow[j] = w * p->routed_scaling_factor;
    }
}

/* One token n of fr_ops.moe_route_backward: dlogits [N, E] (overwrite) from dtopk_w [N, K],
 * dscores_extra [N, E] or NULL, scores [N, E], topk_idx [N, K]. The row of dlogits holds
 * dscores until the activation's backward, as on the CPU.
 * w_k = r s_k / S (S = sum_j s_j + 1e-20) or r s_k: ds_k = r (g_k - sum_j g_j s_j / S) / S or
 * r g_k; then sigmoid' = s (1 - s), softmax: s_e (ds_e - sum_j ds_j s_j). */
FR_HD void fr_k_moe_route_backward_row(int n, float *dlogits, const float *dtopk_w, const float *dscores_extra,
                                       const float *scores, const int *topk_idx, const fr_route_params *p) {
    int E = p->n_experts, K = p->top_k;
    float rsf = p->routed_scaling_factor;
    const float *s = scores + (size_t)n * E;
    const int *idx = topk_idx + (size_t)n * K;
    const float *g = dtopk_w + (size_t)n * K;
    float *dl = dlogits + (size_t)n * E;
    if (dscores_extra) {
        const float *x = dscores_extra + (size_t)n * E;
        for (int e = 0; e < E; e++) dl[e] = x[e];
    } else {
        for (int e = 0; e < E; e++) dl[e] = 0.f;
    }
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

/* ------------------------------------------------------------------ balance loss
 * fr_ops.moe_balance_loss in four launches over scratch the launcher provides, so that no
 * call loops over a whole sequence's T x E scores more than once and every output has one
 * owner (B is small; one call per sequence would serialise T E work on B threads):
 *   1. per token n < B T:        iz [B T]  = 1 / sum_e scores[n, e]
 *   2. per (sequence b, expert e): f [B, E] = E / (K T) #{t : e in topk(t)},
 *                                  P [B, E] = sum_t scores[t, e] iz[t]   (not yet / T)
 *   3. per sequence b:            loss_per_seq[b] = sum_e f_e (P_e / T)
 *   4. per token n (dscores only): dscores[n, e] += c (f_e - sum_j f_j s_nj iz_n),
 *                                  c = grad_scale iz_n / T
 * Sums run in the CPU's order (e, then t), so the host gives the CPU's values. */

FR_HD void fr_k_moe_balance_rowsum(size_t n, float *iz, const float *scores, int E) {
    const float *st = scores + n * (size_t)E;
    float Z = 0.f;
    for (int e = 0; e < E; e++) Z += st[e];
    iz[n] = 1.0f / Z;
}

/* be = b * E + e. topk_idx [B T, K]; entries outside [0, E) count for no expert. */
FR_HD void fr_k_moe_balance_expert(size_t be, float *f, float *P, const float *scores, const float *iz,
                                   const int *topk_idx, int T, int E, int K) {
    size_t b = be / (size_t)E;
    int e = (int)(be % (size_t)E);
    const int *idx = topk_idx + b * (size_t)T * K;
    long count = 0;
    for (long i = 0; i < (long)T * K; i++) count += idx[i] == e;
    f[be] = (float)count * ((float)E / ((float)K * (float)T));
    const float *s = scores + b * (size_t)T * E + e;
    const float *izb = iz + b * (size_t)T;
    float acc = 0.f;
    for (int t = 0; t < T; t++) acc += s[(size_t)t * E] * izb[t];
    P[be] = acc;
}

FR_HD void fr_k_moe_balance_seq(int b, float *loss_per_seq, const float *f, const float *P, int T, int E) {
    const float *fb = f + (size_t)b * E, *Pb = P + (size_t)b * E;
    float L = 0.f;
    for (int e = 0; e < E; e++) L += fb[e] * (Pb[e] / (float)T);
    loss_per_seq[b] = L;
}

/* n = b * T + t: one row of dscores [B T, E], += as the contract says. */
FR_HD void fr_k_moe_balance_grad(size_t n, float *dscores, const float *scores, const float *iz, const float *f,
                                 int T, int E, float grad_scale) {
    const float *st = scores + n * (size_t)E;
    const float *fb = f + (n / (size_t)T) * (size_t)E;
    float *ds = dscores + n * (size_t)E;
    float fsz = 0.f;
    for (int e = 0; e < E; e++) fsz += fb[e] * st[e];
    fsz *= iz[n];
    float c = grad_scale * iz[n] / (float)T;
    for (int e = 0; e < E; e++) ds[e] += c * (fb[e] - fsz);
}

/* ------------------------------------------------------------------ permutation (host) */

/* fr_ops.moe_permute on host arrays: the stable counting sort of the N K routing slots by
 * expert (ties keep slot order, i.e. (expert, token, k)). topk_idx [N K]; perm_token [N K];
 * slot_pos [N K]; expert_offsets [E + 1]. Host code, not a kernel: expert_offsets is wanted on
 * the host anyway, and N K ints are small next to the expert GEMMs they feed. expert_offsets
 * serves as the scatter cursor, then is shifted back, so nothing is allocated. Returns the
 * number of indices outside [0, E) (routing never makes one): they are skipped, so nothing is
 * written out of bounds, but their slot_pos and the perm_token tail stay unwritten. */
static inline long fr_k_moe_permute_host(int *perm_token, int *slot_pos, int *expert_offsets, const int *topk_idx,
                                         int N, int K, int E) {
    long NK = (long)N * K, bad = 0;
    for (int e = 0; e <= E; e++) expert_offsets[e] = 0;
    for (long i = 0; i < NK; i++) {
        if (topk_idx[i] >= 0 && topk_idx[i] < E) expert_offsets[topk_idx[i] + 1]++;
        else bad++;
    }
    for (int e = 0; e < E; e++) expert_offsets[e + 1] += expert_offsets[e];
    /* off[e] walks from the start of e to the start of e + 1 */
    for (long i = 0; i < NK; i++) {
        int ex = topk_idx[i];
        if (ex < 0 || ex >= E) continue;
        int pos = expert_offsets[ex]++;
        perm_token[pos] = (int)(i / K);
        slot_pos[i] = pos;
    }
    for (int e = E - 1; e > 0; e--) expert_offsets[e] = expert_offsets[e - 1];
    if (E > 0) expert_offsets[0] = 0;
    return bad;
}

/* ------------------------------------------------------------------ dispatch / combine
 * One element (row, column d) per call: consecutive calls touch consecutive columns of one
 * row, so a warp's loads and stores coalesce. Rows are D floats. */

/* i = slot * D + d < N K D: xe [N K, D] gets x [N, D]'s row perm_token[slot] */
FR_HD void fr_k_moe_dispatch_forward(size_t i, float *xe, const float *x, const int *perm_token, int D) {
    size_t slot = i / (size_t)D, d = i % (size_t)D;
    xe[i] = x[(size_t)perm_token[slot] * D + d];
}

/* i = n * D + d < N D: dx [N, D] += the K rows of dxe [N K, D] token n went to, in k order
 * (the CPU's order), one owner per element so no atomics. */
FR_HD void fr_k_moe_dispatch_backward(size_t i, float *dx, const float *dxe, const int *slot_pos, int K, int D) {
    size_t n = i / (size_t)D, d = i % (size_t)D;
    const int *sp = slot_pos + n * (size_t)K;
    float acc = dx[i];
    for (int k = 0; k < K; k++) acc += dxe[(size_t)sp[k] * D + d];
    dx[i] = acc;
}

/* i = n * D + d < N D: out [N, D] += sum_k topk_w[n, k] ye[slot_pos[n, k], d], k in order */
FR_HD void fr_k_moe_combine_forward(size_t i, float *out, const float *ye, const float *topk_w, const int *slot_pos,
                                    int K, int D) {
    size_t n = i / (size_t)D, d = i % (size_t)D;
    const int *sp = slot_pos + n * (size_t)K;
    const float *w = topk_w + n * (size_t)K;
    float acc = out[i];
    for (int k = 0; k < K; k++) acc += w[k] * ye[(size_t)sp[k] * D + d];
    out[i] = acc;
}

/* i = (n * K + k) * D + d < N K D: dye [N K, D] (overwrite) row slot_pos[n, k] =
 * topk_w[n, k] dout[n] — each sorted slot belongs to exactly one (n, k), so one writer */
FR_HD void fr_k_moe_combine_backward_dye(size_t i, float *dye, const float *dout, const float *topk_w,
                                         const int *slot_pos, int K, int D) {
    size_t nk = i / (size_t)D, d = i % (size_t)D;
    size_t n = nk / (size_t)K;
    dye[(size_t)slot_pos[nk] * D + d] = topk_w[nk] * dout[n * D + d];
}

/* nk = n * K + k < N K: dtopk_w [N, K] (overwrite) = dout[n] . ye[slot_pos[n, k]], summed
 * left to right (the CPU's SIMD dot sums in another order: equal to rounding only) */
FR_HD void fr_k_moe_combine_backward_dw(size_t nk, float *dtopk_w, const float *dout, const float *ye,
                                        const int *slot_pos, int K, int D) {
    const float *g = dout + (nk / (size_t)K) * D;
    const float *y = ye + (size_t)slot_pos[nk] * D;
    float acc = 0.f;
    for (int d = 0; d < D; d++) acc += g[d] * y[d];
    dtopk_w[nk] = acc;
}

#endif
