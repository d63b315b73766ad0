/* serve_testutil.h — helpers of the `frugal serve` tests (test_serve.c, test_serve_py.c):
 * a tiny random model with a frugal-trained tokenizer, starting / stopping the real server
 * binary on a free loopback port, and a minimal HTTP/1.1 client on POSIX sockets
 * (Content-Length and chunked bodies). Header-only (static functions): each test is one
 * executable. */
#ifndef FR_SERVE_TESTUTIL_H
#define FR_SERVE_TESTUTIL_H

#define _GNU_SOURCE
#include "frugal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* vocab 1005 = the frugal_trained tokenizer's ids; eos 1 = its end-of-sentence id */
static const char *SERVE_TINY_CONFIG =
    "{\n"
    "  \"architectures\": [\"DeepseekV3ForCausalLM\"], \"model_type\": \"deepseek_v3\",\n"
    "  \"vocab_size\": 1024, \"hidden_size\": 64, \"intermediate_size\": 128, \"moe_intermediate_size\": 32,\n"
    "  \"num_hidden_layers\": 2, \"num_attention_heads\": 2, \"num_key_value_heads\": 2,\n"
    "  \"q_lora_rank\": 32, \"kv_lora_rank\": 32, \"qk_nope_head_dim\": 16, \"qk_rope_head_dim\": 16,\n"
    "  \"v_head_dim\": 16, \"n_routed_experts\": 4, \"n_shared_experts\": 1, \"num_experts_per_tok\": 2,\n"
    "  \"n_group\": 2, \"topk_group\": 1, \"topk_method\": \"noaux_tc\", \"scoring_func\": \"sigmoid\",\n"
    "  \"norm_topk_prob\": true, \"routed_scaling_factor\": 2.5, \"first_k_dense_replace\": 1,\n"
    "  \"moe_layer_freq\": 1, \"num_nextn_predict_layers\": 0, \"max_position_embeddings\": 1024,\n"
    "  \"rope_theta\": 10000.0, \"rope_scaling\": null, \"rope_interleave\": true, \"rms_norm_eps\": 1e-6,\n"
    "  \"tie_word_embeddings\": false, \"initializer_range\": 0.5, \"hidden_act\": \"silu\",\n"
    "  \"attention_bias\": false, \"attention_dropout\": 0.0, \"bos_token_id\": 0, \"eos_token_id\": 1,\n"
    "  \"pad_token_id\": null\n"
    "}\n";

static inline int st_copy_file(const char *from, const char *to) {
    FILE *a = fopen(from, "rb"), *b = a ? fopen(to, "wb") : NULL;
    if (!a || !b) {
        if (a) fclose(a);
        return -1;
    }
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, a)) > 0) fwrite(buf, 1, n, b);
    fclose(a);
    return fclose(b) == 0 ? 0 : -1;
}

/* Creates <tmp>/tiny (random model + tokenizer). Returns 0 on success. */
static inline int st_make_model(const char *tmp, char *dir, size_t dir_n) {
    char cfg_path[512], a[512], b[512];
    snprintf(dir, dir_n, "%s/tiny", tmp);
    snprintf(cfg_path, sizeof cfg_path, "%s/tiny-config.json", tmp);
    FILE *f = fopen(cfg_path, "w");
    if (!f) return -1;
    fputs(SERVE_TINY_CONFIG, f);
    fclose(f);
    if (mkdir(dir, 0755) != 0) return -1;
    fr_config cfg;
    fr_model *m = NULL;
    if (fr_config_load(&cfg, cfg_path) != FR_OK || fr_model_create(&m, &cfg, 7) != FR_OK) {
        fprintf(stderr, "tiny model: %s\n", fr_last_error());
        return -1;
    }
    int rc = fr_model_save(m, dir);
    fr_model_free(m);
    if (rc != FR_OK) return -1;
    static const char *files[] = {"tokenizer.json", "tokenizer_config.json"};
    for (int i = 0; i < 2; i++) {
        snprintf(a, sizeof a, "%s/tokenizer/frugal_trained/%s", FR_FIXTURES_DIR, files[i]);
        snprintf(b, sizeof b, "%s/%s", dir, files[i]);
        if (st_copy_file(a, b) != 0) return -1;
    }
    return 0;
}

typedef struct {
    pid_t pid;
    int port;
    char log[512];
} st_server;

/* Start `frugal serve --model dir --port 0 <extra...>` with stderr into <tmp>/serve.log and
 * wait for its "listening on" line. extra is NULL-terminated. */
