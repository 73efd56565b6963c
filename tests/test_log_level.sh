#!/usr/bin/env bash
# The daemon's log level threshold (log_level / IISAN_LOG_LEVEL / --log-level, reloadable):
# an unknown level is a configuration error (exit 2); events below the level are dropped, from
# startup or from a SIGHUP on. Ends with "N passed, N failed".
set -u
cd "$(dirname "$0")/.."
source tests/serve_lib.sh
printf 'I1\tone\nI2\ttwo\n' >"$T/items.tsv"
D="$T/d"
check "import" -- "$BIN" import --data "$D" --items "$T/items.tsv" 2>/dev/null
printf 'port = 0\nthreads = 2\n' >"$T/serve.conf"
IISAN_LOG_LEVEL=loud timeout -s KILL 60 "$BIN" serve --data "$D" --config "$T/serve.conf" 2>"$T/err"; rc=$?
[ "$rc" = 2 ] && grep -q "log_level wants debug, info, warn or error, got 'loud'" "$T/err" && ok ||
  bad "IISAN_LOG_LEVEL=loud: exit $rc, $(cat "$T/err")"
# from startup: warn drops every info event (the daemon runs: it answers, nothing is logged)
timeout --preserve-status -s TERM 3 "$BIN" serve --data "$D" --config "$T/serve.conf" --log-level warn 2>"$LOG"; rc=$?
[ "$rc" = 0 ] && ok || bad "--log-level warn: exit $rc"
grep -q 'level=info' "$LOG" && bad "info logged at warn: $(head -3 "$LOG")" || ok
grep -q 'level=warn event=no_model' "$LOG" && ok || bad "a warn event is still logged: $(cat "$LOG")"
# from a SIGHUP on
start || exit 1
req GET /healthz; status 200 "healthz"
grep -q 'level=info event=request' "$LOG" && ok || bad "requests logged at info"
printf 'port = 0\nthreads = 2\nlog_level = "warn"\n' >"$T/serve.conf"
kill -HUP "$PID"; sleep 0.5
n=$(grep -c 'level=info' "$LOG")
req GET /healthz; req GET /healthz
[ "$(grep -c 'level=info' "$LOG")" = "$n" ] && ok || bad "info logged after the reload to warn"
stop
[ "$STOP_RC" = 0 ] && ok || bad "stop: exit $STOP_RC"
echo "$pass passed, $fail failed"
