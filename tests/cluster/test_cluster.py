"""libkeygate on a real Redis Cluster under money load (issue 11).

keygated runs on a private single Redis (it needs one node: its commits
span slots) to make a team, a wallet credited with CREDIT micros, a paid
key and its token (safety.paid_world). Every key of that store is then
copied (DUMP / RESTORE, TTL kept) to the master of its slot in a Redis
Cluster of 3 masters + 3 replicas (tests/lib/kgcluster.py), and gateways
(kg_hammer: blocking libkeygate, each request with its own id, a
KG_BACKEND_ERROR retried with the same id) are configured with
`redis cluster HOST:PORT,...` only.

- test_exact: the debits are exact on the cluster;
- test_slot_move: the team's slot is moved live to another master while
  the gateways debit;
- test_cold_half_moved: cold requests while the team's slot is half
  moved, the record of a request already charged left on the old node:
  its retry must not be charged again (it was, before the cold script's
  guard: kg_scripts.c);
- test_master_killed (and _wait, with min_replicas_ack 1, asserting no
  acknowledged debit lost; the killed node comes back as a replica): the
  master holding the team's slot is killed
  (SIGKILL) while they debit; its replica is promoted; the time until the
  gateways are served again is measured and printed.

When nginx and the built module are there, an nginx gateway (libkeygate's
non-blocking form, on nginx's loop) debits too during the move and the kill.

After each, read from the cluster directly: every request answered KG_OK
has exactly one ledger entry, no request id is charged twice, the ledger
has no debit for a request not answered ok, and
balance = CREDIT - sum(ledger debits); then `keygate fsck` with the
gateways' cluster config (every master scanned) is clean. Right after the
copy, fsck on the cluster counts what fsck on the single node counts (a
scan of one master would miss two thirds of the store), and test_exact
plants a wrong balance on the team's master, which fsck must report.
Figures go to stderr.
"""
import json
import os
import sys
import threading
import time
import unittest
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "faults"))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
sys.path.insert(0, os.path.join(HERE, "..", "nginx"))
sys.path.insert(0, os.path.join(HERE, "..", "sentinel"))
import safety  # noqa: E402
from safety import kgtest  # noqa: E402
import kgcluster  # noqa: E402
import kgnginx  # noqa: E402
from test_failover import NginxGateway, have_nginx  # noqa: E402

COST = safety.COST_SMALL_1000
PROCS = 3


