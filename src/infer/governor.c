/*
 * governor.c — how many threads a decode step runs on, on a machine that may be shared.
 *
 * A decode step is a chain of short parallel regions, each ending in a barrier. Alone on
 * the machine the team's threads meet there within microseconds (libgomp spins while it
 * waits, which also keeps the cores awake: waking a sleeping vCPU costs tens of
 * microseconds, so waiting passively halves decode speed). When another process takes a
 * core, one of our threads is descheduled in the middle of its share and the others wait
 * for it a scheduler time slice at barrier after barrier: on 2 cores next to one busy
 * process, Q8_0 decode fell from ~4,000 to 200-1,800 tok/s, and next to a second frugal
 * to 50-400, while one thread keeps ~3,500 in both cases (docs/performance.md). Neither
 * spinning less nor a fixed thread count serves both machines, so the engine measures.
 *
 * Decode-sized forwards run on all threads ("arm" 0) or on one ("arm" 1). The cost of the
 * arm in use is the mean seconds per row of its last GOV_WINDOW forwards with the largest
 * left out (a lone hiccup of an idle machine does not count; the repeated stalls of a busy
 * one do). The other arm is tried every probe_every forwards (32 at first, doubling up to
 * 4,096 while it keeps losing), and at once when a forward costs more than GOV_ALARM times
 * the other arm's last known cost (contention starting). A try of one thread lasts
 * GOV_TRY_FORWARDS forwards (one thread runs steadily); a try of all threads also lasts at
 * least GOV_TRY_S seconds, several scheduler time slices, since a busy neighbour stalls
 * all-thread forwards only now and then (one forward of 4 ms among fifteen of 0.17 ms) and
 * the try must see the stalls to price them. A try wins when it is GOV_SWITCH cheaper than
 * the arm in use, and ends at once, lost, when it costs GOV_LOSE times as much on average or
 * GOV_STALL times in one forward, so a stalled try costs one forward. The first forward of
 * a try, and the first after it, pay for threads waking or going to sleep and are not
 * counted. One thread comes first, for two forwards (one counted): on a contended machine
 * the first all-thread forward can take 50-90 ms. The first try of all threads follows at
 * once, since alone on a machine where one core streams the weights at half the speed of
 * two (the 680M Q8_0 model on the Intel VM: 10 against 5.5 ms a token), each one-thread
 * forward costs most of a forward more: 8 of them first cost 64 tokens 13-25 %.
 *
 * The engine's results do not depend on the thread count (test_infer compares logits bit
 * for bit), so the governor changes speed only.
 */
#include "infer/infer_internal.h"

#include <string.h>

#define GOV_FIRST_TRY 2        /* the first try of all threads: early, so both costs are known */
#define GOV_EVERY_MIN 32
#define GOV_EVERY_MAX 4096
#define GOV_SWITCH 0.9         /* a try must cost less than this times the arm in use to win */
#define GOV_ALARM 2.0          /* one forward this many times the other arm's cost: try it now */
#define GOV_TRY_FORWARDS 8     /* a try: at least this many counted forwards ... */
#define GOV_TRY_S 0.02         /* ... and, for all threads, this many seconds */
#define GOV_LOSE 1.5           /* a try this many times the arm in use on average has lost ... */
#define GOV_STALL 4.0          /* ... and so has a try with one forward this many times it */

void fr_gov_init(fr_gov *g) {
    memset(g, 0, sizeof *g);
    g->last[0] = g->last[1] = -1;
    g->arm = 1;
    g->skip = 1; /* the first forward of an engine (page faults, cold caches) */
    g->every = GOV_EVERY_MIN;
    g->until_try = GOV_FIRST_TRY;
}

/* Cost of the arm in use: mean of its window without the largest; -1 before any forward. */
static double window_cost(const fr_gov *g) {
    if (g->n_win == 0) return -1;
    double sum = 0, max = 0;
    for (int i = 0; i < g->n_win; i++) {
        sum += g->win[i];
        if (g->win[i] > max) max = g->win[i];
    }
    return g->n_win > 2 ? (sum - max) / (g->n_win - 1) : sum / g->n_win;
}

int fr_gov_pick(fr_gov *g) {
    if (g->trying) return 1 - g->arm;
    if (g->until_try <= 0) {
        g->trying = 1;
        g->try_s = 0;
        g->try_rows = 0;
        g->try_n = 0;
        return 1 - g->arm;
    }
    g->until_try--;
    return g->arm;
}

static void end_try(fr_gov *g, int won, double cost) {
    const int other = 1 - g->arm;
    g->trying = 0;
    g->last[other] = cost;
    if (won) {
        g->last[g->arm] = window_cost(g);
        g->arm = other;
        g->n_win = g->pos = 0;
        g->every = GOV_EVERY_MIN;
    } else {
        g->every = g->every * 2 > GOV_EVERY_MAX ? GOV_EVERY_MAX : g->every * 2;
    }
    g->until_try = g->every;
    g->skip = 1; /* the forward after a try switches threads again */
}

void fr_gov_record(fr_gov *g, int arm, double seconds, int rows) {
    if (!(seconds >= 0) || rows < 1) return;
    const double per_row = seconds / rows;
    const double now = window_cost(g);
    if (g->trying && arm != g->arm) {
        if (g->try_n++ > 0) { /* the first forward of a try is not counted */
            g->try_s += seconds;
            g->try_rows += rows;
        }
        const double cost = g->try_rows ? g->try_s / g->try_rows : per_row;
        if (now >= 0 && ((g->try_rows && cost > GOV_LOSE * now) || per_row > GOV_STALL * now)) {
            end_try(g, 0, cost > per_row ? cost : per_row);
        } else if (g->try_n > GOV_TRY_FORWARDS && (arm == 1 || g->try_s >= GOV_TRY_S)) {
            end_try(g, now < 0 || cost < GOV_SWITCH * now, cost);
        }
        return;
    }
    if (g->skip) {
        g->skip = 0;
        return;
    }
    g->win[g->pos] = per_row;
    g->pos = (g->pos + 1) % FR_GOV_WINDOW;
    if (g->n_win < FR_GOV_WINDOW) g->n_win++;
    const double other = g->last[1 - arm];
    if (other >= 0 && per_row > GOV_ALARM * other) g->until_try = 0;
}
