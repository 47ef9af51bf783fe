"""`python -m bench.cpusplit`: scenario c's CPU per request split into user and kernel time.

    python -m bench.cpusplit [--rate 50] [--duration 10] [--repeat 2]
    python -m bench.cpusplit --wrk chat.lua [--duration 10]     (scenario a's closed loop)
    python -m bench.cpusplit --wrk stream16_events.lua --configs A.yaml B.yaml   (a feature's price)

Why. In scenario c (realistic streams at a fixed rate) fleetproxy spends more CPU per request
than nginx, and strace shows the same system calls per token event for both. This says which
half the difference is in: for fleetproxy, nginx and the uvloop floor in front of one
simulator (proxies and simulator pinned to CPU 1, the open-loop client to CPU 0, as in
`python -m bench --pin`), each proxy's user and system time per request (utime and stime of its
process tree from /proc, 10 ms ticks: a run needs a few hundred requests to say anything) and
its voluntary and involuntary context switches per request. Targets run in turn, ``--repeat``
times after a 2 s warm-up each. ``--wrk SCRIPT`` loads them as scenario a does instead (wrk,
one thread, 32 connections, a bench/lua script): at saturation, where the proxies' CPU per
request is compared. ``--configs A B`` runs fleetproxy alone, once per config file, in place
of the three targets: which half a feature's price is in (observing: bench/configs). Output: a
Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

from . import openloop, wrk
from .cpu import TICK, tree_pids
from .procs import Fleet, pin
from .stats import median


def sample(pids: list[int]) -> tuple[float, float, int, int]:
    """(user s, system s, voluntary, involuntary context switches) summed over ``pids``."""
    user = system = voluntary = involuntary = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
        fields = raw[raw.rindex(b")") + 2:].split()
        user += int(fields[11])
        system += int(fields[12])
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("voluntary_ctxt_switches"):
                    voluntary += int(line.split()[1])
                elif line.startswith("nonvoluntary_ctxt_switches"):
                    involuntary += int(line.split()[1])
    return user * TICK, system * TICK, voluntary, involuntary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cpusplit", description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=50.0, help="requests per second (default 50)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per run (default 10)")
    p.add_argument("--repeat", type=int, default=2, help="runs per target (default 2)")
    p.add_argument("--wrk", metavar="SCRIPT", help="closed loop: wrk -t1 -c32 with this bench/lua script")
    p.add_argument("--configs", nargs=2, metavar=("A", "B"), help="fleetproxy under two config files instead")
    args = p.parse_args(argv)
    if args.wrk and wrk.binary() is None:
        raise SystemExit("--wrk needs wrk (apt-get install wrk)")
    scripts = tempfile.TemporaryDirectory(prefix="cpusplit-")
    load = (lambda url, seconds: _closed(url, wrk.script(args.wrk, scripts.name), seconds)) if args.wrk else (
        lambda url, seconds: _load(url, args.rate, seconds))
    if len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("bench.cpusplit pins the client and the proxies apart: it needs 2 CPUs")
    rows = []
    with Fleet(server_cpus={1}) as fleet:
        sim = fleet.start_sim("sim")
        if args.configs:
            targets = [fleet.start_fleetproxy(os.path.basename(c), [sim], config_file=c) for c in args.configs]
        else:
            targets = [fleet.start_fleetproxy("fleetproxy", [sim]), fleet.start_floor("uvloop-floor", [sim])]
            if fleet_nginx := _nginx(fleet, sim):
                targets.insert(1, fleet_nginx)
        for target in targets:  # warm-up: pooled connections, first-call paths, allocator
            load(target.url, 2.0)
        for repeat in range(args.repeat):
            for target in targets:
                pids = tree_pids(target.procs[0].popen.pid)
                before = sample(pids)
                done = load(target.url, args.duration)
                after = sample(pids)
                d = [b - a for a, b in zip(before, after)]
                n = max(done, 1)
                rows.append((repeat + 1, target.name, done, d[0] / n * 1e6, d[1] / n * 1e6, d[2] / n, d[3] / n))
                print(f"[{repeat + 1}/{args.repeat}] {target.name}: {done} requests", file=sys.stderr, flush=True)
    scripts.cleanup()
    if args.wrk:
        configs = f" --configs {' '.join(args.configs)}" if args.configs else ""
        print(f"# {args.wrk}, closed loop: user and kernel CPU per request\n")
        print(f"`python -m bench.cpusplit --wrk {args.wrk}{configs} --duration {args.duration:g} --repeat {args.repeat}`; "
              "simulator and proxies on CPU 1, wrk -t1 -c32 on CPU 0; utime/stime in 10 ms ticks.\n")
    else:
        print(f"# Scenario c at {args.rate:g} req/s: user and kernel CPU per request\n")
        print(f"`python -m bench.cpusplit --rate {args.rate:g} --duration {args.duration:g} --repeat {args.repeat}`; "
              "simulator and proxies on CPU 1, the open-loop client on CPU 0; ttft 50 ms, itl 10 ms, 16-64 tokens; "
              "utime/stime in 10 ms ticks.\n")
    print("| run | target | requests | user µs/req | system µs/req | voluntary cs/req | involuntary cs/req |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.1f} | {r[4]:.1f} | {r[5]:.2f} | {r[6]:.3f} |")
    if args.repeat > 1:  # a run's 10 ms ticks are coarse: the medians say more than any one run
        for name in dict.fromkeys(r[1] for r in rows):
            mine = [r for r in rows if r[1] == name]
            cells = [f"{median([r[i] for r in mine]):{f}}" for i, f in ((3, ".1f"), (4, ".1f"), (5, ".2f"), (6, ".3f"))]
            print(f"| median | {name} | {median([r[2] for r in mine]):.0f} | " + " | ".join(cells) + " |")
    return 0


def _closed(url: str, script: str, duration: float) -> int:
    """wrk against ``url`` for ``duration`` s (scenario a's load, on CPU 0); the requests it completed."""
    out = subprocess.run([*pin([0]), *wrk.argv(url, script, max(1, round(duration)), 32)],
                         capture_output=True, text=True, check=True).stdout
    result = wrk.parse(out)
    if result["errors"]:
        raise SystemExit(f"wrk saw errors against {url}: {result['error_kinds']}")
    return result["requests"]


def _load(url: str, rate: float, duration: float) -> int:
    """Run bench.openloop against ``url`` (on CPU 0); the requests that completed."""
    return openloop.run(url, rate, duration, pin([0]))["ok"]


def _nginx(fleet: Fleet, sim: str):
    from .procs import nginx_path

    return fleet.start_nginx("nginx", [sim]) if nginx_path() else None


if __name__ == "__main__":
    sys.exit(main())
