/* test_cli_cost_plot.c — runs the real `frugal` binary for `cost` and `plot`:
 *  - cost: a hand-crafted ledger with finished, interrupted and crashed runs; final vs
 *    lifecycle sums, ratios and repricing checked against hand-computed values (--json and
 *    the text tables); final-run selection by id, id prefix and run dir; usage errors;
 *  - plot: metrics.jsonl files from a small generator; the SVG is well-formed, has one
 *    polyline per run (per run and layer for maxvio) with the right number of points, the
 *    heat map has a cell per layer and expert; --terminal; bad input fails clearly. */
#define _GNU_SOURCE
#include "frugal.h"
#include "cli_testutil.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char tmp[256];

static void write_text(const char *path, const char *text, const char *mode) {
    FILE *f = fopen(path, mode);
    if (!f) {
        CHECK(0, "cannot write %s", path);
        return;
    }
    fputs(text, f);
    fclose(f);
}

static int near(double a, double b) { return fabs(a - b) <= 1e-12 * fmax(1.0, fmax(fabs(a), fabs(b))); }

static double jnum(const cJSON *o, const char *path) {
    /* dotted path: "lifecycle.totals.cost_usd" */
    char buf[128];
    snprintf(buf, sizeof buf, "%s", path);
    const cJSON *cur = o;
    for (char *tok = strtok(buf, "."); tok && cur; tok = strtok(NULL, "."))
        cur = cJSON_GetObjectItemCaseSensitive(cur, tok);
    return cJSON_IsNumber(cur) ? cur->valuedouble : NAN;
}

/* ------------------------------------------------------------------ cost */

static char ledger[300];

/* One ledger record line, as the trainer writes them (derived fields precomputed at CPU
 * defaults: $0.02 per core-hour, 8 W per core). */
static void rec(FILE *f, const char *record, const char *id, const char *kind, const char *status,
                const char *dir, int nd, double start, double wall, long steps, double loss) {
    double dh = wall * nd / 3600.0;
    fprintf(f,
            "{\"v\":1,\"record\":\"%s\",\"run_id\":\"%s\",\"kind\":\"%s\",\"status\":\"%s\",\"run_dir\":\"%s\","
            "\"config\":\"tiny\",\"device\":\"cpu\",\"n_devices\":%d,\"start_unix\":%.17g,\"wall_s\":%.17g,"
            "\"steps\":%ld,\"tokens\":%ld,\"flops\":%.17g,\"device_hours\":%.17g,\"energy_kwh\":%.17g,"
            "\"cost_usd\":%.17g,\"final_loss\":%s,\"val_loss\":null}\n",
            record, id, kind, status, dir, nd, start, wall, steps, steps * 4096, steps * 1e12, dh, dh * 8 / 1000,
            dh * 0.02, "null");
    (void)loss;
}

static void make_ledger(void) {
    snprintf(ledger, sizeof ledger, "%s/ledger.jsonl", tmp);
    FILE *f = fopen(ledger, "w");
    /* D: an early finished train run: 2 cores x 1 h = 2 core-hours, $0.04 */
    rec(f, "begin", "20250101T000000Z-1-aaaa0001", "train", "running", "runs/d", 2, 100, 0, 0, NAN);
    rec(f, "end", "20250101T000000Z-1-aaaa0001", "train", "finished", "runs/d", 2, 100, 3600, 100, NAN);
    /* C: a crashed train run: 8 cores x 0.5 h = 4, $0.08 (last progress counts) */
    rec(f, "begin", "20250102T000000Z-2-bbbb0002", "train", "running", "runs/c", 8, 500, 0, 0, NAN);
    rec(f, "progress", "20250102T000000Z-2-bbbb0002", "train", "running", "runs/c", 8, 500, 900, 10, NAN);
    /* B: an interrupted experiment: 4 cores x 0.25 h = 1, $0.02 */
    rec(f, "begin", "20250103T000000Z-3-cccc0003", "experiment", "running", "runs/b", 4, 700, 0, 0, NAN);
    rec(f, "progress", "20250102T000000Z-2-bbbb0002", "train", "running", "runs/c", 8, 500, 1800, 20, NAN);
    rec(f, "end", "20250103T000000Z-3-cccc0003", "experiment", "interrupted", "runs/b", 4, 700, 900, 5, NAN);
    /* A: the final train run: 16 cores x 2 h = 32, $0.64 */
    rec(f, "begin", "20250104T000000Z-4-dddd0004", "train", "running", "runs/a", 16, 1000, 0, 0, NAN);
    rec(f, "progress", "20250104T000000Z-4-dddd0004", "train", "running", "runs/a", 16, 1000, 3600, 500, NAN);
    rec(f, "end", "20250104T000000Z-4-dddd0004", "train", "finished", "runs/a", 16, 1000, 7200, 1000, NAN);
    fclose(f);
}

