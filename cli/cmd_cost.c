/* cmd_cost.c — `frugal cost`: the run ledger as a table, and the final-run cost next to the
 * lifecycle cost (every run of the project: finished, interrupted, crashed, experimental). */
#define _GNU_SOURCE
#include "cli.h"

#include "frugal.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

void usage_cost(FILE *f) {
    fprintf(f,
            "usage: frugal cost [PROJECT_DIR | --ledger FILE] [--final RUN_ID|RUN_DIR] [--kind KIND]\n"
            "                   [--price-device-hour X] [--watts X] [--price-kwh X] [--gpu] [--plan FILE] [--json]\n"
            "\n"
            "Reads the run ledger and prints every run (id, kind, status, steps, tokens, FLOPs,\n"
            "device-hours, energy, cost, losses), then the cost of the final run next to the cost of\n"
            "the whole lifecycle (all runs in the ledger) and their ratio.\n"
            "\n"
            "The final run is one run of the ledger (a run resumed from its checkpoints keeps its\n"
            "run id, so all its segments are in it); by default the latest finished run of kind\n"
            "KIND. Runs without an end record count as running while their trainer\n"
            "still holds the run folder, else as crashed (killed).\n"
            "\n"
            "Options:\n"
            "  PROJECT_DIR             the folder holding the run folders: its ledger.jsonl is the one\n"
            "                          `frugal train --out PROJECT_DIR/RUN` writes (e.g. `frugal cost runs`)\n"
            "  --ledger FILE           the ledger (default ./ledger.jsonl; a missing file is an empty ledger)\n"
            "  --final RUN_ID|RUN_DIR  the final run: a run id (or a unique prefix) or a run directory\n"
            "  --kind KIND             kind of run the default final run is chosen from (default train)\n"
            "  --price-device-hour X   reprice: $ per device-hour (core-hour or GPU-hour)\n"
            "  --watts X               reprice energy: watts per device\n"
            "  --price-kwh X           electricity price in $ per kWh (default 0.15)\n"
            "  --gpu                   reprice with the GPU defaults ($2.00 per GPU-hour, 700 W)\n"
            "                          (without it, --price-device-hour/--watts fill in from the CPU\n"
            "                          defaults: $0.02 per core-hour, 8 W)\n"
            "  --plan FILE             a plan written by `frugal plan --json`: its GPU-hours, cost, tokens and\n"
            "                          FLOPs beside the final run's and the lifecycle's\n"
            "  --json                  print one JSON object instead of the tables\n"
            "  -h, --help              show this help\n"
            "\n"
            "Without price options, the costs are those the runs recorded. With them, the compute\n"
            "cost is device-hours x price and the energy is device-hours x watts / 1000.\n"
            "Device-hours are wall-clock seconds x devices / 3600.\n");
}

typedef struct {
    int runs;
    double wall_s, steps, tokens, flops, device_hours, energy_kwh, cost_usd;
    int by_status[6]; /* finished, interrupted, crashed, failed, running, other */
} totals;

static const char *STATUS_NAMES[6] = {"finished", "interrupted", "crashed", "failed", "running", "other"};

static int status_index(const char *s) {
    for (int i = 0; i < 5; i++)
        if (strcmp(s, STATUS_NAMES[i]) == 0) return i;
    return 5;
}

static void add_run(totals *t, const fr_ledger_entry *e) {
    t->runs++;
    t->wall_s += e->wall_s;
    t->steps += (double)e->steps;
    t->tokens += e->tokens;
    t->flops += e->flops;
    t->device_hours += e->device_hours;
    t->energy_kwh += e->energy_kwh;
    t->cost_usd += e->cost_usd;
    t->by_status[status_index(e->status)]++;
}

static double ratio(double a, double b) { return b > 0 ? a / b : NAN; }

/* What `frugal cost --plan` shows of a plan (`frugal plan --json`). */
typedef struct {
    char model[128];
    double gpus, tokens, flops, wall_hours, gpu_hours, cost_usd, price, mfu;
} plan_summary;

