#!/bin/sh
# check_install.sh - installs libkeygate into a temporary prefix with
# `cmake --install`, then checks what a gateway packager relies on:
#   - the library, its SONAME (libkeygate.so.1), the header, keygate.pc;
#   - `nm -D --defined-only` shows exactly the functions of keygate.h, all kg_*;
#   - pkg-config finds it and a program built with its flags links and runs;
#   - the installed library passes the dlopen test.
# Usage: check_install.sh BUILD_DIR DLOPEN_TEST HEADER CC [EXTRA_CFLAGS]
set -eu
build=$1 dltest=$2 header=$3 cc=$4 extra=${5:-}
tmp=$(mktemp -d /tmp/kginst.XXXXXX)
trap 'rm -rf "$tmp"' EXIT INT TERM
fail() { echo "check_install: $*" >&2; exit 1; }

cmake --install "$build/module" --prefix "$tmp/prefix" >/dev/null
lib=$(find "$tmp/prefix" -name 'libkeygate.so.1' | head -n 1)
[ -n "$lib" ] || fail "libkeygate.so.1 not installed"
[ -e "$(dirname "$lib")/libkeygate.so" ] || fail "no libkeygate.so development link"
[ -f "$tmp/prefix/include/keygate.h" ] || fail "keygate.h not installed"
pc=$(find "$tmp/prefix" -name keygate.pc | head -n 1)
[ -n "$pc" ] || fail "keygate.pc not installed"
readelf -d "$lib" | grep -q 'SONAME.*\[libkeygate\.so\.1\]' || fail "SONAME is not libkeygate.so.1"

# Exports: exactly the KG_EXPORT functions of the header.
nm -D --defined-only "$lib" | awk '$2 != "A" { sub(/@.*/, "", $3); print $3 }' | sort > "$tmp/exported"
grep -o '^KG_EXPORT[^(]*(' "$header" | sed 's/.*[ *]\(kg_[a-z_]*\)($/\1/' | sort > "$tmp/declared"
if grep -v '^kg_' "$tmp/exported"; then fail "symbols above are exported but are not kg_*"; fi
diff -u "$tmp/declared" "$tmp/exported" || fail "exported symbols differ from keygate.h"

# pkg-config, and a program built the way a packager would.
export PKG_CONFIG_PATH="$(dirname "$pc")"
pkg-config --exists keygate || fail "pkg-config does not find keygate"
cat > "$tmp/hello.c" <<'C'
#include <keygate.h>
#include <stdio.h>
int main(void) { printf("%d %s\n", kg_abi_version(), kg_status_code(KG_OK)); return kg_abi_version() != KG_ABI_VERSION; }
C
# shellcheck disable=SC2046,SC2086
$cc $extra $(pkg-config --cflags keygate) "$tmp/hello.c" -o "$tmp/hello" $(pkg-config --libs keygate) \
    || fail "cannot build against the installed keygate.pc"
LD_LIBRARY_PATH="$(dirname "$lib")" "$tmp/hello" | grep -q '^1 ok$' || fail "the built program failed"

"$dltest" "$lib"
echo "ok: installed $(basename "$lib"), $(wc -l < "$tmp/exported") exports, pkg-config works"
