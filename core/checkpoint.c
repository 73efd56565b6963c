#include "core/checkpoint.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/model.h"
#include "core/params.h"
#include "kernels/backend.h"

static const char *kind_name[] = {"iisan", "sasrec-id", "popularity"};
static const char *tower_names[N_TOWERS] = {"image", "text", "inter"};
static const char *mod_names[N_MODS] = {"text", "image"};

static json_t *sched_json(int K, const int *sched) {
    json_t *a = json_array();
    for (int k = 0; k < K; k++)
        json_array_append_new(a, json_integer(sched[k]));
    return a;
}

/* Versa: {"text": {"D", "nstates", "schedule", "remove_first"}, "image": {...}} */
static json_t *modalities_json(const iisan_config *c) {
    json_t *o = json_object();
    for (int mod = 0; mod < N_MODS; mod++) {
        const iisan_modality *v = &c->mods[mod];
        json_t *x = json_object();
        json_object_set_new(x, "D", json_integer(v->D));
        json_object_set_new(x, "nstates", json_integer(v->nstates));
        json_object_set_new(x, "schedule", sched_json(v->K, v->sched));
        json_object_set_new(x, "remove_first", json_boolean(v->remove_first));
        json_object_set_new(o, mod_names[mod], x);
    }
    return o;
}

static int get_int(json_t *o, const char *k, int *v, char *err, int errlen);

static int read_sched(json_t *sched, int *K, int *out, char *err, int errlen) {
    if (!json_is_array(sched) || json_array_size(sched) > IISAN_MAX_SCHED) {
        snprintf(err, errlen, "model config: bad 'schedule'");
        return -1;
    }
    *K = (int)json_array_size(sched);
    for (int k = 0; k < *K; k++)
        out[k] = (int)json_integer_value(json_array_get(sched, k));
    return 0;
}

static int modalities_from_json(json_t *o, iisan_config *c, char *err, int errlen) {
    for (int mod = 0; mod < N_MODS; mod++) {
        json_t *x = json_object_get(json_object_get(o, "modalities"), mod_names[mod]);
        iisan_modality *v = &c->mods[mod];
        if (!json_is_object(x)) {
            snprintf(err, errlen, "model config: IISAN-Versa without the %s modality's shape",
                     mod_names[mod]);
            return -1;
        }
        if (get_int(x, "D", &v->D, err, errlen) ||
            get_int(x, "nstates", &v->nstates, err, errlen) ||
            read_sched(json_object_get(x, "schedule"), &v->K, v->sched, err, errlen))
            return -1;
        v->remove_first = json_is_true(json_object_get(x, "remove_first"));
    }
    return 0;
}

char *config_to_json(const iisan_config *c, int min_len) {
    json_t *o = json_object();
    json_t *sched = json_array(), *towers = json_array();
    for (int k = 0; k < c->K && c->arch != ARCH_VERSA; k++)
        json_array_append_new(sched, json_integer(c->sched[k]));
    for (int t = 0; t < N_TOWERS; t++)
        if ((c->towers >> t) & 1) json_array_append_new(towers, json_string(tower_names[t]));
    json_object_set_new(o, "model", json_string(kind_name[c->kind]));
    json_object_set_new(o, "arch", json_string(c->arch == ARCH_VERSA ? "versa" : "iisan"));
    if (c->arch == ARCH_VERSA) json_object_set_new(o, "modalities", modalities_json(c));
    json_object_set_new(o, "D", json_integer(c->D));
    json_object_set_new(o, "nstates", json_integer(c->nstates));
    json_object_set_new(o, "r", json_integer(c->r));
    json_object_set_new(o, "schedule", sched);
    json_object_set_new(o, "remove_first", json_boolean(c->remove_first));
    json_object_set_new(o, "inter_start", json_integer(c->inter_start));
    json_object_set_new(o, "pv_init", json_integer(c->pv_init));
    json_object_set_new(o, "act", json_string(c->act == IISAN_ACT_GELU ? "gelu" : "relu"));
    json_object_set_new(o, "gate_temp", json_real(c->gate_temp));
    json_object_set_new(o, "towers", towers);
    json_object_set_new(o, "n_items", json_integer(c->n_items));
    json_object_set_new(o, "d", json_integer(c->d));
    json_object_set_new(o, "n", json_integer(c->n));
    json_object_set_new(o, "heads", json_integer(c->heads));
    json_object_set_new(o, "dropout", json_real(c->dropout));
    json_object_set_new(o, "ln_eps", json_real(c->ln_eps));
    json_object_set_new(o, "min_len", json_integer(min_len));
    char *s = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(o);
    return s;
}

