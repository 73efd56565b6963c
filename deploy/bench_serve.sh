#!/usr/bin/env bash
# make bench-serve: the serving daemon under wrk on loopback, on the Amazon
# Scientific catalogue (about 20k items after the spec's preprocessing).
#   1. imports Scientific into $BENCH_DATA (once) and trains a SASRec-ID model
#      for one epoch (once): item embeddings are computed once per version, so
#      a request costs the sequence encoder plus the top-k, whatever the kind;
#      what the kind changes is how much of the table the CPU top-k must score
#      (core/score_cpu.h): the run with exhaustive_topk gives the cost when it
#      scores every item, as it does for IISAN on Scientific's MiniLM states
#      (IISAN would need Scientific-sized hidden states, which are not bundled);
#   2. POST /recommend, k=10, 10-item histories drawn from real users, batched
#      (the default: concurrent requests computed together), one at a time
#      (max_batch = 1), batched with every item scored, then while a retraining
#      job runs, then POST /interactions (one interaction per request);
#   3. prints throughput and latency percentiles; the last line is JSON.
# Environment: BENCH_DATA, IISAN_SRC, DURATION (s, default 10), CONNS (16),
# THREADS (daemon worker threads, default the number of cores).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${IISAN_BIN:-build/iisan}
DATA=${BENCH_DATA:-build/bench-serve/scientific}
SRC=${IISAN_SRC:-../shared/data/amazon/scientific}
DUR=${DURATION:-10}
CONNS=${CONNS:-16}
THREADS=${THREADS:-$(nproc)}
command -v wrk >/dev/null || { echo "bench-serve: wrk is missing (deploy/install-deps.sh)" >&2; exit 1; }
# the BLAS's kernels and sgemm rate at the daemon's 1 BLAS thread (blas_threads); refuses
# (exit 3) on generic kernels (kernels/blas_info.h)
"$BIN" blas --check --threads 1 >&2
T=$(mktemp -d /tmp/iisan-bench-serve-XXXXXX)
PID=""
trap '[ -n "$PID" ] && kill -9 "$PID" 2>/dev/null; rm -rf "$T"' EXIT

if [ ! -f "$DATA/data.mdb" ]; then
  mkdir -p "$DATA"
  "$BIN" import --data "$DATA" --items "$SRC/items.tsv" --users "$SRC/users.tsv" >&2
fi
if [ ! -f "$DATA/bench-trained" ]; then
  "$BIN" train --data "$DATA" --model sasrec-id --epochs 1 --json >&2
  touch "$DATA/bench-trained"
fi
# the interaction benchmark writes: it runs on a copy (mdb_copy, as for a backup)
mkdir -p "$T/ixstore"
mdb_copy "$DATA" "$T/ixstore"

# request bodies: 10-item histories (the last 10 of real users) and interactions
python3 - "$SRC/users.tsv" "$T" <<'PY'
import json, random, sys
random.seed(1)
users = []
for line in open(sys.argv[1]):
    u, items = line.rstrip("\n").split("\t")
    items = items.split()
    if len(items) >= 10: users.append((u, items))
random.shuffle(users)
def lua_table(bodies):
    return "{" + ",".join("[==[" + b + "]==]" for b in bodies) + "}"
rec = [json.dumps({"history": items[-10:], "k": 10}) for _, items in users[:2000]]
ixs = [json.dumps({"user_id": "bench-" + u, "item_id": random.choice(items)}) for u, items in users[:2000]]
for name, bodies in (("recommend", rec), ("interactions", ixs)):
    with open(f"{sys.argv[2]}/{name}.lua", "w") as f:
        f.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n')
        f.write("local bodies = " + lua_table(bodies) + "\n")
        f.write("request = function() return wrk.format(nil, nil, nil, bodies[math.random(#bodies)]) end\n")
PY

LOG="$T/serve.log"
start() { # start DATADIR [flags]
  local dir=$1; shift
  : >"$LOG"
  "$BIN" serve --data "$dir" --port 0 --threads "$THREADS" --log-requests false "$@" 2>>"$LOG" &
  PID=$!
  for _ in $(seq 1 600); do
    PORT=$(sed -n 's/.*event=listening.* port=\([0-9]*\).*/\1/p' "$LOG" | tail -1)
    [ -n "$PORT" ] && return 0
    kill -0 "$PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "bench-serve: the daemon did not start" >&2; cat "$LOG" >&2; exit 1
}
stop() { kill -TERM "$PID"; wait "$PID" || true; PID=""; }

# run NAME SCRIPT [CONNECTIONS]: wrk, then "rps p50_ms p99_ms non2xx" into $T/NAME
run() {
  wrk -t2 -c"${3:-$CONNS}" -d"${DUR}s" --latency -s "$T/$2.lua" "http://127.0.0.1:$PORT/$2" >"$T/$1.wrk"
  sed 's/^/    /' "$T/$1.wrk" >&2
  python3 - "$T/$1.wrk" >"$T/$1" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
def ms(v):
    m = re.match(r"([\d.]+)(us|ms|s)", v); x = float(m.group(1))
    return x / 1000 if m.group(2) == "us" else x * 1000 if m.group(2) == "s" else x
rps = float(re.search(r"Requests/sec:\s*([\d.]+)", t).group(1))
p50 = ms(re.search(r"\s50%\s+(\S+)", t).group(1))
p99 = ms(re.search(r"\s99%\s+(\S+)", t).group(1))
n = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", t)
print(rps, p50, p99, n.group(1) if n else 0)
PY
}

