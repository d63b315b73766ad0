/* test_data.c — fr_data_prepare and fr_dataset_*:
 *  - text file + JSONL + folder inputs → shards whose tokens are exactly the encoded documents,
 *    each followed by the end-of-text id, split by the documented hash rule; decoding gives
 *    the documents back;
 *  - byte-identical output for 1 and 2 threads; reads across shard boundaries;
 *  - every bad input (missing/empty files, bad JSONL, bad tokenizer, existing output, cancel)
 *    fails with a message naming the file and leaves no output or temporary folder;
 *  - bad shards (magic, version, width, truncated, trailing bytes, ids >= vocab) are refused;
 *  - a hand-written 4-byte-token dataset is read correctly. */
#define _GNU_SOURCE
#include "frugal.h"
#include "testutil.h"

#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char g_tmp[256];

static void write_file(const char *path, const void *data, size_t len) {
    FILE *f = fopen(path, "wb");
    if (!f) {
        CHECK(0, "cannot write %s: %s", path, strerror(errno));
        return;
    }
    if (len) fwrite(data, 1, len, f);
    fclose(f);
}
static void write_text(const char *path, const char *text) { write_file(path, text, strlen(text)); }

static int files_equal(const char *a, const char *b) {
    size_t la = 0, lb = 0;
    char *x = fr_test_read_file(a, &la), *y = fr_test_read_file(b, &lb);
    int eq = x && y && la == lb && memcmp(x, y, la) == 0;
    free(x);
    free(y);
    return eq;
}

/* The split rule of docs/data.md, restated independently. */
static int is_val(const char *s, size_t n, double frac) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 0x100000001b3ull;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return (double)(h >> 11) / 9007199254740992.0 < frac;
}

static const char *TRAIN_TEXT =
    "In the beginning God created the heaven and the earth. And the earth was without form, and void; "
    "and darkness was upon the face of the deep. And the Spirit of God moved upon the face of the waters. "
    "And God said, Let there be light: and there was light. And God saw the light, that it was good: and God "
    "divided the light from the darkness. And God called the light Day, and the darkness he called Night. "
    "And the evening and the morning were the first day. 1234567890 caf\xc3\xa9 na\xc3\xafve \xe2\x80\x94 done.\n";

static fr_tokenizer *g_tok;
static char g_tok_dir[300];

static int make_tokenizer(void) {
    char train_path[300];
    snprintf(train_path, sizeof train_path, "%s/tok-train.txt", g_tmp);
    FILE *f = fopen(train_path, "w");
    for (int i = 0; i < 20; i++) fputs(TRAIN_TEXT, f);
    fclose(f);
    static const char *specials[] = {"<|bos|>", "<|eos|>", "<|pad|>"};
    fr_bpe_train_options o;
    memset(&o, 0, sizeof o);
    o.vocab_size = 400;
    o.special_tokens = specials;
    o.n_special = 3;
    o.bos_token = "<|bos|>";
    o.eos_token = "<|eos|>";
    o.pad_token = "<|pad|>";
    o.num_threads = 2;
    const char *files[] = {train_path};
    int st = fr_tokenizer_train(&g_tok, files, 1, &o);
    CHECK(st == FR_OK, "fr_tokenizer_train: %s", fr_last_error());
    if (st != FR_OK) return 0;
    snprintf(g_tok_dir, sizeof g_tok_dir, "%s/tok", g_tmp);
    mkdir(g_tok_dir, 0755);
    st = fr_tokenizer_save(g_tok, g_tok_dir);
    CHECK(st == FR_OK, "fr_tokenizer_save: %s", fr_last_error());
    CHECK(fr_tokenizer_special_id(g_tok, FR_TOKEN_EOS) >= 0, "trained tokenizer has no EOS");
    return st == FR_OK;
}

/* ------------------------------------------------------------------ documents */

#define MAX_DOCS 64
static const char *g_docs[MAX_DOCS];
static int g_n_docs;

static char g_in_text[300], g_in_jsonl[300], g_in_dir[300];

/* Inputs: a text file (1 doc), a JSONL file (3 docs + a blank line + an empty text that is
 * skipped), a folder with b.txt, a/x.txt, a/y.jsonl (2 docs) and a hidden file (skipped).
 * g_docs lists the documents in the order prepare must read them. */
