/*
 * engine_device.c — the inference engine on a device backend (`--device cuda`; "cpu-guarded"
 * in the tests): the forward of infer.c's top comment written as fr_ops calls over FP32
 * weights, workspace and latent caches that live in the backend's memory. The host keeps the
 * rows' tokens and positions (uploaded once per forward), the experts' offsets (moe_permute
 * returns them) and the logits (one copy back per forward); it never reads a device pointer.
 *
 * Where it differs from the CPU forward (infer.c), and why:
 *  - linear layers are the backend's GEMM (cuBLAS) in FP32: the CPU engine's block formats
 *    and int8 activations are CPU kernels. A quantized folder is dequantized at load.
 *  - the absorbed projections read kv_b_proj in place, one strided GEMM per head:
 *      q_lat[n, h] = q_nope[n, h] W_UK[h]      (W_UK[h] = rows h*(nope+vd) .. +nope, [nope, kvr])
 *      o[n, h]     = ctx[n, h] W_UV[h]^T       (W_UV[h] = the next vd rows, [vd, kvr])
 *    writing straight into the rows of qf and att, where the CPU engine keeps transposed
 *    per-head copies for its matrix-vector kernels.
 *  - attention over the cache is fr_ops.latent_attention (split over the keys on a GPU).
 * So the logits agree with the CPU engine's to FP32 rounding, not bit for bit
 * (tests/test_engine_device.c).
 */
#include "infer/engine.h"
#include "model/model_internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int is_moe, mlp_inter;
    float *input_norm, *post_norm, *q_a_norm, *kv_a_norm;
    float *q_a, *q_b, *q, *kv_a, *kv_b, *o;   /* [out, in] as stored */
    float *mlp_gate, *mlp_up, *mlp_down;      /* the dense MLP, or the shared experts */
    float *router, *router_bias;              /* [E, H], [E] */
    float *exp_gate, *exp_up, *exp_down;      /* [E, Im, H], [E, Im, H], [E, H, Im] */
    float *enorm, *hnorm, *head_norm, *eh_proj; /* MTP module */
} dev_layer;

typedef struct fr_dev_engine fr_dev_engine;
struct fr_dev_engine {
    dev_layer *layers;                        /* L + mtp */
    float *embed, *final_norm, *lm_head;      /* lm_head == embed when tied */
    float *rope_cos, *rope_sin;               /* [max_len, rope / 2] */
    size_t weight_bytes;
    /* workspace for e->cap rows (shapes as infer.c's reserve) */
    float *x, *xn, *rstd, *tmp, *qa, *qan, *q, *kva, *kvn, *qf, *ctx, *att, *g, *u, *h;
    float *rl, *scores, *topw, *xe, *ge, *ue, *he, *ye, *ffn, *cat, *hid;
    int *topi, *perm, *slot, *pos, *tok;
    float *logits;                            /* [logit_rows, V] */
    int logit_rows;
    fr_gemm_desc *desc;                       /* host [E] */
};

/* ================================================================ loading */

/* Weights go up one at a time through one host buffer; the first failure sticks in rc and
 * every later call does nothing, so the loader reads top to bottom. */
typedef struct {
    fr_engine *e;
    const fr_st_set *st;
    int rc;
    float *host;
    size_t host_n;
} loader;

/* The FP32 values of tensor `name` ([rows, cols]; a vector: rows = 1, any shape with that many
 * values) into ld->host; a matrix in any stored format (Q8_0 / Q4_1 from `frugal quantize`
 * are dequantized). */
static int read_host(loader *ld, const char *name, int rows, int cols) {
    const size_t n = (size_t)rows * cols;
    if (n > ld->host_n) {
        float *p = realloc(ld->host, n * sizeof(float));
        if (!p) return fr_error(FR_ERR_NOMEM, "out of memory loading %s", name);
        ld->host = p;
        ld->host_n = n;
    }
    FR_CHECK(fr_engine_check_weight(ld->e, ld->st, name));
    if (rows == 1) {
        const fr_st_tensor *t = fr_st_set_find(ld->st, name);
        if (!t) return fr_error(FR_ERR_FORMAT, "tensor %s is missing from the checkpoint", name);
        if (t->numel != n) return fr_error(FR_ERR_FORMAT, "tensor %s has %zu values, expected %zu", name, t->numel, n);
        return fr_st_to_f32(t, ld->host, n);
    }
    fr_qmatrix m;
    FR_CHECK(fr_qmatrix_load(&m, ld->st, name, rows, cols, FR_QT_F32));
    memcpy(ld->host, m.data, n * sizeof(float));
    fr_qmatrix_free(&m);
    return FR_OK;
}

