/*
 * test_precision_train.c — a whole training step in each mixed precision (fr_model_set_precision
 * "bf16" and "fp8") against the same step in FP32: same model, tokens and targets.
 *
 * BF16: one linear layer (forward, input and weight gradient) against a double-precision
 * product of the BF16-rounded inputs (within 1e-5 of the largest output); the whole step's
 * loss within 0.5 % and its gradient within BF16_GRAD_REL_MOE relative L2 of FP32's (BF16 keeps
 * 8 significant bits, 0.4 % per rounding; measured 0.03 % and 0.055: the MoE gradient moves
 * most through the few tokens whose top-k choice flips), and in an all-dense variant of the
 * model within BF16_GRAD_REL_DENSE (measured 0.0064); and it differs from FP32 (the path ran).
 *
 * FP8, then:
 *   - the FP8 path really ran: the loss and the gradients differ from FP32's;
 *   - the loss agrees within 2 % relative and the whole gradient (all parameters as one
 *     vector) within GRAD_REL relative L2 error;
 *   - switching back to FP32 gives FP32's results bit for bit (nothing sticks);
 *   - a NaN entering an FP8 GEMM fails the pass with FR_ERR_STATE naming it; an unknown name
 *     is FR_ERR_ARG;
 *   - the 128 x 128 output-gradient experiment (fr_model_set_fp8_grad_tiles 128) changes the
 *     input gradients only: the loss is the same bit for bit, the gradients are not.
 * The model has widths of 256 (full 128-wide tiles and blocks) and 96 (partial ones).
 *
 * First, one FP8 linear layer (fr_qlinear_forward / _backward) against the recipe written
 * out here: x and dy rounded in 1 x 128 tiles along the reduced dimension, W in 128 x 128
 * blocks, and for the weight gradient dy and x in 128 x 1 tiles along the tokens (the rounding
 * itself is test_fp8_recipe's), products summed in double: within 1e-5 of the largest output.
 * Then the whole step, whose tolerances are stated from what E4M3 does to a random-init model
 * (3 mantissa bits; gradients at initialisation are sums with much cancellation, so their
 * relative error is several times one rounding's): loss within 2 % (measured 0.1 %), the
 * whole gradient within GRAD_REL (measured 0.18; unchanged without the 1e-4 amax floor).
 */
#include "frugal.h"
#include "formats/numfmt.h"
#include "model/block.h"
#include "model/optim.h"
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *CONFIG =
    "{\"architectures\": [\"DeepseekV3ForCausalLM\"], \"model_type\": \"deepseek_v3\",\n"
    " \"vocab_size\": 512, \"hidden_size\": 256, \"intermediate_size\": 384, \"moe_intermediate_size\": 96,\n"
    " \"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"num_key_value_heads\": 4,\n"
    " \"q_lora_rank\": 128, \"kv_lora_rank\": 96, \"qk_nope_head_dim\": 32, \"qk_rope_head_dim\": 16, \"v_head_dim\": 32,\n"
    " \"n_routed_experts\": 8, \"n_shared_experts\": 1, \"num_experts_per_tok\": 2, \"n_group\": 2, \"topk_group\": 1,\n"
    " \"topk_method\": \"noaux_tc\", \"scoring_func\": \"sigmoid\", \"norm_topk_prob\": true, \"routed_scaling_factor\": 2.5,\n"
    " \"first_k_dense_replace\": 1, \"moe_layer_freq\": 1, \"num_nextn_predict_layers\": 1,\n"
    " \"max_position_embeddings\": 256, \"rope_theta\": 10000.0, \"rope_scaling\": null, \"rms_norm_eps\": 1e-06,\n"
    " \"tie_word_embeddings\": false, \"initializer_range\": 0.02, \"hidden_act\": \"silu\",\n"
    " \"bos_token_id\": 0, \"eos_token_id\": 1}\n";

enum { B = 2, T = 96 };
#define GRAD_REL 0.25
/* BF16 against FP32: a MoE model's gradient moves most by the few tokens whose top-k experts
 * change when the router's input is rounded (measured 0.055: dense-only, 0.0064) */
