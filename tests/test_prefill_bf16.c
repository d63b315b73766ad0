/*
 * test_prefill_bf16.c — prompt processing on the BF16 matrix units (cpu/qmatmul.c, "BF16
 * prefill": oneDNN's BF16 matmul, AMX or AVX512-BF16 where the CPU has them, the exact
 * emulation elsewhere; CTest runs this test a second time with DNNL_MAX_CPU_ISA=AVX2, which
 * takes the emulation).
 *
 *  - fr_qmatmul of 40 rows with the path on, for BF16, Q8_0 and Q4_1 weights (on the default
 *    BF16 GEMM, and on oneDNN's too where it has a kernel that is not the default), equals the FP32
 *    product of the BF16-rounded activations and the BF16-rounded dequantized weights within
 *    1e-5 relative (the products of two BF16 values are exact in FP32: only the order of the
 *    FP32 additions differs), and the FP32 product of the unrounded operands within 1e-2
 *    (two roundings of relative 2^-9 each, over sums of 256 terms of both signs);
 *  - below 16 rows (decode) the path is not taken: results equal the default path bit for bit;
 *  - the engine (a 40-token prefill of a dense random model, all logits, weights bf16 / q8_0 /
 *    q4_1) with the path on vs FP32 activations (fr_qmatmul_set_int8_act(0): x W^T up to summation
 *    order): relative logit error <= 3e-2; the int8-activation path's error is printed beside.
 *
 * And the int8 prefill (cpu/qgemm_vnni.c, prompts' Q8_0 / Q4_1 / K-format products as VNNI
 * matrix products): each product against the row kernels within the reordering bound, decode
 * sizes untouched, and the engine's logits against FP32 activations (test_int8_product, below).
 */
#include "frugal.h"
#include "core/internal.h"
#include "cpu/ops_cpu.h"
#include "cpu/qmatmul.h"
#include "cpu/qmatmul_internal.h"
#include "formats/kquant.h"
#include "formats/numfmt.h"
#include "formats/qmatrix.h"
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static fr_rng g_rng;


static void bf16_round(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = fr_bf16_decode(fr_bf16_encode(x[i]));
}

static void test_product(fr_qtype t) {
    const int M = 40, R = 96, C = 256;
    float *x = fr_test_frand(&g_rng, (size_t)M * C, -1, 1), *w = fr_test_frand(&g_rng, (size_t)R * C, -1, 1);
    fr_qmatrix q;
    CHECK(fr_qmatrix_from_f32(&q, t, w, R, C) == FR_OK, "quantize %s", fr_qtype_name(t));
    float *wd = malloc((size_t)R * C * sizeof(float)), *xr = malloc((size_t)M * C * sizeof(float));
    for (int r = 0; r < R; r++) fr_qmatrix_row_f32(&q, r, wd + (size_t)r * C);
    float *y = malloc((size_t)M * R * sizeof(float)), *ref = malloc((size_t)M * R * sizeof(float));
    float *y0 = malloc((size_t)M * R * sizeof(float)), *exact = malloc((size_t)M * R * sizeof(float));
    fr_qmatmul_set_prefill_bf16(1);
    fr_qmatmul(y, x, &q, M);
    /* the reference: the same roundings, an FP32 GEMM */
    memcpy(xr, x, (size_t)M * C * sizeof(float));
    bf16_round(xr, (size_t)M * C);
    fr_cpu_gemm(0, 1, M, R, C, 1.0f, x, C, wd, C, 0.0f, exact, R);
    bf16_round(wd, (size_t)R * C);
    fr_cpu_gemm(0, 1, M, R, C, 1.0f, xr, C, wd, C, 0.0f, ref, R);
    const double e = fr_rel_err(y, ref, (size_t)M * R), e_exact = fr_rel_err(y, exact, (size_t)M * R);
    CHECK(e <= 1e-5, "%s: BF16 prefill vs the rounded FP32 product %.3g (tol 1e-5)", fr_qtype_name(t), e);
    CHECK(e_exact <= 1e-2, "%s: BF16 prefill vs the exact product %.3g (tol 1e-2)", fr_qtype_name(t), e_exact);
    /* decode-sized products never take the path */
    float *a = malloc((size_t)4 * R * sizeof(float)), *b = malloc((size_t)4 * R * sizeof(float));
    fr_qmatmul(a, x, &q, 4);
    fr_qmatmul_set_prefill_bf16(0);
    fr_qmatmul(b, x, &q, 4);
    fr_qmatmul(y0, x, &q, M);
    CHECK(memcmp(a, b, (size_t)4 * R * sizeof(float)) == 0, "%s: a 4-row product changed with the BF16 prefill on",
          fr_qtype_name(t));
    CHECK(memcmp(y, y0, (size_t)M * R * sizeof(float)) != 0, "%s: the 40-row product did not take the BF16 path",
          fr_qtype_name(t));
    printf("%-5s %d x %d x %d on %s: vs the BF16-rounded FP32 product %.2e (tol 1e-5), vs the exact product %.2e "
           "(tol 1e-2)\n", fr_qtype_name(t), M, C, R, fr_cpu_bf16_gemm_path(), e, e_exact);
    fr_qmatrix_free(&q);
    free(x), free(w), free(wd), free(xr), free(y), free(ref), free(y0), free(exact), free(a), free(b);
}

