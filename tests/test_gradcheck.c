/*
 * test_gradcheck.c — finite-difference check of the whole model's backward, covering
 * every tensor (and so every layer type: embedding, RMSNorm, MLA with and without q
 * compression, dense MLP, router, routed and shared experts, MTP modules, head, the
 * balance loss).
 *
 * For each tensor, the 3 elements with the largest analytic gradient are perturbed by
 * ±h and ±h/2; the central differences D(h) = (L(θ+h) - L(θ-h)) / 2h are combined by
 * Richardson extrapolation, (4 D(h/2) - D(h)) / 3, which cancels the O(h^2) truncation
 * term, and compared with the analytic value. The forward runs in FP32, so a quotient
 * carries rounding noise of about eps32 * |L| / h ≈ 1e-7 * 7 / 5e-3 ≈ 1.4e-4 absolute.
 * Tolerance: |fd - an| <= 1e-2 * |an| + 1e-4.
 * Routing is piecewise constant in the selection: an element whose perturbation flips a
 * top-k choice shows as a disagreement between h and h/2 and is reported, not hidden.
 */
#include "frugal.h"
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *CONFIG_QLORA =
    "{\"model_type\": \"deepseek_v3\", \"vocab_size\": 32, \"hidden_size\": 16, \"intermediate_size\": 24,"
    " \"moe_intermediate_size\": 8, \"num_hidden_layers\": 2, \"num_attention_heads\": 2, \"q_lora_rank\": 12,"
    " \"kv_lora_rank\": 8, \"qk_nope_head_dim\": 4, \"qk_rope_head_dim\": 4, \"v_head_dim\": 6,"
    " \"n_routed_experts\": 4, \"n_shared_experts\": 1, \"num_experts_per_tok\": 2, \"n_group\": 2, \"topk_group\": 1,"
    " \"routed_scaling_factor\": 2.5, \"norm_topk_prob\": true, \"first_k_dense_replace\": 1,"
    " \"num_nextn_predict_layers\": 2, \"max_position_embeddings\": 64, \"rope_theta\": 10000.0,"
    " \"rms_norm_eps\": 1e-6, \"tie_word_embeddings\": false, \"initializer_range\": 0.3}";

static const char *CONFIG_V2 =
    "{\"model_type\": \"deepseek_v2\", \"vocab_size\": 32, \"hidden_size\": 16, \"intermediate_size\": 24,"
    " \"moe_intermediate_size\": 8, \"num_hidden_layers\": 2, \"num_attention_heads\": 2, \"q_lora_rank\": null,"
    " \"kv_lora_rank\": 8, \"qk_nope_head_dim\": 4, \"qk_rope_head_dim\": 4, \"v_head_dim\": 6,"
    " \"n_routed_experts\": 4, \"n_shared_experts\": 2, \"num_experts_per_tok\": 2, \"n_group\": 1, \"topk_group\": 1,"
    " \"topk_method\": \"greedy\", \"scoring_func\": \"softmax\", \"routed_scaling_factor\": 1.0,"
    " \"norm_topk_prob\": true, \"first_k_dense_replace\": 1, \"max_position_embeddings\": 64,"
    " \"rope_theta\": 10000.0, \"rms_norm_eps\": 1e-6, \"tie_word_embeddings\": true, \"initializer_range\": 0.3}";

static void gradcheck(const char *label, const char *json) {
    fr_config cfg;
    int rc = fr_config_parse(&cfg, json, strlen(json));
    CHECK(rc == FR_OK, "%s: config: %s", label, fr_last_error());
    if (rc != FR_OK) return;
    fr_model *m;
    rc = fr_model_create(&m, &cfg, 1234);
    CHECK(rc == FR_OK, "%s: create: %s", label, fr_last_error());
    if (rc != FR_OK) return;
    fr_loss_weights w = {0.5f, 0.1f};
    fr_model_set_loss_weights(m, w);

    enum { B = 2, T = 7 };
    int tok[B * T], tg[B * T];
    for (int i = 0; i < B * T; i++) tok[i] = (i * 7 + 3) % cfg.vocab_size;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) tg[b * T + t] = t + 1 < T ? tok[b * T + t + 1] : FR_IGNORE_INDEX;
    tg[3] = FR_IGNORE_INDEX;

    fr_model_zero_grad(m);
    fr_loss_info li;
    fr_model_forward(m, tok, tg, B, T, &li);
    CHECK(li.loss_balance > 0, "%s: balance loss active (%g)", label, li.loss_balance);
    for (int k = 0; k < cfg.num_nextn_predict_layers; k++)
        CHECK(li.loss_mtp[k] > 0, "%s: MTP loss %d active (%g)", label, k, li.loss_mtp[k]);
    fr_model_backward(m);

    const double h = 1e-2;
    int checked = 0, flips = 0;
    double worst = 0;
    for (int ti = 0; ti < fr_model_num_tensors(m); ti++) {
        const char *name = fr_model_tensor_info(m, ti, NULL, NULL);
        if (strstr(name, "e_score_correction_bias")) continue; /* not trained by gradients */
        size_t n;
        float *p = fr_model_param(m, name, &n);
        float *g = fr_model_grad(m, name, &n);
        size_t pick[3]; /* the three largest analytic gradients of this tensor */
        fr_test_top3(g, n, pick);
        for (int r = 0; r < 3 && (size_t)r < n; r++) {
            size_t i = pick[r];
            double an = g[i];
            int flip = 0;
            const double fd_rich = fr_test_fd_grad(m, &p[i], tok, tg, B, T, h, &flip);
            if (flip) {
                flips++; /* selection changed inside the interval: not differentiable there */
                printf("%s: %s[%zu] routing flip (Richardson %.5g, analytic %.5g)\n", label, name, i, fd_rich, an);
                continue;
            }
            double err = fabs(fd_rich - an);
            double tol = 1e-2 * fabs(an) + 1e-4;
            CHECK(err <= tol, "%s: %s[%zu] analytic %.6g finite-diff %.6g", label, name, i, an, fd_rich);
            if (fabs(an) > 1e-3 && err / fabs(an) > worst) worst = err / fabs(an);
            checked++;
        }
    }
    printf("%s: %d elements checked in %d tensors, worst rel err %.2e, %d routing flips skipped\n", label, checked,
           fr_model_num_tensors(m), worst, flips);
    CHECK(flips * 10 <= checked, "%s: too many routing flips (%d of %d)", label, flips, checked);
    fr_model_free(m);
}

int main(void) {
    gradcheck("v3+qlora+mtp", CONFIG_QLORA);
    gradcheck("v2+tied", CONFIG_V2);
    return fr_test_finish("test_gradcheck");
}
