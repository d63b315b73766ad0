/*
 * device.c — which backend new models live on (fr_set_device): "cpu" (the default), "cuda"
 * (src/cuda/, an NVIDIA GPU) or "cpu-guarded" (the CPU's kernels behind device-like memory,
 * the check that host code never touches backend memory directly: cpu/ops_cpu_guard.c).
 * A model keeps the backend it was created or loaded on.
 */
#include "core/internal.h"
#include "cpu/ops_cpu.h"
#include "cuda/ops_cuda.h"
#include "model/model_internal.h"

#include <stdio.h>
#include <string.h>

static const fr_ops *g_device_ops;

int fr_set_device(const char *name) {
    fr_clear_error();
    if (!name || !strcmp(name, "cpu")) {
        g_device_ops = fr_ops_cpu();
        return FR_OK;
    }
    if (!strcmp(name, "cpu-guarded")) {
        g_device_ops = fr_ops_cpu_guarded();
        return FR_OK;
    }
    if (!strcmp(name, "cuda")) {
        char why[256] = {0};
        const fr_ops *o = fr_ops_cuda(why, sizeof why);
        if (!o) return fr_error(FR_ERR_UNSUPPORTED, "--device cuda: %s", why);
        g_device_ops = o;
        return FR_OK;
    }
    return fr_error(FR_ERR_ARG, "unknown device '%s' (cpu, cuda or cpu-guarded)", name);
}

const char *fr_device_name(void) { return g_device_ops ? g_device_ops->name : "cpu"; }

const fr_ops *fr_device_ops(void) { return g_device_ops ? g_device_ops : fr_ops_cpu(); }

int fr_device_status(const fr_ops *o, const char *what) {
    if (!o || strcmp(o->name, "cuda") != 0) return FR_OK; /* the CPU backends cannot fail silently */
    char why[256];
    if (fr_cuda_status(why, sizeof why) != 0) return fr_error(FR_ERR_STATE, "%s failed on the GPU: %s", what, why);
    return FR_OK;
}
