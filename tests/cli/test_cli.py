#!/usr/bin/env python3
"""The keygate CLI against a live keygated and a real redis-server.

Runs the built binary (env KEYGATE_CLI) as a user would and checks what it
prints, what it writes and how it exits: sign-up, keys with services,
tokens written to a 0600 file with only the hint on the terminal, price
estimates, wallet credits and the ledger, --json, and the exit codes
(1 refused, 2 bad usage, 3 daemon unreachable).
"""

import json
import os
import re
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import unittest
import zlib

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import kgtest  # noqa: E402

REPO = kgtest.REPO
CLI = os.environ.get("KEYGATE_CLI") or os.path.join(REPO, "build", "daemon", "cli", "keygate")

B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
TOKEN_RE = re.compile(r"kg_[0-9A-Za-z]{61}")


def b62_fixed(n, width):
    out = []
    for _ in range(width):
        n, r = divmod(n, 62)
        out.append(B62[r])
    return "".join(reversed(out))


def wellformed(tok):
    """SPEC §3: kg_ + 43 base62 + the team's 12 + 6 base62 of the CRC32 of
    what precedes."""
    if not re.fullmatch(r"kg_[0-9A-Za-z]{43}[0-9A-Za-z]{12}[0-9A-Za-z]{6}", tok):
        return False
    return b62_fixed(zlib.crc32(tok[:-6].encode()) & 0xFFFFFFFF, 6) == tok[-6:]


class CliCase(kgtest.EnvCase):

    def kg(self, *args, actor=None, socket_path=None, env=None, timeout=30):
        """Runs the CLI; returns (exit code, stdout, stderr)."""
        e = dict(os.environ)
        e.pop("KEYGATE_ACTOR", None)
        e.pop("KEYGATE_CONFIG", None)
        e["KEYGATE_SOCKET"] = socket_path or self.env.socket_path
        if actor is not None:
            e["KEYGATE_ACTOR"] = actor
        if env:
            e.update(env)
        argv = [os.fsencode(CLI)] + [a if isinstance(a, bytes) else os.fsencode(str(a)) for a in args]
        p = subprocess.run(argv, env=e, capture_output=True, timeout=timeout)
        return (p.returncode, p.stdout.decode("utf-8", "replace"),
                p.stderr.decode("utf-8", "replace"))

    def ok(self, *args, **kw):
        rc, out, err = self.kg(*args, **kw)
        self.assertEqual(rc, 0, "keygate %s failed: %s%s" % (" ".join(map(str, args)), out, err))
        return out

    def js(self, *args, **kw):
        """Runs with --json; the output must be exactly one JSON line."""
        out = self.ok("--json", *args, **kw)
        self.assertTrue(out.endswith("\n") and out.count("\n") == 1, repr(out))
        return json.loads(out)

    def signup(self):
        s = self.js("signup", "--email", kgtest.unique_email("cli"), "--name", "Cli Owner",
                    "--team-name", "Cli Team")
        return s

    def paid_key(self, owner, team, **extra):
        args = dict(team=team, name="k%d" % os.getpid())
        args.update(extra)
        return self.c.ok("key.create", owner, **args)


class TestSignupAndTeams(CliCase):

    def test_signup_human_output_names_the_new_ids(self):
        email = kgtest.unique_email("human")
        out = self.ok("signup", "--email", email, "--name", "Hu Man", "--team-name", "Humans")
        ids = dict(line.split(None, 1) for line in out.splitlines() if line.startswith(("user_id", "team_id", "free_key_id")))
        self.assertTrue(ids["user_id"].startswith("u_"), out)
        team = self.c.ok("team.get", ids["user_id"].strip(), team=ids["team_id"].strip())
        self.assertEqual(team["free_key_id"], ids["free_key_id"].strip())
        self.assertIn("export KEYGATE_ACTOR=" + ids["user_id"].strip(), out)

    def test_signup_json_and_duplicate_email_is_refused(self):
        email = kgtest.unique_email("dup")
        s = self.js("signup", "--email", email, "--name", "Dup")
        self.assertEqual(set(s), {"user_id", "team_id", "free_key_id"})
        rc, out, err = self.kg("signup", "--email", email, "--name", "Dup")
        self.assertEqual(rc, 1)
        self.assertEqual(out, "")
        self.assertTrue(err.startswith("error: conflict: "), err)

    def test_team_members_roles_and_transfer(self):
        s = self.signup()
        other = self.signup()
        owner, team = s["user_id"], s["team_id"]
        out = self.ok("team", "member", "add", team, "--user", other["user_id"], "--role", "user",
                      actor=owner)
        self.assertRegex(out, r"(?m)^role\s+user$")
        out = self.ok("team", "member", "set-role", team, other["user_id"], "admin", actor=owner)
        self.assertRegex(out, r"(?m)^role\s+admin$")
        out = self.ok("team", "get", team, actor=owner)
        self.assertRegex(out, r"(?m)^\s+%s\s+admin\s" % other["user_id"])
        self.assertRegex(out, r"(?m)^\s+%s\s+owner\s" % owner)
        t = self.js("team", "transfer", team, other["user_id"], actor=owner)
        roles = {m["user_id"]: m["role"] for m in t["members"]}
        self.assertEqual(roles, {owner: "admin", other["user_id"]: "owner"})
        self.ok("team", "member", "remove", team, owner, actor=other["user_id"])
        self.assertEqual(self.c.err("team.get", owner, team=team), "not_found")

    def test_member_add_by_email(self):
        s = self.signup()
        email = kgtest.unique_email("byemail")
        self.js("signup", "--email", email, "--name", "By Email")
        m = self.js("team", "member", "add", s["team_id"], "--email", email, "--role", "admin",
                    actor=s["user_id"])
        self.assertEqual((m["email"], m["role"]), (email, "admin"))


