"""Issue 13's key fields through key.create and key.update: expires_at
(paid keys, in the future, integer ms), budget_day_micros /
budget_month_micros (integer micros, 0 or null: none) and rate_limits
({service: {per_second, per_minute}}); who may set them; a refusal changes
nothing; an accepted change publishes "key <id>" so gateways drop their
cached copy. Expiry notices: each user of an expiring paid key is told 7
days and 1 day before (daemon/expiry.c), exactly once each."""
import json
import os
import sys
import time
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

    def notices(self, uid, key=None):
        return [n for n in self.c.ok("notification.list", uid)["notifications"]
                if n["type"] == "key.expiring" and (key is None or n["key_id"] == key)]

    def due(self, key):
        s = self.env.redis("ZSCORE", "kg:keyexpiring", key)
        return None if s is None else int(float(s))

    def wait_notices(self, uid, key, n, timeout=6.0):
        end = time.time() + timeout
        while time.time() < end:
            got = self.notices(uid, key)
            if len(got) >= n:
                return got
            time.sleep(0.1)
        self.fail("%d expiry notices of %s for %s, not %d" % (len(self.notices(uid, key)), key, uid, n))

    def test_expiry_notices_7_days_and_1_day_before_once_each(self):
        # 1 day and 3 s ahead: the first notice at once, the 1-day one 3 s later.
        exp = now_ms() + DAY_MS + 3000
        k = self.c.ok("key.create", self.O, team=self.T, name="soon", users=[self.U, self.A],
                      expires_at=exp)["key_id"]
        for uid in (self.U, self.A):
            n = self.wait_notices(uid, k, 1)
            self.assertEqual(len(n), 1)
            self.assertEqual((n[0]["notice"], n[0]["days_left"], n[0]["expires_at"], n[0]["key_name"],
                              n[0]["team_id"]), ("7d", 2, exp, "soon", self.T))
        self.assertEqual(self.due(k), exp - DAY_MS)
        self.assertEqual(self.notices(self.O, k), [])      # the owner is not a user of the key
        for uid in (self.U, self.A):
            n = self.wait_notices(uid, k, 2, timeout=10)
            self.assertEqual([(x["notice"], x["days_left"]) for x in n], [("1d", 1), ("7d", 2)])
        self.assertIsNone(self.due(k))                    # nothing more to send
        time.sleep(2.5)                                   # later passes send nothing again
        self.assertEqual(len(self.notices(self.U, k)), 2)

    def test_expiry_notice_schedule_follows_updates_and_revocation(self):
        exp = now_ms() + 30 * DAY_MS
        k = self.c.ok("key.create", self.O, team=self.T, name="far", users=[self.U],
                      expires_at=exp)["key_id"]
        self.assertEqual(self.due(k), exp - 7 * DAY_MS)   # not due: nothing sent
        time.sleep(2.5)
        self.assertEqual(self.notices(self.U, k), [])
        # moved to 12 h ahead: one notice, the 1-day one, at once
        exp2 = now_ms() + DAY_MS // 2
        self.c.ok("key.update", self.A, key=k, expires_at=exp2)
        n = self.wait_notices(self.U, k, 1)
        self.assertEqual((n[0]["notice"], n[0]["days_left"], n[0]["expires_at"]), ("1d", 1, exp2))
        self.assertIsNone(self.due(k))
        # cleared: no schedule; set again, then revoked: no schedule either
        self.c.ok("key.update", self.O, key=k, expires_at=now_ms() + 20 * DAY_MS)
        self.assertIsNotNone(self.due(k))
        self.c.ok("key.update", self.O, key=k, expires_at=None)
        self.assertIsNone(self.due(k))
        self.c.ok("key.update", self.O, key=k, expires_at=now_ms() + 3 * DAY_MS)
        self.c.ok("key.revoke", self.O, key=k)
        self.assertIsNone(self.due(k))
        time.sleep(2.5)
        self.assertEqual(len(self.notices(self.U, k)), 1)
        # a key whose notice came due after it was revoked another way: the
        # pass drops it without a word (its document says revoked)
        k2 = self.c.ok("key.create", self.O, team=self.T, name="gone", users=[self.U],
                       expires_at=now_ms() + 30 * DAY_MS)["key_id"]
        self.c.ok("key.revoke", self.O, key=k2)
        self.env.redis("ZADD", "kg:keyexpiring", str(now_ms()), k2)
        time.sleep(2.5)
        self.assertIsNone(self.due(k2))
        self.assertEqual(self.notices(self.U, k2), [])


if __name__ == "__main__":
    unittest.main()
