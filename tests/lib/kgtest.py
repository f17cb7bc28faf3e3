"""kgtest - shared harness for keygate's Python integration tests.

Python 3 standard library only. Starts a throwaway redis-server on a Unix
socket inside a temporary directory, writes a pepper, a catalog and a config
file (SPEC §7 format), starts keygated against them, and offers:

    Env        the whole environment (context manager, or setUpClass/close)
    Client     one connection to the admin socket (newline-delimited JSON)
    Redis      a tiny RESP client over a Unix socket (arrays, bulk strings,
               integers, simple strings, errors)
    signup()   user.signup with a unique email
    make_team() a team with an owner and some admins/users

Environment variables:
    KEYGATED       path of the keygated binary (default <repo>/build/daemon/keygated)
    REDIS_SERVER   path of redis-server (default: redis-server on PATH)
    KEYGATE_TOPOLOGY  single (default: one redis-server on a Unix socket),
                   cluster (kgcluster: 3 masters + 3 replicas) or sentinel
                   (kgsentinel: a primary, a replica, 3 sentinels); the
                   Env's store and keygated's `redis` line follow it
    KGTEST_KEEP    if set, the temp dir is kept on close (for post-mortems)
    KEYGATED_WRAPPER  a command line keygated is run under, e.g.
                   "valgrind --leak-check=full --error-exitcode=99" (split
                   like a shell would); start and stop timeouts grow to suit

Typical use:

    class T(unittest.TestCase):
        @classmethod
        def setUpClass(cls):
            cls.env = kgtest.Env()
        @classmethod
        def tearDownClass(cls):
            cls.env.close()
        def test_x(self):
            c = self.env.client()
            s = kgtest.signup(c)
            key = c.ok("key.get", s["user_id"], key=s["free_key_id"])
"""

import atexit
import fcntl
import itertools
import json
import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
DEFAULT_CATALOG = os.path.join(REPO, "tests", "data", "catalog.json")
DEFAULT_KEYGATED = os.path.join(REPO, "build", "daemon", "keygated")


def keygated_path():
    return os.environ.get("KEYGATED") or DEFAULT_KEYGATED


def keygated_wrapper():
    """The KEYGATED_WRAPPER command as a list ([] when unset)."""
    return shlex.split(os.environ.get("KEYGATED_WRAPPER", ""))


def redis_server_path():
    p = os.environ.get("REDIS_SERVER")
    if p:
        return p
    return shutil.which("redis-server") or "/usr/bin/redis-server"


def _connect_unix(path, timeout):
    """Connects a Unix stream socket with a timeout. A socket with a timeout
    is non-blocking inside, so a full listen backlog gives EAGAIN at once;
    retry then, as a blocking connect would wait, until timeout."""
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
            return sock
        except BlockingIOError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)
        except OSError:
            sock.close()
            raise


# --------------------------------------------------------------------------
# RESP client
# --------------------------------------------------------------------------

class RedisError(Exception):
    """An error reply (-ERR ...) from Redis."""


class Redis:
    """A minimal blocking RESP2 client over a Unix socket."""

    def __init__(self, path, timeout=10.0):
        self.sock = _connect_unix(path, timeout)
        self.buf = b""

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    @staticmethod
    def _encode(args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            if isinstance(a, bytes):
                b = a
            elif isinstance(a, str):
                b = a.encode()
            else:
                b = str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(b), b))
        return b"".join(out)

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("redis closed the connection")
        self.buf += chunk

    def _line(self):
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line, self.buf = self.buf[:i], self.buf[i + 2:]
                return line
            self._fill()

    def _exact(self, n):
        while len(self.buf) < n + 2:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def _reply(self):
        line = self._line()
        t, rest = line[:1], line[1:]
        if t == b"+":
            return rest.decode()
        if t == b"-":
            return RedisError(rest.decode())
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n)
        if t == b"*":
            n = int(rest)
            return None if n < 0 else [self._reply() for _ in range(n)]
        raise ConnectionError("bad RESP reply %r" % line)

    def command(self, *args):
        """Sends one command; returns its reply (bytes for bulk strings, int,
        str for simple strings, list, None). Raises RedisError on -ERR."""
        self.sock.sendall(self._encode(args))
        r = self._reply()
        if isinstance(r, RedisError):
            raise r
        return r


