"""Chat users: multi-turn streaming sessions sharing one system prompt (scenarios d and e).

Each simulated user opens a session, sends 2-6 turns and starts over. A turn posts the whole
conversation so far (the shared system prompt, earlier user turns, the assistant's earlier
answers), streams the answer and records its time to first token, inter-token gaps and
end-to-end latency, then the user thinks for an exponentially distributed while before the next
turn. That is locust's user model (a fixed population with think time) written on the bench's
own asyncio client: one Python process on one core then drives hundreds of streaming users
without becoming the bottleneck, and it shares its timing code with the open-loop generator.

Every turn carries the session in `x-session-id` and in the body's `user` field, and the
response's `x-sim-backend` header says which simulator answered: that is what scenario e reads
to measure session affinity and load spread.

Run as `python -m bench.chat_users --url URL --users N --duration S --out FILE`; like
bench.openloop it prints `start` and `end` around the measured window. Turns that start in the
window are measured; at its end no new turn starts and those in flight are awaited.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
from time import perf_counter

import uvloop

from .client import Client, Result
from .openloop import _range
from .stats import percentiles

PATH = "/v1/chat/completions"
WORDS = ("fleet proxy token stream model request backend latency prefix cache route session "
         "queue batch decode prefill kernel memory tensor shard replica health drain").split()
SYSTEM_PROMPT = (
    "You are the assistant of a fleet operations team. Answer briefly and precisely. "
    + " ".join(WORDS[i % len(WORDS)] for i in range(400))  # ~3 KB, identical for every session
)


class Measure:
    def __init__(self):
        self.window: tuple[float, float] | None = None  # (start, end) in perf_counter seconds
        self.turns: list[tuple[str, Result]] = []  # (session id, result) of measured turns

    def measuring(self, t: float) -> bool:
        return self.window is not None and self.window[0] <= t < self.window[1]


async def user(uid: int, client: Client, args, m: Measure, stop: asyncio.Event):
    rng = random.Random(args.seed * 100_003 + uid)
    extra = {"x-sim-ttft": f"{args.ttft:g}", "x-sim-itl": f"{args.itl:g}"}
    session_no = 0
    await asyncio.sleep(rng.uniform(0, args.think))  # spread the users' first turns
    while not stop.is_set():
        session_no += 1
        sid = f"u{uid}-s{session_no}"
        messages = [{"role": "system", "content": SYSTEM_PROMPT}]
        for _ in range(rng.randint(*args.turns)):
            if stop.is_set():
                return
            question = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40)))
            messages.append({"role": "user", "content": question})
            tokens = rng.randint(*args.tokens)
            body = json.dumps({"model": "tiny", "stream": True, "max_tokens": tokens, "user": sid,
                               "messages": messages}, separators=(",", ":")).encode()
            head = client.head(PATH, body, {**extra, "x-session-id": sid})
            start = perf_counter()
            result = await client.stream(head, body, Result(start))
            if m.measuring(start):
                m.turns.append((sid, result))
            # The answer joins the conversation; its words do not matter, its length does.
            messages.append({"role": "assistant", "content": " ".join(WORDS[:1] * max(1, result.tokens))})
            try:
                await asyncio.wait_for(stop.wait(), rng.expovariate(1.0 / args.think))
            except asyncio.TimeoutError:
                pass


def summarize(turns: list[tuple[str, Result]], window: float) -> dict:
    results = [r for _, r in turns]
    ok = [r for r in results if r.ok]
    errors: dict[str, int] = {}
    for r in results:
        if not r.ok:
            errors[r.error] = errors.get(r.error, 0) + 1
    # Routing: which backend served each turn, and did a session's turns stay on one backend?
    backends: dict[str, int] = {}
    last: dict[str, str] = {}
    same = moved = 0
    for sid, r in turns:
        if not r.ok:
            continue
        b = r.backend.decode() or "?"
        backends[b] = backends.get(b, 0) + 1
        if sid in last:
            same += last[sid] == b
            moved += last[sid] != b
        last[sid] = b
    return {
        "requests": len(results),
        "ok": len(ok),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "duration_s": window,
        "rps": round(len(ok) / window, 2),
        "sessions": len(last),
        "tokens": sum(r.tokens for r in ok),
        "latency_ms": percentiles([r.last - r.start for r in ok]),  # end to end
        "ttft_ms": percentiles([r.first - r.start for r in ok if r.tokens]),
        "itl_ms": percentiles([g for r in ok for g in r.gaps]),
        "backends": backends,
        # Share of follow-up turns that landed where the session's previous turn did.
        "affinity": round(same / (same + moved), 4) if same + moved else None,
    }


async def main_async(args) -> dict:
    client = Client(args.url, timeout=args.timeout)
    m = Measure()
    stop = asyncio.Event()
    users = [asyncio.ensure_future(user(i, client, args, m, stop)) for i in range(args.users)]
    try:
        await asyncio.sleep(args.warmup)
        t0 = perf_counter()
        m.window = (t0, t0 + args.duration)
        print("start", flush=True)
        await asyncio.sleep(args.duration)
        stop.set()
        await asyncio.gather(*users)
        print("end", flush=True)
    finally:
        stop.set()
        for u in users:
            u.cancel()
        client.close()
    out = summarize(m.turns, args.duration)
    out["users"] = args.users
    out["connections"] = client.open
    return out


def parse(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.chat_users", description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("--users", type=int, required=True, help="concurrent chat users")
    p.add_argument("--duration", type=float, required=True, help="measured seconds")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring")
    p.add_argument("--think", type=float, default=1.0, help="mean think time between turns, s")
    p.add_argument("--turns", type=_range, default=(2, 6), help="turns per session, LO-HI")
    p.add_argument("--ttft", type=float, default=0.05, help="simulated time to first token, s")
    p.add_argument("--itl", type=float, default=0.01, help="simulated inter-token latency, s")
    p.add_argument("--tokens", type=_range, default=(16, 64), help="answer tokens, LO-HI")
    p.add_argument("--timeout", type=float, default=30.0, help="per turn, s")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", required=True, help="write the JSON summary here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    out = uvloop.run(main_async(args))
    with open(args.out, "w") as f:
        json.dump(out, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