static void make_inputs(void) {
    char p[400];
    snprintf(g_in_text, sizeof g_in_text, "%s/single.txt", g_tmp);
    snprintf(g_in_jsonl, sizeof g_in_jsonl, "%s/docs.jsonl", g_tmp);
    snprintf(g_in_dir, sizeof g_in_dir, "%s/corpus", g_tmp);
    static const char *d0 = "The first document.\nIt has two lines and a tab\there, caf\xc3\xa9.\n";
    write_text(g_in_text, d0);
    write_text(g_in_jsonl,
               "{\"text\": \"And God said, Let there be light: and there was light.\"}\n"
               "\n"
               "{\"id\": 7, \"text\": \"Line two has \\\"quotes\\\", a newline\\nand unicode \\u00e9\\u2014.\"}\n"
               "{\"text\": \"\"}\n"
               "{\"text\": \"Third JSONL document, the evening and the morning.\"}");
    mkdir(g_in_dir, 0755);
    snprintf(p, sizeof p, "%s/a", g_in_dir);
    mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/b.txt", g_in_dir);
    write_text(p, "File b in the folder: darkness was upon the face of the deep.");
    snprintf(p, sizeof p, "%s/a/x.txt", g_in_dir);
    write_text(p, "File a/x: And the evening and the morning were the first day.\n");
    snprintf(p, sizeof p, "%s/a/y.jsonl", g_in_dir);
    write_text(p, "{\"text\": \"y one: God divided the light from the darkness.\"}\n"
                  "{\"text\": \"y two: 1234567890 na\xc3\xafve.\"}\n");
    snprintf(p, sizeof p, "%s/.hidden.txt", g_in_dir);
    write_text(p, "this hidden file must be skipped");
    g_n_docs = 0;
    g_docs[g_n_docs++] = d0;
    g_docs[g_n_docs++] = "And God said, Let there be light: and there was light.";
    g_docs[g_n_docs++] = "Line two has \"quotes\", a newline\nand unicode \xc3\xa9\xe2\x80\x94.";
    g_docs[g_n_docs++] = "Third JSONL document, the evening and the morning.";
    /* folder: "a" < "b.txt"; inside a: x.txt < y.jsonl */
    g_docs[g_n_docs++] = "File a/x: And the evening and the morning were the first day.\n";
    g_docs[g_n_docs++] = "y one: God divided the light from the darkness.";
    g_docs[g_n_docs++] = "y two: 1234567890 na\xc3\xafve.";
    g_docs[g_n_docs++] = "File b in the folder: darkness was upon the face of the deep.";
}

static fr_data_prepare_options base_opts(const char *out) {
    static const char *inputs[3];
    inputs[0] = g_in_text;
    inputs[1] = g_in_jsonl;
    inputs[2] = g_in_dir;
    fr_data_prepare_options o;
    memset(&o, 0, sizeof o);
    o.tokenizer_dir = g_tok_dir;
    o.inputs = inputs;
    o.n_inputs = 3;
    o.output_dir = out;
    o.val_fraction = 0.3;
    o.shard_tokens = 37;
    o.num_threads = 2;
    return o;
}

/* Expected token stream of one split: encoded documents of that split, each + eot. */
static int *expected_split(int want_val, double frac, size_t *n_out, uint64_t *docs_out) {
    int eot = fr_tokenizer_special_id(g_tok, FR_TOKEN_EOS);
    size_t cap = 4096, n = 0;
    int *all = malloc(cap * sizeof *all);
    uint64_t docs = 0;
    for (int d = 0; d < g_n_docs; d++) {
        if (is_val(g_docs[d], strlen(g_docs[d]), frac) != want_val) continue;
        int *ids = NULL;
        size_t k = 0;
        int st = fr_tokenizer_encode(g_tok, g_docs[d], strlen(g_docs[d]), 0, &ids, &k);
        CHECK(st == FR_OK, "encode doc %d: %s", d, fr_last_error());
        while (n + k + 1 > cap) {
            cap *= 2;
            all = realloc(all, cap * sizeof *all);
        }
        memcpy(all + n, ids, k * sizeof *ids);
        n += k;
        all[n++] = eot;
        free(ids);
        docs++;
    }
    *n_out = n;
    *docs_out = docs;
    return all;
}

static int *read_split(const char *dir, const char *split, size_t *n) {
    fr_dataset *ds = NULL;
    *n = 0;
    int st = fr_dataset_open(&ds, dir, split);
    CHECK(st == FR_OK, "fr_dataset_open(%s, %s): %s", dir, split, fr_last_error());
    if (st != FR_OK) return NULL;
    size_t total = (size_t)fr_dataset_num_tokens(ds);
    int *buf = malloc((total + 1) * sizeof *buf);
    st = fr_dataset_read(ds, 0, buf, total);
    CHECK(st == FR_OK, "fr_dataset_read all of %s: %s", split, fr_last_error());
    fr_dataset_close(ds);
    *n = total;
    return buf;
}

