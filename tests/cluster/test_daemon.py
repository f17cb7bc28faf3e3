"""keygated on a real Redis Cluster (issue 11): 3 masters + 3 replicas on
loopback (tests/lib/kgcluster.py), keygated configured with
`redis cluster HOST:PORT,...` and nothing else.

- test_1_workflow: what a user relies on, on teams spread over the
  masters: sign-up, members added, re-roled and removed, a key with users,
  tokens generated and rotated (the CLI's authorize on the cluster: the new
  token ok, the old one refused), a wallet created and credited (once per
  reference), key.users.set with notifications, notification.list,
  session.whoami, team.get, key.list, audit.list; the records read back from
  the master of each key's slot.
- test_2_kill9_in_every_step: a keygated started with
  KEYGATED_FAULT_XC=<step> dies (exit 137, as kill -9) right after that
  step (intent, prepare, decide, apply) of a commit across slots, in each of
  user.signup, team.member.add, team.member.remove, key.users.set with
  notify (their writes span slots). token.generate writes only team keys
  and reads its actor's `user:` document, which carries no version (user
  documents never change after sign-up): a probe first shows it commits in
  one script, without the steps. The writer keygated finishes or rolls back what it left, within
  a bound measured and printed: afterwards the store is wholly before the
  command (intent, prepare) or wholly after it (decide, apply): every key
  the command's plan writes byte-identical to a snapshot taken before it,
  or the change complete on every slot; its version keys back to their old
  value or the commit's id; no `L ` lock in any `v:` key on any master, no
  `xu:` marker, `{xtx}:open` empty; the next command on the same objects
  works. One more member add per step is re-read at once by another
  keygated (a reader that meets the locks settles them). A sign-up rolled
  back leaves its email claim, which expires within 60 s (the test
  shortens it).
- test_3_three_daemons_race: three keygated racing the same commands (as
  tests/integration/test_multiwriter.py on one node): member adds,
  duplicate sign-ups, token.generate on one key, key.users.set with notify
  against token.rotate/generate: every answer ok is in the store, one user
  per email, no user without its email, one token record per user and key
  (the one the key names), one notification per `notified` answered.
- test_4_live_reshard: the team's slot and the intents' slot `{xtx}` moved
  between masters again and again (MIGRATE 10 keys at a time, as
  `redis-cli --cluster reshard`) while two keygated run admin commands on
  the team: every answer ok, every change in the store.
- test_5_refused_sign_up: sign-ups while the `{xtx}` slot is left half
  moved, so Redis refuses their intents: each is answered an error, its
  email claim released, and the keygated lives on (a use after free in
  job.c made it abort there: the assertion message says where).

Each ends with `keygate fsck` on the cluster clean. Figures go to stderr.
"""
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
os.environ["KEYGATE_TOPOLOGY"] = "single"      # this file makes its own cluster
import kgtest  # noqa: E402
import kgcluster  # noqa: E402

CLI = os.environ.get("KEYGATE_CLI") or os.path.join(kgtest.REPO, "build", "daemon", "cli", "keygate")
FREE = {"speech-to-text": {"policy": "free"}}
PFX = "kg:"
STEPS = ("intent", "prepare", "decide", "apply")
SETTLE_BOUND = 12.0     # s: the writer settles intents older than 2 s, every 2 s


def s(v):
    return v.decode() if isinstance(v, bytes) else v


def log(fmt, *args):
    sys.stderr.write((fmt % args if args else fmt) + "\n")
    sys.stderr.flush()


# --------------------------------------------------------------------------
# The cluster, read directly
# --------------------------------------------------------------------------

