/* The CPU backend's worker pool (kernels/cpu/cpu_pool.c): every element of a
 * parallel loop visited once, small loops run inline, concurrent callers (the
 * daemon's batch threads) served; and every op the pool runs gives the same
 * bits on 1, 2 and 3 threads, at sizes that split into several pieces. The
 * op-by-op values themselves are tests/test_ops.c's.
 * Run: build/test/test_pool [name-filter]. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/backend.h"
#include "kernels/cpu/cpu.h"
#include "kernels/half.h"
#include "kernels/rng.h"
#include "tests/test.h"

/* ------------------------------------------------------------ the pool itself */

typedef struct {
    _Atomic int *hits;
    _Atomic int calls;
} count_args;

static void count_range(void *va, size_t lo, size_t hi) {
    count_args *a = va;
    a->calls++;
    for (size_t i = lo; i < hi; i++)
        a->hits[i]++;
}

/* every element exactly once, for sizes around the grain and thread counts */
static void test_pool_cover(void) {
    const size_t sizes[] = {1, 7, 8, 9, 16, 17, 100, 1001};
    for (int T = 1; T <= 4; T++) {
        cpu_pool *p = cpu_pool_create(T);
        CHECK(p && cpu_pool_threads(p) == T);
        for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++) {
            size_t n = sizes[s];
            _Atomic int *hits = calloc(n, sizeof *hits);
            count_args a = {hits, 0};
            cpu_pool_for(p, n, 8, count_range, &a);
            int ok = 1;
            for (size_t i = 0; i < n; i++)
                ok &= hits[i] == 1;
            CHECKF(ok, "T=%d n=%zu: an element missed or visited twice", T, n);
            /* four pieces per thread at most, one in all when n fits one grain */
            CHECKF(a.calls <= 4 * T && (n > 8 || a.calls == 1), "T=%d n=%zu: %d pieces", T, n,
                   (int)a.calls);
            free(hits);
        }
        cpu_pool_destroy(p);
    }
    _Atomic int hits[5] = {0};
    count_args a = {hits, 0};
    cpu_pool_for(NULL, 5, 1, count_range, &a); /* no pool: inline */
    CHECK(a.calls == 1 && hits[0] == 1 && hits[4] == 1);
}

/* loop after loop of changing piece counts: a worker late for one loop must not run a
 * piece of the next (each element once per loop) */
static void test_pool_churn(void) {
    cpu_pool *p = cpu_pool_create(3);
    enum { N = 1001 };
    _Atomic int *hits = calloc(N, sizeof *hits);
    int ok = 1;
    for (int rep = 0; rep < 3000; rep++) {
        size_t n = rep % 3 == 0 ? 17 : rep % 3 == 1 ? N : 100;
        count_args a = {hits, 0};
        cpu_pool_for(p, n, 8, count_range, &a);
        for (size_t i = 0; i < n; i++)
            ok &= hits[i] == 1;
        for (size_t i = 0; i < N; i++)
            hits[i] = 0;
    }
    CHECKF(ok, "an element missed or visited twice in some loop");
    free(hits);
    cpu_pool_destroy(p);
}

/* several threads calling at once: each call complete, whoever runs it */
typedef struct {
    cpu_pool *p;
    int ok;
} caller_args;

static void *caller(void *va) {
    caller_args *c = va;
    enum { N = 5000 };
    _Atomic int *hits = calloc(N, sizeof *hits);
    c->ok = 1;
    for (int rep = 0; rep < 200; rep++) {
        count_args a = {hits, 0};
        cpu_pool_for(c->p, N, 64, count_range, &a);
        for (int i = 0; i < N; i++)
            c->ok &= hits[i] == rep + 1;
    }
    free(hits);
    return NULL;
}

static void test_pool_concurrent(void) {
    cpu_pool *p = cpu_pool_create(2);
    pthread_t th[3];
    caller_args c[3];
    for (int i = 0; i < 3; i++) {
        c[i] = (caller_args){p, 0};
        pthread_create(&th[i], NULL, caller, &c[i]);
    }
    for (int i = 0; i < 3; i++) {
        pthread_join(th[i], NULL);
        CHECKF(c[i].ok, "caller %d saw a loop left incomplete", i);
    }
    cpu_pool_destroy(p);
}

