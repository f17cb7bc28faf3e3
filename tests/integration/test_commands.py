"""Success path of every admin command (SPEC §2, docs/protocol.md), with
the exact shape of each result."""
import json
import os
import re
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import kgtest  # noqa: E402
from kgtest import signup, now_ms  # noqa: E402

TOKEN_RE = re.compile(r"^kg_[0-9A-Za-z]{61}$")
KEY_FIELDS = {"key_id", "team_id", "name", "description", "kind", "status", "users",
              "services", "tokens", "created_at", "updated_at"}


class Commands(kgtest.EnvCase):

    def test_ping(self):
        self.assertEqual(self.c.call("ping"), {"ok": True, "result": {}})
        self.assertEqual(self.c.call("ping", id="p1"), {"id": "p1", "ok": True, "result": {}})

    def test_signup(self):
        t0 = now_ms()
        email = kgtest.unique_email()
        r = self.c.ok("user.signup", email=email, name="Ada Lovelace", team_name="Engines")
        self.assertEqual(set(r), {"user_id", "team_id", "free_key_id"})
        self.assertTrue(r["user_id"].startswith("u_"), r)
        self.assertTrue(r["team_id"].startswith("t_"), r)
        self.assertTrue(r["free_key_id"].startswith("k_"), r)
        # k_<team12><own8>: the key id embeds its team's id
        self.assertEqual(r["free_key_id"][2:14], r["team_id"][2:14])

        team = self.c.ok("team.get", r["user_id"], team=r["team_id"])
        self.assertEqual(team["team_id"], r["team_id"])
        self.assertEqual(team["name"], "Engines")
        self.assertEqual(team["free_key_id"], r["free_key_id"])
        self.assertIsInstance(team["created_at"], int)
        self.assertGreaterEqual(team["created_at"], t0 - 1000)
        self.assertLessEqual(team["created_at"], now_ms() + 1000)
        self.assertEqual(team["members"], [{"user_id": r["user_id"], "email": email,
                                            "name": "Ada Lovelace", "role": "owner"}])

        key = self.c.ok("key.get", r["user_id"], key=r["free_key_id"])
        self.assertEqual(set(key), KEY_FIELDS)
        self.assertEqual(key["key_id"], r["free_key_id"])
        self.assertEqual(key["team_id"], r["team_id"])
        self.assertEqual(key["kind"], "free")
        self.assertEqual(key["status"], "active")
        self.assertEqual(key["users"], [r["user_id"]])
        self.assertEqual(key["tokens"], {})
        free_services = {s["id"]: {"policy": "free"}
                         for s in self.env.catalog()["services"] if s["free"]}
        self.assertEqual(key["services"], free_services)
        self.assertEqual(key["services"], {"speech-to-text": {"policy": "free"}})

    def test_signup_without_team_name(self):
        r = signup(self.c, name="Bob")
        team = self.c.ok("team.get", r["user_id"], team=r["team_id"])
        self.assertIsInstance(team["name"], str)
        self.assertEqual(len(team["members"]), 1)

    def test_service_list_is_the_catalog(self):
        r = self.c.ok("service.list")
        self.assertEqual(r, self.env.catalog())

    def test_price_estimate(self):
        r = self.c.ok("price.estimate", service="speech-to-text", model="fast",
                      params={"audio_seconds": 10})
        self.assertEqual(r["cost_micros"], 500)
        self.assertEqual(r["currency"], "USD")
        self.assertEqual(r["base_micros"], 100)
        self.assertEqual(r["breakdown"], [{"param": "audio_seconds", "quantity": 10,
                                           "subtotal_micros": 400}])

    def test_team_members(self):
        o = signup(self.c, name="Owner")
        a = signup(self.c, name="Admin")
        u = signup(self.c, name="User")
        team = o["team_id"]
        m = self.c.ok("team.member.add", o["user_id"], team=team, user=a["user_id"], role="admin")
        self.assertEqual(m, {"user_id": a["user_id"], "email": a["email"], "name": "Admin",
                             "role": "admin"})
        # by email
        m = self.c.ok("team.member.add", o["user_id"], team=team, email=u["email"], role="user")
        self.assertEqual(m, {"user_id": u["user_id"], "email": u["email"], "name": "User",
                             "role": "user"})
        t = self.c.ok("team.get", u["user_id"], team=team)
        roles = {x["user_id"]: x["role"] for x in t["members"]}
        self.assertEqual(roles, {o["user_id"]: "owner", a["user_id"]: "admin", u["user_id"]: "user"})

        m = self.c.ok("team.member.set_role", o["user_id"], team=team, user=u["user_id"], role="admin")
        self.assertEqual(m["role"], "admin")
        self.assertEqual(m["user_id"], u["user_id"])
        m = self.c.ok("team.member.set_role", o["user_id"], team=team, user=u["user_id"], role="user")
        self.assertEqual(m["role"], "user")

        self.assertEqual(self.c.ok("team.member.remove", o["user_id"], team=team, user=u["user_id"]), {})
        t = self.c.ok("team.get", o["user_id"], team=team)
        self.assertEqual({x["user_id"] for x in t["members"]}, {o["user_id"], a["user_id"]})
        # the removed user is no longer a member: not_found
        self.assertEqual(self.c.err("team.get", u["user_id"], team=team), "not_found")

        t = self.c.ok("team.transfer_ownership", o["user_id"], team=team, user=a["user_id"])
        roles = {x["user_id"]: x["role"] for x in t["members"]}
        self.assertEqual(roles, {o["user_id"]: "admin", a["user_id"]: "owner"})
        self.assertEqual(t["team_id"], team)

    def test_key_lifecycle(self):
        o = signup(self.c, name="Owner")
        u = signup(self.c, name="User")
        team = o["team_id"]
        self.c.ok("team.member.add", o["user_id"], team=team, user=u["user_id"], role="user")
        t0 = now_ms()
        k = self.c.ok("key.create", o["user_id"], team=team, name="prod", description="the prod key",
                      users=[o["user_id"], u["user_id"], u["user_id"]])
        self.assertEqual(set(k), KEY_FIELDS)
        self.assertTrue(k["key_id"].startswith("k_"))
        self.assertEqual(k["key_id"][2:14], team[2:14])
        self.assertEqual(k["team_id"], team)
        self.assertEqual(k["name"], "prod")
        self.assertEqual(k["description"], "the prod key")
        self.assertEqual(k["kind"], "paid")
        self.assertEqual(k["status"], "active")
        self.assertEqual(sorted(k["users"]), sorted([o["user_id"], u["user_id"]]))  # duplicates ignored
        self.assertEqual(k["services"], {})
        self.assertEqual(k["tokens"], {})
        self.assertGreaterEqual(k["created_at"], t0 - 1000)
        self.assertGreaterEqual(k["updated_at"], k["created_at"])

        self.assertEqual(self.c.ok("key.get", o["user_id"], key=k["key_id"]), k)

        # description optional, users optional
        k2 = self.c.ok("key.create", o["user_id"], team=team, name="staging")
        self.assertEqual(k2["description"], "")
        self.assertEqual(k2["users"], [])

        lst = self.c.ok("key.list", o["user_id"], team=team)
        self.assertEqual(set(lst), {"keys"})
        ids = {x["key_id"] for x in lst["keys"]}
        self.assertEqual(ids, {o["free_key_id"], k["key_id"], k2["key_id"]})
        lst = self.c.ok("key.list", u["user_id"], team=team)
        self.assertEqual({x["key_id"] for x in lst["keys"]}, {k["key_id"]})

        up = self.c.ok("key.update", o["user_id"], key=k["key_id"], name="production")
        self.assertEqual(up["name"], "production")
        self.assertEqual(up["description"], "the prod key")
        self.assertGreaterEqual(up["updated_at"], k["updated_at"])
        up = self.c.ok("key.update", o["user_id"], key=k["key_id"], description="")
        self.assertEqual(up["name"], "production")
        self.assertEqual(up["description"], "")

        r = self.c.ok("key.users.set", o["user_id"], key=k["key_id"], users=[o["user_id"]])
        self.assertEqual(r["users"], [o["user_id"]])
        self.assertEqual(r["notified"], [])
        self.assertEqual(r["key_id"], k["key_id"])

        rv = self.c.ok("key.revoke", o["user_id"], key=k["key_id"])
        self.assertEqual(rv["status"], "revoked")
        self.assertEqual(rv["key_id"], k["key_id"])
        # still listed, as revoked
        lst = self.c.ok("key.list", o["user_id"], team=team)
        st = {x["key_id"]: x["status"] for x in lst["keys"]}
        self.assertEqual(st[k["key_id"]], "revoked")
        self.assertEqual(st[k2["key_id"]], "active")

    def test_tokens(self):
        o = signup(self.c)
        key = o["free_key_id"]
        g = self.c.ok("token.generate", o["user_id"], key=key)
        self.assertEqual(set(g), {"token", "token_id", "hint", "key_id", "user_id"})
        tok = g["token"]
        self.assertRegex(tok, TOKEN_RE)
        self.assertTrue(g["token_id"].startswith("tk_"), g)
        self.assertEqual(g["hint"], "kg_" + tok[3:7] + "\u2026" + tok[-4:])
        self.assertEqual(g["key_id"], key)
        self.assertEqual(g["user_id"], o["user_id"])

        k = self.c.ok("key.get", o["user_id"], key=key)
        self.assertEqual(set(k["tokens"]), {o["user_id"]})
        entry = k["tokens"][o["user_id"]]
        self.assertEqual(set(entry), {"token_id", "hint", "created_at"})
        self.assertEqual(entry["token_id"], g["token_id"])
        self.assertEqual(entry["hint"], g["hint"])
        self.assertNotIn(tok, json.dumps(k))

        r = self.c.ok("token.rotate", o["user_id"], key=key)
        self.assertEqual(set(r), {"token", "token_id", "hint", "key_id", "user_id", "old_expires_at"})
        self.assertRegex(r["token"], TOKEN_RE)
        self.assertNotEqual(r["token"], tok)
        self.assertNotEqual(r["token_id"], g["token_id"])
        self.assertIsNone(r["old_expires_at"])
        k = self.c.ok("key.get", o["user_id"], key=key)
        self.assertEqual(k["tokens"][o["user_id"]]["token_id"], r["token_id"])

        t0 = now_ms()
        r2 = self.c.ok("token.rotate", o["user_id"], key=key, grace_seconds=60)
        self.assertIsInstance(r2["old_expires_at"], int)
        self.assertGreaterEqual(r2["old_expires_at"], t0 + 59000)
        self.assertLessEqual(r2["old_expires_at"], now_ms() + 61000)

    def test_wallet_commands(self):
        o = signup(self.c)
        t0 = now_ms()
        w = self.c.ok("wallet.create", o["user_id"], team=o["team_id"], name="main")
        self.assertEqual(set(w), {"wallet_id", "team_id", "name", "balance_micros", "held_micros", "created_at"})
        self.assertTrue(w["wallet_id"].startswith("w_"))
        self.assertEqual(w["wallet_id"][2:14], o["team_id"][2:14])
        self.assertEqual(w["team_id"], o["team_id"])
        self.assertEqual(w["name"], "main")
        self.assertEqual(w["balance_micros"], 0)
        self.assertGreaterEqual(w["created_at"], t0 - 1000)
        self.assertEqual(self.c.ok("wallet.get", o["user_id"], wallet=w["wallet_id"]), w)
        self.assertEqual(self.c.ok("wallet.list", o["user_id"], team=o["team_id"]), {"wallets": [w]})
        cr = self.c.ok("wallet.credit", o["user_id"], wallet=w["wallet_id"], amount_micros=2500000,
                       reference="topup-1")
        self.assertEqual(cr["credited"], True)
        self.assertEqual(cr["balance_micros"], 2500000)
        self.assertEqual(cr["wallet_id"], w["wallet_id"])
        led = self.c.ok("wallet.ledger", o["user_id"], wallet=w["wallet_id"])
        self.assertEqual(len(led["entries"]), 1)
        e = led["entries"][0]
        self.assertEqual(e["type"], "credit")
        self.assertEqual(e["amount_micros"], 2500000)
        self.assertEqual(e["balance_micros"], 2500000)
        self.assertEqual(e["reference"], "topup-1")
        self.assertEqual(e["actor"], o["user_id"])
        self.assertIsInstance(e["at"], int)

    def test_notification_and_audit_list(self):
        o = signup(self.c)
        u = signup(self.c)
        self.c.ok("team.member.add", o["user_id"], team=o["team_id"], user=u["user_id"], role="user")
        r = self.c.ok("key.users.set", o["user_id"], key=o["free_key_id"],
                      users=[o["user_id"], u["user_id"]], notify=True)
        self.assertEqual(r["notified"], [u["user_id"]])
        n = self.c.ok("notification.list", u["user_id"])
        self.assertEqual(set(n), {"notifications"})
        self.assertEqual(len(n["notifications"]), 1)
        a = self.c.ok("audit.list", o["user_id"], team=o["team_id"])
        self.assertEqual(set(a), {"entries"})
        self.assertGreaterEqual(len(a["entries"]), 2)
        self.assertEqual(self.c.ok("notification.list", o["user_id"]), {"notifications": []})


if __name__ == "__main__":
    unittest.main()
