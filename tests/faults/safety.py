"""safety - helpers shared by the fault, load and security tests
(tests/faults, tests/load, tests/security), on top of tests/lib/kgtest.py.

    fsck(env)            runs `keygate --json fsck` on the Env's config
    assert_clean(tc, env) fails the test with fsck's problems unless clean
    paid_world(c, env)   an owner, a wallet with a balance, a payg key and
                         the owner's token in a 0600 file, for kg_hammer
    gateway_config(env)  a config file for kg_open (a longer timeout_ms)
    Hammer               kg_hammer (tests/faults/kg_hammer.c) as a process

Environment (set by CTest): KEYGATE_CLI (the keygate binary), KG_HAMMER
(kg_hammer), plus kgtest's KEYGATED and REDIS_SERVER.
"""
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import kgtest  # noqa: E402

REPO = kgtest.REPO
COST_SMALL_1000 = 150          # text-generation/small, input_tokens=1000 (tests/data/catalog.json)


def cli_path():
    return os.environ.get("KEYGATE_CLI") or os.path.join(REPO, "build", "daemon", "cli", "keygate")


def hammer_path():
    return os.environ.get("KG_HAMMER") or os.path.join(REPO, "build", "tests", "faults", "kg_hammer")


def fsck(env, config=None, timeout=60):
    """Runs `keygate --json fsck --config <config>`; returns
    (exit code, parsed JSON or None, stdout, stderr)."""
    p = subprocess.run([cli_path(), "--json", "fsck", "--config", config or env.config_path],
                       capture_output=True, text=True, timeout=timeout)
    try:
        out = json.loads(p.stdout) if p.stdout.strip() else None
    except ValueError:
        out = None
    return p.returncode, out, p.stdout, p.stderr


def assert_clean(tc, env, what="fsck"):
    """Asserts fsck exits 0 and reports no problem; returns its counts."""
    rc, out, so, se = fsck(env)
    tc.assertIsNotNone(out, "%s: no JSON from fsck (exit %s): %s %s" % (what, rc, so, se))
    tc.assertEqual(out["problems"], [], "%s: fsck found problems" % what)
    tc.assertTrue(out["clean"])
    tc.assertEqual(rc, 0, "%s: fsck exit %s: %s" % (what, rc, se))
    return out["counts"]


def gateway_config(env, timeout_ms=1000, cache_ttl_ms=1000, name="gateway.conf"):
    """A config file for kg_open in the Env's temp dir: the Env's lines
    (the module ignores the daemon's) with a longer store timeout."""
    path = os.path.join(env.tmp, name)
    with open(path, "w") as f:
        f.write("\n".join(env.config_lines() + ["timeout_ms %d" % timeout_ms,
                                                 "cache_ttl_ms %d" % cache_ttl_ms]) + "\n")
    return path


def write_secret(path, text):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    return path


def paid_world(c, env, balance, name="hammer"):
    """An owner and team, a wallet credited with `balance` micros, a paid key
    with text-generation/small charged to it, and the owner's token written
    to a 0600 file. Returns a dict: owner, team, wallet, key, token,
    token_file."""
    o = kgtest.signup(c, name="Owner")
    a, team = o["user_id"], o["team_id"]
    w = c.ok("wallet.create", a, team=team, name="w")["wallet_id"]
    if balance > 0:
        c.ok("wallet.credit", a, wallet=w, amount_micros=balance, reference="initial")
    k = c.ok("key.create", a, team=team, name=name, users=[a], services={
        "text-generation": {"policy": "payg", "models": ["small"], "wallet": w}})["key_id"]
    tok = c.ok("token.generate", a, key=k)["token"]
    path = write_secret(os.path.join(env.tmp, "token-%s" % k), tok)
    return {"owner": a, "team": team, "wallet": w, "key": k, "token": tok, "token_file": path}


def ledger(env, team, wallet):
    """The wallet's ledger entries, oldest first."""
    raw = env.redis("LRANGE", "kg:{t:%s}:ledger:%s" % (team, wallet), 0, -1)
    return [json.loads(e) for e in reversed(raw)]


def balance(env, team, wallet):
    return int(env.redis("HGET", "kg:{t:%s}:wallet:%s" % (team, wallet), "balance_micros"))


class Hammer:
    """One kg_hammer process (a gateway sending `count` requests)."""

    def __init__(self, config, token_file, count, rid=None, retry_for=0.0, out=None,
                 service="text-generation", model="small", params=(("input_tokens", 1000),),
                 pause_us=0):
        self.out = out
        argv = [hammer_path(), "--config", config, "--token-file", token_file,
                "--service", service, "--count", str(count)]
        if model:
            argv += ["--model", model]
        for name, value in params:
            argv += ["--param", "%s=%d" % (name, value)]
        if rid:
            argv += ["--rid", rid]
        if retry_for:
            argv += ["--retry-for", str(retry_for)]
        if out:
            argv += ["--out", out]
        if pause_us:
            argv += ["--pause-us", str(pause_us)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL if out else subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)

    def wait(self, timeout=60):
        """Waits; returns (exit code, [result lines as tuples], summary)."""
        so, se = self.proc.communicate(timeout=timeout)
        if self.out:
            with open(self.out) as f:
                so = f.read()
        rows = []
        for line in so.splitlines():
            rid, status, replayed, cost, bal, tries, ms = line.split()
            rows.append({"rid": rid, "status": status, "replayed": replayed == "1",
                         "cost": int(cost), "balance": int(bal), "tries": int(tries), "ms": int(ms)})
        return self.proc.returncode, rows, se.strip()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
