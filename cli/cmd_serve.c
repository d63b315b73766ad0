/* cmd_serve.c — `frugal serve`: an OpenAI-compatible HTTP server on libmicrohttpd.
 *
 * Endpoints: POST /v1/chat/completions, POST /v1/completions (server-sent events when
 * "stream": true), GET /v1/models, GET /health, GET /metrics (Prometheus text), GET / (the
 * chat page of serve_web.c). libmicrohttpd runs a thread per connection; the handlers have
 * serve_api.c check the JSON body and tokenize the prompt, and queue a srv_req for the
 * scheduler thread (serve_sched.c), which owns the engine. A streaming response is a
 * callback response that waits for new text; a non-streaming one waits in the handler. Both
 * poll their socket while waiting, so a client that goes away cancels its request at once,
 * and the scheduler frees the slot at its next iteration. Errors are OpenAI-style objects:
 * {"error": {"message", "type", "param", "code"}}. */
#define _GNU_SOURCE
#include "cli.h"
#include "serve.h"

#include "frugal.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BODY_CAP (1u << 20)        /* request bodies above 1 MiB get 413 */
#define WAIT_SLICE_NS 50000000L    /* waiters re-check their socket every 50 ms */
#define SEND_TIMEOUT 60u           /* s a client may take to accept response bytes */
#define HEALTH_HEADROOM 16         /* connections one client address cannot take (default) */

void usage_serve(FILE *f) {
    fprintf(f,
            "usage: frugal serve --model DIR [options]\n"
            "\n"
            "OpenAI-compatible HTTP server for the model in DIR (config.json, safetensors weights,\n"
            "tokenizer.json). Concurrent requests share decode steps (continuous batching over\n"
            "--parallel slots, each with its own latent KV cache). See docs/serve.md.\n"
            "\n"
            "Endpoints:\n"
            "  POST /v1/chat/completions   chat (DeepSeek-V3 chat template), \"stream\": true for SSE\n"
            "  POST /v1/completions        plain completion of \"prompt\"\n"
            "  GET  /v1/models             the served model\n"
            "  GET  /health                liveness\n"
            "  GET  /metrics               Prometheus text: requests, tokens/s, queue, KV cache\n"
            "  GET  /                      a small chat page\n"
            "\n"
            "Options:\n"
            "  --model DIR|FILE     model folder, or a deepseek2 .gguf file (frugal convert --to gguf)\n"
            "  --host ADDR          IPv4 or IPv6 address to listen on (default 127.0.0.1)\n"
            "  --port N             TCP port (default 8080; 0 = any free port, printed at start)\n"
            "  --parallel N         sequences decoded together (default 4)\n"
            "  --ctx N              maximum tokens per sequence, prompt + completion\n"
            "                       (default: min(max_position_embeddings, 4096))\n"
            "  --api-key KEY        require \"Authorization: Bearer KEY\" on /v1/* (default: none;\n"
            "                       also read from FRUGAL_API_KEY)\n"
            "  --max-queue N        requests waiting for a slot before 503 (default 256)\n"
            "  --weights TYPE       weight storage: auto (as stored; the default), f32, bf16, q8_0, q4_1\n"
            "  --kv TYPE            latent KV cache: f32, bf16, fp8 (default f32)\n"
            "  --threads N          CPU threads (default: OpenMP's default)\n"
            "  --device D           cpu (default) | cuda: where the engine runs (FP32 weights and cache\n"
            "                       on cuda)\n"
            "  --name NAME          model id reported by /v1/models (default: the folder's name)\n"
            "  --no-check           skip the load-time check that every weight is finite (NaN / Inf;\n"
            "                       it reads all weights once at start-up)\n"
            "  --adapter DIR        fold a LoRA adapter (PEFT folder) into the weights at load time\n"
            "  --max-connections N  open connections in all (default: max-queue + parallel + 64)\n"
            "  --max-client-connections N\n"
            "                       open connections per client address (default: max-connections\n"
            "                       - 16, so that one client cannot take them all; 0 = no limit)\n"
            "  --header-timeout S   seconds a connection may stay silent while its request (headers\n"
            "                       or body) is incomplete, or idle between requests (default 10)\n"
            "  --drain-seconds S    on SIGINT / SIGTERM: seconds running requests may take to finish\n"
            "                       before their streams end with an error event (default 10)\n"
            "  -h, --help           show this help\n"
            "\n"
            "Stops cleanly on SIGINT / SIGTERM: stops accepting, answers queued requests 503, lets\n"
            "running ones finish for up to --drain-seconds, then ends each open stream with an error\n"
            "event and [DONE]. A second signal skips the rest of the drain.\n");
}

/* ------------------------------------------------------------------ connection state */

typedef struct {
    char *body;
    size_t len, cap;
    int too_big;
    int responded;
    srv_req *req;   /* a request submitted by this connection (non-streaming wait) */
} conn_ctx;

static srv_server S;
static unsigned header_timeout = 10;

/* Set this connection's inactivity timeout (0 = none), counted from now. */
static void conn_timeout(struct MHD_Connection *c, unsigned secs) {
    MHD_set_connection_option(c, MHD_CONNECTION_OPTION_TIMEOUT, 0u); /* from 0, MHD restarts the clock */
    if (secs) MHD_set_connection_option(c, MHD_CONNECTION_OPTION_TIMEOUT, secs);
}

/* Is the client of this connection gone (peer closed or reset)? */
static int client_gone(struct MHD_Connection *c) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci) return 0;
    struct pollfd p = {.fd = ci->connect_fd, .events = POLLRDHUP};
    if (poll(&p, 1, 0) <= 0) return 0;
    return (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0;
}

static void wait_slice(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += WAIT_SLICE_NS;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(&S.out_cv, &S.mu, &ts);
}

