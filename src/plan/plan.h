/* plan.h — the cluster planner behind `frugal plan`: what a training run of a model costs on a
 * GPU cluster with a given parallel layout, before anything runs.
 *
 * A pure computation: (model, tokens, global batch, cluster, layout, efficiency assumptions)
 * -> memory per GPU, time per step by term (compute, expert all-to-all, tensor-parallel
 * all-reduce, data-parallel gradient sync, pipeline bubble), MFU, GPU-hours and cost of the
 * whole token budget. Every formula is written out in plan.c and in docs/plan.md; every
 * input is an assumption the caller states (the CLI prints each one).
 *
 * The model comes from a DeepSeek-V3 / V2 config.json (counted exactly as src/model
 * registers its tensors and counts its FLOPs, without instantiating it), or from a
 * Llama-style dense config.json (model_type "llama": grouped-query attention, SwiGLU MLP),
 * which frugal's model cannot run but which the planner needs for a dense reference.
 *
 * Library code: errors are FR_ERR_* with a message for fr_last_error(); nothing prints. */
#ifndef FR_PLAN_H
#define FR_PLAN_H

#include "frugal.h"

#include <stddef.h>

/* One kind of decoder block as the planner counts it. */
typedef struct {
    double params;              /* every parameter of the block (norms and router bias included) */
    double routed_params;       /* of which routed experts (sharded over EP) */
    double matmul_per_token;    /* matmul weights one token meets: forward FLOPs = 2 x this */
    double linear_per_token;    /* of which in the block linears (FP8 under the FP8 recipe; not the router) */
    double act_elems_per_token; /* activation elements saved for backward per token (estimate, plan.c) */
} fr_plan_block;

typedef struct {
    char name[128];             /* the file or preset it came from */
    char arch[32];              /* "deepseek_v3", "deepseek_v2" or "llama" */
    int hidden, layers, vocab, heads;
    int n_dense, n_moe;         /* main layers of each kind */
    int mtp_depth, mtp_is_moe;  /* MTP modules (each one block) and their FFN kind */
    int routed_experts, experts_per_token;
    int n_group, topk_group;    /* DeepSeek's group-limited routing (1 / 1 when absent) */
    double attn_dims;           /* heads x (qk head dim + v head dim): attention FLOPs per (query, key) pair / 2 */
    fr_plan_block dense, moe;   /* main blocks */
    fr_plan_block mtp;          /* one MTP module: its block plus enorm, hnorm, eh_proj, shared_head.norm */
    double embed_params, head_params, final_norm_params; /* head 0 when tied to the embedding */
    /* Totals, as frugal's model reports them: fr_model_num_params counts the main model and
     * the MTP modules (their embedding and head are the main model's); active =
     * fr_model_num_active_params: the main model with only experts_per_token routed experts. */
    double params_total, params_main, params_active, params_routed;
    /* params_active without the input embedding (a lookup, no FLOPs): how DeepSeek reports
     * "activated parameters" (V2-Lite: 2.45B -> "2.4B"; V3: 36.6B -> "37B") */
    double params_active_no_embed;
} fr_plan_model;

/* The model of a DeepSeek config (validated by fr_config_validate first). */
int fr_plan_model_from_config(fr_plan_model *out, const fr_config *cfg, const char *name);
/* The model of a config.json text: model_type "deepseek_v3" / "deepseek_v2" through
 * fr_config_parse, "llama" through the planner's own reader (hidden_size, intermediate_size,
 * num_hidden_layers, num_attention_heads, num_key_value_heads, head_dim, vocab_size,
 * tie_word_embeddings). `name` labels messages. */
int fr_plan_model_parse(fr_plan_model *out, const char *json_text, size_t len, const char *name);
int fr_plan_model_load(fr_plan_model *out, const char *path);
/* Built-in models, so a plan needs no file: "deepseek-v3-671b" and "llama-3.1-405b" (the
 * same values as configs/deepseek-v3-671b.json and configs/llama-3.1-405b.json).
 * FR_ERR_ARG for another name. fr_plan_preset_names lists them, comma-separated. */
int fr_plan_model_preset(fr_plan_model *out, const char *name);
const char *fr_plan_preset_names(void);

/* Training FLOPs of one sequence of seq_len tokens (forward + backward = 3 x forward), the
 * formula of fr_model_train_flops: 6 x matmul weights per token, the output head, causal
 * attention, MTP module k on seq_len - k positions. *linear (optional) receives the part in
 * the block linears (the FP8 recipe's GEMMs). */
double fr_plan_train_flops_seq(const fr_plan_model *m, int seq_len, double *linear);
/* Of that, the causal attention core (scores and weighted sums, forward + backward). */
double fr_plan_attention_flops_seq(const fr_plan_model *m, int seq_len);

typedef enum { FR_PLAN_FP32 = 0, FR_PLAN_BF16 = 1, FR_PLAN_FP8 = 2 } fr_plan_precision;
typedef enum { FR_PLAN_1F1B = 0, FR_PLAN_INTERLEAVED = 1, FR_PLAN_DUALPIPE = 2 } fr_plan_schedule;
const char *fr_plan_precision_name(fr_plan_precision p);
const char *fr_plan_schedule_name(fr_plan_schedule s);

