/*
 * test_run_folder.c — the run folder and the ledger across segments of one run.
 *
 *  - cost honesty (an injected clock): a run crashed (SIGKILL) after step 12 with its last
 *    checkpoint at step 10, resumed and crashed again after step 14, then resumed to step 30:
 *    the ledger records every step that ran (progress records on a time interval, not only at
 *    checkpoints), and its wall time, tokens, FLOPs and cost are exactly the sums over the
 *    three segments (a resume does not add the clock's origin, i.e. the machine's uptime);
 *  - two trainers in one folder: the second is refused with the first one's pid, and after a
 *    kill -9 of the first the folder is usable at once (the kernel drops the lock);
 *  - a folder whose run died before its first checkpoint is no dead end: --resume starts over
 *    from step 0 with the saved arguments, `train --out` accepts it with new arguments, and
 *    the ledger keeps the failed attempt;
 *  - a sequence length above max_position_embeddings is warned about; metrics.jsonl step
 *    records carry loss, loss_main and (with MTP) loss_mtp.
 *
 * Crashing segments run in a fresh process (this binary re-executed) because fork() alone
 * would inherit a dead OpenMP pool.
 */
#include "frugal.h"
#include "train/train_internal.h"
#include "testutil.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char g_root[128];

static int prepare_data(void) {
    char cfg[600];
    snprintf(cfg, sizeof cfg, "%s/tiny_nomtp.json", g_root); /* besides tiny.json (one MTP module) */
    fr_test_write_text(cfg, fr_test_tiny_train_config(0));
    return fr_test_tiny_run_root(g_root);
}

static void base_args(fr_train_args *a, const char *run) {
    fr_test_train_args(a, g_root, run);
    a->eval_interval = 0;
    a->sample_interval = 0;
    a->ckpt_interval = 5;
}

/* ------------------------------------------------------------------ hooks, fake clock */

static double g_now;        /* the injected clock: advanced 10 s by every step */
static double fake_clock(void) { return g_now; }

typedef struct {
    long n;                 /* last step seen */
    long crash_at;          /* SIGKILL this process when polled after this step (0 = never) */
    int signal_fd, wait_fd; /* hold mode: report step 2 on signal_fd, then block on wait_fd */
    char info[8][512];
    int n_info;
} hooks_state;

static void on_event(void *user, const fr_train_event *ev) {
    hooks_state *h = user;
    if (ev->type == FR_EV_STEP) {
        h->n = ev->step;
        g_now += 10.0;
    }
    if (ev->type == FR_EV_INFO && h->n_info < 8) snprintf(h->info[h->n_info++], sizeof h->info[0], "%s", ev->text);
}

static int should_stop(void *user) {
    hooks_state *h = user;
    if (h->crash_at > 0 && h->n >= h->crash_at) raise(SIGKILL);
    if (h->signal_fd > 0 && h->n >= 2) {
        if (write(h->signal_fd, "x", 1) != 1) _exit(4);
        char c;
        while (read(h->wait_fd, &c, 1) < 0 && errno == EINTR) {
        }
        _exit(5); /* never reached: the parent kills this process */
    }
    return 0;
}

static int train(const fr_train_args *a, int resume, hooks_state *h, fr_train_result *res) {
    fr_train_hooks hk = {on_event, should_stop, h};
    return fr_train(a, resume, &hk, res);
}

static int has_info(const hooks_state *h, const char *a, const char *b) {
    for (int i = 0; i < h->n_info; i++)
        if (strstr(h->info[i], a) && (!b || strstr(h->info[i], b))) return 1;
    return 0;
}

