/*
 * lora.c — LoRA adapters: adding them to a model, their forward and backward, and the PEFT
 * adapter folder (adapter_config.json + adapter_model.safetensors) in and out.
 *
 * An adapted linear layer computes y = W x + scale * B (A x), A [rank, in], B [out, rank].
 * Like PEFT, A starts uniform in +-1/sqrt(in) (kaiming_uniform with a = sqrt(5)) and B at
 * zero, so the adapted model starts equal to the base. The adapters sit at the end of the
 * parameter arena (from m->train_lo), so the optimizer's spans, the gradient reduction and
 * the checkpoint's moments cover them alone; the base tensors are frozen and the linear
 * layers skip their weight gradients (block.c asks fr_lora_frozen).
 *
 * The forward does not keep x A^T: the backward recomputes it (N x in x rank multiply-adds,
 * small beside the base product's N x in x out).
 */
#include "model/lora.h"

#include "formats/qmatrix.h"
#include "formats/safetensors.h"

#include <cjson/cJSON.h>
#include <stdint.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---------------------------------------------------------------- targets */

enum {
    T_Q = 1 << 0, T_QA = 1 << 1, T_QB = 1 << 2, T_KVA = 1 << 3, T_KVB = 1 << 4, T_O = 1 << 5,
    T_MLP = 1 << 6, T_SHARED = 1 << 7, T_EXPERTS = 1 << 8, T_ALL = (1 << 9) - 1
};

/* --lora-targets names, their bits, and the module-path regex of each for PEFT */
static const struct {
    const char *name;
    unsigned bit;
    const char *regex;
} targets[] = {
    {"q_proj", T_Q, "self_attn\\.q_proj"},
    {"q_a_proj", T_QA, "self_attn\\.q_a_proj"},
    {"q_b_proj", T_QB, "self_attn\\.q_b_proj"},
    {"kv_a_proj_with_mqa", T_KVA, "self_attn\\.kv_a_proj_with_mqa"},
    {"kv_b_proj", T_KVB, "self_attn\\.kv_b_proj"},
    {"o_proj", T_O, "self_attn\\.o_proj"},
    {"mlp", T_MLP, "mlp\\.(gate_proj|up_proj|down_proj)"},
    {"shared_experts", T_SHARED, "mlp\\.shared_experts\\.(gate_proj|up_proj|down_proj)"},
    {"experts", T_EXPERTS, "mlp\\.experts\\.[0-9]+\\.(gate_proj|up_proj|down_proj)"},
};
#define N_TARGETS ((int)(sizeof targets / sizeof targets[0]))

const char *fr_lora_target_names(void) {
    return "q_proj,q_a_proj,q_b_proj,kv_a_proj_with_mqa,kv_b_proj,o_proj,mlp,shared_experts,experts (or all)";
}

static int parse_targets(const char *list, unsigned *mask) {
    *mask = 0;
    const char *p = list;
    while (*p) {
        size_t n = strcspn(p, ",");
        int found = 0;
        if (n == 3 && !strncmp(p, "all", 3)) *mask |= T_ALL, found = 1;
        for (int i = 0; i < N_TARGETS && !found; i++)
            if (strlen(targets[i].name) == n && !strncmp(p, targets[i].name, n)) *mask |= targets[i].bit, found = 1;
        if (!found && n > 0)
            return fr_error(FR_ERR_ARG, "unknown LoRA target '%.*s': the valid names are %s", (int)n, p,
                            fr_lora_target_names());
        p += n;
        if (*p == ',') p++;
    }
    if (!*mask) return fr_error(FR_ERR_ARG, "no LoRA targets given: the valid names are %s", fr_lora_target_names());
    return FR_OK;
}

int fr_lora_check_targets(const char *list) {
    unsigned mask;
    if (!list) return fr_error(FR_ERR_ARG, "no LoRA targets given");
    return parse_targets(list, &mask);
}

