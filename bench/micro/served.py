"""Instructions per request of a serving proxy, end to end, counted by callgrind: fleetproxy or
nginx, one process each, behind wrk, in front of the simulator.

    python bench/micro/served.py [--target fleetproxy|nginx|floor] [--lua chat.lua|stream16.lua] [--itl S]

Why. ``instructions.py`` counts the proxy's own path in one process; this counts every
user-space instruction a serving proxy process retires per request (uvloop, CPython, libc, the
proxy; nginx alike), so the two proxies compare on one figure that does not move with the
machine. The target runs under valgrind twice, behind ``wrk -c N`` for ``--short`` and then
``--long`` seconds; the difference of its instructions over the difference of the requests wrk
completed cancels start-up, warm-up and shutdown. The kernel's half of the CPU (loopback TCP,
epoll) is in neither figure: it is the same for both proxies. ``--itl`` sets the simulator's
time between tokens: 0 writes a stream at once (a read or two per response), a few ms makes it
one read per event, as vLLM writes them. A run with any error or non-2xx answer is refused: a
404 costs a proxy less than a completion.
"""

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from bench import wrk  # noqa: E402
from bench.micro.instructions import self_costs  # noqa: E402
from bench.procs import Fleet, StartError, nginx_conf, nginx_path  # noqa: E402


def count(args, seconds, where):
    """(requests wrk completed, instructions the target retired) for one run of ``seconds``."""
    with Fleet() as fleet:  # the bench's own starts, ports and clean-up; the target's stop is ours
        sim = fleet.start_sim("sim", (["--ttft", "0", "--itl", str(args.itl)] if args.itl else [])
                              + ["--event-writes"] * args.event_writes)
        log = os.path.join(where, f"valgrind-{seconds}.log")
        valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={where}/callgrind.{seconds}",
                    f"--log-file={log}"] + ["--cache-sim=yes"] * args.cache_sim
        if args.target == "nginx":
            prefix = tempfile.mkdtemp(dir=where)

            def argv(port):
                conf = nginx_conf(prefix, port, [sim], 1).replace(
                    "master_process on;", "master_process off;")  # one process does all, as fleetproxy's
                with open(os.path.join(prefix, "nginx.conf"), "w") as f:
                    f.write(conf)
                return [*valgrind, nginx_path(), "-p", prefix, "-c", os.path.join(prefix, "nginx.conf")]
            stop = signal.SIGQUIT  # nginx's graceful stop
        elif args.target == "floor":  # bench/floor.py: uvloop's callbacks alone, no proxy in them
            module = ["bench.micro.readfloor", "--read", args.floor_read] if args.floor_read else ["bench.floor"]

            def argv(port):
                return [*valgrind, sys.executable, "-m", *module, "--listen", f"127.0.0.1:{port}", "--backend", sim]
            stop = signal.SIGTERM
        else:
            def argv(port):
                return [*valgrind, sys.executable, "-m", "proxy", "--single-process", "--listen", f"127.0.0.1:{port}",
                        "--admin-listen", f"127.0.0.1:{fleet.port()}", "--backend", sim,
                        "--log-level", "warning"] + (["--config", args.config] if args.config else [])
            stop = signal.SIGTERM
        try:  # start-up under valgrind is slow: the port's pick and its bind are seconds apart
            proc, port = fleet.start_traced(args.target, argv, timeout=120.0)
        except StartError as e:
            sys.exit(f"{args.target} did not start under valgrind: {e}\nvalgrind's log:\n{_tail(log)}")
        target = proc.popen
        time.sleep(2.0)  # let it settle: imports and first-request paths are the start's, not the runs'
        run = subprocess.run(wrk.argv(f"http://127.0.0.1:{port}", wrk.script(args.lua, where), seconds,
                                      args.connections), capture_output=True, text=True, timeout=seconds + 60)
        # Stopped here, and waited for: callgrind writes its counts as the process exits, and
        # the fleet's own stop would kill it after a few seconds' grace.
        target.send_signal(stop)
        target.wait(timeout=120)
    if "FPBENCH " not in run.stdout:  # wrk died or its script did not finish: say how, not just that
        sys.exit(f"{args.target}: wrk printed no FPBENCH line (exit status {run.returncode}, target's "
                 f"{target.returncode}); wrk's stdout:\n{run.stdout[-1000:]}\nits stderr:\n{run.stderr[-2000:]}")
    result = wrk.parse(run.stdout)
    if result["errors"]:
        sys.exit(f"{args.target}: wrk saw errors {result['error_kinds']}: not a count of served requests")
    with open(log) as f:
        found = re.search(r"Collected : ([\d ]+)", f.read())
    if found is None:
        sys.exit(f"{args.target}: callgrind wrote no total (see {log})")
    return result["requests"], [int(n) for n in found.group(1).split()]


