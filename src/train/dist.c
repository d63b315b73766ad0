/*
 * dist.c — the distributed layout of a training job and the collectives of its step
 * (see dist.h for the layout).
 */
#include "train/dist.h"
#include "core/internal.h"
#include "model/model_internal.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* The part of [lo, hi) member g of a group of G holds */
#define FR_DIST_BUCKET ((size_t)1 << 22)

/* A started reduction: ZeRO-1's lands in out (n floats), copied to the gradients at `at` */
struct fr_dist_pending {
    fr_comm *group;
    fr_comm_req *req;
    float *out;
    size_t at, n;
    size_t floats;   /* the bucket's size, in flight until req completes */
};

/* At most this many buckets in flight: OpenMPI keeps a temporary per started collective, so
 * an unbounded overlap would hold a second copy of the gradients */
#define FR_DIST_IN_FLIGHT 4


static void cut(size_t lo, size_t hi, int g, int G, size_t *plo, size_t *phi) {
    const size_t len = hi - lo;
    *plo = lo + len * (size_t)g / (size_t)G;
    *phi = lo + len * (size_t)(g + 1) / (size_t)G;
}

/* Shared and owned segments of world rank `rank` (world of size world_size, expert-parallel
 * size ep), with that rank's parts; *seg malloc'd. */
static int build_segments(const fr_model *m, int world_size, int ep, int rank, fr_dist_segment **seg, int *n_seg) {
    const int E = m->cfg.n_routed_experts, Eh = E > 0 ? E / ep : 0, ep_rank = rank % ep;
    const int dp_size = world_size / ep, dp_rank = rank / ep;
    fr_dist_segment *s = malloc((size_t)(m->n_tensors > 0 ? m->n_tensors : 1) * sizeof *s);
    if (!s) return fr_error(FR_ERR_NOMEM, "out of memory");
    int n = 0, last_kind = -2; /* kind: 0 shared, 1 owned, -1 foreign */
    for (int i = 0; i < m->n_tensors; i++) {
        const fr_tensor *t = &m->tensors[i];
        const size_t lo = t->offset, hi = i + 1 < m->n_tensors ? m->tensors[i + 1].offset : m->n_params;
        if (lo < m->train_lo) continue; /* a LoRA run's frozen base: no gradients, no moments */
        const int kind = t->expert < 0 || ep == 1 ? 0 : t->expert / Eh == ep_rank ? 1 : -1;
        if (kind == last_kind && n > 0 && s[n - 1].hi == lo) {
            s[n - 1].hi = hi;
        } else if (kind >= 0) {
            s[n++] = (fr_dist_segment){lo, hi, kind, 0, 0};
        }
        last_kind = kind;
    }
    for (int k = 0; k < n; k++) {
        const int g = s[k].owned ? dp_rank : rank, G = s[k].owned ? dp_size : world_size;
        cut(s[k].lo, s[k].hi, g, G, &s[k].part_lo, &s[k].part_hi);
    }
    *seg = s;
    *n_seg = n;
    return FR_OK;
}

