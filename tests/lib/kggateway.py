"""kggateway - what the nginx and haproxy gateway harnesses share.

Python 3 standard library only. tests/nginx/kgnginx.py (nginx + the module)
and tests/haproxy/kghaproxy.py (haproxy + keygate-spoa) each build one
gateway on top of this file; the conformance cases of gateway_cases.py and
the benches then speak to either through the same small interface:

    Gateway.port                 the gateway's loopback port
    Gateway.request(path, ...)   (status, {lower-case header: value}, body)
    Gateway.get_json(path, ...)  (status, JSON refusal or {"_raw": ...}, headers)
    Gateway.get_echo(path, ...)  (status, {field: value} as the echo
                                 upstream saw the X-Kg-* headers, or the
                                 refusal JSON)
    Gateway.close()              stop it, remove its temp dir

The world both gateways serve (the same paths, see kgnginx.py and
kghaproxy.py): /stt/ speech-to-text (free), /gen/ text-generation
(pay-as-you-go, model and tokens from X-Model / X-Input-Tokens /
X-Output-Tokens), /tiny/ tiny-free (quota 3/day), /free/ echo-free (free, no
quota), /open/ no keygate. catalog() is its catalog, setup_accounts() its
owner, keys and wallet.
"""

import http.client
import json
import os
import shutil
import subprocess
import time
import zlib

import kgtest  # noqa: E402  (tests/lib)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))

# The X-Kg-* fields the echo upstream answers with, one "name=value" a line;
# each gateway writes its own template of them (ECHO in kgnginx/kghaproxy).
ECHO_FIELDS = ("key", "user", "team", "cost", "balance", "status")


free_port = kgtest.free_port
tail = kgtest.tail


def catalog():
    """tests/data/catalog.json with text-generation's `input_tokens`
    marked required, plus `tiny-free`, a free service with a
    quota of 3 requests per team per day (the 429 test), `echo-free`, a
    free service without quota (the bench), and `llm`, a settled service."""
    with open(os.path.join(REPO, "tests", "data", "catalog.json")) as f:
        cat = json.load(f)
    for svc in cat["services"]:
        if svc["id"] == "text-generation":
            for m in svc["models"]:
                for rate in m["price"]["per"]:
                    if rate["param"] == "input_tokens":
                        rate["required"] = True
    cat["services"].append({
        "id": "tiny-free", "name": "Tiny free", "free": True,
        "free_quota": {"requests_per_day": 3},
        "models": [{"id": "m", "price": {"base_micros": 0, "per": []}}]})
    cat["services"].append({
        "id": "echo-free", "name": "Echo (free, no quota)", "free": True,
        "models": [{"id": "m", "price": {"base_micros": 0, "per": []}}]})
    # reserve then settle: output_tokens measured after the response
    cat["services"].append({
        "id": "llm", "name": "LLM (settled)", "free": False, "settle": True,
        "models": [{"id": "m1", "price": {"base_micros": 100, "per": [
            {"param": "input_tokens", "micros": 150, "units": 1000},
            {"param": "output_tokens", "micros": 600, "units": 1000,
             "measured": True, "max": 4096}]}}]})
    return cat


_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _b62(n, width):
    out = []
    for _ in range(width):
        n, r = divmod(n, 62)
        out.append(_B62[r])
    return "".join(reversed(out))


def fake_token(team=None):
    """A well-formed token (SPEC §3: right shape, right checksum) that was
    never issued, of team (t_ + 12; a random one by default)."""
    team = team or "t_" + _b62(int.from_bytes(os.urandom(9), "big"), 12)
    head = "kg_" + _b62(int.from_bytes(os.urandom(32), "big"), 43) + team[2:]
    return head + _b62(zlib.crc32(head.encode()) & 0xFFFFFFFF, 6)


def bearer(token):
    return {"Authorization": "Bearer " + token}


def gen_headers(token, model="small", inp=1000, out=1000, request_id=None):
    """Headers of a /gen/ request: the token, the model and both params."""
    h = bearer(token)
    h.update({"X-Model": model, "X-Input-Tokens": str(inp), "X-Output-Tokens": str(out)})
    if request_id is not None:
        h["X-Request-Id"] = request_id
    return h