class TestKeysAndServices(CliCase):

    def setUp(self):
        s = self.signup()
        self.owner, self.team, self.free_key = s["user_id"], s["team_id"], s["free_key_id"]
        self.wallet = self.c.ok("wallet.create", self.owner, team=self.team, name="w")["wallet_id"]

    def test_key_create_with_users_and_services(self):
        out = self.ok("key", "create", self.team, "--name", "prod", "--description", "the prod key",
                      "--user", self.owner,
                      "--service", "speech-to-text=free",
                      "--service", "text-generation=payg:small,large@" + self.wallet,
                      actor=self.owner)
        key_id = re.search(r"(?m)^key_id\s+(k_\w+)$", out).group(1)
        key = self.c.ok("key.get", self.owner, key=key_id)
        self.assertEqual(key["name"], "prod")
        self.assertEqual(key["description"], "the prod key")
        self.assertEqual(key["users"], [self.owner])
        self.assertEqual(key["services"], {
            "speech-to-text": {"policy": "free"},
            "text-generation": {"policy": "payg", "models": ["small", "large"],
                                "wallet": self.wallet}})
        # The human view shows kind, status, users and each policy.
        self.assertRegex(out, r"(?m)^kind\s+paid$")
        self.assertRegex(out, r"(?m)^status\s+active$")
        self.assertRegex(out, r"(?m)^\s+%s\s+\(no token\)" % self.owner)
        self.assertRegex(out, r"(?m)^\s+text-generation\s+payg\s+models: small,large\s+wallet: %s$"
                         % self.wallet)

    def test_key_services_replaces_the_set_and_free_key_is_immutable(self):
        key = self.paid_key(self.owner, self.team)["key_id"]
        k = self.js("key", "services", key, "text-generation=payg:small@" + self.wallet,
                    actor=self.owner)
        self.assertEqual(k["services"], {"text-generation": {"policy": "payg", "models": ["small"],
                                                             "wallet": self.wallet}})
        k = self.js("key", "services", key, "--none", actor=self.owner)
        self.assertEqual(k["services"], {})
        rc, out, err = self.kg("key", "services", self.free_key, "speech-to-text=free",
                               actor=self.owner)
        self.assertEqual(rc, 1)
        self.assertIn("error: free_key_immutable: ", err)

    def test_bad_service_specs_are_usage_errors_and_send_nothing(self):
        key = self.paid_key(self.owner, self.team)["key_id"]
        before = self.c.ok("key.get", self.owner, key=key)
        for spec in ("text-generation", "=free", "text-generation=payg:small",
                     "text-generation=payg:@" + self.wallet, "text-generation=payg:a,,b@w",
                     "text-generation=payg:small,@w", "text-generation=gratis"):
            rc, out, err = self.kg("key", "services", key, spec, actor=self.owner)
            self.assertEqual(rc, 2, spec)
            self.assertIn("keygate [options] key services KEY", err)
        rc, _, err = self.kg("key", "services", key, actor=self.owner)
        self.assertEqual(rc, 2)
        self.assertEqual(self.c.ok("key.get", self.owner, key=key), before)

    def test_key_list_update_users_notify_and_revoke(self):
        other = self.signup()["user_id"]
        self.c.ok("team.member.add", self.owner, team=self.team, user=other, role="user")
        key = self.paid_key(self.owner, self.team)["key_id"]

        k = self.js("key", "update", key, "--name", "renamed", "--description", "d2", actor=self.owner)
        self.assertEqual((k["name"], k["description"]), ("renamed", "d2"))
        k = self.js("key", "users", key, self.owner, other, "--notify", actor=self.owner)
        self.assertEqual(sorted(k["users"]), sorted([self.owner, other]))
        self.assertIn(other, k["notified"])
        out = self.ok("notifications", actor=other)
        self.assertRegex(out, r"key\.assigned\s+%s\s+renamed" % key)

        out = self.ok("key", "list", self.team, actor=self.owner)
        self.assertRegex(out, r"(?m)^%s\s+renamed\s+paid\s+active\s+2\s" % key)
        self.assertRegex(out, r"(?m)^%s\s+.*free\s+active" % self.free_key)

        out = self.ok("key", "revoke", key, actor=self.owner)
        self.assertRegex(out, r"(?m)^status\s+revoked$")
        rc, _, err = self.kg("key", "revoke", self.free_key, actor=self.owner)
        self.assertEqual(rc, 1)
        self.assertIn("error: free_key_immutable: ", err)

    def test_key_update_sets_and_clears_expiry_budgets_and_rate_limits(self):
        key = self.paid_key(self.owner, self.team)["key_id"]
        k = self.js("key", "update", key, "--expires-at", "2099-03-04T05:06:07Z",
                    "--budget-day", "2500000", "--budget-month", "40000000",
                    "--rate-limit", "text-generation=5/100", "--rate-limit", "speech-to-text=/30",
                    actor=self.owner)
        stored = self.c.ok("key.get", self.owner, key=key)
        want_ms = 4076283967000  # 2099-03-04T05:06:07Z
        self.assertEqual(stored["expires_at"], want_ms)
        self.assertEqual((stored["budget_day_micros"], stored["budget_month_micros"]), (2500000, 40000000))
        self.assertEqual(stored["rate_limits"], {"text-generation": {"per_second": 5, "per_minute": 100},
                                                 "speech-to-text": {"per_minute": 30}})
        self.assertEqual(k["rate_limits"], stored["rate_limits"])

        out = self.ok("key", "get", key, actor=self.owner)
        self.assertRegex(out, r"(?m)^expires\s+2099-03-04 05:06:07Z$")
        self.assertRegex(out, r"(?m)^budget/day\s+2\.500000 \S+ \(2500000 micros\)$")
        self.assertRegex(out, r"(?m)^budget/month\s+40\.000000 \S+ \(40000000 micros\)$")
        self.assertRegex(out, r"(?m)^\s+text-generation\s+5\s+100$")
        self.assertRegex(out, r"(?m)^\s+speech-to-text\s+-\s+30$")

        # An offset is honoured; a date alone is midnight UTC.
        self.ok("key", "update", key, "--expires-at", "2099-03-04T07:06:07+02:00", actor=self.owner)
        self.assertEqual(self.c.ok("key.get", self.owner, key=key)["expires_at"], want_ms)
        self.ok("key", "update", key, "--expires-at", "2099-03-04", actor=self.owner)
        self.assertEqual(self.c.ok("key.get", self.owner, key=key)["expires_at"], 4076265600000)

        # "none" removes each; a rate limit set replaces the whole set.
        self.ok("key", "update", key, "--rate-limit", "speech-to-text=2/", actor=self.owner)
        self.assertEqual(self.c.ok("key.get", self.owner, key=key)["rate_limits"],
                         {"speech-to-text": {"per_second": 2}})
        self.ok("key", "update", key, "--expires-at", "none", "--budget-day", "none",
                "--budget-month", "none", "--rate-limit", "none", actor=self.owner)
        stored = self.c.ok("key.get", self.owner, key=key)
        for f in ("expires_at", "budget_day_micros", "budget_month_micros", "rate_limits"):
            self.assertNotIn(f, stored)
        out = self.ok("key", "get", key, actor=self.owner)
        self.assertRegex(out, r"(?m)^expires\s+never$")
        self.assertRegex(out, r"(?m)^rate limits\s+none$")

    def test_key_update_limit_usage_errors_send_nothing(self):
        key = self.paid_key(self.owner, self.team)["key_id"]
        before = self.c.ok("key.get", self.owner, key=key)
        for bad in (["--expires-at", "2099-03-04T05:06"], ["--expires-at", "2099-02-30"],
                    ["--expires-at", "tomorrow"], ["--expires-at", "2099-03-04T25:00Z"],
                    ["--budget-day", "-1"], ["--budget-month", "1.5"],
                    ["--rate-limit", "text-generation"], ["--rate-limit", "text-generation=5"],
                    ["--rate-limit", "text-generation=/"], ["--rate-limit", "=1/2"],
                    ["--rate-limit", "text-generation=x/2"],
                    ["--rate-limit", "none", "--rate-limit", "text-generation=1/1"],
                    ["--rate-limit", "text-generation=1/1", "--rate-limit", "text-generation=2/2"]):
            rc, out, err = self.kg("key", "update", key, *bad, actor=self.owner)
            self.assertEqual(rc, 2, (bad, err))
            self.assertIn("keygate [options] key update KEY", err)
        # The daemon's own rules: the past, an unknown service, the free key.
        for bad in (["--expires-at", "2001-01-01T00:00:00Z"], ["--rate-limit", "no-such=1/1"],
                    ["--rate-limit", "text-generation=1001/"]):
            rc, _, err = self.kg("key", "update", key, *bad, actor=self.owner)
            self.assertEqual(rc, 1, (bad, err))
            self.assertIn("error: bad_request: ", err)
        rc, _, err = self.kg("key", "update", self.free_key, "--expires-at", "2099-01-01", actor=self.owner)
        self.assertEqual(rc, 1, err)
        self.assertEqual(self.c.ok("key.get", self.owner, key=key), before)

    def test_a_user_role_is_refused_with_exit_1(self):
        other = self.signup()["user_id"]
        self.c.ok("team.member.add", self.owner, team=self.team, user=other, role="user")
        rc, out, err = self.kg("key", "create", self.team, "--name", "nope", actor=other)
        self.assertEqual((rc, out), (1, ""))
        self.assertTrue(err.startswith("error: forbidden: "), err)
        rc, out, err = self.kg("key", "list", self.team, actor=self.signup()["user_id"])
        self.assertEqual(rc, 1)
        self.assertTrue(err.startswith("error: not_found: "), err)


