"""Routing, sans-IO: ring snapshots, policies, bounded loads, retry budget, health state, and
the router's decisions, all without a socket or a loop."""

import math
import random
import subprocess
import sys
from types import SimpleNamespace

import msgspec
import pytest

from conftest import ROOT
from proxy.config import ConfigError, build
from proxy.http.errors import ClientError, NoBackend
from proxy.routing.fields import RoutingFields, prompt_prefix
from proxy.routing.health import HealthState
from proxy.routing.policies import ConsistentHash, RoundRobin, Snapshot, hash_bytes, least_request
from proxy.routing.retry import RetryBudget
from proxy.routing.router import Router, Selection


class Member:
    """A balancing member: in-flight count, and optionally what its server reports (``held``
    requests, ``queueing``), as routing.endpoint.Endpoint.pressure gives them."""

    def __init__(self, label, weight=1):
        self.label = label
        self.weight = weight
        self.in_flight = 0
        self.held = None  # requests the server says it holds; None: no fresh report
        self.queueing = None

    def load(self):
        return self.in_flight

    def pressure(self, now):
        if self.held is None:
            return self.in_flight, None
        return max(self.held, self.in_flight), self.queueing

    def __repr__(self):
        return f"Member({self.label})"


def members(n, weight=1):
    return [Member(f"b{i}", weight) for i in range(n)]


def keys(n, seed=1):
    rng = random.Random(seed)
    return [hash_bytes(b"key-%d-%d" % (i, rng.getrandbits(32))) for i in range(n)]


# -- hashing and snapshots ----------------------------------------------------------------------


def test_hash_is_the_same_in_every_process():
    """Workers must agree on the ring: no per-process salt (unlike hash())."""
    here = [hash_bytes(b"session-%d" % i) for i in range(5)]
    code = "from proxy.routing.policies import hash_bytes; print([hash_bytes(b'session-%d' % i) for i in range(5)])"
    there = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert str(here) == there.stdout.strip()
    assert len(set(here)) == 5 and all(0 <= h < 2**32 for h in here)


def test_snapshot_validates_members():
    with pytest.raises(ValueError, match="unique"):
        Snapshot([Member("a"), Member("a")])
    with pytest.raises(ValueError, match="weights"):
        Snapshot([Member("a", weight=0)])
    snap = Snapshot(members(3), vnodes=10)
    assert len(snap) == 3 and len(snap.points) == 30 and snap.points == sorted(snap.points)
    assert snap.stats() == {"members": 3, "ring_points": 30, "total_weight": 3}


def test_empty_snapshot_picks_nobody():
    snap = Snapshot([])
    assert RoundRobin().pick(snap) is None
    assert least_request(snap) is None
    assert ConsistentHash().pick(snap, 123) is None


# -- round robin ---------------------------------------------------------------------------------


def test_round_robin_cycles_in_turn():
    ms = members(3)
    snap = Snapshot(ms)
    rr = RoundRobin()
    assert [rr.pick(snap).label for _ in range(6)] == ["b0", "b1", "b2", "b0", "b1", "b2"]


def test_round_robin_weighted_is_smooth():
    a, b = Member("a", 3), Member("b", 1)
    snap = Snapshot([a, b])
    rr = RoundRobin()
    picks = [rr.pick(snap).label for _ in range(8)]
    assert picks.count("a") == 6 and picks.count("b") == 2
    assert picks[:4] in (["a", "a", "b", "a"], ["a", "b", "a", "a"])  # spread, not a burst


def test_round_robin_skips_excluded_and_full():
    ms = members(3)
    snap = Snapshot(ms)
    rr = RoundRobin()
    assert rr.pick(snap, exclude=[ms[0]]).label == "b1"
    ms[2].in_flight = 5
    assert rr.pick(snap, limit=5).label == "b0"
    assert rr.pick(snap, exclude=[ms[0], ms[1]], limit=5) is None


