#!/usr/bin/env bash
# `iisan encode --images` end to end with the tiny committed ViT (tests/golden_encoder/tiny-vit)
# and the test images of tests/golden_image/src: usage errors, a catalogue whose items have
# JPEG / PNG files (any case of extension), no file, a truncated JPEG or a text file; the
# counts in the summary and --json line, the corrupt items named; the stored states against
# transformers' (tests/golden_image/gen.py's "vit.states"); resuming (a repaired file alone is
# encoded later); a store of another image backbone refused; text and images in one run; and
# IISAN training one epoch on all three towers. Ends with "N passed, N failed".
set -u
cd "$(dirname "$0")/.."
BIN=${IISAN_BIN:-build/iisan}
VIT=tests/golden_encoder/tiny-vit
BERT=tests/golden_encoder/tiny-bert
SRC=tests/golden_image/src
T=$(mktemp -d /tmp/iisan-encode-img-XXXXXX)
trap 'rm -rf "$T"' EXIT
source tests/cli_lib.sh

# 12 items (I07 without a title), 40 users; images for I00..I06
python3 - "$T" <<'PY'
import random, sys
d = sys.argv[1]; random.seed(7)
with open(f"{d}/items.tsv", "w") as f:
    for i in range(12):
        f.write(f"I{i:02d}\t{'' if i == 7 else f'lab item {i} glass beaker'}\n")
with open(f"{d}/users.tsv", "w") as f:
    for u in range(40):
        f.write(f"U{u:03d}\t" + " ".join(f"I{random.randrange(12):02d}" for _ in range(random.randint(5, 9))) + "\n")
PY
mkdir "$T/img"
cp "$SRC/photo_420.jpg" "$T/img/I00.jpg"
cp "$SRC/rgba.png"      "$T/img/I01.PNG"
cp "$SRC/gray.jpg"      "$T/img/I02.jpeg"
cp "$SRC/palette.png"   "$T/img/I03.png"
cp "$SRC/cmyk.jpg"      "$T/img/I04.jpg"
head -c 5000 "$SRC/prog_444.jpg" >"$T/img/I05.jpg"   # truncated
echo "not an image" >"$T/img/I06.png"
mkdir "$T/img/I08.jpg"                                # a directory is no image file

expect 0 "encode --help" -- "$BIN" encode --help
has "$T/out" "--images" "help names --images"
has "$T/out" "--image-model" "help names --image-model"
expect 2 "--images without --image-model" -- "$BIN" encode --data "$T/d" --images "$T/img"
has "$T/err" "go together" "says the two go together"
expect 2 "--image-model without --images" -- "$BIN" encode --data "$T/d" --image-model "$VIT"
expect 2 "an empty --image-backbone" -- "$BIN" encode --data "$T/d" --images "$T/img" --image-model "$VIT" --image-backbone ""

expect 0 "import" -- "$BIN" import --data "$T/d" --items "$T/items.tsv" --users "$T/users.tsv" --quiet
expect 1 "a missing image directory" -- "$BIN" encode --data "$T/d" --images "$T/noimg" --image-model "$VIT"
has "$T/err" "noimg: no such image directory" "names the image directory"
expect 1 "a missing image model" -- "$BIN" encode --data "$T/d" --images "$T/img" --image-model "$T/novit"
has "$T/err" "novit/config.json" "missing image model names config.json"

expect 0 "encode images" -- "$BIN" encode --data "$T/d" --images "$T/img" --image-model "$VIT" --batch 2 --threads 1 --json
eq "$(json_field image_encoded)" 5 "images encoded"
eq "$(json_field image_missing)" 5 "items without an image file (I07..I11)"
eq "$(json_field image_corrupt)" 2 "corrupt images"
eq "$(json_field image_backbone)" tiny-vit "image backbone named after the model directory"
eq "$(json_field image_nstates)" 3 "image nstates"
eq "$(json_field image_width)" 32 "image width"
eq "$(json_field image_with_states)" 5 "items with image states"
has "$T/err" "item I05: .*I05.jpg: corrupt or truncated JPEG" "the truncated JPEG is named"
has "$T/err" "item I06: .*I06.png: not a JPEG or PNG image" "the text file is named"
has "$T/err" "images/s" "progress shows images/s"
has "$T/err" "encoded 5 images" "summary line"
has "$T/err" "5 items have no image file, 2 could not be read or decoded" "summary counts"
hasnt "$T/out" '"encoded"' "no text figures when no text was encoded"

