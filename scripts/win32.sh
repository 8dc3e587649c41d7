#!/usr/bin/env bash
# The Win32 build, proven under Wine:
#   1. fetches the Debian source packages of libuv, cJSON and cmocka with
#      apt-get source, through a private apt configuration (a deb-src entry
#      for the Debian archive; the system's apt setup is not touched);
#   2. cross-builds them with MinGW-w64 (cmake/mingw-w64-x86_64.cmake) into
#      build/win32/deps, cached: a rebuild skips this step;
#   3. cross-builds libmodelshare.dll (+ import library) and its tests;
#   4. runs the tests under wine64 through ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$(pwd)
w=$top/build/win32
tc=$top/cmake/mingw-w64-x86_64.cmake
jobs=$(nproc 2>/dev/null || echo 2)

bash scripts/install-deps.sh # MinGW-w64, wine64, dpkg-dev among the rest

deps=$w/deps
stamp="$deps/.built-v2" # bump when the way dependencies are built changes
if [ ! -f "$stamp" ]; then
  echo "=== win32: dependencies from Debian sources"
  src=$w/src
  rm -rf "$src" "$deps"
  mkdir -p "$src/apt/lists/partial" "$src/apt/cache/archives/partial"
  suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
  echo "deb-src http://deb.debian.org/debian $suite main" > "$src/apt/sources.list"
  apt_opts=(-o "Dir::Etc::SourceList=$src/apt/sources.list"
            -o Dir::Etc::SourceParts=/dev/null
            -o "Dir::State::Lists=$src/apt/lists"
            -o "Dir::Cache=$src/apt/cache")
  apt-get "${apt_opts[@]}" update -qq
  (cd "$src" && apt-get "${apt_opts[@]}" source -qq libuv1 cjson cmocka >/dev/null 2>&1)
  build_dep() { # source dir, cmake args...
    local d=$1; shift
    cmake -S "$d" -B "$d/build-mingw" -DCMAKE_TOOLCHAIN_FILE="$tc" \
      -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX="$deps" "$@" >/dev/null
    cmake --build "$d/build-mingw" -j "$jobs" >/dev/null
    cmake --install "$d/build-mingw" >/dev/null
  }
  build_dep "$(ls -d "$src"/libuv1-*/)" -DLIBUV_BUILD_TESTS=OFF -DLIBUV_BUILD_BENCH=OFF
  # CJSON_HIDE_SYMBOLS: without it cJSON marks every function dllexport,
  # and libmodelshare.dll would export all of cJSON.
  build_dep "$(ls -d "$src"/cjson-*/)" -DENABLE_CJSON_TEST=OFF -DBUILD_SHARED_LIBS=OFF \
    -DENABLE_CJSON_UTILS=OFF -DCMAKE_C_FLAGS=-DCJSON_HIDE_SYMBOLS
  build_dep "$(ls -d "$src"/cmocka-*/)" -DWITH_STATIC_LIB=ON -DWITH_EXAMPLES=OFF -DUNIT_TESTING=OFF
  # DLPack is one header (Debian's libdlpack-dev), the same for every target.
  mkdir -p "$deps/include/dlpack"
  cp /usr/include/dlpack/dlpack.h "$deps/include/dlpack/"
  touch "$stamp"
fi

echo "=== win32: libmodelshare.dll and tests"
cmake -S . -B "$w/build" -DCMAKE_TOOLCHAIN_FILE="$tc" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DMS_WIN32_DEPS="$deps" -DCMAKE_PREFIX_PATH="$deps" \
  -DCMAKE_CROSSCOMPILING_EMULATOR="$top/scripts/wine-run.sh" >/dev/null
cmake --build "$w/build" -j "$jobs"

# Only ms_* leaves the DLL, as on ELF (scripts/abi-check.sh).
exports=$(x86_64-w64-mingw32-objdump -p "$w/build/libmodelshare.dll" |
  sed -n '/\[Ordinal\/Name Pointer\] Table/,/^$/p' | awk 'NR > 1 && NF {print $NF}')
if echo "$exports" | grep -v '^ms_' | grep -q . || echo "$exports" | grep -q '^ms__'; then
  echo "win32: libmodelshare.dll exports more than the ms_* API:"
  echo "$exports" | grep -v '^ms_' | head
  exit 1
fi
echo "win32: libmodelshare.dll exports $(echo "$exports" | wc -l) symbols, all ms_*"

echo "=== win32: tests under Wine"
export WINEPREFIX=$w/wineprefix
export WINEPATH="$(winepath -w "$w/build" 2>/dev/null || echo "Z:${w//\//\\}\\build")"
mkdir -p "$WINEPREFIX"
"$top/scripts/wine-run.sh" wineboot -i >/dev/null 2>&1 || true
ctest --test-dir "$w/build" --output-on-failure --no-tests=error -j 1 | tee "$w/ctest.log"
