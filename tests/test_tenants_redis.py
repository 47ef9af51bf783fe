"""Limits shared by replicas through a real Redis (tenants/shared.py): two proxies enforce one
limit together; with Redis gone, each keeps serving within its own limits, without hanging,
and says so (a log line, a counter)."""

import json
import shutil
import subprocess

import pytest
import redis

from conftest import free_port, metrics, start_proxy, start_sim, wait_port
from proxy.tenants.identify import hash_key
from test_tenants_live import CHAT, post

KEY = "sk-shared-" + "7" * 24

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed (.ci/run installs it)")


class RedisServer:
    def __init__(self):
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_port(self.port, proc=self.proc)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def redis_server():
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def sim():
    s = start_sim("--ttft", "0.005", "--itl", "0.001")
    yield s
    s.stop()


def config(tmp_path, name, sim_url, redis_url, timeout=1.0):
    path = tmp_path / name
    path.write_text(json.dumps({
        "backends": [sim_url],
        "tenants": {
            "redis": {"url": redis_url, "timeout": timeout},
            # 4 requests at once, then one per 100 s: nothing refills during the test.
            "list": [{"name": "r", "keys": [hash_key(KEY)], "requests_per_second": 0.01, "burst_requests": 4}],
        },
    }))
    return str(path)


def test_two_replicas_enforce_one_limit_together(tmp_path, sim, redis_server):
    one = start_proxy([], "--config", config(tmp_path, "a.yaml", sim.url, redis_server.url), "--workers", "2")
    two = start_proxy([], "--config", config(tmp_path, "b.yaml", sim.url, redis_server.url), "--single-process")
    try:
        answers = [post(proxy.port, CHAT, KEY) for _ in range(5) for proxy in (one, two)]
        statuses = [status for status, _, _ in answers]
        assert sorted(statuses) == [200] * 4 + [429] * 6  # each replica alone would have let 4 through
        refused = [headers for status, headers, _ in answers if status == 429]
        assert all(h["x-ratelimit-remaining-requests"] == "0" and int(h["retry-after"]) >= 1 for h in refused)
        stored = redis.Redis(port=redis_server.port).get("fleetproxy:tenant:r:req")
        assert stored is not None and int(stored) > 0  # the bucket is Redis's
        for proxy in (one, two):
            assert metrics(f"http://127.0.0.1:{proxy.admin_port}")["fleetproxy_tenant_redis_errors_total"] == 0
    finally:
        one.stop()
        two.stop()


def test_without_redis_each_replica_keeps_its_own_limits_and_does_not_hang(tmp_path, sim, redis_server):
    proxy = start_proxy([], "--config", config(tmp_path, "c.yaml", sim.url, redis_server.url, timeout=0.2),
                        "--single-process")
    try:
        assert [post(proxy.port, CHAT, KEY)[0] for _ in range(2)] == [200, 200]
        redis_server.stop()  # mid-test: the proxy's connection to it breaks
        # post() gives up after 10 s: a request stuck on Redis fails the test there.
        statuses = [post(proxy.port, CHAT, KEY)[0] for _ in range(4)]
        # The local bucket had 2 left of its 4: local limits, not none and not a wall of errors.
        assert statuses == [200, 200, 429, 429]
        assert metrics(f"http://127.0.0.1:{proxy.admin_port}")["fleetproxy_tenant_redis_errors_total"] >= 1
    finally:
        proxy.stop()
    log = proxy.proc.stderr.read().decode()
    assert log.count("Redis does not answer") == 1  # logged once, not per request