#define BF16_GRAD_REL_MOE 0.10
#define BF16_GRAD_REL_DENSE 0.02

/* bfloat16 rounding written out (round to nearest even on the bits; finite inputs) */
static double bf16(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    const uint32_t low = u & 0xffffu, keep = u & 0xffff0000u;
    const uint32_t r = low > 0x8000u || (low == 0x8000u && (keep & 0x10000u)) ? keep + 0x10000u : keep;
    float y;
    memcpy(&y, &r, 4);
    return y;
}

/* One BF16 linear layer: y = x W^T, dx = dy W, dW = dy^T x over BF16-rounded inputs. */
static void test_linear_bf16(fr_model *m) {
    const int N = 70, in = 150, out = 90;
    float *x = malloc((size_t)N * in * 4), *W = malloc((size_t)out * in * 4), *dy = malloc((size_t)N * out * 4);
    float *y = malloc((size_t)N * out * 4), *dx = malloc((size_t)N * in * 4), *dW = calloc((size_t)out * in, 4);
    uint64_t s = 5;
    for (int i = 0; i < N * in; i++) s = s * 6364136223846793005ull + 1, x[i] = (float)((int)(s >> 40) % 2001 - 1000) * 1.1e-3f;
    for (int i = 0; i < out * in; i++) s = s * 6364136223846793005ull + 1, W[i] = (float)((int)(s >> 40) % 2001 - 1000) * 2.3e-5f;
    for (int i = 0; i < N * out; i++) s = s * 6364136223846793005ull + 1, dy[i] = (float)((int)(s >> 40) % 2001 - 1000) * 1.7e-6f;
    fr_qlinear_forward(m, y, out, x, in, W, in, N, in, out, 0.0f);
    fr_qlinear_backward(m, dx, in, 0.0f, dW, in, dy, out, x, in, W, in, N, in, out);
    double e[3] = {0, 0, 0}, mx[3] = {0, 0, 0};
    for (int n = 0; n < N; n++)
        for (int o = 0; o < out; o++) {
            double r = 0;
            for (int i = 0; i < in; i++) r += bf16(x[n * in + i]) * bf16(W[o * in + i]);
            e[0] = fmax(e[0], fabs(y[n * out + o] - r)), mx[0] = fmax(mx[0], fabs(r));
        }
    for (int n = 0; n < N; n++)
        for (int i = 0; i < in; i++) {
            double r = 0;
            for (int o = 0; o < out; o++) r += bf16(dy[n * out + o]) * bf16(W[o * in + i]);
            e[1] = fmax(e[1], fabs(dx[n * in + i] - r)), mx[1] = fmax(mx[1], fabs(r));
        }
    for (int o = 0; o < out; o++)
        for (int i = 0; i < in; i++) {
            double r = 0;
            for (int n = 0; n < N; n++) r += bf16(dy[n * out + o]) * bf16(x[n * in + i]);
            e[2] = fmax(e[2], fabs(dW[o * in + i] - r)), mx[2] = fmax(mx[2], fabs(r));
        }
    const char *what[3] = {"forward", "input gradient", "weight gradient"};
    for (int t = 0; t < 3; t++)
        CHECK(e[t] <= 1e-5 * mx[t], "BF16 linear %s: error %.3g of the largest value (bound 1e-5)", what[t], e[t] / mx[t]);
    free(x), free(W), free(dy), free(y), free(dx), free(dW);
}

