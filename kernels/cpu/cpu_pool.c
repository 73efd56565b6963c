/* The CPU backend's persistent worker pool: T-1 threads started once with the
 * backend, plus the calling thread, run one parallel loop at a time.
 *
 * Pieces. A loop over [0, n) is cut into up to 4 T pieces of whole grains. Every
 * thread, the caller's included, claims pieces (an atomic per piece, holding the
 * number of the last loop that claimed it) and runs them until none is left, so
 * a worker the system has not scheduled yet delays nothing: the others take its
 * share. Every op gives each output element to one piece and computes it in a
 * fixed order whatever the piece's bounds, and every reduction sums fixed blocks
 * in block order, so a result depends neither on T nor on which thread ran what
 * (tests/test_pool.c checks 1, 2 and 3 threads bit for bit).
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
 * follow each other closely), the caller waiting for the last pieces (shorter than one).
 * Short enough not to take a core from the BLAS's threads during a GEMM. */
#define SPIN_NEXT_S 20e-6
#define SPIN_DONE_S 50e-6

enum { PIECES_PER_THREAD = 4, MAX_PIECES = 256 };

struct cpu_pool {
    int T; /* threads taking part, the caller's included */
    pthread_t *th;
    int started; /* workers actually running */
    pthread_mutex_t mu;
    pthread_cond_t go, done;
    /* the loop being run: written before `loop` moves, read by a thread holding a piece */
    cpu_range_fn fn;
    void *arg;
    size_t n, per;
    /* the current loop's number (counted from 1) << 16 | its number of pieces, in one word
     * so that a worker reads the two together */
    _Atomic unsigned long long loop;
    _Atomic unsigned long long claimed[MAX_PIECES]; /* the last loop that claimed each piece */
    _Atomic int finished;                           /* pieces of the current loop run */
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
static int spin_until(cpu_pool *p, int (*done)(cpu_pool *, unsigned long long),
                      unsigned long long arg, double seconds) {
    double t0 = iisan_now();
    for (int i = 1;; i++) {
        if (done(p, arg)) return 1;
        if (!(i & 63) && iisan_now() - t0 > seconds) return 0;
        relax();
    }
}

static int moved(cpu_pool *p, unsigned long long seen) { return p->loop != seen || p->quit; }
static int all_done(cpu_pool *p, unsigned long long np) { return p->finished == (int)np; }

/* claims piece i (one of loop g's) for loop g: 0 when another thread has it, or loop g is
 * over (every piece of a finished loop holds g or later, so a late worker claims nothing,
 * and reads the loop's operands only once it holds a piece) */
static int claim(cpu_pool *p, int i, unsigned long long g) {
    unsigned long long v = p->claimed[i];
    return v < g && atomic_compare_exchange_strong(&p->claimed[i], &v, g);
}

/* runs every piece of loop g this thread can claim, starting at its own share; the thread
 * that runs the loop's last piece wakes the caller */
static void run_pieces(cpu_pool *p, unsigned long long word, int id, int T) {
    const unsigned long long g = word >> 16;
    const int np = (int)(word & 0xffff);
    for (int k = 0; k < np; k++) {
        int i = (id * np / T + k) % np;
        if (!claim(p, i, g)) continue;
        size_t lo = (size_t)i * p->per, hi = lo + p->per;
        if (hi > p->n) hi = p->n;
        if (lo < hi) p->fn(p->arg, lo, hi);
        if (atomic_fetch_add(&p->finished, 1) + 1 == np && id) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->done);
            pthread_mutex_unlock(&p->mu);
        }
    }
}

static void *worker(void *va) {
    worker_arg *wa = va;
    cpu_pool *p = wa->p;
    int id = wa->id;
    free(wa);
    unsigned long long seen = 0;
    for (;;) {
        if (!spin_until(p, moved, seen, SPIN_NEXT_S)) {
            pthread_mutex_lock(&p->mu);
            while (!moved(p, seen))
                pthread_cond_wait(&p->go, &p->mu);
            pthread_mutex_unlock(&p->mu);
        }
        if (p->quit) break;
        seen = p->loop;
        run_pieces(p, seen, id, p->T);
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
    size_t grains = (n + grain - 1) / grain;
    if (!p || p->T < 2 || grains < 2 || atomic_flag_test_and_set(&p->busy)) {
        fn(arg, 0, n);
        return;
    }
    size_t most = (size_t)p->T * PIECES_PER_THREAD, pieces = grains < most ? grains : most;
    if (pieces > MAX_PIECES) pieces = MAX_PIECES;
    p->fn = fn;
    p->arg = arg;
    p->n = n;
    p->per = (grains + pieces - 1) / pieces * grain;
    int np = (int)((n + p->per - 1) / p->per); /* whole pieces: the last may be short */
    p->finished = 0;
    pthread_mutex_lock(&p->mu); /* a worker about to sleep checks the word under it */
    unsigned long long word = ((p->loop >> 16) + 1) << 16 | (unsigned long long)np;
    p->loop = word;
    pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);
    run_pieces(p, word, 0, p->T);
    if (!spin_until(p, all_done, (unsigned long long)np, SPIN_DONE_S)) {
        pthread_mutex_lock(&p->mu);
        while (p->finished != np)
            pthread_cond_wait(&p->done, &p->mu);
        pthread_mutex_unlock(&p->mu);
    }
    atomic_flag_clear(&p->busy);
}
