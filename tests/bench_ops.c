/* bench_ops: the training step's non-GEMM ops that take the most of an epoch, one at a time at
 * the shapes the step calls them with (R distinct items, default 277, Scientific's mean;
 * D = 768; a batch of 64 sequences of 10, 2 heads of 32), through the CPU backend. Each op
 * twice: warm (the same operands every call, so they stay in cache) and cold (cycling through
 * sets of operands that together exceed the L3, as in the step, where an op's operands were
 * last touched many ops before). The best of 7 rounds; prints microseconds a call and what
 * that comes to per epoch at the step's calls per batch (189 batches).
 *
 *   build/bench_ops [R] [threads]
 *
 * A developer's tool for issue 15's rest of the epoch (docs/benchmarks.md). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/backend.h"
#include "kernels/blas_info.h"
#include "kernels/clock.h"
#include "kernels/rng.h"
#include "tests/bench_time.h"

enum { BATCHES = 189, SETS_COLD = 48 };

typedef struct {
    iisan_backend *be;
    int R, D, sets; /* operand sets cycled through (1: warm) */
    float *x, *h, *gin, *cur, *db, *bias, *gate;
    float *w, *g, *m, *v; /* Adam: sets x one SAN block's parameters */
    size_t np;
    uint16_t *half;
    const uint16_t **rows;
    float *gathered;
    float *qkv, *probs, *out, *mask, *dout, *dqkv;
} ops;

enum { SAN_PARAMS = 2 * 768 * 64 + 64 + 768, B = 64, N = 10, H = 2, DH = 32, STATES = 16 };

static float *rnd(iisan_backend *be, size_t n, uint64_t seed) {
    float *x = be->alloc(be, n * sizeof *x);
    if (!x) {
        fprintf(stderr, "bench_ops: out of memory\n");
        exit(1);
    }
    for (size_t i = 0; i < n; i++)
        x[i] = iisan_rng_uniform(seed, i) - 0.5f;
    return x;
}

static void op_adam(ops *o, int s, int t) {
    size_t at = (size_t)s * o->np;
    o->be->adam(o->be, o->w + at, o->g + at, o->m + at, o->v + at, o->np, 1e-4f, 0.9f, 0.999f,
                1e-8f, t + 1, 0);
}
static void op_gate_fwd(ops *o, int s, int t) {
    size_t at = (size_t)s * o->R * o->D;
    o->be->gate_bias_fwd(o->be, o->gin, o->h + at, NULL, o->x + at, o->cur + at, o->gate, 1.0f,
                         o->bias, o->R, o->D);
}
static void op_gate_bwd(ops *o, int s, int t) {
    size_t at = (size_t)s * o->R * o->D;
    float dp = 0;
    o->be->gate_bwd_mix(o->be, o->gin, NULL, o->db, &dp, o->cur + at, NULL, o->x + at, o->h + at,
                        o->gate, 1.0f, (size_t)o->R * o->D);
}
static void op_bias_grad(ops *o, int s, int t) {
    o->be->bias_grad(o->be, o->bias, o->cur + (size_t)s * o->R * o->D, o->D, o->R, o->D);
}
static void op_gather(ops *o, int s, int t) {
    o->be->gather_half(o->be, o->gathered + (size_t)s * STATES * o->R * o->D,
                       o->rows + (size_t)s * STATES * o->R, STATES * o->R, o->D);
}
static void op_att_fwd(ops *o, int s, int t) {
    o->be->attention_fwd(o->be, o->out, o->probs, o->qkv, o->mask, B, N, H, DH, 0.1f, t);
}
static void op_att_bwd(ops *o, int s, int t) {
    o->be->attention_bwd(o->be, o->dqkv, o->dout, o->qkv, o->probs, B, N, H, DH, 0.1f, t);
}

typedef struct {
    ops *o;
    void (*fn)(ops *, int, int);
} op_call;

static void call_op(void *ctx, int i) {
    const op_call *c = ctx;
    c->fn(c->o, i % c->o->sets, i);
}

/* the best time a call, over rounds of calls cycling through o->sets operand sets */
static double time_op(ops *o, void (*fn)(ops *, int, int)) {
    op_call c = {o, fn};
    return bench_best(call_op, &c, o->sets);
}

