/* cmd_info.c — `frugal info`: what a config describes and what it costs to hold.
 *
 * Parameter counts come from the library (fr_model_num_params / fr_model_num_active_params)
 * on a loaded or freshly created model. A config too large to instantiate on this machine
 * (the full DeepSeek-V3, say) is counted instead by a closed-form estimate from the config,
 * and the output says so. */
#include "cli.h"

#include "frugal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void usage_info(FILE *f) {
    fprintf(f,
            "usage: frugal info (--model DIR | --config FILE) [--json]\n"
            "\n"
            "Summarises a DeepSeek-V3 / V2 configuration: layers (dense / MoE / MTP), MLA ranks,\n"
            "experts, total and active parameter counts, the latent KV cache per token next to what\n"
            "plain multi-head attention would cache, and the CPU features found on this machine.\n"
            "\n"
            "Options:\n"
            "  --model DIR     a model folder (config.json + safetensors weights); the weights are loaded\n"
            "  --config FILE   a config.json alone; the model is created in memory with seed 0\n"
            "  --json          print one JSON object instead of the text summary\n"
            "  -h, --help      show this help\n");
}

static const char *topk_method_name(fr_topk_method m) {
    switch (m) {
    case FR_TOPK_NOAUX_TC: return "noaux_tc";
    case FR_TOPK_GROUP_LIMITED_GREEDY: return "group_limited_greedy";
    case FR_TOPK_GREEDY: return "greedy";
    }
    return "?";
}

/* Closed-form parameter count from the config, used only when the model is too large to
 * instantiate here. Counts the tensors of the Hugging Face layout; for MTP modules the block,
 * enorm, hnorm, eh_proj and shared_head.norm (their embedding and head are shared with the
 * main model and not counted twice). Active = the main model (no MTP modules) minus the
 * routed experts a token does not use — the library's definitions. */
static void estimate_params(const fr_config *c, double *total, double *active) {
    double h = c->hidden_size, H = c->num_attention_heads;
    double qk = c->qk_nope_head_dim + c->qk_rope_head_dim;
    double attn = 0;
    if (c->q_lora_rank > 0) attn += h * c->q_lora_rank + c->q_lora_rank + (double)c->q_lora_rank * H * qk;
    else attn += h * H * qk;
    attn += h * (c->kv_lora_rank + c->qk_rope_head_dim) + c->kv_lora_rank;
    attn += (double)c->kv_lora_rank * H * (c->qk_nope_head_dim + c->v_head_dim);
    attn += H * c->v_head_dim * h;
    double norms = 2 * h;
    double dense_mlp = 3 * h * c->intermediate_size;
    double expert = 3 * h * c->moe_intermediate_size;
    double shared = 3 * h * (double)c->moe_intermediate_size * c->n_shared_experts;
    double gate = (double)c->n_routed_experts * h + (c->has_correction_bias ? c->n_routed_experts : 0);
    double t = 0, a = 0;
    int n_layers = c->num_hidden_layers + c->num_nextn_predict_layers;
    for (int l = 0; l < n_layers; l++) {
        double common = attn + norms;
        if (l >= c->num_hidden_layers) common += 2 * h + 2 * h * h + h; /* enorm, hnorm, eh_proj, shared_head.norm */
        int mtp = l >= c->num_hidden_layers;
        if (fr_config_layer_is_moe(c, l)) {
            t += common + gate + shared + expert * c->n_routed_experts;
            if (!mtp) a += common + gate + shared + expert * c->num_experts_per_tok;
        } else {
            t += common + dense_mlp;
            if (!mtp) a += common + dense_mlp;
        }
    }
    double emb = (double)c->vocab_size * h;
    double head = c->tie_word_embeddings ? 0 : emb;
    t += emb + head + h;
    a += emb + head + h;
    *total = t;
    *active = a;
}

static double physical_memory_bytes(void) {
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    if (pages <= 0 || page <= 0) return 0;
    return (double)pages * (double)page;
}

