#!/usr/bin/env bash
# Builds everything and runs the main job: three pipeline nodes sharing the
# real pocketsphinx US-English model through the registry.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake -S . -B build/release -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build/release -j "$(nproc 2>/dev/null || echo 2)"
exec build/release/examples/pipeline_nodes "$@"
