#!/usr/bin/env bash
# Runs a Windows executable under Wine for ctest (CMAKE_CROSSCOMPILING_EMULATOR).
# Uses the project's own Wine prefix (WINEPREFIX, set by scripts/win32.sh)
# and finds libmodelshare.dll through WINEPATH.
set -euo pipefail
wine=$(dpkg -L wine64 | grep -m1 '/wine64$')
export WINEDEBUG=${WINEDEBUG:--all}
exec "$wine" "$@"
