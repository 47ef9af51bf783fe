"""The cache_aware policy (proxy/routing/cache_aware.py), sans-IO: where prompts go, where
later turns follow, when they leave, and what every worker sharing the index agrees on."""

import heapq
import random

import msgspec

from _speedups import PrefixTable
from proxy.config import build
from proxy.routing.cache_aware import CacheAware
from proxy.routing.fields import decode
from proxy.routing.policies import Snapshot
from proxy.routing.router import Router

SYSTEM = "You are a careful assistant. " * 40  # ~1.1 KB: several 256-byte blocks


class Endpoint:
    def __init__(self, label, index, weight=1):
        self.label = label
        self.index = index
        self.weight = weight
        self.in_flight = 0
        self.held = None
        self.queueing = None

    def load(self):
        return self.in_flight

    def pressure(self, now):
        if self.held is None:
            return self.in_flight, None
        return max(self.held, self.in_flight), self.queueing

    def __repr__(self):
        return self.label


def fleet(n=2, floor=8):
    eps = [Endpoint(f"e{i}", i) for i in range(n)]
    table = PrefixTable.local(n, 1024)
    return eps, Snapshot(eps), table, CacheAware(table, block_chars=256, depth=64, ttl=600, floor=floor)


def chat(*turns, system=SYSTEM):
    """A conversation body: the system prompt, then user/assistant messages in turn."""
    messages = [{"role": "system", "content": system}]
    for i, text in enumerate(turns):
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
    return decode(msgspec.json.encode({"model": "m", "messages": messages}))


def route(policy, snap, fields, now=1.0, exclude=None):
    return policy.pick(snap, policy.blocks(fields), exclude, 0, now)


def test_sessions_sharing_a_system_prompt_meet():
    eps, snap, table, ca = fleet(3)
    homes = {}
    for i in range(24):  # four prompts, interleaved: none is too hot for one endpoint
        group = i % 4
        homes.setdefault(group, set()).add(route(ca, snap, chat(f"question {i}", system=f"prompt {group} " * 80)))
    assert all(len(h) == 1 for h in homes.values()), homes
    assert len(set().union(*homes.values())) == 3  # new prompts were spread


def test_a_later_turn_follows_its_conversation():
    eps, snap, table, ca = fleet(2)
    first = route(ca, snap, chat("q1 " * 100))
    first.in_flight = 6  # busier than the other, under the floor, no report from vLLM
    assert route(ca, snap, chat("q1 " * 100, "a1 " * 50, "q2")) is first


def test_a_conversation_leaves_only_when_vllm_queues_and_then_the_next_turn_follows():
    eps, snap, table, ca = fleet(2, floor=2)
    home = route(ca, snap, chat("hello " * 100))
    other = next(e for e in eps if e is not home)
    home.in_flight, home.held, home.queueing = 10, 30, False  # a big batch, nothing waiting
    assert route(ca, snap, chat("hello " * 100, "a1 " * 60, "q2")) is home
    home.queueing = True  # vLLM queues: shed
    assert route(ca, snap, chat("hello " * 100, "a1 " * 60, "q2", "a2 " * 60, "q3")) is other
    home.in_flight, home.held, home.queueing = 0, None, None  # recovered
    # The conversation was recorded where it went: its next turn goes there, not back home.
    assert route(ca, snap, chat("hello " * 100, "a1 " * 60, "q2", "a2 " * 60, "q3", "a3 " * 60, "q4")) is other


def run_sessions(groups, at_once, seed=1):
    """Sessions of 5 turns (``groups``: each session's system prompt), ``at_once`` running, each
    turn taking longer on a busier endpoint: requests served per endpoint, and each prompt's
    endpoints."""
    eps, snap, table, ca = fleet(2)
    rng = random.Random(seed)
    served = {e.label: 0 for e in eps}
    homes = {}
    events = []

    def start(s, turn, t):
        history = []
        for k in range(turn):
            history += [f"session {s} question {k} " * 10, f"answer {k} " * 18]
        chosen = route(ca, snap, chat(*history, f"session {s} question {turn} " * 10, system=f"prompt {groups[s]} " * 80), now=t)
        chosen.in_flight += 1
        served[chosen.label] += 1
        if turn == 0:
            homes.setdefault(groups[s], set()).add(chosen.label)
        heapq.heappush(events, (t + 0.2 + 0.03 * chosen.in_flight + rng.random() * 0.1, s, turn, chosen.label, chosen))

    for s in range(at_once):
        start(s, 0, s * 0.001)
    following = at_once
    while events:
        t, s, turn, _, chosen = heapq.heappop(events)
        chosen.in_flight -= 1
        if turn < 4:
            start(s, turn + 1, t)
        elif following < len(groups):
            start(following, 0, t)
            following += 1
    return served, homes


