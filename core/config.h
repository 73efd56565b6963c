/* Model and training configuration: the spec's published settings are the
 * defaults (config_default). */
#ifndef IISAN_CORE_CONFIG_H
#define IISAN_CORE_CONFIG_H

#include <stdint.h>

#define IISAN_MAX_SCHED 64
#define IISAN_MAX_SCHED_STR "64"
#define IISAN_SEQ_LAYERS 2

enum iisan_model_kind { MODEL_IISAN = 0, MODEL_SASREC_ID = 1, MODEL_POPULARITY = 2 };

/* item-side architecture of MODEL_IISAN: symmetric IISAN (Dt = Dv, one schedule) or
 * IISAN-Versa (each modality its own width, depth and schedule; spec, last section) */
enum iisan_arch { ARCH_IISAN = 0, ARCH_VERSA = 1 };

/* the hidden-state modalities, as the store numbers them */
enum { MOD_TEXT = 0, MOD_IMAGE = 1, N_MODS = 2 };

/* one modality's states and schedule (Versa) */
typedef struct {
    int D;                      /* width */
    int nstates;                /* L + 1 */
    int K;                      /* schedule length */
    int sched[IISAN_MAX_SCHED]; /* hidden-state indexes feeding the intra blocks */
    int remove_first;           /* the intra running state starts from state 0 */
} iisan_modality;

/* towers of the item encoder, in fusion order [z_img ; z_text ; z_mm] */
enum { TOWER_IMAGE = 0, TOWER_TEXT = 1, TOWER_INTER = 2, N_TOWERS = 3 };

/* Learning-rate groups (spec: Training). Every parameter belongs to one; the rate of each
 * group comes from the training config's rule (train_lr_table). */
enum {
    LRG_SAN,        /* SAN blocks of every tower */
    LRG_GATE_IMAGE, /* the image tower's gates */
    LRG_GATE_TEXT,  /* the text tower's gates */
    LRG_GATE_INTER, /* the inter tower's gates */
    LRG_FC_TEXT,    /* F_t */
    LRG_FC_IMAGE,   /* F_v */
    LRG_OTHER,      /* the P layers, F_x, fusion, the sequence encoder, positions */
    LR_NGROUPS
};

/* Each rule field below holds the version of ../shared/spec/model.md whose rule it follows:
 * 2 (the default) or 1 (kept to reproduce earlier figures). */
#define IISAN_RULES_V1 1
#define IISAN_RULES_V2 2

typedef struct {
    int kind; /* iisan_model_kind */
    /* item side (IISAN) */
    int D;                       /* backbone width (Dt = Dv) */
    int nstates;                 /* L + 1 hidden states per item and modality */
    int r;                       /* SAN bottleneck, 64 */
    int K;                       /* schedule length */
    int sched[IISAN_MAX_SCHED];  /* hidden-state indexes feeding the blocks */
    int remove_first;            /* running state starts from state 0 */
    int inter_start;             /* remove-first inter SAN: u_0 = 0 (2) or (T[0] + V[0]) / 2 (1) */
    int pv_init;                 /* P_v: xavier-normal, zero bias (2) or nn.Linear's default (1) */
    int act;                     /* IISAN_ACT_RELU / GELU for SAN blocks */
    float gate_temp;             /* 0.1 */
    int towers;                  /* bit mask of enabled towers (1 << TOWER_*) */
    int arch;                    /* iisan_arch */
    iisan_modality mods[N_MODS]; /* Versa: text, image (D, nstates, K, sched unused) */
    /* SASRec-ID item side */
    int n_items; /* N (item embedding table has N+1 rows) */
    /* sequence encoder */
    int d;         /* embedding size, 64 */
    int n;         /* max sequence length, 10 */
    int heads;     /* 2 */
    float dropout; /* 0.1 */
    float ln_eps;  /* 1e-6 */
} iisan_config;

typedef struct {
    int batch;      /* 64 users */
    int epochs;     /* max 100 */
    int patience;   /* early stopping: epochs without validation improvement */
    float lr_san;   /* 1e-4: SAN blocks (and, under lr_groups 1, every gate) */
    float lr;       /* 2e-4: everything else (see train_lr_table) */
    int lr_groups;  /* 2: the spec's per-group table; 1: lr_san / lr only */
    int early_stop; /* 2: stop when more than `patience` epochs in a row did not improve;
                     * 1: stop when `patience` epochs in a row did not */
    int eval_rule;  /* validation: EVAL_RULE_* of core/eval.h (2: a repeated target misses) */
    float beta1, beta2, eps;
    uint64_t seed;
    int min_len;    /* 5 */
    long max_steps; /* stop after this many optimiser steps (0 = no limit) */
    /* the SAN and head GEMMs' precision, IISAN_PREC_* of kernels/backend.h (0: fp32); the
     * caller sets it on the backend (set_precision), train_run only records it */
    int precision;
    /* when not NULL and set (by another thread), training stops after the current batch,
     * without finishing the epoch or validating: train_summary.interrupted */
    const volatile int *stop;
} iisan_train_config;

void config_default(iisan_config *c);
void train_config_default(iisan_train_config *t);
/* the learning rate of each LRG_* group. Rule 2: SAN blocks lr_san, F_t lr_san / 2, F_v and the
 * image gates lr_san, the text and inter gates lr, the rest lr (1e-4, 5e-5, 1e-4, 2e-4, 2e-4 by
 * default). Rule 1: SAN blocks and every gate lr_san, the rest lr. */
void train_lr_table(const iisan_train_config *t, float lr[LR_NGROUPS]);
/* every rule of one spec version (IISAN_RULES_V1 or V2) on both configs (either may be NULL) */
void config_set_rules(iisan_config *c, iisan_train_config *t, int version);
/* parses "0,2,4,6" or the names "every2" (default), "all", "top", "remove-first";
 * needs c->nstates set. Returns 0 or -1 with message. */
int config_set_schedule(iisan_config *c, const char *spec, char *err, int errlen);
/* validates sizes; 0 or -1 with message */
int config_check(const iisan_config *c, char *err, int errlen);
int config_ntowers(const iisan_config *c);

/* Versa: parses a schedule (the names and lists above) for modality mod into c->mods[mod];
 * needs c->mods[mod].nstates set. 0 or -1 with message. */
int config_set_schedule_mod(iisan_config *c, int mod, const char *spec, char *err, int errlen);
/* the hidden-state shape the model reads for modality mod: per modality for Versa, the
 * shared nstates x D otherwise */
int config_nstates(const iisan_config *c, int mod);
int config_width(const iisan_config *c, int mod);
/* a tower's width and schedule length: Versa's inter tower is min(Dt, Dv) wide and
 * min(Kt, Kv) deep; symmetric towers are D wide and K deep */
int config_tower_width(const iisan_config *c, int t);
int config_tower_depth(const iisan_config *c, int t);
/* Versa: the modality projected into the inter tower by Q_k (the wider one), or -1 when
 * Dt = Dv */
int config_versa_wide(const iisan_config *c);

#endif