/* child: argv = self child ROOT RUN RESUME CLOCK0 CRASH_AT [SIGNAL_FD WAIT_FD] */
static int child_main(int argc, char **argv) {
    if (argc < 7) return 2;
    snprintf(g_root, sizeof g_root, "%s", argv[2]);
    fr_train_args a;
    const int resume = atoi(argv[4]);
    if (resume) {
        memset(&a, 0, sizeof a);
        snprintf(a.run_dir, sizeof a.run_dir, "%s/%s", g_root, argv[3]);
    } else {
        base_args(&a, argv[3]);
    }
    hooks_state h;
    memset(&h, 0, sizeof h);
    h.crash_at = atol(argv[6]);
    const double clock0 = atof(argv[5]);
    if (clock0 > 0) {
        g_now = clock0;
        fr_train_set_clock(fake_clock);
        fr_train_set_progress_interval(10.0); /* one progress record per step */
    } else {
        fr_train_set_progress_interval(1e-9);
    }
    if (argc >= 9) {
        h.signal_fd = atoi(argv[7]);
        h.wait_fd = atoi(argv[8]);
        a.max_steps = 100000;
        a.ckpt_interval = 0;
    }
    if (!freopen("/dev/null", "w", stdout)) return 3;
    fr_train_result res;
    int rc = train(&a, resume, &h, &res);
    return rc == FR_OK ? 0 : 1;
}

static pid_t spawn_child(const char *run, int resume, double clock0, long crash_at, int signal_fd, int wait_fd) {
    char s_resume[8], s_clock[64], s_crash[32], s_sig[16], s_wait[16];
    snprintf(s_resume, sizeof s_resume, "%d", resume);
    snprintf(s_clock, sizeof s_clock, "%.17g", clock0);
    snprintf(s_crash, sizeof s_crash, "%ld", crash_at);
    snprintf(s_sig, sizeof s_sig, "%d", signal_fd);
    snprintf(s_wait, sizeof s_wait, "%d", wait_fd);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        if (signal_fd > 0)
            execl("/proc/self/exe", "test_run_folder", "child", g_root, run, s_resume, s_clock, s_crash, s_sig, s_wait,
                  (char *)NULL);
        else
            execl("/proc/self/exe", "test_run_folder", "child", g_root, run, s_resume, s_clock, s_crash, (char *)NULL);
        _exit(127);
    }
    return pid;
}

static int run_child(const char *run, int resume, double clock0, long crash_at) {
    pid_t pid = spawn_child(run, resume, clock0, crash_at, 0, 0);
    int st = 0;
    waitpid(pid, &st, 0);
    return st;
}

static int ledger_find(const char *run_dir, int want_finished, fr_ledger_entry *out, int *n_runs) {
    char path[300];
    snprintf(path, sizeof path, "%s/ledger.jsonl", g_root);
    fr_ledger_entry *all = NULL;
    int n = 0, found = 0;
    if (fr_ledger_read(path, &all, &n, NULL) != FR_OK) return 0;
    int count = 0;
    for (int i = 0; i < n; i++) {
        if (strcmp(all[i].run_dir, run_dir) != 0) continue;
        count++;
        if (want_finished < 0 || (want_finished == 1) == (strcmp(all[i].status, "finished") == 0)) {
            *out = all[i];
            found = 1;
        }
    }
    if (n_runs) *n_runs = count;
    free(all);
    return found;
}

static int near(double a, double b) { return fabs(a - b) <= 1e-9 * fmax(1.0, fabs(b)); }

/* ------------------------------------------------------------------ the tests */

