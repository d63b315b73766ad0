/* test_serve.c — `frugal serve` end to end, no Python needed: starts the real binary on a
 * free loopback port with a tiny random model and talks HTTP to it over POSIX sockets.
 * Covers the endpoints, SSE streaming, greedy answers equal to `frugal generate`, stop
 * strings, errors (bad JSON, wrong types, huge bodies, long prompts, unknown model, wrong
 * key), concurrency (continuous batching; a newcomer finishes while a long request runs),
 * vanishing, slow, flooding and malformed clients, draining on SIGTERM (error event + [DONE],
 * 503 for queued requests, bounded exit), a clean exit (status 0; under ASan also no leaks), and ids the
 * tokenizer cannot decode (gaps, a padded vocabulary, an EOS it lacks) never sampled. */
#include "serve_testutil.h"
#include "testutil.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <poll.h>
#include <pthread.h>
#if defined(__has_include)
#if __has_include(<microhttpd.h>)
#include <microhttpd.h> /* MHD_VERSION only */
#endif
#endif

static int PORT;
static const char *KEY_HDR = "Authorization: Bearer test-key\r\n";

static cJSON *post_json(const char *path, const char *body, int *status) {
    st_response r;
    *status = -1;
    if (st_http(PORT, "POST", path, KEY_HDR, body, &r) != 0) return NULL;
    *status = r.status;
    cJSON *j = cJSON_Parse(r.body);
    st_response_free(&r);
    return j;
}

static const char *jstr(const cJSON *o, const char *path) {
    /* path like "choices.0.message.content" */
    char buf[256];
    snprintf(buf, sizeof buf, "%s", path);
    const cJSON *cur = o;
    char *save = NULL; /* strtok_r: the stream threads call this concurrently */
    for (char *tok = strtok_r(buf, ".", &save); tok && cur; tok = strtok_r(NULL, ".", &save)) {
        if (tok[0] >= '0' && tok[0] <= '9') cur = cJSON_GetArrayItem(cur, atoi(tok));
        else cur = cJSON_GetObjectItemCaseSensitive(cur, tok);
    }
    return cur && cJSON_IsString(cur) ? cur->valuestring : NULL;
}

static double jnum(const cJSON *o, const char *a, const char *b) {
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, a);
    if (b) x = cJSON_GetObjectItemCaseSensitive(x, b);
    return cJSON_IsNumber(x) ? x->valuedouble : -1;
}

/* An OpenAI-style error object with the given status and code. */
static void expect_error(const char *what, int port, const char *method, const char *path, const char *headers,
                         const char *body, int want_status, const char *want_code) {
    st_response r;
    int rc = st_http(port, method, path, headers, body, &r);
    CHECK(rc == 0, "%s: no response", what);
    if (rc != 0) return;
    CHECK(r.status == want_status, "%s: status %d, want %d (%s)", what, r.status, want_status, r.body);
    cJSON *j = cJSON_Parse(r.body);
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "error");
    CHECK(cJSON_IsObject(e) && cJSON_IsString(cJSON_GetObjectItemCaseSensitive(e, "message")) &&
              cJSON_IsString(cJSON_GetObjectItemCaseSensitive(e, "type")) &&
              cJSON_GetObjectItemCaseSensitive(e, "param") && cJSON_GetObjectItemCaseSensitive(e, "code"),
          "%s: not an OpenAI error object: %s", what, r.body);
    if (want_code) {
        const char *code = jstr(j, "error.code");
        CHECK(code && strcmp(code, want_code) == 0, "%s: code %s, want %s", what, code ? code : "(null)", want_code);
    }
    cJSON_Delete(j);
    st_response_free(&r);
}

/* Concatenated delta text of an SSE body; *events = content events, *done = saw [DONE]. */
static char *sse_text(const char *body, int chat, int *events, int *done, char *finish, size_t fn) {
    size_t cap = strlen(body) + 1, n = 0;
    char *out = calloc(1, cap);
    *events = 0;
    *done = 0;
    if (finish && fn) finish[0] = 0;
    const char *p = body;
    while ((p = strstr(p, "data: ")) != NULL) {
        p += 6;
        const char *e = strstr(p, "\n\n");
        if (!e) break;
        if (strncmp(p, "[DONE]", 6) == 0) {
            *done = 1;
            break;
        }
        cJSON *j = cJSON_ParseWithLength(p, (size_t)(e - p));
        const char *t = jstr(j, chat ? "choices.0.delta.content" : "choices.0.text");
        const char *f = jstr(j, "choices.0.finish_reason");
        if (f && finish) snprintf(finish, fn, "%s", f);
        if (t && t[0]) {
            size_t l = strlen(t);
            memcpy(out + n, t, l);
            n += l;
            (*events)++;
        }
        cJSON_Delete(j);
        p = e;
    }
    return out;
}

static long metric(const char *name) {
    st_response r;
    if (st_http(PORT, "GET", "/metrics", NULL, NULL, &r) != 0) return -1;
    char key[128];
    snprintf(key, sizeof key, "\n%s ", name);
    const char *p = strstr(r.body, key);
    long v = p ? atol(p + strlen(key)) : -1;
    st_response_free(&r);
    return v;
}

/* The server's rule for text that is not valid UTF-8: each byte that starts no valid
 * sequence (and NUL) becomes U+FFFD. In place into a new buffer. */
static char *utf8_fix(const char *s) {
    const unsigned char *u = (const unsigned char *)s;
    size_t n = strlen(s), k = 0;
    char *o = malloc(3 * n + 1);
    for (size_t i = 0; i < n;) {
        unsigned c = u[i];
        size_t len = 0;
        unsigned lo = 0x80, hi = 0xBF;
        if (c < 0x80) len = 1;
        else if (c >= 0xC2 && c <= 0xDF) len = 2;
        else if (c >= 0xE0 && c <= 0xEF) len = 3, lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
        else if (c >= 0xF0 && c <= 0xF4) len = 4, lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
        int ok = len > 0 && i + len <= n;
        if (ok && len > 1) ok = u[i + 1] >= lo && u[i + 1] <= hi;
        for (size_t j = 2; ok && j < len; j++) ok = (u[i + j] & 0xC0) == 0x80;
        if (ok) {
            memcpy(o + k, s + i, len);
            k += len;
            i += len;
        } else {
            memcpy(o + k, "\xef\xbf\xbd", 3);
            k += 3;
            i++;
        }
    }
    o[k] = 0;
    return o;
}

/* `frugal generate` greedy output for the prompt (stdout, without the trailing newline). */
static char *generate_cli(const char *dir, const char *prompt, int max_tokens) {
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "'%s' generate --model '%s' --prompt '%s' --max-tokens %d --temperature 0 --ignore-eos 2>/dev/null",
             FR_FRUGAL_BIN, dir, prompt, max_tokens);
    FILE *f = popen(cmd, "r");
    if (!f) return NULL;
    size_t cap = 1 << 16, n = 0;
    char *out = malloc(cap);
    size_t r;
    while ((r = fread(out + n, 1, cap - n - 1, f)) > 0) n += r;
    out[n] = 0;
    int st = pclose(f);
    if (st != 0) {
        free(out);
        return NULL;
    }
    if (n && out[n - 1] == '\n') out[n - 1] = 0;
    char *fixed = utf8_fix(out);
    free(out);
    return fixed;
}

typedef struct {
    const char *body;
    int chat;
    int status, events, done;
    char *text;
    double t_end;
} stream_job;

