/* make bench-train: IISAN training on Scientific-sized work at the published
 * settings (batch 64, n = 10, 13 states x 768 per modality, both modalities,
 * K = 7, r = 64, d = 64). The real Scientific interactions are imported into
 * a temporary store together with random fp16 hidden states for every item
 * (timing does not depend on their values), and trained through the same
 * zero-copy store reader as `iisan train`.
 *
 * `bench_train versa` runs IISAN-Versa instead, on a wide, deep text side and a
 * small image side: text 33 states x 2,048 (an LLM's layer states) with the
 * 8-entry schedule 4,8,..,32, image 13 x 384 (a ViT-S) every second state (7
 * blocks); the inter tower is 384 wide, 7 blocks, each projecting the text
 * state 2,048 -> 384. make bench-train runs both, as separate processes, so
 * that each peak RSS is its own.
 *
 * `bench_train [versa] bf16` runs the SAN and head GEMMs in bf16 (--precision bf16; CPUs with
 * AVX512-BF16) and prints the bf16 GEMM rate beside the sgemm rate; the floor is then the
 * epoch's work at the bf16 rate.
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
#include "kernels/blas_info.h"
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

/* seconds inside the ops per epoch, from the backend's counters: GEMM (gemm, gemm_batched,
 * gemm_mixed, ger) into *gemm; prints the non-GEMM ops taking most, at least 1% of the epoch */
typedef struct {
    iisan_op_time t[64];
    int n;
} op_snapshot;

static void snapshot(iisan_backend *be, op_snapshot *s) {
    s->n = be->op_times ? be->op_times(be, s->t, 64) : 0;
}

static double op_since(const op_snapshot *a, const op_snapshot *b, int i) {
    for (int j = 0; j < a->n; j++)
        if (!strcmp(a->t[j].op, b->t[i].op)) return b->t[i].seconds - a->t[j].seconds;
    return b->t[i].seconds;
}

static double op_breakdown(const op_snapshot *a, const op_snapshot *b, int epochs, double epoch_s) {
    double gemm = 0;
    for (int i = 0; i < b->n; i++)
        if (!strncmp(b->t[i].op, "gemm", 4) || !strcmp(b->t[i].op, "ger"))
            gemm += op_since(a, b, i) / epochs;
    printf("  non-GEMM ops, s/epoch:");
    int shown[64] = {0};
    for (;;) { /* largest first */
        int best = -1;
        for (int i = 0; i < b->n; i++)
            if (!shown[i] && strncmp(b->t[i].op, "gemm", 4) && strcmp(b->t[i].op, "ger") &&
                (best < 0 || op_since(a, b, i) > op_since(a, b, best)))
                best = i;
        if (best < 0 || op_since(a, b, best) / epochs < 0.01 * epoch_s) break;
        shown[best] = 1;
        printf(" %s %.2f", b->t[best].op, op_since(a, b, best) / epochs);
    }
    printf("\n");
    return gemm;
}

/* bench_train bf16: gemm_mixed in bf16, its GFLOP/s on the same SAN shapes as the sgemm rate
 * (640 x 64 x D and 640 x D x 64, best of 20 rounds of 5); exits when this CPU cannot */
static double bf16_rate(iisan_backend *be, int D) {
    char err[256];
    if (be->set_precision(be, IISAN_PREC_BF16, err, sizeof err)) {
        fprintf(stderr, "bench: %s\n", err);
        exit(1);
    }
    const int U = 640, R = 64;
    float *a = be->alloc(be, (size_t)U * D * 4), *w = be->alloc(be, (size_t)R * D * 4),
          *o = be->alloc(be, (size_t)U * R * 4), *h = be->alloc(be, (size_t)U * D * 4);
    for (size_t i = 0; i < (size_t)U * D; i++)
        a[i] = (float)(i % 13) * 0.01f;
    for (size_t i = 0; i < (size_t)R * D; i++)
        w[i] = (float)(i % 7) * 0.01f;
    double best = 1e30;
    for (int rep = 0; rep < 20; rep++) {
        double t = iisan_now();
        for (int it = 0; it < 5; it++) {
            be->gemm_mixed(be, 0, 1, U, R, D, 1, a, D, w, D, 0, o, R);
            be->gemm_mixed(be, 0, 1, U, D, R, 1, o, R, w, R, 1, h, D);
        }
        t = iisan_now() - t;
        if (rep > 0 && t < best) best = t;
    }
    be->free(be, a), be->free(be, w), be->free(be, o), be->free(be, h);
    return 5 * 2 * 2.0 * U * R * D / best / 1e9;
}

