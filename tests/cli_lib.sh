# Helpers of the command-line tests (sourced by tests/test_cli.sh, test_encode.sh,
# test_encode_images.sh): with T the test's temporary directory, pass/fail
# counters and checks of a command's exit status, output and JSON last line.
# Scripts end with: echo "$pass passed, $fail failed".
pass=0; fail=0
ok()   { pass=$((pass+1)); }
bad()  { fail=$((fail+1)); echo "FAIL: $*" >&2; }
expect() { # expect CODE DESCRIPTION -- command...   (stdout in $T/out, stderr in $T/err)
  local code=$1 what=$2; shift 3
  "$@" >"$T/out" 2>"$T/err"; local rc=$?
  if [ "$rc" -eq "$code" ]; then ok; else bad "$what: exit $rc, wanted $code"; sed 's/^/    /' "$T/err" >&2; fi
}
has() { # has FILE PATTERN DESCRIPTION
  if grep -q -- "$2" "$1"; then ok; else bad "$3: '$2' not in output"; sed 's/^/    /' "$1" >&2; fi
}
hasnt() { if grep -q -- "$2" "$1"; then bad "$3: '$2' in output"; else ok; fi; }
# a field of the JSON object on the last line of $T/out
json_field() { python3 -c 'import json,sys; d=json.loads(sys.stdin.read().strip().splitlines()[-1]); print(d[sys.argv[1]])' "$1" <"$T/out"; }
eq() { if [ "$1" = "$2" ]; then ok; else bad "$3: '$1', wanted '$2'"; fi; }