class Store:
    """Direct commands on the cluster, each sent to the master of its key's
    slot (a cached map, refreshed on MOVED; ASK followed once behind
    ASKING; TRYAGAIN waited out)."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.refresh()

    def refresh(self):
        self.map = [(a, b, m[1]) for a, b, m in self.cluster.slots()]

    def masters(self):
        return sorted({p for _, _, p in self.map})

    def port_of_slot(self, slot):
        for a, b, p in self.map:
            if a <= slot <= b:
                return p
        raise AssertionError("no master for slot %d" % slot)

    def port(self, key):
        return self.port_of_slot(kgcluster.slot_of(key))

    def cmd(self, *args):
        """One command; its key is args[1]."""
        key = args[1]
        port = self.port(key)
        ask = False
        for _ in range(50):
            r = kgcluster.Tcp(port)
            try:
                if ask:
                    r.command("ASKING")
                return r.command(*args)
            except kgtest.RedisError as e:
                m = str(e)
                if m.startswith(("MOVED", "ASK")):
                    port = int(m.split()[2].rsplit(":", 1)[1])
                    ask = m.startswith("ASK")
                    if not ask:
                        self.refresh()
                    continue
                if m.startswith(("TRYAGAIN", "CLUSTERDOWN")):
                    time.sleep(0.02)
                    continue
                raise
            finally:
                r.close()
        raise AssertionError("no answer for %r" % (args,))

    def pipeline(self, cmds):
        """Replies of cmds (each keyed by its args[1]), sent in one pipeline
        per master; a redirected one is sent again alone."""
        out = [None] * len(cmds)
        by_port = {}
        for i, c in enumerate(cmds):
            by_port.setdefault(self.port(c[1]), []).append(i)
        for port, idx in by_port.items():
            for k in range(0, len(idx), 1000):
                part = idx[k:k + 1000]
                r = kgcluster.Tcp(port)
                try:
                    r.sock.sendall(b"".join(kgtest.Redis._encode(cmds[i]) for i in part))
                    for i in part:
                        out[i] = r._reply()
                finally:
                    r.close()
        for i, v in enumerate(out):
            if isinstance(v, kgtest.RedisError):
                out[i] = self.cmd(*cmds[i])
        return out

    def scan(self, pattern):
        keys = set()
        for port in self.masters():
            cursor = b"0"
            while True:
                cursor, batch = kgcluster.rcmd(port, "SCAN", cursor, "MATCH", pattern,
                                               "COUNT", 1000)
                keys.update(s(k) for k in batch)
                if s(cursor) == "0":
                    break
        return keys

    def get_many(self, keys):
        keys = sorted(keys)
        return dict(zip(keys, self.pipeline([["GET", k] for k in keys])))

    def dump_many(self, keys):
        keys = sorted(keys)
        return dict(zip(keys, self.pipeline([["DUMP", k] for k in keys])))

    def get(self, key):
        return self.cmd("GET", key)

    def json(self, key):
        v = self.get(key)
        return None if v is None else json.loads(v)

    def members(self, team):
        flat = self.cmd("HGETALL", PFX + "{t:%s}:members" % team)
        return {s(flat[i]): s(flat[i + 1]) for i in range(0, len(flat), 2)}

    def uteams(self, user):
        return {s(x) for x in self.cmd("SMEMBERS", PFX + "uteams:%s" % user)}

    def notifs(self, user):
        return [json.loads(x) for x in self.cmd("LRANGE", PFX + "notif:%s" % user, 0, -1)]

    def key_doc(self, team, key):
        return self.json(PFX + "{t:%s}:key:%s" % (team, key))

    def hash(self, key):
        flat = self.cmd("HGETALL", key)
        return {s(flat[i]): s(flat[i + 1]) for i in range(0, len(flat), 2)}

    def locks_left(self):
        """[(version key, value)] of every `v:` key holding a lock `L ...`."""
        vals = self.get_many(self.scan(PFX + "v:*"))
        return [(k, s(v)) for k, v in vals.items() if v is not None and v.startswith(b"L ")]

    def open_intents(self):
        return [s(x) for x in self.cmd("ZRANGE", PFX + "{xtx}:open", 0, -1)]


# --------------------------------------------------------------------------
# Racing several daemons (as tests/integration/test_multiwriter.py)
# --------------------------------------------------------------------------

race = kgtest.race
oks = kgtest.oks


def codes(responses):
    return sorted(r["error"]["code"] for r in responses if r.get("ok") is False)


# --------------------------------------------------------------------------
# One multi-slot command killed after a step (test_2)
# --------------------------------------------------------------------------

class Case:
    """A command sent to a keygated that dies after `step`; subclasses make
    its objects (setup), say what before and after look like, and try the
    next command on the same objects."""
    name = ""

    def __init__(self, t, step):
        self.t, self.step = t, step
        self.c, self.st = t.c, t.st
        self.after_expected = step in ("decide", "apply")

    def request(self):
        raise NotImplementedError

    def learn(self):
        """Right after the death: what the test needs to know of it."""

    def check_before(self):
        raise NotImplementedError

    def check_after(self):
        raise NotImplementedError

    def follow_up(self):
        raise NotImplementedError


class SignupCase(Case):
    name = "user.signup"

    def setup(self):
        self.email = kgtest.unique_email("xc-%s" % self.step)

    def request(self):
        return kgtest.Client.request("user.signup", email=self.email, name="Killed")

    def learn(self):
        v = s(self.st.get(PFX + "email:%s" % self.email))
        self.t.assertIsNotNone(v, "no claim for %s" % self.email)
        self.uid = v[len("claim "):] if v.startswith("claim ") else v

    def check_before(self):
        ek = PFX + "email:%s" % self.email
        self.t.assertEqual(s(self.st.get(ek)), "claim " + self.uid)
        ttl = self.st.cmd("PTTL", ek)
        self.t.assertTrue(0 < ttl <= 60000, "claim TTL %s" % ttl)
        self.claim_ttl = ttl
        self.t.assertIsNone(self.st.get(PFX + "user:%s" % self.uid))
        self.t.assertEqual(self.st.uteams(self.uid), set())

    def check_after(self):
        ek = PFX + "email:%s" % self.email
        self.t.assertEqual(s(self.st.get(ek)), self.uid)
        self.t.assertEqual(self.st.cmd("PTTL", ek), -1)
        self.t.assertEqual(self.st.json(PFX + "user:%s" % self.uid)["email"], self.email)
        teams = self.st.uteams(self.uid)
        self.t.assertEqual(len(teams), 1, teams)
        self.team = teams.pop()
        self.t.assertEqual(self.st.members(self.team), {self.uid: "owner"})
        tdoc = self.st.json(PFX + "{t:%s}:team" % self.team)
        self.t.assertEqual(tdoc["team_id"], self.team)
        self.t.assertEqual(self.st.key_doc(self.team, tdoc["free_key_id"])["users"], [self.uid])

    def follow_up(self):
        c = self.c
        r = c.call("user.signup", email=self.email, name="Again")
        self.t.assertEqual(r.get("error", {}).get("code"), "conflict", r)
        if not self.after_expected:
            # The claim lives on until its 60 s run out: as if they had.
            self.t.assertIn("in progress", r["error"]["message"])
            ek = PFX + "email:%s" % self.email
            self.st.cmd("PEXPIRE", ek, "1")
            kgtest.wait_for(lambda: self.st.cmd("EXISTS", ek) == 0, 5, "the claim to run out")
            again = kgtest.signup(c, email=self.email, name="Again")
            self.t.assertNotEqual(again["user_id"], self.uid)
            self.t.assertEqual(s(self.st.get(ek)), again["user_id"])
            return
        who = c.ok("session.whoami", self.uid)
        self.t.assertEqual([(x["team_id"], x["role"]) for x in who["teams"]], [(self.team, "owner")])
        k = c.ok("key.create", self.uid, team=self.team, name="after", users=[self.uid],
                 services=FREE)
        self.t.assertEqual(k["users"], [self.uid])


class MemberAddCase(Case):
    name = "team.member.add"

    def setup(self):
        self.o = kgtest.signup(self.c, name="Owner")
        self.team = self.o["team_id"]
        self.x = kgtest.signup(self.c, name="X")["user_id"]

    def request(self):
        return kgtest.Client.request("team.member.add", self.o["user_id"], team=self.team,
                                     user=self.x, role="user")

    def check_before(self):
        self.t.assertNotIn(self.x, self.st.members(self.team))
        self.t.assertNotIn(self.team, self.st.uteams(self.x))

    def check_after(self):
        self.t.assertEqual(self.st.members(self.team).get(self.x), "user")
        self.t.assertIn(self.team, self.st.uteams(self.x))

    def follow_up(self):
        c, o = self.c, self.o["user_id"]
        if self.after_expected:
            self.t.assertEqual(c.err("team.member.add", o, team=self.team, user=self.x,
                                     role="user"), "conflict")
        else:
            c.ok("team.member.add", o, team=self.team, user=self.x, role="user")
        r = c.ok("team.member.set_role", o, team=self.team, user=self.x, role="admin")
        self.t.assertEqual(r["role"], "admin")
        who = c.ok("session.whoami", self.x)
        self.t.assertIn((self.team, "admin"), [(x["team_id"], x["role"]) for x in who["teams"]])
        self.t.assertEqual(self.st.members(self.team).get(self.x), "admin")


class ReaderCase(MemberAddCase):
    """team.member.add killed, then at once team.member.set_role of the
    same member through another keygated: a reader that meets the commit's
    locks settles it (rolls back a pending one once it is 2 s old, applies a
    decided one) and answers on the settled state."""
    name = "team.member.add, re-read at once"

    def learn(self):
        t = time.monotonic()
        self.reader = self.c.call("team.member.set_role", self.o["user_id"], team=self.team,
                                  user=self.x, role="admin")
        self.reader_s = time.monotonic() - t
        if self.after_expected:
            self.t.assertEqual(self.reader.get("ok"), True, self.reader)
        else:
            self.t.assertEqual(self.reader.get("error", {}).get("code"), "not_found", self.reader)

    def check_after(self):
        self.t.assertEqual(self.st.members(self.team).get(self.x), "admin")
        self.t.assertIn(self.team, self.st.uteams(self.x))

    def follow_up(self):
        c, o = self.c, self.o["user_id"]
        if not self.after_expected:
            c.ok("team.member.add", o, team=self.team, user=self.x, role="user")
        c.ok("team.member.remove", o, team=self.team, user=self.x)
        self.t.assertNotIn(self.team, self.st.uteams(self.x))


class MemberRemoveCase(Case):
    name = "team.member.remove"

    def setup(self):
        c = self.c
        self.o = kgtest.signup(c, name="Owner")
        o, self.team = self.o["user_id"], self.o["team_id"]
        self.y = kgtest.signup(c, name="Y")["user_id"]
        c.ok("team.member.add", o, team=self.team, user=self.y, role="user")
        self.key = c.ok("key.create", o, team=self.team, name="k", users=[self.y, o],
                        services=FREE)["key_id"]
        tok = c.ok("token.generate", self.y, key=self.key)["token"]
        self.tokrec = kgtest.token_key(self.t.env.pepper_bytes, tok)

    def request(self):
        return kgtest.Client.request("team.member.remove", self.o["user_id"], team=self.team,
                                     user=self.y)

    def check_before(self):
        self.t.assertEqual(self.st.members(self.team).get(self.y), "user")
        self.t.assertIn(self.team, self.st.uteams(self.y))
        d = self.st.key_doc(self.team, self.key)
        self.t.assertIn(self.y, d["users"])
        self.t.assertIn(self.y, d["tokens"])
        self.t.assertEqual(self.st.hash(self.tokrec).get("user_id"), self.y)

    def check_after(self):
        self.t.assertNotIn(self.y, self.st.members(self.team))
        self.t.assertNotIn(self.team, self.st.uteams(self.y))
        d = self.st.key_doc(self.team, self.key)
        self.t.assertEqual(d["users"], [self.o["user_id"]])
        self.t.assertNotIn(self.y, d["tokens"])
        self.t.assertEqual(self.st.cmd("EXISTS", self.tokrec), 0)
        self.t.assertEqual(self.st.cmd("EXISTS", PFX + "{t:%s}:ukeys:%s" % (self.team, self.y)), 0)

    def follow_up(self):
        c, o = self.c, self.o["user_id"]
        if self.after_expected:
            self.t.assertEqual(c.err("team.member.remove", o, team=self.team, user=self.y),
                               "not_found")
        else:
            c.ok("team.member.remove", o, team=self.team, user=self.y)
        c.ok("team.member.add", o, team=self.team, user=self.y, role="user")
        c.ok("key.users.set", o, key=self.key, users=[o, self.y])
        c.ok("token.generate", self.y, key=self.key)
        self.t.assertIn(self.team, self.st.uteams(self.y))


class KeyUsersCase(Case):
    name = "key.users.set (notify)"

    def setup(self):
        c = self.c
        self.o = kgtest.signup(c, name="Owner")
        o, self.team = self.o["user_id"], self.o["team_id"]
        self.z1 = kgtest.signup(c, name="Z1")["user_id"]
        self.z2 = kgtest.signup(c, name="Z2")["user_id"]
        for z in (self.z1, self.z2):
            c.ok("team.member.add", o, team=self.team, user=z, role="user")
        self.key = c.ok("key.create", o, team=self.team, name="k", users=[self.z1],
                        services=FREE)["key_id"]
        tok = c.ok("token.generate", self.z1, key=self.key)["token"]
        self.tokrec = kgtest.token_key(self.t.env.pepper_bytes, tok)

    def request(self):
        return kgtest.Client.request("key.users.set", self.o["user_id"], key=self.key,
                                     users=[self.z2], notify=True)

    def check_before(self):
        d = self.st.key_doc(self.team, self.key)
        self.t.assertEqual(d["users"], [self.z1])
        self.t.assertIn(self.z1, d["tokens"])
        self.t.assertEqual(self.st.hash(self.tokrec).get("user_id"), self.z1)
        self.t.assertEqual(self.st.notifs(self.z1), [])
        self.t.assertEqual(self.st.notifs(self.z2), [])

    def check_after(self):
        d = self.st.key_doc(self.team, self.key)
        self.t.assertEqual(d["users"], [self.z2])
        self.t.assertEqual(d["tokens"], {})
        self.t.assertEqual(self.st.cmd("EXISTS", self.tokrec), 0)
        self.t.assertEqual([(n["type"], n["key_id"]) for n in self.st.notifs(self.z1)],
                           [("key.unassigned", self.key)])
        self.t.assertEqual([(n["type"], n["key_id"]) for n in self.st.notifs(self.z2)],
                           [("key.assigned", self.key)])

    def follow_up(self):
        c, o = self.c, self.o["user_id"]
        r = c.ok("key.users.set", o, key=self.key, users=[self.z1, self.z2], notify=True)
        self.t.assertEqual(r["notified"], [self.z1] if self.after_expected else [self.z2])
        c.ok("token.generate", self.z2, key=self.key)
        n = c.ok("notification.list", self.z2)["notifications"]
        self.t.assertEqual(n[0]["type"], "key.assigned")
        self.t.assertEqual(n[0]["key_id"], self.key)


class TokenGenerateCase(Case):
    """token.generate: its writes are in the team's slot, but it checks the
    version of its actor's user document, in another."""
    name = "token.generate"

    def setup(self):
        c = self.c
        self.o = kgtest.signup(c, name="Owner")
        o, self.team = self.o["user_id"], self.o["team_id"]
        self.x = kgtest.signup(c, name="X")["user_id"]
        c.ok("team.member.add", o, team=self.team, user=self.x, role="user")
        self.key = c.ok("key.create", o, team=self.team, name="k", users=[self.x],
                        services=FREE)["key_id"]

    def request(self):
        return kgtest.Client.request("token.generate", self.x, key=self.key)

    def records(self):
        return self.st.scan(PFX + "{t:%s}:tok:*" % self.team)

    def check_before(self):
        self.t.assertEqual(self.st.key_doc(self.team, self.key)["tokens"], {})
        self.t.assertEqual(self.records(), set())

    def check_after(self):
        tk = self.st.key_doc(self.team, self.key)["tokens"]
        self.t.assertEqual(list(tk), [self.x])
        rec = PFX + "{t:%s}:tok:%s" % (self.team, tk[self.x]["hash"])
        self.t.assertEqual(self.records(), {rec})
        h = self.st.hash(rec)
        self.t.assertEqual((h["user_id"], h["key_id"], h["token_id"]),
                           (self.x, self.key, tk[self.x]["token_id"]))

    def follow_up(self):
        c = self.c
        if self.after_expected:
            self.t.assertEqual(c.err("token.generate", self.x, key=self.key), "conflict")
            r = c.ok("token.rotate", self.x, key=self.key)
        else:
            r = c.ok("token.generate", self.x, key=self.key)
        self.t.assertEqual(self.t.authorize(r["token"])["status"], "ok")
        self.t.assertEqual(len(self.records()), 1)


