"""Open-loop load at a fixed request rate: scenario c's generator (our own, on asyncio + uvloop).

Why open loop: a closed loop (wrk, a fixed set of users) sends the next request only when the
last one returned, so when the system under test stalls the generator stalls with it and the
slow requests that would have been sent never are: coordinated omission. Here arrival times are
drawn up front (Poisson, seeded, so every target gets the same schedule) and each request is
timed from when it was *due*, not from when the generator got round to sending it. If the
generator itself falls behind, its lag is reported (`lag_ms`) and counts in the latencies.

Run as `python -m bench.openloop --url URL --rate R --duration S --out FILE`. It prints `start`
and `end` on stdout around the measured window (the bench samples the proxies' CPU at those
lines) and writes the summary as JSON to FILE.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
from time import perf_counter

import uvloop

from .client import Client, Result
from .stats import percentiles

PATH = "/v1/chat/completions"


def bodies(tokens: tuple[int, int]) -> dict[int, bytes]:
    return {
        n: json.dumps({"model": "tiny", "stream": True, "max_tokens": n,
                       "messages": [{"role": "user", "content": "Tell the fleet a story"}]},
                      separators=(",", ":")).encode()
        for n in range(tokens[0], tokens[1] + 1)
    }


def schedule(rate: float, duration: float, rng: random.Random) -> list[float]:
    """Arrival offsets in seconds: a Poisson process at ``rate`` per second."""
    t, out = 0.0, []
    while True:
        t += rng.expovariate(rate)
        if t >= duration:
            return out
        out.append(t)


async def _phase(client: Client, rate: float, duration: float, args, rng, keep: bool):
    loop = asyncio.get_running_loop()
    by_tokens = bodies(args.tokens)
    extra = {"x-sim-ttft": f"{args.ttft:g}", "x-sim-itl": f"{args.itl:g}", "x-sim-stamp": "1"}
    heads = {n: (client.head(PATH, b, extra), b) for n, b in by_tokens.items()}
    plan = schedule(rate, duration, rng)
    counts = [rng.randint(*args.tokens) for _ in plan]
    tasks, lags = [], []
    t0 = perf_counter() + 0.01
    i = 0
    while i < len(plan):
        now = perf_counter()
        # Send everything that is due; sleep until the next arrival otherwise.
        while i < len(plan) and t0 + plan[i] <= now:
            due = t0 + plan[i]
            lags.append(now - due)
            head, body = heads[counts[i]]
            tasks.append(loop.create_task(client.stream(head, body, Result(due))))
            i += 1
        if i < len(plan):
            await asyncio.sleep(max(0.0, t0 + plan[i] - perf_counter()))
    results = await asyncio.gather(*tasks) if tasks else []
    elapsed = perf_counter() - t0
    return (results, lags, elapsed) if keep else None


def summarize(results: list[Result], lags: list[float], elapsed: float, rate: float, window: float) -> dict:
    ok = [r for r in results if r.ok]
    errors: dict[str, int] = {}
    for r in results:
        if not r.ok:
            errors[r.error] = errors.get(r.error, 0) + 1
    gaps = [g for r in ok for g in r.gaps]
    return {
        "offered_rps": rate,
        "requests": len(results),
        "ok": len(ok),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "duration_s": window,  # the arrival window; `elapsed_s` adds the drain of the last ones
        "elapsed_s": round(elapsed, 3),
        "rps": round(len(ok) / window, 2),
        "tokens": sum(r.tokens for r in ok),
        "latency_ms": percentiles([r.last - r.start for r in ok]),  # end to end
        "ttft_ms": percentiles([r.first - r.start for r in ok if r.tokens]),
        "itl_ms": percentiles(gaps),
        "lag_ms": percentiles(lags),
        **transit(ok),
    }


def transit(ok: list[Result]) -> dict:
    """Where the simulator stamped its side (x-sim-stamp): the first token's time spent outside
    the simulator, request leg plus first-token leg, and each leg.

    Time to first token also holds the simulator's own wait (its asyncio timer, whose jitter of
    a few hundred microseconds is larger than what a proxy adds), so TTFT minus direct's TTFT
    needs thousands of requests to say anything at p99. These stamps take the wait out: what is
    left is the client's, the kernel's and a proxy's time on the two legs, per request.
    """
    stamped = _stamped(ok)
    if not stamped:
        return {}
    return {
        "transit_ms": percentiles(transit_samples(stamped)),
        "to_backend_ms": percentiles([r.sim_received - r.sent for r in stamped]),
        "first_back_ms": percentiles([r.first - r.sim_sent for r in stamped]),
    }


def _stamped(ok: list[Result]) -> list[Result]:
    """The requests whose first token the simulator stamped (x-sim-stamp)."""
    return [r for r in ok if r.tokens and r.sim_received and r.sim_sent]


def transit_samples(ok: list[Result]) -> list[float]:
    """Each stamped request's first-token time outside the simulator, in seconds (``transit``)."""
    return [(r.sim_received - r.sent) + (r.first - r.sim_sent) for r in _stamped(ok)]


