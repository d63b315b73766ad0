/*
 * test_model_fixtures.c — the model against Hugging Face transformers (and, for MTP and the
 * balance loss, against our PyTorch autograd reference tools/reference_mtp.py).
 *
 * For every fixture folder: load it with our loader, run forward + backward on the
 * recorded batch and compare
 *   logits, loss          relative error <= 1e-5   (max |a-b| / max |ref|)
 *   every gradient        relative error <= 1e-4
 * and check that every trainable parameter of ours has a reference gradient.
 */
#include "frugal.h"
#include "formats/safetensors.h"
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOL_FWD 1e-5
#define TOL_GRAD 1e-4

static float *read_f32(const fr_st_file *f, const char *name, size_t *n) {
    const fr_st_tensor *t = fr_st_find(f, name);
    if (!t) return NULL;
    float *buf = malloc(t->numel * sizeof(float));
    if (fr_st_to_f32(t, buf, t->numel) != FR_OK) { free(buf); return NULL; }
    if (n) *n = t->numel;
    return buf;
}

static double scalar(const fr_st_file *f, const char *name, int idx) {
    size_t n;
    float *v = read_f32(f, name, &n);
    if (!v || (size_t)idx >= n) { free(v); return NAN; }
    double r = v[idx];
    free(v);
    return r;
}

static double rel(double a, double b) { return fabs(a - b) / (fabs(b) > 1e-30 ? fabs(b) : 1e-30); }

static void check_fixture(const char *name) {
    char dir[1024], ref_path[1100];
    snprintf(dir, sizeof dir, "%s/%s", FR_FIXTURES_DIR, name);
    snprintf(ref_path, sizeof ref_path, "%s/reference.safetensors", dir);
    fr_model *m = NULL;
    int rc = fr_model_load(&m, dir);
    CHECK(rc == FR_OK, "%s: load failed: %s", name, fr_last_error());
    if (rc != FR_OK) return;
    fr_st_file ref;
    rc = fr_st_open(&ref, ref_path);
    CHECK(rc == FR_OK, "%s: reference: %s", name, fr_last_error());
    if (rc != FR_OK) { fr_model_free(m); return; }

    const fr_st_tensor *ids_t = fr_st_find(&ref, "input_ids");
    const fr_st_tensor *tg_t = fr_st_find(&ref, "targets");
    CHECK(ids_t && tg_t && ids_t->ndim == 2, "%s: reference lacks input_ids/targets", name);
    if (!ids_t || !tg_t) goto done;
    int B = (int)ids_t->shape[0], T = (int)ids_t->shape[1];
    int32_t *ids = malloc(sizeof(int32_t) * B * T), *tg = malloc(sizeof(int32_t) * B * T);
    fr_st_to_i32(ids_t, ids, (size_t)B * T);
    fr_st_to_i32(tg_t, tg, (size_t)B * T);

    fr_loss_weights w = {0.3f, 0.0f};
    if (fr_st_find(&ref, "mtp_lambda")) {
        w.mtp_lambda = (float)scalar(&ref, "mtp_lambda", 0);
        w.balance_alpha = (float)scalar(&ref, "balance_alpha", 0);
    }
    fr_model_set_loss_weights(m, w);

    fr_loss_info li;
    fr_model_zero_grad(m);
    rc = fr_model_forward(m, ids, tg, B, T, &li);
    CHECK(rc == FR_OK, "%s: forward: %s", name, fr_last_error());
    if (rc == FR_OK) {
        size_t n;
        float *logits = read_f32(&ref, "logits", &n);
        int V = fr_model_config(m)->vocab_size;
        CHECK(logits && n == (size_t)B * T * V, "%s: reference logits missing or mis-sized", name);
        if (logits) {
            double e = fr_rel_err(fr_model_logits(m), logits, n);
            CHECK(e <= TOL_FWD, "%s: logits rel err %.3g > %.0e", name, e, TOL_FWD);
            printf("%-14s logits rel err %.2e\n", name, e);
        }
        free(logits);
        double ref_loss = scalar(&ref, "loss", 0);
        CHECK(rel(li.loss, ref_loss) <= TOL_FWD, "%s: loss %.8f vs %.8f", name, li.loss, ref_loss);
        printf("%-14s loss %.8f ref %.8f rel %.2e\n", name, li.loss, ref_loss, rel(li.loss, ref_loss));
        if (fr_st_find(&ref, "loss_main")) {
            double lm = scalar(&ref, "loss_main", 0);
            CHECK(rel(li.loss_main, lm) <= TOL_FWD, "%s: loss_main %.8f vs %.8f", name, li.loss_main, lm);
            if (fr_st_find(&ref, "loss_balance")) {
                double lb = scalar(&ref, "loss_balance", 0);
                CHECK(rel(li.loss_balance, lb) <= TOL_FWD, "%s: loss_balance %.8g vs %.8g", name, li.loss_balance, lb);
            }
            const fr_st_tensor *lt = fr_st_find(&ref, "loss_mtp");
            for (int k = 0; lt && k < (int)lt->numel; k++) {
                double r = scalar(&ref, "loss_mtp", k);
                CHECK(rel(li.loss_mtp[k], r) <= TOL_FWD, "%s: loss_mtp[%d] %.8f vs %.8f", name, k, li.loss_mtp[k], r);
            }
            printf("%-14s main %.6f balance %.6g mtp[0] %.6f\n", name, li.loss_main, li.loss_balance, li.loss_mtp[0]);
        }

        rc = fr_model_backward(m);
        CHECK(rc == FR_OK, "%s: backward: %s", name, fr_last_error());
        double worst = 0;
        int n_grads = 0;
        for (int i = 0; i < ref.n_tensors; i++) {
            const fr_st_tensor *t = &ref.tensors[i];
            if (strncmp(t->name, "grad.", 5) != 0) continue;
            size_t numel;
            float *ours = fr_model_grad(m, t->name + 5, &numel);
            CHECK(ours != NULL, "%s: no gradient for %s", name, t->name + 5);
            if (!ours) continue;
            CHECK(numel == t->numel, "%s: %s has %zu elements, reference %zu", name, t->name, numel, t->numel);
            if (numel != t->numel) continue;
            float *r = malloc(numel * sizeof(float));
            fr_st_to_f32(t, r, numel);
            double e = fr_rel_err(ours, r, numel);
            CHECK(e <= TOL_GRAD, "%s: grad %s rel err %.3g > %.0e", name, t->name + 5, e, TOL_GRAD);
            if (e > worst) worst = e;
            n_grads++;
            free(r);
        }
        printf("%-14s %d gradients, worst rel err %.2e\n", name, n_grads, worst);
        /* every trainable tensor of ours is covered by a reference gradient */
        for (int i = 0; i < fr_model_num_tensors(m); i++) {
            const char *tn = fr_model_tensor_info(m, i, NULL, NULL);
            if (strstr(tn, "e_score_correction_bias")) continue;
            char key[256];
            snprintf(key, sizeof key, "grad.%s", tn);
            CHECK(fr_st_find(&ref, key) != NULL, "%s: reference has no gradient for our tensor %s", name, tn);
        }
    }
    free(ids);
    free(tg);
done:
    fr_st_close(&ref);
    fr_model_free(m);
}

int main(void) {
    const char *fixtures[] = {"v3_qlora", "v3_yarn_tied", "v2_group", "v2_lite", "v3_mtp"};
    for (size_t i = 0; i < sizeof fixtures / sizeof fixtures[0]; i++) check_fixture(fixtures[i]);
    return fr_test_finish("test_model_fixtures");
}
