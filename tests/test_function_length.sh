#!/usr/bin/env bash
# No function of the project's own C / CUDA code is longer than MAX lines (150 by default),
# generated code aside (core/wordpiece_unicode.h). A function starts at a line that begins
# in column 0 with no leading '#', '/', '}' or space and ends with '{' (clang-format's style:
# the signature then its brace), or at such a line that opens a signature whose last line
# (indented) ends with '{', and ends at the next line that is exactly '}'. No exception:
# prints "file:line name lines" for each one over, then "N passed, N failed" (one check per
# file). Run by make test.
set -u
cd "$(dirname "$0")/.."
MAX=${MAX:-150}
pass=0; fail=0
for f in $(git ls-files '*.c' '*.h' '*.cu' '*.cuh' | grep -v '^core/wordpiece_unicode\.h$'); do
  out=$(awk -v max="$MAX" -v file="$f" '
    /^[A-Za-z_].*\{$/ && !/^(typedef|struct|enum|union|static const|const|extern)[^(]*$/ && !/=/ {
      if (start == 0) { start = NR; sig = $0 }
      pend = 0
      next
    }
    # a signature over several lines: its first line opens the parenthesis, the last one ends
    # with the brace
    /^[A-Za-z_][^=;]*\([^;]*$/ && !/^(typedef|struct|enum|union|extern)/ { if (start == 0) { pend = NR; psig = $0 }; next }
    pend && /^[ \t].*\{$/ { start = pend; sig = psig; pend = 0; next }
    pend && (/;$/ || /^$/ || /^[^ \t]/) { pend = 0 }
    /^}/ { if (start) { n = NR - start + 1; if (n > max) { name = sig; sub(/\(.*/, "", name); k = split(name, w, /[ *]+/); printf "%s:%d %s %d lines\n", file, start, w[k], n } start = 0 } }
  ' "$f")
  if [ -n "$out" ]; then echo "$out"; fail=$((fail+1)); else pass=$((pass+1)); fi
done
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
