/* fuzz_config.c — libFuzzer target: config.json through fr_config_parse, fr_config_validate
 * and the FP8 quantization_config reader. */
#include "formats/fp8.h"
#include "frugal.h"

#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fr_config cfg;
    if (fr_config_parse(&cfg, (const char *)data, size) == 0) {
        (void)fr_config_validate(&cfg);
        for (int l = 0; l < cfg.num_hidden_layers && l < 64; l++) (void)fr_config_layer_is_moe(&cfg, l);
    }
    int br, bc;
    (void)fr_fp8_block_size((const char *)data, size, &br, &bc);
    return 0;
}