def _tail(path, lines=20):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError as e:
        return f"({e})"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", choices=["fleetproxy", "nginx", "floor"], default="fleetproxy")
    p.add_argument("--lua", default="chat.lua", help="a script of bench/lua (chat.lua, stream16.lua, chat_sdk.lua)")
    p.add_argument("--floor-read", choices=["protocol", "reader"],
                   help="with --target floor: bench/micro/readfloor.py's compiled floor, its upstream read this way")
    p.add_argument("--itl", type=float, default=0.0, help="the simulator's seconds between tokens (0: at once)")
    p.add_argument("--event-writes", action="store_true",
                   help="the simulator writes one event per write without delays too (as vLLM does)")
    p.add_argument("--config", help="fleetproxy's config file (default: its defaults, metrics on)")
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--cache-sim", action="store_true",
                   help="simulate the caches too (callgrind --cache-sim=yes): misses per request, a model, not the CPU")
    p.add_argument("--short", type=int, default=4, help="seconds of the first run")
    p.add_argument("--long", type=int, default=12, help="seconds of the second run")
    p.add_argument("--top", type=int, default=0, help="list the N functions with the most instructions per request")
    p.add_argument("--keep", metavar="DIR", help="keep callgrind's files here (callgrind_annotate --tree=caller)")
    args = p.parse_args(argv)
    for tool in ("valgrind", "wrk") + (("nginx",) if args.target == "nginx" else ()):
        if (nginx_path() if tool == "nginx" else shutil.which(tool)) is None:
            sys.exit(f"{tool} is not installed (Debian/Ubuntu: apt-get install {'nginx-light' if tool == 'nginx' else tool})")
    if args.floor_read:
        if args.target != "floor":
            sys.exit("--floor-read is for --target floor")
        subprocess.run([sys.executable, "-m", "bench.micro.readfloor", "--build"], cwd=ROOT, check=True)
    if args.long <= args.short:
        sys.exit("--long must be more seconds than --short")
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
    with contextlib.nullcontext(args.keep) if args.keep else tempfile.TemporaryDirectory() as where:
        (r1, e1), (r2, e2) = count(args, args.short, where), count(args, args.long, where)
        if r2 <= r1:
            sys.exit(f"the longer run completed no more requests ({r1}, then {r2}): the machine is too busy to count")
        per = (e2[0] - e1[0]) / (r2 - r1)
        print(f"{args.target} {args.lua} itl={args.itl:g}: {per:,.0f} user-space instructions/request "
              f"(callgrind, {r2} - {r1} requests in {args.long} s - {args.short} s)")
        if args.cache_sim:  # callgrind's events with --cache-sim=yes: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw
            names = ("Ir", "Dr", "Dw", "I1mr", "D1mr", "D1mw", "ILmr", "DLmr", "DLmw")
            print("  simulated caches, per request: " + ", ".join(
                f"{name} {(b - a) / (r2 - r1):,.0f}" for name, a, b in zip(names, e1, e2)))
        if args.top:
            short = self_costs(os.path.join(where, f"callgrind.{args.short}"))
            long = self_costs(os.path.join(where, f"callgrind.{args.long}"))
            rows = sorted(((long[k] - short[k]) / (r2 - r1), k) for k in long)
            for n, name in reversed(rows[-args.top:]):
                print(f"{n:9,.0f}  {100 * n / per:5.1f}%  {name}")


if __name__ == "__main__":
    main()
