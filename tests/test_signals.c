/*
 * test_signals.c — SIGINT / SIGTERM at random moments to the real `frugal` binary
 * (issue 15: a signal handler running inside oneDNN's sgemm corrupted the heap).
 *
 *  - `frugal train`: started on a tiny model for many steps, a signal at a random moment
 *    after its first step (SIGINT and SIGTERM alternately). Every run must exit with
 *    128 + the signal (130 / 143) — or 0 if it finished first — after saving a complete
 *    checkpoint at the step it reports, that loads; no heap-corruption or sanitizer text on
 *    stderr, no temporary folder left behind;
 *  - `frugal data prepare` and `frugal quantize`: a signal at a random moment of the work.
 *    Either the command finished (exit 0, complete output) or it stopped (exit 130 / 143,
 *    or killed by the signal before main() could block it) and left no output folder and no
 *    temporary folder.
 *
 * The random delays come from a seeded generator; the seed is printed (FRUGAL_SIGNAL_SEED=N
 * repeats a run). Runs: 6 SIGINT + 6 SIGTERM trainings by default (fewer under ASan),
 * FRUGAL_SOAK=1: 50 + 50. FRUGAL_TEST_BIN=PATH runs another `frugal` binary (e.g. an older
 * build, to see the failures this test catches).
 */
#include "frugal.h"
#include "testutil.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#define FR_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define FR_SANITIZED 1
#endif
#endif
#ifndef FR_SANITIZED
#define FR_SANITIZED 0
#endif

static char g_root[128];
static const char *g_bin = FR_FRUGAL_BIN;
static uint64_t g_rng;