CASES = (SignupCase, MemberAddCase, MemberRemoveCase, KeyUsersCase, ReaderCase)


# --------------------------------------------------------------------------

class DaemonOnCluster(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        t = time.monotonic()
        cls.env = kgtest.Env(redis=False, start_daemon=False)
        cls.cluster = kgcluster.Cluster(cls.env.tmp)
        try:
            cls.cluster.start()
            cls.env.write_config(replace=[l for l in cls.env.config_lines()
                                          if not l.startswith("redis ")] +
                                 ["redis " + cls.cluster.spec()])
            cls.env.start_daemon()
            cls.c = cls.env.client(timeout=60)
            cls.st = Store(cls.cluster)
            # Two more keygated on the same store (the writer lease stays
            # with the first, which settles what a killed one leaves).
            cls.socks = [cls.env.socket_path, cls.env.start_extra_daemon("kg2"),
                         cls.env.start_extra_daemon("kg3")]
            cls.doomed = []                       # keygated started to be killed
        except BaseException:
            cls.cluster.stop()
            cls.env.close()
            raise
        log("cluster and 3 keygated up in %.2f s; masters %s", time.monotonic() - t,
            cls.st.masters())

    @classmethod
    def tearDownClass(cls):
        for p in cls.doomed:
            if p.poll() is None:
                p.kill()
                p.wait(5)
        cls.env.close()
        cls.cluster.stop()
        kgtest.check_clean_exit(cls.env)

    def tail(self, name=None, n=3000):
        path = self.env.log_path if name is None else os.path.join(self.env.tmp, name + ".log")
        return self.env._tail(path, n)

    # -- fsck ---------------------------------------------------------------

    def fsck_clean(self, what):
        """keygate fsck on the cluster: clean. Problems about intent
        records ({xtx}, xu:) are another change's (fsck is being taught
        about them): printed as a note, not failed on."""
        t = time.monotonic()
        p = subprocess.run([CLI, "--json", "fsck", "--config", self.env.config_path],
                           capture_output=True, text=True, timeout=120)
        el = time.monotonic() - t
        try:
            out = json.loads(p.stdout)
        except ValueError:
            self.fail("%s: no JSON from fsck (exit %s): %s %s" % (what, p.returncode, p.stdout,
                                                                  p.stderr))
        problems = out.get("problems", [])
        theirs = [x for x in problems if "{xtx}" in json.dumps(x) or "xu:" in json.dumps(x)]
        ours = [x for x in problems if x not in theirs]
        if theirs:
            log("NOTE %s: fsck reports %d problem(s) on intent records (not this test's to "
                "fix), e.g. %s", what, len(theirs), json.dumps(theirs[0]))
        self.assertEqual(ours, [], "%s: fsck found problems: %s" % (what, p.stderr))
        self.assertIn(p.returncode, (0, 1) if theirs else (0,), "%s: fsck exit %s: %s"
                      % (what, p.returncode, p.stderr))
        log("%s: fsck clean in %.2f s, counts %s", what, el, json.dumps(out.get("counts")))
        return out.get("counts")

    def assert_no_leftovers(self, what):
        self.assertEqual(self.st.locks_left(), [], "%s: locks left in version keys" % what)
        self.assertEqual(self.st.open_intents(), [], "%s: open intents" % what)
        self.assertEqual(sorted(self.st.scan(PFX + "*xu:*")), [], "%s: markers left" % what)

    def authorize(self, token):
        with tempfile.NamedTemporaryFile("w", dir=self.env.tmp, delete=False) as f:
            f.write(token)
            path = f.name
        os.chmod(path, 0o600)
        p = subprocess.run([CLI, "--json", "--config", self.env.config_path, "authorize",
                            "--token-file", path, "--service", "speech-to-text", "--model", "fast",
                            "--param", "audio_seconds=1", "--request-id", os.urandom(6).hex()],
                           capture_output=True, timeout=30)
        os.unlink(path)
        try:
            return json.loads(p.stdout)
        except ValueError:
            self.fail("authorize: %s %s" % (p.stdout, p.stderr))

    # -- 1 ------------------------------------------------------------------

    def test_1_workflow(self):
        c, st = self.c, self.st
        t0 = time.monotonic()
        # Teams until they sit on every master (at most 40).
        owners, where = [], {}
        while len(owners) < 40 and (len(owners) < 6 or len(set(where.values())) < 3):
            o = kgtest.signup(c, name="Owner%d" % len(owners))
            owners.append(o)
            where[o["team_id"]] = st.port_of_slot(kgcluster.slot_of("{t:%s}" % o["team_id"]))
        spread = Counter(where.values())
        log("workflow: %d teams over masters %s", len(owners), dict(spread))
        self.assertGreaterEqual(len(spread), 2, "every team on one master: %s" % where)
        # One team per master gets the whole workflow.
        picked = {}
        for o in owners:
            picked.setdefault(where[o["team_id"]], o)
        for port, o in sorted(picked.items()):
            self.workflow(o, port)
        log("workflow on %d teams (one per master) in %.2f s", len(picked),
            time.monotonic() - t0)
        self.assert_no_leftovers("workflow")
        self.fsck_clean("workflow")

    def workflow(self, o, port):
        c, st = self.c, self.st
        oid, team = o["user_id"], o["team_id"]
        # The sign-up, as stored.
        self.assertEqual(s(st.get(PFX + "email:%s" % o["email"])), oid)
        self.assertEqual(st.json(PFX + "user:%s" % oid)["email"], o["email"])
        self.assertEqual(st.uteams(oid), {team})
        self.assertEqual(st.members(team), {oid: "owner"})
        g = c.ok("team.get", oid, team=team)
        self.assertEqual((g["team_id"], g["free_key_id"]), (team, o["free_key_id"]))
        self.assertEqual([(m["user_id"], m["role"]) for m in g["members"]], [(oid, "owner")])

        a = kgtest.signup(c, name="Admin")["user_id"]
        u = kgtest.signup(c, name="User")["user_id"]
        v = kgtest.signup(c, name="Visitor")["user_id"]
        self.assertEqual(c.ok("team.member.add", oid, team=team, user=a, role="admin")["role"],
                         "admin")
        self.assertEqual(c.ok("team.member.add", oid, team=team, user=u, role="user")["role"],
                         "user")
        # An admin adds by email.
        ve = st.json(PFX + "user:%s" % v)["email"]
        self.assertEqual(c.ok("team.member.add", a, team=team, email=ve, role="user")["user_id"], v)
        self.assertEqual(c.err("team.member.add", a, team=team, user=v, role="user"), "conflict")
        self.assertEqual(c.ok("team.member.set_role", oid, team=team, user=v, role="admin")["role"],
                         "admin")
        self.assertEqual(st.members(team), {oid: "owner", a: "admin", u: "user", v: "admin"})
        for x in (a, u, v):
            self.assertIn(team, st.uteams(x))
        who = c.ok("session.whoami", v)
        self.assertIn((team, "admin"), [(x["team_id"], x["role"]) for x in who["teams"]])
        c.ok("team.member.remove", oid, team=team, user=v)
        self.assertNotIn(v, st.members(team))
        self.assertNotIn(team, st.uteams(v))
        who = c.ok("session.whoami", v)
        self.assertNotIn(team, [x["team_id"] for x in who["teams"]])
        self.assertEqual(c.err("team.get", v, team=team), "not_found")

        # A key for a and u; tokens.
        k = c.ok("key.create", oid, team=team, name="prod", users=[a, u], services=FREE)
        key = k["key_id"]
        self.assertEqual((k["team_id"], sorted(k["users"]), k["status"]),
                         (team, sorted([a, u]), "active"))
        self.assertEqual(st.port(PFX + "{t:%s}:key:%s" % (team, key)), port)
        self.assertEqual(sorted(st.key_doc(team, key)["users"]), sorted([a, u]))
        g1 = c.ok("token.generate", u, key=key)
        self.assertEqual((len(g1["token"]), kgtest.token_team(g1["token"]), g1["user_id"]),
                         (64, team, u))
        rec = kgtest.token_key(self.env.pepper_bytes, g1["token"])
        self.assertEqual(st.port(rec), port)
        self.assertEqual((st.hash(rec)["key_id"], st.hash(rec)["user_id"]), (key, u))
        self.assertEqual(c.err("token.generate", u, key=key), "conflict")
        self.assertEqual(self.authorize(g1["token"])["status"], "ok")
        r1 = c.ok("token.rotate", u, key=key)
        self.assertNotEqual(r1["token"], g1["token"])
        self.assertEqual(st.cmd("EXISTS", rec), 0)
        rec2 = kgtest.token_key(self.env.pepper_bytes, r1["token"])
        self.assertEqual(st.hash(rec2)["user_id"], u)
        self.assertEqual(c.ok("key.get", u, key=key)["tokens"][u]["token_id"], r1["token_id"])
        self.assertEqual(self.authorize(r1["token"])["status"], "ok")
        self.assertNotEqual(self.authorize(g1["token"])["status"], "ok")

        # A wallet, credited once per reference.
        w = c.ok("wallet.create", oid, team=team, name="main")
        wid = w["wallet_id"]
        self.assertEqual((w["team_id"], w["balance_micros"]), (team, 0))
        cr = c.ok("wallet.credit", a, wallet=wid, amount_micros=5000000, reference="topup-1")
        self.assertEqual((cr["credited"], cr["balance_micros"]), (True, 5000000))
        cr = c.ok("wallet.credit", a, wallet=wid, amount_micros=5000000, reference="topup-1")
        self.assertEqual((cr["credited"], cr["balance_micros"]), (False, 5000000))
        self.assertEqual(c.ok("wallet.get", oid, wallet=wid)["balance_micros"], 5000000)
        self.assertEqual(st.cmd("HGET", PFX + "{t:%s}:wallet:%s" % (team, wid), "balance_micros"),
                         b"5000000")
        led = c.ok("wallet.ledger", oid, wallet=wid)["entries"]
        self.assertEqual([(e["type"], e["amount_micros"]) for e in led], [("credit", 5000000)])

        # key.users.set with notifications: u out (its token dies), oid in.
        ks = c.ok("key.users.set", oid, key=key, users=[a, oid], notify=True)
        self.assertEqual(sorted(ks["users"]), sorted([a, oid]))
        self.assertEqual(sorted(ks["notified"]), sorted([u, oid]))
        self.assertEqual(st.cmd("EXISTS", rec2), 0)
        self.assertNotEqual(self.authorize(r1["token"])["status"], "ok")
        nu = c.ok("notification.list", u)["notifications"]
        self.assertEqual([(n["type"], n["key_id"], n["team_id"], n["by"]) for n in nu],
                         [("key.unassigned", key, team, oid)])
        no = c.ok("notification.list", oid)["notifications"]
        self.assertEqual([(n["type"], n["key_id"]) for n in no], [("key.assigned", key)])
        self.assertEqual(len(st.notifs(u)), 1)

        # Listings.
        self.assertEqual({x["key_id"] for x in c.ok("key.list", oid, team=team)["keys"]},
                         {o["free_key_id"], key})
        self.assertNotIn(key, [x["key_id"] for x in c.ok("key.list", u, team=team)["keys"]])
        self.assertIn(key, [x["key_id"] for x in c.ok("key.list", a, team=team)["keys"]])
        g = c.ok("team.get", a, team=team)
        self.assertEqual({m["user_id"]: m["role"] for m in g["members"]},
                         {oid: "owner", a: "admin", u: "user"})
        who = c.ok("session.whoami", u)
        self.assertEqual(who["user"]["user_id"], u)
        self.assertIn((team, "user"), [(x["team_id"], x["role"]) for x in who["teams"]])
        au = c.ok("audit.list", oid, team=team, limit=100)["entries"]
        got = Counter(e["cmd"] for e in au if e["outcome"] == "ok")
        for cmd, n in (("team.member.add", 3), ("team.member.set_role", 1),
                       ("team.member.remove", 1), ("key.create", 1), ("token.generate", 1),
                       ("token.rotate", 1), ("wallet.create", 1), ("wallet.credit", 2),
                       ("key.users.set", 1)):
            self.assertGreaterEqual(got[cmd], n, "audit: %s %s" % (cmd, got))
        self.assertIn("conflict", [e["outcome"] for e in au])
        self.assertEqual(st.port(PFX + "{t:%s}:audit" % team), port)

    # -- 2 ------------------------------------------------------------------

    def doomed_daemon(self, name, step):
        sock = self.env.start_extra_daemon(name, {"KEYGATED_FAULT_XC": step})
        p, _ = self.env.extra.pop()          # it dies: not one to stop at the end
        self.doomed.append(p)
        return sock, p

    def test_2_kill9_in_every_step(self):
        c, st = self.c, self.st
        t0 = time.monotonic()
        # Which commands span slots. wallet.credit (its own script in a
        # MULTI) never does; token.generate writes only team keys, but a
        # command also checks the version of what it read: the actor's
        # `user:` document lies in another slot.
        o = kgtest.signup(c, name="Owner")
        team, oid = o["team_id"], o["user_id"]
        w = c.ok("wallet.create", oid, team=team, name="w")["wallet_id"]
        sock, p = self.doomed_daemon("probe", "intent")
        with kgtest.Client(sock, timeout=30) as d:
            d.ok("wallet.credit", oid, wallet=w, amount_micros=5, reference="r")
            self.assertIsNone(p.poll())
            # token.generate's writes are all in the team's slot, and the
            # actor's user document it reads carries no version: one commit
            # script, no steps, so the fault switch never fires.
            d.ok("token.generate", oid, key=o["free_key_id"])
        self.assertIsNone(p.poll(), "token.generate ran as a commit across slots: "
                          + self.tail("probe"))
        self.assertEqual(st.open_intents(), [])
        p.kill()
        p.wait(5)

        bounds = []
        for step in STEPS:
            bounds += self.kill_in_step(step)
        worst = max(b for _, _, b in bounds if b is not None)
        log("kill -9 after each step: store settled (intent closed, no lock) within %.2f s "
            "of the death at worst; all %d cases in %.1f s", worst, len(bounds),
            time.monotonic() - t0)
        self.assertLess(worst, SETTLE_BOUND)

    def kill_in_step(self, step):
        st = self.st
        cases = [cls(self, step) for cls in CASES]
        for k in cases:
            k.setup()
        # Every key's value (DUMP) and every version before the commands.
        keys = {k for k in st.scan("*") if not k.startswith(PFX + "v:")}
        before = st.dump_many(keys)
        vbefore = st.get_many(st.scan(PFX + "v:*"))
        self.assertEqual(st.open_intents(), [])
        for i, k in enumerate(cases):
            name = "xc-%s-%d" % (step, i)
            sock, p = self.doomed_daemon(name, step)
            seen = set(st.open_intents())
            with kgtest.Client(sock, timeout=30) as d:
                d.send(k.request())
                self.assertTrue(d.is_closed(15), "%s after %s: keygated did not die" %
                                (k.name, step))
            k.died = time.monotonic()
            rc = p.wait(10)
            self.assertEqual(rc, 137, "%s after %s: exit %s\n%s" % (k.name, step, rc,
                                                                     self.tail(name)))
            self.assertIn("KEYGATED_FAULT_XC=%s" % step, self.tail(name))
            new = set(st.open_intents()) - seen
            self.assertEqual(len(new), 1, "%s after %s: intents %s" % (k.name, step, new))
            k.txid = new.pop()
            k.intent = st.hash(PFX + "{xtx}:%s" % k.txid)
            k.plan = json.loads(k.intent["plan"])
            self.assertGreaterEqual(len(k.plan["parts"]), 2, "%s: one slot" % k.name)
            k.learn()
        # Settled: the intent finished, its markers and locks gone; all
        # cases polled together, each timed from its own death.
        def settled(k):
            if st.cmd("ZSCORE", PFX + "{xtx}:open", k.txid) is not None:
                return False
            if any(st.cmd("EXISTS", part["marker"]) for part in k.plan["parts"]):
                return False
            return not any((v or b"").startswith(b"L ")
                           for v in st.get_many(l[0] for part in k.plan["parts"]
                                                for l in part["locks"]).values())
        waiting = list(cases)
        deadline = time.monotonic() + SETTLE_BOUND
        while waiting:
            for k in list(waiting):
                if settled(k):
                    k.bound = time.monotonic() - k.died
                    waiting.remove(k)
            if waiting and time.monotonic() > deadline:
                self.fail("after %s, not settled within %.0f s: %s; writer's log:\n%s" % (
                    step, SETTLE_BOUND, [(k.name, k.txid) for k in waiting], self.tail()))
            time.sleep(0.01)
        for k in cases:
            want = "done" if k.after_expected else "aborted"
            ik = PFX + "{xtx}:%s" % k.txid
            lockkeys = [l[0] for part in k.plan["parts"] for l in part["locks"]]
            self.assertEqual(s(st.cmd("HGET", ik, "state")), want, k.name)
            ttl = st.cmd("TTL", ik)
            self.assertTrue(0 < ttl <= 60, "intent TTL %s" % ttl)
            # Wholly before, or wholly after.
            cmdkeys = set()
            for part in k.plan["parts"]:
                for cm in part["cmds"]:
                    cmdkeys.add(cm[3] if cm[0] in ("EVAL", "EVALSHA") else cm[1])
            claims = {cl[0] for part in k.plan["parts"] for cl in part["claims"]}
            now = st.dump_many(cmdkeys - claims)
            vnow = st.get_many(lockkeys)
            if k.after_expected:
                k.check_after()
                for part in (k.plan["parts"] if not isinstance(k, ReaderCase) else []):
                    # (the reader's set_role wrote the members' version since)
                    for vk, flag, _ in part["locks"]:
                        want_v = k.txid.encode() if flag in "bB" else vbefore.get(vk)
                        self.assertEqual(vnow[vk], want_v, "%s after %s: version %s (%s)"
                                         % (k.name, step, vk, flag))
            else:
                k.check_before()
                changed = [x for x in now if now[x] != before.get(x)]
                self.assertEqual(changed, [], "%s after %s: keys changed though rolled back"
                                 % (k.name, step))
                moved = [x for x in vnow if vnow[x] != vbefore.get(x)]
                self.assertEqual(moved, [], "%s after %s: versions changed though rolled back"
                                 % (k.name, step))
        self.assert_no_leftovers("after %s" % step)
        for k in cases:
            k.follow_up()
        self.assert_no_leftovers("after %s, next commands" % step)
        sweeps = self.env.daemon_log().count("left open; settling it")
        out = []
        for k in cases:
            extra = ""
            if isinstance(k, ReaderCase):
                extra = "; re-read by another keygated at once, answered %s after %.2f s" % (
                    "ok" if k.reader.get("ok") else k.reader["error"]["code"], k.reader_s)
            if isinstance(k, SignupCase) and not k.after_expected:
                extra = "; its email claim left with %.1f s to live (expires within 60 s)" % (
                    k.claim_ttl / 1000.0)
            log("kill after %-7s %-34s %d slots: %s, settled %.2f s after the death%s",
                step, k.name, len(k.plan["parts"]), "after" if k.after_expected else "before",
                k.bound, extra)
            out.append((step, k.name, k.bound))
        log("after %s: the writer's log says %d intents settled by its sweep so far", step, sweeps)
        self.fsck_clean("kill after %s" % step)
        return out

    # -- 3 ------------------------------------------------------------------

    def test_3_three_daemons_race(self):
        c, st, socks = self.c, self.st, self.socks
        t0 = time.monotonic()
        owner = kgtest.signup(c, name="Owner")
        oid, team = owner["user_id"], owner["team_id"]
        users = [kgtest.signup(c, name="U%d" % i)["user_id"] for i in range(120)]

        # 1. Member adds, each sent to all three.
        t = time.monotonic()
        res = race(socks, [[c.request("team.member.add", oid, team=team, user=u, role="user")]
                           for u in users])
        log("race: %d member adds x 3 keygated in %.2f s", len(users), time.monotonic() - t)
        for u, rs in zip(users, res):
            self.assertEqual(len(oks(rs)), 1, (u, rs))
            self.assertEqual(codes(rs), ["conflict", "conflict"], rs)
        self.assertEqual(st.members(team), dict({u: "user" for u in users}, **{oid: "owner"}))
        for u in users:
            self.assertIn(team, st.uteams(u), u)
        self.assertEqual(len(c.ok("team.get", oid, team=team)["members"]), len(users) + 1)

        # 2. Duplicate sign-ups.
        emails = [kgtest.unique_email("dup") for _ in range(60)]
        t = time.monotonic()
        res = race(socks, [[c.request("user.signup", email=e, name="Dup")] for e in emails])
        log("race: %d e-mails signed up x 3 keygated in %.2f s", len(emails),
            time.monotonic() - t)
        for e, rs in zip(emails, res):
            won = oks(rs)
            self.assertEqual(len(won), 1, (e, rs))
            self.assertTrue(set(codes(rs)) <= {"conflict"}, rs)
            uid = won[0]["result"]["user_id"]
            self.assertEqual(s(st.get(PFX + "email:%s" % e)), uid)
            self.assertEqual(st.cmd("PTTL", PFX + "email:%s" % e), -1)
            self.assertEqual(st.members(won[0]["result"]["team_id"]), {uid: "owner"})
        docs = [json.loads(v) for v in st.get_many(st.scan(PFX + "user:*")).values()]
        by_email = Counter(d["email"] for d in docs)
        self.assertEqual([e for e, n in by_email.items() if n > 1], [], "e-mails used twice")
        for e in emails:
            self.assertEqual(by_email[e], 1, e)
        emap = st.get_many(PFX + "email:%s" % d["email"] for d in docs)
        orphans = [d["user_id"] for d in docs
                   if s(emap[PFX + "email:%s" % d["email"]]) != d["user_id"]]
        self.assertEqual(orphans, [], "users whose e-mail does not name them")
        log("race: %d users in the store, one per e-mail", len(docs))

        # 3. token.generate on the same key and user from all three.
        keys = [c.ok("key.create", oid, team=team, name="k%d" % i, users=users[:6],
                     services=FREE)["key_id"] for i in range(4)]
        pairs = [(k, u) for k in keys for u in users[:6]]
        t = time.monotonic()
        res = race(socks, [[c.request("token.generate", u, key=k)] for k, u in pairs])
        log("race: %d token.generate x 3 keygated in %.2f s", len(pairs), time.monotonic() - t)
        won = {}
        for (k, u), rs in zip(pairs, res):
            self.assertEqual(len(oks(rs)), 1, (k, u, rs))
            self.assertEqual(codes(rs), ["conflict", "conflict"], rs)
            won[(k, u)] = oks(rs)[0]["result"]
        for k in keys:
            d = st.key_doc(team, k)
            self.assertEqual(set(d["tokens"]), set(users[:6]))
            for u, tk in d["tokens"].items():
                self.assertEqual(tk["token_id"], won[(k, u)]["token_id"])
        self.check_tokens(team, keys)

        # 4. key.users.set (notify: notifications in other slots) against
        # token.rotate / token.generate of the users it adds and drops.
        k = keys[0]
        jobs = []
        for i in range(40):
            sub = random.Random(i).sample(users[:6], 3)
            jobs.append([c.request("key.users.set", oid, key=k, users=sub, notify=True)])
            jobs.append([c.request("token.rotate", sub[0], key=k),
                         c.request("token.generate", sub[1], key=k),
                         c.request("token.rotate", sub[2], key=k)])
        before = {u: len(st.notifs(u)) for u in users[:6]}
        t = time.monotonic()
        res = race(socks, jobs)
        log("race: %d key.users.set (notify) and %d token.rotate/generate x 3 keygated in %.2f s",
            len(jobs) // 2, len(jobs) // 2, time.monotonic() - t)
        sets = []
        notified = Counter()
        for rs in res[0::2]:
            for r in rs:
                if r.get("ok"):
                    sets.append(sorted(r["result"]["users"]))
                    notified.update(r["result"]["notified"])
                else:
                    self.assertEqual(r["error"]["code"], "conflict", r)
        self.assertEqual(len(sets), 120, "every key.users.set answered ok")
        for rs in res[1::2]:
            for r in rs:
                if not r.get("ok"):
                    self.assertIn(r["error"]["code"], ("conflict", "forbidden", "not_found"), r)
        d = st.key_doc(team, k)
        self.assertIn(sorted(d["users"]), sets)
        self.assertTrue(set(d["tokens"]) <= set(d["users"]), d)
        # Every notification answered is stored, once.
        for u in users[:6]:
            got = [n for n in st.notifs(u)[:len(st.notifs(u)) - before[u]]]
            self.assertTrue(all(n["key_id"] == k for n in got))
            self.assertEqual(len(got), notified[u], "notifications of %s" % u)
        self.check_tokens(team, keys)
        self.assert_no_leftovers("race")
        log("race: all in %.1f s", time.monotonic() - t0)
        self.fsck_clean("race")

    def check_tokens(self, team, keys):
        """One live token record per user and key: the one the key names."""
        st = self.st
        tp = PFX + "{t:%s}:tok:" % team
        recs = sorted(st.scan(tp + "*"))
        hashes = dict(zip(recs, st.pipeline([["HGETALL", r] for r in recs])))
        per = Counter()
        named = set()
        for kk in keys:
            for u, tk in st.key_doc(team, kk)["tokens"].items():
                named.add(tk["hash"])
        for r, flat in hashes.items():
            h = {s(flat[i]): s(flat[i + 1]) for i in range(0, len(flat), 2)}
            if h.get("expires_ms", "0") != "0":
                continue                       # rotated with a grace period
            per[(h["key_id"], h["user_id"])] += 1
            self.assertIn(r[len(tp):], named, "a token record no key names: %s" % h)
        self.assertEqual([x for x, n in per.items() if n > 1], [], "two live tokens")
        self.assertEqual(len(named), sum(per.values()))

    # -- 4 ------------------------------------------------------------------

    def move(self, slot, to, batch=10):
        """A live move of slot in MIGRATEs of `batch` keys (redis-cli
        --cluster reshard's default pipeline); returns the seconds it took."""
        t = time.monotonic()
        self.cluster.move_slot(slot, to, batch=batch)
        return time.monotonic() - t

    def test_4_live_reshard(self):
        c, st = self.c, self.st
        owner = kgtest.signup(c, name="Owner")
        oid, team = owner["user_id"], owner["team_id"]
        users = [kgtest.signup(c, name="R%d" % i)["user_id"] for i in range(400)]
        slot, xslot = kgcluster.slot_of("{t:%s}" % team), kgcluster.slot_of("{xtx}")
        stop = threading.Event()
        answers, errors = [], []
        pool = list(users)
        lock = threading.Lock()

        def admin(sock):
            """Rounds of member add, key.create, key.users.set with notify
            and token.generate on the team until stop."""
            try:
                with kgtest.Client(sock, timeout=60) as d:
                    while not stop.is_set():
                        with lock:
                            if not pool:
                                return
                            u = pool.pop()
                        row = {"user": u}
                        for cmd, actor, args in (
                                ("team.member.add", oid, {"team": team, "user": u,
                                                          "role": "user"}),
                                ("key.create", oid, {"team": team, "name": "r-" + u,
                                                     "users": [oid], "services": FREE}),
                                ("key.users.set", oid, {"key": None, "users": [oid, u],
                                                        "notify": True}),
                                ("token.generate", u, {"key": None})):
                            if "key" in args:
                                args["key"] = row["key"]
                            t = time.monotonic()
                            r = d.call(cmd, actor, **args)
                            row[cmd] = (r, time.monotonic() - t)
                            if not r.get("ok"):
                                break
                            if cmd == "key.create":
                                row["key"] = r["result"]["key_id"]
                        answers.append(row)
            except Exception as e:
                errors.append(repr(e))

        threads = [threading.Thread(target=admin, args=(sock,)) for sock in self.socks[:2]]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        moves = []
        masters = st.masters()
        try:
            time.sleep(0.2)
            i = 0
            # A command retries a redirection for ~1.5 s at most: moves are
            # spaced so that one command meets few of them.
            while i < 6 or (time.monotonic() - t0 < 4.0 and pool):
                for sl in (slot, xslot):
                    src = self.cluster.owner(sl)
                    dst = [m for m in masters if m != src][i % 2]
                    n = len(kgcluster.rcmd(src, "CLUSTER", "GETKEYSINSLOT", str(sl), "100000"))
                    moves.append((sl, src, dst, n, self.move(sl, dst)))
                time.sleep(0.3)
                i += 1
            time.sleep(0.2)
        finally:
            stop.set()
            for t in threads:
                t.join(120)
        el = time.monotonic() - t0
        dead = [n for n, alive in (("keygated", self.env.daemon_alive()),) if not alive]
        self.assertEqual((errors, dead), ([], []),
                         "a keygated closed its connections during the moves:\n" + self.tail())
        st.refresh()
        for sl in (slot, xslot):
            ms = [m for m in moves if m[0] == sl]
            log("reshard: slot %d (%s) moved %d times between masters, %d-%d keys, each move "
                "%.3f-%.3f s", sl, "the team's" if sl == slot else "{xtx}", len(ms),
                min(m[3] for m in ms), max(m[3] for m in ms), min(m[4] for m in ms),
                max(m[4] for m in ms))
        calls = [(cmd, v) for row in answers for cmd, v in row.items() if isinstance(v, tuple)]
        bad = [(cmd, v[0]) for cmd, v in calls if not v[0].get("ok")]
        slowest = max(v[1] for _, v in calls)
        log("reshard: %d admin commands (%d rounds) through 2 keygated during %d slot moves "
            "in %.2f s, %d not ok, slowest %.3f s", len(calls), len(answers), len(moves), el,
            len(bad), slowest)
        self.assertGreater(len(answers), 10)
        # Every answer ok is in the store, once: members, key documents,
        # tokens, one notification per assignment, one audit entry per change.
        audit = Counter()
        for _, fields in st.cmd("XRANGE", PFX + "{t:%s}:audit" % team, "-", "+"):
            f = {s(fields[i]): s(fields[i + 1]) for i in range(0, len(fields), 2)}
            e = json.loads(f["e"])
            audit[(e["cmd"], e["target"])] += 1
        members = st.members(team)
        problems = []
        for row in answers:
            u = row["user"]
            ok = {cmd for cmd, v in row.items() if isinstance(v, tuple) and v[0].get("ok")}
            if "team.member.add" in ok and (members.get(u) != "user" or team not in st.uteams(u)):
                problems.append(("member add answered ok, not in the store", u))
            k = row.get("key")
            d = st.key_doc(team, k) if k else None
            if "key.users.set" in ok and sorted(d["users"]) != sorted([oid, u]):
                problems.append(("key.users.set answered ok, not in the store", k, d["users"]))
            if "token.generate" in ok:
                tok = row["token.generate"][0]["result"]
                rec = kgtest.token_key(self.env.pepper_bytes, tok["token"])
                if d["tokens"].get(u, {}).get("token_id") != tok["token_id"] or \
                        st.hash(rec).get("user_id") != u:
                    problems.append(("token answered ok, not in the store", k, u))
            n = [(x["type"], x["key_id"]) for x in st.notifs(u)]
            if n != ([("key.assigned", k)] if "key.users.set" in ok else n[:0]) and \
                    not ("key.users.set" in row and "key.users.set" not in ok and
                         n in ([], [("key.assigned", k)])):
                problems.append(("notifications of %s" % u, n))
            for cmd, target in (("team.member.add", u), ("key.create", k),
                                ("key.users.set", k), ("token.generate", k)):
                if target and audit[(cmd, target)] > (1 if cmd in ok else
                                                      (1 if cmd in row else 0)):
                    problems.append(("audited %d times" % audit[(cmd, target)], cmd, target))
                if cmd in ok and audit[(cmd, target)] != 1:
                    problems.append(("answered ok, audited %d times" % audit[(cmd, target)],
                                     cmd, target))
        self.assertEqual(problems, [], "the store after the moves (a change answered ok and "
                         "lost, or made twice, points at scripts writing keys they do not "
                         "declare in KEYS: commit_lua, xcommit_lua.h apply_lua)")
        self.assertEqual(bad, [], "answers other than ok during the moves; logs:\n%s\n%s"
                         % (self.tail(n=1500), self.tail("kg2", 1500)))
        self.assertEqual(self.authorize(answers[-1]["token.generate"][0]["result"]["token"])
                         ["status"], "ok")
        self.assert_no_leftovers("reshard")
        self.fsck_clean("live reshard")

    # -- 5 ------------------------------------------------------------------

    def test_5_refused_sign_up(self):
        """A sign-up whose intent Redis refuses: the `{xtx}` slot left
        half-moved (MIGRATING on its master, IMPORTING on another,
        `{xtx}:open` already moved), so the intent, a new key beside
        `{xtx}:open`, is answered ASK / TRYAGAIN until the move ends. The
        command fails, nothing is written, and keygated lives on."""
        st, cl = self.st, self.cluster
        sock = self.env.start_extra_daemon("refused")
        p, _ = self.env.extra.pop()           # checked here, not at the end
        self.doomed.append(p)
        xslot = kgcluster.slot_of("{xtx}")
        src = cl.owner(xslot)
        dst = [m for m in cl.masters() if m != src][0]
        kgcluster.rcmd(dst, "CLUSTER", "SETSLOT", str(xslot), "IMPORTING", cl.node_id(src))
        kgcluster.rcmd(src, "CLUSTER", "SETSLOT", str(xslot), "MIGRATING", cl.node_id(dst))
        emails = [kgtest.unique_email("refused") for _ in range(5)]
        try:
            open_key = PFX + "{xtx}:open"
            if open_key.encode() in kgcluster.rcmd(src, "CLUSTER", "GETKEYSINSLOT", str(xslot),
                                                   "100000"):
                kgcluster.rcmd(src, "MIGRATE", "127.0.0.1", str(dst), open_key, "0", "10000")
            t = time.monotonic()
            with kgtest.Client(sock, timeout=30) as d:
                for e in emails:      # at once: the use after free below is found more often
                    d.send(d.request("user.signup", email=e, name="Refused"))
                lines = [d.read_line() for _ in emails]
            el = time.monotonic() - t
        finally:
            # Finish the move: every other key of the slot (intents, and the
            # user-level keys that happen to hash there) goes too, or the
            # source would keep them where nobody reads them any more.
            while True:
                keys = kgcluster.rcmd(src, "CLUSTER", "GETKEYSINSLOT", str(xslot), "1000")
                if not keys:
                    break
                kgcluster.rcmd(src, "MIGRATE", "127.0.0.1", str(dst), "", "0", "10000",
                               "REPLACE", "KEYS", *keys, timeout=30)
            for port in [dst, src] + [m for m in cl.masters() if m not in (dst, src)]:
                kgcluster.rcmd(port, "CLUSTER", "SETSLOT", str(xslot), "NODE", cl.node_id(dst))
            st.refresh()
        time.sleep(0.3)
        alive = p.poll() is None
        plog = self.tail("refused", 1 << 20)
        log("refused sign-ups: answered %s after %.2f s; keygated %s", lines[0], el,
            "alive" if alive else "exited %s" % p.returncode)
        self.assertTrue(None not in lines and alive and not self.env.sanitizer_report(plog),
                        "BUG: keygated died on a user.signup whose commit Redis refused (job.c "
                        "on_writes frees j->result, which j->actor_id points into since "
                        "signup_commit; job_finish's append_audit then reads it: "
                        "use after free, 'out of memory (json_dumps)', abort):\n%s"
                        % plog[-3000:])
        for line, e in zip(lines, emails):
            r = json.loads(line)
            self.assertEqual(r["ok"], False, r)
            self.assertIsNone(st.get(PFX + "email:%s" % e), "the claim was not released")
        e = emails[0]
        # Once the move is over, it works.
        with kgtest.Client(sock, timeout=30) as d:
            uid = kgtest.signup(d, email=e)["user_id"]
        self.assertEqual(s(st.get(PFX + "email:%s" % e)), uid)
        p.terminate()
        self.assertEqual(p.wait(10), 0)
        self.assert_no_leftovers("refused sign-up")
        self.fsck_clean("refused sign-up")


if __name__ == "__main__":
    unittest.main()
