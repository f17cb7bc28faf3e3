"""Wallets (SPEC §1, §2; issue 3): create/list/get, credit validation with
nothing changed after a refusal, idempotent credit by reference, 8 clients
crediting one wallet in parallel, the ledger and its invariant, the Redis
layout (one hash tag per team), roles."""
import hashlib
import json
import os
import sys
import threading
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import kgtest  # noqa: E402
from kgtest import signup  # noqa: E402

I64 = 2 ** 63 - 1


class Wallets(kgtest.EnvCase):

    def owner(self):
        o = signup(self.c)
        return o["user_id"], o["team_id"]

    def state(self, a, w):
        """Balance, ledger and the raw Redis records of wallet w."""
        team = self.c.ok("wallet.get", a, wallet=w)["team_id"]
        return (self.c.ok("wallet.get", a, wallet=w),
                self.c.ok("wallet.ledger", a, wallet=w, limit=1000),
                self.env.redis("HGETALL", "kg:{t:%s}:wallet:%s" % (team, w)),
                self.env.redis("LRANGE", "kg:{t:%s}:ledger:%s" % (team, w), 0, -1),
                sorted(self.env.redis_keys("kg:{t:%s}:credit:%s:*" % (team, w))))

    def test_create_list_get(self):
        a, team = self.owner()
        ws = [self.c.ok("wallet.create", a, team=team, name="w%d" % i) for i in range(3)]
        self.assertEqual(len({w["wallet_id"] for w in ws}), 3)
        lst = self.c.ok("wallet.list", a, team=team)["wallets"]
        self.assertEqual(sorted(lst, key=lambda w: w["wallet_id"]), sorted(ws, key=lambda w: w["wallet_id"]))
        for w in ws:
            self.assertEqual(self.c.ok("wallet.get", a, wallet=w["wallet_id"]), w)
            h = self.env.redis("HGETALL", "kg:{t:%s}:wallet:%s" % (team, w["wallet_id"]))
            h = {h[i].decode(): h[i + 1].decode() for i in range(0, len(h), 2)}
            self.assertEqual(h["balance_micros"], "0")
            self.assertEqual(h["wallet_id"], w["wallet_id"])
            self.assertEqual(h["team_id"], team)
        self.assertEqual(self.env.redis("ZCARD", "kg:{t:%s}:wallets" % team), 3)
        # another team's owner cannot see them
        b, _ = self.owner()
        self.assertEqual(self.c.err("wallet.get", b, wallet=ws[0]["wallet_id"]), "not_found")

    def test_create_bad(self):
        a, team = self.owner()
        for args in ({"team": team}, {"team": team, "name": 5}, {"team": team, "name": None}):
            self.assertEqual(self.c.err("wallet.create", a, **args), "bad_request", args)
        self.assertEqual(self.c.ok("wallet.list", a, team=team)["wallets"], [])

    def test_credit_validation(self):
        a, team = self.owner()
        w = self.c.ok("wallet.create", a, team=team, name="w")["wallet_id"]
        self.c.ok("wallet.credit", a, wallet=w, amount_micros=10, reference="seed")
        before = self.state(a, w)
        bad = [
            {"amount_micros": 0, "reference": "r"},
            {"amount_micros": -5, "reference": "r"},
            {"amount_micros": -I64 - 1, "reference": "r"},
            {"reference": "r"},
            {"amount_micros": "100", "reference": "r"},
            {"amount_micros": 1.5, "reference": "r"},
            {"amount_micros": 100.0, "reference": "r"},
            {"amount_micros": None, "reference": "r"},
            {"amount_micros": True, "reference": "r"},
            {"amount_micros": 2 ** 63, "reference": "r"},
            {"amount_micros": 100},
            {"amount_micros": 100, "reference": ""},
            {"amount_micros": 100, "reference": None},
            {"amount_micros": 100, "reference": 42},
            {"amount_micros": 100, "reference": ["r"]},
        ]
        for args in bad:
            self.assertEqual(self.c.err("wallet.credit", a, wallet=w, **args), "bad_request", args)
            self.assertEqual(self.state(a, w), before, args)
        # the seed reference with a bad amount is still a bad request, not a replay
        self.assertEqual(self.c.err("wallet.credit", a, wallet=w, amount_micros=0, reference="seed"),
                         "bad_request")
        self.assertEqual(self.c.err("wallet.credit", a, wallet="w_" + team[2:] + "ZZZZZZZZ",
                                    amount_micros=1, reference="x"), "not_found")
        self.assertEqual(self.state(a, w), before)

    def test_credit_overflow_refused(self):
        """A credit that would push the balance past INT64_MAX is refused and
        changes nothing. The balance is set near the limit directly in Redis
        (the daemon caps one credit well below it)."""
        a, team = self.owner()
        w = self.c.ok("wallet.create", a, team=team, name="w")["wallet_id"]
        self.c.ok("wallet.credit", a, wallet=w, amount_micros=10, reference="seed")
        self.env.redis("HSET", "kg:{t:%s}:wallet:%s" % (team, w), "balance_micros", I64 - 5)
        self.assertEqual(self.c.ok("wallet.get", a, wallet=w)["balance_micros"], I64 - 5)
        before = self.state(a, w)
        r = self.c.call("wallet.credit", a, wallet=w, amount_micros=10, reference="one-more")
        self.assertEqual(r["ok"], False, r)
        # not specified which code: a balance overflow is a bad amount to us
        self.assertEqual(r["error"]["code"], "bad_request", r)
        self.assertEqual(self.state(a, w), before)
        # (the daemon caps balances at 2^53-1, what Lua's doubles hold exactly;
        # the spec only says 64-bit integers, so the cap itself is not tested)

    def test_idempotent_credit(self):
        a, team = self.owner()
        w = self.c.ok("wallet.create", a, team=team, name="w")["wallet_id"]
        r1 = self.c.ok("wallet.credit", a, wallet=w, amount_micros=1500, reference="topup-42")
        self.assertEqual((r1["credited"], r1["balance_micros"]), (True, 1500))
        self.assertEqual(r1["wallet_id"], w)
        state = self.state(a, w)
        r2 = self.c.ok("wallet.credit", a, wallet=w, amount_micros=1500, reference="topup-42")
        self.assertEqual((r2["credited"], r2["balance_micros"]), (False, 1500))
        # the same reference with another amount credits nothing either
        r3 = self.c.ok("wallet.credit", a, wallet=w, amount_micros=999, reference="topup-42")
        self.assertEqual((r3["credited"], r3["balance_micros"]), (False, 1500))
        self.assertEqual(self.state(a, w), state)
        # the idempotency record: credit:<wallet>:<sha256 hex of the reference>
        ref_key = "kg:{t:%s}:credit:%s:%s" % (team, w, hashlib.sha256(b"topup-42").hexdigest())
        entry = json.loads(self.env.redis("GET", ref_key))
        self.assertEqual((entry["type"], entry["amount_micros"], entry["reference"]),
                         ("credit", 1500, "topup-42"))
        self.assertEqual(self.env.redis("PTTL", ref_key), -1)
        # references are per wallet
        w2 = self.c.ok("wallet.create", a, team=team, name="w2")["wallet_id"]
        self.assertTrue(self.c.ok("wallet.credit", a, wallet=w2, amount_micros=1, reference="topup-42")["credited"])
        # case and whitespace matter
        self.assertTrue(self.c.ok("wallet.credit", a, wallet=w, amount_micros=1, reference="TOPUP-42")["credited"])
        self.assertTrue(self.c.ok("wallet.credit", a, wallet=w, amount_micros=1, reference="topup-42 ")["credited"])
        self.assertEqual(self.c.ok("wallet.get", a, wallet=w)["balance_micros"], 1502)

    def test_ledger(self):
        a, team = self.owner()
        w = self.c.ok("wallet.create", a, team=team, name="w")["wallet_id"]
        self.assertEqual(self.c.ok("wallet.ledger", a, wallet=w), {"entries": []})
        t0 = kgtest.now_ms()
        amounts = [5, 70, 300, 1, 1000000]
        for i, amt in enumerate(amounts):
            self.c.ok("wallet.credit", a, wallet=w, amount_micros=amt, reference="ref-%d" % i)
        self.c.ok("wallet.credit", a, wallet=w, amount_micros=5, reference="ref-0")  # replay: no entry
        led = self.c.ok("wallet.ledger", a, wallet=w)["entries"]
        self.assertEqual(len(led), 5)
        running, expect = 0, []
        for i, amt in enumerate(amounts):
            running += amt
            expect.append((amt, running, "ref-%d" % i))
        expect.reverse()  # newest first
        self.assertEqual([(e["amount_micros"], e["balance_micros"], e["reference"]) for e in led], expect)
        for e in led:
            self.assertEqual(e["type"], "credit")
            self.assertEqual(e["actor"], a)
            self.assertGreaterEqual(e["at"], t0 - 1000)
        ats = [e["at"] for e in led]
        self.assertEqual(ats, sorted(ats, reverse=True))
        self.assertEqual(len(self.c.ok("wallet.ledger", a, wallet=w, limit=2)["entries"]), 2)
        self.assertEqual(self.c.ok("wallet.ledger", a, wallet=w, limit=2)["entries"], led[:2])
        self.assertEqual(len(self.c.ok("wallet.ledger", a, wallet=w, limit=1000)["entries"]), 5)
        for bad in (0, -1, 1001, "5", 2.5):
            self.assertEqual(self.c.err("wallet.ledger", a, wallet=w, limit=bad), "bad_request", bad)
        # the stored list matches
        raw = [json.loads(x) for x in self.env.redis("LRANGE", "kg:{t:%s}:ledger:%s" % (team, w), 0, -1)]
        self.assertEqual(raw, led)
        self.assertEqual(self.c.ok("wallet.get", a, wallet=w)["balance_micros"], sum(amounts))

    def test_parallel_credits(self):
        a, team = self.owner()
        w = self.c.ok("wallet.create", a, team=team, name="w")["wallet_id"]
        nthreads, per = 8, 40
        errors = []
        total = [0]
        lock = threading.Lock()

        def work(t):
            try:
                c = kgtest.Client(self.env.socket_path, timeout=30)
                s = 0
                for i in range(per):
                    amt = 1 + t * 1000 + i
                    r = c.ok("wallet.credit", a, wallet=w, amount_micros=amt, reference="t%d-%d" % (t, i))
                    assert r["credited"] is True, r
                    s += amt
                c.close()
                with lock:
                    total[0] += s
            except Exception as e:  # noqa: BLE001
                errors.append(repr(e))

        threads = [threading.Thread(target=work, args=(t,)) for t in range(nthreads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual(errors, [])
        expect = sum(1 + t * 1000 + i for t in range(nthreads) for i in range(per))
        self.assertEqual(total[0], expect)
        self.assertEqual(self.c.ok("wallet.get", a, wallet=w)["balance_micros"], expect)
        led = self.c.ok("wallet.ledger", a, wallet=w, limit=1000)["entries"]
        self.assertEqual(len(led), nthreads * per)
        self.assertEqual(sum(e["amount_micros"] for e in led), expect)
        # each entry's balance is the one before plus its amount (a total order)
        bal = 0
        for e in reversed(led):
            bal += e["amount_micros"]
            self.assertEqual(e["balance_micros"], bal)

    def test_parallel_same_references(self):
        """8 clients replaying the same 10 references at once: exactly 10 credits."""
        a, team = self.owner()
        w = self.c.ok("wallet.create", a, team=team, name="w")["wallet_id"]
        credited = []
        errors = []
        barrier = threading.Barrier(8)

        def work(t):
            try:
                c = kgtest.Client(self.env.socket_path, timeout=30)
                barrier.wait(10)
                for i in range(10):
                    r = c.ok("wallet.credit", a, wallet=w, amount_micros=100 + i, reference="same-%d" % i)
                    if r["credited"]:
                        credited.append(i)
                c.close()
            except Exception as e:  # noqa: BLE001
                errors.append(repr(e))

        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual(errors, [])
        self.assertEqual(sorted(credited), list(range(10)))
        self.assertEqual(self.c.ok("wallet.get", a, wallet=w)["balance_micros"], sum(100 + i for i in range(10)))
        self.assertEqual(len(self.c.ok("wallet.ledger", a, wallet=w)["entries"]), 10)

    def test_one_hash_tag_per_team(self):
        a, team = self.owner()
        w = self.c.ok("wallet.create", a, team=team, name="w")["wallet_id"]
        self.c.ok("wallet.credit", a, wallet=w, amount_micros=1, reference="x")
        self.c.ok("key.create", a, team=team, name="k")
        team_keys = [k for k in self.env.redis_keys("kg:{t:%s}*" % team)]
        self.assertGreaterEqual(len(team_keys), 6)
        for k in self.env.redis_keys("*" + w + "*"):
            # A record's version (kg:v:<name>, job.c) keeps its hash tag.
            self.assertTrue(k.startswith(("kg:{t:%s}:" % team).encode()) or
                            k.startswith(("kg:v:{t:%s}:" % team).encode()), k)

    def test_roles(self):
        t = kgtest.make_team(self.c, admins=1, users=1, outsiders=1)
        O, A, U, X = t["owner"], t["admins"][0], t["users"][0], t["outsiders"][0]
        w = self.c.ok("wallet.create", A, team=t["team"], name="by admin")["wallet_id"]
        self.assertTrue(self.c.ok("wallet.credit", A, wallet=w, amount_micros=7, reference="a")["credited"])
        self.assertTrue(self.c.ok("wallet.credit", O, wallet=w, amount_micros=8, reference="o")["credited"])
        before = self.state(O, w)
        for actor, code in ((U, "forbidden"), (X, "not_found")):
            self.assertEqual(self.c.err("wallet.create", actor, team=t["team"], name="n"), code)
            self.assertEqual(self.c.err("wallet.list", actor, team=t["team"]), code)
            self.assertEqual(self.c.err("wallet.get", actor, wallet=w), code)
            self.assertEqual(self.c.err("wallet.credit", actor, wallet=w, amount_micros=1, reference="u"), code)
            self.assertEqual(self.c.err("wallet.ledger", actor, wallet=w), code)
        self.assertEqual(self.state(O, w), before)
        self.assertEqual(len(self.c.ok("wallet.list", O, team=t["team"])["wallets"]), 1)


if __name__ == "__main__":
    unittest.main()