def test_even_groups_stay_whole_and_the_load_even():
    """The routing issue's even workload, modelled: 4 prompts x 6 sessions, 8 at once."""
    rng = random.Random(7)
    groups = [g for g in range(4) for _ in range(6)]
    rng.shuffle(groups)
    served, homes = run_sessions(groups, 8)
    assert max(served.values()) / (sum(served.values()) / 2) <= 1.10, served
    assert sum(len(h) > 1 for h in homes.values()) <= 1, homes  # a prompt prefilled on one endpoint


def test_a_hot_prompt_gets_a_second_home_instead_of_a_hot_spot():
    """The skewed workload, modelled: 21 of 32 sessions on one prompt, 16 at once."""
    rng = random.Random(7)
    groups = [0] * 21 + [1] * 4 + [2] * 4 + [3] * 3
    rng.shuffle(groups)
    served, homes = run_sessions(groups, 16)
    assert max(served.values()) / (sum(served.values()) / 2) <= 1.15, served
    assert homes[0] == {"e0", "e1"}  # the hot prompt lives on both


def test_short_prompts_go_by_least_request():
    eps, snap, table, ca = fleet(2)
    eps[0].in_flight = 5
    short = decode(b'{"model":"m","messages":[{"role":"user","content":"hi"}]}')
    assert ca.blocks(short) is None
    assert route(ca, snap, short) is eps[1]


def test_every_worker_sharing_the_index_agrees():
    eps, snap, table, ca = fleet(3)
    other_worker = CacheAware(table, block_chars=256, depth=64, ttl=600, floor=8)
    for i in range(10):
        opening = f"session {i} " * 40
        placed = route(ca, snap, chat(opening, system=f"system prompt {i % 3} " * 30))
        placed.in_flight += 1
        later = chat(opening, "answer " * 30, "more", system=f"system prompt {i % 3} " * 30)
        assert route(other_worker, snap, later) is placed


def test_the_index_forgets_after_its_ttl():
    eps, snap, table, ca = fleet(2)
    home = route(ca, snap, chat("q " * 200), now=1.0)
    home.in_flight = 5  # busier than its share: only the index keeps a later turn here
    later = chat("q " * 200, "a " * 100, "q2")
    assert route(ca, snap, later, now=2.0) is home
    assert route(ca, snap, chat("q " * 200, "a " * 100, "q3"), now=2.0 + 601) is not home


def test_exclude_and_retries():
    eps, snap, table, ca = fleet(2)
    first = route(ca, snap, chat("retry me " * 50))
    again = route(ca, snap, chat("retry me " * 50), exclude=[first])
    assert again is not first
    assert route(ca, snap, chat("retry me " * 50), exclude=eps) is None


def test_cache_aware_is_the_default_and_the_router_uses_it():
    r = Router(build({"backends": ["http://a:1", "http://b:1"]}), None)
    assert type(r.clusters["default"].policy) is CacheAware
    homes = {}
    for i in range(12):
        system = f"system prompt {i % 4} " * 80
        body = msgspec.json.encode({"model": "m", "messages": [{"role": "system", "content": system},
                                                                {"role": "user", "content": f"q{i}"}]})
        sel = r.select([], body)
        homes.setdefault(i % 4, set()).add(sel.endpoint.label)
        sel.release()
    assert all(len(h) == 1 for h in homes.values()), homes
    assert r.state()["clusters"][0]["decisions"]["cached"] == 8


def test_candidates_rank_by_cached_blocks_with_ring_order_breaking_ties():
    # The pick's order of candidates (cache_aware._ranked) is a stable sort by leading blocks
    # held, most first: as sorted() gives it, for few holders (insertion), many (sorted), none.
    from proxy.routing.cache_aware import _ranked

    rng = random.Random(7)
    for _ in range(3000):
        n = rng.randrange(1, 40)
        order = rng.sample(range(n), n)
        depth = rng.choice([1, 2, 5, 64])
        cached = [rng.randrange(depth) if rng.random() < rng.random() else 0 for _ in range(n)]
        assert _ranked(list(order), cached) == sorted(order, key=lambda j: -cached[j]), (order, cached)
