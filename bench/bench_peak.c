/* bench_peak.c — this machine's ceilings: FP32 FMA peak (GFLOP/s, all OpenMP threads),
 * memory bandwidth (GB/s) and the thread-to-thread round trip of a cache line (ns). Prints a
 * small table and one JSON line.
 *
 *   bench_peak [--threads N] [--bw-mib MIB]
 */
#include "bench_common.h"

#include "frugal.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: bench_peak [--threads N] [--bw-mib MIB]\n"
            "\n"
            "Measures the FP32 FMA peak with all OpenMP threads (register-resident FMA chains,\n"
            "AVX-512 or AVX2+FMA as the CPU allows) and the memory bandwidth (read and triad over\n"
            "arrays of MIB MiB each, default 256), and the round trip of a cache line between\n"
            "OpenMP threads 0 and 1 (ns).\n"
            "\n"
            "  --threads N    OpenMP threads (default: OMP_NUM_THREADS or all cores)\n"
            "  --bw-mib MIB   size of each bandwidth array in MiB (default 256; 0 skips the test)\n");
}

int main(int argc, char **argv) {
    long threads = 0, bw_mib = 256;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--threads")) {
            threads = bench_parse_long("bench_peak", "--threads", bench_opt_value("bench_peak", argc, argv, &i), 1, 4096);
        } else if (!strcmp(argv[i], "--bw-mib")) {
            bw_mib = bench_parse_long("bench_peak", "--bw-mib", bench_opt_value("bench_peak", argc, argv, &i), 0,
                                      1L << 20);
        } else {
            fprintf(stderr, "bench_peak: unknown option '%s'\n\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    if (threads > 0) {
        omp_set_num_threads((int)threads);
        fr_set_num_threads((int)threads);
    }

    bench_peak_result p = bench_fma_peak();
    bench_bw_result bw = {0};
    int have_bw = 0;
    if (bw_mib > 0) {
        if (bench_memory_bandwidth((size_t)bw_mib << 20, &bw) == 0) have_bw = 1;
        else fprintf(stderr, "bench_peak: cannot allocate 3 x %ld MiB for the bandwidth test; skipped\n", bw_mib);
    }

    const double rt_ns = bench_thread_round_trip_ns();
    const char *feat = fr_cpu_features();
    printf("frugal bench_peak\n");
    printf("  cpu features      %s\n", feat && feat[0] ? feat : "(none detected)");
    printf("  threads           %d\n", p.threads);
    printf("  fma kernel        %s (%d lanes x 12 chains)\n", p.isa, p.lanes);
    printf("  fp32 fma peak     %10.1f GFLOP/s  (%.1f per thread)\n", p.gflops, p.gflops_per_thread);
    if (have_bw) {
        printf("  memory read       %10.1f GB/s     (one %zu MiB array)\n", bw.read_gbs, bw.array_bytes >> 20);
        printf("  memory triad      %10.1f GB/s     (a = b + s*c, 3 x %zu MiB, STREAM counting)\n", bw.triad_gbs,
               bw.array_bytes >> 20);
    }
    if (rt_ns > 0) printf("  thread round trip %10.0f ns       (a cache line from thread 0 to 1 and back)\n", rt_ns);
    printf("{\"bench\": \"peak\", \"threads\": %d, \"isa\": \"%s\", \"fma_gflops\": %.2f, "
           "\"fma_gflops_per_thread\": %.2f",
           p.threads, p.isa, p.gflops, p.gflops_per_thread);
    if (have_bw)
        printf(", \"mem_read_gbs\": %.2f, \"mem_triad_gbs\": %.2f, \"bw_array_mib\": %zu", bw.read_gbs, bw.triad_gbs,
               bw.array_bytes >> 20);
    if (rt_ns > 0) printf(", \"thread_round_trip_ns\": %.0f", rt_ns);
    printf(", \"cpu_features\": \"%s\"}\n", feat ? feat : "");
    return 0;
}
