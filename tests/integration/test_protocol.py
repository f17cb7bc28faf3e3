"""Framing and bad input on the admin socket (SPEC §2, docs/protocol.md):
malformed JSON, wrong types, missing fields, unknown command, unknown actor,
the line limit, pipelining, ids echoed, 200 concurrent connections, a stalled
half line, idle timeout, socket mode, stale socket, clean shutdown."""
import json
import os
import signal
import socket
import stat
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import kgtest  # noqa: E402
from kgtest import signup  # noqa: E402

MAX_LINE = 65536


def padded_ping(total_len, id_=None):
    """A ping request line of exactly total_len bytes (newline excluded)."""
    base = {"cmd": "ping", "pad": ""}
    if id_ is not None:
        base["id"] = id_
    n = total_len - len(json.dumps(base, separators=(",", ":")))
    base["pad"] = "x" * n
    line = json.dumps(base, separators=(",", ":")).encode()
    assert len(line) == total_len
    return line


class Protocol(kgtest.EnvCase):

    def assert_bad_then_usable(self, raw, code="bad_request"):
        c = self.env.client()
        c.send_raw(raw)
        r = json.loads(c.read_line())
        self.assertEqual(r["ok"], False, (raw, r))
        self.assertEqual(r["error"]["code"], code, (raw, r))
        self.assertIsInstance(r["error"]["message"], str)
        self.assertEqual(c.call("ping", id=7), {"id": 7, "ok": True, "result": {}}, raw)
        c.close()

    def test_malformed_json(self):
        for raw in (b"{not json\n", b"{\"cmd\": \"ping\"\n", b"}\n", b"\"\n", b"nul\n",
                    b"{\"cmd\": \"ping\"} trailing\n"):
            self.assert_bad_then_usable(raw)

    def test_not_an_object(self):
        for raw in (b"[1,2]\n", b"\"ping\"\n", b"42\n", b"null\n", b"true\n"):
            self.assert_bad_then_usable(raw)

    def test_invalid_utf8(self):
        self.assert_bad_then_usable(b"{\"cmd\": \"ping\", \"x\": \"\xff\xfe\"}\n")

    def test_utf8_round_trip(self):
        s = signup(self.c, name="Zoë Ωmega 漢字 🚀")
        t = self.c.ok("team.get", s["user_id"], team=s["team_id"])
        self.assertEqual(t["members"][0]["name"], "Zoë Ωmega 漢字 🚀")
        k = self.c.ok("key.create", s["user_id"], team=s["team_id"], name="ключ", description="é\n\"q\"")
        self.assertEqual((k["name"], k["description"]), ("ключ", "é\n\"q\""))

    def test_cmd_missing_or_ill_typed(self):
        self.assert_bad_then_usable(b"{\"id\": 1}\n")
        self.assert_bad_then_usable(b"{\"cmd\": 5}\n")
        self.assert_bad_then_usable(b"{\"cmd\": null}\n")
        self.assert_bad_then_usable(b"{\"cmd\": [\"ping\"]}\n")

    def test_id_echoed_on_bad_request(self):
        # a JSON object with an id but a bad field: the error carries the id
        c = self.env.client()
        c.send_raw(b'{"id": 9, "cmd": 5}\n{"id": "x", "cmd": "key.get", "actor": 5}\n')
        r = json.loads(c.read_line())
        self.assertEqual((r.get("id"), r["ok"], r["error"]["code"]), (9, False, "bad_request"))
        r = json.loads(c.read_line())
        self.assertEqual((r.get("id"), r["ok"]), ("x", False))
        self.assertIn(r["error"]["code"], ("unauthenticated", "bad_request"))

    def test_unknown_command(self):
        r = self.c.call("key.explode", id="u1")
        self.assertEqual(r["id"], "u1")
        self.assertEqual(r["ok"], False)
        self.assertEqual(r["error"]["code"], "unknown_command")
        self.assertEqual(self.c.err("", "u_x"), "unknown_command")
        self.assertEqual(self.c.ok("ping"), {})

    def test_unauthenticated(self):
        s = signup(self.c)
        for actor in (None, 5, "", "u_doesnotexist00", ["x"], {"user_id": s["user_id"]}):
            req = {"cmd": "team.get", "team": s["team_id"]}
            if actor is not None:
                req["actor"] = actor
            r = self.c.call_obj(req)
            self.assertEqual(r["ok"], False, actor)
            self.assertEqual(r["error"]["code"], "unauthenticated", (actor, r))
        self.assertEqual(self.c.err("key.create", "u_doesnotexist00", team=s["team_id"], name="x"),
                         "unauthenticated")
        self.assertEqual(len(self.c.ok("key.list", s["user_id"], team=s["team_id"])["keys"]), 1)

    def test_no_actor_commands(self):
        # ping, user.signup, service.list, price.estimate need no actor
        self.assertEqual(self.c.ok("ping"), {})
        self.assertIn("services", self.c.ok("service.list"))
        self.assertEqual(self.c.ok("price.estimate", service="speech-to-text", model="fast",
                                   params={})["cost_micros"], 100)

    def test_missing_fields(self):
        s = signup(self.c)
        a, team, key = s["user_id"], s["team_id"], s["free_key_id"]
        cases = [
            ("user.signup", None, {"name": "x"}),
            ("user.signup", None, {"email": kgtest.unique_email()}),
            ("team.get", a, {}),
            ("team.member.add", a, {"team": team, "role": "user"}),
            ("team.member.add", a, {"team": team, "user": a}),
            ("team.member.set_role", a, {"team": team, "user": a}),
            ("team.member.remove", a, {"team": team}),
            ("team.transfer_ownership", a, {"team": team}),
            ("price.estimate", None, {"model": "fast", "params": {}}),
            ("key.create", a, {"team": team}),
            ("key.create", a, {"name": "x"}),
            ("key.list", a, {}),
            ("key.get", a, {}),
            ("key.update", a, {}),
            ("key.users.set", a, {"key": key}),
            ("key.services.set", a, {"key": key}),
            ("key.revoke", a, {}),
            ("token.generate", a, {}),
            ("token.rotate", a, {}),
            ("wallet.create", a, {"team": team}),
            ("wallet.list", a, {}),
            ("wallet.get", a, {}),
            ("wallet.credit", a, {"amount_micros": 1, "reference": "r"}),
            ("wallet.ledger", a, {}),
            ("audit.list", a, {}),
        ]
        for cmd, actor, args in cases:
            self.assertEqual(self.c.err(cmd, actor, **args), "bad_request", (cmd, args))
        self.assertEqual(len(self.c.ok("key.list", a, team=team)["keys"]), 1)
        self.assertEqual(self.c.ok("wallet.list", a, team=team)["wallets"], [])

    def test_wrong_types(self):
        s = signup(self.c)
        a, team, key = s["user_id"], s["team_id"], s["free_key_id"]
        cases = [
            ("user.signup", None, {"email": 5, "name": "x"}),
            ("user.signup", None, {"email": kgtest.unique_email(), "name": ["x"]}),
            ("user.signup", None, {"email": kgtest.unique_email(), "name": "x", "team_name": 1}),
            ("team.get", a, {"team": 12}),
            ("team.member.add", a, {"team": team, "user": a, "role": 1}),
            ("key.create", a, {"team": team, "name": 5}),
            ("key.create", a, {"team": team, "name": "x", "description": False}),
            ("key.create", a, {"team": team, "name": "x", "users": a}),
            ("key.create", a, {"team": team, "name": "x", "users": [1]}),
            ("key.create", a, {"team": team, "name": "x", "services": []}),
            ("key.get", a, {"key": {"id": key}}),
            ("key.update", a, {"key": key, "description": 3}),
            ("key.users.set", a, {"key": key, "users": [a], "notify": "yes"}),
            ("key.users.set", a, {"key": key, "users": "all"}),
            ("key.services.set", a, {"key": key, "services": "speech-to-text"}),
            ("token.rotate", a, {"key": key, "user": 5}),
            ("wallet.create", a, {"team": team, "name": 1}),
            ("price.estimate", None, {"service": "speech-to-text", "model": "fast", "params": [1]}),
            ("price.estimate", None, {"service": 1, "model": "fast", "params": {}}),
            ("notification.list", a, {"limit": "10"}),
            ("audit.list", a, {"team": team, "limit": "10"}),
        ]
        for cmd, actor, args in cases:
            self.assertEqual(self.c.err(cmd, actor, **args), "bad_request", (cmd, args))
        k = self.c.ok("key.get", a, key=key)
        self.assertEqual((k["name"], k["users"]), (self.c.ok("key.get", a, key=key)["name"], [a]))
        self.assertEqual(len(self.c.ok("key.list", a, team=team)["keys"]), 1)

    def test_extra_fields_ignored(self):
        r = self.c.call_obj({"cmd": "ping", "id": "e", "whatever": [1, 2, {"x": None}]})
        self.assertEqual(r, {"id": "e", "ok": True, "result": {}})

    def test_ids_echoed(self):
        for id_ in ("s", 0, -5, 3.5, True, [1, "a"], {"n": {"m": [None]}}, "é"):
            r = self.c.call("ping", id=id_)
            self.assertEqual(r["id"], id_)
            r = self.c.call("no.such", id=id_)
            self.assertEqual(r["id"], id_)
            self.assertEqual(r["error"]["code"], "unknown_command")
        self.assertNotIn("id", self.c.call("ping"))
        self.assertNotIn("id", self.c.call("no.such"))

    def test_pipelined_in_order(self):
        s = signup(self.c)
        reqs = []
        n = 200  # 50 key.create: stays under 64 keys (see ManyKeys)
        for i in range(n):
            m = i % 4
            if m == 0:
                reqs.append({"id": i, "cmd": "ping"})
            elif m == 1:
                reqs.append({"id": i, "cmd": "key.create", "actor": s["user_id"],
                             "team": s["team_id"], "name": "p%d" % i})
            elif m == 2:
                reqs.append({"id": i, "cmd": "nope"})
            else:
                reqs.append({"id": i, "cmd": "key.get", "actor": s["user_id"], "key": s["free_key_id"]})
        blob = b"".join(json.dumps(r).encode() + b"\n" for r in reqs)
        # also a bad line in the middle, with no id
        blob = blob.replace(b"\n", b"\n{broken\n", 1)
        c = self.env.client()
        c.send_raw(blob)
        first = json.loads(c.read_line())
        self.assertEqual(first["id"], 0)
        bad = json.loads(c.read_line())
        self.assertEqual(bad["error"]["code"], "bad_request")
        self.assertNotIn("id", bad)
        for i in range(1, n):
            r = json.loads(c.read_line())
            self.assertEqual(r["id"], i)
            m = i % 4
            if m == 0:
                self.assertEqual(r["result"], {})
            elif m == 1:
                self.assertEqual(r["result"]["name"], "p%d" % i)
            elif m == 2:
                self.assertEqual(r["error"]["code"], "unknown_command")
            else:
                self.assertEqual(r["result"]["key_id"], s["free_key_id"])
        keys = self.c.ok("key.list", s["user_id"], team=s["team_id"])["keys"]
        self.assertEqual(len(keys), 1 + n // 4)

    def test_pipelined_byte_by_byte(self):
        c = self.env.client()
        blob = b'{"id":1,"cmd":"ping"}\n{"id":2,"cmd":"ping"}\n'
        for b in blob:
            c.send_raw(bytes([b]))
        self.assertEqual(json.loads(c.read_line())["id"], 1)
        self.assertEqual(json.loads(c.read_line())["id"], 2)

    def test_line_at_limit_accepted(self):
        c = self.env.client()
        c.send_raw(padded_ping(MAX_LINE, "big") + b"\n")
        self.assertEqual(json.loads(c.read_line()), {"id": "big", "ok": True, "result": {}})
        self.assertEqual(c.ok("ping"), {})

    def test_line_over_limit(self):
        c = self.env.client()
        c.send_raw(padded_ping(MAX_LINE + 1, "big") + b"\n")
        line = c.read_line()
        self.assertIsNotNone(line, "no error line before the close")
        r = json.loads(line)
        self.assertEqual(r["ok"], False)
        self.assertEqual(r["error"]["code"], "bad_request")
        self.assertTrue(c.is_closed(3.0), "connection not closed after an over-long line")
        # others unaffected
        self.assertEqual(self.c.ok("ping"), {})

    def test_line_over_limit_without_newline(self):
        c = self.env.client()
        try:
            c.send_raw(b'{"cmd":"ping","pad":"' + b"y" * (3 * MAX_LINE))
        except (BrokenPipeError, ConnectionResetError):
            pass
        line = c.read_line()
        self.assertIsNotNone(line)
        self.assertEqual(json.loads(line)["error"]["code"], "bad_request")
        self.assertTrue(c.is_closed(3.0))

    def test_200_concurrent_connections(self):
        n = 200
        conns = [self.env.client(timeout=30) for _ in range(n)]
        errors = []
        barrier = threading.Barrier(n)

        def work(i, c):
            try:
                barrier.wait(10)
                s = signup(c, name="C%d" % i)
                k = c.ok("key.create", s["user_id"], team=s["team_id"], name="k%d" % i, users=[s["user_id"]])
                g = c.ok("token.generate", s["user_id"], key=k["key_id"])
                assert g["key_id"] == k["key_id"]
                got = c.ok("key.get", s["user_id"], key=k["key_id"])
                assert got["tokens"][s["user_id"]]["token_id"] == g["token_id"]
                assert c.call("ping", id=i) == {"id": i, "ok": True, "result": {}}
            except Exception as e:  # noqa: BLE001
                errors.append("%d: %r" % (i, e))

        threads = [threading.Thread(target=work, args=(i, c)) for i, c in enumerate(conns)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual(errors, [])
        self.assertLess(time.monotonic() - t0, 45)
        for c in conns:
            c.close()

    def test_stalled_half_line_does_not_block(self):
        staller = self.env.client()
        staller.send_raw(b'{"id": "late", "cmd": "pi')
        s = signup(self.c)
        t0 = time.monotonic()
        other = self.env.client(timeout=2)
        for i in range(20):
            self.assertEqual(other.ok("key.get", s["user_id"], key=s["free_key_id"])["key_id"],
                             s["free_key_id"])
        self.assertLess(time.monotonic() - t0, 2.0)
        # the staller finishes its line: it is answered
        staller.send_raw(b'ng"}\n')
        self.assertEqual(json.loads(staller.read_line()), {"id": "late", "ok": True, "result": {}})

    def test_client_that_never_reads(self):
        # a client that pipelines a lot and never reads must not stall others:
        # measured against the same pings before the hog (a stalled daemon
        # would never answer; a busy machine only answers slower)
        other = self.env.client(timeout=30)
        t0 = time.monotonic()
        for _ in range(10):
            self.assertEqual(other.ok("ping"), {})
        baseline = time.monotonic() - t0
        hog = self.env.client()
        hog.sock.setblocking(False)
        sent = 0
        req = (json.dumps({"cmd": "service.list"}) + "\n").encode() * 200
        try:
            for _ in range(50):
                sent += hog.sock.send(req)
        except BlockingIOError:
            pass
        t0 = time.monotonic()
        for _ in range(10):
            self.assertEqual(other.ok("ping"), {})
        self.assertLess(time.monotonic() - t0, 3.0 + 20 * baseline)
        hog.close()
        self.assertEqual(self.c.ok("ping"), {})

    def test_abrupt_disconnects(self):
        s = signup(self.c)
        for i in range(50):
            c = kgtest.Client(self.env.socket_path)
            c.send_raw(json.dumps({"cmd": "key.create", "actor": s["user_id"], "team": s["team_id"],
                                   "name": "gone%d" % i}).encode() + b"\n" + b'{"cmd":"pi')
            c.sock.shutdown(socket.SHUT_RDWR)
            c.close()
        time.sleep(0.3)
        self.assertEqual(self.c.ok("ping"), {})
        # every accepted key.create is whole (never half-made): keys zset and docs agree
        team = s["team_id"]
        ids = self.env.redis("ZRANGE", "kg:{t:%s}:keys" % team, 0, -1)
        for kid in ids:
            self.assertEqual(self.env.redis("EXISTS", b"kg:{t:%s}:key:" % team.encode() + kid), 1)
        docs = self.env.redis_keys("kg:{t:%s}:key:*" % team)
        self.assertEqual(len(docs), len(ids))

    def test_socket_mode(self):
        st = os.stat(self.env.socket_path)
        self.assertTrue(stat.S_ISSOCK(st.st_mode))
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o660)


class ManyKeys(kgtest.EnvCase):
    """A team with more keys than fit in a small fixed argv: key.list must
    list them all (and a failing command must still be answered, never
    leave the client waiting)."""

    def test_key_list_150_keys(self):
        s = signup(self.c)
        c = self.env.client(timeout=5)
        blob = b"".join(json.dumps({"cmd": "key.create", "actor": s["user_id"], "team": s["team_id"],
                                    "name": "m%d" % i}).encode() + b"\n" for i in range(150))
        c.send_raw(blob)
        for i in range(150):
            self.assertEqual(json.loads(c.read_line())["ok"], True)
        keys = c.ok("key.list", s["user_id"], team=s["team_id"])["keys"]
        self.assertEqual(len(keys), 151)
        self.assertEqual(sorted(k["name"] for k in keys if k["kind"] == "paid"),
                         sorted("m%d" % i for i in range(150)))
        self.assertEqual(c.ok("ping"), {})

    def test_answer_longer_than_max_line(self):
        # the line limit is for requests: a 300 KB answer comes whole
        s = signup(self.c)
        desc = "d" * 1500
        for i in range(200):
            self.c.ok("key.create", s["user_id"], team=s["team_id"], name="big%d" % i, description=desc)
        c = self.env.client()
        c.send_raw(json.dumps({"cmd": "key.list", "actor": s["user_id"], "team": s["team_id"]}).encode() + b"\n")
        line = c.read_line()
        self.assertGreater(len(line), 300000)
        r = json.loads(line)
        self.assertEqual(len(r["result"]["keys"]), 201)
        self.assertEqual(c.ok("ping"), {})


class MaxClients(unittest.TestCase):
    """max_clients 5: a 6th connection waits (accept paused) and is served
    as soon as one of the five leaves."""

    def test_max_clients(self):
        env = kgtest.Env(extra_config=["max_clients 5"])
        try:
            held = [env.client() for _ in range(5)]
            for c in held:
                self.assertEqual(c.ok("ping"), {})
            extra = kgtest.Client(env.socket_path, timeout=1)
            extra.send_raw(b'{"id": 6, "cmd": "ping"}\n')
            try:
                line = extra.read_line()
            except TimeoutError:
                line = "waiting"
            # either it waits, or it is told and closed; it must not be served
            if line != "waiting":
                self.assertTrue(line is None or json.loads(line)["ok"] is False, line)
            else:
                held[0].close()
                extra.settimeout(5)
                self.assertEqual(json.loads(extra.read_line()), {"id": 6, "ok": True, "result": {}})
            for c in held[1:]:
                self.assertEqual(c.ok("ping"), {})
            extra.close()
        finally:
            env.close()
        kgtest.check_clean_exit(env)


class ConfiguredLimits(unittest.TestCase):
    """A small max_line, a short idle_timeout, socket_mode 0600, a stale
    socket file at start, and a clean SIGTERM."""

    @classmethod
    def setUpClass(cls):
        cls.env = kgtest.Env(start_daemon=False)
        lines = [l for l in cls.env.config_lines() if not l.startswith("socket_mode")]
        cls.env.write_config(["socket_mode 0600", "max_line 1024", "idle_timeout 1"], replace=lines)
        # a stale socket file left by a dead daemon
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(cls.env.socket_path)
        s.close()
        cls.env.start_daemon()

    @classmethod
    def tearDownClass(cls):
        cls.env.close()
        kgtest.check_clean_exit(cls.env)

    def test_mode_0600(self):
        self.assertEqual(stat.S_IMODE(os.stat(self.env.socket_path).st_mode), 0o600)

    def test_configured_max_line(self):
        c = self.env.client()
        c.send_raw(padded_ping(1024, 1) + b"\n")
        self.assertEqual(json.loads(c.read_line()), {"id": 1, "ok": True, "result": {}})
        c.send_raw(padded_ping(1025, 2) + b"\n")
        r = json.loads(c.read_line())
        self.assertEqual(r["error"]["code"], "bad_request")
        self.assertTrue(c.is_closed(3.0))

    def test_idle_timeout(self):
        half = self.env.client()
        idle = self.env.client()
        half.send_raw(b'{"cmd": "pi')
        t0 = time.monotonic()
        self.assertTrue(half.is_closed(5.0), "a half line was kept past idle_timeout")
        self.assertGreaterEqual(time.monotonic() - t0, 0.5)
        # a client with no partial line is kept
        time.sleep(1.5)
        self.assertEqual(idle.ok("ping"), {})

    def test_zz_sigterm_clean_exit(self):
        env = kgtest.Env()
        try:
            c = env.client()
            self.assertEqual(c.ok("ping"), {})
            rc = env.kill_daemon(signal.SIGTERM)
            self.assertEqual(rc, 0, env.daemon_log())
            env.start_daemon()  # the socket it left behind (if any) does not stop a restart
            self.assertEqual(env.client().ok("ping"), {})
            rc = env.kill_daemon(signal.SIGINT)
            self.assertEqual(rc, 0, env.daemon_log())
            env.start_daemon()
            env.kill_daemon(signal.SIGKILL)
            env.start_daemon()  # stale socket after a crash
            self.assertEqual(env.client().ok("ping"), {})
        finally:
            env.close()
        kgtest.check_clean_exit(env)


if __name__ == "__main__":
    unittest.main()
