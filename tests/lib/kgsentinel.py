"""A Redis Sentinel topology on loopback for tests (issue 11).

Topology(tmp): two redis-servers, "a" and "b" (dynamic loopback ports, a
Unix socket each, one directory each under tmp), and three sentinels
monitoring MASTER with quorum 2 (generated sentinel.conf, dynamic ports).
All stopped by PID. Used by tests/sentinel/test_failover.py and by
kgtest.Env under KEYGATE_TOPOLOGY=sentinel.

- start(): a as the primary, b its replica, the sentinels; returns once
  every sentinel knows the other two and sees the replica's link up, and
  the replica confirms writes (WAIT 1), as keygated's `min_replicas_ack 1`
  needs (kgtest.Env's topology);
- start_redis(), start_sentinels(), stop(): the parts, one at a time
  (tests/sentinel/test_failover.py);
- primary() / primary_port(): the node the sentinels name;
- spec(): the one-line config value `sentinel MASTER HOST:PORT,...`;
- stop_data() / start_data(): the store away and back (both redis-servers;
  the sentinels stay up), for the outage tests: the primary comes back
  from its own files (dump.rdb, or the AOF with those redis_args), the
  replica empty, resynchronised in full from it; start_data() returns
  once the sentinels see the primary up and the replica confirms writes.

seed=True writes into each sentinel.conf its own id and the other
sentinels and the replica as already known (the lines a sentinel writes
itself once it has met them): the topology is ready at once instead of
after ~2 s of hello messages. What a failover does is the same.
"""
import os
import shutil
import signal
import subprocess
import time

import kgtest

MASTER = "kgmaster"

free_port = kgtest.free_port
wait_for = kgtest.wait_for


Tcp = kgtest.Tcp


def rcmd(port, *args, timeout=2.0):
    return kgtest.rcmd(port, *args, timeout=timeout)


def _fields(flat):
    return {k.decode(): v.decode() if isinstance(v, bytes) else v
            for k, v in zip(flat[::2], flat[1::2])}


