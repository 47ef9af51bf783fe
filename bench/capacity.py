"""`python -m bench.capacity`: N slow streams held open through one worker, beside nginx and direct.

Issue 13's capacity goals: at most 8 KiB per open stream, and at least 10,000 streams per worker
with the first-token p99 within 2x of a direct connection. This measures them, and the idle
footprint, in one run (`--streams 10000` by default, about 100 s on 2 cores; `--smoke`: 500
streams, about 20 s; results in bench/results/<date>-capacity.md and .json, or `--out`).

How a target is measured. Each target (direct to the simulator, fleetproxy with one worker under
its supervisor, nginx with one worker) gets a simulator of its own (a fresh port, so sockets the
last target left in TIME_WAIT cannot collide), started to hold every stream at once
(`--max-concurrency`, the KV-cache model off). A few short streams warm the path up; a second
later the target's idle memory is read. Then this process opens N connections, `--ramp` per
second, each sending one streaming chat request whose answer has a first token after `--ttft`
and one token every `--itl` seconds (the simulator's x-sim-ttft / x-sim-itl headers), and far
more tokens than the run lasts: the streams stay open until the client closes them. Once every
stream has its first token, the steady window (`--window` seconds), then the probes:

- memory per stream = (RSS of the target's process tree with every stream open, read at the end
  of the window, minus its RSS idle before the ramp) / N. RSS is VmRSS from /proc/PID/status,
  summed over the tree (PSS from smaps_rollup beside it); the kernel's socket buffers are not in
  it, for either proxy;
- CPU per token event = the tree's user + system time over the window (bench/cpu.py) / the token
  events the client received in that window (one SSE event: a read and a write each way);
- first token = from the client starting to connect to the first content event, as the client
  saw it: for every stream of the ramp (what opening N streams at that rate costs), and for
  short probe streams, PROBE_RATE a second for `--probe-s` seconds, sent with every stream open
  (what holding them costs a new request); each p99 is set against the direct target's.

Then the client resets every connection (the proxies must abort the upstream requests) and the
target's RSS is read once more. A stream that fails, ends before the probes did or has no first
token within FIRST_TOKEN_WAIT seconds, and a probe that fails, are errors: exit status 1.

The idle footprint: the RSS and PSS of every process of fleetproxy under its supervisor (one
worker) and of nginx (master and one worker), read a second after they are ready and before any
request, and of `fleetproxy --single-process` started for it alone. ``--installed PYTHON`` adds
fleetproxy as a `pip install .` put it in PYTHON's environment (supervisor and one worker,
PYTHONSAFEPATH so neither imports this source tree): what an operator runs. The source tree's
venv (test extras, an editable install) reads a few MiB more.

The client is this process: uvloop, the bench's streaming protocol (bench/client.py), one
connection per stream; its CPU share is reported beside the target's and the simulator's, to
show whether it was the limit. A proxy holds two sockets per stream: the run raises
RLIMIT_NOFILE, which every process it starts inherits, and where the hard limit is too low and
may not be raised it runs the largest hundred of streams that fits and says so (`fit_nofile`).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from time import perf_counter

import uvloop

from . import cpu, report
from .client import Result, _Conn
from .procs import Fleet, StartError, Target, _get, _wait, nginx_conf, nginx_path
from .stats import percentiles

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the source tree

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
TARGETS = ("direct", "fleetproxy", "nginx")
GOAL_KIB_PER_STREAM = 8.0
GOAL_STREAMS = 10_000
GOAL_TTFT_RATIO = 2.0  # first-token p99 through the proxy over direct
GOAL_IDLE_PSS_MIB = 40.0  # one worker and its supervisor, before any request
WARMUP_STREAMS = 20  # short streams before the idle reading: first-request costs are not per stream
IDLE_SETTLE = 1.0  # s between the warm-up (or the start) and an idle reading
SETTLE = 1.0  # s between the last first token and the window
CLOSE_SETTLE = 2.0  # s between resetting the streams and the reading after
SMOKE_PAUSES = 0.5  # --smoke waits half as long at each of these three
FIRST_TOKEN_WAIT = 30.0  # s after the ramp for every stream to have its first token
PROBE_RATE = 40.0  # probe streams a second, once every stream is open
NGINX_SPARE = 2048  # nginx's worker_connections beyond two per stream (see start_nginx)

# Garbage-collector pauses of the Python processes under test (fleetproxy, the simulator): a
# sitecustomize.py put first on their PYTHONPATH appends, for every collection of the oldest
# generation and any other over 5 ms, a line `<CLOCK_MONOTONIC s> <generation> <pause ms>` to
# $FLEETPROXY_BENCH_GC_LOG/gc-<pid>.log. It only watches (gc.callbacks); the report gives the
# longest pause and the sum of them from the ramp to the end of the probes, per target. (It
# shadows a sitecustomize the interpreter may ship, such as Debian's apport hook.)
GC_HOOK = """import gc, os, time
_dir = os.environ.get("FLEETPROXY_BENCH_GC_LOG")
_start = [0.0]
def _watch(phase, info):
    if phase == "start":
        _start[0] = time.monotonic()
        return
    pause = time.monotonic() - _start[0]
    if info["generation"] == 2 or pause > 0.005:
        with open(os.path.join(_dir, "gc-%d.log" % os.getpid()), "a") as f:
            f.write("%.4f %d %.2f\\n" % (_start[0], info["generation"], pause * 1e3))