/* The target bit of a main layer's tensor name (after "model.layers.N."), or 0 */
static unsigned target_of(const char *rest) {
    static const char *const mlp[3] = {"gate_proj.weight", "up_proj.weight", "down_proj.weight"};
    static const struct { const char *name; unsigned bit; } attn[] = {
        {"self_attn.q_proj.weight", T_Q}, {"self_attn.q_a_proj.weight", T_QA}, {"self_attn.q_b_proj.weight", T_QB},
        {"self_attn.kv_a_proj_with_mqa.weight", T_KVA}, {"self_attn.kv_b_proj.weight", T_KVB},
        {"self_attn.o_proj.weight", T_O}};
    for (size_t i = 0; i < sizeof attn / sizeof attn[0]; i++)
        if (!strcmp(rest, attn[i].name)) return attn[i].bit;
    const char *tail = NULL;
    unsigned bit = 0;
    if (!strncmp(rest, "mlp.shared_experts.", 19)) tail = rest + 19, bit = T_SHARED;
    else if (!strncmp(rest, "mlp.experts.", 12)) {
        char *end;
        strtol(rest + 12, &end, 10);
        if (end > rest + 12 && *end == '.') tail = end + 1, bit = T_EXPERTS;
    } else if (!strncmp(rest, "mlp.", 4)) tail = rest + 4, bit = T_MLP;
    for (int k = 0; tail && k < 3; k++)
        if (!strcmp(tail, mlp[k])) return bit;
    return 0;
}

/* ---------------------------------------------------------------- adding adapters */

int fr_model_add_lora(fr_model *m, int rank, double alpha, const char *target_list, int rslora, uint64_t seed) {
    fr_clear_error();
    if (!m || !target_list) return fr_error(FR_ERR_ARG, "fr_model_add_lora: NULL argument");
    if (m->n_lora > 0) return fr_error(FR_ERR_STATE, "the model already has LoRA adapters");
    if (rank < 1 || rank > 4096) return fr_error(FR_ERR_ARG, "LoRA rank %d is outside [1, 4096]", rank);
    if (!(alpha > 0) || !isfinite(alpha)) return fr_error(FR_ERR_ARG, "LoRA alpha %g must be positive", alpha);
    if (strlen(target_list) >= sizeof m->lora_targets) return fr_error(FR_ERR_ARG, "LoRA target list too long");
    unsigned mask;
    FR_CHECK(parse_targets(target_list, &mask));

    const int n_base = m->n_tensors, L = m->cfg.num_hidden_layers;
    const size_t old_n = m->n_params;
    fr_lora_site *sites = malloc((size_t)n_base * sizeof *sites);
    if (!sites) return fr_error(FR_ERR_NOMEM, "out of memory");
    int n_sites = 0, rc = FR_OK;
    for (int i = 0; i < n_base && rc == FR_OK; i++) {
        const fr_tensor t = m->tensors[i]; /* (a copy: registering moves the table) */
        int layer, at = 0;
        if (sscanf(t.name, "model.layers.%d.%n", &layer, &at) != 1 || at == 0 || layer >= L) continue;
        if (!(target_of(t.name + at) & mask)) continue;
        const int module_len = (int)strlen(t.name) - 7; /* without ".weight" */
        if (17 + module_len + 14 >= (int)sizeof t.name) {
            rc = fr_error(FR_ERR_ARG, "tensor name too long for an adapter: %s", t.name);
            break;
        }
        fr_lora_site *s = &sites[n_sites++];
        s->base = t.offset;
        s->out = (int)t.shape[0];
        s->in = (int)t.shape[1];
        rc = fr_model_add_tensor(m, &s->a, 1, 2, rank, s->in, "base_model.model.%.*s.lora_A.weight", module_len, t.name);
        if (rc == FR_OK)
            rc = fr_model_add_tensor(m, &s->b, 1, 2, s->out, rank, "base_model.model.%.*s.lora_B.weight", module_len, t.name);
    }
    if (rc == FR_OK && n_sites == 0)
        rc = fr_error(FR_ERR_ARG, "the LoRA targets '%s' match no linear layer of this model", target_list);
    /* the arena again, with room for the adapters: parameters copied, the rest zero */
    const size_t new_n = m->n_params;
    float *arena = rc == FR_OK ? m->ops->alloc(2 * new_n * sizeof(float)) : NULL;
    float *host = rc == FR_OK ? calloc(new_n - old_n + 1, sizeof(float)) : NULL;
    if (rc == FR_OK && (!arena || !host)) rc = fr_error(FR_ERR_NOMEM, "out of memory for the LoRA adapters");
    if (rc != FR_OK) {
        if (arena) m->ops->free(arena);
        free(host);
        free(sites);
        m->n_tensors = n_base;
        m->n_params = old_n;
        return rc;
    }
    fr_rng rng;
    fr_rng_seed(&rng, seed);
    for (int k = 0; k < n_sites; k++) { /* A uniform in +-1/sqrt(in), B zero */
        const double bound = 1.0 / sqrt((double)sites[k].in);
        float *a = host + (sites[k].a - old_n);
        for (size_t j = 0; j < (size_t)rank * sites[k].in; j++) a[j] = (float)((2.0 * fr_rng_uniform(&rng) - 1.0) * bound);
    }
    m->ops->memset0(arena, 2 * new_n * sizeof(float));
    if (m->ops->host_memory) {
        memcpy(arena, m->params, old_n * sizeof(float));
    } else {
        float *stage = malloc(old_n * sizeof(float) + 1);
        if (!stage) {
            m->ops->free(arena), free(host), free(sites);
            m->n_tensors = n_base, m->n_params = old_n;
            return fr_error(FR_ERR_NOMEM, "out of memory");
        }
        m->ops->to_host(stage, m->params, old_n * sizeof(float));
        m->ops->to_device(arena, stage, old_n * sizeof(float));
        free(stage);
    }
    m->ops->to_device(arena + old_n, host, (new_n - old_n) * sizeof(float));
    free(host);
    m->ops->free(m->params);
    m->params = arena;
    m->grads = arena + new_n;
    for (int i = 0; i < n_base; i++) m->tensors[i].trainable = 0;
    m->n_base_tensors = n_base;
    m->train_lo = old_n;
    m->lora = sites;
    m->n_lora = n_sites;
    m->lora_rank = rank;
    m->lora_alpha = alpha;
    m->lora_rslora = rslora;
    m->lora_scale = (float)(rslora ? alpha / sqrt((double)rank) : alpha / rank);
    snprintf(m->lora_targets, sizeof m->lora_targets, "%s", target_list);
    return FR_OK;
}

