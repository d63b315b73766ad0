/* bench_tokenizer.c — byte-level BPE: training time for a vocabulary over a corpus, and
 * encode throughput (MB/s of input text) with 1 and 2 threads on the same corpus.
 *
 *   bench_tokenizer [--corpus PATH] [--vocab N] [--threads N] [--reps N] [--save DIR]
 *                   [--tokenizer DIR] [--json]
 *
 * Defaults: corpus /tmp/kjv/kjv.jsonl (scripts/corpus-kjv.sh /tmp/kjv), vocab 8192, training
 * with all cores, best of 3 encode passes. --tokenizer loads a tokenizer instead of training;
 * --save writes the trained one (tools/bench_tokenizers.py uses it to run `tokenizers` on
 * the same vocabulary). --json prints one JSON line with the figures, including an FNV-1a
 * hash of all ids so another implementation can be compared id for id. */
#define _GNU_SOURCE
#include "bench_common.h"
#include "frugal.h"

#include <cjson/cJSON.h>
#include <stdint.h>

typedef struct {
    char **text;
    size_t *len;
    size_t n, bytes;
} corpus;

static int load_corpus(const char *path, corpus *c) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    memset(c, 0, sizeof *c);
    size_t cap = 0;
    char *line = NULL;
    size_t lcap = 0;
    ssize_t got;
    int jsonl = strlen(path) > 6 && strcmp(path + strlen(path) - 6, ".jsonl") == 0;
    if (!jsonl) { /* plain text: one document */
        fseek(f, 0, SEEK_END);
        long n = ftell(f);
        fseek(f, 0, SEEK_SET);
        c->text = malloc(sizeof *c->text);
        c->len = malloc(sizeof *c->len);
        c->text[0] = malloc((size_t)n + 1);
        c->len[0] = fread(c->text[0], 1, (size_t)n, f);
        c->n = 1;
        c->bytes = c->len[0];
        fclose(f);
        return 0;
    }
    while ((got = getline(&line, &lcap, f)) > 0) {
        cJSON *j = cJSON_ParseWithLength(line, (size_t)got);
        const cJSON *t = j ? cJSON_GetObjectItemCaseSensitive(j, "text") : NULL;
        if (cJSON_IsString(t)) {
            if (c->n == cap) {
                cap = cap ? 2 * cap : 1024;
                c->text = realloc(c->text, cap * sizeof *c->text);
                c->len = realloc(c->len, cap * sizeof *c->len);
            }
            c->text[c->n] = strdup(t->valuestring);
            c->len[c->n] = strlen(t->valuestring);
            c->bytes += c->len[c->n];
            c->n++;
        }
        cJSON_Delete(j);
    }
    free(line);
    fclose(f);
    return 0;
}

/* Encode every document with nt threads; returns seconds; *n_tokens and *hash over all ids. */
static double encode_all(const fr_tokenizer *tok, const corpus *c, int nt, uint64_t *n_tokens, uint64_t *hash) {
    int **ids = calloc(c->n, sizeof *ids);
    size_t *nids = calloc(c->n, sizeof *nids);
    int failed = 0;
    double t0 = bench_now();
#pragma omp parallel for num_threads(nt) schedule(dynamic, 4) reduction(+ : failed)
    for (long i = 0; i < (long)c->n; i++)
        if (fr_tokenizer_encode(tok, c->text[i], c->len[i], 0, &ids[i], &nids[i]) != FR_OK) failed++;
    double t = bench_now() - t0;
    if (failed) {
        fprintf(stderr, "bench_tokenizer: %d documents failed to encode: %s\n", failed, fr_last_error());
        exit(1);
    }
    uint64_t h = 0xcbf29ce484222325ull, n = 0;
    for (size_t i = 0; i < c->n; i++) {
        for (size_t k = 0; k < nids[i]; k++) {
            uint32_t v = (uint32_t)ids[i][k];
            for (int b = 0; b < 4; b++) {
                h ^= (v >> (8 * b)) & 0xff;
                h *= 0x100000001b3ull;
            }
        }
        n += nids[i];
        free(ids[i]);
    }
    free(ids);
    free(nids);
    *n_tokens = n;
    *hash = h;
    return t;
}

