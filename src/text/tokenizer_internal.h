/* tokenizer_internal.h — pieces shared by tokenizer.c (load/save/encode/decode) and
 * bpe_train.c (training): the GPT-2 byte-level alphabet, a byte-string hash map, the
 * PCRE2 pre-tokenizer pipeline, and building a tokenizer from an in-memory tokenizer.json. */
#ifndef FR_TOKENIZER_INTERNAL_H
#define FR_TOKENIZER_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <cjson/cJSON.h>
#include <pcre2.h>
#include <stddef.h>
#include <stdint.h>

#include "core/internal.h"

/* ------------------------------------------------------------------ split patterns */

/* DeepSeek-V3's tokenizer.json: three Split(Isolated) steps, then ByteLevel(use_regex=false). */
#define FR_PAT_DSV3_DIGITS "\\p{N}{1,3}"
/* [一-龥぀-ゟ゠-ヿ]+ written as UTF-8 bytes, as in DeepSeek-V3's file */
#define FR_PAT_DSV3_CJK "[\xe4\xb8\x80-\xe9\xbe\xa5\xe3\x81\x80-\xe3\x82\x9f\xe3\x82\xa0-\xe3\x83\xbf]+"
#define FR_PAT_DSV3_MAIN                                                                        \
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\\r\\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+|" \
    " ?[\\p{P}\\p{S}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
/* GPT-4 (cl100k) style split. */
#define FR_PAT_CL100K                                                                            \
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|" \
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
/* The regex of a ByteLevel pre-tokenizer with use_regex = true (GPT-2). */
#define FR_PAT_GPT2 "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"

/* ------------------------------------------------------------------ byte-level alphabet */

/* Code point that stands for byte b in token strings (GPT-2's bytes_to_unicode). */
uint32_t fr_bytelevel_cp(unsigned b);
/* Byte for a code point of the alphabet, -1 if the code point is not in it. */
int fr_bytelevel_byte(uint32_t cp);
/* Append the byte-level string of raw bytes to dst (needs 2*n+1 bytes); returns its length. */
size_t fr_bytelevel_encode(const unsigned char *src, size_t n, char *dst);
/* Decode a UTF-8 token string through the alphabet. Returns 0 when every character is in it
 * (bytes written to dst, length in *out_len), -1 otherwise (then HF keeps the raw UTF-8). */
int fr_bytelevel_decode(const char *s, size_t n, unsigned char *dst, size_t *out_len);

/* ------------------------------------------------------------------ hashing and maps */

static inline uint64_t fr_hash_bytes(const void *data, size_t n) {
    const unsigned char *s = data;
    uint64_t h = 0x243f6a8885a308d3ull ^ ((uint64_t)n * 0x9e3779b97f4a7c15ull);
    while (n >= 8) {
        uint64_t v = (uint64_t)s[0] | (uint64_t)s[1] << 8 | (uint64_t)s[2] << 16 | (uint64_t)s[3] << 24 |
                     (uint64_t)s[4] << 32 | (uint64_t)s[5] << 40 | (uint64_t)s[6] << 48 | (uint64_t)s[7] << 56;
        h = (h ^ v) * 0xff51afd7ed558ccdull;
        h ^= h >> 31;
        s += 8;
        n -= 8;
    }
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) v |= (uint64_t)s[i] << (8 * i);
    h = (h ^ v) * 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 29;
    h *= 0x94d049bb133111ebull;
    h ^= h >> 32;
    return h;
}

/* Open-addressing map from byte strings to int64 values; keys are copied into an arena. */
typedef struct {
    uint64_t hash;
    const unsigned char *key; /* NULL: empty slot */
    uint32_t len;
    int64_t val;
} fr_strmap_slot;

typedef struct {
    fr_strmap_slot *slots;
    size_t cap, count;
    char **blocks;
    size_t n_blocks, cap_blocks;
    char *cur;
    size_t left;
} fr_strmap;

int fr_strmap_init(fr_strmap *m, size_t expected);
void fr_strmap_free(fr_strmap *m);
/* Slot of key, or NULL if absent. */
fr_strmap_slot *fr_strmap_get(const fr_strmap *m, const void *key, size_t len, uint64_t hash);
/* Slot of key, inserted with val = init if absent (*inserted set); NULL when out of memory. */
fr_strmap_slot *fr_strmap_put(fr_strmap *m, const void *key, size_t len, uint64_t hash, int64_t init,
                              int *inserted);