/* Tensor `name` (printf-style) into dst + offset floats of backend memory */
static void put(loader *ld, float *dst, size_t offset, int rows, int cols, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
static void put(loader *ld, float *dst, size_t offset, int rows, int cols, const char *fmt, ...) {
    if (ld->rc != FR_OK) return;
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    ld->rc = read_host(ld, name, rows, cols);
    if (ld->rc == FR_OK) ld->e->ops->to_device(dst + offset, ld->host, (size_t)rows * cols * sizeof(float));
}

/* n floats of backend memory (NULL once rc has failed) */
static float *dalloc(loader *ld, size_t n) {
    if (ld->rc != FR_OK) return NULL;
    float *p = ld->e->ops->alloc(n * sizeof(float));
    if (!p) ld->rc = fr_error(FR_ERR_NOMEM, "out of %s memory for the weights", ld->e->ops->name);
    else ld->e->dev->weight_bytes += n * sizeof(float);
    return p;
}

/* A new allocation holding tensor `name` */
#define WEIGHT(field, rows, cols, ...)                                      \
    do {                                                                    \
        (field) = dalloc(ld, (size_t)(rows) * (cols));                      \
        put(ld, (field), 0, (rows), (cols), __VA_ARGS__);                   \
    } while (0)

static void load_layer(loader *ld, dev_layer *ly, int index, int is_mtp) {
    const fr_config *c = &ld->e->cfg;
    const int H = c->hidden_size, nh = c->num_attention_heads, nope = c->qk_nope_head_dim;
    const int rope = c->qk_rope_head_dim, dqk = nope + rope, vd = c->v_head_dim;
    const int kvr = c->kv_lora_rank, qr = c->q_lora_rank;
    const char *pre = "model.layers";
    ly->is_moe = fr_config_layer_is_moe(c, index);
    if (is_mtp) {
        WEIGHT(ly->enorm, 1, H, "%s.%d.enorm.weight", pre, index);
        WEIGHT(ly->hnorm, 1, H, "%s.%d.hnorm.weight", pre, index);
        WEIGHT(ly->head_norm, 1, H, "%s.%d.shared_head.norm.weight", pre, index);
        WEIGHT(ly->eh_proj, H, 2 * H, "%s.%d.eh_proj.weight", pre, index);
    }
    WEIGHT(ly->input_norm, 1, H, "%s.%d.input_layernorm.weight", pre, index);
    WEIGHT(ly->post_norm, 1, H, "%s.%d.post_attention_layernorm.weight", pre, index);
    if (qr > 0) {
        WEIGHT(ly->q_a, qr, H, "%s.%d.self_attn.q_a_proj.weight", pre, index);
        WEIGHT(ly->q_a_norm, 1, qr, "%s.%d.self_attn.q_a_layernorm.weight", pre, index);
        WEIGHT(ly->q_b, nh * dqk, qr, "%s.%d.self_attn.q_b_proj.weight", pre, index);
    } else {
        WEIGHT(ly->q, nh * dqk, H, "%s.%d.self_attn.q_proj.weight", pre, index);
    }
    WEIGHT(ly->kv_a, kvr + rope, H, "%s.%d.self_attn.kv_a_proj_with_mqa.weight", pre, index);
    WEIGHT(ly->kv_a_norm, 1, kvr, "%s.%d.self_attn.kv_a_layernorm.weight", pre, index);
    WEIGHT(ly->kv_b, nh * (nope + vd), kvr, "%s.%d.self_attn.kv_b_proj.weight", pre, index);
    WEIGHT(ly->o, H, nh * vd, "%s.%d.self_attn.o_proj.weight", pre, index);
    const char *mlp = "mlp";
    int inter = c->intermediate_size;
    if (ly->is_moe) {
        const int E = c->n_routed_experts, Im = c->moe_intermediate_size;
        WEIGHT(ly->router, E, H, "%s.%d.mlp.gate.weight", pre, index);
        if (c->has_correction_bias) WEIGHT(ly->router_bias, 1, E, "%s.%d.mlp.gate.e_score_correction_bias", pre, index);
        const size_t gsz = (size_t)Im * H;
        ly->exp_gate = dalloc(ld, E * gsz);
        ly->exp_up = dalloc(ld, E * gsz);
        ly->exp_down = dalloc(ld, E * gsz);
        for (int x = 0; x < E; x++) {
            put(ld, ly->exp_gate, x * gsz, Im, H, "%s.%d.mlp.experts.%d.gate_proj.weight", pre, index, x);
            put(ld, ly->exp_up, x * gsz, Im, H, "%s.%d.mlp.experts.%d.up_proj.weight", pre, index, x);
            put(ld, ly->exp_down, x * gsz, H, Im, "%s.%d.mlp.experts.%d.down_proj.weight", pre, index, x);
        }
        mlp = "mlp.shared_experts";
        inter = c->n_shared_experts * Im;
    }
    ly->mlp_inter = inter;
    if (inter > 0) {
        WEIGHT(ly->mlp_gate, inter, H, "%s.%d.%s.gate_proj.weight", pre, index, mlp);
        WEIGHT(ly->mlp_up, inter, H, "%s.%d.%s.up_proj.weight", pre, index, mlp);
        WEIGHT(ly->mlp_down, H, inter, "%s.%d.%s.down_proj.weight", pre, index, mlp);
    }
}

int fr_dev_engine_build(fr_engine *e, const fr_st_set *st) {
    const fr_config *c = &e->cfg;
    const int H = c->hidden_size, V = c->vocab_size;
    fr_dev_engine *d = calloc(1, sizeof *d);
    if (!d) return fr_error(FR_ERR_NOMEM, "out of memory");
    e->dev = d;
    d->layers = calloc((size_t)(e->L + e->mtp), sizeof *d->layers);
    d->desc = calloc((size_t)(c->n_routed_experts > 0 ? c->n_routed_experts : 1), sizeof *d->desc);
    if (!d->layers || !d->desc) return fr_error(FR_ERR_NOMEM, "out of memory");
    loader L = {e, st, FR_OK, NULL, 0}, *ld = &L;
    for (int l = 0; l < e->L + e->mtp; l++) load_layer(ld, &d->layers[l], l, l >= e->L);
    WEIGHT(d->embed, V, H, "model.embed_tokens.weight");
    WEIGHT(d->final_norm, 1, H, "model.norm.weight");
    if (c->tie_word_embeddings) d->lm_head = d->embed;
    else WEIGHT(d->lm_head, V, H, "lm_head.weight");
    const size_t half = (size_t)c->qk_rope_head_dim / 2, nrope = (size_t)e->max_len * half;
    d->rope_cos = dalloc(ld, nrope);
    d->rope_sin = dalloc(ld, nrope);
    if (L.rc == FR_OK) {
        e->ops->to_device(d->rope_cos, e->rope_cos, nrope * sizeof(float));
        e->ops->to_device(d->rope_sin, e->rope_sin, nrope * sizeof(float));
    }
    free(L.host);
    return L.rc == FR_OK ? fr_device_status(e->ops, "loading the engine") : L.rc;
}

static void free_workspace(fr_engine *e) {
    fr_dev_engine *d = e->dev;
    float **f[] = {&d->x, &d->xn, &d->rstd, &d->tmp, &d->qa, &d->qan, &d->q, &d->kva, &d->kvn, &d->qf, &d->ctx,
                   &d->att, &d->g, &d->u, &d->h, &d->rl, &d->scores, &d->topw, &d->xe, &d->ge, &d->ue, &d->he,
                   &d->ye, &d->ffn, &d->cat, &d->hid, &d->logits};
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) { e->ops->free(*f[i]); *f[i] = NULL; }
    int **n[] = {&d->topi, &d->perm, &d->slot, &d->pos, &d->tok};
    for (size_t i = 0; i < sizeof n / sizeof n[0]; i++) { e->ops->free(*n[i]); *n[i] = NULL; }
    d->logit_rows = 0;
}

