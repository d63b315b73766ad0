/* numfmt.h — bfloat16 and FP8 E4M3 encode / decode (formats/numfmt.c). */
#ifndef FR_FORMATS_NUMFMT_H
#define FR_FORMATS_NUMFMT_H

#include <stdint.h>

/* FP8 E4M3 (no infinities; 448 is the largest finite value; NaN = S.1111.111) and BF16.
 * Encoding rounds to nearest even and saturates to +-448 (E4M3); NaN stays NaN. */
uint8_t fr_fp8_e4m3_encode(float x);
float fr_fp8_e4m3_decode(uint8_t b);
uint16_t fr_bf16_encode(float x);
float fr_bf16_decode(uint16_t b);
/* dst[i] = fr_bf16_decode(src[i]) and fr_fp8_e4m3_decode(src[i]) * scale, for a row of n
 * (same results as the scalar decoders, written to vectorise) */
void fr_bf16_decode_row(float *dst, const uint16_t *src, int n);
void fr_fp8_e4m3_decode_row(float *dst, const uint8_t *src, int n, float scale);

#endif