/* ------------------------------------------- the same bits whatever the threads */

enum { NE = 50000, ROWS = 300, COLS = 64, B = 12, SEQ = 10, H = 2, DH = 32, Q = 100, C = 132 };
enum { NH = 40, DHALF = 768, NR = 20, NC = 2000, TOPK = 10 };

/* all the ops' outputs, in one array per backend */
typedef struct {
    float *out;
    size_t n, cap;
} outputs;

static void keep(outputs *o, const float *x, size_t n) {
    if (o->n + n > o->cap) {
        o->cap = (o->n + n) * 2;
        o->out = realloc(o->out, o->cap * sizeof *o->out);
    }
    memcpy(o->out + o->n, x, n * sizeof *x);
    o->n += n;
}

static float *rnd(iisan_backend *be, size_t n, uint64_t seed) {
    float *x = be->alloc(be, n * sizeof *x);
    for (size_t i = 0; i < n; i++)
        x[i] = 2.0f * iisan_rng_uniform(seed, i) - 1.0f;
    return x;
}

static void run_elementwise(iisan_backend *be, outputs *o) {
    float *x = rnd(be, NE, 1), *y = rnd(be, NE, 2), *c = rnd(be, NE, 3), *out = rnd(be, NE, 4);
    float *p = rnd(be, 1, 5), dp = 0;
    be->act_fwd(be, IISAN_ACT_GELU, out, x, NE);
    keep(o, out, NE);
    be->act_bwd(be, IISAN_ACT_GELU, out, y, x, NE);
    keep(o, out, NE);
    be->dropout_fwd(be, out, x, NE, 0.3f, 77);
    keep(o, out, NE);
    be->gate_fwd(be, out, c, x, y, p, 0.7f, NE);
    keep(o, out, NE);
    float *h = rnd(be, NE, 21), *bias = rnd(be, 100, 22);
    be->gate_bias_fwd(be, out, h, c, x, y, p, 0.7f, bias, NE / 100, 100);
    keep(o, out, NE);
    keep(o, h, NE);
    be->gate_bias_fwd(be, out, h, NULL, NULL, y, p, 0.7f, bias, NE / 100, 100);
    keep(o, h, NE);
    be->free(be, h), be->free(be, bias);
    be->gate_bwd(be, out, c, &dp, y, x, c, p, 0.7f, NE);
    keep(o, out, NE);
    keep(o, c, NE);
    keep(o, &dp, 1);
    /* the fp16-state gates: a and b as halves of x and y */
    uint16_t *hx = be->alloc(be, NE * sizeof *hx), *hy = be->alloc(be, NE * sizeof *hy);
    iisan_cpu_float_to_half(hx, x, NE);
    iisan_cpu_float_to_half(hy, y, NE);
    float *hh = rnd(be, NE, 24), *hbias = rnd(be, 100, 25);
    be->gate_bias_fwd_h(be, out, hh, c, hx, hy, NULL, p, 0.7f, hbias, NE / 100, 100);
    keep(o, out, NE);
    keep(o, hh, NE);
    be->gate_bias_fwd_h(be, out, hh, NULL, hx, NULL, y, p, 0.7f, hbias, NE / 100, 100);
    keep(o, hh, NE);
    float hdp = 0;
    be->gate_bwd_mix_h(be, out, c, &hdp, y, NULL, hx, NULL, x, p, 0.7f, NE);
    keep(o, out, NE);
    keep(o, c, NE);
    keep(o, &hdp, 1);
    float ddp = 0.25f;
    be->gate_dp_dot(be, &ddp, x, y, p, 0.7f, NE);
    keep(o, &ddp, 1);
    be->free(be, hx), be->free(be, hy), be->free(be, hh), be->free(be, hbias);
    be->adam(be, x, y, c, out, NE, 1e-3f, 0.9f, 0.999f, 1e-8f, 3, 0);
    keep(o, x, NE);
    keep(o, c, NE);
    keep(o, out, NE);
    be->copy(be, out, x, NE * sizeof *x); /* 195 KiB: pieces of 64 KiB */
    float c0 = c[0], cl = c[NE - 1];
    be->zero(be, c + 1, (NE - 2) * sizeof *c);
    int zeros = 1;
    for (int i = 1; i < NE - 1; i++)
        zeros &= c[i] == 0.0f;
    CHECK(!memcmp(out, x, NE * sizeof *x) && zeros && c[0] == c0 && c[NE - 1] == cl);
    keep(o, out, NE);
    keep(o, c, NE);
    be->free(be, x), be->free(be, y), be->free(be, c), be->free(be, out), be->free(be, p);
}

