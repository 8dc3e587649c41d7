#!/usr/bin/env bash
# Installs the built library into a scratch prefix, then builds and runs a
# consumer against the installed copy: with pkg-config (shared and static)
# and with find_package (shared and static targets).
set -euo pipefail
build=$1 src=$2 work=$3
cmake=${CMAKE:-cmake}
rm -rf "$work"
mkdir -p "$work"
prefix="$work/prefix"
"$cmake" --install "$build" --prefix "$prefix" >/dev/null

libdir=$(dirname "$(find "$prefix" -name modelshare.pc | head -n1)")/..
export PKG_CONFIG_PATH="$libdir/pkgconfig"
test -f "$prefix/include/modelshare.h"
test -L "$libdir/libmodelshare.so.1"
test -f "$libdir/libmodelshare.a"
# Only the public header is installed.
[ "$(find "$prefix/include" -type f | wc -l)" -eq 1 ]

# The public header needs no cJSON: its include dir must not reach users.
if pkg-config --cflags modelshare | grep -q cjson; then
  echo "pkg-config --cflags modelshare leaks cJSON: $(pkg-config --cflags modelshare)" >&2
  exit 1
fi

cc=${CC:-cc}
# shellcheck disable=SC2046
"$cc" -std=c11 -Wall -Wextra -Werror "$src/consumer.c" -o "$work/pc_shared" \
  $(pkg-config --cflags --libs modelshare) -Wl,-rpath,"$libdir"
"$work/pc_shared"
# shellcheck disable=SC2046
"$cc" -std=c11 -Wall -Wextra -Werror "$src/consumer.c" -o "$work/pc_static" \
  $(pkg-config --cflags modelshare) "$libdir/libmodelshare.a" \
  $(pkg-config --libs-only-l --static modelshare | sed 's/-lmodelshare//')
"$work/pc_static"
# The static consumer must not depend on the shared library.
! ldd "$work/pc_static" | grep -q modelshare

"$cmake" -S "$src" -B "$work/cmake-build" -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
"$cmake" --build "$work/cmake-build" >/dev/null
"$work/cmake-build/consumer_shared"
"$work/cmake-build/consumer_static"
# Nor through the CMake package: no cJSON include dir on any compile line.
if grep -rq cjson "$work"/cmake-build/CMakeFiles/consumer_*.dir/flags.make; then
  echo "the CMake package leaks cJSON's include dir" >&2
  exit 1
fi

# The Python package, imported from the installed copy through PYTHONPATH,
# finds the installed library by itself (no MODELSHARE_LIBRARY).
python=/usr/bin/python3
if "$python" -c "import numpy" 2>/dev/null; then
  init=$(find "$prefix" -path '*/dist-packages/modelshare/__init__.py')
  test -n "$init"
  test -f "$(dirname "$init")/_install.py"
  pypath=$(dirname "$(dirname "$init")")
  env -u MODELSHARE_LIBRARY PYTHONPATH="$pypath" PYTHONDONTWRITEBYTECODE=1 \
    "$python" "$src/consumer.py" "$prefix"
  about=$(env -u MODELSHARE_LIBRARY PYTHONPATH="$pypath" \
    PYTHONDONTWRITEBYTECODE=1 "$python" -m modelshare)
  grep -q "found by:  install prefix" <<<"$about"
else
  echo "install consumer: no $python with numpy, Python package not checked"
fi

# The worker program: installed, and it runs from the prefix (it finds the
# installed library through its $ORIGIN rpath, not the build tree's).
worker="$prefix/bin/modelshare-worker"
test -x "$worker"
help=$(env -u LD_LIBRARY_PATH "$worker" --help)
grep -q "usage: modelshare-worker --endpoint PATH" <<<"$help"
grep -q "$prefix/.*libmodelshare.so.1" <<<"$(ldd "$worker")"

echo "install consumer: ok"
