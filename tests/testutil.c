#define _GNU_SOURCE /* popen, mkstemp */
#include "testutil.h"

#include "frugal.h"

#include <stdint.h>

#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <math.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

int fr_test_passed = 0, fr_test_failed = 0;

double fr_rel_err(const float *a, const float *b, size_t n) {
    double maxdiff = 0, maxref = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= maxdiff)) maxdiff = d;   /* NaN propagates */
        if (fabs((double)b[i]) > maxref) maxref = fabs((double)b[i]);
    }
    return maxdiff / (maxref > 1e-30 ? maxref : 1e-30);
}

int fr_test_finish(const char *suite) {
    printf("%s: %d passed, %d failed\n", suite, fr_test_passed, fr_test_failed);
    return fr_test_failed == 0 && fr_test_passed > 0 ? 0 : 1;
}

int fr_test_run_frugal(const char *bin, const char *args, char **out) {
    return fr_test_run_frugal_err(bin, args, out, NULL);
}

int fr_test_run_frugal_err(const char *bin, const char *args, char **out, char **err) {
    /* stderr goes to a file of its own: a second pipe would need a poll loop to avoid a deadlock */
    char errpath[] = "/tmp/frugal-test-stderr-XXXXXX";
    int efd = err ? mkstemp(errpath) : -1;
    if (efd >= 0) close(efd);
    size_t n = strlen(bin) + strlen(args) + sizeof errpath + 32;
    char *cmd = malloc(n);
    if (efd >= 0) snprintf(cmd, n, "'%s' %s 2>'%s'", bin, args, errpath);
    else if (err) snprintf(cmd, n, "'%s' %s 2>/dev/null", bin, args);
    else snprintf(cmd, n, "'%s' %s 2>&1", bin, args);
    FILE *p = popen(cmd, "r");
    free(cmd);
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    buf[0] = 0;
    int st = -1;
    if (p) {
        size_t got;
        while ((got = fread(buf + len, 1, cap - len - 1, p)) > 0) {
            len += got;
            if (cap - len < 1024) {
                cap *= 2;
                buf = realloc(buf, cap);
            }
        }
        buf[len] = 0;
        st = pclose(p);
    }
    *out = buf;
    if (err) {
        *err = efd >= 0 ? fr_test_read_file(errpath, NULL) : NULL;
        if (!*err) *err = calloc(1, 1);
        if (efd >= 0) unlink(errpath);
    }
    if (st == -1) return -1;
    if (WIFEXITED(st)) return WEXITSTATUS(st);
    if (WIFSIGNALED(st)) return 128 + WTERMSIG(st);
    return -1;
}

void fr_test_expect_frugal(const char *bin, const char *args, int want_rc, const char *must1, const char *must2) {
    char *out = NULL;
    int rc = fr_test_run_frugal(bin, args, &out);
    int ok_rc = want_rc >= 0 ? rc == want_rc : (rc > 0 && rc < 128);
    CHECK(ok_rc, "frugal %s: exit %d, wanted %s%d; output:\n%s", args, rc, want_rc >= 0 ? "" : "non-zero, not ",
          want_rc >= 0 ? want_rc : 0, out);
    if (must1) CHECK(strstr(out, must1) != NULL, "frugal %s: output lacks '%s':\n%s", args, must1, out);
    if (must2) CHECK(strstr(out, must2) != NULL, "frugal %s: output lacks '%s':\n%s", args, must2, out);
    free(out);
}

void fr_test_write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (!f) {
        CHECK(0, "cannot write %s", path);
        return;
    }
    fputs(text, f);
    fclose(f);
}

char *fr_test_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)(n > 0 ? n : 0) + 1);
    size_t got = n > 0 ? fread(buf, 1, (size_t)n, f) : 0;
    fclose(f);
    buf[got] = 0;
    if (len) *len = got;
    return buf;
}

int fr_test_file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

int fr_test_no_tmp_leftovers(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    struct dirent *e;
    int ok = 1;
    while ((e = readdir(d)) != NULL)
        if (strstr(e->d_name, ".tmp-") || strstr(e->d_name, ".old-")) ok = 0;
    closedir(d);
    return ok;
}

void fr_test_rm_rf(const char *path) {
    size_t n = strlen(path) + 16;
    char *cmd = malloc(n);
    snprintf(cmd, n, "rm -rf '%s'", path);
    if (system(cmd) != 0) printf("note: could not remove %s\n", path);
    free(cmd);
}

