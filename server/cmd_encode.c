/* iisan encode: runs the built-in text encoder (core/encoder_bert.h) over every
 * titled catalogue item that has no text states yet, and / or the image encoder
 * (core/encoder_vit.h, core/image.h) over every item with an image file and no
 * image states yet, and stores their states (docs/encoders.md). Resumable:
 * every batch is stored as it finishes, and a later run encodes only what is
 * still missing. */
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/encode_items.h"
#include "core/encoder_bert.h"
#include "core/encoder_vit.h"
#include "server/cli.h"
#include "server/common.h"
#include "store/states_query.h"
#include "store/store.h"

static void help(FILE *f) {
    fprintf(f, "usage: iisan encode --data DIR [--model MODEL_DIR] [--images IMAGE_DIR\n"
               "                    --image-model VIT_DIR] [--batch 32] [--threads N]\n"
               "                    [--device cpu|cuda|auto] [--backbone NAME]\n"
               "                    [--image-backbone NAME] [--max-len 30] [--quiet] [--json]\n"
               "\n"
               "With --model, encodes the title of every catalogue item of DIR that has no text\n"
               "states yet with a BERT-family checkpoint; with --images and --image-model, the\n"
               "image of every item that has one in IMAGE_DIR and no image states yet with a ViT\n"
               "checkpoint. Stores the [CLS] vector of every hidden state (fp16 [L+1, D] per\n"
               "item). Stopped runs resume where they stopped.\n"
               "\n"
               "  --data DIR            data directory (its catalogue imported)\n"
               "  --model DIR           text: Hugging Face checkpoint: config.json,\n"
               "                        model.safetensors, vocab.txt (deploy/install-minilm.sh\n"
               "                        prints one)\n"
               "  --images DIR          images: DIR/ITEM_ID.jpg, .jpeg or .png (JPEG or PNG);\n"
               "                        items without one are skipped and counted, unreadable\n"
               "                        or corrupt ones are named, skipped and counted\n"
               "  --image-model DIR     images: a ViT checkpoint (config.json, model.safetensors)\n"
               "  --batch N             titles or images per forward pass (default 32)\n"
               "  --threads N           BLAS threads (0 = all cores, the default)\n"
               "  --device D            cpu, cuda or auto (default auto)\n"
               "  --backbone NAME       the name the text states are stored under (default: the\n"
               "                        model directory's name, e.g. all-MiniLM-L6-v2); a store\n"
               "                        holds the text states of one backbone only\n"
               "  --image-backbone NAME the same for the image states (default: the image\n"
               "                        model directory's name)\n"
               "  --max-len N           tokens per title, [CLS] and [SEP] included (default 30)\n"
               "  --quiet               no progress bar or summary\n"
               "  --json                print one JSON object with the figures as the last line\n");
}

static int fail(const char *msg) {
    fprintf(stderr, "iisan encode: %s\n", msg);
    return 1;
}

/* the model directory's last component; "" when it has none worth a name */
typedef struct {
    double t0, last;
    int tty, quiet;
    const char *unit; /* "items", "images" */
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
    fprintf(stderr, "%s  [%s] %u/%u %s %3.0f%%  %.1f %s/s  %s left%s", b->tty ? "\r" : "", meter,
            done, total, b->unit, total ? 100.0 * done / total : 100.0, rate, b->unit, left,
            b->tty ? (end ? "\n" : "") : "\n");
    fflush(stderr);
}

/* the figures of one modality's run, for the summary and --json */
typedef struct {
    int ran;              /* the modality was asked for */
    uint32_t done;        /* encoded */
    double seconds;       /* encoding time */
    uint32_t eligible;    /* text: titled items; images: items in the catalogue */
    uint32_t with_states; /* after the run */
    char backbone[128];
    int nstates, width;
    uint32_t missing, corrupt; /* images */
} run_figures;

typedef struct {
    const char *dir;
    iisan_store *s;
    iisan_backend *be; /* made on first use */
    const char *device;
    long batch, threads, max_len;
    int quiet;
} run_ctx;

static iisan_backend *ctx_backend(run_ctx *c) {
    if (!c->be) c->be = backend_choose("encode", c->device, (int)c->threads);
    return c->be;
}

/* the name states are stored under: --backbone, else the model directory's */
static void pick_name(const char *given, const char *model, char *name, size_t cap) {
    if (given)
        snprintf(name, cap, "%s", given);
    else
        backbone_dir_name(model, name, cap);
}