int fr_model_lora_sites(const fr_model *m) { return m ? m->n_lora : 0; }

/* ---------------------------------------------------------------- forward / backward */

const fr_lora_site *fr_lora_find(const fr_model *m, size_t off) {
    int lo = 0, hi = m->n_lora - 1;
    while (lo <= hi) {
        const int mid = (lo + hi) / 2;
        if (m->lora[mid].base == off) return &m->lora[mid];
        if (m->lora[mid].base < off) lo = mid + 1;
        else hi = mid - 1;
    }
    return NULL;
}

/* Scratch of 2 x rows x rank floats (u = x A^T and du = scale * dy B); NULL when out of memory,
 * which fails the pass through gemm_failed as a GEMM without memory does */
static float *scratch(fr_model *m, int rows) {
    const size_t need = 2 * (size_t)rows * m->lora_rank;
    if (m->lora_cap < need) {
        if (m->lora_buf) m->ops->free(m->lora_buf);
        m->lora_buf = m->ops->alloc(need * sizeof(float));
        m->lora_cap = m->lora_buf ? need : 0;
        if (!m->lora_buf) m->gemm_failed = 1;
    }
    return m->lora_buf;
}

void fr_lora_forward(fr_model *m, const fr_lora_site *s, float *y, int ldy, const float *x, int ldx, int N) {
    const int r = m->lora_rank;
    float *u = N > 0 ? scratch(m, N) : NULL;
    if (!u) return;
    const float *A = m->params + s->a, *B = m->params + s->b;
    m->ops->gemm(0, 1, N, r, s->in, 1.0f, x, ldx, A, s->in, 0.0f, u, r);          /* u [N,r] = x A^T */
    m->ops->gemm(0, 1, N, s->out, r, m->lora_scale, u, r, B, r, 1.0f, y, ldy);   /* y += scale u B^T */
}