int cmd_info(int argc, char **argv) {
    const char *model_dir = NULL, *config_path = NULL;
    int json = 0;
    const cli_opt opts[] = {{"--model", &model_dir, NULL}, {"--config", &config_path, NULL}, {"--json", NULL, &json}};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int r;
        if (cli_is_help(a)) {
            usage_info(stdout);
            return CLI_EXIT_OK;
        }
        if ((r = cli_opt_match("info", usage_info, argc, argv, &i, opts, CLI_N_OPTS(opts))) != 0) {
            if (r < 0) return CLI_EXIT_USAGE;
        } else if (a[0] == '-') {
            return cli_usage_error("info", usage_info, "unknown option '%s'", a);
        } else {
            return cli_usage_error("info", usage_info, "unexpected argument '%s'", a);
        }
    }
    if (!model_dir && !config_path)
        return cli_usage_error("info", usage_info, "give either '--model DIR' or '--config FILE'");
    if (model_dir && config_path)
        return cli_usage_error("info", usage_info, "give only one of '--model DIR' and '--config FILE'");

    /* Read the config first: it decides whether the model can be instantiated here. */
    fr_config cfg;
    char *cfg_path = NULL;
    const char *source = model_dir ? model_dir : config_path;
    if (model_dir) {
        if (cli_check_dir(model_dir, "model folder") != CLI_EXIT_OK) return CLI_EXIT_FAIL;
        size_t n = strlen(model_dir) + sizeof "/config.json";
        cfg_path = malloc(n);
        if (!cfg_path) return cli_fail("out of memory");
        snprintf(cfg_path, n, "%s/config.json", model_dir);
    }
    int st = fr_config_load(&cfg, model_dir ? cfg_path : config_path);
    free(cfg_path);
    if (st != FR_OK) return cli_fail_lib("cannot read the config");

    double est_total = 0, est_active = 0;
    estimate_params(&cfg, &est_total, &est_active);
    /* A model holds at least its FP32 parameters and gradients. */
    double need = 8.0 * est_total, have = physical_memory_bytes();
    fr_model *m = NULL;
    const char *too_big = NULL;
    char why[160];
    if (have > 0 && need > 0.5 * have) {
        char b1[32], b2[32];
        snprintf(why, sizeof why, "needs about %s for FP32 parameters and gradients; this machine has %s",
                 cli_human_bytes(b1, sizeof b1, need), cli_human_bytes(b2, sizeof b2, have));
        too_big = why;
    } else {
        st = model_dir ? fr_model_load(&m, model_dir) : fr_model_create(&m, &cfg, 0);
        if (st == FR_ERR_NOMEM) {
            snprintf(why, sizeof why, "%s", fr_last_error());
            too_big = why;
            m = NULL;
        } else if (st != FR_OK) {
            return cli_fail_lib(model_dir ? "cannot load the model" : "cannot create the model");
        }
    }
    const fr_config *c = m ? fr_model_config(m) : &cfg;
    double total = m ? (double)fr_model_num_params(m) : est_total;
    double active = m ? (double)fr_model_num_active_params(m) : est_active;

    int L = c->num_hidden_layers, D = c->num_nextn_predict_layers;
    int n_moe = 0;
    for (int l = 0; l < L; l++) n_moe += fr_config_layer_is_moe(c, l) ? 1 : 0;
    int n_dense = L - n_moe;
    int qk_head = c->qk_nope_head_dim + c->qk_rope_head_dim;
    /* Latent KV cache: c_KV and k_pe per token per layer. Plain MHA: K and V for every head. */
    double latent_vals = c->kv_lora_rank + c->qk_rope_head_dim;
    double mha_vals = (double)c->num_attention_heads * (qk_head + c->v_head_dim);
    double ctx = c->max_position_embeddings;
    const char *feat = fr_cpu_features();
    if (!feat) feat = "";

    if (json) {
        FILE *o = stdout;
        fprintf(o, "{\"command\": \"info\", \"source\": ");
        cli_json_string(o, source);
        fprintf(o, ", \"model_type\": ");
        cli_json_string(o, c->model_type);
        fprintf(o,
                ", \"vocab_size\": %d, \"hidden_size\": %d, \"num_hidden_layers\": %d, \"dense_layers\": %d, "
                "\"moe_layers\": %d, \"mtp_modules\": %d, \"num_attention_heads\": %d, \"q_lora_rank\": %d, "
                "\"kv_lora_rank\": %d, \"qk_nope_head_dim\": %d, \"qk_rope_head_dim\": %d, \"v_head_dim\": %d, "
                "\"intermediate_size\": %d, \"moe_intermediate_size\": %d, \"n_routed_experts\": %d, "
                "\"n_shared_experts\": %d, \"num_experts_per_tok\": %d, \"n_group\": %d, \"topk_group\": %d, "
                "\"scoring_func\": \"%s\", \"topk_method\": \"%s\", \"tie_word_embeddings\": %s, ",
                c->vocab_size, c->hidden_size, L, n_dense, n_moe, D, c->num_attention_heads, c->q_lora_rank,
                c->kv_lora_rank, c->qk_nope_head_dim, c->qk_rope_head_dim, c->v_head_dim, c->intermediate_size,
                c->moe_intermediate_size, c->n_routed_experts, c->n_shared_experts, c->num_experts_per_tok,
                c->n_group, c->topk_group, c->scoring_func == FR_SCORING_SIGMOID ? "sigmoid" : "softmax",
                topk_method_name(c->topk_method), c->tie_word_embeddings ? "true" : "false");
        fprintf(o, "\"params_total\": %.0f, \"params_active\": %.0f, \"params_source\": \"%s\", ", total, active,
                m ? "model" : "estimate");
        fprintf(o,
                "\"kv_latent_values_per_token_layer\": %.0f, \"kv_latent_bytes_per_token_layer_fp32\": %.0f, "
                "\"kv_latent_bytes_per_token_layer_bf16\": %.0f, \"kv_latent_bytes_per_token_fp32\": %.0f, "
                "\"kv_latent_bytes_per_token_bf16\": %.0f, \"kv_mha_values_per_token_layer\": %.0f, "
                "\"kv_mha_bytes_per_token_fp32\": %.0f, \"kv_mha_bytes_per_token_bf16\": %.0f, \"cpu_features\": ",
                latent_vals, 4 * latent_vals, 2 * latent_vals, 4 * latent_vals * L, 2 * latent_vals * L, mha_vals,
                4 * mha_vals * L, 2 * mha_vals * L);
        cli_json_string(o, feat);
        fprintf(o, "}\n");
    } else {
        char b1[32], b2[32], b3[32], b4[32];
        printf("source           %s\n", source);
        printf("model type       %s\n", c->model_type);
        printf("vocabulary       %d tokens; hidden size %d; embeddings %s\n", c->vocab_size, c->hidden_size,
               c->tie_word_embeddings ? "tied to the LM head" : "untied");
        printf("layers           %d: %d dense (MLP width %d) + %d MoE; MTP modules: %d\n", L, n_dense,
               c->intermediate_size, n_moe, D);
        if (c->q_lora_rank > 0)
            printf("attention (MLA)  %d heads; q_lora_rank %d; kv_lora_rank %d; qk_nope %d + qk_rope %d, v %d\n",
                   c->num_attention_heads, c->q_lora_rank, c->kv_lora_rank, c->qk_nope_head_dim,
                   c->qk_rope_head_dim, c->v_head_dim);
        else
            printf("attention (MLA)  %d heads; plain q_proj (no q compression); kv_lora_rank %d; qk_nope %d + "
                   "qk_rope %d, v %d\n",
                   c->num_attention_heads, c->kv_lora_rank, c->qk_nope_head_dim, c->qk_rope_head_dim, c->v_head_dim);
        if (c->n_routed_experts > 0 && n_moe + D > 0) {
            printf("MoE              %d routed experts (width %d) + %d shared, %d per token; ", c->n_routed_experts,
                   c->moe_intermediate_size, c->n_shared_experts, c->num_experts_per_tok);
            if (c->topk_method != FR_TOPK_GREEDY && c->n_group > 1)
                printf("%d groups, top %d kept; ", c->n_group, c->topk_group);
            printf("%s scoring, %s, scale %g%s\n", c->scoring_func == FR_SCORING_SIGMOID ? "sigmoid" : "softmax",
                   topk_method_name(c->topk_method), (double)c->routed_scaling_factor,
                   c->norm_topk_prob ? ", normalized top-k" : "");
        } else {
            printf("MoE              none (dense model)\n");
        }
        printf("RoPE             theta %g, %s", c->rope_theta, c->rope_interleave ? "interleaved pairs" : "halves");
        if (c->rope_type == FR_ROPE_YARN)
            printf(", YaRN factor %g (original context %d)", c->rope_factor, c->rope_original_max_position_embeddings);
        printf("; max positions %d\n", c->max_position_embeddings);
        printf("parameters       %.0f total (%s), %.0f active per token (%s, %.1f%%)%s\n", total,
               cli_human_count(b1, sizeof b1, total), active, cli_human_count(b2, sizeof b2, active),
               total > 0 ? 100.0 * active / total : 0.0, m ? "" : " [estimated from the config]");
        if (!m) printf("                 (not instantiated: %s)\n", too_big);
        printf("KV cache         latent c_KV + k_pe = %d + %d = %.0f values per token per layer: %.0f B FP32, %.0f B BF16\n",
               c->kv_lora_rank, c->qk_rope_head_dim, latent_vals, 4 * latent_vals, 2 * latent_vals);
        printf("                 per token, all %d layers: %s FP32, %s BF16\n", L,
               cli_human_bytes(b1, sizeof b1, 4 * latent_vals * L), cli_human_bytes(b2, sizeof b2, 2 * latent_vals * L));
        printf("                 plain MHA would cache %d heads x (%d + %d) = %.0f values per token per layer: "
               "%s FP32, %s BF16 per token (%.1fx the latent cache)\n",
               c->num_attention_heads, qk_head, c->v_head_dim, mha_vals,
               cli_human_bytes(b3, sizeof b3, 4 * mha_vals * L), cli_human_bytes(b4, sizeof b4, 2 * mha_vals * L),
               latent_vals > 0 ? mha_vals / latent_vals : 0.0);
        if (ctx > 0)
            printf("                 at %d tokens of context, BF16: latent %s vs MHA %s\n", c->max_position_embeddings,
                   cli_human_bytes(b1, sizeof b1, 2 * latent_vals * L * ctx),
                   cli_human_bytes(b2, sizeof b2, 2 * mha_vals * L * ctx));
        printf("CPU features     %s\n", feat[0] ? feat : "(none detected)");
    }
    int rc = CLI_EXIT_OK;
    if (fflush(stdout) != 0) rc = cli_fail("cannot write the summary: %s", strerror(errno));
    if (m) fr_model_free(m);
    return rc;
}