static void run_rows(iisan_backend *be, outputs *o) {
    float *x = rnd(be, ROWS * COLS, 6), *g = rnd(be, COLS, 7), *b = rnd(be, COLS, 8);
    float *y = rnd(be, ROWS * COLS, 9), *mean = rnd(be, ROWS, 0), *rstd = rnd(be, ROWS, 0);
    float *dg = rnd(be, COLS, 10), *db = rnd(be, COLS, 11);
    be->layernorm_fwd(be, y, mean, rstd, x, g, b, ROWS, COLS, 1e-5f);
    keep(o, y, ROWS * COLS);
    keep(o, mean, ROWS);
    keep(o, rstd, ROWS);
    float *dy = rnd(be, ROWS * COLS, 12);
    be->layernorm_bwd(be, dy, dg, db, dy, x, mean, rstd, g, ROWS, COLS);
    keep(o, dy, ROWS * COLS);
    keep(o, dg, COLS);
    keep(o, db, COLS);
    be->softmax_rows(be, x, ROWS, COLS, NULL, 1);
    keep(o, x, ROWS * COLS);
    int idx[ROWS];
    for (int i = 0; i < ROWS; i++)
        idx[i] = (int)(iisan_rng_u64(13, i) % 40); /* repeats: scatter_add adds them up */
    be->scatter_add_rows(be, y, dy, idx, ROWS, COLS);
    keep(o, y, ROWS * COLS);
    be->gather_rows(be, dy, y, idx, ROWS, COLS);
    keep(o, dy, ROWS * COLS);
    uint16_t *half = malloc((size_t)NH * DHALF * sizeof *half);
    const uint16_t *hrows[NH];
    for (int i = 0; i < NH * DHALF; i++)
        half[i] = iisan_float_to_half(iisan_rng_normal(14, i));
    for (int i = 0; i < NH; i++)
        hrows[i] = i % 7 == 3 ? NULL : half + (size_t)i * DHALF;
    float *hx = rnd(be, NH * DHALF, 0);
    be->gather_half(be, hx, hrows, NH, DHALF);
    keep(o, hx, NH * DHALF);
    free(half);
    be->free(be, hx), be->free(be, x), be->free(be, g), be->free(be, b), be->free(be, y);
    be->free(be, mean), be->free(be, rstd), be->free(be, dg), be->free(be, db), be->free(be, dy);
}

static void run_attention_loss(iisan_backend *be, outputs *o) {
    const int d = H * DH;
    float *qkv = rnd(be, B * SEQ * 3 * d, 15), *mask = be->alloc(be, B * SEQ * sizeof(float));
    for (int i = 0; i < B * SEQ; i++)
        mask[i] = i % SEQ >= (i / SEQ) % 4; /* left padding of 0 to 3 positions */
    float *out = rnd(be, B * SEQ * d, 0), *probs = rnd(be, B * H * SEQ * SEQ, 0);
    be->attention_fwd(be, out, probs, qkv, mask, B, SEQ, H, DH, 0.1f, 99);
    keep(o, out, B * SEQ * d);
    keep(o, probs, B * H * SEQ * SEQ);
    float *dqkv = rnd(be, B * SEQ * 3 * d, 0), *dout = rnd(be, B * SEQ * d, 16);
    be->attention_bwd(be, dqkv, dout, qkv, probs, B, SEQ, H, DH, 0.1f, 99);
    keep(o, dqkv, B * SEQ * 3 * d);

    float *logits = rnd(be, Q * C, 17), *logpop = rnd(be, C, 18), loss = 0;
    int cand[C], quser[Q], qtarget[Q];
    unsigned char *umask = calloc((size_t)B * C, 1);
    for (int c = 0; c < C; c++)
        cand[c] = c % 11 == 10 ? 0 : c + 1;
    for (int q = 0; q < Q; q++)
        quser[q] = q % B, qtarget[q] = (q * 7) % C;
    for (int i = 0; i < B * C; i++)
        umask[i] = iisan_rng_u64(19, i) % 9 == 0;
    be->inbatch_ce(be, logits, &loss, logpop, cand, umask, quser, qtarget, Q, C);
    keep(o, logits, Q * C);
    keep(o, &loss, 1);
    free(umask);
    be->free(be, qkv), be->free(be, mask), be->free(be, out), be->free(be, probs);
    be->free(be, dqkv), be->free(be, dout), be->free(be, logits), be->free(be, logpop);
}

