"""`python -m bench.profile`: where each proxy's CPU per request goes, by component and function.

    python -m bench.profile [--wrk chat.lua] [--wrk chat_system.lua] [--open 50]
                            [--targets fleetproxy,nginx] [--duration 8] [--top 12] [--out FILE]

Why. `bench.ab` says how much more CPU a request costs through fleetproxy than through nginx;
`bench.cpusplit` says whether it is user or kernel time. Neither says in whose code. This runs
each proxy in front of one simulator (proxies and simulator pinned to CPU 1, wrk -t1 -c32 on
CPU 0, as `python -m bench --pin` does; or ``--open RATE``: scenario c's paced streams from
bench.openloop at RATE requests a second) and samples its process tree with Linux perf
(cpu-clock, ``--freq`` a second) for exactly as long as the load runs: every sample is 1/freq s of
the proxy's CPU, so samples ÷ requests is µs per request, split by where it was spent — the
kernel, CPython, libc, uvloop, fleetproxy's compiled modules, nginx — and by function. The
process tree's CPU time from /proc over the same run is printed beside the sampled total, as a
check that the samples cover it.

Read with care: on a virtual machine perf's cpu-clock samples land where interrupts are enabled
again, so a kernel function such as ``finish_task_switch`` or ``_raw_spin_unlock_irqrestore``
stands for the work done with interrupts off before it. Compare two targets, or two loads, run
by this tool on one machine; a single function's µs moves by 10-20% from run to run.

Needs perf (Debian: apt-get install linux-perf) allowed to sample other processes (root, or
kernel.perf_event_paranoid <= 1), and wrk.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable

from . import openloop, wrk
from .cpu import tree_pids
from .cpusplit import sample
from .procs import Fleet, nginx_path, pin

TARGETS = ("fleetproxy", "nginx", "uvloop-floor")
# A line of `perf report -F sample,dso,sym`: samples, the object, [k] or [.], the function.
_LINE = re.compile(r"\s*(\d+)\s+(\S+)\s+\[[k.]\]\s+(.*)")


def _fleetproxy_objects() -> set[str]:
    """The file names (up to the first dot) of fleetproxy's compiled modules, as perf names them."""
    from _speedups import COMPILED, SHARED_UTILITY

    # The twins of the seam's two specification modules (framing, prefix), then the data path.
    return {name.rsplit(".", 1)[-1] for name in COMPILED} | {"framing_c", "prefix_c", SHARED_UTILITY}


def component(dso: str, ours: set[str]) -> str:
    """The component a sample's object belongs to."""
    base = os.path.basename(dso)
    stem = base.split(".", 1)[0]
    if dso.startswith("[kernel") or base == "[vdso]":
        return "kernel"
    if base.startswith("libpython"):
        return "CPython"
    if base.startswith(("libc.so", "libm.so", "ld-linux")):
        return "libc"
    if stem == "loop":
        return "uvloop (libuv)"
    if stem in ours:
        return "fleetproxy (compiled)"
    if stem == "parser":
        return "httptools"
    if base.startswith("nginx"):
        return "nginx"
    return "other"


def parse_report(text: str) -> Counter:
    """{(object, function): samples} from `perf report -F sample,dso,sym --stdio`."""
    samples: Counter = Counter()
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            samples[(m.group(2), m.group(3).strip())] += int(m.group(1))
    return samples


def can_record() -> str:
    """Why perf cannot sample here ("" when it can)."""
    if shutil.which("perf") is None:
        return "perf is not installed (Debian: apt-get install linux-perf)"
    with tempfile.TemporaryDirectory() as d:
        run = subprocess.run(["perf", "record", "-q", "-o", os.path.join(d, "probe.data"), "--", "true"],
                             capture_output=True, text=True)
    if run.returncode != 0:
        return f"perf cannot record here: {run.stderr.strip()[-300:]}"
    return ""


