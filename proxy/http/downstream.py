"""The client-facing protocol: the hot loop.

How this works.
- ``data_received`` feeds the sans-IO ``RequestReader`` (llhttp plus the proxy's rules); each
  complete request becomes an ``Exchange``. Exchanges run one at a time per connection, in
  order; pipelined ones wait in ``queue``.
- Answering is a loop, never a recursion (``_advance``): an exchange that ends, however deep in
  a callback, only clears ``active`` and asks for the next; the one ``_advance`` on the stack
  starts it. A burst of requests the proxy answers itself (``/health``) costs no stack depth.
- Parsing stops where the pipeline is full. llhttp cannot stop in the middle of a buffer, so a
  read is fed in slices that cannot complete more requests than there is room for (``_cut``),
  and what is left of the read waits unparsed in ``unparsed``, reading paused, until the queue
  drains. Room: ``max_pipelined`` requests behind the active one, and ``max_queued_bytes`` of
  request bytes waiting (parsed, unparsed, and the part of a request still arriving behind the
  active one). A connection over its own budget is only paused: its pipeline delays nobody but
  itself, so backpressure bounds it without refusing an honest client. Over the worker's
  budget (``max_worker_queued_bytes``, summed in ``ctx.queued_bytes``) the connection adding
  to it is refused instead: a shared budget held by some must not stall everyone else, so its
  waiting requests are dropped (never processed, as RFC 9112 9.6 allows after a close) and the
  next answer is a 503 with ``Retry-After``, then the connection closes.
- The next request does not start while the client is not reading (``writing_paused``): the
  answers of a pipeline never pile up in our write buffer.
- One lazy timer per connection enforces every client deadline: head (a new connection that
  sent nothing yet included: ``header_read``, or keep-alive if shorter), body, keep-alive, and
  the write stall: while writing is paused, a client that takes no byte of what we wrote for
  ``write_stall`` is aborted with a reset (the upstream watchdog does not count a stall while
  the client is the slow one, so this is what bounds a client that stops reading). The
  reader's phase says which read deadline applies and since when; while the proxy itself
  stopped reading (pipeline full, upstream slow) no read deadline runs. The timer re-arms
  itself for whatever deadline is current when it fires, never sleeping past the shortest
  limit (``ctx.timer_cap``), so a request costs no timer churn.
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
import fcntl
import logging
import re
import socket
import struct
import termios
from collections import deque

from . import heads, responses
from .errors import ClientError, InternalError, NoBackend
from .exchange import Exchange, error_response
from .request import IDLE, READING_HEAD, RequestReader

log = logging.getLogger("fleetproxy.downstream")

# Reasons to stop reading the client; reading resumes when none is left.
PAUSE_PIPELINE = 1  # the queue is full (requests or bytes); the rest waits in ``unparsed``
PAUSE_UPSTREAM = 2
PAUSE_ERROR = 4
_OURS = PAUSE_PIPELINE | PAUSE_UPSTREAM  # we stopped reading, not the client: no read deadline

RETRY_AFTER = 1  # s: told to a connection turned away or refused for the worker's queued bytes
TURN_AWAY_GRACE = 1.0  # s a turned-away client has to read its 503 and close, then it is aborted

# Where a request head may end: its blank line. llhttp wants CRLF CRLF; this also matches bare
# LFs, so it over-counts (body bytes too), which only makes slices shorter (see ``_cut``).
_BLANK_LINE = re.compile(rb"\n\r?\n")
_LINGER_OFF = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() drops unsent bytes and resets


class Overloaded(NoBackend):
    """The worker is at a bound it shares among clients (connections, queued bytes): a 503
    with ``Retry-After``; the client did nothing wrong and may retry, here or elsewhere."""

    retry_after = RETRY_AFTER


class Downstream(asyncio.Protocol):
    __slots__ = (
        "ctx", "loop", "transport", "reader", "peer", "trusted", "queue", "active", "closed", "writing_paused",
        "paused", "timer", "unparsed", "advancing", "feeding", "completed", "requests", "queued_size",
        "partial", "queued_bytes", "stall_since", "stall_size",
    )

    def __init__(self, ctx):
        self.ctx = ctx
        self.loop = ctx.loop
        self.transport = None
        self.reader = None
        self.peer = b""
        self.trusted = False  # the peer is one of trusted_proxies: its forwarding headers count
        self.queue = deque()
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
        self.stall_size = 0  # ... and how many it had not taken then (``_unsent``)

    # -- transport events -----------------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        ctx = self.ctx
        if len(ctx.connections) >= ctx.cfg.limits.max_connections:
            self._turn_away()
            return
        peer = transport.get_extra_info("peername")
        self.peer = peer[0].encode() if peer else b"unknown"
        self.trusted = heads.peer_trusted(self.peer, self.ctx.cfg.trusted_proxies)  # once per connection
        high = ctx.cfg.limits.high_water
        transport.set_write_buffer_limits(high, high // 4)
        self.reader = RequestReader(ctx.cfg.limits, self, self.loop.time)
        ctx.connections.add(self)
        self.timer = self.loop.call_later(ctx.timer_cap, self._on_timer)

    def data_received(self, data):
        if self.paused & PAUSE_ERROR:
            return  # after a refused request nothing more is read
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
            except Exception as exc:
                log.exception("request %s: failed to end after the client left", _rid(active), exc_info=exc)

    def pause_writing(self):
        # The client reads slower than the upstream writes: stop reading the upstream, and
        # start counting a write stall (see ``_stalled``).
        self.writing_paused = True
        self.stall_since = self.loop.time()
        self.stall_size = _unsent(self.transport)
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

    # -- reading: no further than the pipeline has room for ------------------------------------

    def _room(self):
        """Requests that may still complete before the pipeline is full (the active one
        counts while it is not there yet), or 0 when the queued bytes are at their bound.
        Bytes held unparsed do not count here: they are what waits for the room."""
        limits = self.ctx.cfg.limits
        waiting = self.queued_size
        if self.active is not None or self.queue:
            waiting += self.partial
        if waiting >= limits.max_queued_bytes:
            return 0
        return limits.max_pipelined - len(self.queue) + (self.active is None)

    def _parse(self, data):
        """Feed ``data`` to the reader, in slices that cannot complete more requests than
        there is room for; keep what is left in ``unparsed`` and pause reading."""
        reader = self.reader
        n = len(data)
        pos = 0
        self.feeding = True
        try:
            while pos < n and not self.closed and not self.paused & PAUSE_ERROR:
                room = self._room()
                if room <= 0:
                    self.unparsed = data[pos:] if pos else data
                    break
                if pos == 0 and data.count(b"\n\r\n") + data.count(b"\n\n") < room:
                    end = n  # the common case: the whole read at once
                else:
                    end = _cut(data, pos, room)
                chunk = data[pos:end] if pos or end < n else data
                self.completed = False
                reader.feed(chunk)
                if reader.phase == IDLE:
                    self.partial = 0
                elif self.completed:
                    self.partial = len(chunk)
                else:
                    self.partial += len(chunk)
                pos = end
        finally:
            self.feeding = False
        if self.unparsed is not None or (not self.closed and self._room() <= 0):
            self.pause_reading(PAUSE_PIPELINE)
        self._account()
        ctx = self.ctx
        if self.queued_bytes and ctx.queued_bytes > ctx.cfg.limits.max_worker_queued_bytes and not self.closed:
            self._over_worker_budget()

    def _account(self):
        """Bring this connection's share of the worker's queued request bytes up to date:
        requests parsed and waiting, bytes not parsed yet, and a request still arriving behind
        the active one (a request that will start as soon as it completes is not waiting)."""
        size = self.queued_size
        if self.unparsed is not None:
            size += len(self.unparsed)
        if self.active is not None or self.queue:
            size += self.partial
        delta = size - self.queued_bytes
        if delta:
            self.queued_bytes = size
            self.ctx.queued_bytes += delta

    def _drop_waiting(self):
        """Forget every request that has not started, parsed or not."""
        self.queue.clear()
        self.queued_size = 0
        self.unparsed = None
        self.partial = 0
        self._account()

    # -- the reader's sink ----------------------------------------------------------------

    def on_continue(self):
        # Only when this request is next: a pipelined one waits for its turn to be told.
        if self.active is None and not self.queue:
            self.transport.write(responses.CONTINUE)

    def on_request(self, method, target, headers, body, http10, keep_alive, request_id):
        if self.closed:
            return  # a request after a close in the same read: never processed (RFC 9112 9.6)
        exchange = Exchange(
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
            exchange.size = _size(target, headers, body)
            self.queued_size += exchange.size
            self.queue.append(exchange)

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
                    exchange = queue.popleft()
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
            if self.paused & PAUSE_PIPELINE and self.unparsed is None and not self.closed and self._room() > 0:
                self.resume_reading(PAUSE_PIPELINE)
        finally:
            self.advancing = False
        self._account()

    def answer(self, exchange, response, close=False):
        """Write a whole response the proxy made itself for ``exchange``, then go on."""
        if self.closed:
            return
        self.transport.write(response)
        self._done(exchange, close or exchange.close_after)

    def _refuse(self, err):
        """A request we cannot parse on: answer it in its turn, read nothing more, close."""
        self.pause_reading(PAUSE_ERROR)
        self.unparsed = None
        rid = self.reader.request_id or self.ctx.next_request_id()
        self.queue.append(Exchange(self, b"", b"", [], b"", False, False, rid, err))
        self._account()
        self._advance()

    def _over_worker_budget(self):
        """The worker holds more queued request bytes than its budget, and this connection
        adds to them: drop its waiting requests, answer the next one with a 503, close."""
        ctx = self.ctx
        if "queued_bytes" not in ctx.warned:
            ctx.warned.add("queued_bytes")
            log.warning(
                "worker holds %d queued request bytes, above limits.max_worker_queued_bytes (%d): refusing "
                "pipelined requests with 503; this is logged once", ctx.queued_bytes,
                ctx.cfg.limits.max_worker_queued_bytes,
            )
        self.pause_reading(PAUSE_ERROR)
        self._drop_waiting()
        err = Overloaded("the proxy holds too many queued requests; retry later")
        self.queue.append(Exchange(self, b"", b"", [], b"", False, False, self.ctx.next_request_id(), err))
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
        transport.write(error_response(err))
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
            self.transport.write(responses.error(InternalError("internal error in the proxy")))
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
        _reset(self.transport)

    # -- deadlines --------------------------------------------------------------------------

    def _on_timer(self):
        # Invariant: the timer never fires later than the current deadline. Every arming is
        # capped at the shortest client deadline, so a deadline that starts while the timer is
        # armed for a long keep-alive wait is still caught on time. (connection_lost cancels it.)
        self.timer = None
        try:
            if self.closed:
                self._linger()
            else:
                self._check_deadline()
        except Exception as exc:
            self.crashed(exc)

    def _stalled(self, now):
        """Seconds left before the write stall limit, from the last time the client took any
        byte of what we wrote (seen at a check: the timer looks at least every quarter of the
        limit while writing is paused, so a stall is cut between 1 and 1.25 times it)."""
        size = _unsent(self.transport)
        if size < self.stall_size:
            self.stall_since = now
        self.stall_size = size
        return self.stall_since + self.ctx.cfg.timeouts.write_stall - now

    def _linger(self):
        """A closed connection whose transport still flushes: abort it once the client has
        taken nothing for ``write_stall``."""
        if not self.transport.get_write_buffer_size():
            return  # flushed: connection_lost is on its way
        stall = self.ctx.cfg.timeouts.write_stall
        left = self._stalled(self.loop.time())
        if left <= 0:
            _reset(self.transport)
            return
        self.timer = self.loop.call_later(min(left, stall / 4), self._on_timer)

    def _check_deadline(self):
        ctx = self.ctx
        timeouts = ctx.cfg.timeouts
        now = self.loop.time()
        arm = ctx.timer_cap
        if self.writing_paused:
            left = self._stalled(now)
            if left <= 0:
                log.info(
                    "connection from %s: the client read nothing for %.3g s (write_stall); aborting it",
                    self.peer.decode(errors="replace"), timeouts.write_stall,
                )
                self.abort()
                return
            arm = min(arm, left, timeouts.write_stall / 4)
        reader = self.reader
        phase = reader.phase
        if self.paused & _OURS:
            reader.since = now  # we stopped reading: the client is not late
        if phase == READING_HEAD:
            limit = timeouts.header_read
        elif phase != IDLE:
            limit = timeouts.request_read
        elif self.active is not None or self.queue:
            limit = timeouts.keepalive
            reader.since = now  # relaying a response is not idleness
        elif not self.requests:
            # A new connection owes us a head: it gets the head's deadline, never more patience
            # than an idle keep-alive connection (whichever is shorter), not 75 s of keep-alive.
            limit = min(timeouts.header_read, timeouts.keepalive)
        else:
            limit = timeouts.keepalive
        remaining = reader.since + limit - now
        if remaining > 0:
            self.timer = self.loop.call_later(min(remaining, arm), self._on_timer)
            return
        if phase != IDLE and self.active is None and not self.queue:
            what = "request head" if phase == READING_HEAD else "request body"
            self.transport.write(responses.error(ClientError(f"timed out reading the {what}", status=408)))
        self.close()


def _cut(data, pos, room):
    """Where to end a slice of ``data`` from ``pos`` so that feeding it completes at most
    ``room`` requests: just before the last LF of the ``room``-th blank line. A request
    completes at the earliest on its head's blank line, requests complete one after another,
    so between two blank lines (the first one's LF included, the second's excluded) at most
    one completes, and before the first, only the request already under way. The slice is
    never empty: a blank line ends at least one byte past ``pos``."""
    seen = 0
    for match in _BLANK_LINE.finditer(data, pos):
        seen += 1
        if seen == room:
            return match.end() - 1
    return len(data)


def _size(target, headers, body):
    """A queued request's bytes, as held in memory (body, target, fields)."""
    size = len(body) + len(target) + 64
    for name, value in headers:
        size += len(name) + len(value) + 4
    return size


def _unsent(transport):
    """Bytes written and not yet taken by the client: the transport's buffer plus, on Linux,
    the socket's unacknowledged send queue (TIOCOUTQ). The buffer alone moves only when the
    kernel finds the socket writable again, after a third of a send buffer of megabytes has
    drained; the queue moves with every byte the client reads."""
    size = transport.get_write_buffer_size()
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            size += struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
        except (OSError, ValueError, AttributeError):
            pass
    return size


def _reset(transport):
    """Abort with a reset, as nginx's ``reset_timedout_connection``: a plain close of a socket
    whose client reads nothing leaves its unsent bytes (up to the send buffer, megabytes) in
    the kernel, an orphan retrying toward a zero window for minutes; a reset frees them now."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_OFF)
        except OSError:
            pass
    transport.abort()


def _rid(exchange):
    return exchange.request_id.decode(errors="replace")
