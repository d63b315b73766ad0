/* cli_util.c — option parsing, error printing and formatting helpers for the CLI. */
#include "cli.h"

#include "frugal.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int cli_fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("frugal: error: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return CLI_EXIT_FAIL;
}

int cli_fail_lib(const char *what) {
    const char *msg = fr_last_error();
    return cli_fail("%s", (msg && msg[0]) ? msg : what);
}

int cli_usage_error(const char *cmd, void (*usage)(FILE *), const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "frugal %s: ", cmd);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    /* one line pointing to the help, not the whole help: the message stays visible */
    if (usage) fprintf(stderr, "Run 'frugal %s --help' for usage.\n", cmd);
    return CLI_EXIT_USAGE;
}

int cli_is_help(const char *arg) { return strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0; }

int cli_opt_value(const char *cmd, void (*usage)(FILE *), int argc, char **argv, int *i,
                  const char *name, const char **value) {
    const char *arg = argv[*i];
    size_t n = strlen(name);
    if (strncmp(arg, name, n) != 0) return 0;
    if (arg[n] == '=') {
        if (arg[n + 1] == 0) {
            cli_usage_error(cmd, usage, "option '%s' needs a value", name);
            return -1;
        }
        *value = arg + n + 1;
        return 1;
    }
    if (arg[n] != 0) return 0; /* a longer option that merely starts with `name` */
    if (*i + 1 >= argc || (argv[*i + 1][0] == '-' && argv[*i + 1][1] == '-')) {
        cli_usage_error(cmd, usage, "option '%s' needs a value", name);
        return -1;
    }
    *i += 1;
    *value = argv[*i];
    return 1;
}

int cli_opt_flag(const char *cmd, void (*usage)(FILE *), const char *arg, const char *name) {
    size_t n = strlen(name);
    if (strncmp(arg, name, n) != 0) return 0;
    if (arg[n] == 0) return 1;
    if (arg[n] == '=') {
        cli_usage_error(cmd, usage, "option '%s' takes no value", name);
        return -1;
    }
    return 0;
}

/* The table form of the two matchers above, so that a command's plain options are one list
 * rather than a chain of near-identical branches; each row goes through the same matcher as
 * before, so messages and edge cases cannot drift apart between commands. */
int cli_opt_match(const char *cmd, void (*usage)(FILE *), int argc, char **argv, int *i, const cli_opt *opts,
                  int n_opts) {
    for (int k = 0; k < n_opts; k++) {
        int r = opts[k].value ? cli_opt_value(cmd, usage, argc, argv, i, opts[k].name, opts[k].value)
                              : cli_opt_flag(cmd, usage, argv[*i], opts[k].name);
        if (r > 0 && opts[k].flag) *opts[k].flag = 1;
        if (r != 0) return r;
    }
    return 0;
}

int cli_parse_int(const char *cmd, void (*usage)(FILE *), const char *opt, const char *text,
                  long lo, long hi, long *out) {
    const char *p = text;
    if (*p == '+') p++;
    int ok = *p >= '0' && *p <= '9';
    char *end = NULL;
    errno = 0;
    long v = ok ? strtol(p, &end, 10) : 0;
    if (!ok || errno != 0 || *end != 0 || v < lo || v > hi) {
        if (hi == LONG_MAX)
            cli_usage_error(cmd, usage, "option '%s' expects an integer >= %ld, got '%s'", opt, lo, text);
        else
            cli_usage_error(cmd, usage, "option '%s' expects an integer in [%ld, %ld], got '%s'", opt, lo,
                            hi, text);
        return -1;
    }
    *out = v;
    return 0;
}

int cli_parse_double(const char *cmd, void (*usage)(FILE *), const char *opt, const char *text,
                     double lo, double hi, double *out) {
    char *end = NULL;
    errno = 0;
    double v = strtod(text, &end);
    if (end == text || *end != 0 || errno != 0 || !isfinite(v) || v < lo || v > hi) {
        if (isinf(hi))
            cli_usage_error(cmd, usage, "option '%s' expects a number >= %g, got '%s'", opt, lo, text);
        else
            cli_usage_error(cmd, usage, "option '%s' expects a number in [%g, %g], got '%s'", opt, lo, hi, text);
        return -1;
    }
    *out = v;
    return 0;
}

