/* serve_api.c — the OpenAI API of `frugal serve` as JSON: a completion request body checked
 * and turned into a srv_req (prompt rendered with the chat template and tokenized, sampling
 * parameters validated), and the response bodies: the non-streaming object, one streaming
 * event, the error object {"error": {"message", "type", "param", "code"}}. The HTTP side is
 * cmd_serve.c. */
#define _GNU_SOURCE
#include "serve.h"

#include "frugal.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

cJSON *srv_error_object(const char *message, const char *type, const char *param, const char *code) {
    cJSON *o = cJSON_CreateObject(), *e = cJSON_CreateObject();
    if (!o || !e) {
        cJSON_Delete(o);
        cJSON_Delete(e);
        return NULL;
    }
    cJSON_AddItemToObject(o, "error", e);
    cJSON_AddStringToObject(e, "message", message);
    cJSON_AddStringToObject(e, "type", type);
    if (param) cJSON_AddStringToObject(e, "param", param);
    else cJSON_AddNullToObject(e, "param");
    if (code) cJSON_AddStringToObject(e, "code", code);
    else cJSON_AddNullToObject(e, "code");
    return o;
}

/* ------------------------------------------------------------------ request parsing */

static int perr(srv_parse_err *e, unsigned status, const char *param, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static int perr(srv_parse_err *e, unsigned status, const char *param, const char *code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    e->param = param;
    e->code = code;
    e->status = status;
    return -1;
}

/* Optional number field in [lo, hi]; integer when want_int. Returns 1 set, 0 absent/null, -1 error. */
static int get_number(const cJSON *root, const char *key, double lo, double hi, int want_int, double *out,
                      srv_parse_err *e) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
        return perr(e, 400, key, "invalid_type", "'%s' must be %s", key, want_int ? "an integer" : "a number");
    double x = v->valuedouble;
    if (want_int && x != floor(x)) return perr(e, 400, key, "invalid_type", "'%s' must be an integer", key);
    if (x < lo || x > hi) return perr(e, 400, key, "invalid_value", "'%s' must be in [%g, %g]; got %g", key, lo, hi, x);
    *out = x;
    return 1;
}

static int get_bool(const cJSON *root, const char *key, int *out, srv_parse_err *e) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsBool(v)) return perr(e, 400, key, "invalid_type", "'%s' must be a boolean", key);
    *out = cJSON_IsTrue(v);
    return 1;
}

/* Text of a chat message's content: a string, or an array of {"type":"text","text":...} parts. */
static int content_text(const cJSON *c, char **out, srv_parse_err *e) {
    *out = NULL;
    if (cJSON_IsNull(c)) {
        *out = strdup("");
        return *out ? 0 : perr(e, 500, NULL, NULL, "out of memory");
    }
    if (cJSON_IsString(c)) {
        *out = strdup(c->valuestring);
        return *out ? 0 : perr(e, 500, NULL, NULL, "out of memory");
    }
    if (!cJSON_IsArray(c)) return perr(e, 400, "messages", "invalid_type", "message content must be a string or an array of text parts");
    size_t n = 0;
    const cJSON *part;
    cJSON_ArrayForEach(part, c) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(part, "type"), *x = cJSON_GetObjectItemCaseSensitive(part, "text");
        if (!cJSON_IsObject(part) || !cJSON_IsString(t) || strcmp(t->valuestring, "text") != 0 || !cJSON_IsString(x))
            return perr(e, 400, "messages", "invalid_type", "only text content parts ({\"type\": \"text\", \"text\": ...}) are supported");
        n += strlen(x->valuestring);
    }
    char *s = malloc(n + 1);
    if (!s) return perr(e, 500, NULL, NULL, "out of memory");
    size_t k = 0;
    cJSON_ArrayForEach(part, c) {
        const char *x = cJSON_GetObjectItemCaseSensitive(part, "text")->valuestring;
        size_t l = strlen(x);
        memcpy(s + k, x, l);
        k += l;
    }
    s[k] = 0;
    *out = s;
    return 0;
}

