/* cmd_plot.c — `frugal plot`: training curves from RUN_DIR/metrics.jsonl as an SVG chart or
 * a Unicode (braille) chart in the terminal.
 *
 * metrics.jsonl holds one JSON object per line; "step" records carry loss (main + lambda x MTP
 * + balance), loss_main (the main head's cross-entropy, comparable to val_loss), lr,
 * tokens_per_s, maxvio[i] and expert_load[i][expert] for the i-th MoE block and moe_layers[i]
 * (its layer index; index >= num_hidden_layers is an MTP module); "eval" records carry
 * val_loss. Unknown record types and fields are ignored; lines that are not JSON objects are
 * skipped and counted. */
#define _GNU_SOURCE
#include "cli.h"

#include "frugal.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

void usage_plot(FILE *f) {
    fprintf(f,
            "usage: frugal plot RUN_DIR... [--out FILE.svg] [--terminal] [--metric METRIC]\n"
            "                   [--x step|tokens] [--log-x] [--log-y]\n"
            "\n"
            "Draws a metric from RUN_DIR/metrics.jsonl of each run (several runs share one chart,\n"
            "with a legend by run directory name). RUN_DIR may also be a metrics .jsonl file.\n"
            "\n"
            "Metrics:\n"
            "  loss        training loss per step (default): the main head's cross-entropy\n"
            "              (loss_main, comparable to validation loss; older runs: the total\n"
            "              loss, main + MTP + balance, labelled so), with the validation loss\n"
            "  val_loss    validation loss at each evaluation\n"
            "  lr          learning rate\n"
            "  throughput  training tokens per second\n"
            "  maxvio      MoE load imbalance (max load / mean load - 1), one line per MoE layer,\n"
            "              named by its layer index (\"MTP\": the MTP module; layer indices come\n"
            "              from the records' moe_layers or RUN_DIR's config.json)\n"
            "  load        per-expert load at the last logged step: a heat map per run\n"
            "              (rows: MoE layers, columns: experts; red above uniform, blue below)\n"
            "\n"
            "Options:\n"
            "  --out FILE.svg    write an SVG chart\n"
            "  --terminal        draw the chart on stdout with Unicode braille characters\n"
            "                    (at least one of --out and --terminal is needed)\n"
            "  --metric METRIC   one of the metrics above (default loss)\n"
            "  --x step|tokens   x axis: optimizer steps (default) or training tokens\n"
            "  --log-x           logarithmic x axis (points with x <= 0 are left out)\n"
            "  --log-y           logarithmic y axis (points with y <= 0 are left out)\n"
            "  -h, --help        show this help\n");
}

/* ------------------------------------------------------------------ data */

typedef enum { M_LOSS, M_VAL_LOSS, M_LR, M_THROUGHPUT, M_MAXVIO, M_LOAD } metric_id;

static const struct {
    const char *name, *record, *key, *title, *ylabel;
} METRICS[] = {
    {"loss", "step", "loss", "Training loss and validation loss", "loss (nats/token)"},
    {"val_loss", "eval", "val_loss", "Validation loss", "validation loss (nats/token)"},
    {"lr", "step", "lr", "Learning rate", "learning rate"},
    {"throughput", "step", "tokens_per_s", "Throughput", "tokens / s"},
    {"maxvio", "step", "maxvio", "MoE load imbalance (MaxVio)", "max load / mean load - 1"},
    {"load", "step", "expert_load", "Expert load", "MoE layer"},
};
#define N_METRICS ((int)(sizeof METRICS / sizeof METRICS[0]))

typedef struct {
    double x, y;
    long order;
} point;

typedef struct {
    point *p;
    int n, cap;
    int run, layer; /* layer >= 0 for maxvio: the layer index (MOE_BLOCK_KEY + i: i-th MoE block, index unknown) */
    char name[192];
} series;

typedef struct {
    series *s;
    int n, cap;
} series_list;

typedef struct {
    char name[160];
    long step;
    int layers, experts;
    double *load; /* layers x experts */
    char (*row_label)[24]; /* [layers]: "layer N", "MTP", "MoE block i" (block_label) */
} loadmap;

static int push_point(series *s, double x, double y, long order) {
    if (s->n == s->cap) {
        int cap = s->cap ? 2 * s->cap : 256;
        point *p = realloc(s->p, (size_t)cap * sizeof *p);
        if (!p) return -1;
        s->p = p;
        s->cap = cap;
    }
    s->p[s->n].x = x;
    s->p[s->n].y = y;
    s->p[s->n].order = order;
    s->n++;
    return 0;
}

static series *new_series(series_list *l, int run, int layer, const char *name) {
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 8;
        series *s = realloc(l->s, (size_t)cap * sizeof *s);
        if (!s) return NULL;
        l->s = s;
        l->cap = cap;
    }
    series *s = &l->s[l->n++];
    memset(s, 0, sizeof *s);
    s->run = run;
    s->layer = layer;
    snprintf(s->name, sizeof s->name, "%s", name);
    return s;
}

static void free_series(series_list *l) {
    for (int i = 0; i < l->n; i++) free(l->s[i].p);
    free(l->s);
    memset(l, 0, sizeof *l);
}

static int cmp_point(const void *a, const void *b) {
    const point *p = a, *q = b;
    if (p->x < q->x) return -1;
    if (p->x > q->x) return 1;
    return (p->order > q->order) - (p->order < q->order);
}

/* Legend name of a run: the directory's base name (for a .jsonl file: its directory's). */
static void run_name(const char *arg, int is_file, char *out, size_t n) {
    char buf[PATH_MAX];
    snprintf(buf, sizeof buf, "%s", arg);
    size_t len = strlen(buf);
    while (len > 1 && buf[len - 1] == '/') buf[--len] = 0;
    if (is_file) {
        char *slash = strrchr(buf, '/');
        if (slash && slash != buf) {
            *slash = 0;
        } else {
            char *dot = strrchr(buf, '.');
            if (dot && dot != buf) *dot = 0;
            snprintf(out, n, "%s", buf);
            return;
        }
    }
    const char *base = strrchr(buf, '/');
    base = base ? base + 1 : buf;
    if (!base[0] || strcmp(base, ".") == 0) {
        char cwd[PATH_MAX];
        if (getcwd(cwd, sizeof cwd)) {
            const char *b = strrchr(cwd, '/');
            snprintf(out, n, "%.150s", b && b[1] ? b + 1 : cwd);
            return;
        }
    }
    snprintf(out, n, "%s", base);
}

