/*
 * test_sft.c — fine-tuning data and `frugal finetune` (src/text/chat.c fr_chat_encode_masked,
 * src/text/sft_prepare.c, the loss mask in src/text/dataset.c and src/train/train.c,
 * cli/cmd_finetune.c), with the tokenizer and model of tests/fixtures/hf_export.
 *
 *  - the masked encoding's tokens equal the encoding of fr_chat_render's whole text (the
 *    pieces are cut at special tags); the masked tokens form one run per assistant turn, and
 *    each run decodes to exactly that reply followed by the end-of-sentence token; nothing
 *    else is masked;
 *  - fr_sft_prepare: a line without an assistant turn is skipped and counted, blank lines are
 *    ignored, the shards and masks read back (fr_dataset_read / _read_mask) are the
 *    conversations' encodings in file order; a malformed line, an unknown role and an existing
 *    output folder fail with a message naming the problem (and leave no folder behind);
 *  - `frugal finetune` runs end to end (3 steps), its ledger record has kind "finetune", and its
 *    final validation loss equals the loss of its final checkpoint over the validation windows
 *    with the assistant-only targets (1e-5 relative), while the loss over all targets differs:
 *    the trainer applies the mask;
 *  - `frugal generate --batch` (sequence-level distillation data), see test_generate_batch.
 */
#define _GNU_SOURCE
#include "frugal.h"
#include "testutil.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define FIXTURE FR_FIXTURES_DIR "/hf_export"

static char g_dir[128];

static void test_masked_encoding(const fr_tokenizer *tok) {
    const fr_chat_message msgs[] = {
        {"system", "You are terse."},
        {"user", "What is 2 + 2?"},
        {"assistant", "Four."},
        {"user", "And the beginning?"},
        {"assistant", "In the beginning God created the heaven and the earth."},
    };
    const int n = 5;
    int *ids = NULL;
    unsigned char *mask = NULL;
    size_t nt = 0;
    CHECK(fr_chat_encode_masked(tok, msgs, n, &ids, &mask, &nt) == FR_OK, "encode: %s", fr_last_error());
    char *text = NULL;
    size_t tl = 0;
    int *whole = NULL;
    size_t nw = 0;
    CHECK(fr_chat_render(tok, msgs, n, 0, &text, &tl) == FR_OK && fr_tokenizer_encode(tok, text, tl, 1, &whole, &nw) == FR_OK,
          "render + encode");
    CHECK(nw == nt && memcmp(whole, ids, nt * sizeof *ids) == 0, "pieces encode to the whole text's %zu tokens (got %zu)", nw,
          nt);
    const char *eos = fr_tokenizer_id_to_token(tok, fr_tokenizer_special_id(tok, FR_TOKEN_EOS));
    int runs = 0;
    for (size_t i = 0; i < nt;) {
        if (!mask[i]) { i++; continue; }
        size_t j = i;
        while (j < nt && mask[j]) j++;
        char *piece = NULL;
        size_t pl = 0;
        CHECK(fr_tokenizer_decode(tok, ids + i, j - i, 0, &piece, &pl) == FR_OK, "decode");
        const char *want = runs == 0 ? msgs[2].content : msgs[4].content;
        char expect[256];
        snprintf(expect, sizeof expect, "%s%s", want, eos ? eos : "");
        CHECK(piece && strcmp(piece, expect) == 0, "masked run %d decodes to '%s', expected '%s'", runs, piece ? piece : "",
              expect);
        free(piece);
        runs++;
        i = j;
    }
    CHECK(runs == 2, "%d masked runs, expected one per assistant turn (2)", runs);
    size_t n_mask = 0;
    for (size_t i = 0; i < nt; i++) n_mask += mask[i];
    printf("masked encoding: %zu tokens, %zu targets in %d runs, each the reply + eos; tokens equal the whole text's\n", nt,
           n_mask, runs);
    free(ids), free(mask), free(text), free(whole);
}

static int write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    fputs(text, f);
    return fclose(f);
}

