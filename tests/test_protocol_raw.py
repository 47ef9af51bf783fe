"""The request side of the wire, on raw sockets through a real proxy: what a hostile or odd
client sends, what the proxy answers, what reaches the endpoint (a scripted backend that
records every request), and that the connection ends and the proxy stays up. The sans-IO rules
behind these are in test_request.py and test_heads.py, in every split."""

import http.client
import json
import socket
import time

import pytest

from conftest import ScriptedBackend, raw_exchange, start_proxy

OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


@pytest.fixture(scope="module")
def backend():
    b = ScriptedBackend(lambda req, sock: sock.sendall(OK))
    yield b
    b.close()


@pytest.fixture(scope="module")
def proxy(backend):
    p = start_proxy([backend])
    yield p
    p.stop()


def exchange(proxy, data, timeout=5.0):
    """(everything the proxy sent until it closed, seconds it took)."""
    t0 = time.monotonic()
    raw = raw_exchange(proxy.port, data, timeout=timeout)
    return raw, time.monotonic() - t0


def forwarded(backend, since):
    """Requests the backend received since ``since`` (a count), as (request line, fields, body)."""
    out = []
    for request in backend.requests[since:]:
        head, _, body = request.partition(b"\r\n\r\n")
        line, *lines = head.split(b"\r\n")
        fields = [tuple(x.split(b": ", 1)) for x in lines]
        out.append((line, fields, body))
    return out


def names(fields):
    return [name.lower() for name, _ in fields]


def responses(raw):
    """The status codes of the responses in ``raw``, in order (bodies by Content-Length)."""
    statuses = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        statuses.append(int(head.split(b" ", 2)[1]))
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        raw = rest[length:]
    return statuses


def assert_refused_and_closed(raw, took, status):
    assert raw.startswith(b"HTTP/1.1 %d " % status), raw[:200]
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"connection: close" in head
    assert json.loads(body)["error"]["code"] == status  # and nothing after it
    assert took < 3.0, f"answered and closed in {took:.1f} s: it waited for something"


def assert_still_serving(proxy):
    assert proxy.proc.poll() is None
    raw, _ = exchange(proxy, b"GET /x HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200 "), raw[:200]


# -- tunnels -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"CONNECT backend.internal:443 HTTP/1.1\r\nHost: backend.internal:443\r\n\r\n",
        b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\nSSH-2.0-OpenSSH_9.0\r\n",
    ],
    ids=["connect", "connect-with-payload"],
)
def test_rfc9110_9_3_6_connect_is_501_and_closed(proxy, backend, data):
    before = len(backend.requests)
    raw, took = exchange(proxy, data)
    assert_refused_and_closed(raw, took, 501)
    assert forwarded(backend, before) == []
    assert_still_serving(proxy)


@pytest.mark.parametrize(
    "data",
    [
        # A websocket handshake, then a masked frame.
        b"GET /v1/realtime HTTP/1.1\r\nHost: p\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58",
        # Smuggling: a request hidden in the payload of an upgrade the endpoint would refuse.
        b"GET /x HTTP/1.1\r\nHost: p\r\nUpgrade: anything\r\nConnection: keep-alive, Upgrade\r\n\r\n"
        b"POST /admin HTTP/1.1\r\nHost: p\r\nContent-Length: 0\r\n\r\n",
    ],
    ids=["websocket", "smuggled-in-upgrade-payload"],
)
def test_rfc9110_7_8_upgrade_is_501_and_closed(proxy, backend, data):
    before = len(backend.requests)
    raw, took = exchange(proxy, data)
    assert_refused_and_closed(raw, took, 501)
    assert forwarded(backend, before) == []
    assert_still_serving(proxy)