const char *fr_test_q32_config(int vocab_size) {
    static char buf[1400];
    snprintf(buf, sizeof buf,
             "{\"architectures\": [\"DeepseekV3ForCausalLM\"], \"model_type\": \"deepseek_v3\",\n"
             " \"vocab_size\": %d, \"hidden_size\": 64, \"intermediate_size\": 96, \"moe_intermediate_size\": 32,\n"
             " \"num_hidden_layers\": 2, \"num_attention_heads\": 2, \"num_key_value_heads\": 2,\n"
             " \"q_lora_rank\": 32, \"kv_lora_rank\": 32, \"qk_nope_head_dim\": 16, \"qk_rope_head_dim\": 16,\n"
             " \"v_head_dim\": 16, \"n_routed_experts\": 4, \"n_shared_experts\": 1, \"num_experts_per_tok\": 2,\n"
             " \"n_group\": 2, \"topk_group\": 1, \"topk_method\": \"noaux_tc\", \"scoring_func\": \"sigmoid\",\n"
             " \"norm_topk_prob\": true, \"routed_scaling_factor\": 2.5, \"first_k_dense_replace\": 1,\n"
             " \"moe_layer_freq\": 1, \"num_nextn_predict_layers\": 1, \"max_position_embeddings\": 128,\n"
             " \"rope_theta\": 10000.0, \"rope_scaling\": null, \"rope_interleave\": true, \"rms_norm_eps\": 1e-6,\n"
             " \"tie_word_embeddings\": false, \"initializer_range\": 0.02, \"hidden_act\": \"silu\",\n"
             " \"bos_token_id\": 0, \"eos_token_id\": 1, \"pad_token_id\": null}\n",
             vocab_size);
    return buf;
}

void fr_test_resume_args(fr_train_args *a, const char *run_dir, long max_steps) {
    memset(a, 0, sizeof *a);
    snprintf(a->run_dir, sizeof a->run_dir, "%s", run_dir);
    a->max_steps = max_steps;
}

const char *fr_test_tiny_train_config(int mtp_layers) {
    static char buf[1400];
    snprintf(buf, sizeof buf,
             "{\"architectures\": [\"DeepseekV3ForCausalLM\"], \"model_type\": \"deepseek_v3\",\n"
             " \"vocab_size\": 320, \"hidden_size\": 32, \"intermediate_size\": 64, \"moe_intermediate_size\": 16,\n"
             " \"num_hidden_layers\": 2, \"num_attention_heads\": 2, \"num_key_value_heads\": 2,\n"
             " \"q_lora_rank\": 16, \"kv_lora_rank\": 16, \"qk_nope_head_dim\": 8, \"qk_rope_head_dim\": 8, \"v_head_dim\": 8,\n"
             " \"n_routed_experts\": 8, \"n_shared_experts\": 1, \"num_experts_per_tok\": 2, \"n_group\": 2, \"topk_group\": 1,\n"
             " \"topk_method\": \"noaux_tc\", \"scoring_func\": \"sigmoid\", \"norm_topk_prob\": true, \"routed_scaling_factor\": 2.5,\n"
             " \"first_k_dense_replace\": 1, \"moe_layer_freq\": 1, \"num_nextn_predict_layers\": %d,\n"
             " \"max_position_embeddings\": 256, \"rope_theta\": 10000.0, \"rope_scaling\": null, \"rms_norm_eps\": 1e-06,\n"
             " \"tie_word_embeddings\": false, \"initializer_range\": 0.02, \"hidden_act\": \"silu\",\n"
             " \"bos_token_id\": 0, \"eos_token_id\": 1, \"pad_token_id\": 2}\n",
             mtp_layers);
    return buf;
}

void fr_test_write_corpus(const char *path, int n_docs, int numbered) {
    static const char *subj[] = {"the cat", "a dog", "the old man", "my sister", "the king", "a bird"};
    static const char *verb[] = {"sat on", "looked at", "walked to", "sang about", "ran past", "dreamed of"};
    static const char *obj[] = {"the mat", "a tree", "the river", "the house", "a bright star", "the hill"};
    FILE *f = fopen(path, "w");
    CHECK(f != NULL, "cannot write %s", path);
    if (!f) return;
    uint64_t s = 12345;
    for (int d = 0; d < n_docs; d++) {
        fputs("{\"text\": \"", f);
        for (int k = 0; k < 6; k++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            int a = (int)(s >> 33) % 6, b = (int)(s >> 41) % 6, c = (int)(s >> 49) % 6;
            fprintf(f, "%s%s %s %s.", k ? " " : "", subj[a], verb[b], obj[c]);
        }
        if (numbered) fprintf(f, " number %d", d);
        fputs("\"}\n", f);
    }
    fclose(f);
}

