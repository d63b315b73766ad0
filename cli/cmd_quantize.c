/* cmd_quantize.c — `frugal quantize`: write a copy of a model folder with its linear weights
 * in BF16, Q8_0, Q4_0, Q4_1 or a K format or mix (docs/quantization.md); optionally measure the validation
 * perplexity of the FP32 weights, of the dequantized quantized weights (training forward)
 * and of the quantized folder run by the inference engine, on a prepared dataset. */
#define _GNU_SOURCE
#include "cli.h"

#include "frugal.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

void usage_quantize(FILE *f) {
    fprintf(f,
            "usage: frugal quantize --model DIR --type bf16|q8_0|q4_0|q4_1|q4_k|q5_k|q6_k|q4_k_m|q5_k_m --out DIR\n"
            "                       [--eval-data DATA_DIR [--eval-seq T] [--eval-tokens N]\n"
            "                        [--eval-chunk N]]\n"
            "                       [--threads N] [--json] [--quiet]\n"
            "\n"
            "Writes a copy of the Hugging Face model folder DIR into --out with its linear weights\n"
            "(every 2-D tensor named *_proj.weight, and kv_a_proj_with_mqa) stored as:\n"
            "  bf16   bfloat16, round to nearest even (a plain BF16 checkpoint)\n"
            "  q8_0   blocks of 32 values: float16 scale + 32 int8 (8.5 bits per weight)\n"
            "  q4_0   blocks of 32 values: float16 scale + 32 4-bit values (stored as q4_1, m = -8 d)\n"
            "  q4_1   blocks of 32 values: float16 scale and minimum + 32 4-bit values (5 bits)\n"
            "  q4_k, q5_k, q6_k   ggml's K-quants (super-blocks of 256 values: 4.5, 5.5, 6.56 bits), as\n"
            "         GGUF files store them; a matrix whose width is not a multiple of 256 as q8_0\n"
            "  q4_k_m, q5_k_m   q4_k / q5_k with q6_k for the head and, on the first and last eighth of\n"
            "         the layers and every third between, the values and down projections\n"
            "Every type but q4_1 holds the blocks `frugal convert --to gguf` writes for the same type:\n"
            "the embedding and lm_head take its types too, kv_b_proj stays FP32 (the engine splits it\n"
            "as the GGUF does), so the folder and the GGUF give the same logits. The router\n"
            "(mlp.gate), norms and e_score_correction_bias stay FP32 (under q4_1 also the embedding\n"
            "and lm_head). config.json gets a \"quantization_config\" (all but bf16); tokenizer.json,\n"
            "tokenizer_config.json and generation_config.json are copied. The output folder is\n"
            "built under a temporary name and renamed when complete; it must not exist (or be empty).\n"
            "\n"
            "Options:\n"
            "  --model DIR         model folder (config.json + safetensors, FP32 / BF16 / F16)\n"
            "  --type T            bf16, q8_0, q4_0, q4_1, q4_k, q5_k, q6_k, q4_k_m or q5_k_m\n"
            "  --out DIR           output folder\n"
            "  --eval-data DIR     after writing, report the validation perplexity (split \"val\" of\n"
            "                      this prepared dataset, windows of T predicted tokens) three times:\n"
            "                      the FP32 model and the output's weights dequantized to FP32 (both\n"
            "                      with the training forward: the error of the weight format alone),\n"
            "                      and the output run by the inference engine as stored (what\n"
            "                      `frugal generate --model OUT` computes, kernels included)\n"
            "  --eval-seq T        window length for --eval-data (default 256)\n"
            "  --eval-tokens N     read at most N validation tokens (default: all)\n"
            "  --eval-chunk N      tokens per engine call in the engine measurement (default 8;\n"
            "                      1 = token-by-token decode, >= T = one prefill per window)\n"
            "  --threads N         CPU threads (default: OpenMP's default)\n"
            "  --json              print one JSON object instead of text\n"
            "  --quiet             no progress bar\n"
            "  -h, --help          show this help\n");
}

static int q_progress(void *user, double frac, const char *phase) {
    cli_progress *bar = user;
    (void)phase;
    cli_progress_update(bar, frac);
    return cli_stop_signal() != 0; /* Ctrl-C / SIGTERM taken by cli_signals.c: cancel */
}

static double file_size(const char *dir, const char *name) {
    char p[4096];
    struct stat sb;
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return stat(p, &sb) == 0 ? (double)sb.st_size : 0.0;
}

/* Mean validation loss of a model loaded by `load` from dir. */
static int eval_one(const char *dir, int dequantized, const char *data, int T, long max_tokens, double *loss, long *n) {
    fr_model *m = NULL;
    int st = dequantized ? fr_model_load_dequantized(&m, dir) : fr_model_load(&m, dir);
    if (st != FR_OK) return cli_fail_lib("cannot load the model");
    const int B = 8;
    st = fr_eval_dataset(m, data, "val", T, B, max_tokens, loss, n);
    fr_model_free(m);
    if (st != FR_OK) return cli_fail_lib("evaluation failed");
    if (!isfinite(*loss)) return cli_fail("evaluation produced a non-finite loss (%g)", *loss);
    return CLI_EXIT_OK;
}

