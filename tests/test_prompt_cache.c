/*
 * test_prompt_cache.c — a conversation's next turn re-uses the latent cache of its earlier
 * turns (fr_generate_options.reuse_prefix, fr_seq_common_prefix): the cache remembers the
 * tokens behind its rows, a new prompt keeps the rows it shares from the start, and only the
 * rest is computed. On the v3_mtp fixture (MoE, MLA):
 *   - the next token's logits after a cached prefix equal those of a fresh sequence that
 *     computes the whole prompt (1e-5 relative: the cached rows came from other batch shapes,
 *     decode steps of one row against a prefill of many);
 *   - greedy generation of a second turn with reuse gives the fresh sequence's tokens, and
 *     the stats count the reused tokens; a prompt that diverges early, or equals the cache
 *     entirely, still works (the last prompt token is always computed for its logits);
 *   - without reuse_prefix the sequence is reset as before;
 *   - with MTP speculation a turn reuses the cache too (one row fewer) and still gives the
 *     plain greedy text.
 */
#include "core/internal.h"
#include "infer/engine.h" /* the MTP cache rows, compared below */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static fr_engine *load(int mtp) {
    fr_engine *e = NULL;
    fr_engine_options o;
    fr_engine_options_default(&o);
    o.load_mtp = mtp;
    CHECK(fr_engine_load(&e, FR_FIXTURES_DIR "/v3_mtp", &o) == FR_OK, "load: %s", fr_last_error());
    return e;
}

/* worst relative difference between the MTP cache rows two sequences both hold (F32 caches) */
static double mtp_rows_err(const fr_seq *a, const fr_seq *b, int *n_rows) {
    const fr_engine *e = a->e;
    const int n = a->mtp_len < b->mtp_len ? a->mtp_len : b->mtp_len;
    double w = 0;
    for (int j = 0; j < n; j++) {
        const double r = fr_rel_err((const float *)(a->kv[e->L] + (size_t)j * e->row_bytes),
                                    (const float *)(b->kv[e->L] + (size_t)j * e->row_bytes), (size_t)e->row);
        if (!(r <= w)) w = r;
    }
    *n_rows = n;
    return w;
}

static int g_spec;            /* generate with MTP speculation */
static long g_drafted, g_accepted; /* its draft counts in the last greedy() */

static int greedy(fr_engine *e, fr_seq *s, const int *prompt, int n, int reuse, int *out, long *reused) {
    fr_generate_options o;
    fr_generate_options_default(&o);
    o.sample.temperature = 0;
    o.max_tokens = 8;
    o.ignore_eos = 1;
    o.reuse_prefix = reuse;
    o.speculative = g_spec;
    int *toks = NULL, len = 0;
    fr_generate_stats st;
    const int rc = fr_generate(e, NULL, &s, 1, &prompt, &n, &o, &toks, &len, &st);
    if (rc == FR_OK) memcpy(out, toks, (size_t)len * sizeof(int));
    if (reused) *reused = st.reused_tokens;
    g_drafted = st.drafted, g_accepted = st.accepted;
    free(toks);
    return rc == FR_OK ? len : -1;
}

/* The same conversation with MTP speculation: its cache pairs row j with token j + 1, so a
 * second turn keeps one row fewer (the last shared one is recomputed with its new successor).
 * Its MTP cache rows equal a fresh speculative run's (1e-5: verification corrects any bad draft,
 * so the text alone could not show a stale row), and its greedy text equals a fresh sequence's
 * plain greedy text. */