class ClusterCase(unittest.TestCase):
    def setUp(self):
        self.env = kgtest.Env()
        self.addCleanup(self.env.close)
        self.cluster = kgcluster.Cluster(self.env.tmp)
        self.addCleanup(self.cluster.stop)
        self.cluster.start()

    def world(self, requests, extra=()):
        """A paid world made by keygated on the single node, credited with
        `requests` requests' worth, then copied into the cluster."""
        self.credit = requests * COST
        with self.env.client() as c:
            self.w = safety.paid_world(c, self.env, self.credit, name="cluster")
        copied = self.copy_store()
        self.slot = kgcluster.slot_of("{t:%s}" % self.w["team"])
        self.config = os.path.join(self.env.tmp, "gateway-cluster.conf")
        lines = [l for l in self.env.config_lines() if not l.startswith("redis ")]
        with open(self.config, "w") as f:
            f.write("\n".join(lines + ["redis " + self.cluster.spec(), "timeout_ms 1000",
                                       "cache_ttl_ms 1000"] + list(extra)) + "\n")
        sys.stderr.write("copied %d keys; the team's slot %d is on %d\n"
                         % (copied, self.slot, self.cluster.owner(self.slot)))
        single = safety.assert_clean(self, self.env, "fsck on the single node")
        spread = self.fsck_clean("fsck on the cluster after the copy")
        for k in ("teams", "keys", "token_records", "wallets", "ledger_entries", "users"):
            self.assertEqual(spread[k], single[k], "fsck counted %s: %d on the cluster, %d on the "
                             "node it was copied from" % (k, spread[k], single[k]))
        # The keys sit on a few slots (the team's, the user's, the email's,
        # ...), so on one, two or three masters: whichever holds them, the
        # counts above match only if fsck scanned it.
        per_master = [int(kgcluster.rcmd(m, "DBSIZE")) for m in self.cluster.masters()]
        sys.stderr.write("keys per master: %s; fsck counted the same as on the node\n" % per_master)

    def fsck_clean(self, what):
        """`keygate fsck` on the cluster (the gateways' config): clean."""
        rc, out, so, se = safety.fsck(self.env, config=self.config)
        self.assertIsNotNone(out, "%s: no JSON from fsck (exit %s): %s %s" % (what, rc, so, se))
        self.assertEqual(out["problems"], [], "%s: fsck found problems" % what)
        self.assertEqual(rc, 0, "%s: fsck exit %s: %s" % (what, rc, se))
        return out["counts"]

    def copy_store(self):
        n = 0
        for k in self.env.redis_scan_all():
            kb = k if isinstance(k, bytes) else k.encode()
            dump = self.env.redis("DUMP", kb)
            if dump is None:
                continue
            ttl = self.env.redis("PTTL", kb)
            owner = self.cluster.owner(kgcluster.slot_of(kb))
            kgcluster.rcmd(owner, "RESTORE", kb, str(max(ttl, 0)), dump, "REPLACE")
            n += 1
        return n

    def cget(self, *args):
        """One command on the master of the team's slot, as the cluster sees it now."""
        return kgcluster.rcmd(self.cluster.owner(self.slot, self.cluster.alive()[0]), *args)

    def hammers(self, per_proc, tag, pause_us=0, retry_for=30.0):
        return [safety.Hammer(self.config, self.w["token_file"], per_proc, rid="%s%d" % (tag, i),
                              retry_for=retry_for, pause_us=pause_us) for i in range(PROCS)]

    def collect(self, hs, timeout=120):
        rows = []
        for h in hs:
            rc, r, summary = h.wait(timeout)
            self.assertEqual(rc, 0, "kg_hammer: %s" % summary)
            rows.extend(r)
        return rows

    def start_nginx(self):
        """An nginx gateway on the cluster config, debiting in a thread; None
        without nginx."""
        if not have_nginx():
            return None
        ngx = kgnginx.Nginx(self.config)
        self.addCleanup(ngx.close)
        ngw = NginxGateway(ngx, self.w["token"])
        ngw.start()
        return ngw

    def stop_nginx(self, ngw, what):
        if ngw is None:
            return []
        ngw.stop.set()
        ngw.join(60)
        self.assertEqual(dict(ngw.other), {}, "%s: nginx answers other than 200" % what)
        self.assertGreater(len(ngw.ok), 0, "%s: nginx served nothing" % what)
        sys.stderr.write("%s: nginx (non-blocking form) %d requests ok, %d retried\n"
                         % (what, len(ngw.ok), ngw.retried))
        return [{"rid": rid, "status": "ok"} for rid in ngw.ok]

    def check_money(self, rows, what):
        team, wallet = self.w["team"], self.w["wallet"]
        raw = self.cget("LRANGE", "kg:{t:%s}:ledger:%s" % (team, wallet), 0, -1)
        entries = [json.loads(e) for e in raw]
        debits = [e for e in entries if e.get("type") == "debit"]
        by_rid = Counter(e.get("request_id") for e in debits)
        status = Counter(r["status"] for r in rows)
        self.assertEqual(set(status), {"ok"}, "%s: answers other than ok: %s" % (what, status))
        twice = [rid for rid, n in by_rid.items() if n != 1]
        self.assertEqual(twice, [], "%s: request ids charged more than once" % what)
        ok_rids = {r["rid"] for r in rows}
        self.assertEqual(ok_rids - set(by_rid), set(), "%s: answered ok, not in the ledger" % what)
        self.assertEqual(set(by_rid) - ok_rids, set(), "%s: charged, never answered ok" % what)
        bal = int(self.cget("HGET", "kg:{t:%s}:wallet:%s" % (team, wallet), "balance_micros"))
        spent = sum(abs(int(e["amount_micros"])) for e in debits)
        self.assertEqual(spent, COST * len(debits))
        self.assertEqual(bal, self.credit - spent, "%s: balance != credit - debits" % what)
        return bal, len(debits)

    def test_exact(self):
        per = 400
        self.world(PROCS * per + 10)
        t = time.monotonic()
        rows = self.collect(self.hammers(per, "x"))
        el = time.monotonic() - t
        bal, n = self.check_money(rows, "exact")
        self.assertEqual(n, PROCS * per)
        self.assertEqual(bal, 10 * COST)
        sys.stderr.write("exact: %d debits on the cluster in %.2f s (%.0f/s), balance %d\n"
                         % (n, el, n / el, bal))
        counts = self.fsck_clean("exact")
        self.assertEqual(counts["ledger_entries"], n + 1)          # the credit too
        # A wrong balance on the team's master (a node fsck reaches only
        # by routing there) is reported, then put back.
        wk = "kg:{t:%s}:wallet:%s" % (self.w["team"], self.w["wallet"])
        self.cget("HSET", wk, "balance_micros", str(bal + 1))
        rc, out, so, se = safety.fsck(self.env, config=self.config)
        self.assertEqual(rc, 1, "fsck missed a wrong balance: %s %s" % (so, se))
        self.assertIn(wk, [p["key"] for p in out["problems"]])
        self.cget("HSET", wk, "balance_micros", str(bal))
        self.fsck_clean("exact, balance put back")

    def test_slot_move(self):
        self.slot_move(None)

    def test_slot_move_batched(self):
        """Keys moved 50 at a time (as `redis-cli --cluster reshard` does):
        for a while the team's keys are on two nodes."""
        self.slot_move(50)

    def slot_move(self, batch):
        per = 1500
        self.world(PROCS * per + 20000)     # room for nginx's requests too
        hs = self.hammers(per, "m", pause_us=1000)
        ngw = self.start_nginx()
        time.sleep(1.0)
        src = self.cluster.owner(self.slot)
        dst = [m for m in self.cluster.masters() if m != src][0]
        # fsck runs again and again during the move: a pass that meets the
        # move (MOVED, ASK) starts again on a fresh map; every run must end
        # clean, never with a false problem.
        stop, runs = threading.Event(), []

        def fsck_loop():
            while not stop.is_set():
                runs.append(safety.fsck(self.env, config=self.config, timeout=120))
        ft = threading.Thread(target=fsck_loop)
        ft.start()
        t = time.monotonic()
        self.cluster.move_slot(self.slot, dst, batch=batch)
        moved = time.monotonic() - t
        stop.set()
        ft.join(180)
        self.assertEqual(self.cluster.owner(self.slot), dst)
        for rc, out, so, se in runs:
            self.assertIsNotNone(out, "fsck during the move: exit %s: %s %s" % (rc, so, se))
            self.assertEqual(out["problems"], [], "fsck during the move found problems")
            self.assertEqual(rc, 0, "fsck during the move: exit %s: %s" % (rc, se))
        sys.stderr.write("fsck during the move: %d runs clean, %d passes started again\n"
                         % (len(runs), sum(r[3].count("starting again") for r in runs)))
        rows = self.collect(hs)
        nrows = self.stop_nginx(ngw, "slot move")
        bal, n = self.check_money(rows + nrows, "slot move")
        self.assertEqual(n, PROCS * per + len(nrows))
        retried = [r for r in rows if r.get("tries", 1) > 1]
        sys.stderr.write("slot move (batch %s) %d -> %d took %.3f s under load; %d requests, %d retried, "
                         "slowest %d ms (kg_hammer); balance %d exact\n"
                         % (batch or "all", src, dst, moved, len(rows), len(retried),
                            max(r.get("ms", 0) for r in rows), bal))
        self.fsck_clean("slot move")

    def test_cold_half_moved(self):
        """Cold requests (cache_ttl_ms 0: one script resolves the token, the
        key and the wallet, and Redis sees only the token record declared)
        while the team's slot is half moved: everything on the new node but
        the record of a request already charged. The retry of that request
        is sent to the new node (ASK: its token record moved); read there
        alone, the old record would look absent and the request be charged
        a second time. It must get no answer but KG_BACKEND_ERROR, with
        nothing changed, until the move ends; then it is a replay, charged
        once, and a new request is charged."""
        self.world(10)
        with open(self.config) as f:
            text = f.read().replace("cache_ttl_ms 1000", "cache_ttl_ms 0")
        with open(self.config, "w") as f:
            f.write(text)
        team, key, wallet = self.w["team"], self.w["key"], self.w["wallet"]
        wkey = "kg:{t:%s}:wallet:%s" % (team, wallet)
        lkey = "kg:{t:%s}:ledger:%s" % (team, wallet)

        def one(rid, retry_for=0.0):
            rc, rows, summary = safety.Hammer(self.config, self.w["token_file"], 1, rid=rid,
                                              retry_for=retry_for).wait(60)
            self.assertEqual(rc, 0, summary)
            return rows[0]

        first = one("c")
        self.assertEqual((first["status"], first["replayed"], first["cost"]), ("ok", False, COST))
        bal = int(self.cget("HGET", wkey, "balance_micros"))
        self.assertEqual(bal, self.credit - COST)
        entries = self.cget("LLEN", lkey)
        src = self.cluster.owner(self.slot)
        dst = [m for m in self.cluster.masters() if m != src][0]
        src_id, dst_id = self.cluster.node_id(src), self.cluster.node_id(dst)
        kgcluster.rcmd(dst, "CLUSTER", "SETSLOT", str(self.slot), "IMPORTING", src_id)
        kgcluster.rcmd(src, "CLUSTER", "SETSLOT", str(self.slot), "MIGRATING", dst_id)
        record = ("kg:{t:%s}:req:%s:c-0" % (team, key)).encode()
        keys = kgcluster.rcmd(src, "CLUSTER", "GETKEYSINSLOT", str(self.slot), "100000")
        self.assertIn(record, keys)
        self.assertTrue(any(b":tok:" in k for k in keys), keys)
        rest = [k for k in keys if k != record]
        kgcluster.rcmd(src, "MIGRATE", "127.0.0.1", str(dst), "", "0", "10000", "REPLACE",
                       "KEYS", *rest, timeout=30)
        def on_dst(*args):      # the importing node answers only after ASKING
            r = kgtest.Tcp(dst)
            try:
                r.command("ASKING")
                return r.command(*args)
            finally:
                r.close()

        for rid in ("c", "d"):      # the replay, and a new request
            r = one(rid)
            self.assertEqual(r["status"], "backend_error",
                             "request %s-0 while its slot is half moved: %s" % (rid, r))
            self.assertEqual(int(on_dst("HGET", wkey, "balance_micros")), bal,
                             "request %s-0 moved money while its slot was half moved" % rid)
            self.assertEqual(on_dst("LLEN", lkey), entries)
        self.assertEqual(kgcluster.rcmd(src, "CLUSTER", "GETKEYSINSLOT", str(self.slot), "100"),
                         [record], "a refused request wrote on the old node")
        # The move ends while a retrying request waits for it.
        waiting = safety.Hammer(self.config, self.w["token_file"], 1, rid="c", retry_for=20.0)
        time.sleep(0.5)
        kgcluster.rcmd(src, "MIGRATE", "127.0.0.1", str(dst), "", "0", "10000", "REPLACE",
                       "KEYS", record, timeout=30)
        for p in [dst, src] + [m for m in self.cluster.masters() if m not in (dst, src)]:
            kgcluster.rcmd(p, "CLUSTER", "SETSLOT", str(self.slot), "NODE", dst_id)
        rc, rows, summary = waiting.wait(60)
        self.assertEqual(rc, 0, summary)
        self.assertEqual((rows[0]["status"], rows[0]["replayed"]), ("ok", True), rows[0])
        self.assertGreater(rows[0]["tries"], 1)
        r = one("d")
        self.assertEqual((r["status"], r["replayed"], r["cost"]), ("ok", False, COST))
        _, n = self.check_money([first, r], "cold requests across a half-moved slot")
        self.assertEqual(n, 2)
        self.fsck_clean("cold requests across a half-moved slot")

    def test_master_killed(self):
        self.master_killed(wait=False)

    def test_master_killed_wait(self):
        """min_replicas_ack 1: a debit is answered ok only once the
        master's replica has it (WAIT on the node that made it), so the
        kill loses none."""
        self.master_killed(wait=True)

    def master_killed(self, wait):
        per = 2000
        self.world(PROCS * per + 20000,     # room for nginx's requests too
                   ["min_replicas_ack 1", "replica_ack_timeout_ms 1000"] if wait else [])
        hs = self.hammers(per, "k", pause_us=1000, retry_for=60.0)
        ngw = self.start_nginx()
        time.sleep(1.0)
        dead = self.cluster.owner(self.slot)
        t = time.monotonic()
        self.cluster.kill_master(dead)
        new = self.cluster.wait_promoted(self.slot, dead)
        promoted = time.monotonic() - t
        if wait:
            # The promoted master has no replica: WAIT 1 fails (fail closed,
            # KG_BACKEND_ERROR) until the killed node is back as its replica.
            self.cluster.restart(dead)
        rows = self.collect(hs, timeout=180)
        rows += self.stop_nginx(ngw, "kill -9")
        # Served again: the longest a request waited (first try to its
        # answer, through the retries of a KG_BACKEND_ERROR).
        worst = max(r.get("ms", 0) for r in rows)
        retried = [r for r in rows if r.get("tries", 1) > 1]
        # The loss window of a kill -9 (no WAIT: min_replicas_ack 0): a
        # debit acknowledged by the dead master and not replicated is gone
        # from the promoted replica; the invariant below still holds for
        # what the cluster has, but rows answered ok may be missing.
        team, wallet = self.w["team"], self.w["wallet"]
        raw = self.cget("LRANGE", "kg:{t:%s}:ledger:%s" % (team, wallet), 0, -1)
        in_ledger = Counter(json.loads(e).get("request_id") for e in raw)
        lost = [r["rid"] for r in rows if in_ledger[r["rid"]] == 0]
        sys.stderr.write("kill -9 of master %d: replica %d promoted after %.2f s; gateways served "
                         "again: slowest request %d ms (%d retried of %d); acknowledged debits "
                         "lost with the master (%s): %d\n"
                         % (dead, new, promoted, worst, len(retried), len(rows),
                            "min_replicas_ack 1" if wait else "no WAIT", len(lost)))
        if wait:
            self.assertEqual(lost, [], "debits acknowledged after WAIT lost with the master")
        self.assertEqual(Counter(r["status"] for r in rows), Counter({"ok": len(rows)}))
        twice = [rid for rid, n in in_ledger.items() if rid is not None and n > 1]
        self.assertEqual(twice, [], "request ids charged more than once")
        debits = [json.loads(e) for e in raw]
        debits = [e for e in debits if e.get("type") == "debit"]
        bal = int(self.cget("HGET", "kg:{t:%s}:wallet:%s" % (team, wallet), "balance_micros"))
        self.assertEqual(bal, self.credit - COST * len(debits), "balance != credit - debits")
        self.fsck_clean("kill -9 of a master")


if __name__ == "__main__":
    unittest.main()
