/* distill.h — the teacher of a logit-distillation run (distill.c), for the trainer. */
#ifndef FR_DISTILL_H
#define FR_DISTILL_H

#include "frugal.h"

#include <stdint.h>

typedef struct fr_teacher fr_teacher;

/* A teacher model folder run by the inference engine (teacher_dir non-empty), else the top-k
 * shards beside the training shards (made for the same k, seq_len and temperature); k logits
 * per position, windows of seq_len tokens. A
 * teacher whose vocabulary differs from the student's is refused naming both sizes. */
int fr_teacher_open(fr_teacher **out, const char *teacher_dir, int k, int seq_len, float temperature,
                    const fr_dataset *train, int student_vocab);
/* The top-k [B * seq_len, k] of B windows (tokens [B, seq_len] starting at global positions
 * pos[b] of the training split) and each row's log-sum-exp at the temperature, lse [B * seq_len]. */
int fr_teacher_topk(fr_teacher *t, int B, const int *tokens, const uint64_t *pos, int32_t *idx, float *logit,
                    float *lse);
void fr_teacher_free(fr_teacher *t);

#endif