/* distinct items per batch, counted once over an epoch's batches; *slots gets all slots */
static long distinct_items(const iisan_dataset *ds, long *slots) {
    const int L = 11;
    long distinct = 0;
    *slots = 0;
    int32_t *seq = malloc((size_t)64 * L * sizeof *seq);
    char *seen = calloc(ds->n_items + 1, 1);
    for (int u0 = 0; u0 < ds->n_users; u0 += 64) {
        int nb = ds->n_users - u0 < 64 ? ds->n_users - u0 : 64;
        for (int b = 0; b < nb; b++)
            dataset_sequence(ds, u0 + b, SPLIT_TRAIN, seq + b * L, NULL);
        for (int e = 0; e < nb * L; e++)
            if (!seen[seq[e]]) seen[seq[e]] = 1, distinct++;
        for (int e = 0; e < nb * L; e++)
            seen[seq[e]] = 0;
        *slots += nb * L;
    }
    free(seq);
    free(seen);
    return distinct;
}

/* the epoch's multiply-adds: per distinct item, every tower's K blocks x (2 forward + 4
 * backward GEMMs) x 2*D*r, less the d in GEMM an intra tower's first block does without
 * from h_0 = 0 (core/tower.c), Versa's projections (forward and dQ: 2 x 2*Dw*Dx per step);
 * per batch, the heads' M = P.F and its two gradients (3 x 2*d*fo*di per tower) */
static double epoch_flop(const iisan_config *c, long distinct, int batches) {
    double san = 0, head = 0, proj = 0;
    for (int t = 0; t < N_TOWERS; t++) {
        if (!((c->towers >> t) & 1)) continue;
        int fo, di;
        params_head_dims(c, t, &fo, &di);
        const int skip = t != TOWER_INTER && !c->remove_first;
        san += (6.0 * config_tower_depth(c, t) - skip) * config_tower_width(c, t);
        head += 3 * 2.0 * c->d * fo * di;
    }
    if (c->arch == ARCH_VERSA && config_versa_wide(c) >= 0)
        proj = 2 * 2.0 * config_tower_depth(c, TOWER_INTER) * c->mods[config_versa_wide(c)].D *
               config_tower_width(c, TOWER_INTER);
    return (double)distinct * (san * 2.0 * c->r + proj) + batches * head;
}

/* the model measured: symmetric IISAN at the published shapes, or the Versa case above */
static void bench_config(iisan_config *c, int versa, int *NS, int *D) {
    config_default(c);
    NS[0] = NS[1] = 13;
    D[0] = D[1] = 768;
    if (!versa) return;
    char err[256];
    c->arch = ARCH_VERSA;
    c->nstates = c->D = c->K = 0;
    NS[MOD_TEXT] = 33, D[MOD_TEXT] = 2048;
    NS[MOD_IMAGE] = 13, D[MOD_IMAGE] = 384;
    for (int mod = 0; mod < N_MODS; mod++) {
        c->mods[mod].nstates = NS[mod];
        c->mods[mod].D = D[mod];
    }
    if (config_set_schedule_mod(c, MOD_TEXT, "4,8,12,16,20,24,28,32", err, sizeof err) ||
        config_set_schedule_mod(c, MOD_IMAGE, "every2", err, sizeof err)) {
        fprintf(stderr, "bench: %s\n", err);
        exit(1);
    }
}

