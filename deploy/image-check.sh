#!/bin/bash
# Checks a built image from the inside, with only what the image holds (bash, coreutils,
# iisan, iisan-healthcheck): run it with any engine, e.g.
#   docker run --rm --entrypoint /bin/bash -v "$PWD/deploy/image-check.sh:/check.sh:ro" iisand /check.sh
#   buildah run --isolation chroot --network host -v "$PWD/deploy/image-check.sh:/check.sh:ro" \
#     "$(buildah from iisand)" -- /bin/bash /check.sh
# It makes a small store in /tmp (random items and users), then: the binary's libraries all
# resolve, it runs as a non-root user, the data directory is its own and 0700, `iisan serve`
# starts with the image's configuration, is unhealthy to the health check without a model,
# healthy with one, answers /recommend, and exits 0 on SIGTERM.
# Ends with "N passed, N failed".
set -u
pass=0; fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*"; }
T=$(mktemp -d /tmp/image-check-XXXXXX)
PORT=18080
PID=""
trap '[ -n "$PID" ] && kill -9 "$PID" 2>/dev/null; rm -rf "$T"' EXIT

# get PATH: one HTTP/1.1 request on loopback; status line in $S, whole answer in $T/answer
get() {
  local method=$1 path=$2 body=${3:-}
  : >"$T/answer"
  exec 3<>"/dev/tcp/127.0.0.1/$PORT" || { S=none; return; }
  printf '%s %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s' \
    "$method" "$path" "${#body}" "$body" >&3
  cat <&3 >"$T/answer"
  exec 3<&-
  S=$(head -n 1 "$T/answer" | cut -d' ' -f2)
}
serve() { # the daemon as the image starts it (its config file and IISAN_* variables)
  IISAN_DATA=$T/store IISAN_PORT=$PORT iisan serve 2>"$T/run.log" &
  PID=$!
  for _ in $(seq 1 100); do
    grep -q 'event=listening' "$T/run.log" 2>/dev/null && return 0
    kill -0 "$PID" 2>/dev/null || break
    sleep 0.1
  done
  bad "the daemon did not start: $(tail -n 3 "$T/run.log")"
  cat "$T/run.log" >>"$T/log"
  return 1
}
stop() {
  kill -TERM "$PID"; wait "$PID"; local rc=$?; PID=""
  cat "$T/run.log" >>"$T/log"
  [ "$rc" = 0 ] && ok || bad "SIGTERM: exit $rc"
}

bin=$(command -v iisan)
if ldd "$bin" | grep -q 'not found'; then bad "missing libraries: $(ldd "$bin" | grep 'not found')"; else ok; fi
[ "$(id -u)" != 0 ] && ok || bad "runs as root"
data=${IISAN_DATA:-/var/lib/iisan}
[ "$(stat -c '%u %a' "$data")" = "$(id -u) 700" ] && ok || bad "$data: $(stat -c 'owner %u mode %a' "$data")"
iisan --version >/dev/null 2>&1 && ok || bad "iisan --version"

for i in $(seq 0 29); do printf 'I%03d\tItem number %d\n' "$i" "$i"; done >"$T/items.tsv"
for u in $(seq 0 39); do
  printf 'U%03d\t' "$u"
  for _ in 1 2 3 4 5 6; do printf 'I%03d ' $((RANDOM % 30)); done
  echo
done >"$T/users.tsv"
iisan import --data "$T/store" --items "$T/items.tsv" --users "$T/users.tsv" >/dev/null 2>&1 &&
  ok || bad "iisan import"

if serve; then
  get GET /livez; [ "$S" = 200 ] && ok || bad "/livez without a model: $S"
  get GET /readyz; [ "$S" = 503 ] && ok || bad "/readyz without a model: $S"
  IISAN_PORT=$PORT iisan-healthcheck 2>/dev/null && bad "healthy without a model" || ok
  stop
fi
iisan train --data "$T/store" --model sasrec-id --epochs 1 --d 8 >/dev/null 2>&1 && ok || bad "iisan train"
if serve; then
  IISAN_PORT=$PORT iisan-healthcheck && ok || bad "unhealthy with a model"
  get POST /recommend '{"history":["I001","I002"],"k":3}'
  [ "$S" = 200 ] && grep -q '"model_version": *1' "$T/answer" && ok || bad "/recommend: $(cat "$T/answer")"
  stop
fi
grep -q 'level=error' "$T/log" && bad "errors in the log: $(grep 'level=error' "$T/log")" || ok
echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
