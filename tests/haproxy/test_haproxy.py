#!/usr/bin/env python3
"""keygate-spoa end to end: a real haproxy with the SPOE filter, the built
agent, a real redis-server and a real keygated, all started here
(tests/lib/kgtest.py, tests/haproxy/kghaproxy.py) on loopback ports and
Unix sockets in temp dirs, stopped by PID.

Run one class per CTest test, e.g.:
    python3 test_haproxy.py -v Decisions
"""

import os
import signal
import socket
import struct
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
sys.path.insert(0, os.path.join(HERE, "..", "nginx"))
sys.path.insert(0, HERE)

import kgtest  # noqa: E402
import kgnginx  # noqa: E402  (catalog(), fake_token(), setup_accounts())
import kghaproxy  # noqa: E402


def bearer(token):
    return {"Authorization": "Bearer " + token}


def gen_headers(token, model="small", inp=1000, out=1000, request_id=None):
    h = bearer(token)
    h.update({"X-Model": model, "X-Input-Tokens": str(inp), "X-Output-Tokens": str(out)})
    if request_id is not None:
        h["X-Request-Id"] = request_id
    return h


class Base(unittest.TestCase):
    extra_config = None     # extra lines for the keygate config file
    processing = "5s"

    @classmethod
    def setUpClass(cls):
        cls.env = kgtest.Env(catalog=kgnginx.catalog(), extra_config=cls.extra_config)
        cls.agent = cls.hap = None
        try:
            cls.c = cls.env.client()
            cls.agent = kghaproxy.Agent(cls.env.config_path, tmp=cls.env.tmp)
            cls.hap = kghaproxy.Haproxy(cls.agent.haproxy_address, processing=cls.processing)
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        if cls.hap is not None:
            cls.hap.close()
        rc = cls.agent.stop() if cls.agent is not None else None
        log = cls.agent.log() if cls.agent is not None else ""
        if os.environ.get("KGTEST_LOG"):
            print("---- keygate-spoa log ----\n" + log[-6000:])
        cls.env.close()
        bad = [l for l in log.splitlines() if any(m in l for m in kgtest.Env.SANITIZER_MARKS)]
        if bad:
            raise AssertionError("memory errors in keygate-spoa's log:\n" + "\n".join(bad[:20]))
        if rc not in (None, 0):
            raise AssertionError("keygate-spoa exited with %r on SIGTERM:\n%s" % (rc, log[-4000:]))

    def accounts(self, credit_micros=1_000_000):
        return kgnginx.setup_accounts(self.c, credit_micros)

    def balance(self, a):
        # right after a Redis restart keygated may still be reconnecting
        deadline = time.monotonic() + 10
        while True:
            r = self.c.call("wallet.get", a["user"], wallet=a["wallet"])
            if r.get("ok") or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.assertTrue(r.get("ok"), r)
        return r["result"]["balance_micros"]

    def estimate(self, service, model, **params):
        return self.c.ok("price.estimate", service=service, model=model,
                         params=params)["cost_micros"]

    def assertRefusal(self, status, doc, want_status, want_code=None):
        self.assertEqual(status, want_status, doc)
        self.assertIsInstance(doc.get("error"), str, doc)
        self.assertIsInstance(doc.get("message"), str, doc)
        self.assertTrue(doc["message"], doc)
        if want_code is not None:
            self.assertEqual(doc["error"], want_code, doc)