static void *stream_thread(void *arg) {
    stream_job *j = arg;
    st_response r;
    j->status = -1;
    if (st_http(PORT, "POST", j->chat ? "/v1/chat/completions" : "/v1/completions", KEY_HDR, j->body, &r) == 0) {
        j->status = r.status;
        j->text = sse_text(r.body, j->chat, &j->events, &j->done, NULL, 0);
        st_response_free(&r);
    }
    j->t_end = st_now();
    return NULL;
}

static void test_basic(const char *dir) {
    st_response r;
    CHECK(st_http(PORT, "GET", "/health", NULL, NULL, &r) == 0 && r.status == 200 && strstr(r.body, "ok"),
          "GET /health");
    st_response_free(&r);
    CHECK(st_http(PORT, "GET", "/", NULL, NULL, &r) == 0 && r.status == 200 && strstr(r.body, "<html") &&
              strstr(r.body, "/v1/chat/completions") && strstr(r.head, "text/html"),
          "GET / serves the chat page");
    st_response_free(&r);
    CHECK(st_http(PORT, "GET", "/v1/models", KEY_HDR, NULL, &r) == 0 && r.status == 200 && strstr(r.body, "\"tiny\""),
          "GET /v1/models lists 'tiny': %s", r.body ? r.body : "");
    st_response_free(&r);
    CHECK(st_http(PORT, "GET", "/metrics", NULL, NULL, &r) == 0 && r.status == 200 &&
              strstr(r.body, "frugal_kv_cache_used_bytes") && strstr(r.body, "frugal_queue_depth") &&
              strstr(r.body, "frugal_tokens_per_second") && strstr(r.body, "# TYPE frugal_http_requests_total counter"),
          "GET /metrics in Prometheus text format");
    st_response_free(&r);

    /* greedy completion == frugal generate */
    const char *prompt = "In the beginning";
    int status;
    cJSON *j = post_json("/v1/completions",
                         "{\"model\":\"tiny\",\"prompt\":\"In the beginning\",\"max_tokens\":16,\"temperature\":0,\"ignore_eos\":true}", &status);
    const char *text = jstr(j, "choices.0.text");
    CHECK(status == 200 && text, "completion: status %d", status);
    CHECK(jstr(j, "object") && strcmp(jstr(j, "object"), "text_completion") == 0, "completion object");
    double pt = jnum(j, "usage", "prompt_tokens"), ct = jnum(j, "usage", "completion_tokens"),
           tt = jnum(j, "usage", "total_tokens");
    CHECK(pt > 0 && ct == 16 && tt == pt + ct, "usage %g + %g = %g", pt, ct, tt);
    char *ref = generate_cli(dir, prompt, 16);
    CHECK(ref != NULL, "frugal generate ran");
    if (ref && text) {
        size_t pl = strlen(prompt);
        CHECK(strncmp(ref, prompt, pl) == 0 && strcmp(ref + pl, text) == 0,
              "greedy API text equals frugal generate:\n  api: [%s]\n  cli: [%s]", text, ref + pl);
    }
    /* the next request continues the text: its slot's cache holds the prompt's start (the
     * prompt-cache metric grows) and the reply still equals frugal generate's */
    if (text) {
        const long cached0 = metric("frugal_prompt_tokens_cached_total");
        char prompt2[512], body2[1024];
        snprintf(prompt2, sizeof prompt2, "%s%s", prompt, text);
        cJSON *pj = cJSON_CreateObject();
        cJSON_AddStringToObject(pj, "model", "tiny");
        cJSON_AddStringToObject(pj, "prompt", prompt2);
        cJSON_AddNumberToObject(pj, "max_tokens", 8);
        cJSON_AddNumberToObject(pj, "temperature", 0);
        cJSON_AddBoolToObject(pj, "ignore_eos", 1);
        char *pb = cJSON_PrintUnformatted(pj);
        snprintf(body2, sizeof body2, "%s", pb);
        free(pb);
        cJSON_Delete(pj);
        int st2 = 0;
        cJSON *j2 = post_json("/v1/completions", body2, &st2);
        const char *text2 = jstr(j2, "choices.0.text");
        const long cached1 = metric("frugal_prompt_tokens_cached_total");
        CHECK(st2 == 200 && text2 && cached1 > cached0, "a continued prompt reuses the cache: %ld -> %ld cached tokens",
              cached0, cached1);
        char *ref2 = generate_cli(dir, prompt2, 8);
        if (ref2 && text2) {
            const size_t pl2 = strlen(prompt2);
            CHECK(strncmp(ref2, prompt2, pl2) == 0 && strcmp(ref2 + pl2, text2) == 0,
                  "with the cache, the greedy text still equals frugal generate:\n  api: [%s]\n  cli: [%s]", text2,
                  ref2 + pl2);
        }
        free(ref2);
        cJSON_Delete(j2);
    }
    /* stop string: cut before its first occurrence */
    size_t at = 2;
    while (text && text[at] && text[at + 1] && !(isalnum((unsigned char)text[at]) && isalnum((unsigned char)text[at + 1]))) at++;
    CHECK(text && text[at] && text[at + 1], "the greedy text has two ASCII letters for a stop string: [%s]", text ? text : "");
    if (text && text[at] && text[at + 1]) {
        char stop[8], body[512];
        memcpy(stop, text + at, 2);
        stop[2] = 0;
        cJSON *sj = cJSON_CreateObject();
        cJSON_AddStringToObject(sj, "prompt", prompt);
        cJSON_AddNumberToObject(sj, "max_tokens", 16);
        cJSON_AddNumberToObject(sj, "temperature", 0);
        cJSON_AddTrueToObject(sj, "ignore_eos");
        cJSON_AddStringToObject(sj, "stop", stop);
        char *sb = cJSON_PrintUnformatted(sj);
        snprintf(body, sizeof body, "%s", sb);
        free(sb);
        cJSON_Delete(sj);
        cJSON *k = post_json("/v1/completions", body, &status);
        const char *t2 = jstr(k, "choices.0.text");
        const char *cut = strstr(text, stop);
        CHECK(status == 200 && t2 && cut && strlen(t2) == (size_t)(cut - text) && strncmp(t2, text, strlen(t2)) == 0,
              "stop '%s': got [%s] from [%s]", stop, t2 ? t2 : "(null)", text);
        CHECK(jstr(k, "choices.0.finish_reason") && strcmp(jstr(k, "choices.0.finish_reason"), "stop") == 0,
              "stop: finish_reason stop");
        cJSON_Delete(k);
    }

    /* streaming completion: same text as the non-streaming one */
    stream_job sj = {.body = "{\"prompt\":\"In the beginning\",\"max_tokens\":16,\"temperature\":0,\"ignore_eos\":true,\"stream\":true}"};
    stream_thread(&sj);
    CHECK(sj.status == 200 && sj.done && sj.events >= 2, "streaming completion: status %d, %d events, done %d",
          sj.status, sj.events, sj.done);
    CHECK(text && sj.text && strcmp(sj.text, text) == 0, "stream text equals non-stream text: [%s] vs [%s]",
          sj.text ? sj.text : "", text ? text : "");
    free(sj.text);
    free(ref);
    cJSON_Delete(j);

    /* chat, non-streaming and streaming (with usage) */
    const char *chat = "{\"model\":\"tiny\",\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},"
                       "{\"role\":\"user\",\"content\":\"Hello there\"}],\"max_tokens\":12,\"temperature\":0,\"ignore_eos\":true}";
    j = post_json("/v1/chat/completions", chat, &status);
    const char *content = jstr(j, "choices.0.message.content");
    CHECK(status == 200 && content && jstr(j, "choices.0.message.role") &&
              strcmp(jstr(j, "choices.0.message.role"), "assistant") == 0 && jnum(j, "usage", "completion_tokens") == 12,
          "chat completion: status %d", status);
    CHECK(jstr(j, "choices.0.finish_reason") && strcmp(jstr(j, "choices.0.finish_reason"), "length") == 0,
          "chat: finish_reason length");
    char sbody[600];
    snprintf(sbody, sizeof sbody, "%.*s,\"stream\":true,\"stream_options\":{\"include_usage\":true}}",
             (int)strlen(chat) - 1, chat);
    st_response sr;
    CHECK(st_http(PORT, "POST", "/v1/chat/completions", KEY_HDR, sbody, &sr) == 0 && sr.status == 200 &&
              strcasestr(sr.head, "text/event-stream"),
          "streaming chat: SSE response");
    int ev = 0, done = 0;
    char finish[32];
    char *st = sse_text(sr.body ? sr.body : "", 1, &ev, &done, finish, sizeof finish);
    CHECK(done && ev >= 2 && content && strcmp(st, content) == 0, "streamed chat equals non-streamed: [%s] vs [%s] (%zu / %zu bytes)", st,
          content ? content : "", strlen(st), content ? strlen(content) : 0);
    CHECK(strcmp(finish, "length") == 0, "streamed finish_reason %s", finish);
    CHECK(sr.body && strstr(sr.body, "\"completion_tokens\":12"), "stream usage chunk");
    free(st);
    st_response_free(&sr);
    cJSON_Delete(j);
}