#define MOE_BLOCK_KEY 1000000

/* Layer index of the i-th MoE block of a record: its "moe_layers" entry, else the run's
 * config (cfg_moe), else MOE_BLOCK_KEY + i (unknown). */
static int block_key(const cJSON *moe_layers, int i, const int *cfg_moe, int n_cfg_moe) {
    const cJSON *li = cJSON_IsArray(moe_layers) ? cJSON_GetArrayItem(moe_layers, i) : NULL;
    if (cJSON_IsNumber(li) && li->valuedouble >= 0 && li->valuedouble < MOE_BLOCK_KEY) return (int)li->valuedouble;
    if (i < n_cfg_moe) return cfg_moe[i];
    return MOE_BLOCK_KEY + i;
}

/* Name of a MoE block for legends and heat-map rows: "layer N" for a main layer, "MTP" (or
 * "MTP k" when the model has several) for an MTP module, "MoE block i" when the index is
 * unknown. */
static void block_label(char *buf, size_t n, int key, const fr_config *cfg, int have_cfg) {
    if (key >= MOE_BLOCK_KEY) snprintf(buf, n, "MoE block %d", key - MOE_BLOCK_KEY);
    else if (have_cfg && key >= cfg->num_hidden_layers && cfg->num_nextn_predict_layers > 1)
        snprintf(buf, n, "MTP %d", key - cfg->num_hidden_layers + 1);
    else if (have_cfg && key >= cfg->num_hidden_layers) snprintf(buf, n, "MTP");
    else snprintf(buf, n, "layer %d", key);
}

/* The model config of a run, for the layer indices of its MoE blocks: RUN_DIR/config.json or
 * that of the checkpoint RUN_DIR/latest names. 0 when there is none. */
static int run_config(const char *arg, int is_file, fr_config *cfg) {
    char dir[PATH_MAX], path[PATH_MAX + 64];
    snprintf(dir, sizeof dir, "%s", arg);
    if (is_file) {
        char *slash = strrchr(dir, '/');
        if (slash) *slash = 0;
        else snprintf(dir, sizeof dir, ".");
    }
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (access(path, R_OK) == 0 && fr_config_load(cfg, path) == FR_OK) return 1;
    snprintf(path, sizeof path, "%s/latest", dir);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char name[256] = "";
    int ok = fgets(name, sizeof name, f) != NULL;
    fclose(f);
    name[strcspn(name, "\r\n")] = 0;
    if (!ok || !name[0] || strchr(name, '/')) return 0;
    snprintf(path, sizeof path, "%s/%s/config.json", dir, name);
    return access(path, R_OK) == 0 && fr_config_load(cfg, path) == FR_OK;
}

/* Read one run's metrics into series (or, for `load`, the last step's loads). Returns a CLI
 * exit code; prints its own errors. */
