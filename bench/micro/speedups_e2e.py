"""End to end, native against pure speedups in one run: wrk through fleetproxy to the simulator.

    python bench/micro/speedups_e2e.py [--duration 5] [--rounds 3] [--out bench/results/DATE-speedups-e2e.md]

Starts two simulators (`python -m proxy.sim`: one answering at once, one spacing tokens 1 ms
apart) and, per simulator and build, one proxy (`python -m proxy`; the pure one with
FLEETPROXY_PURE=1), on free ports in 38000-38999. For each scenario (bench/lua/chat.lua,
non-streaming, 16 tokens; bench/lua/stream16.lua, the same streamed: 18 events and [DONE]) it
runs `wrk -t1 -c32 --latency` against each build's proxy in turn, `--rounds` times interleaved so
that drift on a shared machine hits both builds alike, and reads the proxy's CPU time (utime +
stime of the supervisor and its worker, /proc/PID/stat) before and after: CPU µs per request is
that delta over the requests wrk completed. A 1 s warm-up precedes each measured run. Every
process it starts is stopped by PID.
"""

import argparse
import datetime
import os
import platform
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
from bench.procs import wait_port  # noqa: E402  (run as a script from any directory)
TICK = os.sysconf("SC_CLK_TCK")  # clock ticks per second in /proc/PID/stat
# (title, wrk script, simulator): "fast" answers at once (a whole stream may arrive in one read),
# "paced" spaces tokens 1 ms apart (vLLM's shape: one event per chunk per read).
SCENARIOS = [
    ("non-streaming, 16 tokens (chat.lua)", "bench/lua/chat.lua", "fast"),
    ("streaming, 16 tokens, no delay (stream16.lua)", "bench/lua/stream16.lua", "fast"),
    ("streaming, 16 tokens 1 ms apart (stream16.lua)", "bench/lua/stream16.lua", "paced"),
]
SIMS = {"fast": [], "paced": ["--itl", "0.001"]}
BUILDS = {"native": {}, "pure": {"FLEETPROXY_PURE": "1"}}


