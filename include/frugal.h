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
    double loss;          /* total: main + mtp + balance; with distillation (fr_model_set_distill)
                           * the main head's share is (1 - alpha) main + alpha T^2 kd */
    double loss_main;     /* mean cross-entropy of the main head over non-ignored targets */
    double loss_mtp[8];   /* mean cross-entropy of MTP module k (k < D) */
    double loss_balance;  /* alpha * sum over MoE layers of the mean-over-sequences balance loss */
    long n_targets;       /* non-ignored targets of the main head */
    double loss_kd;       /* distillation: mean KL(teacher_T || student_T) over the targets; else 0 */
} fr_loss_info;

#define FR_IGNORE_INDEX (-100)

/* New model with freshly initialised parameters (normal(0, initializer_range) for
 * matrices, ones for norms, zeros for the routing bias), deterministic in `seed`. */
int fr_model_create(fr_model **out, const fr_config *cfg, uint64_t seed);
/* Load config.json + model.safetensors (or shards + index) from a Hugging Face folder.
 * Every parameter is checked to be finite: a NaN or Inf fails the load with a message naming
 * the tensor and the first bad index. */
int fr_model_load(fr_model **out, const char *dir);
/* fr_model_load with flags: FR_LOAD_NO_CHECK skips the finiteness check. */
#define FR_LOAD_NO_CHECK 1
int fr_model_load_flags(fr_model **out, const char *dir, int flags);
/* Load a llama.cpp `deepseek2` GGUF file (as written by `frugal convert --to gguf`; F32, F16,
 * BF16, Q8_0 or Q4_0 tensors, dequantized to FP32). The config comes from the deepseek2.*
 * metadata (a missing key is named in the error); GGUF holds no MTP layers, so
 * num_nextn_predict_layers is 0, and RoPE rows are in pair order, so rope_interleave is 1. */
int fr_model_load_gguf(fr_model **out, const char *path);
/* Write config.json + model.safetensors (F32) into dir, atomically per file. */
int fr_model_save(const fr_model *m, const char *dir);
void fr_model_free(fr_model *m);

const fr_config *fr_model_config(const fr_model *m);
void fr_model_set_loss_weights(fr_model *m, fr_loss_weights w);
/* Compute precision of the linear layers inside the blocks (MLA projections, dense MLP,
 * shared and routed experts) and of the MTP modules' eh_proj. Embedding, router, norms,
 * attention, master weights, gradients and the optimizer stay FP32 in all.
 *  "fp32"  the default.
 *  "bf16"  the inputs of all three GEMMs of each of these layers, and of the output head,
 *          rounded to bfloat16, FP32 accumulation: oneDNN's matmul on AMX, or on AVX512-BF16 where that beats
 *          FP32 (not on Intel cores), an exact emulation (no faster than fp32) elsewhere; fr_bf16_gemm_path()
 *          says which.
 *  "fp8"   DeepSeek-V3's recipe: the inputs of the three GEMMs in E4M3 with FP32 scales per
 *          1 x 128 tile (activations, output gradients), 128 x 128 block (weights) or
 *          128 x 1 tile (both inputs of the weight-gradient GEMM), FP32 accumulation; the
 *          output head stays FP32. On the
 *          CPU the FP8 GEMMs are emulated (exactly decoded E4M3 values through the FP32 GEMM).
 * FR_ERR_ARG for another name. A forward or backward whose FP8 GEMM input holds a NaN or Inf
 * fails with FR_ERR_STATE. */
int fr_model_set_precision(fr_model *m, const char *precision);
const char *fr_model_precision(const fr_model *m);
/* The experiment DeepSeek-V3 reports diverging: tile_rows 128 quantizes the output gradients
 * entering the FP8 input-gradient GEMM in 128 x 128 blocks instead of 1 x 128 tiles (1, the
 * default). FR_ERR_ARG for other values. */
int fr_model_set_fp8_grad_tiles(fr_model *m, int tile_rows);
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
/* Forward for evaluation: main head only (no MTP, no balance loss); the loss is
 * loss->loss_main over loss->n_targets. Not backpropagatable. */
int fr_model_forward_eval(fr_model *m, const int *tokens, const int *targets, int B, int T,
                          fr_loss_info *loss);
/* Logits [B*T, vocab] of the last forward (main head). */
const float *fr_model_logits(const fr_model *m);
/* Backward of the last forward with targets; ADDS into the gradients. */
int fr_model_backward(fr_model *m);
void fr_model_zero_grad(fr_model *m);

/* Logit distillation on the next training forward with targets (src/model/kd.c): at every
 * position the teacher's k largest logits topk_idx / topk_logit [B*T, k] (distinct ids) and its
 * log-sum-exp at the temperature over the whole vocabulary, teacher_lse [B*T], all in host
 * memory and kept by the caller until that forward returns; temperature T > 0, alpha in
 * [0, 1]. The main head's loss becomes alpha T^2 KL + (1 - alpha) CE, the KL between teacher
 * and student at T over the top k plus one bucket for the rest of the vocabulary. NULL arrays
 * turn it off. Evaluation forwards ignore it. FR_ERR_UNSUPPORTED on a device backend. */
int fr_model_set_distill(fr_model *m, const int32_t *topk_idx, const float *topk_logit, const float *teacher_lse, int k,
                         float temperature, float alpha);

/* ---- LoRA adapters (src/model/lora.c)
 * fr_model_add_lora adds a low-rank adapter to every linear layer of the main layers that
 * `targets` names (comma-separated: q_proj, q_a_proj, q_b_proj, kv_a_proj_with_mqa,
 * kv_b_proj, o_proj, mlp (dense layers), shared_experts, experts (every routed expert), or
 * all): y = W x + scale * B (A x), A [rank, in] uniform in +-1/sqrt(in), B [out, rank] zero,
 * scale = alpha / rank (rslora: alpha / sqrt(rank)). From then on the base tensors are frozen:
 * no weight gradients for the linear layers, no optimizer state; fr_model_save writes the base
 * model only. FR_ERR_ARG for an unknown target (the message lists the valid names) or
 * targets that match nothing. */
