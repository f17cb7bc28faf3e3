"""Key and token rules: the free key, conflicts, rotation (with and without
grace), unassignment and member removal killing tokens, revocation, and the
invalidation messages published on kg:inval. Token records are checked in
Redis by their keyed hash, in their team's slot
(kg:{t:T}:tok:<hex BLAKE2b-256(token, key=pepper)>)."""
import os
import sys
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import kgtest  # noqa: E402
from kgtest import signup, now_ms  # noqa: E402

MAX_GRACE = 7 * 24 * 3600


class KeysTokens(kgtest.EnvCase):

    def tok_key(self, token):
        return kgtest.token_key(self.env.pepper_bytes, token)

    def tok_record(self, token):
        flat = self.env.redis("HGETALL", self.tok_key(token))
        return {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}

    def team_of(self, n_users=1):
        o = signup(self.c, name="Owner")
        users = []
        for _ in range(n_users):
            s = signup(self.c, name="User")
            self.c.ok("team.member.add", o["user_id"], team=o["team_id"], user=s["user_id"], role="user")
            users.append(s["user_id"])
        return o, users

    def raw_key_doc(self, team, key):
        return self.env.redis("GET", "kg:{t:%s}:key:%s" % (team, key))

    # -- the free key -----------------------------------------------------------

    def test_free_key_immutable(self):
        o, (u,) = self.team_of(1)
        self.c.ok("team.member.set_role", o["user_id"], team=o["team_id"], user=u, role="admin")
        fk = o["free_key_id"]
        w = self.c.ok("wallet.create", o["user_id"], team=o["team_id"], name="w")["wallet_id"]
        before = self.raw_key_doc(o["team_id"], fk)
        for actor in (o["user_id"], u):
            self.assertEqual(self.c.err("key.services.set", actor, key=fk, services={}),
                             "free_key_immutable")
            self.assertEqual(self.c.err("key.services.set", actor, key=fk, services={
                "speech-to-text": {"policy": "free"},
                "text-generation": {"policy": "payg", "models": ["small"], "wallet": w}}),
                "free_key_immutable")
            self.assertEqual(self.c.err("key.services.set", actor, key=fk, services={
                "speech-to-text": {"policy": "free"}}), "free_key_immutable")
            self.assertEqual(self.c.err("key.revoke", actor, key=fk), "free_key_immutable")
        self.assertEqual(self.raw_key_doc(o["team_id"], fk), before)
        k = self.c.ok("key.get", o["user_id"], key=fk)
        self.assertEqual(k["status"], "active")
        self.assertEqual(k["services"], {"speech-to-text": {"policy": "free"}})

    def test_free_key_editable_parts(self):
        o, (u,) = self.team_of(1)
        fk = o["free_key_id"]
        k = self.c.ok("key.update", o["user_id"], key=fk, name="Free tier", description="ours")
        self.assertEqual((k["name"], k["description"], k["kind"]), ("Free tier", "ours", "free"))
        k = self.c.ok("key.users.set", o["user_id"], key=fk, users=[o["user_id"], u])
        self.assertEqual(sorted(k["users"]), sorted([o["user_id"], u]))
        k = self.c.ok("key.users.set", o["user_id"], key=fk, users=[u])
        self.assertEqual(k["users"], [u])
        self.assertEqual(k["services"], {"speech-to-text": {"policy": "free"}})

    def test_one_free_key(self):
        o, _ = self.team_of(0)
        keys = self.c.ok("key.list", o["user_id"], team=o["team_id"])["keys"]
        self.assertEqual([x["key_id"] for x in keys if x["kind"] == "free"], [o["free_key_id"]])
        k = self.c.ok("key.create", o["user_id"], team=o["team_id"], name="p")
        self.assertEqual(k["kind"], "paid")
        # a kind argument cannot make a second free key: ignored or refused
        r = self.c.call("key.create", o["user_id"], team=o["team_id"], name="p2", kind="free")
        if r["ok"]:
            self.assertEqual(r["result"]["kind"], "paid")
        else:
            self.assertIn(r["error"]["code"], ("conflict", "bad_request"))
        keys = self.c.ok("key.list", o["user_id"], team=o["team_id"])["keys"]
        self.assertEqual([x["key_id"] for x in keys if x["kind"] == "free"], [o["free_key_id"]])

    # -- conflicts --------------------------------------------------------------

    def test_duplicate_email(self):
        email = kgtest.unique_email("dup")
        s = signup(self.c, email=email)
        nusers = len(self.env.redis_keys("kg:user:*"))
        nteams = len(self.env.redis_keys("kg:{t:*}:team"))
        self.assertEqual(self.c.err("user.signup", email=email, name="Again"), "conflict")
        self.assertEqual(self.c.err("user.signup", email=email.upper(), name="Upper"), "conflict")
        self.assertEqual(len(self.env.redis_keys("kg:user:*")), nusers)
        self.assertEqual(len(self.env.redis_keys("kg:{t:*}:team")), nteams)
        self.assertEqual(self.env.redis("GET", "kg:email:" + email.lower()).decode(), s["user_id"])

    def test_second_token_conflict(self):
        o, _ = self.team_of(0)
        g = self.c.ok("token.generate", o["user_id"], key=o["free_key_id"])
        before = self.raw_key_doc(o["team_id"], o["free_key_id"])
        ntok = len(self.env.redis_keys("kg:{t:*}:tok:*"))
        self.assertEqual(self.c.err("token.generate", o["user_id"], key=o["free_key_id"]), "conflict")
        self.assertEqual(self.raw_key_doc(o["team_id"], o["free_key_id"]), before)
        self.assertEqual(len(self.env.redis_keys("kg:{t:*}:tok:*")), ntok)
        self.assertEqual(self.tok_record(g["token"])["token_id"], g["token_id"])

    # -- token records ------------------------------------------------------------

    def test_token_record(self):
        o, _ = self.team_of(0)
        g = self.c.ok("token.generate", o["user_id"], key=o["free_key_id"])
        rec = self.tok_record(g["token"])
        self.assertEqual(rec, {"key_id": o["free_key_id"], "team_id": o["team_id"],
                               "user_id": o["user_id"], "token_id": g["token_id"], "expires_ms": "0"})
        self.assertEqual(self.env.redis("PTTL", self.tok_key(g["token"])), -1)

    def test_rotate_without_grace(self):
        o, _ = self.team_of(0)
        key = o["free_key_id"]
        sub = self.env.subscribe()
        g = self.c.ok("token.generate", o["user_id"], key=key)
        sub.drain(0.1)
        r = self.c.ok("token.rotate", o["user_id"], key=key)
        self.assertIsNone(r["old_expires_at"])
        self.assertEqual(self.env.redis("EXISTS", self.tok_key(g["token"])), 0)
        self.assertEqual(self.tok_record(r["token"])["token_id"], r["token_id"])
        self.assertEqual(self.tok_record(r["token"])["expires_ms"], "0")
        sub.wait_for("key " + key)
        sub.close()

    def test_rotate_with_grace(self):
        o, _ = self.team_of(0)
        key = o["free_key_id"]
        g = self.c.ok("token.generate", o["user_id"], key=key)
        t0 = now_ms()
        r = self.c.ok("token.rotate", o["user_id"], key=key, grace_seconds=120)
        t1 = now_ms()
        old = self.tok_record(g["token"])
        self.assertEqual(old["token_id"], g["token_id"])
        exp = int(old["expires_ms"])
        self.assertEqual(exp, r["old_expires_at"])
        self.assertGreaterEqual(exp, t0 + 120000)
        self.assertLessEqual(exp, t1 + 120000)
        pttl = self.env.redis("PTTL", self.tok_key(g["token"]))
        self.assertGreater(pttl, 110000)
        self.assertLessEqual(pttl, 120000)
        self.assertEqual(self.tok_record(r["token"])["expires_ms"], "0")
        self.assertEqual(self.env.redis("PTTL", self.tok_key(r["token"])), -1)

    def test_rotate_grace_expires(self):
        o, _ = self.team_of(0)
        key = o["free_key_id"]
        g = self.c.ok("token.generate", o["user_id"], key=key)
        self.c.ok("token.rotate", o["user_id"], key=key, grace_seconds=1)
        self.assertEqual(self.env.redis("EXISTS", self.tok_key(g["token"])), 1)
        time.sleep(1.3)
        self.assertEqual(self.env.redis("EXISTS", self.tok_key(g["token"])), 0)

    def test_rotate_grace_bounds(self):
        o, _ = self.team_of(0)
        key = o["free_key_id"]
        g = self.c.ok("token.generate", o["user_id"], key=key)
        before = self.raw_key_doc(o["team_id"], key)
        for bad in (MAX_GRACE + 1, -1, "60", 1.5, True):
            self.assertEqual(self.c.err("token.rotate", o["user_id"], key=key, grace_seconds=bad),
                             "bad_request", bad)
        self.assertEqual(self.raw_key_doc(o["team_id"], key), before)
        self.assertEqual(self.tok_record(g["token"])["expires_ms"], "0")
        r = self.c.ok("token.rotate", o["user_id"], key=key, grace_seconds=MAX_GRACE)
        pttl = self.env.redis("PTTL", self.tok_key(g["token"]))
        self.assertGreater(pttl, (MAX_GRACE - 10) * 1000)
        self.assertLessEqual(pttl, MAX_GRACE * 1000)
        r = self.c.ok("token.rotate", o["user_id"], key=key, grace_seconds=0)
        self.assertIsNone(r["old_expires_at"])

    # -- unassignment and member removal -------------------------------------------

    def test_unassign_kills_token(self):
        o, (u1, u2) = self.team_of(2)
        k = self.c.ok("key.create", o["user_id"], team=o["team_id"], name="k",
                      users=[o["user_id"], u1, u2])["key_id"]
        t1 = self.c.ok("token.generate", u1, key=k)
        t2 = self.c.ok("token.generate", u2, key=k)
        sub = self.env.subscribe()
        r = self.c.ok("key.users.set", o["user_id"], key=k, users=[o["user_id"], u2])
        self.assertEqual(sorted(r["users"]), sorted([o["user_id"], u2]))
        self.assertEqual(set(r["tokens"]), {u2})
        self.assertEqual(self.env.redis("EXISTS", self.tok_key(t1["token"])), 0)
        self.assertEqual(self.env.redis("EXISTS", self.tok_key(t2["token"])), 1)
        sub.wait_for("key " + k)
        sub.close()
        # the unassigned user may no longer generate one; re-assigned, they can
        # (same reading as test_roles: a `user` not assigned -> not_found)
        self.assertEqual(self.c.err("token.generate", u1, key=k), "not_found")
        self.c.ok("key.users.set", o["user_id"], key=k, users=[o["user_id"], u1, u2])
        self.assertIsNone(self.c.ok("key.get", o["user_id"], key=k)["tokens"].get(u1))
        self.c.ok("token.generate", u1, key=k)

    def test_unassign_kills_grace_token_too(self):
        o, (u1,) = self.team_of(1)
        k = self.c.ok("key.create", o["user_id"], team=o["team_id"], name="k",
                      users=[o["user_id"], u1])["key_id"]
        g = self.c.ok("token.generate", u1, key=k)
        r = self.c.ok("token.rotate", u1, key=k, grace_seconds=600)
        self.c.ok("key.users.set", o["user_id"], key=k, users=[o["user_id"]])
        self.assertEqual(self.env.redis("EXISTS", self.tok_key(r["token"])), 0)
        # the grace-period token of an unassigned user must die too
        self.assertEqual(self.env.redis("EXISTS", self.tok_key(g["token"])), 0)

    def test_member_removal_kills_grace_tokens(self):
        o, (u1,) = self.team_of(1)
        k = self.c.ok("key.create", o["user_id"], team=o["team_id"], name="k",
                      users=[o["user_id"], u1])["key_id"]
        g = self.c.ok("token.generate", u1, key=k)
        r = self.c.ok("token.rotate", u1, key=k, grace_seconds=600)
        self.c.ok("team.member.remove", o["user_id"], team=o["team_id"], user=u1)
        self.assertEqual(self.env.redis("EXISTS", self.tok_key(r["token"])), 0)
        self.assertEqual(self.env.redis("EXISTS", self.tok_key(g["token"])), 0)

    def test_revoke_keeps_grace_token_until_expiry(self):
        o, _ = self.team_of(0)
        k = self.c.ok("key.create", o["user_id"], team=o["team_id"], name="k", users=[o["user_id"]])["key_id"]
        g = self.c.ok("token.generate", o["user_id"], key=k)
        r = self.c.ok("token.rotate", o["user_id"], key=k, grace_seconds=600)
        self.c.ok("key.revoke", o["user_id"], key=k)
        # both records stay (KG_KEY_REVOKED); the grace one keeps its expiry
        self.assertEqual(self.tok_record(r["token"])["key_id"], k)
        self.assertEqual(self.tok_record(g["token"])["key_id"], k)
        self.assertGreater(self.env.redis("PTTL", self.tok_key(g["token"])), 590000)

    def test_member_add_by_email_any_case(self):
        o, _ = self.team_of(0)
        email = kgtest.unique_email("Mixed.Case")
        s = signup(self.c, email=email)
        m = self.c.ok("team.member.add", o["user_id"], team=o["team_id"], email=email.lower(), role="user")
        self.assertEqual(m["user_id"], s["user_id"])
        self.assertEqual(self.env.redis("GET", "kg:email:" + email.lower()).decode(), s["user_id"])

    def test_member_removal_kills_tokens(self):
        o, (u1, u2) = self.team_of(2)
        keys = [self.c.ok("key.create", o["user_id"], team=o["team_id"], name="k%d" % i,
                          users=[o["user_id"], u1, u2])["key_id"] for i in range(3)]
        self.c.ok("key.users.set", o["user_id"], key=o["free_key_id"], users=[o["user_id"], u1])
        keys.append(o["free_key_id"])
        toks = {k: self.c.ok("token.generate", u1, key=k)["token"] for k in keys}
        other = self.c.ok("token.generate", u2, key=keys[0])["token"]
        sub = self.env.subscribe()
        self.assertEqual(self.c.ok("team.member.remove", o["user_id"], team=o["team_id"], user=u1), {})
        for k, tok in toks.items():
            self.assertEqual(self.env.redis("EXISTS", self.tok_key(tok)), 0, k)
            doc = self.c.ok("key.get", o["user_id"], key=k)
            self.assertNotIn(u1, doc["users"])
            self.assertNotIn(u1, doc["tokens"])
        self.assertEqual(self.env.redis("EXISTS", self.tok_key(other)), 1)
        msgs = sub.drain(0.5)
        for k in keys:
            self.assertIn("key " + k, msgs)
        sub.close()
        self.assertEqual(self.c.err("key.list", u1, team=o["team_id"]), "not_found")

    # -- revocation ---------------------------------------------------------------

    def test_revoke(self):
        o, (u1,) = self.team_of(1)
        w = self.c.ok("wallet.create", o["user_id"], team=o["team_id"], name="w")["wallet_id"]
        k = self.c.ok("key.create", o["user_id"], team=o["team_id"], name="k",
                      users=[o["user_id"], u1])["key_id"]
        t1 = self.c.ok("token.generate", u1, key=k)
        sub = self.env.subscribe()
        rv = self.c.ok("key.revoke", o["user_id"], key=k)
        self.assertEqual(rv["status"], "revoked")
        sub.wait_for("key " + k)
        sub.close()
        # the token record is kept so gateways answer KG_KEY_REVOKED
        self.assertEqual(self.tok_record(t1["token"])["key_id"], k)
        before = self.raw_key_doc(o["team_id"], k)
        oid = o["user_id"]
        self.assertEqual(self.c.err("token.generate", oid, key=k), "invalid_state")
        self.assertEqual(self.c.err("token.rotate", u1, key=k), "invalid_state")
        self.assertEqual(self.c.err("token.rotate", oid, key=k, user=u1), "invalid_state")
        self.assertEqual(self.c.err("key.revoke", oid, key=k), "invalid_state")
        self.assertEqual(self.c.err("key.services.set", oid, key=k, services={
            "text-generation": {"policy": "payg", "models": ["small"], "wallet": w}}), "invalid_state")
        # "acting on a revoked key": we read edits of name/users as acting too
        self.assertEqual(self.c.err("key.update", oid, key=k, name="x"), "invalid_state")
        self.assertEqual(self.c.err("key.users.set", oid, key=k, users=[oid]), "invalid_state")
        self.assertEqual(self.raw_key_doc(o["team_id"], k), before)
        # still readable
        self.assertEqual(self.c.ok("key.get", u1, key=k)["status"], "revoked")

    # -- services change and key.create publish invalidation -----------------------

    def test_services_change_publishes(self):
        o, _ = self.team_of(0)
        w = self.c.ok("wallet.create", o["user_id"], team=o["team_id"], name="w")["wallet_id"]
        k = self.c.ok("key.create", o["user_id"], team=o["team_id"], name="k")["key_id"]
        sub = self.env.subscribe()
        self.c.ok("key.services.set", o["user_id"], key=k, services={
            "text-generation": {"policy": "payg", "models": ["small"], "wallet": w}})
        sub.wait_for("key " + k)
        sub.close()

    # -- lookups of things that do not exist -------------------------------------

    def test_unknown_objects(self):
        o, _ = self.team_of(0)
        oid = o["user_id"]
        self.assertEqual(self.c.err("key.get", oid, key="k_" + "Q" * 20), "not_found")
        self.assertEqual(self.c.err("team.get", oid, team="t_" + "Q" * 12), "not_found")
        self.assertEqual(self.c.err("wallet.get", oid, wallet="w_" + "Q" * 20), "not_found")
        # a key id of the actor's own team that does not exist
        self.assertEqual(self.c.err("key.get", oid, key="k_" + o["team_id"][2:] + "QQQQQQQQ"), "not_found")
        self.assertEqual(self.c.err("token.generate", oid, key="k_" + "Q" * 20), "not_found")

    def test_users_must_be_members(self):
        o, _ = self.team_of(0)
        x = signup(self.c)["user_id"]
        nkeys = len(self.c.ok("key.list", o["user_id"], team=o["team_id"])["keys"])
        code = self.c.err("key.create", o["user_id"], team=o["team_id"], name="k", users=[x])
        self.assertIn(code, ("bad_request", "not_found"))
        self.assertEqual(len(self.c.ok("key.list", o["user_id"], team=o["team_id"])["keys"]), nkeys)
        before = self.raw_key_doc(o["team_id"], o["free_key_id"])
        code = self.c.err("key.users.set", o["user_id"], key=o["free_key_id"], users=[o["user_id"], x])
        self.assertIn(code, ("bad_request", "not_found"))
        code = self.c.err("key.users.set", o["user_id"], key=o["free_key_id"], users=["u_nobody"])
        self.assertIn(code, ("bad_request", "not_found"))
        self.assertEqual(self.raw_key_doc(o["team_id"], o["free_key_id"]), before)

    def test_transfer_to_non_member(self):
        o, _ = self.team_of(0)
        x = signup(self.c)["user_id"]
        code = self.c.err("team.transfer_ownership", o["user_id"], team=o["team_id"], user=x)
        self.assertIn(code, ("bad_request", "not_found"))
        t = self.c.ok("team.get", o["user_id"], team=o["team_id"])
        self.assertEqual([(m["user_id"], m["role"]) for m in t["members"]], [(o["user_id"], "owner")])

    def test_member_add_twice(self):
        o, (u,) = self.team_of(1)
        code = self.c.err("team.member.add", o["user_id"], team=o["team_id"], user=u, role="admin")
        self.assertEqual(code, "conflict")
        t = self.c.ok("team.get", o["user_id"], team=o["team_id"])
        self.assertEqual({m["user_id"]: m["role"] for m in t["members"]}[u], "user")
        code = self.c.err("team.member.add", o["user_id"], team=o["team_id"], user="u_nobody", role="user")
        self.assertEqual(code, "not_found")
        code = self.c.err("team.member.add", o["user_id"], team=o["team_id"],
                          email="nobody-%s@example.test" % os.getpid(), role="user")
        self.assertEqual(code, "not_found")


if __name__ == "__main__":
    unittest.main()
