"""Request metrics (issue 14): the supervisor's /metrics over real workers, parsed by
prometheus_client's own text parser; counters that survive a reload and a worker's death."""

import contextlib
import http.client
import json
import os
import signal
import socket
import threading
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import ScriptedBackend, start_proxy, start_sim, wait_for

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


def post(port, body, path="/v1/chat/completions"):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST", path, json.dumps(body), {"content-type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, data


def scrape(proxy):
    """{family name: [(sample name, labels, value)]}, as prometheus_client parses it."""
    conn = http.client.HTTPConnection("127.0.0.1", proxy.admin_port, timeout=10)
    conn.request("GET", "/metrics")
    resp = conn.getresponse()
    assert resp.getheader("content-type").startswith("text/plain")
    text = resp.read().decode()
    conn.close()
    return {f.name: [(s.name, s.labels, s.value) for s in f.samples] for f in text_string_to_metric_families(text)}


def total(families, family, sample=None, **labels):
    sample = sample or family
    return sum(
        v for name, lab, v in families.get(family, ())
        if name == sample and all(lab.get(k) == want for k, want in labels.items())
    )


def _two_at_once(port, gap=0.0):
    """The statuses of two chat requests sent together (the second ``gap`` s after the first)."""
    statuses = []
    threads = [threading.Thread(target=lambda: statuses.append(post(port, CHAT)[0])) for _ in range(2)]
    for thread in threads:
        thread.start()
        time.sleep(gap)
    for thread in threads:
        thread.join(10)
    return statuses


def _proxy_of(tmp_path, backend, text):
    """One worker in front of ``backend`` with the config ``text`` besides."""
    config = tmp_path / "fp.yaml"
    config.write_text(f"backends: ['{backend.url}']\n{text}\n")
    return start_proxy([], "--config", str(config), "--workers", "1")


@contextlib.contextmanager
def _served(backend, proxy=None):
    """``proxy`` (by default one worker in front of ``backend``, a ScriptedBackend), stopped
    with the backend after the block."""
    proxy = proxy or start_proxy([backend.url], "--workers", "1")
    try:
        yield proxy
    finally:
        proxy.stop()
        backend.close()


@pytest.fixture(scope="module")
def group():
    sim = start_sim("--ttft", "0.02", "--itl", "0.002")
    proxy = start_proxy([sim], "--workers", "2")
    yield sim, proxy
    proxy.stop()
    sim.stop()


def test_requests_tokens_and_latency_families(group):
    sim, proxy = group
    before = scrape(proxy)
    streamed = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    for _ in range(3):
        assert post(proxy.port, CHAT)[0] == 200
        status, body = post(proxy.port, streamed)
        assert status == 200 and body.endswith(b"data: [DONE]\n\n")
    after = scrape(proxy)
    ok = dict(model="tiny", tenant="default", code="2xx", outcome="ok")
    assert total(after, "fleetproxy_requests", "fleetproxy_requests_total", **ok) - total(
        before, "fleetproxy_requests", "fleetproxy_requests_total", **ok) == 6
    # The simulator answers max_tokens tokens to each: 6 x 5, from bodies and final usage events.
    completion = dict(model="tiny", kind="completion")
    assert total(after, "fleetproxy_tokens", "fleetproxy_tokens_total", **completion) - total(
        before, "fleetproxy_tokens", "fleetproxy_tokens_total", **completion) == 30
    assert total(after, "fleetproxy_tokens", "fleetproxy_tokens_total", model="tiny", kind="prompt") > 0
    for family, added in (
        ("fleetproxy_time_to_first_token_seconds", 6),
        ("fleetproxy_request_duration_seconds", 6),
        ("fleetproxy_proxy_response_overhead_seconds", 6),
        ("fleetproxy_inter_token_latency_seconds", 3),  # streams only
    ):
        count = family + "_count"
        assert total(after, family, count, model="tiny") - total(before, family, count, model="tiny") == added, family
        buckets = [v for name, lab, v in after[family] if name == family + "_bucket" and lab["model"] == "tiny"]
        assert buckets == sorted(buckets) and buckets[-1] == total(after, family, count, model="tiny")
    assert total(after, "fleetproxy_open_connections") >= 0
    assert "fleetproxy_model_demand" in after and "fleetproxy_pool_refused" in after


