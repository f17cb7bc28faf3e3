"""A real Redis Cluster on loopback for tests (issue 11).

Cluster(tmp): 3 masters + 3 replicas (redis-server --cluster-enabled yes,
ports from kgtest.free_port(), one directory each under tmp), created with
`redis-cli --cluster create ... --cluster-replicas 1 --cluster-yes`, ready
when every node says cluster_state:ok and agrees on the slot map. Stopped
by PID (stop()). Helpers:

- slot_of(key): CRC16-XMODEM of the key (or its {hash tag}) mod 16384;
- owner(slot): the port of the master serving a slot, as node 0 sees it;
- kill_master(port): kill -9, then wait_promoted(slot) returns the port of
  the replica that took over;
- move_slot(slot, to_port): a live move with CLUSTER SETSLOT IMPORTING /
  MIGRATING, one MIGRATE of every key of the slot, then SETSLOT NODE on
  every master (the order redis-cli uses).
"""
import os
import shutil
import signal
import subprocess
import time

import kgtest

wait_for = kgtest.wait_for


def crc16(data):
    """CRC16-XMODEM (poly 0x1021, init 0), as Redis Cluster uses it."""
    crc = 0
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def slot_of(key):
    if isinstance(key, str):
        key = key.encode()
    s = key.find(b"{")
    if s >= 0:
        e = key.find(b"}", s + 1)
        if e > s + 1:
            key = key[s + 1:e]
    return crc16(key) % 16384


Tcp = kgtest.Tcp
rcmd = kgtest.rcmd


def _s(v):
    return v.decode() if isinstance(v, bytes) else v


