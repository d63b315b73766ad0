/* test_safetensors.c — round trips, sharded sets, hostile headers and a header fuzz loop. */
#define _GNU_SOURCE
#include "frugal.h"
#include "core/internal.h"
#include "formats/safetensors.h"
#include "testutil.h"

#include <dirent.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char g_dir[256];

static void path_in(char *out, size_t n, const char *name) { snprintf(out, n, "%s/%s", g_dir, name); }

static void write_raw(const char *path, const void *data, size_t len) {
    FILE *f = fopen(path, "wb");
    if (!f) {
        perror(path);
        exit(2);
    }
    if (len) fwrite(data, 1, len, f);
    fclose(f);
}

/* 8-byte LE length + header + data */
static void write_st(const char *path, const char *header, const void *data, size_t data_len) {
    size_t hl = strlen(header);
    unsigned char *buf = malloc(8 + hl + data_len + 1);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)hl >> (8 * i));
    memcpy(buf + 8, header, hl);
    if (data_len) memcpy(buf + 8 + hl, data, data_len);
    write_raw(path, buf, 8 + hl + data_len);
    free(buf);
}

static int float_bits_eq(float a, float b) {
    if (isnan(a) && isnan(b)) return 1;
    return memcmp(&a, &b, 4) == 0;
}