static void test_ledger_segments(void) {
    fr_train_args a;
    base_args(&a, "runL");
    const double N = (double)a.batch_size * a.seq_len;
    fr_ledger_entry e;

    /* segment 1: steps 1..12 in 120 s, checkpoint at 10, SIGKILL after step 12 */
    int st = run_child("runL", 0, 1e6, 12);
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "segment 1 was killed (status %d)", st);
    int found = ledger_find(a.run_dir, -1, &e, NULL);
    CHECK(found && !strcmp(e.status, "crashed"), "segment 1 reads as crashed (%s)", found ? e.status : "absent");
    CHECK(found && e.steps == 12 && near(e.wall_s, 120) && near(e.tokens, 12 * N),
          "crashed segment 1 records the 12 steps that ran: steps %ld, wall %.6g s (want 120), tokens %g (want %g)", e.steps,
          e.wall_s, e.tokens, 12 * N);
    const double flops_per_step = found && e.steps > 0 ? e.flops / (double)e.steps : 0;

    /* segment 2: resumed from step 10 on a clock whose origin is far away (another boot),
     * killed after step 14 */
    st = run_child("runL", 1, 5e6, 14);
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "segment 2 was killed (status %d)", st);
    found = ledger_find(a.run_dir, -1, &e, NULL);
    CHECK(found && e.steps == 14 && near(e.wall_s, 160) && near(e.tokens, 16 * N),
          "crashed segment 2 adds its 4 steps and 40 s: steps %ld, wall %.6g s (want 160), tokens %g (want %g)", e.steps,
          e.wall_s, e.tokens, 16 * N);

    /* segment 3: in this process, resumed from step 10 to the end */
    g_now = 9e6;
    fr_train_set_clock(fake_clock);
    fr_train_set_progress_interval(10.0);
    fr_train_args ra;
    fr_test_resume_args(&ra, a.run_dir, 0);
    hooks_state h;
    memset(&h, 0, sizeof h);
    fr_train_result res;
    int rc = train(&ra, 1, &h, &res);
    fr_train_set_clock(NULL);
    fr_train_set_progress_interval(0);
    CHECK(rc == FR_OK && res.steps_done == 30, "segment 3: %s", fr_last_error());
    int n_runs = 0;
    found = ledger_find(a.run_dir, 1, &e, &n_runs);
    CHECK(found && n_runs == 1, "one run in the ledger across three segments (%d)", n_runs);
    const double want_wall = 120 + 40 + 200, want_steps_run = 12 + 4 + 20;
    fr_ledger_entry p;
    memset(&p, 0, sizeof p);
    p.wall_s = want_wall;
    p.n_devices = a.threads;
    fr_ledger_price(&p, &a.prices);
    CHECK(found && e.steps == 30 && near(e.wall_s, want_wall), "final wall %.9g s (want %g: 120 + 40 + 200), steps %ld", e.wall_s,
          want_wall, e.steps);
    CHECK(found && near(e.tokens, want_steps_run * N) && near(e.flops, want_steps_run * flops_per_step),
          "tokens %g (want %g) and FLOPs %g (want %g) count all 36 steps that ran", e.tokens, want_steps_run * N, e.flops,
          want_steps_run * flops_per_step);
    CHECK(found && near(e.device_hours, p.device_hours) && near(e.cost_usd, p.cost_usd) && e.cost_usd > 0,
          "cost %.9g (want %.9g), device-hours %.9g (want %.9g)", e.cost_usd, p.cost_usd, e.device_hours, p.device_hours);
    printf("ledger over 3 segments (2 crashed): wall %.1f s, %ld steps, tokens %g, $%.6f\n", e.wall_s, e.steps, e.tokens,
           e.cost_usd);

    /* metrics.jsonl: the total loss, the main head's and the MTP module's */
    char path[700], line[65536];
    snprintf(path, sizeof path, "%s/metrics.jsonl", a.run_dir);
    FILE *f = fopen(path, "r");
    int steps = 0, ok = 0;
    while (f && fgets(line, sizeof line, f)) {
        if (!strstr(line, "\"type\":\"step\"")) continue;
        steps++;
        const char *l = strstr(line, "\"loss\":"), *lm = strstr(line, "\"loss_main\":"), *lt = strstr(line, "\"loss_mtp\":[");
        if (l && lm && lt) {
            double loss = strtod(l + 7, NULL), main = strtod(lm + 12, NULL), mtp = strtod(lt + 12, NULL);
            if (main > 0 && mtp > 0 && fabs(loss - (main + a.mtp_lambda * mtp)) < 0.01) ok++;
        }
    }
    if (f) fclose(f);
    CHECK(steps == 30 && ok == 30, "step records carry loss = loss_main + %.1f x loss_mtp: %d of %d", a.mtp_lambda, ok, steps);
}

