/* ops_cuda.h — the CUDA backend's entry (src/cuda/). */
#ifndef FR_OPS_CUDA_H
#define FR_OPS_CUDA_H

#include "model/ops.h"

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The CUDA backend's ops table on device 0, or NULL with *why saying why not: a build without
 * CUDA, no device, or a failed setup. */
const fr_ops *fr_ops_cuda(char *why, size_t n);
/* 0 when every op since the last call ran; else non-zero and *why names the first failure */
int fr_cuda_status(char *why, size_t n);
/* Bytes of device memory in use now (the whole device: cudaMemGetInfo), 0 without CUDA */
size_t fr_cuda_memory_used(void);

#ifdef __cplusplus
}
#endif

#endif
