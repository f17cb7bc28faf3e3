"""Enabled services and billing policies (SPEC §1, §7; issue 3):
key.services.set and key.create with services, every validation error with
its code, and nothing changed after each refusal (key document in Redis,
keys zset and the answer of key.get compared)."""
import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import kgtest  # noqa: E402
from kgtest import signup  # noqa: E402


class Services(kgtest.EnvCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        c = cls.c
        cls.t = kgtest.make_team(c, admins=1, users=1, outsiders=0)
        cls.O, cls.A, cls.U = cls.t["owner"], cls.t["admins"][0], cls.t["users"][0]
        cls.team = cls.t["team"]
        cls.w = c.ok("wallet.create", cls.O, team=cls.team, name="main")["wallet_id"]
        cls.w2 = c.ok("wallet.create", cls.O, team=cls.team, name="second")["wallet_id"]
        other = signup(c)
        cls.X = other["user_id"]
        cls.foreign_wallet = c.ok("wallet.create", other["user_id"], team=other["team_id"],
                                  name="theirs")["wallet_id"]

    def new_key(self, services=None):
        args = {"team": self.team, "name": "k", "users": [self.O, self.U]}
        if services is not None:
            args["services"] = services
        return self.c.ok("key.create", self.O, **args)

    def raw(self, key):
        return self.env.redis("GET", "kg:{t:%s}:key:%s" % (self.team, key))

    def payg(self, models, wallet=None):
        return {"policy": "payg", "models": models, "wallet": wallet or self.w}

    def test_set_and_replace(self):
        k = self.new_key()["key_id"]
        s1 = {"text-generation": self.payg(["small"])}
        r = self.c.ok("key.services.set", self.O, key=k, services=s1)
        self.assertEqual(r["services"], s1)
        self.assertEqual(self.c.ok("key.get", self.U, key=k)["services"], s1)
        s2 = {"speech-to-text": {"policy": "free"},
              "text-generation": self.payg(["small", "large"], self.w2)}
        r = self.c.ok("key.services.set", self.A, key=k, services=s2)
        self.assertEqual(r["services"], s2)
        # replaces the whole set
        s3 = {"speech-to-text": self.payg(["fast"])}
        r = self.c.ok("key.services.set", self.O, key=k, services=s3)
        self.assertEqual(r["services"], s3)
        self.assertEqual(self.c.ok("key.get", self.O, key=k)["services"], s3)
        r = self.c.ok("key.services.set", self.O, key=k, services={})
        self.assertEqual(r["services"], {})

    def test_duplicate_models_ignored_or_kept_once(self):
        k = self.new_key()["key_id"]
        # not specified: either refused as bad_request, or stored once
        r = self.c.call("key.services.set", self.O, key=k,
                        services={"text-generation": self.payg(["small", "small"])})
        if r["ok"]:
            self.assertEqual(r["result"]["services"]["text-generation"]["models"], ["small"])
        else:
            self.assertEqual(r["error"]["code"], "bad_request")

    def test_create_with_services(self):
        s = {"speech-to-text": {"policy": "free"}, "text-generation": self.payg(["large"])}
        k = self.new_key(s)
        self.assertEqual(k["services"], s)
        self.assertEqual(self.c.ok("key.get", self.O, key=k["key_id"])["services"], s)

    BAD = [
        # (label, services, code)
        ("non-free service under free", {"text-generation": {"policy": "free"}}, "bad_request"),
        ("unknown service", {"image-generation": {"policy": "free"}}, "bad_request"),
        ("unknown policy", {"speech-to-text": {"policy": "trial"}}, "bad_request"),
        ("policy missing", {"speech-to-text": {}}, "bad_request"),
        ("policy not a string", {"speech-to-text": {"policy": 1}}, "bad_request"),
        ("policy object not an object", {"speech-to-text": "free"}, "bad_request"),
        ("payg without models", {"text-generation": {"policy": "payg", "wallet": None}}, "bad_request"),
        ("payg with empty models", {"text-generation": {"policy": "payg", "models": [], "wallet": None}},
         "bad_request"),
        ("payg with unknown model", {"text-generation": {"policy": "payg", "models": ["huge"], "wallet": None}},
         "bad_request"),
        ("payg with a model of another service",
         {"text-generation": {"policy": "payg", "models": ["fast"], "wallet": None}}, "bad_request"),
        ("payg with one good one bad model",
         {"text-generation": {"policy": "payg", "models": ["small", "nope"], "wallet": None}}, "bad_request"),
        ("payg models not a list",
         {"text-generation": {"policy": "payg", "models": "small", "wallet": None}}, "bad_request"),
        ("payg models not strings",
         {"text-generation": {"policy": "payg", "models": [1], "wallet": None}}, "bad_request"),
        ("payg without wallet", {"text-generation": {"policy": "payg", "models": ["small"]}}, "bad_request"),
        ("payg wallet not a string",
         {"text-generation": {"policy": "payg", "models": ["small"], "wallet": 7}}, "bad_request"),
        ("one good one bad service",
         {"speech-to-text": {"policy": "free"}, "text-generation": {"policy": "free"}}, "bad_request"),
    ]

    def fill(self, services):
        out = {}
        for sid, pol in services.items():
            if isinstance(pol, dict) and "wallet" in pol and pol["wallet"] is None:
                pol = dict(pol, wallet=self.w)
            out[sid] = pol
        return out

    def test_set_refusals_change_nothing(self):
        good = {"speech-to-text": {"policy": "free"}, "text-generation": self.payg(["small"])}
        k = self.new_key(good)["key_id"]
        before = self.raw(k)
        for label, services, code in self.BAD:
            got = self.c.err("key.services.set", self.O, key=k, services=self.fill(services))
            self.assertEqual(got, code, label)
            self.assertEqual(self.raw(k), before, label)
        self.assertEqual(self.c.ok("key.get", self.O, key=k)["services"], good)

    def test_create_refusals_make_no_key(self):
        zset = "kg:{t:%s}:keys" % self.team
        n = self.env.redis("ZCARD", zset)
        ndocs = len(self.env.redis_keys("kg:{t:%s}:key:*" % self.team))
        for label, services, code in self.BAD:
            got = self.c.err("key.create", self.O, team=self.team, name="bad", services=self.fill(services))
            self.assertEqual(got, code, label)
        self.assertEqual(self.env.redis("ZCARD", zset), n)
        self.assertEqual(len(self.env.redis_keys("kg:{t:%s}:key:*" % self.team)), ndocs)

    def test_wallet_of_another_team(self):
        # "a wallet of the key's team": a wallet of another team, or none at
        # all, is refused; we accept bad_request or not_found (the docs do not
        # say which), and require the same code for both.
        k = self.new_key()["key_id"]
        before = self.raw(k)
        c1 = self.c.err("key.services.set", self.O, key=k,
                        services={"text-generation": self.payg(["small"], self.foreign_wallet)})
        c2 = self.c.err("key.services.set", self.O, key=k,
                        services={"text-generation": self.payg(["small"], "w_" + self.team[2:] + "ZZZZZZZZ")})
        c3 = self.c.err("key.services.set", self.O, key=k,
                        services={"text-generation": self.payg(["small"], "not-a-wallet")})
        self.assertIn(c1, ("bad_request", "not_found"))
        self.assertEqual(c1, c2)
        self.assertIn(c3, ("bad_request", "not_found"))
        self.assertEqual(self.raw(k), before)
        n = self.env.redis("ZCARD", "kg:{t:%s}:keys" % self.team)
        self.assertEqual(self.c.err("key.create", self.O, team=self.team, name="x", services={
            "text-generation": self.payg(["small"], self.foreign_wallet)}), c1)
        self.assertEqual(self.env.redis("ZCARD", "kg:{t:%s}:keys" % self.team), n)

    def test_free_key_immutable(self):
        fk = self.t["free_key"]
        before = self.env.redis("GET", "kg:{t:%s}:key:%s" % (self.team, fk))
        for services in ({}, {"speech-to-text": {"policy": "free"}},
                         {"speech-to-text": self.payg(["fast"])},
                         {"text-generation": self.payg(["small"])}):
            self.assertEqual(self.c.err("key.services.set", self.O, key=fk, services=services),
                             "free_key_immutable")
        self.assertEqual(self.env.redis("GET", "kg:{t:%s}:key:%s" % (self.team, fk)), before)

    def test_revoked_key(self):
        k = self.new_key({"text-generation": self.payg(["small"])})["key_id"]
        self.c.ok("key.revoke", self.O, key=k)
        before = self.raw(k)
        self.assertEqual(self.c.err("key.services.set", self.O, key=k,
                                    services={"speech-to-text": {"policy": "free"}}), "invalid_state")
        self.assertEqual(self.raw(k), before)

    def test_roles(self):
        k = self.new_key()["key_id"]
        before = self.raw(k)
        s = {"speech-to-text": {"policy": "free"}}
        self.assertEqual(self.c.err("key.services.set", self.U, key=k, services=s), "forbidden")
        self.assertEqual(self.c.err("key.services.set", self.X, key=k, services=s), "not_found")
        self.assertEqual(self.raw(k), before)
        self.assertEqual(self.c.ok("key.services.set", self.A, key=k, services=s)["services"], s)

    def test_publishes_invalidation(self):
        k = self.new_key()["key_id"]
        sub = self.env.subscribe()
        self.c.ok("key.services.set", self.O, key=k, services={"speech-to-text": {"policy": "free"}})
        sub.wait_for("key " + k)
        # a refused change publishes nothing
        self.c.err("key.services.set", self.O, key=k, services={"text-generation": {"policy": "free"}})
        self.assertEqual(sub.drain(0.3), [])
        sub.close()

    def test_stored_document(self):
        s = {"speech-to-text": {"policy": "free"}, "text-generation": self.payg(["small", "large"])}
        k = self.new_key(s)["key_id"]
        import json
        doc = json.loads(self.raw(k))
        self.assertEqual(doc["services"], s)
        self.assertEqual(doc["kind"], "paid")


if __name__ == "__main__":
    unittest.main()
