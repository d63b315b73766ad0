/*
 * test_device_guard.c — the device path on a machine without a GPU: the "cpu-guarded" backend
 * (src/cpu/ops_cpu_guard.c) keeps backend memory unreadable from the host outside its ops, so
 * any host code that touches a parameter, gradient or activation directly faults here. With
 * the CPU's kernels underneath, the numbers must equal the CPU backend's bit for bit:
 *   - a model's forward and backward (losses, every gradient), MTP and MoE included;
 *   - fr_train: 12 steps with evaluation, a sample and checkpoints, then a resume, against the
 *     same run on the CPU (every step's loss, the validation loss, the checkpoint's weights);
 *     the optimizer runs in backend memory (fr_ops.adamw / sumsq_chunks, the device's bodies
 *     of cuda/kernels_optim.cuh run on the host), with FP32 moments and, under fp8, BF16 ones;
 *   - fr_set_device("cuda") without a GPU fails with a message saying why.
 */
#include "model/model_internal.h"
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char g_root[128];

static fr_model *make_model(const char *device) {
    fr_config cfg;
    char path[300];
    snprintf(path, sizeof path, "%s/tiny.json", g_root);
    CHECK(fr_set_device(device) == FR_OK, "device %s: %s", device, fr_last_error());
    CHECK(fr_config_load(&cfg, path) == FR_OK, "config: %s", fr_last_error());
    fr_model *m = NULL;
    CHECK(fr_model_create(&m, &cfg, 11) == FR_OK, "create on %s: %s", device, fr_last_error());
    fr_set_device("cpu");
    return m;
}

static void test_forward_backward(void) {
    fr_model *a = make_model("cpu"), *b = make_model("cpu-guarded");
    if (!a || !b) return;
    CHECK(!strcmp(b->ops->name, "cpu-guarded") && !b->ops->host_memory, "the guarded backend is in use");
    const int B = 2, T = 24, N = B * T, V = a->cfg.vocab_size;
    int *tok = malloc(N * sizeof(int)), *tgt = malloc(N * sizeof(int));
    for (int i = 0; i < N; i++) tok[i] = (i * 7 + 3) % V, tgt[i] = (i * 5 + 1) % V;
    fr_loss_info la, lb;
    fr_loss_weights w = {0.3f, 1e-3f};
    fr_model_set_loss_weights(a, w);
    fr_model_set_loss_weights(b, w);
    CHECK(fr_model_forward(a, tok, tgt, B, T, &la) == FR_OK && fr_model_backward(a) == FR_OK, "cpu step: %s",
          fr_last_error());
    CHECK(fr_model_forward(b, tok, tgt, B, T, &lb) == FR_OK && fr_model_backward(b) == FR_OK, "guarded step: %s",
          fr_last_error());
    CHECK(la.loss == lb.loss && la.loss_main == lb.loss_main && la.loss_mtp[0] == lb.loss_mtp[0] &&
              la.loss_balance == lb.loss_balance,
          "losses %.9g / %.9g", la.loss, lb.loss);
    float *g = malloc(b->n_params * sizeof(float));
    b->ops->to_host(g, b->grads, b->n_params * sizeof(float));
    CHECK(memcmp(g, a->grads, a->n_params * sizeof(float)) == 0, "every gradient bit for bit");
    /* evaluation of whole sequences (frugal eval's path) */
    const int *seqs[2] = {tok, tok + T};
    const int lens[2] = {T, T - 5};
    double ea = 0, eb = 0;
    long na = 0, nb = 0;
    CHECK(fr_model_eval_sequences(a, 2, seqs, lens, &ea, &na) == FR_OK &&
              fr_model_eval_sequences(b, 2, seqs, lens, &eb, &nb) == FR_OK && ea == eb && na == nb,
          "eval sequences %.9g / %.9g: %s", ea, eb, fr_last_error());
    free(g), free(tok), free(tgt);
    fr_model_free(a);
    fr_model_free(b);
}

typedef struct {
    double loss[32], val;
    long n;
} recorder;

static void rec_event(void *user, const fr_train_event *ev) {
    recorder *r = user;
    if (ev->type == FR_EV_STEP && ev->step <= 32) r->loss[ev->step - 1] = ev->loss.loss, r->n = ev->step;
    if (ev->type == FR_EV_EVAL) r->val = ev->val_loss;
}