/* ------------------------------------------------------------------ responses */

static enum MHD_Result send_text(struct MHD_Connection *c, unsigned status, const char *ctype, const char *text,
                                 size_t len) {
    struct MHD_Response *r = MHD_create_response_from_buffer(len, (void *)text, MHD_RESPMEM_MUST_COPY);
    if (!r) return MHD_NO;
    conn_timeout(c, SEND_TIMEOUT);
    MHD_add_response_header(r, "Content-Type", ctype);
    MHD_add_response_header(r, "Cache-Control", "no-store");
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    pthread_mutex_lock(&S.mu);
    if (status < 600) S.http_status[status]++;
    pthread_mutex_unlock(&S.mu);
    return ret;
}

static enum MHD_Result send_json(struct MHD_Connection *c, unsigned status, cJSON *j) {
    char *t = j ? cJSON_PrintUnformatted(j) : NULL;
    cJSON_Delete(j);
    if (!t) return send_text(c, 500, "application/json",
                             "{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\",\"param\":null,\"code\":null}}", 83);
    enum MHD_Result ret = send_text(c, status, "application/json", t, strlen(t));
    free(t);
    return ret;
}

static enum MHD_Result send_error(struct MHD_Connection *c, unsigned status, const char *param, const char *code,
                                  const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static enum MHD_Result send_error(struct MHD_Connection *c, unsigned status, const char *param, const char *code,
                                  const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    const char *type = status == 401 ? "authentication_error"
                       : status == 404 ? "not_found_error"
                       : status == 429 || status == 503 ? "server_overloaded"
                       : status >= 500 ? "server_error" : "invalid_request_error";
    if (status == 400 || status == 413) type = "invalid_request_error";
    return send_json(c, status, srv_error_object(msg, type, param, code));
}

static int pend_add(srv_req *r, char *ev) {
    if (!ev) return -1;
    size_t l = strlen(ev);
    char *p = realloc(r->pend, r->pend_len + l + 1);
    if (!p) {
        free(ev);
        return -1;
    }
    memcpy(p + r->pend_len, ev, l + 1);
    r->pend = p;
    r->pend_len += l;
    free(ev);
    return 0;
}

typedef struct {
    srv_req *r;
    struct MHD_Connection *conn;
} stream_ctx;

/* MHD content reader of a streaming response: hands out pending events, waits for more. */
static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    stream_ctx *sc = cls;
    srv_req *r = sc->r;
    pthread_mutex_lock(&S.mu);
    for (;;) {
        if (r->pend_off < r->pend_len) {
            size_t n = r->pend_len - r->pend_off;
            if (n > max) n = max;
            memcpy(buf, r->pend + r->pend_off, n);
            r->pend_off += n;
            if (r->pend_off == r->pend_len) r->pend_off = r->pend_len = 0;
            pthread_mutex_unlock(&S.mu);
            conn_timeout(sc->conn, SEND_TIMEOUT); /* the reader waited with the clock stopped */
            return (ssize_t)n;
        }
        if (r->finished) {
            pthread_mutex_unlock(&S.mu);
            return MHD_CONTENT_READER_END_OF_STREAM;
        }
        int fail = 0;
        if (r->chat && !r->sent_role) {
            fail |= pend_add(r, srv_stream_event(&S, r, "", 0, 1, NULL, 0));
            r->sent_role = 1;
        }
        while (r->sent_cuts < r->n_cuts) { /* one event per released piece (token) */
            size_t end = r->cuts[r->sent_cuts++];
            fail |= pend_add(r, srv_stream_event(&S, r, r->out + r->sent, end - r->sent, 0, NULL, 0));
            r->sent = end;
        }
        int shut = S.stopping && r->state != SRV_DONE; /* drain time over: end the stream */
        if ((r->state == SRV_DONE && r->out_len == r->sent) || shut) {
            if (shut) {
                r->cancelled = 1; /* the scheduler frees the slot */
                pthread_cond_signal(&S.sched_cv);
            }
            if (r->error || shut) {
                cJSON *eo = srv_error_object(shut || r->rejected ? "server shutting down" : r->error, "server_error", NULL,
                                             shut || r->rejected ? "server_shutting_down" : NULL);
                char *j = eo ? cJSON_PrintUnformatted(eo) : NULL;
                cJSON_Delete(eo);
                if (j) {
                    char *ev = malloc(strlen(j) + 10);
                    if (ev) sprintf(ev, "data: %s\n\n", j);
                    fail |= pend_add(r, ev);
                    free(j);
                }
            } else {
                fail |= pend_add(r, srv_stream_event(&S, r, "", 0, 0, r->finish_reason ? r->finish_reason : "stop", 0));
                if (r->include_usage) fail |= pend_add(r, srv_stream_event(&S, r, "", 0, 0, NULL, 1));
            }
            char *done = strdup("data: [DONE]\n\n");
            fail |= pend_add(r, done);
            r->finished = 1;
        }
        if (fail) {
            r->cancelled = 1;
            pthread_cond_signal(&S.sched_cv);
            pthread_mutex_unlock(&S.mu);
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        if (r->pend_off < r->pend_len || r->finished) continue;
        if (client_gone(sc->conn)) {
            r->cancelled = 1;
            pthread_cond_signal(&S.sched_cv);
            pthread_mutex_unlock(&S.mu);
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        wait_slice();
    }
}

static void stream_free(void *cls) {
    stream_ctx *sc = cls;
    pthread_mutex_lock(&S.mu);
    if (sc->r->state != SRV_DONE && !sc->r->cancelled) {
        sc->r->cancelled = 1; /* the response went away before the end: the client is gone */
        pthread_cond_signal(&S.sched_cv);
    }
    srv_req_unref_locked(sc->r);
    S.open_reqs--;
    pthread_cond_broadcast(&S.out_cv);
    pthread_mutex_unlock(&S.mu);
    free(sc);
}

/* ------------------------------------------------------------------ handlers */

static enum MHD_Result handle_completion(struct MHD_Connection *c, conn_ctx *cc, int chat) {
    if (cc->too_big) return send_error(c, 413, NULL, "request_too_large", "request body larger than %u bytes", BODY_CAP);
    cJSON *root = cJSON_ParseWithLength(cc->body ? cc->body : "", cc->len);
    if (!root) return send_error(c, 400, NULL, "invalid_json", "the request body is not valid JSON");
    srv_parse_err e = {0};
    srv_req *r = srv_parse_request(&S, root, chat, &e);
    cJSON_Delete(root);
    if (!r) return send_error(c, e.status ? e.status : 400, e.param, e.code, "%s", e.msg);
    int sub = srv_submit(&S, r);
    if (sub != 0) {
        pthread_mutex_lock(&S.mu);
        srv_req_unref_locked(r);
        pthread_mutex_unlock(&S.mu);
        if (sub == -2) return send_error(c, 503, NULL, "server_shutting_down", "server shutting down");
        return send_error(c, 503, NULL, "queue_full", "the server is busy (%ld requests queued); retry later", S.max_queue);
    }
    pthread_mutex_lock(&S.mu);
    S.open_reqs++; /* until stream_free / on_completed */
    S.prompt_tokens += (unsigned long)r->n_prompt;
    S.completions[chat]++;
    pthread_mutex_unlock(&S.mu);
    if (r->stream) {
        stream_ctx *sc = calloc(1, sizeof *sc);
        if (!sc) {
            pthread_mutex_lock(&S.mu);
            r->cancelled = 1;
            srv_req_unref_locked(r);
            S.open_reqs--;
            pthread_mutex_unlock(&S.mu);
            return send_error(c, 500, NULL, NULL, "out of memory");
        }
        sc->r = r; /* our reference moves to the response */
        sc->conn = c;
        struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, stream_reader, sc, stream_free);
        if (!resp) {
            stream_free(sc);
            return MHD_NO;
        }
        MHD_add_response_header(resp, "Content-Type", "text/event-stream; charset=utf-8");
        MHD_add_response_header(resp, "Cache-Control", "no-cache");
        MHD_add_response_header(resp, "X-Accel-Buffering", "no");
        enum MHD_Result ret = MHD_queue_response(c, 200, resp);
        MHD_destroy_response(resp);
        pthread_mutex_lock(&S.mu);
        S.http_status[200]++;
        pthread_mutex_unlock(&S.mu);
        return ret;
    }
    /* non-streaming: wait here (thread per connection), watching the socket */
    pthread_mutex_lock(&S.mu);
    cc->req = r;
    while (r->state != SRV_DONE && !S.stopping) {
        if (client_gone(c)) {
            r->cancelled = 1;
            pthread_cond_signal(&S.sched_cv);
            pthread_mutex_unlock(&S.mu);
            return MHD_NO; /* nobody to answer; completed callback drops our reference */
        }
        wait_slice();
    }
    cJSON *body = NULL;
    char err[300] = "";
    int shut = r->state != SRV_DONE || r->rejected;
    if (shut) {
        snprintf(err, sizeof err, "server shutting down");
        r->cancelled = 1;
        pthread_cond_signal(&S.sched_cv);
    }
    else if (r->error) snprintf(err, sizeof err, "%s", r->error);
    else body = srv_final_body(&S, r);
    pthread_mutex_unlock(&S.mu);
    if (shut) return send_error(c, 503, NULL, "server_shutting_down", "%s", err);
    if (err[0]) return send_error(c, 500, NULL, NULL, "%s", err);
    return send_json(c, 200, body);
}

static enum MHD_Result handle_models(struct MHD_Connection *c) {
    cJSON *o = cJSON_CreateObject(), *data = cJSON_AddArrayToObject(o, "data"), *m = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "object", "list");
    cJSON_AddItemToArray(data, m);
    cJSON_AddStringToObject(m, "id", S.model_id);
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", (double)(long)time(NULL));
    cJSON_AddStringToObject(m, "owned_by", "frugal");
    cJSON_AddNumberToObject(m, "context_length", S.ctx);
    return send_json(c, 200, o);
}