void cli_json_string(FILE *f, const char *s) {
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        switch (*p) {
        case '"': fputs("\\\"", f); break;
        case '\\': fputs("\\\\", f); break;
        case '\n': fputs("\\n", f); break;
        case '\r': fputs("\\r", f); break;
        case '\t': fputs("\\t", f); break;
        default:
            if (*p < 0x20) fprintf(f, "\\u%04x", *p);
            else fputc(*p, f);
        }
    }
    fputc('"', f);
}

void cli_json_number(FILE *f, double x) {
    if (!isfinite(x)) fputs("null", f);
    else fprintf(f, "%.17g", x);
}

const char *cli_human_count(char *buf, size_t n, double x) {
    static const char *suffix[] = {"", "K", "M", "B", "T"};
    int s = 0;
    while (fabs(x) >= 1000.0 && s < 4) {
        x /= 1000.0;
        s++;
    }
    if (s == 0) snprintf(buf, n, "%.0f", x);
    else snprintf(buf, n, "%.3g%s", x, suffix[s]);
    return buf;
}

const char *cli_human_bytes(char *buf, size_t n, double bytes) {
    static const char *suffix[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int s = 0;
    while (bytes >= 1024.0 && s < 4) {
        bytes /= 1024.0;
        s++;
    }
    if (s == 0) snprintf(buf, n, "%.0f B", bytes);
    else snprintf(buf, n, "%.2f %s", bytes, suffix[s]);
    return buf;
}

int cli_check_dir(const char *path, const char *what) {
    struct stat st;
    if (stat(path, &st) != 0) return cli_fail("%s %s: %s", what, path, strerror(errno));
    if (!S_ISDIR(st.st_mode)) return cli_fail("%s %s is not a directory", what, path);
    return CLI_EXIT_OK;
}

double cli_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ------------------------------------------------------------------ progress bar */

static void fmt_duration(char *buf, size_t n, double s) {
    if (!isfinite(s) || s < 0) {
        snprintf(buf, n, "?");
        return;
    }
    long t = (long)(s + 0.5);
    if (t >= 3600) snprintf(buf, n, "%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
    else snprintf(buf, n, "%ld:%02ld", t / 60, t % 60);
}

void cli_progress_start(cli_progress *p, const char *label, double total, const char *unit) {
    memset(p, 0, sizeof *p);
    snprintf(p->label, sizeof p->label, "%s", label ? label : "");
    p->total = total;
    p->unit = unit;
    p->start = cli_now();
    p->last_draw = -1.0;
    p->tty = isatty(fileno(stderr));
    p->next_pct = 10;
}

void cli_progress_set_label(cli_progress *p, const char *label) {
    snprintf(p->label, sizeof p->label, "%s", label ? label : "");
}

static void progress_draw(cli_progress *p, double now, int final) {
    double elapsed = now - p->start;
    double frac = p->frac;
    char el[32], eta[48], rate[48] = "";
    fmt_duration(el, sizeof el, elapsed);
    if (final) snprintf(eta, sizeof eta, "done");
    else if (frac > 0 && elapsed > 0) {
        char d[32];
        fmt_duration(d, sizeof d, elapsed * (1.0 - frac) / frac);
        snprintf(eta, sizeof eta, "ETA %s", d);
    } else snprintf(eta, sizeof eta, "ETA ?");
    if (p->unit && p->total > 0 && elapsed > 0) {
        double r = frac * p->total / elapsed;
        char h[32];
        if (strcmp(p->unit, "B") == 0) snprintf(rate, sizeof rate, "  %s/s", cli_human_bytes(h, sizeof h, r));
        else snprintf(rate, sizeof rate, "  %s %s/s", cli_human_count(h, sizeof h, r), p->unit);
    }
    char line[256];
    int len;
    if (p->tty) {
        char bar[21];
        int filled = (int)(frac * 20.0);
        for (int i = 0; i < 20; i++) bar[i] = i < filled ? '#' : '.';
        bar[20] = 0;
        len = snprintf(line, sizeof line, "%s [%s] %5.1f%%%s  elapsed %s  %s", p->label, bar, 100.0 * frac, rate, el,
                       eta);
        if (len < 0) return;
        if ((size_t)len >= sizeof line) len = (int)sizeof line - 1;
        int pad = p->last_len > (size_t)len ? (int)(p->last_len - (size_t)len) : 0;
        fprintf(stderr, "\r%s%*s%s", line, pad, "", final ? "\n" : "");
        p->last_len = final ? 0 : (size_t)len;
        p->midline = !final;
    } else {
        fprintf(stderr, "%s %5.1f%%%s  elapsed %s  %s\n", p->label, 100.0 * frac, rate, el, eta);
    }
    fflush(stderr);
    p->last_draw = now;
}

void cli_progress_update(cli_progress *p, double frac) {
    if (p->quiet) return;
    if (!(frac >= 0)) frac = 0;
    if (frac > 1) frac = 1;
    p->frac = frac;
    double now = cli_now();
    if (p->tty) {
        if (p->last_draw < 0 || now - p->last_draw >= 0.1) progress_draw(p, now, 0);
    } else if (frac * 100.0 >= p->next_pct && frac < 1.0) {
        while (p->next_pct <= frac * 100.0) p->next_pct += 10;
        progress_draw(p, now, 0);
    }
}

void cli_progress_finish(cli_progress *p) {
    if (p->quiet) return;
    p->frac = 1.0;
    progress_draw(p, cli_now(), 1);
}

void cli_progress_abort(cli_progress *p) {
    if (p->quiet) return;
    if (p->tty && p->midline) fputc('\n', stderr);
    p->midline = 0;
    p->last_len = 0;
    fflush(stderr);
}

int cli_parse_weights(const char *cmd, void (*usage)(FILE *), const char *text, int *out) {
    const int t = strcmp(text, "auto") ? fr_weight_type_parse(text) : -1;
    if (t < 0 && strcmp(text, "auto")) {
        cli_usage_error(cmd, usage, "option --weights: '%s' is not one of auto, f32, bf16, q8_0, q4_1, q4_k, q5_k, q6_k", text);
        return -1;
    }
    *out = t;
    return 0;
}

const char *cli_weights_name(int weight_type) {
    const char *name = fr_weight_type_name(weight_type);
    return name ? name : "auto";
}

/* Copy of p[0..n) that is valid UTF-8 for JSON: every byte that does not start a valid
 * sequence (and every NUL) becomes U+FFFD. */
char *cli_utf8_sanitize(const char *p, size_t n, size_t *out_len) {
    char *o = malloc(3 * n + 1);
    if (!o) return NULL;
    size_t k = 0;
    const unsigned char *u = (const unsigned char *)p;
    for (size_t i = 0; i < n;) {
        size_t l = u[i] ? fr_utf8_seq_len(u + i, n - i) : 0; /* NUL too becomes U+FFFD */
        if (l) {
            memcpy(o + k, p + i, l);
            k += l;
            i += l;
        } else {
            memcpy(o + k, "\xef\xbf\xbd", 3);
            k += 3;
            i++;
        }
    }
    o[k] = 0;
    *out_len = k;
    return o;
}

void cli_ledger_job_begin(cli_ledger_job *j, const char *path, const char *kind, const char *dir, const char *config,
                          int n_devices) {
    memset(j, 0, sizeof *j);
    j->path = path;
    j->t0 = cli_now();
    if (!path) return;
    fr_ledger_entry *e = &j->e;
    snprintf(e->kind, sizeof e->kind, "%s", kind);
    snprintf(e->run_dir, sizeof e->run_dir, "%s", dir);
    snprintf(e->config, sizeof e->config, "%s", config);
    snprintf(e->device, sizeof e->device, "cpu");
    e->n_devices = n_devices > 0 ? n_devices : 1;
    e->start_unix = (double)time(NULL);
    e->final_loss = NAN;
    e->val_loss = NAN;
    if (fr_ledger_begin(path, e) != FR_OK) { /* the job still runs; the ledger says why it lacks it */
        fprintf(stderr, "frugal: warning: cannot record the job in %s: %s\n", path, fr_last_error());
        j->path = NULL;
    }
}

void cli_ledger_job_end(cli_ledger_job *j, const char *status, double tokens) {
    if (!j->path) return;
    fr_ledger_entry *e = &j->e;
    snprintf(e->status, sizeof e->status, "%s", status);
    e->wall_s = cli_now() - j->t0;
    e->tokens = tokens;
    const fr_prices prices = fr_prices_default(0);
    fr_ledger_price(e, &prices);
    if (fr_ledger_update(j->path, e) != FR_OK)
        fprintf(stderr, "frugal: warning: cannot record the job's end in %s: %s\n", j->path, fr_last_error());
}
