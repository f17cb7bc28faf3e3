#!/usr/bin/env python3
"""The nginx adapter end to end: a real nginx with the built module, a real
redis-server and a real keygated, all started here (tests/lib/kgtest.py,
tests/nginx/kgnginx.py), on loopback ports and Unix sockets in temp dirs.

Run one class per CTest test, e.g.:
    python3 test_nginx.py -v Decisions
"""

import os
import signal
import socket
import sys
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
sys.path.insert(0, HERE)

import kgtest  # noqa: E402
import kgnginx  # noqa: E402
import gateway_cases  # noqa: E402
from kggateway import bearer, gen_headers  # noqa: E402


class Base(gateway_cases.GatewayTest):
    extra_nginx = ""        # extra lines for the gateway's server block
    workers = 1

    @classmethod
    def start_gateway(cls):
        cls.ngx = cls.gw = kgnginx.Nginx(cls.env.config_path, workers=cls.workers,
                                         extra=cls.extra_nginx)

    @classmethod
    def stop_gateway(cls):
        ngx = getattr(cls, "ngx", None)
        cls.ngx = cls.gw = None
        if ngx is not None:
            if os.environ.get("KGTEST_LOG"):
                print("---- nginx error.log ----\n" + ngx.error_log()[-6000:])
            ngx.close()

    def pids_of(self, path):
        """Worker pids that served requests for path (from the access log)."""
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            lines = [l for l in self.ngx.access_log().splitlines() if '"GET %s ' % path in l]
            if lines:
                return {l.split("pid=")[1].split()[0] for l in lines}
            time.sleep(0.05)
        return set()


class Decisions(gateway_cases.DecisionCases, Base):
    """Each answer of the gateway, as an HTTP client sees it: the cases every
    gateway shares (gateway_cases.DecisionCases), then nginx's own."""

    open_paths = ("/open/x", "/gen/open/x")     # a location, a nested one
    logs_name_requests = True                   # the access log

    def gateway_logs(self):
        return self.ngx.all_logs()

    def test_insufficient_funds_tells_balance_where_switched_on(self):
        a = self.accounts(credit_micros=100)
        status, doc, _ = self.ngx.get_json("/gen-bal/x", gen_headers(a["paid_token"], inp=1000, out=0))
        self.assertRefusal(status, doc, 402, "insufficient_funds")
        self.assertEqual(doc.get("balance_micros"), 100, doc)
        self.assertEqual(doc.get("cost_micros"), 150, doc)

    def test_internal_redirect_into_same_service_is_not_charged_again(self):
        a = self.accounts(credit_micros=1_000_000)
        cost = self.estimate("text-generation", "small", input_tokens=1000, output_tokens=1000)
        status, seen = self.ngx.get_echo("/gen-redirect/x", gen_headers(a["paid_token"]))
        self.assertEqual(status, 200, seen)
        self.assertEqual(seen["key"], a["paid_key"])
        self.assertEqual(int(seen["cost"]), cost)
        self.assertEqual(self.balance(a), 1_000_000 - cost)

    def test_variables_reach_the_access_log(self):
        a = self.accounts()
        self.assertEqual(self.ngx.get_echo("/gen/y", gen_headers(a["paid_token"], inp=1000, out=0))[0], 200)
        self.ngx.get_json("/stt/nolog-probe")
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            log = self.ngx.access_log()
            if "/stt/nolog-probe" in log:
                break
            time.sleep(0.05)
        line = [l for l in log.splitlines() if '"GET /gen/y' in l][-1]
        self.assertIn("kg=ok key=%s user=%s team=%s cost=150" % (a["paid_key"], a["user"], a["team"]), line)
        line = [l for l in log.splitlines() if "/stt/nolog-probe" in l][-1]
        self.assertRegex(line, r" 401 pid=\d+ kg=token_malformed key=- ")


