/* iisan encode: runs the built-in text encoder (core/encoder_bert.h) over every
 * titled catalogue item that has no text states yet and stores their states
 * (docs/encoders.md). Resumable: every batch is stored as it finishes, and a
 * later run encodes only what is still missing. */
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/encode_items.h"
#include "core/encoder_bert.h"
#include "server/cli.h"
#include "server/common.h"
#include "store/states_query.h"
#include "store/store.h"

static void help(FILE *f) {
    fprintf(f, "usage: iisan encode --data DIR --model MODEL_DIR [--batch 32] [--threads N]\n"
               "                    [--device cpu|cuda|auto] [--backbone NAME] [--max-len 30]\n"
               "                    [--quiet] [--json]\n"
               "\n"
               "Encodes the title of every catalogue item of DIR that has no text states yet\n"
               "with a BERT-family checkpoint and stores the [CLS] vector of every hidden state\n"
               "(fp16 [L+1, D] per item). Stopped runs resume where they stopped.\n"
               "\n"
               "  --data DIR        data directory (its catalogue imported)\n"
               "  --model DIR       Hugging Face checkpoint: config.json, model.safetensors,\n"
               "                    vocab.txt (deploy/install-minilm.sh prints one)\n"
               "  --batch N         titles per forward pass (default 32)\n"
               "  --threads N       BLAS threads (0 = all cores, the default)\n"
               "  --device D        cpu, cuda or auto (default auto)\n"
               "  --backbone NAME   the name the states are stored under (default: the model\n"
               "                    directory's name, e.g. all-MiniLM-L6-v2); a store holds the\n"
               "                    text states of one backbone only\n"
               "  --max-len N       tokens per title, [CLS] and [SEP] included (default 30)\n"
               "  --quiet           no progress bar or summary\n"
               "  --json            print one JSON object with the figures as the last line\n");
}

static int fail(const char *msg) {
    fprintf(stderr, "iisan encode: %s\n", msg);
    return 1;
}

/* the model directory's last component; "" when it has none worth a name */
static void dir_name(const char *path, char *out, size_t cap) {
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", path);
    size_t n = strlen(buf);
    while (n > 1 && buf[n - 1] == '/')
        buf[--n] = 0;
    const char *b = strrchr(buf, '/');
    b = b ? b + 1 : buf;
    size_t k = strlen(b);
    if (!strcmp(b, ".") || !strcmp(b, "..") || k >= cap) k = 0; /* no usable name */
    memcpy(out, b, k);
    out[k] = 0;
}

typedef struct {
    double t0, last;
    int tty, quiet;
} bar;

static void fmt_time(double s, char *out, size_t cap) {
    long t = (long)(s + 0.5);
    if (t >= 3600)
        snprintf(out, cap, "%ldh%02ldm", t / 3600, t / 60 % 60);
    else if (t >= 60)
        snprintf(out, cap, "%ldm%02lds", t / 60, t % 60);
    else
        snprintf(out, cap, "%lds", t);
}

static void on_progress(void *arg, uint32_t done, uint32_t total, uint64_t tok_done,
                        uint64_t tok_total) {
    bar *b = arg;
    if (b->quiet) return;
    double now = now_seconds();
    int end = done == total;
    if (!end && now - b->last < (b->tty ? 0.25 : 10.0)) return;
    b->last = now;
    double dt = now - b->t0, rate = dt > 0 ? done / dt : 0;
    char left[32] = "?";
    if (tok_done > 0)
        fmt_time(dt * (double)(tok_total - tok_done) / (double)tok_done, left, sizeof left);
    int width = 30, fill = total ? (int)((double)done / total * width) : width;
    char meter[64];
    for (int i = 0; i < width; i++)
        meter[i] = i < fill ? '#' : '.';
    meter[width] = 0;
    fprintf(stderr, "%s  [%s] %u/%u items %3.0f%%  %.1f items/s  %s left%s", b->tty ? "\r" : "",
            meter, done, total, total ? 100.0 * done / total : 100.0, rate, left,
            b->tty ? (end ? "\n" : "") : "\n");
    fflush(stderr);
}

/* the --json line */
static void print_json(uint32_t done, double dt, uint32_t titled, uint32_t with_states,
                       const char *backbone, int nstates, int width, long batch,
                       const char *backend) {
    json_t *o =
        json_pack("{s:i, s:f, s:f, s:i, s:i, s:s, s:i, s:i, s:i, s:s}", "encoded", (json_int_t)done,
                  "seconds", dt, "items_per_s", dt > 0 ? done / dt : 0.0, "titled",
                  (json_int_t)titled, "with_states", (json_int_t)with_states, "backbone", backbone,
                  "nstates", nstates, "width", width, "batch", (int)batch, "backend", backend);
    char *txt = o ? json_dumps(o, JSON_COMPACT) : NULL;
    printf("%s\n", txt ? txt : "{}");
    free(txt);
    json_decref(o);
}

