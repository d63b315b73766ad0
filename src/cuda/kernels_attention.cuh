/*
 * kernels_attention.cuh — bodies of the CUDA backend's causal softmax attention
 * (fr_ops.attention_forward / attention_backward, contract in model/ops.h), one
 * (sequence b, head h, query t) per call. attention_cuda.cu wraps them in grid-stride
 * kernels; tests/test_cuda_kernels_attention.c runs them on the host against the CPU backend
 * and finite differences. Plain C that is also valid C++ (see kernel_common.cuh).
 *
 * Layouts (row-major, N = B*T token rows, token row of (b, t) is b*T + t):
 *   q, k: [B*T, H, dqk]      v: [B*T, H, dv]      out, dout: [B*T, H*dv]
 *   lse:  [B, H, T]          dq, dk: as q, k       dval: as v
 * Call index: i = (b*H + h)*T + t over 0 .. B*H*T - 1, which is also the query's lse index.
 * t varies fastest so that neighbouring threads of a launch share (b, h) and walk the same
 * keys (k, v rows) in the same order: the key loads of a warp mostly hit the same lines.
 *
 * This is the simple version: no shared memory, no tiles, O(T) work and O(dv) state per
 * query, never a T x T matrix. A tiled shared-memory version comes later; this one is the
 * reference the tiled one will be checked against.
 */
#ifndef FR_CUDA_KERNELS_ATTENTION_CUH
#define FR_CUDA_KERNELS_ATTENTION_CUH

#include "cuda/kernel_common.cuh"

/* The forward keeps the running output of one query, dv floats, in a local array (registers
 * / local memory on the device: a body may not allocate). dv above this cap is refused by
 * fr_cuda_attention_forward (fr_cuda_note_error); DeepSeek-V3's v_head_dim is 128. */
#define FR_ATTN_MAX_DV 256

/* (b, h, t) of call index i (see the top of the file) */
FR_HD void fr_attn_index(size_t i, int T, int H, int *b, int *h, int *t) {
    const size_t bh = i / (size_t)T;
    *t = (int)(i % (size_t)T);
    *h = (int)(bh % (size_t)H);
    *b = (int)(bh / (size_t)H);
}

FR_HD float fr_attn_dot(const float *a, const float *b, int n) {
    float s = 0.0f;
    for (int j = 0; j < n; j++) s += a[j] * b[j];
    return s;
}

/* Forward of query t of (b, h), i = (b*H + h)*T + t; requires dv <= FR_ATTN_MAX_DV.
 * Online softmax over keys j = 0 .. t (causal): with s_j = scale * q_t . k_j, keep
 *   m   = max of the scores seen so far,
 *   l   = sum_j exp(s_j - m),
 *   acc = sum_j exp(s_j - m) v_j            (dv values),
 * and when a key raises the max from m to s, multiply l and acc by exp(m - s) so they stay
 * relative to the new max (the first key: m = -inf, exp(-inf) = 0 on zeros). At the end
 *   out_t = acc / l,   lse_t = m + log(l)   (the log-sum-exp of the scaled scores).
 * Exponents are always <= 0, so nothing overflows whatever the scores' size.
 * Writes: out[(b*T + t), h*dv .. h*dv + dv - 1] and lse[i], owned by this call. */
FR_HD void fr_attention_forward_body(float *out, float *lse, const float *q, const float *k, const float *v,
                                     int T, int H, int dqk, int dv, float scale, size_t i) {
    int b, h, t;
    fr_attn_index(i, T, H, &b, &h, &t);
    const size_t qs = (size_t)H * dqk, vs = (size_t)H * dv; /* strides of one token row */
    const size_t row0 = (size_t)b * T;                      /* token row of (b, 0) */
    const float *qt = q + (row0 + t) * qs + (size_t)h * dqk; /* [dqk] */
    const float *k0 = k + row0 * qs + (size_t)h * dqk;       /* key j: k0 + j * qs, [dqk] */
    const float *v0 = v + row0 * vs + (size_t)h * dv;        /* value j: v0 + j * vs, [dv] */
    float acc[FR_ATTN_MAX_DV];
    float m = -INFINITY, l = 0.0f;
    for (int c = 0; c < dv; c++) acc[c] = 0.0f;
    for (int j = 0; j <= t; j++) {
        const float s = scale * fr_attn_dot(qt, k0 + (size_t)j * qs, dqk);
        if (s > m) { /* new max: rescale what was summed relative to the old one */
            const float corr = expf(m - s);
            l *= corr;
            for (int c = 0; c < dv; c++) acc[c] *= corr;
            m = s;
        }
        const float p = expf(s - m);
        const float *vj = v0 + (size_t)j * vs;
        l += p;
        for (int c = 0; c < dv; c++) acc[c] += p * vj[c];
    }
    /* l >= 1 (the max key contributes exp(0)), so the division and the log are safe */
    const float inv = 1.0f / l;
    float *ot = out + (row0 + t) * vs + (size_t)h * dv;
    for (int c = 0; c < dv; c++) ot[c] = acc[c] * inv;
    lse[i] = m + logf(l);
}

