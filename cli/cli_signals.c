/* cli_signals.c — SIGINT / SIGTERM / SIGHUP without signal handlers.
 *
 * A signal handler may run on any thread at any instruction, including inside malloc called
 * by oneDNN or OpenMP; before this file `frugal train` crashed with heap corruption in about
 * one Ctrl-C of four. Now main() blocks the signals before any command runs, so every thread
 * created later (OpenMP, oneDNN, libmicrohttpd) inherits the mask, and one watcher thread
 * takes them with sigwait(). No code ever runs in signal context.
 *
 * The watcher has two modes:
 *   default  the process ends as it would have without the mask (default action: killed by
 *            the signal), for commands that have nothing to save;
 *   catch    (cli_signals_catch) the first signal records which signal came and prints a
 *            note; the command polls cli_stop_signal() through the library's hooks, stops
 *            cleanly and returns cli_stop_exit_code(). A second signal ends the process at
 *            once with _exit(128 + signal): everything the library writes is written
 *            atomically, so the previous output (checkpoint) stays valid.
 * Signals that were ignored when the process started (nohup: SIGHUP; `cmd &` in a script:
 * SIGINT) are left ignored. */
#define _GNU_SOURCE
#include "cli.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static const int WATCHED[] = {SIGINT, SIGTERM, SIGHUP};
#define N_WATCHED ((int)(sizeof WATCHED / sizeof WATCHED[0]))

static sigset_t g_set;          /* the signals blocked by cli_signals_block and taken by the watcher */
static int g_blocked;           /* cli_signals_block ran */
static atomic_int g_catch;      /* 1: catch mode */
static atomic_int g_stop_sig;   /* first signal taken in catch mode (0: none) */
static char g_cmd[64];          /* catch mode: the command ("frugal train") */
static char g_what[200];        /* and what it does on the first signal */
static pthread_mutex_t g_what_mu = PTHREAD_MUTEX_INITIALIZER;

static const char *sig_name(int sig) {
    switch (sig) {
    case SIGINT: return "SIGINT (Ctrl-C)";
    case SIGTERM: return "SIGTERM";
    case SIGHUP: return "SIGHUP";
    default: return "signal";
    }
}

void cli_signals_block(int only_int_term) {
    sigemptyset(&g_set);
    for (int i = 0; i < N_WATCHED; i++) {
        int s = WATCHED[i];
        if (only_int_term && s != SIGINT && s != SIGTERM) continue;
        struct sigaction old;
        /* an ignored signal stays ignored (nohup; `cmd &` in a script): blocking it would make
         * it pending (Linux never discards a blocked signal) and the watcher would act on it */
        if (sigaction(s, NULL, &old) == 0 && old.sa_handler == SIG_IGN) continue;
        sigaddset(&g_set, s);
    }
    if (pthread_sigmask(SIG_BLOCK, &g_set, NULL) == 0) g_blocked = 1;
}

/* The default action of sig on the whole process, from the watcher thread. */
static void die_by(int sig) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_DFL;
    sigemptyset(&sa.sa_mask);
    sigaction(sig, &sa, NULL);
    sigset_t one;
    sigemptyset(&one);
    sigaddset(&one, sig);
    pthread_sigmask(SIG_UNBLOCK, &one, NULL);
    raise(sig); /* to this thread, which now takes it: the process ends */
    _exit(128 + sig);
}

static void say(const char *text) {
    size_t n = strlen(text), off = 0;
    while (off < n) {
        ssize_t w = write(2, text + off, n - off);
        if (w <= 0) break;
        off += (size_t)w;
    }
}

static void *watcher(void *arg) {
    (void)arg;
    for (;;) {
        int sig = 0;
        if (sigwait(&g_set, &sig) != 0) continue;
        if (!atomic_load(&g_catch)) die_by(sig);
        int expected = 0;
        if (!atomic_compare_exchange_strong(&g_stop_sig, &expected, sig)) {
            char msg[128];
            snprintf(msg, sizeof msg, "\nfrugal: %s again: stopping now\n", sig_name(sig));
            say(msg);
            _exit(128 + sig); /* second signal: give up at once */
        }
        char msg[400];
        pthread_mutex_lock(&g_what_mu);
        snprintf(msg, sizeof msg, "\n%s: %s: %s (send it again to stop at once)\n", g_cmd, sig_name(sig), g_what);
        pthread_mutex_unlock(&g_what_mu);
        say(msg);
    }
    return NULL;
}

int cli_signals_start(void) {
    if (!g_blocked || sigisemptyset(&g_set)) return 0;
    pthread_t t;
    pthread_attr_t at;
    int rc = pthread_attr_init(&at);
    if (rc == 0) {
        /* the default stack size: a small fixed one fails (EINVAL) once the libraries linked in
         * carry large static TLS blocks (CUDA's runtime and cuBLAS do) */
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        rc = pthread_create(&t, &at, watcher, NULL);
        pthread_attr_destroy(&at);
    }
    if (rc != 0) {
        /* nobody would take them: back to the plain default actions */
        pthread_sigmask(SIG_UNBLOCK, &g_set, NULL);
        g_blocked = 0;
        return -1;
    }
    return 0;
}

void cli_signals_catch(const char *cmd, const char *what) {
    pthread_mutex_lock(&g_what_mu);
    snprintf(g_cmd, sizeof g_cmd, "%s", cmd ? cmd : "frugal");
    snprintf(g_what, sizeof g_what, "%s", what ? what : "stopping");
    pthread_mutex_unlock(&g_what_mu);
    atomic_store(&g_catch, 1);
}

void cli_signals_default(void) { atomic_store(&g_catch, 0); }

int cli_stop_signal(void) { return atomic_load(&g_stop_sig); }

int cli_stop_exit_code(void) {
    int s = atomic_load(&g_stop_sig);
    return s > 0 ? 128 + s : CLI_EXIT_INTERRUPTED;
}