int fr_model_add_lora(fr_model *m, int rank, double alpha, const char *targets, int rslora, uint64_t seed);
/* Number of adapted matrices (0 without adapters). */
int fr_model_lora_sites(const fr_model *m);
/* The valid target names, for messages; FR_ERR_ARG naming the first unknown one in list. */
const char *fr_lora_target_names(void);
int fr_lora_check_targets(const char *list);
/* Write the adapters as a PEFT folder: adapter_config.json (target_modules as one regex) and
 * adapter_model.safetensors (PEFT's names: base_model.model.<module>.lora_A.weight). */
int fr_model_lora_save(const fr_model *m, const char *dir, const char *base_model);
/* Read adapter weights saved by fr_model_lora_save (or PEFT, same targets) into the added
 * adapters; r, lora_alpha and rslora must match. */
int fr_model_lora_load(fr_model *m, const char *dir);
/* QLoRA-style: keep the frozen base's block linears (attention projections, MLPs, experts,
 * eh_proj; not the embedding, head and routers) as "bf16" or "q8_0" ("f32": nothing done),
 * dequantized span by span for each product, and release their FP32 pages and the base's
 * gradient pages. The model then computes exactly what the FP32 model with the dequantized
 * weights computes. CPU backend only; after it fr_model_save refuses (the base's FP32 weights
 * are gone). fr_model_lora_base_bytes: bytes of the quantized copies (*fp32_bytes: what they
 * replaced). */
int fr_model_lora_quantize_base(fr_model *m, const char *type);
size_t fr_model_lora_base_bytes(const fr_model *m, size_t *fp32_bytes);
/* Fold a PEFT LoRA adapter folder (any targets) into the weights: W += scale * B A.
 * DoRA, fan_in_fan_out and per-module rank / alpha patterns are refused. */
int fr_model_merge_adapter(fr_model *m, const char *dir);

/* MoE blocks: main MoE layers in order, then the MoE blocks of the MTP modules. */
int fr_model_num_moe_blocks(const fr_model *m);
/* Routed-expert assignment counts of the last forward: counts[i * n_routed_experts + e] for
 * MoE block i; layer_index[i] (optional) receives the block's layer number as in tensor
 * names (MTP blocks: >= num_hidden_layers). MTP blocks report zeros after a forward
 * without targets (they do not run then). */
int fr_model_expert_counts(const fr_model *m, long *counts, int *layer_index);

/* Mean next-token loss over sequences of different lengths (one per row). */
int fr_model_eval_sequences(fr_model *m, int n_seqs, const int *const *seqs,
                            const int *lens, double *mean_loss, long *n_predicted);

/* ------------------------------------------------------------------ tokenizer */

/* Byte-level BPE tokenizer compatible with Hugging Face `tokenizers` (tokenizer.json with a
 * BPE model, ByteLevel pre-tokenizer/decoder, a GPT-4/DeepSeek-V3 style split regex run
 * through PCRE2, and added special tokens that are never split). Thread-safe for
 * concurrent encode/decode on one tokenizer. */
typedef struct fr_tokenizer fr_tokenizer;

typedef enum { FR_TOKEN_BOS = 0, FR_TOKEN_EOS = 1, FR_TOKEN_PAD = 2 } fr_special_token;

/* `path` is a folder holding tokenizer.json (and optionally tokenizer_config.json, whose
 * bos/eos/pad tokens and chat_template are read) or a tokenizer.json file. */
int fr_tokenizer_load(fr_tokenizer **out, const char *path);
/* The tokenizer of a GGUF file (tokenizer.ggml.*: gpt2 byte-level BPE with pre-tokenizer
 * deepseek-v3, llama-bpe or gpt-2; bos/eos/pad ids and chat template). */
int fr_tokenizer_load_gguf(fr_tokenizer **out, const char *path);
/* Write tokenizer.json and tokenizer_config.json (with chat template) into dir, atomically. */
int fr_tokenizer_save(const fr_tokenizer *tok, const char *dir);
void fr_tokenizer_free(fr_tokenizer *tok);
/* Number of ids (BPE vocabulary plus added tokens). */
int fr_tokenizer_vocab_size(const fr_tokenizer *tok);
/* Encode len bytes of text (any bytes, not necessarily valid UTF-8). When parse_special
 * is nonzero, special-token strings in the text become their ids; otherwise they are
 * encoded as ordinary text. *ids is malloc'd (caller frees). */
int fr_tokenizer_encode(const fr_tokenizer *tok, const char *text, size_t len, int parse_special,
                        int **ids, size_t *n_ids);
/* Decode ids back to bytes (NUL-terminated, *len excludes the NUL; caller frees). Decoding
 * an encoding gives back exactly the input bytes. skip_special drops special tokens. */
int fr_tokenizer_decode(const fr_tokenizer *tok, const int *ids, size_t n_ids, int skip_special,
                        char **text, size_t *len);
/* Token string as stored in tokenizer.json (byte-level alphabet), NULL if out of range. */
const char *fr_tokenizer_id_to_token(const fr_tokenizer *tok, int id);
/* The ids below vocab_size that tok cannot decode: ids past its size (a model vocab_size
 * padded to a multiple of 64 or 128) and gaps inside it, in increasing order, keep_id
 * excepted (-1: none; generation keeps the EOS id, on which it stops without decoding).
 * Generation masks them so they are never drawn. *ids is malloc'd (NULL when there are
 * none). FR_ERR_ARG when that would be every id. */
int fr_tokenizer_undecodable_ids(const fr_tokenizer *tok, int vocab_size, int keep_id, int **ids, int *n_ids);
/* Id of a token string (vocabulary or added token), -1 if absent. */
int fr_tokenizer_token_to_id(const fr_tokenizer *tok, const char *token);
/* Id of the BOS/EOS/PAD token, -1 if the tokenizer has none. */
int fr_tokenizer_special_id(const fr_tokenizer *tok, fr_special_token which);
int fr_tokenizer_is_special(const fr_tokenizer *tok, int id);
/* Jinja chat template from tokenizer_config.json ("" if none). */
const char *fr_tokenizer_chat_template(const fr_tokenizer *tok);