static uint64_t rnd(void) {
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return g_rng;
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void sleep_ms(double ms) {
    if (ms <= 0) return;
    struct timespec t = {(time_t)(ms / 1000), (long)(ms - 1000.0 * (double)(time_t)(ms / 1000)) * 1000000L};
    while (nanosleep(&t, &t) != 0 && errno == EINTR) {
    }
}

static const char *TINY_CONFIG =
    "{\"architectures\": [\"DeepseekV3ForCausalLM\"], \"model_type\": \"deepseek_v3\",\n"
    " \"vocab_size\": 320, \"hidden_size\": 64, \"intermediate_size\": 128, \"moe_intermediate_size\": 32,\n"
    " \"num_hidden_layers\": 2, \"num_attention_heads\": 2, \"num_key_value_heads\": 2,\n"
    " \"q_lora_rank\": 32, \"kv_lora_rank\": 32, \"qk_nope_head_dim\": 16, \"qk_rope_head_dim\": 16, \"v_head_dim\": 16,\n"
    " \"n_routed_experts\": 8, \"n_shared_experts\": 1, \"num_experts_per_tok\": 2, \"n_group\": 2, \"topk_group\": 1,\n"
    " \"topk_method\": \"noaux_tc\", \"scoring_func\": \"sigmoid\", \"norm_topk_prob\": true, \"routed_scaling_factor\": 2.5,\n"
    " \"first_k_dense_replace\": 1, \"moe_layer_freq\": 1, \"num_nextn_predict_layers\": 1,\n"
    " \"max_position_embeddings\": 256, \"rope_theta\": 10000.0, \"rope_scaling\": null, \"rms_norm_eps\": 1e-06,\n"
    " \"tie_word_embeddings\": false, \"initializer_range\": 0.02, \"hidden_act\": \"silu\",\n"
    " \"bos_token_id\": 0, \"eos_token_id\": 1, \"pad_token_id\": 2}\n";

/* A model large enough that quantizing it takes a noticeable moment (every linear width a
 * multiple of 32, for Q4_1). */
static const char *QUANT_CONFIG =
    "{\"architectures\": [\"DeepseekV3ForCausalLM\"], \"model_type\": \"deepseek_v3\",\n"
    " \"vocab_size\": 4096, \"hidden_size\": 512, \"intermediate_size\": 1024, \"moe_intermediate_size\": 256,\n"
    " \"num_hidden_layers\": 3, \"num_attention_heads\": 4, \"num_key_value_heads\": 4,\n"
    " \"q_lora_rank\": 256, \"kv_lora_rank\": 128, \"qk_nope_head_dim\": 64, \"qk_rope_head_dim\": 32, \"v_head_dim\": 64,\n"
    " \"n_routed_experts\": 8, \"n_shared_experts\": 1, \"num_experts_per_tok\": 2, \"n_group\": 2, \"topk_group\": 1,\n"
    " \"topk_method\": \"noaux_tc\", \"scoring_func\": \"sigmoid\", \"norm_topk_prob\": true, \"routed_scaling_factor\": 2.5,\n"
    " \"first_k_dense_replace\": 1, \"moe_layer_freq\": 1, \"num_nextn_predict_layers\": 1,\n"
    " \"max_position_embeddings\": 256, \"rope_theta\": 10000.0, \"rope_scaling\": null, \"rms_norm_eps\": 1e-06,\n"
    " \"tie_word_embeddings\": false, \"initializer_range\": 0.02, \"hidden_act\": \"silu\",\n"
    " \"bos_token_id\": 0, \"eos_token_id\": 1, \"pad_token_id\": 2}\n";

/* Sentences from a tiny grammar, one JSONL document each. */
static int prepare(void) {
    char corpus[300], big[300], tokdir[300], datadir[300], cfg[300], qdir[300];
    snprintf(corpus, sizeof corpus, "%s/corpus.jsonl", g_root);
    snprintf(big, sizeof big, "%s/big.jsonl", g_root);
    snprintf(tokdir, sizeof tokdir, "%s/tok", g_root);
    snprintf(datadir, sizeof datadir, "%s/data", g_root);
    snprintf(cfg, sizeof cfg, "%s/tiny.json", g_root);
    snprintf(qdir, sizeof qdir, "%s/qmodel", g_root);
    fr_test_write_corpus(corpus, 240, 1);
    fr_test_write_corpus(big, FR_SANITIZED ? 40000 : 200000, 1);
    fr_test_write_text(cfg, TINY_CONFIG);
    int rc = fr_test_prepare_tiny_data(corpus, tokdir, datadir);
    if (rc != FR_OK) return rc;
    fr_config qc;
    rc = fr_config_parse(&qc, QUANT_CONFIG, strlen(QUANT_CONFIG));
    CHECK(rc == FR_OK, "quantize config: %s", fr_last_error());
    if (rc != FR_OK) return rc;
    fr_model *m = NULL;
    rc = fr_model_create(&m, &qc, 3);
    if (rc == FR_OK) rc = fr_model_save(m, qdir);
    CHECK(rc == FR_OK, "model for quantize: %s", fr_last_error());
    fr_model_free(m);
    return rc;
}

/* fork + exec `frugal ARGV...` with stdout and stderr into files. */
static pid_t spawn(char *const argv[], const char *out_path, const char *err_path) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        int o = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644), e = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (o < 0 || e < 0 || dup2(o, 1) < 0 || dup2(e, 2) < 0) _exit(126);
        close(o);
        close(e);
        /* a clean start: nothing blocked, default dispositions (as from a shell) */
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        execv(g_bin, argv);
        _exit(127);
    }
    return pid;
}

/* Wait for pid up to timeout_s; SIGKILL after that (returns -1 then). */
static int wait_for(pid_t pid, double timeout_s, int *status) {
    double t0 = now_s();
    for (;;) {
        pid_t r = waitpid(pid, status, WNOHANG);
        if (r == pid) return 0;
        if (r < 0 && errno != EINTR) return -1;
        if (now_s() - t0 > timeout_s) {
            kill(pid, SIGKILL);
            waitpid(pid, status, 0);
            return -1;
        }
        sleep_ms(5);
    }
}

