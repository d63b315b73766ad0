/* plan_measured.c — frugal's own measured efficiency, for the planner's compute model: the
 * MFU a run recorded in its metrics.jsonl, or the one its ledger entry implies. */
#define _GNU_SOURCE
#include "plan/plan.h"

#include "core/internal.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int fr_plan_measured_metrics(const char *path, double *mfu, int *n_used) {
    fr_clear_error();
    if (!path || !mfu) return fr_error(FR_ERR_ARG, "fr_plan_measured_metrics: NULL argument");
    struct stat st;
    char *file = NULL;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        file = fr_path_join(path, "metrics.jsonl");
        if (!file) return fr_error(FR_ERR_NOMEM, "out of memory");
    }
    char *text = NULL;
    size_t len = 0;
    int rc = fr_read_file(file ? file : path, &text, &len);
    if (rc != FR_OK) {
        free(file);
        return rc;
    }
    size_t cap = 64, n = 0;
    double *vals = malloc(cap * sizeof *vals);
    if (!vals) {
        free(file);
        free(text);
        return fr_error(FR_ERR_NOMEM, "out of memory");
    }
    /* The first step includes warm-up (thread pools, page faults, the memory plan), so it is
     * left out; a resumed run's first step again. A step without an MFU (peak unknown: 0)
     * does not count. */
    for (char *line = text; line && *line;) {
        char *nl = strchr(line, '\n');
        size_t ll = nl ? (size_t)(nl - line) : strlen(line);
        cJSON *j = cJSON_ParseWithLength(line, ll);
        const cJSON *type = j ? cJSON_GetObjectItemCaseSensitive(j, "type") : NULL;
        const cJSON *mf = j ? cJSON_GetObjectItemCaseSensitive(j, "mfu") : NULL;
        const cJSON *step = j ? cJSON_GetObjectItemCaseSensitive(j, "step") : NULL;
        if (cJSON_IsString(type) && strcmp(type->valuestring, "step") == 0 && cJSON_IsNumber(mf) &&
            isfinite(mf->valuedouble) && mf->valuedouble > 0 && !(cJSON_IsNumber(step) && step->valuedouble <= 1)) {
            if (n == cap) {
                double *grown = realloc(vals, 2 * cap * sizeof *vals);
                if (!grown) {
                    cJSON_Delete(j);
                    free(vals);
                    free(text);
                    free(file);
                    return fr_error(FR_ERR_NOMEM, "out of memory");
                }
                vals = grown;
                cap *= 2;
            }
            vals[n++] = mf->valuedouble;
        }
        cJSON_Delete(j);
        line = nl ? nl + 1 : NULL;
    }
    free(text);
    if (n == 0) {
        rc = fr_error(FR_ERR_FORMAT, "%s: no step record with an \"mfu\" after the first step", file ? file : path);
        free(file);
        free(vals);
        return rc;
    }
    free(file);
    /* the median: one slow step (a checkpoint, an evaluation) does not move it */
    qsort(vals, n, sizeof *vals, cmp_double);
    *mfu = n % 2 ? vals[n / 2] : 0.5 * (vals[n / 2 - 1] + vals[n / 2]);
    if (n_used) *n_used = (int)n;
    free(vals);
    return FR_OK;
}

int fr_plan_measured_ledger(const char *path, const char *run_sel, double peak_gflops_per_device, double *mfu,
                            char *run_id, size_t run_id_size) {
    fr_clear_error();
    if (!path || !mfu) return fr_error(FR_ERR_ARG, "fr_plan_measured_ledger: NULL argument");
    if (!(isfinite(peak_gflops_per_device) && peak_gflops_per_device > 0))
        return fr_error(FR_ERR_ARG, "a ledger records no peak: give the peak GFLOP/s per device (got %g)",
                        peak_gflops_per_device);
    fr_ledger_entry *runs = NULL;
    int n = 0;
    FR_CHECK(fr_ledger_read(path, &runs, &n, NULL));
    int pick = -1;
    for (int i = 0; i < n; i++) {
        const fr_ledger_entry *e = &runs[i];
        if (run_sel ? strncmp(e->run_id, run_sel, strlen(run_sel)) == 0
                    : strcmp(e->kind, "train") == 0 && strcmp(e->status, "finished") == 0) {
            if (run_sel && pick >= 0) {
                free(runs);
                return fr_error(FR_ERR_ARG, "%s: more than one run id starts with '%s'", path, run_sel);
            }
            if (pick < 0 || run_sel || e->start_unix >= runs[pick].start_unix) pick = i;
        }
    }
    if (pick < 0) {
        int rc = run_sel ? fr_error(FR_ERR_FORMAT, "%s: no run id starts with '%s'", path, run_sel)
                         : fr_error(FR_ERR_FORMAT, "%s: no finished train run", path);
        free(runs);
        return rc;
    }
    const fr_ledger_entry *e = &runs[pick];
    if (!(e->wall_s > 0 && e->n_devices > 0 && e->flops > 0)) {
        int rc = fr_error(FR_ERR_FORMAT, "%s: run %s has no FLOPs, wall time or devices to measure", path, e->run_id);
        free(runs);
        return rc;
    }
    /* wall-clock MFU: evaluation, checkpoints and start-up count, as they do in a real run */
    *mfu = e->flops / (e->wall_s * e->n_devices * peak_gflops_per_device * 1e9);
    if (run_id && run_id_size) snprintf(run_id, run_id_size, "%s", e->run_id);
    free(runs);
    return FR_OK;
}
