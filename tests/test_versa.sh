#!/usr/bin/env bash
# IISAN-Versa end to end with a real text backbone: Scientific titles of a user subset
# encoded by all-MiniLM-L6-v2 (`iisan encode`: 7 states x 384) beside imported image states
# of another shape (13 x 768, random but deterministic, some items without); symmetric
# IISAN refused with a message naming --arch versa; Versa trained (per-modality schedules),
# evaluated, exported and re-imported, served (recommendations, an item added with states
# of both shapes embedded on the spot, a retraining job promoted); symmetric IISAN trained
# on the same text states for comparison (both HR@10 printed); images encoded by the tiny
# committed ViT (3 x 32) beside the text states, and Versa trained on them. Skips where MiniLM is not
# installed (deploy/install-minilm.sh). Ends with "N passed, N failed".
set -u
cd "$(dirname "$0")/.."
source tests/serve_lib.sh
source tests/cli_lib.sh
MINILM=${IISAN_MINILM:-build/models/all-MiniLM-L6-v2}
if [ ! -f "$MINILM/vocab.txt" ] || [ ! -f "$MINILM/model.safetensors" ]; then
  echo "skip: all-MiniLM-L6-v2 is not installed at $MINILM (deploy/install-minilm.sh)" >&2
  echo "0 passed, 0 failed"
  exit 0
fi
USERS=${VERSA_USERS:-160}
EPOCHS=${VERSA_EPOCHS:-4}

# the first $USERS Scientific users with 5+ items, and the items they touched
python3 - "$T" "$USERS" <<'PY'
import sys
d, want = sys.argv[1], int(sys.argv[2])
src = "../shared/data/amazon/scientific"
titles = dict(l.rstrip("\n").split("\t", 1) for l in open(f"{src}/items.tsv", encoding="utf-8"))
users, items = [], set()
for l in open(f"{src}/users.tsv", encoding="utf-8"):
    u, seq = l.rstrip("\n").split("\t")
    seq = seq.split()
    if len(seq) < 5: continue
    users.append((u, seq)); items.update(seq)
    if len(users) == want: break
with open(f"{d}/items.tsv", "w", encoding="utf-8") as f:
    for i in sorted(items): f.write(f"{i}\t{titles.get(i, '')}\n")
with open(f"{d}/users.tsv", "w", encoding="utf-8") as f:
    for u, seq in users: f.write(f"{u}\t{' '.join(seq)}\n")
PY
# image states F32 [N, 13, 768] for 9 items in 10 (uniform in +-1.7, from a fixed seed)
image_states() { # image_states OUT IDS_FILE
  python3 - "$1" "$2" <<'PY'
import json, random, struct, sys, array
out, idf = sys.argv[1], sys.argv[2]
ids = [l.split("\t", 1)[0] for l in open(idf, encoding="utf-8")]
ids = [i for k, i in enumerate(ids) if k % 10 != 3]
S, D = 13, 768
rng = random.Random(13)
data = array.array("f", (3.4 * rng.random() - 1.7 for _ in range(len(ids) * S * D))).tobytes()
idb = "\n".join(ids).encode()
hdr = {"image": {"dtype": "F32", "shape": [len(ids), S, D], "data_offsets": [0, len(data)]},
       "item_ids": {"dtype": "U8", "shape": [len(idb)], "data_offsets": [len(data), len(data) + len(idb)]},
       "__metadata__": {"image_backbone": "random-vit-13x768"}}
h = json.dumps(hdr).encode(); h += b" " * (-len(h) % 8)
open(out, "wb").write(struct.pack("<Q", len(h)) + h + data + idb)
PY
}

