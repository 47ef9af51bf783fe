"""The upstream half of an exchange: send the request, pump the response, watch for stalls.

How this works.
- ``send`` writes the request head (``heads.upstream_head``) and body on a connection taken
  from the endpoint's pool, in one write when they are small.
- ``upstream_data`` is the pump. The framer (``_speedups``) tracks the message; the bytes the
  upstream sent go to the client as they came (no re-chunking, no SSE re-encoding), except
  that an event stream is cut at event boundaries, holding a partial event until it completes,
  so a failure can always be reported as a whole in-band event.
- Backpressure is cross-wired: the client transport's pause_writing pauses reading the
  upstream (``Downstream.pause_writing``), the upstream transport's pauses reading the client
  (``UpstreamConnection.pause_writing``).
- The watchdog ticks at a fraction of the upstream timeouts and counts ticks without progress:
  a stall past first_byte (before the head) or idle (between reads) fails the exchange.
  A counter read per tick, not a timer re-armed per read, and one timer per worker
  (``watchdog.Watchdog``), not one per request: a set's add and discard instead of a timer armed and
  cancelled (1.9 us and ~0.6 KiB per open stream with uvloop).

What an outcome means (retry, fallback, an error response, a broken stream) is the
exchange's business: ``Relay`` reports to ``on_status``, ``complete``, ``break_stream`` and
``upstream_failed``, which ``exchange.Exchange`` implements.
"""

from _speedups import CHUNKED, DONE, ERROR, EVENT, HEAD, LENGTH, NONE, UNTIL_CLOSE, new_framer

from ..observe.metrics import USAGE_TAKEN, clock, now as arrived
from ..observe.streamusage import finish_at, known, quiet, quiet_end, strip, unit_start, usage_body
from ..observe.tracing import upstream_headers
from . import heads
from .heads import client_head, upstream_head
from .chunked import Dechunker
from .plainrequest import Fields
from .errors import UpstreamError

MAX_HOLD = 1024 * 1024  # bytes: an SSE event larger than this is passed on before it ends
# Bytes: a body below this is copied in after its head, one buffer for one send(2); a larger
# one leaves with its head by one sendmsg(2) of the two (direct.Sender.write2), not copied.
SMALL_BODY = 4 * 1024
_COMPILED = not __file__.endswith(".py")  # this module runs as its Cython build (relay.pxd)