class TestTokens(CliCase):

    def setUp(self):
        s = self.signup()
        self.owner, self.team = s["user_id"], s["team_id"]
        self.key = self.paid_key(self.owner, self.team, users=[self.owner])["key_id"]
        self.dir = tempfile.mkdtemp(prefix="kgcli", dir=self.env.tmp)

    def token_is_live(self, tok):
        return self.env.redis("EXISTS", kgtest.token_key(self.env.pepper_bytes, tok)) == 1

    def test_generate_out_writes_0600_file_and_prints_only_the_hint(self):
        path = os.path.join(self.dir, "token")
        old = os.umask(0)                      # the mode must not depend on the umask
        try:
            rc, out, err = self.kg("token", "generate", self.key, "--out", path, actor=self.owner)
        finally:
            os.umask(old)
        self.assertEqual(rc, 0, err)
        st = os.lstat(path)
        self.assertTrue(stat.S_ISREG(st.st_mode))
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o600)
        with open(path) as f:
            content = f.read()
        self.assertTrue(content.endswith("\n") and content.count("\n") == 1, repr(content))
        tok = content.strip()
        self.assertTrue(wellformed(tok), tok)
        self.assertTrue(self.token_is_live(tok))
        # Only the hint reaches the terminal.
        self.assertNotIn(tok, out + err)
        self.assertIsNone(TOKEN_RE.search(out + err))
        hint = self.c.ok("key.get", self.owner, key=self.key)["tokens"][self.owner]["hint"]
        self.assertIn("token %s written to %s (mode 0600)" % (hint, path), out)
        self.assertEqual(hint, "kg_" + tok[3:7] + "\u2026" + tok[-4:])

    def test_generate_out_json_has_no_secret(self):
        path = os.path.join(self.dir, "token.json")
        r = self.js("token", "generate", self.key, "--out", path, actor=self.owner)
        self.assertNotIn("token", r)
        self.assertEqual(r["out"], path)
        with open(path) as f:
            self.assertTrue(r["hint"].endswith(f.read().strip()[-4:]))

    def test_generate_without_out_prints_the_token_once_with_a_warning(self):
        rc, out, err = self.kg("token", "generate", self.key, actor=self.owner)
        self.assertEqual(rc, 0, err)
        self.assertEqual(out.count("\n"), 1)
        tok = out.strip()
        self.assertTrue(wellformed(tok), out)
        self.assertTrue(self.token_is_live(tok))
        self.assertIn("warning: this token is shown once", err)
        self.assertNotIn(tok, err)
        # A second generate is a conflict: rotate instead.
        rc, out, err = self.kg("token", "generate", self.key, actor=self.owner)
        self.assertEqual((rc, out), (1, ""))
        self.assertTrue(err.startswith("error: conflict: "), err)

    def test_out_refuses_a_symlink_and_leaves_its_target_alone(self):
        target = os.path.join(self.dir, "target")
        link = os.path.join(self.dir, "link")
        with open(target, "w") as f:
            f.write("precious\n")
        os.symlink(target, link)
        dangling = os.path.join(self.dir, "dangling")
        os.symlink(os.path.join(self.dir, "nowhere"), dangling)
        for p in (link, dangling):
            rc, out, err = self.kg("token", "generate", self.key, "--out", p, actor=self.owner)
            self.assertEqual(rc, 1, p)
            self.assertIn("symbolic link", err)
        with open(target) as f:
            self.assertEqual(f.read(), "precious\n")
        self.assertFalse(os.path.exists(os.path.join(self.dir, "nowhere")))
        # Nothing was issued: the refusal came before the daemon was asked.
        self.assertNotIn(self.owner, self.c.ok("key.get", self.owner, key=self.key)["tokens"])

    def test_out_overwrites_an_own_file_and_tightens_its_mode(self):
        path = os.path.join(self.dir, "existing")
        with open(path, "w") as f:
            f.write("old content that is longer than a token, " * 4 + "\n")
        os.chmod(path, 0o644)
        self.ok("token", "generate", self.key, "--out", path, actor=self.owner)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with open(path) as f:
            tok = f.read()
        self.assertTrue(wellformed(tok.rstrip("\n")) and tok.count("\n") == 1, tok)

    def test_refused_generate_removes_the_file_it_created(self):
        self.ok("token", "generate", self.key, "--out", os.path.join(self.dir, "first"),
                actor=self.owner)
        path = os.path.join(self.dir, "second")
        rc, _, err = self.kg("token", "generate", self.key, "--out", path, actor=self.owner)
        self.assertEqual(rc, 1)
        self.assertIn("error: conflict: ", err)
        self.assertFalse(os.path.exists(path))

    def test_rotate_with_grace_and_out(self):
        first = os.path.join(self.dir, "t1")
        self.ok("token", "generate", self.key, "--out", first, actor=self.owner)
        with open(first) as f:
            old = f.read().strip()
        second = os.path.join(self.dir, "t2")
        out = self.ok("token", "rotate", self.key, "--grace", "60", "--out", second, actor=self.owner)
        with open(second) as f:
            new = f.read().strip()
        self.assertTrue(wellformed(new) and new != old)
        self.assertNotIn(new, out)
        self.assertRegex(out, r"(?m)^old_token\s+works until \d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ")
        self.assertTrue(self.token_is_live(old) and self.token_is_live(new))
        out = self.ok("token", "rotate", self.key, "--out", first, actor=self.owner)
        self.assertRegex(out, r"(?m)^old_token\s+stopped working now$")
        self.assertFalse(self.token_is_live(new))

    def test_key_get_shows_token_hints_never_tokens(self):
        path = os.path.join(self.dir, "t")
        self.ok("token", "generate", self.key, "--out", path, actor=self.owner)
        with open(path) as f:
            tok = f.read().strip()
        out = self.ok("key", "get", self.key, actor=self.owner)
        self.assertIn("kg_%s\u2026%s" % (tok[3:7], tok[-4:]), out)
        self.assertNotIn(tok, out)


