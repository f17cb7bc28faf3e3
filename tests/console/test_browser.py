"""End-to-end test of the console in a real browser: starts redis-server
and keygated (with its HTTP listener), then runs e2e.js, which drives
Debian's chromium with playwright-core and checks every result through
the admin socket. Screenshots of each step go to $KG_SHOTS (CMake sets
<build>/tests/console/screenshots).

Needs /usr/bin/chromium and node (scripts/deps.sh installs them). When one
of them is genuinely missing the test is skipped (exit code 77) with a
message saying which. playwright-core is installed with npm into this
folder's node_modules (package-lock.json pins it) on first use.
"""

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time

import consolelib

HERE = os.path.dirname(os.path.abspath(__file__))
SKIP = 77
TIME_LIMIT_S = 170


def ensure_playwright():
    """npm ci into tests/console once; a lock keeps two build trees' test
    runs from installing at the same time."""
    markers = [os.path.join(HERE, "node_modules", m, "package.json") for m in ("playwright-core", "axe-core")]
    if all(os.path.exists(m) for m in markers):
        return
    npm = shutil.which("npm")
    if npm is None:
        print("console e2e: npm is missing (scripts/deps.sh installs it)", file=sys.stderr)
        sys.exit(1)
    lock_path = os.path.join(tempfile.gettempdir(),
                             "keygate-npm-%s.lock" % hashlib.sha256(HERE.encode()).hexdigest()[:16])
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if all(os.path.exists(m) for m in markers):
            return
        print("console e2e: installing playwright-core and axe-core with npm ci", flush=True)
        subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                       cwd=HERE, check=True, timeout=300)


def main():
    chromium = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    node = shutil.which("node")
    missing = [what for what, ok in (("chromium (" + chromium + ")", os.access(chromium, os.X_OK)),
                                     ("node", node is not None)) if not ok]
    if missing:
        print("SKIPPED: console e2e test needs %s; run scripts/deps.sh" % " and ".join(missing))
        return SKIP
    ensure_playwright()
    shots = os.environ.get("KG_SHOTS") or os.path.join(os.getcwd(), "screenshots")
    env = consolelib.console_env()
    rc = 1
    try:
        child_env = dict(os.environ, KG_HTTP_PORT=str(env.http_port), KG_SOCKET=env.socket_path,
                         KG_SHOTS=shots, CHROMIUM=chromium,
                         KG_REDIS=env.redis_sock, KG_PREFIX="kg:")
        start = time.monotonic()
        try:
            p = subprocess.run([node, os.path.join(HERE, "e2e.js")], cwd=HERE, env=child_env,
                               timeout=TIME_LIMIT_S)
            rc = p.returncode
        except subprocess.TimeoutExpired:
            print("console e2e: over %d s, stopped" % TIME_LIMIT_S, file=sys.stderr)
            rc = 1
        print("console e2e: node exited %d after %.1f s" % (rc, time.monotonic() - start))
    finally:
        env.close()
    if rc != 0:
        print("---- keygated log ----\n" + env.final_log[-4000:])
    try:
        consolelib.kgtest.check_clean_exit(env)
    except AssertionError as e:
        print(e)
        rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
