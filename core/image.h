/* Images for the ViT encoder: decoding JPEG (libjpeg-turbo) and PNG (libpng)
 * to 8-bit RGB, the bilinear resize of Pillow, and the normalisation of
 * Hugging Face's ViTImageProcessor, so that
 *
 *   image_preprocess(bytes) == ViTImageProcessor()(Image.open(f).convert("RGB"))
 *
 * bit for bit (docs/encoders.md, "Images"; tests/test_image.c).
 *
 * Decoding follows Pillow's Image.open(...).convert("RGB"):
 *   - grayscale (1, 2, 4, 8 bits) is replicated to R = G = B;
 *   - palette images are looked up (a tRNS chunk is ignored);
 *   - alpha (grey + alpha, RGBA, tRNS) is dropped, not composited;
 *   - 16-bit RGB / RGBA / grey + alpha keep the high byte of each sample;
 *     16-bit grey is clipped to 255 (Pillow's "I;16" -> "RGB": min(v, 255));
 *   - CMYK and YCCK JPEGs are read with Adobe's inverted polarity and
 *     converted as Pillow's cmyk2rgb does;
 *   - no gamma, ICC profile or EXIF orientation is applied.
 * Corrupt, truncated and empty inputs are IISAN_EFORMAT with the reason in
 * err (libjpeg and libpng errors come back by longjmp; nothing exits), as are
 * images of more than IMAGE_MAX_PIXELS pixels (Pillow's decompression-bomb
 * limit). Every function is thread-safe on distinct arguments. */
#ifndef IISAN_CORE_IMAGE_H
#define IISAN_CORE_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#define IMAGE_MAX_PIXELS 178956970u /* 2 * Pillow's Image.MAX_IMAGE_PIXELS */

typedef struct {
    int w, h;
    uint8_t *rgb; /* h rows of w pixels, R G B; malloc'd */
} iisan_image;

/* Decodes a JPEG or PNG held in memory (told apart by their signatures).
 * 0, or IISAN_EFORMAT (not a JPEG / PNG, corrupt, truncated, too large) /
 * IISAN_ENOMEM with a message in err; *out is then empty. */
int image_decode(const void *data, size_t len, iisan_image *out, char *err, size_t errlen);
/* the same from a file; IISAN_EIO when it cannot be read; messages name path */
int image_decode_file(const char *path, iisan_image *out, char *err, size_t errlen);
void image_free(iisan_image *im);

/* Pillow's Image.resize((ow, oh), Image.BILINEAR) of an RGB image: a
 * triangle filter whose support grows with the downscale factor
 * (antialiasing), 22-bit fixed-point coefficients, a horizontal pass then a
 * vertical one, each rounded to uint8. src [h][w][3] -> dst [oh][ow][3].
 * 0, IISAN_EINVAL (a size < 1) or IISAN_ENOMEM. */
int image_resize_bilinear(const uint8_t *src, int w, int h, uint8_t *dst, int ow, int oh);

/* ViTImageProcessor's rescale and normalise, channel first: for channel c,
 * out[c][y][x] = ((float)(v * (1 / 255.0)) - mean[c]) / std[c] in float32,
 * v = rgb[y][x][c]. */
void image_normalize(const uint8_t *rgb, int w, int h, const float mean[3], const float std[3],
                     float *out);

/* decode, resize to size x size, normalise with mean = std = 0.5 (IISAN's,
 * ViTImageProcessor's defaults): out [3][size][size]. Returns as
 * image_decode. */
int image_preprocess(const void *data, size_t len, int size, float *out, char *err, size_t errlen);

#endif