static void test_errors(void) {
    const char *C = "/v1/completions";
    expect_error("invalid JSON", PORT, "POST", C, KEY_HDR, "{\"prompt\": ", 400, "invalid_json");
    expect_error("not an object", PORT, "POST", C, KEY_HDR, "[1,2]", 400, NULL);
    expect_error("prompt type", PORT, "POST", C, KEY_HDR, "{\"prompt\": {\"a\":1}}", 400, "invalid_type");
    expect_error("max_tokens type", PORT, "POST", C, KEY_HDR, "{\"prompt\":\"a\",\"max_tokens\":\"9\"}", 400, "invalid_type");
    expect_error("max_tokens fraction", PORT, "POST", C, KEY_HDR, "{\"prompt\":\"a\",\"max_tokens\":2.5}", 400, "invalid_type");
    expect_error("temperature range", PORT, "POST", C, KEY_HDR, "{\"prompt\":\"a\",\"temperature\":-1}", 400, "invalid_value");
    expect_error("stream type", PORT, "POST", C, KEY_HDR, "{\"prompt\":\"a\",\"stream\":\"yes\"}", 400, "invalid_type");
    expect_error("stop type", PORT, "POST", C, KEY_HDR, "{\"prompt\":\"a\",\"stop\":[1]}", 400, "invalid_type");
    expect_error("n = 2", PORT, "POST", C, KEY_HDR, "{\"prompt\":\"a\",\"n\":2}", 400, "invalid_value");
    expect_error("token id range", PORT, "POST", C, KEY_HDR, "{\"prompt\":[1,99999]}", 400, "invalid_value");
    expect_error("missing prompt", PORT, "POST", C, KEY_HDR, "{}", 400, "missing_required_parameter");
    expect_error("messages type", PORT, "POST", "/v1/chat/completions", KEY_HDR, "{\"messages\":\"hi\"}", 400, "invalid_type");
    expect_error("bad role", PORT, "POST", "/v1/chat/completions", KEY_HDR,
                 "{\"messages\":[{\"role\":\"wizard\",\"content\":\"x\"}]}", 400, "invalid_value");
    expect_error("unknown model", PORT, "POST", C, KEY_HDR, "{\"model\":\"gpt-9\",\"prompt\":\"a\"}", 404, "model_not_found");
    expect_error("no key", PORT, "POST", C, NULL, "{\"prompt\":\"a\"}", 401, "invalid_api_key");
    expect_error("wrong key", PORT, "GET", "/v1/models", "Authorization: Bearer nope\r\n", NULL, 401, "invalid_api_key");
    expect_error("unknown path", PORT, "GET", "/v2/everything", NULL, NULL, 404, NULL);
    expect_error("wrong method", PORT, "GET", C, KEY_HDR, NULL, 405, NULL);
    /* too-long prompt: over 3,000 tokens, the context is 1024 */
    size_t n = 20000;
    char *big = malloc(n + 64);
    strcpy(big, "{\"prompt\":\"");
    size_t k = strlen(big);
    for (size_t i = 0; i < 3000; i++) big[k++] = (char)('a' + (i * 7) % 26), big[k++] = ' ';
    strcpy(big + k, "\"}");
    expect_error("prompt longer than --ctx", PORT, "POST", C, KEY_HDR, big, 400, "context_length_exceeded");
    free(big);
    /* huge body: 2 MiB, refused with 413 (from Content-Length, before it is read) */
    n = 2u << 20;
    big = malloc(n + 1);
    memset(big, ' ', n);
    big[n] = 0;
    {   /* announce 2 MiB: the answer comes before the body is sent */
        int fd2 = st_connect(PORT);
        char head[256];
        int hl = snprintf(head, sizeof head, "POST %s HTTP/1.1\r\nHost: x\r\n%sContent-Length: %zu\r\n\r\n", C, KEY_HDR, n);
        st_send_all(fd2, head, (size_t)hl);
        st_response r;
        int rc = st_read_response(fd2, &r);
        CHECK(rc == 0 && r.status == 413 && strstr(r.body, "request_too_large"), "2 MiB Content-Length: status %d",
              rc == 0 ? r.status : -1);
        st_response_free(&r);
        close(fd2);
    }
    /* the same without Content-Length (chunked upload): refused at the head, 411 in JSON
     * (the API needs Content-Length; cli/serve_door.c) */
    int fd = st_connect(PORT);
    if (fd >= 0) {
        char head[256];
        int hl = snprintf(head, sizeof head,
                          "POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n%sTransfer-Encoding: chunked\r\n\r\n",
                          KEY_HDR);
        st_send_all(fd, head, (size_t)hl);
        for (int i = 0; i < 24; i++) { /* 24 x 64 KiB = 1.5 MiB */
            char ch[16];
            int cl = snprintf(ch, sizeof ch, "%x\r\n", 65536);
            if (st_send_all(fd, ch, (size_t)cl) || st_send_all(fd, big, 65536) || st_send_all(fd, "\r\n", 2)) break;
        }
        st_send_all(fd, "0\r\n\r\n", 5);
        st_response r;
        int rc = st_read_response(fd, &r);
        CHECK(rc == 0 && r.status == 411 && r.body && strstr(r.body, "length_required"), "chunked 1.5 MiB body: status %d",
              rc == 0 ? r.status : -1);
        st_response_free(&r);
        close(fd);
    }
    free(big);
    /* invalid UTF-8 and NUL bytes inside JSON strings do not crash it */
    expect_error("truncated escape", PORT, "POST", C, KEY_HDR, "{\"prompt\":\"\\u12", 400, "invalid_json");
    st_response r;
    CHECK(st_http(PORT, "POST", C, KEY_HDR, "{\"prompt\":\"\xff\xfe\\u0000x\",\"max_tokens\":2}", &r) == 0 &&
              (r.status == 200 || r.status == 400),
          "odd bytes in the prompt: status %d", r.status);
    st_response_free(&r);
}

