"""The common request read in one pass: a shortcut past llhttp's callbacks, never a second parser.

Nearly every request an LLM gateway reads has one shape: ``GET`` or ``POST``, an origin-form
target, ``HTTP/1.1``, a few plain header fields, one Host, a Content-Length body, all in one
read. Read by llhttp (``request.RequestReader``) such a request costs a Python callback per
field, a bytes object per name and value, and a version string formatted per request; read
here, where compiled, it is one walk over the bytes in C (request.pxd, plainrequest.pxd).

``read_plain`` accepts only a strict subset of what llhttp accepts and gives exactly what the
reader's callbacks would have given for it (tests/test_plainrequest.py holds the two to one
another on generated requests, cut at every byte); anything else, anything it is not sure of,
returns None and the read goes to llhttp as before. So this adds no parser to agree with: a
request is either in the subset, read identically, or read by llhttp alone. Outside the subset:
other methods and versions, absolute-form targets and fragments, obsolete or odd whitespace,
control bytes, Transfer-Encoding, Expect, Upgrade, Connection (but ``keep-alive``),
Proxy-Connection, a missing or repeated Host or Content-Length, a head or body not whole in the
read, and anything at or past a limit (llhttp's path then refuses it with its own status).
"""

_COMPILED = not __file__.endswith(".py")  # this module runs as its Cython build (plainrequest.pxd)
FAST = _COMPILED  # the reader takes this path only compiled: interpreted, llhttp's is faster

# Field names this reader acts on; other fields of the subset are passed through as read.
_HOST = b"host"
_LENGTH = b"content-length"
_REQUEST_ID = b"x-request-id"
_ASKS_LOAD = b"endpoint-load-metrics-format"
_CONNECTION = b"connection"
_KEEP_ALIVE = b"keep-alive"
# Fields the reader's llhttp path treats specially (request._SPECIAL and what llhttp itself
# reads): a request that has one is not plain.
_NOT_PLAIN = frozenset((b"transfer-encoding", b"expect", b"upgrade", b"proxy-connection", b"te", b"trailer"))
# Field names common in LLM clients' requests (the openai SDKs' among them), one object each:
# read compiled, such a name costs no allocation, and its hash is computed once, not per
# request (the upstream head looks each name up in a dict).
_KNOWN = (
    b"host", b"accept", b"accept-encoding", b"accept-language", b"authorization", b"cache-control",
    b"connection", b"content-length", b"content-type", b"cookie", b"openai-organization", b"openai-project",
    b"origin", b"referer", b"traceparent", b"tracestate", b"user-agent", b"x-request-id", b"x-stainless-arch",
    b"x-stainless-async", b"x-stainless-lang", b"x-stainless-os", b"x-stainless-package-version",
    b"x-stainless-read-timeout", b"x-stainless-retry-count", b"x-stainless-runtime",
    b"x-stainless-runtime-version", b"x-forwarded-for", b"x-api-key",
)
_BY_SIZE = tuple(tuple(k for k in _KNOWN if len(k) == size) for size in range(32))  # (the longest is 27)
_VERSION = b" HTTP/1.1\r\n"
MAX_REQUEST_ID = 200  # bytes: a longer X-Request-Id is replaced by ours
# What a client's X-Request-Id may hold: UUIDs, OpenAI-style ``req_...``, base64. No spaces,
# quotes, commas, semicolons, backslashes or controls: the id is written into access logs and
# echoed in response heads, where those would forge log fields or split a list.
REQUEST_ID_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.:+/="

# Byte classes: 1 tchar (a field name's, RFC 9110 5.6.2), 2 a target's (unreserved, reserved
# but "#", and "%"), 4 a field value's (HTAB, SP to "~", obs-text).
_TCHARS = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_TARGET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~:/?[]@!$&'()*+,;=%"
CLASSES = bytes(
    (1 if bytes((i,)) in _TCHARS else 0) | (2 if bytes((i,)) in _TARGET else 0)
    | (4 if i == 9 or 0x20 <= i < 0x7F or i >= 0x80 else 0)
    for i in range(256)
)


def sane_request_id(value):
    """Whether a client's X-Request-Id is passed through (else the proxy makes its own): short,
    and token characters only (``REQUEST_ID_CHARS``): it lands in logs and response heads."""
    return 0 < len(value) <= MAX_REQUEST_ID and not value.translate(None, REQUEST_ID_CHARS)


