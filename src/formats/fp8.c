/* fp8.c — block-scale dequantization of DeepSeek FP8 weights (fp8.h; the E4M3 codec is numfmt.c). */
#include "formats/fp8.h"
#include "core/internal.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

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
