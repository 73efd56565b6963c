#!/usr/bin/env bash
# make bench-train, IISAN part: tests/bench_train.c (iisan's training at the published
# settings, EPOCHS epochs, default 3) and, in the same run, the spec's PyTorch reference on
# the same work (tests/golden/bench_reference.py: gen_golden.py's model, fp32, the same
# sequences and shapes, the same THREADS, default every core; REF_BATCHES x REF_SAMPLES
# batches timed, default 8 x 3, scaled to the epoch; one sample before iisan's epochs, the
# others after), then the ratio of the medians. The
# reference needs the venv tests/golden/gen_golden.sh builds (build/golden-venv); without it
# iisan's figures still come and the ratio says "not measured". Last line: one JSON object.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH="${1:-$ROOT/build/bench_train}"
USERS="${USERS:-$ROOT/../shared/data/amazon/scientific/users.tsv}"
EPOCHS="${EPOCHS:-3}"
THREADS="${THREADS:-$(nproc)}"
PY="$ROOT/build/golden-venv/bin/python"
SAMPLES="${REF_SAMPLES:-3}"
reference() { # N samples of the reference: its JSON line, or nothing without the venv
  [ -n "$have_torch" ] && [ "$1" -gt 0 ] || return 0
  "$PY" "$ROOT/tests/golden/bench_reference.py" "$USERS" --threads "$THREADS" \
    --batches "${REF_BATCHES:-8}" --samples "$1" | tail -n 1
}
have_torch=""
if [ -x "$PY" ] && "$PY" -c 'import torch' 2>/dev/null; then
  have_torch=1
else
  echo "PyTorch reference: not measured: no torch venv at build/golden-venv (run" \
    "tests/golden/gen_golden.sh once to create it: pinned torch, about 1 GB)" >&2
fi
# generic BLAS kernels: refuse before any figure (bench_train itself refuses too)
IISAN="$(dirname "$BENCH")/iisan"
if [ -x "$IISAN" ]; then OPENBLAS_NUM_THREADS=$THREADS "$IISAN" blas --check >/dev/null; fi
# interleaved, so that a change in the machine's load falls on both: one reference sample
# before iisan's epochs, the others after
ref1=$(reference 1)
ours=$(OPENBLAS_NUM_THREADS=$THREADS "$BENCH" "$USERS" "$EPOCHS" | tee /dev/stderr | tail -n 1)
ref2=$(reference $((SAMPLES - 1)))
python3 - "$ours" "$ref1" "$ref2" <<'PY'
import json, statistics, sys
ours = json.loads(sys.argv[1])
parts = [json.loads(a) for a in sys.argv[2:] if a]
ref = None
if parts:
    ref = dict(parts[0])
    ref["samples"] = [x for p in parts for x in p["samples"]]
    ref["timed_batches"] = sum(p["timed_batches"] for p in parts)
    ref["seconds_per_epoch"] = round(statistics.median(ref["samples"]), 3)
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
