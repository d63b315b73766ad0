/*
 * test_comm.c — the communication interface (src/comm/) on the world it is started in: alone
 * (a world of one: without a launcher there is no MPI job to join), and under `mpirun -np 2` / `-np 4`
 * (CTest entries test_comm_np2 / test_comm_np4). Every rank fills its buffers from its rank and
 * checks each collective against the values computed here from the same formula, exactly
 * (the sums are of small integers, exact in FP32 whatever the reduction order):
 *   all-reduce (also of a length that is not a multiple of anything), reduce-scatter and
 *   all-gather with uneven parts (one of them empty), all-to-all-v with counts that differ by
 *   sender and receiver (zeros included), a barrier; through the counted wrappers, an
 *   in-place all-gather (and its byte count), a gather of bytes to rank 0, a split by parity
 *   (sums over the sub-world, shared statistics) and the agreement on a failed rank's error
 *   code. The self world is also tested when
 *   MPI runs the rest. Each rank exits non-zero on a failed check, so mpirun does too.
 */
#include "comm/comm.h"
#include "testutil.h"

#include <stdlib.h>
#include <string.h>

/* the value rank r puts at index i */
static float val(int r, size_t i) { return (float)((r + 1) * 1000 + (int)(i % 997)); }

static void check_world(fr_comm *c) {
    const int R = c->size, me = c->rank;
    printf("rank %d of %d (%s)\n", me, R, c->ops->name);
    /* all-reduce */
    const size_t n = 100003;
    float *buf = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) buf[i] = val(me, i);
    CHECK(c->ops->allreduce_sum(c, buf, n) == FR_OK, "[rank %d] all-reduce ran: %s", me, fr_last_error());
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        double want = 0;
        for (int r = 0; r < R; r++) want += val(r, i);
        bad += buf[i] != (float)want;
    }
    CHECK(bad == 0, "[rank %d] all-reduce: %zu of %zu values wrong", me, bad, n);
    free(buf);

    /* reduce-scatter and all-gather: part r has 3 r + 1 values, part 1 none */
    size_t *counts = malloc((size_t)R * sizeof(size_t)), total = 0;
    for (int r = 0; r < R; r++) counts[r] = r == 1 ? 0 : (size_t)(3 * r + 1), total += counts[r];
    size_t my_off = 0;
    for (int r = 0; r < me; r++) my_off += counts[r];
    float *in = malloc((total + 1) * sizeof(float)), *out = malloc((total + 1) * sizeof(float));
    for (size_t i = 0; i < total; i++) in[i] = val(me, i);
    CHECK(c->ops->reduce_scatter_sum(c, out, in, counts) == FR_OK, "[rank %d] reduce-scatter ran: %s", me,
          fr_last_error());
    bad = 0;
    for (size_t i = 0; i < counts[me]; i++) {
        double want = 0;
        for (int r = 0; r < R; r++) want += val(r, my_off + i);
        bad += out[i] != (float)want;
    }
    CHECK(bad == 0, "[rank %d] reduce-scatter: %zu of %zu values wrong", me, bad, counts[me]);
    float *mine = malloc((counts[me] + 1) * sizeof(float));
    for (size_t i = 0; i < counts[me]; i++) mine[i] = val(me, i) + 0.5f;
    CHECK(c->ops->allgather(c, out, mine, counts) == FR_OK, "[rank %d] all-gather ran: %s", me, fr_last_error());
    bad = 0;
    size_t off = 0;
    for (int r = 0; r < R; r++) {
        for (size_t i = 0; i < counts[r]; i++) bad += out[off + i] != val(r, i) + 0.5f;
        off += counts[r];
    }
    CHECK(bad == 0, "[rank %d] all-gather: %zu of %zu values wrong", me, bad, total);
    free(in), free(out), free(mine), free(counts);

    /* all-to-all-v: s sends (s + d) % 3 values to d (so some pairs exchange nothing), value
     * 100 s + 10 d + k */
    size_t *sc = malloc((size_t)R * sizeof(size_t)), *rc = malloc((size_t)R * sizeof(size_t)), ns = 0, nr = 0;
    for (int d = 0; d < R; d++) sc[d] = (size_t)((me + d) % 3), ns += sc[d];
    for (int s = 0; s < R; s++) rc[s] = (size_t)((s + me) % 3), nr += rc[s];
    float *sb = malloc((ns + 1) * sizeof(float)), *rb = malloc((nr + 1) * sizeof(float));
    off = 0;
    for (int d = 0; d < R; d++)
        for (size_t k = 0; k < sc[d]; k++) sb[off++] = (float)(100 * me + 10 * d + (int)k);
    CHECK(c->ops->alltoallv(c, rb, rc, sb, sc) == FR_OK, "[rank %d] all-to-all ran: %s", me, fr_last_error());
    bad = 0;
    off = 0;
    for (int s = 0; s < R; s++)
        for (size_t k = 0; k < rc[s]; k++) bad += rb[off++] != (float)(100 * s + 10 * me + (int)k);
    CHECK(bad == 0, "[rank %d] all-to-all: %zu of %zu values wrong", me, bad, nr);
    free(sc), free(rc), free(sb), free(rb);

    CHECK(c->ops->barrier(c) == FR_OK, "[rank %d] barrier", me);

    /* the counted wrappers: in-place all-gather (rank r's r + 2 values already in place) */
    size_t *parts = malloc((size_t)R * sizeof(size_t)), all = 0, at = 0;
    for (int r = 0; r < R; r++) parts[r] = (size_t)r + 2, all += parts[r];
    for (int r = 0; r < me; r++) at += parts[r];
    float *g = calloc(all, sizeof(float));
    for (size_t i = 0; i < parts[me]; i++) g[at + i] = val(me, i);
    const double before = c->stats->bytes[FR_COMM_ALLGATHER];
    CHECK(fr_comm_allgather(c, g, NULL, parts) == FR_OK, "[rank %d] in-place all-gather: %s", me, fr_last_error());
    bad = 0;
    off = 0;
    for (int r = 0; r < R; r++) {
        for (size_t i = 0; i < parts[r]; i++) bad += g[off + i] != val(r, i);
        off += parts[r];
    }
    CHECK(bad == 0, "[rank %d] in-place all-gather: %zu of %zu values wrong", me, bad, all);
    CHECK(c->stats->bytes[FR_COMM_ALLGATHER] - before == (R > 1 ? parts[me] * sizeof(float) : 0),
          "[rank %d] all-gather counted %.0f bytes", me, c->stats->bytes[FR_COMM_ALLGATHER] - before);
    free(g);

    /* gather to rank 0: rank r sends r + 1 bytes of value r */
    unsigned char *mine_b = malloc((size_t)me + 1), *got = me == 0 ? malloc((size_t)R * (R + 1) / 2) : NULL;
    for (int r = 0; r < R; r++) parts[r] = (size_t)r + 1;
    memset(mine_b, me, (size_t)me + 1);
    CHECK(fr_comm_gather_bytes(c, got, mine_b, parts) == FR_OK, "[rank %d] gather: %s", me, fr_last_error());
    if (me == 0) {
        bad = 0;
        off = 0;
        for (int r = 0; r < R; r++)
            for (int i = 0; i <= r; i++) bad += got[off++] != r;
        CHECK(bad == 0, "gather: %zu bytes wrong", bad);
    }
    free(mine_b), free(got), free(parts);

    /* split by parity: a sum over the sub-world adds the ranks of one parity only */
    fr_comm *sub = NULL;
    CHECK(fr_comm_split(c, me % 2, me, &sub) == FR_OK, "[rank %d] split: %s", me, fr_last_error());
    if (sub) {
        float v = (float)me, want = 0;
        for (int r = me % 2; r < R; r += 2) want += (float)r;
        CHECK(sub->size == (R - me % 2 + 1) / 2 && sub->rank == me / 2, "[rank %d] sub-world rank %d of %d", me,
              sub->rank, sub->size);
        CHECK(fr_comm_allreduce(sub, &v, 1) == FR_OK && v == want, "[rank %d] sub-world sum %g, want %g", me, v, want);
        CHECK(sub->stats == c->stats, "[rank %d] a split shares its world's statistics", me);
        fr_comm_free(sub);
    }

    /* agreement: all fine, then the last rank failing */
    CHECK(fr_comm_agree(c, FR_OK) == FR_OK, "[rank %d] agree on success", me);
    const int rc2 = fr_comm_agree(c, me == R - 1 ? FR_ERR_IO : FR_OK);
    CHECK(rc2 == FR_ERR_IO, "[rank %d] agree: every rank gets the failed rank's code (%d)", me, rc2);
    if (me != R - 1) {
        char want_msg[64];
        snprintf(want_msg, sizeof want_msg, "rank %d failed", R - 1);
        CHECK(strstr(fr_last_error(), want_msg) != NULL, "[rank %d] agree names the failed rank: %s", me, fr_last_error());
    }
}

int main(int argc, char **argv) {
    fr_comm *c = NULL;
    CHECK(fr_comm_init(&c, &argc, &argv) == FR_OK, "comm init: %s", fr_last_error());
    if (!c) return fr_test_finish("test_comm");
    check_world(c);
    const char *want = getenv("FRUGAL_TEST_WORLD"); /* set by the mpirun entries */
    if (want) CHECK(c->size == atoi(want), "[rank %d] world of %d, launched with %s", c->rank, c->size, want);
    if (c->size > 1) { /* the world of one as well, in the same process */
        fr_comm *self = NULL;
        CHECK(fr_comm_self(&self) == FR_OK && self->size == 1, "self world");
        if (self) check_world(self);
        fr_comm_free(self);
    }
    char name[64];
    snprintf(name, sizeof name, "test_comm rank %d/%d", c->rank, c->size);
    fr_comm_free(c);
    return fr_test_finish(name);
}
