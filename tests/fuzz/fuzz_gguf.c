/* fuzz_gguf.c — libFuzzer target: a GGUF image (header, metadata, tensor descriptions)
 * through fr_gguf_parse, every accessor and every tensor's dequantization. */
#include "formats/gguf.h"

#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fr_gguf g;
    if (fr_gguf_parse(&g, data, size) != 0) return 0;
    for (int i = 0; i < g.n_kv; i++) {
        const fr_gguf_kv *kv = &g.kv[i];
        int64_t iv;
        double dv;
        const char *s;
        size_t len;
        (void)fr_gguf_kv_int(kv, &iv);
        (void)fr_gguf_kv_float(kv, &dv);
        (void)fr_gguf_kv_str(kv, &s, &len);
        for (uint64_t k = 0; k < kv->arr_n && k < 64; k++) {
            (void)fr_gguf_arr_str(kv, k, &s, &len);
            (void)fr_gguf_arr_int(kv, k, &iv);
        }
        (void)fr_gguf_find_kv(&g, kv->key);
    }
    for (int i = 0; i < g.n_tensors; i++) {
        const fr_gguf_tensor *t = &g.tensors[i];
        (void)fr_gguf_find_tensor(&g, t->name);
        if (t->numel > (1u << 20)) continue;
        float *x = malloc((t->numel + 1) * sizeof *x);
        if (x) fr_gguf_tensor_to_f32(t, x, t->numel);
        free(x);
    }
    fr_gguf_close(&g);
    return 0;
}
