#!/usr/bin/env bash
# Static analysis of the library sources: clang-tidy (.clang-tidy) and
# cppcheck.  Zero findings or a non-zero exit.  Needs a configured build
# tree with compile_commands.json (default: build/release).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build/release}
status=0
echo "=== clang-tidy"
clang-tidy --quiet -p "$build" src/*.c 2>/dev/null || status=1
echo "=== cppcheck"
cppcheck --quiet --error-exitcode=1 --inline-suppr \
  --enable=warning,performance,portability \
  --std=c11 -D__GNUC__ -DMS_BUILDING_LIBRARY -I include -I src \
  --suppress=missingIncludeSystem src/ || status=1
[ $status -eq 0 ] && echo "lint: no findings"
exit $status
