/* Adam as PyTorch's torch.optim.Adam (no weight decay, no amsgrad), written in
 * the same order of float operations as its single-tensor path:
 *   m = m + (1 - b1) (g - m)            (lerp)
 *   v = b2 v + (1 - b2) g g
 *   w = w - lr/(1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
 * The bias corrections are computed once per call in double. The update is
 * bound by memory bandwidth (7 floats of traffic per parameter), so a large
 * one is split over as many threads as OpenBLAS uses, each on its own range. */
#include <math.h>
#include <pthread.h>
#include <stdint.h>

#include "kernels/cpu/cpu.h"

typedef struct {
    float *w, *m, *v;
    const float *g;
    size_t n;
    float step, bc2_sqrt, b1, b2, eps;
} adam_range;

static CPU_VEC void adam_run(const adam_range *a) {
    float *restrict ww = a->w, *restrict mm = a->m, *restrict vv = a->v;
    const float *restrict gg = a->g;
    const float step = a->step, bc2_sqrt = a->bc2_sqrt, b2 = a->b2, eps = a->eps;
    const float c1 = 1.0f - a->b1, c2 = 1.0f - b2;
    for (size_t i = 0; i < a->n; i++) {
        float gi = gg[i];
        float mi = mm[i] + c1 * (gi - mm[i]);
        float vi = b2 * vv[i] + c2 * gi * gi;
        mm[i] = mi;
        vv[i] = vi;
        ww[i] -= step * (mi / (sqrtf(vi) / bc2_sqrt + eps));
    }
}

static void *adam_thread(void *arg) {
    adam_run(arg);
    return NULL;
}

int openblas_get_num_threads(void);

void cpu_adam(iisan_backend *be, float *w, const float *g, float *m, float *v, size_t n, float lr,
              float b1, float b2, float eps, int t) {
    enum { MAX_THREADS = 16, MIN_PER_THREAD = 1 << 18 };
    adam_range r[MAX_THREADS];
    const float step = (float)((double)lr / (1.0 - pow((double)b1, t)));
    const float bc2_sqrt = (float)sqrt(1.0 - pow((double)b2, t));
    size_t most = n / MIN_PER_THREAD ? n / MIN_PER_THREAD : 1;
    int T = openblas_get_num_threads();
    if (T < 1) T = 1;
    if ((size_t)T > most) T = (int)most;
    if (T > MAX_THREADS) T = MAX_THREADS;
    /* ranges on 64-byte boundaries (16 floats) so threads never share a line */
    size_t per = (n / (size_t)T + 15) & ~(size_t)15, at = 0;
    pthread_t th[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    for (int i = 0; i < T; i++) {
        size_t len = i == T - 1 ? n - at : (per < n - at ? per : n - at);
        r[i] = (adam_range){w + at, m + at, v + at, g + at, len, step, bc2_sqrt, b1, b2, eps};
        at += len;
    }
    for (int i = 0; i + 1 < T; i++)
        started[i] = pthread_create(&th[i], NULL, adam_thread, &r[i]) == 0;
    for (int i = 0; i + 1 < T; i++)
        if (!started[i]) adam_run(&r[i]); /* no thread: do it here */
    adam_run(&r[T - 1]);
    for (int i = 0; i + 1 < T; i++)
        if (started[i]) pthread_join(th[i], NULL);
}
