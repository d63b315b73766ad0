/*
 * test_cuda_kernels.c — the CUDA backend's elementwise and row kernels (src/cuda/
 * kernels_basic.cuh) run on the host: each body over its whole index space, exactly as the
 * grid-stride launch covers it, against the CPU backend on random inputs. This checks every
 * kernel's arithmetic and indexing on a machine without a GPU; tests/test_cuda_ops.c runs the
 * real launches where a GPU exists.
 *
 * Tolerances, as fr_rel_err (max |a - b| / max |b|): 1e-6 for elementwise results (the CPU's
 * SIMD expf differs from libm's in the last bits), 1e-5 for row reductions (RMSNorm, the
 * cross-entropy, RoPE rows: a different summation order over up to 4,096 values), exact for
 * the copies, the BF16 rounding and the FP8 quantizer (both are exact rules).
 */
#include "cuda/kernels_basic.cuh"
#include "core/internal.h"
#include "formats/numfmt.h"
#include "model/ops.h"
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static fr_rng g_rng;


static float *fcopy(const float *x, size_t n) {
    float *y = malloc((n ? n : 1) * sizeof(float));
    memcpy(y, x, n * sizeof(float));
    return y;
}

static int exact(const float *a, const float *b, size_t n) { return memcmp(a, b, n * sizeof(float)) == 0; }

static void test_embedding(const fr_ops *O) {
    const int V = 37, N = 53, D = 24;
    float *table = fr_test_frand(&g_rng, (size_t)V * D, -1, 1);
    int *tok = malloc(N * sizeof(int));
    for (int n = 0; n < N; n++) tok[n] = (int)(fr_rng_next(&g_rng) % 8); /* repeats: accumulation */
    float *a = fr_test_frand(&g_rng, (size_t)N * D, 0, 0), *b = fr_test_frand(&g_rng, (size_t)N * D, 0, 0);
    O->embedding_forward(a, table, tok, N, D);
    for (size_t i = 0; i < (size_t)N * D; i++) fr_k_embedding_forward(i, b, table, tok, D);
    CHECK(exact(a, b, (size_t)N * D), "embedding forward");
    float *dout = fr_test_frand(&g_rng, (size_t)N * D, -1, 1), *da = fr_test_frand(&g_rng, (size_t)V * D, -1, 1), *db = fcopy(da, (size_t)V * D);
    O->embedding_backward(da, dout, tok, N, D);
    for (size_t i = 0; i < (size_t)N * D; i++) fr_k_embedding_backward(i, db, dout, tok, D);
    CHECK(fr_rel_err(db, da, (size_t)V * D) <= 1e-6, "embedding backward %.3g", fr_rel_err(db, da, (size_t)V * D));
    free(table), free(tok), free(a), free(b), free(dout), free(da), free(db);
}

static void test_rmsnorm(const fr_ops *O, int N, int D, int ldx) {
    float *x = fr_test_frand(&g_rng, (size_t)N * ldx, -2, 2), *w = fr_test_frand(&g_rng, (size_t)D, 0.5f, 1.5f);
    float *ya = fr_test_frand(&g_rng, (size_t)N * D, 0, 0), *yb = fr_test_frand(&g_rng, (size_t)N * D, 0, 0), *ra = fr_test_frand(&g_rng, N, 0, 0), *rb = fr_test_frand(&g_rng, N, 0, 0);
    O->rmsnorm_forward(ya, ra, x, ldx, w, N, D, 1e-6f);
    for (int n = 0; n < N; n++) fr_k_rmsnorm_forward_row(n, yb, rb, x, ldx, w, D, 1e-6f);
    CHECK(fr_rel_err(yb, ya, (size_t)N * D) <= 1e-5 && fr_rel_err(rb, ra, N) <= 1e-5, "rmsnorm forward %dx%d: %.3g",
          N, D, fr_rel_err(yb, ya, (size_t)N * D));
    float *dy = fr_test_frand(&g_rng, (size_t)N * D, -1, 1), *dxa = fr_test_frand(&g_rng, (size_t)N * ldx, -1, 1), *dxb = fcopy(dxa, (size_t)N * ldx);
    float *dwa = fr_test_frand(&g_rng, D, -1, 1), *dwb = fcopy(dwa, D);
    O->rmsnorm_backward(dxa, ldx, dwa, dy, x, ldx, w, ra, N, D);
    for (int n = 0; n < N; n++) fr_k_rmsnorm_backward_dx_row(n, dxb, ldx, dy, x, ldx, w, ra, D);
    for (int d = 0; d < D; d++) fr_k_rmsnorm_backward_dw_col(d, dwb, dy, x, ldx, ra, N, D);
    CHECK(fr_rel_err(dxb, dxa, (size_t)N * ldx) <= 1e-5, "rmsnorm dx %dx%d: %.3g", N, D, fr_rel_err(dxb, dxa, (size_t)N * ldx));
    CHECK(fr_rel_err(dwb, dwa, D) <= 1e-5, "rmsnorm dw %dx%d: %.3g", N, D, fr_rel_err(dwb, dwa, D));
    free(x), free(w), free(ya), free(yb), free(ra), free(rb), free(dy), free(dxa), free(dxb), free(dwa), free(dwb);
}