class Relay:
    __slots__ = (
        "conn", "framer", "head_sent", "held", "dechunker", "rechunk", "ticks", "rx_seen", "reused",
        "strip", "tail", "token_end", "watch_at",
    )

    def __init__(self):
        self._start_relay()

    def _start_relay(self):
        """The relay's state before a request is sent (a C call from Exchange.__init__)."""
        self.conn = None
        self.framer = None
        self.head_sent = False
        self.held = None  # bytes of an SSE event not yet complete
        self.dechunker = None  # an HTTP/1.0 client: a chunked body goes de-chunked
        self.rechunk = False  # an HTTP/1.1 client: a close-delimited body goes chunked
        self.ticks = 0
        self.rx_seen = 0
        self.watch_at = -1  # its place in the watchdog's list, -1 while not watched
        self.reused = False  # the connection carried a request before this one
        self.strip = 0  # include_usage added upstream: 1 watching for the finish event, 2 holding the end
        self.tail = None  # the stream's end, held from the read with the finish event (strip 2)
        self.token_end = None  # how this stream's token events end (streamusage.quiet_end; strip 1)

    def send(self, conn):
        self.conn = conn
        conn.exchange = self
        conn.requests += 1
        self.reused = conn.requests > 1
        down = self.down
        ctx = down.ctx
        self.framer = new_framer(self.method == b"HEAD")
        endpoint = self.selection.endpoint
        body = self.body
        adapter = endpoint.adapter
        if adapter is None:
            target, headers, extra = self.target, self.headers, ()
            if self.tenant is not None:  # vLLM's priority field from the tenant's tier
                body = ctx.tenants.body_for(endpoint, self.tenant, body)
        else:
            target, headers, body = adapter.adapt(self.target, self.headers, body)
            extra = adapter.extra
        obs = self.obs
        self.strip = 0
        self.tail = None
        if obs is not None:
            if obs.usage and adapter is None:  # only vLLM's stream is known well enough to restore
                body = usage_body(body)
                self.strip = 1
            obs.t_sent = clock()
            if obs.span is not None:
                headers, extra = upstream_headers(headers, extra, obs.span)
        if type(headers) is Fields:  # a plain request's, as the client wrote them: forwarded in one walk
            fields = headers
            forwarded = fields.forwarded(down.trusted)
            if forwarded is not None:
                headers = forwarded
        small = len(body) < SMALL_BODY  # joined to the head: one copy, one write
        head = upstream_head(
            self.method, target, headers, endpoint.authority, down.peer, self.request_id, len(body), extra,
            endpoint.ask_load and not self.asked_load, down.trusted, body if small else b"",
        )
        if down.writing_paused:
            conn.transport.pause_reading()
        try:
            if small:
                conn.write(head)
            else:
                conn.sender.write2(head, body, conn.closed)
        except RuntimeError:
            # uvloop's transport was closed earlier in this turn of the loop (a reset read by
            # then) and its connection_lost has not run yet; it runs next and retries or ends
            # this request as one whose connection was lost before any response byte.
            conn.closed = True
        self.ticks = -1  # the worker's next tick may come at once: it does not count
        self.rx_seen = conn.rx
        ctx.watchdog.add(self)

    # -- the pump -----------------------------------------------------------------------------

    def upstream_data(self, data):
        framer = self.framer
        flags = framer.feed(data)
        down = self.down
        n = len(data)
        start = 0
        head = False  # a head to send, joined to this read's body bytes below
        obs = self.obs
        if obs is not None and (obs.t_body == 0.0 or flags & HEAD):  # no time read per token
            now = arrived()  # when this read arrived (metrics.hold): a head and its first body bytes often share it
            if obs.t_body == 0.0 and framer.body_bytes:
                obs.t_body = now
            if flags & HEAD:
                obs.t_head = now
        if flags & HEAD:
            if self.on_status(framer.status, flags & DONE and not flags & ERROR and framer.keep_alive):
                return  # retried elsewhere; this response is dropped
            kind = framer.kind
            if down.ctx.draining:
                self.close_after = True
            if self.http10:
                # No chunked coding in HTTP/1.0: the close ends the body.
                if kind == CHUNKED:
                    self.dechunker = Dechunker()
                    self.close_after = True
                elif kind == UNTIL_CLOSE:
                    self.close_after = True
            elif kind == UNTIL_CLOSE:
                # Chunked for the client, so that an upstream reset (no terminating chunk)
                # looks broken rather than complete, and the client connection stays usable.
                self.rechunk = True
            head = True
            if self.strip and (framer.status != 200 or not framer.event_stream or kind == NONE or kind == LENGTH):
                self.strip = 0  # a fixed length cannot shrink; anything but a stream has nothing to take out
            self.head_sent = True
            start = framer.head_end
        elif flags & ERROR and not self.head_sent:
            endpoint = self.selection.endpoint
            endpoint.failed(down.ctx.loop.time())
            self.fail(UpstreamError(f"invalid response from backend {endpoint.label}: {framer.error}"))
            return
        end = framer.msg_end if flags & DONE else framer.safe_end
        if end < start:
            end = start

        held = self.held
        buf = data  # compiled: its bytes, sliced without a slice object (relay.pxd)
        body_at = 0  # where out's bytes for the client start in it (a whole response: below)
        if held is None:
            if start == 0 and end == n:
                out = data  # the common case: forwarded as received
            elif head and end == n and flags & DONE and not self.rechunk and self.dechunker is None:
                # A whole response in this read (a chat's answer, a stream written at once): its
                # body is copied once, into the client's head's bytes (client_head), not first
                # into an object of its own; a stream's end is rewritten in this read (_strip).
                out, body_at = data, start
            else:
                out = buf[start:end]
                if end < n and not flags & (DONE | ERROR):
                    self.held = buf[end:n]
        elif end > start:
            out = held + buf[start:end]
            self.held = buf[end:n] if end < n and not flags & (DONE | ERROR) else None
        else:
            held += data[start:]
            if len(held) > MAX_HOLD:
                out, self.held = held, None
            else:
                out, self.held = b"", held

        tenant = self.tenant
        if tenant is not None and framer.body_bytes >= tenant.next_charge and framer.event_stream:
            down.ctx.tenants.charge_stream(tenant, framer.body_bytes, int(down.ctx.router.clock() * 1e6))
        # len(out), not out: compiled, a size read rather than the truth protocol's calls (per read).
        if obs is not None and len(out) > body_at:
            strip = self.strip
            if strip:
                at = 0
                if strip == 1:  # most reads end as the last one without a finish event did
                    token_end = self.token_end
                    at = -1 if token_end is not None and _quiet(out, token_end) else self._finish_in(out, body_at)
                if at >= 0:  # else: before the finish event, it passes as it came
                    out = self._strip(out, flags, at, start - body_at if held is None else -1, body_at)
            elif flags & EVENT or not framer.event_stream:
                _keep(obs, out, body_at)
        if len(out):
            if self.dechunker is not None:
                out = self.dechunker.feed(out)
            elif self.rechunk:
                out = heads.chunk(out)
        if flags & DONE and tenant is not None and not flags & ERROR:
            # The tenant's limits see this request end (its usage charged, its in-flight slot
            # given back) before its client does: a client that sends its next request the
            # moment this one ends is admitted against them, whichever worker takes it.
            down.ctx.tenants.release(self)
        if head:
            joined, report = client_head(
                framer, self.request_id, self.close_after, self.dechunker is not None, self.asked_load, self.rechunk,
                self.tenant.headers if self.tenant is not None else b"", out, body_at,
            )
            # The fields are in the client's head now: not held for the stream's life (~0.9 KiB).
            framer.forget_head()
            if report is not None:
                self.selection.endpoint.observe_in_band(report)
            down.write(joined)
            if obs is not None:
                obs.t_resp = clock()
        elif len(out):
            down.write(out)

        if flags & DONE:
            self.complete(framer.keep_alive and not flags & ERROR)
        elif flags & ERROR:
            self.break_stream(f"backend {self.selection.endpoint.label} broke the response framing: {framer.error}")

    def upstream_lost(self, exc):
        self.conn = None  # the connection already detached itself
        if self.finished:
            return
        framer = self.framer
        if exc is None and framer is not None and framer.eof():
            # A close-delimited body: a clean close (FIN) is its end; a reset never is.
            held = self.held
            self.held = None
            if self.strip == 2:
                held = self._strip_end(self.tail + held if held else self.tail)
            if self.rechunk:
                self.down.write(heads.chunk(held) + b"0\r\n\r\n" if held else b"0\r\n\r\n")
            elif held:
                self.down.write(held)
            self.complete(False)
            return
        reason = "reset the connection" if exc is not None else "closed the connection"
        self.upstream_failed(f"backend {self.selection.endpoint.label} {reason} before the response completed")

    # -- include_usage taken back out (observe/streamusage.py) -------------------------------

    def _finish_in(self, out, body_at):
        """Where the finish event is in ``out`` (a read of a watched stream that did not end as
        its last quiet read did), or -1. ``body_at``: where the body starts in ``out``."""
        end = known(out)  # as a read of any stream ended (a role event, a first token)
        if end is not None:
            self.token_end = end
            return -1
        at = finish_at(out)
        if at >= body_at:  # (in a whole response's read, one in its head is none)
            return at
        self.token_end = quiet_end(out)
        # Kept as an unwatched stream's reads are: a read that ends in neither a token nor a
        # finish event may end in an error event (vLLM's, then its [DONE]), counted at the end.
        _keep(self.obs, out, body_at)
        return -1

    def _strip(self, out, flags, at, offset, body_at=0):
        """What of ``out`` goes to the client now: up to the finish event (at ``at`` in
        ``out``, found by the caller); from there, nothing until the body ends, then the end
        rewritten once. ``offset``: where ``out`` starts in this read's bytes (-1: not in them
        alone), so the framer can say where the finish event's chunk starts. ``body_at``: where
        the body starts in ``out`` (a whole response's read, its head first: the end of its
        stream is rewritten in place, the head before it kept as it came)."""
        now = b""
        if self.strip == 1:
            framer = self.framer
            chunked = framer.kind == CHUNKED
            cut = framer.unit_of(at + offset) - offset if chunked and offset >= 0 else -1
            if cut < 0:
                if body_at:  # the units are the body's: found from its start
                    buf = out
                    cut = body_at + unit_start(buf[body_at:len(out)], at - body_at, chunked)
                else:
                    cut = unit_start(out, at, chunked)
            if flags & DONE:  # the end in this read too (vLLM's last step): rewritten in place
                return self._strip_end(out, cut)
            self.strip = 2
            if cut == 0:  # the read starts with the finish event (vLLM writes an event a write)
                self.tail = out
            else:  # what came before the finish event goes now (compiled: sliced by pointer)
                buf = out
                now, self.tail = buf[:cut], buf[cut:len(out)]
        else:
            self.tail = _joined(self.tail, out)
        if flags & DONE:
            end = self._strip_end(self.tail)
            return _joined(now, end) if now else end
        if len(self.tail) > MAX_HOLD:  # not the end of a stream after all: give up, pass it on
            out, self.tail, self.strip = _joined(now, self.tail), None, 0
            return out
        return now

    def _strip_end(self, data, start=0):
        """``data`` with the stream's end from ``start`` on rewritten (streamusage.strip)."""
        self.tail = None
        self.strip = 0
        out, usage = strip(data, self.framer.kind == CHUNKED, start)
        if usage is not None:
            obs = self.obs
            obs.tail, obs.prev, obs.tail_at = usage, None, 0
            obs.usage = USAGE_TAKEN
        return out

    def pending(self):
        """The held end of a stream that broke before it completed, framed for the client
        (the finish event without its fingerprint: the usage event never came to say it)."""
        tail = self.tail
        if self.strip != 2 or not tail:
            return b""
        self.tail = None
        self.strip = 0
        if self.dechunker is not None:
            return self.dechunker.feed(tail)
        return heads.chunk(tail) if self.rechunk else tail

    def in_band_error(self, event):
        """``event`` framed for the client's response, or None when it is no event stream."""
        framer = self.framer
        if framer is None or not framer.event_stream:
            return None
        return heads.chunk(event) if self.rechunk or (framer.kind == CHUNKED and self.dechunker is None) else event

    # -- what the outcomes mean: exchange.Exchange decides ------------------------------------

    def on_status(self, status, reusable):
        raise NotImplementedError

    def complete(self, reusable):
        raise NotImplementedError

    def break_stream(self, message, err=None):
        raise NotImplementedError

    def upstream_failed(self, message, timeout=False, retryable=None):
        raise NotImplementedError

    def fail(self, err):
        raise NotImplementedError

    # -- the watchdog -------------------------------------------------------------------------

    def _watch(self):
        """A tick of the worker's watchdog."""
        conn = self.conn
        if self.finished or conn is None:
            self.down.ctx.watchdog.discard(self)
            return
        try:
            self._check_progress(conn)
        except Exception as exc:
            self.down.crashed(exc)

    def _check_progress(self, conn):
        down = self.down
        ctx = down.ctx
        if conn.rx != self.rx_seen or down.writing_paused:
            # Progress, or we stopped reading ourselves (the client is slow): not a stall.
            self.rx_seen = conn.rx
            self.ticks = 0
        else:
            self.ticks += 1
        started = self.framer.body_bytes
        if self.ticks >= (ctx.idle_ticks if started else ctx.first_byte_ticks):
            what = "idle" if started else "first byte"
            label = self.selection.endpoint.label
            self.upstream_failed(f"backend {label} timed out ({what} timeout)", timeout=True, retryable=False)

    def _cancel_timer(self):
        self.down.ctx.watchdog.discard(self)

    # -- the connection's fate ----------------------------------------------------------------

    def _give_back(self, reusable):
        """Pool the connection after a response read to its end with keep-alive; else close it
        (closing is what makes the backend abort the generation)."""
        conn = self.conn
        if conn is not None:
            self.conn = None
            if reusable and not conn.closed:
                if self.down.writing_paused:
                    conn.transport.resume_reading()
                conn.pool.release(conn)
            else:
                conn.close()


def _joined(a, b):
    """``a + b`` of two bytes: compiled, one allocation and two copies (streamusage.pxd's
    insert at the end), not the number protocol's dispatch."""
    if _COMPILED:
        return fleetproxy_insert(a, len(a), len(a), b, len(b))  # noqa: F821 (streamusage.pxd)
    return a + b


def _keep(obs, out, at):
    """``out`` (its body from ``at``) as the Timing's last read, and the last as the one before:
    references, no copy; a usage object or an error event is in one of the two (metrics.py)."""
    obs.prev = obs.tail
    obs.tail = out
    obs.tail_at = at


def _quiet(data, end):
    """``streamusage.quiet``, asked once per read of a watched stream: compiled, its compare
    inline in the pump (relay.pxd), not a call into another module and libc's memcmp."""
    if _COMPILED:
        return fleetproxy_ends_with(data, len(data), end, len(end))  # noqa: F821 (streamusage.pxd)
    return quiet(data, end)
