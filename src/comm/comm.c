/*
 * comm.c — fr_comm_init's choice of world, and the world of one ("self"): one rank, where a
 * sum over ranks is the rank's own values and every exchange a copy.
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

static int self_allreduce(fr_comm *c, float *buf, size_t n) {
    (void)c, (void)buf, (void)n;
    return FR_OK;
}

static int self_reduce_scatter(fr_comm *c, float *out, const float *in, const size_t *counts) {
    if (out != in) memmove(out, in, sum_counts(counts, c->size) * sizeof(float));
    return FR_OK;
}

static int self_allgather(fr_comm *c, float *out, const float *in, const size_t *counts) {
    if (out != in) memmove(out, in, sum_counts(counts, c->size) * sizeof(float));
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

static int self_barrier(fr_comm *c) {
    (void)c;
    return FR_OK;
}

static void self_abort(fr_comm *c, int code) {
    (void)c;
    exit(code);
}

static void self_free(fr_comm *c) { free(c); }

static const fr_comm_ops SELF_OPS = {"self",         self_allreduce, self_reduce_scatter, self_allgather,
                                     self_alltoallv, self_barrier,   self_abort,          self_free};

int fr_comm_self(fr_comm **out) {
    fr_comm *c = calloc(1, sizeof *c);
    if (!c) return fr_error(FR_ERR_NOMEM, "out of memory");
    c->ops = &SELF_OPS;
    c->rank = 0;
    c->size = 1;
    *out = c;
    return FR_OK;
}

int fr_comm_init(fr_comm **out, int *argc, char ***argv) {
#ifdef FR_HAVE_MPI
    return fr_comm_mpi_init(out, argc, argv);
#else
    (void)argc, (void)argv;
    return fr_comm_self(out);
#endif
}

void fr_comm_free(fr_comm *c) {
    if (c) c->ops->free(c);
}