typedef struct {
    int vocab_size;           /* total ids including the 256 byte tokens and specials */
    int min_frequency;        /* pairs seen fewer times are not merged (0 or 1 = no limit) */
    const char *const *special_tokens; /* added first, ids 0..n_special-1; NULL = DeepSeek set */
    int n_special;
    const char *bos_token, *eos_token, *pad_token; /* must be among the specials; NULL = defaults */
    int num_threads;          /* 0 = all cores */
    /* Optional progress report: frac in [0,1]; return nonzero to cancel (FR_ERR_STATE). */
    int (*progress)(void *user, double frac, const char *phase);
    void *progress_user;
} fr_bpe_train_options;

/* Train a byte-level BPE tokenizer on text files (JSONL files: the "text" field of each line). */
int fr_tokenizer_train(fr_tokenizer **out, const char *const *files, int n_files,
                       const fr_bpe_train_options *opt);

/* ------------------------------------------------------------------ token shards */

/* A prepared dataset is a folder with train_NNNNN.bin / val_NNNNN.bin shards, meta.json and
 * a copy of the tokenizer. Shard layout (little-endian), documented in docs/data.md:
 *   bytes 0..7   magic "FRUGALTK"     bytes 8..11  version (1)
 *   bytes 12..15 token width (2 or 4) bytes 16..23 token count
 *   bytes 24..27 vocab size           bytes 28..31 end-of-text id
 *   bytes 32..63 reserved (zero)      then `count` tokens of `width` bytes
 * Documents are separated by the end-of-text token. */
typedef struct {
    const char *tokenizer_dir;
    const char *const *inputs;  /* files or directories (recursed); .jsonl uses the "text" field */
    int n_inputs;
    const char *output_dir;
    double val_fraction;        /* fraction of documents for validation (deterministic) */
    uint64_t shard_tokens;      /* tokens per shard (0 = 100M) */
    int num_threads;            /* 0 = all cores */
    int (*progress)(void *user, double frac, const char *phase);
    void *progress_user;
} fr_data_prepare_options;

typedef struct {
    uint64_t train_tokens, val_tokens;
    uint64_t train_docs, val_docs;
    uint64_t bytes_in;
} fr_data_stats;

/* Tokenize the inputs into opt->output_dir (built in output_dir.tmp-PID, renamed at the end;
 * removed on failure or cancel). An existing non-empty output folder is refused. Documents
 * go to "val" by a hash of their bytes (see docs/data.md), the same for any thread count. */
int fr_data_prepare(const fr_data_prepare_options *opt, fr_data_stats *stats);
/* As fr_data_prepare, but an existing output folder holding a prepared dataset (meta.json)
 * is replaced, only after the new one is complete. */
int fr_data_prepare_replace(const fr_data_prepare_options *opt, fr_data_stats *stats);

/* Fine-tuning data (src/text/sft_prepare.c): chat conversations, one JSON object per line
 * ({"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}), rendered
 * with the chat template of the tokenizer in tokenizer_dir and packed into the shards of
 * fr_data_prepare with a loss mask beside each (fr_chat_encode_masked: the assistant
 * replies are the targets). A line without an assistant turn is skipped and counted; a
 * malformed line fails naming its number. A conversation goes to "val" by a hash of its
 * line (val_fraction of them). output_dir must not exist; it is written as
 * output_dir.tmp-PID and renamed when complete. */
typedef struct {
    const char *tokenizer_dir;
    const char *input;          /* chat JSONL */
    const char *output_dir;
    double val_fraction;        /* [0, 1) */
} fr_sft_prepare_options;

typedef struct {
    long conversations, skipped_no_assistant;
    long train_conversations, val_conversations;
    uint64_t train_tokens, val_tokens, train_targets, val_targets;
} fr_sft_stats;

int fr_sft_prepare(const fr_sft_prepare_options *o, fr_sft_stats *stats);

/* Read access to one split ("train" or "val") of a prepared dataset (shards are mmap'd). */
typedef struct fr_dataset fr_dataset;
int fr_dataset_open(fr_dataset **out, const char *dir, const char *split);
void fr_dataset_close(fr_dataset *ds);
uint64_t fr_dataset_num_tokens(const fr_dataset *ds);
int fr_dataset_vocab_size(const fr_dataset *ds);
int fr_dataset_eot_id(const fr_dataset *ds);
/* Copy n tokens starting at global position pos (across shard boundaries). */
int fr_dataset_read(const fr_dataset *ds, uint64_t pos, int *dst, size_t n);
/* Loss masks (fine-tuning data, fr_sft_prepare): 1 when every shard of the split has one (a
 * byte per token, 1 = the token is a training target, 0 = context only), 0 when none has.
 * fr_dataset_read_mask copies n mask bytes from global position pos (all 1 without masks). */
int fr_dataset_has_mask(const fr_dataset *ds);
int fr_dataset_read_mask(const fr_dataset *ds, uint64_t pos, unsigned char *dst, size_t n);
/* Bytes per stored token (2 or 4), number of shards, and path / token count of shard i. */
int fr_dataset_token_width(const fr_dataset *ds);
int fr_dataset_num_shards(const fr_dataset *ds);
int fr_dataset_shard_info(const fr_dataset *ds, int i, const char **path, uint64_t *n_tokens);

/* ------------------------------------------------------------------ run ledger */

/* The ledger is an append-only JSONL file shared by all runs of a project: every run,
 * finished, interrupted, crashed or experimental, is recorded, so `frugal cost` can print
 * the final-run cost next to the lifecycle cost. A run appends a "begin" record, "progress"
 * records while it works (fr_train: at every checkpoint and every 30 s) and an "end" record; a run whose
 * last record is not "end" was killed and counts as crashed with its last progress.
 * Each record is one write(2) of one line to an O_APPEND descriptor followed by fsync, so
 * concurrent runs never interleave and a torn last line (power loss) is skipped on read. */

