#!/usr/bin/env python3
"""Reference fixtures for the image pipeline (core/image.c) and the image side of
`iisan encode`, from Pillow and Hugging Face transformers' ViTImageProcessor. Run through
gen.sh (developers only; CI reads the committed files). Writes, under tests/golden_image/:

  src/*.jpg, src/*.png  small synthetic test images: JPEG (4:2:0, 4:2:2, 4:4:4 progressive,
                        grayscale, CMYK) and PNG (RGB, RGBA, palette with tRNS, 4-bit
                        palette, 8/4/2/1-bit grey, grey + alpha, 16-bit grey / RGB / RGBA /
                        grey + alpha, Adam7 interlaced), sizes that go down, up, both ways,
                        not at all (224 x 224), 3 x 2 and 1000 x 10
  image.safetensors     per image (in the order of "names"): its size, the FNV-1a 64 hash of
                        Pillow's Image.open(f).convert("RGB") bytes, of the 224 x 224 resize
                        ViTImageProcessor makes of it (PIL bilinear), and of the float32
                        pixel_values [3, 224, 224] it returns; rows 0, 111 and 223 of the
                        resize; the whole decoded image where it is small; two more resizes
                        (31 x 17, 6 x 41) of every image in full; the processor's value for
                        each of the 256 pixel values; and the tiny ViT's [CLS] states
                        (tests/golden_encoder/tiny-vit, image 32) of four images preprocessed
                        by ViTImageProcessor(size 32), float64 rounded to fp32

Deterministic: a second run writes the same files.
"""
import json
import os
import struct
import sys
import warnings
import zlib

import numpy as np
import PIL
import PIL.features
import torch
import transformers
from PIL import Image
from safetensors.numpy import save_file
from transformers import ViTImageProcessor, ViTModel
from transformers.image_transforms import resize
from transformers.image_utils import PILImageResampling

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
SRC = os.path.join(HERE, "src")
TINY_VIT = os.path.join(ROOT, "tests", "golden_encoder", "tiny-vit")
SEED = 4321
FULL_DEC_MAX = 4096  # decoded images up to this many pixels are stored whole
EXTRA_SIZES = [(31, 17), (6, 41)]  # (w, h)
ROWS = [0, 111, 223]
VIT_IMAGES = ["photo_420.jpg", "rgba.png", "gray.jpg", "palette.png"]


