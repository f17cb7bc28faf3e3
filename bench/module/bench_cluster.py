#!/usr/bin/env python3
"""bench_cluster.py - kg_authorize on a Redis Cluster against one node (issue 11).

Not a test: run by hand after a build, it prints figures.

    python3 bench/module/bench_cluster.py [--n 5000]

A store made by keygated (tests/lib/kgtest.py Env, safety.paid_world) is
copied key by key (DUMP/RESTORE) to a standalone redis-server on a
loopback TCP port and to a Redis Cluster of 3 masters + 3 replicas
(tests/lib/kgcluster.py). One kg_hammer (blocking kg_authorize, a debit
per request, each with its own id, --us) runs N requests against each:
cold (cache_ttl_ms 0: every request is the cold script, one EVALSHA) and
warm (cache_ttl_ms 1000: the debit script). Prints p50/p99 in µs and the
Redis CPU per call of the scripts (INFO commandstats, evalsha) on the
node that served them. The standalone node has a replica, as each of the
cluster's masters does.

Then: warm debits on the standalone node with `durability local` and
`durability replica` (a WAIT for its replica after every debit), three
alternating rounds, and their p50 ratio; and the spread over the cluster's
3 masters of the slots of 10,000 team ids drawn as keygated draws them
(t_ + 12 base62 characters from a CSPRNG).
"""
import argparse
import os
import secrets
import string
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.join(HERE, "..", "..")
sys.path.insert(0, os.path.join(REPO, "tests", "faults"))
sys.path.insert(0, os.path.join(REPO, "tests", "lib"))
os.environ.setdefault("KEYGATED", os.path.join(REPO, "build", "daemon", "keygated"))
import safety  # noqa: E402
from safety import kgtest  # noqa: E402
import kgcluster  # noqa: E402

COST = safety.COST_SMALL_1000


def copy(env, put):
    for k in env.redis_scan_all():
        kb = k if isinstance(k, bytes) else k.encode()
        dump = env.redis("DUMP", kb)
        if dump is not None:
            put(kb, str(max(env.redis("PTTL", kb), 0)), dump)


def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(q * len(v)))]


def evalsha_usec(port):
    text = kgcluster.rcmd(port, "INFO", "commandstats").decode()
    for line in text.split("\r\n"):
        if line.startswith("cmdstat_evalsha:"):
            f = dict(x.split("=") for x in line.split(":", 1)[1].split(","))
            return float(f["usec_per_call"]), int(f["calls"])
    return 0.0, 0


B62 = string.digits + string.ascii_uppercase + string.ascii_lowercase


def team_id():
    return "t_" + "".join(secrets.choice(B62) for _ in range(12))


def run(env, w, redis_line, ttl, n, tag, extra=()):
    conf = os.path.join(env.tmp, "bench-%s.conf" % tag)
    lines = [l for l in env.config_lines() if not l.startswith("redis ")]
    with open(conf, "w") as f:
        f.write("\n".join(lines + [redis_line, "timeout_ms 1000", "cache_ttl_ms %d" % ttl]
                          + list(extra)) + "\n")
    out = os.path.join(env.tmp, "bench-%s.out" % tag)
    p = subprocess.run([safety.hammer_path(), "--config", conf, "--token-file", w["token_file"],
                        "--service", "text-generation", "--model", "small", "--param",
                        "input_tokens=1000", "--count", str(n), "--rid", tag, "--us", "--out", out],
                       capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        raise SystemExit("kg_hammer: " + p.stderr)
    us = []
    with open(out) as f:
        for line in f:
            parts = line.split()
            if parts[1] != "ok":
                raise SystemExit("%s: %s" % (tag, line))
            us.append(int(parts[6]))
    us = us[len(us) // 10:]            # the first tenth warms up
    return pct(us, 0.5), pct(us, 0.99)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5000)
    a = ap.parse_args()
    with kgtest.Env() as env:
        with env.client() as c:
            w = safety.paid_world(c, env, 10 * a.n * COST, name="bench")
        tmp = tempfile.mkdtemp(prefix="kgbench", dir=env.tmp)
        single = kgtest.free_port()
        sp = subprocess.Popen([kgtest.redis_server_path(), "--port", str(single), "--bind",
                               "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", tmp],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Its replica: the cluster's masters feed one each, so does it.
        rport = kgtest.free_port()
        rdir = os.path.join(tmp, "replica")
        os.makedirs(rdir)
        rp = subprocess.Popen([kgtest.redis_server_path(), "--port", str(rport), "--bind",
                               "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", rdir,
                               "--replicaof", "127.0.0.1", str(single)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cl = kgcluster.Cluster(tmp)
        try:
            kgtest.wait_for(lambda: kgcluster.rcmd(single, "PING") == "PONG", 10, "redis")
            cl.start()
            copy(env, lambda k, t, d: kgcluster.rcmd(single, "RESTORE", k, t, d, "REPLACE"))
            copy(env, lambda k, t, d: kgcluster.rcmd(cl.owner(kgcluster.slot_of(k)), "RESTORE",
                                                     k, t, d, "REPLACE"))
            owner = cl.owner(kgcluster.slot_of("{t:%s}" % w["team"]))
            print("n=%d per run (p50/p99 over the last 90%%), µs; evalsha usec_per_call" % a.n)
            for mode, ttl in (("cold", 0), ("warm", 1000)):
                for name, line, port in (("single", "redis 127.0.0.1:%d" % single, single),
                                         ("cluster", "redis " + cl.spec(), owner)):
                    kgcluster.rcmd(port, "CONFIG", "RESETSTAT")
                    p50, p99 = run(env, w, line, ttl, a.n, "%s-%s" % (mode, name))
                    usec, calls = evalsha_usec(port)
                    print("%-5s %-8s p50 %5d  p99 %6d   evalsha %.2f us/call (%d calls)"
                          % (mode, name, p50, p99, usec, calls))
            kgtest.wait_for(lambda: b"master_link_status:up" in
                            kgcluster.rcmd(rport, "INFO", "replication"), 20, "replica in sync")
            print("warm debits on the single node, durability local vs replica (WAIT 1 each):")
            p50s = {"local": [], "replica": []}
            for rnd in range(3):
                for d in ("local", "replica"):
                    p50, p99 = run(env, w, "redis 127.0.0.1:%d" % single, 1000, a.n,
                                   "dur-%s-%d" % (d, rnd), ["durability " + d])
                    p50s[d].append(p50)
                    print("  round %d %-8s p50 %5d  p99 %6d" % (rnd, d, p50, p99))
            print("durability replica / local p50: %.2fx (median of the rounds: %d vs %d us)"
                  % (pct(p50s["replica"], 0.5) / pct(p50s["local"], 0.5),
                     pct(p50s["replica"], 0.5), pct(p50s["local"], 0.5)))
            counts = {}
            for _ in range(10000):
                m = cl.owner(kgcluster.slot_of("{t:%s}" % team_id()))
                counts[m] = counts.get(m, 0) + 1
            print("10,000 team ids over %d masters: %s" % (len(counts), ", ".join(
                "%.1f %%" % (100.0 * c / 10000) for c in sorted(counts.values()))))
        finally:
            cl.stop()
            for p in (rp, sp):
                p.terminate()
                p.wait(10)


if __name__ == "__main__":
    main()
