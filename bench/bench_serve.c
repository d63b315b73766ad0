/* bench_serve.c — load test of `frugal serve` on loopback: N concurrent streaming clients.
 *
 *   bench_serve --model DIR [--clients 1,8,32] [--requests 4] [--max-tokens 64]
 *               [--parallel 32] [--threads T] [--frugal PATH] [--port P]
 *
 * Starts `frugal serve --model DIR --port 0 --parallel P` (or, with --port, uses a server
 * already listening there), then for each client count C runs C threads that each send
 * --requests streaming /v1/completions requests back to back (sampling, --temperature 0.8,
 * ignore_eos, so every request produces exactly --max-tokens tokens). Reports per level:
 * aggregate generated tokens/s (all tokens / wall time), time to first token and per-token
 * latency (gap between consecutive streamed tokens) percentiles, and failed requests.
 * Exit status 1 when any request failed. The client speaks HTTP/1.0 over POSIX sockets
 * (the server then streams without chunked framing and closes at the end). */
#define _GNU_SOURCE
#include "bench_common.h"

#include <arpa/inet.h>
#include <errno.h>
#include <libgen.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int g_port, g_max_tokens = 64, g_requests = 4;
static double g_temperature = 0.8;

typedef struct {
    int id;
    int ok, failed;
    long tokens;
    double *ttft;   /* one per request */
    int n_ttft;
    double *gaps;   /* inter-token gaps */
    long n_gaps, cap_gaps;
} client;

static void add_gap(client *c, double g) {
    if (c->n_gaps == c->cap_gaps) {
        c->cap_gaps = c->cap_gaps ? 2 * c->cap_gaps : 1024;
        c->gaps = realloc(c->gaps, (size_t)c->cap_gaps * sizeof *c->gaps);
        if (!c->gaps) abort();
    }
    c->gaps[c->n_gaps++] = g;
}

