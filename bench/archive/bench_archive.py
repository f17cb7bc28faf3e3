#!/usr/bin/env python3
"""bench_archive - the ledger archive's figures (issue 12), per engine, in one run:

  1. N/2 debits through libkeygate (kg_hammer) with archiving OFF: the
     baseline debit p50 and Redis used_memory growth (the whole ledger in Redis)
  2. keygated restarted with archiving ON: the backlog archived (throughput,
     entries/s, batches of archive_batch)
  3. N/2 more debits with archiving ON, while it archives: debit p50 (ratio
     to 1.), used_memory growth of the ledger key (flat once the tail is full)
  4. wallet.ledger, a page of 100 at the deepest cursor (seq 100: the
     archive's oldest rows) and at the newest: median of 20 calls
  5. keygate fsck (with the archive): wall time and peak RSS
  6. paced debits (one gateway, --pause-us between requests: a load that
     leaves the CPUs idle part of the time, unlike 3.), in alternating
     rounds with keygated stopped (SIGSTOP: nothing archived) and running
     (archiving as the entries arrive): the p50 a gateway sees from the
     archive's work in Redis, apart from CPU contention on this machine

Usage: bench_archive.py [--n N] [--engine sqlite|postgresql|both]
Default N = 20000 (seconds); issue 12's figure is N = 1000000. Needs a
build tree (build/) with keygated, keygate and kg_hammer; the PostgreSQL
run needs Debian's postgresql and root (tests/archive/kgpg.py).
"""
import argparse
import os
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(REPO, "tests", "lib"))
sys.path.insert(0, os.path.join(REPO, "tests", "faults"))
sys.path.insert(0, os.path.join(REPO, "tests", "archive"))
import kgtest  # noqa: E402
import safety  # noqa: E402
import kgpg  # noqa: E402

TAIL = 1000


def used_memory(env):
    info = env.redis("INFO", "memory")
    if isinstance(info, bytes):
        info = info.decode()
    for line in info.splitlines():
        if line.startswith("used_memory:"):
            return int(line.split(":")[1])
    return 0