def _load(url: str, load: str, duration: int, where: str) -> tuple[list[str], Callable[[str], int]]:
    """The command that puts ``load`` (a bench/lua script, or "open:RATE") on ``url`` for
    ``duration`` s from CPU 0, and what says how many requests it completed once it has run
    (given its stdout: wrk's report line; bench.openloop writes a file)."""
    if load.startswith("open:"):
        out = os.path.join(where, "openloop.json")

        def done(stdout: str) -> int:
            with open(out) as f:
                result = json.load(f)
            if result["errors"]:
                raise SystemExit(f"bench.openloop saw errors against {url}: {result['error_kinds']}")
            return result["ok"]

        return [*pin([0]), *openloop.argv(url, float(load[5:]), duration, out)], done

    def requests(stdout: str) -> int:
        result = wrk.parse(stdout)
        if result["errors"]:
            raise SystemExit(f"wrk saw errors against {url}: {result['error_kinds']}")
        return result["requests"]

    return [*pin([0]), *wrk.argv(url, wrk.script(load, where), duration, 32)], requests


def profile(url: str, pids: list[int], load: str, duration: int, freq: int, where: str) -> dict:
    """Sample ``pids`` while ``load`` runs on ``url`` for ``duration`` s: requests, samples by
    (object, function), and the CPU seconds /proc counted for them over the same time."""
    data = os.path.join(where, "perf.data")
    command, requests = _load(url, load, duration, where)
    before = sample(pids)
    run = subprocess.run(["perf", "record", "-q", "-F", str(freq), "-o", data, "-p", ",".join(map(str, pids)),
                          "--", *command], capture_output=True, text=True, cwd=openloop.ROOT)
    after = sample(pids)
    if run.returncode != 0:
        raise SystemExit(f"perf record failed ({run.returncode}): {run.stderr[-500:]}")
    done = requests(run.stdout)
    report = subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort", "dso,sym", "-g", "none",
                             "--stdio", "-F", "sample,dso,sym"], capture_output=True, text=True, check=True).stdout
    os.unlink(data)
    return {"requests": done, "samples": parse_report(report),
            "cpu_s": (after[0] - before[0]) + (after[1] - before[1])}


