/* The image pipeline (core/image.h) against Pillow and Hugging Face's
 * ViTImageProcessor (fixtures: tests/golden_image/gen.py): decoding of every
 * test image bit for bit, Pillow's bilinear resize bit for bit (to 224 x 224
 * and to two odd sizes), the float pixels bit for bit, the errors of empty,
 * corrupt, truncated and non-image inputs; and encoding one item's image into
 * a store with the tiny ViT (core/encode_items.h) against transformers. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/encode_items.h"
#include "core/encoder_vit.h"
#include "core/image.h"
#include "kernels/backend.h"
#include "kernels/half.h"
#include "store/safetensors.h"
#include "store/store.h"
#include "tests/test.h"

#define GOLD "tests/golden_image/"
#define TINY_VIT "tests/golden_encoder/tiny-vit"

static uint64_t fnv1a64(const void *p, size_t n) {
    const uint8_t *b = p;
    uint64_t h = 0xCBF29CE484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001B3ull;
    }
    return h;
}

static uint8_t *read_all(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc(n > 0 ? (size_t)n : 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    fclose(f);
    *len = (size_t)n;
    return b;
}

static const st_tensor *need(const st_file *f, const char *name) {
    const st_tensor *t = st_find(f, name);
    CHECKF(t != NULL, "fixture tensor %s missing", name);
    return t;
}

static int max_abs_u8(const uint8_t *a, const uint8_t *b, size_t n) {
    int m = 0;
    for (size_t i = 0; i < n; i++) {
        int d = abs((int)a[i] - (int)b[i]);
        if (d > m) m = d;
    }
    return m;
}

/* the fixture's names: NUL-terminated strings one after another */
static int fixture_names(const st_tensor *t, const char **names, int cap) {
    const char *p = t->data, *end = p + t->nbytes;
    int n = 0;
    while (p < end && n < cap) {
        names[n++] = p;
        p += strlen(p) + 1;
    }
    return n;
}

static int is_jpeg(const char *name) { return strstr(name, ".jpg") != NULL; }