int cmd_encode(int argc, char **argv) {
    static const struct option opts[] = {
        {"data", 1, 0, 'D'},    {"model", 1, 0, 'm'},  {"batch", 1, 0, 'b'},
        {"threads", 1, 0, 'T'}, {"device", 1, 0, 'G'}, {"backbone", 1, 0, 'n'},
        {"max-len", 1, 0, 'L'}, {"quiet", 0, 0, 'q'},  {"json", 0, 0, 'j'},
        {"help", 0, 0, 'h'},    {0, 0, 0, 0}};
    const char *dir = NULL, *model = NULL, *device = NULL, *backbone = NULL;
    long batch = 32, threads = 0, max_len = BERT_DEFAULT_MAX_LEN;
    int quiet = 0, json = 0, ch;
    optind = 1;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (ch) {
        case 'D': dir = optarg; break;
        case 'm': model = optarg; break;
        case 'b':
            if (opt_int("encode", "batch", optarg, 1, 4096, &batch)) return 2;
            break;
        case 'T':
            if (opt_int("encode", "threads", optarg, 0, 1024, &threads)) return 2;
            break;
        case 'G':
            if (opt_device("encode", optarg)) return 2;
            device = optarg;
            break;
        case 'n': backbone = optarg; break;
        case 'L':
            if (opt_int("encode", "max-len", optarg, 2, 512, &max_len)) return 2;
            break;
        case 'q': quiet = 1; break;
        case 'j': json = 1; break;
        case 'h': help(stdout); return 0;
        case ':': fprintf(stderr, "iisan encode: %s needs a value\n", argv[optind - 1]); return 2;
        default:
            fprintf(stderr, "iisan encode: unknown option '%s' (see iisan encode --help)\n",
                    argv[optind - 1]);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "iisan encode: unexpected argument '%s' (see iisan encode --help)\n",
                argv[optind]);
        return 2;
    }
    if (!dir || !model) {
        fprintf(stderr, "iisan encode: --data DIR and --model MODEL_DIR are required (see iisan "
                        "encode --help)\n");
        return 2;
    }
    if (backbone && (!*backbone || strlen(backbone) >= 128)) {
        fprintf(stderr, "iisan encode: --backbone wants a name of 1..127 bytes\n");
        return 2;
    }

    char err[1024], name[128];
    iisan_store *s = NULL;
    iisan_backend *be = NULL;
    bert_encoder *e = NULL;
    uint32_t *idx = NULL, n = 0;
    int rc = 1;
    if (access(dir, F_OK)) {
        snprintf(err, sizeof err,
                 "%s: no such data directory (import a catalogue first: iisan "
                 "import --data DIR --items items.tsv)",
                 dir);
        return fail(err);
    }
    if (store_open(&s, dir, 0, err, sizeof err)) return fail(err);
    uint32_t titled = store_items_with_title(s);
    if (titled == 0) {
        snprintf(err, sizeof err, "%s: the catalogue has no titles to encode", dir);
        fail(err);
        goto out;
    }
    if (store_items_missing_states(s, IISAN_TEXT, 1, &idx, &n)) {
        fail("reading the store failed");
        goto out;
    }

    /* the name, and a store of another backbone, before loading anything */
    if (backbone)
        snprintf(name, sizeof name, "%s", backbone);
    else
        dir_name(model, name, sizeof name);
    store_states_info info;
    int have = store_states_info_get(s, IISAN_TEXT, &info) == 0;
    if (have && name[0] && strcmp(info.backbone, name)) {
        snprintf(err, sizeof err,
                 "%s holds text states of backbone '%s', not '%s': encode into another data "
                 "directory, or pass --backbone '%s' if this is the same model",
                 dir, info.backbone, name, info.backbone);
        fail(err);
        goto out;
    }
    if (n == 0) {
        if (!quiet)
            fprintf(stderr, "all %u titled items already have text states (%s); nothing to do\n",
                    titled, have ? info.backbone : name);
        if (json)
            print_json(0, 0.0, titled, have ? info.count : 0, have ? info.backbone : name,
                       have ? info.nstates : 0, have ? info.width : 0, batch, "none");
        rc = 0;
        goto out;
    }

    be = backend_choose("encode", device, (int)threads);
    if (!be) goto out;
    double t_load = now_seconds();
    if (bert_load(&e, be, model, (int)batch, (int)max_len, err, sizeof err)) {
        fail(err);
        goto out;
    }
    const bert_config *c = bert_get_config(e);
    if (!name[0]) { /* a directory without a usable name: the config's */
        const char *p = c->name_or_path[0] ? c->name_or_path : "bert";
        snprintf(name, sizeof name, "%.127s", p);
    }
    if (!quiet)
        fprintf(stderr,
                "model: %s (%d layers, %d wide, %d heads, %s weights, %zu parameters), loaded in "
                "%.2f s; states stored as '%s', %d x %d fp16 per item\n",
                model, c->layers, c->hidden, c->heads, c->weights_dtype, bert_param_count(e),
                now_seconds() - t_load, name, bert_nstates(e), bert_width(e));
    if (!quiet && n < titled)
        fprintf(stderr, "%u of %u titled items already have text states; encoding the other %u\n",
                titled - n, titled, n);

    bar b = {.t0 = now_seconds(), .tty = isatty(2), .quiet = quiet};
    b.last = b.t0;
    uint32_t done = 0;
    int r = encode_items_text(e, s, name, idx, n, &done, on_progress, &b, err, sizeof err);
    double dt = now_seconds() - b.t0;
    if (!r && backend_check("encode", be)) r = IISAN_EIO;
    if (r) {
        if (b.tty && !quiet && done) fputc('\n', stderr);
        fail(err);
        if (done)
            fprintf(stderr,
                    "iisan encode: %u items were stored before the failure; run again "
                    "to encode the rest\n",
                    done);
        goto out;
    }
    store_states_info after = {0};
    store_states_info_get(s, IISAN_TEXT, &after);
    if (!quiet)
        fprintf(stderr,
                "encoded %u items in %.1f s (%.1f items/s); %u of %u titled items have text "
                "states (%s, %d x %d)\n",
                done, dt, dt > 0 ? done / dt : 0.0, after.count, titled, name, bert_nstates(e),
                bert_width(e));
    if (json)
        print_json(done, dt, titled, after.count, name, bert_nstates(e), bert_width(e), batch,
                   be->name);
    rc = 0;
out:
    bert_free(e);
    if (be) be->destroy(be);
    free(idx);
    store_close(s);
    return rc;
}
