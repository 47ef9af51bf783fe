"""End to end, native against pure speedups in one run: wrk through fleetproxy to the simulator.

    python bench/micro/speedups_e2e.py [--duration 5] [--rounds 2] [--out bench/results/DATE-speedups-e2e.md]

Starts one simulator (`python -m proxy.sim`) and, per build, one proxy (`python -m proxy`, the
pure one with FLEETPROXY_PURE=1), on ports 38000-38999. For each scenario (bench/lua/chat.lua:
non-streaming, 16 tokens; bench/lua/stream.lua: the same streamed, 16 token events) it runs
`wrk -t1 -c32` against each proxy in turn, `--rounds` times interleaved so that drift on a shared
machine hits both builds alike, and reads the proxy's CPU time (utime + stime from
/proc/PID/stat) before and after each run: CPU µs per request is that delta over the requests wrk
completed. A warm-up run precedes each measured one. Every process it starts is stopped by PID.
"""

import argparse
import datetime
import os
import platform
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TICK = os.sysconf("SC_CLK_TCK")  # clock ticks per second in /proc/PID/stat
SCENARIOS = [("non-streaming (chat.lua)", "bench/lua/chat.lua"), ("streaming, 16 tokens (stream.lua)", "bench/lua/stream.lua")]


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


def wait_port(port, proc, timeout=15.0):
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


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
    p.add_argument("--rounds", type=int, default=2, help="interleaved native/pure rounds")
    p.add_argument("--base-port", type=int, default=38400, help="first port to try (up to 38999)")
    p.add_argument("--out", default=None, help="markdown file to write (default: stdout only)")
    a = p.parse_args()
    sim_port, *ports = pick_ports(5, a.base_port)
    procs = []
    results = {}
    try:
        sim = start(["-m", "proxy.sim", "--port", str(sim_port)], sim_port)
        procs.append(sim)
        proxies = {}
        for i, (name, env) in enumerate([("native", {}), ("pure", {"FLEETPROXY_PURE": "1"})]):
            port, admin = ports[2 * i], ports[2 * i + 1]
            proc = start(
                ["-m", "proxy", "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}",
                 "--backend", f"http://127.0.0.1:{sim_port}"], port, env,
            )
            procs.append(proc)
            proxies[name] = (proc, port)
        for name, (proc, _) in proxies.items():  # the startup log says which build each one runs
            version = subprocess.run([sys.executable, "-m", "proxy", "--version"], cwd=ROOT, capture_output=True,
                                     text=True, env={**os.environ, **({"FLEETPROXY_PURE": "1"} if name == "pure" else {})}).stdout
            assert f"speedups: {name}" in version, (name, version)
        direct = {title: wrk(sim_port, script, a.duration) for title, script in SCENARIOS}
        for _ in range(a.rounds):
            for title, script in SCENARIOS:
                for name, (proc, port) in proxies.items():
                    r = measure(proc.pid, port, script, a.duration)
                    results.setdefault((title, name), []).append(r)
                    print(f"{title:36} {name:6} {r['rps']:9.0f} req/s  {r['cpu_us']:6.1f} µs CPU/req  "
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
        f"One simulator, one proxy per build (1 worker each), `wrk -t1 -c32 -d{a.duration}s` per run, "
        f"{a.rounds} rounds interleaved native/pure after a 1 s warm-up each; the best round is shown "
        "(req/s: highest, CPU: lowest), all rounds below. CPU is the proxy's utime + stime (supervisor and "
        "its worker) from /proc/PID/stat over the run, divided by the requests wrk completed. wrk, the simulator "
        "and the proxy share the machine's CPUs, so req/s is bounded by all three; CPU per request "
        "is the proxy's own cost. Produced by `python bench/micro/speedups_e2e.py`.",
        "",
        "| scenario | build | req/s | proxy CPU per request | p50 | p99 |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for title, _ in SCENARIOS:
        d = direct[title]
        lines.append(f"| {title} | direct to the simulator | {d['rps']:,.0f} | | {d['p50']} | {d['p99']} |")
        for name in ("native", "pure"):
            runs = results[(title, name)]
            best = max(runs, key=lambda r: r["rps"])
            lines.append(
                f"| {title} | fleetproxy, {name} | {best['rps']:,.0f} | {_best(runs, 'cpu_us', False):.1f} µs "
                f"| {best['p50']} | {best['p99']} |"
            )
    lines += ["", "| scenario | native / pure req/s | pure / native CPU per request |", "|---|---:|---:|"]
    for title, _ in SCENARIOS:
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
