/*
 * test_mpi_cli.c — `frugal train` under mpirun (issue 17), the command itself:
 *   - layouts the job cannot have fail on every rank with a message naming the flag and a
 *     non-zero exit, and write nothing: --ep 3 over 2 ranks, a --batch that does not split
 *     over the ranks, --node-limit without --ep; --ep without mpirun is a usage error (2);
 *   - a rank lost with SIGKILL ends the whole job: `mpirun -np 2 frugal train` on the tiny
 *     MoE config with checkpoints every 5 steps; once a checkpoint exists, rank 1 (found by
 *     its OMPI_COMM_WORLD_RANK) is killed. The job must end with a non-zero exit status and an
 *     error naming rank 1; the run then resumes from its last checkpoint under mpirun and
 *     finishes, and the ledger holds one record for the job, charging 2 ranks x 1 thread.
 * Skipped (77) in a build without MPI.
 */
#include "testutil.h"

#include <dirent.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef FR_MPIEXEC
int main(void) {
    printf("test_mpi_cli: built without MPI: skipped\n");
    return 77;
}
#else
static char g_root[128];

/* a /proc file (its size reads as 0, so read until the end); *len bytes, NUL-terminated */
static char *read_proc(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 4096, n = 0, got;
    char *buf = malloc(cap + 1);
    while (buf && (got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            char *b = realloc(buf, 2 * cap + 1);
            if (!b) break;
            buf = b;
            cap *= 2;
        }
    }
    fclose(f);
    if (buf) buf[n] = 0;
    *len = n;
    return buf;
}

/* the pid of the frugal process of rank `rank` training into run_dir (0 if none) */
static pid_t find_rank(int rank, const char *run_dir) {
    DIR *d = opendir("/proc");
    if (!d) return 0;
    struct dirent *de;
    pid_t found = 0;
    char want[64];
    snprintf(want, sizeof want, "OMPI_COMM_WORLD_RANK=%d", rank);
    while (!found && (de = readdir(d))) {
        const long pid = strtol(de->d_name, NULL, 10);
        if (pid <= 0 || pid == getpid()) continue;
        char path[300];
        snprintf(path, sizeof path, "/proc/%ld/cmdline", pid);
        size_t len = 0;
        char *cmd = read_proc(path, &len);
        int ours = 0;
        for (size_t i = 0; cmd && i < len; i += strlen(cmd + i) + 1)
            if (strcmp(cmd + i, run_dir) == 0) ours = 1;
        free(cmd);
        if (!ours) continue;
        snprintf(path, sizeof path, "/proc/%ld/environ", pid);
        char *env = read_proc(path, &len);
        for (size_t i = 0; env && i < len; i += strlen(env + i) + 1)
            if (strcmp(env + i, want) == 0) found = (pid_t)pid;
        free(env);
    }
    closedir(d);
    return found;
}