class Tcp(Redis):
    """The same client over loopback TCP (cluster nodes, sentinels, a
    sentinel's primary: tests/lib/kgcluster.py, kgsentinel.py)."""

    def __init__(self, port, timeout=5.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""


def rcmd(port, *args, timeout=5.0):
    """One command to the Redis (or sentinel) on a loopback port."""
    r = Tcp(port, timeout)
    try:
        return r.command(*args)
    finally:
        r.close()


class Subscriber:
    """A Redis pub/sub subscription on its own connection (a Unix socket
    path, or a loopback TCP port: an int)."""

    def __init__(self, path, channel):
        if isinstance(path, int):
            self.r = Tcp(path)
        else:
            self.r = Redis(path)
        self.r.sock.sendall(Redis._encode(["SUBSCRIBE", channel]))
        reply = self.r._reply()
        if not isinstance(reply, list) or reply[0] != b"subscribe":
            raise ConnectionError("SUBSCRIBE failed: %r" % (reply,))

    def get(self, timeout=2.0):
        """The next message's data as str, or None after timeout."""
        self.r.sock.settimeout(timeout)
        try:
            while True:
                m = self.r._reply()
                if isinstance(m, list) and len(m) == 3 and m[0] == b"message":
                    return m[2].decode("utf-8", "replace")
        except socket.timeout:
            return None

    def drain(self, quiet=0.2):
        """Every message until none arrives for `quiet` seconds."""
        out = []
        while True:
            m = self.get(quiet)
            if m is None:
                return out
            out.append(m)

    def wait_for(self, data, timeout=3.0):
        """Waits for a message equal to data; returns the messages seen
        (the last one being data), or raises AssertionError."""
        seen = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = self.get(max(0.01, deadline - time.monotonic()))
            if m is None:
                break
            seen.append(m)
            if m == data:
                return seen
        raise AssertionError("no %r on the channel within %ss (saw %r)" % (data, timeout, seen))

    def close(self):
        self.r.close()


# --------------------------------------------------------------------------
# Admin client
# --------------------------------------------------------------------------

class Client:
    """One connection to keygated's admin socket."""

    def __init__(self, path, timeout=10.0):
        self.path = path
        self.sock = _connect_unix(path, timeout)
        self.buf = b""

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def settimeout(self, t):
        self.sock.settimeout(t)

    def send_raw(self, data):
        """Sends bytes as they are (no newline added)."""
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def read_line(self):
        """Reads one response line; returns it as str without the newline,
        or None when the daemon closed the connection first."""
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line, self.buf = self.buf[:i], self.buf[i + 1:]
                return line.decode("utf-8")
            chunk = self.sock.recv(65536)
            if not chunk:
                if self.buf:
                    line, self.buf = self.buf, b""
                    return line.decode("utf-8", "replace")
                return None
            self.buf += chunk

    def read_json(self):
        line = self.read_line()
        if line is None:
            raise ConnectionError("keygated closed the connection")
        return json.loads(line)

    def is_closed(self, timeout=2.0):
        """True if the daemon closes the connection within timeout (any
        pending lines are discarded)."""
        old = self.sock.gettimeout()
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
        except socket.timeout:
            return False
        except (ConnectionResetError, BrokenPipeError):
            return True
        finally:
            try:
                self.sock.settimeout(old)
            except OSError:
                pass

    @staticmethod
    def request(cmd, actor=None, **args):
        req = {"cmd": cmd}
        if actor is not None:
            req["actor"] = actor
        req.update(args)
        return req

    def send(self, obj):
        self.send_raw(json.dumps(obj).encode() + b"\n")

    def call(self, cmd, actor=None, **args):
        """Sends {"cmd", "actor", **args} and returns the response dict."""
        self.send(self.request(cmd, actor, **args))
        return self.read_json()

    def call_obj(self, obj):
        self.send(obj)
        return self.read_json()

    def ok(self, cmd, actor=None, **args):
        """Like call(); returns the result, or raises AssertionError."""
        r = self.call(cmd, actor, **args)
        if r.get("ok") is not True or "result" not in r:
            raise AssertionError("%s (actor %s) failed: %s" % (cmd, actor, json.dumps(r)))
        return r["result"]

    def err(self, cmd, actor=None, **args):
        """Like call(); returns the error code, or raises AssertionError if
        the command succeeded or the reply is not a well-formed failure."""
        r = self.call(cmd, actor, **args)
        if r.get("ok") is not False:
            raise AssertionError("%s (actor %s) should have failed: %s" % (cmd, actor, json.dumps(r)))
        e = r.get("error")
        if not isinstance(e, dict) or not isinstance(e.get("code"), str) \
                or not isinstance(e.get("message"), str):
            raise AssertionError("malformed error reply: %s" % json.dumps(r))
        return e["code"]


# --------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------

TOPOLOGIES = ("single", "cluster", "sentinel")


def topology():
    """KEYGATE_TOPOLOGY: single (default), cluster or sentinel."""
    t = os.environ.get("KEYGATE_TOPOLOGY") or "single"
    if t not in TOPOLOGIES:
        raise ValueError("KEYGATE_TOPOLOGY=%s: not one of %s" % (t, ", ".join(TOPOLOGIES)))
    return t


def _ephemeral_range():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split())
            return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


