#!/usr/bin/env bash
# Runs every test program, sums their "N passed, N failed" lines, and ends
# with one such line for the whole suite. Exit status non-zero on any failure.
# TEST_WRAPPER (e.g. "valgrind -q --error-exitcode=3") prefixes every program. A program that
# runs past TEST_TIMEOUT seconds (default 1200) is killed and counted as broken, so a hang
# fails the suite instead of stalling it.
set -u
cd "$(dirname "$0")/.."
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-2}
pass=0; fail=0; broken=0
for t in "$@"; do
  echo "== $t"
  out=$(timeout -k 10 "${TEST_TIMEOUT:-1200}" ${TEST_WRAPPER:-} "$t" 2>&1); rc=$?
  [ "$rc" = 124 ] && echo "   $t killed after ${TEST_TIMEOUT:-1200} s (a hang?)"
  printf '%s\n' "$out" | grep -v '^ok  ' | tail -n 40
  line=$(printf '%s\n' "$out" | grep -E '^[0-9]+ passed, [0-9]+ failed' | tail -n 1)
  if [ -z "$line" ]; then
    echo "   $t ended without a summary (exit $rc)"; broken=$((broken+1)); continue
  fi
  p=${line%% passed*}; f=${line#*, }; f=${f%% failed*}
  pass=$((pass+p)); fail=$((fail+f))
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then broken=$((broken+1)); fi
done
fail=$((fail+broken))
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
