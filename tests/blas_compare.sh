#!/usr/bin/env bash
# The BLAS choice, measured (docs/benchmarks.md, "Choosing the BLAS"): each candidate library
# timed by tests/blas_compare.c on the model's GEMM shapes, in a separate process, ROUNDS rounds
# (default 3) in the same order, THREADS threads (default 2); prints every run and, last, the
# median per candidate and shape. Candidates that are not installed are skipped with a line:
#   Debian: libopenblas0-pthread (today's), libblis4 (libblis-dev), libdnnl2 (libdnnl-dev);
#   PyPI, in VENV (default build/blas-venv): scipy-openblas32, mkl.
#   python3 -m venv build/blas-venv && build/blas-venv/bin/pip install scipy-openblas32 mkl
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-2}
VENV=${VENV:-build/blas-venv}
mkdir -p build
cc -O2 -std=c11 -D_GNU_SOURCE -o build/blas_compare tests/blas_compare.c -ldl
export OPENBLAS_NUM_THREADS=$THREADS BLIS_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS \
  OMP_NUM_THREADS=$THREADS
lib=/usr/lib/x86_64-linux-gnu
sp=$(ls -d "$VENV"/lib/python3*/site-packages 2>/dev/null | head -1 || true)
cands=(
  "openblas-debian|cblas|$lib/openblas-pthread/libopenblas.so.0|"
  "blis-debian|cblas|$lib/libblis.so.4|"
  "onednn-debian|dnnl|$lib/libdnnl.so.2|"
  "openblas-pypi|cblas|$sp/scipy_openblas32/lib/libscipy_openblas.so|scipy_"
  "mkl-pypi|cblas|$VENV/lib/libmkl_rt.so.2|"
)
[ -e "$VENV/lib/libmkl_rt.so.2" ] || cands[4]="mkl-pypi|cblas|$VENV/lib/libmkl_rt.so.3|"
out=$(mktemp -d /tmp/iisan-blas-compare-XXXXXX)
trap 'rm -rf "$out"' EXIT
for r in $(seq 1 "$ROUNDS"); do
  for c in "${cands[@]}"; do
    IFS='|' read -r name kind path prefix <<<"$c"
    if [ ! -e "$path" ]; then
      [ "$r" = 1 ] && echo "$name: not installed ($path)" >&2
      continue
    fi
    echo "== round $r: $name" >&2
    LD_LIBRARY_PATH="$(dirname "$path")" build/blas_compare "$kind" "$path" $prefix |
      tee "$out/$name.$r" >&2
  done
done
python3 - "$out" <<'PY'
import collections, glob, os, re, statistics, sys
runs = collections.defaultdict(lambda: collections.defaultdict(list))
libs = {}
for f in sorted(glob.glob(os.path.join(sys.argv[1], "*"))):
    name = os.path.basename(f).rsplit(".", 1)[0]
    for line in open(f):
        if line.startswith("library: "):
            libs[name] = line[9:].strip()
            continue
        m = re.match(r"(.*?)\s+([0-9.]+) GFLOP/s", line)
        if m:
            runs[name][m.group(1).strip()].append(float(m.group(2)))
print("median GFLOP/s per shape (runs per candidate: %s)" % {k: len(next(iter(v.values()))) for k, v in runs.items()})
shapes = list(next(iter(runs.values())).keys()) if runs else []
print("| shape | " + " | ".join(runs) + " |")
print("|---|" + "---|" * len(runs))
for s in shapes:
    print(f"| {s} | " + " | ".join(f"{statistics.median(runs[n][s]):.1f}" for n in runs) + " |")
for n in runs:
    print(f"{n}: {libs.get(n, '')}")
PY