static void test_round_trip(void) {
    char path[512];
    path_in(path, sizeof path, "rt.safetensors");

    float f32[6] = {1.5f, -2.25f, 0.0f, 3e-39f /* subnormal */, 1e30f, -7.0f};
    uint16_t f16[10] = {0x3C00, 0xC000, 0x7BFF, 0x0001, 0x03FF, 0x7C00, 0xFC00, 0x7E00, 0x8000, 0x3555};
    float f16_want[10] = {1.0f, -2.0f, 65504.0f, 0x1p-24f, 1023 * 0x1p-24f, INFINITY, -INFINITY,
                          NAN, -0.0f, 0.333251953125f};
    uint16_t bf16[6] = {0x3F80, 0xC040, 0x7F80, 0x7FC0, 0x0001, 0x4049};
    float bf16_want[6] = {1.0f, -3.0f, INFINITY, NAN, 0x1p-133f, 3.140625f};
    int32_t i32[5] = {0, -1, 123456, INT32_MIN, INT32_MAX};
    int64_t i64[4] = {7, -9, 1000000, 5000000000LL};
    int64_t i64_small[3] = {-5, 0, 2000000000};
    double f64[3] = {0.1, -1e300, 2.5};
    uint8_t u8[3] = {0, 200, 255};
    int8_t i8[3] = {-128, 0, 127};
    int16_t i16[2] = {-32768, 1234};
    uint8_t e4m3[5] = {0x38, 0x7E, 0x7F, 0x01, 0xB8};
    float e4m3_want[5] = {1.0f, 448.0f, NAN, 0x1p-9f, -1.0f};
    uint8_t e5m2[3] = {0x3C, 0x7C, 0x01};
    float e5m2_want[3] = {1.0f, INFINITY, 0x1p-16f};
    float scalar = 42.0f;

    fr_st_entry e[15] = {
        {"w.f32", FR_DT_F32, 2, {2, 3}, f32},
        {"w.f16", FR_DT_F16, 1, {10}, f16},
        {"w.bf16", FR_DT_BF16, 2, {3, 2}, bf16},
        {"ids.i32", FR_DT_I32, 1, {5}, i32},
        {"ids.i64", FR_DT_I64, 2, {2, 2}, i64},
        {"ids.i64s", FR_DT_I64, 1, {3}, i64_small},
        {"w.f64", FR_DT_F64, 1, {3}, f64},
        {"b.u8", FR_DT_U8, 1, {3}, u8},
        {"b.i8", FR_DT_I8, 1, {3}, i8},
        {"b.i16", FR_DT_I16, 1, {2}, i16},
        {"q.e4m3", FR_DT_F8_E4M3, 1, {5}, e4m3},
        {"q.e5m2", FR_DT_F8_E5M2, 1, {3}, e5m2},
        {"scalar", FR_DT_F32, 0, {0}, &scalar},
        {"empty", FR_DT_F32, 2, {0, 4}, NULL},
        {"weird \"name\"\\\n\xc3\xa9", FR_DT_F32, 1, {1}, &scalar},
    };
    const char *mk[2] = {"format", "note"};
    const char *mv[2] = {"pt", "quote\" and \\ backslash"};
    int rc = fr_st_write(path, e, 15, mk, mv, 2);
    CHECK(rc == FR_OK, "fr_st_write: %d %s", rc, fr_last_error());

    /* header length: data region starts at a multiple of 8; metadata present */
    char *raw = NULL;
    size_t rawlen = 0;
    CHECK(fr_read_file(path, &raw, &rawlen) == FR_OK, "read back");
    if (raw) {
        uint64_t hl = 0;
        for (int i = 7; i >= 0; i--) hl = (hl << 8) | (unsigned char)raw[i];
        CHECK((8 + hl) % 8 == 0, "data region offset %llu not 8-aligned", (unsigned long long)(8 + hl));
        char *hdr = strndup(raw + 8, (size_t)hl);
        CHECK(strstr(hdr, "\"__metadata__\"") != NULL, "metadata key in header");
        CHECK(strstr(hdr, "\"format\":\"pt\"") != NULL, "format pt in header: %s", hdr);
        free(hdr);
        free(raw);
    }

    fr_st_file f;
    rc = fr_st_open(&f, path);
    CHECK(rc == FR_OK, "fr_st_open: %d %s", rc, fr_last_error());
    if (rc != FR_OK) return;
    CHECK(f.n_tensors == 15, "n_tensors %d", f.n_tensors);
    for (int i = 1; i < f.n_tensors; i++)
        CHECK(strcmp(f.tensors[i - 1].name, f.tensors[i].name) < 0, "sorted");
    CHECK(fr_st_find(&f, "nope") == NULL, "missing tensor not found");
    for (int i = 0; i < 15; i++) {
        const fr_st_tensor *t = fr_st_find(&f, e[i].name);
        CHECK(t != NULL, "find %s", e[i].name);
        if (!t) continue;
        CHECK(t->dtype == e[i].dtype && t->ndim == e[i].ndim, "%s dtype/ndim", e[i].name);
        size_t numel = 1;
        for (int d = 0; d < e[i].ndim; d++) {
            CHECK(t->shape[d] == e[i].shape[d], "%s shape[%d]", e[i].name, d);
            numel *= (size_t)e[i].shape[d];
        }
        CHECK(t->numel == numel, "%s numel %zu", e[i].name, t->numel);
        CHECK(t->nbytes == numel * fr_dtype_size(e[i].dtype), "%s nbytes", e[i].name);
        CHECK((uintptr_t)t->data % fr_dtype_size(e[i].dtype) == 0, "%s naturally aligned", e[i].name);
        if (numel) CHECK(memcmp(t->data, e[i].data, t->nbytes) == 0, "%s bytes", e[i].name);
    }

    float out[16];
    const fr_st_tensor *t = fr_st_find(&f, "w.f32");
    CHECK(t && fr_st_to_f32(t, out, 6) == FR_OK && memcmp(out, f32, sizeof f32) == 0, "f32 values");
    CHECK(t && fr_st_to_f32(t, out, 5) == FR_ERR_ARG, "wrong n rejected");
    int32_t iv[8];
    CHECK(t && fr_st_to_i32(t, iv, 6) == FR_ERR_FORMAT, "to_i32 on F32 rejected");

    t = fr_st_find(&f, "w.f16");
    CHECK(t && fr_st_to_f32(t, out, 10) == FR_OK, "f16 convert");
    for (int i = 0; t && i < 10; i++)
        CHECK(float_bits_eq(out[i], f16_want[i]), "f16[%d] 0x%04x -> %g want %g", i, f16[i],
              (double)out[i], (double)f16_want[i]);
    t = fr_st_find(&f, "w.bf16");
    CHECK(t && fr_st_to_f32(t, out, 6) == FR_OK, "bf16 convert");
    for (int i = 0; t && i < 6; i++)
        CHECK(float_bits_eq(out[i], bf16_want[i]), "bf16[%d] -> %g want %g", i, (double)out[i],
              (double)bf16_want[i]);
    t = fr_st_find(&f, "q.e4m3");
    CHECK(t && fr_st_to_f32(t, out, 5) == FR_OK, "e4m3 convert");
    for (int i = 0; t && i < 5; i++)
        CHECK(float_bits_eq(out[i], e4m3_want[i]), "e4m3[%d] -> %g", i, (double)out[i]);
    t = fr_st_find(&f, "q.e5m2");
    CHECK(t && fr_st_to_f32(t, out, 3) == FR_OK, "e5m2 convert");
    for (int i = 0; t && i < 3; i++)
        CHECK(float_bits_eq(out[i], e5m2_want[i]), "e5m2[%d] -> %g", i, (double)out[i]);
    t = fr_st_find(&f, "w.f64");
    CHECK(t && fr_st_to_f32(t, out, 3) == FR_OK && out[0] == 0.1f && isinf(out[1]) && out[1] < 0 &&
              out[2] == 2.5f,
          "f64 values");

    t = fr_st_find(&f, "ids.i32");
    CHECK(t && fr_st_to_i32(t, iv, 5) == FR_OK && memcmp(iv, i32, sizeof i32) == 0, "i32 values");
    CHECK(t && fr_st_to_f32(t, out, 5) == FR_OK && out[2] == 123456.0f && out[3] == -2147483648.0f,
          "i32 to float");
    t = fr_st_find(&f, "ids.i64");
    CHECK(t && fr_st_to_i32(t, iv, 4) == FR_ERR_FORMAT, "i64 out of int32 range rejected");
    CHECK(t && strstr(fr_last_error(), "ids.i64") != NULL, "message names tensor: %s", fr_last_error());
    CHECK(t && fr_st_to_f32(t, out, 4) == FR_OK && out[1] == -9.0f && out[3] == 5e9f, "i64 to float");
    t = fr_st_find(&f, "ids.i64s");
    CHECK(t && fr_st_to_i32(t, iv, 3) == FR_OK && iv[0] == -5 && iv[2] == 2000000000, "i64 small");
    t = fr_st_find(&f, "b.u8");
    CHECK(t && fr_st_to_i32(t, iv, 3) == FR_OK && iv[1] == 200 && iv[2] == 255, "u8");
    t = fr_st_find(&f, "b.i8");
    CHECK(t && fr_st_to_i32(t, iv, 3) == FR_OK && iv[0] == -128 && iv[2] == 127, "i8");
    t = fr_st_find(&f, "b.i16");
    CHECK(t && fr_st_to_f32(t, out, 2) == FR_OK && out[0] == -32768.0f && out[1] == 1234.0f, "i16");
    t = fr_st_find(&f, "scalar");
    CHECK(t && t->ndim == 0 && t->numel == 1 && fr_st_to_f32(t, out, 1) == FR_OK && out[0] == 42.0f,
          "scalar");
    t = fr_st_find(&f, "empty");
    CHECK(t && t->numel == 0 && t->nbytes == 0 && fr_st_to_f32(t, out, 0) == FR_OK, "empty tensor");
    fr_st_close(&f);
    CHECK(f.map == NULL && f.tensors == NULL && f.n_tensors == 0, "close clears");
    fr_st_close(&f); /* idempotent */

    /* writer argument checks */
    fr_st_entry dup[2] = {{"a", FR_DT_F32, 1, {1}, &scalar}, {"a", FR_DT_F32, 1, {1}, &scalar}};
    CHECK(fr_st_write(path, dup, 2, NULL, NULL, 0) == FR_ERR_ARG, "duplicate names rejected by writer");
    fr_st_entry neg[1] = {{"a", FR_DT_F32, 1, {-1}, &scalar}};
    CHECK(fr_st_write(path, neg, 1, NULL, NULL, 0) == FR_ERR_ARG, "negative dim rejected by writer");
    fr_st_entry badutf[1] = {{"a\xff", FR_DT_F32, 1, {1}, &scalar}};
    CHECK(fr_st_write(path, badutf, 1, NULL, NULL, 0) == FR_ERR_ARG, "invalid UTF-8 rejected");

    /* a file with no tensors */
    CHECK(fr_st_write(path, NULL, 0, NULL, NULL, 0) == FR_OK, "empty file write");
    CHECK(fr_st_open(&f, path) == FR_OK && f.n_tensors == 0, "empty file open");
    CHECK(fr_st_find(&f, "x") == NULL, "find in empty");
    fr_st_close(&f);
    unlink(path);
}

