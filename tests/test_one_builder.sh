#!/usr/bin/env bash
# One path from a store to a ready model (core/session.h): no code of the project's own calls
# model_create, dataset_build or states_resident_create outside core/session.c (the tests and
# benchmarks under tests/ aside); in each one's own .c and .h the name appears once, as its
# definition and its declaration. A second builder, say a command that makes its model by
# hand again, fails here naming the line. Prints "N passed, N failed" (one check per
# function). Run by make test.
set -u
cd "$(dirname "$0")/.."
pass=0; fail=0
check() { # function, its home (core/NAME without .c / .h)
  local fn=$1 home=$2 out bad=0
  out=$(git grep -n -E "\b$fn\(" -- '*.c' '*.h' '*.cu' '*.cuh' ':!core/session.c' ':!tests/' \
          ":!$home.c" ":!$home.h")
  if [ -n "$out" ]; then echo "$fn called outside core/session.c:"; echo "$out"; bad=1; fi
  for f in "$home.c" "$home.h"; do
    local n; n=$(grep -c -E "\b$fn\(" "$f")
    if [ "$n" != 1 ]; then echo "$f: $fn appears $n times, expected once (its own)"; bad=1; fi
  done
  if [ $bad = 0 ]; then pass=$((pass+1)); else fail=$((fail+1)); fi
}
check model_create core/model
check dataset_build core/dataset
check states_resident_create core/resident
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
