"""What tests/test_fuzz.py generates and how it judges what crossed the proxy.

Strategies make request streams the way a hostile or broken client would: methods, targets
(origin-, absolute-, asterisk-form, odd bytes), versions, header fields (duplicates, obs-fold,
bare LF, odd names and values), every Content-Length / Transfer-Encoding combination and
conflict, Expect, Connection, Upgrade, bodies, chunked codings (sizes, extensions, trailers, bad
hex), pipelining, a byte-level mutation now and then, and read splits.

Two markers let a check see what must never reach the endpoint without trusting the proxy's
own lists: every field a client names in Connection carries ``HOP_MARK`` in its value, every
trailer field ``TRAILER_MARK``. ``parse_upstream`` is the endpoint's strict reading (RFC 9112
with no leniency at all): whatever it calls ambiguous, a lenient endpoint could read another way.
"""

import re

from hypothesis import strategies as st

HOP_MARK = b"HOPVAL"
TRAILER_MARK = b"TRAILERVAL"

# Written out here, not imported from proxy.http.heads: the check must not share the proxy's
# mistakes. RFC 9110 7.6.1, plus Transfer-Encoding (the proxy frames bodies with a length).
HOP_BY_HOP = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade",
     b"proxy-authorization", b"proxy-authenticate")
)
_TCHAR = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_REQUEST_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) (/[\x21-\x7e]*) HTTP/1\.1\Z")
_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # controls a field value may not hold (HTAB may)
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]+\Z")


class Ambiguous(AssertionError):
    """What the endpoint received can be read more than one way (or breaks a proxy promise)."""


# -- the endpoint's strict reading ----------------------------------------------------------