static int read_run(const char *arg, int run, metric_id m, int x_tokens, int log_x, int log_y, series_list *out,
                    loadmap *lm, char *name, size_t name_n) {
    struct stat st;
    char path[PATH_MAX];
    if (stat(arg, &st) != 0) return cli_fail("run %s: %s", arg, strerror(errno));
    int is_file = S_ISREG(st.st_mode);
    if (is_file) snprintf(path, sizeof path, "%s", arg);
    else snprintf(path, sizeof path, "%s/metrics.jsonl", arg);
    run_name(arg, is_file, name, name_n);
    FILE *f = fopen(path, "r");
    if (!f)
        return cli_fail("cannot open %s: %s%s", path, strerror(errno),
                        errno == ENOENT ? " (is this a run directory written by `frugal train`?)" : "");
    const char *want_type = METRICS[m].record, *key = METRICS[m].key;
    const char *xkey = x_tokens ? "tokens" : "step";
    char *line = NULL;
    size_t cap = 0;
    ssize_t got;
    long lineno = 0, bad = 0, order = 0;
    int first = out->n; /* series of this run start here */
    int rc = CLI_EXIT_OK;
    series *main_s = NULL, *total_s = NULL, *val_s = NULL;
    if (m == M_LOSS) {
        /* training loss of the main head (loss_main) when the records have it, else the total
         * ("loss": main + MTP + balance); beside the validation loss. All three made now (no
         * realloc moves them later); the unused ones stay empty and are dropped. */
        char sn[192];
        snprintf(sn, sizeof sn, "%.150s train loss (main head)", name);
        if (new_series(out, run, -1, sn)) {
            snprintf(sn, sizeof sn, "%.150s train loss (main + MTP)", name);
            if (new_series(out, run, -1, sn)) {
                snprintf(sn, sizeof sn, "%.150s val loss", name);
                if (new_series(out, run, -2, sn)) { /* layer -2: drawn dashed */
                    main_s = &out->s[out->n - 3];
                    total_s = &out->s[out->n - 2];
                    val_s = &out->s[out->n - 1];
                }
            }
        }
        if (!main_s) rc = cli_fail("out of memory");
    } else if (m != M_MAXVIO && m != M_LOAD) {
        main_s = new_series(out, run, -1, name);
        if (!main_s) rc = cli_fail("out of memory");
    }
    fr_config cfg;
    int have_cfg = (m == M_MAXVIO || m == M_LOAD) && run_config(arg, is_file, &cfg);
    int cfg_moe[256], n_cfg_moe = 0; /* layer index of each MoE block, from the config */
    if (have_cfg)
        for (int l = 0; l < cfg.num_hidden_layers + cfg.num_nextn_predict_layers && n_cfg_moe < 256; l++)
            if (fr_config_layer_is_moe(&cfg, l)) cfg_moe[n_cfg_moe++] = l;
    while (rc == CLI_EXIT_OK && (got = getline(&line, &cap, f)) >= 0) {
        lineno++;
        const char *q = line;
        while (*q == ' ' || *q == '\t' || *q == '\r' || *q == '\n') q++;
        if (!*q) continue;
        cJSON *o = cJSON_Parse(line);
        if (!cJSON_IsObject(o)) {
            bad++;
            cJSON_Delete(o);
            continue;
        }
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(o, "type");
        const int is_eval = m == M_LOSS && cJSON_IsString(type) && strcmp(type->valuestring, "eval") == 0;
        if (!cJSON_IsString(type) || (strcmp(type->valuestring, want_type) != 0 && !is_eval)) {
            cJSON_Delete(o);
            continue;
        }
        const cJSON *xi = cJSON_GetObjectItemCaseSensitive(o, xkey);
        const cJSON *yi = cJSON_GetObjectItemCaseSensitive(o, key);
        series *dest = main_s;
        if (m == M_LOSS) {
            const cJSON *lm_i = cJSON_GetObjectItemCaseSensitive(o, "loss_main");
            if (is_eval) {
                yi = cJSON_GetObjectItemCaseSensitive(o, "val_loss");
                dest = val_s;
            } else if (cJSON_IsNumber(lm_i)) {
                yi = lm_i;
            } else {
                dest = total_s;
            }
        }
        double x = cJSON_IsNumber(xi) ? xi->valuedouble : NAN;
        const cJSON *si = cJSON_GetObjectItemCaseSensitive(o, "step");
        if (m == M_LOAD) {
            if (cJSON_IsArray(yi) && cJSON_GetArraySize(yi) > 0) {
                int layers = cJSON_GetArraySize(yi), experts = 0;
                const cJSON *row;
                int ok = 1;
                cJSON_ArrayForEach(row, yi) {
                    if (!cJSON_IsArray(row)) ok = 0;
                    else if (cJSON_GetArraySize(row) > experts) experts = cJSON_GetArraySize(row);
                }
                if (ok && experts > 0) {
                    double *load = malloc((size_t)layers * (size_t)experts * sizeof *load);
                    char (*labels)[24] = malloc((size_t)layers * sizeof *labels);
                    if (!load || !labels) {
                        free(load);
                        free(labels);
                        rc = cli_fail("out of memory");
                    } else {
                        const cJSON *ml = cJSON_GetObjectItemCaseSensitive(o, "moe_layers");
                        for (int b = 0; b < layers; b++)
                            block_label(labels[b], sizeof labels[b], block_key(ml, b, cfg_moe, n_cfg_moe), &cfg, have_cfg);
                        int l = 0;
                        cJSON_ArrayForEach(row, yi) {
                            for (int e = 0; e < experts; e++) {
                                const cJSON *v = cJSON_GetArrayItem(row, e);
                                load[(size_t)l * experts + e] = cJSON_IsNumber(v) ? v->valuedouble : NAN;
                            }
                            l++;
                        }
                        free(lm->load);
                        free(lm->row_label);
                        lm->load = load;
                        lm->row_label = labels;
                        lm->layers = layers;
                        lm->experts = experts;
                        lm->step = cJSON_IsNumber(si) ? (long)si->valuedouble : -1;
                    }
                }
            }
        } else if (isfinite(x) && !(log_x && x <= 0)) {
            if (m == M_MAXVIO) {
                if (cJSON_IsArray(yi)) {
                    int l = 0;
                    const cJSON *v;
                    const cJSON *ml = cJSON_GetObjectItemCaseSensitive(o, "moe_layers");
                    cJSON_ArrayForEach(v, yi) {
                        if (cJSON_IsNumber(v) && isfinite(v->valuedouble) && !(log_y && v->valuedouble <= 0)) {
                            const int key = block_key(ml, l, cfg_moe, n_cfg_moe);
                            series *s = NULL;
                            for (int k = first; k < out->n; k++)
                                if (out->s[k].layer == key) s = &out->s[k];
                            if (!s) {
                                char label[24], sn[192];
                                block_label(label, sizeof label, key, &cfg, have_cfg);
                                snprintf(sn, sizeof sn, "%.150s %s", name, label);
                                s = new_series(out, run, key, sn);
                            }
                            if (!s || push_point(s, x, v->valuedouble, order++) != 0) {
                                rc = cli_fail("out of memory");
                                break;
                            }
                        }
                        l++;
                    }
                }
            } else if (cJSON_IsNumber(yi) && isfinite(yi->valuedouble) && !(log_y && yi->valuedouble <= 0)) {
                if (push_point(dest, x, yi->valuedouble, order++) != 0) rc = cli_fail("out of memory");
            }
        }
        cJSON_Delete(o);
    }
    if (rc == CLI_EXIT_OK && ferror(f)) rc = cli_fail("error reading %s: %s", path, strerror(errno));
    free(line);
    fclose(f);
    if (rc != CLI_EXIT_OK) return rc;
    if (bad) fprintf(stderr, "frugal plot: warning: %s: skipped %ld malformed line(s)\n", path, bad);
    if (m == M_LOAD) {
        if (!lm->load)
            return cli_fail("%s: no expert_load values in any step record (is the model a MoE model?)", path);
        snprintf(lm->name, sizeof lm->name, "%s", name);
        return CLI_EXIT_OK;
    }
    /* a run that logs loss_main is drawn with it alone (records of an older trainer in a
     * resumed run lack it; mixing the two curves would draw a jump that is not there) */
    if (main_s && total_s && main_s->n > 0) total_s->n = 0;
    int npts = 0;
    for (int k = first; k < out->n; k++) npts += out->s[k].n;
    if (npts == 0)
        return cli_fail("%s: no numeric '%s' values in \"%s\" records%s", path, key, want_type,
                        (log_x || log_y) ? " (with a log axis, values <= 0 are left out)" : "");
    /* drop empty series (e.g. a layer that never logged), sort each by x (stable), and keep
     * the last record of each x: a run resumed from a checkpoint logs the steps after the
     * checkpoint again, and the later values are the ones the run continued from */
    int w = first;
    for (int k = first; k < out->n; k++) {
        if (out->s[k].n == 0) {
            free(out->s[k].p);
            continue;
        }
        series *s = &out->s[k];
        qsort(s->p, (size_t)s->n, sizeof(point), cmp_point);
        int u = 0;
        for (int i = 0; i < s->n; i++) {
            if (i + 1 < s->n && s->p[i + 1].x == s->p[i].x) continue;
            s->p[u++] = s->p[i];
        }
        s->n = u;
        out->s[w++] = out->s[k];
    }
    out->n = w;
    return CLI_EXIT_OK;
}

/* ------------------------------------------------------------------ axes */

typedef struct {
    double lo, hi; /* data-space range (log10 of it when log) */
    int log;
    double ticks[32];
    int n_ticks;
} axis;

