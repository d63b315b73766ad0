/*
 * test_train_mpi.c — multi-process training against the one-process run (issue 17), under
 * `mpirun -np 2` and `-np 4` (CTest entries test_train_mpi_np2 / _np4, label "mpi").
 *
 * Rank 0 first trains the tiny MoE config (with an MTP module, so MoE blocks of two token
 * counts) for 20 steps alone, in a world of one. Then the whole job trains the same run under
 * every layout this world size allows: data parallel (DP = world), expert parallel over 2 and
 * over the whole world, each with and without ZeRO-1. Every step's loss must equal the
 * reference's within 1e-5 relative: the same global batch, only the order of the sums differs.
 *
 * Checkpoints do not depend on the world: a DP x EP2 ZeRO-1 run stopped at step 10 is resumed
 * by rank 0 alone, and a one-process run stopped at step 10 is resumed by the whole job under
 * EP2 with ZeRO-1; both continue with the reference's losses within the same tolerance. The
 * ledger holds one record per job, charging ranks x threads. Under 4 ranks, node-limited
 * routing (each token's experts on at most 2 ranks) equals one process training the model the
 * option makes (n_group 4, topk_group 2). LoRA adapters trained data parallel (with and without
 * ZeRO-1) equal one process training them.
 */
#include "comm/comm.h"
#include "testutil.h"

#include <cjson/cJSON.h>
#include "train/train_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define STEPS 20
#define REL_TOL 1e-5

static char g_root[160];

typedef struct {
    double loss[STEPS + 1]; /* loss[s] of step s */
    long n, stop_at;
    double val[STEPS + 1];  /* validation loss after step s (every 10 steps) */
    int samples;
} recorder;

static void rec_event(void *user, const fr_train_event *ev) {
    recorder *r = user;
    if (ev->type == FR_EV_STEP && ev->step >= 1 && ev->step <= STEPS) {
        r->loss[ev->step] = ev->loss.loss;
        r->n = ev->step;
    }
    if (ev->type == FR_EV_EVAL && ev->step >= 1 && ev->step <= STEPS) r->val[ev->step] = ev->val_loss;
    if (ev->type == FR_EV_SAMPLE) r->samples++;
}

static int rec_stop(void *user) {
    recorder *r = user;
    return r->stop_at > 0 && r->n >= r->stop_at;
}

static void args_for(fr_train_args *a, const char *run) {
    fr_test_train_args(a, g_root, run);
    a->batch_size = 4; /* splits over 2 and 4 ranks */
    a->seq_len = 16;
    a->max_steps = STEPS;
    a->threads = 1;
    a->eval_interval = 10; /* evaluation and samples run through the experts' owners too */
    a->eval_batches = 2;
    a->ckpt_interval = 0;
    a->sample_interval = 20;
    a->sample_tokens = 4;
}

static int train(fr_comm *c, const fr_train_args *a, int resume, recorder *rec) {
    fr_train_hooks h = {rec_event, rec_stop, rec};
    fr_train_result res;
    return fr_train_in(a, resume, &h, &res, c);
}

/* rank 0's recorded losses to every rank (the others add zeros: exact) */
static void share(fr_comm *world, recorder *rec) {
    float v[2 * (STEPS + 1)];
    for (int s = 0; s <= STEPS; s++) {
        v[s] = world->rank == 0 ? (float)rec->loss[s] : 0.0f;
        v[STEPS + 1 + s] = world->rank == 0 ? (float)rec->val[s] : 0.0f;
    }
    fr_comm_allreduce(world, v, 2 * (STEPS + 1));
    for (int s = 0; s <= STEPS; s++) rec->loss[s] = v[s], rec->val[s] = v[STEPS + 1 + s];
}

static double compare_val(const recorder *ref, const recorder *got) {
    double worst = 0;
    for (long s = 10; s <= STEPS; s += 10) {
        const double e = fabs(got->val[s] - ref->val[s]) / fabs(ref->val[s]);
        if (!(e <= worst)) worst = e;
    }
    return worst;
}

