/* test_tokenizer.c — byte-level BPE tokenizer: ids equal to Hugging Face `tokenizers` on the
 * fixtures (frugal-trained and tokenizers-trained files, several pre-tokenizers), round trips
 * of random bytes, special-token parsing, concurrent encode, save/load, bad inputs, training.
 *
 *   test_tokenizer                         run the tests
 *   test_tokenizer --train CORPUS DIR VOCAB train with default options and save into DIR
 *                                          (used by tools/make_tokenizer_fixtures.py) */
#define _GNU_SOURCE
#include "frugal.h"
#include "testutil.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define TOKDIR FR_FIXTURES_DIR "/tokenizer"

static char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    fclose(f);
    if (b) b[n] = 0;
    if (len) *len = (size_t)n;
    return b;
}

static void spit(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (!f) return;
    fputs(text, f);
    fclose(f);
}

static char g_tmp[64];

static void rm_tree(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    char p[1024];
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        struct stat st;
        if (stat(p, &st) == 0 && S_ISDIR(st.st_mode)) rm_tree(p);
        else unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

static int ids_equal_json(const int *ids, size_t n, const cJSON *arr) {
    if (!cJSON_IsArray(arr) || (size_t)cJSON_GetArraySize(arr) != n) return 0;
    size_t i = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, arr) if ((int)it->valuedouble != ids[i++]) return 0;
    return 1;
}

static void print_ids(const char *what, const int *ids, size_t n, const cJSON *arr) {
    printf("  %s frugal:", what);
    for (size_t i = 0; i < n && i < 40; i++) printf(" %d", ids[i]);
    printf("\n  %s expected:", what);
    int i = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, arr) if (i++ < 40) printf(" %d", (int)it->valuedouble);
    printf("\n");
}

static int roundtrip(const fr_tokenizer *t, const char *text, size_t len, int parse_special) {
    int *ids = NULL;
    size_t n = 0;
    if (fr_tokenizer_encode(t, text, len, parse_special, &ids, &n) != FR_OK) return 0;
    char *back = NULL;
    size_t bl = 0;
    int ok = fr_tokenizer_decode(t, ids, n, 0, &back, &bl) == FR_OK && bl == len && memcmp(back, text, len) == 0;
    free(ids);
    free(back);
    return ok;
}

/* ---------------------------------------------------------------- parity with tokenizers */

static void check_parity(const char *name, const cJSON *texts, const cJSON *exp) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s/%s", TOKDIR, name);
    fr_tokenizer *t = NULL;
    int rc = fr_tokenizer_load(&t, dir);
    CHECK(rc == FR_OK, "load %s: %d %s", name, rc, fr_last_error());
    if (rc != FR_OK) return;
    const cJSON *want = cJSON_GetObjectItem(exp, "ids"), *want_ns = cJSON_GetObjectItem(exp, "ids_no_special");
    int i = 0, prefix = strstr(name, "prefix") != NULL;
    const cJSON *tx;
    cJSON_ArrayForEach(tx, texts) {
        const char *s = tx->valuestring;
        size_t len = strlen(s);
        for (int ps = 0; ps < 2; ps++) {
            int *ids = NULL;
            size_t n = 0;
            rc = fr_tokenizer_encode(t, s, len, ps, &ids, &n);
            const cJSON *w = cJSON_GetArrayItem(ps ? want : want_ns, i);
            int eq = rc == FR_OK && ids_equal_json(ids, n, w);
            CHECK(eq, "%s: text %d (parse_special=%d) ids differ from tokenizers", name, i, ps);
            if (!eq) print_ids(name, ids, n, w);
            /* decode gives the text back (prefix-space tokenizers add spaces, as in HF) */
            if (!prefix) {
                char *back = NULL;
                size_t bl = 0;
                CHECK(fr_tokenizer_decode(t, ids, n, 0, &back, &bl) == FR_OK && bl == len && !memcmp(back, s, len),
                      "%s: text %d does not decode back", name, i);
                free(back);
            }
            free(ids);
        }
        i++;
    }
    fr_tokenizer_free(t);
}

/* ---------------------------------------------------------------- round trips, specials */

