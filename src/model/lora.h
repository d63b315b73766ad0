/*
 * lora.h — low-rank adapters on the model's linear layers (LoRA, Hu et al. 2021), the
 * layer side: W x becomes W x + scale * B (A x) with A [rank, in], B [out, rank] and
 * scale = alpha / rank (alpha / sqrt(rank) for rsLoRA). The adapters are ordinary tensors of
 * the parameter arena, appended after every base tensor and named as PEFT names them
 * ("base_model.model.<module>.lora_A.weight"); the base tensors are frozen. See lora.c.
 */
#ifndef FR_LORA_H
#define FR_LORA_H

#include "model/model_internal.h"

/* One adapted matrix: the base W [out, in] at arena offset base, its A and B. */
typedef struct fr_lora_site {
    size_t base, a, b;
    int in, out;
} fr_lora_site;

/* The site adapting the matrix at arena offset off (of params or grads), or NULL. */
const fr_lora_site *fr_lora_find(const fr_model *m, size_t off);

/* y[N,out] (ldy) += scale * (x[N,in] (ldx) A^T) B^T */
void fr_lora_forward(fr_model *m, const fr_lora_site *s, float *y, int ldy, const float *x, int ldx, int N);
/* dx[N,in] (lddx) += scale * (dy B) A */
void fr_lora_backward_dx(fr_model *m, const fr_lora_site *s, float *dx, int lddx, const float *dy, int lddy, int N);
/* dA += scale * (dy B)^T x;  dB += scale * dy^T (x A^T) */
void fr_lora_backward_dw(fr_model *m, const fr_lora_site *s, const float *dy, int lddy, const float *x, int ldx,
                         int N);

/* FP32 values of the parameter span [w, w + n): w itself, or, where the frozen base is stored
 * quantized (fr_model_lora_quantize_base), a dequantized copy in scratch slot 0 or 1 at the
 * same relative position, valid until the next call for that slot. NULL (and m->gemm_failed)
 * when out of memory. */
const float *fr_lora_weights(fr_model *m, int slot, const float *w, size_t n);

/* Free the quantized frozen base (fr_model_free) */
void fr_lora_free_base(fr_model *m);

/* Nonzero when the arena span at grads offset off is frozen (no gradient wanted). */
static inline int fr_lora_frozen(const fr_model *m, size_t off) { return m->n_lora > 0 && off < m->train_lo; }

#endif