/* Backward of query t of (b, h), i = (b*H + h)*T + t, from the forward's out and lse.
 * With p_j = exp(s_j - lse_t) (the softmax row, recomputed: s_j = scale * q_t . k_j) and
 *   D_t  = dout_t . out_t                    (= sum_j p_j dout_t . v_j),
 *   dp_j = dout_t . v_j,   ds_j = p_j (dp_j - D_t)   (softmax backward),
 * the gradients of out_t = sum_j p_j v_j through s_j are
 *   dq_t  += scale ds_j k_j     this call's row alone: zeroed here, then plain writes;
 *   dk_j  += scale ds_j q_t     key j is seen by queries j .. T-1, so FR_ATOMIC_ADD;
 *   dv_j  += p_j dout_t         likewise FR_ATOMIC_ADD.
 * dk and dval must therefore be zero before the launch (fr_cuda_attention_backward clears
 * them with cudaMemsetAsync; a host caller memsets them): the contract overwrites them.
 * No dv cap here: nothing per query is kept in a local array. */
FR_HD void fr_attention_backward_body(float *dq, float *dk, float *dval, const float *dout, const float *out,
                                      const float *lse, const float *q, const float *k, const float *v, int T, int H,
                                      int dqk, int dv, float scale, size_t i) {
    int b, h, t;
    fr_attn_index(i, T, H, &b, &h, &t);
    const size_t qs = (size_t)H * dqk, vs = (size_t)H * dv;
    const size_t row0 = (size_t)b * T;
    const float *qt = q + (row0 + t) * qs + (size_t)h * dqk;     /* [dqk] */
    const float *k0 = k + row0 * qs + (size_t)h * dqk;           /* key j: + j * qs */
    const float *v0 = v + row0 * vs + (size_t)h * dv;            /* value j: + j * vs */
    const float *do_t = dout + (row0 + t) * vs + (size_t)h * dv; /* [dv] */
    const float *ot = out + (row0 + t) * vs + (size_t)h * dv;    /* [dv] */
    float *dqt = dq + (row0 + t) * qs + (size_t)h * dqk;         /* [dqk], owned */
    float *dk0 = dk + row0 * qs + (size_t)h * dqk;               /* shared: atomics */
    float *dv0 = dval + row0 * vs + (size_t)h * dv;              /* shared: atomics */
    const float lse_t = lse[i];
    const float D = fr_attn_dot(do_t, ot, dv);
    for (int c = 0; c < dqk; c++) dqt[c] = 0.0f;
    for (int j = 0; j <= t; j++) {
        const float *kj = k0 + (size_t)j * qs, *vj = v0 + (size_t)j * vs;
        float *dkj = dk0 + (size_t)j * qs, *dvj = dv0 + (size_t)j * vs;
        const float p = expf(scale * fr_attn_dot(qt, kj, dqk) - lse_t);
        const float dp = fr_attn_dot(do_t, vj, dv);
        const float gs = scale * (p * (dp - D)); /* scale * ds_j: d loss / d (q_t . k_j) */
        for (int c = 0; c < dqk; c++) {
            dqt[c] += gs * kj[c];
            FR_ATOMIC_ADD(&dkj[c], gs * qt[c]);
        }
        for (int c = 0; c < dv; c++) FR_ATOMIC_ADD(&dvj[c], p * do_t[c]);
    }
}