static void test_prepare_roundtrip(void) {
    char out[300], path[400];
    snprintf(out, sizeof out, "%s/ds", g_tmp);
    fr_data_prepare_options o = base_opts(out);
    fr_data_stats st;
    int rc = fr_data_prepare(&o, &st);
    CHECK(rc == FR_OK, "fr_data_prepare: %s", fr_last_error());
    if (rc != FR_OK) return;
    CHECK(fr_test_no_tmp_leftovers(g_tmp), "temporary folder left after success");

    int val_docs = 0;
    for (int d = 0; d < g_n_docs; d++) val_docs += is_val(g_docs[d], strlen(g_docs[d]), 0.3);
    printf("split of %d documents at val_fraction 0.3: %d val\n", g_n_docs, val_docs);
    CHECK(val_docs > 0 && val_docs < g_n_docs, "test corpus should put documents in both splits (val %d)", val_docs);

    size_t bytes = 0;
    char *p;
    p = fr_test_read_file(g_in_text, &bytes);
    free(p);
    size_t total_in = bytes;
    p = fr_test_read_file(g_in_jsonl, &bytes);
    free(p);
    total_in += bytes;
    const char *dir_files[] = {"a/x.txt", "a/y.jsonl", "b.txt"};
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/%s", g_in_dir, dir_files[i]);
        p = fr_test_read_file(path, &bytes);
        free(p);
        total_in += bytes;
    }
    CHECK(st.bytes_in == total_in, "bytes_in %llu, want %zu", (unsigned long long)st.bytes_in, total_in);

    int eot = fr_tokenizer_special_id(g_tok, FR_TOKEN_EOS);
    const char *splits[2] = {"train", "val"};
    for (int s = 0; s < 2; s++) {
        size_t n_want = 0, n_got = 0;
        uint64_t docs = 0;
        int *want = expected_split(s, 0.3, &n_want, &docs);
        int *got = read_split(out, splits[s], &n_got);
        uint64_t st_tokens = s ? st.val_tokens : st.train_tokens, st_docs = s ? st.val_docs : st.train_docs;
        CHECK(st_tokens == n_want && st_docs == docs, "%s: stats %llu tokens %llu docs, want %zu / %llu", splits[s],
              (unsigned long long)st_tokens, (unsigned long long)st_docs, n_want, (unsigned long long)docs);
        CHECK(got && n_got == n_want && memcmp(got, want, n_want * sizeof *want) == 0,
              "%s: shard tokens differ from the encoded documents (%zu vs %zu tokens)", splits[s], n_got, n_want);
        /* Decode each EOT-terminated segment: the documents of this split, in order. */
        if (got && n_got == n_want) {
            size_t start = 0;
            int d = 0;
            for (size_t i = 0; i < n_got; i++) {
                if (got[i] != eot) continue;
                while (d < g_n_docs && is_val(g_docs[d], strlen(g_docs[d]), 0.3) != s) d++;
                char *text = NULL;
                size_t len = 0;
                int rc2 = fr_tokenizer_decode(g_tok, got + start, i - start, 0, &text, &len);
                CHECK(rc2 == FR_OK && d < g_n_docs && len == strlen(g_docs[d]) && memcmp(text, g_docs[d], len) == 0,
                      "%s: decoded document %d differs: '%s'", splits[s], d, text ? text : "(null)");
                free(text);
                d++;
                start = i + 1;
            }
            CHECK(start == n_got, "%s: does not end with the end-of-text id", splits[s]);
        }
        /* shard files: <split>_NNNNN.bin, 37 tokens each except the last, 64 + 2*count bytes */
        size_t expect_shards = (n_want + 36) / 37;
        for (size_t i = 0; i < expect_shards + 1; i++) {
            snprintf(path, sizeof path, "%s/%s_%05zu.bin", out, splits[s], i);
            struct stat sb;
            int have = stat(path, &sb) == 0;
            if (i == expect_shards) {
                CHECK(!have, "unexpected shard %s", path);
                continue;
            }
            size_t cnt = i + 1 < expect_shards ? 37 : n_want - 37 * (expect_shards - 1);
            CHECK(have && (size_t)sb.st_size == 64 + 2 * cnt, "%s: size %lld, want %zu", path,
                  have ? (long long)sb.st_size : -1LL, 64 + 2 * cnt);
        }
        free(want);
        free(got);
    }
    snprintf(path, sizeof path, "%s/train_00000.bin", out);
    size_t hl = 0;
    unsigned char *h = (unsigned char *)fr_test_read_file(path, &hl);
    CHECK(h && hl >= 64 && memcmp(h, "FRUGALTK", 8) == 0 && h[8] == 1 && h[12] == 2 && h[16] == 37 && h[17] == 0,
          "train_00000.bin header: magic/version/width/count wrong");
    if (h && hl >= 64) {
        int vocab = fr_tokenizer_vocab_size(g_tok);
        CHECK((h[24] | h[25] << 8) == vocab && (h[28] | h[29] << 8) == eot, "header vocab/eot wrong");
        int zero = 1;
        for (int i = 32; i < 64; i++) zero &= h[i] == 0;
        CHECK(zero, "reserved header bytes not zero");
    }
    free(h);

    /* meta.json and the tokenizer copy */
    snprintf(path, sizeof path, "%s/meta.json", out);
    char *meta = fr_test_read_file(path, NULL);
    CHECK(meta && strstr(meta, "\"format_version\": 1") && strstr(meta, "\"token_width\": 2") &&
              strstr(meta, "\"split_rule\"") && strstr(meta, "\"val_fraction\": 0.29999999999999999") &&
              strstr(meta, "\"train_00000.bin\"") && strstr(meta, "docs.jsonl"),
          "meta.json lacks fields:\n%s", meta ? meta : "(missing)");
    free(meta);
    snprintf(path, sizeof path, "%s/tokenizer.json", out);
    char src[400];
    snprintf(src, sizeof src, "%s/tokenizer.json", g_tok_dir);
    CHECK(files_equal(path, src), "tokenizer.json not copied");
    fr_tokenizer *t2 = NULL;
    CHECK(fr_tokenizer_load(&t2, out) == FR_OK, "copied tokenizer does not load: %s", fr_last_error());
    if (t2) fr_tokenizer_free(t2);

    /* accessors */
    fr_dataset *ds = NULL;
    if (fr_dataset_open(&ds, out, "train") == FR_OK) {
        CHECK(fr_dataset_vocab_size(ds) == fr_tokenizer_vocab_size(g_tok), "vocab accessor");
        CHECK(fr_dataset_eot_id(ds) == eot, "eot accessor");
        CHECK(fr_dataset_token_width(ds) == 2, "width accessor");
        uint64_t sum = 0, n = 0;
        const char *sp = NULL;
        for (int i = 0; i < fr_dataset_num_shards(ds); i++) {
            CHECK(fr_dataset_shard_info(ds, i, &sp, &n) == FR_OK && strstr(sp, "train_"), "shard_info %d", i);
            sum += n;
        }
        CHECK(sum == fr_dataset_num_tokens(ds), "shard counts sum %llu != %llu", (unsigned long long)sum,
              (unsigned long long)fr_dataset_num_tokens(ds));
        CHECK(fr_dataset_shard_info(ds, fr_dataset_num_shards(ds), &sp, &n) == FR_ERR_ARG, "shard_info out of range");
        fr_dataset_close(ds);
    }
}