class RedisOutage(Base):
    """Fail closed when Redis is gone, recover on its own when it is back."""

    extra_config = ["timeout_ms 200"]

    def test_redis_down_is_503_then_recovers(self):
        a = self.accounts()
        h = gen_headers(a["paid_token"], inp=10, out=10)
        self.assertEqual(self.ngx.get_echo("/gen/x", h)[0], 200)
        self.assertEqual(self.ngx.get_echo("/stt/x", bearer(a["free_token"]))[0], 200)

        self.env.stop_redis(save=True)
        for path, hh in (("/gen/x", h), ("/stt/x", bearer(a["free_token"]))):
            t0 = time.monotonic()
            status, doc, _ = self.ngx.get_json(path, hh)
            self.assertRefusal(status, doc, 503)
            self.assertLess(time.monotonic() - t0, 2.0)
        # the open location does not care
        self.assertEqual(self.ngx.get_echo("/open/x")[0], 200)

        self.env.start_redis()
        self.assertServedSoon("/gen/x", h)
        self.assertEqual(self.ngx.get_echo("/stt/x", bearer(a["free_token"]))[0], 200)

        # and revocation still reaches the gateway (the subscription is back);
        # keygated itself may take a moment to reconnect
        self.call_ok_soon("key.revoke", a["user"], key=a["paid_key"])
        deadline = time.monotonic() + 1.5
        while True:
            status, doc, _ = self.ngx.get_json("/gen/x", h)
            if status == 401 or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        self.assertRefusal(status, doc, 401)

        log = self.ngx.error_log()
        self.assertNotIn("exited on signal", log)


class NotBlocked(Base):
    """With Redis frozen, the single worker keeps serving everything else."""

    extra_config = ["timeout_ms 3000"]

    def setUp(self):
        self.redis_pid = self.env.redis_proc.pid
        self.stopped = False

    def tearDown(self):
        if self.stopped:
            os.kill(self.redis_pid, signal.SIGCONT)

    def freeze_redis(self):
        os.kill(self.redis_pid, signal.SIGSTOP)
        self.stopped = True

    def thaw_redis(self):
        os.kill(self.redis_pid, signal.SIGCONT)
        self.stopped = False

    def test_worker_serves_other_locations_while_redis_is_frozen(self):
        self.assertEqual(len(self.ngx.worker_pids()), 1)
        a = self.accounts()
        h = gen_headers(a["paid_token"], inp=10, out=10)
        self.assertEqual(self.ngx.get_echo("/gen/x", h)[0], 200)   # warm

        results = []

        def one():
            status, seen = self.ngx.get_echo("/gen/x", h, timeout=20)
            results.append((status, time.monotonic(), seen))

        self.freeze_redis()
        frozen_at = time.monotonic()
        threads = [threading.Thread(target=one) for _ in range(8)]
        for t in threads:
            t.start()
        time.sleep(0.3)               # let them reach the worker and wait on Redis

        worst = 0.0
        for i in range(20):
            for path in ("/static", "/open/x"):
                t0 = time.monotonic()
                try:
                    status, _, _ = self.ngx.request(path, timeout=2)
                except OSError as e:
                    self.fail("%s did not answer while Redis was frozen: %r" % (path, e))
                worst = max(worst, time.monotonic() - t0)
                self.assertEqual(status, 200, path)
        self.assertEqual(results, [], "keygate requests answered while Redis was frozen")
        self.assertLess(worst, 0.25, "an open location took %.3fs with Redis frozen" % worst)

        time.sleep(max(0.0, 1.0 - (time.monotonic() - frozen_at)))
        thawed_at = time.monotonic()
        self.thaw_redis()
        for t in threads:
            t.join(20)
        self.assertEqual(len(results), 8)
        # Measured from the thaw, not from each thread's start (a thread a
        # busy machine starts late would look as if it had not waited).
        for status, done_at, seen in results:
            self.assertEqual(status, 200, seen)
            self.assertGreaterEqual(done_at, thawed_at)   # they did wait for Redis ...
            self.assertLess(done_at - thawed_at, 1.9)     # ... and resumed as soon as it was back

    def test_frozen_redis_times_out_to_503(self):
        a = self.accounts()
        h = gen_headers(a["paid_token"], inp=10, out=10)
        self.assertEqual(self.ngx.get_echo("/gen/x", h)[0], 200)
        self.freeze_redis()
        t0 = time.monotonic()
        status, doc, _ = self.ngx.get_json("/gen/x", h, timeout=20)
        took = time.monotonic() - t0
        self.thaw_redis()
        self.assertRefusal(status, doc, 503)
        self.assertGreater(took, 2.5)
        self.assertLess(took, 6.0)
        # the same worker carries on
        self.assertServedSoon("/gen/x", h)

    def test_client_that_leaves_while_waiting_is_cancelled_cleanly(self):
        a = self.accounts()
        h = gen_headers(a["paid_token"], inp=10, out=10)
        self.assertEqual(self.ngx.get_echo("/gen/x", h)[0], 200)
        pids = self.ngx.worker_pids()
        self.freeze_redis()
        socks = []
        for _ in range(5):
            s = socket.create_connection(("127.0.0.1", self.ngx.port), timeout=5)
            req = "GET /gen/gone HTTP/1.1\r\nHost: x\r\n" + "".join(
                "%s: %s\r\n" % kv for kv in h.items()) + "\r\n"
            s.sendall(req.encode())
            socks.append(s)
        time.sleep(0.3)
        for s in socks:
            s.close()
        time.sleep(0.3)
        self.thaw_redis()
        time.sleep(0.3)
        self.assertEqual(self.ngx.get_echo("/gen/x", h)[0], 200)
        self.assertEqual(self.ngx.worker_pids(), pids, "the worker died")
        log = self.ngx.error_log()
        self.assertNotIn("exited on signal", log)
        self.assertNotIn("[alert]", log)
        deadline = time.monotonic() + 2
        while self.ngx.access_log().count("/gen/gone") < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        gone = [l for l in self.ngx.access_log().splitlines() if "/gen/gone" in l]
        self.assertEqual(len(gone), 5)
        for line in gone:
            self.assertIn(" 499 ", line)

    def test_graceful_reload_keeps_working(self):
        a = self.accounts()
        h = gen_headers(a["paid_token"], inp=10, out=10)
        self.assertEqual(self.ngx.get_echo("/gen/x", h)[0], 200)
        old = self.ngx.worker_pids()
        self.ngx.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pids = self.ngx.worker_pids()
            if pids and not set(pids) & set(old):
                break
            time.sleep(0.05)
        self.assertFalse(set(self.ngx.worker_pids()) & set(old))
        self.assertEqual(self.ngx.get_echo("/gen/x", h)[0], 200)
        self.assertNotIn("exited on signal", self.ngx.error_log())
        self.assertNotIn("[alert]", self.ngx.error_log())


