/* The gradient-check fixture that test_model (symmetric IISAN) and test_versa share: three
 * users' sequences over model items 1..7 (catalogue 2..8, a non-trivial mapping), their
 * log-popularity, parameters drawn far from the init, and the central-difference check of
 * one tensor. */
#ifndef IISAN_TESTS_MODEL_FD_H
#define IISAN_TESTS_MODEL_FD_H

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/model.h"
#include "kernels/rng.h"
#include "tests/test.h"

static const uint32_t item_cat[8] = {0, 2, 3, 4, 5, 6, 7, 8};
static const int32_t seqs[3 * 5] = {0, 0, 1, 2, 3, 4, 5, 6, 7, 2, 0, 3, 3, 6, 1};
static float logpop[8];

static void make_logpop(void) {
    double cnt[8] = {0}, tot = 0;
    for (int i = 0; i < 15; i++)
        if (seqs[i]) cnt[seqs[i]]++, tot++;
    for (int i = 0; i < 8; i++)
        logpop[i] = cnt[i] ? (float)log(cnt[i] / tot) : 0.0f;
    logpop[0] = 0;
}

/* random parameters far from the near-identity init, so every path matters */
static void randomise(iisan_model *m, uint64_t seed) {
    size_t P = m->pt.total;
    float *h = malloc(P * sizeof *h);
    for (int i = 0; i < m->pt.n; i++) {
        const param_info *p = &m->pt.t[i];
        float sd = strstr(p->name, "gate") ? 0.05f : 0.3f;
        if (p->ndim == 2 && !strstr(p->name, "block") && !strstr(p->name, "seq"))
            sd = 1.0f / sqrtf((float)p->shape[1]);
        for (size_t j = 0; j < p->size; j++) {
            float z = sd * iisan_rng_normal(seed + i, j);
            h[p->offset + j] =
                strstr(p->name, "ln") && strstr(p->name, "weight") ? 1.0f + 0.3f * z : z;
        }
    }
    m->be->upload(m->be, m->w, h, P * sizeof *h);
    free(h);
}

static float loss_at(iisan_model *m, const iisan_states *st, int train) {
    return model_loss_grad(m, seqs, 3, logpop, item_cat, st, train, 1234);
}

/* tensor i of the gradient g against central differences of step eps: the directional
 * derivative along a random unit direction, then single elements (the largest gradient
 * entry and npicks - 1 random ones); returns 1 when any of them is off */
static int fd_check_tensor(iisan_model *m, const iisan_states *st, int train, const float *g, int i,
                           float eps, int npicks, const char *what) {
    const param_info *p = &m->pt.t[i];
    float *w = m->w + p->offset;
    double gmax = 0, an = 0, nrm = 0;
    float *dir = malloc(p->size * sizeof *dir);
    for (size_t j = 0; j < p->size; j++) {
        gmax = fmax(gmax, fabs(g[p->offset + j]));
        dir[j] = iisan_rng_normal(77 + i, j);
        nrm += (double)dir[j] * dir[j];
    }
    for (size_t j = 0; j < p->size; j++) {
        dir[j] /= (float)sqrt(nrm);
        an += dir[j] * g[p->offset + j];
    }
    for (size_t j = 0; j < p->size; j++)
        w[j] += eps * dir[j];
    double lp = loss_at(m, st, train);
    for (size_t j = 0; j < p->size; j++)
        w[j] -= 2 * eps * dir[j];
    double lm = loss_at(m, st, train);
    for (size_t j = 0; j < p->size; j++)
        w[j] += eps * dir[j];
    free(dir);
    double fd = (lp - lm) / (2 * eps);
    int bad = fabs(fd - an) > 2e-3 + 3e-2 * fabs(an) + 1e-3 * gmax;
    CHECKF(!bad, "%s %s: directional fd %.6g analytic %.6g", what, p->name, fd, an);
    size_t jmax = 0;
    for (size_t j = 0; j < p->size; j++)
        if (fabs(g[p->offset + j]) > fabs(g[p->offset + jmax])) jmax = j;
    for (int q = 0; q < npicks; q++) {
        size_t j = q == 0 ? jmax : iisan_rng_u64(4 + q, i) % p->size;
        float w0 = w[j];
        w[j] = w0 + eps;
        double a = loss_at(m, st, train);
        w[j] = w0 - eps;
        double b = loss_at(m, st, train);
        w[j] = w0;
        double fe = (a - b) / (2 * eps), ae = g[p->offset + j];
        int off = fabs(fe - ae) > 2e-3 + 5e-2 * fabs(ae) + 2e-2 * gmax;
        CHECKF(!off, "%s %s[%zu]: fd %.6g analytic %.6g", what, p->name, j, fe, ae);
        bad |= off;
    }
    return bad;
}

