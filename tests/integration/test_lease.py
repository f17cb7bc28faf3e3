"""The store's lease: any number of keygated may serve one store (their
commits check what they read: test_multiwriter.py), but one of them runs
the background work (alerts, webhook deliveries). A second daemon serves
and commits and leaves that work to the holder; a restart of the same
daemon (same host and socket) takes the lease over at once; a different
daemon takes over once the holder is gone and its lease ran out."""
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

    def start_second(self, name):
        log = os.path.join(self.env.tmp, name + ".log")
        out = open(log, "wb")
        p = subprocess.Popen([kgtest.keygated_path(), "--config", self.second_config(name)],
                             stdout=out, stderr=out)
        out.close()
        c = None
        deadline = time.monotonic() + 30
        while c is None and time.monotonic() < deadline:
            self.assertIsNone(p.poll(), "the %s daemon exited" % name)
            try:
                c = kgtest.Client(os.path.join(self.env.tmp, name + ".sock"), timeout=10)
            except OSError:
                time.sleep(0.05)
        self.assertIsNotNone(c, "the %s daemon did not start" % name)
        return p, c, log

    def test_a_second_daemon_on_the_same_store_serves_and_leaves_background_work_to_the_first(self):
        me = kgtest.signup(self.c)
        owner, team = me["user_id"], me["team_id"]
        p, c2, log = self.start_second("second")
        try:
            # Both commit, to the same team.
            k = c2.ok("key.create", owner, team=team, name="from the second one")
            self.c.ok("key.create", owner, team=team, name="from the first one")
            names = sorted(x["name"] for x in self.c.ok("key.list", owner, team=team)["keys"])
            self.assertIn("from the second one", names)
            self.assertIn("from the first one", names)
            self.assertEqual(c2.ok("key.get", owner, key=k["key_id"])["name"], "from the second one")
            kgtest.wait_for(lambda: "another keygated runs this store" in open(log).read(), 10,
                            "the second daemon to see the lease held")
        finally:
            c2.close()
            p.terminate()
            p.wait(10)
        with open(log) as f:
            self.assertNotIn("lease taken", f.read())

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
        p, c, log = self.start_second("third")
        try:
            kgtest.signup(c)
            kgtest.wait_for(lambda: "lease taken" in open(log).read(), 10,
                            "the third daemon to take the lease")
            c.close()
        finally:
            p.terminate()
            p.wait(10)
            self.env.redis("PEXPIRE", "kg:writer", "1")   # the third one is gone
            time.sleep(0.05)
            self.env.start_daemon()     # for the class's other tests
            type(self).c = self.env.client()


if __name__ == "__main__":
    unittest.main()
