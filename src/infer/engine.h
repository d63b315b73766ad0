/*
 * engine.h — the inference engine's state, private to its files: infer.c (loading, the CPU
 * forward, sequences) and engine_device.c (the forward on a device backend: weights, caches
 * and workspace in the backend's memory, every step an fr_ops call).
 */
#ifndef FR_ENGINE_H
#define FR_ENGINE_H

#include "infer/infer_internal.h"
#include "model/ops.h"
#include "cpu/qmatmul.h"
#include "cpu/ops_cpu.h"
#include "formats/qmatrix.h"
#include "formats/gguf.h"
#include "formats/safetensors.h"

/* q_a_layernorm / kv_a_layernorm use eps 1e-6 whatever rms_norm_eps says (as block.c). */
#define LATENT_EPS 1e-6f

typedef struct {
    int index, is_moe, mlp_inter;
    float *input_norm, *post_norm, *q_a_norm, *kv_a_norm;
    fr_qmatrix q_a, q_b, q, kv_a, o;
    fr_qmatrix *uk_t;   /* [nh]: W_UK[h]^T, [kv_lora_rank, qk_nope] */
    fr_qmatrix *uv;     /* [nh]: W_UV[h],   [v_head, kv_lora_rank] */
    fr_qmatrix mlp_gate, mlp_up, mlp_down;
    float *router, *router_bias;
    fr_qmatrix *exp_gate, *exp_up, *exp_down; /* [E] */
    /* MTP module */
    float *enorm, *hnorm, *head_norm;
    fr_qmatrix eh_proj;
} eng_layer;

struct fr_dev_engine; /* engine_device.c */

struct fr_engine {
    fr_config cfg;
    fr_engine_options opt;
    /* Mapped checkpoint: F32 / BF16 matrices stored in the wanted format are used in place
     * from the safetensors mapping (pages are read when first touched), so a checkpoint larger
     * than RAM opens and only the weights a token uses are read. Kept open while in use. */
    fr_st_set st;
    int mapped;                 /* the engine owns `st` (closed by fr_engine_free) */
    int map_weights;            /* while building: wrap matrices from the mapping */
    const fr_ops *ops;
    int L, mtp;                 /* main layers; MTP modules loaded (0/1) */
    eng_layer *layers;          /* L + mtp */
    float *embed, *final_norm;  /* [V,H], [H]; embed NULL: a GGUF's token_embd, read in place: */
    const unsigned char *embed_rows; /* row t (ggml type embed_type) at embed_rows + t * embed_row_bytes */
    size_t embed_row_bytes;
    int embed_type;
    fr_qmatrix lm_head;
    float *rope_cos, *rope_sin; /* [max_len, rope/2] */
    float scale;
    int max_len, row;           /* row = kv_lora_rank + qk_rope_head_dim */
    size_t row_bytes;           /* stored bytes of one cached row */

