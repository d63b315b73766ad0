/* cli_testutil.h — short names for the tests that run the real `frugal` binary
 * (test_cli*.c): FR_FRUGAL_BIN bound into testutil's runner, so each call reads like the
 * command line it checks. Header-only (static inline): each test is one executable. */
#ifndef FR_CLI_TESTUTIL_H
#define FR_CLI_TESTUTIL_H

#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifndef FR_FRUGAL_BIN
#error "FR_FRUGAL_BIN must name the frugal binary (set by CMake)"
#endif

/* `frugal ARGS` with stderr merged into *out (malloc'd); returns the exit status. */
static inline int run_frugal(const char *args, char **out) { return fr_test_run_frugal(FR_FRUGAL_BIN, args, out); }

/* `frugal ARGS` with stdout in *out and stderr in *err (both malloc'd). */
static inline int run_frugal_err(const char *args, char **out, char **err) {
    return fr_test_run_frugal_err(FR_FRUGAL_BIN, args, out, err);
}

/* Checks the exit status of `frugal ARGS` (want_rc < 0: a failure, not a crash) and that its
 * output holds must1 and must2 (each may be NULL). */
static inline void expect(const char *args, int want_rc, const char *must1, const char *must2) {
    fr_test_expect_frugal(FR_FRUGAL_BIN, args, want_rc, must1, must2);
}

/* Value of "key": NUMBER in the JSON the CLI prints (the first such key); NAN if the key is
 * absent or not followed by a number, so a missing key never compares equal to anything. */
static inline double json_number(const char *json, const char *key) {
    char pat[128];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    const char *p = strstr(json, pat);
    if (!p) return NAN;
    p += strlen(pat);
    char *end;
    double v = strtod(p, &end);
    return end == p ? NAN : v;
}

#endif
