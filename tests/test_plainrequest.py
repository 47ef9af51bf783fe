"""The plain-request shortcut (proxy/http/plainrequest.py) against llhttp's path: every
generated request, alone and pipelined, read with the shortcut and without it gives the same
requests and the same refusal; the shortcut takes the common shapes (or it saves nothing) and
declines everything outside its subset. On both builds: the pure run reads with the
interpreted shortcut, the native run with the compiled one."""

import random

import pytest

from proxy.http import plainrequest
from proxy.http.plainrequest import Bounds, read_plain
from test_request import LIMITS, Sink
from proxy.http.errors import ClientError
from proxy.http.request import RequestReader

SDK_HEAD = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nAccept-Encoding: gzip, deflate\r\n"
    b"Connection: keep-alive\r\nAccept: application/json\r\nContent-Type: application/json\r\n"
    b"User-Agent: OpenAI/Python 1.99.0\r\nX-Stainless-Lang: python\r\nX-Stainless-Retry-Count: 0\r\n"
    b"Authorization: Bearer sk-x\r\nContent-Length: 2\r\n\r\n{}"
)


def read(data, fast, cut=None):
    """(requests, refusal status or None) of ``data`` fed whole or in two at ``cut``."""
    sink = Sink()
    reader = RequestReader(LIMITS, sink, clock=lambda: 0.0)
    reader.fast = fast
    try:
        if cut is None:
            reader.feed(data)
        else:
            reader.feed(data[:cut])
            reader.feed(data[cut:])
    except ClientError as err:
        return sink.events, err.status
    return sink.events, None


NAMES = [b"Host", b"host", b"HOST", b"Content-Length", b"content-length", b"X-Request-Id", b"Connection",
         b"Accept", b"X-Session-Id", b"Transfer-Encoding", b"Expect", b"Upgrade", b"Proxy-Connection",
         b"Endpoint-Load-Metrics-Format", b"TE", b"X-A!#$%&'*+-.^_`|~9", b"Content-Type", b"Bad Name", b""]
VALUES = [b"p", b"", b" spaced ", b"\tx", b"keep-alive", b"Keep-Alive", b"close", b"upgrade", b"chunked",
          b"100-continue", b"h2c", b"req-1_2.3", b"bad id", b"a" * 250, b"obs\x80\xff", b"ctl\x7f", b"ctl\x01",
          b"5", b"05", b"+5", b"5 ", b"999", b"99999999999999999999", b"text",
          # past eight bytes, a byte that is no value's (or is, HTAB and obs-text) further in
          b"x" * 20 + b"\x01" + b"y" * 5, b"z" * 17 + b"\x7f", b"\x80" * 16 + b"\x1f", b"w" * 9 + b"\tq" * 6,
          b"\xff" * 24, b"v" * 15 + b"\x00"]


CLEAN_NAMES = [b"Accept", b"X-Session-Id", b"Content-Type", b"User-Agent", b"X-Request-Id", b"Connection",
               b"Endpoint-Load-Metrics-Format"]
CLEAN_VALUES = [b"p", b"", b"keep-alive", b"req-1_2.3", b"application/json", b"a b\tc ", b"obs\x80", b"r" * 200,
                b"r" * 201, b"bad id", b"Keep-Alive", b"close"]


def generated(rng):
    """A request: half of them clean (mostly in the subset, near its edges), the rest drawn
    from anything, hostile included."""
    clean = rng.random() < 0.5
    pick = (lambda clean_choices, any_choices: rng.choice(clean_choices if clean else any_choices))
    method = pick([b"GET", b"POST"], [b"GET", b"POST", b"PUT", b"HEAD", b"get", b"OPTIONS"])
    target = pick([b"/v1/chat/completions", b"/v1/models?x=1&y=%20", b"/a[b]@!$&'()*+,;=", b"/"],
                  [b"/#frag", b"http://h/v1/models", b"*", b"/" + b"x" * 250, b'/"q"', b"/v1/models"])
    version = pick([b"HTTP/1.1"], [b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"http/1.1"])
    fields = []
    if rng.random() < (0.97 if clean else 0.9):
        fields.append(b"Host: p")
    for _ in range(rng.randrange(0, 12)):
        name = pick(CLEAN_NAMES, NAMES)
        value = pick(CLEAN_VALUES, VALUES)
        sep = pick([b": ", b":", b":  ", b":\t"], [b": ", b":", b" : ", b": \t"])
        fields.append(name + sep + value)
    body = rng.choice([b"", b"{}", b'{"model":"tiny"}', b"x" * 150])
    if rng.random() < 0.15:  # a length llhttp refuses or reads its own way
        fields.append(b"Content-Length:" + rng.choice([b" ", b" 05", b" +5", b" 5 ", b"  2", b" 1e1", b" -0", b" 99999999999999999"]))
    elif rng.random() < 0.7 and not any(f.lower().startswith(b"content-length") for f in fields):
        fields.append(b"Content-Length: %d" % (len(body) + pick([0], [0, 0, -1, 1])))
    eol = pick([b"\r\n"], [b"\r\n"] * 12 + [b"\n"])
    head = method + b" " + target + b" " + version + b"\r\n" + b"".join(f + eol for f in fields) + b"\r\n"
    return head + body


