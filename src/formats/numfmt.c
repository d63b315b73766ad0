/*
 * numfmt.c — the narrow number formats: bfloat16 and OCP FP8 E4M3 ("fn": finite, S.1111.111
 * is NaN, largest 448), encoded with round to nearest even and saturation, decoded exactly.
 * One codec for every user: the latent KV cache (infer/), DeepSeek's FP8 checkpoints
 * (formats/fp8.c) and FP8 training. test_infer checks all 256 E4M3 codes against an ldexp
 * reference; the encoder agreed with the one it replaced on all 2^32 float inputs.
 */
#include "formats/numfmt.h"

#include <math.h>
#include <string.h>

uint16_t fr_bf16_encode(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* Decoding is inline here so that the row decoders below, which the latent cache calls for
 * every cached row at every decode step and layer, vectorise. */
static inline float bf16_value(uint16_t b) {
    const uint32_t u = (uint32_t)b << 16;
    float x;
    memcpy(&x, &u, 4);
    return x;
}

/* E4M3 (bias 7): the magnitude bits moved into a float's exponent and mantissa fields,
 * (b & 0x7f) << 20, read as a float are 2^(e-127) (1 + m/8) for a normal byte (e its 4-bit
 * exponent, m its mantissa) and m 2^-129 for a subnormal one; times 2^120 that is exactly the
 * E4M3 value, with no rounding and no ldexpf. S.1111.111 is NaN. */
static inline float fp8_e4m3_value(uint8_t b) {
    const uint32_t mag = b & 0x7fu;
    uint32_t u = (mag << 20) | ((uint32_t)(b & 0x80u) << 24);
    u |= (0u - (uint32_t)(mag == 0x7fu)) & 0x7fc00000u; /* NaN: exponent all ones, without a branch */
    float v;
    memcpy(&v, &u, 4);
    return v * 0x1p120f;
}

float fr_bf16_decode(uint16_t b) { return bf16_value(b); }

uint8_t fr_fp8_e4m3_encode(float x) {
    if (isnan(x)) return 0x7f;
    uint8_t sign = signbit(x) ? 0x80 : 0;
    float a = fabsf(x);
    if (a >= 448.0f) return sign | 0x7e;
    if (a < 0.015625f) { /* below 2^-6: subnormal, steps of 2^-9 */
        int q = (int)nearbyintf(a * 512.0f);
        if (q >= 8) return sign | 0x08; /* rounds up to the smallest normal */
        return sign | (uint8_t)q;
    }
    int e;
    float m = frexpf(a, &e);         /* a = m 2^e, m in [0.5, 1) */
    int E = e - 1;                   /* a = (2m) 2^E */
    int mant = (int)nearbyintf((2.0f * m - 1.0f) * 8.0f);
    if (mant == 8) { mant = 0; E++; }
    if (E > 8 || (E == 8 && mant > 6)) return sign | 0x7e;
    return sign | (uint8_t)((E + 7) << 3) | (uint8_t)mant;
}

float fr_fp8_e4m3_decode(uint8_t b) { return fp8_e4m3_value(b); }

void fr_bf16_decode_row(float *dst, const uint16_t *src, int n) {
    for (int i = 0; i < n; i++) dst[i] = bf16_value(src[i]);
}

void fr_fp8_e4m3_decode_row(float *dst, const uint8_t *src, int n, float scale) {
    for (int i = 0; i < n; i++) dst[i] = fp8_e4m3_value(src[i]) * scale;
}
