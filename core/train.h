/* The training protocol: epochs over the users in a seeded random order,
 * batches of training sequences, Adam, validation HR@10 / NDCG@10 after each
 * epoch, early stopping, and the best epoch's parameters kept. */
#ifndef IISAN_CORE_TRAIN_H
#define IISAN_CORE_TRAIN_H

#include "core/dataset.h"
#include "core/eval.h"
#include "core/model.h"

typedef struct {
    int epoch;      /* 1-based */
    double loss;    /* mean training loss over the epoch's batches */
    double seconds; /* training time of the epoch (validation excluded) */
    double eval_seconds;
    long steps; /* optimiser steps so far */
    eval_result valid;
    int best; /* this epoch is the best so far */
} epoch_report;

typedef struct {
    int epochs_run;
    int best_epoch;
    eval_result best_valid;
    double mean_epoch_seconds;
    double first_loss, last_loss; /* first and last batch losses */
    long steps;
    int interrupted; /* tc->stop was set: the parameters are the best epoch's so far */
} train_summary;

/* the spec rules a version was trained and validated under, as the JSON member
 * "rules":{"lr_groups":"v2","early_stop":"v2","patience":10,"eval_exclude":"history",
 * "inter_start":"v2","pv_init":"v2"} for a checkpoint's meta (truncated to cap) */
void train_rules_json(const iisan_train_config *tc, const iisan_config *c, char *out, size_t cap);

typedef void (*epoch_hook)(void *arg, const epoch_report *r);

enum {
    TRAIN_ENOMEM = -1,   /* out of memory: a step or a validation could not run */
    TRAIN_EBACKEND = -2, /* the backend failed (its status, kernels/backend.h) */
    TRAIN_ESTATES = -3,  /* reading hidden states failed (core/states.h: states_check) */
};
/* Trains m in place; on return m->w holds the best epoch's parameters.
 * validate == 0 skips validation (every epoch counts as best; benchmarks).
 * Returns 0, or TRAIN_ENOMEM / TRAIN_EBACKEND / TRAIN_ESTATES, which end the
 * run at once: m's parameters are then those of the step before. */
int train_run(iisan_model *m, const iisan_dataset *ds, const iisan_states *st,
              const iisan_train_config *tc, int validate, epoch_hook hook, void *arg,
              train_summary *sum);

#endif
