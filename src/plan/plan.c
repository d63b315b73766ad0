/* plan.c — the cluster planner: memory per GPU, time per step by term, MFU, GPU-hours and
 * cost of a training run, from the model (plan_model.c), the cluster, the parallel layout and
 * stated efficiencies. Every formula is below, next to the code that uses it, and in
 * docs/plan.md.
 *
 * Layout. dp x tp x pp = GPUs. Each pipeline stage holds an even share of the decoder layers;
 * the first stage also holds the embedding, the last the final norm, the output head and the
 * MTP modules. Non-expert weights are split over tp and replicated over dp; routed experts are
 * split over ep, whose groups are made of data-parallel ranks (ep divides dp), so each expert
 * is replicated over dp / ep ranks. ZeRO shards, over each weight's data-parallel group:
 * stage 1 the FP32 master weights and the optimizer moments, stage 2 also the gradients,
 * stage 3 also the working weights.
 *
 * A step is one optimizer update over the global batch; every DP rank runs its share as
 * micro_batches micro-batches through the pipeline. Compute is assumed perfectly balanced
 * over GPUs and stages; what balancing costs in practice is part of the efficiency. */
#include "plan/plan.h"

#include "core/internal.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const char *fr_plan_precision_name(fr_plan_precision p) {
    switch (p) {
    case FR_PLAN_FP32: return "fp32";
    case FR_PLAN_BF16: return "bf16";
    case FR_PLAN_FP8: return "fp8";
    }
    return "?";
}

const char *fr_plan_schedule_name(fr_plan_schedule s) {
    switch (s) {
    case FR_PLAN_1F1B: return "1f1b";
    case FR_PLAN_INTERLEAVED: return "interleaved";
    case FR_PLAN_DUALPIPE: return "dualpipe";
    }
    return "?";
}

fr_plan_cluster fr_plan_cluster_default(void) {
    /* DeepSeek-V3's cluster (technical report, section 3.1): 2,048 H800 in nodes of 8,
     * NVLink/NVSwitch ~160 GB/s per GPU inside a node, 400 Gb/s InfiniBand (50 GB/s) per GPU
     * across nodes. H800 SXM dense peaks: 989 TFLOP/s BF16, 1,979 FP8, 67 FP32; 80 GB HBM3. */
    fr_plan_cluster c = {.gpus = 2048,
                         .gpus_per_node = 8,
                         .peak_tflops_bf16 = 989,
                         .peak_tflops_fp8 = 1979,
                         .peak_tflops_fp32 = 67,
                         .hbm_gib = 80,
                         .nvlink_gbps = 160,
                         .net_gbps = 50};
    return c;
}

fr_plan_assumptions fr_plan_assumptions_default(fr_plan_precision p) {
    fr_plan_assumptions a;
    /* 0.40 of peak: Llama 3 405B reports 38-43 % BF16 MFU on 8K-16K H100 (a whole-step figure,
     * so the compute alone ran somewhat faster); a planning default, not a measurement. */
    a.compute_efficiency = 0.40;
    /* 0.80 of the link rate: what ring collectives and all-to-all typically reach on
     * NVLink and InfiniBand at large message sizes; a planning default. */
    a.comm_efficiency = 0.80;
    /* DeepSeek-V3 dispatches FP8 activations (1 byte) and combines in BF16 (2 bytes). */
    a.a2a_dispatch_bytes = p == FR_PLAN_FP8 ? 1 : p == FR_PLAN_BF16 ? 2 : 4;
    a.a2a_combine_bytes = p == FR_PLAN_FP32 ? 4 : 2;
    a.price_per_gpu_hour = 2.00; /* the DeepSeek-V3 report's H800 rental price */
    return a;
}

static void warn(fr_plan_result *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void warn(fr_plan_result *r, const char *fmt, ...) {
    if (r->n_warnings >= FR_PLAN_MAX_WARNINGS) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->warnings[r->n_warnings++], sizeof r->warnings[0], fmt, ap);
    va_end(ap);
}

static int positive(double x) { return isfinite(x) && x > 0; }

