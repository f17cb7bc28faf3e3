"""Paging with cursors (issue 12; docs/protocol.md "Paging"): wallet.ledger,
key.list, audit.list and notification.list return every item exactly once
while the lists keep changing (debits pushed at the ledger's head, keys
created and revoked), filters of wallet.ledger agree with an independent
filter of the raw ledger, and a cursor that the daemon did not give is
refused."""
import json
import os
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import kgtest  # noqa: E402
from kgtest import signup  # noqa: E402

# Debits as libkeygate's debit script writes them (module/kg_scripts.c):
# balance and ledger entry in one step. KEYS: wallet, ledger. ARGV: count,
# first request number, key_id, user_id, service, model, at (0: Redis TIME).
DEBITS_LUA = """
local n = tonumber(ARGV[1])
for i = 0, n - 1 do
  local nb = redis.call('HINCRBY', KEYS[1], 'balance_micros', -1)
  local at = tonumber(ARGV[7])
  if at == 0 then
    local t = redis.call('TIME')
    at = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  local e = '{"type":"debit","amount_micros":1,"balance_micros":' .. string.format('%d', nb) ..
    ',"at":' .. string.format('%d', at) .. ',"key_id":' .. cjson.encode(ARGV[3]) ..
    ',"user_id":' .. cjson.encode(ARGV[4]) .. ',"service":' .. cjson.encode(ARGV[5]) ..
    ',"model":' .. cjson.encode(ARGV[6]) ..
    ',"request_id":"r' .. string.format('%d', tonumber(ARGV[2]) + i) .. '"}'
  redis.call('LPUSH', KEYS[2], e)
end
return n
"""


def rid_num(e):
    return int(e["request_id"][1:])