void fr_dev_engine_free(fr_engine *e) {
    fr_dev_engine *d = e ? e->dev : NULL;
    if (!d) return;
    const fr_ops *o = e->ops;
    free_workspace(e);
    for (int l = 0; d->layers && l < e->L + e->mtp; l++) {
        dev_layer *ly = &d->layers[l];
        float *w[] = {ly->input_norm, ly->post_norm, ly->q_a_norm, ly->kv_a_norm, ly->q_a, ly->q_b, ly->q,
                      ly->kv_a, ly->kv_b, ly->o, ly->mlp_gate, ly->mlp_up, ly->mlp_down, ly->router,
                      ly->router_bias, ly->exp_gate, ly->exp_up, ly->exp_down, ly->enorm, ly->hnorm,
                      ly->head_norm, ly->eh_proj};
        for (size_t i = 0; i < sizeof w / sizeof w[0]; i++) o->free(w[i]);
    }
    if (d->lm_head != d->embed) o->free(d->lm_head);
    o->free(d->embed);
    o->free(d->final_norm);
    o->free(d->rope_cos);
    o->free(d->rope_sin);
    free(d->layers);
    free(d->desc);
    free(d);
    e->dev = NULL;
}

int fr_dev_engine_reserve(fr_engine *e, int N) {
    fr_dev_engine *d = e->dev;
    free_workspace(e);
    const fr_config *c = &e->cfg;
    const size_t n = (size_t)N, H = c->hidden_size, nh = c->num_attention_heads;
    const size_t dqk = (size_t)c->qk_nope_head_dim + c->qk_rope_head_dim, vd = c->v_head_dim;
    const size_t kvr = c->kv_lora_rank, qr = c->q_lora_rank > 0 ? c->q_lora_rank : 1, row = e->row;
    const size_t E = c->n_routed_experts > 0 ? c->n_routed_experts : 1, K = c->num_experts_per_tok > 0 ? c->num_experts_per_tok : 1;
    const size_t Im = c->moe_intermediate_size > 0 ? c->moe_intermediate_size : 1;
    size_t inter = c->intermediate_size;
    if ((size_t)c->n_shared_experts * Im > inter) inter = (size_t)c->n_shared_experts * Im;
    struct { float **p; size_t n; } f[] = {
        {&d->x, n * H}, {&d->xn, n * H}, {&d->rstd, n}, {&d->tmp, n * H}, {&d->qa, n * qr}, {&d->qan, n * qr},
        {&d->q, n * nh * dqk}, {&d->kva, n * row}, {&d->kvn, n * kvr}, {&d->qf, n * nh * row},
        {&d->ctx, n * nh * kvr}, {&d->att, n * nh * vd}, {&d->g, n * inter}, {&d->u, n * inter},
        {&d->h, n * inter}, {&d->rl, n * E}, {&d->scores, n * E}, {&d->topw, n * K}, {&d->xe, n * K * H},
        {&d->ge, n * K * Im}, {&d->ue, n * K * Im}, {&d->he, n * K * Im}, {&d->ye, n * K * H}, {&d->ffn, n * H},
        {&d->cat, n * 2 * H}, {&d->hid, n * H}};
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
        if (!(*f[i].p = e->ops->alloc(f[i].n * sizeof(float)))) goto oom;
    struct { int **p; size_t n; } g[] = {{&d->topi, n * K}, {&d->perm, n * K}, {&d->slot, n * K}, {&d->pos, n}, {&d->tok, n}};
    for (size_t i = 0; i < sizeof g / sizeof g[0]; i++)
        if (!(*g[i].p = e->ops->alloc(g[i].n * sizeof(int)))) goto oom;
    return FR_OK;
oom:
    free_workspace(e);
    return fr_error(FR_ERR_NOMEM, "out of %s memory for the inference workspace (%d rows)", e->ops->name, N);
}

