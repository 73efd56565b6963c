#!/usr/bin/env bash
# Installs the Debian packages iisan builds against (run as root, or with sudo
# available). Safe to run again: apt-get skips what is installed.
set -euo pipefail
pkgs=(build-essential pkg-config libopenblas-dev liblmdb-dev lmdb-utils libjansson-dev valgrind)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then echo "install-deps: all present"; exit 0; fi
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "install-deps: installed ${missing[*]}"
