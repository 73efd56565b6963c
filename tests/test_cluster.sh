#!/usr/bin/env bash
# Cluster mode (docs/scaling.md), real processes on loopback: a redis-server
# of the test's own (AOF, appendfsync always), one trainer and two replicas
# (A, B), each with its own data directory seeded from one store:
#   1. an interaction written through A is used for that user on B within
#      1 s and is in the trainer's store; an item added through B (with its
#      hidden states) is recommendable on A;
#   2. a retrain on the trainer: both replicas serve the new version within
#      seconds; a rollback: both follow; a corrupted version directory in the
#      repository is refused (they keep serving);
#   4. a new replica joining mid-run serves the current version, with the
#      users and items written before it came; one whose store holds no hidden
#      states serves it from the item table published with the version, as the
#      others do;
#   and the standalone role's admin calls are refused on a replica.
# Ends with "N passed, N failed".
set -u
cd "$(dirname "$0")/.."
source tests/cluster_lib.sh

cluster_seed || die
for n in trainer A B C; do cp -r "$SEED" "$T/d_$n"; done

redis_start || die
node_conf trainer trainer; node_conf A replica; node_conf B replica; node_conf C replica
node_start trainer "$T/d_trainer" || die
check "the trainer takes the lease and publishes its version" -- wait_log trainer 'event=lease_acquired' 10
check "version 1 published" -- wait_log trainer 'event=version_published version=1' 10
check "the repository's CURRENT" -- test "$(cat "$T/repo/CURRENT")" = 1
node_start A "$T/d_A" && node_start B "$T/d_B" || die
check "A serves version 1" -- wait_version A 1 10
check "B serves version 1" -- wait_version B 1 10

# ---- 1. a write through A, used on B within 1 s, in the trainer's store ----
# one process posts to A and polls B (every 5 ms), so the figure is not the shell's
python3 - "${NURL[A]}" "${NURL[B]}" "$TOKEN" >"$T/visible" <<'PY'
import http.client, json, sys, time, urllib.parse
a, b, tok = sys.argv[1:4]
H = {"Authorization": "Bearer " + tok, "Content-Type": "application/json"}
def call(url, m, p, body=None):
    u = urllib.parse.urlparse(url); c = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    c.request(m, p, body, H); r = c.getresponse(); d = r.read(); c.close(); return r.status, d
body = json.dumps([{"user_id": "NEWU", "item_id": f"I00{i}", "timestamp": 100 + i} for i in (1, 2, 3)])
st, d = call(a, "POST", "/interactions", body)
t0 = time.monotonic(); seen = -1
while time.monotonic() - t0 < 3:
    s2, d2 = call(b, "GET", "/users/NEWU")
    if s2 == 200 and json.loads(d2)["length"] == 3: seen = (time.monotonic() - t0) * 1000; break
    time.sleep(0.005)
ack = json.loads(d)
print(st, int(ack.get("accepted", 0) == 3 and ack.get("durable") is True), "%.1f" % seen)
PY
read -r st acked seen <"$T/visible"
check "POST /interactions through A: 200 ($st)" -- test "$st" = 200
check "acknowledged as durable" -- test "$acked" = 1
check "B has the user's three interactions" -- test "$seen" != "-1.0"
check "within 1 s of A's answer (${seen} ms)" -- python3 -c "import sys; sys.exit(not 0 <= $seen < 1000)"
figure "write acknowledged by A visible on B after: ${seen} ms"
req B POST /recommend '{"user_id":"NEWU","k":5}'
[ "$S" = 200 ] && ok || bad "B /recommend for NEWU: $S"
jcheck 'len(d["items"]) == 5 and not {"I001","I002","I003"} & {i["item_id"] for i in d["items"]}' \
  "B uses NEWU's history (excluded from the results)"
req trainer GET /users/NEWU
jcheck 'd["items"] == ["I001","I002","I003"]' "the trainer's store has them, once, in order"
# an unknown item: refused before the bus, nothing stored anywhere
req A POST /interactions '{"user_id":"NEWU","item_id":"NO-SUCH"}'
[ "$S" = 422 ] && ok || bad "unknown item through A: $S"

