"""Sans-IO head rewriting: what goes upstream and what comes back to the client."""

import pytest

from _speedups import ResponseFramer
from proxy.http import heads


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
    head = heads.upstream_head(b"POST", b"/v1/x", headers, b"10.0.0.9:8000", b"127.0.0.1", b"rid", 5)
    assert head == (
        b"POST /v1/x HTTP/1.1\r\nhost: 10.0.0.9:8000\r\nauthorization: Bearer k\r\n"
        b"x-forwarded-for: 1.2.3.4, 127.0.0.1\r\nx-forwarded-proto: http\r\nx-request-id: rid\r\n"
        b"content-length: 5\r\n\r\n"
    )


def test_upstream_head_get_without_body_has_no_length():
    head = heads.upstream_head(b"GET", b"/v1/models", [], b"h:1", b"127.0.0.1", b"r", 0)
    assert b"content-length" not in head


def test_client_head_strips_hop_by_hop_and_adds_request_id():
    f = ResponseFramer()
    f.feed(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: keep-alive, X-Hop\r\n"
        b"X-Hop: 1\r\nKeep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    head, _ = heads.client_head(f, b"rid-1", close=False, dechunk=False)
    assert head == (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
        b"x-request-id: rid-1\r\n\r\n"
    )
    head10, _ = heads.client_head(f, b"rid-1", close=True, dechunk=True)
    assert b"Transfer-Encoding" not in head10 and head10.endswith(b"connection: close\r\n\r\n")


def test_connection_options_are_dropped_wherever_they_appear():
    # RFC 9110 7.6.1: a field named by Connection is hop-by-hop, even one sent before it, and
    # the option names are case-insensitive and may be spread over several Connection fields.
    headers = [(b"x-a", b"1"), (b"connection", b"X-A"), (b"x-b", b"2"), (b"connection", b" , x-b ,"), (b"x-c", b"3")]
    head = heads.upstream_head(b"GET", b"/", headers, b"h:1", b"127.0.0.1", b"r", 0)
    assert b"x-a" not in head and b"x-b" not in head and b"x-c: 3\r\n" in head
    f = ResponseFramer()
    f.feed(b"HTTP/1.1 200 OK\r\nX-A: 1\r\nConnection: x-a\r\nConnection: X-B\r\nX-B: 2\r\nX-C: 3\r\nContent-Length: 0\r\n\r\n")
    head, _ = heads.client_head(f, b"", close=False, dechunk=False)
    assert b"X-A" not in head and b"X-B" not in head and b"X-C: 3\r\n" in head
    assert heads.connection_tokens(b"Keep-Alive, , Upgrade") == {b"keep-alive", b"upgrade"}


def test_extra_fields_survive_a_connection_option_naming_them():
    # A provider's API key is added after the client's fields were filtered: a client cannot
    # remove it by naming authorization in Connection.
    headers = [(b"connection", b"authorization")]
    extra = ((b"authorization", b"Bearer ours"),)
    head = heads.upstream_head(b"POST", b"/v1/x", headers, b"h:1", b"127.0.0.1", b"r", 0, extra)
    assert b"authorization: Bearer ours\r\n" in head


def test_chunk():
    assert heads.chunk(b"data: x\n\n") == b"9\r\ndata: x\n\n\r\n"


SPOOFED = [
    (b"host", b"p"),
    (b"x-forwarded-for", b"6.6.6.6"),
    (b"forwarded", b"for=6.6.6.6;proto=https"),
    (b"x-real-ip", b"6.6.6.6"),
    (b"x-forwarded-host", b"admin.internal"),
    (b"x-forwarded-port", b"443"),
    (b"x-custom", b"kept"),
]


def test_spoofing_forwarding_headers_from_an_untrusted_peer_are_replaced_by_the_peer():
    # A client's own X-Forwarded-For, Forwarded, X-Real-IP and X-Forwarded-Host/-Port are
    # claims about itself: an endpoint that logs, limits or authorizes by client address
    # must see only the address the proxy saw.
    head = heads.upstream_head(b"GET", b"/", SPOOFED, b"h:1", b"203.0.113.9", b"r", 0, trusted=False)
    assert head == (
        b"GET / HTTP/1.1\r\nhost: h:1\r\nx-custom: kept\r\n"
        b"x-forwarded-for: 203.0.113.9\r\nx-forwarded-proto: http\r\nx-request-id: r\r\n\r\n"
    )


def test_forwarding_headers_from_a_trusted_proxy_are_extended():
    head = heads.upstream_head(b"GET", b"/", SPOOFED, b"h:1", b"10.0.0.2", b"r", 0, trusted=True)
    assert b"x-forwarded-for: 6.6.6.6, 10.0.0.2\r\n" in head
    for field in SPOOFED[2:]:
        assert b"%s: %s\r\n" % field in head
    # The default (until the caller passes its decision) is today's: extended.
    assert heads.upstream_head(b"GET", b"/", SPOOFED, b"h:1", b"10.0.0.2", b"r", 0) == head


def test_peer_trusted_matches_addresses_and_cidrs():
    proxies = ["10.0.0.0/8", "192.168.1.7", "2001:db8::/32"]
    assert heads.peer_trusted(b"10.1.2.3", proxies)
    assert heads.peer_trusted(b"192.168.1.7", proxies)
    assert not heads.peer_trusted(b"192.168.1.8", proxies)
    assert heads.peer_trusted(b"::ffff:10.9.9.9", proxies)  # IPv4 through a dual-stack socket
    assert heads.peer_trusted(b"2001:db8::1", proxies)
    assert not heads.peer_trusted(b"2001:db9::1", proxies)
    assert not heads.peer_trusted(b"unknown", proxies)
    assert not heads.peer_trusted(b"127.0.0.1", [])
    assert heads.trusted_networks(("127.0.0.1", "::1/128"))
    try:
        heads.trusted_networks(("10.0.0.0/33",))
    except ValueError as exc:
        assert "10.0.0.0/33" in str(exc)
    else:
        raise AssertionError("a bad entry must be refused")


def test_rfc9110_7_6_1_connection_cannot_remove_the_response_framing():
    # A backend's Connection: content-length (or transfer-encoding) must not leave the client
    # a body it cannot delimit: the proxy forwards the body as framed.
    f = ResponseFramer()
    f.feed(b"HTTP/1.1 200 OK\r\nConnection: content-length, x-hop\r\nContent-Length: 2\r\nX-Hop: 1\r\n\r\nok")
    head, _ = heads.client_head(f, b"r", close=False, dechunk=False)
    assert head == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nx-request-id: r\r\n\r\n"
    f = ResponseFramer()
    f.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: Transfer-Encoding\r\n\r\n")
    head, _ = heads.client_head(f, b"", close=False, dechunk=False)
    assert head == b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    head10, _ = heads.client_head(f, b"", close=True, dechunk=True)  # de-chunked: the close ends it
    assert head10 == b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n"


def test_a_head_refuses_a_text_value_as_bytes_join_does():
    # Compiled, a head's parts are joined in C; a part that is not bytes never becomes a head.
    with pytest.raises(TypeError):
        heads.upstream_head(b"POST", b"/v1/x", [(b"x-a", "1")], b"h:1", b"127.0.0.1", b"r", 0)