size_t fr_dev_engine_active_weight_bytes(const fr_engine *e) {
    /* FP32 everywhere: the dense parts, the shared experts and top-k routed experts, the head */
    const fr_config *c = &e->cfg;
    const size_t H = c->hidden_size, nh = c->num_attention_heads, nope = c->qk_nope_head_dim;
    const size_t rope = c->qk_rope_head_dim, vd = c->v_head_dim, kvr = c->kv_lora_rank, qr = c->q_lora_rank;
    size_t per = 2 * H + (qr > 0 ? qr * H + qr + nh * (nope + rope) * qr : nh * (nope + rope) * H) +
                 (kvr + rope) * H + kvr + nh * (nope + vd) * kvr + H * nh * vd;
    size_t floats = H /* embedding row */ + H + (size_t)c->vocab_size * H;
    for (int l = 0; l < e->L; l++) {
        floats += per;
        const dev_layer *ly = &e->dev->layers[l];
        floats += 3 * (size_t)ly->mlp_inter * H;
        if (ly->is_moe)
            floats += (size_t)c->n_routed_experts * H + 3 * (size_t)c->num_experts_per_tok * c->moe_intermediate_size * H;
    }
    return floats * sizeof(float);
}

/* ================================================================ forward */

/* y[N, out] = x[N, in] W^T */
static void linear(const fr_engine *e, float *y, const float *x, const float *W, int N, int out, int in) {
    e->ops->gemm(0, 1, N, out, in, 1.0f, x, in, W, in, 0.0f, y, out);
}