int fr_dist_setup(fr_dist *d, fr_comm *world, const fr_model *m, int ep, int zero1) {
    memset(d, 0, sizeof *d);
    if (ep <= 0) ep = 1;
    const int E = m->cfg.n_routed_experts;
    if (world->size % ep != 0)
        return fr_error(FR_ERR_ARG, "--ep %d does not divide the %d ranks of this job", ep, world->size);
    if (ep > 1 && (E == 0 || E % ep != 0))
        return fr_error(FR_ERR_ARG, "--ep %d needs the routed experts (%d) to split evenly over %d ranks", ep, E, ep);
    if (world->size > 1 && !m->ops->host_memory)
        return fr_error(FR_ERR_UNSUPPORTED, "training over several processes runs on host memory (MPI); on the %s "
                                            "backend it needs NCCL, which is not built yet",
                        m->ops->name);
    d->world = world;
    d->ep_size = ep;
    const char *bucket = getenv("FRUGAL_DIST_BUCKET");
    d->bucket = bucket && atol(bucket) >= 16 ? (size_t)atol(bucket) : FR_DIST_BUCKET;
    const char *overlap = getenv("FRUGAL_DIST_OVERLAP");
    d->overlap = !(overlap && !strcmp(overlap, "0"));
    d->zero1 = zero1 && world->size > 1;
    int rc = FR_OK;
    if (ep > 1) {
        rc = fr_comm_split(world, world->rank / ep, world->rank % ep, &d->ep);
        if (rc == FR_OK) rc = fr_comm_split(world, world->rank % ep, world->rank / ep, &d->dp);
    }
    if (rc == FR_OK) rc = build_segments(m, world->size, ep, world->rank, &d->seg, &d->n_seg);
    if (rc == FR_OK && ep > 1) { /* the gaps between this rank's segments: other ranks' experts */
        d->foreign = malloc((size_t)(d->n_seg + 1) * sizeof *d->foreign);
        if (!d->foreign) rc = fr_error(FR_ERR_NOMEM, "out of memory");
        size_t at = 0;
        for (int k = 0; rc == FR_OK && k <= d->n_seg; k++) {
            const size_t next = k < d->n_seg ? d->seg[k].lo : m->n_params;
            if (next > at) {
                d->foreign[d->n_foreign++] = (fr_opt_range){at, next, 0};
                d->foreign_floats += next - at;
            }
            if (k < d->n_seg) at = d->seg[k].hi;
        }
    }
    if (rc == FR_OK) {
        d->ranges = malloc((size_t)(d->n_seg > 0 ? d->n_seg : 1) * sizeof *d->ranges);
        d->counts = malloc((size_t)world->size * sizeof *d->counts);
        if (!d->ranges || !d->counts) rc = fr_error(FR_ERR_NOMEM, "out of memory");
    }
    if (rc != FR_OK) {
        fr_dist_free(d);
        return rc;
    }
    size_t mom = 0;
    for (int k = 0; k < d->n_seg; k++) {
        const fr_dist_segment *s = &d->seg[k];
        const size_t lo = d->zero1 ? s->part_lo : s->lo, hi = d->zero1 ? s->part_hi : s->hi;
        if (hi > lo) d->ranges[d->n_ranges++] = (fr_opt_range){lo, hi, mom};
        mom += hi - lo;
    }
    d->n_moments = mom;
    return FR_OK;
}

void fr_dist_free(fr_dist *d) {
    if (d->ep) fr_comm_free(d->ep);
    if (d->dp) fr_comm_free(d->dp);
    free(d->seg);
    free(d->foreign);
    free(d->ranges);
    free(d->counts);
    for (int i = 0; i < d->n_pend; i++) free(d->pend[i].out);
    free(d->pend);
    memset(d, 0, sizeof *d);
}

static fr_comm *group_of(const fr_dist *d, const fr_dist_segment *s) { return s->owned ? d->dp : d->world; }

/* Collectives go bucket by bucket, d->bucket floats at a time (FR_DIST_BUCKET = 16 MiB, or
 * FRUGAL_DIST_BUCKET floats): MPI's reduce-scatter and all-reduce keep temporaries the size of
 * what they are given, which over a whole model would cost more memory than ZeRO-1 saves. */

static size_t overlap(size_t a0, size_t a1, size_t b0, size_t b1) {
    const size_t lo = a0 > b0 ? a0 : b0, hi = a1 < b1 ? a1 : b1;
    return hi > lo ? hi - lo : 0;
}

/* counts[r] = how much of bucket [b0, b1) of segment s falls in group member r's part */
static void bucket_counts(const fr_dist_segment *s, int G, size_t b0, size_t b1, size_t *counts) {
    for (int r = 0; r < G; r++) {
        size_t lo, hi;
        cut(s->lo, s->hi, r, G, &lo, &hi);
        counts[r] = overlap(b0, b1, lo, hi);
    }
}

