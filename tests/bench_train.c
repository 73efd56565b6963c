/* make bench-train: IISAN training on Scientific-sized work at the published
 * settings (batch 64, n = 10, 13 states x 768 per modality, both modalities,
 * K = 7, r = 64, d = 64). The real Scientific interactions are imported into
 * a temporary store together with random fp16 hidden states for every item
 * (timing does not depend on their values), and trained through the same
 * zero-copy store reader as `iisan train`.
 *
 * Prints seconds per epoch (median), sequences and item encodings per
 * second, peak RSS against the hidden-state store's size, trainable
 * parameters, and the GEMM floor: the epoch's multiply-add work divided by
 * this machine's sgemm rate on the SAN's shapes, measured in the same run.
 * Last line: the same as JSON. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "core/dataset.h"
#include "core/model.h"
#include "core/train.h"
#include "kernels/half.h"
#include "kernels/rng.h"
#include "store/store.h"
#include "tests/bench_data.h"

static double epoch_times[64];
static int n_epochs;
static void hook(void *arg, const epoch_report *r) {
    (void)arg;
    epoch_times[n_epochs++] = r->seconds;
    fprintf(stderr, "epoch %d: %.2f s, loss %.4f\n", r->epoch, r->seconds, r->loss);
}

int main(int argc, char **argv) {
    const char *users = argc > 1 ? argv[1] : "../shared/data/amazon/scientific/users.tsv";
    int epochs = argc > 2 ? atoi(argv[2]) : 3;
    if (epochs < 1 || epochs > 64) epochs = 3;
    const int D = 768, NS = 13;
    char dir[] = "/tmp/iisan-bench-XXXXXX", err[512];
    iisan_store *s;
    iisan_dataset ds;
    double t0 = now();
    if (bench_make_store("bench", users, dir, NS, D, &s, &ds)) return 1;
    double store_mib = 2.0 * ds.n_items * NS * D * 2 / 1048576.0;
    fprintf(stderr, "bench: %d users, %d items, %.0f MiB of fp16 states written in %.1f s\n",
            ds.n_users, ds.n_items, store_mib, now() - t0);

    iisan_config c;
    config_default(&c);
    iisan_train_config tc;
    train_config_default(&tc);
    tc.epochs = epochs;
    iisan_backend *be = iisan_backend_cpu(0);
    iisan_model *m = model_create(&c, be, tc.batch, tc.seed, err, sizeof err);
    if (!m) {
        fprintf(stderr, "bench: %s\n", err);
        return 1;
    }
    /* the GEMM floor: sgemm rate on the SAN down/up shapes */
    double gflops;
    {
        int U = 640;
        float *a = be->alloc(be, (size_t)U * D * 4), *w = be->alloc(be, (size_t)64 * D * 4),
              *o = be->alloc(be, (size_t)U * 64 * 4), *h = be->alloc(be, (size_t)U * D * 4);
        double best = 1e9;
        for (int rep = 0; rep < 5; rep++) {
            double t = now();
            for (int it = 0; it < 20; it++) {
                be->gemm(be, 0, 1, U, 64, D, 1, a, D, w, D, 0, o, 64);
                be->gemm(be, 0, 1, U, D, 64, 1, o, 64, w, 64, 1, h, D);
            }
            t = now() - t;
            if (t < best) best = t;
        }
        gflops = 20 * 2 * 2.0 * U * 64 * D / best / 1e9;
        be->free(be, a);
        be->free(be, w);
        be->free(be, o);
        be->free(be, h);
    }
    store_reader *r;
    store_reader_begin(s, &r);
    iisan_states st = {store_get, r};
    train_summary sum;
    if (train_run(m, &ds, &st, &tc, 0, hook, NULL, &sum)) return 1;
    store_reader_end(r);
    qsort(epoch_times, n_epochs, sizeof(double), cmp_d);
    double med = epoch_times[n_epochs / 2];
    /* distinct items per batch, counted once over an epoch's batches */
    long slots = 0, distinct = 0;
    {
        int L = 11;
        int32_t *seq = malloc((size_t)64 * L * sizeof *seq);
        char *seen = calloc(ds.n_items + 1, 1);
        for (int u0 = 0; u0 < ds.n_users; u0 += 64) {
            int nb = ds.n_users - u0 < 64 ? ds.n_users - u0 : 64;
            for (int b = 0; b < nb; b++)
                dataset_sequence(&ds, u0 + b, SPLIT_TRAIN, seq + b * L, NULL);
            for (int e = 0; e < nb * L; e++)
                if (!seen[seq[e]]) seen[seq[e]] = 1, distinct++;
            for (int e = 0; e < nb * L; e++)
                seen[seq[e]] = 0;
            slots += nb * L;
        }
        free(seq);
        free(seen);
    }
    /* FLOPs per distinct item: 3 towers x K blocks x (2 forward + 4 backward
     * GEMMs) x 2*D*r multiply-adds */
    double san_flop = (double)distinct * 3 * c.K * 6 * 2.0 * D * c.r;
    double head_flop = 189.0 * 3 * 4 * 2.0 * 64 * D * D; /* M = P.F and its two grads */
    double floor_s = (san_flop + head_flop) / (gflops * 1e9);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double rss_mib = ru.ru_maxrss / 1024.0;
    printf("bench-train: %d epochs, median %.2f s/epoch (min %.2f, max %.2f)\n", n_epochs, med,
           epoch_times[0], epoch_times[n_epochs - 1]);
    printf("  %.0f sequences/s, %.0f item encodings/s (%ld distinct item-batches of %ld slots)\n",
           ds.n_users / med, distinct / med, distinct, slots);
    printf("  peak RSS %.0f MiB for a %.0f MiB hidden-state store (%.2fx)\n", rss_mib, store_mib,
           rss_mib / store_mib);
    printf("  %zu trainable parameters\n", model_param_count(m));
    printf("  sgemm %.1f GFLOP/s on the SAN shapes: GEMM floor %.2f s/epoch, epoch/floor %.2fx\n",
           gflops, floor_s, med / floor_s);
    printf("{\"bench\":\"train\",\"epochs\":%d,\"seconds_per_epoch\":%.3f,\"sequences_per_s\":%.1f,"
           "\"items_per_s\":%.1f,\"peak_rss_mib\":%.1f,\"state_store_mib\":%.1f,"
           "\"params\":%zu,\"sgemm_gflops\":%.2f,\"floor_seconds\":%.3f}\n",
           n_epochs, med, ds.n_users / med, distinct / med, rss_mib, store_mib,
           model_param_count(m), gflops, floor_s);
    model_destroy(m);
    be->destroy(be);
    dataset_free(&ds);
    store_close(s);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd)) return 1;
    return 0;
}
