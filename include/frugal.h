/*
 * frugal.h — public interface of libfrugal.
 *
 * libfrugal trains and runs DeepSeek-V3-architecture language models (MLA attention,
 * DeepSeekMoE, multi-token prediction) on CPUs, with checkpoints that are Hugging Face
 * model folders.
 *
 * Error convention: every function that can fail returns an int status (FR_OK == 0,
 * negative on failure) and records a human-readable message retrievable with
 * fr_last_error() from the same thread. Library code never prints and never exits.
 */
#ifndef FRUGAL_H
#define FRUGAL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FRUGAL_VERSION "0.1.0"

typedef enum {
    FR_OK = 0,
    FR_ERR_IO = -1,          /* file could not be opened, read, written or renamed */
    FR_ERR_FORMAT = -2,      /* a file is malformed (bad header, bad JSON, wrong shape) */
    FR_ERR_CONFIG = -3,      /* config.json is missing a key or holds an impossible value */
    FR_ERR_NOMEM = -4,       /* allocation failed */
    FR_ERR_ARG = -5,         /* the caller passed an invalid argument */
    FR_ERR_UNSUPPORTED = -6, /* valid input that this build does not implement */
    FR_ERR_STATE = -7        /* call order violated (e.g. backward without forward) */
} fr_status;

/* Message describing the last error on this thread ("" if none). */
const char *fr_last_error(void);

/* ------------------------------------------------------------------ config */

typedef enum { FR_SCORING_SIGMOID = 0, FR_SCORING_SOFTMAX = 1 } fr_scoring;

/* How experts are selected (config key "topk_method").
 * NOAUX_TC: DeepSeek-V3; group score = sum of the top-2 biased scores of the group.
 * GROUP_LIMITED_GREEDY: DeepSeek-V2; group score = max score of the group.
 * GREEDY: plain top-k over all experts (n_group ignored). */
typedef enum { FR_TOPK_NOAUX_TC = 0, FR_TOPK_GROUP_LIMITED_GREEDY = 1, FR_TOPK_GREEDY = 2 } fr_topk_method;

typedef enum { FR_ROPE_DEFAULT = 0, FR_ROPE_YARN = 1 } fr_rope_type;

/* Mirrors the Hugging Face DeepseekV3 / DeepseekV2 config.json. */
typedef struct {
    char model_type[32];      /* "deepseek_v3" or "deepseek_v2" */
    int vocab_size;
    int hidden_size;
    int intermediate_size;      /* dense MLP width (layers < first_k_dense_replace) */
    int moe_intermediate_size;  /* width of each routed expert; shared experts use n_shared * this */
    int num_hidden_layers;
    int num_attention_heads;
    int q_lora_rank;            /* 0 = null in config.json: plain q_proj */
    int kv_lora_rank;
    int qk_nope_head_dim;
    int qk_rope_head_dim;
    int v_head_dim;
    int n_routed_experts;       /* 0 = dense model */
    int n_shared_experts;
    int num_experts_per_tok;
    int n_group;
    int topk_group;
    fr_topk_method topk_method;
    fr_scoring scoring_func;
    int norm_topk_prob;
    float routed_scaling_factor;
    int first_k_dense_replace;
    int moe_layer_freq;
    int num_nextn_predict_layers; /* MTP depth D */
    int max_position_embeddings;
    double rope_theta;
    int rope_interleave;        /* 1: RoPE rotates adjacent pairs (DeepSeek); 0: halves */
    fr_rope_type rope_type;
    double rope_factor;
    int rope_original_max_position_embeddings;
    double rope_beta_fast, rope_beta_slow;
    double rope_mscale, rope_mscale_all_dim;
    float rms_norm_eps;
    int tie_word_embeddings;
    float initializer_range;
    int has_correction_bias;    /* e_score_correction_bias present (V3: yes, V2: no) */
    int bos_token_id, eos_token_id, pad_token_id; /* -1 when absent */
} fr_config;

/* Parse a Hugging Face config.json. Unknown architectures, missing keys and impossible
 * values fail with FR_ERR_CONFIG and a message naming the key. */
int fr_config_load(fr_config *cfg, const char *path);
int fr_config_parse(fr_config *cfg, const char *json_text, size_t len);
/* Check cross-key consistency (heads divide, top-k <= experts, ...). Called by the loaders. */
int fr_config_validate(const fr_config *cfg);
/* Write cfg as a transformers-loadable config.json (atomically). */
int fr_config_save(const fr_config *cfg, const char *path);

