#include "core/config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/backend.h"

void config_default(iisan_config *c) {
    memset(c, 0, sizeof *c);
    c->kind = MODEL_IISAN;
    c->D = 768;
    c->nstates = 13;
    c->r = 64;
    c->K = 7;
    for (int k = 0; k < 7; k++)
        c->sched[k] = 2 * k;
    c->remove_first = 0;
    c->inter_start = IISAN_RULES_V2;
    c->pv_init = IISAN_RULES_V2;
    c->act = IISAN_ACT_RELU;
    c->gate_temp = 0.1f;
    c->towers = (1 << TOWER_IMAGE) | (1 << TOWER_TEXT) | (1 << TOWER_INTER);
    c->n_items = 0;
    c->d = 64;
    c->n = 10;
    c->heads = 2;
    c->dropout = 0.1f;
    c->ln_eps = 1e-6f;
}

void train_config_default(iisan_train_config *t) {
    memset(t, 0, sizeof *t);
    t->batch = 64;
    t->epochs = 100;
    t->patience = 10;
    t->lr_san = 1e-4f;
    t->lr = 2e-4f;
    t->beta1 = 0.9f;
    t->beta2 = 0.999f;
    t->eps = 1e-8f;
    t->seed = 42;
    t->min_len = 5;
    t->max_steps = 0;
    t->lr_groups = IISAN_RULES_V2;
    t->early_stop = IISAN_RULES_V2;
    t->eval_rule = IISAN_RULES_V2;
}

void train_lr_table(const iisan_train_config *t, float lr[LR_NGROUPS]) {
    int v2 = t->lr_groups != IISAN_RULES_V1;
    lr[LRG_SAN] = t->lr_san;
    lr[LRG_GATE_IMAGE] = t->lr_san;
    lr[LRG_GATE_TEXT] = v2 ? t->lr : t->lr_san;
    lr[LRG_GATE_INTER] = v2 ? t->lr : t->lr_san;
    lr[LRG_FC_TEXT] = v2 ? 0.5f * t->lr_san : t->lr;
    lr[LRG_FC_IMAGE] = v2 ? t->lr_san : t->lr;
    lr[LRG_OTHER] = t->lr;
}

void config_set_rules(iisan_config *c, iisan_train_config *t, int version) {
    if (c) {
        c->inter_start = version;
        c->pv_init = version;
    }
    if (t) {
        t->lr_groups = version;
        t->early_stop = version;
        t->eval_rule = version;
    }
}

/* a named schedule or an explicit list over states 0..nstates-1 into sched/K/remove_first */
static int parse_schedule(int nstates, const char *spec, int *K, int *sched, int *remove_first,
                          char *err, int errlen) {
    int L = nstates - 1;
    *remove_first = 0;
    *K = 0;
    if (!strcmp(spec, "every2")) {
        for (int s = 0; s <= L; s += 2)
            sched[(*K)++] = s;
    } else if (!strcmp(spec, "all")) {
        for (int s = 0; s <= L; s++)
            sched[(*K)++] = s;
    } else if (!strcmp(spec, "top")) {
        for (int s = L / 2; s <= L; s++)
            sched[(*K)++] = s;
    } else if (!strcmp(spec, "remove-first")) {
        *remove_first = 1;
        for (int s = 2; s <= L; s += 2)
            sched[(*K)++] = s;
    } else {
        const char *p = spec;
        if (!strncmp(p, "rf:", 3)) { /* "rf:2,4,6": remove-first with a list */
            *remove_first = 1;
            p += 3;
        }
        while (*p) {
            char *end;
            long v = strtol(p, &end, 10);
            if (end == p || v < 0 || v > L || *K >= IISAN_MAX_SCHED || (*K && v <= sched[*K - 1])) {
                snprintf(err, errlen,
                         "bad schedule '%s': want every2, all, top, remove-first or an "
                         "increasing list of state indexes in 0..%d such as 0,2,4",
                         spec, L);
                return -1;
            }
            sched[(*K)++] = (int)v;
            p = end;
            if (*p == ',')
                p++;
            else if (*p) {
                snprintf(err, errlen, "bad schedule '%s': unexpected '%c'", spec, *p);
                return -1;
            }
        }
    }
    if (*K == 0 || *K > IISAN_MAX_SCHED) {
        snprintf(err, errlen, "schedule '%s' is %s", spec,
                 *K ? "longer than " IISAN_MAX_SCHED_STR " entries" : "empty");
        return -1;
    }
    return 0;
}

int config_set_schedule(iisan_config *c, const char *spec, char *err, int errlen) {
    return parse_schedule(c->nstates, spec, &c->K, c->sched, &c->remove_first, err, errlen);
}