if _dir:
    open(os.path.join(_dir, "gc-%d.log" % os.getpid()), "a").close()  # a Python process, watched
    gc.callbacks.append(_watch)
"""
FD_SLACK = 64  # descriptors beyond two per stream: listeners, the event loop's, logs, shared memory
PATH = "/v1/chat/completions"


# -- /proc ------------------------------------------------------------------------------------

def _kib(path: str, key: str) -> int:
    """A `Key:   N kB` line of a /proc file, in KiB; 0 if the process or the line is gone."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def memory(roots: list[int]) -> dict:
    """RSS and PSS (KiB) of the process trees under ``roots``, in all and per process."""
    procs = []
    for root in roots:
        for pid in cpu.tree_pids(root):
            procs.append({"pid": pid, "name": _name(pid), "rss_kib": _kib(f"/proc/{pid}/status", "VmRSS:"),
                          "pss_kib": _kib(f"/proc/{pid}/smaps_rollup", "Pss:")})
    return {"rss_kib": sum(p["rss_kib"] for p in procs), "pss_kib": sum(p["pss_kib"] for p in procs),
            "processes": procs}


def fit_nofile(streams: int) -> tuple[int, int, str | None]:
    """Raise this process's descriptor limit for ``streams`` (every process it starts inherits it).

    A proxy holds two sockets per stream. Where the hard limit is below that and cannot be raised
    (only a process with CAP_SYS_RESOURCE may), the run is cut to the largest hundred of streams
    that fits, and says so: (streams, the limit now, the note or None)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * streams + FD_SLACK
    note = None
    if need > hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
            return streams, need, None
        except (ValueError, OSError):
            fits = (hard - FD_SLACK) // 2
            fits = fits // 100 * 100 if fits >= 100 else fits
            if fits < 1:
                raise StartError(f"the descriptor limit ({hard}) leaves no room for streams") from None
            note = (f"{streams:,} streams asked, {fits:,} run: a proxy holds two sockets per stream, and "
                    f"this machine's hard RLIMIT_NOFILE is {hard:,} descriptors per process, which this "
                    f"process may not raise (no CAP_SYS_RESOURCE); {fits:,} is the largest hundred that fits "
                    f"beside {FD_SLACK} descriptors of slack. `ulimit -Hn {need}` by a process with "
                    f"CAP_SYS_RESOURCE (root outside a container) lifts it.")
            streams, need = fits, 2 * fits + FD_SLACK
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    return streams, max(soft, need), note


# -- the client ---------------------------------------------------------------------------------

class Streams:
    """N streaming requests on N connections to one target, opened at a steady rate."""

    def __init__(self, url: str, ttft: float, itl: float, tokens: int, close_when_done: bool = False):
        host_port = url.removeprefix("http://").rstrip("/")
        self.host, _, port = host_port.partition(":")
        self.port = int(port)
        self.authority = host_port
        self.extra = f"x-sim-ttft: {ttft:g}\r\nx-sim-itl: {itl:g}\r\n"
        self.tokens = tokens
        self.close_when_done = close_when_done  # a client that leaves once answered (the probes)
        self.results: list[Result] = []
        self.conns: list[_Conn] = []
        self.loop = asyncio.get_running_loop()

    def request(self, i: int, tokens: int) -> tuple[bytes, bytes]:
        body = json.dumps({"model": "tiny", "stream": True, "max_tokens": tokens, "user": f"cap-{i}",
                           "messages": [{"role": "user", "content": f"stream {i}: tell me a long story"}]},
                          separators=(",", ":")).encode()
        head = (f"POST {PATH} HTTP/1.1\r\nHost: {self.authority}\r\nContent-Type: application/json\r\n"
                f"Accept: text/event-stream\r\nContent-Length: {len(body)}\r\n{self.extra}\r\n").encode()
        return head, body

    async def _one(self, i: int, tokens: int) -> None:
        r = Result(perf_counter())
        self.results.append(r)
        try:
            _, conn = await self.loop.create_connection(lambda: _Conn(self.loop), self.host, self.port)
        except OSError as e:
            r.error = f"connect: {e.strerror or e}"
            return
        self.conns.append(conn)
        head, body = self.request(i, tokens)
        done = conn.send(head, body, r)  # the answer fills r as it streams; nobody awaits it
        if self.close_when_done:
            # A probe's connection would otherwise stay open, two descriptors of the proxy's each.
            done.add_done_callback(lambda _: conn.transport.close())

    async def open(self, n: int, rate: float, tokens: int | None = None) -> float:
        """Open ``n`` streams, ``rate`` connects a second; return the ramp's seconds."""
        tokens = tokens or self.tokens
        t0 = perf_counter()
        tasks = []
        i = 0
        while i < n:
            due = int((perf_counter() - t0) * rate) + 1  # connects that are due by now
            while i < min(due, n):
                tasks.append(self.loop.create_task(self._one(i, tokens)))
                i += 1
            await asyncio.sleep(0.005)
        await asyncio.gather(*tasks)
        return perf_counter() - t0

    async def first_tokens(self, timeout: float) -> None:
        deadline = perf_counter() + timeout
        while perf_counter() < deadline and not all(r.tokens or r.error for r in self.results):
            await asyncio.sleep(0.05)

    async def finished(self, timeout: float) -> None:
        deadline = perf_counter() + timeout
        while perf_counter() < deadline and not all(c.done.done() for c in self.conns):
            await asyncio.sleep(0.02)

    def token_events(self) -> int:
        return sum(r.tokens for r in self.results)

    def failures(self, open_expected: bool) -> dict[str, int]:
        """What went wrong so far, by kind; with ``open_expected`` a stream that ended is one."""
        kinds: dict[str, int] = {}
        ended = {id(c.result) for c in self.conns if c.done is not None and c.done.done()}
        for r in self.results:
            kind = r.error
            if kind is None and not r.tokens:
                kind = "no first token"
            elif kind is None and open_expected and id(r) in ended:
                kind = "stream ended before the measurement did"
            if kind is not None:
                kinds[kind] = kinds.get(kind, 0) + 1
        return kinds

    def reset(self) -> None:
        for c in self.conns:
            if c.transport is not None and not c.closed:
                c.transport.abort()
        self.conns.clear()