static void write_shard(const char *name, const char *const *tnames, int n, float base) {
    char path[512];
    path_in(path, sizeof path, name);
    float vals[4][2];
    fr_st_entry e[4];
    for (int i = 0; i < n; i++) {
        vals[i][0] = base + (float)i;
        vals[i][1] = -(base + (float)i);
        e[i] = (fr_st_entry){tnames[i], FR_DT_F32, 1, {2}, vals[i]};
    }
    const char *k = "format", *v = "pt";
    int rc = fr_st_write(path, e, n, &k, &v, 1);
    CHECK(rc == FR_OK, "write shard %s: %s", name, fr_last_error());
}

static void test_sets(void) {
    char path[512];
    fr_st_set s;
    /* neither file */
    int rc = fr_st_set_open_dir(&s, g_dir);
    CHECK(rc == FR_ERR_IO && strstr(fr_last_error(), g_dir) != NULL, "empty dir: %d %s", rc,
          fr_last_error());
    CHECK(s.n_files == 0 && s.files == NULL, "empty dir leaves set empty");

    /* single file */
    const char *single[2] = {"x", "y"};
    write_shard("model.safetensors", single, 2, 1.0f);
    rc = fr_st_set_open_dir(&s, g_dir);
    CHECK(rc == FR_OK && s.n_files == 1, "single file set: %s", fr_last_error());
    CHECK(fr_st_set_find(&s, "y") != NULL && fr_st_set_find(&s, "z") == NULL, "single find");
    fr_st_set_close(&s);

    /* sharded set takes precedence */
    const char *s1[2] = {"model.embed_tokens.weight", "model.layers.0.mlp.gate.weight"};
    const char *s2[1] = {"lm_head.weight"};
    write_shard("model-00001-of-00002.safetensors", s1, 2, 10.0f);
    write_shard("model-00002-of-00002.safetensors", s2, 1, 20.0f);
    path_in(path, sizeof path, "model.safetensors.index.json");
    const char *index =
        "{\"metadata\": {\"total_size\": 24}, \"weight_map\": {"
        "\"model.embed_tokens.weight\": \"model-00001-of-00002.safetensors\","
        "\"lm_head.weight\": \"model-00002-of-00002.safetensors\","
        "\"model.layers.0.mlp.gate.weight\": \"model-00001-of-00002.safetensors\"}}";
    write_raw(path, index, strlen(index));
    rc = fr_st_set_open_dir(&s, g_dir);
    CHECK(rc == FR_OK, "sharded open: %d %s", rc, fr_last_error());
    if (rc == FR_OK) {
        CHECK(s.n_files == 2, "two shards opened once each (%d)", s.n_files);
        const fr_st_tensor *t = fr_st_set_find(&s, "lm_head.weight");
        float v[2];
        CHECK(t && fr_st_to_f32(t, v, 2) == FR_OK && v[0] == 20.0f && v[1] == -20.0f, "lm_head");
        t = fr_st_set_find(&s, "model.layers.0.mlp.gate.weight");
        CHECK(t && fr_st_to_f32(t, v, 2) == FR_OK && v[0] == 11.0f, "gate");
        CHECK(fr_st_set_find(&s, "x") == NULL, "model.safetensors ignored when an index exists");
        fr_st_set_close(&s);
    }

    /* a tensor listed in the index but missing from its shard */
    const char *bad =
        "{\"weight_map\": {"
        "\"model.embed_tokens.weight\": \"model-00001-of-00002.safetensors\","
        "\"model.norm.weight\": \"model-00002-of-00002.safetensors\"}}";
    write_raw(path, bad, strlen(bad));
    rc = fr_st_set_open_dir(&s, g_dir);
    CHECK(rc == FR_ERR_FORMAT && strstr(fr_last_error(), "model.norm.weight") != NULL,
          "missing shard tensor: %d %s", rc, fr_last_error());
    CHECK(s.n_files == 0 && s.files == NULL, "failed open leaves set empty");

    /* path traversal in a shard name */
    const char *trav = "{\"weight_map\": {\"a\": \"../evil.safetensors\"}}";
    write_raw(path, trav, strlen(trav));
    rc = fr_st_set_open_dir(&s, g_dir);
    CHECK(rc == FR_ERR_FORMAT && strstr(fr_last_error(), "evil") != NULL, "traversal: %s",
          fr_last_error());
    const char *slash = "{\"weight_map\": {\"a\": \"sub/x.safetensors\"}}";
    write_raw(path, slash, strlen(slash));
    CHECK(fr_st_set_open_dir(&s, g_dir) == FR_ERR_FORMAT, "slash in shard name");
    /* missing shard file */
    const char *nofile = "{\"weight_map\": {\"a\": \"nothere.safetensors\"}}";
    write_raw(path, nofile, strlen(nofile));
    CHECK(fr_st_set_open_dir(&s, g_dir) == FR_ERR_IO, "missing shard file");
    /* index without weight_map, and not JSON */
    write_raw(path, "{\"metadata\": {}}", 16);
    CHECK(fr_st_set_open_dir(&s, g_dir) == FR_ERR_FORMAT, "no weight_map");
    write_raw(path, "{\"weight_map\": ", 15);
    CHECK(fr_st_set_open_dir(&s, g_dir) == FR_ERR_FORMAT, "index not JSON");
    /* the same tensor in two shards */
    const char *s2b[2] = {"lm_head.weight", "model.embed_tokens.weight"};
    write_shard("model-00002-of-00002.safetensors", s2b, 2, 30.0f);
    write_raw(path, index, strlen(index));
    rc = fr_st_set_open_dir(&s, g_dir);
    CHECK(rc == FR_ERR_FORMAT && strstr(fr_last_error(), "both") &&
              strstr(fr_last_error(), "model.embed_tokens.weight"),
          "tensor in two shards: %d %s", rc, fr_last_error());

    unlink(path);
    const char *files[3] = {"model.safetensors", "model-00001-of-00002.safetensors",
                            "model-00002-of-00002.safetensors"};
    for (int i = 0; i < 3; i++) {
        path_in(path, sizeof path, files[i]);
        unlink(path);
    }
}