def _lower(buf, start, end):
    """``buf[start:end].lower()``: compiled, a known name's own object (``_KNOWN``), else one
    copy lower-cased on the way (plainrequest.pxd)."""
    if _COMPILED:
        size = end - start
        if size < 32:
            for known in _BY_SIZE[size]:
                if fleetproxy_same_lower(buf + start, known, size):  # noqa: F821 (plainrequest.pxd)
                    return known
        return fleetproxy_lower(buf + start, size)  # noqa: F821 (plainrequest.pxd)
    return buf[start:end].lower()


class Bounds:
    """The limits ``read_plain`` holds a request to (a config ``Limits``), as numbers: compiled,
    C integers in a struct, not four attribute look-ups on the config per request."""

    __slots__ = ("request_line", "head", "fields", "body")

    def __init__(self, limits):
        self.request_line = limits.max_request_line
        self.head = limits.max_header_bytes
        self.fields = limits.max_headers
        self.body = limits.max_body_bytes


def read_plain(data, start, bounds):
    """The plain request at ``data[start:]``, whole in it and within ``bounds``, as (end,
    method, target, headers, body, request_id, asks_load) — ``end`` the offset after it,
    ``headers`` [(lower-case name, value)] as the reader's callbacks build them — or None when
    it is not one."""
    n = len(data)
    classes = CLASSES
    buf = data
    pos = start
    # Request line: GET or POST, an origin-form target, HTTP/1.1.
    if n - pos > 5 and buf[pos] == 71 and buf[pos + 1] == 69 and buf[pos + 2] == 84 and buf[pos + 3] == 32:
        method = b"GET"
        pos += 4
    elif (n - pos > 6 and buf[pos] == 80 and buf[pos + 1] == 79 and buf[pos + 2] == 83 and buf[pos + 3] == 84
          and buf[pos + 4] == 32):
        method = b"POST"
        pos += 5
    else:
        return None
    at = pos
    if pos >= n or buf[pos] != 47:  # "/"
        return None
    while pos < n and classes[buf[pos]] & 2:
        pos += 1
    target = buf[at:pos]
    if pos - at > bounds.request_line or n - pos < 11 or buf[pos:pos + 11] != _VERSION:
        return None
    pos += 11
    head_bytes = pos - at - 11
    max_head = bounds.head
    max_fields = bounds.fields
    headers = []
    hosts = 0
    length = -1
    request_id = b""
    asks_load = False
    # Fields: a token, ":", optional SP/HTAB, value bytes (kept with any trailing SP/HTAB, as
    # llhttp keeps them), CRLF; a blank line ends the head.
    while True:
        if pos + 1 >= n:
            return None
        if buf[pos] == 13:
            if buf[pos + 1] != 10:
                return None
            pos += 2
            break
        at = pos
        while pos < n and classes[buf[pos]] & 1:
            pos += 1
        if pos == at or pos >= n or buf[pos] != 58:  # ":"
            return None
        name = _lower(buf, at, pos)
        pos += 1
        while pos < n and (buf[pos] == 32 or buf[pos] == 9):
            pos += 1
        at = pos
        while pos < n and classes[buf[pos]] & 4:
            pos += 1
        if pos + 1 >= n or buf[pos] != 13 or buf[pos + 1] != 10:
            return None
        value = buf[at:pos]
        pos += 2
        if len(headers) >= max_fields:
            return None
        head_bytes += len(name) + len(value) + 4
        if head_bytes > max_head:
            return None
        if name == _HOST:
            hosts += 1
        elif name == _LENGTH:
            if length >= 0 or not value or len(value) > 15:
                return None
            length = 0
            for at in range(at, pos - 2):  # the value's bytes: digits only (llhttp takes leading zeros too)
                if not 48 <= buf[at] <= 57:
                    return None
                length = length * 10 + buf[at] - 48
        elif name == _REQUEST_ID:
            if sane_request_id(value):
                request_id = value
        elif name == _ASKS_LOAD:
            asks_load = True
        elif name == _CONNECTION:
            if value.lower() != _KEEP_ALIVE:
                return None
        elif name in _NOT_PLAIN:
            return None
        headers.append((name, value))
    if hosts != 1:
        return None
    if length < 0:
        length = 0
    if length > bounds.body or pos + length > n:
        return None
    body = buf[pos:pos + length] if length else b""
    return pos + length, method, target, headers, body, request_id, asks_load