/* a store of another backbone, before loading anything: 0 or 1 (printed) */
static int refuse_other_backbone(run_ctx *c, int modality, const char *name, const char *flag) {
    store_states_info info;
    if (store_states_info_get(c->s, modality, &info) || !name[0] || !strcmp(info.backbone, name))
        return 0;
    char err[1024];
    snprintf(err, sizeof err,
             "%s holds %s states of backbone '%s', not '%s': encode into another data "
             "directory, or pass %s '%s' if this is the same model",
             c->dir, modality == IISAN_TEXT ? "text" : "image", info.backbone, name, flag,
             info.backbone);
    return fail(err);
}

/* Before a model is loaded: the items still without states of modality, the
 * name they are stored under (--backbone, else the model directory's, else
 * fallback; may stay "" for the text model's config to name), a store of
 * another backbone refused, and
 * "nothing to do". 1 when it failed (printed); 0 with *n == 0 and the
 * figures filled when there is nothing to do; else 0 with the work in *idx. */
static int prepare(run_ctx *c, int modality, const char *given, const char *model,
                   const char *fallback, const char *flag, run_figures *f, uint32_t **idx,
                   uint32_t *n) {
    const char *what = modality == IISAN_TEXT ? "titled items" : "items";
    const char *kind = modality == IISAN_TEXT ? "text" : "image";
    f->ran = 1;
    if (store_items_missing_states(c->s, modality, modality == IISAN_TEXT, idx, n))
        return fail("reading the store failed");
    pick_name(given, model, f->backbone, sizeof f->backbone);
    if (!f->backbone[0] && fallback) snprintf(f->backbone, sizeof f->backbone, "%s", fallback);
    if (refuse_other_backbone(c, modality, f->backbone, flag)) return 1;
    store_states_info info;
    if (store_states_info_get(c->s, modality, &info) == 0) {
        if (*n == 0) { /* the figures of what is there */
            snprintf(f->backbone, sizeof f->backbone, "%s", info.backbone);
            f->with_states = info.count;
            f->nstates = info.nstates;
            f->width = info.width;
        } else if (!c->quiet) {
            fprintf(stderr, "%u of %u %s already have %s states; encoding the others\n",
                    f->eligible - *n, f->eligible, what, kind);
        }
    }
    if (*n == 0 && !c->quiet)
        fprintf(stderr, "all %u %s already have %s states (%s); nothing to do\n", f->eligible, what,
                kind, f->backbone);
    return 0;
}

/* After encoding: r as the encoder returned it, stored what it stored. 0, or
 * 1 with the failure printed; the states count in the figures either way. */
static int finish(run_ctx *c, int modality, bar *b, int r, const char *err, uint32_t stored,
                  run_figures *f) {
    f->seconds = now_seconds() - b->t0;
    if (!r && backend_check("encode", c->be)) return 1;
    store_states_info after = {0};
    store_states_info_get(c->s, modality, &after);
    f->with_states = after.count;
    if (!r) return 0;
    if (b->tty && !c->quiet && stored) fputc('\n', stderr);
    fail(err);
    if (stored)
        fprintf(stderr,
                "iisan encode: %u %s were stored before the failure; run again to encode the "
                "rest\n",
                stored, b->unit);
    return 1;
}

static int run_text(run_ctx *c, const char *model, const char *backbone, run_figures *f) {
    char err[1024];
    uint32_t *idx = NULL, n = 0;
    bert_encoder *e = NULL;
    int rc = 1;
    f->eligible = store_items_with_title(c->s);
    if (f->eligible == 0) {
        snprintf(err, sizeof err, "%s: the catalogue has no titles to encode", c->dir);
        return fail(err);
    }
    if (prepare(c, IISAN_TEXT, backbone, model, NULL, "--backbone", f, &idx, &n)) goto out;
    if (n == 0) {
        rc = 0;
        goto out;
    }
    if (!ctx_backend(c)) goto out;
    double t_load = now_seconds();
    if (bert_load(&e, c->be, model, (int)c->batch, (int)c->max_len, err, sizeof err)) {
        fail(err);
        goto out;
    }
    const bert_config *cfg = bert_get_config(e);
    if (!f->backbone[0]) { /* a directory without a usable name: the config's */
        const char *p = cfg->name_or_path[0] ? cfg->name_or_path : "bert";
        snprintf(f->backbone, sizeof f->backbone, "%.127s", p);
    }
    f->nstates = bert_nstates(e);
    f->width = bert_width(e);
    if (!c->quiet)
        fprintf(stderr,
                "model: %s (%d layers, %d wide, %d heads, %s weights, %zu parameters), loaded in "
                "%.2f s; states stored as '%s', %d x %d fp16 per item\n",
                model, cfg->layers, cfg->hidden, cfg->heads, cfg->weights_dtype,
                bert_param_count(e), now_seconds() - t_load, f->backbone, f->nstates, f->width);

    bar b = {.t0 = now_seconds(), .tty = isatty(2), .quiet = c->quiet, .unit = "items"};
    b.last = b.t0;
    int r =
        encode_items_text(e, c->s, f->backbone, idx, n, &f->done, on_progress, &b, err, sizeof err);
    if (finish(c, IISAN_TEXT, &b, r, err, f->done, f)) goto out;
    if (!c->quiet)
        fprintf(stderr,
                "encoded %u items in %.1f s (%.1f items/s); %u of %u titled items have text "
                "states (%s, %d x %d)\n",
                f->done, f->seconds, f->seconds > 0 ? f->done / f->seconds : 0.0, f->with_states,
                f->eligible, f->backbone, f->nstates, f->width);
    rc = 0;
out:
    bert_free(e);
    free(idx);
    return rc;
}

