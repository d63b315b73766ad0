/*
 * test_distill.c — logit distillation: the loss against PyTorch, the model's gradient
 * against finite differences, the teacher's top-k from shards against the engine, the bad
 * inputs, and `frugal distill` end to end.
 *
 *  - Loss (src/model/kd.c) on tests/fixtures/kd (tools/make_kd_fixture.py, torch autograd in
 *    float64): the CPU cross-entropy op then fr_kd_apply give the reference loss within 1e-6
 *    relative and its gradient within 1e-5 (relative to the largest gradient entry; FP32
 *    arithmetic on logits of size ~10).
 *  - Through the model: with a distillation target set, the analytic gradients of the head
 *    and of a block's matrices equal central differences (Richardson, tolerance
 *    1e-2 |g| + 1e-4, as test_gradcheck.c).
 *  - Shards: `fr_distill_dump_teacher` writes the top-k that fr_engine_topk computes for the
 *    same windows (indices equal, logits within 1e-5: the dump batches 16 windows, the check 4,
 *    and the engine's GEMM blocking depends on the batch).
 *  - Bad input: a teacher with another vocabulary is refused naming both sizes; a shard made
 *    for another --seq or --topk, a truncated one and a missing one are refused naming the file.
 *  - `frugal distill` runs (teacher folder and shards), reports loss_kd in metrics.jsonl and
 *    records the run in the ledger with kind "distill"; `frugal eval --data` (how the
 *    distillation experiment scores its students) gives the same loss through the training
 *    forward and through the engine (1e-5 relative).
 */
#include "frugal.h"
#include "testutil.h"

#include "formats/safetensors.h"
#include "model/model_internal.h"
#include "train/distill.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>


static float *tensor(const fr_st_file *f, const char *prefix, const char *name, size_t *n) {
    char full[64];
    snprintf(full, sizeof full, "%s.%s", prefix, name);
    const fr_st_tensor *t = fr_st_find(f, full);
    float *out = t ? malloc(t->numel * sizeof *out + 1) : NULL;
    if (out && fr_st_to_f32(t, out, t->numel) != FR_OK) free(out), out = NULL;
    if (n) *n = t ? t->numel : 0;
    return out;
}

static void test_loss_vs_torch(void) {
    fr_st_file f;
    CHECK(fr_st_open(&f, FR_FIXTURES_DIR "/kd/kd.safetensors") == FR_OK, "open kd fixture: %s", fr_last_error());
    const char *cases[] = {"a", "b", "c"};
    for (int c = 0; c < 3; c++) {
        size_t nz, ny, nk;
        float *z = tensor(&f, cases[c], "z", &nz), *yf = tensor(&f, cases[c], "y", &ny);
        float *idxf = tensor(&f, cases[c], "topk_idx", &nk), *tl = tensor(&f, cases[c], "topk_logit", NULL);
        float *Tm = tensor(&f, cases[c], "temperature", NULL), *al = tensor(&f, cases[c], "alpha", NULL);
        float *grad = tensor(&f, cases[c], "grad", NULL), *lse = tensor(&f, cases[c], "teacher_lse", NULL);
        char nm[16];
        snprintf(nm, sizeof nm, "%s.loss", cases[c]);
        const fr_st_tensor *lt = fr_st_find(&f, nm);
        if (!z || !yf || !idxf || !tl || !Tm || !al || !grad || !lse || !lt) {
            CHECK(0, "case %s: fixture tensors missing", cases[c]);
            continue;
        }
        const int N = (int)ny, V = (int)(nz / ny), K = (int)(nk / ny);
        const double want = *(const double *)lt->data;
        int *y = malloc(N * sizeof *y);
        int32_t *idx = malloc(nk * sizeof *idx);
        for (int i = 0; i < N; i++) y[i] = (int)yf[i];
        for (size_t i = 0; i < nk; i++) idx[i] = (int32_t)idxf[i];
        int n_t = 0;
        for (int i = 0; i < N; i++) n_t += y[i] >= 0;
        float *losses = fr_test_fnew((size_t)N), *d = fr_test_fnew(nz);
        fr_ops_cpu()->cross_entropy(losses, d, z, y, N, V, 1.0f / n_t);
        double ce = 0;
        for (int i = 0; i < N; i++) ce += y[i] >= 0 ? losses[i] : 0;
        const double kl = fr_kd_apply(z, d, y, N, V, idx, tl, lse, K, Tm[0], al[0], 1.0f / n_t);
        const double got = ((1 - (double)al[0]) * ce + (double)al[0] * Tm[0] * Tm[0] * kl) / n_t;
        const double lerr = fabs(got - want) / fabs(want), gerr = fr_rel_err(d, grad, nz);
        printf("kd case %s (N %d, V %d, K %d, T %g, alpha %g): loss %.9f vs torch %.9f (rel %.1e), grad rel err %.1e\n",
               cases[c], N, V, K, Tm[0], al[0], got, want, lerr, gerr);
        CHECK(lerr <= 1e-6, "case %s: loss %.9g vs %.9g", cases[c], got, want);
        CHECK(gerr <= 1e-5, "case %s: gradient rel err %.3g", cases[c], gerr);
        free(z), free(yf), free(idxf), free(tl), free(Tm), free(al), free(grad), free(lse), free(y), free(idx), free(losses), free(d);
    }
    fr_st_close(&f);
}