class TwoWorkers(Base):
    """Each worker has its own kg_ctx; a revocation reaches all of them."""

    workers = 2

    def test_revocation_reaches_every_worker_within_one_second(self):
        self.assertEqual(len(self.ngx.worker_pids()), 2)
        a = self.accounts()
        h = gen_headers(a["paid_token"], inp=10, out=10)
        # new connections land on either worker: warm both
        for _ in range(60):
            self.assertEqual(self.ngx.get_echo("/gen/warm", h)[0], 200)
        if len(self.pids_of("/gen/warm")) < 2:
            self.skipTest("the kernel sent every connection to one worker")
        self.c.ok("key.revoke", a["user"], key=a["paid_key"])
        time.sleep(1.0)
        statuses = [self.ngx.get_json("/gen/after", h)[0] for _ in range(60)]
        # Never accepted. A worker whose dropped entry sends the request to
        # Redis may answer 503 on a loaded machine (timeout_ms): closed too.
        self.assertNotIn(200, statuses, "accepted more than 1 s after the revocation")
        self.assertLessEqual(set(statuses), {401, 503}, statuses)
        self.assertIn(401, statuses)
        self.assertEqual(len(self.pids_of("/gen/after")), 2,
                         "only one worker was asked after the revocation")


LEASE_DIR = None


def lease_dir():
    global LEASE_DIR
    if LEASE_DIR is None:
        import tempfile
        LEASE_DIR = tempfile.mkdtemp(prefix="kglease")
    return LEASE_DIR


