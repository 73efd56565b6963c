# Helpers of the cluster-mode tests (sourced by tests/test_cluster*.sh): a
# temporary directory T, pass/fail counters, a redis-server of their own on a
# free loopback port (AOF, appendfsync always), and iisan daemons in the
# trainer / replica roles, each with its own data directory and log.
# Scripts end with: echo "$pass passed, $fail failed".
# without a redis-server the script skips (a summary of nothing, exit 0)
if ! command -v redis-server >/dev/null; then
  echo "SKIP: redis-server is not installed (deploy/install-deps.sh installs it)"
  echo "0 passed, 0 failed"; exit 0
fi
BIN=${IISAN_BIN:-build/iisan}
T=$(mktemp -d /tmp/iisan-cluster-XXXXXX)
declare -A NPID NURL NLOG
REDIS_PID=""
cleanup() {
  for n in "${!NPID[@]}"; do [ -n "${NPID[$n]}" ] && kill -9 "${NPID[$n]}" 2>/dev/null; done
  [ -n "$REDIS_PID" ] && kill -9 "$REDIS_PID" 2>/dev/null
  wait 2>/dev/null
  rm -rf "$T"
}
trap cleanup EXIT
pass=0; fail=0
ok()  { pass=$((pass+1)); }
bad() { fail=$((fail+1)); echo "FAIL: $*" >&2; }
check() { local what=$1; shift 2; if "$@"; then ok; else bad "$what"; fi; }
figure() { echo "figure: $*" >&2; echo "$*" >>"$T/figures"; }
TOKEN=cluster-token
AUTH=(-H "Authorization: Bearer $TOKEN")

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

REDIS_PORT=$(free_port)
redis_start() { # same directory and port each time: the AOF brings the data back
  mkdir -p "$T/redis"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$T/redis" --appendonly yes \
    --appendfsync always --save "" --repl-diskless-sync-delay 0 --daemonize no --loglevel warning >>"$T/redis.log" 2>&1 &
  REDIS_PID=$!
  for _ in $(seq 1 100); do
    redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && return 0
    sleep 0.05
  done
  bad "redis-server did not start"; cat "$T/redis.log" >&2; return 1
}
rcli() { redis-cli -p "$REDIS_PORT" "$@"; }

sanitizer_check() { # sanitizer_check LOG
  if grep -qE 'ERROR: (Address|Leak)Sanitizer|runtime error:' "$1" 2>/dev/null; then
    bad "sanitizer report in $1:"; grep -A20 -E 'Sanitizer|runtime error' "$1" | head -40 >&2
  fi
}

# node_conf NAME ROLE: the node's configuration file
node_conf() {
  cat >"$T/$1.conf" <<EOF
port = 0
threads = 8
admin_token = "$TOKEN"
role = $2
redis = 127.0.0.1:$REDIS_PORT
repo = $T/repo
node_id = $1
lease_ms = 1500
repo_poll_ms = 300
bus_timeout_ms = 1000
EOF
}

# node_start NAME DATA_DIR: starts the daemon of NAME (node_conf first); sets NURL[NAME]
node_start() {
  local n=$1 d=$2 port="" skip
  NLOG[$n]="$T/$n.log"
  skip=$(( $(cat "${NLOG[$n]}" 2>/dev/null | wc -l) + 1 ))  # a restart appends to the log
  "$BIN" serve --data "$d" --config "$T/$n.conf" 2>>"${NLOG[$n]}" &
  NPID[$n]=$!
  for _ in $(seq 1 400); do
    port=$(tail -n +"$skip" "${NLOG[$n]}" | sed -n 's/.*event=listening.* port=\([0-9]*\).*/\1/p' | tail -1)
    [ -n "$port" ] && break
    kill -0 "${NPID[$n]}" 2>/dev/null || break
    sleep 0.05
  done
  if [ -z "$port" ]; then bad "$n did not start"; tail -20 "${NLOG[$n]}" >&2; return 1; fi
  NURL[$n]="http://127.0.0.1:$port"
  : >"$T/$n.port.$port"
}
node_kill9() { kill -9 "${NPID[$1]}" 2>/dev/null; wait "${NPID[$1]}" 2>/dev/null; NPID[$1]=""; }
node_stop() { kill -TERM "${NPID[$1]}" 2>/dev/null; wait "${NPID[$1]}" 2>/dev/null; NPID[$1]=""; sanitizer_check "${NLOG[$1]}"; }