static const char *g_precision = ""; /* for new runs */

static int train(const char *device, const char *run, long steps, int resume, recorder *rec) {
    fr_train_args a;
    if (resume) fr_test_resume_args(&a, run, steps);
    else {
        fr_test_train_args(&a, g_root, run);
        a.max_steps = steps;
        a.seq_len = 16;
        a.eval_interval = 6;
        a.eval_batches = 2;
        a.ckpt_interval = 6;
        a.sample_interval = 12;
        a.sample_tokens = 4;
        snprintf(a.precision, sizeof a.precision, "%s", g_precision); /* fp8: BF16 moments too */
    }
    if (resume) {
        char full[300];
        snprintf(full, sizeof full, "%s/%s", g_root, run);
        snprintf(a.run_dir, sizeof a.run_dir, "%s", full);
    }
    fr_set_device(device);
    fr_train_hooks h = {rec_event, NULL, rec};
    fr_train_result res;
    const int rc = fr_train(&a, resume, &h, &res);
    fr_set_device("cpu");
    return rc;
}

static void test_train(void) {
    recorder c = {{0}, 0, 0}, g = {{0}, 0, 0};
    CHECK(train("cpu", "cpu", 12, 0, &c) == FR_OK, "cpu run: %s", fr_last_error());
    CHECK(train("cpu-guarded", "guarded", 12, 0, &g) == FR_OK, "guarded run: %s", fr_last_error());
    g_precision = "fp8"; /* the FP8 quantizer on the backend, BF16 moments in backend memory */
    recorder c8 = {{0}, 0, 0}, g8 = {{0}, 0, 0};
    CHECK(train("cpu", "cpu_fp8", 12, 0, &c8) == FR_OK && train("cpu-guarded", "guarded_fp8", 12, 0, &g8) == FR_OK,
          "fp8 runs: %s", fr_last_error());
    CHECK(c8.n == 12 && !memcmp(c8.loss, g8.loss, sizeof c8.loss) && c8.val == g8.val, "fp8, bf16 moments: losses %s",
          memcmp(c8.loss, g8.loss, sizeof c8.loss) ? "differ" : "equal");
    g_precision = "";
    CHECK(c.n == 12 && g.n == 12 && !memcmp(c.loss, g.loss, sizeof c.loss) && c.val == g.val,
          "12 steps: losses %s, validation %.9g / %.9g", memcmp(c.loss, g.loss, sizeof c.loss) ? "differ" : "equal",
          c.val, g.val);
    recorder c2 = {{0}, 0, 0}, g2 = {{0}, 0, 0};
    CHECK(train("cpu", "cpu", 16, 1, &c2) == FR_OK && train("cpu-guarded", "guarded", 16, 1, &g2) == FR_OK,
          "resumed: %s", fr_last_error());
    CHECK(!memcmp(c2.loss, g2.loss, sizeof c2.loss), "resumed runs: losses equal");
    /* the checkpoints hold the same weights */
    char pa[400], pb[400];
    snprintf(pa, sizeof pa, "%s/cpu/ckpt-00000016/model.safetensors", g_root);
    snprintf(pb, sizeof pb, "%s/guarded/ckpt-00000016/model.safetensors", g_root);
    size_t la = 0, lb = 0;
    char *fa = fr_test_read_file(pa, &la), *fb = fr_test_read_file(pb, &lb);
    CHECK(fa && fb && la == lb && !memcmp(fa, fb, la), "the final checkpoints are identical (%zu / %zu bytes)", la, lb);
    free(fa), free(fb);
}

int main(void) {
    snprintf(g_root, sizeof g_root, "/tmp/frugal_test_device_guard_%d", (int)getpid());
    fr_test_rm_rf(g_root);
    mkdir(g_root, 0755);
    if (fr_test_tiny_run_root(g_root) != FR_OK) return fr_test_finish("test_device_guard");
    test_forward_backward();
    test_train();
    const int rc = fr_set_device("cuda");
    CHECK(rc != FR_OK ? strstr(fr_last_error(), "--device cuda") != NULL : 1, "cuda refused with a reason: %s",
          fr_last_error());
    printf("fr_set_device(\"cuda\") here: %s\n", rc == FR_OK ? "a GPU is present" : fr_last_error());
    fr_set_device("cpu");
    fr_test_rm_rf(g_root);
    return fr_test_finish("test_device_guard");
}