/* Every check names the input as the CLI spells it (without the dashes). */
static int check_input(const fr_plan_input *in) {
    const fr_plan_model *m = in->model;
    const fr_plan_cluster *c = &in->cluster;
    const fr_plan_layout *l = &in->layout;
    const fr_plan_assumptions *a = &in->assume;
    if (!m) return fr_error(FR_ERR_ARG, "plan: no model");
    if (!positive(in->tokens)) return fr_error(FR_ERR_ARG, "tokens must be > 0 (got %g)", in->tokens);
    if (in->seq_len < 1) return fr_error(FR_ERR_ARG, "seq-len must be >= 1 (got %d)", in->seq_len);
    if (!positive(in->batch_tokens)) return fr_error(FR_ERR_ARG, "batch-tokens must be > 0 (got %g)", in->batch_tokens);
    if (c->gpus < 1) return fr_error(FR_ERR_ARG, "gpus must be >= 1 (got %d)", c->gpus);
    if (c->gpus_per_node < 1) return fr_error(FR_ERR_ARG, "gpus-per-node must be >= 1 (got %d)", c->gpus_per_node);
    if (!positive(c->peak_tflops_bf16) || !positive(c->peak_tflops_fp8) || !positive(c->peak_tflops_fp32))
        return fr_error(FR_ERR_ARG, "peak-tflops (bf16 %g, fp8 %g, fp32 %g) must all be > 0", c->peak_tflops_bf16,
                        c->peak_tflops_fp8, c->peak_tflops_fp32);
    if (!positive(c->hbm_gib)) return fr_error(FR_ERR_ARG, "hbm-gib must be > 0 (got %g)", c->hbm_gib);
    if (!positive(c->nvlink_gbps)) return fr_error(FR_ERR_ARG, "nvlink-gbps must be > 0 (got %g)", c->nvlink_gbps);
    if (!positive(c->net_gbps)) return fr_error(FR_ERR_ARG, "net-gbps must be > 0 (got %g)", c->net_gbps);
    if (l->dp < 1 || l->tp < 1 || l->pp < 1 || l->ep < 1)
        return fr_error(FR_ERR_ARG, "dp, tp, pp and ep must be >= 1 (got dp %d, tp %d, pp %d, ep %d)", l->dp, l->tp, l->pp,
                        l->ep);
    if ((long long)l->dp * l->tp * l->pp != c->gpus)
        return fr_error(FR_ERR_ARG, "impossible layout: dp %d x tp %d x pp %d = %lld GPUs, but gpus is %d", l->dp, l->tp,
                        l->pp, (long long)l->dp * l->tp * l->pp, c->gpus);
    if (l->dp % l->ep != 0)
        return fr_error(FR_ERR_ARG,
                        "impossible layout: ep %d does not divide dp %d (expert-parallel groups are made of data-parallel ranks)",
                        l->ep, l->dp);
    if (m->routed_experts == 0 && l->ep > 1)
        return fr_error(FR_ERR_ARG, "impossible layout: ep %d, but %s has no routed experts", l->ep, m->name);
    if (m->routed_experts > 0 && m->routed_experts % l->ep != 0)
        return fr_error(FR_ERR_ARG, "impossible layout: %d routed experts are not divisible by ep %d", m->routed_experts,
                        l->ep);
    if (l->pp > m->layers)
        return fr_error(FR_ERR_ARG, "impossible layout: pp %d stages for %d layers", l->pp, m->layers);
    if (m->heads % l->tp != 0)
        return fr_error(FR_ERR_ARG, "impossible layout: tp %d does not divide the %d attention heads", l->tp, m->heads);
    if (l->zero < 0 || l->zero > 3) return fr_error(FR_ERR_ARG, "zero must be 0, 1, 2 or 3 (got %d)", l->zero);
    if (l->precision < FR_PLAN_FP32 || l->precision > FR_PLAN_FP8)
        return fr_error(FR_ERR_ARG, "precision is invalid (%d)", (int)l->precision);
    if (l->schedule < FR_PLAN_1F1B || l->schedule > FR_PLAN_DUALPIPE)
        return fr_error(FR_ERR_ARG, "schedule is invalid (%d)", (int)l->schedule);
    if (l->virtual_stages < 1) return fr_error(FR_ERR_ARG, "virtual-stages must be >= 1 (got %d)", l->virtual_stages);
    if (l->schedule == FR_PLAN_DUALPIPE && l->pp % 2 != 0)
        return fr_error(FR_ERR_ARG, "impossible layout: DualPipe needs an even pp (got %d)", l->pp);
    if (l->micro_batches < 0) return fr_error(FR_ERR_ARG, "micro-batches must be >= 0 (got %d)", l->micro_batches);
    if (l->recompute != 0 && l->recompute != 1) return fr_error(FR_ERR_ARG, "recompute must be none or full");
    if (l->max_nodes_per_token < 0)
        return fr_error(FR_ERR_ARG, "max-nodes-per-token must be >= 0 (got %d)", l->max_nodes_per_token);
    if (!(a->compute_efficiency > 0 && a->compute_efficiency <= 1))
        return fr_error(FR_ERR_ARG, "efficiency must be in (0, 1] (got %g)", a->compute_efficiency);
    if (!(a->comm_efficiency > 0 && a->comm_efficiency <= 1))
        return fr_error(FR_ERR_ARG, "comm-efficiency must be in (0, 1] (got %g)", a->comm_efficiency);
    if (!positive(a->a2a_dispatch_bytes) || !positive(a->a2a_combine_bytes))
        return fr_error(FR_ERR_ARG, "a2a-dispatch-bytes and a2a-combine-bytes must be > 0");
    if (!(isfinite(a->price_per_gpu_hour) && a->price_per_gpu_hour >= 0))
        return fr_error(FR_ERR_ARG, "price-per-gpu-hour must be >= 0 (got %g)", a->price_per_gpu_hour);
    return FR_OK;
}