/* One streaming request; returns tokens received (>= 0) or -1 on failure. */
static long one_request(client *c, int k) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)g_port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct timeval tv = {300, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    char body[512], req[1024];
    int bl = snprintf(body, sizeof body,
                      "{\"prompt\":\"And it came to pass, client %d request %d, that\",\"max_tokens\":%d,"
                      "\"temperature\":%g,\"seed\":%d,\"ignore_eos\":true,\"stream\":true,"
                      "\"stream_options\":{\"include_usage\":true}}",
                      c->id, k, g_max_tokens, g_temperature, c->id * 1000 + k);
    int rl = snprintf(req, sizeof req,
                      "POST /v1/completions HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      "Content-Length: %d\r\n\r\n%s", bl, body);
    double t0 = now_s(), last = 0;
    if (send(fd, req, (size_t)rl, MSG_NOSIGNAL) != rl) {
        close(fd);
        return -1;
    }
    size_t cap = 1 << 16, n = 0, scan = 0;
    char *buf = malloc(cap);
    long tokens = 0, usage_tokens = -1;
    int status = 0, done = 0;
    size_t body_at = 0;
    for (;;) {
        if (n + 4096 > cap) {
            cap *= 2;
            buf = realloc(buf, cap);
            if (!buf) abort();
        }
        ssize_t r = recv(fd, buf + n, cap - n - 1, 0);
        if (r <= 0) break;
        n += (size_t)r;
        buf[n] = 0;
        double t = now_s();
        if (!body_at) {
            char *e = strstr(buf, "\r\n\r\n");
            if (!e) continue;
            sscanf(buf, "HTTP/1.%*d %d", &status);
            body_at = scan = (size_t)(e - buf) + 4;
        }
        /* complete events since the last scan */
        for (;;) {
            char *e = strstr(buf + scan, "\n\n");
            if (!e) break;
            const char *ev = buf + scan;
            if (strncmp(ev, "data: [DONE]", 12) == 0) done = 1;
            else if (strstr(ev, "\"finish_reason\":null") && ev < e) {
                tokens++;
                if (tokens == 1) c->ttft[c->n_ttft++] = t - t0;
                else add_gap(c, t - last);
                last = t;
            }
            const char *u = strstr(ev, "\"completion_tokens\":");
            if (u && u < e) usage_tokens = atol(u + 20);
            scan = (size_t)(e - buf) + 2;
        }
    }
    free(buf);
    close(fd);
    if (status != 200 || !done) return -1;
    return usage_tokens >= 0 ? usage_tokens : tokens;
}

static void *client_main(void *arg) {
    client *c = arg;
    for (int k = 0; k < g_requests; k++) {
        long t = one_request(c, k);
        if (t < 0 || t != g_max_tokens) c->failed++;
        else {
            c->ok++;
            c->tokens += t;
        }
    }
    return NULL;
}

static double pct(double *v, long n, double p) {
    if (n == 0) return 0;
    long i = (long)(p * (double)(n - 1) + 0.5);
    return v[i];
}

int main(int argc, char **argv) {
    const char *model = NULL, *frugal = NULL, *clients_s = "1,8,32";
    int parallel = 32, threads = 0, port = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            printf("usage: bench_serve --model DIR [--clients 1,8,32] [--requests 4] [--max-tokens 64] [--parallel 32]\n"
                   "                   [--threads T] [--temperature 0.8] [--frugal PATH] [--port P (use a running server)]\n");
            return 0;
        }
        if (!v) { fprintf(stderr, "bench_serve: %s needs a value\n", a); return 2; }
        if (strcmp(a, "--model") == 0) model = v;
        else if (strcmp(a, "--frugal") == 0) frugal = v;
        else if (strcmp(a, "--clients") == 0) clients_s = v;
        else if (strcmp(a, "--requests") == 0) g_requests = atoi(v);
        else if (strcmp(a, "--max-tokens") == 0) g_max_tokens = atoi(v);
        else if (strcmp(a, "--parallel") == 0) parallel = atoi(v);
        else if (strcmp(a, "--threads") == 0) threads = atoi(v);
        else if (strcmp(a, "--port") == 0) port = atoi(v);
        else if (strcmp(a, "--temperature") == 0) g_temperature = atof(v);
        else { fprintf(stderr, "bench_serve: unknown option %s\n", a); return 2; }
        i++;
    }
    if (g_requests < 1 || g_max_tokens < 1 || parallel < 1) { fprintf(stderr, "bench_serve: bad numbers\n"); return 2; }
    signal(SIGPIPE, SIG_IGN);
    pid_t pid = 0;
    char log[] = "/tmp/bench-serve-XXXXXX";
    if (!port) {
        if (!model) { fprintf(stderr, "bench_serve: --model DIR is required (or --port of a running server)\n"); return 2; }
        char self[4096], path[4200];
        if (!frugal) {
            ssize_t l = readlink("/proc/self/exe", self, sizeof self - 1);
            if (l <= 0) return 1;
            self[l] = 0;
            snprintf(path, sizeof path, "%s/frugal", dirname(self));
            frugal = path;
        }
        int lfd = mkstemp(log);
        if (lfd < 0) return 1;
        char par[16], thr[16];
        snprintf(par, sizeof par, "%d", parallel);
        snprintf(thr, sizeof thr, "%d", threads);
        pid = fork();
        if (pid == 0) {
            dup2(lfd, 2);
            if (threads > 0) execl(frugal, frugal, "serve", "--model", model, "--port", "0", "--parallel", par, "--ctx", "1024", "--threads", thr, (char *)NULL);
            else execl(frugal, frugal, "serve", "--model", model, "--port", "0", "--parallel", par, "--ctx", "1024", (char *)NULL);
            _exit(127);
        }
        close(lfd);
        for (int t = 0; t < 600 && !port; t++) {
            usleep(100000);
            FILE *f = fopen(log, "r");
            char line[1024];
            while (f && fgets(line, sizeof line, f)) {
                char *p = strstr(line, "listening on http://");
                if (p) port = atoi(strrchr(p, ':') + 1);
            }
            if (f) fclose(f);
            if (waitpid(pid, NULL, WNOHANG) == pid) break;
        }
        if (!port) {
            fprintf(stderr, "bench_serve: the server did not start (log %s)\n", log);
            return 1;
        }
    }
    g_port = port;
    printf("frugal serve on port %d: %s, --parallel %d, %d requests per client, %d tokens each (temperature %g)\n\n",
           port, model ? model : "(running server)", parallel, g_requests, g_max_tokens, g_temperature);
    printf("| clients | requests | failed | tokens | wall s | aggregate tok/s | TTFT p50 ms | TTFT p95 ms | per-token p50 ms | p95 ms | p99 ms |\n");
    printf("|---|---|---|---|---|---|---|---|---|---|---|\n");
    int total_failed = 0;
    char *list = strdup(clients_s);
    for (char *tok = strtok(list, ","); tok; tok = strtok(NULL, ",")) {
        int C = atoi(tok);
        if (C < 1) continue;
        client *cs = calloc((size_t)C, sizeof *cs);
        pthread_t *th = calloc((size_t)C, sizeof *th);
        for (int i = 0; i < C; i++) {
            cs[i].id = i;
            cs[i].ttft = calloc((size_t)g_requests, sizeof(double));
        }
        double t0 = now_s();
        for (int i = 0; i < C; i++) pthread_create(&th[i], NULL, client_main, &cs[i]);
        for (int i = 0; i < C; i++) pthread_join(th[i], NULL);
        double wall = now_s() - t0;
        long tokens = 0, n_ttft = 0, n_gaps = 0;
        int ok = 0, failed = 0;
        for (int i = 0; i < C; i++) {
            tokens += cs[i].tokens;
            ok += cs[i].ok;
            failed += cs[i].failed;
            n_ttft += cs[i].n_ttft;
            n_gaps += cs[i].n_gaps;
        }
        double *tt = malloc((size_t)(n_ttft + 1) * sizeof *tt), *gg = malloc((size_t)(n_gaps + 1) * sizeof *gg);
        long a = 0, b = 0;
        for (int i = 0; i < C; i++) {
            for (int k = 0; k < cs[i].n_ttft; k++) tt[a++] = cs[i].ttft[k];
            for (long k = 0; k < cs[i].n_gaps; k++) gg[b++] = cs[i].gaps[k];
        }
        qsort(tt, (size_t)a, sizeof *tt, bench_cmp_double);
        qsort(gg, (size_t)b, sizeof *gg, bench_cmp_double);
        printf("| %d | %d | %d | %ld | %.2f | %.1f | %.1f | %.1f | %.2f | %.2f | %.2f |\n", C, ok + failed, failed, tokens, wall,
               tokens / wall, 1e3 * pct(tt, a, 0.5), 1e3 * pct(tt, a, 0.95), 1e3 * pct(gg, b, 0.5), 1e3 * pct(gg, b, 0.95),
               1e3 * pct(gg, b, 0.99));
        fflush(stdout);
        total_failed += failed;
        for (int i = 0; i < C; i++) {
            free(cs[i].ttft);
            free(cs[i].gaps);
        }
        free(tt);
        free(gg);
        free(cs);
        free(th);
    }
    free(list);
    if (pid > 0) {
        kill(pid, SIGTERM);
        int st;
        waitpid(pid, &st, 0);
        unlink(log);
    }
    printf("\n%s\n", total_failed ? "FAILED requests above" : "zero failed requests");
    return total_failed ? 1 : 0;
}