static double nice_step(double range, int target) {
    double raw = range / target;
    double mag = pow(10.0, floor(log10(raw)));
    double f = raw / mag;
    double nf = f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10;
    return nf * mag;
}

/* Set up an axis over [mn, mx] (data values; > 0 when log). pad: fraction added each side. */
static void axis_init(axis *a, double mn, double mx, int log_scale, double pad, int target) {
    a->log = log_scale;
    a->n_ticks = 0;
    if (log_scale) {
        double lo = log10(mn), hi = log10(mx);
        if (hi - lo < 1e-9) {
            lo -= 0.5;
            hi += 0.5;
        }
        double span = hi - lo;
        lo -= pad * span;
        hi += pad * span;
        a->lo = lo;
        a->hi = hi;
        /* decades; add 2x and 5x when the range is short */
        static const double mult[] = {1, 2, 5};
        int nm = (hi - lo) < 2.5 ? 3 : 1;
        for (int d = (int)floor(lo); d <= (int)ceil(hi) && a->n_ticks < 32; d++)
            for (int k = 0; k < nm && a->n_ticks < 32; k++) {
                double t = log10(mult[k]) + d;
                if (t >= lo - 1e-9 && t <= hi + 1e-9) a->ticks[a->n_ticks++] = t;
            }
        if (a->n_ticks < 2) { /* less than a factor of 2: linear ticks on the log scale */
            a->n_ticks = 0;
            double lmn = pow(10, lo), lmx = pow(10, hi);
            double st = nice_step(lmx - lmn, 4);
            for (double v = ceil(lmn / st) * st; v <= lmx && a->n_ticks < 32; v += st)
                if (v > 0) a->ticks[a->n_ticks++] = log10(v);
        }
        return;
    }
    if (mx - mn < 1e-12 * fmax(1.0, fabs(mx))) {
        double d = mn != 0 ? fabs(mn) * 0.1 : 1.0;
        mn -= d;
        mx += d;
    }
    double span = mx - mn;
    mn -= pad * span;
    mx += pad * span;
    a->lo = mn;
    a->hi = mx;
    double st = nice_step(mx - mn, target);
    for (double v = ceil(mn / st) * st; v <= mx + 1e-9 * st && a->n_ticks < 32; v += st)
        a->ticks[a->n_ticks++] = fabs(v) < 1e-9 * st ? 0.0 : round(v / st) * st;
}

static double axis_frac(const axis *a, double v) {
    double t = a->log ? log10(v) : v;
    return (t - a->lo) / (a->hi - a->lo);
}

/* Tick label: t is the tick position in axis space. */
static void tick_label(const axis *a, double t, char *buf, size_t n) {
    double v = a->log ? pow(10.0, t) : t;
    double av = fabs(v);
    if (v == 0) snprintf(buf, n, "0");
    else if (av >= 1e9) snprintf(buf, n, "%gB", round(v / 1e7) / 100);
    else if (av >= 1e6) snprintf(buf, n, "%gM", round(v / 1e4) / 100);
    else if (av >= 1e4) snprintf(buf, n, "%gK", round(v / 10) / 100);
    else if (av < 1e-3) snprintf(buf, n, "%.2g", v);
    else if (av >= 100) snprintf(buf, n, "%.0f", v);
    else snprintf(buf, n, "%.4g", v);
}

/* ------------------------------------------------------------------ SVG */

static const char *PALETTE[] = {"#2563eb", "#dc2626", "#059669", "#9333ea", "#ea580c",
                                "#0891b2", "#db2777", "#65a30d", "#475569", "#ca8a04"};
#define N_PALETTE ((int)(sizeof PALETTE / sizeof PALETTE[0]))
static const char *DASHES[] = {"", "7 4", "2 3", "10 3 2 3"};
#define FONT "system-ui, -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif"

static void xml_text(FILE *f, const char *s) {
    for (; *s; s++) {
        switch (*s) {
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '&': fputs("&amp;", f); break;
        case '"': fputs("&quot;", f); break;
        case '\'': fputs("&apos;", f); break;
        default:
            if ((unsigned char)*s >= 0x20 || *s == '\t') fputc(*s, f);
        }
    }
}

static void series_style(const series_list *l, int k, metric_id m, const char **color, const char **dash) {
    const series *s = &l->s[k];
    if (m == M_MAXVIO) { /* color by layer, dash by run */
        *color = PALETTE[(s->layer < 0 ? 0 : s->layer) % N_PALETTE];
        *dash = DASHES[s->run % 4];
    } else {
        *color = PALETTE[s->run % N_PALETTE];
        *dash = DASHES[(s->run / N_PALETTE) % 4];
        if (s->layer == -2) *dash = DASHES[(s->run / N_PALETTE) % 4 == 1 ? 2 : 1]; /* validation: dashed */
    }
}

static void svg_header(FILE *f, int w, int h) {
    fprintf(f,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" "
            "font-family=\"%s\">\n"
            "<rect x=\"0\" y=\"0\" width=\"%d\" height=\"%d\" fill=\"#ffffff\"/>\n",
            w, h, w, h, FONT, w, h);
}

