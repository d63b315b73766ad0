/*
 * comm.c — fr_comm_init's choice of world, the counted wrappers every caller uses, and the
 * world of one ("self"): one rank, where a sum over ranks is the rank's own values and every
 * exchange a copy.
 */
#include "comm/comm.h"
#include "core/internal.h"

#include <stdlib.h>
#include <string.h>

int fr_comm_mpi_init(fr_comm **out, int *argc, char ***argv); /* comm_mpi.c */

static size_t sum_counts(const size_t *counts, int n) {
    size_t s = 0;
    for (int i = 0; i < n; i++) s += counts[i];
    return s;
}

/* ---------------------------------------------------------------- the world of one */

static int self_allreduce(fr_comm *c, float *buf, size_t n) {
    (void)c, (void)buf, (void)n;
    return FR_OK;
}

static int self_reduce_scatter(fr_comm *c, float *out, const float *in, const size_t *counts) {
    if (out != in) memmove(out, in, sum_counts(counts, c->size) * sizeof(float));
    return FR_OK;
}

static int self_allgather(fr_comm *c, float *out, const float *in, const size_t *counts) {
    if (in && out != in) memmove(out, in, sum_counts(counts, c->size) * sizeof(float));
    return FR_OK;
}

static int self_alltoallv(fr_comm *c, float *out, const size_t *recv_counts, const float *in, const size_t *send_counts) {
    (void)c;
    if (recv_counts[0] != send_counts[0])
        return fr_error(FR_ERR_ARG, "alltoallv: a world of one sends %zu values to itself but expects %zu",
                        send_counts[0], recv_counts[0]);
    if (out != in) memmove(out, in, send_counts[0] * sizeof(float));
    return FR_OK;
}

static int self_gather_bytes(fr_comm *c, void *out, const void *in, const size_t *counts) {
    (void)c;
    if (in && out != in) memmove(out, in, counts[0]);
    return FR_OK;
}

/* the world of one completes at once: req NULL */
static int self_iallreduce(fr_comm *c, float *buf, size_t n, fr_comm_req **req) {
    *req = NULL;
    return self_allreduce(c, buf, n);
}

static int self_ireduce_scatter(fr_comm *c, float *out, const float *in, const size_t *counts, fr_comm_req **req) {
    *req = NULL;
    return self_reduce_scatter(c, out, in, counts);
}

static int self_test(fr_comm *c, fr_comm_req *req, int *done) {
    (void)c, (void)req;
    *done = 1;
    return FR_OK;
}

static int self_wait(fr_comm *c, fr_comm_req *req) {
    (void)c, (void)req;
    return FR_OK;
}

static int self_barrier(fr_comm *c) {
    (void)c;
    return FR_OK;
}

static int self_split(fr_comm *c, int color, int key, fr_comm **out);

static void self_abort(fr_comm *c, int code) {
    (void)c;
    exit(code);
}

static void self_free(fr_comm *c) { free(c); }

static const fr_comm_ops SELF_OPS = {"self",          self_allreduce,       self_reduce_scatter, self_allgather,
                                     self_alltoallv,  self_gather_bytes,    self_iallreduce,     self_ireduce_scatter,
                                     self_test,       self_wait,            self_barrier,        self_split,
                                     self_abort,      self_free};

static fr_comm *self_new(fr_comm_stats *shared) {
    fr_comm *c = calloc(1, sizeof *c);
    fr_comm_stats *st = shared ? shared : calloc(1, sizeof *st);
    if (!c || !st) {
        free(c);
        if (!shared) free(st);
        return NULL;
    }
    c->ops = &SELF_OPS;
    c->rank = 0;
    c->size = 1;
    c->stats = st;
    c->owns_stats = !shared;
    return c;
}

static int self_split(fr_comm *c, int color, int key, fr_comm **out) {
    (void)color, (void)key;
    *out = self_new(c->stats);
    return *out ? FR_OK : fr_error(FR_ERR_NOMEM, "out of memory");
}

int fr_comm_self(fr_comm **out) {
    *out = self_new(NULL);
    return *out ? FR_OK : fr_error(FR_ERR_NOMEM, "out of memory");
}

