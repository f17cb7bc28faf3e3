"""Low-balance alerts and webhooks (issue 13; docs/protocol.md "Webhooks"):
a wallet's threshold, the alert raised once when the available balance
crosses below it (debits made by `keygate authorize`, as a gateway makes
them), a notification to each owner and admin, and a signed HTTP POST to a
real receiver on loopback that checks the signature and timestamp;
retries after a receiver outage with the same delivery id, resumed after a
daemon restart; the secret shown once and never logged."""
import hashlib
import hmac
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import kgtest  # noqa: E402

CLI = os.environ.get("KEYGATE_CLI") or os.path.join(kgtest.REPO, "build", "daemon", "cli", "keygate")
COST = 450      # text-generation/small, 1000 input + 500 output tokens (tests/data/catalog.json)


free_port = kgtest.free_port


class Receiver:
    """An HTTP server on loopback that records every POST (headers, body)
    and answers the status codes in `answers` in turn (then 200)."""

    def __init__(self, port=0, answers=()):
        self.requests = []
        self.answers = list(answers)
        self.lock = threading.Lock()
        rec = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(n)
                with rec.lock:
                    rec.requests.append((self.path, dict(self.headers), body))
                    code = rec.answers.pop(0) if rec.answers else 200
                self.send_response(code)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *a):
                pass

        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), H)
        self.port = self.srv.server_address[1]
        self.thread = threading.Thread(target=self.srv.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path="/hook"):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def got(self):
        with self.lock:
            return list(self.requests)

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


def wait_for(pred, timeout, what):
    end = time.time() + timeout
    while time.time() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError("timed out waiting for " + what)


