/*
 * decode_row.c — the attention heads and routed experts of a decode-sized forward (up to
 * FR_DECODE_ROWS rows: a decoded token, a speculative pair, a few sequences' tokens), each
 * thread on its own heads and its own experts from start to end: the latency path of decode.
 *
 * A decode step is a chain of small dependent products. Run as one parallel region per product
 * (infer.c's path for many rows), each ends in a barrier, the serial work between them (RoPE,
 * the absorbed queries' copies, the activations' quantization) runs on one thread while the
 * others wait, and every hand-off moves the activations from the cores that wrote them to the
 * cores that read them. But MLA's heads are independent from the query up-projection q_b to the
 * value projection W_UV, and each routed expert from its gate to its down projection:
 *
 *   per thread t, heads [h0, h1):   q[h] = q_b rows of h · RMSNorm(q_a x);  RoPE(q_pe[h]);
 *                                  q_lat[h] = W_UK[h]^T q_nope[h];  attention over the cache;
 *                                  att[h] = W_UV[h] ctx[h]
 *   per thread t, its experts:     ye[slot] = down(SwiGLU(gate · x, up · x))  (and the shared one)
 *
 * so each layer's attention and experts are one parallel region each, with no barrier inside.
 * A head or an expert goes through the same kernels on the same rows as in the many-row path,
 * so the logits are the same bits on any number of threads, and the same as that path's
 * (test_infer: test_blocked_attention, test_decode_rows_paths, test_thread_count_independence).
 */
#include "infer/engine.h"
#include "cpu/ops_cpu.h"
#include "core/internal.h"

#include <omp.h>
#include <string.h>

static int g_blocked_attention = 1, g_fused = 1;
void fr_engine_set_blocked_attention(int on) { g_blocked_attention = on; }
void fr_engine_set_fused_decode(int on) { g_fused = on; }
int fr_engine_blocked_attention(void) { return g_blocked_attention; }
int fr_engine_fused_decode(void) { return g_fused; }

/* sc[0:n] = softmax(sc[0:n]), in place; both attention paths use it, so they agree bit for bit */
void fr_engine_softmax_scores(const fr_cpu_vec *vo, float *sc, int n) {
    const float inv = 1.0f / vo->expsum(sc, sc, n, vo->max(sc, n));
    for (int j = 0; j < n; j++) sc[j] *= inv;
}

/* Attention of decoded row i (of the N in this call) for heads [h0, h1) over keys 0 .. n_keys-1
 * of K (rows of e->row floats), into e->ctx. MLA's heads all read the same cached latents, so
 * instead of one head after another each sweeping the whole cache (12 sweeps of a 1.2 MB cache
 * per layer at a 1024-token context, which does not fit L2), the heads walk the cache together,
 * in blocks that stay in L2, scoring (pass 1) and then accumulating (pass 2) every head on each
 * block; the kernels (fr_cpu_vec.dots_heads / axpys_heads) take each key once for up to four
 * heads. They treat each key row and each accumulated row in order whatever the blocking, and
 * give each head the bits of a dots / axpys call of its own, so the result is bit-identical to
 * a head-by-head loop. */
#define ATT_BLOCK_KEYS FR_ATT_BLOCK_KEYS

/* keys b .. b + nb - 1 as FP32 rows: K's (an FP32 cache), or the stored rows converted into buf */
static const float *key_block(const fr_engine *e, const float *K, const unsigned char *stored, float *buf, int b, int nb) {
    if (K) return K + (size_t)b * e->row;
    for (int j = 0; j < nb; j++) fr_engine_cache_load(e, buf + (size_t)j * e->row, stored + (size_t)(b + j) * e->row_bytes);
    return buf;
}

/* K NULL: the keys are the stored rows at `stored`, converted a block at a time into buf
 * (FR_ATT_BLOCK_KEYS rows) before each pass uses them. Converting the whole cache first (the
 * many-row path's e->deq) wrote and read back 1.7 MB a layer at a 1,500-token context. */