typedef struct {
    double usd_per_device_hour; /* price of one device-hour (CPU core-hour or GPU-hour) */
    double watts_per_device;    /* power drawn by one device (core or GPU) under load */
    double usd_per_kwh;         /* electricity price; energy cost is reported separately */
} fr_prices;

/* Defaults: CPU core-hour $0.02, 8 W per core; GPU-hour $2.00 (the DeepSeek-V3 report's
 * H800 rental assumption), 700 W per GPU; $0.15 per kWh. */
fr_prices fr_prices_default(int gpu);

typedef struct {
    char run_id[64];        /* unique: <UTC timestamp>-<pid>-<random> */
    char kind[16];          /* "train", "distill", "experiment", ... */
    char status[16];        /* "running", "finished", "interrupted", "crashed", "failed" */
    char run_dir[512];
    char config[512];       /* model config path or name */
    char device[64];        /* "cpu", "cuda:H100", ... */
    char precision[8];      /* compute precision of the run ("fp32", "bf16", "fp8"; "" = not recorded) */
    int n_devices;          /* cores or GPUs charged for */
    double start_unix;      /* seconds since the epoch */
    double wall_s;          /* elapsed wall time so far */
    long steps;
    double tokens;          /* training tokens processed */
    double flops;           /* model FLOPs executed (exact count from the config) */
    double device_hours;    /* wall_s * n_devices / 3600 */
    double energy_kwh;      /* device_hours * watts_per_device / 1000 */
    double cost_usd;        /* device_hours * usd_per_device_hour */
    double final_loss;      /* last training loss (NaN if none) */
    double val_loss;        /* last validation loss (NaN if none) */
} fr_ledger_entry;

/* Fill the derived fields (device_hours, energy_kwh, cost_usd) of e from wall_s, n_devices
 * and prices. */
void fr_ledger_price(fr_ledger_entry *e, const fr_prices *prices);
/* Create a run id into e->run_id and append a "begin" record. */
int fr_ledger_begin(const char *ledger_path, fr_ledger_entry *e);
/* Append a "progress" record (status "running") or the "end" record (any other status). */
int fr_ledger_update(const char *ledger_path, const fr_ledger_entry *e);
/* Read the ledger: one entry per run (latest record wins; a run without an end record gets
 * status "running" while its trainer still holds the run folder's lock, else "crashed").
 * *entries is malloc'd. Torn or malformed lines are skipped and
 * counted in *n_skipped (optional). A missing file is an empty ledger. */
int fr_ledger_read(const char *ledger_path, fr_ledger_entry **entries, int *n_entries,
                   int *n_skipped);

/* ------------------------------------------------------------------ training */

typedef enum { FR_LR_COSINE = 0, FR_LR_WSD = 1, FR_LR_CONSTANT = 2 } fr_lr_schedule;

/* Everything a run needs; saved as RUN_DIR/train_args.json so --resume needs no flags.
 * String fields are copied into the run's saved arguments. */
typedef struct {
    char model_config[512];   /* config.json of a new model ... */
    char init_model[512];     /* ... or an HF folder to start from ("" = none) */
    char data_dir[512];       /* prepared by fr_data_prepare */
    char run_dir[512];
    int batch_size, seq_len, grad_accum;
    long max_steps;           /* 0: derived from max_tokens */
    double max_tokens;
    double lr, min_lr_frac;   /* peak learning rate; floor as a fraction of it */
    double lr_router_scale;   /* the MoE routers' weights (mlp.gate.weight) train at lr x this (> 0;
                               * default 1; not the correction bias, which the balancer moves) */
    double lr_experts_scale;  /* the routed experts' matrices (mlp.experts.*) at lr x this (> 0; 1) */
    int warmup_steps;
    fr_lr_schedule schedule;
    double decay_frac;        /* WSD: fraction of the steps spent decaying at the end */
    double beta1, beta2, eps, weight_decay, grad_clip; /* AdamW; grad_clip 0 = off */
    double bias_update_speed; /* gamma of the aux-loss-free balancer (0 = off) */
    double balance_alpha;     /* sequence-wise balance loss weight */
    double mtp_lambda;        /* MTP loss weight */
    uint64_t seed;
    int threads;
    int eval_interval, eval_batches;   /* 0 = no periodic eval, only the one at the end */
    int ckpt_interval;                 /* steps between checkpoints (0 = only at the end) */
    int sample_interval, sample_tokens;
    char sample_prompt[256];
    char ledger_path[512];             /* "" = RUN_DIR/../ledger.jsonl */
    fr_prices prices;
    double peak_gflops;                /* measured FP32 peak for MFU (0 = not reported) */
    char precision[8];                 /* "fp32", "bf16" or "fp8" (fr_model_set_precision); "" = fp32
                                        * for a new run, the saved one on resume (given: switches,
                                        * recorded) */
    int fp8_grad_tile_rows;            /* fp8: 1 (1 x 128 output-gradient tiles, the recipe) or 128
                                        * (the 128 x 128 experiment); 0 = 1, or the saved one */
    char moments[8];                   /* AdamW moments stored in "fp32" or "bf16"; "" = bf16 for
                                        * fp8 (the recipe), fp32 otherwise; on resume the saved
                                        * one unless given or the precision switches */
    /* Multi-process training (fr_world_init; launch options, not saved: a resume may use
     * another world) */
    int expert_parallel;               /* ranks the routed experts are split over (0 or 1 = none) */
    int zero1;                         /* 1: AdamW moments sharded over the data-parallel ranks */
    int node_limit;                    /* > 0: each token's experts on at most this many ranks of its
                                        * expert-parallel group (DeepSeek-V3's node-limited routing;
                                        * changes the model's n_group / topk_group) */
    /* LoRA (fr_model_add_lora; needs init_model): lora_rank 0 trains every weight. The base is
     * frozen (and the router-bias balancer off); checkpoints hold the adapter as a PEFT folder */
    int lora_rank;
    double lora_alpha;                 /* 0 = 2 x lora_rank */
    int lora_rslora;
    char lora_targets[256];            /* "" = all */
    char lora_base[8];                 /* the frozen base's block linears kept as "f32" (""), "bf16" or
                                        * "q8_0" (fr_model_lora_quantize_base: QLoRA-style memory) */
    /* Logit distillation: loss = distill_alpha * T^2 * KL(teacher_T || student_T) +
     * (1 - distill_alpha) * CE over the student's targets, the teacher's distribution being its
     * distill_topk largest logits renormalised (src/train/distill.c). The teacher is the model
     * folder `teacher` (run by the inference engine), or "" with teacher top-k shards beside the
     * data's shards (fr_distill_dump_teacher). distill_topk 0 = no distillation. */
    char teacher[512];
    int distill_topk;
    double distill_temperature, distill_alpha;
} fr_train_args;