static void svg_lines(FILE *f, const series_list *l, metric_id m, int x_tokens, int log_x, int log_y) {
    double xmn = INFINITY, xmx = -INFINITY, ymn = INFINITY, ymx = -INFINITY;
    for (int k = 0; k < l->n; k++)
        for (int i = 0; i < l->s[k].n; i++) {
            point p = l->s[k].p[i];
            xmn = fmin(xmn, p.x);
            xmx = fmax(xmx, p.x);
            ymn = fmin(ymn, p.y);
            ymx = fmax(ymx, p.y);
        }
    const int W = 960, H = 560, L = 84, R = 28, T = 64, B = 64;
    const double pw = W - L - R, ph = H - T - B;
    axis ax, ay;
    axis_init(&ax, xmn, xmx, log_x, 0.01, 8);
    axis_init(&ay, ymn, ymx, log_y, 0.05, 6);
    svg_header(f, W, H);
    fprintf(f, "<text x=\"%d\" y=\"34\" font-size=\"20\" font-weight=\"600\" fill=\"#111827\">", L);
    xml_text(f, METRICS[m].title);
    fputs("</text>\n", f);
    fprintf(f, "<text x=\"%d\" y=\"52\" font-size=\"12\" fill=\"#6b7280\">", L);
    int nruns = 0;
    for (int k = 0; k < l->n; k++) nruns = l->s[k].run + 1 > nruns ? l->s[k].run + 1 : nruns;
    fprintf(f, "%d run%s, %d series%s%s</text>\n", nruns, nruns == 1 ? "" : "s", l->n,
            log_x ? ", log x" : "", log_y ? ", log y" : "");
    /* plot area, grid and ticks */
    fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%.0f\" height=\"%.0f\" fill=\"#fafafa\" stroke=\"none\"/>\n", L, T,
            pw, ph);
    fputs("<g stroke=\"#e5e7eb\" stroke-width=\"1\">\n", f);
    for (int i = 0; i < ax.n_ticks; i++) {
        double x = L + pw * (ax.ticks[i] - ax.lo) / (ax.hi - ax.lo);
        fprintf(f, "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%.0f\"/>\n", x, T, x, T + ph);
    }
    for (int i = 0; i < ay.n_ticks; i++) {
        double y = T + ph * (1 - (ay.ticks[i] - ay.lo) / (ay.hi - ay.lo));
        fprintf(f, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%.0f\" y2=\"%.1f\"/>\n", L, y, L + pw, y);
    }
    fputs("</g>\n", f);
    fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%.0f\" height=\"%.0f\" fill=\"none\" stroke=\"#9ca3af\"/>\n", L, T,
            pw, ph);
    fputs("<g font-size=\"12\" fill=\"#374151\">\n", f);
    char buf[64];
    for (int i = 0; i < ax.n_ticks; i++) {
        double x = L + pw * (ax.ticks[i] - ax.lo) / (ax.hi - ax.lo);
        tick_label(&ax, ax.ticks[i], buf, sizeof buf);
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.0f\" x2=\"%.1f\" y2=\"%.0f\" stroke=\"#9ca3af\"/>", x, T + ph, x,
                T + ph + 5);
        fprintf(f, "<text x=\"%.1f\" y=\"%.0f\" text-anchor=\"middle\">%s</text>\n", x, T + ph + 20, buf);
    }
    for (int i = 0; i < ay.n_ticks; i++) {
        double y = T + ph * (1 - (ay.ticks[i] - ay.lo) / (ay.hi - ay.lo));
        tick_label(&ay, ay.ticks[i], buf, sizeof buf);
        fprintf(f, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#9ca3af\"/>", L - 5, y, L, y);
        fprintf(f, "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%s</text>\n", L - 8, y + 4, buf);
    }
    fputs("</g>\n", f);
    fprintf(f, "<text x=\"%.0f\" y=\"%d\" font-size=\"13\" fill=\"#111827\" text-anchor=\"middle\">%s%s</text>\n",
            L + pw / 2, H - 18, x_tokens ? "training tokens" : "step", log_x ? " (log scale)" : "");
    fprintf(f,
            "<text x=\"20\" y=\"%.0f\" font-size=\"13\" fill=\"#111827\" text-anchor=\"middle\" "
            "transform=\"rotate(-90 20 %.0f)\">",
            T + ph / 2, T + ph / 2);
    xml_text(f, METRICS[m].ylabel);
    fprintf(f, "%s</text>\n", log_y ? " (log scale)" : "");
    /* the curves, clipped to the plot area */
    fprintf(f,
            "<defs><clipPath id=\"plot-area\"><rect x=\"%d\" y=\"%d\" width=\"%.0f\" height=\"%.0f\"/></clipPath>"
            "</defs>\n",
            L, T, pw, ph);
    fputs("<g clip-path=\"url(#plot-area)\" fill=\"none\" stroke-width=\"1.8\" stroke-linejoin=\"round\" "
          "stroke-linecap=\"round\">\n",
          f);
    for (int k = 0; k < l->n; k++) {
        const series *s = &l->s[k];
        const char *color, *dash;
        series_style(l, k, m, &color, &dash);
        fprintf(f, "<polyline class=\"series\" data-name=\"");
        xml_text(f, s->name);
        fprintf(f, "\" data-points=\"%d\" stroke=\"%s\"%s%s%s points=\"", s->n, color, dash[0] ? " stroke-dasharray=\"" : "",
                dash, dash[0] ? "\"" : "");
        for (int i = 0; i < s->n; i++) {
            double x = L + pw * axis_frac(&ax, s->p[i].x), y = T + ph * (1 - axis_frac(&ay, s->p[i].y));
            fprintf(f, "%s%.2f,%.2f", i ? " " : "", x, y);
        }
        fputs("\"/>\n", f);
        if (s->n <= 60) { /* sparse series (evals): mark the points */
            fprintf(f, "<g fill=\"%s\" stroke=\"#ffffff\" stroke-width=\"1\">", color);
            for (int i = 0; i < s->n; i++) {
                double x = L + pw * axis_frac(&ax, s->p[i].x), y = T + ph * (1 - axis_frac(&ay, s->p[i].y));
                fprintf(f, "<circle cx=\"%.2f\" cy=\"%.2f\" r=\"3\"/>", x, y);
            }
            fputs("</g>\n", f);
        }
    }
    fputs("</g>\n", f);
    /* legend, top right inside the plot area */
    size_t maxlen = 0;
    for (int k = 0; k < l->n; k++)
        if (strlen(l->s[k].name) > maxlen) maxlen = strlen(l->s[k].name);
    int shown = l->n > 24 ? 24 : l->n;
    double lw = 44 + 7.0 * (double)maxlen, lh = 10 + 18.0 * shown + (l->n > shown ? 18 : 0);
    double lx = L + pw - lw - 10, ly = T + 10;
    fprintf(f,
            "<g font-size=\"12\" fill=\"#111827\">\n<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" "
            "rx=\"4\" fill=\"#ffffff\" fill-opacity=\"0.88\" stroke=\"#d1d5db\"/>\n",
            lx, ly, lw, lh);
    for (int k = 0; k < shown; k++) {
        const char *color, *dash;
        series_style(l, k, m, &color, &dash);
        double y = ly + 18 + 18.0 * k;
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" stroke-width=\"2.5\"%s%s%s/>",
                lx + 8, y - 4, lx + 32, y - 4, color, dash[0] ? " stroke-dasharray=\"" : "", dash, dash[0] ? "\"" : "");
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\">", lx + 38, y);
        xml_text(f, l->s[k].name);
        fputs("</text>\n", f);
    }
    if (l->n > shown) fprintf(f, "<text x=\"%.1f\" y=\"%.1f\">... and %d more</text>\n", lx + 38, ly + 18 + 18.0 * shown, l->n - shown);
    fputs("</g>\n</svg>\n", f);
}

