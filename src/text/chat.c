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
    const char *tmpl = tok ? fr_tokenizer_chat_template(tok) : "";
    /* "\n\n" after each system message when the (DeepSeek-style) template writes one */
    int system_sep = tmpl[0] && fr_chat_template_is_deepseek(tok) && strstr(tmpl, "\\n\\n") != NULL;
    const char *bos = BOS_DEFAULT, *eos = EOS_DEFAULT;
    if (tok) {
        int b = fr_tokenizer_special_id(tok, FR_TOKEN_BOS), e = fr_tokenizer_special_id(tok, FR_TOKEN_EOS);
        if (b >= 0 && fr_tokenizer_id_to_token(tok, b)) bos = fr_tokenizer_id_to_token(tok, b);
        if (e >= 0 && fr_tokenizer_id_to_token(tok, e)) eos = fr_tokenizer_id_to_token(tok, e);
    }
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
