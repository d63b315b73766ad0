/* cmd_plan.c — `frugal plan`: what a training run costs on a GPU cluster, before it runs.
 *
 * A thin layer over src/plan/plan.h: options become a fr_plan_input (a run preset first, then
 * the flags over it), the library computes, this file prints every assumption next to the
 * result, as text or as one JSON object (`frugal cost --plan FILE` reads that JSON). */
#include "cli.h"

#include "frugal.h"
#include "plan/plan.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

void usage_plan(FILE *f) {
    fprintf(f,
            "usage: frugal plan (--preset RUN | --config FILE|MODEL --tokens N) [cluster] [layout] [assumptions] [--json]\n"
            "\n"
            "Plans a training run on a GPU cluster: parameters and FLOPs per token of the model,\n"
            "memory per GPU, time per step by term (compute, expert all-to-all, tensor-parallel\n"
            "all-reduce, data-parallel gradient sync, pipeline bubble), overlapped and not, MFU,\n"
            "tokens/s, wall time, GPU-hours and cost of the whole token budget. Every assumption is\n"
            "printed beside the result and is in the JSON. Method and checks: docs/plan.md.\n"
            "\n"
            "Model and run:\n"
            "  --preset RUN              a published run, every option below set as it was (flags override):\n"
            "                            deepseek-v3 (2,048 H800, 14.8T tokens), llama-3.1-405b (16,384 H100, 15.6T)\n"
            "  --config FILE|MODEL       a config.json (DeepSeek-V3 / V2, or model_type \"llama\") or a built-in\n"
            "                            model: %s\n"
            "  --tokens N                training tokens of the whole run (e.g. 14.8e12)\n"
            "  --seq-len N               tokens per sequence (default 4096)\n"
            "  --batch-tokens N          global batch per optimizer step, in tokens ...\n"
            "  --batch-seqs N            ... or in sequences (default 1024 sequences)\n"
            "\n"
            "Cluster (defaults: DeepSeek-V3's H800 cluster):\n"
            "  --gpus N                  GPUs (default 2048)\n"
            "  --gpus-per-node N         (default 8)\n"
            "  --peak-tflops X           dense BF16 peak per GPU (default 989)\n"
            "  --peak-tflops-fp8 X       dense FP8 peak per GPU (default 2 x the BF16 peak)\n"
            "  --peak-tflops-fp32 X      FP32 peak per GPU (default 67)\n"
            "  --hbm-gib X               memory per GPU (default 80)\n"
            "  --nvlink-gbps X           GB/s per GPU inside a node, one direction (default 160)\n"
            "  --net-gbps X              GB/s per GPU across nodes, one direction (default 50)\n"
            "\n"
            "Layout:\n"
            "  --dp N --tp N --pp N      data, tensor and pipeline parallel degrees: dp x tp x pp = gpus\n"
            "                            (defaults tp 1, pp 1, dp = gpus / (tp x pp))\n"
            "  --ep N                    expert parallel degree, divides dp and the routed experts (default 1)\n"
            "  --zero 0|1|2|3            ZeRO stage over the data-parallel group (default 1)\n"
            "  --precision fp8|bf16|fp32 training recipe (default bf16)\n"
            "  --schedule 1f1b|interleaved|dualpipe   pipeline schedule (default 1f1b)\n"
            "  --virtual-stages N        model chunks per GPU for interleaved (default 1)\n"
            "  --micro-batches N         per DP rank and step (default: one sequence each)\n"
            "  --max-nodes-per-token N   node-limited routing M, 0 = none (default: the config's topk_group when\n"
            "                            it has groups, else 0)\n"
            "  --recompute none|full     activation recomputation (default none)\n"
            "\n"
            "Assumptions:\n"
            "  --efficiency X            fraction of peak the compute reaches (default 0.40)\n"
            "  --measured PATH           use frugal's own measured MFU instead: a run folder or its metrics.jsonl\n"
            "                            (median MFU of the step records), or a ledger (with --measured-peak-gflops,\n"
            "                            the latest finished train run or --measured-run ID)\n"
            "  --measured-peak-gflops X  peak GFLOP/s per device of the ledger's runs\n"
            "  --measured-run ID         a run id (or prefix) in the ledger\n"
            "  --comm-efficiency X       fraction of link bandwidth the collectives reach (default 0.80)\n"
            "  --a2a-dispatch-bytes X    bytes per element sent to the experts (default fp8 1, bf16 2, fp32 4)\n"
            "  --a2a-combine-bytes X     bytes per element of the combine and backward transfers (default 2; fp32 4)\n"
            "  --price-per-gpu-hour X    $ (default 2.00, the DeepSeek-V3 report's H800 price)\n"
            "  --json                    print one JSON object instead of the text\n"
            "  -h, --help                show this help\n"
            "\n"
            "A layout that does not fit in memory is a warning, not an error. Exit status: 0, 1 for an\n"
            "unreadable config or measurement, 2 for a bad option or an impossible layout.\n",
            fr_plan_preset_names());
}

/* A published run: the model, the cluster, the layout and the token budget as reported. */
typedef struct {
    const char *name, *model;
    double tokens;
    int seq_len;
    double batch_seqs;
    fr_plan_cluster cluster;
    fr_plan_layout layout;
    const char *source;
} run_preset;