/* pending i completed: no longer in flight */
static void retire(fr_dist *d, int i) {
    d->pend[i].req = NULL;
    d->in_flight -= d->pend[i].floats;
}

static int push_pending(fr_dist *d, fr_comm *g, fr_comm_req *req, float *out, size_t at, size_t n, size_t floats) {
    if (d->n_pend == d->cap_pend) {
        const int cap = d->cap_pend ? 2 * d->cap_pend : 64;
        struct fr_dist_pending *p = realloc(d->pend, (size_t)cap * sizeof *p);
        if (!p) return fr_error(FR_ERR_NOMEM, "out of memory");
        d->pend = p;
        d->cap_pend = cap;
    }
    d->pend[d->n_pend++] = (struct fr_dist_pending){g, req, out, at, n, req ? floats : 0};
    if (req) d->in_flight += floats;
    /* over the cap: complete the oldest first (every rank does the same, in the same order) */
    int rc = FR_OK;
    for (int i = 0; i < d->n_pend && d->in_flight > FR_DIST_IN_FLIGHT * d->bucket && rc == FR_OK; i++) {
        if (!d->pend[i].req) continue;
        rc = fr_comm_wait(d->pend[i].group, d->pend[i].req);
        retire(d, i);
    }
    return rc;
}

int fr_dist_start_grads(fr_dist *d, fr_model *m, size_t lo, size_t hi) {
    size_t *counts = d->counts;
    int rc = FR_OK;
    for (int k = 0; k < d->n_seg && rc == FR_OK; k++) {
        const fr_dist_segment *s = &d->seg[k];
        fr_comm *g = group_of(d, s);
        const size_t s0 = s->lo > lo ? s->lo : lo, s1 = s->hi < hi ? s->hi : hi;
        if (g->size == 1 || s0 >= s1) continue;
        for (size_t b0 = s0; b0 < s1 && rc == FR_OK; b0 += d->bucket) {
            const size_t b1 = s1 - b0 < d->bucket ? s1 : b0 + d->bucket;
            fr_comm_req *req = NULL;
            if (!d->zero1) {
                rc = fr_comm_iallreduce(g, m->grads + b0, b1 - b0, &req);
                if (rc == FR_OK) rc = push_pending(d, g, req, NULL, 0, 0, b1 - b0);
                continue;
            }
            /* ZeRO-1: this rank receives the sum of its part of the bucket only */
            bucket_counts(s, g->size, b0, b1, counts);
            const size_t mine = counts[g->rank];
            float *out = malloc((mine + 1) * sizeof(float));
            if (!out) {
                rc = fr_error(FR_ERR_NOMEM, "out of memory for a gradient bucket");
                break;
            }
            rc = fr_comm_ireduce_scatter(g, out, m->grads + b0, counts, &req);
            if (rc == FR_OK) rc = push_pending(d, g, req, out, s->part_lo > b0 ? s->part_lo : b0, mine, b1 - b0);
            if (rc != FR_OK && !req) free(out);
        }
    }
    /* let MPI move what is already started while the backward goes on */
    for (int i = 0; i < d->n_pend && rc == FR_OK; i++) {
        int done = 0;
        if (!d->pend[i].req) continue;
        rc = fr_comm_test(d->pend[i].group, d->pend[i].req, &done);
        if (done) retire(d, i);
    }
    return rc;
}

int fr_dist_finish_grads(fr_dist *d, fr_model *m) {
    int rc = d->start_rc;
    d->start_rc = FR_OK;
    for (int i = 0; i < d->n_pend; i++) {
        struct fr_dist_pending *p = &d->pend[i];
        if (p->req) {
            const int w = fr_comm_wait(p->group, p->req);
            if (rc == FR_OK) rc = w;
        }
        if (p->out && rc == FR_OK) memcpy(m->grads + p->at, p->out, p->n * sizeof(float));
        free(p->out);
    }
    d->n_pend = 0;
    d->in_flight = 0;
    return rc;
}

