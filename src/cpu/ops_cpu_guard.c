/*
 * ops_cpu_guard.c — the CPU backend behind device-like memory ("cpu-guarded"): a check that
 * the model, the optimizer and the trainer treat backend memory as a GPU's, on a machine
 * without one. Every alloc is its own mapping, kept PROT_NONE except while one of this
 * backend's ops runs (each op opens all mappings, runs the CPU op, closes them again) or while
 * to_host / to_device copy. Host code that reads or writes a "device" pointer directly
 * therefore faults at once instead of working by accident as it does on the plain CPU
 * backend, and since the arithmetic is the CPU backend's, a run on it must give the CPU's
 * losses bit for bit. Slow (an mprotect per mapping per op): for tests, not for training.
 */
#include "cpu/ops_cpu.h"
#include "core/internal.h"
#include "model/ops.h"
#include "cuda/kernels_optim.cuh" /* the device optimizer's bodies, run here on the host */

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

typedef struct {
    void *base;
    size_t len;
} mapping;

static mapping *g_maps;
static int g_n, g_cap;
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static const fr_ops *g_cpu;

static void set_all(int prot) {
    for (int i = 0; i < g_n; i++) mprotect(g_maps[i].base, g_maps[i].len, prot);
}
#define OPEN() set_all(PROT_READ | PROT_WRITE)
#define CLOSE() set_all(PROT_NONE)

static void *g_alloc(size_t bytes) {
    const size_t page = (size_t)sysconf(_SC_PAGESIZE), len = ((bytes ? bytes : 1) + page - 1) / page * page;
    void *p = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0); /* zero-filled */
    if (p == MAP_FAILED) return NULL;
    pthread_mutex_lock(&g_lock);
    if (g_n == g_cap) {
        const int cap = g_cap ? 2 * g_cap : 64;
        mapping *m = realloc(g_maps, (size_t)cap * sizeof *m);
        if (!m) {
            pthread_mutex_unlock(&g_lock);
            munmap(p, len);
            return NULL;
        }
        g_maps = m;
        g_cap = cap;
    }
    g_maps[g_n++] = (mapping){p, len};
    pthread_mutex_unlock(&g_lock);
    return p;
}

static void g_free(void *p) {
    if (!p) return;
    pthread_mutex_lock(&g_lock);
    for (int i = 0; i < g_n; i++)
        if (g_maps[i].base == p) {
            munmap(p, g_maps[i].len);
            g_maps[i] = g_maps[--g_n];
            break;
        }
    pthread_mutex_unlock(&g_lock);
}

static void g_memset0(void *p, size_t bytes) { OPEN(), memset(p, 0, bytes), CLOSE(); }
static void g_copy(void *dst, const void *src, size_t bytes) { OPEN(), g_cpu->copy(dst, src, bytes), CLOSE(); }
static void g_to_host(void *host, const void *src, size_t bytes) { OPEN(), memcpy(host, src, bytes), CLOSE(); }
static void g_to_device(void *dst, const void *host, size_t bytes) { OPEN(), memcpy(dst, host, bytes), CLOSE(); }

/* Each op: open, the CPU backend's op, close. W_VOID(name, (params), (args)) */
#define W_VOID(name, params, args) \
    static void g_##name params { OPEN(); g_cpu->name args; CLOSE(); }

W_VOID(gemm, (int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
              float beta, float *C, int ldc),
       (ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc))
W_VOID(gemm_grouped, (int ta, int tb, float alpha, float beta, const fr_gemm_desc *g, int n), (ta, tb, alpha, beta, g, n))
W_VOID(embedding_forward, (float *out, const float *table, const int *tokens, int N, int D), (out, table, tokens, N, D))
W_VOID(embedding_backward, (float *dt, const float *dout, const int *tokens, int N, int D), (dt, dout, tokens, N, D))
W_VOID(rmsnorm_forward, (float *y, float *rstd, const float *x, int ldx, const float *w, int N, int D, float eps),
       (y, rstd, x, ldx, w, N, D, eps))
W_VOID(rmsnorm_backward, (float *dx, int lddx, float *dw, const float *dy, const float *x, int ldx, const float *w,
                          const float *rstd, int N, int D),
       (dx, lddx, dw, dy, x, ldx, w, rstd, N, D))
W_VOID(rope_forward, (float *x, int N, int nh, int rs, int hs, int off, int rd, const int *pos, const float *c,
                      const float *s, int il),
       (x, N, nh, rs, hs, off, rd, pos, c, s, il))
W_VOID(rope_backward, (float *x, int N, int nh, int rs, int hs, int off, int rd, const int *pos, const float *c,
                       const float *s, int il),
       (x, N, nh, rs, hs, off, rd, pos, c, s, il))
W_VOID(attention_forward, (float *out, float *lse, const float *q, const float *k, const float *v, int B, int T, int H,
                           int dqk, int dv, float scale),
       (out, lse, q, k, v, B, T, H, dqk, dv, scale))
W_VOID(attention_backward, (float *dq, float *dk, float *dval, const float *dout, const float *out, const float *lse,
                            const float *q, const float *k, const float *v, int B, int T, int H, int dqk, int dv,
                            float scale),
       (dq, dk, dval, dout, out, lse, q, k, v, B, T, H, dqk, dv, scale))
W_VOID(mla_kv_split_forward, (float *k, float *v, const float *kv, const float *kpe, int ld, int N, int H, int nope,
                              int rope, int vd),
       (k, v, kv, kpe, ld, N, H, nope, rope, vd))
W_VOID(mla_kv_split_backward, (float *dkv, float *dpe, int ld, const float *dk, const float *dv, int N, int H, int nope,
                               int rope, int vd),
       (dkv, dpe, ld, dk, dv, N, H, nope, rope, vd))