static void expect_format(const char *what, const char *path) {
    fr_st_file f;
    memset(&f, 0x5a, sizeof f);
    int rc = fr_st_open(&f, path);
    CHECK(rc == FR_ERR_FORMAT, "%s: expected FR_ERR_FORMAT, got %d (%s)", what, rc, fr_last_error());
    CHECK(strstr(fr_last_error(), path) != NULL, "%s: message names the file: %s", what,
          fr_last_error());
    CHECK(f.map == NULL && f.tensors == NULL && f.path == NULL && f.n_tensors == 0,
          "%s: nothing left open", what);
    if (rc == FR_OK) fr_st_close(&f);
}

static void expect_format_msg(const char *what, const char *path, const char *needle) {
    expect_format(what, path);
    CHECK(strstr(fr_last_error(), needle) != NULL, "%s: message should mention '%s': %s", what,
          needle, fr_last_error());
}

static void test_hostile(void) {
    char path[512];
    path_in(path, sizeof path, "bad.safetensors");
    write_raw(path, "", 0);
    expect_format("empty file", path);
    write_raw(path, "\x02\0\0\0\0", 5);
    expect_format("5-byte file", path);

    unsigned char big[20] = {0xe8, 0x03, 0, 0, 0, 0, 0, 0, '{', '}'};
    write_raw(path, big, sizeof big);
    expect_format("header length > file", path);
    unsigned char huge[16] = {0, 0, 0, 0, 0, 0, 0, 0x80, '{', '}', ' ', ' ', ' ', ' ', ' ', ' '};
    write_raw(path, huge, sizeof huge);
    expect_format("header length 2^63", path);
    unsigned char allff[16] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, '{', '}'};
    write_raw(path, allff, sizeof allff);
    expect_format("header length 2^64-1", path);

    /* Hostile headers: each row is written as the whole header (followed by data_len bytes of
     * zeros) and must fail with FR_ERR_FORMAT; a row with a needle also checks that the error
     * message names the problem. One table so a new hostile case is one line. */
    static const struct {
        const char *what, *header;
        size_t data_len;
        const char *needle;
    } cases[] = {
        {"non-JSON header", "hello world", 0, NULL},
        {"truncated JSON", "{\"a\": {\"dtype\": \"F32\"", 0, NULL},
        {"JSON array header", "[1, 2, 3]", 0, NULL},
        {"trailing garbage", "{} garbage", 0, NULL},
        {"metadata not an object", "{\"__metadata__\": [1]}", 0, NULL},
        {"metadata value not a string", "{\"__metadata__\": {\"k\": 1}}", 0, NULL},
        {"entry not an object", "{\"t\": 5}", 0, "'t'"},
        {"missing dtype", "{\"t\": {\"shape\": [2], \"data_offsets\": [0, 8]}}", 8, "dtype"},
        {"dtype not a string", "{\"t\": {\"dtype\": 3, \"shape\": [2], \"data_offsets\": [0, 8]}}", 8, "dtype"},
        {"unknown dtype", "{\"t\": {\"dtype\": \"F4\", \"shape\": [2], \"data_offsets\": [0, 8]}}", 8, "F4"},
        {"missing shape", "{\"t\": {\"dtype\": \"F32\", \"data_offsets\": [0, 8]}}", 8, "shape"},
        {"shape not array", "{\"t\": {\"dtype\": \"F32\", \"shape\": 2, \"data_offsets\": [0, 8]}}", 8, "shape"},
        {"negative dim", "{\"t\": {\"dtype\": \"F32\", \"shape\": [-2], \"data_offsets\": [0, 8]}}", 8, "shape"},
        {"fractional dim", "{\"t\": {\"dtype\": \"F32\", \"shape\": [1.5], \"data_offsets\": [0, 8]}}", 8, "shape"},
        {"string dim", "{\"t\": {\"dtype\": \"F32\", \"shape\": [\"2\"], \"data_offsets\": [0, 8]}}", 8, "shape"},
        {"overflowing shape",
         "{\"t\": {\"dtype\": \"F32\", \"shape\": [4294967296, 4294967296, 4294967296], \"data_offsets\": [0, 8]}}", 8,
         "overflow"},
        {"byte size overflow",
         "{\"t\": {\"dtype\": \"F64\", \"shape\": [4611686018427387904], \"data_offsets\": [0, 8]}}",
         8, NULL},
        {"dim 1e300", "{\"t\": {\"dtype\": \"F32\", \"shape\": [1e300], \"data_offsets\": [0, 8]}}", 8, NULL},
        {"too many dims", "{\"t\": {\"dtype\": \"F32\", \"shape\": [1,1,1,1,1,1,1,1,2], \"data_offsets\": [0, 8]}}", 8,
         "dims"},
        {"missing offsets", "{\"t\": {\"dtype\": \"F32\", \"shape\": [2]}}", 8, "data_offsets"},
        {"offsets not array", "{\"t\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": 8}}", 8, "data_offsets"},
        {"three offsets",
         "{\"t\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8, 9]}}", 8, "data_offsets"},
        {"negative offset",
         "{\"t\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [-8, 0]}}", 8, "data_offsets"},
        {"offsets out of range", "{\"t\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [8, 16]}}", 8,
         "data_offsets"},
        {"offset 2^64", "{\"t\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 18446744073709551615]}}", 8,
         "data_offsets"},
        {"begin > end", "{\"t\": {\"dtype\": \"F32\", \"shape\": [0], \"data_offsets\": [8, 0]}}", 8, "begin"},
        {"size mismatch", "{\"t\": {\"dtype\": \"F32\", \"shape\": [3], \"data_offsets\": [0, 8]}}", 16, "needs"},
        {"duplicate names",
         "{\"t\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]},"
         " \"u\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [8, 16]},"
         " \"t\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [8, 16]}}",
         16, "'t'"},
    };
    unsigned char data[64];
    memset(data, 0, sizeof data);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_st(path, cases[i].header, data, cases[i].data_len);
        if (cases[i].needle) expect_format_msg(cases[i].what, path, cases[i].needle);
        else expect_format(cases[i].what, path);
        /* the unknown-dtype message must also say which tensor has it */
        if (strcmp(cases[i].what, "unknown dtype") == 0)
            CHECK(strstr(fr_last_error(), "'t'") != NULL, "unknown dtype names tensor: %s", fr_last_error());
    }

    /* a good hand-made file still opens (sanity for the helpers) */
    write_st(path, "{\"t\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}}", data, 8);
    fr_st_file f;
    CHECK(fr_st_open(&f, path) == FR_OK && f.n_tensors == 1, "hand-made file opens: %s",
          fr_last_error());
    fr_st_close(&f);

    /* not a regular file / not there */
    CHECK(fr_st_open(&f, g_dir) == FR_ERR_IO, "directory rejected");
    unlink(path);
    CHECK(fr_st_open(&f, path) == FR_ERR_IO, "missing file is FR_ERR_IO");
}