/* One FP8 linear layer against the recipe written out (see the header comment). */
static void test_linear(fr_model *m) {
    const int N = 200, in = 300, out = 160;
    const fr_ops *o = fr_ops_cpu();
    float *x = malloc((size_t)N * in * 4), *W = malloc((size_t)out * in * 4), *dy = malloc((size_t)N * out * 4);
    float *y = malloc((size_t)N * out * 4), *dx = malloc((size_t)N * in * 4), *dW = calloc((size_t)out * in, 4);
    float *qa = malloc((size_t)N * in * 4), *qb = malloc((size_t)N * (in > out ? in : out) * 4), *qw = malloc((size_t)out * in * 4);
    uint64_t s = 99;
    for (int i = 0; i < N * in; i++) s = s * 6364136223846793005ull + 1, x[i] = (float)((int)(s >> 40) % 2001 - 1000) * 1e-3f;
    for (int i = 0; i < out * in; i++) s = s * 6364136223846793005ull + 1, W[i] = (float)((int)(s >> 40) % 2001 - 1000) * 2e-5f;
    for (int i = 0; i < N * out; i++) s = s * 6364136223846793005ull + 1, dy[i] = (float)((int)(s >> 40) % 2001 - 1000) * 1e-6f;
    fr_qlinear_forward(m, y, out, x, in, W, in, N, in, out, 0.0f);
    fr_qlinear_backward(m, dx, in, 0.0f, dW, in, dy, out, x, in, W, in, N, in, out);
    double e[3] = {0, 0, 0}, mx[3] = {0, 0, 0};
    /* y = Q1x128(x) Q128x128(W)^T */
    o->fp8_quantize(qa, in, NULL, x, in, N, in, 1, 128);
    o->fp8_quantize(qw, in, NULL, W, in, out, in, 128, 128);
    for (int i = 0; i < N; i++)
        for (int j = 0; j < out; j++) {
            double r = 0;
            for (int k = 0; k < in; k++) r += (double)qa[(size_t)i * in + k] * qw[(size_t)j * in + k];
            e[0] = fmax(e[0], fabs(r - y[(size_t)i * out + j])), mx[0] = fmax(mx[0], fabs(r));
        }
    /* dx = Q1x128(dy) Q128x128(W) */
    o->fp8_quantize(qb, out, NULL, dy, out, N, out, 1, 128);
    for (int i = 0; i < N; i++)
        for (int k = 0; k < in; k++) {
            double r = 0;
            for (int j = 0; j < out; j++) r += (double)qb[(size_t)i * out + j] * qw[(size_t)j * in + k];
            e[1] = fmax(e[1], fabs(r - dx[(size_t)i * in + k])), mx[1] = fmax(mx[1], fabs(r));
        }
    /* dW = Q128x1(dy)^T Q128x1(x) */
    o->fp8_quantize(qb, out, NULL, dy, out, N, out, 128, 1);
    o->fp8_quantize(qa, in, NULL, x, in, N, in, 128, 1);
    for (int j = 0; j < out; j++)
        for (int k = 0; k < in; k++) {
            double r = 0;
            for (int i = 0; i < N; i++) r += (double)qb[(size_t)i * out + j] * qa[(size_t)i * in + k];
            e[2] = fmax(e[2], fabs(r - dW[(size_t)j * in + k])), mx[2] = fmax(mx[2], fabs(r));
        }
    const char *what[3] = {"forward", "input gradient", "weight gradient"};
    for (int t = 0; t < 3; t++)
        CHECK(e[t] <= 1e-5 * mx[t], "FP8 linear %s: error %.3g of the largest value (bound 1e-5)", what[t], e[t] / mx[t]);
    free(x), free(W), free(dy), free(y), free(dx), free(dW), free(qa), free(qb), free(qw);
}

/* forward + backward; copies every gradient into g (n_params floats, tensor order) */
static int step(fr_model *m, const int *tok, const int *tgt, double *loss, float *g) {
    fr_model_zero_grad(m);
    fr_loss_info li;
    int rc = fr_model_forward(m, tok, tgt, B, T, &li);
    if (rc == FR_OK) rc = fr_model_backward(m);
    if (rc != FR_OK) return rc;
    *loss = li.loss;
    size_t off = 0;
    for (int i = 0; i < fr_model_num_tensors(m); i++) {
        int nd;
        int64_t shape[4];
        const char *name = fr_model_tensor_info(m, i, &nd, shape);
        size_t n;
        const float *gr = fr_model_grad(m, name, &n);
        memcpy(g + off, gr, n * sizeof(float));
        off += n;
    }
    return FR_OK;
}