static void run_eval(iisan_backend *be, outputs *o) {
    float *scores = rnd(be, NR * NC, 20);
    int target[NR], excl[NR * 3], rank[NR], idx[NR * TOPK];
    float top[NR * TOPK];
    for (int r = 0; r < NR; r++) {
        target[r] = 1 + r * 37 % (NC - 1);
        for (int e = 0; e < 3; e++)
            excl[r * 3 + e] = 1 + (r * 13 + e * 101) % (NC - 1);
    }
    be->rank_targets(be, rank, scores, NR, NC, target, excl, 3);
    be->topk(be, idx, top, scores, NR, NC, TOPK, excl, 3);
    for (int i = 0; i < NR; i++) {
        float f = (float)rank[i];
        keep(o, &f, 1);
    }
    for (int i = 0; i < NR * TOPK; i++) {
        float f = (float)idx[i];
        keep(o, &f, 1);
    }
    keep(o, top, NR * TOPK);
    be->free(be, scores);
}

static void test_same_bits(void) {
    outputs ref = {0};
    for (int T = 1; T <= 3; T++) {
        iisan_backend *be = iisan_backend_cpu(T);
        CHECK(iisan_backend_cpu_threads(be) == T);
        outputs o = {0};
        run_elementwise(be, &o);
        run_rows(be, &o);
        run_attention_loss(be, &o);
        run_eval(be, &o);
        if (T == 1) {
            ref = o;
        } else {
            size_t first = 0;
            while (first < o.n && !memcmp(o.out + first, ref.out + first, sizeof(float)))
                first++;
            CHECKF(o.n == ref.n && first == o.n, "%d threads: %zu outputs, first difference at %zu",
                   T, o.n, first);
            free(o.out);
        }
        be->destroy(be);
    }
    free(ref.out);
}

/* the time per op: every call counted, the GEMMs apart */
static void test_op_times(void) {
    iisan_backend *be = iisan_backend_cpu(2);
    float *a = rnd(be, 64 * 64, 1), *c = rnd(be, 64 * 64, 2);
    for (int i = 0; i < 3; i++)
        be->gemm(be, 0, 0, 64, 64, 64, 1, a, 64, a, 64, 0, c, 64);
    be->act_fwd(be, IISAN_ACT_RELU, c, c, 64 * 64);
    float *h = rnd(be, 64 * 64, 3);
    be->gate_bias_fwd(be, c, h, NULL, c, NULL, a, 1.0f, a, 64, 64);
    iisan_op_time t[64];
    int n = be->op_times(be, t, 64), gemm = 0, act = 0, gate = 0, named = 1;
    for (int i = 0; i < n; i++) {
        named &= t[i].op != NULL;
        if (!t[i].op) continue;
        if (!strcmp(t[i].op, "gemm")) gemm = t[i].calls == 3 && t[i].seconds > 0;
        if (!strcmp(t[i].op, "act_fwd")) act = t[i].calls == 1;
        if (!strcmp(t[i].op, "gate_bias_fwd")) gate = t[i].calls == 1;
    }
    CHECK(named && n == 3 && gemm && act && gate);
    CHECK(be->op_times(be, t, 1) == 1);
    be->free(be, a), be->free(be, c), be->free(be, h);
    be->destroy(be);
}

int main(int argc, char **argv) {
    TEST_MAIN_BEGIN(argc, argv);
    RUN(test_pool_cover);
    RUN(test_pool_churn);
    RUN(test_pool_concurrent);
    RUN(test_same_bits);
    RUN(test_op_times);
    printf("%d passed, %d failed\n", t_passed, t_failed);
    return t_failed != 0;
}