D="$T/d"
expect 0 "import" -- "$BIN" import --data "$D" --items "$T/items.tsv" --users "$T/users.tsv" --quiet
expect 0 "encode titles with MiniLM" -- "$BIN" encode --data "$D" --model "$MINILM" --quiet --json
cp -r "$D" "$T/sym" # the same text states, no image states: symmetric IISAN's store
image_states "$T/image.safetensors" "$T/items.tsv"
expect 0 "import image states of another shape" -- "$BIN" import --data "$D" --states "$T/image.safetensors"
expect 0 "info" -- "$BIN" info --data "$D" --json
python3 -c 'import json,sys; s=json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])["states"]
sys.exit(0 if (s["text"]["nstates"], s["text"]["width"], s["image"]["nstates"], s["image"]["width"]) == (7, 384, 13, 768) else 1)' "$T/out" \
  && ok || bad "the store holds 7 x 384 text and 13 x 768 image states: $(tail -1 "$T/out")"

# symmetric IISAN cannot pair them: a message naming Versa
expect 1 "symmetric IISAN refuses different shapes" -- "$BIN" train --data "$D" --epochs 1
has "$T/err" "7 x 384 but image states 13 x 768" "the refusal names both shapes"
has "$T/err" "--arch versa" "the refusal names --arch versa"
expect 2 "per-modality schedules need versa" -- "$BIN" train --data "$D" --schedule-text all
expect 2 "a text schedule past the text states" -- "$BIN" train --data "$D" --arch versa --schedule-text 0,9
has "$T/err" "text schedule" "the bad schedule names its modality"
expect 2 "a bad --arch" -- "$BIN" train --data "$D" --arch wide

# Versa: text every state of MiniLM (7 blocks), image every second (7 blocks of 13 states)
expect 0 "train versa" -- "$BIN" train --data "$D" --arch versa --schedule-text all \
  --schedule-image every2 --epochs "$EPOCHS" --patience "$EPOCHS" --json
has "$T/err" "inter tower 384 wide, 7 blocks" "the inter tower takes the narrower width"
eq "$(json_field model)" "iisan-versa" "train reports the architecture"
first=$(json_field first_loss); last=$(json_field last_loss); vhr=$(json_field valid_hr10)
python3 -c "import sys; sys.exit(0 if float('$last') < float('$first') else 1)" && ok || bad "versa loss did not fall: $first -> $last"
expect 0 "eval versa" -- "$BIN" eval --data "$D" --json
eq "$(json_field model)" "iisan-versa" "eval names the architecture"
versa_hr=$(json_field hr10)
expect 0 "export versa" -- "$BIN" export --data "$D" --out "$T/v.safetensors"
expect 0 "import-ckpt versa" -- "$BIN" import-ckpt --data "$D" --in "$T/v.safetensors"
expect 0 "eval the re-imported version" -- "$BIN" eval --data "$D" --version 2 --json
eq "$(json_field hr10)" "$versa_hr" "the round-tripped Versa checkpoint scores the same"

# symmetric IISAN on the same text states (image zeros), the same budget
expect 0 "train symmetric iisan on the same text states" -- "$BIN" train --data "$T/sym" \
  --epochs "$EPOCHS" --patience "$EPOCHS" --json
expect 0 "eval symmetric" -- "$BIN" eval --data "$T/sym" --json
sym_hr=$(json_field hr10)
echo "  test HR@10 over $USERS users, $EPOCHS epochs: IISAN-Versa (MiniLM text + 13x768 image) $versa_hr, symmetric IISAN (MiniLM text) $sym_hr" >&2

# the encode path takes a second modality of another shape too: images of a few items encoded
# by the tiny committed ViT (3 x 32) beside the MiniLM text states; Versa trains on them, and a
# store with one modality gives the missing one the other's shape
expect 0 "versa on text states alone" -- "$BIN" train --data "$T/sym" --arch versa --epochs 1 --no-save
has "$T/err" "image (none: zeros) 7 states x 384" "the missing modality takes the text's shape"
mkdir -p "$T/img"
i=0
for f in photo_420.jpg prog_444.jpg rgb.png; do # the first three items of the catalogue
  i=$((i + 1)); id=$(sed -n "${i}p" "$T/items.tsv" | cut -f1); cp "tests/golden_image/src/$f" "$T/img/$id.${f##*.}"
