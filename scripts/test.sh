#!/usr/bin/env bash
# Builds everything and runs every test:
#   - a release build and all its suites (with the ABI guard and the
#     install check), then clang-tidy and cppcheck over src/;
#   - an ASan+UBSan build of all suites (LeakSanitizer included);
#   - a ThreadSanitizer build of the multi-threaded suites;
#   - the Win32 build (MinGW-w64, dependencies from Debian sources) and its
#     suites under Wine;
#   - every libFuzzer target, sharing MS_FUZZ_SECONDS seconds (default 240);
#   - the CI self-check (scripts/ci-selfcheck.sh): a deliberately failing
#     test must make ctest fail, and no test in any build tree may set
#     PASS_REGULAR_EXPRESSION or WILL_FAIL.
# Exits non-zero on any failure.  Build trees go to build/<variant>.  The
# summary counts what ran and passed: ctest's own totals, one per lint
# step, one per fuzz target that fuzz.sh reports as passed, one per
# self-check step.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh

jobs=$(nproc 2>/dev/null || echo 2)
passed=0
# Adds the number of lines of file $2 that match pattern $1 to $passed.
count() {
  local n
  n=$(grep -c -E "$1" "$2" || true)
  passed=$((passed + n))
}
# Adds ctest's "N tests passed" total from the log $1.
count_ctest() {
  local n
  n=$(sed -n 's/.*tests passed, 0 tests failed out of \([0-9]*\).*/\1/p' "$1")
  passed=$((passed + ${n:-0}))
}
variant() { # name, ctest arguments..., -- cmake arguments...
  local name=$1; shift
  local ctest_args=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do ctest_args+=("$1"); shift; done
  shift
  echo "=== $name build"
  cmake -S . -B "build/$name" -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >/dev/null
  cmake --build "build/$name" -j "$jobs"
  echo "=== $name tests"
  ctest --test-dir "build/$name" --output-on-failure --no-tests=error \
    -j "$jobs" "${ctest_args[@]}" | tee "build/$name/ctest.log"
  count_ctest "build/$name/ctest.log"
}

variant release --
echo "=== static analysis"
# lint.sh prints "=== <tool>" per step and exits non-zero on any finding.
bash scripts/lint.sh build/release | tee build/release/lint.log
count '^=== ' build/release/lint.log
# Sanitizers: every suite except the install check and the Python test
# (both load the instrumented library into uninstrumented programs).
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  variant asan -LE 'install|python' -- -DMS_SANITIZE=address
# ThreadSanitizer: the multi-threaded suites.
TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
  variant tsan -L 'registry|shm|channel' -LE python -- -DMS_SANITIZE=thread \
  -DMS_BUILD_EXAMPLES=OFF
bash scripts/win32.sh
count_ctest build/win32/ctest.log
echo "=== fuzzing"
bash scripts/fuzz.sh | tee build/fuzz.log
count '^fuzz target passed: ' build/fuzz.log
echo "=== CI self-check"
bash scripts/ci-selfcheck.sh build/release build/asan build/tsan build/win32/build |
  tee build/ci-selfcheck.log
count '^selfcheck passed: ' build/ci-selfcheck.log
echo "=== all test variants passed"
echo "test.sh: $passed passed, 0 failed"
