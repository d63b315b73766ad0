/*
 * fp8.h — DeepSeek's FP8 release format (the official DeepSeek-V3 checkpoints).
 *
 * A quantized linear weight `X.weight` [rows, cols] is stored as float8_e4m3fn (safetensors
 * dtype "F8_E4M3") next to `X.weight_scale_inv` [ceil(rows/br), ceil(cols/bc)] (F32, or
 * BF16/F16), one scale per br x bc block (128 x 128 in DeepSeek-V3):
 *     W[i][j] = fp8(X.weight[i][j]) * X.weight_scale_inv[i / br][j / bc]
 * The block size comes from config.json "quantization_config": {"quant_method": "fp8",
 * "fmt": "e4m3", "weight_block_size": [br, bc]} (default 128 x 128).
 */
#ifndef FR_FP8_H
#define FR_FP8_H

#include "formats/numfmt.h"
#include "formats/safetensors.h"
#include <stdint.h>

/* The E4M3 codec itself is formats/numfmt.h. */

/* Block size of an FP8 checkpoint from its parsed config.json text: *br = *bc = 128 when the
 * config has no quantization_config; FR_ERR_UNSUPPORTED for another quant_method or fmt;
 * FR_ERR_CONFIG for a malformed weight_block_size. */
int fr_fp8_block_size(const char *config_json, size_t len, int *br, int *bc);

/* Dequantize w (F8_E4M3 or F8_E5M2, 2-D) with its block scales into dst[n] (n = numel).
 * Shapes are checked: scale_inv must be [ceil(rows/br), ceil(cols/bc)]; messages name both
 * tensors. */
int fr_fp8_dequant(const fr_st_tensor *w, const fr_st_tensor *scale_inv, int br, int bc, float *dst,
                   size_t n);

#endif
