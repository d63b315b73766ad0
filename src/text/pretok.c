/* pretok.c — the pre-tokenizer pipeline of a byte-level BPE tokenizer: the GPT-2 byte-level
 * alphabet (bytes <-> printable code points) and the PCRE2 split patterns that cut text into
 * pieces before BPE (DeepSeek-V3's, or those a tokenizer.json names). See docs/tokenizer.md.
 */
#define _GNU_SOURCE
#include "text/tokenizer_internal.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ byte-level alphabet */

/* Printable bytes stand for themselves; the other 68 bytes get 256, 257, ... in byte order. */
static int bl_printable(unsigned b) { return (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae); }

static uint32_t g_bl_cp[256];
static int16_t g_bl_byte[256 + 68];
static pthread_once_t g_bl_once = PTHREAD_ONCE_INIT;

static void bl_init(void) {
    uint32_t next = 256;
    for (unsigned b = 0; b < 256; b++) g_bl_cp[b] = bl_printable(b) ? b : next++;
    for (unsigned i = 0; i < 256 + 68; i++) g_bl_byte[i] = -1;
    for (unsigned b = 0; b < 256; b++) g_bl_byte[g_bl_cp[b]] = (int16_t)b;
}

uint32_t fr_bytelevel_cp(unsigned b) {
    pthread_once(&g_bl_once, bl_init);
    return g_bl_cp[b & 255];
}

int fr_bytelevel_byte(uint32_t cp) {
    pthread_once(&g_bl_once, bl_init);
    return cp < 256 + 68 ? g_bl_byte[cp] : -1;
}

size_t fr_bytelevel_encode(const unsigned char *src, size_t n, char *dst) {
    pthread_once(&g_bl_once, bl_init);
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t cp = g_bl_cp[src[i]];
        if (cp < 0x80) {
            dst[o++] = (char)cp;
        } else { /* all alphabet code points are < 0x800 */
            dst[o++] = (char)(0xc0 | (cp >> 6));
            dst[o++] = (char)(0x80 | (cp & 0x3f));
        }
    }
    dst[o] = 0;
    return o;
}

int fr_bytelevel_decode(const char *s, size_t n, unsigned char *dst, size_t *out_len) {
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        unsigned c = (unsigned char)s[i];
        uint32_t cp;
        if (c < 0x80) {
            cp = c;
            i += 1;
        } else if ((c & 0xe0) == 0xc0 && i + 1 < n) {
            cp = ((c & 0x1fu) << 6) | ((unsigned char)s[i + 1] & 0x3fu);
            i += 2;
        } else {
            return -1;
        }
        int b = fr_bytelevel_byte(cp);
        if (b < 0) return -1;
        dst[o++] = (unsigned char)b;
    }
    *out_len = o;
    return 0;
}

/* ------------------------------------------------------------------ pre-tokenizer */

/* Unicode White_Space, which is what \s means in Oniguruma (tokenizers' regex engine). In
 * UCP mode PCRE2's \s also takes U+180E (MONGOLIAN VOWEL SEPARATOR, a format character since
 * Unicode 6.3), so \s and \S are spelled out. */
#define WS_SET "\\t-\\r\\x{20}\\x{85}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}\\x{2028}\\x{2029}\\x{202f}\\x{205f}\\x{3000}"

/* Copy pattern with \s -> [WS] (bare WS inside a class) and \S -> [^WS] (outside classes;
 * a \S inside a class is left as is). Returns a malloc'd string or NULL. */
static char *rewrite_space_classes(const char *p, size_t len, size_t *out_len) {
    size_t n = 0, ws = strlen(WS_SET), count = 0;
    for (size_t i = 0; i + 1 < len; i++)
        if (p[i] == '\\') {
            count++;
            i++;
        }
    char *o = malloc(len + count * (ws + 4) + 1);
    if (!o) return NULL;
    int in_class = 0;
    for (size_t i = 0; i < len; i++) {
        char c = p[i];
        if (c == '\\' && i + 1 < len) {
            char e = p[i + 1];
            if (e == 's' || (e == 'S' && !in_class)) {
                if (!in_class) o[n++] = '[';
                if (e == 'S') o[n++] = '^';
                memcpy(o + n, WS_SET, ws);
                n += ws;
                if (!in_class) o[n++] = ']';
            } else {
                o[n++] = c;
                o[n++] = e;
            }
            i++;
            continue;
        }
        if (!in_class && c == '[') {
            in_class = 1;
            o[n++] = c;
            if (i + 1 < len && p[i + 1] == '^') o[n++] = p[++i];
            if (i + 1 < len && p[i + 1] == ']') o[n++] = p[++i]; /* a leading ] is literal */
            continue;
        }
        if (in_class && c == '[' && i + 1 < len && p[i + 1] == ':') { /* [:alpha:] */
            const char *end = NULL;
            for (size_t k = i + 2; k + 1 < len; k++)
                if (p[k] == ':' && p[k + 1] == ']') {
                    end = p + k + 2;
                    break;
                }
            if (end) {
                size_t l = (size_t)(end - (p + i));
                memcpy(o + n, p + i, l);
                n += l;
                i += l - 1;
                continue;
            }
        }
        if (in_class && c == ']') in_class = 0;
        o[n++] = c;
    }
    o[n] = 0;
    *out_len = n;
    return o;
}

