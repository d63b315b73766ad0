/* ops_cuda_none.c — the CUDA backend's entry in a build without CUDA (CMake found no nvcc, or
 * -DFRUGAL_CUDA=OFF): it says so. */
#ifndef FR_HAVE_CUDA
#include "cuda/ops_cuda.h"

#include <stdio.h>

const fr_ops *fr_ops_cuda(char *why, size_t n) {
    if (why && n) snprintf(why, n, "frugal was built without CUDA (no nvcc found when it was configured)");
    return NULL;
}

int fr_cuda_status(char *why, size_t n) {
    if (why && n) why[0] = 0;
    return 0;
}
#else
typedef int fr_ops_cuda_none_unused; /* (ISO C wants something in a translation unit) */
#endif
