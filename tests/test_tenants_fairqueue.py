"""The fair queue's rules, sans-IO (proxy/tenants/fairqueue.py): shares follow weights by
tokens under backlog, whatever each tenant's request rate; bounds; expiry; cancellation."""

import pytest

from proxy.tenants.fairqueue import FairQueue


def run(q, arrivals, releases, ticks, weights, costs):
    """Each tick: ``arrivals[t]`` requests from tenant t, then ``releases`` pops. Returns the
    tokens released per tenant, and what was refused or evicted per tenant."""
    released = dict.fromkeys(arrivals, 0)
    dropped = dict.fromkeys(arrivals, 0)
    now = 0.0
    for _ in range(ticks):
        for tenant, n in arrivals.items():
            for _ in range(n):
                entry, evicted = q.push(tenant, weights[tenant], costs[tenant], tenant, now)
                if entry is None:
                    dropped[tenant] += 1
                if evicted is not None:
                    dropped[evicted] += 1
        for _ in range(releases):
            item = q.pop(now)
            if item is not None:
                released[item] += costs[item]
        now += 0.01
    return released, dropped


def test_a_tenant_sending_ten_times_more_gets_the_same_share_at_equal_weight():
    q = FairQueue(max_length=100, max_wait=60)
    released, dropped = run(q, {"noisy": 20, "quiet": 2}, 3, 500, {"noisy": 1, "quiet": 1}, {"noisy": 50, "quiet": 50})
    assert released["noisy"] == pytest.approx(released["quiet"], rel=0.01)  # both above their half


def test_a_tenant_under_its_share_gets_all_it_asks_and_the_rest_goes_to_the_others():
    q = FairQueue(max_length=100, max_wait=60)
    released, dropped = run(q, {"noisy": 10, "quiet": 1}, 3, 500, {"noisy": 1, "quiet": 1}, {"noisy": 50, "quiet": 50})
    assert released["quiet"] == 500 * 50 and dropped["quiet"] == 0  # nothing waits behind the noisy one
    assert released["noisy"] == 2 * 500 * 50 and dropped["noisy"] > 0  # the queue's bound falls on it


def test_shares_follow_weights_by_tokens_not_requests():
    q = FairQueue(max_length=200, max_wait=60)
    # b weighs 3: it gets 3x the tokens; c's requests cost 4x more, so it gets 1/4 the requests.
    weights = {"a": 1, "b": 3, "c": 1}
    costs = {"a": 100, "b": 100, "c": 400}
    released, _ = run(q, {"a": 5, "b": 5, "c": 5}, 3, 400, weights, costs)
    assert released["b"] / released["a"] == pytest.approx(3, rel=0.02)
    assert released["c"] / released["a"] == pytest.approx(1, rel=0.02)


def test_an_idle_tenant_saves_no_credit():
    q = FairQueue(max_length=1000, max_wait=60)
    for i in range(100):
        q.push("a", 1, 10, ("a", i), 0.0)
    for _ in range(50):
        q.pop(0.0)
    for i in range(10):
        q.push("b", 1, 10, ("b", i), 0.0)
    # b starts from the virtual time now, not from 0: it interleaves with a, it does not pass all of a.
    order = [q.pop(0.0)[0] for _ in range(20)]
    assert order.count("b") == 10 and order[:4].count("a") >= 1 and order[-4:].count("a") >= 1


def test_a_tenants_requests_keep_their_order():
    q = FairQueue(max_length=100, max_wait=60)
    for i in range(10):
        q.push("a", 1, 10 + (i % 3) * 50, i, 0.0)  # costs differ: tags still grow
        q.push("b", 2, 10, -i - 1, 0.0)
    out = [q.pop(0.0) for _ in range(20)]
    assert [x for x in out if x >= 0] == list(range(10))
    assert [x for x in out if x < 0] == [-i - 1 for i in range(10)]
    assert q.pop(0.0) is None and len(q) == 0


def test_full_queue_refuses_the_largest_tag():
    q = FairQueue(max_length=3, max_wait=60)
    for i in range(3):
        assert q.push("noisy", 1, 100, ("noisy", i), 0.0)[0] is not None
    entry, evicted = q.push("noisy", 1, 100, ("noisy", 3), 0.0)
    assert entry is None and evicted is None and len(q) == 3  # its own request would be last anyway
    entry, evicted = q.push("quiet", 1, 100, ("quiet", 0), 0.0)
    assert entry is not None and evicted == ("noisy", 2) and len(q) == 3
    assert [q.pop(0.0) for _ in range(3)] == [("noisy", 0), ("quiet", 0), ("noisy", 1)]


def test_waiting_is_bounded():
    q = FairQueue(max_length=10, max_wait=2.0)
    q.push("a", 1, 10, "first", 0.0)
    q.push("b", 1, 10, "second", 1.0)
    assert q.expire(1.9) == []
    assert q.expire(2.0) == ["first"]
    assert q.expire(2.9) == [] and len(q) == 1
    assert q.expire(3.0) == ["second"] and len(q) == 0 and q.pop(3.0) is None


def test_a_cancelled_request_is_never_released_nor_expired():
    q = FairQueue(max_length=10, max_wait=1.0)
    gone, _ = q.push("a", 1, 10, "gone", 0.0)
    q.push("a", 1, 10, "stays", 0.0)
    q.cancel(gone)
    q.cancel(gone)  # twice is once
    assert len(q) == 1
    assert q.expire(5.0) == ["stays"] and q.pop(5.0) is None


def test_retry_after_follows_the_release_rate():
    q = FairQueue(max_length=1000, max_wait=30)
    assert q.retry_after(0.0) == 30  # nothing released yet: the most a request could wait
    now = 0.0
    for i in range(400):  # 10 releases a second for 40 s
        q.push("a", 1, 10, i, now)
        q.pop(now)
        now += 0.1
    for i in range(50):
        q.push("a", 1, 10, i, now)
    assert q.retry_after(now) in (5, 6)  # 50 ahead at ~10/s
    assert q.retry_after(now + 60) > 30  # no release for a minute: the rate estimate decays


def test_bad_bounds_are_refused():
    with pytest.raises(ValueError):
        FairQueue(0, 1)
    with pytest.raises(ValueError):
        FairQueue(1, 0)