static void test_model_gradient(void) {
    const char *json = fr_test_tiny_train_config(0);
    fr_config cfg;
    CHECK(fr_config_parse(&cfg, json, strlen(json)) == FR_OK, "config");
    fr_model *m = NULL;
    CHECK(fr_model_create(&m, &cfg, 3) == FR_OK, "create: %s", fr_last_error());
    if (!m) return;
    enum { B = 2, T = 6, K = 4 };
    const int V = cfg.vocab_size;
    int tok[B * T], tg[B * T];
    int32_t idx[B * T * K];
    float tl[B * T * K], lse[B * T];
    fr_rng rng;
    fr_rng_seed(&rng, 5);
    for (int i = 0; i < B * T; i++) {
        tok[i] = (int)(fr_rng_next(&rng) % (uint64_t)V);
        tg[i] = i % T == T - 1 ? FR_IGNORE_INDEX : (int)(fr_rng_next(&rng) % (uint64_t)V);
        for (int k = 0; k < K; k++) {
            idx[i * K + k] = (i * 13 + k * 71) % V; /* distinct per row */
            tl[i * K + k] = 4.0f - 1.1f * k + (float)fr_rng_uniform(&rng) * 0.5f;
        }
        lse[i] = 0.5f * tl[i * K] + 1.0f; /* at T = 2: top-4 mass about 0.77, a tail of about 0.23 */
    }
    CHECK(fr_model_set_distill(m, idx, tl, lse, K, 2.0f, 0.6f) == FR_OK, "set_distill: %s", fr_last_error());
    fr_model_zero_grad(m);
    fr_loss_info li;
    CHECK(fr_model_forward(m, tok, tg, B, T, &li) == FR_OK && fr_model_backward(m) == FR_OK, "pass");
    const double a = 0.6f; /* (the model holds alpha as a float) */
    CHECK(li.loss_kd > 0 && fabs(li.loss - ((1 - a) * li.loss_main + a * 4.0 * li.loss_kd + li.loss_balance)) < 1e-9,
          "loss = 0.4 CE + 0.6 T^2 KL (%g, CE %g, KL %g)", li.loss, li.loss_main, li.loss_kd);
    const char *names[] = {"lm_head.weight", "model.norm.weight", "model.layers.0.self_attn.kv_b_proj.weight",
                           "model.embed_tokens.weight"};
    /* each tensor's largest gradients; an element whose perturbation flips a routing choice
     * (h and h/2 disagree) is skipped for the next one, as test_gradcheck.c reports them */
    const double h = 1e-2;
    int checked = 0, flips = 0;
    for (int q = 0; q < 4; q++) {
        size_t n;
        float *p = fr_model_param(m, names[q], &n);
        const float *g = fr_model_grad(m, names[q], &n);
        size_t pick[3];
        fr_test_top3(g, n, pick);
        for (int tries = 0; tries < 3; tries++) {
            const size_t best = pick[tries];
            const double an = g[best];
            int flip = 0;
            const double rich = fr_test_fd_grad(m, &p[best], tok, tg, B, T, h, &flip);
            if (flip) {
                flips++;
                continue;
            }
            CHECK(fabs(rich - an) <= 1e-2 * fabs(an) + 1e-4, "%s[%zu]: analytic %.6g finite-diff %.6g", names[q], best, an,
                  rich);
            checked++;
            break;
        }
    }
    CHECK(checked == 4, "every tensor checked (%d, %d routing flips)", checked, flips);
    printf("distillation through the model: %d gradients match finite differences (%d routing flips skipped)\n", checked,
           flips);
    CHECK(fr_model_set_distill(m, NULL, NULL, NULL, 0, 0, 0) == FR_OK, "clear");
    CHECK(fr_model_set_distill(m, idx, tl, lse, V + 1, 2.0f, 0.5f) == FR_ERR_ARG, "top-k above the vocabulary refused");
    fr_model_free(m);
}

