#!/usr/bin/env bash
# Regenerate tests/golden/golden.safetensors with the independent PyTorch reference.
# Developers only (never CI): creates or reuses a venv under build/golden-venv with pinned
# torch (PyPI's default wheel; large), safetensors and numpy, then runs gen_golden.py.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="$ROOT/build/golden-venv"
PY="${PYTHON:-python3}"
PINS=(torch==2.9.1 safetensors==0.7.0 numpy==2.3.5 packaging==25.0)
STAMP="$VENV/.golden-pins"
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "${PINS[*]}" ]; then
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet "${PINS[@]}"
    echo "${PINS[*]}" > "$STAMP"
fi
cd "$ROOT"
exec "$VENV/bin/python" tests/golden/gen_golden.py "$@"
