/*
 * qmatrix.h — weight matrices in several storage formats, for inference (formats/qmatrix.c;
 * products in cpu/qmatmul.h).
 *
 * A fr_qmatrix is a linear layer's weight W [rows = out features, cols = in features],
 * row-major as in Hugging Face, stored in one of the fr_qtype formats. Quantized formats
 * cut every row into blocks of FR_QBLOCK consecutive values (cols must be a multiple of
 * FR_QBLOCK for them); each block format is documented beside its code in qmatrix.c and in
 * docs/quantization.md.
 */
#ifndef FR_FORMATS_QMATRIX_H
#define FR_FORMATS_QMATRIX_H

#include <stddef.h>
#include <stdint.h>

#include "formats/numfmt.h"
#include "formats/safetensors.h"

#define FR_QBLOCK 32

typedef enum {
    FR_QT_F32 = 0,   /* plain float */
    FR_QT_BF16 = 1,  /* bfloat16 (upper half of a float), round to nearest even */
    FR_QT_Q8_0 = 2,  /* blocks of 32: float scale + 32 int8 */
    FR_QT_Q4_1 = 3,  /* blocks of 32: float scale + float minimum + 32 4-bit values */
    FR_QT_Q4_K = 4,  /* ggml's K-quants, super-blocks of 256 as GGUF files store them */
    FR_QT_Q5_K = 5,  /* (formats/kquant.h): 4.5, 5.5 and 6.5625 bits per weight */
    FR_QT_Q6_K = 6,
    FR_QT_COUNT
} fr_qtype;

typedef struct {
    fr_qtype type;
    int rows, cols;
    void *data;      /* rows * fr_qtype_row_bytes(type, cols) bytes; owned if `owned` */
    int owned;
} fr_qmatrix;

/* Name ("f32", "bf16", "q8_0", "q4_1", "q4_k", "q5_k", "q6_k") and parse; -1 if unknown. */
const char *fr_qtype_name(fr_qtype t);
int fr_qtype_parse(const char *name);
/* Bytes of one stored row of `cols` values (0 if cols is not allowed for the type: the K
 * formats need a multiple of 256, Q8_0 and Q4_1 of 32). */
/* FR_QT_Q4_K .. FR_QT_Q6_K */
int fr_qtype_is_k(fr_qtype t);
size_t fr_qtype_row_bytes(fr_qtype t, int cols);

/* Quantize an FP32 matrix [rows, cols] into a new owned matrix of type t. */
int fr_qmatrix_from_f32(fr_qmatrix *out, fr_qtype t, const float *src, int rows, int cols);
/* Wrap existing memory (not owned). */
void fr_qmatrix_wrap(fr_qmatrix *out, fr_qtype t, void *data, int rows, int cols);
void fr_qmatrix_free(fr_qmatrix *m);
/* Row r as FP32 into dst[cols]. */
void fr_qmatrix_row_f32(const fr_qmatrix *m, int r, float *dst);

/* Load the linear weight `name` ([rows, cols]) of a checkpoint as a matrix of type `want`:
 * float tensors (F32, F16, BF16) are converted / quantized to `want`; tensors already
 * stored quantized by `frugal quantize` are used as stored when `want` is their type.
 * Fails with a message naming the tensor when it is missing or has another shape. */
int fr_qmatrix_load(fr_qmatrix *out, const fr_st_set *st, const char *name, int rows, int cols, fr_qtype want);

/* A matrix [rows, cols] from ggml-encoded bytes (a GGUF tensor, or a slice of one: rows
 * consecutive rows of `ggml_type`, formats/gguf.h). want = -1 keeps the stored numbers:
 * F32 and BF16 are used in place (not owned: the bytes must outlive the matrix); Q8_0 is
 * rearranged into FR_QT_Q8_0 and Q4_0 / Q4_1 into FR_QT_Q4_1 without changing a value (the
 * same fp16 scales and quants: Q4_0's x = d (q - 8) is Q4_1's d q + m with m = -8 d, exact in
 * fp16); F16 becomes F32. Another want converts through FP32. FR_ERR_UNSUPPORTED names a
 * ggml type without a path here. */
int fr_qmatrix_from_ggml(fr_qmatrix *out, int ggml_type, const void *data, int rows, int cols, int want);

/* Quantize an FP32 matrix [rows, cols] with ggml's encoder for `ggml_type` (fr_ggml_quantize:
 * the blocks a GGUF export writes, byte for byte) into a new owned matrix in the engine's
 * layout, as fr_qmatrix_from_ggml keeps them (Q4_0 becomes Q4_1 with m = -8 d, F16 the F32 of
 * the rounded values). Non-finite values and scales beyond float16 are refused naming the row.
 * `frugal quantize` and the engine use it where a matrix must equal the GGUF's. */
int fr_qmatrix_from_f32_ggml(fr_qmatrix *out, int ggml_type, const float *src, int rows, int cols);

/* Format of `name` as stored in a checkpoint: FR_QT_Q8_0 / FR_QT_Q4_1 when the quantized
 * tensors of `frugal quantize` ("<base>.qweight", ...) are present, FR_QT_BF16 for a BF16
 * tensor, FR_QT_F32 for any other float tensor; -1 when absent. */
int fr_qmatrix_stored_type(const fr_st_set *st, const char *name);

/* The name of a stored quantized part: "<base>.<suffix>" for name "<base>.weight"
 * ("<name>.<suffix>" otherwise), suffix "qweight", "scales" or "mins". -1 if it does not fit. */
int fr_qmatrix_tensor_name(char *buf, size_t n, const char *name, const char *suffix);

/* Scalar conversions: IEEE float16, round to nearest even (NaN stays NaN); bfloat16 is
 * formats/numfmt.h (fr_bf16_encode / fr_bf16_decode). */
uint16_t fr_q_f32_to_f16(float f);
float fr_q_f16_to_f32(uint16_t h);

#endif
