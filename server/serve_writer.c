/* Group commit: request threads queue tickets of interactions; one writer
 * thread takes everything queued (up to commit_batch interactions, whole
 * tickets), writes it in ONE LMDB transaction committed with fsync, and then
 * marks every ticket of the batch done and notifies it. A request is
 * acknowledged only after its ticket is done with rc 0, so an acknowledged
 * interaction is on disk. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/clock.h"
#include "server/serve.h"

struct ix_writer {
    store_ix *x;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    ix_ticket *head, *tail;
    long pending; /* interactions queued or being committed */
    long batch_max;
    int stop;
    int joined; /* writer_drain joined the thread */
};

static void *writer_main(void *arg) {
    ix_writer *w = arg;
    store_interaction *buf = NULL;
    size_t cap = 0;
    for (;;) {
        pthread_mutex_lock(&w->mu);
        while (!w->head && !w->stop)
            pthread_cond_wait(&w->cv, &w->mu);
        if (!w->head) { /* stopping with nothing queued */
            pthread_mutex_unlock(&w->mu);
            break;
        }
        /* take whole tickets up to batch_max interactions (at least one ticket) */
        ix_ticket *first = w->head, *last = w->head;
        size_t n = first->n;
        while (last->next && n + last->next->n <= (size_t)w->batch_max) {
            last = last->next;
            n += last->n;
        }
        w->head = last->next;
        if (!w->head) w->tail = NULL;
        last->next = NULL;
        pthread_mutex_unlock(&w->mu);

        int rc = 0;
        char err[256] = "";
        if (n > cap) {
            store_interaction *p = realloc(buf, n * sizeof *p);
            if (p) {
                buf = p;
                cap = n;
            } else {
                rc = IISAN_ENOMEM;
                snprintf(err, sizeof err, "out of memory");
            }
        }
        size_t o = 0;
        if (!rc)
            for (ix_ticket *t = first; t; t = t->next) {
                memcpy(buf + o, t->v, t->n * sizeof *buf);
                o += t->n;
            }
        double t0 = iisan_now();
        uint64_t seq = 0;
        if (!rc) rc = store_ix_append(w->x, buf, n, &seq, err, sizeof err);
        double dt = iisan_now() - t0;
        metrics_commit(n, dt, rc == 0);
        if (!rc) serve_committed(n);
        int nt = 0;
        for (ix_ticket *t = first; t; t = t->next)
            nt++;
        if (rc)
            log_event("error", "commit_failed", "interactions=%zu requests=%d error=%s", n, nt,
                      log_q(err, (char[300]){0}, 300));
        /* mark done, then notify (a notified ticket may be freed at once) */
        pthread_mutex_lock(&w->mu);
        for (ix_ticket *t = first; t; t = t->next) {
            t->rc = rc;
            t->first = seq;
            seq += t->n;
            snprintf(t->err, sizeof t->err, "%s", err);
        }
        w->pending -= (long)n;
        pthread_mutex_unlock(&w->mu);
        for (ix_ticket *t = first, *next; t; t = next) {
            next = t->next;
            pthread_mutex_lock(&w->mu);
            t->done = 1;
            pthread_mutex_unlock(&w->mu);
            if (t->notify) t->notify(t);
        }
    }
    free(buf);
    return NULL;
}

int writer_start(ix_writer **out, store_ix *x, long batch_max) {
    ix_writer *w = calloc(1, sizeof *w);
    if (!w) return -1;
    w->x = x;
    w->batch_max = batch_max > 0 ? batch_max : 1;
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    if (pthread_create(&w->thread, NULL, writer_main, w)) {
        free(w);
        return -1;
    }
    *out = w;
    return 0;
}

int writer_submit(ix_writer *w, ix_ticket *t) {
    t->next = NULL;
    t->done = 0;
    pthread_mutex_lock(&w->mu);
    if (w->stop) {
        pthread_mutex_unlock(&w->mu);
        return -1;
    }
    if (w->tail)
        w->tail->next = t;
    else
        w->head = t;
    w->tail = t;
    w->pending += (long)t->n;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    return 0;
}

long writer_pending(ix_writer *w) {
    pthread_mutex_lock(&w->mu);
    long p = w->pending;
    pthread_mutex_unlock(&w->mu);
    return p;
}

void writer_set_batch(ix_writer *w, long batch_max) {
    pthread_mutex_lock(&w->mu);
    w->batch_max = batch_max > 0 ? batch_max : 1;
    pthread_mutex_unlock(&w->mu);
}

void writer_drain(ix_writer *w) {
    if (!w) return;
    pthread_mutex_lock(&w->mu);
    int joined = w->joined;
    w->stop = 1;
    w->joined = 1;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    if (!joined) pthread_join(w->thread, NULL);
}

void writer_stop(ix_writer *w) {
    if (!w) return;
    writer_drain(w);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    free(w);
}
