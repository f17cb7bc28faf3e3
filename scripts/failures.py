#!/usr/bin/env python3
"""Prints, for each test ctest recorded as failed in a build tree, its name
and the tail of its output, so a CI log shows the cause without a rerun.

usage: failures.py BUILD_DIR [TAIL_LINES]
Reads BUILD_DIR/Testing/Temporary/LastTestsFailed.log (the names) and
LastTest.log (every test's output). Prints nothing when nothing failed.
"""
import os
import re
import sys


def outputs(log_text):
    """{test name: its output lines} from ctest's LastTest.log."""
    found = {}
    for block in re.split(r"\n(?=\d+/\d+ Testing: )", log_text):
        m = re.match(r"\d+/\d+ Testing: (\S+)", block)
        if not m:
            continue
        lines = block.split("\n")
        try:
            start = lines.index("Output:") + 2     # the dashes follow "Output:"
        except ValueError:
            start = 0
        end = len(lines)
        for i in range(len(lines) - 1, start - 1, -1):
            if lines[i] == "<end of output>":
                end = i
                break
        found[m.group(1)] = lines[start:end]
    return found


def main():
    if len(sys.argv) < 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    tree = sys.argv[1]
    tail = int(sys.argv[2]) if len(sys.argv) > 2 else 40
    tmp = os.path.join(tree, "Testing", "Temporary")
    try:
        with open(os.path.join(tmp, "LastTestsFailed.log"), errors="replace") as f:
            failed = [ln.strip().split(":", 1)[-1] for ln in f if ln.strip()]
    except FileNotFoundError:
        return 0
    try:
        with open(os.path.join(tmp, "LastTest.log"), errors="replace") as f:
            outs = outputs(f.read())
    except FileNotFoundError:
        outs = {}
    for name in failed:
        out = outs.get(name, [])
        print("FAILED: %s %s (last %d of %d lines of its output)"
              % (os.path.basename(os.path.normpath(tree)), name, min(tail, len(out)), len(out)))
        for ln in out[-tail:]:
            print("    | " + ln)
    return 0


if __name__ == "__main__":
    sys.exit(main())