def test_the_gauges_follow_open_streams_and_their_prompt_tokens(group):
    # What a walk writes once a second in each worker, summed by the supervisor: the streams
    # being relayed, the prompt tokens admitted and not finished, the pools' connections; and
    # the response bytes, counted as each request ends (a stream its client left included).
    from test_supervisor import _open_streams

    sim, proxy = group

    def gauges():
        families = scrape(proxy)
        return (total(families, "fleetproxy_open_streams"),
                total(families, "fleetproxy_model_tokens_in_flight", model="tiny"),
                total(families, "fleetproxy_pool_connections"), total(families, "fleetproxy_pool_waiting"))

    before = total(scrape(proxy), "fleetproxy_response_bytes", "fleetproxy_response_bytes_total", model="tiny")
    socks = _open_streams(proxy.port, 5)  # a token every 0.2 s: open for 8 s
    try:
        assert wait_for(lambda: gauges()[0] == 5, timeout=5), gauges()
        streams, tokens, connections, waiting = gauges()
        # The simulator's bodies are ~100 bytes: ~25 prompt tokens each, estimated at admission.
        assert 5 * 10 <= tokens <= 5 * 40 and connections >= 5 and waiting == 0, gauges()
    finally:
        for sock in socks:
            sock.close()
    assert wait_for(lambda: gauges()[:2] == (0, 0), timeout=5), gauges()
    after = total(scrape(proxy), "fleetproxy_response_bytes", "fleetproxy_response_bytes_total", model="tiny")
    assert after > before


def test_the_proxys_own_time_is_read_below_a_millisecond(group):
    # Its buckets start at 20 us: a clock that counts whole milliseconds (uvloop's loop.time())
    # would put each observation at 0 or ~1 ms, none between. Read to the microsecond, the
    # proxy's own time on loopback falls in between.
    sim, proxy = group
    for _ in range(20):
        assert post(proxy.port, CHAT)[0] == 200
    families = scrape(proxy)
    for family in ("fleetproxy_proxy_request_overhead_seconds", "fleetproxy_proxy_response_overhead_seconds"):
        le = {float(lab["le"]): v for name, lab, v in families[family]
              if name == family + "_bucket" and lab["model"] == "tiny"}
        assert le[0.0005] - le[0.00002] > 0, (family, le)  # some between 20 us and 0.5 ms


def test_outcomes_upstream_error_and_refused():
    def close_at_once(request, conn):
        conn.close()

    backend = ScriptedBackend(close_at_once)
    with _served(backend) as proxy:
        status, _ = post(proxy.port, CHAT)
        assert status == 502
        families = scrape(proxy)
        assert total(families, "fleetproxy_requests", "fleetproxy_requests_total",
                     model="tiny", code="5xx", outcome="upstream_error") == 1


def test_a_backend_that_never_answers_is_a_timeout_and_a_full_pool_a_refusal(tmp_path):
    def silent(request, conn):
        time.sleep(1.5)

    backend = ScriptedBackend(silent)
    proxy = _proxy_of(tmp_path, backend, "timeouts: {first_byte: 0.4, pool_wait: 0.1}\n"
                                         "connection_pool: {max_connections: 1}")
    with _served(backend, proxy):
        # The first holds the one connection when the second comes (and waits 0.1 s for it).
        statuses = _two_at_once(proxy.port, gap=0.1)
        assert sorted(statuses) == [503, 504], statuses
        families = scrape(proxy)
        for outcome, code in (("timeout", "5xx"), ("refused", "5xx")):
            assert total(families, "fleetproxy_requests", "fleetproxy_requests_total",
                         model="tiny", code=code, outcome=outcome) == 1, outcome