static int find_run_preset(const char *name, run_preset *out) {
    const fr_plan_cluster h800 = fr_plan_cluster_default();
    /* DeepSeek-V3 technical report: 2,048 H800, FP8 training, PP16 with DualPipe, EP64 over 8
     * nodes, ZeRO-1 data parallel, no tensor parallelism; node-limited routing to at most 4
     * nodes; 14.8T tokens at sequence length 4096, batch size ramped to 15,360 sequences. */
    static const fr_plan_layout dsv3 = {.dp = 128, .tp = 1, .pp = 16, .ep = 64, .zero = 1,
                                        .precision = FR_PLAN_FP8, .schedule = FR_PLAN_DUALPIPE,
                                        .virtual_stages = 1, .micro_batches = 0, .max_nodes_per_token = 4};
    /* Llama 3 report (table 4) for 405B: 16,384 H100 (80 GB, 8 per node, 400 Gb/s RoCE per GPU,
     * NVLink 900 GB/s both directions), BF16, TP8 x PP16 x DP128, sequence 8,192, 16M tokens
     * per batch, interleaved pipeline (its chunk count is not given: 4 is an assumption), FSDP
     * sharding optimizer state and gradients (ZeRO-2); 15.6T tokens (model card: 15T+). */
    static const fr_plan_layout llama = {.dp = 128, .tp = 8, .pp = 16, .ep = 1, .zero = 2,
                                         .precision = FR_PLAN_BF16, .schedule = FR_PLAN_INTERLEAVED,
                                         .virtual_stages = 4, .micro_batches = 0, .max_nodes_per_token = 0};
    if (strcmp(name, "deepseek-v3") == 0) {
        *out = (run_preset){"deepseek-v3", "deepseek-v3-671b", 14.8e12, 4096, 15360, h800, dsv3,
                            "DeepSeek-V3 technical report (arXiv 2412.19437): 2.664M H800 GPU-hours for 14.8T tokens"};
        return 1;
    }
    if (strcmp(name, "llama-3.1-405b") == 0) {
        fr_plan_cluster h100 = h800;
        h100.gpus = 16384;
        h100.nvlink_gbps = 450;
        *out = (run_preset){"llama-3.1-405b", "llama-3.1-405b", 15.6e12, 8192, 2048, h100, llama,
                            "Llama 3.1 model card: 30.84M H100 GPU-hours for the 405B; Llama 3 report: 15.6T tokens, 38-43% MFU"};
        return 1;
    }
    return 0;
}

/* Options. Strings are parsed after the whole command line is read, so a preset's values can
 * be overridden by flags in any order. */
typedef struct {
    const char *preset, *config, *tokens, *seq_len, *batch_tokens, *batch_seqs;
    const char *gpus, *gpn, *peak, *peak8, *peak32, *hbm, *nvlink, *net;
    const char *dp, *tp, *pp, *ep, *zero, *precision, *schedule, *vstages, *micro, *max_nodes, *recompute;
    const char *eff, *measured, *measured_peak, *measured_run, *comm_eff, *a2a_d, *a2a_c, *price;
    int json;
} plan_opts;

#define USAGE(...) cli_usage_error("plan", usage_plan, __VA_ARGS__)

static int parse_i(const char *opt, const char *text, long lo, long hi, int *out) {
    long v;
    if (cli_parse_int("plan", usage_plan, opt, text, lo, hi, &v) != 0) return -1;
    *out = (int)v;
    return 0;
}

static int parse_d(const char *opt, const char *text, double lo, double hi, double *out) {
    return cli_parse_double("plan", usage_plan, opt, text, lo, hi, out);
}

/* Where the compute efficiency came from, for the output. */
typedef struct {
    char text[300];
    const char *kind; /* "assumed", "measured-metrics", "measured-ledger" */
} eff_source;

static int measured_efficiency(const plan_opts *o, double *eff, eff_source *src) {
    int n_used = 0;
    double mfu = 0;
    int rc = fr_plan_measured_metrics(o->measured, &mfu, &n_used);
    if (rc == FR_OK) {
        src->kind = "measured-metrics";
        snprintf(src->text, sizeof src->text, "measured: median MFU of %d step records of %s", n_used, o->measured);
        *eff = mfu;
        return 0;
    }
    if (rc != FR_ERR_FORMAT) return cli_fail_lib("--measured");
    /* not a metrics file: a ledger */
    if (!o->measured_peak)
        return cli_fail("--measured %s: no step records with an MFU; as a ledger it needs --measured-peak-gflops "
                        "(a ledger records FLOPs and wall time, not the devices' peak)", o->measured);
    double peak;
    if (parse_d("--measured-peak-gflops", o->measured_peak, 1e-9, INFINITY, &peak) != 0) return CLI_EXIT_USAGE;
    char run_id[64] = "";
    if (fr_plan_measured_ledger(o->measured, o->measured_run, peak, &mfu, run_id, sizeof run_id) != FR_OK)
        return cli_fail_lib("--measured");
    src->kind = "measured-ledger";
    snprintf(src->text, sizeof src->text, "measured: run %s of ledger %s, FLOPs / (wall s x devices x %g GFLOP/s)",
             run_id, o->measured, peak);
    *eff = mfu;
    return 0;
}

