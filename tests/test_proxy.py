"""The data path end to end: real clients -> fleetproxy -> real simulators, on loopback."""

import concurrent.futures
import http.client
import json
import re
import socket
import time

import h11
import openai
import pytest

from conftest import metric, metrics, raw_exchange, start_proxy, wait_for

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hello fleet"}], "max_tokens": 12}


def same_but_time(raw):
    """The bytes with the one field that legitimately differs between two runs (the second
    in which a chunk was created) blanked: the rest must match byte for byte."""
    return re.sub(rb'"created":\d+', b'"created":0', raw)


def client(port, **kw):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, **kw)


def post(port, path, body, headers=None, timeout=10):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn.request("POST", path, data, {"content-type": "application/json", **(headers or {})})
    resp = conn.getresponse()
    out = resp.status, dict(resp.getheaders()), resp.read()
    conn.close()
    return out


# -- correctness through the proxy --------------------------------------------------------


def test_openai_nonstreaming_matches_direct(sim, proxy):
    direct = client(sim.port).chat.completions.create(**CHAT)
    via = client(proxy.port).chat.completions.create(**CHAT)
    assert via.choices[0].message.content == direct.choices[0].message.content
    assert via.usage.completion_tokens == 12


def test_openai_streaming_matches_direct(sim, proxy):
    def tokens(port):
        stream = client(port).chat.completions.create(
            **CHAT, stream=True, stream_options={"include_usage": True}
        )
        parts, usage = [], None
        for event in stream:
            if event.choices:
                parts.append(event.choices[0].delta.content or "")
            if event.usage:
                usage = event.usage
        return parts, usage

    direct, direct_usage = tokens(sim.port)
    via, via_usage = tokens(proxy.port)
    assert via == direct
    assert len([p for p in via if p]) == 12
    assert via_usage.completion_tokens == direct_usage.completion_tokens == 12


def test_stream_bytes_identical_to_direct(sim, proxy):
    """Zero-copy: the body bytes are exactly what the backend sent (no re-chunking)."""
    body = json.dumps({**CHAT, "stream": True}).encode()
    req = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    direct = raw_exchange(sim.port, req).partition(b"\r\n\r\n")[2]
    via = raw_exchange(proxy.port, req).partition(b"\r\n\r\n")[2]
    assert same_but_time(via) == same_but_time(direct)
    assert via.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")


def test_unknown_fields_forwarded_byte_for_byte():
    from conftest import ScriptedBackend

    ok = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
    backend = ScriptedBackend(lambda req, sock: sock.sendall(ok))
    proxy = start_proxy([backend.url])
    try:
        body = b'{"model":"tiny",  "top_k": 7, "guided_json": {"a": [1,2]}, "priority": -1, "x":"\xc3\xa9"}'
        status, headers, _ = post(
            proxy.port,
            "/v1/chat/completions?trace=1",
            body,
            {
                "Connection": "keep-alive, x-secret-hop",
                "x-secret-hop": "drop me",
                "Keep-Alive": "timeout=5",
                "TE": "trailers",
                "Proxy-Authorization": "Basic Zm9v",
                "X-Forwarded-For": "10.0.0.1",
                "X-Request-Id": "req-abc",
                "X-Custom": "kept",
            },
        )
        assert status == 200
        assert headers["x-request-id"] == "req-abc"
        head, _, sent_body = backend.requests[0].partition(b"\r\n\r\n")
        assert sent_body == body
        lines = head.split(b"\r\n")
        assert lines[0] == b"POST /v1/chat/completions?trace=1 HTTP/1.1"
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(b": ")
            assert name.lower() not in fields, f"duplicate {name!r}"
            fields[name.lower()] = value
        assert fields[b"host"] == f"127.0.0.1:{backend.port}".encode()
        assert fields[b"content-length"] == str(len(body)).encode()
        assert fields[b"x-forwarded-for"] == b"127.0.0.1"  # an untrusted client's own claim is dropped
        assert fields[b"x-forwarded-proto"] == b"http"
        assert fields[b"x-request-id"] == b"req-abc"
        assert fields[b"x-custom"] == b"kept"
        for hop in (b"connection", b"x-secret-hop", b"keep-alive", b"te", b"proxy-authorization"):
            assert hop not in fields
    finally:
        proxy.stop()
        backend.close()