def test_tokens_are_read_from_the_body_not_the_head_that_came_with_it():
    # A whole response in one read goes to the client's head's bytes as it came (relay.py:
    # body_at), and the usage is looked for from the read's end: not past the body's start.
    # Here the head carries a field that looks like a usage object; only the second body has one.
    bodies = [b'{"id":"a","model":"tiny","choices":[]}',
              b'{"id":"b","model":"tiny","choices":[],"usage":{"prompt_tokens":3,"total_tokens":5,"completion_tokens":2}}']

    def answer(request, conn):
        body = bodies.pop(0)
        conn.sendall(b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-echo: "usage":{"prompt_tokens":70,'
                     b'"total_tokens":90,"completion_tokens":20}\r\ncontent-length: %d\r\n\r\n%s' % (len(body), body))

    backend = ScriptedBackend(answer)
    with _served(backend) as proxy:
        assert post(proxy.port, CHAT)[0] == 200
        families = scrape(proxy)
        assert total(families, "fleetproxy_tokens", "fleetproxy_tokens_total", kind="completion") == 0
        assert total(families, "fleetproxy_tokens", "fleetproxy_tokens_total", kind="prompt") == 0
        assert post(proxy.port, CHAT)[0] == 200
        families = scrape(proxy)
        assert total(families, "fleetproxy_tokens", "fleetproxy_tokens_total", kind="completion") == 2
        assert total(families, "fleetproxy_tokens", "fleetproxy_tokens_total", kind="prompt") == 3


_STREAM_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
_EVENTS = [  # vLLM's shape: a role event, a token, then an engine error mid-stream and its [DONE]
    b'data: {"id":"c","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n',
    b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"a"},"finish_reason":null}]}\n\n',
    b'data: {"error": {"object": "error", "message": "engine died", "type": "InternalServerError", "code": 500}}\n\n',
    b"data: [DONE]\n\n",
]


def _stream_of(events, end=b"0\r\n\r\n"):
    """A backend answering with ``events``, one chunk a write, then ``end`` (b"": it closes)."""
    def answer(request, conn):
        conn.sendall(_STREAM_HEAD)
        for event in events:
            conn.sendall(b"%x\r\n%s\r\n" % (len(event), event))
        if end:
            conn.sendall(end)
        else:
            conn.close()

    return ScriptedBackend(answer)


@pytest.mark.parametrize("asks_usage", [False, True])
def test_a_backends_error_event_mid_stream_is_counted(asks_usage):
    # Counted whether or not the proxy watches the stream for its finish event (it does when
    # it added include_usage, which the client did not ask for): the stream ends with no
    # finish event, so the reads that held the error event are the ones kept for the count.
    backend = _stream_of(_EVENTS)
    with _served(backend) as proxy:
        body = {**CHAT, "stream": True, **({"stream_options": {"include_usage": True}} if asks_usage else {})}
        status, data = post(proxy.port, body)
        assert status == 200 and b"engine died" in data and data.endswith(b"data: [DONE]\n\n")
        assert b"include_usage" in backend.requests[-1]  # added by the proxy, or asked by the client
        families = scrape(proxy)
        assert total(families, "fleetproxy_stream_errors", "fleetproxy_stream_errors_total", model="tiny") == 1
        assert total(families, "fleetproxy_requests", "fleetproxy_requests_total", outcome="ok") == 1


def test_the_proxys_own_error_event_on_a_broken_stream_is_counted():
    # The backend closes mid-stream: the client reads the proxy's in-band error event.
    backend = _stream_of(_EVENTS[:2], end=b"")
    with _served(backend) as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
            payload = json.dumps({**CHAT, "stream": True}).encode()
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                         b"content-length: %d\r\n\r\n%s" % (len(payload), payload))
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
        assert b'data: {"error"' in received and not received.endswith(b"0\r\n\r\n")
        families = scrape(proxy)
        assert total(families, "fleetproxy_stream_errors", "fleetproxy_stream_errors_total", model="tiny") == 1
        assert total(families, "fleetproxy_requests", "fleetproxy_requests_total", outcome="upstream_error") == 1


