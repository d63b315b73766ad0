/* serve_door.c — the front door of `frugal serve`: our own listening socket and one thread
 * that accepts connections, reads (without consuming) the head of each connection's first
 * request, answers a malformed one itself with an OpenAI-style JSON error, and hands every
 * other connection to libmicrohttpd (MHD_add_connection), which reads the same bytes again.
 *
 * Why: libmicrohttpd 0.9.75 (Debian 12) answers malformed HTTP with its own HTML page and no
 * hook to replace it, and for a bad Content-Length it sends its header block twice. The
 * cases it mishandles are all visible in the request head, so they are checked here:
 *   - a request line that is not "METHOD SP TARGET SP HTTP/1.0|1.1"           400
 *   - a header line without a name and a colon, or a folded (continued) one    400
 *   - Content-Length that is not a decimal number, or two that differ          400
 *   - Content-Length above the server's body limit                             413
 *   - Transfer-Encoding (chunked bodies; the API needs Content-Length)         411
 *   - a head larger than FR_DOOR_HEAD_CAP                                      431
 * Later requests on a kept-alive connection are read by libmicrohttpd alone (the door sees
 * a connection's first request only); the door also sends "Connection: close" on its own
 * answers.
 *
 * The door waits for a head without spinning: recv(MSG_PEEK) reports what has arrived, and
 * SO_RCVLOWAT = that length + 1 makes poll() wake only when more bytes come. It holds at most
 * max_pending connections whose head is incomplete, at most per_ip of them per client
 * address, each for at most head_timeout seconds (slow or idle clients are closed; so are
 * those over a limit, at once). */
#define _GNU_SOURCE
#include "serve.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    int fd;
    struct sockaddr_storage addr;
    socklen_t addr_len;
    double t_accept;
} pending;

struct srv_door {
    int listen_fd, wake[2];
    struct MHD_Daemon *mhd;
    srv_door_limits lim;
    pending *p;
    int n;
    pthread_t thread;
    int started;
    char *buf; /* FR_DOOR_HEAD_CAP + 1 */
};