# -- the targets ----------------------------------------------------------------------------------

def start_sim(fleet: Fleet, name: str, streams: int) -> str:
    return fleet.start_sim(name, ["--max-concurrency", str(streams + 1024), "--cache-blocks", "0"])


def start_fleetproxy(fleet: Fleet, sim: str, streams: int) -> Target:
    room = streams + 1024  # the defaults (10,000 client connections, 1,024 upstream) may be below N
    config = {"limits": {"max_connections": room},
              "connection_pool": {"max_connections": room, "max_waiters": room}}
    return fleet.start_fleetproxy("fleetproxy", [sim], 1, config=config)


def start_nginx(fleet: Fleet, sim: str, streams: int) -> Target:
    """bench/procs.py's nginx with room for the streams: its conf has 16,384 worker_connections.

    Two slots per stream are not enough during the ramp: with 2N + 64, nginx ran out of slots
    ("worker_connections are not enough, reusing connections") at about 9,400 of 9,900 streams
    and closed the rest, so it gets 2,048 spare. It allocates the slots when it starts: that
    memory is in its idle RSS, not in its memory per stream."""
    binary = nginx_path()
    if binary is None:
        raise StartError("nginx is not installed")
    prefix = os.path.join(fleet.dir, "nginx")
    os.makedirs(prefix, exist_ok=True)
    conf = os.path.join(prefix, "nginx.conf")
    connections = 2 * streams + NGINX_SPARE

    def start():
        port = fleet.port()
        text = nginx_conf(prefix, port, [sim], 1, binary)
        text = text.replace("worker_connections 16384;", f"worker_connections {connections};")
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]  # fit_nofile's: nginx may not go above it
        text = text.replace("events {", f"worker_rlimit_nofile {limit};\n\nevents {{", 1)
        with open(conf, "w") as f:
            f.write(text)
        proc = fleet.spawn("nginx", [binary, "-c", conf, "-p", prefix])
        proc.error_log = os.path.join(prefix, "error.log")
        return proc, Target("nginx", f"http://127.0.0.1:{port}", [proc]), lambda: _get(port, "/health") == 200

    return fleet.launch(start)


def installed_footprint(fleet: Fleet, sim: str, python: str, pauses: float) -> dict:
    """fleetproxy as installed for ``python`` (supervisor and one worker): its idle memory."""
    env = {k: v for k, v in os.environ.items() if k not in ("FLEETPROXY_PURE", "PYTHONPATH")}
    env["PYTHONSAFEPATH"] = "1"  # not the current directory (this tree) first on sys.path; inherited by the worker
    where = subprocess.run([python, "-c", "import _speedups as s; print(s.IMPLEMENTATION, s.__file__)"],
                           env=env, capture_output=True, text=True, check=True).stdout.split()
    if where[0] != "native" or where[1].startswith(HERE + os.sep):
        raise StartError(f"--installed {python}: its fleetproxy is {where[0]}, from {where[1]}: not a native install")
    return _idle_footprint(fleet, "fleetproxy-installed", [python, "-m", "proxy"], sim, env, pauses)


