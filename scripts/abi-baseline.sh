#!/usr/bin/env bash
# Regenerates the committed ABI baseline from a release build.  Run it only
# when an ABI change is deliberate (a new release node in the version
# script), and commit abi/libmodelshare.abi with the change.
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build/release -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build/release --target modelshare -j "$(nproc 2>/dev/null || echo 2)"
abidw --headers-dir include --no-corpus-path --out-file abi/libmodelshare.abi \
  build/release/libmodelshare.so
printf '#include <modelshare.h>\n#include <stdio.h>\nint main(void) {\n#define P(n, v, t) printf("%%s %%d\\n", #n, v);\n  MS_ERRNO_MAP(P)\n  return 0;\n}\n' > build/release/errno.c
cc -std=c11 -I include build/release/errno.c -o build/release/errno
build/release/errno > abi/errno.txt
echo "wrote abi/libmodelshare.abi and abi/errno.txt"
