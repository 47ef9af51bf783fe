"""periodic: background tasks whose periods divide one another wake together (tick); tasks with
nothing to do while nothing is routed sleep long until a request comes (Pace)."""

import asyncio
import http.client
import json
import time
import types

import pytest
import uvloop

from proxy.config import build
from proxy.periodic import Pace, tick
from proxy.routing.router import Router
from conftest import ScriptedBackend, start_proxy, wait_for


def test_tasks_whose_periods_divide_share_their_wakeups():
    # Started 13 and 29 ms apart, the three must wake on the same instants: every wake of
    # the slower ones within the loop's timer grain (1 ms; 3 here for a busy machine) of
    # one of the 20 ms task's, and no task twice at one tick. (Each sleeping its period from
    # its own start, none would be.)
    async def run():
        loop = asyncio.get_running_loop()
        end = loop.time() + 0.3
        woke = {0.02: [], 0.04: [], 0.08: []}

        async def every(period, delay):
            await asyncio.sleep(delay)
            while loop.time() < end:
                await tick(period)
                woke[period].append(loop.time())

        await asyncio.gather(every(0.02, 0), every(0.04, 0.013), every(0.08, 0.029))
        return woke

    woke = uvloop.run(run())
    assert len(woke[0.08]) >= 2
    fast = woke[0.02]
    last = max(fast)  # the slower ones may tick once more after the fast one stopped
    assert all(min(abs(t - f) for f in fast) <= 0.003 for t in woke[0.04] + woke[0.08] if t <= last), woke
    for times in woke.values():
        assert all(b - a > 0.01 for a, b in zip(times, times[1:])), woke


# -- Pace: rounds slowed while nothing is routed ----------------------------------------------


def test_a_paced_task_sleeps_long_while_nothing_is_routed_and_wakes_with_the_next_request():
    router = Router(build({"backends": ["http://127.0.0.1:1"]}), None)
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()

    async def run():
        loop = asyncio.get_running_loop()
        rounds = []

        async def task():
            pace = Pace(router, 0.02, 30.0)
            while True:
                rounds.append(loop.time())
                await pace.next()

        runner = loop.create_task(task())
        await asyncio.sleep(0.3)
        idle = len(rounds)  # the first round, one period with nothing routed, then the long sleep
        slept = router.on_request is not None
        sent = loop.time()
        selection = router.select({}, body)  # a request: in flight until released
        await asyncio.sleep(0.01)
        woke = [t - sent for t in rounds if t >= sent]
        await asyncio.sleep(0.2)
        busy = sum(1 for t in rounds if t >= sent)  # 0.02 s apart while it is in flight
        selection.release()
        await asyncio.sleep(0.3)
        after = len(rounds) - idle - busy  # one round sees it gone, the next starts the long sleep
        asleep = router.on_request is not None  # to be woken by the next request
        runner.cancel()
        return idle, slept, woke, busy, after, asleep

    idle, slept, woke, busy, after, asleep = uvloop.run(run())
    assert idle <= 3 and slept  # 0.02 s apart it would be ~15
    assert woke and woke[0] < 0.01  # the request's own turn of the loop, not a tick later
    assert busy >= 5
    assert after <= 3 and asleep
    assert router.on_request is None  # a sleep that ends (here: cancelled) leaves no waker behind


def test_requests_held_by_the_fair_queue_keep_the_rounds_going():
    # Held before routing, they wait on fresh load reports to be released: not an idle spell.
    router = Router(build({"backends": ["http://127.0.0.1:1"]}), None)
    router.gate = types.SimpleNamespace(waiting=1)

    async def rounds():
        pace = Pace(router, 0.02, 30.0)
        for _ in range(5):
            await pace.next()

    async def run():
        await asyncio.wait_for(rounds(), 3.0)  # five rounds 0.02 s apart, no 30 s sleep among them

    uvloop.run(run())


@pytest.mark.parametrize("what", ["scrapes", "checks"])
def test_an_idle_proxy_scrapes_and_checks_its_backends_only_once_traffic_comes(tmp_path, what):
    # Every 0.1 s while requests come; none while nothing is routed, until one is. Health checks
    # pace so only where health.no_traffic_interval is set; unset, they go on (the third count).
    backend = ScriptedBackend(ok)
    path = tmp_path / "pace.yaml"
    health = {"interval": 0.1} if what == "scrapes" else {"interval": 0.1, "no_traffic_interval": 60}
    path.write_text(json.dumps({"backends": [backend.url], "load": {"scrape_interval": 0.1},
                                "health": health, "no_traffic_interval": 60}))
    proxy = start_proxy([], "--config", str(path))
    try:
        count = lambda: getattr(backend, what)  # noqa: E731
        # The first round at start, the second an interval later: it saw nothing routed in between.
        assert wait_for(lambda: count() >= 2, timeout=5)
        time.sleep(0.3)
        idle, checks = count(), backend.checks
        time.sleep(1.0)
        assert count() == idle  # 0.1 s apart it would be 10 more
        if what == "scrapes":
            assert backend.checks >= checks + 5  # no health.no_traffic_interval: checks go on
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
        conn.request("POST", "/v1/completions", b'{"model":"m","prompt":"hi"}', {"content-type": "application/json"})
        assert conn.getresponse().status == 200
        conn.close()
        assert wait_for(lambda: count() > idle, timeout=1.0)  # woken by the request
    finally:
        proxy.stop()
        backend.close()


def ok(request, sock):
    sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
