"""The client-facing protocol: the hot loop.

``data_received`` feeds httptools (llhttp); its callbacks only fill fields of the request being
parsed. A complete request becomes an ``Exchange``; exchanges run one at a time per connection,
in order (pipelined requests wait in a bounded queue, and reading pauses when it is full).

Client limits, checked as the head arrives: request line (414), header count and header bytes
(431), body size (413, before reading the body when Content-Length says so), and the RFC 9112
refusals that llhttp does not make itself (missing Host, repeated or unknown transfer codings,
HTTP/0.9). One lazy timer per connection enforces the header-read, request-read and keep-alive
deadlines: phases change by setting a timestamp, and the timer re-arms itself for whatever
deadline is current when it fires, so a request costs no timer churn.
"""

import asyncio
import logging
from collections import deque

import httptools

from . import http1
from .errors import ClientError, ProxyError, render
from .relay import Exchange

log = logging.getLogger("fleetproxy.downstream")

# Parser phases for the connection timer.
WAIT = 0  # between requests (keep-alive idle when nothing is in flight)
HEAD = 1  # reading a request head
BODY = 2  # reading a request body

# Reasons to stop reading the client; reading resumes when none is left.
PAUSE_PIPELINE = 1
PAUSE_UPSTREAM = 2
PAUSE_ERROR = 4

_SPECIAL = frozenset((b"host", b"transfer-encoding", b"content-length", b"expect", b"x-request-id"))


