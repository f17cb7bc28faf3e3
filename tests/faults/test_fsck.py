"""keygate fsck: clean on everything the daemon and the gateway module
write (rotations with grace, revocation, unassignment, member removal,
debits and replays), and able to fail: each planted corruption is found
and named, its secret never printed, and the state is clean again once the
corruption is undone. Exit 3 when Redis is down, 2 on a bad config."""
import os
import signal
import subprocess
import sys
import unittest
from contextlib import contextmanager

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safety  # noqa: E402
from safety import kgtest  # noqa: E402


class Fsck(kgtest.EnvCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        c, env = cls.c, cls.env
        cls.t = kgtest.make_team(c, admins=1, users=2)
        t = cls.t
        a, u1, u2 = t["owner"], t["users"][0], t["users"][1]
        cls.world = safety.paid_world(c, env, 10 ** 6)
        w = c.ok("wallet.create", a, team=t["team"], name="main")["wallet_id"]
        c.ok("wallet.credit", a, wallet=w, amount_micros=50000, reference="top-1")
        c.ok("wallet.credit", a, wallet=w, amount_micros=50000, reference="top-1")  # repeat: no credit
        k = c.ok("key.create", a, team=t["team"], name="k", users=[a, u1, u2], services={
            "text-generation": {"policy": "payg", "models": ["small"], "wallet": w},
            "speech-to-text": {"policy": "free"}})["key_id"]
        cls.tokens = {}
        for who in (a, u1, u2):
            cls.tokens[who] = c.ok("token.generate", who, key=k)["token"]
        cls.grace_token = c.ok("token.rotate", a, key=k, user=u1, grace_seconds=3600)["token"]
        c.ok("token.rotate", a, key=k, user=u2)
        k2 = c.ok("key.create", a, team=t["team"], name="k2", users=[a, u1])["key_id"]
        c.ok("token.generate", u1, key=k2)
        c.ok("token.generate", a, key=k2)
        c.ok("key.revoke", a, key=k2)                       # its tokens are kept
        c.ok("key.users.set", a, key=k, users=[a, u1], notify=True)  # u2 unassigned
        c.ok("team.member.remove", a, team=t["team"], user=t["users"][1])
        cls.key, cls.wallet, cls.revoked = k, w, k2
        tf = safety.write_secret(os.path.join(env.tmp, "tok-a"), cls.tokens[a])
        gw = safety.gateway_config(env)
        for rid in ("r1", "r2"):   # r2 twice: the second run replays every id
            for _ in range(2 if rid == "r2" else 1):
                rc, rows, summary = safety.Hammer(gw, tf, 20, rid=rid).wait()
                assert rc == 0, summary
        cls.ledger_len = len(safety.ledger(env, t["team"], w))

    def prefix(self):
        return "kg:{t:%s}:" % self.t["team"]

    @contextmanager
    def corrupt(self, *keys):
        """Keeps the given Redis keys as they are and puts them back after
        the block (whatever it changed), so each case starts clean."""
        env = self.env
        saved = [(k, env.redis("DUMP", k), env.redis("PTTL", k)) for k in keys]
        try:
            yield
        finally:
            for k, payload, ttl in saved:
                if payload is None:
                    env.redis("DEL", k)
                else:
                    env.redis("RESTORE", k, max(ttl, 0), payload, "REPLACE")

    def assert_found(self, *needles, key=None):
        """fsck exits 1 and reports a problem containing every needle (and
        naming `key`, if given)."""
        rc, out, so, se = safety.fsck(self.env)
        self.assertIsNotNone(out, se)
        self.assertEqual(rc, 1, "fsck exit %s (expected 1): %s %s" % (rc, so, se))
        self.assertFalse(out["clean"])
        texts = ["%s: %s" % (p["key"], p["problem"]) for p in out["problems"]]
        for p in out["problems"]:
            if all(n in p["problem"] for n in needles) and (key is None or p["key"] == key):
                return texts
        self.fail("no problem with %r (key %r) in %r" % (needles, key, texts))

    # -- clean -------------------------------------------------------------------

    def test_00_clean(self):
        counts = safety.assert_clean(self, self.env)
        self.assertGreaterEqual(counts["teams"], 5)
        self.assertGreaterEqual(counts["token_records"], 6)
        self.assertGreaterEqual(counts["ledger_entries"], 40)
        self.assertGreaterEqual(counts["wallets"], 2)
        print("fsck counts on the clean world: %s" % counts, file=sys.stderr)

    def test_01_text_output(self):
        p = subprocess.run([safety.cli_path(), "fsck", "--config", self.env.config_path],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("fsck: clean", p.stdout)
        self.assertRegex(p.stdout, r"\d+ teams, \d+ keys, \d+ token records, \d+ wallets")
        # KEYGATE_CONFIG works as --config does
        p = subprocess.run([safety.cli_path(), "fsck"], capture_output=True, text=True, timeout=60,
                           env=dict(os.environ, KEYGATE_CONFIG=self.env.config_path))
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)

    # -- money ------------------------------------------------------------------

    def test_wallet_balance_edited(self):
        wk = self.prefix() + "wallet:" + self.wallet
        with self.corrupt(wk):
            bal = safety.balance(self.env, self.t["team"], self.wallet)
            self.env.redis("HSET", wk, "balance_micros", bal + 1000)
            self.assert_found("credits - debits", key=wk)

    def test_wallet_balance_negative(self):
        wk = self.prefix() + "wallet:" + self.wallet
        lk = self.prefix() + "ledger:" + self.wallet
        with self.corrupt(wk, lk):
            self.env.redis("HSET", wk, "balance_micros", -150)
            self.env.redis("LPUSH", lk, '{"type":"debit","amount_micros":%d,"balance_micros":-150,'
                           '"at":1,"key_id":"%s","user_id":"u","service":"s","model":"m",'
                           '"request_id":null}' % (safety.balance(self.env, self.t["team"],
                                                                  self.wallet) + 0, self.key))
            self.assert_found("below zero", key=wk)

    def test_holds(self):
        """Holds (settle services): held_micros is the sum of the open
        holds, each with an expiry, and never above the balance."""
        wk = self.prefix() + "wallet:" + self.wallet
        hk = self.prefix() + "holds:" + self.wallet
        xk = self.prefix() + "holdexp:" + self.wallet
        hid = "%s r-held" % self.key
        bal = safety.balance(self.env, self.t["team"], self.wallet)
        with self.corrupt(wk, hk, xk):
            # a consistent open hold: clean
            self.env.redis("HSET", hk, hid, "700 u_x text-generation small")
            self.env.redis("ZADD", xk, 1, hid)
            self.env.redis("HSET", wk, "held_micros", 700)
            safety.assert_clean(self, self.env)
            self.env.redis("HSET", wk, "held_micros", 900)
            self.assert_found("open holds sum to 700", key=wk)
            self.env.redis("HSET", wk, "held_micros", 700)
            self.env.redis("ZREM", xk, hid)
            self.assert_found("has no expiry", key=xk)
            self.env.redis("ZADD", xk, 1, hid)
            self.env.redis("HSET", hk, hid, "%d u_x text-generation small" % (bal + 1))
            self.env.redis("HSET", wk, "held_micros", bal + 1)
            self.assert_found("above balance_micros", key=wk)

    def test_ledger_chain_broken(self):
        lk = self.prefix() + "ledger:" + self.wallet
        with self.corrupt(lk):
            import json
            e = json.loads(self.env.redis("LINDEX", lk, -2))
            e["balance_micros"] += 7
            self.env.redis("LSET", lk, -2, json.dumps(e))
            self.assert_found("entry 2", "entries before it give", key=lk)

    def test_request_charged_twice(self):
        lk = self.prefix() + "ledger:" + self.wallet
        wk = self.prefix() + "wallet:" + self.wallet
        with self.corrupt(lk, wk):
            import json
            newest = json.loads(self.env.redis("LINDEX", lk, 0))
            self.assertEqual(newest["type"], "debit")
            self.assertIsNotNone(newest["request_id"])
            newest["balance_micros"] -= newest["amount_micros"]
            newest["at"] += 1
            self.env.redis("LPUSH", lk, json.dumps(newest))
            self.env.redis("HINCRBY", wk, "balance_micros", -newest["amount_micros"])
            self.assert_found("charged twice", newest["request_id"], key=lk)

    def test_ledger_without_wallet(self):
        lk = "kg:{t:%s}:ledger:%s" % (self.world["team"], "w_" + self.world["team"][2:] + "zzzzzzzz")
        with self.corrupt(lk):
            self.env.redis("LPUSH", lk, '{"type":"credit","amount_micros":5,"balance_micros":5,"at":1}')
            self.assert_found("a ledger without a wallet", key=lk)

    # -- tokens -----------------------------------------------------------------

    def test_dangling_token_record(self):
        h = "ab" * 32
        tk = "kg:{t:%s}:tok:%s" % (self.t["team"], h)
        with self.corrupt(tk):
            self.env.redis("HSET", tk, "key_id", self.key, "team_id", self.t["team"],
                           "user_id", self.t["owner"], "token_id", "tk_planted", "expires_ms", "0")
            self.assert_found("dangling", key=tk)
        with self.corrupt(tk):
            gone = "k_" + self.t["team"][2:] + "nokeyxxx"
            self.env.redis("HSET", tk, "key_id", gone, "team_id", self.t["team"],
                           "user_id", self.t["owner"], "token_id", "tk_planted", "expires_ms", "0")
            self.assert_found("does not exist", key=tk)
        with self.corrupt(tk):
            self.env.redis("HSET", tk, "key_id", self.key, "team_id", self.world["team"],
                           "user_id", self.t["owner"], "token_id", "tk_planted", "expires_ms", "0")
            self.assert_found("not a key of its team_id", key=tk)
        # The layout before tokens named their team: reported, never read.
        old = "kg:tok:" + h
        with self.corrupt(old):
            self.env.redis("HSET", old, "key_id", self.key, "team_id", self.t["team"],
                           "user_id", self.t["owner"], "token_id", "tk_planted", "expires_ms", "0")
            self.assert_found("outside its team's slot", key=old)

    def test_unassigned_users_token_left(self):
        """The record of a token whose user was unassigned, put back."""
        u1 = self.t["users"][0]
        tk = kgtest.token_key(self.env.pepper_bytes, self.tokens[self.t["owner"]])
        kk = self.prefix() + "key:" + self.key
        with self.corrupt(kk):
            import json
            doc = json.loads(self.env.redis("GET", kk))
            doc["users"] = [u for u in doc["users"] if u != self.t["owner"]]
            self.env.redis("SET", kk, json.dumps(doc))
            self.assert_found("is not assigned", key=tk)
            self.assertIn(u1, doc["users"])

    def test_token_record_missing(self):
        tk = kgtest.token_key(self.env.pepper_bytes, self.tokens[self.t["owner"]])
        with self.corrupt(tk):
            self.env.redis("DEL", tk)
            self.assert_found("record", "is missing", key=self.prefix() + "key:" + self.key)

    def test_grace_token_without_expiry(self):
        tk = kgtest.token_key(self.env.pepper_bytes, self.tokens[self.t["users"][0]])
        self.assertGreater(self.env.redis("PTTL", tk), 0)
        with self.corrupt(tk):
            self.env.redis("PERSIST", tk)
            self.assert_found("never expires", key=tk)

    # -- teams and keys -------------------------------------------------------------

    def test_two_owners(self):
        tk, mk = self.prefix() + "team", self.prefix() + "members"
        with self.corrupt(mk):
            self.env.redis("HSET", mk, self.t["admins"][0], "owner")
            self.assert_found("2 owners", key=tk)

    def test_no_owner(self):
        tk, mk = self.prefix() + "team", self.prefix() + "members"
        with self.corrupt(mk):
            self.env.redis("HSET", mk, self.t["owner"], "admin")
            self.assert_found("0 owners", key=tk)

    def test_members_in_the_document_and_the_hash(self):
        tk, mk = self.prefix() + "team", self.prefix() + "members"
        with self.corrupt(tk):
            import json
            doc = json.loads(self.env.redis("GET", tk))
            doc["members"] = {self.t["owner"]: "owner"}
            self.env.redis("SET", tk, json.dumps(doc))
            self.assert_found("members both in the document and in " + mk, key=tk)

    def test_second_free_key(self):
        kk = self.prefix() + "key:" + self.revoked
        with self.corrupt(kk):
            import json
            doc = json.loads(self.env.redis("GET", kk))
            doc["kind"] = "free"
            self.env.redis("SET", kk, json.dumps(doc))
            self.assert_found("2 keys of kind free", key=self.prefix() + "team")

    def test_free_key_missing(self):
        fk = self.prefix() + "key:" + self.t["free_key"]
        with self.corrupt(fk):
            self.env.redis("DEL", fk)
            self.assert_found("names no key")
            self.assert_found("lists key", "does not exist", key=self.prefix() + "keys")

    def test_payg_wallet_missing(self):
        kk = self.prefix() + "key:" + self.key
        with self.corrupt(kk):
            import json
            doc = json.loads(self.env.redis("GET", kk))
            gone = "w_" + self.t["team"][2:] + "nowallet"
            doc["services"]["text-generation"]["wallet"] = gone
            self.env.redis("SET", kk, json.dumps(doc))
            self.assert_found("payg wallet", gone, "does not exist", key=kk)
        with self.corrupt(kk):
            doc = json.loads(self.env.redis("GET", kk))
            doc["services"]["text-generation"]["wallet"] = self.world["wallet"]
            self.env.redis("SET", kk, json.dumps(doc))
            self.assert_found("is not a wallet of team", key=kk)

    def test_half_made_key(self):
        """A key document without its place in the keys zset."""
        kk = self.prefix() + "key:" + "k_" + self.t["team"][2:] + "halfmade"
        with self.corrupt(kk):
            import json
            doc = json.loads(self.env.redis("GET", self.prefix() + "key:" + self.key))
            doc["key_id"] = kk.rsplit(":", 1)[1]
            doc["tokens"] = {}
            self.env.redis("SET", kk, json.dumps(doc))
            self.assert_found("not listed", key=kk)

    def test_user_assigned_but_not_member(self):
        kk = self.prefix() + "key:" + self.key
        with self.corrupt(kk):
            import json
            doc = json.loads(self.env.redis("GET", kk))
            doc["users"].append(self.t["outsiders"][0])
            self.env.redis("SET", kk, json.dumps(doc))
            self.assert_found("not a member", key=kk)

    def test_orphan_team_keys(self):
        wk = "kg:{t:t_nosuchteam0}:wallet:w_nosuchteam0aaaaaaaa"
        with self.corrupt(wk):
            self.env.redis("HSET", wk, "wallet_id", "w_nosuchteam0aaaaaaaa", "team_id",
                           "t_nosuchteam0", "name", "x", "balance_micros", 0, "created_at", 1)
            self.assert_found("no team document", key=wk)

    def test_email_record(self):
        ek = "kg:email:nobody@example.test"
        with self.corrupt(ek):
            self.env.redis("SET", ek, "u_doesnotexist00")
            self.assert_found("does not exist", key=ek)

    # -- secrets ----------------------------------------------------------------

    def test_plain_token_planted(self):
        tok = self.tokens[self.t["owner"]]
        cases = [("kg:planted:string", ("SET", "kg:planted:string", "log: Bearer " + tok)),
                 ("kg:planted:hash", ("HSET", "kg:planted:hash", "f", tok)),
                 ("kg:planted:list", ("RPUSH", "kg:planted:list", "a", '{"t":"%s"}' % tok)),
                 ("other:app", ("SADD", "other:app", tok))]
        for key, cmd in cases:
            with self.subTest(key=key), self.corrupt(key):
                self.env.redis(*cmd)
                texts = self.assert_found("plain token", tok[:7], key=key)
                rc, out, so, se = safety.fsck(self.env)
                self.assertNotIn(tok, so + se)
                self.assertNotIn(tok[3:], so + se)
                p = subprocess.run([safety.cli_path(), "fsck", "--config", self.env.config_path],
                                   capture_output=True, text=True, timeout=60)
                self.assertEqual(p.returncode, 1)
                self.assertIn("problem: %s: holds a plain token" % key, p.stdout)
                self.assertNotIn(tok, p.stdout + p.stderr)
                self.assertTrue(texts)
        # in a key name: reported under a redacted name
        name = "kg:cache:" + tok
        with self.corrupt(name):
            self.env.redis("SET", name, "1")
            rc, out, so, se = safety.fsck(self.env)
            self.assertEqual(rc, 1)
            self.assertNotIn(tok, so + se)
            self.assertTrue(any("plain token" in p["problem"] and "<token kg_" in p["key"]
                                for p in out["problems"]), out["problems"])

    def test_pepper_planted(self):
        env = self.env
        for form in (env.pepper_hex, env.pepper_hex.upper(), env.pepper_bytes,
                     b"prefix" + env.pepper_bytes + b"suffix"):
            with self.subTest(form=form[:4]), self.corrupt("kg:planted:pepper"):
                env.redis("HSET", "kg:planted:pepper", "v", form)
                self.assert_found("pepper", key="kg:planted:pepper")
                rc, out, so, se = safety.fsck(env)
                self.assertNotIn(env.pepper_hex, (so + se).lower())

    def test_zy_clean_after_all_cases(self):
        """Runs last (name order): every corruption was undone."""
        safety.assert_clean(self, self.env, "after the corruption cases")

    # -- exit codes -------------------------------------------------------------

    def test_zz_unreachable_and_bad_config(self):
        bad = os.path.join(self.env.tmp, "bad.conf")
        with open(bad, "w") as f:
            f.write("no_such_key 1\n")
        rc, out, so, se = safety.fsck(self.env, config=bad)
        self.assertEqual(rc, 2, se)
        self.assertIn("bad.conf:1:", se)
        self.env.stop_redis(save=True)
        try:
            rc, out, so, se = safety.fsck(self.env)
            self.assertEqual(rc, 3, so + se)
            self.assertIn("unreachable", se)
        finally:
            self.env.start_redis()


class FsckOnEmptyRedis(unittest.TestCase):
    def test_empty_and_fresh(self):
        env = kgtest.Env(start_daemon=False)
        try:
            rc, out, so, se = safety.fsck(env)
            self.assertEqual((rc, out["problems"]), (0, []), se)
            env.start_daemon()
            kgtest.signup(env.client())
            safety.assert_clean(self, env, "one sign-up")
        finally:
            env.close()
        kgtest.check_clean_exit(env)


if __name__ == "__main__":
    unittest.main()