void fr_lora_backward_dx(fr_model *m, const fr_lora_site *s, float *dx, int lddx, const float *dy, int lddy, int N) {
    const int r = m->lora_rank;
    float *du = N > 0 ? scratch(m, N) : NULL;
    if (!du) return;
    du += (size_t)N * r;
    const float *A = m->params + s->a, *B = m->params + s->b;
    m->ops->gemm(0, 0, N, r, s->out, m->lora_scale, dy, lddy, B, r, 0.0f, du, r); /* du [N,r] = scale dy B */
    m->ops->gemm(0, 0, N, s->in, r, 1.0f, du, r, A, s->in, 1.0f, dx, lddx);      /* dx += du A */
}

void fr_lora_backward_dw(fr_model *m, const fr_lora_site *s, const float *dy, int lddy, const float *x, int ldx,
                         int N) {
    const int r = m->lora_rank;
    float *u = N > 0 ? scratch(m, N) : NULL;
    if (!u) return;
    float *du = u + (size_t)N * r;
    const float *A = m->params + s->a, *B = m->params + s->b;
    float *dA = m->grads + s->a, *dB = m->grads + s->b;
    m->ops->gemm(0, 1, N, r, s->in, 1.0f, x, ldx, A, s->in, 0.0f, u, r);                 /* u = x A^T */
    m->ops->gemm(0, 0, N, r, s->out, m->lora_scale, dy, lddy, B, r, 0.0f, du, r);        /* du = scale dy B */
    m->ops->gemm(1, 0, s->out, r, N, m->lora_scale, dy, lddy, u, r, 1.0f, dB, r);        /* dB += scale dy^T u */
    m->ops->gemm(1, 0, r, s->in, N, 1.0f, du, r, x, ldx, 1.0f, dA, s->in);               /* dA += du^T x */
}

/* ---------------------------------------------------------------- PEFT folders */

/* The adapters' values in host memory ([train_lo, n_params) of the arena); malloc'd */
static float *adapters_to_host(const fr_model *m) {
    const size_t n = m->n_params - m->train_lo;
    float *h = malloc(n * sizeof(float) + 1);
    if (h) m->ops->to_host(h, m->params + m->train_lo, n * sizeof(float));
    return h;
}

int fr_model_lora_save(const fr_model *m, const char *dir, const char *base_model) {
    fr_clear_error();
    if (!m || !dir) return fr_error(FR_ERR_ARG, "fr_model_lora_save: NULL argument");
    if (m->n_lora == 0) return fr_error(FR_ERR_STATE, "the model has no LoRA adapters to save");
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) return fr_error(FR_ERR_IO, "cannot create %s: %s", dir, strerror(errno));
    /* target_modules: one regex over the main layers' module paths, as PEFT matches it (re.fullmatch) */
    unsigned mask = 0;
    parse_targets(m->lora_targets, &mask);
    char regex[1024];
    int len = snprintf(regex, sizeof regex, "model\\.layers\\.[0-9]+\\.(");
    for (int i = 0, first = 1; i < N_TARGETS; i++)
        if (mask & targets[i].bit) {
            len += snprintf(regex + len, sizeof regex - (size_t)len, "%s%s", first ? "" : "|", targets[i].regex);
            first = 0;
        }
    snprintf(regex + len, sizeof regex - (size_t)len, ")");
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "base_model_name_or_path", base_model ? base_model : "");
    cJSON_AddStringToObject(j, "bias", "none");
    cJSON_AddBoolToObject(j, "fan_in_fan_out", 0);
    cJSON_AddBoolToObject(j, "inference_mode", 1);
    cJSON_AddBoolToObject(j, "init_lora_weights", 1);
    cJSON_AddNumberToObject(j, "lora_alpha", m->lora_alpha);
    cJSON_AddNumberToObject(j, "lora_dropout", 0.0);
    cJSON_AddStringToObject(j, "peft_type", "LORA");
    cJSON_AddNumberToObject(j, "r", m->lora_rank);
    cJSON_AddStringToObject(j, "target_modules", regex);
    cJSON_AddStringToObject(j, "task_type", "CAUSAL_LM");
    cJSON_AddBoolToObject(j, "use_dora", 0);
    cJSON_AddBoolToObject(j, "use_rslora", m->lora_rslora);
    char *text = cJSON_Print(j);
    cJSON_Delete(j);
    if (!text) return fr_error(FR_ERR_NOMEM, "out of memory");
    char path[4200];
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    int rc = fr_write_file_atomic(path, text, strlen(text));
    free(text);
    FR_CHECK(rc);

    const int n = m->n_tensors - m->n_base_tensors;
    float *host = adapters_to_host(m);
    fr_st_entry *e = calloc((size_t)n, sizeof *e);
    if (!host || !e) {
        free(host), free(e);
        return fr_error(FR_ERR_NOMEM, "out of memory saving the adapter");
    }
    for (int i = 0; i < n; i++) {
        const fr_tensor *t = &m->tensors[m->n_base_tensors + i];
        e[i] = (fr_st_entry){t->name, FR_DT_F32, 2, {t->shape[0], t->shape[1]}, host + (t->offset - m->train_lo)};
    }
    const char *mk[] = {"format"}, *mv[] = {"pt"};
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    rc = fr_st_write(path, e, n, mk, mv, 1);
    free(host);
    free(e);
    return rc;
}

