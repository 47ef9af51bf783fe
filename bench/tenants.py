"""Tenant isolation: `python -m bench.tenants` (issue 15).

A quiet tenant streams at a steady rate through fleetproxy to two simulators, first alone, then
beside a noisy tenant that sends ten times the request rate its limit allows. The limit turns
the excess into 429s at the proxy, so the simulators (and the quiet tenant's time to first
token) see only the noisy tenant's share. Measured per phase, from the client: the quiet
tenant's TTFT p50/p99, the noisy tenant's 200s and 429s; then the honesty of Retry-After: a
client refused with a 429 sleeps exactly its ``retry-after-ms`` and sends again, and the share
of those retries that pass is reported. Results: bench/results/<date>-tenants.md.

Open loop (requests leave on a schedule, not when the previous one ends), threads and
http.client: the load is light (tens of requests a second); what matters is the schedule.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime
import http.client
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time

from bench.procs import free_port, wait_port
from proxy.tenants.identify import hash_key

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUIET_KEY = "sk-bench-quiet-" + "q" * 20
NOISY_KEY = "sk-bench-noisy-" + "n" * 20
PROBE_KEY = "sk-bench-probe-" + "p" * 20


def start(args, port, log):
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=log, stderr=log)
    wait_port(port, proc)
    return proc


@contextlib.contextmanager
def fleet(max_num_seqs, cfg):
    """Two simulators (running at most ``max_num_seqs`` each) and a proxy with ``cfg`` (its
    ``backends`` filled in), warmed up; yields the proxy's port and stops every process it
    started on the way out."""
    tmp = tempfile.mkdtemp(prefix="bench-tenants-")
    log = open(os.path.join(tmp, "procs.log"), "w")
    procs = []
    try:
        sims = []
        for _ in range(2):
            port = free_port()
            procs.append(start(["-m", "proxy.sim", "--port", str(port), "--ttft", "0.05", "--itl", "0.01",
                                "--max-num-seqs", str(max_num_seqs)], port, log))
            sims.append(f"http://127.0.0.1:{port}")
        path = os.path.join(tmp, "fleet.json.yaml")
        with open(path, "w") as f:
            json.dump({**cfg, "backends": sims}, f)
        port, admin = free_port(), free_port()
        procs.append(start(["-m", "proxy", "--config", path, "--listen", f"127.0.0.1:{port}",
                            "--admin-listen", f"127.0.0.1:{admin}"], port, log))
        time.sleep(1.0)
        phase(port, 3.0, 4.0, 0, 32)  # warm-up (connections, threads), discarded
        yield port
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()


def stream(port, key, max_tokens):
    """(status, TTFT s or None, retry-after-ms or None) of one streamed chat request."""
    body = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hello there"}],
                       "max_tokens": max_tokens, "stream": True})
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", "/v1/chat/completions", body,
                     {"content-type": "application/json", "authorization": "Bearer " + key})
        resp = conn.getresponse()
        if resp.status != 200:
            resp.read()
            ms = resp.getheader("retry-after-ms")
            return resp.status, None, int(ms) if ms else None
        ttft = None
        while True:
            line = resp.readline()
            if not line:
                break
            if ttft is None and line.startswith(b"data: ") and b'"content"' in line:
                ttft = time.perf_counter() - t0
        return 200, ttft, None
    except OSError:
        return 0, None, None
    finally:
        conn.close()


def open_loop(pool, port, key, rate, seconds, max_tokens, out):
    """Send at ``rate`` requests/s for ``seconds``; results appended to ``out``."""
    futures = []
    start = time.perf_counter()
    n = int(rate * seconds)
    for i in range(n):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        futures.append(pool.submit(stream, port, key, max_tokens))
    for f in futures:
        out.append(f.result())


def percentile(values, q):
    values = sorted(values)
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(q * len(values)))]


def phase(port, seconds, quiet_rate, noisy_rate, max_tokens):
    quiet, noisy = [], []
    with concurrent.futures.ThreadPoolExecutor(max_workers=256) as pool:
        threads = [threading.Thread(target=open_loop, args=(pool, port, QUIET_KEY, quiet_rate, seconds, max_tokens, quiet))]
        if noisy_rate:
            threads.append(threading.Thread(target=open_loop,
                                            args=(pool, port, NOISY_KEY, noisy_rate, seconds, max_tokens, noisy)))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    ttfts = [t for s, t, _ in quiet if s == 200 and t is not None]
    return {
        "quiet_ok": sum(1 for s, _, _ in quiet if s == 200), "quiet_other": sum(1 for s, _, _ in quiet if s != 200),
        "ttft_p50": percentile(ttfts, 0.5), "ttft_p99": percentile(ttfts, 0.99),
        "noisy_ok": sum(1 for s, _, _ in noisy if s == 200), "noisy_429": sum(1 for s, _, _ in noisy if s == 429),
        "noisy_other": sum(1 for s, _, _ in noisy if s not in (200, 429)),
    }


def honesty(port, tries, max_tokens):
    """Spend the probe tenant's bucket, then: on each 429, sleep its retry-after-ms, send again."""
    passed = waited = 0
    for _ in range(tries):
        while True:
            status, _, wait_ms = stream(port, PROBE_KEY, max_tokens)
            if status == 429:
                break
        time.sleep(wait_ms / 1000)
        waited += wait_ms
        passed += stream(port, PROBE_KEY, max_tokens)[0] == 200
    return passed, tries, waited / tries


