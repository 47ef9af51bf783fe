"""The response head copied from the upstream's bytes must be the head rebuilt field by field.

``heads.client_head`` copies runs of the framer's ``raw_head`` (the head as received, where it
is written just as its parsed fields would be) between the fields it drops; ``_rebuilt_head``
writes the head from ``status``, ``reason`` and ``headers``, and is the rule. Here both run on
many heads (vLLM's, with fields added, names in any case, duplicated, Connection options,
spacing that makes the raw head unusable, HTTP/1.0, no reason) and every combination of the
caller's flags, through each build of the framer, fed whole and cut in two; and the framer's
``raw_head`` is checked against its own fields. ``upstream_head`` is held to the version it
replaced (kept below) the same way.
"""

import itertools
import random

import pytest
from builds import native_or_skip

import _speedups
from proxy.http import heads

LOAD = b"endpoint-load-metrics: TEXT named_metrics.kv_cache_usage_perc=0.01, named_metrics.num_requests_waiting=0"
VLLM = [b"date: Thu, 03 Dec 2026 10:00:00 GMT", b"server: uvicorn", b"content-type: application/json"]
# Fields a head may also carry: each is added, in some case, to some of the heads below.
MORE = [
    LOAD,
    b"x-request-id: theirs",
    b"x-ratelimit-limit-requests: 100",
    b"X-RateLimit-Remaining-Tokens: 5",
    b"x-ratelimit-: 1",
    b"keep-alive: timeout=5",
    b"proxy-connection: keep-alive",
    b"proxy-authenticate: Basic",
    b"proxy-authorization: x",
    b"te: trailers",
    b"trailer: x-checksum",
    b"upgrade: h2c",
    b"x-hop: 1",
    b"x-other: 2",
    b"x-empty: ",
    b"endpoint-load-metrics-format: text",
    b"endpoint-load-metricz: no",
    b"connectio: no",
    b"vary: accept-encoding",
]
CONNECTION = [b"connection: keep-alive", b"Connection: close, X-Hop", b"connection: x-other", b"CONNECTION: content-length, te"]
FLAGS = list(itertools.product((False, True), repeat=4))  # close, dechunk, asked_load, rechunk
EXTRA = (b"", b"x-ratelimit-limit-requests: 7\r\nx-ratelimit-remaining-requests: 6\r\n")


def framers():
    out = [_speedups.pure("framing")]
    if _speedups.native("framing") is not None or _speedups.EXPECT_NATIVE:
        out.append(native_or_skip("framing"))
    return out


def recased(line, rng):
    name, _, value = line.partition(b":")
    pick = rng.randrange(4)
    name = name if pick == 0 else name.upper() if pick == 1 else name.title() if pick == 2 else name.swapcase()
    return name + b":" + value


def respaced(line, rng):
    """The same field, written in one of the ways that leave raw_head unusable (or not)."""
    name, _, value = line.partition(b": ")
    return name + rng.choice((b": ", b":", b":  ", b":\t", b": ")) + value + rng.choice((b"", b"", b" ", b"\t"))


def random_heads(count, seed):
    rng = random.Random(seed)
    for _ in range(count):
        lines = list(VLLM)
        body = rng.choice((b"content-length: 2", b"transfer-encoding: chunked", b"Transfer-Encoding: chunked", b""))
        if body:
            lines.append(body)
        lines += rng.sample(MORE, rng.randrange(0, 6))
        if rng.random() < 0.2:
            lines.append(rng.choice(CONNECTION))
        if rng.random() < 0.2:
            lines.append(rng.choice(lines[:3]))  # a field twice
        rng.shuffle(lines)
        lines = [recased(line, rng) if rng.random() < 0.3 else line for line in lines]
        if rng.random() < 0.15:
            i = rng.randrange(len(lines))
            lines[i] = respaced(lines[i], rng)
        status = rng.choice((b"HTTP/1.1 200 OK", b"HTTP/1.1 200 OK", b"HTTP/1.1 404 Not Found", b"HTTP/1.0 200 OK",
                             b"HTTP/1.1 200", b"HTTP/1.1 200 ", b"HTTP/1.1 503 Service  Unavailable "))
        yield b"\r\n".join([status, *lines]) + b"\r\n\r\n"


