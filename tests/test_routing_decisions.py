"""Routing decisions, held to a recording: a deterministic trace of where requests go, recorded at
the commit before routing's calls became C calls (729dda7), where the pure and the native build
gave the same. It runs cache_aware at the policy level (fake endpoints whose in-flight counts and
vLLM reports vary, excluded members, the breaker, time passing: every kind of decision is taken)
and every policy through the Router (real Endpoints, requests held in flight, retries). A change
meant to move requests records a new digest; one that only makes routing cheaper leaves it."""

import hashlib
import random

import msgspec

from _speedups import PrefixTable
from proxy.config import build
from proxy.routing.cache_aware import CacheAware
from proxy.routing.fields import decode
from proxy.routing.policies import Snapshot
from proxy.routing.router import Router
from test_cache_aware import Endpoint as Member  # an endpoint as the policies read it

DIGEST = "d05746f08ae50eda"  # the first 16 hex digits of the sha256 of the trace's lines
LINES = 33696
SHORT = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'  # under one block


def chat(rng, group, turns):
    """A conversation of ``group``'s system prompt, ASCII or not, short or several blocks long."""
    messages = [{"role": "system", "content": f"system prompt {group} " * rng.choice([1, 5, 20, 60])}]
    for i in range(turns):
        text = f"turn {i} of {rng.randrange(50)} " * rng.choice([1, 10, 40]) + rng.choice(["", "é", "日本"])
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
    return msgspec.json.encode({"model": "m", "messages": messages})


def policy_trace(out, seed, groups=6):
    rng = random.Random(seed)
    random.seed(seed)  # least_request (short prompts) draws from the random module's generator
    n = rng.choice([2, 3, 5, 8])
    members = [Member(f"e{i}", i, rng.choice([1, 1, 2, 3])) for i in range(n)]
    policy = CacheAware(
        PrefixTable.local(n, 256), block_chars=rng.choice([64, 256]), depth=32, ttl=600, floor=rng.choice([0, 2, 8]),
        spread=rng.choice([1.0, 1.1, 2.0, 10.0]), load_factor=rng.choice([1.0, 1.25, 2.0]), window=rng.choice([5.0, 60.0]),
    )
    snap = Snapshot(members)
    now = 1.0
    for _ in range(600):
        now += rng.random() * rng.choice([0.01, 0.5, 3.0])
        for m in members:
            if rng.random() < 0.2:
                m.in_flight = rng.randrange(0, 12)
            if rng.random() < 0.1:
                m.held = rng.choice([None, rng.randrange(0, 40)])
                m.queueing = rng.choice([None, True, False])
        fields = decode(chat(rng, rng.randrange(groups), rng.randrange(1, 5)))
        exclude = rng.sample(members, rng.randrange(0, n)) if rng.random() < 0.2 else None
        limit = rng.choice([0, 0, 0, 3, 8])
        out.append(repr(policy.pick(snap, policy.blocks(fields), exclude, limit, now)))
    out.append(repr(sorted(policy.decisions.items())))
    out.append(repr([(k, round(c.value, 9)) for k, c in enumerate(policy.recent) if c is not None]))


def router_trace(out, seed, policy):
    rng = random.Random(seed)
    random.seed(seed)
    n = rng.choice([2, 3, 5])
    raw = {
        "backends": [{"url": f"http://127.0.0.1:{9000 + i}", "weight": rng.choice([1, 2])} for i in range(n)],
        "balance": {"policy": policy, "block_chars": 64, "max_in_flight": rng.choice([0, 4])},
        "retry": {"attempts": 3}, "log_level": "warning",
    }
    router = Router(build(raw), None)
    clock = [1000.0]
    router.clock = lambda: clock[0]  # cache_aware's shares age with time: the trace's own clock
    held = []
    for step in range(800):
        clock[0] += rng.random() * 0.5
        body = chat(rng, rng.randrange(5), rng.randrange(1, 4)) if rng.random() < 0.8 else SHORT
        headers = [(b"x-session-id", str(rng.randrange(20)).encode())] if rng.random() < 0.5 else []
        try:
            selection = router.select(headers, body)
        except Exception as exc:  # the breaker: every member at max_in_flight
            out.append(type(exc).__name__)
            continue
        line = [selection.endpoint.label]
        if rng.random() < 0.1:
            line.append(router.reselect(selection, float(step)))
            line.append(selection.endpoint.label)
        out.append(repr(line))
        held.append(selection)
        while held and (len(held) > 6 or rng.random() < 0.5):
            held.pop(rng.randrange(len(held))).release()
    out.append(repr([(e.label, e.in_flight, e.requests) for e in router.endpoints]))
    out.append(repr(router.retry.stats()))


def test_routing_decides_as_recorded():
    out = []
    state = random.getstate()
    try:
        for seed in range(12):
            policy_trace(out, seed)
        for seed in range(12, 24):
            policy_trace(out, seed, groups=1)  # one hot prompt: its endpoint goes over its share
        for seed in range(6):
            for policy in ("cache_aware", "consistent_hash", "least_request", "round_robin"):
                router_trace(out, seed, policy)
    finally:
        random.setstate(state)
    assert len(out) == LINES
    assert hashlib.sha256("\n".join(out).encode()).hexdigest()[:16] == DIGEST
