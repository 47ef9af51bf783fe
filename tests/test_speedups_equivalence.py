"""Property tests: the Cython build behaves exactly like the pure-Python specification.

Hypothesis makes upstream responses, valid ones (Content-Length, chunked with extensions and
trailers, close-delimited; JSON or event streams in every SSE line ending) and broken ones (a
valid response with bytes inserted, removed, replaced or cut off), splits them at random byte
boundaries, and feeds the same reads to both builds. After every read both must report the same
flags, offsets and head fields, and fail with the same error; at the end, EOF must be judged the
same. A second property holds the specification itself to its promise that where the bytes were
split does not matter.
"""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import _speedups
from builds import native_or_skip

pure = _speedups.pure("framing")
native = native_or_skip("framing")  # at import: every property here needs both builds

HEAD, DONE, ERROR = pure.HEAD, pure.DONE, pure.ERROR
SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- responses ------------------------------------------------------------------------------

line_ending = st.sampled_from([b"\n", b"\r", b"\r\n"])


@st.composite
def sse_body(draw):
    events = []
    for _ in range(draw(st.integers(0, 6))):
        end = draw(line_ending)
        text = draw(st.binary(max_size=40)).replace(b"\r", b"").replace(b"\n", b"")
        events.append(b"data: " + text + end + end)
    if draw(st.booleans()):
        events.append(b"data: [DONE]\n\n")
    if draw(st.booleans()):
        events.append(b"data: partial")  # an event the upstream never finished
    return b"".join(events)


@st.composite
def chunked(draw, body):
    out = []
    pos = 0
    while pos < len(body):
        size = draw(st.integers(1, max(1, len(body) - pos)))
        ext = draw(st.sampled_from([b"", b";a=1", b" ;b", b"\t;c=\"d\""]))
        hexs = b"%x" % size if draw(st.booleans()) else b"%X" % size
        out.append(hexs + ext + b"\r\n" + body[pos : pos + size] + b"\r\n")
        pos += size
    trailer = draw(st.sampled_from([b"", b"X-Usage: 12\r\n", b"A: 1\r\nB: 2\r\n"]))
    out.append(b"0\r\n" + trailer + b"\r\n")
    return b"".join(out)


@st.composite
def response(draw):
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]))
    status = draw(st.sampled_from([200, 200, 200, 201, 204, 304, 404, 500, 503]))
    reason = draw(st.sampled_from([b"OK", b"", b"Service Unavailable", b"x y z"]))
    sse = draw(st.booleans())
    body = draw(sse_body()) if sse else draw(st.binary(max_size=300))
    framing = draw(st.sampled_from(["length", "chunked", "close"]))
    headers = [b"content-type: text/event-stream" if sse else b"Content-Type: application/json"]
    if framing == "length":
        headers.append(b"Content-Length: %d" % len(body))
        payload = body
    elif framing == "chunked":
        headers.append(b"Transfer-Encoding: chunked")
        payload = draw(chunked(body))
    else:
        payload = body
    extra = draw(
        st.lists(
            st.sampled_from(
                [b"Connection: close", b"Connection: keep-alive", b"X-Request-Id: abc", b"server: vllm",
                 b"Date: Sun, 29 Nov 2026 22:41:35 GMT", b"Keep-Alive: timeout=5"]
            ),
            max_size=3,
        )
    )
    order = draw(st.permutations(headers + extra))
    head = b"%s %d %s\r\n" % (version, status, reason) + b"".join(h + b"\r\n" for h in order) + b"\r\n"
    return head + payload


@st.composite
def mutated(draw):
    data = draw(response())
    body_at = data.find(b"\r\n\r\n") + 4  # most mutations go to the body, where framing is
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["insert", "delete", "replace", "truncate", "append"]))
        in_body = draw(st.integers(0, 4)) > 0 and body_at < len(data)
        at = draw(st.integers(body_at, len(data)) if in_body else st.integers(0, len(data)))
        junk = draw(st.sampled_from([b"\r", b"\n", b"\r\n", b"\x00", b":", b" ", b";", b"0", b"f", b"z"]))
        if kind == "insert":
            data = data[:at] + junk + data[at:]
        elif kind == "delete":
            data = data[:at] + data[at + 1 :]
        elif kind == "replace":
            data = data[:at] + junk + data[at + 1 :]
        elif kind == "truncate":
            data = data[:at]
        else:
            data = data + junk
    return data


