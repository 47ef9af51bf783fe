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
read, more than 32 fields, and anything at or past a limit (llhttp's path then refuses it with
its own status).

The fields are not split into objects: ``Fields`` keeps the head's field lines as they came and
a kind per field, and the upstream head takes them in one walk over those bytes (``forwarded``);
the [(name, value)] list is made only where something reads it (tenants, tracing, adapters).
"""

from .heads import FORWARDING, REQUEST_DROP

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
# Field names common in LLM clients' requests (the openai SDKs' among them), and every name
# the proxy does not forward as it came (heads.REQUEST_DROP and FORWARDING), all of them
# lower-case letters, digits and "-" (fleetproxy_known relies on it): recognized in place,
# without an object, so that a name not among them is known to be forwarded as it came. As
# objects (``Fields.pairs``), one each: their hashes are computed once, not per request.
_KNOWN = tuple(dict.fromkeys((
    b"host", b"accept", b"accept-encoding", b"accept-language", b"authorization", b"cache-control",
    b"connection", b"content-length", b"content-type", b"cookie", b"openai-organization", b"openai-project",
    b"origin", b"referer", b"traceparent", b"tracestate", b"user-agent", b"x-request-id", b"x-stainless-arch",
    b"x-stainless-async", b"x-stainless-lang", b"x-stainless-os", b"x-stainless-package-version",
    b"x-stainless-read-timeout", b"x-stainless-retry-count", b"x-stainless-runtime",
    b"x-stainless-runtime-version", b"x-forwarded-for", b"x-api-key", _ASKS_LOAD,
    *sorted(REQUEST_DROP), *sorted(FORWARDING),
)))
_BY_SIZE = tuple(tuple(k for k in _KNOWN if len(k) == size) for size in range(32))  # (the longest is 28)
_JOINED = tuple(b"".join(same) for same in _BY_SIZE)  # each size's names end to end, for one C loop
# How a field goes upstream, by its name (``Fields.forwarded``): as it came, dropped (the proxy
# writes its own, or it is hop-by-hop), dropped unless the peer is a trusted proxy, or (from a
# trusted one) extended: X-Forwarded-For, left to heads.upstream_head.
KEEP, DROP, FORWARDING_FIELD, XFF = 0, 1, 2, 3
_KIND = {name: DROP for name in REQUEST_DROP}
_KIND.update(dict.fromkeys(FORWARDING, FORWARDING_FIELD))
_KIND[b"x-forwarded-for"] = XFF
# The request's own concerns, read here: 1 Host, 2 Content-Length, 3 X-Request-Id, 4 the load
# report asked for, 5 Connection, 6 a field that makes a request not plain.
_ROLE = {_HOST: 1, _LENGTH: 2, _REQUEST_ID: 3, _ASKS_LOAD: 4, _CONNECTION: 5, **dict.fromkeys(_NOT_PLAIN, 6)}
# Per name of _BY_SIZE's, at the same place: its kind in the low nibble, its role in the high one.
_CLASS_BY_SIZE = tuple(bytes(_KIND.get(k, KEEP) | _ROLE.get(k, 0) << 4 for k in same) for same in _BY_SIZE)
# A request with more fields is not plain (llhttp reads it, within the limits): their kinds,
# two bits each, fit in 64.
_MAX_FIELDS = 32
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


def _known(buf, start, end):
    """Where the name at ``buf[start:end]``, compared ignoring case, is in ``_BY_SIZE[end -
    start]``, or -1."""
    size = end - start
    if size >= 32:
        return -1
    if _COMPILED:
        joined = _JOINED[size]
        return fleetproxy_known(buf + start, size, joined, len(joined))  # noqa: F821 (plainrequest.pxd)
    name = buf[start:end].lower()
    same = _BY_SIZE[size]
    return same.index(name) if name in same else -1


def _lower(buf, start, end):
    """``buf[start:end].lower()``: a known name's own object (``_KNOWN``), else a copy
    lower-cased on the way (compiled: plainrequest.pxd)."""
    i = _known(buf, start, end)
    if i >= 0:
        return _BY_SIZE[end - start][i]
    if _COMPILED:
        return fleetproxy_lower(buf + start, end - start)  # noqa: F821 (plainrequest.pxd)
    return buf[start:end].lower()


def _at(buf, pos, expected, n):
    """Whether ``buf[pos:pos + n]`` is ``expected`` (compiled: compared in place)."""
    if _COMPILED:
        return memcmp(buf + pos, expected, n) == 0  # noqa: F821 (plainrequest.pxd)
    return buf[pos:pos + n] == expected


def _is_keep_alive(buf, start, end):
    """Whether ``buf[start:end]`` is "keep-alive", compared ignoring case."""
    if _COMPILED:
        return end - start == 10 and fleetproxy_same_lower(buf + start, _KEEP_ALIVE, 10)  # noqa: F821
    return buf[start:end].lower() == _KEEP_ALIVE


class Fields:
    """A plain request's header fields, kept as the client wrote them: the head's field lines
    (``head``, each "name:" OWS value CRLF, checked by ``read_plain``) and how each goes
    upstream (``kinds``: two bits per field, the first field's lowest: KEEP, DROP,
    FORWARDING_FIELD, XFF; ``count`` fields).

    Iterated, it is the [(lower-case name, value)] list the reader's llhttp path builds, made
    on first use (tenants, tracing, header-keyed routing and adapters read it); forwarded, it is
    one walk over ``head`` in C (``forwarded``), not a bytes object and a tuple per field read
    and a look-up per field written."""

    __slots__ = ("head", "kinds", "count", "_list", "_forwarded", "_trusted")

    def __init__(self, head, kinds, count):
        self.head = head
        self.kinds = kinds
        self.count = count
        self._list = None
        self._forwarded = None
        self._trusted = -1  # whom ``_forwarded`` was written for: -1 nobody yet, 0 or 1

    def pairs(self):
        """[(lower-case name, value)], as ``read_plain`` read them."""
        if self._list is None:
            self._list = _split(self.head)
        return self._list

    def __iter__(self):
        return iter(self.pairs())

    def __len__(self):
        return self.count

    def __repr__(self):
        return f"Fields({self.pairs()!r})"

    def forwarded(self, trusted):
        """The fields as heads.upstream_head writes them (CRLF, name, ": ", value each, names
        lower-cased, what the proxy writes itself or drops left out), or None when they need
        the field-by-field way (X-Forwarded-For from a trusted peer: extended)."""
        if self._trusted != trusted:  # a retry's send asks again: written once
            self._forwarded = _forward(self.head, self.kinds, self.count, trusted)
            self._trusted = trusted
        return self._forwarded


def _new_fields(head, kinds, count):
    """``Fields(head, kinds, count)`` (compiled: allocated and set in C, no call through
    ``__init__``)."""
    if not _COMPILED:
        return Fields(head, kinds, count)
    fields = Fields.__new__(Fields)
    fields.head = head
    fields.kinds = kinds
    fields.count = count
    fields._trusted = -1
    return fields


def _split(head):
    """``Fields.pairs`` of ``head``: each line's name lower-cased, its value after the OWS that
    follows the colon, up to the CR (trailing OWS kept, as llhttp keeps it)."""
    out = []
    pos = 0
    n = len(head)
    while pos < n:
        colon = head.index(b":", pos)
        eol = head.index(b"\r\n", colon)
        at = colon + 1
        while at < eol and (head[at] == 32 or head[at] == 9):
            at += 1
        out.append((_lower(head, pos, colon), head[at:eol]))
        pos = eol + 2
    return out


def _forward(head, kinds, count, trusted):
    """``Fields.forwarded`` (compiled: one C walk over ``head``, plainrequest.pxd)."""
    if trusted and kinds & (kinds >> 1) & 0x5555555555555555:  # an XFF (0b11) among them
        return None
    if _COMPILED:
        return fleetproxy_forward(head, len(head), kinds, count, trusted)  # noqa: F821 (plainrequest.pxd)
    parts = []
    for i, (name, value) in enumerate(_split(head)):
        kind = kinds >> (2 * i) & 3
        if kind == KEEP or (kind == FORWARDING_FIELD and trusted):
            parts.append(b"\r\n" + name + b": " + value)
    return b"".join(parts)


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
    if pos - at > bounds.request_line or n - pos < 11 or not _at(buf, pos, _VERSION, 11):
        return None
    pos += 11
    head_bytes = pos - at - 11
    max_head = bounds.head
    max_fields = bounds.fields if bounds.fields < _MAX_FIELDS else _MAX_FIELDS
    first = pos
    kinds = 0
    count = 0
    hosts = 0
    length = -1
    request_id = b""
    asks_load = False
    # Fields: a token, ":", optional SP/HTAB, value bytes (kept with any trailing SP/HTAB, as
    # llhttp keeps them), CRLF; a blank line ends the head. No object per field: its name is
    # recognized in place, and only an X-Request-Id's value is kept apart.
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
        known = _known(buf, at, pos)
        cls = 0  # KEEP, no role
        if known >= 0:
            same = _CLASS_BY_SIZE[pos - at]
            cls = same[known]
        head_bytes += pos - at
        pos += 1
        while pos < n and (buf[pos] == 32 or buf[pos] == 9):
            pos += 1
        at = pos
        if _COMPILED:  # eight bytes a step while none is a control byte (plainrequest.pxd)
            pos = fleetproxy_value_run(buf, pos, n)  # noqa: F821
        while pos < n and classes[buf[pos]] & 4:
            pos += 1
        if pos + 1 >= n or buf[pos] != 13 or buf[pos + 1] != 10:
            return None
        if count >= max_fields:
            return None
        head_bytes += pos - at + 4
        if head_bytes > max_head:
            return None
        role = cls >> 4
        if role == 1:
            hosts += 1
        elif role == 2:
            if length >= 0 or pos == at or pos - at > 15:
                return None
            length = 0
            for at in range(at, pos):  # the value's bytes: digits only (llhttp takes leading zeros too)
                if not 48 <= buf[at] <= 57:
                    return None
                length = length * 10 + buf[at] - 48
        elif role == 3:
            value = buf[at:pos]
            if sane_request_id(value):
                request_id = value
        elif role == 4:
            asks_load = True
        elif role == 5:
            if not _is_keep_alive(buf, at, pos):
                return None
        elif role:
            return None
        kind = cls & 3
        kinds |= kind << (2 * count)
        count += 1
        pos += 2
    if hosts != 1:
        return None
    if length < 0:
        length = 0
    if length > bounds.body or pos + length > n:
        return None
    body = buf[pos:pos + length] if length else b""
    headers = _new_fields(buf[first:pos - 2], kinds, count)
    return pos + length, method, target, headers, body, request_id, asks_load