def test_a_fresh_connection_and_a_wait_for_a_pooled_one_are_timed(tmp_path):
    # One upstream connection allowed: of two requests at once, one opens it (connect time)
    # and the other waits for it in the proxy (queue time).
    sim = start_sim("--ttft", "0.3")
    proxy = _proxy_of(tmp_path, sim, "connection_pool: {max_connections: 1}")
    try:
        assert _two_at_once(proxy.port) == [200, 200]
        families = scrape(proxy)
        for family, least in (("fleetproxy_upstream_connect_seconds", 0.0), ("fleetproxy_queue_seconds", 0.1)):
            count = total(families, family, family + "_count", model="tiny")
            assert count == 1, (family, count)
            assert total(families, family, family + "_sum", model="tiny") >= least, family  # behind a 0.3 s answer
    finally:
        proxy.stop()
        sim.stop()


def test_client_abort_is_counted(group):
    sim, proxy = group
    slow = {**CHAT, "max_tokens": 2000, "stream": True}
    before = total(scrape(proxy), "fleetproxy_requests", "fleetproxy_requests_total", outcome="client_abort")
    sock = socket.create_connection(("127.0.0.1", proxy.port))
    body = json.dumps(slow).encode()
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                 b"content-length: %d\r\n\r\n%s" % (len(body), body))
    assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    sock.close()
    assert wait_for(lambda: total(scrape(proxy), "fleetproxy_requests", "fleetproxy_requests_total",
                                  outcome="client_abort") == before + 1, timeout=5)


def workers(proxy):
    return proxy.admin("/admin/workers")[1]


def test_counters_survive_reload_and_worker_restart():
    sim = start_sim()
    proxy = start_proxy([sim], "--workers", "2")
    try:
        def ok_requests():
            return total(scrape(proxy), "fleetproxy_requests", "fleetproxy_requests_total", outcome="ok")

        for _ in range(4):
            assert post(proxy.port, CHAT)[0] == 200
        assert ok_requests() == 4
        proxy.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: workers(proxy)["generation"] == 2 and all(
            w["generation"] == 2 for w in workers(proxy)["workers"]), timeout=20)
        assert ok_requests() == 4  # the old generation's workers exited; their counts stayed
        for _ in range(3):
            assert post(proxy.port, CHAT)[0] == 200
        assert ok_requests() == 7
        victim = workers(proxy)["workers"][0]["pid"]
        os.kill(victim, signal.SIGKILL)
        assert wait_for(lambda: len(workers(proxy)["workers"]) == 2 and victim not in
                        [w["pid"] for w in workers(proxy)["workers"]], timeout=20)
        assert ok_requests() == 7
        assert total(scrape(proxy), "fleetproxy_worker_restarts", "fleetproxy_worker_restarts_total") == 1
        tokens = total(scrape(proxy), "fleetproxy_tokens", "fleetproxy_tokens_total", kind="completion")
        assert tokens == 7 * CHAT["max_tokens"]
    finally:
        proxy.stop()
        sim.stop()


def test_label_sets_beyond_max_series_go_to_overflow(tmp_path):
    sim = start_sim()
    config = tmp_path / "fp.yaml"
    config.write_text(f"backends: [{{url: '{sim.url}'}}]\nobserve: {{max_series: 8}}\n")
    proxy = start_proxy([], "--config", str(config))
    try:
        # Unknown models get vLLM's 404 from the simulator: 12 label sets, 8 series (one is
        # the overflow series, one the pool's).
        for i in range(12):
            post(proxy.port, {**CHAT, "model": f"m{i}"})
        families = scrape(proxy)
        assert total(families, "fleetproxy_requests", "fleetproxy_requests_total") == 12
        assert total(families, "fleetproxy_requests", "fleetproxy_requests_total", model="_other") == 6
        assert total(families, "fleetproxy_metrics_overflow", "fleetproxy_metrics_overflow_total") == 6
    finally:
        proxy.stop()
        sim.stop()


def test_grafana_dashboard_names_only_exposed_families(group):
    """Every metric the dashboard queries is one /metrics exposes (a renamed family fails here)."""
    import re

    sim, proxy = group
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "deploy", "grafana", "fleetproxy.json")) as f:
        dashboard = json.load(f)
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    names = {n for e in exprs for n in re.findall(r"\b(fleetproxy_[a-z_]+)", e)}
    families = scrape(proxy)
    samples = {name for fam in families.values() for name, _, _ in fam}
    exposed = samples | {f + "_bucket" for f in families}
    assert names and names <= exposed, names - exposed