    /* workspace for `cap` rows */
    int cap;
    float *x, *xn, *rstd, *tmp, *qa, *qan, *q, *kva, *kvn, *qn, *qlat, *qf, *ctx, *atth, *att;
    float *g, *u, *h, *rl, *scores, *topw, *xe, *ge, *ue, *he, *ye, *ffn, *cat, *hid, *lrow;
    int *topi, *perm, *slot, *offsets, *pos, *seq_of, *tok;
    fr_qmatmul_job *jobs;       /* [max(2 E + 2, heads)] products of one MoE round / all heads */
    float *att_scratch;         /* [att_threads][ATT_HEAD_GROUP = 4 heads][max_len] (infer.c) */
    float *att_heads;           /* [heads][max_len] scores of one decoded row, all heads */
    float *deq;                 /* [max_len, row] dequantized cache of one sequence */
    float *kblock;              /* [att_threads][FR_ATT_BLOCK_KEYS * row] a lossy cache's block of
                                 * keys as FP32, per thread (decode_row.c) */
    int att_threads;
    int threads;                /* requested threads (0 = OpenMP default), applied per calling thread */
    fr_gov gov;                 /* all threads or one for decode-sized forwards (governor.c) */
    int governed;               /* opt.adaptive_threads */
    struct fr_dev_engine *dev;  /* non-NULL: the engine runs on a device backend (engine_device.c) */
    /* A deepseek2 GGUF run as stored (fr_engine_load of a .gguf on the CPU): weights are read
     * from `gguf`'s mapping (F32, BF16 in place; Q8_0, Q4_0, Q4_1 rearranged without changing
     * a value), `gg` points at it while loading and after. */
    fr_gguf gguf;
    const fr_gguf *gg;
    int as_stored;              /* each GGUF matrix keeps its own format (weight_type was -1) */
    int folder_stored;          /* a folder's quantized matrices keep their own format (weight_type
                                 * was -1): the mixes of `frugal quantize --type q4_k_m` */
    int scheme;                 /* folder_stored and written by `frugal quantize` in a GGUF export's
                                 * scheme: that scheme (gguf.h), whose per-tensor types and
                                 * encoders the matrices it keeps in FP32 take at load; else -1 */
};

struct fr_seq {
    fr_engine *e;
    int len, mtp_len, cap;
    unsigned char **kv;         /* [L + mtp] caches of cap rows */
    int *ids;                   /* [cap] the tokens behind the main cache's rows (for prefix reuse) */
};


/* ---- engine_device.c: the engine on a device backend (e->ops->host_memory == 0). The CPU
 * engine's matrices, workspace and caches stay empty; weights are FP32 in backend memory, the
 * latent caches of fr_seq.kv are backend allocations, and one forward is a sequence of fr_ops
 * calls, so any backend of ops.h (cuda, cpu-guarded) runs it. */
/* Upload the weights of `st` (any stored format, converted to FP32) and the RoPE tables. */
int fr_dev_engine_build(fr_engine *e, const fr_st_set *st);
void fr_dev_engine_free(fr_engine *e);
/* Device workspace for N rows (after the host arrays of reserve()) */
int fr_dev_engine_reserve(fr_engine *e, int N);
/* The forward of N prepared rows (e->tok, e->pos, row_start; caches grown): the main model,
 * or MTP module 1 with main hidden rows hid_rows. logits: host [n_seqs or N, V], or NULL. */
int fr_dev_engine_forward(fr_engine *e, fr_seq *const *seqs, int n_seqs, const int *row_start, int N, float *logits,
                          int all_logits);
int fr_dev_engine_mtp_forward(fr_engine *e, fr_seq *const *seqs, int n_seqs, const int *row_start, int N,
                              const int *hid_rows, float *logits);
size_t fr_dev_engine_active_weight_bytes(const fr_engine *e);
/* The load-time finiteness check of one weight (infer.c; fr_engine_options.no_check skips it) */
int fr_engine_check_weight(const fr_engine *e, const fr_st_set *st, const char *name);
/* Build an engine for cfg from the tensors of st (a safetensors checkpoint or a model in
 * memory; map: use F32 / BF16 tensors in place) or of gg (a GGUF as stored); `what` names the
 * source in errors; scheme: fr_engine_folder_scheme of a folder, else -1 (infer.c). */
int fr_engine_build(fr_engine **out, const fr_config *cfg, const fr_st_set *st, const fr_gguf *gg,
                    const fr_engine_options *opt, const char *what, int map, int scheme);

/* Keys per block of a decoded row's attention (decode_row.c: blocks that stay in L2) */
#define FR_ATT_BLOCK_KEYS 32

/* ---- infer.c: one cached row (e->row_bytes at src) as FP32 (e->row floats) */
void fr_engine_cache_load(const fr_engine *e, float *dst, const unsigned char *src);

/* ---- infer.c: y[M, rows] = x[M, cols] W^T for the engine's matrices (the path each format and
 * size is fastest on), and independent products together (one parallel region when they allow) */
