"""A transaction that reached Redis but whose reply was lost on the way
back (a network cut, or a Redis frozen past the daemon's stall watchdog
with the transaction already in its socket buffer, as test_outage.py saw)
cannot be known to have failed. SPEC §2 promises that `unavailable` means
"nothing was changed"; docs/protocol.md documents this one exception: the
message then says "the change may not have been made".

The test puts a proxy between keygated and Redis that forwards everything
until it sees the daemon send MULTI, then drops Redis' replies: the
transaction is applied, its answer never arrives, the watchdog gives up
after 3 s. It pins the documented behaviour: the answer is `unavailable`
with the "may not have been made" message, never the plain "nothing was
changed" one, and the change is there for a client that reads again.
(Removing the exception would take a per-command marker written inside
the MULTI and looked up after reconnecting: see the report of issue 6.)"""
import os
import select
import socket
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safety  # noqa: E402
from safety import kgtest  # noqa: E402


class ReplyEater:
    """A Unix-socket proxy to Redis that drops replies once `armed` and the
    client has sent MULTI."""

    def __init__(self, listen, upstream):
        self.listen, self.upstream = listen, upstream
        self.armed = False
        self.eating = False
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(listen)
        self.srv.listen(16)
        self.stop = False
        threading.Thread(target=self.accept_loop, daemon=True).start()

    def accept_loop(self):
        while not self.stop:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            u.connect(self.upstream)
            threading.Thread(target=self.pump, args=(c, u), daemon=True).start()

    def pump(self, c, u):
        try:
            while True:
                r, _, _ = select.select([c, u], [], [], 0.5)
                if self.stop:
                    return
                for s in r:
                    data = s.recv(65536)
                    if not data:
                        return
                    if s is c:
                        if self.armed and b"MULTI" in data:
                            self.eating = True
                        u.sendall(data)
                    elif not self.eating:
                        c.sendall(data)
        except OSError:
            return
        finally:
            c.close()
            u.close()

    def close(self):
        self.stop = True
        self.srv.close()


class LostReply(unittest.TestCase):

    def test_lost_reply_is_answered_may_not_have_been_made(self):
        env = kgtest.Env(start_daemon=False)
        proxy = ReplyEater(os.path.join(env.tmp, "proxy.sock"), env.redis_sock)
        try:
            lines = [l if not l.startswith("redis ") else "redis unix:" + proxy.listen
                     for l in env.config_lines()]
            env.write_config(replace=lines)
            env.start_daemon()
            c = env.client()
            o = kgtest.signup(c)
            a, team = o["user_id"], o["team_id"]
            proxy.armed = True
            t0 = time.monotonic()
            r = c.call("key.create", a, team=team, name="lost-reply")
            waited = time.monotonic() - t0
            self.assertEqual(r.get("error", {}).get("code"), "unavailable", r)
            names = [env.redis("GET", "kg:{t:%s}:key:%s" % (team, k.decode()))
                     for k in env.redis("ZRANGE", "kg:{t:%s}:keys" % team, 0, -1)]
            made = sum(b'"lost-reply"' in n for n in names)
            print("key.create answered unavailable after %.1fs (%s); keys named lost-reply in "
                  "Redis: %d" % (waited, r["error"]["message"], made), file=sys.stderr)
            self.assertEqual(made, 1, "the transaction did not reach Redis: the proxy failed")
            self.assertIn("may not have been made", r["error"]["message"],
                          "answered as if nothing was changed, yet the key was made")
            self.assertGreater(waited, 2.5)    # the stall watchdog (3 s) answered
        finally:
            proxy.close()
            env.close()


if __name__ == "__main__":
    unittest.main()