# -- least request ---------------------------------------------------------------------------------


def test_least_request_prefers_the_less_loaded_of_two():
    ms = members(2)
    ms[0].in_flight = 7
    snap = Snapshot(ms)
    assert all(least_request(snap) is ms[1] for _ in range(50))


def test_least_request_keeps_loads_level():
    """Two choices keep the spread between the busiest and the idlest backend far below what
    one random choice gives, with 64 requests in flight over 8 backends."""

    def spread(choose):
        ms = members(8)
        snap = Snapshot(ms)
        rng = random.Random(7)
        active = []
        total = 0
        for _ in range(5000):
            m = choose(snap, rng)
            m.in_flight += 1
            active.append(m)
            if len(active) > 64:
                active.pop(rng.randrange(len(active))).in_flight -= 1
            loads = [x.in_flight for x in ms]
            total += max(loads) - min(loads)
        return total / 5000

    two = spread(lambda snap, rng: least_request(snap, rand=rng.random))
    one = spread(lambda snap, rng: snap.members[rng.randrange(len(snap.members))])
    assert two < 0.6 * one


def test_least_request_weighs_load_per_unit_of_weight():
    big, small = Member("big", 4), Member("small", 1)
    big.in_flight, small.in_flight = 6, 2  # 1.5 per unit vs 2 per unit
    snap = Snapshot([big, small])
    assert least_request(snap) is big


def test_least_request_exclude_and_breaker():
    ms = members(3)
    snap = Snapshot(ms)
    assert least_request(snap, exclude=[ms[0], ms[1]]) is ms[2]
    for m in ms:
        m.in_flight = 4
    assert least_request(snap, limit=4) is None
    ms[1].in_flight = 3
    assert all(least_request(snap, limit=4) is ms[1] for _ in range(20))


# -- consistent hashing with bounded loads ----------------------------------------------------------------


def test_hash_is_deterministic_and_order_independent():
    ms = members(5)
    ch = ConsistentHash()
    a = Snapshot(ms)
    b = Snapshot(list(reversed(ms)))
    for k in keys(500):
        assert ch.pick(a, k) is ch.pick(b, k) is ch.pick(a, k)


def test_hash_spreads_keys_evenly():
    ms = members(5)
    snap = Snapshot(ms, vnodes=160)
    ch = ConsistentHash()
    counts = {m.label: 0 for m in ms}
    ks = keys(20000)
    for k in ks:
        counts[ch.pick(snap, k).label] += 1
    mean = len(ks) / len(ms)
    assert all(0.75 * mean < c < 1.25 * mean for c in counts.values()), counts


def test_hash_spreads_by_weight():
    heavy, light = Member("heavy", 3), Member("light", 1)
    snap = Snapshot([heavy, light], vnodes=160)
    ch = ConsistentHash()
    n = sum(ch.pick(snap, k) is heavy for k in keys(20000))
    assert 0.68 < n / 20000 < 0.82