class Decisions(Base):
    """Each answer of the gateway, as an HTTP client sees it."""

    def test_free_service_passes_and_upstream_sees_key_and_user(self):
        a = self.accounts()
        status, seen = self.hap.get_echo("/stt/x", {**bearer(a["free_token"]),
                                                     "X-Audio-Seconds": "10"})
        self.assertEqual(status, 200, seen)
        self.assertEqual(seen["key"], a["free_key"])
        self.assertEqual(seen["user"], a["user"])
        self.assertEqual(seen["team"], a["team"])
        self.assertEqual(seen["status"], "ok")
        self.assertEqual(seen["cost"], "0")
        self.assertEqual(seen["balance"], "")     # no wallet on a free policy

    def test_x_api_key_header_is_accepted(self):
        a = self.accounts()
        status, seen = self.hap.get_echo("/stt/x", {"X-API-Key": a["free_token"]})
        self.assertEqual(status, 200, seen)
        self.assertEqual(seen["key"], a["free_key"])

    def test_payg_charge_equals_estimate_and_debits_wallet_exactly(self):
        a = self.accounts(credit_micros=1_000_000)
        cost = self.estimate("text-generation", "small", input_tokens=1234, output_tokens=567)
        self.assertGreater(cost, 0)
        status, seen = self.hap.get_echo("/gen/x", gen_headers(a["paid_token"], inp=1234, out=567))
        self.assertEqual(status, 200, seen)
        self.assertEqual(int(seen["cost"]), cost)
        self.assertEqual(int(seen["balance"]), 1_000_000 - cost)
        self.assertEqual(self.balance(a), 1_000_000 - cost)
        self.assertEqual(seen["key"], a["paid_key"])
        # ten more: exactly ten more charges
        for _ in range(10):
            self.assertEqual(self.hap.get_echo("/gen/x", gen_headers(a["paid_token"], inp=1234, out=567))[0], 200)
        self.assertEqual(self.balance(a), 1_000_000 - 11 * cost)
        ledger = self.c.ok("wallet.ledger", a["user"], wallet=a["wallet"], limit=100)["entries"]
        debits = [e for e in ledger if e["type"] == "debit"]
        self.assertEqual(len(debits), 11, ledger[:3])
        self.assertEqual(sum(abs(e["amount_micros"]) for e in debits), 11 * cost)

    def test_missing_token_is_401_json_with_www_authenticate(self):
        status, doc, h = self.hap.get_json("/stt/x")
        self.assertRefusal(status, doc, 401, "token_malformed")
        self.assertEqual(h.get("content-type"), "application/json")
        self.assertIn("Bearer", h.get("www-authenticate", ""))
        status, doc, _ = self.hap.get_json("/stt/x", {"Authorization": "Basic dXNlcjpwdw=="})
        self.assertRefusal(status, doc, 401, "token_malformed")

    def test_bad_tokens_are_401(self):
        a = self.accounts()
        bad = a["free_token"][:-1] + ("A" if a["free_token"][-1] != "A" else "B")
        for tok in ("kg_short", bad, "x" * 300):
            status, doc, _ = self.hap.get_json("/stt/x", bearer(tok))
            self.assertRefusal(status, doc, 401, "token_malformed")
        status, doc, _ = self.hap.get_json("/stt/x", bearer(kgnginx.fake_token()))
        self.assertRefusal(status, doc, 401, "token_unknown")

    def test_rotated_away_token_is_401(self):
        a = self.accounts()
        self.assertEqual(self.hap.get_echo("/stt/x", bearer(a["free_token"]))[0], 200)
        new = self.c.ok("token.rotate", a["user"], key=a["free_key"])["token"]
        deadline = time.monotonic() + 1.0
        while True:
            status, doc, _ = self.hap.get_json("/stt/x", bearer(a["free_token"]))
            if status == 401 or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        self.assertRefusal(status, doc, 401)
        self.assertEqual(self.hap.get_echo("/stt/x", bearer(new))[0], 200)

    def test_revoked_key_is_401_within_one_second(self):
        a = self.accounts()
        h = gen_headers(a["paid_token"], inp=10, out=10)
        for _ in range(3):                    # warm the agent's cache
            self.assertEqual(self.hap.get_echo("/gen/x", h)[0], 200)
        before = self.balance(a)
        self.c.ok("key.revoke", a["user"], key=a["paid_key"])
        t0 = time.monotonic()
        while True:
            status, doc, _ = self.hap.get_json("/gen/x", h)
            elapsed = time.monotonic() - t0
            if status != 200 or elapsed > 2.0:
                break
            time.sleep(0.01)
        self.assertRefusal(status, doc, 401, "key_revoked")
        self.assertLess(elapsed, 1.0, "revoked key still accepted after %.3fs" % elapsed)
        charged_after = before - self.balance(a)
        # whatever passed in the race window was charged; nothing refused was
        self.assertEqual(self.hap.get_json("/gen/x", h)[0], 401)
        self.assertEqual(before - self.balance(a), charged_after)

    def test_service_not_enabled_on_key_is_403(self):
        a = self.accounts()
        status, doc, _ = self.hap.get_json("/gen/x", gen_headers(a["free_token"]))
        self.assertRefusal(status, doc, 403, "service_disabled")

    def test_unknown_model_or_not_allowed_is_refused(self):
        a = self.accounts()
        status, doc, _ = self.hap.get_json("/gen/x", gen_headers(a["paid_token"], model="large"))
        self.assertIn(status, (400, 403), doc)
        self.assertNotEqual(doc["error"], "service_disabled")
        self.assertEqual(self.balance(a), 1_000_000)

    def test_insufficient_funds_is_402_with_balance_and_cost(self):
        a = self.accounts(credit_micros=100)
        cost = self.estimate("text-generation", "small", input_tokens=1000, output_tokens=0)
        self.assertEqual(cost, 150)
        status, doc, _ = self.hap.get_json("/gen/x", gen_headers(a["paid_token"], inp=1000, out=0))
        self.assertRefusal(status, doc, 402, "insufficient_funds")
        self.assertEqual(doc.get("balance_micros"), 100, doc)
        self.assertEqual(doc.get("cost_micros"), cost, doc)
        self.assertEqual(self.balance(a), 100)

    def test_empty_wallet_is_402(self):
        a = self.accounts(credit_micros=0)
        status, doc, _ = self.hap.get_json("/gen/x", gen_headers(a["paid_token"], inp=1, out=1))
        self.assertRefusal(status, doc, 402, "insufficient_funds")
        self.assertEqual(doc.get("balance_micros"), 0, doc)
        self.assertEqual(self.balance(a), 0)

    def test_unknown_service_is_refused(self):
        """A service keygate does not sell on this key: 403 like nginx
        (service_disabled), or 400 when the catalog does not know it."""
        a = self.accounts()
        status, doc, _ = self.hap.get_json("/tiny/x", gen_headers(a["paid_token"]))
        self.assertRefusal(status, doc, 403, "service_disabled")

    def test_free_quota_used_up_is_429(self):
        a = self.accounts()
        for i in range(3):
            status, seen = self.hap.get_echo("/tiny/x", bearer(a["free_token"]))
            self.assertEqual(status, 200, (i, seen))
        status, doc, _ = self.hap.get_json("/tiny/x", bearer(a["free_token"]))
        self.assertRefusal(status, doc, 429, "quota_exceeded")

    def test_rate_limited_is_429_with_retry_after(self):
        a = self.accounts()
        self.c.ok("key.update", a["user"], key=a["paid_key"],
                  rate_limits={"text-generation": {"per_minute": 1}})
        time.sleep(0.05)
        h = gen_headers(a["paid_token"], inp=10, out=10)
        self.assertEqual(self.hap.get_echo("/gen/x", h)[0], 200)
        status, doc, hdrs = self.hap.get_json("/gen/x", h)
        self.assertRefusal(status, doc, 429, "rate_limited")
        self.assertTrue(1 <= int(hdrs["retry-after"]) <= 60, hdrs)

    def test_new_statuses_keep_their_http_status(self):
        a = self.accounts()
        self.c.ok("key.update", a["user"], key=a["paid_key"], budget_day_micros=1)
        time.sleep(0.05)
        status, doc, _ = self.hap.get_json("/gen/x", gen_headers(a["paid_token"], inp=10, out=10))
        self.assertRefusal(status, doc, 402, "budget_exceeded")
        self.c.ok("key.update", a["user"], key=a["paid_key"], budget_day_micros=None,
                  expires_at=kgtest.now_ms() + 300)
        time.sleep(0.4)
        status, doc, _ = self.hap.get_json("/gen/x", gen_headers(a["paid_token"], inp=10, out=10))
        self.assertRefusal(status, doc, 401, "key_expired")

    def test_same_request_id_twice_is_charged_once(self):
        a = self.accounts(credit_micros=1_000_000)
        h = gen_headers(a["paid_token"], inp=2000, out=1000,
                        request_id="req-%s" % os.urandom(4).hex())
        s1, seen1 = self.hap.get_echo("/gen/x", h)
        s2, seen2 = self.hap.get_echo("/gen/x", h)
        self.assertEqual((s1, s2), (200, 200), (seen1, seen2))
        cost = self.estimate("text-generation", "small", input_tokens=2000, output_tokens=1000)
        self.assertEqual(int(seen1["cost"]), cost)
        self.assertEqual(int(seen2["cost"]), 0)
        self.assertEqual(self.balance(a), 1_000_000 - cost)

    def test_param_that_is_not_an_integer_is_400(self):
        a = self.accounts()
        for v in ("abc", "12x", "-", "99999999999999999999999"):
            status, doc, _ = self.hap.get_json("/gen/x", gen_headers(a["paid_token"], inp=v))
            self.assertRefusal(status, doc, 400, "bad_request")
            self.assertIn("input_tokens", doc["message"])
        status, doc, _ = self.hap.get_json("/gen/x", gen_headers(a["paid_token"], inp=-5))
        self.assertRefusal(status, doc, 400)
        self.assertEqual(self.balance(a), 1_000_000)

    def test_open_path_needs_no_token(self):
        status, seen = self.hap.get_echo("/open/x")
        self.assertEqual(status, 200, seen)
        self.assertEqual(seen["key"], "")

    def test_many_requests_in_flight_at_once(self):
        """Pipelined NOTIFYs on the agent's connections: 40 concurrent
        clients, every one answered and charged exactly once."""
        import threading
        a = self.accounts(credit_micros=10_000_000)
        cost = self.estimate("text-generation", "small", input_tokens=100, output_tokens=100)
        results = []

        def one(i):
            results.append(self.hap.get_echo("/gen/x", gen_headers(a["paid_token"], inp=100, out=100))[0])
        threads = [threading.Thread(target=one, args=(i,)) for i in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        self.assertEqual(results, [200] * 40)
        self.assertEqual(self.balance(a), 10_000_000 - 40 * cost)

    def test_zz_no_token_in_any_log(self):
        a = self.accounts()
        self.hap.get_echo("/stt/x", bearer(a["free_token"]))
        self.hap.get_echo("/gen/x", gen_headers(a["paid_token"]))
        self.hap.get_echo("/gen/x", {"X-API-Key": a["paid_token"][:-2] + "zz"})
        logs = self.agent.log() + self.hap.log()
        for tok in (a["free_token"], a["paid_token"]):
            self.assertNotIn(tok[3:20], logs)


class RedisOutage(Base):
    """Fail closed when Redis is gone, charge nothing, recover on its own."""

    extra_config = ["timeout_ms 200"]

    def test_redis_down_is_503_and_nothing_charged_then_recovers(self):
        a = self.accounts()
        h = gen_headers(a["paid_token"], inp=10, out=10)
        cost = self.estimate("text-generation", "small", input_tokens=10, output_tokens=10)
        self.assertEqual(self.hap.get_echo("/gen/x", h)[0], 200)
        before = self.balance(a)
        self.assertEqual(before, 1_000_000 - cost)

        self.env.stop_redis(save=True)
        for path, hh in (("/gen/x", h), ("/stt/x", bearer(a["free_token"]))):
            for _ in range(3):
                t0 = time.monotonic()
                status, doc, _ = self.hap.get_json(path, hh)
                self.assertRefusal(status, doc, 503, "backend_error")
                self.assertLess(time.monotonic() - t0, 2.0)
        self.assertEqual(self.hap.get_echo("/open/x")[0], 200)

        self.env.start_redis()
        self.assertEqual(self.balance(a), before, "a refused request was charged")
        deadline = time.monotonic() + 10
        while True:
            status, seen = self.hap.get_echo("/gen/x", h)
            if status == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.assertEqual(status, 200, seen)
        self.assertEqual(self.balance(a), before - cost)
        self.assertTrue(self.agent.alive())


class AgentRestart(Base):
    """haproxy without its agent answers 503 (fail closed); a restarted
    agent serves again, over new connections."""

    processing = "2s"

    def test_agent_stopped_is_503_and_restart_recovers(self):
        a = self.accounts()
        h = gen_headers(a["paid_token"], inp=10, out=10)
        self.assertEqual(self.hap.get_echo("/gen/x", h)[0], 200)
        before = self.balance(a)

        self.assertEqual(self.agent.stop(signal.SIGTERM), 0)
        self.assertIn("stopped", self.agent.log())
        for _ in range(3):
            status, doc, _ = self.hap.get_json("/gen/x", h)
            self.assertRefusal(status, doc, 503)
        self.assertEqual(self.balance(a), before)

        self.agent.start()
        deadline = time.monotonic() + 10
        while True:
            status, seen = self.hap.get_echo("/gen/x", h)
            if status == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.assertEqual(status, 200, seen)

    def test_agent_killed_hard_then_restarted(self):
        a = self.accounts()
        h = gen_headers(a["paid_token"], inp=10, out=10)
        self.assertEqual(self.hap.get_echo("/gen/x", h)[0], 200)
        self.agent.stop(signal.SIGKILL)
        status, doc, _ = self.hap.get_json("/gen/x", h)
        self.assertRefusal(status, doc, 503)
        self.agent.start()        # the stale socket file is replaced
        deadline = time.monotonic() + 10
        while True:
            status, seen = self.hap.get_echo("/gen/x", h)
            if status == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.assertEqual(status, 200, seen)

    def test_refuses_to_replace_a_file_that_is_not_a_socket(self):
        path = os.path.join(self.env.tmp, "not-a-socket")
        with open(path, "w") as f:
            f.write("keep me\n")
        ag = kghaproxy.Agent(self.env.config_path, start=False)
        self.addCleanup(ag.close)
        ag.address = "unix:" + path
        with self.assertRaises(RuntimeError):
            ag.start()
        with open(path) as f:
            self.assertEqual(f.read(), "keep me\n")

    def test_bad_config_fails_to_start(self):
        bad = os.path.join(self.env.tmp, "bad.conf")
        with open(bad, "w") as f:
            f.write("no_such_key 1\n")
        ag = kghaproxy.Agent(bad, start=False)
        self.addCleanup(ag.close)
        with self.assertRaises(RuntimeError):
            ag.start()
        self.assertIn("no_such_key", ag.log())


# ---------------------------------------------------------------------------
# SPOP spoken by hand (doc/SPOE.txt §3), for frames haproxy never sends
# ---------------------------------------------------------------------------

def varint(v):
    if v < 240:
        return bytes([v])
    out = [(v & 0xFF) | 0xF0]
    v = (v - 240) >> 4
    while v >= 128:
        out.append((v & 0xFF) | 0x80)
        v = (v - 128) >> 7
    out.append(v)
    return bytes(out)


def get_varint(b, i):
    v = b[i]
    i += 1
    if v < 240:
        return v, i
    shift = 4
    while True:
        c = b[i]
        i += 1
        v += c << shift
        shift += 7
        if c < 128:
            return v, i


def sstr(s):
    s = s.encode() if isinstance(s, str) else s
    return varint(len(s)) + s


def t_str(s):
    return b"\x08" + sstr(s)


def t_u32(v):
    return b"\x03" + varint(v)


def t_i64(v):
    return b"\x04" + varint(v & 0xFFFFFFFFFFFFFFFF)


def frame(ftype, payload, flags=1, sid=0, fid=0):
    body = bytes([ftype]) + struct.pack(">I", flags) + varint(sid) + varint(fid) + payload
    return struct.pack(">I", len(body)) + body


def kv(**items):
    return b"".join(sstr(k.replace("_", "-")) + v for k, v in items.items())


def hello(max_frame=16380, versions="2.0", caps="pipelining", healthcheck=None):
    items = {"supported_versions": t_str(versions), "max_frame_size": t_u32(max_frame),
             "capabilities": t_str(caps)}
    if healthcheck is not None:
        items["healthcheck"] = b"\x11" if healthcheck else b"\x01"
    return frame(1, kv(**items))


def notify(sid, fid, args, name="keygate"):
    payload = sstr(name) + bytes([len(args)]) + b"".join(sstr(k) + v for k, v in args)
    return frame(3, payload, sid=sid, fid=fid)


class Peer:
    """A raw connection to the agent's socket."""

    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(5)
        self.s.connect(path)
        self.buf = b""

    def send(self, data):
        self.s.sendall(data)

    def read_frame(self):
        """(type, flags, sid, fid, payload), or None when the agent closed."""
        while True:
            if len(self.buf) >= 4:
                n = struct.unpack(">I", self.buf[:4])[0]
                if len(self.buf) >= 4 + n:
                    f, self.buf = self.buf[4:4 + n], self.buf[4 + n:]
                    ftype, flags = f[0], struct.unpack(">I", f[1:5])[0]
                    sid, i = get_varint(f, 5)
                    fid, i = get_varint(f, i)
                    return ftype, flags, sid, fid, f[i:]
            try:
                chunk = self.s.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return None
            self.buf += chunk

    def closed(self):
        try:
            while True:
                chunk = self.s.recv(65536)
                if not chunk:
                    return True
        except socket.timeout:
            return False
        except ConnectionResetError:
            return True

    def close(self):
        self.s.close()


def parse_kv(payload):
    out, i = {}, 0
    while i < len(payload):
        n, i = get_varint(payload, i)
        name = payload[i:i + n].decode()
        i += n
        t = payload[i] & 0x0F
        i += 1
        if t in (2, 3, 4, 5):
            v, i = get_varint(payload, i)
        elif t in (8, 9):
            n, i = get_varint(payload, i)
            v = payload[i:i + n].decode("utf-8", "replace")
            i += n
        elif t in (0, 1):
            v = None
        else:
            raise ValueError("type %d" % t)
        out[name] = v
    return out


def parse_actions(payload):
    """{var name: value} of the set-var actions of an ACK."""
    out, i = {}, 0
    while i < len(payload):
        action, nargs, scope = payload[i], payload[i + 1], payload[i + 2]
        assert (action, nargs, scope) == (1, 3, 2), payload[i:i + 3]
        i += 3
        n, i = get_varint(payload, i)
        name = payload[i:i + n].decode()
        i += n
        t = payload[i] & 0x0F
        i += 1
        if t == 4:
            v, i = get_varint(payload, i)
            if v >= 1 << 63:
                v -= 1 << 64
        elif t == 8:
            n, i = get_varint(payload, i)
            v = payload[i:i + n].decode()
            i += n
        else:
            raise ValueError("type %d" % t)
        out[name] = v
    return out


class Protocol(Base):
    """SPOP frames haproxy would not send: the agent answers each with the
    right DISCONNECT status (or ACK), never crashes, and keeps serving."""

    def peer(self):
        p = Peer(self.agent.sock)
        self.addCleanup(p.close)
        return p

    def handshake(self, max_frame=16380):
        p = self.peer()
        p.send(hello(max_frame))
        f = p.read_frame()
        self.assertEqual(f[0], 101, f)
        h = parse_kv(f[4])
        self.assertEqual(h["version"], "2.0")
        self.assertEqual(h["capabilities"], "pipelining")
        return p, h

    def expect_disconnect(self, p, status):
        f = p.read_frame()
        self.assertIsNotNone(f, "closed without AGENT-DISCONNECT")
        self.assertEqual(f[0], 102, f)
        d = parse_kv(f[4])
        self.assertEqual(d["status-code"], status, d)
        self.assertTrue(p.closed(), "still open after AGENT-DISCONNECT")

    def tearDown(self):
        self.assertTrue(self.agent.alive(), "keygate-spoa died:\n" + self.agent.log()[-3000:])
        a = kgnginx.setup_accounts(self.c)
        self.assertEqual(self.hap.get_echo("/stt/x", bearer(a["free_token"]))[0], 200)

    def test_hello_negotiates_the_smaller_frame_size(self):
        _, h = self.handshake(300)
        self.assertEqual(h["max-frame-size"], 300)
        _, h = self.handshake(1 << 30)
        self.assertEqual(h["max-frame-size"], 16380)

    def test_health_check_hello_is_answered_then_closed(self):
        p = self.peer()
        p.send(hello(healthcheck=True))
        self.assertEqual(p.read_frame()[0], 101)
        self.assertTrue(p.closed())

    def test_bad_hellos(self):
        cases = [
            (frame(1, kv(max_frame_size=t_u32(16380), capabilities=t_str(""))), 5),
            (frame(1, kv(supported_versions=t_str("2.0"), capabilities=t_str(""))), 6),
            (frame(1, kv(supported_versions=t_str("2.0"), max_frame_size=t_u32(16380))), 7),
            (hello(versions="1.0, 3.1"), 8),
            (hello(versions="garbage"), 8),
            (hello(max_frame=100), 9),
            (notify(1, 1, []), 4),                              # NOTIFY before HELLO
            (frame(1, b"\x05abc"), 4),                          # truncated KV list
            (frame(1, kv(supported_versions=b"\x0f")), 4),      # reserved type
            (frame(1, hello()[9:], flags=0), 10),               # fragmented HELLO
        ]
        for data, status in cases:
            with self.subTest(status=status, data=data[:24]):
                p = self.peer()
                p.send(data)
                self.expect_disconnect(p, status)

    def test_frame_above_max_frame_size_is_refused_unread(self):
        p, _ = self.handshake(1000)
        p.send(struct.pack(">I", 1001))           # the length alone
        self.expect_disconnect(p, 3)
        p = self.peer()
        p.send(struct.pack(">I", 0xFFFFFFFF))     # before the HELLO too
        self.expect_disconnect(p, 3)

    def test_malformed_notifies(self):
        bad = [
            frame(3, b"", sid=1, fid=1),                               # empty: fine (no messages)
            frame(3, sstr("keygate"), sid=1, fid=1),                   # no NB-ARGS
            frame(3, sstr("keygate") + b"\x02" + sstr("service") + t_str("x"), sid=1, fid=1),
            frame(3, sstr("keygate") + b"\x01" + sstr("service") + b"\x08\xff\xff", sid=1, fid=1),
            frame(3, sstr("keygate") + b"\x01" + sstr("service") + b"\x04\xf0\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", sid=1, fid=1),
            frame(3, sstr("other") + b"\x01" + sstr("a") + b"\x0c", sid=1, fid=1),
            frame(3, b"\xf0", sid=1, fid=1),                           # truncated varint
            frame(0, b"", flags=0, sid=1, fid=1),                      # a fragment
            frame(3, sstr("keygate") + b"\x00", flags=0, sid=1, fid=1),  # fragmented NOTIFY
            frame(1, hello()[9:]),                                     # a second HELLO
            b"\x00\x00\x00\x03abc",                                    # frame shorter than its header
        ]
        want = [None, 4, 4, 4, 4, 4, 4, 10, 10, 4, 4]
        for data, status in zip(bad, want):
            with self.subTest(data=data[:30]):
                p, _ = self.handshake()
                p.send(data)
                if status is None:
                    f = p.read_frame()
                    self.assertEqual((f[0], f[2], f[3], f[4]), (103, 1, 1, b""))
                else:
                    self.expect_disconnect(p, status)

    def test_random_garbage_never_crashes_the_agent(self):
        import random
        rnd = random.Random(1234)
        for i in range(120):
            p = Peer(self.agent.sock)
            try:
                if i % 2:
                    p.send(hello())
                    p.read_frame()
                n = rnd.randrange(1, 200)
                body = bytes(rnd.randrange(256) for _ in range(n))
                if i % 3:
                    body = bytes([rnd.choice((1, 2, 3, 0, 99))]) + b"\x00\x00\x00\x01" + body
                p.send(struct.pack(">I", len(body)) + body)
                p.s.settimeout(0.2)
                p.closed()
            except (BrokenPipeError, ConnectionResetError):
                pass
            finally:
                p.close()
        self.assertTrue(self.agent.alive())

    def test_ids_are_echoed_and_unknown_frames_skipped(self):
        p, _ = self.handshake()
        ids = [0, 1, 239, 240, 255, 2287, 2288, 264431, 264432, 33818863, 33818864,
               2 ** 32, 2 ** 63 - 1, 2 ** 64 - 1]
        p.send(frame(77, b"whatever", sid=5, fid=5))           # unknown type: skipped
        for n, sid in enumerate(ids):
            p.send(notify(sid, n, [("service", t_str("speech-to-text")), ("token", t_str("kg_bad"))]))
        got = []
        for _ in ids:
            f = p.read_frame()
            self.assertEqual(f[0], 103, f)
            self.assertEqual(f[1] & 1, 1)                        # FIN
            acts = parse_actions(f[4])
            self.assertEqual(acts["status"], "token_malformed")
            self.assertEqual(acts["http_status"], 401)
            got.append((f[2], f[3]))
        self.assertEqual(sorted(got), sorted((sid, n) for n, sid in enumerate(ids)))

    def test_haproxy_disconnect_is_answered(self):
        p, _ = self.handshake()
        p.send(frame(2, kv(status_code=t_u32(0), message=t_str("bye"))))
        self.expect_disconnect(p, 0)

    def test_args_by_hand(self):
        """Integer params, a missing service, a non-string token."""
        a = kgnginx.setup_accounts(self.c)
        cost = self.estimate("text-generation", "small", input_tokens=3000, output_tokens=0)
        p, _ = self.handshake()
        p.send(notify(9, 1, [("token", t_str(a["paid_token"])), ("service", t_str("text-generation")),
                              ("model", t_str("small")), ("param.input_tokens", t_i64(3000)),
                              ("param.output_tokens", b"\x00")]))
        acts = parse_actions(p.read_frame()[4])
        self.assertEqual((acts["status"], acts["cost_micros"]), ("ok", cost), acts)
        self.assertEqual(acts["balance_micros"], 1_000_000 - cost)
        p.send(notify(9, 2, [("token", t_str(a["paid_token"]))]))
        acts = parse_actions(p.read_frame()[4])
        self.assertEqual(acts["http_status"], 400, acts)
        p.send(notify(9, 3, [("token", t_i64(5)), ("service", t_str("speech-to-text"))]))
        acts = parse_actions(p.read_frame()[4])
        self.assertEqual(acts["http_status"], 400, acts)
        p.send(notify(9, 4, [("token", t_str(a["paid_token"])), ("service", t_str("text-generation")),
                              ("model", t_str("small"))] +
                             [("param.p%d" % i, t_i64(1)) for i in range(17)]))
        acts = parse_actions(p.read_frame()[4])
        self.assertEqual(acts["http_status"], 400, acts)
        self.assertEqual(self.balance(a), 1_000_000 - cost)

    def test_small_frame_size_still_carries_the_decision(self):
        a = kgnginx.setup_accounts(self.c, credit_micros=0)
        p, h = self.handshake(256)
        p.send(notify(1, 1, [("token", t_str(a["paid_token"])), ("service", t_str("text-generation")),
                              ("model", t_str("small")), ("param.input_tokens", t_i64(1000))]))
        f = p.read_frame()
        self.assertLessEqual(len(f[4]) + 7, 256)
        acts = parse_actions(f[4])
        self.assertEqual((acts["status"], acts["http_status"]), ("insufficient_funds", 402))


class Valgrind(Base):
    """The agent under valgrind memcheck: a few decisions, a Redis outage,
    malformed frames, then SIGTERM: no memory error, no leak."""

    extra_config = ["timeout_ms 500"]

    @classmethod
    def setUpClass(cls):
        if not os.environ.get("KEYGATE_SPOA_WRAPPER"):
            os.environ["KEYGATE_SPOA_WRAPPER"] = (
                "valgrind --quiet --leak-check=full --show-leak-kinds=definite,indirect "
                "--errors-for-leak-kinds=definite,indirect --error-exitcode=99")
        super().setUpClass()

    def test_decisions_outage_and_garbage_under_valgrind(self):
        a = self.accounts()
        h = gen_headers(a["paid_token"], inp=1000, out=1000)
        cost = self.estimate("text-generation", "small", input_tokens=1000, output_tokens=1000)
        self.assertEqual(self.hap.get_echo("/gen/x", h)[0], 200)
        self.assertEqual(self.hap.get_echo("/stt/x", bearer(a["free_token"]))[0], 200)
        self.assertEqual(self.hap.get_json("/stt/x", bearer("kg_short"))[0], 401)
        self.assertEqual(self.hap.get_json("/gen/x", gen_headers(a["free_token"]))[0], 403)
        self.assertEqual(self.hap.get_json("/gen/x", gen_headers(a["paid_token"], inp="x"))[0], 400)
        self.assertEqual(self.balance(a), 1_000_000 - cost)
        for data in (struct.pack(">I", 1 << 20), hello(versions="9.9"), frame(1, b"\xf0")):
            p = Peer(self.agent.sock)
            p.send(data)
            p.closed()
            p.close()
        p = Peer(self.agent.sock)
        p.send(hello())
        p.read_frame()
        p.send(notify(1, 1, [("service", t_str("x")), ("token", t_str("kg_x"))]))
        p.read_frame()
        p.close()                                    # haproxy gone without DISCONNECT
        self.env.stop_redis(save=True)
        self.assertEqual(self.hap.get_json("/gen/x", h, timeout=30)[0], 503)
        self.env.start_redis()
        deadline = time.monotonic() + 20
        while self.hap.get_echo("/gen/x", h, timeout=30)[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        self.assertEqual(self.balance(a), 1_000_000 - 2 * cost)
        rc = self.agent.stop()
        self.assertEqual(rc, 0, self.agent.log()[-6000:])


if __name__ == "__main__":
    unittest.main()
