"""The valgrind run is real: with KEYGATED_WRAPPER set (by CTest, see
tests/faults/CMakeLists.txt) keygated runs under memcheck (its log names
Memcheck and the pid of the daemon), answers, and exits 0 on SIGTERM with
no error; and kgtest's check notices a memcheck error in the log."""
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safety  # noqa: E402
from safety import kgtest  # noqa: E402


class ValgrindHarness(unittest.TestCase):

    def test_wrapper_runs_keygated_under_memcheck(self):
        if "valgrind" not in os.environ.get("KEYGATED_WRAPPER", ""):
            self.skipTest("KEYGATED_WRAPPER does not name valgrind")
        env = kgtest.Env()
        try:
            c = env.client()
            o = kgtest.signup(c)
            c.ok("key.get", o["user_id"], key=o["free_key_id"])
            safety.assert_clean(self, env)
        finally:
            env.close()
        self.assertIn("Memcheck", env.final_log)
        self.assertIn("ERROR SUMMARY: 0 errors", env.final_log)
        self.assertEqual(env.last_exit, 0)
        kgtest.check_clean_exit(env)
        # a finding in the log is caught
        bad = kgtest.Env(start_daemon=False, redis=False)
        bad.close()
        bad.final_log = "==1== Invalid read of size 8\n"
        bad.last_exit = 99
        with self.assertRaises(AssertionError):
            kgtest.check_clean_exit(bad)


if __name__ == "__main__":
    unittest.main()
