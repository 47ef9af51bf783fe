"""The upstream response framer, sans IO, on both builds: the pure-Python specification
(_speedups.framing) and its Cython compilation (_speedups.framing_c).

Every case is replayed whole, one byte at a time and in random slices, and must give the same
result each way (the framer's state carries over between reads, so where the bytes were split
must not matter). Cases that pin an RFC rule or an attack name it.
"""

import random
from importlib.machinery import EXTENSION_SUFFIXES

import pytest

import _speedups
from builds import native_or_skip

pure = _speedups.pure("framing")
HEAD, DONE, ERROR, EVENT = pure.HEAD, pure.DONE, pure.ERROR, pure.EVENT


@pytest.fixture(params=["pure", "native"])
def fr(request):
    """The framing module under test."""
    if request.param == "pure":
        return pure
    return native_or_skip("framing")


def test_native_exports_the_same_api():
    native = native_or_skip("framing")
    for name in ("HEAD", "DONE", "ERROR", "EVENT", "NONE", "LENGTH", "CHUNKED", "UNTIL_CLOSE"):
        assert getattr(native, name) == getattr(pure, name)
    assert native.__file__.endswith(tuple(EXTENSION_SUFFIXES))  # compiled, not a .py copy
    assert native.ResponseFramer is not pure.ResponseFramer


# -- replay ---------------------------------------------------------------------------------


def replay(fr, pieces, head_request=False, eof=False):
    """Feed ``pieces`` in order and sum up what a relay would see, in absolute offsets."""
    f = fr.ResponseFramer(head_request)
    offset = 0
    flags_seen = 0
    head_end = msg_end = None
    safe = 0
    event_reads = []  # (start, end) of the reads that said an SSE event ended in them
    for piece in pieces:
        flags = f.feed(piece)
        flags_seen |= flags & ~EVENT
        if flags & EVENT:
            event_reads.append((offset, offset + len(piece)))
        if flags & HEAD:
            head_end = offset + f.head_end
        if flags & DONE:
            msg_end = offset + f.msg_end
        if flags & ERROR:
            break
        if f.safe_end:
            safe = max(safe, offset + f.safe_end)
        offset += len(piece)
    out = {
        "flags": flags_seen,
        "error": f.error,
        "head_end": head_end,
        "msg_end": msg_end,
        "safe": None if flags_seen & ERROR else safe,
        "status": f.status,
        "version": f.version,
        "reason": f.reason,
        "headers": list(f.headers),
        "kind": f.kind,
        "keep_alive": f.keep_alive,
        "event_stream": f.event_stream,
        "content_length": f.content_length,
        "body_bytes": f.body_bytes,
        "done": f.done,
        "started": f.started,
        "event_reads": event_reads,
    }
    if eof:
        out["eof"] = f.eof()
        out["done_after_eof"] = f.done
    return out


def splits(data, seed=0):
    """The three ways every case is fed: whole, per byte, random slices."""
    rng = random.Random(seed)
    yield "whole", [data]
    yield "per-byte", [data[i : i + 1] for i in range(len(data))]
    for k in range(3):
        cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 12)))) if len(data) > 1 else []
        bounds = [0, *cuts, len(data)]
        yield f"random-{k}", [data[a:b] for a, b in zip(bounds, bounds[1:])]


def check(fr, data, **kw):
    """Replay ``data`` every way; all must agree. Returns the whole-input result."""
    results = {name: replay(fr, pieces, **kw) for name, pieces in splits(data)}
    # Fed per byte, EVENT marks every byte that ends an event: the event boundaries. Fed any
    # other way, a read says EVENT exactly when one of them falls in it.
    ends = [end for _, end in results["per-byte"]["event_reads"]]
    for name, pieces in splits(data):
        reads = results[name].pop("event_reads")
        offset, want = 0, []
        for piece in pieces:
            if any(offset < b <= offset + len(piece) for b in ends):
                want.append((offset, offset + len(piece)))
            offset += len(piece)
        if not results[name]["flags"] & ERROR:
            assert reads == want, f"{name}: EVENT on the wrong reads"
    whole = results["whole"]
    for name, result in results.items():
        assert result == whole, f"{name} differs from whole input"
    whole["events"] = ends
    return whole


