"""Processes: workers behind SO_REUSEPORT under a supervisor; respawn, reload, drain, scaling."""

import http.client
import json
import os
import signal
import socket
import threading
import time

import pytest

from conftest import start_proxy, start_sim, wait_for

BODY = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})


class Load:
    """Steady load from a few threads, each on its own keep-alive connection; counts outcomes."""

    def __init__(self, port, threads=4, headers=None):
        self.port = port
        self.ok = 0
        self.failed = []
        self.backends = set()
        self.headers = {"content-type": "application/json", **(headers or {})}
        self._stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for t in self.threads:
            t.start()

    def _run(self):
        conn = None
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request("POST", "/v1/chat/completions", BODY, self.headers)
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    self.failed.append(resp.status)
                else:
                    self.ok += 1
                if resp.getheader("connection") == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                self.failed.append(repr(exc))
                conn = None

    def stop(self):
        self._stop.set()
        for t in self.threads:
            t.join(15)
        return self


def workers(proxy):
    return proxy.admin("/admin/workers")[1]


def live_pids(proxy):
    return sorted(w["pid"] for w in workers(proxy)["workers"] if w["ready"] and not w["draining"])


@pytest.fixture
def sim2():
    svc = start_sim("--name", "sup-sim")
    yield svc
    svc.stop()


def test_connections_reach_both_workers(sim2):
    proxy = start_proxy([sim2], "--workers", "2")
    try:
        # Both listening first: the port answers once one worker is up, and on a busy machine the
        # other may still be importing, so the kernel would have one socket to spread over.
        deadline = time.monotonic() + 30
        while len(live_pids(proxy)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(live_pids(proxy)) == 2, workers(proxy)
        load = Load(proxy.port, threads=8)
        time.sleep(1.5)
        load.stop()
        assert not load.failed

        def per_worker():
            return [w["requests"] for w in proxy.admin("/admin/backends")[1]["backends"][0]["workers"]]

        # Which worker accepts a connection is the kernel's hash of its addresses: the load's 8
        # keep-alive connections all land on one worker once in 128 runs. Then fresh
        # connections, a request each, until both have served: 64 all on one, once in 2^63.
        for _ in range(64):
            if all(n > 0 for n in per_worker()):
                break
            conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
            conn.request("POST", "/v1/chat/completions", BODY, {"content-type": "application/json"})
            assert conn.getresponse().status == 200
            conn.close()
        assert wait_for(lambda: len(per_worker()) == 2 and all(n > 0 for n in per_worker()), timeout=5), per_worker()
    finally:
        proxy.stop()


def test_sigkill_worker_is_respawned_quickly(sim2):
    proxy = start_proxy([sim2], "--workers", "2")
    try:
        load = Load(proxy.port, threads=4)
        time.sleep(0.5)
        before = live_pids(proxy)
        victim = before[0]
        os.kill(victim, signal.SIGKILL)
        t0 = time.monotonic()
        assert wait_for(lambda: len(live_pids(proxy)) == 2 and victim not in live_pids(proxy), timeout=2.0)
        assert time.monotonic() - t0 < 2.0
        time.sleep(0.5)
        load.stop()
        # Only requests in flight on the killed worker may fail: at most one per client thread.
        assert len(load.failed) <= 4, load.failed
        assert load.ok > 50
    finally:
        proxy.stop()


def test_sighup_under_load_fails_nothing(sim2):
    proxy = start_proxy([sim2], "--workers", "2")
    try:
        load = Load(proxy.port, threads=6)
        time.sleep(0.5)
        before = live_pids(proxy)
        proxy.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: workers(proxy)["generation"] == 2, timeout=10)
        assert wait_for(lambda: not set(live_pids(proxy)) & set(before) and len(live_pids(proxy)) == 2, 10)
        time.sleep(0.5)
        load.stop()
        assert load.failed == []
        assert load.ok > 50
    finally:
        proxy.stop()


def test_sighup_with_bad_config_keeps_old_workers(sim2, tmp_path):
    path = tmp_path / "fleet.yaml"
    path.write_text(f"backends: [{sim2.url}]\nworkers: 2\n")
    proxy = start_proxy([], "--config", str(path))
    try:
        before = live_pids(proxy)
        path.write_text("backends: [nope://]\n")
        proxy.proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        assert live_pids(proxy) == before
        assert workers(proxy)["generation"] == 1
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
        conn.request("GET", "/v1/models")
        assert conn.getresponse().status == 200
    finally:
        proxy.stop()
    assert b"reload rejected" in proxy.proc.stderr.read()


def test_sigterm_lets_a_stream_finish_then_exits_0(sim2):
    proxy = start_proxy([sim2], "--workers", "2")
    result = {}

    def stream():
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        body = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 30,
                           "stream": True})
        conn.request("POST", "/v1/chat/completions", body, {"x-sim-itl": "0.1", "content-type": "application/json"})
        resp = conn.getresponse()
        result["body"] = resp.read()

    t = threading.Thread(target=stream)
    t.start()
    time.sleep(0.5)  # the 3-second stream is under way
    proxy.proc.send_signal(signal.SIGTERM)
    def refused():
        try:
            socket.create_connection(("127.0.0.1", proxy.port), timeout=1).close()
            return False
        except ConnectionRefusedError:
            return True

    try:
        assert wait_for(refused, timeout=1.0)  # no longer accepting
    finally:
        t.join(10)
    assert result["body"].endswith(b"data: [DONE]\n\n")
    assert proxy.proc.wait(10) == 0


