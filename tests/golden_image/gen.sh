#!/usr/bin/env bash
# Regenerate the image fixtures (src/, image.safetensors) with Pillow and Hugging Face
# transformers' ViTImageProcessor. Developers only (never CI): reuses or creates
# build/golden-venv (tests/golden_encoder/gen.sh's pinned torch and transformers) and adds
# a pinned Pillow. Needs tests/golden_encoder/tiny-vit (committed).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="$ROOT/build/golden-venv"
PY="${PYTHON:-python3}"
PINS=(torch==2.9.1 safetensors==0.7.0 numpy==2.3.5 packaging==25.0 transformers==4.57.6)
EXTRA=(pillow==12.0.0)
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.golden-image-pins"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "${PINS[*]} ${EXTRA[*]}" ]; then
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet "${PINS[@]}" "${EXTRA[@]}"
    echo "${PINS[*]} ${EXTRA[*]}" > "$STAMP"
fi
cd "$ROOT"
exec "$VENV/bin/python" tests/golden_image/gen.py "$@"