def single_process_footprint(fleet: Fleet, sim: str, pauses: float) -> dict:
    """`fleetproxy --single-process`: its idle memory, then stopped."""
    env = dict(os.environ)
    env.pop("FLEETPROXY_PURE", None)
    return _idle_footprint(fleet, "fleetproxy-single", [sys.executable, "-m", "proxy", "--single-process"], sim,
                           env, pauses)


def _idle_footprint(fleet: Fleet, name: str, command: list[str], sim: str, env: dict, pauses: float) -> dict:
    """Start ``command`` (fleetproxy) in front of ``sim``, read its idle memory once ready, stop it."""
    port, admin = fleet.port(), fleet.port()
    proc = fleet.spawn(name, [*command, "--log-level", "warning", "--listen", f"127.0.0.1:{port}", "--admin-listen",
                              f"127.0.0.1:{admin}", "--backend", sim], env=env)
    try:
        _wait(proc, lambda: _get(admin, "/readyz") == 200 and _get(port, "/health") == 200)
        time.sleep(IDLE_SETTLE * pauses)
        return memory([proc.pid])
    finally:
        fleet.stop(proc)


async def measure(t: Target, sim_pid: int, args) -> dict:
    """One target: warm up, idle reading, ramp, first tokens, the window, probes, reset."""
    tokens = int((args.streams / args.ramp + FIRST_TOKEN_WAIT + SETTLE + args.window + args.probe_s + 30)
                 / args.itl) + 1
    out: dict = {"target": t.name, "streams": args.streams}
    # Warm-up: a few short streams to their end, then their connections closed.
    warm = Streams(t.url, 0.0, 0.01, 4)
    await warm.open(WARMUP_STREAMS, 200.0)
    await warm.finished(10.0)
    failures = {f"warm-up: {k}": v for k, v in warm.failures(open_expected=False).items()}
    warm.reset()
    await asyncio.sleep(IDLE_SETTLE * args.pauses)
    out["idle"] = memory(t.pids) if t.procs else None
    out["sim_idle"] = memory([sim_pid])

    def cpus():  # (target, simulator, this client) CPU seconds so far
        return cpu.tree_seconds(t.pids), cpu.tree_seconds([sim_pid]), time.process_time()

    s = Streams(t.url, args.ttft, args.itl, tokens)
    gc_from = time.monotonic()
    c0 = cpus()
    out["ramp_s"] = round(await s.open(args.streams, args.ramp), 2)
    await s.first_tokens(FIRST_TOKEN_WAIT)
    ramp = perf_counter() - s.results[0].start
    out["first_tokens_s"] = round(ramp, 2)
    out["ramp_cpu_share"] = _shares(c0, cpus(), ramp, bool(t.procs))
    await asyncio.sleep(SETTLE * args.pauses)

    c0, tok0, w0 = cpus(), s.token_events(), perf_counter()
    await asyncio.sleep(args.window)
    c1, tok1, w1 = cpus(), s.token_events(), perf_counter()
    out["open"] = memory(t.pids) if t.procs else None
    out["sim_open"] = memory([sim_pid])
    events = tok1 - tok0
    window = w1 - w0
    out.update({
        "window_s": round(window, 2),
        "token_events": events,
        "token_events_per_s": round(events / window, 1),
        "open_streams": sum(1 for r in s.results if r.tokens and r.error is None),
        "ttft_ms": percentiles([r.first - r.start for r in s.results if r.tokens]),
        "ttft_by_second": by_second(s.results),
        "cpu_s": round(c1[0] - c0[0], 3) if t.procs else None,
        "cpu_share": _shares(c0, c1, window, bool(t.procs)),
        "cpu_us_per_token": round((c1[0] - c0[0]) / events * 1e6, 2) if t.procs and events else None,
        "sim_cpu_us_per_token": round((c1[1] - c0[1]) / events * 1e6, 2) if events else None,
    })
    n = args.streams
    if t.procs and out["idle"] and out["open"]:
        out["kib_per_stream"] = round((out["open"]["rss_kib"] - out["idle"]["rss_kib"]) / n, 2)
        out["pss_kib_per_stream"] = round((out["open"]["pss_kib"] - out["idle"]["pss_kib"]) / n, 2)
    out["sim_kib_per_stream"] = round((out["sim_open"]["rss_kib"] - out["sim_idle"]["rss_kib"]) / n, 2)

    # Probes: new short streams while every stream is still open, at a rate that adds little.
    probes = Streams(t.url, args.ttft, 0.01, 2, close_when_done=True)
    await probes.open(max(1, round(args.probe_s * PROBE_RATE)), PROBE_RATE)
    await probes.finished(FIRST_TOKEN_WAIT)
    out["probe_ttft_ms"] = percentiles([r.first - r.start for r in probes.results if r.tokens])
    out["probes"] = len(probes.results)
    out["gc"] = {"target": gc_pauses(args.gc_dir, cpu.tree_pids(t.pids[0]) if t.procs else [], gc_from),
                 "simulator": gc_pauses(args.gc_dir, [sim_pid], gc_from)}
    for k, v in probes.failures(open_expected=False).items():
        failures[f"probe: {k}"] = failures.get(f"probe: {k}", 0) + v
    for k, v in s.failures(open_expected=True).items():  # every stream must still be open here
        failures[k] = failures.get(k, 0) + v
    out["errors"] = sum(failures.values())
    out["error_kinds"] = failures
    probes.reset()
    s.reset()
    await asyncio.sleep(CLOSE_SETTLE * args.pauses)
    out["after"] = memory(t.pids) if t.procs else None
    return out


