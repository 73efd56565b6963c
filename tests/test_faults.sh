#!/usr/bin/env bash
# A failed compute backend never answers a wrong 200 and never has a model promoted. The CPU
# backend's test hook (IISAN_CPU_FAULT_FILE=PATH: once PATH exists, every GEMM leaves NaN and
# counts a failure, kernels/backend.h) drives the real checks of its status:
#   1. iisan eval / train end with exit 1 naming the failure, nothing stored;
#   2. a daemon whose backend fails while loading refuses the version (at startup: exit 1);
#   3. a daemon whose backend fails while serving: the running retraining job fails (the
#      served version stays, nothing stored), /recommend answers 503 backend_failed, and the
#      metrics and the log say so;
#   4. a store read error (a hidden-state value of the wrong size, written with mdb_load) is
#      an error for train, eval and the daemon's load, not an item without states.
# Ends with "N passed, N failed".
set -u
cd "$(dirname "$0")/.."
source tests/serve_lib.sh
source tests/cli_lib.sh

# ---- a small store: 40 items with 16-wide random hidden states, 60 users; one IISAN version ----
states_catalogue
D="$T/d"
TRAIN=(train --data "$D" --model iisan --r 4 --d 8 --schedule 0,2,4)
check "import" -- "$BIN" import --data "$D" --items "$T/items.tsv" --users "$T/users.tsv" \
  --states "$T/states.safetensors" 2>/dev/null
check "train version 1" -- "$BIN" "${TRAIN[@]}" --epochs 1 >/dev/null 2>&1
FAULT="$T/fault"

# ---- 1. the commands: a failed backend is an error, nothing is stored ----
: >"$FAULT"
expect 1 "eval with a failed backend" -- env IISAN_CPU_FAULT_FILE="$FAULT" "$BIN" eval --data "$D"
has "$T/err" "cpu backend failure" "eval names the failure"
expect 1 "train with a failed backend" -- env IISAN_CPU_FAULT_FILE="$FAULT" "$BIN" "${TRAIN[@]}" --epochs 1
has "$T/err" "cpu backend failure" "train names the failure"
expect 1 "no version 2 stored" -- "$BIN" eval --data "$D" --version 2
rm -f "$FAULT"
expect 0 "the hook armed, no trigger: eval runs" -- env IISAN_CPU_FAULT_FILE="$FAULT" "$BIN" eval --data "$D"

# ---- 2. a load through a failed backend is refused ----
TOKEN=fault-token
printf 'port = 0\nthreads = 2\nadmin_token = "%s"\n' "$TOKEN" >"$T/serve.conf"
AUTH=(-H "Authorization: Bearer $TOKEN")
: >"$FAULT"
IISAN_CPU_FAULT_FILE="$FAULT" timeout 60 "$BIN" serve --data "$D" --config "$T/serve.conf" 2>"$LOG"; rc=$?
[ "$rc" = 1 ] && ok || bad "a startup load through a failed backend: exit $rc, wanted 1"
grep -q 'event=model_load_failed.*the cpu backend failed while loading' "$LOG" && ok ||
  bad "load refused: $(grep model_load "$LOG")"
grep -q 'event=listening' "$LOG" && bad "listened with no model" || ok
sanitizer_check
rm -f "$FAULT"

# ---- 3. the backend fails while serving and training ----
IISAN_CPU_FAULT_FILE="$FAULT" start || exit 1
req POST /recommend '{"history":["I001","I002"],"k":3}'; status 200 "served before the fault"
req POST /admin/retrain '{"epochs":1000,"patience":1000,"tolerance":1}' "${AUTH[@]}"; status 202 "a long job"
job=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["job_id"])' "$T/body")
for _ in $(seq 1 200); do grep -q "event=retrain_epoch job=$job" "$LOG" && break; sleep 0.05; done
grep -q "event=retrain_epoch job=$job" "$LOG" && ok || bad "the job trained an epoch"
: >"$FAULT"
for _ in $(seq 1 300); do
  req GET "/admin/jobs/$job" '' "${AUTH[@]}"
  python3 -c 'import json,sys; sys.exit(json.load(open(sys.argv[1]))["state"] == "running")' "$T/body" && break
  sleep 0.1
done
jcheck "d['state'] == 'failed' and 'backend failed' in d['message'] and not d.get('new_version')" \
  "the job failed on the backend, nothing promoted"
req GET /healthz; jcheck "d['model_version'] == 1" "version 1 still served"
req POST /recommend '{"history":["I001","I002"],"k":3}'; errcode 503 backend_failed "recommend after the fault"
req POST /recommend '{"history":["I003"],"k":3}'; errcode 503 backend_failed "and again (sticky)"
req POST /recommend '{"history":[],"k":3}'; status 200 "popularity needs no backend"
grep -q 'event=backend_failed backend=cpu' "$LOG" && ok || bad "backend_failed logged"
req GET /metrics
grep -qE '^iisan_backend_failures [1-9]' "$T/body" && ok || bad "iisan_backend_failures gauge"
grep -qE '^iisan_backend_failed_requests_total [2-9]' "$T/body" && ok || bad "failed requests counted"
stop
[ "$STOP_RC" = 0 ] && ok || bad "stop after the fault: exit $STOP_RC"
expect 1 "the failed job stored nothing" -- "$BIN" eval --data "$D" --version 2

# ---- 4. a store read error: catalogue item 3's text states cut to 20 bytes ----
mdb_dump -s state_text "$D" | python3 -c '
import sys
lines = sys.stdin.read().splitlines()
end = lines.index("HEADER=END")
print("\n".join(lines[:end + 1] + [" 03000000", " " + lines[end + 6].strip()[:40], "DATA=END"]))' >"$T/bad.dump"
check "a state value of the wrong size" -- mdb_load -s state_text -f "$T/bad.dump" "$D" 2>/dev/null
BADMSG="text states of catalogue item 3 are 20 bytes"
expect 1 "train over it" -- "$BIN" "${TRAIN[@]}" --epochs 1
has "$T/err" "$BADMSG" "train names the bad value"
expect 1 "eval over it" -- "$BIN" eval --data "$D"
has "$T/err" "$BADMSG" "eval names the bad value"
timeout 60 "$BIN" serve --data "$D" --config "$T/serve.conf" 2>"$LOG"; rc=$?
[ "$rc" = 1 ] && grep -q "event=model_load_failed.*$BADMSG" "$LOG" && ok ||
  bad "the daemon's load over it: exit $rc, $(grep model_load "$LOG")"
expect 1 "nothing stored" -- "$BIN" eval --data "$D" --version 2
openapi_check
echo "$pass passed, $fail failed"
