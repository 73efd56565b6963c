#!/usr/bin/env bash
# SIGHUP's model loads run on the loader thread, never on the main thread's loop
# (server/serve_load.c). The real load is slowed by its test hook (IISAN_TEST_LOAD_DELAY_MS)
# while a client keeps requesting:
#   1. a reload that resizes the contexts (max_k 5 -> 8): /livez answers quickly all along,
#      /recommend answers 200 from the old model (k = 8 is still too large for it), more
#      SIGHUPs during the load are handled by the loop at once and coalesce into one more
#      load (which finds nothing new), /metrics says a load is under way and /readyz stays
#      ready; afterwards the new model serves k = 8;
#   2. a load that fails (a hidden state cut short with mdb_load under the running daemon)
#      leaves the old model serving, and the log and the metrics say why;
#   1b. a rollback (POST /admin/rollback) loads on the loader thread too: with one HTTP
#      thread, /livez and /recommend keep answering while its request waits;
#   3. SIGTERM during a load: the stop waits for it and exits 0 (sanitizers clean).
# Ends with "N passed, N failed".
set -u
cd "$(dirname "$0")/.."
source tests/serve_lib.sh

# ---- a small store: 40 items with 16-wide random hidden states, 60 users; one IISAN version ----
states_catalogue
D="$T/d"
check "import" -- "$BIN" import --data "$D" --items "$T/items.tsv" --users "$T/users.tsv" \
  --states "$T/states.safetensors" 2>/dev/null
for v in 1 2; do
  check "train version $v" -- "$BIN" train --data "$D" --model iisan --r 4 --d 8 --schedule 0,2,4 \
    --epochs 1 >/dev/null 2>&1
done
# one HTTP thread: a load on it would stall every other connection
printf 'port = 0\nthreads = 1\nmax_k = 5\nadmin_token = "tok"\n' >"$T/serve.conf"
AUTH=(-H "Authorization: Bearer tok")
DELAY_MS=2000
export IISAN_TEST_LOAD_DELAY_MS=$DELAY_MS
start || exit 1
unset IISAN_TEST_LOAD_DELAY_MS
grep -q 'event=model_loaded version=2' "$LOG" && ok || bad "version 2 loaded at startup"
# wait_log PATTERN COUNT: until the log holds COUNT lines matching PATTERN (20 s at most)
wait_log() {
  for _ in $(seq 1 400); do [ "$(grep -c -- "$1" "$LOG")" -ge "$2" ] && return 0; sleep 0.05; done
  return 1
}
# line_of PATTERN N: the log's line number of the Nth match
line_of() { grep -n -- "$1" "$LOG" | sed -n "${2}p" | cut -d: -f1; }
client_start() {
  rm -f "$T/client.stop"
  python3 tests/reload_client.py "$B" "$T/client.stop" "$T/client.json" &
  CPID=$!
}
client_stop() { touch "$T/client.stop"; wait "$CPID"; cp "$T/client.json" "$T/body"; }

# ---- 1. a slow reload under traffic; two more SIGHUPs during it ----
client_start
sleep 0.3
sed -i 's/^max_k = 5$/max_k = 8/' "$T/serve.conf"
kill -HUP "$PID"
wait_log 'event=model_loading' 2 && ok || bad "the reload started"
sleep 0.2
kill -HUP "$PID"; sleep 0.1; kill -HUP "$PID"
wait_log 'event=signal signal=HUP' 3 && ok || bad "three SIGHUPs logged"
req GET /metrics; grep -q '^iisan_model_loading 1$' "$T/body" && ok || bad "/metrics says a load is under way"
req GET /readyz; status 200 "/readyz ready while the old model serves during the load"
req POST /recommend '{"history":["I001","I002"],"k":8}'
errcode 400 k_too_large "k = 8 during the load: the old model's contexts hold 5"
req POST /recommend '{"history":["I001","I002"],"k":5}'; status 200 "k = 5 during the load"
wait_log 'event=model_loaded' 2 && ok || bad "the reload completed"
sleep 0.5 # the coalesced request: one more look, which finds the version unchanged
client_stop
jcheck "d['errors'] == [] and list(d['recommend']) == ['200'] and d['versions'] == [2]" \
  "every /recommend of the client answered 200 from version 2, none dropped"
jcheck "d['livez'] >= 20 and d['livez_bad'] == [] and d['livez_max_s'] < 0.5" \
  "/livez answered quickly all along"