static cJSON *cost_json(const char *extra) {
    char args[1024], *out = NULL, *err = NULL;
    snprintf(args, sizeof args, "cost --ledger '%s' --json %s", ledger, extra);
    int rc = run_frugal_err(args, &out, &err);
    CHECK(rc == 0, "frugal %s: exit %d\n%s%s", args, rc, out, err);
    cJSON *j = cJSON_Parse(out);
    CHECK(cJSON_IsObject(j), "frugal %s: not one JSON object:\n%s", args, out);
    free(out);
    free(err);
    return j;
}

static void test_cost(void) {
    make_ledger();
    /* lifecycle: 32 + 4 + 1 + 2 = 39 core-hours, $0.78, 0.312 kWh; final = A */
    cJSON *j = cost_json("");
    if (j) {
        const cJSON *fin = cJSON_GetObjectItem(j, "final");
        const cJSON *fid = cJSON_GetObjectItem(fin, "run_id");
        CHECK(cJSON_IsString(fid) && strcmp(fid->valuestring, "20250104T000000Z-4-dddd0004") == 0,
              "default final run is the latest finished train run");
        CHECK(near(jnum(j, "final.totals.device_hours"), 32) && near(jnum(j, "final.totals.cost_usd"), 0.64) &&
                  near(jnum(j, "final.totals.energy_kwh"), 0.256),
              "final totals %.17g %.17g %.17g", jnum(j, "final.totals.device_hours"),
              jnum(j, "final.totals.cost_usd"), jnum(j, "final.totals.energy_kwh"));
        CHECK(near(jnum(j, "lifecycle.totals.device_hours"), 39) && near(jnum(j, "lifecycle.totals.cost_usd"), 0.78) &&
                  near(jnum(j, "lifecycle.totals.energy_kwh"), 0.312),
              "lifecycle totals %.17g %.17g %.17g", jnum(j, "lifecycle.totals.device_hours"),
              jnum(j, "lifecycle.totals.cost_usd"), jnum(j, "lifecycle.totals.energy_kwh"));
        CHECK(near(jnum(j, "ratio.cost_usd"), 0.78 / 0.64) && near(jnum(j, "ratio.device_hours"), 39.0 / 32.0),
              "ratio %.17g", jnum(j, "ratio.cost_usd"));
        CHECK(jnum(j, "lifecycle.totals.runs") == 4 && jnum(j, "final.totals.runs") == 1, "run counts");
        CHECK(jnum(j, "lifecycle.totals.status.finished") == 2 && jnum(j, "lifecycle.totals.status.interrupted") == 1 &&
                  jnum(j, "lifecycle.totals.status.crashed") == 1,
              "status counts");
        CHECK(near(jnum(j, "lifecycle.energy_cost_usd"), 0.312 * 0.15), "electricity $ %.17g",
              jnum(j, "lifecycle.energy_cost_usd"));
        CHECK(jnum(j, "lifecycle.totals.steps") == 100 + 20 + 5 + 1000, "steps: crashed run counts its last progress");
        const cJSON *runs = cJSON_GetObjectItem(j, "runs");
        CHECK(cJSON_GetArraySize(runs) == 4, "4 runs listed");
        const cJSON *c = cJSON_GetArrayItem(runs, 1);
        CHECK(c && strcmp(cJSON_GetObjectItem(c, "status")->valuestring, "crashed") == 0 &&
                  near(jnum(c, "device_hours"), 4),
              "run C is crashed with 4 core-hours");
        cJSON_Delete(j);
    }
    /* --final by id, by unique prefix, by run dir */
    j = cost_json("--final 20250101T000000Z-1-aaaa0001");
    CHECK(j && near(jnum(j, "final.totals.cost_usd"), 0.04) && near(jnum(j, "ratio.cost_usd"), 0.78 / 0.04),
          "--final by id: %.17g", j ? jnum(j, "ratio.cost_usd") : NAN);
    cJSON_Delete(j);
    j = cost_json("--final 20250103");
    CHECK(j && near(jnum(j, "final.totals.device_hours"), 1), "--final by prefix");
    cJSON_Delete(j);
    j = cost_json("--final runs/c");
    CHECK(j && near(jnum(j, "final.totals.device_hours"), 4), "--final by run dir");
    cJSON_Delete(j);
    j = cost_json("--kind experiment");
    CHECK(j && cJSON_IsNull(cJSON_GetObjectItem(j, "final")) && cJSON_IsNull(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "ratio"), "cost_usd")),
          "no finished run of that kind: final is null");
    cJSON_Delete(j);

    /* repricing */
    j = cost_json("--price-device-hour 2");
    CHECK(j && near(jnum(j, "lifecycle.totals.cost_usd"), 78) && near(jnum(j, "final.totals.cost_usd"), 64) &&
              near(jnum(j, "lifecycle.totals.energy_kwh"), 0.312),
          "--price-device-hour 2: %.17g", j ? jnum(j, "lifecycle.totals.cost_usd") : NAN);
    cJSON_Delete(j);
    j = cost_json("--gpu");
    CHECK(j && near(jnum(j, "lifecycle.totals.cost_usd"), 78) && near(jnum(j, "lifecycle.totals.energy_kwh"), 27.3) &&
              near(jnum(j, "final.totals.energy_kwh"), 22.4),
          "--gpu: %.17g kWh", j ? jnum(j, "lifecycle.totals.energy_kwh") : NAN);
    cJSON_Delete(j);
    j = cost_json("--watts=100 --price-kwh 0.5");
    CHECK(j && near(jnum(j, "lifecycle.totals.cost_usd"), 0.78) && near(jnum(j, "lifecycle.totals.energy_kwh"), 3.9) &&
              near(jnum(j, "lifecycle.energy_cost_usd"), 1.95),
          "--watts 100 --price-kwh 0.5: %.17g %.17g", j ? jnum(j, "lifecycle.totals.energy_kwh") : NAN,
          j ? jnum(j, "lifecycle.energy_cost_usd") : NAN);
    cJSON_Delete(j);

    /* the text report */
    char args[1024];
    snprintf(args, sizeof args, "cost --ledger '%s'", ledger);
    expect(args, 0, "lifecycle/final", "1.22x");
    expect(args, 0, "2 finished, 1 interrupted, 1 crashed", "20250104T000000Z-4-dddd0004 (train, runs/a)");
    expect(args, 0, "$0.78", "$0.64");
    snprintf(args, sizeof args, "cost --ledger '%s' --price-device-hour 2", ledger);
    expect(args, 0, "$78", "repriced");

    /* errors */
    snprintf(args, sizeof args, "cost --ledger '%s' --final nosuchrun", ledger);
    expect(args, 1, "nosuchrun", NULL);
    snprintf(args, sizeof args, "cost --ledger '%s' --final 2025", ledger);
    expect(args, 1, "matches 4 run ids", NULL);
    snprintf(args, sizeof args, "cost --ledger '%s'", tmp);
    expect(args, 1, tmp, NULL);
    expect("cost --help", 0, "frugal cost", "--price-device-hour");
    expect("help cost", 0, "frugal cost", NULL);
    expect("cost --price-device-hour abc", 2, "--price-device-hour", "abc");
    expect("cost --watts -1", 2, "--watts", NULL);
    expect("cost --bogus", 2, "--bogus", "usage");
    expect("cost --ledger", 2, "needs a value", NULL);
    expect("cost --json=1", 2, "takes no value", NULL);
    expect("cost one two", 2, "two", NULL);
    expect("cost /nonexistent-project", 1, "nonexistent-project", NULL);
    /* PROJECT_DIR: its ledger.jsonl, the one `frugal train --out PROJECT_DIR/RUN` writes */
    {
        char *a_out = NULL, *b_out = NULL;
        snprintf(args, sizeof args, "cost --ledger '%s' --json", ledger);
        int ra = run_frugal(args, &a_out);
        snprintf(args, sizeof args, "cost '%s' --json", tmp);
        int rb = run_frugal(args, &b_out);
        CHECK(ra == 0 && rb == 0 && a_out && b_out && strcmp(a_out, b_out) == 0,
              "frugal cost PROJECT_DIR reads PROJECT_DIR/ledger.jsonl (exit %d / %d)", ra, rb);
        free(a_out);
        free(b_out);
        snprintf(args, sizeof args, "cost '%s' --ledger '%s'", tmp, ledger);
        expect(args, 2, "not both", NULL);
    }
    snprintf(args, sizeof args, "cost --ledger '%s/none.jsonl'", tmp);
    expect(args, 0, "no runs recorded", NULL);

    /* a torn last line: warned about on stderr, the rest still counted */
    write_text(ledger, "{\"v\":1,\"record\":\"end\",\"run_id\":\"2025", "a");
    char *out = NULL, *err = NULL;
    snprintf(args, sizeof args, "cost --ledger '%s' --json", ledger);
    int rc = run_frugal_err(args, &out, &err);
    cJSON *t = cJSON_Parse(out);
    CHECK(rc == 0 && t && jnum(t, "skipped_lines") == 1 && near(jnum(t, "lifecycle.totals.cost_usd"), 0.78),
          "torn line skipped: rc %d\n%s", rc, out);
    CHECK(strstr(err, "skipped 1 malformed") != NULL, "warning on stderr: %s", err);
    cJSON_Delete(t);
    free(out);
    free(err);

    /* a ledger written through the library API */
    char lib_ledger[300];
    snprintf(lib_ledger, sizeof lib_ledger, "%s/lib-ledger.jsonl", tmp);
    fr_prices p = fr_prices_default(0);
    fr_ledger_entry e;
    memset(&e, 0, sizeof e);
    snprintf(e.kind, sizeof e.kind, "train");
    snprintf(e.run_dir, sizeof e.run_dir, "runs/lib");
    e.n_devices = 6;
    e.final_loss = e.val_loss = NAN;
    CHECK(fr_ledger_begin(lib_ledger, &e) == FR_OK, "begin");
    e.wall_s = 1200; /* 6 x 1/3 h = 2 core-hours */
    e.steps = 42;
    e.final_loss = 3.5;
    fr_ledger_price(&e, &p);
    snprintf(e.status, sizeof e.status, "finished");
    CHECK(fr_ledger_update(lib_ledger, &e) == FR_OK, "end");
    snprintf(args, sizeof args, "cost --ledger '%s' --json", lib_ledger);
    rc = run_frugal(args, &out);
    t = cJSON_Parse(out);
    CHECK(rc == 0 && t && near(jnum(t, "final.totals.device_hours"), 2) && near(jnum(t, "final.totals.cost_usd"), 0.04) &&
              near(jnum(t, "ratio.cost_usd"), 1.0),
          "library-written ledger: %s", out);
    cJSON_Delete(t);
    free(out);
}