@pytest.mark.parametrize("n", [3, 5, 10])
def test_removing_a_backend_moves_only_its_keys(n):
    ms = members(n)
    ch = ConsistentHash()
    before = Snapshot(ms)
    gone = ms[n // 2]
    after = Snapshot([m for m in ms if m is not gone])
    ks = keys(20000, seed=n)
    moved = 0
    for k in ks:
        was, now = ch.pick(before, k), ch.pick(after, k)
        if was is not now:
            assert was is gone  # nobody else's keys move
            moved += 1
    assert abs(moved / len(ks) - 1 / n) < 0.35 / n


@pytest.mark.parametrize("n", [3, 5, 10])
def test_adding_a_backend_moves_about_one_nth(n):
    ms = members(n)
    ch = ConsistentHash()
    before = Snapshot(ms)
    new = Member("new")
    after = Snapshot(ms + [new])
    ks = keys(20000, seed=10 + n)
    moved = 0
    for k in ks:
        was, now = ch.pick(before, k), ch.pick(after, k)
        if was is not now:
            assert now is new  # keys move only to the newcomer
            moved += 1
    assert abs(moved / len(ks) - 1 / (n + 1)) < 0.35 / (n + 1)


@pytest.mark.parametrize("c", [1.0, 1.25, 2.0])
def test_bounded_loads_never_exceed_ceil_c_times_average(c):
    """Insertions only, with a skewed key set (one hot key takes half the traffic): after every
    placement, every backend holds at most ceil(c x average)."""
    ms = members(6)
    snap = Snapshot(ms)
    ch = ConsistentHash(c)
    rng = random.Random(3)
    hot = hash_bytes(b"hot")
    ks = keys(50)
    total = 0
    for _ in range(600):
        k = hot if rng.random() < 0.5 else rng.choice(ks)
        m = ch.pick(snap, k)
        m.in_flight += 1
        total += 1
        bound = math.ceil(c * total / len(ms))
        assert max(x.in_flight for x in ms) <= bound


def test_bounded_loads_hold_at_each_placement_with_departures():
    ms = members(5)
    snap = Snapshot(ms)
    ch = ConsistentHash(1.25)
    rng = random.Random(11)
    hot = hash_bytes(b"hot")
    active = []
    for _ in range(5000):
        k = hot if rng.random() < 0.7 else hash_bytes(b"%d" % rng.getrandbits(20))
        m = ch.pick(snap, k)
        m.in_flight += 1
        active.append(m)
        total = len(active)
        assert m.in_flight <= math.ceil(1.25 * total / len(ms))
        while active and rng.random() < 0.5:
            active.pop(rng.randrange(len(active))).in_flight -= 1


def test_bounded_loads_keep_a_key_home_while_it_fits():
    ms = members(4)
    snap = Snapshot(ms)
    ch = ConsistentHash(1.25)
    k = hash_bytes(b"session-42")
    home = ch.pick(snap, k)
    for m in ms:
        m.in_flight = 3
    assert ch.pick(snap, k) is home  # equal loads: the successor has room
    home.in_flight = 5  # cap = ceil(1.25 * 15 / 4) = 5: full
    spill = ch.pick(snap, k)
    assert spill is not home
    # The spill goes to the next distinct member along the ring, deterministically.
    assert ch.pick(snap, k) is spill


def test_hash_exclude_and_breaker():
    ms = members(3)
    snap = Snapshot(ms)
    ch = ConsistentHash(1.25)
    k = hash_bytes(b"x")
    first = ch.pick(snap, k)
    second = ch.pick(snap, k, exclude=[first])
    assert second is not first
    third = ch.pick(snap, k, exclude=[first, second])
    assert {first, second, third} == set(ms)
    assert ch.pick(snap, k, exclude=ms) is None
    for m in ms:
        m.in_flight = 2
    assert ch.pick(snap, k, limit=2) is None


def test_a_floor_keeps_sessions_home_at_light_load():
    """The routing issue's rule: two backends with 8 requests in flight keep every session home,
    even when all 8 share one home; above the floor the bound protects the home again."""
    ms = members(2)
    snap = Snapshot(ms)
    ch = ConsistentHash(1.25, floor=8)
    k = hash_bytes(b"session-7")
    home = ch.pick(snap, k)
    for n in range(8):
        home.in_flight = n
        assert ch.pick(snap, k) is home  # the 8th request still goes home
    home.in_flight = 8
    assert ch.pick(snap, k) is not home  # cap = ceil(1.25 x 9 / 2) = 6 < 8


def test_vllm_that_does_not_queue_keeps_its_sessions():
    ms = members(2)
    snap = Snapshot(ms)
    ch = ConsistentHash(1.25, floor=2)
    k = hash_bytes(b"session-1")
    home = ch.pick(snap, k)
    home.in_flight, home.held, home.queueing = 20, 40, False  # a big batch, nothing waiting
    assert ch.pick(snap, k) is home
    home.queueing = True  # vLLM says requests wait: shed to the other one
    other = ch.pick(snap, k)
    assert other is not home
    other.held, other.queueing = 38, True  # both queue, loads about equal: home has room again
    assert ch.pick(snap, k) is home


def test_load_factor_below_one_is_refused():
    with pytest.raises(ValueError):
        ConsistentHash(0.9)


# -- retry budget ----------------------------------------------------------------------------------


def test_retry_budget_holds_its_ratio():
    budget = RetryBudget(ratio=0.2, min_per_second=0.0)
    granted = 0
    for i in range(1000):
        budget.on_request()
        while budget.try_retry(now=i * 0.001):  # every request would like to retry, and again
            granted += 1
    assert 195 <= granted <= 200
    assert budget.refused >= 1000


def test_retry_budget_floor_refills_with_time():
    budget = RetryBudget(ratio=0.0, min_per_second=2.0, now=0.0)
    assert budget.try_retry(0.0) and budget.try_retry(0.0)
    assert not budget.try_retry(0.0)
    assert not budget.try_retry(0.2)
    assert budget.try_retry(0.6)  # 0.6 s x 2/s = 1.2 tokens
    assert not budget.try_retry(0.6)
    assert budget.try_retry(100.0) and budget.try_retry(100.0) and not budget.try_retry(100.0)  # capped


# -- health state ------------------------------------------------------------------------------------


def test_active_thresholds():
    h = HealthState()
    assert h.eligible
    assert not h.probed(False, 0.0, 2, 3) and not h.probed(False, 1.0, 2, 3)
    assert h.probed(False, 2.0, 2, 3) and not h.up  # third failure in a row
    assert not h.probed(True, 3.0, 2, 3)
    assert h.probed(True, 4.0, 2, 3) and h.up  # second pass in a row


def test_a_pass_resets_the_failure_streak():
    h = HealthState()
    h.probed(False, 0.0, 2, 2)
    h.probed(True, 1.0, 2, 2)
    assert not h.probed(False, 2.0, 2, 2) and h.up


def test_ejection_backs_off_and_needs_a_probe():
    h = HealthState()
    assert h.eject(now=0.0, base=5.0, cap=60.0) == 5.0
    assert not h.eligible
    assert not h.probed(True, 4.0, 1, 1) and not h.eligible  # not yet due
    assert h.probed(True, 5.0, 1, 1) and h.eligible  # due and the probe passed
    assert h.eject(now=6.0, base=5.0, cap=60.0) == 10.0  # again soon: doubled
    assert not h.probed(False, 20.0, 1, 1) or not h.eligible  # due, but the probe failed
    assert not h.eligible
    h.probed(True, 21.0, 1, 1)
    h.probed(True, 22.0, 1, 1)
    assert h.eligible
    assert h.eject(now=23.0, base=5.0, cap=60.0) == 20.0
    h.probed(True, 50.0, 1, 1)
    assert h.eject(now=51.0, base=5.0, cap=15.0) == 15.0  # capped
    h.probed(True, 70.0, 1, 1)
    assert h.eject(now=200.0, base=5.0, cap=15.0) == 5.0  # behaved for a whole cap: forgiven


# -- the router, without sockets ------------------------------------------------------------------------


def exchange(body=b"", headers=()):
    """What routing sees of a request: its headers and body (and, once picked, its Selection)."""
    return SimpleNamespace(
        body=body if isinstance(body, bytes) else msgspec.json.encode(body),
        headers=[(k.lower().encode(), v.encode()) for k, v in headers],
        selection=None,
    )


@pytest.fixture(autouse=True)
def provider_key(monkeypatch):
    # A provider whose key variable is empty is refused at load (tests/test_provider_security.py).
    monkeypatch.setenv("FP_TEST_KEY", "sk-secret")


def router_for(raw):
    return Router(build(raw), None)


def select(router, ex):
    ex.selection = router.select(ex.headers, ex.body)
    return ex.selection


def pick(router, ex):
    return select(router, ex).endpoint


POOLS = {
    "clusters": [
        {"name": "chat", "models": ["llama"], "backends": ["http://a:1", "http://b:1"], "fallback": ["spare", "ext"]},
        {"name": "spare", "models": ["small"], "backends": ["http://c:1"]},
    ],
    "providers": [{"name": "ext", "url": "https://api.example.com/v1", "model": "gpt-x", "api_key_env": "FP_TEST_KEY"}],
}


def test_model_routes_to_its_pool_and_counts_in_flight():
    r = router_for(POOLS)
    b = pick(r, exchange({"model": "small", "messages": []}))
    assert b.label == "c:1" and b.load() == 1
    b.release()
    assert b.load() == 0
    assert pick(r, exchange({"model": "llama"})).label in ("a:1", "b:1")


def test_unknown_model_is_404_naming_the_models():
    r = router_for(POOLS)
    with pytest.raises(ClientError) as info:
        select(r, exchange({"model": "nope"}))
    assert info.value.status == 404
    assert "nope" in info.value.message and "llama, small" in info.value.message
    assert r.models == ["llama", "small"]


def test_no_model_goes_to_the_first_pool_and_catch_all_takes_unknown_models():
    r = router_for(POOLS)
    assert pick(r, exchange(b"")).label in ("a:1", "b:1")  # GET /metrics and the like
    r = router_for({**POOLS, "backends": ["http://z:1"]})
    assert pick(r, exchange({"model": "nope"})).label == "z:1"
    assert pick(r, exchange(b"not json")).label == "z:1"


def test_fallback_chain_when_the_pool_has_nobody():
    r = router_for(POOLS)
    for label in ("a:1", "b:1"):
        r.find(label).set_drained(True)
    assert pick(r, exchange({"model": "llama"})).label == "c:1"
    r.find("c:1").set_drained(True)
    ext = pick(r, exchange({"model": "llama"}))
    assert ext.label == "ext" and ext.provider
    ext.set_drained(True)
    with pytest.raises(NoBackend, match="chat -> spare -> ext"):
        select(r, exchange({"model": "llama"}))
    assert not r.any_healthy()


def test_reselect_skips_tried_backends_then_falls_back():
    r = router_for(POOLS)
    sel = select(r, exchange({"model": "llama"}))
    first = sel.endpoint
    assert r.reselect(sel, 0.0)
    second = sel.endpoint
    assert {first.label, second.label} == {"a:1", "b:1"}
    assert first.load() == 0 and second.load() == 1  # the count moved with the request
    assert r.reselect(sel, 0.0) and sel.endpoint.label == "c:1"
    assert not r.reselect(sel, 0.0)  # three attempts, the first included
    sel.release()
    assert sel.endpoint.load() == 0


def test_circuit_breaker_then_fast_503():
    r = router_for({"backends": ["http://a:1", "http://b:1"], "balance": {"max_in_flight": 1}})
    got = {pick(r, exchange()).label, pick(r, exchange()).label}
    assert got == {"a:1", "b:1"}
    with pytest.raises(NoBackend, match="max_in_flight"):
        select(r, exchange())


def test_provider_adaptation(monkeypatch):
    monkeypatch.setenv("FP_TEST_KEY", "sk-secret")
    r = router_for(POOLS)
    ext = r.find("ext")
    body = b'{"model":"llama","messages":[{"role":"user","content":"hi"}],"top_k":3}'
    adapter = ext.adapter
    target, headers, new = adapter.adapt(b"/v1/chat/completions", [(b"authorization", b"Bearer client"), (b"a", b"b")], body)
    assert target == b"/v1/chat/completions"
    assert headers == [(b"a", b"b")] and adapter.extra == ((b"authorization", b"Bearer sk-secret"),)
    assert msgspec.json.decode(new) == {"model": "gpt-x", "messages": [{"role": "user", "content": "hi"}], "top_k": 3}
    assert ext.authority == b"api.example.com" and ext.server_hostname == "api.example.com"
    assert "sk-secret" not in str(r.state())


def test_provider_base_path_stands_for_v1():
    r = router_for({"providers": [{"name": "p", "url": "https://h.example:8443/openai/v1", "models": ["m"]}]})
    p = r.find("p")
    assert p.adapter.adapt(b"/v1/chat/completions", [], b"")[0] == b"/openai/v1/chat/completions"
    assert p.authority == b"h.example:8443"


def test_an_ipv6_backend_is_named_in_brackets_in_the_host_field():
    r = router_for({"backends": ["http://[::1]:8000"],
                    "providers": [{"name": "p", "url": "https://[fd00::2]/v1", "models": ["m"]}]})
    assert r.endpoints[0].authority == b"[::1]:8000"
    assert r.find("p").authority == b"[fd00::2]"


def keyed(keys, prefix_chars=16):
    return router_for(
        {
            "backends": [f"http://h{i}:1" for i in range(5)],
            "balance": {"policy": "consistent_hash", "hash_keys": keys, "prefix_chars": prefix_chars},
        }
    )


def test_session_header_key():
    r = keyed(["header:X-Session-Id"])
    homes = set()
    for s in range(20):
        got = set()
        for turn in range(3):
            b = pick(r, exchange({"model": "m", "messages": [{"content": f"turn {turn}"}]}, [("x-session-id", f"s{s}")]))
            got.add(b.label)
            b.release()
        assert len(got) == 1
        homes |= got
    assert len(homes) >= 3


def test_user_and_prefix_keys_and_their_order():
    r = keyed(["user", "prefix"], prefix_chars=16)
    def home(body):
        b = pick(r, exchange(body))
        b.release()
        return b.label
    system = "You are a helpful assistant."
    a = home({"messages": [{"role": "system", "content": system}, {"content": "one"}]})
    assert all(home({"messages": [{"role": "system", "content": system}, {"content": f"q{i}"}]}) == a for i in range(10))
    # The user field wins over the prefix when present.
    u = home({"user": "alice", "messages": [{"content": "x"}]})
    assert all(home({"user": "alice", "messages": [{"content": f"other {i}"}]}) == u for i in range(10))
    assert len({home({"prompt": f"{i:04d} completions prompt"}) for i in range(40)}) >= 3


def test_prompt_prefix_shapes():
    dec = msgspec.json.Decoder(RoutingFields).decode
    f = dec(b'{"messages":[{"content":"abc"},{"role":"x"},{"content":[{"type":"text","text":"def"}]}]}')
    assert prompt_prefix(f, 100) == "abc\x1edef".encode()
    assert prompt_prefix(f, 2) == b"ab"
    # A conversation's key ends with its first user message: later turns keep it.
    chat = [{"role": "system", "content": "sys"}, {"role": "user", "content": "q1"}]
    first = prompt_prefix(dec(msgspec.json.encode({"messages": chat})), 1000)
    later = chat + [{"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"}]
    assert first == prompt_prefix(dec(msgspec.json.encode({"messages": later})), 1000) == "sys\x1eq1".encode()
    assert prompt_prefix(dec(b'{"prompt":"hello world"}'), 5) == b"hello"
    assert prompt_prefix(dec(b'{"prompt":[1,2,3]}'), 5) == b"[1,2,3]"
    assert prompt_prefix(dec(b'{"model":"x"}'), 5) is None


def test_routing_fields_tolerate_odd_bodies():
    def fields(body):
        return Selection([], body, model_only=False).fields()

    assert fields(b"") is False
    assert fields(b"\xff not json") is False
    assert fields(b'{"model":"m","messages":[{"content":{"weird":1}}]}').model == "m"  # odd types elsewhere do not hide the model
    sel = Selection([], b'{"model":"m","user":"u"}', model_only=False)
    assert sel.fields() is sel.fields()  # decoded once


def test_outlier_ejection_is_capped_per_cluster():
    r = router_for({"backends": ["http://a:1", "http://b:1", "http://c:1", "http://d:1"],
                    "outlier": {"consecutive_failures": 2, "max_ejected_percent": 50}})
    bs = r.endpoints
    for b in bs:
        b.failed(0.0)
        b.failed(0.0)
    assert sum(not b.eligible for b in bs) == 2  # half of four, no more
    assert len(r.clusters["default"].snapshot) == 2


def test_a_lone_backend_is_never_ejected():
    r = router_for({"backends": ["http://a:1"], "outlier": {"consecutive_failures": 1}})
    for _ in range(5):
        r.endpoints[0].failed(0.0)
    assert r.endpoints[0].eligible


def test_drain_takes_a_backend_out_of_the_ring():
    r = router_for({"backends": ["http://a:1", "http://b:1"], "balance": {"policy": "round_robin"}})
    assert r.drain("a:1")
    assert {pick(r, exchange()).label for _ in range(4)} == {"b:1"}
    assert r.drain("a:1", False)
    assert {pick(r, exchange()).label for _ in range(4)} == {"a:1", "b:1"}
    assert not r.drain("nope")


def test_reload_adopts_unchanged_backends_with_their_counts():
    old = router_for({"backends": ["http://a:1", "http://b:1"]})
    a = old.find("a:1")
    a.acquire()
    new = Router(build({"backends": ["http://a:1", "http://c:1"]}), None, previous=old)
    assert new.find("a:1") is a and a.load() == 1  # in flight across the swap
    assert new.find("c:1") is not None and new.find("b:1") is None
    assert a.owner is new and old.find("b:1").owner is old
    a.release()
    assert a.load() == 0


@pytest.mark.parametrize(
    "raw,field",
    [
        ({"pools": [{"name": "p", "backends": ["http://a:1"], "balance": {"policy": "random"}}]}, "$.pools[0].balance.policy"),
        ({"pools": [{"name": "p", "backends": ["http://a:1"], "balance": {"load_factor": 0.5}}]}, "$.pools[0].balance.load_factor"),
        ({"pools": [{"name": "p", "backends": ["http://a:1"], "fallback": ["q"]}]}, "fallback 'q'"),
        ({"pools": [{"name": "p", "models": ["m"], "backends": ["http://a:1"]},
                    {"name": "q", "models": ["m"], "backends": ["http://b:1"]}]}, "model 'm'"),
        ({"backends": ["http://a:1"], "retry": {"budget": 2}}, "$.retry.budget"),
        ({"backends": ["http://a:1"], "outlier": {"max_ejected_percent": 120}}, "$.outlier.max_ejected_percent"),
        ({"providers": [{"name": "p", "url": "ftp://x"}]}, "$.providers[0]"),
        ({"pools": [{"name": "bad name", "backends": ["http://a:1"]}]}, "$.pools[0].name"),
        ({"clusters": [{"name": "bad name", "backends": ["http://a:1"]}]}, "$.clusters[0].name"),
        ({"connection_pool": {"max_idle": 0}}, "$.connection_pool.max_idle"),
        ({"pools": [], "clusters": []}, "`pools` is the older name of `clusters`"),
        ({"backends": ["http://a:1", "http://a:1"]}, "lists a backend twice"),
        ({"backends": [{"url": "http://a:1", "name": "x"}],
          "pools": [{"name": "p", "models": ["m"], "backends": [{"url": "http://b:1", "name": "x"}]}]}, "'x'"),
    ],
)
def test_config_errors_name_the_field(raw, field):
    with pytest.raises(ConfigError) as info:
        build(raw, "routing.yaml")
    assert "routing.yaml" in str(info.value) and field in str(info.value)
