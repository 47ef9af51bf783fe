"""Sans-IO request reading: bytes from the client in, complete requests (or one refusal) out.

llhttp (httptools) does the parsing and refuses what RFC 9112 forbids outright: bad request
lines, Content-Length with Transfer-Encoding, differing lengths, bad chunk sizes, NUL/CR/LF in
fields, bad names, obsolete folding. ``RequestReader`` adds the rules a proxy must enforce on
top, as the head arrives, before any byte goes upstream:

- limits: request target (414), header count and header bytes (431: the request line and
  fields as parsed, and the raw bytes of a head still arriving, so a field llhttp is still
  buffering cannot grow past the limit), body size (413, refused from Content-Length before
  the body is read, and counted while it is);
- exactly one Host in HTTP/1.1 (RFC 9112 3.2); only ``chunked`` as a transfer coding, once
  (6.1: a proxy that cannot decode another coding must not guess the length); only
  ``100-continue`` as an expectation (RFC 9110 10.1.1, else 417); HTTP/1.0 and 1.1 only
  (HTTP/0.9 is 400 as soon as its request line ends, 2+ on this port 505);
- the request target (RFC 9112 3.2): origin-form passes; absolute-form is accepted, as a
  server must (3.2.2), and rewritten to origin-form, so the endpoint never sees another
  authority; asterisk-form (``OPTIONS *``), a fragment, userinfo or another scheme is 400;
- no tunnels: CONNECT is 501, and so is any Upgrade (websocket...) llhttp would switch
  protocols on, before a byte goes upstream, then the connection closes (Envoy's default
  without upgrade_configs: a refused upgrade's payload may hold a smuggled request). An h2c
  upgrade is ignored instead, as RFC 9110 7.8 allows and Envoy and nginx do: the request is
  served as HTTP/1.1 (``curl --http2 http://...`` sends one on every request, body and all);
- trailer fields of a chunked body are dropped (RFC 9112 7.1.2 lets a recipient that removes
  the chunked coding discard them): merged into the head they would let a client add
  X-Forwarded-For, Authorization or X-Session-Id after a front proxy cleaned the head. They
  count against the header budget, and so does a run of chunk framing or trailer bytes that
  carries no body byte (llhttp would hold a trailer field growing across reads);
- a client's X-Request-Id is echoed only when it is short and made of token characters
  (``plainrequest.sane_request_id``): it lands in logs and in response heads.

``feed`` raises ``ClientError`` on the first refusal; the reader is then spent (the caller
answers and closes). Completed requests go to ``sink.on_request(method, target, headers, body,
http10, keep_alive, request_id)``, in order (during that call ``asks_load`` says whether the
request asked for vLLM's load report itself); ``sink.on_continue()`` is called when a head asks
for ``100-continue``; a sink is a ``Sink``, so that compiled these are C calls. ``phase`` and
``since`` (``now()``: the ``clock`` passed in, else the monotonic clock) tell the caller's timer
which deadline applies. Results never depend on how the bytes were split.

Between requests, a compiled reader first hands the whole plain requests at the start of a read
to ``plainrequest.read_plain`` (``_plain``): a strict subset of what llhttp accepts, read with
the same result in one pass, without llhttp's callbacks; the rest of the read goes to llhttp.
"""

import re

import httptools

from ..observe.metrics import now as monotonic
from .errors import ClientError
from .plainrequest import FAST, Bounds, read_plain, sane_request_id

# Phases, for the caller's deadlines.
IDLE = 0  # between requests
READING_HEAD = 1
READING_BODY = 2
_IDLE, _HEAD, _BODY = IDLE, READING_HEAD, READING_BODY  # C ints where compiled (request.pxd): read every feed

_SPECIAL = frozenset(
    (
        b"host", b"transfer-encoding", b"content-length", b"expect", b"x-request-id", b"upgrade",
        b"endpoint-load-metrics-format",
    )
)
# What a client's X-Request-Id may be: plainrequest.sane_request_id.

# An absolute-form target (RFC 9112 3.2.2) as the proxy accepts it: http(s), an authority of
# host characters (RFC 3986 reg-name or an IP literal) and an optional port, no userinfo
# (RFC 9110 4.2.4: treat it as an error), no fragment; group 1 is the path and query.
_ABSOLUTE = re.compile(
    rb"(?i:https?)://(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~%!$&'()*+,;=-]+)(?::[0-9]*)?([/?][^#]*)?\Z"
)


class Sink:
    """Where a RequestReader hands what it read (pipeline.Pipeline, whose Downstream is the
    proxy's): compiled, ``on_request`` is a C call through the type's table (request.pxd)."""

    __slots__ = ()

    def on_request(self, method, target, headers, body, http10, keep_alive, request_id):
        raise NotImplementedError

    def on_continue(self):
        raise NotImplementedError