static void test_speculative(void) {
    fr_engine *e = load(1);
    if (!e) return;
    const int V = fr_engine_config(e)->vocab_size;
    fr_rng rng;
    fr_rng_seed(&rng, 11);
    enum { A = 20, D = 7 };
    int conv[A + 8 + D], reply[8], t_reuse[8], t_fresh[8];
    for (int i = 0; i < A; i++) conv[i] = (int)(fr_rng_next(&rng) % (uint64_t)V);
    fr_seq *s = NULL, *fresh = NULL;
    CHECK(fr_seq_create(&s, e) == FR_OK && fr_seq_create(&fresh, e) == FR_OK, "sequences");
    g_spec = 1;
    CHECK(greedy(e, s, conv, A, 1, reply, NULL) == 8, "speculative turn 1: %s", fr_last_error());
    memcpy(conv + A, reply, sizeof reply);
    for (int i = 0; i < D; i++) conv[A + 8 + i] = (int)(fr_rng_next(&rng) % (uint64_t)V);
    const int B = A + 8 + D, common = fr_seq_common_prefix(s, conv, B);
    long reused = -1;
    const int g1 = greedy(e, s, conv, B, 1, t_reuse, &reused);
    const long d1 = g_drafted, a1 = g_accepted;
    /* the same turn speculated from scratch: its drafts come from an MTP cache computed whole,
     * so equal draft counts mean the reused MTP rows are the right ones (the text alone could
     * not tell: verification corrects any draft) */
    const int g3 = greedy(e, fresh, conv, B, 0, t_fresh, NULL);
    CHECK(g3 == 8 && g_drafted == d1 && g_accepted == a1, "speculative turn 2: drafts %ld / %ld accepted with the cache, "
          "%ld / %ld without", a1, d1, g_accepted, g_drafted);
    int rows = 0;
    double werr = mtp_rows_err(s, fresh, &rows);
    CHECK(rows >= B && werr <= 1e-5, "speculative turn 2: the MTP cache's %d rows differ from a fresh run's by %.3g", rows,
          werr);
    const long reused2 = reused;
    g_spec = 0;
    const int g2 = greedy(e, fresh, conv, B, 0, t_fresh, NULL);
    CHECK(g1 == 8 && g2 == 8, "speculative turn 2: %d / %d tokens: %s", g1, g2, fr_last_error());
    CHECK(reused >= common - 2 && reused <= common - 1 && reused > 0, "speculative turn 2 reused %ld of a %d-token common "
          "prefix", reused, common);
    CHECK(!memcmp(t_reuse, t_fresh, sizeof t_reuse), "speculative turn 2 with the cache = plain greedy without it");
    /* a prompt that leaves the cache at token 3: the MTP row pairing position 2 with the old
     * token 3 must not be kept */
    int other[16];
    memcpy(other, conv, 3 * sizeof(int));
    for (int i = 3; i < 16; i++) other[i] = (int)(fr_rng_next(&rng) % (uint64_t)V);
    g_spec = 1;
    CHECK(greedy(e, s, other, 16, 1, t_reuse, &reused) == 8 && reused == 2, "diverging prompt, speculative: reused %ld",
          reused);
    const long d2 = g_drafted, a2 = g_accepted;
    CHECK(greedy(e, fresh, other, 16, 0, t_fresh, NULL) == 8 && g_drafted == d2 && g_accepted == a2 &&
              !memcmp(t_reuse, t_fresh, sizeof t_reuse),
          "diverging prompt, speculative: drafts %ld / %ld with the cache, %ld / %ld without", a2, d2, g_accepted, g_drafted);
    const double werr2 = mtp_rows_err(s, fresh, &rows);
    CHECK(rows >= 16 && werr2 <= 1e-5, "diverging prompt: the MTP cache's %d rows differ from a fresh run's by %.3g", rows,
          werr2);
    g_spec = 0;
    printf("speculative: turn 2 reused %ld of %d shared tokens; its MTP cache rows = a fresh run's (%.1e), its greedy "
           "text = a fresh sequence's; a prompt leaving the cache at token 3 keeps 2 rows (%.1e)\n", reused2, common, werr,
           werr2);
    fr_seq_free(s), fr_seq_free(fresh);
    fr_engine_free(e);
}