static char *read_all(const char *path) {
    char *s = fr_test_read_file(path, NULL);
    if (!s) {
        s = malloc(1);
        if (s) s[0] = 0;
    }
    return s;
}

/* Text on stderr that means memory corruption or a sanitizer report; NULL if clean. */
static const char *bad_stderr(const char *err) {
    static const char *BAD[] = {"corrupted", "double free", "free(): ", "malloc(): ", "munmap_chunk", "AddressSanitizer",
                                "LeakSanitizer", "UndefinedBehaviorSanitizer", "runtime error:", "Segmentation fault",
                                "stack smashing", "Aborted"};
    for (size_t i = 0; i < sizeof BAD / sizeof BAD[0]; i++)
        if (strstr(err, BAD[i])) return BAD[i];
    return NULL;
}

static const char *sig_short(int sig) { return sig == SIGINT ? "SIGINT" : sig == SIGTERM ? "SIGTERM" : "?"; }

static int g_runs_passed, g_runs_failed, g_runs_finished;
static int g_fail_crash, g_fail_code, g_fail_ckpt;

/* one training run stopped by sig; returns 1 if everything held */
static int train_trial(int trial, int sig) {
    char rundir[300], out[300], err[300], data[300], cfg[300], ledger[300], metrics[400];
    snprintf(rundir, sizeof rundir, "%s/run%03d", g_root, trial);
    snprintf(out, sizeof out, "%s/run%03d.out", g_root, trial);
    snprintf(err, sizeof err, "%s/run%03d.err", g_root, trial);
    snprintf(data, sizeof data, "%s/data", g_root);
    snprintf(cfg, sizeof cfg, "%s/tiny.json", g_root);
    snprintf(ledger, sizeof ledger, "%s/ledger.jsonl", g_root);
    snprintf(metrics, sizeof metrics, "%s/metrics.jsonl", rundir);
    /* every third run also writes periodic checkpoints, so signals land in those writes too */
    const char *ckpt_interval = trial % 3 == 2 ? "5" : "0";
    char *argv[] = {(char *)g_bin, "train", "--config", cfg, "--data", data, "--out", rundir, "--ledger", ledger,
                    "--steps", "100000", "--batch", "8", "--seq", "64", "--ckpt-interval", (char *)ckpt_interval,
                    "--eval-interval", "0", "--sample-interval", "0", "--threads", "2", "--peak-gflops", "50", NULL};
    pid_t pid = spawn(argv, out, err);
    CHECK(pid > 0, "fork: %s", strerror(errno));
    if (pid <= 0) return 0;
    /* wait for the first step (up to 2 minutes on a loaded machine), then strike at a random
     * moment of the following steps */
    int started = 0;
    for (double t0 = now_s(); now_s() - t0 < 120;) {
        char *m = fr_test_read_file(metrics, NULL);
        started = m && strstr(m, "\"type\":\"step\"");
        free(m);
        if (started) break;
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            char *e = read_all(err);
            CHECK(0, "train trial %d: exited (status %d) before its first step: %.400s", trial, st, e);
            free(e);
            return 0;
        }
        sleep_ms(10);
    }
    CHECK(started, "train trial %d: no step within 2 minutes", trial);
    const double delay = (double)(rnd() % 400);
    sleep_ms(delay);
    kill(pid, sig);
    int st = 0;
    int waited = wait_for(pid, 120, &st);
    char *e = read_all(err), *o = read_all(out);
    int ok = 1;
    const char *bad = bad_stderr(e);
    if (waited != 0) {
        CHECK(0, "train trial %d (%s after %.0f ms): did not stop within 2 minutes", trial, sig_short(sig), delay);
        ok = 0;
        g_fail_crash++;
    } else if (WIFSIGNALED(st) || bad) {
        CHECK(0, "train trial %d (%s after %.0f ms): crashed (%s %d), stderr: %.600s", trial, sig_short(sig), delay,
              WIFSIGNALED(st) ? "signal" : "exit", WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st), e);
        ok = 0;
        g_fail_crash++;
    } else if (WEXITSTATUS(st) == 0) {
        g_runs_finished++; /* finished before the signal: fine, but rare with 100000 steps */
    } else if (WEXITSTATUS(st) != 128 + sig) {
        CHECK(0, "train trial %d (%s after %.0f ms): exit status %d, want %d; stderr: %.400s", trial, sig_short(sig), delay,
              WEXITSTATUS(st), 128 + sig, e);
        ok = 0;
        g_fail_code++;
    }
    if (ok && waited == 0) {
        /* "stopped run <id> at step S" and a complete checkpoint of step S that loads */
        const char *p = strstr(o, WEXITSTATUS(st) == 0 ? "finished run " : "stopped run ");
        const char *at = p ? strstr(p, " at step ") : NULL;
        long step = at ? atol(at + 9) : -1;
        char ck[600];
        int rc = fr_train_latest_checkpoint(rundir, ck, sizeof ck);
        const char *dash = rc == FR_OK ? strrchr(ck, '-') : NULL;
        long ck_step = dash ? atol(dash + 1) : -2;
        fr_model *m = NULL;
        int lrc = rc == FR_OK ? fr_model_load(&m, ck) : rc;
        fr_model_free(m);
        if (step < 1 || rc != FR_OK || ck_step != step || lrc != FR_OK || !fr_test_no_tmp_leftovers(rundir)) {
            CHECK(0, "train trial %d (%s after %.0f ms): reported step %ld, latest checkpoint %s (step %ld, loads: %s), "
                     "temporary folders left: %s",
                  trial, sig_short(sig), delay, step, rc == FR_OK ? ck : fr_last_error(), ck_step,
                  lrc == FR_OK ? "yes" : "no", fr_test_no_tmp_leftovers(rundir) ? "no" : "yes");
            ok = 0;
            g_fail_ckpt++;
        } else {
            fr_test_passed++;
        }
    }
    if (ok) g_runs_passed++;
    else g_runs_failed++;
    if (waited != 0) printf("train %3d: %-7s after first step + %3.0f ms -> no exit, FAILED\n", trial, sig_short(sig), delay);
    else if (WIFSIGNALED(st))
        printf("train %3d: %-7s after first step + %3.0f ms -> killed by signal %d, FAILED\n", trial, sig_short(sig), delay,
               WTERMSIG(st));
    else
        printf("train %3d: %-7s after first step + %3.0f ms -> exit %d, %s\n", trial, sig_short(sig), delay, WEXITSTATUS(st),
               ok ? "ok" : "FAILED");
    free(e);
    free(o);
    if (ok) fr_test_rm_rf(rundir);
    return ok;
}