/* Is layer `layer` (0-based; MTP blocks have index >= num_hidden_layers) a MoE layer? */
int fr_config_layer_is_moe(const fr_config *cfg, int layer);

/* ------------------------------------------------------------------ model */

typedef struct fr_model fr_model;

/* Loss weights used by fr_model_forward when targets are given. */
typedef struct {
    float mtp_lambda;     /* weight of the MTP losses: total += lambda/D * sum_k CE_k */
    float balance_alpha;  /* weight of the sequence-wise balance loss (0 = off) */
} fr_loss_weights;

typedef struct {
    double loss;          /* total: main + mtp + balance */
    double loss_main;     /* mean cross-entropy of the main head over non-ignored targets */
    double loss_mtp[8];   /* mean cross-entropy of MTP module k (k < D) */
    double loss_balance;  /* alpha * sum over MoE layers of the mean-over-sequences balance loss */
    long n_targets;       /* non-ignored targets of the main head */
} fr_loss_info;

#define FR_IGNORE_INDEX (-100)

/* New model with freshly initialised parameters (normal(0, initializer_range) for
 * matrices, ones for norms, zeros for the routing bias), deterministic in `seed`. */
int fr_model_create(fr_model **out, const fr_config *cfg, uint64_t seed);
/* Load config.json + model.safetensors (or shards + index) from a Hugging Face folder. */
int fr_model_load(fr_model **out, const char *dir);
/* Write config.json + model.safetensors (F32) into dir, atomically per file. */
int fr_model_save(const fr_model *m, const char *dir);
void fr_model_free(fr_model *m);

const fr_config *fr_model_config(const fr_model *m);
void fr_model_set_loss_weights(fr_model *m, fr_loss_weights w);
size_t fr_model_num_params(const fr_model *m);
/* Parameters that one token activates (dense layers, shared + top-k routed experts). */
size_t fr_model_num_active_params(const fr_model *m);
/* Model FLOPs of one forward+backward over B×T tokens (6 × active matmul params per
 * token plus attention), counted from the config. */
double fr_model_train_flops(const fr_model *m, int B, int T);

/* Bytes of the activation arena (saved activations + backward scratch) that a forward and
 * backward over B x T tokens needs: the memory plan, computed from the config. */
size_t fr_model_activation_bytes(const fr_model *m, int B, int T);

/* Parameter / gradient access by Hugging Face tensor name. Returns NULL if absent.
 * `numel` (optional) receives the element count. */
float *fr_model_param(fr_model *m, const char *name, size_t *numel);
float *fr_model_grad(fr_model *m, const char *name, size_t *numel);
int fr_model_num_tensors(const fr_model *m);
/* i-th parameter tensor: name, shape (up to 4 dims). */
const char *fr_model_tensor_info(const fr_model *m, int i, int *ndim, int64_t shape[4]);

/* Forward over tokens[B*T]. If targets (B*T, FR_IGNORE_INDEX = skip) is non-NULL the loss
 * is computed (main head, MTP modules when the config has them, balance loss when
 * alpha > 0) and the pass is prepared for fr_model_backward. targets[b*T+t] is the token
 * that should follow tokens[b*T+t]. */
int fr_model_forward(fr_model *m, const int *tokens, const int *targets, int B, int T,
                     fr_loss_info *loss);
/* Logits [B*T, vocab] of the last forward (main head). */
const float *fr_model_logits(const fr_model *m);
/* Backward of the last forward with targets; ADDS into the gradients. */
int fr_model_backward(fr_model *m);
void fr_model_zero_grad(fr_model *m);

/* Mean next-token loss over sequences of different lengths (one per row). */
int fr_model_eval_sequences(fr_model *m, int n_seqs, const int *const *seqs,
                            const int *lens, double *mean_loss, long *n_predicted);

/* ------------------------------------------------------------------ runtime */

/* Threads used by the CPU backend (0 = OpenMP default). */
void fr_set_num_threads(int n);
/* Describes the CPU features found at run time, e.g. "avx2 fma". */
const char *fr_cpu_features(void);

#ifdef __cplusplus
}
#endif
#endif /* FRUGAL_H */
