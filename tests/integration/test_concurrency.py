"""Concurrent mutations of one team from many connections: no lost update,
no duplicate, no orphan token record (SPEC §5: each admin command is atomic;
docs/redis-schema.md: mutations behave as if run one at a time)."""
import json
import os
import sys
import threading
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import kgtest  # noqa: E402
from kgtest import signup  # noqa: E402

N = 8


def run_threads(fn, n=N, timeout=60):
    errors = []
    barrier = threading.Barrier(n)

    def wrap(i):
        try:
            barrier.wait(10)
            fn(i)
        except Exception as e:  # noqa: BLE001
            errors.append("%d: %r" % (i, e))

    threads = [threading.Thread(target=wrap, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    return errors


class Concurrency(kgtest.EnvCase):

    def conn(self):
        return kgtest.Client(self.env.socket_path, timeout=30)

    def token_records(self, key_id):
        out = []
        for k in self.env.redis_keys("kg:{t:*}:tok:*"):
            flat = self.env.redis("HGETALL", k)
            rec = {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}
            if rec.get("key_id") == key_id:
                out.append(rec)
        return out

    def test_members_added_in_parallel(self):
        o = signup(self.c)
        people = [signup(self.c)["user_id"] for _ in range(N * 3)]

        def add(i):
            c = self.conn()
            for u in people[i * 3:(i + 1) * 3]:
                c.ok("team.member.add", o["user_id"], team=o["team_id"], user=u, role="user")
            c.close()
        self.assertEqual(run_threads(add), [])
        t = self.c.ok("team.get", o["user_id"], team=o["team_id"])
        self.assertEqual(sorted(m["user_id"] for m in t["members"]), sorted(people + [o["user_id"]]))

    def test_keys_created_in_parallel(self):
        o = signup(self.c)
        made = []

        def create(i):
            c = self.conn()
            for j in range(20):
                made.append(c.ok("key.create", o["user_id"], team=o["team_id"], name="k%d-%d" % (i, j))["key_id"])
            c.close()
        self.assertEqual(run_threads(create), [])
        self.assertEqual(len(set(made)), N * 20)
        listed = {k["key_id"] for k in self.c.ok("key.list", o["user_id"], team=o["team_id"])["keys"]}
        self.assertEqual(listed, set(made) | {o["free_key_id"]})
        self.assertEqual(self.env.redis("ZCARD", "kg:{t:%s}:keys" % o["team_id"]), N * 20 + 1)

    def test_tokens_generated_in_parallel(self):
        o = signup(self.c)
        users = []
        for _ in range(N):
            u = signup(self.c)["user_id"]
            self.c.ok("team.member.add", o["user_id"], team=o["team_id"], user=u, role="user")
            users.append(u)
        k = self.c.ok("key.create", o["user_id"], team=o["team_id"], name="k", users=users)["key_id"]
        toks = {}

        def gen(i):
            c = self.conn()
            toks[users[i]] = c.ok("token.generate", users[i], key=k)
            c.close()
        self.assertEqual(run_threads(gen), [])
        doc = self.c.ok("key.get", o["user_id"], key=k)
        self.assertEqual(set(doc["tokens"]), set(users))
        for u in users:
            self.assertEqual(doc["tokens"][u]["token_id"], toks[u]["token_id"])
        recs = self.token_records(k)
        self.assertEqual(sorted(r["user_id"] for r in recs), sorted(users))

    def test_same_user_generates_in_parallel(self):
        o = signup(self.c)
        k = o["free_key_id"]
        results = []

        def gen(i):
            c = self.conn()
            r = c.call("token.generate", o["user_id"], key=k)
            results.append(r["result"]["token_id"] if r["ok"] else r["error"]["code"])
            c.close()
        self.assertEqual(run_threads(gen), [])
        oks = [r for r in results if r.startswith("tk_")]
        self.assertEqual(len(oks), 1, results)
        self.assertEqual(sorted(r for r in results if not r.startswith("tk_")), ["conflict"] * (N - 1))
        recs = self.token_records(k)
        self.assertEqual([r["token_id"] for r in recs], oks)
        self.assertEqual(self.c.ok("key.get", o["user_id"], key=k)["tokens"][o["user_id"]]["token_id"], oks[0])

    def test_rotations_in_parallel(self):
        o = signup(self.c)
        k = o["free_key_id"]
        self.c.ok("token.generate", o["user_id"], key=k)
        errors_codes = []

        def rot(i):
            c = self.conn()
            for _ in range(10):
                r = c.call("token.rotate", o["user_id"], key=k)
                if not r["ok"]:
                    errors_codes.append(r["error"]["code"])
            c.close()
        self.assertEqual(run_threads(rot), [])
        self.assertEqual(errors_codes, [])
        recs = self.token_records(k)
        doc = self.c.ok("key.get", o["user_id"], key=k)
        # exactly one live record: the current token; no orphan left behind
        self.assertEqual([r["token_id"] for r in recs], [doc["tokens"][o["user_id"]]["token_id"]])

    def test_no_lost_update_between_fields(self):
        t = kgtest.make_team(self.c, admins=1, users=2, outsiders=0)
        O, A = t["owner"], t["admins"][0]
        w = self.c.ok("wallet.create", O, team=t["team"], name="w")["wallet_id"]
        k = self.c.ok("key.create", O, team=t["team"], name="start")["key_id"]
        rounds = 40
        user_sets = [[O], [O, A], [O] + t["users"], [A] + t["users"]]
        svc_sets = [{}, {"speech-to-text": {"policy": "free"}},
                    {"text-generation": {"policy": "payg", "models": ["small"], "wallet": w}}]

        def work(i):
            c = self.conn()
            for r in range(rounds):
                if i == 0:
                    c.ok("key.update", O, key=k, name="n%d" % r)
                elif i == 1:
                    c.ok("key.update", A, key=k, description="d%d" % r)
                elif i == 2:
                    c.ok("key.users.set", O, key=k, users=user_sets[r % len(user_sets)])
                else:
                    c.ok("key.services.set", A, key=k, services=svc_sets[r % len(svc_sets)])
            c.close()
        self.assertEqual(run_threads(work, n=4), [])
        doc = self.c.ok("key.get", O, key=k)
        self.assertEqual(doc["name"], "n%d" % (rounds - 1))
        self.assertEqual(doc["description"], "d%d" % (rounds - 1))
        self.assertEqual(sorted(doc["users"]), sorted(user_sets[(rounds - 1) % len(user_sets)]))
        self.assertEqual(doc["services"], svc_sets[(rounds - 1) % len(svc_sets)])
        raw = json.loads(self.env.redis("GET", "kg:{t:%s}:key:%s" % (t["team"], k)))
        self.assertEqual((raw["name"], raw["description"]), (doc["name"], doc["description"]))

    def test_member_removal_races_token_generation(self):
        """A member removed while generating tokens: no token record of theirs
        survives the removal."""
        o = signup(self.c)
        u = signup(self.c)["user_id"]
        self.c.ok("team.member.add", o["user_id"], team=o["team_id"], user=u, role="user")
        keys = [self.c.ok("key.create", o["user_id"], team=o["team_id"], name="k%d" % i,
                          users=[o["user_id"], u])["key_id"] for i in range(20)]

        def work(i):
            c = self.conn()
            if i == 0:
                c.ok("team.member.remove", o["user_id"], team=o["team_id"], user=u)
            else:
                for k in keys[(i - 1) * 20 // (N - 1):i * 20 // (N - 1)]:
                    r = c.call("token.generate", u, key=k)
                    if not r["ok"]:
                        assert r["error"]["code"] in ("unauthenticated", "not_found", "forbidden"), r
            c.close()
        self.assertEqual(run_threads(work), [])
        for k in keys:
            self.assertEqual([r for r in self.token_records(k) if r["user_id"] == u], [], k)
            doc = self.c.ok("key.get", o["user_id"], key=k)
            self.assertNotIn(u, doc["users"])
            self.assertNotIn(u, doc["tokens"])


if __name__ == "__main__":
    unittest.main()
