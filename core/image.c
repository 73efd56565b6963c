/* JPEG / PNG decoding to RGB8, Pillow's bilinear resize and ViTImageProcessor's
 * normalisation (see core/image.h). */
#include "core/image.h"

#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h> /* before jerror.h, which reads its version */

#include <jerror.h>
#include <png.h>

#include "store/store.h"

static int too_large(int w, int h, const char *what, char *err, size_t errlen) {
    if ((uint64_t)w * (uint64_t)h <= IMAGE_MAX_PIXELS) return 0;
    return iisan_fail(err, errlen, IISAN_EFORMAT,
                      "%s image of %d x %d pixels is over the limit of %u pixels", what, w, h,
                      IMAGE_MAX_PIXELS);
}

/* ---- JPEG (libjpeg-turbo) ---- */

typedef struct {
    struct jpeg_decompress_struct d;
    struct jpeg_error_mgr em;
    jmp_buf jb;
    char msg[JMSG_LENGTH_MAX];
    uint8_t *rgb, *row;
} jpeg_ctx;

static void jpeg_on_error(j_common_ptr c) {
    jpeg_ctx *x = (jpeg_ctx *)((char *)c->err - offsetof(jpeg_ctx, em));
    c->err->format_message(c, x->msg);
    longjmp(x->jb, 1);
}

/* libjpeg reports data it had to make up (a file cut short, a damaged
 * entropy-coded segment) as warnings and goes on with gray or garbage pixels;
 * those are errors here. Harmless ones (extra bytes between markers, odd
 * JFIF / Adobe markers) are not. */
static void jpeg_on_message(j_common_ptr c, int level) {
    if (level >= 0) return; /* trace messages */
    switch (c->err->msg_code) {
    case JWRN_JPEG_EOF:
    case JWRN_HIT_MARKER:
    case JWRN_MUST_RESYNC:
    case JWRN_HUFF_BAD_CODE:
#if JPEG_LIB_VERSION >= 70 || defined(C_ARITH_CODING_SUPPORTED) || defined(D_ARITH_CODING_SUPPORTED)
    case JWRN_ARITH_BAD_CODE:
#endif
    case JWRN_BOGUS_PROGRESSION:
    case JWRN_NOT_SEQUENTIAL:
    case JWRN_TOO_MUCH_DATA: jpeg_on_error(c); break;
    default: c->err->num_warnings++;
    }
}

/* Pillow's cmyk2rgb on its "CMYK;I" reading of what libjpeg gives (Adobe
 * polarity: the file holds 255 - ink): with raw values, 255 - K is raw K */
static uint8_t cmyk_channel(uint8_t raw_ink, uint8_t raw_k) {
    int nk = raw_k, ink = 255 - raw_ink, t = ink * nk + 128;
    int v = nk - (((t >> 8) + t) >> 8);
    return (uint8_t)(v < 0 ? 0 : v);
}

