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
  (HTTP/0.9 is 400, 2+ on this port 505).

``feed`` raises ``ClientError`` on the first refusal; the reader is then spent (the caller
answers and closes). Completed requests go to ``sink.on_request(method, target, headers, body,
http10, keep_alive, request_id)``, in order (during that call ``asks_load`` says whether the
request asked for vLLM's load report itself); ``sink.on_continue()`` is called when a head asks
for ``100-continue``. ``phase`` and ``since`` (from the ``clock`` passed in) tell the caller's
timer which deadline applies. Results never depend on how the bytes were split.
"""

import httptools

from .errors import ClientError

# Phases, for the caller's deadlines.
IDLE = 0  # between requests
READING_HEAD = 1
READING_BODY = 2

_SPECIAL = frozenset(
    (b"host", b"transfer-encoding", b"content-length", b"expect", b"x-request-id", b"endpoint-load-metrics-format")
)
MAX_REQUEST_ID = 200  # bytes: a longer X-Request-Id is replaced by ours


class RequestReader:
    __slots__ = (
        "limits", "sink", "clock", "parser", "phase", "since", "_url", "_headers", "_body", "_body_size",
        "_head_bytes", "_head_wire", "_host", "_te", "_expect", "_request_id", "asks_load",
    )

    def __init__(self, limits, sink, clock):
        self.limits = limits
        self.sink = sink
        self.clock = clock
        self.parser = httptools.HttpRequestParser(self)
        self.phase = IDLE
        self.since = clock()
        self._reset()

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

    def feed(self, data):
        in_head = self.phase == READING_HEAD
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            # A callback raised: a ClientError refusing the request, or the sink failed (not
            # the client's fault: the caller's one entry-point handler decides).
            raise (exc.__context__ or ClientError("malformed HTTP request")) from None
        except httptools.HttpParserError as exc:
            raise ClientError(f"malformed HTTP request: {exc}") from None
        if in_head and self.phase == READING_HEAD:
            # Every byte of this read belongs to the head, which is still not finished: llhttp
            # holds part of it unparsed. Bound what a client can make us hold.
            self._head_wire += len(data)
            if self._head_wire > self.limits.max_header_bytes:
                raise ClientError("request header block too large", status=431)

    # -- parser callbacks (httptools calls these; they raise ClientError to refuse) --

    def on_message_begin(self):
        self._reset()
        self.phase = READING_HEAD
        self.since = self.clock()

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
            raise ClientError("too many request header fields", status=431)
        if self._head_bytes > limits.max_header_bytes:
            raise ClientError("request header block too large", status=431)
        name = name.lower()
        if name in _SPECIAL:
            self._special_header(name, value, limits)
        headers.append((name, value))

    def _special_header(self, name, value, limits):
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
            if value.isdigit() and int(value) > limits.max_body_bytes:
                raise ClientError(f"request body larger than {limits.max_body_bytes} bytes", status=413)
        elif name == b"expect":
            if value.lower() != b"100-continue":
                raise ClientError("unsupported Expect header", status=417)
            self._expect = True
        elif name == b"x-request-id":
            if 0 < len(value) <= MAX_REQUEST_ID:  # pass a sane one through
                self._request_id = value
        else:
            self.asks_load = True

    def on_headers_complete(self):
        version = self.parser.get_http_version()
        if version != "1.1" and version != "1.0":
            if version == "0.9":
                raise ClientError("HTTP/0.9 requests are not supported")
            raise ClientError(f"HTTP version {version} not supported", status=505)
        if version == "1.1" and not self._host:
            raise ClientError("missing Host header")
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

    def on_message_complete(self):
        parser = self.parser
        body = self._body
        if body is None:
            body = b""
        elif type(body) is bytearray:
            body = bytes(body)
        self.phase = IDLE
        self.since = self.clock()
        self.sink.on_request(
            parser.get_method(),
            self._url,
            self._headers,
            body,
            parser.get_http_version() == "1.0",
            parser.should_keep_alive(),
            self._request_id,
        )

    @property
    def request_id(self):
        """The X-Request-Id of the request being read, if it sent a sane one."""
        return self._request_id