static double plan_num(const cJSON *root, const char *a, const char *b) {
    const cJSON *o = cJSON_GetObjectItemCaseSensitive(root, a);
    const cJSON *v = o ? cJSON_GetObjectItemCaseSensitive(o, b) : NULL;
    return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

static int read_plan(const char *path, plan_summary *p) {
    FILE *f = fopen(path, "rb");
    if (!f) return cli_fail("--plan %s: cannot open: %s", path, strerror(errno));
    size_t cap = 1 << 16, len = 0;
    char *text = malloc(cap);
    size_t got;
    while (text && (got = fread(text + len, 1, cap - len, f)) > 0) {
        len += got;
        if (len == cap) {
            char *grown = cap < (64u << 20) ? realloc(text, cap * 2) : NULL;
            if (!grown) {
                free(text);
                text = NULL;
                break;
            }
            text = grown;
            cap *= 2;
        }
    }
    fclose(f);
    if (!text) return cli_fail("--plan %s: out of memory or larger than 64 MiB", path);
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    const cJSON *kind = root ? cJSON_GetObjectItemCaseSensitive(root, "kind") : NULL;
    if (!cJSON_IsString(kind) || strcmp(kind->valuestring, "frugal-plan") != 0) {
        cJSON_Delete(root);
        return cli_fail("--plan %s: not a plan written by `frugal plan --json`", path);
    }
    memset(p, 0, sizeof *p);
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    const cJSON *name = model ? cJSON_GetObjectItemCaseSensitive(model, "name") : NULL;
    snprintf(p->model, sizeof p->model, "%s", cJSON_IsString(name) ? name->valuestring : "?");
    p->gpus = plan_num(root, "run", "gpus");
    p->tokens = plan_num(root, "run", "tokens");
    p->flops = plan_num(root, "run", "flops");
    p->wall_hours = plan_num(root, "run", "wall_hours");
    p->gpu_hours = plan_num(root, "run", "gpu_hours");
    p->cost_usd = plan_num(root, "run", "cost_usd");
    p->mfu = plan_num(root, "run", "mfu");
    p->price = plan_num(root, "assumptions", "price_per_gpu_hour");
    cJSON_Delete(root);
    if (!isfinite(p->gpu_hours) || !isfinite(p->cost_usd))
        return cli_fail("--plan %s: the plan has no run.gpu_hours / run.cost_usd", path);
    return CLI_EXIT_OK;
}

/* Compare run dirs: equal strings, or the same directory on disk. */
static int same_dir(const char *a, const char *b) {
    if (!a[0] || !b[0]) return 0;
    if (strcmp(a, b) == 0) return 1;
    char ra[PATH_MAX], rb[PATH_MAX];
    if (realpath(a, ra) && realpath(b, rb)) return strcmp(ra, rb) == 0;
    return 0;
}

static void fmt_num(char *buf, size_t n, double x, const char *fmt) {
    if (!isfinite(x)) snprintf(buf, n, "-");
    else snprintf(buf, n, fmt, x);
}

static void fmt_money(char *buf, size_t n, double x) {
    if (!isfinite(x)) snprintf(buf, n, "-");
    else if (x >= 1e6) snprintf(buf, n, "$%.3fM", x / 1e6);
    else if (x >= 100) snprintf(buf, n, "$%.0f", x);
    else if (x >= 0.01 || x == 0) snprintf(buf, n, "$%.2f", x);
    else snprintf(buf, n, "$%.2g", x);
}

static void fmt_hours(char *buf, size_t n, double x) {
    if (!isfinite(x)) snprintf(buf, n, "-");
    else if (x >= 1000) snprintf(buf, n, "%.0f", x);
    else if (x >= 1) snprintf(buf, n, "%.2f", x);
    else snprintf(buf, n, "%.3g", x);
}

/* FLOP counts span 1e9 .. 1e25: "3.21e18" reads better than a suffix past T. */
static void fmt_flops(char *buf, size_t n, double x) {
    if (!isfinite(x)) snprintf(buf, n, "-");
    else if (x < 1e6) snprintf(buf, n, "%.0f", x);
    else {
        int e = (int)floor(log10(x));
        double m = x / pow(10.0, e);
        if (m >= 9.995) {
            m /= 10;
            e++;
        }
        snprintf(buf, n, "%.2fe%d", m, e);
    }
}

static void json_totals(FILE *f, const totals *t) {
    fprintf(f, "{\"runs\":%d,\"wall_s\":", t->runs);
    cli_json_number(f, t->wall_s);
    fputs(",\"steps\":", f);
    cli_json_number(f, t->steps);
    fputs(",\"tokens\":", f);
    cli_json_number(f, t->tokens);
    fputs(",\"flops\":", f);
    cli_json_number(f, t->flops);
    fputs(",\"device_hours\":", f);
    cli_json_number(f, t->device_hours);
    fputs(",\"energy_kwh\":", f);
    cli_json_number(f, t->energy_kwh);
    fputs(",\"cost_usd\":", f);
    cli_json_number(f, t->cost_usd);
    fputs(",\"status\":{", f);
    for (int i = 0; i < 6; i++) fprintf(f, "%s\"%s\":%d", i ? "," : "", STATUS_NAMES[i], t->by_status[i]);
    fputs("}}", f);
}

/* The plan beside the ledger's final run and lifecycle (fin NULL: no final run). */
static void print_plan(const char *path, const plan_summary *p, const totals *fin, const totals *life) {
    printf("\nplan %s: %s on %.0f GPUs (frugal plan; MFU %.1f%%, $%.2f per GPU-hour)\n", path, p->model, p->gpus,
           100 * p->mfu, p->price);
    printf("  %-16s %14s %14s %14s %12s\n", "", "plan", "final run", "lifecycle", "final/plan");
    struct {
        const char *name;
        double pv, fv, lv;
        int kind; /* 1 hours, 2 money, 4 count, 5 FLOPs */
    } rows[] = {
        {"tokens", p->tokens, fin ? fin->tokens : NAN, life ? life->tokens : NAN, 4},
        {"FLOPs", p->flops, fin ? fin->flops : NAN, life ? life->flops : NAN, 5},
        {"wall hours", p->wall_hours, fin ? fin->wall_s / 3600 : NAN, life ? life->wall_s / 3600 : NAN, 1},
        {"device-hours", p->gpu_hours, fin ? fin->device_hours : NAN, life ? life->device_hours : NAN, 1},
        {"compute cost $", p->cost_usd, fin ? fin->cost_usd : NAN, life ? life->cost_usd : NAN, 2},
    };
    for (size_t r = 0; r < sizeof rows / sizeof rows[0]; r++) {
        char a[32], b[32], c[32], q[32];
        double v[3] = {rows[r].pv, rows[r].fv, rows[r].lv};
        char *out[3] = {a, b, c};
        for (int k = 0; k < 3; k++) {
            if (rows[r].kind == 1) fmt_hours(out[k], 32, v[k]);
            else if (rows[r].kind == 2) fmt_money(out[k], 32, v[k]);
            else if (rows[r].kind == 5) fmt_flops(out[k], 32, v[k]);
            else if (isfinite(v[k])) cli_human_count(out[k], 32, v[k]);
            else snprintf(out[k], 32, "-");
        }
        double qv = ratio(rows[r].fv, rows[r].pv);
        if (isfinite(qv)) snprintf(q, sizeof q, "%.3gx", qv);
        else snprintf(q, sizeof q, "-");
        printf("  %-16s %14s %14s %14s %12s\n", rows[r].name, a, b, c, q);
    }
    printf("  (the plan's device-hours are GPU-hours; the ledger's are the devices its runs recorded)\n");
}

int cmd_cost(int argc, char **argv) {
    const char *ledger = "ledger.jsonl", *final_sel = NULL, *kind = "train", *project = NULL, *plan_path = NULL;
    int ledger_given = 0;
    double price_dh = NAN, watts = NAN, price_kwh = NAN;
    int gpu = 0, json = 0;
    const cli_opt opts[] = {
        {"--ledger", &ledger, &ledger_given}, {"--final", &final_sel, NULL}, {"--kind", &kind, NULL},
        {"--gpu", NULL, &gpu}, {"--json", NULL, &json}, {"--plan", &plan_path, NULL},
    };
    for (int i = 1; i < argc; i++) {
        const char *v = NULL;
        int r;
        if (cli_is_help(argv[i])) {
            usage_cost(stdout);
            return CLI_EXIT_OK;
        }
        /* the prices stay explicit: they are parsed as they come, so a bad one is reported first */
        if ((r = cli_opt_match("cost", usage_cost, argc, argv, &i, opts, CLI_N_OPTS(opts))) != 0) {
            if (r < 0) return CLI_EXIT_USAGE;
        } else if ((r = cli_opt_value("cost", usage_cost, argc, argv, &i, "--price-device-hour", &v)) != 0) {
            if (r < 0 || cli_parse_double("cost", usage_cost, "--price-device-hour", v, 0, INFINITY, &price_dh) != 0)
                return CLI_EXIT_USAGE;
        } else if ((r = cli_opt_value("cost", usage_cost, argc, argv, &i, "--watts", &v)) != 0) {
            if (r < 0 || cli_parse_double("cost", usage_cost, "--watts", v, 0, INFINITY, &watts) != 0)
                return CLI_EXIT_USAGE;
        } else if ((r = cli_opt_value("cost", usage_cost, argc, argv, &i, "--price-kwh", &v)) != 0) {
            if (r < 0 || cli_parse_double("cost", usage_cost, "--price-kwh", v, 0, INFINITY, &price_kwh) != 0)
                return CLI_EXIT_USAGE;
        } else if (argv[i][0] == '-') {
            return cli_usage_error("cost", usage_cost, "unknown option '%s'", argv[i]);
        } else if (!project) {
            project = argv[i];
        } else {
            return cli_usage_error("cost", usage_cost, "unexpected argument '%s'", argv[i]);
        }
    }
    static char project_ledger[4200];
    if (project) {
        if (ledger_given) return cli_usage_error("cost", usage_cost, "give PROJECT_DIR or --ledger, not both");
        if (cli_check_dir(project, "project folder") != CLI_EXIT_OK) return CLI_EXIT_FAIL;
        snprintf(project_ledger, sizeof project_ledger, "%s/ledger.jsonl", project);
        ledger = project_ledger;
    }

    plan_summary plan;
    if (plan_path && read_plan(plan_path, &plan) != CLI_EXIT_OK) return CLI_EXIT_FAIL;

    fr_ledger_entry *runs = NULL;
    int n = 0, skipped = 0;
    if (fr_ledger_read(ledger, &runs, &n, &skipped) != FR_OK) return cli_fail_lib("cannot read the ledger");

    /* Repricing: each price option recomputes the quantity it prices. */
    fr_prices def = fr_prices_default(gpu);
    int reprice_cost = gpu || !isnan(price_dh), reprice_energy = gpu || !isnan(watts);
    if (isnan(price_dh)) price_dh = def.usd_per_device_hour;
    if (isnan(watts)) watts = def.watts_per_device;
    if (isnan(price_kwh)) price_kwh = def.usd_per_kwh;
    for (int i = 0; i < n; i++) {
        if (reprice_cost) runs[i].cost_usd = runs[i].device_hours * price_dh;
        if (reprice_energy) runs[i].energy_kwh = runs[i].device_hours * watts / 1000.0;
    }

    /* The final run. */
    int chosen = -1;
    if (final_sel) {
        for (int i = 0; i < n && chosen < 0; i++)
            if (strcmp(runs[i].run_id, final_sel) == 0) chosen = i;
        if (chosen < 0) { /* a unique id prefix */
            int hits = 0;
            size_t len = strlen(final_sel);
            for (int i = 0; i < n; i++)
                if (strncmp(runs[i].run_id, final_sel, len) == 0) {
                    hits++;
                    chosen = i;
                }
            if (hits > 1) {
                free(runs);
                return cli_fail("--final %s matches %d run ids; give more of the id", final_sel, hits);
            }
            if (hits == 0) chosen = -1;
        }
        if (chosen < 0) /* a run dir: its latest run */
            for (int i = 0; i < n; i++)
                if (same_dir(runs[i].run_dir, final_sel) &&
                    (chosen < 0 || runs[i].start_unix >= runs[chosen].start_unix))
                    chosen = i;
        if (chosen < 0) {
            free(runs);
            return cli_fail("--final %s: no run in %s has this run id or run dir", final_sel, ledger);
        }
    } else {
        for (int i = 0; i < n; i++)
            if (strcmp(runs[i].kind, kind) == 0 && strcmp(runs[i].status, "finished") == 0 &&
                (chosen < 0 || runs[i].start_unix >= runs[chosen].start_unix))
                chosen = i;
    }
    char *in_final = calloc((size_t)(n > 0 ? n : 1), 1);
    if (!in_final) {
        free(runs);
        return cli_fail("out of memory");
    }
    totals fin = {0}, life = {0};
    if (chosen >= 0) in_final[chosen] = 1;
    for (int i = 0; i < n; i++) {
        add_run(&life, &runs[i]);
        if (in_final[i]) add_run(&fin, &runs[i]);
    }

    if (json) {
        printf("{\"ledger\":");
        cli_json_string(stdout, ledger);
        printf(",\"skipped_lines\":%d,\"repriced\":{\"cost\":%s,\"energy\":%s},\"prices\":{\"usd_per_device_hour\":",
               skipped, reprice_cost ? "true" : "false", reprice_energy ? "true" : "false");
        cli_json_number(stdout, reprice_cost ? price_dh : NAN);
        printf(",\"watts_per_device\":");
        cli_json_number(stdout, reprice_energy ? watts : NAN);
        printf(",\"usd_per_kwh\":");
        cli_json_number(stdout, price_kwh);
        printf("},\"runs\":[");
        for (int i = 0; i < n; i++) {
            const fr_ledger_entry *e = &runs[i];
            printf("%s{\"run_id\":", i ? "," : "");
            cli_json_string(stdout, e->run_id);
            printf(",\"kind\":");
            cli_json_string(stdout, e->kind);
            printf(",\"status\":");
            cli_json_string(stdout, e->status);
            printf(",\"run_dir\":");
            cli_json_string(stdout, e->run_dir);
            printf(",\"config\":");
            cli_json_string(stdout, e->config);
            printf(",\"device\":");
            cli_json_string(stdout, e->device);
            printf(",\"n_devices\":%d,\"start_unix\":", e->n_devices);
            cli_json_number(stdout, e->start_unix);
            printf(",\"wall_s\":");
            cli_json_number(stdout, e->wall_s);
            printf(",\"steps\":%ld,\"tokens\":", e->steps);
            cli_json_number(stdout, e->tokens);
            printf(",\"flops\":");
            cli_json_number(stdout, e->flops);
            printf(",\"device_hours\":");
            cli_json_number(stdout, e->device_hours);
            printf(",\"energy_kwh\":");
            cli_json_number(stdout, e->energy_kwh);
            printf(",\"cost_usd\":");
            cli_json_number(stdout, e->cost_usd);
            printf(",\"final_loss\":");
            cli_json_number(stdout, e->final_loss);
            printf(",\"val_loss\":");
            cli_json_number(stdout, e->val_loss);
            printf(",\"in_final\":%s}", in_final[i] ? "true" : "false");
        }
        printf("],\"final\":");
        if (chosen >= 0) {
            printf("{\"run_id\":");
            cli_json_string(stdout, runs[chosen].run_id);
            printf(",\"totals\":");
            json_totals(stdout, &fin);
            printf(",\"energy_cost_usd\":");
            cli_json_number(stdout, fin.energy_kwh * price_kwh);
            printf("}");
        } else {
            printf("null");
        }
        printf(",\"lifecycle\":{\"totals\":");
        json_totals(stdout, &life);
        printf(",\"energy_cost_usd\":");
        cli_json_number(stdout, life.energy_kwh * price_kwh);
        printf("},\"ratio\":{\"cost_usd\":");
        cli_json_number(stdout, chosen >= 0 ? ratio(life.cost_usd, fin.cost_usd) : NAN);
        printf(",\"device_hours\":");
        cli_json_number(stdout, chosen >= 0 ? ratio(life.device_hours, fin.device_hours) : NAN);
        printf(",\"energy_kwh\":");
        cli_json_number(stdout, chosen >= 0 ? ratio(life.energy_kwh, fin.energy_kwh) : NAN);
        printf("}");
        if (plan_path) {
            printf(",\"plan\":{\"file\":");
            cli_json_string(stdout, plan_path);
            printf(",\"model\":");
            cli_json_string(stdout, plan.model);
            const struct {
                const char *name;
                double v;
            } pf[] = {{"gpus", plan.gpus},           {"tokens", plan.tokens},         {"flops", plan.flops},
                      {"wall_hours", plan.wall_hours}, {"gpu_hours", plan.gpu_hours}, {"cost_usd", plan.cost_usd},
                      {"price_per_gpu_hour", plan.price}, {"mfu", plan.mfu}};
            for (size_t k = 0; k < sizeof pf / sizeof pf[0]; k++) {
                printf(",\"%s\":", pf[k].name);
                cli_json_number(stdout, pf[k].v);
            }
            printf(",\"final_over_plan\":{\"device_hours\":");
            cli_json_number(stdout, chosen >= 0 ? ratio(fin.device_hours, plan.gpu_hours) : NAN);
            printf(",\"cost_usd\":");
            cli_json_number(stdout, chosen >= 0 ? ratio(fin.cost_usd, plan.cost_usd) : NAN);
            printf("},\"lifecycle_over_plan\":{\"device_hours\":");
            cli_json_number(stdout, ratio(life.device_hours, plan.gpu_hours));
            printf(",\"cost_usd\":");
            cli_json_number(stdout, ratio(life.cost_usd, plan.cost_usd));
            printf("}}");
        }
        printf("}\n");
        free(in_final);
        free(runs);
        if (skipped) fprintf(stderr, "frugal cost: warning: skipped %d malformed line(s) in %s\n", skipped, ledger);
        return CLI_EXIT_OK;
    }

    if (skipped) fprintf(stderr, "frugal cost: warning: skipped %d malformed line(s) in %s\n", skipped, ledger);
    if (n == 0) {
        printf("ledger %s: no runs recorded\n", ledger);
        if (plan_path) print_plan(plan_path, &plan, NULL, NULL);
        free(in_final);
        free(runs);
        return CLI_EXIT_OK;
    }

    int idw = 6;
    for (int i = 0; i < n; i++)
        if ((int)strlen(runs[i].run_id) > idw) idw = (int)strlen(runs[i].run_id);
    printf("ledger %s: %d run%s%s\n\n", ledger, n, n == 1 ? "" : "s",
           reprice_cost || reprice_energy ? " (repriced)" : "");
    printf("  %-*s  %-10s  %-11s  %8s  %8s  %8s  %9s  %9s  %9s  %7s  %7s\n", idw, "run id", "kind", "status", "steps",
           "tokens", "FLOPs", "dev-hours", "energy", "cost", "loss", "val");
    for (int i = 0; i < n; i++) {
        const fr_ledger_entry *e = &runs[i];
        char tok[32], fl[32], dh[32], kwh[32], usd[32], loss[32], val[32];
        cli_human_count(tok, sizeof tok, e->tokens);
        fmt_flops(fl, sizeof fl, e->flops);
        fmt_hours(dh, sizeof dh, e->device_hours);
        fmt_num(kwh, sizeof kwh - 4, e->energy_kwh, e->energy_kwh >= 10 ? "%.1f" : "%.3g");
        strcat(kwh, " kWh");
        fmt_money(usd, sizeof usd, e->cost_usd);
        fmt_num(loss, sizeof loss, e->final_loss, "%.4f");
        fmt_num(val, sizeof val, e->val_loss, "%.4f");
        printf("%c %-*s  %-10s  %-11s  %8ld  %8s  %8s  %9s  %9s  %9s  %7s  %7s\n", in_final[i] ? '*' : ' ', idw,
               e->run_id, e->kind, e->status, e->steps, tok, fl, dh, kwh, usd, loss, val);
    }
    printf("  (* = the final run)\n\n");

    if (chosen >= 0) {
        printf("final run: %s (%s, %s)\n", runs[chosen].run_id, runs[chosen].kind,
               runs[chosen].run_dir[0] ? runs[chosen].run_dir : "no run dir");
    } else {
        printf("final run: none (no finished run of kind '%s'; choose one with --final)\n", kind);
    }
    printf("\n  %-16s %14s %14s %16s\n", "", "final run", "lifecycle", "lifecycle/final");
    struct {
        const char *name;
        double f, l;
        int kind; /* 0 count, 1 hours, 2 money, 3 kWh, 4 human count, 5 FLOPs */
    } rows[] = {
        {"runs", fin.runs, life.runs, 0},
        {"wall hours", fin.wall_s / 3600.0, life.wall_s / 3600.0, 1},
        {"tokens", fin.tokens, life.tokens, 4},
        {"FLOPs", fin.flops, life.flops, 5},
        {"device-hours", fin.device_hours, life.device_hours, 1},
        {"energy kWh", fin.energy_kwh, life.energy_kwh, 3},
        {"electricity $", fin.energy_kwh * price_kwh, life.energy_kwh * price_kwh, 2},
        {"compute cost $", fin.cost_usd, life.cost_usd, 2},
    };
    for (size_t r = 0; r < sizeof rows / sizeof rows[0]; r++) {
        char a[32], b[32], q[32];
        double fv = chosen >= 0 ? rows[r].f : NAN;
        switch (rows[r].kind) {
        case 0:
            fmt_num(a, sizeof a, fv, "%.0f");
            fmt_num(b, sizeof b, rows[r].l, "%.0f");
            break;
        case 1:
            fmt_hours(a, sizeof a, fv);
            fmt_hours(b, sizeof b, rows[r].l);
            break;
        case 2:
            fmt_money(a, sizeof a, fv);
            fmt_money(b, sizeof b, rows[r].l);
            break;
        case 3:
            fmt_num(a, sizeof a, fv, "%.4g");
            fmt_num(b, sizeof b, rows[r].l, "%.4g");
            break;
        case 5:
            fmt_flops(a, sizeof a, fv);
            fmt_flops(b, sizeof b, rows[r].l);
            break;
        default:
            if (isfinite(fv)) cli_human_count(a, sizeof a, fv);
            else snprintf(a, sizeof a, "-");
            cli_human_count(b, sizeof b, rows[r].l);
        }
        double q_v = ratio(rows[r].l, fv);
        if (isfinite(q_v)) snprintf(q, sizeof q, "%.2fx", q_v);
        else snprintf(q, sizeof q, "-");
        printf("  %-16s %14s %14s %16s\n", rows[r].name, a, b, q);
    }
    printf("\nruns: %d finished, %d interrupted, %d crashed", life.by_status[0], life.by_status[1],
           life.by_status[2]);
    if (life.by_status[3]) printf(", %d failed", life.by_status[3]);
    if (life.by_status[4]) printf(", %d running", life.by_status[4]);
    if (life.by_status[5]) printf(", %d other", life.by_status[5]);
    printf("\n");
    if (chosen >= 0 && fin.cost_usd > 0)
        printf("Quoting only the final run would leave out %.0f%% of what the project cost.\n",
               100.0 * (1.0 - fin.cost_usd / life.cost_usd));
    if (plan_path) print_plan(plan_path, &plan, chosen >= 0 ? &fin : NULL, &life);
    free(in_final);
    free(runs);
    return CLI_EXIT_OK;
}
