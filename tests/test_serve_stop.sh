#!/usr/bin/env bash
# Stopping and owning the store (docs/operations.md): a SIGTERM storm under
# concurrent writes (tests/stop_storm.py: every stop exits 0, no acknowledged
# interaction lost), on the sanitized build and on the plain one when it is
# built; one daemon per data directory (the lock names its holder); CLI
# commands that write the store wait for no one: they fail while a daemon
# holds it. Ends with "N passed, N failed".
set -u
cd "$(dirname "$0")/.."
source tests/serve_lib.sh
PLAIN_BIN=${IISAN_PLAIN_BIN:-build/iisan}

# ---- a small store (40 items, 30 users) with a SASRec-ID checkpoint ----
small_catalogue 7
D="$T/d"
check "import" -- "$BIN" import --data "$D" --items "$T/items.tsv" --users "$T/users.tsv" 2>/dev/null
check "train" -- "$BIN" train --data "$D" --model sasrec-id --epochs 1 --d 8 --json >/dev/null 2>&1
TOKEN=storm-token-1
printf 'port = 0\nadmin_token = "%s"\n' "$TOKEN" >"$T/serve.conf"
chmod 600 "$T/serve.conf"

# ---- SIGTERM storm: STORM_CYCLES stops (split between the builds), 4 writers ----
cycles=${STORM_CYCLES:-220}
storm() { # storm BIN CYCLES LABEL
  if python3 tests/stop_storm.py "$1" "$D" "$T" "$2" 4 "$TOKEN" "$3" >"$T/storm.out" 2>"$T/storm.err"; then ok
  else bad "SIGTERM storm ($3): $(cat "$T/storm.out") $(head -c 3000 "$T/storm.err")"; fi
  echo "    storm $3: $(tail -1 "$T/storm.out")" >&2
}
if [ -x "$PLAIN_BIN" ] && [ "$PLAIN_BIN" != "$BIN" ]; then
  storm "$BIN" $((cycles / 4)) sanitized
  storm "$PLAIN_BIN" $((cycles - cycles / 4)) plain
else
  storm "$BIN" "$cycles" sanitized
fi

# ---- one daemon per store: the lock, taken before the store is opened ----
start || exit 1
"$BIN" serve --data "$D" --port 0 >/dev/null 2>"$T/second.log"; rc=$?
[ "$rc" = 1 ] && grep -q "event=store_locked.*in use by pid $PID (iisan serve)" "$T/second.log" && ok \
  || bad "a second daemon on the store: exit $rc, $(cat "$T/second.log")"
grep -q 'event=store_open\|event=listening' "$T/second.log" && bad "the second daemon opened the store" || ok
check "iisan export reads a served store" -- "$BIN" export --data "$D" --out "$T/m.safetensors" 2>/dev/null
for cmd in "train --model popularity" "import --items $T/items.tsv" "import-ckpt --in $T/m.safetensors"; do
  "$BIN" ${cmd%% *} --data "$D" ${cmd#* } >/dev/null 2>"$T/err"; rc=$?
  [ "$rc" = 1 ] && grep -q "in use by pid $PID (iisan serve)" "$T/err" && ok || bad "iisan $cmd while served: exit $rc, $(cat "$T/err")"
done
check "iisan info reads a served store" -- "$BIN" info --data "$D" >/dev/null 2>&1
# another store on the same port: no SO_REUSEPORT unless reuse_port is set
port=${B##*:}
check "a second store" -- "$BIN" import --data "$T/d2" --items "$T/items.tsv" 2>/dev/null
timeout 10 "$BIN" serve --data "$T/d2" --port "$port" >/dev/null 2>"$T/port.log"; rc=$?
[ "$rc" = 1 ] && grep -q 'event=listen_failed' "$T/port.log" && ok || bad "a second daemon on port $port: exit $rc, $(tail -2 "$T/port.log")"
# kill -9 drops the lock with the process
kill -9 "$PID"; wait "$PID" 2>/dev/null; PID=""
check "train after kill -9 (the lock went with the process)" -- "$BIN" train --data "$D" --model popularity >/dev/null 2>&1

# ---- file modes: the store 0600 in a 0700 directory ----
mode() { stat -c %a "$1"; }
[ "$(mode "$T/d2")" = 700 ] && [ "$(mode "$T/d2/data.mdb")" = 600 ] && [ "$(mode "$T/d2/lock")" = 600 ] && ok \
  || bad "store modes: dir $(mode "$T/d2") data.mdb $(mode "$T/d2/data.mdb") lock $(mode "$T/d2/lock")"

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
