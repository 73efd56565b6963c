#!/usr/bin/env bash
# Which kernels the BLAS runs (kernels/blas_info.h): `iisan blas` reports the library, its
# kernel set, this CPU's level and the sgemm rate; on a CPU with AVX2 or AVX-512, generic
# (SSE) kernels -- forced here with OPENBLAS_CORETYPE=Prescott -- make `iisan blas --check`
# and the training benchmark refuse (exit 3), `iisan train` warn loudly and still train, and
# the daemon log a warning and label its metrics; on an AVX-512 CPU AVX2 kernels (Haswell)
# pass the check with a warning; the guard restarts a process whose OpenBLAS picked kernels below
# the CPU's level by itself (SSE; AVX2 on an AVX-512 CPU, as OpenBLAS 0.3.21 does on Zen 5) on
# the core type the CPU allows (test hook IISAN_BLAS_GUARD_TEST). BENCH_TRAIN: the benchmark
# binary (build/bench_train).
# Ends with "N passed, N failed".
set -u
cd "$(dirname "$0")/.."
source tests/serve_lib.sh
source tests/cli_lib.sh
BENCH_TRAIN=${BENCH_TRAIN:-build/bench_train}
unset OPENBLAS_CORETYPE IISAN_BLAS_GUARDED IISAN_BLAS_GUARD_TEST

expect 0 "iisan blas" -- "$BIN" blas
has "$T/out" "^BLAS: OpenBLAS [0-9]" "iisan blas names the library and version"
has "$T/out" "kernels [A-Za-z]" "iisan blas names the kernel set"
has "$T/out" "GFLOP/s on the SAN shapes" "iisan blas gives the sgemm rate"
expect 0 "iisan blas --json --threads 1" -- "$BIN" blas --json --threads 1
eq "$(json_field blas_threads)" 1 "--threads sets the BLAS's threads"
python3 -c "import sys; sys.exit(0 if float('$(json_field sgemm_san_gflops)') > 0 else 1)" && ok ||
  bad "sgemm rate measured: $(tail -1 "$T/out")"
expect 2 "bad --threads" -- "$BIN" blas --threads x
has "$T/err" "threads" "bad --threads names the option"
expect 2 "stray argument" -- "$BIN" blas extra
expect 0 "blas --help" -- "$BIN" blas --help

if ! grep -qwE 'avx2|avx512f' /proc/cpuinfo; then
  echo "skipped: this CPU has neither AVX2 nor AVX-512, so no kernels count as generic here" >&2
  echo "$pass passed, $fail failed"; exit $((fail > 0))
fi
expect 0 "the kernels this CPU gets are not generic" -- "$BIN" blas --check
expect 3 "--check refuses SSE kernels" -- env OPENBLAS_CORETYPE=Prescott "$BIN" blas --check
has "$T/err" "refusing to report figures" "the refusal says so"
has "$T/err" "Prescott kernels (SSE)" "the refusal names the core type"
has "$T/err" "OPENBLAS_CORETYPE" "the refusal says what to do"
expect 0 "without --check SSE kernels only warn" -- env OPENBLAS_CORETYPE=Prescott "$BIN" blas
has "$T/err" "WARNING" "iisan blas warns about SSE kernels"
# this CPU's level as iisan sees it, and the core type the guard should choose for it
expect 0 "iisan blas --json" -- "$BIN" blas --json --threads 1
LEVEL=$(json_field cpu_level)
case "$LEVEL" in
  AVX-512) WANT='SkylakeX|Cooperlake'; grep -qw avx512_bf16 /proc/cpuinfo && WANT=Cooperlake ;;
  *) WANT=Haswell ;;
esac
expect 0 "AVX2 kernels pass the check" -- env OPENBLAS_CORETYPE=Haswell "$BIN" blas --check
if [ "$LEVEL" = AVX-512 ]; then
  has "$T/err" "Haswell kernels (AVX2) on a CPU with AVX-512" "AVX2 kernels on AVX-512 warn"
  has "$T/err" "about half of this machine's rate" "the warning says what it costs"
  expect 0 "blas --json, AVX2 kernels" -- env OPENBLAS_CORETYPE=Haswell "$BIN" blas --json
  eq "$(json_field blas_below_cpu)" True "the JSON says the kernels are below the CPU's"
else
  hasnt "$T/err" "WARNING" "AVX2 kernels on an AVX2 CPU: no warning"
