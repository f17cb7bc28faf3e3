#!/usr/bin/env python3
"""Throughput of haproxy with and without keygate-spoa, measured in the same run.

Starts its own redis-server, keygated, keygate-spoa and haproxy (the
configuration of docs/haproxy.md, tests/haproxy/kghaproxy.py) on loopback /
Unix sockets in temp dirs, makes a paid key with a pay-as-you-go service
on a well-funded wallet, warms the agent's cache, then runs `wrk` against
the same upstream:

    baseline   /open/x   no keygate (the same frontend, rules and backend)
    keygate    /gen/x    SPOE round trip to keygate-spoa, pay-as-you-go:
                         every request is debited in Redis
    free       /free/x   (with --free) a free-tier service without quota

and prints requests/s, latency percentiles and the ratio keygate/baseline
(goal, issue 16: >= 0.5). The variants run in alternation, --rounds times
each, and the median round of each is compared.

usage: bench_haproxy.py [--connections 64] [--duration 5] [--rounds 3]
                        [--threads 1] [--hap-threads 1] [--agents 1] [--free]
"""

import argparse
import os
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(REPO, "tests", "lib"))
sys.path.insert(0, os.path.join(REPO, "tests", "nginx"))
sys.path.insert(0, os.path.join(REPO, "tests", "haproxy"))
sys.path.insert(0, os.path.join(REPO, "bench", "nginx"))

import kgtest  # noqa: E402
import kgnginx  # noqa: E402
import kghaproxy  # noqa: E402
from bench_nginx import run_wrk, line  # noqa: E402  (wrk runner and output parser)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--duration", type=int, default=5, help="seconds per run")
    ap.add_argument("--rounds", type=int, default=3, help="runs of each variant, alternated")
    ap.add_argument("--threads", type=int, default=1, help="wrk threads")
    ap.add_argument("--hap-threads", type=int, default=1, help="haproxy nbthread")
    ap.add_argument("--free", action="store_true", help="also measure a free-tier service")
    ap.add_argument("--wrk", default=shutil.which("wrk") or "/usr/bin/wrk")
    ap.add_argument("--verbose", action="store_true", help="print wrk's own output")
    args = ap.parse_args()

    env = kgtest.Env(catalog=kgnginx.catalog(), extra_config=["timeout_ms 1000"])
    agent = hap = None
    try:
        c = env.client()
        a = kgnginx.setup_accounts(c, credit_micros=10 ** 12)
        agent = kghaproxy.Agent(env.config_path, tmp=env.tmp)
        hap = kghaproxy.Haproxy(agent.haproxy_address, threads=args.hap_threads)
        base = "http://127.0.0.1:%d" % hap.port
        gen = {"Authorization": "Bearer " + a["paid_token"], "X-Model": "small",
               "X-Input-Tokens": "10", "X-Output-Tokens": "10"}
        cost = c.ok("price.estimate", service="text-generation", model="small",
                    params={"input_tokens": 10, "output_tokens": 10})["cost_micros"]

        for path, h in (("/open/x", {}), ("/gen/x", gen)):
            for _ in range(20):
                status, body = hap.get_echo(path, h)
                if status != 200:
                    raise SystemExit("warm-up %s answered %s: %s" % (path, status, body))
        before = c.ok("wallet.get", a["user"], wallet=a["wallet"])["balance_micros"]

        print("haproxy nbthread %d, 1 keygate-spoa, wrk %d thread(s), %d connections, "
              "%d s per run, %d round(s), loopback; load average before: %s"
              % (args.hap_threads, args.threads, args.connections, args.duration,
                 args.rounds, " ".join(open("/proc/loadavg").read().split()[:3])))
        runs = [("baseline", "/open/x", {}), ("keygate", "/gen/x", gen)]
        if args.free:
            runs.append(("free", "/free/x", {"Authorization": "Bearer " + a["free_token"]}))
        rounds = {name: [] for name, _, _ in runs}
        for i in range(args.rounds):
            for name, path, h in runs:
                r = run_wrk(base + path, h, args)
                rounds[name].append(r)
                if args.verbose:
                    print(r["raw"])
                print("  round %d  %s" % (i + 1, line(name, r)))
                time.sleep(0.5)
        res = {}
        for name, _, _ in runs:
            ordered = sorted(rounds[name], key=lambda r: r["rps"])
            res[name] = ordered[len(ordered) // 2]
            res[name]["requests"] = sum(r["requests"] for r in rounds[name])
            res[name]["non2xx"] = sum(r["non2xx"] for r in rounds[name])
        print("median round of each:")
        for name, _, _ in runs:
            print(line(name, res[name]))

        after = c.ok("wallet.get", a["user"], wallet=a["wallet"])["balance_micros"]
        charged = (before - after) // cost if cost else 0
        ratio = res["keygate"]["rps"] / res["baseline"]["rps"]
        print("ratio keygate/baseline: %.2f   (goal >= 0.50)" % ratio)
        if args.free:
            print("ratio free/baseline:    %.2f" % (res["free"]["rps"] / res["baseline"]["rps"]))
        print("wallet debits during the keygate runs: %d (wrk counted %d requests, %d non-2xx)"
              % (charged, res["keygate"]["requests"], res["keygate"]["non2xx"]))
        bad = res["keygate"]["non2xx"] or res["baseline"]["non2xx"]
        return 1 if bad else 0
    finally:
        if hap is not None:
            hap.close()
        if agent is not None:
            agent.stop()
        env.close()


if __name__ == "__main__":
    sys.exit(main())
