#!/usr/bin/env bash
# Fails if any test in the given configured build trees could pass whatever
# its exit code: PASS_REGULAR_EXPRESSION makes CTest ignore the exit code,
# WILL_FAIL inverts it.  Lists each tree's tests with
# `ctest --show-only=json-v1`; a tree with no tests is an error too.
#   usage: check-ctest-props.sh BUILD_DIR...
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 BUILD_DIR..." >&2; exit 2; }
status=0
list=$(mktemp)
trap 'rm -f "$list"' EXIT
for b in "$@"; do
  if ! ctest --test-dir "$b" --show-only=json-v1 > "$list"; then
    echo "check-ctest-props: $b: ctest cannot list the tests" >&2
    status=1
    continue
  fi
  /usr/bin/python3 - "$b" "$list" <<'PY' || status=1
import json, sys
tree, path = sys.argv[1], sys.argv[2]
tests = json.load(open(path)).get("tests", [])
bad = []
for t in tests:
    for p in t.get("properties", []):
        if p["name"] in ("PASS_REGULAR_EXPRESSION", "WILL_FAIL") and p["value"]:
            bad.append(f'{t["name"]} sets {p["name"]}')
if not tests:
    sys.exit(f"check-ctest-props: {tree}: no tests")
for b in bad:
    print(f"check-ctest-props: {tree}: {b}: the exit code would not decide",
          file=sys.stderr)
if bad:
    sys.exit(1)
print(f"check-ctest-props: {tree}: {len(tests)} tests, each decided by its exit code")
PY
done
exit $status