void config_describe(const iisan_config *c, char *out, size_t cap) {
    size_t at = 0;
#define PUT(...)                                                                                   \
    do {                                                                                           \
        if (at < cap) at += (size_t)snprintf(out + at, cap - at, __VA_ARGS__);                     \
    } while (0)
    if (cap) out[0] = 0;
    PUT("%s", kind_name[c->kind]);
    if (c->kind == MODEL_IISAN) {
        PUT(": towers");
        const char *sep = " ";
        for (int t = 0; t < N_TOWERS; t++)
            if ((c->towers >> t) & 1) {
                PUT("%s%s", sep, tower_names[t]);
                sep = "+";
            }
        if (c->arch == ARCH_VERSA) {
            static const char *mn[N_MODS] = {"text", "image"};
            for (int mo = 0; mo < N_MODS; mo++) {
                const iisan_modality *v = &c->mods[mo];
                PUT(", %s %d states x %d schedule %s", mn[mo], v->nstates, v->D,
                    v->remove_first ? "remove-first " : "");
                for (int k = 0; k < v->K; k++)
                    PUT("%s%d", k ? "," : "", v->sched[k]);
            }
            PUT(", r %d, %s (versa)", c->r, c->act == IISAN_ACT_GELU ? "gelu" : "relu");
        } else {
            PUT(", schedule %s", c->remove_first ? "remove-first " : "");
            for (int k = 0; k < c->K; k++)
                PUT("%s%d", k ? "," : "", c->sched[k]);
            PUT(", r %d, %s, %d states x %d", c->r, c->act == IISAN_ACT_GELU ? "gelu" : "relu",
                c->nstates, c->D);
        }
    } else if (c->kind == MODEL_SASREC_ID) {
        PUT(": %d items", c->n_items);
    }
    PUT(", d %d, n %d", c->d, c->n);
    if (c->kind == MODEL_IISAN && c->arch != ARCH_VERSA) {
        PUT(", P_v init v%d", c->pv_init);
        if (c->remove_first) PUT(", inter start v%d", c->inter_start);
    }
#undef PUT
}

static int get_int(json_t *o, const char *k, int *v, char *err, int errlen) {
    json_t *x = json_object_get(o, k);
    if (!json_is_integer(x)) {
        snprintf(err, errlen, "model config: '%s' missing or not an integer", k);
        return -1;
    }
    *v = (int)json_integer_value(x);
    return 0;
}

static int get_num(json_t *o, const char *k, float *v, char *err, int errlen) {
    json_t *x = json_object_get(o, k);
    if (!json_is_number(x)) {
        snprintf(err, errlen, "model config: '%s' missing or not a number", k);
        return -1;
    }
    *v = (float)json_number_value(x);
    return 0;
}

