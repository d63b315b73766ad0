/* test_ledger.c — the run ledger (src/train/ledger.c):
 *  - default prices and the cost math against hand-computed values;
 *  - begin/progress/end round trip (exact doubles, NaN -> null -> NaN, latest record wins);
 *  - runs without an end record read as "crashed" with their last progress;
 *  - torn last line and malformed lines are skipped and counted; a later append repairs
 *    the torn line so the new record survives;
 *  - missing ledger = empty; unwritable paths give FR_ERR_IO naming the path;
 *  - unique run ids; concurrent appends from forked processes never interleave. */
#define _GNU_SOURCE
#include "frugal.h"
#include "testutil.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char tmpdir[256];

static void path_in_tmp(char *buf, size_t n, const char *name) { snprintf(buf, n, "%s/%s", tmpdir, name); }

static int close_rel(double a, double b, double tol) {
    if (a == b) return 1;
    return fabs(a - b) <= tol * fmax(fabs(a), fabs(b));
}

static fr_ledger_entry make_entry(const char *kind, int n_devices, double wall_s) {
    fr_ledger_entry e;
    memset(&e, 0, sizeof e);
    snprintf(e.kind, sizeof e.kind, "%s", kind);
    snprintf(e.run_dir, sizeof e.run_dir, "runs/%s", kind);
    snprintf(e.config, sizeof e.config, "configs/tiny.json");
    snprintf(e.device, sizeof e.device, "cpu");
    e.n_devices = n_devices;
    e.wall_s = wall_s;
    e.final_loss = NAN;
    e.val_loss = NAN;
    return e;
}

static void append_raw(const char *path, const char *text) {
    FILE *f = fopen(path, "a");
    if (!f) {
        CHECK(0, "cannot append to %s", path);
        return;
    }
    fputs(text, f);
    fclose(f);
}

static const fr_ledger_entry *find_run(const fr_ledger_entry *v, int n, const char *id) {
    for (int i = 0; i < n; i++)
        if (strcmp(v[i].run_id, id) == 0) return &v[i];
    return NULL;
}

static void test_prices(void) {
    fr_prices c = fr_prices_default(0), g = fr_prices_default(1);
    CHECK(c.usd_per_device_hour == 0.02 && c.watts_per_device == 8.0 && c.usd_per_kwh == 0.15,
          "cpu defaults %g %g %g", c.usd_per_device_hour, c.watts_per_device, c.usd_per_kwh);
    CHECK(g.usd_per_device_hour == 2.0 && g.watts_per_device == 700.0 && g.usd_per_kwh == 0.15,
          "gpu defaults %g %g %g", g.usd_per_device_hour, g.watts_per_device, g.usd_per_kwh);

    /* 2 h on 16 cores: 32 core-hours, 32*8/1000 = 0.256 kWh, 32*0.02 = $0.64 */
    fr_ledger_entry e = make_entry("train", 16, 7200.0);
    fr_ledger_price(&e, &c);
    CHECK(close_rel(e.device_hours, 32.0, 1e-15), "device_hours %.17g", e.device_hours);
    CHECK(close_rel(e.energy_kwh, 0.256, 1e-15), "energy %.17g", e.energy_kwh);
    CHECK(close_rel(e.cost_usd, 0.64, 1e-15), "cost %.17g", e.cost_usd);

    /* 90 min on 8 GPUs: 12 GPU-hours, 8.4 kWh, $24 */
    e = make_entry("train", 8, 5400.0);
    fr_ledger_price(&e, &g);
    CHECK(close_rel(e.device_hours, 12.0, 1e-15), "device_hours %.17g", e.device_hours);
    CHECK(close_rel(e.energy_kwh, 8.4, 1e-15), "energy %.17g", e.energy_kwh);
    CHECK(close_rel(e.cost_usd, 24.0, 1e-15), "cost %.17g", e.cost_usd);

    /* DeepSeek-V3: 2.788M GPU-hours at $2 = $5.576M */
    e = make_entry("train", 2048, 2788000.0 * 3600.0 / 2048.0);
    fr_ledger_price(&e, &g);
    CHECK(close_rel(e.device_hours, 2.788e6, 1e-12), "dsv3 device_hours %.17g", e.device_hours);
    CHECK(close_rel(e.cost_usd, 5.576e6, 1e-12), "dsv3 cost %.17g", e.cost_usd);

    /* custom prices: 3 devices, 1800 s -> 1.5 dh; 1.5 * 250 W = 0.375 kWh; 1.5 * 0.8 = $1.2 */
    fr_prices p = {0.8, 250.0, 0.3};
    e = make_entry("experiment", 3, 1800.0);
    fr_ledger_price(&e, &p);
    CHECK(close_rel(e.device_hours, 1.5, 1e-15) && close_rel(e.energy_kwh, 0.375, 1e-15) &&
              close_rel(e.cost_usd, 1.2, 1e-15),
          "custom %.17g %.17g %.17g", e.device_hours, e.energy_kwh, e.cost_usd);
}