def gc_pauses(log_dir: str | None, pids: list[int], since: float) -> dict | None:
    """Collections of these processes since ``since`` (CLOCK_MONOTONIC s), from GC_HOOK's logs."""
    if not log_dir or not pids:
        return None
    pauses = []  # (generation, ms)
    watched = False
    for pid in pids:
        try:
            with open(os.path.join(log_dir, f"gc-{pid}.log")) as f:
                watched = True
                for line in f:
                    at, gen, ms = line.split()
                    if float(at) >= since:
                        pauses.append((int(gen), float(ms)))
        except (OSError, ValueError):
            continue
    if not watched:
        return None  # not Python (nginx)
    full = [ms for gen, ms in pauses if gen == 2]
    return {"full_collections": len(full), "longest_ms": round(max((ms for _, ms in pauses), default=0.0), 1),
            "total_ms": round(sum(ms for _, ms in pauses), 1)}


def by_second(results: list[Result]) -> list[dict]:
    """First-token p50 / p99 of the streams opened in each second of the ramp: where the tail is."""
    if not results:
        return []
    t0 = results[0].start
    seconds: dict[int, list[float]] = {}
    for r in results:
        if r.tokens:
            seconds.setdefault(int(r.start - t0), []).append(r.first - r.start)
    out = []
    for sec in sorted(seconds):
        p = percentiles(seconds[sec])
        out.append({"second": sec, "streams": len(seconds[sec]), "p50_ms": p["50"], "p99_ms": p["99"]})
    return out


def _shares(a: tuple, b: tuple, seconds: float, proxy: bool) -> dict:
    """CPU time over ``seconds`` as shares of one core: the target, the simulator, the client."""
    return {"target": round((b[0] - a[0]) / seconds, 3) if proxy else None,
            "simulator": round((b[1] - a[1]) / seconds, 3), "client": round((b[2] - a[2]) / seconds, 3)}


def watch_gc(fleet: Fleet) -> str:
    """Put GC_HOOK on the PYTHONPATH of every process started from now on; return its log dir."""
    hook = os.path.join(fleet.dir, "gc-hook")
    os.makedirs(hook, exist_ok=True)
    with open(os.path.join(hook, "sitecustomize.py"), "w") as f:
        f.write(GC_HOOK)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (hook, os.environ.get("PYTHONPATH")) if p)
    os.environ["FLEETPROXY_BENCH_GC_LOG"] = fleet.dir
    return fleet.dir


def run(args, fleet: Fleet) -> dict:
    results: dict = {"targets": {}, "footprint": {}}
    args.gc_dir = watch_gc(fleet)
    for name in args.targets:
        print(f"capacity: {name}: {args.streams} streams, {args.ramp:g}/s, window {args.window:g} s",
              file=sys.stderr, flush=True)
        sim = start_sim(fleet, f"sim-{name}", args.streams)
        sim_proc = fleet.procs[-1]
        if name == "direct":
            target = Target("direct", sim)
        elif name == "fleetproxy":
            target = start_fleetproxy(fleet, sim, args.streams)
        else:
            target = start_nginx(fleet, sim, args.streams)
        try:
            if target.procs:
                time.sleep(IDLE_SETTLE * args.pauses)
                results["footprint"][name] = memory(target.pids)  # idle, before any request
            gc.collect()
            gc.disable()  # the client's own pauses would land in every first-token time
            try:
                results["targets"][name] = uvloop.run(measure(target, sim_proc.pid, args))
            finally:
                gc.enable()
            if name == "fleetproxy":
                single = single_process_footprint(fleet, sim, args.pauses)
                results["footprint"]["fleetproxy --single-process"] = single
                if args.installed:
                    results["footprint"]["fleetproxy, pip-installed"] = installed_footprint(
                        fleet, sim, args.installed, args.pauses)
        finally:
            for p in target.procs:
                fleet.stop(p)
            fleet.stop(sim_proc)
        r = results["targets"][name]
        print(f"capacity: {name}: {r['open_streams']} open, {r['errors']} errors, "
              f"{r.get('kib_per_stream', '—')} KiB/stream, {r.get('cpu_us_per_token') or '—'} µs/token "
              f"event, first token p99 {r['ttft_ms'].get('99', '—')} ms (ramp), "
              f"{r['probe_ttft_ms'].get('99', '—')} ms (probes)", file=sys.stderr, flush=True)
    return results


