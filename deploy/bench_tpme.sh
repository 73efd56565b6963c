#!/usr/bin/env bash
# make bench-tpme: the spec's TPME table (Efficiency: TPME). Trains IISAN (three towers),
# IISAN text-only and SASRec-ID on the same work -- the Scientific users of the main job's
# store, every title's all-MiniLM-L6-v2 states -- for EPOCHS epochs each (3 by default: the
# figures are per epoch, so a few epochs measure them; validation time is not counted), then
# prints each method's seconds per training epoch, trainable parameters and peak memory (RSS on
# the CPU; the device's peak with DEVICE=cuda) beside the min-max normalised figures and
#   TPME = 0.45 t_norm + 0.10 p_norm + 0.45 m_norm   (lower is better)
# and one JSON line with everything last. Nothing is stored (--no-save).
# Environment: IISAN_DATA (a store with Scientific and its MiniLM text states; made like the
# main job's when missing), IISAN_SRC, IISAN_MINILM, EPOCHS (3), THREADS (0 = every core),
# DEVICE (cpu or cuda; default cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${IISAN_DATA:-data/scientific}
SRC=${IISAN_SRC:-../shared/data/amazon/scientific}
EPOCHS=${EPOCHS:-3}
THREADS=${THREADS:-0}
DEVICE=${DEVICE:-cpu}
BIN=${IISAN_BIN:-build/iisan}
# the BLAS's kernels and sgemm rate; refuses (exit 3) on generic kernels (kernels/blas_info.h)
"$BIN" blas --check --threads "$THREADS" >&2
T=$(mktemp -d /tmp/iisan-tpme-XXXXXX)
trap 'rm -rf "$T"' EXIT

# the work: the main job's store (import and encode only when missing; both say so)
mkdir -p "$DATA"
if ! "$BIN" info --data "$DATA" --json 2>/dev/null | tail -1 |
     python3 -c 'import json,sys; d=json.load(sys.stdin); sys.exit(0 if d["dataset"]["users"] else 1)'; then
  "$BIN" import --data "$DATA" --items "$SRC/items.tsv" --users "$SRC/users.tsv"
fi
mdir=${IISAN_MINILM:-$(deploy/install-minilm.sh)}
"$BIN" encode --data "$DATA" --model "$mdir" --threads "$THREADS"

run() { # name, then iisan train options
  local name=$1; shift
  echo "== $name: $EPOCHS epochs" >&2
  "$BIN" train --data "$DATA" --epochs "$EPOCHS" --patience 0 --no-save --json \
    --threads "$THREADS" --device "$DEVICE" "$@" | tail -1 > "$T/$name.json"
}
run iisan --model iisan
run iisan-text --model iisan --towers text
run sasrec-id --model sasrec-id

python3 - "$T" "$EPOCHS" "$DEVICE" <<'PY'
import json, os, sys
d, epochs, device = sys.argv[1], int(sys.argv[2]), sys.argv[3]
names = [("iisan", "IISAN (image, text, inter towers)"), ("iisan-text", "IISAN text-only"),
         ("sasrec-id", "SASRec-ID")]
r = {n: json.load(open(os.path.join(d, n + ".json"))) for n, _ in names}
mem_key = "peak_device_mib" if device == "cuda" else "peak_rss_mib"
raw = {n: (r[n]["seconds_per_epoch"], r[n]["params"], r[n][mem_key]) for n, _ in names}
def norm(i):
    xs = [raw[n][i] for n, _ in names]
    lo, hi = min(xs), max(xs)
    return {n: (raw[n][i] - lo) / (hi - lo) if hi > lo else 0.0 for n, _ in names}
tn, pn, mn = norm(0), norm(1), norm(2)
tpme = {n: 0.45 * tn[n] + 0.10 * pn[n] + 0.45 * mn[n] for n, _ in names}
mem = "peak device MiB" if device == "cuda" else "peak RSS MiB"
print(f"TPME on {device}, Scientific ({r['iisan'].get('steps', 0) // max(epochs, 1)} batches per epoch), "
      f"{epochs} epochs per method; lower is better")
print(f"| method | s / epoch | trainable params | {mem} | t_norm | p_norm | m_norm | TPME |")
print("|---|---|---|---|---|---|---|---|")
for n, label in names:
    t, p, m = raw[n]
    print(f"| {label} | {t:.2f} | {p:,} | {m:,.0f} | {tn[n]:.3f} | {pn[n]:.3f} | {mn[n]:.3f} | "
          f"**{tpme[n]:.3f}** |")
print(json.dumps({"device": device, "epochs": epochs,
                  "methods": {n: {"seconds_per_epoch": raw[n][0], "params": raw[n][1],
                                  "peak_mib": raw[n][2], "tpme": round(tpme[n], 4)}
                              for n, _ in names}}))
PY