/* relative L2 distance of g from ref over all parameters; *differ = tensors that differ */
static double grad_rel(fr_model *m, const float *g, const float *ref, int *differ) {
    size_t off = 0;
    double all_d2 = 0, all_r2 = 0;
    *differ = 0;
    for (int i = 0; i < fr_model_num_tensors(m); i++) {
        int nd;
        int64_t shape[4];
        const char *name = fr_model_tensor_info(m, i, &nd, shape);
        size_t n;
        fr_model_grad(m, name, &n);
        double d2 = 0;
        for (size_t k = 0; k < n; k++) {
            const double a = g[off + k], b = ref[off + k];
            d2 += (a - b) * (a - b), all_r2 += b * b;
        }
        off += n;
        all_d2 += d2;
        *differ += d2 > 0;
    }
    return sqrt(all_d2 / all_r2);
}

/* The same model with every block dense: no routing to flip, so BF16's own rounding shows. */
static void bf16_dense(const int *tok, const int *tgt) {
    char text[2048];
    snprintf(text, sizeof text, "%s", CONFIG);
    char *k = strstr(text, "\"first_k_dense_replace\": 1");
    if (k) k[strlen("\"first_k_dense_replace\": ")] = '2';
    fr_config cfg;
    fr_model *m = NULL;
    CHECK(k && fr_config_parse(&cfg, text, strlen(text)) == FR_OK && fr_model_create(&m, &cfg, 11) == FR_OK,
          "dense model: %s", fr_last_error());
    if (!m) return;
    const size_t P = fr_model_num_params(m);
    float *g32 = malloc(P * sizeof(float)), *g16 = malloc(P * sizeof(float));
    double l32 = 0, l16 = 0;
    int d16 = 0;
    CHECK(step(m, tok, tgt, &l32, g32) == FR_OK && fr_model_set_precision(m, "bf16") == FR_OK &&
              step(m, tok, tgt, &l16, g16) == FR_OK,
          "dense model: fp32 and bf16 steps: %s", fr_last_error());
    const double rel = grad_rel(m, g16, g32, &d16), dl = fabs(l16 - l32) / fabs(l32);
    printf("bf16, dense model: loss %.3g relative to fp32, gradient %.3g relative L2\n", dl, rel);
    CHECK(d16 > 0 && dl <= 0.005 && rel <= BF16_GRAD_REL_DENSE,
          "dense model, bf16 vs fp32: loss %.3g (bound 0.005), gradient %.3g (bound %.2f)", dl, rel, BF16_GRAD_REL_DENSE);
    free(g32), free(g16);
    fr_model_free(m);
}

/* AdamW with BF16 moments against FP32 moments, on the model's current gradients: step 1
 * (moments from zero) moves the parameters bit for bit alike and stores the FP32 moments
 * rounded to nearest even; step 2 reads rounded moments, so its update may differ by about
 * one BF16 rounding (2^-9 relative): within 1 % in L2 over all parameters. */
