"""The working tree against another revision of fleetproxy, in one run: did a change cost CPU?

    python -m bench.ab [--rev HEAD~1] [--duration 5] [--rounds 3] [--out bench/results/X.md]
    python -m bench.ab --configs A.yaml B.yaml [...]   (two configs of the working tree)
    python -m bench.ab --envs 'K=V' 'K=W' [...]          (the working tree in two environments)
    python -m bench.ab --lua chat_long.lua [...]        (other bench/lua scripts than the four)
    python -m bench.ab --nginx [...]                    (the working tree against nginx)
    python -m bench.ab --nginx --configs A.yaml [...]   (and with a config of its own, beside it)

Checks ``--rev`` out into a temporary git worktree, builds its Cython speedups in place with
this interpreter, and starts one simulator answering at once (the proxy's own cost is then
most of the CPU) and, per revision, one ``--single-process`` proxy in front of it, both pinned
to the last CPU; wrk runs on the others. Each scenario (bench/lua: non-streaming chat, a
16-token stream written at once and one written an event per write, as vLLM writes) runs
against each revision in turn, ``--rounds`` times interleaved (the order flips every round)
so drift on a shared machine hits both alike. The figure is the proxy's CPU per request
(bench.cpu: utime + stime from /proc, deltas over the run), beside req/s and p99. The verdict
is the second run's CPU over the first's, round by round: the working tree's over ``--rev``'s
(+ means the working tree costs more), or the second config's over the first's; the median of
those paired ratios and a 95% bootstrap interval of it (``stats.paired``). Every process it
starts is stopped by PID; the worktree is removed at the end. With ``--configs`` no worktree
is made: the working tree runs once per config file (its ``backends`` are replaced by the
simulator), each over the first, to price a feature that a setting turns on. ``--envs`` does
the same with two sets of environment variables (``KEY=VALUE,KEY=VALUE``; an empty string
for none) given to the proxy alone: the pure build against the native one
(``FLEETPROXY_PURE=1``), or two builds of a dependency (``PYTHONPATH=DIR``: third_party/uvloop's against the stock uvloop).

With ``--nginx`` the working tree runs against nginx, each as ``python -m bench`` runs it
(fleetproxy: a supervisor and one worker; nginx: bench/procs.py's config, a master and one
worker), and the simulator writes a stream one event per write, as vLLM does and as the main
bench's simulator does. The scenarios are then the main bench's a, b, c and g
(``NGINX_SCENARIOS``). The verdict is fleetproxy's CPU per request over nginx's, round by
round: where the main bench's two repeats differ by 5-15%, more than what is left between the
two, pairs of runs a few seconds apart and an interval over them say whether fleetproxy is at
or below nginx. ``--configs`` with ``--nginx`` adds a fleetproxy run per config file to the same
rounds, each with its own verdict over nginx: its defaults (metrics on) and, say,
bench/configs/observe-off.yaml, which does no more than the bench's nginx does (no metrics, no
access log), side by side in one sitting.

An open loop (``open:R``) also gets a verdict on its tail: the first token's time outside the
simulator, its p99 over every round's requests together for each run, the difference from the
first run's and a bootstrap interval of it over the rounds (``stats.pooled``). A round of 5 s at
50 req/s has some 250 requests, whose p99 is their third-worst; the median of such p99s moves by
tenths of a millisecond from one sitting to the next, more than a proxy adds.

``--together`` runs an open loop against every target at once, a generator each, all with the
same schedule, and reads each proxy's CPU over the same window. At 50 req/s most of a request's
CPU is cache misses and wakeups, and what a shared machine does to them drifts by 10-30% from
one run to the next, a few seconds apart: in turn, one pair of runs moved by up to ±20% and 8
pairs left an interval 17 points wide. Together, the drift falls on both runs of a round alike
(stop 50: 8 rounds, every round's ratio within 6.4 points, the interval 4 points wide). The
proxies share their CPU with each other then, as they do with the simulator; each tail is
measured with the other's work beside it, so ``--together`` is for CPU, not for the tails.
Two fleetproxy runs share their compiled code's pages, and each keeps the other's machine code
warm in the CPU's caches: against nginx, fleetproxy read +5.6-5.9% alone and +3.3% beside two
more fleetproxy runs (stop 50). ``--without-defaults`` leaves fleetproxy's default run out of
``--nginx --configs``, so that one config at a time meets nginx alone.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

from . import cpu, openloop, wrk
from .stats import median as _median
from .stats import paired, pooled
from .procs import Fleet, free_port, nginx_path, pin, wait_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCENARIOS = [
    ("non-streaming chat, 16 tokens", "chat.lua"),
    ("16-token stream, no delay, written at once", "stream16.lua"),
    ("16-token stream, no delay, one event per write (vLLM's)", "stream16_events.lua"),
    ("non-streaming chat, the openai SDK's 17-field head", "chat_sdk.lua"),
]
# --nginx: scenarios a, b, c and g of python -m bench (bench/scenarios.py), their loads as they
# are. ``open:R``: bench.openloop at R requests per second, its timing (first token 50 ms, then
# 10 ms a token, 16-64 tokens) asked of the simulator per request; its "p99" is the first token's
# time outside the simulator (``transit_ms``).
NGINX_SCENARIOS = [
    ("a. non-streaming chat, 16 tokens", "chat.lua"),
    ("b. streams of 16-64 tokens, one event per write, no delays", "stream.lua"),
    ("c. streams at 50 req/s (first token 50 ms, then 10 ms a token), open loop", "open:50"),
    ("c. the same at 400 req/s", "open:400"),
    ("g. non-streaming chat with a 32 KiB prompt", "chat_long.lua"),
]
CONNECTIONS = 32


def _start(args, cwd, cpus, env=None):
    """A process of the run, in a session of its own, as bench/procs.py starts them: with the
    kernel's autogroups on (``/proc/sys/kernel/sched_autogroup_enabled``), each session is a
    group the scheduler shares a CPU between fairly. The simulator and a proxy pinned to one CPU
    then take turns as they do in ``python -m bench``. With the simulator in this process's
    session and nginx in one of its own (bench/procs.py's), nginx read 40 µs of CPU per chat
    instead of 27: how the two share the CPU moves a proxy's cost more than most changes do."""
    return subprocess.Popen(pin(cpus) + [sys.executable, *args], cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env={**os.environ, **(env or {})}, start_new_session=True)


def _worktree(rev, where):
    subprocess.run(["git", "worktree", "add", "--detach", "-q", where, rev], cwd=ROOT, check=True)
    out = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=where,
                         capture_output=True, text=True)
    check = subprocess.run([sys.executable, "-m", "proxy", "--version"], cwd=where, capture_output=True, text=True)
    if out.returncode or "native" not in check.stdout:
        raise SystemExit(f"{rev}: the native build failed:\n{out.stderr[-2000:]}{check.stdout}{check.stderr}")