static void check_roundtrips(const char *name, const cJSON *texts) {
    if (strstr(name, "prefix")) return; /* add_prefix_space inserts spaces, as in tokenizers */
    char dir[512];
    snprintf(dir, sizeof dir, "%s/%s", TOKDIR, name);
    fr_tokenizer *t = NULL;
    if (fr_tokenizer_load(&t, dir) != FR_OK) {
        CHECK(0, "load %s: %s", name, fr_last_error());
        return;
    }
    /* random bytes, invalid UTF-8 included, some spliced with text and special tokens */
    uint64_t st = 0x1234567u;
    int fails = 0, total = 0;
    char buf[700];
    for (int r = 0; r < 400; r++) {
        size_t len = 0, target = (size_t)(st % 300);
        while (len < target) {
            st = st * 6364136223846793005ull + 1442695040888963407ull;
            unsigned v = (unsigned)(st >> 33);
            int kind = (int)(v % 10);
            if (kind < 5) {
                buf[len++] = (char)(v >> 8); /* any byte */
            } else if (kind < 8) {
                buf[len++] = " \n\t\r0a,\xe4\xb8\x80"[(v >> 8) % 10];
            } else {
                const cJSON *tx = cJSON_GetArrayItem(texts, (int)((v >> 8) % (unsigned)cJSON_GetArraySize(texts)));
                size_t l = strlen(tx->valuestring);
                if (l > 40) l = 40; /* a prefix: may cut a UTF-8 character */
                if (len + l > sizeof buf - 1) break;
                memcpy(buf + len, tx->valuestring, l);
                len += l;
            }
        }
        for (int ps = 0; ps < 2; ps++) {
            total++;
            if (!roundtrip(t, buf, len, ps)) fails++;
        }
    }
    CHECK(fails == 0, "%s: %d of %d random byte strings do not round-trip", name, fails, total);
    /* all 256 single bytes and a string of every byte value */
    fails = 0;
    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        if (!roundtrip(t, &c, 1, 1)) fails++;
    }
    for (int b = 0; b < 256; b++) buf[b] = (char)(255 - b);
    if (!roundtrip(t, buf, 256, 0)) fails++;
    CHECK(fails == 0, "%s: %d single-byte/all-byte strings do not round-trip", name, fails);
    fr_tokenizer_free(t);
}

static void check_specials(void) {
    fr_tokenizer *t = NULL;
    if (fr_tokenizer_load(&t, TOKDIR "/frugal_trained") != FR_OK) {
        CHECK(0, "load frugal_trained: %s", fr_last_error());
        return;
    }
    const char *bos = "<\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>";
    const char *eos = "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>";
    const char *pad = "<\xef\xbd\x9c\xe2\x96\x81pad\xe2\x96\x81\xef\xbd\x9c>";
    const char *user = "<\xef\xbd\x9cUser\xef\xbd\x9c>", *asst = "<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>";
    CHECK(fr_tokenizer_token_to_id(t, bos) == 0 && fr_tokenizer_token_to_id(t, eos) == 1 &&
              fr_tokenizer_token_to_id(t, pad) == 2 && fr_tokenizer_token_to_id(t, user) == 3 &&
              fr_tokenizer_token_to_id(t, asst) == 4,
          "default specials must have ids 0..4");
    CHECK(fr_tokenizer_special_id(t, FR_TOKEN_BOS) == 0 && fr_tokenizer_special_id(t, FR_TOKEN_EOS) == 1 &&
              fr_tokenizer_special_id(t, FR_TOKEN_PAD) == 2,
          "bos/eos/pad ids %d %d %d", fr_tokenizer_special_id(t, FR_TOKEN_BOS), fr_tokenizer_special_id(t, FR_TOKEN_EOS),
          fr_tokenizer_special_id(t, FR_TOKEN_PAD));
    for (int i = 0; i < 5; i++) CHECK(fr_tokenizer_is_special(t, i), "id %d should be special", i);
    CHECK(!fr_tokenizer_is_special(t, 5) && !fr_tokenizer_is_special(t, -1) && !fr_tokenizer_is_special(t, 1 << 30),
          "ids >= 5 / out of range are not special");
    /* byte tokens follow the specials in byte order: byte 'A' (0x41) -> 5 + 0x41 */
    CHECK(fr_tokenizer_token_to_id(t, "A") == 5 + 0x41, "byte token 'A' id %d", fr_tokenizer_token_to_id(t, "A"));
    CHECK(fr_tokenizer_token_to_id(t, "\xc4\xa0") == 5 + 0x20, "byte token for space (U+0120) id %d",
          fr_tokenizer_token_to_id(t, "\xc4\xa0"));
    CHECK(fr_tokenizer_token_to_id(t, "no such token at all") == -1, "unknown token -> -1");
    CHECK(fr_tokenizer_id_to_token(t, -1) == NULL && fr_tokenizer_id_to_token(t, fr_tokenizer_vocab_size(t)) == NULL,
          "id_to_token out of range -> NULL");
    CHECK(strcmp(fr_tokenizer_id_to_token(t, 3), user) == 0, "id_to_token(3) is <|User|>");
    int bad = 0;
    for (int id = 0; id < fr_tokenizer_vocab_size(t); id++) {
        const char *s = fr_tokenizer_id_to_token(t, id);
        if (!s || fr_tokenizer_token_to_id(t, s) != id) bad++;
    }
    CHECK(bad == 0, "%d ids do not map back through token_to_id", bad);

    char text[256];
    snprintf(text, sizeof text, "%shi%sthere%s%s", bos, user, asst, eos);
    size_t len = strlen(text);
    int *ids = NULL;
    size_t n = 0;
    CHECK(fr_tokenizer_encode(t, text, len, 1, &ids, &n) == FR_OK, "encode");
    int nspec = 0;
    for (size_t i = 0; i < n; i++) nspec += fr_tokenizer_is_special(t, ids[i]);
    CHECK(nspec == 4 && ids[0] == 0 && ids[n - 1] == 1, "parse_special=1: 4 specials, bos first, eos last (got %d)", nspec);
    char *back = NULL;
    size_t bl = 0;
    CHECK(fr_tokenizer_decode(t, ids, n, 1, &back, &bl) == FR_OK && bl == 7 && memcmp(back, "hithere", 7) == 0,
          "skip_special drops the specials: '%s'", back ? back : "");
    free(back);
    free(ids);
    CHECK(fr_tokenizer_encode(t, text, len, 0, &ids, &n) == FR_OK, "encode");
    nspec = 0;
    for (size_t i = 0; i < n; i++) nspec += fr_tokenizer_is_special(t, ids[i]);
    CHECK(nspec == 0 && n > 12, "parse_special=0: special strings are plain text (%d specials, %zu ids)", nspec, n);
    CHECK(roundtrip(t, text, len, 0) && roundtrip(t, text, len, 1), "special text round trip");
    free(ids);
    /* bad ids */
    int badids[2] = {5, fr_tokenizer_vocab_size(t)};
    CHECK(fr_tokenizer_decode(t, badids, 2, 0, &back, &bl) == FR_ERR_ARG && strstr(fr_last_error(), "not in the vocabulary"),
          "decode of an out-of-range id: %s", fr_last_error());
    CHECK(strstr(fr_tokenizer_chat_template(t), user) && strstr(fr_tokenizer_chat_template(t), asst),
          "chat template uses the User/Assistant tokens");
    fr_tokenizer_free(t);
}

