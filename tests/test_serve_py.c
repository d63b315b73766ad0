/* test_serve_py.c — runs tests/test_serve.py (the openai Python client and curl, or headless
 * Chromium on the chat page) against `frugal serve` with a tiny random model made here.
 *
 *   test_serve_py [openai|chromium]     (default openai; ctest runs both)
 *
 * The interpreter: $FRUGAL_PYTHON, else build/venv-serve/bin/python3 in the source tree
 * (made by `make serve-test-deps`, which installs the openai package), else python3.
 * Exit 77 (ctest: skipped) when python3, the openai package or chromium is absent. */
#include "serve_testutil.h"

int main(int argc, char **argv) {
    const char *part = argc > 1 ? argv[1] : "openai";
    if (strcmp(part, "openai") != 0 && strcmp(part, "chromium") != 0) {
        fprintf(stderr, "usage: %s [openai|chromium]\n", argv[0]);
        return 2;
    }
    char script[600], venv[600], python[600];
    snprintf(script, sizeof script, "%s/../test_serve.py", FR_FIXTURES_DIR);
    snprintf(venv, sizeof venv, "%s/../../build/venv-serve/bin/python3", FR_FIXTURES_DIR);
    const char *env = getenv("FRUGAL_PYTHON");
    if (env && env[0]) snprintf(python, sizeof python, "%s", env);
    else if (access(venv, X_OK) == 0) snprintf(python, sizeof python, "%s", venv);
    else snprintf(python, sizeof python, "python3");
    if (system("command -v python3 >/dev/null 2>&1") != 0 && !(env && env[0]) && access(venv, X_OK) != 0) {
        printf("SKIP: python3 not found\n");
        return 77;
    }
    char tmp[] = "/tmp/frugal-test-serve-py-XXXXXX", dir[300];
    if (!mkdtemp(tmp)) return 1;
    if (st_make_model(tmp, dir, sizeof dir) != 0) {
        printf("FAIL: cannot make the tiny model in %s\n", tmp);
        return 1;
    }
    char cmd[2400];
    snprintf(cmd, sizeof cmd, "'%s' '%s' --frugal '%s' --model '%s' --part %s", python, script, FR_FRUGAL_BIN, dir, part);
    printf("%s\n", cmd);
    fflush(stdout);
    int st = system(cmd);
    int code = st == -1 ? 1 : WIFEXITED(st) ? WEXITSTATUS(st) : 1;
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmp);
    return code == 77 ? 77 : code == 0 ? 0 : 1;
}