static enum MHD_Result handle_metrics(struct MHD_Connection *c) {
    size_t cap = 16384, n = 0;
    char *t = malloc(cap);
    if (!t) return send_error(c, 500, NULL, NULL, "out of memory");
#define P(...) do { if (n < cap) n += (size_t)snprintf(t + n, cap - n, __VA_ARGS__); } while (0)
    pthread_mutex_lock(&S.mu);
    long active = S.active, cached = S.kv_tokens;
    P("# HELP frugal_http_requests_total HTTP responses sent, by status code.\n# TYPE frugal_http_requests_total counter\n");
    for (int k = 100; k < 600; k++)
        if (S.http_status[k]) P("frugal_http_requests_total{code=\"%d\"} %lu\n", k, S.http_status[k]);
    P("# HELP frugal_completion_requests_total Completion requests accepted, by endpoint.\n# TYPE frugal_completion_requests_total counter\n");
    P("frugal_completion_requests_total{endpoint=\"completions\"} %lu\n", S.completions[0]);
    P("frugal_completion_requests_total{endpoint=\"chat_completions\"} %lu\n", S.completions[1]);
    P("# HELP frugal_requests_finished_total Completions finished normally.\n# TYPE frugal_requests_finished_total counter\nfrugal_requests_finished_total %lu\n", S.finished_reqs);
    P("# HELP frugal_requests_failed_total Completions that failed during generation.\n# TYPE frugal_requests_failed_total counter\nfrugal_requests_failed_total %lu\n", S.failed_reqs);
    P("# HELP frugal_requests_cancelled_total Completions cancelled because the client went away.\n# TYPE frugal_requests_cancelled_total counter\nfrugal_requests_cancelled_total %lu\n", S.disconnects);
    P("# HELP frugal_prompt_tokens_total Prompt tokens of accepted requests.\n# TYPE frugal_prompt_tokens_total counter\nfrugal_prompt_tokens_total %lu\n", S.prompt_tokens);
    P("# HELP frugal_prompt_tokens_cached_total Prompt tokens taken from a slot's cache (the conversation's earlier turns), not computed.\n# TYPE frugal_prompt_tokens_cached_total counter\nfrugal_prompt_tokens_cached_total %lu\n", S.prefix_reused);
    P("# HELP frugal_generated_tokens_total Tokens sampled.\n# TYPE frugal_generated_tokens_total counter\nfrugal_generated_tokens_total %lu\n", S.gen_tokens);
    P("# HELP frugal_tokens_per_second Tokens sampled per second over the last 10 s.\n# TYPE frugal_tokens_per_second gauge\nfrugal_tokens_per_second %.2f\n", srv_tokens_per_s(&S));
    P("# HELP frugal_forward_passes_total Batched engine forwards.\n# TYPE frugal_forward_passes_total counter\nfrugal_forward_passes_total %lu\n", S.forwards);
    P("# HELP frugal_forward_seconds_total Time in batched engine forwards.\n# TYPE frugal_forward_seconds_total counter\nfrugal_forward_seconds_total %.6f\n", S.forward_s);
    P("# HELP frugal_sample_seconds_total Time sampling and detokenizing after the forwards.\n# TYPE frugal_sample_seconds_total counter\nfrugal_sample_seconds_total %.6f\n", S.sample_s);
    P("# HELP frugal_decode_steps_total Forwards that decoded at least one sequence.\n# TYPE frugal_decode_steps_total counter\nfrugal_decode_steps_total %lu\n", S.decode_steps);
    P("# HELP frugal_decode_rows_total Sequences decoded, summed over decode steps (rows / steps = mean batch).\n# TYPE frugal_decode_rows_total counter\nfrugal_decode_rows_total %lu\n", S.batch_rows);
    P("# HELP frugal_queue_depth Requests waiting for a slot.\n# TYPE frugal_queue_depth gauge\nfrugal_queue_depth %ld\n", S.q_len);
    P("# HELP frugal_slots_active Slots holding a request.\n# TYPE frugal_slots_active gauge\nfrugal_slots_active %ld\n", active);
    P("# HELP frugal_slots_total Slots (--parallel).\n# TYPE frugal_slots_total gauge\nfrugal_slots_total %d\n", S.parallel);
    P("# HELP frugal_kv_cache_tokens Tokens held in the latent KV caches of active slots.\n# TYPE frugal_kv_cache_tokens gauge\nfrugal_kv_cache_tokens %ld\n", cached);
    P("# HELP frugal_kv_cache_used_bytes Bytes of latent KV cache in use by active slots.\n# TYPE frugal_kv_cache_used_bytes gauge\nfrugal_kv_cache_used_bytes %.0f\n", (double)cached * (double)S.kv_bytes_per_token);
    P("# HELP frugal_kv_cache_capacity_bytes Latent KV cache bytes at full context in every slot.\n# TYPE frugal_kv_cache_capacity_bytes gauge\nfrugal_kv_cache_capacity_bytes %.0f\n", (double)S.parallel * S.ctx * (double)S.kv_bytes_per_token);
    P("# HELP frugal_kv_cache_usage_ratio Used / capacity.\n# TYPE frugal_kv_cache_usage_ratio gauge\nfrugal_kv_cache_usage_ratio %.6f\n", (double)cached / ((double)S.parallel * S.ctx));
    P("# HELP frugal_time_to_first_token_seconds Queue + prefill time to the first sampled token.\n# TYPE frugal_time_to_first_token_seconds summary\nfrugal_time_to_first_token_seconds_sum %.6f\nfrugal_time_to_first_token_seconds_count %lu\n", S.ttft_sum, S.ttft_count);
    P("# HELP frugal_request_duration_seconds Submission to completion of finished requests.\n# TYPE frugal_request_duration_seconds summary\nfrugal_request_duration_seconds_sum %.6f\nfrugal_request_duration_seconds_count %lu\n", S.duration_sum, S.finished_reqs);
    P("# HELP frugal_uptime_seconds Seconds since start.\n# TYPE frugal_uptime_seconds gauge\nfrugal_uptime_seconds %.1f\n", srv_now() - S.t_start);
    pthread_mutex_unlock(&S.mu);
#undef P
    if (n >= cap) n = cap - 1;
    enum MHD_Result ret = send_text(c, 200, "text/plain; version=0.0.4; charset=utf-8", t, n);
    free(t);
    return ret;
}

