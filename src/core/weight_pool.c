/*
 * weight_pool.c — fr_alloc_weights: the storage of weight matrices on transparent huge pages.
 *
 * Decode streams every active weight once per token. From 4 KiB pages the stream restarts the
 * hardware prefetchers at each page and misses the TLB every 4 KiB, which cost a third of the
 * bandwidth on AMD Zen 4 (util.c, fr_alloc). Large matrices get huge pages from fr_alloc; the
 * many small ones of a fine-grained MoE (an expert's 256 x 1024 Q8_0 matrix is 272 KiB, and
 * its three matrices are read one after another) would each sit on 4 KiB pages, so they are
 * packed here into 64 MiB chunks aligned to 2 MiB and advised MADV_HUGEPAGE.
 *
 * A chunk counts its live allocations. Freeing the last one unmaps the chunk (or rewinds it
 * when it is the one still being filled), so loading and freeing engines in a long-running
 * server returns the memory. Allocation and release take one mutex: they happen at load time,
 * never per token.
 */
#include "core/internal.h"

#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

#define CHUNK_BYTES ((size_t)64 << 20)
#define POOL_MIN 4096                    /* smaller ones: fr_alloc (not worth a pool slot) */
#define POOL_MAX (2 * FR_HUGE_PAGE)      /* larger ones: fr_alloc's own huge pages */
#define MAX_CHUNKS 4096                  /* 256 GiB of weights */

typedef struct {
    unsigned char *base; /* CHUNK_BYTES, 2 MiB aligned; NULL: slot free */
    size_t used;
    long live;
} chunk;

static chunk g_chunks[MAX_CHUNKS];
static int g_n_chunks, g_current = -1;
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;

static int chunk_of(const void *p) {
    const unsigned char *c = p;
    for (int i = 0; i < g_n_chunks; i++)
        if (g_chunks[i].base && c >= g_chunks[i].base && c < g_chunks[i].base + CHUNK_BYTES) return i;
    return -1;
}

static int new_chunk(void) {
    /* over-map by one huge page, then trim to a 2 MiB boundary */
    unsigned char *raw = mmap(NULL, CHUNK_BYTES + FR_HUGE_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) return -1;
    unsigned char *base = (unsigned char *)(((uintptr_t)raw + FR_HUGE_PAGE - 1) & ~(uintptr_t)(FR_HUGE_PAGE - 1));
    if (base > raw) munmap(raw, (size_t)(base - raw));
    munmap(base + CHUNK_BYTES, (size_t)(raw + FR_HUGE_PAGE - base));
    madvise(base, CHUNK_BYTES, MADV_HUGEPAGE);
    int slot = -1;
    for (int i = 0; i < g_n_chunks && slot < 0; i++)
        if (!g_chunks[i].base) slot = i;
    if (slot < 0 && g_n_chunks < MAX_CHUNKS) slot = __atomic_add_fetch(&g_n_chunks, 1, __ATOMIC_RELEASE) - 1;
    if (slot < 0) {
        munmap(base, CHUNK_BYTES);
        return -1;
    }
    g_chunks[slot] = (chunk){base, 0, 0};
    return slot;
}

/* Under AddressSanitizer every matrix gets its own allocation, so that a kernel reading past a
 * matrix's end is caught instead of landing in its neighbour. */
#if defined(__SANITIZE_ADDRESS__)
#define POOL_OFF 1
#else
#define POOL_OFF 0
#endif

void *fr_alloc_weights(size_t bytes) {
    const size_t rounded = (bytes + 63) & ~(size_t)63;
    if (POOL_OFF || rounded < POOL_MIN || rounded >= POOL_MAX) return fr_alloc(bytes);
    pthread_mutex_lock(&g_lock);
    if (g_current < 0 || g_chunks[g_current].used + rounded > CHUNK_BYTES) g_current = new_chunk();
    void *p = NULL;
    if (g_current >= 0) {
        chunk *c = &g_chunks[g_current];
        p = c->base + c->used;
        c->used += rounded;
        c->live++;
    }
    pthread_mutex_unlock(&g_lock);
    if (!p) return fr_alloc(bytes); /* no address space for a chunk: plain pages */
    memset(p, 0, rounded);          /* a rewound chunk holds old data */
    return p;
}

int fr_weight_pool_release(void *p) {
    /* every fr_free comes here: no lock while no chunk was ever made (training never makes one).
     * A pointer of the pool was handed out after its chunk's slot was counted. */
    if (!p || __atomic_load_n(&g_n_chunks, __ATOMIC_ACQUIRE) == 0) return 0;
    pthread_mutex_lock(&g_lock);
    const int i = chunk_of(p);
    if (i >= 0 && --g_chunks[i].live == 0) {
        if (i == g_current) g_chunks[i].used = 0;
        else {
            munmap(g_chunks[i].base, CHUNK_BYTES);
            g_chunks[i].base = NULL;
        }
    }
    pthread_mutex_unlock(&g_lock);
    return i >= 0;
}