class Topology:
    """Two redis-servers (a, b) and three sentinels, in tmp."""

    def __init__(self, tmp, redis_args=None, seed=False, down_after_ms=1000,
                 failover_timeout_ms=10000):
        self.tmp = tmp
        self.redis_args = list(redis_args or [])
        self.seed = seed
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.port = {"a": free_port(), "b": free_port()}
        self.sentinels = [free_port() for _ in range(3)]
        self.ids = [os.urandom(20).hex() for _ in self.sentinels]
        self.procs = {}
        self.last_primary = "a"

    def dir(self, name):
        d = os.path.join(self.tmp, name)
        os.makedirs(d, exist_ok=True)
        return d

    def sock(self, name):
        return os.path.join(self.dir("redis-" + name), "redis.sock")

    def spec(self):
        """The `redis` config value: `sentinel MASTER 127.0.0.1:P1,...`."""
        return "sentinel %s %s" % (MASTER, ",".join("127.0.0.1:%d" % p for p in self.sentinels))

    def _spawn(self, name, argv):
        with open(os.path.join(self.dir(name), "log"), "ab") as log:
            self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL)

    def start_redis(self, name, replica_of=None):
        d = self.dir("redis-" + name)
        argv = [kgtest.redis_server_path(), "--port", str(self.port[name]), "--bind", "127.0.0.1",
                "--unixsocket", self.sock(name), "--unixsocketperm", "700", "--save", "",
                "--appendonly", "no", "--dir", d, "--daemonize", "no",
                "--repl-diskless-sync-delay", "0"]   # a replica (re)joins at once
        argv += self.redis_args
        if replica_of:
            argv += ["--replicaof", "127.0.0.1", str(self.port[replica_of])]
        self._spawn("redis-" + name, argv)
        p = self.procs["redis-" + name]

        def up():
            if p.poll() is not None:
                raise RuntimeError("redis %s exited with %s" % (name, p.returncode))
            return rcmd(self.port[name], "PING") == "PONG"
        wait_for(up, 10, "redis " + name)

    def start_sentinels(self, primary="a"):
        replica = "b" if primary == "a" else "a"
        for i, port in enumerate(self.sentinels):
            d = self.dir("sentinel-%d" % i)
            conf = os.path.join(d, "sentinel.conf")
            with open(conf, "w") as f:
                f.write("port %d\nbind 127.0.0.1\ndir %s\n"
                        "sentinel monitor %s 127.0.0.1 %d 2\n"
                        "sentinel down-after-milliseconds %s %d\n"
                        "sentinel failover-timeout %s %d\n"
                        "sentinel parallel-syncs %s 1\n"
                        % (port, d, MASTER, self.port[primary], MASTER, self.down_after_ms,
                           MASTER, self.failover_timeout_ms, MASTER))
                if self.seed:
                    f.write("sentinel myid %s\n" % self.ids[i])
                    f.write("sentinel known-replica %s 127.0.0.1 %d\n"
                            % (MASTER, self.port[replica]))
                    for j, other in enumerate(self.sentinels):
                        if j != i:
                            f.write("sentinel known-sentinel %s 127.0.0.1 %d %s\n"
                                    % (MASTER, other, self.ids[j]))
            self._spawn("sentinel-%d" % i, [kgtest.redis_server_path(), conf, "--sentinel"])

        def ready():
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError("%s exited with %s; its log ends:\n%s"
                                       % (name, proc.returncode,
                                          kgtest.tail(os.path.join(self.dir(name), "log"), 1500)))
            for port in self.sentinels:
                if len(rcmd(port, "SENTINEL", "SENTINELS", MASTER)) != 2:
                    return False
                reps = rcmd(port, "SENTINEL", "REPLICAS", MASTER)
                if len(reps) != 1:
                    return False
                fields = dict(zip(reps[0][::2], reps[0][1::2]))
                if fields[b"flags"] != b"slave" or fields[b"master-link-status"] != b"ok":
                    return False
            return True
        try:
            wait_for(ready, 30, "the sentinels to see each other and the replica")
        except TimeoutError as e:
            seen = []
            for i, port in enumerate(self.sentinels):
                try:
                    seen.append("sentinel-%d: %d sentinels, replicas %r" % (
                        i, len(rcmd(port, "SENTINEL", "SENTINELS", MASTER)),
                        rcmd(port, "SENTINEL", "REPLICAS", MASTER)))
                except (OSError, ConnectionError, kgtest.RedisError) as x:
                    seen.append("sentinel-%d: %s" % (i, x))
                seen.append(kgtest.tail(os.path.join(self.dir("sentinel-%d" % i), "log"), 800))
            raise TimeoutError("%s\n%s" % (e, "\n".join(seen)))

    def start(self):
        """a as the primary, b its replica confirming writes, then the
        sentinels (kgtest.Env's topology)."""
        self.start_redis("a")
        self.start_redis("b", replica_of="a")
        self.quick_sync("a", "b")
        self.start_sentinels("a")
        self.wait_replica_acks("a")
        return self

    def _acked(self, name, wait_ms=100):
        r = Tcp(self.port[name], timeout=2.0)
        try:
            r.command("PUBLISH", "kgsentinel:ready", "1")
            return r.command("WAIT", "1", str(wait_ms)) >= 1
        finally:
            r.close()

    def wait_linked(self, replica, timeout=30):
        """Waits until replica has loaded its sync (master_link_status:up)."""
        link = b"master_link_status:up"
        wait_for(lambda: link in rcmd(self.port[replica], "INFO", "replication"), timeout,
                 "replica %s linked" % replica, interval=0.005)

    def wait_replica_acks(self, name, timeout=30):
        """Waits until the replica, synced, confirms a write on name (a
        PUBLISH, then WAIT 1): after a full sync the primary streams to its
        replica only from the replica's first REPLCONF ACK it sees once the
        sync's fork is reaped (often the replica's next once-a-second ACK),
        and until then `min_replicas_ack 1` writes would answer "may not be
        durable". The write must come after the sync (the replica's first
        ACK confirms everything before its snapshot): hence wait_linked."""
        other = "b" if name == "a" else "a"
        self.wait_linked(other, timeout)
        wait_for(lambda: self._acked(name), timeout, "the replica to confirm writes on " + name,
                 interval=0.005)

    def quick_sync(self, primary, replica, tries=5):
        """Before the sentinels run: cuts the wait of wait_replica_acks
        (mostly ~1 s, see there; once per Env adds up) by making the replica
        sync again (REPLICAOF NO ONE, REPLICAOF primary) when it does not
        confirm a write at once; the second sync goes online without that
        wait (measured: under 0.1 s instead of ~1 s). Falls back to waiting."""
        for _ in range(tries):
            self.wait_linked(replica, 10)
            if self._acked(primary, 30):
                return
            rcmd(self.port[replica], "REPLICAOF", "NO", "ONE")
            rcmd(self.port[replica], "REPLICAOF", "127.0.0.1", str(self.port[primary]))
        self.wait_replica_acks(primary)

    def primary(self):
        """The name ('a' or 'b') the sentinels give for the primary."""
        host, port = rcmd(self.sentinels[0], "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER)
        return {v: k for k, v in self.port.items()}[int(port)]

    def primary_port(self):
        """The primary's port as the first sentinel that answers names it
        (the last known one when none answers)."""
        for s in self.sentinels:
            try:
                addr = rcmd(s, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER, timeout=1.0)
            except (OSError, ConnectionError, kgtest.RedisError):
                continue
            if addr:
                port = int(addr[1])
                for name, p in self.port.items():
                    if p == port:
                        self.last_primary = name
                return port
        return self.port[self.last_primary]

    @staticmethod
    def _reap(procs, sig=signal.SIGTERM, timeout=10):
        """Signals every process, then waits for them. A redis-server that
        refuses a SIGTERM (a replica "Writing initial AOF, can't exit" just
        after its sync with appendonly on) is asked again every 0.2 s;
        SIGKILL after timeout."""
        for p in procs:
            if p.poll() is None:
                p.send_signal(sig)
        deadline = time.monotonic() + timeout
        for p in procs:
            while p.poll() is None and time.monotonic() < deadline:
                try:
                    p.wait(0.2)
                except subprocess.TimeoutExpired:
                    p.send_signal(sig)
            if p.poll() is None:
                p.kill()
                p.wait(5)

    def stop(self, name, sig=signal.SIGTERM):
        p = self.procs.pop(name, None)
        if p is not None:
            self._reap([p], sig)

    # -- the store away and back (kgtest.Env's stop_redis / start_redis) ----

    def data_running(self):
        return any(("redis-" + n) in self.procs for n in self.port)

    def stop_data(self, save=False, sig=signal.SIGTERM):
        """Stops both redis-servers (the sentinels stay). save=True: the
        primary first writes a snapshot that start_data() loads; otherwise
        its dump.rdb is removed (an AOF, if redis_args turned it on, is
        kept: a SIGKILL then loses nothing acknowledged)."""
        try:
            self.primary_port()                    # remembers which one it is
        except Exception:
            pass
        p = self.last_primary
        if save:
            rcmd(self.port[p], "SAVE", timeout=30)
        else:
            try:
                os.unlink(os.path.join(self.dir("redis-" + p), "dump.rdb"))
            except FileNotFoundError:
                pass
        for n in ("b", "a") if p == "a" else ("a", "b"):
            self.stop("redis-" + n, sig)

    def start_data(self, timeout=30):
        """Brings back the primary stopped by stop_data() (from its files),
        then the other node empty as its replica; returns once the replica
        is in sync and every sentinel sees the primary up again."""
        p = self.last_primary
        r = "b" if p == "a" else "a"
        rd = self.dir("redis-" + r)
        for f in os.listdir(rd):           # a full resync from the primary
            if f == "dump.rdb" or f.startswith("appendonly"):
                path = os.path.join(rd, f)
                shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)
        if ("redis-" + p) not in self.procs:
            self.start_redis(p)

        def primary_up():
            if "sentinel-0" not in self.procs:     # sentinels not started yet
                return True
            for s in self.sentinels:
                m = _fields(rcmd(s, "SENTINEL", "MASTER", MASTER))
                if m["flags"] != "master" or int(m["port"]) != self.port[p]:
                    return False
            return True
        # Before the replica is back: no sentinel may promote it meanwhile.
        wait_for(primary_up, timeout, "the sentinels to see %s up again" % p, interval=0.05)
        if ("redis-" + r) not in self.procs:
            self.start_redis(r, replica_of=p)

        self.wait_replica_acks(p, timeout)

    def close(self):
        """Stops every process: all signalled first, then waited for."""
        procs, self.procs = self.procs, {}
        self._reap(list(procs.values()))
