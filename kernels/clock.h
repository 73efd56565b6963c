/* The project's one clock: monotonic seconds (durations, deadlines, rates), never the
 * wall clock. Header-only so that every layer (core/, server/, the benchmarks) shares it. */
#ifndef IISAN_KERNELS_CLOCK_H
#define IISAN_KERNELS_CLOCK_H

#include <time.h>

static inline double iisan_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

#endif
