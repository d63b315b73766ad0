/* cmd_convert.c — `frugal convert`: write a model folder in another format.
 *
 * Today: Hugging Face folder (F32/BF16/F16 or DeepSeek FP8 safetensors, or a folder written by
 * `frugal quantize`: BF16 / Q8_0 / Q4_1, dequantized on the way) -> GGUF for llama.cpp
 * (architecture deepseek2). The exporter lives in the library (src/formats/gguf.h, an internal
 * header: GGUF is not part of the stable public API yet). docs/interop.md has the mapping. */
#include "cli.h"

#include "frugal.h"
#include "formats/gguf.h"

#include <string.h>
#include <sys/stat.h>

void usage_convert(FILE *f) {
    fprintf(f,
            "usage: frugal convert --to gguf [--type T] [--force] MODEL_DIR OUT.gguf\n"
            "\n"
            "Converts a Hugging Face DeepseekV3 / DeepseekV2 folder (config.json, safetensors weights in\n"
            "F32, BF16, F16 or DeepSeek's FP8 block format, tokenizer.json) into a GGUF file that\n"
            "llama.cpp loads as architecture deepseek2, tokenizer included. MTP layers are not exported.\n"
            "A folder written by `frugal quantize` (bf16, q8_0, q4_1) is read too: its Q8_0 / Q4_1\n"
            "matrices are dequantized, then stored as --type says (Q8_0 keeps 8-bit weights).\n"
            "The file is written as OUT.gguf.tmp.PID and renamed when complete; an existing\n"
            "OUT.gguf is refused unless --force is given.\n"
            "\n"
            "Options:\n"
            "  --to gguf      output format (only gguf for now)\n"
            "  --type T       weight type: F32, F16, BF16, Q8_0, Q4_0, the K-quants Q4_K, Q5_K, Q6_K, or\n"
            "                 the mixes Q4_K_M, Q5_K_M (Q6_K for the output head, and for attn_v_b and\n"
            "                 the down projections of the first and last eighth of the layers and every\n"
            "                 third between) (default F16). Norms, biases and MoE routers stay F32; a\n"
            "                 matrix whose rows are not a multiple of 256 (K types) is written as Q8_0,\n"
            "                 one not a multiple of 32 (Q8_0 / Q4_0) as F16\n"
            "  --force        overwrite OUT.gguf if it exists\n"
            "  -h, --help     show this help\n"
            "\n"
            "See docs/interop.md for the tensor and metadata mapping.\n");
}

int cmd_convert(int argc, char **argv) {
    const char *to = NULL, *type_s = "F16";
    const char *pos[2] = {NULL, NULL};
    int n_pos = 0, force = 0;
    const cli_opt opts[] = {{"--to", &to, NULL}, {"--type", &type_s, NULL}, {"--force", NULL, &force}};
    for (int i = 1; i < argc; i++) {
        int r;
        if (cli_is_help(argv[i])) {
            usage_convert(stdout);
            return CLI_EXIT_OK;
        }
        if ((r = cli_opt_match("convert", usage_convert, argc, argv, &i, opts, CLI_N_OPTS(opts))) != 0) {
            if (r < 0) return CLI_EXIT_USAGE;
            continue;
        }
        if (argv[i][0] == '-' && argv[i][1] != 0)
            return cli_usage_error("convert", usage_convert, "unknown option '%s'", argv[i]);
        if (n_pos == 2) return cli_usage_error("convert", usage_convert, "unexpected argument '%s'", argv[i]);
        pos[n_pos++] = argv[i];
    }
    if (!to) return cli_usage_error("convert", usage_convert, "--to is required");
    if (strcmp(to, "gguf") != 0)
        return cli_usage_error("convert", usage_convert, "--to '%s' is not supported (only gguf)", to);
    if (n_pos != 2) return cli_usage_error("convert", usage_convert, "MODEL_DIR and OUT.gguf are required");
    int type = fr_gguf_export_type_from_name(type_s);
    if (type < 0)
        return cli_usage_error("convert", usage_convert,
                               "--type '%s' is not one of F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K, Q6_K, Q4_K_M, Q5_K_M", type_s);
    int rc = cli_check_dir(pos[0], "model folder");
    if (rc != CLI_EXIT_OK) return rc;
    struct stat sb;
    if (stat(pos[1], &sb) == 0) {
        if (S_ISDIR(sb.st_mode)) return cli_fail("output %s is a folder; name the .gguf file to write", pos[1]);
        if (!force) return cli_fail("output %s already exists (use --force to overwrite it)", pos[1]);
    }
    fr_gguf_export_stats st;
    double t0 = cli_now();
    if (fr_gguf_export(pos[0], pos[1], type, &st) != FR_OK) return cli_fail_lib("GGUF export failed");
    char b[32];
    printf("wrote %s: %d tensors, %s, type %s (%d kept F32, %d fell back to Q8_0, %d to F16), %d MTP layer%s not "
           "exported, %.1f s\n",
           pos[1], st.n_tensors, cli_human_bytes(b, sizeof b, (double)st.bytes), fr_gguf_export_type_name(type),
           st.n_kept_f32, st.n_fallback_q8, st.n_fallback, st.n_mtp_skipped, st.n_mtp_skipped == 1 ? "" : "s",
           cli_now() - t0);
    return CLI_EXIT_OK;
}