static double compare(const recorder *ref, const recorder *got, long from, long to) {
    double worst = 0;
    for (long s = from; s <= to; s++) {
        const double e = fabs(got->loss[s] - ref->loss[s]) / fabs(ref->loss[s]);
        if (!(e <= worst)) worst = e; /* NaN shows as the worst */
    }
    return worst;
}

/* The last step record's communication figures (rank 0's metrics.jsonl): *ok when the
 * all-reduce's ring formula is 2 (W-1)/W x its payload, reduce-scatter's (W-1)/W, the
 * all-to-all within a factor 2 of its uniform-routing formula (imbalance on 20 steps of a tiny
 * model), and the time share a fraction. Prints the figures. */
static int check_comm(const char *run_dir, int W, int ep, int zero) {
    char path[600];
    snprintf(path, sizeof path, "%s/metrics.jsonl", run_dir);
    char *text = fr_test_read_file(path, NULL), *last = NULL;
    for (char *p = text ? strstr(text, "\"type\":\"step\"") : NULL; p; p = strstr(p + 1, "\"type\":\"step\"")) last = p;
    int ok = 0;
    if (last) {
        while (last > text && last[-1] != '\n') last--;
        char *eol = strchr(last, '\n');
        cJSON *j = cJSON_ParseWithLength(last, eol ? (size_t)(eol - last) : strlen(last));
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(j, "comm");
#define FIG(kind, key) cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(c, kind), key))
        const double ar = FIG("allreduce", "bytes"), ar_m = FIG("allreduce", "model_bytes");
        const double rs = FIG("reduce_scatter", "bytes"), rs_m = FIG("reduce_scatter", "model_bytes");
        const double a2a = FIG("alltoall", "bytes"), a2a_m = FIG("alltoall", "model_bytes");
        const double share = cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(c, "time_share"));
#undef FIG
        const int G = W / ep; /* the experts' group; the non-expert gradients go over all W */
        printf("  comm: all-reduce %.0f B (ring %.0f), reduce-scatter %.0f B (model %.0f), all-to-all %.0f B "
               "(uniform %.0f), time share %.3f\n", ar, ar_m, rs, rs_m, a2a, a2a_m, share);
        ok = c && share >= 0 && share <= 1 && (ep == 1 ? a2a == 0 : a2a > 0.5 * a2a_m && a2a < 2 * a2a_m);
        if (zero) ok = ok && rs > 0 && rs_m >= rs * (G - 1) / G * 0.999 && rs_m <= rs * (W - 1) / W * 1.001;
        else ok = ok && ar > 0 && ar_m >= 2.0 * ar * (G - 1) / G * 0.999 && ar_m <= 2.0 * ar * (W - 1) / W * 1.001;
        cJSON_Delete(j);
    }
    free(text);
    return ok;
}

static int count_runs(const char *ledger) {
    fr_ledger_entry *e = NULL;
    int n = 0;
    if (fr_ledger_read(ledger, &e, &n, NULL) != FR_OK) return -1;
    free(e);
    return n;
}

