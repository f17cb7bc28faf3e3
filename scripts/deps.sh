#!/usr/bin/env bash
# Installs the Debian packages keygate builds, tests and runs with.
# Idempotent: does nothing when everything is there already.
set -euo pipefail

PKGS=(build-essential cmake pkg-config
      libhiredis-dev libsodium-dev libevent-dev libjansson-dev
      redis-server nginx nginx-dev haproxy python3 wrk clang libclang-rt-14-dev valgrind
      libsqlite3-dev libpq-dev postgresql sqlite3
      chromium fonts-dejavu-core
      # Debian packages and their checks (tests/packaging): build, lint,
      # verify the systemd units, render the man pages, fetch /metrics.
      debhelper dpkg-dev fakeroot lintian systemd man-db groff-base mandoc curl)
# The console's browser test runs node + npm (playwright-core). The machine
# image may bring its own node; only without one, take Debian's.
command -v npm >/dev/null 2>&1 || PKGS+=(nodejs npm)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
echo "keygate: installing ${missing[*]}" >&2
# Do not let package scripts start system-wide redis/nginx services: keygate
# starts its own, privately, on Unix sockets and loopback ports.
had_policy=0
[ -e /usr/sbin/policy-rc.d ] && had_policy=1
if [ $had_policy -eq 0 ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
[ $had_policy -eq 1 ] || $SUDO rm -f /usr/sbin/policy-rc.d