def fnv1a64(b):
    h = 0xCBF29CE484222325
    for x in b:
        h ^= x
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def scene(w, h, seed, noise=4.0):
    """a smooth colour field with hard edges (a disc, a bar, a fine checkerboard) and a
    little noise: something for an antialiasing filter to do, still small as PNG"""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    u, v = x / max(w - 1, 1), y / max(h - 1, 1)
    img = np.stack([255 * u, 255 * v, 255 * (0.5 + 0.5 * np.sin(6 * u + 4 * v + seed))], -1)
    cx, cy, r = w * rng.uniform(0.3, 0.7), h * rng.uniform(0.3, 0.7), min(w, h) * 0.3
    disc = (x - cx) ** 2 + (y - cy) ** 2 < r * r
    img[disc] = rng.uniform(0, 255, 3)
    bar = (x > w * 0.1) & (x < w * 0.1 + max(1, w // 20))
    img[bar] = [250, 250, 20]
    chk = (x > w * 0.6) & (y > h * 0.6)
    img[chk & (((x.astype(int) + y.astype(int)) % 2) == 0)] = [10, 10, 10]
    img += rng.normal(0, noise, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def png_chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data +
            struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def png_raw(samples, depth, color_type, interlace=False, plte=None, trns=None):
    """a PNG written by hand (Pillow cannot write 16-bit colour, 2/4-bit grey or Adam7):
    samples [h, w, c] of unsigned integers < 2**depth, filter 0 on every row"""
    h, w = samples.shape[:2]

    def pack_rows(a):
        out = b""
        for row in a:
            flat = row.reshape(-1).astype(np.int64)
            if depth == 16:
                data = flat.astype(">u2").tobytes()
            elif depth == 8:
                data = flat.astype(np.uint8).tobytes()
            else:
                per = 8 // depth
                pad = (-len(flat)) % per
                f = np.concatenate([flat, np.zeros(pad, np.int64)]).reshape(-1, per)
                shifts = np.arange(per - 1, -1, -1) * depth
                data = (f << shifts).sum(1).astype(np.uint8).tobytes()
            out += b"\x00" + data
        return out

    if interlace:
        raw = b""
        for x0, y0, dx, dy in [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4),
                               (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]:
            sub = samples[y0::dy, x0::dx]
            if sub.shape[0] and sub.shape[1]:
                raw += pack_rows(sub)
    else:
        raw = pack_rows(samples)
    out = b"\x89PNG\r\n\x1a\n"
    out += png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0,
                                          1 if interlace else 0))
    if plte is not None:
        out += png_chunk(b"PLTE", plte)
    if trns is not None:
        out += png_chunk(b"tRNS", trns)
    out += png_chunk(b"IDAT", zlib.compress(raw, 9))
    out += png_chunk(b"IEND", b"")
    return out


def write_sources():
    os.makedirs(SRC, exist_ok=True)
    for f in os.listdir(SRC):
        os.remove(os.path.join(SRC, f))

    def path(name):
        return os.path.join(SRC, name)

    rgb = lambda w, h, s, n=4.0: Image.fromarray(scene(w, h, s, n), "RGB")
    # JPEG
    rgb(320, 240, 1, 2.0).save(path("photo_420.jpg"), quality=90, subsampling=2)
    rgb(257, 64, 2).save(path("photo_422.jpg"), quality=85, subsampling=1)
    rgb(150, 100, 3).save(path("prog_444.jpg"), quality=95, subsampling=0, progressive=True)
    rgb(97, 61, 4).convert("L").save(path("gray.jpg"), quality=80)
    cmyk = Image.fromarray(scene(40, 30, 5), "RGB").convert("CMYK")
    cmyk.save(path("cmyk.jpg"), quality=90)
    # PNG through Pillow
    rgb(240, 232, 6, 0.0).save(path("rgb.png"))
    a = np.dstack([scene(100, 150, 7, 1.0), (np.arange(150)[:, None] * 255 // 149 *
                                        np.ones((1, 100))).astype(np.uint8)])
    Image.fromarray(a, "RGBA").save(path("rgba.png"))
    p = rgb(90, 60, 8).quantize(colors=200, dither=Image.Dither.NONE)
    p.save(path("palette.png"), transparency=bytes(range(0, 200)))
    rgb(33, 21, 9).quantize(colors=16, dither=Image.Dither.NONE).save(path("palette4.png"),
                                                                      bits=4)
    rgb(48, 64, 10).convert("L").save(path("gray8.png"))
    rgb(50, 40, 11).convert("L").point(lambda v: 255 if v > 120 else 0).convert("1").save(
        path("mono.png"))
    la = np.dstack([scene(64, 64, 12)[..., 0], scene(64, 64, 13)[..., 1]])
    Image.fromarray(la, "LA").save(path("graya.png"))
    g16 = (scene(40, 30, 14)[..., 0].astype(np.uint16) * 4 + np.arange(40)[None, :])
    Image.fromarray(g16.astype(np.uint16)).save(path("gray16.png"))  # mode I;16
    rgb(224, 224, 15, 0.0).save(path("exact224.png"))
    rgb(3, 2, 16).save(path("tiny3x2.png"))
    rgb(1000, 10, 17, 0.0).save(path("wide.png"))
    # PNG by hand
    s = scene(30, 30, 18).astype(np.uint16)
    rgb16 = s * 257 + np.random.default_rng(18).integers(0, 257, s.shape)
    open(path("rgb16.png"), "wb").write(png_raw(rgb16, 16, 2))
    s = scene(37, 45, 19).astype(np.uint16)
    alpha = np.broadcast_to(np.arange(45, dtype=np.uint16)[:, None] * 1400, (45, 37))
    rgba16 = np.dstack([s * 256 + 255 - s, alpha])
    open(path("rgba16_adam7.png"), "wb").write(png_raw(rgba16, 16, 6, interlace=True))
    s = scene(30, 20, 20)
    la16 = np.dstack([s[..., 0].astype(np.uint16) * 257 + 100, s[..., 1].astype(np.uint16)])
    open(path("graya16.png"), "wb").write(png_raw(la16, 16, 4))
    g = scene(29, 19, 21)[..., 1]
    open(path("gray4.png"), "wb").write(png_raw(g[..., None] >> 4, 4, 0))
    open(path("gray2.png"), "wb").write(png_raw(g[..., None] >> 6, 2, 0))
    open(path("adam7.png"), "wb").write(png_raw(scene(61, 43, 22), 8, 2, interlace=True))
    return sorted(os.listdir(SRC))


def preprocess(rgb, size):
    proc = ViTImageProcessor(size={"height": size, "width": size})
    assert proc.resample == PILImageResampling.BILINEAR and proc.do_resize
    assert proc.image_mean == [0.5] * 3 and proc.image_std == [0.5] * 3
    assert abs(proc.rescale_factor - 1 / 255) < 1e-18
    return proc(rgb, return_tensors="np")["pixel_values"][0]


def main():
    torch.manual_seed(SEED)
    names = write_sources()
    lut_proc = ViTImageProcessor(do_resize=False)
    allv = Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16)).convert("RGB")
    lut = lut_proc(allv, return_tensors="np")["pixel_values"][0]
    assert (lut[0] == lut[1]).all() and (lut[0] == lut[2]).all()
    lut = lut[0].reshape(-1).astype(np.float32)

    tensors = {"lut": lut}
    ws, hs, dec_h, r224_h, px_h, rows = [], [], [], [], [], []
    modes = {}
    for i, name in enumerate(names):
        im = Image.open(os.path.join(SRC, name))
        modes[name] = im.mode
        with warnings.catch_warnings():  # P + tRNS bytes: convert("RGB") drops it, as wanted
            warnings.simplefilter("ignore")
            rgb = im.convert("RGB")
        a = np.asarray(rgb)
        h, w = a.shape[:2]
        ws.append(w)
        hs.append(h)
        dec_h.append(fnv1a64(a.tobytes()))
        if w * h <= FULL_DEC_MAX:
            tensors[f"dec.{name}"] = a.copy()
        r = resize(a, (224, 224), resample=PILImageResampling.BILINEAR)
        assert r.dtype == np.uint8 and r.shape == (224, 224, 3)
        r224_h.append(fnv1a64(r.tobytes()))
        rows.append(r[ROWS])
        px = preprocess(rgb, 224).astype(np.float32)
        assert px.shape == (3, 224, 224)
        # the processor's pixels are the per-value map of the resized image
        assert (px == lut[r.transpose(2, 0, 1)]).all(), name
        px_h.append(fnv1a64(np.ascontiguousarray(px).tobytes()))
        for k, (ow, oh) in enumerate(EXTRA_SIZES):
            tensors[f"rs{k}.{name}"] = np.asarray(rgb.resize((ow, oh), Image.BILINEAR)).copy()
    blob = b"".join(n.encode() + b"\0" for n in names)
    tensors.update({
        "names": np.frombuffer(blob, dtype=np.uint8).copy(),
        "w": np.array(ws, dtype=np.int32), "h": np.array(hs, dtype=np.int32),
        "dec.hash": np.array(dec_h, dtype=np.uint64),
        "r224.hash": np.array(r224_h, dtype=np.uint64),
        "px.hash": np.array(px_h, dtype=np.uint64),
        "r224.rows": np.stack(rows).astype(np.uint8),
        "extra.sizes": np.array(EXTRA_SIZES, dtype=np.int32),
    })

    # the tiny ViT's states of a few images, as the encoder computes them
    vit = ViTModel.from_pretrained(TINY_VIT, attn_implementation="eager").double().eval()
    size = vit.config.image_size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pix = np.stack([preprocess(Image.open(os.path.join(SRC, n)).convert("RGB"), size)
                        for n in VIT_IMAGES])
    with torch.no_grad():
        out = vit(pixel_values=torch.from_numpy(pix).double(), output_hidden_states=True)
    st = torch.stack(out.hidden_states, 1)[:, :, 0, :].numpy().astype(np.float32)
    vblob = b"".join(n.encode() + b"\0" for n in VIT_IMAGES)
    tensors["vit.names"] = np.frombuffer(vblob, dtype=np.uint8).copy()
    tensors["vit.states"] = st
    meta = {"generator": "tests/golden_image/gen.py", "pillow_version": PIL.__version__,
            "transformers_version": transformers.__version__,
            "torch_version": torch.__version__,
            "libjpeg_turbo": str(PIL.features.version("libjpeg_turbo")),
            "zlib": str(PIL.features.version("zlib")), "modes": json.dumps(modes)}
    save_file(tensors, os.path.join(HERE, "image.safetensors"), metadata=meta)
    total = sum(os.path.getsize(os.path.join(SRC, n)) for n in names)
    print(f"{len(names)} images ({total} bytes); modes {modes}; "
          f"libjpeg-turbo {meta['libjpeg_turbo']}", file=sys.stderr)


if __name__ == "__main__":
    main()