static void test_roundtrip(void) {
    char path[512];
    path_in_tmp(path, sizeof path, "roundtrip.jsonl");
    fr_prices c = fr_prices_default(0);

    fr_ledger_entry a = make_entry("train", 4, 0);
    CHECK(fr_ledger_begin(path, &a) == FR_OK, "begin: %s", fr_last_error());
    CHECK(a.run_id[0] != 0 && strcmp(a.status, "running") == 0, "begin sets id '%s' and status '%s'", a.run_id,
          a.status);
    CHECK(a.start_unix > 1.6e9, "begin sets start_unix %g", a.start_unix);
    /* id: YYYYMMDDTHHMMSSZ-<pid>-<8 hex> */
    char pidpart[32];
    snprintf(pidpart, sizeof pidpart, "-%ld-", (long)getpid());
    CHECK(strlen(a.run_id) > 16 && a.run_id[8] == 'T' && a.run_id[15] == 'Z' && strstr(a.run_id, pidpart),
          "run id format '%s'", a.run_id);

    a.steps = 10;
    a.wall_s = 100;
    a.tokens = 123456789012345.0;
    a.flops = 1.2345678901234567e21;
    a.final_loss = 7.123456789012345;
    fr_ledger_price(&a, &c);
    CHECK(fr_ledger_update(path, &a) == FR_OK, "progress: %s", fr_last_error());

    fr_ledger_entry b = make_entry("experiment", 2, 0);
    snprintf(b.run_dir, sizeof b.run_dir, "runs/with \"quotes\"\nand newline");
    CHECK(fr_ledger_begin(path, &b) == FR_OK, "begin b: %s", fr_last_error());
    CHECK(strcmp(a.run_id, b.run_id) != 0, "ids differ");

    a.steps = 25;
    a.wall_s = 250.5;
    a.val_loss = 5.25;
    snprintf(a.status, sizeof a.status, "finished");
    fr_ledger_price(&a, &c);
    CHECK(fr_ledger_update(path, &a) == FR_OK, "end: %s", fr_last_error());

    fr_ledger_entry *v = NULL;
    int n = -1, skipped = -1;
    CHECK(fr_ledger_read(path, &v, &n, &skipped) == FR_OK, "read: %s", fr_last_error());
    CHECK(n == 2 && skipped == 0, "n %d skipped %d", n, skipped);
    if (n == 2) {
        CHECK(strcmp(v[0].run_id, a.run_id) == 0 && strcmp(v[1].run_id, b.run_id) == 0, "order of first appearance");
        const fr_ledger_entry *r = &v[0];
        CHECK(strcmp(r->status, "finished") == 0, "status %s", r->status);
        CHECK(r->steps == 25 && r->wall_s == 250.5, "latest record wins: steps %ld wall %g", r->steps, r->wall_s);
        CHECK(r->tokens == a.tokens && r->flops == a.flops, "exact doubles: %.17g %.17g", r->tokens, r->flops);
        CHECK(r->final_loss == a.final_loss && r->val_loss == 5.25, "losses %.17g %.17g", r->final_loss, r->val_loss);
        CHECK(r->device_hours == a.device_hours && r->energy_kwh == a.energy_kwh && r->cost_usd == a.cost_usd,
              "derived fields survive exactly");
        CHECK(r->start_unix == a.start_unix && r->n_devices == 4, "start %.17g n_devices %d", r->start_unix,
              r->n_devices);
        CHECK(strcmp(r->kind, "train") == 0 && strcmp(r->config, "configs/tiny.json") == 0 &&
                  strcmp(r->device, "cpu") == 0 && strcmp(r->run_dir, "runs/train") == 0,
              "strings");
        const fr_ledger_entry *s = &v[1];
        CHECK(strcmp(s->status, "crashed") == 0, "begin without end reads as crashed: %s", s->status);
        CHECK(isnan(s->final_loss) && isnan(s->val_loss), "NaN losses round-trip as NaN");
        CHECK(strcmp(s->run_dir, b.run_dir) == 0, "string escaping round-trips: %s", s->run_dir);
    }
    free(v);

    /* NaN is written as null, and every line is valid JSON */
    FILE *f = fopen(path, "r");
    CHECK(f != NULL, "open %s", path);
    if (f) {
        char line[4096];
        int lines = 0, ok = 0, nulls = 0;
        while (fgets(line, sizeof line, f)) {
            lines++;
            cJSON *o = cJSON_Parse(line);
            if (cJSON_IsObject(o)) ok++;
            if (cJSON_IsNull(cJSON_GetObjectItem(o, "val_loss"))) nulls++;
            cJSON_Delete(o);
        }
        fclose(f);
        CHECK(lines == 4 && ok == 4, "4 valid lines, got %d/%d", ok, lines);
        CHECK(nulls == 3, "val_loss null in 3 records, got %d", nulls);
    }
}

