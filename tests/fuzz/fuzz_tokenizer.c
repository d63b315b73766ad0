/* fuzz_tokenizer.c — libFuzzer target: tokenizer.json through fr_tokenizer_from_json; a
 * tokenizer that loads encodes and decodes a fixed text and is exported through the GGUF
 * accessors. */
#include "frugal.h"
#include "text/tokenizer_internal.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    cJSON *root = cJSON_ParseWithLength((const char *)data, size);
    if (!root) return 0;
    fr_tokenizer *tok = NULL;
    if (fr_tokenizer_from_json(&tok, root, NULL, "fuzz") == 0) {
        static const char text[] = "Hello, world! 123 <|EOT|> caf\xc3\xa9 \xe4\xb8\xad\xe6\x96\x87\n\t";
        int *ids = NULL;
        size_t n = 0;
        if (fr_tokenizer_encode(tok, text, sizeof text - 1, 1, &ids, &n) == 0) {
            char *back = NULL;
            size_t len = 0;
            if (fr_tokenizer_decode(tok, ids, n, 0, &back, &len) == 0) free(back);
            free(ids);
        }
        int V = fr_tokenizer_vocab_size(tok);
        for (int i = 0; i < V && i < 4096; i++) {
            (void)fr_tokenizer_id_to_token(tok, i);
            (void)fr_tokenizer_token_kind(tok, i);
        }
        for (int r = 0; r < fr_tokenizer_num_merges(tok) && r < 4096; r++) {
            int a, b;
            (void)fr_tokenizer_merge(tok, r, &a, &b);
        }
        fr_tokenizer_free(tok);
    }
    cJSON_Delete(root);
    return 0;
}
