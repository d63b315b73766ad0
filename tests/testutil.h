/* testutil.h — tiny test harness: CHECK macros and a closing "N passed, N failed" line. */
#ifndef FR_TESTUTIL_H
#define FR_TESTUTIL_H
#include <stdio.h>
#include <stddef.h>

#include "frugal.h"
#include "core/internal.h" /* fr_rng */

extern int fr_test_passed, fr_test_failed;

/* Record one check; prints a line for failures only. */
#define CHECK(cond, ...) do { \
    if (cond) fr_test_passed++; \
    else { fr_test_failed++; printf("FAIL %s:%d: ", __FILE__, __LINE__); printf(__VA_ARGS__); printf("\n"); } \
} while (0)

/* max |a-b| / max(max |b|, tiny): the relative error used against references. */
double fr_rel_err(const float *a, const float *b, size_t n);
/* Run `BIN ARGS` (ARGS already shell-quoted) with stderr merged into the captured output.
 * Returns the exit status (128 + signal if killed, -1 if it could not run); *out is malloc'd. */
int fr_test_run_frugal(const char *bin, const char *args, char **out);
/* As fr_test_run_frugal, but with err != NULL stdout alone goes to *out and stderr to *err
 * (malloc'd, "" if it could not be captured), for checks that must tell the two apart. */
int fr_test_run_frugal_err(const char *bin, const char *args, char **out, char **err);
/* Run `BIN ARGS` and check its exit status (want_rc < 0: any failure status 1..127, not a
 * crash) and that its output contains must1 and must2 (each may be NULL). */
void fr_test_expect_frugal(const char *bin, const char *args, int want_rc, const char *must1, const char *must2);
/* Write text to path (a failed check if it cannot). */
void fr_test_write_text(const char *path, const char *text);
/* Whole file, NUL-terminated and malloc'd (NULL if it cannot be opened); *len = bytes read
 * when len != NULL. */
char *fr_test_read_file(const char *path, size_t *len);
int fr_test_file_exists(const char *path);
/* 1 when no entry of dir holds ".tmp-" or ".old-" (a temporary or replaced output folder
 * left behind by an interrupted or failed write), 0 otherwise or if dir cannot be read. */
int fr_test_no_tmp_leftovers(const char *dir);
/* rm -rf path; prints a note (not a failed check) if that fails: cleanup is not under test. */
void fr_test_rm_rf(const char *path);
/* config.json of a tiny DeepSeek-V3 MoE model (2 layers, MLA, 4 routed experts + 1 shared,
 * one MTP module) whose every linear width is a multiple of 32, so Q8_0 / Q4_1 can hold all
 * of them, with the given vocabulary size. Returns a static buffer. */
const char *fr_test_q32_config(int vocab_size);
/* Arguments that resume the run in run_dir (everything else from its train_args.json), to
 * max_steps steps (0: the saved count). */
void fr_test_resume_args(fr_train_args *a, const char *run_dir, long max_steps);
/* config.json of the training tests' tiny model (vocab 320, hidden 32, 2 layers: 1 dense + 1
 * MoE of 8 experts, 2 per token) with mtp_layers MTP modules. Returns a static buffer. */
const char *fr_test_tiny_train_config(int mtp_layers);
/* The training tests' corpus: n_docs JSONL documents of six sentences each from a tiny
 * grammar, deterministic; numbered != 0 ends document d with " number d" (all distinct). */
void fr_test_write_corpus(const char *path, int n_docs, int numbered);
/* Train a 300-id byte-level BPE tokenizer on corpus into tok_dir (created), then prepare
 * corpus into data_dir (10 % validation, 2 threads). Failed checks name the step; returns
 * FR_OK or the library's error. */
int fr_test_prepare_tiny_data(const char *corpus, const char *tok_dir, const char *data_dir);
/* The tiny runs' folder: ROOT/corpus.jsonl (240 documents), ROOT/tiny.json (the tiny config
 * with one MTP module), ROOT/tok and ROOT/data (fr_test_prepare_tiny_data). */
int fr_test_tiny_run_root(const char *root);
/* Training arguments of the tiny runs: ROOT/tiny.json on ROOT/data into ROOT/RUN, ledger
 * ROOT/ledger.jsonl, 4 x 32 tokens, 30 steps, lr 1e-2 with 5 warmup steps, 2 threads, seed 7;
 * evaluation, checkpoint and sample intervals are left to each test. */
void fr_test_train_args(fr_train_args *a, const char *root, const char *run);
/* Engine logits of tokens[0:T] in a new sequence: a prefill of the first P tokens (all their
 * logits), then one token per forward; out [T, V]. FR_OK, or the failing call's code (-1
 * when the sequence does not end at T tokens). */
int fr_test_engine_logits(fr_engine *e, const int *tokens, int T, int P, float *out);
/* Test arrays (malloc'd, never NULL-sized): n NaNs (outputs a call must overwrite), or n
 * values uniform in [lo, hi) drawn from r in order. */
float *fr_test_fnew(size_t n);
float *fr_test_frand(fr_rng *r, size_t n, float lo, float hi);
/* The indices of the 3 largest |g[i]| (of n), largest first, the lower index on ties; n < 3
 * leaves the rest 0. */
void fr_test_top3(const float *g, size_t n, size_t pick[3]);
/* Finite-difference gradient of the training loss (fr_model_forward's li.loss on tok / tg,
 * B x T) with respect to the parameter *p: central differences D(h) and D(h/2) combined by
 * Richardson extrapolation, (4 D(h/2) - D(h)) / 3. *flip (optional) is set when D(h) and
 * D(h/2) disagree by more than 5 % + 1e-3: a routing choice flipped inside the interval,
 * where the loss is not differentiable. *p is restored. */
double fr_test_fd_grad(fr_model *m, float *p, const int *tok, const int *tg, int B, int T, double h, int *flip);
/* Prints "N passed, N failed" and returns the process exit code. */
int fr_test_finish(const char *suite);

#endif
