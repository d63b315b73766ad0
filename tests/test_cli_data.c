/* test_cli_data.c — runs the real `frugal` binary for `frugal data` and `frugal tokenizer`:
 *  - --help of every subcommand, usage errors exit 2 and name the problem;
 *  - tokenizer train → encode → decode round trip; encode agrees with the library;
 *  - data prepare → data info (text and JSON), refusing an existing output, --force,
 *    runtime errors exit 1 naming the file, a corrupt shard makes data info fail;
 *  - Ctrl-C (SIGINT) during data prepare: exit 130, no output and no temporary folder. */
#define _GNU_SOURCE
#include "frugal.h"
#include "cli_testutil.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char g_tmp[256];

static void test_usage(void) {
    expect("--help", 0, "data", "tokenizer");
    expect("data --help", 0, "frugal data", "prepare");
    expect("help data", 0, "frugal data", "info");
    expect("data prepare --help", 0, "frugal data prepare", "--val-fraction");
    expect("data prepare -h", 0, "--shard-tokens", "--force");
    expect("data info --help", 0, "frugal data info", "--json");
    expect("tokenizer --help", 0, "frugal tokenizer", "encode");
    expect("help tokenizer", 0, "frugal tokenizer", "decode");
    expect("tokenizer train --help", 0, "frugal tokenizer train", "--vocab-size");
    expect("tokenizer encode --help", 0, "frugal tokenizer encode", "--text");
    expect("tokenizer decode --help", 0, "frugal tokenizer decode", "--ids");

    expect("data", 2, "usage", NULL);
    expect("data frobnicate", 2, "frobnicate", "usage");
    expect("data prepare", 2, "--tokenizer", NULL);
    expect("data prepare --tokenizer t --output o", 2, "--input", NULL);
    expect("data prepare --tokenizer t --input i", 2, "--output", NULL);
    expect("data prepare --input i --output o", 2, "--tokenizer", NULL);
    expect("data prepare --tokenizer t --input i --output o --val-fraction abc", 2, "--val-fraction", "abc");
    expect("data prepare --tokenizer t --input i --output o --val-fraction 1.5", 2, "--val-fraction", NULL);
    expect("data prepare --tokenizer t --input i --output o --val-fraction=-0.1", 2, "--val-fraction", NULL);
    expect("data prepare --tokenizer t --input i --output o --shard-tokens 0", 2, "--shard-tokens", NULL);
    expect("data prepare --tokenizer t --input i --output o --threads 0", 2, "--threads", NULL);
    expect("data prepare --tokenizer t --input i --output o --bogus", 2, "--bogus", "usage");
    expect("data prepare --tokenizer t --input i --output o stray", 2, "stray", NULL);
    expect("data prepare --tokenizer t --input i --output o --force=1", 2, "--force", NULL);
    expect("data prepare --tokenizer t --input", 2, "--input", "needs a value");
    expect("data info", 2, "DIR", NULL);
    expect("data info a b", 2, "'b'", NULL);
    expect("data info --bogus x", 2, "--bogus", NULL);
    expect("tokenizer", 2, "usage", NULL);
    expect("tokenizer frobnicate", 2, "frobnicate", NULL);
    expect("tokenizer train --input a --output o", 2, "--vocab-size", NULL);
    expect("tokenizer train --vocab-size 10 --input a --output o", 2, "--vocab-size", NULL);
    expect("tokenizer train --vocab-size 500 --output o", 2, "--input", NULL);
    expect("tokenizer train --vocab-size 500 --input --output o", 2, "--input", "needs a value");
    expect("tokenizer train --vocab-size 500 --input a", 2, "--output", NULL);
    expect("tokenizer encode --text hi", 2, "--tokenizer", NULL);
    expect("tokenizer encode --tokenizer t --text hi --file f", 2, "not both", NULL);
    expect("tokenizer decode --tokenizer t", 2, "--ids", NULL);
    expect("tokenizer decode --tokenizer t --ids '1 x2 3'", 2, "x2", NULL);
    expect("tokenizer decode --tokenizer t --ids '1 -2'", 2, "-2", NULL);
}

static const char *TRAIN_TEXT =
    "In the beginning God created the heaven and the earth. And the earth was without form, and void; "
    "and darkness was upon the face of the deep. And the Spirit of God moved upon the face of the waters. "
    "And God said, Let there be light: and there was light. And God saw the light, that it was good.\n";

