"""keygated's systemd readiness protocol (daemon/sdnotify.c), without systemd.

The test plays systemd's part: it owns a datagram socket, hands its path to
keygated in NOTIFY_SOCKET, and reads what arrives, with the sender's
credentials (SO_PASSCRED), as systemd does for NotifyAccess=main:

- READY=1 comes once the admin socket is listening (the test connects at
  once, without retrying, and gets an answer);
- SIGHUP: RELOADING=1 (with MONOTONIC_USEC) then READY=1, for a reload that
  takes and for one that is refused;
- SIGTERM: STOPPING=1, then a clean exit;
- an abstract socket name ("@...") works too; a NOTIFY_SOCKET nobody
  listens on is logged and the daemon serves anyway.
"""

import os
import signal
import socket
import struct
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import kgtest  # noqa: E402


class Notify:
    """The systemd side: a datagram socket bound at path (or '@name')."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind("\0" + path[1:] if path.startswith("@") else path)

    def recv(self, timeout=10.0):
        """(message text, sender pid); raises TimeoutError."""
        self.sock.settimeout(timeout)
        try:
            data, anc, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        except socket.timeout:
            raise TimeoutError("no notification within %ss" % timeout)
        pid = None
        for level, kind, cdata in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid, _uid, _gid = struct.unpack("iII", cdata[:12])
        return data.decode(), pid

    def nothing_for(self, seconds):
        try:
            msg = self.recv(seconds)
        except TimeoutError:
            return None
        return msg

    def close(self):
        self.sock.close()


def fields(msg):
    return dict(line.split("=", 1) for line in msg.split("\n") if line)


class SdNotify(unittest.TestCase):
    def setUp(self):
        self.env = kgtest.Env(start_daemon=False)
        self.proc = None

    def tearDown(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.env.close()
        self.assertEqual(self.env.sanitizer_report(self.env.final_log), [])

    def spawn(self, notify_socket):
        env = dict(os.environ, NOTIFY_SOCKET=notify_socket)
        log = open(self.env.log_path, "ab")
        self.proc = subprocess.Popen([kgtest.keygated_path(), "--config", self.env.config_path],
                                     stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env)
        log.close()
        return self.proc

    def expect(self, notify, want, timeout=10.0):
        msg, pid = notify.recv(timeout)
        self.assertEqual(pid, self.proc.pid, "sent by keygated itself (NotifyAccess=main)")
        f = fields(msg)
        for k, v in want.items():
            self.assertEqual(f.get(k), v, "message %r" % msg)
        return f

    def ping_now(self):
        """One connection attempt, no retry: the socket must be listening."""
        c = kgtest.Client(self.env.socket_path, timeout=5)
        try:
            self.assertTrue(c.call("ping").get("ok"))
        finally:
            c.close()

    def run_story(self, notify_path):
        n = Notify(notify_path)
        try:
            self.spawn(notify_path)
            self.expect(n, {"READY": "1"})
            # Ready once the lease is known: here, with no other daemon, it is this one's.
            self.assertIn((" pid %d" % self.proc.pid).encode(), self.env.redis("GET", "kg:writer"))
            self.ping_now()
            self.assertIsNone(n.nothing_for(0.3), "one READY=1 at start, nothing else")

            # A reload that takes: RELOADING=1 with a monotonic timestamp, then READY=1.
            before = time.monotonic_ns() // 1000
            self.proc.send_signal(signal.SIGHUP)
            f = self.expect(n, {"RELOADING": "1"})
            after = time.monotonic_ns() // 1000
            self.assertIn("MONOTONIC_USEC", f)
            self.assertTrue(before <= int(f["MONOTONIC_USEC"]) <= after,
                            (before, f["MONOTONIC_USEC"], after))
            self.expect(n, {"READY": "1"})
            self.env.wait_log("catalog reloaded")
            self.ping_now()

            # A refused reload (broken catalog): the old one serves, READY=1 again.
            self.env.write_catalog("{ not json")
            self.proc.send_signal(signal.SIGHUP)
            self.expect(n, {"RELOADING": "1"})
            self.expect(n, {"READY": "1"})
            self.env.wait_log("catalog reload refused")
            self.ping_now()

            self.proc.send_signal(signal.SIGTERM)
            self.expect(n, {"STOPPING": "1"})
            self.assertEqual(self.proc.wait(10), 0)
            self.assertIsNone(n.nothing_for(0.2), "nothing after STOPPING=1")
        finally:
            n.close()

    def test_path_socket(self):
        self.run_story(os.path.join(self.env.tmp, "notify.sock"))

    def test_abstract_socket(self):
        self.run_story("@keygate-test-notify-%d-%d" % (os.getpid(), time.monotonic_ns()))

    def test_nobody_listening(self):
        self.spawn(os.path.join(self.env.tmp, "nobody.sock"))

        def up():
            try:
                self.ping_now()
                return True
            except OSError:
                return False
        kgtest._wait_for(up, 10, "keygated to answer")
        self.env.wait_log("not sent")
        self.proc.send_signal(signal.SIGTERM)
        self.assertEqual(self.proc.wait(10), 0)

    def test_no_notify_socket(self):
        os.environ.pop("NOTIFY_SOCKET", None)   # kgtest starts keygated with our environment
        self.env.start_daemon()
        self.ping_now()
        self.assertNotIn("NOTIFY_SOCKET", self.env.daemon_log())


if __name__ == "__main__":
    unittest.main()