/* Defaults: B 8, T 256, accumulation 1, lr 3e-3 cosine to 10 % (router and expert scales 1),
 * warmup 50, AdamW (0.9, 0.95, 1e-8, wd 0.1), clip 1.0, gamma 1e-3, alpha 1e-4, lambda 0.3, seed 1,
 * eval every 100 steps over 8 batches, checkpoint every 200, sample every 200 (48 tokens). */
void fr_train_args_default(fr_train_args *a);

typedef enum { FR_EV_STEP = 0, FR_EV_EVAL = 1, FR_EV_SAMPLE = 2, FR_EV_CHECKPOINT = 3, FR_EV_INFO = 4 } fr_train_event_type;

typedef struct {
    fr_train_event_type type;
    long step, max_steps;
    double tokens;            /* training tokens processed so far (this run, all segments) */
    fr_loss_info loss;        /* mean over the step's micro-batches */
    double lr, grad_norm;
    double tokens_per_s, gflops, mfu; /* this step */
    double elapsed_s, eta_s, cost_usd;
    int n_moe;                /* MoE blocks; maxvio[i] for each (first 64) */
    double maxvio[64];
    double val_loss, val_bpb; /* FR_EV_EVAL */
    const char *text;         /* FR_EV_SAMPLE: the sample; FR_EV_CHECKPOINT: its folder; FR_EV_INFO: a message */
    size_t rss_peak_bytes, mem_plan_bytes;
    /* multi-process jobs (FR_EV_STEP, this rank): payload bytes handed to all-reduce,
     * reduce-scatter, all-gather and all-to-all this step, what the formulas put on the wire
     * for them (ring 2(G-1)/G x all-reduce, (G-1)/G x reduce-scatter / all-gather, uniform
     * routing tokens x top-k x hidden x 4 x (E-1)/E per exchange), and the fraction of the
     * step's wall time spent inside collectives */
    int world_size;
    double comm_bytes[4], comm_model_bytes[4];
    double comm_share;
} fr_train_event;

typedef struct {
    void (*on_event)(void *user, const fr_train_event *ev);
    int (*should_stop)(void *user);   /* polled between steps: nonzero = checkpoint and stop */
    void *user;
} fr_train_hooks;

typedef struct {
    long steps_done;
    int interrupted;          /* stopped by should_stop */
    double final_loss, val_loss;
    char run_id[64];
    char checkpoint[600];     /* last checkpoint folder */
} fr_train_result;

/* Train from scratch (resume = 0: args used as given, run_dir must not hold a run) or
 * continue the run in args->run_dir (resume = 1: its saved arguments are used, except
 * max_steps/max_tokens when nonzero in args). Writes checkpoints (HF folders + training
 * state), metrics.jsonl and ledger records. The run folder is locked (flock on RUN_DIR/.lock)
 * while training: a second trainer in it fails with FR_ERR_STATE naming the holder's pid.
 * A folder whose run never reached a checkpoint is started over from step 0 (resume: with its
 * saved arguments; resume = 0: with args), announced by an FR_EV_INFO event; the ledger keeps
 * the earlier attempt. A sequence length above max_position_embeddings gives an FR_EV_INFO
 * warning. */
int fr_train(const fr_train_args *args, int resume, const fr_train_hooks *hooks, fr_train_result *result);

/* Learning rate of 0-based step `step` of max_steps: linear warmup over warmup_steps to lr,
 * then cosine to lr * min_lr_frac at the last step, or WSD (stable, then a linear decay
 * over the last decay_frac of the steps), or constant. */
double fr_train_lr(const fr_train_args *a, long step, long max_steps);

/* The world of this process for multi-process training: started by mpirun (OpenMPI) in a
 * build with MPI, the job's ranks; otherwise a world of one, exactly as before. fr_train uses
 * it once joined: each rank reads its slice of every global batch, and rank 0 alone writes the
 * run folder and the ledger. fr_world_abort ends every rank of the job (a failed rank must not
 * leave the others waiting in a collective); fr_world_finalize leaves the world. */
int fr_world_init(int *argc, char ***argv);
int fr_world_rank(void);
int fr_world_size(void);
void fr_world_abort(int code);
void fr_world_finalize(void);

/* Folder of the latest complete checkpoint of a run (RUN_DIR/ckpt-NNNNNNNN). */
int fr_train_latest_checkpoint(const char *run_dir, char *out, size_t n);

/* ------------------------------------------------------------------ inference */

/* The inference engine: a checkpoint's weights laid out for generation (linear layers in
 * FP32, BF16, Q8_0 or Q4_1; norms, router and embedding in FP32), per-sequence latent KV
 * caches, a deterministic sampler and MTP speculative decoding. See docs/inference.md.
 *
 * MLA caches only its latent: per token and layer, c_KV (kv_lora_rank values, after
 * kv_a_layernorm) and k_pe (qk_rope_head_dim values, after RoPE). Attention runs in the
 * latent space with kv_b_proj absorbed (W_UK into the query, W_UV after the weighted sum);
 * K and V are never expanded. */
typedef struct fr_engine fr_engine;
typedef struct fr_seq fr_seq;