# -- the report -------------------------------------------------------------------------------------

def _mib(kib) -> str:
    return "—" if kib is None else f"{kib / 1024:.1f}"


def _n(x, digits=1) -> str:
    return "—" if x is None else f"{x:,.{digits}f}"


def _p99_ratio(r: dict, direct: dict | None, key: str) -> float | None:
    p, q = (r.get(key) or {}).get("99"), ((direct or {}).get(key) or {}).get("99")
    return p / q if p and q else None


def verdicts(result: dict) -> list[str]:
    """The issue's goals for fleetproxy, each met or not, with the figure that decides."""
    t, cfg = result["targets"], result["config"]
    fp, direct = t.get("fleetproxy"), t.get("direct")
    if not fp:
        return []
    kib = fp.get("kib_per_stream")
    lines = [f"- memory per open stream ≤ {GOAL_KIB_PER_STREAM:g} KiB: "
             f"{'met' if kib is not None and kib <= GOAL_KIB_PER_STREAM else 'NOT met'} ({_n(kib, 2)} KiB)"]
    held = f"{fp['open_streams']:,} of {fp['streams']:,} open, {fp['errors']} errors"
    for key, what in (("ttft_ms", f"the streams' own first tokens, during the ramp at {cfg['ramp']:g} "
                                  "connects/s"),
                      ("probe_ttft_ms", f"probes at {PROBE_RATE:g}/s with every stream open")):
        ratio = _p99_ratio(fp, direct, key)
        ok = ratio is not None and ratio <= GOAL_TTFT_RATIO and not fp["errors"] \
            and fp["open_streams"] == fp["streams"]
        if cfg["streams"] < GOAL_STREAMS:
            why = "the descriptor limit, see the note" if cfg.get("note") else "not asked in this run"
            head = f"at {cfg['streams']:,} streams per worker ({GOAL_STREAMS:,} not measured: {why})"
        else:
            head = f"{cfg['streams']:,} streams per worker"
        lines.append(f"- {head}, first-token p99 ≤ {GOAL_TTFT_RATIO:g}× direct, {what}: "
                     f"{'met' if ok else 'NOT met'} ({held}; {_n(ratio, 2)}×)")
    # The footprint as users run it where it was measured (pip-installed: no editable finder).
    footprint = result.get("footprint", {})
    which = next((n for n in ("fleetproxy, pip-installed", "fleetproxy") if n in footprint), None)
    if which is not None:
        mib = footprint[which]["pss_kib"] / 1024
        lines.append(f"- idle footprint ≤ {GOAL_IDLE_PSS_MIB:g} MiB (PSS, supervisor and one worker): "
                     f"{'met' if mib <= GOAL_IDLE_PSS_MIB else 'NOT met'} ({mib:.1f} MiB, {which})")
    return lines


def role(proxy: str, i: int) -> str:
    """What the i-th process of a tree is (memory() lists the root first)."""
    if "single" in proxy:
        return "the process"
    if i == 0:
        return "master" if proxy == "nginx" else "supervisor"
    return "worker"


