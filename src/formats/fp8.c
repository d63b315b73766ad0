/* fp8.c — E4M3 conversion and block-scale dequantization of DeepSeek FP8 weights (fp8.h). */
#include "formats/fp8.h"
#include "core/internal.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

float fr_fp8_e4m3_to_f32(uint8_t v) {
    int sign = v >> 7, exp = (v >> 3) & 0xf, man = v & 7;
    float r;
    if (exp == 15 && man == 7) return NAN;
    if (exp == 0) r = ldexpf((float)man, -9);           /* subnormal: man/8 * 2^-6 */
    else r = ldexpf((float)(8 + man), exp - 10);        /* (1 + man/8) * 2^(exp-7) */
    return sign ? -r : r;
}

uint8_t fr_fp8_e4m3_from_f32(float x) {
    if (isnan(x)) return 0x7f;
    uint8_t sign = signbit(x) ? 0x80 : 0;
    float a = fabsf(x);
    if (a >= 448.0f) return sign | 0x7e; /* saturate to the largest finite value */
    /* The representable values have spacing 2^(e-3) in [2^e, 2^(e+1)) for e >= -6, and
     * 2^-9 below 2^-6 (subnormals). Round a / spacing to the nearest integer, ties to even
     * (nearbyintf in the default rounding mode), then rebuild the code. */
    int e;
    frexpf(a, &e);  /* a = f * 2^e, f in [0.5, 1): a in [2^(e-1), 2^e) */
    e -= 1;         /* a in [2^e, 2^(e+1)) */
    if (a == 0.0f || e < -6) e = -6;
    float q = nearbyintf(ldexpf(a, 3 - e)); /* units of 2^(e-3) */
    /* q in [8, 16] for normals (16 = carried into the next binade), [0, 8] for subnormals */
    if (q >= 16.0f) { q = 8.0f; e += 1; }
    if (q < 8.0f) return sign | (uint8_t)q; /* subnormal (e == -6) or zero */
    int biased = e + 7;
    if (biased > 15 || (biased == 15 && q > 14.0f)) return sign | 0x7e;
    return sign | (uint8_t)(biased << 3) | (uint8_t)((int)q - 8);
}

int fr_fp8_block_size(const char *config_json, size_t len, int *br, int *bc) {
    *br = *bc = 128;
    cJSON *root = cJSON_ParseWithLength(config_json, len);
    if (!root) return fr_error(FR_ERR_CONFIG, "config.json: not valid JSON");
    int rc = FR_OK;
    const cJSON *qc = cJSON_GetObjectItemCaseSensitive(root, "quantization_config");
    if (qc && !cJSON_IsNull(qc)) {
        const cJSON *m = cJSON_GetObjectItemCaseSensitive(qc, "quant_method");
        const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(qc, "fmt");
        const cJSON *bs = cJSON_GetObjectItemCaseSensitive(qc, "weight_block_size");
        if (!cJSON_IsObject(qc)) {
            rc = fr_error(FR_ERR_CONFIG, "config.json: quantization_config is not an object");
        } else if (!cJSON_IsString(m) || strcmp(m->valuestring, "fp8") != 0) {
            rc = fr_error(FR_ERR_UNSUPPORTED, "config.json: quantization_config.quant_method '%s' is not supported (only \"fp8\")",
                          cJSON_IsString(m) ? m->valuestring : "?");
        } else if (fmt && (!cJSON_IsString(fmt) || strcmp(fmt->valuestring, "e4m3") != 0)) {
            rc = fr_error(FR_ERR_UNSUPPORTED, "config.json: quantization_config.fmt '%s' is not supported (only \"e4m3\")",
                          cJSON_IsString(fmt) ? fmt->valuestring : "?");
        } else if (bs) {
            const cJSON *a = cJSON_GetArrayItem(bs, 0), *b = cJSON_GetArrayItem(bs, 1);
            if (!cJSON_IsArray(bs) || cJSON_GetArraySize(bs) != 2 || !cJSON_IsNumber(a) || !cJSON_IsNumber(b) ||
                a->valuedouble < 1 || b->valuedouble < 1 || a->valuedouble > 65536 || b->valuedouble > 65536 ||
                a->valuedouble != (int)a->valuedouble || b->valuedouble != (int)b->valuedouble) {
                rc = fr_error(FR_ERR_CONFIG, "config.json: quantization_config.weight_block_size must be two integers in [1, 65536]");
            } else {
                *br = (int)a->valuedouble;
                *bc = (int)b->valuedouble;
            }
        }
    }
    cJSON_Delete(root);
    return rc;
}

int fr_fp8_dequant(const fr_st_tensor *w, const fr_st_tensor *s, int br, int bc, float *dst, size_t n) {
    if (!w || !s || (!dst && n) || br < 1 || bc < 1) return fr_error(FR_ERR_ARG, "fr_fp8_dequant: bad argument");
    if (w->dtype != FR_DT_F8_E4M3 && w->dtype != FR_DT_F8_E5M2)
        return fr_error(FR_ERR_FORMAT, "tensor '%s' has dtype %s, expected F8_E4M3", w->name, fr_dtype_name(w->dtype));
    if (w->ndim != 2)
        return fr_error(FR_ERR_FORMAT, "FP8 tensor '%s' has %d dimensions, expected 2", w->name, w->ndim);
    if (n != w->numel)
        return fr_error(FR_ERR_ARG, "fr_fp8_dequant: tensor '%s' has %zu elements, buffer %zu", w->name, w->numel, n);
    const int64_t rows = w->shape[0], cols = w->shape[1];
    const int64_t sr = (rows + br - 1) / br, sc = (cols + bc - 1) / bc;
    if (s->ndim != 2 || s->shape[0] != sr || s->shape[1] != sc)
        return fr_error(FR_ERR_FORMAT, "tensor '%s' has shape [%lld, %lld] for '%s' [%lld, %lld] with %dx%d blocks, expected [%lld, %lld]",
                        s->name, (long long)s->shape[0], s->ndim > 1 ? (long long)s->shape[1] : 0LL, w->name,
                        (long long)rows, (long long)cols, br, bc, (long long)sr, (long long)sc);
    if (s->dtype != FR_DT_F32 && s->dtype != FR_DT_BF16 && s->dtype != FR_DT_F16)
        return fr_error(FR_ERR_FORMAT, "tensor '%s' has dtype %s, expected F32, BF16 or F16", s->name, fr_dtype_name(s->dtype));
    float *scale = malloc(((size_t)s->numel + 1) * sizeof *scale);
    if (!scale) return fr_error(FR_ERR_NOMEM, "out of memory dequantizing %s", w->name);
    int rc = fr_st_to_f32(s, scale, s->numel);
    if (rc != FR_OK) { free(scale); return rc; }
    /* fr_st_to_f32 decodes the FP8 codes themselves (E4M3 or E5M2) */
    rc = fr_st_to_f32(w, dst, n);
    if (rc == FR_OK) {
        for (int64_t i = 0; i < rows; i++) {
            const float *srow = scale + (i / br) * sc;
            float *d = dst + i * cols;
            for (int64_t j = 0; j < cols; j++) d[j] *= srow[j / bc];
        }
    }
    free(scale);
    return rc;
}
