#include "testutil.h"

#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <math.h>

int fr_test_passed = 0, fr_test_failed = 0;

double fr_rel_err(const float *a, const float *b, size_t n) {
    double maxdiff = 0, maxref = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= maxdiff)) maxdiff = d;   /* NaN propagates */
        if (fabs((double)b[i]) > maxref) maxref = fabs((double)b[i]);
    }
    return maxdiff / (maxref > 1e-30 ? maxref : 1e-30);
}

int fr_test_finish(const char *suite) {
    printf("%s: %d passed, %d failed\n", suite, fr_test_passed, fr_test_failed);
    return fr_test_failed == 0 && fr_test_passed > 0 ? 0 : 1;
}

int fr_test_run_frugal(const char *bin, const char *args, char **out) {
    size_t n = strlen(bin) + strlen(args) + 32;
    char *cmd = malloc(n);
    snprintf(cmd, n, "'%s' %s 2>&1", bin, args);
    FILE *p = popen(cmd, "r");
    free(cmd);
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    buf[0] = 0;
    if (!p) {
        *out = buf;
        return -1;
    }
    size_t got;
    while ((got = fread(buf + len, 1, cap - len - 1, p)) > 0) {
        len += got;
        if (cap - len < 1024) {
            cap *= 2;
            buf = realloc(buf, cap);
        }
    }
    buf[len] = 0;
    int st = pclose(p);
    *out = buf;
    if (st == -1) return -1;
    if (WIFEXITED(st)) return WEXITSTATUS(st);
    if (WIFSIGNALED(st)) return 128 + WTERMSIG(st);
    return -1;
}

void fr_test_expect_frugal(const char *bin, const char *args, int want_rc, const char *must1, const char *must2) {
    char *out = NULL;
    int rc = fr_test_run_frugal(bin, args, &out);
    int ok_rc = want_rc >= 0 ? rc == want_rc : (rc > 0 && rc < 128);
    CHECK(ok_rc, "frugal %s: exit %d, wanted %s%d; output:\n%s", args, rc, want_rc >= 0 ? "" : "non-zero, not ",
          want_rc >= 0 ? want_rc : 0, out);
    if (must1) CHECK(strstr(out, must1) != NULL, "frugal %s: output lacks '%s':\n%s", args, must1, out);
    if (must2) CHECK(strstr(out, must2) != NULL, "frugal %s: output lacks '%s':\n%s", args, must2, out);
    free(out);
}

void fr_test_write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (!f) {
        CHECK(0, "cannot write %s", path);
        return;
    }
    fputs(text, f);
    fclose(f);
}