int fr_pretok_add(fr_pretok *pt, const char *pattern, size_t len, int literal, const char *what) {
    if (pt->n_steps >= FR_PRETOK_MAX_STEPS)
        return fr_error(FR_ERR_FORMAT, "%s: more than %d split steps are not supported", what, FR_PRETOK_MAX_STEPS);
    int errcode = 0;
    PCRE2_SIZE erroff = 0;
    /* PCRE2_LITERAL refuses PCRE2_UCP (it has no classes to apply it to) */
    uint32_t opts = PCRE2_UTF | PCRE2_MATCH_INVALID_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);
    char *rewritten = NULL;
    size_t rlen = len;
    if (!literal) {
        rewritten = rewrite_space_classes(pattern, len, &rlen);
        if (!rewritten) return fr_error(FR_ERR_NOMEM, "out of memory");
    }
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)(rewritten ? rewritten : pattern), rlen, opts, &errcode, &erroff, NULL);
    free(rewritten);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(errcode, msg, sizeof msg);
        return fr_error(FR_ERR_FORMAT, "%s: cannot compile split regex at offset %zu: %s", what, (size_t)erroff,
                        (const char *)msg);
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* best effort: the interpreter is the fallback */
    pt->re[pt->n_steps++] = re;
    return FR_OK;
}

int fr_pretok_init_dsv3(fr_pretok *pt) {
    memset(pt, 0, sizeof *pt);
    pt->prefix_step = -1;
    static const char *pats[3] = {FR_PAT_DSV3_DIGITS, FR_PAT_DSV3_CJK, FR_PAT_DSV3_MAIN};
    for (int i = 0; i < 3; i++) {
        int rc = fr_pretok_add(pt, pats[i], strlen(pats[i]), 0, "DeepSeek-V3 split");
        if (rc != FR_OK) {
            fr_pretok_free(pt);
            return rc;
        }
    }
    return FR_OK;
}

void fr_pretok_free(fr_pretok *pt) {
    for (int i = 0; i < pt->n_steps; i++) pcre2_code_free(pt->re[i]);
    pt->n_steps = 0;
}

int fr_pretok_scratch_init(fr_pretok_scratch *sc, const fr_pretok *pt) {
    memset(sc, 0, sizeof *sc);
    for (int i = 0; i < pt->n_steps; i++) {
        sc->md[i] = pcre2_match_data_create(1, NULL);
        if (!sc->md[i]) {
            fr_pretok_scratch_free(sc);
            return fr_error(FR_ERR_NOMEM, "out of memory for regex match data");
        }
    }
    return FR_OK;
}

void fr_pretok_scratch_free(fr_pretok_scratch *sc) {
    for (int i = 0; i < FR_PRETOK_MAX_STEPS; i++) pcre2_match_data_free(sc->md[i]);
    memset(sc, 0, sizeof *sc);
}

static int pretok_step(const fr_pretok *pt, fr_pretok_scratch *sc, int k, const unsigned char *s, size_t n,
                       int prefixed, fr_piece_fn fn, void *user);

static int pretok_prefix(const fr_pretok *pt, fr_pretok_scratch *sc, int k, const unsigned char *s, size_t n,
                         fr_piece_fn fn, void *user) {
    unsigned char stackbuf[512];
    unsigned char *buf = n + 1 <= sizeof stackbuf ? stackbuf : malloc(n + 1);
    if (!buf) return fr_error(FR_ERR_NOMEM, "out of memory");
    buf[0] = ' ';
    memcpy(buf + 1, s, n);
    int rc = pretok_step(pt, sc, k, buf, n + 1, 1, fn, user);
    if (buf != stackbuf) free(buf);
    return rc;
}

static int pretok_step(const fr_pretok *pt, fr_pretok_scratch *sc, int k, const unsigned char *s, size_t n,
                       int prefixed, fr_piece_fn fn, void *user) {
    if (n == 0) return 0;
    if (pt->prefix_space && k == pt->prefix_step && !prefixed && s[0] != ' ')
        return pretok_prefix(pt, sc, k, s, n, fn, user);
    if (k == pt->n_steps) return fn(user, s, n);
    pcre2_match_data *md = sc->md[k];
    size_t pos = 0, prev = 0;
    while (pos < n) {
        int rc = pcre2_match(pt->re[k], s, n, pos, 0, md, NULL);
        if (rc == PCRE2_ERROR_JIT_STACKLIMIT) rc = pcre2_match(pt->re[k], s, n, pos, PCRE2_NO_JIT, md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(rc, msg, sizeof msg);
            sc->error = rc;
            return fr_error(FR_ERR_FORMAT, "split regex %d failed: %s", k, (const char *)msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t ms = ov[0], me = ov[1];
        if (me <= ms) { /* empty match: splits nothing; step past one character */
            pos = ms + 1;
            while (pos < n && (s[pos] & 0xc0) == 0x80) pos++;
            continue;
        }
        int r;
        if (ms > prev && (r = pretok_step(pt, sc, k + 1, s + prev, ms - prev, prefixed && prev == 0, fn, user)))
            return r;
        if ((r = pretok_step(pt, sc, k + 1, s + ms, me - ms, prefixed && ms == 0, fn, user))) return r;
        prev = pos = me;
    }
    if (prev < n) return pretok_step(pt, sc, k + 1, s + prev, n - prev, prefixed && prev == 0, fn, user);
    return 0;
}

int fr_pretok_run(const fr_pretok *pt, fr_pretok_scratch *sc, const unsigned char *text, size_t n,
                  fr_piece_fn fn, void *user) {
    return pretok_step(pt, sc, 0, text, n, 0, fn, user);
}
