/*
 * chat.c — render a conversation into the prompt text the model was trained on: the
 * DeepSeek-V3 chat format (see fr_chat_render in frugal.h).
 *
 *   <｜begin▁of▁sentence｜>{system}[\n\n]<｜User｜>{msg}<｜Assistant｜>{reply}<｜end▁of▁sentence｜>...<｜Assistant｜>
 *
 * The Jinja template of tokenizer_config.json is not interpreted; it only decides whether
 * each system message is followed by "\n\n" (frugal's own template, fr_default_chat_template,
 * does that; DeepSeek-V3's does not put a separator after the last one).
 */
#include "frugal.h"
#include "core/internal.h"
#include "text/tokenizer_internal.h"

#include <stdlib.h>
#include <string.h>

#define BOS_DEFAULT "<\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"
#define EOS_DEFAULT "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"
#define USER_TAG "<\xef\xbd\x9cUser\xef\xbd\x9c>"
#define ASSISTANT_TAG "<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>"

typedef struct {
    char *s;
    size_t n, cap;
    int oom;
} chat_buf;

static void cb_add(chat_buf *b, const char *s, size_t l) {
    if (b->oom) return;
    if (b->n + l + 1 > b->cap) {
        size_t cap = (b->n + l + 1) * 2;
        char *p = realloc(b->s, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->s = p;
        b->cap = cap;
    }
    memcpy(b->s + b->n, s, l);
    b->n += l;
    b->s[b->n] = 0;
}
static void cb_str(chat_buf *b, const char *s) { cb_add(b, s, strlen(s)); }

int fr_chat_template_is_deepseek(const fr_tokenizer *tok) {
    const char *t = tok ? fr_tokenizer_chat_template(tok) : "";
    if (!t[0]) return 1;
    return strstr(t, USER_TAG) != NULL && strstr(t, ASSISTANT_TAG) != NULL;
}

/* The tokenizer's bos / eos strings (DeepSeek-V3's without a tokenizer or when it has none),
 * and whether its (DeepSeek-style) template writes "\n\n" after each system message */
static void chat_markers(const fr_tokenizer *tok, const char **bos, const char **eos, int *system_sep) {
    const char *tmpl = tok ? fr_tokenizer_chat_template(tok) : "";
    *system_sep = tmpl[0] && fr_chat_template_is_deepseek(tok) && strstr(tmpl, "\\n\\n") != NULL;
    *bos = BOS_DEFAULT, *eos = EOS_DEFAULT;
    if (!tok) return;
    const int b = fr_tokenizer_special_id(tok, FR_TOKEN_BOS), e = fr_tokenizer_special_id(tok, FR_TOKEN_EOS);
    if (b >= 0 && fr_tokenizer_id_to_token(tok, b)) *bos = fr_tokenizer_id_to_token(tok, b);
    if (e >= 0 && fr_tokenizer_id_to_token(tok, e)) *eos = fr_tokenizer_id_to_token(tok, e);
}

int fr_chat_render(const fr_tokenizer *tok, const fr_chat_message *msgs, int n_msgs,
                   int add_generation_prompt, char **out, size_t *out_len) {
    if (!out || n_msgs < 0 || (n_msgs > 0 && !msgs)) return fr_error(FR_ERR_ARG, "fr_chat_render: invalid arguments");
    *out = NULL;
    if (out_len) *out_len = 0;
    for (int i = 0; i < n_msgs; i++) {
        const char *r = msgs[i].role;
        if (!r || !msgs[i].content) return fr_error(FR_ERR_ARG, "chat message %d: missing role or content", i);
        if (strcmp(r, "system") && strcmp(r, "user") && strcmp(r, "assistant"))
            return fr_error(FR_ERR_ARG, "chat message %d: unknown role '%.40s' (expected system, user or assistant)", i, r);
    }
    const char *bos, *eos;
    int system_sep;
    chat_markers(tok, &bos, &eos, &system_sep);
    chat_buf b = {0};
    cb_str(&b, bos);
    for (int i = 0; i < n_msgs; i++) {
        if (strcmp(msgs[i].role, "system") != 0) continue;
        cb_str(&b, msgs[i].content);
        if (system_sep) cb_str(&b, "\n\n");
    }
    for (int i = 0; i < n_msgs; i++) {
        if (strcmp(msgs[i].role, "user") == 0) {
            cb_str(&b, USER_TAG);
            cb_str(&b, msgs[i].content);
        } else if (strcmp(msgs[i].role, "assistant") == 0) {
            cb_str(&b, ASSISTANT_TAG);
            cb_str(&b, msgs[i].content);
            cb_str(&b, eos);
        }
    }
    if (add_generation_prompt) cb_str(&b, ASSISTANT_TAG);
    if (b.oom) {
        free(b.s);
        return fr_error(FR_ERR_NOMEM, "out of memory rendering a chat");
    }
    *out = b.s;
    if (out_len) *out_len = b.n;
    return FR_OK;
}

/* ------------------------------------------------------------------ fine-tuning tokens */

int fr_tokmask_append(fr_tokmask *b, const int *ids, const unsigned char *mask, unsigned char fill, size_t n) {
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n) cap *= 2;
        int *ni = realloc(b->ids, cap * sizeof *ni);
        if (ni) b->ids = ni;
        unsigned char *nm = ni ? realloc(b->mask, cap) : NULL;
        if (nm) b->mask = nm;
        if (!ni || !nm) return fr_error(FR_ERR_NOMEM, "out of memory for %zu fine-tuning tokens", b->n + n);
        b->cap = cap;
    }
    memcpy(b->ids + b->n, ids, n * sizeof *ids);
    if (mask) memcpy(b->mask + b->n, mask, n);
    else memset(b->mask + b->n, fill, n);
    b->n += n;
    return FR_OK;
}