/* ---------------------------------------------------------------- threads */

static void check_concurrent(const cJSON *texts) {
    fr_tokenizer *t = NULL;
    if (fr_tokenizer_load(&t, TOKDIR "/hf_dsv3") != FR_OK) {
        CHECK(0, "load hf_dsv3: %s", fr_last_error());
        return;
    }
    int nt = cJSON_GetArraySize(texts);
    int **ref = calloc((size_t)nt, sizeof *ref);
    size_t *refn = calloc((size_t)nt, sizeof *refn);
    for (int i = 0; i < nt; i++) {
        const char *s = cJSON_GetArrayItem(texts, i)->valuestring;
        fr_tokenizer_encode(t, s, strlen(s), 1, &ref[i], &refn[i]);
    }
    int mismatches = 0;
#pragma omp parallel num_threads(2) reduction(+ : mismatches)
    {
        for (int rep = 0; rep < 200; rep++) {
            int i = (rep * 7 + omp_get_thread_num() * 3) % nt;
            const char *s = cJSON_GetArrayItem(texts, i)->valuestring;
            int *ids = NULL;
            size_t n = 0;
            if (fr_tokenizer_encode(t, s, strlen(s), 1, &ids, &n) != FR_OK || n != refn[i] ||
                (n && memcmp(ids, ref[i], n * sizeof(int)) != 0))
                mismatches++;
            free(ids);
        }
    }
    CHECK(mismatches == 0, "%d concurrent encodes differ from the single-thread result", mismatches);
    for (int i = 0; i < nt; i++) free(ref[i]);
    free(ref);
    free(refn);
    fr_tokenizer_free(t);
}

/* ---------------------------------------------------------------- save / load */

