/* test_cli_issue15.c — issue 15 through the `frugal` command:
 *   - generate / eval refuse a checkpoint with a NaN weight, naming the tensor; --no-check loads it;
 *   - chat answers /help and unknown /commands itself instead of sending them to the model;
 *   - data prepare refuses a binary (non-UTF-8) file with its byte offset, and removes the
 *     OUTPUT.tmp-PID folders of killed runs;
 *   - convert reads a `frugal quantize` folder, refuses an existing output without --force, and
 *     removes the OUT.tmp.PID files of killed runs;
 *   - a usage error prints its message and one line pointing to --help, not the whole help. */
#define _GNU_SOURCE
#include "frugal.h"
#include "cli_testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef FR_FIXTURES_DIR
#define FR_FIXTURES_DIR "tests/fixtures"
#endif
#define TOKDIR FR_FIXTURES_DIR "/tokenizer/frugal_trained"

static char tmp[] = "/tmp/frugal-test-cli-issue15-XXXXXX";

/* A pid that names no live process: a child that has exited and been reaped. */
static long dead_pid(void) {
    pid_t p = fork();
    if (p == 0) _exit(0);
    int st;
    waitpid(p, &st, 0);
    return (long)p;
}

static int contains(const char *s, const char *a) { return s && strstr(s, a) != NULL; }

static void test_usage_error(void) {
    char *out = NULL;
    int rc = run_frugal("eval --bogus", &out);
    CHECK(rc == 2 && contains(out, "unknown option '--bogus'") && contains(out, "frugal eval --help"),
          "usage error: rc %d\n%s", rc, out);
    CHECK(!contains(out, "Options:") && !contains(out, "usage: frugal eval"), "no whole help after a usage error:\n%s", out);
    free(out);
    out = NULL;
    for (int k = 0; k < 2; k++) { /* an unknown command: one line and a pointer, not the whole help */
        rc = run_frugal(k ? "help bogus" : "bogus", &out);
        CHECK(rc == 2 && contains(out, "unknown command 'bogus'") && contains(out, "frugal help") &&
                  !contains(out, "Commands:"),
              "unknown command: rc %d\n%s", rc, out);
        free(out);
        out = NULL;
    }
    rc = run_frugal("generate --model m", &out);
    CHECK(rc == 2 && contains(out, "--prompt") && contains(out, "frugal generate --help") && !contains(out, "Options:"),
          "generate usage error: rc %d\n%s", rc, out);
    free(out);
    expect("eval --help", 0, "usage: frugal eval", "--no-check");
    expect("generate --help", 0, "--no-check", "pages in");
    expect("convert --help", 0, "--force", "quantize");
}

/* models: good (with tokenizer), bad (a NaN weight) */
static int make_models(const char *good, const char *bad) {
    fr_tokenizer *tok = NULL;
    if (fr_tokenizer_load(&tok, TOKDIR) != FR_OK) return 0;
    const char *cj = fr_test_q32_config(fr_tokenizer_vocab_size(tok));
    fr_config cfg;
    fr_model *m = NULL;
    int ok = fr_config_parse(&cfg, cj, strlen(cj)) == FR_OK && fr_model_create(&m, &cfg, 7) == FR_OK;
    ok = ok && mkdir(good, 0755) == 0 && fr_model_save(m, good) == FR_OK && fr_tokenizer_save(tok, good) == FR_OK;
    size_t n = 0;
    float *w = ok ? fr_model_param(m, "model.layers.0.self_attn.o_proj.weight", &n) : NULL;
    if (w && n > 100) {
        w[100] = NAN;
        ok = mkdir(bad, 0755) == 0 && fr_model_save(m, bad) == FR_OK && fr_tokenizer_save(tok, bad) == FR_OK;
    } else ok = 0;
    fr_model_free(m);
    fr_tokenizer_free(tok);
    return ok;
}