int config_set_schedule_mod(iisan_config *c, int mod, const char *spec, char *err, int errlen) {
    iisan_modality *v = &c->mods[mod];
    return parse_schedule(v->nstates, spec, &v->K, v->sched, &v->remove_first, err, errlen);
}

int config_nstates(const iisan_config *c, int mod) {
    return c->arch == ARCH_VERSA ? c->mods[mod].nstates : c->nstates;
}

int config_width(const iisan_config *c, int mod) {
    return c->arch == ARCH_VERSA ? c->mods[mod].D : c->D;
}

int config_versa_wide(const iisan_config *c) {
    int dt = c->mods[MOD_TEXT].D, dv = c->mods[MOD_IMAGE].D;
    return dt > dv ? MOD_TEXT : dv > dt ? MOD_IMAGE : -1;
}

int config_tower_width(const iisan_config *c, int t) {
    if (c->arch != ARCH_VERSA) return c->D;
    int dt = c->mods[MOD_TEXT].D, dv = c->mods[MOD_IMAGE].D;
    return t == TOWER_TEXT ? dt : t == TOWER_IMAGE ? dv : dt < dv ? dt : dv;
}

int config_tower_depth(const iisan_config *c, int t) {
    if (c->arch != ARCH_VERSA) return c->K;
    int kt = c->mods[MOD_TEXT].K, kv = c->mods[MOD_IMAGE].K;
    return t == TOWER_TEXT ? kt : t == TOWER_IMAGE ? kv : kt < kv ? kt : kv;
}

int config_ntowers(const iisan_config *c) {
    int k = 0;
    for (int t = 0; t < N_TOWERS; t++)
        k += (c->towers >> t) & 1;
    return k;
}

static int versa_check(const iisan_config *c, char *err, int errlen) {
    static const char *what[N_MODS] = {"text", "image"};
    for (int mod = 0; mod < N_MODS; mod++) {
        const iisan_modality *v = &c->mods[mod];
        if (v->D <= 0 || v->nstates <= 0 || v->K <= 0 || v->K > IISAN_MAX_SCHED) {
            snprintf(err, errlen, "bad IISAN-Versa %s sizes (D %d, states %d, K %d)", what[mod],
                     v->D, v->nstates, v->K);
            return -1;
        }
        for (int k = 0; k < v->K; k++)
            if (v->sched[k] < 0 || v->sched[k] >= v->nstates ||
                (k && v->sched[k] <= v->sched[k - 1])) {
                snprintf(err, errlen,
                         "%s schedule entry %d: want increasing state indexes in 0..%d", what[mod],
                         v->sched[k], v->nstates - 1);
                return -1;
            }
    }
    return 0;
}

int config_check(const iisan_config *c, char *err, int errlen) {
    if (c->d <= 0 || c->n <= 0 || c->heads <= 0 || c->d % c->heads) {
        snprintf(err, errlen, "embedding size %d must be a positive multiple of heads %d", c->d,
                 c->heads);
        return -1;
    }
    if (c->dropout < 0 || c->dropout >= 1) {
        snprintf(err, errlen, "dropout %g must be in [0, 1)", c->dropout);
        return -1;
    }
    if (c->kind == MODEL_IISAN && c->arch != ARCH_IISAN && c->arch != ARCH_VERSA) {
        snprintf(err, errlen, "unknown item architecture %d", c->arch);
        return -1;
    }
    if (c->kind == MODEL_IISAN && c->arch == ARCH_VERSA) {
        if (c->r <= 0 || versa_check(c, err, errlen)) {
            if (c->r <= 0) snprintf(err, errlen, "bad SAN bottleneck r %d", c->r);
            return -1;
        }
        if (config_ntowers(c) == 0) {
            snprintf(err, errlen, "no item tower enabled");
            return -1;
        }
    } else if (c->kind == MODEL_IISAN) {
        if (c->D <= 0 || c->r <= 0 || c->nstates <= 0 || c->K <= 0 || c->K > IISAN_MAX_SCHED) {
            snprintf(err, errlen, "bad IISAN sizes (D %d, r %d, states %d, K %d)", c->D, c->r,
                     c->nstates, c->K);
            return -1;
        }
        for (int k = 0; k < c->K; k++)
            if (c->sched[k] < 0 || c->sched[k] >= c->nstates) {
                snprintf(err, errlen, "schedule entry %d out of range 0..%d", c->sched[k],
                         c->nstates - 1);
                return -1;
            }
        if (config_ntowers(c) == 0) {
            snprintf(err, errlen, "no item tower enabled");
            return -1;
        }
    } else if (c->kind == MODEL_SASREC_ID && c->n_items <= 0) {
        snprintf(err, errlen, "SASRec-ID needs the number of items");
        return -1;
    }
    return 0;
}