static void test_rope(const fr_ops *O, int interleave) {
    const int N = 19, H = 3, nope = 8, rope = 16, hs = nope + rope, rs = H * hs + 5, maxpos = 64;
    float *cs = fr_test_frand(&g_rng, (size_t)maxpos * rope / 2, -1, 1), *sn = fr_test_frand(&g_rng, (size_t)maxpos * rope / 2, -1, 1);
    int *pos = malloc(N * sizeof(int));
    for (int n = 0; n < N; n++) pos[n] = (int)(fr_rng_next(&g_rng) % maxpos);
    float *xa = fr_test_frand(&g_rng, (size_t)N * rs, -1, 1), *xb = fcopy(xa, (size_t)N * rs);
    const size_t pairs = (size_t)N * H * (rope / 2);
    O->rope_forward(xa, N, H, rs, hs, nope, rope, pos, cs, sn, interleave);
    for (size_t i = 0; i < pairs; i++) fr_k_rope(i, xb, H, rs, hs, nope, rope, pos, cs, sn, interleave, 1.0f);
    CHECK(fr_rel_err(xb, xa, (size_t)N * rs) <= 1e-6, "rope forward (interleave %d): %.3g", interleave,
          fr_rel_err(xb, xa, (size_t)N * rs));
    O->rope_backward(xa, N, H, rs, hs, nope, rope, pos, cs, sn, interleave);
    for (size_t i = 0; i < pairs; i++) fr_k_rope(i, xb, H, rs, hs, nope, rope, pos, cs, sn, interleave, -1.0f);
    CHECK(fr_rel_err(xb, xa, (size_t)N * rs) <= 1e-6, "rope backward (interleave %d): %.3g", interleave,
          fr_rel_err(xb, xa, (size_t)N * rs));
    free(cs), free(sn), free(pos), free(xa), free(xb);
}

static void test_mla_split(const fr_ops *O) {
    const int N = 11, H = 3, nope = 8, rope = 4, vd = 6, ld = rope + 3;
    float *kv = fr_test_frand(&g_rng, (size_t)N * H * (nope + vd), -1, 1), *kpe = fr_test_frand(&g_rng, (size_t)N * ld, -1, 1);
    const size_t nk = (size_t)N * H * (nope + rope), nv = (size_t)N * H * vd;
    float *ka = fr_test_frand(&g_rng, nk, 0, 0), *kb = fr_test_frand(&g_rng, nk, 0, 0), *va = fr_test_frand(&g_rng, nv, 0, 0), *vb = fr_test_frand(&g_rng, nv, 0, 0);
    O->mla_kv_split_forward(ka, va, kv, kpe, ld, N, H, nope, rope, vd);
    for (size_t i = 0; i < (size_t)N * H; i++) fr_k_mla_kv_split_forward(i, kb, vb, kv, kpe, ld, H, nope, rope, vd);
    CHECK(exact(ka, kb, nk) && exact(va, vb, nv), "mla split forward");
    const size_t nkv = (size_t)N * H * (nope + vd);
    float *da = fr_test_frand(&g_rng, nkv, 0, 0), *db = fr_test_frand(&g_rng, nkv, 0, 0), *pa = fr_test_frand(&g_rng, (size_t)N * ld, 0, 0), *pb = fcopy(pa, (size_t)N * ld);
    O->mla_kv_split_backward(da, pa, ld, ka, va, N, H, nope, rope, vd);
    for (size_t i = 0; i < (size_t)N * H; i++) fr_k_mla_kv_split_backward_dkv(i, db, ka, va, nope, rope, vd);
    for (size_t i = 0; i < (size_t)N * rope; i++) fr_k_mla_kv_split_backward_dpe(i, pb, ld, ka, H, nope, rope);
    CHECK(exact(da, db, nkv), "mla split backward dkv");
    float worst = 0; /* only the rope columns of dk_pe are written */
    for (int n = 0; n < N; n++)
        for (int j = 0; j < rope; j++) worst = fmaxf(worst, fabsf(pa[(size_t)n * ld + j] - pb[(size_t)n * ld + j]));
    CHECK(worst <= 1e-6f, "mla split backward dk_pe %.3g", worst);
    free(kv), free(kpe), free(ka), free(kb), free(va), free(vb), free(da), free(db), free(pa), free(pb);
}