def chunk(payload, ext=b""):
    return b"%x%s\r\n%s\r\n" % (len(payload), ext, payload)


SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\ntransfer-encoding: chunked\r\n\r\n"


def event(i):
    return b'data: {"id":"chatcmpl-1","choices":[{"index":0,"delta":{"content":"tok%d"}}]}\n\n' % i


# -- whole messages ---------------------------------------------------------------------------


def test_content_length_body(fr):
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n"
    r = check(fr, head + b'{"ok":true}')
    assert r["flags"] == HEAD | DONE
    assert r["head_end"] == len(head) and r["msg_end"] == r["safe"] == len(head) + 11
    assert r["status"] == 200 and r["reason"] == b"OK" and r["version"] == b"HTTP/1.1"
    assert r["headers"] == [(b"Content-Type", b"application/json"), (b"Content-Length", b"11")]
    assert r["kind"] == pure.LENGTH and r["content_length"] == 11 and r["body_bytes"] == 11
    assert r["keep_alive"] and not r["event_stream"] and r["done"]


def test_zero_length_body_ends_at_head(fr):
    r = check(fr, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert r["flags"] == HEAD | DONE and r["msg_end"] == r["head_end"]


def test_chunked_json_with_extensions_and_trailers(fr):
    # RFC 9112 7.1.1 chunk extensions (with BWS before ";") and 7.1.2 trailer fields.
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    body = chunk(b'{"a":', b" ;x=1") + chunk(b"1}", b";y") + b"0;z\r\nX-Trailer: 1\r\n\r\n"
    r = check(fr, head + body)
    assert r["flags"] == HEAD | DONE and r["kind"] == pure.CHUNKED
    assert r["msg_end"] == r["safe"] == len(head + body)
    assert r["body_bytes"] == 7 and r["content_length"] == -1


def test_vllm_event_stream_every_chunk_is_a_boundary(fr):
    body = b"".join(chunk(event(i)) for i in range(16)) + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"
    r = check(fr, SSE_HEAD + body)
    assert r["event_stream"] and r["flags"] == HEAD | DONE
    assert r["msg_end"] == len(SSE_HEAD + body)
    f = fr.ResponseFramer()
    assert f.feed(SSE_HEAD) == HEAD
    for i in range(3):
        c = chunk(event(i))
        assert f.feed(c) == EVENT and f.safe_end == len(c)  # whole events: nothing is held


def test_event_split_over_chunks_is_held_until_it_ends(fr):
    e = event(1)
    first, second = chunk(e[:10]), chunk(e[10:])
    f = fr.ResponseFramer()
    f.feed(SSE_HEAD)
    assert f.feed(first) == 0 and f.safe_end == 0  # half an event: hold all of it
    assert f.feed(second) == EVENT and f.safe_end == len(second)
    both = fr.ResponseFramer()
    both.feed(SSE_HEAD)
    both.feed(first + second + first)
    assert both.safe_end == len(first + second)  # the last boundary, not the end of the read


@pytest.mark.parametrize("ending", [b"\n\n", b"\r\r", b"\r\n\r\n"])
def test_sse_blank_line_in_every_line_ending(fr, ending):
    # WHATWG SSE: lines end in CRLF, LF or CR; an event ends at a blank line.
    f = fr.ResponseFramer()
    f.feed(SSE_HEAD)
    c = chunk(b"data: x" + ending)
    f.feed(c)
    assert f.safe_end == len(c)


def test_close_delimited_event_stream(fr):
    # RFC 9112 6.3 rule 8: no length, no chunking: the body ends when the connection closes.
    head = b"HTTP/1.0 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"
    body = b"data: a\n\ndata: b\r\n\r\ndata: c\r\rdata: partial"
    r = check(fr, head + body, eof=True)
    assert r["kind"] == pure.UNTIL_CLOSE and not r["keep_alive"] and r["flags"] == HEAD
    assert r["safe"] == len(head + body) - len(b"data: partial")
    assert r["eof"] is True and r["done_after_eof"]


def test_content_length_event_stream_cuts_at_last_blank_line(fr):
    body = b"data: a\n\ndata: b\n\n"
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n\r\n" % len(body)
    f = fr.ResponseFramer()
    assert f.feed(head + body[:12]) == HEAD | EVENT and f.safe_end == len(head) + 9
    assert f.feed(body[12:]) == DONE | EVENT and f.safe_end == f.msg_end == len(body) - 12


# -- EVENT: an SSE event ended in this read (where the relay finds a stream's usage event) ----


def test_event_flag_marks_every_event_end_and_nothing_else(fr):
    usage = b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n'
    body = chunk(event(0)) + chunk(usage[:9]) + chunk(usage[9:]) + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"
    r = check(fr, SSE_HEAD + body)
    # Three events; the usage event split over two chunks ends once, in its second chunk.
    starts = [len(SSE_HEAD) + body.find(c) for c in (chunk(event(0)), chunk(usage[9:]), chunk(b"data: [DONE]\n\n"))]
    ends = [s + len(c) for s, c in zip(starts, (chunk(event(0)), chunk(usage[9:]), chunk(b"data: [DONE]\n\n")))]
    assert r["events"] == ends  # just after each chunk's CRLF: the safe boundary
    assert r["flags"] == HEAD | DONE  # EVENT is per read, never in the sum
    # The terminating chunk and trailers end no event, so a read of them alone says nothing.
    f = fr.ResponseFramer()
    f.feed(SSE_HEAD + body[:-5])
    assert f.feed(b"0\r\n\r\n") == DONE


@pytest.mark.parametrize("kind", ["length", "close"])
def test_event_flag_without_chunked_coding(fr, kind):
    body = b"data: a\n\ndata: [DONE]\r\n\r\n"
    framing = b"Content-Length: %d\r\n" % len(body) if kind == "length" else b""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n" + framing + b"\r\n"
    r = check(fr, head + body, eof=kind == "close")
    assert r["events"] == [len(head) + 9, len(head + body)]


def test_event_flag_only_on_event_streams(fr):
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    r = check(fr, head + chunk(b"data: a\n\n") + b"0\r\n\r\n")
    assert r["events"] == []


def test_close_delimited_plain_body_passes_as_it_comes(fr):
    f = fr.ResponseFramer()
    assert f.feed(b"HTTP/1.1 200 OK\r\n\r\nabc") == HEAD and f.safe_end == 22
    assert f.feed(b"def") == 0 and f.safe_end == 3 and not f.done
    assert f.eof() and f.done and f.body_bytes == 6


def test_eof_before_the_end_is_not_clean(fr):
    f = fr.ResponseFramer()
    f.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab")
    assert f.eof() is False and not f.done
    assert fr.ResponseFramer().eof() is False


@pytest.mark.parametrize(
    "head, head_request",
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n", True),  # RFC 9110 9.3.2 HEAD
        (b"HTTP/1.1 204 No Content\r\n\r\n", False),
        (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n", False),
    ],
)
def test_responses_without_a_body(fr, head, head_request):
    r = check(fr, head, head_request=head_request)
    assert r["flags"] == HEAD | DONE and r["kind"] == pure.NONE and r["msg_end"] == len(head)
    assert r["keep_alive"]


@pytest.mark.parametrize(
    "head, keep_alive",
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", True),
        (b"HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 0\r\n\r\n", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", False),
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", True),
        (b"HTTP/1.1 200 OK\r\nConnection: te, close\r\nContent-Length: 0\r\n\r\n", False),
    ],
)
def test_keep_alive_rules(fr, head, keep_alive):
    # RFC 9112 9.3: 1.1 persists unless "close"; 1.0 only with "keep-alive".
    assert check(fr, head)["keep_alive"] is keep_alive


def test_content_length_leading_zeros_and_repeats(fr):
    # RFC 9110 8.6: a repeated identical Content-Length is the same length.
    r = check(fr, b"HTTP/1.1 200 OK\r\nContent-Length: 0003\r\ncontent-length: 3\r\n\r\nabc")
    assert r["content_length"] == 3 and r["flags"] == HEAD | DONE


def test_bytes_like_input(fr):
    data = SSE_HEAD + chunk(event(0)) + b"0\r\n\r\n"
    expected = replay(fr, [data])
    assert replay(fr, [bytearray(data)]) == expected
    assert replay(fr, [memoryview(data)]) == expected


def test_feed_after_error_keeps_the_first_error(fr):
    f = fr.ResponseFramer()
    assert f.feed(b"HTTX/1.1 200 OK\r\n\r\n") == ERROR
    first = f.error
    assert f.feed(b"more") == ERROR and f.error == first and f.started and not f.done


def test_attributes_are_writable_like_the_pure_class(fr):
    f = fr.ResponseFramer()
    f.keep_alive = False
    f.head_request = True
    assert f.keep_alive is False and f.head_request is True
    assert fr.ResponseFramer(1).head_request is True  # normalized to bool on both builds


# -- refusals: every one is an upstream fault, whatever the split ---------------------------------

H = b"HTTP/1.1 200 OK\r\n"
CHUNKED = H + b"Transfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize(
    "data, message",
    [
        (b"HTTP/2 200 OK\r\n\r\n", "invalid status line"),
        (b"ICY 200 OK\r\n\r\n", "invalid status line"),
        (b"HTTP/1.1\r\n\r\n", "invalid status line"),
        (b"HTTP/1.1 2000 OK\r\n\r\n", "invalid status code"),
        (b"HTTP/1.1 20x OK\r\n\r\n", "invalid status code"),
        (b"HTTP/1.1 099 Odd\r\n\r\n", "invalid status code"),
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n", "unexpected 101"),
        (b"HTTP/1.1 100 Continue\r\n\r\n" * 9 + H + b"\r\n", "too many interim responses"),
        (b"HTTP/1.1 200 OK\nX: 1\r\n\r\n", "bare CR, bare LF or NUL"),
        # Response splitting: a bare LF in the reason or a value would end a line downstream.
        (b"HTTP/1.1 200 OK\nSet-Cookie: x\r\n\r\n", "bare CR, bare LF or NUL"),
        (H + b"X-A: a\rb\r\n\r\n", "bare CR, bare LF or NUL"),
        (H + b"X-A: a\x00b\r\n\r\n", "bare CR, bare LF or NUL"),
        (H + b"no colon\r\n\r\n", "invalid header line"),
        (H + b": empty name\r\n\r\n", "invalid header line"),
        (H + b"Bad Name: x\r\n\r\n", "invalid header name"),
        (H + b" obs-fold: x\r\n\r\n", "invalid header name"),  # RFC 9112 5.2 obs-fold
        (H + b"Content-Length: -1\r\n\r\n", "invalid Content-Length"),
        (H + b"Content-Length: 1, 1\r\n\r\n", "invalid Content-Length"),
        (H + b"Content-Length: 1000000000000000000\r\n\r\n", "invalid Content-Length"),  # 10**18
        (H + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\n", "conflicting Content-Length"),
        # RFC 9112 6.3: Content-Length with Transfer-Encoding is a smuggling vector.
        (H + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", "both Content-Length"),
        (H + b"Transfer-Encoding: gzip\r\n\r\n", "unsupported Transfer-Encoding"),
        (H + b"Transfer-Encoding: chunked, chunked\r\n\r\n", "unsupported Transfer-Encoding"),
        (H + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", "unsupported Transfer"),
        (CHUNKED + b"zz\r\n", "invalid chunk size"),
        (CHUNKED + b" 5\r\nhello\r\n", "invalid chunk size"),
        (CHUNKED + b"5 x\r\nhello\r\n", "invalid chunk size"),
        (CHUNKED + b"\r\n", "invalid chunk size"),
        (CHUNKED + b"1" * 16 + b"\r\n", "invalid chunk size"),  # would overflow 64 bits
        (CHUNKED + b"5\nhello\r\n", "bare LF"),
        (CHUNKED + b"5\r\nhello\n0\r\n\r\n", "bare LF"),
        (CHUNKED + b"5\r\nhelloXY\r\n", "missing CRLF after chunk data"),
        (CHUNKED + b"5\r\nhelloX\r\n", "missing CRLF after chunk data"),
        (CHUNKED + b"0\r\n\r\nHTTP/1.1 200 OK\r\n", "bytes after the end"),  # smuggled response
        (H + b"Content-Length: 2\r\n\r\nabc", "bytes after the end"),
        (b"HTTP/1.1 204 No Content\r\n\r\nx", "bytes after the end"),
    ],
)
def test_refusals(fr, data, message):
    r = check(fr, data)
    assert r["flags"] & ERROR and message in r["error"], r["error"]
    assert not r["done"]


@pytest.mark.parametrize("interim", [
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n",
    b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
])
def test_interim_responses_are_dropped_before_the_final_one(fr, interim):
    # RFC 9110 15.2: a client must accept 1xx responses before the final one. The proxy forwards
    # none of them (it sent the request whole), and the final head's offset counts past them.
    final = H + b"Content-Length: 2\r\nX-Final: 1\r\n\r\nhi"
    r = check(fr, interim + final)
    assert r["status"] == 200 and r["done"] and not r["flags"] & ERROR
    assert r["headers"] == [(b"Content-Length", b"2"), (b"X-Final", b"1")]
    assert r["head_end"] == len(interim) + len(final) - 2 and r["msg_end"] == len(interim) + len(final)


def test_an_interim_response_alone_is_not_a_response(fr):
    r = check(fr, b"HTTP/1.1 100 Continue\r\n\r\n", eof=True)
    assert not r["flags"] and r["status"] == 0 and not r["started"] and r["eof"] is False


def test_limits_hold_the_same_whole_or_split(fr):
    # A head of exactly MAX_HEAD bytes (its CRLFCRLF included) passes; one byte more does not,
    # whether it arrives in one read or trickles in a byte at a time.
    pad = pure.MAX_HEAD - len(H) - len(b"X-Pad: \r\n\r\n")
    assert check(fr, H + b"X-Pad: " + b"a" * pad + b"\r\n\r\n")["flags"] == HEAD
    assert "head too large" in check(fr, H + b"X-Pad: " + b"a" * (pad + 1) + b"\r\n\r\n")["error"]
    assert "head too large" in check(fr, H + b"X-Pad: " + b"a" * pure.MAX_HEAD)["error"]  # never ends
    # The chunk-size line (extensions and CR included) may be MAX_SIZE_LINE bytes long.
    ext = b"e" * (pure.MAX_SIZE_LINE - len(b"5;\r"))
    assert check(fr, CHUNKED + b"5;" + ext + b"\r\nhello\r\n0\r\n\r\n")["flags"] == HEAD | DONE
    assert "chunk-size line too long" in check(fr, CHUNKED + b"5;" + ext + b"e\r\nhello\r\n")["error"]
    trailer = CHUNKED + b"0\r\n" + b"X-T: " + b"t" * pure.MAX_TRAILER + b"\r\n\r\n"
    assert "trailer section too large" in check(fr, trailer)["error"]


@pytest.mark.parametrize("head_request", [False, True])
def test_new_framer_frames_as_a_constructed_one(fr, head_request):
    """``new_framer`` (the relay's: compiled, made without a call through ``__init__``) starts
    where ``ResponseFramer(...)`` does and frames a response the same, read after read."""
    reads = [b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
             b"6\r\ndata: \r\n", b"4\r\nx\n\n\r\n0\r\n\r\n"]
    made, built = fr.new_framer(head_request), fr.ResponseFramer(head_request)
    assert type(made) is type(built)
    fields = ("head_request", "status", "version", "reason", "kind", "keep_alive", "event_stream", "content_length",
              "error", "head_end", "safe_end", "msg_end", "body_bytes", "raw_head", "headers")
    for data in reads:
        assert made.feed(data) == built.feed(data)
        assert [getattr(made, f) for f in fields] == [getattr(built, f) for f in fields]
