"""Ledger archive (docs/archive.md): Redis keeps a bounded tail per wallet,
keygated archives the rest exactly once to SQLite or PostgreSQL.

Every fault test ends with the same audit (World.audit):
  - the archive holds seq 0 .. archived_count-1 exactly once each (the
    primary key forbids twins; the count and the range find holes),
  - archive rows + the Redis tail are every money movement made, each
    once: one credit and one debit per KG_OK of the gateways (request ids
    are unique), nothing else,
  - balance = credits - debits = archived_sum_micros + the tail's sum,
  - `keygate fsck` (which reads the archive too) is clean.
Runs against both engines; the PostgreSQL cases need Debian's postgresql
and root (the server runs as `postgres`), and are skipped without them.
"""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
sys.path.insert(0, os.path.join(HERE, "..", "faults"))
import kgtest  # noqa: E402
import safety  # noqa: E402
import kgpg  # noqa: E402

TAIL = 20


class Sqlite:
    name = "sqlite"

    def __init__(self, tmp):
        self.path = os.path.join(tmp, "archive.db")
        self.config = "archive sqlite:%s" % self.path

    def rows(self, wallet):
        db = sqlite3.connect(self.path, timeout=10)
        try:
            return db.execute("SELECT seq, amount_micros, entry FROM ledger WHERE wallet_id = ?"
                              " ORDER BY seq", (wallet,)).fetchall()
        finally:
            db.close()

    def stop(self):
        """'Stops' the database: another connection holds its write lock
        (keygated's batches then fail after their busy timeout)."""
        self.blocker = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        self.blocker.execute("BEGIN EXCLUSIVE")

    def start(self):
        self.blocker.execute("ROLLBACK")
        self.blocker.close()

    def close(self):
        pass


class Postgres:
    name = "postgresql"

    def __init__(self, tmp):
        self.pg = kgpg.PrivatePg()
        self.config = "archive postgresql:%s" % self.pg.conninfo

    def rows(self, wallet):
        out = self.pg.sql("SELECT seq, amount_micros, entry FROM ledger WHERE wallet_id = '%s'"
                          " ORDER BY seq" % wallet.replace("'", ""))
        return [(int(s), int(a), e) for s, a, e in out]

    def stop(self):
        self.pg.stop()

    def start(self):
        self.pg.start()

    def close(self):
        self.pg.close()


class World:
    """keygated with an archive, a wallet, a payg key and its token."""

    def __init__(self, tc, engine_cls, env_vars=None, interval_ms=50, batch=30):
        self.tc = tc
        self.env = kgtest.Env(start_daemon=False)
        self.db = engine_cls(self.env.tmp)
        self.env.write_config([self.db.config, "ledger_tail %d" % TAIL,
                               "archive_batch %d" % batch, "archive_interval_ms %d" % interval_ms])
        self.env_vars = env_vars or {}
        self.start()
        self.c = self.env.client()
        self.w = safety.paid_world(self.c, self.env, 0)
        self.credits = 0
        self.gw = safety.gateway_config(self.env)
        self.costs = 0
        self.rids = set()
        self.nreq = 0

    def start(self):
        old = dict(os.environ)
        os.environ.update(self.env_vars)
        try:
            self.env.start_daemon()
        finally:
            os.environ.clear()
            os.environ.update(old)

    def credit(self, amount, ref):
        self.c.ok("wallet.credit", self.w["owner"], wallet=self.w["wallet"], amount_micros=amount,
                  reference=ref)
        self.credits += 1

    def hammer(self, count, pause_us=0, retry_for=30.0):
        prefix = "r%d" % self.nreq
        self.nreq += 1
        return safety.Hammer(self.gw, self.w["token_file"], count, rid=prefix, retry_for=retry_for,
                             pause_us=pause_us)

    def collect(self, h, timeout=120):
        rc, rows, summary = h.wait(timeout)
        self.tc.assertIn(rc, (0,), summary)
        for r in rows:
            if r["status"] == "ok":         # charged once, by this try or an earlier one
                self.rids.add(r["rid"])
        self.costs = safety.COST_SMALL_1000 * len(self.rids)
        return rows

    def wkey(self):
        return "kg:{t:%s}:wallet:%s" % (self.w["team"], self.w["wallet"])

    def lkey(self):
        return "kg:{t:%s}:ledger:%s" % (self.w["team"], self.w["wallet"])

    def checkpoint(self):
        a, s = self.env.redis("HMGET", self.wkey(), "archived_count", "archived_sum_micros")
        return int(a or 0), int(s or 0)

    def wait_archived(self, timeout=60):
        """Until the tail is at most TAIL long (the archiver caught up)."""
        end = time.time() + timeout
        while time.time() < end:
            if int(self.env.redis("LLEN", self.lkey())) <= TAIL:
                return
            time.sleep(0.05)
        self.tc.fail("the archiver did not catch up: LLEN %s, checkpoint %s\n%s" % (
            self.env.redis("LLEN", self.lkey()), self.checkpoint(), self.env.daemon_log()[-3000:]))

    def audit(self, what):
        tc = self.tc
        self.wait_archived()
        a, s = self.checkpoint()
        rows = self.db.rows(self.w["wallet"])
        below = [r for r in rows if r[0] < a]
        tc.assertEqual([r[0] for r in below], list(range(a)), "%s: archive seqs" % what)
        tc.assertEqual(sum(r[1] for r in below), s, "%s: archived_sum_micros" % what)
        tail = [json.loads(e) for e in reversed(self.env.redis("LRANGE", self.lkey(), 0, -1))]
        # rows at or above the checkpoint (inserted, not yet trimmed) must be the tail's
        for seq, _, e in rows:
            if seq >= a:
                tc.assertEqual(json.loads(e), tail[seq - a], "%s: seq %d" % (what, seq))
        entries = [json.loads(e) for _, _, e in below] + tail
        debits = [e for e in entries if e["type"] == "debit"]
        credits = [e for e in entries if e["type"] == "credit"]
        tc.assertEqual(len(credits), self.credits, "%s: credits" % what)
        rids = [e["request_id"] for e in debits]
        tc.assertEqual(len(rids), len(set(rids)), "%s: a debit twice" % what)
        tc.assertEqual(set(rids), self.rids, "%s: debits vs the gateways' KG_OKs" % what)
        bal = safety.balance(self.env, self.w["team"], self.w["wallet"])
        tc.assertEqual(bal, sum(e["amount_micros"] for e in credits) - self.costs,
                       "%s: money" % what)
        tc.assertEqual(bal, s + sum(e["amount_micros"] * (1 if e["type"] == "credit" else -1)
                                    for e in tail), "%s: checkpoint + tail" % what)
        safety.assert_clean(tc, self.env, what)
        return a

    def close(self):
        try:
            self.env.close()
        finally:
            self.db.close()


