/* cli.h — shared pieces of the `frugal` command (a thin layer over include/frugal.h).
 *
 * Exit codes: 0 success, 1 a runtime failure (library error, unreadable or invalid input
 * file), 2 a usage error (unknown command or option, missing or malformed option value)
 * or a command that is planned but not implemented yet. */
#ifndef FR_CLI_H
#define FR_CLI_H

#include "frugal.h"

#include <stdio.h>
#include <stddef.h>

#define CLI_EXIT_OK 0
#define CLI_EXIT_FAIL 1
#define CLI_EXIT_USAGE 2
#define CLI_EXIT_INTERRUPTED 130 /* stopped by Ctrl-C (SIGINT), after cleaning up */
/* Stopped by a signal after cleaning up: 128 + the signal, 130 SIGINT, 143 SIGTERM, 129 SIGHUP
 * (cli_stop_exit_code). */

/* Subcommands: argv[0] is the command name, argv[1..] its options. */
int cmd_eval(int argc, char **argv);
int cmd_train(int argc, char **argv);
void usage_train(FILE *f);
int cmd_finetune(int argc, char **argv);
void usage_finetune(FILE *f);
int cmd_merge(int argc, char **argv);
int cmd_distill(int argc, char **argv);
void usage_distill(FILE *f);
void usage_merge(FILE *f);
int cmd_info(int argc, char **argv);
int cmd_init(int argc, char **argv);
void usage_eval(FILE *f);
void usage_info(FILE *f);
void usage_init(FILE *f);
int cmd_data(int argc, char **argv);
void usage_data(FILE *f);
int cmd_tokenizer(int argc, char **argv);
void usage_tokenizer(FILE *f);
int cmd_cost(int argc, char **argv);
int cmd_plot(int argc, char **argv);
void usage_cost(FILE *f);
void usage_plot(FILE *f);
int cmd_generate(int argc, char **argv);
void usage_generate(FILE *f);
int cmd_chat(int argc, char **argv);
void usage_chat(FILE *f);
int cmd_convert(int argc, char **argv);
int cmd_quantize(int argc, char **argv);
void usage_quantize(FILE *f);
void usage_convert(FILE *f);
int cmd_serve(int argc, char **argv);
void usage_serve(FILE *f);
int cmd_plan(int argc, char **argv);
void usage_plan(FILE *f);

/* Signals (cli_signals.c): no signal handler ever runs; SIGINT, SIGTERM and SIGHUP are
 * blocked in every thread and taken by one watcher thread with sigwait().
 *  - main() calls cli_signals_block() before any command runs (threads created later, OpenMP,
 *    oneDNN, libmicrohttpd, inherit the mask); only_int_term = 1 blocks just SIGINT and
 *    SIGTERM (for `frugal serve`, which takes them itself with sigwait and starts no watcher);
 *  - cli_signals_start() starts the watcher in default mode: a signal ends the process with
 *    its default action, as if nothing were blocked (-1 if the thread cannot start; the
 *    signals are then unblocked again);
 *  - cli_signals_catch(cmd, what) switches to catch mode: the first signal prints
 *    "\n<cmd>: SIGINT (Ctrl-C): <what> (send it again to stop at once)" and is recorded for
 *    cli_stop_signal(), which the command polls (fr_train_hooks.should_stop, progress
 *    callbacks); a second signal ends the process at once with _exit(128 + signal);
 *  - cli_signals_default() returns to default mode (a recorded signal stays recorded);
 *  - cli_stop_exit_code(): 128 + the recorded signal (130 SIGINT, 143 SIGTERM, 129 SIGHUP),
 *    CLI_EXIT_INTERRUPTED if none was recorded. */
void cli_signals_block(int only_int_term);
int cli_signals_start(void);
void cli_signals_catch(const char *cmd, const char *what);
void cli_signals_default(void);
int cli_stop_signal(void);
int cli_stop_exit_code(void);

/* Print "frugal: error: <message>\n" to stderr; returns CLI_EXIT_FAIL. */
int cli_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Print "frugal: error: <fr_last_error()>" (or `what` if the library left no message). */
int cli_fail_lib(const char *what);
/* Print "frugal CMD: <message>\n" then, when usage is not NULL, one line pointing to
 * `frugal CMD --help` (not the whole help) to stderr; returns CLI_EXIT_USAGE. */