class RequestReader:
    __slots__ = (
        "limits", "bounds", "sink", "clock", "parser", "phase", "since", "_url", "_headers", "_body", "_body_size",
        "_head_bytes", "_head_wire", "_host", "_te", "_expect", "_request_id", "asks_load", "_length",
        "_upgrade", "_h2c", "_resume", "_gap", "_fields", "_http10", "fast", "_plain_seen",
    )

    def __init__(self, limits, sink, clock=None):
        self.limits = limits
        self.bounds = Bounds(limits)  # read_plain's
        self.sink = sink
        self.clock = clock
        self.parser = httptools.HttpRequestParser(self)
        self.phase = IDLE
        self.since = self.now()
        self._resume = None  # an h2c request's body framing, for the parser that reads it (feed)
        self._fields = 0  # header fields of a chunked request (its trailer fields follow them)
        self._gap = 0  # bytes of reads inside a chunked body that carried no body byte
        self.fast = FAST  # whole plain requests read by plainrequest, not llhttp (compiled only)
        self._plain_seen = False  # plainrequest read one: llhttp's version then lags (_unfinished_head)
        self._reset()

    def now(self):
        """The reader's clock: the ``clock`` it was given (tests), else monotonic seconds as
        ``metrics.now`` has them (the read callback's time: no second read of the clock).
        uvloop's ``loop.time()``, which the deadlines read, counts the same clock in whole ms."""
        clock = self.clock
        return monotonic() if clock is None else clock()

    def _reset(self):
        self._url = b""
        self._headers = []
        self._body = None
        self._body_size = 0
        self._head_bytes = 0  # request line and fields, as parsed
        self._head_wire = 0  # raw bytes of reads that began and ended inside this head
        self._host = False
        self._te = False
        self._expect = False
        self._request_id = b""
        self.asks_load = False  # the client asked for the endpoint's load report itself
        self._length = 0  # Content-Length
        self._upgrade = None  # the Upgrade field's protocol, lower-cased (b"*": several)
        self._h2c = None  # an ignored h2c upgrade: (method, http10, keep_alive) of its request
        self._http10 = False  # the head said HTTP/1.0 (httptools formats its version per call)

    def feed(self, data):
        if self.fast and self.phase == _IDLE and self._resume is None:
            rest = self._plain(data)
            if not rest:
                return
            data = rest
        phase = self.phase
        headers = self._headers  # a new list when a message begins
        size = self._body_size
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            # A callback raised: a ClientError refusing the request, or the sink failed (not
            # the client's fault: the caller's one entry-point handler decides).
            raise (exc.__context__ or ClientError("malformed HTTP request")) from None
        except httptools.HttpParserUpgrade as exc:
            upgrade_at = exc.args[0]  # resumed below, outside this handler
        except httptools.HttpParserError as exc:
            raise ClientError(f"malformed HTTP request: {exc}") from None
        else:
            now = self.phase
            if now == _HEAD:
                self._unfinished_head(data, phase == _HEAD and self._headers is headers)
            elif now == _BODY and phase == _BODY and self._headers is headers:
                if self._body_size != size:
                    self._gap = 0
                else:
                    # A read inside a chunked body that carried no body byte: chunk framing,
                    # or a trailer field llhttp holds until it ends. Bound it like a head.
                    self._gap += len(data)
                    if self._gap > self.limits.max_header_bytes:
                        raise ClientError("chunk framing or trailer section too large", status=431)
            return
        self._after_h2c(data, upgrade_at)

    def _plain(self, data):
        """Between requests: hand the plain requests at the start of ``data`` (whole ones,
        plainrequest.py) to the sink as llhttp's callbacks would; what is left goes to llhttp."""
        start = 0
        n = len(data)
        while start < n:
            plain = read_plain(data, start, self.bounds)
            if plain is None:
                break
            start, method, target, headers, body, request_id, asks_load = plain
            self._plain_seen = True
            self._request_id = request_id
            self.asks_load = asks_load
            self.since = self.now()
            self.sink.on_request(method, target, headers, body, False, True, request_id)
        if start == 0:
            return data
        return data[start:] if start < n else b""

    def _unfinished_head(self, data, spanned):
        """After a read that left a head unfinished (``spanned``: it began in an earlier read)."""
        # llhttp takes a request line without a version as HTTP/0.9, then waits for header
        # fields an HTTP/0.9 client never sends: refuse once the line has ended. Its version
        # reads 0.9 only from the byte after the line's LF. Until then, on the first request a
        # parser reads, it is 0.0 (no version digit yet) with a target seen, and the byte this
        # read ended on belongs to this head, so an LF there ends a line without a version.
        # (llhttp keeps the previous request's version until the next one's digits: an
        # HTTP/0.9 line after a kept-alive request is refused from its next byte, or gets the
        # header timeout's 408. HTTP/0.9 clients never keep a connection alive.)
        version = self.parser.get_http_version()
        # (A parser that read none of the requests plainrequest read would say 0.0 where
        # llhttp, having read them, still says 1.1: the same answer as if it had.)
        if version == "0.9" or (version == "0.0" and not self._plain_seen and self._url and data[-1:] == b"\n"):
            raise ClientError("HTTP/0.9 requests are not supported")
        # After the version check: an HTTP/0.9 head is 400 whatever the reads (on_header).
        if spanned:
            # Every byte of this read belongs to the head, which is still not finished: llhttp
            # holds part of it unparsed. Bound what a client can make us hold.
            self._head_wire += len(data)
            if self._head_wire > self.limits.max_header_bytes:
                raise ClientError("request header block too large", status=431)

    def _after_h2c(self, data, offset):
        """llhttp stopped at the end of an h2c upgrade request's head (``offset`` in ``data``),
        taking the rest for HTTP/2. The upgrade is ignored, so the rest is still HTTP/1.1: go
        on with a new parser. httptools skips the body of an upgrade request, so when this one
        has a body, the new parser first reads a head of ours with the same framing, unseen by
        the callbacks (``_Resumed``): llhttp then reads and checks the body (chunked coding,
        limits, trailers) like any other, and ``on_message_complete`` sends the request."""
        if self._h2c is None:  # never: every other upgrade was refused at the head
            raise ClientError("unsupported protocol upgrade", status=501)
        resume = self._resume
        if resume is None:
            self.parser = httptools.HttpRequestParser(self)
        else:
            self._resume = None
            self.parser = httptools.HttpRequestParser(_Resumed(self))
            self.parser.feed_data(resume)
        rest = data[offset:]
        if rest:
            self.feed(rest)

    # -- parser callbacks (httptools calls these; they raise ClientError to refuse) --

    def on_message_begin(self):
        self._reset()
        self.phase = READING_HEAD
        self.since = self.now()

    def on_url(self, url):
        self._url += url
        self._head_bytes += len(url)
        if len(self._url) > self.limits.max_request_line:
            raise ClientError("request target too long", status=414)

    def on_header(self, name, value):
        headers = self._headers
        limits = self.limits
        self._head_bytes += len(name) + len(value) + 4
        if len(headers) >= limits.max_headers:
            self._no_http09()
            raise ClientError("too many request header fields", status=431)
        if self._head_bytes > limits.max_header_bytes:
            self._no_http09()
            raise ClientError("request header block too large", status=431)
        name = name.lower()
        if name in _SPECIAL:
            try:
                self._special_header(name, value, limits)
            except ClientError:
                self._no_http09()
                raise
        headers.append((name, value))

    def _no_http09(self):
        """Before refusing a head for its fields: an HTTP/0.9 head is 400 for being HTTP/0.9,
        whether its line ended in an earlier read (_unfinished_head) or in this one (found by
        tests/test_fuzz.py). Asked only then: llhttp's version costs a string per call."""
        if self.parser.get_http_version() == "0.9":
            raise ClientError("HTTP/0.9 requests are not supported")

    def _special_header(self, name, value, limits):
        if self.phase != READING_HEAD:
            return  # a trailer field: no head rule applies, and it is dropped at the end
        if name == b"host":
            if self._host:
                raise ClientError("more than one Host header")
            self._host = True
        elif name == b"transfer-encoding":
            if self._te or value.strip().lower() != b"chunked":
                raise ClientError("unsupported or repeated Transfer-Encoding")
            self._te = True
        elif name == b"content-length":
            # llhttp already refuses bad, duplicate and TE-conflicting lengths.
            if value.isdigit():
                self._length = int(value)
                if self._length > limits.max_body_bytes:
                    raise ClientError(f"request body larger than {limits.max_body_bytes} bytes", status=413)
        elif name == b"expect":
            if value.lower() != b"100-continue":
                raise ClientError("unsupported Expect header", status=417)
            self._expect = True
        elif name == b"x-request-id":
            # Pass a sane one through; else the caller makes ours.
            if sane_request_id(value):
                self._request_id = value
        elif name == b"upgrade":
            self._upgrade = value.strip().lower() if self._upgrade is None else b"*"
        else:
            self.asks_load = True

    def on_headers_complete(self):
        parser = self.parser
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            if version == "0.9":
                raise ClientError("HTTP/0.9 requests are not supported")
            raise ClientError(f"HTTP version {version} not supported", status=505)
        if version == "1.1" and not self._host:
            raise ClientError("missing Host header")
        self._http10 = version == "1.0"
        if parser.should_upgrade():
            self._no_tunnel(parser, version)  # first: CONNECT's target is no URL of ours
        url = self._url
        if url[0] != 0x2F or 0x23 in url:  # not origin-form, or a "#" (llhttp always gives a target)
            self._url = origin_form(url)
        if self._te:
            self._fields = len(self._headers)
            self._gap = 0
        self.phase = READING_BODY
        if self._expect:
            self.sink.on_continue()

    def on_body(self, body):
        size = self._body_size + len(body)
        if size > self.limits.max_body_bytes:
            raise ClientError(f"request body larger than {self.limits.max_body_bytes} bytes", status=413)
        self._body_size = size
        if self._body is None:
            self._body = body
        elif type(self._body) is bytes:
            self._body = bytearray(self._body)
            self._body += body
        else:
            self._body += body

    def _no_tunnel(self, parser, version):
        """llhttp would switch protocols after this head: CONNECT, or Upgrade named in
        Connection. Refuse, except an h2c upgrade, which is served as HTTP/1.1 (see top);
        its Upgrade, Connection and HTTP2-Settings fields go no further (hop-by-hop)."""
        method = parser.get_method()
        if method == b"CONNECT":
            raise ClientError("CONNECT is not supported by this proxy", status=501)
        if self._upgrade != b"h2c":
            raise ClientError("protocol upgrades (websocket...) are not supported by this proxy", status=501)
        self._h2c = (method, version == "1.0", parser.should_keep_alive())
        if self._te:
            self._resume = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        elif self._length:
            self._resume = b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % self._length

    def on_message_complete(self):
        parser = self.parser
        h2c = self._h2c
        if h2c is None:
            method, http10, keep_alive = parser.get_method(), self._http10, parser.should_keep_alive()
        elif self._resume is not None:
            # httptools ends an upgrade request at its head; its body is still to come (see
            # _after_h2c), and so is the request.
            return
        else:
            method, http10, keep_alive = h2c
        if self._te:
            # Trailer fields were counted against the limits with the head; they go no
            # further (see top): kept, they would reach the endpoint as header fields.
            del self._headers[self._fields :]
        body = self._body
        if body is None:
            body = b""
        elif type(body) is bytearray:
            body = bytes(body)
        self.phase = IDLE
        self.since = self.now()
        self.sink.on_request(method, self._url, self._headers, body, http10, keep_alive, self._request_id)

    @property
    def request_id(self):
        """The X-Request-Id of the request being read, if it sent a sane one."""
        return self._request_id