typedef enum {
    FR_KV_F32 = 0,   /* 4 bytes per value */
    FR_KV_BF16 = 1,  /* 2 bytes per value (round to nearest even) */
    FR_KV_FP8 = 2    /* FP8 E4M3 values + one FP32 scale per token per layer (amax / 448) */
} fr_kv_type;

typedef struct {
    int weight_type;   /* storage of linear weights: 0 f32, 1 bf16, 2 q8_0, 3 q4_1, 4 q4_k, 5 q5_k,
                        * 6 q6_k (src/formats/qmatrix.h fr_qtype), or -1: as the checkpoint stores
                        * them (BF16, Q8_0 / Q4_1 from `frugal quantize`, a GGUF's own format per
                        * tensor, else f32; a model in memory: f32). Matrices whose width a block
                        * format cannot hold take Q8_0 (K formats: width not a multiple of 256) or
                        * stay FP32 (not a multiple of 32). */
    fr_kv_type kv_type;
    int max_seq_len;   /* cache capacity per sequence; 0 = max_position_embeddings */
    int threads;       /* 0 = leave the OpenMP default */
    int load_mtp;      /* load MTP module 1 when the checkpoint has it (needed for speculation) */
    int no_check;      /* 1: skip the load-time check that every weight is finite (NaN / Inf fail
                        * the load with a message naming the tensor and the first bad index; for
                        * quantized matrices their scales and minima are checked). The check is
                        * one pass over the weights, which pages in a mapped checkpoint at once. */
    int adaptive_threads; /* 1 (the default): decode steps run on all threads or on one, whichever
                           * the engine measures faster, so a machine shared with busy processes
                           * does not stall every barrier (docs/performance.md); results are the
                           * same either way. 0: always all threads */
    const char *adapter;  /* a PEFT LoRA adapter folder to fold into the weights at load time
                           * (fr_model_merge_adapter; the model goes through FP32), or NULL */
} fr_engine_options;

/* The name of a weight_type value ("f32", "bf16", "q8_0", "q4_1", "q4_k", "q5_k", "q6_k"; NULL
 * outside 0..6), and the
 * value of a name (-1 when it names none). */
const char *fr_weight_type_name(int weight_type);
int fr_weight_type_parse(const char *name);

/* Defaults: weights as stored, f32 cache, max_seq_len 0, threads 0, load_mtp 1. */
void fr_engine_options_default(fr_engine_options *o);
/* Load config.json + safetensors of an HF folder. opt may be NULL (defaults). */
int fr_engine_load(fr_engine **out, const char *dir, const fr_engine_options *opt);
/* The same from a model in memory (its FP32 parameters are copied / converted; m may be
 * freed afterwards). */
int fr_engine_from_model(fr_engine **out, fr_model *m, const fr_engine_options *opt);
void fr_engine_free(fr_engine *e);
const fr_config *fr_engine_config(const fr_engine *e);
int fr_engine_max_seq_len(const fr_engine *e);
/* The weight format in use (fr_engine_options.weight_type with -1 resolved). */
int fr_engine_weight_type(const fr_engine *e);
/* MTP modules loaded (0 or 1): speculative decoding needs 1. */
int fr_engine_mtp_depth(const fr_engine *e);
/* Bytes the latent KV cache holds per token of one sequence, all main layers:
 * layers x (kv_lora_rank + qk_rope_head_dim) x bytes(kv_type), plus layers x 4 for the
 * FP8 scales. The MTP module's cache (one more layer) is counted separately: */
size_t fr_engine_kv_bytes_per_token(const fr_engine *e);
size_t fr_engine_mtp_kv_bytes_per_token(const fr_engine *e);
/* Bytes of weights read for one decoded token (dense parts, shared + top-k routed experts,
 * output head, in their storage format): the memory-bandwidth bound of decoding. */
size_t fr_engine_active_weight_bytes(const fr_engine *e);

/* One sequence: its latent KV caches (main layers and MTP module) and length. */
int fr_seq_create(fr_seq **out, fr_engine *e);
void fr_seq_free(fr_seq *s);
/* Tokens in the cache (the next token gets this position). */
int fr_seq_len(const fr_seq *s);
/* Forget everything after the first len tokens (speculative rollback; 0 = reset). */
int fr_seq_truncate(fr_seq *s, int len);
/* How many of tokens[0:n] the sequence's cache already holds, from the start (the earlier
 * turns of a conversation): the tokens a prompt need not be computed for again. */
int fr_seq_common_prefix(const fr_seq *s, const int *tokens, int n);

/* Append n_tokens[i] tokens (tokens[i]) to each of n_seqs distinct sequences in one
 * batched forward (prefill: many tokens per sequence; decode: one per sequence; mixed
 * counts are allowed). logits (may be NULL) receives, when all_logits is 0, the last new
 * token's logits of each sequence [n_seqs, vocab]; when 1, every new token's logits in
 * order [sum n_tokens, vocab]. Fails without changing any sequence when a sequence would
 * exceed max_seq_len or a token is outside the vocabulary. */
int fr_engine_forward(fr_engine *e, fr_seq *const *seqs, int n_seqs, const int *const *tokens,
                      const int *n_tokens, float *logits, int all_logits);

/* Sampling. temperature <= 0 is greedy (argmax, lowest id on ties). Otherwise, in order:
 * repeat penalty (each distinct token among the last repeat_last_n: logit > 0 divided by
 * the penalty, else multiplied), temperature, top-k (0 = off), softmax, min-p (drop
 * p < min_p * p_max; 0 = off), top-p (smallest set with mass >= top_p; 1 = off), then one
 * draw from the renormalised distribution with a xoshiro256** stream seeded by `seed`.
 * The repeat penalty applies in greedy mode too. */
typedef struct {
    float temperature, top_p, min_p, repeat_penalty;
    int top_k, repeat_last_n;
    uint64_t seed;
} fr_sample_params;

/* Defaults: temperature 0.8, top_k 40, top_p 0.95, min_p 0.05, repeat_penalty 1.0 (off),
 * repeat_last_n 64, seed 42. */
