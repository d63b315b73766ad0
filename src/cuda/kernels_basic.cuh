/*
 * kernels_basic.cuh — the CUDA backend's elementwise and row kernels as bodies (rules in
 * kernel_common.cuh): embedding, RMSNorm, RoPE, MLA's k/v split, SwiGLU, add / axpy,
 * cross-entropy, BF16 rounding of GEMM operands and the FP8 (E4M3) tile quantizer. Each body
 * computes what the CPU backend's op computes (src/cpu/ops_cpu.c, src/cpu/fp8_recipe.c); the
 * summation order inside a row may differ, nothing else.
 *
 * Index spaces (what one call handles) are named in each body's comment; a row body runs a
 * whole row in one thread: simple and exact first, a warp per row is the faster layout to come.
 */
#ifndef FR_CUDA_KERNELS_BASIC_CUH
#define FR_CUDA_KERNELS_BASIC_CUH

#include "cuda/kernel_common.cuh"

/* ---------------------------------------------------------------- embedding */

/* i in [0, N*D): out[n, d] = table[tokens[n], d] */
FR_HD void fr_k_embedding_forward(size_t i, float *out, const float *table, const int *tokens, int D) {
    const size_t n = i / (size_t)D, d = i % (size_t)D;
    out[i] = table[(size_t)tokens[n] * D + d];
}

/* i in [0, N*D): dtable[tokens[n], d] += dout[n, d] (repeated tokens: atomics) */
FR_HD void fr_k_embedding_backward(size_t i, float *dtable, const float *dout, const int *tokens, int D) {
    const size_t n = i / (size_t)D, d = i % (size_t)D;
    FR_ATOMIC_ADD(&dtable[(size_t)tokens[n] * D + d], dout[i]);
}

/* ---------------------------------------------------------------- RMSNorm */

/* row n: y = x r w with r = (mean(x^2) + eps)^(-1/2), rstd[n] = r */
FR_HD void fr_k_rmsnorm_forward_row(int n, float *y, float *rstd, const float *x, int ldx, const float *w, int D,
                                    float eps) {
    const float *xr = x + (size_t)n * ldx;
    float *yr = y + (size_t)n * D;
    float ss = 0.0f;
    for (int d = 0; d < D; d++) ss += xr[d] * xr[d];
    const float r = 1.0f / sqrtf(ss / (float)D + eps);
    rstd[n] = r;
    for (int d = 0; d < D; d++) yr[d] = (xr[d] * r) * w[d];
}

/* row n: dx += r w dy - x r^3 / D * sum_d w_d dy_d x_d (dx rows of stride lddx) */
FR_HD void fr_k_rmsnorm_backward_dx_row(int n, float *dx, int lddx, const float *dy, const float *x, int ldx,
                                        const float *w, const float *rstd, int D) {
    const float *xr = x + (size_t)n * ldx, *dyr = dy + (size_t)n * D;
    float *dxr = dx + (size_t)n * lddx;
    const float r = rstd[n];
    float dot = 0.0f;
    for (int d = 0; d < D; d++) dot += w[d] * dyr[d] * xr[d];
    const float c = dot * r * r * r / (float)D;
    for (int d = 0; d < D; d++) dxr[d] += r * w[d] * dyr[d] - xr[d] * c;
}

/* column d: dw[d] += sum_n dy[n, d] x[n, d] r_n (each column its own call: no atomics) */
FR_HD void fr_k_rmsnorm_backward_dw_col(int d, float *dw, const float *dy, const float *x, int ldx,
                                        const float *rstd, int N, int D) {
    float acc = 0.0f;
    for (int n = 0; n < N; n++) acc += dy[(size_t)n * D + d] * x[(size_t)n * ldx + d] * rstd[n];
    dw[d] += acc;
}

/* ---------------------------------------------------------------- RoPE */

/* i in [0, N*n_heads*rope_dim/2): rotates pair i of (row, head) by its angle; sign +1 forward,
 * -1 the transposed rotation (backward) */