class Paging(kgtest.EnvCase):

    def wallet(self, credit=10 ** 12):
        o = signup(self.c)
        a, team = o["user_id"], o["team_id"]
        w = self.c.ok("wallet.create", a, team=team, name="w")["wallet_id"]
        self.c.ok("wallet.credit", a, wallet=w, amount_micros=credit, reference="seed")
        keys = ("kg:{t:%s}:wallet:%s" % (team, w), "kg:{t:%s}:ledger:%s" % (team, w))
        return a, team, w, keys

    def debits(self, keys, n, first, key_id="k_x", service="text-generation", at=0):
        self.env.redis("EVAL", DEBITS_LUA, 2, keys[0], keys[1], n, first, key_id, "u_x",
                       service, "small", at)

    def pages(self, cmd, actor, field, limit, **args):
        out, cursor, calls = [], None, 0
        while True:
            extra = dict(args)
            if cursor is not None:
                extra["cursor"] = cursor
            r = self.c.ok(cmd, actor, limit=limit, **extra)
            out.extend(r[field])
            calls += 1
            cursor = r.get("next_cursor")
            if cursor is None:
                return out, calls
            self.assertIsInstance(cursor, str)
            self.assertLess(calls, 100000)

    # -- wallet.ledger ------------------------------------------------------

    def test_ledger_pages_every_entry_once_while_debits_arrive(self):
        a, team, w, keys = self.wallet()
        self.debits(keys, 3000, 0)
        before = self.env.redis("LLEN", keys[1])
        stop = threading.Event()
        pushed = [0]

        def gateway():
            i = 1000000
            while not stop.is_set():
                self.debits(keys, 3, i)
                i += 3
                pushed[0] += 3

        t = threading.Thread(target=gateway)
        t.start()
        try:
            got, calls = self.pages("wallet.ledger", a, "entries", 97, wallet=w)
        finally:
            stop.set()
            t.join()
        self.assertGreater(pushed[0], 30, "debits did not run during the paging")
        self.assertGreater(calls, 30)
        debit_ids = [rid_num(e) for e in got if e["type"] == "debit"]
        self.assertEqual(len(debit_ids), len(set(debit_ids)), "an entry came twice")
        old = [i for i in debit_ids if i < 1000000]
        self.assertEqual(old, list(range(2999, -1, -1)), "an entry was skipped or out of order")
        self.assertEqual(sum(1 for e in got if e["type"] == "credit"), 1)
        self.assertEqual(got[-1]["type"], "credit")            # the oldest
        # The balance after each entry tells their order: newest first, one step each.
        bals = [e["balance_micros"] for e in got]
        self.assertEqual(bals, sorted(bals))
        self.assertGreaterEqual(len(got), before)

    def test_ledger_filters_agree_with_the_raw_ledger(self):
        a, team, w, keys = self.wallet()
        base = 1700000000000
        for i in range(40):
            self.debits(keys, 30, i * 30, key_id="k_%d" % (i % 3),
                        service=("text-generation", "speech-to-text")[i % 2], at=base + i * 1000)
        raw = [json.loads(x) for x in self.env.redis("LRANGE", keys[1], 0, -1)]
        cases = [{}, {"key": "k_1"}, {"service": "speech-to-text"},
                 {"from": base + 5000, "to": base + 20000},
                 {"key": "k_2", "service": "text-generation", "from": base + 9000},
                 {"to": base + 3000}, {"key": "k_nobody"}]
        for f in cases:
            want = [e for e in raw
                    if ("key" not in f or e.get("key_id") == f["key"])
                    and ("service" not in f or e.get("service") == f["service"])
                    and ("from" not in f or e["at"] >= f["from"])
                    and ("to" not in f or e["at"] <= f["to"])]
            for limit in (1, 7, 1000):
                got, _ = self.pages("wallet.ledger", a, "entries", limit, wallet=w, **f)
                self.assertEqual(got, want, (f, limit))

    def test_ledger_small_and_empty(self):
        a, team, w, keys = self.wallet()
        r = self.c.ok("wallet.ledger", a, wallet=w)
        self.assertEqual(len(r["entries"]), 1)
        self.assertNotIn("next_cursor", r)
        self.debits(keys, 5, 0)
        r = self.c.ok("wallet.ledger", a, wallet=w, limit=6)
        self.assertEqual(len(r["entries"]), 6)
        self.assertNotIn("next_cursor", r)
        r = self.c.ok("wallet.ledger", a, wallet=w, limit=5)
        self.assertIn("next_cursor", r)
        last = self.c.ok("wallet.ledger", a, wallet=w, limit=5, cursor=r["next_cursor"])
        self.assertEqual([e["type"] for e in last["entries"]], ["credit"])
        self.assertNotIn("next_cursor", last)
        self.assertEqual(self.c.err("wallet.ledger", a, wallet=w, limit=1001), "bad_request")

    # -- malformed cursors ----------------------------------------------------

    def test_malformed_cursors_refused(self):
        a, team, w, keys = self.wallet()
        self.debits(keys, 10, 0)
        good = {
            "wallet.ledger": self.c.ok("wallet.ledger", a, wallet=w, limit=2)["next_cursor"],
        }
        for i in range(3):
            self.c.ok("key.create", a, team=team, name="k%d" % i)
        good["key.list"] = self.c.ok("key.list", a, team=team, limit=1)["next_cursor"]
        good["audit.list"] = self.c.ok("audit.list", a, team=team, limit=1)["next_cursor"]
        bad_common = ["", "x", "garbage", "L1", "L1.", "L1.-1", "L1.01", "L1.1.", "L1. 1",
                      "L2.1", "K1.5", "K1..k_a", "K1.5.k-bad", "A1.1.2.3", "A1.1.2.3.2",
                      "A1.1.2.3.0.", "N1.1.zz.0", "N1.1.0123456789abcdef", "L1.99999999999999999999",
                      "\u00e9", "L1.1\u0000"]
        calls = {"wallet.ledger": {"wallet": w}, "key.list": {"team": team},
                 "audit.list": {"team": team}, "notification.list": {}}
        for cmd, args in calls.items():
            for c in bad_common + [g for k, g in good.items() if k != cmd]:
                self.assertEqual(self.c.err(cmd, a, cursor=c, **args), "bad_request", (cmd, c))
            for c in (5, ["L1.1"], {"c": 1}, True):
                self.assertEqual(self.c.err(cmd, a, cursor=c, **args), "bad_request", (cmd, c))
            if cmd in good:
                self.c.ok(cmd, a, cursor=good[cmd], **args)
        # A position past the newest entry was never given out.
        self.assertEqual(self.c.err("wallet.ledger", a, wallet=w, cursor="L1.11"), "bad_request")
        self.c.ok("wallet.ledger", a, wallet=w, cursor="L1.10")

    # -- key.list -------------------------------------------------------------

    def test_key_list_pages_with_concurrent_creates_and_revokes(self):
        t = kgtest.make_team(self.c, admins=1, users=1, outsiders=0)
        owner, user = t["owner"], t["users"][0]
        ids = []
        for i in range(230):
            users = [user] if i % 3 == 0 else []
            ids.append(self.c.ok("key.create", owner, team=t["team"], name="k%d" % i,
                                 users=users)["key_id"])
        stop = threading.Event()
        made, revoked = [], []

        def churn():
            c2 = self.env.client()
            i = 0
            while not stop.is_set():
                made.append(c2.ok("key.create", owner, team=t["team"], name="n%d" % i,
                                  users=[user])["key_id"])
                c2.ok("key.revoke", owner, key=ids[(i * 7) % len(ids)])
                revoked.append(ids[(i * 7) % len(ids)])
                i += 1

        th = threading.Thread(target=churn)
        th.start()
        try:
            seen_admin, calls_a = self.pages("key.list", owner, "keys", 7, team=t["team"])
            seen_user, calls_u = self.pages("key.list", user, "keys", 5, team=t["team"])
        finally:
            stop.set()
            th.join()
        self.assertGreater(len(made), 5, "no concurrent creates")
        self.assertGreater(calls_a, 30)
        for seen, expect in ((seen_admin, set(ids) | {t["free_key"]}),
                             (seen_user, {k for i, k in enumerate(ids) if i % 3 == 0})):
            got = [k["key_id"] for k in seen]
            self.assertEqual(len(got), len(set(got)), "a key came twice")
            self.assertTrue(expect <= set(got), "skipped: %s" % sorted(expect - set(got))[:5])
            self.assertTrue(set(got) <= set(ids) | set(made) | {t["free_key"]})
        for k in seen_user:
            self.assertIn(user, k["users"])
        # Whole pages: same view as key.get.
        one = seen_admin[3]
        self.assertEqual(set(one) - {"status", "updated_at"},
                         set(self.c.ok("key.get", owner, key=one["key_id"])) - {"status", "updated_at"})

    def test_key_list_user_sparse_in_big_team(self):
        t = kgtest.make_team(self.c, admins=0, users=2, outsiders=0)
        owner, u1 = t["owner"], t["users"][0]
        mine = set()
        for i in range(1200):
            users = [u1] if i % 400 == 399 else []
            k = self.c.ok("key.create", owner, team=t["team"], name="k%d" % i, users=users)
            if users:
                mine.add(k["key_id"])
        got, _ = self.pages("key.list", u1, "keys", 100, team=t["team"])
        self.assertEqual({k["key_id"] for k in got}, mine)
        self.assertEqual(len(got), len(mine))
        all_, _ = self.pages("key.list", owner, "keys", 1000, team=t["team"])
        self.assertEqual(len(all_), 1201)
        self.assertEqual(len({k["key_id"] for k in all_}), 1201)

    # -- audit.list, notification.list ---------------------------------------

    def test_audit_pages_match_one_big_page(self):
        o = signup(self.c)
        a, team = o["user_id"], o["team_id"]
        u = signup(self.c)["user_id"]
        for i in range(60):
            self.c.ok("wallet.create", a, team=team, name="w%d" % i)
            self.c.err("wallet.create", a, team=team, name="")     # refused: the other stream
            if i % 10 == 0:
                self.c.err("team.member.remove", a, team=team, user=u)
        for only in (None, "accepted", "refused"):
            args = {"team": team}
            if only:
                args["only"] = only
            whole = self.c.ok("audit.list", a, limit=1000, **args)
            self.assertNotIn("next_cursor", whole)
            for limit in (1, 3, 50):
                got, _ = self.pages("audit.list", a, "entries", limit, **args)
                self.assertEqual(got, whole["entries"], (only, limit))

    def test_notifications_page_once_while_new_ones_arrive(self):
        t = kgtest.make_team(self.c, admins=0, users=1, outsiders=0)
        owner, user = t["owner"], t["users"][0]
        k = self.c.ok("key.create", owner, team=t["team"], name="k")["key_id"]
        for i in range(30):
            self.c.ok("key.users.set", owner, key=k, users=[user] if i % 2 == 0 else [], notify=True)
        whole = self.c.ok("notification.list", user, limit=1000)["notifications"]
        self.assertEqual(len(whole), 30)
        got, r = [], self.c.ok("notification.list", user, limit=4)
        while True:
            got.extend(r["notifications"])
            # A new notification at the head between pages changes nothing for the pages.
            self.c.ok("key.users.set", owner, key=k,
                      users=[] if user in self.c.ok("key.get", owner, key=k)["users"] else [user],
                      notify=True)
            if "next_cursor" not in r:
                break
            r = self.c.ok("notification.list", user, limit=4, cursor=r["next_cursor"])
        self.assertEqual(got, whole)

    # -- bounded Redis calls ------------------------------------------------

    def test_member_removal_over_5001_keys_is_batched(self):
        self.skip_on_cluster("counts the commits in one Redis' SLOWLOG (the primary's on sentinel)")
        t = kgtest.make_team(self.c, admins=0, users=2, outsiders=0)
        owner, user, other = t["owner"], t["users"][0], t["users"][1]
        c = self.env.client(timeout=60)
        n = 5001
        for i in range(n):
            c.send(c.request("key.create", owner, team=t["team"], name="k%d" % i,
                             users=[user, other] if i % 2 else [user]))
        kids = []
        for i in range(n):
            r = c.read_json()
            self.assertTrue(r["ok"], r)
            kids.append(r["result"]["key_id"])
        for k in kids:
            c.send(c.request("token.generate", user, key=k))
        for k in kids:
            self.assertTrue(c.read_json()["ok"])
        c.send(c.request("token.generate", other, key=kids[1]))
        self.assertTrue(c.read_json()["ok"])
        self.assertEqual(len(self.env.redis_keys("kg:{t:*}:tok:*")), n + 1)
        self.env.redis("CONFIG", "SET", "slowlog-log-slower-than", "0")
        self.env.redis("CONFIG", "SET", "slowlog-max-len", "200000")
        self.env.redis("SLOWLOG", "RESET")
        try:
            self.c.ok("team.member.remove", owner, team=t["team"], user=user)
            log = self.env.redis("SLOWLOG", "GET", "-1")
        finally:
            self.env.redis("CONFIG", "SET", "slowlog-log-slower-than", "10000")
        # Done: the member is gone, with every token; the other keeps theirs.
        self.assertEqual(len(self.env.redis_keys("kg:{t:*}:tok:*")), 1)
        members = [m["user_id"] for m in self.c.ok("team.get", owner, team=t["team"])["members"]]
        self.assertNotIn(user, members)
        self.assertIn(other, members)
        self.assertEqual(self.env.redis("SISMEMBER", "kg:uteams:%s" % user, t["team"]), 0)
        for k in (kids[0], kids[1], kids[2500], kids[-1]):
            doc = json.loads(self.env.redis("GET", "kg:{t:%s}:key:%s" % (t["team"], k)))
            self.assertNotIn(user, doc["users"])
            self.assertNotIn(user, doc["tokens"])
        raw = self.env.redis("MGET", *["kg:{t:%s}:key:%s" % (t["team"], k) for k in kids[:1000]])
        self.assertFalse(any(user in json.loads(d)["users"] for d in raw))
        # Batched: many commits, each one and each MGET small.
        def argc(args):
            last = args[-1].decode(errors="replace") if isinstance(args[-1], bytes) else str(args[-1])
            if last.startswith("... (") and last.endswith(" more arguments)"):
                return len(args) - 1 + int(last[5:].split()[0])
            return len(args)
        top = [(e[3][0].decode().upper(), argc(e[3])) for e in log]
        commits = [a for name, a in top if name == "EVAL"]
        mgets = [a for name, a in top if name == "MGET"]
        self.assertGreaterEqual(len(commits), n // 1000 + 1, "one commit for every key?")
        # A commit writes a key document, deletes a token, drops the key from
        # the member's key index and publishes per key: 15 args each, and
        # checks the version of the document it read and bumps the versions
        # of what it writes (job.c). Bounded by the batch, not by n.
        self.assertLessEqual(max(commits), 23 * 1000 // 3 + 100)
        self.assertLessEqual(max(mgets), 1001)
        self.assertGreaterEqual(len(mgets), n // 1000 + 1)
        self.assertEqual(len(self.c.ok("audit.list", owner, team=t["team"], limit=1,
                                       only="accepted")["entries"]), 1)
        self.assertEqual(self.c.ok("audit.list", owner, team=t["team"], limit=1)["entries"][0]["cmd"],
                         "team.member.remove")
        # Again: nothing left to do, and still an answer.
        self.assertEqual(self.c.err("team.member.remove", owner, team=t["team"], user=user),
                         "not_found")

    # -- keygate fsck reads ledgers in pages -----------------------------------

    def fsck(self):
        cli = os.environ.get("KEYGATE_CLI") or os.path.join(kgtest.REPO, "build", "daemon", "cli",
                                                            "keygate")
        p = subprocess.run([cli, "--json", "fsck", "--config", self.env.config_path],
                           capture_output=True, text=True, timeout=120)
        return p.returncode, json.loads(p.stdout), p.stderr

    def test_fsck_pages_a_ledger_and_finds_what_spans_pages(self):
        a, team, w, keys = self.wallet(credit=10 ** 9)
        k = self.c.ok("key.create", a, team=team, name="f")["key_id"]
        self.debits(keys, 2500, 0, key_id=k)
        rc, out, err = self.fsck()
        mine = [p for p in out["problems"] if w in p["key"]]
        self.assertEqual(mine, [], err)
        # The same request id charged again 1,500 entries later (another page),
        # and one balance off by 3: entry 1502 from the oldest, the first of
        # the second page read from the newest (2502 entries, 1000 a page), so
        # its pair with entry 1503 spans two pages.
        raw = self.env.redis("LINDEX", keys[1], 2500 - 1 - 17)   # entry 18: request r17
        e = json.loads(raw)
        e["at"] += 1
        self.assertEqual(e["request_id"], "r17")
        nb = self.env.redis("HINCRBY", keys[0], "balance_micros", -1)
        e["balance_micros"] = nb
        self.env.redis("LPUSH", keys[1], json.dumps(e))
        b = json.loads(self.env.redis("LINDEX", keys[1], 2502 - 1502))
        b["balance_micros"] += 3
        self.env.redis("LSET", keys[1], 2502 - 1502, json.dumps(b))
        rc, out, err = self.fsck()
        self.assertEqual(rc, 1, err)
        texts = [p["problem"] for p in out["problems"] if w in p["key"]]
        self.assertTrue(any("request id r17" in t and "charged twice" in t for t in texts), texts)
        self.assertIn("entry 1502: balance_micros %d, but the entries before it give %d"
                      % (b["balance_micros"], b["balance_micros"] - 3), texts)
        self.assertTrue(any(t.startswith("entry 1503: ") for t in texts), texts)
        self.assertTrue(any(t.startswith("entry 19: request id r17 ") for t in texts), texts)
        self.assertEqual(len(texts), 3, texts)


if __name__ == "__main__":
    unittest.main()