void fr_sample_params_default(fr_sample_params *p);

typedef struct fr_sampler fr_sampler;
int fr_sampler_create(fr_sampler **out, const fr_sample_params *p, int vocab_size);
void fr_sampler_free(fr_sampler *s);
/* Next token from logits [vocab] (not modified); history = tokens so far (for the penalty). */
int fr_sampler_sample(fr_sampler *s, const float *logits, const int *history, int n_history);

typedef enum {
    FR_STOP_MAX_TOKENS = 0, FR_STOP_EOS = 1, FR_STOP_STRING = 2, FR_STOP_CALLBACK = 3,
    FR_STOP_CONTEXT = 4
} fr_stop_reason;

typedef struct {
    fr_sample_params sample;
    int max_tokens;            /* new tokens per sequence */
    const char *const *stop;   /* stop strings (need a tokenizer); the text is cut before them */
    int n_stop;
    int ignore_eos;            /* 0: stop at the EOS id (config, else tokenizer) */
    int speculative;           /* draft with the MTP module, verify with the main model */
    int reuse_prefix;          /* 1: keep what each sequence's cache holds of its prompt's start
                                * (fr_seq_common_prefix; at least the last prompt token is computed
                                * again for its logits) instead of resetting it: a conversation's
                                * next turn computes only its new tokens. With speculative, one
                                * token fewer at most (the MTP cache pairs each row with the
                                * following token, so its last shared row is recomputed). */
    /* Streaming: called once per new token in order with the text it completes (bytes of
     * the decoded token; text that may start a stop string is held back and passed later,
     * so len may be 0). Return nonzero to stop that sequence. */
    int (*on_token)(void *user, int seq, int token, const char *text, size_t len);
    void *user;
} fr_generate_options;

typedef struct {
    long prompt_tokens, generated_tokens;   /* all sequences */
    long reused_tokens;        /* prompt tokens taken from the caches (reuse_prefix), not computed */
    double prefill_s, decode_s;
    long main_steps;           /* batched forwards of the main model after the prefill */
    long drafted, accepted;    /* speculative: draft tokens proposed and accepted */
    fr_stop_reason stop_reason[64];          /* first 64 sequences */
} fr_generate_stats;

/* Defaults: sampling defaults, max_tokens 128, no stop strings, speculative 0. */
void fr_generate_options_default(fr_generate_options *o);

/* Generate for n_seqs prompts at once (each with its own sequence, which is reset first, or
 * cut to the prompt's cached start with reuse_prefix).
 * out_tokens[i] (malloc'd, caller frees) receives sequence i's new tokens, out_lens[i]
 * their count (after a stop string the tokens that completed it are kept). Each sequence
 * samples with its own stream seeded by sample.seed, so its tokens do not depend on the
 * other sequences. tok may be NULL when no text is needed (no callback text, no stops).
 * With tok, ids it cannot decode (a vocab_size padded past the tokenizer) are never
 * generated, drafts included; the EOS id stays allowed unless ignore_eos. */
int fr_generate(fr_engine *e, const fr_tokenizer *tok, fr_seq *const *seqs, int n_seqs,
                const int *const *prompts, const int *prompt_lens, const fr_generate_options *opt,
                int **out_tokens, int *out_lens, fr_generate_stats *stats);

/* Mean next-token loss computed by the engine (its weight format, kernels and KV cache), over
 * the windows fr_eval_dataset uses: split "train" / "val" of a prepared dataset, window w
 * reads tokens [w*seq_len, (w+1)*seq_len] and predicts its last seq_len; max_tokens > 0
 * limits the tokens read. Each window starts from an empty sequence and is fed `chunk`
 * tokens per fr_engine_forward call (1: the decode path; seq_len or more: one prefill),
 * every position's logits scored against the next token (main head only). Several windows
 * run as separate sequences of one call. Needs 2 <= seq_len <= fr_engine_max_seq_len(e),
 * chunk >= 1 and a dataset vocabulary no larger than the model's. *n_targets (optional)
 * receives the number of predicted tokens. The engine's sequences are not touched. */
int fr_engine_eval_dataset(fr_engine *e, const char *data_dir, const char *split, int seq_len, int chunk,
                           long max_tokens, double *mean_loss, long *n_targets);
/* The same over token sequences of different lengths (as fr_model_eval_sequences): each
 * sequence seqs[i] (lens[i] >= 2 tokens, lens[i] - 1 <= fr_engine_max_seq_len(e)) predicts
 * its tokens 1 .. lens[i]-1. */
int fr_engine_eval_sequences(fr_engine *e, int n_seqs, const int *const *seqs, const int *lens, int chunk,
                             double *mean_loss, long *n_predicted);

/* ---- Distillation teachers (src/infer/teacher.c, src/train/distill.c)
 * The k largest next-token logits (descending, ties to the lower id) at every position of
 * n_windows windows tokens [n_windows, T], each run from an empty cache:
 * topk_idx / topk_logit [n_windows * T, k], and the log-sum-exp of each row at `temperature`
 * over the whole vocabulary, lse [n_windows * T]. */
int fr_engine_topk(fr_engine *e, int n_windows, const int *tokens, int T, int k, float temperature, int32_t *topk_idx,
                   float *topk_logit, float *lse);
/* Teacher top-k shards (format in src/train/distill.c) beside every training shard of data_dir:
 * the teacher model (folder or GGUF, run by the engine) over the trainer's windows of seq_len
 * tokens, with the log-sum-exp at `temperature` (the distillation run must use the same).
 * Each file is written under a temporary name and renamed when complete; on failure none
 * remains. progress (optional) gets the fraction done; nonzero stops (FR_ERR_STATE). */
int fr_distill_dump_teacher(const char *teacher_dir, const char *data_dir, int seq_len, int k, float temperature,
                            int (*progress)(void *user, double frac), void *user);

/* ------------------------------------------------------------------ chat template */

/* One message of a conversation: role "system", "user" or "assistant". */
typedef struct {
    const char *role, *content;
} fr_chat_message;

