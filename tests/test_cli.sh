#!/usr/bin/env bash
# The command-line tool end to end, as a user runs it: imports (good and bad
# files, exit codes, messages naming file:line), info, training and evaluation
# of popularity / SASRec-ID / IISAN with --json, checkpoint export and import
# round trip. Ends with "N passed, N failed".
set -u
cd "$(dirname "$0")/.."
BIN=${IISAN_BIN:-build/iisan}
T=$(mktemp -d /tmp/iisan-cli-XXXXXX)
trap 'rm -rf "$T"' EXIT
source tests/cli_lib.sh

# a small catalogue: 40 items, 60 users of 5..9 items each
python3 - "$T" <<'PY'
import random, sys
d = sys.argv[1]; random.seed(3)
with open(f"{d}/items.tsv", "w") as f:
    for i in range(40): f.write(f"I{i:03d}\tItem number {i} &amp; friends\n")
with open(f"{d}/users.tsv", "w") as f:
    for u in range(60):
        n = random.randint(5, 9)
        f.write(f"U{u:03d}\t" + " ".join(f"I{random.randrange(40):03d}" for _ in range(n)) + "\n")
PY

expect 2 "no command" -- "$BIN"
expect 0 "--help" -- "$BIN" --help
for c in import info train eval export import-ckpt; do expect 0 "$c --help" -- "$BIN" "$c" --help; done
expect 2 "unknown command" -- "$BIN" frobnicate
expect 2 "train without --data" -- "$BIN" train
expect 2 "bad --epochs" -- "$BIN" train --data "$T/d" --epochs x
has "$T/err" "epochs" "bad --epochs names the option"
expect 1 "info on a missing store" -- "$BIN" info --data "$T/none"

expect 0 "import items and users" -- "$BIN" import --data "$T/d" --items "$T/items.tsv" --users "$T/users.tsv"
expect 0 "info --json" -- "$BIN" info --data "$T/d" --json
users=$(json_field users 2>/dev/null || true)
[ -n "$users" ] && ok || bad "info --json has no users field"

# bad files: named file and line, non-zero exit, store unchanged
printf 'I900\tfine\nI901 no tab here\n' >"$T/bad_items.tsv"
expect 1 "items without a tab" -- "$BIN" import --data "$T/d" --items "$T/bad_items.tsv"
has "$T/err" "bad_items.tsv:2" "missing column names file:line"
printf 'U900\tI001 I002 NOPE I003 I004\n' >"$T/bad_users.tsv"
expect 1 "unknown item id" -- "$BIN" import --data "$T/d" --users "$T/bad_users.tsv"
has "$T/err" "bad_users.tsv:1" "unknown item names file:line"
has "$T/err" "NOPE" "unknown item names the id"
printf 'I950\t\xff\xfe bad utf8\n' >"$T/utf8.tsv"
expect 1 "invalid UTF-8" -- "$BIN" import --data "$T/d" --items "$T/utf8.tsv"
has "$T/err" "utf8.tsv:1" "invalid UTF-8 names file:line"
expect 1 "missing file" -- "$BIN" import --data "$T/d" --items "$T/nope.tsv"
expect 0 "info after failed imports" -- "$BIN" info --data "$T/d" --json
[ "$(json_field items)" = "40" ] && [ "$(json_field users)" = "60" ] && ok || bad "failed imports changed the catalogue: $(tail -1 "$T/out")"

# baselines
expect 0 "popularity eval" -- "$BIN" eval --data "$T/d" --model popularity --json
hr=$(json_field hr10); python3 -c "import sys; sys.exit(0 if 0 <= float('$hr') <= 1 else 1)" && ok || bad "popularity hr10 $hr"
expect 0 "train sasrec-id" -- "$BIN" train --data "$T/d" --model sasrec-id --epochs 3 --d 16 --json
[ "$(json_field version)" = "1" ] && ok || bad "sasrec-id saved as version 1"
expect 0 "eval sasrec-id" -- "$BIN" eval --data "$T/d" --json
hr1=$(json_field hr10)
expect 0 "export" -- "$BIN" export --data "$T/d" --out "$T/m.safetensors"
expect 0 "import-ckpt" -- "$BIN" import-ckpt --data "$T/d" --in "$T/m.safetensors"
expect 0 "eval imported version 2" -- "$BIN" eval --data "$T/d" --version 2 --json
[ "$(json_field hr10)" = "$hr1" ] && ok || bad "round-tripped checkpoint scores $(json_field hr10), not $hr1"
expect 1 "eval a missing version" -- "$BIN" eval --data "$T/d" --version 9
printf 'garbage' >"$T/junk.safetensors"
expect 1 "import-ckpt of garbage" -- "$BIN" import-ckpt --data "$T/d" --in "$T/junk.safetensors"

# IISAN: no states yet is a clear error; then import states and train
expect 1 "iisan without states" -- "$BIN" train --data "$T/d" --model iisan --epochs 1
has "$T/err" "hidden states" "iisan without states says why"
python3 - "$T" <<'PY'
import json, struct, random, sys
d = sys.argv[1]; random.seed(5)
N, S, D = 40, 5, 16
ids = "\n".join(f"I{i:03d}" for i in range(N)).encode()
def f16(x): return struct.pack("<e", x)
text = b"".join(f16(random.gauss(0, 1)) for _ in range(N * S * D))
hdr = {"text": {"dtype": "F16", "shape": [N, S, D], "data_offsets": [0, len(text)]},
       "item_ids": {"dtype": "U8", "shape": [len(ids)], "data_offsets": [len(text), len(text) + len(ids)]},
       "__metadata__": {"text_backbone": "test-random-16"}}
h = json.dumps(hdr).encode(); h += b" " * (-len(h) % 8)
open(f"{d}/states.safetensors", "wb").write(struct.pack("<Q", len(h)) + h + text + ids)
PY
expect 0 "import states" -- "$BIN" import --data "$T/d" --states "$T/states.safetensors"
expect 0 "train iisan" -- "$BIN" train --data "$T/d" --model iisan --epochs 2 --r 4 --d 8 --schedule 0,2,4 --json
first=$(json_field first_loss); last=$(json_field last_loss)
python3 -c "import sys; sys.exit(0 if float('$last') < float('$first') else 1)" && ok || bad "iisan loss did not fall: $first -> $last"
expect 0 "eval iisan" -- "$BIN" eval --data "$T/d" --json
[ "$(json_field model)" = "iisan" ] && ok || bad "latest version is not iisan"
expect 0 "train text-only, remove-first" -- "$BIN" train --data "$T/d" --towers text --schedule remove-first --epochs 1 --r 4 --d 8 --no-save

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
