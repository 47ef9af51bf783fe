"""`python -m bench.idle`: what an idle fleetproxy costs, in CPU and in wakeups a second.

    python -m bench.idle [--seconds 10] [--rounds 3] [ROOT ...]

Why. An idle worker is never asleep: it checks every backend's health, scrapes vLLM's loads,
sweeps its pools and samples its gauges. On a fleet of proxies that is CPU nobody asked for,
and on a small VM each wakeup costs 100-200 µs however little it does, so the count of
wakeups matters as much as the work. This starts fleetproxy (supervisor and one worker, its
defaults) in front of one simulator, waits 3 s, then reads over ``--seconds`` the CPU time of
its process tree (schedstat) and its voluntary context switches (each one a sleep, so a
wakeup after it). ROOT: a checkout of fleetproxy, built (``setup.py build_ext --inplace``),
to run instead of this one; several are measured in turn, round by round, so that they share
the machine's moods (``git worktree add DIR REV`` makes one of another revision).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time

from .cpu import tree_pids, tree_seconds
from .procs import Fleet, wait_port

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _switches(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches"):
                        total += int(line.split()[1])
    return total


def measure(fleet: Fleet, root: str, sim: str, seconds: float) -> tuple[float, float]:
    """(CPU ms a second, wakeups a second) of fleetproxy from ``root``, idle."""
    port, admin = fleet.port(), fleet.port()
    argv = [sys.executable, "-m", "proxy", "--listen", f"127.0.0.1:{port}", "--admin-listen",
            f"127.0.0.1:{admin}", "--backend", sim, "--log-level", "warning"]
    proc = subprocess.Popen(argv, cwd=root, env={**os.environ, "PYTHONPATH": root},
                            stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_port(port, proc, timeout=60)
        time.sleep(3)
        pids = tree_pids(proc.pid)
        cpu, woke = tree_seconds([proc.pid]), _switches(pids)
        time.sleep(seconds)
        cpu, woke = tree_seconds([proc.pid]) - cpu, _switches(pids) - woke
        return 1000 * cpu / seconds, woke / seconds
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.idle", description=__doc__.split("\n\n")[0])
    parser.add_argument("roots", nargs="*", default=[HERE], metavar="ROOT")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    runs: dict[str, list[tuple[float, float]]] = {root: [] for root in args.roots}
    with Fleet() as fleet:
        sim = fleet.start_sim("sim", [])
        for _ in range(args.rounds):
            for root in args.roots:
                runs[root].append(measure(fleet, os.path.abspath(root), sim, args.seconds))
    print("| fleetproxy | idle CPU ms/s (median) | every round | wakeups/s (median) | every round |")
    print("|---|---|---|---|---|")
    for root, got in runs.items():
        cpu, woke = [c for c, _ in got], [w for _, w in got]
        print(f"| {root} | {statistics.median(cpu):.2f} | {' '.join(f'{c:.2f}' for c in cpu)} | "
              f"{statistics.median(woke):.1f} | {' '.join(f'{w:.1f}' for w in woke)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
