"""Redis outage: while Redis is down every command that needs it answers
`unavailable` promptly and nothing changes; when Redis comes back the daemon
recovers by itself (no restart), and later writes work.

Redis is stopped after a SAVE and restarted from that snapshot, so the data
before and after the outage can be compared key by key."""
import json
import os
import signal
import sys
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import kgtest  # noqa: E402
from kgtest import signup  # noqa: E402


def model_snapshot(env):
    """Every key and value except the audit lists (refusals may be audited)
    and the published catalog (rewritten on reconnect)."""
    snap = env.redis_scan_all()
    return {k: v for k, v in snap.items() if not k.endswith(b":audit") and k != b"kg:catalog"}


class Outage(kgtest.EnvCase):

    def wait_recovered(self, c, actor, team, timeout=15.0):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = c.call("key.list", actor, team=team)
            if last.get("ok"):
                return time.monotonic()
            time.sleep(0.1)
        self.fail("daemon did not recover within %ss: %r" % (timeout, last))

    def test_outage_and_recovery(self):
        c = self.c
        o = signup(c)
        a, team, fk = o["user_id"], o["team_id"], o["free_key_id"]
        u = signup(c)
        c.ok("team.member.add", a, team=team, user=u["user_id"], role="user")
        k = c.ok("key.create", a, team=team, name="k", users=[a, u["user_id"]])["key_id"]
        w = c.ok("wallet.create", a, team=team, name="w")["wallet_id"]
        c.ok("wallet.credit", a, wallet=w, amount_micros=1000, reference="r0")
        tok = c.ok("token.generate", a, key=k)
        before = model_snapshot(self.env)

        self.env.stop_redis(save=True)
        cmds = [
            ("user.signup", None, {"email": kgtest.unique_email(), "name": "x"}),
            ("team.get", a, {"team": team}),
            ("team.member.add", a, {"team": team, "email": kgtest.unique_email(), "role": "user"}),
            ("team.member.set_role", a, {"team": team, "user": u["user_id"], "role": "admin"}),
            ("team.member.remove", a, {"team": team, "user": u["user_id"]}),
            ("team.transfer_ownership", a, {"team": team, "user": u["user_id"]}),
            ("key.create", a, {"team": team, "name": "during"}),
            ("key.list", a, {"team": team}),
            ("key.get", a, {"key": k}),
            ("key.update", a, {"key": k, "name": "renamed"}),
            ("key.users.set", a, {"key": k, "users": [a], "notify": True}),
            ("key.services.set", a, {"key": k, "services": {
                "text-generation": {"policy": "payg", "models": ["small"], "wallet": w}}}),
            ("key.revoke", a, {"key": k}),
            ("token.generate", u["user_id"], {"key": k}),
            ("token.rotate", a, {"key": k}),
            ("wallet.create", a, {"team": team, "name": "w2"}),
            ("wallet.credit", a, {"wallet": w, "amount_micros": 5, "reference": "r1"}),
            ("wallet.get", a, {"wallet": w}),
            ("wallet.ledger", a, {"wallet": w}),
            ("notification.list", a, {}),
            ("audit.list", a, {"team": team}),
        ]
        c.settimeout(10)
        for cmd, actor, args in cmds:
            t0 = time.monotonic()
            r = c.call(cmd, actor, id=cmd, **args)
            dt = time.monotonic() - t0
            self.assertEqual(r["id"], cmd)
            self.assertEqual(r["ok"], False, (cmd, r))
            self.assertEqual(r["error"]["code"], "unavailable", (cmd, r))
            self.assertLess(dt, 5.0, "%s took %.1fs to answer while Redis is down" % (cmd, dt))
        # commands that need no Redis still answer
        self.assertEqual(c.ok("ping"), {})
        self.assertEqual(c.ok("price.estimate", service="speech-to-text", model="fast",
                              params={"audio_seconds": 1})["cost_micros"], 140)
        # a new connection is accepted too
        c2 = self.env.client()
        self.assertEqual(c2.err("key.get", a, key=k), "unavailable")

        self.env.start_redis()
        t_up = time.monotonic()
        t_ok = self.wait_recovered(c, a, team)
        self.assertLess(t_ok - t_up, 10.0)
        after = model_snapshot(self.env)
        self.assertEqual(sorted(after), sorted(before))
        for key in before:
            self.assertEqual(sorted(after[key]), sorted(before[key]), key)

        # the old connection and the new one work, and writes are accepted
        self.assertEqual(c2.ok("key.get", a, key=k)["name"], "k")
        self.assertEqual(c.ok("wallet.credit", a, wallet=w, amount_micros=5, reference="r1")["balance_micros"],
                         1005)
        self.assertEqual(c.ok("key.create", a, team=team, name="after")["name"], "after")
        self.assertEqual(c.err("token.generate", a, key=k), "conflict")
        r = c.ok("token.rotate", a, key=k)
        self.assertNotEqual(r["token_id"], tok["token_id"])
        self.assertEqual(c.ok("key.get", a, key=fk)["key_id"], fk)

    def test_second_outage(self):
        """Recovery works more than once, and with Redis down longer than a
        reconnect back-off."""
        c = self.c
        o = signup(c)
        for _ in range(2):
            self.env.stop_redis(save=True)
            self.assertEqual(c.err("key.get", o["user_id"], key=o["free_key_id"]), "unavailable")
            time.sleep(2.0)
            self.assertEqual(c.err("key.get", o["user_id"], key=o["free_key_id"]), "unavailable")
            self.env.start_redis()
            self.wait_recovered(c, o["user_id"], o["team_id"])
            signup(c)

    def test_redis_flushed_fresh_restart(self):
        """Redis restarted empty (no snapshot): the daemon reconnects and new
        sign-ups work; old objects are simply gone (not_found/unauthenticated)."""
        c = self.c
        o = signup(c)
        self.env.stop_redis(save=False)
        self.env.start_redis()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            r = c.call("user.signup", email=kgtest.unique_email(), name="n")
            if r.get("ok"):
                break
            self.assertEqual(r["error"]["code"], "unavailable")
            time.sleep(0.1)
        else:
            self.fail("no recovery after a fresh Redis restart")
        self.assertEqual(c.err("team.get", o["user_id"], team=o["team_id"]), "unauthenticated")
        # the catalog is published again for the gateways
        deadline = time.monotonic() + 5
        while self.env.redis("EXISTS", "kg:catalog") == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertEqual(self.env.redis("EXISTS", "kg:catalog"), 1,
                         "kg:catalog not republished after Redis came back empty")