start "$DATA"
load_s=$(sed -n 's/.*event=model_loaded.* seconds=\([0-9.]*\).*/\1/p' "$LOG" | tail -1)
items=$(sed -n 's/.*event=model_loaded.* items=\([0-9]*\).*/\1/p' "$LOG" | tail -1)
echo "recommend, batched ($THREADS HTTP threads, $CONNS connections, ${DUR}s):" >&2
run rec_ctx recommend
per_batch=$(curl -s "http://127.0.0.1:$PORT/metrics" | python3 -c '
import sys
m = dict(l.split() for l in sys.stdin if l.startswith("iisan_recommend_batch"))
print("%.1f" % (float(m["iisan_recommend_batched_requests_total"]) / max(1.0, float(m["iisan_recommend_batches_total"]))))')
echo "recommend, 2 connections (latency without queueing):" >&2
run rec_2 recommend 2
stop
start "$DATA" --max-batch 1
echo "recommend, one request at a time (max_batch = 1):" >&2
run rec_mutex recommend
stop
# every item scored: the cost when the norm bound prunes nothing (measured so for an IISAN
# model on Scientific's MiniLM states, whose item embeddings have even norms)
start "$DATA" --exhaustive-topk true
echo "recommend, batched, every item scored (exhaustive_topk):" >&2
run rec_full recommend
stop
# while a retraining job runs (a copy of the store: the job writes a checkpoint)
mkdir -p "$T/trainstore"
mdb_copy "$DATA" "$T/trainstore"
start "$T/trainstore" --admin-token bench
curl -s -X POST -H "Authorization: Bearer bench" -H 'Content-Type: application/json' "http://127.0.0.1:$PORT/admin/retrain" \
  -d '{"epochs":1000,"patience":1000}' >/dev/null
for _ in $(seq 1 100); do grep -q 'event=retrain_epoch' "$LOG" && break; sleep 0.1; done
echo "recommend while a retraining job runs:" >&2
run rec_train recommend
train_epochs=$(grep -c 'event=retrain_epoch' "$LOG" || true)
stop
start "$T/ixstore"
echo "interactions (one per request, group commit):" >&2
run ix interactions
batches=$(curl -s "http://127.0.0.1:$PORT/metrics" | sed -n 's/^iisan_commit_batches_total //p')
committed=$(curl -s "http://127.0.0.1:$PORT/metrics" | sed -n 's/^iisan_interactions_committed_total //p')
stop

read -r r1 p50a p99a e1 <"$T/rec_ctx"
read -r r2 p50b p99b e2 <"$T/rec_mutex"
read -r r4 p50d p99d e4 <"$T/rec_2"
read -r r5 p50e p99e e5 <"$T/rec_train"
read -r r6 p50f p99f e6 <"$T/rec_full"
read -r r3 p50c p99c e3 <"$T/ix"
printf '{"items":%s,"model_load_s":%s,"threads":%s,"connections":%s,"seconds":%s,"recommend_rps":%.1f,"recommend_p50_ms":%.3f,"recommend_p99_ms":%.3f,"requests_per_batch":%s,"recommend_unbatched_rps":%.1f,"recommend_unbatched_p50_ms":%.3f,"recommend_unbatched_p99_ms":%.3f,"batched_over_unbatched":%.2f,"recommend_exhaustive_rps":%.1f,"recommend_exhaustive_p50_ms":%.3f,"recommend_exhaustive_p99_ms":%.3f,"recommend_2conn_rps":%.1f,"recommend_2conn_p50_ms":%.3f,"recommend_2conn_p99_ms":%.3f,"recommend_training_rps":%.1f,"recommend_training_p50_ms":%.3f,"recommend_training_p99_ms":%.3f,"training_epochs_during_run":%s,"interactions_rps":%.1f,"interactions_p50_ms":%.3f,"interactions_p99_ms":%.3f,"interactions_per_commit":%.1f,"non_2xx":%d}\n' \
  "${items:-0}" "${load_s:-0}" "$THREADS" "$CONNS" "$DUR" "$r1" "$p50a" "$p99a" "${per_batch:-0}" "$r2" "$p50b" "$p99b" \
  "$(python3 -c "print($r1 / max(1e-9, $r2))")" "$r6" "$p50f" "$p99f" "$r4" "$p50d" "$p99d" "$r5" "$p50e" "$p99e" "${train_epochs:-0}" \
  "$r3" "$p50c" "$p99c" "$(python3 -c "print(${committed:-0} / max(1, ${batches:-1}))")" $((e1 + e2 + e3 + e4 + e5 + e6))
