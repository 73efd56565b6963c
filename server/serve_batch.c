/* Batching POST /recommend: request threads queue tickets (a parsed request
 * with its model version retained); infer_threads batch threads each take
 * what is queued for one model version (up to max_batch tickets, optionally
 * waiting batch_wait_us for more), run it as one infer_recommend_batch (one
 * sequence-encoder pass and one pass over the item table for all of them)
 * and notify every ticket, which resumes its suspended connection. Under
 * light load a batch is one request and nothing waits; under heavy load the
 * queue fills while a batch runs and the next batch takes it all. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "server/serve.h"
#include "server/serve_state.h"

struct rec_batcher {
    pthread_t *threads;
    int nthreads;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    rec_ticket *head, *tail;
    long queued;
    int max_batch;
    long wait_us;
    int stop;
    int joined; /* batcher_drain joined the threads */
};

static void deadline_after(struct timespec *ts, long us) {
    clock_gettime(CLOCK_REALTIME, ts);
    ts->tv_nsec += (us % 1000000) * 1000;
    ts->tv_sec += us / 1000000 + ts->tv_nsec / 1000000000;
    ts->tv_nsec %= 1000000000;
}

/* one batch through the model; a failed backend's results are refused (REC_BACKEND_FAILED) */
static void run_batch(infer_model *m, infer_query *qs, int n) {
    if (infer_recommend_batch(m, qs, n) != IISAN_EBACKEND) return;
    iisan_backend *be = g_srv.be;
    char msg[400], q[500];
    int failures = be->status(be, msg, sizeof msg);
    static atomic_int logged;
    if (!atomic_exchange(&logged, 1))
        log_event("error", "backend_failed",
                  "backend=%s failures=%d first=%s message=\"/recommend answers 503 until the "
                  "daemon is restarted\"",
                  be->name, failures, log_q(msg, q, sizeof q));
    metrics_backend_failed(n, failures);
    for (int i = 0; i < n; i++)
        qs[i].cnt = REC_BACKEND_FAILED;
}

static void *batch_main(void *arg) {
    rec_batcher *b = arg;
    int cap = 0;
    infer_query *qs = NULL;
    rec_ticket **ts = NULL;
    for (;;) {
        pthread_mutex_lock(&b->mu);
        while (!b->head && !b->stop)
            pthread_cond_wait(&b->cv, &b->mu);
        if (!b->head) {
            pthread_mutex_unlock(&b->mu);
            break;
        }
        if (b->wait_us > 0 && b->queued < b->max_batch && !b->stop) {
            struct timespec dl;
            deadline_after(&dl, b->wait_us);
            while (b->queued < b->max_batch && !b->stop)
                if (pthread_cond_timedwait(&b->cv, &b->mu, &dl)) break;
        }
        if (b->max_batch > cap) {
            infer_query *q2 = realloc(qs, (size_t)b->max_batch * sizeof *qs);
            if (q2) qs = q2;
            rec_ticket **t2 = realloc(ts, (size_t)b->max_batch * sizeof *ts);
            if (t2) ts = t2;
            if (q2 && t2) cap = b->max_batch;
        }
        /* the head's model version, and every queued ticket of that version up to max_batch */
        int n = 0, lim = cap < b->max_batch ? cap : b->max_batch;
        if (lim < 1) lim = 1;
        infer_model *m = b->head->m;
        rec_ticket **pp = &b->head, *prev = NULL;
        rec_ticket *one = NULL;
        while (*pp && n < lim) {
            rec_ticket *t = *pp;
            if (t->m != m) {
                prev = t;
                pp = &t->next;
                continue;
            }
            *pp = t->next;
            if (b->tail == t) b->tail = prev;
            t->next = NULL;
            if (cap)
                ts[n++] = t;
            else {
                one = t; /* out of memory for the arrays: one at a time */
                n = 1;
            }
        }
        b->queued -= n;
        pthread_mutex_unlock(&b->mu);
        if (one) {
            run_batch(m, &one->q, 1);
            atomic_store(&one->done, 1);
            one->notify(one);
            continue;
        }
        for (int i = 0; i < n; i++)
            qs[i] = ts[i]->q;
        run_batch(m, qs, n);
        metrics_batch(n);
        for (int i = 0; i < n; i++) {
            ts[i]->q.cnt = qs[i].cnt;
            atomic_store(&ts[i]->done, 1);
            ts[i]->notify(ts[i]); /* may free the ticket's request: last use */
        }
    }
    free(qs);
    free(ts);
    return NULL;
}

int batcher_start(rec_batcher **out, int threads, int max_batch, long wait_us) {
    rec_batcher *b = calloc(1, sizeof *b);
    if (!b) return -1;
    pthread_mutex_init(&b->mu, NULL);
    pthread_cond_init(&b->cv, NULL);
    b->max_batch = max_batch > 0 ? max_batch : 1;
    b->wait_us = wait_us;
    b->threads = calloc((size_t)threads, sizeof *b->threads);
    if (!b->threads) {
        free(b);
        return -1;
    }
    for (int i = 0; i < threads; i++) {
        if (pthread_create(&b->threads[i], NULL, batch_main, b)) break;
        b->nthreads++;
    }
    if (b->nthreads == 0) {
        free(b->threads);
        free(b);
        return -1;
    }
    *out = b;
    return 0;
}

int batcher_submit(rec_batcher *b, rec_ticket *t) {
    t->next = NULL;
    atomic_store(&t->done, 0);
    pthread_mutex_lock(&b->mu);
    if (b->stop) {
        pthread_mutex_unlock(&b->mu);
        return -1;
    }
    if (b->tail)
        b->tail->next = t;
    else
        b->head = t;
    b->tail = t;
    b->queued++;
    if (b->wait_us > 0 && b->queued < b->max_batch)
        pthread_cond_signal(&b->cv);
    else
        pthread_cond_broadcast(&b->cv);
    pthread_mutex_unlock(&b->mu);
    return 0;
}

void batcher_set(rec_batcher *b, int max_batch, long wait_us) {
    pthread_mutex_lock(&b->mu);
    b->max_batch = max_batch > 0 ? max_batch : 1;
    b->wait_us = wait_us;
    pthread_mutex_unlock(&b->mu);
}

void batcher_drain(rec_batcher *b) {
    if (!b) return;
    pthread_mutex_lock(&b->mu);
    int joined = b->joined;
    b->stop = 1;
    b->joined = 1;
    pthread_cond_broadcast(&b->cv);
    pthread_mutex_unlock(&b->mu);
    if (joined) return;
    for (int i = 0; i < b->nthreads; i++)
        pthread_join(b->threads[i], NULL);
}

void batcher_stop(rec_batcher *b) {
    if (!b) return;
    batcher_drain(b);
    free(b->threads);
    pthread_mutex_destroy(&b->mu);
    pthread_cond_destroy(&b->cv);
    free(b);
}
