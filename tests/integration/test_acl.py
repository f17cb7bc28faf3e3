"""Redis ACL credentials (issue 11; docs/operations.md "Redis ACL
credentials"): `redis_user` and `redis_password_file` in the shared config,
and the AUTH that every blocking Redis connection sends first
(module/core/kgc_auth.c).

A real redis-server with an ACL user `kg` (an aclfile, so the password is
never on a command line). The data is made by keygated while the `default`
user is still open (keygated's own connections are async, in daemon/store.c,
and only gain AUTH with that file's rewrite); then `default` is switched off
and every new connection must AUTH as `kg`. Checked:

- `keygate fsck` (blocking hiredis, cli_fsck_redis.c) is clean with the right
  password, and exits 3 with "AUTH refused: WRONGPASS" with a wrong one;
- `keygate authorize` (libkeygate, kg_link.c's async links driven by the
  blocking kg_authorize) debits with the right password, answers
  backend_error with a wrong one and charges nothing;
- the same through a one-node Redis Cluster (kgc_cluster_load and the node
  links) and through a sentinel (the primary's ROLE check; the sentinel
  itself is asked without AUTH);
- a world-readable password file is refused at config load, naming the
  file, by the CLI, libkeygate and keygated alike; `redis_user` without a
  password file is refused;
- the password (right or wrong) is in no output and no log of ours.

keygated: its part skips, saying so, while keygated makes no connection
authenticated as `kg` (daemon/store.c does not send AUTH yet); once it does,
the same test requires it to work with the right password and to log the
server's WRONGPASS with a wrong one.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import kgtest  # noqa: E402

# This file makes its own topologies with ACL users (one node, a one-node
# cluster, a sentinel): kgtest's KEYGATE_TOPOLOGY switch does not apply.
os.environ["KEYGATE_TOPOLOGY"] = "single"

CLI = os.environ.get("KEYGATE_CLI") or os.path.join(kgtest.REPO, "build", "daemon", "cli", "keygate")
USER = "kg"
# Unique and long: any occurrence in an output or a log is a leak.
PASSWORD = "pw-right-" + os.urandom(12).hex()
WRONG = "pw-wrong-" + os.urandom(12).hex()


class Tcp(kgtest.Redis):
    """kgtest's RESP client over loopback TCP."""

    def __init__(self, port, timeout=5.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""


def authed(r):
    r.command("AUTH", USER, PASSWORD)
    return r


@unittest.skipUnless(os.access(CLI, os.X_OK), "needs the keygate CLI (KEYGATE_CLI)")
class Acl(unittest.TestCase):

    outputs = []                        # every stdout/stderr we saw, for test_zz_no_leak

    @classmethod
    def setUpClass(cls):
        env = cls.env = kgtest.Env(redis=False, start_daemon=False)
        try:
            cls.port = kgtest.free_port()
            acl = os.path.join(env.tmp, "users.acl")
            with open(acl, "w") as f:
                f.write("user default on nopass ~* &* +@all\n"
                        "user %s on >%s ~kg:* &kg:* +@all\n" % (USER, PASSWORD))
            # TCP as well as the Unix socket: the cluster and sentinel
            # cases need an address.
            env.redis_args = ["--aclfile", acl, "--port", str(cls.port)]
            env.start_redis()
            env.start_daemon()
            cls.make_data()
            env.kill_daemon()
            # From now on every new connection must AUTH as kg.
            env.redis("ACL", "SETUSER", "default", "off")
            cls.pw_good = cls.secret_file("pw-good", PASSWORD + "\n")
            cls.pw_wrong = cls.secret_file("pw-wrong", WRONG + "\n")
            cls.pw_world = cls.secret_file("pw-world", PASSWORD + "\n", 0o644)
            cls.conf_good = cls.config("good", ["redis_user %s" % USER,
                                                "redis_password_file %s" % cls.pw_good])
            cls.conf_wrong = cls.config("wrong", ["redis_user %s" % USER,
                                                  "redis_password_file %s" % cls.pw_wrong])
            cls.conf_world = cls.config("world", ["redis_user %s" % USER,
                                                  "redis_password_file %s" % cls.pw_world])
            cls.conf_none = cls.config("none", [])
        except BaseException:
            env.close()
            raise

    @classmethod
    def tearDownClass(cls):
        for p in getattr(cls, "procs", []):
            if p.poll() is None:
                p.kill()
                p.wait(5)
        cls.env.close()

    # -- set-up helpers -------------------------------------------------------

    @classmethod
    def make_data(cls):
        """One team, a credited wallet and a payg key with a token in a file,
        made through keygated while `default` is open."""
        c = cls.env.client()
        t = kgtest.make_team(c, admins=0, users=0, outsiders=0)
        o = t["owner"]
        w = c.ok("wallet.create", o, team=t["team"], name="w")["wallet_id"]
        c.ok("wallet.credit", o, wallet=w, amount_micros=10 ** 9, reference="seed")
        k = c.ok("key.create", o, team=t["team"], name="k", users=[o], services={
            "text-generation": {"policy": "payg", "models": ["small"], "wallet": w}})["key_id"]
        cls.token_path = os.path.join(cls.env.tmp, "token")
        with open(cls.token_path, "w") as f:
            f.write(c.ok("token.generate", o, key=k)["token"])
        os.chmod(cls.token_path, 0o600)
        cls.wallet = w
        c.close()

    @classmethod
    def secret_file(cls, name, text, mode=0o600):
        path = os.path.join(cls.env.tmp, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(path, mode)
        return path

    @classmethod
    def config(cls, name, extra, redis_line=None, socket_path=None):
        lines = [ln for ln in cls.env.config_lines()
                 if not ln.startswith("socket ") and not (redis_line and ln.startswith("redis "))]
        lines.append("socket %s" % (socket_path or os.path.join(cls.env.tmp, name + ".sock")))
        if redis_line:
            lines.append(redis_line)
        path = os.path.join(cls.env.tmp, name + ".conf")
        with open(path, "w") as f:
            f.write("\n".join(lines + extra) + "\n")
        return path

    def run_cli(self, *argv, timeout=30):
        p = subprocess.run([CLI] + list(argv), capture_output=True, timeout=timeout)
        out, err = p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")
        type(self).outputs.append(out + err)
        return p.returncode, out, err

    def fsck(self, conf):
        return self.run_cli("--config", conf, "fsck")

    def authorize(self, conf, rid):
        rc, out, err = self.run_cli("--json", "--config", conf, "authorize", "--token-file",
                                    self.token_path, "--service", "text-generation", "--model",
                                    "small", "--param", "input_tokens=1000", "--param",
                                    "output_tokens=10", "--request-id", rid)
        return rc, (json.loads(out) if out.strip() else None), err

    def balance(self):
        r = authed(Tcp(self.port))
        try:
            for k in r.command("KEYS", "kg:{t:*}:wallet:%s" % self.wallet):
                return int(r.command("HGET", k, "balance_micros"))
        finally:
            r.close()
        self.fail("wallet %s not found" % self.wallet)

    # -- the CLI's blocking connections --------------------------------------

    def test_default_user_is_off(self):
        """The premise: without AUTH nothing is served any more."""
        r = Tcp(self.port)
        try:
            with self.assertRaises(kgtest.RedisError) as cm:
                r.command("GET", "x")
            self.assertIn("NOAUTH", str(cm.exception))
        finally:
            r.close()

    def test_fsck_right_password(self):
        rc, out, err = self.fsck(self.conf_good)
        self.assertEqual(rc, 0, out + err)
        self.assertIn("fsck: clean", out)

    def test_fsck_wrong_password(self):
        rc, out, err = self.fsck(self.conf_wrong)
        self.assertEqual(rc, 3, out + err)
        self.assertIn("AUTH refused: WRONGPASS", err)

    def test_fsck_no_credentials(self):
        rc, out, err = self.fsck(self.conf_none)
        self.assertEqual(rc, 3, out + err)
        self.assertIn("NOAUTH", err)
        self.assertNotIn("fsck: clean", out)

    # -- libkeygate -----------------------------------------------------------

    def test_authorize(self):
        before = self.balance()
        rc, r, err = self.authorize(self.conf_good, "acl-1")
        self.assertEqual(rc, 0, (r, err))
        self.assertEqual(r["status"], "ok")
        self.assertGreater(r["cost_micros"], 0)
        self.assertEqual(self.balance(), before - r["cost_micros"])
        cost = r["cost_micros"]

        rc, r, err = self.authorize(self.conf_wrong, "acl-2")
        self.assertEqual(rc, 3, (r, err))
        self.assertEqual(r["status"], "backend_error")
        self.assertEqual(r["cost_micros"], 0)
        self.assertEqual(self.balance(), before - cost, "a refused AUTH charged nothing")

        rc, r, err = self.authorize(self.conf_none, "acl-3")
        self.assertEqual(rc, 3, (r, err))
        self.assertEqual(r["status"], "backend_error")
        self.assertEqual(self.balance(), before - cost)

    # -- config load ------------------------------------------------------------

    def test_world_readable_refused(self):
        want = "%s: refused, the Redis password file is world-readable" % self.pw_world
        rc, out, err = self.fsck(self.conf_world)
        self.assertEqual(rc, 2, out + err)
        self.assertIn(want, err)
        rc, r, err = self.authorize(self.conf_world, "acl-world")
        self.assertEqual(rc, 2, (r, err))
        self.assertIn(want, err)
        rc, log = self.env.run_daemon_to_exit(args=["--config", self.conf_world])
        type(self).outputs.append(log)
        self.assertNotEqual(rc, 0, log)
        self.assertIn(want, log)

    def test_user_without_password_file_refused(self):
        conf = self.config("nopwfile", ["redis_user %s" % USER])
        rc, out, err = self.fsck(conf)
        self.assertEqual(rc, 2, out + err)
        self.assertIn("'redis_user' needs 'redis_password_file'", err)

    def test_password_file_without_user_is_default(self):
        """No redis_user: AUTH <password>, the `default` user's password.
        Refused while `default` has none; accepted once it has this one."""
        conf = self.config("nouser", ["redis_password_file %s" % self.pw_good])
        rc, out, err = self.fsck(conf)
        self.assertEqual(rc, 3, out + err)
        self.assertIn("AUTH refused: ERR AUTH <password> called without any password configured "
                      "for the default user", err)
        r = authed(Tcp(self.port))
        try:
            r.command("ACL", "SETUSER", "default", "on", "resetpass", ">" + PASSWORD)
            rc, out, err = self.fsck(conf)
            self.assertEqual(rc, 0, out + err)
            self.assertIn("fsck: clean", out)
            rc, res, err = self.authorize(conf, "acl-default")
            self.assertEqual(rc, 0, (res, err))
            self.assertEqual(res["status"], "ok")
        finally:
            r.command("ACL", "SETUSER", "default", "off", "resetpass", "nopass")
            r.close()

    # -- a one-node Redis Cluster ----------------------------------------------

    def test_cluster(self):
        env = self.env
        port = kgtest.free_port()
        d = os.path.join(env.tmp, "cluster")
        os.mkdir(d)
        acl = os.path.join(env.tmp, "users.acl")
        log = open(os.path.join(d, "redis.log"), "ab")
        # The bus port defaults to port + 10000, which may not exist: its own.
        p = subprocess.Popen([kgtest.redis_server_path(), "--port", str(port), "--bind",
                              "127.0.0.1", "--cluster-port", str(kgtest.free_port()),
                              "--cluster-enabled", "yes", "--cluster-config-file",
                              os.path.join(d, "nodes.conf"), "--save", "", "--appendonly", "no",
                              "--aclfile", acl, "--dir", d],
                             stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        type(self).procs = getattr(type(self), "procs", []) + [p]
        try:
            def up():
                try:
                    r = Tcp(port, 1)
                except OSError:
                    return False
                try:
                    return authed(r).command("PING") == "PONG"
                finally:
                    r.close()
            kgtest.wait_for(up, 10, "the cluster node")
            r = authed(Tcp(port))
            r.command("CLUSTER", "ADDSLOTSRANGE", "0", "16383")
            kgtest.wait_for(lambda: b"cluster_state:ok" in r.command("CLUSTER", "INFO"), 20,
                            "cluster_state:ok")
            # The single node's data, copied key by key (one node: no slot
            # is elsewhere).
            src = authed(Tcp(self.port))
            for k in src.command("KEYS", "*"):
                r.command("RESTORE", k, "0", src.command("DUMP", k), "REPLACE")
            src.close()
            r.close()
            cluster = "redis cluster 127.0.0.1:%d" % port
            good = self.config("cl-good", ["redis_user %s" % USER,
                                           "redis_password_file %s" % self.pw_good], cluster)
            wrong = self.config("cl-wrong", ["redis_user %s" % USER,
                                             "redis_password_file %s" % self.pw_wrong], cluster)
            rc, out, err = self.fsck(good)
            self.assertEqual(rc, 0, out + err)
            self.assertIn("fsck: clean", out)
            rc, out, err = self.fsck(wrong)
            self.assertEqual(rc, 3, out + err)
            self.assertIn("AUTH refused: WRONGPASS", err)
            rc, res, err = self.authorize(good, "acl-cl-1")
            self.assertEqual(rc, 0, (res, err))
            self.assertEqual(res["status"], "ok")
            rc, res, err = self.authorize(wrong, "acl-cl-2")
            self.assertEqual(rc, 3, (res, err))
            self.assertEqual(res["status"], "backend_error")
        finally:
            p.terminate()
            p.wait(10)

    # -- a sentinel ---------------------------------------------------------------

    def test_sentinel(self):
        """The sentinel runs without ACL users (it is sent no AUTH); the
        primary it names is checked with ROLE after AUTH."""
        env = self.env
        sport = kgtest.free_port()
        d = os.path.join(env.tmp, "sentinel")
        os.mkdir(d)
        conf = os.path.join(d, "sentinel.conf")
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("port %d\nbind 127.0.0.1\ndir %s\n"
                    "sentinel monitor kgm 127.0.0.1 %d 1\n"
                    "sentinel auth-user kgm %s\nsentinel auth-pass kgm %s\n"
                    % (sport, d, self.port, USER, PASSWORD))
        log = open(os.path.join(d, "sentinel.log"), "ab")
        p = subprocess.Popen([kgtest.redis_server_path(), conf, "--sentinel"],
                             stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        type(self).procs = getattr(type(self), "procs", []) + [p]
        try:
            def up():
                try:
                    r = Tcp(sport, 1)
                except OSError:
                    return False
                try:
                    a = r.command("SENTINEL", "get-master-addr-by-name", "kgm")
                    return isinstance(a, list) and len(a) == 2
                finally:
                    r.close()
            kgtest.wait_for(up, 10, "the sentinel")
            sent = ["sentinel 127.0.0.1:%d" % sport, "sentinel_master kgm"]
            good = self.config("se-good", sent + ["redis_user %s" % USER,
                                                  "redis_password_file %s" % self.pw_good])
            wrong = self.config("se-wrong", sent + ["redis_user %s" % USER,
                                                    "redis_password_file %s" % self.pw_wrong])
            rc, out, err = self.fsck(good)
            self.assertEqual(rc, 0, out + err)
            self.assertIn("fsck: clean", out)
            rc, out, err = self.fsck(wrong)
            self.assertEqual(rc, 3, out + err)
            self.assertIn("sentinel: master 'kgm': redis: AUTH refused: WRONGPASS", err)
            rc, res, err = self.authorize(good, "acl-se-1")
            self.assertEqual(rc, 0, (res, err))
            self.assertEqual(res["status"], "ok")
            rc, res, err = self.authorize(wrong, "acl-se-2")
            self.assertEqual(rc, 3, (res, err))
            self.assertEqual(res["status"], "backend_error")
        finally:
            p.terminate()
            p.wait(10)

    # -- keygated (its AUTH comes with daemon/store.c's rewrite) ---------------

    def start_keygated(self, name, pwfile):
        sock = os.path.join(self.env.tmp, name + ".sock")
        conf = self.config(name, ["redis_user %s" % USER, "redis_password_file %s" % pwfile],
                           socket_path=sock)
        logpath = os.path.join(self.env.tmp, name + ".log")
        log = open(logpath, "ab")
        p = subprocess.Popen(kgtest.keygated_wrapper() + [kgtest.keygated_path(), "--config", conf],
                             stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        type(self).procs = getattr(type(self), "procs", []) + [p]

        def up():
            if p.poll() is not None:
                raise RuntimeError("keygated %s exited: %s" % (name, open(logpath).read()))
            try:
                c = kgtest.Client(sock, timeout=2)
            except OSError:
                return False
            try:
                return c.call("ping").get("ok") is True
            finally:
                c.close()
        kgtest.wait_for(up, 20, "keygated %s" % name)
        return p, sock, logpath

    def stop(self, p, logpath):
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
        with open(logpath, errors="replace") as f:
            text = f.read()
        type(self).outputs.append(text)
        return text

    def kg_clients(self):
        """Connections authenticated as kg, other than the one asking."""
        r = authed(Tcp(self.port))
        try:
            me = r.command("CLIENT", "ID")
            out = []
            for line in r.command("CLIENT", "LIST").decode().splitlines():
                f = dict(x.split("=", 1) for x in line.split(" ") if "=" in x)
                if f.get("user") == USER and int(f.get("id", "0")) != me:
                    out.append(f)
            return out
        finally:
            r.close()

    def test_keygated(self):
        p, sock, logpath = self.start_keygated("kd-good", self.pw_good)
        deadline = time.monotonic() + 3
        while not self.kg_clients() and time.monotonic() < deadline:
            time.sleep(0.1)
        if not self.kg_clients():
            self.stop(p, logpath)
            self.skipTest("keygated made no connection authenticated as %r: daemon/store.c does "
                          "not send AUTH yet (it is to call kgc_auth_argv, module/core/kgc_auth.h)"
                          % USER)
        try:
            c = kgtest.Client(sock)
            s = kgtest.signup(c)
            self.assertTrue(s["user_id"])
            c.close()
        finally:
            self.stop(p, logpath)
        p, sock, logpath = self.start_keygated("kd-wrong", self.pw_wrong)
        try:
            kgtest.wait_for(lambda: "WRONGPASS" in open(logpath, errors="replace").read(), 10,
                            "keygated to log the refused AUTH")
            c = kgtest.Client(sock)
            r = c.call("user.signup", email=kgtest.unique_email(), name="X")
            self.assertFalse(r.get("ok"), r)
            c.close()
        finally:
            self.stop(p, logpath)

    # -- last: nothing leaked -----------------------------------------------------

    def test_zz_no_password_anywhere(self):
        """Every output of the CLI and every log of keygated this test made."""
        texts = list(self.outputs)
        for name in os.listdir(self.env.tmp):
            if name.endswith(".log") and name != "redis.log":
                with open(os.path.join(self.env.tmp, name), errors="replace") as f:
                    texts.append(f.read())
        self.assertGreater(len(texts), 5)
        for t in texts:
            self.assertNotIn(PASSWORD, t)
            self.assertNotIn(WRONG, t)


if __name__ == "__main__":
    unittest.main()