int cli_usage_error(const char *cmd, void (*usage)(FILE *), const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Is argv entry a request for help (-h, --help)? */
int cli_is_help(const char *arg);

/* Option matching for `--name VALUE` and `--name=VALUE`.
 * Returns 1 and sets *value when argv[*i] is option `name` with a value (advancing *i past
 * a separate value), 0 when argv[*i] is not this option, -1 when it is but the value is
 * missing (a usage error has been printed). */
int cli_opt_value(const char *cmd, void (*usage)(FILE *), int argc, char **argv, int *i,
                  const char *name, const char **value);
/* Is argv[i] exactly the flag `name` (a boolean option)? "--name=..." is rejected as a usage
 * error: returns -1 after printing it. */
int cli_opt_flag(const char *cmd, void (*usage)(FILE *), const char *arg, const char *name);

/* One row of an option table for cli_opt_match: a value option (value != NULL: the string is
 * stored there; a non-NULL flag is then set to 1 too, to tell "given" from a default) or a flag
 * (value == NULL: *flag set to 1). Commands list their plain options in a table instead of one
 * cli_opt_value / cli_opt_flag branch each; options that do more than store (parse at once,
 * append to a list, other side effects) stay explicit code after the match. */
typedef struct {
    const char *name;
    const char **value;
    int *flag;
} cli_opt;
/* Match argv[*i] against opts[0..n_opts) with cli_opt_value / cli_opt_flag (same messages and
 * edge cases). Returns 1 when it was one of them (value stored or flag set, *i advanced past a
 * separate value), 0 when it is not in the table, -1 on a usage error (already printed). */
int cli_opt_match(const char *cmd, void (*usage)(FILE *), int argc, char **argv, int *i, const cli_opt *opts,
                  int n_opts);
/* Row count of an option table array, for cli_opt_match's n_opts. */
#define CLI_N_OPTS(table) ((int)(sizeof(table) / sizeof((table)[0])))

/* Parse a decimal integer in [lo, hi]. On failure prints a usage error naming the option and
 * the text, and returns -1; 0 on success. */
int cli_parse_int(const char *cmd, void (*usage)(FILE *), const char *opt, const char *text,
                  long lo, long hi, long *out);
/* The same for a finite decimal number in [lo, hi] (hi = INFINITY: no upper bound). */
int cli_parse_double(const char *cmd, void (*usage)(FILE *), const char *opt, const char *text,
                     double lo, double hi, double *out);

/* --weights TYPE: "auto" (as the checkpoint stores them) -> -1, "f32" 0, "bf16" 1, "q8_0" 2,
 * "q4_1" 3 (fr_engine_options.weight_type); anything else is a usage error (-1 returned after
 * printing it, *out untouched), 0 on success. cli_weights_name names a resolved type. */
int cli_parse_weights(const char *cmd, void (*usage)(FILE *), const char *text, int *out);
const char *cli_weights_name(int weight_type);

/* Write s as a JSON string literal (with quotes) to f. */
void cli_json_string(FILE *f, const char *s);
/* Write a double as JSON (17 significant digits; null if not finite). */
void cli_json_number(FILE *f, double x);
/* Human form of a count: 1234 -> "1.23K", 20123456 -> "20.1M" (into buf). */
const char *cli_human_count(char *buf, size_t n, double x);
/* Human form of a byte count: 1536 -> "1.50 KiB" (into buf). */
const char *cli_human_bytes(char *buf, size_t n, double bytes);

/* Check that `path` is an existing directory; prints an error naming it and returns
 * CLI_EXIT_FAIL if not, CLI_EXIT_OK if it is. */
int cli_check_dir(const char *path, const char *what);

/* Wall clock in seconds (monotonic). */
double cli_now(void);

/* Progress bar with rate and ETA on stderr. On a terminal it redraws one line with \r at most
 * ~10 times a second; otherwise (logs, pipes) it prints a line at every 10 %.
 * Usage:
 *   cli_progress pb;
 *   cli_progress_start(&pb, "tokenizing", total_bytes, "B");  // unit "B": bytes/s in KiB/MiB
 *   ... cli_progress_update(&pb, fraction_done);               // cheap; call as often as you like
 *   cli_progress_finish(&pb);     // draws 100 % and ends the line
 *   or cli_progress_abort(&pb);   // ends a half-drawn line before printing an error
 * `total` is the amount of work at 100 % in `unit`s (for the rate; 0 or unit NULL: no rate);
 * any other unit prints a count rate ("1.2K steps/s"). Set pb.quiet = 1 to silence it. */
typedef struct {
    char label[64];
    double total;
    const char *unit;
    double start, last_draw, frac;
    int tty, next_pct, midline, quiet;
    size_t last_len;
} cli_progress;
void cli_progress_start(cli_progress *p, const char *label, double total, const char *unit);
void cli_progress_set_label(cli_progress *p, const char *label);
void cli_progress_update(cli_progress *p, double frac);
void cli_progress_finish(cli_progress *p);
void cli_progress_abort(cli_progress *p);

/* A job that is not a training run but costs compute (a teacher's top-k dump, batch
 * generation) recorded in the ledger, so the lifecycle cost counts it: begin appends the
 * "begin" record (path NULL: no ledger, nothing done), end the "end" record with the wall
 * time, tokens and status. n_devices: the CPU threads it ran on. */
typedef struct {
    const char *path;
    fr_ledger_entry e;
    double t0;
} cli_ledger_job;
void cli_ledger_job_begin(cli_ledger_job *j, const char *path, const char *kind, const char *dir, const char *config,
                          int n_devices);
void cli_ledger_job_end(cli_ledger_job *j, const char *status, double tokens);

/* Copy of p[0..n) that is valid UTF-8 for JSON: every byte that does not start a valid
 * sequence (and every NUL) becomes U+FFFD; *out_len its length. NULL when out of memory.
 * (`serve` and `generate --batch` write model text into JSON.) */
char *cli_utf8_sanitize(const char *p, size_t n, size_t *out_len);

#endif