int config_from_json(const char *json, size_t len, iisan_config *c, int *min_len, char *err,
                     int errlen) {
    json_error_t je;
    json_t *o = json_loadb(json, len, 0, &je);
    if (!json_is_object(o)) {
        snprintf(err, errlen, "model config is not a JSON object: %s", je.text);
        json_decref(o);
        return -1;
    }
    config_default(c);
    int rc = -1;
    const char *kind = json_string_value(json_object_get(o, "model"));
    c->kind = -1;
    for (int i = 0; kind && i < 3; i++)
        if (!strcmp(kind, kind_name[i])) c->kind = i;
    if (c->kind < 0) {
        snprintf(err, errlen, "model config: unknown model '%s'", kind ? kind : "(none)");
        goto out;
    }
    if (get_int(o, "D", &c->D, err, errlen) || get_int(o, "nstates", &c->nstates, err, errlen) ||
        get_int(o, "r", &c->r, err, errlen) || get_int(o, "n_items", &c->n_items, err, errlen) ||
        get_int(o, "d", &c->d, err, errlen) || get_int(o, "n", &c->n, err, errlen) ||
        get_int(o, "heads", &c->heads, err, errlen) ||
        get_int(o, "min_len", min_len, err, errlen) ||
        get_num(o, "gate_temp", &c->gate_temp, err, errlen) ||
        get_num(o, "dropout", &c->dropout, err, errlen) ||
        get_num(o, "ln_eps", &c->ln_eps, err, errlen))
        goto out;
    c->remove_first = json_is_true(json_object_get(o, "remove_first"));
    /* the model-side rules (spec version 1 or 2); checkpoints written before version 2 lack
     * them and were trained under version 1 */
    json_t *is = json_object_get(o, "inter_start"), *pv = json_object_get(o, "pv_init");
    c->inter_start = json_is_integer(is) ? (int)json_integer_value(is) : IISAN_RULES_V1;
    c->pv_init = json_is_integer(pv) ? (int)json_integer_value(pv) : IISAN_RULES_V1;
    if ((c->inter_start != IISAN_RULES_V1 && c->inter_start != IISAN_RULES_V2) ||
        (c->pv_init != IISAN_RULES_V1 && c->pv_init != IISAN_RULES_V2)) {
        snprintf(err, errlen, "model config: 'inter_start' and 'pv_init' must be 1 or 2");
        goto out;
    }
    const char *act = json_string_value(json_object_get(o, "act"));
    c->act = act && !strcmp(act, "gelu") ? IISAN_ACT_GELU : IISAN_ACT_RELU;
    if (read_sched(json_object_get(o, "schedule"), &c->K, c->sched, err, errlen)) goto out;
    const char *arch = json_string_value(json_object_get(o, "arch"));
    if (arch && strcmp(arch, "iisan") && strcmp(arch, "versa")) {
        snprintf(err, errlen, "model config: unknown arch '%s' (iisan or versa)", arch);
        goto out;
    }
    c->arch = arch && !strcmp(arch, "versa") ? ARCH_VERSA : ARCH_IISAN;
    if (c->arch == ARCH_VERSA && modalities_from_json(o, c, err, errlen)) goto out;
    json_t *towers = json_object_get(o, "towers");
    c->towers = 0;
    for (size_t i = 0; i < json_array_size(towers); i++) {
        const char *t = json_string_value(json_array_get(towers, i));
        for (int j = 0; t && j < N_TOWERS; j++)
            if (!strcmp(t, tower_names[j])) c->towers |= 1 << j;
    }
    if (c->kind != MODEL_POPULARITY && config_check(c, err, errlen)) goto out;
    rc = 0;
out:
    json_decref(o);
    return rc;
}