def test_plain_reads_give_what_llhttp_gives():
    rng = random.Random(22)
    taken = 0
    for i in range(3000):
        data = generated(rng)
        if rng.random() < 0.3:
            data += generated(rng)  # pipelined: the second read after the first, or by llhttp
        taken += read_plain(data, 0, Bounds(LIMITS)) is not None
        slow = read(data, False)
        assert read(data, True) == slow, (i, data)
        cut = rng.randrange(0, len(data) + 1)
        assert read(data, True, cut) == slow, (i, data, cut)
    assert taken > 300  # the generator reaches the subset often enough for this to test it


@pytest.mark.parametrize("data", [
    SDK_HEAD,
    b"GET /v1/models HTTP/1.1\r\nHost: p\r\n\r\n",
    b"POST /v1/completions HTTP/1.1\r\nhost: p\r\ncontent-length: 0\r\nx-request-id: r1\r\n\r\n",
])
def test_the_common_shapes_are_plain(data):
    plain = read_plain(data, 0, Bounds(LIMITS))
    assert plain is not None and plain[0] == len(data)
    assert read(data, True) == read(data, False)


@pytest.mark.parametrize("change", [
    (b"HTTP/1.1\r\n", b"HTTP/1.0\r\n"), (b"Connection: keep-alive", b"Connection: close"),
    (b"Content-Length: 2", b"Transfer-Encoding: chunked"), (b"Accept:", b"Expect: 100-continue\r\nAccept:"),
    (b"Host: 127.0.0.1:8080\r\n", b""), (b"Accept:", b"Host: again\r\nAccept:"), (b"{}", b"{"),
    (b"POST /v1", b"POST http://h/v1"), (b"Accept: ", b"Accept:  \t"), (b"gzip, deflate", b"gzip\x01"),
])
def test_what_is_not_plain_goes_to_llhttp(change):
    data = SDK_HEAD.replace(*change)
    assert data != SDK_HEAD
    assert read_plain(data, 0, Bounds(LIMITS)) is None or change[0] == b"Accept: "
    assert read(data, True) == read(data, False)


def test_the_compiled_build_takes_it():
    import _speedups

    assert plainrequest.FAST == (not _speedups.PURE and _speedups.native("framing") is not None
                                 and not plainrequest.__file__.endswith(".py"))


FORWARD_NAMES = [b"Accept", b"X-Forwarded-For", b"x-forwarded-for", b"Forwarded", b"X-Real-IP", b"X-Forwarded-Host",
                 b"X-Forwarded-Port", b"X-Forwarded-Proto", b"Keep-Alive", b"Proxy-Authorization", b"X-Request-Id",
                 b"Authorization", b"TraceParent", b"X-Stainless-OS", b"X-Custom-Name", b"Endpoint-Load-Metrics-Format",
                 b"Connection", b"Content-Type", b"A"]


def test_fields_go_upstream_as_the_field_by_field_head_writes_them():
    """A plain request's fields, forwarded in one walk over the client's bytes
    (``Fields.forwarded``), make the upstream head that ``heads.upstream_head`` writes from
    the same fields as a list, from a trusted peer and from anyone else; and, iterated, they
    are what llhttp's path reads."""
    from proxy.http.heads import upstream_head

    rng = random.Random(7)
    checked = {True: 0, False: 0}
    for i in range(2000):
        fields = [b"Host: p"] + [
            rng.choice(FORWARD_NAMES) + rng.choice([b": ", b":", b":\t ", b":  "])
            + rng.choice([b"v", b"", b"Keep-Alive", b"1.2.3.4", b"a b\tc ", b"obs\x80", b"r-1"])
            for _ in range(rng.randrange(0, 34))  # past 16 (two bits each: 32 of a 64-bit word) and 32
        ]
        body = rng.choice([b"", b"{}"])
        fields.append(b"Content-Length: %d" % len(body))
        rng.shuffle(fields)
        data = b"POST /v1/chat/completions HTTP/1.1\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n" + body
        plain = read_plain(data, 0, Bounds(LIMITS))
        if plain is None:  # a Connection other than keep-alive, say
            continue
        got = plain[3]
        assert tuple(got) == read(data, False)[0][0][3], (i, data)
        pairs = list(got)
        for trusted in (True, False):
            forwarded = got.forwarded(trusted)
            if forwarded is None:  # X-Forwarded-For from a trusted peer: extended, field by field
                assert trusted and any(name == b"x-forwarded-for" for name, _ in pairs)
                continue
            checked[trusted] += 1
            args = (b"10.0.0.9:8000", b"127.0.0.1", b"req-1", len(body), (), False, trusted, body)
            assert upstream_head(b"POST", b"/v1/chat/completions", forwarded, *args) == upstream_head(
                b"POST", b"/v1/chat/completions", pairs, *args), (i, data, trusted)
    assert checked[True] > 200 and checked[False] > 300


def test_known_names_are_what_the_compiled_comparison_takes():
    """fleetproxy_known compares eight bytes at a time with 0x20 ORed in, right only for names
    of lower-case letters, digits and "-": every known name is one."""
    import re

    assert all(re.fullmatch(rb"[a-z0-9-]+", name) for name in plainrequest._KNOWN)
    assert all(len(name) < 32 for name in plainrequest._KNOWN)