/* ---- MLA's absorbed decode attention (fr_ops.latent_attention, contract in model/ops.h) in two
 * launches, split over the keys as flash-decoding does, so that one decoded row still gives
 * the GPU thousands of independent calls:
 *
 * 1. partial: one call per (split s, row n, head h), i = (s*N + n)*nh + h. The head varies
 *    fastest, so the calls of a warp read the same cached rows (one load serves them all) and
 *    differ only in their query. Over keys t in [s*chunk, min((s+1)*chunk, pos[n] + 1)) the
 *    online softmax of fr_attention_forward_body, unnormalised:
 *      part_m[i] = max score,  part_l[i] = sum exp(score - m),
 *      part_acc[i*kvr + d] = sum exp(score - m) cache[t, d]
 *    An empty range (a split past the row's keys) leaves m = -inf, l = 0, acc = 0.
 * 2. combine: one call per (row n, head h, value d), i = (n*nh + h)*kvr + d, which is also
 *    ctx's index: with M = max_s m_s and w_s = exp(m_s - M) over the splits that saw a key,
 *      ctx[i] = sum_s w_s acc_s[d] / sum_s w_s l_s.
 *    Every row has at least one key (t = 0), so the denominator is >= 1.
 * Layouts: qf [N, nh, row], cache [*, row] (row = kvr + rope: [c_t | k_pe_t]), ctx [N, nh, kvr],
 * part_m / part_l [n_split * N * nh], part_acc [n_split * N * nh, kvr]. */
FR_HD void fr_latent_attention_partial_body(float *part_m, float *part_l, float *part_acc, const float *qf,
                                            const float *cache, const int *pos, int N, int nh, int row, int kvr,
                                            int chunk, float scale, size_t i) {
    const int h = (int)(i % (size_t)nh);
    const size_t sn = i / (size_t)nh;
    const int n = (int)(sn % (size_t)N), s = (int)(sn / (size_t)N);
    const int t0 = s * chunk;
    int t1 = t0 + chunk;
    if (t1 > pos[n] + 1) t1 = pos[n] + 1;
    const float *q = qf + ((size_t)n * nh + h) * row;
    float *acc = part_acc + i * (size_t)kvr;
    float m = -INFINITY, l = 0.0f;
    for (int d = 0; d < kvr; d++) acc[d] = 0.0f;
    for (int t = t0; t < t1; t++) {
        const float *k = cache + (size_t)t * row;
        const float sc = scale * fr_attn_dot(q, k, row);
        if (sc > m) { /* new max: rescale what was summed (the first key: exp(-inf) = 0 on zeros) */
            const float corr = expf(m - sc);
            l *= corr;
            for (int d = 0; d < kvr; d++) acc[d] *= corr;
            m = sc;
        }
        const float p = expf(sc - m);
        l += p;
        for (int d = 0; d < kvr; d++) acc[d] += p * k[d];
    }
    part_m[i] = m;
    part_l[i] = l;
}

FR_HD void fr_latent_attention_combine_body(float *ctx, const float *part_m, const float *part_l,
                                            const float *part_acc, int N, int nh, int kvr, int n_split, size_t i) {
    const size_t item = i / (size_t)kvr, stride = (size_t)N * nh; /* item = n*nh + h */
    const int d = (int)(i % (size_t)kvr);
    float M = -INFINITY;
    for (int s = 0; s < n_split; s++) M = fmaxf(M, part_m[(size_t)s * stride + item]);
    float L = 0.0f, a = 0.0f;
    for (int s = 0; s < n_split; s++) {
        const size_t j = (size_t)s * stride + item;
        if (part_l[j] == 0.0f) continue; /* no key in this split */
        const float w = expf(part_m[j] - M);
        L += w * part_l[j];
        a += w * part_acc[j * (size_t)kvr + d];
    }
    ctx[i] = a / L;
}

/* How fr_cuda_latent_attention splits the keys: splits of `chunk` keys (at least 64) such that
 * the partial results of N rows x nh heads fit max_items (the scratch it keeps). */
FR_HD void fr_latent_attention_split(int N, int nh, int max_keys, size_t max_items, int *n_split, int *chunk) {
    int ns = (max_keys + 63) / 64;
    const size_t rows = (size_t)N * nh;
    if ((size_t)ns * rows > max_items) ns = (int)(max_items / rows);
    if (ns < 1) ns = 1;
    *chunk = (max_keys + ns - 1) / ns;
    if (*chunk < 1) *chunk = 1;
    *n_split = (max_keys + *chunk - 1) / *chunk;
    if (*n_split < 1) *n_split = 1;
}

#endif
