"""Sans-IO request reading (proxy/http/request.py): llhttp plus the proxy's head rules, without
a socket. Every case is replayed whole, one byte at a time and in random slices; the requests
it yields and the refusal it ends with must not depend on where the bytes were split. Cases
that pin an RFC rule or an attack name it."""

import random

import pytest

from proxy.config import Limits
from proxy.http.errors import ClientError
from proxy.http.request import IDLE, READING_BODY, READING_HEAD, RequestReader

LIMITS = Limits(max_body_bytes=100, max_header_bytes=1024, max_headers=10, max_request_line=200)


class Sink:
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