/* Teacher = a saved model of the tiny config; data = the tiny runs' data */
static void test_shards(const char *root) {
    char data[600], teacher[600], cfg_path[600], path[700];
    snprintf(data, sizeof data, "%s/data", root);
    snprintf(teacher, sizeof teacher, "%s/teacher", root);
    snprintf(cfg_path, sizeof cfg_path, "%s/tiny.json", root);
    fr_config cfg;
    CHECK(fr_config_load(&cfg, cfg_path) == FR_OK, "config");
    fr_model *m = NULL;
    CHECK(fr_model_create(&m, &cfg, 11) == FR_OK && fr_model_save(m, teacher) == FR_OK, "teacher: %s", fr_last_error());
    fr_model_free(m);
    enum { T = 32, K = 6 };
    CHECK(fr_distill_dump_teacher(teacher, data, T, K, 2.0f, NULL, NULL) == FR_OK, "dump: %s", fr_last_error());
    fr_dataset *ds = NULL;
    CHECK(fr_dataset_open(&ds, data, "train") == FR_OK, "dataset");
    fr_teacher *from_files = NULL, *online = NULL;
    CHECK(fr_teacher_open(&from_files, "", K, T, 2.0f, ds, cfg.vocab_size) == FR_OK, "open shards: %s", fr_last_error());
    CHECK(fr_teacher_open(&online, teacher, K, T, 2.0f, ds, cfg.vocab_size) == FR_OK, "open teacher: %s", fr_last_error());
    const long n_chunks = (long)((fr_dataset_num_tokens(ds) - 1) / T);
    enum { B = 4 };
    int tok[B * T];
    uint64_t pos[B];
    int32_t ia[B * T * K], ib[B * T * K];
    float la[B * T * K], lb[B * T * K], lse_a[B * T], lse_b[B * T];
    /* the first windows, a middle one and the last one */
    const long pick[B] = {0, 1, n_chunks / 2, n_chunks - 1};
    for (int b = 0; b < B; b++) {
        pos[b] = (uint64_t)pick[b] * T;
        fr_dataset_read(ds, pos[b], tok + b * T, T);
    }
    if (from_files && online) {
        CHECK(fr_teacher_topk(from_files, B, tok, pos, ia, la, lse_a) == FR_OK, "shard top-k: %s", fr_last_error());
        CHECK(fr_teacher_topk(online, B, tok, pos, ib, lb, lse_b) == FR_OK, "engine top-k: %s", fr_last_error());
        int same = 0;
        double worst = 0;
        for (int i = 0; i < B * T * K; i++) {
            same += ia[i] == ib[i];
            worst = fmax(worst, fabs((double)la[i] - lb[i]));
        }
        for (int i = 0; i < B * T; i++) worst = fmax(worst, fabs((double)lse_a[i] - lse_b[i]));
        printf("teacher top-%d of %ld windows: shards vs engine: %d/%d indices equal, logits and log-sum-exp max diff "
               "%.2e\n", K, n_chunks, same, B * T * K, worst);
        CHECK(same == B * T * K && worst <= 1e-5, "shards equal the engine's top-k (%d equal, %.3g)", same, worst);
        for (int i = 0; i < B * T; i++) {
            for (int k = 1; k < K; k++) CHECK(la[i * K + k] <= la[i * K + k - 1], "descending");
            double mass = 0; /* the top k's probability at T, below 1: the rest is the tail bucket */
            for (int k = 0; k < K; k++) mass += exp(la[i * K + k] / 2.0 - lse_a[i]);
            CHECK(mass > 0 && mass < 1, "top-k mass %.4f in (0, 1)", mass);
        }
    }
    fr_teacher_free(from_files), fr_teacher_free(online);
    /* refusals */
    from_files = NULL;
    CHECK(fr_teacher_open(&from_files, "", K, T * 2, 2.0f, ds, cfg.vocab_size) != FR_OK && strstr(fr_last_error(), "--seq is 64"),
          "a shard for another --seq: %s", fr_last_error());
    CHECK(fr_teacher_open(&from_files, "", K + 1, T, 2.0f, ds, cfg.vocab_size) != FR_OK && strstr(fr_last_error(), "top-6"),
          "a shard for another --topk: %s", fr_last_error());
    CHECK(fr_teacher_open(&from_files, "", K, T, 2.0f, ds, cfg.vocab_size + 5) != FR_OK &&
              strstr(fr_last_error(), "vocabulary (320)") && strstr(fr_last_error(), "(325)"),
          "shards of a teacher with another vocabulary: %s", fr_last_error());
    CHECK(fr_teacher_open(&online, teacher, K, T, 2.0f, ds, cfg.vocab_size + 5) != FR_OK &&
              strstr(fr_last_error(), "vocabulary (320)") && strstr(fr_last_error(), "(325)"),
          "a teacher model with another vocabulary: %s", fr_last_error());
    const char *shard = NULL;
    fr_dataset_shard_info(ds, 0, &shard, NULL);
    snprintf(path, sizeof path, "%.*s.topk", shard ? (int)strlen(shard) - 4 : 0, shard ? shard : "");
    struct stat sb;
    CHECK(stat(path, &sb) == 0, "%s exists", path);
    CHECK(truncate(path, sb.st_size - 8) == 0, "truncate");
    CHECK(fr_teacher_open(&from_files, "", K, T, 1.0f, ds, cfg.vocab_size) != FR_OK && strstr(fr_last_error(), "temperature 2"),
          "shards for another temperature: %s", fr_last_error());
    CHECK(fr_teacher_open(&from_files, "", K, T, 2.0f, ds, cfg.vocab_size) == FR_ERR_FORMAT && strstr(fr_last_error(), "truncated"),
          "a truncated shard: %s", fr_last_error());
    unlink(path);
    CHECK(fr_teacher_open(&from_files, "", K, T, 2.0f, ds, cfg.vocab_size) == FR_ERR_IO && strstr(fr_last_error(), "dump-teacher"),
          "a missing shard: %s", fr_last_error());
    CHECK(fr_test_no_tmp_leftovers(data), "no temporaries left in the data folder");
    fr_dataset_close(ds);
}