/* Reads at every offset and length across shard boundaries equal slices of the full read. */
static void test_reads(void) {
    char out[300];
    snprintf(out, sizeof out, "%s/ds", g_tmp);
    size_t n = 0;
    int *all = read_split(out, "train", &n);
    if (!all) return;
    fr_dataset *ds = NULL;
    if (fr_dataset_open(&ds, out, "train") != FR_OK) {
        free(all);
        return;
    }
    CHECK(fr_dataset_num_shards(ds) >= 3, "want >= 3 train shards for boundary tests, got %d", fr_dataset_num_shards(ds));
    int *buf = malloc((n + 1) * sizeof *buf);
    int bad = 0, checked = 0;
    for (size_t pos = 0; pos <= n; pos++) {
        for (size_t len = 0; pos + len <= n; len += 1 + len / 3) {
            memset(buf, 0xff, (n + 1) * sizeof *buf);
            int st = fr_dataset_read(ds, pos, buf, len);
            if (st != FR_OK || (len && memcmp(buf, all + pos, len * sizeof *buf) != 0) || buf[len] != -1) bad++;
            checked++;
        }
    }
    CHECK(bad == 0, "%d of %d sliced reads differ", bad, checked);
    CHECK(fr_dataset_read(ds, 0, buf, n + 1) == FR_ERR_ARG, "read past the end must fail");
    CHECK(fr_dataset_read(ds, n, buf, 1) == FR_ERR_ARG, "read at the end must fail");
    CHECK(fr_dataset_read(ds, UINT64_MAX, buf, 2) == FR_ERR_ARG, "read at a huge position must fail");
    CHECK(fr_dataset_read(ds, n, buf, 0) == FR_OK, "empty read at the end is fine");
    CHECK(fr_dataset_read(ds, 0, NULL, 3) == FR_ERR_ARG, "NULL dst must fail");
    free(buf);
    free(all);
    fr_dataset_close(ds);
    CHECK(fr_dataset_open(&ds, out, "test") == FR_ERR_ARG && ds == NULL, "unknown split must fail");
}

static void compare_dirs(const char *a, const char *b) {
    DIR *d = opendir(a);
    if (!d) {
        CHECK(0, "cannot list %s", a);
        return;
    }
    struct dirent *e;
    int n = 0;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        char pa[600], pb[600];
        snprintf(pa, sizeof pa, "%s/%s", a, e->d_name);
        snprintf(pb, sizeof pb, "%s/%s", b, e->d_name);
        CHECK(files_equal(pa, pb), "%s differs between thread counts", e->d_name);
        n++;
    }
    closedir(d);
    CHECK(n >= 4, "only %d files compared", n);
}

static void test_threads_identical(void) {
    char o1[300], o2[300];
    snprintf(o1, sizeof o1, "%s/t1", g_tmp);
    snprintf(o2, sizeof o2, "%s/t2", g_tmp);
    fr_data_prepare_options o = base_opts(o1);
    o.num_threads = 1;
    CHECK(fr_data_prepare(&o, NULL) == FR_OK, "prepare 1 thread: %s", fr_last_error());
    o = base_opts(o2);
    o.num_threads = 2;
    CHECK(fr_data_prepare(&o, NULL) == FR_OK, "prepare 2 threads: %s", fr_last_error());
    compare_dirs(o1, o2);
    compare_dirs(o2, o1);
    fr_test_rm_rf(o1);
    fr_test_rm_rf(o2);
}

/* A failing prepare: status `want` (0: any failure), message containing `must`, no output, no temporary. */
static void expect_fail(const fr_data_prepare_options *o, int want, const char *must, const char *what) {
    int rc = fr_data_prepare(o, NULL);
    const char *msg = fr_last_error();
    CHECK(want ? rc == want : rc != FR_OK, "%s: status %d, want %d (%s)", what, rc, want, msg);
    CHECK(must == NULL || strstr(msg, must) != NULL, "%s: message lacks '%s': %s", what, must, msg);
    CHECK(!fr_test_file_exists(o->output_dir), "%s: output %s exists after failure", what, o->output_dir);
    CHECK(fr_test_no_tmp_leftovers(g_tmp), "%s: temporary folder left behind", what);
}