static int authorized(struct MHD_Connection *c) {
    if (!S.api_key) return 1;
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    if (!h || strncasecmp(h, "Bearer ", 7) != 0) return 0;
    h += 7;
    while (*h == ' ') h++;
    /* constant-time comparison */
    size_t a = strlen(h), b = strlen(S.api_key);
    unsigned diff = (unsigned)(a != b);
    for (size_t i = 0; i < a && i < b; i++) diff |= (unsigned char)h[i] ^ (unsigned char)S.api_key[i];
    return diff == 0;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_size, void **con_cls) {
    (void)cls;
    (void)version;
    conn_ctx *cc = *con_cls;
    int is_post = strcmp(method, "POST") == 0, is_get = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
    int chat = strcmp(url, "/v1/chat/completions") == 0 || strcmp(url, "/chat/completions") == 0;
    int compl = strcmp(url, "/v1/completions") == 0 || strcmp(url, "/completions") == 0;
    if (!cc) {
        cc = calloc(1, sizeof *cc);
        if (!cc) return MHD_NO;
        *con_cls = cc;
        /* checks that need no body: answered before reading it */
        if (strncmp(url, "/v1/", 4) == 0 && !authorized(c)) {
            cc->responded = 1;
            return send_error(c, 401, NULL, "invalid_api_key", "Incorrect or missing API key (send \"Authorization: Bearer KEY\")");
        }
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
        if (cl) {
            char *end;
            errno = 0;
            unsigned long long v = strtoull(cl, &end, 10);
            if (errno || end == cl || v > BODY_CAP) {
                cc->responded = 1;
                return send_error(c, 413, NULL, "request_too_large", "request body larger than %u bytes", BODY_CAP);
            }
        }
        return MHD_YES;
    }
    if (cc->responded) {
        *upload_size = 0; /* discard whatever still arrives */
        return MHD_YES;
    }
    if (*upload_size) {
        if (!cc->too_big) {
            if (cc->len + *upload_size > BODY_CAP) {
                cc->too_big = 1;
                free(cc->body);
                cc->body = NULL;
                cc->len = cc->cap = 0;
            } else {
                if (cc->len + *upload_size + 1 > cc->cap) {
                    size_t cap = (cc->len + *upload_size + 1) * 2;
                    if (cap > BODY_CAP + 1) cap = BODY_CAP + 1;
                    char *p = realloc(cc->body, cap);
                    if (!p) return MHD_NO;
                    cc->body = p;
                    cc->cap = cap;
                }
                memcpy(cc->body + cc->len, upload_data, *upload_size);
                cc->len += *upload_size;
            }
        }
        *upload_size = 0;
        return MHD_YES;
    }
    cc->responded = 1;
    conn_timeout(c, 0); /* the request is complete: no timeout while it is processed */
    if (chat || compl) {
        if (!is_post) return send_error(c, 405, NULL, "method_not_allowed", "use POST for %s", url);
        return handle_completion(c, cc, chat);
    }
    if (strcmp(url, "/v1/models") == 0) {
        if (!is_get) return send_error(c, 405, NULL, "method_not_allowed", "use GET for %s", url);
        return handle_models(c);
    }
    if (strncmp(url, "/v1/models/", 11) == 0 && is_get) {
        if (strcmp(url + 11, S.model_id) != 0)
            return send_error(c, 404, "model", "model_not_found", "The model '%.200s' does not exist", url + 11);
        return handle_models(c);
    }
    if (strcmp(url, "/health") == 0) {
        if (!is_get) return send_error(c, 405, NULL, "method_not_allowed", "use GET for %s", url);
        return send_text(c, 200, "application/json", "{\"status\":\"ok\"}", 15);
    }
    if (strcmp(url, "/metrics") == 0) {
        if (!is_get) return send_error(c, 405, NULL, "method_not_allowed", "use GET for %s", url);
        return handle_metrics(c);
    }
    if (strcmp(url, "/") == 0 || strcmp(url, "/index.html") == 0) {
        if (!is_get) return send_error(c, 405, NULL, "method_not_allowed", "use GET for %s", url);
        return send_text(c, 200, "text/html; charset=utf-8", srv_web_page, strlen(srv_web_page));
    }
    return send_error(c, 404, NULL, "not_found", "no such endpoint: %s %.200s", method, url);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe) {
    (void)cls;
    (void)c;
    conn_ctx *cc = *con_cls;
    if (!cc) return;
    if (cc->req) {
        pthread_mutex_lock(&S.mu);
        if (cc->req->state != SRV_DONE && toe != MHD_REQUEST_TERMINATED_COMPLETED_OK) {
            cc->req->cancelled = 1;
            pthread_cond_signal(&S.sched_cv);
        }
        srv_req_unref_locked(cc->req);
        S.open_reqs--;
        pthread_cond_broadcast(&S.out_cv);
        pthread_mutex_unlock(&S.mu);
    }
    /* kept alive: the next request gets the short timeout again (only here, in the
     * connection's own thread; not while MHD closes connections at shutdown) */
    if (toe == MHD_REQUEST_TERMINATED_COMPLETED_OK) conn_timeout(c, header_timeout);
    free(cc->body);
    free(cc);
    *con_cls = NULL;
}