def cpu_seconds(pid):
    """utime + stime of ``pid`` and its descendants (the supervisor and its workers)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    total = (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (stat fields 14, 15)
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                children = f.read().split()
        except FileNotFoundError:
            continue
        total += sum(cpu_seconds(int(child)) for child in children)
    return total


def pick_ports(count, low, high=38999):
    """``count`` ports in [low, high] that nothing holds, not even a TIME_WAIT left by an
    outgoing connection (this range overlaps the ephemeral one): bind without SO_REUSEADDR."""
    import socket

    ports = []
    for port in range(low, high + 1):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == count:
            return ports
    raise RuntimeError(f"fewer than {count} free ports in {low}-{high}")


def start(args, port, env=None):
    proc = subprocess.Popen(
        [sys.executable, *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    wait_port(port, proc)
    return proc


def stop(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wrk(port, script, duration):
    out = subprocess.run(
        ["wrk", "-t1", "-c32", f"-d{duration}s", "--latency", "-s", script,
         f"http://127.0.0.1:{port}/v1/chat/completions"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "requests": requests,
        "p50": lat.get("50"),
        "p99": lat.get("99"),
        "errors": errors.group(0) if errors else "",
    }


def measure(pid, port, script, duration):
    wrk(port, script, 1)  # warm-up: pool filled, code paths hot
    before = cpu_seconds(pid)
    result = wrk(port, script, duration)
    result["cpu_us"] = (cpu_seconds(pid) - before) * 1e6 / max(1, result["requests"])
    return result


def machine():
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import uvloop

    return (
        f"{cpu}, {os.cpu_count()} logical CPUs (shared with other work while measured), "
        f"Linux {platform.release()}, CPython {platform.python_version()}, uvloop {uvloop.__version__}; "
        f"load average before the run: {os.getloadavg()[0]:.2f}"
    )


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--duration", type=int, default=5, help="seconds per measured wrk run")
    p.add_argument("--rounds", type=int, default=3, help="interleaved native/pure rounds")
    p.add_argument("--base-port", type=int, default=38400, help="first port to try (up to 38999)")
    p.add_argument("--out", default=None, help="markdown file to write (default: stdout only)")
    a = p.parse_args()
    ports = iter(pick_ports(len(SIMS) * (1 + 2 * len(BUILDS)), a.base_port))
    procs = []
    results = {}
    try:
        sims, proxies = {}, {}
        for sim, flags in SIMS.items():
            sims[sim] = port = next(ports)
            procs.append(start(["-m", "proxy.sim", "--port", str(port), *flags], port))
            for name, env in BUILDS.items():
                listen, admin = next(ports), next(ports)
                proc = start(
                    ["-m", "proxy", "--listen", f"127.0.0.1:{listen}", "--admin-listen", f"127.0.0.1:{admin}",
                     "--backend", f"http://127.0.0.1:{port}"], listen, env,
                )
                procs.append(proc)
                proxies[(sim, name)] = (proc, listen)
        for name, env in BUILDS.items():  # the build each proxy runs, as its --version reports it
            version = subprocess.run([sys.executable, "-m", "proxy", "--version"], cwd=ROOT, capture_output=True,
                                     text=True, env={**os.environ, **env}).stdout
            assert f"speedups: {name}" in version, (name, version)
        direct = {title: wrk(sims[sim], script, a.duration) for title, script, sim in SCENARIOS}
        for _ in range(a.rounds):
            for title, script, sim in SCENARIOS:
                for name in BUILDS:
                    proc, port = proxies[(sim, name)]
                    r = measure(proc.pid, port, script, a.duration)
                    results.setdefault((title, name), []).append(r)
                    print(f"{title:48} {name:6} {r['rps']:9.0f} req/s  {r['cpu_us']:6.1f} µs CPU/req  "
                          f"p50 {r['p50']}  p99 {r['p99']} {r['errors']}", file=sys.stderr)
    finally:
        for proc in reversed(procs):
            stop(proc)
    report = render(results, direct, a)
    print(report)
    if a.out:
        with open(a.out, "w") as f:
            f.write(report)


def _best(runs, key, high=True):
    values = [r[key] for r in runs]
    return max(values) if high else min(values)


def render(results, direct, a):
    lines = [
        f"# Speedups end to end: native against pure ({datetime.date.today().isoformat()})",
        "",
        f"Machine: {machine()}.",
        "",
        f"Two simulators (tokens at once; tokens 1 ms apart, so one event per read), one proxy per "
        f"simulator and build (1 worker each), `wrk -t1 -c32 -d{a.duration}s` per run, "
        f"{a.rounds} rounds interleaved native/pure after a 1 s warm-up each; the best round is shown "
        "(req/s: highest, CPU: lowest), all rounds below. CPU is the proxy's utime + stime (supervisor and "
        "its worker) from /proc/PID/stat over the run, divided by the requests wrk completed. wrk, the simulator "
        "and the proxy share the machine's CPUs, so req/s is bounded by all three; CPU per request "
        "is the proxy's own cost. Produced by `python bench/micro/speedups_e2e.py`.",
        "",
        "| scenario | build | req/s | SSE tokens/s | proxy CPU per request | p50 | p99 |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for title, script, _ in SCENARIOS:
        tokens = 16 if "stream" in script else 0

        def tps(rps):
            return f"{rps * tokens:,.0f}" if tokens else ""

        d = direct[title]
        lines.append(f"| {title} | direct to the simulator | {d['rps']:,.0f} | {tps(d['rps'])} | | {d['p50']} | {d['p99']} |")
        for name in BUILDS:
            runs = results[(title, name)]
            best = max(runs, key=lambda r: r["rps"])
            lines.append(
                f"| {title} | fleetproxy, {name} | {best['rps']:,.0f} | {tps(best['rps'])} "
                f"| {_best(runs, 'cpu_us', False):.1f} µs | {best['p50']} | {best['p99']} |"
            )
    lines += ["", "| scenario | native / pure req/s | pure / native CPU per request |", "|---|---:|---:|"]
    for title, _, _ in SCENARIOS:
        n, p = results[(title, "native")], results[(title, "pure")]
        lines.append(
            f"| {title} | {_best(n, 'rps') / _best(p, 'rps'):.2f}x "
            f"| {_best(p, 'cpu_us', False) / _best(n, 'cpu_us', False):.2f}x |"
        )
    lines += ["", "All rounds (req/s, CPU µs per request):", ""]
    for (title, name), runs in results.items():
        lines.append(f"- {title}, {name}: " + "; ".join(f"{r['rps']:,.0f} req/s, {r['cpu_us']:.1f} µs" for r in runs))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