fi

# the guard: an OpenBLAS that picked kernels below the CPU's by itself is restarted on the
# right ones
for fell in Prescott Haswell; do
  [ "$fell" = Haswell ] && [ "$LEVEL" != AVX-512 ] && continue
  expect 0 "guarded restart from $fell" -- env IISAN_BLAS_GUARD_TEST=$fell "$BIN" blas --json
  eq "$(json_field blas_guarded)" True "the guard restarted the process ($fell)"
  echo "$(json_field blas_core)" | grep -qxE "$WANT" && ok ||
    bad "the guard chose $(json_field blas_core) from $fell (want $WANT)"
  has "$T/err" "OpenBLAS had picked $fell" "the line says the guard chose the core ($fell)"
done
expect 0 "an explicit OPENBLAS_CORETYPE is left alone" -- env IISAN_BLAS_GUARD_TEST=Prescott \
  OPENBLAS_CORETYPE=Haswell "$BIN" blas --json
eq "$(json_field blas_core)/$(json_field blas_guarded)" Haswell/False "the user's core type kept"

# the training benchmark refuses before any work
if [ -x "$BENCH_TRAIN" ]; then
  expect 3 "bench_train refuses SSE kernels" -- env OPENBLAS_CORETYPE=Prescott "$BENCH_TRAIN"
  has "$T/err" "bench-train: refusing to report figures" "bench_train says why"
  hasnt "$T/out" "s/epoch" "bench_train reports no figures"
else
  bad "$BENCH_TRAIN is missing (make $BENCH_TRAIN)"
fi

# iisan train warns loudly and trains
small_catalogue 5
D="$T/d"
"$BIN" import --data "$D" --items "$T/items.tsv" --users "$T/users.tsv" --quiet >/dev/null 2>&1
expect 0 "train on SSE kernels" -- env OPENBLAS_CORETYPE=Prescott "$BIN" train --data "$D" \
  --model sasrec-id --epochs 1 --d 16 --no-save --json
has "$T/err" "\*\*\* iisan train: WARNING: the BLAS" "iisan train warns loudly"
has "$T/err" "^BLAS: OpenBLAS.*kernels Prescott.*GFLOP/s" "iisan train's start-up line"
expect 0 "train on the CPU's kernels" -- "$BIN" train --data "$D" --model sasrec-id --epochs 1 \
  --d 16 --no-save
hasnt "$T/err" "WARNING" "no warning on the CPU's own kernels"

# the daemon: start-up log and metrics
printf 'port = 0\nthreads = 1\n' >"$T/serve.conf"
OPENBLAS_CORETYPE=Prescott start || { echo "$pass passed, $((fail + 1)) failed"; exit 1; }
grep -q 'event=blas .*core=Prescott core_level=SSE.*sgemm_san_gflops=' "$LOG" && ok ||
  bad "the daemon logs the BLAS: $(grep event=blas "$LOG")"
grep -q 'event=blas_generic_kernels' "$LOG" && ok || bad "the daemon warns about SSE kernels"
stop
# the guard in the daemon: restarted on the CPU's kernels, and the log says from what
IISAN_BLAS_GUARD_TEST=Prescott start || { echo "$pass passed, $((fail + 1)) failed"; exit 1; }
grep -q "event=blas .*core_level=$LEVEL .*guarded_from=Prescott" "$LOG" && ok ||
  bad "the daemon logs the guard's restart: $(grep event=blas "$LOG")"
hasnt "$LOG" "blas_generic_kernels\|blas_kernels_below_cpu" "no warning after the guard's restart"
stop
OPENBLAS_CORETYPE=Prescott start || { echo "$pass passed, $((fail + 1)) failed"; exit 1; }
curl -s "$B/metrics" >"$T/metrics"
grep -q '^iisan_build_info{.*blas="OpenBLAS [0-9.]*",blas_core="Prescott"} 1' "$T/metrics" && ok ||
  bad "iisan_build_info's BLAS labels: $(grep build_info "$T/metrics")"
grep -qE '^iisan_blas_sgemm_gflops [0-9.]+$' "$T/metrics" && ok || bad "iisan_blas_sgemm_gflops"
stop
[ "$STOP_RC" = 0 ] && ok || bad "stop: exit $STOP_RC"
echo "$pass passed, $fail failed"