/* Build the input from preset + flags. Returns 0, or an exit status. */
static int build_input(const plan_opts *o, fr_plan_model *model, fr_plan_input *in, eff_source *src, run_preset *rp,
                       int *have_rp) {
    *have_rp = 0;
    if (o->preset) {
        if (!find_run_preset(o->preset, rp))
            return USAGE("--preset: no published run '%s' (known: deepseek-v3, llama-3.1-405b)", o->preset);
        *have_rp = 1;
    }
    const char *cfg = o->config ? o->config : *have_rp ? rp->model : NULL;
    if (!cfg) return USAGE("give --config FILE|MODEL (or --preset RUN)");
    if (fr_plan_model_preset(model, cfg) != FR_OK && fr_plan_model_load(model, cfg) != FR_OK)
        return cli_fail("--config %s: %s (built-in models: %s)", cfg, fr_last_error(), fr_plan_preset_names());

    memset(in, 0, sizeof *in);
    in->model = model;
    in->cluster = *have_rp ? rp->cluster : fr_plan_cluster_default();
    fr_plan_layout *l = &in->layout;
    if (*have_rp) *l = rp->layout;
    else *l = (fr_plan_layout){.dp = 0, .tp = 1, .pp = 1, .ep = 1, .zero = 1, .precision = FR_PLAN_BF16,
                               .schedule = FR_PLAN_1F1B, .virtual_stages = 1, .micro_batches = 0,
                               .max_nodes_per_token = model->n_group > 1 ? model->topk_group : 0};
    in->seq_len = *have_rp ? rp->seq_len : 4096;
    double batch_seqs = *have_rp ? rp->batch_seqs : 1024;
    in->tokens = *have_rp ? rp->tokens : NAN;

    fr_plan_cluster *c = &in->cluster;
    int peak8_given = o->peak8 != NULL;
    if (o->tokens && parse_d("--tokens", o->tokens, 1, INFINITY, &in->tokens) != 0) return CLI_EXIT_USAGE;
    if (isnan(in->tokens)) return USAGE("give --tokens N (the run's training tokens, e.g. 14.8e12)");
    if (o->seq_len && parse_i("--seq-len", o->seq_len, 1, 1 << 24, &in->seq_len) != 0) return CLI_EXIT_USAGE;
    if (o->gpus && parse_i("--gpus", o->gpus, 1, 1 << 24, &c->gpus) != 0) return CLI_EXIT_USAGE;
    if (o->gpn && parse_i("--gpus-per-node", o->gpn, 1, 1 << 16, &c->gpus_per_node) != 0) return CLI_EXIT_USAGE;
    if (o->peak && parse_d("--peak-tflops", o->peak, 1e-9, INFINITY, &c->peak_tflops_bf16) != 0) return CLI_EXIT_USAGE;
    if (o->peak && !peak8_given) c->peak_tflops_fp8 = 2 * c->peak_tflops_bf16;
    if (o->peak8 && parse_d("--peak-tflops-fp8", o->peak8, 1e-9, INFINITY, &c->peak_tflops_fp8) != 0) return CLI_EXIT_USAGE;
    if (o->peak32 && parse_d("--peak-tflops-fp32", o->peak32, 1e-9, INFINITY, &c->peak_tflops_fp32) != 0)
        return CLI_EXIT_USAGE;
    if (o->hbm && parse_d("--hbm-gib", o->hbm, 1e-9, INFINITY, &c->hbm_gib) != 0) return CLI_EXIT_USAGE;
    if (o->nvlink && parse_d("--nvlink-gbps", o->nvlink, 1e-9, INFINITY, &c->nvlink_gbps) != 0) return CLI_EXIT_USAGE;
    if (o->net && parse_d("--net-gbps", o->net, 1e-9, INFINITY, &c->net_gbps) != 0) return CLI_EXIT_USAGE;

    if (o->tp && parse_i("--tp", o->tp, 1, 1 << 20, &l->tp) != 0) return CLI_EXIT_USAGE;
    if (o->pp && parse_i("--pp", o->pp, 1, 1 << 20, &l->pp) != 0) return CLI_EXIT_USAGE;
    if (o->ep && parse_i("--ep", o->ep, 1, 1 << 20, &l->ep) != 0) return CLI_EXIT_USAGE;
    if (o->dp) {
        if (parse_i("--dp", o->dp, 1, 1 << 24, &l->dp) != 0) return CLI_EXIT_USAGE;
    } else if (!*have_rp || o->gpus || o->tp || o->pp) {
        if (c->gpus % ((long)l->tp * l->pp) != 0)
            return USAGE("impossible layout: --gpus %d is not divisible by tp %d x pp %d", c->gpus, l->tp, l->pp);
        l->dp = c->gpus / (l->tp * l->pp);
    }
    if (o->zero && parse_i("--zero", o->zero, 0, 3, &l->zero) != 0) return CLI_EXIT_USAGE;
    if (o->precision) {
        if (strcmp(o->precision, "fp8") == 0) l->precision = FR_PLAN_FP8;
        else if (strcmp(o->precision, "bf16") == 0) l->precision = FR_PLAN_BF16;
        else if (strcmp(o->precision, "fp32") == 0) l->precision = FR_PLAN_FP32;
        else return USAGE("--precision must be fp8, bf16 or fp32 (got '%s')", o->precision);
    }
    if (o->schedule) {
        if (strcmp(o->schedule, "1f1b") == 0) l->schedule = FR_PLAN_1F1B;
        else if (strcmp(o->schedule, "interleaved") == 0) l->schedule = FR_PLAN_INTERLEAVED;
        else if (strcmp(o->schedule, "dualpipe") == 0) l->schedule = FR_PLAN_DUALPIPE;
        else return USAGE("--schedule must be 1f1b, interleaved or dualpipe (got '%s')", o->schedule);
    }
    if (o->vstages && parse_i("--virtual-stages", o->vstages, 1, 1 << 16, &l->virtual_stages) != 0) return CLI_EXIT_USAGE;
    if (o->micro && parse_i("--micro-batches", o->micro, 1, 1 << 30, &l->micro_batches) != 0) return CLI_EXIT_USAGE;
    if (o->max_nodes && parse_i("--max-nodes-per-token", o->max_nodes, 0, 1 << 20, &l->max_nodes_per_token) != 0)
        return CLI_EXIT_USAGE;
    if (o->recompute) {
        if (strcmp(o->recompute, "none") == 0) l->recompute = 0;
        else if (strcmp(o->recompute, "full") == 0) l->recompute = 1;
        else return USAGE("--recompute must be none or full (got '%s')", o->recompute);
    }

    if (o->batch_tokens && o->batch_seqs) return USAGE("give --batch-tokens or --batch-seqs, not both");
    if (o->batch_seqs && parse_d("--batch-seqs", o->batch_seqs, 1, INFINITY, &batch_seqs) != 0) return CLI_EXIT_USAGE;
    in->batch_tokens = batch_seqs * in->seq_len;
    if (o->batch_tokens && parse_d("--batch-tokens", o->batch_tokens, 1, INFINITY, &in->batch_tokens) != 0)
        return CLI_EXIT_USAGE;

    in->assume = fr_plan_assumptions_default(l->precision);
    fr_plan_assumptions *a = &in->assume;
    src->kind = "assumed";
    snprintf(src->text, sizeof src->text, "assumed (default; --efficiency or --measured to change)");
    if (o->eff && o->measured) return USAGE("give --efficiency or --measured, not both");
    if ((o->measured_peak || o->measured_run) && !o->measured)
        return USAGE("--measured-peak-gflops and --measured-run go with --measured LEDGER");
    if (o->eff) {
        if (parse_d("--efficiency", o->eff, 1e-6, 1, &a->compute_efficiency) != 0) return CLI_EXIT_USAGE;
        snprintf(src->text, sizeof src->text, "given (--efficiency)");
    }
    if (o->measured) {
        int st = measured_efficiency(o, &a->compute_efficiency, src);
        if (st != 0) return st;
        if (!(a->compute_efficiency > 0 && a->compute_efficiency <= 1))
            return cli_fail("--measured %s: the measured MFU %.4g is not in (0, 1]", o->measured, a->compute_efficiency);
    }
    if (o->comm_eff && parse_d("--comm-efficiency", o->comm_eff, 1e-6, 1, &a->comm_efficiency) != 0) return CLI_EXIT_USAGE;
    if (o->a2a_d && parse_d("--a2a-dispatch-bytes", o->a2a_d, 1e-3, 64, &a->a2a_dispatch_bytes) != 0) return CLI_EXIT_USAGE;
    if (o->a2a_c && parse_d("--a2a-combine-bytes", o->a2a_c, 1e-3, 64, &a->a2a_combine_bytes) != 0) return CLI_EXIT_USAGE;
    if (o->price && parse_d("--price-per-gpu-hour", o->price, 0, INFINITY, &a->price_per_gpu_hour) != 0)
        return CLI_EXIT_USAGE;
    return 0;
}

