"""Every row of the SPEC §1 role matrix, where it is allowed and where it is
refused: `forbidden` for a member whose role does not allow it (and nothing
changed), `not_found` for a non-member (the same answer as for a team or
object that does not exist)."""
import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import kgtest  # noqa: E402
from kgtest import signup  # noqa: E402


class Roles(kgtest.EnvCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        c = cls.c
        cls.t = kgtest.make_team(c, admins=2, users=2, outsiders=1)
        t = cls.t
        cls.O, cls.A, cls.A2 = t["owner"], t["admins"][0], t["admins"][1]
        cls.U, cls.U2 = t["users"]
        cls.X = t["outsiders"][0]
        cls.team = t["team"]
        # a key every member is assigned to, one assigned to nobody
        cls.shared = c.ok("key.create", cls.O, team=cls.team, name="shared",
                          users=[cls.O, cls.A, cls.A2, cls.U, cls.U2])["key_id"]
        cls.unassigned = c.ok("key.create", cls.O, team=cls.team, name="nobody")["key_id"]
        cls.wallet = c.ok("wallet.create", cls.O, team=cls.team, name="w")["wallet_id"]

    def key_for(self, users=None):
        users = users if users is not None else [self.O, self.A, self.U]
        return self.c.ok("key.create", self.O, team=self.team, name="k", users=users)["key_id"]

    def key_state(self, key):
        return self.c.ok("key.get", self.O, key=key)

    def team_state(self):
        t = self.c.ok("team.get", self.O, team=self.team)
        return sorted((m["user_id"], m["role"]) for m in t["members"])

    def raw_key_doc(self, key):
        return self.env.redis("GET", "kg:{t:%s}:key:%s" % (self.team, key))

    # -- key.create, key.update, key.users.set, key.services.set, key.revoke --

    def test_key_create(self):
        for actor in (self.O, self.A):
            k = self.c.ok("key.create", actor, team=self.team, name="by-" + actor)
            self.assertEqual(k["team_id"], self.team)
        before = self.c.ok("key.list", self.O, team=self.team)["keys"]
        self.assertEqual(self.c.err("key.create", self.U, team=self.team, name="no"), "forbidden")
        self.assertEqual(self.c.err("key.create", self.X, team=self.team, name="no"), "not_found")
        self.assertEqual(self.c.ok("key.list", self.O, team=self.team)["keys"], before)

    def test_key_update(self):
        k = self.key_for()
        for actor in (self.O, self.A):
            self.assertEqual(self.c.ok("key.update", actor, key=k, name="n-" + actor)["name"], "n-" + actor)
        before = self.raw_key_doc(k)
        self.assertEqual(self.c.err("key.update", self.U, key=k, name="no"), "forbidden")
        self.assertEqual(self.c.err("key.update", self.X, key=k, name="no"), "not_found")
        self.assertEqual(self.raw_key_doc(k), before)

    def test_key_users_set(self):
        k = self.key_for()
        for actor in (self.O, self.A):
            r = self.c.ok("key.users.set", actor, key=k, users=[self.O, self.A, self.U])
            self.assertEqual(sorted(r["users"]), sorted([self.O, self.A, self.U]))
        before = self.raw_key_doc(k)
        self.assertEqual(self.c.err("key.users.set", self.U, key=k, users=[self.U]), "forbidden")
        self.assertEqual(self.c.err("key.users.set", self.X, key=k, users=[]), "not_found")
        self.assertEqual(self.raw_key_doc(k), before)

    def test_key_services_set(self):
        k = self.key_for()
        svc = {"text-generation": {"policy": "payg", "models": ["small"], "wallet": self.wallet}}
        for actor in (self.O, self.A):
            r = self.c.ok("key.services.set", actor, key=k, services=svc)
            self.assertEqual(r["services"], svc)
        before = self.raw_key_doc(k)
        self.assertEqual(self.c.err("key.services.set", self.U, key=k, services={}), "forbidden")
        self.assertEqual(self.c.err("key.services.set", self.X, key=k, services={}), "not_found")
        self.assertEqual(self.raw_key_doc(k), before)

    def test_key_revoke(self):
        for actor in (self.O, self.A):
            k = self.key_for()
            self.assertEqual(self.c.ok("key.revoke", actor, key=k)["status"], "revoked")
        k = self.key_for()
        before = self.raw_key_doc(k)
        self.assertEqual(self.c.err("key.revoke", self.U, key=k), "forbidden")
        self.assertEqual(self.c.err("key.revoke", self.X, key=k), "not_found")
        self.assertEqual(self.raw_key_doc(k), before)
        self.assertEqual(self.key_state(k)["status"], "active")

    # -- tokens -----------------------------------------------------------------

    def test_token_generate_self(self):
        k = self.key_for()
        for actor in (self.O, self.A, self.U):
            g = self.c.ok("token.generate", actor, key=k)
            self.assertEqual(g["user_id"], actor)
        self.assertEqual(set(self.key_state(k)["tokens"]), {self.O, self.A, self.U})

    def test_token_generate_not_assigned(self):
        # docs/protocol.md: forbidden when the actor is not assigned to the key
        k = self.key_for(users=[self.O])
        before = self.raw_key_doc(k)
        self.assertEqual(self.c.err("token.generate", self.A, key=k), "forbidden")
        self.assertEqual(self.raw_key_doc(k), before)
        k2 = self.key_for(users=[self.A])
        self.assertEqual(self.c.err("token.generate", self.O, key=k2), "forbidden")
        self.assertEqual(self.c.err("token.generate", self.X, key=k), "not_found")
        self.assertEqual(self.raw_key_doc(k), before)
        self.assertEqual(self.key_state(k)["tokens"], {})

    def test_token_generate_user_not_assigned(self):
        # A `user` does not see keys they are not assigned to (key.get ->
        # not_found), while token.generate's rule says `forbidden` when not
        # assigned. We read the visibility rule as taking precedence for a
        # `user` (the key is invisible to them): not_found; owner/admin, who
        # see every key, get forbidden (test above).
        k = self.key_for(users=[self.O])
        self.assertEqual(self.c.err("token.generate", self.U, key=k), "not_found")
        self.assertEqual(self.key_state(k)["tokens"], {})

    def test_token_rotate_self(self):
        k = self.key_for()
        for actor in (self.O, self.A, self.U):
            g = self.c.ok("token.generate", actor, key=k)
            r = self.c.ok("token.rotate", actor, key=k)
            self.assertEqual(r["user_id"], actor)
            self.assertNotEqual(r["token_id"], g["token_id"])
            r = self.c.ok("token.rotate", actor, key=k, user=actor)
            self.assertEqual(r["user_id"], actor)

    def test_token_rotate_other(self):
        k = self.key_for(users=[self.O, self.A, self.A2, self.U, self.U2])
        for u in (self.O, self.A, self.A2, self.U, self.U2):
            self.c.ok("token.generate", u, key=k)
        # owner rotates an admin's and a user's; admin rotates a user's and the owner's
        for actor, target in ((self.O, self.A), (self.O, self.U), (self.A, self.U2), (self.A, self.O),
                              (self.A, self.A2)):
            old = self.key_state(k)["tokens"][target]["token_id"]
            r = self.c.ok("token.rotate", actor, key=k, user=target)
            self.assertEqual(r["user_id"], target)
            self.assertNotEqual(r["token_id"], old)
            self.assertEqual(self.key_state(k)["tokens"][target]["token_id"], r["token_id"])
        before = self.raw_key_doc(k)
        self.assertEqual(self.c.err("token.rotate", self.U, key=k, user=self.U2), "forbidden")
        self.assertEqual(self.c.err("token.rotate", self.U, key=k, user=self.O), "forbidden")
        self.assertEqual(self.c.err("token.rotate", self.X, key=k, user=self.U), "not_found")
        self.assertEqual(self.raw_key_doc(k), before)

    # -- key.list / key.get ----------------------------------------------------

    def test_key_list_get_visibility(self):
        all_keys = {x["key_id"] for x in self.c.ok("key.list", self.O, team=self.team)["keys"]}
        self.assertIn(self.unassigned, all_keys)
        self.assertIn(self.shared, all_keys)
        a_keys = {x["key_id"] for x in self.c.ok("key.list", self.A, team=self.team)["keys"]}
        self.assertEqual(a_keys, all_keys)
        u_keys = {x["key_id"] for x in self.c.ok("key.list", self.U, team=self.team)["keys"]}
        expect = {x["key_id"] for x in self.c.ok("key.list", self.O, team=self.team)["keys"]
                  if self.U in x["users"]}
        self.assertEqual(u_keys, expect)
        self.assertIn(self.shared, u_keys)
        self.assertNotIn(self.unassigned, u_keys)
        for actor in (self.O, self.A):
            self.assertEqual(self.c.ok("key.get", actor, key=self.unassigned)["key_id"], self.unassigned)
        self.assertEqual(self.c.ok("key.get", self.U, key=self.shared)["key_id"], self.shared)
        self.assertEqual(self.c.err("key.get", self.U, key=self.unassigned), "not_found")
        self.assertEqual(self.c.err("key.get", self.X, key=self.shared), "not_found")
        self.assertEqual(self.c.err("key.list", self.X, team=self.team), "not_found")

    # -- wallet.*, audit.list ----------------------------------------------------

    def test_wallets_and_audit(self):
        for actor in (self.O, self.A):
            w = self.c.ok("wallet.create", actor, team=self.team, name="w-" + actor)["wallet_id"]
            self.assertIn(w, {x["wallet_id"] for x in
                              self.c.ok("wallet.list", actor, team=self.team)["wallets"]})
            self.assertEqual(self.c.ok("wallet.get", actor, wallet=self.wallet)["wallet_id"], self.wallet)
            self.assertTrue(self.c.ok("wallet.credit", actor, wallet=w, amount_micros=5,
                                      reference="r-" + actor)["credited"])
            self.assertEqual(len(self.c.ok("wallet.ledger", actor, wallet=w)["entries"]), 1)
            self.assertIsInstance(self.c.ok("audit.list", actor, team=self.team)["entries"], list)
        wallets = self.c.ok("wallet.list", self.O, team=self.team)
        bal = self.c.ok("wallet.get", self.O, wallet=self.wallet)["balance_micros"]
        for actor, code in ((self.U, "forbidden"), (self.X, "not_found")):
            self.assertEqual(self.c.err("wallet.create", actor, team=self.team, name="no"), code)
            self.assertEqual(self.c.err("wallet.list", actor, team=self.team), code)
            self.assertEqual(self.c.err("wallet.get", actor, wallet=self.wallet), code)
            self.assertEqual(self.c.err("wallet.credit", actor, wallet=self.wallet, amount_micros=1,
                                        reference="bad-" + actor), code)
            self.assertEqual(self.c.err("wallet.ledger", actor, wallet=self.wallet), code)
            self.assertEqual(self.c.err("audit.list", actor, team=self.team), code)
        self.assertEqual(self.c.ok("wallet.list", self.O, team=self.team), wallets)
        self.assertEqual(self.c.ok("wallet.get", self.O, wallet=self.wallet)["balance_micros"], bal)

    # -- team.member.add/remove/set_role ----------------------------------------

    def test_member_add_by_owner(self):
        for role in ("admin", "user"):
            s = signup(self.c)
            m = self.c.ok("team.member.add", self.O, team=self.team, user=s["user_id"], role=role)
            self.assertEqual(m["role"], role)

    def test_member_add_role_owner_refused(self):
        # "any role but owner": `owner` is not a value of `role` (admin/user),
        # so we read it as a bad argument: bad_request.
        s = signup(self.c)
        before = self.team_state()
        self.assertEqual(self.c.err("team.member.add", self.O, team=self.team, user=s["user_id"],
                                    role="owner"), "bad_request")
        self.assertEqual(self.c.err("team.member.set_role", self.O, team=self.team, user=self.U,
                                    role="owner"), "bad_request")
        self.assertEqual(self.team_state(), before)

    def test_member_add_by_admin(self):
        s = signup(self.c)
        self.assertEqual(self.c.ok("team.member.add", self.A, team=self.team, user=s["user_id"],
                                   role="user")["role"], "user")
        s2 = signup(self.c)
        before = self.team_state()
        self.assertEqual(self.c.err("team.member.add", self.A, team=self.team, user=s2["user_id"],
                                    role="admin"), "forbidden")
        self.assertEqual(self.team_state(), before)

    def test_member_add_by_user_and_outsider(self):
        s = signup(self.c)
        before = self.team_state()
        self.assertEqual(self.c.err("team.member.add", self.U, team=self.team, user=s["user_id"],
                                    role="user"), "forbidden")
        self.assertEqual(self.c.err("team.member.add", self.X, team=self.team, user=s["user_id"],
                                    role="user"), "not_found")
        self.assertEqual(self.team_state(), before)

    def _new_member(self, role):
        s = signup(self.c)
        self.c.ok("team.member.add", self.O, team=self.team, user=s["user_id"], role=role)
        return s["user_id"]

    def test_set_role_by_owner(self):
        x = self._new_member("user")
        self.assertEqual(self.c.ok("team.member.set_role", self.O, team=self.team, user=x,
                                   role="admin")["role"], "admin")
        self.assertEqual(self.c.ok("team.member.set_role", self.O, team=self.team, user=x,
                                   role="user")["role"], "user")

    def test_set_role_by_admin(self):
        x = self._new_member("user")
        y = self._new_member("admin")
        before = self.team_state()
        # an admin may only handle role `user`: not promote, not touch admins or the owner
        self.assertEqual(self.c.err("team.member.set_role", self.A, team=self.team, user=x,
                                    role="admin"), "forbidden")
        self.assertEqual(self.c.err("team.member.set_role", self.A, team=self.team, user=y,
                                    role="user"), "forbidden")
        self.assertEqual(self.c.err("team.member.set_role", self.A, team=self.team, user=self.O,
                                    role="user"), "forbidden")
        self.assertEqual(self.team_state(), before)
        # user -> user is within "role user only"
        self.assertEqual(self.c.ok("team.member.set_role", self.A, team=self.team, user=x,
                                   role="user")["role"], "user")

    def test_set_role_of_owner_refused(self):
        before = self.team_state()
        self.assertEqual(self.c.err("team.member.set_role", self.O, team=self.team, user=self.O,
                                    role="admin"), "forbidden")
        self.assertEqual(self.team_state(), before)

    def test_set_role_by_user_and_outsider(self):
        x = self._new_member("user")
        before = self.team_state()
        self.assertEqual(self.c.err("team.member.set_role", self.U, team=self.team, user=x,
                                    role="admin"), "forbidden")
        self.assertEqual(self.c.err("team.member.set_role", self.X, team=self.team, user=x,
                                    role="admin"), "not_found")
        self.assertEqual(self.team_state(), before)

    def test_remove_by_owner(self):
        for role in ("admin", "user"):
            x = self._new_member(role)
            self.assertEqual(self.c.ok("team.member.remove", self.O, team=self.team, user=x), {})
            self.assertNotIn(x, [m for m, _ in self.team_state()])
        before = self.team_state()
        self.assertEqual(self.c.err("team.member.remove", self.O, team=self.team, user=self.O), "forbidden")
        self.assertEqual(self.team_state(), before)

    def test_remove_by_admin(self):
        x = self._new_member("user")
        self.assertEqual(self.c.ok("team.member.remove", self.A, team=self.team, user=x), {})
        y = self._new_member("admin")
        before = self.team_state()
        self.assertEqual(self.c.err("team.member.remove", self.A, team=self.team, user=y), "forbidden")
        self.assertEqual(self.c.err("team.member.remove", self.A, team=self.team, user=self.O), "forbidden")
        self.assertEqual(self.team_state(), before)

    def test_remove_by_user_and_outsider(self):
        x = self._new_member("user")
        before = self.team_state()
        self.assertEqual(self.c.err("team.member.remove", self.U, team=self.team, user=x), "forbidden")
        self.assertEqual(self.c.err("team.member.remove", self.X, team=self.team, user=x), "not_found")
        self.assertEqual(self.team_state(), before)

    # -- team.transfer_ownership -------------------------------------------------

    def test_transfer_ownership(self):
        o = signup(self.c)
        a = signup(self.c)
        u = signup(self.c)
        x = signup(self.c)
        team = o["team_id"]
        self.c.ok("team.member.add", o["user_id"], team=team, user=a["user_id"], role="admin")
        self.c.ok("team.member.add", o["user_id"], team=team, user=u["user_id"], role="user")

        def roles():
            return {m["user_id"]: m["role"] for m in self.c.ok("team.get", o["user_id"], team=team)["members"]}
        before = roles()
        self.assertEqual(self.c.err("team.transfer_ownership", a["user_id"], team=team,
                                    user=a["user_id"]), "forbidden")
        self.assertEqual(self.c.err("team.transfer_ownership", u["user_id"], team=team,
                                    user=u["user_id"]), "forbidden")
        self.assertEqual(self.c.err("team.transfer_ownership", x["user_id"], team=team,
                                    user=x["user_id"]), "not_found")
        self.assertEqual(roles(), before)
        t = self.c.ok("team.transfer_ownership", o["user_id"], team=team, user=u["user_id"])
        got = {m["user_id"]: m["role"] for m in t["members"]}
        self.assertEqual(got, {o["user_id"]: "admin", a["user_id"]: "admin", u["user_id"]: "owner"})
        self.assertEqual(roles(), got)
        # the old owner is now an admin: no longer allowed to transfer
        self.assertEqual(self.c.err("team.transfer_ownership", o["user_id"], team=team,
                                    user=o["user_id"]), "forbidden")
        # and the new owner now can be neither removed nor demoted
        self.assertEqual(self.c.err("team.member.remove", o["user_id"], team=team, user=u["user_id"]),
                         "forbidden")

    # -- team.get and not_found hiding -------------------------------------------

    def test_team_get(self):
        for actor in (self.O, self.A, self.U):
            self.assertEqual(self.c.ok("team.get", actor, team=self.team)["team_id"], self.team)
        self.assertEqual(self.c.err("team.get", self.X, team=self.team), "not_found")

    def test_not_found_does_not_reveal(self):
        """A non-member gets the same answer for an existing team/key/wallet
        as for one that does not exist (message compared with the id masked)."""
        fake_team = "t_" + "Z" * 12
        fake_key = "k_" + "Z" * 20
        fake_wallet = "w_" + "Z" * 20
        pairs = [
            (("team.get", {"team": self.team}), ("team.get", {"team": fake_team})),
            (("key.list", {"team": self.team}), ("key.list", {"team": fake_team})),
            (("key.get", {"key": self.shared}), ("key.get", {"key": fake_key})),
            (("key.revoke", {"key": self.shared}), ("key.revoke", {"key": fake_key})),
            (("wallet.get", {"wallet": self.wallet}), ("wallet.get", {"wallet": fake_wallet})),
            (("audit.list", {"team": self.team}), ("audit.list", {"team": fake_team})),
        ]
        for (c1, a1), (c2, a2) in pairs:
            r1 = self.c.call(c1, self.X, **a1)
            r2 = self.c.call(c2, self.X, **a2)
            self.assertEqual(r1["error"]["code"], "not_found", r1)
            self.assertEqual(r2["error"]["code"], "not_found", r2)
            m1 = r1["error"]["message"]
            for v in a1.values():
                m1 = m1.replace(v, "ID")
            m2 = r2["error"]["message"]
            for v in a2.values():
                m2 = m2.replace(v, "ID")
            self.assertEqual(m1, m2, (c1, r1, r2))


if __name__ == "__main__":
    unittest.main()
