/*
 * comm.h — the one communication interface of multi-process training (issue 17): a world of
 * ranks and the collectives a trainer needs, behind a table of operations so that MPI
 * (comm_mpi.c) today and NCCL for the CUDA backend later implement the same contract.
 *
 * Every collective is called by every rank of the world, in the same order, with matching
 * counts. Buffers are host memory of FP32 values; counts are in values. Errors come back as
 * FR_ERR_* with a message (the MPI errors handler returns instead of aborting), except that a
 * lost rank may end the whole job, as MPI does: fr_comm_abort ends it on purpose.
 */
#ifndef FR_COMM_H
#define FR_COMM_H

#include <stddef.h>

typedef struct fr_comm fr_comm;

typedef struct {
    const char *name; /* "mpi", "self" */
    /* buf[0:n] = the sum over ranks of every rank's buf[0:n] */
    int (*allreduce_sum)(fr_comm *c, float *buf, size_t n);
    /* in [sum of counts] on every rank; out[0:counts[rank]] = the sum over ranks of in's
     * part number rank (the parts are counts[0], counts[1], ... long, in rank order); out
     * must not overlap in */
    int (*reduce_scatter_sum)(fr_comm *c, float *out, const float *in, const size_t *counts);
    /* out [sum of counts] = every rank's in[0:counts[r]], in rank order (out must not overlap in) */
    int (*allgather)(fr_comm *c, float *out, const float *in, const size_t *counts);
    /* every rank sends part d of in (send_counts[d] values, parts in rank order) to rank d and
     * receives recv_counts[s] values from each rank s into out, in rank order (no overlap) */
    int (*alltoallv)(fr_comm *c, float *out, const size_t *recv_counts, const float *in, const size_t *send_counts);
    int (*barrier)(fr_comm *c);
    /* ends every rank of the job with exit status code (never returns) */
    void (*abort)(fr_comm *c, int code);
    void (*free)(fr_comm *c);
} fr_comm_ops;

struct fr_comm {
    const fr_comm_ops *ops;
    int rank, size;
    void *impl;
};

/* The world this process belongs to: MPI's when frugal was built with it (MPI_Init; a process
 * started without mpirun is a world of one), else a world of one ("self"). */
int fr_comm_init(fr_comm **out, int *argc, char ***argv);
/* A world of one, whatever the build. */
int fr_comm_self(fr_comm **out);
void fr_comm_free(fr_comm *c);

#endif