/* The int8 prefill (qgemm_vnni.c): a Q8_0 product of >= 16 rows as a VNNI matrix product. The
 * same int8 activations and integer block sums as the row kernels, one FP32 FMA per block in
 * block order where they add 8 lanes per block and reduce at the end: each side's result is
 * the exact sum of its nb block terms t_b (|t_b| <= sum over the block of |w^_i x_i| (1 + 2^-7),
 * the activation's rounding) with at most nb + 16 roundings, so
 * |y_int8 - y_rows| <= 2 (nb + 16) u (1 + 2^-7) sum_i |w^_i x_i|, u = 2^-24. Quants of -128 (a
 * GGUF may hold them; the repacking adds 128) are in the rows. */
static void test_int8_product(fr_qtype t, int M, int R, int C) {
    float *x = fr_test_frand(&g_rng, (size_t)M * C, -1, 1), *w = fr_test_frand(&g_rng, (size_t)R * C, -1, 1);
    fr_qmatrix q;
    CHECK(fr_qmatrix_from_f32(&q, t, w, R, C) == FR_OK, "quantize");
    const int nb = C / 32;
    const size_t rb = fr_qtype_row_bytes(t, C);
    if (t == FR_QT_Q8_0)
        for (int r = 0; r < R; r += 3) /* a -128 in every third row, at a varying place */
            ((int8_t *)q.data)[rb * (size_t)r + 2 * (size_t)nb + (size_t)(r * 7) % C] = -128;
    float *wd = malloc((size_t)R * C * sizeof(float)), *mag = malloc((size_t)R * C * sizeof(float));
    for (int r = 0; r < R; r++) fr_qmatrix_row_f32(&q, r, wd + (size_t)r * C);
    /* |d q_i| + |m_b| per weight (the minimum term of Q4_1 and the K formats is a term of its own:
     * Q4_1's value is d q + m, the K formats' d sc_j q - dmin m_j) */
    const int kfmt = t == FR_QT_Q4_K || t == FR_QT_Q5_K;
    for (int r = 0; r < R; r++)
        for (int i = 0; i < C; i++) {
            float m = 0.f;
            if (t == FR_QT_Q4_1) {
                uint16_t h;
                memcpy(&h, (const uint8_t *)q.data + rb * (size_t)r + 2 * (size_t)(nb + i / 32), 2);
                m = fr_q_f16_to_f32(h);
            } else if (kfmt) {
                const fr_kq_type kt = t == FR_QT_Q4_K ? FR_KQ_Q4_K : FR_KQ_Q5_K;
                uint8_t qq[FR_QK_K];
                float sc[8], mn[8];
                fr_kq_unpack_q45(kt, (const uint8_t *)q.data + rb * (size_t)r + fr_kq_block_bytes(kt) * (size_t)(i / 256),
                                 qq, sc, mn);
                m = -mn[(i % 256) / 32];
            }
            mag[(size_t)r * C + i] = fabsf(wd[(size_t)r * C + i] - m) + fabsf(m);
        }
    float *yr = malloc((size_t)M * R * sizeof(float)), *yg = malloc((size_t)M * R * sizeof(float));
    fr_qmatmul_set_prefill_int8(0);
    fr_qmatmul(yr, x, &q, M);
    fr_qmatmul_set_prefill_int8(1);
    fr_qmatmul(yg, x, &q, M);
    double worst = 0;
    long over = 0;
    for (int j = 0; j < M; j++)
        for (int r = 0; r < R; r++) {
            double S = 0;
            for (int i = 0; i < C; i++) S += fabs((double)mag[(size_t)r * C + i] * x[(size_t)j * C + i]);
            const double bound = 2.0 * (nb + 16) * 0x1p-24 * (1 + 0x1p-7) * S;
            const double diff = fabs((double)yg[(size_t)j * R + r] - yr[(size_t)j * R + r]);
            if (diff > bound) over++;
            if (bound > 0 && diff / bound > worst) worst = diff / bound;
        }
    const char *tn = fr_qtype_name(t);
    CHECK(over == 0, "int8 prefill %s %d x %d x %d: %ld results beyond the reordering bound", tn, M, C, R, over);
    if (fr_qzmm_supported())
        CHECK(memcmp(yr, yg, (size_t)M * R * sizeof(float)) != 0, "int8 prefill %s %d x %d x %d: the path was not taken",
              tn, M, C, R);
    /* decode-sized products never take it */
    fr_qmatmul(yg, x, &q, 8);
    fr_qmatmul_set_prefill_int8(0);
    fr_qmatmul(yr, x, &q, 8);
    CHECK(memcmp(yr, yg, (size_t)8 * R * sizeof(float)) == 0, "%s: an 8-row product changed with the int8 prefill on",
          tn);
    printf("int8 prefill %s %d x %d x %d (%s): worst |y - y_rows| / bound %.3f\n", tn, M, C, R,
           fr_qzmm_supported() ? "VNNI matrix product" : "no AVX-512 VNNI: the row kernels", worst);
    fr_qmatrix_free(&q);
    free(x), free(w), free(wd), free(mag), free(yr), free(yg);
}

