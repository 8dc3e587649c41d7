#!/usr/bin/env bash
# Installs every Debian package libmodelshare needs to build, test and bench.
# Idempotent: when everything is present it only runs dpkg-query and exits.
set -euo pipefail

pkgs=(
  build-essential cmake pkg-config git
  libuv1-dev libcjson-dev libcmocka-dev libbenchmark-dev libdlpack-dev
  clang libclang-rt-14-dev libfuzzer-14-dev valgrind
  abigail-tools cppcheck clang-tidy
  pocketsphinx-en-us libpocketsphinx-dev espeak-ng sox
  python3 python3-numpy
  gcc-mingw-w64-x86-64 g++-mingw-w64-x86-64 wine64 dpkg-dev
)

missing=()
for p in "${pkgs[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [ "$status" = "install ok installed" ] || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "install-deps: installing ${missing[*]}" >&2
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
