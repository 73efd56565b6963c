#!/usr/bin/env bash
# The main job (make run): IISAN on the bundled Amazon Scientific data, end to end.
#   1. import the catalogue and the interactions into $DATA (skipped when the files did not
#      change since the last run)
#   2. install the text backbone all-MiniLM-L6-v2 (once; deploy/install-minilm.sh)
#   3. encode every title's per-layer hidden states into the store (once: a later run finds
#      them there and says so)
#   4. score the popularity baseline, then train IISAN by the spec's protocol: all three
#      towers, the image modality zeros (this data ships no images), early stopping on
#      validation HR@10 (MODEL=sasrec-id trains the ID baseline instead, no states needed)
#   5. score the trained version on the test split under both evaluation rules
#   6. serve it on http://127.0.0.1:$PORT until Ctrl-C
# A second run with nothing changed reuses the trained version and goes straight to serving.
#
# Environment: MODEL (iisan, the default, or sasrec-id), IISAN_DATA (store directory),
# IISAN_SRC (items.tsv and users.tsv), IISAN_MINILM (a BERT-family model directory to encode
# with instead of installing all-MiniLM-L6-v2), EPOCHS (most epochs, 100), MAX_STEPS (stop
# training after this many optimiser steps; tests), THREADS (cores for encode / train / eval;
# 0, the default, takes every core), PORT (8080), RETRAIN=1 (train even when a version from
# an identical earlier run exists), IISAN_NO_SERVE=1 (stop after the evaluation).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-iisan}
DATA=${IISAN_DATA:-data/scientific}
SRC=${IISAN_SRC:-../shared/data/amazon/scientific}
EPOCHS=${EPOCHS:-100}
MAX_STEPS=${MAX_STEPS:-0}
THREADS=${THREADS:-0}
PORT=${PORT:-8080}
BIN=${IISAN_BIN:-build/iisan}
case "$MODEL" in
  iisan|sasrec-id) ;;
  *) echo "run_main: MODEL must be iisan or sasrec-id, not '$MODEL'" >&2; exit 2 ;;
esac
step() { printf '\n== %s\n' "$*" >&2; }
json_get() { python3 -c 'import json,sys; d=json.loads(sys.stdin.read().strip().splitlines()[-1]); print(eval("d"+sys.argv[1]))' "$1"; }
t_start=$SECONDS
mkdir -p "$DATA"

step "1/6 data: $SRC into $DATA"
src_sum=$(cat "$SRC/items.tsv" "$SRC/users.tsv" | sha256sum | cut -c1-16)
if [ "$(cat "$DATA/main-import.stamp" 2>/dev/null)" = "$src_sum" ]; then
  echo "already imported (the files are unchanged since the last run)" >&2
else
  "$BIN" import --data "$DATA" --items "$SRC/items.tsv" --users "$SRC/users.tsv"
  echo "$src_sum" > "$DATA/main-import.stamp"
fi
"$BIN" info --data "$DATA" >&2

states=""
if [ "$MODEL" = iisan ]; then
  step "2/6 text backbone all-MiniLM-L6-v2"
  if [ -n "${IISAN_MINILM:-}" ]; then
    mdir=$IISAN_MINILM
  else
    mdir=$(deploy/install-minilm.sh)
  fi
  echo "backbone: $mdir" >&2
  step "3/6 hidden states of every title (once; a later run reuses them)"
  "$BIN" encode --data "$DATA" --model "$mdir" --threads "$THREADS"
  states=$("$BIN" info --data "$DATA" --json | json_get '["states"]')
else
  step "2/6, 3/6 skipped: SASRec-ID learns an embedding per item id, no backbone states"
fi

step "4/6 train $MODEL by the spec's protocol"
"$BIN" eval --data "$DATA" --model popularity --threads "$THREADS"
want="model=$MODEL epochs=$EPOCHS max_steps=$MAX_STEPS data=$src_sum states=$states"
stamp="$DATA/main-$MODEL.stamp"
latest=$("$BIN" info --data "$DATA" --json | json_get '["checkpoints"][-1]["version"] if d["checkpoints"] else 0')
version=""
if [ -z "${RETRAIN:-}" ] && [ -f "$stamp" ] && [ "$(sed -n 2p "$stamp")" = "$want" ] &&
   [ "$(sed -n 1p "$stamp")" = "$latest" ]; then
  version=$latest
  echo "reusing version $version: trained by an earlier run on the same data, states and" \
       "settings (RETRAIN=1 trains again)" >&2
else
  out=$("$BIN" train --data "$DATA" --model "$MODEL" --epochs "$EPOCHS" \
        --max-steps "$MAX_STEPS" --threads "$THREADS" --json)
  version=$(printf '%s\n' "$out" | json_get '["version"]')
  printf '%s\n%s\n' "$version" "$want" > "$stamp"
fi

step "5/6 version $version on the test split"
if [ "$(sed -n 3p "$stamp" 2>/dev/null)" != "" ]; then
  sed -n '3,$p' "$stamp" >&2   # the figures the earlier run measured
else
  ev2=$("$BIN" eval --data "$DATA" --version "$version" --threads "$THREADS" 2>&1 >/dev/null)
  ev1=$("$BIN" eval --data "$DATA" --version "$version" --threads "$THREADS" \
        --eval-exclude history-but-target 2>&1 >/dev/null)
  printf '%s\n%s\n' "$ev2" "$ev1" | tee -a "$stamp" >&2
fi
echo "main job ready in $((SECONDS - t_start)) s" >&2
[ -n "${IISAN_NO_SERVE:-}" ] && exit 0

step "6/6 serving $MODEL version $version"
cat >&2 <<TXT
Serving on http://127.0.0.1:$PORT (Ctrl-C stops). Try:
  curl -s -X POST http://127.0.0.1:$PORT/recommend -H 'Content-Type: application/json' \\
    -d '{"history": ["B0098MLBAO", "B00E8JOCOE", "B00S730YWG"], "k": 5}'

TXT
exec "$BIN" serve --data "$DATA" --port "$PORT"