/* ------------------------------------------------------------------ output */

static const char *fmt_g(char *buf, size_t n, double x) {
    return cli_human_count(buf, n, x);
}

static const char *fmt_gib(char *buf, size_t n, double bytes) {
    snprintf(buf, n, "%.2f GiB", bytes / 1073741824.0);
    return buf;
}

static const char *fmt_time(char *buf, size_t n, double s) {
    if (s >= 1) snprintf(buf, n, "%.3f s", s);
    else snprintf(buf, n, "%.1f ms", s * 1e3);
    return buf;
}

static const char *bubble_formula(fr_plan_schedule s) {
    switch (s) {
    case FR_PLAN_1F1B: return "(pp-1)/m";
    case FR_PLAN_INTERLEAVED: return "(pp-1)/(v m)";
    case FR_PLAN_DUALPIPE: return "(pp/2-1)(F&B+B-3W)/(m(F+B)) with F=1,B=2,W=1,F&B=3: (pp/2-1) 2/(3m)";
    }
    return "?";
}

static const char *zero_text(int z) {
    switch (z) {
    case 0: return "ZeRO-0 (all replicated; all-reduce of the gradients)";
    case 1: return "ZeRO-1 (master weights and moments sharded; reduce-scatter + all-gather)";
    case 2: return "ZeRO-2 (also gradients sharded; reduce-scatter + all-gather)";
    default: return "ZeRO-3 (also weights sharded; reduce-scatter + 2 all-gathers)";
    }
}

static void state_bytes_of(fr_plan_precision p, double b[5]) {
    const double t[3][5] = {{4, 0, 4, 8, 4}, {2, 4, 4, 8, 2}, {2, 4, 4, 4, 2}};
    memcpy(b, t[p], sizeof t[0]);
}

