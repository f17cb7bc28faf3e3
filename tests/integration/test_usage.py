"""usage.summary (issue 12; docs/protocol.md "Usage analytics"): the
gateway's debit script counts requests, cost and params per UTC day and
hour in the team's slot. Debits are made by `keygate authorize` (a host of
libkeygate, as a gateway) with random params across keys, wallets and
models; every answer of usage.summary is compared with sums computed
independently: requests and cost from wallet.ledger, params from the
requests this test sent (joined on the ledger's request id). Filters,
granularity, bad ranges, roles, the CLI, and fsck staying clean."""
import json
import os
import random
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import kgtest  # noqa: E402

CLI = os.environ.get("KEYGATE_CLI") or os.path.join(kgtest.REPO, "build", "daemon", "cli", "keygate")
DAY = 86400000
HOUR = 3600000
DIMS = ("key", "wallet", "service", "model")


def one_paid_key(c, env, service, model, credit, tag):
    """A fresh team with one wallet (credited) and one payg key on service
    and model, its token in a file. Returns (team, owner, wallet, key, token path)."""
    t = kgtest.make_team(c, admins=0, users=0, outsiders=0)
    o = t["owner"]
    w = c.ok("wallet.create", o, team=t["team"], name="w")["wallet_id"]
    c.ok("wallet.credit", o, wallet=w, amount_micros=credit, reference="seed")
    k = c.ok("key.create", o, team=t["team"], name="k", users=[o], services={
        service: {"policy": "payg", "models": [model], "wallet": w}})["key_id"]
    path = os.path.join(env.tmp, "tok-" + tag)
    with open(path, "w") as f:
        f.write(c.ok("token.generate", o, key=k)["token"])
    os.chmod(path, 0o600)
    return t, o, w, k, path