FR_HD void fr_k_rope(size_t i, float *x, int n_heads, int row_stride, int head_stride, int offset, int rope_dim,
                     const int *pos, const float *cos_table, const float *sin_table, int interleave, float sign) {
    const int half = rope_dim / 2;
    const size_t pair = i % (size_t)half, nh = i / (size_t)half;
    const size_t n = nh / (size_t)n_heads, h = nh % (size_t)n_heads;
    const float c = cos_table[(size_t)pos[n] * half + pair], s = sign * sin_table[(size_t)pos[n] * half + pair];
    float *b = x + n * (size_t)row_stride + h * (size_t)head_stride + offset;
    const size_t i0 = interleave ? 2 * pair : pair, i1 = interleave ? 2 * pair + 1 : pair + half;
    const float x0 = b[i0], x1 = b[i1];
    b[i0] = x0 * c - x1 * s;
    b[i1] = x0 * s + x1 * c;
}

/* ---------------------------------------------------------------- MLA k / v split */

/* i in [0, N*H): k[n, h] = [kv[n, h, :nope] | k_pe[n]], v[n, h] = kv[n, h, nope:] */
FR_HD void fr_k_mla_kv_split_forward(size_t i, float *k, float *v, const float *kv, const float *k_pe, int ld_kpe,
                                     int H, int nope, int rope, int vd) {
    const size_t n = i / (size_t)H;
    const float *src = kv + i * (size_t)(nope + vd);
    float *kd = k + i * (size_t)(nope + rope);
    for (int j = 0; j < nope; j++) kd[j] = src[j];
    for (int j = 0; j < rope; j++) kd[nope + j] = k_pe[n * (size_t)ld_kpe + j];
    for (int j = 0; j < vd; j++) v[i * (size_t)vd + j] = src[nope + j];
    (void)H;
}

/* i in [0, N*H): dkv[n, h] = [dk[n, h, :nope] | dv[n, h]] (overwrite) */
FR_HD void fr_k_mla_kv_split_backward_dkv(size_t i, float *dkv, const float *dk, const float *dv, int nope, int rope,
                                          int vd) {
    float *dst = dkv + i * (size_t)(nope + vd);
    const float *dkr = dk + i * (size_t)(nope + rope);
    for (int j = 0; j < nope; j++) dst[j] = dkr[j];
    for (int j = 0; j < vd; j++) dst[nope + j] = dv[i * (size_t)vd + j];
}

/* i in [0, N*rope): dk_pe[n, j] = sum_h dk[n, h, nope + j] (overwrite; the key's rope part is
 * shared by every head) */
FR_HD void fr_k_mla_kv_split_backward_dpe(size_t i, float *dk_pe, int ld_kpe, const float *dk, int H, int nope,
                                          int rope) {
    const size_t n = i / (size_t)rope, j = i % (size_t)rope;
    float acc = 0.0f;
    for (int h = 0; h < H; h++) acc += dk[(n * (size_t)H + h) * (size_t)(nope + rope) + nope + j];
    dk_pe[n * (size_t)ld_kpe + j] = acc;
}

/* ---------------------------------------------------------------- SwiGLU, elementwise */

/* h = silu(g) u */
FR_HD void fr_k_swiglu_forward(size_t i, float *h, const float *g, const float *u) {
    const float gi = g[i];
    h[i] = gi * (1.0f / (1.0f + expf(-gi))) * u[i];
}

/* s = sigmoid(g): dg = dh u s (1 + g (1 - s)), du = dh g s (dg / du may alias g / u: both read
 * first) */
FR_HD void fr_k_swiglu_backward(size_t i, float *dg, float *du, const float *dh, const float *g, const float *u) {
    const float gi = g[i], ui = u[i], d = dh[i];
    const float s = 1.0f / (1.0f + expf(-gi));
    dg[i] = d * ui * s * (1.0f + gi * (1.0f - s));
    du[i] = d * gi * s;
}

FR_HD void fr_k_add(size_t i, float *y, const float *a, const float *b) { y[i] = a[i] + b[i]; }

FR_HD void fr_k_axpy(size_t i, float *y, float alpha, const float *x) { y[i] += alpha * x[i]; }

/* ---------------------------------------------------------------- cross-entropy */

/* row n: losses[n] = logsumexp(x) - x[target]; dlogits (may alias logits) = (softmax - onehot)
 * * grad_scale; an ignored or invalid target gives 0 and a zero gradient row */