static void test_nan_check(const char *good, const char *bad) {
    char args[1024];
    snprintf(args, sizeof args, "generate --model '%s' --prompt 'hello there' --max-tokens 3 --temperature 0", good);
    expect(args, 0, "generated", NULL);
    snprintf(args, sizeof args, "generate --model '%s' --prompt 'hello there' --max-tokens 3 --temperature 0", bad);
    expect(args, 1, "model.layers.0.self_attn.o_proj.weight", "index 100");
    snprintf(args, sizeof args, "generate --model '%s' --prompt 'hello there' --max-tokens 3 --temperature 0 --no-check", bad);
    char *out = NULL;
    int rc = run_frugal(args, &out);
    CHECK(rc == 0 && !contains(out, "non-finite"), "--no-check loads it: rc %d\n%s", rc, out);
    free(out);
    char toks[400];
    snprintf(toks, sizeof toks, "%s/tokens.txt", tmp);
    fr_test_write_text(toks, "5 17 30 2 99 41 7 7 8\n100 3 4\n");
    snprintf(args, sizeof args, "eval --model '%s' --tokens '%s'", bad, toks);
    expect(args, 1, "model.layers.0.self_attn.o_proj.weight", "non-finite");
    snprintf(args, sizeof args, "eval --engine --model '%s' --tokens '%s'", bad, toks);
    expect(args, 1, "model.layers.0.self_attn.o_proj.weight", "non-finite");
    snprintf(args, sizeof args, "eval --engine --no-check --model '%s' --tokens '%s'", bad, toks);
    out = NULL;
    rc = run_frugal(args, &out);
    /* loaded unchecked: the NaN then reaches the loss, which eval reports */
    CHECK(!contains(out, "o_proj.weight") && contains(out, "non-finite loss"), "eval --engine --no-check: rc %d\n%s", rc, out);
    free(out);
}

static void test_chat_commands(const char *good) {
    char in[400], args[1024];
    snprintf(in, sizeof in, "%s/chat-in.txt", tmp);
    fr_test_write_text(in, "/help\n/bogus some words\n/quit\n");
    snprintf(args, sizeof args, "chat --model '%s' --max-tokens 2 --temperature 0 < '%s'", good, in);
    char *out = NULL;
    int rc = run_frugal(args, &out);
    CHECK(rc == 0 && contains(out, "/reset") && contains(out, "/quit") && contains(out, "unknown command '/bogus'"),
          "chat /help and unknown command: rc %d\n%s", rc, out);
    CHECK(!contains(out, "generated"), "no message went to the model:\n%s", out);
    free(out);
    /* "//x" is a message that starts with '/': it is sent */
    fr_test_write_text(in, "//etc is a folder\n");
    out = NULL;
    rc = run_frugal(args, &out);
    CHECK(rc == 0 && contains(out, "generated") && !contains(out, "unknown command"), "// escape: rc %d\n%s", rc, out);
    free(out);
}

static void test_data_prepare(void) {
    char bin[400], txt[400], outd[400], args[2048], stale[460], live[460];
    snprintf(bin, sizeof bin, "%s/random.txt", tmp);
    snprintf(txt, sizeof txt, "%s/good.txt", tmp);
    snprintf(outd, sizeof outd, "%s/ds", tmp);
    /* random bytes without NULs: most are outside UTF-8 sequences */
    FILE *f = fopen(bin, "wb");
    unsigned x = 12345;
    for (int i = 0; i < 20000; i++) {
        x = x * 1103515245u + 12345u;
        unsigned char c = (unsigned char)(x >> 16);
        fputc(c ? c : 'a', f);
    }
    fclose(f);
    snprintf(args, sizeof args, "data prepare --tokenizer '%s' --input '%s' --output '%s' --quiet", TOKDIR, bin, outd);
    expect(args, 1, "random.txt", "byte offset");
    CHECK(!fr_test_file_exists(outd), "nothing written");
    /* a NUL byte (UTF-16, binary) */
    f = fopen(bin, "wb");
    fwrite("ab\0c", 1, 4, f);
    fclose(f);
    expect(args, 1, "NUL byte at byte offset 2", NULL);
    /* UTF-8 text with one stray Latin-1 byte in 200 is fine */
    f = fopen(txt, "wb");
    for (int i = 0; i < 20; i++) fputs("Grüße aus Köln, 東京 and more words. ", f);
    fputc(0xE9, f);
    fputs("\n", f);
    fclose(f);
    /* leftovers of killed runs: a dead pid's folder goes, a live process's stays */
    long dp = dead_pid();
    snprintf(stale, sizeof stale, "%s.tmp-%ld", outd, dp);
    snprintf(live, sizeof live, "%s.tmp-%ld", outd, (long)getpid());
    mkdir(stale, 0755);
    mkdir(live, 0755);
    char inner[500];
    snprintf(inner, sizeof inner, "%s/train_00000.bin", stale);
    fr_test_write_text(inner, "x");
    snprintf(args, sizeof args, "data prepare --tokenizer '%s' --input '%s' --output '%s' --quiet", TOKDIR, txt, outd);
    char *out = NULL;
    int rc = run_frugal(args, &out);
    CHECK(rc == 0, "UTF-8 text with a stray byte is accepted: rc %d\n%s", rc, out);
    free(out);
    CHECK(!fr_test_file_exists(stale), "stale %s removed", stale);
    CHECK(fr_test_file_exists(live), "a live run's %s kept", live);
    rmdir(live);
}

