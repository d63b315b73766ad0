/*
 * gguf.h — the GGUF container (llama.cpp / ggml): a bounds-checked reader, a streaming
 * writer, ggml's block formats (F32, F16, BF16, Q8_0, Q4_0) and the exporter of a Hugging
 * Face DeepseekV3/V2 folder to llama.cpp's `deepseek2` architecture. docs/interop.md has
 * the layout and the tensor mapping table.
 *
 * File layout (version 3, little-endian):
 *   u32 magic "GGUF", u32 version, u64 n_tensors, u64 n_kv
 *   n_kv x { string key, u32 value type, value }        string = u64 length + bytes
 *   n_tensors x { string name, u32 n_dims, u64 ne[n_dims], u32 ggml type, u64 offset }
 *   padding to general.alignment (default 32), then the data region; every tensor's offset
 *   (relative to the data region) is a multiple of the alignment.
 * ne[0] is the fastest-varying dimension: a row-major PyTorch tensor of shape [a, b] has
 * ne = {b, a}.
 */
#ifndef FR_GGUF_H
#define FR_GGUF_H

#include "frugal.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* ggml tensor types (numbering of ggml.h). */
typedef enum {
    FR_GGML_F32 = 0, FR_GGML_F16 = 1, FR_GGML_Q4_0 = 2, FR_GGML_Q4_1 = 3,
    FR_GGML_Q5_0 = 6, FR_GGML_Q5_1 = 7, FR_GGML_Q8_0 = 8, FR_GGML_Q8_1 = 9,
    FR_GGML_Q2_K = 10, FR_GGML_Q3_K = 11, FR_GGML_Q4_K = 12, FR_GGML_Q5_K = 13,
    FR_GGML_Q6_K = 14, FR_GGML_Q8_K = 15,
    FR_GGML_I8 = 24, FR_GGML_I16 = 25, FR_GGML_I32 = 26, FR_GGML_I64 = 27, FR_GGML_F64 = 28,
    FR_GGML_BF16 = 30
} fr_ggml_type;

/* GGUF metadata value types. */
typedef enum {
    FR_GGUF_U8 = 0, FR_GGUF_I8 = 1, FR_GGUF_U16 = 2, FR_GGUF_I16 = 3, FR_GGUF_U32 = 4,
    FR_GGUF_I32 = 5, FR_GGUF_F32 = 6, FR_GGUF_BOOL = 7, FR_GGUF_STRING = 8, FR_GGUF_ARRAY = 9,
    FR_GGUF_U64 = 10, FR_GGUF_I64 = 11, FR_GGUF_F64 = 12
} fr_gguf_vtype;

#define FR_GGUF_MAX_DIMS 4
#define FR_GGUF_DEFAULT_ALIGNMENT 32

/* Name ("F32", "Q8_0", ...) of a ggml type, NULL if unknown to this reader. */
const char *fr_ggml_type_name(int type);
/* Parse a type name (case-insensitive); -1 if unknown. */
int fr_ggml_type_from_name(const char *name);
/* Elements per block and bytes per block (0 when the type is unknown). */
int fr_ggml_block_elems(int type);
size_t fr_ggml_block_bytes(int type);

/* Encode n floats (n a multiple of the block size) into ggml type `type` (F32, F16, BF16,
 * Q8_0, Q4_0): dst needs n / block_elems * block_bytes bytes. */
int fr_ggml_quantize(int type, const float *src, void *dst, size_t n);
/* Decode n elements of `type` (F32, F16, BF16, Q8_0, Q4_0). */
int fr_ggml_dequantize(int type, const void *src, float *dst, size_t n);
uint16_t fr_gguf_f32_to_f16(float x);   /* round to nearest even; overflow to inf */
float fr_gguf_f16_to_f32(uint16_t h);
uint16_t fr_gguf_f32_to_bf16(float x);  /* round to nearest even; NaN stays NaN */

/* ------------------------------------------------------------------ reader */

typedef struct {
    char *key;                    /* NUL-terminated copy */
    fr_gguf_vtype type;
    fr_gguf_vtype arr_type;       /* FR_GGUF_ARRAY only */
    uint64_t arr_n;               /* FR_GGUF_ARRAY only */
    const unsigned char *val;     /* raw value bytes in the buffer (array: first element) */
    size_t val_len;
    size_t *str_off;              /* array of strings: element i's offset from val (owned) */
} fr_gguf_kv;

