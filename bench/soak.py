"""`python -m bench soak`: minutes of mixed streaming load through the proxy, then a leak verdict.

How this works. Two simulators (bench/procs.py starts them) behind fleetproxy with two workers.
Client tasks in this process loop over a mix of requests on raw sockets: streams read to the
end, streams the client abandons mid-way (a reset: the proxy must abort the upstream request),
slow readers that take a few bytes a second with a small receive buffer (backpressure all the
way up; they give up after a while), and plain JSON requests. Every minute one simulator is
killed (SIGKILL, mid-stream) and started again on its port. A sampler reads, for the supervisor
and each worker, open fds and RSS from /proc, and the admin /metrics: requests in flight per
backend and worker restarts, at the start, every 30 s, and after the load stops and the proxy
had time to settle (idle upstream connections close after the pool's idle timeout).

Verdict (the tolerances are stated in the result):
- in flight back to 0, and no worker restarted;
- each process's fds after the load at most its start count + FD_SLACK;
- each worker's RSS at the end of the load at most its first in-load sample + RSS_SLACK:
  the first sample is taken once the load has ramped up, so what the allocator keeps for the
  load's working set is not counted as growth.
Results: bench/results/<date>-soak.md and .json (or --out).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import random
import signal
import socket
import sys
import threading
import time

from . import report
from .procs import READY_TIMEOUT, Fleet, StartError, _get, wait_port

SAMPLE_EVERY = 30.0  # s
RESTART_EVERY = 60.0  # s: one backend killed and restarted
DOWN_FOR = 3.0  # s a killed backend stays down
SETTLE = 12.0  # s after the load: above the pool's idle timeout (4 s) and a health round
FD_SLACK = 8  # fds a process may hold after the load beyond its start count
RSS_SLACK = 24 * 1024 * 1024  # bytes a worker's RSS may grow from its first in-load sample
MIX = (("stream", 5), ("abort", 2), ("slow", 1), ("json", 2))  # kind, weight
SLOW_FOR = 15.0  # s a slow reader reads before it gives up
SLOW_BYTES = 16  # bytes a slow reader takes at a time, 4 times a second


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m bench soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="load duration (default 10)")
    p.add_argument("--clients", type=int, default=48, help="concurrent client tasks (default 48)")
    p.add_argument("--workers", type=int, default=2, help="proxy workers (default 2)")
    p.add_argument("--out", metavar="DIR", help="where results go (default bench/results)")
    p.add_argument("--note", default="", help="a line for the result (what else ran on the machine)")
    args = p.parse_args(argv)
    if args.minutes <= 0 or args.clients < 1 or args.workers < 1:
        p.error("--minutes must be > 0, --clients and --workers >= 1")
    return args


# -- the processes -------------------------------------------------------------------------


class Soak:
    def __init__(self, fleet: Fleet, workers: int):
        self.fleet = fleet
        self.sims = []  # [name, port, Proc]
        for i in range(2):
            port = fleet.port()
            self.sims.append([f"soak-sim{i}", port, self._sim(f"soak-sim{i}", port)])
        self.port, self.admin = fleet.port(), fleet.port()
        argv = [sys.executable, "-m", "proxy", "--listen", f"127.0.0.1:{self.port}", "--admin-listen",
                f"127.0.0.1:{self.admin}", "--workers", str(workers), "--log-level", "warning"]
        for _, port, _ in self.sims:
            argv += ["--backend", f"http://127.0.0.1:{port}"]
        self.proxy = fleet.spawn("soak-proxy", argv, env=dict(os.environ))
        deadline = time.monotonic() + READY_TIMEOUT
        while _get(self.admin, "/readyz") != 200:
            if self.proxy.popen.poll() is not None or time.monotonic() > deadline:
                raise StartError(f"fleetproxy did not become ready:\n{self.proxy.tail()}")
            time.sleep(0.1)

    def _sim(self, name, port):
        proc = self.fleet.spawn(name, [sys.executable, "-m", "proxy.sim", "--port", str(port), "--name", name,
                                       "--ttft", "0.05", "--itl", "0.02", "--max-concurrency", "4096"])
        wait_port(port, proc.popen, READY_TIMEOUT)
        return proc

    def kill_and_restart(self, i):
        name, port, proc = self.sims[i]
        os.kill(proc.pid, signal.SIGKILL)
        self.fleet.stop(proc)
        time.sleep(DOWN_FOR)
        self.sims[i][2] = self._sim(name, port)

    def pids(self):
        """The supervisor and its workers (the supervisor's children)."""
        sup = self.proxy.pid
        children = []
        for task in os.listdir(f"/proc/{sup}/task"):
            with open(f"/proc/{sup}/task/{task}/children") as f:
                children += [int(pid) for pid in f.read().split()]
        return [sup] + sorted(children)

    def sample(self, phase, t0):
        procs = {}
        for pid in self.pids():
            try:
                fds = len(os.listdir(f"/proc/{pid}/fd"))
                with open(f"/proc/{pid}/status") as f:
                    rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
            except (OSError, StopIteration):
                continue
            procs[str(pid)] = {"fds": fds, "rss": rss}
        metrics = _metrics(self.admin)
        in_flight = sum(v for k, v in metrics.items() if k.startswith("fleetproxy_backend_in_flight"))
        return {"t": round(time.monotonic() - t0, 1), "phase": phase, "procs": procs, "in_flight": in_flight,
                "restarts": metrics.get("fleetproxy_worker_restarts_total", 0.0)}


def _metrics(admin):
    conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


# -- the load ------------------------------------------------------------------------------


def _request(port, stream, tokens):
    body = json.dumps({"model": "tiny", "stream": stream, "max_tokens": tokens,
                       "messages": [{"role": "user", "content": f"soak {random.random()}"}]}).encode()
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (port, len(body), body))


