/* fuzz_safetensors.c — libFuzzer target: a safetensors file (header length, JSON header,
 * offsets) through fr_st_open and every conversion. Build and run: tests/fuzz/run.sh. */
#include "formats/safetensors.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static char path[64];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!path[0]) snprintf(path, sizeof path, "/tmp/fuzz_st_%ld.safetensors", (long)getpid());
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    fwrite(data, 1, size, f);
    fclose(f);
    fr_st_file st;
    if (fr_st_open(&st, path) == 0) {
        for (int i = 0; i < st.n_tensors; i++) {
            const fr_st_tensor *t = &st.tensors[i];
            if (t->numel > (1u << 20)) continue;
            float *x = malloc((t->numel + 1) * sizeof *x);
            int32_t *y = malloc((t->numel + 1) * sizeof *y);
            if (x) fr_st_to_f32(t, x, t->numel);
            if (y) fr_st_to_i32(t, y, t->numel);
            free(x);
            free(y);
            (void)fr_st_find(&st, t->name);
        }
        fr_st_close(&st);
    }
    unlink(path);
    return 0;
}