W_VOID(latent_attention, (float *ctx, const float *qf, const float *cache, const int *pos, int N, int nh, int row,
                          int kvr, int max_keys, float scale),
       (ctx, qf, cache, pos, N, nh, row, kvr, max_keys, scale))
W_VOID(copy2d, (float *dst, int ldd, const float *src, int lds, int rows, int cols), (dst, ldd, src, lds, rows, cols))
W_VOID(swiglu_forward, (float *h, const float *g, const float *u, size_t n), (h, g, u, n))
W_VOID(swiglu_backward, (float *dg, float *du, const float *dh, const float *g, const float *u, size_t n),
       (dg, du, dh, g, u, n))
W_VOID(add, (float *y, const float *a, const float *b, size_t n), (y, a, b, n))
W_VOID(axpy, (float *y, float alpha, const float *x, size_t n), (y, alpha, x, n))
W_VOID(cross_entropy, (float *l, float *dl, const float *lg, const int *t, int N, int V, float gs), (l, dl, lg, t, N, V, gs))
W_VOID(moe_route_forward, (int *idx, float *w, float *sc, const float *lg, const float *b, int N, const fr_route_params *p),
       (idx, w, sc, lg, b, N, p))
W_VOID(moe_route_backward, (float *dl, const float *dw, const float *dx, const float *sc, const int *idx, int N,
                            const fr_route_params *p),
       (dl, dw, dx, sc, idx, N, p))
W_VOID(moe_balance_loss, (float *l, float *ds, const float *sc, const int *idx, int B, int T, int E, int K, float gs),
       (l, ds, sc, idx, B, T, E, K, gs))
W_VOID(moe_permute, (int *perm, int *pos, int *off, const int *idx, int N, int K, int E), (perm, pos, off, idx, N, K, E))
W_VOID(moe_dispatch_forward, (float *xe, const float *x, const int *perm, int NK, int D), (xe, x, perm, NK, D))
W_VOID(moe_dispatch_backward, (float *dx, const float *dxe, const int *pos, int N, int K, int D), (dx, dxe, pos, N, K, D))
W_VOID(moe_combine_forward, (float *out, const float *ye, const float *w, const int *pos, int N, int K, int D),
       (out, ye, w, pos, N, K, D))
W_VOID(moe_combine_backward, (float *dye, float *dw, const float *dout, const float *ye, const float *w, const int *pos,
                              int N, int K, int D),
       (dye, dw, dout, ye, w, pos, N, K, D))

static int g_gemm_bf16(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                       int ldb, float beta, float *C, int ldc) {
    OPEN();
    const int rc = g_cpu->gemm_bf16(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    CLOSE();
    return rc;
}

static long g_fp8_quantize(float *y, int ldy, float *s, const float *x, int ldx, int rows, int cols, int tr, int tc) {
    OPEN();
    const long bad = g_cpu->fp8_quantize(y, ldy, s, x, ldx, rows, cols, tr, tc);
    CLOSE();
    return bad;
}

/* the optimizer in backend memory, as a device runs it (the CPU backend has no such ops) */
static void g_adamw(float *p, const float *g, void *mom, void *var, int bf16, size_t n, fr_adamw_step_consts k) {
    OPEN();
    for (size_t i = 0; i < n; i++) fr_k_adamw(i, p, g, mom, var, bf16, &k);
    CLOSE();
}

static void g_sumsq_chunks(double *partial, const float *x, size_t n, size_t chunk) {
    OPEN();
    for (size_t c = 0; chunk && c * chunk < n; c++) fr_k_sumsq_chunk(c, partial, x, n, chunk);
    CLOSE();
}

static fr_ops g_ops;

const fr_ops *fr_ops_cpu_guarded(void) {
    if (g_ops.name) return &g_ops;
    g_cpu = fr_ops_cpu();
    fr_ops o = *g_cpu;
    o.name = "cpu-guarded";
    o.host_memory = 0;
    o.alloc = g_alloc, o.free = g_free, o.memset0 = g_memset0, o.copy = g_copy;
    o.to_host = g_to_host, o.to_device = g_to_device;
    o.gemm = g_gemm, o.gemm_grouped = g_gemm_grouped, o.gemm_bf16 = g_gemm_bf16, o.fp8_quantize = g_fp8_quantize;
    o.embedding_forward = g_embedding_forward, o.embedding_backward = g_embedding_backward;
    o.rmsnorm_forward = g_rmsnorm_forward, o.rmsnorm_backward = g_rmsnorm_backward;
    o.rope_forward = g_rope_forward, o.rope_backward = g_rope_backward;
    o.attention_forward = g_attention_forward, o.attention_backward = g_attention_backward;
    o.mla_kv_split_forward = g_mla_kv_split_forward, o.mla_kv_split_backward = g_mla_kv_split_backward;
    o.latent_attention = g_latent_attention, o.copy2d = g_copy2d;
    o.swiglu_forward = g_swiglu_forward, o.swiglu_backward = g_swiglu_backward;
    o.add = g_add, o.axpy = g_axpy, o.cross_entropy = g_cross_entropy;
    o.moe_route_forward = g_moe_route_forward, o.moe_route_backward = g_moe_route_backward;
    o.moe_balance_loss = g_moe_balance_loss, o.moe_permute = g_moe_permute;
    o.moe_dispatch_forward = g_moe_dispatch_forward, o.moe_dispatch_backward = g_moe_dispatch_backward;
    o.moe_combine_forward = g_moe_combine_forward, o.moe_combine_backward = g_moe_combine_backward;
    o.adamw = g_adamw, o.sumsq_chunks = g_sumsq_chunks;
    g_ops = o;
    return &g_ops;
}
