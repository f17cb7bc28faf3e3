"""keygated killed with SIGKILL in the middle of a stream of mutating
commands from several clients (pipelined), then restarted: fsck is clean
(nothing half-made), and every command that was answered `ok` is in Redis
(keys, tokens, credits, renames, revocations, sign-ups, members).
Commands in flight at the kill may or may not have happened; either way
fsck must be clean. Three rounds, killed at different moments."""
import os
import signal
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safety  # noqa: E402
from safety import kgtest  # noqa: E402

CLIENTS = 6


class DaemonKilled(kgtest.EnvCase):

    def test_kill_mid_stream(self):
        env, c = self.env, self.c
        worlds = []
        for i in range(CLIENTS):
            o = kgtest.signup(c)
            w = c.ok("wallet.create", o["user_id"], team=o["team_id"], name="w")["wallet_id"]
            worlds.append((o["user_id"], o["team_id"], w))
        totals = {"sent": 0, "answered": 0, "ok": 0, "errors": 0, "verified": 0}
        for rnd, kill_after in enumerate((0.4, 0.9, 1.5)):
            stop = threading.Event()
            streams = [safety.Stream(env, i, *worlds[i], stop) for i in range(CLIENTS)]
            for s in streams:
                s.start()
            time.sleep(kill_after)
            env.daemon.send_signal(signal.SIGKILL)
            env.daemon.wait(10)
            env.daemon = None
            stop.set()
            for s in streams:
                s.join(20)
                self.assertFalse(s.is_alive(), "a client hung after the daemon died")
            sent = sum(s.sent for s in streams)
            ok = sum(len(s.done) for s in streams)
            errors = [(e["cmd"], e["code"]) for s in streams for e in s.failed]
            self.assertEqual(errors, [], "error answers before the kill")
            self.assertGreater(ok, 20, "too little happened before the kill")
            # restart on the same Redis: first fsck, then each acknowledged command
            env.start_daemon()
            counts = safety.assert_clean(self, env, "round %d after SIGKILL" % rnd)
            for s in streams:
                safety.check_present(self, env, s)
                # and the daemon serves the world it finds
                for k in s.keys[-3:]:
                    self.assertEqual(self.c_new().ok("key.get", s.a, key=k)["key_id"], k)
            totals["sent"] += sent
            totals["answered"] += sum(s.answered for s in streams)
            totals["ok"] += ok
            totals["verified"] += ok
            print("round %d: killed after %.1fs: %d sent, %d answered ok, %d in flight; "
                  "fsck %s" % (rnd, kill_after, sent, ok, sent - ok, counts), file=sys.stderr)
        print("daemon kill -9, 3 rounds: %(sent)d commands sent, %(ok)d answered ok, all %(verified)d "
              "present after restart; fsck clean each time" % totals, file=sys.stderr)

    def c_new(self):
        return self.env.client()


if __name__ == "__main__":
    unittest.main()