/* out[N,H] = SwiGLU MLP (the dense layers' or the shared experts', width ly->mlp_inter) of x */
static void mlp(fr_engine *e, const dev_layer *ly, float *out, const float *x, int N) {
    fr_dev_engine *d = e->dev;
    const int H = e->cfg.hidden_size, I = ly->mlp_inter;
    linear(e, d->g, x, ly->mlp_gate, N, I, H);
    linear(e, d->u, x, ly->mlp_up, N, I, H);
    e->ops->swiglu_forward(d->h, d->g, d->u, (size_t)N * I);
    linear(e, out, d->h, ly->mlp_down, N, H, I);
}

/* out[N,H] = DeepSeekMoE(x): routed experts (dropless, grouped GEMMs by expert) + shared */
static void moe(fr_engine *e, const dev_layer *ly, float *out, const float *x, int N) {
    fr_dev_engine *d = e->dev;
    const fr_ops *o = e->ops;
    const fr_config *c = &e->cfg;
    const int H = c->hidden_size, E = c->n_routed_experts, K = c->num_experts_per_tok, Im = c->moe_intermediate_size;
    const fr_route_params rp = fr_route_params_of(c);
    linear(e, d->rl, x, ly->router, N, E, H);
    o->moe_route_forward(d->topi, d->topw, d->scores, d->rl, ly->router_bias, N, &rp);
    o->moe_permute(d->perm, d->slot, e->offsets, d->topi, N, K, E); /* offsets: host */
    o->moe_dispatch_forward(d->xe, x, d->perm, N * K, H);
    const size_t gsz = (size_t)Im * H;
    /* gate and up: [cnt, H] x [Im, H]^T per expert; down: [cnt, Im] x [H, Im]^T */
    float *W[2] = {ly->exp_gate, ly->exp_up}, *Y[2] = {d->ge, d->ue};
    for (int k = 0; k < 2; k++) {
        int n = 0;
        for (int x_ = 0; x_ < E; x_++) {
            const int off = e->offsets[x_], cnt = e->offsets[x_ + 1] - off;
            if (cnt > 0)
                d->desc[n++] = (fr_gemm_desc){cnt, Im, H, d->xe + (size_t)off * H, H, W[k] + x_ * gsz, H,
                                              Y[k] + (size_t)off * Im, Im};
        }
        o->gemm_grouped(0, 1, 1.0f, 0.0f, d->desc, n);
    }
    o->swiglu_forward(d->he, d->ge, d->ue, (size_t)N * K * Im);
    int n = 0;
    for (int x_ = 0; x_ < E; x_++) {
        const int off = e->offsets[x_], cnt = e->offsets[x_ + 1] - off;
        if (cnt > 0)
            d->desc[n++] = (fr_gemm_desc){cnt, H, Im, d->he + (size_t)off * Im, Im, ly->exp_down + x_ * gsz, Im,
                                          d->ye + (size_t)off * H, H};
    }
    o->gemm_grouped(0, 1, 1.0f, 0.0f, d->desc, n);
    o->memset0(out, (size_t)N * H * sizeof(float));
    o->moe_combine_forward(out, d->ye, d->topw, d->slot, N, K, H);
    if (ly->mlp_inter > 0) {
        mlp(e, ly, d->tmp, x, N);
        o->add(out, out, d->tmp, (size_t)N * H);
    }
}