/* ------------------------------------------------------------------ plot */

/* metrics.jsonl generator: steps 1..n_steps, an eval every eval_every steps, `layers` MoE
 * layers with `experts` experts; also writes a sample, an unknown record type and two
 * malformed lines, which plot must ignore/skip. */
static void make_run(const char *dir, int n_steps, int eval_every, int layers, int experts, double scale) {
    mkdir(dir, 0755);
    char path[512];
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    FILE *f = fopen(path, "w");
    fprintf(f, "{\"type\":\"config\",\"whatever\":1}\n");
    for (int s = 1; s <= n_steps; s++) {
        double loss = scale * (2.0 + 8.0 / sqrt((double)s));
        fprintf(f,
                "{\"type\":\"step\",\"step\":%d,\"tokens\":%d,\"loss\":%.6f,\"loss_main\":%.6f,\"loss_mtp\":[%.6f],"
                "\"loss_balance\":0.001,\"lr\":%.6g,\"grad_norm\":1.2,\"tokens_per_s\":%.1f,\"gflops\":45.1,"
                "\"mfu\":0.5,\"elapsed_s\":%.2f,\"cost_usd\":0.0001,\"new_field\":{\"x\":[1,2]},\"maxvio\":[",
                s, s * 4096, loss, loss * 0.9, loss * 1.1, 3e-4 * fmin(1.0, s / 10.0), 3000.0 + 10 * s, 1.2 * s);
        for (int l = 0; l < layers; l++) fprintf(f, "%s%.4f", l ? "," : "", 1.0 / (s + l));
        fprintf(f, "],\"moe_layers\":["); /* layer 0 dense: MoE layers 1..layers */
        for (int l = 0; l < layers; l++) fprintf(f, "%s%d", l ? "," : "", l + 1);
        fprintf(f, "],\"expert_load\":[");
        for (int l = 0; l < layers; l++) {
            fprintf(f, "%s[", l ? "," : "");
            double tot = 0;
            for (int e = 0; e < experts; e++) tot += 1 + ((e + l) % 3);
            for (int e = 0; e < experts; e++) fprintf(f, "%s%.6f", e ? "," : "", (1 + ((e + l) % 3)) / tot);
            fprintf(f, "]");
        }
        fprintf(f, "]}\n");
        if (s % eval_every == 0)
            fprintf(f, "{\"type\":\"eval\",\"step\":%d,\"tokens\":%d,\"val_loss\":%.5f,\"val_bpb\":1.9}\n", s, s * 4096,
                    loss + 0.1);
        if (s == n_steps / 2) {
            fprintf(f, "{\"type\":\"sample\",\"step\":%d,\"text\":\"In the beginning <&>\"}\n", s);
            fprintf(f, "{\"type\":\"step\",\"step\":\n"); /* malformed */
            fprintf(f, "garbage line\n");
            fprintf(f, "{\"type\":\"step\",\"step\":%d,\"loss\":null}\n", s); /* no value: not a point */
        }
    }
    fclose(f);
}

