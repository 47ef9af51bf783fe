"""Routing quality per balancing policy: `python -m bench.routing`.

A multi-turn chat workload (sessions sharing a few system prompts, each turn resending the
whole conversation) runs through fleetproxy against N simulators that model vLLM's prefix cache
(LRU of prompt blocks, bounded) with a time to first token that grows with the *uncached* part
of the prompt. The same workload runs once per policy, on fresh simulators:

- round_robin, least_request: cache-blind;
- consistent_hash keyed by the session header (``x-session-id``), bounded loads (c = 1.25);
- consistent_hash keyed by the prompt prefix (system prompt + first question), bounded loads;
- consistent_hash by session with c = 10: practically unbounded, to show what the bound buys.

And once directly against ONE simulator with an unlimited cache: every prefix ever seen stays
cached there, so its hit rate is the bound no routing can beat.

Per run: prefix-cache hit rate (``vllm:prefix_cache_hits_total / queries_total`` summed over the
simulators), requests served per backend (max/mean), peak requests in flight per backend (from
the proxy's admin API, max/mean), TTFT p50/p99 as the client saw it, errors, and the backend HTTP
requests per client request (only health checks come on top; routing makes no extra call).
Results: bench/results/<date>-routing.md and .json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import http.client
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time

from bench.procs import free_port, wait_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results")

POLICIES = [
    ("round_robin", {"policy": "round_robin"}, None),
    ("least_request", {"policy": "least_request"}, None),
    ("consistent_hash session (c=1.25)", {"policy": "consistent_hash", "hash_keys": ["header:x-session-id"]}, "session"),
    ("consistent_hash session (c=1.1)", {"policy": "consistent_hash", "hash_keys": ["header:x-session-id"], "load_factor": 1.1}, "session"),
    ("consistent_hash prefix (c=1.25)", {"policy": "consistent_hash", "hash_keys": ["prefix"], "prefix_chars": 4096}, None),
    ("consistent_hash session (c=10, ~unbounded)", {"policy": "consistent_hash", "hash_keys": ["header:x-session-id"], "load_factor": 10.0}, "session"),
]


# -- processes ------------------------------------------------------------------------------------


class Procs:
    """Every child this bench starts; stopped by PID in reverse order."""

    def __init__(self, logdir):
        self.logdir = logdir
        self.procs = []

    def start(self, name, args, port):
        log = open(os.path.join(self.logdir, f"{name}.log"), "wb")
        proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        wait_port(port, proc)
        return proc

    def stop(self, proc):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self):
        for proc in reversed(list(self.procs)):
            self.stop(proc)


def sim_args(port, name, a, cache_blocks):
    return [
        "-m", "proxy.sim", "--port", str(port), "--name", name,
        "--ttft", str(a.ttft), "--itl", str(a.itl), "--max-concurrency", str(a.max_concurrency),
        "--block-size", str(a.block_size), "--cache-blocks", str(cache_blocks),
        "--prefill-per-token", str(a.prefill_per_token), "--prompt-tokens-details",
    ]


def get_json(port, path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", path)
    body = conn.getresponse().read()
    conn.close()
    return json.loads(body)


def scrape(port):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            name = key.split("{", 1)[0]
            out[name] = out.get(name, 0.0) + float(value)
    return out


# -- the workload ---------------------------------------------------------------------------------


def make_workload(a):
    """Sessions with their turns, fixed by the seed so every policy replays the same bytes."""
    rng = random.Random(a.seed)
    vocab = [f"w{i}" for i in range(5000)]

    def words(n):
        return " ".join(rng.choice(vocab) for _ in range(n))

    systems = [f"system prompt {k}: " + words(a.system_words) for k in range(a.system_prompts)]
    # Popularity of system prompts: Zipf-like (a few products take most conversations).
    weights = [1.0 / (k + 1) for k in range(a.system_prompts)]
    sessions = []
    for s in range(a.sessions):
        system = rng.choices(systems, weights)[0]
        turns = []
        history = [{"role": "system", "content": system}]
        for t in range(a.turns):
            history = history + [{"role": "user", "content": f"question {s}.{t}: " + words(a.user_words)}]
            turns.append(list(history))
            history = history + [{"role": "assistant", "content": words(a.assistant_words)}]
        sessions.append((f"session-{s}", turns))
    return sessions


class Result:
    __slots__ = ("ttft", "backend", "status", "cached", "prompt")

    def __init__(self):
        self.ttft = None
        self.backend = ""
        self.status = 0
        self.cached = 0
        self.prompt = 0


async def one_request(reader, writer, port, session, messages, a, use_session_header):
    body = json.dumps(
        {
            "model": "tiny",
            "messages": messages,
            "max_tokens": a.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()
    extra = b"x-session-id: %s\r\n" % session.encode() if use_session_header else b""
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\ncontent-type: application/json\r\n"
        b"%scontent-length: %d\r\n\r\n" % (port, extra, len(body))
    )
    res = Result()
    t0 = time.perf_counter()
    writer.write(head + body)
    status_line = await reader.readline()
    res.status = int(status_line.split(b" ", 2)[1])
    chunked = False
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"x-sim-backend":
            res.backend = value.strip().decode()
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
        elif name == b"content-length":
            length = int(value)
    payload = b""
    if chunked:
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                await reader.readline()
                break
            data = await reader.readexactly(size + 2)
            if res.ttft is None and b'"content"' in data:
                res.ttft = time.perf_counter() - t0  # the first token (after prefill)
            payload += data[:-2]
    else:
        payload = await reader.readexactly(length)
    for event in payload.split(b"\n\n"):
        if event.startswith(b"data: {") and b'"usage"' in event:
            try:
                usage = json.loads(event[6:]).get("usage") or {}
            except ValueError:
                continue
            res.prompt = usage.get("prompt_tokens", 0)
            res.cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    return res


async def drive(port, sessions, a, use_session_header):
    """``a.concurrency`` users; each takes the next session and plays its turns in order."""
    queue = list(reversed(sessions))
    results = []
    errors = []

    async def user():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while queue:
                session, turns = queue.pop()
                for messages in turns:
                    try:
                        res = await one_request(reader, writer, port, session, messages, a, use_session_header)
                    except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
                        errors.append(repr(exc))
                        writer.close()
                        reader, writer = await asyncio.open_connection("127.0.0.1", port)
                        continue
                    if res.status != 200:
                        errors.append(f"status {res.status}")
                    results.append(res)
                    if a.think:
                        await asyncio.sleep(a.think)
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(user() for _ in range(a.concurrency)))
    return results, errors, time.perf_counter() - t0


def pct(values, p):
    if not values:
        return None
    values = sorted(values)
    k = (len(values) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def summarize(name, results, errors, elapsed, sims_metrics, peaks):
    ttfts = [r.ttft * 1000 for r in results if r.ttft is not None]
    queries = sum(m.get("vllm:prefix_cache_queries_total", 0) for m in sims_metrics.values())
    hits = sum(m.get("vllm:prefix_cache_hits_total", 0) for m in sims_metrics.values())
    served = {}
    for r in results:
        served[r.backend] = served.get(r.backend, 0) + 1
    counts = [served.get(n, 0) for n in sims_metrics]
    mean = sum(counts) / len(counts) if counts else 0
    peak_values = [peaks.get(n, 0) for n in sims_metrics] if peaks else []
    generation = sum(m.get("sim:requests_total", 0) for m in sims_metrics.values())
    # Everything else the backends were asked: health checks, and our one /metrics scrape each.
    other_http = sum(m.get("sim:http_requests_total", 0) for m in sims_metrics.values()) - generation - len(sims_metrics)
    return {
        "policy": name,
        "requests": len(results),
        "errors": len(errors),
        "error_samples": errors[:3],
        "seconds": round(elapsed, 2),
        "hit_rate": round(hits / queries, 4) if queries else None,
        "cached_tokens": int(hits),
        "prompt_tokens": int(queries),
        "served": {n: served.get(n, 0) for n in sims_metrics},
        "served_max_over_mean": round(max(counts) / mean, 3) if mean else None,
        "peak_in_flight": {n: peaks.get(n, 0) for n in sims_metrics} if peaks else None,
        "peak_max_over_mean": round(max(peak_values) / (sum(peak_values) / len(peak_values)), 3)
        if peak_values and sum(peak_values)
        else None,
        "ttft_p50_ms": round(pct(ttfts, 50), 1) if ttfts else None,
        "ttft_p99_ms": round(pct(ttfts, 99), 1) if ttfts else None,
        "backend_requests_per_request": round(generation / len(results), 3) if results else None,
        "other_backend_http": int(other_http),
    }


# -- runs -------------------------------------------------------------------------------------------


def run_policy(procs, name, balance, key, sessions, a):
    ports = [free_port() for _ in range(a.backends)]
    names = [f"sim-{i}" for i in range(a.backends)]
    sims = [procs.start(n, sim_args(p, n, a, a.cache_blocks), p) for n, p in zip(names, ports)]
    port, admin = free_port(), free_port()
    cfg = {
        "listen": f"127.0.0.1:{port}",
        "admin_listen": f"127.0.0.1:{admin}",
        "workers": 1,
        "backends": [{"url": f"http://127.0.0.1:{p}", "name": n} for n, p in zip(names, ports)],
        "balance": balance,
        "health": {"interval": a.health_interval},
        "log_level": "warning",
    }
    path = os.path.join(procs.logdir, "routing-config.json.yaml")
    with open(path, "w") as f:
        json.dump(cfg, f)
    proxy = procs.start("proxy-" + name.split()[0], ["-m", "proxy", "--config", path], port)
    wait_port(admin, proxy)
    try:
        results, errors, elapsed = asyncio.run(drive(port, sessions, a, key == "session"))
        state = get_json(admin, "/admin/backends")
        peaks = {}
        for b in state.get("backends", []):
            views = b.get("workers") or [b]
            peaks[b["name"]] = sum(v.get("peak_in_flight", 0) for v in views)
        metrics = {n: scrape(p) for n, p in zip(names, ports)}
        return summarize(name, results, errors, elapsed, metrics, peaks)
    finally:
        procs.stop(proxy)
        for s in sims:
            procs.stop(s)


def run_bound(procs, sessions, a):
    port = free_port()
    sim = procs.start("bound-sim", sim_args(port, "bound", a, 10_000_000), port)
    try:
        results, errors, elapsed = asyncio.run(drive(port, sessions, a, False))
        return summarize("bound: one server, unlimited cache", results, errors, elapsed, {"bound": scrape(port)}, None)
    finally:
        procs.stop(sim)


def markdown(rows, a, meta):
    out = [
        f"# Routing quality, {meta['date']}",
        "",
        f"`python -m bench.routing {' '.join(meta['argv'])}` on {meta['machine']}.",
        "",
        f"Workload: {a.sessions} chat sessions x {a.turns} turns, {a.concurrency} users at once, "
        f"{a.system_prompts} shared system prompts of {a.system_words} words (Zipf popularity), "
        f"{a.user_words}-word questions, {a.assistant_words}-word answers kept in the history; "
        f"{a.max_tokens} tokens generated per turn. {a.backends} simulators, each with a prefix cache of "
        f"{a.cache_blocks} blocks x {a.block_size} tokens (LRU), TTFT = {a.ttft} s + {a.prefill_per_token} s "
        f"per uncached prompt token, {a.max_concurrency} running requests per simulator (the rest queue).",
        "",
        "| policy | hit rate | of bound | served max/mean | peak in-flight max/mean | TTFT p50 ms | TTFT p99 ms | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    bound = rows[-1]["hit_rate"] or 0
    for r in rows:
        of = f"{r['hit_rate'] / bound:.0%}" if bound and r["hit_rate"] is not None else "-"
        out.append(
            f"| {r['policy']} | {r['hit_rate']:.1%} | {of} | {r['served_max_over_mean'] or '-'} | "
            f"{r['peak_max_over_mean'] or '-'} | {r['ttft_p50_ms']} | {r['ttft_p99_ms']} | {r['errors']} |"
        )
    out += [
        "",
        "The bound row measures hit rate only: its one simulator serves every user with "
        f"{a.max_concurrency} running slots, so its TTFT includes queueing and is not comparable.",
        "",
        "Hit rate: cached prompt tokens / prompt tokens, from the simulators' "
        "`vllm:prefix_cache_hits_total` and `vllm:prefix_cache_queries_total`. Served: requests per backend "
        "(x-sim-backend). Peak in-flight: the proxy's per-backend high-water mark (admin API). "
        "Generation requests the backends received per client request: "
        + ", ".join(f"{r['backend_requests_per_request']}" for r in rows)
        + " (policies in table order: routing adds no call per request). Other backend HTTP requests "
        "over each whole run (health checks, once per interval per backend): "
        + ", ".join(f"{r['other_backend_http']}" for r in rows)
        + ".",
        "",
        "Per backend (served / peak in flight):",
        "",
    ]
    for r in rows[:-1]:
        parts = [f"{n} {r['served'][n]}/{(r['peak_in_flight'] or {}).get(n, '-')}" for n in r["served"]]
        out.append(f"- {r['policy']}: " + ", ".join(parts))
    out.append("")
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.routing", description=__doc__.split("\n\n")[0])
    p.add_argument("--backends", type=int, default=4)
    p.add_argument("--sessions", type=int, default=96)
    p.add_argument("--turns", type=int, default=5)
    p.add_argument("--concurrency", type=int, default=16, help="users playing sessions at once")
    p.add_argument("--think", type=float, default=0.0, help="s between a user's turns")
    p.add_argument("--system-prompts", type=int, default=8)
    p.add_argument("--system-words", type=int, default=200)
    p.add_argument("--user-words", type=int, default=40)
    p.add_argument("--assistant-words", type=int, default=60)
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--cache-blocks", type=int, default=400, help="per simulator")
    p.add_argument("--prefill-per-token", type=float, default=0.0002)
    p.add_argument("--ttft", type=float, default=0.005)
    p.add_argument("--itl", type=float, default=0.002)
    p.add_argument("--max-concurrency", type=int, default=6, help="running requests per simulator")
    p.add_argument("--health-interval", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--policies", help="comma-separated substrings of policy names to run")
    p.add_argument("--quick", action="store_true", help="a small workload (a smoke run)")
    p.add_argument("--no-write", action="store_true", help="print, do not write bench/results")
    a = p.parse_args(argv)
    if a.quick:
        a.sessions, a.turns, a.concurrency = 24, 3, 8
    sessions = make_workload(a)
    policies = POLICIES
    if a.policies:
        wanted = [w.strip() for w in a.policies.split(",")]
        policies = [x for x in POLICIES if any(w in x[0] for w in wanted)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="fleetproxy-routing-") as logdir:
        procs = Procs(logdir)
        try:
            for name, balance, key in policies:
                row = run_policy(procs, name, balance, key, sessions, a)
                rows.append(row)
                print(json.dumps(row), flush=True)
            bound = run_bound(procs, sessions, a)
            rows.append(bound)
            print(json.dumps(bound), flush=True)
        finally:
            procs.stop_all()
    meta = {
        "date": datetime.date.today().isoformat(),
        "argv": list(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()})",
    }
    text = markdown(rows, a, meta)
    print(text)
    if not a.no_write:
        os.makedirs(RESULTS, exist_ok=True)
        base = os.path.join(RESULTS, f"{meta['date']}-routing")
        with open(base + ".md", "w") as f:
            f.write(text)
        with open(base + ".json", "w") as f:
            json.dump({"meta": meta, "params": vars(a), "rows": rows}, f, indent=2)
        print(f"wrote {base}.md and {base}.json")
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