def table(name: str, runs: dict, freq: int, top: int, ours: set[str]) -> str:
    """The Markdown for one load: µs per request by component for every target, then each
    target's ``top`` functions."""
    per = {t: 1e6 / freq / max(r["requests"], 1) for t, r in runs.items()}
    parts: dict[str, Counter] = {}
    for t, r in runs.items():
        c: Counter = Counter()
        for (dso, _), n in r["samples"].items():
            c[component(dso, ours)] += n * per[t]
        parts[t] = c
    names = sorted({k for c in parts.values() for k in c}, key=lambda k: -max(c[k] for c in parts.values()))
    targets = list(runs)
    lines = [f"## {name}\n", "| µs per request | " + " | ".join(targets) + " |", "|---" * (len(targets) + 1) + "|"]
    for k in names:
        lines.append(f"| {k} | " + " | ".join(f"{parts[t][k]:.2f}" for t in targets) + " |")
    lines.append("| **sampled, all** | " + " | ".join(f"**{sum(parts[t].values()):.2f}**" for t in targets) + " |")
    lines.append("| /proc, utime + stime | " + " | ".join(
        f"{runs[t]['cpu_s'] * 1e6 / max(runs[t]['requests'], 1):.2f}" for t in targets) + " |")
    lines.append("| requests | " + " | ".join(str(runs[t]["requests"]) for t in targets) + " |")
    if "fleetproxy" in runs:  # its compiled part, module by module: where in the request's path it goes
        modules: Counter = Counter()
        for (dso, _), n in runs["fleetproxy"]["samples"].items():
            if component(dso, ours) == "fleetproxy (compiled)":
                modules[os.path.basename(dso).split(".", 1)[0]] += n * per["fleetproxy"]
        lines += ["", "fleetproxy's compiled modules:", "", "| µs per request | module |", "|---|---|"]
        lines += [f"| {v:.2f} | {k} |" for k, v in modules.most_common()]
    for t in targets:
        lines += ["", f"{t}, its {top} costliest functions:", "", "| µs per request | component | function |",
                  "|---|---|---|"]
        for (dso, sym), n in runs[t]["samples"].most_common(top):
            lines.append(f"| {n * per[t]:.2f} | {component(dso, ours)} | `{sym[:80]}` |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.splitlines()[0])
    p.add_argument("--wrk", action="append", metavar="SCRIPT", help="a bench/lua script (repeat for several; "
                   "default chat.lua and chat_system.lua unless --open is given)")
    p.add_argument("--open", action="append", metavar="RATE", type=float,
                   help="scenario c's paced streams (bench.openloop) at RATE requests a second (repeatable)")
    p.add_argument("--targets", default="fleetproxy,nginx", help=f"comma-separated, of {', '.join(TARGETS)}")
    p.add_argument("--duration", type=int, default=8, help="seconds of wrk (and of sampling) per target and load")
    p.add_argument("--freq", type=int, default=2999, help="samples a second")
    p.add_argument("--top", type=int, default=12, help="functions listed per target")
    p.add_argument("--out", help="also write the Markdown here")
    args = p.parse_args(argv)
    targets = [t for t in args.targets.split(",") if t]
    if unknown := set(targets) - set(TARGETS):
        raise SystemExit(f"unknown targets: {', '.join(sorted(unknown))} (known: {', '.join(TARGETS)})")
    loads = (args.wrk or ([] if args.open else ["chat.lua", "chat_system.lua"])) + [
        f"open:{rate:g}" for rate in args.open or []]
    if any(not load.startswith("open:") for load in loads) and wrk.binary() is None:
        raise SystemExit("bench.profile needs wrk for --wrk (apt-get install wrk)")
    if why := can_record():
        raise SystemExit(why)
    if len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("bench.profile pins wrk and the proxies apart: it needs 2 CPUs")
    if "nginx" in targets and nginx_path() is None:
        raise SystemExit("nginx is not installed (apt-get install nginx-light), or leave it out of --targets")
    ours = _fleetproxy_objects()
    out = [f"# Where each proxy's CPU per request goes\n",
           f"`python -m bench.profile {' '.join(argv if argv is not None else sys.argv[1:])}`: the simulator and "
           f"the proxies on CPU 1, the load (wrk -t1 -c32, or bench.openloop) on CPU 0, perf cpu-clock at "
           f"{args.freq} Hz over each {args.duration} s run; µs per request = samples ÷ frequency ÷ requests.\n"]
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as where, Fleet(server_cpus={1}) as fleet:
        sim = fleet.start_sim("sim")
        starts = {"fleetproxy": lambda: fleet.start_fleetproxy("fleetproxy", [sim]),
                  "nginx": lambda: fleet.start_nginx("nginx", [sim]),
                  "uvloop-floor": lambda: fleet.start_floor("uvloop-floor", [sim])}
        running = {t: starts[t]() for t in targets}
        for load in loads:
            runs = {}
            for t, target in running.items():
                # Warm-up: pooled connections, first-call paths, the allocator's arenas.
                command, _ = _load(target.url, load, 2, where)
                subprocess.run(command, capture_output=True, check=True, cwd=openloop.ROOT)
                runs[t] = profile(target.url, tree_pids(target.procs[0].popen.pid), load, args.duration,
                                  args.freq, where)
                print(f"{load}: {t}: {runs[t]['requests']} requests", file=sys.stderr, flush=True)
            name = f"scenario c's streams at {load[5:]} req/s (bench.openloop)" if load.startswith("open:") else load
            out.append(table(name, runs, args.freq, args.top, ours))
    text = "\n".join(out)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