class Leased(Base):
    """`debit leased` by config alone (issue 14): two workers decide paid
    requests against their leases; a graceful reload and a graceful stop
    flush every worker's entries and return its leases, so the ledger then
    holds exactly one debit per request served and no funds stay leased."""

    workers = 2
    extra_config = ["timeout_ms 1000", "debit leased", "lease_ttl_ms 3000",
                    "lease_journal %s/journal" % lease_dir()]

    def money(self, a, credit, n, cost):
        wal = self.call_ok_soon("wallet.get", a["user"], wallet=a["wallet"])
        entries = self.c.ok("wallet.ledger", a["user"], wallet=a["wallet"], limit=1000)["entries"]
        debits = [e for e in entries if e["type"] == "debit"]
        self.assertEqual(len(debits), n)
        self.assertEqual(sum(e["amount_micros"] for e in debits), n * cost)
        self.assertEqual(wal.get("leased_micros", 0), 0, "a worker kept its lease")
        self.assertEqual(wal["balance_micros"], credit - n * cost)
        return debits

    def wait_workers_replaced(self, old):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pids = self.ngx.worker_pids()
            if len(pids) == self.workers and not set(pids) & set(old):
                return
            time.sleep(0.05)
        self.fail("old workers still running")

    def test_reload_and_stop_flush_every_worker(self):
        credit = 100_000_000
        a = self.accounts(credit_micros=credit)
        h = gen_headers(a["paid_token"], inp=10, out=10)
        cost = self.estimate("text-generation", "small", input_tokens=10, output_tokens=10)
        for i in range(300):
            self.assertEqual(self.ngx.get_echo("/gen/l%d" % i, h)[0], 200)
        old = self.ngx.worker_pids()
        self.ngx.proc.send_signal(signal.SIGHUP)
        self.wait_workers_replaced(old)
        debits = self.money(a, credit, 300, cost)   # the old workers flushed on their way out
        # An exact-path debit names no lease. Counted in the ledger, not in
        # EVALSHA calls (the workers' timed flushes are EVALSHAs too).
        exact = sum(1 for e in debits if "lease" not in e)
        self.assertLess(exact, 150, "most requests should be decided against a lease")
        for i in range(100):
            self.assertEqual(self.ngx.get_echo("/gen/m%d" % i, h)[0], 200)
        self.ngx.stop()
        self.money(a, credit, 400, cost)
        self.assertNotIn("[alert]", self.ngx.error_log())
        print("\n400 leased requests over 2 workers, a reload and a stop: %d went to the "
              "debit script, every one charged once" % exact, file=sys.stderr)


