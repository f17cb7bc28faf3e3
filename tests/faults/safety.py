"""safety - helpers shared by the fault, load and security tests
(tests/faults, tests/load, tests/security), on top of tests/lib/kgtest.py.

    fsck(env)            runs `keygate --json fsck` on the Env's config
    assert_clean(tc, env) fails the test with fsck's problems unless clean
    paid_world(c, env)   an owner, a wallet with a balance, a payg key and
                         the owner's token in a 0600 file, for kg_hammer
    gateway_config(env)  a config file for kg_open (a longer timeout_ms)
    Hammer               kg_hammer (tests/faults/kg_hammer.c) as a process
    Stream               an admin client pipelining mutations in its own team
    check_present(tc, env, stream)  every command it saw answered ok is in Redis

Environment (set by CTest): KEYGATE_CLI (the keygate binary), KG_HAMMER
(kg_hammer), plus kgtest's KEYGATED and REDIS_SERVER.
"""
import json
import os
import subprocess
import sys
import threading
import time

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


WINDOW = 8          # requests a Stream pipelines per round trip


class Stream(threading.Thread):
    """One admin client acting in its own team: builds each window of
    pipelined requests from what earlier answers told it, and records
    every request answered ok."""

    def __init__(self, env, cid, owner, team, wallet, stop):
        super().__init__(daemon=True)
        self.env, self.cid, self.a, self.team, self.w = env, cid, owner, team, wallet
        self.stop = stop
        self.sent = self.answered = 0
        self.done = []                  # (op, args, result) answered ok
        self.failed = []                # error answers: {cmd, args, code, sent}
        self.keys, self.tokened, self.renamed, self.revoked = [], set(), set(), set()
        self.new_users, self.added = [], set()
        self.n = 0
        self.last_ok = 0.0              # time.monotonic() of the last ok answer

    def next_ops(self):
        """A window of requests; no two of them act on the same key (the
        daemon may run pipelined mutations out of order: see
        test_pipeline_order.py)."""
        ops, busy = [], set()
        for _ in range(WINDOW):
            self.n += 1
            n, kind = self.n, self.n % 7
            ready = [k for k in self.keys if k not in self.revoked and k not in busy]
            if kind == 0 or not ready:
                ops.append(("key.create", self.a, {"team": self.team, "name": "k%d-%d" % (self.cid, n),
                                                   "users": [self.a]}))
            elif kind == 1:
                ops.append(("wallet.credit", self.a, {"wallet": self.w, "amount_micros": n,
                                                      "reference": "ref-%d-%d" % (self.cid, n)}))
            elif kind == 2 and [k for k in ready if k not in self.tokened]:
                k = [k for k in ready if k not in self.tokened][0]
                self.tokened.add(k)
                busy.add(k)
                ops.append(("token.generate", self.a, {"key": k}))
            elif kind == 3 and [k for k in ready if k not in self.renamed]:
                k = [k for k in ready if k not in self.renamed][0]
                self.renamed.add(k)
                busy.add(k)
                ops.append(("key.update", self.a, {"key": k, "name": "renamed-%d-%d" % (self.cid, n)}))
            elif kind == 4:
                ops.append(("user.signup", None, {"email": kgtest.unique_email("s%d" % self.cid),
                                                  "name": "New"}))
            elif kind == 5 and [u for u in self.new_users if u not in self.added]:
                u = [u for u in self.new_users if u not in self.added][0]
                self.added.add(u)
                ops.append(("team.member.add", self.a, {"team": self.team, "user": u, "role": "user"}))
            elif kind == 6 and len(ready) > 2 and ready[0] in self.tokened:
                self.revoked.add(ready[0])
                busy.add(ready[0])
                ops.append(("key.revoke", self.a, {"key": ready[0]}))
            else:
                ops.append(("wallet.credit", self.a, {"wallet": self.w, "amount_micros": n,
                                                      "reference": "ref-%d-%d" % (self.cid, n)}))
        return ops

    def run(self):
        try:
            c = kgtest.Client(self.env.socket_path, timeout=10)
        except OSError:
            return
        try:
            while not self.stop.is_set():
                ops = self.next_ops()
                data = b"".join((json.dumps(dict(kgtest.Client.request(cmd, actor, **args),
                                                 id=i)) + "\n").encode()
                                for i, (cmd, actor, args) in enumerate(ops))
                t_sent = time.monotonic()
                c.send_raw(data)
                self.sent += len(ops)
                for i, (cmd, actor, args) in enumerate(ops):
                    line = c.read_line()
                    if line is None:
                        return
                    r = json.loads(line)
                    self.answered += 1
                    assert r.get("id") == i, r
                    if r.get("ok"):
                        self.last_ok = time.monotonic()
                        self.done.append((cmd, args, r["result"]))
                        if cmd == "key.create":
                            self.keys.append(r["result"]["key_id"])
                        elif cmd == "user.signup":
                            self.new_users.append(r["result"]["user_id"])
                    else:
                        self.failed.append({"cmd": cmd, "args": args, "code": r["error"]["code"],
                                            "sent": t_sent})
                if self.failed and self.failed[-1]["sent"] == t_sent:
                    time.sleep(0.05)       # refused (Redis away): do not spin
        except (OSError, ConnectionError, ValueError):
            return
        finally:
            c.close()