echo "    client: $(cat "$T/body")" >&2
# the loop handled the later SIGHUPs while the load ran: their lines come before its end
hup3=$(line_of 'event=signal signal=HUP' 3); done2=$(line_of 'event=model_loaded' 2)
[ -n "$hup3" ] && [ -n "$done2" ] && [ "$hup3" -lt "$done2" ] && ok ||
  bad "SIGHUPs handled during the load (line $hup3, load done at line $done2)"
grep -q 'event=reload_coalesced' "$LOG" && ok || bad "reload_coalesced logged"
[ "$(grep -c 'event=model_loading' "$LOG")" = 2 ] && ok ||
  bad "one load after the coalesced SIGHUPs found nothing new: $(grep -c 'event=model_loading' "$LOG") loads"
grep 'event=model_loaded' "$LOG" | tail -1 | grep -q 'version=2 .*previous=2' && ok ||
  bad "the forced reload: $(grep 'event=model_loaded' "$LOG" | tail -1)"
req POST /recommend '{"history":["I001","I002"],"k":8}'; status 200 "k = 8 from the new model"
jcheck "len(d['items']) == 8 and d['model_version'] == 2" "8 items from version 2"
req GET /metrics; grep -q '^iisan_model_loading 0$' "$T/body" && ok || bad "no load under way after it"

# ---- 1b. a rollback's load runs on the loader thread: its HTTP thread (the only one) answers
# the other connections meanwhile ----
client_start
sleep 0.3
req POST /admin/rollback '{"version":1}' "${AUTH[@]}"; status 200 "rollback to version 1"
jcheck "d['model_version'] == 1 and d['previous_version'] == 2 and d['pinned']" "rolled back from 2 to 1"
client_stop
jcheck "d['errors'] == [] and list(d['recommend']) == ['200'] and d['versions'] == [2, 1]" \
  "the client's /recommend answered 200 throughout, from version 2 then 1"
jcheck "d['livez'] >= 10 and d['livez_bad'] == [] and d['livez_max_s'] < 0.5" \
  "/livez answered quickly on the one HTTP thread during the rollback's load"
echo "    client: $(cat "$T/body")" >&2

# ---- 2. a failed load: catalogue item 3's text states cut to 20 bytes under the daemon ----
mdb_dump -s state_text "$D" | python3 -c '
import sys
lines = sys.stdin.read().splitlines()
end = lines.index("HEADER=END")
print("\n".join(lines[:end + 1] + [" 03000000", " " + lines[end + 6].strip()[:40], "DATA=END"]))' >"$T/bad.dump"
check "a state value of the wrong size" -- mdb_load -s state_text -f "$T/bad.dump" "$D" 2>/dev/null
client_start
sed -i 's/^max_k = 8$/max_k = 9/' "$T/serve.conf"
kill -HUP "$PID"
wait_log 'event=model_load_failed' 1 && ok || bad "the load failed"
client_stop
grep 'event=model_load_failed' "$LOG" | grep -q 'text states of catalogue item 3 are 20 bytes.* kept=1' &&
  ok || bad "model_load_failed names the bad value and the kept version: $(grep model_load_failed "$LOG")"
jcheck "d['errors'] == [] and list(d['recommend']) == ['200'] and d['versions'] == [1]" \
  "the old model answered every /recommend during the failed load"
req POST /recommend '{"history":["I001","I002"],"k":8}'; status 200 "version 1 still serves k = 8"
req GET /metrics
grep -q '^iisan_model_loads_total{result="failed"} 1$' "$T/body" && ok || bad "the failed load counted"

# ---- 3. SIGTERM during a load ----
sed -i 's/^max_k = 9$/max_k = 10/' "$T/serve.conf"
kill -HUP "$PID"
wait_log 'event=model_loading' 5 && ok || bad "a third load started"
kill -TERM "$PID"; wait "$PID"; STOP_RC=$?; PID=""
sanitizer_check
[ "$STOP_RC" = 0 ] && ok || bad "stop during a load: exit $STOP_RC"
stopped=$(line_of 'event=stopped' 1); failed2=$(line_of 'event=model_load_failed' 2)
[ -n "$stopped" ] && [ -n "$failed2" ] && [ "$failed2" -lt "$stopped" ] && ok ||
  bad "the stop waited for the load (load ended at line $failed2, stopped at $stopped)"
openapi_check
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