# ---- 1. an item added through B is recommendable on A ----
python3 - "$NS" "$W" >"$T/item.json" <<'PY'
import json, random, sys
ns, w = int(sys.argv[1]), int(sys.argv[2]); random.seed(5)
print(json.dumps({"item_id": "NEWITEM", "title": "a new flask", "states": {"text": [[round(random.gauss(0, 1), 4) for _ in range(w)] for _ in range(ns)]}}))
PY
req B POST /items "$(cat "$T/item.json")"
[ "$S" = 200 ] && ok || bad "POST /items through B: $S $(head -c 300 "$T/body")"
req A GET /items/NEWITEM
jcheck 'd["in_model"] is True and d["states"]["text"] is True' "A has NEWITEM embedded"
req A POST /recommend '{"history":["NEWITEM","I004"],"k":40,"exclude_history":false}'
jcheck '"NEWITEM" in [i["item_id"] for i in d["items"]] and not d.get("warnings")' \
  "A recommends NEWITEM and takes it in histories"
req trainer GET /items/NEWITEM
jcheck 'd["in_model"] is True' "the trainer has NEWITEM"

# ---- a replica refuses the trainer's work ----
req A POST /admin/retrain '{}'
[ "$S" = 409 ] && ok || bad "retrain on a replica: $S"
jcheck 'd["error"]["code"] == "not_trainer"' "not_trainer"
req A POST /admin/rollback '{}'
[ "$S" = 409 ] && ok || bad "rollback on a replica: $S"

# ---- 2. retrain -> both replicas follow; rollback -> both follow ----
req trainer POST /admin/retrain '{"epochs":1,"tolerance":1.0}'
[ "$S" = 202 ] && ok || bad "retrain on the trainer: $S $(cat "$T/body")"
job=$(jget 'd["job_id"]')
state=""
for _ in $(seq 1 600); do
  req trainer GET "/admin/jobs/$job"; state=$(jget 'd["state"]')
  case "$state" in promoted|failed|not_promoted|rejected) break ;; esac
  sleep 0.1
done
check "the job promoted (state $state)" -- test "$state" = promoted
t0=$(now_ms)
V2=$(model_version trainer)
check "a new version" -- test "$V2" -gt 1
check "A serves version $V2" -- wait_version A "$V2" 10
check "B serves version $V2" -- wait_version B "$V2" 10
figure "promoted version to both replicas: $(( $(now_ms) - t0 )) ms (polled by curl)"
# the same from the daemons' own clocks: promoted (trainer, before it publishes) -> followed
# (each replica), so it includes the publication
lag=$(python3 - "${NLOG[trainer]}" "${NLOG[A]}" "${NLOG[B]}" "$V2" <<'PY'
import datetime, re, sys
def ts(path, pat):
    for l in open(path):
        if re.search(pat, l):
            return datetime.datetime.strptime(l.split()[0][3:], "%Y-%m-%dT%H:%M:%S.%fZ")
t, v = sys.argv[1:4], sys.argv[4]
pub = ts(t[0], f"event=retrain_promoted job=[0-9]+ version={v} ")
fol = [ts(p, f"event=version_followed version={v} ") for p in t[1:]]
print(int(max((f - pub).total_seconds() for f in fol) * 1000) if pub and all(fol) else -1)
PY
)
check "both replicas serve it within 5 s of the promotion (${lag} ms)" -- test "$lag" -ge 0 -a "$lag" -lt 5000
figure "promoted version served by both replicas (daemon clocks, publication included): ${lag} ms"
check "the repository holds it with its manifest" -- test -f "$T/repo/$V2/manifest.json"
req trainer POST /admin/rollback '{}'
[ "$S" = 200 ] && ok || bad "rollback on the trainer: $S $(cat "$T/body")"
t0=$(now_ms)
check "CURRENT points at version 1" -- test "$(cat "$T/repo/CURRENT")" = 1
check "A follows the rollback" -- wait_version A 1 10
check "B follows the rollback" -- wait_version B 1 10
figure "rollback to both replicas: $(( $(now_ms) - t0 )) ms"