static void test_crashed_and_statuses(void) {
    char path[512];
    path_in_tmp(path, sizeof path, "statuses.jsonl");
    const char *st[] = {"finished", "interrupted", "failed", NULL};
    char ids[4][64];
    for (int i = 0; i < 4; i++) {
        fr_ledger_entry e = make_entry("train", 1, 0);
        CHECK(fr_ledger_begin(path, &e) == FR_OK, "begin: %s", fr_last_error());
        snprintf(ids[i], sizeof ids[i], "%s", e.run_id);
        for (int k = 1; k <= 3; k++) {
            e.steps = k * 100;
            e.wall_s = k * 10.0;
            e.final_loss = 8.0 - k;
            CHECK(fr_ledger_update(path, &e) == FR_OK, "progress: %s", fr_last_error());
        }
        if (st[i]) {
            snprintf(e.status, sizeof e.status, "%s", st[i]);
            e.steps = 350;
            CHECK(fr_ledger_update(path, &e) == FR_OK, "end: %s", fr_last_error());
        }
    }
    fr_ledger_entry *v = NULL;
    int n = 0, skipped = 0;
    CHECK(fr_ledger_read(path, &v, &n, &skipped) == FR_OK && n == 4 && skipped == 0, "read n=%d skipped=%d", n,
          skipped);
    for (int i = 0; i < 4 && n == 4; i++) {
        const fr_ledger_entry *r = find_run(v, n, ids[i]);
        CHECK(r != NULL, "run %d present", i);
        if (!r) continue;
        const char *want = st[i] ? st[i] : "crashed";
        CHECK(strcmp(r->status, want) == 0, "run %d status %s want %s", i, r->status, want);
        long want_steps = st[i] ? 350 : 300;
        CHECK(r->steps == want_steps && r->final_loss == 5.0, "run %d steps %ld loss %g", i, r->steps, r->final_loss);
    }
    free(v);

    /* invalid updates */
    fr_ledger_entry e = make_entry("train", 1, 0);
    snprintf(e.status, sizeof e.status, "finished");
    CHECK(fr_ledger_update(path, &e) == FR_ERR_ARG, "update without run_id is rejected");
    snprintf(e.run_id, sizeof e.run_id, "x");
    snprintf(e.status, sizeof e.status, "done");
    CHECK(fr_ledger_update(path, &e) == FR_ERR_ARG && strstr(fr_last_error(), "done"), "unknown status: %s",
          fr_last_error());
    e.n_devices = -1;
    CHECK(fr_ledger_begin(path, &e) == FR_ERR_ARG, "negative n_devices rejected");
    CHECK(fr_ledger_begin(NULL, &e) == FR_ERR_ARG, "NULL path rejected");
}