/* rm -rf the temporary folders (".tmp-", ".old-") in g_root */
static void remove_leftovers(void) {
    DIR *d = opendir(g_root);
    if (!d) return;
    struct dirent *de;
    while ((de = readdir(d)) != NULL)
        if (strstr(de->d_name, ".tmp-") || strstr(de->d_name, ".old-")) {
            char p[600];
            snprintf(p, sizeof p, "%s/%s", g_root, de->d_name);
            fr_test_rm_rf(p);
        }
    closedir(d);
}

/* A command that writes one output folder, stopped at a random moment of its work: it
 * finished (exit 0, marker file present; or killed by the signal after that, while exiting,
 * when the command is back in the default mode) or stopped (130 / 143, or killed by the signal
 * before main() blocked it) leaving neither the folder nor a temporary one. */
static int output_trial(const char *what, int trial, int sig, char *const argv[], const char *outdir, const char *marker,
                        double full_ms) {
    char out[300], err[300], mk[400];
    snprintf(out, sizeof out, "%s/%s%03d.out", g_root, what, trial);
    snprintf(err, sizeof err, "%s/%s%03d.err", g_root, what, trial);
    snprintf(mk, sizeof mk, "%s/%s", outdir, marker);
    const double delay = (double)(rnd() % (uint64_t)(full_ms > 2 ? full_ms : 2));
    /* a signal this early may come before main() has blocked it (while the dynamic loader
     * runs): then the default action kills the process, which is fine if nothing is left */
    const double early_ms = FR_SANITIZED ? 300 : 50;
    pid_t pid = spawn(argv, out, err);
    if (pid <= 0) return 0;
    sleep_ms(delay);
    kill(pid, sig);
    int st = 0;
    int waited = wait_for(pid, 120, &st);
    char *e = read_all(err);
    const char *bad = bad_stderr(e);
    struct stat sb;
    const int exists = stat(outdir, &sb) == 0, complete = fr_test_file_exists(mk);
    const int clean = fr_test_no_tmp_leftovers(g_root);
    int ok = 0;
    const char *how = "";
    if (waited != 0) how = "did not stop within 2 minutes";
    else if (bad) how = "memory error on stderr";
    else if (WIFSIGNALED(st) && WTERMSIG(st) != sig) how = "crashed";
    else if (WIFSIGNALED(st) && complete && clean) { /* its output was written: the commands go back to
                                                       * the default action once it is (cli_signals_default),
                                                       * and the signal came while the process was exiting */
        ok = 1;
        how = "finished, then killed by the signal while exiting (output complete)";
    } else if (WIFSIGNALED(st) && delay >= early_ms) how = "killed by the signal (not taken by the command)";
    else if (WIFEXITED(st) && WEXITSTATUS(st) == 0) {
        ok = complete && clean;
        how = ok ? "finished before the signal" : "exit 0 but the output is incomplete";
    } else if ((WIFEXITED(st) && WEXITSTATUS(st) == 128 + sig) || (WIFSIGNALED(st) && delay < early_ms)) {
        ok = !exists && clean;
        how = ok ? (WIFSIGNALED(st) ? "killed by the signal before it was blocked, nothing left" : "stopped, nothing left")
                 : "stopped but left output or temporary files";
    } else {
        how = "wrong exit status";
    }
    CHECK(ok, "%s trial %d (%s after %.0f ms): %s (status %s %d); stderr: %.400s", what, trial, sig_short(sig), delay, how,
          WIFSIGNALED(st) ? "signal" : "exit", WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st), e);
    printf("%s %3d: %-7s after %4.0f ms -> %s%s\n", what, trial, sig_short(sig), delay, how,
           WIFEXITED(st) && WEXITSTATUS(st) ? (WEXITSTATUS(st) == 130 ? " (130)" : WEXITSTATUS(st) == 143 ? " (143)" : "")
                                            : "");
    if (ok) g_runs_passed++;
    else {
        g_runs_failed++;
        if (waited != 0 || bad || WIFSIGNALED(st)) g_fail_crash++;
        else if (WEXITSTATUS(st) != 0 && WEXITSTATUS(st) != 128 + sig) g_fail_code++;
    }
    free(e);
    fr_test_rm_rf(outdir);
    remove_leftovers(); /* so that the next trial is judged on its own */
    return ok;
}

