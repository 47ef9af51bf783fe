"""`python -m bench`: start the fleet, run the scenarios, write the report, stop everything.

Exit status: 0 when every scenario that ran produced numbers with zero errors; 1 when one failed,
produced none or had errors (CI's `make bench-smoke` checks exactly that, never timings); 2 for a
bad command line or a fleet that would not start; 130 on Ctrl-C. Whatever happens, every process
the bench started is stopped (`Fleet.close` in a `finally`; SIGTERM and SIGHUP end the run like
Ctrl-C does).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
import traceback

from . import locust_run, report
from .procs import Fleet, StartError, Target, nginx_path
from .runner import Progress, Runner
from .scenarios import SCENARIOS, Step, by_key, routing_configs, skip_reason

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
TARGETS = ("direct", "fleetproxy", "fleetproxy-pure", "nginx", "uvloop-floor")
DEFAULT_TARGETS = "direct,fleetproxy,nginx"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def parse(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="fleetproxy's bench: direct vs fleetproxy vs nginx, interleaved, with CPU per request.",
        epilog="scenarios: " + "; ".join(f"{s.key} = {s.name}" for s in SCENARIOS),
    )
    p.add_argument("--smoke", action="store_true",
                   help="every scenario briefly, once per target (< 60 s); results to a temp dir")
    p.add_argument("--scenarios", metavar="a,b,...", help="which scenarios (letters or names; default all)")
    p.add_argument("--targets", default=DEFAULT_TARGETS, metavar="LIST",
                   help=f"from {','.join(TARGETS)} or fleetproxy-wN (N workers) (default {DEFAULT_TARGETS}); fleetproxy-pure runs "
                        "fleetproxy with FLEETPROXY_PURE=1, for native vs pure; uvloop-floor is bench/floor.py, "
                        "a uvloop Protocol that only forwards bytes (one worker): the least any proxy on uvloop costs")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="worker processes of fleetproxy and of nginx (default 1)")
    p.add_argument("--duration", type=float, metavar="S",
                   help="seconds per measured run (default per scenario)")
    p.add_argument("--repeat", type=int, metavar="N", help="runs per target (default 2; 1 with --smoke)")
    p.add_argument("--no-nginx", action="store_true", help="leave nginx out")
    p.add_argument("--pin", action="store_true",
                   help="load generators on the first CPU, simulators and proxies on the others")
    p.add_argument("--proxy-cpus", metavar="LIST",
                   help="pin the proxies (fleetproxy, nginx) alone on these CPUs, the load generators and "
                        "simulators on the rest (implies --pin); the worker-scaling run: "
                        "--targets fleetproxy-w1,fleetproxy-w2 --proxy-cpus 2,3 on a machine with 6 or more")
    p.add_argument("--out", metavar="DIR",
                   help="where results go (default bench/results; a temp dir with --smoke)")
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.repeat is None:
        args.repeat = 1 if args.smoke else 2
    if args.repeat < 1 or args.workers < 1 or (args.duration is not None and args.duration <= 0):
        p.error("--repeat and --workers must be >= 1, --duration > 0")
    names = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = [t for t in names if t not in TARGETS and not _workers_target(t)]
    if unknown or not names:
        p.error(f"--targets: unknown {unknown}; choose from {', '.join(TARGETS)}")
    if args.no_nginx and "nginx" in names:
        names.remove("nginx")
    args.targets = names
    try:
        args.scenarios = by_key(args.scenarios)
    except ValueError as e:
        p.error(str(e))
    return args


def layout(pin: bool, proxy_cpus: set[int] | None = None) -> tuple[set[int] | None, set[int] | None, str]:
    """(load CPUs, server CPUs, description); ``proxy_cpus``: the proxies' own, apart."""
    cpus = sorted(os.sched_getaffinity(0))
    if proxy_cpus:
        rest = [c for c in cpus if c not in proxy_cpus]
        if not proxy_cpus <= set(cpus) or len(rest) < 2:
            raise SystemExit(f"--proxy-cpus {sorted(proxy_cpus)}: needs CPUs of this process's {cpus}, "
                             "and two more besides them (load generator, simulators)")
        half = max(1, len(rest) // 2)
        load, servers = set(rest[:half]), set(rest[half:])
        return load, servers, (f"pinned: proxies (fleetproxy, nginx) alone on CPU {','.join(map(str, sorted(proxy_cpus)))}, "
                               f"load generators on {','.join(map(str, sorted(load)))}, simulators on "
                               f"{','.join(map(str, sorted(servers)))}")
    if not pin:
        return None, None, "not pinned"
    if len(cpus) < 2:
        return None, None, "not pinned (only one CPU usable)"
    load, servers = {cpus[0]}, set(cpus[1:])
    return load, servers, (f"pinned: load generator on CPU {cpus[0]}, simulators and proxies on CPU "
                           f"{','.join(map(str, cpus[1:]))}")


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


MAX_SIMS = 8  # at most this many simulators and wrk threads in the worker-scaling run
# Streams leave the simulators one event per write, as vLLM writes them, delays or none
# (scenario b has none): a proxy then reads what it would read in front of vLLM.
SIM_ARGS = ["--event-writes"]


def start_targets(fleet: Fleet, names: list[str], backends: list[str], workers: int) -> list[Target]:
    targets = []
    for name in names:
        if name == "direct":
            targets.append(Target("direct", backends[0]))
        elif name == "fleetproxy":
            targets.append(fleet.start_fleetproxy("fleetproxy", backends, workers))
        elif name == "fleetproxy-pure":
            targets.append(fleet.start_fleetproxy("fleetproxy-pure", backends, workers, pure=True))
        elif name == "nginx":
            targets.append(fleet.start_nginx("nginx", backends, workers))
        elif name == "uvloop-floor":
            targets.append(fleet.start_floor("uvloop-floor", backends))
        elif _workers_target(name):
            # Several simulators (the scaling run): spread like nginx's round robin, since one
            # repeated prompt would keep the cache-aware default on one simulator.
            config = {"balance": {"policy": "round_robin"}} if len(backends) > 1 else None
            targets.append(fleet.start_fleetproxy(name, backends, _workers_target(name), config=config))
    return targets


def _workers_target(name: str) -> int:
    """``fleetproxy-wN``: fleetproxy with N workers, to compare process counts in one run."""
    prefix = "fleetproxy-w"
    return int(name[len(prefix):]) if name.startswith(prefix) and name[len(prefix):].isdigit() else 0


def routing(fleet: Fleet, runner: Runner, s, args) -> dict:
    """Scenario e: its own fleet of simulators; one fleetproxy per policy, nginx round robin beside."""
    n = s.params.get("backends", 3)
    sims = [fleet.start_sim(f"e-sim{i}") for i in range(n)]
    sim_procs = fleet.procs[-n:]
    targets = []
    for policy, config in routing_configs() or []:
        targets.append(fleet.start_fleetproxy(f"fleetproxy-{policy}", sims, args.workers, config=config))
    if "nginx" in args.targets:
        nginx = fleet.start_nginx("nginx-e", sims, args.workers)
        nginx.name = "nginx"  # round robin: the affinity a policy-free proxy gets
        targets.append(nginx)
    saved = runner.sims
    runner.sims = [p.pid for p in sim_procs]
    try:
        result = runner.scenario(s, targets)
        if os.path.exists(os.path.join(os.path.dirname(os.path.abspath(__file__)), "routing.py")):
            result["note"] = ("Prefix-cache hit rates per policy, with simulators that model vLLM's prefix "
                              "cache: `python -m bench.routing` (bench/results/<date>-routing.md).")
        return result
    finally:
        runner.sims = saved
        for t in targets:
            for p in t.procs:
                fleet.stop(p)
        for p in sim_procs:
            fleet.stop(p)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["soak"]:  # its own command line: see bench/soak.py
        from . import soak

        return soak.main(argv[1:])
    args = parse(argv)
    if args.list:
        for s in SCENARIOS:
            print(f"{s.key}  {s.slug:16} {s.title}\n   {s.generator}")
        return 0
    nginx = nginx_path() if "nginx" in args.targets else None
    if "nginx" in args.targets and nginx is None:
        print("bench: nginx is not installed: running without it", file=sys.stderr)
        args.targets.remove("nginx")
    no_locust = [s for s in args.scenarios if s.driver == "locust" and locust_run.missing()]
    if no_locust:  # like nginx: said, and the run goes on without it
        print(f"bench: {locust_run.missing()}: scenario {no_locust[0].key} is skipped", file=sys.stderr)
    proxy_cpus = {int(c) for c in args.proxy_cpus.split(",")} if args.proxy_cpus else None
    load_cpus, server_cpus, layout_text = layout(args.pin or bool(proxy_cpus), proxy_cpus)
    if load_cpus:
        os.sched_setaffinity(0, load_cpus)  # the bench itself mostly sleeps, beside its drivers
    out_dir = args.out or (tempfile.mkdtemp(prefix="fleetproxy-bench-smoke-") if args.smoke else RESULTS)
    date = time.strftime("%Y-%m-%d")
    for sig in STOP_SIGNALS:  # SIGINT too: a shell may start us with it ignored
        signal.signal(sig, _interrupt)

    m = report.machine(nginx)
    m["layout"] = layout_text
    skips = {s.key: skip_reason(s) for s in args.scenarios}
    todo = [s for s in args.scenarios if not skips[s.key]]
    started = time.monotonic()
    results: list[tuple] = []
    failed: list[str] = []
    fleet = Fleet(server_cpus, proxy_cpus)
    runner = None
    try:
        try:
            # With cores of their own the proxies can outrun one simulator and one wrk thread
            # (each a process on one core): the worker-scaling run loads them from as many of
            # each as the other cores allow, so that the proxies are the bottleneck.
            n_sims, threads = (min(len(server_cpus), MAX_SIMS), min(len(load_cpus), MAX_SIMS)) if proxy_cpus else (1, 1)
            sims = [fleet.start_sim(f"sim{i}", SIM_ARGS) for i in range(n_sims)]
            targets = start_targets(fleet, args.targets, sims, args.workers)
        except StartError as e:
            print(f"bench: the fleet did not start: {e}", file=sys.stderr)
            return 2
        if n_sims > 1:
            layout_text += f"; {n_sims} simulators, wrk with {threads} threads (direct: the first simulator)"
            m["layout"] = layout_text
        runner = Runner(fleet, [p.pid for p in fleet.procs[:n_sims]], load_cpus, None, args.smoke, args.repeat,
                        args.duration, threads, sim_urls=sims)
        plan = [runner.planned(s, len(targets) if s.key != "e" else
                               len(routing_configs() or []) + ("nginx" in args.targets)) for s in todo]
        runner.progress = Progress(sum(r for r, _ in plan), sum(t for _, t in plan))
        print(f"bench: {len(todo)} scenario(s), about {sum(t for _, t in plan) / 60:.1f} min; targets "
              f"{', '.join(t.name for t in targets)}; {layout_text}; results in {out_dir}", file=sys.stderr)
        for s in args.scenarios:
            if skips[s.key]:
                result = {"skipped": skips[s.key]}
                if s.driver == "wrk":  # no wrk: a and b produce no numbers, which is a failure
                    failed.append(f"{s.slug}: {skips[s.key]}")
            else:
                try:
                    if s.key == "e":
                        result = routing(fleet, runner, s, args)
                    elif s.driver == "locust":
                        result = locust_run.scenario(runner, s, targets)
                    else:
                        result = runner.scenario(s, targets)
                except (RuntimeError, StartError, ValueError, OSError) as e:
                    runner.progress.finish()
                    traceback.print_exc(file=sys.stderr)
                    failed.append(f"{s.slug}: {e}")
                    result = {"skipped": f"FAILED: {str(e).splitlines()[0]}"}
            result["config"] = {"repeat": args.repeat, "duration_s": runner.run_seconds(s),
                                "warmup_s": runner.warmup_seconds(s), "workers": args.workers,
                                "layout": layout_text, "smoke": args.smoke, "argv": args.argv,
                                "params": runner.params(s, Step(""))}
            for step, rows in (result.get("aggregate") or {}).items():
                for name, row in rows.items():
                    if row["flagged"]:
                        failed.append(f"{s.slug} {step} {name}: {row['errors']} errors"
                                      + ("" if row["requests"] else ", no requests"))
            m["loadavg_end"] = os.getloadavg()
            files = report.write(out_dir, date, s, result, m)
            print(report.scenario_markdown(s, result), flush=True)
            print(f"bench: wrote {', '.join(os.path.relpath(f) for f in files)}", file=sys.stderr)
            results.append((s, result))
    except KeyboardInterrupt:
        if runner is not None and runner.progress is not None:
            runner.progress.finish()
        print("bench: interrupted; stopping everything", file=sys.stderr)
        return 130
    finally:
        for sig in STOP_SIGNALS:  # a second Ctrl-C must not cut the clean-up short
            signal.signal(sig, signal.SIG_IGN)
        if runner is not None:
            runner.stop_driver()
        fleet.close()
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
    # The day's summary also lists scenarios this invocation left out, from their JSON files.
    ran = {s.key for s, _ in results}
    for s in SCENARIOS:
        path = os.path.join(out_dir, f"{date}-{s.slug}.json")
        if s.key not in ran and os.path.exists(path):
            with open(path) as f:
                results.append((s, json.load(f)))
    results.sort(key=lambda item: item[0].key)
    summary = report.summary_markdown(results, m, date)
    with open(os.path.join(out_dir, f"{date}-summary.md"), "w") as f:
        f.write(summary)
    print(summary)
    print(f"bench: done in {time.monotonic() - started:.0f} s; results in {out_dir}", file=sys.stderr)
    if failed:
        print("bench: FAILED:\n  " + "\n  ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
