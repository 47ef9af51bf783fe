"""The client-facing protocol: the hot loop.

How this works.
- ``data_received`` feeds the sans-IO ``RequestReader`` (llhttp plus the proxy's rules); each
  complete request becomes an ``Exchange``. Exchanges run one at a time per connection, in
  order; pipelined ones wait in ``queue``.
- Answering is a loop, never a recursion (``_advance``): an exchange that ends, however deep in
  a callback, only clears ``active`` and asks for the next; the one ``_advance`` on the stack
  starts it. A burst of requests the proxy answers itself (``/health``) costs no stack depth.
- Reading goes no further than the pipeline has room for (``pipeline.Pipeline``: slices,
  per-connection and per-worker byte budgets); the next request does not start while the
  client is not reading (``writing_paused``): the answers of a pipeline never pile up in our
  write buffer.
- Every client deadline, the write stall included, runs on one lazy timer per connection
  (``deadlines.Deadlines``).
- Closing ends what is in flight at once (``close``: the upstream request is aborted, which is
  what makes vLLM free the GPU), whether we close or the client sent its FIN. A closing
  transport still flushes what we wrote, but a client that takes nothing of it for
  ``write_stall`` is reset: closing never waits forever.
- Connections beyond ``max_connections`` per worker get a 503 with ``Retry-After`` at once
  and are closed (``_turn_away``; see there for why not the kernel backlog).

Every transport callback that can fail ends in one handler (``crashed``): the active request
gets a 500 if its response has not started, a broken stream if it has, the connection closes
and the error is logged once. A bug costs one connection, never a hang.
"""

import asyncio
import logging

from . import heads, responses
from .deadlines import Deadlines, reset, unsent
from .direct import Sender
from .errors import ClientError, InternalError, Overloaded
from .exchange import Exchange, error_response, new_exchange
from .pipeline import PAUSE_ERROR, PAUSE_PIPELINE, PAUSE_UPSTREAM, Pipeline, held_size
from .request import IDLE, RequestReader
from ..observe.metrics import hold, release

_IDLE = IDLE  # (a C int where compiled, as the reader's phase is)
_ERROR, _PIPELINE = PAUSE_ERROR, PAUSE_PIPELINE  # C ints where compiled (downstream.pxd)

log = logging.getLogger("fleetproxy.downstream")

TURN_AWAY_GRACE = 1.0  # s a turned-away client has to read its 503 and close, then it is aborted


