/*
 * comm.h — the one communication interface of multi-process training (issue 17): a world of
 * ranks and the collectives a trainer needs, behind a table of operations so that MPI
 * (comm_mpi.c) today and NCCL for the CUDA backend later implement the same contract.
 *
 * Every collective is called by every rank of the communicator, in the same order, with
 * matching counts. Buffers are host memory of FP32 values; counts are in values (gather:
 * bytes). Errors come back as FR_ERR_* with a message (the MPI errors handler returns instead
 * of aborting), except that a lost rank may end the whole job, as MPI does: fr_comm_abort ends
 * it on purpose.
 *
 * Callers use the fr_comm_* wrappers below, not the table: they count the bytes each rank
 * hands over and the seconds it waits, by kind, into the statistics its world shares with
 * every communicator split from it (the trainer's communication figures).
 */
#ifndef FR_COMM_H
#define FR_COMM_H

#include <stddef.h>

typedef struct fr_comm fr_comm;
/* A started non-blocking collective: complete it with fr_comm_wait (buffers stay untouched
 * until then) */
typedef struct fr_comm_req fr_comm_req;

typedef struct {
    const char *name; /* "mpi", "self" */
    /* buf[0:n] = the sum over ranks of every rank's buf[0:n] */
    int (*allreduce_sum)(fr_comm *c, float *buf, size_t n);
    /* in [sum of counts] on every rank; out[0:counts[rank]] = the sum over ranks of in's
     * part number rank (the parts are counts[0], counts[1], ... long, in rank order); out
     * must not overlap in */
    int (*reduce_scatter_sum)(fr_comm *c, float *out, const float *in, const size_t *counts);
    /* out [sum of counts] = every rank's in[0:counts[r]], in rank order (out must not overlap
     * in); in == NULL: in place, this rank's part already sits at its place in out */
    int (*allgather)(fr_comm *c, float *out, const float *in, const size_t *counts);
    /* every rank sends part d of in (send_counts[d] values, parts in rank order) to rank d and
     * receives recv_counts[s] values from each rank s into out, in rank order (no overlap) */
    int (*alltoallv)(fr_comm *c, float *out, const size_t *recv_counts, const float *in, const size_t *send_counts);
    /* rank 0's out [sum of counts] = every rank's in[0:counts[r]] bytes, in rank order (out is
     * only written on rank 0; other ranks may pass NULL); in == NULL on rank 0: its part
     * already sits at its place in out */
    int (*gather_bytes)(fr_comm *c, void *out, const void *in, const size_t *counts);
    /* non-blocking all-reduce / reduce-scatter (the same contracts as above): *req to wait
     * on, or NULL when the operation already completed */
    int (*iallreduce_sum)(fr_comm *c, float *buf, size_t n, fr_comm_req **req);
    int (*ireduce_scatter_sum)(fr_comm *c, float *out, const float *in, const size_t *counts, fr_comm_req **req);
    /* test: *done = 1 (and req freed) when it completed; lets MPI progress it meanwhile */
    int (*test)(fr_comm *c, fr_comm_req *req, int *done);
    int (*wait)(fr_comm *c, fr_comm_req *req); /* completes and frees req */
    int (*barrier)(fr_comm *c);
    /* the ranks that pass the same color form one new communicator, ranked by key (then by
     * rank here); it shares this world's statistics */
    int (*split)(fr_comm *c, int color, int key, fr_comm **out);
    /* ends every rank of the job with exit status code (never returns) */
    void (*abort)(fr_comm *c, int code);
    void (*free)(fr_comm *c);
} fr_comm_ops;

/* What the collectives cost this rank, by kind: payload bytes it handed over (all-reduce: the
 * buffer; reduce-scatter: the whole input; all-gather: its own part; all-to-all: what it sent
 * to other ranks; gather: its part) and the seconds spent inside the calls. */
enum { FR_COMM_ALLREDUCE, FR_COMM_REDUCE_SCATTER, FR_COMM_ALLGATHER, FR_COMM_ALLTOALL, FR_COMM_OTHER, FR_COMM_KINDS };
typedef struct {
    double bytes[FR_COMM_KINDS], seconds[FR_COMM_KINDS];
    long calls[FR_COMM_KINDS];
} fr_comm_stats;

struct fr_comm {
    const fr_comm_ops *ops;
    int rank, size;
    void *impl;
    fr_comm_stats *stats;   /* shared with the communicators split from this one */
    int owns_stats;
};

/* The world this process belongs to: MPI's when frugal was built with it and the process was
 * started by mpirun (MPI_Init), else a world of one ("self"). */
int fr_comm_init(fr_comm **out, int *argc, char ***argv);
/* A world of one, whatever the build. */
int fr_comm_self(fr_comm **out);
void fr_comm_free(fr_comm *c);
/* Nonzero when a launcher (mpirun / srun / PMIx) started this process as one of several. */
int fr_comm_launched(void);

/* The collectives, counted (see fr_comm_ops for each contract) */
int fr_comm_allreduce(fr_comm *c, float *buf, size_t n);
int fr_comm_reduce_scatter(fr_comm *c, float *out, const float *in, const size_t *counts);
int fr_comm_allgather(fr_comm *c, float *out, const float *in, const size_t *counts);
int fr_comm_alltoallv(fr_comm *c, float *out, const size_t *recv_counts, const float *in, const size_t *send_counts);
int fr_comm_gather_bytes(fr_comm *c, void *out, const void *in, const size_t *counts);
/* Non-blocking: the bytes are counted when started, the seconds while waiting (the time the
 * caller could not hide) */
int fr_comm_iallreduce(fr_comm *c, float *buf, size_t n, fr_comm_req **req);
int fr_comm_ireduce_scatter(fr_comm *c, float *out, const float *in, const size_t *counts, fr_comm_req **req);
int fr_comm_test(fr_comm *c, fr_comm_req *req, int *done);
int fr_comm_wait(fr_comm *c, fr_comm_req *req);
int fr_comm_barrier(fr_comm *c);
int fr_comm_split(fr_comm *c, int color, int key, fr_comm **out);
void fr_comm_abort(fr_comm *c, int code);
/* Every rank's rc agreed: FR_OK when all ranks pass FR_OK, else the first failing rank's code
 * on every rank (ranks that were fine get an error naming the failed rank). One all-reduce. */
int fr_comm_agree(fr_comm *c, int rc);

#endif