static void test_fuzz(void) {
    char path[512], fpath[512];
    path_in(path, sizeof path, "good.safetensors");
    path_in(fpath, sizeof fpath, "fuzz.safetensors");
    float a[12];
    uint16_t b[6];
    int64_t c[3] = {1, 2, 3};
    for (int i = 0; i < 12; i++) a[i] = (float)i * 0.5f;
    for (int i = 0; i < 6; i++) b[i] = (uint16_t)(0x3C00 + i);
    fr_st_entry e[3] = {
        {"model.layers.0.w", FR_DT_F32, 2, {3, 4}, a},
        {"model.layers.0.h", FR_DT_F16, 1, {6}, b},
        {"ids", FR_DT_I64, 1, {3}, c},
    };
    const char *k = "format", *v = "pt";
    CHECK(fr_st_write(path, e, 3, &k, &v, 1) == FR_OK, "fuzz base file");
    char *good = NULL;
    size_t len = 0;
    if (fr_read_file(path, &good, &len) != FR_OK) return;
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = (hl << 8) | (unsigned char)good[i];
    size_t span = 8 + (size_t)hl;
    char *buf = malloc(len);
    fr_rng rng;
    fr_rng_seed(&rng, 1234);
    int opened = 0, failed = 0, bad_code = 0;
    float out[64];
    for (int it = 0; it < 2000; it++) {
        memcpy(buf, good, len);
        int flips = 1 + (int)(fr_rng_next(&rng) % 4);
        for (int j = 0; j < flips; j++) {
            size_t pos = (size_t)(fr_rng_next(&rng) % span);
            /* half the time a random byte, half a JSON-significant one */
            static const char sig[] = "{}[]\",:0123456789-e. ";
            uint64_t r = fr_rng_next(&rng);
            buf[pos] = (r & 1) ? (char)(r >> 8) : sig[(r >> 8) % (sizeof sig - 1)];
        }
        write_raw(fpath, buf, len);
        fr_st_file f;
        int rc = fr_st_open(&f, fpath);
        if (rc == FR_OK) {
            opened++;
            for (int i = 0; i < f.n_tensors; i++) {
                const fr_st_tensor *t = &f.tensors[i];
                if (t->numel <= 64) fr_st_to_f32(t, out, t->numel);
            }
            fr_st_close(&f);
        } else {
            failed++;
            if (rc != FR_ERR_FORMAT && rc != FR_ERR_NOMEM) bad_code++;
        }
    }
    CHECK(opened + failed == 2000, "fuzz iterations");
    CHECK(bad_code == 0, "fuzz: %d failures were not FR_ERR_FORMAT", bad_code);
    CHECK(failed > 0, "fuzz produced failures (%d opened, %d failed)", opened, failed);
    printf("fuzz: %d opened, %d rejected\n", opened, failed);
    free(buf);
    free(good);
    unlink(path);
    unlink(fpath);
}

static void test_dtypes(void) {
    CHECK(fr_dtype_size(FR_DT_F32) == 4 && fr_dtype_size(FR_DT_BF16) == 2 &&
              fr_dtype_size(FR_DT_I64) == 8 && fr_dtype_size(FR_DT_F8_E4M3) == 1 &&
              fr_dtype_size(FR_DT_COUNT) == 0,
          "dtype sizes");
    CHECK(strcmp(fr_dtype_name(FR_DT_BF16), "BF16") == 0 &&
              strcmp(fr_dtype_name(FR_DT_F8_E5M2), "F8_E5M2") == 0 &&
              strcmp(fr_dtype_name(FR_DT_BOOL), "BOOL") == 0,
          "dtype names");
}

int main(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/fr_st_XXXXXX");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 2;
    }
    test_dtypes();
    test_round_trip();
    test_sets();
    test_hostile();
    test_fuzz();
    rmdir(g_dir);
    return fr_test_finish("test_safetensors");
}