int fr_dist_reduce_grads(fr_dist *d, fr_model *m) {
    const int rc = fr_dist_start_grads(d, m, 0, m->n_params);
    const int fin = fr_dist_finish_grads(d, m); /* completes whatever did start */
    return rc != FR_OK ? rc : fin;
}

static void on_grads_ready(void *user, size_t lo, size_t hi) {
    fr_dist *d = user;
    const int rc = fr_dist_start_grads(d, d->attached, lo, hi);
    if (rc != FR_OK && d->start_rc == FR_OK) d->start_rc = rc;
}

void fr_dist_attach(fr_dist *d, fr_model *m, int on) {
    d->attached = on ? m : NULL;
    m->grads_ready = on ? on_grads_ready : NULL;
    m->grads_ready_user = on ? d : NULL;
}

int fr_dist_grad_sumsq(fr_dist *d, const fr_model *m, double *sumsq) {
    fr_opt_range *parts = malloc((size_t)(d->n_seg > 0 ? d->n_seg : 1) * sizeof *parts);
    if (!parts) return fr_error(FR_ERR_NOMEM, "out of memory");
    int n = 0;
    for (int k = 0; k < d->n_seg; k++)
        if (d->seg[k].part_hi > d->seg[k].part_lo) parts[n++] = (fr_opt_range){d->seg[k].part_lo, d->seg[k].part_hi, 0};
    const double local = fr_grad_sumsq(m, parts, n);
    free(parts);
    /* each element sits in exactly one rank's parts: the world's sum is the whole */
    float v = (float)local;
    FR_CHECK(fr_comm_allreduce(d->world, &v, 1));
    *sumsq = d->world->size > 1 ? (double)v : local;
    return FR_OK;
}

int fr_dist_gather_params(fr_dist *d, fr_model *m) {
    if (!d->zero1) return FR_OK;
    size_t *counts = d->counts;
    int rc = FR_OK;
    for (int k = 0; k < d->n_seg && rc == FR_OK; k++) {
        const fr_dist_segment *s = &d->seg[k];
        fr_comm *g = group_of(d, s);
        if (g->size == 1) continue;
        for (size_t b0 = s->lo; b0 < s->hi && rc == FR_OK; b0 += d->bucket) {
            const size_t b1 = s->hi - b0 < d->bucket ? s->hi : b0 + d->bucket;
            bucket_counts(s, g->size, b0, b1, counts);
            rc = fr_comm_allgather(g, m->params + b0, NULL, counts); /* in place: each part sits where it goes */
        }
    }
    return rc;
}

/* [lo, hi) of the arena: whole pages inside it handed back to the kernel (they read as
 * zeros and cost no memory until written again) */
static void release(float *base, size_t lo, size_t hi) {
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t a = ((uintptr_t)(base + lo) + page - 1) & ~(page - 1), b = (uintptr_t)(base + hi) & ~(page - 1);
    if (b > a) madvise((void *)a, b - a, MADV_DONTNEED);
}

/* FRUGAL_DIST_POISON=1 fills them with NaN instead, so that any use of another rank's expert
 * shows in the losses (the tests run with it: whole pages are rare in tiny models) */
void fr_dist_release_foreign(fr_dist *d, fr_model *m) {
    const char *poison = getenv("FRUGAL_DIST_POISON");
    for (int i = 0; i < d->n_foreign; i++) {
        const size_t lo = d->foreign[i].lo, hi = d->foreign[i].hi;
        if (poison && !strcmp(poison, "1")) {
            for (size_t j = lo; j < hi; j++) m->params[j] = m->grads[j] = NAN;
        } else {
            release(m->params, lo, hi);
            release(m->grads, lo, hi);
        }
    }
}

void fr_dist_zero_grads(fr_dist *d, fr_model *m) {
    if (d->n_foreign == 0) {
        fr_model_zero_grad(m);
        return;
    }
    for (int k = 0; k < d->n_seg; k++) memset(m->grads + d->seg[k].lo, 0, (d->seg[k].hi - d->seg[k].lo) * sizeof(float));
}

