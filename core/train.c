#include "core/train.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/states.h"
#include "kernels/clock.h"
#include "kernels/rng.h"

void train_rules_json(const iisan_train_config *tc, const iisan_config *c, char *out, size_t cap) {
    snprintf(out, cap,
             "\"rules\":{\"lr_groups\":\"v%d\",\"early_stop\":\"v%d\",\"patience\":%d,"
             "\"eval_exclude\":\"%s\",\"inter_start\":\"v%d\",\"pv_init\":\"v%d\"}",
             tc->lr_groups, tc->early_stop, tc->patience, eval_rule_name(tc->eval_rule),
             c->inter_start, c->pv_init);
}

/* why a training step or a validation went wrong: it failed itself (out of memory), the
 * backend holds a failure, or a state read failed; 0 when none did */
static int train_error(int failed, iisan_backend *be, const iisan_states *st) {
    if (failed) return TRAIN_ENOMEM;
    if (be->status(be, NULL, 0)) return TRAIN_EBACKEND;
    if (states_check(st, NULL, 0)) return TRAIN_ESTATES;
    return 0;
}

int train_run(iisan_model *m, const iisan_dataset *ds, const iisan_states *st,
              const iisan_train_config *tc, int validate, epoch_hook hook, void *arg,
              train_summary *sum) {
    iisan_backend *be = m->be;
    const int n = m->c.n, L = n + 1, B = tc->batch < m->cap_users ? tc->batch : m->cap_users;
    const size_t P = m->pt.total;
    memset(sum, 0, sizeof *sum);
    int *order = malloc((size_t)ds->n_users * sizeof *order);
    int32_t *seqs = malloc((size_t)B * L * sizeof *seqs);
    float *best = malloc(P * sizeof *best);
    if (!order || !seqs || !best) {
        free(order);
        free(seqs);
        free(best);
        return TRAIN_ENOMEM;
    }
    float lr[LR_NGROUPS];
    train_lr_table(tc, lr);
    /* rule 2: stop when more than `patience` epochs in a row did not improve; rule 1: when
     * `patience` did */
    const int flat_limit = tc->early_stop == IISAN_RULES_V1 ? tc->patience : tc->patience + 1;
    double best_hr = -1, total_sec = 0;
    int since_best = 0;
    long step = 0;
    int err = 0;
    for (int ep = 1; ep <= tc->epochs; ep++) {
        /* seeded Fisher-Yates shuffle of the users */
        for (int u = 0; u < ds->n_users; u++)
            order[u] = u;
        for (int u = ds->n_users - 1; u > 0; u--) {
            int j = (int)(iisan_rng_u64(tc->seed ^ 0xA5A5ull, ((uint64_t)ep << 32) | u) %
                          (uint64_t)(u + 1));
            int t = order[u];
            order[u] = order[j];
            order[j] = t;
        }
        double t0 = iisan_now(), loss_sum = 0;
        int nbatch = 0;
        for (int u0 = 0; u0 < ds->n_users; u0 += B) {
            int nb = ds->n_users - u0 < B ? ds->n_users - u0 : B;
            for (int b = 0; b < nb; b++)
                dataset_sequence(ds, order[u0 + b], SPLIT_TRAIN, seqs + (size_t)b * L, NULL);
            /* the forward, the backward and Adam; a step that failed took no Adam step (a
             * refused batch) or left the parameters garbage (a failed backend) */
            float loss = model_train_step(m, seqs, nb, ds->logpop, ds->item_cat, st,
                                          iisan_rng_u64(tc->seed, (uint64_t)step), lr, tc->beta1,
                                          tc->beta2, tc->eps);
            if ((err = train_error(loss < 0, be, st))) goto out;
            if (step == 0) sum->first_loss = loss;
            sum->last_loss = loss;
            loss_sum += loss;
            nbatch++;
            step++;
            if (tc->max_steps && step >= tc->max_steps) break;
            if (tc->stop && *tc->stop) break;
        }
        be->sync(be);
        if (tc->stop && *tc->stop) { /* asked to stop: no validation, the epoch does not count */
            sum->interrupted = 1;
            break;
        }
        epoch_report r = {0};
        r.epoch = ep;
        r.loss = nbatch ? loss_sum / nbatch : 0;
        r.seconds = iisan_now() - t0;
        r.steps = step;
        total_sec += r.seconds;
        if (validate) {
            int failed = model_evaluate(m, ds, SPLIT_VALID, tc->eval_rule, st, &r.valid) != 0;
            if ((err = train_error(failed, be, st))) goto out;
            r.eval_seconds = r.valid.seconds;
        }
        r.best = !validate || r.valid.hr10 > best_hr;
        if (r.best) {
            best_hr = r.valid.hr10;
            sum->best_epoch = ep;
            sum->best_valid = r.valid;
            be->download(be, best, m->w, P * sizeof(float));
            since_best = 0;
        } else {
            since_best++;
        }
        sum->epochs_run = ep;
        if (hook) hook(arg, &r);
        if (validate && tc->patience > 0 && since_best >= flat_limit) break;
        if (tc->max_steps && step >= tc->max_steps) break;
    }
    sum->steps = step;
    sum->mean_epoch_seconds = sum->epochs_run ? total_sec / sum->epochs_run : 0;
    if (sum->best_epoch) be->upload(be, m->w, best, P * sizeof(float));
out:
    free(order);
    free(seqs);
    free(best);
    return err;
}