static int decode_jpeg(const uint8_t *data, size_t len, iisan_image *out, char *err,
                       size_t errlen) {
    jpeg_ctx *x = calloc(1, sizeof *x);
    if (!x) return iisan_fail(err, errlen, IISAN_ENOMEM, "out of memory decoding a JPEG");
    int rc = IISAN_EFORMAT;
    x->d.err = jpeg_std_error(&x->em);
    x->em.error_exit = jpeg_on_error;
    x->em.emit_message = jpeg_on_message;
    if (setjmp(x->jb)) {
        /* only x (heap) is read after the jump */
        if (x->em.msg_code == JERR_OUT_OF_MEMORY)
            iisan_fail(err, errlen, IISAN_ENOMEM, "out of memory decoding a JPEG");
        else
            iisan_fail(err, errlen, IISAN_EFORMAT, "corrupt or truncated JPEG: %s", x->msg);
        jpeg_destroy_decompress(&x->d);
        free(x->rgb);
        free(x->row);
        rc = x->em.msg_code == JERR_OUT_OF_MEMORY ? IISAN_ENOMEM : IISAN_EFORMAT;
        free(x);
        return rc;
    }
    jpeg_create_decompress(&x->d);
    jpeg_mem_src(&x->d, data, (unsigned long)len);
    jpeg_read_header(&x->d, TRUE);
    int comps = x->d.num_components, w = (int)x->d.image_width, h = (int)x->d.image_height;
    if (comps == 1)
        x->d.out_color_space = JCS_GRAYSCALE;
    else if (comps == 3)
        x->d.out_color_space = JCS_RGB;
    else if (comps == 4)
        x->d.out_color_space = JCS_CMYK; /* libjpeg turns YCCK into CMYK */
    else {
        iisan_fail(err, errlen, rc, "JPEG with %d colour components (1, 3 or 4 are read)", comps);
        goto out;
    }
    if ((rc = too_large(w, h, "JPEG", err, errlen))) goto out;
    rc = IISAN_ENOMEM;
    x->rgb = malloc((size_t)w * h * 3);
    x->row = malloc((size_t)w * 4);
    if (!x->rgb || !x->row) {
        iisan_fail(err, errlen, rc, "out of memory for a %d x %d JPEG", w, h);
        goto out;
    }
    jpeg_start_decompress(&x->d);
    while (x->d.output_scanline < x->d.output_height) {
        uint8_t *dst = x->rgb + (size_t)x->d.output_scanline * w * 3;
        JSAMPROW r = comps == 3 ? dst : x->row;
        jpeg_read_scanlines(&x->d, &r, 1);
        if (comps == 1) {
            for (int i = 0; i < w; i++)
                dst[3 * i] = dst[3 * i + 1] = dst[3 * i + 2] = x->row[i];
        } else if (comps == 4) {
            for (int i = 0; i < w; i++) {
                const uint8_t *p = x->row + 4 * i;
                for (int c = 0; c < 3; c++)
                    dst[3 * i + c] = cmyk_channel(p[c], p[3]);
            }
        }
    }
    /* every row is in; the end of the file (EOI) is not needed */
    out->w = w;
    out->h = h;
    out->rgb = x->rgb;
    x->rgb = NULL;
    rc = 0;
out:
    jpeg_destroy_decompress(&x->d);
    free(x->rgb);
    free(x->row);
    free(x);
    return rc;
}

/* ---- PNG (libpng) ---- */

typedef struct {
    const uint8_t *data;
    size_t len, pos;
    char msg[256];
    png_structp png;
    png_infop info;
    uint8_t *rgb, *buf;
    png_bytep *rows;
} png_ctx;

static void png_on_error(png_structp p, png_const_charp m) {
    png_ctx *x = png_get_error_ptr(p);
    snprintf(x->msg, sizeof x->msg, "%s", m);
    png_longjmp(p, 1);
}

static void png_on_warning(png_structp p, png_const_charp m) {
    (void)p;
    (void)m;
}

static void png_on_read(png_structp p, png_bytep dst, size_t n) {
    png_ctx *x = png_get_io_ptr(p);
    if (x->len - x->pos < n) png_error(p, "the file ends early");
    memcpy(dst, x->data + x->pos, n);
    x->pos += n;
}

static void png_ctx_free(png_ctx *x) {
    png_destroy_read_struct(&x->png, x->info ? &x->info : NULL, NULL);
    free(x->rgb);
    free(x->buf);
    free(x->rows);
    free(x);
}

