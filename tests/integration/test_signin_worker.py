"""Password hashing (sign-up) and checking (session.login) run on the
daemon's worker thread: while several Argon2id checks are under way, other
clients' commands are answered without waiting for them."""
import os
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import kgtest  # noqa: E402


class SigninDoesNotStallTheLoop(kgtest.EnvCase):

    def test_logins_and_pings_interleave(self):
        n = 8                              # 4 users, one good and one bad try each,
        for u in range(n // 2):            # well under the rate limit
            self.c.ok("user.signup", email="pw%d@example.com" % u, name="Pw",
                      password="correct horse")
        results = []

        def login(i):
            c = self.env.client()
            pw = "correct horse" if i % 2 == 0 else "wrong horse!"
            results.append(c.call("session.login", email="pw%d@example.com" % (i // 2), password=pw))

        threads = [threading.Thread(target=login, args=(i,)) for i in range(n)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        time.sleep(0.05)                   # the checks are queued on the worker now
        ping = self.env.client()
        worst = 0.0
        pings = 0
        while any(t.is_alive() for t in threads):
            s = time.monotonic()
            ping.ok("ping")
            worst = max(worst, time.monotonic() - s)
            pings += 1
        for t in threads:
            t.join()
        total = time.monotonic() - t0
        # The checks ran one after another on the worker (8 x ~65 ms); the
        # loop answered pings all along, each far faster than one check.
        self.assertEqual(len(results), n)
        oks = [r for r in results if r["ok"]]
        fails = [r for r in results if not r["ok"]]
        self.assertEqual(len(oks), n // 2, results)
        self.assertTrue(all(r["error"]["code"] == "unauthenticated" for r in fails), fails)
        self.assertGreater(pings, 5, "pings answered while %d checks ran for %.2fs" % (n, total))
        self.assertLess(worst, 0.5 * total, "a ping waited %.3fs of %.3fs" % (worst, total))


    def test_password_signups_hold_up_no_mutation(self):
        o = kgtest.signup(self.c)
        a, team = o["user_id"], o["team_id"]
        n = 6
        results = []

        def signup(i):
            c = self.env.client()
            results.append(c.call("user.signup", email="slow%d@example.com" % i, name="S",
                                  password="correct horse %d" % i))

        threads = [threading.Thread(target=signup, args=(i,)) for i in range(n)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        time.sleep(0.05)
        other = self.env.client()
        worst, made = 0.0, 0
        while any(t.is_alive() for t in threads):
            s = time.monotonic()
            other.ok("key.create", a, team=team, name="k%d" % made)
            worst = max(worst, time.monotonic() - s)
            made += 1
        for t in threads:
            t.join()
        total = time.monotonic() - t0
        self.assertTrue(all(r["ok"] for r in results), results)
        for i in range(n):   # each password works
            self.assertTrue(self.c.call("session.login", email="slow%d@example.com" % i,
                                        password="correct horse %d" % i)["ok"])
        self.assertGreater(made, 5, "mutations made while %d sign-ups hashed for %.2fs" % (n, total))
        self.assertLess(worst, 0.5 * total, "a key.create waited %.3fs of %.3fs" % (worst, total))


if __name__ == "__main__":
    unittest.main()