def test_request_id_generated_and_echoed(proxy):
    status, headers, _ = post(proxy.port, "/v1/chat/completions", CHAT)
    assert status == 200 and headers.get("x-request-id")
    _, headers2, _ = post(proxy.port, "/v1/chat/completions", CHAT)
    assert headers2["x-request-id"] != headers["x-request-id"]


def test_chunked_request_body_is_reframed(sim, proxy):
    body = json.dumps(CHAT).encode()
    req = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: application/json\r\nConnection: close\r\n\r\n"
        + b"%x\r\n%s\r\n" % (10, body[:10])
        + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body) - 10, body[10:])
    )
    resp = raw_exchange(proxy.port, req)
    assert resp.startswith(b"HTTP/1.1 200 ")
    assert b'"completion_tokens":12' in resp


def test_other_paths_pass_through(proxy):
    for method, path in (("GET", "/v1/models"), ("GET", "/version"), ("POST", "/tokenize")):
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
        body = json.dumps({"model": "tiny", "prompt": "a b c"}) if method == "POST" else None
        conn.request(method, path, body, {"content-type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200, path
        resp.read()
        conn.close()


def test_health_answered_by_proxy(proxy):
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    conn.request("GET", "/health")
    resp = conn.getresponse()
    assert resp.status == 200
    assert "x-sim-backend" not in dict(resp.getheaders())  # not forwarded
    status, body = proxy.admin("/healthz")
    assert status == 200 and body["status"] == "ok"
    assert proxy.admin("/readyz")[0] == 200


def test_single_process_admin_serves_metrics(sim):
    """`--single-process` and the demo have no supervisor: their own admin port serves the same
    /metrics families the supervisor's does."""
    proxy = start_proxy([sim], "--single-process")
    try:
        status, _, _ = post(proxy.port, "/v1/chat/completions", {**CHAT, "max_tokens": 2})
        assert status == 200
        label = sim.url.split("//")[1]
        values = metrics(f"http://127.0.0.1:{proxy.admin_port}")
        assert values[f'fleetproxy_backend_requests_total{{backend="{label}"}}'] == 1
        assert values[f'fleetproxy_backend_in_flight{{backend="{label}"}}'] == 0
        assert values[f'fleetproxy_backend_healthy{{backend="{label}"}}'] == 1
        assert values["fleetproxy_workers"] == 1
    finally:
        proxy.stop()


def test_health_503_when_no_backend_reachable():
    dead = f"http://127.0.0.1:{_closed_port()}"
    proxy = start_proxy([dead])
    try:
        def health():
            conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
            conn.request("GET", "/health")
            resp = conn.getresponse()
            answer = resp.status, resp.getheader("content-type"), resp.read()
            conn.close()
            return answer

        assert wait_for(lambda: health()[0] == 503, timeout=5)
        _, content_type, body = health()
        # The same OpenAI error shape as every other error the data port answers.
        assert content_type == "application/json"
        assert json.loads(body) == {
            "error": {"message": "no healthy backend", "type": "service_unavailable", "param": None, "code": 503}
        }
        assert proxy.admin("/readyz")[0] == 503
    finally:
        proxy.stop()


# -- volume and reuse ----------------------------------------------------------------------


def test_1000_sequential_requests_reuse_one_upstream_connection(sim, proxy):
    opened_before = metric(sim.url, "sim:connections_total")
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    body = json.dumps({**CHAT, "max_tokens": 2})
    for _ in range(1000):
        conn.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200
        resp.read()
    conn.close()
    # One client connection, sequential: the pool keeps reusing (at most) one upstream.
    assert metric(sim.url, "sim:connections_total") - opened_before <= 2


def test_200_concurrent_requests(sim, proxy):
    def one(i):
        body = {**CHAT, "max_tokens": 3, "stream": i % 2 == 0}
        status, _, data = post(proxy.port, "/v1/chat/completions", body)
        return status, data

    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        results = list(pool.map(one, range(200)))
    assert all(status == 200 for status, _ in results)
    assert all(data.endswith(b"data: [DONE]\n\n") for i, (_, data) in enumerate(results) if i % 2 == 0)
    _, state = proxy.admin("/admin/backends")
    backend = state["backends"][0]
    assert backend["in_flight"] == 0
    assert sum(w["connection_pool"]["open"] for w in backend["workers"]) <= 64


# -- client disconnects abort the upstream -------------------------------------------------


def _disconnect_after(port, body, headers, wait_for_bytes):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    data = json.dumps(body).encode()
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode()
    s.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + extra
        + b"Content-Length: %d\r\n\r\n%s" % (len(data), data)
    )
    if wait_for_bytes:
        got = b""
        while b"data:" not in got:
            got += s.recv(4096)
    else:
        time.sleep(0.3)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.close()


@pytest.mark.parametrize(
    "phase,body,headers,wait_bytes",
    [
        ("mid-stream", {**CHAT, "stream": True, "max_tokens": 200}, {"x-sim-itl": "0.05"}, True),
        ("before-first-token", {**CHAT, "stream": True}, {"x-sim-ttft": "3"}, False),
        ("non-streaming", {**CHAT, "max_tokens": 100}, {"x-sim-itl": "0.05"}, False),
    ],
)
def test_client_disconnect_aborts_upstream(sim, proxy, phase, body, headers, wait_bytes):
    before = metric(sim.url, "sim:requests_aborted_total")
    _disconnect_after(proxy.port, body, headers, wait_bytes)
    assert wait_for(lambda: metric(sim.url, "sim:requests_aborted_total") >= before + 1, timeout=1.0), phase
    assert wait_for(lambda: metric(sim.url, "vllm:num_requests_running") == 0, timeout=1.0)
    assert wait_for(lambda: proxy.admin("/admin/backends")[1]["backends"][0]["in_flight"] == 0)


# -- backend failures ------------------------------------------------------------------------


def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_backend_refused_gives_502_json():
    proxy = start_proxy([f"http://127.0.0.1:{_closed_port()}"])
    try:
        status, headers, body = post(proxy.port, "/v1/chat/completions", CHAT)
        assert status in (502, 503)
        err = json.loads(body)["error"]
        assert set(err) >= {"message", "type", "code"}
        assert err["code"] == status
        assert headers["content-type"] == "application/json"
        with pytest.raises(openai.APIStatusError):
            client(proxy.port).chat.completions.create(**CHAT)
    finally:
        proxy.stop()


def test_backend_killed_mid_stream(proxy):
    with pytest.raises(openai.APIError) as info:
        stream = client(proxy.port).chat.completions.create(
            **CHAT, stream=True, extra_headers={"x-sim-fault": "die-after", "x-sim-fault-after": "3"}
        )
        for _ in stream:
            pass
    assert "backend failed" in str(info.value)  # the details are logged

    body = json.dumps({**CHAT, "stream": True}).encode()
    raw = raw_exchange(
        proxy.port,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nx-sim-fault: die-after\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body),
    )
    assert raw.startswith(b"HTTP/1.1 200")
    assert not raw.endswith(b"0\r\n\r\n"), "a broken stream must not end with the last chunk"
    assert b"[DONE]" not in raw
    events = _events(raw)
    assert json.loads(events[-1])["error"]["code"] == 502
    assert all(e.startswith("{") for e in events)  # no half event anywhere