/* One decoder block over d->x [N,H] in place; rows of sequence s are row_start[s] .. [s+1]
 * at positions e->pos (host) / d->pos (device), their latents go to cache `ci`. */
static void layer_forward(fr_engine *e, const dev_layer *ly, int ci, fr_seq *const *seqs, int n_seqs,
                          const int *row_start, int N) {
    fr_dev_engine *d = e->dev;
    const fr_ops *o = e->ops;
    const fr_config *c = &e->cfg;
    const int H = c->hidden_size, nh = c->num_attention_heads, nope = c->qk_nope_head_dim;
    const int rope = c->qk_rope_head_dim, dqk = nope + rope, vd = c->v_head_dim;
    const int kvr = c->kv_lora_rank, qr = c->q_lora_rank, row = e->row;

    o->rmsnorm_forward(d->xn, d->rstd, d->x, H, ly->input_norm, N, H, c->rms_norm_eps);
    if (qr > 0) {
        linear(e, d->qa, d->xn, ly->q_a, N, qr, H);
        o->rmsnorm_forward(d->qan, d->rstd, d->qa, qr, ly->q_a_norm, N, qr, LATENT_EPS);
        linear(e, d->q, d->qan, ly->q_b, N, nh * dqk, qr);
    } else {
        linear(e, d->q, d->xn, ly->q, N, nh * dqk, H);
    }
    o->rope_forward(d->q, N, nh, nh * dqk, dqk, nope, rope, d->pos, d->rope_cos, d->rope_sin, c->rope_interleave);

    /* latent of the new tokens: [RMSNorm(c) | rotated k_pe] rows, appended to each cache */
    linear(e, d->kva, d->xn, ly->kv_a, N, row, H);
    o->rope_forward(d->kva, N, 1, row, 0, kvr, rope, d->pos, d->rope_cos, d->rope_sin, c->rope_interleave);
    o->rmsnorm_forward(d->kvn, d->rstd, d->kva, row, ly->kv_a_norm, N, kvr, LATENT_EPS);
    o->copy2d(d->kva, row, d->kvn, kvr, N, kvr);
    for (int s = 0; s < n_seqs; s++) {
        const int r0 = row_start[s], r1 = row_start[s + 1];
        if (r1 > r0)
            o->copy((float *)seqs[s]->kv[ci] + (size_t)e->pos[r0] * row, d->kva + (size_t)r0 * row,
                    (size_t)(r1 - r0) * row * sizeof(float));
    }

    /* absorbed queries qf[n, h] = [q_nope[n, h] W_UK[h] | q_pe[n, h]] */
    for (int h = 0; h < nh; h++)
        o->gemm(0, 0, N, kvr, nope, 1.0f, d->q + (size_t)h * dqk, nh * dqk, ly->kv_b + (size_t)h * (nope + vd) * kvr, kvr,
                0.0f, d->qf + (size_t)h * row, nh * row);
    o->copy2d(d->qf + kvr, row, d->q + nope, dqk, N * nh, rope);

    for (int s = 0; s < n_seqs; s++) {
        const int r0 = row_start[s], r1 = row_start[s + 1];
        if (r1 > r0)
            o->latent_attention(d->ctx + (size_t)r0 * nh * kvr, d->qf + (size_t)r0 * nh * row,
                                (const float *)seqs[s]->kv[ci], d->pos + r0, r1 - r0, nh, row, kvr, e->pos[r1 - 1] + 1,
                                e->scale);
    }

    /* o[n, h] = ctx[n, h] W_UV[h]^T, then o_proj */
    for (int h = 0; h < nh; h++)
        o->gemm(0, 1, N, vd, kvr, 1.0f, d->ctx + (size_t)h * kvr, nh * kvr,
                ly->kv_b + ((size_t)h * (nope + vd) + nope) * kvr, kvr, 0.0f, d->att + (size_t)h * vd, nh * vd);
    linear(e, d->tmp, d->att, ly->o, N, H, nh * vd);
    o->add(d->x, d->x, d->tmp, (size_t)N * H);

    o->rmsnorm_forward(d->xn, d->rstd, d->x, H, ly->post_norm, N, H, c->rms_norm_eps);
    if (ly->is_moe) moe(e, ly, d->ffn, d->xn, N);
    else mlp(e, ly, d->ffn, d->xn, N);
    o->add(d->x, d->x, d->ffn, (size_t)N * H);
}