FIXED = [
    b"HTTP/1.1 200 OK\r\n" + b"\r\n".join(VLLM) + b"\r\ncontent-length: 2\r\n" + LOAD + b"\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n" + b"\r\n".join(VLLM) + b"\r\ntransfer-encoding: chunked\r\n" + LOAD + b"\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n" + LOAD + b"\r\n" + b"\r\n".join(VLLM) + b"\r\ncontent-length: 2\r\n\r\n",  # report first
    b"HTTP/1.1 200 OK\r\n" + LOAD + b"\r\n" + LOAD + b"\r\n\r\n",  # twice, nothing else
    b"HTTP/1.1 204 No Content\r\n\r\n",  # no fields
    b"HTTP/1.1 200 OK\r\nkeep-alive: 1\r\nte: x\r\nx-request-id: a\r\nx-request-id: b\r\n\r\n",  # every field dropped
    b"HTTP/1.1 200 OK\r\nX-Hop: 1\r\nConnection: x-hop\r\nContent-Length: 0\r\n\r\n",  # a name before its Connection
]


def check(module, head):
    """client_head equals _rebuilt_head for ``head`` under every flag; True where it copied."""
    for pieces in ([head], [head[: len(head) // 2], head[len(head) // 2 :]]):
        f = module.ResponseFramer(False)
        for piece in pieces:
            f.feed(piece)
        assert f.error == "" and f.status >= 200, (head, f.error)
        copied = f.raw_head is not None
        for (close, dechunk, asked_load, rechunk), extra, request_id in itertools.product(FLAGS, EXTRA, (b"", b"rid-1")):
            args = (f, request_id, close, dechunk, asked_load, rechunk, extra)
            rebuilt = heads._rebuilt_head(*args)
            assert heads.client_head(*args) == rebuilt == client_head_before(*args), (head, args[1:])
            # The first body bytes joined after the head: the same head, then them.
            assert heads.client_head(*args, b"data: {}\n\n") == (rebuilt[0] + b"data: {}\n\n", rebuilt[1])
            # ... or from where they start in a read that came with the head (the relay's whole responses).
            assert heads.client_head(*args, head + b"data: {}\n\n", len(head)) == (rebuilt[0] + b"data: {}\n\n",
                                                                                 rebuilt[1])
            assert heads._rebuilt_head(*args, b"x") == (rebuilt[0] + b"x", rebuilt[1])
    return copied


@pytest.mark.parametrize("module", framers(), ids=lambda m: m.__name__)
def test_client_head_copy_is_the_rebuilt_head(module):
    copied = [check(module, head) for head in FIXED + list(random_heads(400, 20261204))]
    assert copied[: len(FIXED)] == [True] * len(FIXED)
    assert sum(copied) > 200, "most of the heads must take the copy"


def plain(f):
    """The head as client_head would write f's fields, none dropped."""
    lines = [b"HTTP/1.1 %d %s" % (f.status, f.reason)] + [b"%s: %s" % field for field in f.headers]
    return b"\r\n".join(lines) + b"\r\n"


@pytest.mark.parametrize("module", framers(), ids=lambda m: m.__name__)
def test_raw_head_is_the_head_its_fields_write_or_none(module):
    seen = set()
    for head in FIXED + list(random_heads(600, 7)):
        f = module.ResponseFramer(False)
        f.feed(head + b"xx")
        assert f.raw_head is None or f.raw_head == plain(f), head
        # None only where the head is not written that way: another version, no reason, spacing.
        assert (f.raw_head is None) == (head[: head.index(b"\r\n\r\n") + 2] != plain(f)), head
        seen.add(f.raw_head is None)
    assert seen == {True, False}


def test_raw_head_after_interim_and_a_head_cut_anywhere():
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n"
    for module in framers():
        for cut in range(1, len(head)):
            f = module.ResponseFramer(False)
            f.feed(b"HTTP/1.1 100 Continue\r\n\r\n" + head[:cut])
            f.feed(head[cut:] + b"{}")
            assert f.raw_head == head[:-2], (module.__name__, cut)


# -- what the heads were before the copy and the merged parts, as the reference ---------------


def client_head_before(framer, request_id, close, dechunk, asked_load=True, rechunk=False, extra=b""):
    parts = [b"HTTP/1.1 %d " % framer.status, framer.reason, b"\r\n"]
    named = None
    has_id = False
    report = None
    drop = heads.HOP_BY_HOP if dechunk else heads._RESPONSE_DROP_CHUNKED
    for name, value in framer.headers:
        lname = name.lower()
        if lname in drop:
            if lname == b"connection" and named is None:
                named = _named_before(framer.headers)
            continue
        if extra and lname.startswith(b"x-ratelimit-"):
            continue
        if lname == b"x-request-id":
            has_id = True
        elif lname == heads.LOAD_REPORT:
            report = value
            if not asked_load:
                continue
        parts += (name, b": ", value, b"\r\n")
    if named:
        named -= heads._FRAMING
        if named:
            parts = parts[:3] + _drop_before(parts, 3, named)
    if request_id and not has_id:
        parts += (b"x-request-id: ", request_id, b"\r\n")
    if rechunk:
        parts.append(b"transfer-encoding: chunked\r\n")
    if extra:
        parts.append(extra)
    parts.append(b"connection: close\r\n\r\n" if close else b"\r\n")
    return b"".join(parts), report


def _drop_before(parts, start, named):
    out = []
    for i in range(start, len(parts), 4):
        if parts[i].lower() not in named:
            out += parts[i : i + 4]
    return out


def upstream_head_before(
    method, target, headers, host, forwarded_for, request_id, body_len, extra=(), ask_load=False, trusted=True
):
    parts = [method, b" ", target, b" HTTP/1.1\r\nhost: ", host, b"\r\n"]
    named = None
    xff = None
    for name, value in headers:
        if name in heads.REQUEST_DROP:
            if name == b"connection" and named is None:
                named = _named_before(headers)
            continue
        if name in heads.FORWARDING:
            if not trusted:
                continue
            if name == b"x-forwarded-for":
                xff = value if xff is None else xff + b", " + value
                continue
        parts += (name, b": ", value, b"\r\n")
    if named:
        parts = parts[:6] + _drop_before(parts, 6, named)
        if b"x-forwarded-for" in named:
            xff = None
    xff = forwarded_for if xff is None else xff + b", " + forwarded_for
    parts += (b"x-forwarded-for: ", xff, b"\r\nx-forwarded-proto: http\r\nx-request-id: ", request_id, b"\r\n")
    for name, value in extra:
        parts += (name, b": ", value, b"\r\n")
    if ask_load:
        parts += (b"endpoint-load-metrics-format", b": text\r\n")
    if body_len or method not in (b"GET", b"HEAD", b"DELETE", b"OPTIONS"):
        parts.append(b"content-length: %d\r\n\r\n" % body_len)
    else:
        parts.append(b"\r\n")
    return b"".join(parts)


def _named_before(headers):
    tokens = set()
    for name, value in headers:
        if name.lower() == b"connection":
            heads.connection_tokens(value, tokens)
    return tokens


REQUEST_FIELDS = [
    (b"host", b"p"), (b"content-type", b"application/json"), (b"content-length", b"97"), (b"user-agent", b"x/1"),
    (b"authorization", b"Bearer k"), (b"accept", b"*/*"), (b"connection", b"keep-alive"),
    (b"connection", b"close, x-custom"), (b"connection", b"x-forwarded-for, TE"), (b"keep-alive", b"5"),
    (b"te", b"trailers"), (b"transfer-encoding", b"chunked"), (b"expect", b"100-continue"),
    (b"x-forwarded-proto", b"https"), (b"x-request-id", b"theirs"), (b"x-forwarded-for", b"1.2.3.4"),
    (b"x-forwarded-for", b"5.6.7.8"), (b"forwarded", b"for=1.2.3.4"), (b"x-real-ip", b"1.2.3.4"),
    (b"x-forwarded-host", b"h"), (b"x-forwarded-port", b"443"), (b"x-custom", b"1"), (b"traceparent", b"00-a-b-01"),
    (b"Connection", b"x-custom"), (b"X-Custom", b"upper"), (b"user-agent", b""),
]


def test_upstream_head_is_what_it_was():
    rng = random.Random(4)
    for _ in range(3000):
        fields = rng.sample(REQUEST_FIELDS, rng.randrange(0, 9))
        extra = tuple(rng.sample(((b"authorization", b"Bearer ours"), (b"traceparent", b"00-c-d-01")), rng.randrange(3)))
        args = (
            rng.choice((b"POST", b"GET", b"HEAD", b"DELETE", b"OPTIONS", b"PUT")), rng.choice((b"/v1/chat/completions", b"/")),
            fields, rng.choice((b"10.0.0.9:8000", b"h:1")), rng.choice((b"127.0.0.1", b"::1")), b"rid",
            rng.choice((0, 0, 5, 12345)), extra, rng.random() < 0.5, rng.random() < 0.5,
        )
        assert heads.upstream_head(*args) == upstream_head_before(*args), args
        body = b"{}" * args[6]
        assert heads.upstream_head(*args, body=body) == upstream_head_before(*args) + body, args


def test_upstream_head_from_written_fields_is_what_it_was():
    # A plain request's fields come already written (plainrequest.Fields.forwarded): the head
    # then goes in one C write on the native build; each method, length, ask and body as before.
    rng = random.Random(5)
    kept = [(b"content-type", b"application/json"), (b"user-agent", b"OpenAI/Python 1.0"), (b"x-a", b"")]
    for _ in range(2000):
        fields = rng.sample(kept, rng.randrange(0, 4))
        written = b"".join(b"\r\n" + name + b": " + value for name, value in fields)
        args = (
            rng.choice((b"10.0.0.9:8000", b"[::1]:8000")), rng.choice((b"127.0.0.1", b"::1")),
            rng.choice((b"rid", b"", b"x" * 200)), rng.choice((0, 0, 5, 9, 10, 12345, 10**12)), (),
            rng.random() < 0.5, rng.random() < 0.5,
        )
        method = rng.choice((b"POST", b"GET", b"HEAD", b"DELETE", b"OPTIONS", b"PUT", b"PATCH"))
        target = rng.choice((b"/v1/chat/completions", b"/", b"/v1/models?x=%20"))
        body = rng.choice((b"", b"{}", b"x" * 100))
        assert heads.upstream_head(method, target, written, *args, body=body) == \
            upstream_head_before(method, target, fields, *args) + body, (method, target, fields, args)


def test_heads_past_their_caches_full():
    # Names and peers are remembered up to a bound: past it, each is worked out again. 600
    # new ones of each, more than any cache holds, must come out as before.
    for i in range(600):
        name = b"x-name-%d" % i
        fields = [(b"content-type", b"application/json"), (name, b"v"), (b"connection", b"x-name-%d" % (i + 1))]
        peer = b"10.9.%d.%d" % divmod(i, 256)
        args = (b"POST", b"/v1/x", fields, b"h%d:1" % i, peer, b"rid", 3, (), i % 2 == 0, False)
        assert heads.upstream_head(*args) == upstream_head_before(*args)
    for module in framers():
        for i in range(600):
            head = b"HTTP/1.1 200 OK\r\nX-Name-%d: v\r\nX-RateLimit-%d: 1\r\ncontent-length: 0\r\n\r\n" % (i, i)
            f = module.ResponseFramer(False)
            f.feed(head)
            for extra in EXTRA:
                args = (f, b"rid", False, False, False, False, extra)
                assert heads.client_head(*args) == client_head_before(*args)
