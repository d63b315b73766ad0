/*
 * test_bf16_gemm.c — fr_ops.gemm_bf16 (cpu/bf16_gemm.c) on every path this
 * machine has: oneDNN's matmul primitive (whatever kernel oneDNN picks for this
 * CPU, named in the output) and the emulation (BF16-rounded operands through
 * the FP32 GEMM).
 *
 * Reference: the operands rounded to bfloat16 by a rounding written out here
 * (round to nearest even on the bit pattern, not numfmt's), multiplied and
 * summed in double. Bound: an FP32 accumulation of K exact products errs by at
 * most about K * 2^-24 * sum |a b|; each element must be within 2 K 2^-24 sum_k
 * |a_ik b_kj| + 1e-30 of the reference. All four transpose cases, padded
 * leading dimensions, alpha and beta (0 must not read C: C holds NaN), odd
 * sizes (M and K not multiples of 16 exercise the padded copies), each case
 * three times (the general and the shape-specific oneDNN kernel), K = 0, and a
 * rounding sentinel: an operand of 1 + 2^-9 (not a BF16 value) must multiply as
 * 1, and ties must go to even, so a GEMM that skipped the rounding fails.
 */
#include "cpu/ops_cpu.h"
#include "testutil.h"

#include <cpuid.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* round to nearest even on the bits; inputs here are finite */
static double ref_bf16(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    const uint32_t low = u & 0xffffu, keep = u & 0xffff0000u;
    uint32_t r = keep;
    if (low > 0x8000u || (low == 0x8000u && (keep & 0x10000u)))
        r = keep + 0x10000u;
    float y;
    memcpy(&y, &r, 4);
    return y;
}