/* every test image: decoded, resized and normalised as the reference did it */
static void test_reference_images(void) {
    st_file *f = NULL;
    char err[512], key[128];
    CHECKF(st_open(&f, GOLD "image.safetensors", err, sizeof err) == 0, "%s", err);
    if (!f) return;
    const st_tensor *tn = need(f, "names"), *tw = need(f, "w"), *th = need(f, "h"),
                    *tdec = need(f, "dec.hash"), *tr = need(f, "r224.hash"),
                    *tpx = need(f, "px.hash"), *trows = need(f, "r224.rows"),
                    *tsz = need(f, "extra.sizes");
    if (!tn || !tw || !th || !tdec || !tr || !tpx || !trows || !tsz) goto out;
    const char *names[64];
    int n = fixture_names(tn, names, 64);
    CHECKF(n >= 20 && (size_t)n == st_numel(tw), "%d images in the fixture", n);
    const int32_t *W = tw->data, *H = th->data, *sizes = tsz->data;
    const uint64_t *dec_hash = tdec->data, *r_hash = tr->data, *px_hash = tpx->data;
    int n_extra = (int)tsz->shape[0];
    int dec_exact = 0, r_exact = 0, px_exact = 0, jpeg_err = 0, jpeg_rows_err = 0;
    uint8_t *r224 = malloc(224 * 224 * 3);
    float *px = malloc(sizeof *px * 3 * 224 * 224);
    for (int i = 0; i < n; i++) {
        char path[256];
        snprintf(path, sizeof path, GOLD "src/%s", names[i]);
        size_t len = 0;
        uint8_t *bytes = read_all(path, &len);
        CHECKF(bytes != NULL, "%s unreadable", path);
        if (!bytes) continue;
        iisan_image im;
        int rc = image_decode(bytes, len, &im, err, sizeof err);
        CHECKF(rc == 0, "%s: %s", names[i], err);
        if (rc) {
            free(bytes);
            continue;
        }
        CHECKF(im.w == W[i] && im.h == H[i], "%s: %d x %d, Pillow %d x %d", names[i], im.w, im.h,
               W[i], H[i]);
        size_t nb = (size_t)im.w * im.h * 3;
        int same_dec = fnv1a64(im.rgb, nb) == dec_hash[i];
        dec_exact += same_dec;
        snprintf(key, sizeof key, "dec.%s", names[i]);
        const st_tensor *full = st_find(f, key);
        if (!same_dec && full && full->nbytes == nb) {
            int m = max_abs_u8(im.rgb, full->data, nb);
            if (is_jpeg(names[i]) && m > jpeg_err) jpeg_err = m;
            fprintf(stderr, "  %s: decoded pixels differ from Pillow's by up to %d\n", names[i], m);
        }
        /* PNG decoding is exact; JPEG decoding is exact with the same libjpeg-turbo IDCT */
        CHECKF(same_dec || is_jpeg(names[i]), "%s: decoded pixels differ from Pillow's", names[i]);

        /* the resize on our decoding, and on Pillow's where the fixture has it whole */
        CHECK(image_resize_bilinear(im.rgb, im.w, im.h, r224, 224, 224) == 0);
        int same_r = fnv1a64(r224, sizeof(uint8_t) * 224 * 224 * 3) == r_hash[i];
        r_exact += same_r;
        const uint8_t *rows = (const uint8_t *)trows->data + (size_t)i * 3 * 224 * 3;
        int mrows = 0;
        for (int k = 0; k < 3; k++) {
            static const int row[3] = {0, 111, 223};
            int m =
                max_abs_u8(r224 + (size_t)row[k] * 224 * 3, rows + (size_t)k * 224 * 3, 224 * 3);
            if (m > mrows) mrows = m;
        }
        if (!same_r)
            fprintf(stderr, "  %s: 224 x 224 resize differs; rows 0/111/223 by up to %d\n",
                    names[i], mrows);
        if (same_dec) {
            CHECKF(same_r, "%s: resize of an exact decoding differs from Pillow's", names[i]);
        } else {
            CHECKF(mrows <= 2, "%s: resize differs by %d", names[i], mrows);
            if (mrows > jpeg_rows_err) jpeg_rows_err = mrows;
        }
        for (int k = 0; k < n_extra; k++) {
            int ow = sizes[2 * k], oh = sizes[2 * k + 1];
            snprintf(key, sizeof key, "rs%d.%s", k, names[i]);
            const st_tensor *ref = need(f, key);
            if (!ref) continue;
            uint8_t *o = malloc((size_t)ow * oh * 3);
            const uint8_t *in = same_dec || !full ? im.rgb : full->data;
            CHECK(image_resize_bilinear(in, im.w, im.h, o, ow, oh) == 0);
            int m = max_abs_u8(o, ref->data, (size_t)ow * oh * 3);
            CHECKF(m == 0 || (!same_dec && !full),
                   "%s: %d x %d resize differs from Pillow's by up to %d", names[i], ow, oh, m);
            free(o);
        }
        /* the whole pipeline: float pixels, bit for bit */
        CHECK(image_preprocess(bytes, len, 224, px, err, sizeof err) == 0);
        int same_px = fnv1a64(px, sizeof *px * 3 * 224 * 224) == px_hash[i];
        px_exact += same_px;
        CHECKF(same_px || !same_dec, "%s: pixel_values differ from ViTImageProcessor's", names[i]);
        image_free(&im);
        free(bytes);
    }
    fprintf(stderr,
            "  %d images: decoding exact for %d, 224 x 224 resize exact for %d, pixel_values "
            "exact for %d (JPEG decoding off by up to %d, its resize by up to %d)\n",
            n, dec_exact, r_exact, px_exact, jpeg_err, jpeg_rows_err);
    free(r224);
    free(px);
out:
    st_close(f);
}

