"""The console's HTTP API: static files, sessions, CSRF, the rate limit of
failed sign-ins, the actor always being the session's user, and each role
seeing only its actions. keygated and redis-server run for real
(tests/lib/kgtest.py); the HTTP listener is on a loopback port."""

import os
import time
import unittest

import consolelib
from consolelib import Browser, signup_http, kgtest

PW = "correct horse battery"


class ConsoleApi(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.env = consolelib.console_env()
        cls.port = cls.env.http_port
        cls.c = cls.env.client()

    @classmethod
    def tearDownClass(cls):
        cls.env.close()
        kgtest.check_clean_exit(cls.env)

    def get(self, path, method="GET"):
        return Browser(self.port).request(method, path)

    # -- static files ------------------------------------------------------

    def test_static_files_are_served_with_their_types_and_headers(self):
        r = self.get("/")
        self.assertEqual(r.status, 200)
        self.assertIn("text/html", r.headers["content-type"])
        self.assertIn(b'<script type="module" src="js/app.js">', r.raw)
        self.assertIn("default-src 'self'", r.headers["content-security-policy"])
        self.assertEqual(r.headers["x-content-type-options"], "nosniff")
        self.assertEqual(r.headers["x-frame-options"], "DENY")
        with open(os.path.join(consolelib.CONSOLE_DIR, "js", "app.js"), "rb") as f:
            want = f.read()
        r = self.get("/js/app.js")
        self.assertEqual((r.status, r.raw), (200, want))
        self.assertIn("text/javascript", r.headers["content-type"])
        self.assertIn("text/css", self.get("/console.css").headers["content-type"])
        self.assertEqual(self.get("/index.html").status, 200)
        head = self.get("/", method="HEAD")
        self.assertEqual((head.status, head.raw), (200, b""))

    def test_paths_outside_the_console_folder_are_not_served(self):
        for p in ["/../CMakeLists.txt", "/%2e%2e/CMakeLists.txt", "/js/../../http.c",
                  "/.git/config", "/js/%2e%2e/%2e%2e/http.c", "/nope.html", "/js",
                  "/js//app.js", "/%00index.html"]:
            r = self.get(p)
            self.assertEqual(r.status, 404, p)
        self.assertEqual(self.get("/", method="POST").status, 405)

    def test_clients_that_leave_mid_call_do_not_hurt_the_daemon(self):
        import socket
        b, s = signup_http(self.port)
        calls = [
            ("session.login", '{"email": "%s", "password": "%s"}' % (s["email"], PW), ""),
            ("key.list", '{"team": "%s"}' % s["team_id"], "X-CSRF-Token: %s\r\nCookie: %s\r\n" % (b.csrf, b.cookie)),
            ("key.create", '{"team": "%s", "name": "gone"}' % s["team_id"],
             "X-CSRF-Token: %s\r\nCookie: %s\r\n" % (b.csrf, b.cookie)),
        ]
        for _ in range(5):
            for cmd, body, extra in calls:
                c = socket.create_connection(("127.0.0.1", self.port))
                c.sendall(("POST /api/%s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           "%sContent-Length: %d\r\n\r\n%s" % (cmd, extra, len(body), body)).encode())
                c.close()
        time.sleep(0.5)
        self.assertTrue(self.env.daemon_alive())
        self.assertTrue(b.api("key.list", team=s["team_id"]).ok)
        self.assertEqual(self.c.ok("ping"), {})

    def test_a_listen_address_that_cannot_be_bound_stops_the_daemon(self):
        for addr, why in (("127.0.0.1:%d" % self.port, "Address already in use"),
                          ("127.0.0.1:99999", "bad port"), ("nocolon", "not HOST:PORT")):
            env = kgtest.Env(extra_config=["http " + addr], start_daemon=False, redis=False)
            try:
                rc, log = env.run_daemon_to_exit(timeout=10)
            finally:
                env.close()
            self.assertNotEqual(rc, 0, addr)
            self.assertIn(why, log, addr)

    def test_a_flood_of_console_connections_stops_at_the_cap_without_spinning(self):
        # With few descriptors the console's cap is half of them, so the
        # admin socket and Redis keep theirs: the listener stops accepting at
        # the cap (and says so once), uses no CPU while there, the admin
        # socket still answers, and the console serves again once they close.
        import resource
        import socket
        import subprocess

        class LimitedEnv(kgtest.Env):
            def _spawn_daemon(self, args=None):
                log = open(self.log_path, "ab")
                p = subprocess.Popen([kgtest.keygated_path(), "--config", self.config_path],
                                     stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                     preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (40, 40)))
                log.close()
                return p

        env = LimitedEnv(extra_config=["http 127.0.0.1:0"])
        conns = []
        try:
            port = env.listen_port("console", timeout=30)
            for _ in range(60):
                conns.append(socket.create_connection(("127.0.0.1", port)))
            env.wait_log("20 connections open, the cap", timeout=30)

            def cpu():
                with open("/proc/%d/stat" % env.daemon.pid) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            before = cpu()
            time.sleep(1.0)
            self.assertLess(cpu() - before, 0.5, "keygated spins while it cannot accept")
            env.client().ok("ping")
            for c in conns:
                c.close()
            conns = []
            deadline = time.monotonic() + 30
            while True:
                r = Browser(port).api("ping")
                if r.ok or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            self.assertTrue(r.ok, r)
        finally:
            for c in conns:
                c.close()
            env.close()
        kgtest.check_clean_exit(env)

    # -- the API's envelope and statuses -----------------------------------

    def test_api_takes_json_posts_only(self):
        b = Browser(self.port)
        r = b.request("GET", "/api/ping")
        self.assertEqual((r.status, r.code), (405, "bad_request"))
        r = b.request("POST", "/api/ping", raw=b"{}", headers={"Content-Type": "text/plain"})
        self.assertEqual((r.status, r.code), (400, "bad_request"))
        r = b.request("POST", "/api/ping", raw=b"{nope", headers={"Content-Type": "application/json"})
        self.assertEqual((r.status, r.code), (400, "bad_request"))
        self.assertIn("malformed JSON", r.message)
        r = b.request("POST", "/api/ping", raw=b"[1]", headers={"Content-Type": "application/json"})
        self.assertEqual((r.status, r.code), (400, "bad_request"))
        r = b.api("no.such.command")
        self.assertEqual((r.status, r.code), (404, "unknown_command"))
        r = b.request("POST", "/api/ping", raw=b"", headers={"Content-Type": "application/json"})
        self.assertEqual((r.status, r.json), (200, {"ok": True, "result": {}}))
        r = b.api("price.estimate", service="text-generation", model="small",
                  params={"input_tokens": 1000, "output_tokens": 1000})
        self.assertEqual((r.status, r.result["cost_micros"]), (200, 750))
        r = b.api("price.estimate", service="text-generation", model="small", params={"input_tokens": -1})
        self.assertEqual((r.status, r.code), (400, "bad_request"))

    def test_error_codes_map_to_http_statuses(self):
        b, s = signup_http(self.port)
        r = b.api("key.revoke", key=s["free_key_id"])
        self.assertEqual((r.status, r.code), (409, "free_key_immutable"))
        b.ok("token.generate", key=s["free_key_id"])
        r = b.api("token.generate", key=s["free_key_id"])
        self.assertEqual((r.status, r.code), (409, "conflict"))
        r = b.api("key.get", key="k_" + "x" * 20)
        self.assertEqual((r.status, r.code), (404, "not_found"))
        k = b.ok("key.create", team=s["team_id"], name="tmp")
        b.ok("key.revoke", key=k["key_id"])
        r = b.api("key.revoke", key=k["key_id"])
        self.assertEqual((r.status, r.code), (409, "invalid_state"))
        r = b.api("key.create", team=s["team_id"], name="")
        self.assertEqual((r.status, r.code), (400, "bad_request"))

    def test_token_answers_are_not_cached(self):
        b, s = signup_http(self.port)
        r = b.api("token.generate", key=s["free_key_id"])
        self.assertTrue(r.ok, r)
        self.assertTrue(r.result["token"].startswith("kg_"))
        self.assertEqual(r.headers["cache-control"], "no-store")

    # -- sign-up and sign-in -----------------------------------------------

    def test_signup_stores_only_an_argon2id_hash_of_the_password(self):
        b, s = signup_http(self.port, password="a very secret pass")
        self.assertNotIn("password", str(s).replace("'password': 'a very secret pass'", ""))
        doc = self.env.redis("GET", "kg:user:" + s["user_id"]).decode()
        self.assertIn('"password_hash":"$argon2id$', doc)
        self.assertEqual(self.env.find_secrets_in_redis(["a very secret pass"]), [])
        team = self.c.ok("team.get", s["user_id"], team=s["team_id"])
        self.assertNotIn("password", str(team))
        who = b.ok("session.whoami")
        self.assertNotIn("password", str(who))
        r = Browser(self.port).api("user.signup", email=kgtest.unique_email(), name="X", password="short")
        self.assertEqual((r.status, r.code), (400, "bad_request"))
        self.assertIn("'password'", r.message)

    def test_signup_over_the_socket_may_set_a_password_too(self):
        email = kgtest.unique_email("sock")
        self.c.ok("user.signup", email=email, name="Sock", password=PW)
        b = Browser(self.port)
        self.assertTrue(b.login(email, PW).ok)
        # without a password nobody can sign in as that user
        email2 = kgtest.unique_email("nopw")
        self.c.ok("user.signup", email=email2, name="NoPw")
        r = Browser(self.port).login(email2, "")
        self.assertEqual((r.status, r.code), (401, "unauthenticated"))

    def test_login_sets_an_httponly_strict_cookie_and_never_returns_the_session(self):
        email = kgtest.unique_email()
        Browser(self.port).ok("user.signup", email=email, name="Cookie", password=PW)
        b = Browser(self.port)
        r = b.login(email.upper(), PW)          # emails are case-insensitive
        self.assertEqual(r.status, 200, r)
        sc = r.headers["set-cookie"]
        self.assertRegex(sc, r"^kg_session=[A-Za-z0-9_-]{43}; ")
        for attr in ("HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"):
            self.assertIn(attr, sc)
        self.assertNotIn("session", r.result)
        self.assertNotIn(b.session_id(), r.raw.decode())
        self.assertEqual(set(r.result), {"user", "csrf_token", "expires_at"})
        # Redis holds a keyed hash of the session id, never the id
        self.assertEqual(self.env.find_secrets_in_redis([b.session_id()]), [])
        keys = self.env.redis_keys("kg:session:*")
        self.assertTrue(keys)
        ttl = self.env.redis("TTL", keys[0])
        self.assertTrue(0 < ttl <= 43200, ttl)

    def test_wrong_password_and_unknown_email_get_the_same_answer(self):
        b, s = signup_http(self.port)
        r1 = Browser(self.port).login(s["email"], "wrong password")
        r2 = Browser(self.port).login(kgtest.unique_email("ghost"), "wrong password")
        for r in (r1, r2):
            self.assertEqual((r.status, r.code, r.message), (401, "unauthenticated", "wrong email or password"))
            self.assertNotIn("set-cookie", r.headers)
        r = Browser(self.port).api("session.login", email="not an email", password="x")
        self.assertEqual((r.status, r.code), (400, "bad_request"))

    def test_failed_logins_are_rate_limited_per_email(self):
        b, s = signup_http(self.port)
        _, other = signup_http(self.port)
        for i in range(5):
            r = Browser(self.port).login(s["email"], "wrong %d" % i)
            self.assertEqual(r.code, "unauthenticated", (i, r))
        # the sixth attempt is refused, even with the right password
        r = Browser(self.port).login(s["email"], PW)
        self.assertEqual((r.status, r.code), (429, "rate_limited"), r)
        self.assertRegex(r.message, r"too many failed sign-ins for this email: try again in 1[45] minutes")
        self.assertNotIn("set-cookie", r.headers)
        # another email is not affected
        self.assertTrue(Browser(self.port).login(other["email"], other["password"]).ok)
        # the window is 15 minutes from the first failure
        email = s["email"].lower()
        ttl = self.env.redis("PTTL", "kg:loginfail:" + email)
        self.assertTrue(14 * 60 * 1000 < ttl <= 15 * 60 * 1000, ttl)
        # it ends when the window does
        self.env.redis("PEXPIRE", "kg:loginfail:" + email, 1)
        time.sleep(0.05)
        self.assertTrue(Browser(self.port).login(s["email"], PW).ok)

    def test_a_good_login_clears_the_failure_count(self):
        b, s = signup_http(self.port)
        for _ in range(4):
            Browser(self.port).login(s["email"], "wrong")
        self.assertTrue(Browser(self.port).login(s["email"], PW).ok)
        self.assertIsNone(self.env.redis("GET", "kg:loginfail:" + s["email"].lower()))
        for _ in range(4):
            Browser(self.port).login(s["email"], "wrong")
        self.assertTrue(Browser(self.port).login(s["email"], PW).ok)

    def test_logout_ends_the_session(self):
        b, s = signup_http(self.port)
        cookie = b.cookie
        self.assertTrue(b.api("key.list", team=s["team_id"]).ok)
        r = b.api("session.logout")
        self.assertEqual(r.status, 200, r)
        self.assertIn("Max-Age=0", r.headers["set-cookie"])
        stale = Browser(self.port)
        stale.cookie, stale.csrf = cookie, b.csrf
        r = stale.api("key.list", team=s["team_id"])
        self.assertEqual((r.status, r.code), (401, "unauthenticated"))
        r = stale.api("session.whoami")
        self.assertEqual((r.status, r.code), (401, "unauthenticated"))

    def test_no_or_bad_session_is_unauthenticated(self):
        _, s = signup_http(self.port)
        b = Browser(self.port)
        for cookie in (None, "kg_session=garbage", "kg_session=" + "A" * 43, "other=1"):
            b.cookie = cookie
            r = b.api("key.list", team=s["team_id"])
            self.assertEqual((r.status, r.code), (401, "unauthenticated"), cookie)

    def test_an_expired_session_is_refused(self):
        b, s = signup_http(self.port)
        for k in self.env.redis_keys("kg:session:*"):
            self.env.redis("DEL", k)
        r = b.api("key.list", team=s["team_id"])
        self.assertEqual((r.status, r.code), (401, "unauthenticated"))
        self.assertIn("sign in again", r.message)

    # -- CSRF --------------------------------------------------------------

    def test_state_changing_calls_need_the_sessions_csrf_token(self):
        b, s = signup_http(self.port)
        r = b.api("key.create", csrf=False, team=s["team_id"], name="nope")
        self.assertEqual((r.status, r.code), (403, "forbidden"), r)
        self.assertIn("CSRF", r.message)
        good = b.csrf
        b.csrf = good[:-1] + ("A" if good[-1] != "A" else "B")
        r = b.api("key.create", team=s["team_id"], name="nope")
        self.assertEqual((r.status, r.code), (403, "forbidden"))
        # another session's token does not fit this session
        b2, _ = signup_http(self.port)
        b.csrf = b2.csrf
        r = b.api("key.create", team=s["team_id"], name="nope")
        self.assertEqual((r.status, r.code), (403, "forbidden"))
        keys = self.c.ok("key.list", s["user_id"], team=s["team_id"])["keys"]
        self.assertEqual([k["kind"] for k in keys], ["free"])      # nothing was created
        # whoami gives a reloaded page its token back, without one
        w = b.api("session.whoami", csrf=False)
        self.assertEqual(w.status, 200)
        self.assertEqual(w.result["csrf_token"], good)
        b.csrf = good
        self.assertTrue(b.api("key.create", team=s["team_id"], name="yes").ok)

    def test_cross_origin_posts_are_refused(self):
        b, s = signup_http(self.port)
        for origin in ("http://evil.example", "null", "http://127.0.0.1:1"):
            r = b.request("POST", "/api/key.create", {"team": s["team_id"], "name": "x"},
                          {"Content-Type": "application/json", "X-CSRF-Token": b.csrf, "Origin": origin})
            self.assertEqual((r.status, r.code), (403, "forbidden"), origin)
        r = b.request("POST", "/api/key.list", {"team": s["team_id"]},
                      {"Content-Type": "application/json", "X-CSRF-Token": b.csrf,
                       "Origin": "http://127.0.0.1:%d" % self.port})
        self.assertEqual(r.status, 200, r)

    # -- the actor is always the session's user ------------------------------

    def test_an_http_caller_cannot_act_as_another_user(self):
        a, sa = signup_http(self.port, name="Alice")
        _, sb = signup_http(self.port, name="Bob")
        # Alice names Bob as the actor on Bob's team: she is not a member
        r = a.api("key.create", actor=sb["user_id"], team=sb["team_id"], name="spoof")
        self.assertEqual((r.status, r.code), (404, "not_found"), r)
        r = a.api("key.revoke", actor=sb["user_id"], key=sb["free_key_id"])
        self.assertEqual(r.code, "not_found")
        r = a.api("token.generate", actor=sb["user_id"], key=sb["free_key_id"])
        self.assertEqual(r.code, "not_found")
        keys = self.c.ok("key.list", sb["user_id"], team=sb["team_id"])["keys"]
        self.assertEqual(len(keys), 1)
        self.assertEqual(keys[0]["tokens"], {})
        # on her own team, the audit names her, not the actor she sent
        k = a.ok("key.create", actor=sb["user_id"], team=sa["team_id"], name="mine")
        audit = self.c.ok("audit.list", sa["user_id"], team=sa["team_id"])["entries"]
        e = [x for x in audit if x["cmd"] == "key.create"][0]
        self.assertEqual((e["actor"], e["target"], e["peer_uid"]), (sa["user_id"], k["key_id"], -1))
        # a "session" in the body is not taken either
        r = a.api("session.logout", session="x" * 43)
        self.assertTrue(r.ok)
        self.assertIsNone(a.cookie)

    def test_whoami_lists_every_team_of_the_user_with_its_role(self):
        owner, so = signup_http(self.port, name="Owner", team_name="Main team")
        email = kgtest.unique_email("member")
        u = self.c.ok("user.signup", email=email, name="Member", password=PW, team_name="Own team")
        self.c.ok("team.member.add", so["user_id"], team=so["team_id"], user=u["user_id"], role="admin")
        b = Browser(self.port)
        self.assertTrue(b.login(email, PW).ok)
        w = b.ok("session.whoami")
        self.assertEqual(w["user"], {"user_id": u["user_id"], "email": email, "name": "Member"})
        teams = {t["team_id"]: (t["name"], t["role"]) for t in w["teams"]}
        self.assertEqual(teams, {u["team_id"]: ("Own team", "owner"), so["team_id"]: ("Main team", "admin")})
        self.assertEqual([t["team_id"] for t in w["teams"]], [so["team_id"], u["team_id"]])  # oldest first
        # removed: the team is gone from the list at once
        self.c.ok("team.member.remove", so["user_id"], team=so["team_id"], user=u["user_id"])
        self.assertEqual([t["team_id"] for t in b.ok("session.whoami")["teams"]], [u["team_id"]])

    # -- every role sees only its actions ------------------------------------

    def test_each_role_can_do_only_its_actions(self):
        owner, so = signup_http(self.port, name="Owner")
        team = so["team_id"]
        people = {}
        for role in ("admin", "user"):
            email = kgtest.unique_email(role)
            s = Browser(self.port).ok("user.signup", email=email, name=role.title(), password=PW)
            owner.ok("team.member.add", team=team, email=email, role=role)
            b = Browser(self.port)
            self.assertTrue(b.login(email, PW).ok)
            people[role] = (b, s["user_id"])
        admin, aid = people["admin"]
        user, uid = people["user"]
        for b, role in ((owner, "owner"), (admin, "admin"), (user, "user")):
            t = [x for x in b.ok("session.whoami")["teams"] if x["team_id"] == team]
            self.assertEqual(t[0]["role"], role)

        paid = owner.ok("key.create", team=team, name="paid", users=[uid])
        other = owner.ok("key.create", team=team, name="not hers", users=[aid])
        # the user: only her keys, her own token, nothing else
        self.assertEqual([k["key_id"] for k in user.ok("key.list", team=team)["keys"]], [paid["key_id"]])
        self.assertEqual(user.api("key.get", key=other["key_id"]).code, "not_found")
        for cmd, args in (("key.create", {"team": team, "name": "x"}),
                          ("key.update", {"key": paid["key_id"], "name": "x"}),
                          ("key.users.set", {"key": paid["key_id"], "users": []}),
                          ("key.services.set", {"key": paid["key_id"], "services": {}}),
                          ("key.revoke", {"key": paid["key_id"]}),
                          ("wallet.list", {"team": team}),
                          ("wallet.create", {"team": team, "name": "w"}),
                          ("audit.list", {"team": team}),
                          ("team.member.add", {"team": team, "user": aid, "role": "user"})):
            r = user.api(cmd, **args)
            self.assertEqual((r.status, r.code), (403, "forbidden"), (cmd, r))
        tok = user.ok("token.generate", key=paid["key_id"])
        self.assertTrue(user.ok("token.rotate", key=paid["key_id"])["token"] != tok["token"])
        owner.ok("key.users.set", key=other["key_id"], users=[aid, uid])
        owner.ok("token.generate", key=s_free(so))
        admin.ok("token.generate", key=other["key_id"])
        r = user.api("token.rotate", key=other["key_id"], user=aid)
        self.assertEqual((r.status, r.code), (403, "forbidden"))
        self.assertEqual(user.ok("team.get", team=team)["team_id"], team)
        # the admin: keys and wallets, but not the owner's powers
        self.assertTrue(admin.ok("key.create", team=team, name="by admin"))
        self.assertTrue(admin.ok("wallet.create", team=team, name="w"))
        self.assertEqual(len(admin.ok("key.list", team=team)["keys"]), 4)
        r = admin.api("team.member.set_role", team=team, user=uid, role="admin")
        self.assertEqual((r.status, r.code), (403, "forbidden"))
        r = admin.api("team.transfer_ownership", team=team, user=aid)
        self.assertEqual((r.status, r.code), (403, "forbidden"))
        self.assertTrue(admin.api("token.rotate", key=other["key_id"], user=aid).ok)
        # the owner: everything
        self.assertTrue(owner.ok("team.member.set_role", team=team, user=uid, role="admin"))
        self.assertTrue(owner.ok("key.revoke", key=paid["key_id"]))
        self.assertTrue(owner.ok("audit.list", team=team)["entries"])

    def test_a_user_sees_the_names_of_the_wallets_paying_for_her_keys(self):
        owner, so = signup_http(self.port, name="Owner")
        team = so["team_id"]
        email = kgtest.unique_email("user")
        s = Browser(self.port).ok("user.signup", email=email, name="User", password=PW)
        owner.ok("team.member.add", team=team, email=email, role="user")
        user = Browser(self.port)
        self.assertTrue(user.login(email, PW).ok)
        w1 = owner.ok("wallet.create", team=team, name="Research budget")["wallet_id"]
        w2 = owner.ok("wallet.create", team=team, name="Ops")["wallet_id"]
        svc = {"text-generation": {"policy": "payg", "models": ["small"], "wallet": w1},
               "speech-to-text": {"policy": "payg", "models": ["fast"], "wallet": w2}}
        paid = owner.ok("key.create", team=team, name="paid", users=[s["user_id"]], services=svc)
        plain = owner.ok("key.create", team=team, name="plain", users=[s["user_id"]],
                         services={"speech-to-text": {"policy": "free"}})
        names = {w1: "Research budget", w2: "Ops"}
        got = user.ok("key.get", key=paid["key_id"])
        self.assertEqual(got["services"], svc)          # as set: the names sit beside them
        self.assertEqual(got["wallet_names"], names)
        listed = {k["key_id"]: k for k in user.ok("key.list", team=team)["keys"]}
        self.assertEqual(listed[paid["key_id"]]["wallet_names"], names)
        self.assertNotIn("wallet_names", listed[plain["key_id"]])
        self.assertNotIn("wallet_names", user.ok("key.get", key=plain["key_id"]))
        self.assertEqual(self.c.ok("key.get", so["user_id"], key=paid["key_id"])["wallet_names"], names)
        # the names only: the wallets themselves stay the admins'
        self.assertEqual(user.api("wallet.get", wallet=w1).code, "forbidden")
        # a reply with the names can be sent back as it is (they are ignored)
        owner.ok("key.services.set", key=paid["key_id"], services=got["services"])
        self.assertEqual(owner.ok("key.get", key=paid["key_id"])["services"], svc)


def s_free(s):
    return s["free_key_id"]


if __name__ == "__main__":
    unittest.main()