static void test_lock_and_dead_end(void) {
    fr_train_args a;
    base_args(&a, "runH");
    int to_parent[2], to_child[2];
    if (pipe(to_parent) != 0 || pipe(to_child) != 0) {
        CHECK(0, "pipe: %s", strerror(errno));
        return;
    }
    pid_t pid = spawn_child("runH", 0, 0, 0, to_parent[1], to_child[0]);
    close(to_parent[1]);
    close(to_child[0]);
    char c;
    ssize_t got = read(to_parent[0], &c, 1); /* the child is training, past step 2 */
    CHECK(got == 1, "the first trainer reached step 2");
    if (got == 1) {
        char want[64];
        snprintf(want, sizeof want, "pid %ld", (long)pid);
        fr_train_args ra;
        fr_test_resume_args(&ra, a.run_dir, 3);
        hooks_state h;
        memset(&h, 0, sizeof h);
        fr_train_result res;
        int rc = train(&ra, 1, &h, &res);
        CHECK(rc == FR_ERR_STATE && strstr(fr_last_error(), want) && strstr(fr_last_error(), a.run_dir),
              "a second trainer (--resume) is refused naming the holder's %s: rc %d, %s", want, rc, fr_last_error());
        printf("second trainer refused: %s\n", fr_last_error());
        rc = train(&a, 0, &h, &res);
        CHECK(rc == FR_ERR_STATE && strstr(fr_last_error(), want), "a second trainer (--out) is refused: %s", fr_last_error());
    }
    kill(pid, SIGKILL);
    int st;
    waitpid(pid, &st, 0);
    close(to_parent[0]);
    close(to_child[1]);

    /* killed before its first checkpoint: --resume starts over from step 0 with the saved
     * arguments (the kernel dropped the lock with the process) */
    fr_ledger_entry dead;
    int found = ledger_find(a.run_dir, -1, &dead, NULL);
    CHECK(found && !strcmp(dead.status, "crashed") && dead.steps >= 2, "the killed attempt is in the ledger: %s, %ld steps",
          found ? dead.status : "absent", found ? dead.steps : 0);
    fr_train_args ra;
    fr_test_resume_args(&ra, a.run_dir, 3);
    hooks_state h;
    memset(&h, 0, sizeof h);
    fr_train_result res;
    int rc = train(&ra, 1, &h, &res);
    CHECK(rc == FR_OK && res.steps_done == 3, "resume of a folder without a checkpoint starts over: rc %d, %ld steps, %s", rc,
          res.steps_done, fr_last_error());
    CHECK(has_info(&h, "never reached a checkpoint", "step 0"), "it says so (%s)", h.n_info ? h.info[0] : "no message");
    int n_runs = 0;
    fr_ledger_entry fin;
    found = ledger_find(a.run_dir, 1, &fin, &n_runs);
    CHECK(found && n_runs == 2 && fin.steps == 3 && strcmp(fin.run_id, dead.run_id) != 0,
          "the ledger keeps the killed attempt next to the new run (%d runs)", n_runs);

    /* a run that failed before its first checkpoint: `train --out` takes the folder */
    base_args(&a, "runF");
    a.lr = 1e30; /* diverges at once */
    a.grad_clip = 0;
    a.warmup_steps = 0;
    memset(&h, 0, sizeof h);
    rc = train(&a, 0, &h, &res);
    CHECK(rc == FR_ERR_STATE && strstr(fr_last_error(), "diverged"), "run F fails before its first checkpoint: rc %d, %s", rc,
          fr_last_error());
    base_args(&a, "runF");
    a.max_steps = 4;
    memset(&h, 0, sizeof h);
    rc = train(&a, 0, &h, &res);
    CHECK(rc == FR_OK && res.steps_done == 4, "train --out into the failed run's folder: rc %d, %s", rc, fr_last_error());
    CHECK(has_info(&h, "never reached a checkpoint", NULL), "it says so (%s)", h.n_info ? h.info[0] : "no message");
    found = ledger_find(a.run_dir, 0, &dead, &n_runs);
    CHECK(found && n_runs == 2 && !strcmp(dead.status, "failed"), "the failed attempt stays in the ledger (%d runs, %s)", n_runs,
          found ? dead.status : "absent");
    char path[700], line[65536];
    snprintf(path, sizeof path, "%s/metrics.jsonl", a.run_dir);
    FILE *f = fopen(path, "r");
    int steps = 0;
    while (f && fgets(line, sizeof line, f))
        if (strstr(line, "\"type\":\"step\"")) steps++;
    if (f) fclose(f);
    CHECK(steps == 4, "metrics.jsonl holds the new run's 4 steps only (%d)", steps);
    /* a folder with a checkpoint is still refused */
    rc = train(&a, 0, &h, &res);
    CHECK(rc == FR_ERR_STATE && strstr(fr_last_error(), "already holds a run"), "a finished run's folder is refused: %s",
          fr_last_error());
}