static int cancel_cb(void *user, double frac, const char *phase) {
    (void)frac;
    (void)phase;
    int *calls = user;
    return ++*calls >= 2; /* cancel after the first batch */
}

static void test_bad_inputs(void) {
    char out[300], p[600], q[400];
    snprintf(out, sizeof out, "%s/bad-out", g_tmp);
    const char *in[2];
    fr_data_prepare_options o = base_opts(out);
    o.inputs = in;
    o.n_inputs = 1;

    snprintf(p, sizeof p, "%s/no-such-file.txt", g_tmp);
    in[0] = p;
    expect_fail(&o, FR_ERR_IO, "no-such-file.txt", "missing input");

    snprintf(p, sizeof p, "%s/empty.txt", g_tmp);
    write_text(p, "");
    in[0] = p;
    expect_fail(&o, FR_ERR_FORMAT, "empty.txt", "empty text file");

    snprintf(p, sizeof p, "%s/emptydir", g_tmp);
    mkdir(p, 0755);
    in[0] = p;
    expect_fail(&o, FR_ERR_FORMAT, "emptydir", "empty folder");

    snprintf(p, sizeof p, "%s/blank.jsonl", g_tmp);
    write_text(p, "\n  \n\n");
    in[0] = p;
    expect_fail(&o, FR_ERR_FORMAT, "blank.jsonl", "JSONL of blank lines");

    snprintf(p, sizeof p, "%s/emptytexts.jsonl", g_tmp);
    write_text(p, "{\"text\": \"\"}\n{\"text\": \"\"}\n");
    in[0] = p;
    expect_fail(&o, FR_ERR_FORMAT, "no documents", "JSONL of empty texts");

    snprintf(p, sizeof p, "%s/notext.jsonl", g_tmp);
    write_text(p, "{\"text\": \"ok\"}\n{\"body\": \"no text here\"}\n");
    in[0] = p;
    expect_fail(&o, FR_ERR_FORMAT, "notext.jsonl: line 2", "JSONL line without text");

    write_text(p, "{\"text\": \"ok\"}\n\n{\"text\": 42}\n");
    expect_fail(&o, FR_ERR_FORMAT, "notext.jsonl: line 3", "JSONL text not a string");

    write_text(p, "[\"text\"]\n");
    expect_fail(&o, FR_ERR_FORMAT, "notext.jsonl: line 1", "JSONL line not an object");

    write_text(p, "{\"text\": \"ok\"}\n{\"text\": \"unterminated}\n");
    expect_fail(&o, FR_ERR_FORMAT, "notext.jsonl: line 2", "JSONL invalid JSON");

    /* a bad file later in the inputs: the error comes after output started; still no output */
    in[0] = g_in_text;
    in[1] = p;
    o.n_inputs = 2;
    expect_fail(&o, FR_ERR_FORMAT, "line 2", "bad second input");
    o.n_inputs = 1;

    /* tokenizer problems */
    in[0] = g_in_text;
    snprintf(q, sizeof q, "%s/badtok", g_tmp);
    mkdir(q, 0755);
    snprintf(p, sizeof p, "%s/tokenizer.json", q);
    write_text(p, "{\"model\": {\"type\": \"BPE\", \"vocab\": ");
    o.tokenizer_dir = q;
    expect_fail(&o, 0, "badtok", "tokenizer.json that does not parse");
    snprintf(q, sizeof q, "%s/no-such-tokenizer", g_tmp);
    o.tokenizer_dir = q;
    int rc = fr_data_prepare(&o, NULL);
    CHECK(rc != FR_OK && strstr(fr_last_error(), "no-such-tokenizer"), "missing tokenizer: %d %s", rc, fr_last_error());
    CHECK(!fr_test_file_exists(out) && fr_test_no_tmp_leftovers(g_tmp), "missing tokenizer left output");
    o.tokenizer_dir = g_tok_dir;

    /* bad arguments */
    o.val_fraction = 1.5;
    expect_fail(&o, FR_ERR_ARG, "val_fraction", "val_fraction > 1");
    o.val_fraction = 0.3;
    o.n_inputs = 0;
    expect_fail(&o, FR_ERR_ARG, NULL, "no inputs");
    o.n_inputs = 1;
    CHECK(fr_data_prepare(NULL, NULL) == FR_ERR_ARG, "NULL options");

    /* output inside an input folder */
    char inner[400];
    snprintf(inner, sizeof inner, "%s/sub/out", g_in_dir);
    in[0] = g_in_dir;
    o.output_dir = inner;
    rc = fr_data_prepare(&o, NULL);
    CHECK(rc == FR_ERR_ARG && strstr(fr_last_error(), "inside"), "output inside input: %d %s", rc, fr_last_error());
    snprintf(p, sizeof p, "%s/sub", g_in_dir);
    rmdir(p);
    o.output_dir = out;
    in[0] = g_in_text;

    /* cancel through the progress callback after the first batch */
    int calls = 0;
    o.progress = cancel_cb;
    o.progress_user = &calls;
    expect_fail(&o, FR_ERR_STATE, "cancel", "cancelled");
    CHECK(calls >= 2, "progress callback called %d times", calls);
    o.progress = NULL;
}