static void test_torn_and_malformed(void) {
    char path[512];
    path_in_tmp(path, sizeof path, "torn.jsonl");
    fr_ledger_entry a = make_entry("train", 2, 0);
    CHECK(fr_ledger_begin(path, &a) == FR_OK, "begin");
    a.steps = 5;
    snprintf(a.status, sizeof a.status, "finished");
    CHECK(fr_ledger_update(path, &a) == FR_OK, "end");

    /* a torn record: the first half of a real line, no newline */
    fr_ledger_entry b = make_entry("train", 2, 0);
    char other[512];
    path_in_tmp(other, sizeof other, "torn-src.jsonl");
    CHECK(fr_ledger_begin(other, &b) == FR_OK, "begin other");
    FILE *f = fopen(other, "r");
    char line[4096] = {0};
    if (f) {
        if (!fgets(line, sizeof line, f)) line[0] = 0;
        fclose(f);
    }
    size_t half = strlen(line) / 2;
    CHECK(half > 20, "record line has length %zu", strlen(line));
    line[half] = 0;
    append_raw(path, line);

    fr_ledger_entry *v = NULL;
    int n = 0, skipped = 0;
    CHECK(fr_ledger_read(path, &v, &n, &skipped) == FR_OK, "read: %s", fr_last_error());
    CHECK(n == 1 && skipped == 1, "torn last line skipped and counted: n %d skipped %d", n, skipped);
    CHECK(n == 1 && strcmp(v[0].status, "finished") == 0 && v[0].steps == 5, "intact run survives");
    free(v);

    /* the next append must not be glued to the torn fragment */
    fr_ledger_entry c = make_entry("experiment", 1, 0);
    CHECK(fr_ledger_begin(path, &c) == FR_OK, "append after torn line");
    CHECK(fr_ledger_read(path, &v, &n, &skipped) == FR_OK, "read");
    CHECK(n == 2 && skipped == 1, "record after torn line survives: n %d skipped %d", n, skipped);
    CHECK(n == 2 && find_run(v, n, c.run_id) != NULL, "new run present");
    free(v);

    /* malformed lines of several kinds; blank lines are ignored, not counted */
    append_raw(path, "not json at all\n"
                     "[1,2,3]\n"
                     "\n"
                     "   \n"
                     "{\"record\":\"progress\"}\n"
                     "{\"record\":\"launch\",\"run_id\":\"zz\"}\n"
                     "{\"record\":\"end\",\"run_id\":\"\"}\n"
                     "{\"record\":\"end\",\"run_id\":\"handmade\",\"status\":\"interrupted\",\"steps\":7,"
                     "\"wall_s\":36,\"n_devices\":10,\"extra\":{\"ignored\":true}}\n");
    CHECK(fr_ledger_read(path, &v, &n, &skipped) == FR_OK, "read");
    CHECK(n == 3 && skipped == 6, "malformed lines counted: n %d skipped %d", n, skipped);
    const fr_ledger_entry *h = find_run(v, n, "handmade");
    CHECK(h && strcmp(h->status, "interrupted") == 0 && h->steps == 7 && h->n_devices == 10 && isnan(h->final_loss),
          "hand-written end record with unknown fields and missing fields");
    free(v);
    CHECK(fr_ledger_read(path, &v, &n, NULL) == FR_OK && n == 3, "n_skipped is optional");
    free(v);
}

static void test_missing_and_unwritable(void) {
    char path[512];
    path_in_tmp(path, sizeof path, "does-not-exist.jsonl");
    fr_ledger_entry *v = (fr_ledger_entry *)1;
    int n = -1, skipped = -1;
    CHECK(fr_ledger_read(path, &v, &n, &skipped) == FR_OK && n == 0 && skipped == 0 && v == NULL,
          "missing ledger is empty");

    char bad[512];
    path_in_tmp(bad, sizeof bad, "no-such-dir/ledger.jsonl");
    fr_ledger_entry e = make_entry("train", 1, 0);
    CHECK(fr_ledger_begin(bad, &e) == FR_ERR_IO, "unwritable path gives FR_ERR_IO");
    CHECK(strstr(fr_last_error(), bad) != NULL, "message names the path: %s", fr_last_error());

    /* a directory in place of the ledger */
    CHECK(fr_ledger_begin(tmpdir, &e) == FR_ERR_IO && strstr(fr_last_error(), tmpdir), "directory: %s",
          fr_last_error());
    CHECK(fr_ledger_read(tmpdir, &v, &n, NULL) == FR_ERR_IO && strstr(fr_last_error(), tmpdir), "read dir: %s",
          fr_last_error());

    /* a path below a regular file (ENOTDIR, also for root) */
    char under_file[600];
    snprintf(under_file, sizeof under_file, "%s/ledger.jsonl", path);
    append_raw(path, "");
    e = make_entry("train", 1, 0);
    CHECK(fr_ledger_begin(under_file, &e) == FR_ERR_IO && strstr(fr_last_error(), under_file), "below a file: %s",
          fr_last_error());
    CHECK(fr_ledger_read(under_file, &v, &n, NULL) == FR_ERR_IO && strstr(fr_last_error(), under_file),
          "read below a file: %s", fr_last_error());
    unlink(path);

    /* a read-only ledger (root ignores permissions, so only checked as a normal user) */
    char ro[512];
    path_in_tmp(ro, sizeof ro, "readonly.jsonl");
    append_raw(ro, "");
    chmod(ro, 0444);
    if (geteuid() != 0) {
        e = make_entry("train", 1, 0);
        CHECK(fr_ledger_begin(ro, &e) == FR_ERR_IO && strstr(fr_last_error(), ro), "read-only: %s", fr_last_error());
        snprintf(e.run_id, sizeof e.run_id, "x");
        snprintf(e.status, sizeof e.status, "finished");
        CHECK(fr_ledger_update(ro, &e) == FR_ERR_IO && strstr(fr_last_error(), ro), "read-only update: %s",
              fr_last_error());
    }
    chmod(ro, 0644);
}