/* Diverging color for load relative to uniform: blue (below) - white - red (above). */
static void load_color(double ratio_to_uniform, char *buf, size_t n) {
    if (!isfinite(ratio_to_uniform) || ratio_to_uniform < 0) {
        snprintf(buf, n, "#d1d5db");
        return;
    }
    double t = ratio_to_uniform > 0 ? log2(ratio_to_uniform) / 2.0 : -1.0; /* 4x over/under saturates */
    if (t > 1) t = 1;
    if (t < -1) t = -1;
    double r, g, b;
    if (t >= 0) { /* white -> #dc2626 */
        r = 255 + t * (220 - 255);
        g = 255 + t * (38 - 255);
        b = 255 + t * (38 - 255);
    } else { /* white -> #2563eb */
        double u = -t;
        r = 255 + u * (37 - 255);
        g = 255 + u * (99 - 255);
        b = 255 + u * (235 - 255);
    }
    snprintf(buf, n, "#%02x%02x%02x", (int)lround(r), (int)lround(g), (int)lround(b));
}

static void svg_load(FILE *f, const loadmap *maps, int n_maps) {
    const int W = 960, L = 96, R = 110, T = 64, panel_gap = 56;
    const double pw = W - L - R;
    double heights[64];
    int H = T + 20;
    for (int r = 0; r < n_maps; r++) {
        double cell = fmin(28.0, fmax(10.0, 360.0 / maps[r].layers));
        heights[r < 64 ? r : 63] = cell * maps[r].layers;
        H += (int)(cell * maps[r].layers) + panel_gap;
    }
    svg_header(f, W, H);
    fprintf(f, "<text x=\"%d\" y=\"34\" font-size=\"20\" font-weight=\"600\" fill=\"#111827\">Expert load</text>\n",
            L);
    fprintf(f,
            "<text x=\"%d\" y=\"52\" font-size=\"12\" fill=\"#6b7280\">fraction of routed tokens per expert at the "
            "last logged step, relative to uniform (1 / experts)</text>\n",
            L);
    double y0 = T + 16;
    for (int r = 0; r < n_maps; r++) {
        const loadmap *mp = &maps[r];
        double ph = heights[r < 64 ? r : 63], cw = pw / mp->experts, ch = ph / mp->layers;
        fprintf(f, "<text x=\"%d\" y=\"%.1f\" font-size=\"14\" font-weight=\"600\" fill=\"#111827\">", L, y0 - 6);
        xml_text(f, mp->name);
        if (mp->step >= 0) fprintf(f, " \xc2\xb7 step %ld", mp->step);
        fputs("</text>\n", f);
        fprintf(f, "<g class=\"heatmap\" data-layers=\"%d\" data-experts=\"%d\" stroke=\"#ffffff\" stroke-width=\"%.1f\">\n",
                mp->layers, mp->experts, cw > 6 ? 1.0 : 0.0);
        double uniform = 1.0 / mp->experts;
        for (int l = 0; l < mp->layers; l++)
            for (int e = 0; e < mp->experts; e++) {
                double v = mp->load[(size_t)l * mp->experts + e];
                char col[16];
                load_color(v / uniform, col, sizeof col);
                fprintf(f,
                        "<rect class=\"cell\" x=\"%.2f\" y=\"%.2f\" width=\"%.2f\" height=\"%.2f\" fill=\"%s\">"
                        "<title>%s, expert %d: %.4g (%.2fx uniform)</title></rect>\n",
                        L + cw * e, y0 + ch * l, cw, ch, col, mp->row_label[l], e, v, v / uniform);
            }
        fputs("</g>\n", f);
        fprintf(f, "<rect x=\"%d\" y=\"%.1f\" width=\"%.0f\" height=\"%.1f\" fill=\"none\" stroke=\"#9ca3af\"/>\n", L,
                y0, pw, ph);
        /* axes: layer labels on the left, expert ticks below */
        fputs("<g font-size=\"11\" fill=\"#374151\">\n", f);
        int lstep = mp->layers <= 16 ? 1 : (mp->layers + 15) / 16;
        for (int l = 0; l < mp->layers; l += lstep)
            fprintf(f, "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%s</text>\n", L - 6, y0 + ch * (l + 0.5) + 4,
                    mp->row_label[l]);
        int estep = mp->experts <= 16 ? 1 : mp->experts <= 64 ? 8 : mp->experts <= 128 ? 16 : 32;
        for (int e = 0; e < mp->experts; e += estep)
            fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%d</text>\n", L + cw * (e + 0.5),
                    y0 + ph + 15, e);
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" fill=\"#111827\">expert</text>\n", L + pw / 2,
                y0 + ph + 30);
        fputs("</g>\n", f);
        y0 += ph + panel_gap;
    }
    /* color scale */
    double sx = W - R + 30, sy = T + 16, sh = 200;
    fputs("<g font-size=\"11\" fill=\"#374151\">\n", f);
    for (int i = 0; i < 40; i++) {
        double t = 1.0 - 2.0 * i / 39.0; /* +1 top .. -1 bottom */
        char col[16];
        load_color(pow(2.0, 2.0 * t), col, sizeof col);
        fprintf(f, "<rect x=\"%.1f\" y=\"%.2f\" width=\"16\" height=\"%.2f\" fill=\"%s\"/>", sx, sy + sh * i / 40.0,
                sh / 40.0 + 0.3, col);
    }
    fprintf(f, "\n<rect x=\"%.1f\" y=\"%.1f\" width=\"16\" height=\"%.1f\" fill=\"none\" stroke=\"#9ca3af\"/>\n", sx, sy,
            sh);
    static const char *lab[] = {"\xe2\x89\xa5" "4x", "2x", "1x", "0.5x", "\xe2\x89\xa4" "0.25x"};
    for (int i = 0; i < 5; i++)
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\">%s</text>\n", sx + 22, sy + sh * i / 4.0 + 4, lab[i]);
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\">of uniform</text>\n</g>\n", sx - 4, sy + sh + 20);
    fputs("</svg>\n", f);
}