# the stored states of I00..I03 against transformers' for the same files
mdb_dump -s state_image "$T/d" >"$T/dump"
if python3 - "$T/dump" tests/golden_image/image.safetensors <<'PY'
import json, math, struct, sys
lines = open(sys.argv[1]).read().split("HEADER=END\n", 1)[1].split()
stored = {}
for k, v in zip(lines[0::2], lines[1::2]):
    if k == "DATA=END": break
    b = bytes.fromhex(v)
    stored[struct.unpack("<I", bytes.fromhex(k))[0]] = struct.unpack(f"<{len(b)//2}e", b)
raw = open(sys.argv[2], "rb").read()
n = struct.unpack("<Q", raw[:8])[0]; hdr = json.loads(raw[8:8 + n]); base = 8 + n
def tensor(name):
    t = hdr[name]; a, b = t["data_offsets"]; return t, raw[base + a:base + b]
_, names = tensor("vit.names"); names = names.decode().split("\0")[:-1]
t, data = tensor("vit.states"); m, S, D = t["shape"]
ref = struct.unpack(f"<{m*S*D}f", data)
files = {"photo_420.jpg": 1, "rgba.png": 2, "gray.jpg": 3, "palette.png": 4}  # catalogue index
worst = 0.0
for i, name in enumerate(names):
    got = stored[files[name]]; want = ref[i*S*D:(i+1)*S*D]
    assert len(got) == S * D, (name, len(got))
    # within one fp16 step of the reference (the rounding alone is half a step)
    for g, w in zip(got, want):
        step = 2.0 ** (max(math.frexp(w)[1] - 1, -14) - 10)
        worst = max(worst, abs(g - w) / step)
assert worst <= 1.0, worst
assert 5 in stored and 6 not in stored and 7 not in stored and 8 not in stored
print(f"stored image states within {worst:.2f} fp16 steps of transformers'", file=sys.stderr)
PY
then ok; else bad "stored image states differ from the reference"; fi

expect 0 "encode images again" -- "$BIN" encode --data "$T/d" --images "$T/img" --image-model "$VIT" --json --quiet
eq "$(json_field image_encoded)" 0 "second run encodes nothing new"
eq "$(json_field image_corrupt)" 2 "second run meets the corrupt files again"
has "$T/err" "item I05" "corrupt items named even with --quiet"
cp "$SRC/prog_444.jpg" "$T/img/I05.jpg"   # repaired
cp "$SRC/gray8.png" "$T/img/I09.png"      # a new image
expect 0 "encode the repaired and new images" -- "$BIN" encode --data "$T/d" --images "$T/img" --image-model "$VIT/" --json --quiet
eq "$(json_field image_encoded)" 2 "only the repaired and the new image are encoded"
eq "$(json_field image_with_states)" 7 "items with image states"
eq "$(json_field image_missing)" 4 "items without an image file"

expect 1 "encode with another image backbone" -- "$BIN" encode --data "$T/d" --images "$T/img" --image-model "$VIT" --image-backbone other-vit
has "$T/err" "tiny-vit" "refusal names the stored backbone"
has "$T/err" "other-vit" "refusal names the new backbone"

expect 0 "import for the one-run store" -- "$BIN" import --data "$T/d2" --items "$T/items.tsv" --users "$T/users.tsv" --quiet
expect 0 "text and images in one run" -- "$BIN" encode --data "$T/d2" --model "$BERT" --images "$T/img" --image-model "$VIT" --quiet --json
eq "$(json_field encoded)" 11 "titled items encoded"
eq "$(json_field image_encoded)" 7 "images encoded"
eq "$(json_field backbone)" tiny-bert "text backbone"
eq "$(json_field image_backbone)" tiny-vit "image backbone"

expect 0 "info" -- "$BIN" info --data "$T/d2" --json
has "$T/out" '"backbone":"tiny-vit"' "info shows the image backbone"
expect 0 "train IISAN (all towers) on encoded text and image states" -- "$BIN" train --data "$T/d2" --towers image,text,inter --schedule all --epochs 1 --threads 1 --no-save --json
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