/* rescale and normalise: ViTImageProcessor's value for each pixel value */
static void test_normalize(void) {
    st_file *f = NULL;
    char err[512];
    CHECKF(st_open(&f, GOLD "image.safetensors", err, sizeof err) == 0, "%s", err);
    if (!f) return;
    const st_tensor *lut = need(f, "lut");
    if (lut && st_numel(lut) == 256) {
        uint8_t rgb[256 * 3];
        for (int v = 0; v < 256; v++)
            rgb[3 * v] = rgb[3 * v + 1] = rgb[3 * v + 2] = (uint8_t)v;
        float out[3 * 256];
        static const float half[3] = {0.5f, 0.5f, 0.5f};
        image_normalize(rgb, 16, 16, half, half, out);
        int same = 0;
        for (int c = 0; c < 3; c++)
            same += !memcmp(out + c * 256, lut->data, sizeof(float) * 256);
        CHECKF(same == 3, "normalised values differ from ViTImageProcessor's");
        CHECK(out[0] == -1.0f && out[255] == 1.0f);
    }
    st_close(f);
}

/* the resize's edge cases: identity, one axis only, 1 x 1, bad sizes */
static void test_resize_cases(void) {
    uint8_t src[6 * 4 * 3], dst[12 * 12 * 3];
    for (size_t i = 0; i < sizeof src; i++)
        src[i] = (uint8_t)(i * 37 % 251);
    CHECK(image_resize_bilinear(src, 6, 4, dst, 6, 4) == 0);
    CHECK(!memcmp(src, dst, sizeof src));
    /* a constant image stays constant, whatever the sizes */
    uint8_t flat[5 * 7 * 3];
    memset(flat, 173, sizeof flat);
    int ok = 1;
    static const int sz[][2] = {{1, 1}, {12, 1}, {1, 12}, {5, 12}, {12, 7}, {3, 2}};
    for (size_t k = 0; k < sizeof sz / sizeof sz[0]; k++) {
        CHECK(image_resize_bilinear(flat, 5, 7, dst, sz[k][0], sz[k][1]) == 0);
        for (int i = 0; i < sz[k][0] * sz[k][1] * 3; i++)
            ok &= dst[i] == 173;
    }
    CHECK(ok);
    /* halving 0 255 0 255: scale 2 stretches the triangle to support 2, so
     * output 0 (centre 1.0) reads pixels 0..2 with weights .75 .75 .25 / 1.75
     * (the tap left of pixel 0 falls off the edge) and output 1 (centre 3.0)
     * reads pixels 1..3 with .25 .75 .75 / 1.75: 255 * 3/7 -> 109 and
     * 255 * 4/7 -> 146 with 22-bit weights, rounded */
    uint8_t bars[4 * 1 * 3] = {0, 0, 0, 255, 255, 255, 0, 0, 0, 255, 255, 255}, half[2 * 3];
    CHECK(image_resize_bilinear(bars, 4, 1, half, 2, 1) == 0);
    CHECKF(half[0] == 109 && half[3] == 146, "%d %d", half[0], half[3]);
    CHECK(image_resize_bilinear(src, 0, 4, dst, 2, 2) == IISAN_EINVAL);
    CHECK(image_resize_bilinear(src, 6, 4, dst, 2, 0) == IISAN_EINVAL);
}

static int decode_fails(const void *data, size_t len, const char *want) {
    iisan_image im;
    char err[512] = "";
    int rc = image_decode(data, len, &im, err, sizeof err);
    int ok = rc == IISAN_EFORMAT && im.rgb == NULL && (!want || strstr(err, want));
    if (!ok)
        fprintf(stderr, "  decode of %zu bytes: rc %d, '%s' (wanted '%s')\n", len, rc, err,
                want ? want : "");
    image_free(&im);
    return ok;
}

static uint32_t crc32_png(const uint8_t *p, size_t n) {
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++)
            c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    }
    return c ^ 0xFFFFFFFFu;
}

