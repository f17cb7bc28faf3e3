"""Redis (AOF, appendfsync always) killed with SIGKILL, twice, while 4
gateway processes (kg_hammer, linked to libkeygate) hammer one wallet with
pay-as-you-go requests, each with its own request id, retrying a request
answered KG_BACKEND_ERROR with the same id, as a client behind a gateway
would. The wallet holds enough for 3/4 of the requests. Afterwards:

- every request answered KG_OK has exactly one ledger debit with its id
  (a retry whose first try was charged before the crash is a replay and is
  not charged again); a request refused for funds has none;
- no request id is charged twice; the debits never exceed the credit;
- balance == credits - debits, never negative at any entry (fsck clean);
- during the outage the module answered KG_BACKEND_ERROR, never KG_OK.
"""
import os
import signal
import sys
import time
import unittest
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safety  # noqa: E402
from safety import kgtest  # noqa: E402

PROCS = 4
PER_PROC = 500
FUNDED = 1500                      # requests the wallet can pay for
COST = safety.COST_SMALL_1000


class RedisKilled(kgtest.EnvCase):
    env_args = {"redis_args": ["--appendonly", "yes", "--appendfsync", "always"]}

    def llen(self, w):
        try:
            return self.env.redis("LLEN", "kg:{t:%s}:ledger:%s" % (w["team"], w["wallet"]))
        except (OSError, ConnectionError, kgtest.RedisError):
            return -1

    def wait_ledger(self, w, n, timeout=30):
        deadline = time.monotonic() + timeout
        while self.llen(w) < n:
            self.assertLess(time.monotonic(), deadline, "the gateways made no progress")
            time.sleep(0.01)

    def test_redis_sigkill_under_money_load(self):
        env = self.env
        w = safety.paid_world(self.c, env, FUNDED * COST)
        gw = safety.gateway_config(env, timeout_ms=1000)
        hammers = [safety.Hammer(gw, w["token_file"], PER_PROC, rid="g%d" % i, retry_for=20,
                                 out=os.path.join(env.tmp, "hammer-%d.out" % i))
                   for i in range(PROCS)]
        kills = []
        try:
            for at in (300, 900):
                self.wait_ledger(w, at)
                before = self.llen(w)
                env.stop_redis(sig=signal.SIGKILL)
                time.sleep(0.5)                       # the gateways see it down
                env.start_redis()
                kills.append((before, self.llen(w)))
            results = [h.wait(timeout=60) for h in hammers]
        finally:
            for h in hammers:
                h.kill()
        rows = []
        for rc, r, summary in results:
            self.assertEqual(rc, 0, summary)
            rows.extend(r)
            print(summary, file=sys.stderr)
        status = Counter(r["status"] for r in rows)
        self.assertEqual(len(rows), PROCS * PER_PROC)
        self.assertEqual(set(status) - {"ok", "insufficient_funds"}, set(),
                         "answers other than ok / insufficient_funds after retrying: %s" % status)
        retried = sum(1 for r in rows if r["tries"] > 1)
        self.assertGreater(retried, 0, "no request saw the outage: the kill came too late")

        entries = safety.ledger(env, w["team"], w["wallet"])
        debits = [e for e in entries if e["type"] == "debit"]
        credits = sum(e["amount_micros"] for e in entries if e["type"] == "credit")
        by_rid = Counter(e["request_id"] for e in debits)
        twice = [rid for rid, n in by_rid.items() if n > 1]
        self.assertEqual(twice, [], "request ids charged twice")
        ok = [r for r in rows if r["status"] == "ok"]
        missing = [r["rid"] for r in ok if by_rid[r["rid"]] != 1]
        self.assertEqual(missing, [], "requests answered KG_OK without their ledger debit")
        refused = [r["rid"] for r in rows if r["status"] == "insufficient_funds" and by_rid[r["rid"]]]
        self.assertEqual(refused, [], "requests refused for funds but charged")
        for r in ok:
            self.assertGreaterEqual(r["balance"], 0)
            self.assertEqual(r["cost"], 0 if r["replayed"] else COST)
        bal = safety.balance(env, w["team"], w["wallet"])
        self.assertEqual(bal, credits - sum(e["amount_micros"] for e in debits))
        self.assertEqual(len(debits), len(ok), "debits for requests not answered ok")
        self.assertEqual(len(debits), FUNDED, "the funded requests were not all charged")
        self.assertEqual(bal, 0)
        counts = safety.assert_clean(self, env, "after the Redis kills")
        print("redis kill -9 x2 (AOF always) at ledger lengths %s: %d requests by %d gateways, "
              "%d answered ok (%d of them replays of a try charged before a crash), %d refused "
              "for funds, %d retried after KG_BACKEND_ERROR (%d tries in all); ledger: %d entries "
              "(%d debits, no request id twice), balance %d = credits %d - debits %d; fsck %s"
              % (kills, len(rows), PROCS, len(ok), sum(r["replayed"] for r in ok),
                 status["insufficient_funds"], retried, sum(r["tries"] for r in rows),
                 len(entries), len(debits), bal, credits, credits - bal, counts), file=sys.stderr)


if __name__ == "__main__":
    unittest.main()