def origin_form(target):
    """``target`` (not origin-form, or with a fragment) as the origin-form the endpoint gets,
    or ClientError. RFC 9112 3.2.2: a server must accept the absolute-form; a gateway forwards
    its path and query (the authority is the client's business with us, and the endpoint's
    Host is ours), as nginx does. The asterisk-form of ``OPTIONS *`` asks about the proxy
    itself, not a resource the endpoint has (nginx: 400 too); a fragment is never sent
    (RFC 9112 3.2: Envoy refuses it, and an endpoint that reads it into the path would route
    on what the proxy did not check)."""
    if target[:1] == b"/":
        raise ClientError("fragment in the request target")
    if target == b"*":
        raise ClientError("asterisk-form request target (OPTIONS *) not supported")
    match = _ABSOLUTE.match(target)
    if match is None:
        raise ClientError("request target not in origin-form or a valid http(s) absolute-form")
    path = match.group(1)
    if not path:
        return b"/"
    return path if path[:1] == b"/" else b"/" + path


class _Resumed:
    """The callbacks of the parser that reads an h2c request's body (``_after_h2c``): it first
    parses a head of ours that only carries the body's framing; that head is not the
    client's, so the reader never sees it. Everything after it goes to the reader."""

    __slots__ = ("reader", "ours")

    def __init__(self, reader):
        self.reader = reader
        self.ours = True

    def on_message_begin(self):
        if not self.ours:
            self.reader.on_message_begin()

    def on_url(self, url):
        if not self.ours:
            self.reader.on_url(url)

    def on_header(self, name, value):
        if not self.ours:
            self.reader.on_header(name, value)

    def on_headers_complete(self):
        if self.ours:
            self.ours = False
        else:
            self.reader.on_headers_complete()

    def on_body(self, body):
        self.reader.on_body(body)

    def on_message_complete(self):
        self.reader.on_message_complete()
