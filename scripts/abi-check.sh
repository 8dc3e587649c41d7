#!/usr/bin/env bash
# The ABI guard, run by the test command on the release build:
#   - abidiff against the committed baseline abi/libmodelshare.abi: any
#     incompatible change fails (compatible additions are reported only).
#     abi/suppressions.ini tells abidiff that members appended at the end of
#     a struct_size struct are compatible (our contract); every other change
#     to those structs is still reported and fails, and scripts/abi-layout.py
#     checks every 1.0 member's name, offset and type;
#   - the error codes of abi/errno.txt keep their names and numbers;
#   - every exported dynamic symbol starts with ms_ (nothing of cJSON or
#     libuv leaks out) and the SONAME is libmodelshare.so.1;
#   - the public header compiles cleanly as C11, C++11 and C++17.
# To accept an ABI change deliberately: scripts/abi-baseline.sh.
set -euo pipefail
lib=$1
top=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail=0

rc=0
# No --headers-dir: it hides every change to a type defined outside
# include/ (size_t* becoming uint32_t* in a signature passed); the opaque
# handle structs are suppressed by name in abi/suppressions.ini instead.
abidiff --suppressions "$top/abi/suppressions.ini" \
  "$top/abi/libmodelshare.abi" "$lib" > "$work/abidiff.txt" || rc=$?
# abidiff calls some breaking changes merely "changes" (exit bit 4): a field
# whose type grows into padding keeps the struct size, yet old callers write
# fewer bytes than the library reads.  So anything Removed or Changed fails;
# only pure additions pass.
changed=$(sed -n 's/.*summary: \([0-9]*\) Removed, \([0-9]*\) Changed.*/\1 \2/p' \
  "$work/abidiff.txt" | awk '{n += $1 + $2} END {print n + 0}')
if [ $((rc & 8)) -ne 0 ] || [ $((rc & 3)) -ne 0 ] || [ "$changed" -ne 0 ]; then
  echo "abi-check: incompatible ABI change (abidiff exit $rc):"
  cat "$work/abidiff.txt"
  fail=1
elif [ $((rc & 4)) -ne 0 ]; then
  echo "abi-check: compatible ABI additions (regenerate the baseline when released):"
  cat "$work/abidiff.txt"
fi

# The struct_size contract, member by member: every 1.0 member keeps its
# name, offset and type (abidiff's insertion suppressions would also hide a
# same-size retype of a member).
abidw --no-corpus-path "$lib" > "$work/now.abi"
python3 "$top/scripts/abi-layout.py" "$top/abi/libmodelshare.abi" "$work/now.abi" || fail=1

# Error codes: abidiff cannot see them (functions return int), so the
# committed list abi/errno.txt must stay a prefix of the header's X-macro
# list: codes are appended, never renumbered, renamed or removed.
printf '#include <modelshare.h>\n#include <stdio.h>\nint main(void) {\n#define P(n, v, t) printf("%%s %%d\\n", #n, v);\n  MS_ERRNO_MAP(P)\n  return 0;\n}\n' > "$work/errno.c"
if cc -std=c11 -I "$top/include" "$work/errno.c" -o "$work/errno" && "$work/errno" > "$work/errno.txt"; then
  n=$(wc -l < "$top/abi/errno.txt")
  if ! head -n "$n" "$work/errno.txt" | cmp -s - "$top/abi/errno.txt"; then
    echo "abi-check: error codes changed (abi/errno.txt must stay a prefix):"
    diff "$top/abi/errno.txt" "$work/errno.txt" || true
    fail=1
  fi
else
  echo "abi-check: cannot list the error codes"; fail=1
fi

bad=$(nm -D --defined-only "$lib" | awk '$2 != "A" && $3 !~ /^ms_/ {print $3}')
if [ -n "$bad" ]; then
  echo "abi-check: exported symbols outside ms_*:"; echo "$bad"; fail=1
fi
if nm -D --defined-only "$lib" | awk '{print $3}' | grep -q '^ms__'; then
  echo "abi-check: internal ms__ symbols are exported"; fail=1
fi
soname=$(readelf -d "$lib" | sed -n 's/.*Library soname: \[\(.*\)\]/\1/p')
if [ "$soname" != "libmodelshare.so.1" ]; then
  echo "abi-check: SONAME is '$soname', not libmodelshare.so.1"; fail=1
fi

printf '#include <modelshare.h>\nint main(void) { return ms_version() == MS_VERSION_NUMBER ? 0 : 1; }\n' > "$work/h.c"
cp "$work/h.c" "$work/h.cpp"
cc -std=c11 -Wall -Wextra -Wpedantic -Werror -I "$top/include" -c "$work/h.c" -o "$work/c11.o" || { echo "abi-check: header fails as C11"; fail=1; }
for std in c++11 c++17; do
  c++ -std=$std -Wall -Wextra -Wpedantic -Werror -I "$top/include" -c "$work/h.cpp" -o "$work/$std.o" \
    || { echo "abi-check: header fails as $std"; fail=1; }
done

[ $fail -eq 0 ] && echo "abi-check: ok (symbols, SONAME, headers, abidiff exit $rc)"
exit $fail
