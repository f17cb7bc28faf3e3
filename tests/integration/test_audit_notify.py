"""Notifications (key.users.set with notify, notification.list) and the
audit log (audit.list: actor, peer_uid, peer_pid, cmd, target, outcome, at;
never a token or its hash)."""
import json
import os
import sys
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import kgtest  # noqa: E402
from kgtest import now_ms  # noqa: E402


class Notifications(kgtest.EnvCase):

    def setUp(self):
        self.t = kgtest.make_team(self.c, admins=1, users=3, outsiders=0)
        self.O, self.A = self.t["owner"], self.t["admins"][0]
        self.U1, self.U2, self.U3 = self.t["users"]
        self.k = self.c.ok("key.create", self.O, team=self.t["team"], name="alpha",
                           users=[self.O, self.U1, self.U2])["key_id"]

    def notes(self, u, **kw):
        return self.c.ok("notification.list", u, **kw)["notifications"]

    def test_notify_added_and_removed(self):
        t0 = now_ms()
        r = self.c.ok("key.users.set", self.A, key=self.k, users=[self.O, self.U2, self.U3], notify=True)
        self.assertEqual(sorted(r["notified"]), sorted([self.U1, self.U3]))
        self.assertEqual(sorted(r["users"]), sorted([self.O, self.U2, self.U3]))
        n3 = self.notes(self.U3)
        self.assertEqual(len(n3), 1)
        self.assertEqual({k: v for k, v in n3[0].items() if k != "at"},
                         {"type": "key.assigned", "key_id": self.k, "key_name": "alpha",
                          "team_id": self.t["team"], "by": self.A})
        self.assertGreaterEqual(n3[0]["at"], t0 - 1000)
        self.assertLessEqual(n3[0]["at"], now_ms() + 1000)
        n1 = self.notes(self.U1)
        self.assertEqual(len(n1), 1)
        self.assertEqual(n1[0]["type"], "key.unassigned")
        self.assertEqual(n1[0]["key_id"], self.k)
        self.assertEqual(n1[0]["by"], self.A)
        # unchanged users are not notified
        self.assertEqual(self.notes(self.U2), [])
        self.assertEqual(self.notes(self.O), [])

    def test_no_notify(self):
        r = self.c.ok("key.users.set", self.O, key=self.k, users=[self.O, self.U3])
        self.assertEqual(r["notified"], [])
        r = self.c.ok("key.users.set", self.O, key=self.k, users=[self.O, self.U1], notify=False)
        self.assertEqual(r["notified"], [])
        for u in (self.U1, self.U2, self.U3):
            self.assertEqual(self.notes(u), [])

    def test_same_set_notifies_nobody(self):
        r = self.c.ok("key.users.set", self.O, key=self.k, users=[self.U2, self.U1, self.O], notify=True)
        self.assertEqual(r["notified"], [])
        self.assertEqual(self.notes(self.U1), [])

    def test_newest_first_and_limit(self):
        for i in range(3):
            self.c.ok("key.update", self.O, key=self.k, name="n%d" % i)
            self.c.ok("key.users.set", self.O, key=self.k, users=[self.O, self.U1, self.U2, self.U3], notify=True)
            self.c.ok("key.users.set", self.O, key=self.k, users=[self.O, self.U1, self.U2], notify=True)
        n = self.notes(self.U3)
        self.assertEqual([x["type"] for x in n], ["key.unassigned", "key.assigned"] * 3)
        self.assertEqual([x["key_name"] for x in n], ["n2", "n2", "n1", "n1", "n0", "n0"])
        self.assertEqual(self.notes(self.U3, limit=2), n[:2])
        self.assertEqual(self.c.err("notification.list", self.U3, limit=0), "bad_request")
        self.assertEqual(self.c.err("notification.list", self.U3, limit=-1), "bad_request")

    def test_refused_edit_notifies_nobody(self):
        self.assertEqual(self.c.err("key.users.set", self.U1, key=self.k, users=[self.U3], notify=True),
                         "forbidden")
        self.assertEqual(self.notes(self.U3), [])
        self.assertEqual(self.c.err("notification.list"), "unauthenticated")

    def test_notifications_stored(self):
        self.c.ok("key.users.set", self.O, key=self.k, users=[self.O, self.U1, self.U2, self.U3], notify=True)
        raw = self.env.redis("LRANGE", "kg:notif:" + self.U3, 0, -1)
        self.assertEqual([json.loads(x) for x in raw], self.notes(self.U3))


