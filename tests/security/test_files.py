"""The trust boundary on disk: the admin socket file gets exactly the
configured socket_mode (and another user cannot connect through a 0600
socket but can through 0666); a pepper file that others may read is
refused by keygated, by libkeygate's kg_open and by keygate fsck, and so
is one that is not a regular file (a symbolic link, a directory) or not 64
hex characters; a group-readable pepper (0640) is accepted."""
import os
import socket
import stat
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "faults"))
import safety  # noqa: E402
from safety import kgtest  # noqa: E402

NOBODY = 65534


def connect_as(uid, path):
    """Exit code of a forked child that drops to uid and connects to path:
    0 connected, 13 EACCES, 1 other error."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            code = 0
        except PermissionError:
            code = 13
        except BaseException:
            code = 1
        os._exit(code)
    _, st = os.waitpid(pid, 0)
    return os.WEXITSTATUS(st)


class SocketMode(unittest.TestCase):

    def test_socket_file_has_the_configured_mode(self):
        for mode in (0o600, 0o660, 0o640, 0o666):
            with self.subTest(mode=oct(mode)):
                env = kgtest.Env(start_daemon=False)
                try:
                    lines = [l for l in env.config_lines() if not l.startswith("socket_mode")]
                    env.write_config(replace=lines + ["socket_mode %04o" % mode])
                    env.start_daemon()
                    st = os.stat(env.socket_path)
                    self.assertTrue(stat.S_ISSOCK(st.st_mode))
                    self.assertEqual(stat.S_IMODE(st.st_mode), mode)
                    if os.geteuid() == 0 and mode in (0o600, 0o666):
                        os.chmod(env.tmp, 0o711)   # let the other user reach the socket
                        want = 0 if mode == 0o666 else 13
                        self.assertEqual(connect_as(NOBODY, env.socket_path), want)
                finally:
                    env.close()
                kgtest.check_clean_exit(env)

    def test_default_mode_0660(self):
        env = kgtest.Env(start_daemon=False)
        try:
            env.write_config(replace=[l for l in env.config_lines()
                                      if not l.startswith("socket_mode")])
            env.start_daemon()
            self.assertEqual(stat.S_IMODE(os.stat(env.socket_path).st_mode), 0o660)
        finally:
            env.close()


class PepperFile(unittest.TestCase):

    def refused_everywhere(self, env, why):
        rc, log = env.run_daemon_to_exit(timeout=10)
        self.assertNotEqual(rc, 0, "keygated started with a %s pepper file" % why)
        self.assertIn("pepper", log)
        self.assertFalse(os.path.exists(env.socket_path), "keygated bound its socket anyway")
        tok = safety.write_secret(os.path.join(env.tmp, "tok"), "kg_x")
        h = safety.Hammer(safety.gateway_config(env), tok, 1)
        rc, rows, summary = h.wait(20)
        self.assertEqual(rc, 2, summary)
        self.assertIn("kg_open", summary)
        self.assertIn("pepper", summary)
        rc, out, so, se = safety.fsck(env)
        self.assertEqual(rc, 2, so + se)
        self.assertNotIn(env.pepper_hex, log + summary + so + se)
        return log, summary

    def test_world_readable_pepper_refused(self):
        for mode in (0o644, 0o604, 0o666, 0o404):
            with self.subTest(mode=oct(mode)):
                env = kgtest.Env(start_daemon=False)
                try:
                    os.chmod(env.pepper_path, mode)
                    log, summary = self.refused_everywhere(env, oct(mode))
                    self.assertIn("world-readable", log)
                    self.assertIn("world-readable", summary)
                finally:
                    env.close()

    def test_group_readable_pepper_accepted(self):
        env = kgtest.Env(start_daemon=False)
        try:
            os.chmod(env.pepper_path, 0o640)
            env.start_daemon()
            self.assertEqual(env.client().ok("ping"), {})
            self.assertEqual(safety.fsck(env)[0], 0)
        finally:
            env.close()
        kgtest.check_clean_exit(env)

    def test_pepper_not_a_regular_file_or_malformed(self):
        cases = {
            "symlink": lambda env: (os.rename(env.pepper_path, env.pepper_path + ".real"),
                                    os.symlink(env.pepper_path + ".real", env.pepper_path)),
            "directory": lambda env: (os.unlink(env.pepper_path), os.mkdir(env.pepper_path, 0o700)),
            "short": lambda env: open(env.pepper_path, "w").write("abcd\n"),
            "not hex": lambda env: open(env.pepper_path, "w").write("z" * 64 + "\n"),
            "missing": lambda env: os.unlink(env.pepper_path),
        }
        for name, spoil in cases.items():
            with self.subTest(case=name):
                env = kgtest.Env(start_daemon=False)
                try:
                    spoil(env)
                    self.refused_everywhere(env, name)
                finally:
                    env.close()


if __name__ == "__main__":
    unittest.main()
