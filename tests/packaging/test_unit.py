"""The shipped systemd unit, debian/keygated.service.

- `systemd-analyze verify` accepts it with no remark at all (it exits 0 even
  for an unknown key, so any output fails the test; a planted typo shows
  the check sees such remarks). ExecStart is pointed at the built keygated
  (verify wants an executable there) and MANPATH at docs/man, so the
  Documentation= pages are checked too.
- The service is what the brief and docs promise: Type=notify (the daemon's
  READY=1 is tested in test_sdnotify.py), User=keygate, the sandbox, a
  RuntimeDirectory that holds the packaged config's socket, ExecReload by
  SIGHUP, and ExecStart reading the packaged config file.
Exit 77 (CTest skip) without systemd-analyze.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
UNIT = os.path.join(REPO, "debian", "keygated.service")
SPOA_UNIT = os.path.join(REPO, "debian", "keygated.keygate-spoa.service")
KEYGATE_SPOA = os.environ.get("KEYGATE_SPOA") or os.path.join(REPO, "build", "module", "haproxy",
                                                               "keygate-spoa")
CONF = os.path.join(REPO, "debian", "config", "keygate.conf")
INSTALL = os.path.join(REPO, "debian", "keygated.install")
KEYGATED = os.environ.get("KEYGATED") or os.path.join(REPO, "build", "daemon", "keygated")
ANALYZE = shutil.which("systemd-analyze")


def parse_unit(path):
    """{section: {key: [values]}} (keys may repeat)."""
    out, sec = {}, None
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line[0] in "#;":
                continue
            if line.startswith("["):
                sec = out.setdefault(line.strip("[]"), {})
                continue
            k, v = line.split("=", 1)
            sec.setdefault(k.strip(), []).append(v.strip())
    return out


def parse_conf(path):
    conf = {}
    with open(path) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line:
                k, v = line.split(None, 1)
                conf[k] = v.strip()
    return conf


class Unit(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="kgunit")
        cls.unit = parse_unit(UNIT)
        for sec, page in (("man8", "keygated.8"), ("man5", "keygate.conf.5"),
                          ("man8", "keygate-spoa.8")):
            os.makedirs(os.path.join(cls.tmp, "man", sec), exist_ok=True)
            shutil.copy(os.path.join(REPO, "docs", "man", page), os.path.join(cls.tmp, "man", sec))

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def verify(self, text, name="keygated.service"):
        """systemd-analyze verify's output (stdout + stderr) and exit code for
        the unit text, with ExecStart pointed at the built daemon."""
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write(text)
        env = dict(os.environ, MANPATH=os.path.join(self.tmp, "man"), SYSTEMD_LOG_COLOR="0")
        p = subprocess.run([ANALYZE, "verify", path], capture_output=True, text=True, env=env,
                           timeout=60)
        return (p.stdout + p.stderr).strip(), p.returncode

    def shipped_text(self, unit=UNIT, old="ExecStart=/usr/sbin/keygated ", binary=KEYGATED):
        with open(unit) as f:
            text = f.read()
        self.assertEqual(text.count(old), 1)
        return text.replace(old, "ExecStart=%s " % os.path.abspath(binary))

    def test_verify_clean(self):
        self.assertTrue(os.access(KEYGATED, os.X_OK), KEYGATED)
        out, rc = self.verify(self.shipped_text())
        self.assertEqual((out, rc), ("", 0))

    def test_verify_spoa_unit_clean(self):
        if not os.access(KEYGATE_SPOA, os.X_OK):
            self.skipTest("keygate-spoa not built")
        out, rc = self.verify(self.shipped_text(SPOA_UNIT, "ExecStart=/usr/sbin/keygate-spoa ",
                                                KEYGATE_SPOA), "keygate-spoa.service")
        self.assertEqual((out, rc), ("", 0))
        spoa = parse_unit(SPOA_UNIT)["Service"]
        self.assertEqual(spoa["SupplementaryGroups"], ["keygate-pepper"])
        self.assertEqual(spoa["NoNewPrivileges"], ["yes"])
        self.assertEqual(spoa["ProtectSystem"], ["strict"])

    def test_verify_sees_a_typo(self):
        text = self.shipped_text().replace("ProtectSystem=strict", "ProtectSytem=strict")
        out, _ = self.verify(text, "typo.service")
        self.assertIn("ProtectSytem", out)

    def test_service_settings(self):
        s = self.unit["Service"]
        one = lambda k: (s.get(k) or [None])[-1]  # noqa: E731
        self.assertEqual(one("Type"), "notify")
        self.assertEqual(one("User"), "keygate")
        self.assertEqual(one("ProtectSystem"), "strict")
        self.assertEqual(one("NoNewPrivileges"), "yes")
        self.assertEqual(one("PrivateTmp"), "yes")
        self.assertEqual(one("ExecReload"), "/bin/kill -HUP $MAINPID")
        self.assertEqual(one("ExecStart"), "/usr/sbin/keygated --config /etc/keygate/keygate.conf")
        self.assertIn("multi-user.target", self.unit["Install"]["WantedBy"])

    def test_socket_in_runtime_directory(self):
        """The packaged config's admin socket lives in the unit's
        RuntimeDirectory (the only place ProtectSystem=strict lets it write)."""
        conf = parse_conf(CONF)
        rundir = (self.unit["Service"].get("RuntimeDirectory") or [""])[-1]
        self.assertTrue(rundir)
        self.assertEqual(os.path.dirname(conf["socket"]), "/run/" + rundir)
        # and the config ExecStart reads is the one the package installs
        with open(INSTALL) as f:
            self.assertIn("debian/config/keygate.conf etc/keygate", f.read())

    def test_packaged_config_parses(self):
        """keygated accepts every key of the packaged config: with the
        pepper missing it must stop at the pepper, not at a config line."""
        conf = os.path.join(self.tmp, "keygate.conf")
        with open(CONF) as f:
            text = f.read().replace("/etc/keygate/pepper", os.path.join(self.tmp, "no-pepper"))
        with open(conf, "w") as f:
            f.write(text)
        p = subprocess.run([KEYGATED, "--config", conf], capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 1)
        self.assertIn("no-pepper", p.stderr)


if __name__ == "__main__":
    if ANALYZE is None:
        print("SKIP: systemd-analyze is missing")
        sys.exit(77)
    unittest.main()
