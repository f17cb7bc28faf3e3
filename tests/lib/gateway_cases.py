"""gateway_cases - the decisions every keygate gateway must give alike.

Python 3 standard library only. GatewayTest is the base of each gateway
suite's test classes (tests/nginx/test_nginx.py, tests/haproxy/test_haproxy.py):
it starts Redis and keygated (kgtest.Env) for the class, asks the suite to
start its gateway, and gives the helpers the cases use. DecisionCases holds
the conformance cases: a suite's Decisions class mixes them in, next to
its own gateway-specific tests:

    class Decisions(gateway_cases.DecisionCases, Base): ...

What a suite provides (GatewayTest's hooks):
    start_gateway()   classmethod: start the gateway on cls.env, set cls.gw
                      (a kggateway.Gateway: port, request, get_json, get_echo)
    stop_gateway()    classmethod: stop whatever start_gateway started (it
                      may have failed half-way); may raise after stopping
    gateway_logs()    every log the gateway wrote (the no-token-in-logs case)
    refusal_balance   does a 402 on /gen/ tell the wallet's balance?
    open_paths        paths on the echo upstream without keygate
    logs_name_requests  do gateway_logs() show request lines?

The gateways serve the same paths (see tests/lib/kggateway.py).
"""

import http.client
import os
import threading
import time
import unittest

import kggateway
import kgtest
from kggateway import bearer, gen_headers


class GatewayTest(unittest.TestCase):
    extra_config = None     # extra lines for the keygate config file

    @classmethod
    def setUpClass(cls):
        cls.env = kgtest.Env(catalog=kggateway.catalog(), extra_config=cls.extra_config)
        cls.gw = None
        try:
            cls.c = cls.env.client()
            cls.start_gateway()
        except BaseException:
            try:
                cls.stop_gateway()
            finally:
                cls.env.close()
            raise

    @classmethod
    def tearDownClass(cls):
        try:
            cls.stop_gateway()
        finally:
            cls.env.close()

    @classmethod
    def start_gateway(cls):
        raise NotImplementedError

    @classmethod
    def stop_gateway(cls):
        raise NotImplementedError

    def accounts(self, credit_micros=1_000_000):
        return kggateway.setup_accounts(self.c, credit_micros)

    def call_ok_soon(self, method, user, timeout=10, **args):
        """keygated's result of method, asked again until it answers ok:
        right after a Redis restart keygated may still be reconnecting."""
        deadline = time.monotonic() + timeout
        while True:
            r = self.c.call(method, user, **args)
            if r.get("ok") or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.assertTrue(r.get("ok"), r)
        return r["result"]

    def balance(self, a):
        return self.call_ok_soon("wallet.get", a["user"], wallet=a["wallet"])["balance_micros"]

    def assertServedSoon(self, path, headers=None, timeout=10):
        """Asks until the gateway serves path (200), for a gateway that is
        recovering (Redis or the agent back); returns what the upstream saw."""
        deadline = time.monotonic() + timeout
        while True:
            status, seen = self.gw.get_echo(path, headers)
            if status == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.assertEqual(status, 200, seen)
        return seen

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


