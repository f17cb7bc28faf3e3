#!/bin/bash
# Builds ngx_http_keygate_module.so with nginx's own build system, the way
# Debian builds its dynamic modules (so that nginx accepts it as binary
# compatible: --with-compat comes from Debian's conf_flags, -fPIC is needed).
#
# usage: build-module.sh NGX_SRC BUILD_DIR ADDON_DIR INCLUDE_DIR LIB_DIR RPATH OUT
#
# conf_flags holds a bash array, hence bash. Debian's trimmed configure
# writes only into --builddir, so NGX_SRC (owned by root) is only read.
# configure runs again only when its inputs change.
set -euo pipefail

ngx_src=$1 build=$2 addon=$3 inc=$4 libdir=$5 rpath=$6 out=$7

cc_opt="$(dpkg-buildflags --get CFLAGS) -fPIC $(dpkg-buildflags --get CPPFLAGS)"
ld_opt="$(dpkg-buildflags --get LDFLAGS) -fPIC"

mkdir -p "$build"
stamp="$build/configure.args"
args="$cc_opt|$ld_opt|$addon|$inc|$libdir|$rpath|$(cat "$ngx_src/conf_flags")"

if [ ! -f "$build/Makefile" ] || [ ! -f "$stamp" ] \
   || [ "$(cat "$stamp")" != "$args" ] || [ "$addon/config" -nt "$build/Makefile" ]
then
    (
        cd "$ngx_src"
        # shellcheck disable=SC1091
        . ./conf_flags
        KEYGATE_INCLUDE_DIR=$inc KEYGATE_LIB_DIR=$libdir KEYGATE_RPATH=$rpath \
        ./configure --with-cc-opt="$cc_opt" --with-ld-opt="$ld_opt" \
            "${NGX_CONF_FLAGS[@]}" \
            --add-dynamic-module="$addon" --builddir="$build"
    ) > "$build/configure.log" 2>&1 || {
        echo "nginx configure failed, see $build/configure.log" >&2
        tail -20 "$build/configure.log" >&2
        exit 1
    }
    printf '%s' "$args" > "$stamp"
fi

make -s -f "$build/Makefile" -C "$ngx_src" modules
cp "$build/ngx_http_keygate_module.so" "$out.tmp"
mv "$out.tmp" "$out"