int fr_comm_launched(void) {
    static const char *const vars[] = {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", "PMI_RANK"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++)
        if (getenv(vars[i])) return 1;
    return 0;
}

int fr_comm_init(fr_comm **out, int *argc, char ***argv) {
#ifdef FR_HAVE_MPI
    if (fr_comm_launched()) return fr_comm_mpi_init(out, argc, argv);
#endif
    (void)argc, (void)argv;
    return fr_comm_self(out);
}

void fr_comm_free(fr_comm *c) {
    if (!c) return;
    fr_comm_stats *st = c->owns_stats ? c->stats : NULL;
    c->ops->free(c);
    free(st);
}

/* ---------------------------------------------------------------- counted wrappers */

static double tick(void) { return fr_now_s(); }

static int count(fr_comm *c, int kind, double bytes, double t0, int rc) {
    if (c->stats) {
        c->stats->bytes[kind] += bytes;
        c->stats->seconds[kind] += tick() - t0;
        c->stats->calls[kind]++;
    }
    return rc;
}

int fr_comm_allreduce(fr_comm *c, float *buf, size_t n) {
    const double t0 = tick();
    return count(c, FR_COMM_ALLREDUCE, c->size > 1 ? (double)n * sizeof(float) : 0, t0, c->ops->allreduce_sum(c, buf, n));
}

int fr_comm_reduce_scatter(fr_comm *c, float *out, const float *in, const size_t *counts) {
    const double t0 = tick();
    const double bytes = c->size > 1 ? (double)sum_counts(counts, c->size) * sizeof(float) : 0;
    return count(c, FR_COMM_REDUCE_SCATTER, bytes, t0, c->ops->reduce_scatter_sum(c, out, in, counts));
}

int fr_comm_allgather(fr_comm *c, float *out, const float *in, const size_t *counts) {
    const double t0 = tick();
    const double bytes = c->size > 1 ? (double)counts[c->rank] * sizeof(float) : 0;
    return count(c, FR_COMM_ALLGATHER, bytes, t0, c->ops->allgather(c, out, in, counts));
}

int fr_comm_alltoallv(fr_comm *c, float *out, const size_t *recv_counts, const float *in, const size_t *send_counts) {
    const double t0 = tick();
    const double bytes = (double)(sum_counts(send_counts, c->size) - send_counts[c->rank]) * sizeof(float);
    return count(c, FR_COMM_ALLTOALL, bytes, t0, c->ops->alltoallv(c, out, recv_counts, in, send_counts));
}

int fr_comm_gather_bytes(fr_comm *c, void *out, const void *in, const size_t *counts) {
    const double t0 = tick();
    return count(c, FR_COMM_OTHER, c->rank != 0 ? (double)counts[c->rank] : 0, t0, c->ops->gather_bytes(c, out, in, counts));
}

int fr_comm_iallreduce(fr_comm *c, float *buf, size_t n, fr_comm_req **req) {
    const double t0 = tick();
    return count(c, FR_COMM_ALLREDUCE, c->size > 1 ? (double)n * sizeof(float) : 0, t0,
                 c->ops->iallreduce_sum(c, buf, n, req));
}

int fr_comm_ireduce_scatter(fr_comm *c, float *out, const float *in, const size_t *counts, fr_comm_req **req) {
    const double t0 = tick();
    const double bytes = c->size > 1 ? (double)sum_counts(counts, c->size) * sizeof(float) : 0;
    return count(c, FR_COMM_REDUCE_SCATTER, bytes, t0, c->ops->ireduce_scatter_sum(c, out, in, counts, req));
}

int fr_comm_test(fr_comm *c, fr_comm_req *req, int *done) {
    if (!req) {
        *done = 1;
        return FR_OK;
    }
    return c->ops->test(c, req, done);
}

/* the wait's seconds go to kind OTHER's clock under "waiting" — counted as communication time */
int fr_comm_wait(fr_comm *c, fr_comm_req *req) {
    if (!req) return FR_OK;
    const double t0 = tick();
    return count(c, FR_COMM_OTHER, 0, t0, c->ops->wait(c, req));
}

int fr_comm_barrier(fr_comm *c) {
    const double t0 = tick();
    return count(c, FR_COMM_OTHER, 0, t0, c->ops->barrier(c));
}

int fr_comm_split(fr_comm *c, int color, int key, fr_comm **out) { return c->ops->split(c, color, key, out); }

void fr_comm_abort(fr_comm *c, int code) { c->ops->abort(c, code); }

int fr_comm_agree(fr_comm *c, int rc) {
    if (c->size == 1) return rc;
    float *v = calloc((size_t)c->size, sizeof(float));
    if (!v) return fr_error(FR_ERR_NOMEM, "out of memory");
    v[c->rank] = (float)-rc; /* FR_ERR_* are small negative numbers */
    const double t0 = tick();
    int err = count(c, FR_COMM_OTHER, 0, t0, c->ops->allreduce_sum(c, v, (size_t)c->size));
    int agreed = err;
    for (int r = 0; r < c->size && agreed == FR_OK; r++)
        if (v[r] != 0) {
            agreed = -(int)v[r];
            if (rc == FR_OK) fr_error(agreed, "rank %d failed (its own message is in its output)", r);
        }
    free(v);
    if (rc != FR_OK) return rc; /* this rank's own error and message */
    return agreed;
}