static void test_concurrency(void) {
    /* 8 concurrent greedy streams (different prompts) = the same requests one at a time. 64
     * tokens each: the streams' requests reach the server some steps apart on a loaded machine,
     * and with 24 tokens those solo steps could take the shared fraction below the check's */
    enum { N = 8 };
    stream_job jobs[N];
    char bodies[N][256];
    char *seq_text[N];
    for (int i = 0; i < N; i++) {
        snprintf(bodies[i], sizeof bodies[i],
                 "{\"prompt\":\"Request number %d says\",\"max_tokens\":64,\"temperature\":0,\"ignore_eos\":true,\"stream\":true}", i);
        memset(&jobs[i], 0, sizeof jobs[i]);
        jobs[i].body = bodies[i];
        stream_thread(&jobs[i]);
        seq_text[i] = jobs[i].text;
        CHECK(jobs[i].status == 200 && jobs[i].done, "sequential stream %d", i);
    }
    long steps0 = metric("frugal_decode_steps_total"), rows0 = metric("frugal_decode_rows_total");
    pthread_t th[N];
    for (int i = 0; i < N; i++) {
        memset(&jobs[i], 0, sizeof jobs[i]);
        jobs[i].body = bodies[i];
        pthread_create(&th[i], NULL, stream_thread, &jobs[i]);
    }
    for (int i = 0; i < N; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < N; i++) {
        CHECK(jobs[i].status == 200 && jobs[i].done && jobs[i].events >= 1, "concurrent stream %d: status %d", i,
              jobs[i].status);
        CHECK(jobs[i].text && seq_text[i] && strcmp(jobs[i].text, seq_text[i]) == 0,
              "concurrent stream %d equals its sequential answer:\n  [%s]\n  [%s]", i, jobs[i].text ? jobs[i].text : "",
              seq_text[i] ? seq_text[i] : "");
        free(jobs[i].text);
        free(seq_text[i]);
    }
    long steps = metric("frugal_decode_steps_total") - steps0, rows = metric("frugal_decode_rows_total") - rows0;
    CHECK(steps > 0 && rows >= 8 * 63 && (double)rows / (double)steps > 1.5,
          "decode steps shared: %ld rows in %ld steps", rows, steps);

    /* a newcomer joins while a long request runs, and finishes first */
    stream_job lj = {.body = "{\"prompt\":\"Long\",\"max_tokens\":1000,\"temperature\":0,\"ignore_eos\":true,\"stream\":true}"};
    pthread_t lt;
    pthread_create(&lt, NULL, stream_thread, &lj);
    for (int i = 0; i < 200 && metric("frugal_slots_active") < 1; i++) usleep(2000);
    int status;
    cJSON *j = post_json("/v1/completions", "{\"prompt\":\"Short\",\"max_tokens\":2,\"temperature\":0,\"ignore_eos\":true}", &status);
    double t_short = st_now();
    pthread_join(lt, NULL);
    CHECK(status == 200 && lj.status == 200 && lj.done, "long + short: statuses %d %d", lj.status, status);
    CHECK(t_short < lj.t_end, "the short request finished while the long one was running (%.3f s before)",
          lj.t_end - t_short);
    free(lj.text);
    cJSON_Delete(j);
}