static void adamw_bf16(fr_model *m) {
    const size_t P = m->n_params;
    float *p0 = malloc(P * 4), *pa = malloc(P * 4), *m32 = calloc(P, 4), *v32 = calloc(P, 4);
    uint16_t *m16 = calloc(P, 2), *v16 = calloc(P, 2);
    float *orig = malloc(P * 4);
    memcpy(orig, m->params, P * 4);
    memcpy(p0, m->params, P * 4);
    fr_adamw_hparams h = {1e-3, 0.9, 0.95, 1e-8, 0.1, 1, 1.0};
    fr_adamw_step(m, m32, v32, &h);
    memcpy(pa, m->params, P * 4);
    memcpy(m->params, p0, P * 4);
    fr_adamw_step_bf16(m, m16, v16, &h);
    size_t same = 0, rounded = 0;
    for (size_t i = 0; i < P; i++) {
        same += memcmp(&pa[i], &m->params[i], 4) == 0;
        rounded += m16[i] == fr_bf16_encode(m32[i]) && v16[i] == fr_bf16_encode(v32[i]);
    }
    CHECK(same == P && rounded == P, "bf16 moments, step 1: %zu of %zu parameters equal, %zu moments rounded", same, P,
          rounded);
    /* step 2 from each one's own state, from the same parameters */
    h.step = 2;
    memcpy(p0, m->params, P * 4);
    fr_adamw_step(m, m32, v32, &h);
    memcpy(pa, m->params, P * 4);
    memcpy(m->params, p0, P * 4);
    fr_adamw_step_bf16(m, m16, v16, &h);
    double d2 = 0, u2 = 0;
    for (size_t i = 0; i < P; i++) {
        const double ua = (double)pa[i] - p0[i], ub = (double)m->params[i] - p0[i];
        d2 += (ua - ub) * (ua - ub), u2 += ua * ua;
    }
    printf("bf16 moments, step 2: update %.3g relative L2 from fp32 moments'\n", sqrt(d2 / u2));
    CHECK(d2 > 0 && sqrt(d2 / u2) <= 0.01, "bf16 moments, step 2: update within 1 %% (%.3g)", sqrt(d2 / u2));
    memcpy(m->params, orig, P * 4); /* the model as it was, for the tests after this one */
    free(orig);
    free(p0), free(pa), free(m32), free(v32), free(m16), free(v16);
}

