#!/usr/bin/env bash
# Static analysis of the library sources: clang-tidy (.clang-tidy) and
# cppcheck.  Zero findings or a non-zero exit.  Needs a configured build
# tree with compile_commands.json (default: build/release).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build/release}
status=0
echo "=== clang-tidy"
# The files this host compiles (the Win32 backend needs <windows.h>; MinGW
# builds it with -Wall -Wextra -Werror, and cppcheck below reads it too).
files=$(ls src/*.c | grep -v '_win32\.c$')
# shellcheck disable=SC2086
clang-tidy --quiet -p "$build" $files 2>/dev/null || status=1
echo "=== cppcheck"
cppcheck --quiet --error-exitcode=1 --inline-suppr \
  --enable=warning,performance,portability \
  --std=c11 -D__GNUC__ -DMS_BUILDING_LIBRARY -I include -I src \
  --suppress=missingIncludeSystem src/ || status=1
[ $status -eq 0 ] && echo "lint: no findings"
exit $status
