#!/usr/bin/env python3
"""bench_topology - keygated's admin commands on one Redis node and on a
Redis Cluster, in the same run (issue 11).

Not a test: it prints figures and never fails on time.

    python3 bench/admin/bench_topology.py [--n N] [--rounds R] [--repeat K]
    cmake --build build --target bench_topology     (the same, defaults)

Starts two stores side by side (tests/lib/kgtest.py Env):

  single   one redis-server on a loopback TCP port with one replica
           (as each master of the cluster has one), keygated on
           `redis 127.0.0.1:PORT`;
  cluster  3 masters + 3 replicas (tests/lib/kgcluster.py), keygated on
           `redis cluster 127.0.0.1:P1,...`.

Both run on this machine for the whole bench; each measurement is taken
on the single node, then at once on the cluster, so that a slow moment of
a shared machine hits both alike. Measured, for each topology:

  PING              the baseline: a bare Redis round trip from this
                    script (raw socket) to the node, or to the master of
                    the team's slot (4 clients: of each client's team)
  keygated ping     a round trip through keygated that does not reach Redis
  key.create        a team's keys only: one slot, one script
  token.generate    one slot, one script
  user.signup       cross-slot on a cluster (user, email claim, team...)
  team.member.add   of a freshly signed-up user: cross-slot on a cluster

  latency           R requests one at a time on one connection: p50, p99
  1 client          N requests written back to back on one connection
                    (a thread writes them all, another reads the answers;
                    keygated reads at most 1,024 unanswered): ops/s
  4 clients         4 connections, each with its own team (its own owner),
                    N/4 requests each, back to back: total ops/s

  CPU               keygated's and the store's redis-servers' CPU time
                    (/proc) per command during the 1-client run
  rt/cmd            Redis round trips keygated made per command during
                    the latency run (keygated_redis_round_trips_total on
                    its `metrics` listener; background work included)

The whole set runs K times (default 3), each round with fresh teams (so no
team grows from round to round), and the median of each figure over the
rounds is printed. PING's back-to-back runs send 20 N pings (N alone take
a few milliseconds).

Ratios: cluster/single of each figure, and `x PING`: a command's p50 over
PING's p50, or PING's ops/s over the command's (how many bare round trips
one command costs) in the same topology and the same shape of load.
Defaults (N 2000, R N/6 = 333, K 3) take about a minute on 2 cores.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "lib"))
import kgtest  # noqa: E402
import kgcluster  # noqa: E402

PING = b"*1\r\n$4\r\nPING\r\n"


def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(q * len(v)))]


class Line:
    """A socket read line by line (keygated's JSON lines, Redis' +PONG)."""

    def __init__(self, sock):
        self.s = sock
        self.buf = b""

    def readline(self):
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line, self.buf = self.buf[:i], self.buf[i + 1:]
                return line
            chunk = self.s.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed")
            self.buf += chunk


def admin_sock(env):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(env.socket_path)
    return s


def redis_sock(port):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def check(line):
    r = json.loads(line)
    if r.get("ok") is not True:
        raise SystemExit("command failed: %s" % line.decode(errors="replace"))
    return r.get("result")


def sequential(sock, lines, admin=True):
    """Sends each line and waits for its answer; returns (latencies in µs,
    results)."""
    rd = Line(sock)
    lat, out = [], []
    for ln in lines:
        t0 = time.perf_counter()
        sock.sendall(ln)
        reply = rd.readline()
        lat.append((time.perf_counter() - t0) * 1e6)
        out.append(reply)
    if admin:
        return lat, [check(r) for r in out]
    for r in out:
        if r != b"+PONG\r":
            raise SystemExit("PING answered %r" % r)
    return lat, None


def back_to_back(jobs, admin=True):
    """jobs: [(socket, [line, ...])]. Every connection's lines are written
    at once by a thread of its own while another reads the answers; returns
    (total ops/s from the first write to the last answer, [results per
    job])."""
    n_total = sum(len(l) for _, l in jobs)
    data = [[] for _ in jobs]
    go = threading.Barrier(2 * len(jobs) + 1)
    err = []

    def writer(sock, lines):
        blob = b"".join(lines)
        go.wait()
        sock.sendall(blob)

    def reader(i, sock, n):
        go.wait()
        got = 0
        try:
            while got < n:
                chunk = sock.recv(1 << 20)
                if not chunk:
                    raise ConnectionError("connection closed")
                got += chunk.count(b"\n")
                data[i].append(chunk)
        except Exception as e:  # noqa: BLE001 - reported below
            err.append(e)

    threads = []
    for i, (sock, lines) in enumerate(jobs):
        threads.append(threading.Thread(target=writer, args=(sock, lines)))
        threads.append(threading.Thread(target=reader, args=(i, sock, len(lines))))
    for t in threads:
        t.start()
    go.wait()
    t0 = time.perf_counter()
    for t in threads[1::2]:
        t.join()
    dt = time.perf_counter() - t0
    for t in threads[0::2]:
        t.join()
    if err:
        raise SystemExit("back to back: %r" % err[0])
    results = []
    for chunks in data:
        lines = b"".join(chunks).split(b"\n")[:-1]
        if admin:
            results.append([check(l) for l in lines])
        elif any(l != b"+PONG\r" for l in lines):
            raise SystemExit("PING answered %r" % lines[:3])
        else:
            results.append(None)
    return n_total / dt, results


def req(cmd, **args):
    d = {"cmd": cmd}
    d.update(args)
    return (json.dumps(d) + "\n").encode()


class Topo:
    def __init__(self, name):
        self.name = name
        self.procs = []
        self.mport = kgtest.free_port()
        if name == "single":
            os.environ["KEYGATE_TOPOLOGY"] = "single"
            self.env = kgtest.Env(redis=False, start_daemon=False)
            self.port = kgtest.free_port()
            rport = kgtest.free_port()
            rdir = os.path.join(self.env.tmp, "replica")
            os.makedirs(rdir)
            for args, d in ((["--port", str(self.port)], self.env.tmp),
                            (["--port", str(rport), "--replicaof", "127.0.0.1", str(self.port)],
                             rdir)):
                log = open(os.path.join(d, "redis-tcp.log"), "ab")
                self.procs.append(subprocess.Popen(
                    [kgtest.redis_server_path(), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "no", "--dir", d] + args,
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
                log.close()
            kgtest.wait_for(lambda: kgcluster.rcmd(self.port, "PING") == "PONG", 10, "redis")
            kgtest.wait_for(lambda: b"master_link_status:up" in
                            kgcluster.rcmd(rport, "INFO", "replication"), 20, "replica in sync")
            lines = [l for l in self.env.config_lines() if not l.startswith("redis ")]
            self.env.write_config(replace=lines + ["redis 127.0.0.1:%d" % self.port,
                                                   "metrics 127.0.0.1:%d" % self.mport])
        else:
            os.environ["KEYGATE_TOPOLOGY"] = "cluster"
            self.env = kgtest.Env(start_daemon=False,
                                  extra_config=["metrics 127.0.0.1:%d" % self.mport])
        self.env.start_daemon()
        self.c = admin_sock(self.env)
        self.rd = Line(self.c)
        self.seq = 0            # unique emails
        self.new_owners()

    def new_owners(self):
        """Five fresh owners, each with a team of its own: owners[0] for the
        latency and 1-client runs, owners[1:] for the 4 clients."""
        self.owners = [self.call("user.signup", email=e, name="Owner") for e in self.emails(5)]

    def close(self):
        try:
            self.c.close()
            self.env.close()
        finally:
            for p in self.procs:
                p.terminate()
                p.wait(10)

    def call(self, cmd, **args):
        self.c.sendall(req(cmd, **args))
        return check(self.rd.readline())

    def master(self, team):
        """The port of the node serving the team's slot."""
        if self.name == "single":
            return self.port
        return self.env.cluster.owner(kgcluster.slot_of("{t:%s}" % team))

    def cpu(self):
        """CPU seconds used so far by keygated and by all of this store's
        redis-servers (replicas included), from /proc."""
        def used(pid):
            try:
                with open("/proc/%d/stat" % pid) as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
                return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            except (OSError, IndexError, ValueError):
                return 0.0
        redis = self.procs if self.name == "single" else list(self.env.cluster.procs.values())
        return used(self.env.daemon.pid), sum(used(p.pid) for p in redis)

    def round_trips(self):
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.mport, timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("keygated_redis_round_trips_total "):
                    return float(line.split()[1])
        return 0.0

    def emails(self, n):
        self.seq += n
        return ["u%d@bench.example" % i for i in range(self.seq - n, self.seq)]