/* Well-formedness: an <svg> root, balanced tags, only known entities. */
static int svg_well_formed(const char *s, char *why, size_t why_n) {
    char stack[64][32];
    int depth = 0, roots = 0;
    const char *p = s;
    while ((p = strchr(p, '<')) != NULL) {
        if (strncmp(p, "<?", 2) == 0) {
            p = strstr(p, "?>");
            if (!p) return snprintf(why, why_n, "unterminated <?"), 0;
            p += 2;
            continue;
        }
        if (strncmp(p, "<!--", 4) == 0) {
            p = strstr(p, "-->");
            if (!p) return snprintf(why, why_n, "unterminated comment"), 0;
            p += 3;
            continue;
        }
        const char *end = strchr(p, '>');
        if (!end) return snprintf(why, why_n, "unterminated tag"), 0;
        int closing = p[1] == '/';
        const char *nm = p + 1 + closing;
        size_t nl = strcspn(nm, " \t\n/>");
        if (nl == 0 || nl >= 32) return snprintf(why, why_n, "bad tag name"), 0;
        for (const char *q = p + 1; q < end; q++)
            if (*q == '<') return snprintf(why, why_n, "'<' inside a tag"), 0;
        if (closing) {
            if (depth == 0 || strlen(stack[depth - 1]) != nl || strncmp(stack[depth - 1], nm, nl) != 0)
                return snprintf(why, why_n, "mismatched </%.*s>", (int)nl, nm), 0;
            depth--;
        } else if (end[-1] != '/') {
            if (depth == 0) {
                roots++;
                if (strncmp(nm, "svg", nl) != 0 || nl != 3) return snprintf(why, why_n, "root is not <svg>"), 0;
            }
            if (depth == 64) return snprintf(why, why_n, "too deep"), 0;
            memcpy(stack[depth], nm, nl);
            stack[depth][nl] = 0;
            depth++;
        } else if (depth == 0) {
            return snprintf(why, why_n, "self-closing root"), 0;
        }
        p = end + 1;
    }
    if (depth != 0) return snprintf(why, why_n, "%d unclosed tags (innermost <%s>)", depth, stack[depth - 1]), 0;
    if (roots != 1) return snprintf(why, why_n, "%d root elements", roots), 0;
    for (const char *q = strchr(s, '&'); q; q = strchr(q + 1, '&'))
        if (strncmp(q, "&lt;", 4) && strncmp(q, "&gt;", 4) && strncmp(q, "&amp;", 5) && strncmp(q, "&quot;", 6) &&
            strncmp(q, "&apos;", 6))
            return snprintf(why, why_n, "bad entity"), 0;
    return 1;
}