def test_backend_error_event_passes_through(proxy):
    with pytest.raises(openai.APIError, match="simulated engine failure"):
        stream = client(proxy.port).chat.completions.create(
            **CHAT, stream=True, extra_headers={"x-sim-fault": "error-event"}
        )
        for _ in stream:
            pass


def test_backend_bad_framing_mid_stream(proxy):
    body = json.dumps({**CHAT, "stream": True}).encode()
    raw = raw_exchange(
        proxy.port,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nx-sim-fault: bad-framing\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body),
    )
    assert raw.startswith(b"HTTP/1.1 200")
    assert not raw.endswith(b"0\r\n\r\n")
    event = json.loads(_events(raw)[-1])["error"]
    assert event["type"] == "upstream_error" and "backend failed" in event["message"]  # details: the log


def test_backend_5xx_passes_through(proxy):
    status, _, body = post(proxy.port, "/v1/chat/completions", CHAT, {"x-sim-fault": "503"})
    assert status == 503
    assert "error" in json.loads(body)


def test_first_byte_timeout_gives_504(sim):
    proxy = start_proxy([sim], "--first-byte-timeout", "0.5")
    try:
        t0 = time.monotonic()
        status, _, body = post(proxy.port, "/v1/chat/completions", CHAT, {"x-sim-fault": "hang"})
        assert status == 504
        assert json.loads(body)["error"]["code"] == 504
        assert 0.5 <= time.monotonic() - t0 < 3  # never before the limit
    finally:
        proxy.stop()