static void attend_heads(fr_engine *e, int i, int N, int h0, int h1, int n_keys, const float *K,
                         const unsigned char *stored, float *buf) {
    const fr_cpu_vec *vo = fr_cpu_vec_ops();
    const int row = e->row, kvr = e->cfg.kv_lora_rank, nh = e->cfg.num_attention_heads;
    float *const sc = e->att_heads + (size_t)h0 * e->max_len;
    for (int b = 0; b < n_keys; b += ATT_BLOCK_KEYS) {
        const int nb = n_keys - b < ATT_BLOCK_KEYS ? n_keys - b : ATT_BLOCK_KEYS;
        vo->dots_heads(sc + b, e->max_len, e->qf + ((size_t)i * nh + h0) * row, (size_t)row, h1 - h0,
                       key_block(e, K, stored, buf, b, nb), (size_t)row, nb, row, e->scale);
    }
    for (int h = h0; h < h1; h++) {
        fr_engine_softmax_scores(vo, e->att_heads + (size_t)h * e->max_len, n_keys);
        memset(e->ctx + ((size_t)h * N + i) * kvr, 0, (size_t)kvr * sizeof(float));
    }
    for (int b = 0; b < n_keys; b += ATT_BLOCK_KEYS) {
        const int nb = n_keys - b < ATT_BLOCK_KEYS ? n_keys - b : ATT_BLOCK_KEYS;
        vo->axpys_heads(e->ctx + ((size_t)h0 * N + i) * kvr, (size_t)N * kvr, sc + b, e->max_len, h1 - h0,
                        key_block(e, K, stored, buf, b, nb), (size_t)row, nb, kvr);
    }
}

/* attend_heads for all heads, a group of heads per thread */
void fr_engine_attend_row(fr_engine *e, int i, int N, int n_keys, const float *K) {
    const int nh = e->cfg.num_attention_heads;
    const int nt0 = omp_get_max_threads() < nh ? omp_get_max_threads() : nh;
    const int par = nt0 > 1 && (long)n_keys * nh * e->row >= 32768;
    FR_OMP_REGION_IF(par, "omp parallel num_threads(nt0) if (par)",
        {
            const int t = fr_t, T = fr_T;
            attend_heads(e, i, N, nh * t / T, nh * (t + 1) / T, n_keys, K, NULL, NULL);
        }
    );
}

/* rows [r0, r0 + n) of m as a matrix of their own (no copy) */
static fr_qmatrix row_range(const fr_qmatrix *m, int r0, int n) {
    fr_qmatrix s;
    fr_qmatrix_wrap(&s, m->type, (unsigned char *)m->data + fr_qtype_row_bytes(m->type, m->cols) * (size_t)r0, n, m->cols);
    return s;
}

void fr_engine_absorb_queries(fr_engine *e, const eng_layer *ly, int h0, int h1, int N) {
    const fr_config *c = &e->cfg;
    const int nh = c->num_attention_heads, nope = c->qk_nope_head_dim, rope = c->qk_rope_head_dim;
    const int dqk = nope + rope, kvr = c->kv_lora_rank, row = e->row;
    for (int h = h0; h < h1; h++) {
        for (int i = 0; i < N; i++)
            memcpy(e->qn + ((size_t)h * N + i) * nope, e->q + (size_t)i * nh * dqk + (size_t)h * dqk, (size_t)nope * sizeof(float));
        e->jobs[h] = (fr_qmatmul_job){e->qlat + (size_t)h * N * kvr, e->qn + (size_t)h * N * nope, &ly->uk_t[h], N};
    }
    fr_engine_linear_batch(e->jobs + h0, h1 - h0);
    for (int i = 0; i < N; i++)
        for (int h = h0; h < h1; h++) {
            float *d = e->qf + ((size_t)i * nh + h) * row;
            memcpy(d, e->qlat + ((size_t)h * N + i) * kvr, (size_t)kvr * sizeof(float));
            memcpy(d + kvr, e->q + (size_t)i * nh * dqk + (size_t)h * dqk + nope, (size_t)rope * sizeof(float));
        }
}

void fr_engine_head_values(fr_engine *e, const eng_layer *ly, int h0, int h1, int N) {
    const int nh = e->cfg.num_attention_heads, vd = e->cfg.v_head_dim, kvr = e->cfg.kv_lora_rank;
    for (int h = h0; h < h1; h++)
        e->jobs[h] = (fr_qmatmul_job){e->atth + (size_t)h * N * vd, e->ctx + (size_t)h * N * kvr, &ly->uv[h], N};
    fr_engine_linear_batch(e->jobs + h0, h1 - h0);
    for (int i = 0; i < N; i++)
        for (int h = h0; h < h1; h++)
            memcpy(e->att + (size_t)i * nh * vd + (size_t)h * vd, e->atth + ((size_t)h * N + i) * vd, (size_t)vd * sizeof(float));
}