class Cluster:
    NODES = 6

    def __init__(self, tmp, node_timeout_ms=1000):
        self.tmp = tmp
        self.node_timeout_ms = node_timeout_ms
        self.ports = [kgtest.free_port() for _ in range(self.NODES)]
        # The bus port defaults to port + 10000, which may not exist: own ports.
        self.bus = {p: kgtest.free_port() for p in self.ports}
        self.procs = {}

    def dir(self, port):
        d = os.path.join(self.tmp, "cluster-%d" % port)
        os.makedirs(d, exist_ok=True)
        return d

    def spec(self):
        """The config value: `cluster 127.0.0.1:P1,127.0.0.1:P2,...`."""
        return "cluster " + ",".join("127.0.0.1:%d" % p for p in self.ports)

    def start_node(self, port, fresh=True):
        d = self.dir(port)
        if fresh:
            for f in ("nodes.conf", "dump.rdb"):
                try:
                    os.unlink(os.path.join(d, f))
                except FileNotFoundError:
                    pass
        argv = [kgtest.redis_server_path(), "--port", str(port), "--bind", "127.0.0.1",
                "--cluster-enabled", "yes", "--cluster-port", str(self.bus[port]),
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(self.node_timeout_ms),
                "--save", "", "--appendonly", "no", "--dir", d, "--daemonize", "no",
                "--repl-diskless-sync-delay", "0", "--cluster-replica-validity-factor", "0"]
        with open(os.path.join(d, "log"), "ab") as log:
            self.procs[port] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL)
        p = self.procs[port]
        logf = os.path.join(d, "log")

        def up():
            if p.poll() is not None:
                raise RuntimeError("cluster node %d exited with %s; its log ends:\n%s"
                                   % (port, p.returncode, kgtest.tail(logf, 1500)))
            return rcmd(port, "PING") == "PONG"
        try:
            wait_for(up, 10, "cluster node %d" % port)
        except TimeoutError as e:
            raise TimeoutError("%s; its log ends:\n%s" % (e, kgtest.tail(logf, 1500)))

    def start(self):
        for p in self.ports:
            self.start_node(p)
        cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
        out = subprocess.run([cli, "--cluster", "create"] +
                             ["127.0.0.1:%d" % p for p in self.ports] +
                             ["--cluster-replicas", "1", "--cluster-yes"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        if out.returncode != 0:
            raise RuntimeError("redis-cli --cluster create: " + out.stdout.decode()[-2000:])
        self.wait_ok()
        return self

    def info(self, port):
        text = _s(rcmd(port, "CLUSTER", "INFO"))
        return dict(l.split(":", 1) for l in text.split("\r\n") if ":" in l)

    def alive(self):
        return [p for p in self.ports if p in self.procs and self.procs[p].poll() is None]

    def wait_ok(self, timeout=60):
        def ok():
            maps = set()
            for p in self.alive():
                i = self.info(p)
                if i.get("cluster_state") != "ok" or i.get("cluster_slots_assigned") != "16384":
                    return False
                maps.add(tuple(sorted((s[0], s[1], s[2][1]) for s in self.slots(p))))
            return len(maps) == 1
        wait_for(ok, timeout, "cluster_state:ok on every node", interval=0.1)

    def slots(self, port=None):
        """CLUSTER SLOTS as [(start, end, [host, port, id]), ...] (masters only)."""
        port = port or self.alive()[0]
        out = []
        for e in rcmd(port, "CLUSTER", "SLOTS"):
            m = e[2]
            out.append((e[0], e[1], [_s(m[0]), m[1], _s(m[2]) if len(m) > 2 else ""]))
        return out

    def owner(self, slot, port=None):
        for start, end, m in self.slots(port):
            if start <= slot <= end:
                return m[1]
        return None

    def masters(self):
        return sorted({m[1] for _, _, m in self.slots()})

    def node_id(self, port):
        return _s(rcmd(port, "CLUSTER", "MYID"))

    def kill_master(self, port):
        """kill -9 of one node (a master); returns when it is gone."""
        p = self.procs[port]
        p.send_signal(signal.SIGKILL)
        p.wait(10)

    def wait_promoted(self, slot, dead, timeout=30):
        """Waits until a live node says a master other than dead serves slot
        and the cluster is ok again; returns that master's port."""
        def promoted():
            live = self.alive()
            o = self.owner(slot, live[0])
            if o is None or o == dead:
                return None
            i = self.info(o)
            return o if i.get("cluster_state") == "ok" else None
        return wait_for(promoted, timeout, "a replica promoted for slot %d" % slot, interval=0.05)

    def restart(self, port):
        """Brings a killed node back (with its nodes.conf: it rejoins as a replica)."""
        self.start_node(port, fresh=False)

    def move_slot(self, slot, to_port, batch=None):
        """A live move of slot to the master on to_port. batch None: one MIGRATE
        of every key; else keys in batches of that many (as redis-cli reshard)."""
        src = self.owner(slot)
        if src == to_port:
            return src
        src_id, dst_id = self.node_id(src), self.node_id(to_port)
        rcmd(to_port, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", src_id)
        rcmd(src, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", dst_id)
        while True:
            keys = rcmd(src, "CLUSTER", "GETKEYSINSLOT", str(slot), str(batch or 100000))
            if not keys:
                break
            rcmd(src, "MIGRATE", "127.0.0.1", str(to_port), "", "0", "10000", "REPLACE",
                 "KEYS", *keys, timeout=30)
        # The target first, then the source, then the others (redis-cli's order).
        for p in [to_port, src] + [m for m in self.masters() if m not in (to_port, src)]:
            rcmd(p, "CLUSTER", "SETSLOT", str(slot), "NODE", dst_id)
        return src

    def stop(self):
        for port, p in list(self.procs.items()):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for port, p in list(self.procs.items()):
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.send_signal(signal.SIGKILL)
                p.wait(5)
        self.procs.clear()


class Router:
    """A blocking client of a whole cluster, for tests that read and write
    the store directly: each command goes to the master of its key's slot
    (MOVED refreshes the map, ASK is followed once, TRYAGAIN and
    CLUSTERDOWN are retried); MGET, DEL, EXISTS and UNLINK over several
    slots are split and merged; FLUSHALL/FLUSHDB go to every master,
    DBSIZE sums them; keyless commands go to the first master. SCAN is per
    master: use scan_keys()."""

    MULTI_KEY = {"MGET", "DEL", "EXISTS", "UNLINK", "TOUCH"}
    ALL = {"FLUSHALL", "FLUSHDB"}

    def __init__(self, cluster):
        self.cluster = cluster
        self.conns = {}
        self.owner = {}

    def close(self):
        for c in self.conns.values():
            c.close()
        self.conns = {}

    def _conn(self, port):
        if port not in self.conns:
            self.conns[port] = Tcp(port, timeout=10.0)
        return self.conns[port]

    def _refresh(self):
        self.owner = {}
        for start, end, m in self.cluster.slots():
            for s in range(start, end + 1):
                self.owner[s] = m[1]

    def masters(self):
        if not self.owner:
            self._refresh()
        return sorted(set(self.owner.values()))

    def _send(self, port, args):
        try:
            return self._conn(port).command(*args)
        except (ConnectionError, OSError):
            c = self.conns.pop(port, None)
            if c:
                c.close()
            raise

    def _keyed(self, slot, args):
        ask = None
        for attempt in range(20):
            if not self.owner:
                self._refresh()
            port = ask or self.owner.get(slot)
            try:
                if ask:
                    self._send(port, ["ASKING"])
                    ask = None
                return self._send(port, args)
            except kgtest.RedisError as e:
                msg = str(e)
                if msg.startswith("MOVED"):
                    self._refresh()
                elif msg.startswith("ASK"):
                    ask = int(msg.split()[2].rsplit(":", 1)[1])
                elif msg.startswith(("TRYAGAIN", "CLUSTERDOWN", "LOADING")):
                    time.sleep(0.05)
                else:
                    raise
            except (ConnectionError, OSError):
                time.sleep(0.1)
                self._refresh()
        raise ConnectionError("cluster: no answer for slot %d" % slot)

    def command(self, *args):
        name = str(args[0]).upper()
        if name in self.ALL:
            for m in self.masters():
                self._send(m, args)
            return "OK"
        if name == "DBSIZE":
            return sum(self._send(m, args) for m in self.masters())
        if name in ("EVAL", "EVALSHA"):
            key = args[3] if int(args[2]) > 0 else None
        elif name in ("SCAN", "PUBLISH", "PING", "INFO", "CONFIG", "TIME", "SCRIPT",
                      "KEYS", "RANDOMKEY") or len(args) < 2:
            key = None
        else:
            key = args[1]
        if name in self.MULTI_KEY and len(args) > 2:
            slots = {}
            for i, k in enumerate(args[1:]):
                slots.setdefault(slot_of(k), []).append((i, k))
            if len(slots) > 1:
                out = [None] * (len(args) - 1)
                total = 0
                for s, items in slots.items():
                    r = self._keyed(s, [name] + [k for _, k in items])
                    if name == "MGET":
                        for (i, _), v in zip(items, r):
                            out[i] = v
                    else:
                        total += r
                return out if name == "MGET" else total
        if key is None:
            return self._send(self.masters()[0], args)
        return self._keyed(slot_of(key), list(args))

    def scan_keys(self, pattern="*"):
        keys = []
        for m in self.masters():
            cursor = b"0"
            while True:
                cursor, batch = self._send(m, ["SCAN", cursor, "MATCH", pattern, "COUNT", 1000])
                keys.extend(batch)
                if cursor in (b"0", "0"):
                    break
        return keys