class DecisionCases:
    """Each answer of the gateway, as an HTTP client sees it. A mixin, not a
    TestCase: it runs only where a suite mixes it into a GatewayTest."""

    # These cases judge decisions, not latency: on a loaded machine (two
    # cores, several suites at once) 40 requests in flight must not turn
    # the default 50 ms Redis timeout into 503s.
    extra_config = ["timeout_ms 1000"]
    refusal_balance = False
    open_paths = ("/open/x",)
    logs_name_requests = False

    def gateway_logs(self):
        raise NotImplementedError

    def assertRefusalBalance(self, doc, balance):
        """A 402's balance_micros: there where the gateway tells it, else absent."""
        if self.refusal_balance:
            self.assertEqual(doc.get("balance_micros"), balance, doc)
        else:
            self.assertNotIn("balance_micros", doc)

    # -- passes ------------------------------------------------------------

    def test_free_service_passes_and_upstream_sees_key_and_user(self):
        a = self.accounts()
        status, seen = self.gw.get_echo("/stt/x", {**bearer(a["free_token"]),
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
        status, seen = self.gw.get_echo("/stt/x", {"X-API-Key": a["free_token"]})
        self.assertEqual(status, 200, seen)
        self.assertEqual(seen["key"], a["free_key"])

    def test_payg_charge_equals_estimate_and_debits_wallet_exactly(self):
        a = self.accounts(credit_micros=1_000_000)
        cost = self.estimate("text-generation", "small", input_tokens=1234, output_tokens=567)
        self.assertGreater(cost, 0)
        h = gen_headers(a["paid_token"], inp=1234, out=567)
        status, seen = self.gw.get_echo("/gen/x", h)
        self.assertEqual(status, 200, seen)
        self.assertEqual(int(seen["cost"]), cost)
        self.assertEqual(int(seen["balance"]), 1_000_000 - cost)
        self.assertEqual(self.balance(a), 1_000_000 - cost)
        self.assertEqual(seen["key"], a["paid_key"])
        # ten more: exactly ten more charges
        for _ in range(10):
            self.assertEqual(self.gw.get_echo("/gen/x", h)[0], 200)
        self.assertEqual(self.balance(a), 1_000_000 - 11 * cost)
        ledger = self.c.ok("wallet.ledger", a["user"], wallet=a["wallet"], limit=100)["entries"]
        debits = [e for e in ledger if e["type"] == "debit"]
        self.assertEqual(len(debits), 11, ledger[:3])
        self.assertEqual(sum(abs(e["amount_micros"]) for e in debits), 11 * cost)

    def test_open_path_needs_no_token(self):
        for path in self.open_paths:
            status, seen = self.gw.get_echo(path)
            self.assertEqual(status, 200, (path, seen))
            self.assertEqual(seen["key"], "")
            self.assertEqual(seen["status"], "")

    def test_many_requests_in_flight_at_once(self):
        """40 concurrent clients, every one answered and charged exactly once."""
        a = self.accounts(credit_micros=10_000_000)
        cost = self.estimate("text-generation", "small", input_tokens=100, output_tokens=100)
        results = []

        def one():
            results.append(self.gw.get_echo("/gen/x", gen_headers(a["paid_token"], inp=100, out=100))[0])
        threads = [threading.Thread(target=one) for _ in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        self.assertEqual(results, [200] * 40)
        self.assertEqual(self.balance(a), 10_000_000 - 40 * cost)

    # -- 401 ---------------------------------------------------------------

    def test_missing_token_is_401_json_with_www_authenticate(self):
        status, doc, h = self.gw.get_json("/stt/x")
        self.assertRefusal(status, doc, 401, "token_malformed")
        self.assertEqual(h.get("content-type"), "application/json")
        self.assertIn("Bearer", h.get("www-authenticate", ""))
        # another scheme is not a token either
        status, doc, _ = self.gw.get_json("/stt/x", {"Authorization": "Basic dXNlcjpwdw=="})
        self.assertRefusal(status, doc, 401, "token_malformed")

    def test_malformed_token_is_401(self):
        a = self.accounts()
        bad = a["free_token"][:-1] + ("A" if a["free_token"][-1] != "A" else "B")
        for tok in ("kg_short", bad, "", "x" * 300):
            status, doc, _ = self.gw.get_json("/stt/x", bearer(tok))
            self.assertRefusal(status, doc, 401, "token_malformed")

    def test_unknown_token_is_401(self):
        status, doc, _ = self.gw.get_json("/stt/x", bearer(kggateway.fake_token()))
        self.assertRefusal(status, doc, 401, "token_unknown")

    def test_rotated_away_token_is_401(self):
        a = self.accounts()
        self.assertEqual(self.gw.get_echo("/stt/x", bearer(a["free_token"]))[0], 200)
        new = self.c.ok("token.rotate", a["user"], key=a["free_key"])["token"]
        deadline = time.monotonic() + 1.0
        while True:
            status, doc, _ = self.gw.get_json("/stt/x", bearer(a["free_token"]))
            if status == 401 or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        self.assertRefusal(status, doc, 401)
        self.assertEqual(self.gw.get_echo("/stt/x", bearer(new))[0], 200)

    def test_revoked_key_is_401_within_one_second(self):
        a = self.accounts()
        h = gen_headers(a["paid_token"], inp=10, out=10)
        for _ in range(3):                    # warm whatever cache there is
            self.assertEqual(self.gw.get_echo("/gen/x", h)[0], 200)
        before = self.balance(a)
        self.c.ok("key.revoke", a["user"], key=a["paid_key"])
        t0 = time.monotonic()
        while True:
            status, doc, _ = self.gw.get_json("/gen/x", h)
            elapsed = time.monotonic() - t0
            if status != 200 or elapsed > 2.0:
                break
            time.sleep(0.01)
        self.assertRefusal(status, doc, 401, "key_revoked")
        self.assertLess(elapsed, 1.0, "revoked key still accepted after %.3fs" % elapsed)
        charged_after = before - self.balance(a)
        # whatever passed in the race window was charged; nothing refused was
        self.assertEqual(self.gw.get_json("/gen/x", h)[0], 401)
        self.assertEqual(before - self.balance(a), charged_after)

    # -- 403, 402, 429 -----------------------------------------------------

    def test_service_not_enabled_on_key_is_403(self):
        a = self.accounts()
        status, doc, _ = self.gw.get_json("/gen/x", gen_headers(a["free_token"]))
        self.assertRefusal(status, doc, 403, "service_disabled")

    def test_unknown_service_is_refused(self):
        """A service keygate does not sell on this key: 403 service_disabled."""
        a = self.accounts()
        status, doc, _ = self.gw.get_json("/tiny/x", gen_headers(a["paid_token"]))
        self.assertRefusal(status, doc, 403, "service_disabled")

    def test_model_not_allowed_is_403(self):
        a = self.accounts()
        status, doc, _ = self.gw.get_json("/gen/x", gen_headers(a["paid_token"], model="large"))
        self.assertRefusal(status, doc, 403)
        self.assertNotEqual(doc["error"], "service_disabled")
        self.assertNotEqual(doc["error"], self.gw.get_json(
            "/gen/x", gen_headers(a["free_token"]))[1]["error"])
        self.assertEqual(self.balance(a), 1_000_000)

    def test_insufficient_funds_is_402_with_cost(self):
        a = self.accounts(credit_micros=100)
        cost = self.estimate("text-generation", "small", input_tokens=1000, output_tokens=0)
        self.assertEqual(cost, 150)
        status, doc, _ = self.gw.get_json("/gen/x", gen_headers(a["paid_token"], inp=1000, out=0))
        self.assertRefusal(status, doc, 402, "insufficient_funds")
        self.assertRefusalBalance(doc, 100)
        self.assertEqual(doc.get("cost_micros"), cost, doc)
        self.assertEqual(self.balance(a), 100)

    def test_empty_wallet_is_402(self):
        a = self.accounts(credit_micros=0)
        status, doc, _ = self.gw.get_json("/gen/x", gen_headers(a["paid_token"], inp=1, out=1))
        self.assertRefusal(status, doc, 402, "insufficient_funds")
        self.assertRefusalBalance(doc, 0)
        self.assertEqual(self.balance(a), 0)

    def test_free_quota_used_up_is_429(self):
        a = self.accounts()
        for i in range(3):
            status, seen = self.gw.get_echo("/tiny/x", bearer(a["free_token"]))
            self.assertEqual(status, 200, (i, seen))
        status, doc, _ = self.gw.get_json("/tiny/x", bearer(a["free_token"]))
        self.assertRefusal(status, doc, 429, "quota_exceeded")

    # -- 400 ---------------------------------------------------------------

    def test_rate_limited_is_429_with_retry_after_and_not_charged(self):
        a = self.accounts()
        self.c.ok("key.update", a["user"], key=a["paid_key"],
                  rate_limits={"text-generation": {"per_minute": 2}})
        h = gen_headers(a["paid_token"], inp=10, out=10)
        for i in range(2):
            self.assertEqual(self.gw.get_echo("/gen/x", h)[0], 200, i)
        before = self.balance(a)
        status, doc, hdrs = self.gw.get_json("/gen/x", h)
        self.assertRefusal(status, doc, 429, "rate_limited")
        self.assertTrue(1 <= doc["retry_after_ms"] <= 60000, doc)
        self.assertEqual(int(hdrs["retry-after"]), (doc["retry_after_ms"] + 999) // 1000, hdrs)
        self.assertEqual(self.balance(a), before)
        # the free quota's 429 is another code, without Retry-After
        for _ in range(3):
            self.gw.get_echo("/tiny/x", bearer(a["free_token"]))
        status, doc, hdrs = self.gw.get_json("/tiny/x", bearer(a["free_token"]))
        self.assertRefusal(status, doc, 429, "quota_exceeded")
        self.assertNotIn("retry-after", hdrs)

    def test_budget_exceeded_is_402(self):
        a = self.accounts()
        cost = self.estimate("text-generation", "small", input_tokens=10, output_tokens=10)
        self.c.ok("key.update", a["user"], key=a["paid_key"], budget_day_micros=cost)
        h = gen_headers(a["paid_token"], inp=10, out=10)
        self.assertEqual(self.gw.get_echo("/gen/x", h)[0], 200)
        before = self.balance(a)
        status, doc, _ = self.gw.get_json("/gen/x", h)
        self.assertRefusal(status, doc, 402, "budget_exceeded")
        self.assertEqual(self.balance(a), before)

    def test_expired_key_is_401_from_its_instant(self):
        a = self.accounts()
        h = gen_headers(a["paid_token"], inp=10, out=10)
        self.assertEqual(self.gw.get_echo("/gen/x", h)[0], 200)
        exp = kgtest.now_ms() + 400
        self.c.ok("key.update", a["user"], key=a["paid_key"], expires_at=exp)
        while kgtest.now_ms() < exp + 5:
            time.sleep(0.01)
        status, doc, hdrs = self.gw.get_json("/gen/x", h)
        self.assertRefusal(status, doc, 401, "key_expired")
        self.assertIn("www-authenticate", hdrs)

    def test_param_that_is_not_an_integer_is_400(self):
        a = self.accounts()
        for v in ("abc", "12x", "-", "99999999999999999999999"):
            status, doc, _ = self.gw.get_json("/gen/x", gen_headers(a["paid_token"], inp=v))
            self.assertRefusal(status, doc, 400, "bad_request")
            self.assertIn("input_tokens", doc["message"])
        status, doc, _ = self.gw.get_json("/gen/x", gen_headers(a["paid_token"], inp=-5))
        self.assertRefusal(status, doc, 400)
        self.assertEqual(self.balance(a), 1_000_000)

    def test_missing_required_param_is_400_and_zero_price_is_not_free(self):
        """Issue 10: leaving out X-Input-Tokens made a paid model cost 0,
        served from a wallet at 0 with a 0-micro ledger entry each time."""
        a = self.accounts(credit_micros=0)
        h = bearer(a["paid_token"])
        h["X-Model"] = "small"
        status, doc, _ = self.gw.get_json("/gen/x", h)    # no X-Input-Tokens
        self.assertRefusal(status, doc, 400, "bad_request")
        # given as 0: priced at the paid model's floor (1 micro), not 0
        status, doc, _ = self.gw.get_json("/gen/x", gen_headers(a["paid_token"], inp=0, out=0))
        self.assertRefusal(status, doc, 402, "insufficient_funds")
        self.assertEqual(doc.get("cost_micros"), 1, doc)
        self.assertEqual(self.balance(a), 0)
        entries = self.c.ok("wallet.ledger", a["user"], wallet=a["wallet"])["entries"]
        self.assertEqual([e for e in entries if e["type"] == "debit"], [], entries)

    # -- request ids -------------------------------------------------------

    def test_same_request_id_twice_is_charged_once(self):
        a = self.accounts(credit_micros=1_000_000)
        h = gen_headers(a["paid_token"], inp=2000, out=1000,
                        request_id="req-%s" % os.urandom(4).hex())
        s1, seen1 = self.gw.get_echo("/gen/x", h)
        s2, seen2 = self.gw.get_echo("/gen/x", h)
        self.assertEqual((s1, s2), (200, 200), (seen1, seen2))
        cost = self.estimate("text-generation", "small", input_tokens=2000, output_tokens=1000)
        self.assertEqual(int(seen1["cost"]), cost)
        self.assertEqual(int(seen2["cost"]), 0)          # replayed: nothing charged
        self.assertEqual(self.balance(a), 1_000_000 - cost)
        # another id is another charge
        h["X-Request-Id"] = "other-%s" % os.urandom(4).hex()
        self.assertEqual(self.gw.get_echo("/gen/x", h)[0], 200)
        self.assertEqual(self.balance(a), 1_000_000 - 2 * cost)

    def test_request_id_reused_for_another_request_is_409_and_not_proxied(self):
        """Issue 10: an id first used on a 1-micro request served any
        request free. Now only the same request replays."""
        self.check_request_id_reused((409,))

    def check_request_id_reused(self, statuses):
        """The reused id's refusal status is one of statuses; with 409
        alone it must be the request_id_conflict refusal."""
        a = self.accounts(credit_micros=10)
        rid = "cheap-%s" % os.urandom(4).hex()
        status, seen = self.gw.get_echo("/gen/x", gen_headers(a["paid_token"], inp=1, out=0,
                                                               request_id=rid))
        self.assertEqual(status, 200, seen)
        self.assertEqual(int(seen["cost"]), 1)
        for _ in range(5):
            status, doc, _ = self.gw.get_json(
                "/gen/x", gen_headers(a["paid_token"], inp=10_000_000, out=10_000_000,
                                      request_id=rid))
            if statuses == (409,):
                self.assertRefusal(status, doc, 409, "request_id_conflict")
            else:
                self.assertIn(status, statuses, doc)
            self.assertNotIn("key", doc)             # the JSON refusal, not the upstream's echo
        self.assertEqual(self.balance(a), 9)
        # the true replay still reaches the upstream, charged nothing
        status, seen = self.gw.get_echo("/gen/x", gen_headers(a["paid_token"], inp=1, out=0,
                                                               request_id=rid))
        self.assertEqual(status, 200, seen)
        self.assertEqual((seen["cost"], seen["status"], seen["key"]), ("0", "ok", a["paid_key"]))
        self.assertEqual(self.balance(a), 9)

    # -- the connection and the logs ---------------------------------------

    def test_refusal_keeps_connection_usable(self):
        """A refusal is a complete HTTP response: the keep-alive connection
        carries the next request, also when the refused one had a body."""
        a = self.accounts()
        conn = http.client.HTTPConnection("127.0.0.1", self.gw.port, timeout=5)
        try:
            conn.request("POST", "/stt/x", body=b"x" * 5000, headers={"Content-Type": "text/plain"})
            r = conn.getresponse()
            r.read()
            self.assertEqual(r.status, 401)
            conn.request("GET", "/stt/x", headers=bearer(a["free_token"]))
            r = conn.getresponse()
            r.read()
            self.assertEqual(r.status, 200)
        finally:
            conn.close()

    def test_zz_no_token_in_any_log(self):
        a = self.accounts()
        self.gw.get_echo("/stt/x", bearer(a["free_token"]))
        self.gw.get_echo("/gen/x", gen_headers(a["paid_token"]))
        self.gw.get_echo("/gen/x", gen_headers(a["free_token"]))
        self.gw.get_echo("/gen/x", {"X-API-Key": a["paid_token"][:-2] + "zz"})
        time.sleep(0.2)
        logs = self.gateway_logs()
        if self.logs_name_requests:
            self.assertIn("/gen/x", logs)
        for tok in (a["free_token"], a["paid_token"]):
            self.assertNotIn(tok[3:20], logs)
            self.assertNotIn(tok[-20:-2], logs)