/* Bytes per parameter of each training state, by precision:
 *   fp32  working weights are the master: 4, gradients 4, AdamW moments 4 + 4;
 *   bf16  BF16 working weights 2, FP32 master 4, FP32 gradients 4, FP32 moments 8;
 *   fp8   DeepSeek-V3's recipe: BF16 working weights 2 (the FP8 tiles are quantized from them
 *         per GEMM), FP32 master 4, FP32 gradients 4, BF16 moments 2 + 2. */
typedef struct {
    double weights, master, grads, moments, act;
} state_bytes;

static state_bytes bytes_for(fr_plan_precision p) {
    switch (p) {
    case FR_PLAN_FP32: return (state_bytes){4, 0, 4, 8, 4};
    case FR_PLAN_BF16: return (state_bytes){2, 4, 4, 8, 2};
    case FR_PLAN_FP8: return (state_bytes){2, 4, 4, 4, 2};
    }
    return (state_bytes){4, 0, 4, 8, 4};
}

/* Memory of one pipeline stage, per GPU: its parameters' states, sharded by ZeRO over their
 * data-parallel groups (dp for non-expert weights, dp / ep for experts), plus the activations
 * of `inflight` micro-batches over `act_layers` decoder layers and, on the stage with the head,
 * the FP32 logits of one micro-batch. */
typedef struct {
    double p_ne, p_e; /* parameters per GPU: non-expert, expert */
    double inflight, act_layers;
    int has_head;
} stage;

static double stage_memory(const fr_plan_input *in, const fr_plan_result *r, const stage *s, double act_per_layer_tok,
                           double parts[6]) {
    const fr_plan_layout *l = &in->layout;
    const state_bytes b = bytes_for(l->precision);
    const double s_ne = l->dp, s_e = (double)l->dp / l->ep;
    const double sh_ne = 1.0 / s_ne, sh_e = 1.0 / s_e;
    const double w = b.weights * (l->zero >= 3 ? s->p_ne * sh_ne + s->p_e * sh_e : s->p_ne + s->p_e);
    const double g = b.grads * (l->zero >= 2 ? s->p_ne * sh_ne + s->p_e * sh_e : s->p_ne + s->p_e);
    const double opt_params = l->zero >= 1 ? s->p_ne * sh_ne + s->p_e * sh_e : s->p_ne + s->p_e;
    const double master = b.master * opt_params, moments = b.moments * opt_params;
    /* with tensor parallelism the activations are split over tp (sequence parallelism) */
    const double tokens_gpu = r->micro_batch_tokens / l->tp;
    /* full recomputation keeps only each layer's input (H per token) for the micro-batches in
     * flight, plus the whole activation set of the one layer being recomputed */
    const double act = l->recompute
                           ? (s->inflight * s->act_layers * in->model->hidden + act_per_layer_tok) * tokens_gpu * b.act
                           : s->inflight * s->act_layers * act_per_layer_tok * tokens_gpu * b.act;
    const double logits = s->has_head ? tokens_gpu * in->model->vocab * 4.0 : 0;
    parts[0] = w;
    parts[1] = g;
    parts[2] = master;
    parts[3] = moments;
    parts[4] = act;
    parts[5] = logits;
    return w + g + master + moments + act + logits;
}