static void test_tokenizer_cli(char *tok_dir, size_t n_tok_dir) {
    char train[300], args[8192], *out = NULL;
    snprintf(train, sizeof train, "%s/train.txt", g_tmp);
    FILE *f = fopen(train, "w");
    for (int i = 0; i < 30; i++) fputs(TRAIN_TEXT, f);
    fclose(f);
    snprintf(tok_dir, n_tok_dir, "%s/tok", g_tmp);
    snprintf(args, sizeof args,
             "tokenizer train --vocab-size 350 --input '%s' --output '%s' --special '<|bos|>' '<|eos|>' '<|pad|>' "
             "--bos '<|bos|>' --eos '<|eos|>' --pad '<|pad|>' --threads 2",
             train, tok_dir);
    expect(args, 0, "trained tokenizer", "vocab size 350");
    char tj[400];
    snprintf(tj, sizeof tj, "%s/tokenizer.json", tok_dir);
    CHECK(fr_test_file_exists(tj), "tokenizer train did not write %s", tj);
    expect(args, 1, "already exists", "--force");
    snprintf(args, sizeof args, "tokenizer train --vocab-size 350 --input '%s/none.txt' --output '%s/t2'", g_tmp, g_tmp);
    expect(args, 1, "none.txt", NULL);

    /* encode agrees with the library; decode gives the text back */
    const char *text = "And God saw the light, caf\xc3\xa9!";
    fr_tokenizer *tok = NULL;
    int st = fr_tokenizer_load(&tok, tok_dir);
    CHECK(st == FR_OK, "load CLI-trained tokenizer: %s", fr_last_error());
    if (st != FR_OK) return;
    int *ids = NULL;
    size_t n = 0;
    fr_tokenizer_encode(tok, text, strlen(text), 1, &ids, &n);
    char want[4096] = "";
    for (size_t i = 0; i < n; i++) {
        char w[16];
        snprintf(w, sizeof w, "%s%d", i ? " " : "", ids[i]);
        strcat(want, w);
    }
    snprintf(args, sizeof args, "tokenizer encode --tokenizer '%s' --text '%s'", tok_dir, text);
    int rc = run_frugal(args, &out);
    CHECK(rc == 0 && strncmp(out, want, strlen(want)) == 0 && out[strlen(want)] == '\n',
          "encode: exit %d, got '%s', want '%s'", rc, out, want);
    free(out);
    snprintf(args, sizeof args, "tokenizer encode --tokenizer '%s' --text '%s' --json", tok_dir, text);
    rc = run_frugal(args, &out);
    CHECK(rc == 0 && json_number(out, "n_tokens") == (double)n && strstr(out, "\"ids\": ["), "encode --json: %s", out);
    free(out);
    char file[300];
    snprintf(file, sizeof file, "%s/enc.txt", g_tmp);
    fr_test_write_text(file, text);
    snprintf(args, sizeof args, "tokenizer encode --tokenizer '%s' --file '%s'", tok_dir, file);
    rc = run_frugal(args, &out);
    CHECK(rc == 0 && strncmp(out, want, strlen(want)) == 0, "encode --file: %s", out);
    free(out);
    snprintf(args, sizeof args, "tokenizer encode --tokenizer '%s' < '%s'", tok_dir, file);
    rc = run_frugal(args, &out);
    CHECK(rc == 0 && strncmp(out, want, strlen(want)) == 0, "encode from stdin: %s", out);
    free(out);
    snprintf(args, sizeof args, "tokenizer decode --tokenizer '%s' --ids '%s'", tok_dir, want);
    rc = run_frugal(args, &out);
    CHECK(rc == 0 && strcmp(out, text) == 0, "decode: exit %d, got '%s'", rc, out);
    free(out);
    /* special tokens: parsed by default, plain text with --no-special */
    int eos = fr_tokenizer_special_id(tok, FR_TOKEN_EOS);
    snprintf(args, sizeof args, "tokenizer encode --tokenizer '%s' --text '<|eos|>'", tok_dir);
    rc = run_frugal(args, &out);
    CHECK(rc == 0 && atoi(out) == eos && strchr(out, ' ') == NULL, "encode special: %s (eos %d)", out, eos);
    free(out);
    snprintf(args, sizeof args, "tokenizer encode --tokenizer '%s' --no-special --text '<|eos|>'", tok_dir);
    rc = run_frugal(args, &out);
    CHECK(rc == 0 && strchr(out, ' ') != NULL, "encode --no-special should give several ids: %s", out);
    free(out);
    snprintf(args, sizeof args, "tokenizer decode --tokenizer '%s' --ids '%d,%d' --skip-special", tok_dir, ids[0], eos);
    rc = run_frugal(args, &out);
    char *one = NULL;
    size_t one_len = 0;
    fr_tokenizer_decode(tok, ids, 1, 0, &one, &one_len);
    CHECK(rc == 0 && one && strcmp(out, one) == 0, "decode --skip-special: '%s' vs '%s'", out, one ? one : "");
    free(one);
    free(out);
    snprintf(args, sizeof args, "tokenizer decode --tokenizer '%s' --ids '1 99999'", tok_dir);
    expect(args, 1, "99999", "out of range");
    snprintf(args, sizeof args, "tokenizer encode --tokenizer '%s/nope' --text hi", g_tmp);
    expect(args, 1, "nope", NULL);
    free(ids);
    fr_tokenizer_free(tok);
}