int main(int argc, char **argv) {
    blas_guard(argv);
    const int R = argc > 1 ? atoi(argv[1]) : 277, threads = argc > 2 ? atoi(argv[2]) : 0;
    if (R < 1 || R > 100000) {
        fprintf(stderr, "usage: bench_ops [R] [threads]\n");
        return 2;
    }
    iisan_backend *be = iisan_backend_cpu(threads);
    const int D = 768, S = SETS_COLD;
    const size_t RD = (size_t)R * D;
    ops o = {.be = be, .R = R, .D = D, .np = SAN_PARAMS};
    o.x = rnd(be, S * RD, 1), o.h = rnd(be, S * RD, 2), o.cur = rnd(be, S * RD, 3);
    o.gin = rnd(be, RD, 4), o.db = rnd(be, RD, 5), o.bias = rnd(be, D, 6), o.gate = rnd(be, 1, 7);
    o.w = rnd(be, S * o.np, 8), o.g = rnd(be, S * o.np, 9);
    o.m = rnd(be, S * o.np, 10), o.v = rnd(be, S * o.np, 11);
    for (size_t i = 0; i < S * o.np; i++) /* a second moment is never negative */
        o.v[i] = o.v[i] * o.v[i];
    /* the gather: 16 states of R items out of a store of 4,096 items x 13 states, fp16 */
    const size_t items = 4096, per_item = (size_t)13 * D;
    o.half = malloc(items * per_item * sizeof *o.half);
    o.rows = malloc((size_t)S * STATES * R * sizeof *o.rows);
    o.gathered = be->alloc(be, (size_t)S * STATES * RD * sizeof(float));
    if (!o.half || !o.rows || !o.gathered) {
        fprintf(stderr, "bench_ops: out of memory\n");
        return 1;
    }
    for (size_t i = 0; i < items * per_item; i++)
        o.half[i] = (uint16_t)(0x3000 + (iisan_rng_u64(12, i) & 0x0fff));
    for (size_t i = 0; i < (size_t)S * STATES * R; i++)
        o.rows[i] = o.half + (iisan_rng_u64(13, i / STATES) % items) * per_item +
                    (i % STATES % 13) * (size_t)D;
    /* attention: left-padded sequences of 1..10 */
    const size_t BN = (size_t)B * N, d = (size_t)H * DH;
    o.qkv = rnd(be, BN * 3 * d, 14), o.dout = rnd(be, BN * d, 15);
    o.out = rnd(be, BN * d, 16), o.dqkv = rnd(be, BN * 3 * d, 17);
    o.probs = rnd(be, (size_t)B * H * N * N, 18), o.mask = rnd(be, BN, 19);
    for (int b = 0; b < B; b++) {
        int len = 1 + (int)(iisan_rng_u64(20, b) % N);
        for (int j = 0; j < N; j++)
            o.mask[b * N + j] = j >= N - len;
    }
    op_att_fwd(&o, 0, 0); /* probs for the backward */

    blas_info bi;
    char line[640];
    blas_info_probe(&bi, 0.1);
    blas_info_line(&bi, line, sizeof line);
    fprintf(stderr, "%s\n", line);
    if (blas_refuse_generic(&bi, "bench-ops")) return 3;
    printf("bench-ops: R = %d, D = %d, %d threads; us a call warm / cold (%d operand sets), and "
           "s/epoch cold at the step's calls (%d batches)\n",
           R, D, iisan_backend_cpu_threads(be), S, BATCHES);
    const struct {
        const char *what;
        void (*fn)(ops *, int, int);
        double per_batch; /* calls per batch */
        int cold_sets;
    } list[] = {
        /* one SAN block's parameters per call; a batch steps 4,113,877 of them */
        {"adam, one SAN block (99,136 parameters)", op_adam, 4113877.0 / SAN_PARAMS, S},
        {"gate_bias_fwd (mix, h = in + b_up)", op_gate_fwd, 21, S},
        {"gate_bwd_mix (dp, d prev, the mix again)", op_gate_bwd, 21, S},
        {"bias_grad, b_up (R x 768)", op_bias_grad, 21, S},
        {"gather_half, 16 states x R rows", op_gather, 1, 8},
        {"attention_fwd (64 x 10, 2 heads of 32)", op_att_fwd, 2, 1},
        {"attention_bwd", op_att_bwd, 2, 1},
    };
    printf("  %-44s %9s %9s %9s\n", "op", "warm", "cold", "s/epoch");
    for (size_t i = 0; i < sizeof list / sizeof list[0]; i++) {
        o.sets = 1;
        double warm = time_op(&o, list[i].fn);
        o.sets = list[i].cold_sets;
        double cold = time_op(&o, list[i].fn);
        printf("  %-44s %9.1f %9.1f %9.3f\n", list[i].what, warm * 1e6, cold * 1e6,
               cold * list[i].per_batch * BATCHES);
    }
    be->destroy(be);
    free(o.half);
    free(o.rows);
    return 0;
}