/* ------------------------------------------------------------------ pre-tokenizer */

#define FR_PRETOK_MAX_STEPS 8

/* A chain of Split(Isolated) regex steps; each piece of step k is split again by step k+1.
 * ByteLevel(add_prefix_space) prepends ' ' to every piece reaching step prefix_step that does
 * not start with one (HF does this per piece). */
typedef struct {
    int n_steps;
    pcre2_code *re[FR_PRETOK_MAX_STEPS];
    int prefix_space;
    int prefix_step;
} fr_pretok;

typedef struct {
    pcre2_match_data *md[FR_PRETOK_MAX_STEPS];
    int error; /* first PCRE2 error code met (0 = none) */
} fr_pretok_scratch;

/* Called for every piece; a nonzero return stops the run and is returned by fr_pretok_run. */
typedef int (*fr_piece_fn)(void *user, const unsigned char *piece, size_t n);

/* Compile one more step (literal: match the pattern as a plain string). Returns FR_OK or
 * FR_ERR_FORMAT naming `what` and the PCRE2 message. */
int fr_pretok_add(fr_pretok *pt, const char *pattern, size_t len, int literal, const char *what);
/* The pipeline DeepSeek-V3 uses (digits, CJK runs, main regex). */
int fr_pretok_init_dsv3(fr_pretok *pt);
void fr_pretok_free(fr_pretok *pt);
int fr_pretok_scratch_init(fr_pretok_scratch *sc, const fr_pretok *pt);
void fr_pretok_scratch_free(fr_pretok_scratch *sc);
/* Split text into pieces, in order. Returns 0, fn's nonzero value, or FR_ERR_FORMAT when
 * PCRE2 fails (message set). */
int fr_pretok_run(const fr_pretok *pt, fr_pretok_scratch *sc, const unsigned char *text, size_t n,
                  fr_piece_fn fn, void *user);

/* ------------------------------------------------------------------ construction */

/* Build a tokenizer from a parsed tokenizer.json (root) and optional tokenizer_config.json
 * (config, may be NULL). Neither is consumed. origin names the source in messages. */
int fr_tokenizer_from_json(fr_tokenizer **out, const cJSON *root, const cJSON *config, const char *origin);

/* The DeepSeek-V3-like chat template written for trained tokenizers. */
extern const char fr_default_chat_template[];

/* ------------------------------------------------------------------ read-only accessors */

/* Merges by rank: ids of the two tokens merged by rank `rank`. */
int fr_tokenizer_num_merges(const fr_tokenizer *tok);
int fr_tokenizer_merge(const fr_tokenizer *tok, int rank, int *a, int *b);
/* What id is: absent (a hole), a model-vocabulary token, an added non-special token or a
 * special token. */
enum { FR_TOKEN_KIND_NONE = 0, FR_TOKEN_KIND_NORMAL = 1, FR_TOKEN_KIND_ADDED = 2, FR_TOKEN_KIND_SPECIAL = 3 };
int fr_tokenizer_token_kind(const fr_tokenizer *tok, int id);
/* tokenizer.json without vocab, merges and added_tokens (pre_tokenizer, decoder, ...). */
const cJSON *fr_tokenizer_skeleton(const fr_tokenizer *tok);
/* tokenizer_config.json as loaded or built, or NULL. */
const cJSON *fr_tokenizer_config_json(const fr_tokenizer *tok);

/* Tokens with a loss-mask byte each (1 = a training target), growing: fine-tuning data
 * (chat.c fr_chat_encode_masked, sft_prepare.c). fr_tokmask_append adds n ids with their mask
 * bytes, or with `fill` for every one when mask is NULL. */
typedef struct {
    int *ids;
    unsigned char *mask;
    size_t n, cap;
} fr_tokmask;
int fr_tokmask_append(fr_tokmask *b, const int *ids, const unsigned char *mask, unsigned char fill, size_t n);
void fr_tokmask_free(fr_tokmask *b);

#endif