static void plan_memory(const fr_plan_input *in, fr_plan_result *r) {
    const fr_plan_model *m = in->model;
    const fr_plan_layout *l = &in->layout;
    const double pp = l->pp, tp = l->tp, ep = l->ep;
    /* non-expert and expert parameters of the main decoder layers, and of the end stages */
    const double ne_layers = m->n_dense * m->dense.params + m->n_moe * (m->moe.params - m->moe.routed_params);
    const double e_layers = m->n_moe * m->moe.routed_params;
    const double ne_mtp = m->mtp_depth * (m->mtp.params - m->mtp.routed_params);
    const double e_mtp = m->mtp_depth * m->mtp.routed_params;
    const double ne_first = m->embed_params, ne_last = m->head_params + m->final_norm_params + ne_mtp;
    const double act_per_layer = m->layers > 0 ? (m->n_dense * m->dense.act_elems_per_token +
                                                  m->n_moe * m->moe.act_elems_per_token) / m->layers
                                               : 0;
    stage st[2];
    int n_st;
    if (l->pp == 1) {
        /* one stage: gradient accumulation runs one micro-batch at a time */
        st[0] = (stage){(ne_layers + ne_first + ne_last) / tp, (e_layers + e_mtp) / ep, 1, m->layers, 1};
        n_st = 1;
    } else if (l->schedule == FR_PLAN_DUALPIPE) {
        /* DualPipe feeds micro-batches from both ends: GPU i holds stage i of one copy of the
         * model and stage pp-1-i of the other ("two copies of the parameters"), so GPU 0 holds
         * the embedding, the head and the MTP modules; its activations peak at pp + 1
         * micro-batches of one stage (the DeepSeek-V3 report's table 2). Optimizer state is
         * counted for both chunks (an upper bound). */
        st[0] = (stage){(2 * ne_layers / pp + ne_first + ne_last) / tp, (2 * e_layers / pp + e_mtp) / ep, pp + 1,
                        m->layers / pp, 1};
        n_st = 1;
    } else {
        /* 1F1B (also interleaved, approximately): the first stage keeps pp micro-batches in
         * flight before its first backward; the last stage one, plus the logits. */
        st[0] = (stage){(ne_layers / pp + ne_first) / tp, e_layers / pp / ep, pp, m->layers / pp, 0};
        st[1] = (stage){(ne_layers / pp + ne_last) / tp, (e_layers / pp + e_mtp) / ep, 1, m->layers / pp, 1};
        n_st = 2;
    }
    double best = -1, parts[6], best_parts[6] = {0};
    int pick = 0;
    for (int i = 0; i < n_st; i++) {
        double tot = stage_memory(in, r, &st[i], act_per_layer, parts);
        if (tot > best) {
            best = tot;
            pick = i;
            memcpy(best_parts, parts, sizeof parts);
        }
    }
    r->params_nonexpert_gpu = st[pick].p_ne;
    r->params_expert_gpu = st[pick].p_e;
    r->inflight_micro_batches = st[pick].inflight;
    r->stage_layers = l->schedule == FR_PLAN_DUALPIPE && l->pp > 1 ? 2.0 * m->layers / pp : m->layers / pp;
    r->mem_weights = best_parts[0];
    r->mem_grads = best_parts[1];
    r->mem_master = best_parts[2];
    r->mem_moments = best_parts[3];
    r->mem_activations = best_parts[4];
    r->mem_logits = best_parts[5];
    r->mem_total = best;
    const double hbm = in->cluster.hbm_gib * 1073741824.0;
    r->over_hbm = best > hbm;
    if (r->over_hbm)
        warn(r, "memory per GPU %.1f GiB exceeds the %.0f GiB of HBM: this layout does not fit (more pp, ep, tp or a higher zero stage)",
             best / 1073741824.0, in->cluster.hbm_gib);
}

/* Pipeline bubble as a fraction of the step's compute, with m micro-batches per step:
 *   1F1B         (pp - 1) (F + B) / (m (F + B))   = (pp - 1) / m
 *   interleaved  (pp - 1) / (v m), v model chunks per GPU (Megatron's interleaved 1F1B)
 *   DualPipe     (pp/2 - 1) (F&B + B - 3W) / (m (F + B)), the DeepSeek-V3 report's table 2,
 *                simplified with F = 1, B = 2 (a full backward: input and weight gradients),
 *                W = 1 (its weight-gradient half) and F&B = F + B = 3 (an overlapped
 *                forward+backward pair costs its compute; its communication is hidden):
 *                (pp/2 - 1) x 2 / (3 m). The simplification ignores that F&B takes longer
 *                than F + B when the communication does not fully hide. */
