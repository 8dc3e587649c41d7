#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan+UBSan) and runs each for
# MS_FUZZ_SECONDS seconds (default 60; set it lower for a quick local run),
# starting from the committed seeds in tests/fuzz/corpus/<target>/.  Any
# crash, leak, timeout or sanitizer report fails; the reproducer is kept in
# build/fuzz/artifacts/.  Add each fixed crasher to the seed corpus.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${MS_FUZZ_SECONDS:-60}
CC=clang CXX=clang++ cmake -S . -B build/fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DMS_FUZZ=ON -DMS_BUILD_TESTS=OFF -DMS_BUILD_EXAMPLES=OFF -DMS_BUILD_BENCH=OFF >/dev/null
cmake --build build/fuzz -j "$(nproc 2>/dev/null || echo 2)" \
  --target fuzz_safetensors fuzz_config_json fuzz_descriptor fuzz_region_header
mkdir -p build/fuzz/artifacts
MS_FUZZ_DIR=$(mktemp -d /dev/shm/ms-fuzz-XXXXXX)
export MS_FUZZ_DIR
trap 'rm -rf "$MS_FUZZ_DIR"' EXIT
status=0
for t in safetensors config_json descriptor region_header; do
  work=build/fuzz/corpus/$t
  mkdir -p "$work"
  echo "=== fuzz_$t for ${secs}s"
  if ! build/fuzz/tests/fuzz/fuzz_$t -max_total_time="$secs" -timeout=10 \
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