int main(int argc, char **argv) {
    const char *prog = "bench_tokenizer", *corpus_path = "/tmp/kjv/kjv.jsonl", *save = NULL, *load = NULL;
    int vocab = 8192, threads = 0, reps = 3, json = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--corpus")) corpus_path = bench_opt_value(prog, argc, argv, &i);
        else if (!strcmp(argv[i], "--vocab")) vocab = (int)bench_parse_long(prog, "--vocab", bench_opt_value(prog, argc, argv, &i), 262, 1 << 22);
        else if (!strcmp(argv[i], "--threads")) threads = (int)bench_parse_long(prog, "--threads", bench_opt_value(prog, argc, argv, &i), 0, 1024);
        else if (!strcmp(argv[i], "--reps")) reps = (int)bench_parse_long(prog, "--reps", bench_opt_value(prog, argc, argv, &i), 1, 100);
        else if (!strcmp(argv[i], "--save")) save = bench_opt_value(prog, argc, argv, &i);
        else if (!strcmp(argv[i], "--tokenizer")) load = bench_opt_value(prog, argc, argv, &i);
        else if (!strcmp(argv[i], "--json")) json = 1;
        else {
            fprintf(stderr, "usage: %s [--corpus PATH] [--vocab N] [--threads N] [--reps N] [--save DIR] [--tokenizer DIR] [--json]\n", prog);
            return 2;
        }
    }
    corpus c;
    if (load_corpus(corpus_path, &c) != 0 || c.n == 0) {
        fprintf(stderr, "%s: cannot read corpus %s (make it with scripts/corpus-kjv.sh /tmp/kjv)\n", prog, corpus_path);
        return 1;
    }
    fr_tokenizer *tok = NULL;
    double train_s = 0;
    int rc;
    if (load) {
        rc = fr_tokenizer_load(&tok, load);
    } else {
        fr_bpe_train_options o;
        memset(&o, 0, sizeof o);
        o.vocab_size = vocab;
        o.num_threads = threads;
        const char *files[1] = {corpus_path};
        double t0 = bench_now();
        rc = fr_tokenizer_train(&tok, files, 1, &o);
        train_s = bench_now() - t0;
    }
    if (rc != FR_OK) {
        fprintf(stderr, "%s: %s\n", prog, fr_last_error());
        return 1;
    }
    if (save && (rc = fr_tokenizer_save(tok, save)) != FR_OK) {
        fprintf(stderr, "%s: %s\n", prog, fr_last_error());
        return 1;
    }
    double best[3] = {1e30, 1e30, 1e30};
    uint64_t ntok = 0, hash = 0, ntok2 = 0, hash2 = 0;
    for (int nt = 1; nt <= 2; nt++)
        for (int r = 0; r < reps; r++) {
            double t = encode_all(tok, &c, nt, nt == 1 ? &ntok : &ntok2, nt == 1 ? &hash : &hash2);
            if (t < best[nt]) best[nt] = t;
        }
    if (ntok != ntok2 || hash != hash2) {
        fprintf(stderr, "%s: 1-thread and 2-thread encodings differ\n", prog);
        return 1;
    }
    double mb = (double)c.bytes / 1e6;
    if (json) {
        printf("{\"corpus\": \"%s\", \"docs\": %zu, \"bytes\": %zu, \"vocab\": %d, \"train_s\": %.4f, "
               "\"encode_1t_s\": %.5f, \"encode_2t_s\": %.5f, \"encode_1t_mbs\": %.3f, \"encode_2t_mbs\": %.3f, "
               "\"tokens\": %llu, \"ids_fnv1a\": \"%016llx\"}\n",
               corpus_path, c.n, c.bytes, fr_tokenizer_vocab_size(tok), train_s, best[1], best[2], mb / best[1],
               mb / best[2], (unsigned long long)ntok, (unsigned long long)hash);
    } else {
        printf("corpus %s: %zu documents, %.2f MB\n", corpus_path, c.n, mb);
        if (!load) printf("train  vocab %d: %.3f s\n", fr_tokenizer_vocab_size(tok), train_s);
        printf("encode 1 thread : %.2f MB/s (%.3f s, %llu tokens, %.2f bytes/token)\n", mb / best[1], best[1],
               (unsigned long long)ntok, (double)c.bytes / (double)ntok);
        printf("encode 2 threads: %.2f MB/s (%.3f s)\n", mb / best[2], best[2]);
    }
    fr_tokenizer_free(tok);
    for (size_t i = 0; i < c.n; i++) free(c.text[i]);
    free(c.text);
    free(c.len);
    return 0;
}
