/* bench_moe_ops.c — the routed experts' data movement on the CPU, op by op (issue 21).
 *
 * Between the router and the expert GEMMs an MoE layer moves rows that a dense layer does not:
 * dispatch (token rows copied into N * K expert-sorted rows), combine (the K expert outputs of
 * each token summed with their gate weights) and the backward of both. For the small model of
 * the MoE-against-dense comparison those buffers are 10 MB each a layer, out of cache between
 * the forward and the backward; this times each op on the config's shapes, with caches flushed
 * before every call, and reports the bytes of the big buffers it touches per second against
 * the machine's read bandwidth measured in the same run (bench_memory_bandwidth). Routing is
 * uniform at random over the experts, K distinct per token, and sorted by moe_permute as in
 * training.
 *
 *   bench_moe_ops [--config FILE] [--batch B] [--seq T] [--reps N] [--threads N]
 */
#include "bench_common.h"

#include "frugal.h"
#include "model/ops.h"

#include <omp.h>

static void usage(FILE *f) {
    fprintf(f, "usage: bench_moe_ops [--config FILE] [--batch B] [--seq T] [--reps N] [--threads N]\n"
               "\n"
               "Times the MoE layer's row movement on the CPU (dispatch, combine and their backward),\n"
               "caches flushed before every call, on the shapes of FILE (default\n"
               "configs/compare-moe.json) with B x T tokens (default 8 x 256).\n");
}

static int fail(const char *what) {
    fprintf(stderr, "bench_moe_ops: %s\n", what);
    return 1;
}

/* Evicts the buffers of the previous call: reads and writes a buffer larger than the L3 */
static void flush_caches(unsigned char *junk, size_t n) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i += 64) junk[i]++;
}

typedef struct {
    const char *name;
    double bytes; /* of the N * K-row buffers, read or written */
    double s;     /* total seconds */
} op_time;

