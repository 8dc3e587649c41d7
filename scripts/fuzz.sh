#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan+UBSan) and runs them from the
# committed seeds in tests/fuzz/corpus/<target>/.  MS_FUZZ_SECONDS is the
# total budget (default 240), shared evenly among the targets, so adding a
# target does not lengthen CI.  Inputs go up to 1 MiB (-max_len), and any
# input slower than -timeout seconds is a finding: a 1 MiB valid input takes
# milliseconds even under ASan, so only super-linear work gets near it.  Any
# crash, leak, timeout or sanitizer report fails; the reproducer is kept in
# build/fuzz/artifacts/.  Add each fixed crasher to the seed corpus.
set -euo pipefail
cd "$(dirname "$0")/.."

# The targets: tests/fuzz/fuzz_<name>.c (CMake builds every such file) with
# seeds in tests/fuzz/corpus/<name>/.  To add one, add its name here.
targets=(safetensors config_json descriptor region_header channel_header
  image_index worker_frame)

for f in tests/fuzz/fuzz_*.c; do # a target left out of the list is an error
  name=${f#tests/fuzz/fuzz_}; name=${name%.c}
  [[ " ${targets[*]} " == *" $name "* ]] ||
    { echo "scripts/fuzz.sh: $f is not in the targets list" >&2; exit 2; }
done

total=${MS_FUZZ_SECONDS:-240}
secs=$(( total / ${#targets[@]} ))
(( secs >= 1 )) || secs=1
max_len=1048576 # 1 MiB
timeout=5       # seconds per input (a valid 1 MiB config takes ~2 s under ASan)

CC=clang CXX=clang++ cmake -S . -B build/fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DMS_FUZZ=ON -DMS_BUILD_TESTS=OFF -DMS_BUILD_EXAMPLES=OFF -DMS_BUILD_BENCH=OFF >/dev/null
cmake --build build/fuzz -j "$(nproc 2>/dev/null || echo 2)" \
  --target "${targets[@]/#/fuzz_}"
mkdir -p build/fuzz/artifacts
MS_FUZZ_DIR=$(mktemp -d /dev/shm/ms-fuzz-XXXXXX)
export MS_FUZZ_DIR
trap 'rm -rf "$MS_FUZZ_DIR"' EXIT
status=0
echo "fuzzing ${#targets[@]} targets for ${secs}s each (${total}s in all)"
for t in "${targets[@]}"; do
  work=build/fuzz/corpus/$t
  mkdir -p "$work"
  echo "=== fuzz_$t for ${secs}s"
  if ! build/fuzz/tests/fuzz/fuzz_$t -max_total_time="$secs" \
      -max_len="$max_len" -timeout="$timeout" \
      -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="build/fuzz/artifacts/$t-" \
      "$work" "tests/fuzz/corpus/$t" > "build/fuzz/$t.log" 2>&1; then
    echo "fuzz_$t FAILED:"; tail -n 40 "build/fuzz/$t.log"; status=1
  else
    grep -E 'stat::number_of_executed_units|stat::peak_rss_mb' "build/fuzz/$t.log" | tr '\n' ' '
    echo
    echo "fuzz target passed: fuzz_$t" # scripts/test.sh counts these lines
  fi
done
exit $status
