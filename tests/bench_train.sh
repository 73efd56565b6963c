#!/usr/bin/env bash
# make bench-train, IISAN part: tests/bench_train.c (iisan's training at the published
# settings, EPOCHS epochs, default 3) and, in the same run, the spec's PyTorch reference on
# the same work (tests/golden/bench_reference.py: gen_golden.py's model, fp32, the same
# sequences and shapes, the same THREADS, default every core; REF_BATCHES x REF_SAMPLES
# batches timed, default 8 x 3, scaled to the epoch), then the ratio of the medians. The
# reference needs the venv tests/golden/gen_golden.sh builds (build/golden-venv); without it
# iisan's figures still come and the ratio says "not measured". Last line: one JSON object.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH="${1:-$ROOT/build/bench_train}"
USERS="${USERS:-$ROOT/../shared/data/amazon/scientific/users.tsv}"
EPOCHS="${EPOCHS:-3}"
THREADS="${THREADS:-$(nproc)}"
PY="$ROOT/build/golden-venv/bin/python"
ours=$(OPENBLAS_NUM_THREADS=$THREADS "$BENCH" "$USERS" "$EPOCHS" | tee /dev/stderr | tail -n 1)
ref=""
if [ -x "$PY" ] && "$PY" -c 'import torch' 2>/dev/null; then
  ref=$("$PY" "$ROOT/tests/golden/bench_reference.py" "$USERS" --threads "$THREADS" \
    --batches "${REF_BATCHES:-8}" --samples "${REF_SAMPLES:-3}" | tail -n 1)
else
  echo "PyTorch reference: not measured: no torch venv at build/golden-venv (run" \
    "tests/golden/gen_golden.sh once to create it: pinned torch, about 1 GB)" >&2
fi
python3 - "$ours" "$ref" <<'PY'
import json, sys
ours = json.loads(sys.argv[1])
ref = json.loads(sys.argv[2]) if sys.argv[2] else None
if ref:
    ratio = ref["seconds_per_epoch"] / ours["seconds_per_epoch"]
    print(f"ratio PyTorch reference / iisan: {ratio:.1f}x ({ref['seconds_per_epoch']:.1f} s/epoch, "
          f"timed on {ref['timed_batches']} of {ref['batches_per_epoch']} batches and scaled, "
          f"against {ours['seconds_per_epoch']:.2f} s/epoch; {ref['threads']} threads each)")
else:
    ratio = None
    print("ratio PyTorch reference / iisan: not measured")
ours["reference"] = ref
ours["reference_ratio"] = round(ratio, 2) if ratio else None
print(json.dumps(ours))
PY