def saturated(args):
    """The fair queue's own case: the noisy tenant is not rate limited and sends more than the
    fleet can run, so vLLM (the simulators, --max-num-seqs 4) reports requests waiting. The
    quiet tenant's TTFT p99 alone, beside the noisy one with fair queuing, and without it
    (``fair_queue.enabled: false``: every request goes straight to vLLM's own FCFS queue)."""
    results = {}
    for label, fair, noisy_rate in (("quiet alone", True, 0), ("quiet + noisy, fair queue", True, args.flood),
                                    ("quiet + noisy, no fair queue", False, args.flood)):
        cfg = {
            "workers": 1, "balance": {"policy": "least_request"},
            "tenants": {"list": [
                {"name": "quiet", "keys": [hash_key(QUIET_KEY)]},
                {"name": "noisy", "keys": [hash_key(NOISY_KEY)]},
            ], "fair_queue": {"enabled": fair, "max_wait": 10}},
        }
        with fleet(4, cfg) as port:
            results[label] = phase(port, args.seconds, args.quiet_rate, noisy_rate, args.max_tokens)
    alone = results["quiet alone"]["ttft_p99"]
    rows = "\n".join(
        f"| {label} | {r['quiet_ok']} | {r['quiet_other']} | {r['ttft_p50'] * 1000:.1f} ms | "
        f"{r['ttft_p99'] * 1000:.1f} ms | {r['ttft_p99'] / alone:.2f}x | {r['noisy_ok']} | "
        f"{r['noisy_other'] + r['noisy_429']} |"
        for label, r in results.items()
    )
    date = datetime.date.today().isoformat()
    return f"""## Saturated backends: the fair queue ({date})

`python -m bench.tenants --saturate --seconds {args.seconds:g}`: one worker in front of two
simulators that run at most 4 requests each (`--max-num-seqs 4`, `--ttft 0.05 --itl 0.01`, {args.max_tokens}
tokens): about {2 * 4 / (0.05 + 0.01 * args.max_tokens):.0f} streams a second at most. The quiet tenant sends
{args.quiet_rate:g} req/s; the noisy one, not rate limited, {args.flood:g} req/s, so vLLM's queue fills and
the simulators report it. Equal weights. Each phase {args.seconds:g} s after 3 s of warm-up.

| phase | quiet 200 | quiet other | quiet TTFT p50 | quiet TTFT p99 | p99 / alone | noisy 200 | noisy refused |
|---|---|---|---|---|---|---|---|
{rows}
"""


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    p.add_argument("--quiet-rate", type=float, default=4.0, help="quiet tenant's requests/s")
    p.add_argument("--noisy-limit", type=float, default=4.0, help="noisy tenant's requests_per_second")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default=None)
    p.add_argument("--saturate", action="store_true",
                   help="the fair queue's case instead: backends saturated by an unlimited noisy tenant")
    p.add_argument("--flood", type=float, default=40.0, help="--saturate: the noisy tenant's requests/s")
    args = p.parse_args(argv)
    if args.saturate:
        report = saturated(args)
        out = args.out or os.path.join(ROOT, "bench", "results", f"{datetime.date.today().isoformat()}-tenants.md")
        with open(out, "a") as f:
            f.write("\n" + report)
        print(report)
        return 0
    noisy_rate = 10 * args.noisy_limit
    cfg = {
        "workers": args.workers,
        "tenants": {"list": [
            {"name": "quiet", "keys": [hash_key(QUIET_KEY)], "requests_per_second": 2 * args.quiet_rate},
            {"name": "noisy", "keys": [hash_key(NOISY_KEY)], "requests_per_second": args.noisy_limit,
             "burst_requests": max(1, int(args.noisy_limit))},
            {"name": "probe", "keys": [hash_key(PROBE_KEY)], "requests_per_second": 2, "burst_requests": 1},
        ]},
    }
    with fleet(16, cfg) as port:
        alone = phase(port, args.seconds, args.quiet_rate, 0, args.max_tokens)
        mixed = phase(port, args.seconds, args.quiet_rate, noisy_rate, args.max_tokens)
        passed, tries, mean_wait = honesty(port, 20, args.max_tokens)
    ratio = mixed["ttft_p99"] / alone["ttft_p99"]
    date = datetime.date.today().isoformat()
    report = f"""# Tenants: a noisy tenant beside a quiet one ({date})

`python -m bench.tenants --seconds {args.seconds:g}` on {platform.node()} ({os.cpu_count()} CPUs,
Python {platform.python_version()}): fleetproxy ({args.workers} workers) in front of two simulators
(`--ttft 0.05 --itl 0.01 --max-num-seqs 16`), streamed chat requests of {args.max_tokens} tokens, open loop.
Quiet tenant: {args.quiet_rate:g} req/s (its limit {2 * args.quiet_rate:g}/s). Noisy tenant: {noisy_rate:g} req/s
against a limit of {args.noisy_limit:g}/s (10x its share). Each phase {args.seconds:g} s, after 3 s of
warm-up; with {alone['quiet_ok']} quiet requests a phase, p99 is about the second-slowest request.

| phase | quiet 200 | quiet other | quiet TTFT p50 | quiet TTFT p99 | noisy 200 | noisy 429 | noisy other |
|---|---|---|---|---|---|---|---|
| quiet alone | {alone['quiet_ok']} | {alone['quiet_other']} | {alone['ttft_p50'] * 1000:.1f} ms | {alone['ttft_p99'] * 1000:.1f} ms | – | – | – |
| quiet + noisy | {mixed['quiet_ok']} | {mixed['quiet_other']} | {mixed['ttft_p50'] * 1000:.1f} ms | {mixed['ttft_p99'] * 1000:.1f} ms | {mixed['noisy_ok']} | {mixed['noisy_429']} | {mixed['noisy_other']} |

Quiet tenant's TTFT p99 with the noisy one / without: **{ratio:.2f}x** (goal: within 1.2x).

Retry-After honesty: {tries} times, a client refused with 429 slept its `retry-after-ms`
(mean {mean_wait:.0f} ms) and sent again: **{passed} of {tries}** passed.
"""
    out = args.out or os.path.join(ROOT, "bench", "results", f"{date}-tenants.md")
    with open(out, "w") as f:
        f.write(report)
    print(report)
    return 0 if passed == tries else 1


if __name__ == "__main__":
    sys.exit(main())
