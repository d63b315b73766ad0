/* ledger.c — the run ledger: an append-only JSONL file with one line per record.
 *
 * Record format (one JSON object per line, written by cJSON):
 *   {"v":1,"record":"begin"|"progress"|"end","time_unix":T,"run_id":"...","kind":"train",
 *    "status":"running",...,"n_devices":16,"wall_s":..,"device_hours":..,"final_loss":null,...}
 * Non-finite numbers (NaN losses before the first step) are written as null.
 *
 * Writing: the line is built in memory and appended with one write(2) to a descriptor opened
 * with O_APPEND, under an exclusive flock(2) (so a short write can be finished without another
 * writer slipping in), then fsync'd. If the file does not end with a newline (an earlier
 * writer died mid-line), a newline is written first so that the torn fragment stays on its
 * own line and only that fragment is lost.
 *
 * Reading: lines that do not parse as a record are skipped and counted; records are grouped
 * by run_id and the latest record of a run gives its entry; a run whose latest record is not
 * "end" is reported as "running" while its trainer still holds the run folder's lock (see
 * run_still_going), else as "crashed". */
#define _GNU_SOURCE
#include "core/internal.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

fr_prices fr_prices_default(int gpu) {
    fr_prices p;
    if (gpu) {
        p.usd_per_device_hour = 2.00; /* DeepSeek-V3 report: H800 rental at $2 per GPU-hour */
        p.watts_per_device = 700.0;   /* H100/H800 SXM board power */
    } else {
        p.usd_per_device_hour = 0.02; /* one vCPU-hour of a general-purpose cloud VM */
        p.watts_per_device = 8.0;     /* server CPU package power divided by its cores */
    }
    p.usd_per_kwh = 0.15;
    return p;
}

void fr_ledger_price(fr_ledger_entry *e, const fr_prices *prices) {
    if (!e) return;
    fr_prices def = fr_prices_default(0);
    const fr_prices *p = prices ? prices : &def;
    double nd = e->n_devices > 0 ? (double)e->n_devices : 0.0;
    e->device_hours = e->wall_s * nd / 3600.0;
    e->energy_kwh = e->device_hours * p->watts_per_device / 1000.0;
    e->cost_usd = e->device_hours * p->usd_per_device_hour;
}

static double now_unix(void) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + 1e-6 * (double)tv.tv_usec;
}

static const char *const STATUSES[] = {"running", "finished", "interrupted", "crashed", "failed"};

static int known_status(const char *s) {
    for (size_t i = 0; i < sizeof STATUSES / sizeof STATUSES[0]; i++)
        if (strcmp(s, STATUSES[i]) == 0) return 1;
    return 0;
}

static int add_number(cJSON *o, const char *key, double v) {
    cJSON *item = isfinite(v) ? cJSON_AddNumberToObject(o, key, v) : cJSON_AddNullToObject(o, key);
    return item != NULL;
}

/* Serialize e as one record line (with the trailing newline). */
static char *record_line(const fr_ledger_entry *e, const char *record, const char *status) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    int ok = cJSON_AddNumberToObject(o, "v", 1) != NULL && cJSON_AddStringToObject(o, "record", record) != NULL &&
             add_number(o, "time_unix", now_unix()) && cJSON_AddStringToObject(o, "run_id", e->run_id) != NULL &&
             cJSON_AddStringToObject(o, "kind", e->kind) != NULL &&
             cJSON_AddStringToObject(o, "status", status) != NULL &&
             cJSON_AddStringToObject(o, "run_dir", e->run_dir) != NULL &&
             cJSON_AddStringToObject(o, "config", e->config) != NULL &&
             cJSON_AddStringToObject(o, "device", e->device) != NULL &&
             cJSON_AddStringToObject(o, "precision", e->precision[0] ? e->precision : "fp32") != NULL &&
             add_number(o, "n_devices", (double)e->n_devices) && add_number(o, "start_unix", e->start_unix) &&
             add_number(o, "wall_s", e->wall_s) && add_number(o, "steps", (double)e->steps) &&
             add_number(o, "tokens", e->tokens) && add_number(o, "flops", e->flops) &&
             add_number(o, "device_hours", e->device_hours) && add_number(o, "energy_kwh", e->energy_kwh) &&
             add_number(o, "cost_usd", e->cost_usd) && add_number(o, "final_loss", e->final_loss) &&
             add_number(o, "val_loss", e->val_loss);
    char *json = ok ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    if (!json) return NULL;
    size_t n = strlen(json);
    char *line = malloc(n + 2);
    if (line) {
        memcpy(line, json, n);
        line[n] = '\n';
        line[n + 1] = 0;
    }
    cJSON_free(json);
    return line;
}