async def main_async(args) -> dict:
    client = Client(args.url, timeout=args.timeout)
    rng = random.Random(args.seed)
    try:
        if args.warmup > 0:
            await _phase(client, args.rate, args.warmup, args, random.Random(args.seed + 1), keep=False)
        print("start", flush=True)
        results, lags, elapsed = await _phase(client, args.rate, args.duration, args, rng, keep=True)
        print("end", flush=True)
    finally:
        client.close()
    out = summarize(results, lags, elapsed, args.rate, args.duration)
    out["connections"] = client.open
    if args.samples:  # for a p99 over several runs' requests together (bench.ab)
        out["transit_samples_ms"] = [round(t * 1e3, 4) for t in transit_samples([r for r in results if r.ok])]
    return out


def _range(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition("-")
    return int(lo), int(hi or lo)


def parse(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.openloop", description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("--rate", type=float, required=True, help="requests per second")
    p.add_argument("--duration", type=float, required=True, help="measured seconds")
    p.add_argument("--warmup", type=float, default=0.0, help="seconds of load before measuring")
    p.add_argument("--ttft", type=float, default=0.05, help="simulated time to first token, s")
    p.add_argument("--itl", type=float, default=0.01, help="simulated inter-token latency, s")
    p.add_argument("--tokens", type=_range, default=(16, 64), help="completion tokens, LO-HI")
    p.add_argument("--timeout", type=float, default=30.0, help="per request, s")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", required=True, help="write the JSON summary here")
    p.add_argument("--samples", action="store_true",
                   help="add every request's first-token time outside the simulator (transit_samples_ms)")
    return p.parse_args(argv)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where it runs as ``-m bench.openloop``


def argv(url: str, rate: float, duration: float, out: str, samples: bool = False) -> list[str]:
    """The command that runs this generator against ``url`` (from ``ROOT``), its summary
    written to ``out`` (with ``samples``: every request's transit too)."""
    return [sys.executable, "-m", "bench.openloop", "--url", url, "--rate", f"{rate:g}",
            "--duration", f"{duration:g}", "--out", out] + ["--samples"] * samples


def run(url: str, rate: float, duration: float, pin: list[str] = (), samples: bool = False) -> dict:
    """This generator against ``url`` for ``duration`` s at ``rate``, as a process of its own
    (``pin``: the command that keeps it on its CPUs, e.g. taskset's): its summary."""
    with tempfile.NamedTemporaryFile(prefix="fleetproxy-openloop-", suffix=".json") as out:
        subprocess.run([*pin, *argv(url, rate, duration, out.name, samples)], check=True, capture_output=True,
                       cwd=ROOT)
        return json.load(out)


def main(argv=None) -> int:
    args = parse(argv)
    out = uvloop.run(main_async(args))
    with open(args.out, "w") as f:
        json.dump(out, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