int main(int argc, char **argv) {
    const char *prog = "bench_moe_ops", *cfg_path = "configs/compare-moe.json";
    long B = 8, T = 256, reps = 20, threads = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--config")) {
            cfg_path = bench_opt_value(prog, argc, argv, &i);
        } else if (!strcmp(a, "--batch")) {
            B = bench_parse_long(prog, a, bench_opt_value(prog, argc, argv, &i), 1, 1 << 16);
        } else if (!strcmp(a, "--seq")) {
            T = bench_parse_long(prog, a, bench_opt_value(prog, argc, argv, &i), 1, 1 << 20);
        } else if (!strcmp(a, "--reps")) {
            reps = bench_parse_long(prog, a, bench_opt_value(prog, argc, argv, &i), 1, 100000);
        } else if (!strcmp(a, "--threads")) {
            threads = bench_parse_long(prog, a, bench_opt_value(prog, argc, argv, &i), 1, 4096);
        } else {
            fprintf(stderr, "%s: unknown option '%s'\n\n", prog, a);
            usage(stderr);
            return 2;
        }
    }
    if (threads > 0) omp_set_num_threads((int)threads);
    fr_config cfg;
    if (fr_config_load(&cfg, cfg_path) != FR_OK) return fail("cannot load the config");
    const int E = cfg.n_routed_experts, K = cfg.num_experts_per_tok, D = cfg.hidden_size;
    if (E <= 0 || K <= 0 || K > E) return fail("the config has no routed experts");
    if (B * T * K > (1L << 30) / D) return fail("batch x seq x experts per token too large");
    const int N = (int)(B * T);
    const long NK = (long)N * K;
    const fr_ops *o = fr_ops_cpu();
    const size_t rows_bytes = (size_t)NK * D * sizeof(float), tok_bytes = (size_t)N * D * sizeof(float);
    float *xe = o->alloc(rows_bytes), *ye = o->alloc(rows_bytes), *dye = o->alloc(rows_bytes);
    float *x = o->alloc(tok_bytes), *out = o->alloc(tok_bytes), *dout = o->alloc(tok_bytes);
    float *topk_w = malloc((size_t)NK * sizeof(float)), *dtopk_w = malloc((size_t)NK * sizeof(float));
    int *topk_idx = malloc((size_t)NK * sizeof(int)), *perm = malloc((size_t)NK * sizeof(int));
    int *slot_pos = malloc((size_t)NK * sizeof(int)), *offsets = malloc((size_t)(E + 1) * sizeof(int));
    const size_t junk_bytes = (size_t)256 << 20;
    unsigned char *junk = malloc(junk_bytes);
    if (!xe || !ye || !dye || !x || !out || !dout || !topk_w || !dtopk_w || !topk_idx || !perm || !slot_pos || !offsets || !junk)
        return fail("out of memory");
    memset(junk, 0, junk_bytes);
    uint64_t rng = 0x243F6A8885A308D3ull;
    for (long i = 0; i < NK * D; i++) ye[i] = (float)(bench_xorshift(&rng) % 1000) * 1e-3f;
    for (long i = 0; i < (long)N * D; i++) x[i] = dout[i] = (float)(bench_xorshift(&rng) % 1000) * 1e-3f;
    for (int n = 0; n < N; n++)
        for (int k = 0; k < K; k++) { /* K distinct experts */
            int e, dup;
            do {
                e = (int)(bench_xorshift(&rng) % (uint64_t)E);
                dup = 0;
                for (int j = 0; j < k; j++) dup |= topk_idx[(size_t)n * K + j] == e;
            } while (dup);
            topk_idx[(size_t)n * K + k] = e;
            topk_w[(size_t)n * K + k] = 1.0f / (float)K;
        }
    o->moe_permute(perm, slot_pos, offsets, topk_idx, N, K, E);

    op_time t[4] = {{"dispatch forward (xe written)", (double)rows_bytes, 0},
                    {"combine forward (ye read)", (double)rows_bytes, 0},
                    {"combine backward (ye read, dye written)", 2.0 * rows_bytes, 0},
                    {"dispatch backward (dxe read)", (double)rows_bytes, 0}};
    for (long r = 0; r < reps + 1; r++) { /* the first round warms the code up, untimed */
        double t0;
        flush_caches(junk, junk_bytes);
        t0 = bench_now();
        o->moe_dispatch_forward(xe, x, perm, (int)NK, D);
        const double d0 = bench_now() - t0;
        flush_caches(junk, junk_bytes);
        o->memset0(out, tok_bytes);
        t0 = bench_now();
        o->moe_combine_forward(out, ye, topk_w, slot_pos, N, K, D);
        const double d1 = bench_now() - t0;
        flush_caches(junk, junk_bytes);
        t0 = bench_now();
        o->moe_combine_backward(dye, dtopk_w, dout, ye, topk_w, slot_pos, N, K, D);
        const double d2 = bench_now() - t0;
        flush_caches(junk, junk_bytes);
        t0 = bench_now();
        o->moe_dispatch_backward(out, dye, slot_pos, N, K, D);
        const double d3 = bench_now() - t0;
        if (r > 0) t[0].s += d0, t[1].s += d1, t[2].s += d2, t[3].s += d3;
    }
    bench_bw_result bw;
    if (bench_memory_bandwidth((size_t)256 << 20, &bw) != 0) return fail("out of memory for the bandwidth probe");

    printf("bench_moe_ops: %s, N = %d tokens x K = %d of E = %d experts, rows of %d floats (%.1f MB per N x K "
           "buffer), %d threads, %ld reps, caches flushed; read bandwidth probe %.1f GB/s\n",
           cfg_path, N, K, E, D, rows_bytes / 1e6, bw.threads, reps, bw.read_gbs);
    double total = 0;
    for (int i = 0; i < 4; i++) {
        const double s = t[i].s / (double)reps, gbs = t[i].bytes / s / 1e9;
        total += s;
        printf("  %-42s %8.3f ms  %6.1f GB/s  %5.1f %% of the probe\n", t[i].name, 1e3 * s, gbs, 100.0 * gbs / bw.read_gbs);
        printf("{\"bench\": \"moe_ops\", \"op\": \"%s\", \"ms\": %.4f, \"gbs\": %.2f, \"probe_read_gbs\": %.2f, \"tokens\": %d, "
               "\"k\": %d, \"experts\": %d, \"hidden\": %d, \"threads\": %d}\n",
               t[i].name, 1e3 * s, gbs, bw.read_gbs, N, K, E, D, bw.threads);
    }
    printf("  all four: %.3f ms a MoE layer and training step\n", 1e3 * total);
    o->free(xe), o->free(ye), o->free(dye), o->free(x), o->free(out), o->free(dout);
    free(topk_w), free(dtopk_w), free(topk_idx), free(perm), free(slot_pos), free(offsets), free(junk);
    return 0;
}
