"""Several keygated on one store (issue 11): three daemons on the same Redis,
racing the same commands through their sockets. With two daemons and no
cross-process check, 100 of 200 member adds answered ok were lost, 55 of
100 duplicate sign-ups both succeeded and 46 of 200 token.generate pairs
both succeeded. Now each commit checks the versions of what its command
read (daemon/job.c) and the sign-up's email claim: every answer ok is in
the store, one sign-up per email, at most one token per user and key, and
`keygate fsck` finds nothing."""
import json
import os
import random
import subprocess
import sys
import tempfile
import re
import unittest
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import kgtest  # noqa: E402

CLI = os.environ.get("KEYGATE_CLI") or os.path.join(kgtest.REPO, "build", "daemon", "cli", "keygate")
FREE = {"speech-to-text": {"policy": "free"}}


race = kgtest.race
oks = kgtest.oks


class MultiWriter(kgtest.EnvCase):

    env_args = {"extra_config": ["metrics 127.0.0.1:0"]}

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.socks = [cls.env.socket_path, cls.env.start_extra_daemon("kg2"),
                     cls.env.start_extra_daemon("kg3")]

    def fsck_clean(self):
        p = subprocess.run([CLI, "--json", "fsck", "--config", self.env.config_path],
                           capture_output=True, text=True, timeout=300)
        self.assertEqual((p.returncode, json.loads(p.stdout)["problems"]), (0, []), p.stderr)

    def codes(self, responses):
        return sorted(r["error"]["code"] for r in responses if r.get("ok") is False)

    @unittest.skipUnless(os.access(CLI, os.X_OK), "needs the keygate CLI (KEYGATE_CLI)")
    def test_member_adds_sign_ups_tokens_and_key_users_race_without_loss(self):
        c = self.c
        owner = kgtest.signup(c, name="Owner")
        team = owner["team_id"]
        users = [kgtest.signup(c, name="U%d" % i)["user_id"] for i in range(200)]

        # 1. 200 member adds, each sent to all three daemons: one ok each,
        # and every one answered ok is in the store.
        res = race(self.socks, [[c.request("team.member.add", owner["user_id"], team=team,
                                           user=u, role="user")] for u in users])
        for u, rs in zip(users, res):
            self.assertEqual(len(oks(rs)), 1, (u, rs))
            self.assertEqual(self.codes(rs), ["conflict", "conflict"], rs)
        flat = [x.decode() if isinstance(x, bytes) else x
                for x in self.env.redis("HGETALL", "kg:{t:%s}:members" % team)]
        self.assertEqual(set(flat[0::2]), set(users) | {owner["user_id"]})
        for u in users:
            self.assertEqual(self.env.redis("SISMEMBER", "kg:uteams:%s" % u, team), 1, u)
        members = c.ok("team.get", owner["user_id"], team=team)["members"]
        self.assertEqual(len(members), 201)

        # 2. 100 emails, each signed up through all three daemons at once:
        # exactly one sign-up per email, and no claim left behind.
        emails = [kgtest.unique_email("dup") for _ in range(100)]
        res = race(self.socks, [[c.request("user.signup", email=e, name="Dup")] for e in emails])
        for e, rs in zip(emails, res):
            won = oks(rs)
            self.assertEqual(len(won), 1, (e, rs))
            self.assertEqual(len(self.codes(rs)), 2, rs)
            self.assertTrue(set(self.codes(rs)) <= {"conflict"}, rs)
            self.assertEqual(self.env.redis("GET", "kg:email:%s" % e).decode(),
                             won[0]["result"]["user_id"])
            self.assertEqual(self.env.redis("PTTL", "kg:email:%s" % e), -1)
        by_email = {}
        for k in self.env.redis_keys("kg:user:*"):
            d = json.loads(self.env.redis("GET", k))
            by_email.setdefault(d["email"], []).append(d["user_id"])
        for e in emails:
            self.assertEqual(len(by_email.get(e, [])), 1, e)

        # 3. token.generate for the same user and key from all three daemons:
        # one token each, and it validates.
        keys = [c.ok("key.create", owner["user_id"], team=team, name="k%d" % i,
                     users=users[:8], services=FREE)["key_id"] for i in range(6)]
        pairs = [(k, u) for k in keys for u in users[:8]]
        res = race(self.socks, [[c.request("token.generate", u, key=k)] for k, u in pairs])
        won = {}
        for (k, u), rs in zip(pairs, res):
            self.assertEqual(len(oks(rs)), 1, (k, u, rs))
            self.assertEqual(self.codes(rs), ["conflict", "conflict"], rs)
            won[(k, u)] = oks(rs)[0]["result"]
        for k in keys:
            d = json.loads(self.env.redis("GET", "kg:{t:%s}:key:%s" % (team, k)))
            self.assertEqual(set(d["tokens"]), set(users[:8]))
            for u, t in d["tokens"].items():
                self.assertEqual(t["token_id"], won[(k, u)]["token_id"])
        self.assertEqual(len(self.env.redis_keys("kg:{t:%s}:tok:*" % team)), len(pairs))
        for k, u in pairs[:3]:
            self.assertEqual(self.authorize(won[(k, u)]["token"])["status"], "ok")

        # 4. key.users.set racing itself and token.generate/rotate: tokens only
        # for users on the key, token records only for current tokens.
        k = keys[0]
        jobs = []
        for i in range(60):
            sub = random.Random(i).sample(users[:8], 4)
            jobs.append([c.request("key.users.set", owner["user_id"], key=k, users=sub)])
            jobs.append([c.request("token.rotate", sub[0], key=k),
                         c.request("token.generate", sub[1], key=k),
                         c.request("token.rotate", sub[2], key=k)])
        res = race(self.socks, jobs)
        sets = [sorted(r["result"]["users"]) for rs in res[0::2] for r in oks(rs)]
        self.assertEqual(len(sets), 180)
        d = json.loads(self.env.redis("GET", "kg:{t:%s}:key:%s" % (team, k)))
        self.assertIn(sorted(d["users"]), sets)
        self.assertTrue(set(d["tokens"]) <= set(d["users"]), d)
        live = {t["hash"] for t in d["tokens"].values()}
        for kk in keys[1:]:
            live |= {t["hash"] for t in json.loads(self.env.redis(
                "GET", "kg:{t:%s}:key:%s" % (team, kk)))["tokens"].values()}
        tp = "kg:{t:%s}:tok:" % team
        recs = {x.decode()[len(tp):] for x in self.env.redis_keys(tp + "*")}
        self.assertEqual(recs, live)
        # A token issued and then replaced in the race no longer validates.
        replaced = [r["result"] for rs in res[1::2] for r in oks(rs)
                    if r["result"]["token_id"] not in
                    {t["token_id"] for t in d["tokens"].values()}]
        self.assertTrue(replaced)
        for r in replaced[:3]:
            self.assertNotEqual(self.authorize(r["token"])["status"], "ok")

        # Commits were overtaken by another daemon's and ran again.
        self.assertGreater(sum(self.moved(log) for log in self.logs()), 0)
        self.fsck_clean()

    def logs(self):
        out = [self.env.daemon_log()]
        for name in ("kg2", "kg3"):
            with open(os.path.join(self.env.tmp, name + ".log")) as f:
                out.append(f.read())
        return out

    def moved(self, log):
        """keygated_commits_moved_total of the daemon whose log this is."""
        port = int(re.search(r"metrics on http://127\.0\.0\.1:(\d+)/", log).group(1))
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as r:
            m = re.search(r"^keygated_commits_moved_total (\d+)", r.read().decode(), re.M)
        return int(m.group(1))

    def authorize(self, token):
        with tempfile.NamedTemporaryFile("w", dir=self.env.tmp, delete=False) as f:
            f.write(token)
            path = f.name
        os.chmod(path, 0o600)
        p = subprocess.run([CLI, "--json", "--config", self.env.config_path, "authorize",
                            "--token-file", path, "--service", "speech-to-text", "--model", "fast",
                            "--param", "audio_seconds=1", "--request-id", os.urandom(6).hex()],
                           capture_output=True, timeout=30)
        os.unlink(path)
        return json.loads(p.stdout)

    def test_a_sign_up_killed_after_its_claim_leaves_only_the_claim_which_runs_out(self):
        sock = self.env.start_extra_daemon("killed", {"KEYGATED_FAULT": "signup.claimed"})
        p = self.env.extra[-1][0]
        self.env.extra.pop()            # it dies here: not one to stop at the end
        e = kgtest.unique_email("killed")
        with kgtest.Client(sock, timeout=30) as c:
            c.send(c.request("user.signup", email=e, name="Killed"))
            self.assertTrue(c.is_closed(10))
        self.assertEqual(p.wait(10), -9)
        claim = self.env.redis("GET", "kg:email:%s" % e).decode()
        self.assertTrue(claim.startswith("claim u_"), claim)
        self.assertTrue(0 < self.env.redis("PTTL", "kg:email:%s" % e) <= 60000)
        uid = claim[len("claim "):]
        self.assertEqual(self.env.redis("EXISTS", "kg:user:%s" % uid), 0)    # nothing else
        self.assertEqual(self.env.redis("EXISTS", "kg:uteams:%s" % uid), 0)
        self.fsck_clean()
        r = self.c.call("user.signup", email=e, name="Again")
        self.assertEqual(r["error"]["code"], "conflict")
        self.assertIn("in progress", r["error"]["message"])
        # As if the 60 s had passed.
        self.assertEqual(self.env.redis("PEXPIRE", "kg:email:%s" % e, "1"), 1)
        kgtest.wait_for(lambda: self.env.redis("EXISTS", "kg:email:%s" % e) == 0, 5,
                        "the claim to run out")
        again = kgtest.signup(self.c, email=e)
        self.assertNotEqual(again["user_id"], uid)
        self.assertEqual(self.env.redis("GET", "kg:email:%s" % e).decode(), again["user_id"])
        self.fsck_clean()

    def test_a_crashed_sign_up_claim_runs_out_and_fsck_tells_a_stale_one(self):
        e = kgtest.unique_email("claim")
        # A claim as a sign-up leaves it between its two steps, killed there.
        self.env.redis("SET", "kg:email:%s" % e, "claim u_crashedsignup01", "PX", "1500")
        self.assertEqual(self.c.err("user.signup", email=e, name="Later"), "conflict")
        self.fsck_clean()           # pending, with its TTL: not a problem
        kgtest.wait_for(lambda: self.env.redis("EXISTS", "kg:email:%s" % e) == 0, 10,
                        "the claim to run out")
        kgtest.signup(self.c, email=e)
        # One with no TTL (none of ours: written by hand) is stale: fsck says so.
        e2 = kgtest.unique_email("claim")
        self.env.redis("SET", "kg:email:%s" % e2, "claim u_crashedsignup02")
        p = subprocess.run([CLI, "--json", "fsck", "--config", self.env.config_path],
                           capture_output=True, text=True, timeout=300)
        problems = json.loads(p.stdout)["problems"]
        self.assertEqual(p.returncode, 1)
        self.assertTrue(any("claim" in json.dumps(x) for x in problems), problems)
        self.env.redis("DEL", "kg:email:%s" % e2)


if __name__ == "__main__":
    unittest.main()
