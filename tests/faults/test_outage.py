"""Redis away, with several admin clients streaming mutations:

- at daemon start (no Redis at all): every command that needs the store
  answers `unavailable`; once Redis starts the daemon recovers by itself,
  and none of the refused commands is applied late;
- killed (SIGKILL, AOF fsync always) mid-run, restarted 1.5 s later;
- frozen (SIGSTOP) mid-run for longer than the daemon's stall watchdog,
  then resumed.

Each time: every answer is `ok` or `unavailable`; every command sent while
Redis was known to be down and answered `unavailable` did not happen; every
command answered `ok` is present; the daemon serves again within seconds
of Redis' return; fsck is clean. Commands in flight at the moment Redis
went away may have been applied although answered `unavailable` (their
transaction reached Redis, the answer did not come back): they are
counted and reported, not failed."""
import os
import signal
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safety  # noqa: E402
from safety import kgtest  # noqa: E402

CLIENTS = 4


def fake_requests(n):
    """Mutations with plausible ids of nothing, and sign-ups."""
    t = "t_AAAAAAAAAAAA"
    k, w = "k_AAAAAAAAAAAABBBBBBBB", "w_AAAAAAAAAAAACCCCCCCC"
    u = "u_DDDDDDDDDDDDDDDD"
    out = []
    for i in range(n):
        out += [("user.signup", None, {"email": kgtest.unique_email("dark"), "name": "n"}),
                ("key.create", u, {"team": t, "name": "x%d" % i}),
                ("wallet.credit", u, {"wallet": w, "amount_micros": 5, "reference": "r%d" % i}),
                ("token.generate", u, {"key": k}),
                ("team.member.add", u, {"team": t, "user": u, "role": "user"})]
    return out


class StartWithoutRedis(unittest.TestCase):

    def test_refused_commands_are_never_applied_later(self):
        env = kgtest.Env(redis=False, start_daemon=False)
        try:
            env.start_daemon()
            codes = {}

            def client():
                c = kgtest.Client(env.socket_path)
                try:
                    for cmd, actor, args in fake_requests(40):
                        r = c.call(cmd, actor, **args)
                        code = "ok" if r["ok"] else r["error"]["code"]
                        codes[code] = codes.get(code, 0) + 1
                finally:
                    c.close()
            ts = [threading.Thread(target=client) for _ in range(CLIENTS)]
            for t in ts:
                t.start()
            for t in ts:
                t.join(30)
            self.assertEqual(set(codes), {"unavailable"}, codes)
            c = env.client()
            self.assertEqual(c.ok("ping"), {})
            env.start_redis()
            t_up = time.monotonic()
            deadline = t_up + 15
            while True:
                r = c.call("user.signup", email=kgtest.unique_email("first"), name="n")
                if r["ok"]:
                    break
                self.assertEqual(r["error"]["code"], "unavailable")
                self.assertLess(time.monotonic(), deadline, "no recovery once Redis started")
                time.sleep(0.05)
            recovered = time.monotonic() - t_up
            time.sleep(1.0)            # anything queued would have landed by now
            keys = sorted(k.decode() for k in env.redis_keys())
            emails = [k for k in keys if k.startswith("kg:email:")]
            self.assertEqual(len(emails), 1, "refused sign-ups applied later: %s" % emails)
            self.assertEqual([k for k in keys if k.startswith("kg:user:")].__len__(), 1, keys)
            safety.assert_clean(self, env, "after a start without Redis")
            print("start without Redis: %s answers from %d clients; recovered %.2fs after Redis "
                  "started; Redis then holds %d keys (catalog + one sign-up)"
                  % (codes, CLIENTS, recovered, len(keys)), file=sys.stderr)
        finally:
            env.close()
        kgtest.check_clean_exit(env)


class RedisAwayMidRun(kgtest.EnvCase):
    env_args = {"redis_args": ["--appendonly", "yes", "--appendfsync", "always"]}

    def run_outage(self, name, take_down, bring_back, down_for):
        env, c = self.env, self.c
        worlds = []
        for i in range(CLIENTS):
            o = kgtest.signup(c)
            w = c.ok("wallet.create", o["user_id"], team=o["team_id"], name="w")["wallet_id"]
            worlds.append((o["user_id"], o["team_id"], w))
        stop = threading.Event()
        streams = [safety.Stream(env, 10 + i, *worlds[i], stop) for i in range(CLIENTS)]
        for s in streams:
            s.start()
        time.sleep(0.5)
        t_going = time.monotonic()
        take_down()
        t_down = time.monotonic()
        time.sleep(down_for)
        t_back = time.monotonic()
        bring_back()
        time.sleep(2.0)
        stop.set()
        for s in streams:
            s.join(30)
            self.assertFalse(s.is_alive(), "a client hung")

        codes = {}
        for s in streams:
            for e in s.failed:
                codes[e["code"]] = codes.get(e["code"], 0) + 1
        self.assertEqual(set(codes) - {"unavailable"}, set(), codes)
        self.assertGreater(codes.get("unavailable", 0), 0, "the outage was not seen")
        served_again = [s.last_ok - t_back for s in streams if s.last_ok > t_back]
        self.assertEqual(len(served_again), CLIENTS, "a client was not served after the outage")
        applied_dark, applied_edge, refused = 0, 0, 0
        for s in streams:
            safety.check_present(self, env, s)
            applied = safety.Applied(env, s)
            for e in s.failed:
                refused += 1
                if e["sent"] < t_going:
                    sent_when = "before"
                elif t_down < e["sent"] < t_back:
                    sent_when = "dark"
                else:
                    sent_when = "edge"
                if applied(e["cmd"], e["args"]):
                    if sent_when == "dark":
                        applied_dark += 1
                    else:
                        applied_edge += 1
        self.assertEqual(applied_dark, 0,
                         "commands sent while Redis was down, answered unavailable, yet applied")
        for s in streams:
            s2 = kgtest.Client(env.socket_path)
            try:
                r = s2.call("key.list", s.a, team=s.team)
                self.assertTrue(r["ok"], r)
            finally:
                s2.close()
        counts = safety.assert_clean(self, env, "after Redis was " + name)
        sent = sum(s.sent for s in streams)
        ok = sum(len(s.done) for s in streams)
        print("Redis %s for %.1fs under %d streaming clients: %d commands sent, %d answered ok "
              "(all present), %d unavailable (%d of them applied although refused: in flight "
              "when Redis went away; none of those sent while it was down); fsck clean: %s"
              % (name, t_back - t_down, CLIENTS, sent, ok, refused, applied_edge, counts),
              file=sys.stderr)
        return applied_edge

    def test_killed_mid_run(self):
        env = self.env
        self.run_outage("SIGKILLed", lambda: env.stop_redis(sig=signal.SIGKILL),
                        env.start_redis, 1.5)

    def test_frozen_mid_run(self):
        env = self.env
        p = {}

        def freeze():
            p["proc"] = env.redis_proc
            p["proc"].send_signal(signal.SIGSTOP)

        def thaw():
            p["proc"].send_signal(signal.SIGCONT)
        self.run_outage("frozen (SIGSTOP)", freeze, thaw, 4.0)


if __name__ == "__main__":
    unittest.main()
