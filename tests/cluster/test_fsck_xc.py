"""keygate fsck and commits across slots left open (issue 11).

keygated runs on a Redis Cluster of 3 masters + 3 replicas
(tests/lib/kgcluster.py). A command whose writes span slots (sign-up,
team.member.add) commits in ordered steps (daemon/xcommit.c): intent,
prepare, decide, apply, finish. For each step, a keygated started with
KEYGATED_FAULT_XC=<step> dies (exit 137, no cleanup) right after it, with
no other keygated running to settle what it left. Then:

- at once (the intent younger than XC_STALE_MS = 2 s by Redis' clock):
  `keygate fsck` does not call it a problem, it counts a commit in
  progress;
- after 2 s: fsck reports `xcommit_open` (exit 1), with the state it was
  left in;
- `keygate fsck --repair` settles it (exit 0, one repair), as keygated
  would: rolled back before decide, rolled forward after;
- fsck is clean, and the store is wholly before the command (intent,
  prepare: the member in neither the team's members hash nor the user's
  uteams set, no lock "L ..." in any version key of any master, no
  marker) or wholly after it (decide, apply: in both; the plan's
  PUBLISHes sent by the repair). An intent marked aborted after prepare
  (its keygated died before rolling back) is rolled back.

A lock and a marker planted for a commit that does not exist are
`xcommit_lock_orphan`, and --repair puts back the old value (DEL for an
empty one).
"""
import json
import os
import subprocess
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "faults"))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import safety  # noqa: E402
from safety import kgtest  # noqa: E402
import kgcluster  # noqa: E402

STALE_S = 2.0          # XC_STALE_MS


def s(v):
    return v.decode() if isinstance(v, bytes) else v


