#!/usr/bin/env bash
# Regenerate tests/golden/golden_versa.safetensors (IISAN-Versa) with the independent PyTorch
# reference. Developers only (never CI): the venv and pins of gen_golden.sh (build/golden-venv),
# created by running that script once.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="$ROOT/build/golden-venv"
if [ ! -x "$VENV/bin/python" ]; then
    echo "gen_golden_versa: no $VENV: run tests/golden/gen_golden.sh once to create it" >&2
    exit 1
fi
cd "$ROOT"
exec "$VENV/bin/python" tests/golden/gen_golden_versa.py "$@"