/* Append `line` to the ledger at `path` (see the header comment for the protocol). */
static int append_line(const char *path, const char *line) {
    size_t len = strlen(line);
    int fd = open(path, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return fr_error(FR_ERR_IO, "cannot open ledger %s for appending: %s", path, strerror(errno));
    int rc = FR_OK;
    while (flock(fd, LOCK_EX) != 0) {
        if (errno == EINTR) continue;
        /* Filesystems without flock still give atomic O_APPEND writes of one line. */
        if (errno == ENOLCK || errno == EOPNOTSUPP) break;
        rc = fr_error(FR_ERR_IO, "cannot lock ledger %s: %s", path, strerror(errno));
        close(fd);
        return rc;
    }
    struct stat st;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0) {
        char last = '\n';
        if (pread(fd, &last, 1, st.st_size - 1) == 1 && last != '\n') {
            /* Close the torn fragment left by a writer that died mid-line. */
            ssize_t w;
            do w = write(fd, "\n", 1);
            while (w < 0 && errno == EINTR);
        }
    }
    size_t off = 0;
    while (off < len) {
        ssize_t w = write(fd, line + off, len - off);
        if (w < 0) {
            if (errno == EINTR) continue;
            rc = fr_error(FR_ERR_IO, "cannot write ledger %s: %s", path, strerror(errno));
            break;
        }
        if (w == 0) {
            rc = fr_error(FR_ERR_IO, "cannot write ledger %s: no progress", path);
            break;
        }
        off += (size_t)w;
    }
    if (rc == FR_OK && fsync(fd) != 0 && errno != EINVAL && errno != EROFS)
        rc = fr_error(FR_ERR_IO, "cannot fsync ledger %s: %s", path, strerror(errno));
    if (close(fd) != 0 && rc == FR_OK) rc = fr_error(FR_ERR_IO, "cannot close ledger %s: %s", path, strerror(errno));
    return rc;
}

static uint64_t random_u64(void) {
    uint64_t r = 0;
    ssize_t got = getrandom(&r, sizeof r, GRND_NONBLOCK);
    if (got != (ssize_t)sizeof r) {
        /* No entropy source: mix time, pid and a counter through splitmix64. */
        static uint64_t counter = 0;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t x = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^ ((uint64_t)getpid() << 40) ^
                     (++counter * 0x9E3779B97F4A7C15ull);
        x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
        x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
        r = x ^ (x >> 31);
    }
    return r;
}

static int check_entry(const char *ledger_path, const fr_ledger_entry *e, const char *fn) {
    if (!ledger_path || !ledger_path[0]) return fr_error(FR_ERR_ARG, "%s: no ledger path given", fn);
    if (!e) return fr_error(FR_ERR_ARG, "%s: no entry given", fn);
    if (e->n_devices < 0) return fr_error(FR_ERR_ARG, "%s: n_devices is negative (%d)", fn, e->n_devices);
    return FR_OK;
}

int fr_ledger_begin(const char *ledger_path, fr_ledger_entry *e) {
    fr_clear_error();
    FR_CHECK(check_entry(ledger_path, e, "fr_ledger_begin"));
    struct timeval tv;
    gettimeofday(&tv, NULL);
    time_t secs = tv.tv_sec;
    struct tm tm;
    gmtime_r(&secs, &tm);
    char stamp[32];
    strftime(stamp, sizeof stamp, "%Y%m%dT%H%M%SZ", &tm);
    snprintf(e->run_id, sizeof e->run_id, "%s-%ld-%08llx", stamp, (long)getpid(),
             (unsigned long long)(random_u64() & 0xffffffffull));
    if (!e->kind[0]) snprintf(e->kind, sizeof e->kind, "train");
    snprintf(e->status, sizeof e->status, "running");
    if (e->start_unix <= 0) e->start_unix = (double)tv.tv_sec + 1e-6 * (double)tv.tv_usec;
    char *line = record_line(e, "begin", "running");
    if (!line) return fr_error(FR_ERR_NOMEM, "out of memory building a ledger record");
    int rc = append_line(ledger_path, line);
    free(line);
    return rc;
}