/* Tokens are small writes: send each at once (no Nagle delay against the client's delayed ACK). */
static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context, enum MHD_ConnectionNotificationCode code) {
    (void)cls;
    (void)socket_context;
    if (code != MHD_CONNECTION_NOTIFY_STARTED) return;
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    int one = 1;
    if (ci) setsockopt(ci->connect_fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/* libmicrohttpd's messages, rate-limited: a message (by format) is printed at most once per
 * LOG_PERIOD seconds; the next one printed says how many were left out meanwhile. A flood of
 * refused or broken connections thus writes a few lines, not thousands. */
#define LOG_PERIOD 1.0
#define LOG_KINDS 32
static struct {
    const char *fmt;
    double last;
    unsigned long skipped;
} log_kinds[LOG_KINDS];
static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;

static void mhd_log(void *cls, const char *fmt, va_list ap) {
    (void)cls;
    /* our own refusals (a client that went away) are counted in /metrics, not logged */
    if (strstr(fmt, "Application reported internal error") || strstr(fmt, "application error generating response")) return;
    char line[600];
    vsnprintf(line, sizeof line, fmt, ap);
    size_t n = strlen(line);
    while (n && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = 0;
    double now = srv_now();
    unsigned long skipped = 0;
    pthread_mutex_lock(&log_mu);
    int k = 0, oldest = 0;
    for (; k < LOG_KINDS && log_kinds[k].fmt && log_kinds[k].fmt != fmt; k++)
        if (log_kinds[k].last < log_kinds[oldest].last) oldest = k;
    if (k == LOG_KINDS) { /* table full: reuse the least recently printed kind */
        k = oldest;
        log_kinds[k].fmt = NULL;
    }
    if (log_kinds[k].fmt == fmt && now - log_kinds[k].last < LOG_PERIOD) {
        log_kinds[k].skipped++;
        pthread_mutex_unlock(&log_mu);
        return;
    }
    if (log_kinds[k].fmt == fmt) skipped = log_kinds[k].skipped;
    log_kinds[k].fmt = fmt;
    log_kinds[k].last = now;
    log_kinds[k].skipped = 0;
    if (skipped) fprintf(stderr, "frugal serve: http: %s (%lu more like this)\n", line, skipped);
    else fprintf(stderr, "frugal serve: http: %s\n", line);
    pthread_mutex_unlock(&log_mu);
}

/* The front door's messages (serve_door.c) go through the same rate limit. */
static void door_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void door_log(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    mhd_log(NULL, fmt, ap);
    va_end(ap);
}

/* ------------------------------------------------------------------ drain */

/* Wait (mu held) until no accepted completion is open, the deadline passes, or a signal
 * comes. Returns 1 when all are done. */
static int wait_open_reqs(double deadline, const sigset_t *sigs) {
    while (S.open_reqs > 0) {
        if (srv_now() >= deadline) return 0;
        if (sigs) {
            struct timespec zero = {0, 0};
            if (sigtimedwait(sigs, NULL, &zero) > 0) {
                fprintf(stderr, "frugal serve: second signal, ending the drain\n");
                return 0;
            }
        }
        wait_slice();
    }
    return 1;
}

/* SIGINT / SIGTERM: stop accepting; refuse queued requests (503 / an error event); let running
 * ones finish until drain_s; then end every open stream with an error event and [DONE]
 * (stream_reader does it once S.stopping is set) and give those last events a moment to go. */
static void drain(srv_door **door, const sigset_t *sigs, double drain_s) {
    srv_door_close(*door); /* new connections are refused */
    *door = NULL;
    pthread_mutex_lock(&S.mu);
    S.draining = 1;
    srv_sched_reject_queued_locked(&S);
    pthread_cond_broadcast(&S.out_cv);
    int done = wait_open_reqs(srv_now() + drain_s, sigs);
    if (!done) {
        fprintf(stderr, "frugal serve: drain time over: ending %ld open request%s\n", S.open_reqs, S.open_reqs == 1 ? "" : "s");
        S.stopping = 1;
        pthread_cond_broadcast(&S.out_cv);
        pthread_cond_broadcast(&S.sched_cv);
        wait_open_reqs(srv_now() + 2.0, NULL);
    }
    pthread_mutex_unlock(&S.mu);
}

/* ------------------------------------------------------------------ command */

int cmd_serve(int argc, char **argv) {
    const char *model = NULL, *adapter = NULL, *host = "127.0.0.1", *api_key = getenv("FRUGAL_API_KEY"), *name = NULL, *v;
    long port = 8080, parallel = 4, ctx = 0, threads = 0, max_queue = 256, max_conns = 0, max_client = -1,
         hdr_timeout = 10;
    double drain_s = 10;
    int weights = -1; /* as stored */
    int no_check = 0;
    fr_kv_type kv = FR_KV_F32;
    const char *cmd = "serve";
    const char *device = NULL;
    const cli_opt opts[] = {{"--model", &model, NULL}, {"--adapter", &adapter, NULL}, {"--host", &host, NULL}, {"--no-check", NULL, &no_check},
                            {"--device", &device, NULL}};
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        int r;
        if (cli_is_help(s)) {
            usage_serve(stdout);
            return CLI_EXIT_OK;
        }
#define VALUE(nm) ((r = cli_opt_value(cmd, usage_serve, argc, argv, &i, nm, &v)) != 0)
        if ((r = cli_opt_match(cmd, usage_serve, argc, argv, &i, opts, CLI_N_OPTS(opts))) != 0) {
            if (r < 0) return CLI_EXIT_USAGE;
        }
        else if (VALUE("--port")) { if (r < 0 || cli_parse_int(cmd, usage_serve, "--port", v, 0, 65535, &port)) return CLI_EXIT_USAGE; }
        else if (VALUE("--parallel")) { if (r < 0 || cli_parse_int(cmd, usage_serve, "--parallel", v, 1, 256, &parallel)) return CLI_EXIT_USAGE; }
        else if (VALUE("--ctx")) { if (r < 0 || cli_parse_int(cmd, usage_serve, "--ctx", v, 2, 1 << 24, &ctx)) return CLI_EXIT_USAGE; }
        else if (VALUE("--threads")) { if (r < 0 || cli_parse_int(cmd, usage_serve, "--threads", v, 1, 4096, &threads)) return CLI_EXIT_USAGE; }
        else if (VALUE("--max-queue")) { if (r < 0 || cli_parse_int(cmd, usage_serve, "--max-queue", v, 1, 1 << 20, &max_queue)) return CLI_EXIT_USAGE; }
        else if (VALUE("--max-connections")) { if (r < 0 || cli_parse_int(cmd, usage_serve, "--max-connections", v, 1, 1 << 20, &max_conns)) return CLI_EXIT_USAGE; }
        else if (VALUE("--max-client-connections")) { if (r < 0 || cli_parse_int(cmd, usage_serve, "--max-client-connections", v, 0, 1 << 20, &max_client)) return CLI_EXIT_USAGE; }
        else if (VALUE("--header-timeout")) { if (r < 0 || cli_parse_int(cmd, usage_serve, "--header-timeout", v, 1, 86400, &hdr_timeout)) return CLI_EXIT_USAGE; }
        else if (VALUE("--drain-seconds")) {
            if (r < 0) return CLI_EXIT_USAGE;
            char *e;
            errno = 0;
            drain_s = strtod(v, &e);
            if (errno || e == v || *e || !(drain_s >= 0 && drain_s <= 86400))
                return cli_usage_error(cmd, usage_serve, "option --drain-seconds: '%s' is not a number of seconds in [0, 86400]", v);
        }
        else if (VALUE("--api-key")) {
            if (r < 0) return CLI_EXIT_USAGE;
            if (!v[0]) return cli_usage_error(cmd, usage_serve, "option --api-key: empty key");
            api_key = v;
        }
        else if (VALUE("--name")) {
            if (r < 0) return CLI_EXIT_USAGE;
            if (!v[0]) return cli_usage_error(cmd, usage_serve, "option --name: empty name");
            name = v;
        }
        else if (VALUE("--weights")) {
            if (r < 0 || cli_parse_weights(cmd, usage_serve, v, &weights) != 0) return CLI_EXIT_USAGE;
        }
        else if (VALUE("--kv")) {
            if (r < 0) return CLI_EXIT_USAGE;
            if (strcmp(v, "f32") == 0) kv = FR_KV_F32;
            else if (strcmp(v, "bf16") == 0) kv = FR_KV_BF16;
            else if (strcmp(v, "fp8") == 0) kv = FR_KV_FP8;
            else return cli_usage_error(cmd, usage_serve, "option --kv: '%s' is not one of f32, bf16, fp8", v);
        }
        else if (s[0] == '-') return cli_usage_error(cmd, usage_serve, "unknown option '%s'", s);
        else return cli_usage_error(cmd, usage_serve, "unexpected argument '%s'", s);
#undef VALUE
    }
    if (!model) return cli_usage_error(cmd, usage_serve, "missing required option '--model DIR'");
    if (device && strcmp(device, "cpu") != 0 && strcmp(device, "cuda") != 0)
        return cli_usage_error(cmd, usage_serve, "--device must be cpu or cuda, got '%s'", device);
    if (api_key && !api_key[0]) api_key = NULL;
    size_t ml = strlen(model);
    struct stat st;
    const int gguf = ml >= 5 && strcasecmp(model + ml - 5, ".gguf") == 0 && stat(model, &st) == 0 && S_ISREG(st.st_mode);
    if (!gguf && cli_check_dir(model, "model folder") != CLI_EXIT_OK) return CLI_EXIT_FAIL;

    /* model id: --name, else the folder's last path component */
    char idbuf[256];
    if (!name) {
        size_t e = ml;
        while (e > 1 && model[e - 1] == '/') e--;
        size_t b = e;
        while (b > 0 && model[b - 1] != '/') b--;
        snprintf(idbuf, sizeof idbuf, "%.*s", (int)(e - b), model + b);
        name = idbuf[0] ? idbuf : "frugal";
    }

    fr_engine_options o;
    fr_engine_options_default(&o);
    o.weight_type = weights;
    o.kv_type = kv;
    o.threads = (int)threads;
    o.load_mtp = 0;
    o.no_check = no_check;
    o.adapter = adapter;
    long ctx_given = ctx;
    if (!gguf) {
        fr_config cfg;
        char cfg_path[4200];
        snprintf(cfg_path, sizeof cfg_path, "%s/config.json", model);
        if (fr_config_load(&cfg, cfg_path) != FR_OK) return cli_fail_lib("cannot read config.json");
        if (ctx == 0) ctx = cfg.max_position_embeddings < 4096 ? cfg.max_position_embeddings : 4096;
        if (ctx > cfg.max_position_embeddings)
            return cli_fail("--ctx %ld exceeds the model's max_position_embeddings (%d)", ctx, cfg.max_position_embeddings);
    } else if (ctx == 0) {
        ctx = 4096; /* a GGUF's config is known only once loaded: checked below */
    }
    o.max_seq_len = (int)ctx;

    memset(&S, 0, sizeof S);
    pthread_mutex_init(&S.mu, NULL);
    pthread_cond_init(&S.sched_cv, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_cond_init(&S.out_cv, &ca); /* CLOCK_REALTIME: wait_slice */
    pthread_condattr_destroy(&ca);
    S.t_start = srv_now();
    S.model_id = name;
    S.api_key = api_key;
    S.parallel = (int)parallel;
    S.threads = (int)threads;
    S.ctx = (int)ctx;
    S.max_queue = max_queue;
    header_timeout = (unsigned)hdr_timeout;
    if (max_conns == 0) max_conns = max_queue + parallel + 64;
    if (max_client < 0) max_client = max_conns > HEALTH_HEADROOM ? max_conns - HEALTH_HEADROOM : 1;
    int rc = CLI_EXIT_OK;
    struct MHD_Daemon *d = NULL;
    srv_door *door = NULL;
    double t0 = cli_now();
    if (device && fr_set_device(device) != FR_OK) {
        rc = cli_fail_lib("cannot serve on this device");
        goto out;
    }
    if (fr_engine_load(&S.engine, model, &o) != FR_OK) {
        rc = cli_fail_lib("cannot load the model");
        goto out;
    }
    if ((gguf ? fr_tokenizer_load_gguf(&S.tok, model) : fr_tokenizer_load(&S.tok, model)) != FR_OK) {
        rc = cli_fail_lib("cannot load the tokenizer");
        goto out;
    }
    const fr_config *ec = fr_engine_config(S.engine);
    if (gguf && ec->max_position_embeddings > 0 && ctx > ec->max_position_embeddings) {
        if (ctx_given > 0) {
            rc = cli_fail("--ctx %ld exceeds the model's max_position_embeddings (%d)", ctx, ec->max_position_embeddings);
            goto out;
        }
        ctx = ec->max_position_embeddings;
        S.ctx = (int)ctx;
    }
    S.vocab = ec->vocab_size;
    if (fr_tokenizer_vocab_size(S.tok) > S.vocab) {
        rc = cli_fail("the tokenizer has %d ids but the model's vocab_size is %d", fr_tokenizer_vocab_size(S.tok), S.vocab);
        goto out;
    }
    S.eos_id = ec->eos_token_id >= 0 ? ec->eos_token_id : fr_tokenizer_special_id(S.tok, FR_TOKEN_EOS);
    /* EOS is listed too: requests with ignore_eos mask it when it is undecodable */
    if (fr_tokenizer_undecodable_ids(S.tok, S.vocab, -1, &S.undecodable, &S.n_undecodable) != FR_OK) {
        rc = cli_fail_lib("cannot serve this model with its tokenizer");
        goto out;
    }
    S.kv_bytes_per_token = fr_engine_kv_bytes_per_token(S.engine);
    if (!fr_chat_template_is_deepseek(S.tok))
        fprintf(stderr, "frugal serve: the chat template of %s is not DeepSeek-V3 style; chats use the DeepSeek-V3 format\n", model);

    /* signals: handled by sigwait in this thread only */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (srv_sched_start(&S) != 0) {
        rc = cli_fail_lib("cannot start the scheduler");
        goto out;
    }

    struct sockaddr_in a4;
    struct sockaddr_in6 a6;
    struct sockaddr *sa;
    /* connections come through the front door (serve_door.c), not MHD's own socket */
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG | MHD_USE_ITC |
                     MHD_USE_NO_LISTEN_SOCKET;
    memset(&a4, 0, sizeof a4);
    memset(&a6, 0, sizeof a6);
    if (inet_pton(AF_INET, strcmp(host, "localhost") == 0 ? "127.0.0.1" : host, &a4.sin_addr) == 1) {
        a4.sin_family = AF_INET;
        a4.sin_port = htons((uint16_t)port);
        sa = (struct sockaddr *)&a4;
    } else if (inet_pton(AF_INET6, host, &a6.sin6_addr) == 1) {
        a6.sin6_family = AF_INET6;
        a6.sin6_port = htons((uint16_t)port);
        sa = (struct sockaddr *)&a6;
        flags |= MHD_USE_IPv6;
    } else {
        rc = cli_fail("--host '%s' is not an IPv4 or IPv6 address", host);
        goto out;
    }
    unsigned bound = 0;
    int e = srv_door_open(&door, sa, sa->sa_family == AF_INET6 ? sizeof a6 : sizeof a4, &bound);
    if (e) {
        rc = cli_fail("cannot listen on %s port %ld: %s", host, port, strerror(e));
        goto out;
    }
    d = MHD_start_daemon(flags, 0, NULL, NULL, on_request, NULL,
                         MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
                         MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL,
                         MHD_OPTION_NOTIFY_CONNECTION, on_connection, NULL,
                         MHD_OPTION_CONNECTION_LIMIT, (unsigned)max_conns,
                         MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)max_client,
                         /* until a request is complete (and between keep-alive requests);
                          * lifted while it is processed, SEND_TIMEOUT while answering */
                         MHD_OPTION_CONNECTION_TIMEOUT, header_timeout,
                         MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(256 * 1024),
                         MHD_OPTION_END);
    if (!d) {
        rc = cli_fail("cannot start the HTTP server: %s", errno ? strerror(errno) : "libmicrohttpd failed to start");
        goto out;
    }
    const srv_door_limits lim = {(int)max_conns, (int)max_client, (double)header_timeout, BODY_CAP, door_log};
    if ((e = srv_door_start(door, d, &lim)) != 0) {
        rc = cli_fail("cannot start the front door: %s", strerror(e));
        goto out;
    }
    char b1[32];
    fprintf(stderr, "frugal serve: %s loaded in %.2f s as model '%s'; %d slots x %d tokens, KV cache %s per slot at full context%s\n",
            model, cli_now() - t0, S.model_id, S.parallel, S.ctx,
            cli_human_bytes(b1, sizeof b1, (double)S.kv_bytes_per_token * S.ctx), S.api_key ? "; API key required" : "");
    fprintf(stderr, "frugal serve: listening on http://%s%s%s:%u/\n", sa->sa_family == AF_INET6 ? "[" : "", host,
            sa->sa_family == AF_INET6 ? "]" : "", bound);
    fflush(stderr);

    int sig = 0;
    sigwait(&sigs, &sig);
    fprintf(stderr, "frugal serve: %s, draining (up to %.3g s)\n", sig == SIGINT ? "interrupted" : "terminated", drain_s);
    fflush(stderr);
    drain(&door, &sigs, drain_s);
out:
    srv_door_close(door);
    /* wake every waiter first so that connection threads can finish, then stop MHD */
    pthread_mutex_lock(&S.mu);
    S.stopping = 1;
    pthread_cond_broadcast(&S.out_cv);
    pthread_cond_broadcast(&S.sched_cv);
    pthread_mutex_unlock(&S.mu);
    if (d) MHD_stop_daemon(d);
    if (S.slots || S.sched_started) srv_sched_stop(&S);
    fr_tokenizer_free(S.tok);
    fr_engine_free(S.engine);
    free(S.undecodable);
    pthread_cond_destroy(&S.out_cv);
    pthread_cond_destroy(&S.sched_cv);
    pthread_mutex_destroy(&S.mu);
    return rc;
}