static void print_text(const fr_plan_input *in, const fr_plan_result *r, const eff_source *src, const run_preset *rp,
                       int have_rp) {
    const fr_plan_model *m = in->model;
    const fr_plan_cluster *c = &in->cluster;
    const fr_plan_layout *l = &in->layout;
    const fr_plan_assumptions *a = &in->assume;
    char b1[64], b2[64], b3[64], b4[64], b5[64];
    printf("frugal plan: %s, %s tokens on %d GPUs\n", m->name, fmt_g(b1, sizeof b1, in->tokens), c->gpus);
    if (have_rp) printf("  preset %s: %s\n", rp->name, rp->source);
    printf("\nmodel\n");
    if (m->routed_experts > 0)
        printf("  %-14s %s: %d layers (%d dense, %d MoE), hidden %d, %d heads, %d routed experts (%d per token), %d MTP module%s\n",
               "shape", m->arch, m->layers, m->n_dense, m->n_moe, m->hidden, m->heads, m->routed_experts,
               m->experts_per_token, m->mtp_depth, m->mtp_depth == 1 ? "" : "s");
    else
        printf("  %-14s %s: %d dense layers, hidden %d, %d heads, %d MTP modules\n", "shape", m->arch, m->layers, m->hidden,
               m->heads, m->mtp_depth);
    printf("  %-14s %s main model + %s MTP = %s total; %s active per token (%s without the embedding)\n",
           "parameters", fmt_g(b1, sizeof b1, m->params_main), fmt_g(b2, sizeof b2, m->params_total - m->params_main),
           fmt_g(b3, sizeof b3, m->params_total), fmt_g(b4, sizeof b4, m->params_active),
           fmt_g(b5, sizeof b5, m->params_active_no_embed));
    printf("  %-14s %.1f GFLOP per token (6 x active = %.1f, causal attention %.1f at seq %d; %.1f%% in the block linears)\n",
           "training FLOPs", r->flops_per_token / 1e9, r->flops_6n_per_token / 1e9, r->attention_flops_per_token / 1e9,
           in->seq_len, 100 * r->linear_flops_per_token / r->flops_per_token);

    double sb[5];
    state_bytes_of(l->precision, sb);
    printf("\nassumptions\n");
    printf("  %-14s %d GPUs, %d per node; dense peak %g TFLOP/s BF16, %g FP8, %g FP32; %g GiB HBM\n", "cluster", c->gpus,
           c->gpus_per_node, c->peak_tflops_bf16, c->peak_tflops_fp8, c->peak_tflops_fp32, c->hbm_gib);
    printf("  %-14s NVLink %g GB/s and network %g GB/s per GPU, one direction; collectives reach %.0f%% of them\n", "links",
           c->nvlink_gbps, c->net_gbps, 100 * a->comm_efficiency);
    printf("  %-14s dp %d x tp %d x pp %d = %d GPUs; ep %d (%d node%s); %s\n", "layout", l->dp, l->tp, l->pp,
           l->dp * l->tp * l->pp, l->ep, r->ep_nodes, r->ep_nodes == 1 ? "" : "s", zero_text(l->zero));
    printf("  %-14s %s, %s%s; %d micro-batches of %.4g sequence%s per DP rank; recompute %s\n", "schedule",
           fr_plan_precision_name(l->precision), fr_plan_schedule_name(l->schedule),
           l->schedule == FR_PLAN_INTERLEAVED ? (snprintf(b1, sizeof b1, " (v = %d)", l->virtual_stages), b1) : "",
           r->micro_batches, r->micro_batch_seqs, r->micro_batch_seqs == 1 ? "" : "s", l->recompute ? "full" : "none");
    printf("  %-14s %s sequences x %d = %s tokens per step; %s steps\n", "batch", fmt_g(b2, sizeof b2, r->seqs_per_step),
           in->seq_len, fmt_g(b3, sizeof b3, in->batch_tokens), fmt_g(b4, sizeof b4, r->steps));
    printf("  %-14s compute at %.1f%% of peak: %s\n", "efficiency", 100 * a->compute_efficiency, src->text);
    printf("  %-14s dispatch %g byte%s, combine and backward %g bytes per element; node-limited routing: %s\n",
           "all-to-all", a->a2a_dispatch_bytes, a->a2a_dispatch_bytes == 1 ? "" : "s", a->a2a_combine_bytes,
           l->max_nodes_per_token > 0 ? (snprintf(b1, sizeof b1, "at most %d nodes per token", l->max_nodes_per_token), b1)
                                      : "none");
    printf("  %-14s bytes per parameter: weights %g, FP32 master %g, gradients %g, moments %g; activations %g per element\n",
           "state", sb[0], sb[1], sb[2], sb[3], sb[4]);
    printf("  %-14s $%.2f per GPU-hour\n", "price", a->price_per_gpu_hour);

    printf("\nmemory per GPU (the heaviest stage: %s non-expert + %s expert parameters)\n",
           fmt_g(b1, sizeof b1, r->params_nonexpert_gpu), fmt_g(b2, sizeof b2, r->params_expert_gpu));
    printf("  %-18s %12s\n", "weights", fmt_gib(b1, sizeof b1, r->mem_weights));
    printf("  %-18s %12s\n", "gradients", fmt_gib(b1, sizeof b1, r->mem_grads));
    printf("  %-18s %12s\n", "master weights", fmt_gib(b1, sizeof b1, r->mem_master));
    printf("  %-18s %12s\n", "optimizer moments", fmt_gib(b1, sizeof b1, r->mem_moments));
    printf("  %-18s %12s   %g micro-batches in flight x %.3g layers x %.4g tokens\n", "activations",
           fmt_gib(b1, sizeof b1, r->mem_activations), r->inflight_micro_batches, in->model->layers / (double)l->pp,
           r->micro_batch_tokens / l->tp);
    printf("  %-18s %12s   FP32, one micro-batch\n", "logits", fmt_gib(b1, sizeof b1, r->mem_logits));
    printf("  %-18s %12s   of %g GiB: %s\n", "total", fmt_gib(b1, sizeof b1, r->mem_total), c->hbm_gib,
           r->over_hbm ? "DOES NOT FIT" : "fits");

    printf("\ntime per step\n");
    printf("  %-22s %12s   %.4g PFLOP per GPU at %.0f TFLOP/s x %.2f\n", "compute", fmt_time(b1, sizeof b1, r->t_compute),
           r->hardware_flops_step / c->gpus / 1e15, r->peak_mixed_tflops, a->compute_efficiency);
    printf("  %-22s %12s   network %s, NVLink %s per GPU%s\n", "expert all-to-all", fmt_time(b1, sizeof b1, r->t_a2a),
           cli_human_bytes(b2, sizeof b2, r->a2a_bytes_net), cli_human_bytes(b3, sizeof b3, r->a2a_bytes_nvlink),
           r->a2a_overlapped ? "; hidden under compute (DualPipe)" : "; not overlapped");
    printf("  %-22s %12s   %s per GPU, not overlapped\n", "tensor-parallel", fmt_time(b1, sizeof b1, r->t_tp),
           cli_human_bytes(b2, sizeof b2, r->tp_bytes));
    printf("  %-22s %12s   %s per GPU over %s, under the backward\n", "data-parallel sync", fmt_time(b1, sizeof b1, r->t_dp),
           cli_human_bytes(b2, sizeof b2, r->dp_bytes_nonexpert + r->dp_bytes_expert),
           r->dp_over_net ? "the network" : "NVLink");
    printf("  %-22s %12s   %.2f%% of compute: %s\n", "pipeline bubble", fmt_time(b1, sizeof b1, r->t_bubble),
           100 * r->bubble_fraction, bubble_formula(l->schedule));
    printf("  %-22s %12s\n", "step, overlapped", fmt_time(b1, sizeof b1, r->t_step_overlapped));
    printf("  %-22s %12s   (every term in sequence)\n", "step, not overlapped", fmt_time(b1, sizeof b1, r->t_step_serial));

    printf("\nthe run (overlapped; not overlapped in brackets)\n");
    printf("  %-14s %.1f%% of the %s peak (%.1f%%)\n", "MFU", 100 * r->mfu, l->precision == FR_PLAN_FP32 ? "FP32" : "BF16",
           100 * r->mfu_serial);
    printf("  %-14s %s\n", "tokens/s", fmt_g(b1, sizeof b1, r->tokens_per_s));
    printf("  %-14s %.1f days\n", "wall time", r->wall_hours / 24);
    printf("  %-14s %s (%s); %s per trillion tokens\n", "GPU-hours", fmt_g(b1, sizeof b1, r->gpu_hours),
           fmt_g(b2, sizeof b2, r->gpu_hours_serial), fmt_g(b3, sizeof b3, r->gpu_hours_per_trillion));
    printf("  %-14s $%s ($%s)\n", "cost", fmt_g(b1, sizeof b1, r->cost_usd), fmt_g(b2, sizeof b2, r->cost_usd_serial));
    for (int i = 0; i < r->n_warnings; i++) printf("warning: %s\n", r->warnings[i]);
}