class StartWithoutRedis(unittest.TestCase):
    """keygated started while Redis is down: it serves (unavailable), then
    recovers by itself when Redis appears, and publishes the catalog then."""

    def test_start_without_redis(self):
        env = kgtest.Env(start_daemon=False, redis=False)
        try:
            env.start_daemon()
            c = env.client()
            self.assertEqual(c.ok("ping"), {})
            self.assertEqual(c.err("user.signup", email=kgtest.unique_email(), name="n"), "unavailable")
            env.start_redis()
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                r = c.call("user.signup", email=kgtest.unique_email(), name="n")
                if r["ok"]:
                    break
                self.assertEqual(r["error"]["code"], "unavailable")
                time.sleep(0.1)
            else:
                self.fail("no recovery once Redis started")
            deadline = time.monotonic() + 5
            while env.redis("EXISTS", "kg:catalog") == 0 and time.monotonic() < deadline:
                time.sleep(0.1)
            self.assertEqual(env.redis("EXISTS", "kg:catalog"), 1, "catalog never published")
        finally:
            env.close()
        kgtest.check_clean_exit(env)


class KilledMidPipeline(kgtest.EnvCase):
    """Redis SIGKILLed while a pipeline of writes is in flight, with an
    fsync-always AOF so every acknowledged write survives the restart:
    every request is answered (ok or unavailable, nothing hangs), every
    write answered ok is there after the restart, and no key is half-made
    (the keys zset and the key documents agree; every token record's key
    holds its hash)."""
    env_args = {"redis_args": ["--appendonly", "yes", "--appendfsync", "always"]}
    not_on_cluster = "kills and restarts the one Redis with its AOF (tests/cluster kills masters)"

    def test_kill_during_pipeline(self):
        c = self.c
        o = signup(c)
        a, team = o["user_id"], o["team_id"]
        k0 = c.ok("key.create", a, team=team, name="k0", users=[a])["key_id"]
        n = 400
        reqs = []
        for i in range(n):
            if i % 2 == 0:
                reqs.append({"id": i, "cmd": "key.create", "actor": a, "team": team,
                             "name": "p%d" % i, "users": [a]})
            else:
                reqs.append({"id": i, "cmd": "token.rotate", "actor": a, "key": k0}
                            if i > 1 else {"id": i, "cmd": "token.generate", "actor": a, "key": k0})
        blob = b"".join(json.dumps(r).encode() + b"\n" for r in reqs)
        p = self.env.client(timeout=10)
        p.send_raw(blob)
        # let part of it through, then kill Redis
        first = json.loads(p.read_line())
        self.assertEqual(first["id"], 0)
        self.env.stop_redis(sig=signal.SIGKILL)
        answers = [first]
        for i in range(1, n):
            try:
                line = p.read_line()
            except TimeoutError:
                self.fail("request id %d never answered (%d answers: %d ok, %d unavailable) after "
                          "Redis was killed mid-pipeline" % (i, len(answers), sum(r["ok"] for r in answers),
                                                             sum(not r["ok"] for r in answers)))
            self.assertIsNotNone(line, "connection closed after %d answers" % i)
            answers.append(json.loads(line))
        self.assertEqual([r["id"] for r in answers], list(range(n)))
        codes = {r["error"]["code"] for r in answers if not r["ok"]}
        self.assertLessEqual(codes, {"unavailable"}, [r for r in answers if not r["ok"]][:3])
        created = {r["result"]["key_id"] for r in answers if r["ok"] and r["id"] % 2 == 0}
        self.assertTrue(any(not r["ok"] for r in answers), "Redis died after the whole pipeline")

        self.env.start_redis()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if c.call("key.list", a, team=team).get("ok"):
                break
            time.sleep(0.1)
        keys = {k["key_id"]: k for k in c.ok("key.list", a, team=team)["keys"]}
        self.assertLessEqual(created, set(keys), "acknowledged key.create lost")
        zset = {x.decode() for x in self.env.redis("ZRANGE", "kg:{t:%s}:keys" % team, 0, -1)}
        docs = {x.decode().rsplit(":", 1)[1] for x in self.env.redis_keys("kg:{t:%s}:key:*" % team)}
        self.assertEqual(zset, docs, "keys zset and key documents disagree (half-made key)")
        # the token of k0: the document's current hash has its record
        doc = json.loads(self.env.redis("GET", "kg:{t:%s}:key:%s" % (team, k0)))
        if a in doc["tokens"]:
            h = doc["tokens"][a]["hash"]
            rec = self.env.redis("HGET", "kg:{t:%s}:tok:%s" % (team, h), "token_id")
            self.assertEqual(rec.decode(), doc["tokens"][a]["token_id"])
        # the current token is the last acknowledged rotation's, or one made
        # after it by a rotation whose answer was lost with the connection
        # ("unavailable" for a transaction Redis did run); never an older one
        rotated = [r["result"]["token_id"] for r in answers if r["ok"] and r["id"] % 2 == 1]
        if rotated:
            self.assertNotIn(doc["tokens"][a]["token_id"], rotated[:-1], "an acknowledged rotation was lost")
        # every live token record of k0 is either the current one or in grace
        for tk in self.env.redis_keys("kg:{t:%s}:tok:*" % team):
            if self.env.redis("HGET", tk, "key_id") == k0.encode():
                self.assertEqual(tk.decode(), "kg:{t:%s}:tok:%s" % (team, doc["tokens"][a]["hash"]))


if __name__ == "__main__":
    unittest.main()