def _run(url, lua, seconds, cpus, pid):
    if lua.startswith("open:"):
        return _open(url, float(lua[5:]), seconds, cpus, pid)
    before = cpu.tree_seconds([pid])
    out = subprocess.run(pin(cpus) + wrk.argv(url, lua, seconds, CONNECTIONS),
                         capture_output=True, text=True)
    used = cpu.tree_seconds([pid]) - before
    result = wrk.parse(out.stdout)
    if result["errors"]:
        raise SystemExit(f"wrk saw errors against {url}: {result['error_kinds']}")
    return used / max(1, result["requests"]) * 1e6, result["rps"], result["latency_ms"].get("99", 0.0), None


def _open(url, rate, seconds, cpus, pid):
    """``_run`` of an open-loop load: the proxy's CPU per request over the whole run (the last
    streams drained), and the first token's time outside the simulator, in ms: its p99 and
    every request's (pooled over the rounds: ``stats.pooled``)."""
    return _open_together([(url, pid)], rate, seconds, cpus)[0]


def _open_together(targets, rate, seconds, cpus):
    """``_open`` against every (url, pid) of ``targets`` at once (``--together``): a generator
    each, all started together on the load CPUs with the same schedule, and each proxy's CPU
    read over the same window. What drifts on a shared machine between one run and the next (a
    neighbour's load, the host's other guests) then falls on every target alike, inside one
    round."""
    before = [cpu.tree_seconds([pid]) for _, pid in targets]
    with ThreadPoolExecutor(len(targets)) as pool:
        results = list(pool.map(lambda t: openloop.run(t[0], rate, seconds, pin(cpus), samples=True), targets))
    used = [cpu.tree_seconds([pid]) - b for (_, pid), b in zip(targets, before)]
    out = []
    for (url, _), result, seconds_used in zip(targets, results, used):
        if result["errors"]:
            raise SystemExit(f"bench.openloop saw errors against {url}: {result['error_kinds']}")
        out.append((seconds_used / max(1, result["ok"]) * 1e6, result["rps"],
                    result.get("transit_ms", {}).get("99", 0.0), result.get("transit_samples_ms", [])))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n\n")[0])
    p.add_argument("--rev", default="HEAD~1", help="the revision to compare the working tree with")
    p.add_argument("--duration", type=int, default=5, help="seconds per measured wrk run")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", help="also write the markdown table here")
    p.add_argument("--configs", nargs="+", metavar="FILE",
                   help="compare config files of the working tree, each over the first; with --nginx, "
                        "one or more to run beside fleetproxy's defaults")
    p.add_argument("--envs", nargs=2, metavar=("A", "B"),
                   help="compare the working tree under two environments: KEY=VALUE[,KEY=VALUE...] each ('' for none)")
    p.add_argument("--lua", help="comma-separated bench/lua scripts to run instead of the four scenarios "
                                 "(e.g. chat_long.lua: a 32 KiB prompt), "
                                 "or open:R: bench.openloop at R req/s")
    p.add_argument("--together", action="store_true",
                   help="open loops (open:R): load every run at once, each with a generator of its own, "
                        "instead of one after another")
    p.add_argument("--without-defaults", action="store_true",
                   help="with --nginx and --configs: no run of fleetproxy under its defaults (with --together, "
                        "two fleetproxy runs warm each other's machine code)")
    p.add_argument("--nginx", action="store_true",
                   help="the working tree against nginx, on scenarios a, b, c and g of python -m bench")
    args = p.parse_args(argv)
    if args.without_defaults and not (args.nginx and args.configs):
        p.error("--without-defaults takes --nginx and --configs")
    if args.configs and not args.nginx and len(args.configs) < 2:
        p.error("--configs takes two files or more (one or more with --nginx)")
    known = NGINX_SCENARIOS if args.nginx else SCENARIOS
    titles = {script: title for title, script in known}
    scenarios = ([(titles.get(n, n), n) for n in args.lua.split(",") if n] if args.lua else known)
    if wrk.binary() is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    if args.nginx and nginx_path() is None:
        raise SystemExit("nginx is not installed (apt-get install nginx-light)")
    ncpu = os.cpu_count() or 1
    server_cpus = [ncpu - 1] if ncpu > 1 else []
    load_cpus = list(range(ncpu - 1)) if ncpu > 1 else []
    procs = []
    tmp = tempfile.mkdtemp(prefix="fleetproxy-ab-")
    tree = os.path.join(tmp, "rev")
    fleet = Fleet(set(server_cpus)) if args.nginx else None
    try:
        envs = {}
        if args.nginx:  # the verdicts: each fleetproxy run's ÷ nginx's
            runs = [("nginx", None, [])] + [("fleetproxy", ROOT, [])] * (not args.without_defaults) + [
                (f"fleetproxy, {os.path.basename(c)}", ROOT, ["--config", os.path.abspath(c)])
                for c in args.configs or ()]
        elif args.configs:
            runs = [(os.path.basename(c), ROOT, ["--config", os.path.abspath(c)]) for c in args.configs]
        elif args.envs:
            runs = [(e or "(as it is)", ROOT, []) for e in args.envs]
            envs = {e or "(as it is)": dict(kv.split("=", 1) for kv in e.split(",") if kv) for e in args.envs}
        else:
            _worktree(args.rev, tree)
            runs = [(args.rev, tree, []), ("working tree", ROOT, [])]  # the verdict: the tree's ÷ the rev's
        sim_port = free_port()
        # As python -m bench's: room for every open stream (c at 400 req/s holds some 250), and
        # with --nginx one event per write.
        sim_args = ["--max-concurrency", "8192"] + (["--event-writes"] if args.nginx else [])
        sim = _start(["-m", "proxy.sim", "--port", str(sim_port), *sim_args], ROOT, server_cpus)
        procs.append(sim)
        wait_port(sim_port, sim)
        proxies = {}
        for name, cwd, extra in runs:
            if cwd is None:  # nginx
                target = fleet.start_nginx(name, [f"http://127.0.0.1:{sim_port}"])
                proxies[name] = (target.url, target.pids[0])
                continue
            port, admin = free_port(), free_port()
            single = [] if args.nginx else ["--single-process"]  # --nginx: as python -m bench runs it
            proc = _start(["-m", "proxy", *single, *extra, "--listen", f"127.0.0.1:{port}",
                           "--admin-listen", f"127.0.0.1:{admin}", "--backend", f"http://127.0.0.1:{sim_port}",
                           "--log-level", "warning"], cwd, server_cpus, envs.get(name))
            procs.append(proc)
            wait_port(port, proc)
            proxies[name] = (f"http://127.0.0.1:{port}", proc.pid)
        rows = []
        verdicts = []
        tails = []  # open loops: the pooled p99 of each later run against the first's
        for title, script in scenarios:
            lua = script if script.startswith("open:") else wrk.script(script, tmp)
            for url, pid in proxies.values():  # warm-up
                if script.startswith("open:"):
                    _open(url, float(script[5:]), 1, load_cpus, pid)
                else:
                    subprocess.run(wrk.argv(url, lua, 1, CONNECTIONS), capture_output=True)
            samples = {name: [] for name in proxies}
            for i in range(args.rounds):
                if args.together and script.startswith("open:"):
                    names = list(proxies)[::-1] if i % 2 else list(proxies)  # neither always starts first
                    got = _open_together([proxies[n] for n in names], float(script[5:]), args.duration, load_cpus)
                    for name, result in zip(names, got):
                        samples[name].append(result)
                    continue
                order = list(proxies.items())
                for name, (url, pid) in order[::-1] if i % 2 else order:  # neither always goes first
                    samples[name].append(_run(url, lua, args.duration, load_cpus, pid))
            first, *others = ([r[0] for r in got] for got in samples.values())
            for k, second in enumerate(others, 1):  # each later run over the first
                verdicts.append((k, title, paired(first, second), [b / a for a, b in zip(first, second)]))
            if script.startswith("open:") and all(r[3] for got in samples.values() for r in got):
                first, *others = ([r[3] for r in got] for got in samples.values())
                for k, second in enumerate(others, 1):
                    tails.append((k, title, pooled(first, second), sum(map(len, first)),
                                  sum(map(len, second))))
            for name, got in samples.items():
                each = [r[0] for r in got]
                rows.append((title, name, _median(each), _median([r[1] for r in got]),
                             _median([r[2] for r in got]), each))
        configs = f"--configs {' '.join(args.configs)}" if args.configs else ""
        alone = " --without-defaults" if args.without_defaults else ""
        command = (("--nginx" + (f" {configs}" if configs else "") + alone if args.nginx else configs if configs
                    else "--envs " + " ".join(f"'{e}'" for e in args.envs) if args.envs else f"--rev {args.rev}")
                   + (f" --lua {args.lua}" if args.lua else "") + (" --together" if args.together else ""))
        lines = [
            f"# fleetproxy: {' vs '.join(n for n, _, _ in runs)}",
            "",
            f"`python -m bench.ab {command} --duration {args.duration} --rounds {args.rounds}`; "
            f"{platform.python_implementation()} {platform.python_version()}, {ncpu} CPUs, simulator and "
            f"proxies on CPU {server_cpus or 'any'}, the load on {load_cpus or 'any'} (wrk -t1 -c{CONNECTIONS}; "
            f"an open loop: bench.openloop{', a generator per run, every run at once' if args.together else ''}); "
            + ("the simulator writes a stream one event per write; " if args.nginx else "")
            + "medians of the rounds.",
        ]
        for k in range(1, len(runs)):  # a verdict table per run after the first
            lines += [
                "",
                f"| scenario | proxy CPU, {runs[k][0]} ÷ {runs[0][0]} (median of the rounds' ratios) "
                "| 95% interval (bootstrap) | every round's ratio |",
                "|---|---|---|---|",
            ]
            lines += [
                f"| {t} | {_percent(m)} | {_percent(lo)} to {_percent(hi)} | "
                f"{' '.join(_percent(r) for r in each)} |"
                for j, t, (m, lo, hi), each in verdicts if j == k
            ]
        for k in range(1, len(runs)) if tails else ():  # the first token's pooled tail, per later run
            lines += [
                "",
                f"| scenario | the first token's time outside the simulator, p99 of every round's requests "
                f"together: {runs[0][0]}, {runs[k][0]} | {runs[k][0]} − {runs[0][0]} | 95% interval "
                "(bootstrap over the rounds) | requests |",
                "|---|---|---|---|---|",
            ]
            lines += [
                f"| {t} | {a:.3f} ms, {b:.3f} ms | {d:+.3f} ms | {lo:+.3f} to {hi:+.3f} ms | {na}, {nb} |"
                for j, t, (a, b, d, lo, hi), na, nb in tails if j == k
            ]
        lines += [
            "",
            "| scenario | run | proxy CPU µs/req (median) | every round, in order | req/s | p99 ms (open loop: "
            "the first token's time outside the simulator) |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {t} | {n} | {us:.1f} | {' '.join(f'{x:.1f}' for x in each)} | {rps:.0f} | {p99:.2f} |"
            for t, n, us, rps, p99, each in rows
        ]
        text = "\n".join(lines) + "\n"
        print(text)
        if args.out:
            with open(args.out, "w") as f:
                f.write(text)
    finally:
        if fleet is not None:
            fleet.close()
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        if os.path.isdir(tree):
            subprocess.run(["git", "worktree", "remove", "--force", tree], cwd=ROOT, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


def _percent(ratio):
    return f"{(ratio - 1) * 100:+.1f}%"


if __name__ == "__main__":
    main()