static void check_save_load(const char *name, const cJSON *texts) {
    char dir[512], out[600];
    snprintf(dir, sizeof dir, "%s/%s", TOKDIR, name);
    snprintf(out, sizeof out, "%s/save_%s", g_tmp, name);
    mkdir(out, 0755);
    fr_tokenizer *a = NULL, *b = NULL;
    int rc = fr_tokenizer_load(&a, dir);
    if (rc == FR_OK) rc = fr_tokenizer_save(a, out);
    CHECK(rc == FR_OK, "%s: save: %s", name, fr_last_error());
    if (rc == FR_OK) rc = fr_tokenizer_load(&b, out);
    CHECK(rc == FR_OK, "%s: reload: %s", name, fr_last_error());
    if (rc == FR_OK) {
        CHECK(fr_tokenizer_vocab_size(a) == fr_tokenizer_vocab_size(b), "%s: vocab size changes on save", name);
        int diff = 0;
        for (int id = 0; id < fr_tokenizer_vocab_size(a); id++) {
            const char *x = fr_tokenizer_id_to_token(a, id), *y = fr_tokenizer_id_to_token(b, id);
            if ((x == NULL) != (y == NULL) || (x && strcmp(x, y) != 0) ||
                fr_tokenizer_is_special(a, id) != fr_tokenizer_is_special(b, id))
                diff++;
        }
        CHECK(diff == 0, "%s: %d tokens differ after save/load", name, diff);
        for (int w = 0; w < 3; w++)
            CHECK(fr_tokenizer_special_id(a, (fr_special_token)w) == fr_tokenizer_special_id(b, (fr_special_token)w),
                  "%s: special %d changes on save", name, w);
        CHECK(strcmp(fr_tokenizer_chat_template(a), fr_tokenizer_chat_template(b)) == 0, "%s: chat template changes", name);
        int bad = 0;
        const cJSON *tx;
        cJSON_ArrayForEach(tx, texts) {
            for (int ps = 0; ps < 2; ps++) {
                int *ia = NULL, *ib = NULL;
                size_t na = 0, nb = 0;
                fr_tokenizer_encode(a, tx->valuestring, strlen(tx->valuestring), ps, &ia, &na);
                fr_tokenizer_encode(b, tx->valuestring, strlen(tx->valuestring), ps, &ib, &nb);
                if (na != nb || (na && memcmp(ia, ib, na * sizeof(int)))) bad++;
                free(ia);
                free(ib);
            }
        }
        CHECK(bad == 0, "%s: %d encodings change after save/load", name, bad);
    }
    fr_tokenizer_free(a);
    fr_tokenizer_free(b);
}

/* ---------------------------------------------------------------- bad inputs */

static const char *MINI_HEAD =
    "{\"version\":\"1.0\",\"truncation\":null,\"padding\":null,"
    "\"added_tokens\":[{\"id\":0,\"content\":\"<s>\",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,"
    "\"normalized\":false,\"special\":true}],";

static int load_json_text(const char *name, const char *pipeline, const char *model, fr_tokenizer **out) {
    char path[600], *text = NULL;
    snprintf(path, sizeof path, "%s/%s.json", g_tmp, name);
    if (asprintf(&text, "%s%s,\"model\":%s}", MINI_HEAD, pipeline, model) < 0) return -100;
    spit(path, text);
    free(text);
    return fr_tokenizer_load(out, path);
}

