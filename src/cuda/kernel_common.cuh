/*
 * kernel_common.cuh — what the CUDA backend's kernel bodies share.
 *
 * Every kernel of src/cuda/ is a thin __global__ wrapper (ops_cuda.cu) around a body written
 * here in the *.cuh files as plain C: one element, one row or one (sequence, head, query) per
 * call. nvcc compiles the bodies for the device (FR_HD = __host__ __device__); a C compiler
 * compiles the same text for the host, where tests/test_cuda_kernels.c runs every body over
 * its whole index space and compares with the CPU backend. That checks the arithmetic and the
 * indexing of each kernel on a machine without a GPU; what only a GPU can check (launch
 * shapes, races, atomics' order) is tests/test_cuda_ops.c's job (CTest label gpu).
 *
 * Rules for a body: C that is also valid C++ (casts on void *, no designated initializers, no
 * VLAs); no allocation; outputs that several calls write go through FR_ATOMIC_ADD; a body
 * never reads what another call of the same launch writes.
 */
#ifndef FR_CUDA_KERNEL_COMMON_CUH
#define FR_CUDA_KERNEL_COMMON_CUH

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#define FR_HD __host__ __device__ static inline
#else
#define FR_HD static inline
#endif

/* *p += v from many calls at once: atomicAdd on the device; on the host the calls run one
 * after another */
#if defined(__CUDA_ARCH__)
#define FR_ATOMIC_ADD(p, v) atomicAdd((p), (v))
#else
#define FR_ATOMIC_ADD(p, v) (*(p) += (v))
#endif

#endif