done
expect 0 "encode images (3 x 32) beside 7 x 384 text states" -- "$BIN" encode --data "$T/sym" \
  --images "$T/img" --image-model tests/golden_encoder/tiny-vit --quiet --json
expect 0 "versa on encoded text and image states" -- "$BIN" train --data "$T/sym" --arch versa \
  --epochs 1 --no-save
has "$T/err" "image tiny-vit 3 states x 32" "the image tower takes the ViT's shape"
# the symmetric model trained there before (image zeros, read as 7 x 384) must not read them
expect 1 "a model that reads another image shape is refused" -- "$BIN" eval --data "$T/sym"
has "$T/err" "image states of 7 x 384 but the store holds 3 x 32" "the refusal names both shapes"

# served: recommendations, an item added with states of both shapes, a retraining job
TOKEN=versa-token
printf 'port = 0\nthreads = 2\nadmin_token = "%s"\n' "$TOKEN" >"$T/serve.conf"
AUTH=(-H "Authorization: Bearer $TOKEN")
wait_job() {
  for _ in $(seq 1 1200); do
    req GET "/admin/jobs/$1" '' "${AUTH[@]}"
    python3 -c 'import json,sys; sys.exit(0 if json.load(open(sys.argv[1]))["state"] in ("promoted","rejected","failed") else 1)' "$T/body" && return
    sleep 0.1
  done
}
item_body() { # item_body ID TEXT_ROWS IMAGE_ROWS IMAGE_WIDTH
  python3 - "$@" <<'PY'
import json, random, sys
i, tr, ir, iw = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(i)
row = lambda w: [round(rng.gauss(0, 1), 3) for _ in range(w)]
print(json.dumps({"item_id": i, "states": {"text": [row(384) for _ in range(tr)],
                                           "image": [row(iw) for _ in range(ir)]}}))
PY
}
start
hist=$(head -1 "$T/users.tsv" | cut -f2 | tr ' ' '\n' | head -3 | python3 -c 'import json,sys; print(json.dumps([l.strip() for l in sys.stdin]))')
req POST /recommend "{\"history\":$hist,\"k\":10}"; status 200 "recommend with Versa"
jcheck "len(d['items']) == 10 and 'warnings' not in d" "ten recommendations"
req GET /healthz; jcheck "d['model_version'] == 2" "the re-imported version is served"
item_body V1 7 13 768 >"$T/v1.json"
req POST /items "@$T/v1.json" "${AUTH[@]}"; status 200 "POST /items with 7 x 384 text and 13 x 768 image states"
jcheck "d['items'][0]['embedded'] and d['items'][0]['in_model'] and sorted(d['items'][0]['states_stored']) == ['image', 'text']" "embedded on the spot"
req POST /recommend '{"history":["V1"],"k":5}'; jcheck "len(d['items']) == 5 and 'warnings' not in d" "the new item as history"
item_body V2 7 13 384 >"$T/v2.json"
req POST /items "@$T/v2.json" "${AUTH[@]}"; errcode 422 wrong_shape "image states of the text's width"
req POST /admin/retrain '{"epochs":1,"max_steps":2,"tolerance":1}' "${AUTH[@]}"; status 202 "retrain Versa"
job=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["job_id"])' "$T/body")
wait_job "$job"
jcheck "d['state'] == 'promoted' and d['new_version'] == 3" "the retrained Versa model is promoted"
req POST /recommend '{"history":["V1"],"k":5}'; jcheck "len(d['items']) == 5 and 'warnings' not in d" "the added item in the retrained version"
stop
eq "$STOP_RC" "0" "clean stop"
expect 0 "eval the retrained version" -- "$BIN" eval --data "$D" --version 3 --json
eq "$(json_field model)" "iisan-versa" "retraining keeps the architecture"

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
