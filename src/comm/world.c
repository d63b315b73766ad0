/*
 * world.c — the process's world for the public API (fr_world_*): joined once by the command
 * (or a program using libfrugal) before training, used by fr_train.
 */
#include "comm/comm.h"
#include "core/internal.h"

static fr_comm *g_world;

int fr_world_init(int *argc, char ***argv) {
    if (g_world) return FR_OK;
    return fr_comm_init(&g_world, argc, argv);
}

struct fr_comm *fr_world_comm(void) { return g_world; }

int fr_world_rank(void) { return g_world ? g_world->rank : 0; }

int fr_world_size(void) { return g_world ? g_world->size : 1; }

void fr_world_abort(int code) {
    if (g_world && g_world->size > 1) fr_comm_abort(g_world, code);
}

void fr_world_finalize(void) {
    fr_comm_free(g_world);
    g_world = NULL;
}