int main(void) {
    test_speculative();
    fr_engine *e = load(0);
    if (!e) return fr_test_finish("test_prompt_cache");
    const int V = fr_engine_config(e)->vocab_size;
    fr_rng rng;
    fr_rng_seed(&rng, 5);
    enum { A = 24, D = 9 }; /* 24 + 8 + 9 + 8 generated: inside the fixture's 64 positions */
    int conv[A + 8 + D];
    for (int i = 0; i < A; i++) conv[i] = (int)(fr_rng_next(&rng) % (uint64_t)V);

    /* turn 1, then turn 2 = turn 1 + its reply + a new message */
    fr_seq *s = NULL, *fresh = NULL;
    CHECK(fr_seq_create(&s, e) == FR_OK && fr_seq_create(&fresh, e) == FR_OK, "sequences");
    int reply[8];
    CHECK(greedy(e, s, conv, A, 1, reply, NULL) == 8, "turn 1: %s", fr_last_error());
    memcpy(conv + A, reply, sizeof reply);
    for (int i = 0; i < D; i++) conv[A + 8 + i] = (int)(fr_rng_next(&rng) % (uint64_t)V);
    const int B = A + 8 + D;
    /* the cache holds turn 1's prompt and all but the last reply token (that one was sampled,
     * never fed back) */
    CHECK(fr_seq_common_prefix(s, conv, B) == A + 7, "common prefix %d, want %d", fr_seq_common_prefix(s, conv, B), A + 7);

    /* the next token's logits: cached prefix + the rest, against a fresh sequence */
    float *l1 = malloc((size_t)V * sizeof(float)), *l2 = malloc((size_t)V * sizeof(float));
    fr_seq *c = NULL;
    CHECK(fr_seq_create(&c, e) == FR_OK, "sequence");
    const int *p0 = conv;
    int n0 = A;
    CHECK(fr_engine_forward(e, &c, 1, &p0, &n0, NULL, 0) == FR_OK, "prefill A");
    for (int i = A; i < A + 8; i++) { /* the reply, one decode step at a time */
        const int *pi = conv + i;
        int one = 1;
        CHECK(fr_engine_forward(e, &c, 1, &pi, &one, NULL, 0) == FR_OK, "decode");
    }
    const int *pd = conv + A + 8;
    int nd = D;
    CHECK(fr_engine_forward(e, &c, 1, &pd, &nd, l1, 0) == FR_OK, "the new message");
    const int *pb = conv;
    int nb = B;
    CHECK(fr_engine_forward(e, &fresh, 1, &pb, &nb, l2, 0) == FR_OK, "fresh prefill");
    const double err = fr_rel_err(l1, l2, (size_t)V);
    printf("next-token logits, cached prefix vs fresh prefill: relative difference %.2e (tol 1e-5)\n", err);
    CHECK(err <= 1e-5, "logits after a cached prefix differ by %.3g", err);

    /* greedy turn 2 with reuse against a fresh sequence */
    int t_reuse[8], t_fresh[8];
    long reused = -1;
    const int g1 = greedy(e, s, conv, B, 1, t_reuse, &reused), g2 = greedy(e, fresh, conv, B, 0, t_fresh, NULL);
    CHECK(g1 == 8 && g2 == 8, "turn 2: %d %d tokens: %s", g1, g2, fr_last_error());
    CHECK(reused == A + 7, "turn 2 reused %ld tokens, want %d", reused, A + 7);
    CHECK(!memcmp(t_reuse, t_fresh, sizeof t_reuse), "turn 2 with the cache = without it (greedy)");
    /* a prompt that diverges at token 3, and one the cache holds entirely */
    int other[20];
    memcpy(other, conv, 3 * sizeof(int));
    for (int i = 3; i < 20; i++) other[i] = (int)(fr_rng_next(&rng) % (uint64_t)V);
    CHECK(greedy(e, s, other, 20, 1, t_reuse, &reused) == 8 && reused == 3, "diverging prompt: reused %ld", reused);
    CHECK(greedy(e, fresh, other, 20, 0, t_fresh, NULL) == 8 && !memcmp(t_reuse, t_fresh, sizeof t_reuse),
          "diverging prompt: same tokens as a fresh sequence");
    CHECK(greedy(e, s, other, 15, 1, t_reuse, &reused) == 8 && reused == 14, "a prompt the cache holds: reused %ld",
          reused);
    CHECK(greedy(e, fresh, other, 15, 0, t_fresh, NULL) == 8 && !memcmp(t_reuse, t_fresh, sizeof t_reuse),
          "a prompt the cache holds: same tokens");
    /* without reuse the sequence starts over */
    CHECK(greedy(e, s, other, 15, 0, t_reuse, &reused) == 8 && reused == 0, "no reuse: %ld reused", reused);

    free(l1), free(l2);
    fr_seq_free(c), fr_seq_free(s), fr_seq_free(fresh);
    fr_engine_free(e);
    return fr_test_finish("test_prompt_cache");
}
