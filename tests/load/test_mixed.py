"""N clients x M mixed commands on two shared teams (keys created, edited,
assigned, revoked; tokens generated and rotated with and without grace;
members added, re-roled, removed; ownership moved; wallets credited) while
two gateways (kg_hammer, libkeygate) debit the same wallets. fsck runs
twice during the load (it must see a consistent state on a live system)
and once at the end: clean every time. No answer is `internal` or
`unavailable`; refusals that races make legitimate (forbidden, not_found,
conflict, invalid_state, free_key_immutable) are counted."""
import os
import random
import sys
import threading
import time
import unittest
from collections import Counter

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "faults"))
import safety  # noqa: E402
from safety import kgtest  # noqa: E402

N = 8
M = 400
GATEWAYS = 2
GW_REQUESTS = 1500
ALLOWED = {"forbidden", "not_found", "conflict", "invalid_state", "free_key_immutable",
           "bad_request"}     # bad_request: a user removed between choosing and sending


class Team:
    def __init__(self, c, env):
        t = kgtest.make_team(c, admins=2, users=4, outsiders=0)
        self.team, self.free_key = t["team"], t["free_key"]
        self.people = [t["owner"]] + t["admins"] + t["users"]
        a = t["owner"]
        self.wallets = []
        for i in range(2):
            w = c.ok("wallet.create", a, team=self.team, name="w%d" % i)["wallet_id"]
            c.ok("wallet.credit", a, wallet=w, amount_micros=10 ** 6, reference="seed-%d" % i)
            self.wallets.append(w)
        self.keys = [c.ok("key.create", a, team=self.team, name="k%d" % i, users=self.people,
                          services=self.payg(self.wallets[i % 2]))["key_id"] for i in range(3)]
        # the gateways' own key: the mixed load never touches it
        self.gw_key = c.ok("key.create", a, team=self.team, name="gw", users=[a],
                           services=self.payg(self.wallets[0]))["key_id"]
        tok = c.ok("token.generate", a, key=self.gw_key)["token"]
        self.gw_token_file = safety.write_secret(os.path.join(env.tmp, "gw-%s" % self.team), tok)
        self.lock = threading.Lock()

    @staticmethod
    def payg(w):
        return {"text-generation": {"policy": "payg", "models": ["small"], "wallet": w},
                "speech-to-text": {"policy": "free"}}


def one_command(rnd, t, n):
    """A random (cmd, actor, args) for team t."""
    who = rnd.choice(t.people)
    with t.lock:
        key = rnd.choice(t.keys + [t.free_key])
    other = rnd.choice(t.people)
    r = rnd.random()
    if r < 0.10:
        return "key.create", who, {"team": t.team, "name": "m%d" % n,
                                   "users": rnd.sample(t.people, 3)}
    if r < 0.18:
        return "key.update", who, {"key": key, "name": "r%d" % n}
    if r < 0.28:
        return "key.users.set", who, {"key": key, "users": rnd.sample(t.people, rnd.randint(1, 5)),
                                      "notify": rnd.random() < 0.5}
    if r < 0.34:
        return "key.services.set", who, {"key": key, "services": Team.payg(rnd.choice(t.wallets))}
    if r < 0.38:
        return "key.revoke", who, {"key": key}
    if r < 0.50:
        return "token.generate", who, {"key": key}
    if r < 0.62:
        args = {"key": key, "user": other}
        if rnd.random() < 0.5:
            args["grace_seconds"] = rnd.choice([0, 60, 3600])
        return "token.rotate", who, args
    if r < 0.72:
        return "wallet.credit", who, {"wallet": rnd.choice(t.wallets), "amount_micros": rnd.randint(1, 999),
                                      "reference": "mix-%d-%d" % (n, rnd.randint(0, 3))}
    if r < 0.78:
        return "team.member.remove", who, {"team": t.team, "user": other}
    if r < 0.86:
        return "team.member.add", who, {"team": t.team, "user": other, "role": rnd.choice(["admin", "user"])}
    if r < 0.91:
        return "team.member.set_role", who, {"team": t.team, "user": other,
                                             "role": rnd.choice(["admin", "user"])}
    if r < 0.93:
        return "team.transfer_ownership", who, {"team": t.team, "user": other}
    if r < 0.97:
        return "key.list", who, {"team": t.team}
    return "wallet.get", who, {"wallet": rnd.choice(t.wallets)}


class Mixed(kgtest.EnvCase):

    def test_mixed_load_with_gateways_and_live_fsck(self):
        env, c = self.env, self.c
        teams = [Team(c, env), Team(c, env)]
        gw = safety.gateway_config(env)
        hammers = [safety.Hammer(gw, teams[i % 2].gw_token_file, GW_REQUESTS, rid="gw%d" % i,
                                 out=os.path.join(env.tmp, "gw%d.out" % i))
                   for i in range(GATEWAYS)]
        codes = Counter()
        bad = []
        lock = threading.Lock()

        def client(i):
            rnd = random.Random(1000 + i)
            t = teams[i % 2]
            cl = kgtest.Client(env.socket_path, timeout=30)
            try:
                for n in range(M):
                    cmd, actor, args = one_command(rnd, t, i * M + n)
                    r = cl.call(cmd, actor, **args)
                    code = "ok" if r["ok"] else r["error"]["code"]
                    if r["ok"] and cmd == "key.create":
                        with t.lock:
                            t.keys.append(r["result"]["key_id"])
                    with lock:
                        codes[(cmd, code)] += 1
                        if code != "ok" and (code not in ALLOWED or (
                                code == "bad_request" and "not a member" not in r["error"]["message"])):
                            bad.append((cmd, args, r))
            finally:
                cl.close()

        t0 = time.monotonic()
        ts = [threading.Thread(target=client, args=(i,)) for i in range(N)]
        for th in ts:
            th.start()
        live = []
        for _ in range(2):
            time.sleep(0.4)
            rc, out, so, se = safety.fsck(env)
            live.append((rc, out["problems"] if out else se))
        for th in ts:
            th.join(60)
        dt = time.monotonic() - t0
        gw_results = [h.wait(60) for h in hammers]
        for h in hammers:
            h.kill()
        self.assertEqual(bad, [], "answers that no race explains")
        self.assertEqual([x for x in live if x != (0, [])], [], "fsck during the load")
        counts = safety.assert_clean(self, env, "after the mixed load")
        gw_ok = 0
        for rc, rows, summary in gw_results:
            self.assertEqual(rc, 0, summary)
            gw_ok += sum(1 for r in rows if r["status"] == "ok")
        self.assertGreater(gw_ok, 0)
        total = sum(codes.values())
        oks = sum(v for (cmd, code), v in codes.items() if code == "ok")
        by_code = Counter()
        for (cmd, code), v in codes.items():
            by_code[code] += v
        print("%d clients x %d mixed commands in %.2fs (%d ok; refusals by code: %s) while %d "
              "gateways made %d requests (%d charged); fsck clean twice during and once after: %s"
              % (N, M, dt, oks, dict((k, v) for k, v in by_code.items() if k != "ok"),
                 GATEWAYS, GATEWAYS * GW_REQUESTS, gw_ok, counts), file=sys.stderr)
        self.assertEqual(total, N * M)


if __name__ == "__main__":
    unittest.main()