typedef struct {
    char *name;
    int n_dims;
    int64_t ne[FR_GGUF_MAX_DIMS]; /* ne[d] = 1 for d >= n_dims */
    int type;
    uint64_t offset;              /* relative to the data region */
    size_t numel, nbytes;
    const void *data;
} fr_gguf_tensor;

typedef struct {
    void *map;                    /* mmap of the file (fr_gguf_open), NULL when parsed from memory */
    size_t map_size;
    uint32_t version;
    int n_kv, n_tensors;
    fr_gguf_kv *kv;               /* file order */
    fr_gguf_tensor *tensors;      /* file order */
    size_t alignment, data_offset;
} fr_gguf;

/* Parse a GGUF image in memory (borrowed: it must outlive g). Every length, count, offset,
 * dimension and type is checked against the buffer: a hostile file gives FR_ERR_FORMAT (or
 * FR_ERR_UNSUPPORTED for a valid but unknown tensor type), never a crash. */
int fr_gguf_parse(fr_gguf *g, const void *buf, size_t size);
/* Map and parse a file. */
int fr_gguf_open(fr_gguf *g, const char *path);
void fr_gguf_close(fr_gguf *g);

const fr_gguf_kv *fr_gguf_find_kv(const fr_gguf *g, const char *key);
const fr_gguf_tensor *fr_gguf_find_tensor(const fr_gguf *g, const char *name);
/* Scalar value as integer / float (any integer, bool or float type). */
int fr_gguf_kv_int(const fr_gguf_kv *kv, int64_t *out);
int fr_gguf_kv_float(const fr_gguf_kv *kv, double *out);
/* String value (not NUL-terminated). */
int fr_gguf_kv_str(const fr_gguf_kv *kv, const char **s, size_t *len);
/* Element i of an array of strings / integers / floats (strings: walks from the start). */
int fr_gguf_arr_str(const fr_gguf_kv *kv, uint64_t i, const char **s, size_t *len);
int fr_gguf_arr_int(const fr_gguf_kv *kv, uint64_t i, int64_t *out);
/* Dequantize a tensor into dst[n], n == numel. */
int fr_gguf_tensor_to_f32(const fr_gguf_tensor *t, float *dst, size_t n);

/* ------------------------------------------------------------------ deepseek2 in place
 * (gguf_import.c) For the inference engine, which runs a GGUF's weights as stored instead of
 * importing the model: the fr_config of a deepseek2 file's metadata, and where each Hugging
 * Face parameter lies in it. */
int fr_gguf_deepseek2_config(const fr_gguf *g, const char *path, fr_config *out);
/* FR_ERR_FORMAT naming the first tensor of g that the deepseek2 layout of c has no place for */
int fr_gguf_deepseek2_check_names(const fr_gguf *g, const fr_config *c, const char *path);

/* rows x cols values of ggml type `type` at data (a whole tensor, or one matrix of a stacked
 * one); a vector has rows = 1. */
typedef struct {
    const fr_gguf_tensor *t;
    int type;
    const void *data;
    int64_t rows, cols;
} fr_gguf_view;
/* The tensor of HF parameter `hf` ("model.layers.3.self_attn.o_proj.weight",
 * "model.layers.3.mlp.experts.7.up_proj.weight" -> matrix 7 of blk.3.ffn_up_exps.weight, ...).
 * kv_b_proj maps to the unsplit attn_kv_b of older files only; split files hold its heads in
 * blk.N.attn_k_b / attn_v_b (fr_gguf_view_slice). FR_ERR_FORMAT when absent. */
int fr_gguf_view_hf(const fr_gguf *g, const char *hf, fr_gguf_view *out);
/* Matrix k of the 3-D tensor `name` (ne {cols, rows, n}). */
int fr_gguf_view_slice(const fr_gguf *g, const char *name, int64_t k, fr_gguf_view *out);
/* Index of the first value of the view that is NaN or Inf, judged from the raw bits (floats,
 * or the fp16 scales and minima of a block format), or SIZE_MAX when there is none. */
size_t fr_gguf_view_first_nonfinite(const fr_gguf_view *v);

/* ------------------------------------------------------------------ writer */

/* Streaming writer: add metadata and tensor descriptions, then write the header and each
 * tensor's data in the order added (one tensor in memory at a time). The file is built as
 * PATH.tmp.PID and renamed over PATH by fr_gguf_writer_finish. */
typedef struct fr_gguf_writer fr_gguf_writer;