static void test_clients(void) {
    /* a streaming client that vanishes frees its slot at once */
    long c0 = metric("frugal_requests_cancelled_total");
    int fd = st_connect(PORT);
    const char *body = "{\"prompt\":\"Forever\",\"max_tokens\":250,\"temperature\":0.8,\"ignore_eos\":true,\"stream\":true}";
    st_send_request(fd, "POST", "/v1/completions", KEY_HDR, body, strlen(body));
    char buf[512];
    ssize_t got = recv(fd, buf, sizeof buf, 0);
    CHECK(got > 0, "vanishing client got its first bytes");
    close(fd);
    int ok = 0;
    for (int i = 0; i < 300 && !ok; i++) {
        ok = metric("frugal_requests_cancelled_total") == c0 + 1 && metric("frugal_slots_active") == 0;
        if (!ok) usleep(10000);
    }
    CHECK(ok, "a disconnected streaming client frees its slot");
    /* a non-streaming client that vanishes while waiting */
    fd = st_connect(PORT);
    body = "{\"prompt\":\"Forever\",\"max_tokens\":250,\"temperature\":0.8,\"ignore_eos\":true}";
    st_send_request(fd, "POST", "/v1/completions", KEY_HDR, body, strlen(body));
    usleep(20000);
    close(fd);
    ok = 0;
    for (int i = 0; i < 300 && !ok; i++) {
        long c = metric("frugal_requests_cancelled_total"), f = metric("frugal_requests_finished_total");
        (void)f;
        ok = c >= c0 + 1 && metric("frugal_slots_active") == 0;
        if (!ok) usleep(10000);
    }
    CHECK(ok, "a disconnected non-streaming client frees its slot");
    /* slow clients (half a request line, half a body) do not block others */
    int slow1 = st_connect(PORT), slow2 = st_connect(PORT);
    st_send_all(slow1, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Le", 48);
    char head[256];
    int hl = snprintf(head, sizeof head, "POST /v1/completions HTTP/1.1\r\nHost: x\r\n%sContent-Length: 100\r\n\r\n{\"pro", KEY_HDR);
    st_send_all(slow2, head, (size_t)hl);
    int status;
    cJSON *j = post_json("/v1/completions", "{\"prompt\":\"Meanwhile\",\"max_tokens\":3}", &status);
    CHECK(status == 200, "served while two clients stall: %d", status);
    cJSON_Delete(j);
    close(slow1);
    close(slow2);
    /* garbage that is not HTTP */
    fd = st_connect(PORT);
    st_send_all(fd, "\x16\x03\x01\x02\x00garbage\r\n\r\n", 17);
    st_response r;
    st_read_response(fd, &r);
    st_response_free(&r);
    close(fd);
    st_response h;
    CHECK(st_http(PORT, "GET", "/health", NULL, NULL, &h) == 0 && h.status == 200, "still healthy");
    st_response_free(&h);
}

/* fr_chat_render: the DeepSeek-V3 format, with the separator frugal's template writes. */
static void test_chat_render(void) {
    fr_tokenizer *tok = NULL;
    int rc = fr_tokenizer_load(&tok, FR_FIXTURES_DIR "/tokenizer/frugal_trained");
    CHECK(rc == FR_OK, "load tokenizer: %s", fr_last_error());
    fr_chat_message m[] = {{"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello."}, {"user", "Why?"}};
    char *out = NULL;
    size_t len = 0;
    CHECK(fr_chat_render(tok, m, 4, 1, &out, &len) == FR_OK, "render");
    const char *want = "<\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>Be brief.\n\n"
                       "<\xef\xbd\x9cUser\xef\xbd\x9c>Hi<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>Hello."
                       "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"
                       "<\xef\xbd\x9cUser\xef\xbd\x9c>Why?<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>";
    CHECK(out && strcmp(out, want) == 0 && len == strlen(want), "rendered chat: [%s]", out ? out : "");
    free(out);
    out = NULL;
    CHECK(fr_chat_render(NULL, m + 1, 1, 0, &out, NULL) == FR_OK && out &&
              strcmp(out, "<\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c><\xef\xbd\x9cUser\xef\xbd\x9c>Hi") == 0,
          "no tokenizer, no generation prompt: [%s]", out ? out : "");
    free(out);
    out = NULL;
    fr_chat_message bad = {"tool", "x"};
    CHECK(fr_chat_render(tok, &bad, 1, 1, &out, NULL) == FR_ERR_ARG && out == NULL && strstr(fr_last_error(), "tool"),
          "unknown role refused");
    CHECK(fr_chat_template_is_deepseek(tok) == 1, "frugal's template is DeepSeek style");
    fr_tokenizer_free(tok);
}

/* The same model exported to GGUF (F32) and served from the file: the greedy completion
 * equals `frugal generate` on the HF folder. */
static void test_gguf(const char *tmp, const char *dir) {
    char gguf[400], cmd[1200];
    snprintf(gguf, sizeof gguf, "%s/tiny.gguf", tmp);
    snprintf(cmd, sizeof cmd, "'%s' convert --to gguf --type F32 '%s' '%s' >/dev/null 2>&1", FR_FRUGAL_BIN, dir, gguf);
    CHECK(system(cmd) == 0, "convert the test model to GGUF");
    st_server srv;
    const char *extra[] = {"--parallel", "2", "--ctx", "256", "--api-key", "test-key", "--threads", "2", "--name", "tiny", NULL};
    if (st_start(&srv, tmp, gguf, extra) != 0) {
        CHECK(0, "server on %s did not start (log %s)", gguf, srv.log);
        return;
    }
    int saved = PORT, status;
    PORT = srv.port;
    cJSON *j = post_json("/v1/completions",
                         "{\"model\":\"tiny\",\"prompt\":\"In the beginning\",\"max_tokens\":16,\"temperature\":0,\"ignore_eos\":true}", &status);
    const char *text = jstr(j, "choices.0.text");
    char *ref = generate_cli(dir, "In the beginning", 16);
    CHECK(status == 200 && text && ref && strcmp(ref + strlen("In the beginning"), text) == 0,
          "GGUF-served greedy text equals frugal generate on the folder:\n  api: [%s]\n  cli: [%s]", text ? text : "",
          ref ? ref : "");
    free(ref);
    cJSON_Delete(j);
    PORT = saved;
    CHECK(st_stop(&srv) == 0, "GGUF server exit status on SIGTERM (log %s)", srv.log);
}

/* A model + tokenizer pair where many ids cannot be decoded: the tokenizer's pad token moves
 * from id 2 to 1003 (gaps at 2 and 1000..1002 inside its 1004 ids), vocab_size 1024 pads
 * past it, and the model's eos_token_id is 1010, an id the tokenizer lacks. The head rows of
 * the undecodable ids are scaled up so that they win most draws. Through the API no such id
 * may come out (a decode failure would end the request with an error), EOS still ends a
 * completion (it is never decoded) and is masked under ignore_eos; answers equal fr_generate
 * with the same tokenizer, greedy and sampled with the same seed. */
enum { GAP_EOS = 1010, GAP_PAD = 1003, GAP_V = 1024 };

static int make_gapped_model(const char *tmp, char *dir, size_t dir_n) {
    char path[512];
    snprintf(dir, dir_n, "%s/gapped", tmp);
    if (mkdir(dir, 0755) != 0) return -1;
    /* the tokenizer: pad moved past the vocabulary, in model.vocab and added_tokens alike */
    snprintf(path, sizeof path, "%s/tokenizer/frugal_trained/tokenizer.json", FR_FIXTURES_DIR);
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    static char buf[1 << 20];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    cJSON *t = cJSON_Parse(buf);
    const char *pad = "<\xef\xbd\x9c\xe2\x96\x81pad\xe2\x96\x81\xef\xbd\x9c>";
    cJSON *v = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(t, "model"), "vocab");
    int moved = 0;
    if (cJSON_GetObjectItemCaseSensitive(v, pad)) {
        cJSON_ReplaceItemInObjectCaseSensitive(v, pad, cJSON_CreateNumber(GAP_PAD));
        moved++;
    }
    const cJSON *a;
    cJSON_ArrayForEach(a, cJSON_GetObjectItemCaseSensitive(t, "added_tokens")) {
        const char *c = jstr(a, "content");
        if (c && strcmp(c, pad) == 0) {
            cJSON_ReplaceItemInObjectCaseSensitive((cJSON *)a, "id", cJSON_CreateNumber(GAP_PAD));
            moved++;
        }
    }
    char *js = moved == 2 ? cJSON_Print(t) : NULL;
    cJSON_Delete(t);
    if (!js) return -1;
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    f = fopen(path, "wb");
    int ok = f && fputs(js, f) >= 0;
    if (f) ok &= fclose(f) == 0;
    free(js);
    char a2[512];
    snprintf(path, sizeof path, "%s/tokenizer/frugal_trained/tokenizer_config.json", FR_FIXTURES_DIR);
    snprintf(a2, sizeof a2, "%s/tokenizer_config.json", dir);
    if (!ok || st_copy_file(path, a2) != 0) return -1;
    fr_tokenizer *tok = NULL;
    if (fr_tokenizer_load(&tok, dir) != FR_OK) {
        fprintf(stderr, "gapped tokenizer: %s\n", fr_last_error());
        return -1;
    }

    /* the model: the tiny config with eos_token_id 1010 */
    char json[4096];
    const char *key = "\"eos_token_id\": 1", *at = strstr(SERVE_TINY_CONFIG, key);
    if (!at) { fr_tokenizer_free(tok); return -1; }
    snprintf(json, sizeof json, "%.*s\"eos_token_id\": %d%s", (int)(at - SERVE_TINY_CONFIG), SERVE_TINY_CONFIG, GAP_EOS,
             at + strlen(key));
    snprintf(path, sizeof path, "%s/gapped-config.json", tmp);
    f = fopen(path, "w");
    if (!f) { fr_tokenizer_free(tok); return -1; }
    fputs(json, f);
    fclose(f);
    fr_config cfg;
    fr_model *m = NULL;
    int rc = fr_config_load(&cfg, path);
    if (rc == FR_OK) rc = fr_model_create(&m, &cfg, 11);
    size_t numel = 0;
    float *head = rc == FR_OK ? fr_model_param(m, "lm_head.weight", &numel) : NULL;
    if (head && cfg.vocab_size == GAP_V && numel % GAP_V == 0) {
        const size_t H = numel / GAP_V;
        for (int id = 0; id < GAP_V; id++) {
            if (fr_tokenizer_id_to_token(tok, id)) continue;
            /* EOS less than the others: greedy should write some text before it wins */
            float k = id == GAP_EOS ? 3.0f : 12.0f;
            for (size_t h = 0; h < H; h++) head[(size_t)id * H + h] *= k;
        }
        rc = fr_model_save(m, dir);
    } else if (rc == FR_OK) {
        rc = FR_ERR_ARG;
    }
    if (rc != FR_OK) fprintf(stderr, "gapped model: %s\n", fr_last_error());
    fr_model_free(m);
    fr_tokenizer_free(tok);
    return rc == FR_OK ? 0 : -1;
}

/* fr_generate's answer for one prompt, as the API would send it (EOS dropped, UTF-8 fixed). */
static char *generate_ref(fr_engine *e, const fr_tokenizer *tok, const int *prompt, int n_prompt,
                          const fr_generate_options *o, int *n_gen, fr_stop_reason *why) {
    fr_seq *sq = NULL;
    int *out = NULL, ol = 0;
    fr_generate_stats st;
    const int *pp[1] = {prompt};
    *n_gen = -1;
    if (fr_seq_create(&sq, e) != FR_OK) return NULL;
    int rc = fr_generate(e, tok, &sq, 1, pp, &n_prompt, o, &out, &ol, &st);
    fr_seq_free(sq);
    if (rc != FR_OK) {
        fprintf(stderr, "fr_generate: %s\n", fr_last_error());
        return NULL;
    }
    *why = st.stop_reason[0];
    if (*why == FR_STOP_EOS && ol > 0) ol--;
    char *text = NULL, *fixed = NULL;
    size_t tl = 0;
    if (fr_tokenizer_decode(tok, out, (size_t)ol, 0, &text, &tl) == FR_OK) {
        /* the server sends a NUL as U+FFFD, as utf8_fix does any byte that starts no sequence */
        for (size_t i = 0; i < tl; i++)
            if (!text[i]) text[i] = (char)0xFF;
        fixed = utf8_fix(text);
    }
    free(text);
    free(out);
    *n_gen = ol;
    return fixed;
}