static cJSON *obj(cJSON *parent, const char *name) { return cJSON_AddObjectToObject(parent, name); }
static void num(cJSON *o, const char *name, double v) {
    if (isfinite(v)) cJSON_AddNumberToObject(o, name, v);
    else cJSON_AddNullToObject(o, name);
}

static int print_json(const fr_plan_input *in, const fr_plan_result *r, const eff_source *src, const run_preset *rp,
                      int have_rp) {
    const fr_plan_model *m = in->model;
    const fr_plan_cluster *c = &in->cluster;
    const fr_plan_layout *l = &in->layout;
    const fr_plan_assumptions *a = &in->assume;
    cJSON *root = cJSON_CreateObject();
    if (!root) return cli_fail("out of memory");
    cJSON_AddStringToObject(root, "kind", "frugal-plan");
    cJSON_AddNumberToObject(root, "v", 1);
    if (have_rp) {
        cJSON_AddStringToObject(root, "preset", rp->name);
        cJSON_AddStringToObject(root, "preset_source", rp->source);
    }
    cJSON *jm = obj(root, "model");
    cJSON_AddStringToObject(jm, "name", m->name);
    cJSON_AddStringToObject(jm, "arch", m->arch);
    num(jm, "layers", m->layers);
    num(jm, "dense_layers", m->n_dense);
    num(jm, "moe_layers", m->n_moe);
    num(jm, "mtp_modules", m->mtp_depth);
    num(jm, "hidden", m->hidden);
    num(jm, "heads", m->heads);
    num(jm, "vocab", m->vocab);
    num(jm, "routed_experts", m->routed_experts);
    num(jm, "experts_per_token", m->experts_per_token);
    num(jm, "params_total", m->params_total);
    num(jm, "params_main", m->params_main);
    num(jm, "params_active", m->params_active);
    num(jm, "params_routed", m->params_routed);
    num(jm, "params_active_no_embed", m->params_active_no_embed);
    num(jm, "flops_per_token", r->flops_per_token);
    num(jm, "flops_6n_per_token", r->flops_6n_per_token);
    num(jm, "attention_flops_per_token", r->attention_flops_per_token);
    num(jm, "linear_flops_per_token", r->linear_flops_per_token);

    cJSON *ja = obj(root, "assumptions");
    num(ja, "tokens", in->tokens);
    num(ja, "seq_len", in->seq_len);
    num(ja, "batch_tokens", in->batch_tokens);
    num(ja, "batch_seqs", r->seqs_per_step);
    cJSON *jc = obj(ja, "cluster");
    num(jc, "gpus", c->gpus);
    num(jc, "gpus_per_node", c->gpus_per_node);
    num(jc, "peak_tflops_bf16", c->peak_tflops_bf16);
    num(jc, "peak_tflops_fp8", c->peak_tflops_fp8);
    num(jc, "peak_tflops_fp32", c->peak_tflops_fp32);
    num(jc, "hbm_gib", c->hbm_gib);
    num(jc, "nvlink_gbps", c->nvlink_gbps);
    num(jc, "net_gbps", c->net_gbps);
    cJSON *jl = obj(ja, "layout");
    num(jl, "dp", l->dp);
    num(jl, "tp", l->tp);
    num(jl, "pp", l->pp);
    num(jl, "ep", l->ep);
    num(jl, "zero", l->zero);
    cJSON_AddStringToObject(jl, "precision", fr_plan_precision_name(l->precision));
    cJSON_AddStringToObject(jl, "schedule", fr_plan_schedule_name(l->schedule));
    num(jl, "virtual_stages", l->virtual_stages);
    num(jl, "micro_batches", r->micro_batches);
    num(jl, "micro_batch_seqs", r->micro_batch_seqs);
    num(jl, "max_nodes_per_token", l->max_nodes_per_token);
    cJSON_AddStringToObject(jl, "recompute", l->recompute ? "full" : "none");
    cJSON *je = obj(ja, "efficiency");
    num(je, "compute", a->compute_efficiency);
    cJSON_AddStringToObject(je, "compute_source", src->kind);
    cJSON_AddStringToObject(je, "compute_source_text", src->text);
    num(je, "comm", a->comm_efficiency);
    cJSON *jb = obj(ja, "bytes");
    num(jb, "a2a_dispatch", a->a2a_dispatch_bytes);
    num(jb, "a2a_combine", a->a2a_combine_bytes);
    double sb[5];
    state_bytes_of(l->precision, sb);
    num(jb, "weights", sb[0]);
    num(jb, "master", sb[1]);
    num(jb, "grads", sb[2]);
    num(jb, "moments", sb[3]);
    num(jb, "activations", sb[4]);
    num(jb, "logits", 4);
    num(ja, "price_per_gpu_hour", a->price_per_gpu_hour);
    cJSON *jf = obj(ja, "formulas");
    cJSON_AddStringToObject(jf, "bubble", bubble_formula(l->schedule));
    cJSON_AddStringToObject(jf, "overlap",
                            "overlapped step = max(compute, dp sync [+ all-to-all under DualPipe]) + bubble + tp all-reduce"
                            " [+ all-to-all otherwise]; not overlapped = the sum");
    cJSON_AddStringToObject(jf, "a2a", "tokens/GPU x MoE layers/stage x copies x hidden x (dispatch + 3 x combine) bytes");
    cJSON_AddStringToObject(jf, "dp_sync", zero_text(l->zero));
    cJSON_AddStringToObject(jf, "mfu", "model FLOPs per step / (overlapped step time x GPUs x BF16 peak (FP32 peak for fp32))");
    cJSON_AddStringToObject(jf, "inflight", l->pp <= 1 ? "1 micro-batch (no pipeline)"
                                            : l->schedule == FR_PLAN_DUALPIPE ? "pp + 1 micro-batches of one stage (DualPipe)"
                                                                               : "pp micro-batches on the first stage (1F1B)");

    cJSON *jmem = obj(root, "memory");
    num(jmem, "params_nonexpert_gpu", r->params_nonexpert_gpu);
    num(jmem, "params_expert_gpu", r->params_expert_gpu);
    num(jmem, "weights_bytes", r->mem_weights);
    num(jmem, "grads_bytes", r->mem_grads);
    num(jmem, "master_bytes", r->mem_master);
    num(jmem, "moments_bytes", r->mem_moments);
    num(jmem, "activations_bytes", r->mem_activations);
    num(jmem, "logits_bytes", r->mem_logits);
    num(jmem, "total_bytes", r->mem_total);
    num(jmem, "inflight_micro_batches", r->inflight_micro_batches);
    cJSON_AddBoolToObject(jmem, "fits", !r->over_hbm);

    cJSON *jt = obj(root, "time");
    num(jt, "compute_s", r->t_compute);
    num(jt, "peak_mixed_tflops", r->peak_mixed_tflops);
    num(jt, "a2a_s", r->t_a2a);
    num(jt, "a2a_net_s", r->t_a2a_net);
    num(jt, "a2a_nvlink_s", r->t_a2a_nvlink);
    num(jt, "a2a_net_bytes", r->a2a_bytes_net);
    num(jt, "a2a_nvlink_bytes", r->a2a_bytes_nvlink);
    num(jt, "ep_nodes", r->ep_nodes);
    cJSON_AddBoolToObject(jt, "a2a_overlapped", r->a2a_overlapped);
    num(jt, "tp_s", r->t_tp);
    num(jt, "tp_bytes", r->tp_bytes);
    num(jt, "dp_s", r->t_dp);
    num(jt, "dp_bytes", r->dp_bytes_nonexpert + r->dp_bytes_expert);
    cJSON_AddBoolToObject(jt, "dp_over_network", r->dp_over_net);
    num(jt, "bubble_s", r->t_bubble);
    num(jt, "bubble_fraction", r->bubble_fraction);
    num(jt, "step_overlapped_s", r->t_step_overlapped);
    num(jt, "step_serial_s", r->t_step_serial);

    cJSON *jr = obj(root, "run");
    num(jr, "steps", r->steps);
    num(jr, "tokens", in->tokens);
    num(jr, "flops", r->flops_total);
    num(jr, "flops_step", r->flops_step);
    num(jr, "gpus", c->gpus);
    num(jr, "mfu", r->mfu);
    num(jr, "mfu_serial", r->mfu_serial);
    num(jr, "tokens_per_s", r->tokens_per_s);
    num(jr, "wall_hours", r->wall_hours);
    num(jr, "gpu_hours", r->gpu_hours);
    num(jr, "gpu_hours_serial", r->gpu_hours_serial);
    num(jr, "gpu_hours_per_trillion_tokens", r->gpu_hours_per_trillion);
    num(jr, "cost_usd", r->cost_usd);
    num(jr, "cost_usd_serial", r->cost_usd_serial);
    cJSON *jw = cJSON_AddArrayToObject(root, "warnings");
    for (int i = 0; i < r->n_warnings; i++) cJSON_AddItemToArray(jw, cJSON_CreateString(r->warnings[i]));
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    if (!text) return cli_fail("out of memory");
    puts(text);
    free(text);
    return CLI_EXIT_OK;
}