static void test_elementwise(const fr_ops *O) {
    const size_t n = 4099;
    float *g = fr_test_frand(&g_rng, n, -6, 6), *u = fr_test_frand(&g_rng, n, -2, 2), *ha = fr_test_frand(&g_rng, n, 0, 0), *hb = fr_test_frand(&g_rng, n, 0, 0);
    O->swiglu_forward(ha, g, u, n);
    for (size_t i = 0; i < n; i++) fr_k_swiglu_forward(i, hb, g, u);
    CHECK(fr_rel_err(hb, ha, n) <= 1e-6, "swiglu forward %.3g", fr_rel_err(hb, ha, n));
    float *dh = fr_test_frand(&g_rng, n, -1, 1), *dga = fr_test_frand(&g_rng, n, 0, 0), *dua = fr_test_frand(&g_rng, n, 0, 0), *dgb = fr_test_frand(&g_rng, n, 0, 0), *dub = fr_test_frand(&g_rng, n, 0, 0);
    O->swiglu_backward(dga, dua, dh, g, u, n);
    for (size_t i = 0; i < n; i++) fr_k_swiglu_backward(i, dgb, dub, dh, g, u);
    CHECK(fr_rel_err(dgb, dga, n) <= 1e-6 && fr_rel_err(dub, dua, n) <= 1e-6, "swiglu backward %.3g %.3g",
          fr_rel_err(dgb, dga, n), fr_rel_err(dub, dua, n));
    float *ya = fr_test_frand(&g_rng, n, 0, 0), *yb = fr_test_frand(&g_rng, n, 0, 0);
    O->add(ya, g, u, n);
    for (size_t i = 0; i < n; i++) fr_k_add(i, yb, g, u);
    CHECK(exact(ya, yb, n), "add");
    O->axpy(ya, 0.37f, u, n);
    for (size_t i = 0; i < n; i++) fr_k_axpy(i, yb, 0.37f, u);
    CHECK(exact(ya, yb, n), "axpy");
    free(g), free(u), free(ha), free(hb), free(dh), free(dga), free(dua), free(dgb), free(dub), free(ya), free(yb);
}

static void test_cross_entropy(const fr_ops *O, int V) {
    const int N = 7;
    float *x = fr_test_frand(&g_rng, (size_t)N * V, -8, 8);
    int t[7] = {0, V - 1, 3 % V, -100, V / 2, V, 1 % V}; /* an ignored and an invalid target */
    float *la = fr_test_frand(&g_rng, N, 0, 0), *lb = fr_test_frand(&g_rng, N, 0, 0), *da = fr_test_frand(&g_rng, (size_t)N * V, 0, 0), *db = fr_test_frand(&g_rng, (size_t)N * V, 0, 0);
    O->cross_entropy(la, da, x, t, N, V, 0.25f);
    for (int n = 0; n < N; n++) fr_k_cross_entropy_row(n, lb, db, x, t, V, 0.25f);
    CHECK(fr_rel_err(lb, la, N) <= 1e-5 && fr_rel_err(db, da, (size_t)N * V) <= 1e-5, "cross-entropy V %d: %.3g %.3g", V,
          fr_rel_err(lb, la, N), fr_rel_err(db, da, (size_t)N * V));
    /* in place (dlogits aliasing logits), as the model calls it */
    float *xb = fcopy(x, (size_t)N * V);
    for (int n = 0; n < N; n++) fr_k_cross_entropy_row(n, lb, xb, xb, t, V, 0.25f);
    CHECK(fr_rel_err(xb, da, (size_t)N * V) <= 1e-5, "cross-entropy in place V %d", V);
    free(x), free(la), free(lb), free(da), free(db), free(xb);
}