def parse_metrics(text):
    """Prometheus text format -> ({"name{labels}": value}, {name: (type, help)})."""
    values, meta = {}, {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, help_ = line[7:].partition(" ")
            meta.setdefault(name, [None, None])[1] = help_
        elif line.startswith("# TYPE "):
            name, _, typ = line[7:].partition(" ")
            meta.setdefault(name, [None, None])[0] = typ
        elif line and not line.startswith("#"):
            key, _, v = line.rpartition(" ")
            values[key] = float(v)
    return values, {k: tuple(v) for k, v in meta.items()}


class Metrics(Base):
    """keygate_status: counters in a shared zone, summed across workers."""

    workers = 2
    extra_config = ["timeout_ms 200"]
    extra_nginx = "        location = /kg-status { keygate_status; add_header X-Worker $pid; }\n"

    def scrape(self, with_pid=False):
        status, h, body = self.ngx.request("/kg-status")
        self.assertEqual(status, 200, body)
        self.assertEqual(h.get("content-type"), "text/plain; version=0.0.4")
        values, meta = parse_metrics(body.decode())
        return (values, h.get("x-worker")) if with_pid else (values, meta)

    def delta(self, before, after, key):
        return after.get(key, 0) - before.get(key, 0)

    def test_format_names_and_help(self):
        values, meta = self.scrape()
        want = {
            "keygate_authorizations_total": "counter",
            "keygate_authorization_duration_seconds": "histogram",
            "keygate_charged_micros_total": "counter",
            "keygate_replays_total": "counter",
            "keygate_token_cache_hits_total": "counter",
            "keygate_token_cache_misses_total": "counter",
            "keygate_invalidations_total": "counter",
            "keygate_backend_errors_total": "counter",
        }
        for name, typ in want.items():
            self.assertIn(name, meta)
            self.assertEqual(meta[name][0], typ, name)
            self.assertTrue(meta[name][1], name)
        for code in ("ok", "token_malformed", "insufficient_funds", "request_id_conflict",
                     "backend_error", "quota_exceeded"):
            self.assertIn('keygate_authorizations_total{status="%s"}' % code, values)
        # cumulative buckets ending in +Inf == _count
        buckets = [(k, v) for k, v in values.items()
                   if k.startswith("keygate_authorization_duration_seconds_bucket")]
        self.assertGreaterEqual(len(buckets), 5)
        counts = [v for _, v in buckets]
        self.assertEqual(counts, sorted(counts))
        self.assertEqual(buckets[-1][0], 'keygate_authorization_duration_seconds_bucket{le="+Inf"}')
        self.assertEqual(counts[-1], values["keygate_authorization_duration_seconds_count"])
        # POST is not a scrape
        self.assertEqual(self.ngx.request("/kg-status", method="POST", body=b"x")[0], 405)

    def test_counters_move_across_both_workers(self):
        a = self.accounts(credit_micros=1_000_000)
        before, _ = self.scrape()
        n_ok, n_bad = 40, 10
        cost = self.estimate("text-generation", "small", input_tokens=1000, output_tokens=1000)
        for i in range(n_ok):
            self.assertEqual(self.ngx.get_echo("/gen/m", gen_headers(a["paid_token"]))[0], 200)
        for i in range(n_bad):
            self.assertEqual(self.ngx.get_json("/gen/m", bearer("kg_short"))[0], 401)
        rid = "m-%s" % os.urandom(4).hex()
        for i in range(3):
            self.assertEqual(self.ngx.get_echo("/gen/m", gen_headers(a["paid_token"], request_id=rid))[0], 200)
        self.assertEqual(self.ngx.get_json("/gen/m", gen_headers(a["paid_token"], inp=5, request_id=rid))[0], 409)
        if len(self.pids_of("/gen/m")) < 2:
            self.skipTest("the kernel sent every connection to one worker")
        # every scrape, whichever worker answers it, sees both workers' counts
        scraped_by = set()
        for _ in range(200):
            if len(scraped_by) == 2:
                break
            after, pid = self.scrape(with_pid=True)
            scraped_by.add(pid)
            ok = 'keygate_authorizations_total{status="ok"}'
            self.assertEqual(self.delta(before, after, ok), n_ok + 3)
            self.assertEqual(self.delta(before, after, 'keygate_authorizations_total{status="token_malformed"}'), n_bad)
            self.assertEqual(self.delta(before, after, 'keygate_authorizations_total{status="request_id_conflict"}'), 1)
            self.assertEqual(self.delta(before, after, "keygate_replays_total"), 2)
            self.assertEqual(self.delta(before, after, "keygate_charged_micros_total"), (n_ok + 1) * cost)
            self.assertEqual(self.delta(before, after, "keygate_authorization_duration_seconds_count"),
                             n_ok + n_bad + 4)
            self.assertGreater(self.delta(before, after, "keygate_authorization_duration_seconds_sum"), 0)
            # each well-formed token was looked up once: in the cache or in Redis
            self.assertEqual(self.delta(before, after, "keygate_token_cache_hits_total")
                             + self.delta(before, after, "keygate_token_cache_misses_total"), n_ok + 4)
            self.assertGreaterEqual(self.delta(before, after, "keygate_token_cache_misses_total"), 1)
        self.assertEqual(self.balance(a), 1_000_000 - (n_ok + 1) * cost)
        if len(scraped_by) < 2:
            self.skipTest("the kernel sent every scrape to one worker")

    def test_invalidations_reach_every_worker(self):
        a = self.accounts()
        h = gen_headers(a["paid_token"], inp=10, out=10)
        for _ in range(10):
            self.ngx.get_echo("/gen/inv", h)
        before, _ = self.scrape()
        self.c.ok("key.revoke", a["user"], key=a["paid_key"])
        deadline = time.monotonic() + 2
        while True:
            after, _ = self.scrape()
            d = self.delta(before, after, "keygate_invalidations_total")
            if d >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        # one message, received by each of the two workers' subscriptions
        self.assertGreaterEqual(d, 2)

    def test_reload_keeps_the_counts(self):
        a = self.accounts()
        h = gen_headers(a["paid_token"], inp=10, out=10)
        self.assertEqual(self.ngx.get_echo("/gen/r", h)[0], 200)
        ok = 'keygate_authorizations_total{status="ok"}'
        before, _ = self.scrape()
        self.assertGreater(before[ok], 0)
        old = set(self.ngx.worker_pids())
        self.ngx.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while set(self.ngx.worker_pids()) & old and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertFalse(set(self.ngx.worker_pids()) & old, "old workers still there")
        after, _ = self.scrape()
        self.assertEqual(after[ok], before[ok])
        self.assertEqual(self.ngx.get_echo("/gen/r", h)[0], 200)
        after, _ = self.scrape()
        self.assertEqual(after[ok], before[ok] + 1)

    def test_zz_backend_errors_while_redis_is_down(self):
        a = self.accounts()
        h = gen_headers(a["paid_token"], inp=10, out=10)
        self.assertEqual(self.ngx.get_echo("/gen/x", h)[0], 200)
        before, _ = self.scrape()
        self.env.stop_redis(save=True)
        try:
            statuses = [self.ngx.get_json("/gen/x", h)[0] for _ in range(6)]
        finally:
            self.env.start_redis()
        self.assertEqual(set(statuses), {503})
        after, _ = self.scrape()
        self.assertEqual(self.delta(before, after, 'keygate_authorizations_total{status="backend_error"}'), 6)
        self.assertEqual(self.delta(before, after, "keygate_backend_errors_total"), 6)


class Settle(Base):
    """keygate_settle_param: a settle service holds the worst-case price in
    the access phase and is settled in the log phase with the usage the
    upstream reported (docs/nginx.md)."""

    @classmethod
    def setUpClass(cls):
        # an upstream that accepts and never answers (the kernel's backlog)
        cls.hang = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        cls.hang.bind(("127.0.0.1", 0))
        cls.hang.listen(16)
        loc = """
        location %s {
            keygate_service llm;
            keygate_model m1;
            keygate_param input_tokens $http_x_input_tokens;
            keygate_param output_tokens $http_x_max_tokens;
            keygate_settle_param output_tokens $upstream_http_x_usage_output_tokens;
            proxy_pass %s;
        }
"""
        cls.extra_nginx = (loc % ("/llm/", "http://echo/usage") +
                           loc % ("/llm-hang/", "http://127.0.0.1:%d" % cls.hang.getsockname()[1]))
        super().setUpClass()

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        cls.hang.close()

    @staticmethod
    def price(inp, out):
        return 100 + -(-inp * 150 // 1000) + -(-out * 600 // 1000)

    def llm_account(self):
        a = self.accounts()
        key = self.c.ok("key.create", a["user"], team=a["team"], name="llm", users=[a["user"]],
                        services={"llm": {"policy": "payg", "models": ["m1"],
                                          "wallet": a["wallet"]}})["key_id"]
        a["llm_token"] = self.c.ok("token.generate", a["user"], key=key)["token"]
        return a

    def wait_balance(self, a, want):
        deadline = time.monotonic() + 5
        while True:
            got = self.balance(a)
            held = self.env.redis("HGET", "kg:{t:%s}:wallet:%s" % (a["team"], a["wallet"]),
                                  "held_micros")
            if got == want and int(held or 0) == 0:
                return
            if time.monotonic() > deadline:
                self.fail("balance %s held %s, expected %s held 0" % (got, held, want))
            time.sleep(0.02)

    def last_entry(self, a):
        return self.c.ok("wallet.ledger", a["user"], wallet=a["wallet"], limit=1)["entries"][0]

    def test_charged_the_reported_usage(self):
        a = self.llm_account()
        h = dict(bearer(a["llm_token"]), **{"X-Input-Tokens": "1000", "X-Use": "500"})
        status, _, body = self.ngx.request("/llm/x", h)
        self.assertEqual(status, 200, body)
        self.wait_balance(a, 1_000_000 - self.price(1000, 500))
        e = self.last_entry(a)
        self.assertEqual((e["type"], e["amount_micros"], e.get("settle"), e.get("hold_micros")),
                         ("debit", self.price(1000, 500), "settled", self.price(1000, 4096)), e)

    def test_own_maximum_and_no_usage_charges_the_hold(self):
        a = self.llm_account()
        h = dict(bearer(a["llm_token"]), **{"X-Input-Tokens": "2000", "X-Max-Tokens": "300"})
        status, _, body = self.ngx.request("/llm/x", h)        # no X-Use: no usage header
        self.assertEqual(status, 200, body)
        self.wait_balance(a, 1_000_000 - self.price(2000, 300))
        self.assertEqual(self.last_entry(a).get("settle"), "settled")

    def test_client_abort_releases_the_measured_part(self):
        a = self.llm_account()
        s = socket.create_connection(("127.0.0.1", self.ngx.port), timeout=5)
        s.sendall(("GET /llm-hang/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                   "X-Input-Tokens: 1000\r\n\r\n" % a["llm_token"]).encode())
        deadline = time.monotonic() + 5
        key = "kg:{t:%s}:wallet:%s" % (a["team"], a["wallet"])
        while int(self.env.redis("HGET", key, "held_micros") or 0) == 0:
            self.assertLess(time.monotonic(), deadline, "no hold placed")
            time.sleep(0.02)
        s.close()                                               # before any answer
        self.wait_balance(a, 1_000_000 - self.price(1000, 0))

    def test_free_and_plain_services_unchanged(self):
        a = self.accounts()
        status, seen = self.ngx.get_echo("/gen/x", gen_headers(a["paid_token"], inp=1000, out=0))
        self.assertEqual(status, 200, seen)
        self.assertEqual(self.balance(a), 1_000_000 - 150)


class Config(unittest.TestCase):
    """`nginx -t` catches configuration mistakes before they serve."""

    @classmethod
    def setUpClass(cls):
        cls.env = kgtest.Env(catalog=kgnginx.catalog(), start_daemon=False, redis=False)

    @classmethod
    def tearDownClass(cls):
        cls.env.close()

    def check(self, kgconf, extra=""):
        with kgnginx.Nginx(kgconf, extra=extra, start=False) as n:
            return n.test_config()

    def test_good_config_passes(self):
        rc, out = self.check(self.env.config_path)
        self.assertEqual(rc, 0, out)

    def test_missing_config_file_fails(self):
        rc, out = self.check(os.path.join(self.env.tmp, "nope.conf"))
        self.assertNotEqual(rc, 0)
        self.assertIn("keygate_config", out)

    def test_unknown_config_key_fails_naming_line(self):
        bad = os.path.join(self.env.tmp, "bad.conf")
        with open(self.env.config_path) as f, open(bad, "w") as g:
            g.write(f.read() + "no_such_key 1\n")
        rc, out = self.check(bad)
        self.assertNotEqual(rc, 0)
        self.assertIn("no_such_key", out)

    def test_non_integer_param_name_with_variable_fails(self):
        rc, out = self.check(self.env.config_path,
                             "location /p/ { keygate_service s; keygate_param $x 1; }")
        self.assertNotEqual(rc, 0)
        self.assertIn("keygate_param", out)

    def test_refusal_balance_takes_on_or_off(self):
        rc, out = self.check(self.env.config_path,
                             "location /p/ { keygate_service s; keygate_refusal_balance on; }")
        self.assertEqual(rc, 0, out)
        rc, out = self.check(self.env.config_path,
                             "location /p/ { keygate_service s; keygate_refusal_balance yes; }")
        self.assertNotEqual(rc, 0)
        self.assertIn("keygate_refusal_balance", out)

    def test_status_location_takes_no_argument(self):
        rc, out = self.check(self.env.config_path, "location /s { keygate_status; }")
        self.assertEqual(rc, 0, out)
        rc, out = self.check(self.env.config_path, "location /s { keygate_status on; }")
        self.assertNotEqual(rc, 0)
        self.assertIn("keygate_status", out)

    def test_duplicate_param_fails(self):
        rc, out = self.check(self.env.config_path,
                             "location /p/ { keygate_service s; keygate_param a 1; keygate_param a 2; }")
        self.assertNotEqual(rc, 0)
        self.assertIn("duplicate", out)


class NoConfig(unittest.TestCase):
    def check_without_config(self, extra, drop=()):
        """`nginx -t` on the test nginx.conf without its keygate_config line
        and without the strings of drop: (returncode, output)."""
        n = kgnginx.Nginx("/dev/null", extra=extra, start=False)
        try:
            with open(n.conf_path) as f:
                text = f.read()
            for gone in ("keygate_config /dev/null;",) + tuple(drop):
                text = text.replace(gone, "")
            with open(n.conf_path, "w") as f:
                f.write(text)
            return n.test_config()
        finally:
            n.close()

    def test_status_without_keygate_config_fails(self):
        # no keygate_service anywhere: only keygate_status lacks the config
        rc, out = self.check_without_config(
            "location = /s { keygate_status; }",
            ["keygate_service %s;" % svc
             for svc in ("text-generation", "speech-to-text", "tiny-free", "echo-free")])
        self.assertNotEqual(rc, 0)
        self.assertIn("keygate_status", out)

    def test_service_without_keygate_config_fails(self):
        rc, out = self.check_without_config("")
        self.assertNotEqual(rc, 0)
        self.assertIn("keygate_config", out)


if __name__ == "__main__":
    unittest.main()
