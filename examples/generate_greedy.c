/*
 * generate_greedy.c — the smallest complete program on libfrugal: load a model and its
 * tokenizer, continue a prompt with greedy decoding, print the text.
 *
 *   usage: generate_greedy MODEL_DIR "prompt" [N_TOKENS]
 *
 * MODEL_DIR is a Hugging Face model folder (config.json, *.safetensors, tokenizer.json),
 * e.g. one written by `frugal train` or `frugal convert`. The output is the prompt followed
 * by up to N_TOKENS (default 32) new tokens' text and a newline: the same as
 *
 *   frugal generate --model MODEL_DIR --prompt "prompt" --max-tokens N_TOKENS --temperature 0
 *
 * Build against an installed libfrugal (see README.md):
 *   cc -O2 $(pkg-config --cflags frugal) generate_greedy.c $(pkg-config --libs frugal)
 */
#include <frugal.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Called by fr_generate for each new token with the text it completes: print it as it comes. */
static int print_text(void *user, int seq, int token, const char *text, size_t len) {
    (void)user;
    (void)seq;
    (void)token;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    return 0; /* nonzero would stop the generation */
}

/* Every libfrugal call that fails returns a negative status and leaves a message for
 * fr_last_error(); the library itself never prints. */
static int fail(const char *what) {
    fprintf(stderr, "generate_greedy: %s: %s\n", what, fr_last_error());
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 3 || argc > 4) {
        fprintf(stderr, "usage: %s MODEL_DIR \"prompt\" [N_TOKENS]\n", argv[0]);
        return 2;
    }
    const char *model_dir = argv[1];
    const char *prompt = argv[2];
    long n_tokens = 32;
    if (argc == 4) {
        char *end;
        n_tokens = strtol(argv[3], &end, 10);
        if (end == argv[3] || *end || n_tokens < 1 || n_tokens > 1000000) {
            fprintf(stderr, "generate_greedy: N_TOKENS must be a number from 1 to 1000000, not '%s'\n", argv[3]);
            return 2;
        }
    }

    fr_engine *engine = NULL;
    fr_tokenizer *tok = NULL;
    fr_seq *seq = NULL;
    int *prompt_ids = NULL, *new_ids = NULL;
    size_t n_prompt = 0;
    int n_new = 0, rc = 1;

    /* 1. The model: weights as stored in the folder; no MTP module (no speculative decoding). */
    fr_engine_options eo;
    fr_engine_options_default(&eo);
    eo.load_mtp = 0;
    if (fr_engine_load(&engine, model_dir, &eo) != FR_OK) { fail("cannot load the model"); goto done; }

    /* 2. Its tokenizer (tokenizer.json in the same folder), and the prompt as token ids.
     *    parse_special = 1: special-token strings in the prompt become their ids. */
    if (fr_tokenizer_load(&tok, model_dir) != FR_OK) { fail("cannot load the tokenizer"); goto done; }
    if (fr_tokenizer_encode(tok, prompt, strlen(prompt), 1, &prompt_ids, &n_prompt) != FR_OK) {
        fail("cannot encode the prompt");
        goto done;
    }
    if (n_prompt == 0 || n_prompt > (size_t)fr_engine_max_seq_len(engine)) {
        fprintf(stderr, "generate_greedy: the prompt has %zu tokens; it needs 1 to %d\n", n_prompt,
                fr_engine_max_seq_len(engine));
        goto done;
    }

    /* 3. A sequence: the KV cache that generation fills. */
    if (fr_seq_create(&seq, engine) != FR_OK) { fail("cannot create a sequence"); goto done; }

    /* 4. Generate. Temperature 0 is greedy decoding (the most likely token at each step).
     *    Generation stops after max_tokens, at the end-of-sequence token, or when the
     *    sequence reaches the model's maximum length. */
    fr_generate_options go;
    fr_generate_options_default(&go);
    go.sample.temperature = 0.0f;
    go.max_tokens = (int)n_tokens;
    go.on_token = print_text;
    fputs(prompt, stdout);
    const int *prompts[1] = {prompt_ids};
    const int prompt_lens[1] = {(int)n_prompt};
    if (fr_generate(engine, tok, &seq, 1, prompts, prompt_lens, &go, &new_ids, &n_new, NULL) != FR_OK) {
        putchar('\n');
        fail("generation failed");
        goto done;
    }
    putchar('\n');
    rc = 0;

done:
    free(prompt_ids);
    free(new_ids);
    fr_seq_free(seq);
    fr_tokenizer_free(tok);
    fr_engine_free(engine);
    return rc;
}
