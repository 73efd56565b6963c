#!/usr/bin/env bash
# make bench-gpu: the GPU check on one machine with a CUDA device, in under 8 minutes.
#   1. builds the CUDA build (make CUDA=1: build/cuda/) with the two CUDA tests and benchmarks
#   2. runs tests/test_cuda_ops.c (op by op) and tests/test_cuda_model.c (whole model, CUDA
#      against CPU), under ASan as `make test` does
#   3. runs tests/bench_gpu.c: IISAN training on Scientific on the GPU (seconds per epoch,
#      evaluation seconds, device memory, parameters)
# With OUT set, every step's output goes to $OUT/<step>.log and the figures to
# $OUT/bench_gpu.json; otherwise the output streams here. The last line printed is one JSON
# object: {"bench":"bench-gpu","ok":...,"tests_passed":...,...,"result":{bench_gpu's JSON}}.
# Exit 0 only when everything built, every test passed and the benchmark ran on a GPU.
#   JOBS=16 (make -j), CUDA_ARCH=sm_90 (passed to make), IISAN_CUDA_TF32=1 (TF32 GEMMs)
set -u
cd "$(dirname "$0")/.." || exit 1

JOBS=${JOBS:-16}
if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    LOGDIR=$OUT
    QUIET=1
else
    LOGDIR=$(mktemp -d /tmp/iisan-bench-gpu-logs-XXXXXX)
    QUIET=0
fi
T_START=$(date +%s)

# step NAME LIMIT_SECONDS CMD...: runs CMD with a time limit into $LOGDIR/NAME.log (and to the
# terminal without OUT); sets STEP_RC and STEP_S
step() {
    local name=$1 limit=$2 t0
    shift 2
    t0=$(date +%s.%N)
    echo "== $name: $*" >&2
    if [ "$QUIET" = 1 ]; then
        timeout "$limit" "$@" >"$LOGDIR/$name.log" 2>&1
        STEP_RC=$?
    else
        timeout "$limit" "$@" 2>&1 | tee "$LOGDIR/$name.log"
        STEP_RC=${PIPESTATUS[0]}
    fi
    STEP_S=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    if [ "$STEP_RC" = 124 ]; then echo "   $name: timed out after $limit s" >&2; fi
    echo "   $name: exit $STEP_RC in $STEP_S s" >&2
}

ok=true
reason=""
fail() {
    ok=false
    [ -n "$reason" ] || reason=$1
    echo "bench-gpu: $1" >&2
}

if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
        >"$LOGDIR/gpu.txt" 2>&1 || true
else
    echo "nvidia-smi not found" >"$LOGDIR/gpu.txt"
fi
# shellcheck disable=SC1003 # tr deletes quotes and backslashes
gpu_name=$(head -n 1 "$LOGDIR/gpu.txt" | tr -d '"\\')

# the Scientific interactions (../shared is outside the repository: a machine that lacks it
# gets a synthetic stand-in of the same shape, 12076 users over 20314 items, named as such)
USERS=${IISAN_USERS:-../shared/data/amazon/scientific/users.tsv}
data=scientific
if [ ! -r "$USERS" ]; then
    echo "bench-gpu: $USERS is missing: using synthetic users of Scientific's shape" >&2
    USERS=$LOGDIR/synthetic_users.tsv
    data=synthetic
    awk 'BEGIN {
        srand(1)
        for (u = 0; u < 12076; u++) {
            n = 5
            while (rand() < 0.55 && n < 80) n++
            line = sprintf("U%05d\t", u)
            for (j = 0; j < n; j++) {
                r = rand()
                line = line sprintf("%sS%05d", j ? " " : "", 1 + int(20314 * r * r))
            }
            print line
        }
    }' >"$USERS"
fi

# 1. build (limits: 200 + 100 + 180 s = 480 s at most, plus a few seconds of set-up)
step build 200 make CUDA=1 -j"$JOBS" all build/cuda/test/test_cuda_ops \
    build/cuda/test/test_cuda_model build/cuda/bench_train build/cuda/bench_gpu
build_rc=$STEP_RC build_s=$STEP_S
[ "$build_rc" = 0 ] || fail "the CUDA build failed (exit $build_rc; $LOGDIR/build.log)"

# 2. the CUDA tests
tests_passed=0 tests_failed=0 tests_s=0 tests_skipped=false
if [ "$build_rc" = 0 ]; then
    step tests 100 tests/run_tests.sh build/cuda/test/test_cuda_ops build/cuda/test/test_cuda_model
    tests_s=$STEP_S
    line=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$LOGDIR/tests.log" | tail -n 1)
    if [ -n "$line" ]; then
        tests_passed=${line%% passed*}
        tests_failed=${line#*, }
        tests_failed=${tests_failed%% failed*}
    fi
    if grep -q '^skipped:' "$LOGDIR/tests.log"; then
        tests_skipped=true
        fail "the CUDA tests skipped: no usable CUDA device"
    fi
    if [ "$STEP_RC" != 0 ] || [ -z "$line" ]; then
        fail "the CUDA tests failed (exit $STEP_RC, ${line:-no summary}; $LOGDIR/tests.log)"
    fi
fi

# 3. the training benchmark on the GPU
result=null bench_s=0
if [ "$build_rc" = 0 ]; then
    step bench 180 build/cuda/bench_gpu "$USERS" 3
    bench_s=$STEP_S
    json=$(grep -E '^\{' "$LOGDIR/bench.log" | tail -n 1)
    [ -n "$json" ] && result=$json
    if [ "$STEP_RC" != 0 ] || [ -z "$json" ]; then
        fail "the benchmark failed (exit $STEP_RC; $LOGDIR/bench.log)"
    elif printf '%s' "$json" | grep -q '"skipped"'; then
        fail "the benchmark skipped: no usable CUDA device"
    elif [ "$QUIET" = 1 ]; then
        grep -E '^(bench-gpu |  )' "$LOGDIR/bench.log" >&2 || true
    fi
fi

total_s=$(($(date +%s) - T_START))
# shellcheck disable=SC1003
summary=$(printf '{"bench":"bench-gpu","ok":%s,"reason":"%s","gpu":"%s","data":"%s","seconds":%d,"build_seconds":%s,"tests_passed":%s,"tests_failed":%s,"tests_skipped":%s,"tests_seconds":%s,"bench_seconds":%s,"logs":"%s","result":%s}' \
    "$ok" "$(printf '%s' "$reason" | tr -d '"\\')" "$gpu_name" "$data" "$total_s" "$build_s" \
    "$tests_passed" "$tests_failed" "$tests_skipped" "$tests_s" "$bench_s" "$LOGDIR" "$result")
printf '%s\n' "$summary" >"$LOGDIR/bench_gpu.json"
printf '%s\n' "$summary"
[ "$ok" = true ]