int main(void) {
    fr_config cfg;
    fr_model *m = NULL;
    int rc = fr_config_parse(&cfg, CONFIG, strlen(CONFIG));
    if (rc == FR_OK) rc = fr_model_create(&m, &cfg, 11);
    CHECK(rc == FR_OK, "model: %s", fr_last_error());
    if (rc != FR_OK) return fr_test_finish("test_precision_train");
    int tok[B * T], tgt[B * T];
    uint64_t s = 7;
    for (int i = 0; i < B * T; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        tok[i] = (int)((s >> 33) % 512);
    }
    for (int i = 0; i < B * T; i++) tgt[i] = (i % T == T - 1) ? FR_IGNORE_INDEX : tok[i + 1];
    const size_t P = fr_model_num_params(m);
    float *g32 = malloc(P * sizeof(float)), *g8 = malloc(P * sizeof(float)), *gback = malloc(P * sizeof(float));
    double l32 = 0, l8 = 0, lback = 0;

    CHECK(!strcmp(fr_model_precision(m), "fp32"), "fp32 by default");
    CHECK(step(m, tok, tgt, &l32, g32) == FR_OK, "fp32 step: %s", fr_last_error());
    CHECK(fr_model_set_precision(m, "fp8") == FR_OK && !strcmp(fr_model_precision(m), "fp8"), "set fp8");
    test_linear(m);
    CHECK(step(m, tok, tgt, &l8, g8) == FR_OK, "fp8 step: %s", fr_last_error());
    CHECK(fr_model_set_precision(m, "fp32") == FR_OK, "back to fp32");
    CHECK(step(m, tok, tgt, &lback, gback) == FR_OK, "fp32 step again: %s", fr_last_error());
    CHECK(lback == l32 && memcmp(gback, g32, P * sizeof(float)) == 0, "fp32 after fp8: bit for bit the first fp32 step");

    const double dl = fabs(l8 - l32) / fabs(l32);
    printf("loss fp32 %.6f, fp8 %.6f (%.3g relative)\n", l32, l8, dl);
    CHECK(l8 != l32, "the fp8 path changed the loss (it ran)");
    CHECK(dl <= 0.02, "fp8 loss within 2 %% of fp32 (%.3g)", dl);
    int differ = 0;
    const double all_rel = grad_rel(m, g8, g32, &differ);
    printf("gradients: all parameters %.3g relative L2 error vs fp32\n", all_rel);
    CHECK(differ > 0, "the fp8 path changed the gradients (it ran)");
    CHECK(all_rel <= GRAD_REL, "fp8 gradient: relative error %.3g vs fp32 (bound %.2f)", all_rel, GRAD_REL);

    adamw_bf16(m); /* on the fp32 step's gradients */

    /* 128 x 128 output-gradient blocks: the forward is untouched, the gradients move */
    {
        double l128 = 0;
        float *g128 = malloc(P * sizeof(float));
        CHECK(fr_model_set_precision(m, "fp8") == FR_OK && fr_model_set_fp8_grad_tiles(m, 128) == FR_OK,
              "fp8 with 128 x 128 output-gradient tiles");
        CHECK(step(m, tok, tgt, &l128, g128) == FR_OK, "fp8 step, 128 x 128: %s", fr_last_error());
        int d128 = 0;
        const double rel128 = grad_rel(m, g128, g8, &d128);
        printf("fp8 with 128 x 128 output-gradient blocks: gradient %.3g relative L2 from the 1 x 128 recipe\n", rel128);
        CHECK(l128 == l8 && d128 > 0, "128 x 128: same loss (%.9g vs %.9g), other gradients (%d tensors)", l128, l8, d128);
        CHECK(fr_model_set_fp8_grad_tiles(m, 64) == FR_ERR_ARG, "tiles other than 1 or 128 refused");
        CHECK(fr_model_set_fp8_grad_tiles(m, 1) == FR_OK, "back to 1 x 128");
        free(g128);
    }

    /* BF16 */
    {
        double l16 = 0;
        float *g16 = malloc(P * sizeof(float));
        printf("bf16 GEMM path: %s\n", fr_bf16_gemm_path());
        CHECK(fr_model_set_precision(m, "bf16") == FR_OK && !strcmp(fr_model_precision(m), "bf16"), "set bf16");
        test_linear_bf16(m);
        CHECK(step(m, tok, tgt, &l16, g16) == FR_OK, "bf16 step: %s", fr_last_error());
        int d16 = 0;
        const double dl16 = fabs(l16 - l32) / fabs(l32), rel16 = grad_rel(m, g16, g32, &d16);
        printf("bf16: loss %.6f (%.3g relative to fp32), gradient %.3g relative L2\n", l16, dl16, rel16);
        CHECK(l16 != l32 && d16 > 0, "the bf16 path changed the loss and the gradients (it ran)");
        CHECK(dl16 <= 0.005, "bf16 loss within 0.5 %% of fp32 (%.3g)", dl16);
        CHECK(rel16 <= BF16_GRAD_REL_MOE, "bf16 gradient: relative error %.3g vs fp32 (bound %.2f)", rel16,
              BF16_GRAD_REL_MOE);
        free(g16);
    }
    bf16_dense(tok, tgt);

    /* bad input */
    CHECK(fr_model_set_precision(m, "fp16") == FR_ERR_ARG && strstr(fr_last_error(), "fp16"), "unknown precision");
    CHECK(!strcmp(fr_model_precision(m), "bf16"), "a refused name leaves the precision as it was");
    CHECK(fr_model_set_precision(m, "fp8") == FR_OK, "fp8 again");
    size_t n;
    float *w = fr_model_param(m, "model.layers.0.mlp.up_proj.weight", &n);
    if (w) {
        const float keep = w[5];
        w[5] = NAN;
        fr_loss_info li;
        rc = fr_model_forward(m, tok, tgt, B, T, &li);
        CHECK(rc == FR_ERR_STATE && strstr(fr_last_error(), "non-finite") && strstr(fr_last_error(), "FP8"),
              "a NaN weight fails the fp8 forward: rc %d, %s", rc, fr_last_error());
        w[5] = keep;
        CHECK(step(m, tok, tgt, &l8, g8) == FR_OK, "and the next step is clean again: %s", fr_last_error());
    }
    free(g32);
    free(g8);
    free(gback);
    fr_model_free(m);
    return fr_test_finish("test_precision_train");
}
