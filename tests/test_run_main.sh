#!/usr/bin/env bash
# The README's main command as a newcomer meets it: deploy/run_main.sh (what
# `make run` runs) on the bundled Scientific data, shortened to 2 epochs, must
# import, train, evaluate and end with the daemon up; then the README's own
# curl (taken from README.md, port substituted) must get recommendations.
set -u
cd "$(dirname "$0")/.."
pass=0; fail=0
ok()  { pass=$((pass+1)); }
bad() { fail=$((fail+1)); echo "FAIL: $*" >&2; }
T=$(mktemp -d /tmp/iisan-run-XXXXXX)
PORT=$((20000 + RANDOM % 20000))
cleanup() { [ -n "${pid:-}" ] && kill -TERM "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$T"; }
trap cleanup EXIT
IISAN_DATA="$T/sci" EPOCHS=2 PORT=$PORT deploy/run_main.sh >"$T/out" 2>"$T/err" &
pid=$!
for _ in $(seq 1 600); do
  grep -q "event=listening" "$T/err" 2>/dev/null && break
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.2
done
grep -q "event=listening" "$T/err" && ok || { bad "the daemon did not come up"; tail -20 "$T/err" >&2; }
grep -q "popularity: test HR@10" "$T/err" && ok || bad "no popularity figures"
grep -q "sasrec-id version 1: test HR@10" "$T/err" && ok || bad "no SASRec-ID test figures"
# the README's curl, verbatim but for the port
cmd=$(awk '/^curl -s -X POST http:\/\/127.0.0.1:8080\/recommend/{p=1} p{print} p&&!/\\$/{exit}' README.md |
      sed "s/8080/$PORT/")
[ -n "$cmd" ] && ok || bad "README.md has no /recommend curl"
resp=$(bash -c "$cmd")
python3 - "$resp" <<'PY' && ok || bad "README curl answered: $resp"
import json, sys
d = json.loads(sys.argv[1])
assert len(d["items"]) == 5 and d["model_version"] == 1
assert all(isinstance(i["item_id"], str) and isinstance(i["score"], float) for i in d["items"])
PY
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
