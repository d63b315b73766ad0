/* cmd_train.c — `frugal train`: flags to fr_train_args, a progress line per step, Ctrl-C. */
#include "cli.h"

#include "frugal.h"

#include <math.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void usage_train(FILE *f) {
    fr_train_args d;
    fr_train_args_default(&d);
    fprintf(f,
            "usage: frugal train --config CONFIG.json --data DIR --out RUN_DIR (--steps N | --tokens N) [options]\n"
            "       frugal train --resume RUN_DIR [--steps N | --tokens N] [--precision P] [--moments F]\n"
            "\n"
            "Trains a DeepSeek-V3-style model on token shards made by `frugal data prepare`. Writes\n"
            "checkpoints (Hugging Face folders RUN_DIR/ckpt-NNNNNNNN + training state), metrics.jsonl,\n"
            "and records the run in the ledger (default: RUN_DIR/../ledger.jsonl; see `frugal cost`).\n"
            "Ctrl-C (SIGINT), SIGTERM or SIGHUP finishes the current step, saves a checkpoint and\n"
            "stops (a second one stops at once; the previous checkpoint stays valid); --resume\n"
            "continues with exactly the losses an uninterrupted run would have had (same --threads).\n"
            "\n"
            "What:\n"
            "  --config FILE        model config.json (a new model, initialised from --seed)\n"
            "  --init DIR           or start from the weights of a model folder\n"
            "  --data DIR           prepared data (train_*.bin, val_*.bin, tokenizer.json)\n"
            "  --out RUN_DIR        run folder to create\n"
            "  --resume RUN_DIR     continue a run from its latest checkpoint\n"
            "How long:\n"
            "  --steps N            optimizer steps\n"
            "  --tokens N           or training tokens (steps = ceil(N / (batch x seq x accum)))\n"
            "Batch:\n"
            "  --batch B            sequences per micro-batch (default %d)\n"
            "  --seq T              tokens per sequence (default %d)\n"
            "  --accum N            micro-batches per step, gradient accumulation (default %d)\n"
            "Optimizer (AdamW; no weight decay on norms and biases):\n"
            "  --lr X               peak learning rate (default %g)\n"
            "  --schedule S         cosine | wsd | constant (default cosine)\n"
            "  --lr-router-scale X  the MoE routers' weights (mlp.gate.weight) train at lr x X (> 0, default 1;\n"
            "                       not the correction bias, which --bias-speed moves)\n"
            "  --lr-experts-scale X the routed experts (mlp.experts.*) train at lr x X (> 0, default 1);\n"
            "                       weight decay follows (AdamW's is lr x decay). Not with --lora-rank\n"
            "  --precision P        fp32 | bf16 | fp8 for the block linears' GEMMs. bf16: BF16 inputs, FP32\n"
            "                       accumulation (AMX / AVX512-BF16 via oneDNN; elsewhere an emulation no\n"
            "                       faster than fp32, with a warning). fp8: DeepSeek-V3's recipe (E4M3,\n"
            "                       1x128 / 128x128 scales, FP32 accumulation; emulated on the CPU).\n"
            "                       Default fp32; with --resume: the saved one, or switch (recorded)\n"
            "  --moments F          fp32 | bf16: how AdamW's two moments are stored (default: bf16 for fp8,\n"
            "                       as DeepSeek-V3 does; fp32 otherwise)\n"
            "  --fp8-grad-tiles S   1x128 (the recipe) | 128x128: output-gradient tiles of fp8's\n"
            "                       input-gradient GEMM (the report's diverging experiment)\n"
            "  --warmup N           linear warmup steps (default %d)\n"
            "  --min-lr-frac X      final learning rate as a fraction of the peak (default %g)\n"
            "  --decay-frac X       wsd: fraction of steps spent decaying (default %g)\n"
            "  --beta1 X --beta2 X --eps X   AdamW moments (default %g, %g, %g)\n"
            "  --weight-decay X     (default %g)\n"
            "  --clip X             clip the global gradient norm to X, 0 = off (default %g)\n"
            "DeepSeek-V3 balancing and MTP:\n"
            "  --bias-speed X       gamma of the auxiliary-loss-free router-bias update (default %g)\n"
            "  --balance-alpha X    weight of the sequence-wise balance loss (default %g)\n"
            "  --mtp-lambda X       weight of the multi-token-prediction loss (default %g)\n"
            "Fine-tuning (with --init):\n"
            "  --lora-rank R        train low-rank adapters (LoRA) of rank R instead of every weight: the base\n"
            "                       model is frozen (no gradients, no optimizer state; the router-bias\n"
            "                       balancer off); checkpoints hold the adapter as a PEFT folder\n"
            "                       (adapter_config.json + adapter_model.safetensors)\n"
            "  --lora-alpha A       scale = A / R (default 2 R)\n"
            "  --rslora             scale = A / sqrt(R) (rank-stabilised LoRA)\n"
            "  --lora-base F        keep the frozen base's block linears as f32 (default), bf16 or q8_0\n"
            "                       (QLoRA-style: dequantized for each product; less memory, same math as\n"
            "                       the FP32 model with the dequantized weights)\n"
            "  --lora-targets LIST  comma-separated: q_proj, q_a_proj, q_b_proj, kv_a_proj_with_mqa, kv_b_proj,\n"
            "                       o_proj, mlp, shared_experts, experts, or all (default all)\n"
            "Distillation (see `frugal distill --help`):\n"
            "  --distill-topk K     add a logit-distillation loss on the teacher's K largest logits\n"
            "  --teacher DIR        the teacher model (else teacher top-k shards beside the data's shards)\n"
            "  --distill-temperature T   (default %g)\n"
            "  --distill-alpha A    loss = A T^2 KL + (1 - A) CE (default %g)\n"
            "Run:\n"
            "  --seed N             initialisation and data order (default %llu)\n"
            "  --threads N          CPU threads (default: OMP_NUM_THREADS or all cores)\n"
            "  --device D           cpu (default) | cuda: where the model and its training run (an NVIDIA GPU\n"
            "                       through the CUDA backend; a checkpoint moves freely between devices)\n"
            "  --eval-interval N    steps between validation evaluations, 0 = only at the end (default %d)\n"
            "  --eval-batches N     validation batches per evaluation (default %d)\n"
            "  --ckpt-interval N    steps between checkpoints, 0 = only at the end (default %d)\n"
            "  --sample-interval N  steps between samples, 0 = none (default %d)\n"
            "  --sample-tokens N    tokens per sample (default %d)\n"
            "  --prompt TEXT        sample prompt (default \"And\")\n"
            "Many processes (OpenMPI: mpirun -np N frugal train ...; N = data-parallel x expert-parallel):\n"
            "  --ep E               split the routed experts of every MoE layer over groups of E ranks; tokens\n"
            "                       travel to their experts' rank and back (all-to-all); default 1\n"
            "  --node-limit M       with --ep: each token's experts on at most M ranks of its group (DeepSeek-\n"
            "                       V3's node-limited routing: the routing's groups become the ranks' experts,\n"
            "                       n_group = E, topk_group = M; this changes the model; off by default)\n"
            "  --zero1              shard the AdamW moments over the ranks that hold the same parameters\n"
            "                       (ZeRO-1: reduce-scatter the gradients, all-gather the new parameters)\n"
            "                       --batch stays the global batch: each rank takes batch / N sequences. Rank\n"
            "                       0 writes the run folder and one ledger record for the job (ranks x\n"
            "                       threads); a failed or killed rank ends the whole job. Launch options: a\n"
            "                       --resume may use another layout or world size\n"
            "Cost ledger:\n"
            "  --ledger FILE        ledger file (default RUN_DIR/../ledger.jsonl)\n"
            "  --price-hour X       $ per core-hour (default %g)\n"
            "  --watts X            watts per core (default %g)\n"
            "  --price-kwh X        $ per kWh (default %g)\n"
            "Output:\n"
            "  --peak-gflops X      FP32 peak for MFU instead of measuring it at start (1.5 s)\n"
            "  --quiet              no per-step lines (events still go to metrics.jsonl)\n"
            "  --json               print each event as one JSON line on stdout\n"
            "  -h, --help           show this help\n"
            "\n"
            "Exit status: 0 finished, 1 failure, 2 usage error; stopped by a signal with the checkpoint\n"
            "saved: 130 SIGINT (Ctrl-C), 143 SIGTERM, 129 SIGHUP (128 + the signal number).\n",
            d.batch_size, d.seq_len, d.grad_accum, d.lr, d.warmup_steps, d.min_lr_frac, d.decay_frac, d.beta1,
            d.beta2, d.eps, d.weight_decay, d.grad_clip, d.bias_update_speed, d.balance_alpha, d.mtp_lambda,
            d.distill_temperature, d.distill_alpha, (unsigned long long)d.seed, d.eval_interval, d.eval_batches, d.ckpt_interval, d.sample_interval,
            d.sample_tokens, d.prices.usd_per_device_hour, d.prices.watts_per_device, d.prices.usd_per_kwh);
}

