/* Minimal test harness: every test binary ends by printing
 * "N passed, N failed" and exits non-zero when anything failed. */
#ifndef IISAN_TESTS_TEST_H
#define IISAN_TESTS_TEST_H

#include <math.h>
#include <stdio.h>
#include <string.h>

static int t_passed, t_failed;

/* a learning-rate table (LRG_* of core/config.h) with every group at rate v */
static inline const float *t_lr_all(float *lr, int ngroups, float v) {
    for (int i = 0; i < ngroups; i++)
        lr[i] = v;
    return lr;
}
#define T_LR_ALL(v) t_lr_all((float[LR_NGROUPS]){0}, LR_NGROUPS, (v))
static const char *t_only; /* run only tests whose name contains this */

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (cond) {                                                                                \
            t_passed++;                                                                            \
        } else {                                                                                   \
            t_failed++;                                                                            \
            fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);                        \
        }                                                                                          \
    } while (0)

#define CHECKF(cond, ...)                                                                          \
    do {                                                                                           \
        if (cond) {                                                                                \
            t_passed++;                                                                            \
        } else {                                                                                   \
            t_failed++;                                                                            \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);                        \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
        }                                                                                          \
    } while (0)

/* |a - b| <= atol + rtol * |b| */
#define CHECK_CLOSE(a, b, atol, rtol)                                                              \
    do {                                                                                           \
        double ca_ = (a), cb_ = (b);                                                               \
        CHECKF(fabs(ca_ - cb_) <= (atol) + (rtol)*fabs(cb_), "%s = %.9g, %s = %.9g", #a, ca_, #b,  \
               cb_);                                                                               \
    } while (0)

#define RUN(fn)                                                                                    \
    do {                                                                                           \
        if (!t_only || strstr(#fn, t_only)) {                                                      \
            int f0_ = t_failed;                                                                    \
            fn();                                                                                  \
            fprintf(stderr, "%s %s\n", t_failed == f0_ ? "ok  " : "FAIL", #fn);                    \
        }                                                                                          \
    } while (0)

#define TEST_MAIN_BEGIN(argc, argv) t_only = (argc) > 1 ? (argv)[1] : NULL
#define TEST_MAIN_END()                                                                            \
    do {                                                                                           \
        printf("%d passed, %d failed\n", t_passed, t_failed);                                      \
        return t_failed ? 1 : 0;                                                                   \
    } while (0)

#endif
