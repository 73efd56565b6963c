#!/usr/bin/env bash
# Cluster mode with a replicated Redis (docs/scaling.md): a Redis primary (AOF always) and a
# Redis replica of it; a trainer and a replica node with bus_wait_replicas = 1. A write is
# acknowledged once the Redis replica has it (WAIT 1); with the Redis replica down, writes
# answer 503 bus_unavailable with Retry-After (WAIT times out) while reads are served; with
# it back, writes are acknowledged again. Ends with "N passed, N failed".
set -u
cd "$(dirname "$0")/.."
source tests/cluster_lib.sh
cluster_seed || die
for n in trainer A; do cp -r "$SEED" "$T/d_$n"; done
redis_start || die
REPL_PORT=$(free_port) REPL_PID=""
trap '[ -n "$REPL_PID" ] && kill -9 "$REPL_PID" 2>/dev/null; cleanup' EXIT
repl_start() {
  mkdir -p "$T/redis2"
  redis-server --port "$REPL_PORT" --bind 127.0.0.1 --dir "$T/redis2" --replicaof 127.0.0.1 "$REDIS_PORT" \
    --appendonly yes --appendfsync always --save "" --loglevel warning >>"$T/redis2.log" 2>&1 &
  REPL_PID=$!
  # a full sync (the first, and after a restart); the primary starts it at once
  # (repl-diskless-sync-delay 0, redis_start), the replica's cron connects within 1 s
  for _ in $(seq 1 600); do
    rcli INFO replication | grep -q '^slave0:.*state=online' && return 0
    sleep 0.05
  done
  bad "the Redis replica did not connect"; cat "$T/redis2.log" >&2; return 1
}
repl_start || die
node_conf trainer trainer; node_conf A replica
for n in trainer A; do printf 'bus_wait_replicas = 1\nbus_wait_ms = 500\n' >>"$T/$n.conf"; done
node_start trainer "$T/d_trainer" && node_start A "$T/d_A" || die
check "A serves version 1" -- wait_version A 1 10

req A POST /interactions '{"user_id":"W1","item_id":"I001","timestamp":1}'
check "a write with the Redis replica up: 200 ($S $(cat "$T/body"))" -- test "$S" = 200
check "the Redis replica has it" -- bash -c "redis-cli -p $REPL_PORT XLEN iisan:log | grep -qx 1"

kill -9 "$REPL_PID"; wait "$REPL_PID" 2>/dev/null; REPL_PID=""
for _ in $(seq 1 100); do
  [ "$(rcli INFO replication | tr -d '\r' | sed -n 's/^connected_slaves://p')" = 0 ] && break; sleep 0.05
done
S=$(curl -s -m 20 -o "$T/body" -D "$T/headers" -w '%{http_code}' -X POST "${AUTH[@]}" \
  -H 'Content-Type: application/json' --data-binary '{"user_id":"W2","item_id":"I002","timestamp":2}' \
  "${NURL[A]}/interactions")
check "a write with the Redis replica down: 503 ($S)" -- test "$S" = 503
jcheck 'd["error"]["code"] == "bus_unavailable" and "replicas acknowledged" in d["error"]["message"]' \
  "bus_unavailable, naming the replicas"
check "with Retry-After" -- grep -qi '^Retry-After: 1' "$T/headers"
req A POST /recommend '{"user_id":"W1","k":3}'
check "reads are served ($S)" -- test "$S" = 200

repl_start || die
# back online, the replica acknowledges again; its first acknowledgements can still miss the
# 500 ms of bus_wait_ms while it rewrites its AOF after the full sync (fsync always) on a busy
# machine, so a client retrying after Retry-After gets 200 within seconds. Each try is another
# user: a write answered 503 may still be in the log (not acknowledged, not promised either).
for i in $(seq 1 30); do
  W="W3-$i"
  req A POST /interactions "{\"user_id\":\"$W\",\"item_id\":\"I003\",\"timestamp\":3}"
  [ "$S" = 503 ] || break
  sleep 0.5
done
check "the Redis replica back: 200 ($S, try $i)" -- test "$S" = 200
figure "the Redis replica back: a write acknowledged at try $i (0.5 s apart)"
req trainer GET "/users/$W"
jcheck 'd["items"] == ["I003"]' "the trainer has it"
[ -n "$REPL_PID" ] && kill -9 "$REPL_PID" 2>/dev/null
for n in A trainer; do node_stop "$n"; done
openapi_check
echo "$pass passed, $fail failed"
