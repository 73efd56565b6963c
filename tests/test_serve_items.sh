#!/usr/bin/env bash
# POST /items makes an item recommendable at once (iisan serve, IISAN model):
#   1. hidden states sent with the item (nested rows or flat): embedded on the
#      spot, recommended and usable in histories, the shape checked against
#      the store; after kill -9 and a restart the item is still served;
#   2. a title only, with the tiny committed BERT configured as text_model:
#      the daemon encodes the title, stores the states and embeds the item; during a
#      reload (slowed by IISAN_TEST_LOAD_DELAY_MS) the encoding runs while the load holds
#      the model-load lock, and the item is published into the new model;
#   3. an image (base64 JPEG / PNG), with the tiny committed ViT as
#      image_model: encoded like `iisan encode --images`, corrupt ones refused.
# Ends with "N passed, N failed".
set -u
cd "$(dirname "$0")/.."
source tests/serve_lib.sh
MODEL=tests/golden_encoder/tiny-bert

# ---- a store encoded with the tiny BERT: 30 titled items, 50 users ----
python3 - "$T" <<'PY'
import random, sys
d = sys.argv[1]; random.seed(7)
words = "red blue small large glass steel pipette flask beaker scale lamp clamp tube rack".split()
with open(f"{d}/items.tsv", "w") as f:
    for i in range(30): f.write(f"I{i:03d}\t" + " ".join(random.sample(words, 4)) + "\n")
with open(f"{d}/users.tsv", "w") as f:
    for u in range(50):
        f.write(f"U{u:03d}\t" + " ".join(f"I{random.randrange(30):03d}" for _ in range(random.randint(5, 9))) + "\n")
PY
D="$T/d"
check "import" -- "$BIN" import --data "$D" --items "$T/items.tsv" --users "$T/users.tsv" 2>/dev/null
check "encode" -- "$BIN" encode --data "$D" --model "$MODEL" --quiet
check "train iisan" -- "$BIN" train --data "$D" --model iisan --epochs 1 --r 4 --d 8 \
  --schedule 0,1,2 --json >/dev/null 2>&1