/* model_train_step against model_loss_grad + model_adam from the same parameters, 4 steps with
 * dropout, every learning-rate group at its own rate: the losses, parameters and both Adam
 * moments equal to the bit; the early updates really ran (every SAN block and head tensor
 * done before the end of the step). chunk > 0: both models on row chunks of that many. */
static inline void check_train_step(const iisan_config *c, const iisan_states *st, int chunk,
                                    const char *what) {
    iisan_backend *be = iisan_backend_cpu(2);
    char err[256];
    iisan_model *a = model_create(c, be, 3, 7, err, sizeof err),
                *b = model_create(c, be, 3, 7, err, sizeof err);
    CHECKF(a && b, "%s: %s", what, err);
    if (!a || !b) return;
    randomise(a, 21);
    randomise(b, 21);
    if (chunk > 0) a->chunk_rows = b->chunk_rows = chunk;
    float lr[LR_NGROUPS];
    for (int i = 0; i < LR_NGROUPS; i++)
        lr[i] = 1e-3f * (float)(i + 1);
    const size_t bytes = a->pt.total * sizeof(float);
    int same = 1, early = 1, all_done = 1;
    for (int s = 0; s < 4; s++) {
        float la = model_loss_grad(a, seqs, 3, logpop, item_cat, st, 1, 500 + s);
        model_adam(a, lr, 0.9f, 0.999f, 1e-8f);
        /* model_train_step's steps, the first one's end looked at before model_adam */
        float lb;
        if (s == 0) {
            b->opt.on = 1;
            memcpy(b->opt.lr, lr, sizeof lr);
            b->opt.b1 = 0.9f, b->opt.b2 = 0.999f, b->opt.eps = 1e-8f;
            lb = model_loss_grad(b, seqs, 3, logpop, item_cat, st, 1, 500 + s);
            b->opt.on = 0;
            for (int i = 0; i < b->pt.n; i++) {
                const char *nm = b->pt.t[i].name;
                int want = strstr(nm, ".block.") || strstr(nm, ".fc.") || strstr(nm, ".proj.");
                if (want && !b->adam_done[i]) early = 0;
                if (!want && b->adam_done[i]) all_done = 0; /* nothing else early */
            }
            model_adam(b, lr, 0.9f, 0.999f, 1e-8f);
        } else
            lb = model_train_step(b, seqs, 3, logpop, item_cat, st, 500 + s, lr, 0.9f, 0.999f,
                                  1e-8f);
        same &= la == lb;
    }
    CHECKF(same, "%s: losses differ", what);
    CHECKF(early, "%s: a SAN block or head tensor was not updated during the backward", what);
    CHECKF(all_done, "%s: a tensor outside the SAN blocks and heads was updated early", what);
    size_t left = 0; /* model_train_step left m->g zeroed for the next step */
    for (size_t i = 0; i < b->pt.total; i++)
        left += b->g[i] != 0.0f;
    CHECKF(b->g_clean && left == 0, "%s: %zu gradient elements left after the step", what, left);
    CHECKF(a->step == b->step && !memcmp(a->w, b->w, bytes) && !memcmp(a->m, b->m, bytes) &&
               !memcmp(a->v, b->v, bytes),
           "%s: parameters or moments differ from loss_grad + adam", what);
    model_destroy(a);
    model_destroy(b);
    be->destroy(be);
}

#endif