void fr_engine_linear(float *y, const float *x, const fr_qmatrix *w, int M);
void fr_engine_linear_batch(const fr_qmatmul_job *jobs, int n);

/* ---- decode_row.c: the attention heads and routed experts of decode-sized forwards, each
 * thread on its own heads and experts from start to end */
/* Decode-sized forwards (up to FR_DECODE_ROWS rows: a decoded token, a speculative pair, a small
 * batch of sequences) take decode_row.c's path */
#define FR_DECODE_ROWS 4
/* The absorbed attention of the N rows from e->qan (RMSNorm of q_a x) to e->att [N, heads * v_head]:
 * q_b, RoPE, W_UK, each row's attention over its sequence's cache ci up to its position, W_UV */
void fr_engine_attention_rows(fr_engine *e, const eng_layer *ly, fr_seq *const *seqs, int ci, int N);
/* The routed experts of the N rows (routed and dispatched: e->offsets, e->perm, e->xe) into
 * e->ye, and the shared ones into e->tmp */
void fr_engine_moe_rows(fr_engine *e, const eng_layer *ly, const float *x, int N);
/* Heads [h0, h1) of N rows: the absorbed queries qf[i][h] = [W_UK[h]^T q_nope[i][h] | q_pe[i][h]]
 * from e->q (rotated), and the values att[i][h] = W_UV[h] ctx[h][i]; the many-row path calls
 * them for all heads, decode_row.c for each thread's */
void fr_engine_absorb_queries(fr_engine *e, const eng_layer *ly, int h0, int h1, int N);
void fr_engine_head_values(fr_engine *e, const eng_layer *ly, int h0, int h1, int N);
/* Attention of decoded row i of N (its absorbed queries in e->qf) over K, all heads, into e->ctx */
void fr_engine_attend_row(fr_engine *e, int i, int N, int n_keys, const float *K);
void fr_engine_softmax_scores(const fr_cpu_vec *vo, float *sc, int n);
int fr_engine_blocked_attention(void);
int fr_engine_fused_decode(void);

/* ---- engine_gguf.c: a deepseek2 GGUF as stored */
int fr_engine_load_gguf(fr_engine **out, const char *path, const fr_engine_options *opt);
/* The GGUF tensor of HF parameter `name`, its finiteness checked (unless no_check) */
int fr_engine_gguf_view(const fr_engine *e, const char *name, fr_gguf_view *v);
/* Layer `index`'s absorbed projections from a split GGUF's attn_k_b / attn_v_b heads, as stored
 * or as uk_type / uv_type when the engine's weight type was given */
int fr_engine_gguf_kv_b(fr_engine *e, eng_layer *ly, int index, fr_qtype uk_type, fr_qtype uv_type);
/* Give back the mapped pages of the tensors the engine holds copies of (all but F32 and BF16) whose
 * names start with prefix (NULL: all) */
void fr_engine_gguf_release(const fr_engine *e, const char *prefix);
/* A K-format matrix that points into the GGUF's mapping gets memory of its own (engine_gguf.c) */
int fr_engine_own_matrix(fr_qmatrix *m, const char *name);
/* A folder of `frugal quantize` held to the blocks of the GGUF of its scheme (engine_gguf.c):
 * the scheme its config.json names (quantization_config.format), or -1; */
int fr_engine_folder_scheme(const char *dir);
/* matrix `name` [rows, cols], stored as floats, encoded as that GGUF encodes it in ggml_type; */
int fr_engine_folder_mat(const fr_engine *e, fr_qmatrix *m, const fr_st_set *st, const char *name, int rows, int cols,
                         int ggml_type);
/* the embedding table [V, H] as that GGUF's token_embd gives it (FP32 rows into *out): the stored
 * blocks dequantized, or, stored as floats, quantized to token_embd's type and back. */
int fr_engine_folder_embed(const fr_engine *e, const fr_st_set *st, int V, int H, float **out);

#endif