def test_ttin_ttou_change_worker_count(sim2):
    token = "test-admin-token-0123456789"
    proxy = start_proxy([sim2], "--workers", "1", env={"FLEETPROXY_ADMIN_TOKEN": token})
    try:
        proxy.proc.send_signal(signal.SIGTTIN)
        assert wait_for(lambda: len(live_pids(proxy)) == 2, timeout=5)
        proxy.proc.send_signal(signal.SIGTTIN)
        assert wait_for(lambda: len(live_pids(proxy)) == 3, timeout=5)
        proxy.proc.send_signal(signal.SIGTTOU)
        assert wait_for(lambda: len(live_pids(proxy)) == 2, timeout=5)
        conn = http.client.HTTPConnection("127.0.0.1", proxy.admin_port, timeout=5)
        conn.request("POST", "/admin/workers", json.dumps({"workers": 1}),
                     {"content-type": "application/json", "authorization": f"Bearer {token}"})
        resp = conn.getresponse()
        assert resp.status == 200 and json.loads(resp.read())["target"] == 1
        assert wait_for(lambda: len(live_pids(proxy)) == 1, timeout=5)
    finally:
        proxy.stop()


def _open_streams(port, n, itl="0.2", tokens=40):
    socks = []
    body = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": tokens,
                       "stream": True}).encode()
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nx-sim-itl: %s\r\nContent-Length: %d\r\n\r\n%s"
                  % (itl.encode(), len(body), body))
        socks.append(s)
    return socks


def test_shared_in_flight_counts_equal_the_sum_over_workers(sim2):
    proxy = start_proxy([sim2], "--workers", "2")
    socks = []
    try:
        socks = _open_streams(proxy.port, 12)

        def consistent():
            n = len(socks)
            backend = proxy.admin("/admin/backends")[1]["backends"][0]
            views = [w["in_flight_all"] for w in backend["workers"]]
            own = [w["in_flight"] for w in backend["workers"]]
            return backend["in_flight"] == n and views == [n, n] and sum(own) == n, (own, views)

        # Which worker accepts a connection is the kernel's choice (one listening socket shared
        # by both): open more until each holds some, the sum must hold whatever the split.
        for _ in range(6):
            assert wait_for(lambda: consistent()[0], timeout=3), consistent()[1]
            if all(consistent()[1][0]):
                break
            socks += _open_streams(proxy.port, 6)
        assert all(consistent()[1][0]), consistent()[1]
        # A worker that dies leaves no stale counts: its row is zeroed.
        backend = proxy.admin("/admin/backends")[1]["backends"][0]
        victim = backend["workers"][0]
        os.kill(victim["pid"], signal.SIGKILL)
        survivor_own = backend["workers"][1]["in_flight"]

        def settled():
            b = proxy.admin("/admin/backends")[1]["backends"][0]
            return len(b["workers"]) == 2 and all(w["in_flight_all"] == survivor_own for w in b["workers"])

        assert wait_for(settled, timeout=3)
    finally:
        for s in socks:
            s.close()
        proxy.stop()


def test_prometheus_metrics_cover_the_process_group(sim2):
    proxy = start_proxy([sim2], "--workers", "2")
    try:
        load = Load(proxy.port, threads=4)
        time.sleep(0.5)
        load.stop()
        assert not load.failed

        def scrape():
            conn = http.client.HTTPConnection("127.0.0.1", proxy.admin_port, timeout=5)
            conn.request("GET", "/metrics")
            resp = conn.getresponse()
            assert resp.getheader("content-type").startswith("text/plain; version=0.0.4")
            text = resp.read().decode()
            conn.close()
            return dict(line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))

        label = f'{{backend="127.0.0.1:{sim2.port}"}}'
        values = scrape()
        assert int(values["fleetproxy_backend_requests_total" + label]) == load.ok  # both workers counted
        assert values["fleetproxy_backend_in_flight" + label] == "0"
        assert values["fleetproxy_backend_healthy" + label] == "1"
        assert values["fleetproxy_workers"] == "2"
        os.kill(live_pids(proxy)[0], signal.SIGKILL)
        assert wait_for(lambda: scrape()["fleetproxy_worker_restarts_total"] == "1", timeout=3)
    finally:
        proxy.stop()


@pytest.mark.parametrize("taken, mode", [
    ("listen", "--workers=2"), ("admin_listen", "--workers=2"), ("listen", "--single-process"),
])
def test_an_address_in_use_is_named_and_nothing_is_left_running(taken, mode):
    """A taken port is a one-line error naming the address (and, under a supervisor, the
    field) and exit status 1, not a traceback. (The supervisor binds its admin address before
    any worker exists: a worker's own admin listener, on an ephemeral port, once took it.)"""
    import subprocess
    import sys

    from conftest import ROOT, free_port

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        ports = {"listen": free_port(), "admin_listen": free_port(), taken: busy}
        args = [sys.executable, "-m", "proxy", "--listen", f"127.0.0.1:{ports['listen']}",
                "--admin-listen", f"127.0.0.1:{ports['admin_listen']}", "--backend", "http://127.0.0.1:9", mode]
        done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1, done.stderr[-2000:]
    err = done.stderr.strip().splitlines()
    assert err[-1].startswith("fleetproxy: cannot listen:"), err
    assert str(busy) in err[-1] and "Traceback" not in done.stderr
    if mode != "--single-process":
        assert f"{taken} 127.0.0.1:{busy}" in err[-1]
