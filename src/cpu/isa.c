/*
 * isa.c — the CPU backend's one owner of instruction-set choice: feature detection and the
 * selected kernel level (FR_ISA_*). The kernels (ops_cpu_simd.c, ops_cpu_gemm.c, qmatmul.c)
 * ask fr_cpu_isa() which variant to run; nothing here calls back into them.
 */
#include "cpu/ops_cpu.h"
#include "frugal.h"

#include <cpuid.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ detection */

static int cpu_has(int isa) {
    __builtin_cpu_init();
    switch (isa) {
    case FR_ISA_GENERIC: return 1;
    case FR_ISA_AVX2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case FR_ISA_AVX512:
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") &&
               __builtin_cpu_supports("fma");
    default: return 0;
    }
}

int fr_cpu_isa_supported(int isa) { return cpu_has(isa); }

const char *fr_cpu_isa_name(int isa) {
    switch (isa) {
    case FR_ISA_AVX2: return "avx2";
    case FR_ISA_AVX512: return "avx512";
    default: return "generic";
    }
}

static char g_features[256];
static pthread_once_t g_features_once = PTHREAD_ONCE_INIT;

static void append(const char *s) {
    size_t len = strlen(g_features);
    snprintf(g_features + len, sizeof g_features - len, "%s%s", len ? " " : "", s);
}

static void features_init(void) {
    __builtin_cpu_init();
    g_features[0] = 0;
    if (__builtin_cpu_supports("avx512f")) append("avx512f");
    unsigned a, b, c, d;
    int bf16 = 0, amx_bf16 = 0, amx_tile = 0;
    if (__get_cpuid_count(7, 1, &a, &b, &c, &d)) bf16 = (a >> 5) & 1;      /* AVX512_BF16 */
    if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
        amx_bf16 = (d >> 22) & 1;
        amx_tile = (d >> 24) & 1;
    }
    if (bf16 && __builtin_cpu_supports("avx512f")) append("avx512bf16");
    if (amx_bf16 && amx_tile) append("amx-bf16");
    if (__builtin_cpu_supports("avx2")) append("avx2");
    if (__builtin_cpu_supports("fma")) append("fma");
    if (!g_features[0]) append("generic");
}

const char *fr_cpu_features(void) {
    pthread_once(&g_features_once, features_init);
    return g_features;
}

/* ------------------------------------------------------------------ selection */

static int g_isa = FR_ISA_GENERIC;
static pthread_once_t g_isa_once = PTHREAD_ONCE_INIT;

static int best_isa(void) {
    int cap = FR_ISA_AVX512;
    const char *env = getenv("FRUGAL_CPU");
    if (env && *env) {
        if (!strcmp(env, "generic") || !strcmp(env, "scalar")) cap = FR_ISA_GENERIC;
        else if (!strcmp(env, "avx2")) cap = FR_ISA_AVX2;
    }
    for (int isa = cap; isa > FR_ISA_GENERIC; isa--)
        if (cpu_has(isa)) return isa;
    return FR_ISA_GENERIC;
}

static void apply_isa(int isa) {
    while (isa > FR_ISA_GENERIC && !cpu_has(isa)) isa--;
    g_isa = isa;
}

static void isa_init(void) { apply_isa(best_isa()); }

int fr_cpu_isa(void) {
    pthread_once(&g_isa_once, isa_init);
    return g_isa;
}

int fr_cpu_set_isa(int isa) {
    pthread_once(&g_isa_once, isa_init);
    apply_isa(isa < 0 ? best_isa() : isa > FR_ISA_AVX512 ? FR_ISA_AVX512 : isa);
    return g_isa;
}