/* The gradients [lo, hi) zeroed except the sorted, disjoint ranges (already zero) */
static void zero_except(fr_model *m, size_t lo, size_t hi, const fr_opt_range *ranges, int n) {
    size_t at = lo; /* [lo, at) done */
    for (int i = 0; i < n; i++) {
        const size_t a = ranges[i].lo > lo ? ranges[i].lo : lo, b = ranges[i].hi < hi ? ranges[i].hi : hi;
        if (a >= b) continue;
        if (a > at) m->ops->memset0(m->grads + at, (a - at) * sizeof(float));
        if (b > at) at = b;
    }
    if (hi > at) m->ops->memset0(m->grads + at, (hi - at) * sizeof(float));
}

void fr_dist_zero_grads_rest(fr_dist *d, fr_model *m) {
    if (d->n_foreign == 0) { /* fr_dist_zero_grads zeroes the whole arena */
        zero_except(m, 0, m->n_params, d->ranges, d->n_ranges);
        return;
    }
    for (int k = 0; k < d->n_seg; k++) zero_except(m, d->seg[k].lo, d->seg[k].hi, d->ranges, d->n_ranges);
}

int fr_dist_gather_experts(fr_dist *d, fr_model *m) {
    if (!d->ep || d->world->rank / d->ep_size != 0) return FR_OK; /* only world rank 0's group */
    const int P = d->ep->size, E = m->cfg.n_routed_experts;
    size_t *counts = d->counts; /* P <= the world's size */
    int rc = FR_OK;
    const int nb = m->cfg.num_hidden_layers + m->mtp_depth;
    for (int l = 0; l < nb && rc == FR_OK; l++) {
        const fr_block *b = &m->blocks[l];
        if (!b->is_moe) continue;
        /* each kind's E experts are consecutive, exp_stride apart: rank r's Eh of them in a row */
        const size_t part = (size_t)(E / P) * b->exp_stride;
        for (int r = 0; r < P; r++) counts[r] = part * sizeof(float);
        const size_t bases[3] = {b->exp_gate, b->exp_up, b->exp_down};
        for (int k = 0; k < 3 && rc == FR_OK; k++) {
            float *run = m->params + bases[k];
            rc = fr_comm_gather_bytes(d->ep, run, d->ep->rank == 0 ? NULL : run + d->ep->rank * part, counts);
        }
    }
    return rc;
}

int fr_dist_node_limit(const fr_dist *d, fr_model *m, int max_ranks, int *changed) {
    *changed = 0;
    if (d->ep_size < 2) return fr_error(FR_ERR_ARG, "--node-limit needs expert parallelism (--ep 2 or more)");
    if (max_ranks < 1 || max_ranks > d->ep_size)
        return fr_error(FR_ERR_ARG, "--node-limit %d: between 1 and the %d ranks of an expert-parallel group", max_ranks,
                        d->ep_size);
    if (m->cfg.topk_method == FR_TOPK_GREEDY)
        return fr_error(FR_ERR_CONFIG, "--node-limit needs group-limited routing (topk_method noaux_tc or "
                                       "group_limited_greedy); this model routes greedily");
    fr_config c = m->cfg;
    c.n_group = d->ep_size;
    c.topk_group = max_ranks;
    if (c.n_group == m->cfg.n_group && c.topk_group == m->cfg.topk_group) return FR_OK;
    if (fr_config_validate(&c) != FR_OK)
        return fr_error(FR_ERR_ARG, "--node-limit %d over %d ranks: %s", max_ranks, d->ep_size, fr_last_error());
    m->cfg = c;
    *changed = 1;
    return FR_OK;
}

