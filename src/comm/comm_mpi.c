/*
 * comm_mpi.c — fr_comm over MPI (OpenMPI from Debian's libopenmpi-dev), built when CMake finds
 * MPI (FR_HAVE_MPI). MPI_COMM_WORLD gets MPI_ERRORS_RETURN, so a failed collective comes back
 * as an error naming it; MPI counts are int, so a part above INT_MAX values is refused rather
 * than cut.
 */
#include "comm/comm.h"
#include "core/internal.h"

#ifdef FR_HAVE_MPI
#include <limits.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    MPI_Comm comm;                            /* MPI_COMM_WORLD, or one split from it */
    int *counts, *displs, *counts2, *displs2; /* [size] each, for the v-collectives */
    int finalize;                             /* this process called MPI_Init (the world only) */
} mpi_state;

#define COMM(c) (((mpi_state *)(c)->impl)->comm)

static int mpi_fail(int err, const char *what) {
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(err, msg, &len);
    return fr_error(FR_ERR_IO, "MPI %s failed: %.*s", what, len, msg);
}

/* counts (size_t) -> int counts and displacements; FR_ERR_UNSUPPORTED past INT_MAX */
static int to_int_counts(const fr_comm *c, const size_t *counts, int *ic, int *displs, const char *what) {
    size_t off = 0;
    for (int r = 0; r < c->size; r++) {
        if (counts[r] > INT_MAX || off > INT_MAX)
            return fr_error(FR_ERR_UNSUPPORTED, "MPI %s: %zu values to one rank, more than an MPI count holds", what,
                            counts[r]);
        ic[r] = (int)counts[r];
        displs[r] = (int)off;
        off += counts[r];
    }
    return FR_OK;
}

static int m_allreduce(fr_comm *c, float *buf, size_t n) {
    for (size_t off = 0; off < n; off += INT_MAX / 2) { /* in pieces an int count holds */
        const size_t k = n - off < (size_t)INT_MAX / 2 ? n - off : (size_t)INT_MAX / 2;
        const int err = MPI_Allreduce(MPI_IN_PLACE, buf + off, (int)k, MPI_FLOAT, MPI_SUM, COMM(c));
        if (err != MPI_SUCCESS) return mpi_fail(err, "all-reduce");
    }
    return FR_OK;
}

static int m_reduce_scatter(fr_comm *c, float *out, const float *in, const size_t *counts) {
    mpi_state *s = c->impl;
    FR_CHECK(to_int_counts(c, counts, s->counts, s->displs, "reduce-scatter"));
    const int err = MPI_Reduce_scatter(in, out, s->counts, MPI_FLOAT, MPI_SUM, s->comm);
    return err == MPI_SUCCESS ? FR_OK : mpi_fail(err, "reduce-scatter");
}

static int m_allgather(fr_comm *c, float *out, const float *in, const size_t *counts) {
    mpi_state *s = c->impl;
    FR_CHECK(to_int_counts(c, counts, s->counts, s->displs, "all-gather"));
    const int err = in ? MPI_Allgatherv(in, s->counts[c->rank], MPI_FLOAT, out, s->counts, s->displs, MPI_FLOAT, s->comm)
                       : MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, out, s->counts, s->displs, MPI_FLOAT, s->comm);
    return err == MPI_SUCCESS ? FR_OK : mpi_fail(err, "all-gather");
}

static int m_alltoallv(fr_comm *c, float *out, const size_t *recv_counts, const float *in, const size_t *send_counts) {
    mpi_state *s = c->impl;
    FR_CHECK(to_int_counts(c, send_counts, s->counts, s->displs, "all-to-all"));
    FR_CHECK(to_int_counts(c, recv_counts, s->counts2, s->displs2, "all-to-all"));
    const int err = MPI_Alltoallv(in, s->counts, s->displs, MPI_FLOAT, out, s->counts2, s->displs2, MPI_FLOAT,
                                  s->comm);
    return err == MPI_SUCCESS ? FR_OK : mpi_fail(err, "all-to-all");
}

struct fr_comm_req {
    MPI_Request request;
    int *counts; /* reduce-scatter's counts: MPI reads them until the operation completes */
};

static int m_iallreduce(fr_comm *c, float *buf, size_t n, fr_comm_req **req) {
    *req = NULL;
    if (n > INT_MAX) return fr_error(FR_ERR_UNSUPPORTED, "MPI all-reduce: %zu values, more than an MPI count holds", n);
    fr_comm_req *q = calloc(1, sizeof *q);
    if (!q) return fr_error(FR_ERR_NOMEM, "out of memory");
    const int err = MPI_Iallreduce(MPI_IN_PLACE, buf, (int)n, MPI_FLOAT, MPI_SUM, COMM(c), &q->request);
    if (err != MPI_SUCCESS) {
        free(q);
        return mpi_fail(err, "non-blocking all-reduce");
    }
    *req = q;
    return FR_OK;
}