def test_first_byte_timeouts_share_one_watchdog_and_none_fires_early(sim):
    # One timer per worker ticks every exchange (http/relay.py, Watchdog): requests that start
    # between its ticks must still wait their whole limit, each its own.
    proxy = start_proxy([sim], "--first-byte-timeout", "0.8")

    def hang(delay):
        time.sleep(delay)
        t0 = time.monotonic()
        status, _, _ = post(proxy.port, "/v1/chat/completions", CHAT, {"x-sim-fault": "hang"})
        return status, time.monotonic() - t0

    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            results = list(pool.map(hang, [0.0, 0.07, 0.15, 0.33]))
        for status, took in results:
            assert status == 504
            assert 0.8 <= took < 3.0, results
    finally:
        proxy.stop()


def test_idle_timeout_mid_stream_breaks_stream(sim):
    proxy = start_proxy([sim], "--idle-timeout", "0.4")
    try:
        body = json.dumps({**CHAT, "stream": True, "max_tokens": 4}).encode()
        raw = raw_exchange(
            proxy.port,
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nx-sim-itl: 3\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body),
        )
        assert raw.startswith(b"HTTP/1.1 200")
        assert json.loads(_events(raw)[-1])["error"]["type"] == "upstream_timeout"
        assert not raw.endswith(b"0\r\n\r\n")
    finally:
        proxy.stop()


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 2x0 OK\r\ncontent-length: 2\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n{}",
        b"SPDY/9 200 OK\r\n\r\n",
    ],
)
def test_invalid_upstream_response_is_502_and_discarded(response):
    from conftest import ScriptedBackend

    backend = ScriptedBackend(lambda req, sock: sock.sendall(response))
    proxy = start_proxy([backend.url])
    try:
        for _ in range(2):
            status, _, body = post(proxy.port, "/v1/chat/completions", CHAT)
            assert status == 502
            message = json.loads(body)["error"]["message"]
            # The client reads a fixed sentence; the backend's address and fault go to the log.
            assert "backend failed" in message and str(backend.port) not in message
        assert backend.connections == 2  # the broken connection was not reused
    finally:
        proxy.stop()
        backend.close()


# -- protocol edges ---------------------------------------------------------------------------


def test_pipelined_requests_answered_in_order(proxy):
    reqs = b""
    for i in range(5):
        body = json.dumps({**CHAT, "max_tokens": 1 + i, "stream": i % 2 == 1}).encode()
        reqs += b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (
            len(body),
            body,
        )
    reqs += b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    raw = raw_exchange(proxy.port, reqs)
    bodies = [body for status, body in parse_responses(raw, 6)]
    assert len(bodies) == 6
    for i in range(5):
        if i % 2:
            assert body_tokens_stream(bodies[i]) == 1 + i
        else:
            assert json.loads(bodies[i])["usage"]["completion_tokens"] == 1 + i
    assert json.loads(bodies[5])["object"] == "list"


def parse_responses(raw, count):
    """(status, body) of up to ``count`` HTTP/1.1 responses in ``raw``, framing checked by h11."""
    conn = h11.Connection(h11.CLIENT)
    conn.receive_data(raw)
    out = []
    for _ in range(count):
        conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
        conn.send(h11.EndOfMessage())
        status, body = None, b""
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                return out
        out.append((status, body))
        if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
            break
        conn.start_next_cycle()
    return out


def body_tokens_stream(body):
    return sum(1 for e in _events(body) if e != "[DONE]" and json.loads(e)["choices"] and
               json.loads(e)["choices"][0]["delta"].get("content"))


