#!/usr/bin/env bash
# Regenerate the text-encoder fixtures (tiny-bert/, tiny.safetensors, minilm.safetensors)
# with Hugging Face transformers. Developers only (never CI): reuses or creates
# build/golden-venv (tests/golden/gen_golden.sh's pinned torch, safetensors, numpy) and adds
# a pinned transformers; installs all-MiniLM-L6-v2 with deploy/install-minilm.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="$ROOT/build/golden-venv"
PY="${PYTHON:-python3}"
PINS=(torch==2.9.1 safetensors==0.7.0 numpy==2.3.5 packaging==25.0)
EXTRA=(transformers==4.57.6)
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.golden-encoder-pins"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "${PINS[*]} ${EXTRA[*]}" ]; then
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet "${PINS[@]}" "${EXTRA[@]}"
    echo "${PINS[*]} ${EXTRA[*]}" > "$STAMP"
fi
MINILM="$("$ROOT/deploy/install-minilm.sh")"
cd "$ROOT"
exec "$VENV/bin/python" tests/golden_encoder/gen.py --minilm "$MINILM" "$@"
