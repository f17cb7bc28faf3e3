#!/usr/bin/env python3
"""bench_scale - the admin figures of issue 12 at team sizes, in one run.

Starts a private redis-server and keygated (tests/lib/kgtest.py), builds
a team of M members (default 2,000) and K keys (default 10,000), then
measures, one command at a time over the admin socket, next to a `ping`
baseline measured in the same run:

  key.get                        goal <= 0.3 ms p50 at 2,000 members
  key.list, a page of 100        goal <= 5 ms p50 at 10,000 keys (owner)
  key.list, a user's page        a user-role member with 1 key in 100
  team.get                       all M members
  team.get, a page of 100 members
  team.member.add                adds/s at M members (pipelined 32 deep)

Usage: bench_scale.py [--members M] [--keys K] [--rounds R]
"""
import argparse
import json
import os
import socket
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "lib"))
import kgtest  # noqa: E402


class Pipe:
    """A raw admin connection that can keep several requests in flight."""

    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.connect(path)
        self.f = self.s.makefile("rb")

    def many(self, reqs, depth=32):
        out, sent, i = [], 0, 0
        while len(out) < len(reqs):
            while sent < len(reqs) and sent - len(out) < depth:
                self.s.sendall((json.dumps(reqs[sent]) + "\n").encode())
                sent += 1
            r = json.loads(self.f.readline())
            if not r.get("ok"):
                raise SystemExit("failed: %r" % r)
            out.append(r["result"])
            i += 1
        return out

    def timed(self, req, rounds):
        """p50 and p99 in ms of `rounds` calls of req, one at a time."""
        lat = []
        line = (json.dumps(req) + "\n").encode()
        for _ in range(rounds):
            t0 = time.perf_counter()
            self.s.sendall(line)
            r = json.loads(self.f.readline())
            lat.append((time.perf_counter() - t0) * 1000)
            if not r.get("ok"):
                raise SystemExit("failed: %r" % r)
        lat.sort()
        return statistics.median(lat), lat[int(len(lat) * 0.99) - 1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--members", type=int, default=2000)
    ap.add_argument("--keys", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=300)
    a = ap.parse_args()

    env = kgtest.Env()
    try:
        p = Pipe(env.socket_path)
        owner = p.many([{"cmd": "user.signup", "email": "owner@bench.example", "name": "Owner"}])[0]
        O, T = owner["user_id"], owner["team_id"]
        t0 = time.time()
        users = p.many([{"cmd": "user.signup", "email": "m%d@bench.example" % i, "name": "M%d" % i}
                        for i in range(a.members - 1)])
        uids = [u["user_id"] for u in users]
        p.many([{"cmd": "team.member.add", "actor": O, "team": T, "user": u, "role": "user"}
                for u in uids[:-200]])
        t_add0 = time.time()
        p.many([{"cmd": "team.member.add", "actor": O, "team": T, "user": u, "role": "user"}
                for u in uids[-200:]])
        adds = 200 / (time.time() - t_add0)
        viewer = uids[0]
        keys = p.many([{"cmd": "key.create", "actor": O, "team": T, "name": "k%d" % i,
                        "users": [viewer] if i % 100 == 0 else [O]} for i in range(a.keys)])
        setup = time.time() - t0
        kid = keys[len(keys) // 2]["key_id"]

        ping = p.timed({"cmd": "ping"}, a.rounds)
        rows = [
            ("ping (baseline)", ping, None),
            ("key.get", p.timed({"cmd": "key.get", "actor": O, "key": kid}, a.rounds), 0.3),
            ("key.list, page of 100 (owner)",
             p.timed({"cmd": "key.list", "actor": O, "team": T, "limit": 100}, a.rounds), 5.0),
            ("key.list, page of 100 (user, 1% of keys)",
             p.timed({"cmd": "key.list", "actor": viewer, "team": T, "limit": 100}, a.rounds), None),
            ("team.get, page of 100 members",
             p.timed({"cmd": "team.get", "actor": O, "team": T, "limit": 100}, a.rounds), None),
            ("team.get, all members",
             p.timed({"cmd": "team.get", "actor": O, "team": T}, max(20, a.rounds // 10)), None),
        ]
        print("keygated admin at scale: a team of %d members and %d keys (setup %.1f s), "
              "Redis on a Unix socket, one call at a time" % (a.members, a.keys, setup))
        print("%-42s %9s %9s %9s  %s" % ("command", "p50 ms", "p99 ms", "vs ping", "goal"))
        for name, (p50, p99), goal in rows:
            g = "" if goal is None else ("<= %.1f ms p50: %s" % (goal, "MET" if p50 <= goal else "MISSED"))
            print("%-42s %9.3f %9.3f %8.2fx  %s" % (name, p50, p99, p50 / ping[0], g))
        print("%-42s %9.0f /s (pipelined 32 deep, the last 200 of %d members)" %
              ("team.member.add", adds, a.members))
    finally:
        env.close()


if __name__ == "__main__":
    main()