int cmd_plan(int argc, char **argv) {
    plan_opts o;
    memset(&o, 0, sizeof o);
    const cli_opt opts[] = {
        {"--preset", &o.preset, NULL},
        {"--config", &o.config, NULL},
        {"--tokens", &o.tokens, NULL},
        {"--seq-len", &o.seq_len, NULL},
        {"--batch-tokens", &o.batch_tokens, NULL},
        {"--batch-seqs", &o.batch_seqs, NULL},
        {"--gpus", &o.gpus, NULL},
        {"--gpus-per-node", &o.gpn, NULL},
        {"--peak-tflops", &o.peak, NULL},
        {"--peak-tflops-fp8", &o.peak8, NULL},
        {"--peak-tflops-fp32", &o.peak32, NULL},
        {"--hbm-gib", &o.hbm, NULL},
        {"--nvlink-gbps", &o.nvlink, NULL},
        {"--net-gbps", &o.net, NULL},
        {"--dp", &o.dp, NULL},
        {"--tp", &o.tp, NULL},
        {"--pp", &o.pp, NULL},
        {"--ep", &o.ep, NULL},
        {"--zero", &o.zero, NULL},
        {"--precision", &o.precision, NULL},
        {"--schedule", &o.schedule, NULL},
        {"--virtual-stages", &o.vstages, NULL},
        {"--micro-batches", &o.micro, NULL},
        {"--max-nodes-per-token", &o.max_nodes, NULL},
        {"--recompute", &o.recompute, NULL},
        {"--efficiency", &o.eff, NULL},
        {"--measured", &o.measured, NULL},
        {"--measured-peak-gflops", &o.measured_peak, NULL},
        {"--measured-run", &o.measured_run, NULL},
        {"--comm-efficiency", &o.comm_eff, NULL},
        {"--a2a-dispatch-bytes", &o.a2a_d, NULL},
        {"--a2a-combine-bytes", &o.a2a_c, NULL},
        {"--price-per-gpu-hour", &o.price, NULL},
        {"--json", NULL, &o.json},
    };
    for (int i = 1; i < argc; i++) {
        if (cli_is_help(argv[i])) {
            usage_plan(stdout);
            return CLI_EXIT_OK;
        }
        int r = cli_opt_match("plan", usage_plan, argc, argv, &i, opts, CLI_N_OPTS(opts));
        if (r < 0) return CLI_EXIT_USAGE;
        if (r == 0) {
            if (argv[i][0] == '-') return USAGE("unknown option '%s'", argv[i]);
            return USAGE("unexpected argument '%s'", argv[i]);
        }
    }
    fr_plan_model model;
    fr_plan_input in;
    eff_source src;
    run_preset rp;
    int have_rp = 0;
    int st = build_input(&o, &model, &in, &src, &rp, &have_rp);
    if (st != 0) return st;
    fr_plan_result res;
    if (fr_plan_compute(&in, &res) != FR_OK) {
        /* the library names the input as the flag spells it, without the dashes */
        return USAGE("%s", fr_last_error());
    }
    if (o.json) {
        for (int i = 0; i < res.n_warnings; i++) fprintf(stderr, "frugal plan: warning: %s\n", res.warnings[i]);
        return print_json(&in, &res, &src, &rp, have_rp);
    }
    print_text(&in, &res, &src, &rp, have_rp);
    return CLI_EXIT_OK;
}