int srv_door_open(srv_door **out, const struct sockaddr *sa, unsigned sa_len, unsigned *bound_port) {
    *out = NULL;
    srv_door *d = calloc(1, sizeof *d);
    if (!d) return ENOMEM;
    d->listen_fd = socket(sa->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    d->wake[0] = d->wake[1] = -1;
    int one = 1, err = 0;
    if (d->listen_fd < 0) err = errno;
    if (!err && setsockopt(d->listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0) err = errno;
    if (!err && sa->sa_family == AF_INET6) setsockopt(d->listen_fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (!err && bind(d->listen_fd, sa, (socklen_t)sa_len) != 0) err = errno;
    if (!err && listen(d->listen_fd, 511) != 0) err = errno;
    if (!err && pipe2(d->wake, O_CLOEXEC | O_NONBLOCK) != 0) err = errno;
    struct sockaddr_storage got;
    socklen_t got_len = sizeof got;
    if (!err && getsockname(d->listen_fd, (struct sockaddr *)&got, &got_len) != 0) err = errno;
    if (err) {
        srv_door_close(d);
        return err;
    }
    *bound_port = got.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&got)->sin6_port)
                                            : ntohs(((struct sockaddr_in *)&got)->sin_port);
    *out = d;
    return 0;
}

/* ------------------------------------------------------------------ the head */

static int is_tchar(int c) { return c > 32 && c < 127 && !strchr("\"(),/:;<=>?@[\\]{}", c); }

/* Answer status with {"error": ...} and close. */
static void refuse(int fd, unsigned status, const char *code, const char *message) {
    const char *reason = status == 400 ? "Bad Request" : status == 411 ? "Length Required"
                         : status == 413 ? "Content Too Large" : status == 431 ? "Request Header Fields Too Large"
                                                                               : "Error";
    cJSON *o = srv_error_object(message, "invalid_request_error", NULL, code);
    char *body = o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    char head[256];
    const size_t blen = body ? strlen(body) : 0;
    int hl = snprintf(head, sizeof head,
                      "HTTP/1.1 %u %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n",
                      status, reason, blen);
    /* best effort: a client that sends on without reading may see a reset instead */
    if (send(fd, head, (size_t)hl, MSG_NOSIGNAL) == hl && body) (void)send(fd, body, blen, MSG_NOSIGNAL);
    free(body);
    shutdown(fd, SHUT_WR);
    close(fd);
}

/* Check a complete head h[0..n) (up to and including the blank line). Returns 0 when it may
 * go to libmicrohttpd, else fills *status / code / msg. */
static int check_head(const char *h, size_t n, uint64_t body_cap, unsigned *status, const char **code, char *msg, size_t msg_n) {
    const char *end = h + n, *line = h;
    int first = 1, have_cl = 0;
    uint64_t cl = 0;
    while (line < end) {
        const char *eol = memchr(line, '\n', (size_t)(end - line));
        if (!eol) eol = end;
        size_t len = (size_t)(eol - line);
        if (len && line[len - 1] == '\r') len--;
        if (len == 0) break; /* the blank line */
        if (first) {
            /* METHOD SP TARGET SP HTTP/1.x */
            size_t i = 0;
            while (i < len && is_tchar((unsigned char)line[i])) i++;
            const char *sp2 = i > 0 && i < len && line[i] == ' ' ? memchr(line + i + 1, ' ', len - i - 1) : NULL;
            if (!sp2 || sp2 == line + i + 1 || (size_t)(line + len - (sp2 + 1)) != 8 ||
                (memcmp(sp2 + 1, "HTTP/1.1", 8) != 0 && memcmp(sp2 + 1, "HTTP/1.0", 8) != 0)) {
                *status = 400, *code = "malformed_request";
                snprintf(msg, msg_n, "malformed request line (want a method, a target and HTTP version 1.0 or 1.1)");
                return -1;
            }
            first = 0;
        } else {
            size_t i = 0;
            while (i < len && is_tchar((unsigned char)line[i])) i++;
            if (i == 0 || i >= len || line[i] != ':') {
                *status = 400, *code = "malformed_request";
                snprintf(msg, msg_n, "malformed HTTP header line %s(a name, then ':')",
                         len && (line[0] == ' ' || line[0] == '\t') ? "(folded lines are not accepted) " : "");
                return -1;
            }
            const char *v = line + i + 1, *ve = line + len;
            while (v < ve && (*v == ' ' || *v == '\t')) v++;
            while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t')) ve--;
            if (i == 14 && strncasecmp(line, "Content-Length", 14) == 0) {
                uint64_t x = 0;
                int ok = v < ve;
                for (const char *q = v; q < ve && ok; q++) {
                    if (!isdigit((unsigned char)*q) || x > (UINT64_MAX - 9) / 10) ok = 0;
                    else x = x * 10 + (uint64_t)(*q - '0');
                }
                if (!ok || (have_cl && x != cl)) {
                    *status = 400, *code = "invalid_content_length";
                    snprintf(msg, msg_n, "Content-Length '%.*s' is not a byte count%s", (int)(ve - v > 40 ? 40 : ve - v), v,
                             ok ? " that agrees with the other Content-Length" : "");
                    return -1;
                }
                have_cl = 1;
                cl = x;
            } else if (i == 17 && strncasecmp(line, "Transfer-Encoding", 17) == 0) {
                *status = 411, *code = "length_required";
                snprintf(msg, msg_n, "request bodies must be sent with Content-Length (Transfer-Encoding is not accepted)");
                return -1;
            }
        }
        line = eol + 1;
    }
    if (have_cl && cl > body_cap) {
        *status = 413, *code = "request_too_large";
        snprintf(msg, msg_n, "the request body is %llu bytes; the limit is %llu", (unsigned long long)cl,
                 (unsigned long long)body_cap);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ the thread */

static void drop(srv_door *d, int i, int close_fd) {
    if (close_fd) close(d->p[i].fd);
    d->p[i] = d->p[--d->n];
}

static int same_addr(const pending *a, const struct sockaddr_storage *b) {
    if (a->addr.ss_family != b->ss_family) return 0;
    if (b->ss_family == AF_INET)
        return ((const struct sockaddr_in *)&a->addr)->sin_addr.s_addr == ((const struct sockaddr_in *)b)->sin_addr.s_addr;
    return memcmp(&((const struct sockaddr_in6 *)&a->addr)->sin6_addr, &((const struct sockaddr_in6 *)b)->sin6_addr,
                  sizeof(struct in6_addr)) == 0;
}

static void addr_text(const struct sockaddr_storage *a, char *buf, size_t n) {
    if (a->ss_family == AF_INET6) inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)a)->sin6_addr, buf, (socklen_t)n);
    else inet_ntop(AF_INET, &((const struct sockaddr_in *)a)->sin_addr, buf, (socklen_t)n);
}

static void accept_one(srv_door *d) {
    pending c = {0};
    c.addr_len = sizeof c.addr;
    c.fd = accept4(d->listen_fd, (struct sockaddr *)&c.addr, &c.addr_len, SOCK_CLOEXEC);
    if (c.fd < 0) return;
    int same = 0;
    for (int i = 0; i < d->n; i++) same += same_addr(&d->p[i], &c.addr);
    if (d->n >= d->lim.max_pending || (d->lim.per_ip > 0 && same >= d->lim.per_ip)) {
        char who[INET6_ADDRSTRLEN];
        addr_text(&c.addr, who, sizeof who);
        if (d->lim.log)
            d->lim.log("Server reached its limit of %d connections (%d per address) still sending a request: closing one from %s\n",
                       d->lim.max_pending, d->lim.per_ip, who);
        close(c.fd); /* over a limit: closed at once, as libmicrohttpd does */
        return;
    }
    c.t_accept = srv_now();
    d->p[d->n++] = c;
}