/* A dense random model (no routed experts: a BF16 rounding cannot flip a routing choice,
 * which on a tiny MoE changes whole tokens' logits) saved to a temporary folder */
static const char *DENSE =
    "{\"architectures\": [\"DeepseekV3ForCausalLM\"], \"model_type\": \"deepseek_v3\", \"vocab_size\": 128,"
    " \"hidden_size\": 128, \"intermediate_size\": 256, \"moe_intermediate_size\": 64, \"num_hidden_layers\": 2,"
    " \"num_attention_heads\": 4, \"num_key_value_heads\": 4, \"q_lora_rank\": 64, \"kv_lora_rank\": 64,"
    " \"qk_nope_head_dim\": 32, \"qk_rope_head_dim\": 32, \"v_head_dim\": 32, \"n_routed_experts\": 0,"
    " \"n_shared_experts\": 0, \"num_experts_per_tok\": 0, \"first_k_dense_replace\": 2,"
    " \"num_nextn_predict_layers\": 0, \"max_position_embeddings\": 256, \"rope_theta\": 10000.0,"
    " \"rms_norm_eps\": 1e-6, \"tie_word_embeddings\": false, \"initializer_range\": 0.05,"
    " \"bos_token_id\": 0, \"eos_token_id\": 1}";
static char g_dir[64];

static int make_dense(void) {
    fr_config cfg;
    fr_model *m = NULL;
    snprintf(g_dir, sizeof g_dir, "/tmp/frugal_test_prefill_%d", (int)getpid());
    int rc = fr_config_parse(&cfg, DENSE, strlen(DENSE));
    if (rc == FR_OK) rc = fr_model_create(&m, &cfg, 5);
    if (rc == FR_OK) rc = fr_model_save(m, g_dir);
    fr_model_free(m);
    CHECK(rc == FR_OK, "dense model: %s", fr_last_error());
    return rc;
}

static int prefill_logits(int weight_type, float *out, int T, const int *ids) {
    fr_engine_options o;
    fr_engine_options_default(&o);
    o.weight_type = weight_type;
    fr_engine *e = NULL;
    fr_seq *s = NULL;
    int rc = fr_engine_load(&e, g_dir, &o);
    if (rc == FR_OK) rc = fr_seq_create(&s, e);
    if (rc == FR_OK) rc = fr_engine_forward(e, &s, 1, &ids, &T, out, 1);
    fr_seq_free(s);
    fr_engine_free(e);
    return rc;
}

