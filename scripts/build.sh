#!/usr/bin/env bash
# Builds keygate into build/ (or $1), with extra CMake options after it.
#   scripts/build.sh                       release-ish build in build/
#   scripts/build.sh build-asan -DKEYGATE_SANITIZE=ON
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-build}
shift || true
cmake -S "$root" -B "$root/$dir" "$@" >/dev/null
cmake --build "$root/$dir" -j"$(nproc)"