/* The first SIGINT / SIGTERM / SIGHUP is taken by the watcher thread of cli_signals.c (no
 * signal handler runs inside the library); fr_train polls it before every step. */
static int should_stop(void *user) {
    (void)user;
    return cli_stop_signal() != 0;
}

typedef struct {
    int quiet, json;
    size_t rss_peak, mem_plan; /* of the last step */
} out_opts;

static void fmt_time(char *buf, size_t n, double s) {
    if (!isfinite(s) || s < 0) s = 0;
    long t = (long)(s + 0.5);
    if (t >= 3600) snprintf(buf, n, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
    else snprintf(buf, n, "%ld:%02ld", t / 60, t % 60);
}

static void on_event(void *user, const fr_train_event *ev) {
    out_opts *o = user;
    if (ev->type == FR_EV_STEP) {
        o->rss_peak = ev->rss_peak_bytes;
        o->mem_plan = ev->mem_plan_bytes;
    }
    if (o->json) {
        printf("{\"event\": ");
        switch (ev->type) {
        case FR_EV_STEP:
            printf("\"step\", \"step\": %ld, \"max_steps\": %ld, \"loss\": ", ev->step, ev->max_steps);
            cli_json_number(stdout, ev->loss.loss);
            printf(", \"loss_main\": ");
            cli_json_number(stdout, ev->loss.loss_main);
            printf(", \"lr\": %.6g, \"tokens_per_s\": %.1f, \"gflops\": %.2f, \"mfu\": %.4f, \"elapsed_s\": %.2f, \"cost_usd\": %.6f, \"rss_peak_bytes\": %zu, \"mem_plan_bytes\": %zu",
                   ev->lr, ev->tokens_per_s, ev->gflops, ev->mfu, ev->elapsed_s, ev->cost_usd, ev->rss_peak_bytes, ev->mem_plan_bytes);
            if (ev->world_size > 1)
                printf(", \"world_size\": %d, \"comm_bytes\": [%.0f, %.0f, %.0f, %.0f], \"comm_model_bytes\": [%.0f, %.0f, %.0f, %.0f], \"comm_share\": %.4f",
                       ev->world_size, ev->comm_bytes[0], ev->comm_bytes[1], ev->comm_bytes[2], ev->comm_bytes[3],
                       ev->comm_model_bytes[0], ev->comm_model_bytes[1], ev->comm_model_bytes[2], ev->comm_model_bytes[3],
                       ev->comm_share);
            break;
        case FR_EV_EVAL:
            printf("\"eval\", \"step\": %ld, \"val_loss\": ", ev->step);
            cli_json_number(stdout, ev->val_loss);
            printf(", \"val_bpb\": ");
            cli_json_number(stdout, ev->val_bpb);
            break;
        case FR_EV_SAMPLE:
        case FR_EV_CHECKPOINT:
        case FR_EV_INFO:
            printf("\"%s\", \"step\": %ld, \"text\": ",
                   ev->type == FR_EV_SAMPLE ? "sample" : ev->type == FR_EV_CHECKPOINT ? "checkpoint" : "info", ev->step);
            cli_json_string(stdout, ev->text ? ev->text : "");
            break;
        }
        printf("}\n");
        fflush(stdout);
        return;
    }
    if (o->quiet && ev->type == FR_EV_STEP) return;
    char el[32], eta[32];
    switch (ev->type) {
    case FR_EV_STEP: {
        fmt_time(el, sizeof el, ev->elapsed_s);
        fmt_time(eta, sizeof eta, ev->eta_s);
        int w = 1;
        for (long m = ev->max_steps; m >= 10; m /= 10) w++;
        printf("step %*ld/%ld | loss %.4f (main %.4f", w, ev->step, ev->max_steps, ev->loss.loss, ev->loss.loss_main);
        if (ev->loss.loss_mtp[0] > 0) printf(" mtp %.4f", ev->loss.loss_mtp[0]);
        if (ev->loss.loss_kd > 0) printf(" kl %.4f", ev->loss.loss_kd);
        printf(") | lr %.2e | %6.0f tok/s | %5.1f GFLOP/s", ev->lr, ev->tokens_per_s, ev->gflops);
        if (ev->mfu > 0) printf(" | MFU %4.1f%%", 100 * ev->mfu);
        if (ev->n_moe > 0) {
            double mx = 0;
            for (int i = 0; i < ev->n_moe; i++) mx = ev->maxvio[i] > mx ? ev->maxvio[i] : mx;
            printf(" | MaxVio %.2f", mx);
        }
        if (ev->world_size > 1) { /* rank 0's payload this step, what the formulas predict, time share */
            double sent = 0, model = 0;
            for (int k = 0; k < 4; k++) sent += ev->comm_bytes[k], model += ev->comm_model_bytes[k];
            printf(" | comm %.2f MB (model %.2f) %2.0f%%", sent / 1e6, model / 1e6, 100 * ev->comm_share);
        }
        printf(" | %s, ETA %s | $%.4f\n", el, eta, ev->cost_usd);
        break;
    }
    case FR_EV_EVAL:
        printf("eval step %ld | val loss %.4f", ev->step, ev->val_loss);
        if (isfinite(ev->val_bpb)) printf(" | %.4f bits/byte", ev->val_bpb);
        printf("\n");
        break;
    case FR_EV_SAMPLE:
        printf("sample step %ld | %s\n", ev->step, ev->text);
        break;
    case FR_EV_CHECKPOINT:
        printf("checkpoint step %ld -> %s\n", ev->step, ev->text);
        break;
    case FR_EV_INFO:
        printf("%s\n", ev->text);
        break;
    }
    fflush(stdout);
}

static int copy_arg(char *dst, size_t n, const char *opt, const char *v) {
    if (strlen(v) >= n) {
        fprintf(stderr, "frugal train: the value of %s is too long\n", opt);
        return -1;
    }
    strcpy(dst, v);
    return 0;
}

int cmd_train(int argc, char **argv) {
    fr_train_args a;
    fr_train_args_default(&a);
    a.max_steps = 0;
    const char *resume = NULL, *v = NULL, *device = "cpu";
    out_opts oo = {0, 0, 0, 0};
    int have_peak = 0;
    const cli_opt flags[] = {{"--quiet", NULL, &oo.quiet}, {"--json", NULL, &oo.json}, {"--zero1", NULL, &a.zero1}};
    for (int i = 1; i < argc; i++) {
        int r;
        long n;
        double x;
        if (cli_is_help(argv[i])) {
            usage_train(stdout);
            return CLI_EXIT_OK;
        }
#define STROPT(name, field) \
        if ((r = cli_opt_value("train", usage_train, argc, argv, &i, name, &v)) != 0) { \
            if (r < 0 || copy_arg(a.field, sizeof a.field, name, v) < 0) return CLI_EXIT_USAGE; \
            continue; \
        }
#define INTOPT(name, lo, hi, dst) \
        if ((r = cli_opt_value("train", usage_train, argc, argv, &i, name, &v)) != 0) { \
            if (r < 0 || cli_parse_int("train", usage_train, name, v, lo, hi, &n) < 0) return CLI_EXIT_USAGE; \
            dst = n; \
            continue; \
        }
#define DBLOPT(name, lo, hi, dst) \
        if ((r = cli_opt_value("train", usage_train, argc, argv, &i, name, &v)) != 0) { \
            if (r < 0 || cli_parse_double("train", usage_train, name, v, lo, hi, &x) < 0) return CLI_EXIT_USAGE; \
            dst = x; \
            continue; \
        }
        STROPT("--config", model_config)
        STROPT("--init", init_model)
        STROPT("--data", data_dir)
        STROPT("--out", run_dir)
        STROPT("--prompt", sample_prompt)
        STROPT("--ledger", ledger_path)
        if ((r = cli_opt_value("train", usage_train, argc, argv, &i, "--resume", &v)) != 0) {
            if (r < 0 || copy_arg(a.run_dir, sizeof a.run_dir, "--resume", v) < 0) return CLI_EXIT_USAGE;
            resume = v;
            continue;
        }
        if ((r = cli_opt_value("train", usage_train, argc, argv, &i, "--device", &v)) != 0) {
            if (r < 0) return CLI_EXIT_USAGE;
            if (strcmp(v, "cpu") != 0 && strcmp(v, "cuda") != 0)
                return cli_usage_error("train", usage_train, "--device must be cpu or cuda, got '%s'", v);
            device = v;
            continue;
        }
        if ((r = cli_opt_value("train", usage_train, argc, argv, &i, "--precision", &v)) != 0) {
            if (r < 0) return CLI_EXIT_USAGE;
            if (strcmp(v, "fp32") != 0 && strcmp(v, "bf16") != 0 && strcmp(v, "fp8") != 0)
                return cli_usage_error("train", usage_train, "--precision must be fp32, bf16 or fp8, got '%s'", v);
            snprintf(a.precision, sizeof a.precision, "%s", v);
            continue;
        }
        if ((r = cli_opt_value("train", usage_train, argc, argv, &i, "--moments", &v)) != 0) {
            if (r < 0) return CLI_EXIT_USAGE;
            if (strcmp(v, "fp32") != 0 && strcmp(v, "bf16") != 0)
                return cli_usage_error("train", usage_train, "--moments must be fp32 or bf16, got '%s'", v);
            snprintf(a.moments, sizeof a.moments, "%s", v);
            continue;
        }
        if ((r = cli_opt_value("train", usage_train, argc, argv, &i, "--fp8-grad-tiles", &v)) != 0) {
            if (r < 0) return CLI_EXIT_USAGE;
            if (strcmp(v, "1x128") != 0 && strcmp(v, "128x128") != 0)
                return cli_usage_error("train", usage_train, "--fp8-grad-tiles must be 1x128 or 128x128, got '%s'", v);
            a.fp8_grad_tile_rows = strcmp(v, "1x128") == 0 ? 1 : 128;
            continue;
        }
        if ((r = cli_opt_value("train", usage_train, argc, argv, &i, "--schedule", &v)) != 0) {
            if (r < 0) return CLI_EXIT_USAGE;
            if (!strcmp(v, "cosine")) a.schedule = FR_LR_COSINE;
            else if (!strcmp(v, "wsd")) a.schedule = FR_LR_WSD;
            else if (!strcmp(v, "constant")) a.schedule = FR_LR_CONSTANT;
            else return cli_usage_error("train", usage_train, "--schedule must be cosine, wsd or constant, got '%s'", v);
            continue;
        }
        INTOPT("--steps", 1, 1000000000L, a.max_steps)
        INTOPT("--batch", 1, 1 << 20, a.batch_size)
        INTOPT("--seq", 2, 1 << 20, a.seq_len)
        INTOPT("--accum", 1, 1 << 20, a.grad_accum)
        INTOPT("--warmup", 0, 1000000000L, a.warmup_steps)
        INTOPT("--threads", 1, 4096, a.threads)
        INTOPT("--ep", 1, 1 << 16, a.expert_parallel)
        INTOPT("--lora-rank", 1, 4096, a.lora_rank)
        DBLOPT("--lora-alpha", 1e-6, 1e6, a.lora_alpha)
        if ((r = cli_opt_value("train", usage_train, argc, argv, &i, "--lora-targets", &v)) != 0) {
            if (r < 0 || copy_arg(a.lora_targets, sizeof a.lora_targets, "--lora-targets", v) < 0) return CLI_EXIT_USAGE;
            if (fr_lora_check_targets(v) != FR_OK) return cli_usage_error("train", usage_train, "%s", fr_last_error());
            continue;
        }
        STROPT("--teacher", teacher)
        STROPT("--lora-base", lora_base)
        INTOPT("--distill-topk", 1, 1 << 20, a.distill_topk)
        DBLOPT("--distill-temperature", 1e-3, 1e3, a.distill_temperature)
        DBLOPT("--distill-alpha", 0, 1, a.distill_alpha)
        if (!strcmp(argv[i], "--rslora")) {
            a.lora_rslora = 1;
            continue;
        }
        INTOPT("--node-limit", 1, 1 << 16, a.node_limit)
        INTOPT("--eval-interval", 0, 1000000000L, a.eval_interval)
        INTOPT("--eval-batches", 1, 1000000, a.eval_batches)
        INTOPT("--ckpt-interval", 0, 1000000000L, a.ckpt_interval)
        INTOPT("--sample-interval", 0, 1000000000L, a.sample_interval)
        INTOPT("--sample-tokens", 1, 100000, a.sample_tokens)
        if ((r = cli_opt_value("train", usage_train, argc, argv, &i, "--seed", &v)) != 0) {
            if (r < 0 || cli_parse_int("train", usage_train, "--seed", v, 0, LONG_MAX, &n) < 0) return CLI_EXIT_USAGE;
            a.seed = (uint64_t)n;
            continue;
        }
        DBLOPT("--tokens", 1, 1e18, a.max_tokens)
        DBLOPT("--lr", 1e-12, 10, a.lr)
        DBLOPT("--min-lr-frac", 0, 1, a.min_lr_frac)
#define SCALEOPT(name, dst) \
        if ((r = cli_opt_value("train", usage_train, argc, argv, &i, name, &v)) != 0) { \
            if (r < 0 || cli_parse_double("train", usage_train, name, v, 0, 1e6, &x) < 0) return CLI_EXIT_USAGE; \
            if (!(x > 0)) return cli_usage_error("train", usage_train, "%s multiplies the learning rate: it must be > 0, got '%s'", name, v); \
            dst = x; \
            continue; \
        }
        SCALEOPT("--lr-router-scale", a.lr_router_scale)
        SCALEOPT("--lr-experts-scale", a.lr_experts_scale)
#undef SCALEOPT
        DBLOPT("--decay-frac", 0, 1, a.decay_frac)
        DBLOPT("--beta1", 0, 0.999999, a.beta1)
        DBLOPT("--beta2", 0, 0.999999999, a.beta2)
        DBLOPT("--eps", 1e-30, 1, a.eps)
        DBLOPT("--weight-decay", 0, 10, a.weight_decay)
        DBLOPT("--clip", 0, 1e9, a.grad_clip)
        DBLOPT("--bias-speed", 0, 1, a.bias_update_speed)
        DBLOPT("--balance-alpha", 0, 10, a.balance_alpha)
        DBLOPT("--mtp-lambda", 0, 10, a.mtp_lambda)
        DBLOPT("--price-hour", 0, 1e6, a.prices.usd_per_device_hour)
        DBLOPT("--watts", 0, 1e6, a.prices.watts_per_device)
        DBLOPT("--price-kwh", 0, 1e6, a.prices.usd_per_kwh)
        if ((r = cli_opt_value("train", usage_train, argc, argv, &i, "--peak-gflops", &v)) != 0) {
            if (r < 0 || cli_parse_double("train", usage_train, "--peak-gflops", v, 1e-3, 1e12, &x) < 0) return CLI_EXIT_USAGE;
            a.peak_gflops = x;
            have_peak = 1;
            continue;
        }
        if ((r = cli_opt_match("train", usage_train, argc, argv, &i, flags, CLI_N_OPTS(flags))) != 0) {
            if (r < 0) return CLI_EXIT_USAGE;
            continue;
        }
#undef STROPT
#undef INTOPT
#undef DBLOPT
        return cli_usage_error("train", usage_train, "unknown option '%s'", argv[i]);
    }
    if (!resume) {
        if (!a.run_dir[0]) return cli_usage_error("train", usage_train, "--out RUN_DIR is required");
        if (!a.data_dir[0]) return cli_usage_error("train", usage_train, "--data DIR is required");
        if (!a.model_config[0] && !a.init_model[0]) return cli_usage_error("train", usage_train, "--config FILE or --init DIR is required");
        if (a.model_config[0] && a.init_model[0]) return cli_usage_error("train", usage_train, "give --config or --init, not both");
        if (a.max_steps <= 0 && a.max_tokens <= 0) return cli_usage_error("train", usage_train, "--steps N or --tokens N is required");
        if (a.lora_rank > 0 && (a.lr_router_scale != 1 || a.lr_experts_scale != 1))
            return cli_usage_error("train", usage_train, "--lr-router-scale / --lr-experts-scale apply to full training: "
                                   "with --lora-rank the routers and experts are frozen");
        if (cli_check_dir(a.data_dir, "data folder") != CLI_EXIT_OK) return CLI_EXIT_FAIL;
    } else if (cli_check_dir(resume, "run folder") != CLI_EXIT_OK) {
        return CLI_EXIT_FAIL;
    }
    if (a.threads > 0) fr_set_num_threads(a.threads);
    if (fr_set_device(device) != FR_OK) return cli_fail_lib("cannot train on this device");
    /* started by mpirun: join the job's ranks (a world of one otherwise) */
    if (fr_world_init(NULL, NULL) != FR_OK) return cli_fail_lib("cannot join the MPI job");
    const int rank = fr_world_rank(), nranks = fr_world_size();
    if (rank != 0) oo.quiet = 1, oo.json = 0; /* rank 0 reports for the job */
    if (nranks == 1 && a.expert_parallel > 1)
        return cli_usage_error("train", usage_train, "--ep %d needs a job of several ranks (mpirun -np N)", a.expert_parallel);
    /* from here on a signal stops the run cleanly (a signal before the first step: nothing to save) */
    cli_signals_catch("frugal train", "finishing this step, saving a checkpoint");
    if (!have_peak) {
        fr_peak p = {0};
        if (fr_measure_fp32_peak(&p) == FR_OK) a.peak_gflops = p.gflops;
        if (!oo.json && rank == 0)
            printf("measured FP32 peak: %.1f GFLOP/s (%s, %d threads%s)\n", p.gflops, p.isa, p.threads,
                   nranks > 1 ? ", on rank 0 while every rank measured" : "");
    }

    fr_train_hooks hooks = {on_event, should_stop, &oo};
    fr_train_result res;
    int rc = fr_train(&a, resume != NULL, &hooks, &res);
    if (rc != FR_OK && nranks > 1) { /* name the rank, and end the others rather than leave them waiting */
        fprintf(stderr, "frugal train: rank %d of %d: training failed: %s\n", rank, nranks, fr_last_error());
        fflush(stderr);
        fr_world_abort(CLI_EXIT_FAIL);
    }
    if (rc != FR_OK) return cli_fail_lib("training failed");
    fr_world_finalize();
    if (rank != 0) return res.interrupted ? cli_stop_exit_code() : CLI_EXIT_OK;
    if (!oo.json) {
        printf("%s run %s at step %ld: loss %.4f", res.interrupted ? "stopped" : "finished", res.run_id, res.steps_done, res.final_loss);
        if (isfinite(res.val_loss)) printf(", val loss %.4f", res.val_loss);
        printf("\ncheckpoint: %s\n", res.checkpoint);
        if (oo.mem_plan > 0) {
            char a[32], b[32];
            printf("memory: peak resident %s, memory plan %s (parameters, gradients, AdamW moments, activations, GEMM packing): %+.1f%%\n",
                   cli_human_bytes(a, sizeof a, (double)oo.rss_peak), cli_human_bytes(b, sizeof b, (double)oo.mem_plan),
                   100.0 * ((double)oo.rss_peak / (double)oo.mem_plan - 1.0));
        }
    }
    return res.interrupted ? cli_stop_exit_code() : CLI_EXIT_OK;
}
