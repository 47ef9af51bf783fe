"""Routing quality: routers side by side, `python -m bench.routing`.

The default run compares routers on the same servers, in one run: fleetproxy with every balancing
policy its config accepts (read from `proxy.config.Balance.policy` at run time), nginx with
`hash $http_x_session_id consistent`, and the bound (every request to ONE server: its hit rate is
what no routing can beat), on two multi-turn chat workloads (`even`, `skewed`), `--runs` times
each, interleaved, caches emptied before every run. Servers: two simulators (`--backend sim`, the
default: fast) or two real vLLM servers (`--backend vllm`: started with ../shared/realvllm/start.sh,
or `--vllm-urls` of servers already running). Per router: prefix-cache hit rate, requests per
backend, the share of turns that stayed on their session's server (all from the servers
themselves, not the proxy), client-side TTFT p50/p99, errors. Results:
bench/results/<date>-routing[-vllm].md and .json. See bench/routing_compare.py (workloads,
measurements, report) and bench/routing_fleet.py (servers, routers, load).

`--workloads zipf` runs the older study, simulators only, which this module started as:

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
Results: bench/results/<date>-routing-zipf.md and .json.
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
import shlex
import signal
import subprocess
import sys
import tempfile
import time

from bench import report
from bench import routing_compare as rc
from bench import routing_fleet as rf
from bench.procs import Fleet, StartError, free_port, nginx_path, wait_port

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
        "ttft_p50_ms": round(rc.pct(ttfts, 50), 1) if ttfts else None,
        "ttft_p99_ms": round(rc.pct(ttfts, 99), 1) if ttfts else None,
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



# -- the command line -------------------------------------------------------------------------------

# Options whose default depends on the study: (zipf, the router comparison).
DEFAULTS = {
    "backends": (4, 2),
    "max_tokens": (8, 24),
    "block_size": (16, 64),
    "cache_blocks": (400, 1_000_000),
    "system_words": (200, 420),
    "user_words": (40, 30),
    "turns": (5, None),
}


def parse(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.routing", description=__doc__.split("\n\n")[0],
                                epilog="Options marked (zipf) only shape the older --workloads zipf study.")
    p.add_argument("--backend", choices=("sim", "vllm"), default="sim",
                   help="the servers: simulators (default) or real vLLM")
    p.add_argument("--workloads", default="even,skewed",
                   help="comma-separated: even, skewed (default both), or zipf alone (the older study)")
    p.add_argument("--runs", type=int, help="repetitions of every router on every workload (default 3; 1 with --quick)")
    p.add_argument("--routers", help="comma-separated substrings of router keys (fleetproxy:POLICY, nginx-hash, "
                                     "nginx-rr); default all but nginx-rr; the bound always runs")
    p.add_argument("--vllm-urls", type=lambda s: [u.strip().rstrip("/") for u in s.split(",") if u.strip()],
                   help="use these running vLLM servers (started with VLLM_SERVER_DEV_MODE=1) instead of starting two")
    p.add_argument("--vllm-logs", type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
                   help="their logs (--enable-log-requests), one per URL: which server served each request")
    p.add_argument("--vllm-out", help="OUT_DIR for start.sh (PID files, logs); default a new temp dir, kept")
    p.add_argument("--vllm-bind", choices=("auto", "split"), default="split",
                   help="split (default): server i's engine threads on core i (VLLM_CPU_OMP_THREADS_BIND); "
                        "auto: vLLM's own choice, every engine on core 0")
    p.add_argument("--vllm-arg", action="append", default=[], help="one more `vllm serve` argument (repeatable)")
    p.add_argument("--model", default="tiny")
    p.add_argument("--request-timeout", type=float, default=120.0, help="s per request")
    p.add_argument("--backends", type=int, help="servers (2; zipf: 4)")
    p.add_argument("--sessions", type=int, default=96, help="(zipf)")
    p.add_argument("--turns", type=int, help="turns per session (5)")
    p.add_argument("--concurrency", type=int, default=16, help="(zipf) users playing sessions at once")
    p.add_argument("--think", type=float, default=0.0, help="s between a user's turns")
    p.add_argument("--system-prompts", type=int, default=8, help="(zipf)")
    p.add_argument("--system-words", type=int, help="words per system prompt (420; zipf: 200)")
    p.add_argument("--user-words", type=int, help="words per question (30; zipf: 40)")
    p.add_argument("--assistant-words", type=int, help="words per answer kept in the history "
                                                       "(3/4 of --max-tokens; zipf: 60)")
    p.add_argument("--max-tokens", type=int, help="tokens generated per turn (24; zipf: 8)")
    p.add_argument("--block-size", type=int, help="simulator prefix-cache block, in words (64: ~128 tokens of the tiny model; zipf: 16)")
    p.add_argument("--cache-blocks", type=int, help="per simulator (1000000; zipf: 400)")
    p.add_argument("--prefill-per-token", type=float, default=0.0002, help="simulator")
    p.add_argument("--ttft", type=float, default=0.005, help="simulator")
    p.add_argument("--itl", type=float, default=0.002, help="simulator")
    p.add_argument("--max-concurrency", type=int, default=6, help="running requests per simulator")
    p.add_argument("--health-interval", type=float, default=2.0, help="fleetproxy's health checks, s")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--policies", help="(zipf) comma-separated substrings of policy names to run; "
                                      "otherwise the same as --routers")
    p.add_argument("--quick", action="store_true", help="a small workload (a smoke run)")
    p.add_argument("--no-write", action="store_true", help="print, do not write bench/results")
    a = p.parse_args(argv)
    a.workloads = [w.strip() for w in a.workloads.split(",") if w.strip()]
    zipf = a.workloads == ["zipf"]
    if "zipf" in a.workloads and not zipf:
        p.error("--workloads zipf is the older study: run it alone")
    if zipf and a.backend != "sim":
        p.error("--workloads zipf needs simulators (their cache size and unlimited-cache bound)")
    unknown = [w for w in a.workloads if w not in (*rc.WORKLOADS, "zipf")]
    if unknown:
        p.error(f"unknown workload(s) {', '.join(unknown)}; known: even, skewed, zipf")
    for name, (old, new) in DEFAULTS.items():
        if getattr(a, name) is None:
            setattr(a, name, old if zipf else new)
    if a.assistant_words is None:
        a.assistant_words = 60 if zipf else max(1, round(a.max_tokens * 0.75))
    if a.runs is None:
        a.runs = 1 if a.quick else 3
    if a.vllm_logs and not a.vllm_urls:
        p.error("--vllm-logs goes with --vllm-urls")
    if a.vllm_urls:
        a.backends = len(a.vllm_urls)
    return a, zipf


def main(argv=None):
    argv = list(argv if argv is not None else sys.argv[1:])
    a, zipf = parse(argv)
    if zipf:
        return legacy_main(a, argv)
    return compare(a, argv)


def legacy_main(a, argv):
    """The zipf study: one fleetproxy per policy variant, 4 simulators with bounded caches."""
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
        "argv": argv,
        "machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()})",
    }
    text = markdown(rows, a, meta)
    print(text)
    if not a.no_write:
        os.makedirs(RESULTS, exist_ok=True)
        base = os.path.join(RESULTS, f"{meta['date']}-routing-zipf")
        with open(base + ".md", "w") as f:
            f.write(text)
        with open(base + ".json", "w") as f:
            json.dump({"meta": meta, "params": vars(a), "rows": rows}, f, indent=2)
        print(f"wrote {base}.md and {base}.json")
    return 1 if any(r["errors"] for r in rows) else 0


# -- routers side by side -------------------------------------------------------------------------


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def measure(fleet, servers, router, w, run, tag, a):
    """One router on one workload, once: empty caches, a fresh router, the load, the counters."""
    urls = servers.prepare()
    names = servers.names
    scope = names[:1] if router.kind == "bound" else names
    running = None
    try:
        try:
            running = rf.start_router(fleet, router, names, urls, a)
        except (RuntimeError, StartError, OSError) as e:
            row = rc.run_row(router.name, w.spec.name, run, scope, [], {}, {n: {} for n in scope},
                             {n: {} for n in scope}, 0.0)
            last = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            why = " / ".join([last[0], *last[-2:]]) if len(last) > 3 else " / ".join(last)
            row.update(errors=1, error_samples=[f"router did not start: {why[-500:]}"], failed=True)
            return row
        before = {n: rf.scrape(u) for n, u in zip(names, urls)}
        marks = servers.log_marks()
        sent, seconds = rf.run_load(running.url, w, tag, a)
        ok = sum(1 for s in sent if s.error is None)
        after = rf.wait_counted(servers, names, urls, before, ok)
        served_by = servers.served_by(sent, marks, wait=10.0)
        row = rc.run_row(router.name, w.spec.name, run, scope, sent, served_by, before, after, seconds)
        decisions = running.decisions()
        if decisions:
            row["decisions"] = decisions  # why cache_aware sent each request where it did
        stray = {n: rc.delta(before[n], after[n], rc.SUCCESS) for n in names if n not in scope}
        if any(stray.values()):
            row["stray_requests"] = stray  # the bound's other servers must stay idle
        return row
    finally:
        if running is not None:
            for p in running.procs:
                fleet.stop(p)
        servers.finish()


def token_note(servers, workloads) -> str:
    """How many tokens the longest prompt is, asked of real vLLM's tokenizer."""
    if not isinstance(servers, rf.VLLMServers) or not servers.urls:
        return "a word is one simulator token"
    counts = []
    for w in workloads.values():
        s = max(w.sessions, key=lambda s: len(s.bodies[-1]))
        body = json.loads(s.bodies[-1])
        try:
            status, text = rf.http_call(servers.urls[0], "POST", "/tokenize",
                                        json.dumps({"model": body["model"], "messages": body["messages"]}).encode())
            counts.append(json.loads(text)["count"] if status == 200 else None)
        except (OSError, ValueError, KeyError):
            counts.append(None)
    parts = [f"{name} {c} tokens" for name, c in zip(workloads, counts) if c]
    return "longest prompt with the chat template: " + ", ".join(parts) if parts else "tokens unknown"