class Downstream(asyncio.Protocol):
    __slots__ = (
        "ctx", "loop", "transport", "parser", "peer", "queue", "active", "closed",
        "writing_paused", "paused", "phase", "since", "timer",
        "_url", "_headers", "_body", "_body_size", "_head_bytes", "_host", "_te",
        "_expect", "_request_id", "_error",
    )

    def __init__(self, ctx):
        self.ctx = ctx
        self.loop = ctx.loop
        self.transport = None
        self.parser = None
        self.peer = b""
        self.queue = deque()
        self.active = None
        self.closed = False
        self.writing_paused = False
        self.paused = 0
        self.phase = WAIT
        self.since = 0.0
        self.timer = None
        self._reset()

    def _reset(self):
        self._url = b""
        self._headers = []
        self._body = None
        self._body_size = 0
        self._head_bytes = 0
        self._host = False
        self._te = False
        self._expect = False
        self._request_id = b""
        self._error = None

    # -- transport events -----------------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = peer[0].encode() if peer else b"unknown"
        high = self.ctx.cfg.limits.high_water
        transport.set_write_buffer_limits(high, high // 4)
        self.parser = httptools.HttpRequestParser(self)
        self.ctx.connections.add(self)
        self.since = self.loop.time()
        self.timer = self.loop.call_later(self.ctx.timer_cap, self._on_timer)

    def data_received(self, data):
        if self.paused & PAUSE_ERROR:
            return  # after a refused request nothing more is read
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            err = exc.__context__
            if not isinstance(err, ProxyError):
                raise
            self._refuse(err)
            return
        except httptools.HttpParserError as exc:
            self._refuse(ClientError(f"malformed HTTP request: {exc}"))
            return
        if self.phase == HEAD:
            # llhttp buffers a header it has not finished; bound what a client can make us hold.
            self._head_bytes += len(data)
            if self._head_bytes > self.ctx.cfg.limits.max_header_bytes:
                self._refuse(ClientError("request header block too large", status=431))

    def eof_received(self):
        # A client that stops sending has left: like nginx without proxy_ignore_client_abort,
        # treat the FIN as a disconnect and abort what it asked for.
        return False

    def connection_lost(self, exc):
        self.closed = True
        self.ctx.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        active = self.active
        self.active = None
        if active is not None:
            active.client_gone()
        self.queue.clear()

    def pause_writing(self):
        # The client reads slower than the backend writes: stop reading the backend.
        self.writing_paused = True
        active = self.active
        if active is not None and active.conn is not None:
            active.conn.transport.pause_reading()

    def resume_writing(self):
        self.writing_paused = False
        active = self.active
        if active is not None and active.conn is not None:
            active.conn.transport.resume_reading()

    def pause_reading(self, reason=PAUSE_UPSTREAM):
        if not self.paused and not self.closed:
            self.transport.pause_reading()
        self.paused |= reason

    def resume_reading(self, reason=PAUSE_UPSTREAM):
        if self.paused & reason:
            self.paused &= ~reason
            if not self.paused and not self.closed:
                self.transport.resume_reading()

    # -- parser callbacks -----------------------------------------------------------------

    def on_message_begin(self):
        self._reset()
        self.phase = HEAD
        self.since = self.loop.time()

    def on_url(self, url):
        self._url += url
        if len(self._url) > self.ctx.cfg.limits.max_request_line:
            raise ClientError("request target too long", status=414)

    def on_header(self, name, value):
        headers = self._headers
        limits = self.ctx.cfg.limits
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
            http1.check_transfer_encoding(value, self._te)
            self._te = True
        elif name == b"content-length":
            # llhttp already refuses bad, duplicate and TE-conflicting lengths.
            if value.isdigit() and int(value) > limits.max_body_bytes:
                raise ClientError(f"request body larger than {limits.max_body_bytes} bytes", status=413)
        elif name == b"expect":
            if value.lower() != b"100-continue":
                raise ClientError("unsupported Expect header", status=417)
            self._expect = True
        elif 0 < len(value) <= 200:  # x-request-id: pass a sane one through, else make ours
            self._request_id = value

    def on_headers_complete(self):
        parser = self.parser
        version = parser.get_http_version()
        http1.check_version(version)
        if version == "1.1" and not self._host:
            raise ClientError("missing Host header")
        self.phase = BODY
        if self._expect and self.active is None and not self.queue:
            self.transport.write(http1.CONTINUE)

    def on_body(self, body):
        size = self._body_size + len(body)
        if size > self.ctx.cfg.limits.max_body_bytes:
            raise ClientError(f"request body larger than {self.ctx.cfg.limits.max_body_bytes} bytes", status=413)
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
        ctx = self.ctx
        exchange = Exchange(
            self,
            parser.get_method(),
            self._url,
            self._headers,
            body,
            parser.get_http_version() == "1.0",
            parser.should_keep_alive(),
            self._request_id or ctx.next_request_id(),
        )
        self.phase = WAIT
        self.since = self.loop.time()
        if self.active is None:
            self.active = exchange
            exchange.start()
        else:
            self.queue.append(exchange)
            if len(self.queue) >= ctx.cfg.limits.max_pipelined:
                self.pause_reading(PAUSE_PIPELINE)

    # -- answers --------------------------------------------------------------------------

    def exchange_done(self, exchange):
        """The active exchange answered completely; go on with the next one."""
        if exchange is not self.active:
            return
        self.active = None
        if exchange.close_after or self.closed or self.ctx.draining:
            self.close()
            return
        self.since = self.loop.time()
        self._next()

    def _next(self):
        queue = self.queue
        while queue and self.active is None and not self.closed:
            exchange = queue.popleft()
            self.active = exchange
            exchange.start()
        if self.paused & PAUSE_PIPELINE and len(queue) < self.ctx.cfg.limits.max_pipelined:
            self.resume_reading(PAUSE_PIPELINE)

    def send_error(self, exchange, err, close):
        """Answer ``exchange`` with an error response (its turn has come)."""
        close = close or exchange.close_after
        self.answer(exchange, render(err, exchange.request_id, close=close), close)

    def answer(self, exchange, response, close=False):
        """Write a whole response the proxy made itself for ``exchange``, then go on."""
        if self.closed:
            return
        close = close or exchange.close_after
        self.transport.write(response)
        if exchange is self.active:
            self.active = None
            if close:
                self.close()
            else:
                self._next()

    def _refuse(self, err):
        """A request we cannot parse on: answer it in its turn, read nothing more, close."""
        self.pause_reading(PAUSE_ERROR)
        self.phase = WAIT
        exchange = Exchange(self, b"", b"", [], b"", False, False, self._request_id or self.ctx.next_request_id(), err)
        if self.active is None:
            self.active = exchange
            exchange.start()
        else:
            self.queue.append(exchange)

    def close(self):
        if not self.closed:
            self.closed = True
            self.transport.close()

    # -- deadlines --------------------------------------------------------------------------

    def _on_timer(self):
        # Invariant: the timer never fires later than the current deadline. Every arming is
        # capped at the shortest request deadline, so a head that starts while the timer is
        # armed for a long keep-alive wait is still caught on time.
        self.timer = None
        if self.closed:
            return
        timeouts = self.ctx.cfg.timeouts
        phase = self.phase
        now = self.loop.time()
        if phase == HEAD:
            limit = timeouts.header_read
        elif phase == BODY:
            limit = timeouts.request_read
        else:
            limit = timeouts.keepalive
            if self.active is not None or self.queue:
                self.since = now  # relaying a response is not idleness
        remaining = self.since + limit - now
        if remaining > 0:
            self.timer = self.loop.call_later(min(remaining, self.ctx.timer_cap), self._on_timer)
            return
        if phase != WAIT and self.active is None and not self.queue:
            what = "request head" if phase == HEAD else "request body"
            self.transport.write(render(ClientError(f"timed out reading the {what}", status=408)))
        self.close()
