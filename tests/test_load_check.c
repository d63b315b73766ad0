/* test_load_check.c — issue 15: a checkpoint with a NaN or Inf weight fails to load (training
 * loader fr_model_load and the inference engine, float tensors and the scales / minima of
 * matrices stored quantized by `frugal quantize`) with a message naming the tensor and the
 * first bad index; FR_LOAD_NO_CHECK / fr_engine_options.no_check skip the check. */
#define _GNU_SOURCE
#include "frugal.h"
#include "formats/safetensors.h"
#include "testutil.h"

#include <fcntl.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Overwrite element `index` (of `size` bytes) of tensor `name` in dir/model.safetensors. */
static int patch_tensor(const char *dir, const char *name, size_t index, const void *bytes, size_t size) {
    char path[512];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    fr_st_file f;
    if (fr_st_open(&f, path) != FR_OK) return -1;
    const fr_st_tensor *t = fr_st_find(&f, name);
    long off = t ? (long)((const char *)t->data - (const char *)f.map) : -1;
    fr_st_close(&f);
    if (off < 0) return -1;
    int fd = open(path, O_WRONLY);
    if (fd < 0) return -1;
    ssize_t w = pwrite(fd, bytes, size, off + (long)(index * size));
    close(fd);
    return w == (ssize_t)size ? 0 : -1;
}

static int has(const char *msg, const char *a, const char *b) {
    return msg && strstr(msg, a) && (!b || strstr(msg, b));
}

static void expect_engine(const char *dir, int weight_type, int no_check, const char *want1, const char *want2) {
    fr_engine_options o;
    fr_engine_options_default(&o);
    o.weight_type = weight_type;
    o.max_seq_len = 16;
    o.no_check = no_check;
    fr_engine *e = NULL;
    int rc = fr_engine_load(&e, dir, &o);
    if (!want1) CHECK(rc == FR_OK, "engine loads %s (weights %d, no_check %d): %s", dir, weight_type, no_check, fr_last_error());
    else
        CHECK(rc != FR_OK && has(fr_last_error(), want1, want2), "engine on %s (weights %d): rc %d, '%s' (want '%s' '%s')",
              dir, weight_type, rc, fr_last_error(), want1, want2 ? want2 : "");
    fr_engine_free(e);
}

int main(void) {
    char tmp[] = "/tmp/frugal-test-load-check-XXXXXX";
    if (!mkdtemp(tmp)) {
        CHECK(0, "mkdtemp");
        return fr_test_finish("test_load_check");
    }
    char good[300], bad[300], inf[300], q8[300], q4[300];
    snprintf(good, sizeof good, "%s/good", tmp);
    snprintf(bad, sizeof bad, "%s/bad", tmp);
    snprintf(inf, sizeof inf, "%s/inf", tmp);
    snprintf(q8, sizeof q8, "%s/q8", tmp);
    snprintf(q4, sizeof q4, "%s/q4", tmp);
    const char *cj = fr_test_q32_config(256);
    fr_config cfg;
    fr_model *m = NULL;
    int ok = fr_config_parse(&cfg, cj, strlen(cj)) == FR_OK && fr_model_create(&m, &cfg, 5) == FR_OK;
    ok = ok && mkdir(good, 0755) == 0 && fr_model_save(m, good) == FR_OK;
    CHECK(ok, "tiny model: %s", fr_last_error());
    const char *T = "model.layers.1.mlp.experts.2.up_proj.weight"; /* [32, 64] */
    size_t numel = 0;
    float *p = ok ? fr_model_param(m, T, &numel) : NULL;
    CHECK(p && numel == 32 * 64, "param %s", T);
    if (p) {
        p[131] = NAN; /* row 2, column 3 */
        ok = mkdir(bad, 0755) == 0 && fr_model_save(m, bad) == FR_OK;
        p[131] = 0.01f;
    }
    size_t nn = 0;
    float *norm = ok ? fr_model_param(m, "model.norm.weight", &nn) : NULL;
    if (norm) {
        norm[7] = INFINITY;
        ok = ok && mkdir(inf, 0755) == 0 && fr_model_save(m, inf) == FR_OK;
        norm[7] = 1.0f;
    }
    CHECK(ok && norm, "corrupt copies: %s", fr_last_error());
    ok = ok && fr_quantize_model(good, q8, "q8_0", NULL, NULL) == FR_OK && fr_quantize_model(good, q4, "q4_1", NULL, NULL) == FR_OK;
    CHECK(ok, "quantized copies: %s", fr_last_error());
    if (ok) {
        const uint16_t nan16 = 0x7e00, inf16 = 0x7c00;
        CHECK(patch_tensor(q8, "model.layers.0.self_attn.o_proj.scales", 5, &nan16, 2) == 0, "patch q8 scale");
        CHECK(patch_tensor(q4, "model.layers.1.mlp.shared_experts.down_proj.mins", 3, &inf16, 2) == 0, "patch q4 min");
    }

    /* the training loader */
    fr_model *l = NULL;
    CHECK(fr_model_load(&l, good) == FR_OK, "good model loads: %s", fr_last_error());
    fr_model_free(l);
    l = NULL;
    CHECK(fr_model_load(&l, bad) != FR_OK && has(fr_last_error(), T, "index 131"), "NaN weight: '%s'", fr_last_error());
    CHECK(l == NULL, "no model on failure");
    CHECK(fr_model_load(&l, inf) != FR_OK && has(fr_last_error(), "model.norm.weight", "index 7"), "Inf norm: '%s'",
          fr_last_error());
    CHECK(fr_model_load_flags(&l, bad, FR_LOAD_NO_CHECK) == FR_OK, "FR_LOAD_NO_CHECK loads it: %s", fr_last_error());
    if (l) {
        size_t n2 = 0;
        const float *w = fr_model_param(l, T, &n2);
        CHECK(w && isnan(w[131]), "the NaN is loaded as is");
    }
    fr_model_free(l);

    /* the engine: as stored (f32), converted to each format, quantized folders */
    for (int wt = -1; wt <= 3; wt++) {
        expect_engine(good, wt, 0, NULL, NULL);
        expect_engine(bad, wt, 0, T, "row 2, column 3");
        expect_engine(inf, wt, 0, "model.norm.weight", "index 7");
        /* unchecked: loads as is, except that the block quantizer refuses a non-finite row */
        if (wt <= 1) expect_engine(bad, wt, 1, NULL, NULL);
        else expect_engine(bad, wt, 1, T, "cannot quantize");
    }
    expect_engine(q8, -1, 0, "model.layers.0.self_attn.o_proj.scales", "index 5");
    expect_engine(q8, 0, 0, "model.layers.0.self_attn.o_proj.scales", "index 5");
    expect_engine(q8, -1, 1, NULL, NULL);
    expect_engine(q4, -1, 0, "model.layers.1.mlp.shared_experts.down_proj.mins", "index 3");
    expect_engine(q4, -1, 1, NULL, NULL);
    /* a model in memory goes through the same check */
    if (p) {
        p[131] = -INFINITY;
        fr_engine *e = NULL;
        CHECK(fr_engine_from_model(&e, m, NULL) != FR_OK && has(fr_last_error(), T, "index 131"),
              "engine from a model in memory: '%s'", fr_last_error());
        fr_engine_free(e);
        p[131] = 0.01f;
    }
    fr_model_free(m);
    fr_test_rm_rf(tmp);
    return fr_test_finish("test_load_check");
}
