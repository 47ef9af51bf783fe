"""Sans-IO request reading (proxy/http/request.py): llhttp plus the proxy's head rules, without
a socket. Every case is replayed whole, one byte at a time and in random slices; the requests
it yields and the refusal it ends with must not depend on where the bytes were split. Cases
that pin an RFC rule or an attack name it."""

import random

import pytest

from proxy.config import Limits
from proxy.http.errors import ClientError
from proxy.http.request import IDLE, READING_BODY, READING_HEAD, RequestReader
from proxy.http.request import Sink as ReaderSink

LIMITS = Limits(max_body_bytes=100, max_header_bytes=1024, max_headers=10, max_request_line=200)


class Sink(ReaderSink):
    def __init__(self):
        self.events = []

    def on_continue(self):
        self.events.append(("continue",))

    def on_request(self, method, target, headers, body, http10, keep_alive, request_id):
        self.events.append(("request", method, target, tuple(headers), body, http10, keep_alive, request_id))


def replay(data, pieces):
    """Feed ``data`` cut into ``pieces`` (sizes); return (events, refusal status or None)."""
    sink = Sink()
    reader = RequestReader(LIMITS, sink, clock=lambda: 0.0)
    at = 0
    for size in pieces:
        try:
            reader.feed(data[at : at + size])
        except ClientError as err:
            return sink.events, err.status
        at += size
    return sink.events, None


def splits(data, seed=0):
    n = len(data)
    yield "whole", [n]
    yield "per byte", [1] * n
    rng = random.Random(seed)
    for k in range(5):
        pieces, left = [], n
        while left:
            size = min(left, rng.randint(1, 40))
            pieces.append(size)
            left -= size
        yield f"random {k}", pieces


def check(data):
    """The result of ``data`` whole, after asserting every split gives the same."""
    expected = replay(data, [len(data)])
    for name, pieces in splits(data):
        assert replay(data, pieces) == expected, name
    return expected


GET = b"GET /v1/models HTTP/1.1\r\nHost: p\r\n\r\n"
POST = b"POST /v1/chat/completions HTTP/1.1\r\nHost: p\r\nContent-Length: 11\r\n\r\n{\"a\": \"bc\"}"


def test_get_and_post_pipelined():
    events, refused = check(GET + POST + GET)
    assert refused is None
    assert [e[1:3] for e in events] == [(b"GET", b"/v1/models"), (b"POST", b"/v1/chat/completions"), (b"GET", b"/v1/models")]
    _, _, _, headers, body, http10, keep_alive, rid = events[1]
    assert headers == ((b"host", b"p"), (b"content-length", b"11")) and body == b'{"a": "bc"}'
    assert not http10 and keep_alive and rid == b""


def test_chunked_body_is_decoded_whole():
    data = b"POST /x HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\n\r\n"
    events, refused = check(data)
    assert refused is None and events[0][4] == b"abcde"


def test_http10_without_host_and_close():
    events, refused = check(b"GET / HTTP/1.0\r\n\r\n")
    assert refused is None and events[0][5] is True and events[0][6] is False


def test_expect_100_continue_is_announced_before_the_body():
    data = b"POST /x HTTP/1.1\r\nHost: p\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok"
    events, refused = check(data)
    assert refused is None and events[0] == ("continue",) and events[1][4] == b"ok"


def test_sane_request_id_passes_and_a_huge_one_is_ignored():
    ok = b"GET / HTTP/1.1\r\nHost: p\r\nX-Request-Id: abc-1\r\n\r\n"
    huge = b"GET / HTTP/1.1\r\nHost: p\r\nX-Request-Id: " + b"a" * 201 + b"\r\n\r\n"
    assert check(ok)[0][0][7] == b"abc-1"
    assert check(huge)[0][0][7] == b""