/* adapter_config.json: rank, alpha, rsLoRA; anything that changes the arithmetic and that
 * frugal does not do (DoRA, per-module patterns, fan_in_fan_out) is refused by name */
static int read_adapter_config(const char *dir, int *rank, double *alpha, int *rslora) {
    char path[4200], *text = NULL;
    size_t len = 0;
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    FR_CHECK(fr_read_file(path, &text, &len));
    cJSON *j = cJSON_ParseWithLength(text, len);
    free(text);
    if (!j) return fr_error(FR_ERR_FORMAT, "%s is not valid JSON", path);
    int rc = FR_OK;
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(j, "peft_type");
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(j, "r");
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(j, "lora_alpha");
    if (!cJSON_IsString(type) || strcmp(type->valuestring, "LORA") != 0)
        rc = fr_error(FR_ERR_FORMAT, "%s: peft_type is not \"LORA\" (only LoRA adapters are supported)", path);
    else if (!cJSON_IsNumber(r) || r->valuedouble < 1 || r->valuedouble != (int)r->valuedouble)
        rc = fr_error(FR_ERR_FORMAT, "%s: \"r\" is missing or not a positive integer", path);
    else if (!cJSON_IsNumber(a) || !(a->valuedouble > 0))
        rc = fr_error(FR_ERR_FORMAT, "%s: \"lora_alpha\" is missing or not positive", path);
    static const char *const refused[] = {"use_dora", "fan_in_fan_out"};
    for (int i = 0; i < 2 && rc == FR_OK; i++)
        if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, refused[i])))
            rc = fr_error(FR_ERR_UNSUPPORTED, "%s: %s adapters are not supported", path, refused[i]);
    static const char *const patterns[] = {"rank_pattern", "alpha_pattern"};
    for (int i = 0; i < 2 && rc == FR_OK; i++) {
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(j, patterns[i]);
        if (cJSON_IsObject(p) && p->child)
            rc = fr_error(FR_ERR_UNSUPPORTED, "%s: a non-empty %s (per-module ranks or alphas) is not supported", path,
                          patterns[i]);
    }
    if (rc == FR_OK) {
        *rank = (int)r->valuedouble;
        *alpha = a->valuedouble;
        *rslora = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "use_rslora"));
    }
    cJSON_Delete(j);
    return rc;
}