static void test_existing_output(void) {
    char out[300], p[400];
    snprintf(out, sizeof out, "%s/exist", g_tmp);
    fr_data_prepare_options o = base_opts(out);

    /* an existing empty folder is fine */
    mkdir(out, 0755);
    CHECK(fr_data_prepare(&o, NULL) == FR_OK, "prepare into an empty folder: %s", fr_last_error());
    snprintf(p, sizeof p, "%s/meta.json", out);
    CHECK(fr_test_file_exists(p), "meta.json missing");

    /* non-empty: refused, left untouched */
    snprintf(p, sizeof p, "%s/train_00000.bin", out);
    size_t before = 0;
    char *orig = fr_test_read_file(p, &before);
    o.val_fraction = 0.0;
    int rc = fr_data_prepare(&o, NULL);
    CHECK(rc == FR_ERR_ARG && strstr(fr_last_error(), "exist") && strstr(fr_last_error(), out),
          "non-empty output: %d %s", rc, fr_last_error());
    size_t after = 0;
    char *now = fr_test_read_file(p, &after);
    CHECK(orig && now && before == after && memcmp(orig, now, before) == 0, "refused output was modified");
    free(now);
    CHECK(fr_test_no_tmp_leftovers(g_tmp), "temporary folder left after refusal");

    /* replace: succeeds and the result has no val split now */
    fr_data_stats st;
    rc = fr_data_prepare_replace(&o, &st);
    CHECK(rc == FR_OK, "replace: %s", fr_last_error());
    CHECK(st.val_docs == 0 && st.train_docs == (uint64_t)g_n_docs, "val_fraction 0: %llu/%llu docs",
          (unsigned long long)st.train_docs, (unsigned long long)st.val_docs);
    fr_dataset *ds = NULL;
    rc = fr_dataset_open(&ds, out, "val");
    CHECK(rc == FR_ERR_FORMAT && strstr(fr_last_error(), "empty"), "empty val split: %d %s", rc, fr_last_error());
    CHECK(fr_test_no_tmp_leftovers(g_tmp), "temporary/old folder left after replace");

    /* a failing replace keeps the old dataset intact */
    now = fr_test_read_file(p, &after);
    const char *in[1];
    char missing[400];
    snprintf(missing, sizeof missing, "%s/nope.txt", g_tmp);
    in[0] = missing;
    fr_data_prepare_options bad = o;
    bad.inputs = in;
    bad.n_inputs = 1;
    CHECK(fr_data_prepare_replace(&bad, NULL) == FR_ERR_IO, "failing replace");
    size_t after2 = 0;
    char *again = fr_test_read_file(p, &after2);
    CHECK(now && again && after == after2 && memcmp(now, again, after) == 0, "failed replace changed the old dataset");
    free(now);
    free(again);
    free(orig);

    /* val_fraction 1: everything in val */
    o.val_fraction = 1.0;
    CHECK(fr_data_prepare_replace(&o, &st) == FR_OK && st.train_docs == 0 && st.val_docs == (uint64_t)g_n_docs,
          "val_fraction 1: %s", fr_last_error());

    /* replace refuses a non-empty folder that is not a dataset */
    char other[300];
    snprintf(other, sizeof other, "%s/notdataset", g_tmp);
    mkdir(other, 0755);
    snprintf(p, sizeof p, "%s/precious.txt", other);
    write_text(p, "keep me");
    o.output_dir = other;
    rc = fr_data_prepare_replace(&o, NULL);
    CHECK(rc == FR_ERR_ARG && fr_test_file_exists(p), "replace of a non-dataset folder: %d %s", rc, fr_last_error());
    /* an output that is a file */
    o.output_dir = p;
    rc = fr_data_prepare(&o, NULL);
    CHECK(rc == FR_ERR_ARG && strstr(fr_last_error(), "not a folder"), "output is a file: %d %s", rc, fr_last_error());
    fr_test_rm_rf(out);
    fr_test_rm_rf(other);
}