/* ------------------------------------------------------------------ slow, broken and many clients */

static void check_no_sanitizer_report(const char *log);

/* Has the server closed this socket (EOF or reset) within wait_ms? 0 = still open. */
static int peer_closed(int fd, int wait_ms) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, wait_ms) <= 0) return 0;
    char b[256];
    ssize_t r = recv(fd, b, sizeof b, MSG_DONTWAIT);
    return r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
}

/* GET /health with a bounded wait; 0 when it answered 200. */
static int health_once(int port, double timeout_s) {
    int fd = st_connect(port);
    if (fd < 0) return -1;
    struct timeval tv = {(time_t)timeout_s, (suseconds_t)((timeout_s - (double)(long)timeout_s) * 1e6)};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    st_response r;
    int rc = -1;
    if (st_send_request(fd, "GET", "/health", NULL, NULL, 0) == 0 && st_read_response(fd, &r) == 0) {
        rc = r.status == 200 ? 0 : -1;
        st_response_free(&r);
    }
    close(fd);
    return rc;
}

static int count_lines(const char *path, const char *needle) {
    FILE *f = fopen(path, "r");
    char line[4096];
    int n = 0;
    while (f && fgets(line, sizeof line, f))
        if (strstr(line, needle)) n++;
    if (f) fclose(f);
    return n;
}

/* SIGTERM, then wait up to max_s for the exit; returns the exit status, -1 on a timeout
 * (then SIGKILL). *took: seconds it took. */
static int term_and_wait(st_server *srv, double max_s, double *took) {
    double t0 = st_now();
    kill(srv->pid, SIGTERM);
    int status = 0, rc = -1;
    while (st_now() - t0 < max_s) {
        if (waitpid(srv->pid, &status, WNOHANG) == srv->pid) {
            rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
            break;
        }
        usleep(10000);
    }
    *took = st_now() - t0;
    if (rc < 0) {
        kill(srv->pid, SIGKILL);
        waitpid(srv->pid, &status, 0);
    }
    srv->pid = 0;
    return rc;
}

/* 200 connections that send half a request and stall: one client address holds at most
 * --max-client-connections of them (the rest are closed at once), the short header timeout
 * closes the held ones, /health answers within a couple of seconds, requests that wait longer
 * than the header timeout in the queue are still answered, and the log shows a few
 * rate-limited lines instead of one per refused connection. */
static void test_flood(const char *tmp, const char *dir) {
    enum { NFLOOD = 200, MAXC = 40, PER_IP = MAXC - 16 };
    st_server srv;
    const char *extra[] = {"--parallel", "1", "--ctx", "1024", "--threads", "1", "--max-queue", "16", "--max-connections", "40",
                           "--header-timeout", "1", NULL};
    if (st_start(&srv, tmp, dir, extra) != 0) {
        CHECK(0, "flood: server did not start (log %s)", srv.log);
        return;
    }
    int fds[NFLOOD], n = 0;
    for (int i = 0; i < NFLOOD; i++) {
        fds[i] = st_connect(srv.port);
        if (fds[i] < 0) continue;
        n++;
        st_send_all(fds[i], "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Le", 48);
    }
    CHECK(n == NFLOOD, "flood: %d of %d connections made", n, NFLOOD);
    usleep(300000);
    int closed = 0;
    for (int i = 0; i < NFLOOD; i++)
        if (fds[i] >= 0 && peer_closed(fds[i], 0)) closed++;
    CHECK(closed >= NFLOOD - PER_IP - 2 && closed <= NFLOOD - PER_IP + 2,
          "flood: %d connections closed at once, want about %d (per-address cap %d)", closed, NFLOOD - PER_IP, PER_IP);
    double t0 = st_now(), t_ok = -1;
    while (st_now() - t0 < 4.0) {
        if (health_once(srv.port, 2.0) == 0) {
            t_ok = st_now() - t0;
            break;
        }
        usleep(50000);
    }
    CHECK(t_ok >= 0 && t_ok < 3.0, "flood: /health answered after %.2f s (want < 3 s)", t_ok);
    usleep(1500000);
    int open_left = 0;
    for (int i = 0; i < NFLOOD; i++)
        if (fds[i] >= 0 && !peer_closed(fds[i], 0)) open_left++;
    CHECK(open_left == 0, "flood: %d stalled connections still open after the header timeout", open_left);
    for (int i = 0; i < NFLOOD; i++)
        if (fds[i] >= 0) close(fds[i]);
    /* a second burst, over 1 s later: one line says how many were left out */
    for (int i = 0; i < PER_IP + 6; i++) {
        fds[i] = st_connect(srv.port);
        if (fds[i] >= 0) st_send_all(fds[i], "GET /hea", 8);
    }
    usleep(300000);
    for (int i = 0; i < PER_IP + 6; i++)
        if (fds[i] >= 0) close(fds[i]);
    usleep(300000); /* the server notices the closed connections (slower under sanitizers): the
                     * streams below must not meet the per-address cap of the burst */
    int lines = count_lines(srv.log, "Server reached"), summary = count_lines(srv.log, "more like this)");
    CHECK(lines <= 8 && summary >= 1, "flood: %d log lines about refused connections (want <= 8), %d with a count", lines, summary);
    /* queued longer than the header timeout: still answered (the timeout is lifted while a
     * complete request is processed) */
    stream_job jobs[10];
    pthread_t th[10];
    int saved = PORT;
    PORT = srv.port;
    for (int i = 0; i < 10; i++) {
        memset(&jobs[i], 0, sizeof jobs[i]);
        jobs[i].body = "{\"prompt\":\"Hi\",\"max_tokens\":1000,\"temperature\":0,\"ignore_eos\":true,\"stream\":true}";
        pthread_create(&th[i], NULL, stream_thread, &jobs[i]);
    }
    int ok = 1;
    for (int i = 0; i < 10; i++) {
        pthread_join(th[i], NULL);
        if (!(jobs[i].status == 200 && jobs[i].done)) fprintf(stderr, "flood: stream %d: status %d, done %d\n", i, jobs[i].status, jobs[i].done);
        ok &= jobs[i].status == 200 && jobs[i].done;
        free(jobs[i].text);
    }
    PORT = saved;
    CHECK(ok, "flood: queued streams all answered with the 1 s header timeout");
    double took;
    CHECK(term_and_wait(&srv, 20, &took) == 0, "flood: server exit status (log %s)", srv.log);
    check_no_sanitizer_report(srv.log);
}

/* Read everything from fd (bounded by its receive timeout). */
static char *read_all(int fd, size_t *len) {
    size_t cap = 65536, n = 0;
    char *b = malloc(cap);
    for (;;) {
        if (n + 4096 > cap) b = realloc(b, cap *= 2);
        ssize_t r = recv(fd, b + n, cap - n - 1, 0);
        if (r <= 0) break;
        n += (size_t)r;
    }
    b[n] = 0;
    *len = n;
    return b;
}

static int count_str(const char *h, const char *needle) {
    int k = 0;
    for (const char *p = h; (p = strstr(p, needle)) != NULL; p++) k++;
    return k;
}

/* Malformed HTTP is answered by libmicrohttpd itself, before any handler runs (0.9.75 has no
 * hook for these bodies, see docs/serve.md): the documented status, the connection closed, and
 * the server unharmed. With libmicrohttpd >= 0.9.77 the headers of a bad Content-Length come
 * once (0.9.75 and 0.9.76 send them twice). */
