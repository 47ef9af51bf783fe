"""Sans-IO head rules: what goes upstream and what comes back to the client."""

import pytest

from _speedups import ResponseFramer
from proxy import http1
from proxy.errors import ClientError


def test_upstream_head_rewrites_framing_and_forwarding():
    headers = [
        (b"host", b"client.example"),
        (b"connection", b"close, x-hop"),
        (b"x-hop", b"1"),
        (b"transfer-encoding", b"chunked"),
        (b"x-forwarded-for", b"1.2.3.4"),
        (b"x-request-id", b"theirs"),
        (b"authorization", b"Bearer k"),
    ]
    head = http1.upstream_head(b"POST", b"/v1/x", headers, b"10.0.0.9:8000", b"127.0.0.1", b"rid", 5)
    assert head == (
        b"POST /v1/x HTTP/1.1\r\nhost: 10.0.0.9:8000\r\nauthorization: Bearer k\r\n"
        b"x-forwarded-for: 1.2.3.4, 127.0.0.1\r\nx-forwarded-proto: http\r\nx-request-id: rid\r\n"
        b"content-length: 5\r\n\r\n"
    )


def test_upstream_head_get_without_body_has_no_length():
    head = http1.upstream_head(b"GET", b"/v1/models", [], b"h:1", b"127.0.0.1", b"r", 0)
    assert b"content-length" not in head


def test_client_head_strips_hop_by_hop_and_adds_request_id():
    f = ResponseFramer()
    f.feed(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: keep-alive, X-Hop\r\n"
        b"X-Hop: 1\r\nKeep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    head = http1.client_head(f, b"rid-1", close=False, dechunk=False)
    assert head == (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
        b"x-request-id: rid-1\r\n\r\n"
    )
    head10 = http1.client_head(f, b"rid-1", close=True, dechunk=True)
    assert b"Transfer-Encoding" not in head10 and head10.endswith(b"connection: close\r\n\r\n")


@pytest.mark.parametrize("value,seen", [(b"gzip", False), (b"chunked", True), (b"chunked, gzip", False)])
def test_transfer_encoding_refusals(value, seen):
    with pytest.raises(ClientError):
        http1.check_transfer_encoding(value, seen)


def test_chunk():
    assert http1.chunk(b"data: x\n\n") == b"9\r\ndata: x\n\n\r\n"
