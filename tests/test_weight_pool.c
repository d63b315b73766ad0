/*
 * test_weight_pool.c — fr_alloc_weights (core/weight_pool.c): small weight matrices packed into
 * shared huge-page chunks.
 *
 * Checks: 64-byte alignment; zeroed memory, also when a chunk is reused after its matrices
 * were freed; no two allocations overlap (each is filled with its own pattern, all are checked
 * after every one was written); a chunk whose matrices are all freed is unmapped (its range
 * leaves /proc/self/maps); sizes outside the pooled range go through fr_alloc and fr_free takes
 * both. Where the kernel gives transparent huge pages, the pooled memory reports them (printed,
 * not required: THP may be off on a machine).
 */
#include "core/internal.h"
#include "testutil.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define N_MATS 600
#define MAT_BYTES (272 * 1024 + 40) /* an expert's 256 x 1024 Q8_0 matrix, not a multiple of 64 */

/* 1 when [p, p + n) lies inside a mapping of /proc/self/maps */
static int mapped(const void *p, size_t n) {
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f) return -1;
    char line[512];
    int found = 0;
    while (!found && fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx", &lo, &hi) == 2 && (uintptr_t)p >= lo && (uintptr_t)p + n <= hi) found = 1;
    }
    fclose(f);
    return found;
}

static long anon_huge_kb(void) {
    FILE *f = fopen("/proc/self/smaps_rollup", "r");
    if (!f) return -1;
    char line[256];
    long kb = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "AnonHugePages: %ld kB", &kb) == 1) break;
    fclose(f);
    return kb;
}

int main(void) {
    unsigned char **m = calloc(N_MATS, sizeof *m);
    int misaligned = 0, dirty = 0;
    for (int i = 0; i < N_MATS; i++) {
        m[i] = fr_alloc_weights(MAT_BYTES);
        CHECK(m[i] != NULL, "allocation %d", i);
        if (!m[i]) return 1;
        misaligned += ((uintptr_t)m[i] & 63) != 0;
        for (size_t k = 0; k < MAT_BYTES; k += 97) dirty += m[i][k] != 0;
        memset(m[i], (i * 37 + 1) & 255, MAT_BYTES);
    }
    CHECK(misaligned == 0, "%d of %d allocations not 64-byte aligned", misaligned, N_MATS);
    CHECK(dirty == 0, "fresh allocations not zeroed (%d bytes)", dirty);
    int clobbered = 0;
    for (int i = 0; i < N_MATS; i++)
        for (size_t k = 0; k < MAT_BYTES; k += 61) clobbered += m[i][k] != ((i * 37 + 1) & 255);
    CHECK(clobbered == 0, "allocations overlap: %d bytes overwritten by a neighbour", clobbered);
    printf("%d matrices of %d bytes: aligned, zeroed, disjoint; AnonHugePages %ld kB\n", N_MATS, MAT_BYTES, anon_huge_kb());

    /* the first matrices fill a chunk that is no longer the current one: freeing all of them
     * unmaps it */
    unsigned char *first = m[0];
    for (int i = 0; i < N_MATS / 2; i++) fr_free(m[i]); /* a 64 MiB chunk holds 240 */
#if !defined(__SANITIZE_ADDRESS__) /* (under ASan there is no pool: each matrix is its own allocation) */
    CHECK(mapped(first, MAT_BYTES) == 0, "a chunk whose matrices were all freed is still mapped");
#else
    (void)first;
    (void)mapped;
#endif
    /* the rest: the current chunk is rewound and handed out again, zeroed */
    for (int i = N_MATS / 2; i < N_MATS; i++) fr_free(m[i]);
    dirty = 0;
    for (int i = 0; i < 8; i++) {
        m[i] = fr_alloc_weights(MAT_BYTES);
        for (size_t k = 0; k < MAT_BYTES; k += 97) dirty += m[i][k] != 0;
    }
    CHECK(dirty == 0, "reused pool memory not zeroed (%d bytes)", dirty);
    for (int i = 0; i < 8; i++) fr_free(m[i]);

    /* outside the pooled range: fr_alloc's own allocations, freed by the same fr_free */
    unsigned char *small = fr_alloc_weights(100), *big = fr_alloc_weights((size_t)5 << 20);
    CHECK(small && big && ((uintptr_t)small & 63) == 0 && ((uintptr_t)big & ((2u << 20) - 1)) == 0,
          "small and large allocations (large ones on a 2 MiB boundary)");
    CHECK(fr_weight_pool_release(small) == 0 && fr_weight_pool_release(big) == 0, "small and large are not the pool's");
    fr_free(small);
    fr_free(big);
    fr_free(NULL);
    free(m);
    return fr_test_finish("test_weight_pool");
}