/* Point counts of the polylines of class "series", in order; returns how many. */
static int polyline_points(const char *svg, int *counts, int max) {
    int n = 0;
    for (const char *p = strstr(svg, "<polyline class=\"series\""); p; p = strstr(p + 1, "<polyline class=\"series\"")) {
        const char *pts = strstr(p, " points=\"");
        const char *end = strchr(p, '>');
        if (!pts || pts > end) break;
        pts += 9;
        int c = 0;
        for (const char *q = pts; *q && *q != '"'; q++)
            if (*q == ',') c++;
        if (n < max) counts[n] = c;
        n++;
    }
    return n;
}

static int count_str(const char *s, const char *what) {
    int n = 0;
    for (const char *p = strstr(s, what); p; p = strstr(p + 1, what)) n++;
    return n;
}

static char *plot_svg(const char *args, const char *svg_name) {
    char full[2048], svg[400];
    snprintf(svg, sizeof svg, "%s/%s", tmp, svg_name);
    unlink(svg);
    snprintf(full, sizeof full, "plot %s --out '%s'", args, svg);
    char *out = NULL;
    int rc = run_frugal(full, &out);
    CHECK(rc == 0, "frugal %s: exit %d\n%s", full, rc, out);
    free(out);
    char *s = fr_test_read_file(svg, NULL);
    CHECK(s != NULL, "%s was not written", svg);
    if (s) {
        char why[128] = "";
        CHECK(svg_well_formed(s, why, sizeof why), "%s is not well-formed: %s", svg, why);
        CHECK(strstr(s, "<svg") != NULL && strstr(s, "</svg>") != NULL, "svg root");
    }
    return s;
}