def debits(env, w, gw, n, prefix, workers=2, pause_us=0):
    """n debits from `workers` gateways at once; returns (p50 us, wall s)."""
    per = n // workers
    t0 = time.time()
    hs = []
    for i in range(workers):
        out = os.path.join(env.tmp, "h%s%d.out" % (prefix, i))
        argv = [safety.hammer_path(), "--config", gw, "--token-file", w["token_file"],
                "--service", "text-generation", "--model", "small", "--param",
                "input_tokens=1000", "--count", str(per), "--rid", "%s%d" % (prefix, i),
                "--out", out, "--us"] + (["--pause-us", str(pause_us)] if pause_us else [])
        hs.append((subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE), out))
    lat = []
    for p, out in hs:
        p.wait()
        with open(out) as f:
            for line in f:
                parts = line.split()
                if parts[1] != "ok":
                    raise SystemExit("debit refused: %s" % line)
                lat.append(int(parts[6]))
    lat.sort()
    return lat[len(lat) // 2], time.time() - t0


def median_ms(fn, k=20):
    ts = []
    for _ in range(k):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1000)
    ts.sort()
    return ts[len(ts) // 2]


def run(engine, n):
    env = kgtest.Env(start_daemon=False)
    pg = None
    try:
        if engine == "sqlite":
            arch = "archive sqlite:%s" % os.path.join(env.tmp, "archive.db")
        else:
            pg = kgpg.PrivatePg()
            arch = "archive postgresql:%s" % pg.conninfo
        env.write_config(["ledger_tail %d" % TAIL, "usage_counters on"])
        env.start_daemon()
        c = env.client()
        w = safety.paid_world(c, env, 10 ** 15)
        gw = safety.gateway_config(env)
        lk = "kg:{t:%s}:ledger:%s" % (w["team"], w["wallet"])
        wk = "kg:{t:%s}:wallet:%s" % (w["team"], w["wallet"])
        m0 = used_memory(env)
        p50_off, wall_off = debits(env, w, gw, n // 2, "off")
        m1 = used_memory(env)
        led1 = int(env.redis("MEMORY", "USAGE", lk))

        env.kill_daemon()
        env.write_config([arch, "ledger_tail %d" % TAIL, "archive_batch 1000",
                          "archive_interval_ms 100"])
        t0 = time.time()
        backlog = int(env.redis("LLEN", lk)) - TAIL
        env.start_daemon()
        t1 = None                              # the first batch trimmed
        while True:
            ln = int(env.redis("LLEN", lk))
            if t1 is None and ln < backlog + TAIL:
                t1, first = time.time(), backlog + TAIL - ln
            if ln <= TAIL:
                break
            time.sleep(0.002)
        arch_s = time.time() - t0
        steady_s = time.time() - t1 if t1 else 0
        m2 = used_memory(env)
        p50_on, wall_on = debits(env, w, gw, n - n // 2, "on")
        while int(env.redis("LLEN", lk)) > TAIL:
            time.sleep(0.01)
        m3 = used_memory(env)
        led3 = int(env.redis("MEMORY", "USAGE", lk))
        archived = int(env.redis("HGET", wk, "archived_count"))

        c = env.client()
        deep = median_ms(lambda: c.ok("wallet.ledger", w["owner"], wallet=w["wallet"], limit=100,
                                      cursor="L1.100"))
        top = median_ms(lambda: c.ok("wallet.ledger", w["owner"], wallet=w["wallet"], limit=100))

        t0 = time.time()
        p = subprocess.Popen([safety.cli_path(), "--json", "fsck", "--config", env.config_path],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _, _, ru = os.wait4(p.pid, 0)
        fsck_s = time.time() - t0
        out = p.stdout.read().decode()
        clean = '"clean":true' in out

        print("engine %s, N = %d debits (%d with archiving off, then %d on), ledger_tail %d"
              % (engine, n, n // 2, n - n // 2, TAIL))
        print("  archive throughput:  %d backlog entries in %.2f s = %.0f entries/s "
              "(daemon start included)" % (backlog, arch_s, backlog / arch_s if arch_s else 0))
        print("                       from the first trim: %d entries in %.2f s = %.0f entries/s"
              % (backlog - first, steady_s, (backlog - first) / steady_s if steady_s else 0))
        print("  debit p50:           off %d us, on %d us: %.2fx (goal <= 1.1x)"
              % (p50_off, p50_on, p50_on / p50_off if p50_off else 0))
        print("  debit rate:          off %.0f/s, on %.0f/s (2 gateways)"
              % (n // 2 / wall_off, (n - n // 2) / wall_on))
        print("  Redis used_memory:   +%.1f MB for N/2 debits off (ledger key %.1f MB); "
              "after archiving %.1f MB; +%.1f MB for N/2 on (ledger key %.2f MB, flat)"
              % ((m1 - m0) / 1e6, led1 / 1e6, (m2 - m0) / 1e6, (m3 - m2) / 1e6, led3 / 1e6))
        print("  (the rest of the growth is the 24 h request-id records and usage counters, "
              "not the ledger)")
        print("  archived:            %d entries; Redis tail %s" % (archived, env.redis("LLEN", lk)))
        print("  wallet.ledger 100:   %.2f ms at depth %d (seq 100..1), %.2f ms at the newest"
              % (deep, archived + TAIL - 100, top))
        print("  fsck:                %.2f s, peak RSS %.1f MB, clean %s"
              % (fsck_s, ru.ru_maxrss / 1024, clean))

        paced = {"stopped": [], "archiving": []}
        k = max(2000, n // 40)
        for rnd in range(3):
            for mode in ("stopped", "archiving"):
                env.daemon.send_signal(signal.SIGSTOP if mode == "stopped" else signal.SIGCONT)
                p50, _ = debits(env, w, gw, k, "p%s%d" % (mode[0], rnd), workers=1, pause_us=300)
                paced[mode].append(p50)
        env.daemon.send_signal(signal.SIGCONT)
        ps, pa = sorted(paced["stopped"])[1], sorted(paced["archiving"])[1]
        print("  paced debit p50:     keygated stopped %s us, archiving %s us (one gateway, "
              "300 us between requests, %d a round): median %.2fx (goal <= 1.1x)"
              % ("/".join(map(str, paced["stopped"])), "/".join(map(str, paced["archiving"])),
                 k, pa / ps if ps else 0))
    finally:
        env.close()
        if pg:
            pg.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--engine", default="both", choices=("sqlite", "postgresql", "both"))
    a = ap.parse_args()
    engines = ["sqlite", "postgresql"] if a.engine == "both" else [a.engine]
    for e in engines:
        if e == "postgresql" and not kgpg.available():
            print("engine postgresql: skipped (needs Debian's postgresql and root)")
            continue
        run(e, a.n)


if __name__ == "__main__":
    main()