# the store's text states: their shape, for the bodies below
read -r NS W < <("$BIN" info --data "$D" --json | tail -1 | python3 -c '
import json,sys; t=json.load(sys.stdin)["states"]["text"]; print(t["nstates"], t["width"])')
states_body() { # states_body ID nested|flat [rows]
  python3 - "$1" "$2" "${3:-$NS}" "$W" <<'PY'
import json, random, sys
i, form, rows, w = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
random.seed(i)
s = [[round(random.gauss(0, 1), 4) for _ in range(w)] for _ in range(rows)]
print(json.dumps({"item_id": i, "states": {"text": s if form == "nested" else sum(s, [])}}))
PY
}
TOKEN=items-token
printf 'port = 0\nthreads = 2\nadmin_token = "%s"\n' "$TOKEN" >"$T/serve.conf"
AUTH=(-H "Authorization: Bearer $TOKEN")
# same_states MODALITY DIR1 CAT1 DIR2 CAT2: one item's stored states (mdb_dump) agree to one
# fp16 rounding step: the daemon encodes a request's items as one batch, iisan encode the
# catalogue's, and BLAS may round GEMMs of other shapes differently (docs/gpu.md)
same_states() {
  python3 - "$@" <<'PY'
import struct, subprocess, sys
mod, d1, c1, d2, c2 = sys.argv[1:6]
def value(d, cat):
    out = subprocess.run(["mdb_dump", "-s", "state_" + mod, d], capture_output=True, text=True).stdout
    lines = [l.strip() for l in out.split("HEADER=END", 1)[1].splitlines() if l.startswith(" ")]
    return dict(zip(lines[0::2], lines[1::2])).get(struct.pack("<I", int(cat)).hex())
a, b = value(d1, c1), value(d2, c2)
if not a or not b or len(a) != len(b):
    sys.exit(1)
ha, hb = (struct.unpack("<%de" % (len(v) // 4), bytes.fromhex(v)) for v in (a, b))
bad = [(x, y) for x, y in zip(ha, hb) if not abs(x - y) <= 1e-3 + 2e-3 * abs(x)]
sys.exit(0 if not bad else 1)
PY
}

# ---- 1. states sent with the item ----
start || exit 1
req POST /items "$(states_body S1 nested)" "${AUTH[@]}"; status 200 "POST /items with states"
jcheck "d['items'][0]['created'] and d['items'][0]['in_model'] and d['items'][0]['embedded'] and d['items'][0]['states_stored'] == ['text']" "embedded on the spot"
req POST /recommend '{"history":["S1"],"k":31,"exclude_history":false}'
jcheck "'warnings' not in d and len(d['items']) == 31 and 'S1' in [i['item_id'] for i in d['items']]" "the new item is a known history item and is recommended"
req GET /items/S1; jcheck "d['in_model'] and d['states']['text'] and d['title'] == ''" "GET shows it in the model"
req POST /items "$(states_body S1 flat)" "${AUTH[@]}"; status 200 "update with flat states"
jcheck "not d['items'][0]['created'] and d['items'][0]['embedded']" "re-embedded"
req POST /recommend '{"history":["I001"],"k":31,"exclude_history":false}'
jcheck "[i['item_id'] for i in d['items']].count('S1') == 1" "an updated item is returned once"
req POST /items "$(states_body S2 nested $((NS + 1)))" "${AUTH[@]}"; errcode 422 wrong_shape "states of the wrong shape"
req GET /items/S2; status 404 "a refused item is not stored"
req POST /items '{"item_id":"S3","states":{"text":[1,[2]]}}' "${AUTH[@]}"; errcode 400 wrong_type "mixed numbers and rows"
req POST /items '{"item_id":"S3","states":{"audio":[1]}}' "${AUTH[@]}"; errcode 400 unknown_field "unknown modality"
req POST /items '{"item_id":"S3","states":[1,2]}' "${AUTH[@]}"; errcode 400 wrong_type "states not an object"
req POST /items "{\"item_id\":\"S5\",\"image\":\"$(base64 -w0 tests/golden_image/src/rgb.png)\"}" "${AUTH[@]}"
errcode 422 no_image_model "an image without an image_model"
req POST /items '{"item_id":"S5","image":"not base64!"}' "${AUTH[@]}"; errcode 400 invalid_value "an image that is not base64"
req POST /items '{"item_id":"S4","title":"no states, no encoder"}' "${AUTH[@]}"; status 200 "a title alone without an encoder"
jcheck "not d['items'][0]['in_model'] and not d['items'][0]['embedded']" "stored, not embedded"
curl -s "$B/metrics" | grep -q '^iisan_recommend_batches_total [1-9]' && ok || bad "batch metrics"
# durability: the item and its embedding after kill -9
kill -9 "$PID"; wait "$PID" 2>/dev/null; PID=""
start || exit 1
grep -q 'event=model_loaded.* added_items=1 ' "$LOG" && ok || bad "the load embeds the added item: $(grep model_loaded "$LOG")"
req GET /items/S1; jcheck "d['in_model']" "S1 served after kill -9 and a restart"
req POST /recommend '{"history":["S1"],"k":3}'; jcheck "'warnings' not in d and len(d['items']) == 3" "S1 usable after the restart"
stop

# ---- 2. titles encoded by the daemon ----
start --text-model "$MODEL" || exit 1
grep -q 'event=text_model_loaded.*backbone=tiny-bert' "$LOG" && ok || bad "text_model_loaded logged"
req POST /items '[{"item_id":"T1","title":"large glass beaker"},{"item_id":"T2","title":"steel clamp rack"}]' "${AUTH[@]}"
status 200 "POST /items with titles"
jcheck "all(x['encoded'] == ['text'] and x['embedded'] and x['in_model'] for x in d['items'])" "titles encoded and embedded"
T1CAT=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["items"][0]["catalogue_index"])' "$T/body")
req POST /recommend '{"history":["T1","T2"],"k":5}'; jcheck "'warnings' not in d and len(d['items']) == 5" "encoded items as history"
req POST /recommend '{"history":["I002"],"k":40,"exclude_history":false}'
jcheck "{'T1','T2'} <= {i['item_id'] for i in d['items']}" "encoded items recommended"
stop
# during a (slowed) reload: the title is encoded while the load holds the model-load lock, the
# item is stored and embedded once the new model is in, and that model serves it
cp "$T/serve.conf" "$T/serve.conf.orig"
printf 'log_level = "debug"\nmax_k = 20\n' >>"$T/serve.conf"
IISAN_TEST_LOAD_DELAY_MS=2000 start --text-model "$MODEL" || exit 1
sed -i 's/^max_k = 20$/max_k = 21/' "$T/serve.conf"
kill -HUP "$PID"
for _ in $(seq 1 200); do [ "$(grep -c 'event=model_loading' "$LOG")" -ge 2 ] && break; sleep 0.05; done
req POST /items '{"item_id":"T3","title":"small steel flask"}' "${AUTH[@]}"
status 200 "POST /items during a reload"
jcheck "d['items'][0]['encoded'] == ['text'] and d['items'][0]['embedded']" "encoded, and embedded into the new model"
enc=$(grep -n 'event=items_encoded text=1' "$LOG" | head -1 | cut -d: -f1)
loaded=$(grep -n 'event=model_loaded' "$LOG" | sed -n 2p | cut -d: -f1)
posted=$(grep -n 'event=request method=POST path=/items ' "$LOG" | head -1 | cut -d: -f1)
[ -n "$enc" ] && [ -n "$loaded" ] && [ -n "$posted" ] && [ "$enc" -lt "$loaded" ] && [ "$loaded" -lt "$posted" ] &&
  ok || bad "encoded during the load (line $enc), answered after it (load done at $loaded, answer at $posted)"
req GET /items/T3; jcheck "d['in_model']" "the reloaded model serves T3"
req POST /recommend '{"history":["T3"],"k":21}'; jcheck "'warnings' not in d and len(d['items']) == 21" "T3 as history, k = 21 from the new model"
stop
cp "$T/serve.conf.orig" "$T/serve.conf"

# ---- 3. images encoded by the daemon ----
VIT=tests/golden_encoder/tiny-vit
start --image-model "$VIT" || exit 1
grep -q 'event=image_model_loaded.*backbone=tiny-vit' "$LOG" && ok || bad "image_model_loaded logged"
req POST /items "[{\"item_id\":\"P1\",\"title\":\"a photo\",\"image\":\"$(base64 -w0 tests/golden_image/src/photo_420.jpg)\"},{\"item_id\":\"P2\",\"image\":\"$(base64 -w0 tests/golden_image/src/palette.png)\"}]" "${AUTH[@]}"
status 200 "POST /items with images"
jcheck "all(x['encoded'] == ['image'] and x['embedded'] and x['states_stored'] == ['image'] for x in d['items'])" "images encoded and embedded"
P1CAT=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["items"][0]["catalogue_index"])' "$T/body")
req POST /recommend '{"history":["P1","P2"],"k":5}'; jcheck "'warnings' not in d and len(d['items']) == 5" "image items as history"
head -c 300 tests/golden_image/src/photo_420.jpg >"$T/trunc.jpg"
req POST /items "{\"item_id\":\"P3\",\"image\":\"$(base64 -w0 "$T/trunc.jpg")\"}" "${AUTH[@]}"
errcode 422 bad_image "a truncated image"
jcheck "'P3' in d['error']['message']" "the refusal names the item"
req GET /items/P3; status 404 "an item with a bad image is not stored"
stop
# the daemon's image states equal iisan encode --images' for the same file (to fp16 rounding)
mkdir -p "$T/img"; cp tests/golden_image/src/photo_420.jpg "$T/img/P1.jpg"
"$BIN" import --data "$T/f" --items <(printf 'P1\ta photo\n') >/dev/null 2>&1
"$BIN" encode --data "$T/f" --images "$T/img" --image-model "$VIT" --quiet >/dev/null 2>&1
same_states image "$D" "$P1CAT" "$T/f" 1 && ok || bad "served image encoding differs from iisan encode --images"
# the daemon's states equal iisan encode's for the same title (to fp16 rounding)
"$BIN" import --data "$T/e" --items <(printf 'T1\tlarge glass beaker\n') >/dev/null 2>&1
"$BIN" encode --data "$T/e" --model "$MODEL" --quiet
same_states text "$D" "$T1CAT" "$T/e" 1 && ok || bad "served encoding differs from iisan encode"
openapi_check
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