static double bubble_fraction(const fr_plan_layout *l, int m) {
    if (l->pp <= 1) return 0;
    switch (l->schedule) {
    case FR_PLAN_1F1B: return (l->pp - 1.0) / m;
    case FR_PLAN_INTERLEAVED: return (l->pp - 1.0) / ((double)l->virtual_stages * m);
    case FR_PLAN_DUALPIPE: return (l->pp / 2.0 - 1.0) * 2.0 / (3.0 * m);
    }
    return 0;
}

/* Ring collectives over n ranks move (n - 1) / n of the buffer per rank and phase:
 * all-reduce = reduce-scatter + all-gather = 2 (n - 1) / n. */
static double ring(double n) { return n > 1 ? (n - 1) / n : 0; }

static void plan_comm(const fr_plan_input *in, fr_plan_result *r) {
    const fr_plan_model *m = in->model;
    const fr_plan_cluster *c = &in->cluster;
    const fr_plan_layout *l = &in->layout;
    const fr_plan_assumptions *a = &in->assume;
    const double nvlink = c->nvlink_gbps * 1e9 * a->comm_efficiency, net = c->net_gbps * 1e9 * a->comm_efficiency;
    const double H = m->hidden, g = c->gpus_per_node;
    const state_bytes b = bytes_for(l->precision);

    /* Expert all-to-all. Per MoE layer a token's hidden state goes to its k experts (dispatch)
     * and comes back weighted (combine); the backward moves the gradients of both, at the
     * combine element size. Bytes per token copy: H x (dispatch + 3 x combine). The EP group
     * spans ep x tp GPUs, ep_nodes nodes. Inside one node every copy to another GPU crosses
     * NVLink: k (ep - 1) / ep copies. Across nodes, with node-limited routing (M > 0) a token
     * crosses the network once per remote node it targets, at most min(k, M, ep_nodes) nodes,
     * each with probability (ep_nodes - 1) / ep_nodes, and is forwarded over NVLink to its
     * experts inside the node (k (g - 1) / g copies): DeepSeek-V3's kernels. Without it (M = 0)
     * each of the k copies to a remote node crosses the network. The network and NVLink
     * transfers run at the same time (pipelined), so the slower one is the time. */
    const double moe_layers = m->n_moe + (m->mtp_is_moe ? m->mtp_depth : 0);
    const double tokens_gpu = r->tokens_per_dp_rank / l->tp;
    const double moe_layers_gpu = moe_layers / l->pp;
    const double copy_bytes = H * (a->a2a_dispatch_bytes + 3 * a->a2a_combine_bytes);
    double copies_net = 0, copies_nvl = 0;
    const double k = m->experts_per_token;
    r->ep_nodes = (int)ceil((double)l->ep * l->tp / g);
    if (l->ep > 1 && moe_layers > 0) {
        if (r->ep_nodes <= 1) {
            copies_nvl = k * (l->ep - 1.0) / l->ep;
        } else {
            const double remote = (r->ep_nodes - 1.0) / r->ep_nodes;
            const double ep_per_node = (double)l->ep / r->ep_nodes;
            if (l->max_nodes_per_token > 0) {
                double nodes = fmin(fmin(k, l->max_nodes_per_token), r->ep_nodes);
                copies_net = nodes * remote;
                copies_nvl = k * (g - 1) / g;
            } else {
                copies_net = k * remote;
                copies_nvl = k * (1 - remote) * (ep_per_node - 1) / ep_per_node;
            }
        }
    }
    r->a2a_bytes_net = tokens_gpu * moe_layers_gpu * copies_net * copy_bytes;
    r->a2a_bytes_nvlink = tokens_gpu * moe_layers_gpu * copies_nvl * copy_bytes;
    r->t_a2a_net = r->a2a_bytes_net / net;
    r->t_a2a_nvlink = r->a2a_bytes_nvlink / nvlink;
    r->t_a2a = fmax(r->t_a2a_net, r->t_a2a_nvlink);

    /* Tensor parallelism (Megatron with sequence parallelism): per layer two all-reduces in
     * the forward (after attention and after the FFN) and two in the backward, each of the
     * DP rank's tokens x H activations: 4 x 2 (tp - 1) / tp x tokens x H x bytes per layer.
     * Not overlapped with compute. */
    const double layers_gpu = (m->layers + m->mtp_depth) / (double)l->pp;
    r->tp_bytes = 4 * 2 * ring(l->tp) * r->tokens_per_dp_rank * H * b.act * layers_gpu;
    r->t_tp = r->tp_bytes / (l->tp <= g ? nvlink : net);
    if (l->tp > g) warn(r, "tp %d spans more than one node of %d GPUs: its all-reduces cross the network", l->tp, c->gpus_per_node);

    /* Data-parallel gradient sync, ring, per GPU, of the gradients it holds (FP32, 4 bytes):
     *   zero 0     all-reduce: 2 (n - 1) / n x grads
     *   zero 1, 2  reduce-scatter of the gradients + all-gather of the updated working
     *              weights: (n - 1) / n x (grads + weights)
     *   zero 3     as 1, 2, plus one more all-gather of the weights (forward and backward
     *              each gather them): (n - 1) / n x (grads + 2 weights)
     * n = dp for non-expert weights, dp / ep for experts. The group crosses the network when
     * its dp x tp GPUs do not fit in one node. */
    const double n_ne = l->dp, n_e = (double)l->dp / l->ep;
    double vol_ne, vol_e;
    if (l->zero == 0) {
        vol_ne = 2 * ring(n_ne) * b.grads;
        vol_e = 2 * ring(n_e) * b.grads;
    } else {
        const double gathers = l->zero == 3 ? 2 : 1;
        vol_ne = ring(n_ne) * (b.grads + gathers * b.weights);
        vol_e = ring(n_e) * (b.grads + gathers * b.weights);
    }
    r->dp_bytes_nonexpert = vol_ne * r->params_nonexpert_gpu;
    r->dp_bytes_expert = vol_e * r->params_expert_gpu;
    r->dp_over_net = (double)l->dp * l->tp > g;
    r->t_dp = (r->dp_bytes_nonexpert + r->dp_bytes_expert) / (r->dp_over_net ? net : nvlink);
}