def parse_upstream(buf):
    """One request from the start of ``buf``: ((method, target, fields, body), rest), or None
    when more bytes are needed. ``fields``: (lower-cased name, value) in order. Raises
    Ambiguous with the reason."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > 1 << 20:
            raise Ambiguous("a request head that never ends")
        return None
    head, rest = buf[:end], buf[end + 4 :]
    lines = head.split(b"\r\n")
    for line in lines:
        if b"\r" in line or b"\n" in line:
            raise Ambiguous(f"bare CR or LF in {line[:80]!r}")
    match = _REQUEST_LINE.match(lines[0])
    if match is None:
        raise Ambiguous(f"request line not 'token SP origin-form SP HTTP/1.1': {lines[0][:120]!r}")
    method, target = match.groups()
    fields = []
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):
            raise Ambiguous(f"obs-fold line {line[:80]!r}")
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.match(name):
            raise Ambiguous(f"bad field line {line[:80]!r}")
        value = value.strip(b" \t")
        if _CTL.search(value):
            raise Ambiguous(f"control byte in field {line[:80]!r}")
        fields.append((name.lower(), value))
    names = [name for name, _ in fields]
    if names.count(b"host") != 1:
        raise Ambiguous(f"{names.count(b'host')} Host fields")
    # The proxy's own "Connection: close" (its health checks) is no client's hop-by-hop field.
    own = all(
        token.strip().lower() in (b"close", b"keep-alive")
        for name, value in fields if name == b"connection" for token in value.split(b",")
    )
    hop = sorted(set(names) & HOP_BY_HOP - {b"transfer-encoding"} - ({b"connection"} if own else set()))
    if hop:
        raise Ambiguous(f"hop-by-hop fields forwarded: {hop}")
    lengths = [value for name, value in fields if name == b"content-length"]
    codings = [value for name, value in fields if name == b"transfer-encoding"]
    if len(lengths) + len(codings) > 1:
        raise Ambiguous(f"framing fields: Content-Length {lengths}, Transfer-Encoding {codings}")
    if lengths:
        if not lengths[0].isdigit():
            raise Ambiguous(f"Content-Length {lengths[0]!r}")
        n = int(lengths[0])
        if len(rest) < n:
            return None
        return (method, target, fields, rest[:n]), rest[n:]
    if codings:
        if codings[0].lower() != b"chunked":
            raise Ambiguous(f"Transfer-Encoding {codings[0]!r}")
        return _dechunk_strict(method, target, fields, rest)
    return (method, target, fields, b""), rest


def check_marks(fields):
    """Raise Ambiguous if a field the client named in Connection, or a trailer field, was
    forwarded (only for inputs the mutation layer left alone: see ``stream``)."""
    for name, value in fields:
        if HOP_MARK in value:
            raise Ambiguous(f"a field the client named in Connection was forwarded: {name!r}: {value[:60]!r}")
        if TRAILER_MARK in value:
            raise Ambiguous(f"a trailer field was promoted to the head: {name!r}: {value[:60]!r}")


def _dechunk_strict(method, target, fields, rest):
    body = b""
    while True:
        eol = rest.find(b"\r\n")
        if eol < 0:
            return None
        size = rest[:eol]
        if not _CHUNK_SIZE.match(size):  # extensions, too: the proxy has no reason to send any
            raise Ambiguous(f"chunk size line {size[:40]!r}")
        n = int(size, 16)
        if n == 0:
            if rest[eol : eol + 4] != b"\r\n\r\n":
                if len(rest) < eol + 4:
                    return None
                raise Ambiguous("trailer section or bad last chunk forwarded")
            return (method, target, fields, body), rest[eol + 4 :]
        if len(rest) < eol + 2 + n + 2:
            return None
        if rest[eol + 2 + n : eol + 4 + n] != b"\r\n":
            raise Ambiguous("chunk data not followed by CRLF")
        body += rest[eol + 2 : eol + 2 + n]
        rest = rest[eol + 4 + n :]


# -- what a client sends --------------------------------------------------------------------

# Each choice comes as (what a sane client sends, what a hostile or broken one adds): a request
# is drawn sane or hostile (``pick``), so that valid requests and valid pipelines are common
# enough to be forwarded and checked, and every hostile choice still comes up.
METHODS = ([b"GET", b"POST", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"PATCH"],
           [b"X-CUSTOM", b"CONNECT", b"TRACE", b"PRI", b"get", b"G\x00T", b"", b"GET\t"])
TARGETS = ([b"/v1/chat/completions", b"/v1/completions", b"/f/a?b=c&d", b"/a/../b", b"/%2e%2e/x",
            b"http://other.host/x?y=1", b"HTTPS://h:8443", b"http://[::1]:80/z", b"/health", b"http://h/health"],
           [b"/x#frag", b"/x?q=1#f", b"*", b"http://user@h/x", b"ftp://h/x", b"//x", b"x", b"/\xff\xfe", b"/a\tb",
            b"/%00", b"/a b"])
VERSIONS = ([b" HTTP/1.1"] * 4 + [b" HTTP/1.0"],
            [b"", b" HTTP/0.9", b" HTTP/2.0", b" HTTP/1.2", b" http/1.1", b" HTTP/1.1 ", b" HTTP/11", b"  HTTP/1.1"])
EOLS = ([b"\r\n"], [b"\n", b"\r", b"\r\r\n"])
HOSTS = ([b"p", b"other.host:81", b"127.0.0.1"], [b"", b"a b", b"h\x00"])


def pick(draw, choices, hostile):
    good, bad = choices
    return draw(st.sampled_from(good + bad if hostile else good))


def targets(hostile):
    chars = st.binary(max_size=20) if hostile else st.text("abcxyz019-._~%/?=&", max_size=20).map(str.encode)
    return st.one_of(
        st.sampled_from(TARGETS[0] + TARGETS[1] if hostile else TARGETS[0]),
        chars.map(lambda b: b"/" + b.replace(b" ", b"").replace(b"\r", b"").replace(b"\n", b"")),
    )


hop_names = [b"x-hop-a", b"x-hop-b", b"authorization", b"x-session-id", b"cookie", b"user-agent", b"x-forwarded-for"]
trailer_names = [b"x-trailer", b"x-forwarded-for", b"authorization", b"x-session-id", b"host", b"content-length"]


@st.composite
def field_values(draw, hostile):
    sane = st.sampled_from([b"1", b"", b" padded ", b"a, b", b"\xc3\xa9t\xc3\xa9", b"tab\there", b"x" * 40])
    if not hostile:
        return draw(sane)
    return draw(
        st.one_of(
            sane,
            st.binary(max_size=16).filter(lambda v: b"\r" not in v and b"\n" not in v),
            st.binary(max_size=8),  # CR, LF, NUL and all
        )
    )


@st.composite
def framing(draw, body_len, hostile):
    """(fields, how the body is coded): every combination a smuggler tries."""
    kinds = ["none", "length", "length", "chunked", "chunked"]
    if hostile:
        kinds += ["length-twice", "length-differ", "length-odd", "length-wrong", "te-and-length", "te-twice",
                  "te-other", "te-list", "te-odd"]
    kind = draw(st.sampled_from(kinds))
    cl = b"Content-Length: %d" % body_len
    te = b"Transfer-Encoding: chunked"
    if kind == "none":
        return [], "none"
    if kind == "length":
        return [cl], "length"
    if kind == "length-twice":
        return [cl, cl], "length"
    if kind == "length-differ":
        return [cl, b"Content-Length: %d" % (body_len + 1)], "length"
    if kind == "length-odd":
        value = draw(st.sampled_from([b"+%d", b"-%d", b"%d, %d", b"0x%x", b" %d ", b"%d.0", b"%da", b"0%d"]))
        return [b"Content-Length: " + (value % ((body_len,) * value.count(b"%")))], "length"
    if kind == "length-wrong":
        return [b"Content-Length: %d" % max(0, body_len + draw(st.sampled_from([-3, -1, 1, 5])))], "length"
    if kind == "te-and-length":
        fields = [te, cl]
        return (fields if draw(st.booleans()) else fields[::-1]), "chunked"
    if kind == "te-twice":
        return [te, te], "chunked"
    if kind == "te-other":
        return [b"Transfer-Encoding: " + draw(st.sampled_from([b"gzip", b"identity", b"chunked, gzip", b"x"]))], "length"
    if kind == "te-list":
        return [b"Transfer-Encoding: " + draw(st.sampled_from([b"gzip, chunked", b"chunked, chunked", b"identity, chunked"]))], "chunked"
    value = draw(st.sampled_from([b"Chunked", b" chunked", b"chunked ", b"\tchunked", b"chunk", b"chunked\x0b"]))
    name = draw(st.sampled_from([b"Transfer-Encoding", b"transfer-encoding", b"Transfer-Encoding ", b"Transfer_Encoding"]))
    return [name + b": " + value], "chunked"


@st.composite
def chunked_body(draw, body, hostile):
    """``body`` in chunked coding, now and then broken: sizes, case, extensions, trailers, bad hex."""
    out = []
    pos = 0
    while pos < len(body):
        n = draw(st.integers(1, len(body) - pos))
        size = draw(st.sampled_from([b"%x", b"%X", b"0%x"] + ([b"%x ", b"%x\t"] if hostile else []))) % n
        if hostile and draw(st.integers(0, 10)) == 0:
            size = draw(st.sampled_from([b"zz", b"-1", b"", b"0x%x" % n, b"ffffffffffffffffff", b"%x" % (n + 1)]))
        ext = draw(st.sampled_from([b""] * 6 + [b";a=1", b";a", b";" + b"e" * 60] + ([b' ; b="c d"', b";\x00"] if hostile else [])))
        end = pick(draw, EOLS, hostile and draw(st.integers(0, 10)) == 0)
        out.append(size + ext + end + body[pos : pos + n] + b"\r\n")
        pos += n
    last = b"0" + draw(st.sampled_from([b""] * 5 + [b";x=y", b"000"]))
    trailers = b"".join(
        name + b": " + TRAILER_MARK + b"-" + draw(st.sampled_from([b"1", b"10.0.0.1", b"Bearer t"])) + b"\r\n"
        for name in draw(st.lists(st.sampled_from(trailer_names), max_size=3))
    )
    return b"".join(out) + last + b"\r\n" + trailers + draw(st.sampled_from([b"\r\n", b"\n", b""] if hostile else [b"\r\n"]))


@st.composite
def request(draw):
    """One request as a client sends it (well-formed or not); bodies stay small."""
    body = draw(
        st.one_of(
            st.just(b""),
            st.binary(max_size=120),
            st.builds(lambda t: b'{"model":"m","prompt":"%s"}' % t, st.binary(max_size=60).map(lambda b: b.hex().encode())),
        )
    )
    hostile = draw(st.integers(0, 4)) == 0
    eol = pick(draw, EOLS, hostile and draw(st.booleans()))
    line = pick(draw, METHODS, hostile) + b" " + draw(targets(hostile)) + pick(draw, VERSIONS, hostile) + eol
    fields, coding = draw(framing(len(body), hostile))
    fields = list(fields)
    hosts = draw(st.sampled_from([1, 1, 1, 0, 2] if hostile else [1]))
    fields += [b"Host: " + pick(draw, HOSTS, hostile) for _ in range(hosts)]
    named = draw(st.lists(st.sampled_from(hop_names), max_size=3, unique=True))
    connection = draw(st.sampled_from([[], [], [b"close"], [b"keep-alive"], [b"Upgrade"], [b"close, te"]]))
    if named or connection:
        fields.append(b"Connection: " + b", ".join(connection + [n.upper() if draw(st.booleans()) else n for n in named]))
    for name in named:
        fields.append(name + b": " + HOP_MARK)
    extra = draw(
        st.lists(
            st.one_of(
                st.sampled_from(
                    [b"Expect: 100-continue", b"Expect: 100-Continue", b"Expect: teapot", b"Upgrade: websocket",
                     b"Upgrade: h2c", b"X-Session-Id: s-1", b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA", b"Keep-Alive: timeout=5",
                     b"Proxy-Connection: keep-alive", b"TE: trailers", b"Trailer: x-trailer", b"X-Request-Id: abc-1",
                     b"X-Request-Id: a b\"c", b"X-Forwarded-For: 6.6.6.6", b"Forwarded: for=6.6.6.6", b"X-Dup: 1",
                     b"X-Dup: 2", b"Accept: */*", b"Content-Type: application/json", b"Cookie: a=b",
                     b"Endpoint-Load-Metrics-Format: text", b"Proxy-Authorization: Basic eA=="]
                ),
                st.tuples(
                    st.binary(min_size=0, max_size=10) if hostile else st.text(_TCHAR.decode(), min_size=1, max_size=10).map(str.encode),
                    field_values(hostile),
                ).map(lambda nv: nv[0] + b": " + nv[1]),
                st.builds(lambda v: b"X-Long: " + b"v" * v, st.integers(0, 1200 if hostile else 300)),
            ),
            max_size=4,
        )
    )
    fields += extra
    fields = draw(st.permutations(fields))
    head = [line]
    for f in fields:
        head.append(f + pick(draw, EOLS, hostile and draw(st.integers(0, 8)) == 0))
        if hostile and draw(st.integers(0, 10)) == 0:
            head.append(draw(st.sampled_from([b" folded\r\n", b"\tfolded\r\n"])))  # obs-fold
    head.append(pick(draw, EOLS, hostile and draw(st.integers(0, 5)) == 0))
    payload = draw(chunked_body(body, hostile)) if coding == "chunked" else body if coding == "length" else b""
    return b"".join(head) + payload


@st.composite
def stream(draw):
    """(what one client connection sends, whether the markers still mean what they say):
    pipelined requests, maybe mutated or cut short. A mutation may turn "Connection" into
    "onnection", and then the fields it named are plain fields that must be forwarded."""
    data = b"".join(draw(st.lists(request(), min_size=1, max_size=3)))
    action = draw(st.sampled_from(["none"] * 30 + ["insert", "delete", "replace", "truncate", "garbage"]))
    if data and action != "none":
        at = draw(st.integers(0, len(data) - 1))
        if action == "insert":
            data = data[:at] + draw(st.sampled_from([b"\r", b"\n", b"\x00", b" ", b":", b"\r\n", b"0\r\n\r\n"])) + data[at:]
        elif action == "delete":
            data = data[:at] + data[at + 1 :]
        elif action == "replace":
            data = data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1 :]
        elif action == "truncate":
            data = data[:at]
        else:
            data += draw(st.binary(min_size=1, max_size=30))
    return data, action in ("none", "truncate", "garbage")


@st.composite
def splits(draw, data, max_pieces=None):
    """Read sizes that add up to ``len(data)``: whole, per byte, or random cuts (at most
    ``max_pieces`` reads: a live test sends each on its own)."""
    n = len(data)
    kind = draw(st.sampled_from(["whole", "cuts", "cuts", "cuts", "bytes"]))
    if n == 0 or kind == "whole":
        return [n]
    if kind == "bytes" and n <= (max_pieces or 600):
        return [1] * n
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, n - 1)), max_size=min(12, (max_pieces or 13) - 1)))))
    return [b - a for a, b in zip([0] + cuts, cuts + [n]) if b > a]