def check_present(tc, env, s):
    """Every command Stream s saw answered ok is in Redis (tc: the TestCase)."""
    p = "kg:{t:%s}:" % s.team
    ledger = [json.loads(e) for e in env.redis("LRANGE", p + "ledger:" + s.w, 0, -1)]
    refs = [e.get("reference") for e in ledger if e["type"] == "credit"]
    for cmd, args, res in s.done:
        if cmd == "key.create":
            doc = env.redis("GET", p + "key:" + res["key_id"])
            tc.assertIsNotNone(doc, "acknowledged key.create lost: %s" % res["key_id"])
            tc.assertIsNotNone(env.redis("ZSCORE", p + "keys", res["key_id"]))
        elif cmd == "wallet.credit":
            tc.assertEqual(refs.count(args["reference"]), 1,
                           "acknowledged credit %s: %d ledger entries"
                           % (args["reference"], refs.count(args["reference"])))
        elif cmd == "token.generate":
            h = kgtest.token_hash(env.pepper_bytes, res["token"])
            rec = env.redis("HGETALL", kgtest.token_key(env.pepper_bytes, res["token"]))
            tc.assertIn(res["key_id"].encode(), rec, "acknowledged token lost")
            doc = json.loads(env.redis("GET", p + "key:" + res["key_id"]))
            tc.assertEqual(doc["tokens"][s.a]["hash"], h)
        elif cmd == "key.update":
            doc = json.loads(env.redis("GET", p + "key:" + args["key"]))
            tc.assertEqual(doc["name"], args["name"], "acknowledged rename lost")
        elif cmd == "key.revoke":
            doc = json.loads(env.redis("GET", p + "key:" + args["key"]))
            tc.assertEqual(doc["status"], "revoked", "acknowledged revocation lost")
        elif cmd == "user.signup":
            tc.assertIsNotNone(env.redis("GET", "kg:user:" + res["user_id"]))
            tc.assertIsNotNone(env.redis("GET", "kg:{t:%s}:team" % res["team_id"]))
        elif cmd == "team.member.add":
            tc.assertEqual(team_members(env, p).get(args["user"]), "user", "acknowledged member lost")


def team_members(env, p):
    """user_id -> role of the team whose keys start with p: the hash
    P {t:T}:members (docs/redis-schema.md)."""
    flat = [x.decode() if isinstance(x, bytes) else x for x in (env.redis("HGETALL", p + "members") or [])]
    return dict(zip(flat[0::2], flat[1::2]))


class Applied:
    """Tells whether commands a Stream sent (and saw refused) took effect,
    from one read of its team's state."""

    def __init__(self, env, s):
        p = "kg:{t:%s}:" % s.team
        self.s = s
        self.docs = {kid.decode(): json.loads(env.redis("GET", p + "key:" + kid.decode()))
                     for kid in env.redis("ZRANGE", p + "keys", 0, -1)}
        self.names = {d["name"] for d in self.docs.values()}
        self.refs = {json.loads(e).get("reference")
                     for e in env.redis("LRANGE", p + "ledger:" + s.w, 0, -1)}
        self.members = team_members(env, p)
        self.env = env

    def __call__(self, cmd, args):
        if cmd == "key.create":
            return args["name"] in self.names
        if cmd == "wallet.credit":
            return args["reference"] in self.refs
        if cmd == "user.signup":
            return self.env.redis("EXISTS", "kg:email:" + args["email"].lower()) == 1
        if cmd == "team.member.add":
            return args["user"] in self.members
        doc = self.docs[args["key"]]
        if cmd == "token.generate":
            return self.s.a in doc["tokens"]
        if cmd == "key.update":
            return doc["name"] == args["name"]
        if cmd == "key.revoke":
            return doc["status"] == "revoked"
        raise ValueError(cmd)