static inline int st_start(st_server *s, const char *tmp, const char *dir, const char *const *extra) {
    memset(s, 0, sizeof *s);
    static int seq; /* servers started in the same second get their own log */
    snprintf(s->log, sizeof s->log, "%s/serve-%d-%d.log", tmp, (int)time(NULL), seq++);
    const char *argv[64];
    int n = 0;
    argv[n++] = FR_FRUGAL_BIN;
    argv[n++] = "serve";
    argv[n++] = "--model";
    argv[n++] = dir;
    argv[n++] = "--port";
    argv[n++] = "0";
    for (int i = 0; extra && extra[i] && n < 62; i++) argv[n++] = extra[i];
    argv[n] = NULL;
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        int fd = open(s->log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 2);
            dup2(fd, 1);
        }
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    s->pid = pid;
    for (int tries = 0; tries < 600; tries++) { /* up to 60 s (ASan builds load slowly) */
        usleep(100000);
        FILE *f = fopen(s->log, "r");
        char line[1024];
        while (f && fgets(line, sizeof line, f)) {
            char *p = strstr(line, "listening on http://");
            if (p) {
                char *c = strrchr(p, ':');
                s->port = c ? atoi(c + 1) : 0;
            }
        }
        if (f) fclose(f);
        if (s->port > 0) return 0;
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            s->pid = 0;
            return -1;
        }
    }
    return -1;
}

/* SIGTERM and wait; returns the exit status (or -1). */
static inline int st_stop(st_server *s) {
    if (s->pid <= 0) return -1;
    kill(s->pid, SIGTERM);
    int status = 0;
    for (int i = 0; i < 300; i++) {
        if (waitpid(s->pid, &status, WNOHANG) == s->pid) {
            s->pid = 0;
            return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        }
        usleep(100000);
    }
    kill(s->pid, SIGKILL);
    waitpid(s->pid, &status, 0);
    s->pid = 0;
    return -1;
}

static inline int st_connect(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    struct timeval tv = {120, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static inline int st_send_all(int fd, const char *p, size_t n) {
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Send a request (Connection: close). headers: extra header lines, each ending in \r\n. */
static inline int st_send_request(int fd, const char *method, const char *path, const char *headers, const char *body,
                           size_t body_len) {
    char head[2048];
    int n = snprintf(head, sizeof head,
                     "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n%s%s", method, path,
                     headers ? headers : "", body ? "Content-Type: application/json\r\n" : "");
    if (body) n += snprintf(head + n, sizeof head - (size_t)n, "Content-Length: %zu\r\n", body_len);
    n += snprintf(head + n, sizeof head - (size_t)n, "\r\n");
    if (st_send_all(fd, head, (size_t)n) != 0) return -1;
    if (body && body_len && st_send_all(fd, body, body_len) != 0) return -1;
    return 0;
}

typedef struct {
    int status;
    char *head;   /* status line + headers */
    char *body;   /* de-chunked, NUL-terminated */
    size_t body_len;
} st_response;

static inline void st_response_free(st_response *r) {
    free(r->head);
    free(r->body);
    memset(r, 0, sizeof *r);
}

/* Read everything until EOF and parse. */
static inline int st_read_response(int fd, st_response *out) {
    memset(out, 0, sizeof *out);
    size_t cap = 65536, n = 0;
    char *raw = malloc(cap);
    if (!raw) return -1;
    for (;;) {
        if (n + 4096 > cap) {
            cap *= 2;
            char *p = realloc(raw, cap);
            if (!p) {
                free(raw);
                return -1;
            }
            raw = p;
        }
        ssize_t r = recv(fd, raw + n, cap - n - 1, 0);
        if (r <= 0) break;
        n += (size_t)r;
    }
    raw[n] = 0;
    char *sep = strstr(raw, "\r\n\r\n");
    if (!sep || sscanf(raw, "HTTP/1.%*d %d", &out->status) != 1) {
        free(raw);
        return -1;
    }
    out->head = strndup(raw, (size_t)(sep - raw));
    char *b = sep + 4;
    size_t bl = n - (size_t)(b - raw);
    out->body = malloc(bl + 1);
    if (!out->head || !out->body) {
        free(raw);
        return -1;
    }
    if (strcasestr(out->head, "transfer-encoding: chunked")) {
        size_t k = 0;
        char *p = b, *end = b + bl;
        while (p < end) {
            char *nl = strstr(p, "\r\n");
            if (!nl) break;
            size_t len = strtoul(p, NULL, 16);
            p = nl + 2;
            if (len == 0 || p + len > end) break;
            memcpy(out->body + k, p, len);
            k += len;
            p += len + 2;
        }
        out->body_len = k;
    } else {
        memcpy(out->body, b, bl);
        out->body_len = bl;
    }
    out->body[out->body_len] = 0;
    free(raw);
    return 0;
}

/* One request/response. Returns 0 when a response was read. */
static inline int st_http(int port, const char *method, const char *path, const char *headers, const char *body,
                   st_response *out) {
    memset(out, 0, sizeof *out);
    int fd = st_connect(port);
    if (fd < 0) return -1;
    int rc = st_send_request(fd, method, path, headers, body, body ? strlen(body) : 0);
    if (rc == 0) rc = st_read_response(fd, out);
    close(fd);
    return rc;
}

static inline double st_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#endif