/* Malformed HTTP is answered by the front door (cli/serve_door.c) with an OpenAI-style JSON
 * error and one header block, never libmicrohttpd's HTML page (which sends its headers twice
 * for a bad Content-Length); the server stays healthy. */
static void test_broken_http(void) {
    struct {
        const char *what;
        const char *req;
        size_t pad; /* bytes of a huge header inserted */
        int status;
        const char *code;
    } cases[] = {
        {"bad Content-Length", "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 12abc\r\n\r\n{}", 0, 400, "invalid_content_length"},
        {"negative Content-Length", "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n{}", 0, 400, "invalid_content_length"},
        {"two Content-Lengths", "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}", 0, 400, "invalid_content_length"},
        {"Content-Length over 2^64", "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n", 0, 400, "invalid_content_length"},
        {"Content-Length over the body limit", "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n", 0, 413, "request_too_large"},
        {"bad chunking", "POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer test-key\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", 0, 411, "length_required"},
        {"malformed request line", "GARBAGE\r\nHost: x\r\n\r\n", 0, 400, "malformed_request"},
        {"header without a colon", "GET /health HTTP/1.1\r\nHost x\r\n\r\n", 0, 400, "malformed_request"},
        {"folded header", "GET /health HTTP/1.1\r\nHost: x\r\n  folded\r\n\r\n", 0, 400, "malformed_request"},
        {"300 KB header", "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ", 300000, 431, "request_header_fields_too_large"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        int fd = st_connect(PORT);
        struct timeval tv = {10, 0};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        if (cases[k].pad) {
            char *big = malloc(cases[k].pad + 256);
            size_t l = strlen(cases[k].req);
            memcpy(big, cases[k].req, l);
            memset(big + l, 'a', cases[k].pad);
            memcpy(big + l + cases[k].pad, "\r\n\r\n", 4);
            st_send_all(fd, big, l + cases[k].pad + 4); /* the server may close before all of it */
            free(big);
        } else {
            st_send_all(fd, cases[k].req, strlen(cases[k].req));
        }
        size_t n;
        char *raw = read_all(fd, &n);
        close(fd);
        int status = 0;
        sscanf(raw, "HTTP/1.%*d %d", &status);
        CHECK(status == cases[k].status, "%s: status %d, want %d", cases[k].what, status, cases[k].status);
        CHECK(count_str(raw, "HTTP/1.") == 1, "%s: one status line, got %d", cases[k].what, count_str(raw, "HTTP/1."));
        const char *body = strstr(raw, "\r\n\r\n");
        cJSON *j = body ? cJSON_Parse(body + 4) : NULL;
        const cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "error");
        const cJSON *code = cJSON_GetObjectItemCaseSensitive(e, "code");
        CHECK(strstr(raw, "Content-Type: application/json") && cJSON_IsObject(e) &&
                  cJSON_IsString(cJSON_GetObjectItemCaseSensitive(e, "message")) && cJSON_IsString(code) &&
                  !strcmp(code->valuestring, cases[k].code),
              "%s: an OpenAI-style JSON error with code %s:\n%.300s", cases[k].what, cases[k].code, raw);
        cJSON_Delete(j);
        free(raw);
    }
    /* a well-formed request with a body still goes through, and so does keep-alive */
    st_response h;
    CHECK(st_http(PORT, "GET", "/health", NULL, NULL, &h) == 0 && h.status == 200, "healthy after broken HTTP");
    st_response_free(&h);
}