int fr_model_lora_load(fr_model *m, const char *dir) {
    fr_clear_error();
    if (!m || !dir) return fr_error(FR_ERR_ARG, "fr_model_lora_load: NULL argument");
    if (m->n_lora == 0) return fr_error(FR_ERR_STATE, "the model has no LoRA adapters to load into");
    int rank, rslora;
    double alpha;
    FR_CHECK(read_adapter_config(dir, &rank, &alpha, &rslora));
    if (rank != m->lora_rank || alpha != m->lora_alpha || rslora != m->lora_rslora)
        return fr_error(FR_ERR_CONFIG, "%s: adapter r %d, lora_alpha %g%s; this run's adapters have r %d, alpha %g%s", dir,
                        rank, alpha, rslora ? " (rsLoRA)" : "", m->lora_rank, m->lora_alpha, m->lora_rslora ? " (rsLoRA)" : "");
    char path[4200];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    fr_st_file f;
    FR_CHECK(fr_st_open(&f, path));
    const int n = m->n_tensors - m->n_base_tensors;
    int rc = f.n_tensors == n ? FR_OK
                              : fr_error(FR_ERR_CONFIG, "%s holds %d tensors; this run's LoRA targets make %d", path,
                                         f.n_tensors, n);
    float *host = rc == FR_OK ? malloc((m->n_params - m->train_lo) * sizeof(float) + 1) : NULL;
    if (rc == FR_OK && !host) rc = fr_error(FR_ERR_NOMEM, "out of memory");
    if (host) memset(host, 0, (m->n_params - m->train_lo) * sizeof(float));
    for (int i = 0; i < n && rc == FR_OK; i++) {
        const fr_tensor *t = &m->tensors[m->n_base_tensors + i];
        const fr_st_tensor *s = fr_st_find(&f, t->name);
        if (!s) rc = fr_error(FR_ERR_CONFIG, "%s has no tensor %s", path, t->name);
        else if (s->ndim != 2 || s->shape[0] != t->shape[0] || s->shape[1] != t->shape[1])
            rc = fr_error(FR_ERR_CONFIG, "%s: %s has the wrong shape", path, t->name);
        else rc = fr_st_to_f32(s, host + (t->offset - m->train_lo), t->numel);
    }
    if (rc == FR_OK) m->ops->to_device(m->params + m->train_lo, host, (m->n_params - m->train_lo) * sizeof(float));
    free(host);
    fr_st_close(&f);
    return rc;
}

/* ---------------------------------------------------------------- merging */

