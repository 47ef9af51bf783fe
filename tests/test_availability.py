"""Availability rules: health checks that outlive their own failures, panic routing when every
endpoint looks down, and health state that survives worker restarts and reloads."""

import asyncio

import pytest

from conftest import start_sim, wait_for
from proxy.routing import prober
from test_routing import ADMIN_TOKEN, CHAT, admin_post, post, proxy_with


@pytest.fixture
def sims():
    started = []

    def start(n, prefix="s"):
        out = [start_sim("--name", f"{prefix}{i}") for i in range(n)]
        started.extend(out)
        return out

    yield start
    for s in started:
        s.stop()


class _Health:
    def ejection_due(self, now):
        return False


class _Flaky:
    """An endpoint whose first probe result raises inside the router's code (a bug of ours)."""

    host, port, health_path, ssl, server_hostname, provider = "127.0.0.1", 9, "/health", None, None, False
    authority = b"127.0.0.1:9"

    def __init__(self):
        self.calls = 0
        self.health = _Health()

    def sync_health(self, now):
        pass

    def probed(self, ok, now):
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("a bug while recording a probe")


def test_health_checks_outlive_a_round_that_raises():
    class Cfg:
        class health:
            interval, timeout, no_traffic_interval = 0.01, 0.2, None

    async def run():
        flaky = _Flaky()
        task = asyncio.get_running_loop().create_task(prober.check_forever([flaky], Cfg))
        try:
            for _ in range(300):
                if flaky.calls >= 3:
                    break
                await asyncio.sleep(0.01)
        finally:
            task.cancel()
        return flaky.calls

    assert asyncio.run(run()) >= 3, "checks stopped after the round that raised"


# -- panic ------------------------------------------------------------------------------------


def _health_failing_everywhere():
    # Every probe gets a 404: the checks take every backend down though each serves fine.
    return {"path": "/no-such-health-path", "interval": 0.1, "unhealthy_threshold": 1, "healthy_threshold": 2}


def test_every_backend_down_by_checks_still_serves_in_panic(tmp_path, sims):
    ss = sims(2)
    proxy = proxy_with(
        tmp_path, {"backends": [s.url for s in ss], "health": _health_failing_everywhere()},
        env={"FLEETPROXY_ADMIN_TOKEN": ADMIN_TOKEN},
    )
    try:
        def panicking():
            state = proxy.admin("/admin/backends")[1]
            return not any(b["healthy"] for b in state["backends"]) and state["clusters"][0]["panic"]

        assert wait_for(panicking, timeout=10), proxy.admin("/admin/backends")[1]
        for _ in range(12):  # each answer brings its backend up until the next failed probe
            status, backend, body = post(proxy.port, CHAT)
            assert status == 200, body
        # An operator's drain still holds in panic: the drained backend gets nothing.
        assert admin_post(proxy, "/admin/backends/" + ss[0].url.split("//")[1] + "/drain")[0] == 200
        for _ in range(6):
            status, backend, _ = post(proxy.port, CHAT)
            assert status == 200 and backend == "s1"
    finally:
        proxy.stop()


def test_a_backend_that_answers_in_panic_is_up_at_once(tmp_path, sims):
    (s,) = sims(1)
    health = {**_health_failing_everywhere(), "interval": 30.0}  # one round, then none for the test
    proxy = proxy_with(tmp_path, {"backends": [s.url], "health": health})
    try:
        assert wait_for(lambda: not proxy.admin("/admin/backends")[1]["backends"][0]["healthy"], timeout=10)
        status, _, _ = post(proxy.port, CHAT)
        assert status == 200
        state = proxy.admin("/admin/backends")[1]
        assert state["backends"][0]["healthy"] and not state["clusters"][0]["panic"]
    finally:
        proxy.stop()
