"""The response head, parsed three ways, must give one result.

_speedups.framing parses a head with bytes methods (``_parse_head``) when it runs as Python, and
walks it through a pointer (``_scan_head``, with ``_blank_line`` finding its end) when it is
compiled as framing_c. Both are in the one source file, so both can be run here as Python:
``_parse_head`` (the module as imported), ``_scan_head`` (the same module with ``_COMPILED``
set), and the compiled ``_scan_head`` (framing_c, where it is built). Every head below, valid or
not, is fed whole, cut in two at every byte and a byte at a time; three typical ones are also
mutated at every offset of their head (a byte inserted, replaced or removed). After each read
the three framers must agree on the flags, the offsets, the error and every field a head sets.
"""

import itertools

import pytest
from builds import native_or_skip
from test_speedups_equivalence import snapshot  # everything a framer says after each feed

import _speedups

pure = _speedups.pure("framing")
native = _speedups.native("framing")  # None where not built: then two ways, not three

H = b"HTTP/1.1 200 OK\r\n"
JSON_HEAD = (
    b"HTTP/1.1 200 OK\r\ndate: Sun, 29 Nov 2026 22:55:43 GMT\r\nserver: fleetproxy-sim\r\n"
    b"content-type: application/json\r\ncontent-length: 2\r\nx-sim-backend: 127.0.0.1:38001\r\n\r\n"
)
SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ndate: Sun, 29 Nov 2026 22:55:43 GMT\r\nserver: fleetproxy-sim\r\n"
    b"content-type: text/event-stream; charset=utf-8\r\ntransfer-encoding: chunked\r\n\r\n"
)

VALID = [
    JSON_HEAD + b"{}",
    SSE_HEAD + b"5\r\ndata:\r\n0\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nconnection:Keep-Alive, Upgrade\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx",
    b"HTTP/1.1 200 OK\r\nCONNECTION:  te ,\tCLOSE \r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nConnection: closed\r\nContent-Length: 0\r\n\r\n",
    H + b"X-Empty:\r\nX-Blank: \t \r\nX-Pad:\t a b \t\r\nContent-Length: 0\r\n\r\n",
    H + b"CONTENT-LENGTH: 000\r\nContent-Length: 0\r\n\r\n",
    H + b"Content-Length: 999999999999999999\r\n\r\n",  # 18 digits: the most there may be
    H + b"Content-Length: 0999999999999999999\r\n\r\n",  # leading zeros do not count
    H + b"Content-Type: TEXT/EVENT-STREAM\r\nTransfer-Encoding: Chunked\r\n\r\n0\r\n\r\n",
    H + b"content-type: text/event-streamx\r\n\r\n",
    H + b"content-type: text/event-strea\r\n\r\n",  # 16 bytes: not an event stream
    H + b"content-type:   text/event-stream\r\ncontent-type: application/json\r\n\r\n",
    H + b"Content-Type: text/event-stream\r\ncontent-typo: x\r\ncontent-lengthy: x\r\n\r\n",
    H + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    H + b"Transfer-Encoding: ,chunked\r\n\r\n0\r\n\r\n",
    H + b"Transfer-Encoding: chunked\x0b\r\n\r\n0\r\n\r\n",  # bytes.strip() takes VT too
    H + b"!#$%&'*+-.^_`|~09AZaz: v\r\nContent-Length: 0\r\n\r\n",  # every kind of tchar
    # The four names compared eight bytes at a time (compiled): near misses in each word.
    H + b"Content_Length: 5\r\ncontent-lengtg: 5\r\nCONTENT-LENGTh: 0\r\n\r\n",
    H + b"Transfer-EncodinG: chunked\r\nconnectioN: close\r\ncontent-typE: text/event-stream\r\n\r\n0\r\n\r\n",
    H + b"transfer~encoding: chunked\r\nConnectiom: close\r\ncontentitype: text/event-stream\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200  two  spaces \x80\xff\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 999 Whatever\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n" + JSON_HEAD + b"{}",
    b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\nBad Name: is not checked in a 1xx\r\n\r\n" + H + b"\r\n",
    b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.0 103 Early Hints\r\nLink: </a>\r\n\r\n" + H + b"\r\n",
]