def markdown(result: dict) -> str:
    cfg, t = result["config"], result["targets"]
    direct = t.get("direct")
    lines = [f"# Capacity: {cfg['streams']:,} open streams per worker, {result['date']}", "",
             f"Machine: {report.machine_line(result['machine'])}.  ",
             f"`{' '.join(['python -m bench.capacity', *cfg['argv']])}`; "
             f"finished in {result['elapsed_s']:.0f} s.", "",
             "Goals (issue 13): at most 8 KiB per open stream; at least 10,000 streams per worker with "
             "the first-token p99 within 2× of a direct connection; an idle footprint of at most 40 MiB "
             "for one worker.", "",
             *([f"**Note:** {cfg['note']}", ""] if cfg.get("note") else []), *verdicts(result), "",
             "| target | streams open | errors | KiB per stream (RSS) | KiB per stream (PSS) | CPU µs per "
             "token event | simulator CPU µs per token event | RSS idle MiB | RSS with streams MiB "
             "| RSS after reset MiB |",
             "|" + "---|" * 10]
    for name, r in t.items():
        cells = [name, f"{r['open_streams']:,} of {r['streams']:,}", str(r["errors"]),
                 _n(r.get("kib_per_stream"), 2), _n(r.get("pss_kib_per_stream"), 2),
                 _n(r.get("cpu_us_per_token")), _n(r.get("sim_cpu_us_per_token")),
                 _mib((r.get("idle") or {}).get("rss_kib")), _mib((r.get("open") or {}).get("rss_kib")),
                 _mib((r.get("after") or {}).get("rss_kib"))]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"First token, ms: the {cfg['streams']:,} streams as they opened (ramp, {cfg['ramp']:g} "
              f"connects/s), and probe streams ({PROBE_RATE:g}/s for {cfg['probe_s']:g} s) with all of them "
              "open; CPU as shares of one core (target / simulator / client); Python's garbage collector "
              "from the ramp to the end of the probes (target / simulator):", "",
              "| target | ramp p50 | ramp p99 | ramp p99 ÷ direct | probe p50 | probe p99 "
              "| probe p99 ÷ direct | CPU during the ramp | CPU during the window | token events/s "
              "| GC longest pause ms | GC pauses in all ms | GC full collections |",
              "|" + "---|" * 13]
    for name, r in t.items():
        ratios = [_p99_ratio(r, direct, k) if name != "direct" else None
                  for k in ("ttft_ms", "probe_ttft_ms")]
        cells = [name, _n(r["ttft_ms"].get("50")), _n(r["ttft_ms"].get("99")),
                 f"{ratios[0]:.2f}×" if ratios[0] else "—", _n(r["probe_ttft_ms"].get("50")),
                 _n(r["probe_ttft_ms"].get("99")), f"{ratios[1]:.2f}×" if ratios[1] else "—",
                 _share(r["ramp_cpu_share"]), _share(r["cpu_share"]), _n(r["token_events_per_s"], 0)]
        cells += [" / ".join(_n((r.get("gc", {}).get(k) or {}).get(f), d) for k in ("target", "simulator"))
                  for f, d in (("longest_ms", 0), ("total_ms", 0), ("full_collections", 0))]
        lines.append("| " + " | ".join(cells) + " |")
    worst = []
    for name, r in t.items():
        secs = r.get("ttft_by_second") or []
        if secs:
            w = max(secs, key=lambda x: x["p50_ms"])
            calm = min(x["p50_ms"] for x in secs)
            worst.append(f"{name} {w['p50_ms']:.0f} / {w['p99_ms']:.0f} ms (second {w['second']}; "
                         f"the calmest {calm:.0f} ms at p50)")
    if worst:
        lines += ["", "The ramp's slowest second, first token p50 / p99 of the streams opened in it: "
                  + "; ".join(worst) + " (every second in the JSON, `ttft_by_second`)."]
    errors = {n: r["error_kinds"] for n, r in t.items() if r["errors"]}
    if errors:
        lines += ["", "Errors: " + "; ".join(f"{n}: {k}" for n, k in errors.items()) + "."]
    lines += ["", "Idle footprint (before any request; summed over the processes):", "",
              "| proxy | processes | RSS MiB | PSS MiB | per process (RSS MiB) |", "|---|---|---|---|---|"]
    for name, m in result["footprint"].items():
        per = ", ".join(f"{role(name, i)} {p['rss_kib'] / 1024:.1f}" for i, p in enumerate(m["processes"]))
        cells = [name, str(len(m["processes"])), _mib(m["rss_kib"]), _mib(m["pss_kib"]), per]
        lines.append("| " + " | ".join(cells) + " |")
    method = " ".join(METHOD.split()).format(probe_rate=PROBE_RATE, nginx_spare=NGINX_SPARE, **cfg)
    lines += ["", "Method. " + method, ""]
    return "\n".join(lines)


def _share(d: dict) -> str:
    return " / ".join("—" if d.get(k) is None else f"{d[k]:.2f}" for k in ("target", "simulator", "client"))


METHOD = """Each target gets a fresh simulator that holds every stream at once. After {warmup} short
streams and {pause:g} s idle, the client (one uvloop process, one connection per stream) opens
{streams} streaming chat requests at {ramp:g} a second; each answer has its first token after
{ttft:g} s and then one token every {itl:g} s, and lasts longer than the run. Once every stream
has its first token and {pause:g} s more, a {window:g} s window: memory per stream is the
target's RSS (VmRSS, summed over its process tree: supervisor and worker, or nginx's master and
worker) at the end of the window minus its idle RSS, over the stream count; PSS (smaps_rollup)
beside it; kernel socket buffers are in neither, and nginx's connection slots (two per
stream and {nginx_spare} more, allocated when it starts) are in its idle RSS. CPU per token
event is the tree's user + system time over the window (schedstat) over the token events the
client received in it. First token: from the client starting to connect to the first content
event; for the ramp, over every stream as it opened (while the target also relays the tokens of those already
open), and for the probes, {probe_rate:g} short streams a second for {probe_s:g} s after the
window, with every stream still open: the first says what opening them at that rate costs, the
second what holding them costs a new request. Both p99s are set against the direct connection's.
Then the client resets every connection and the RSS is read again after {close:g} s. The
simulator's CPU per token event is the same for every target up to noise: it shows what the
machine's shared load did to the window. This 2-core machine runs the client, the simulator and
the target at once, and is shared with other work. The client runs with its garbage collector
off; fleetproxy's and the simulator's collections are logged by a sitecustomize.py on their
PYTHONPATH that only watches (gc.callbacks): a collection of the oldest generation stops a
process for as long as it walks every object it holds, which grows with the streams."""