/* Logits (host [rows, V]) of every row, or of each sequence's last, from d->x normed by norm_w */
static int head(fr_engine *e, const float *norm_w, int N, int n_seqs, const int *row_start, float *logits, int all) {
    fr_dev_engine *d = e->dev;
    const fr_ops *o = e->ops;
    const int H = e->cfg.hidden_size, V = e->cfg.vocab_size;
    o->rmsnorm_forward(d->xn, d->rstd, d->x, H, norm_w, N, H, e->cfg.rms_norm_eps);
    if (!logits) return fr_device_status(o, "the engine's forward");
    const int rows = all ? N : n_seqs;
    if (rows > d->logit_rows) {
        o->free(d->logits);
        d->logit_rows = 0;
        if (!(d->logits = o->alloc((size_t)rows * V * sizeof(float))))
            return fr_error(FR_ERR_NOMEM, "out of %s memory for %d rows of logits", o->name, rows);
        d->logit_rows = rows;
    }
    const float *src = d->xn;
    if (!all) {
        for (int s = 0; s < n_seqs; s++)
            o->copy(d->tmp + (size_t)s * H, d->xn + (size_t)(row_start[s + 1] - 1) * H, (size_t)H * sizeof(float));
        src = d->tmp;
    }
    linear(e, d->logits, src, d->lm_head, rows, V, H);
    o->to_host(logits, d->logits, (size_t)rows * V * sizeof(float));
    return fr_device_status(o, "the engine's forward");
}

static void upload_rows(fr_engine *e, int N) {
    e->ops->to_device(e->dev->tok, e->tok, (size_t)N * sizeof(int));
    e->ops->to_device(e->dev->pos, e->pos, (size_t)N * sizeof(int));
}

int fr_dev_engine_forward(fr_engine *e, fr_seq *const *seqs, int n_seqs, const int *row_start, int N, float *logits,
                          int all_logits) {
    fr_dev_engine *d = e->dev;
    const int H = e->cfg.hidden_size;
    upload_rows(e, N);
    e->ops->embedding_forward(d->x, d->embed, d->tok, N, H);
    for (int l = 0; l < e->L; l++) layer_forward(e, &d->layers[l], l, seqs, n_seqs, row_start, N);
    e->ops->copy(d->hid, d->x, (size_t)N * H * sizeof(float)); /* the MTP module's input */
    return head(e, d->final_norm, N, n_seqs, row_start, logits, all_logits);
}

int fr_dev_engine_mtp_forward(fr_engine *e, fr_seq *const *seqs, int n_seqs, const int *row_start, int N,
                              const int *hid_rows, float *logits) {
    fr_dev_engine *d = e->dev;
    const fr_ops *o = e->ops;
    const dev_layer *ly = &d->layers[e->L];
    const int H = e->cfg.hidden_size;
    const float eps = e->cfg.rms_norm_eps;
    upload_rows(e, N);
    for (int i = 0; i < N; i++)
        o->copy(d->tmp + (size_t)i * H, d->hid + (size_t)hid_rows[i] * H, (size_t)H * sizeof(float));
    /* eh_proj input: [RMSNorm_e(Emb(t)) ; RMSNorm_h(h)] (embedding first) */
    o->embedding_forward(d->x, d->embed, d->tok, N, H);
    o->rmsnorm_forward(d->xn, d->rstd, d->x, H, ly->enorm, N, H, eps);
    o->copy2d(d->cat, 2 * H, d->xn, H, N, H);
    o->rmsnorm_forward(d->xn, d->rstd, d->tmp, H, ly->hnorm, N, H, eps);
    o->copy2d(d->cat + H, 2 * H, d->xn, H, N, H);
    linear(e, d->x, d->cat, ly->eh_proj, N, H, 2 * H);
    layer_forward(e, ly, e->L, seqs, n_seqs, row_start, N);
    return head(e, ly->head_norm, N, n_seqs, row_start, logits, 0);
}