static void test_convert(const char *good) {
    char q8[400], gg[400], args[1024], stale[460];
    snprintf(q8, sizeof q8, "%s/q8", tmp);
    snprintf(gg, sizeof gg, "%s/m.gguf", tmp);
    int ok = fr_quantize_model(good, q8, "q8_0", NULL, NULL) == FR_OK;
    CHECK(ok, "quantize: %s", fr_last_error());
    if (!ok) return;
    long dp = dead_pid();
    snprintf(stale, sizeof stale, "%s.tmp.%ld", gg, dp);
    fr_test_write_text(stale, "partial");
    snprintf(args, sizeof args, "convert --to gguf --type Q8_0 '%s' '%s'", q8, gg);
    char *out = NULL;
    int rc = run_frugal(args, &out);
    CHECK(rc == 0 && contains(out, "wrote"), "convert reads a quantized folder: rc %d\n%s", rc, out);
    free(out);
    CHECK(!fr_test_file_exists(stale), "stale %s removed", stale);
    /* the GGUF holds the dequantized Q8_0 weights: it loads and matches the quantized model */
    fr_model *a = NULL, *b = NULL;
    if (fr_model_load_gguf(&a, gg) == FR_OK && fr_model_load_dequantized(&b, q8) == FR_OK) {
        size_t na = 0, nb = 0;
        const float *wa = fr_model_param(a, "model.layers.1.mlp.experts.0.down_proj.weight", &na);
        const float *wb = fr_model_param(b, "model.layers.1.mlp.experts.0.down_proj.weight", &nb);
        double err = 0, mx = 0;
        for (size_t i = 0; wa && wb && na == nb && i < na; i++) {
            err = fmax(err, fabs(wa[i] - wb[i]));
            mx = fmax(mx, fabs(wb[i]));
        }
        CHECK(wa && wb && na == nb && err <= 0.02 * mx, "GGUF weights match the quantized ones: err %g of %g", err, mx);
    } else {
        CHECK(0, "load back: %s", fr_last_error());
    }
    fr_model_free(a);
    fr_model_free(b);
    struct stat st0, st1;
    stat(gg, &st0);
    expect(args, 1, "already exists", "--force");
    stat(gg, &st1);
    CHECK(st0.st_mtim.tv_sec == st1.st_mtim.tv_sec && st0.st_mtim.tv_nsec == st1.st_mtim.tv_nsec && st0.st_ino == st1.st_ino,
          "the existing file is untouched");
    snprintf(args, sizeof args, "convert --to gguf --type F16 --force '%s' '%s'", q8, gg);
    expect(args, 0, "wrote", NULL);
}

int main(void) {
    if (!mkdtemp(tmp)) {
        CHECK(0, "mkdtemp");
        return fr_test_finish("test_cli_issue15");
    }
    char good[300], bad[300];
    snprintf(good, sizeof good, "%s/good", tmp);
    snprintf(bad, sizeof bad, "%s/bad", tmp);
    test_usage_error();
    int ok = make_models(good, bad);
    CHECK(ok, "models: %s", fr_last_error());
    if (ok) {
        test_nan_check(good, bad);
        test_chat_commands(good);
        test_convert(good);
    }
    test_data_prepare();
    fr_test_rm_rf(tmp);
    return fr_test_finish("test_cli_issue15");
}