static void put_u32(unsigned char *p, uint32_t v) { memcpy(p, &v, 4); }
static uint32_t get_u32(const unsigned char *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

void *ckpt_encode(const iisan_ckpt *ck, size_t *len) {
    char *js = config_to_json(&ck->c, ck->min_len);
    if (!js) return NULL;
    size_t J = strlen(js), jpad = (J + 3) & ~(size_t)3;
    size_t total = 16 + jpad + 4 + 4 * (size_t)ck->n_cat + 8 + 4 * ck->nparams;
    unsigned char *b = calloc(1, total);
    if (!b) {
        free(js);
        return NULL;
    }
    memcpy(b, IISAN_CKPT_MAGIC, 8);
    put_u32(b + 8, IISAN_CKPT_VERSION);
    put_u32(b + 12, (uint32_t)J);
    memcpy(b + 16, js, J);
    free(js);
    unsigned char *p = b + 16 + jpad;
    put_u32(p, ck->n_cat);
    memcpy(p + 4, ck->item_cat, 4 * (size_t)ck->n_cat);
    p += 4 + 4 * (size_t)ck->n_cat;
    memcpy(p, &ck->nparams, 8);
    memcpy(p + 8, ck->params, 4 * ck->nparams);
    *len = total;
    return b;
}

int ckpt_decode(const void *blob, size_t len, iisan_ckpt *ck, char *err, int errlen) {
    const unsigned char *b = blob;
    memset(ck, 0, sizeof *ck);
    if (len < 16 || memcmp(b, IISAN_CKPT_MAGIC, 8)) {
        snprintf(err, errlen, "not an iisan checkpoint (bad magic)");
        return -1;
    }
    uint32_t ver = get_u32(b + 8), J = get_u32(b + 12);
    if (ver != IISAN_CKPT_VERSION) {
        snprintf(err, errlen,
                 "checkpoint format %u, this build reads %u: export it with the build that "
                 "wrote it (iisan export) and import the safetensors file",
                 ver, IISAN_CKPT_VERSION);
        return -1;
    }
    size_t jpad = ((size_t)J + 3) & ~(size_t)3;
    if (16 + jpad + 4 > len) goto trunc;
    if (config_from_json((const char *)b + 16, J, &ck->c, &ck->min_len, err, errlen)) return -1;
    const unsigned char *p = b + 16 + jpad;
    ck->n_cat = get_u32(p);
    if ((size_t)(p - b) + 4 + 4 * (size_t)ck->n_cat + 8 > len) goto trunc;
    p += 4;
    ck->item_cat = malloc(4 * (size_t)ck->n_cat + 4);
    if (!ck->item_cat) goto oom;
    memcpy(ck->item_cat, p, 4 * (size_t)ck->n_cat);
    p += 4 * (size_t)ck->n_cat;
    memcpy(&ck->nparams, p, 8);
    p += 8;
    if (ck->nparams > (len - (size_t)(p - b)) / 4 || (size_t)(p - b) + 4 * ck->nparams != len)
        goto trunc;
    param_table pt;
    if (ck->c.kind != MODEL_POPULARITY) {
        if (params_build(&pt, &ck->c)) goto oom;
        size_t want = pt.total;
        params_free(&pt);
        if (want != ck->nparams) {
            snprintf(err, errlen, "checkpoint holds %llu parameters, its config needs %zu",
                     (unsigned long long)ck->nparams, want);
            ckpt_free(ck);
            return -1;
        }
    }
    ck->params = malloc(4 * ck->nparams + 4);
    if (!ck->params) goto oom;
    memcpy(ck->params, p, 4 * ck->nparams);
    return 0;
trunc:
    snprintf(err, errlen, "checkpoint is truncated (%zu bytes)", len);
    ckpt_free(ck);
    return -1;
oom:
    snprintf(err, errlen, "out of memory reading a checkpoint");
    ckpt_free(ck);
    return -1;
}

void ckpt_free(iisan_ckpt *ck) {
    free(ck->item_cat);
    free(ck->params);
    ck->item_cat = NULL;
    ck->params = NULL;
}

void *ckpt_encode_model(const iisan_model *m, const uint32_t *item_cat, int n_items, int min_len,
                        size_t *len) {
    iisan_ckpt ck = {0};
    ck.c = m->c;
    ck.min_len = min_len;
    ck.n_cat = (uint32_t)n_items + 1;
    ck.item_cat = (uint32_t *)item_cat;
    ck.nparams = m->pt.total;
    ck.params = malloc(m->pt.total * sizeof(float));
    if (!ck.params) return NULL;
    m->be->download(m->be, ck.params, m->w, m->pt.total * sizeof(float));
    void *blob = ckpt_encode(&ck, len);
    free(ck.params);
    return blob;
}