static void test_plot(void) {
    char r1[300], r2[300], r3[300], args[1200];
    snprintf(r1, sizeof r1, "%s/run-alpha", tmp);
    snprintf(r2, sizeof r2, "%s/run-beta", tmp);
    snprintf(r3, sizeof r3, "%s/run-noeval", tmp);
    make_run(r1, 50, 10, 3, 8, 1.0);
    make_run(r2, 30, 10, 3, 8, 1.1);
    make_run(r3, 12, 1000, 2, 4, 1.0);

    /* run-alpha's model: 3 layers (layer 0 dense) + one MTP module, so its MoE blocks are
     * layers 1, 2 and the MTP module (moe_layers 1, 2, 3) */
    {
        char cpath[400];
        snprintf(cpath, sizeof cpath, "%s/config.json", r1);
        const char *cj = fr_test_q32_config(256);
        char cbuf[1500];
        snprintf(cbuf, sizeof cbuf, "%s", cj);
        char *nl = strstr(cbuf, "\"num_hidden_layers\": 2");
        if (nl) nl[strlen("\"num_hidden_layers\": ")] = '3';
        write_text(cpath, cbuf, "w");
    }

    int counts[64];
    snprintf(args, sizeof args, "'%s' '%s'", r1, r2);
    char *s = plot_svg(args, "loss.svg");
    if (s) {
        /* per run: the main head's training loss (loss_main) and the validation loss */
        int n = polyline_points(s, counts, 64);
        CHECK(n == 4 && counts[0] == 50 && counts[1] == 5 && counts[2] == 30 && counts[3] == 3,
              "loss: %d polylines, points %d %d %d %d", n, counts[0], counts[1], counts[2], counts[3]);
        CHECK(strstr(s, ">run-alpha train loss (main head)<") && strstr(s, ">run-beta train loss (main head)<") &&
                  strstr(s, ">run-alpha val loss<") && strstr(s, ">run-beta val loss<"),
              "legend names the run dirs and labels the training loss");
        CHECK(strstr(s, "main + MTP") == NULL, "loss_main is drawn, not the total");
        CHECK(strstr(s, "Training loss") && strstr(s, ">step<"), "title and x label");
        free(s);
    }
    snprintf(args, sizeof args, "'%s' '%s/' --metric val_loss --x tokens --log-x", r1, r2);
    s = plot_svg(args, "val.svg");
    if (s) {
        int n = polyline_points(s, counts, 64);
        CHECK(n == 2 && counts[0] == 5 && counts[1] == 3, "val_loss: %d polylines, points %d %d", n, counts[0],
              counts[1]);
        CHECK(strstr(s, "training tokens") && strstr(s, "log scale"), "tokens axis, log scale");
        free(s);
    }
    snprintf(args, sizeof args, "'%s' '%s' --metric maxvio --log-y", r1, r2);
    s = plot_svg(args, "maxvio.svg");
    if (s) {
        int n = polyline_points(s, counts, 64);
        CHECK(n == 6 && counts[0] == 50 && counts[2] == 50 && counts[3] == 30 && counts[5] == 30,
              "maxvio: one line per run and layer: %d", n);
        /* named by the real layer index; run-alpha's config says layer 3 is the MTP module */
        CHECK(strstr(s, "run-alpha layer 1") && strstr(s, "run-alpha layer 2") && strstr(s, ">run-alpha MTP<") &&
                  !strstr(s, "run-alpha layer 0") && !strstr(s, "run-alpha layer 3"),
              "maxvio legend names the layers and the MTP module");
        CHECK(strstr(s, "run-beta layer 1") && strstr(s, "run-beta layer 3") && !strstr(s, "run-beta layer 0"),
              "maxvio legend: layer indices from moe_layers");
        free(s);
    }
    {
        /* a run whose records carry neither moe_layers nor a config: blocks, not layers */
        char ro[300], opath[400];
        snprintf(ro, sizeof ro, "%s/run-old", tmp);
        mkdir(ro, 0755);
        snprintf(opath, sizeof opath, "%s/metrics.jsonl", ro);
        write_text(opath,
                   "{\"type\":\"step\",\"step\":1,\"loss\":3.5,\"maxvio\":[0.5,0.25]}\n"
                   "{\"type\":\"step\",\"step\":2,\"loss\":3.25,\"maxvio\":[0.4,0.2]}\n"
                   "{\"type\":\"eval\",\"step\":2,\"val_loss\":3.5}\n",
                   "w");
        snprintf(args, sizeof args, "'%s' --metric maxvio", ro);
        s = plot_svg(args, "maxvio-old.svg");
        if (s) {
            CHECK(strstr(s, "run-old MoE block 0") && strstr(s, "run-old MoE block 1") && !strstr(s, "layer 0"),
                  "maxvio without layer indices names MoE blocks");
            free(s);
        }
        snprintf(args, sizeof args, "'%s'", ro);
        s = plot_svg(args, "loss-old.svg");
        if (s) {
            int n = polyline_points(s, counts, 64);
            CHECK(n == 2 && counts[0] == 2 && counts[1] == 1 && strstr(s, ">run-old train loss (main + MTP)<") &&
                      strstr(s, ">run-old val loss<"),
                  "without loss_main the total loss is drawn, labelled so: %d polylines", n);
            free(s);
        }
    }
    for (int k = 0; k < 2; k++) {
        snprintf(args, sizeof args, "'%s' --metric %s", r3, k ? "lr" : "throughput");
        s = plot_svg(args, k ? "lr.svg" : "tps.svg");
        if (s) {
            int n = polyline_points(s, counts, 64);
            CHECK(n == 1 && counts[0] == 12, "%s: %d polylines, %d points", k ? "lr" : "throughput", n, counts[0]);
            free(s);
        }
    }
    snprintf(args, sizeof args, "'%s' '%s' --metric load", r1, r3);
    s = plot_svg(args, "load.svg");
    if (s) {
        CHECK(count_str(s, "class=\"cell\"") == 3 * 8 + 2 * 4, "heat map cells: %d", count_str(s, "class=\"cell\""));
        CHECK(count_str(s, "<g class=\"heatmap\"") == 2, "one heat map per run");
        CHECK(strstr(s, "step 50") && strstr(s, "step 12"), "last logged step is shown");
        /* rows named like the MaxVio series: run-alpha's blocks are layers 1, 2 and the MTP
         * module; no row is labelled by its position ("layer 0" is run-alpha's dense layer) */
        CHECK(strstr(s, ">layer 1</text>") && strstr(s, ">layer 2</text>") && strstr(s, ">MTP</text>") &&
                  strstr(s, "<title>MTP, expert 0:") && !strstr(s, ">layer 0</text>"),
              "heat-map rows are named by layer index and MTP");
        free(s);
    }
    /* a resumed run logs steps 9..12 again: the later records win, one point per step */
    char rr[300], rpath[400];
    snprintf(rr, sizeof rr, "%s/run-resumed", tmp);
    make_run(rr, 12, 1000, 1, 4, 1.0);
    snprintf(rpath, sizeof rpath, "%s/metrics.jsonl", rr);
    for (int st = 9; st <= 12; st++) {
        char line[200];
        snprintf(line, sizeof line, "{\"type\":\"step\",\"step\":%d,\"loss\":%d.5,\"loss_main\":%d.5}\n", st,
                 101 + st, 100 + st);
        write_text(rpath, line, "a");
    }
    snprintf(args, sizeof args, "'%s' --log-y", rr);
    s = plot_svg(args, "resumed.svg");
    if (s) {
        int n = polyline_points(s, counts, 64);
        CHECK(n == 1 && counts[0] == 12, "resumed run: %d polylines, %d points (want 12)", n, counts[0]);
        CHECK(strstr(s, ">100<") != NULL, "the re-logged values (100+) are the ones drawn");
        free(s);
    }

    /* a metrics file instead of a directory */
    snprintf(args, sizeof args, "'%s/metrics.jsonl'", r3);
    s = plot_svg(args, "file.svg");
    if (s) {
        int n = polyline_points(s, counts, 64);
        CHECK(n == 1 && counts[0] == 12 && strstr(s, ">run-noeval train loss (main head)<"), "metrics file argument");
        free(s);
    }

    /* terminal chart */
    char *out = NULL, *err = NULL;
    snprintf(args, sizeof args, "plot '%s' '%s' --terminal", r1, r2);
    int rc = run_frugal_err(args, &out, &err);
    CHECK(rc == 0 && strstr(out, "Training loss") &&
              strstr(out, "\xe2\xa3\xbf run-alpha train loss (main head): 50 points") &&
              strstr(out, "run-beta train loss (main head): 30 points") && strstr(out, "run-alpha val loss: 5 points"),
          "terminal chart: rc %d\n%s", rc, out);
    int braille = 0;
    for (const unsigned char *q = (const unsigned char *)out; q[0] && q[1] && q[2]; q++)
        if (q[0] == 0xE2 && (q[1] == 0xA0 || q[1] == 0xA1 || q[1] == 0xA2 || q[1] == 0xA3)) braille++;
    CHECK(braille > 60, "terminal chart draws a curve (%d braille cells)", braille);
    CHECK(strstr(err, "skipped 2 malformed") != NULL, "malformed lines are counted: %s", err);
    free(out);
    free(err);
    snprintf(args, sizeof args, "plot '%s' --metric load --terminal", r3);
    expect(args, 0, "Expert load", "    layer 1 \xe2\x94\x82");

    /* bad input */
    expect("plot --help", 0, "frugal plot", "--metric");
    expect("help plot", 0, "frugal plot", NULL);
    snprintf(args, sizeof args, "plot '%s/nowhere' --out '%s/x.svg'", tmp, tmp);
    expect(args, 1, "nowhere", NULL);
    snprintf(args, sizeof args, "plot '%s' --out '%s/x.svg'", tmp, tmp);
    expect(args, 1, "metrics.jsonl", NULL);
    snprintf(args, sizeof args, "plot '%s' --metric val_loss --out '%s/x.svg'", r3, tmp);
    expect(args, 1, "no numeric 'val_loss' values", NULL);
    snprintf(args, sizeof args, "plot '%s' --metric perplexity --out '%s/x.svg'", r1, tmp);
    expect(args, 2, "unknown metric 'perplexity'", NULL);
    snprintf(args, sizeof args, "plot '%s' --out '%s/x.png'", r1, tmp);
    expect(args, 2, "PNG", NULL);
    snprintf(args, sizeof args, "plot '%s' --out '%s/x.txt'", r1, tmp);
    expect(args, 2, "unknown file extension", NULL);
    snprintf(args, sizeof args, "plot '%s'", r1);
    expect(args, 2, "--terminal", NULL);
    expect("plot --out x.svg", 2, "no run directory", NULL);
    snprintf(args, sizeof args, "plot '%s' --x epochs --terminal", r1);
    expect(args, 2, "epochs", NULL);
    snprintf(args, sizeof args, "plot '%s' --out '%s/no-such-dir/x.svg'", r1, tmp);
    expect(args, 1, "cannot write", NULL);
    /* every point <= 0 on a log axis */
    char rz[300], path[400];
    snprintf(rz, sizeof rz, "%s/run-zero", tmp);
    mkdir(rz, 0755);
    snprintf(path, sizeof path, "%s/metrics.jsonl", rz);
    write_text(path, "{\"type\":\"step\",\"step\":1,\"lr\":0}\n{\"type\":\"step\",\"step\":2,\"lr\":0}\n", "w");
    snprintf(args, sizeof args, "plot '%s' --metric lr --log-y --terminal", rz);
    expect(args, 1, "no numeric 'lr' values", "log axis");
    snprintf(args, sizeof args, "plot '%s' --metric lr --terminal", rz);
    expect(args, 0, "Learning rate", NULL);
}

int main(void) {
    snprintf(tmp, sizeof tmp, "/tmp/fr_test_cost_plot_XXXXXX");
    if (!mkdtemp(tmp)) {
        perror("mkdtemp");
        return 1;
    }
    test_cost();
    test_plot();
    fr_test_rm_rf(tmp);
    return fr_test_finish("test_cli_cost_plot");
}