def setup_accounts(client, credit_micros=1_000_000):
    """Signs up an owner (free key with speech-to-text and tiny-free) and
    makes a paid key with text-generation pay-as-you-go (model small) on a
    wallet credited with credit_micros. Returns a dict of ids and tokens."""
    o = kgtest.signup(client, name="Owner")
    uid, team, free_key = o["user_id"], o["team_id"], o["free_key_id"]
    wallet = client.ok("wallet.create", uid, team=team, name="main")["wallet_id"]
    if credit_micros:
        client.ok("wallet.credit", uid, wallet=wallet, amount_micros=credit_micros,
                  reference="initial-%s" % wallet)
    paid = client.ok("key.create", uid, team=team, name="paid", users=[uid],
                     services={"text-generation": {"policy": "payg", "models": ["small"],
                                                   "wallet": wallet}})["key_id"]
    free_tok = client.ok("token.generate", uid, key=free_key)["token"]
    paid_tok = client.ok("token.generate", uid, key=paid)["token"]
    return {"user": uid, "team": team, "free_key": free_key, "paid_key": paid,
            "wallet": wallet, "free_token": free_tok, "paid_token": paid_tok}


def stop_process(p, sig, timeout):
    """Sends sig to the subprocess p unless it has exited, waits up to
    timeout seconds, then SIGKILLs it. Returns (exit status, killed)."""
    killed = False
    if p.poll() is None:
        p.send_signal(sig)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
            killed = True
    return p.returncode, killed


class Gateway:
    """A gateway process on 127.0.0.1:port in its own temp dir. Subclasses
    set name, tmp, port, proc, and define start() (calling wait_ready())
    and startup_log() (what to show when it does not come up)."""

    name = "gateway"
    ready_path = "/open/x"      # a path that answers 200 without keygate

    def startup_log(self):
        return ""

    def wait_ready(self, timeout=10):
        """Waits until ready_path answers 200; raises if the process exits
        first or the deadline passes."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("%s exited with %s:\n%s" % (
                    self.name, self.proc.returncode, self.startup_log()))
            try:
                if self.request(self.ready_path, timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("%s did not answer on port %d" % (self.name, self.port))
            time.sleep(0.02)

    def start_or_close(self):
        """start(), and on any failure close() before raising (the temp dir
        goes, the process if any is stopped)."""
        try:
            self.start()
        except BaseException:
            self.close()
            raise

    def stop_proc(self, sig, timeout=10):
        """Sends sig, waits (then SIGKILL); returns the exit status, None if
        it was not running."""
        p = self.proc
        if p is None:
            return None
        rc, _ = stop_process(p, sig, timeout)
        self.proc = None
        return rc

    def close(self):
        self.stop()
        if os.environ.get("KGTEST_KEEP"):
            print("%s: kept %s" % (self.name, self.tmp))
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- requests --------------------------------------------------------

    def request(self, path, headers=None, method="GET", body=None, timeout=10):
        """One request on a fresh connection: (status, headers, body bytes)."""
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            data = r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, data
        finally:
            c.close()

    def get_json(self, path, headers=None, **kw):
        """A request whose answer is JSON (a refusal): (status, dict, headers)."""
        status, h, body = self.request(path, headers, **kw)
        try:
            doc = json.loads(body)
        except ValueError:
            doc = {"_raw": body.decode("utf-8", "replace")}
        return status, doc, h

    def get_echo(self, path, headers=None, **kw):
        """A request expected to reach the upstream: (status, {name: value}
        as the upstream saw the X-Kg-* headers, or the refusal JSON)."""
        status, h, body = self.request(path, headers, **kw)
        if status != 200:
            try:
                return status, json.loads(body)
            except ValueError:
                return status, {"_raw": body.decode("utf-8", "replace")}
        seen = {}
        for line in body.decode().splitlines():
            k, _, v = line.partition("=")
            seen[k] = v
        return status, seen