# req NAME METHOD PATH [BODY]: status in $S, body in $T/body
req() {
  local n=$1 m=$2 p=$3; shift 3
  local data=()
  if [ $# -gt 0 ]; then data=(--data-binary "$1"); shift; fi
  S=$(curl -s -m 20 -o "$T/body" -w '%{http_code}' -X "$m" "${AUTH[@]}" \
      -H 'Content-Type: application/json' "${data[@]}" "${NURL[$n]}$p")
  # kept for openapi_check (the responses against proto/openapi.yaml)
  # (a unique file: req also runs in $(...) subshells)
  mkdir -p "$T/responses"; local f; f=$(mktemp "$T/responses/r.XXXXXX"); cp "$T/body" "$f"
  echo "$m $p $S $f" >>"$T/responses.txt"
}
openapi_check() {
  if python3 tests/openapi_check.py proto/openapi.yaml "$T/responses.txt" >"$T/oa.out" 2>&1; then ok
  else bad "responses that do not match proto/openapi.yaml:"; cat "$T/oa.out" >&2; fi
}
jcheck() { # jcheck 'python expression over d' DESCRIPTION
  if python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); sys.exit(0 if eval(sys.argv[2]) else 1)' "$T/body" "$1" 2>/dev/null
  then ok; else bad "$2: $(head -c 300 "$T/body")"; fi
}
jget() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$T/body" "$1" 2>/dev/null; }
now_ms() { date +%s%3N; }
model_version() { req "$1" GET /healthz; jget 'd["model_version"]'; }
# wait_version NAME V SECONDS: 0 once NAME serves version V
wait_version() {
  local end=$(( $(now_ms) + $3 * 1000 ))
  while [ "$(now_ms)" -lt "$end" ]; do
    [ "$(model_version "$1")" = "$2" ] && return 0
    sleep 0.05
  done
  return 1
}
# wait_log NAME PATTERN SECONDS
wait_log() {
  local end=$(( $(now_ms) + $3 * 1000 ))
  while [ "$(now_ms)" -lt "$end" ]; do
    grep -qE "$2" "${NLOG[$1]}" && return 0
    sleep 0.05
  done
  return 1
}

# cluster_seed: one store in $SEED (30 titled items, 50 users, the tiny BERT's
# states, a tiny IISAN as version 1) that every node's data directory copies;
# NS / W: the shape of its text states
cluster_seed() {
  local MODEL=tests/golden_encoder/tiny-bert
  python3 - "$T" <<'PY'
import random, sys
d = sys.argv[1]; random.seed(11)
words = "red blue small large glass steel pipette flask beaker scale lamp clamp tube rack".split()
with open(f"{d}/items.tsv", "w") as f:
    for i in range(30): f.write(f"I{i:03d}\t" + " ".join(random.sample(words, 4)) + "\n")
with open(f"{d}/users.tsv", "w") as f:
    for u in range(50):
        f.write(f"U{u:03d}\t" + " ".join(f"I{random.randrange(30):03d}" for _ in range(random.randint(5, 9))) + "\n")
PY
  SEED="$T/seed"
  check "import" -- "$BIN" import --data "$SEED" --items "$T/items.tsv" --users "$T/users.tsv" 2>/dev/null
  check "encode" -- "$BIN" encode --data "$SEED" --model "$MODEL" --quiet
  check "train iisan" -- "$BIN" train --data "$SEED" --model iisan --epochs 1 --r 4 --d 8 \
    --schedule 0,1,2 --json >/dev/null 2>&1
  read -r NS W < <("$BIN" info --data "$SEED" --json | tail -1 | python3 -c '
import json,sys; t=json.load(sys.stdin)["states"]["text"]; print(t["nstates"], t["width"])')
  [ -n "$NS" ] && [ -d "$SEED" ]
}
# die: a step the rest depends on failed: the summary, then exit
die() { echo "$pass passed, $((fail + 1)) failed"; exit 1; }