static uint64_t g_seed = 12345;
static float rnd(void) {
    g_seed = g_seed * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(g_seed >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static void one_case(const char *path, int ta, int tb, int M, int N, int K, float alpha, float beta, int pad) {
    const int a_rows = ta ? K : M, a_cols = ta ? M : K, b_rows = tb ? N : K, b_cols = tb ? K : N;
    const int lda = a_cols + pad, ldb = b_cols + pad, ldc = N + pad;
    float *A = malloc((size_t)a_rows * lda * 4 + 4), *Bm = malloc((size_t)b_rows * ldb * 4 + 4);
    float *C = malloc((size_t)M * ldc * 4 + 4), *C0 = malloc((size_t)M * ldc * 4 + 4);
    for (int i = 0; i < a_rows * lda; i++)
        A[i] = rnd();
    for (int i = 0; i < b_rows * ldb; i++)
        Bm[i] = rnd() * 3.0f;
    for (int i = 0; i < M * ldc; i++)
        C0[i] = beta == 0.0f ? NAN : rnd();
    /* three times: the first call builds the shape's kernel, the others reuse
     * it (bf16_gemm.c); each result is checked */
    for (int rep = 0; rep < 3; rep++) {
        memcpy(C, C0, (size_t)M * ldc * 4);
        int rc = fr_cpu_gemm_bf16(ta, tb, M, N, K, alpha, A, lda, Bm, ldb, beta, C, ldc);
        CHECK(rc == 0, "[%s] gemm_bf16 ran", path);
        double worst = 0;
        int bad = 0, pad_ok = 1;
        for (int i = 0; i < M; i++) {
            for (int j = 0; j < N; j++) {
                double s = 0, sa = 0;
                for (int k = 0; k < K; k++) {
                    const double a = ref_bf16(ta ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k]);
                    const double b = ref_bf16(tb ? Bm[(size_t)j * ldb + k] : Bm[(size_t)k * ldb + j]);
                    s += a * b, sa += fabs(a * b);
                }
                const double c0 = beta == 0.0f ? 0.0 : (double)beta * C0[(size_t)i * ldc + j];
                const double want = alpha * s + c0;
                const double bound = 2.0 * (K + 2) * ldexp(1.0, -24) * (fabs(alpha) * sa + fabs(c0)) + 1e-30;
                const double err = fabs(C[(size_t)i * ldc + j] - want);
                if (!(err <= bound))
                    bad++;
                if (err / bound > worst)
                    worst = err / bound;
            }
            for (int j = N; j < ldc; j++)
                if (memcmp(&C[(size_t)i * ldc + j], &C0[(size_t)i * ldc + j], 4) != 0)
                    pad_ok = 0;
        }
        CHECK(bad == 0,
              "[%s] ta=%d tb=%d M=%d N=%d K=%d alpha=%g beta=%g pad=%d: %d "
              "elements off (worst %.3g of bound)",
              path, ta, tb, M, N, K, alpha, beta, pad, bad, worst);
        CHECK(pad_ok, "[%s] ta=%d tb=%d: C's padding columns untouched", path, ta, tb);
    }
    free(A), free(Bm), free(C), free(C0);
}

/* BF16 keeps 7 fraction bits. 1 + 2^-9 rounds to 1; 1 + 2^-8 is a tie and goes
 * to even (1); 1 + 3 * 2^-8 is a tie and goes to even upwards (1 + 2^-6). The
 * sum over K = 4 is 4 + 2^-6 rounded, 4 + 5 * 2^-8 unrounded and 4 + 2^-7
 * truncated: only the right rounding passes. */
static void sentinel(const char *path) {
    const float a[4] = {1.0f + 0x1p-9f, 1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f, 1.0f + 0x1p-9f};
    const float b[4] = {1, 1, 1, 1};
    float c[2 * 2] = {0};
    float A2[2 * 4], B2[4 * 2];
    for (int i = 0; i < 2; i++)
        for (int k = 0; k < 4; k++)
            A2[i * 4 + k] = a[k], B2[k * 2 + i] = b[k];
    CHECK(fr_cpu_gemm_bf16(0, 0, 2, 2, 4, 1.0f, A2, 4, B2, 2, 0.0f, c, 2) == 0, "[%s] sentinel ran", path);
    const float want = 4.0f + 0x1p-6f;
    CHECK(c[0] == want && c[3] == want, "[%s] operands rounded to BF16, ties to even: got %.9g, want %.9g", path, c[0],
          want);
}

/* The row converters of every ISA this CPU has, bit for bit against ref_bf16
 * (extended here to NaN: quiet, sign and payload top kept) on special values
 * and random bit patterns. */
static void converters(void) {
    enum { NV = 4099 };
    static float src[NV], dst[NV];
    static uint16_t codes[NV];
    const uint32_t special[] = {0,           0x80000000u, 0x7f800000u, 0xff800000u, 0x7fc00000u, 0xffc00001u,
                                0x7f800001u, 0x7fbfffffu, 0x00000001u, 0x807fffffu, 0x00008000u, 0x00018000u,
                                0x3f808000u, 0x3f818000u, 0x7f7fffffu, 0x7f7f8000u, 0x3f80ffffu, 0x3f807fffu};
    const int ns = (int)(sizeof special / sizeof special[0]);
    for (int i = 0; i < NV; i++) {
        uint32_t u;
        if (i < ns)
            u = special[i];
        else
            g_seed = g_seed * 6364136223846793005ull + 1442695040888963407ull, u = (uint32_t)(g_seed >> 32);
        memcpy(&src[i], &u, 4);
    }
    for (int isa = FR_ISA_GENERIC; isa <= FR_ISA_AVX512; isa++) {
        if (!fr_cpu_isa_supported(isa))
            continue;
        fr_cpu_set_isa(isa);
        fr_cpu_bf16_round_row(dst, src, NV);
        fr_cpu_bf16_pack_row(codes, src, NV);
        int bad = 0;
        for (int i = 0; i < NV; i++) {
            uint32_t u, got, code_bits;
            memcpy(&u, &src[i], 4);
            memcpy(&got, &dst[i], 4);
            code_bits = (uint32_t)codes[i] << 16;
            uint32_t want;
            if ((u & 0x7fffffffu) > 0x7f800000u) {
                want = (u & 0xffff0000u) | 0x00400000u;
            } else {
                const double r = ref_bf16(src[i]);
                const float rf = (float)r;
                memcpy(&want, &rf, 4);
                if (isinf(rf) && !isinf(src[i]))
                    want = (u & 0x80000000u) | 0x7f800000u; /* overflow */
            }
            if (got != want || code_bits != want)
                bad++;
        }
        CHECK(bad == 0, "[%s] BF16 row converters: %d of %d inputs not rounded to nearest even", fr_cpu_isa_name(isa),
              bad, NV);
    }
    fr_cpu_set_isa(-1);
}

static void run_path(const char *path) {
    printf("path: %s\n", path);
    static const int tt[4][2] = {{0, 0}, {0, 1}, {1, 0}, {1, 1}};
    for (int t = 0; t < 4; t++) {
        one_case(path, tt[t][0], tt[t][1], 37, 53, 71, 1.0f, 0.0f, 0);
        one_case(path, tt[t][0], tt[t][1], 64, 48, 200, 0.5f, 1.0f, 5);
    }
    one_case(path, 0, 1, 1, 96, 130, 1.0f, 0.0f, 3); /* one token */
    one_case(path, 1, 0, 96, 80, 1, 1.0f, 1.0f, 0);  /* a weight gradient over one token */
    one_case(path, 0, 0, 130, 257, 300, 2.0f, 0.25f, 1);
    sentinel(path);
    float c[6] = {1, 2, 3, 4, 5, 6};
    CHECK(fr_cpu_gemm_bf16(0, 0, 2, 3, 0, 1.0f, c, 1, c, 3, 2.0f, c, 3) == 0 && c[0] == 2 && c[5] == 12,
          "[%s] K = 0 scales C by beta", path);
}

int main(void) {
    printf("cpu features: %s\n", fr_cpu_features());
    converters();
    CHECK(fr_cpu_bf16_gemm_set_path("emulated") == 1, "the emulation is always available");
    run_path(fr_cpu_bf16_gemm_path());
    const int onednn = fr_cpu_bf16_gemm_set_path("onednn");
    if (onednn) {
        run_path(fr_cpu_bf16_gemm_path());
    } else {
        /* oneDNN 2.x has no BF16 matmul below AVX-512 (or the build has no oneDNN)
         */
        printf("note: no oneDNN BF16 matmul on this CPU / build; the default is "
               "the emulation\n");
        CHECK(strstr(fr_cpu_bf16_gemm_path(), "emulated") != NULL, "unavailable oneDNN falls back to the emulation");
    }
    fr_cpu_bf16_gemm_set_path(NULL);
    printf("default path here: %s (BF16 hardware: %s)\n", fr_bf16_gemm_path(), fr_bf16_hardware() ? "yes" : "no");
    const int has_amx = strstr(fr_cpu_features(), "amx-bf16") != NULL;
    const int has_bf16 = strstr(fr_cpu_features(), "avx512bf16") || has_amx;
    /* Intel without AMX: AVX512-BF16 is no faster than its FP32 FMAs, so the default is the emulation */
    unsigned a, b, c, d;
    const int intel = __get_cpuid(0, &a, &b, &c, &d) && !memcmp(&b, "Genu", 4) && !memcmp(&d, "ineI", 4) &&
                      !memcmp(&c, "ntel", 4);
    const int pays = has_amx || (has_bf16 && !intel);
    const char *cap = getenv("DNNL_MAX_CPU_ISA");
    if (onednn && pays && !cap) /* oneDNN, not capped below the CPU: the hardware runs by default */
        CHECK(fr_bf16_hardware(), "a CPU with BF16 hardware runs it by default (path %s)", fr_bf16_gemm_path());
    if (!pays || cap)
        CHECK(!fr_bf16_hardware() && strstr(fr_bf16_gemm_path(), "emulated"),
              "without BF16 hardware that beats FP32 the default is the emulation, not called hardware (%s)",
              fr_bf16_gemm_path());
    if (onednn && has_bf16 && !has_amx && intel && !cap)
        CHECK(strstr(fr_bf16_gemm_path(), "Intel without AMX") != NULL, "the path says why it is not oneDNN's (%s)",
              fr_bf16_gemm_path());
    return fr_test_finish("test_bf16_gemm");
}