static const char *CHAT =
    "{\"messages\": [{\"role\": \"user\", \"content\": \"Who made the heaven?\"}, {\"role\": \"assistant\", \"content\": "
    "\"God created the heaven and the earth.\"}]}\n"
    "\n"
    "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", \"content\": \"And the "
    "earth?\"}, {\"role\": \"assistant\", \"content\": \"It was without form, and void.\"}]}\n"
    "{\"messages\": [{\"role\": \"user\", \"content\": \"Nobody answers this one.\"}]}\n"
    "{\"messages\": [{\"role\": \"user\", \"content\": \"What was on the face of the deep?\"}, {\"role\": \"assistant\", "
    "\"content\": \"Darkness was upon the face of the deep.\"}, {\"role\": \"user\", \"content\": \"And then?\"}, "
    "{\"role\": \"assistant\", \"content\": \"The Spirit of God moved upon the face of the waters.\"}]}\n"
    "{\"messages\": [{\"role\": \"user\", \"content\": \"Let there be?\"}, {\"role\": \"assistant\", \"content\": \"Light: "
    "and there was light.\"}]}\n";

static void test_prepare(const fr_tokenizer *tok) {
    char in[256], out[256];
    snprintf(in, sizeof in, "%s/chat.jsonl", g_dir);
    snprintf(out, sizeof out, "%s/sft", g_dir);
    CHECK(write_text(in, CHAT) == 0, "write chat.jsonl");
    fr_sft_prepare_options o = {FIXTURE, in, out, 0.0};
    fr_sft_stats st;
    CHECK(fr_sft_prepare(&o, &st) == FR_OK, "prepare: %s", fr_last_error());
    CHECK(st.conversations == 4 && st.skipped_no_assistant == 1 && st.val_conversations == 0, "counts %ld / %ld / %ld",
          st.conversations, st.skipped_no_assistant, st.val_conversations);
    /* the shards hold the encodings in file order */
    fr_dataset *ds = NULL;
    CHECK(fr_dataset_open(&ds, out, "train") == FR_OK && fr_dataset_has_mask(ds), "open: %s", fr_last_error());
    if (ds) {
        const uint64_t n = fr_dataset_num_tokens(ds);
        int *t = malloc(n * sizeof *t);
        unsigned char *m = malloc(n);
        CHECK(fr_dataset_read(ds, 0, t, n) == FR_OK && fr_dataset_read_mask(ds, 0, m, n) == FR_OK, "read back");
        size_t pos = 0;
        int same = 1, conv = 0;
        const char *p = CHAT;
        while (*p) {
            const char *e = strchr(p, '\n');
            cJSON *j = cJSON_ParseWithLength(p, (size_t)(e - p));
            const cJSON *msgs = j ? cJSON_GetObjectItem(j, "messages") : NULL;
            int k = msgs ? cJSON_GetArraySize(msgs) : 0, has_a = 0;
            fr_chat_message cm[8];
            for (int i = 0; i < k && i < 8; i++) {
                const cJSON *it = cJSON_GetArrayItem(msgs, i);
                cm[i] = (fr_chat_message){cJSON_GetObjectItem(it, "role")->valuestring,
                                          cJSON_GetObjectItem(it, "content")->valuestring};
                has_a |= !strcmp(cm[i].role, "assistant");
            }
            if (has_a) {
                int *ids = NULL;
                unsigned char *mk = NULL;
                size_t nt = 0;
                fr_chat_encode_masked(tok, cm, k, &ids, &mk, &nt);
                same &= pos + nt <= n && memcmp(t + pos, ids, nt * sizeof *ids) == 0 && memcmp(m + pos, mk, nt) == 0;
                pos += nt;
                conv++;
                free(ids), free(mk);
            }
            cJSON_Delete(j);
            p = e + 1;
        }
        CHECK(same && pos == n && conv == 4, "shards and masks are the 4 conversations in order (%zu of %llu tokens)", pos,
              (unsigned long long)n);
        printf("prepared: 4 conversations (1 without an assistant skipped), %llu tokens, %llu targets, read back equal\n",
               (unsigned long long)st.train_tokens, (unsigned long long)st.train_targets);
        free(t), free(m);
        fr_dataset_close(ds);
    }
    /* bad input */
    CHECK(fr_sft_prepare(&o, &st) != FR_OK && strstr(fr_last_error(), "already exists"), "existing output: %s",
          fr_last_error());
    char bad_in[256], bad_out[256];
    snprintf(bad_in, sizeof bad_in, "%s/bad.jsonl", g_dir);
    snprintf(bad_out, sizeof bad_out, "%s/bad", g_dir);
    fr_sft_prepare_options ob = {FIXTURE, bad_in, bad_out, 0.0};
    write_text(bad_in, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": "
                       "\"hello\"}]}\n{\"messages\": [oops\n");
    struct stat sb;
    CHECK(fr_sft_prepare(&ob, &st) != FR_OK && strstr(fr_last_error(), "line 2") && stat(bad_out, &sb) != 0,
          "malformed line: '%s'", fr_last_error());
    write_text(bad_in, "{\"messages\": [{\"role\": \"wizard\", \"content\": \"hi\"}, {\"role\": \"assistant\", "
                       "\"content\": \"hello\"}]}\n");
    CHECK(fr_sft_prepare(&ob, &st) != FR_OK && strstr(fr_last_error(), "wizard") && strstr(fr_last_error(), "line 1"),
          "unknown role: '%s'", fr_last_error());
    write_text(bad_in, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n");
    CHECK(fr_sft_prepare(&ob, &st) != FR_OK && strstr(fr_last_error(), "no conversation with an assistant"),
          "no assistant at all: '%s'", fr_last_error());
}

static int run(const char *cmd) {
    const int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* last "val_loss" in RUN/metrics.jsonl */
static double last_val_loss(const char *run_dir) {
    char path[300], line[4096];
    snprintf(path, sizeof path, "%s/metrics.jsonl", run_dir);
    FILE *f = fopen(path, "r");
    double v = NAN;
    while (f && fgets(line, sizeof line, f)) {
        cJSON *j = cJSON_Parse(line);
        const cJSON *x = j ? cJSON_GetObjectItem(j, "val_loss") : NULL;
        if (cJSON_IsNumber(x)) v = x->valuedouble;
        cJSON_Delete(j);
    }
    if (f) fclose(f);
    return v;
}

/* mean main loss of model dir over the first n windows (T+1 tokens, stride T) of split val of
 * data, targets masked or not */
static double windows_loss(const char *model_dir, const char *data, int n, int T, int masked) {
    fr_model *m = NULL;
    fr_dataset *ds = NULL;
    if (fr_model_load(&m, model_dir) != FR_OK || fr_dataset_open(&ds, data, "val") != FR_OK) {
        fr_model_free(m);
        return NAN;
    }
    int *tok = malloc((size_t)n * T * sizeof(int)), *tgt = malloc((size_t)n * T * sizeof(int)), *buf = malloc((size_t)(T + 1) * sizeof(int));
    unsigned char *mk = malloc((size_t)T);
    for (int s = 0; s < n; s++) {
        fr_dataset_read(ds, (uint64_t)s * T, buf, (size_t)T + 1);
        fr_dataset_read_mask(ds, (uint64_t)s * T + 1, mk, (size_t)T);
        for (int t = 0; t < T; t++) {
            tok[(size_t)s * T + t] = buf[t];
            tgt[(size_t)s * T + t] = !masked || mk[t] ? buf[t + 1] : -1;
        }
    }
    fr_loss_info li;
    const double v = fr_model_forward_eval(m, tok, tgt, n, T, &li) == FR_OK ? li.loss_main : NAN;
    free(tok), free(tgt), free(buf), free(mk);
    fr_dataset_close(ds);
    fr_model_free(m);
    return v;
}

static void test_finetune_cli(void) {
    /* 24 conversations, a quarter for validation */
    char in[256], cmd[2048], run_dir[256], data[300];
    snprintf(in, sizeof in, "%s/many.jsonl", g_dir);
    FILE *f = fopen(in, "w");
    for (int i = 0; f && i < 24; i++)
        fprintf(f, "{\"messages\": [{\"role\": \"user\", \"content\": \"Verse %d, please.\"}, {\"role\": \"assistant\", "
                   "\"content\": \"And God said, Let there be light: and there was light (%d).\"}]}\n", i, i * 7);
    if (f) fclose(f);
    snprintf(run_dir, sizeof run_dir, "%s/runs", g_dir);
    mkdir(run_dir, 0755);
    snprintf(run_dir, sizeof run_dir, "%s/runs/ft", g_dir);
    snprintf(data, sizeof data, "%s-data", run_dir);
    snprintf(cmd, sizeof cmd,
             "%s finetune --init %s --data %s --out %s --val-fraction 0.25 --steps 3 --batch 2 --seq 16 --lr 1e-3 "
             "--eval-interval 0 --eval-batches 2 --sample-interval 0 --ckpt-interval 0 --threads 1 > %s/ft.log 2>&1",
             FR_FRUGAL_BIN, FIXTURE, in, run_dir, g_dir);
    const int rc = run(cmd);
    CHECK(rc == 0, "frugal finetune exited %d (log %s/ft.log)", rc, g_dir);
    char ledger[300], line[8192];
    snprintf(ledger, sizeof ledger, "%s/runs/ledger.jsonl", g_dir);
    FILE *lf = fopen(ledger, "r");
    int kind = 0;
    while (lf && fgets(line, sizeof line, lf)) kind |= strstr(line, "\"kind\":\"finetune\"") != NULL;
    if (lf) fclose(lf);
    CHECK(kind, "the ledger records the run as kind \"finetune\"");
    /* the final evaluation is the final checkpoint's loss over the assistant targets */
    char ckpt[400];
    snprintf(ckpt, sizeof ckpt, "%s/ckpt-00000003", run_dir);
    const double reported = last_val_loss(run_dir);
    fr_dataset *vd = NULL;
    long n_win = 0;
    if (fr_dataset_open(&vd, data, "val") == FR_OK) n_win = (long)((fr_dataset_num_tokens(vd) - 1) / 16);
    fr_dataset_close(vd);
    if (n_win > 4) n_win = 4; /* --eval-batches 2 x --batch 2 */
    const double masked = n_win > 0 ? windows_loss(ckpt, data, (int)n_win, 16, 1) : NAN;
    const double all = n_win > 0 ? windows_loss(ckpt, data, (int)n_win, 16, 0) : NAN;
    CHECK(isfinite(reported) && fabs(reported - masked) <= 1e-5 * fabs(masked),
          "reported val loss %.7f vs the checkpoint's assistant-only loss %.7f", reported, masked);
    CHECK(fabs(all - masked) > 1e-3, "the unmasked loss %.5f should differ from the masked one %.5f", all, masked);
    printf("frugal finetune: 3 steps, ledger kind finetune; val loss %.6f = the checkpoint's assistant-only loss %.6f "
           "(all targets: %.6f)\n", reported, masked, all);
}

/* LoRA through the CLI: `frugal finetune --lora-rank` checkpoints hold only the adapter (a
 * PEFT folder) and resume bit for bit (the adapter after 4 steps equals the one of a run
 * stopped at 2 and resumed); `frugal merge` writes a model whose greedy text equals the
 * engine's with --adapter and differs from the base's; an unknown target is a usage error
 * listing the valid names. (The arithmetic against peft is test_lora's.) */
static void test_lora_cli(void) {
    char in[256], args[2048], a[256], b[256], merged[256], path[600];
    snprintf(in, sizeof in, "%s/many.jsonl", g_dir); /* test_finetune_cli's conversations */
    snprintf(a, sizeof a, "%s/runs/lora-a", g_dir);
    snprintf(b, sizeof b, "%s/runs/lora-b", g_dir);
    const char *common = "--val-fraction 0.25 --batch 2 --seq 16 --lr 2e-2 --warmup 1 --lora-rank 4 --lora-alpha 8 "
                         "--lora-targets q_a_proj,kv_b_proj,o_proj,experts --eval-interval 0 --sample-interval 0 "
                         "--ckpt-interval 2 --threads 1 --quiet";
    snprintf(args, sizeof args, "finetune --init %s --data %s --out %s --steps 4 %s", FIXTURE, in, a, common);
    fr_test_expect_frugal(FR_FRUGAL_BIN, args, 0, "LoRA: rank 4, alpha 8", "frozen");
    snprintf(args, sizeof args, "finetune --init %s --data %s --out %s --steps 2 %s", FIXTURE, in, b, common);
    fr_test_expect_frugal(FR_FRUGAL_BIN, args, 0, NULL, NULL);
    snprintf(args, sizeof args, "finetune --resume %s --steps 4 --quiet", b);
    fr_test_expect_frugal(FR_FRUGAL_BIN, args, 0, "resumed", NULL);
    char pa[400], pb[400];
    snprintf(pa, sizeof pa, "%s/ckpt-00000004/adapter_model.safetensors", a);
    snprintf(pb, sizeof pb, "%s/ckpt-00000004/adapter_model.safetensors", b);
    size_t la = 0, lb = 0;
    char *fa = fr_test_read_file(pa, &la), *fb = fr_test_read_file(pb, &lb);
    CHECK(fa && fb && la == lb && !memcmp(fa, fb, la), "the resumed adapter equals the uninterrupted one bit for bit");
    free(fa), free(fb);
    snprintf(path, sizeof path, "%s/ckpt-00000004/model.safetensors", a);
    CHECK(!fr_test_file_exists(path), "a LoRA checkpoint holds the adapter, not the frozen base");
    /* merge, --adapter, base: greedy text */
    snprintf(merged, sizeof merged, "%s/merged", g_dir);
    snprintf(args, sizeof args, "merge --model %s --adapter %s/ckpt-00000004 --out %s", FIXTURE, a, merged);
    fr_test_expect_frugal(FR_FRUGAL_BIN, args, 0, "folded in", NULL);
    char *text[3] = {NULL, NULL, NULL}, *err[3] = {NULL, NULL, NULL}; /* stdout: the text; stderr: the load line */
    const char *gen = "--prompt \"Verse 3, please.\" --max-tokens 12 --temperature 0";
    snprintf(args, sizeof args, "generate --model %s %s", merged, gen);
    CHECK(fr_test_run_frugal_err(FR_FRUGAL_BIN, args, &text[0], &err[0]) == 0, "generate with the merged model");
    snprintf(args, sizeof args, "generate --model %s --adapter %s/ckpt-00000004 %s", FIXTURE, a, gen);
    CHECK(fr_test_run_frugal_err(FR_FRUGAL_BIN, args, &text[1], &err[1]) == 0, "generate --adapter");
    snprintf(args, sizeof args, "generate --model %s %s", FIXTURE, gen);
    CHECK(fr_test_run_frugal_err(FR_FRUGAL_BIN, args, &text[2], &err[2]) == 0, "generate with the base");
    CHECK(text[0] && text[1] && !strcmp(text[0], text[1]), "merged and --adapter give the same text");
    CHECK(text[0] && text[2] && strcmp(text[0], text[2]) != 0, "the adapter changes the text");
    for (int i = 0; i < 3; i++) free(text[i]), free(err[i]);
    snprintf(args, sizeof args, "finetune --init %s --data %s --out %s/runs/bad --steps 1 --lora-rank 2 --lora-targets "
             "q_a_proj,attn", FIXTURE, in, g_dir);
    fr_test_expect_frugal(FR_FRUGAL_BIN, args, 2, "unknown LoRA target 'attn'", "kv_a_proj_with_mqa");
    /* a Q8_0 frozen base (its arithmetic is test_lora's): the run says what it kept */
    snprintf(args, sizeof args, "finetune --init %s --data %s --out %s/runs/lora-q8 --steps 2 %s --lora-base q8_0", FIXTURE,
             in, g_dir, common);
    fr_test_expect_frugal(FR_FRUGAL_BIN, args, 0, "kept as q8_0", NULL);
    snprintf(args, sizeof args, "merge --model %s --adapter %s --out %s/m2", FIXTURE, FIXTURE, g_dir);
    fr_test_expect_frugal(FR_FRUGAL_BIN, args, 1, "adapter_config.json", NULL);
}

/* `frugal generate --batch`: chat lines get the model's greedy reply appended as an assistant
 * message (equal to fr_generate's text for the rendered prompt), prompt lines a "completion";
 * --parallel 1 and 3 write the same file; the output feeds `frugal finetune` (sequence-level
 * distillation); a malformed line fails naming it and leaves no output. */
static void test_generate_batch(void) {
    char in[256], out1[256], out3[256], cmd[2048];
    snprintf(in, sizeof in, "%s/prompts.jsonl", g_dir);
    snprintf(out1, sizeof out1, "%s/gen1.jsonl", g_dir);
    snprintf(out3, sizeof out3, "%s/gen3.jsonl", g_dir);
    FILE *f = fopen(in, "w");
    for (int i = 0; f && i < 7; i++) {
        if (i == 3) fprintf(f, "{\"prompt\": \"In the beginning\", \"id\": 3}\n");
        else fprintf(f, "{\"messages\": [{\"role\": \"user\", \"content\": \"Tell verse %d.\"}]}\n", i);
    }
    if (f) fclose(f);
    const char *common = "--max-tokens 10 --temperature 0 --threads 1";
    snprintf(cmd, sizeof cmd, "%s generate --model %s --batch %s --out %s --parallel 1 %s 2>/dev/null", FR_FRUGAL_BIN,
             FIXTURE, in, out1, common);
    int rc1 = run(cmd);
    snprintf(cmd, sizeof cmd, "%s generate --model %s --batch %s --out %s --parallel 3 %s 2>/dev/null", FR_FRUGAL_BIN,
             FIXTURE, in, out3, common);
    int rc3 = run(cmd);
    CHECK(rc1 == 0 && rc3 == 0, "generate --batch exited %d / %d", rc1, rc3);
    char *a = NULL, *b = NULL;
    size_t la = 0, lb = 0;
    FILE *fa = fopen(out1, "r"), *fb = fopen(out3, "r");
    if (fa) { a = malloc(1 << 16); la = fread(a, 1, (1 << 16) - 1, fa); a[la] = 0; fclose(fa); }
    if (fb) { b = malloc(1 << 16); lb = fread(b, 1, (1 << 16) - 1, fb); b[lb] = 0; fclose(fb); }
    CHECK(a && b && la == lb && memcmp(a, b, la) == 0, "--parallel 1 and 3 write different files");
    /* line 0's reply = fr_generate's greedy text for the rendered prompt */
    fr_engine *e = NULL;
    fr_tokenizer *tok = NULL;
    int lines = 0, replies = 0, same = 0;
    if (a && fr_engine_load(&e, FIXTURE, NULL) == FR_OK && fr_tokenizer_load(&tok, FIXTURE) == FR_OK) {
        for (char *p = a; *p; lines++) {
            char *nl = strchr(p, '\n');
            cJSON *j = cJSON_ParseWithLength(p, nl ? (size_t)(nl - p) : strlen(p));
            const cJSON *m = j ? cJSON_GetObjectItem(j, "messages") : NULL;
            const int n = m ? cJSON_GetArraySize(m) : 0;
            if (n == 2 && !strcmp(cJSON_GetObjectItem(cJSON_GetArrayItem(m, 1), "role")->valuestring, "assistant")) {
                replies++;
                fr_chat_message um = {"user", cJSON_GetObjectItem(cJSON_GetArrayItem(m, 0), "content")->valuestring};
                char *prompt = NULL;
                int *ids = NULL, *outt = NULL, outl = 0;
                size_t ni = 0;
                fr_seq *s = NULL;
                fr_generate_options o;
                fr_generate_options_default(&o);
                o.sample.temperature = 0;
                o.max_tokens = 10;
                if (fr_chat_render(tok, &um, 1, 1, &prompt, NULL) == FR_OK &&
                    fr_tokenizer_encode(tok, prompt, strlen(prompt), 1, &ids, &ni) == FR_OK && fr_seq_create(&s, e) == FR_OK) {
                    const int *pp = ids;
                    int pl = (int)ni;
                    char *txt = NULL;
                    size_t tl = 0;
                    if (fr_generate(e, tok, &s, 1, &pp, &pl, &o, &outt, &outl, NULL) == FR_OK &&
                        fr_tokenizer_decode(tok, outt, (size_t)outl, 1, &txt, &tl) == FR_OK) {
                        const char *got = cJSON_GetObjectItem(cJSON_GetArrayItem(m, 1), "content")->valuestring;
                        /* the file's text is the decoded reply with non-UTF-8 bytes replaced */
                        int ok = 1;
                        for (size_t i = 0, k = 0; ok && i < tl;) {
                            const size_t sl = fr_utf8_seq_len((const unsigned char *)txt + i, tl - i);
                            if (sl && txt[i]) ok = !strncmp(got + k, txt + i, sl), k += sl, i += sl;
                            else ok = !strncmp(got + k, "\xef\xbf\xbd", 3), k += 3, i++;
                            if (i == tl) ok &= got[k] == 0;
                        }
                        same += ok;
                    }
                    free(txt);
                }
                free(prompt), free(ids), free(outt);
                fr_seq_free(s);
            }
            CHECK(lines != 3 || (j && cJSON_IsString(cJSON_GetObjectItem(j, "completion")) &&
                                 cJSON_GetObjectItem(j, "id")->valueint == 3),
                  "prompt line: a completion added, other keys kept");
            cJSON_Delete(j);
            p = nl ? nl + 1 : p + strlen(p);
        }
    }
    CHECK(lines == 7 && replies == 6 && same == 6, "%d lines, %d chat replies, %d equal to fr_generate's", lines, replies,
          same);
    fr_engine_free(e);
    fr_tokenizer_free(tok);
    free(a), free(b);
    /* the teacher's replies train a student */
    char run_dir[256];
    snprintf(run_dir, sizeof run_dir, "%s/runs/seqdistill", g_dir);
    snprintf(cmd, sizeof cmd, "grep messages %s > %s.chat && %s finetune --init %s --data %s.chat --out %s --steps 2 "
             "--batch 2 --seq 16 --val-fraction 0 --sample-interval 0 --threads 1 > %s/sd.log 2>&1",
             out1, out1, FR_FRUGAL_BIN, FIXTURE, out1, run_dir, g_dir);
    CHECK(run(cmd) == 0, "finetune on the generated replies (log %s/sd.log)", g_dir);
    /* a malformed line */
    f = fopen(in, "a");
    if (f) fprintf(f, "{\"messages\": 5}\n"), fclose(f);
    snprintf(cmd, sizeof cmd, "%s generate --model %s --batch %s --out %s/badgen.jsonl %s > %s/bad.log 2>&1", FR_FRUGAL_BIN,
             FIXTURE, in, g_dir, common, g_dir);
    const int rb = run(cmd);
    char badp[300], log[4096] = {0};
    snprintf(badp, sizeof badp, "%s/bad.log", g_dir);
    FILE *lf = fopen(badp, "r");
    if (lf) { size_t r = fread(log, 1, sizeof log - 1, lf); log[r] = 0; fclose(lf); }
    snprintf(badp, sizeof badp, "%s/badgen.jsonl", g_dir);
    struct stat sb;
    CHECK(rb == 1 && strstr(log, "line 8") && stat(badp, &sb) != 0, "malformed --batch line: exit %d, '%s'", rb, log);
    printf("generate --batch: 7 lines (6 chats, 1 prompt), replies = fr_generate's greedy text, --parallel 1 = 3; "
           "finetune on them runs\n");
}

int main(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/frugal_test_sft_%d", (int)getpid());
    mkdir(g_dir, 0755);
    fr_tokenizer *tok = NULL;
    CHECK(fr_tokenizer_load(&tok, FIXTURE) == FR_OK, "tokenizer: %s", fr_last_error());
    if (tok) {
        test_masked_encoding(tok);
        test_prepare(tok);
        fr_tokenizer_free(tok);
    }
    test_finetune_cli();
    test_lora_cli();
    test_generate_batch();
    const int rc = fr_test_finish("test_sft");
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_dir);
    if (rc == 0 && run(cmd) != 0) printf("could not remove %s\n", g_dir); /* kept for a look when a check failed */
    return rc;
}