_port_rng = random.SystemRandom()     # never the tests' seeded global one
_PORT_DIR = os.path.join(tempfile.gettempdir(), "kgtest-ports")
_ports_held = set()


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _release_ports():
    for port in list(_ports_held):
        try:
            os.unlink(os.path.join(_PORT_DIR, str(port)))
        except OSError:
            pass
    _ports_held.clear()


atexit.register(_release_ports)


def _reserve_port(port):
    """Claims port for this process in a directory every test process
    shares (one file per port, holding the owner's pid), under one flock.
    A port is bound-free at the time of the check; the claim keeps a test
    running beside this one (ctest -j) and this process itself from
    choosing it again before the server binds it. A dead owner's claim is
    taken over."""
    path = os.path.join(_PORT_DIR, str(port))
    if os.path.exists(path):
        try:
            with open(path) as f:
                owner = int(f.read().strip() or "0")
        except (OSError, ValueError):
            owner = 0
        if owner and (owner == os.getpid() or _pid_alive(owner)):
            return False
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        return False
    finally:
        s.close()
    tmp = "%s.%d" % (path, os.getpid())
    with open(tmp, "w") as f:
        f.write(str(os.getpid()))
    os.replace(tmp, path)
    _ports_held.add(port)
    return True


def free_port():
    """A loopback TCP port for a server that needs a number: free right now,
    claimed for this process until it exits (see _reserve_port), and chosen
    below the kernel's ephemeral range: a port taken from that range can be
    handed to some process's outgoing connection before our server binds it
    (a cluster node then never came up, seen once in CI-like runs with
    6-node clusters started side by side)."""
    lo, _ = _ephemeral_range()
    os.makedirs(_PORT_DIR, mode=0o1777, exist_ok=True)
    with open(os.path.join(_PORT_DIR, ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for _ in range(400):
            port = _port_rng.randrange(10000, max(10001, min(lo, 32768)))
            if _reserve_port(port):
                return port
    raise RuntimeError("free_port: no free loopback port found in 400 tries")


def tail(path, n=4000):
    """The last n bytes of a file as text ("" when it does not exist)."""
    try:
        with open(path, "rb") as f:
            return f.read()[-n:].decode("utf-8", "replace")
    except OSError:
        return ""


def _wait_for(pred, timeout, what, interval=0.02):
    deadline = time.monotonic() + timeout
    while True:
        try:
            v = pred()
            if v:
                return v
        except (OSError, ConnectionError, RedisError):  # RedisError: -LOADING
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("timed out waiting for " + what)
        time.sleep(interval)


wait_for = _wait_for


class Env:
    """A redis-server and a keygated in a temp dir.

    catalog: None (tests/data/catalog.json), a path, a dict (written as JSON)
             or a str (written as is). It is always copied to <tmp>/catalog.json
             (self.catalog_path) so tests can rewrite it and reload.
    extra_config: str or list of extra config lines.
    start_daemon: False to only prepare redis + files (then call start_daemon()).
    """

    def __init__(self, catalog=None, extra_config=None, start_daemon=True,
                 redis=True, daemon_timeout=10.0, redis_args=None):
        self.tmp = tempfile.mkdtemp(prefix="kgt")
        self.redis_sock = os.path.join(self.tmp, "redis.sock")
        self.socket_path = os.path.join(self.tmp, "kg.sock")
        self.pepper_path = os.path.join(self.tmp, "pepper")
        self.catalog_path = os.path.join(self.tmp, "catalog.json")
        self.config_path = os.path.join(self.tmp, "keygated.conf")
        self.log_path = os.path.join(self.tmp, "keygated.log")
        self.redis_log_path = os.path.join(self.tmp, "redis.log")
        self.daemon_timeout = daemon_timeout
        self.redis_args = list(redis_args or [])  # extra redis-server arguments
        self.redis_proc = None
        self.daemon = None
        self.extra = []                          # (process, name) of start_extra_daemon
        self._rconn = None
        self._rlock = threading.Lock()
        # KEYGATE_TOPOLOGY=cluster: the store is a Redis Cluster of 3 masters
        # + 3 replicas (kgcluster.Cluster) instead of one redis-server on a
        # Unix socket; env.redis() routes each command to its slot's master.
        # KEYGATE_TOPOLOGY=sentinel: a primary, one replica and three
        # sentinels (kgsentinel.Topology); keygated is configured with
        # `redis sentinel ...` and `min_replicas_ack 1`, env.redis() talks to
        # the primary the sentinels name (TCP).
        self.topology = topology()
        self.cluster = None
        self.router = None
        self.sentinel = None
        self._clients = []
        self.final_log = ""
        self.last_exit = None
        try:
            self.pepper_bytes = os.urandom(32)
            self.pepper_hex = self.pepper_bytes.hex()
            fd = os.open(self.pepper_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self.pepper_hex + "\n")
            os.chmod(self.pepper_path, 0o600)
            self.write_catalog(catalog)
            if self.topology == "cluster":
                import kgcluster
                self.cluster = kgcluster.Cluster(self.tmp)
            elif self.topology == "sentinel":
                import kgsentinel
                self.sentinel = kgsentinel.Topology(self.tmp, redis_args=self.redis_args,
                                                    seed=True)
            self.write_config(extra_config)
            if redis:
                self.start_redis()
            if start_daemon:
                self.start_daemon()
        except BaseException:
            self.close()
            raise

    # -- files --------------------------------------------------------------

    def write_catalog(self, catalog=None):
        """Rewrites <tmp>/catalog.json from None/path/dict/str."""
        if catalog is None:
            catalog = DEFAULT_CATALOG
        if isinstance(catalog, dict):
            text = json.dumps(catalog, indent=1)
        elif isinstance(catalog, str) and not catalog.lstrip().startswith(("{", "[")) \
                and os.path.exists(catalog):
            with open(catalog) as f:
                text = f.read()
        else:
            text = catalog
        tmp = self.catalog_path + ".new"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, self.catalog_path)

    def catalog(self):
        with open(self.catalog_path) as f:
            return json.load(f)

    def config_lines(self):
        if self.cluster:
            store = ["redis " + self.cluster.spec()]
        elif self.sentinel:
            # credits (and every write of keygated) wait for the replica
            store = ["redis " + self.sentinel.spec(), "min_replicas_ack 1"]
        else:
            store = ["redis unix:%s" % self.redis_sock]
        return [
            "# written by tests/lib/kgtest.py",
            "socket %s" % self.socket_path,
            "socket_mode 0660",
            "catalog %s" % self.catalog_path,
        ] + store + [
            "pepper_file %s" % self.pepper_path,
            "key_prefix kg:",
        ]

    def write_config(self, extra_config=None, replace=None):
        """Writes the config file: the standard lines (or `replace`, a full
        list of lines) plus extra_config lines."""
        lines = list(replace) if replace is not None else self.config_lines()
        if extra_config:
            if isinstance(extra_config, str):
                extra_config = extra_config.splitlines()
            lines.extend(extra_config)
        with open(self.config_path, "w") as f:
            f.write("\n".join(lines) + "\n")

    # -- redis --------------------------------------------------------------

    def start_redis(self):
        if self.cluster is not None:
            import kgcluster
            if not self.cluster.procs:
                self.cluster.start()
                self.router = kgcluster.Router(self.cluster)
            return
        if self.sentinel is not None:
            if "sentinel-0" not in self.sentinel.procs:
                self.sentinel.start()
            elif not self.sentinel.data_running():
                self.sentinel.start_data()
            return
        if self.redis_proc is not None and self.redis_proc.poll() is None:
            return
        try:
            os.unlink(self.redis_sock)
        except FileNotFoundError:
            pass
        log = open(self.redis_log_path, "ab")
        self.redis_proc = subprocess.Popen(
            [redis_server_path(), "--port", "0", "--unixsocket", self.redis_sock,
             "--unixsocketperm", "700", "--save", "", "--appendonly", "no",
             "--daemonize", "no", "--dir", self.tmp] + self.redis_args,
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()

        def up():
            if self.redis_proc.poll() is not None:
                raise RuntimeError("redis-server exited: " + self._tail(self.redis_log_path))
            r = Redis(self.redis_sock, timeout=2)
            try:
                return r.command("PING") == "PONG"
            finally:
                r.close()
        _wait_for(up, 10, "redis-server")

    def stop_redis(self, save=False, sig=signal.SIGTERM):
        """Stops redis-server. save=True first writes an RDB snapshot into
        the temp dir, which start_redis() then loads: the data survives.
        sig=SIGKILL kills it (with redis_args ["--appendonly", "yes",
        "--appendfsync", "always"] the acknowledged writes survive)."""
        if self.cluster is not None:
            if save:
                raise unittest.SkipTest("a stop and restart of the store runs on a single node")
            if self.router:
                self.router.close()
            self.cluster.stop()
            return
        if self.sentinel is not None:
            # Both redis-servers go (the sentinels stay): see kgsentinel.
            with self._rlock:
                if self._rconn is not None:
                    self._rconn.close()
                    self._rconn = None
            if self.sentinel.data_running():
                self.sentinel.stop_data(save=save, sig=sig)
            return
        if save and self.redis_proc is not None:
            self.redis("SAVE")
        elif not save:
            try:
                os.unlink(os.path.join(self.tmp, "dump.rdb"))
            except FileNotFoundError:
                pass
        with self._rlock:
            if self._rconn is not None:
                self._rconn.close()
                self._rconn = None
        p = self.redis_proc
        if p is None:
            return
        if p.poll() is None:
            p.send_signal(sig)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        self.redis_proc = None

    def redis(self, *args):
        """Reply of one raw Redis command (bytes / int / str / list / None).
        Raises RedisError on an error reply."""
        if self.router is not None:
            with self._rlock:
                return self.router.command(*args)
        with self._rlock:
            for attempt in (0, 1):
                if self._rconn is None:
                    self._rconn = self._connect_redis()
                try:
                    return self._rconn.command(*args)
                except RedisError as e:
                    # the node demoted: ask the sentinels again
                    if self.sentinel is None or attempt or not str(e).startswith("READONLY"):
                        raise
                    self._rconn.close()
                    self._rconn = None
                except (ConnectionError, OSError):
                    self._rconn.close()
                    self._rconn = None
                    if attempt:
                        raise

    def _connect_redis(self):
        if self.sentinel is not None:
            import kgsentinel
            return Tcp(self.sentinel.primary_port(), timeout=10.0)
        return Redis(self.redis_sock)

    def redis_port(self):
        """The TCP port of the store's (first) master: the cluster's first
        master, the sentinels' primary; None on a single node (Unix socket)."""
        if self.router is not None:
            return self.router.masters()[0]
        if self.sentinel is not None:
            return self.sentinel.primary_port()
        return None

    def redis_keys(self, pattern="*"):
        if self.router is not None:
            with self._rlock:
                return self.router.scan_keys(pattern)
        keys, cursor = [], b"0"
        while True:
            cursor, batch = self.redis("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
            keys.extend(batch)
            if cursor == b"0":
                return keys

    def redis_scan_all(self):
        """{key (bytes): [value bytes...]} for every key in Redis: a string's
        value; a hash's fields and values; a list's, set's or zset's members
        (and zset scores)."""
        out = {}
        for k in self.redis_keys():
            t = self.redis("TYPE", k)
            if t == "string":
                v = [self.redis("GET", k)]
            elif t == "hash":
                v = self.redis("HGETALL", k)
            elif t == "list":
                v = self.redis("LRANGE", k, 0, -1)
            elif t == "set":
                v = self.redis("SMEMBERS", k)
            elif t == "zset":
                v = self.redis("ZRANGE", k, 0, -1, "WITHSCORES")
            elif t == "stream":
                v = [json.dumps(self.redis("XRANGE", k, "-", "+"),
                                default=lambda b: b.decode("latin-1")).encode()]
            elif t == "none":
                continue
            else:
                v = []
            out[k] = [x for x in (v or []) if x is not None]
        return out

    def find_secrets_in_redis(self, secrets):
        """Returns [(secret, key)] for each secret (str or bytes) found in
        any Redis key name or value. Also checks the pepper (hex, upper-case
        hex and raw bytes) if `secrets` is None or contains "PEPPER"."""
        needles = []
        for s in secrets:
            needles.append(s.encode() if isinstance(s, str) else s)
        found = []
        for k, vals in self.redis_scan_all().items():
            blobs = [k] + list(vals)
            for n in needles:
                if any(n in b for b in blobs):
                    found.append((n, k))
        return found

    def subscribe(self, channel="kg:inval"):
        """A Subscriber on a Redis pub/sub channel (default the daemon's
        invalidation channel kg:inval)."""
        if self.router is not None or self.sentinel is not None:
            return Subscriber(self.redis_port(), channel)
        return Subscriber(self.redis_sock, channel)

    def pepper_needles(self):
        return [self.pepper_hex.encode(), self.pepper_hex.upper().encode(),
                self.pepper_bytes]

    # -- daemon -------------------------------------------------------------

    def _spawn_daemon(self, args=None):
        log = open(self.log_path, "ab")
        argv = [keygated_path(), "--config", self.config_path] if args is None \
            else [keygated_path()] + list(args)
        argv = keygated_wrapper() + argv
        p = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        return p

    def start_daemon(self, timeout=None):
        """Starts keygated and waits until its socket accepts a connection
        and answers ping."""
        if self.daemon is not None and self.daemon.poll() is None:
            return
        self.daemon = self._spawn_daemon()
        p = self.daemon

        def up():
            if p.poll() is not None:
                raise RuntimeError("keygated exited with %s:\n%s"
                                   % (p.returncode, self._tail(self.log_path)))
            c = Client(self.socket_path, timeout=2)
            try:
                r = c.call("ping")
                return r.get("ok") is True
            finally:
                c.close()
        slow = 6 if keygated_wrapper() else 1
        _wait_for(up, (timeout or self.daemon_timeout) * slow, "keygated to accept on its socket")

    def run_daemon_to_exit(self, timeout=10.0, args=None):
        """Starts keygated (not kept as self.daemon) and waits for it to exit.
        Returns (returncode, log text of that run); raises TimeoutError if it
        is still running after timeout (it is killed)."""
        start = os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0
        p = self._spawn_daemon(args)
        timeout *= 6 if keygated_wrapper() else 1     # valgrind, on a busy machine
        try:
            rc = p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
            raise TimeoutError("keygated did not exit within %ss" % timeout)
        with open(self.log_path, "rb") as f:
            f.seek(start)
            return rc, f.read().decode("utf-8", "replace")

    def start_extra_daemon(self, name, environ=None):
        """Starts one more keygated on the same Redis and config, but with its
        own socket <tmp>/<name>.sock and log <tmp>/<name>.log, and environ
        added to its environment; waits until it answers ping and returns
        the socket path. close() stops it (SIGTERM)
        and checks its exit as the main daemon's."""
        path = os.path.join(self.tmp, name + ".conf")
        sock = os.path.join(self.tmp, name + ".sock")
        with open(self.config_path) as f:
            lines = [ln for ln in f.read().splitlines() if not ln.startswith("socket ")]
        with open(path, "w") as f:
            f.write("\n".join(lines + ["socket %s" % sock]) + "\n")
        log = open(os.path.join(self.tmp, name + ".log"), "ab")
        p = subprocess.Popen(keygated_wrapper() + [keygated_path(), "--config", path],
                             stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                             env=dict(os.environ, **(environ or {})))
        log.close()
        self.extra.append((p, name))

        def up():
            if p.poll() is not None:
                raise RuntimeError("keygated %s exited with %s:\n%s"
                                   % (name, p.returncode,
                                      self._tail(os.path.join(self.tmp, name + ".log"))))
            try:
                c = Client(sock, timeout=2)
            except OSError:
                return False
            try:
                return c.call("ping").get("ok") is True
            finally:
                c.close()
        slow = 6 if keygated_wrapper() else 1
        _wait_for(up, self.daemon_timeout * slow, "keygated %s to accept on its socket" % name)
        return sock

    def stop_extra_daemons(self):
        """Stops the daemons of start_extra_daemon; returns [(name, exit
        status, log text)]."""
        out = []
        for p, name in self.extra:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
            try:
                rc = p.wait(60 if keygated_wrapper() else 10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
                rc = "killed after timeout"
            out.append((name, rc, self._tail(os.path.join(self.tmp, name + ".log"), 1 << 20)))
        self.extra = []
        return out

    def signal_daemon(self, sig):
        self.daemon.send_signal(sig)

    def kill_daemon(self, sig=signal.SIGTERM, timeout=10.0):
        """Sends sig; unless it is SIGHUP, waits for the exit and returns the
        return code (SIGKILLs it if it does not exit within timeout)."""
        p = self.daemon
        if p is None:
            return None
        if p.poll() is None:
            p.send_signal(sig)
        if sig == signal.SIGHUP:
            return None
        try:
            rc = p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
            rc = "killed after timeout"
        self.daemon = None
        return rc

    SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                       "WARNING: AddressSanitizer", "SUMMARY: UndefinedBehaviorSanitizer",
                       # valgrind memcheck (KEYGATED_WRAPPER)
                       "Invalid read of", "Invalid write of", "Invalid free()",
                       "Conditional jump or move depends on uninitialised",
                       "Use of uninitialised value", "Syscall param",
                       "Mismatched free()", "are definitely lost in")

    def sanitizer_report(self, log=None):
        """Lines of the daemon log (all its runs) that report a sanitizer
        finding: a memory error, a leak or undefined behaviour."""
        log = self.daemon_log() if log is None else log
        lines = log.splitlines()
        return [l for l in lines if any(m in l for m in self.SANITIZER_MARKS)]

    def daemon_alive(self):
        return self.daemon is not None and self.daemon.poll() is None

    def daemon_log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, text, timeout=5.0, start=0):
        """Waits until text appears in the daemon log after offset start;
        returns the log, or raises TimeoutError."""
        def found():
            log = self.daemon_log()
            return log if text in log[start:] else None
        return _wait_for(found, timeout, "%r in keygated's log" % text)

    @staticmethod
    def _tail(path, n=4000):
        try:
            with open(path, "rb") as f:
                data = f.read()
            return data[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    # -- clients ------------------------------------------------------------

    def listen_port(self, what="console", timeout=10):
        """The port keygated logged for its `what` listener ("console" or
        "metrics") on 127.0.0.1, once the line is in its log."""
        log = self.wait_log("%s on http://" % what, timeout=timeout)
        return int(re.search(r"%s on http://127\.0\.0\.1:(\d+)/" % what, log).group(1))

    def client(self, timeout=10.0):
        c = Client(self.socket_path, timeout=timeout)
        self._clients.append(c)
        return c

    # -- lifetime -----------------------------------------------------------

    def close(self):
        for c in self._clients:
            c.close()
        self._clients = []
        extra = self.stop_extra_daemons()
        if self.daemon is not None:
            self.last_exit = self.kill_daemon(signal.SIGTERM,
                                              timeout=60 if keygated_wrapper() else 5)
        self.final_log = self.daemon_log()
        for name, rc, log in extra:   # checked as the main daemon is (check_clean_exit)
            self.final_log += "\n---- %s ----\n%s" % (name, log)
            if rc != 0 and self.last_exit in (None, 0):
                self.last_exit = "%s: %s" % (name, rc)
        self.stop_redis()
        if self.sentinel is not None:
            self.sentinel.close()
        if os.environ.get("KGTEST_KEEP"):
            print("kgtest: kept", self.tmp)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------

def race(socks, jobs, conns_per_daemon=2, chunk=16):
    """Sends every request of jobs (a list of lists: the same request to each
    daemon, or one request per daemon) through conns_per_daemon connections
    per daemon at once, chunk pipelined at a time. Returns, per job, the list
    of responses in daemon order."""
    out = [[None] * len(socks) for _ in jobs]
    errors = []
    work = {}
    for ji, reqs in enumerate(jobs):
        for di in range(len(socks)):
            req = dict(reqs[di % len(reqs)], id="%d.%d" % (ji, di))
            work.setdefault((di, ji % conns_per_daemon), []).append((ji, di, req))

    def run(di, items):
        try:
            with Client(socks[di], timeout=120) as c:
                random.shuffle(items)
                for k in range(0, len(items), chunk):
                    part = items[k:k + chunk]
                    for _, _, req in part:
                        c.send(req)
                    got = {}
                    for _ in part:
                        r = c.read_json()
                        got[r.get("id")] = r
                    for ji, dj, req in part:
                        out[ji][dj] = got[req["id"]]
        except Exception as e:     # reported by the main thread
            errors.append(repr(e))

    threads = [threading.Thread(target=run, args=(di, items)) for (di, _), items in work.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert errors == [], errors
    return out


def oks(responses):
    """The responses that are ok."""
    return [r for r in responses if r.get("ok") is True]



_counter = itertools.count(1)
_run = "%d%s" % (os.getpid(), os.urandom(3).hex())


def unique_email(tag="user"):
    return "%s-%s-%d@example.test" % (tag, _run, next(_counter))


def signup(client, email=None, name="Test User", team_name=None):
    """user.signup with a unique email; returns the result (user_id,
    team_id, free_key_id) plus "email" and "name" for convenience."""
    email = email or unique_email()
    args = {"email": email, "name": name}
    if team_name is not None:
        args["team_name"] = team_name
    r = client.ok("user.signup", **args)
    r = dict(r)
    r.setdefault("email", email)
    r.setdefault("name", name)
    return r


def make_team(client, admins=1, users=1, outsiders=1):
    """Signs up an owner and `admins` + `users` more people, adds them to the
    owner's team, plus `outsiders` who are in their own team only. Returns
    {"team": team_id, "free_key": key_id, "owner": uid,
     "admins": [uid], "users": [uid], "outsiders": [uid]}."""
    o = signup(client, name="Owner")
    t = {"team": o["team_id"], "free_key": o["free_key_id"], "owner": o["user_id"],
         "admins": [], "users": [], "outsiders": []}
    for role, n in (("admin", admins), ("user", users)):
        for _ in range(n):
            s = signup(client, name=role.title())
            client.ok("team.member.add", o["user_id"], team=t["team"], user=s["user_id"], role=role)
            t[role + "s"].append(s["user_id"])
    for _ in range(outsiders):
        t["outsiders"].append(signup(client, name="Outsider")["user_id"])
    return t


class EnvCase(unittest.TestCase):
    """A TestCase with one Env per class in cls.env (cls.env_args are the
    Env's keyword arguments) and a client in cls.c. On a failing test, the
    tail of the daemon log is printed to help the post-mortem."""

    env_args = {}
    single_node_only = None     # a reason: the class is skipped on a cluster and on sentinel
    not_on_cluster = None       # a reason: the class is skipped on a cluster only

    @classmethod
    def setUpClass(cls):
        t = topology()
        if cls.single_node_only and t != "single":
            raise unittest.SkipTest("single node only: " + cls.single_node_only)
        if cls.not_on_cluster and t == "cluster":
            raise unittest.SkipTest("not on a cluster: " + cls.not_on_cluster)
        cls.env = Env(**cls.env_args)
        cls.c = cls.env.client()

    def single_node(self, why):
        """Skips the test unless the store is one redis-server (skipped with
        KEYGATE_TOPOLOGY=cluster and =sentinel)."""
        if self.env.topology != "single":
            self.skipTest("single node only: " + why)

    def skip_on_cluster(self, why):
        """Skips the test on a Redis Cluster (KEYGATE_TOPOLOGY=cluster)."""
        if self.env.topology == "cluster":
            self.skipTest("not on a cluster: " + why)

    @classmethod
    def tearDownClass(cls):
        env = getattr(cls, "env", None)
        if env is not None:
            if os.environ.get("KGTEST_LOG"):
                print("---- keygated log ----\n" + env.daemon_log()[-6000:])
            env.close()
            check_clean_exit(env)


def check_clean_exit(env):
    """After env.close(): raises AssertionError if keygated's log reports a
    sanitizer finding, or if the daemon did not exit with status 0 on the
    final SIGTERM (a crash during the tests shows up here)."""
    bad = env.sanitizer_report(env.final_log)
    if bad:
        raise AssertionError("sanitizer findings in keygated's log:\n" +
                             "\n".join(bad[:20]) + "\n" + env.final_log[-6000:])
    if env.last_exit not in (None, 0):
        raise AssertionError("keygated exited with %r on SIGTERM:\n%s"
                             % (env.last_exit, env.final_log[-6000:]))


def token_hash(pepper_bytes, token):
    """hex BLAKE2b-256 of token keyed with the pepper (SPEC §3)."""
    import hashlib
    return hashlib.blake2b(token.encode(), key=pepper_bytes, digest_size=32).hexdigest()


def token_team(token):
    """The team a token names: t_ + its 12 characters after the random part
    (docs/redis-schema.md "Tokens")."""
    return "t_" + token[46:58]


def token_key(pepper_bytes, token, prefix="kg:"):
    """The token's record, in its team's slot: P {t:T}:tok:<hash>."""
    return "%s{t:%s}:tok:%s" % (prefix, token_team(token), token_hash(pepper_bytes, token))


def now_ms():
    return int(time.time() * 1000)