int fr_plan_compute(const fr_plan_input *in, fr_plan_result *out) {
    fr_clear_error();
    if (!in || !out) return fr_error(FR_ERR_ARG, "fr_plan_compute: NULL argument");
    FR_CHECK(check_input(in));
    const fr_plan_model *m = in->model;
    const fr_plan_cluster *c = &in->cluster;
    const fr_plan_layout *l = &in->layout;
    const fr_plan_assumptions *a = &in->assume;
    fr_plan_result *r = out;
    memset(r, 0, sizeof *r);

    /* Work. */
    const double T = in->seq_len;
    double lin_seq = 0;
    const double f_seq = fr_plan_train_flops_seq(m, in->seq_len, &lin_seq);
    r->flops_per_token = f_seq / T;
    r->linear_flops_per_token = lin_seq / T;
    r->attention_flops_per_token = fr_plan_attention_flops_seq(m, in->seq_len) / T;
    r->flops_6n_per_token = 6 * m->params_active;
    r->seqs_per_step = in->batch_tokens / T;
    r->steps = in->tokens / in->batch_tokens;
    r->flops_step = r->flops_per_token * in->batch_tokens;
    r->flops_total = r->flops_per_token * in->tokens;
    r->tokens_per_dp_rank = in->batch_tokens / l->dp;
    const double seqs_dp = r->seqs_per_step / l->dp;
    if (seqs_dp < 1)
        return fr_error(FR_ERR_ARG, "batch-tokens %.6g is %.4g sequences of %d per DP rank (dp %d): each rank needs at least one",
                        in->batch_tokens, seqs_dp, in->seq_len, l->dp);
    r->micro_batches = l->micro_batches > 0 ? l->micro_batches : (int)floor(seqs_dp);
    r->micro_batch_seqs = seqs_dp / r->micro_batches;
    r->micro_batch_tokens = r->micro_batch_seqs * T;
    if (r->micro_batch_seqs < 1)
        return fr_error(FR_ERR_ARG, "micro-batches %d is more than the %.4g sequences each DP rank gets per step",
                        r->micro_batches, seqs_dp);
    if (l->schedule == FR_PLAN_DUALPIPE && l->pp > 1 && r->micro_batches % 2 != 0)
        return fr_error(FR_ERR_ARG, "impossible layout: DualPipe needs an even number of micro-batches (got %d)",
                        r->micro_batches);
    if (fabs(r->micro_batch_seqs - floor(r->micro_batch_seqs + 0.5)) > 1e-9)
        warn(r, "a micro-batch holds %.3f sequences: batch-tokens / (dp x micro-batches x seq-len) is not whole",
             r->micro_batch_seqs);
    if (l->pp > 1 && r->micro_batches < l->pp)
        warn(r, "%d micro-batches cannot fill %d pipeline stages: most of each step is bubble", r->micro_batches, l->pp);
    if (c->gpus % c->gpus_per_node != 0)
        warn(r, "%d GPUs is not a whole number of nodes of %d", c->gpus, c->gpus_per_node);

    /* Memory. */
    plan_memory(in, r);

    /* Compute: FLOPs per GPU over the peak that runs them, times the efficiency. Under the
     * FP8 recipe the block linears run at the FP8 peak and the rest (attention core, output
     * head, router, embedding gradient) at the BF16 peak; fp32 runs everything at the FP32 peak. */
    const double peak_lin = l->precision == FR_PLAN_FP8 ? c->peak_tflops_fp8
                            : l->precision == FR_PLAN_BF16 ? c->peak_tflops_bf16 : c->peak_tflops_fp32;
    const double peak_other = l->precision == FR_PLAN_FP32 ? c->peak_tflops_fp32 : c->peak_tflops_bf16;
    /* Full recomputation runs the forward twice: hardware FLOPs = model FLOPs x 4/3. */
    const double recompute = l->recompute ? 4.0 / 3.0 : 1.0;
    const double lin_step = recompute * r->linear_flops_per_token * in->batch_tokens;
    const double other_step = recompute * r->flops_step - lin_step;
    r->hardware_flops_step = recompute * r->flops_step;
    r->t_compute = (lin_step / peak_lin + other_step / peak_other) / (1e12 * c->gpus * a->compute_efficiency);
    r->peak_mixed_tflops = r->hardware_flops_step / (r->t_compute * c->gpus * a->compute_efficiency) / 1e12;
    r->bubble_fraction = bubble_fraction(l, r->micro_batches);
    r->t_bubble = r->bubble_fraction * r->t_compute;

    /* Communication. */
    plan_comm(in, r);

    /* Step time. Not overlapped: every term in sequence. Overlapped: the data-parallel sync
     * runs under the compute (bucketed during the backward) in every schedule, and DualPipe
     * also hides the expert all-to-all (a forward and a backward chunk of two micro-batches
     * run together, one computing while the other communicates); what the compute cannot
     * cover shows. The tensor-parallel all-reduces and the bubble always add. */
    r->a2a_overlapped = l->schedule == FR_PLAN_DUALPIPE;
    r->t_step_serial = r->t_compute + r->t_bubble + r->t_a2a + r->t_tp + r->t_dp;
    const double hidden_comm = r->t_dp + (r->a2a_overlapped ? r->t_a2a : 0);
    r->t_step_overlapped =
        fmax(r->t_compute, hidden_comm) + r->t_bubble + r->t_tp + (r->a2a_overlapped ? 0 : r->t_a2a);

    /* The run. MFU = model FLOPs / (step time x GPUs x reference peak): the BF16 peak (the
     * usual reference, also for FP8 runs), the FP32 peak for fp32. */
    r->reference_peak_tflops = l->precision == FR_PLAN_FP32 ? c->peak_tflops_fp32 : c->peak_tflops_bf16;
    r->mfu = r->flops_step / (r->t_step_overlapped * c->gpus * r->reference_peak_tflops * 1e12);
    r->mfu_serial = r->flops_step / (r->t_step_serial * c->gpus * r->reference_peak_tflops * 1e12);
    r->tokens_per_s = in->batch_tokens / r->t_step_overlapped;
    r->wall_hours = r->steps * r->t_step_overlapped / 3600.0;
    r->gpu_hours = r->wall_hours * c->gpus;
    r->gpu_hours_serial = r->steps * r->t_step_serial / 3600.0 * c->gpus;
    r->gpu_hours_per_trillion = r->gpu_hours / in->tokens * 1e12;
    r->cost_usd = r->gpu_hours * a->price_per_gpu_hour;
    r->cost_usd_serial = r->gpu_hours_serial * a->price_per_gpu_hour;
    return FR_OK;
}