async def _one(port, kind, counts):
    sock = socket.socket()
    if kind == "slow":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_connect(sock, ("127.0.0.1", port))
        await loop.sock_sendall(sock, _request(port, kind != "json", random.randint(20, 120)))
        got = b""
        cut = random.randint(50, 2000) if kind == "abort" else None
        slow_until = time.monotonic() + SLOW_FOR
        while True:
            data = await loop.sock_recv(sock, SLOW_BYTES if kind == "slow" else 65536)
            if not data:
                break
            got += data
            if b"data: [DONE]" in got[-64:] or (kind == "json" and _json_done(got)):
                break
            if cut is not None and len(got) >= cut:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                counts["aborted"] += 1  # closed with a reset, mid-stream
                return
            if kind == "slow":
                if time.monotonic() > slow_until:
                    counts["slow gave up"] += 1
                    return
                await asyncio.sleep(0.25)
        status = got[9:12]
        counts["ok" if status == b"200" and (kind == "json" or b"[DONE]" in got) else f"failed {status.decode(errors='replace') or 'no answer'}"] += 1
    except OSError as exc:
        counts[f"error {type(exc).__name__}"] += 1
    finally:
        sock.close()


def _json_done(got):
    head, sep, body = got.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


async def _clients(port, n, until, counts):
    kinds = [k for k, w in MIX for _ in range(w)]

    async def client():
        while time.monotonic() < until:
            kind = random.choice(kinds)
            counts["started " + kind] += 1
            await _one(port, kind, counts)

    await asyncio.gather(*(client() for _ in range(n)))


# -- the run -------------------------------------------------------------------------------


def run(args) -> dict:
    from collections import Counter

    counts = Counter()
    samples = []
    kills = []
    with Fleet() as fleet:
        soak = Soak(fleet, args.workers)
        t0 = time.monotonic()
        samples.append(soak.sample("start", t0))
        until = t0 + args.minutes * 60
        load = threading.Thread(target=lambda: asyncio.run(_clients(soak.port, args.clients, until, counts)))
        load.start()
        next_sample, next_kill, victim = t0 + SAMPLE_EVERY, t0 + RESTART_EVERY, 0
        while time.monotonic() < until:
            time.sleep(0.2)
            now = time.monotonic()
            if now >= next_kill and now + DOWN_FOR < until:
                kills.append({"t": round(now - t0, 1), "backend": soak.sims[victim][0]})
                soak.kill_and_restart(victim)
                victim = 1 - victim
                next_kill += RESTART_EVERY
            if now >= next_sample:
                samples.append(soak.sample("load", t0))
                next_sample += SAMPLE_EVERY
        load.join()  # the clients finish what they were doing
        samples.append(soak.sample("load end", t0))
        time.sleep(SETTLE)
        samples.append(soak.sample("after", t0))
    return {"counts": dict(counts), "samples": samples, "kills": kills}