class TestMoney(CliCase):

    def setUp(self):
        s = self.signup()
        self.owner, self.team = s["user_id"], s["team_id"]

    def test_price_estimate_human_and_json_agree_with_the_daemon(self):
        want = self.c.ok("price.estimate", service="text-generation", model="small",
                         params={"input_tokens": 1000, "output_tokens": 2500})
        self.assertEqual(want["cost_micros"], 1650)
        out = self.ok("price", "estimate", "text-generation", "small",
                      "input_tokens=1000", "output_tokens=2500")
        self.assertRegex(out, r"(?m)^cost\s+0\.001650 USD \(1650 micros\)$")
        self.assertRegex(out, r"(?m)^\s+input_tokens\s+1000\s+0\.000150 USD \(150 micros\)$")
        self.assertRegex(out, r"(?m)^\s+output_tokens\s+2500\s+0\.001500 USD \(1500 micros\)$")
        got = self.js("price", "estimate", "text-generation", "small",
                      "input_tokens=1000", "output_tokens=2500")
        self.assertEqual(got, want)

    def test_price_estimate_errors(self):
        rc, _, err = self.kg("price", "estimate", "text-generation", "small", "bogus_param=1")
        self.assertEqual(rc, 1)
        self.assertTrue(err.startswith("error: bad_request: "), err)
        for bad in ("input_tokens", "input_tokens=1.5", "input_tokens=", "=3",
                    "input_tokens=99999999999999999999"):
            rc, _, err = self.kg("price", "estimate", "text-generation", "small", bad)
            self.assertEqual(rc, 2, bad)
        rc, _, _ = self.kg("price", "estimate", "text-generation")
        self.assertEqual(rc, 2)

    def test_service_list(self):
        out = self.ok("service", "list")
        self.assertRegex(out, r"(?m)^currency\s+USD$")
        self.assertIn("speech-to-text  \"Speech to text\"  (free tier, 1000 requests/day per team)", out)
        self.assertRegex(out, r"(?m)^\s+small\s+0 micros \+ 150 micros per 1000 input_tokens")
        self.assertEqual(self.js("service", "list"), self.c.ok("service.list"))

    def test_wallet_create_credit_idempotent_and_ledger(self):
        w = self.js("wallet", "create", self.team, "ops", actor=self.owner)
        wid = w["wallet_id"]
        self.assertEqual(w["balance_micros"], 0)
        out = self.ok("wallet", "credit", wid, "12500000", "--reference", "topup-1", actor=self.owner)
        self.assertRegex(out, r"(?m)^balance\s+12\.500000 USD \(12500000 micros\)$")
        self.assertRegex(out, r"(?m)^credited\s+yes$")
        out = self.ok("wallet", "credit", wid, "12500000", "--reference", "topup-1", actor=self.owner)
        self.assertRegex(out, r"(?m)^balance\s+12\.500000 USD \(12500000 micros\)$")
        self.assertRegex(out, r"(?m)^credited\s+no\b")
        r = self.js("wallet", "credit", wid, "1", "--reference", "topup-2", actor=self.owner)
        self.assertEqual((r["balance_micros"], r["credited"]), (12500001, True))

        out = self.ok("wallet", "get", wid, actor=self.owner)
        self.assertRegex(out, r"(?m)^balance\s+12\.500001 USD \(12500001 micros\)$")
        out = self.ok("wallet", "list", self.team, actor=self.owner)
        self.assertRegex(out, r"(?m)^%s\s+ops\s+12\.500001 USD \(12500001 micros\)" % wid)

        out = self.ok("wallet", "ledger", wid, actor=self.owner)
        lines = out.splitlines()
        self.assertTrue(lines[0].startswith("AT"), out)
        self.assertEqual(len(lines), 3, out)        # header + two credits, newest first
        self.assertRegex(lines[1], r"credit\s+\+0\.000001 USD \(1 micros\)\s+12\.500001 USD .*reference=topup-2 by %s" % self.owner)
        self.assertRegex(lines[2], r"credit\s+\+12\.500000 USD \(12500000 micros\)\s+12\.500000 USD .*reference=topup-1")
        led = self.js("wallet", "ledger", wid, "--limit", "1", actor=self.owner)
        self.assertEqual([e["reference"] for e in led["entries"]], ["topup-2"])

    def test_ledger_shows_debits_in_the_shared_entry_format(self):
        # A debit as libkeygate writes it (docs/redis-schema.md), put in place
        # directly: the CLI's job is to show it.
        wid = self.c.ok("wallet.create", self.owner, team=self.team, name="d")["wallet_id"]
        self.c.ok("wallet.credit", self.owner, wallet=wid, amount_micros=5000, reference="r1")
        debit = {"type": "debit", "amount_micros": 1650, "balance_micros": 3350,
                 "at": kgtest.now_ms(), "key_id": "k_x", "user_id": "u_y",
                 "service": "text-generation", "model": "small", "request_id": "req-7"}
        self.env.redis("LPUSH", "kg:{t:%s}:ledger:%s" % (self.team, wid), json.dumps(debit))
        out = self.ok("wallet", "ledger", wid, actor=self.owner)
        line = out.splitlines()[1]
        self.assertRegex(line, r"debit\s+-0\.001650 USD \(1650 micros\)\s+0\.003350 USD \(3350 micros\)"
                               r"\s+key=k_x user=u_y text-generation/small request=req-7$")

    def test_ledger_pages_cursor_all_and_filters(self):
        wid = self.c.ok("wallet.create", self.owner, team=self.team, name="p")["wallet_id"]
        for i in range(5):
            self.c.ok("wallet.credit", self.owner, wallet=wid, amount_micros=1 + i, reference="p%d" % i)
        debit = {"type": "debit", "amount_micros": 1, "balance_micros": 14, "at": kgtest.now_ms(),
                 "key_id": "k_f", "user_id": "u_y", "service": "speech-to-text", "model": "fast",
                 "request_id": "req-f"}
        self.env.redis("LPUSH", "kg:{t:%s}:ledger:%s" % (self.team, wid), json.dumps(debit))
        rc, out, err = self.kg("wallet", "ledger", wid, "--limit", "2", actor=self.owner)
        self.assertEqual(rc, 0, err)
        self.assertEqual(len(out.splitlines()), 3, out)
        cursor = re.search(r"more: add --cursor (\S+)", err).group(1)
        out = self.ok("wallet", "ledger", wid, "--limit", "2", "--cursor", cursor, actor=self.owner)
        self.assertRegex(out, r"reference=p3 ")
        led = self.js("wallet", "ledger", wid, "--limit", "2", "--cursor", cursor, actor=self.owner)
        self.assertEqual([e["reference"] for e in led["entries"]], ["p3", "p2"])
        self.assertIsInstance(led["next_cursor"], str)
        led = self.js("wallet", "ledger", wid, "--limit", "2", "--all", actor=self.owner)
        self.assertEqual(len(led["entries"]), 6)
        self.assertNotIn("next_cursor", led)
        rc, out, err = self.kg("wallet", "ledger", wid, "--all", actor=self.owner)
        self.assertEqual((rc, len(out.splitlines()), err), (0, 7, ""))
        led = self.js("wallet", "ledger", wid, "--key", "k_f", "--service", "speech-to-text",
                      actor=self.owner)
        self.assertEqual([e["request_id"] for e in led["entries"]], ["req-f"])
        led = self.js("wallet", "ledger", wid, "--from", "0", "--to", "1", actor=self.owner)
        self.assertEqual(led["entries"], [])
        rc, _, err = self.kg("wallet", "ledger", wid, "--cursor", "nonsense", actor=self.owner)
        self.assertEqual(rc, 1, err)
        self.assertIn("bad_request", err)
        rc, _, err = self.kg("wallet", "ledger", wid, "--from", "yesterday", actor=self.owner)
        self.assertEqual(rc, 2, err)

    def test_key_list_shows_every_key_past_one_page(self):
        team = self.c.ok("user.signup", email=kgtest.unique_email("big"), name="B")
        for i in range(1003):
            self.c.ok("key.create", team["user_id"], team=team["team_id"], name="k%d" % i)
        out = self.ok("key", "list", team["team_id"], actor=team["user_id"])
        self.assertEqual(len(out.splitlines()), 1 + 1004, out[-300:])
        ids = self.js("key", "list", team["team_id"], actor=team["user_id"])["keys"]
        self.assertEqual(len({k["key_id"] for k in ids}), 1004)

    def test_authorize_gets_the_global_options_given_before_it(self):
        rc, out, _ = self.kg("help")
        if "authorize" not in out:
            self.skipTest("keygate built without the gateway module")
        wid = self.c.ok("wallet.create", self.owner, team=self.team, name="a")["wallet_id"]
        self.c.ok("wallet.credit", self.owner, wallet=wid, amount_micros=10000, reference="a1")
        key = self.paid_key(self.owner, self.team, users=[self.owner], services={
            "text-generation": {"policy": "payg", "models": ["small"], "wallet": wid}})["key_id"]
        path = os.path.join(self.env.tmp, "authz-token")
        self.ok("token", "generate", key, "--out", path, actor=self.owner)
        args = ("authorize", "--token-file", path, "--service", "text-generation", "--model",
                "small", "--param", "input_tokens=1000", "--param", "output_tokens=500",
                "--request-id", "cli-r1")
        r = self.js("--config", self.env.config_path, *args)
        self.assertEqual((r["status"], r["cost_micros"], r["balance_micros"]), ("ok", 450, 9550))
        rc, out, err = self.kg(*args, env={"KEYGATE_CONFIG": self.env.config_path})
        self.assertEqual(rc, 0, err)
        out = self.ok("wallet", "ledger", wid, "--limit", "1", actor=self.owner)
        self.assertRegex(out, r"debit\s+-0\.000450 USD \(450 micros\)\s+0\.009550 USD .*request=cli-r1")

    def test_wallet_credit_usage(self):
        wid = self.c.ok("wallet.create", self.owner, team=self.team, name="u")["wallet_id"]
        for args in (("12.5", "--reference", "r"), ("12",), ("abc", "--reference", "r")):
            rc, _, err = self.kg("wallet", "credit", wid, *args, actor=self.owner)
            self.assertEqual(rc, 2, args)
            self.assertIn("keygate [options] wallet credit WALLET", err)
        rc, _, err = self.kg("wallet", "credit", wid, "0", "--reference", "r", actor=self.owner)
        self.assertEqual(rc, 1)
        self.assertTrue(err.startswith("error: bad_request: "), err)


