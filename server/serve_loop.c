/* The daemon's main thread: a libuv loop for signals, the retraining
 * scheduler's timer and its wake-ups from other threads.
 *
 *   SIGHUP            the reload callback (the configuration; it hands the model
 *                     load to the loader thread, serve_load.c, and returns), then
 *                     a scheduler check (its settings may have changed)
 *   SIGTERM, SIGINT   the loop stops; serve_daemon.c then stops the daemon
 *   wake (uv_async)   sent by any thread (a commit: serve_committed, a reload):
 *                     a scheduler check
 *   timer             re-armed after every check for the time the scheduler
 *                     asks for (the next every-T-minutes deadline, or a second
 *                     later while a job runs)
 *
 * libuv delivers a signal through its own handler and a pipe, whichever thread
 * the kernel picks, so no thread blocks these signals. */
#include <pthread.h>
#include <signal.h>
#include <uv.h>

#include "server/serve.h"

static uv_loop_t loop;
static uv_async_t wake;
static uv_timer_t timer;
static uv_signal_t sig[3];
static pthread_mutex_t wake_mu = PTHREAD_MUTEX_INITIALIZER;
static int wake_ok; /* the async handle may be sent to (guarded by wake_mu) */
static int got_signal;
static void (*hup_cb)(void *);
static void *hup_arg;
static double (*tick_cb)(void); /* the scheduler's check */

static void on_timer(uv_timer_t *t);

/* one scheduler check, and the timer for the next */
static void check(void) {
    double s = tick_cb ? tick_cb() : -1;
    if (s < 0)
        uv_timer_stop(&timer);
    else
        uv_timer_start(&timer, on_timer, (uint64_t)(s * 1000.0 + 0.5), 0);
}

static void on_timer(uv_timer_t *t) {
    (void)t;
    check();
}

static void on_wake(uv_async_t *h) {
    (void)h;
    check();
}

static void on_signal(uv_signal_t *h, int signum) {
    (void)h;
    if (signum == SIGHUP) {
        log_event("info", "signal", "signal=HUP action=reload");
        if (hup_cb) hup_cb(hup_arg);
        check();
        return;
    }
    log_event("info", "signal", "signal=%s action=stop", signum == SIGTERM ? "TERM" : "INT");
    got_signal = signum;
    uv_stop(&loop);
}

int serve_loop_init(void) {
    if (uv_loop_init(&loop)) return -1;
    static const int signums[3] = {SIGTERM, SIGINT, SIGHUP};
    int rc = uv_async_init(&loop, &wake, on_wake) || uv_timer_init(&loop, &timer);
    for (int i = 0; !rc && i < 3; i++)
        rc = uv_signal_init(&loop, &sig[i]) || uv_signal_start(&sig[i], on_signal, signums[i]);
    if (rc) return -1;
    pthread_mutex_lock(&wake_mu);
    wake_ok = 1;
    pthread_mutex_unlock(&wake_mu);
    return 0;
}

int serve_loop_run(void (*on_hup)(void *), void *arg, double (*tick)(void)) {
    hup_cb = on_hup;
    hup_arg = arg;
    tick_cb = tick;
    got_signal = 0;
    check();
    while (!got_signal)
        uv_run(&loop, UV_RUN_DEFAULT);
    return got_signal;
}

static void on_closed(uv_handle_t *h) { (void)h; }

void serve_loop_close(void) {
    pthread_mutex_lock(&wake_mu);
    int was = wake_ok;
    wake_ok = 0;
    pthread_mutex_unlock(&wake_mu);
    if (!was) return;
    uv_close((uv_handle_t *)&wake, on_closed);
    uv_close((uv_handle_t *)&timer, on_closed);
    for (int i = 0; i < 3; i++)
        uv_close((uv_handle_t *)&sig[i], on_closed);
    uv_run(&loop, UV_RUN_DEFAULT); /* the close callbacks */
    uv_loop_close(&loop);
}

void scheduler_wake(void) {
    pthread_mutex_lock(&wake_mu);
    if (wake_ok) uv_async_send(&wake);
    pthread_mutex_unlock(&wake_mu);
}
