# Helpers of the daemon's integration tests (sourced by tests/test_serve*.sh):
# a temporary directory T, pass/fail counters, the daemon started on a free
# loopback port (start/stop, with $D the data directory and $T/serve.conf its
# configuration), curl (req) and checks of the JSON answer (jcheck, status,
# errcode). Scripts end with: echo "$pass passed, $fail failed".
BIN=${IISAN_BIN:-build/iisan}
T=$(mktemp -d /tmp/iisan-serve-XXXXXX)
PID=""
cleanup() { [ -n "$PID" ] && kill -9 "$PID" 2>/dev/null; rm -rf "$T"; }
trap cleanup EXIT
pass=0; fail=0
ok()  { pass=$((pass+1)); }
bad() { fail=$((fail+1)); echo "FAIL: $*" >&2; }
check() { # check DESCRIPTION -- command...   (passes when the command succeeds)
  local what=$1; shift 2
  if "$@"; then ok; else bad "$what"; fi
}

LOG="$T/serve.log"
sanitizer_check() { # a sanitizer build of the daemon reports into its log
  if grep -qE 'ERROR: (Address|Leak)Sanitizer|runtime error:|WARNING: ThreadSanitizer' "$LOG" 2>/dev/null; then
    bad "sanitizer report in the daemon's log:"; grep -A20 -E 'Sanitizer|runtime error' "$LOG" | head -40 >&2
  fi
}
start() { # start the daemon in the background; sets PID and B (base URL)
  sanitizer_check
  : >"$LOG"
  "$BIN" serve --data "$D" --config "$T/serve.conf" "$@" 2>>"$LOG" &
  PID=$!
  local port=""
  for _ in $(seq 1 200); do
    port=$(sed -n 's/.*event=listening.* port=\([0-9]*\).*/\1/p' "$LOG" | tail -1)
    [ -n "$port" ] && break
    kill -0 "$PID" 2>/dev/null || break
    sleep 0.05
  done
  if [ -z "$port" ]; then bad "daemon did not start"; cat "$LOG" >&2; return 1; fi
  B="http://127.0.0.1:$port"
}
stop() { # SIGTERM and wait; the exit status in STOP_RC
  kill -TERM "$PID"; wait "$PID"; STOP_RC=$?; PID=""
  sanitizer_check
}

# req METHOD PATH [BODY] [curl args...]: status in $S, body in $T/body
req() {
  local m=$1 p=$2; shift 2
  local data=()
  if [ $# -gt 0 ]; then data=(--data-binary "$1"); shift; fi
  [ "$m" = POST ] && data+=(-H 'Content-Type: application/json')
  S=$(curl -s -o "$T/body" -w '%{http_code}' -X "$m" "${data[@]}" "$@" "$B$p")
  # kept for openapi_check (every response is checked against proto/openapi.yaml at the end)
  RESP_N=$((RESP_N + 1)); mkdir -p "$T/responses"; cp "$T/body" "$T/responses/$RESP_N"
  echo "$m $p $S $T/responses/$RESP_N" >>"$T/responses.txt"
}
RESP_N=0
# openapi_check: every recorded response against the spec (one check)
openapi_check() {
  if python3 tests/openapi_check.py proto/openapi.yaml "$T/responses.txt" >"$T/oa.out" 2>&1; then ok
  else bad "responses that do not match proto/openapi.yaml:"; cat "$T/oa.out" >&2; fi
  sed 's/^/    /' "$T/oa.out" | tail -1 >&2
}
# jq-like checks with python: jcheck 'python expression over d' DESCRIPTION
jcheck() {
  if python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); sys.exit(0 if eval(sys.argv[2]) else 1)' "$T/body" "$1" 2>/dev/null
  then ok; else bad "$2: $(head -c 400 "$T/body")"; fi
}
status() { [ "$S" = "$1" ] && ok || bad "$2: status $S, wanted $1: $(head -c 300 "$T/body")"; }
errcode() { status "$1" "$3"; jcheck "d['error']['code'] == '$2' and len(d['error']['message']) > 0" "$3 ($2)"; }

# small_catalogue SEED: $T/items.tsv (40 items, I000..I039) and $T/users.tsv (30 users of
# 6 random items each, drawn with SEED)
small_catalogue() {
  python3 - "$T" "$1" <<'PY'
import random, sys
d = sys.argv[1]; random.seed(int(sys.argv[2]))
with open(f"{d}/items.tsv", "w") as f:
    for i in range(40): f.write(f"I{i:03d}\tItem {i}\n")
with open(f"{d}/users.tsv", "w") as f:
    for u in range(30):
        f.write(f"U{u:03d}\t" + " ".join(f"I{random.randrange(40):03d}" for _ in range(6)) + "\n")
PY
}

# states_catalogue: $T/items.tsv (40 items, I000..I039), $T/users.tsv (60 users of 5 to 9
# random items) and $T/states.safetensors (16-wide random text states, 5 per item)
states_catalogue() {
  python3 - "$T" <<'PY'
import json, random, struct, sys
d = sys.argv[1]; random.seed(3)
with open(f"{d}/items.tsv", "w") as f:
    for i in range(40): f.write(f"I{i:03d}\tItem number {i}\n")
with open(f"{d}/users.tsv", "w") as f:
    for u in range(60):
        f.write(f"U{u:03d}\t" + " ".join(f"I{random.randrange(40):03d}" for _ in range(random.randint(5, 9))) + "\n")
N, S, D = 40, 5, 16
ids = "\n".join(f"I{i:03d}" for i in range(N)).encode()
text = b"".join(struct.pack("<e", random.gauss(0, 1)) for _ in range(N * S * D))
hdr = {"text": {"dtype": "F16", "shape": [N, S, D], "data_offsets": [0, len(text)]},
       "item_ids": {"dtype": "U8", "shape": [len(ids)], "data_offsets": [len(text), len(text) + len(ids)]},
       "__metadata__": {"text_backbone": "test-random-16"}}
h = json.dumps(hdr).encode(); h += b" " * (-len(h) % 8)
open(f"{d}/states.safetensors", "wb").write(struct.pack("<Q", len(h)) + h + text + ids)
PY
}