@unittest.skipUnless(os.access(CLI, os.X_OK), "needs the keygate CLI (KEYGATE_CLI)")
class Usage(kgtest.EnvCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.rng = random.Random(int(os.environ.get("KG_SEED", "0")) or None)
        cls.sent = {}                       # request id -> params
        cls.t = kgtest.make_team(cls.c, admins=1, users=1, outsiders=1)
        o = cls.t["owner"]
        cls.wallets = []
        for name in ("a", "b"):
            w = cls.c.ok("wallet.create", o, team=cls.t["team"], name=name)["wallet_id"]
            cls.c.ok("wallet.credit", o, wallet=w, amount_micros=10 ** 9, reference="seed-" + name)
            cls.wallets.append(w)
        # key -> (wallet, models)
        plan = [(cls.wallets[0], ["small", "large"]), (cls.wallets[1], ["small"]),
                (cls.wallets[0], ["large"])]
        cls.keys = []
        for i, (w, models) in enumerate(plan):
            k = cls.c.ok("key.create", o, team=cls.t["team"], name="k%d" % i, users=[o], services={
                "text-generation": {"policy": "payg", "models": models, "wallet": w}})["key_id"]
            tok = cls.c.ok("token.generate", o, key=k)["token"]
            path = os.path.join(cls.env.tmp, "tok-" + k)
            with open(path, "w") as f:
                f.write(tok)
            os.chmod(path, 0o600)
            cls.keys.append({"id": k, "wallet": w, "models": models, "token": path})
        # The bucket is the gateway's clock, the ledger's "at" Redis' (the
        # same machine here): keep the debits clear of an hour boundary.
        left = HOUR - int(time.time() * 1000) % HOUR
        if left < 30000:
            time.sleep(left / 1000 + 1)
        cls.start = int(time.time() * 1000)
        for n in range(36):
            k = cls.rng.choice(cls.keys)
            params = {"input_tokens": cls.rng.randint(1, 20000)}
            if cls.rng.random() < 0.8:
                params["output_tokens"] = cls.rng.randint(0, 8000)
            cls.authorize(k, cls.rng.choice(k["models"]), params, "r%d" % n)
        # A replay is not counted again.
        cls.replayed = cls.authorize(cls.keys[0], cls.keys[0]["models"][0], {"input_tokens": 7},
                                     "again", times=2)
        cls.end = int(time.time() * 1000)

    @classmethod
    def authorize(cls, k, model, params, rid, times=1):
        argv = [CLI, "--json", "--config", cls.env.config_path, "authorize", "--token-file",
                k["token"], "--service", "text-generation", "--model", model, "--request-id", rid]
        for name, v in params.items():
            argv += ["--param", "%s=%d" % (name, v)]
        cls.sent[rid] = params
        out = []
        for _ in range(times):
            p = subprocess.run(argv, capture_output=True, timeout=30)
            r = json.loads(p.stdout)
            assert r["status"] == "ok", (p.stdout, p.stderr)
            out.append(r)
        return out

    # -- the independent sums ------------------------------------------------

    def ledger_debits(self):
        out = []
        for w in self.wallets:
            r = self.c.ok("wallet.ledger", self.t["owner"], wallet=w, limit=1000)
            self.assertNotIn("next_cursor", r)
            for e in r["entries"]:
                if e["type"] == "debit":
                    e["wallet_id"] = w
                    out.append(e)
        return out

    def expected(self, width, first, n, **filt):
        """Buckets as usage.summary should give them, from the ledger."""
        buckets = [{"start": (first + i) * width, "requests": 0, "cost_micros": 0, "params": {}}
                   for i in range(n)]
        for e in self.ledger_debits():
            dims = {"key": e["key_id"], "wallet": e["wallet_id"], "service": e["service"],
                    "model": e["model"]}
            if any(filt.get(d) is not None and filt[d] != dims[d] for d in DIMS):
                continue
            i = e["at"] // width - first
            if not 0 <= i < n:
                continue
            b = buckets[i]
            b["requests"] += 1
            b["cost_micros"] += e["amount_micros"]
            for name, v in self.sent[e["request_id"]].items():
                if v:
                    b["params"][name] = b["params"].get(name, 0) + v
        return buckets

    def check(self, granularity="day", span=3, **filt):
        width = DAY if granularity == "day" else HOUR
        frm = (self.start // width - 1) * width + 17
        to = (self.start // width + span - 2) * width + 5
        args = {k: v for k, v in filt.items() if v is not None}
        r = self.c.ok("usage.summary", self.t["owner"], team=self.t["team"], granularity=granularity,
                      **{"from": frm, "to": to}, **args)
        want = self.expected(width, frm // width, span, **filt)
        self.assertEqual(r["buckets"], want, (granularity, filt))
        tot = {"requests": 0, "cost_micros": 0, "params": {}}
        for b in want:
            tot["requests"] += b["requests"]
            tot["cost_micros"] += b["cost_micros"]
            for name, v in b["params"].items():
                tot["params"][name] = tot["params"].get(name, 0) + v
        self.assertEqual(r["total"], tot)
        self.assertEqual((r["granularity"], r["from"], r["to"], r["team_id"]),
                         (granularity, frm, to, self.t["team"]))
        return r

    # -----------------------------------------------------------------------

    def test_totals_equal_the_ledger_by_day_and_hour(self):
        r = self.check("day")
        # Every request counted once (the replay too: once), none lost.
        self.assertEqual(r["total"]["requests"], 37)
        self.assertFalse(self.replayed[0]["replayed"])
        self.assertTrue(self.replayed[1]["replayed"])
        self.assertGreater(r["total"]["params"]["input_tokens"], 0)
        self.check("hour", span=4)

    def test_filters(self):
        k0 = self.keys[0]
        for filt in ({"key": k0["id"]}, {"wallet": self.wallets[0]}, {"wallet": self.wallets[1]},
                     {"model": "large"}, {"service": "text-generation", "model": "small"},
                     {"key": k0["id"], "model": "small"}, {"key": self.keys[1]["id"], "wallet": self.wallets[0]},
                     {"service": "speech-to-text"}, {"key": "k_nope"}):
            self.check("day", **filt)
            self.check("hour", span=2, **filt)
        # Nothing matches: zero buckets, all present.
        r = self.check("day", key="k_nope")
        self.assertEqual(r["total"], {"requests": 0, "cost_micros": 0, "params": {}})
        self.assertEqual(len(r["buckets"]), 3)

    def test_defaults_are_the_last_30_days_or_24_hours(self):
        o, team = self.t["owner"], self.t["team"]
        r = self.c.ok("usage.summary", o, team=team)
        self.assertEqual((r["granularity"], len(r["buckets"])), ("day", 30))
        self.assertEqual(r["buckets"][-1]["start"], r["to"] // DAY * DAY)
        self.assertEqual(r["total"]["requests"], 37)
        r = self.c.ok("usage.summary", o, team=team, granularity="hour")
        self.assertEqual(len(r["buckets"]), 24)
        self.assertEqual(r["total"]["requests"], 37)

    def test_bad_ranges_and_arguments_are_refused(self):
        o, team = self.t["owner"], self.t["team"]
        now = int(time.time() * 1000)
        for args in ({"from": now, "to": now - 1}, {"from": -1, "to": now}, {"to": -5, "from": 0},
                     {"from": now - 400 * DAY, "to": now},                  # 401 days
                     {"from": now - 336 * HOUR, "to": now, "granularity": "hour"},  # 337 hours
                     {"granularity": "week"}, {"granularity": 3}, {"from": "yesterday"},
                     {"key": 5}):
            self.assertEqual(self.c.err("usage.summary", o, team=team, **args), "bad_request", args)
        # The most buckets allowed.
        r = self.c.ok("usage.summary", o, team=team, **{"from": now - 399 * DAY, "to": now})
        self.assertEqual(len(r["buckets"]), 400)
        r = self.c.ok("usage.summary", o, team=team, granularity="hour",
                      **{"from": now - 335 * HOUR, "to": now})
        self.assertEqual(len(r["buckets"]), 336)

    def test_roles(self):
        team = self.t["team"]
        self.c.ok("usage.summary", self.t["admins"][0], team=team)
        self.assertEqual(self.c.err("usage.summary", self.t["users"][0], team=team), "forbidden")
        self.assertEqual(self.c.err("usage.summary", self.t["outsiders"][0], team=team), "not_found")
        self.assertEqual(self.c.err("usage.summary", self.t["owner"], team="t_nope"), "not_found")

    def test_keys_expire_and_live_in_the_team_slot(self):
        keys = [k.decode() if isinstance(k, bytes) else k
                for k in self.env.redis_keys("kg:{t:%s}:usage:*" % self.t["team"])]
        days = [k for k in keys if ":usage:d:" in k]
        hours = [k for k in keys if ":usage:h:" in k]
        self.assertTrue(days and hours, keys)
        for k in days:
            self.assertTrue(400 * 86400 - 3600 < self.env.redis("TTL", k) <= 400 * 86400, k)
        for k in hours:
            self.assertTrue(14 * 86400 - 3600 < self.env.redis("TTL", k) <= 14 * 86400, k)

    def test_cli_and_fsck(self):
        env = dict(os.environ, KEYGATE_ACTOR=self.t["owner"])
        p = subprocess.run([CLI, "--json", "--config", self.env.config_path, "usage", self.t["team"],
                            "--key", self.keys[1]["id"], "--hourly"],
                           capture_output=True, text=True, timeout=30, env=env)
        self.assertEqual(p.returncode, 0, p.stderr)
        r = json.loads(p.stdout)
        self.assertEqual(r["granularity"], "hour")
        want = self.expected(HOUR, r["from"] // HOUR, 24, key=self.keys[1]["id"])
        self.assertEqual(r["buckets"], want)
        p = subprocess.run([CLI, "--config", self.env.config_path, "usage", self.t["team"]],
                           capture_output=True, text=True, timeout=30, env=env)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("total", p.stdout)
        self.assertIn("input_tokens=", p.stdout)
        p = subprocess.run([CLI, "--config", self.env.config_path, "usage", self.t["team"],
                            "--granularity", "week"], capture_output=True, text=True, timeout=30,
                           env=env)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("bad_request", p.stderr)
        p = subprocess.run([CLI, "--json", "fsck", "--config", self.env.config_path],
                           capture_output=True, text=True, timeout=120)
        self.assertEqual((p.returncode, json.loads(p.stdout)["problems"]), (0, []), p.stderr)


SETTLE_CATALOG = {"currency": "USD", "services": [
    {"id": "llm", "name": "LLM", "free": False, "settle": True,
     "models": [{"id": "m1", "price": {"base_micros": 100, "per": [
         {"param": "input_tokens", "micros": 150, "units": 1000},
         {"param": "output_tokens", "micros": 600, "units": 1000, "measured": True, "max": 4096}]}}]}]}


@unittest.skipUnless(os.access(CLI, os.X_OK), "needs the keygate CLI (KEYGATE_CLI)")
class UsageSettle(kgtest.EnvCase):
    """A settle counts its charge (capped at the hold) and its actual params;
    a hold captured at expiry counts one request at the hold, no params; an
    open hold counts nothing."""

    env_args = {"catalog": SETTLE_CATALOG, "extra_config": ["hold_ttl_ms 1500"]}

    def run_cli(self, path, rid, params, settle=None):
        argv = [CLI, "--json", "--config", self.env.config_path, "authorize", "--token-file", path,
                "--service", "llm", "--model", "m1", "--request-id", rid]
        for name, v in params.items():
            argv += ["--param", "%s=%d" % (name, v)]
        for name, v in (settle or {}).items():
            argv += ["--settle", "%s=%d" % (name, v)]
        p = subprocess.run(argv, capture_output=True, timeout=30)
        r = json.loads(p.stdout)
        self.assertEqual(r["status"], "ok", (p.stdout, p.stderr))
        return r

    def test_settles_and_captures(self):
        rng = random.Random()
        t, o, w, k, path = one_paid_key(self.c, self.env, "llm", "m1", 10 ** 9, "settle")
        left = HOUR - int(time.time() * 1000) % HOUR
        if left < 30000:
            time.sleep(left / 1000 + 1)
        sent = {}
        for n in range(6):
            inp, out = rng.randint(1, 9000), rng.randint(0, 4096)
            r = self.run_cli(path, "s%d" % n, {"input_tokens": inp}, {"output_tokens": out})
            self.assertEqual(r["settle"]["status"], "ok", r)
            sent["s%d" % n] = {"input_tokens": inp, "output_tokens": out}
        # A hold left open: nothing counted yet.
        self.run_cli(path, "open", {"input_tokens": 1000})
        held = self.c.ok("price.estimate", service="llm", model="m1",
                         params={"input_tokens": 1000, "output_tokens": 4096})["cost_micros"]
        r = self.c.ok("usage.summary", o, team=t["team"], granularity="hour")
        self.assertEqual(r["total"]["requests"], 6)
        time.sleep(2)
        # The next money script on the wallet captures it: one request, no params.
        r = self.run_cli(path, "s6", {"input_tokens": 10}, {"output_tokens": 5})
        sent["s6"] = {"input_tokens": 10, "output_tokens": 5}
        entries = self.c.ok("wallet.ledger", o, wallet=w, limit=1000)["entries"]
        debits = [e for e in entries if e["type"] == "debit"]
        self.assertEqual(sorted(e.get("settle") for e in debits), ["expired"] + ["settled"] * 7)
        self.assertEqual([e["amount_micros"] for e in debits if e["settle"] == "expired"], [held])
        want = {"requests": len(debits), "cost_micros": sum(e["amount_micros"] for e in debits),
                "params": {}}
        for e in debits:
            for name, v in sent.get(e["request_id"], {}).items():
                if v:
                    want["params"][name] = want["params"].get(name, 0) + v
        for g in ("hour", "day"):
            r = self.c.ok("usage.summary", o, team=t["team"], granularity=g, key=k, wallet=w,
                          service="llm", model="m1")
            self.assertEqual(r["total"], want, g)
            self.assertEqual(sum(1 for b in r["buckets"] if b["requests"]), 1, g)


class UsageCountersOff(kgtest.EnvCase):
    """`usage_counters off`: the gateway's scripts count nothing (no usage
    hash is written) and still charge exactly."""

    env_args = {"extra_config": ["usage_counters off"]}

    def test_debits_charge_but_count_nothing(self):
        t, o, w, _, path = one_paid_key(self.c, self.env, "text-generation", "small", 10 ** 6, "off")
        charged = 0
        for n in range(3):
            p = subprocess.run([CLI, "--json", "--config", self.env.config_path, "authorize",
                                "--token-file", path, "--service", "text-generation", "--model",
                                "small", "--request-id", "off%d" % n, "--param", "input_tokens=1000"],
                               capture_output=True, timeout=30)
            r = json.loads(p.stdout)
            self.assertEqual(r["status"], "ok", p.stderr)
            charged += r["cost_micros"]
        self.assertGreater(charged, 0)
        self.assertEqual(self.c.ok("wallet.get", o, wallet=w)["balance_micros"], 10 ** 6 - charged)
        self.assertEqual(self.env.redis_keys("kg:{t:%s}:usage:*" % t["team"]), [])
        total = self.c.ok("usage.summary", o, team=t["team"])["total"]
        self.assertEqual(total.get("requests", 0), 0, total)


if __name__ == "__main__":
    unittest.main()