int fr_test_prepare_tiny_data(const char *corpus, const char *tok_dir, const char *data_dir) {
    fr_bpe_train_options o;
    memset(&o, 0, sizeof o);
    o.vocab_size = 300;
    o.num_threads = 2;
    const char *files[] = {corpus};
    fr_tokenizer *tok = NULL;
    int rc = fr_tokenizer_train(&tok, files, 1, &o);
    CHECK(rc == FR_OK, "tokenizer train: %s", fr_last_error());
    if (rc != FR_OK) return rc;
    mkdir(tok_dir, 0755);
    rc = fr_tokenizer_save(tok, tok_dir);
    fr_tokenizer_free(tok);
    CHECK(rc == FR_OK, "tokenizer save: %s", fr_last_error());
    if (rc != FR_OK) return rc;
    fr_data_prepare_options d;
    memset(&d, 0, sizeof d);
    d.tokenizer_dir = tok_dir;
    const char *inputs[] = {corpus};
    d.inputs = inputs;
    d.n_inputs = 1;
    d.output_dir = data_dir;
    d.val_fraction = 0.1;
    d.num_threads = 2;
    fr_data_stats st;
    rc = fr_data_prepare(&d, &st);
    CHECK(rc == FR_OK, "data prepare: %s", fr_last_error());
    if (rc == FR_OK)
        printf("data: %llu train / %llu val tokens\n", (unsigned long long)st.train_tokens, (unsigned long long)st.val_tokens);
    return rc;
}

int fr_test_tiny_run_root(const char *root) {
    char corpus[600], tok[600], data[600], cfg[600];
    snprintf(corpus, sizeof corpus, "%s/corpus.jsonl", root);
    snprintf(tok, sizeof tok, "%s/tok", root);
    snprintf(data, sizeof data, "%s/data", root);
    snprintf(cfg, sizeof cfg, "%s/tiny.json", root);
    fr_test_write_corpus(corpus, 240, 0);
    fr_test_write_text(cfg, fr_test_tiny_train_config(1));
    return fr_test_prepare_tiny_data(corpus, tok, data);
}

void fr_test_train_args(fr_train_args *a, const char *root, const char *run) {
    fr_train_args_default(a);
    snprintf(a->model_config, sizeof a->model_config, "%s/tiny.json", root);
    snprintf(a->data_dir, sizeof a->data_dir, "%s/data", root);
    snprintf(a->run_dir, sizeof a->run_dir, "%s/%s", root, run);
    snprintf(a->ledger_path, sizeof a->ledger_path, "%s/ledger.jsonl", root);
    a->batch_size = 4;
    a->seq_len = 32;
    a->max_steps = 30;
    a->lr = 1e-2;
    a->warmup_steps = 5;
    a->threads = 2;
    a->seed = 7;
}

int fr_test_engine_logits(fr_engine *e, const int *tokens, int T, int P, float *out) {
    const int V = fr_engine_config(e)->vocab_size;
    fr_seq *s = NULL;
    int rc = fr_seq_create(&s, e);
    const int *tp = tokens;
    if (rc == FR_OK) rc = fr_engine_forward(e, &s, 1, &tp, &P, out, 1);
    for (int t = P; t < T && rc == FR_OK; t++) {
        const int *one = tokens + t;
        int n1 = 1;
        rc = fr_engine_forward(e, &s, 1, &one, &n1, out + (size_t)t * V, 0);
    }
    if (rc == FR_OK && fr_seq_len(s) != T) rc = -1;
    fr_seq_free(s);
    return rc;
}

float *fr_test_fnew(size_t n) {
    float *p = malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; p && i < n; i++) p[i] = NAN;
    return p;
}

float *fr_test_frand(fr_rng *r, size_t n, float lo, float hi) {
    float *p = fr_test_fnew(n);
    for (size_t i = 0; p && i < n; i++) p[i] = lo + (hi - lo) * (float)fr_rng_uniform(r);
    return p;
}

static double fd_loss(fr_model *m, const int *tok, const int *tg, int B, int T) {
    fr_loss_info li;
    fr_model_forward(m, tok, tg, B, T, &li);
    return li.loss;
}

double fr_test_fd_grad(fr_model *m, float *p, const int *tok, const int *tg, int B, int T, double h, int *flip) {
    const float orig = *p;
    const double dh[4] = {h, -h, h / 2, -h / 2};
    double l[4];
    for (int q = 0; q < 4; q++) {
        *p = orig + (float)dh[q];
        l[q] = fd_loss(m, tok, tg, B, T);
    }
    *p = orig;
    const double fd = (l[0] - l[1]) / (2 * h), fd2 = (l[2] - l[3]) / h;
    if (flip) *flip = fabs(fd - fd2) > 0.05 * fabs(fd2) + 1e-3;
    return (4.0 * fd2 - fd) / 3.0;
}

void fr_test_top3(const float *g, size_t n, size_t pick[3]) {
    pick[0] = pick[1] = pick[2] = 0;
    for (int r = 0; r < 3; r++) {
        double best = -1;
        for (size_t i = 0; i < n; i++) {
            int used = 0;
            for (int q = 0; q < r; q++) used |= pick[q] == i;
            if (!used && fabs(g[i]) > best) best = fabs(g[i]), pick[r] = i;
        }
    }
}