int fr_ledger_update(const char *ledger_path, const fr_ledger_entry *e) {
    fr_clear_error();
    FR_CHECK(check_entry(ledger_path, e, "fr_ledger_update"));
    if (!e->run_id[0]) return fr_error(FR_ERR_ARG, "fr_ledger_update: the entry has no run_id (call fr_ledger_begin)");
    if (memchr(e->status, 0, sizeof e->status) == NULL || !known_status(e->status))
        return fr_error(FR_ERR_ARG,
                        "fr_ledger_update: status '%.*s' is not one of running, finished, interrupted, crashed, failed",
                        (int)sizeof e->status, e->status);
    const char *record = strcmp(e->status, "running") == 0 ? "progress" : "end";
    char *line = record_line(e, record, e->status);
    if (!line) return fr_error(FR_ERR_NOMEM, "out of memory building a ledger record");
    int rc = append_line(ledger_path, line);
    free(line);
    return rc;
}

/* ---- reading */

static void copy_str(char *dst, size_t n, const cJSON *o, const char *key) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);
    if (cJSON_IsString(it) && it->valuestring) snprintf(dst, n, "%s", it->valuestring);
    else dst[0] = 0;
}

static double get_num(const cJSON *o, const char *key, double missing) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(it) ? it->valuedouble : missing;
}

/* Parse one record line into *e; returns 1 for "end" records, 0 for begin/progress, -1 if
 * the line is not a valid record. */
static int parse_record(const char *line, fr_ledger_entry *e) {
    cJSON *o = cJSON_Parse(line);
    if (!cJSON_IsObject(o)) {
        cJSON_Delete(o);
        return -1;
    }
    const cJSON *rec = cJSON_GetObjectItemCaseSensitive(o, "record");
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(o, "run_id");
    int kind = -1;
    if (cJSON_IsString(rec) && cJSON_IsString(id) && id->valuestring[0] &&
        strlen(id->valuestring) < sizeof e->run_id) {
        if (strcmp(rec->valuestring, "end") == 0) kind = 1;
        else if (strcmp(rec->valuestring, "begin") == 0 || strcmp(rec->valuestring, "progress") == 0) kind = 0;
    }
    if (kind >= 0) {
        memset(e, 0, sizeof *e);
        copy_str(e->run_id, sizeof e->run_id, o, "run_id");
        copy_str(e->kind, sizeof e->kind, o, "kind");
        copy_str(e->status, sizeof e->status, o, "status");
        copy_str(e->run_dir, sizeof e->run_dir, o, "run_dir");
        copy_str(e->config, sizeof e->config, o, "config");
        copy_str(e->device, sizeof e->device, o, "device");
        copy_str(e->precision, sizeof e->precision, o, "precision");
        double nd = get_num(o, "n_devices", 0);
        e->n_devices = nd > 0 && nd < 1e9 ? (int)nd : 0;
        e->start_unix = get_num(o, "start_unix", 0);
        e->wall_s = get_num(o, "wall_s", 0);
        double steps = get_num(o, "steps", 0);
        e->steps = steps > 0 && steps < 9e18 ? (long)steps : 0;
        e->tokens = get_num(o, "tokens", 0);
        e->flops = get_num(o, "flops", 0);
        e->device_hours = get_num(o, "device_hours", 0);
        e->energy_kwh = get_num(o, "energy_kwh", 0);
        e->cost_usd = get_num(o, "cost_usd", 0);
        e->final_loss = get_num(o, "final_loss", NAN);
        e->val_loss = get_num(o, "val_loss", NAN);
        if (kind == 1 && (!e->status[0] || strcmp(e->status, "running") == 0))
            snprintf(e->status, sizeof e->status, "finished");
    }
    cJSON_Delete(o);
    return kind;
}

static uint64_t hash_str(const char *s) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/* Whether the trainer of a run without an end record is still at work: train.c holds an
 * exclusive flock(2) on RUN_DIR/.lock for the whole of a run (a resumed run keeps its run id,
 * so this covers every segment). Of the runs that name the same folder only the one begun last
 * can be its holder: a crashed run whose folder a newer run took over stays crashed. A
 * relative run folder is looked up from the current directory, as the trainer named it; a
 * folder not found there (another machine, another directory) reads as crashed, as every run
 * without an end record did before this check, `frugal cost` included during a long run. */
static int run_still_going(const fr_ledger_entry *all, int n, int i) {
    const fr_ledger_entry *e = &all[i];
    if (!e->run_dir[0]) return 0;
    for (int j = 0; j < n; j++)
        if (j != i && all[j].start_unix > e->start_unix && strcmp(all[j].run_dir, e->run_dir) == 0) return 0;
    char path[sizeof e->run_dir + 8];
    if ((size_t)snprintf(path, sizeof path, "%s/.lock", e->run_dir) >= sizeof path) return 0;
    const int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    int rc;
    while ((rc = flock(fd, LOCK_SH | LOCK_NB)) != 0 && errno == EINTR) {
    }
    const int held = rc != 0 && errno == EWOULDBLOCK;
    close(fd); /* drops the shared lock if this took it */
    return held;
}