/* run `sh -c cmd` in the background; its pid */
static pid_t spawn(const char *cmd) {
    pid_t p = fork();
    if (p == 0) {
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    return p;
}

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

int main(void) {
    snprintf(g_root, sizeof g_root, "/tmp/frugal_test_mpi_cli_%d", (int)getpid());
    fr_test_rm_rf(g_root);
    mkdir(g_root, 0755);
    char data[300], cfg[300], run[300], out[300], ledger[300], cmd[4096];
    snprintf(data, sizeof data, "%s/data", g_root);
    snprintf(cfg, sizeof cfg, "%s/tiny.json", g_root);
    snprintf(run, sizeof run, "%s/run", g_root);
    snprintf(out, sizeof out, "%s/out.txt", g_root);
    snprintf(ledger, sizeof ledger, "%s/ledger.jsonl", g_root);
    if (fr_test_tiny_run_root(g_root) != FR_OK) return fr_test_finish("test_mpi_cli");

    /* impossible layouts: a message naming the flag, non-zero, no run folder */
    static const struct {
        int np;
        const char *flags, *must;
    } bad[] = {{2, "--ep 3", "--ep 3"}, {2, "--batch 3", "--batch 3"}, {2, "--node-limit 1", "--node-limit"},
               {1, "--ep 2", "--ep 2"}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char badrun[300];
        snprintf(badrun, sizeof badrun, "%s/bad%zu", g_root, i);
        if (bad[i].np > 1)
            snprintf(cmd, sizeof cmd, "'%s' --oversubscribe -np %d '%s' train --config '%s' --data '%s' --out '%s' --steps 2 "
                     "--batch 4 --seq 16 --threads 1 --peak-gflops 10 %s 2>&1", FR_MPIEXEC, bad[i].np, FR_FRUGAL_BIN, cfg, data, badrun,
                     bad[i].flags);
        else
            snprintf(cmd, sizeof cmd, "'%s' train --config '%s' --data '%s' --out '%s' --steps 2 --batch 4 --seq 16 --peak-gflops 10 %s 2>&1",
                     FR_FRUGAL_BIN, cfg, data, badrun, bad[i].flags);
        FILE *p = popen(cmd, "r");
        char buf[65536];
        size_t len = p ? fread(buf, 1, sizeof buf - 1, p) : 0;
        buf[len] = 0;
        const int st = p ? pclose(p) : -1;
        const int code = st >= 0 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
        char args_json[400];
        snprintf(args_json, sizeof args_json, "%s/train_args.json", badrun);
        CHECK(code != 0 && strstr(buf, bad[i].must) && !fr_test_file_exists(args_json),
              "mpirun -np %d train %s: exit %d, %s a message naming %s, %s train_args.json:\n%s", bad[i].np, bad[i].flags,
              code, strstr(buf, bad[i].must) ? "with" : "without", bad[i].must,
              fr_test_file_exists(args_json) ? "wrote" : "no", buf);
        if (bad[i].np == 1) CHECK(code == 2, "--ep without mpirun is a usage error (exit %d)", code);
        const char *line = strstr(buf, "frugal train");
        const char *eol = line ? strchr(line, '\n') : NULL;
        if (line) printf("np %d %-16s exit %d: %.*s\n", bad[i].np, bad[i].flags, code, eol ? (int)(eol - line) : 100, line);
    }

    const char *common = "--batch 4 --seq 16 --threads 1 --eval-interval 0 --sample-interval 0 --ckpt-interval 5 "
                         "--peak-gflops 10 --ep 2 --zero1";
    snprintf(cmd, sizeof cmd,
             "exec '%s' --oversubscribe -np 2 '%s' train --config '%s' --data '%s' --out '%s' --steps 1000000 %s "
             ">'%s' 2>&1",
             FR_MPIEXEC, FR_FRUGAL_BIN, cfg, data, run, common, out);
    pid_t job = spawn(cmd);
    /* wait for a checkpoint, then for rank 1 */
    char latest[400];
    snprintf(latest, sizeof latest, "%s/latest", run);
    pid_t victim = 0;
    for (int i = 0; i < 600 && !victim; i++) {
        sleep_ms(100);
        if (fr_test_file_exists(latest)) victim = find_rank(1, run);
    }
    CHECK(victim > 0, "found rank 1 of the running job");
    if (victim > 0) kill(victim, SIGKILL);
    else kill(job, SIGTERM); /* mpirun ends its ranks */
    int st = 0;
    waitpid(job, &st, 0);
    const int code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    char *text = fr_test_read_file(out, NULL);
    printf("job exit status after SIGKILL of rank 1: %d\n", code);
    CHECK(code != 0, "the job ended with status 0 after losing a rank");
    CHECK(text && strstr(text, "rank 1") && strstr(text, "signal 9"), "the job's error names the lost rank 1:\n%s",
          text ? text : "(no output)");
    if (text) {
        const char *m = strstr(text, "rank 1");
        const char *eol = m ? strchr(m, '\n') : NULL;
        if (m) printf("launcher: ...%.*s\n", eol ? (int)(eol - m) : 80, m);
    }
    free(text);

    /* resume from the last checkpoint under mpirun, 10 steps further */
    char ck[600];
    long step = -1;
    if (fr_train_latest_checkpoint(run, ck, sizeof ck) == FR_OK) step = strtol(strrchr(ck, '-') + 1, NULL, 10);
    CHECK(step >= 5, "a checkpoint survived the kill: %s", fr_last_error());
    snprintf(cmd, sizeof cmd, "'%s' --oversubscribe -np 2 '%s' train --resume '%s' --steps %ld --ep 2 --zero1",
             FR_MPIEXEC, FR_FRUGAL_BIN, run, step + 10);
    FILE *p = popen(cmd, "r");
    char line[4096];
    int finished = 0;
    while (p && fgets(line, sizeof line, p))
        if (strstr(line, "finished run")) finished = 1;
    const int rc = p ? pclose(p) : -1;
    CHECK(rc == 0 && finished, "the resumed job finished (status %d)", rc);

    /* one ledger record for the job, 2 ranks x 1 thread, finished */
    fr_ledger_entry *e = NULL;
    int n = 0;
    CHECK(fr_ledger_read(ledger, &e, &n, NULL) == FR_OK && n == 1, "ledger: %d records (%s)", n, fr_last_error());
    if (n == 1) {
        CHECK(e[0].n_devices == 2 && !strcmp(e[0].status, "finished") && e[0].steps == step + 10,
              "ledger record: %d devices, %s, %ld steps", e[0].n_devices, e[0].status, e[0].steps);
        printf("ledger: one record, %d devices (2 ranks x 1 thread), %s at step %ld\n", e[0].n_devices, e[0].status,
               e[0].steps);
    }
    free(e);
    fr_test_rm_rf(g_root);
    return fr_test_finish("test_mpi_cli");
}
#endif