@pytest.mark.parametrize(
    "name,data,status",
    [
        ("RFC 9112 3.2: HTTP/1.1 needs a Host", b"GET / HTTP/1.1\r\n\r\n", 400),
        ("RFC 9112 3.2: exactly one Host", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        ("RFC 9112 6.1: unknown coding", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
        ("RFC 9112 6.1: chunked twice", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        ("smuggling: CL with TE", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        ("smuggling: two lengths", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
        ("smuggling: bad chunk size", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
        ("RFC 9112 5.2: obsolete line folding", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n  2\r\n\r\n", 400),
        ("RFC 9110 5.5: NUL in a field", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\x002\r\n\r\n", 400),
        ("RFC 9110 10.1.1: unknown expectation", b"POST / HTTP/1.1\r\nHost: a\r\nExpect: teapot\r\n\r\n", 417),
        ("body limit from Content-Length", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 101\r\n\r\n", 413),
        ("body limit while chunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n40\r\n" + b"a" * 64 + b"\r\n40\r\n" + b"b" * 64 + b"\r\n0\r\n\r\n", 413),
        ("request target limit", b"GET /" + b"a" * 300 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
        ("header count limit", b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(12)) + b"\r\n", 431),
        ("header bytes limit", b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n", 431),
        ("HTTP/0.9-style request line", b"GET /\r\n\r\n", 400),
        ("RFC 9113 3.4: HTTP/2 prior-knowledge preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
        ("not HTTP", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),
    ],
)
def test_refusals(name, data, status):
    events, refused = check(data)
    assert refused == status, name
    assert not [e for e in events if e[0] == "request"], name


def test_an_unfinished_head_cannot_grow_past_the_limit():
    # llhttp holds a field it has not finished. Once a head spans reads, every later read
    # counts whole, so what a client makes us hold is bounded by the limit plus one read.
    head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: "
    reader = RequestReader(LIMITS, Sink(), clock=lambda: 0.0)
    reader.feed(head)
    with pytest.raises(ClientError) as info:
        for _ in range(20):
            reader.feed(b"a" * 100)
    assert info.value.status == 431
    reader = RequestReader(LIMITS, Sink(), clock=lambda: 0.0)
    reader.feed(head + b"a" * 2000)  # the read the head began in is held as it is
    with pytest.raises(ClientError):
        for _ in range(11):
            reader.feed(b"a" * 100)


def test_a_refusal_after_a_good_request_keeps_the_good_one():
    events, refused = check(GET + b"GET / HTTP/1.1\r\n\r\n")
    assert refused == 400 and len(events) == 1 and events[0][2] == b"/v1/models"


def test_unsupported_version_is_refused():
    events, refused = check(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n")
    assert refused == 505 and not events


def test_phases_tell_the_timer_which_deadline_applies():
    times = iter(range(100))
    reader = RequestReader(LIMITS, Sink(), clock=lambda: next(times))
    assert reader.phase == IDLE
    reader.feed(b"POST / HTTP/1.1\r\nHo")
    assert reader.phase == READING_HEAD
    began = reader.since
    reader.feed(b"st: a\r\nContent-Length: 2\r\n\r\n")
    assert reader.phase == READING_BODY and reader.since == began
    reader.feed(b"ok")
    assert reader.phase == IDLE and reader.since > began


# -- chunked trailers ------------------------------------------------------------------------

TRAILED = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: p\r\nX-Forwarded-For: 10.0.0.7\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n0\r\n"
    b"X-Forwarded-For: 6.6.6.6\r\nAuthorization: Bearer stolen\r\nX-Session-Id: victim\r\nX-Request-Id: forged\r\n"
    b"Host: evil\r\nExpect: teapot\r\n\r\n"
)


def test_rfc9112_7_1_2_trailer_fields_are_dropped_not_merged_into_the_head():
    # Attack: a front proxy cleaned the head; fields sent after the body would be promoted to
    # request headers (X-Forwarded-For, Authorization, X-Session-Id...). Dropped, and none of
    # the head rules fire on them (a second Host, an unknown expectation).
    events, refused = check(TRAILED + GET)
    assert refused is None
    _, method, target, headers, body, _, keep_alive, rid = events[0]
    assert (method, target, body, rid, keep_alive) == (b"POST", b"/v1/chat/completions", b"abc", b"", True)
    assert headers == ((b"host", b"p"), (b"x-forwarded-for", b"10.0.0.7"), (b"transfer-encoding", b"chunked"))
    assert events[1][2] == b"/v1/models"  # the next request is read as usual


@pytest.mark.parametrize("field", [b"Content-Length: 99", b"Transfer-Encoding: gzip"])
def test_smuggling_framing_fields_in_trailers_are_refused(field):
    # llhttp refuses them (RFC 9110 6.5.1: framing never comes from a trailer).
    data = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n" + field + b"\r\n\r\n"
    events, refused = check(data)
    assert refused == 400 and not events


def test_trailer_fields_count_against_the_header_budget():
    head = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n"
    events, refused = check(head + b"X-Pad: " + b"a" * 1100 + b"\r\n\r\n")
    assert refused == 431 and not events


def test_chunk_framing_without_body_bytes_cannot_grow_past_the_limit():
    # llhttp holds a trailer field it has not finished (httptools joins its pieces): reads that
    # carry no body byte are bounded like a head, the limit plus one read.
    reader = RequestReader(LIMITS, Sink(), clock=lambda: 0.0)
    reader.feed(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\nX-Big: ")
    with pytest.raises(ClientError) as info:
        for _ in range(20):
            reader.feed(b"a" * 100)
    assert info.value.status == 431
    reader = RequestReader(LIMITS, Sink(), clock=lambda: 0.0)
    reader.feed(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    with pytest.raises(ClientError):  # one chunk-extension that never ends
        reader.feed(b"1;ext=")
        for _ in range(20):
            reader.feed(b"a" * 100)
    # Body bytes reset the count: a long body in small chunks is fine.
    sink = Sink()
    reader = RequestReader(Limits(max_body_bytes=10_000, max_header_bytes=1024), sink, clock=lambda: 0.0)
    reader.feed(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(2000):
        reader.feed(b"2\r\nab\r\n")
    reader.feed(b"0\r\n\r\n")
    assert len(sink.events[0][4]) == 4000


def test_pipelined_requests_after_a_head_that_spanned_reads_are_not_one_head():
    # The bytes of later requests in the read that finished a head are no part of it: 40
    # complete requests after it must not count as one unfinished head of 1,200 bytes.
    sink = Sink()
    reader = RequestReader(LIMITS, sink, clock=lambda: 0.0)
    reader.feed(b"GET / HTTP/1.1\r\n")
    reader.feed(b"Host: a\r\n\r\n" + b"GET /b HTTP/1.1\r\nHost: a\r\n\r\n" * 40 + b"GET /c HTTP/1.1\r\nHo")
    reader.feed(b"st: a\r\n\r\n")
    assert len(sink.events) == 42 and sink.events[-1][2] == b"/c"


# -- tunnels: CONNECT and Upgrade --------------------------------------------------------------


@pytest.mark.parametrize(
    "name,data",
    [
        ("RFC 9110 9.3.6: CONNECT", b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n"),
        ("RFC 9110 9.3.6: CONNECT with a payload", b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n\x16\x03\x01\x00\x05hello"),
        (
            "RFC 6455 4.1: websocket upgrade",
            b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: x\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58",
        ),
        (
            "smuggling: a request hidden in an upgrade's payload",
            b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: foo\r\nConnection: keep-alive, Upgrade\r\n\r\n" + GET,
        ),
        ("RFC 9110 7.8: h2c among other protocols", b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c, websocket\r\nConnection: Upgrade\r\n\r\n"),
        ("RFC 9110 7.8: two Upgrade fields", b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"),
    ],
)
def test_tunnels_are_refused_before_anything_is_forwarded(name, data):
    events, refused = check(GET + data)
    assert refused == 501, name
    assert len(events) == 1 and events[0][2] == b"/v1/models", name  # only the request before it


def test_upgrade_not_named_in_connection_is_no_upgrade():
    # RFC 9110 7.8: Upgrade without the "upgrade" connection option is ignored (the field is
    # hop-by-hop and dropped upstream); llhttp does not switch either.
    data = b"GET /v1/models HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n" + GET
    events, refused = check(data)
    assert refused is None and [e[2] for e in events] == [b"/v1/models", b"/v1/models"]


H2C = b"Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"


def test_rfc9110_7_8_h2c_upgrade_is_ignored_and_served_as_http11():
    # curl --http2 on an http:// URL asks for h2c on every request; served as HTTP/1.1 (Envoy
    # and nginx do the same), and the bytes after it are still HTTP/1.1 requests.
    data = b"GET /v1/models?x=1 HTTP/1.1\r\nHost: a\r\n" + H2C + b"\r\n" + POST + GET
    events, refused = check(data)
    assert refused is None
    assert [e[1:3] for e in events] == [(b"GET", b"/v1/models?x=1"), (b"POST", b"/v1/chat/completions"), (b"GET", b"/v1/models")]
    _, _, _, headers, body, http10, keep_alive, _ = events[0]
    assert (body, http10, keep_alive) == (b"", False, True)
    assert (b"upgrade", b"h2c") in headers  # dropped upstream as hop-by-hop, with what Connection names
    assert events[1][4] == b'{"a": "bc"}'


def test_h2c_upgrade_with_a_body_reads_the_body():
    # httptools skips the body of an upgrade request; it must still be read as this request's
    # body (with the same checks), never as the next request.
    smuggled = b"GET /admin HTTP/1.1\r\nHost: a\r\n\r\n"
    with_length = (
        b"POST /v1/completions HTTP/1.1\r\nHost: a\r\n" + H2C + b"Content-Length: %d\r\n\r\n" % len(smuggled) + smuggled + GET
    )
    events, refused = check(with_length)
    assert refused is None
    assert [(e[1], e[2], e[4]) for e in events] == [(b"POST", b"/v1/completions", smuggled), (b"GET", b"/v1/models", b"")]
    assert events[0][6] is True and (b"content-length", b"%d" % len(smuggled)) in events[0][3]

    chunked = (
        b"POST /v1/completions HTTP/1.0\r\nHost: a\r\n" + H2C + b"Transfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n"
    )
    events, refused = check(chunked)
    assert refused is None and len(events) == 1
    _, method, target, headers, body, http10, keep_alive, _ = events[0]
    assert (method, target, body, http10, keep_alive) == (b"POST", b"/v1/completions", b"abcde", True, False)
    assert not [name for name, _ in headers if name == b"x-forwarded-for"]

    expect = b"POST /x HTTP/1.1\r\nHost: a\r\n" + H2C + b"Expect: 100-continue\r\nContent-Length: 2\r\n\r\nok"
    events, refused = check(expect)
    assert refused is None and events[0] == ("continue",) and events[1][4] == b"ok"


def test_h2c_upgrade_body_keeps_the_limits():
    chunked = b"POST / HTTP/1.1\r\nHost: a\r\n" + H2C + b"Transfer-Encoding: chunked\r\n\r\n"
    events, refused = check(chunked + b"40\r\n" + b"a" * 64 + b"\r\n40\r\n" + b"b" * 64 + b"\r\n0\r\n\r\n")
    assert refused == 413 and not events
    events, refused = check(chunked + b"zz\r\n")
    assert refused == 400 and not events
    events, refused = check(b"POST / HTTP/1.1\r\nHost: a\r\n" + H2C + b"Content-Length: 101\r\n\r\n")
    assert refused == 413 and not events


# -- request targets (RFC 9112 3.2) ------------------------------------------------------------


@pytest.mark.parametrize(
    "target,expected",
    [
        (b"http://other.host/x?y=1", b"/x?y=1"),
        (b"HTTP://other.host:8080/v1/models", b"/v1/models"),
        (b"https://[::1]:8443/v1/chat/completions", b"/v1/chat/completions"),
        (b"http://h", b"/"),
        (b"http://h?q=1", b"/?q=1"),
        (b"http://h//double", b"//double"),
    ],
)
def test_rfc9112_3_2_2_absolute_form_is_accepted_and_sent_in_origin_form(target, expected):
    # A server must accept the absolute-form; the endpoint gets the path and query only, so
    # it never sees an authority other than the one the proxy chose.
    events, refused = check(b"GET " + target + b" HTTP/1.1\r\nHost: p\r\n\r\n")
    assert refused is None and events[0][2] == expected


@pytest.mark.parametrize(
    "name,target",
    [
        ("RFC 9112 3.2.4: asterisk-form (OPTIONS *)", b"*"),
        ("RFC 9110 4.2.4: userinfo in an http URI", b"http://user:pass@other.host/x"),
        ("RFC 9112 3.2: a fragment in origin-form", b"/v1/models#frag"),
        ("RFC 9112 3.2: a fragment in absolute-form", b"http://h/x#frag"),
        ("RFC 9112 3.2.2: a scheme other than http(s)", b"ftp://other.host/x"),
        ("RFC 9112 3.2.2: an authority with spaces or slashes", b"http://a\\b/x"),
    ],
)
def test_request_targets_refused(name, target):
    for method in (b"OPTIONS", b"GET"):
        events, refused = check(method + b" " + target + b" HTTP/1.1\r\nHost: p\r\n\r\n")
        assert refused == 400 and not events, name


# -- X-Request-Id ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value,passed",
    [
        (b"req_8f3a-11.2:3+/=", True),
        (b"0b7b4e0a-5a9c-4c1e-9d7a-3f2b1c0d9e8f", True),
        (b"a" * 200, True),
        (b"a" * 201, False),
        (b"two words", False),
        (b'a"b', False),
        (b"a,b", False),
        (b"a;b", False),
        (b"a\\b", False),
        (b"a\tb", False),
        (b"caf\xc3\xa9", False),
        (b"<script>", False),
    ],
)
def test_log_injection_client_request_id_is_echoed_only_when_safe(value, passed):
    events, refused = check(b"GET / HTTP/1.1\r\nHost: p\r\nX-Request-Id: " + value + b"\r\n\r\n")
    assert refused is None and events[0][7] == (value if passed else b"")


# -- HTTP/0.9 ----------------------------------------------------------------------------------


def test_http09_request_line_alone_is_refused_when_it_ends():
    # An HTTP/0.9 client sends its line and waits; llhttp waits for header fields that never
    # come. Refused as soon as the line ends, whatever the split, not at the header timeout.
    events, refused = check(b"GET /\r\n")
    assert refused == 400 and not events
    events, refused = check(b"\r\nGET /v1/models?a=b\r\n")
    assert refused == 400 and not events
    # After a request, llhttp keeps its version until the next line's digits: a line without
    # one is refused from its next byte (or, if none comes, at the header timeout).
    assert check(GET + b"GET /v1/models\r\n") == (check(GET)[0], None)
    assert check(GET + b"GET /v1/models\r\n\r\n")[1] == 400
    # A line still waiting for its version is no HTTP/0.9 yet.
    events, refused = check(b"GET / ")
    assert refused is None and not events
