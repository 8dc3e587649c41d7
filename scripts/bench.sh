#!/usr/bin/env bash
# Builds everything and runs the main job: modelshare-bench, the founding
# measurements on the real pocketsphinx speech model, with every baseline
# measured in the same run.  Extra arguments go to the bench (try --help);
# the raw figures are written to build/release/bench.json.  Exits with the
# bench's status: 0 when every target passed, 1 when any was a MISS.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake -S . -B build/release -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build/release -j "$(nproc 2>/dev/null || echo 2)"
exec build/release/bench/modelshare-bench --json build/release/bench.json "$@"