static void check_bad_inputs(void) {
    fr_tokenizer *t = NULL;
    const char *ok_pipe =
        "\"normalizer\":null,\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"trim_offsets\":true,"
        "\"use_regex\":true},\"post_processor\":null,\"decoder\":{\"type\":\"ByteLevel\"}";
    const char *ok_model = "{\"type\":\"BPE\",\"vocab\":{\"<s>\":0,\"a\":1,\"b\":2,\"ab\":3},\"merges\":[[\"a\",\"b\"]]}";

    int rc = load_json_text("mini", ok_pipe, ok_model, &t);
    CHECK(rc == FR_OK && fr_tokenizer_vocab_size(t) == 4, "minimal tokenizer loads: %s", fr_last_error());
    if (rc == FR_OK) {
        int *ids = NULL;
        size_t n = 0;
        fr_tokenizer_encode(t, "abba<s>", 7, 1, &ids, &n);
        CHECK(n == 4 && ids[0] == 3 && ids[1] == 2 && ids[2] == 1 && ids[3] == 0, "minimal: abba<s> -> 3 2 1 0");
        free(ids);
        /* bytes without a token (no unk_token) are dropped before merging, as tokenizers does */
        fr_tokenizer_encode(t, "axb", 3, 1, &ids, &n);
        CHECK(n == 1 && ids[0] == 3, "minimal: byte without a token is dropped");
        free(ids);
    }
    fr_tokenizer_free(t);
    t = NULL;

    rc = fr_tokenizer_load(&t, "/nonexistent/dir/for/frugal");
    CHECK(rc == FR_ERR_IO && t == NULL && strstr(fr_last_error(), "/nonexistent/dir/for/frugal"),
          "missing path -> FR_ERR_IO naming it (%d: %s)", rc, fr_last_error());
    char path[600];
    snprintf(path, sizeof path, "%s/malformed.json", g_tmp);
    spit(path, "{\"version\": \"1.0\",\n \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0,,}}\n");
    rc = fr_tokenizer_load(&t, path);
    CHECK(rc == FR_ERR_FORMAT && strstr(fr_last_error(), "malformed JSON") && strstr(fr_last_error(), "line 2"),
          "malformed JSON -> FR_ERR_FORMAT with line (%d: %s)", rc, fr_last_error());

    struct {
        const char *name, *pipe, *model, *needle;
    } cases[] = {
        {"wordpiece", NULL, "{\"type\":\"WordPiece\",\"vocab\":{\"a\":0}}", "model.type \"WordPiece\""},
        {"unigram", NULL, "{\"type\":\"Unigram\",\"vocab\":[[\"a\",0.0]]}", "model.type \"Unigram\""},
        {"unknown_merge", NULL, "{\"type\":\"BPE\",\"vocab\":{\"<s>\":0,\"a\":1,\"ab\":3},\"merges\":[[\"a\",\"b\"]]}",
         "model.merges[0] references unknown token 'b'"},
        {"merge_result", NULL, "{\"type\":\"BPE\",\"vocab\":{\"<s>\":0,\"a\":1,\"b\":2},\"merges\":[\"a b\"]}",
         "makes 'ab', which is not in the vocabulary"},
        {"merge_string", NULL, "{\"type\":\"BPE\",\"vocab\":{\"<s>\":0,\"a\":1,\"b\":2,\"ab\":3},\"merges\":[\"a b c\"]}",
         "model.merges[0]"},
        {"dup_id", NULL, "{\"type\":\"BPE\",\"vocab\":{\"<s>\":0,\"a\":1,\"b\":1},\"merges\":[]}", "id 1 is given to both"},
        {"bad_id", NULL, "{\"type\":\"BPE\",\"vocab\":{\"<s>\":0,\"a\":-3},\"merges\":[]}", "model.vocab[\"a\"]"},
        {"dropout", NULL, "{\"type\":\"BPE\",\"dropout\":0.1,\"vocab\":{\"<s>\":0},\"merges\":[]}", "model.dropout"},
        {"suffix", NULL, "{\"type\":\"BPE\",\"end_of_word_suffix\":\"</w>\",\"vocab\":{\"<s>\":0},\"merges\":[]}",
         "model.end_of_word_suffix"},
        {"whitespace",
         "\"normalizer\":null,\"pre_tokenizer\":{\"type\":\"Whitespace\"},\"post_processor\":null,\"decoder\":{\"type\":"
         "\"ByteLevel\"}",
         NULL, "pre_tokenizer.type \"Whitespace\""},
        {"removed",
         "\"normalizer\":null,\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{"
         "\"Regex\":\"\\\\s+\"},\"behavior\":\"Removed\",\"invert\":false},{\"type\":\"ByteLevel\",\"use_regex\":false}]},"
         "\"post_processor\":null,\"decoder\":{\"type\":\"ByteLevel\"}",
         NULL, "pre_tokenizer.pretokenizers[0].behavior \"Removed\""},
        {"bad_regex",
         "\"normalizer\":null,\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{"
         "\"Regex\":\"(ab\"},\"behavior\":\"Isolated\",\"invert\":false},{\"type\":\"ByteLevel\",\"use_regex\":false}]},"
         "\"post_processor\":null,\"decoder\":{\"type\":\"ByteLevel\"}",
         NULL, "cannot compile split regex"},
        {"no_bytelevel",
         "\"normalizer\":null,\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"String\":\" \"},\"behavior\":"
         "\"Isolated\",\"invert\":false},\"post_processor\":null,\"decoder\":{\"type\":\"ByteLevel\"}",
         NULL, "no ByteLevel step"},
        {"nfc",
         "\"normalizer\":{\"type\":\"NFC\"},\"pre_tokenizer\":{\"type\":\"ByteLevel\"},\"post_processor\":null,"
         "\"decoder\":{\"type\":\"ByteLevel\"}",
         NULL, "normalizer (type NFC)"},
        {"decoder",
         "\"normalizer\":null,\"pre_tokenizer\":{\"type\":\"ByteLevel\"},\"post_processor\":null,\"decoder\":{\"type\":"
         "\"WordPiece\"}",
         NULL, "decoder (type WordPiece)"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        t = NULL;
        rc = load_json_text(cases[i].name, cases[i].pipe ? cases[i].pipe : ok_pipe,
                            cases[i].model ? cases[i].model : ok_model, &t);
        CHECK(rc == FR_ERR_FORMAT && t == NULL && strstr(fr_last_error(), cases[i].needle),
              "%s: want FR_ERR_FORMAT with '%s', got %d: %s", cases[i].name, cases[i].needle, rc, fr_last_error());
        fr_tokenizer_free(t);
    }
    /* tokenizer_config.json naming a token the tokenizer lacks */
    char d[600];
    snprintf(d, sizeof d, "%s/badcfg", g_tmp);
    mkdir(d, 0755);
    char p1[700], p2[700];
    snprintf(p1, sizeof p1, "%s/mini.json", g_tmp);
    char *mini = slurp(p1, NULL);
    snprintf(p1, sizeof p1, "%s/tokenizer.json", d);
    spit(p1, mini ? mini : "");
    free(mini);
    snprintf(p2, sizeof p2, "%s/tokenizer_config.json", d);
    spit(p2, "{\"bos_token\": {\"content\": \"<nope>\", \"__type\": \"AddedToken\"}}");
    t = NULL;
    rc = fr_tokenizer_load(&t, d);
    CHECK(rc == FR_ERR_FORMAT && strstr(fr_last_error(), "bos_token '<nope>'"), "config with unknown bos: %d %s", rc,
          fr_last_error());
    spit(p2, "{\"bos_token\": {\"content\": \"<s>\"}, \"eos_token\": \"<s>\", \"chat_template\": [{\"name\": \"tool_use\","
             " \"template\": \"T\"}, {\"name\": \"default\", \"template\": \"D\"}]}");
    rc = fr_tokenizer_load(&t, d);
    CHECK(rc == FR_OK && fr_tokenizer_special_id(t, FR_TOKEN_BOS) == 0 && fr_tokenizer_special_id(t, FR_TOKEN_PAD) == -1 &&
              strcmp(fr_tokenizer_chat_template(t), "D") == 0,
          "config with object bos and a template list: %d %s", rc, fr_last_error());
    fr_tokenizer_free(t);
    /* a tokenizer.json path (not a folder) also picks up the config next to it */
    rc = fr_tokenizer_load(&t, p1);
    CHECK(rc == FR_OK && fr_tokenizer_special_id(t, FR_TOKEN_EOS) == 0, "load by file path: %d %s", rc, fr_last_error());
    fr_tokenizer_free(t);
    int *ids = NULL;
    size_t n = 0;
    CHECK(fr_tokenizer_encode(NULL, "a", 1, 0, &ids, &n) == FR_ERR_ARG, "encode with NULL tokenizer");
}

/* ---------------------------------------------------------------- training */

static int g_progress_calls;
static double g_progress_last;
static int progress_cb(void *user, double frac, const char *phase) {
    g_progress_calls++;
    g_progress_last = frac;
    int cancel_at = *(int *)user;
    return cancel_at > 0 && g_progress_calls >= cancel_at;
}

static int same_tokens(const fr_tokenizer *a, const fr_tokenizer *b) {
    if (fr_tokenizer_vocab_size(a) != fr_tokenizer_vocab_size(b)) return 0;
    for (int id = 0; id < fr_tokenizer_vocab_size(a); id++)
        if (strcmp(fr_tokenizer_id_to_token(a, id), fr_tokenizer_id_to_token(b, id)) != 0) return 0;
    return 1;
}

static void check_training(const cJSON *texts, const cJSON *exp) {
    const char *files[1] = {TOKDIR "/corpus.jsonl"};
    fr_bpe_train_options o;
    memset(&o, 0, sizeof o);
    o.vocab_size = 1000;
    int cancel_at = 0;
    o.progress = progress_cb;
    o.progress_user = &cancel_at;
    fr_tokenizer *t1 = NULL, *t2 = NULL, *ref = NULL;
    o.num_threads = 1;
    int rc = fr_tokenizer_train(&t1, files, 1, &o);
    CHECK(rc == FR_OK, "train (1 thread): %s", fr_last_error());
    CHECK(g_progress_calls >= 3 && g_progress_last == 1.0, "progress called %d times, last %.3f", g_progress_calls,
          g_progress_last);
    o.num_threads = 2;
    rc = fr_tokenizer_train(&t2, files, 1, &o);
    CHECK(rc == FR_OK, "train (2 threads): %s", fr_last_error());
    CHECK(fr_tokenizer_load(&ref, TOKDIR "/frugal_trained") == FR_OK, "load frugal_trained");
    if (t1 && t2 && ref) {
        CHECK(fr_tokenizer_vocab_size(t1) == 1000, "trained vocab size %d", fr_tokenizer_vocab_size(t1));
        CHECK(same_tokens(t1, t2), "training with 1 and 2 threads gives different tokenizers");
        CHECK(same_tokens(t1, ref), "training differs from the committed fixture frugal_trained");
        /* the freshly trained tokenizer encodes like tokenizers does with the fixture */
        const cJSON *want = cJSON_GetObjectItem(exp, "ids");
        int i = 0, bad = 0;
        const cJSON *tx;
        cJSON_ArrayForEach(tx, texts) {
            int *ids = NULL;
            size_t n = 0;
            fr_tokenizer_encode(t2, tx->valuestring, strlen(tx->valuestring), 1, &ids, &n);
            if (!ids_equal_json(ids, n, cJSON_GetArrayItem(want, i++))) bad++;
            free(ids);
        }
        CHECK(bad == 0, "%d texts encode differently with the freshly trained tokenizer", bad);
    }
    fr_tokenizer_free(t1);
    fr_tokenizer_free(t2);
    fr_tokenizer_free(ref);

    /* cancel through the progress callback */
    t1 = NULL;
    g_progress_calls = 0;
    cancel_at = 2;
    rc = fr_tokenizer_train(&t1, files, 1, &o);
    CHECK(rc == FR_ERR_STATE && t1 == NULL && strstr(fr_last_error(), "cancel"), "cancel: %d %s", rc, fr_last_error());
    o.progress = NULL;

    /* plain text input, custom specials, min_frequency */
    char txt[600];
    snprintf(txt, sizeof txt, "%s/plain.txt", g_tmp);
    FILE *f = fopen(txt, "wb");
    for (int i = 0; i < 300; i++) fprintf(f, "low lower lowest newer newest wider [EOT] %d\n", i % 7);
    fclose(f);
    const char *spec[2] = {"[EOT]", "[PAD]"};
    memset(&o, 0, sizeof o);
    o.vocab_size = 2 + 256 + 40;
    o.special_tokens = spec;
    o.n_special = 2;
    o.eos_token = "[EOT]";
    o.min_frequency = 250;
    const char *tf[1] = {txt};
    rc = fr_tokenizer_train(&t1, tf, 1, &o);
    CHECK(rc == FR_OK, "train on plain text: %s", fr_last_error());
    if (rc == FR_OK) {
        CHECK(fr_tokenizer_token_to_id(t1, "[EOT]") == 0 && fr_tokenizer_token_to_id(t1, "[PAD]") == 1,
              "custom specials take ids 0, 1");
        CHECK(fr_tokenizer_special_id(t1, FR_TOKEN_EOS) == 0 && fr_tokenizer_special_id(t1, FR_TOKEN_BOS) == -1,
              "custom eos; no bos among custom specials");
        /* every merge must be seen >= 250 times: "[EOT]" is cut out, so "EOT" never merges */
        CHECK(fr_tokenizer_token_to_id(t1, "EOT") == -1 && fr_tokenizer_token_to_id(t1, "Ġlowest") >= 0,
              "min_frequency and special cut-out (EOT %d, lowest %d)", fr_tokenizer_token_to_id(t1, "EOT"),
              fr_tokenizer_token_to_id(t1, "\xc4\xa0lowest"));
        CHECK(fr_tokenizer_vocab_size(t1) < o.vocab_size, "min_frequency stops early (%d)", fr_tokenizer_vocab_size(t1));
        const char *s = "lowest [EOT] newer";
        int *ids = NULL;
        size_t n = 0;
        fr_tokenizer_encode(t1, s, strlen(s), 1, &ids, &n);
        int n_eot = 0;
        for (size_t i = 0; i < n; i++) n_eot += ids[i] == 0;
        CHECK(n >= 3 && n_eot == 1 && ids[0] != 0 && ids[n - 1] != 0, "[EOT] is one id in the middle");
        free(ids);
    }
    fr_tokenizer_free(t1);
    t1 = NULL;

    /* option errors */
    o.min_frequency = 0;
    o.bos_token = "[BOS]";
    rc = fr_tokenizer_train(&t1, tf, 1, &o);
    CHECK(rc == FR_ERR_ARG && strstr(fr_last_error(), "bos_token '[BOS]'"), "bos not a special: %d %s", rc, fr_last_error());
    o.bos_token = NULL;
    o.vocab_size = 100;
    rc = fr_tokenizer_train(&t1, tf, 1, &o);
    CHECK(rc == FR_ERR_ARG && strstr(fr_last_error(), "vocab_size"), "vocab too small: %d %s", rc, fr_last_error());
    o.vocab_size = 300;
    const char *missing[1] = {"/nonexistent/corpus.jsonl"};
    rc = fr_tokenizer_train(&t1, missing, 1, &o);
    CHECK(rc == FR_ERR_IO && strstr(fr_last_error(), "/nonexistent/corpus.jsonl"), "missing corpus: %d %s", rc,
          fr_last_error());
    char bj[600];
    snprintf(bj, sizeof bj, "%s/bad.jsonl", g_tmp);
    spit(bj, "{\"text\": \"fine\"}\n\n{\"text\": \"also fine\"}\n{\"text\": oops}\n{\"txt\": \"x\"}\n");
    const char *bf[1] = {bj};
    rc = fr_tokenizer_train(&t1, bf, 1, &o);
    CHECK(rc == FR_ERR_FORMAT && strstr(fr_last_error(), "bad.jsonl:4: malformed JSON"), "bad jsonl: %d %s", rc,
          fr_last_error());
    CHECK(t1 == NULL, "no tokenizer on failure");
}

/* ---------------------------------------------------------------- main */

static int train_mode(const char *corpus, const char *dir, int vocab) {
    fr_bpe_train_options o;
    memset(&o, 0, sizeof o);
    o.vocab_size = vocab;
    fr_tokenizer *t = NULL;
    const char *files[1] = {corpus};
    int rc = fr_tokenizer_train(&t, files, 1, &o);
    if (rc == FR_OK) rc = fr_tokenizer_save(t, dir);
    if (rc != FR_OK) fprintf(stderr, "test_tokenizer --train: %s\n", fr_last_error());
    fr_tokenizer_free(t);
    return rc == FR_OK ? 0 : 1;
}

int main(int argc, char **argv) {
    if (argc == 5 && strcmp(argv[1], "--train") == 0) return train_mode(argv[2], argv[3], atoi(argv[4]));
    snprintf(g_tmp, sizeof g_tmp, "/tmp/fr_tok_test_XXXXXX");
    if (!mkdtemp(g_tmp)) {
        perror("mkdtemp");
        return 1;
    }
    char *text = slurp(TOKDIR "/expected.json", NULL);
    cJSON *exp = text ? cJSON_Parse(text) : NULL;
    free(text);
    CHECK(exp != NULL, "cannot read %s", TOKDIR "/expected.json");
    if (!exp) return fr_test_finish("test_tokenizer");
    const cJSON *texts = cJSON_GetObjectItem(exp, "texts"), *toks = cJSON_GetObjectItem(exp, "tokenizers");
    const cJSON *tr = cJSON_GetObjectItem(exp, "transformers");
    CHECK(cJSON_GetArraySize(texts) >= 20 && cJSON_GetArraySize(toks) >= 6, "fixture has texts and tokenizers");

    const cJSON *e;
    cJSON_ArrayForEach(e, toks) check_parity(e->string, texts, e);
    cJSON_ArrayForEach(e, toks) check_roundtrips(e->string, texts);

    /* transformers' AutoTokenizer loaded the folder frugal saved (recorded by the fixture script) */
    CHECK(cJSON_IsTrue(cJSON_GetObjectItem(tr, "loaded")) && cJSON_IsTrue(cJSON_GetObjectItem(tr, "ids_match_tokenizers")),
          "AutoTokenizer did not load frugal_trained");
    fr_tokenizer *t = NULL;
    if (fr_tokenizer_load(&t, TOKDIR "/frugal_trained") == FR_OK) {
        CHECK((int)cJSON_GetObjectItem(tr, "bos_token_id")->valuedouble == fr_tokenizer_special_id(t, FR_TOKEN_BOS) &&
                  (int)cJSON_GetObjectItem(tr, "eos_token_id")->valuedouble == fr_tokenizer_special_id(t, FR_TOKEN_EOS) &&
                  (int)cJSON_GetObjectItem(tr, "pad_token_id")->valuedouble == fr_tokenizer_special_id(t, FR_TOKEN_PAD),
              "bos/eos/pad ids differ from AutoTokenizer's");
        const char *chat = cJSON_GetObjectItem(tr, "chat")->valuestring;
        int *ids = NULL;
        size_t n = 0;
        fr_tokenizer_encode(t, chat, strlen(chat), 1, &ids, &n);
        CHECK(ids_equal_json(ids, n, cJSON_GetObjectItem(tr, "chat_ids")), "rendered chat ids differ from AutoTokenizer's");
        free(ids);
        fr_tokenizer_free(t);
    }

    check_specials();
    check_concurrent(texts);
    cJSON_ArrayForEach(e, toks) check_save_load(e->string, texts);
    check_bad_inputs();
    check_training(texts, cJSON_GetObjectItem(toks, "frugal_trained"));

    cJSON_Delete(exp);
    rm_tree(g_tmp);
    return fr_test_finish("test_tokenizer");
}
