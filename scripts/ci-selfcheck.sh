#!/usr/bin/env bash
# Proves that the test setup can fail, the way CI runs it:
#   1. tests/ci_selfcheck (a deliberately failing program that prints the
#      texts the old pass regexes accepted) declared like the project's
#      tests: ctest must FAIL;
#   2. the same test declared with PASS_REGULAR_EXPRESSION: the property
#      check (scripts/check-ctest-props.sh) must refuse it;
#   3. the property check over every build tree given as an argument (each
#      configured already): no test may set PASS_REGULAR_EXPRESSION or
#      WILL_FAIL.
# Prints one "selfcheck passed: ..." line per step (scripts/test.sh counts
# them) and exits non-zero if any step fails.
#   usage: ci-selfcheck.sh [BUILD_DIR...]
set -euo pipefail
cd "$(dirname "$0")/.."
src=tests/ci_selfcheck
status=0

cmake -S "$src" -B build/ci-selfcheck -DMS_SELFCHECK_PASS_REGEX=OFF >/dev/null
cmake --build build/ci-selfcheck >/dev/null
if ctest --test-dir build/ci-selfcheck --no-tests=error \
    > build/ci-selfcheck/ctest.log 2>&1; then
  echo "selfcheck FAILED: ctest passed a test that exits 1:" >&2
  cat build/ci-selfcheck/ctest.log >&2
  status=1
elif ! grep -q 'always_fails .*Failed' build/ci-selfcheck/ctest.log; then
  echo "selfcheck FAILED: ctest failed, but not on always_fails:" >&2
  cat build/ci-selfcheck/ctest.log >&2
  status=1
else
  echo "selfcheck passed: a test that exits non-zero fails ctest"
fi

cmake -S "$src" -B build/ci-selfcheck-regex -DMS_SELFCHECK_PASS_REGEX=ON >/dev/null
if bash scripts/check-ctest-props.sh build/ci-selfcheck-regex 2>/dev/null; then
  echo "selfcheck FAILED: check-ctest-props.sh accepted a pass regex" >&2
  status=1
else
  echo "selfcheck passed: check-ctest-props.sh refuses a pass regex"
fi

for b in "$@"; do
  if bash scripts/check-ctest-props.sh "$b"; then
    echo "selfcheck passed: every test in $b is decided by its exit code"
  else
    status=1
  fi
done
exit $status
