#!/usr/bin/env bash
# The daemon's precision (precision / IISAN_PRECISION / --precision): an unknown value is a
# configuration error (exit 2); bf16 on a CPU without AVX512-BF16 (IISAN_CPU_NO_BF16 makes this
# one answer as such) stops the start-up with event=precision_failed naming the reason; where
# the CPU has it, the daemon starts in bf16 and answers. Ends with "N passed, N failed".
set -u
cd "$(dirname "$0")/.."
source tests/serve_lib.sh
printf 'I1\tone\nI2\ttwo\n' >"$T/items.tsv"
D="$T/d"
check "import" -- "$BIN" import --data "$D" --items "$T/items.tsv" 2>/dev/null
printf 'port = 0\nthreads = 2\n' >"$T/serve.conf"
IISAN_PRECISION=fp16 "$BIN" serve --data "$D" --config "$T/serve.conf" 2>"$T/err"; rc=$?
[ "$rc" = 2 ] && grep -q "precision wants fp32 or bf16, got 'fp16'" "$T/err" && ok ||
  bad "IISAN_PRECISION=fp16: exit $rc, $(cat "$T/err")"
IISAN_CPU_NO_BF16=1 timeout 30 "$BIN" serve --data "$D" --config "$T/serve.conf" --precision bf16 2>"$T/err"; rc=$?
[ "$rc" != 0 ] && [ "$rc" != 124 ] && grep -q 'event=precision_failed.*AVX512-BF16' "$T/err" && ok ||
  bad "bf16 without AVX512-BF16: exit $rc, $(cat "$T/err")"
if grep -q avx512_bf16 /proc/cpuinfo; then
  start --precision bf16 || exit 1
  req GET /healthz; status 200 "healthz in bf16"
  stop
  [ "$STOP_RC" = 0 ] && ok || bad "stop: exit $STOP_RC"
else
  echo "skipped: no AVX512-BF16 on this CPU, the daemon cannot start in bf16" >&2
fi
echo "$pass passed, $fail failed"
