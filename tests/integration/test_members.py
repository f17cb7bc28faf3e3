"""Team members outside the team document (issue 12): `P {t:T}:members`
is a hash user_id -> role, so a command reads the roles it needs instead of
parsing every member. Checks: sign-up writes the hash and a document
without members; member changes touch only the hash; team.get pages its
members by user id (every member exactly once, while members are added);
a team document of the old format (members inside it) still serves every
command and is moved to the hash by its next member change; fsck clean
throughout."""
import json
import os
import subprocess
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import kgtest  # noqa: E402

CLI = os.environ.get("KEYGATE_CLI") or os.path.join(kgtest.REPO, "build", "daemon", "cli", "keygate")


class Members(kgtest.EnvCase):

    def keys(self, team):
        return "kg:{t:%s}:team" % team, "kg:{t:%s}:members" % team

    def hash(self, team):
        flat = [x.decode() if isinstance(x, bytes) else x
                for x in (self.env.redis("HGETALL", self.keys(team)[1]) or [])]
        return dict(zip(flat[0::2], flat[1::2]))

    def doc(self, team):
        return json.loads(self.env.redis("GET", self.keys(team)[0]))

    def fsck_clean(self):
        if not os.access(CLI, os.X_OK):
            return
        p = subprocess.run([CLI, "--json", "fsck", "--config", self.env.config_path],
                           capture_output=True, text=True, timeout=120)
        self.assertEqual((p.returncode, json.loads(p.stdout)["problems"]), (0, []), p.stderr)

    def test_hash_is_the_record_of_members(self):
        t = kgtest.make_team(self.c, admins=1, users=1, outsiders=1)
        o, a, u, x = t["owner"], t["admins"][0], t["users"][0], t["outsiders"][0]
        self.assertNotIn("members", self.doc(t["team"]))
        self.assertEqual(self.hash(t["team"]), {o: "owner", a: "admin", u: "user"})
        self.c.ok("team.member.set_role", o, team=t["team"], user=u, role="admin")
        self.assertEqual(self.hash(t["team"])[u], "admin")
        self.c.ok("team.member.remove", o, team=t["team"], user=u)
        self.assertNotIn(u, self.hash(t["team"]))
        self.assertEqual(self.c.err("team.get", x, team=t["team"]), "not_found")
        self.c.ok("team.transfer_ownership", o, team=t["team"], user=a)
        self.assertEqual(self.hash(t["team"]), {o: "admin", a: "owner"})
        got = self.c.ok("team.get", a, team=t["team"])
        self.assertEqual({m["user_id"]: m["role"] for m in got["members"]}, {o: "admin", a: "owner"})
        self.fsck_clean()

    def test_team_get_pages_members_once_each(self):
        t = kgtest.make_team(self.c, admins=2, users=5, outsiders=0)
        o = t["owner"]
        want = set([o] + t["admins"] + t["users"])
        seen, cursor, pages = [], None, 0
        while True:
            args = {"team": t["team"], "limit": 3}
            if cursor:
                args["cursor"] = cursor
            r = self.c.ok("team.get", o, **args)
            seen += [m["user_id"] for m in r["members"]]
            pages += 1
            if pages == 1:                       # a member added meanwhile, after the page
                late = kgtest.signup(self.c)["user_id"]
                self.c.ok("team.member.add", o, team=t["team"], user=late, role="user")
                want.add(late)
            cursor = r.get("next_cursor")
            if not cursor:
                break
            self.assertLessEqual(len(r["members"]), 3)
        self.assertEqual(len(seen), len(set(seen)))                 # none twice
        self.assertEqual(seen, sorted(seen))                        # by user id
        # the late member is listed iff its id sorts after the first page
        first = seen[:3]
        self.assertEqual(set(seen), want if late > first[-1] else want - {late})
        self.assertEqual(self.c.err("team.get", o, team=t["team"], limit=3, cursor="K1.x"),
                         "bad_request")
        self.assertEqual(self.c.err("team.get", o, team=t["team"], limit=0), "bad_request")
        full = self.c.ok("team.get", o, team=t["team"])
        self.assertEqual({m["user_id"] for m in full["members"]}, want)
        self.assertNotIn("next_cursor", full)

    def test_a_team_document_of_the_old_format_serves_and_moves(self):
        t = kgtest.make_team(self.c, admins=1, users=1, outsiders=0)
        o, a, u, T = t["owner"], t["admins"][0], t["users"][0], t["team"]
        roles = self.hash(T)
        # Rewrite the team as an older keygated left it: members in the document.
        doc = self.doc(T)
        doc["members"] = roles
        tk, mk = self.keys(T)
        self.env.redis("SET", tk, json.dumps(doc))
        self.env.redis("DEL", mk)
        self.fsck_clean()
        # Every kind of reader still sees the roles.
        got = self.c.ok("team.get", u, team=T)
        self.assertEqual({m["user_id"]: m["role"] for m in got["members"]}, roles)
        who = self.c.ok("session.whoami", a)
        self.assertEqual([x["role"] for x in who["teams"] if x["team_id"] == T], ["admin"])
        self.assertEqual(self.c.err("key.create", u, team=T, name="nope"), "forbidden")
        k = self.c.ok("key.create", a, team=T, name="k", users=[u])["key_id"]
        self.assertEqual(self.c.err("key.create", a, team=T, name="k2", users=["u_doesnotexist1"]),
                         "bad_request")
        self.assertEqual(self.c.ok("key.get", u, key=k)["key_id"], k)
        # The next member change moves them all to the hash.
        new = kgtest.signup(self.c)["user_id"]
        self.c.ok("team.member.add", o, team=T, user=new, role="user")
        self.assertNotIn("members", self.doc(T))
        self.assertEqual(self.hash(T), dict(roles, **{new: "user"}))
        self.fsck_clean()

    def ukeys(self, team, uid):
        return sorted(x.decode() if isinstance(x, bytes) else x
                      for x in self.env.redis("ZRANGE", "kg:{t:%s}:ukeys:%s" % (team, uid), "0", "-1"))

    def test_user_key_list_reads_only_their_keys(self):
        t = kgtest.make_team(self.c, admins=1, users=2, outsiders=0)
        o, a, (u, v), T = t["owner"], t["admins"][0], t["users"], t["team"]
        mine = []
        for n in range(30):
            users = [u] if n % 6 == 0 else [v]
            k = self.c.ok("key.create", a, team=T, name="k%d" % n, users=users)["key_id"]
            if users == [u]:
                mine.append(k)
        self.assertEqual(self.ukeys(T, u), sorted(mine))
        # Full pages of 2 (the index holds only u's keys: no short pages).
        seen, cursor = [], None
        while True:
            args = {"team": T, "limit": 2}
            if cursor:
                args["cursor"] = cursor
            r = self.c.ok("key.list", u, **args)
            seen += [k["key_id"] for k in r["keys"]]
            cursor = r.get("next_cursor")
            if not cursor:
                break
            self.assertEqual(len(r["keys"]), 2)
        self.assertEqual(sorted(seen), sorted(mine))
        # A summary lists the same keys, without users, tokens or models.
        full = self.c.ok("key.list", a, team=T, limit=1000)["keys"]
        summ = self.c.ok("key.list", a, team=T, limit=1000, summary=True)["keys"]
        self.assertEqual([k["key_id"] for k in summ], [k["key_id"] for k in full])
        self.assertEqual(set(summ[1]), {"key_id", "team_id", "name", "kind", "status", "created_at",
                                        "updated_at", "services", "user_count", "has_token"})
        self.assertEqual(summ[1]["user_count"], len(full[1]["users"]))
        self.assertEqual(self.c.err("key.list", a, team=T, summary="yes"), "bad_request")
        self.assertLess(len(json.dumps(summ)), len(json.dumps(full)))
        # users.set and member removal keep the index.
        self.c.ok("key.users.set", a, key=mine[0], users=[v])
        self.assertNotIn(mine[0], self.ukeys(T, u))
        self.assertIn(mine[0], self.ukeys(T, v))
        self.assertNotIn(mine[0], [k["key_id"] for k in self.c.ok("key.list", u, team=T)["keys"]])
        self.fsck_clean()
        self.c.ok("team.member.remove", o, team=T, user=v)
        self.assertEqual(self.ukeys(T, v), [])
        self.fsck_clean()
        # A stale entry is found by fsck.
        mk = "kg:{t:%s}:ukeys:%s" % (T, u)
        self.env.redis("ZADD", mk, "1", "k_notakeyofu")
        p = subprocess.run([CLI, "--json", "fsck", "--config", self.env.config_path],
                           capture_output=True, text=True, timeout=120)
        self.assertEqual(p.returncode, 1, p.stdout)
        self.assertTrue(any("k_notakeyofu" in x["problem"] for x in json.loads(p.stdout)["problems"]),
                        p.stdout)
        self.env.redis("ZREM", mk, "k_notakeyofu")


if __name__ == "__main__":
    unittest.main()