int main(int argc, char **argv) {
    fr_comm *world = NULL, *self = NULL;
    if (fr_comm_init(&world, &argc, &argv) != FR_OK || fr_comm_self(&self) != FR_OK) {
        printf("cannot join the world: %s\n", fr_last_error());
        return 1;
    }
    const int W = world->size, me = world->rank;
    const char *want = getenv("FRUGAL_TEST_WORLD");
    CHECK(!want || atoi(want) == W, "[rank %d] expected a world of %s, got %d", me, want, W);
    /* one folder for the job: the launcher is every rank's parent */
    snprintf(g_root, sizeof g_root, "/tmp/frugal_test_mpi_np%d_%ld", W, (long)getppid());
    if (me == 0) {
        fr_test_rm_rf(g_root);
        mkdir(g_root, 0755);
        CHECK(fr_test_tiny_run_root(g_root) == FR_OK, "data: %s", fr_last_error());
    }
    fr_comm_barrier(world);

    /* the reference: one process */
    recorder ref = {{0}, 0, 0, {0}, 0};
    fr_train_args a;
    if (me == 0) {
        args_for(&a, "ref");
        CHECK(train(self, &a, 0, &ref) == FR_OK && ref.n == STEPS, "reference run: %s", fr_last_error());
    }
    share(world, &ref);
    CHECK(ref.loss[STEPS] < ref.loss[1], "[rank %d] the reference's loss fell: %.4f -> %.4f", me, ref.loss[1],
          ref.loss[STEPS]);

    /* every layout of this world */
    const int eps[3] = {1, 2, W};
    for (int i = 0; i < 3; i++) {
        if ((i == 2 && W == 2) || (i > 0 && W == 1)) continue; /* EP over the world is EP2; alone, no EP */
        for (int zero = 0; zero < 2; zero++) {
            char run[64];
            snprintf(run, sizeof run, "dp%d_ep%d_z%d", W / eps[i], eps[i], zero);
            args_for(&a, run);
            a.expert_parallel = eps[i];
            a.zero1 = zero;
            recorder got = {{0}, 0, 0, {0}, 0};
            /* with ZeRO-1, collectives in buckets of 1,000 floats: parts cut across bucket edges */
            if (zero) setenv("FRUGAL_DIST_BUCKET", "1000", 1);
            const int rc = train(world, &a, 0, &got);
            unsetenv("FRUGAL_DIST_BUCKET");
            CHECK(rc == FR_OK, "[rank %d] %s: %s", me, run, fr_last_error());
            if (me == 0) {
                const double e = compare(&ref, &got, 1, STEPS), ev = compare_val(&ref, &got);
                printf("%-14s %2ld steps, loss %.5f -> %.5f, worst relative difference to one process %.2e, "
                       "validation %.2e (tol %.0e)\n", run, got.n, got.loss[1], got.loss[STEPS], e, ev, REL_TOL);
                CHECK(got.n == STEPS && e <= REL_TOL, "%s: losses differ from the one-process run by %.3g", run, e);
                CHECK(ev <= REL_TOL, "%s: validation losses differ from the one-process run by %.3g", run, ev);
                CHECK(got.samples == 1, "%s: %d samples", run, got.samples);
                if (W > 1)
                    CHECK(check_comm(a.run_dir, W, eps[i], zero), "%s: the communication figures of metrics.jsonl", run);
            }
        }
    }

    if (W == 1) { /* started alone: expert parallelism is refused with a message */
        args_for(&a, "ep_alone");
        a.expert_parallel = 2;
        recorder r0 = {{0}, 0, 0, {0}, 0};
        CHECK(train(world, &a, 0, &r0) == FR_ERR_ARG && strstr(fr_last_error(), "--ep 2"), "--ep 2 alone: %s",
              fr_last_error());
        fr_test_rm_rf(g_root);
        fr_comm_free(self);
        fr_comm_free(world);
        return fr_test_finish("test_train_mpi (alone)");
    }

    /* LoRA over the whole world, data parallel with and without ZeRO-1: the adapters' gradients
     * are reduced after the whole backward (they sit at the end of the arena, past every
     * block's span), and the losses equal one process training the same adapters */
    {
        char init[sizeof a.init_model];
        snprintf(init, sizeof init, "%s/ref", g_root);
        CHECK(fr_train_latest_checkpoint(init, init, sizeof init) == FR_OK, "the reference's checkpoint");
        recorder lref = {{0}, 0, 0, {0}, 0};
        if (me == 0) {
            args_for(&a, "lora_ref");
            snprintf(a.init_model, sizeof a.init_model, "%s", init);
            a.lora_rank = 2;
            CHECK(train(self, &a, 0, &lref) == FR_OK, "LoRA reference: %s", fr_last_error());
        }
        share(world, &lref);
        for (int zero = 0; zero < 2; zero++) {
            char run[64];
            snprintf(run, sizeof run, "lora_dp%d_z%d", W, zero);
            args_for(&a, run);
            snprintf(a.init_model, sizeof a.init_model, "%s", init);
            a.lora_rank = 2;
            a.zero1 = zero;
            recorder got = {{0}, 0, 0, {0}, 0};
            if (zero) setenv("FRUGAL_DIST_BUCKET", "1000", 1);
            CHECK(train(world, &a, 0, &got) == FR_OK, "[rank %d] %s: %s", me, run, fr_last_error());
            unsetenv("FRUGAL_DIST_BUCKET");
            if (me == 0) {
                const double e = compare(&lref, &got, 1, STEPS);
                printf("%-14s %2ld steps, loss %.5f -> %.5f, worst relative difference to one process %.2e (tol %.0e)\n",
                       run, got.n, got.loss[1], got.loss[STEPS], e, REL_TOL);
                CHECK(got.n == STEPS && e <= REL_TOL && lref.loss[STEPS] < lref.loss[1],
                      "%s: LoRA losses differ from the one-process run by %.3g", run, e);
            }
        }
    }

    /* node-limited routing: under EP over the whole world, each token's experts on at most 2
     * ranks equals one process training the config with n_group = world, topk_group = 2 (what
     * the option makes of the model, saved in its checkpoints); an impossible limit is refused */
    if (W == 4) {
        char cfg[300], nl_cfg[300];
        snprintf(cfg, sizeof cfg, "%s/tiny.json", g_root);
        snprintf(nl_cfg, sizeof nl_cfg, "%s/tiny_nl.json", g_root);
        recorder nl_ref = {{0}, 0, 0, {0}, 0};
        if (me == 0) {
            fr_config c;
            CHECK(fr_config_load(&c, cfg) == FR_OK, "config: %s", fr_last_error());
            c.n_group = W;
            c.topk_group = 2;
            CHECK(fr_config_save(&c, nl_cfg) == FR_OK, "config: %s", fr_last_error());
            args_for(&a, "nl_ref");
            snprintf(a.model_config, sizeof a.model_config, "%s", nl_cfg);
            CHECK(train(self, &a, 0, &nl_ref) == FR_OK, "node-limit reference: %s", fr_last_error());
        }
        share(world, &nl_ref);
        args_for(&a, "nl_ep4");
        a.expert_parallel = W;
        a.node_limit = 2;
        recorder got = {{0}, 0, 0, {0}, 0};
        CHECK(train(world, &a, 0, &got) == FR_OK, "[rank %d] node-limited EP%d: %s", me, W, fr_last_error());
        if (me == 0) {
            const double e = compare(&nl_ref, &got, 1, STEPS), e0 = compare(&ref, &got, 1, STEPS);
            printf("EP%d, node limit 2: worst relative difference %.2e to one process with n_group %d topk_group 2 "
                   "(%.2e to the unlimited run: the routing changed)\n", W, e, W, e0);
            CHECK(got.n == STEPS && e <= REL_TOL, "node-limited routing differs from its one-process model by %.3g", e);
            CHECK(e0 > REL_TOL, "node-limited routing changed nothing");
            char ck[600];
            fr_config saved;
            CHECK(fr_train_latest_checkpoint(a.run_dir, ck, sizeof ck) == FR_OK && strlen(ck) < 580, "checkpoint");
            strcat(ck, "/config.json");
            CHECK(fr_config_load(&saved, ck) == FR_OK && saved.n_group == W && saved.topk_group == 2,
                  "the checkpoint's config records the node-limited routing (n_group %d, topk_group %d)", saved.n_group,
                  saved.topk_group);
        }
        args_for(&a, "nl_bad");
        a.expert_parallel = 2;
        a.node_limit = 3;
        CHECK(train(world, &a, 0, &got) == FR_ERR_ARG && strstr(fr_last_error(), "--node-limit 3"),
              "[rank %d] --node-limit 3 over EP2 refused: %s", me, fr_last_error());
    }

    /* a checkpoint of DP x EP2 with ZeRO-1, resumed by one process */
    args_for(&a, "from_dist");
    a.expert_parallel = 2;
    a.zero1 = 1;
    recorder d1 = {{0}, 0, 10, {0}, 0};
    CHECK(train(world, &a, 0, &d1) == FR_OK, "[rank %d] from_dist, first part: %s", me, fr_last_error());
    fr_comm_barrier(world);
    if (me == 0) {
        fr_train_args r;
        fr_test_resume_args(&r, a.run_dir, 0);
        recorder d2 = {{0}, 10, 0, {0}, 0};
        CHECK(train(self, &r, 1, &d2) == FR_OK && d2.n == STEPS, "from_dist resumed alone: %s", fr_last_error());
        const double e = compare(&ref, &d2, 11, STEPS);
        printf("DP%d x EP2 ZeRO-1 checkpoint at step 10 resumed by one process: worst relative difference %.2e\n", W / 2, e);
        CHECK(e <= REL_TOL, "a DP x EP checkpoint resumed in one process: losses differ by %.3g", e);
        CHECK(count_runs(a.ledger_path) >= 1, "ledger readable");
    }
    fr_comm_barrier(world);

    /* a one-process checkpoint, resumed by the whole job under EP2 with ZeRO-1 */
    args_for(&a, "from_one");
    if (me == 0) {
        recorder o1 = {{0}, 0, 10, {0}, 0};
        CHECK(train(self, &a, 0, &o1) == FR_OK, "from_one, first part: %s", fr_last_error());
    }
    fr_comm_barrier(world);
    {
        fr_train_args r;
        fr_test_resume_args(&r, a.run_dir, 0);
        r.expert_parallel = 2;
        r.zero1 = 1;
        recorder o2 = {{0}, 10, 0, {0}, 0};
        CHECK(train(world, &r, 1, &o2) == FR_OK, "[rank %d] from_one resumed by the job: %s", me, fr_last_error());
        if (me == 0) {
            const double e = compare(&ref, &o2, 11, STEPS);
            printf("one-process checkpoint at step 10 resumed by DP%d x EP2 ZeRO-1: worst relative difference %.2e\n",
                   W / 2, e);
            CHECK(o2.n == STEPS && e <= REL_TOL, "a one-process checkpoint resumed by the job: losses differ by %.3g", e);
        }
    }

    /* the ledger: one record per job, charging ranks x threads */
    if (me == 0) {
        fr_ledger_entry *e = NULL;
        int n = 0;
        CHECK(fr_ledger_read(a.ledger_path, &e, &n, NULL) == FR_OK, "ledger: %s", fr_last_error());
        int jobs = 0;
        for (int i = 0; i < n; i++) {
            if (!strstr(e[i].run_dir, "/dp") && !strstr(e[i].run_dir, "/nl_ep")) continue;
            jobs++;
            CHECK(e[i].n_devices == W && !strcmp(e[i].status, "finished"), "%s: %d devices (want %d ranks x 1 thread), %s",
                  e[i].run_dir, e[i].n_devices, W, e[i].status);
        }
        CHECK(jobs == (W == 2 ? 4 : 7), "one ledger record per distributed job: %d", jobs);
        free(e);
        fr_test_rm_rf(g_root);
    }
    fr_comm_free(self);
    fr_comm_free(world);
    char name[64];
    snprintf(name, sizeof name, "test_train_mpi rank %d/%d", me, W);
    return fr_test_finish(name);
}
