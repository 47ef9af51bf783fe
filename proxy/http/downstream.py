"""The client-facing protocol: the hot loop.

``data_received`` feeds the sans-IO ``RequestReader`` (llhttp plus the proxy's rules); each
complete request becomes an ``Exchange``. Exchanges run one at a time per connection, in order
(pipelined requests wait in a bounded queue, and reading pauses when it is full).

One lazy timer per connection enforces the header-read, request-read and keep-alive deadlines:
the reader's phase says which applies and since when, and the timer re-arms itself for
whatever deadline is current when it fires, so a request costs no timer churn.

Every transport callback that can fail ends in one handler (``crashed``): the active request
gets a 500 if its response has not started, a broken stream if it has, the connection closes
and the error is logged once. A bug costs one connection, never a hang.
"""

import asyncio
import logging
from collections import deque

from . import responses
from .errors import ClientError, InternalError
from .exchange import Exchange
from .request import IDLE, READING_HEAD, RequestReader

log = logging.getLogger("fleetproxy.downstream")

# Reasons to stop reading the client; reading resumes when none is left.
PAUSE_PIPELINE = 1
PAUSE_UPSTREAM = 2
PAUSE_ERROR = 4


class Downstream(asyncio.Protocol):
    __slots__ = (
        "ctx", "loop", "transport", "reader", "peer", "queue", "active", "closed", "writing_paused",
        "paused", "timer",
    )

    def __init__(self, ctx):
        self.ctx = ctx
        self.loop = ctx.loop
        self.transport = None
        self.reader = None
        self.peer = b""
        self.queue = deque()
        self.active = None
        self.closed = False
        self.writing_paused = False
        self.paused = 0
        self.timer = None

    # -- transport events -----------------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = peer[0].encode() if peer else b"unknown"
        high = self.ctx.cfg.limits.high_water
        transport.set_write_buffer_limits(high, high // 4)
        self.reader = RequestReader(self.ctx.cfg.limits, self, self.loop.time)
        self.ctx.connections.add(self)
        self.timer = self.loop.call_later(self.ctx.timer_cap, self._on_timer)

    def data_received(self, data):
        if self.paused & PAUSE_ERROR:
            return  # after a refused request nothing more is read
        try:
            self.reader.feed(data)
        except ClientError as err:
            self._refuse(err)
        except Exception as exc:
            self.crashed(exc)

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
        self.queue.clear()
        if active is not None:
            try:
                active.client_gone()
            except Exception as exc:
                log.exception("request %s: failed to end after the client left", _rid(active), exc_info=exc)

    def pause_writing(self):
        # The client reads slower than the upstream writes: stop reading the upstream.
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

    # -- the reader's sink ----------------------------------------------------------------

    def on_continue(self):
        # Only when this request is next: a pipelined one waits for its turn to be told.
        if self.active is None and not self.queue:
            self.transport.write(responses.CONTINUE)

    def on_request(self, method, target, headers, body, http10, keep_alive, request_id):
        exchange = Exchange(
            self, method, target, headers, body, http10, keep_alive, request_id or self.ctx.next_request_id()
        )
        if self.reader.asks_load:
            exchange.asked_load = True
        if self.active is None:
            self.active = exchange
            exchange.start()
        else:
            self.queue.append(exchange)
            if len(self.queue) >= self.ctx.cfg.limits.max_pipelined:
                self.pause_reading(PAUSE_PIPELINE)

    # -- answers --------------------------------------------------------------------------

    def exchange_done(self, exchange):
        """``exchange`` relayed a response completely; go on with the next one. (While the
        worker drains, responses say ``connection: close``, and it is done.)"""
        self._done(exchange, exchange.close_after or self.ctx.draining)

    def _done(self, exchange, close):
        if exchange is not self.active:
            return
        self.active = None
        if close or self.closed:
            self.close()
            return
        if self.reader.phase == IDLE:
            self.reader.since = self.loop.time()  # keep-alive idleness starts now
        self._next()

    def _next(self):
        queue = self.queue
        while queue and self.active is None and not self.closed:
            exchange = queue.popleft()
            self.active = exchange
            exchange.start()
        if self.paused & PAUSE_PIPELINE and len(queue) < self.ctx.cfg.limits.max_pipelined:
            self.resume_reading(PAUSE_PIPELINE)

    def answer(self, exchange, response, close=False):
        """Write a whole response the proxy made itself for ``exchange``, then go on."""
        if self.closed:
            return
        self.transport.write(response)
        self._done(exchange, close or exchange.close_after)

    def _refuse(self, err):
        """A request we cannot parse on: answer it in its turn, read nothing more, close."""
        self.pause_reading(PAUSE_ERROR)
        rid = self.reader.request_id or self.ctx.next_request_id()
        exchange = Exchange(self, b"", b"", [], b"", False, False, rid, err)
        if self.active is None:
            self.active = exchange
            exchange.start()
        else:
            self.queue.append(exchange)

    def crashed(self, exc):
        """The one handler for a failure of our own on this connection (see module doc)."""
        active = self.active
        log.exception("connection from %s: internal error", self.peer.decode(errors="replace"), exc_info=exc)
        self.pause_reading(PAUSE_ERROR)
        self.queue.clear()
        if active is not None and not self.closed:
            try:
                active.crashed(InternalError("internal error in the proxy; the request was abandoned"))
            except Exception as again:  # never let the handler raise into the transport
                log.exception("request %s: failed to end cleanly", _rid(active), exc_info=again)
        elif not self.closed:
            self.transport.write(responses.error(InternalError("internal error in the proxy")))
        self.active = None
        self.close()

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
        try:
            self._check_deadline()
        except Exception as exc:
            self.crashed(exc)

    def _check_deadline(self):
        timeouts = self.ctx.cfg.timeouts
        reader = self.reader
        phase = reader.phase
        now = self.loop.time()
        if phase == READING_HEAD:
            limit = timeouts.header_read
        elif phase != IDLE:
            limit = timeouts.request_read
        else:
            limit = timeouts.keepalive
            if self.active is not None or self.queue:
                reader.since = now  # relaying a response is not idleness
        remaining = reader.since + limit - now
        if remaining > 0:
            self.timer = self.loop.call_later(min(remaining, self.ctx.timer_cap), self._on_timer)
            return
        if phase != IDLE and self.active is None and not self.queue:
            what = "request head" if phase == READING_HEAD else "request body"
            self.transport.write(responses.error(ClientError(f"timed out reading the {what}", status=408)))
        self.close()


def _rid(exchange):
    return exchange.request_id.decode(errors="replace")