int fr_gguf_writer_new(fr_gguf_writer **out);
void fr_gguf_writer_free(fr_gguf_writer *w); /* removes an unfinished temp file */
int fr_gguf_set_u32(fr_gguf_writer *w, const char *key, uint32_t v);
int fr_gguf_set_i32(fr_gguf_writer *w, const char *key, int32_t v);
int fr_gguf_set_u64(fr_gguf_writer *w, const char *key, uint64_t v);
int fr_gguf_set_f32(fr_gguf_writer *w, const char *key, float v);
int fr_gguf_set_bool(fr_gguf_writer *w, const char *key, int v);
int fr_gguf_set_str(fr_gguf_writer *w, const char *key, const char *v);
int fr_gguf_set_arr_str(fr_gguf_writer *w, const char *key, const char *const *v, size_t n);
int fr_gguf_set_arr_i32(fr_gguf_writer *w, const char *key, const int32_t *v, size_t n);
/* Describe the next tensor: ne[0] fastest; ne[0] must be a multiple of the type's block. */
int fr_gguf_add_tensor(fr_gguf_writer *w, const char *name, int n_dims, const int64_t *ne, int type);
/* Write header, metadata and tensor descriptions to PATH.tmp.PID. */
int fr_gguf_writer_begin(fr_gguf_writer *w, const char *path);
/* Data of the next tensor as floats (numel of the described tensor), encoded to its type. */
int fr_gguf_write_tensor_data(fr_gguf_writer *w, const float *src, size_t n);
/* All tensors written: flush, fsync, rename. */
int fr_gguf_writer_finish(fr_gguf_writer *w);

/* ------------------------------------------------------------------ export */

typedef struct {
    int n_tensors;
    uint64_t bytes;
    int n_fallback;       /* tensors written as F16 because ne[0] is not a multiple of 32 */
    int n_fallback_q8;    /* tensors of a K scheme written as Q8_0: ne[0] not a multiple of 256 */
    int n_kept_f32;       /* 1-D tensors and routers kept in F32 */
    int n_mtp_skipped;    /* MTP layers present in the folder and not exported */
} fr_gguf_export_stats;

/* Weight schemes of fr_gguf_export beyond single ggml types: mixes that give some tensors
 * more bits (see gguf_export.c, "types"). Outside ggml's type numbering. */
enum { FR_GGUF_MIX_Q4_K_M = 1015, FR_GGUF_MIX_Q5_K_M = 1017 };
/* The scheme named ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K", "Q4_K_M",
 * "Q5_K_M"; any case), or -1 */
int fr_gguf_export_type_from_name(const char *name);
const char *fr_gguf_export_type_name(int type);

/* The ggml type fr_gguf_export gives the matrix `gguf_name` ("token_embd.weight",
 * "blk.3.attn_v_b.weight", ...) under scheme `scheme` (a type or mix above) in a model of
 * n_layers layers, ne0 the length of its rows (the axis blocks run along): the router
 * (ffn_gate_inp) F32, a mix's choice per tensor, and a block type whose block does not divide
 * ne0 falls back (a K type to Q8_0, Q8_0 / Q4_0 to F16). -1 for an unknown scheme. 1-D
 * tensors are F32 (not asked here). */
int fr_gguf_matrix_type(int scheme, const char *gguf_name, int64_t ne0, int n_layers);
/* The same for the Hugging Face matrix hf_name [rows, cols] of a DeepseekV3 folder:
 * model.embed_tokens is token_embd, lm_head output, a layer's *down_proj.weight ffn_down*,
 * mlp.gate.weight the router, any other matrix of layer L one of blk.L's. -1 for kv_b_proj
 * (stored split: ask for blk.L.attn_k_b / attn_v_b) and for names outside those. */
int fr_gguf_hf_matrix_type(int scheme, const char *hf_name, int64_t cols, int n_layers);

/* Convert the Hugging Face folder model_dir (config.json, safetensors: F32/BF16/F16 or
 * DeepSeek FP8, tokenizer.json [+ tokenizer_config.json]) into a llama.cpp `deepseek2`
 * GGUF file of weight type `type` (F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K, Q6_K, or a mix:
 * FR_GGUF_MIX_Q4_K_M / FR_GGUF_MIX_Q5_K_M). */
int fr_gguf_export(const char *model_dir, const char *out_path, int type, fr_gguf_export_stats *stats);

#endif
