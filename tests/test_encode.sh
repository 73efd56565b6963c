#!/usr/bin/env bash
# `iisan encode` end to end with the tiny committed BERT (tests/golden_encoder/tiny-bert):
# usage errors, encoding a catalogue in batches, the summary and --json line, resuming
# (a second run encodes nothing; new items alone later), a store of another backbone
# refused, and IISAN training one epoch on the encoded text states.
# Ends with "N passed, N failed".
set -u
cd "$(dirname "$0")/.."
BIN=${IISAN_BIN:-build/iisan}
MODEL=tests/golden_encoder/tiny-bert
T=$(mktemp -d /tmp/iisan-encode-XXXXXX)
trap 'rm -rf "$T"' EXIT
source tests/cli_lib.sh

# 30 titled items (one empty title), 40 users
python3 - "$T" <<'PY'
import random, sys
d = sys.argv[1]; random.seed(5)
words = ["microscope", "slide", "lab", "beaker", "glass", "Café", "naïve", "3.5mm", "&amp;",
         "digital", "caliper", "stepper", "motor", "PLA", "filament", "显微镜"]
with open(f"{d}/items.tsv", "w") as f:
    for i in range(30):
        t = "" if i == 7 else " ".join(random.choice(words) for _ in range(random.randint(1, 20)))
        f.write(f"I{i:03d}\t{t}\n")
with open(f"{d}/more.tsv", "w") as f:
    for i in range(30, 35): f.write(f"I{i:03d}\tnew item {i} lab glass\n")
with open(f"{d}/users.tsv", "w") as f:
    for u in range(40):
        f.write(f"U{u:03d}\t" + " ".join(f"I{random.randrange(30):03d}" for _ in range(random.randint(5, 9))) + "\n")
PY

expect 0 "encode --help" -- "$BIN" encode --help
has "$T/out" "--model" "help names --model"
expect 2 "encode without --model" -- "$BIN" encode --data "$T/d"
expect 2 "bad --batch" -- "$BIN" encode --data "$T/d" --model "$MODEL" --batch 0
has "$T/err" "batch" "bad --batch names the option"
expect 1 "encode a missing data directory" -- "$BIN" encode --data "$T/none" --model "$MODEL"
has "$T/err" "import" "missing data directory says to import"

expect 0 "import" -- "$BIN" import --data "$T/d" --items "$T/items.tsv" --users "$T/users.tsv" --quiet
expect 1 "encode with a missing model" -- "$BIN" encode --data "$T/d" --model "$T/nomodel"
has "$T/err" "nomodel/config.json" "missing model names config.json"

expect 0 "encode" -- "$BIN" encode --data "$T/d" --model "$MODEL" --batch 4 --threads 1 --json
eq "$(json_field encoded)" 29 "items encoded (one title is empty)"
eq "$(json_field backbone)" tiny-bert "backbone named after the model directory"
eq "$(json_field nstates)" 3 "nstates"
eq "$(json_field width)" 32 "width"
has "$T/err" "items/s" "progress shows items/s"
has "$T/err" "encoded 29 items" "summary line"

expect 0 "encode again: nothing to do" -- "$BIN" encode --data "$T/d" --model "$MODEL" --json
eq "$(json_field encoded)" 0 "second run encodes nothing"
has "$T/err" "nothing to do" "second run says so"

expect 0 "import more items" -- "$BIN" import --data "$T/d" --items "$T/more.tsv" --quiet
expect 0 "encode the new items" -- "$BIN" encode --data "$T/d" --model "$MODEL/" --json --quiet
eq "$(json_field encoded)" 5 "only the new items are encoded"
eq "$(json_field with_states)" 34 "all titled items have states"

expect 0 "second store" -- "$BIN" import --data "$T/d2" --items "$T/items.tsv" --quiet
expect 0 "encode under a given name" -- "$BIN" encode --data "$T/d2" --model "$MODEL" --backbone my-bert --quiet --json
eq "$(json_field backbone)" my-bert "--backbone names the states"
expect 0 "import more items into the second store" -- "$BIN" import --data "$T/d2" --items "$T/more.tsv" --quiet
expect 1 "encode with a different backbone name" -- "$BIN" encode --data "$T/d2" --model "$MODEL"
has "$T/err" "my-bert" "refusal names the stored backbone"
has "$T/err" "tiny-bert" "refusal names the new backbone"

expect 0 "info" -- "$BIN" info --data "$T/d" --json
has "$T/out" '"backbone":"tiny-bert"' "info shows the text backbone"
expect 0 "train IISAN (text tower) on encoded states" -- "$BIN" train --data "$T/d" --towers text --schedule all --epochs 1 --threads 1 --no-save --json
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