def test_http10_client_gets_dechunked_close_delimited_stream(sim, proxy):
    body = json.dumps({**CHAT, "stream": True, "max_tokens": 3}).encode()
    direct = raw_exchange(
        sim.port,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
        % (len(body), body),
    )
    raw = raw_exchange(
        proxy.port, b"POST /v1/chat/completions HTTP/1.0\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    head, _, payload = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head.lower()
    assert b"connection: close" in head.lower()
    assert payload.startswith(b"data: ") and payload.endswith(b"data: [DONE]\n\n")
    assert _events(same_but_time(payload)) == _events(same_but_time(direct.partition(b"\r\n\r\n")[2]))


def test_expect_100_continue(proxy):
    body = json.dumps(CHAT).encode()
    s = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    s.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    assert s.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
    s.sendall(body)
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    s.close()
    assert out.startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize(
    "request_bytes,status",
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"a" * 70000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(101)) + b"\r\n", 431),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 40000000\r\n\r\n", 413),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (b"GET / HTTP/1.1 extra\r\nHost: x\r\n\r\n", 400),
        (b"NOT A REQUEST\r\n\r\n", 400),
        (b"GET /\r\n\r\n", 400),  # HTTP/0.9
        (b"GET / HTTP/1.1\r\n\r\n", 400),  # missing Host
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n folded\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    ],
    ids=[
        "header-too-large", "too-many-headers", "body-too-large", "uri-too-long", "bad-request-line",
        "garbage", "http09", "missing-host", "two-hosts", "cl-and-te", "differing-cl", "te-gzip",
        "te-repeated", "bad-chunk-size", "nul-in-value", "bare-cr", "bad-header-name", "obs-fold",
        "http2-version",
    ],
)
def test_bad_requests_refused_and_closed(proxy, request_bytes, status):
    raw = raw_exchange(proxy.port, request_bytes)  # returns once the proxy closes
    assert raw.startswith(b"HTTP/1.1 %d " % status), raw[:200]
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"connection: close" in head
    assert json.loads(body)["error"]["code"] == status


def test_slow_header_sender_is_cut_off(sim):
    proxy = start_proxy([sim], "--header-timeout", "0.5")
    try:
        s = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n")
        t0 = time.monotonic()
        out = b""
        try:
            for _ in range(20):
                s.sendall(b"X-Slow: 1\r\n")
                time.sleep(0.1)
                s.setblocking(False)
                try:
                    chunk = s.recv(4096)
                    out += chunk
                    if not chunk:
                        break
                except BlockingIOError:
                    pass
                s.setblocking(True)
        except OSError:
            pass
        assert out.startswith(b"HTTP/1.1 408"), out
        assert time.monotonic() - t0 < 1.5
        s.close()
    finally:
        proxy.stop()


def test_keepalive_idle_client_is_closed(sim):
    proxy = start_proxy([sim], "--keepalive-timeout", "0.3")
    try:
        s = socket.create_connection(("127.0.0.1", proxy.port), timeout=3)
        t0 = time.monotonic()
        assert s.recv(10) == b""
        assert 0.25 < time.monotonic() - t0 < 1.5
    finally:
        proxy.stop()


def _events(raw):
    """SSE data payloads in a raw response or body (chunk framing lines are skipped)."""
    return [line[6:].decode() for line in raw.split(b"\n") if line.startswith(b"data: ")]


def test_slow_body_sender_gets_408(sim):
    proxy = start_proxy([sim], "--request-timeout", "0.6", "--header-timeout", "0.5")
    try:
        s = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        t0 = time.monotonic()
        out = b""
        while chunk := s.recv(4096):
            out += chunk
        assert out.startswith(b"HTTP/1.1 408"), out
        assert 0.3 < time.monotonic() - t0 < 2.0
        s.close()
    finally:
        proxy.stop()


def test_slow_reader_gets_every_byte(sim, proxy):
    """Backpressure: a client that stops reading pauses the upstream; nothing is lost."""
    body = json.dumps({**CHAT, "stream": True, "max_tokens": 20000}).encode()
    req = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    direct = raw_exchange(sim.port, req).partition(b"\r\n\r\n")[2]
    s = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # small window, no autotuning
    s.sendall(req)
    time.sleep(1.0)  # the proxy's buffers fill; it must pause the backend, not fail
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    s.close()
    assert len(direct) > 2_000_000
    assert same_but_time(out.partition(b"\r\n\r\n")[2]) == same_but_time(direct)


def test_paused_upstream_is_not_an_idle_timeout(sim):
    """While a slow client makes us stop reading the backend, the idle watchdog must not fire."""
    proxy = start_proxy([sim], "--idle-timeout", "0.4")
    try:
        body = json.dumps({**CHAT, "stream": True, "max_tokens": 20000}).encode()
        s = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        time.sleep(1.5)  # several idle timeouts long, with the proxy paused on us
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        s.close()
        assert out.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")
        assert b'"error"' not in out
    finally:
        proxy.stop()
