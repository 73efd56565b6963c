/* The CPU backend's persistent worker pool: T-1 threads started once with the
 * backend, plus the calling thread, run one parallel loop at a time.
 *
 * Static chunking: a loop over [0, n) is cut into T pieces whose boundaries are
 * multiples of the caller's grain, piece i run by thread i. Every op gives each
 * output element to exactly one piece and computes it in a fixed order, and
 * every reduction sums fixed blocks in block order, so a result does not
 * depend on T (tests/test_pool.c checks 1, 2 and 3 threads bit for bit).
 *
 * Sharing the cores with the BLAS. The BLAS's own threads run inside the GEMMs
 * and ours between them: an idle worker of ours spins for at most 20 us (the
 * next op often follows at once), then sleeps on a condition variable, so the
 * two sets do not compete for the cores during a GEMM.
 *
 * One caller at a time: the serving daemon calls ops from several threads at
 * once. A caller that finds the pool taken (or calls from inside a pool task)
 * runs the whole loop itself, which gives the same result. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "kernels/clock.h"
#include "kernels/cpu/cpu.h"

/* how long a thread spins before it sleeps: a worker waiting for the next loop (ops often
 * follow each other closely), the caller waiting for the workers' pieces (about as long as
 * its own). Short enough not to take a core from the BLAS's threads during a GEMM. */
#define SPIN_NEXT_S 20e-6
#define SPIN_DONE_S 50e-6

struct cpu_pool {
    int T; /* threads taking part, the caller's included */
    pthread_t *th;
    int started; /* workers actually running */
    pthread_mutex_t mu;
    pthread_cond_t go, done;
    /* the loop being run: written before gen moves, read after */
    cpu_range_fn fn;
    void *arg;
    size_t n, per;
    _Atomic unsigned long gen; /* counts the loops handed out; a worker runs each once */
    _Atomic int pending;       /* workers yet to finish the current loop */
    _Atomic int quit;
    atomic_flag busy; /* a caller owns the pool */
};

typedef struct {
    cpu_pool *p;
    int id; /* 1 .. T-1 */
} worker_arg;

static inline void relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* spins up to `seconds` until done(p, arg) holds; 1 if it did */
static int spin_until(cpu_pool *p, int (*done)(cpu_pool *, unsigned long), unsigned long arg,
                      double seconds) {
    double t0 = iisan_now();
    for (int i = 1;; i++) {
        if (done(p, arg)) return 1;
        if (!(i & 63) && iisan_now() - t0 > seconds) return 0;
        relax();
    }
}

static int moved(cpu_pool *p, unsigned long seen) { return p->gen != seen || p->quit; }
static int all_done(cpu_pool *p, unsigned long unused) { return p->pending == 0; }

static void run_piece(cpu_pool *p, int id) {
    size_t lo = (size_t)id * p->per, hi = lo + p->per;
    if (hi > p->n) hi = p->n;
    if (lo < hi) p->fn(p->arg, lo, hi);
}

static void *worker(void *va) {
    worker_arg *wa = va;
    cpu_pool *p = wa->p;
    int id = wa->id;
    free(wa);
    unsigned long seen = 0;
    for (;;) {
        if (!spin_until(p, moved, seen, SPIN_NEXT_S)) {
            pthread_mutex_lock(&p->mu);
            while (!moved(p, seen))
                pthread_cond_wait(&p->go, &p->mu);
            pthread_mutex_unlock(&p->mu);
        }
        if (p->quit) break;
        seen = p->gen;
        run_piece(p, id);
        /* the last piece done wakes the caller (if it sleeps: it checks under the lock) */
        if (atomic_fetch_sub(&p->pending, 1) == 1) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->done);
            pthread_mutex_unlock(&p->mu);
        }
    }
    return NULL;
}

cpu_pool *cpu_pool_create(int nthreads) {
    cpu_pool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->T = nthreads < 1 ? 1 : nthreads;
    atomic_flag_clear(&p->busy);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->go, NULL);
    pthread_cond_init(&p->done, NULL);
    if (p->T > 1 && !(p->th = calloc((size_t)p->T - 1, sizeof *p->th))) p->T = 1;
    for (int i = 1; i < p->T; i++) {
        worker_arg *wa = malloc(sizeof *wa);
        if (!wa) break;
        *wa = (worker_arg){p, i};
        if (pthread_create(&p->th[i - 1], NULL, worker, wa)) {
            free(wa);
            break;
        }
        p->started++;
    }
    p->T = p->started + 1; /* fewer threads than asked when some could not start */
    return p;
}

void cpu_pool_destroy(cpu_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->quit = 1;
    pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->started; i++)
        pthread_join(p->th[i], NULL);
    pthread_cond_destroy(&p->go);
    pthread_cond_destroy(&p->done);
    pthread_mutex_destroy(&p->mu);
    free(p->th);
    free(p);
}

int cpu_pool_threads(const cpu_pool *p) { return p ? p->T : 1; }

void cpu_pool_for(cpu_pool *p, size_t n, size_t grain, cpu_range_fn fn, void *arg) {
    if (!n) return;
    if (grain < 1) grain = 1;
    /* pieces of whole grains; fewer pieces than threads when n is small */
    size_t grains = (n + grain - 1) / grain;
    if (!p || p->T < 2 || grains < 2 || atomic_flag_test_and_set(&p->busy)) {
        fn(arg, 0, n);
        return;
    }
    size_t T = (size_t)p->T < grains ? (size_t)p->T : grains;
    p->fn = fn;
    p->arg = arg;
    p->n = n;
    p->per = (grains + T - 1) / T * grain;
    p->pending = p->started;
    pthread_mutex_lock(&p->mu); /* a worker about to sleep checks gen under it */
    p->gen++;
    pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);
    run_piece(p, 0);
    if (!spin_until(p, all_done, 0, SPIN_DONE_S)) {
        pthread_mutex_lock(&p->mu);
        while (p->pending)
            pthread_cond_wait(&p->done, &p->mu);
        pthread_mutex_unlock(&p->mu);
    }
    atomic_flag_clear(&p->busy);
}