/* Render a conversation as prompt text in the DeepSeek-V3 chat format (src/text/chat.c):
 *   bos + each system message (+ "\n\n" when tok's chat template writes one, as frugal's
 *   does) + per message <｜User｜>msg or <｜Assistant｜>reply eos, then <｜Assistant｜> when
 *   add_generation_prompt is nonzero.
 * bos/eos are the tokenizer's (DeepSeek-V3's strings when tok is NULL or has none). The
 * Jinja template itself is not interpreted. Encode the result with parse_special = 1.
 * *out is malloc'd (caller frees); out_len may be NULL. Unknown roles fail with FR_ERR_ARG. */
int fr_chat_render(const fr_tokenizer *tok, const fr_chat_message *msgs, int n_msgs,
                   int add_generation_prompt, char **out, size_t *out_len);
/* A conversation as fine-tuning tokens: the tokens of fr_chat_render's text (no generation
 * prompt) with mask[i] = 1 for the tokens of each assistant reply and the end-of-sentence
 * token that closes it (the loss targets), 0 for the rest (bos, system, user turns, the
 * Assistant tag). The pieces are encoded one by one at the template's special tags, which
 * gives the same tokens as encoding the whole text. *ids and *mask are malloc'd. */
int fr_chat_encode_masked(const fr_tokenizer *tok, const fr_chat_message *msgs, int n_msgs, int **ids,
                          unsigned char **mask, size_t *n);
/* 1 when tok has no chat template or a DeepSeek-style one (with the User/Assistant tags);
 * 0 when its template is of another family (fr_chat_render still uses DeepSeek-V3's). */
int fr_chat_template_is_deepseek(const fr_tokenizer *tok);

/* Length (1..4) of the valid UTF-8 sequence at s[0..n), or 0 when s[0] starts none: a
 * truncated sequence, an overlong form, a surrogate or a code point above U+10FFFF. NUL is a
 * valid one-byte sequence (callers that refuse it check for it). */
size_t fr_utf8_seq_len(const unsigned char *s, size_t n);

/* ------------------------------------------------------------------ quantization */

/* Write a copy of the HF model folder in_dir into out_dir with its linear weights (2-D
 * tensors named "*_proj.weight", and kv_a_proj_with_mqa) stored as type "bf16", "q8_0", "q4_0",
 * "q4_1", "q4_k", "q5_k", "q6_k", "q4_k_m" or "q5_k_m" (layouts and tensor names in
 * docs/quantization.md). Every type but q4_1 holds the blocks a GGUF export of the same type
 * (fr_gguf_export) holds, the embedding and lm_head included, with kv_b_proj kept FP32 (the
 * engine splits it as the GGUF does), so the engine gives the folder and the GGUF the same
 * logits. The router (mlp.gate), norms and e_score_correction_bias are written as FP32 (under
 * q4_1 also the embeddings and lm_head). config.json gets a "quantization_config" (all but bf16);
 * tokenizer.json, tokenizer_config.json and
 * generation_config.json are copied when present. Atomic: built in out_dir.tmp-PID and
 * renamed; an existing non-empty out_dir is refused. A matrix whose width is not a multiple of
 * 32 (bf16 aside) fails with a message naming the tensor. progress (may be NULL):
 * frac in [0,1]; return nonzero to cancel (FR_ERR_STATE). */
int fr_quantize_model(const char *in_dir, const char *out_dir, const char *type,
                      int (*progress)(void *user, double frac, const char *phase), void *user);
/* Load a folder written by fr_quantize_model (or any folder fr_model_load reads) as an FP32
 * model whose weights are the dequantized stored values: evaluating it measures exactly
 * the error of the weight format. */
int fr_model_load_dequantized(fr_model **out, const char *dir);
/* Mean next-token loss of m over a split ("train" / "val") of a prepared dataset, in
 * non-overlapping windows of seq_len predicted tokens (window i reads tokens
 * [i*seq_len, (i+1)*seq_len]), batch windows per forward; max_tokens > 0 limits the tokens
 * read. *n_targets (optional) receives the number of predicted tokens. */
int fr_eval_dataset(fr_model *m, const char *data_dir, const char *split, int seq_len, int batch,
                    long max_tokens, double *mean_loss, long *n_targets);

/* ------------------------------------------------------------------ runtime */

/* Threads used by the CPU backend (0 = OpenMP default); fr_num_threads: how many it uses now. */
void fr_set_num_threads(int n);
int fr_num_threads(void);

/* The backend that models created or loaded from now on live on: "cpu" (the default),
 * "cuda" (an NVIDIA GPU through the CUDA backend; FR_ERR_UNSUPPORTED naming why when this
 * build has no CUDA or the machine no usable GPU) or "cpu-guarded" (the CPU's kernels behind
 * memory the host cannot touch outside the backend's ops: a check of the device path, slow).
 * fr_device_name: the current choice. */
int fr_set_device(const char *name);
const char *fr_device_name(void);
/* The machine's measured FP32 FMA peak with the current OpenMP threads (about 1.5 s). */
typedef struct {
    double gflops;            /* all threads */
    double gflops_per_thread;
    int threads;
    const char *isa;          /* "avx512f", "avx2+fma" or "generic" */
    int lanes;
} fr_peak;
int fr_measure_fp32_peak(fr_peak *out);
/* Describes the CPU features found at run time, e.g. "avx2 fma". */
const char *fr_cpu_features(void);
/* The path of the "bf16" precision's GEMMs on this CPU, e.g. "onednn brg:avx512_core_amx",
 * "onednn brg:avx512_core_bf16" or "emulated (BF16-rounded operands, FP32 GEMM)"
 * (FRUGAL_BF16_GEMM=onednn|emulated overrides the choice), and whether it is BF16 hardware
 * (AMX, or AVX512-BF16 on a CPU other than Intel's) rather than a fallback no faster than fp32. */
const char *fr_bf16_gemm_path(void);
int fr_bf16_hardware(void);

#ifdef __cplusplus
}
#endif
#endif /* FRUGAL_H */