class Figures:
    """Every round's figures; medians over the rounds are printed."""

    def __init__(self):
        self.lat = {}     # (topo, cmd) -> [(p50, p99, rt per command)]
        self.tp1 = {}     # (topo, cmd) -> [ops/s], one client
        self.tp4 = {}     # (topo, cmd) -> [ops/s], 4 clients
        self.cpu = {}     # (topo, cmd) -> [(keygated, redis) CPU µs per command], 1 client

    @staticmethod
    def med(v):
        return sorted(v)[len(v) // 2]

    def latency(self, tn, cmd):
        v = self.lat[tn, cmd]
        rt = [x[2] for x in v]
        return (self.med([x[0] for x in v]), self.med([x[1] for x in v]),
                None if rt[0] is None else self.med(rt))

    def one(self, tn, cmd):
        return self.med(self.tp1[tn, cmd])

    def cpu_per(self, tn, cmd):
        v = self.cpu[tn, cmd]
        return self.med([x[0] for x in v]), self.med([x[1] for x in v])

    def four(self, tn, cmd):
        return self.med(self.tp4[tn, cmd])


def measure(t, f, cmd, seq_lines, one_lines, four_lines, admin=True):
    """The three figures of one command on topology t; four_lines is a
    list of 4 lists (one per client). Returns (results of the latency run,
    of the 1-client run, of each 4-client connection)."""
    if admin:
        socks = [admin_sock(t.env) for _ in range(5)]
    else:
        socks = [redis_sock(t.master(t.owners[0]["team_id"]))] + \
            [redis_sock(t.master(o["team_id"])) for o in t.owners[1:]]
    try:
        rt0 = t.round_trips() if admin else 0
        lat, seq_res = sequential(socks[0], seq_lines, admin)
        rt = (t.round_trips() - rt0) / len(seq_lines) if admin else None
        f.lat.setdefault((t.name, cmd), []).append((pct(lat, 0.5), pct(lat, 0.99), rt))
        cpu0 = t.cpu()
        ops, (one_res,) = back_to_back([(socks[0], one_lines)], admin)
        cpu1 = t.cpu()
        f.tp1.setdefault((t.name, cmd), []).append(ops)
        f.cpu.setdefault((t.name, cmd), []).append(
            tuple((b - a) * 1e6 / len(one_lines) for a, b in zip(cpu0, cpu1)))
        ops, four_res = back_to_back(list(zip(socks[1:], four_lines)), admin)
        f.tp4.setdefault((t.name, cmd), []).append(ops)
        return seq_res, one_res, four_res
    finally:
        for s in socks:
            s.close()


def one_round(topos, f, rounds, n, q):
    """Each command's three figures, on the single node then the cluster,
    with fresh teams."""
    for t in topos:
        t.new_owners()
    keys, users = {}, {}
    for t in topos:     # PING's back-to-back runs are 20 times longer: too short else
        measure(t, f, "PING", [PING] * rounds, [PING] * (20 * n), [[PING] * (20 * q)] * 4,
                admin=False)
    for t in topos:
        measure(t, f, "keygated ping", [req("ping")] * rounds, [req("ping")] * n,
                [[req("ping")] * q] * 4)

    def creates(o, count, tag):
        return [req("key.create", actor=o["user_id"], team=o["team_id"],
                    name="%s-%d" % (tag, i), users=[o["user_id"]]) for i in range(count)]
    for t in topos:
        o = t.owners
        s, one, four = measure(t, f, "key.create", creates(o[0], rounds, "s"),
                               creates(o[0], n, "p"),
                               [creates(o[i + 1], q, "q") for i in range(4)])
        keys[t.name] = ([r["key_id"] for r in s], [r["key_id"] for r in one],
                        [[r["key_id"] for r in x] for x in four])

    def tokens(o, kids):
        return [req("token.generate", actor=o["user_id"], key=k) for k in kids]
    for t in topos:
        o, (ks, k1, k4) = t.owners, keys[t.name]
        measure(t, f, "token.generate", tokens(o[0], ks), tokens(o[0], k1),
                [tokens(o[i + 1], k4[i]) for i in range(4)])

    def signups(t, count):
        return [req("user.signup", email=e, name="Bench") for e in t.emails(count)]
    for t in topos:
        s, one, four = measure(t, f, "user.signup", signups(t, rounds), signups(t, n),
                               [signups(t, q) for _ in range(4)])
        users[t.name] = ([r["user_id"] for r in s], [r["user_id"] for r in one],
                         [[r["user_id"] for r in x] for x in four])

    def adds(o, uids):
        return [req("team.member.add", actor=o["user_id"], team=o["team_id"], user=u,
                    role="user") for u in uids]
    for t in topos:          # the users just signed up: fresh, in no team but their own
        o, (us, u1, u4) = t.owners, users[t.name]
        measure(t, f, "team.member.add", adds(o[0], us), adds(o[0], u1),
                [adds(o[i + 1], u4[i]) for i in range(4)])


def warm_up(t):
    """Scripts loaded, connections opened: 30 of each command, not measured."""
    o = t.owners[0]
    c = admin_sock(t.env)
    try:
        kids = [r["key_id"] for r in sequential(c, [req(
            "key.create", actor=o["user_id"], team=o["team_id"], name="warm%d" % i,
            users=[o["user_id"]]) for i in range(30)])[1]]
        sequential(c, [req("token.generate", actor=o["user_id"], key=k) for k in kids])
        uids = [r["user_id"] for r in sequential(c, [
            req("user.signup", email=e, name="W") for e in t.emails(30)])[1]]
        sequential(c, [req("team.member.add", actor=o["user_id"], team=o["team_id"],
                           user=u, role="user") for u in uids])
        sequential(c, [req("ping")] * 100)
    finally:
        c.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000,
                    help="requests of each back-to-back figure (4 clients: N/4 each)")
    ap.add_argument("--rounds", type=int, default=None,
                    help="requests of each latency figure (default: N/6, at least 100)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="rounds of the whole set, fresh teams each; medians printed")
    a = ap.parse_args()
    n, q = a.n, max(1, a.n // 4)
    rounds = a.rounds or max(100, a.n // 6)
    saved = os.environ.get("KEYGATE_TOPOLOGY")
    t_start = time.time()
    topos = []
    f = Figures()
    try:
        for name in ("single", "cluster"):
            topos.append(Topo(name))
        if saved is None:
            os.environ.pop("KEYGATE_TOPOLOGY", None)
        else:
            os.environ["KEYGATE_TOPOLOGY"] = saved
        setup = time.time() - t_start
        for t in topos:
            warm_up(t)
        for _ in range(a.repeat):
            one_round(topos, f, rounds, n, q)
    finally:
        for t in topos:
            t.close()
    total = time.time() - t_start

    cmds = [("PING", "baseline"), ("keygated ping", "no Redis"), ("key.create", "one slot"),
            ("token.generate", "one slot"), ("user.signup", "cross-slot"),
            ("team.member.add", "cross-slot")]
    print("keygated admin commands, single node vs Redis Cluster (3 masters + 3 replicas), "
          "same machine, same run")
    print("(%d cores; medians of %d rounds, each: latency %d one at a time, 1 client %d back "
          "to back, 4 clients %d each on its own team; setup %.0f s, total %.0f s)"
          % (os.cpu_count() or 0, a.repeat, rounds, n, q, setup, total))
    print()
    print("Latency, one client, µs (x PING: p50 over PING's p50 on the same topology; "
          "rt/cmd: keygated's Redis round trips per command)")
    print("%-16s %-10s | %7s %7s %7s %6s | %7s %7s %7s %6s | %7s %7s"
          % ("command", "commit", "p50", "p99", "x PING", "rt/cmd", "p50", "p99", "x PING",
             "rt/cmd", "p50", "p99"))
    print("%-27s | %-30s | %-30s | %s" % ("", "single node", "cluster", "cluster/single"))
    for cmd, kind in cmds:
        row = []
        for tn in ("single", "cluster"):
            p50, p99, rt = f.latency(tn, cmd)
            row += [p50, p99, p50 / f.latency(tn, "PING")[0], rt]
        print("%-16s %-10s | %7.0f %7.0f %7.2f %6s | %7.0f %7.0f %7.2f %6s | %7.2f %7.2f"
              % (cmd, kind, row[0], row[1], row[2], "-" if row[3] is None else "%.2f" % row[3],
                 row[4], row[5], row[6], "-" if row[7] is None else "%.2f" % row[7],
                 row[4] / row[0], row[5] / row[1]))
    print()
    print("Throughput, ops/s, requests back to back (x PING: PING's ops/s over the "
          "command's, same topology and load)")
    print("%-16s %-10s | %8s %7s %8s %7s | %8s %7s %8s %7s | %7s %7s"
          % ("command", "commit", "1 client", "x PING", "4 client", "x PING",
             "1 client", "x PING", "4 client", "x PING", "1 cl.", "4 cl."))
    print("%-27s | %-34s | %-34s | %s" % ("", "single node", "cluster", "cluster/single"))
    for cmd, kind in cmds:
        row = []
        for tn in ("single", "cluster"):
            row += [f.one(tn, cmd), f.one(tn, "PING") / f.one(tn, cmd),
                    f.four(tn, cmd), f.four(tn, "PING") / f.four(tn, cmd)]
        print("%-16s %-10s | %8.0f %7.1f %8.0f %7.1f | %8.0f %7.1f %8.0f %7.1f | %7.2f %7.2f"
              % (cmd, kind, row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7],
                 row[4] / row[0], row[6] / row[2]))
    print()
    print("CPU per command, µs, during the 1-client back-to-back run (/proc: keygated; "
          "Redis: every redis-server of the store, replicas included)")
    print("%-16s %-10s | %8s %8s | %8s %8s | %7s %7s"
          % ("command", "commit", "keygated", "Redis", "keygated", "Redis", "kg", "Redis"))
    print("%-27s | %-17s | %-17s | %s" % ("", "single node", "cluster", "cluster/single"))
    for cmd, kind in cmds[2:]:
        sk, sr = f.cpu_per("single", cmd)
        ck, cr = f.cpu_per("cluster", cmd)
        print("%-16s %-10s | %8.0f %8.0f | %8.0f %8.0f | %7.2f %7.2f"
              % (cmd, kind, sk, sr, ck, cr, ck / sk if sk else 0, cr / sr if sr else 0))


if __name__ == "__main__":
    main()
