"""keygated's sweep of expired holds (issue 13, daemon/holds.c): holds left
by gateways that died before settling, on a wallet no request touches
again, are captured by keygated at their reserved amount within about
hold_ttl_ms plus a sweep step — each exactly once (one "expired" debit per
request id), the held funds released, balance = credits - debits, fsck
clean — also while gateways race the sweep on the same wallet, and with
three keygated sweeping the same store at once."""
import json
import os
import subprocess
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
sys.path.insert(0, HERE)
import kgtest  # noqa: E402
from test_usage import CLI, SETTLE_CATALOG, one_paid_key  # noqa: E402

CREDIT = 10 ** 9


@unittest.skipUnless(os.access(CLI, os.X_OK), "needs the keygate CLI (KEYGATE_CLI)")
class HoldSweep(kgtest.EnvCase):

    # timeout_ms: 20-40 gateway processes start at once (slow under ASan)
    env_args = {"catalog": SETTLE_CATALOG, "extra_config": ["hold_ttl_ms 1500", "timeout_ms 3000"]}

    def hold_argv(self, path, rid, settle=None):
        argv = [CLI, "--json", "--config", self.env.config_path, "authorize", "--token-file", path,
                "--service", "llm", "--model", "m1", "--request-id", rid,
                "--param", "input_tokens=1000"]
        if settle is not None:
            argv += ["--settle", "output_tokens=%d" % settle]
        return argv

    def holds(self, path, rids):
        """Each rid held by its own gateway process that exits without
        settling (a gateway that died mid-flight)."""
        procs = [subprocess.Popen(self.hold_argv(path, r), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE) for r in rids]
        for p in procs:
            out, err = p.communicate(timeout=60)
            self.assertEqual(json.loads(out)["status"], "ok", err)

    def wallet(self, o, w):
        return self.c.ok("wallet.get", o, wallet=w)

    def check_money(self, o, w, want_expired, hold):
        entries = self.c.ok("wallet.ledger", o, wallet=w, limit=1000)["entries"]
        debits = [e for e in entries if e["type"] == "debit"]
        expired = sorted(e["request_id"] for e in debits if e.get("settle") == "expired")
        self.assertEqual(expired, sorted(want_expired))          # each once, none twice
        for e in debits:
            if e.get("settle") == "expired":
                self.assertEqual(e["amount_micros"], hold)
        wal = self.wallet(o, w)
        self.assertEqual(wal["held_micros"], 0)
        self.assertEqual(wal["balance_micros"], CREDIT - sum(e["amount_micros"] for e in debits))
        p = subprocess.run([CLI, "--json", "fsck", "--config", self.env.config_path],
                           capture_output=True, text=True, timeout=120)
        self.assertEqual((p.returncode, json.loads(p.stdout)["problems"]), (0, []), p.stderr)

    def wait_released(self, o, w, timeout=10.0):
        end = time.time() + timeout
        while time.time() < end:
            if self.wallet(o, w)["held_micros"] == 0:
                return
            time.sleep(0.1)
        self.fail("holds still open after %.0f s: %r" % (timeout, self.wallet(o, w)))

    def test_idle_wallet_holds_are_captured_once_by_the_daemon(self):
        t, o, w, k, path = one_paid_key(self.c, self.env, "llm", "m1", CREDIT, "sweep")
        hold = self.c.ok("price.estimate", service="llm", model="m1",
                         params={"input_tokens": 1000, "output_tokens": 4096})["cost_micros"]
        rids = ["h%d" % i for i in range(20)]      # more than one capture call takes (16)
        self.holds(path, rids)
        self.assertEqual(self.wallet(o, w)["held_micros"], 20 * hold)
        t0 = time.time()
        self.wait_released(o, w)
        took = time.time() - t0
        self.check_money(o, w, rids, hold)
        self.assertIn("expired hold(s) captured", self.env.daemon_log())
        print("\n20 holds captured by keygated %.1f s after they were made (hold_ttl_ms 1500)"
              % took, file=sys.stderr)

    def test_three_daemons_sweep_at_once_capture_once(self):
        # Two more keygated on the same store: all three sweep (the sweep
        # needs no lease), racing for the same expired holds.
        extra = [self.env.start_extra_daemon("sweeper%d" % i) for i in (1, 2)]
        self.assertEqual(len(extra), 2)
        t, o, w, k, path = one_paid_key(self.c, self.env, "llm", "m1", CREDIT, "three")
        hold = self.c.ok("price.estimate", service="llm", model="m1",
                         params={"input_tokens": 1000, "output_tokens": 4096})["cost_micros"]
        rids = ["d%d" % i for i in range(40)]
        self.holds(path, rids)
        self.wait_released(o, w, timeout=15)
        self.check_money(o, w, rids, hold)
        logs = [self.env.daemon_log()]
        for i in (1, 2):
            with open(os.path.join(self.env.tmp, "sweeper%d.log" % i)) as f:
                logs.append(f.read())
        print("\ndaemons that captured: %d of 3" % sum("expired hold(s) captured" in x for x in logs),
              file=sys.stderr)

    def test_sweep_and_gateways_race_on_one_wallet(self):
        t, o, w, k, path = one_paid_key(self.c, self.env, "llm", "m1", CREDIT, "race")
        hold = self.c.ok("price.estimate", service="llm", model="m1",
                         params={"input_tokens": 1000, "output_tokens": 4096})["cost_micros"]
        rids = ["r%d" % i for i in range(12)]
        self.holds(path, rids)
        time.sleep(1.4)                            # about when they expire
        # Gateways settle other requests on the wallet while keygated sweeps.
        procs = [subprocess.Popen(self.hold_argv(path, "s%d" % i, settle=100),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(6)]
        for p in procs:
            out, err = p.communicate(timeout=60)
            self.assertEqual(json.loads(out)["settle"]["status"], "ok", err)
        self.wait_released(o, w)
        self.check_money(o, w, rids, hold)


if __name__ == "__main__":
    unittest.main()