static void test_seq_warning_and_fields(void) {
    fr_train_args a;
    base_args(&a, "runS");
    snprintf(a.model_config, sizeof a.model_config, "%s/tiny_nomtp.json", g_root);
    a.seq_len = 300;
    a.batch_size = 1;
    a.max_steps = 1;
    hooks_state h;
    memset(&h, 0, sizeof h);
    fr_train_result res;
    int rc = train(&a, 0, &h, &res);
    CHECK(rc == FR_OK, "run S: %s", fr_last_error());
    CHECK(has_info(&h, "300", "max_position_embeddings 256"), "--seq 300 above max_position_embeddings 256 is warned about (%s)",
          h.n_info ? h.info[0] : "no message");
    char path[700], line[65536];
    snprintf(path, sizeof path, "%s/metrics.jsonl", a.run_dir);
    FILE *f = fopen(path, "r");
    int steps = 0, ok = 0;
    while (f && fgets(line, sizeof line, f))
        if (strstr(line, "\"type\":\"step\"")) {
            steps++;
            if (strstr(line, "\"loss_main\":") && !strstr(line, "\"loss_mtp\"")) ok++;
        }
    if (f) fclose(f);
    CHECK(steps == 1 && ok == 1, "without MTP a step record has loss_main and no loss_mtp");
}

/* What a trainer killed at the wrong moment leaves in its folder — a half-written checkpoint
 * (.ckpt-N.tmp), a half-deleted one (.ckpt-N.del), the temporary of an atomic write of
 * `latest` — is removed by the next trainer (found by tests/soak.sh: a kill -9 between the
 * write and the rename of `latest`). A live process's temporary is kept. */
static void test_leftovers_removed(void) {
    fr_train_args a;
    base_args(&a, "runL");
    fr_test_rm_rf(a.run_dir);
    a.max_steps = 5;
    hooks_state h;
    memset(&h, 0, sizeof h);
    fr_train_result res;
    int rc = train(&a, 0, &h, &res);
    CHECK(rc == FR_OK, "run L: %s", fr_last_error());
    pid_t dead = fork();
    if (dead == 0) _exit(0);
    waitpid(dead, NULL, 0);
    char p[6][800];
    snprintf(p[0], sizeof p[0], "%s/.ckpt-00000007.tmp", a.run_dir);
    snprintf(p[1], sizeof p[1], "%s/.ckpt-00000003.del", a.run_dir);
    snprintf(p[2], sizeof p[2], "%s/latest.tmp.%ld", a.run_dir, (long)dead);
    snprintf(p[3], sizeof p[3], "%s/train_args.json.tmp.%ld", a.run_dir, (long)dead);
    snprintf(p[4], sizeof p[4], "%s/metrics.jsonl.tmp.%ld", a.run_dir, (long)dead);
    snprintf(p[5], sizeof p[5], "%s/latest.tmp.%ld", a.run_dir, (long)getppid()); /* alive */
    for (int i = 0; i < 2; i++) {
        mkdir(p[i], 0755);
        char f[900];
        snprintf(f, sizeof f, "%s/model.safetensors", p[i]);
        fr_test_write_text(f, "half");
    }
    for (int i = 2; i < 6; i++) fr_test_write_text(p[i], "half");
    a.max_steps = 7;
    memset(&h, 0, sizeof h);
    rc = train(&a, 1, &h, &res);
    CHECK(rc == FR_OK, "run L resumed: %s", fr_last_error());
    for (int i = 0; i < 5; i++) CHECK(!fr_test_file_exists(p[i]), "%s removed by the next trainer", p[i]);
    CHECK(fr_test_file_exists(p[5]), "a live process's temporary %s is kept", p[5]);
    unlink(p[5]);
}