/* an image that could not be used: named on stderr whatever --quiet says */
static void on_image_skip(void *arg, uint32_t idx, const char *item_id, const char *problem) {
    bar *b = arg;
    fprintf(stderr, "%siisan encode: item %s: %s; skipped\n", b->tty && !b->quiet ? "\r\033[K" : "",
            item_id, problem);
    b->last = 0; /* redraw the bar */
}

static int run_images(run_ctx *c, const char *images, const char *model, const char *backbone,
                      run_figures *f) {
    char err[1024];
    uint32_t *idx = NULL, n = 0;
    vit_encoder *e = NULL;
    int rc = 1;
    struct stat st;
    if (stat(images, &st) || !S_ISDIR(st.st_mode)) {
        snprintf(err, sizeof err, "%s: no such image directory", images);
        return fail(err);
    }
    f->eligible = store_item_count(c->s);
    if (f->eligible == 0) {
        snprintf(err, sizeof err, "%s: the catalogue is empty", c->dir);
        return fail(err);
    }
    if (prepare(c, IISAN_IMAGE, backbone, model, "vit", "--image-backbone", f, &idx, &n)) goto out;
    if (n == 0) {
        rc = 0;
        goto out;
    }
    if (!ctx_backend(c)) goto out;
    double t_load = now_seconds();
    if (vit_load(&e, c->be, model, (int)c->batch, err, sizeof err)) {
        fail(err);
        goto out;
    }
    const vit_config *cfg = vit_get_config(e);
    f->nstates = vit_nstates(e);
    f->width = vit_width(e);
    if (!c->quiet)
        fprintf(stderr,
                "image model: %s (%d layers, %d wide, %d heads, %d x %d pixels in %d x %d "
                "patches, %s weights), loaded in %.2f s; states stored as '%s', %d x %d fp16 per "
                "item\n",
                model, cfg->layers, cfg->hidden, cfg->heads, cfg->image_size, cfg->image_size,
                cfg->patch_size, cfg->patch_size, cfg->weights_dtype, now_seconds() - t_load,
                f->backbone, f->nstates, f->width);

    bar b = {.t0 = now_seconds(), .tty = isatty(2), .quiet = c->quiet, .unit = "images"};
    b.last = b.t0;
    encode_image_counts cnt = {0};
    int r = encode_items_images(e, c->s, f->backbone, images, idx, n, &cnt, on_image_skip,
                                on_progress, &b, err, sizeof err);
    f->done = cnt.encoded;
    f->missing = cnt.missing;
    f->corrupt = cnt.corrupt;
    if (finish(c, IISAN_IMAGE, &b, r, err, cnt.encoded, f)) goto out;
    if (!c->quiet)
        fprintf(stderr,
                "encoded %u images in %.1f s (%.1f images/s); %u items have no image file, %u "
                "could not be read or decoded; %u of %u items have image states (%s, %d x %d)\n",
                cnt.encoded, f->seconds, f->seconds > 0 ? cnt.encoded / f->seconds : 0.0,
                cnt.missing, cnt.corrupt, f->with_states, f->eligible, f->backbone, f->nstates,
                f->width);
    rc = 0;
out:
    vit_free(e);
    free(idx);
    return rc;
}

/* the --json line: the text figures under their first names, the image ones
 * prefixed image_ */
