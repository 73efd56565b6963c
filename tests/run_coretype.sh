#!/usr/bin/env bash
# Runs test programs (tests/run_tests.sh) with OpenBLAS forced to a core type other than the
# host's: Haswell, or Sandybridge where the host's own is Haswell (IISAN_CORETYPE overrides).
# GEMM kernels differ between core types, so a test that holds only on the host's kernels
# fails here (docs/gpu.md, tolerances). The library is asked which core it took; one built
# without DYNAMIC_ARCH cannot switch, which is said, and nothing runs.
set -u
cd "$(dirname "$0")/.."
# the OpenBLAS the programs load: from the first test program, or the binary the scripts drive
elf=${IISAN_BIN:-build/iisan}
for t in "$@"; do case $t in *.sh) ;; *) elf=$t; break ;; esac; done
lib=$(ldd "$elf" | awk '/libopenblas/ {print $3; exit}')
corename() {
  python3 -c 'import ctypes, sys
l = ctypes.CDLL(sys.argv[1]); l.openblas_get_corename.restype = ctypes.c_char_p
print(l.openblas_get_corename().decode())' "$lib"
}
host=$(env -u OPENBLAS_CORETYPE bash -c "$(declare -f corename); lib='$lib'; corename")
want=${IISAN_CORETYPE:-Haswell}
[ -z "${IISAN_CORETYPE:-}" ] && [ "$host" = "$want" ] && want=Sandybridge
got=$(OPENBLAS_CORETYPE=$want corename)
if [ "$got" != "$want" ]; then
  echo "OpenBLAS ($lib) ignores OPENBLAS_CORETYPE=$want (it reports $got): second core type not run"
  exit 0
fi
echo "OpenBLAS core type $want (the host's: $host)"
OPENBLAS_CORETYPE=$want exec tests/run_tests.sh "$@"