static void test_data_cli(const char *tok_dir) {
    char in[300], jl[300], out[300], args[2048], *o = NULL;
    snprintf(in, sizeof in, "%s/docs", g_tmp);
    mkdir(in, 0755);
    char p[400];
    for (int i = 0; i < 40; i++) {
        snprintf(p, sizeof p, "%s/doc%02d.txt", in, i);
        FILE *f = fopen(p, "w");
        fprintf(f, "Document %d. ", i);
        for (int k = 0; k <= i % 7; k++) fputs(TRAIN_TEXT, f);
        fclose(f);
    }
    snprintf(jl, sizeof jl, "%s/more.jsonl", g_tmp);
    fr_test_write_text(jl, "{\"text\": \"a JSONL document\"}\n{\"text\": \"another one\"}\n");
    snprintf(out, sizeof out, "%s/ds", g_tmp);
    snprintf(args, sizeof args,
             "data prepare --tokenizer '%s' --input '%s' --input '%s' --output '%s' --val-fraction 0.2 "
             "--shard-tokens 1000 --threads 2 --json",
             tok_dir, in, jl, out);
    int rc = run_frugal(args, &o);
    CHECK(rc == 0, "data prepare: exit %d\n%s", rc, o);
    double train_tok = json_number(o, "train_tokens"), val_tok = json_number(o, "val_tokens");
    double train_docs = json_number(o, "train_docs"), val_docs = json_number(o, "val_docs");
    CHECK(train_docs + val_docs == 42 && train_docs > 0 && val_docs > 0, "docs %g + %g, want 42 in both splits: %s",
          train_docs, val_docs, o);
    CHECK(train_tok > 1000 && val_tok > 0, "tokens %g / %g", train_tok, val_tok);
    CHECK(!isnan(json_number(o, "mb_per_s")), "no mb_per_s: %s", o);
    free(o);
    CHECK(fr_test_no_tmp_leftovers(g_tmp), "temporary folder left after success");

    snprintf(args, sizeof args, "data info '%s'", out);
    char want_train[64];
    snprintf(want_train, sizeof want_train, "%.0f tokens", train_tok);
    expect(args, 0, want_train, "validation   ok");
    snprintf(args, sizeof args, "data info '%s' --json", out);
    rc = run_frugal(args, &o);
    CHECK(rc == 0 && strstr(o, "\"valid\": true") && json_number(o, "vocab_size") == 350, "data info --json: %s", o);
    CHECK(strstr(o, "train_00001.bin") != NULL, "expected several train shards: %s", o);
    free(o);

    /* existing output: refused (1), replaced with --force (0) */
    snprintf(args, sizeof args, "data prepare --tokenizer '%s' --input '%s' --output '%s' --quiet", tok_dir, jl, out);
    expect(args, 1, "not empty", "--force");
    snprintf(args, sizeof args, "data prepare --tokenizer '%s' --input '%s' --output '%s' --quiet --force --val-fraction 0", tok_dir,
             jl, out);
    expect(args, 0, "prepared", "2 docs");
    CHECK(fr_test_no_tmp_leftovers(g_tmp), "temporary folder left after --force");

    /* runtime errors name the file, exit 1, leave nothing */
    char out2[300];
    snprintf(out2, sizeof out2, "%s/ds2", g_tmp);
    snprintf(args, sizeof args, "data prepare --tokenizer '%s' --input '%s/missing.txt' --output '%s'", tok_dir, g_tmp,
             out2);
    expect(args, 1, "missing.txt", "error");
    char bad[300];
    snprintf(bad, sizeof bad, "%s/bad.jsonl", g_tmp);
    fr_test_write_text(bad, "{\"text\": \"fine\"}\n{\"txt\": \"typo\"}\n");
    snprintf(args, sizeof args, "data prepare --tokenizer '%s' --input '%s' --output '%s'", tok_dir, bad, out2);
    expect(args, 1, "bad.jsonl: line 2", "text");
    snprintf(args, sizeof args, "data prepare --tokenizer '%s/nope' --input '%s' --output '%s'", g_tmp, jl, out2);
    expect(args, 1, "nope", NULL);
    CHECK(!fr_test_file_exists(out2) && fr_test_no_tmp_leftovers(g_tmp), "output or temporary left after failures");

    /* data info on a corrupt dataset fails naming the shard */
    snprintf(p, sizeof p, "%s/ds/train_00000.bin", g_tmp);
    FILE *f = fopen(p, "r+b");
    if (f) {
        fputs("XXXX", f);
        fclose(f);
    }
    snprintf(args, sizeof args, "data info '%s'", out);
    expect(args, 1, "train_00000.bin", "magic");
    snprintf(args, sizeof args, "data info '%s/nothing'", g_tmp);
    expect(args, 1, "nothing", NULL);
    snprintf(args, sizeof args, "data info '%s'", g_tmp);
    expect(args, 1, "meta.json", NULL);
}