static void print_json(const run_figures *t, const run_figures *im, long batch,
                       const char *backend) {
    json_t *o = json_pack("{s:i, s:s}", "batch", (int)batch, "backend", backend);
    if (o && t->ran) {
        json_t *x = json_pack("{s:i, s:f, s:f, s:i, s:i, s:s, s:i, s:i}", "encoded",
                              (json_int_t)t->done, "seconds", t->seconds, "items_per_s",
                              t->seconds > 0 ? t->done / t->seconds : 0.0, "titled",
                              (json_int_t)t->eligible, "with_states", (json_int_t)t->with_states,
                              "backbone", t->backbone, "nstates", t->nstates, "width", t->width);
        json_object_update(o, x);
        json_decref(x);
    }
    if (o && im->ran) {
        json_t *x = json_pack(
            "{s:i, s:i, s:i, s:f, s:f, s:i, s:i, s:s, s:i, s:i}", "image_encoded",
            (json_int_t)im->done, "image_missing", (json_int_t)im->missing, "image_corrupt",
            (json_int_t)im->corrupt, "image_seconds", im->seconds, "images_per_s",
            im->seconds > 0 ? im->done / im->seconds : 0.0, "items", (json_int_t)im->eligible,
            "image_with_states", (json_int_t)im->with_states, "image_backbone", im->backbone,
            "image_nstates", im->nstates, "image_width", im->width);
        json_object_update(o, x);
        json_decref(x);
    }
    char *txt = o ? json_dumps(o, JSON_COMPACT) : NULL;
    printf("%s\n", txt ? txt : "{}");
    free(txt);
    json_decref(o);
}

int cmd_encode(int argc, char **argv) {
    static const struct option opts[] = {{"data", 1, 0, 'D'},           {"model", 1, 0, 'm'},
                                         {"images", 1, 0, 'I'},         {"image-model", 1, 0, 'V'},
                                         {"image-backbone", 1, 0, 'N'}, {"batch", 1, 0, 'b'},
                                         {"threads", 1, 0, 'T'},        {"device", 1, 0, 'G'},
                                         {"backbone", 1, 0, 'n'},       {"max-len", 1, 0, 'L'},
                                         {"quiet", 0, 0, 'q'},          {"json", 0, 0, 'j'},
                                         {"help", 0, 0, 'h'},           {0, 0, 0, 0}};
    const char *model = NULL, *backbone = NULL, *images = NULL, *image_model = NULL,
               *image_backbone = NULL;
    run_ctx c = {.batch = 32, .max_len = BERT_DEFAULT_MAX_LEN};
    int json = 0, ch;
    optind = 1;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (ch) {
        case 'D': c.dir = optarg; break;
        case 'm': model = optarg; break;
        case 'I': images = optarg; break;
        case 'V': image_model = optarg; break;
        case 'N': image_backbone = optarg; break;
        case 'b':
            if (opt_int("encode", "batch", optarg, 1, 4096, &c.batch)) return 2;
            break;
        case 'T':
            if (opt_int("encode", "threads", optarg, 0, 1024, &c.threads)) return 2;
            break;
        case 'G':
            if (opt_device("encode", optarg)) return 2;
            c.device = optarg;
            break;
        case 'n': backbone = optarg; break;
        case 'L':
            if (opt_int("encode", "max-len", optarg, 2, 512, &c.max_len)) return 2;
            break;
        case 'q': c.quiet = 1; break;
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
    if (!c.dir || (!model && !images && !image_model)) {
        fprintf(stderr, "iisan encode: --data DIR and --model MODEL_DIR (text) and / or --images "
                        "DIR --image-model VIT_DIR are required (see iisan encode --help)\n");
        return 2;
    }
    if (!images != !image_model) {
        fprintf(stderr, "iisan encode: --images DIR and --image-model VIT_DIR go together\n");
        return 2;
    }
    const char *names[2] = {backbone, image_backbone};
    for (int i = 0; i < 2; i++)
        if (names[i] && (!*names[i] || strlen(names[i]) >= 128)) {
            fprintf(stderr, "iisan encode: --%s wants a name of 1..127 bytes\n",
                    i ? "image-backbone" : "backbone");
            return 2;
        }

    char err[1024];
    run_figures ft = {0}, fi = {0};
    int rc = 1;
    if (access(c.dir, F_OK)) {
        snprintf(err, sizeof err,
                 "%s: no such data directory (import a catalogue first: iisan "
                 "import --data DIR --items items.tsv)",
                 c.dir);
        return fail(err);
    }
    if (cli_lock_store("encode", c.dir, 0)) return 1;
    if (store_open(&c.s, c.dir, 0, err, sizeof err)) return fail(err);
    if (model && run_text(&c, model, backbone, &ft)) goto out;
    if (images && run_images(&c, images, image_model, image_backbone, &fi)) goto out;
    if (json) print_json(&ft, &fi, c.batch, c.be ? c.be->name : "none");
    rc = 0;
out:
    if (c.be) c.be->destroy(c.be);
    store_close(c.s);
    return rc;
}
