/* fuzz_index.c — libFuzzer target: model.safetensors.index.json (weight_map, shard names)
 * through fr_st_set_open_dir, in a folder that holds one valid shard "a.safetensors"
 * (tensor "w") so that well-formed indexes reach the shard checks. */
#include "formats/safetensors.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[64], index_path[128];

static void setup(void) {
    snprintf(dir, sizeof dir, "/tmp/fuzz_index_%ld", (long)getpid());
    mkdir(dir, 0755);
    char shard[128];
    snprintf(shard, sizeof shard, "%s/a.safetensors", dir);
    float w[4] = {1, 2, 3, 4};
    fr_st_entry e = {"w", FR_DT_F32, 1, {4}, w};
    fr_st_write(shard, &e, 1, NULL, NULL, 0);
    snprintf(index_path, sizeof index_path, "%s/model.safetensors.index.json", dir);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!dir[0]) setup();
    FILE *f = fopen(index_path, "wb");
    if (!f) return 0;
    fwrite(data, 1, size, f);
    fclose(f);
    fr_st_set s;
    if (fr_st_set_open_dir(&s, dir) == 0) {
        (void)fr_st_set_find(&s, "w");
        fr_st_set_close(&s);
    }
    return 0;
}