class TestGeneral(CliCase):

    def test_ping_and_socket_sources(self):
        self.assertEqual(self.ok("ping"), "pong\n")
        self.assertEqual(self.js("ping"), {})
        # --socket wins over KEYGATE_SOCKET; --config reads the daemon's file.
        rc, out, _ = self.kg("--socket", self.env.socket_path, "ping", socket_path="/nonexistent")
        self.assertEqual((rc, out), (0, "pong\n"))
        rc, out, _ = self.kg("--config", self.env.config_path, "ping", socket_path="")
        self.assertEqual((rc, out), (0, "pong\n"))
        rc, out, _ = self.kg("ping", socket_path="", env={"KEYGATE_CONFIG": self.env.config_path})
        self.assertEqual((rc, out), (0, "pong\n"))

    def test_actor_flag_wins_over_environment(self):
        s = self.signup()
        stranger = self.signup()["user_id"]
        rc, _, err = self.kg("team", "get", s["team_id"], actor=stranger)
        self.assertEqual(rc, 1)
        self.assertIn("error: not_found: ", err)
        self.ok("--actor", s["user_id"], "team", "get", s["team_id"], actor=stranger)
        self.ok("team", "get", s["team_id"], "--actor", s["user_id"], actor=stranger)

    def test_missing_actor_is_unauthenticated_with_a_hint(self):
        s = self.signup()
        rc, out, err = self.kg("key", "get", s["free_key_id"])
        self.assertEqual((rc, out), (1, ""))
        self.assertTrue(err.startswith("error: unauthenticated: "), err)
        self.assertIn("--actor", err)

    def test_unreachable_daemon_exits_3(self):
        rc, out, err = self.kg("ping", socket_path=os.path.join(self.env.tmp, "no-such.sock"))
        self.assertEqual((rc, out), (3, ""))
        self.assertTrue(err.startswith("error: unreachable: "), err)

    def test_silent_daemon_times_out_with_exit_3(self):
        path = os.path.join(self.env.tmp, "silent.sock")
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(path)
        srv.listen(4)
        conns = []
        t = threading.Thread(target=lambda: conns.append(srv.accept()), daemon=True)
        t.start()
        try:
            rc, out, err = self.kg("--timeout", "0.3", "ping", socket_path=path, timeout=10)
        finally:
            srv.close()
            for c, _ in conns:
                c.close()
        self.assertEqual(rc, 3)
        self.assertIn("no answer from the daemon within 300 ms", err)

    def test_usage_errors_exit_2_with_the_group_usage(self):
        cases = [
            (["key"], "key create"),
            (["key", "frobnicate"], "key revoke"),
            (["key", "get"], "key get KEY"),
            (["key", "get", "a", "b"], "key get KEY"),
            (["key", "create", "T"], "key create TEAM --name"),
            (["key", "create", "T", "--name", "n", "--bogus"], "key create"),
            (["team", "member", "add", "T", "--role", "user"], "team member add"),
            (["token", "rotate", "K", "--grace", "soon"], "token rotate"),
            (["wallet", "ledger", "W", "--limit", "many"], "wallet ledger"),
            (["signup", "--email", "x@y"], "signup --email"),
            (["--timeout", "-1", "ping"], ""),
            (["nosuchgroup"], ""),
            ([], ""),
        ]
        for args, want in cases:
            rc, out, err = self.kg(*args)
            self.assertEqual(rc, 2, (args, err))
            self.assertTrue(err.startswith("error: usage: "), (args, err))
            self.assertIn(want, err, args)

    def test_text_that_is_not_utf8_is_a_usage_error_and_sends_nothing(self):
        s = self.signup()
        before = self.c.ok("key.list", s["user_id"], team=s["team_id"])
        for args in ((b"key", b"create", s["team_id"].encode(), b"--name", b"\xff"),
                     (b"key", b"create", s["team_id"].encode(), b"--name", b"n", b"--description", b"\xfe"),
                     (b"key", b"create", s["team_id"].encode(), b"--name", b"n", b"--user", b"\xff")):
            rc, out, err = self.kg(*args, actor=s["user_id"])
            self.assertEqual((rc, out), (2, ""), args)
            self.assertIn("not valid UTF-8", err)
        self.assertEqual(self.c.ok("key.list", s["user_id"], team=s["team_id"]), before)

    def test_an_answer_before_hang_up_beats_the_broken_pipe(self):
        # A line over the daemon's limit is answered bad_request and closed.
        rc, out, err = self.kg("key", "get", "k" * 70000, actor="u_x", timeout=20)
        self.assertEqual(rc, 1, err)
        self.assertTrue(err.startswith("error: bad_request: "), err)

    def test_help_exits_0(self):
        for args in (["--help"], ["help"], ["key", "--help"], ["help", "wallet"],
                     ["key", "create", "--help"]):
            rc, out, _ = self.kg(*args)
            self.assertEqual(rc, 0, args)
            self.assertIn("usage: keygate", out)

    def test_call_sends_any_command(self):
        s = self.signup()
        r = self.js("call", "key.get", json.dumps({"key": s["free_key_id"]}), actor=s["user_id"])
        self.assertEqual(r["key_id"], s["free_key_id"])
        out = self.ok("call", "team.get", '{"team": "%s"}' % s["team_id"], actor=s["user_id"])
        self.assertEqual(json.loads(out)["team_id"], s["team_id"])
        rc, _, err = self.kg("call", "no.such.command")
        self.assertEqual(rc, 1)
        self.assertTrue(err.startswith("error: unknown_command: "), err)
        rc, _, _ = self.kg("call", "ping", "[1,2]")
        self.assertEqual(rc, 2)
        rc, _, _ = self.kg("call", "ping", "{nope")
        self.assertEqual(rc, 2)

    def test_json_output_parses_for_every_listing(self):
        s = self.signup()
        o, t = s["user_id"], s["team_id"]
        w = self.js("wallet", "create", t, "j", actor=o)["wallet_id"]
        self.assertIsInstance(self.js("key", "list", t, actor=o)["keys"], list)
        self.assertIsInstance(self.js("wallet", "list", t, actor=o)["wallets"], list)
        self.assertIsInstance(self.js("wallet", "ledger", w, actor=o)["entries"], list)
        self.assertIsInstance(self.js("audit", t, "--limit", "5", actor=o)["entries"], list)
        self.assertIsInstance(self.js("notifications", actor=o)["notifications"], list)
        self.assertEqual(self.js("team", "get", t, actor=o)["team_id"], t)

    def test_audit_shows_the_cli_as_peer(self):
        s = self.signup()
        self.ok("key", "create", s["team_id"], "--name", "audited", actor=s["user_id"])
        out = self.ok("audit", s["team_id"], "--limit", "3", actor=s["user_id"])
        self.assertRegex(out, r"(?m)^\S+ \S+\s+%s\s+uid %d pid \d+\s+key\.create\s+k_\w+\s+ok$"
                         % (s["user_id"], os.getuid()))


class TestStoreAway(CliCase):
    """`unavailable` has its own exit status (4): a script may retry it."""

    def test_unavailable_exits_4_and_says_so(self):
        s = self.signup()
        self.env.stop_redis()
        try:
            rc, out, err = self.kg("key", "get", s["free_key_id"], actor=s["user_id"])
        finally:
            self.env.start_redis()
        self.assertEqual((rc, out), (4, ""), err)
        self.assertTrue(err.startswith("error: unavailable: "), err)


if __name__ == "__main__":
    if not os.access(CLI, os.X_OK):
        sys.exit("keygate CLI not found at %s (set KEYGATE_CLI)" % CLI)
    unittest.main()