class Audit(kgtest.EnvCase):

    def entries(self, actor, team, **kw):
        return self.c.ok("audit.list", actor, team=team, **kw)["entries"]

    def test_entries(self):
        t = kgtest.make_team(self.c, admins=1, users=1, outsiders=0)
        O, A, U, team = t["owner"], t["admins"][0], t["users"][0], t["team"]
        time.sleep(0.003)  # entries of make_team fall in an earlier millisecond
        t0 = now_ms()
        k = self.c.ok("key.create", O, team=team, name="audited", users=[O, U])["key_id"]
        tok = self.c.ok("token.generate", U, key=k)["token"]
        tok2 = self.c.ok("token.rotate", O, key=k, user=U)["token"]
        self.assertEqual(self.c.err("key.revoke", U, key=k), "forbidden")
        w = self.c.ok("wallet.create", A, team=team, name="w")["wallet_id"]
        self.c.ok("wallet.credit", A, wallet=w, amount_micros=9, reference="ref")
        self.c.ok("key.revoke", A, key=k)
        self.assertEqual(self.c.err("key.revoke", A, key=k), "invalid_state")
        es = self.entries(O, team)
        for e in es:
            self.assertEqual(set(e), {"at", "actor", "peer_uid", "peer_pid", "cmd", "target", "outcome"}, e)
            self.assertEqual(e["peer_uid"], os.getuid())
            self.assertEqual(e["peer_pid"], os.getpid())
        # reads may or may not be audited; mutations and refusals must be
        reads = {"team.get", "key.get", "key.list", "wallet.get", "wallet.list", "wallet.ledger",
                 "audit.list", "notification.list", "service.list", "price.estimate", "ping"}
        recent = [e for e in es if e["at"] >= t0 and e["cmd"] not in reads]
        got = [(e["actor"], e["cmd"], e["outcome"]) for e in recent]
        want = [
            (A, "key.revoke", "invalid_state"),
            (A, "key.revoke", "ok"),
            (A, "wallet.credit", "ok"),
            (A, "wallet.create", "ok"),
            (U, "key.revoke", "forbidden"),
            (O, "token.rotate", "ok"),
            (U, "token.generate", "ok"),
            (O, "key.create", "ok"),
        ]
        self.assertEqual(got, want)
        # the target: the object acted on (for a creation, the new object or
        # its team; for a token, the key or the user whose token it is)
        targets = [
            (k,), (k,), (w,), (w, team), (k,), (k, U), (k, U), (k, team),
        ]
        for e, allowed in zip(recent, targets):
            self.assertIn(e["target"], allowed, e)
        ats = [e["at"] for e in es]
        self.assertEqual(ats, sorted(ats, reverse=True))
        self.assertEqual(self.entries(A, team, limit=3), es[:3])
        stored = [self.env.redis("XRANGE", "kg:{t:%s}:%s" % (team, k), "-", "+")
                  for k in ("audit", "refused:audit")]
        blob = json.dumps(es) + json.dumps(stored, default=lambda b: b.decode())
        for secret in (tok, tok2):
            self.assertNotIn(secret, blob)
            self.assertNotIn(secret[3:], blob)
            self.assertNotIn(kgtest.token_hash(self.env.pepper_bytes, secret), blob)

    def test_team_commands_audited(self):
        t = kgtest.make_team(self.c, admins=0, users=1, outsiders=0)
        O, U, team = t["owner"], t["users"][0], t["team"]
        self.c.ok("team.member.set_role", O, team=team, user=U, role="admin")
        self.c.ok("team.transfer_ownership", O, team=team, user=U)
        es = self.entries(U, team, limit=2)
        self.assertEqual([(e["actor"], e["cmd"], e["outcome"]) for e in es],
                         [(O, "team.transfer_ownership", "ok"), (O, "team.member.set_role", "ok")])
        self.assertIn(U, es[0]["target"] + es[1]["target"] + team)

    def test_limit(self):
        o = kgtest.signup(self.c)
        for i in range(5):
            self.c.ok("key.create", o["user_id"], team=o["team_id"], name="k%d" % i)
        self.assertEqual(len(self.entries(o["user_id"], o["team_id"], limit=3)), 3)
        self.assertEqual(self.c.err("audit.list", o["user_id"], team=o["team_id"], limit=0), "bad_request")

    def test_other_teams_not_mixed(self):
        a = kgtest.signup(self.c)
        b = kgtest.signup(self.c)
        self.c.ok("key.create", a["user_id"], team=a["team_id"], name="a-only")
        for e in self.entries(b["user_id"], b["team_id"]):
            self.assertNotEqual(e["actor"], a["user_id"])


if __name__ == "__main__":
    unittest.main()