def compare(a, argv):
    routers = rf.select_routers(a.routers or a.policies)
    policies, default = rf.fleetproxy_policies()
    specs = rc.QUICK if a.quick else rc.WORKLOADS
    workloads = {name: rc.build_workload(specs[name], a.seed, a.model, a.max_tokens, a.system_words,
                                         a.user_words, a.assistant_words, a.turns) for name in a.workloads}
    date = datetime.date.today().isoformat()
    machine = report.machine(nginx_path())
    notes = []
    if not policies:
        notes.append("proxy.config.Balance.policy could not be read: no fleetproxy router ran.")
    total = a.runs * len(workloads) * len(routers)
    print(f"{total} measurements: {len(routers)} routers x {len(workloads)} workloads x {a.runs} runs "
          f"on {a.backend}", flush=True)
    # SIGINT too: a run started in the background of a script inherits it ignored
    old = {s: signal.signal(s, _interrupt) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    fleet = Fleet()
    servers = rf.SimServers(fleet, a) if a.backend == "sim" else rf.VLLMServers(a)
    rows = []
    try:
        servers.open()
        t_start = time.monotonic()
        tokens = token_note(servers, workloads)
        invocation = os.urandom(3).hex()  # request ids never repeat across bench runs on one server
        for run in range(1, a.runs + 1):
            k = (run - 1) % len(routers)
            order = routers[k:] + routers[:k]  # no router always goes first after a restart
            for wname, w in workloads.items():
                for i, router in enumerate(order):
                    tag = f"rt{invocation}-{run}{wname[0]}{routers.index(router)}"
                    row = measure(fleet, servers, router, w, run, tag, a)
                    rows.append(row)
                    print(f"[{len(rows)}/{total} {time.monotonic() - t_start:.0f} s] run {run} {wname} "
                          f"{router.name}: hit {rc._pcent(row['hit_rate'])}, served {row['served']}, "
                          f"stayed {rc._pcent(row['stay_share'])}, TTFT p50/p99 {row['ttft_p50_ms']}/"
                          f"{row['ttft_p99_ms']} ms, errors {row['errors']} {row['error_samples'][:1]}, "
                          f"{row['seconds']} s" + (f", decisions {row['decisions']}" if row.get("decisions") else ""),
                          flush=True)
        servers_line = servers.describe()
    except KeyboardInterrupt as e:
        print(f"\ninterrupted ({e}) after {len(rows)} of {total} measurements: stopping everything, "
              "writing nothing", file=sys.stderr, flush=True)
        return 130
    finally:
        for s in old:  # cleanup is bounded (stop.sh: 20 s per server); a second signal must not cut it
            signal.signal(s, signal.SIG_IGN)
        fleet.close()
        servers.close()
        for s, h in old.items():
            signal.signal(s, h)
    elapsed = time.monotonic() - t_start
    pooled = {wname: [rc.pool([r for r in rows if r["workload"] == wname and r["router"] == router.name])
                      for router in routers] for wname in workloads}
    for r in rows:
        if r.get("failed"):
            notes.append(f"{r['router']} did not start (run {r['run']}, {r['workload']}): {r['error_samples'][0][:300]}")
        if r["attribution_mismatch"]:
            notes.append(f"run {r['run']} {r['workload']} {r['router']}: requests attributed per server vs the "
                         f"server's own counter: {r['attribution_mismatch']}")
        if r.get("stray_requests"):
            notes.append(f"run {r['run']} {r['workload']} {r['router']}: other servers served {r['stray_requests']}")
    measured = [r for r in rows if not r.get("failed")]
    if measured and not any(r["attribution_mismatch"] or r["unattributed"] for r in measured):
        notes.append(f"Attribution check: in all {len(measured)} measured runs every request was attributed to "
                     "exactly one server, and each server's attributed count equals its own "
                     "`vllm:request_success_total` delta.")
    notes.append(f"The bound row sends every request to {servers.names[0]} alone: its hit rate is the reference; its "
                 "TTFT is not comparable (one server carries all the users).")
    if default:
        balance = _balance_defaults()
        notes.append(f"fleetproxy runs with its config defaults but the policy ({balance}); one worker; a fresh "
                     f"process each run, so policies that learn (cache_aware's index) start empty with the caches.")
    notes.append("nginx: bench/procs.py's nginx_conf (1 worker, upstream keepalive 256, proxy_buffering off, "
                 "proxy_request_buffering off) with `hash $http_x_session_id consistent;` in the upstream. Its ketama ring "
                 "hashes the servers' ip:port, fleetproxy's ring their names: on other ports nginx splits the "
                 "sessions differently.")
    notes.append(f"Whole run: {elapsed / 60:.1f} min" + (f" (+ vLLM start, {', '.join(f'{s:.0f} s' for s in servers.start_seconds)})"
                                                        if getattr(servers, "start_seconds", None) else "") + ".")
    meta = {
        "date": date,
        "target": servers.target,
        "command": "python -m bench.routing " + shlex.join(argv),
        "machine": machine,
        "machine_line": report.machine_line(machine),
        "servers_line": servers_line,
        "routers_line": ", ".join(r.name for r in routers)
        + (f". fleetproxy policies read from proxy.config.Balance.policy: {', '.join(policies)}; default {default}"
           if policies else ""),
        "runs": a.runs,
        "reset": servers.reset,
        "bound_name": rf.BOUND,
        "server_names": servers.names,
        "attribution": servers.attribution,
        "max_tokens": a.max_tokens,
        "tokens_note": tokens,
        "seconds": round(elapsed, 1),
    }
    text = rc.markdown(meta, workloads, pooled, rows, notes)
    print(text)
    if not a.no_write:
        os.makedirs(RESULTS, exist_ok=True)
        base = os.path.join(RESULTS, f"{date}-routing" + ("-vllm" if a.backend == "vllm" else ""))
        with open(base + ".md", "w") as f:
            f.write(text)
        with open(base + ".json", "w") as f:
            json.dump({"meta": meta, "params": vars(a), "notes": notes,
                       "workloads": {n: {"spec": vars(w.spec) | {"sessions": w.spec.sessions},
                                         "requests_per_run": w.requests, "last_prompt_words": w.prompt_words}
                                     for n, w in workloads.items()},
                       "pooled": pooled, "rows": rows}, f, indent=2, default=list)
        print(f"wrote {base}.md and {base}.json")
    return 1 if any(r["errors"] for r in rows) else 0


def _balance_defaults() -> str:
    try:
        from proxy.config import Balance

        b = Balance()
        return ", ".join(f"{k}={getattr(b, k)!r}" for k in ("hash_keys", "load_factor") if hasattr(b, k))
    except Exception as e:  # noqa: BLE001 - only a note
        return f"defaults unreadable: {e}"


if __name__ == "__main__":
    sys.exit(main())