/* Copy a dataset folder. */
static void copy_dir(const char *src, const char *dst) {
    char cmd[1400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && cp -r '%s' '%s'", dst, src, dst);
    CHECK(system(cmd) == 0, "cp -r %s %s", src, dst);
}

static void patch(const char *path, long off, const void *bytes, size_t n) {
    FILE *f = fopen(path, "r+b");
    if (!f) {
        CHECK(0, "open %s", path);
        return;
    }
    fseek(f, off, SEEK_SET);
    fwrite(bytes, 1, n, f);
    fclose(f);
}

static void expect_open_fail(const char *dir, const char *split, const char *must, const char *what) {
    fr_dataset *ds = NULL;
    int rc = fr_dataset_open(&ds, dir, split);
    CHECK(rc == FR_ERR_FORMAT && ds == NULL, "%s: status %d (%s)", what, rc, fr_last_error());
    CHECK(strstr(fr_last_error(), must) != NULL, "%s: message lacks '%s': %s", what, must, fr_last_error());
    if (ds) fr_dataset_close(ds);
}

static void test_bad_shards(void) {
    char good[300], bad[300], shard[400];
    snprintf(good, sizeof good, "%s/ds", g_tmp);
    snprintf(bad, sizeof bad, "%s/corrupt", g_tmp);
    snprintf(shard, sizeof shard, "%s/train_00001.bin", bad);

    copy_dir(good, bad);
    patch(shard, 0, "FRUGALTX", 8);
    expect_open_fail(bad, "train", "train_00001.bin: bad magic", "bad magic");

    copy_dir(good, bad);
    patch(shard, 8, "\x02", 1);
    expect_open_fail(bad, "train", "version 2", "bad version");

    copy_dir(good, bad);
    patch(shard, 12, "\x03", 1);
    expect_open_fail(bad, "train", "width 3", "bad width");

    copy_dir(good, bad);
    patch(shard, 40, "\x01", 1);
    expect_open_fail(bad, "train", "reserved", "reserved bytes");

    copy_dir(good, bad);
    CHECK(truncate(shard, 64 + 2 * 37 - 1) == 0, "truncate");
    expect_open_fail(bad, "train", "train_00001.bin", "truncated body");

    copy_dir(good, bad);
    CHECK(truncate(shard, 20) == 0, "truncate");
    expect_open_fail(bad, "train", "truncated", "truncated header");

    copy_dir(good, bad);
    CHECK(truncate(shard, 64 + 2 * 37 + 2) == 0, "extend");
    expect_open_fail(bad, "train", "train_00001.bin", "trailing bytes");

    copy_dir(good, bad);
    patch(shard, 16, "\x24", 1); /* count 36 with a body of 37 */
    expect_open_fail(bad, "train", "train_00001.bin", "count/size mismatch");

    copy_dir(good, bad);
    patch(shard, 28, "\xff\x7f", 2); /* eot id >= vocab */
    expect_open_fail(bad, "train", "end-of-text", "eot out of range");

    copy_dir(good, bad);
    unlink(shard);
    fr_dataset *ds = NULL;
    int rc = fr_dataset_open(&ds, bad, "train");
    CHECK(rc == FR_ERR_IO && strstr(fr_last_error(), "train_00001.bin"), "missing shard: %d %s", rc, fr_last_error());

    copy_dir(good, bad);
    char meta[400];
    snprintf(meta, sizeof meta, "%s/meta.json", bad);
    unlink(meta);
    rc = fr_dataset_open(&ds, bad, "train");
    CHECK(rc != FR_OK && strstr(fr_last_error(), "meta.json"), "missing meta.json: %d %s", rc, fr_last_error());
    write_text(meta, "{\"format\": \"frugal-token-shards\", \"format_version\": 1");
    expect_open_fail(bad, "train", "meta.json", "truncated meta.json");

    /* a token id >= vocab: open succeeds (headers fine), the read reports it */
    copy_dir(good, bad);
    patch(shard, 64 + 2 * 5, "\xff\xff", 2);
    rc = fr_dataset_open(&ds, bad, "train");
    CHECK(rc == FR_OK, "open with a bad id: %s", fr_last_error());
    if (rc == FR_OK) {
        int buf[200];
        CHECK(fr_dataset_read(ds, 0, buf, 30) == FR_OK, "read before the bad id");
        rc = fr_dataset_read(ds, 37, buf, 10);
        CHECK(rc == FR_ERR_FORMAT && strstr(fr_last_error(), "train_00001.bin"), "bad id read: %d %s", rc,
              fr_last_error());
        fr_dataset_close(ds);
    }
    fr_test_rm_rf(bad);
}

/* A hand-written dataset with 4-byte tokens (vocab 70000) and three shards, one empty. */
static void test_width4(void) {
    char dir[300], p[400];
    snprintf(dir, sizeof dir, "%s/w4", g_tmp);
    mkdir(dir, 0755);
    const uint32_t counts[3] = {3, 0, 4};
    const uint32_t toks[7] = {69999, 5, 65536, 123456 % 70000, 0, 69998, 1};
    int k = 0;
    for (int s = 0; s < 3; s++) {
        unsigned char buf[64 + 16];
        memset(buf, 0, sizeof buf);
        memcpy(buf, "FRUGALTK", 8);
        buf[8] = 1;
        buf[12] = 4;
        buf[16] = (unsigned char)counts[s];
        uint32_t vocab = 70000, eot = 1;
        for (int b = 0; b < 4; b++) {
            buf[24 + b] = (unsigned char)(vocab >> (8 * b));
            buf[28 + b] = (unsigned char)(eot >> (8 * b));
        }
        for (uint32_t i = 0; i < counts[s]; i++, k++)
            for (int b = 0; b < 4; b++) buf[64 + 4 * i + b] = (unsigned char)(toks[k] >> (8 * b));
        snprintf(p, sizeof p, "%s/train_%05d.bin", dir, s);
        write_file(p, buf, 64 + 4 * counts[s]);
    }
    snprintf(p, sizeof p, "%s/meta.json", dir);
    write_text(p, "{\"format\": \"frugal-token-shards\", \"format_version\": 1, \"vocab_size\": 70000, \"eot_id\": 1,"
                  " \"token_width\": 4, \"splits\": {\"train\": {\"tokens\": 7, \"docs\": 1, \"shards\": ["
                  "{\"file\": \"train_00000.bin\", \"tokens\": 3}, {\"file\": \"train_00001.bin\", \"tokens\": 0},"
                  "{\"file\": \"train_00002.bin\", \"tokens\": 4}]},"
                  " \"val\": {\"tokens\": 0, \"docs\": 0, \"shards\": []}}}\n");
    fr_dataset *ds = NULL;
    int rc = fr_dataset_open(&ds, dir, "train");
    CHECK(rc == FR_OK, "open width-4 dataset: %s", fr_last_error());
    if (rc != FR_OK) return;
    CHECK(fr_dataset_token_width(ds) == 4 && fr_dataset_vocab_size(ds) == 70000 && fr_dataset_num_tokens(ds) == 7,
          "width-4 accessors");
    int got[7];
    CHECK(fr_dataset_read(ds, 0, got, 7) == FR_OK, "read width-4: %s", fr_last_error());
    int same = 1;
    for (int i = 0; i < 7; i++) same &= got[i] == (int)toks[i];
    CHECK(same, "width-4 tokens differ");
    CHECK(fr_dataset_read(ds, 2, got, 2) == FR_OK && got[0] == (int)toks[2] && got[1] == (int)toks[3],
          "width-4 read across the empty shard");
    fr_dataset_close(ds);
    /* width 2 with a vocab that does not fit */
    snprintf(p, sizeof p, "%s/train_00000.bin", dir);
    patch(p, 12, "\x02", 1);
    expect_open_fail(dir, "train", "does not fit", "width 2 with vocab 70000");
    fr_test_rm_rf(dir);
}

/* fr_utf8_seq_len (the text check of data prepare and the server's sanitizer) against an
 * independent decoder: for every 1-, 2- and 3-byte prefix and a sample of 4-byte ones,
 * the sequence is valid iff it decodes (by arithmetic) to a scalar value in its shortest
 * form, not a surrogate, at most U+10FFFF. */
static size_t utf8_reference(const unsigned char *s, size_t n) {
    const unsigned c = s[0];
    size_t len = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
    if (len == 0 || n < len) return 0;
    unsigned long cp = len == 1 ? c : len == 2 ? (c & 0x1F) : len == 3 ? (c & 0x0F) : (c & 0x07);
    for (size_t k = 1; k < len; k++) {
        if ((s[k] & 0xC0) != 0x80) return 0;
        cp = cp << 6 | (s[k] & 0x3F);
    }
    static const unsigned long min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min_cp[len] || (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF) return 0;
    return len;
}

static void test_utf8_seq_len(void) {
    long wrong = 0, n = 0;
    unsigned char b[4];
    for (unsigned x = 0; x < (1u << 24); x++) { /* every 3-byte string, as 1-, 2- and 3-byte inputs */
        b[0] = (unsigned char)(x >> 16), b[1] = (unsigned char)(x >> 8), b[2] = (unsigned char)x;
        for (size_t len = 1; len <= 3; len++) {
            if (len < 3 && (x & ((1u << (8 * (3 - len))) - 1))) continue; /* each shorter prefix once */
            n++;
            wrong += fr_utf8_seq_len(b, len) != utf8_reference(b, len);
        }
    }
    for (unsigned x = 0; x < (1u << 20); x++) { /* 4-byte strings: every lead and second byte, sampled tails */
        b[0] = (unsigned char)(0xE8 + (x >> 16) % 24), b[1] = (unsigned char)(x >> 8), b[2] = (unsigned char)(x * 37u),
        b[3] = (unsigned char)(x * 101u);
        n++;
        wrong += fr_utf8_seq_len(b, 4) != utf8_reference(b, 4);
    }
    CHECK(wrong == 0, "fr_utf8_seq_len differs from the reference decoder on %ld of %ld inputs", wrong, n);
    printf("fr_utf8_seq_len: %ld inputs, all equal to the reference decoder\n", n);
}

int main(void) {
    test_utf8_seq_len();
    const char *base = getenv("TMPDIR");
    snprintf(g_tmp, sizeof g_tmp, "%s/frugal-test-data-XXXXXX", base && base[0] ? base : "/tmp");
    if (!mkdtemp(g_tmp)) {
        CHECK(0, "mkdtemp failed");
        return fr_test_finish("test_data");
    }
    if (make_tokenizer()) {
        make_inputs();
        test_prepare_roundtrip();
        test_reads();
        test_threads_identical();
        test_bad_inputs();
        test_existing_output();
        test_bad_shards();
    }
    test_width4();
    if (g_tok) fr_tokenizer_free(g_tok);
    fr_test_rm_rf(g_tmp);
    return fr_test_finish("test_data");
}