typedef struct {
    int gpus, gpus_per_node;
    double peak_tflops_bf16;    /* dense BF16 tensor-core peak per GPU */
    double peak_tflops_fp8;     /* dense FP8 peak per GPU */
    double peak_tflops_fp32;    /* FP32 peak per GPU (precision fp32) */
    double hbm_gib;             /* memory per GPU */
    double nvlink_gbps;         /* GB/s per GPU, one direction, inside a node */
    double net_gbps;            /* GB/s per GPU, one direction, across nodes (InfiniBand / RoCE) */
} fr_plan_cluster;

typedef struct {
    int dp, tp, pp, ep;         /* dp x tp x pp = gpus; ep divides dp (expert groups are made of DP ranks) */
    int zero;                   /* 0..3: what is sharded over the data-parallel group */
    fr_plan_precision precision;
    fr_plan_schedule schedule;
    int virtual_stages;         /* interleaved 1F1B: model chunks per GPU (>= 1) */
    int micro_batches;          /* per DP rank and step; 0: one sequence each */
    int max_nodes_per_token;    /* node-limited routing M (0 = no limit) */
    int recompute;              /* 0: keep every activation for backward; 1: full recomputation (keep
                                   each layer's input, run the forward again in the backward) */
} fr_plan_layout;

typedef struct {
    double compute_efficiency;  /* fraction of the peak the compute reaches (GEMMs, attention) */
    double comm_efficiency;     /* fraction of link bandwidth the collectives reach */
    double a2a_dispatch_bytes;  /* bytes per element sent to the experts (FP8 recipe: 1) */
    double a2a_combine_bytes;   /* bytes per element of the combine and of both backward transfers */
    double price_per_gpu_hour;
} fr_plan_assumptions;

typedef struct {
    const fr_plan_model *model;
    double tokens;              /* the whole run */
    int seq_len;
    double batch_tokens;        /* global batch per optimizer step, in tokens */
    fr_plan_cluster cluster;
    fr_plan_layout layout;
    fr_plan_assumptions assume;
} fr_plan_input;

#define FR_PLAN_MAX_WARNINGS 8

typedef struct {
    /* work */
    double flops_per_token, linear_flops_per_token, attention_flops_per_token;
    double flops_6n_per_token;  /* 6 x active parameters, the usual shorthand */
    double flops_step, flops_total;
    double steps, seqs_per_step, tokens_per_dp_rank;
    int micro_batches;
    double micro_batch_seqs, micro_batch_tokens;
    /* memory per GPU, bytes (the heaviest pipeline stage) */
    double stage_layers;        /* main decoder layers per GPU (DualPipe: two stages) */
    double params_nonexpert_gpu, params_expert_gpu; /* parameters held per GPU */
    double mem_weights, mem_grads, mem_master, mem_moments, mem_activations, mem_logits, mem_total;
    double inflight_micro_batches;
    int over_hbm;
    /* time per step, seconds */
    double peak_mixed_tflops;   /* the peak the compute runs against (FP8 share at the FP8 peak) */
    double t_compute, t_bubble, bubble_fraction;
    double hardware_flops_step; /* model FLOPs plus the recomputed forward, if any */
    double t_a2a, t_a2a_net, t_a2a_nvlink, a2a_bytes_net, a2a_bytes_nvlink;
    int ep_nodes;
    double t_tp, tp_bytes;
    double t_dp, dp_bytes_nonexpert, dp_bytes_expert;
    int dp_over_net, a2a_overlapped;
    double t_step_overlapped, t_step_serial;
    /* the run */
    double mfu, mfu_serial;     /* model FLOPs / (step time x GPUs x reference peak) */
    double reference_peak_tflops; /* BF16 peak (FP32 peak for precision fp32) */
    double tokens_per_s, wall_hours, gpu_hours, gpu_hours_serial, gpu_hours_per_trillion, cost_usd, cost_usd_serial;
    int n_warnings;
    char warnings[FR_PLAN_MAX_WARNINGS][200];
} fr_plan_result;

/* Defaults stated in docs/plan.md: the DeepSeek-V3 report's H800 cluster and prices. */
fr_plan_cluster fr_plan_cluster_default(void);
fr_plan_assumptions fr_plan_assumptions_default(fr_plan_precision p);

/* Check the input (FR_ERR_ARG naming the impossible value or layout) and compute the plan. */
int fr_plan_compute(const fr_plan_input *in, fr_plan_result *out);

/* Measured efficiency from frugal's own runs.
 * From a metrics.jsonl (a file, or a run folder holding one): the median "mfu" of its
 * "type":"step" records after the first (which includes warm-up); *n_used = records used.
 * From a ledger: flops / (wall_s x n_devices x peak_gflops_per_device x 1e9) of one run: the
 * run whose id starts with run_sel (NULL: the latest finished "train" run); *run_id receives
 * its id. FR_ERR_FORMAT when there is nothing to measure. */
int fr_plan_measured_metrics(const char *path, double *mfu, int *n_used);
int fr_plan_measured_ledger(const char *path, const char *run_sel, double peak_gflops_per_device, double *mfu,
                            char *run_id, size_t run_id_size);

#endif