INVALID = [
    b"\r\n\r\n",
    b"\r\nHTTP/1.1 200 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\r\n\r\n",
    b"HTTP/1.1 200 OK\nX: 1\r\n\r\n",
    b"HTTP/1.1 200 O\x00K\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX: 1\n\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX\r: 1\r\n\r\n",
    b"HTTP/2 200 OK\r\n\r\n",
    b"HTTP/1.2 200 OK\r\n\r\n",
    b"http/1.1 200 OK\r\n\r\n",
    b"HTTP/1.1\r\n\r\n",
    b"HTTP/1.1 \r\n\r\n",
    b"HTTP/1.1x200 OK\r\n\r\n",
    b"HTTP/1.10 200 OK\r\n\r\n",
    b"HTTP/1.1 20\r\n\r\n",
    b"HTTP/1.1 2000 OK\r\n\r\n",
    b"HTTP/1.1 200x OK\r\n\r\n",
    b"HTTP/1.1 20x OK\r\n\r\n",
    b"HTTP/1.1  200 OK\r\n\r\n",
    b"HTTP/1.1 \t200 OK\r\n\r\n",
    b"HTTP/1.1 200\tOK\r\n\r\n",
    b"HTTP/1.1 099 Odd\r\n\r\n",
    b"HTTP/1.1 -20 Odd\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\nX: a\rb\r\n\r\n" + H + b"\r\n",  # 1xx heads obey RFC 9112 2.2 too
    H + b"no colon\r\n\r\n",
    H + b"nocolon\r\n\r\n",
    H + b": empty name\r\n\r\n",
    H + b":\r\n\r\n",
    H + b"Bad Name: x\r\n\r\n",
    H + b"Name : x\r\n\r\n",
    H + b" obs-fold: x\r\n\r\n",
    H + b"X\x7f: x\r\n\r\n",
    H + b"X\x80: x\r\n\r\n",
    H + b"X;y\r\n\r\n",
    H + b"X y: z: w\r\n\r\n",
    H + b"Content-Type: text/event-stream\r\nBad Name: x\r\n\r\n",  # fields before the bad one stay
    H + b"Content-Length: \r\n\r\n",
    H + b"Content-Length: -1\r\n\r\n",
    H + b"Content-Length: +1\r\n\r\n",
    H + b"Content-Length: 1 1\r\n\r\n",
    H + b"Content-Length: 1, 1\r\n\r\n",
    H + b"Content-Length: 1e3\r\n\r\n",
    H + b"Content-Length: 0x10\r\n\r\n",
    H + b"Content-Length: \xd9\xa1\r\n\r\n",  # ARABIC-INDIC DIGIT ONE: not a DIGIT
    H + b"Content-Length: 1000000000000000000\r\n\r\n",  # 10**18
    H + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\n",
    H + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
    H + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
    H + b"Transfer-Encoding: gzip\r\n\r\n",
    H + b"Transfer-Encoding:\r\n\r\n",
    H + b"Transfer-Encoding: chunked,\r\n\r\n",
    H + b"Transfer-Encoding: chunked, gzip\r\n\r\n",
    H + b"Transfer-Encoding: chunked, chunked\r\n\r\n",
    H + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
    H + b"X-Pad: " + b"a" * pure.MAX_HEAD + b"\r\n\r\n",
]

# -- the three framers ------------------------------------------------------------------------


def trace(fr, pieces, head_request):
    f = fr.ResponseFramer(head_request)
    return [snapshot(f, f.feed(piece)) for piece in pieces]


@pytest.fixture
def ways(monkeypatch):
    """feed(pieces, head_request) -> {way: trace}, for each way this run can build."""

    def scanned(pieces, head_request):
        with monkeypatch.context() as m:
            m.setattr(pure, "_COMPILED", True)
            return trace(pure, pieces, head_request)

    def feed(pieces, head_request=False):
        out = {"parse": trace(pure, pieces, head_request), "scan": scanned(pieces, head_request)}
        if native is not None:
            out["native"] = trace(native, pieces, head_request)
        return out

    return feed


def agree(results, what):
    expected = results["parse"]
    for way, got in results.items():
        assert got == expected, f"{what}: {way} differs from _parse_head"
    return expected


def test_the_native_build_is_one_of_the_ways():
    native_or_skip("framing")  # skipped without a build, failed where one must be there


def test_the_interpreted_module_parses_with_bytes_methods():
    assert not pure._COMPILED  # (framing_c's is a C variable, set the other way by its name)


@pytest.mark.parametrize("data", VALID + INVALID)
@pytest.mark.parametrize("head_request", [False, True])
def test_every_split_agrees(ways, data, head_request):
    whole = agree(ways([data], head_request), "whole")
    errors = [step[4] for step in whole if step[4]]
    if not head_request:  # (a HEAD response has no body: the bodies above would be an error)
        assert bool(errors) == (data in INVALID), whole  # the lists hold what they say
    if len(data) > 4096:
        cuts = range(1, len(data), 997)
    else:
        cuts = range(1, len(data))
    for cut in cuts:
        agree(ways([data[:cut], data[cut:]], head_request), f"cut at {cut}")
    agree(ways([data[i : i + 1] for i in range(min(len(data), 4096))], head_request), "a byte at a time")


JUNK = [b"\r", b"\n", b"\r\n", b"\x00", b":", b" ", b"\t", b",", b"0", b"9", b"A", b"\x7f", b"\x80", b"\x0b"]


BASES = [JSON_HEAD + b"{}", SSE_HEAD + b"0\r\n\r\n", b"HTTP/1.0 103 Hints\r\nLink: </a>\r\n\r\n" + VALID[2]]


@pytest.mark.parametrize("base", BASES)
def test_every_mutation_agrees(ways, base):
    head_len = base.rindex(b"\r\n\r\n") + 4
    for at, junk in itertools.product(range(head_len), JUNK):
        inserted = base[:at] + junk + base[at:]
        replaced = base[:at] + junk + base[at + len(junk) :]
        removed = base[:at] + base[at + 1 :]
        for data in (inserted, replaced, removed):
            agree(ways([data]), repr(data))


def test_blank_line_is_find():
    # Every string of CR, LF and one other byte up to 8 long, searched from every start.
    for size in range(9):
        for letters in itertools.product(b"\r\nx", repeat=size):
            data = bytes(letters)
            for start in range(size + 1):
                assert pure._blank_line(data, start, size) == data.find(b"\r\n\r\n", start), (data, start)
