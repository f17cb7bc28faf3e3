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
                        [--threads 1] [--hap-threads 1] [--free]
"""

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(REPO, "tests", "lib"))
sys.path.insert(0, os.path.join(REPO, "tests", "haproxy"))
sys.path.insert(0, os.path.join(REPO, "bench", "nginx"))

import kgtest  # noqa: E402
import kggateway  # noqa: E402
import kghaproxy  # noqa: E402
from bench_nginx import add_wrk_args, compare  # noqa: E402  (the wrk runs, shared)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_wrk_args(ap)
    ap.add_argument("--hap-threads", type=int, default=1, help="haproxy nbthread")
    args = ap.parse_args()

    env = kgtest.Env(catalog=kggateway.catalog(), extra_config=["timeout_ms 1000"])
    agent = hap = None
    try:
        c = env.client()
        a = kggateway.setup_accounts(c, credit_micros=10 ** 12)
        agent = kghaproxy.Agent(env.config_path, tmp=env.tmp)
        hap = kghaproxy.Haproxy(agent.haproxy_address, threads=args.hap_threads)
        return compare(hap, c, a, args,
                       "haproxy nbthread %d, 1 keygate-spoa" % args.hap_threads)
    finally:
        if hap is not None:
            hap.close()
        if agent is not None:
            agent.stop()
        env.close()


if __name__ == "__main__":
    sys.exit(main())