class FsckXcommit(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # This file makes its own cluster: not the one KEYGATE_TOPOLOGY would.
        os.environ.pop("KEYGATE_TOPOLOGY", None)
        cls.env = kgtest.Env(redis=False, start_daemon=False)
        try:
            cls.cluster = kgcluster.Cluster(cls.env.tmp)
            cls.cluster.start()
            lines = [l for l in cls.env.config_lines() if not l.startswith("redis ")]
            cls.env.write_config(replace=lines + ["redis " + cls.cluster.spec()])
            cls.router = kgcluster.Router(cls.cluster)
            cls.env.start_daemon()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        r = getattr(cls, "router", None)
        if r is not None:
            r.close()
        env = cls.env
        env.close()
        c = getattr(cls, "cluster", None)
        if c is not None:
            c.stop()
        kgtest.check_clean_exit(env)

    # -- helpers ---------------------------------------------------------------

    def r(self, *args):
        return self.router.command(*args)

    def fsck(self, *extra):
        """`keygate --json fsck [extra] --config <cluster config>`:
        (exit code, parsed JSON, stderr)."""
        p = subprocess.run([safety.cli_path(), "--json", "fsck"] + list(extra) +
                           ["--config", self.env.config_path],
                           capture_output=True, text=True, timeout=60)
        try:
            out = json.loads(p.stdout)
        except ValueError:
            self.fail("fsck %s: no JSON (exit %s): %s %s" % (extra, p.returncode, p.stdout,
                                                             p.stderr))
        return p.returncode, out, p.stderr

    def assert_clean(self, what):
        rc, out, se = self.fsck()
        self.assertEqual(out["problems"], [], "%s: fsck found problems" % what)
        self.assertEqual(rc, 0, "%s: fsck exit %s: %s" % (what, rc, se))
        return out

    def kinds(self, out):
        return [p.get("kind") for p in out["problems"]]

    def lock_values(self):
        """Every key of every master holding a lock or marker value."""
        found = []
        for k in self.router.scan_keys("kg:*"):
            name = s(k)
            if not (name.startswith("kg:v:") or "}xu:" in name):
                continue
            try:
                v = self.r("GET", k)
            except kgtest.RedisError:
                continue                            # not a string
            if v is not None and s(v).startswith("L "):
                found.append((name, s(v)))
        return found

    def open_intents(self):
        return [s(x) for x in self.r("ZRANGE", "kg:{xtx}:open", "0", "-1")]

    def in_team(self, team, uid):
        return self.r("HGET", "kg:{t:%s}:members" % team, uid) is not None

    def in_uteams(self, team, uid):
        return self.r("SISMEMBER", "kg:uteams:%s" % uid, team) == 1

    def faulty_daemon(self, step):
        """A keygated that dies right after `step` of a commit across slots,
        alone on the store (the main one stopped, so nobody settles). Returns
        (process, socket path)."""
        if self.env.daemon is not None and self.env.daemon.poll() is None:
            self.assertEqual(self.env.kill_daemon(), 0, "keygated's exit on SIGTERM")
        name = "fault-%s-%d" % (step, time.monotonic_ns())
        sock = self.env.start_extra_daemon(name, {"KEYGATED_FAULT_XC": step})
        p = self.env.extra[-1][0]
        # It is to die (137): not one of those env.close() expects to stop cleanly.
        self.env.extra.pop()
        self.addCleanup(lambda: p.poll() is None and (p.kill(), p.wait(5)))
        return p, sock

    def run_to_death(self, p, sock, cmd, actor, **args):
        """Sends cmd to the faulty daemon, which dies on it (no answer)."""
        c = kgtest.Client(sock, timeout=30)
        try:
            c.call(cmd, actor, **args)
            self.fail("%s answered: the daemon should have died on it" % cmd)
        except (ConnectionError, OSError, ValueError):
            pass
        finally:
            c.close()
        died = time.monotonic()
        self.assertEqual(p.wait(30), 137, "KEYGATED_FAULT_XC: exit 137")
        return died

    def world(self):
        """An owner with a team, and a user to add, made by the main daemon."""
        if self.env.daemon is None or self.env.daemon.poll() is not None:
            self.env.start_daemon()
        with self.env.client() as c:
            owner = kgtest.signup(c, name="Owner")
            user = kgtest.signup(c, name="Joiner")
        return owner, user

    def young_then_stale(self, died, step, state):
        """fsck right after the death: a commit in progress, no problem;
        once 2 s old: xcommit_open in that state. Returns the intent key."""
        rc, out, se = self.fsck()
        young = time.monotonic() - died < STALE_S * 0.75
        if young:   # (a slow machine may take longer than that to get here)
            self.assertNotIn("xcommit_open", self.kinds(out),
                             "%s: a commit younger than 2 s reported: %s" % (step, out["problems"]))
            self.assertGreaterEqual(out["counts"]["xcommits_in_progress"], 1,
                                    "%s: the young commit not counted: %s" % (step, out))
            self.assertEqual(rc, 0, "%s: fsck on a young commit: exit %s %s %s"
                             % (step, rc, out["problems"], se))
        time.sleep(max(0.0, died + STALE_S + 0.3 - time.monotonic()))
        rc, out, se = self.fsck()
        self.assertEqual(rc, 1, "%s: fsck exit %s on a stale commit: %s" % (step, rc, se))
        opened = [p for p in out["problems"] if p.get("kind") == "xcommit_open"]
        self.assertEqual(len(opened), 1, "%s: one xcommit_open expected: %s"
                         % (step, out["problems"]))
        sys.stderr.write("\n%s: young fsck %s; then %s: %s\n"
                         % (step, "clean" if young else "(skipped: slow)", opened[0]["key"],
                            opened[0]["problem"]))
        self.assertIn("{xtx}:", opened[0]["key"])
        self.assertIn("state %s" % state, opened[0]["problem"])
        self.assertNotIn("xcommit_lock_orphan", self.kinds(out),
                         "%s: the open commit's own locks are no orphans" % step)
        return opened[0]["key"]

    def repair(self, step, n=1):
        rc, out, se = self.fsck("--repair")
        self.assertEqual(rc, 0, "%s: fsck --repair exit %s: %s %s" % (step, rc, out, se))
        self.assertEqual(len(out["repaired"]), n, "%s: %s" % (step, out))
        self.assertEqual(out["unrepaired"], [], step)
        for r in out["repaired"]:
            sys.stderr.write("%s: repaired %s: %s\n" % (step, r["key"], r["action"]))
        return out

    def assert_settled(self, step):
        self.assertEqual(self.lock_values(), [], "%s: locks or markers left" % step)
        self.assertEqual(self.open_intents(), [], "%s: intents left open" % step)
        self.assert_clean("%s, after the repair" % step)

    # -- team.member.add, killed after each step -------------------------------

    def member_add(self, step, after, aborted=False):
        owner, user = self.world()
        team, uid = owner["team_id"], user["user_id"]
        p, sock = self.faulty_daemon(step)
        died = self.run_to_death(p, sock, "team.member.add", owner["user_id"], team=team,
                                 user=uid, role="user")
        if aborted:
            # As if its keygated had aborted it (a prepare refused) and died
            # before the roll back: the locks are there, the state aborted.
            [txid] = self.open_intents()
            self.r("HSET", "kg:{xtx}:%s" % txid, "state", "aborted")
        state = "aborted" if aborted else "commit" if after else "pending"
        ikey = self.young_then_stale(died, step, state)
        plan = json.loads(s(self.r("HGET", ikey, "plan")))
        self.assertGreater(len(plan["parts"]), 1, "%s: the commit spans slots" % step)
        # What the step left: locks and markers from prepare until apply.
        locked = self.lock_values()
        if step in ("prepare", "decide"):
            self.assertTrue(any("}xu:" in k for k, _ in locked), "%s: no marker" % step)
            self.assertTrue(any(k.startswith("kg:v:") for k, _ in locked), "%s: no lock" % step)
        else:
            self.assertEqual(locked, [], "%s: locks before prepare / after apply" % step)
        sub = None
        if after and plan["after"]:
            port = self.cluster.masters()[0]
            sub = kgtest.Subscriber(port, plan["after"][0][1])
            self.addCleanup(sub.close)
        self.repair(step)
        if after:
            self.assertTrue(self.in_team(team, uid) and self.in_uteams(team, uid),
                            "%s: the member should be wholly added (team %s, uteams %s)"
                            % (step, self.in_team(team, uid), self.in_uteams(team, uid)))
            if sub is not None:
                sub.wait_for(plan["after"][0][2], timeout=3)
                sys.stderr.write("%s: the plan's PUBLISH on %s seen after the repair\n"
                                 % (step, plan["after"][0][1]))
        else:
            self.assertFalse(self.in_team(team, uid) or self.in_uteams(team, uid),
                             "%s: the member should be wholly absent (team %s, uteams %s)"
                             % (step, self.in_team(team, uid), self.in_uteams(team, uid)))
        self.assert_settled(step)
        # The store works on: the command again, through a live keygated.
        self.env.start_daemon()
        with self.env.client() as c:
            if after:
                self.assertEqual(c.err("team.member.add", owner["user_id"], team=team, user=uid,
                                       role="user"), "conflict")
            else:
                c.ok("team.member.add", owner["user_id"], team=team, user=uid, role="user")
            self.assertTrue(self.in_team(team, uid) and self.in_uteams(team, uid))

    def test_member_add_intent(self):
        self.member_add("intent", after=False)

    def test_member_add_prepare(self):
        self.member_add("prepare", after=False)

    def test_member_add_aborted(self):
        self.member_add("prepare", after=False, aborted=True)

    def test_member_add_decide(self):
        self.member_add("decide", after=True)

    def test_member_add_apply(self):
        self.member_add("apply", after=True)

    # -- user.signup, killed after prepare and after decide ------------------------

    def signup(self, step, after):
        self.world()
        email = kgtest.unique_email("xc")
        p, sock = self.faulty_daemon(step)
        died = self.run_to_death(p, sock, "user.signup", None, email=email, name="Half")
        self.young_then_stale(died, step, "commit" if after else "pending")
        self.repair(step)
        rec = self.r("GET", "kg:email:%s" % email)
        if after:
            self.assertIsNotNone(rec, "%s: the sign-up should be wholly made" % step)
            self.assertIsNotNone(self.r("GET", "kg:user:%s" % s(rec)), step)
        else:
            # before: no user; the email's claim (SET NX PX) runs out by itself
            self.assertTrue(rec is None or s(rec).startswith("claim"),
                            "%s: sign-up half made: %r" % (step, rec))
        self.assert_settled("signup " + step)

    def test_signup_prepare(self):
        self.signup("prepare", after=False)

    def test_signup_decide(self):
        self.signup("decide", after=True)

    # -- orphans --------------------------------------------------------------------

    def test_orphan_lock(self):
        owner, _ = self.world()
        vkeys = [s(k) for k in self.router.scan_keys("kg:v:*")]
        self.assertTrue(vkeys, "no version keys on the cluster")
        vk = vkeys[0]
        old = s(self.r("GET", vk))
        ttl = self.r("PTTL", vk)
        ghost = "0ghost0commit0000000"
        marker = "kg:{~1}xu:%s" % ghost
        self.r("SET", vk, "L %s %s" % (ghost, old))
        self.r("SET", marker, "L %s " % ghost)
        rc, out, se = self.fsck()
        self.assertEqual(rc, 1, se)
        orphans = sorted(p["key"] for p in out["problems"] if p.get("kind") == "xcommit_lock_orphan")
        self.assertEqual(orphans, sorted([vk, marker]), out["problems"])
        self.repair("orphan lock", n=2)
        self.assertEqual(s(self.r("GET", vk)), old)
        self.assertGreater(self.r("PTTL", vk), 0 if ttl > 0 else -2)
        self.assertIsNone(self.r("GET", marker))
        self.assert_settled("orphan lock")


if __name__ == "__main__":
    unittest.main()
