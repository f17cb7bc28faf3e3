"""A command whose commit reached Redis but whose reply was lost (a network
cut, or a Redis frozen past the daemon's 3 s stall watchdog with the commit
already in its socket buffer) — and one whose commit never reached Redis.

keygated writes each command in one fenced commit script (daemon/job.c,
commit_lua): the script first sets P tx:<id> to "done", and refuses to run
once that key exists. When a reply is lost, the daemon reconnects and sets
the key to "aborted" only if it is absent: that tells it whether the commit
ran, and makes sure it never runs later. So SPEC §2 holds: `unavailable`
means nothing was changed; a command that did take effect is answered ok.

A proxy between keygated and Redis either forwards a commit and eats its
reply, or eats the commit itself, once; it then forwards everything again."""
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


class Proxy:
    """A Unix-socket proxy to Redis. Once armed, at the first commit script
    (a request naming a P tx: key with "done") it either drops the replies
    on that connection (mode "reply") or drops the request (mode
    "request"); it is disarmed after that one time."""

    def __init__(self, listen, upstream, mode):
        self.listen, self.upstream, self.mode = listen, upstream, mode
        self.armed = False
        self.fired = False
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
        eating = False      # replies no longer reach keygated
        dropping = False    # requests no longer reach Redis
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
                        if self.armed and not self.fired and b"tx:" in data and b"'done'" in data:
                            self.fired = True
                            if self.mode == "request":
                                # The commit never reaches Redis, nor does
                                # anything after it on this connection (a
                                # stream cannot lose a piece in the middle).
                                dropping = True
                            else:
                                eating = True
                        if not dropping:
                            u.sendall(data)
                    elif not eating:
                        c.sendall(data)
        except OSError:
            return
        finally:
            c.close()
            u.close()

    def close(self):
        self.stop = True
        self.srv.close()


def run(mode):
    env = kgtest.Env(start_daemon=False)
    proxy = Proxy(os.path.join(env.tmp, "proxy.sock"), env.redis_sock, mode)
    try:
        lines = [l if not l.startswith("redis ") else "redis unix:" + proxy.listen
                 for l in env.config_lines()]
        env.write_config(replace=lines)
        env.start_daemon()
        c = env.client(timeout=20)
        o = kgtest.signup(c)
        a, team = o["user_id"], o["team_id"]
        proxy.armed = True
        t0 = time.monotonic()
        r = c.call("key.create", a, team=team, name="lost-" + mode)
        waited = time.monotonic() - t0
        names = [env.redis("GET", "kg:{t:%s}:key:%s" % (team, k.decode()))
                 for k in env.redis("ZRANGE", "kg:{t:%s}:keys" % team, 0, -1)]
        made = sum(("lost-" + mode).encode() in n for n in names)
        print("%s lost: answered %s after %.1fs; keys made: %d" % (
            mode, "ok" if r["ok"] else r["error"]["message"], waited, made), file=sys.stderr)
        # The daemon works normally afterwards.
        again = c.call("key.create", a, team=team, name="after")
        return r, made, waited, proxy.fired, again
    finally:
        proxy.close()
        env.close()


class LostReply(unittest.TestCase):

    def test_commit_applied_but_reply_lost_is_answered_ok(self):
        r, made, waited, fired, again = run("reply")
        self.assertTrue(fired, "the proxy never saw a commit")
        self.assertEqual(made, 1)
        self.assertTrue(r["ok"], r)
        self.assertEqual(r["result"]["name"], "lost-reply")
        self.assertGreater(waited, 2.5)    # the stall watchdog (3 s) noticed
        self.assertTrue(again["ok"], again)

    def test_commit_lost_on_the_way_is_answered_unavailable_nothing_changed(self):
        r, made, waited, fired, again = run("request")
        self.assertTrue(fired, "the proxy never saw a commit")
        self.assertEqual(made, 0)
        self.assertFalse(r["ok"], r)
        self.assertEqual(r["error"]["code"], "unavailable")
        self.assertIn("nothing was changed", r["error"]["message"])
        self.assertTrue(again["ok"], again)


if __name__ == "__main__":
    unittest.main()
