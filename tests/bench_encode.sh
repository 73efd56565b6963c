#!/usr/bin/env bash
# make bench-encode: all-MiniLM-L6-v2 on the first N Scientific titles (BENCH_ITEMS, default
# 2000), iisan's encoder (`iisan encode`, CPU, BENCH_THREADS BLAS threads, default 2) against
# Hugging Face transformers (BertModel in PyTorch, fp32, the same threads, the same batches
# of 32 titles in order of length, tokenization not timed). Developers only: needs
# tests/golden_encoder/gen.sh's venv (torch, transformers). Last line: one JSON object.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${1:-$ROOT/build/iisan}"
N="${BENCH_ITEMS:-2000}"
THREADS="${BENCH_THREADS:-2}"
PY="$ROOT/build/golden-venv/bin/python"
[ -x "$PY" ] && "$PY" -c 'import transformers' 2>/dev/null ||
  { echo "bench-encode: run tests/golden_encoder/gen.sh once (torch + transformers venv)" >&2; exit 1; }
# the BLAS's kernels and sgemm rate; refuses (exit 3) on generic kernels (kernels/blas_info.h)
"$BIN" blas --check --threads "$THREADS" >&2
MODEL="$("$ROOT/deploy/install-minilm.sh")"
T=$(mktemp -d /tmp/iisan-bench-encode-XXXXXX)
trap 'rm -rf "$T"' EXIT
head -n "$N" "$ROOT/../shared/data/amazon/scientific/items.tsv" > "$T/items.tsv"
"$BIN" import --data "$T/d" --items "$T/items.tsv" --quiet
ours=$(OPENBLAS_NUM_THREADS=$THREADS "$BIN" encode --data "$T/d" --model "$MODEL" --threads "$THREADS" --quiet --json | tail -n 1)
echo "iisan encode: $ours" >&2
"$PY" - "$T/items.tsv" "$MODEL" "$THREADS" "$ours" <<'PY'
import json, sys, time
import torch
from transformers import BertModel, BertTokenizer
items, model_dir, threads, ours = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
torch.set_num_threads(threads)
titles = [l.rstrip("\r").split("\t", 1)[1] for l in open(items, encoding="utf-8").read().split("\n") if l.strip()]
titles = [t for t in titles if t]
tok = BertTokenizer(f"{model_dir}/vocab.txt", do_lower_case=True)
enc = [tok(t, max_length=30, truncation=True)["input_ids"] for t in titles]
order = sorted(range(len(enc)), key=lambda i: len(enc[i]))
model = BertModel.from_pretrained(model_dir).eval()
batches = []
for s in range(0, len(order), 32):
    b = [enc[i] for i in order[s:s + 32]]
    L = max(map(len, b))
    ids = torch.tensor([x + [0] * (L - len(x)) for x in b])
    mask = torch.tensor([[1] * len(x) + [0] * (L - len(x)) for x in b])
    batches.append((ids, mask))
with torch.inference_mode():
    model(input_ids=batches[0][0], attention_mask=batches[0][1])  # warm-up
    t0 = time.perf_counter()
    for ids, mask in batches:
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        cls = torch.stack(out.hidden_states, 1)[:, :, 0, :].half()
    dt = time.perf_counter() - t0
hf = len(titles) / dt
print(f"Hugging Face BertModel ({torch.__version__}, {threads} threads): {len(titles)} titles in {dt:.1f} s, {hf:.1f} items/s", file=sys.stderr)
print(f"iisan: {ours['items_per_s']:.1f} items/s; ratio iisan / HF = {ours['items_per_s'] / hf:.2f}", file=sys.stderr)
print(json.dumps({"items": len(titles), "threads": threads, "iisan_items_per_s": round(ours["items_per_s"], 2),
                  "hf_items_per_s": round(hf, 2), "ratio": round(ours["items_per_s"] / hf, 3),
                  "torch": torch.__version__}))
PY