/* Mean validation loss of the folder dir run by the inference engine with weight_type
 * weights (-1: as stored, each matrix in its own format, as `frugal generate` runs the folder):
 * what generation computes, including any rounding of activations in the kernels. */
static int eval_engine(const char *dir, int weight_type, const char *data, int T, int chunk, long max_tokens,
                       double *loss) {
    fr_engine_options o;
    fr_engine_options_default(&o);
    o.weight_type = weight_type;
    o.max_seq_len = T; /* the window is the whole context needed; any T the training eval takes */
    o.load_mtp = 0;    /* the main head is scored; the MTP module is never run */
    fr_engine *e = NULL;
    if (fr_engine_load(&e, dir, &o) != FR_OK) return cli_fail_lib("cannot load the quantized model into the inference engine");
    int st = fr_engine_eval_dataset(e, data, "val", T, chunk, max_tokens, loss, NULL);
    fr_engine_free(e);
    if (st != FR_OK) return cli_fail_lib("evaluation through the inference engine failed");
    if (!isfinite(*loss)) return cli_fail("evaluation through the inference engine produced a non-finite loss (%g)", *loss);
    return CLI_EXIT_OK;
}

/* ', "<loss_key>": loss, "<ppl_key>": exp(loss), "<change_key>": % change of the perplexity
 * against the FP32 loss' */
static void print_eval_json(const char *loss_key, const char *ppl_key, const char *change_key, double loss,
                            double fp32_loss) {
    printf(", \"%s\": ", loss_key);
    cli_json_number(stdout, loss);
    printf(", \"%s\": ", ppl_key);
    cli_json_number(stdout, exp(loss));
    printf(", \"%s\": ", change_key);
    cli_json_number(stdout, 100.0 * (exp(loss - fp32_loss) - 1.0));
}