void fr_engine_attention_rows(fr_engine *e, const eng_layer *ly, fr_seq *const *seqs, int ci, int N) {
    const fr_config *c = &e->cfg;
    const int nh = c->num_attention_heads, nope = c->qk_nope_head_dim, rope = c->qk_rope_head_dim;
    const int dqk = nope + rope, qr = c->q_lora_rank, row = e->row;
    const int f32 = e->opt.kv_type == FR_KV_F32;
    int threads = omp_get_max_threads() < nh ? omp_get_max_threads() : nh;
    if (!f32 && threads > e->att_threads) threads = e->att_threads; /* e->kblock holds att_threads blocks */
    FR_OMP_REGION_IF(threads > 1, "omp parallel num_threads(threads) if (threads > 1)",
        {
            const int t = fr_t, T = fr_T;
            const int h0 = nh * t / T, h1 = nh * (t + 1) / T;
            /* the query rows of heads h0 .. h1-1, rotated (row by row: a product's output rows
             * are its own matrix's, here a slice of each query row) */
            const fr_qmatrix q_b = row_range(&ly->q_b, h0 * dqk, (h1 - h0) * dqk);
            for (int i = 0; i < N; i++)
                fr_engine_linear(e->q + (size_t)i * nh * dqk + (size_t)h0 * dqk, e->qan + (size_t)i * qr, &q_b, 1);
            e->ops->rope_forward(e->q + (size_t)h0 * dqk, N, h1 - h0, nh * dqk, dqk, nope, rope, e->pos, e->rope_cos,
                                 e->rope_sin, c->rope_interleave);
            fr_engine_absorb_queries(e, ly, h0, h1, N);
            /* each row over its own sequence's cache, up to its own position */
            for (int i = 0; i < N; i++) {
                const unsigned char *stored = seqs[e->seq_of[i]]->kv[ci];
                attend_heads(e, i, N, h0, h1, e->pos[i] + 1, f32 ? (const float *)stored : NULL, stored,
                             f32 ? NULL : e->kblock + (size_t)t * FR_ATT_BLOCK_KEYS * row);
            }
            fr_engine_head_values(e, ly, h0, h1, N);
        }
    );
}

static double mat_bytes(const fr_qmatrix *m) { return (double)fr_qtype_row_bytes(m->type, m->cols) * m->rows; }

/* Unit u of a layer's experts (u < E: routed expert u; u == E: the shared experts): its gate, up
 * and down matrices in w, and its bytes; 0 when it has no rows (or there is no shared expert). */
static double expert_unit(const fr_engine *e, const eng_layer *ly, int u, const fr_qmatrix *w[3]) {
    const int routed = u < e->cfg.n_routed_experts;
    if (routed ? e->offsets[u + 1] == e->offsets[u] : ly->mlp_inter == 0) return 0;
    w[0] = routed ? &ly->exp_gate[u] : &ly->mlp_gate;
    w[1] = routed ? &ly->exp_up[u] : &ly->mlp_up;
    w[2] = routed ? &ly->exp_down[u] : &ly->mlp_down;
    return mat_bytes(w[0]) + mat_bytes(w[1]) + mat_bytes(w[2]);
}

void fr_engine_moe_rows(fr_engine *e, const eng_layer *ly, const float *x, int N) {
    const fr_ops *o = e->ops;
    const fr_config *c = &e->cfg;
    const int H = c->hidden_size, E = c->n_routed_experts, Im = c->moe_intermediate_size;
    /* units: the routed experts with a row (ascending, the order of their weights in memory),
     * then the shared experts; a unit is a thread's when its middle byte falls in the thread's
     * share of all the units' weights (balance by bytes, whole units: an expert's three products
     * are one run of memory, and its down projection needs all of its gate and up) */
    double total = 0;
    for (int u = 0; u <= E; u++) {
        const fr_qmatrix *w[3];
        total += expert_unit(e, ly, u, w);
    }
    const int threads = omp_get_max_threads();
    FR_OMP_REGION_IF(threads > 1, "omp parallel num_threads(threads) if (threads > 1)",
        {
            const int t = fr_t, T = fr_T;
            double start = 0;
            for (int u = 0; u <= E; u++) {
                const fr_qmatrix *w[3];
                const double cost = expert_unit(e, ly, u, w);
                if (cost == 0) continue;
                int owner = (int)((start + cost / 2) * T / total);
                start += cost;
                if (owner >= T) owner = T - 1;
                if (owner != t) continue;
                /* an expert's rows (grouped by moe_dispatch_forward; one row read where it is) */
                const int routed = u < E;
                const size_t off = routed ? (size_t)e->offsets[u] : 0;
                const int rows = routed ? e->offsets[u + 1] - e->offsets[u] : N, I = routed ? Im : ly->mlp_inter;
                const float *in = !routed ? x : rows == 1 ? x + (size_t)e->perm[off] * H : e->xe + off * H;
                float *g = routed ? e->ge + off * Im : e->g, *up = routed ? e->ue + off * Im : e->u;
                float *h = routed ? e->he + off * Im : e->h, *y = routed ? e->ye + off * H : e->tmp;
                const fr_qmatmul_job jobs[2] = {{g, in, w[0], rows}, {up, in, w[1], rows}};
                fr_engine_linear_batch(jobs, 2);
                o->swiglu_forward(h, g, up, (size_t)rows * I);
                fr_engine_linear(y, h, w[2], rows);
            }
        }
    );
}