static int m_ireduce_scatter(fr_comm *c, float *out, const float *in, const size_t *counts, fr_comm_req **req) {
    *req = NULL;
    mpi_state *s = c->impl;
    FR_CHECK(to_int_counts(c, counts, s->counts, s->displs, "reduce-scatter"));
    fr_comm_req *q = calloc(1, sizeof *q);
    int *ic = malloc((size_t)c->size * sizeof(int));
    if (!q || !ic) {
        free(q), free(ic);
        return fr_error(FR_ERR_NOMEM, "out of memory");
    }
    memcpy(ic, s->counts, (size_t)c->size * sizeof(int));
    q->counts = ic;
    const int err = MPI_Ireduce_scatter(in, out, ic, MPI_FLOAT, MPI_SUM, s->comm, &q->request);
    if (err != MPI_SUCCESS) {
        free(ic), free(q);
        return mpi_fail(err, "non-blocking reduce-scatter");
    }
    *req = q;
    return FR_OK;
}

static int m_test(fr_comm *c, fr_comm_req *req, int *done) {
    (void)c;
    int flag = 0;
    const int err = MPI_Test(&req->request, &flag, MPI_STATUS_IGNORE);
    *done = flag;
    if (flag || err != MPI_SUCCESS) {
        free(req->counts);
        free(req);
        *done = 1;
    }
    return err == MPI_SUCCESS ? FR_OK : mpi_fail(err, "completing a non-blocking collective");
}

static int m_wait(fr_comm *c, fr_comm_req *req) {
    (void)c;
    const int err = MPI_Wait(&req->request, MPI_STATUS_IGNORE);
    free(req->counts);
    free(req);
    return err == MPI_SUCCESS ? FR_OK : mpi_fail(err, "completing a non-blocking collective");
}

static int m_gather_bytes(fr_comm *c, void *out, const void *in, const size_t *counts) {
    mpi_state *s = c->impl;
    FR_CHECK(to_int_counts(c, counts, s->counts, s->displs, "gather"));
    const int err = in || c->rank != 0
                        ? MPI_Gatherv(in, s->counts[c->rank], MPI_BYTE, out, s->counts, s->displs, MPI_BYTE, 0, s->comm)
                        : MPI_Gatherv(MPI_IN_PLACE, 0, MPI_BYTE, out, s->counts, s->displs, MPI_BYTE, 0, s->comm);
    return err == MPI_SUCCESS ? FR_OK : mpi_fail(err, "gather");
}

static int m_barrier(fr_comm *c) {
    const int err = MPI_Barrier(COMM(c));
    return err == MPI_SUCCESS ? FR_OK : mpi_fail(err, "barrier");
}

static void m_abort(fr_comm *c, int code) {
    (void)c; /* the whole job, not just this communicator */
    MPI_Abort(MPI_COMM_WORLD, code);
    exit(code); /* not reached */
}

static void m_free(fr_comm *c) {
    mpi_state *s = c->impl;
    if (s) {
        if (s->comm != MPI_COMM_WORLD) MPI_Comm_free(&s->comm);
        if (s->finalize) MPI_Finalize();
        free(s->counts);
        free(s);
    }
    free(c);
}

static int m_split(fr_comm *c, int color, int key, fr_comm **out);

static const fr_comm_ops MPI_OPS = {"mpi",        m_allreduce,  m_reduce_scatter, m_allgather, m_alltoallv,
                                    m_gather_bytes, m_iallreduce, m_ireduce_scatter, m_test,     m_wait,
                                    m_barrier,    m_split,      m_abort,          m_free};

/* A communicator over comm (taken over: freed with it unless it is the world) */
static int wrap(MPI_Comm comm, fr_comm_stats *shared, int finalize, fr_comm **out) {
    fr_comm *c = calloc(1, sizeof *c);
    mpi_state *s = calloc(1, sizeof *s);
    fr_comm_stats *st = shared ? shared : calloc(1, sizeof *st);
    int size = 1, rank = 0;
    MPI_Comm_size(comm, &size);
    MPI_Comm_rank(comm, &rank);
    int *counts = calloc(4 * (size_t)size, sizeof(int));
    if (!c || !s || !counts || !st) {
        free(c), free(s), free(counts);
        if (!shared) free(st);
        return fr_error(FR_ERR_NOMEM, "out of memory");
    }
    s->comm = comm;
    s->counts = counts, s->displs = counts + size, s->counts2 = counts + 2 * size, s->displs2 = counts + 3 * size;
    s->finalize = finalize;
    c->ops = &MPI_OPS, c->rank = rank, c->size = size, c->impl = s;
    c->stats = st;
    c->owns_stats = !shared;
    *out = c;
    return FR_OK;
}

static int m_split(fr_comm *c, int color, int key, fr_comm **out) {
    MPI_Comm sub;
    const int err = MPI_Comm_split(COMM(c), color, key, &sub);
    if (err != MPI_SUCCESS) return mpi_fail(err, "communicator split");
    MPI_Comm_set_errhandler(sub, MPI_ERRORS_RETURN);
    const int rc = wrap(sub, c->stats, 0, out);
    if (rc != FR_OK) MPI_Comm_free(&sub);
    return rc;
}

int fr_comm_mpi_init(fr_comm **out, int *argc, char ***argv) {
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited) {
        int provided = 0; /* the trainer's threads are OpenMP inside one MPI-calling thread */
        if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
            return fr_error(FR_ERR_IO, "MPI_Init failed");
    }
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    return wrap(MPI_COMM_WORLD, NULL, !inited, out);
}

#else /* built without MPI: fr_comm_init never calls this */
int fr_comm_mpi_init(fr_comm **out, int *argc, char ***argv) {
    (void)out, (void)argc, (void)argv;
    return fr_error(FR_ERR_UNSUPPORTED, "frugal was built without MPI");
}
#endif