# -- the command ------------------------------------------------------------------------------------

def parse(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.capacity", description=__doc__.splitlines()[0])
    p.add_argument("--streams", type=int, help="open streams (default 10,000; 500 with --smoke)")
    p.add_argument("--smoke", action="store_true", help="500 streams, a 3 s window, results to a temp dir")
    p.add_argument("--targets", default=",".join(TARGETS), metavar="LIST",
                   help=f"from {','.join(TARGETS)} (default all)")
    p.add_argument("--ramp", type=float, default=1000.0, metavar="N",
                   help="connects per second (default 1000)")
    p.add_argument("--ttft", type=float, default=0.1, help="simulated time to first token, s (default 0.1)")
    p.add_argument("--itl", type=float, default=1.0, help="simulated time between tokens, s (default 1)")
    p.add_argument("--window", type=float, help="steady window, s (default 10; 3 with --smoke)")
    p.add_argument("--probe-s", type=float, help=f"seconds of probe streams ({PROBE_RATE:g}/s) with every "
                   "stream open (default 5; 2 with --smoke)")
    p.add_argument("--out", metavar="DIR",
                   help="where results go (default bench/results; a temp dir with --smoke)")
    p.add_argument("--installed", metavar="PYTHON",
                   help="also the idle footprint of fleetproxy as installed in this interpreter's environment "
                        "(python -m venv V; V/bin/pip install .; --installed V/bin/python)")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.pauses = SMOKE_PAUSES if args.smoke else 1.0
    if args.streams is None:
        args.streams = 500 if args.smoke else GOAL_STREAMS
    if args.window is None:
        args.window = 3.0 if args.smoke else 10.0
    if args.probe_s is None:
        args.probe_s = 2.0 if args.smoke else 5.0
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    if not names or any(n not in TARGETS for n in names):
        p.error(f"--targets: choose from {', '.join(TARGETS)}")
    args.targets = names
    if args.streams < 1 or args.ramp <= 0 or args.itl <= 0 or args.ttft < 0 or args.window <= 0:
        p.error("--streams >= 1; --ramp, --itl and --window > 0; --ttft >= 0")
    return args


def main(argv=None) -> int:
    args = parse(argv)
    if "nginx" in args.targets and nginx_path() is None:
        print("capacity: nginx is not installed: running without it", file=sys.stderr)
        args.targets.remove("nginx")
    asked = args.streams
    try:
        args.streams, limit, note = fit_nofile(args.streams)
    except StartError as e:
        print(f"capacity: {e}", file=sys.stderr)
        return 2
    if note:
        print(f"capacity: {note}", file=sys.stderr)
    out_dir = args.out or (tempfile.mkdtemp(prefix="fleetproxy-capacity-") if args.smoke else RESULTS)
    started = time.monotonic()
    machine = report.machine(nginx_path())
    try:
        with Fleet() as fleet:
            result = run(args, fleet)
    except StartError as e:
        print(f"capacity: a process did not start: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("capacity: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    date = time.strftime("%Y-%m-%d")
    machine["loadavg_end"] = os.getloadavg()
    result.update(date=date, machine=machine, elapsed_s=round(time.monotonic() - started, 1),
                  config={"streams": args.streams, "ramp": args.ramp, "ttft": args.ttft, "itl": args.itl,
                          "window": args.window, "probe_s": args.probe_s, "warmup": WARMUP_STREAMS,
                          "close": CLOSE_SETTLE * args.pauses, "pause": IDLE_SETTLE * args.pauses,
                          "smoke": args.smoke, "argv": args.argv, "nofile": limit, "streams_asked": asked,
                          "note": note})
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(out_dir, f"{date}-capacity")
    text = markdown(result)
    with open(base + ".md", "w") as f:
        f.write(text)
    with open(base + ".json", "w") as f:
        json.dump(result, f, indent=1)
    print(text)
    print(f"capacity: done in {result['elapsed_s']:.0f} s; wrote {base}.md and .json", file=sys.stderr)
    failed = [f"{n}: {r['errors']} errors {r['error_kinds']}"
              for n, r in result["targets"].items() if r["errors"]]
    if failed:
        print("capacity: FAILED:\n  " + "\n  ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
