#!/usr/bin/env bash
# The README's main command as a newcomer meets it: deploy/run_main.sh (what `make run` runs) on
# the bundled Scientific data, shortened to stay bounded under ASan: 1,500 of its users (those
# of the README's curl items among them) with the titles of their items, the tiny committed BERT
# (tests/golden_encoder/tiny-bert) in place of all-MiniLM-L6-v2 (nothing is downloaded), and
# training stopped after 30 optimiser steps. The first run must import, encode every title, train IISAN, score it under both
# evaluation rules and end with the daemon up, answering the README's own curl (port
# substituted) with IISAN; a second run with nothing changed must reuse the import, the states
# and the trained version, say so, and reach the serving line without training.
set -u
cd "$(dirname "$0")/.."
pass=0; fail=0
ok()  { pass=$((pass+1)); }
bad() { fail=$((fail+1)); echo "FAIL: $*" >&2; }
T=$(mktemp -d /tmp/iisan-run-XXXXXX)
PORT=$((20000 + RANDOM % 20000))
pid=""
cleanup() { [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$T"; }
trap cleanup EXIT
SCI=../shared/data/amazon/scientific
mkdir -p "$T/src"
{ grep -E 'B0098MLBAO|B00E8JOCOE|B00S730YWG' "$SCI/users.tsv"; head -1500 "$SCI/users.tsv"; } |
  awk -F'\t' '!seen[$1]++' >"$T/src/users.tsv"
cut -f2 "$T/src/users.tsv" | tr ' ' '\n' | sort -u >"$T/src/ids"
awk -F'\t' 'NR == FNR { want[$1] = 1; next } $1 in want' "$T/src/ids" "$SCI/items.tsv" \
  >"$T/src/items.tsv"
export IISAN_DATA="$T/sci" IISAN_SRC="$T/src" IISAN_MINILM=tests/golden_encoder/tiny-bert \
  MAX_STEPS=30 PORT

# start the main job; wait for the daemon's listening line (or the job's end)
start() { # $1: log name
  deploy/run_main.sh >"$T/$1.out" 2>"$T/$1.err" &
  pid=$!
  for _ in $(seq 1 3000); do
    grep -q "event=listening" "$T/$1.err" 2>/dev/null && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
}
stop() { kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; pid=""; }

t0=$SECONDS
start first
t1=$((SECONDS - t0))
E="$T/first.err"
grep -q "event=listening" "$E" && ok || { bad "the daemon did not come up"; tail -30 "$E" >&2; }
grep -q "popularity: test HR@10" "$E" && ok || bad "no popularity figures"
grep -q "items encoded\|tiny-bert" "$E" && ok || bad "no encoding step"
grep -q "^epoch " "$E" && ok || bad "no training epoch line"
grep -q "iisan version 1: test HR@10.*excluded: history;" "$E" && ok ||
  bad "no IISAN test figures under the version-2 rule"
grep -q "iisan version 1: test HR@10.*excluded: history-but-target;" "$E" && ok ||
  bad "no IISAN test figures under the version-1 rule"
grep -q "6/6 serving iisan version 1" "$E" && ok || bad "the serving line does not name IISAN version 1"
# the README's curl, verbatim but for the port
cmd=$(awk '/^curl -s -X POST http:\/\/127.0.0.1:8080\/recommend/{p=1} p{print} p&&!/\\$/{exit}' README.md |
      sed "s/8080/$PORT/")
[ -n "$cmd" ] && ok || bad "README.md has no /recommend curl"
resp=$(bash -c "$cmd")
python3 - "$resp" <<'PY' && ok || bad "README curl answered: $resp"
import json, sys
d = json.loads(sys.argv[1])
assert len(d["items"]) == 5 and d["model_version"] == 1 and d["model"] == "iisan", d
assert all(isinstance(i["item_id"], str) and isinstance(i["score"], float) for i in d["items"])
PY
stop

# the second run: nothing changed, so nothing is imported, encoded or trained again
t0=$SECONDS
start second
t2=$((SECONDS - t0))
E="$T/second.err"
grep -q "event=listening" "$E" && ok || { bad "the daemon did not come up again"; tail -30 "$E" >&2; }
grep -q "already imported" "$E" && ok || bad "the second run imported again"
grep -q "already have .*states (tiny-bert); nothing to do" "$E" && ok || bad "the second run encoded again"
grep -q "reusing version 1" "$E" && ok || bad "the second run did not reuse version 1"
grep -q "^epoch " "$E" && bad "the second run trained" || ok
grep -q "excluded: history-but-target" "$E" && ok || bad "the second run does not show the figures"
resp=$(bash -c "$cmd")
python3 -c 'import json,sys; d=json.loads(sys.argv[1]); assert d["model"] == "iisan" and d["model_version"] == 1' \
  "$resp" && ok || bad "second run's answer: $resp"
stop
echo "  first run reached the serving line in ${t1} s, the second in ${t2} s" >&2
[ "$t2" -lt "$t1" ] && ok || bad "the second run (${t2} s) was not quicker than the first (${t1} s)"
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
