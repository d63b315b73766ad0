/* bench_quant.c — fr_qmatmul speed per weight format (src/cpu/qmatmul.h) next to the machine's
 * memory bandwidth.
 *
 *   bench_quant [--rows R] [--cols C] [--mib MIB] [--prefill M] [--threads N] [--isa ISA]
 *
 * Decode (M = 1, matrix-vector) is bound by memory bandwidth: every weight byte is read
 * once per token. To measure streaming from DRAM and not from the caches, the bench holds
 * enough copies of the R x C matrix (different random weights, like different layers) to
 * fill at least MIB MiB (default 256) and multiplies them in turn; the time per matrix is
 * the median over passes. Reported: GB/s of weights read (stored bytes, scales included),
 * GFLOP/s (2 R C per product), and the fraction of the read bandwidth that
 * bench_memory_bandwidth measures in the same process with the same threads (the decode
 * bound). Next to it, the kernel's own speed: the same product over the first rows of one
 * matrix, 1.5 MiB of weights per thread, repeated so that they stay in cache ("cache GB/s"); when
 * the DRAM figure comes close to it ("of cache"), the kernel's arithmetic, not the memory, sets
 * the decode speed. Prefill (--prefill M, default 64; 0 skips): GFLOP/s of one M x C by C x R
 * product.
 * Every available kernel set (generic, avx2, avx512) is timed unless --isa names one.
 * Prints a table and one JSON line per format and kernel set.
 */
#include "bench_common.h"

#include "frugal.h"
#include "core/internal.h"
#include "cpu/ops_cpu.h"
#include "cpu/qmatmul.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: bench_quant [--rows R] [--cols C] [--mib MIB] [--prefill M] [--threads N] [--isa generic|avx2|avx512]\n"
            "\n"
            "Times fr_qmatmul matrix-vector products (decode) for f32, bf16, q8_0 and q4_1 on R x C\n"
            "weights (default 4096 x 4096), cycling over copies that fill MIB MiB (default 256) so\n"
            "the weights stream from memory, and reports GB/s, GFLOP/s and the fraction of the\n"
            "measured memory read bandwidth, next to the kernel's own speed with 1.5 MiB of weights\n"
            "per thread held in cache. --prefill M (default 64, 0 = skip) also times M x C by\n"
            "C x R products.\n");
}

/* weight bytes per thread for the in-cache timing: within the last-level cache (8 MiB on the
 * 2-vCPU Zen 1 VM), large enough that the per-call work (activation quantization, the
 * parallel region) stays small beside the rows */
#define CACHE_KIB 1536

/* Median seconds per product of M activation rows with each matrix in turn (a warm-up pass,
 * then passes until ~1 s). */
static double time_matvec(float *y, const float *x, const fr_qmatrix *mats, int n_mats, int M) {
    for (int k = 0; k < n_mats; k++) fr_qmatmul(y, x, &mats[k], M);
    double per[64];
    int passes = 0;
    double t_start = bench_now();
    while (passes < 64 && (passes < 3 || bench_now() - t_start < 1.0)) {
        double t0 = bench_now();
        for (int k = 0; k < n_mats; k++) fr_qmatmul(y, x, &mats[k], M);
        per[passes++] = (bench_now() - t0) / n_mats;
    }
    qsort(per, (size_t)passes, sizeof per[0], bench_cmp_double);
    return per[passes / 2];
}