int fr_ledger_read(const char *ledger_path, fr_ledger_entry **entries, int *n_entries, int *n_skipped) {
    fr_clear_error();
    if (!entries || !n_entries) return fr_error(FR_ERR_ARG, "fr_ledger_read: entries and n_entries are required");
    *entries = NULL;
    *n_entries = 0;
    if (n_skipped) *n_skipped = 0;
    if (!ledger_path || !ledger_path[0]) return fr_error(FR_ERR_ARG, "fr_ledger_read: no ledger path given");
    struct stat st;
    if (stat(ledger_path, &st) != 0) {
        if (errno == ENOENT) return FR_OK; /* no runs yet */
        return fr_error(FR_ERR_IO, "cannot open ledger %s: %s", ledger_path, strerror(errno));
    }
    if (S_ISDIR(st.st_mode)) return fr_error(FR_ERR_IO, "ledger %s is a directory", ledger_path);
    char *buf = NULL;
    size_t len = 0;
    FR_CHECK(fr_read_file(ledger_path, &buf, &len));

    int n = 0, cap = 0, skipped = 0;
    fr_ledger_entry *out = NULL;
    unsigned char *ended = NULL; /* ended[i]: the latest record of run i is "end" */
    size_t hcap = 0;             /* open-addressing table run_id -> index + 1 */
    int *table = NULL;
    int rc = FR_OK;
    fr_ledger_entry rec;

    char *p = buf, *end = buf + len;
    while (p < end) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        char *line_end = nl ? nl : end;
        *line_end = 0;
        char *line = p;
        p = nl ? nl + 1 : end;
        /* blank lines (only whitespace) carry nothing and are not counted */
        const char *q = line;
        while (*q == ' ' || *q == '\t' || *q == '\r') q++;
        if (*q == 0) continue;
        if ((size_t)(line_end - line) != strlen(line)) { /* embedded NUL: torn/garbage */
            skipped++;
            continue;
        }
        int kind = parse_record(line, &rec);
        if (kind < 0) {
            skipped++;
            continue;
        }
        if ((size_t)(n + 1) * 2 > hcap) { /* grow and rehash */
            size_t ncap = hcap ? hcap * 2 : 64;
            int *nt = calloc(ncap, sizeof *nt);
            if (!nt) {
                rc = fr_error(FR_ERR_NOMEM, "out of memory reading ledger %s", ledger_path);
                break;
            }
            for (int i = 0; i < n; i++) {
                size_t h = (size_t)(hash_str(out[i].run_id) & (ncap - 1));
                while (nt[h]) h = (h + 1) & (ncap - 1);
                nt[h] = i + 1;
            }
            free(table);
            table = nt;
            hcap = ncap;
        }
        size_t h = (size_t)(hash_str(rec.run_id) & (hcap - 1));
        int idx = -1;
        while (table[h]) {
            if (strcmp(out[table[h] - 1].run_id, rec.run_id) == 0) {
                idx = table[h] - 1;
                break;
            }
            h = (h + 1) & (hcap - 1);
        }
        if (idx < 0) {
            if (n == cap) {
                int ncap = cap ? cap * 2 : 16;
                fr_ledger_entry *ne = realloc(out, (size_t)ncap * sizeof *ne);
                unsigned char *nd = ne ? realloc(ended, (size_t)ncap) : NULL;
                if (ne) out = ne;
                if (nd) ended = nd;
                if (!ne || !nd) {
                    rc = fr_error(FR_ERR_NOMEM, "out of memory reading ledger %s", ledger_path);
                    break;
                }
                cap = ncap;
            }
            idx = n++;
            table[h] = idx + 1;
        }
        out[idx] = rec;
        ended[idx] = (unsigned char)kind;
    }
    free(table);
    free(buf);
    if (rc != FR_OK) {
        free(out);
        free(ended);
        return rc;
    }
    for (int i = 0; i < n; i++)
        if (!ended[i]) snprintf(out[i].status, sizeof out[i].status, "%s", run_still_going(out, n, i) ? "running" : "crashed");
    free(ended);
    *entries = out;
    *n_entries = n;
    if (n_skipped) *n_skipped = skipped;
    return FR_OK;
}