/* --precision (issue 16): recorded in train_args.json, every step record and the ledger;
 * a resume keeps the saved precision, or switches when one is given (and records that). */
static int count_in_metrics(const char *run_dir, const char *needle) {
    char path[700];
    snprintf(path, sizeof path, "%s/metrics.jsonl", run_dir);
    char *text = fr_test_read_file(path, NULL);
    int n = 0;
    for (const char *p = text; p && (p = strstr(p, needle)) != NULL; p++) n++;
    free(text);
    return n;
}

/* Parameters counted by the size of RUN/ckpt-STEP/training_state.bin with moments of
 * `bytes` each (header 120 bytes, 2 moment arrays, 8-byte checksum); -1 if it does not fit. */
static long state_params(const char *run_dir, long step, int bytes) {
    char path[800];
    snprintf(path, sizeof path, "%s/ckpt-%08ld/training_state.bin", run_dir, step);
    struct stat st;
    if (stat(path, &st) != 0) return -1;
    const long body = (long)st.st_size - 120 - 8;
    return body > 0 && body % (2 * bytes) == 0 ? body / (2 * bytes) : -1;
}

static void test_precision(void) {
    fr_train_args a;
    base_args(&a, "runP");
    fr_test_rm_rf(a.run_dir);
    a.max_steps = 3;
    hooks_state h;
    fr_train_result res;
    memset(&h, 0, sizeof h);
    snprintf(a.precision, sizeof a.precision, "fp4");
    CHECK(train(&a, 0, &h, &res) == FR_ERR_ARG && strstr(fr_last_error(), "fp4"), "unknown precision refused");
    snprintf(a.precision, sizeof a.precision, "fp8");
    int rc = train(&a, 0, &h, &res);
    CHECK(rc == FR_OK, "fp8 run: %s", fr_last_error());
    char path[700];
    snprintf(path, sizeof path, "%s/train_args.json", a.run_dir);
    char *args_text = fr_test_read_file(path, NULL);
    CHECK(args_text && strstr(args_text, "\"precision\":\t\"fp8\""), "train_args.json records fp8");
    free(args_text);
    CHECK(count_in_metrics(a.run_dir, "\"precision\":\"fp8\"") == 3, "every step record says fp8");
    fr_ledger_entry e;
    CHECK(ledger_find(a.run_dir, 1, &e, NULL) && !strcmp(e.precision, "fp8"), "the ledger says fp8");
    /* fp8 keeps AdamW's moments in BF16: recorded, and the state file holds 2 bytes each */
    args_text = fr_test_read_file(path, NULL);
    CHECK(args_text && strstr(args_text, "\"moments\":\t\"bf16\""), "fp8: moments bf16 recorded");
    free(args_text);
    const long n_params = state_params(a.run_dir, 3, 2);
    CHECK(n_params > 0, "fp8: the state file holds BF16 moments (%ld parameters)", n_params);
    /* resume without a precision: fp8 still; with fp32: switched, recorded */
    fr_train_args r;
    fr_test_resume_args(&r, a.run_dir, 4);
    memset(&h, 0, sizeof h);
    CHECK(train(&r, 1, &h, &res) == FR_OK, "resume: %s", fr_last_error());
    CHECK(count_in_metrics(a.run_dir, "\"precision\":\"fp8\"") == 4, "a resume keeps fp8");
    r.max_steps = 5;
    snprintf(r.precision, sizeof r.precision, "fp32");
    memset(&h, 0, sizeof h);
    CHECK(train(&r, 1, &h, &res) == FR_OK, "resume in fp32: %s", fr_last_error());
    CHECK(has_info(&h, "fp32 from here on", "fp8"), "the switch is announced");
    CHECK(count_in_metrics(a.run_dir, "\"precision\":\"fp32\"") == 1, "step 5 says fp32");
    args_text = fr_test_read_file(path, NULL);
    CHECK(args_text && strstr(args_text, "\"precision\":\t\"fp32\""), "train_args.json records the switch");
    free(args_text);
    CHECK(ledger_find(a.run_dir, 1, &e, NULL) && !strcmp(e.precision, "fp32"), "the ledger records the switch");
    CHECK(has_info(&h, "moments", "converted to fp32"), "the moments were converted from bf16 on the way in");
    args_text = fr_test_read_file(path, NULL);
    CHECK(args_text && strstr(args_text, "\"moments\":\t\"fp32\""), "fp32 from the switch on: moments fp32 recorded");
    free(args_text);
    CHECK(state_params(a.run_dir, 5, 4) == n_params, "and the step-5 state file holds FP32 moments");
    /* back to bf16 moments by --moments alone */
    r.max_steps = 6;
    r.precision[0] = 0;
    snprintf(r.moments, sizeof r.moments, "bf16");
    memset(&h, 0, sizeof h);
    CHECK(train(&r, 1, &h, &res) == FR_OK, "resume with --moments bf16: %s", fr_last_error());
    CHECK(has_info(&h, "moments", "converted to bf16") && state_params(a.run_dir, 6, 2) == n_params,
          "fp32 moments converted to bf16 and saved so");
    r.moments[0] = 0;
    /* bf16: a run of its own; the path is announced, and a warning where it is a fallback */
    base_args(&a, "runB");
    fr_test_rm_rf(a.run_dir);
    a.max_steps = 2;
    snprintf(a.precision, sizeof a.precision, "bf16");
    memset(&h, 0, sizeof h);
    CHECK(train(&a, 0, &h, &res) == FR_OK, "bf16 run: %s", fr_last_error());
    CHECK(count_in_metrics(a.run_dir, "\"precision\":\"bf16\"") == 2, "every step record says bf16");
    CHECK(has_info(&h, "bf16 GEMMs", fr_bf16_gemm_path()), "the bf16 GEMM path is announced");
    printf("bf16 GEMM path here: %s (hardware: %s)\n", fr_bf16_gemm_path(), fr_bf16_hardware() ? "yes" : "no");
    CHECK(has_info(&h, "runs an exact emulation", NULL) == !fr_bf16_hardware(), "a fallback warns (and only a fallback)");
    CHECK(ledger_find(a.run_dir, 1, &e, NULL) && !strcmp(e.precision, "bf16"), "the ledger says bf16");
    /* resuming with other fp8 tiles is refused */
    fr_test_resume_args(&r, a.run_dir, 3);
    r.fp8_grad_tile_rows = 128;
    memset(&h, 0, sizeof h);
    CHECK(train(&r, 1, &h, &res) == FR_ERR_ARG && strstr(fr_last_error(), "tiles"), "tiles cannot change on resume");
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "child") == 0) return child_main(argc, argv);
    snprintf(g_root, sizeof g_root, "/tmp/frugal_test_run_folder_%ld", (long)getpid());
    mkdir(g_root, 0755);
    if (prepare_data() == FR_OK) {
        test_ledger_segments();
        test_lock_and_dead_end();
        test_seq_warning_and_fields();
        test_leftovers_removed();
        test_precision();
    }
    if (fr_test_failed == 0) fr_test_rm_rf(g_root);
    return fr_test_finish("test_run_folder");
}