static void test_engine(int weight_type) {
    const int T = 40, V = 128; /* the fixture's vocabulary */
    int ids[40];
    for (int i = 0; i < T; i++) ids[i] = (int)(fr_rng_uniform(&g_rng) * V);
    float *on = malloc((size_t)T * V * sizeof(float)), *exact = malloc((size_t)T * V * sizeof(float));
    float *i8 = malloc((size_t)T * V * sizeof(float));
    float *gemm = malloc((size_t)T * V * sizeof(float));
    fr_qmatmul_set_prefill_bf16(1);
    int rc = prefill_logits(weight_type, on, T, ids);
    fr_qmatmul_set_prefill_bf16(0);
    if (rc == FR_OK) rc = prefill_logits(weight_type, i8, T, ids); /* the default path: int8 activations */
    fr_qmatmul_set_prefill_int8(1);                                  /* Q8_0 as VNNI matrix products */
    if (rc == FR_OK) rc = prefill_logits(weight_type, gemm, T, ids);
    fr_qmatmul_set_prefill_int8(0);
    fr_qmatmul_set_int8_act(0);                                      /* exact: x W^T in FP32 */
    if (rc == FR_OK) rc = prefill_logits(weight_type, exact, T, ids);
    fr_qmatmul_set_int8_act(1);
    CHECK(rc == FR_OK, "engine: %s", fr_last_error());
    if (rc == FR_OK) {
        const double e = fr_rel_err(on, exact, (size_t)T * V), e8 = fr_rel_err(i8, exact, (size_t)T * V);
        const double eg = fr_rel_err(gemm, exact, (size_t)T * V);
        CHECK(e <= 3e-2, "%s engine: BF16 prefill vs exact, relative logit error %.3g (tol 3e-2)",
              fr_weight_type_name(weight_type), e);
        /* The int8 prefill reorders the int8-activation path's FP32 additions, but the next
         * product's activations are rounded to int8 again, and a last-bit change can move one
         * to the next level: the two paths differ by about as much as each differs from FP32
         * activations, and the int8 prefill must be as close to those as the rows are. */
        CHECK(eg <= 1.5 * e8 + 1e-3, "%s engine: int8 prefill vs exact, relative logit error %.3g (tol 1.5 x the int8 "
              "rows' %.3g + 1e-3)", fr_weight_type_name(weight_type), eg, e8);
        printf("engine %-5s prefill of %d tokens, relative logit error vs FP32 activations: BF16 path %.3g (tol 3e-2), "
               "int8-activation rows %.3g, int8 prefill %.3g (tol 1.5 x rows + 1e-3)\n",
               fr_weight_type_name(weight_type), T, e, e8, eg);
    }
    free(on), free(exact), free(i8), free(gemm);
}

int main(void) {
    fr_rng_seed(&g_rng, 1234);
    test_product(FR_QT_BF16);
    test_product(FR_QT_Q8_0);
    test_product(FR_QT_Q4_1);
    /* where the default is the emulation but oneDNN has a BF16 kernel (Intel without AMX, which
     * takes the emulation as the faster), the products on oneDNN's too */
    if (strncmp(fr_cpu_bf16_gemm_path(), "onednn", 6) != 0 && fr_cpu_bf16_gemm_set_path("onednn")) {
        test_product(FR_QT_BF16);
        test_product(FR_QT_Q8_0);
        test_product(FR_QT_Q4_1);
    }
    fr_cpu_bf16_gemm_set_path(NULL);
    for (int k = 0; k < 2; k++) {
        const fr_qtype t = k ? FR_QT_Q4_1 : FR_QT_Q8_0;
        test_int8_product(t, 40, 100, 256);
        test_int8_product(t, 17, 33, 96);  /* an odd number of blocks (Q4_1: a quad, then a pair... */
        test_int8_product(t, 20, 20, 224); /* ... 7 blocks: a quad, a pair and a single), rows not 16 */
        test_int8_product(t, 64, 48, 1024);
        test_int8_product(t, 16, 16, 32);  /* the smallest: one block, one group */
    }
    for (int k = 0; k < 3; k++) { /* the K formats: sub-blocks of 32 (Q6_K: 16) in super-blocks of 256 */
        const fr_qtype t = k == 2 ? FR_QT_Q6_K : k ? FR_QT_Q5_K : FR_QT_Q4_K;
        test_int8_product(t, 40, 100, 256);
        test_int8_product(t, 17, 33, 768);
        test_int8_product(t, 64, 48, 1024);
    }
    if (make_dense() == FR_OK) {
        test_engine(FR_QT_BF16);
        test_engine(FR_QT_Q8_0);
        test_engine(FR_QT_Q4_1);
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf %s", g_dir);
        if (system(cmd) != 0) printf("could not remove %s\n", g_dir);
    }
    fr_qmatmul_set_prefill_bf16(-1);
    fr_qmatmul_set_prefill_int8(-1);
    return fr_test_finish("test_prefill_bf16");
}