/* ------------------------------------------------------------------ terminal */

enum { TW = 64, TH = 16 }; /* chart cells; braille gives 2x4 dots per cell */

static void term_lines(const series_list *l, metric_id m, int x_tokens, int log_x, int log_y) {
    double xmn = INFINITY, xmx = -INFINITY, ymn = INFINITY, ymx = -INFINITY;
    for (int k = 0; k < l->n; k++)
        for (int i = 0; i < l->s[k].n; i++) {
            xmn = fmin(xmn, l->s[k].p[i].x);
            xmx = fmax(xmx, l->s[k].p[i].x);
            ymn = fmin(ymn, l->s[k].p[i].y);
            ymx = fmax(ymx, l->s[k].p[i].y);
        }
    axis ax, ay;
    axis_init(&ax, xmn, xmx, log_x, 0.0, 4);
    axis_init(&ay, ymn, ymx, log_y, 0.02, 4);
    static unsigned char dots[TH][TW];
    static int owner[TH][TW];
    memset(dots, 0, sizeof dots);
    for (int r = 0; r < TH; r++)
        for (int c = 0; c < TW; c++) owner[r][c] = -1;
    const int DW = TW * 2, DH = TH * 4;
    static const unsigned char bit[4][2] = {{0x01, 0x08}, {0x02, 0x10}, {0x04, 0x20}, {0x40, 0x80}};
    for (int k = 0; k < l->n; k++) {
        int px = -1, py = -1;
        for (int i = 0; i < l->s[k].n; i++) {
            int x = (int)lround(axis_frac(&ax, l->s[k].p[i].x) * (DW - 1));
            int y = (int)lround((1 - axis_frac(&ay, l->s[k].p[i].y)) * (DH - 1));
            if (x < 0) x = 0;
            if (x >= DW) x = DW - 1;
            if (y < 0) y = 0;
            if (y >= DH) y = DH - 1;
            int x0 = px < 0 ? x : px, y0 = py < 0 ? y : py;
            /* Bresenham from the previous point */
            int dx = abs(x - x0), sx = x0 < x ? 1 : -1, dy = -abs(y - y0), sy = y0 < y ? 1 : -1, err = dx + dy;
            for (;;) {
                dots[y0 / 4][x0 / 2] |= bit[y0 % 4][x0 % 2];
                owner[y0 / 4][x0 / 2] = k;
                if (x0 == x && y0 == y) break;
                int e2 = 2 * err;
                if (e2 >= dy) {
                    err += dy;
                    x0 += sx;
                }
                if (e2 <= dx) {
                    err += dx;
                    y0 += sy;
                }
            }
            px = x;
            py = y;
        }
    }
    int color = isatty(STDOUT_FILENO) && !getenv("NO_COLOR");
    static const int ANSI[] = {34, 31, 32, 35, 33, 36};
    printf("%s%s\n", METRICS[m].title, log_y ? " (log y)" : "");
    char lab[TH][16];
    for (int r = 0; r < TH; r++) lab[r][0] = 0;
    for (int r = 0; r < TH; r += (TH - 1) / 3) { /* 4 labels down the side */
        double t = ay.hi - (ay.hi - ay.lo) * (r * 4 + 1.5) / (DH - 1);
        tick_label(&ay, t, lab[r], sizeof lab[r]);
    }
    tick_label(&ay, ay.lo, lab[TH - 1], sizeof lab[TH - 1]);
    for (int r = 0; r < TH; r++) {
        printf("%9s \xe2\x94\xa4", lab[r]);
        int cur = -1;
        for (int c = 0; c < TW; c++) {
            int o = dots[r][c] ? owner[r][c] : -1;
            if (color && o != cur) {
                if (o >= 0) printf("\x1b[%dm", ANSI[l->s[o].run % 6]);
                else printf("\x1b[0m");
                cur = o;
            }
            unsigned cp = 0x2800u + dots[r][c];
            if (!dots[r][c]) putchar(' ');
            else printf("%c%c%c", 0xE0 | (cp >> 12), 0x80 | ((cp >> 6) & 0x3F), 0x80 | (cp & 0x3F));
        }
        if (color && cur >= 0) printf("\x1b[0m");
        putchar('\n');
    }
    printf("%9s \xe2\x94\x94", "");
    for (int c = 0; c < TW; c++) fputs("\xe2\x94\x80", stdout);
    putchar('\n');
    char a[32], b[32], c2[32];
    tick_label(&ax, ax.lo, a, sizeof a);
    tick_label(&ax, (ax.lo + ax.hi) / 2, c2, sizeof c2);
    tick_label(&ax, ax.hi, b, sizeof b);
    int half = TW / 2;
    printf("%10s %-*s%-*s%s\n", "", half - (int)strlen(c2) / 2, a, TW - half - (int)strlen(b) + (int)strlen(c2) / 2, c2,
           b);
    printf("%10s %s%s\n", "", x_tokens ? "training tokens" : "step", log_x ? " (log)" : "");
    for (int k = 0; k < l->n; k++) {
        const series *s = &l->s[k];
        double last = s->p[s->n - 1].y, lo = s->p[0].y;
        for (int i = 0; i < s->n; i++) lo = fmin(lo, s->p[i].y);
        if (color) printf("  \x1b[%dm\xe2\xa3\xbf\x1b[0m %s", ANSI[s->run % 6], s->name);
        else printf("  \xe2\xa3\xbf %s", s->name);
        printf(": %d points, last %.4g, min %.4g\n", s->n, last, lo);
    }
}

static void term_load(const loadmap *maps, int n_maps) {
    static const char *shade[] = {" ", "\xe2\x96\x91", "\xe2\x96\x92", "\xe2\x96\x93", "\xe2\x96\x88"};
    for (int r = 0; r < n_maps; r++) {
        const loadmap *mp = &maps[r];
        printf("Expert load: %s, step %ld (shade: load relative to uniform 1/%d; \xe2\x96\x88 >= 2x)\n", mp->name,
               mp->step, mp->experts);
        int cols = mp->experts > 96 ? 96 : mp->experts;
        for (int l = 0; l < mp->layers; l++) {
            printf("  %11s \xe2\x94\x82", mp->row_label[l]);
            double mx = 0;
            for (int c = 0; c < cols; c++) {
                double v = mp->load[(size_t)l * mp->experts + c] * mp->experts;
                if (isfinite(v) && v > mx) mx = v;
                int idx = !isfinite(v) ? 0 : v >= 2 ? 4 : v >= 1.25 ? 3 : v >= 0.75 ? 2 : v >= 0.25 ? 1 : 0;
                fputs(shade[idx], stdout);
            }
            printf("\xe2\x94\x82 max %.2fx%s\n", mx, mp->experts > cols ? " (first 96 experts)" : "");
        }
    }
}