/* time of an uninterrupted run of argv (ms), with its output removed again; -1 on failure */
static double time_full(const char *what, char *const argv[], const char *outdir, const char *marker) {
    char out[300], err[300], mk[400];
    snprintf(out, sizeof out, "%s/%s-full.out", g_root, what);
    snprintf(err, sizeof err, "%s/%s-full.err", g_root, what);
    snprintf(mk, sizeof mk, "%s/%s", outdir, marker);
    double t0 = now_s();
    pid_t pid = spawn(argv, out, err);
    int st = 0;
    if (pid <= 0 || wait_for(pid, 300, &st) != 0) return -1;
    double ms = 1000 * (now_s() - t0);
    int ok = WIFEXITED(st) && WEXITSTATUS(st) == 0 && fr_test_file_exists(mk);
    char *e = read_all(err);
    CHECK(ok, "%s without a signal failed (status %d): %.400s", what, st, e);
    free(e);
    fr_test_rm_rf(outdir);
    printf("%s without a signal: %.0f ms\n", what, ms);
    return ok ? ms : -1;
}

static long env_long(const char *name, long dflt) {
    const char *v = getenv(name);
    return v && *v ? atol(v) : dflt;
}

int main(void) {
    snprintf(g_root, sizeof g_root, "/tmp/frugal_test_signals_%ld", (long)getpid());
    mkdir(g_root, 0755);
    if (getenv("FRUGAL_TEST_BIN") && *getenv("FRUGAL_TEST_BIN")) g_bin = getenv("FRUGAL_TEST_BIN");
    const int soak = getenv("FRUGAL_SOAK") && atoi(getenv("FRUGAL_SOAK")) > 0;
    const long n_train = env_long("FRUGAL_SIGNAL_RUNS", soak ? 50 : FR_SANITIZED ? 2 : 6); /* per signal */
    const long n_other = soak ? 10 : FR_SANITIZED ? 2 : 4;                               /* per command */
    uint64_t seed = (uint64_t)env_long("FRUGAL_SIGNAL_SEED", 0);
    if (!seed) seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 20);
    g_rng = seed ? seed : 1;
    printf("binary %s\nseed %llu (FRUGAL_SIGNAL_SEED=%llu repeats the delays); %ld SIGINT + %ld SIGTERM trainings, "
           "%ld data prepare, %ld quantize\n",
           g_bin, (unsigned long long)seed, (unsigned long long)seed, n_train, n_train, n_other, n_other);
    if (prepare() != FR_OK) return fr_test_finish("test_signals");

    for (long i = 0; i < 2 * n_train; i++) train_trial((int)i, i % 2 ? SIGTERM : SIGINT);

    char tok[300], big[300], dout[300], model[300], qout[300];
    snprintf(tok, sizeof tok, "%s/tok", g_root);
    snprintf(big, sizeof big, "%s/big.jsonl", g_root);
    snprintf(dout, sizeof dout, "%s/prepared", g_root);
    snprintf(model, sizeof model, "%s/qmodel", g_root);
    snprintf(qout, sizeof qout, "%s/quantized", g_root);
    char *dargv[] = {(char *)g_bin, "data", "prepare", "--tokenizer", tok, "--input", big, "--output", dout,
                     "--threads", "2", "--quiet", NULL};
    char *qargv[] = {(char *)g_bin, "quantize", "--model", model, "--type", "q4_1", "--out", qout, "--threads", "2",
                     "--quiet", NULL};
    double dms = time_full("data", dargv, dout, "meta.json");
    if (dms > 0)
        for (long i = 0; i < n_other; i++) output_trial("data", (int)i, i % 2 ? SIGTERM : SIGINT, dargv, dout, "meta.json", dms);
    double qms = time_full("quantize", qargv, qout, "model.safetensors");
    if (qms > 0)
        for (long i = 0; i < n_other; i++)
            output_trial("quantize", (int)i, i % 2 ? SIGTERM : SIGINT, qargv, qout, "model.safetensors", qms);

    printf("runs: %d passed, %d failed (%d trainings finished before the signal); failures: %d crashes or hangs, "
           "%d wrong exit status, %d missing or bad checkpoint\n",
           g_runs_passed, g_runs_failed, g_runs_finished, g_fail_crash, g_fail_code, g_fail_ckpt);
    if (fr_test_failed == 0) fr_test_rm_rf(g_root);
    else printf("kept %s for inspection\n", g_root);
    return fr_test_finish("test_signals");
}