static int send_completion(int port, const char *body) {
    int fd = st_connect(port);
    if (fd < 0) return -1;
    struct timeval tv = {20, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    st_send_request(fd, "POST", "/v1/completions", NULL, body, strlen(body));
    return fd;
}

/* SIGTERM with a running stream and a queued request: the queued one gets 503, the stream
 * either finishes (drain time left) or ends with an error event and [DONE] (drain time over),
 * and the server exits within the drain bound. */
static void test_drain(const char *tmp, const char *dir) {
    const char *stream_body = "{\"prompt\":\"Hi\",\"max_tokens\":1000,\"temperature\":0,\"ignore_eos\":true,\"stream\":true}";
    for (int pass = 0; pass < 2; pass++) {
        const char *drain = pass == 0 ? "0" : "10";
        st_server srv;
        const char *extra[] = {"--parallel", "1", "--ctx", "1024", "--threads", "1", "--drain-seconds", drain, NULL};
        if (st_start(&srv, tmp, dir, extra) != 0) {
            CHECK(0, "drain %s: server did not start (log %s)", drain, srv.log);
            return;
        }
        int fs = send_completion(srv.port, stream_body);
        char first[64];
        CHECK(recv(fs, first, sizeof first, MSG_PEEK) > 0, "drain %s: stream started", drain);
        int fq = send_completion(srv.port, "{\"prompt\":\"Hi\",\"max_tokens\":5}");
        int saved = PORT;
        PORT = srv.port;
        for (int i = 0; i < 200 && metric("frugal_queue_depth") < 1; i++) usleep(1000);
        PORT = saved;
        double took;
        int code = term_and_wait(&srv, pass == 0 ? 5.0 : 15.0, &took);
        st_response rs, rq;
        int r1 = st_read_response(fs, &rs), r2 = st_read_response(fq, &rq);
        close(fs);
        close(fq);
        CHECK(code == 0 && took < (pass == 0 ? 3.0 : 12.0), "drain %s: exit status %d after %.2f s (log %s)", drain, code, took, srv.log);
        CHECK(r1 == 0 && rs.status == 200, "drain %s: stream answered", drain);
        if (r1 == 0) {
            const char *done = strstr(rs.body, "data: [DONE]\n\n");
            CHECK(done && done[14] == 0, "drain %s: the stream ends with [DONE]: ...%s", drain,
                  rs.body_len > 200 ? rs.body + rs.body_len - 200 : rs.body);
            int shut = strstr(rs.body, "\"server_shutting_down\"") != NULL, fin = strstr(rs.body, "\"finish_reason\":\"length\"") != NULL;
            if (pass == 0) CHECK(shut && !fin, "drain 0: the stream ends with a shutdown error event");
            else CHECK(fin && !shut, "drain 10: the stream finishes");
        }
        CHECK(r2 == 0 && rq.status == 503 && strstr(rq.body, "\"server_shutting_down\""), "drain %s: the queued request gets 503: %d %s",
              drain, rq.status, rq.body ? rq.body : "");
        if (r1 == 0) st_response_free(&rs);
        if (r2 == 0) st_response_free(&rq);
        check_no_sanitizer_report(srv.log);
    }
}

/* A server's log holds no AddressSanitizer / UBSan report. */
static void check_no_sanitizer_report(const char *log) {
    FILE *f = fopen(log, "r");
    char line[1024];
    int sanitizer = 0;
    while (f && fgets(line, sizeof line, f))
        if (strstr(line, "Sanitizer") || strstr(line, "runtime error")) sanitizer = 1;
    if (f) fclose(f);
    CHECK(!sanitizer, "no sanitizer report in %s", log);
}

static void test_undecodable(const char *tmp) {
    char dir[300];
    if (make_gapped_model(tmp, dir, sizeof dir) != 0) {
        CHECK(0, "gapped model in %s", tmp);
        return;
    }
    fr_tokenizer *tok = NULL;
    fr_engine *e = NULL;
    int rc = fr_tokenizer_load(&tok, dir);
    if (rc == FR_OK) rc = fr_engine_load(&e, dir, NULL);
    CHECK(rc == FR_OK, "load the gapped model: %s", fr_last_error());
    if (rc != FR_OK) {
        fr_tokenizer_free(tok);
        return;
    }
    const int n_tok = fr_tokenizer_vocab_size(tok);
    CHECK(n_tok == GAP_PAD + 1 && !fr_tokenizer_id_to_token(tok, 2) && !fr_tokenizer_id_to_token(tok, 1001) &&
              fr_tokenizer_id_to_token(tok, GAP_PAD) && fr_engine_config(e)->vocab_size == GAP_V &&
              fr_engine_config(e)->eos_token_id == GAP_EOS,
          "tokenizer with gaps (%d ids) under a padded vocabulary", n_tok);
    int *prompt = NULL;
    size_t np = 0;
    CHECK(fr_tokenizer_encode(tok, "In the beginning", 16, 0, &prompt, &np) == FR_OK && np > 0, "encode the prompt");
    char pj[512];
    int k = snprintf(pj, sizeof pj, "[");
    for (size_t i = 0; i < np && k < (int)sizeof pj - 16; i++) k += snprintf(pj + k, sizeof pj - (size_t)k, "%s%d", i ? "," : "", prompt[i]);
    snprintf(pj + k, sizeof pj - (size_t)k, "]");

    /* the case must bite: without a tokenizer, gap ids (not only padded ones) win */
    fr_generate_options o;
    fr_generate_options_default(&o);
    o.sample.temperature = 0;
    o.max_tokens = 24;
    o.ignore_eos = 1;
    fr_seq *sq = NULL;
    int *out = NULL, ol = 0, gaps = 0, past = 0;
    const int *pp[1] = {prompt};
    int npi = (int)np;
    if (fr_seq_create(&sq, e) == FR_OK && fr_generate(e, NULL, &sq, 1, pp, &npi, &o, &out, &ol, NULL) == FR_OK) {
        for (int t = 0; t < ol; t++) {
            gaps += out[t] < n_tok && !fr_tokenizer_id_to_token(tok, out[t]);
            past += out[t] >= n_tok;
        }
    }
    free(out);
    fr_seq_free(sq);
    CHECK(gaps > 0 && past > 0, "unmasked greedy draws gap ids (%d) and ids past the tokenizer (%d) of %d", gaps, past, ol);

    st_server srv;
    const char *extra[] = {"--parallel", "2", "--ctx", "256", "--api-key", "test-key", "--threads", "2", NULL};
    if (st_start(&srv, tmp, dir, extra) != 0) {
        CHECK(0, "gapped server did not start (log %s)", srv.log);
        free(prompt);
        fr_engine_free(e);
        fr_tokenizer_free(tok);
        return;
    }
    int saved = PORT;
    PORT = srv.port;
    /* greedy with and without ignore_eos, then sampling (several seeds) both ways */
    struct { float temp; int seed, ignore_eos; } cases[] = {
        {0, 0, 1}, {0, 0, 0}, {1.5f, 1, 1}, {1.5f, 2, 1}, {1.5f, 3, 1}, {2.0f, 4, 1}, {1.5f, 5, 0}, {1.5f, 6, 0},
    };
    int eos_stops = 0;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const int N = 32;
        char body[1024];
        snprintf(body, sizeof body, "{\"prompt\":%s,\"max_tokens\":%d,\"temperature\":%g,\"seed\":%d,\"ignore_eos\":%s}", pj, N,
                 (double)cases[c].temp, cases[c].seed, cases[c].ignore_eos ? "true" : "false");
        int status;
        cJSON *j = post_json("/v1/completions", body, &status);
        const char *text = jstr(j, "choices.0.text"), *fin = jstr(j, "choices.0.finish_reason");
        double ct = jnum(j, "usage", "completion_tokens");
        fr_generate_options_default(&o);
        o.max_tokens = N;
        o.ignore_eos = cases[c].ignore_eos;
        o.sample.temperature = cases[c].temp;
        o.sample.top_k = 0;
        o.sample.top_p = 1;
        o.sample.min_p = 0;
        o.sample.repeat_penalty = 1;
        o.sample.seed = (uint64_t)cases[c].seed;
        int n_ref = -1;
        fr_stop_reason why = FR_STOP_MAX_TOKENS;
        char *ref = generate_ref(e, tok, prompt, npi, &o, &n_ref, &why);
        CHECK(status == 200 && text && fin, "case %zu (temperature %g, ignore_eos %d): status %d, error %s", c,
              (double)cases[c].temp, cases[c].ignore_eos, status, jstr(j, "error.message") ? jstr(j, "error.message") : "-");
        if (cases[c].ignore_eos)
            CHECK(fin && strcmp(fin, "length") == 0 && ct == N, "case %zu: ignore_eos runs to max_tokens: %s, %g tokens", c,
                  fin ? fin : "-", ct);
        CHECK(ref && text && strcmp(ref, text) == 0 && ct == n_ref &&
                  fin && strcmp(fin, why == FR_STOP_EOS ? "stop" : "length") == 0,
              "case %zu equals fr_generate: %g vs %d tokens, finish %s (fr_generate %d)\n  api: [%s]\n  ref: [%s]", c, ct,
              n_ref, fin ? fin : "-", (int)why, text ? text : "", ref ? ref : "");
        if (!cases[c].ignore_eos && why == FR_STOP_EOS && fin && strcmp(fin, "stop") == 0) eos_stops++;
        free(ref);
        cJSON_Delete(j);
    }
    /* the greedy case without ignore_eos must end on EOS for the test to mean anything */
    CHECK(eos_stops >= 1, "EOS (id %d, not in the tokenizer) ended %d completions", GAP_EOS, eos_stops);
    printf("gapped tokenizer (%d ids, model %d, eos %d): unmasked greedy drew %d gap and %d padded ids; the API "
           "none, EOS stopped %d completions\n", n_tok, GAP_V, GAP_EOS, gaps, past, eos_stops);
    PORT = saved;
    CHECK(st_stop(&srv) == 0, "gapped server exit status on SIGTERM (log %s)", srv.log);
    check_no_sanitizer_report(srv.log);
    free(prompt);
    fr_engine_free(e);
    fr_tokenizer_free(tok);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    char tmp[] = "/tmp/frugal-test-serve-XXXXXX", dir[300];
    if (!mkdtemp(tmp)) return 1;
    test_chat_render();
    CHECK(st_make_model(tmp, dir, sizeof dir) == 0, "tiny model in %s", tmp);
    /* usage errors */
    CHECK(system("'" FR_FRUGAL_BIN "' serve 2>/dev/null") >> 8 == 2, "serve without --model: exit 2");
    CHECK(system("'" FR_FRUGAL_BIN "' serve --model /nonexistent/x.gguf 2>/dev/null") >> 8 == 1,
          "serve --model with a missing .gguf: exit 1");
    st_server srv;
    /* ctx 1024: room for a long request that outlasts a newcomer even on a fast machine */
    const char *extra[] = {"--parallel", "8", "--ctx", "1024", "--api-key", "test-key", "--threads", "2", NULL};
    if (st_start(&srv, tmp, dir, extra) != 0) {
        CHECK(0, "server did not start (log %s)", srv.log);
        return fr_test_finish("test_serve");
    }
    PORT = srv.port;
    test_basic(dir);
    test_errors();
    test_concurrency();
    test_clients();
    test_broken_http();
    int code = st_stop(&srv);
    test_gguf(tmp, dir);
    test_flood(tmp, dir);
    test_drain(tmp, dir);
    CHECK(code == 0, "server exit status %d on SIGTERM (log %s)", code, srv.log);
    check_no_sanitizer_report(srv.log);
    test_undecodable(tmp);
    if (fr_test_failed == 0) {
        char cmd[400];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
        if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmp);
    }
    return fr_test_finish("test_serve");
}