/* Ctrl-C during a long prepare: exit 130, no output, no temporary folder. */
static void test_sigint(const char *tok_dir) {
    char big[300], out[300], log[300];
    snprintf(big, sizeof big, "%s/big.jsonl", g_tmp);
    snprintf(out, sizeof out, "%s/ds-int", g_tmp);
    snprintf(log, sizeof log, "%s/int.log", g_tmp);
    FILE *f = fopen(big, "w");
    /* ~20 MB in 200 documents: at least three 8 MB batches */
    char *line = malloc(110000);
    for (int d = 0; d < 200; d++) {
        size_t n = 0;
        n += (size_t)sprintf(line + n, "{\"text\": \"doc %d ", d);
        while (n < 100000) n += (size_t)sprintf(line + n, "and the light %d was good. ", (int)(n % 977));
        fputs(line, f);
        fputs("\"}\n", f);
    }
    free(line);
    fclose(f);
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(fd, 1);
        dup2(fd, 2);
        execl(FR_FRUGAL_BIN, FR_FRUGAL_BIN, "data", "prepare", "--tokenizer", tok_dir, "--input", big, "--output", out,
              "--threads", "2", (char *)NULL);
        _exit(127);
    }
    /* wait for the first progress line (after the first batch), then interrupt */
    int seen = 0, status = 0;
    for (int i = 0; i < 60000 && !seen; i++) {
        FILE *lf = fopen(log, "r");
        if (lf) {
            char buf[4096];
            size_t n = fread(buf, 1, sizeof buf - 1, lf);
            buf[n] = 0;
            seen = strstr(buf, "tokenizing") != NULL;
            fclose(lf);
        }
        if (waitpid(pid, &status, WNOHANG) == pid) break;
        if (!seen) usleep(5000);
    }
    CHECK(seen, "no progress line before the end");
    kill(pid, SIGINT);
    waitpid(pid, &status, 0);
    FILE *lf = fopen(log, "r");
    char buf[8192] = "";
    if (lf) {
        buf[fread(buf, 1, sizeof buf - 1, lf)] = 0;
        fclose(lf);
    }
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 130, "SIGINT: status %d, want exit 130:\n%s", status, buf);
    CHECK(strstr(buf, "interrupted") != NULL, "SIGINT: no message:\n%s", buf);
    CHECK(!fr_test_file_exists(out) && fr_test_no_tmp_leftovers(g_tmp), "SIGINT: output or temporary folder left");
}

int main(void) {
    if (!fr_test_file_exists(FR_FRUGAL_BIN)) {
        CHECK(0, "frugal binary %s not found", FR_FRUGAL_BIN);
        return fr_test_finish("test_cli_data");
    }
    const char *base = getenv("TMPDIR");
    snprintf(g_tmp, sizeof g_tmp, "%s/frugal-test-cli-data-XXXXXX", base && base[0] ? base : "/tmp");
    if (!mkdtemp(g_tmp)) {
        CHECK(0, "mkdtemp failed");
        return fr_test_finish("test_cli_data");
    }
    test_usage();
    char tok_dir[300];
    test_tokenizer_cli(tok_dir, sizeof tok_dir);
    char tj[400];
    snprintf(tj, sizeof tj, "%s/tokenizer.json", tok_dir);
    if (fr_test_file_exists(tj)) {
        test_data_cli(tok_dir);
        test_sigint(tok_dir);
    }
    fr_test_rm_rf(g_tmp);
    return fr_test_finish("test_cli_data");
}