/* Look at what arrived on pending connection i; hand it over, refuse it, or keep waiting.
 * `ended`: the client has shut down its side (poll's POLLRDHUP / POLLHUP). */
static void look(srv_door *d, int i, int ended) {
    pending *c = &d->p[i];
    ssize_t got = recv(c->fd, d->buf, FR_DOOR_HEAD_CAP, MSG_PEEK | MSG_DONTWAIT);
    if (got == 0 || (got < 0 && errno != EAGAIN && errno != EINTR)) {
        drop(d, i, 1); /* closed or broken before a request */
        return;
    }
    if (got < 0) return;
    const char *h = d->buf, *end = NULL;
    for (ssize_t k = 0; k + 1 < got && !end; k++)
        if (h[k] == '\n' && (h[k + 1] == '\n' || (h[k + 1] == '\r' && k + 2 < got && h[k + 2] == '\n')))
            end = h + k + (h[k + 1] == '\n' ? 2 : 3);
    if (!end) {
        if (ended) { /* a head that will never be complete */
            drop(d, i, 1);
            return;
        }
        if (got >= FR_DOOR_HEAD_CAP) {
            refuse(c->fd, 431, "request_header_fields_too_large", "the request head is larger than 64 KiB");
            drop(d, i, 0);
            return;
        }
        int low = (int)got + 1; /* poll() wakes when more than what is here has arrived */
        setsockopt(c->fd, SOL_SOCKET, SO_RCVLOWAT, &low, sizeof low);
        return;
    }
    unsigned status = 0;
    const char *code = NULL;
    char msg[200];
    if (check_head(h, (size_t)(end - h), d->lim.body_cap, &status, &code, msg, sizeof msg) != 0) {
        if (d->lim.log) d->lim.log("refused a malformed request (%u): %s\n", status, msg);
        refuse(c->fd, status, code, msg);
        drop(d, i, 0);
        return;
    }
    int low = 1;
    setsockopt(c->fd, SOL_SOCKET, SO_RCVLOWAT, &low, sizeof low);
    const int fd = c->fd;
    struct sockaddr_storage addr = c->addr;
    const socklen_t addr_len = c->addr_len;
    drop(d, i, 0);
    /* libmicrohttpd owns the socket from here, and closes it if it cannot take it */
    (void)MHD_add_connection(d->mhd, fd, (const struct sockaddr *)&addr, addr_len);
}

static void *door_main(void *arg) {
    srv_door *d = arg;
    struct pollfd *pf = malloc((size_t)(d->lim.max_pending + 2) * sizeof *pf);
    if (!pf) return NULL;
    for (;;) {
        pf[0] = (struct pollfd){.fd = d->wake[0], .events = POLLIN};
        pf[1] = (struct pollfd){.fd = d->listen_fd, .events = d->n < d->lim.max_pending ? POLLIN : 0};
        for (int i = 0; i < d->n; i++) pf[2 + i] = (struct pollfd){.fd = d->p[i].fd, .events = POLLIN | POLLRDHUP};
        const int n = d->n;
        int r = poll(pf, (nfds_t)(2 + n), 100);
        if (r < 0 && errno != EINTR) break;
        if (pf[0].revents) break; /* srv_door_close */
        /* pending connections first (from the end, as drop() moves the last into the gap) */
        for (int i = n - 1; i >= 0; i--)
            if (pf[2 + i].revents) look(d, i, (pf[2 + i].revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0);
        if (pf[1].revents & POLLIN) accept_one(d);
        const double t = srv_now();
        for (int i = d->n - 1; i >= 0; i--)
            if (t - d->p[i].t_accept > d->lim.head_timeout) drop(d, i, 1);
    }
    free(pf);
    return NULL;
}

int srv_door_start(srv_door *d, struct MHD_Daemon *mhd, const srv_door_limits *lim) {
    d->mhd = mhd;
    d->lim = *lim;
    if (d->lim.max_pending < 1) d->lim.max_pending = 1;
    d->p = calloc((size_t)d->lim.max_pending, sizeof *d->p);
    d->buf = malloc(FR_DOOR_HEAD_CAP + 1);
    if (!d->p || !d->buf) return ENOMEM;
    int e = pthread_create(&d->thread, NULL, door_main, d);
    if (e == 0) d->started = 1;
    return e;
}

void srv_door_close(srv_door *d) {
    if (!d) return;
    if (d->started) {
        (void)!write(d->wake[1], "x", 1);
        pthread_join(d->thread, NULL);
    }
    for (int i = 0; i < d->n; i++) close(d->p[i].fd);
    if (d->listen_fd >= 0) close(d->listen_fd);
    if (d->wake[0] >= 0) close(d->wake[0]);
    if (d->wake[1] >= 0) close(d->wake[1]);
    free(d->p);
    free(d->buf);
    free(d);
}