static int decode_png(const uint8_t *data, size_t len, iisan_image *out, char *err, size_t errlen) {
    png_ctx *x = calloc(1, sizeof *x);
    if (!x) return iisan_fail(err, errlen, IISAN_ENOMEM, "out of memory decoding a PNG");
    x->data = data;
    x->len = len;
    x->png = png_create_read_struct(PNG_LIBPNG_VER_STRING, x, png_on_error, png_on_warning);
    if (x->png) x->info = png_create_info_struct(x->png);
    if (!x->png || !x->info) {
        png_ctx_free(x);
        return iisan_fail(err, errlen, IISAN_ENOMEM, "out of memory decoding a PNG");
    }
    if (setjmp(png_jmpbuf(x->png))) {
        /* only x (heap) is read after the jump */
        iisan_fail(err, errlen, IISAN_EFORMAT, "corrupt or truncated PNG: %s", x->msg);
        png_ctx_free(x);
        return IISAN_EFORMAT;
    }
    png_set_read_fn(x->png, x, png_on_read);
    png_read_info(x->png, x->info);
    png_uint_32 pw, ph;
    int depth, type, interlace;
    png_get_IHDR(x->png, x->info, &pw, &ph, &depth, &type, &interlace, NULL, NULL);
    int w = (int)pw, h = (int)ph, rc;
    if ((rc = too_large(w, h, "PNG", err, errlen))) {
        png_ctx_free(x);
        return rc;
    }
    if (type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(x->png);
    if (type == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(x->png);
    /* 16-bit grey stays 16-bit: Pillow clips it rather than scaling it;
     * every other 16-bit image keeps its high bytes, as Pillow's "…;16B" */
    int gray16 = depth == 16 && type == PNG_COLOR_TYPE_GRAY;
    if (depth == 16 && !gray16) png_set_strip_16(x->png);
    png_set_interlace_handling(x->png);
    png_read_update_info(x->png, x->info);
    /* palette and tRNS expansion may add an alpha channel: go by what libpng
     * says it will deliver */
    int ch = png_get_channels(x->png, x->info);
    size_t rowbytes = png_get_rowbytes(x->png, x->info);
    if (ch < 1 || ch > 4 || rowbytes < (size_t)w * ch * (gray16 ? 2 : 1)) {
        png_ctx_free(x);
        return iisan_fail(err, errlen, IISAN_EFORMAT, "PNG with %d channels per pixel", ch);
    }
    x->rgb = malloc((size_t)w * h * 3);
    x->buf = malloc(rowbytes * h);
    x->rows = malloc(sizeof *x->rows * h);
    if (!x->rgb || !x->buf || !x->rows) {
        png_ctx_free(x);
        return iisan_fail(err, errlen, IISAN_ENOMEM, "out of memory for a %d x %d PNG", w, h);
    }
    for (int y = 0; y < h; y++)
        x->rows[y] = x->buf + rowbytes * y;
    png_read_image(x->png, x->rows);
    /* every row is in; what follows the image data (IEND) is not needed */
    for (int y = 0; y < h; y++) {
        const uint8_t *s = x->rows[y];
        uint8_t *d = x->rgb + (size_t)y * w * 3;
        for (int i = 0; i < w; i++, d += 3) {
            if (gray16) { /* big-endian samples */
                unsigned v = (unsigned)s[2 * i] << 8 | s[2 * i + 1];
                d[0] = d[1] = d[2] = (uint8_t)(v > 255 ? 255 : v);
            } else if (ch <= 2) {
                d[0] = d[1] = d[2] = s[ch * i];
            } else {
                memcpy(d, s + (size_t)ch * i, 3);
            }
        }
    }
    out->w = w;
    out->h = h;
    out->rgb = x->rgb;
    x->rgb = NULL;
    png_ctx_free(x);
    return 0;
}

/* ---- decoding ---- */

int image_decode(const void *data, size_t len, iisan_image *out, char *err, size_t errlen) {
    static const uint8_t png_sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    const uint8_t *p = data;
    out->w = out->h = 0;
    out->rgb = NULL;
    if (len == 0) return iisan_fail(err, errlen, IISAN_EFORMAT, "empty file");
    if (len >= 3 && p[0] == 0xFF && p[1] == 0xD8 && p[2] == 0xFF)
        return decode_jpeg(p, len, out, err, errlen);
    if (len >= 8 && !memcmp(p, png_sig, 8)) return decode_png(p, len, out, err, errlen);
    return iisan_fail(err, errlen, IISAN_EFORMAT, "not a JPEG or PNG image");
}

int image_decode_file(const char *path, iisan_image *out, char *err, size_t errlen) {
    out->w = out->h = 0;
    out->rgb = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return iisan_fail(err, errlen, IISAN_EIO, "%s: %s", path, strerror(errno));
    uint8_t *buf = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;
    for (;;) {
        if (n == cap) {
            size_t nc = cap ? cap * 2 : 1 << 16;
            uint8_t *nb = realloc(buf, nc);
            if (!nb) {
                rc = iisan_fail(err, errlen, IISAN_ENOMEM, "%s: out of memory", path);
                break;
            }
            buf = nb;
            cap = nc;
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0) {
            if (ferror(f)) rc = iisan_fail(err, errlen, IISAN_EIO, "%s: read error", path);
            break;
        }
    }
    fclose(f);
    if (!rc) {
        char why[512];
        rc = image_decode(buf, n, out, why, sizeof why);
        if (rc) iisan_fail(err, errlen, rc, "%s: %s", path, why);
    }
    free(buf);
    return rc;
}

void image_free(iisan_image *im) {
    if (!im) return;
    free(im->rgb);
    im->rgb = NULL;
    im->w = im->h = 0;
}

/* ---- Pillow's bilinear resize ---- */

#define FIX_BITS 22 /* Pillow: 32 - 8 - 2 */

typedef struct {
    int ksize;
    int *first, *count; /* source range of each output sample */
    int32_t *k;         /* [out][ksize] fixed-point weights */
} resample_filter;

static void filter_free(resample_filter *f) {
    free(f->first);
    free(f->count);
    free(f->k);
}

/* The weights of one axis: output sample i is centred on source position
 * (i + 0.5) * scale; the triangle filter is stretched by the scale when
 * shrinking, so that every source sample contributes (antialiasing). Weights
 * are normalised to sum 1 in double, then rounded to FIX_BITS fixed point. */
static int filter_make(resample_filter *f, int in, int out) {
    double scale = (double)in / out, fscale = scale < 1.0 ? 1.0 : scale;
    double support = fscale, inv = 1.0 / fscale; /* the triangle's support is 1 */
    f->ksize = (int)ceil(support) * 2 + 1;
    f->first = malloc(sizeof *f->first * out);
    f->count = malloc(sizeof *f->count * out);
    f->k = calloc((size_t)out * f->ksize, sizeof *f->k);
    double *w = malloc(sizeof *w * f->ksize);
    if (!f->first || !f->count || !f->k || !w) {
        free(w);
        filter_free(f);
        return IISAN_ENOMEM;
    }
    for (int i = 0; i < out; i++) {
        double center = (i + 0.5) * scale, sum = 0.0;
        int lo = (int)(center - support + 0.5), hi = (int)(center + support + 0.5);
        if (lo < 0) lo = 0;
        if (hi > in) hi = in;
        int n = hi - lo;
        for (int j = 0; j < n; j++) {
            double t = fabs((j + lo - center + 0.5) * inv);
            w[j] = t < 1.0 ? 1.0 - t : 0.0;
            sum += w[j];
        }
        int32_t *k = f->k + (size_t)i * f->ksize;
        for (int j = 0; j < n; j++) {
            double v = sum != 0.0 ? w[j] / sum : w[j];
            k[j] = (int32_t)(v < 0 ? -0.5 + v * (1 << FIX_BITS) : 0.5 + v * (1 << FIX_BITS));
        }
        f->first[i] = lo;
        f->count[i] = n;
    }
    free(w);
    return 0;
}

static uint8_t fix_to_u8(int32_t acc) {
    if (acc <= 0) return 0;
    acc >>= FIX_BITS;
    return (uint8_t)(acc > 255 ? 255 : acc);
}

int image_resize_bilinear(const uint8_t *src, int w, int h, uint8_t *dst, int ow, int oh) {
    if (w < 1 || h < 1 || ow < 1 || oh < 1) return IISAN_EINVAL;
    if (w == ow && h == oh) {
        memcpy(dst, src, (size_t)w * h * 3);
        return 0;
    }
    resample_filter fx = {0}, fy = {0};
    int rc = filter_make(&fy, h, oh);
    if (rc) return rc;
    /* the horizontal pass covers only the rows the vertical one reads */
    int y0 = fy.first[0], y1 = fy.first[oh - 1] + fy.count[oh - 1];
    const uint8_t *mid = src; /* [y1 - y0][ow][3] after the horizontal pass */
    uint8_t *tmp = NULL;
    if (w != ow) {
        if ((rc = filter_make(&fx, w, ow))) goto out;
        int rows = h == oh ? oh : y1 - y0;
        uint8_t *hout = h == oh ? dst : (tmp = malloc((size_t)rows * ow * 3));
        if (!hout) {
            rc = IISAN_ENOMEM;
            goto out;
        }
        if (h == oh) y0 = 0;
        for (int y = 0; y < rows; y++) {
            const uint8_t *s = src + (size_t)(y + y0) * w * 3;
            uint8_t *d = hout + (size_t)y * ow * 3;
            for (int x = 0; x < ow; x++) {
                const int32_t *k = fx.k + (size_t)x * fx.ksize;
                const uint8_t *p = s + (size_t)fx.first[x] * 3;
                int32_t a0 = 1 << (FIX_BITS - 1), a1 = a0, a2 = a0;
                for (int j = 0; j < fx.count[x]; j++, p += 3) {
                    a0 += p[0] * k[j];
                    a1 += p[1] * k[j];
                    a2 += p[2] * k[j];
                }
                d[3 * x] = fix_to_u8(a0);
                d[3 * x + 1] = fix_to_u8(a1);
                d[3 * x + 2] = fix_to_u8(a2);
            }
        }
        if (h == oh) goto out; /* done: the horizontal pass wrote dst */
        mid = tmp;
    } else {
        y0 = 0; /* the vertical pass reads the source itself */
    }
    for (int y = 0; y < oh; y++) {
        const int32_t *k = fy.k + (size_t)y * fy.ksize;
        const uint8_t *s = mid + (size_t)(fy.first[y] - y0) * ow * 3;
        uint8_t *d = dst + (size_t)y * ow * 3;
        for (int x = 0; x < ow * 3; x++) {
            int32_t a = 1 << (FIX_BITS - 1);
            const uint8_t *p = s + x;
            for (int j = 0; j < fy.count[y]; j++, p += (size_t)ow * 3)
                a += *p * k[j];
            d[x] = fix_to_u8(a);
        }
    }
out:
    free(tmp);
    filter_free(&fx);
    filter_free(&fy);
    return rc;
}

/* ---- normalisation ---- */

void image_normalize(const uint8_t *rgb, int w, int h, const float mean[3], const float std[3],
                     float *out) {
    float lut[3][256];
    for (int c = 0; c < 3; c++)
        for (int v = 0; v < 256; v++) {
            /* numpy: uint8 -> float64, times 1/255, -> float32; then float32 */
            float r = (float)((double)v * (1.0 / 255.0));
            lut[c][v] = (r - mean[c]) / std[c];
        }
    size_t plane = (size_t)w * h;
    for (size_t i = 0; i < plane; i++)
        for (int c = 0; c < 3; c++)
            out[c * plane + i] = lut[c][rgb[3 * i + c]];
}

int image_preprocess(const void *data, size_t len, int size, float *out, char *err, size_t errlen) {
    static const float half[3] = {0.5f, 0.5f, 0.5f};
    if (size < 1) return iisan_fail(err, errlen, IISAN_EINVAL, "image size %d", size);
    iisan_image im;
    int rc = image_decode(data, len, &im, err, errlen);
    if (rc) return rc;
    uint8_t *sq = malloc((size_t)size * size * 3);
    if (!sq) {
        image_free(&im);
        return iisan_fail(err, errlen, IISAN_ENOMEM, "out of memory resizing an image");
    }
    rc = image_resize_bilinear(im.rgb, im.w, im.h, sq, size, size);
    if (rc)
        iisan_fail(err, errlen, rc, "resizing a %d x %d image: %s", im.w, im.h, iisan_strerror(rc));
    else
        image_normalize(sq, size, size, half, half, out);
    free(sq);
    image_free(&im);
    return rc;
}