srv_req *srv_parse_request(srv_server *s, const cJSON *root, int chat, srv_parse_err *e) {
    if (!cJSON_IsObject(root)) {
        perr(e, 400, NULL, "invalid_type", "the request body must be a JSON object");
        return NULL;
    }
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (model && !cJSON_IsNull(model)) {
        if (!cJSON_IsString(model)) {
            perr(e, 400, "model", "invalid_type", "'model' must be a string");
            return NULL;
        }
        if (strcmp(model->valuestring, s->model_id) != 0) {
            perr(e, 404, "model", "model_not_found", "The model '%.200s' does not exist; this server serves '%.100s'",
                 model->valuestring, s->model_id);
            return NULL;
        }
    }
    srv_req *r = calloc(1, sizeof *r);
    if (!r) {
        perr(e, 500, NULL, NULL, "out of memory");
        return NULL;
    }
    r->refs = 1;
    r->slot = -1;
    r->chat = chat;
    fr_sample_params_default(&r->sp);
    r->sp.temperature = 1.0f;
    r->sp.top_p = 1.0f;
    r->sp.top_k = 0;
    r->sp.min_p = 0.0f;
    r->sp.repeat_penalty = 1.0f;
    double x;
    int b;
    char *text = NULL;
    int *ids = NULL;
    size_t n_ids = 0;
    long max_tokens = -1;

    b = 0;
    if (get_bool(root, "stream", &b, e) < 0) goto fail;
    r->stream = b;
    const cJSON *so = cJSON_GetObjectItemCaseSensitive(root, "stream_options");
    if (so && !cJSON_IsNull(so)) {
        if (!cJSON_IsObject(so)) { perr(e, 400, "stream_options", "invalid_type", "'stream_options' must be an object"); goto fail; }
        int iu = 0;
        if (get_bool(so, "include_usage", &iu, e) < 0) goto fail;
        r->include_usage = iu;
    }
    int rc;
    if ((rc = get_number(root, "n", 1, 1e9, 1, &x, e)) < 0) goto fail;
    if (rc == 1 && x != 1) { perr(e, 400, "n", "invalid_value", "only n = 1 is supported"); goto fail; }
    if ((rc = get_number(root, "temperature", 0, 2, 0, &x, e)) < 0) goto fail;
    if (rc == 1) r->sp.temperature = (float)x;
    if ((rc = get_number(root, "top_p", 0, 1, 0, &x, e)) < 0) goto fail;
    if (rc == 1) {
        if (x <= 0) { perr(e, 400, "top_p", "invalid_value", "'top_p' must be > 0"); goto fail; }
        r->sp.top_p = (float)x;
    }
    if ((rc = get_number(root, "top_k", 0, 1 << 30, 1, &x, e)) < 0) goto fail;
    if (rc == 1) r->sp.top_k = (int)x;
    if ((rc = get_number(root, "seed", -9.2e18, 9.2e18, 1, &x, e)) < 0) goto fail;
    if (rc == 1) r->sp.seed = (uint64_t)(int64_t)x;
    else {
        pthread_mutex_lock(&s->mu);
        r->sp.seed = (uint64_t)time(NULL) * 0x9E3779B97F4A7C15ull + ++s->id_counter;
        pthread_mutex_unlock(&s->mu);
    }
    if ((rc = get_number(root, "presence_penalty", -2, 2, 0, &x, e)) < 0) goto fail;
    if ((rc = get_number(root, "frequency_penalty", -2, 2, 0, &x, e)) < 0) goto fail;
    if ((rc = get_number(root, "max_tokens", 1, 1 << 24, 1, &x, e)) < 0) goto fail;
    if (rc == 1) max_tokens = (long)x;
    if (chat) {
        if ((rc = get_number(root, "max_completion_tokens", 1, 1 << 24, 1, &x, e)) < 0) goto fail;
        if (rc == 1) max_tokens = (long)x;
    }
    if (get_bool(root, "ignore_eos", &r->ignore_eos, e) < 0) goto fail;
    const cJSON *stop = cJSON_GetObjectItemCaseSensitive(root, "stop");
    if (stop && !cJSON_IsNull(stop)) {
        int single = cJSON_IsString(stop);
        if (!single && !cJSON_IsArray(stop)) { perr(e, 400, "stop", "invalid_type", "'stop' must be a string or an array of strings"); goto fail; }
        if (!single && cJSON_GetArraySize(stop) > SRV_MAX_STOPS) { perr(e, 400, "stop", "invalid_value", "at most %d stop strings", SRV_MAX_STOPS); goto fail; }
        for (const cJSON *it = single ? stop : stop->child; it; it = single ? NULL : it->next) {
            if (!cJSON_IsString(it)) { perr(e, 400, "stop", "invalid_type", "'stop' must be a string or an array of strings"); goto fail; }
            size_t l = strlen(it->valuestring);
            if (l == 0 || l > SRV_MAX_STOP_LEN) { perr(e, 400, "stop", "invalid_value", "stop strings must have 1 to %d bytes", SRV_MAX_STOP_LEN); goto fail; }
            if (!(r->stops[r->n_stops++] = strdup(it->valuestring))) { perr(e, 500, NULL, NULL, "out of memory"); goto fail; }
        }
    }

    if (chat) {
        const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(root, "messages");
        if (!msgs) { perr(e, 400, "messages", "missing_required_parameter", "'messages' is required"); goto fail; }
        if (!cJSON_IsArray(msgs)) { perr(e, 400, "messages", "invalid_type", "'messages' must be an array"); goto fail; }
        int n = cJSON_GetArraySize(msgs);
        if (n == 0) { perr(e, 400, "messages", "invalid_value", "'messages' must not be empty"); goto fail; }
        fr_chat_message *cm = calloc((size_t)n, sizeof *cm);
        char **owned = calloc((size_t)n, sizeof *owned);
        int k = 0, bad = 0;
        const cJSON *m;
        if (!cm || !owned) { free(cm); free(owned); perr(e, 500, NULL, NULL, "out of memory"); goto fail; }
        cJSON_ArrayForEach(m, msgs) {
            const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
            const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
            if (!cJSON_IsObject(m) || !cJSON_IsString(role)) { bad = perr(e, 400, "messages", "invalid_type", "each message must be an object with a string 'role'"); break; }
            const char *rs = role->valuestring;
            if (strcmp(rs, "developer") == 0) rs = "system";
            if (strcmp(rs, "system") && strcmp(rs, "user") && strcmp(rs, "assistant")) {
                bad = perr(e, 400, "messages", "invalid_value", "unsupported message role '%.40s' (system, user, assistant)", rs);
                break;
            }
            if (!content) { bad = perr(e, 400, "messages", "missing_required_parameter", "each message needs 'content'"); break; }
            if (content_text(content, &owned[k], e) != 0) { bad = -1; break; }
            cm[k].role = rs;
            cm[k].content = owned[k];
            k++;
        }
        if (!bad && fr_chat_render(s->tok, cm, k, 1, &text, NULL) != FR_OK) bad = perr(e, 400, "messages", NULL, "%s", fr_last_error());
        for (int i = 0; i < k; i++) free(owned[i]);
        free(owned);
        free(cm);
        if (bad) goto fail;
        if (fr_tokenizer_encode(s->tok, text, strlen(text), 1, &ids, &n_ids) != FR_OK) { perr(e, 500, NULL, NULL, "cannot encode: %s", fr_last_error()); goto fail; }
    } else {
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(root, "prompt");
        if (!p) { perr(e, 400, "prompt", "missing_required_parameter", "'prompt' is required"); goto fail; }
        if (cJSON_IsArray(p) && cJSON_GetArraySize(p) == 1 && cJSON_IsString(p->child)) p = p->child;
        if (cJSON_IsString(p)) {
            if (fr_tokenizer_encode(s->tok, p->valuestring, strlen(p->valuestring), 1, &ids, &n_ids) != FR_OK) {
                perr(e, 500, NULL, NULL, "cannot encode: %s", fr_last_error());
                goto fail;
            }
        } else if (cJSON_IsArray(p) && cJSON_GetArraySize(p) > 0 && cJSON_IsNumber(p->child)) {
            n_ids = (size_t)cJSON_GetArraySize(p);
            ids = malloc(n_ids * sizeof *ids);
            if (!ids) { perr(e, 500, NULL, NULL, "out of memory"); goto fail; }
            size_t k = 0;
            const cJSON *t;
            cJSON_ArrayForEach(t, p) {
                if (!cJSON_IsNumber(t) || t->valuedouble != floor(t->valuedouble) || t->valuedouble < 0 || t->valuedouble >= s->vocab) {
                    perr(e, 400, "prompt", "invalid_value", "token ids in 'prompt' must be integers in [0, %d)", s->vocab);
                    goto fail;
                }
                ids[k++] = (int)t->valuedouble;
            }
        } else if (cJSON_IsArray(p) && cJSON_GetArraySize(p) > 1) {
            perr(e, 400, "prompt", "invalid_value", "only one prompt per request is supported (n = 1)");
            goto fail;
        } else {
            perr(e, 400, "prompt", "invalid_type", "'prompt' must be a string or an array of token ids");
            goto fail;
        }
        if (max_tokens < 0) max_tokens = 16; /* OpenAI's default for completions */
    }
    if (n_ids == 0) { perr(e, 400, chat ? "messages" : "prompt", "invalid_value", "the prompt encodes to no tokens"); goto fail; }
    if (n_ids >= (size_t)s->ctx) {
        perr(e, 400, chat ? "messages" : "prompt", "context_length_exceeded",
             "This model's maximum context length is %d tokens; the prompt has %zu tokens (no room for a completion)",
             s->ctx, n_ids);
        goto fail;
    }
    long room = s->ctx - (long)n_ids;
    if (max_tokens < 0 || max_tokens > room) max_tokens = room;
    r->max_tokens = (int)max_tokens;
    r->n_prompt = (int)n_ids;
    r->hist = malloc(((size_t)n_ids + (size_t)max_tokens) * sizeof *r->hist);
    if (!r->hist) { perr(e, 500, NULL, NULL, "out of memory"); goto fail; }
    memcpy(r->hist, ids, n_ids * sizeof *ids);
    free(ids);
    free(text);
    r->created = (long)time(NULL);
    pthread_mutex_lock(&s->mu);
    snprintf(r->id, sizeof r->id, "%s-%llx%06llx", chat ? "chatcmpl" : "cmpl", (unsigned long long)r->created,
             ++s->id_counter & 0xffffffull);
    pthread_mutex_unlock(&s->mu);
    return r;
fail:
    free(ids);
    free(text);
    pthread_mutex_lock(&s->mu);
    srv_req_unref_locked(r);
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* ------------------------------------------------------------------ response bodies */

static void add_usage(cJSON *o, const srv_req *r) {
    cJSON *u = cJSON_AddObjectToObject(o, "usage");
    if (!u) return;
    cJSON_AddNumberToObject(u, "prompt_tokens", r->n_prompt);
    cJSON_AddNumberToObject(u, "completion_tokens", r->n_gen);
    cJSON_AddNumberToObject(u, "total_tokens", r->n_prompt + r->n_gen);
}

static cJSON *base_object(const srv_server *s, const srv_req *r, const char *object) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddStringToObject(o, "id", r->id);
    cJSON_AddStringToObject(o, "object", object);
    cJSON_AddNumberToObject(o, "created", (double)r->created);
    cJSON_AddStringToObject(o, "model", s->model_id);
    cJSON_AddStringToObject(o, "system_fingerprint", "frugal-" FRUGAL_VERSION);
    return o;
}