/* ------------------------------------------------------------------ command */

static int has_ext(const char *path, const char *ext) {
    size_t n = strlen(path), e = strlen(ext);
    return n > e && strcasecmp(path + n - e, ext) == 0;
}

int cmd_plot(int argc, char **argv) {
    const char *out = NULL, *metric = "loss", *xname = "step";
    int terminal = 0, log_x = 0, log_y = 0;
    const char **runs = calloc((size_t)argc, sizeof *runs);
    int n_runs = 0;
    if (!runs) return cli_fail("out of memory");
    int rc = CLI_EXIT_OK;
    const cli_opt opts[] = {
        {"--out", &out, NULL}, {"--metric", &metric, NULL}, {"--x", &xname, NULL},
        {"--terminal", NULL, &terminal}, {"--log-x", NULL, &log_x}, {"--log-y", NULL, &log_y},
    };
    for (int i = 1; i < argc && rc == CLI_EXIT_OK; i++) {
        int r;
        if (cli_is_help(argv[i])) {
            usage_plot(stdout);
            free(runs);
            return CLI_EXIT_OK;
        }
        if ((r = cli_opt_match("plot", usage_plot, argc, argv, &i, opts, CLI_N_OPTS(opts))) != 0) {
            if (r < 0) rc = CLI_EXIT_USAGE;
        } else if (argv[i][0] == '-' && argv[i][1] != 0) {
            rc = cli_usage_error("plot", usage_plot, "unknown option '%s'", argv[i]);
        } else {
            runs[n_runs++] = argv[i];
        }
    }
    int m = -1;
    if (rc == CLI_EXIT_OK) {
        for (int k = 0; k < N_METRICS; k++)
            if (strcmp(METRICS[k].name, metric) == 0) m = k;
        if (m < 0)
            rc = cli_usage_error("plot", usage_plot,
                                 "unknown metric '%s' (expected loss, val_loss, lr, throughput, maxvio or load)", metric);
        else if (strcmp(xname, "step") != 0 && strcmp(xname, "tokens") != 0)
            rc = cli_usage_error("plot", usage_plot, "option '--x' expects step or tokens, got '%s'", xname);
        else if (n_runs == 0)
            rc = cli_usage_error("plot", usage_plot, "no run directory given");
        else if (!out && !terminal)
            rc = cli_usage_error("plot", usage_plot, "give --out FILE.svg, --terminal, or both");
        else if (out && has_ext(out, ".png"))
            rc = cli_usage_error("plot", usage_plot, "--out %s: PNG output is not built into frugal; use a .svg file",
                                 out);
        else if (out && !has_ext(out, ".svg"))
            rc = cli_usage_error("plot", usage_plot, "--out %s: unknown file extension (expected .svg)", out);
        else if (m == M_LOAD && (log_x || log_y || strcmp(xname, "step") != 0))
            rc = cli_usage_error("plot", usage_plot, "--log-x, --log-y and --x do not apply to --metric load");
    }
    if (rc != CLI_EXIT_OK) {
        free(runs);
        return rc;
    }

    int x_tokens = strcmp(xname, "tokens") == 0;
    series_list list = {0};
    loadmap *maps = calloc((size_t)n_runs, sizeof *maps);
    char (*names)[160] = calloc((size_t)n_runs, sizeof *names);
    if (!maps || !names) rc = cli_fail("out of memory");
    for (int r = 0; r < n_runs && rc == CLI_EXIT_OK; r++)
        rc = read_run(runs[r], r, (metric_id)m, x_tokens, log_x, log_y, &list, &maps[r], names[r], sizeof names[r]);
    /* two runs with the same base name: label them by the paths as given */
    for (int a = 0; rc == CLI_EXIT_OK && a < n_runs; a++)
        for (int b = a + 1; b < n_runs; b++)
            if (strcmp(names[a], names[b]) == 0) {
                for (int k = 0; k < list.n; k++)
                    if (list.s[k].run == a || list.s[k].run == b) {
                        char buf[192];
                        if (list.s[k].layer >= 0) { /* "<name> <block label>": keep the label */
                            const char *label = list.s[k].name + strlen(names[list.s[k].run]);
                            snprintf(buf, sizeof buf, "%.150s%.40s", runs[list.s[k].run], label);
                        } else {
                            snprintf(buf, sizeof buf, "%.180s", runs[list.s[k].run]);
                        }
                        snprintf(list.s[k].name, sizeof list.s[k].name, "%s", buf);
                    }
                snprintf(maps[a].name, sizeof maps[a].name, "%.150s", runs[a]);
                snprintf(maps[b].name, sizeof maps[b].name, "%.150s", runs[b]);
            }
    if (rc == CLI_EXIT_OK && out) {
        FILE *f = fopen(out, "w");
        if (!f) {
            rc = cli_fail("cannot write %s: %s", out, strerror(errno));
        } else {
            if (m == M_LOAD) svg_load(f, maps, n_runs);
            else svg_lines(f, &list, (metric_id)m, x_tokens, log_x, log_y);
            int bad = ferror(f);
            if (fclose(f) != 0 || bad) rc = cli_fail("error writing %s", out);
        }
    }
    if (rc == CLI_EXIT_OK && terminal) {
        if (m == M_LOAD) term_load(maps, n_runs);
        else term_lines(&list, (metric_id)m, x_tokens, log_x, log_y);
    }
    if (rc == CLI_EXIT_OK && out) {
        if (terminal) printf("\n");
        printf("wrote %s (%s, %d run%s)\n", out, METRICS[m].name, n_runs, n_runs == 1 ? "" : "s");
    }
    free_series(&list);
    if (maps)
        for (int r = 0; r < n_runs; r++) { free(maps[r].load); free(maps[r].row_label); }
    free(maps);
    free(names);
    free(runs);
    return rc;
}