static void test_bf16(void) {
    /* special values and random bit patterns against the library's encoder */
    const uint32_t special[] = {0, 0x80000000u, 0x7f800000u, 0xff800000u, 0x7fc00000u, 0x7f800001u, 0x3f808000u,
                                0x3f818000u, 0x7f7fffffu, 0x00000001u, 0x3f7fffffu, 0x477fe000u};
    const int n = 4096 + (int)(sizeof special / sizeof special[0]);
    float *x = malloc(n * sizeof(float));
    for (int i = 0; i < n; i++) {
        uint32_t b = i < (int)(sizeof special / sizeof special[0]) ? special[i] : (uint32_t)fr_rng_next(&g_rng);
        memcpy(&x[i], &b, 4);
    }
    uint16_t *got = malloc(n * sizeof(uint16_t));
    for (int i = 0; i < n; i++) fr_k_to_bf16((size_t)i, got, x, n, n); /* one row of n */
    int bad = 0;
    for (int i = 0; i < n; i++) {
        const uint16_t want = fr_bf16_encode(x[i]);
        const int nan = isnan(x[i]);
        bad += nan ? !((got[i] & 0x7f80) == 0x7f80 && (got[i] & 0x7f)) : got[i] != want;
    }
    CHECK(bad == 0, "bf16 rounding: %d of %d codes differ from fr_bf16_encode", bad, n);
    /* a strided 2-D operand lands dense */
    float m[3 * 5];
    for (int i = 0; i < 15; i++) m[i] = (float)i + 0.5f;
    uint16_t d[3 * 4];
    for (size_t i = 0; i < 12; i++) fr_k_to_bf16(i, d, m, 5, 4);
    CHECK(fr_bf16_decode(d[4]) == 5.5f && fr_bf16_decode(d[11]) == 13.5f, "bf16 operand packing");
    free(x), free(got);
}

static void test_fp8(const fr_ops *O, int rows, int cols, int tr, int tc) {
    float *x = fr_test_frand(&g_rng, (size_t)rows * cols, -3, 3);
    for (int i = 0; i < rows * cols; i += 97) x[i] *= 1e-4f; /* small values: E4M3 subnormals */
    if (rows * cols > 50) x[50] = 0.0f;
    float *ya = fr_test_frand(&g_rng, (size_t)rows * cols, 0, 0), *yb = fr_test_frand(&g_rng, (size_t)rows * cols, 0, 0);
    const size_t tiles = (size_t)((rows + tr - 1) / tr) * ((cols + tc - 1) / tc);
    float *sa = fr_test_frand(&g_rng, tiles, 0, 0), *sb = fr_test_frand(&g_rng, tiles, 0, 0);
    const long bad_a = O->fp8_quantize(ya, cols, sa, x, cols, rows, cols, tr, tc);
    unsigned int bad_b = 0;
    for (size_t t = 0; t < tiles; t++) fr_k_fp8_quantize_tile(t, yb, cols, sb, x, cols, rows, cols, tr, tc, &bad_b);
    CHECK(exact(ya, yb, (size_t)rows * cols) && exact(sa, sb, tiles) && bad_a == 0 && bad_b == 0,
          "fp8 quantize %dx%d in %dx%d tiles: %.3g", rows, cols, tr, tc, fr_rel_err(yb, ya, (size_t)rows * cols));
    x[7] = NAN;
    x[rows * cols - 1] = INFINITY;
    bad_b = 0;
    for (size_t t = 0; t < tiles; t++) fr_k_fp8_quantize_tile(t, yb, cols, NULL, x, cols, rows, cols, tr, tc, &bad_b);
    CHECK(bad_b == 2, "fp8 quantize counts non-finite inputs: %u", bad_b);
    free(x), free(ya), free(yb), free(sa), free(sb);
}

int main(void) {
    fr_rng_seed(&g_rng, 20261205);
    const fr_ops *O = fr_ops_cpu();
    test_embedding(O);
    test_rmsnorm(O, 13, 40, 40);
    test_rmsnorm(O, 5, 4096, 4100);
    test_rope(O, 1);
    test_rope(O, 0);
    test_mla_split(O);
    test_elementwise(O);
    test_cross_entropy(O, 320);
    test_cross_entropy(O, 4099);
    test_bf16();
    test_fp8(O, 130, 300, 1, 128);
    test_fp8(O, 130, 300, 128, 128);
    test_fp8(O, 300, 130, 128, 1);
    return fr_test_finish("test_cuda_kernels");
}