static void test_cli(const char *root) {
    char args[4096], path[700];
    snprintf(args, sizeof args,
             "distill --teacher %s/teacher --config %s/tiny.json --data %s/data --out %s/kd-run --steps 3 --batch 2 --seq 32 "
             "--topk 6 --temperature 2 --alpha 0.5 --eval-interval 0 --sample-interval 0 --threads 2 --ledger %s/ledger.jsonl",
             root, root, root, root, root);
    fr_test_expect_frugal(FR_FRUGAL_BIN, args, 0, "distillation: loss = 0.5 x T^2 KL", "kl ");
    snprintf(path, sizeof path, "%s/kd-run/metrics.jsonl", root);
    char *metrics = fr_test_read_file(path, NULL);
    CHECK(metrics && strstr(metrics, "\"loss_kd\""), "metrics.jsonl holds loss_kd");
    free(metrics);
    snprintf(path, sizeof path, "%s/ledger.jsonl", root);
    char *ledger = fr_test_read_file(path, NULL);
    CHECK(ledger && strstr(ledger, "\"kind\":\"distill\""), "the ledger records kind distill");
    free(ledger);
    /* a student of another vocabulary: the CLI names both sizes */
    snprintf(path, sizeof path, "%s/big-vocab.json", root);
    char *cfg = strdup(fr_test_tiny_train_config(0));
    char *v = strstr(cfg, "\"vocab_size\": 320");
    if (v) memcpy(v, "\"vocab_size\": 384", 17);
    fr_test_write_text(path, cfg);
    free(cfg);
    snprintf(args, sizeof args,
             "distill --teacher %s/teacher --config %s --data %s/data --out %s/kd-bad --steps 1 --batch 2 --seq 32 --topk 6 "
             "--threads 2 --ledger %s/ledger.jsonl",
             root, path, root, root, root);
    fr_test_expect_frugal(FR_FRUGAL_BIN, args, 1, "vocabulary (320)", "(384)");
    /* frugal eval --data: the val split in the trainer's windows, model and engine agree */
    char *o1 = NULL, *o2 = NULL;
    snprintf(args, sizeof args, "eval --model %s/teacher --data %s/data --seq 32", root, root);
    CHECK(fr_test_run_frugal(FR_FRUGAL_BIN, args, &o1) == 0, "eval --data");
    snprintf(args, sizeof args, "eval --model %s/teacher --data %s/data --seq 32 --engine --chunk 32", root, root);
    CHECK(fr_test_run_frugal(FR_FRUGAL_BIN, args, &o2) == 0, "eval --data --engine");
    double l1 = NAN, l2 = NAN;
    if (o1) sscanf(o1, "loss %lf", &l1);
    if (o2) sscanf(o2, "loss %lf", &l2);
    CHECK(isfinite(l1) && fabs(l1 - l2) <= 1e-5 * l1, "eval --data: model %.6f, engine %.6f", l1, l2);
    free(o1), free(o2);
    snprintf(args, sizeof args, "distill dump-teacher --teacher %s/teacher --data %s/data --seq 32 --topk 6 --threads 2 "
             "--ledger %s/ledger.jsonl", root, root, root);
    fr_test_expect_frugal(FR_FRUGAL_BIN, args, 0, "wrote the top-6 logits", NULL);
    snprintf(path, sizeof path, "%s/ledger.jsonl", root);
    ledger = fr_test_read_file(path, NULL);
    CHECK(ledger && strstr(ledger, "\"kind\":\"teacher-topk\"") && strstr(ledger, "\"status\":\"finished\""),
          "the dump is a job of the ledger (kind teacher-topk)");
    free(ledger);
    snprintf(args, sizeof args,
             "distill --config %s/tiny.json --data %s/data --out %s/kd-shards --steps 2 --batch 2 --seq 32 --topk 6 "
             "--eval-interval 0 --sample-interval 0 --threads 2 --ledger %s/ledger.jsonl",
             root, root, root, root);
    fr_test_expect_frugal(FR_FRUGAL_BIN, args, 0, "from the top-k shards beside the data", NULL);
}

int main(void) {
    fr_set_num_threads(2);
    test_loss_vs_torch();
    test_model_gradient();
    char root[] = "/tmp/frugal_distill_XXXXXX";
    CHECK(mkdtemp(root) != NULL, "mkdtemp");
    CHECK(fr_test_tiny_run_root(root) == FR_OK, "tiny data: %s", fr_last_error());
    test_shards(root);
    test_cli(root);
    fr_test_rm_rf(root);
    return fr_test_finish("test_distill");
}