int main(int argc, char **argv) {
    long rows = 4096, cols = 4096, mib = 256, threads = 0, prefill = 64;
    int only_isa = -1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--rows")) {
            rows = bench_parse_long("bench_quant", "--rows", bench_opt_value("bench_quant", argc, argv, &i), 1, 1 << 20);
        } else if (!strcmp(argv[i], "--cols")) {
            cols = bench_parse_long("bench_quant", "--cols", bench_opt_value("bench_quant", argc, argv, &i), 32, 1 << 20);
        } else if (!strcmp(argv[i], "--mib")) {
            mib = bench_parse_long("bench_quant", "--mib", bench_opt_value("bench_quant", argc, argv, &i), 1, 1 << 16);
        } else if (!strcmp(argv[i], "--prefill")) {
            prefill = bench_parse_long("bench_quant", "--prefill", bench_opt_value("bench_quant", argc, argv, &i), 0, 4096);
        } else if (!strcmp(argv[i], "--threads")) {
            threads = bench_parse_long("bench_quant", "--threads", bench_opt_value("bench_quant", argc, argv, &i), 1, 4096);
        } else if (!strcmp(argv[i], "--isa")) {
            const char *v = bench_opt_value("bench_quant", argc, argv, &i);
            only_isa = !strcmp(v, "generic") || !strcmp(v, "scalar") ? FR_ISA_GENERIC
                       : !strcmp(v, "avx2")                          ? FR_ISA_AVX2
                       : !strcmp(v, "avx512")                        ? FR_ISA_AVX512
                                                                     : -2;
            if (only_isa == -2) {
                fprintf(stderr, "bench_quant: --isa expects generic, avx2 or avx512, got '%s'\n", v);
                return 2;
            }
        } else {
            fprintf(stderr, "bench_quant: unknown option '%s'\n\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    if (cols % 32) {
        fprintf(stderr, "bench_quant: --cols must be a multiple of 32 (q8_0 / q4_1 blocks)\n");
        return 2;
    }
    if (threads > 0) {
        omp_set_num_threads((int)threads);
        fr_set_num_threads((int)threads);
    }
    bench_bw_result bw = {0};
    if (bench_memory_bandwidth((size_t)256 << 20, &bw) != 0) {
        fprintf(stderr, "bench_quant: cannot allocate the bandwidth arrays\n");
        return 1;
    }
    printf("memory bandwidth: read %.2f GB/s, triad %.2f GB/s (%d threads); CPU features: %s\n", bw.read_gbs,
           bw.triad_gbs, bw.threads, fr_cpu_features());
    printf("weights %ld x %ld, working set >= %ld MiB per format, prefill M = %ld\n\n", rows, cols, mib, prefill);
    printf("%-7s %-6s %-5s %8s %8s %9s %9s %8s %8s %12s %9s %8s\n", "kernels", "format", "act", "bytes/w", "us", "GB/s",
           "GFLOP/s", "of bw", "M2/M1", "prefill GF/s", "cache GB/s", "of cache");

    fr_rng rng;
    fr_rng_seed(&rng, 1);
    float *src = malloc((size_t)rows * cols * sizeof(float));
    float *x = malloc((size_t)(prefill > 2 ? prefill : 2) * cols * sizeof(float));
    float *y = malloc((size_t)(prefill > 2 ? prefill : 2) * rows * sizeof(float));
    if (!src || !x || !y) {
        fprintf(stderr, "bench_quant: out of memory\n");
        return 1;
    }
    for (long i = 0; i < (prefill > 2 ? prefill : 2) * cols; i++) x[i] = (float)fr_rng_uniform(&rng) - 0.5f;
    for (long i = 0; i < rows * cols; i++) src[i] = (float)(0.04 * fr_rng_normal(&rng));

    for (int isa = FR_ISA_GENERIC; isa <= FR_ISA_AVX512; isa++) {
        if (!fr_cpu_isa_supported(isa) || (only_isa >= 0 && isa != only_isa)) continue;
        fr_cpu_set_isa(isa);
        for (int t = FR_QT_F32; t < FR_QT_COUNT; t++) {
            const size_t bytes = fr_qtype_row_bytes((fr_qtype)t, (int)cols) * (size_t)rows;
            int n_mats = (int)((((size_t)mib << 20) + bytes - 1) / bytes);
            if (n_mats < 2) n_mats = 2;
            fr_qmatrix *mats = calloc((size_t)n_mats, sizeof *mats);
            int ok = mats != NULL;
            /* one quantization, then copies in distinct memory (the timing does not depend
             * on the values; only on the bytes streamed) */
            ok = ok && fr_qmatrix_from_f32(&mats[0], (fr_qtype)t, src, (int)rows, (int)cols) == FR_OK;
            for (int k = 1; ok && k < n_mats; k++) {
                void *d = fr_alloc(bytes);
                ok = d != NULL;
                if (ok) {
                    memcpy(d, mats[0].data, bytes);
                    fr_qmatrix_wrap(&mats[k], (fr_qtype)t, d, (int)rows, (int)cols);
                    mats[k].owned = 1;
                }
            }
            if (!ok) {
                fprintf(stderr, "bench_quant: cannot build %d %s matrices: %s\n", n_mats, fr_qtype_name((fr_qtype)t),
                        fr_last_error());
                return 1;
            }
            const int quantized = t == FR_QT_Q8_0 || t == FR_QT_Q4_1;
            for (int act = 0; act <= quantized; act++) {
                fr_qmatmul_set_int8_act(act);
                double tm = time_matvec(y, x, mats, n_mats, 1), tm2 = time_matvec(y, x, mats, n_mats, 2);
                double gbs = (double)bytes / tm / 1e9, gflops = 2.0 * rows * cols / tm / 1e9;
                /* the kernel's own speed: the first rows of one matrix, CACHE_KIB per thread, so
                 * that they stay in cache across passes; DRAM GB/s close to this means the kernel,
                 * not the memory, sets the decode speed */
                const size_t rbytes = fr_qtype_row_bytes((fr_qtype)t, (int)cols);
                long crow = (long)(((size_t)CACHE_KIB << 10) * (size_t)bw.threads / rbytes);
                if (crow > rows) crow = rows;
                if (crow < 1) crow = 1;
                fr_qmatrix sub;
                fr_qmatrix_wrap(&sub, (fr_qtype)t, mats[0].data, (int)crow, (int)cols);
                const double tc = time_matvec(y, x, &sub, 1, 1), cache_gbs = (double)rbytes * crow / tc / 1e9;
                double pf = 0;
                if (prefill > 1) {
                    fr_qmatmul(y, x, &mats[0], (int)prefill);
                    double best = 1e30;
                    for (int r = 0; r < 3; r++) {
                        double t0 = bench_now();
                        fr_qmatmul(y, x, &mats[0], (int)prefill);
                        double dt = bench_now() - t0;
                        if (dt < best) best = dt;
                    }
                    pf = 2.0 * prefill * rows * cols / best / 1e9;
                }
                const char *act_name = act ? "int8" : "f32";
                printf("%-7s %-6s %-5s %8.3f %8.1f %9.2f %9.2f %7.1f%% %8.2f %12.1f %9.2f %7.1f%%\n", fr_cpu_isa_name(isa),
                       fr_qtype_name((fr_qtype)t), act_name, (double)bytes / ((double)rows * cols), tm * 1e6, gbs, gflops,
                       100.0 * gbs / bw.read_gbs, tm2 / tm, pf, cache_gbs, 100.0 * gbs / cache_gbs);
                printf("{\"bench\": \"quant\", \"kernels\": \"%s\", \"format\": \"%s\", \"activations\": \"%s\", "
                       "\"rows\": %ld, \"cols\": %ld, \"threads\": %d, \"matrices\": %d, \"us_per_matvec\": %.2f, "
                       "\"gbs\": %.3f, \"gflops\": %.3f, \"read_bw_gbs\": %.3f, \"fraction_of_bw\": %.4f, "
                       "\"m2_over_m1\": %.3f, \"prefill_m\": %ld, \"prefill_gflops\": %.2f, \"cache_gbs\": %.3f, "
                       "\"fraction_of_cache_speed\": %.4f}\n",
                       fr_cpu_isa_name(isa), fr_qtype_name((fr_qtype)t), act_name, rows, cols, bw.threads, n_mats,
                       tm * 1e6, gbs, gflops, bw.read_gbs, gbs / bw.read_gbs, tm2 / tm, prefill, pf, cache_gbs,
                       gbs / cache_gbs);
                fflush(stdout);
            }
            fr_qmatmul_set_int8_act(-1);
            for (int k = 0; k < n_mats; k++) fr_qmatrix_free(&mats[k]);
            free(mats);
        }
    }
    fr_cpu_set_isa(-1);
    free(src);
    free(x);
    free(y);
    return 0;
}