/* empty, foreign, corrupt and truncated inputs are errors, never crashes */
static void test_bad_inputs(void) {
    CHECK(decode_fails("", 0, "empty"));
    CHECK(decode_fails("hello, world\n", 13, "not a JPEG or PNG"));
    CHECK(decode_fails("GIF89a\1\0\1\0\0\0\0", 13, "not a JPEG or PNG"));
    CHECK(decode_fails("\xFF\xD8\xFF", 3, "JPEG"));
    CHECK(decode_fails("\x89PNG\r\n\x1a\n", 8, "PNG"));

    size_t jl = 0, pl = 0;
    uint8_t *jpg = read_all(GOLD "src/photo_420.jpg", &jl),
            *png = read_all(GOLD "src/rgb.png", &pl);
    CHECK(jpg && png && jl > 4000 && pl > 4000);
    if (!jpg || !png) goto out;
    /* every cut of the files, up to their last bytes, is an error */
    int all = 1;
    for (size_t n = 1; n + 8 < jl; n += n < 700 ? 7 : 211)
        all &= decode_fails(jpg, n, "JPEG");
    for (size_t n = 1; n + 12 < pl; n += n < 200 ? 3 : 157)
        all &= decode_fails(png, n, "PNG");
    CHECK(all);
    /* an end-of-image marker in the middle of the entropy-coded data */
    uint8_t *bad = malloc(jl);
    memcpy(bad, jpg, jl);
    bad[jl / 2] = 0xFF;
    bad[jl / 2 + 1] = 0xD9;
    CHECK(decode_fails(bad, jl, "JPEG"));
    /* garbage over the middle of the scan */
    memcpy(bad, jpg, jl);
    for (size_t i = jl / 3; i < jl / 3 + 600; i++)
        bad[i] = (uint8_t)(i * 131 + 7);
    CHECK(decode_fails(bad, jl, "JPEG"));
    /* a frame of 0 x 0 pixels */
    memcpy(bad, jpg, jl);
    for (size_t i = 2; i + 9 < jl; i++)
        if (bad[i] == 0xFF && (bad[i + 1] == 0xC0 || bad[i + 1] == 0xC2)) {
            memset(bad + i + 5, 0, 4); /* height, width */
            break;
        }
    CHECK(decode_fails(bad, jl, "JPEG"));
    free(bad);

    bad = malloc(pl);
    /* a flipped bit in the image data (the chunk's CRC no longer matches) */
    memcpy(bad, png, pl);
    bad[pl / 2] ^= 0x10;
    CHECK(decode_fails(bad, pl, "PNG"));
    /* a flipped bit in IHDR's width */
    memcpy(bad, png, pl);
    bad[18] ^= 0x01;
    CHECK(decode_fails(bad, pl, "PNG"));
    /* 100000 x 100000 pixels, CRC fixed up: refused before any allocation */
    memcpy(bad, png, pl);
    const uint8_t big[8] = {0, 1, 0x86, 0xA0, 0, 1, 0x86, 0xA0};
    memcpy(bad + 16, big, 8);
    uint32_t c = crc32_png(bad + 12, 17);
    bad[29] = (uint8_t)(c >> 24);
    bad[30] = (uint8_t)(c >> 16);
    bad[31] = (uint8_t)(c >> 8);
    bad[32] = (uint8_t)c;
    CHECK(decode_fails(bad, pl, "over the limit"));
    free(bad);

    /* files */
    iisan_image im;
    char err[512];
    CHECK(image_decode_file("tests/golden_image/no-such.png", &im, err, sizeof err) == IISAN_EIO &&
          strstr(err, "no-such.png"));
    CHECK(image_decode_file("tests/golden_image/gen.sh", &im, err, sizeof err) == IISAN_EFORMAT &&
          strstr(err, "gen.sh") && strstr(err, "not a JPEG or PNG"));
    CHECK(image_decode_file(GOLD "src/gray.jpg", &im, err, sizeof err) == 0 && im.w == 97 &&
          im.h == 61);
    image_free(&im);
    float px[3 * 8 * 8];
    CHECK(image_preprocess(jpg, jl / 2, 8, px, err, sizeof err) == IISAN_EFORMAT);
out:
    free(jpg);
    free(png);
}

static int write_file(const char *path, const void *data, size_t len) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = fwrite(data, 1, len, f);
    return fclose(f) == 0 && w == len ? 0 : -1;
}

typedef struct {
    int calls;
    char ids[256];
} skip_log;