class Downstream(Pipeline, Deadlines, asyncio.Protocol):
    __slots__ = (
        "ctx", "loop", "transport", "reader", "peer", "trusted", "queue", "active", "closed", "writing_paused",
        "paused", "timer", "unparsed", "advancing", "feeding", "completed", "requests", "queued_size",
        "partial", "queued_bytes", "stall_since", "stall_size", "sender",
    )

    def __init__(self, ctx):
        self.ctx = ctx
        self.loop = ctx.loop
        self.transport = None
        self.sender = None  # direct.Sender: how ``write`` reaches the socket
        self.reader = None
        self.peer = b""
        self.trusted = False  # the peer is one of trusted_proxies: its forwarding headers count
        self.queue = []  # not a deque: 56 bytes against 760 per connection, and it holds few
        self.active = None
        self.closed = False
        self.writing_paused = False
        self.paused = 0
        self.timer = None
        self.unparsed = None  # bytes of the last read not fed yet: the pipeline was full
        self.advancing = False  # ``_advance`` is on the stack
        self.feeding = False  # the reader is parsing (its callbacks may call us)
        self.completed = False  # a request completed during the current slice
        self.requests = 0  # requests read on this connection
        self.queued_size = 0  # bytes of the requests in ``queue``
        self.partial = 0  # bytes fed of a request not complete yet (an upper bound)
        self.queued_bytes = 0  # this connection's share of ctx.queued_bytes
        self.stall_since = 0.0  # write stall: when the client was last seen taking bytes
        self.stall_size = 0  # ... and how many it had not taken then (``unsent``)

    # -- transport events -----------------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        self.sender = Sender(transport)
        ctx = self.ctx
        if len(ctx.connections) >= ctx.cfg.limits.max_connections:
            self._turn_away()
            return
        peer = transport.get_extra_info("peername")
        self.peer = peer[0].encode() if peer else b"unknown"
        self.trusted = heads.peer_trusted(self.peer, self.ctx.cfg.trusted_proxies)  # once per connection
        high = ctx.cfg.limits.high_water
        transport.set_write_buffer_limits(high, high // 4)
        self.reader = RequestReader(ctx.read_limits, self)
        ctx.connections.add(self)
        self.timer = self.loop.call_later(ctx.timer_cap, self._on_timer)

    def data_received(self, data):
        if self.paused & _ERROR:
            return  # after a refused request nothing more is read
        hold()  # one clock read for this read's requests (observe/metrics.py)
        try:
            if self.unparsed is not None:
                self.unparsed += data  # reading is paused; a read already under way lands here
                self._account()
            else:
                self._parse(data)
        except ClientError as err:
            self._refuse(err)
        except Exception as exc:
            self.crashed(exc)
        finally:
            release()

    def write(self, data):
        """Every byte to the client: sent on the socket directly where http/direct.py says it is
        safe, else by the transport."""
        self.sender.write(data, self.closed)

    def eof_received(self):
        # A client that stops sending has left: like nginx without proxy_ignore_client_abort,
        # treat the FIN as a disconnect and abort what it asked for, now: closing alone would
        # wait for our write buffer to drain first, which a client that reads nothing never does.
        try:
            self.close()
        except Exception as exc:
            self.crashed(exc)
        return False

    def connection_lost(self, exc):
        self.closed = True
        self.ctx.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        active = self.active
        self.active = None
        self._drop_waiting()
        if active is not None:
            try:
                active.client_gone()
            except Exception as err:
                log.exception("request %s: failed to end after the client left", _rid(active), exc_info=err)

    def pause_writing(self):
        # The client reads slower than the upstream writes: stop reading the upstream, and
        # start counting a write stall (see ``_stalled``).
        self.writing_paused = True
        self.stall_since = self.loop.time()
        self.stall_size = unsent(self.transport)
        active = self.active
        if active is not None and active.conn is not None:
            active.conn.transport.pause_reading()

    def resume_writing(self):
        self.writing_paused = False
        active = self.active
        if active is not None:
            if active.conn is not None:
                active.conn.transport.resume_reading()
        elif not self.closed:
            try:
                self._advance()  # the next request waited for the client to read
            except Exception as exc:
                self.crashed(exc)

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
            self.write(responses.CONTINUE)

    def on_request(self, method, target, headers, body, http10, keep_alive, request_id):
        if self.closed:
            return  # a request after a close in the same read: never processed (RFC 9112 9.6)
        exchange = new_exchange(
            self, method, target, headers, body, http10, keep_alive, request_id or self.ctx.next_request_id()
        )
        if self.reader.asks_load:
            exchange.asked_load = True
        self.requests += 1
        self.completed = True
        if self.active is None and not self.queue and not self.writing_paused:
            self.active = exchange
            exchange.start()  # an answer of its own ends in _advance, which starts no recursion
        else:
            exchange.size = held_size(target, headers, body)
            self.queued_size += exchange.size
            self.queue.append(exchange)

    # -- answers --------------------------------------------------------------------------

    def exchange_done(self, exchange):
        """``exchange`` relayed a response completely; go on with the next one. (While the
        worker drains, responses say ``connection: close``, and it is done.)"""
        ex = exchange  # compiled: an Exchange, its fields struct members (downstream.pxd)
        self._done(ex, ex.close_after or self.ctx.draining)

    def _done(self, exchange, close):
        if exchange is not self.active:
            return
        self.active = None
        if close or self.closed:
            self.close()
            return
        reader = self.reader
        if reader.phase == _IDLE:
            reader.since = reader.now()  # keep-alive idleness starts now
        self._advance()

    def _advance(self):
        """Start the next exchanges, one after another, and feed what waits unparsed as room
        frees up. Iterative: an exchange that ends inside ``start`` (an answer of the proxy's
        own) calls back here, finds the loop already running further up the stack, and
        returns; the loop then starts the next one."""
        if self.advancing:
            return
        self.advancing = True
        try:
            queue = self.queue
            while not self.closed:
                if self.active is None and queue:
                    if self.writing_paused:
                        break  # resume_writing comes back here
                    exchange = queue.pop(0)
                    self.queued_size -= exchange.size
                    self.active = exchange
                    exchange.start()
                elif self.unparsed is not None and not self.feeding and self._room() > 0:
                    unparsed, self.unparsed = self.unparsed, None
                    try:
                        self._parse(unparsed)
                    except ClientError as err:
                        self._refuse(err)
                else:
                    break
            if self.paused & _PIPELINE and self.unparsed is None and not self.closed and self._room() > 0:
                self.resume_reading(PAUSE_PIPELINE)
        finally:
            self.advancing = False
        self._account()

    def answer(self, exchange, response, close=False):
        """Write a whole response the proxy made itself for ``exchange``, then go on."""
        if self.closed:
            return
        if exchange.method == b"HEAD":
            response = responses.head_only(response)
        self.write(response)
        self._done(exchange, close or exchange.close_after)

    def _refuse(self, err):
        """A request we cannot parse on: answer it in its turn, read nothing more, close."""
        self.pause_reading(PAUSE_ERROR)
        self.unparsed = None
        rid = self.reader.request_id or self.ctx.next_request_id()
        self.queue.append(Exchange(self, b"", b"", [], b"", False, False, rid, err))
        self._account()
        self._advance()

    def _turn_away(self):
        """Over ``max_connections``: a 503 with ``Retry-After``, then close. Not the kernel's
        backlog: under SO_REUSEPORT the kernel keeps hashing new connections to this worker's
        socket even while its siblings have room, and a backlog that fills shows the client
        only a connect timeout; a 503 is a clear answer a load balancer or SDK retries (and
        asyncio servers cannot pause accepting anyway). It costs an accept and one write: no
        reader, no timer of the hot path. Our write side is shut after the answer and what the
        client sends is read and dropped, so closing never resets the answer away; the client
        gets ``TURN_AWAY_GRACE`` to read it before the connection is aborted."""
        ctx = self.ctx
        self.closed = True
        self.paused = PAUSE_ERROR  # data_received drops what comes
        if "max_connections" not in ctx.warned:
            ctx.warned.add("max_connections")
            log.warning(
                "worker at limits.max_connections (%d): new connections get 503; this is logged once",
                ctx.cfg.limits.max_connections,
            )
        ctx.turned_away += 1
        err = Overloaded("the proxy has too many connections; retry later")
        transport = self.transport
        self.write(error_response(err))
        if transport.can_write_eof():
            transport.write_eof()
        self.timer = self.loop.call_later(TURN_AWAY_GRACE, transport.abort)

    def crashed(self, exc):
        """The one handler for a failure of our own on this connection (see module doc)."""
        active = self.active
        log.exception("connection from %s: internal error", self.peer.decode(errors="replace"), exc_info=exc)
        self.pause_reading(PAUSE_ERROR)
        self._drop_waiting()
        if active is not None and not self.closed:
            try:
                active.crashed(InternalError("internal error in the proxy; the request was abandoned"))
            except Exception as again:  # never let the handler raise into the transport
                log.exception("request %s: failed to end cleanly", _rid(active), exc_info=again)
        elif not self.closed:
            self.write(responses.error(InternalError("internal error in the proxy")))
        self.active = None
        self.close()

    def close(self):
        """Close the connection, ending at once what it asked for that is still in flight
        (the upstream request is aborted) and forgetting what waits. The transport still
        flushes our write buffer, but only while the client drains it: after ``write_stall``
        without progress it is aborted (``_linger``)."""
        if self.closed:
            return
        self.closed = True
        active = self.active
        self.active = None
        self._drop_waiting()
        if active is not None and not active.finished:
            try:
                active.client_gone()
            except Exception as exc:
                log.exception("request %s: failed to end on close", _rid(active), exc_info=exc)
        self.transport.close()
        # The timer now watches the flush (``_linger``); connection_lost cancels it.
        self.stall_since = self.loop.time()
        self.stall_size = -1  # the first check sets the baseline
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.loop.call_later(self.ctx.cfg.timeouts.write_stall / 4, self._on_timer)

    def abort(self):
        """Drop the connection without flushing (a client that reads nothing)."""
        self.close()
        reset(self.transport)

def _rid(exchange):
    return exchange.request_id.decode(errors="replace")
