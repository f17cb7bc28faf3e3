"""A flood of 64 KiB lines: 8 clients each pipeline 16 lines of exactly
max_line bytes (65,536, newline excluded): every one is answered. Lines one
byte over the limit, from 8 other clients at the same time: each gets
`bad_request` ("line too long") and its connection is closed, after the
answers to the lines before it; the good clients are not disturbed."""
import json
import os
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "faults"))
import safety  # noqa: E402
from safety import kgtest  # noqa: E402

MAX = 65536
CLIENTS = 8
LINES = 16


def line_of(size, i, actor=None, key=None):
    """A JSON request of exactly `size` bytes (newline excluded)."""
    req = {"id": i, "cmd": "ping", "pad": ""}
    if actor:
        req = {"id": i, "cmd": "key.get", "actor": actor, "key": key, "pad": ""}
    base = len(json.dumps(req))
    req["pad"] = "x" * (size - base)
    text = json.dumps(req)
    assert len(text) == size
    return text.encode() + b"\n"


class LongLines(kgtest.EnvCase):

    def test_flood_of_64k_lines(self):
        env, c = self.env, self.c
        o = kgtest.signup(c)
        a, key = o["user_id"], o["free_key_id"]
        results = {"good": 0, "good_err": [], "over_closed": 0, "over_err": []}
        lock = threading.Lock()

        def good(n):
            cl = kgtest.Client(env.socket_path, timeout=30)
            try:
                data = b"".join(line_of(MAX, i, a if i % 2 else None, key) for i in range(LINES))
                cl.send_raw(data)
                for i in range(LINES):
                    r = cl.read_json()
                    with lock:
                        if r.get("ok") and r.get("id") == i:
                            results["good"] += 1
                        else:
                            results["good_err"].append(r)
            finally:
                cl.close()

        def over(n):
            cl = kgtest.Client(env.socket_path, timeout=30)
            try:
                cl.send_raw(b'{"id": "before", "cmd": "ping"}\n')
                try:
                    cl.send_raw(line_of(MAX + 1, "over") + b'{"id": "after", "cmd": "ping"}\n')
                except OSError:
                    pass                          # closed while we were still sending
                r0 = cl.read_json()
                r1 = cl.read_json()
                closed = cl.is_closed(timeout=5)
                with lock:
                    if (r0.get("id"), r0.get("ok")) != ("before", True) or \
                            r1.get("error", {}).get("code") != "bad_request" or \
                            "too long" not in r1["error"]["message"]:
                        results["over_err"].append((r0, r1))
                    elif closed:
                        results["over_closed"] += 1
            finally:
                cl.close()

        t0 = time.monotonic()
        ts = [threading.Thread(target=good, args=(i,)) for i in range(CLIENTS)] + \
             [threading.Thread(target=over, args=(i,)) for i in range(CLIENTS)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        dt = time.monotonic() - t0
        self.assertEqual(results["good_err"], [])
        self.assertEqual(results["over_err"], [])
        self.assertEqual(results["good"], CLIENTS * LINES)
        self.assertEqual(results["over_closed"], CLIENTS)
        self.assertEqual(c.ok("ping"), {})
        print("%d lines of %d bytes answered, %d lines of %d bytes refused and closed, in %.2fs "
              "(%.1f MiB in)" % (CLIENTS * LINES, MAX, CLIENTS, MAX + 1, dt,
                                 (CLIENTS * LINES + CLIENTS) * MAX / 2 ** 20), file=sys.stderr)

    def test_over_limit_without_newline(self):
        """A line that passes the limit before its newline arrives is
        refused at once (the daemon does not buffer without bound)."""
        cl = self.env.client()
        cl.send_raw(b'{"cmd": "ping", "pad": "' + b"y" * (MAX + 10))
        r = cl.read_json()
        self.assertEqual(r["error"]["code"], "bad_request")
        self.assertTrue(cl.is_closed(timeout=5))


if __name__ == "__main__":
    unittest.main()
