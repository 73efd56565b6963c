#!/bin/sh
# Prints the Debian packages that hold the shared libraries BINARY links directly
# (its ELF NEEDED entries), one a line: what a runtime image has to install
# (deploy/Dockerfile). Fails naming a library that no package holds.
set -eu
bin=${1:?usage: runtime-packages.sh BINARY}
libs=$(readelf -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
map=$(ldd "$bin")
for lib in $libs; do
  path=$(printf '%s\n' "$map" | awk -v l="$lib" '$1 == l { print $3 }')
  [ -n "$path" ] || { echo "runtime-packages: $lib: not found (ldd $bin)" >&2; exit 1; }
  real=$(readlink -f "$path")
  pkg=""
  # dpkg knows a file under the path its package ships it at: /lib or /usr/lib (merged /usr)
  for p in "$path" "$real" "${real#/usr}" "/usr$path"; do
    pkg=$(dpkg -S "$p" 2>/dev/null | head -n 1 | cut -d: -f1) && [ -n "$pkg" ] && break
  done
  [ -n "$pkg" ] || { echo "runtime-packages: $lib ($path): in no Debian package" >&2; exit 1; }
  echo "$pkg"
done | sort -u