class Base:
    engine = None

    def world(self, **kw):
        w = World(self, self.engine, **kw)
        self.addCleanup(w.close)
        return w

    def test_archive_and_trim(self):
        w = self.world()
        w.credit(10_000_000, "c1")
        w.collect(w.hammer(300))
        w.credit(5_000_000, "c2")
        a = w.audit("steady")
        self.assertGreaterEqual(a, 302 - TAIL)
        info = w.c.ok("wallet.get", w.w["owner"], wallet=w.w["wallet"])
        self.assertEqual(info["archived_count"], a)

    def test_kill9_at_each_point(self):
        """kill -9 of keygated after the read, after the insert committed
        (before the trim), and after the trim was sent; then a restart."""
        for point in ("read", "insert", "trim"):
            w = self.world(env_vars={"KEYGATE_ARCHIVE_FAULT": "%s:3" % point})
            w.credit(10_000_000, "c1")
            w.collect(w.hammer(150))
            p = w.env.daemon
            p.wait(30)
            self.assertEqual(p.returncode, -signal.SIGKILL, "%s: not killed" % point)
            w.env.daemon = None
            w.env_vars = {}
            w.start()
            w.collect(w.hammer(50))
            w.audit("kill -9 at %s" % point)

    def test_kill9_from_outside_under_load(self):
        w = self.world(batch=7)
        w.credit(50_000_000, "c1")
        h = w.hammer(600, retry_for=30.0)
        for _ in range(4):
            time.sleep(0.25)
            w.env.kill_daemon(signal.SIGKILL)
            w.start()
        w.collect(h)
        w.audit("kill -9 under load")

    def test_two_archivers(self):
        w = self.world(env_vars={"KEYGATE_ARCHIVERS": "2"}, batch=5, interval_ms=10)
        w.credit(10_000_000, "c1")
        w.collect(w.hammer(400))
        w.audit("two archivers")
        self.assertIn("two archivers", w.env.daemon_log())

    def test_database_down_and_back(self):
        w = self.world()
        w.credit(10_000_000, "c1")
        w.collect(w.hammer(100))
        w.wait_archived()
        a0, _ = w.checkpoint()
        w.db.stop()
        h = w.hammer(200)
        w.collect(h)
        time.sleep(0.5)
        self.assertGreater(int(w.env.redis("LLEN", w.lkey())), TAIL + 100,
                           "Redis keeps the tail while the database is away")
        a1, _ = w.checkpoint()
        self.assertLess(a1, a0 + 60)
        w.db.start()
        w.audit("database down and back")

    def test_ledger_paging_across_the_boundary(self):
        w = self.world()
        w.credit(100_000_000, "c1")
        w.collect(w.hammer(250))
        w.wait_archived()
        h = w.hammer(300, pause_us=2000)       # keeps debiting while we page
        seen, cur, first = [], None, None
        while True:
            args = {"wallet": w.w["wallet"], "limit": 7}
            if cur:
                args["cursor"] = cur
            r = w.c.ok("wallet.ledger", w.w["owner"], **args)
            if first is None and r["entries"]:
                first = r["entries"][0]
            seen.extend(r["entries"])
            cur = r.get("next_cursor")
            if not cur:
                break
        w.collect(h)
        w.audit("paging")
        keys = [e.get("request_id") or e.get("reference") for e in seen]
        self.assertEqual(len(keys), len(set(keys)), "an entry twice")
        # every entry up to the newest of the first page, each once, newest first
        a, _ = w.checkpoint()
        allrows = [json.loads(e) for seq, _, e in w.db.rows(w.w["wallet"]) if seq < a] + \
            [json.loads(e) for e in reversed(w.env.redis("LRANGE", w.lkey(), 0, -1))]
        upto = allrows.index(first)
        self.assertEqual(seen, list(reversed(allrows[:upto + 1])))
        self.assertGreater(a, 200)
        # filters over both parts: one key, then a time range
        mine = w.c.ok("wallet.ledger", w.w["owner"], wallet=w.w["wallet"], key=w.w["key"],
                      limit=1000)["entries"]
        self.assertEqual(len(mine), sum(1 for e in allrows if e["type"] == "debit"))


@unittest.skipUnless(True, "")
class SqliteArchive(Base, unittest.TestCase):
    engine = Sqlite


@unittest.skipUnless(kgpg.available(), "needs Debian's postgresql and root")
class PostgresArchive(Base, unittest.TestCase):
    engine = Postgres


if __name__ == "__main__":
    unittest.main()
