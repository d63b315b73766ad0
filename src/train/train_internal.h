/* train_internal.h — shared by train.c and train_args.c, and the trainer's test hooks (not
 * part of the public API). */
#ifndef FR_TRAIN_INTERNAL_H
#define FR_TRAIN_INTERNAL_H

#include "frugal.h"

#include <cjson/cJSON.h>

/* The arguments (train_args.c): check a run's arguments (a message naming the bad one);
 * to and from train_args.json (path names the file in messages). */
int fr_train_args_check(const fr_train_args *a);
cJSON *fr_train_args_to_json(const fr_train_args *a);
/* The run's AdamW moment format: a->moments, or the precision's default ("bf16" for fp8). */
const char *fr_train_moments(const fr_train_args *a);
int fr_train_args_from_json(fr_train_args *a, const char *text, size_t len, const char *path);
/* Write j, pretty-printed and newline-terminated, to path atomically. */
int fr_train_write_json(const char *path, cJSON *j);

/* fr_train over a given world (tests run a one-process reference inside an MPI job) */
struct fr_comm;
int fr_train_in(const fr_train_args *args, int resume, const fr_train_hooks *hooks, fr_train_result *res,
                struct fr_comm *world);

/* The clock the trainer measures wall time with (seconds, monotonic); NULL restores
 * CLOCK_MONOTONIC. Tests inject a fake clock to check that the ledger adds up. */
void fr_train_set_clock(double (*now)(void));

/* Seconds between "progress" ledger records written while training (besides the one at each
 * checkpoint), so a crash loses at most this much of the record; <= 0 restores the default. */
#define FR_TRAIN_PROGRESS_INTERVAL_S 30.0
void fr_train_set_progress_interval(double seconds);

#endif