int cmd_quantize(int argc, char **argv) {
    const char *model = NULL, *type = NULL, *out = NULL, *data = NULL, *seq_text = NULL, *tok_text = NULL,
               *chunk_text = NULL, *threads_text = NULL;
    int json = 0, quiet = 0;
    const char *C = "quantize";
    const cli_opt opts[] = {
        {"--model", &model, NULL}, {"--type", &type, NULL}, {"--out", &out, NULL},
        {"--eval-data", &data, NULL}, {"--eval-seq", &seq_text, NULL}, {"--eval-tokens", &tok_text, NULL},
        {"--eval-chunk", &chunk_text, NULL}, {"--threads", &threads_text, NULL},
        {"--json", NULL, &json}, {"--quiet", NULL, &quiet},
    };
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int r;
        if (cli_is_help(a)) {
            usage_quantize(stdout);
            return CLI_EXIT_OK;
        }
        if ((r = cli_opt_match(C, usage_quantize, argc, argv, &i, opts, CLI_N_OPTS(opts))) != 0) {
            if (r < 0) return CLI_EXIT_USAGE;
        } else if (a[0] == '-') {
            return cli_usage_error(C, usage_quantize, "unknown option '%s'", a);
        } else {
            return cli_usage_error(C, usage_quantize, "unexpected argument '%s'", a);
        }
    }
    long threads = 0, seq = 256, max_tokens = 0, chunk = 8;
    if (threads_text && cli_parse_int(C, usage_quantize, "--threads", threads_text, 1, 4096, &threads) != 0)
        return CLI_EXIT_USAGE;
    if (seq_text && cli_parse_int(C, usage_quantize, "--eval-seq", seq_text, 2, 1 << 20, &seq) != 0) return CLI_EXIT_USAGE;
    if (tok_text && cli_parse_int(C, usage_quantize, "--eval-tokens", tok_text, 3, 1L << 40, &max_tokens) != 0)
        return CLI_EXIT_USAGE;
    if (chunk_text && cli_parse_int(C, usage_quantize, "--eval-chunk", chunk_text, 1, 1 << 20, &chunk) != 0)
        return CLI_EXIT_USAGE;
    if (!model) return cli_usage_error(C, usage_quantize, "missing required option '--model DIR'");
    if (!type) return cli_usage_error(C, usage_quantize, "missing required option '--type bf16|q8_0|q4_0|q4_1|q4_k|q5_k|q6_k|q4_k_m|q5_k_m'");
    if (!out) return cli_usage_error(C, usage_quantize, "missing required option '--out DIR'");
    static const char *const TYPES[] = {"bf16", "q8_0", "q4_0", "q4_1", "q4_k", "q5_k", "q6_k", "q4_k_m", "q5_k_m"};
    int known = 0;
    for (size_t k = 0; k < sizeof TYPES / sizeof TYPES[0]; k++) known |= !strcmp(type, TYPES[k]);
    if (!known) /* f32 is not a quantization */
        return cli_usage_error(C, usage_quantize, "option '--type' expects bf16, q8_0, q4_0, q4_1, q4_k, q5_k, q6_k, q4_k_m or q5_k_m, got '%s'", type);
    if ((seq_text || tok_text || chunk_text) && !data)
        return cli_usage_error(C, usage_quantize, "--eval-seq / --eval-tokens / --eval-chunk need --eval-data");
    int rc = cli_check_dir(model, "model folder");
    if (rc != CLI_EXIT_OK) return rc;
    if (data && (rc = cli_check_dir(data, "dataset folder")) != CLI_EXIT_OK) return rc;
    if (threads > 0) fr_set_num_threads((int)threads);

    cli_progress bar;
    cli_progress_start(&bar, "quantizing", 0, NULL);
    bar.quiet = quiet || json;
    /* Ctrl-C / SIGTERM: the progress callback cancels, the library removes its temporary
     * folder; a second one ends the process at once (cli_signals.c). The evaluation after it
     * writes nothing: a signal there ends the process at once (default mode). */
    cli_signals_catch("frugal quantize", "cancelling, removing the temporary files");
    double t0 = cli_now();
    int st = fr_quantize_model(model, out, type, q_progress, &bar);
    double secs = cli_now() - t0;
    cli_signals_default();
    if (st != FR_OK) {
        cli_progress_abort(&bar);
        if (cli_stop_signal()) {
            fprintf(stderr, "frugal: error: interrupted; %s was not written (temporary files removed)\n", out);
            return cli_stop_exit_code();
        }
        return cli_fail_lib("quantization failed");
    }
    cli_progress_finish(&bar);
    double in_bytes = file_size(model, "model.safetensors"), out_bytes = file_size(out, "model.safetensors");

    double loss_f = NAN, loss_q = NAN, loss_e = NAN;
    long n_f = 0, n_q = 0;
    double t_eval = 0, t_engine = 0;
    if (data) {
        double t1 = cli_now();
        if ((rc = eval_one(model, 0, data, (int)seq, max_tokens, &loss_f, &n_f)) != CLI_EXIT_OK) return rc;
        if ((rc = eval_one(out, 1, data, (int)seq, max_tokens, &loss_q, &n_q)) != CLI_EXIT_OK) return rc;
        t_eval = cli_now() - t1;
        t1 = cli_now();
        if ((rc = eval_engine(out, -1, data, (int)seq, (int)chunk, max_tokens, &loss_e)) != CLI_EXIT_OK)
            return rc;
        t_engine = cli_now() - t1;
    }
    if (json) {
        printf("{\"command\": \"quantize\", \"model\": ");
        cli_json_string(stdout, model);
        printf(", \"out\": ");
        cli_json_string(stdout, out);
        printf(", \"type\": ");
        cli_json_string(stdout, type);
        printf(", \"seconds\": ");
        cli_json_number(stdout, secs);
        printf(", \"in_bytes\": %.0f, \"out_bytes\": %.0f", in_bytes, out_bytes);
        if (data) {
            printf(", \"eval_data\": ");
            cli_json_string(stdout, data);
            printf(", \"eval_seq\": %ld, \"eval_tokens\": %ld, \"fp32_loss\": ", seq, n_f);
            cli_json_number(stdout, loss_f);
            printf(", \"fp32_ppl\": ");
            cli_json_number(stdout, exp(loss_f));
            print_eval_json("quant_loss", "quant_ppl", "ppl_change_pct", loss_q, loss_f);
            printf(", \"eval_seconds\": ");
            cli_json_number(stdout, t_eval);
            printf(", \"engine_chunk\": %ld", chunk);
            print_eval_json("engine_loss", "engine_ppl", "engine_ppl_change_pct", loss_e, loss_f);
            printf(", \"engine_eval_seconds\": ");
            cli_json_number(stdout, t_engine);
        }
        printf("}\n");
    } else {
        char b1[32], b2[32];
        printf("wrote %s (%s): model.safetensors %s -> %s in %.2f s\n", out, type, cli_human_bytes(b1, sizeof b1, in_bytes),
               cli_human_bytes(b2, sizeof b2, out_bytes), secs);
        if (data) {
            printf("validation (%s, split val, %ld tokens, windows of %ld):\n", data, n_f, seq);
            printf("  %-5s loss %.6f ppl %.4f\n", "fp32", loss_f, exp(loss_f));
            printf("  %-5s loss %.6f ppl %.4f (%+.3f %% vs fp32; dequantized weights, training forward)\n", type,
                   loss_q, exp(loss_q), 100.0 * (exp(loss_q - loss_f) - 1.0));
            printf("  %-5s loss %.6f ppl %.4f (%+.3f %% vs fp32; inference engine, %ld tokens per call)\n", type,
                   loss_e, exp(loss_e), 100.0 * (exp(loss_e - loss_f) - 1.0), chunk);
        }
    }
    if (fflush(stdout) != 0) return cli_fail("cannot write the result: %s", strerror(errno));
    return CLI_EXIT_OK;
}
