"""No plain token and no pepper anywhere after a full run: tokens issued
and rotated through the CLI (--out files and stdout), used through
libkeygate (kg_hammer, keygate authorize), dead tokens and tokens with a
bad checksum sent to the gateway, tokens sent to the admin socket in every
argument position, in malformed lines and in an over-long line; keys
unassigned and revoked, a member removed. Then:

- keygate fsck is clean (its own scan of every key and value for a
  well-formed token or the pepper);
- no token, token body or pepper (hex, upper hex, raw) in any Redis key or
  value; no token hash in the audit stream or notifications;
- no token, token body or pepper in keygated's log, in the audit entries
  the daemon serves, or in the CLI's output when --out is used.

A separate test checks that error messages never echo a token back (a bug
once; proto_error redacts long letter-and-digit runs). The whole run is
repeated with log_format json."""
import json
import os
import re
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "faults"))
import safety  # noqa: E402
from safety import kgtest  # noqa: E402

TOKEN_RE = re.compile(r"kg_[0-9A-Za-z]{61}")


def read(path):
    with open(path) as f:
        return f.read().strip()


def bad_checksum(tok):
    last = tok[-1]
    return tok[:-1] + ("A" if last != "A" else "B")


class FullRun(kgtest.EnvCase):

    def cli(self, *args, actor=None, out_ok=True):
        argv = [safety.cli_path(), "--socket", self.env.socket_path]
        if actor:
            argv += ["--actor", actor]
        p = subprocess.run(argv + list(args), capture_output=True, text=True, timeout=30)
        self.outputs.append(p.stdout + p.stderr)
        if out_ok:
            self.assertEqual(p.returncode, 0, "keygate %s: %s" % (" ".join(args), p.stderr))
        return p

    def cli_json(self, *args, actor=None):
        return json.loads(self.cli("--json", *args, actor=actor).stdout)

    def test_no_secret_anywhere_after_a_full_run(self):
        env = self.env
        self.outputs, tokens, quiet_outputs = [], [], []
        o = self.cli_json("signup", "--email", kgtest.unique_email(), "--name", "Olga")
        a, team, free = o["user_id"], o["team_id"], o["free_key_id"]
        u = self.cli_json("signup", "--email", kgtest.unique_email(), "--name", "Ulf")["user_id"]
        self.cli("team", "member", "add", team, "--user", u, "--role", "user", actor=a)
        w = self.cli_json("wallet", "create", team, "main", actor=a)["wallet_id"]
        self.cli("wallet", "credit", w, "5000000", "--reference", "topup-1", actor=a)
        k = self.cli_json("key", "create", team, "--name", "prod", "--user", a, "--user", u,
                          "--service", "text-generation=payg:small@" + w,
                          "--service", "speech-to-text=free", actor=a)["key_id"]
        tf = os.path.join(env.tmp, "owner.token")
        p = self.cli("token", "generate", k, "--out", tf, actor=a)
        quiet_outputs.append(p.stdout + p.stderr)
        tokens.append(read(tf))
        p = self.cli("token", "generate", k, actor=u)
        tokens.append(p.stdout.strip())
        p = self.cli("token", "rotate", k, "--grace", "60", "--out", tf, actor=a)
        quiet_outputs.append(p.stdout + p.stderr)
        tokens.append(read(tf))
        p = self.cli("--json", "token", "rotate", k, "--user", u, actor=a)
        tokens.append(json.loads(p.stdout)["token"])
        for t in tokens:
            self.assertRegex(t, TOKEN_RE)

        # the gateway: live, grace-period, dead and mangled tokens
        gw = safety.gateway_config(env)
        files = {}
        for i, t in enumerate(tokens + [bad_checksum(tokens[2])]):
            files[i] = safety.write_secret(os.path.join(env.tmp, "t%d" % i), t)
        statuses = {}
        for i, f in files.items():
            rc, rows, summary = safety.Hammer(gw, f, 10, rid="sec%d" % i).wait()
            self.assertEqual(rc, 0, summary)
            statuses[i] = rows[0]["status"]
        self.assertEqual(statuses, {0: "ok", 1: "token_unknown", 2: "ok", 3: "ok",
                                    4: "token_malformed"})
        p = subprocess.run([safety.cli_path(), "--config", gw, "authorize", "--token-file", tf,
                            "--service", "text-generation", "--model", "small",
                            "--param", "input_tokens=1000", "--request-id", "cli-1"],
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 0, p.stderr)
        quiet_outputs.append(p.stdout + p.stderr)

        # hostile admin requests carrying tokens
        c = self.c
        t0 = tokens[2]
        for req in ({"cmd": "key.get", "actor": t0, "key": k},
                    {"cmd": "key.get", "actor": a, "key": t0},
                    {"cmd": "team.get", "actor": a, "team": t0},
                    {"cmd": "wallet.get", "actor": a, "wallet": t0},
                    {"cmd": "token.rotate", "actor": a, "key": k, "user": t0},
                    {"cmd": "team.member.add", "actor": a, "team": team, "user": t0, "role": "user"},
                    {"cmd": "team.member.add", "actor": a, "team": team, "email": t0, "role": "user"},
                    {"cmd": "key.users.set", "actor": a, "key": k, "users": [a, t0]},
                    {"cmd": "key.services.set", "actor": a, "key": k,
                     "services": {"text-generation": {"policy": "payg", "models": ["small"], "wallet": t0}}},
                    {"cmd": "user.signup", "email": t0, "name": "x"},
                    {"cmd": "token.generate", "actor": a, "key": k, "token": t0},
                    {"id": t0, "cmd": "ping"}):
            r = c.call_obj(req)
            self.assertIn("ok", r)
        c.send_raw(('{"cmd": "key.get", "actor": "%s", ' % t0).encode() + b"\n")
        self.assertFalse(c.read_json()["ok"])
        c.send_raw(b'\xff' + t0.encode() + b"\n")
        self.assertFalse(c.read_json()["ok"])
        c2 = env.client()
        c2.send_raw(('{"cmd":"ping","pad":"%s%s"}\n' % (t0, "x" * 70000)).encode())
        self.assertEqual(c2.read_json()["error"]["code"], "bad_request")

        # unassign, revoke, remove
        self.cli("key", "users", k, a, actor=a)
        self.cli("key", "revoke", k, actor=a)
        self.cli("team", "member", "remove", team, u, actor=a)
        p = self.cli("token", "generate", free, actor=a)
        tokens.append(p.stdout.strip())

        # -- checks ------------------------------------------------------------
        counts = safety.assert_clean(self, env, "after the full run")
        bodies = [t[3:] for t in tokens]
        found = env.find_secrets_in_redis(tokens + bodies + env.pepper_needles())
        self.assertEqual(found, [], "secrets in Redis")
        hashes = [kgtest.token_hash(env.pepper_bytes, t).encode() for t in tokens]
        for key, vals in env.redis_scan_all().items():
            if key.endswith(b":audit") or key.startswith(b"kg:notif:") or b":ledger:" in key:
                for v in vals:
                    for h in hashes:
                        self.assertNotIn(h, v, key)
        log = env.daemon_log()
        for t in tokens:
            self.assertNotIn(t[3:23], log)
        self.assertNotIn(env.pepper_hex, log.lower())
        self.assertIsNone(TOKEN_RE.search(log))
        audit = json.dumps(c.ok("audit.list", a, team=team, limit=1000))
        self.assertIsNone(TOKEN_RE.search(audit))
        for h in hashes:
            self.assertNotIn(h.decode(), audit)
        for text in quiet_outputs:
            for t in tokens:
                self.assertNotIn(t, text)
        print("full run: %d tokens issued, %d gateway requests; fsck clean %s; no token, token body, "
              "token hash or pepper in Redis (%d keys), the log (%d bytes), the audit stream or "
              "--out output" % (len(tokens), 10 * len(files) + 1, counts, counts["redis_keys"],
                                len(log)), file=sys.stderr)

    def test_error_messages_never_echo_a_token(self):
        """SPEC §3: a plain token never reaches an error message, though
        refusals quote the caller's argument ("no command '...'", "unknown
        service '...'", "user '...' is not a member", ...). Found as a bug;
        proto_error now redacts every long letter-and-digit run."""
        c = self.c
        o = kgtest.signup(c)
        a, team = o["user_id"], o["team_id"]
        k = c.ok("key.create", a, team=team, name="k", users=[a])["key_id"]
        tok = c.ok("token.generate", a, key=k)["token"]
        leaks = []
        for req in ({"cmd": tok},
                    {"cmd": "price.estimate", "service": tok, "model": "m", "params": {}},
                    {"cmd": "price.estimate", "service": "text-generation", "model": tok, "params": {}},
                    {"cmd": "price.estimate", "service": "text-generation", "model": "small",
                     "params": {tok: 1}},
                    {"cmd": "key.users.set", "actor": a, "key": k, "users": [tok]},
                    {"cmd": "key.services.set", "actor": a, "key": k, "services": {tok: {"policy": "free"}}},
                    {"cmd": "key.services.set", "actor": a, "key": k, "services": {
                        "text-generation": {"policy": "payg", "models": [tok], "wallet": "w_x"}}}):
            r = c.call_obj(req)
            msg = r.get("error", {}).get("message", "")
            if tok[3:23] in msg:
                leaks.append((list(req)[0] if req.get("cmd") == tok else req["cmd"],
                              msg.replace(tok, "<TOKEN>")[:80]))
        self.assertEqual(leaks, [], "error messages that quote a token")


class FullRunJsonLogs(FullRun):
    """The same run with log_format json: no secret in the log either, and
    every line of it is one JSON object with ts, level, func and msg."""

    env_args = {"extra_config": ["log_format json"]}

    def test_every_log_line_is_a_json_object(self):
        self.outputs = []
        self.cli("ping")
        self.cli("--json", "key", "get", "k_nosuchkeyatall0000000", out_ok=False)
        log = self.env.daemon_log()
        lines = [ln for ln in log.splitlines() if ln.strip()]
        self.assertTrue(lines)
        for ln in lines:
            o = json.loads(ln)
            self.assertEqual(set(o), {"ts", "level", "func", "msg"}, ln)
            self.assertIn(o["level"], ("error", "warn", "info", "debug"), ln)


if __name__ == "__main__":
    unittest.main()
