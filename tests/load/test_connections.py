"""1,000 admin connections open at once (the daemon's max_clients is 4096
by default): every one is accepted, each gets its answers, and a new
client is served promptly while they are all open. The test raises its
RLIMIT_NOFILE (inherited by the keygated it starts) as needed."""
import json
import os
import resource
import sys
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "faults"))
import safety  # noqa: E402
from safety import kgtest  # noqa: E402

N = 1000


def raise_nofile(want):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class ThousandConnections(unittest.TestCase):

    def test_thousand_concurrent_connections(self):
        limit = raise_nofile(2 * N + 256)
        if limit < N + 64:
            self.skipTest("RLIMIT_NOFILE cannot be raised above %d" % limit)
        env = kgtest.Env()
        conns = []
        try:
            c = env.client()
            o = kgtest.signup(c)
            a, key = o["user_id"], o["free_key_id"]
            t0 = time.monotonic()
            for i in range(N):
                conns.append(kgtest.Client(env.socket_path, timeout=30))
            t_open = time.monotonic() - t0
            # every connection asks twice (pipelined), all before any answer is read
            for i, cc in enumerate(conns):
                cc.send_raw(json.dumps({"id": i, "cmd": "ping"}) + "\n" +
                            json.dumps({"id": -i, "cmd": "key.get", "actor": a, "key": key}) + "\n")
            # a newcomer is served while all of them are open
            t1 = time.monotonic()
            late = kgtest.Client(env.socket_path, timeout=10)
            self.assertEqual(late.ok("ping"), {})
            t_late = time.monotonic() - t1
            late.close()
            for i, cc in enumerate(conns):
                r1, r2 = cc.read_json(), cc.read_json()
                self.assertEqual((r1["id"], r1["ok"]), (i, True), r1)
                self.assertEqual((r2["id"], r2["ok"]), (-i, True), r2)
                self.assertEqual(r2["result"]["key_id"], key)
            t_all = time.monotonic() - t0
            self.assertLess(t_late, 5.0)
            # all still open and usable
            for cc in conns[::97]:
                self.assertEqual(cc.ok("ping"), {})
            print("%d connections opened in %.2fs, %d requests answered in %.2fs in all; a new "
                  "client served in %.3fs meanwhile (RLIMIT_NOFILE %d)"
                  % (N, t_open, 2 * N, t_all, t_late, limit), file=sys.stderr)
            for cc in conns:
                cc.close()
            conns = []
            time.sleep(0.2)
            self.assertEqual(c.ok("ping"), {})
            safety.assert_clean(self, env)
        finally:
            for cc in conns:
                cc.close()
            env.close()
        kgtest.check_clean_exit(env)


if __name__ == "__main__":
    unittest.main()
