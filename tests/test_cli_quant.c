/* test_cli_quant.c — `frugal quantize`: help, usage errors (exit 2), runtime errors (exit 1),
 * and a run with --eval-data --json on a tiny model whose numbers are checked against the
 * library (fr_model_load_dequantized + fr_eval_dataset; fr_engine_load of the output in its
 * format + fr_engine_eval_dataset for the engine_* keys). */
#define _GNU_SOURCE
#include "frugal.h"
#include "cli_testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef FR_FIXTURES_DIR
#define FR_FIXTURES_DIR "tests/fixtures"
#endif

static const char *CONFIG =
    "{\"architectures\": [\"DeepseekV3ForCausalLM\"], \"model_type\": \"deepseek_v3\",\n"
    " \"vocab_size\": 1024, \"hidden_size\": 64, \"intermediate_size\": 96, \"moe_intermediate_size\": 32,\n"
    " \"num_hidden_layers\": 2, \"num_attention_heads\": 2, \"num_key_value_heads\": 2,\n"
    " \"q_lora_rank\": 32, \"kv_lora_rank\": 32, \"qk_nope_head_dim\": 16, \"qk_rope_head_dim\": 16,\n"
    " \"v_head_dim\": 16, \"n_routed_experts\": 4, \"n_shared_experts\": 1, \"num_experts_per_tok\": 2,\n"
    " \"n_group\": 2, \"topk_group\": 1, \"topk_method\": \"noaux_tc\", \"scoring_func\": \"sigmoid\",\n"
    " \"norm_topk_prob\": true, \"routed_scaling_factor\": 2.5, \"first_k_dense_replace\": 1,\n"
    " \"moe_layer_freq\": 1, \"num_nextn_predict_layers\": 0, \"max_position_embeddings\": 128,\n"
    " \"rope_theta\": 10000.0, \"rope_scaling\": null, \"rope_interleave\": true, \"rms_norm_eps\": 1e-6,\n"
    " \"tie_word_embeddings\": false, \"initializer_range\": 0.02, \"hidden_act\": \"silu\",\n"
    " \"bos_token_id\": 0, \"eos_token_id\": 1, \"pad_token_id\": null}\n";

