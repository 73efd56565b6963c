/* The benchmarks' timing loop (bench_gemm, bench_ops): the best time a call over 7 rounds,
 * after a warm-up round that sets how many calls a round makes (about 20 ms of them, in
 * whole multiples of `unit`, so that a round cycles through whole sets of operands). */
#ifndef IISAN_TESTS_BENCH_TIME_H
#define IISAN_TESTS_BENCH_TIME_H

#include "kernels/clock.h"

/* seconds a call of run(ctx, i), i the call's number in its round */
static inline double bench_best(void (*run)(void *ctx, int i), void *ctx, int unit) {
    double best = 1e30;
    int calls = unit;
    for (int round = 0; round < 8; round++) {
        double t = iisan_now();
        for (int i = 0; i < calls; i++)
            run(ctx, i);
        t = (iisan_now() - t) / calls;
        if (round == 0) { /* warm-up: sets the calls per round */
            calls = ((int)(0.02 / t) / unit + 1) * unit;
            continue;
        }
        if (t < best) best = t;
    }
    return best;
}

#endif