@unittest.skipUnless(os.access(CLI, os.X_OK), "needs the keygate CLI (KEYGATE_CLI)")
class Webhooks(kgtest.EnvCase):

    def setUp(self):
        self.receivers = []

    def tearDown(self):
        for r in self.receivers:
            r.close()

    def receiver(self, port=0, answers=()):
        r = Receiver(port, answers)
        self.receivers.append(r)
        return r

    def authorize(self, token_path, rid, want="ok"):
        p = subprocess.run([CLI, "--json", "--config", self.env.config_path, "authorize",
                            "--token-file", token_path, "--service", "text-generation",
                            "--model", "small", "--param", "input_tokens=1000",
                            "--param", "output_tokens=500", "--request-id", rid],
                           capture_output=True, timeout=30)
        r = json.loads(p.stdout)
        self.assertEqual(r["status"], want, p.stderr)
        return r.get("balance_micros")

    def setup_team(self, credit, threshold, url=None):
        """A team with an admin and a user, a wallet credited `credit`, a
        threshold, a paid key whose token debits COST per call, and
        optionally a webhook. Returns a dict."""
        t = kgtest.make_team(self.c, admins=1, users=1, outsiders=0)
        o = t["owner"]
        w = self.c.ok("wallet.create", o, team=t["team"], name="main")["wallet_id"]
        self.c.ok("wallet.credit", o, wallet=w, amount_micros=credit, reference="seed")
        r = self.c.ok("wallet.alert.set", t["admins"][0], wallet=w, threshold_micros=threshold)
        self.assertEqual(r["alert_threshold_micros"], threshold)
        key = self.c.ok("key.create", o, team=t["team"], name="paid", users=[o], services={
            "text-generation": {"policy": "payg", "models": ["small"], "wallet": w}})["key_id"]
        tok = self.c.ok("token.generate", o, key=key)["token"]
        path = os.path.join(self.env.tmp, "tok-" + key)
        with open(path, "w") as f:
            f.write(tok)
        os.chmod(path, 0o600)
        t.update(wallet=w, token=path, n=0)
        if url is not None:
            t["secret"] = self.c.ok("webhook.set", o, team=t["team"], url=url)["secret"]
        return t

    def debit(self, t):
        t["n"] += 1
        return self.authorize(t["token"], "r%d" % t["n"])

    def refuse(self, t):
        t["n"] += 1
        self.authorize(t["token"], "r%d" % t["n"], want="insufficient_funds")

    def alerts_of(self, uid, kind="wallet.low_balance"):
        return [n for n in self.c.ok("notification.list", uid)["notifications"]
                if n["type"] == kind]

    def check_signed(self, req, secret, team, wallet, kind="wallet.low_balance"):
        path, headers, body = req
        ts = headers["X-Keygate-Timestamp"]
        self.assertLessEqual(abs(int(ts) - time.time()), 60)
        want = "v1=" + hmac.new(secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
        self.assertTrue(hmac.compare_digest(headers["X-Keygate-Signature"], want))
        self.assertEqual(headers["Content-Type"], "application/json")
        ev = json.loads(body)
        self.assertEqual((ev["type"], ev["team_id"], ev["wallet_id"]), (kind, team, wallet))
        self.assertEqual(headers["X-Keygate-Delivery"], ev["id"])
        self.assertEqual(ev["available_micros"], ev["balance_micros"] - ev["held_micros"])
        return ev

    def deliveries(self, t):
        return self.c.ok("webhook.deliveries", t["owner"], team=t["team"])["deliveries"]

    # -----------------------------------------------------------------------

    def test_crossing_alerts_once_notifies_owner_and_admins_and_delivers_signed(self):
        rcv = self.receiver()
        t = self.setup_team(10000, 9000, url=rcv.url())
        self.assertEqual(self.debit(t), 9550)
        self.assertEqual(self.debit(t), 9100)
        time.sleep(1.5)                      # a pass or more above the threshold: nothing
        self.assertEqual(rcv.got(), [])
        self.assertEqual(self.debit(t), 8650)
        reqs = wait_for(rcv.got, 5, "the webhook")
        ev = self.check_signed(reqs[0], t["secret"], t["team"], t["wallet"])
        self.assertEqual((ev["balance_micros"], ev["available_micros"], ev["threshold_micros"]),
                         (8650, 8650, 9000))
        self.assertEqual(reqs[0][0], "/hook")
        # Still below: no second alert.
        self.assertEqual(self.debit(t), 8200)
        time.sleep(2.5)
        self.assertEqual(len(rcv.got()), 1)
        for uid in [t["owner"]] + t["admins"]:
            n = self.alerts_of(uid)
            self.assertEqual(len(n), 1, uid)
            self.assertEqual((n[0]["wallet_id"], n[0]["alert_id"], n[0]["available_micros"]),
                             (t["wallet"], ev["id"], 8650))
        self.assertEqual(self.alerts_of(t["users"][0]), [])
        d = self.deliveries(t)
        self.assertEqual(len(d), 1)
        self.assertEqual((d[0]["id"], d[0]["status"], d[0]["attempts"], d[0]["last_result"]),
                         (ev["id"], "delivered", 1, "200"))
        self.assertNotIn("next_attempt_at", d[0])
        w = self.c.ok("wallet.get", t["owner"], wallet=t["wallet"])
        self.assertEqual((w["alert_threshold_micros"], w["alert_below"]), (9000, True))
        self.assertNotIn("alert_event", w)

        # Back above re-arms; the next crossing is a new alert with a new id.
        self.c.ok("wallet.credit", t["owner"], wallet=t["wallet"], amount_micros=1000, reference="up")
        wait_for(lambda: not self.c.ok("wallet.get", t["owner"], wallet=t["wallet"])["alert_below"],
                 5, "re-arming")
        self.assertEqual(self.debit(t), 8750)
        reqs = wait_for(lambda: rcv.got() if len(rcv.got()) == 2 else None, 5, "a second webhook")
        ev2 = self.check_signed(reqs[1], t["secret"], t["team"], t["wallet"])
        self.assertNotEqual(ev2["id"], ev["id"])
        self.assertEqual(len(self.alerts_of(t["owner"])), 2)
        self.assertNotIn(t["secret"].encode(), self.env.daemon_log().encode())

    def test_refusals_for_funds_alert_at_most_once_an_hour(self):
        rcv = self.receiver()
        t = self.setup_team(1000, 900, url=rcv.url())
        self.assertEqual(self.debit(t), 550)               # crosses: the low-balance alert
        wait_for(lambda: len(rcv.got()) == 1, 5, "the low-balance webhook")
        self.assertEqual(self.debit(t), 100)
        for _ in range(3):
            self.refuse(t)                                 # 450 > 100: refused for funds
        reqs = wait_for(lambda: rcv.got() if len(rcv.got()) == 2 else None, 5, "the refusal webhook")
        ev = self.check_signed(reqs[1], t["secret"], t["team"], t["wallet"], "wallet.funds_refused")
        self.assertEqual((ev["balance_micros"], ev["available_micros"], ev["threshold_micros"]),
                         (100, 100, 900))
        self.assertGreater(ev["refused_at"], 0)
        for uid in [t["owner"]] + t["admins"]:
            n = self.alerts_of(uid, "wallet.funds_refused")
            self.assertEqual(len(n), 1, uid)
            self.assertEqual((n[0]["alert_id"], n[0]["wallet_name"]), (ev["id"], "main"))
        self.assertEqual(self.alerts_of(t["users"][0], "wallet.funds_refused"), [])
        # More refusals within the hour: no second alert.
        self.refuse(t)
        time.sleep(2.5)
        self.assertEqual(len(rcv.got()), 2)
        w = self.c.ok("wallet.get", t["owner"], wallet=t["wallet"])
        self.assertGreaterEqual(w["refused_at"], ev["refused_at"])
        self.assertEqual(w["balance_micros"], 100)         # a refusal moves no money
        # An hour later (the last alert moved back in Redis): the refusal
        # made since then is alerted; with none since, nothing more.
        kw = "kg:{t:%s}:wallet:%s" % (t["team"], t["wallet"])
        back = str(int(self.env.redis("HGET", kw, "refusal_alerted_at")) - 3601000)
        self.env.redis("HSET", kw, "refusal_alerted_at", back)
        reqs = wait_for(lambda: rcv.got() if len(rcv.got()) == 3 else None, 5, "the next hour's alert")
        self.check_signed(reqs[2], t["secret"], t["team"], t["wallet"], "wallet.funds_refused")
        # the hour passes again, the last refusal before the last alert
        back = int(self.env.redis("HGET", kw, "refusal_alerted_at")) - 3601000
        self.env.redis("HSET", kw, "refusal_alerted_at", str(back), "refused_at", str(back - 1))
        time.sleep(2.5)
        self.assertEqual(len(rcv.got()), 3)
        self.assertEqual(len(self.alerts_of(t["owner"], "wallet.funds_refused")), 2)
        # No threshold, no stamp: refusals of an unwatched wallet cost nothing extra.
        self.c.ok("wallet.alert.set", t["owner"], wallet=t["wallet"], threshold_micros=0)
        self.refuse(t)
        self.assertIsNone(self.env.redis("HGET", kw, "refused_at"))

    def test_receiver_errors_then_outage_retried_with_the_same_id(self):
        port = free_port()
        t = self.setup_team(1000, 900, url="http://127.0.0.1:%d/in" % port)
        self.debit(t)                                      # 550 < 900
        # Nobody listens: attempts fail and are rescheduled.
        d = wait_for(lambda: [x for x in self.deliveries(t) if x["attempts"] >= 2], 8,
                     "two failed attempts")[0]
        self.assertEqual(d["status"], "pending")
        self.assertIn("next_attempt_at", d)
        # Up, but answering 500 once: one more failure, then delivered.
        rcv = self.receiver(port, answers=[500])
        wait_for(lambda: self.deliveries(t)[0]["status"] == "delivered", 15, "delivery")
        reqs = rcv.got()
        self.assertEqual(len(reqs), 2)
        ids = {self.check_signed(r, t["secret"], t["team"], t["wallet"])["id"] for r in reqs}
        self.assertEqual(ids, {d["id"]})
        self.assertEqual(reqs[0][2], reqs[1][2])           # the same body on every attempt
        d = self.deliveries(t)[0]
        self.assertGreaterEqual(d["attempts"], 4)
        time.sleep(1.5)
        self.assertEqual(len(rcv.got()), 2)                # no duplicate after delivery
        self.assertEqual(len(self.alerts_of(t["owner"])), 1)

    def test_restart_resumes_pending_delivery(self):
        port = free_port()
        t = self.setup_team(1000, 900, url="http://127.0.0.1:%d/" % port)
        self.debit(t)
        d = wait_for(lambda: [x for x in self.deliveries(t) if x["attempts"] >= 1], 8,
                     "a failed attempt")[0]
        self.env.kill_daemon()
        rcv = self.receiver(port)
        self.env.start_daemon()
        self.c = self.env.client()
        type(self).c = self.c
        wait_for(lambda: self.deliveries(t)[0]["status"] == "delivered", 10, "delivery after restart")
        reqs = rcv.got()
        self.assertEqual(len(reqs), 1)
        self.assertEqual(self.check_signed(reqs[0], t["secret"], t["team"], t["wallet"])["id"], d["id"])
        self.assertEqual(len(self.alerts_of(t["owner"])), 1)

    def test_no_webhook_still_notifies(self):
        t = self.setup_team(1000, 900)
        self.debit(t)
        wait_for(lambda: self.alerts_of(t["admins"][0]), 5, "the notification")
        self.assertEqual(len(self.alerts_of(t["owner"])), 1)
        self.assertEqual(self.deliveries(t), [])
        self.assertEqual(self.env.redis("ZCARD", "kg:whpending"), 0)

    def test_threshold_above_balance_at_set_raises_nothing_and_zero_removes(self):
        t = self.setup_team(1000, 2000)
        w = self.c.ok("wallet.get", t["owner"], wallet=t["wallet"])
        self.assertTrue(w["alert_below"])
        time.sleep(1.5)
        self.assertEqual(self.alerts_of(t["owner"]), [])
        self.assertEqual(self.env.redis("SISMEMBER", "kg:alertwallets", t["wallet"]), 1)
        r = self.c.ok("wallet.alert.set", t["owner"], wallet=t["wallet"], threshold_micros=0)
        self.assertNotIn("alert_threshold_micros", r)
        self.assertEqual(self.env.redis("SISMEMBER", "kg:alertwallets", t["wallet"]), 0)
        self.assertNotIn("alert_threshold_micros", self.c.ok("wallet.get", t["owner"], wallet=t["wallet"]))

    def test_commands_validation_and_roles(self):
        t = kgtest.make_team(self.c, admins=1, users=1, outsiders=1)
        o, adm, usr, out = t["owner"], t["admins"][0], t["users"][0], t["outsiders"][0]
        team = t["team"]
        w = self.c.ok("wallet.create", o, team=team, name="w")["wallet_id"]
        for bad in (-1, 2 ** 60, "5", None, 1.5):
            self.assertEqual(self.c.err("wallet.alert.set", o, wallet=w, threshold_micros=bad),
                             "bad_request", bad)
        self.assertEqual(self.c.err("wallet.alert.set", usr, wallet=w, threshold_micros=5), "forbidden")
        self.assertEqual(self.c.err("wallet.alert.set", out, wallet=w, threshold_micros=5), "not_found")
        self.assertEqual(self.c.err("webhook.get", o, team=team), "not_found")
        for url in ("https://example.test/x", "ftp://h/", "http://", "not a url", "http://u:p@h/",
                    "http://h/\x01", 5, None, "http://h/" + "a" * 2000):
            self.assertEqual(self.c.err("webhook.set", o, team=team, url=url), "bad_request", url)
        self.assertEqual(self.c.err("webhook.set", adm, team=team, url="http://127.0.0.1:1/"), "forbidden")
        self.assertEqual(self.c.err("webhook.set", out, team=team, url="http://127.0.0.1:1/"), "not_found")
        r = self.c.ok("webhook.set", o, team=team, url="http://127.0.0.1:1/a?x=1")
        s1 = r["secret"]
        self.assertRegex(s1, r"^whsec_[0-9a-f]{64}$")
        self.assertEqual(r["secret_hint"], "whsec_…" + s1[-4:])
        g = self.c.ok("webhook.get", adm, team=team)
        self.assertEqual((g["url"], g["secret_hint"]), ("http://127.0.0.1:1/a?x=1", r["secret_hint"]))
        self.assertNotIn("secret", g)
        self.assertEqual(self.c.err("webhook.get", usr, team=team), "forbidden")
        self.assertEqual(self.c.err("webhook.deliveries", usr, team=team), "forbidden")
        # A new URL keeps the secret (not shown again); rotate_secret makes a new one.
        r = self.c.ok("webhook.set", o, team=team, url="http://127.0.0.1:2/")
        self.assertNotIn("secret", r)
        self.assertFalse(r["secret_rotated"])
        r = self.c.ok("webhook.set", o, team=team, url="http://127.0.0.1:2/", rotate_secret=True)
        self.assertTrue(r["secret_rotated"])
        self.assertNotEqual(r["secret"], s1)
        self.assertEqual(self.c.err("webhook.delete", adm, team=team), "forbidden")
        self.assertEqual(self.c.ok("webhook.delete", o, team=team), {})
        self.assertEqual(self.c.err("webhook.delete", o, team=team), "not_found")
        self.assertEqual(self.c.err("webhook.deliveries", o, team=team, limit=0), "bad_request")
        log = self.env.daemon_log()
        self.assertNotIn(s1, log)
        self.assertNotIn(r["secret"], log)


if __name__ == "__main__":
    unittest.main()