def verdict(result) -> list[str]:
    """What failed; empty when the run passed."""
    samples = result["samples"]
    start, after = samples[0], samples[-1]
    load = [s for s in samples if s["phase"] == "load"]
    end = next(s for s in samples if s["phase"] == "load end")
    failed = []
    if after["in_flight"] != 0:
        failed.append(f"{after['in_flight']:g} requests still in flight after the load")
    if after["restarts"] != start["restarts"]:
        failed.append(f"{after['restarts'] - start['restarts']:g} worker restarts")
    for pid, first in start["procs"].items():
        now = after["procs"].get(pid)
        if now is None:
            failed.append(f"process {pid} is gone")
        elif now["fds"] > first["fds"] + FD_SLACK:
            failed.append(f"process {pid}: {first['fds']} fds at start, {now['fds']} after the load")
    base = load[0] if load else start
    for pid, first in base["procs"].items():
        last = end["procs"].get(pid)
        if last is not None and last["rss"] > first["rss"] + RSS_SLACK:
            failed.append(f"process {pid}: RSS {first['rss'] / 2**20:.1f} MiB at t={base['t']:g} s, "
                          f"{last['rss'] / 2**20:.1f} MiB at the end of the load")
    return failed


def markdown(result, args, machine, failed) -> str:
    lines = [f"# Soak: {args.minutes:g} min of mixed streaming load, {time.strftime('%Y-%m-%d')}", "",
             f"**Verdict: {'PASS' if not failed else 'FAIL'}**" + ("" if not failed else ": " + "; ".join(failed)), "",
             f"`python -m bench soak --minutes {args.minutes:g}`: fleetproxy ({args.workers} workers, speedups as "
             f"installed) in front of two simulators (ttft 50 ms, itl 20 ms); {args.clients} client tasks looping over "
             "streams read to the end, streams reset mid-way, slow readers (16 bytes every 250 ms, 4 KiB receive "
             f"buffer, giving up after {SLOW_FOR:g} s) and JSON requests (weights "
             + ", ".join(f"{k} {w}" for k, w in MIX) + f"); one backend SIGKILLed and restarted on its port every "
             f"{RESTART_EVERY:g} s (down {DOWN_FOR:g} s).", "",
             f"Tolerances: in flight 0 and no worker restart after the load; per process, fds {SETTLE:g} s after the "
             f"load at most start + {FD_SLACK}; per process, RSS at the end of the load at most the first in-load "
             f"sample + {RSS_SLACK // 2**20} MiB.", ""]
    if args.note:
        lines += [f"Note: {args.note}", ""]
    lines += [f"Machine: {report.machine_line(machine)}; load average at the end "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}.", "",
              "| t (s) | phase | in flight | " + " | ".join(f"pid {p} fds / RSS MiB" for p in result["samples"][0]["procs"]) + " |",
              "|---|---|---|" + "---|" * len(result["samples"][0]["procs"])]
    for s in result["samples"]:
        cells = [f"{s['procs'][p]['fds']} / {s['procs'][p]['rss'] / 2**20:.1f}" if p in s["procs"] else "-"
                 for p in result["samples"][0]["procs"]]
        lines.append(f"| {s['t']:g} | {s['phase']} | {s['in_flight']:g} | " + " | ".join(cells) + " |")
    lines += ["", "Requests: " + ", ".join(f"{k} {v}" for k, v in sorted(result["counts"].items())), "",
              "Backend restarts: " + (", ".join(f"{k['backend']} at {k['t']:g} s" for k in result["kills"]) or "none"),
              "", "Failed requests are expected around each kill (streams cut, 502s); they are counted, not judged."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse(argv)
    started = time.time()
    machine = report.machine(None)  # before the load: its load average is the machine's own
    try:
        result = run(args)
    except StartError as e:
        print(f"bench soak: the fleet did not start: {e}", file=sys.stderr)
        return 2
    failed = verdict(result)
    result.update({"verdict": "pass" if not failed else "fail", "failed": failed, "machine": machine,
                   "config": {"minutes": args.minutes, "clients": args.clients, "workers": args.workers,
                              "fd_slack": FD_SLACK, "rss_slack_bytes": RSS_SLACK, "settle_s": SETTLE,
                              "note": args.note, "started": started}})
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    os.makedirs(out, exist_ok=True)
    stem = os.path.join(out, f"{time.strftime('%Y-%m-%d')}-soak")
    with open(stem + ".json", "w") as f:
        json.dump(result, f, indent=1)
    text = markdown(result, args, machine, failed)
    with open(stem + ".md", "w") as f:
        f.write(text)
    print(text)
    print(f"bench soak: wrote {stem}.md and .json", file=sys.stderr)
    return 0 if not failed else 1