def test_rfc9113_3_4_http2_prior_knowledge_is_400_and_closed(proxy, backend):
    # No HTTP/2 on this port: the preface is refused like any request that is no HTTP/1.x.
    before = len(backend.requests)
    raw, took = exchange(proxy, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00\x00\x00\x00\x00")
    assert_refused_and_closed(raw, took, 400)
    assert forwarded(backend, before) == []
    assert_still_serving(proxy)


H2C = b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"


def test_rfc9110_7_8_h2c_upgrade_is_ignored_and_served_as_http11(proxy, backend):
    # What curl --http2 sends on an http:// URL: answered in HTTP/1.1, body and all, and the
    # connection goes on in HTTP/1.1. The upgrade fields go no further.
    before = len(backend.requests)
    body = b'{"model": "m", "prompt": "GET /admin HTTP/1.1\\r\\n"}'
    data = (
        b"GET /x?h2c=1 HTTP/1.1\r\nHost: p\r\n" + H2C + b"\r\n"
        b"POST /v1/completions HTTP/1.1\r\nHost: p\r\n" + H2C + b"Content-Length: %d\r\n\r\n" % len(body) + body
        + b"GET /y HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n"
    )
    raw, took = exchange(proxy, data)
    assert responses(raw) == [200, 200, 200] and b"101 Switching" not in raw
    sent = forwarded(backend, before)
    assert [line for line, _, _ in sent] == [
        b"GET /x?h2c=1 HTTP/1.1", b"POST /v1/completions HTTP/1.1", b"GET /y HTTP/1.1"
    ]
    assert sent[1][2] == body
    for _, fields, _ in sent:
        assert not {b"upgrade", b"http2-settings", b"connection"} & set(names(fields))


# -- what the head says --------------------------------------------------------------------


def test_rfc9112_7_1_2_chunked_trailers_never_reach_the_endpoint(proxy, backend):
    # Attack: after a front proxy cleaned the head, fields in the trailer section would be
    # promoted to request headers: a forged client address, credentials, a session to pin.
    before = len(backend.requests)
    data = (
        b"POST /v1/completions HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        b"2\r\n{}\r\n0\r\n"
        b"X-Forwarded-For: 6.6.6.6\r\nAuthorization: Bearer stolen\r\nX-Session-Id: victim\r\n"
        b"X-Request-Id: forged\r\n\r\n"
    )
    raw, _ = exchange(proxy, data)
    assert responses(raw) == [200]
    [(line, fields, body)] = forwarded(backend, before)
    assert body == b"{}"
    assert not {b"authorization", b"x-session-id"} & set(names(fields))
    assert dict(fields)[b"x-forwarded-for"] == b"127.0.0.1"
    assert dict(fields)[b"x-request-id"] != b"forged"


@pytest.mark.parametrize(
    "target,origin",
    [
        (b"http://other.host/x?y=1", b"/x?y=1"),
        (b"HTTPS://other.host:8443", b"/"),
    ],
)
def test_rfc9112_3_2_2_absolute_form_reaches_the_endpoint_in_origin_form(proxy, backend, target, origin):
    before = len(backend.requests)
    raw, _ = exchange(proxy, b"GET " + target + b" HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n")
    assert responses(raw) == [200]
    [(line, fields, _)] = forwarded(backend, before)
    assert line == b"GET " + origin + b" HTTP/1.1"
    assert dict(fields)[b"host"] == f"127.0.0.1:{backend.port}".encode()


@pytest.mark.parametrize(
    "data",
    [
        b"OPTIONS * HTTP/1.1\r\nHost: p\r\n\r\n",
        b"GET http://user:secret@other.host/x HTTP/1.1\r\nHost: p\r\n\r\n",
        b"GET /x#frag HTTP/1.1\r\nHost: p\r\n\r\n",
    ],
    ids=["asterisk-form", "userinfo", "fragment"],
)
def test_rfc9112_3_2_odd_targets_are_400_and_closed(proxy, backend, data):
    before = len(backend.requests)
    raw, took = exchange(proxy, data)
    assert_refused_and_closed(raw, took, 400)
    assert forwarded(backend, before) == []


def test_http09_request_line_is_400_at_once(proxy, backend):
    # An HTTP/0.9 client sends one line and waits: answered now, not at the header timeout.
    raw, took = exchange(proxy, b"GET /\r\n")
    assert_refused_and_closed(raw, took, 400)
    assert_still_serving(proxy)


@pytest.mark.parametrize(
    "rid,echoed",
    [(b"req_0b7b4e0a-5a9c.1:2+/=", True), (b'x" forged="1', False), (b"a,b", False), (b"a" * 201, False)],
)
def test_log_injection_request_id_is_echoed_only_when_safe(proxy, backend, rid, echoed):
    before = len(backend.requests)
    raw, _ = exchange(proxy, b"GET /x HTTP/1.1\r\nHost: p\r\nX-Request-Id: " + rid + b"\r\nConnection: close\r\n\r\n")
    head = raw.partition(b"\r\n\r\n")[0]
    answered = [line.split(b": ", 1)[1] for line in head.split(b"\r\n") if line.lower().startswith(b"x-request-id:")]
    [(_, fields, _)] = forwarded(backend, before)
    assert answered == [dict(fields)[b"x-request-id"]]
    assert (answered[0] == rid) is echoed


# -- forwarding headers --------------------------------------------------------------------

SPOOF = b"X-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nX-Forwarded-Host: admin.internal\r\n"


def test_spoofing_forwarding_headers_from_an_untrusted_client_are_dropped(proxy, backend):
    before = len(backend.requests)
    raw, _ = exchange(proxy, b"GET /x HTTP/1.1\r\nHost: p\r\n" + SPOOF + b"Connection: close\r\n\r\n")
    assert responses(raw) == [200]
    [(_, fields, _)] = forwarded(backend, before)
    assert dict(fields)[b"x-forwarded-for"] == b"127.0.0.1"
    assert not {b"forwarded", b"x-real-ip", b"x-forwarded-host"} & set(names(fields))


def test_forwarding_headers_from_a_trusted_proxy_are_extended(backend, tmp_path):
    config = tmp_path / "trusted.toml"
    config.write_text('trusted_proxies = ["127.0.0.0/8"]\n')
    proxy = start_proxy([backend], "--config", str(config))
    try:
        before = len(backend.requests)
        raw, _ = exchange(proxy, b"GET /x HTTP/1.1\r\nHost: p\r\n" + SPOOF + b"Connection: close\r\n\r\n")
        assert responses(raw) == [200]
        [(_, fields, _)] = forwarded(backend, before)
        fields = dict(fields)
        assert fields[b"x-forwarded-for"] == b"6.6.6.6, 127.0.0.1"
        assert fields[b"forwarded"] == b"for=6.6.6.6" and fields[b"x-real-ip"] == b"6.6.6.6"
    finally:
        proxy.stop()


# -- the response's framing ------------------------------------------------------------------


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nConnection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    ],
    ids=["content-length", "transfer-encoding"],
)
def test_rfc9110_7_6_1_connection_cannot_strip_the_response_framing(response):
    # A backend naming its framing field in Connection must not leave the client a body it
    # cannot delimit: two requests on one kept-alive client connection both complete.
    backend = ScriptedBackend(lambda req, sock: sock.sendall(response))
    proxy = start_proxy([backend])
    try:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=3)
        for _ in range(2):
            conn.request("GET", "/x")
            resp = conn.getresponse()
            assert resp.status == 200 and resp.read() == b"{}"
            assert resp.getheader("content-length") or resp.getheader("transfer-encoding")
        conn.close()
    except socket.timeout:
        pytest.fail("the client could not find the end of the response")
    finally:
        proxy.stop()
        backend.close()