static void log_skip(void *arg, uint32_t idx, const char *item_id, const char *problem) {
    skip_log *l = arg;
    l->calls++;
    size_t n = strlen(l->ids);
    snprintf(l->ids + n, sizeof l->ids - n, "%s:%s;", item_id,
             strstr(problem, "truncated JPEG") ? "jpeg" : "other");
}

/* the stored fp16 states are within one fp16 step of the reference (the
 * rounding to fp16 is half a step; the fp32 forward pass adds ~4e-6, which
 * may tip it to the next step); *worst gets the largest error in steps */
static int states_match(const uint16_t *h, const float *ref, int n, double *worst) {
    int bad = 0;
    for (int k = 0; k < n; k++) {
        int ex;
        frexp(ref[k], &ex); /* |ref| in [2^(ex-1), 2^ex) */
        double step = ldexp(1.0, (ex - 1 < -14 ? -14 : ex - 1) - 10);
        double d = fabs((double)iisan_half_to_float(h[k]) - ref[k]) / step;
        if (d > *worst) *worst = d;
        bad += d > 1.0;
    }
    return bad;
}

/* encode_items_images over a directory (4 images, one missing, one corrupt,
 * one foreign file) and encode_item_image from bytes, with the tiny ViT,
 * against transformers' states of the same images (ViTImageProcessor at 32) */
