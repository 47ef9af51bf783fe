"""State that must outlive a worker: drains and ejections kept in the generation's shared memory
and carried into the next generation, worker slots never shared with a draining worker, and
reloads rejected whole when the new config would fail after parsing."""

import http.client
import json
import os
import signal
import time

import pytest

from conftest import start_proxy, start_sim, wait_for
from proxy.config import build
from proxy.process.shm import SharedCounters
from proxy.routing.load import IN_BAND, SCRAPED, Report
from proxy.routing.prober import _stale
from proxy.routing.router import Router
from test_supervisor import _open_streams, live_pids, workers

TOKEN = "test-admin-token-0123456789"
BODY = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})


@pytest.fixture
def two_sims():
    ss = [start_sim("--name", "a"), start_sim("--name", "b")]
    yield ss
    for s in ss:
        s.stop()


def served_by(port, n=16):
    """The backends that served ``n`` requests, each on a new connection (so both workers see some)."""
    out = set()
    for _ in range(n):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("POST", "/v1/chat/completions", BODY, {"content-type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200
        out.add(resp.getheader("x-sim-backend"))
        conn.close()
    return out


def admin_post(proxy, path):
    conn = http.client.HTTPConnection("127.0.0.1", proxy.admin_port, timeout=5)
    conn.request("POST", path, b"", {"content-length": "0", "authorization": f"Bearer {TOKEN}"})
    resp = conn.getresponse()
    resp.read()
    return resp.status


def test_a_drain_holds_across_a_worker_restart_and_a_reload(two_sims, tmp_path):
    a, b = two_sims
    path = tmp_path / "fleet.yaml"
    path.write_text(f"backends: [{a.url}, {b.url}]\nworkers: 2\nbalance: {{policy: round_robin}}\n")
    proxy = start_proxy([], "--config", str(path), env={"FLEETPROXY_ADMIN_TOKEN": TOKEN})
    try:
        assert wait_for(lambda: len(live_pids(proxy)) == 2, timeout=10)
        assert served_by(proxy.port) == {"a", "b"}
        assert admin_post(proxy, f"/admin/backends/{a.url.split('//')[1]}/drain") == 200
        assert served_by(proxy.port) == {"b"}
        victim = live_pids(proxy)[0]
        os.kill(victim, signal.SIGKILL)
        assert wait_for(lambda: len(live_pids(proxy)) == 2 and victim not in live_pids(proxy), timeout=10)
        assert served_by(proxy.port) == {"b"}, "a respawned worker forgot the drain"
        proxy.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: workers(proxy)["generation"] == 2 and len(live_pids(proxy)) == 2, timeout=15)
        assert served_by(proxy.port) == {"b"}, "the new generation forgot the drain"
        assert admin_post(proxy, f"/admin/backends/{a.url.split('//')[1]}/undrain") == 200
        assert served_by(proxy.port) == {"a", "b"}
    finally:
        proxy.stop()


def _two_workers(counters):
    """(config, router of worker 0, router of worker 1): two workers' routers over two
    backends, sharing ``counters`` (a SharedCounters(2, 2))."""
    cfg = build({"backends": ["http://127.0.0.1:1", "http://127.0.0.1:2"]})
    one, two = Router(cfg, None, table=False), Router(cfg, None, table=False)
    one.attach_counters(counters, 0)
    two.attach_counters(counters, 1)
    return cfg, one, two


def test_an_ejection_by_one_worker_is_adopted_by_the_others():
    counters = SharedCounters(2, 2)
    try:
        cfg, one, two = _two_workers(counters)
        now = time.monotonic()
        for _ in range(cfg.outlier.consecutive_failures):
            one.endpoints[0].failed(now)
        assert not one.endpoints[0].eligible
        assert two.endpoints[0].eligible  # until its next health round
        two.endpoints[0].sync_health(time.monotonic())
        assert not two.endpoints[0].eligible and two.endpoints[1].eligible
        # A worker that attaches later (a respawn) starts with the ejection.
        three = Router(cfg, None, table=False)
        three.attach_counters(counters, 1)
        assert not three.endpoints[0].eligible
    finally:
        counters.close()


def test_scaling_down_then_up_never_gives_a_draining_workers_slot_to_a_new_worker(two_sims):
    a, _ = two_sims
    proxy = start_proxy([a], "--workers", "2", env={"FLEETPROXY_ADMIN_TOKEN": TOKEN})
    socks = []
    try:
        assert wait_for(lambda: len(live_pids(proxy)) == 2, timeout=10)
        socks = _open_streams(proxy.port, 12, itl="0.1", tokens=30)  # ~3 s each, on both workers
        time.sleep(0.3)
        proxy.proc.send_signal(signal.SIGTTOU)
        assert wait_for(lambda: any(w["draining"] for w in workers(proxy)["workers"]), timeout=5)
        proxy.proc.send_signal(signal.SIGTTIN)
        assert wait_for(lambda: len(live_pids(proxy)) == 2, timeout=10)
        state = workers(proxy)["workers"]
        slots = [w["slot"] for w in state if w["generation"] == 1]
        assert len(slots) == len(set(slots)), state  # a draining worker's slot is its own
        for s in socks:  # each stream to its end (the connections stay open: keep-alive)
            s.settimeout(10)
            got = b""
            while not got.endswith(b"0\r\n\r\n"):
                data = s.recv(65536)
                assert data, got[-200:]
                got += data
        # Every count went back to zero: no worker decremented another's row.
        assert wait_for(lambda: proxy.admin("/admin/backends")[1]["backends"][0]["in_flight"] == 0, timeout=5)
        views = [w["in_flight_all"] for w in proxy.admin("/admin/backends")[1]["backends"][0]["workers"]]
        assert views and all(v == 0 for v in views), views
    finally:
        for s in socks:
            s.close()
        proxy.stop()


@pytest.mark.parametrize("extra, named", [
    ("backends: [{url: 'https://127.0.0.1:1', ca_file: /nonexistent/ca.pem}]\n", "ca_file"),
    ("workers: 300\n", "workers"),
])
def test_a_reload_that_would_fail_after_parsing_is_rejected_whole(two_sims, tmp_path, extra, named):
    a, _ = two_sims
    path = tmp_path / "fleet.yaml"
    path.write_text(f"backends: [{a.url}]\nworkers: 2\n")
    proxy = start_proxy([], "--config", str(path))
    try:
        assert wait_for(lambda: len(live_pids(proxy)) == 2, timeout=10)
        before = live_pids(proxy)
        text = f"backends: [{a.url}]\nworkers: 2\n"
        text = (extra + "workers: 2\n") if extra.startswith("backends") else text.replace("workers: 2\n", extra)
        path.write_text(text)
        proxy.proc.send_signal(signal.SIGHUP)
        time.sleep(1.5)
        assert live_pids(proxy) == before and workers(proxy)["generation"] == 1
        assert served_by(proxy.port, 2) == {"a"}
    finally:
        proxy.stop()
    log = proxy.proc.stderr.read()
    # Checked before any worker is replaced, and the error names the file and the field.
    assert b"reload rejected, old workers keep serving: " + str(path).encode() in log and named.encode() in log


def test_the_first_request_after_an_idle_spell_sees_a_drain_decided_meanwhile():
    # A worker whose health round sleeps through an idle spell (health.no_traffic_interval)
    # adopts what the others decided when the next request wakes it, before that request is
    # placed: a drained backend gets none of it. Both ways round, so no policy's first choice
    # passes by chance.
    counters = SharedCounters(2, 2)
    try:
        _, one, two = _two_workers(counters)
        body = b'{"model":"m","prompt":"hi"}'
        for drained, left in ((0, 1), (1, 0)):
            one.endpoints[drained].set_drained(True)
            woken = []
            two.on_request = [lambda: woken.append(True)]  # a paced round asleep (periodic.Pace)
            selection = two.select({}, body)
            assert selection.endpoint is two.endpoints[left] and woken and two.on_request is None
            selection.release()
            one.endpoints[drained].set_drained(False)
            two.endpoints[drained].sync_health(time.monotonic())
    finally:
        counters.close()


def test_an_in_band_report_keeps_the_last_scrapes_running_count_until_max_age():
    # vLLM's in-band header has waiting and KV usage, not running: a report from it keeps the
    # scraped count, with that count's own time, so /metrics' gauge of it does not come and go
    # with each kind of report; once older than load.max_age the count is let go.
    counters = SharedCounters(2, 1)
    try:
        counters.set_slots_in_use(2)
        cfg = build({"backends": ["http://127.0.0.1:1"], "load": {"max_age": 5.0}})
        one, two = Router(cfg, None, table=False), Router(cfg, None, table=False)
        one.attach_counters(counters, 0)
        two.attach_counters(counters, 1)
        mine, other = one.endpoints[0], two.endpoints[0]
        mine.observe(0.0, 3.0, 0.5, SCRAPED, 100.0)
        other.observe(1.0, None, 0.6, IN_BAND, 101.0)  # another worker's in-band report, newer
        for endpoint in (mine, other):
            r = endpoint.current_report()
            assert (r.waiting, r.running, r.running_at, r.source) == (1.0, 3.0, 100.0, IN_BAND)
        mine.observe(2.0, None, 0.7, IN_BAND, 104.9)  # in band after in band: still the scrape's
        assert (other.current_report().running, other.current_report().running_at) == (3.0, 100.0)
        other.observe(0.0, None, 0.7, IN_BAND, 105.0)  # max_age after the scrape: let go
        report = mine.current_report()
        assert report.running is None and report.running_at is None
        assert report.state(105.0)["running_age_s"] is None
        mine.observe(0.0, 2.0, 0.7, SCRAPED, 105.5)  # a scrape brings it back
        assert other.current_report().state(106.0)["running_age_s"] == 0.5
    finally:
        counters.close()


def test_a_scrape_is_due_for_an_old_running_count_while_in_band_reports_are_fresh():
    fresh = Report(0.0, 3.0, 0.5, 100.0, IN_BAND, 99.0)
    assert not _stale(fresh, 100.1, 0.5, 5.0)
    assert _stale(fresh, 101.5, 0.5, 5.0)  # the report itself is older than the interval
    assert _stale(Report(0.0, 3.0, 0.5, 101.4, IN_BAND, 99.0), 101.5, 0.5, 5.0)  # its running 2.5 s old
    assert _stale(Report(0.0, None, 0.5, 101.4, IN_BAND, None), 101.5, 0.5, 5.0)  # none yet
    assert _stale(None, 0.0, 0.5, 5.0)