static void test_unique_ids(void) {
    char path[512];
    path_in_tmp(path, sizeof path, "ids.jsonl");
    enum { N = 300 };
    static char ids[N][64];
    for (int i = 0; i < N; i++) {
        fr_ledger_entry e = make_entry("experiment", 1, 0);
        CHECK(fr_ledger_begin(path, &e) == FR_OK, "begin %d", i);
        snprintf(ids[i], sizeof ids[i], "%s", e.run_id);
    }
    int dup = 0;
    for (int i = 0; i < N; i++)
        for (int j = i + 1; j < N; j++) dup += strcmp(ids[i], ids[j]) == 0;
    CHECK(dup == 0, "%d duplicate run ids among %d", dup, N);
    fr_ledger_entry *v = NULL;
    int n = 0;
    CHECK(fr_ledger_read(path, &v, &n, NULL) == FR_OK && n == N, "%d runs read back, want %d", n, N);
    free(v);
}

/* Several processes append many long records at once; every line must parse. */
static void test_concurrent(void) {
    char path[512];
    path_in_tmp(path, sizeof path, "concurrent.jsonl");
    enum { PROCS = 6, RUNS = 8, PROGRESS = 25 };
    pid_t pids[PROCS];
    for (int p = 0; p < PROCS; p++) {
        pids[p] = fork();
        if (pids[p] == 0) {
            int bad = 0;
            for (int r = 0; r < RUNS; r++) {
                fr_ledger_entry e = make_entry("train", p + 1, 0);
                /* long lines (~1.5 KB) make interleaving likely if appends were not atomic */
                memset(e.run_dir, 'a' + p, sizeof e.run_dir - 1);
                e.run_dir[sizeof e.run_dir - 1] = 0;
                memset(e.config, 'A' + r, sizeof e.config - 1);
                e.config[sizeof e.config - 1] = 0;
                bad |= fr_ledger_begin(path, &e) != FR_OK;
                for (int k = 1; k <= PROGRESS; k++) {
                    e.steps = k;
                    e.wall_s = k;
                    bad |= fr_ledger_update(path, &e) != FR_OK;
                }
                snprintf(e.status, sizeof e.status, "finished");
                e.steps = 1000 + p * 100 + r;
                bad |= fr_ledger_update(path, &e) != FR_OK;
            }
            _exit(bad ? 3 : 0);
        }
    }
    int children_ok = 1;
    for (int p = 0; p < PROCS; p++) {
        int st = 0;
        if (pids[p] < 0 || waitpid(pids[p], &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) children_ok = 0;
    }
    CHECK(children_ok, "all writer processes succeeded");

    /* raw check: every line is one complete JSON object */
    FILE *f = fopen(path, "r");
    int lines = 0, good = 0;
    if (f) {
        char *line = NULL;
        size_t cap = 0;
        while (getline(&line, &cap, f) > 0) {
            lines++;
            cJSON *o = cJSON_Parse(line);
            const cJSON *dir = cJSON_GetObjectItem(o, "run_dir");
            if (cJSON_IsString(dir) && strlen(dir->valuestring) == 511) good++;
            cJSON_Delete(o);
        }
        free(line);
        fclose(f);
    }
    int want = PROCS * RUNS * (PROGRESS + 2);
    CHECK(lines == want && good == want, "concurrent lines: %d good of %d, want %d", good, lines, want);

    fr_ledger_entry *v = NULL;
    int n = 0, skipped = -1;
    CHECK(fr_ledger_read(path, &v, &n, &skipped) == FR_OK, "read: %s", fr_last_error());
    CHECK(n == PROCS * RUNS && skipped == 0, "runs %d skipped %d", n, skipped);
    int fin = 0, right = 0;
    for (int i = 0; i < n; i++) {
        fin += strcmp(v[i].status, "finished") == 0;
        int p = v[i].run_dir[0] - 'a', r = v[i].config[0] - 'A';
        right += v[i].steps == 1000 + p * 100 + r && v[i].n_devices == p + 1;
    }
    CHECK(fin == n && right == n, "finished %d, consistent %d of %d", fin, right, n);
    free(v);
}

/* A run without an end record is "running" while its trainer holds RUN_DIR/.lock (flock, as
 * train.c takes it), "crashed" once the lock is gone; of two runs naming the same folder only
 * the newer can be running; an ended run keeps its status whatever the lock. */
static void test_running_while_locked(void) {
    char path[512], dir[512], lock[600];
    path_in_tmp(path, sizeof path, "running.jsonl");
    path_in_tmp(dir, sizeof dir, "run-folder");
    snprintf(lock, sizeof lock, "%s/.lock", dir);
    CHECK(mkdir(dir, 0755) == 0, "mkdir %s", dir);
    fr_ledger_entry a = make_entry("train", 1, 5.0), b = make_entry("train", 1, 5.0), c = make_entry("train", 1, 5.0);
    snprintf(a.run_dir, sizeof a.run_dir, "%s", dir);
    snprintf(b.run_dir, sizeof b.run_dir, "%s", dir);
    a.start_unix = 100, b.start_unix = 200, c.start_unix = 50; /* c: an older run of the folder, ended */
    CHECK(fr_ledger_begin(path, &a) == FR_OK, "begin a: %s", fr_last_error());
    const int fd = open(lock, O_RDWR | O_CREAT, 0644); /* the trainer's lock */
    CHECK(fd >= 0 && flock(fd, LOCK_EX) == 0, "lock %s", lock);
    const char *want[][3] = {{"running", NULL, NULL}, {"crashed", "running", "finished"}, {"crashed", "crashed", "finished"}};
    for (int phase = 0; phase < 3; phase++) {
        if (phase == 1) { /* a newer run takes the folder; an older one of it ends late */
            CHECK(fr_ledger_begin(path, &b) == FR_OK, "begin b: %s", fr_last_error());
            CHECK(fr_ledger_begin(path, &c) == FR_OK, "begin c: %s", fr_last_error());
            snprintf(c.run_dir, sizeof c.run_dir, "%s", dir);
            snprintf(c.status, sizeof c.status, "finished");
            CHECK(fr_ledger_update(path, &c) == FR_OK, "end c: %s", fr_last_error());
        }
        if (phase == 2) close(fd); /* the trainer is gone */
        fr_ledger_entry *v = NULL;
        int n = 0;
        CHECK(fr_ledger_read(path, &v, &n, NULL) == FR_OK, "read: %s", fr_last_error());
        const char *ids[3] = {a.run_id, b.run_id, c.run_id};
        for (int k = 0; k < 3; k++) {
            const fr_ledger_entry *r = find_run(v, n, ids[k]);
            if (!want[phase][k]) {
                CHECK(r == NULL || phase == 0, "phase %d: run %d not begun yet", phase, k);
                continue;
            }
            CHECK(r && strcmp(r->status, want[phase][k]) == 0, "phase %d run %d: status %s, want %s", phase, k,
                  r ? r->status : "(none)", want[phase][k]);
        }
        free(v);
    }
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/fr_test_ledger_XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    test_prices();
    test_roundtrip();
    test_crashed_and_statuses();
    test_running_while_locked();
    test_torn_and_malformed();
    test_missing_and_unwritable();
    test_unique_ids();
    test_concurrent();
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) printf("warning: could not remove %s\n", tmpdir);
    return fr_test_finish("test_ledger");
}