cJSON *srv_final_body(const srv_server *s, const srv_req *r) {
    cJSON *o = base_object(s, r, r->chat ? "chat.completion" : "text_completion");
    if (!o) return NULL;
    cJSON *choices = cJSON_AddArrayToObject(o, "choices"), *ch = cJSON_CreateObject();
    cJSON_AddItemToArray(choices, ch);
    cJSON_AddNumberToObject(ch, "index", 0);
    if (r->chat) {
        cJSON *m = cJSON_AddObjectToObject(ch, "message");
        cJSON_AddStringToObject(m, "role", "assistant");
        cJSON_AddStringToObject(m, "content", r->out ? r->out : "");
    } else {
        cJSON_AddStringToObject(ch, "text", r->out ? r->out : "");
    }
    cJSON_AddNullToObject(ch, "logprobs");
    cJSON_AddStringToObject(ch, "finish_reason", r->finish_reason ? r->finish_reason : "stop");
    add_usage(o, r);
    return o;
}

char *srv_stream_event(const srv_server *s, const srv_req *r, const char *text, size_t len, int role, const char *finish, int usage_only) {
    cJSON *o = base_object(s, r, r->chat ? "chat.completion.chunk" : "text_completion");
    if (!o) return NULL;
    cJSON *choices = cJSON_AddArrayToObject(o, "choices");
    if (!usage_only) {
        cJSON *ch = cJSON_CreateObject();
        cJSON_AddItemToArray(choices, ch);
        cJSON_AddNumberToObject(ch, "index", 0);
        char *t = malloc(len + 1);
        if (t) {
            memcpy(t, text, len);
            t[len] = 0;
        }
        if (r->chat) {
            cJSON *d = cJSON_AddObjectToObject(ch, "delta");
            if (role) cJSON_AddStringToObject(d, "role", "assistant");
            if (len || role) cJSON_AddStringToObject(d, "content", t ? t : "");
        } else {
            cJSON_AddStringToObject(ch, "text", t ? t : "");
        }
        free(t);
        cJSON_AddNullToObject(ch, "logprobs");
        if (finish) cJSON_AddStringToObject(ch, "finish_reason", finish);
        else cJSON_AddNullToObject(ch, "finish_reason");
    }
    if (usage_only) add_usage(o, r);
    else if (r->include_usage) cJSON_AddNullToObject(o, "usage");
    char *j = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!j) return NULL;
    size_t l = strlen(j);
    char *ev = malloc(l + 9);
    if (ev) {
        memcpy(ev, "data: ", 6);
        memcpy(ev + 6, j, l);
        memcpy(ev + 6 + l, "\n\n", 3);
    }
    free(j);
    return ev;
}