# ---- 2. a corrupted version is refused; the replicas keep serving ----
cp -r "$T/repo/$V2" "$T/repo/9"
python3 - "$T/repo/9" <<'PY'
import json, sys
d = sys.argv[1]
m = json.load(open(f"{d}/manifest.json")); m["version"] = 9
json.dump(m, open(f"{d}/manifest.json", "w"))
b = bytearray(open(f"{d}/ckpt.safetensors", "rb").read()); b[len(b) // 2] ^= 0xFF
open(f"{d}/ckpt.safetensors", "wb").write(b)
PY
echo 9 >"$T/repo/CURRENT.tmp" && mv "$T/repo/CURRENT.tmp" "$T/repo/CURRENT"
rcli PUBLISH iisan:versions 9 >/dev/null
check "A refuses version 9" -- wait_log A 'event=version_refused version=9.*sha256 mismatch' 5
check "B refuses version 9" -- wait_log B 'event=version_refused version=9' 5
check "A keeps serving version 1" -- test "$(model_version A)" = 1
req B POST /recommend '{"user_id":"NEWU","k":3}'
[ "$S" = 200 ] && ok || bad "B still serves: $S"
echo 1 >"$T/repo/CURRENT.tmp" && mv "$T/repo/CURRENT.tmp" "$T/repo/CURRENT"
rm -rf "$T/repo/9"

# ---- 4. a new replica joining mid-run ----
req trainer POST /admin/rollback "{\"version\":$V2}"
[ "$S" = 200 ] && ok || bad "roll forward to $V2: $S"
check "A back on $V2" -- wait_version A "$V2" 10
t0=$(now_ms)
node_start C "$T/d_C" || die
check "C serves the current version $V2" -- wait_version C "$V2" 20
figure "new replica serving the current version after start: $(( $(now_ms) - t0 )) ms"
req C GET /users/NEWU
jcheck 'd["items"] == ["I001","I002","I003"]' "C has the interactions written before it came"
req C GET /items/NEWITEM
jcheck 'd["in_model"] is True' "C has the item added before it came"
req C GET /admin/status
jcheck 'd["cluster"]["role"] == "replica" and d["cluster"]["lease_held"] is False' "C's status"

# ---- 4. a replica without hidden states serves the version from its published item table ----
check "a store without states" -- "$BIN" import --data "$T/d_S" --items "$T/items.tsv" \
  --users "$T/users.tsv" 2>/dev/null
node_conf S replica
node_start S "$T/d_S" || die
check "S serves the current version $V2" -- wait_version S "$V2" 20
same=1
for h in '"I001","I002","I003"' '"I010","I020"' '"NEWITEM","I004"' '"I029"'; do
  body="{\"history\":[$h],\"k\":10}"
  req A POST /recommend "$body"; cp "$T/body" "$T/rec_A"
  req S POST /recommend "$body"; cp "$T/body" "$T/rec_S"
  python3 - "$T/rec_A" "$T/rec_S" <<'PY' || same=0
import json, sys
a, s = (json.load(open(f))["items"] for f in sys.argv[1:3])
ok = [x["item_id"] for x in a] == [x["item_id"] for x in s] and \
     all(abs(x["score"] - y["score"]) <= 1e-4 * max(1, abs(x["score"])) for x, y in zip(a, s))
sys.exit(0 if ok and len(a) == 10 else 1)
PY
done
check "S recommends as A does (the trainer's table, no states of its own)" -- test "$same" = 1
node_kill9 S
node_start S "$T/d_S" || die  # a restart loads the pinned version with its table too
check "S restarted serves $V2" -- wait_version S "$V2" 20
req A POST /recommend '{"history":["I010","I020"],"k":10}'; cp "$T/body" "$T/rec_A"
req S POST /recommend '{"history":["I010","I020"],"k":10}'; cp "$T/body" "$T/rec_S"
check "S restarted still recommends as A does" -- python3 -c '
import json, sys
a, s = (json.load(open(f))["items"] for f in sys.argv[1:3])
sys.exit(0 if [x["item_id"] for x in a] == [x["item_id"] for x in s] else 1)' "$T/rec_A" "$T/rec_S"
req S GET /items/NEWITEM
jcheck 'd["in_model"] is True' "S serves the item added before it came"

for n in A B C S trainer; do node_stop "$n"; done
check "the trainer gave its lease up" -- test -z "$(rcli GET iisan:lease)"
openapi_check
echo "$pass passed, $fail failed"
