#!/usr/bin/env bash
# Builds keygate's Debian packages with Debian's own tooling
# (dpkg-buildpackage + debhelper, debian/ at the top of the tree) and
# checks them with lintian.
#
#   scripts/package.sh [OUT_DIR]      (default: <repo>/build-deb)
#
# The source (committed and uncommitted files git knows or would add, not
# build trees) is copied to OUT_DIR/keygate-VERSION and built there, so
# the working tree gets no debian/tmp, obj-* or .deb files; the packages
# land in OUT_DIR. Environment: JOBS (default 2) parallel build jobs;
# LINTIAN=0 skips lintian. Exit status: 0 built (and no lintian error),
# 1 build or lintian error, 77 a tool is missing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
out=${1:-$root/build-deb}
jobs=${JOBS:-2}

for tool in dpkg-buildpackage dh dpkg-parsechangelog; do
    command -v "$tool" >/dev/null || { echo "package.sh: $tool is missing (apt-get install devscripts debhelper)" >&2; exit 77; }
done

version=$(dpkg-parsechangelog -l "$root/debian/changelog" -S Version)
src="$out/keygate-$version"
mkdir -p "$out"
out=$(cd "$out" && pwd)
case "$out/" in
    "$root"/build*/*|"$root"/build*/) ;;             # ignored by git: fine
    "$root"/*) echo "package.sh: OUT_DIR inside the tree must be a build*/ folder" >&2; exit 1 ;;
esac
rm -rf "$src"
rm -f "$out"/*.deb "$out"/*.ddeb "$out"/*.changes "$out"/*.buildinfo
mkdir -p "$src"

# The files to build from.
if git -C "$root" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (cd "$root" && git ls-files -co --exclude-standard -z) |
        (cd "$root" && while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done) |
        tar -C "$root" --null -T - -cf - | tar -C "$src" -xf -
else
    tar -C "$root" --exclude='./build*' --exclude=./.git -cf - . | tar -C "$src" -xf -
fi

echo "package.sh: building keygate $version in $src" >&2
start=$(date +%s)
(cd "$src" && DEB_BUILD_OPTIONS="parallel=$jobs nocheck ${DEB_BUILD_OPTIONS:-}" \
    dpkg-buildpackage -us -uc -b) >"$out/build.log" 2>&1 || {
    echo "package.sh: dpkg-buildpackage failed, see $out/build.log" >&2
    tail -30 "$out/build.log" >&2
    exit 1
}
echo "package.sh: built in $(( $(date +%s) - start )) s:" >&2
ls -1 "$out"/*.deb >&2

if [ "${LINTIAN:-1}" != 0 ] && command -v lintian >/dev/null; then
    changes=$(ls "$out"/keygate_"${version}"_*.changes)
    rc=0
    lintian --fail-on error --tag-display-limit 0 "$changes" >"$out/lintian.log" 2>&1 || rc=$?
    sed 's/^/lintian: /' "$out/lintian.log" >&2
    echo "package.sh: lintian: $(grep -c '^E:' "$out/lintian.log" || true) errors, $(grep -c '^W:' "$out/lintian.log" || true) warnings" >&2
    [ "$rc" -eq 0 ] || { echo "package.sh: lintian reported errors" >&2; exit 1; }
fi
