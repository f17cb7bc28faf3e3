#!/usr/bin/env bash
# Sets keygate up on a fresh Debian machine: packages, then the build.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bash "$here/deps.sh"
bash "$here/build.sh" build
echo "keygate: built in $(cd "$here/.." && pwd)/build"
