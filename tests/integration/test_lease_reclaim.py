"""keygated reclaims expired leases (issue 14, daemon/reclaim.c): a lease
left by a gateway that stopped renewing it (played here: the records its
flush script leaves, then nothing) goes back to the wallet's balance
within about lease_ttl_ms plus a sweep step, exactly once; fsck is clean
before (balance + leases = credits - debits) and after. `keygate
authorize` in `debit leased` mode charges as in exact mode (a single
request per process: the exact path, the lease never taken)."""
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
from test_usage import CLI, one_paid_key  # noqa: E402

CREDIT = 10 ** 9
LEASE = 12345678


@unittest.skipUnless(os.access(CLI, os.X_OK), "needs the keygate CLI (KEYGATE_CLI)")
class LeaseReclaim(kgtest.EnvCase):
    single_node_only = "gateways refuse a lease_journal on a cluster (docs/operations.md)"

    env_args = {"extra_config": ["lease_ttl_ms 1000"]}

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.env.write_config(["debit leased", "lease_ttl_ms 1000",
                              "lease_journal %s" % os.path.join(cls.env.tmp, "journal")])

    def fsck(self):
        p = subprocess.run([CLI, "--json", "fsck", "--config", self.env.config_path],
                           capture_output=True, text=True, timeout=120)
        self.assertEqual((p.returncode, json.loads(p.stdout)["problems"]), (0, []), p.stderr)

    def test_dead_gateways_lease_goes_back_once(self):
        t, o, w, k, path = one_paid_key(self.c, self.env, "text-generation", "small", CREDIT, "l")
        team = t["team"]
        wk = "kg:{t:%s}:wallet:%s" % (team, w)
        p = subprocess.run([CLI, "--json", "--config", self.env.config_path, "authorize",
                            "--token-file", path, "--service", "text-generation", "--model",
                            "small", "--param", "input_tokens=1000"],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(json.loads(p.stdout)["status"], "ok", p.stderr)
        cost = json.loads(p.stdout)["cost_micros"]
        # The records a gateway's flush script leaves for its lease.
        now = int(self.env.redis("TIME")[0]) * 1000
        self.env.redis("HINCRBY", wk, "balance_micros", -LEASE)
        self.env.redis("HINCRBY", wk, "leased_micros", LEASE)
        self.env.redis("HSET", "kg:{t:%s}:lease:%s" % (team, w), "deadgateway", LEASE)
        self.env.redis("ZADD", "kg:{t:%s}:leaseexp:%s" % (team, w), now + 1000, "deadgateway")
        self.assertEqual(self.c.ok("wallet.get", o, wallet=w)["leased_micros"], LEASE)
        self.fsck()                                  # leases count as funds
        t0 = time.time()
        while self.c.ok("wallet.get", o, wallet=w).get("leased_micros", 0) != 0:
            self.assertLess(time.time() - t0, 10, "lease not reclaimed")
            time.sleep(0.05)
        took = time.time() - t0
        wal = self.c.ok("wallet.get", o, wallet=w)
        self.assertEqual(wal["balance_micros"], CREDIT - cost)
        self.assertEqual(self.env.redis("EXISTS", "kg:{t:%s}:lease:%s" % (team, w)), 0)
        self.assertIn("lease(s) reclaimed", self.env.daemon_log())
        self.fsck()
        print("\nlease reclaimed by keygated %.1f s after it was last renewed (lease_ttl_ms 1000)"
              % took, file=sys.stderr)


if __name__ == "__main__":
    unittest.main()