void fr_tokmask_free(fr_tokmask *b) {
    free(b->ids);
    free(b->mask);
    memset(b, 0, sizeof *b);
}

/* encode text[0:len] (special tags parsed) and append it with mask value m */
static int mb_add(fr_tokmask *b, const fr_tokenizer *tok, const char *text, size_t len, unsigned char m) {
    int *ids = NULL;
    size_t n = 0;
    FR_CHECK(fr_tokenizer_encode(tok, text, len, 1, &ids, &n));
    const int rc = fr_tokmask_append(b, ids, NULL, m, n);
    free(ids);
    return rc;
}

int fr_chat_encode_masked(const fr_tokenizer *tok, const fr_chat_message *msgs, int n_msgs, int **ids,
                          unsigned char **mask, size_t *n) {
    if (!tok || !ids || !mask || !n || n_msgs < 0 || (n_msgs > 0 && !msgs))
        return fr_error(FR_ERR_ARG, "fr_chat_encode_masked: invalid arguments");
    *ids = NULL, *mask = NULL, *n = 0;
    /* the pieces of fr_chat_render's text, in its order; each begins or ends at a special tag,
     * so encoding them one by one gives the tokens of the whole text (tests/test_sft.c) */
    char *whole = NULL;
    FR_CHECK(fr_chat_render(tok, msgs, n_msgs, 0, &whole, NULL)); /* validates the roles */
    free(whole);
    const char *bos, *eos;
    int system_sep;
    chat_markers(tok, &bos, &eos, &system_sep);
    fr_tokmask b = {0};
    chat_buf head = {0};
    cb_str(&head, bos);
    for (int i = 0; i < n_msgs; i++)
        if (!strcmp(msgs[i].role, "system")) {
            cb_str(&head, msgs[i].content);
            if (system_sep) cb_str(&head, "\n\n");
        }
    int rc = head.oom ? fr_error(FR_ERR_NOMEM, "out of memory") : mb_add(&b, tok, head.s, head.n, 0);
    free(head.s);
    for (int i = 0; i < n_msgs && rc == FR_OK; i++) {
        const char *c = msgs[i].content;
        chat_buf p = {0};
        if (!strcmp(msgs[i].role, "user")) {
            cb_str(&p, USER_TAG);
            cb_str(&p, c);
            rc = p.oom ? fr_error(FR_ERR_NOMEM, "out of memory") : mb_add(&b, tok, p.s, p.n, 0);
        } else if (!strcmp(msgs[i].role, "assistant")) {
            rc = mb_add(&b, tok, ASSISTANT_TAG, strlen(ASSISTANT_TAG), 0);
            cb_str(&p, c);
            cb_str(&p, eos);
            if (rc == FR_OK) rc = p.oom ? fr_error(FR_ERR_NOMEM, "out of memory") : mb_add(&b, tok, p.s, p.n, 1);
        }
        free(p.s);
    }
    if (rc != FR_OK) {
        fr_tokmask_free(&b);
        return rc;
    }
    *ids = b.ids, *mask = b.mask, *n = b.n;
    return FR_OK;
}