int main(int argc, char **argv) {
    blas_guard(argv); /* OpenBLAS's fallback to SSE kernels on a CPU it does not know */
    iisan_backend *be = iisan_backend_cpu(0);
    blas_info bi;
    char line[640];
    blas_info_probe(&bi, 0.15);
    blas_info_line(&bi, line, sizeof line);
    fprintf(stderr, "%s\n", line);
    if (blas_refuse_generic(&bi, "bench-train")) return 3;
    const char *below = blas_generic_warning(&bi); /* AVX2 kernels on an AVX-512 CPU */
    if (below) fprintf(stderr, "\n*** bench-train: %s ***\n\n", below);
    int versa = argc > 1 && !strcmp(argv[1], "versa");
    if (versa) argc--, argv++;
    int bf16 = argc > 1 && !strcmp(argv[1], "bf16"); /* the SAN and head GEMMs in bf16 */
    if (bf16) argc--, argv++;
    const char *users = argc > 1 ? argv[1] : "../shared/data/amazon/scientific/users.tsv";
    int epochs = argc > 2 ? atoi(argv[2]) : 3;
    if (epochs < 1 || epochs > 64) epochs = 3;
    iisan_config c;
    int NS[2], D[2];
    bench_config(&c, versa, NS, D);
    const char *name = versa ? "IISAN-Versa" : "IISAN";
    char dir[] = "/tmp/iisan-bench-XXXXXX", err[512];
    iisan_store *s;
    iisan_dataset ds;
    double t0 = iisan_now();
    if (bench_make_store_shapes("bench", users, dir, NS, D, &s, &ds)) return 1;
    double store_mib = (double)ds.n_items * (NS[0] * D[0] + NS[1] * D[1]) * 2 / 1048576.0;
    fprintf(stderr, "bench %s: %d users, %d items, %.0f MiB of fp16 states written in %.1f s\n",
            name, ds.n_users, ds.n_items, store_mib, iisan_now() - t0);

    iisan_train_config tc;
    train_config_default(&tc);
    tc.epochs = epochs;
    iisan_model *m = model_create(&c, be, tc.batch, tc.seed, err, sizeof err);
    if (!m) {
        fprintf(stderr, "bench: %s\n", err);
        return 1;
    }
    double gflops = blas_sgemm_rate(D[0], 1.0); /* the floor's rate, on this width */
    double bf16_gflops = bf16 ? bf16_rate(be, D[0]) : 0, floor_gflops = bf16 ? bf16_gflops : gflops;
    store_reader *r;
    store_reader_begin(s, &r);
    iisan_states st = states_from_reader(r);
    train_summary sum;
    op_snapshot ops0, ops1;
    snapshot(be, &ops0);
    if (train_run(m, &ds, &st, &tc, 0, hook, NULL, &sum)) return 1;
    store_reader_end(r);
    snapshot(be, &ops1);
    double mean_s = 0;
    for (int i = 0; i < n_epochs; i++)
        mean_s += epoch_times[i] / n_epochs;
    qsort(epoch_times, n_epochs, sizeof(double), cmp_d);
    double med = epoch_times[n_epochs / 2];
    long slots, distinct = distinct_items(&ds, &slots);
    double floor_s = epoch_flop(&c, distinct, (ds.n_users + 63) / 64) / (floor_gflops * 1e9);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double rss_mib = ru.ru_maxrss / 1024.0;
    printf("bench-train %s %s (text %d x %d, image %d x %d): %d epochs, median %.2f s/epoch "
           "(min %.2f, max %.2f)\n",
           name, bf16 ? "bf16" : "fp32", NS[0], D[0], NS[1], D[1], n_epochs, med, epoch_times[0],
           epoch_times[n_epochs - 1]);
    printf("  %.0f sequences/s, %.0f item encodings/s (%ld distinct item-batches of %ld slots)\n",
           ds.n_users / med, distinct / med, distinct, slots);
    printf("  peak RSS %.0f MiB for a %.0f MiB hidden-state store (%.2fx)\n", rss_mib, store_mib,
           rss_mib / store_mib);
    printf("  %zu trainable parameters\n", model_param_count(m));
    if (bf16)
        printf("  bf16 GEMM %.1f GFLOP/s beside sgemm %.1f on the SAN shapes (%.2fx): ",
               bf16_gflops, gflops, bf16_gflops / gflops);
    else
        printf("  sgemm %.1f GFLOP/s on the SAN shapes: ", gflops);
    printf("GEMM floor %.2f s/epoch, epoch/floor %.2fx\n", floor_s, med / floor_s);
    double gemm_s = op_breakdown(&ops0, &ops1, n_epochs, mean_s), rest_s = mean_s - gemm_s;
    printf("  time in GEMM %.2f s/epoch, the rest %.2f s/epoch = %.2fx the floor (mean of %d "
           "epochs, %d threads)\n",
           gemm_s, rest_s, rest_s / floor_s, n_epochs, iisan_backend_cpu_threads(be));
    printf("  %s\n", line);
    blas_info_json(&bi, line, sizeof line);
    printf("{\"bench\":\"train\",\"arch\":\"%s\",\"text\":[%d,%d],\"image\":[%d,%d],"
           "\"epochs\":%d,\"seconds_per_epoch\":%.3f,\"sequences_per_s\":%.1f,"
           "\"items_per_s\":%.1f,\"peak_rss_mib\":%.1f,\"state_store_mib\":%.1f,"
           "\"params\":%zu,\"sgemm_gflops\":%.2f,\"floor_seconds\":%.3f,"
           "\"gemm_seconds\":%.3f,\"rest_seconds\":%.3f,\"precision\":\"%s\","
           "\"bf16_gflops\":%.2f,%s}\n",
           versa ? "versa" : "iisan", NS[0], D[0], NS[1], D[1], n_epochs, med, ds.n_users / med,
           distinct / med, rss_mib, store_mib, model_param_count(m), gflops, floor_s, gemm_s,
           rest_s, bf16 ? "bf16" : "fp32", bf16_gflops, line);
    model_destroy(m);
    be->destroy(be);
    dataset_free(&ds);
    store_close(s);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd)) return 1;
    return 0;
}