FR_HD void fr_k_cross_entropy_row(int n, float *losses, float *dlogits, const float *logits, const int *targets, int V,
                                  float grad_scale) {
    const float *x = logits + (size_t)n * V;
    float *dx = dlogits ? dlogits + (size_t)n * V : NULL;
    const int tg = targets[n];
    if (tg < 0 || tg >= V) {
        losses[n] = 0.0f;
        if (dx)
            for (int i = 0; i < V; i++) dx[i] = 0.0f;
        return;
    }
    const float xt = x[tg];
    float m = x[0];
    for (int i = 1; i < V; i++) m = x[i] > m ? x[i] : m;
    float sum = 0.0f;
    for (int i = 0; i < V; i++) sum += expf(x[i] - m);
    losses[n] = (m + logf(sum)) - xt;
    if (dx) {
        const float c = grad_scale / sum;
        for (int i = 0; i < V; i++) dx[i] = expf(x[i] - m) * c;
        dx[tg] -= grad_scale;
    }
}

/* ---------------------------------------------------------------- mixed-precision operands */

/* i in [0, rows*cols): the BF16 code of src[r, c] (row stride ld), round to nearest even (NaN
 * stays a quiet NaN), into a dense [rows, cols] array: cuBLAS's BF16 GEMM operand */
FR_HD void fr_k_to_bf16(size_t i, uint16_t *dst, const float *src, int ld, int cols) {
    const size_t r = i / (size_t)cols, c = i % (size_t)cols;
    const float v = src[r * (size_t)ld + c];
    uint32_t bits;
    memcpy(&bits, &v, sizeof bits);
    if ((bits & 0x7fffffffu) > 0x7f800000u) {
        dst[i] = (uint16_t)((bits >> 16) | 0x40u);
        return;
    }
    dst[i] = (uint16_t)((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

/* The E4M3 value nearest to v (round to nearest even, saturating at 448): the spacing of E4M3
 * values is 2^(e-3) for |v| in [2^e, 2^(e+1)), e >= -6, and 2^-9 below (subnormals) */
FR_HD float fr_k_e4m3_round(float v) {
    const float a = fabsf(v);
    int e = 0;
    (void)frexpf(a, &e); /* a = m 2^e, m in [0.5, 1): a's binary exponent is e - 1 */
    const float spacing = a >= 0.015625f ? ldexpf(1.0f, e - 4) : 0.001953125f;
    float q = rintf(a / spacing) * spacing;
    q = q < 448.0f ? q : 448.0f;
    return copysignf(q, v);
}

/* tile t of the tile grid [ceil(rows/tile_rows), ceil(cols/tile_cols)]: scale s =
 * max(amax, 1e-4) / 448, y = e4m3(x / s) * s; scales[t] = s when scales is not NULL; *bad
 * counts non-finite inputs (atomically: many tiles) */
FR_HD void fr_k_fp8_quantize_tile(size_t t, float *y, int ldy, float *scales, const float *x, int ldx, int rows,
                                  int cols, int tile_rows, int tile_cols, unsigned int *bad) {
    const int tc = (cols + tile_cols - 1) / tile_cols;
    const int r0 = (int)(t / (size_t)tc) * tile_rows, c0 = (int)(t % (size_t)tc) * tile_cols;
    const int r1 = r0 + tile_rows < rows ? r0 + tile_rows : rows, c1 = c0 + tile_cols < cols ? c0 + tile_cols : cols;
    float amax = 0.0f;
    unsigned int nonfinite = 0;
    for (int r = r0; r < r1; r++)
        for (int c = c0; c < c1; c++) {
            const float v = x[(size_t)r * ldx + c];
            if (!isfinite(v)) nonfinite++;
            else amax = fabsf(v) > amax ? fabsf(v) : amax;
        }
    const float s = (amax > 1e-4f ? amax : 1e-4f) / 448.0f;
    if (scales) scales[t] = s;
    for (int r = r0; r < r1; r++)
        for (int c = c0; c < c1; c++) y[(size_t)r * ldy + c] = fr_k_e4m3_round(x[(size_t)r * ldx + c] / s) * s;
    if (nonfinite) FR_ATOMIC_ADD(bad, nonfinite);
}

#endif
