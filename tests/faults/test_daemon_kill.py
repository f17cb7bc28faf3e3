"""keygated killed with SIGKILL in the middle of a stream of mutating
commands from several clients (pipelined), then restarted: fsck is clean
(nothing half-made), and every command that was answered `ok` is in Redis
(keys, tokens, credits, renames, revocations, sign-ups, members).
Commands in flight at the kill may or may not have happened; either way
fsck must be clean. Three rounds, killed at different moments."""
import json
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
WINDOW = 8          # requests pipelined per round trip


class Stream(threading.Thread):
    """One admin client acting in its own team: builds each window of
    pipelined requests from what earlier answers told it, and records
    every request answered ok."""

    def __init__(self, env, cid, owner, team, wallet, stop):
        super().__init__(daemon=True)
        self.env, self.cid, self.a, self.team, self.w = env, cid, owner, team, wallet
        self.stop = stop
        self.sent = self.answered = 0
        self.done = []                  # (op, args, result) answered ok
        self.failed = []                # error answers
        self.keys, self.tokened, self.renamed, self.revoked = [], set(), set(), set()
        self.new_users, self.added = [], set()
        self.n = 0

    def next_ops(self):
        """A window of requests; no two of them act on the same key (the
        daemon may run pipelined mutations out of order: see
        test_pipeline_order.py)."""
        ops, busy = [], set()
        for _ in range(WINDOW):
            self.n += 1
            n, kind = self.n, self.n % 7
            ready = [k for k in self.keys if k not in self.revoked and k not in busy]
            if kind == 0 or not ready:
                ops.append(("key.create", self.a, {"team": self.team, "name": "k%d-%d" % (self.cid, n),
                                                   "users": [self.a]}))
            elif kind == 1:
                ops.append(("wallet.credit", self.a, {"wallet": self.w, "amount_micros": n,
                                                      "reference": "ref-%d-%d" % (self.cid, n)}))
            elif kind == 2 and [k for k in ready if k not in self.tokened]:
                k = [k for k in ready if k not in self.tokened][0]
                self.tokened.add(k)
                busy.add(k)
                ops.append(("token.generate", self.a, {"key": k}))
            elif kind == 3 and [k for k in ready if k not in self.renamed]:
                k = [k for k in ready if k not in self.renamed][0]
                self.renamed.add(k)
                busy.add(k)
                ops.append(("key.update", self.a, {"key": k, "name": "renamed-%d-%d" % (self.cid, n)}))
            elif kind == 4:
                ops.append(("user.signup", None, {"email": kgtest.unique_email("s%d" % self.cid),
                                                  "name": "New"}))
            elif kind == 5 and [u for u in self.new_users if u not in self.added]:
                u = [u for u in self.new_users if u not in self.added][0]
                self.added.add(u)
                ops.append(("team.member.add", self.a, {"team": self.team, "user": u, "role": "user"}))
            elif kind == 6 and len(ready) > 2 and ready[0] in self.tokened:
                self.revoked.add(ready[0])
                busy.add(ready[0])
                ops.append(("key.revoke", self.a, {"key": ready[0]}))
            else:
                ops.append(("wallet.credit", self.a, {"wallet": self.w, "amount_micros": n,
                                                      "reference": "ref-%d-%d" % (self.cid, n)}))
        return ops

    def run(self):
        try:
            c = kgtest.Client(self.env.socket_path, timeout=10)
        except OSError:
            return
        try:
            while not self.stop.is_set():
                ops = self.next_ops()
                data = b"".join((json.dumps(dict(kgtest.Client.request(cmd, actor, **args),
                                                 id=i)) + "\n").encode()
                                for i, (cmd, actor, args) in enumerate(ops))
                c.send_raw(data)
                self.sent += len(ops)
                for i, (cmd, actor, args) in enumerate(ops):
                    line = c.read_line()
                    if line is None:
                        return
                    r = json.loads(line)
                    self.answered += 1
                    assert r.get("id") == i, r
                    if r.get("ok"):
                        self.done.append((cmd, args, r["result"]))
                        if cmd == "key.create":
                            self.keys.append(r["result"]["key_id"])
                        elif cmd == "user.signup":
                            self.new_users.append(r["result"]["user_id"])
                    else:
                        self.failed.append((cmd, r["error"]["code"]))
        except (OSError, ConnectionError, ValueError):
            return
        finally:
            c.close()


class DaemonKilled(kgtest.EnvCase):

    def check_present(self, env, s):
        """Every command s saw answered ok is in Redis."""
        p = "kg:{t:%s}:" % s.team
        ledger = [json.loads(e) for e in env.redis("LRANGE", p + "ledger:" + s.w, 0, -1)]
        refs = [e.get("reference") for e in ledger if e["type"] == "credit"]
        for cmd, args, res in s.done:
            if cmd == "key.create":
                doc = env.redis("GET", p + "key:" + res["key_id"])
                self.assertIsNotNone(doc, "acknowledged key.create lost: %s" % res["key_id"])
                self.assertIsNotNone(env.redis("ZSCORE", p + "keys", res["key_id"]))
            elif cmd == "wallet.credit":
                self.assertEqual(refs.count(args["reference"]), 1,
                                 "acknowledged credit %s: %d ledger entries"
                                 % (args["reference"], refs.count(args["reference"])))
            elif cmd == "token.generate":
                h = kgtest.token_hash(env.pepper_bytes, res["token"])
                rec = env.redis("HGETALL", "kg:tok:" + h)
                self.assertIn(res["key_id"].encode(), rec, "acknowledged token lost")
                doc = json.loads(env.redis("GET", p + "key:" + res["key_id"]))
                self.assertEqual(doc["tokens"][s.a]["hash"], h)
            elif cmd == "key.update":
                doc = json.loads(env.redis("GET", p + "key:" + args["key"]))
                self.assertEqual(doc["name"], args["name"], "acknowledged rename lost")
            elif cmd == "key.revoke":
                doc = json.loads(env.redis("GET", p + "key:" + args["key"]))
                self.assertEqual(doc["status"], "revoked", "acknowledged revocation lost")
            elif cmd == "user.signup":
                self.assertIsNotNone(env.redis("GET", "kg:user:" + res["user_id"]))
                self.assertIsNotNone(env.redis("GET", "kg:{t:%s}:team" % res["team_id"]))
            elif cmd == "team.member.add":
                team = json.loads(env.redis("GET", p + "team"))
                self.assertEqual(team["members"].get(args["user"]), "user", "acknowledged member lost")

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
            streams = [Stream(env, i, *worlds[i], stop) for i in range(CLIENTS)]
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
            errors = [e for s in streams for e in s.failed]
            self.assertEqual(errors, [], "error answers before the kill")
            self.assertGreater(ok, 20, "too little happened before the kill")
            # restart on the same Redis: first fsck, then each acknowledged command
            env.start_daemon()
            counts = safety.assert_clean(self, env, "round %d after SIGKILL" % rnd)
            for s in streams:
                self.check_present(env, s)
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
