"""The store's writer lease: two keygated on one Redis lost updates (issue
11: 100 of 200 member adds answered ok were lost). Now the second daemon
refuses to start with a clear message and the first keeps serving; a
restart of the same daemon (same host and socket) takes over at once; a
different daemon can take over once the holder is gone and its lease ran
out."""
import os
import subprocess
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import kgtest  # noqa: E402


class WriterLease(kgtest.EnvCase):

    def second_config(self, name):
        path = os.path.join(self.env.tmp, name + ".conf")
        lines = [ln for ln in self.env.config_lines() if not ln.startswith("socket ")]
        lines.append("socket %s" % os.path.join(self.env.tmp, name + ".sock"))
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return path

    def test_a_second_daemon_on_the_same_store_stops_and_the_first_serves_on(self):
        me = kgtest.signup(self.c)
        owner, team = me["user_id"], me["team_id"]
        log = os.path.join(self.env.tmp, "second.log")
        with open(log, "wb") as out:
            p = subprocess.run([kgtest.keygated_path(), "--config", self.second_config("second")],
                               stdout=out, stderr=out, timeout=30)
        with open(log) as f:
            text = f.read()
        self.assertEqual(p.returncode, 1, text)
        self.assertIn("another keygated writes to this store", text)
        # The first daemon still commits.
        self.c.ok("key.create", owner, team=team, name="after the second one left")

    def test_a_restart_on_the_same_socket_takes_over_at_once(self):
        self.env.kill_daemon()
        t0 = time.monotonic()
        self.env.start_daemon()
        c = self.env.client()
        kgtest.signup(c)
        self.assertLess(time.monotonic() - t0, 8, "the restart waited for the old lease")
        type(self).c = c

    def test_another_daemon_takes_over_once_the_holder_is_gone_and_its_lease_ran_out(self):
        self.env.kill_daemon()
        # The holder's lease is in Redis with its TTL: shorten it as if time passed.
        self.assertEqual(self.env.redis("PEXPIRE", "kg:writer", "200"), 1)
        time.sleep(0.4)
        log = os.path.join(self.env.tmp, "third.log")
        out = open(log, "wb")
        p = subprocess.Popen([kgtest.keygated_path(), "--config", self.second_config("third")],
                             stdout=out, stderr=out)
        try:
            c = None
            deadline = time.monotonic() + 30
            while c is None and time.monotonic() < deadline:
                try:
                    c = kgtest.Client(os.path.join(self.env.tmp, "third.sock"), timeout=10)
                except OSError:
                    time.sleep(0.05)
            self.assertIsNotNone(c, "the third daemon did not start")
            kgtest.signup(c)
            c.close()
        finally:
            p.terminate()
            p.wait(10)
            out.close()
            self.env.redis("PEXPIRE", "kg:writer", "1")   # the third one is gone
            time.sleep(0.05)
            self.env.start_daemon()     # for the class's other tests
            type(self).c = self.env.client()
        with open(log) as f:
            self.assertIn("writer lease taken", f.read())


if __name__ == "__main__":
    unittest.main()
