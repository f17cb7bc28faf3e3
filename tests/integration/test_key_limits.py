"""Issue 13's key fields through key.create and key.update: expires_at
(paid keys, in the future, integer ms), budget_day_micros /
budget_month_micros (integer micros, 0 or null: none) and rate_limits
({service: {per_second, per_minute}}); who may set them; a refusal changes
nothing; an accepted change publishes "key <id>" so gateways drop their
cached copy."""
import json
import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import kgtest  # noqa: E402
from kgtest import signup, now_ms  # noqa: E402

DAY_MS = 86400 * 1000


class KeyLimits(kgtest.EnvCase):

    def setUp(self):
        self.o = signup(self.c, name="Owner")
        self.O = self.o["user_id"]
        self.T = self.o["team_id"]
        u = signup(self.c, name="User")
        self.c.ok("team.member.add", self.O, team=self.T, user=u["user_id"], role="user")
        self.U = u["user_id"]
        a = signup(self.c, name="Admin")
        self.c.ok("team.member.add", self.O, team=self.T, user=a["user_id"], role="admin")
        self.A = a["user_id"]

    def raw(self, key):
        return self.env.redis("GET", "kg:{t:%s}:key:%s" % (self.T, key))

    def doc(self, key):
        return json.loads(self.raw(key))

    def test_create_with_limits(self):
        exp = now_ms() + DAY_MS
        k = self.c.ok("key.create", self.A, team=self.T, name="lim", expires_at=exp,
                      budget_day_micros=5000000, budget_month_micros=90000000,
                      rate_limits={"text-generation": {"per_second": 5, "per_minute": 100}})
        for src in (k, self.doc(k["key_id"]), self.c.ok("key.get", self.O, key=k["key_id"])):
            self.assertEqual(src["expires_at"], exp)
            self.assertEqual(src["budget_day_micros"], 5000000)
            self.assertEqual(src["budget_month_micros"], 90000000)
            self.assertEqual(src["rate_limits"],
                             {"text-generation": {"per_second": 5, "per_minute": 100}})
        plain = self.c.ok("key.create", self.O, team=self.T, name="plain")
        for f in ("expires_at", "budget_day_micros", "budget_month_micros", "rate_limits"):
            self.assertNotIn(f, self.doc(plain["key_id"]))

    def test_create_refusals_change_nothing(self):
        before = self.env.redis("ZCARD", "kg:{t:%s}:keys" % self.T)
        bad = [
            {"expires_at": now_ms() - 1000},
            {"expires_at": "tomorrow"},
            {"expires_at": 1.5e12 + 0.5},
            {"expires_at": True},
            {"budget_day_micros": -1},
            {"budget_day_micros": 1.5},
            {"budget_month_micros": "100"},
            {"budget_month_micros": 2 ** 53},
            {"rate_limits": []},
            {"rate_limits": {"no-such-service": {"per_second": 1}}},
            {"rate_limits": {"text-generation": {"per_hour": 1}}},
            {"rate_limits": {"text-generation": {"per_second": -1}}},
            {"rate_limits": {"text-generation": {"per_second": 1001}}},
            {"rate_limits": {"text-generation": {"per_minute": 10001}}},
            {"rate_limits": {"text-generation": 5}},
        ]
        for args in bad:
            with self.subTest(args=args):
                self.assertEqual(self.c.err("key.create", self.O, team=self.T, name="x", **args),
                                 "bad_request")
        self.assertEqual(self.env.redis("ZCARD", "kg:{t:%s}:keys" % self.T), before)

    def test_update_sets_clears_and_publishes(self):
        k = self.c.ok("key.create", self.O, team=self.T, name="k")["key_id"]
        sub = self.env.subscribe()
        exp = now_ms() + 7 * DAY_MS
        up = self.c.ok("key.update", self.A, key=k, expires_at=exp, budget_day_micros=100)
        self.assertEqual((up["expires_at"], up["budget_day_micros"]), (exp, 100))
        sub.wait_for("key " + k)
        up = self.c.ok("key.update", self.O, key=k,
                       rate_limits={"speech-to-text": {"per_second": 0, "per_minute": 7}})
        self.assertEqual(up["rate_limits"], {"speech-to-text": {"per_minute": 7}})
        self.assertEqual(up["expires_at"], exp)          # untouched when not given
        sub.wait_for("key " + k)
        up = self.c.ok("key.update", self.O, key=k, expires_at=None, budget_day_micros=0,
                       rate_limits=None)
        for f in ("expires_at", "budget_day_micros", "rate_limits"):
            self.assertNotIn(f, up)
            self.assertNotIn(f, self.doc(k))
        sub.wait_for("key " + k)
        # a plain rename tells nobody (nothing the gateway decides by)
        sub.drain(0.1)
        self.c.ok("key.update", self.O, key=k, name="renamed")
        self.assertIsNone(sub.get(0.3))
        sub.close()

    def test_update_refusals(self):
        k = self.c.ok("key.create", self.O, team=self.T, name="k", budget_day_micros=7)["key_id"]
        before = self.raw(k)
        self.assertEqual(self.c.err("key.update", self.U, key=k, budget_day_micros=1),
                         "forbidden")
        self.assertEqual(self.c.err("key.update", self.O, key=k, expires_at=now_ms() - 5),
                         "bad_request")
        self.assertEqual(self.c.err("key.update", self.O, key=k, name="new", budget_day_micros=-3),
                         "bad_request")
        self.assertEqual(self.raw(k), before)
        # the free key never expires
        fk = self.o["free_key_id"]
        fbefore = self.raw(fk)
        self.assertEqual(self.c.err("key.update", self.O, key=fk, expires_at=now_ms() + DAY_MS),
                         "free_key_immutable")
        self.assertEqual(self.raw(fk), fbefore)
        # a revoked key is not edited
        self.c.ok("key.revoke", self.O, key=k)
        self.assertEqual(self.c.err("key.update", self.O, key=k, budget_day_micros=1),
                         "invalid_state")


if __name__ == "__main__":
    unittest.main()