static int ends_with(const char *s, const char *suffix) {
    const size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

int fr_model_merge_adapter(fr_model *m, const char *dir) {
    fr_clear_error();
    if (!m || !dir) return fr_error(FR_ERR_ARG, "fr_model_merge_adapter: NULL argument");
    if (m->n_lora > 0) return fr_error(FR_ERR_STATE, "cannot merge an adapter into a model that is training adapters");
    int rank, rslora;
    double alpha;
    FR_CHECK(read_adapter_config(dir, &rank, &alpha, &rslora));
    const double scale = rslora ? alpha / sqrt((double)rank) : alpha / rank;
    char path[4200];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    fr_st_file f;
    FR_CHECK(fr_st_open(&f, path));
    static const char prefix[] = "base_model.model.";
    int rc = FR_OK, merged = 0;
    float *w = NULL, *a = NULL, *b = NULL;
    for (int i = 0; i < f.n_tensors && rc == FR_OK; i++) {
        const fr_st_tensor *ta = &f.tensors[i];
        if (ends_with(ta->name, ".lora_B.weight")) continue; /* taken with its A */
        if (!ends_with(ta->name, ".lora_A.weight") || strncmp(ta->name, prefix, sizeof prefix - 1) != 0) {
            rc = fr_error(FR_ERR_UNSUPPORTED, "%s: tensor %s is not a LoRA A or B matrix of a linear layer", path, ta->name);
            break;
        }
        const size_t mod_len = strlen(ta->name) - (sizeof prefix - 1) - 14;
        char base[300], bname[300];
        snprintf(base, sizeof base, "%.*s.weight", (int)mod_len, ta->name + sizeof prefix - 1);
        snprintf(bname, sizeof bname, "%.*s.lora_B.weight", (int)(strlen(ta->name) - 14), ta->name);
        const fr_st_tensor *tb = fr_st_find(&f, bname);
        const fr_tensor *t = fr_model_find_tensor(m, base);
        if (!tb) rc = fr_error(FR_ERR_FORMAT, "%s: %s has no %s", path, ta->name, bname);
        else if (!t || t->ndim != 2)
            rc = fr_error(FR_ERR_CONFIG, "%s adapts %s, which this model does not have", dir, base);
        else if (ta->ndim != 2 || tb->ndim != 2 || ta->shape[0] != rank || tb->shape[1] != rank ||
                 ta->shape[1] != t->shape[1] || tb->shape[0] != t->shape[0])
            rc = fr_error(FR_ERR_CONFIG, "%s: the adapter of %s has shapes that do not fit [%lld, %lld] with r %d", dir, base,
                          (long long)t->shape[0], (long long)t->shape[1], rank);
        if (rc != FR_OK) break;
        const int out = (int)t->shape[0], in = (int)t->shape[1];
        const size_t numel = t->numel;
        float *dst = m->params + t->offset;
        float *nw = realloc(w, numel * sizeof(float)), *na = realloc(a, ta->numel * sizeof(float)),
              *nb = realloc(b, tb->numel * sizeof(float));
        if (nw) w = nw;
        if (na) a = na;
        if (nb) b = nb;
        if (!nw || !na || !nb) {
            rc = fr_error(FR_ERR_NOMEM, "out of memory merging %s", base);
            break;
        }
        rc = fr_st_to_f32(ta, a, ta->numel);
        if (rc == FR_OK) rc = fr_st_to_f32(tb, b, tb->numel);
        if (rc != FR_OK) break;
        m->ops->to_host(w, dst, numel * sizeof(float));
        /* W += scale * B A, each element's rank sum in double */
#pragma omp parallel for schedule(static)
        for (int o = 0; o < out; o++)
            for (int c = 0; c < in; c++) {
                double acc = 0;
                for (int k = 0; k < rank; k++) acc += (double)b[(size_t)o * rank + k] * a[(size_t)k * in + c];
                w[(size_t)o * in + c] += (float)(scale * acc);
            }
        m->ops->to_device(dst, w, numel * sizeof(float));
        merged++;
    }
    free(w), free(a), free(b);
    fr_st_close(&f);
    if (rc == FR_OK && merged == 0) rc = fr_error(FR_ERR_FORMAT, "%s holds no LoRA matrices", path);
    return rc;
}

/* ---------------------------------------------------------------- a quantized frozen base
 *
 * QLoRA (Dettmers et al. 2023) keeps the frozen base in 4 bits and dequantizes it for each
 * product. Here the base's block linears (MLA projections, dense MLP, shared and routed
 * experts, eh_proj) can be kept as BF16 or Q8_0 (formats/qmatrix.h): each product dequantizes
 * the span of weights it reads into a scratch buffer and runs the FP32 GEMM on it, so the
 * result equals the FP32 model whose base weights are the dequantized values, bit for bit.
 * The FP32 pages of those matrices, and the base's gradient pages, are handed back to the
 * kernel (madvise DONTNEED): resident memory drops by 4 - (1.06 or 2) bytes per weight, less
 * the scratch. The embedding, the output head and the routers stay FP32. */

struct fr_frozen_q {
    size_t off, numel;
    fr_qmatrix q;
};

/* Release the whole pages inside [p, p + bytes) (their contents become zero) */
static void release_pages(void *p, size_t bytes) {
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    uintptr_t lo = ((uintptr_t)p + page - 1) & ~(uintptr_t)(page - 1), hi = ((uintptr_t)p + bytes) & ~(uintptr_t)(page - 1);
    if (hi > lo) madvise((void *)lo, hi - lo, MADV_DONTNEED);
}

int fr_model_lora_quantize_base(fr_model *m, const char *type) {
    fr_clear_error();
    if (!m || !type) return fr_error(FR_ERR_ARG, "fr_model_lora_quantize_base: NULL argument");
    const int t = fr_qtype_parse(type);
    if (t == FR_QT_F32) return FR_OK;
    if (t != FR_QT_BF16 && t != FR_QT_Q8_0)
        return fr_error(FR_ERR_ARG, "the frozen base can be stored as f32, bf16 or q8_0, not '%s'", type);
    if (m->n_lora == 0) return fr_error(FR_ERR_STATE, "a quantized frozen base needs LoRA adapters (the base must be frozen)");
    if (m->n_frozen_q) return fr_error(FR_ERR_STATE, "the frozen base is already quantized");
    if (!m->ops->host_memory)
        return fr_error(FR_ERR_UNSUPPORTED, "a quantized frozen base runs on the CPU backend only (not on %s)", m->ops->name);
    m->frozen_q = calloc((size_t)m->n_base_tensors + 1, sizeof *m->frozen_q);
    if (!m->frozen_q) return fr_error(FR_ERR_NOMEM, "out of memory");
    int rc = FR_OK;
    for (int i = 0; i < m->n_base_tensors && rc == FR_OK; i++) {
        const fr_tensor *te = &m->tensors[i];
        int layer, at = 0;
        /* the block linears: every 2-D tensor of a layer but its router */
        if (te->ndim != 2 || sscanf(te->name, "model.layers.%d.%n", &layer, &at) != 1 || at == 0 ||
            !strcmp(te->name + at, "mlp.gate.weight"))
            continue;
        if (t == FR_QT_Q8_0 && te->shape[1] % FR_QBLOCK) continue; /* (rows that blocks cannot hold stay FP32) */
        struct fr_frozen_q *f = &m->frozen_q[m->n_frozen_q];
        rc = fr_qmatrix_from_f32(&f->q, (fr_qtype)t, m->params + te->offset, (int)te->shape[0], (int)te->shape[1]);
        if (rc != FR_OK) break;
        f->off = te->offset;
        f->numel = te->numel;
        m->n_frozen_q++;
        release_pages(m->params + te->offset, te->numel * sizeof(float));
    }
    if (rc != FR_OK) return rc; /* (what was quantized stays consistent: its copies are in use) */
    m->frozen_type = t;
    release_pages(m->grads, m->train_lo * sizeof(float)); /* the frozen base gets no gradients */
    return FR_OK;
}

size_t fr_model_lora_base_bytes(const fr_model *m, size_t *fp32_bytes) {
    size_t q = 0, f = 0;
    for (int i = 0; m && i < m->n_frozen_q; i++) {
        q += (size_t)m->frozen_q[i].q.rows * fr_qtype_row_bytes(m->frozen_q[i].q.type, m->frozen_q[i].q.cols);
        f += m->frozen_q[i].numel * sizeof(float);
    }
    if (fp32_bytes) *fp32_bytes = f;
    return q;
}

const float *fr_lora_weights(fr_model *m, int slot, const float *w, size_t n) {
    if (!m->n_frozen_q) return w;
    const size_t lo = (size_t)(w - m->params), hi = lo + n;
    /* the first quantized matrix ending after lo */
    int a = 0, b = m->n_frozen_q;
    while (a < b) {
        const int mid = (a + b) / 2;
        if (m->frozen_q[mid].off + m->frozen_q[mid].numel <= lo) a = mid + 1;
        else b = mid;
    }
    if (a == m->n_frozen_q || m->frozen_q[a].off >= hi) return w; /* nothing quantized in the span */
    if (m->deq_cap[slot] < n) {
        free(m->deq_buf[slot]);
        m->deq_buf[slot] = malloc(n * sizeof(float));
        m->deq_cap[slot] = m->deq_buf[slot] ? n : 0;
        if (!m->deq_buf[slot]) {
            m->gemm_failed = 1;
            return NULL;
        }
    }
    float *dst = m->deq_buf[slot], *row = NULL;
    /* every quantized matrix's rows inside the span (a span is one matrix, part of one, or a
     * run of same-shaped experts: all quantized or none; the gaps between them are never read) */
    for (int k = a; k < m->n_frozen_q && m->frozen_q[k].off < hi; k++) {
        const struct fr_frozen_q *f = &m->frozen_q[k];
        const size_t cols = (size_t)f->q.cols;
        for (int r = 0; r < f->q.rows; r++) {
            const size_t at = f->off + (size_t)r * cols;
            if (at + cols <= lo || at >= hi) continue;
            if (at >= lo && at + cols <= hi) {
                fr_qmatrix_row_f32(&f->q, r, dst + (at - lo));
                continue;
            }
            if (!row && !(row = malloc(cols * sizeof *row))) { /* a row cut by the span's ends */
                m->gemm_failed = 1;
                return NULL;
            }
            fr_qmatrix_row_f32(&f->q, r, row);
            const size_t from = at > lo ? at : lo, to = at + cols < hi ? at + cols : hi;
            memcpy(dst + (from - lo), row + (from - at), (to - from) * sizeof *row);
        }
    }
    free(row);
    return dst;
}

void fr_lora_free_base(fr_model *m) {
    for (int i = 0; i < m->n_frozen_q; i++) fr_qmatrix_free(&m->frozen_q[i].q);
    free(m->frozen_q);
    free(m->deq_buf[0]), free(m->deq_buf[1]);
}