def test_an_observation_lands_in_the_bucket_prometheus_means():
    # The compiled recorder finds the bucket by its own C search: a bound is its bucket's
    # inclusive upper end (le), as bisect_left puts it, for every bound and its neighbours.
    import os
    from bisect import bisect_left

    from proxy.observe.metrics import Recorder
    from proxy.observe.table import HIST_AT, HISTOGRAMS, MetricsTable

    table = MetricsTable(1, 4)
    try:
        recorder = Recorder(table, table.claim_row(os.getpid()))
        base = recorder.series("tiny", "b", "t")
        cells = table.cells
        for hist, (_, _, bounds) in enumerate(HISTOGRAMS):
            at = base + HIST_AT[hist]
            for bound in bounds:
                for seconds in (0.0, bound * 0.999999, bound, bound * 1.000001, bound * 10, 1e9):
                    before = list(cells[at:at + len(bounds) + 2])
                    recorder.observe(base, hist, seconds)
                    after = list(cells[at:at + len(bounds) + 2])
                    want = [0] * (len(bounds) + 1)
                    want[bisect_left(bounds, seconds)] = 1
                    assert [b - a for a, b in zip(before, after)][:-1] == want, (bounds, seconds)
                    assert after[-1] - before[-1] == int(seconds * 1e6)
    finally:
        table.close()


def test_a_new_timing_is_one_made_by_its_constructor():
    # The observer makes each request's Timing by allocation where compiled (new_timing): it
    # must be, field for field, what Timing(t0) is.
    from proxy.observe.metrics import Timing, new_timing

    made, built = new_timing(12.5), Timing(12.5)
    assert type(made) is Timing
    assert {k: getattr(made, k) for k in Timing.__slots__} == {k: getattr(built, k) for k in Timing.__slots__}
    assert made.t0 == 12.5 and made.tenant == "default"


def test_now_is_the_read_callbacks_time_while_held_and_the_clock_outside():
    """metrics.hold/now/release: one clock read serves a read callback's stamps (the reader's,
    the router's, the pool's, a Timing's start); outside one, ``now`` reads the clock."""
    from proxy.observe import metrics

    before = metrics.now()
    time.sleep(0.002)
    metrics.hold()
    try:
        held = metrics.now()
        time.sleep(0.002)
        assert metrics.now() == held > before  # the same reading for the whole callback
        assert metrics.clock() > held  # the work's own times still read the clock
    finally:
        metrics.release()
    time.sleep(0.002)
    assert metrics.now() > held + 0.001


def test_a_read_callback_reads_the_clock_only_when_asked():
    """hold() reads no clock: a token event's callback asks for no time and pays for none. The
    first ``now()`` in the callback reads it, and the rest of the callback shares that reading."""
    from proxy.observe import metrics

    metrics.hold()
    try:
        start = metrics.clock()
        time.sleep(0.003)
        first = metrics.now()
        assert first > start + 0.002  # read when asked, not when the callback began
        time.sleep(0.002)
        assert metrics.now() == first
    finally:
        metrics.release()


def test_demand_counts_the_fresh_reports_only():
    # waiting + running as each backend last reported them; a report older than load.max_age
    # (a backend that went down or away) counts nothing, as routing ignores it.
    from proxy.config import build
    from proxy.observe.exposition import demand_rows
    from proxy.routing.load import IN_BAND, SCRAPED, Report

    cfg = build({"backends": ["http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3"],
                 "load": {"max_age": 5.0}})
    a, b, c = (backend.label for backend in cfg.backends)
    reports = {a: Report(2.0, 3.0, 0.5, 99.0, SCRAPED), b: Report(1.0, None, 0.5, 99.5, IN_BAND),
               c: Report(7.0, 9.0, 0.9, 94.0, SCRAPED)}
    assert demand_rows(cfg, reports, {a: 4}, 100.0) == [("*", "default", 6.0, 4)]
    assert demand_rows(cfg, reports, {}, 100.0 + 5.5) == [("*", "default", 0.0, 0)]