static void test_encode_tiny_vit(void) {
    char dir[] = "/tmp/iisan-img-store-XXXXXX", err[512], path[700];
    CHECK(mkdtemp(dir) != NULL);
    st_file *f = NULL;
    CHECKF(st_open(&f, GOLD "image.safetensors", err, sizeof err) == 0, "%s", err);
    if (!f) return;
    const st_tensor *tn = need(f, "vit.names"), *ts = need(f, "vit.states");
    if (!tn || !ts) goto out;
    const char *names[8];
    int nv = fixture_names(tn, names, 8);
    const float *ref = ts->data;
    int S = (int)ts->shape[1], D = (int)ts->shape[2];
    CHECK(nv == 4 && ts->shape[0] == 4 && S == 3 && D == 32);
    if (nv != 4) goto out;
    /* items: the four images under their file names' stems, "nofile", "broken"
     * (a JPEG cut in half), "text" (not an image) */
    char items[512] = "", img[600], stems[4][64];
    snprintf(img, sizeof img, "%s/img", dir);
    CHECK(mkdir(img, 0755) == 0);
    for (int i = 0; i < 4; i++) {
        const char *dot = strrchr(names[i], '.');
        snprintf(stems[i], sizeof stems[i], "%.*s", (int)(dot - names[i]), names[i]);
        size_t n = strlen(items);
        snprintf(items + n, sizeof items - n, "%s\ttitle %d\n", stems[i], i);
        size_t len;
        snprintf(path, sizeof path, GOLD "src/%s", names[i]);
        uint8_t *b = read_all(path, &len);
        snprintf(path, sizeof path, "%s/%s", img, names[i]);
        CHECK(b && write_file(path, b, len) == 0);
        if (i == 0) { /* the first one cut in half as "broken.jpeg" */
            snprintf(path, sizeof path, "%s/broken.jpeg", img);
            CHECK(b && write_file(path, b, len / 2) == 0);
        }
        free(b);
    }
    snprintf(path, sizeof path, "%s/text.png", img);
    CHECK(write_file(path, "not an image\n", 13) == 0);
    strcat(items, "nofile\tx\nbroken\ty\ntext\tz\n");
    snprintf(path, sizeof path, "%s/items.tsv", dir);
    CHECK(write_file(path, items, strlen(items)) == 0);
    iisan_store *s = NULL;
    CHECKF(store_open(&s, dir, 1, err, sizeof err) == 0, "%s", err);
    if (!s) goto out;
    CHECKF(store_import_items(s, path, NULL, NULL, err, sizeof err) == 0, "%s", err);

    iisan_backend *be = iisan_backend_cpu(1);
    vit_encoder *e = NULL;
    CHECKF(vit_load(&e, be, TINY_VIT, 3, err, sizeof err) == 0, "%s", err);
    if (!e) goto close;
    char found[700];
    CHECK(encode_image_path(img, stems[0], found, sizeof found) == 0 && strstr(found, names[0]));
    CHECK(encode_image_path(img, "nofile", found, sizeof found) == IISAN_ENOTFOUND);
    CHECK(encode_image_path(img, "../img/x", found, sizeof found) == IISAN_ENOTFOUND);
    CHECK(encode_image_path(img, "..", found, sizeof found) == IISAN_ENOTFOUND);

    uint32_t all[7] = {1, 2, 3, 4, 5, 6, 7};
    encode_image_counts cnt;
    skip_log log = {0};
    CHECKF(encode_items_images(e, s, "tiny-vit", img, all, 7, &cnt, log_skip, NULL, &log, err,
                               sizeof err) == 0,
           "%s", err);
    CHECKF(cnt.encoded == 4 && cnt.missing == 1 && cnt.corrupt == 2, "%u %u %u", cnt.encoded,
           cnt.missing, cnt.corrupt);
    CHECKF(log.calls == 2 && !strcmp(log.ids, "broken:jpeg;text:other;"), "%s", log.ids);
    store_reader *r;
    double worst = 0;
    int bad = 0;
    CHECK(store_reader_begin(s, &r) == 0);
    for (int i = 0; i < 4; i++) {
        const uint16_t *h = store_reader_states(r, IISAN_IMAGE, (uint32_t)i + 1);
        CHECK(h != NULL);
        if (h) bad += states_match(h, ref + (size_t)i * S * D, S * D, &worst);
    }
    for (uint32_t i = 5; i <= 7; i++)
        CHECK(store_reader_states(r, IISAN_IMAGE, i) == NULL);
    store_reader_end(r);
    CHECKF(bad == 0, "%d stored image states off (worst %.3g fp16 steps)", bad, worst);
    fprintf(stderr,
            "  tiny ViT image states vs transformers: within %.2f fp16 steps (rounding: 0.5)\n",
            worst);

    /* one item from bytes in memory: the first image under item "nofile" */
    size_t len;
    snprintf(path, sizeof path, GOLD "src/%s", names[0]);
    uint8_t *b = read_all(path, &len);
    CHECK(b != NULL);
    if (b) {
        CHECKF(encode_item_image(e, s, "tiny-vit", 5, b, len, err, sizeof err) == 0, "%s", err);
        CHECK(encode_item_image(e, s, "tiny-vit", 6, b, len / 3, err, sizeof err) ==
                  IISAN_EFORMAT &&
              strstr(err, "JPEG"));
        CHECK(encode_item_image(e, s, "other-vit", 6, b, len, err, sizeof err) == IISAN_EMISMATCH &&
              strstr(err, "tiny-vit") && strstr(err, "other-vit"));
        CHECK(encode_items_images(e, s, "other-vit", img, all, 7, &cnt, NULL, NULL, NULL, err,
                                  sizeof err) == IISAN_EMISMATCH &&
              cnt.encoded == 0);
        free(b);
    }
    CHECK(store_reader_begin(s, &r) == 0);
    const uint16_t *h5 = store_reader_states(r, IISAN_IMAGE, 5);
    worst = 0;
    CHECK(h5 && states_match(h5, ref, S * D, &worst) == 0);
    CHECK(store_reader_states(r, IISAN_IMAGE, 6) == NULL);
    store_reader_end(r);
    store_states_info info;
    CHECK(store_states_info_get(s, IISAN_IMAGE, &info) == 0 && info.count == 5 &&
          !strcmp(info.backbone, "tiny-vit") && info.nstates == 3 && info.width == 32);
    vit_free(e);
close:
    if (be) be->destroy(be);
    store_close(s);
out:
    st_close(f);
    snprintf(path, sizeof path, "rm -rf '%s'", dir);
    CHECK(system(path) == 0);
}

int main(int argc, char **argv) {
    TEST_MAIN_BEGIN(argc, argv);
    RUN(test_reference_images);
    RUN(test_normalize);
    RUN(test_resize_cases);
    RUN(test_bad_inputs);
    RUN(test_encode_tiny_vit);
    TEST_MAIN_END();
}
