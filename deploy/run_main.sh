#!/usr/bin/env bash
# The main job on the bundled data (make run): import the Scientific catalogue
# and interactions into data/scientific, show what the store holds, then the
# two baselines that need no hidden states: popularity and SASRec-ID trained
# by the spec's protocol, both scored on the test split.
# Environment: IISAN_DATA (store dir), IISAN_SRC (data files), EPOCHS.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${IISAN_DATA:-data/scientific}
SRC=${IISAN_SRC:-../shared/data/amazon/scientific}
EPOCHS=${EPOCHS:-100}
mkdir -p "$DATA"
build/iisan import --data "$DATA" --items "$SRC/items.tsv" --users "$SRC/users.tsv"
build/iisan info --data "$DATA"
build/iisan eval --data "$DATA" --model popularity
build/iisan train --data "$DATA" --model sasrec-id --epochs "$EPOCHS"
build/iisan eval --data "$DATA"