@st.composite
def split(draw, data_strategy):
    data = draw(data_strategy)
    if not data:
        return data, [data]
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(data) - 1)), max_size=20)))
    bounds = [0, *[c for c in cuts if c < len(data)], len(data)]
    return data, [data[a:b] for a, b in zip(bounds, bounds[1:])]


# (head_request,): mostly a plain request, so that bodies get framed.
options = st.sampled_from([(False,), (False,), (False,), (True,)])

# -- comparing --------------------------------------------------------------------------------


def snapshot(f, flags):
    return (
        flags, f.head_end, f.safe_end, f.msg_end, f.error, f.status, f.version, f.reason,
        list(f.headers), f.raw_head, f.kind, f.keep_alive, f.event_stream, f.content_length, f.body_bytes,
        f.done, f.started,
    )


def trace(fr, pieces, opts):
    f = fr.ResponseFramer(*opts)
    steps = []
    for piece in pieces:
        steps.append(snapshot(f, f.feed(piece)) + (tuple(f.unit_of(at) for at in range(-1, len(piece) + 1)),))
    steps.append(("eof", f.eof(), f.done))
    return steps


def absolute(fr, pieces, opts):
    """What a relay learns, in offsets from the start of the response."""
    f = fr.ResponseFramer(*opts)
    offset, seen, safe, marks = 0, 0, 0, {}
    for piece in pieces:
        flags = f.feed(piece)
        seen |= flags
        if flags & HEAD:
            marks["head"] = offset + f.head_end
        if flags & DONE:
            marks["msg"] = offset + f.msg_end
        if flags & ERROR:
            break
        if f.safe_end:
            safe = max(safe, offset + f.safe_end)
        offset += len(piece)
    return seen, marks, None if seen & ERROR else safe, f.error, f.body_bytes, snapshot(f, 0)[5:]


@SETTINGS
@given(split(response()), options)
def test_valid_responses_identical(case, opts):
    data, pieces = case
    expected = trace(pure, pieces, opts)
    assert trace(native, pieces, opts) == expected
    flags, status = expected[-2][0], expected[-2][5]
    if not opts[0] and status not in (204, 304):  # those must not carry the body we gave them
        assert not flags & ERROR, expected[-2]


@SETTINGS
@given(split(mutated()), options)
def test_broken_responses_identical(case, opts):
    data, pieces = case
    assert trace(native, pieces, opts) == trace(pure, pieces, opts)


@SETTINGS
@given(split(st.one_of(response(), mutated())), options)
def test_split_does_not_matter(case, opts):
    data, pieces = case
    for fr in (pure, native):
        assert absolute(fr, pieces, opts) == absolute(fr, [data], opts)


def _chunk_starts(data):
    """Where each chunk of a valid chunked response starts (its size line), by walking it."""
    pos = data.find(b"\r\n\r\n") + 4
    starts = []
    while True:
        starts.append(pos)
        eol = data.index(b"\r\n", pos)
        size = int(data[pos:eol].split(b";")[0].strip(), 16)
        if size == 0:
            return starts
        pos = eol + 2 + size + 2


@SETTINGS
@given(split(response()), options)
def test_unit_of_names_the_chunk_that_holds_an_offset(case, opts):
    # Where the framer answers, its answer is where that chunk starts, in the read: the relay
    # holds an event stream's end from there (include_usage taken out) rather than walk again.
    data, pieces = case
    f = pure.ResponseFramer(*opts)
    f.feed(b"")
    starts = _chunk_starts(data) if b"chunked" in data.split(b"\r\n\r\n")[0] and not opts[0] else []
    offset = 0
    for piece in pieces:
        f.feed(piece)
        for at in range(len(piece)):
            got = f.unit_of(at)
            if got >= 0:
                assert f.event_stream and starts
                assert got + offset == max(s for s in starts if s <= at + offset), (at, offset)
        offset += len(piece)


def test_unit_of_in_one_read():
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    events = [b"data: %d\n\n" % i for i in range(6)]
    body = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n"
    starts = _chunk_starts(head + body)
    for fr in (pure, native):
        f = fr.ResponseFramer()
        f.feed(head + body)
        assert [f.unit_of(s) for s in starts[-4:]] == starts[-4:]  # the last four chunks'
        assert f.unit_of(starts[-4] - 1) == -1  # before them: the relay walks
        assert f.unit_of(starts[-1] + 3) == starts[-1]
        f = fr.ResponseFramer()
        f.feed(head + body[:3])  # a size line cut: the chunk started in the read before
        f.feed(body[3:len(body) // 2])
        assert f.unit_of(0) == -1