int fr_dist_writer_ranges(const fr_dist *d, const fr_model *m, int rank, fr_opt_range **ranges, int *n) {
    fr_dist_segment *s = NULL;
    int ns = 0;
    FR_CHECK(build_segments(m, d->world->size, d->ep_size, rank, &s, &ns));
    fr_opt_range *r = malloc((size_t)(ns > 0 ? ns : 1) * sizeof *r);
    if (!r) {
        free(s);
        return fr_error(FR_ERR_NOMEM, "out of memory");
    }
    const int dp_rank = rank / d->ep_size;
    int k = 0;
    size_t packed = 0;
    for (int i = 0; i < ns; i++) {
        const int first_member = s[i].owned ? dp_rank == 0 : rank == 0;
        size_t lo, hi;
        if (d->zero1) lo = s[i].part_lo, hi = s[i].part_hi;
        else if (first_member) lo = s[i].lo, hi = s[i].hi;
        else continue;
        if (hi <= lo) continue;
        r[k++] = (fr_opt_range){lo, hi, packed};
        packed += hi - lo;
    }
    free(s);
    *ranges = r;
    *n = k;
    return FR_OK;
}

int fr_dist_gather_moments(fr_dist *d, const fr_model *m, const void *compact, size_t elem_bytes, void *full) {
    const int W = d->world->size, me = d->world->rank;
    fr_opt_range *mine = NULL;
    int n_mine = 0;
    FR_CHECK(fr_dist_writer_ranges(d, m, me, &mine, &n_mine));
    size_t send_n = 0;
    for (int i = 0; i < n_mine; i++) send_n += mine[i].hi - mine[i].lo;
    unsigned char *send = malloc(send_n * elem_bytes + 1);
    size_t *counts = calloc((size_t)W, sizeof(size_t));
    fr_opt_range **all = calloc((size_t)W, sizeof *all);
    int *n_all = calloc((size_t)W, sizeof(int));
    unsigned char *recv = NULL;
    int rc = send && counts && all && n_all ? FR_OK : fr_error(FR_ERR_NOMEM, "out of memory gathering the moments");
    /* pack: each writer span from this rank's compact array (its own ranges say where) */
    for (int i = 0; i < n_mine && rc == FR_OK; i++) {
        const fr_opt_range *w = &mine[i];
        size_t done = 0;
        for (int j = 0; j < d->n_ranges && done < w->hi - w->lo; j++) {
            const fr_opt_range *h = &d->ranges[j];
            const size_t lo = w->lo > h->lo ? w->lo : h->lo, hi = w->hi < h->hi ? w->hi : h->hi;
            if (lo >= hi) continue;
            memcpy(send + (w->mom + lo - w->lo) * elem_bytes, (const unsigned char *)compact + (h->mom + lo - h->lo) * elem_bytes,
                   (hi - lo) * elem_bytes);
            done += hi - lo;
        }
    }
    /* every rank's spans (rank 0 places them; the others need only the counts) */
    size_t total = 0;
    for (int r = 0; r < W && rc == FR_OK; r++) {
        rc = fr_dist_writer_ranges(d, m, r, &all[r], &n_all[r]);
        for (int i = 0; rc == FR_OK && i < n_all[r]; i++) counts[r] += (all[r][i].hi - all[r][i].lo) * elem_bytes;
        total += counts[r];
    }
    if (rc == FR_OK && me == 0 && !(recv = malloc(total + 1))) rc = fr_error(FR_ERR_NOMEM, "out of memory gathering the moments");
    rc = fr_comm_agree(d->world, rc);
    if (rc == FR_OK) rc = fr_comm_gather_bytes(d->world, recv, send, counts);
    if (rc == FR_OK && me == 0) {
        size_t off = 0;
        for (int r = 0; r < W; r++) {
            for (int i = 0; i < n_all[r]; i++) {
                const fr_opt_range *w = &all[r][i];
                memcpy((unsigned char *)full + w->lo * elem_bytes, recv + off + w->mom * elem_bytes,
                       (w->hi - w->lo) * elem_bytes);
            }
            off += counts[r];
        }
    }
    for (int r = 0; all && r < W; r++) free(all[r]);
    free(all), free(n_all), free(counts), free(send), free(recv), free(mine);
    return rc;
}