int main(void) {
    expect("quantize --help", 0, "usage: frugal quantize", "q4_1");
    expect("help quantize", 0, "usage: frugal quantize", NULL);
    expect("help", 0, "quantize", NULL);
    expect("quantize", 2, "--model", "usage");
    expect("quantize --model m --out o", 2, "--type", NULL);
    expect("quantize --model m --type q8_0", 2, "--out", NULL);
    expect("quantize --model m --type q3_k --out o", 2, "q3_k", NULL);
    expect("quantize --model m --type q8_0 --out o --bogus", 2, "--bogus", NULL);
    expect("quantize --model m --type q8_0 --out o stray", 2, "stray", NULL);
    expect("quantize --model m --type q8_0 --out o --eval-seq 1 --eval-data d", 2, "--eval-seq", NULL);
    expect("quantize --model m --type q8_0 --out o --eval-seq 64", 2, "--eval-data", NULL);
    expect("quantize --model m --type q8_0 --out o --eval-chunk 4", 2, "--eval-data", NULL);
    expect("quantize --model m --type q8_0 --out o --eval-data d --eval-chunk 0", 2, "--eval-chunk", NULL);
    expect("quantize --help", 0, "--eval-chunk", "inference engine");
    expect("quantize --model m --type", 2, "--type", "needs a value");
    expect("quantize --json=1 --model m --type q8_0 --out o", 2, "--json", NULL);

    char tmp[] = "/tmp/frugal-test-cli-quant-XXXXXX";
    if (!mkdtemp(tmp)) {
        CHECK(0, "mkdtemp");
        return fr_test_finish("test_cli_quant");
    }
    char model[256], out[256], data[256], args[2048];
    snprintf(model, sizeof model, "%s/model", tmp);
    snprintf(out, sizeof out, "%s/q8", tmp);
    snprintf(data, sizeof data, "%s/data", tmp);

    /* runtime errors: exit 1 with the reason */
    snprintf(args, sizeof args, "quantize --model '%s/none' --type q8_0 --out '%s'", tmp, out);
    expect(args, 1, "none", "error");
    snprintf(args, sizeof args, "quantize --model '%s/v3_mtp' --type q4_1 --out '%s'", FR_FIXTURES_DIR, out);
    expect(args, 1, "_proj.weight", "multiple of 32");

    fr_config cfg;
    fr_model *m = NULL;
    mkdir(model, 0755);
    int ok = fr_config_parse(&cfg, CONFIG, strlen(CONFIG)) == FR_OK && fr_model_create(&m, &cfg, 3) == FR_OK &&
             fr_model_save(m, model) == FR_OK;
    CHECK(ok, "tiny model: %s", fr_last_error());
    const char *inputs[] = {FR_FIXTURES_DIR "/tokenizer/corpus.jsonl"};
    fr_data_prepare_options o;
    memset(&o, 0, sizeof o);
    o.tokenizer_dir = FR_FIXTURES_DIR "/tokenizer/frugal_trained";
    o.inputs = inputs;
    o.n_inputs = 1;
    o.output_dir = data;
    o.val_fraction = 0.2;
    o.num_threads = 2;
    ok = ok && fr_data_prepare(&o, NULL) == FR_OK;
    CHECK(ok, "dataset: %s", fr_last_error());
    if (ok) {
        snprintf(args, sizeof args, "quantize --model '%s' --type q8_0 --out '%s' --eval-data '%s' --eval-seq 64 --eval-tokens 1025 --json",
                 model, out, data);
        char *text = NULL;
        int rc = run_frugal(args, &text);
        CHECK(rc == 0, "quantize --eval-data: exit %d\n%s", rc, text);
        double lf = json_number(text, "fp32_loss"), lq = json_number(text, "quant_loss"), nt = json_number(text, "eval_tokens");
        double ref_f = NAN, ref_q = NAN;
        long n = 0;
        fr_eval_dataset(m, data, "val", 64, 8, 1025, &ref_f, &n);
        fr_model *mq = NULL;
        if (fr_model_load_dequantized(&mq, out) == FR_OK) {
            fr_eval_dataset(mq, data, "val", 64, 8, 1025, &ref_q, NULL);
            fr_model_free(mq);
        }
        CHECK(nt == 1024 && n == 1024, "eval tokens %g / %ld", nt, n);
        /* the CLI prints 17 significant digits of the same computation */
        CHECK(fabs(lf - ref_f) <= 1e-12 * fabs(ref_f) && fabs(lq - ref_q) <= 1e-12 * fabs(ref_q),
              "CLI losses %.9g %.9g vs library %.9g %.9g", lf, lq, ref_f, ref_q);
        CHECK(lf != lq, "the quantized loss differs from the FP32 one (the weights changed)");
        /* the engine measurement: the q8_0 folder run as stored (q8_0), 8 tokens per call (default) */
        double le = json_number(text, "engine_loss"), pe = json_number(text, "engine_ppl"),
               ce = json_number(text, "engine_ppl_change_pct"), pq = json_number(text, "quant_ppl"),
               pf = json_number(text, "fp32_ppl"), chunk = json_number(text, "engine_chunk");
        CHECK(isfinite(le) && isfinite(pe) && isfinite(ce) && chunk == 8, "engine keys: loss %g ppl %g change %g chunk %g\n%s",
              le, pe, ce, chunk, text);
        CHECK(fabs(pe - exp(le)) <= 1e-12 * pe && fabs(ce - 100.0 * (pe / pf - 1.0)) <= 1e-9 * (1 + fabs(ce)),
              "engine_ppl %.17g = exp(engine_loss), change %.17g vs fp32_ppl %.17g", pe, ce, pf);
        /* kernels may round activations (int8 blocks) where the dequantized forward does not,
         * but a 8-bit format cannot move perplexity by 5 % */
        CHECK(fabs(pe / pq - 1.0) <= 0.05, "engine ppl %.6f vs dequantized-weights ppl %.6f: more than 5 %% apart", pe, pq);
        {
            fr_engine_options eo;
            fr_engine_options_default(&eo);
            eo.max_seq_len = 64; /* weight_type -1: as stored, as the CLI runs the folder */
            eo.load_mtp = 0;
            fr_engine *e = NULL;
            double ref_e = NAN;
            /* the engine reads the quantized folder itself (kv_b_proj stored FP32, split and
             * quantized as a Q8_0 GGUF's attn_k_b / attn_v_b) */
            CHECK(fr_engine_load(&e, out, &eo) == FR_OK && fr_engine_weight_type(e) == 2, "engine loads the q8_0 folder "
                  "as q8_0: %s", fr_last_error());
            if (e) {
                fr_engine_eval_dataset(e, data, "val", 64, 8, 1025, &ref_e, NULL);
                fr_engine_free(e);
            }
            /* same computation, same thread count (OMP_NUM_THREADS is inherited) */
            CHECK(fabs(le - ref_e) <= 1e-9 * fabs(ref_e), "CLI engine loss %.12g vs library %.12g", le, ref_e);
        }
        printf("q8_0: fp32 ppl %.6f, dequantized %.6f, engine (chunk 8) %.6f\n", pf, pq, pe);
        free(text);
        /* `frugal eval --engine` reads the Q8_0 folder too */
        char toks[300];
        snprintf(toks, sizeof toks, "%s/tokens.txt", tmp);
        fr_test_write_text(toks, "5 17 300 2 999 41 7 7 8\n1000 3 4\n");
        snprintf(args, sizeof args, "eval --model '%s' --tokens '%s' --json", model, toks);
        text = NULL;
        rc = run_frugal(args, &text);
        double ev_f = json_number(text, "loss");
        free(text);
        snprintf(args, sizeof args, "eval --model '%s' --tokens '%s' --engine --weights q8_0 --chunk 3 --json", out, toks);
        text = NULL;
        rc = run_frugal(args, &text);
        double ev_q = json_number(text, "loss");
        CHECK(rc == 0 && isfinite(ev_q) && isfinite(ev_f) && fabs(ev_q / ev_f - 1.0) <= 0.01,
              "eval --engine --weights q8_0 of the folder: exit %d, loss %.9g vs FP32 %.9g\n%s", rc, ev_q, ev_f, text);
        free(text);
        /* a second run into the same folder: refused, exit 1 */
        snprintf(args, sizeof args, "quantize --model '%s' --type q8_0 --out '%s'", model, out);
        expect(args, 1, "not empty", NULL);
        /* text output */
        snprintf(args, sizeof args, "quantize --model '%s' --type q4_1 --out '%s/q4' --quiet", model, tmp);
        expect(args, 0, "wrote", "q4_1");
        /* q4_1 through the decode path (one token per call), JSON and text */
        snprintf(args, sizeof args,
                 "quantize --model '%s' --type q4_1 --out '%s/q4e' --eval-data '%s' --eval-seq 64 --eval-tokens 513"
                 " --eval-chunk 1 --json",
                 model, tmp, data);
        text = NULL;
        rc = run_frugal(args, &text);
        CHECK(rc == 0, "quantize q4_1 --eval-chunk 1: exit %d\n%s", rc, text);
        pe = json_number(text, "engine_ppl");
        pq = json_number(text, "quant_ppl");
        CHECK(isfinite(pe) && json_number(text, "engine_chunk") == 1 && fabs(pe / pq - 1.0) <= 0.05,
              "q4_1 engine ppl %.6f vs dequantized %.6f\n%s", pe, pq, text);
        printf("q4_1: dequantized ppl %.6f, engine (chunk 1) %.6f\n", pq, pe);
        free(text);
        snprintf(args, sizeof args,
                 "quantize --model '%s' --type bf16 --out '%s/bf' --eval-data '%s' --eval-seq 32 --eval-tokens 129 --quiet",
                 model, tmp, data);
        expect(args, 0, "inference engine", "8 tokens per call");
    }
    if (m) fr_model_free(m);
    fr_test_rm_rf(tmp);
    return fr_test_finish("test_cli_quant");
}
