/*
 * cuda_loader.c — the CUDA backend's entry in libfrugal (src/cuda/ops_cuda.h): it loads
 * libfrugal_cuda.so, which holds the backend and links CUDA's runtime and cuBLAS, the first
 * time a model goes to the GPU, so that no other command pays for mapping those libraries
 * (~0.1 s and ~200 MB each start). The library is looked for at FRUGAL_CUDA_LIB, beside the
 * file that holds this code (the build folder; an installed libfrugal.so's lib/), in ../lib
 * from it (an installed `frugal` in bin/), then by the dynamic loader's own search.
 */
#define _GNU_SOURCE
#include "cuda/ops_cuda.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FR_CUDA_LIB "libfrugal_cuda.so"

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static void *g_lib;
static char g_why[512];
static const fr_ops *(*g_ops)(char *, size_t);
static int (*g_status)(char *, size_t);
static size_t (*g_memory)(void);

static void *try_open(const char *path) {
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        const char *e = dlerror();
        /* keep the most telling failure: a library that exists but cannot load says why */
        if (e && (!g_why[0] || !strstr(e, "No such file"))) snprintf(g_why, sizeof g_why, "%s", e);
    }
    return h;
}

static void load(void) {
    const char *env = getenv("FRUGAL_CUDA_LIB");
    if (env && *env) g_lib = try_open(env);
    Dl_info info;
    if (!g_lib && dladdr((void *)fr_ops_cuda, &info) && info.dli_fname) {
        char dir[1024];
        snprintf(dir, sizeof dir, "%s", info.dli_fname);
        char *slash = strrchr(dir, '/');
        if (slash) {
            *slash = 0;
            char path[1200];
            snprintf(path, sizeof path, "%s/%s", dir, FR_CUDA_LIB);
            g_lib = try_open(path);
            if (!g_lib) {
                snprintf(path, sizeof path, "%s/../lib/%s", dir, FR_CUDA_LIB);
                g_lib = try_open(path);
            }
        }
    }
    if (!g_lib) g_lib = try_open(FR_CUDA_LIB);
    if (!g_lib) return;
    *(void **)&g_ops = dlsym(g_lib, "fr_cuda_backend_ops");
    *(void **)&g_status = dlsym(g_lib, "fr_cuda_backend_status");
    *(void **)&g_memory = dlsym(g_lib, "fr_cuda_backend_memory_used");
    if (!g_ops || !g_status || !g_memory) {
        snprintf(g_why, sizeof g_why, "%s is not frugal's CUDA backend (its entry points are missing)", FR_CUDA_LIB);
        g_ops = NULL;
    }
}

const fr_ops *fr_ops_cuda(char *why, size_t n) {
    pthread_once(&g_once, load);
    if (!g_ops) {
        if (why && n)
            snprintf(why, n, "the CUDA backend (%s) is not available: %s", FR_CUDA_LIB,
                     g_why[0] ? g_why : "frugal was built without CUDA (no nvcc when it was configured)");
        return NULL;
    }
    return g_ops(why, n);
}

int fr_cuda_status(char *why, size_t n) {
    pthread_once(&g_once, load);
    if (!g_status) {
        if (why && n) why[0] = 0;
        return 0;
    }
    return g_status(why, n);
}

size_t fr_cuda_memory_used(void) {
    pthread_once(&g_once, load);
    return g_memory ? g_memory() : 0;
}
