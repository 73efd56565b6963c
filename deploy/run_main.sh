#!/usr/bin/env bash
# The main job on the bundled data (make run): import the Scientific catalogue
# and interactions into data/scientific, show what the store holds, score the
# popularity baseline, train SASRec-ID by the spec's protocol (the baseline
# that needs no backbone states) and score it on the test split, then serve
# the trained model on http://127.0.0.1:8080 until Ctrl-C (README shows a curl).
# Environment: IISAN_DATA (store dir), IISAN_SRC (data files), EPOCHS, PORT,
# IISAN_NO_SERVE=1 to stop after the evaluation.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${IISAN_DATA:-data/scientific}
SRC=${IISAN_SRC:-../shared/data/amazon/scientific}
EPOCHS=${EPOCHS:-100}
PORT=${PORT:-8080}
mkdir -p "$DATA"
build/iisan import --data "$DATA" --items "$SRC/items.tsv" --users "$SRC/users.tsv"
build/iisan info --data "$DATA"
build/iisan eval --data "$DATA" --model popularity
build/iisan train --data "$DATA" --model sasrec-id --epochs "$EPOCHS"
build/iisan eval --data "$DATA"
[ -n "${IISAN_NO_SERVE:-}" ] && exit 0
cat >&2 <<TXT

Serving on http://127.0.0.1:$PORT (Ctrl-C stops). Try:
  curl -s -X POST http://127.0.0.1:$PORT/recommend -H 'Content-Type: application/json' \\
    -d '{"history": ["B0098MLBAO", "B00E8JOCOE", "B00S730YWG"], "k": 5}'

TXT
exec build/iisan serve --data "$DATA" --port "$PORT"
